//! A consumer of the in-memory broker: its stream of deliveries, its cancel handle, its
//! ackers.

use super::MemoryBroker;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::mpsc;

use crate::broker::{Acker, BrokerError, ConsumerControl, Delivery};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    Ack,
    AckThrough,
    Nack { requeue: bool },
}

pub(super) struct MemoryAcker {
    pub(super) broker: MemoryBroker,
    pub(super) queue: Arc<str>,
    pub(super) tag: u64,
    pub(super) generation: u64,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.broker
            .settle(&self.queue, self.tag, self.generation, Settle::Ack)
    }

    async fn ack_through(&self) -> Result<(), BrokerError> {
        self.broker
            .settle(&self.queue, self.tag, self.generation, Settle::AckThrough)
    }

    async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        self.broker.settle(
            &self.queue,
            self.tag,
            self.generation,
            Settle::Nack { requeue },
        )
    }
}

pub(super) struct MemoryConsumer {
    pub(super) _closer: Arc<Closer>,
    pub(super) rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
}

/// Closes the consumer (requeueing what it left unacked) once the stream and its control
/// are both gone, as closing its channel does on RabbitMQ.
pub(super) struct Closer {
    pub(super) broker: MemoryBroker,
    pub(super) queue: String,
    pub(super) id: u64,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.broker.cancel(&self.queue, self.id);
    }
}

impl Stream for MemoryConsumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

pub(super) struct MemoryControl(pub(super) Arc<Closer>);

#[async_trait]
impl ConsumerControl for MemoryControl {
    async fn cancel(&self) -> Result<(), BrokerError> {
        self.0.broker.stop_consuming(&self.0.queue, self.0.id);
        Ok(())
    }
}
