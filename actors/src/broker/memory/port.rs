//! The Broker port on the in-memory broker.

use super::consumer::{Closer, MemoryConsumer, MemoryControl};
use super::{ConsumerSlot, MemoryBroker, Queue};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Destination, Message, QueueSpec, Subscription};

#[async_trait]
impl Broker for MemoryBroker {
    fn identity(&self) -> String {
        format!("memory:{}", self.name)
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let mut state = self.lock();
        state
            .queues
            .entry(spec.name.clone())
            .or_insert_with(|| Queue {
                name: spec.name.as_str().into(),
                spec: spec.clone(),
                ready: VecDeque::new(),
                unacked: BTreeMap::new(),
                consumers: Vec::new(),
                next_consumer: 0,
            });
        Ok(())
    }

    async fn declare_topic_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.lock().exchanges.entry(name.to_string()).or_default();
        Ok(())
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if !state.queues.contains_key(queue) {
            return Err(BrokerError::NoSuchQueue(queue.to_string()));
        }
        let bindings = state.exchanges.get_mut(exchange).ok_or_else(|| {
            BrokerError::ChannelClosed(format!("NOT_FOUND - no exchange '{exchange}'"))
        })?;
        let binding = (pattern.to_string(), queue.to_string());
        if !bindings.contains(&binding) {
            bindings.push(binding);
        }
        Ok(())
    }

    async fn publish(
        &self,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        self.publish_now(to, message, mandatory)
    }

    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Subscription, BrokerError> {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        let q = state
            .queues
            .get_mut(queue)
            .ok_or_else(|| BrokerError::NoSuchQueue(queue.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        q.consumers.push(ConsumerSlot {
            id,
            tx,
            prefetch: prefetch.max(1),
            in_flight: 0,
        });
        self.dispatch(&mut state, queue);
        let closer = Arc::new(Closer {
            broker: self.clone(),
            queue: queue.to_string(),
            id,
        });
        Ok(Subscription {
            deliveries: Box::pin(MemoryConsumer {
                _closer: closer.clone(),
                rx,
            }),
            control: Box::new(MemoryControl(closer)),
        })
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        let state = self.lock();
        let q = state
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::NoSuchQueue(queue.to_string()))?;
        Ok(u32::try_from(q.ready.len()).unwrap_or(u32::MAX))
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if let Some(q) = state.queues.remove(queue) {
            for slot in q.consumers {
                let _ = slot.tx.send(Err(BrokerError::ChannelClosed(format!(
                    "queue {queue} deleted"
                ))));
            }
        }
        for bindings in state.exchanges.values_mut() {
            bindings.retain(|(_, q)| q != queue);
        }
        Ok(())
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), BrokerError> {
        self.lock().exchanges.remove(exchange);
        Ok(())
    }
}
