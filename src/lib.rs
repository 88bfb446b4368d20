//! mailroute's binary-side library: configuration, the lapin adapter of the Broker port, and
//! the commands. The engine itself is the `mailroute-actors` crate.

pub mod amqp;
pub mod config;
pub mod console;
