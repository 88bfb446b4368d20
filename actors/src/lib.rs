//! mailroute's engine, in three concerns:
//! - [`cluster`]: who is in the cluster and who owns which IP (the membership core, the
//!   announcer, the registry, the digest leader, presence proofs, the wire format);
//! - [`mail`]: moving outbox mail (the consumer and its ack frontier, the IP-ownership router,
//!   the handover publisher and relay, the route decision, message ids);
//! - [`broker`]: the Broker port the actors use, the in-memory broker and the queue names;
//!
//! and what ties them together: [`instance`] wires the supervised actors, [`messages`] are the
//! typed messages between them, [`settings`], [`stats`], [`summary`], [`backoff`];
//! [`traffic`] is the sample mail of `mailroute demo` and `inject`, with its accounting.

pub mod backoff;
pub mod broker;
pub mod cluster;
pub mod instance;
pub mod mail;
pub mod messages;
pub mod settings;
pub mod stats;
pub mod summary;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod traffic;

pub use broker::{Broker, BrokerError, Message, SharedBroker};
pub use instance::{Controls, Instance};
pub use settings::InstanceSettings;
