//! Every queue name mailroute uses: the queues an instance owns on its local broker (outbox,
//! deliver, failure and retry), its presence queue, its handover queue on the cluster broker,
//! and the cluster's heartbeat queue.

use std::time::Duration;

use crate::broker::{BrokerError, QueueSpec, SharedBroker};
use crate::settings::InstanceSettings;

/// The queues this instance owns on its local broker, as it declares them. The retry queue
/// has no `x-message-ttl`: held mail carries its hold-time as a per-message `expiration`, so
/// `hold-time` can change without the queue (and the mail in it) having to be deleted.
pub fn own_queues(settings: &InstanceSettings) -> Vec<QueueSpec> {
    let spec = |name: &str| QueueSpec::durable_typed(name, settings.quorum_queues);
    let mut retry = spec(&settings.retry);
    retry.dead_letter_queue = Some(settings.outbox.clone());
    vec![
        spec(&settings.outbox),
        spec(&settings.deliver),
        spec(&settings.failure),
        retry,
    ]
}

/// This instance's presence on its local broker: an exclusive queue, so it exists exactly
/// while this instance is connected there, held (declared again after every reconnect) and
/// read by the `PresenceResponder`. A peer whose challenge put there is answered knows this
/// instance's outbox is on the same broker (vhost included), however either of them spells
/// the address: see `PeerRegistry::challenge`.
pub fn presence_queue(name: &str) -> QueueSpec {
    QueueSpec::private(format!("mailroute.instance.{name}"))
}

/// Declares the queues this instance owns. Fails fast, so a broker that refuses them (wrong
/// vhost, permissions, a queue declared elsewhere with other arguments) stops startup.
pub async fn declare_queues(
    settings: &InstanceSettings,
    local: &SharedBroker,
) -> Result<(), BrokerError> {
    for spec in own_queues(settings) {
        local.declare_queue(&spec).await?;
    }
    Ok(())
}

/// The durable queue on the cluster broker that peers hand mail for `instance` to, when its
/// outbox is not on a broker they share. It outlives its instance, keeping mail for its return.
pub fn handover_queue(instance: &str) -> String {
    format!("mailroute.handover.{instance}")
}

/// Heartbeats are worth nothing once older than any peer-timeout in use: a member whose
/// heartbeat waited that long in the queue (no leader) is not known to be alive by it.
const HEARTBEAT_TTL: Duration = Duration::from_secs(30);
/// The queue goes this long after the last instance stopped consuming it.
const QUEUE_EXPIRES: Duration = Duration::from_secs(600);

/// The heartbeat queue of the cluster on `exchange`, on the cluster broker: one per cluster,
/// so clusters sharing a broker do not hear each other.
pub fn heartbeat_queue(exchange: &str) -> QueueSpec {
    QueueSpec {
        single_active_consumer: true,
        message_ttl: Some(HEARTBEAT_TTL),
        expires: Some(QUEUE_EXPIRES),
        ..QueueSpec::durable(format!("mailroute.heartbeats.{exchange}"))
    }
}
