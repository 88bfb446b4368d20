//! mailroute's engine: the actors of a cluster instance, the typed messages between them,
//! the route decision and ownership table, the cluster wire format, the Broker port and an
//! in-memory broker.

pub mod ack_frontier;
pub mod announcer;
pub mod backoff;
pub mod broker;
pub mod cluster_frame;
pub mod digest_leader;
pub mod handover_publisher;
pub mod handover_relay;
pub mod instance;
pub mod ip_ownership_router;
pub mod membership;
pub mod memory;
pub mod message_id;
pub mod messages;
pub mod outbox_consumer;
pub mod own_queues;
pub mod peer_registry;
pub mod presence_responder;
pub mod recent_ids;
pub mod replay_guard;
pub mod routing;
pub mod settings;
pub mod stats;
pub mod summary;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod wire;

pub use broker::{Broker, BrokerError, Message, SharedBroker};
pub use instance::{Controls, Instance};
pub use settings::InstanceSettings;
