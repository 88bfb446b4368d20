//! An in-process broker with RabbitMQ's semantics where mailroute relies on them: default and
//! topic exchanges, prefetch, unacked deliveries requeued when their consumer goes, mandatory
//! returns, per-queue TTL with dead-lettering, exclusive queues gone with the "connection".
//!
//! For actor tests, simulations and the zero-setup demo; integration tests use real RabbitMQ.
//! `sever()` plays a connection loss so supervision can be tested.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::time::Instant;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::mpsc;

use crate::broker::{
    Acker, Broker, BrokerError, ConsumerControl, Delivery, Destination, Message, QueueSpec,
    Subscription,
};

#[derive(Clone)]
pub struct MemoryBroker {
    name: String,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// exchange → (binding pattern, queue)
    exchanges: HashMap<String, Vec<(String, String)>>,
    next_id: u64,
    /// Bumped by `sever`: ackers of an older generation belong to a dead channel.
    generation: u64,
    /// routing key → how many of the next publishes to it fail.
    failing_publishes: HashMap<String, u32>,
    /// Messages put into a queue, all queues together (a topic publish counts once a queue).
    enqueued: u64,
}

struct Queue {
    /// Shared with every delivery's acker, so a delivery does not allocate its queue's name.
    name: Arc<str>,
    spec: QueueSpec,
    ready: VecDeque<Stored>,
    /// delivery tag → (consumer, message); ordered, for `ack_through`.
    unacked: BTreeMap<u64, (u64, Message)>,
    consumers: Vec<ConsumerSlot>,
    next_consumer: usize,
}

struct Stored {
    message: Message,
    redelivered: bool,
    expires_at: Option<Instant>,
}

struct ConsumerSlot {
    id: u64,
    tx: mpsc::UnboundedSender<Result<Delivery, BrokerError>>,
    prefetch: u16,
    in_flight: u16,
}

impl MemoryBroker {
    /// `name` stands in for host:port/vhost in the broker identity.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryBroker {
            name: name.into(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Messages put into queues so far, all queues together: a topic publish that reaches
    /// N queues counts N, as RabbitMQ's deliveries do.
    pub fn enqueued(&self) -> u64 {
        self.lock().enqueued
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic inside this module; the state is still consistent
        // because every mutation completes before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plays a connection loss: every consumer gets an error and ends, unacked deliveries are
    /// requeued (redelivered), exclusive queues vanish, older ackers fail.
    pub fn sever(&self) {
        let mut state = self.lock();
        state.generation += 1;
        for queue in state.queues.values_mut() {
            for slot in queue.consumers.drain(..) {
                let _ = slot
                    .tx
                    .send(Err(BrokerError::ChannelClosed("connection lost".into())));
            }
            let unacked = std::mem::take(&mut queue.unacked);
            for (_, (_, message)) in unacked.into_iter().rev() {
                queue.ready.push_front(Stored {
                    message,
                    redelivered: true,
                    expires_at: None,
                });
            }
        }
        state.queues.retain(|_, q| !q.spec.exclusive);
    }

    /// The next `n` publishes with this routing key fail as if the channel had closed.
    pub fn fail_next_publishes(&self, routing_key: &str, n: u32) {
        self.lock()
            .failing_publishes
            .insert(routing_key.to_string(), n);
    }

    /// Takes every ready message out of a queue (for tests and the demo's accounting).
    pub fn drain(&self, queue: &str) -> Vec<Message> {
        let mut state = self.lock();
        state
            .queues
            .get_mut(queue)
            .map(|q| q.ready.drain(..).map(|s| s.message).collect())
            .unwrap_or_default()
    }

    /// A copy of every ready message of a queue, left in place.
    pub fn peek(&self, queue: &str) -> Vec<Message> {
        let state = self.lock();
        state
            .queues
            .get(queue)
            .map(|q| q.ready.iter().map(|s| s.message.clone()).collect())
            .unwrap_or_default()
    }

    /// Ready plus unacked messages of a queue.
    pub fn depth(&self, queue: &str) -> usize {
        let state = self.lock();
        state
            .queues
            .get(queue)
            .map_or(0, |q| q.ready.len() + q.unacked.len())
    }

    /// The queues a topic exchange routes `to` to.
    fn route(state: &State, to: &Destination) -> Result<Vec<String>, BrokerError> {
        let bindings = state.exchanges.get(&to.exchange).ok_or_else(|| {
            BrokerError::ChannelClosed(format!("NOT_FOUND - no exchange '{}'", to.exchange))
        })?;
        let mut queues: Vec<String> = bindings
            .iter()
            .filter(|(pattern, _)| topic_matches(pattern, &to.routing_key))
            .map(|(_, q)| q.clone())
            .collect();
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// `false` when there is no such queue.
    fn enqueue(&self, state: &mut State, queue: &str, message: Message) -> bool {
        let Some(q) = state.queues.get_mut(queue) else {
            return false;
        };
        let ttl = message_ttl(&q.spec, &message);
        let expires_at = ttl.map(|ttl| Instant::now() + ttl);
        q.ready.push_back(Stored {
            message,
            redelivered: false,
            expires_at,
        });
        state.enqueued += 1;
        if let Some(ttl) = ttl {
            let broker = self.clone();
            let queue = queue.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(ttl).await;
                broker.expire(&queue);
            });
        }
        self.dispatch(state, queue);
        true
    }

    /// Dead-letters expired messages at the head of the queue, as RabbitMQ does.
    fn expire(&self, queue: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        let mut dead = Vec::new();
        let target = match state.queues.get_mut(queue) {
            Some(q) => {
                while q
                    .ready
                    .front()
                    .is_some_and(|s| s.expires_at.is_some_and(|t| t <= now))
                {
                    if let Some(stored) = q.ready.pop_front() {
                        dead.push(stored.message);
                    }
                }
                q.spec.dead_letter_queue.clone()
            }
            None => None,
        };
        if let Some(target) = target {
            for mut message in dead {
                message.properties_mut().expiration = None;
                let _ = self.enqueue(&mut state, &target, message);
            }
        }
    }

    fn dispatch(&self, state: &mut State, queue: &str) {
        let generation = state.generation;
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        while !q.ready.is_empty() && !q.consumers.is_empty() {
            // Single active consumer: the oldest one gets everything until it goes.
            let count = if q.spec.single_active_consumer {
                1
            } else {
                q.consumers.len()
            };
            let Some(index) = (0..count)
                .map(|i| (q.next_consumer + i) % count)
                .find(|&i| q.consumers[i].in_flight < q.consumers[i].prefetch)
            else {
                return;
            };
            q.next_consumer = (index + 1) % count;
            let Some(stored) = q.ready.pop_front() else {
                return;
            };
            state.next_id += 1;
            let tag = state.next_id;
            let slot = &mut q.consumers[index];
            let delivery = Delivery {
                message: stored.message.clone(),
                redelivered: stored.redelivered,
                acker: Box::new(MemoryAcker {
                    broker: self.clone(),
                    queue: q.name.clone(),
                    tag,
                    generation,
                }),
            };
            if slot.tx.send(Ok(delivery)).is_err() {
                q.consumers.remove(index);
                q.ready.push_front(stored);
                continue;
            }
            slot.in_flight += 1;
            q.unacked.insert(tag, (slot.id, stored.message));
        }
    }

    fn settle(
        &self,
        queue: &str,
        tag: u64,
        generation: u64,
        how: Settle,
    ) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if state.generation != generation {
            return Err(BrokerError::ChannelClosed(
                "delivery from a closed channel".into(),
            ));
        }
        let q = state
            .queues
            .get_mut(queue)
            .ok_or_else(|| BrokerError::NoSuchQueue(queue.to_string()))?;
        let (consumer, message) = q
            .unacked
            .remove(&tag)
            .ok_or_else(|| BrokerError::ChannelClosed(format!("unknown delivery tag {tag}")))?;
        let mut settled: u16 = 1;
        if how == Settle::AckThrough {
            let earlier: Vec<u64> = q
                .unacked
                .range(..tag)
                .filter(|(_, (c, _))| *c == consumer)
                .map(|(t, _)| *t)
                .collect();
            for t in earlier {
                q.unacked.remove(&t);
                settled = settled.saturating_add(1);
            }
        }
        if let Some(slot) = q.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.in_flight = slot.in_flight.saturating_sub(settled);
        }
        if how == (Settle::Nack { requeue: true }) {
            q.ready.push_front(Stored {
                message,
                redelivered: true,
                expires_at: None,
            });
        }
        self.dispatch(&mut state, queue);
        Ok(())
    }

    /// Publishing completes at once in memory; both async publish calls share this.
    fn publish_now(
        &self,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if let Some(left) = state.failing_publishes.get_mut(&to.routing_key) {
            if *left > 0 {
                *left -= 1;
                return Err(BrokerError::ChannelClosed("injected publish fault".into()));
            }
        }
        // The default exchange, straight into one queue: most publishes, and no allocation.
        if to.exchange.is_empty() {
            if !self.enqueue(&mut state, &to.routing_key, message.clone()) && mandatory {
                return Err(BrokerError::Returned {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                });
            }
            return Ok(());
        }
        let queues = Self::route(&state, to)?;
        if queues.is_empty() && mandatory {
            return Err(BrokerError::Returned {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
            });
        }
        for queue in queues {
            let _ = self.enqueue(&mut state, &queue, message.clone());
        }
        Ok(())
    }

    /// `basic.cancel`: the consumer gets nothing new; its stream ends after what it was sent,
    /// and its unacked deliveries stay its own until it closes.
    fn stop_consuming(&self, queue: &str, consumer: u64) {
        let mut state = self.lock();
        if let Some(q) = state.queues.get_mut(queue) {
            q.consumers.retain(|s| s.id != consumer);
        }
        // A single active consumer's successor takes over now.
        self.dispatch(&mut state, queue);
    }

    fn cancel(&self, queue: &str, consumer: u64) {
        let mut state = self.lock();
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        q.consumers.retain(|s| s.id != consumer);
        let mut mine: Vec<u64> = q
            .unacked
            .iter()
            .filter(|(_, (c, _))| *c == consumer)
            .map(|(tag, _)| *tag)
            .collect();
        mine.sort_unstable_by(|a, b| b.cmp(a));
        for tag in mine {
            if let Some((_, message)) = q.unacked.remove(&tag) {
                q.ready.push_front(Stored {
                    message,
                    redelivered: true,
                    expires_at: None,
                });
            }
        }
        if q.spec.auto_delete && q.consumers.is_empty() {
            state.queues.remove(queue);
            for bindings in state.exchanges.values_mut() {
                bindings.retain(|(_, q)| q != queue);
            }
            return;
        }
        self.dispatch(&mut state, queue);
    }
}

fn message_ttl(spec: &QueueSpec, message: &Message) -> Option<std::time::Duration> {
    let per_message = message
        .properties
        .expiration
        .as_deref()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(std::time::Duration::from_millis);
    match (spec.message_ttl, per_message) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// AMQP topic matching: words split by '.', `*` matches one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&word, rest)) => match k.split_first() {
                Some((&kw, krest)) => (word == "*" || word == kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    go(&p, &k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    AckThrough,
    Nack { requeue: bool },
}

struct MemoryAcker {
    broker: MemoryBroker,
    queue: Arc<str>,
    tag: u64,
    generation: u64,
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

struct MemoryConsumer {
    _closer: Arc<Closer>,
    rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
}

/// Closes the consumer (requeueing what it left unacked) once the stream and its control
/// are both gone, as closing its channel does on RabbitMQ.
struct Closer {
    broker: MemoryBroker,
    queue: String,
    id: u64,
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

struct MemoryControl(Arc<Closer>);

#[async_trait]
impl ConsumerControl for MemoryControl {
    async fn cancel(&self) -> Result<(), BrokerError> {
        self.0.broker.stop_consuming(&self.0.queue, self.0.id);
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("#", "announce.a"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("announce.*", "announce.a"));
        assert!(!topic_matches("announce.*", "announce.a.b"));
        assert!(topic_matches("announce.#", "announce.a.b"));
        assert!(!topic_matches("hello", "announce"));
    }

    /// A broker with queue `q` holding `n` messages whose bodies are 0, 1, …
    async fn queue_of(n: u8) -> MemoryBroker {
        let broker = MemoryBroker::new("t");
        broker
            .declare_queue(&QueueSpec::durable("q"))
            .await
            .unwrap();
        for i in 0..n {
            let m = Message::new(vec![i], Default::default());
            broker
                .publish(&Destination::queue("q"), &m, true)
                .await
                .unwrap();
        }
        broker
    }

    #[tokio::test]
    async fn ack_through_settles_earlier_deliveries_of_the_consumer_only() {
        let broker = queue_of(5).await;
        let mut consumer = broker.consume("q", 10).await.unwrap();
        let mut d = Vec::new();
        for _ in 0..5 {
            d.push(consumer.next().await.unwrap().unwrap());
        }
        d[1].acker.nack(true).await.unwrap();
        d[3].acker.ack_through().await.unwrap();
        let again = consumer.next().await.unwrap().unwrap();
        assert_eq!(&again.message.body[..], [1]);
        // Settled: 0, 2, 3. Unacked: 4 and the redelivered 1.
        assert_eq!(broker.depth("q"), 2);
        assert!(d[0].acker.ack().await.is_err(), "already settled");
    }

    #[tokio::test]
    async fn unacked_messages_return_when_the_consumer_goes() {
        let broker = queue_of(3).await;
        let mut consumer = broker.consume("q", 2).await.unwrap();
        let first = consumer.next().await.unwrap().unwrap();
        first.acker.ack().await.unwrap();
        let _second = consumer.next().await.unwrap().unwrap();
        drop(consumer);
        assert_eq!(broker.depth("q"), 2);
        let again = broker.drain("q");
        assert_eq!(again[0].body.as_ref(), &[1]);
    }

    #[tokio::test]
    async fn mandatory_publish_to_missing_queue_is_returned() {
        let broker = MemoryBroker::new("t");
        let m = Message::new(&b"x"[..], Default::default());
        let err = broker.publish(&Destination::queue("none"), &m, true).await;
        assert!(matches!(
            err,
            Err(BrokerError::Returned {
                reply_code: 312,
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_messages_are_dead_lettered() {
        let broker = MemoryBroker::new("t");
        broker
            .declare_queue(&QueueSpec::durable("outbox"))
            .await
            .unwrap();
        let mut hold = QueueSpec::durable("hold");
        hold.message_ttl = Some(std::time::Duration::from_secs(5));
        hold.dead_letter_queue = Some("outbox".into());
        broker.declare_queue(&hold).await.unwrap();
        let m = Message::new(&b"x"[..], Default::default());
        broker
            .publish(&Destination::queue("hold"), &m, true)
            .await
            .unwrap();
        let mut consumer = broker.consume("outbox", 1).await.unwrap();
        let back = consumer.next().await.unwrap().unwrap();
        assert_eq!(back.message.body.as_ref(), b"x");
        assert_eq!(broker.depth("hold"), 0);
    }
}
