//! Helpers for the tests, the benchmark, `mailroute demo` and `mailroute inject`, behind the
//! `testkit` feature so the engine's own API does not carry them: test traffic, waiting on a
//! condition instead of sleeping, and counting every copy of every message where it ended up.

pub mod accounting;
pub mod fleet;
pub mod ghost;
pub mod traffic;
mod wait;

pub use accounting::{Accounting, Expect, account};
pub use wait::wait_for;
