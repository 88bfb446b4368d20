//! Publishing with confirms: a confirm-mode channel per destination for mandatory
//! publishes (a shared one otherwise), each publish's fate from its own id, a timeout that
//! counts only unblocked time, released channels closed once idle.

use super::{
    AmqpBroker, Confirming, Publishers, Role, TIMEOUT, confirms, convert, lapin_error, timed,
};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{Channel, Confirmation};
use mailroute_actors::broker::{BrokerError, Destination, Message};
use tracing::warn;

impl AmqpBroker {
    pub(super) fn publishers_locked(&self) -> std::sync::MutexGuard<'_, Publishers> {
        // A panic while holding this lock cannot leave the map half-updated: every change is a
        // single insert or replace.
        self.publishers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The publish channel for mandatory publishes to `to` (`None`: the shared one), opened in
    /// confirm mode when missing or closed.
    pub(super) async fn publisher(
        &self,
        to: Option<&Destination>,
    ) -> Result<Arc<Confirming>, BrokerError> {
        let open = |publishers: &Publishers| {
            publishers
                .get(to)
                .filter(|c| c.channel.status().connected())
                .cloned()
        };
        if let Some(channel) = open(&self.publishers_locked()) {
            return Ok(channel);
        }
        let mut state = self.state.lock().await;
        // Another publish may have opened it while this one waited for `state`.
        if let Some(channel) = open(&self.publishers_locked()) {
            return Ok(channel);
        }
        let connection = self.connection_locked(&mut state, Role::Publishing).await?;
        let channel = timed(connection.create_channel()).await?;
        timed(channel.confirm_select(ConfirmSelectOptions::default())).await?;
        let channel = Arc::new(Confirming {
            channel,
            ledger: confirms::Ledger::default(),
        });
        let mut publishers = self.publishers_locked();
        match to {
            Some(to) => {
                publishers
                    .mandatory
                    .entry(to.exchange.clone())
                    .or_default()
                    .insert(to.routing_key.clone(), channel.clone());
            }
            None => publishers.shared = Some(channel.clone()),
        }
        Ok(channel)
    }

    /// A short-lived channel for one administrative call: a failed passive declare or delete
    /// closes its channel, and must not take the publish channel with it.
    pub(super) async fn admin_channel(&self) -> Result<Channel, BrokerError> {
        let connection = self.connection().await?;
        timed(connection.create_channel()).await
    }

    pub(super) async fn with_admin<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        let channel = self.admin_channel().await?;
        let result = timed(op(channel.clone())).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    pub(super) async fn publish_on(
        &self,
        confirming: &Arc<Confirming>,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let mut properties = convert::to_lapin(&message.properties);
        // A mandatory publish's fate is read from its own id (see `confirms`).
        let id = mandatory.then(|| confirming.ledger.begin());
        if let Some(id) = id {
            let mut headers = properties.headers().clone().unwrap_or_default();
            headers.insert(
                confirms::PUBLISH_ID_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(id).unwrap_or(i64::MAX)),
            );
            properties = properties.with_headers(headers);
        }
        let channel = &confirming.channel;
        // One timer for the publish and its confirm: a timer per step showed in profiles.
        let confirmation = self
            .timed_publish(async {
                channel
                    .basic_publish(
                        to.exchange.as_str().into(),
                        to.routing_key.as_str().into(),
                        options,
                        &message.body,
                        properties,
                    )
                    .await?
                    .await
            })
            .await;
        let (carried, ours) = match confirmation {
            Ok(Confirmation::Ack(carried)) => (carried, Ok(())),
            Ok(Confirmation::Nack(carried)) => (carried, Err(BrokerError::Nack)),
            failure => {
                let error = match failure {
                    Err(error) => error,
                    _ => BrokerError::Other("publish channel lost confirm mode".into()),
                };
                if let Some(id) = id {
                    confirming.ledger.abandon(id);
                }
                if matches!(error, BrokerError::Timeout(_)) {
                    self.discard(confirming);
                }
                return Err(error);
            }
        };
        let Some(id) = id else {
            return ours;
        };
        let carried = carried.as_ref().map(confirms::Carried::from_lapin);
        match confirming.ledger.confirmed(id, carried).await {
            confirms::Fate::Routed => ours,
            confirms::Fate::Returned {
                reply_code,
                reply_text,
            } => Err(BrokerError::Returned {
                reply_code,
                reply_text,
            }),
        }
    }

    /// A publish and its confirm, bounded by [`TIMEOUT`] of time the broker was free to
    /// answer: while it blocks publishing (a resource alarm), and for a timeout after, the
    /// publish waits instead of failing. A publish that failed is published again, and its
    /// first copy, already in lapin's buffers, would still go out when the alarm clears: one
    /// more copy of every message in flight for every timeout.
    pub(super) async fn timed_publish<T>(
        &self,
        what: impl Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, BrokerError> {
        let mut what = std::pin::pin!(what);
        loop {
            match tokio::time::timeout(TIMEOUT, &mut what).await {
                Ok(result) => return result.map_err(lapin_error),
                Err(_) if self.blocked_lately() => continue,
                Err(_) => return Err(BrokerError::Timeout(TIMEOUT)),
            }
        }
    }

    /// Whether the broker blocks publishing now or did within the last [`TIMEOUT`].
    pub(super) fn blocked_lately(&self) -> bool {
        *self.blocked.borrow()
            || self
                .unblocked_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|at| at.elapsed() < TIMEOUT)
    }

    /// A confirm channel whose publish timed out, unblocked: closed, so that nothing sent on
    /// it can still be confirmed, or returned, to a publish that was told it failed. The next
    /// publish to its destination opens another.
    pub(super) fn discard(&self, confirming: &Arc<Confirming>) {
        let mut publishers = self.publishers_locked();
        for keys in publishers.mandatory.values_mut() {
            keys.retain(|_, c| !Arc::ptr_eq(c, confirming));
        }
        if publishers
            .shared
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, confirming))
        {
            publishers.shared = None;
        }
        drop(publishers);
        let channel = confirming.channel.clone();
        warn!("a publish timed out: closing its confirm channel");
        self.handle.spawn(async move {
            let _ = channel.close(200, "publish timed out".into()).await;
        });
    }
}

/// Closes a released confirm channel once no publish holds it. Closing earlier would lose the
/// confirms still on their way (a client discards what arrives after its `channel.close`): the
/// originals would be requeued although their copies were stored, and sent twice.
pub(super) async fn close_when_idle(channel: Arc<Confirming>) {
    // Each publish in flight holds a clone of the `Arc` until its confirm is in.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while Arc::strong_count(&channel) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if channel.channel.status().connected() {
        let _ = channel
            .channel
            .close(200, "destination released".into())
            .await;
    }
}
