//! Cluster frames on the wire: one put on the exchange or into a queue (encoded, signed when
//! the codec has a secret), and one taken off a queue (the registry's listener, the heartbeat
//! queue): counted, acked at once, decoded; a frame that does not decode is dropped and
//! counted by reason, never a panic.

use std::time::Duration;

use tracing::warn;

use crate::broker::{BrokerError, Delivery, Destination, Message, Properties, SharedBroker};
use crate::cluster::wire::{ClusterMessage, Codec, now_ms};
use crate::stats::{Stats, bump};

/// The message in `delivery`, or `None` if it was dropped.
pub fn take(delivery: Delivery, codec: &Codec, stats: &Stats) -> Option<ClusterMessage> {
    take_tagged(delivery, codec, stats).map(|(message, _)| message)
}

/// As [`take`], with the frame's verified tag when it was signed (see `Codec::decode_tagged`).
pub fn take_tagged(
    delivery: Delivery,
    codec: &Codec,
    stats: &Stats,
) -> Option<(ClusterMessage, Option<[u8; crate::cluster::wire::TAG]>)> {
    bump(&stats.cluster_deliveries);
    let acker = delivery.acker;
    // Cluster messages are state: acked on receipt; the next one repairs a loss.
    actix::spawn(async move {
        let _ = acker.ack().await;
    });
    match codec.decode_tagged(&delivery.message.body, now_ms()) {
        Ok(tagged) => Some(tagged),
        Err(error) => {
            stats.dropped(error.reason());
            warn!(%error, "cluster message dropped");
            None
        }
    }
}

/// Publishes one cluster message with confirm. Cluster messages are state, not mail: they are
/// not persistent, and a lost one is repaired by the next announcement.
pub async fn publish(
    broker: SharedBroker,
    exchange: String,
    codec: Codec,
    message: ClusterMessage,
) -> Result<(), BrokerError> {
    let to = Destination::exchange(exchange, message.routing_key());
    publish_to(broker, to, codec, message, None).await
}

/// [`publish`] to any destination (a queue, through the default exchange); with `ttl`, the
/// broker drops it unread after that long (`expiration`).
pub async fn publish_to(
    broker: SharedBroker,
    to: Destination,
    codec: Codec,
    message: ClusterMessage,
    ttl: Option<Duration>,
) -> Result<(), BrokerError> {
    let body = codec
        .encode(&message, crate::cluster::wire::now_ms())
        .map_err(|e| BrokerError::Other(e.to_string()))?;
    let properties = Properties {
        expiration: ttl.map(|ttl| ttl.as_millis().max(1).to_string()),
        ..Properties::default()
    };
    broker
        .publish(&to, &Message::new(body, properties), false)
        .await
}
