//! Moving outbox mail, each message settled only once its outcome is confirmed:
//! [`outbox_consumer`] reads the outbox (what to ack when is its [`ack_frontier`], when to
//! requeue a failed one its [`failure_runs`]),
//! [`ip_ownership_router`] decides by [`routing`] (here, hand over, hold or fail),
//! [`handover_publisher`] publishes the outcome with confirms, [`handover_relay`] moves
//! handovers from the cluster broker into this instance's outbox (private brokers).
//! [`message_id`] and [`recent_ids`] let a receiver drop a copy it has seen.

pub mod ack_frontier;
pub mod failure_runs;
pub mod handover_publisher;
pub mod handover_relay;
pub mod ip_ownership_router;
pub mod message_id;
pub mod outbox_consumer;
pub mod recent_ids;
pub mod routing;
