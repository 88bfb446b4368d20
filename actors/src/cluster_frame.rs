//! One cluster frame taken off a queue (the registry's listener, the heartbeat queue):
//! counted, acked at once, decoded; a frame that does not decode is dropped and counted by
//! reason, never a panic.

use tracing::warn;

use crate::broker::Delivery;
use crate::stats::{Stats, bump};
use crate::wire::{ClusterMessage, Codec, now_ms};

/// The message in `delivery`, or `None` if it was dropped.
pub fn take(delivery: Delivery, codec: &Codec, stats: &Stats) -> Option<ClusterMessage> {
    take_tagged(delivery, codec, stats).map(|(message, _)| message)
}

/// As [`take`], with the frame's verified tag when it was signed (see `Codec::decode_tagged`).
pub fn take_tagged(
    delivery: Delivery,
    codec: &Codec,
    stats: &Stats,
) -> Option<(ClusterMessage, Option<[u8; crate::wire::TAG]>)> {
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
