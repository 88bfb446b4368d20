//! The queues an instance owns on its local broker: outbox, deliver, failure and retry.

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
