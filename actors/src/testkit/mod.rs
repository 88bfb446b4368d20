//! Helpers for the tests and the benchmark only, behind the `testkit` feature so the engine's
//! build does not carry them: fleets of in-process instances, a ghost that answers presence
//! challenges for a name it does not own. The sample traffic and its accounting are
//! [`crate::traffic`] (the demo runs them too), re-exported here for the tests.

pub mod fleet;
pub mod ghost;

pub use crate::traffic::{Accounting, Expect, account, wait_for};
