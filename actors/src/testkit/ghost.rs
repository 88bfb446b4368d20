//! A ghost peer's presence: answers the challenges other instances put into its presence
//! queue, as a running instance's `PresenceResponder` does, so that tests which announce a
//! peer by hand can have its outbox proven to be on `local`.

use futures::StreamExt;

use crate::broker::own_queues::presence_queue;
use crate::broker::{BrokerError, Message, SharedBroker};
use crate::cluster::presence_responder::answer;
use crate::cluster::wire::Codec;

/// Declares `name`'s presence queue on `local` and consumes it; the future returned answers
/// every challenge into `cluster` until it is dropped or aborted (or the broker fails). The
/// queue exists when this returns, so a peer that challenges after it finds it.
pub async fn hold_presence(
    local: SharedBroker,
    cluster: SharedBroker,
    name: String,
    started_at: u64,
    codec: Codec,
) -> Result<impl std::future::Future<Output = ()>, BrokerError> {
    let spec = presence_queue(&name);
    local.declare_queue(&spec).await?;
    let mut stream = local.consume(&spec.name, 16).await?;
    Ok(async move {
        while let Some(Ok(delivery)) = stream.next().await {
            let _ = delivery.acker.ack().await;
            let now = crate::cluster::wire::now_ms();
            let Ok(message) = codec.decode(&delivery.message.body, now) else {
                continue;
            };
            let Some((to, present)) = answer(message, &name, started_at) else {
                continue;
            };
            if let Ok(body) = codec.encode(&present, now) {
                let _ = cluster
                    .publish(&to, &Message::new(body, Default::default()), false)
                    .await;
            }
        }
    })
}
