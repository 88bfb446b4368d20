//! An in-process broker with RabbitMQ's semantics where mailroute relies on them: default and
//! topic exchanges, prefetch, unacked deliveries requeued when their consumer goes, mandatory
//! returns, per-queue TTL with dead-lettering, exclusive queues gone with the "connection".
//!
//! For actor tests, simulations and the zero-setup demo; integration tests use real RabbitMQ.
//! `sever()` plays a connection loss so supervision can be tested. The queues and their
//! dispatch are here; [`consumer`] holds a consumer's stream, cancel handle and ackers, `port`
//! the Broker port on them.

mod consumer;
mod port;
#[cfg(test)]
mod tests;

use consumer::{MemoryAcker, Settle};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use tokio::sync::mpsc;

use crate::broker::{BrokerError, Delivery, Destination, Message, QueueSpec};

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
