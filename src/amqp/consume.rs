//! A consumer's stream of deliveries, its cancel handle and its ackers; its channel closes
//! when the stream is dropped, so RabbitMQ requeues what was unacked.

use super::{convert, lapin_error, timed};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use mailroute_actors::broker::{Acker, BrokerError, ConsumerControl, Delivery, Message};

pub(super) struct AmqpConsumer {
    pub(super) inner: lapin::Consumer,
    pub(super) _closer: Arc<ChannelCloser>,
}

impl Stream for AmqpConsumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx).map(|item| {
            item.map(|result| {
                result.map_err(lapin_error).map(|d| Delivery {
                    message: Message {
                        properties: Arc::new(convert::from_lapin(&d.properties)),
                        body: d.data.into(),
                    },
                    redelivered: d.redelivered,
                    acker: Box::new(AmqpAcker(d.acker)),
                })
            })
        })
    }
}

/// Closes a consumer's channel once both its stream and its control are gone. Closing the
/// channel is what makes RabbitMQ requeue the unacked deliveries now rather than when the
/// connection dies; a drain keeps the control until its last ack is answered.
pub(super) struct ChannelCloser {
    pub(super) channel: Channel,
    pub(super) handle: tokio::runtime::Handle,
}

impl Drop for ChannelCloser {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if channel.status().connected() {
            self.handle.spawn(async move {
                let _ = channel.close(200, "consumer stopped".into()).await;
            });
        }
    }
}

pub(super) struct AmqpControl {
    pub(super) tag: lapin::types::ShortString,
    pub(super) closer: Arc<ChannelCloser>,
}

#[async_trait]
impl ConsumerControl for AmqpControl {
    async fn cancel(&self) -> Result<(), BrokerError> {
        timed(
            self.closer
                .channel
                .basic_cancel(self.tag.clone(), BasicCancelOptions::default()),
        )
        .await
    }
}

pub(super) struct AmqpAcker(lapin::Acker);

/// lapin answers `Ok(false)` when it did not send the ack at all (the acker was used, or its
/// channel is gone): the delivery is not settled, and the caller must hear so.
fn sent(what: &str, result: Result<bool, BrokerError>) -> Result<(), BrokerError> {
    match result? {
        true => Ok(()),
        false => Err(BrokerError::ChannelClosed(format!(
            "{what} not sent: the delivery's channel is gone or it was settled already"
        ))),
    }
}

/// Acks, nacks and cancels are bounded like publishes: an answer that does not come (a link
/// gone silent) is an error, not a wait for ever.
#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        sent("ack", timed(self.0.ack(BasicAckOptions::default())).await)
    }

    async fn ack_through(&self) -> Result<(), BrokerError> {
        sent(
            "ack",
            timed(self.0.ack(BasicAckOptions { multiple: true })).await,
        )
    }

    async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        };
        sent("nack", timed(self.0.nack(options)).await)
    }
}
