//! The heartbeat queue of digest mode as RabbitMQ runs it: one queue, a single active
//! consumer (the first subscribed whose link is up), a prefetch, a TTL per message that the
//! broker applies at the head of the queue, and the unacked deliveries of a consumer that goes
//! requeued, marked redelivered, for the next one.

use std::collections::VecDeque;
use std::time::Duration;

/// The leader's prefetch (`DigestLeader` subscribes with 256).
pub const PREFETCH: usize = 256;

#[derive(Clone)]
pub struct Hb {
    pub id: u64,
    pub name: String,
    pub started_at: u64,
    pub sequence: u64,
    /// When its sender sent it (one clock for all in the simulation).
    pub sent: Duration,
    pub expires: Duration,
    pub redelivered: bool,
}

#[derive(Default)]
pub struct HeartbeatQueue {
    waiting: VecDeque<Hb>,
    consumers: Vec<usize>,
    /// Bumped when the active consumer changes: deliveries to the one before are void.
    pub epoch: u64,
    in_flight: Vec<Hb>,
    next_id: u64,
    /// Heartbeats the broker dropped because their TTL passed in the queue.
    pub expired: u64,
}

impl HeartbeatQueue {
    pub fn active(&self) -> Option<usize> {
        self.consumers.first().copied()
    }

    pub fn push(&mut self, mut hb: Hb) {
        self.next_id += 1;
        hb.id = self.next_id;
        hb.redelivered = false;
        self.waiting.push_back(hb);
    }

    pub fn subscribe(&mut self, node: usize) {
        if !self.consumers.contains(&node) {
            self.consumers.push(node);
        }
    }

    /// The consumer's link is gone (or it cancelled): its unacked deliveries go back to the
    /// head of the queue for the next consumer.
    pub fn unsubscribe(&mut self, node: usize) {
        let was_active = self.active() == Some(node);
        self.consumers.retain(|c| *c != node);
        if was_active {
            self.epoch += 1;
            for mut hb in self.in_flight.drain(..).rev() {
                hb.redelivered = true;
                self.waiting.push_front(hb);
            }
        }
    }

    /// What the broker sends the active consumer now: up to the prefetch, skipping what
    /// expired at the head.
    pub fn deliveries(&mut self, now: Duration) -> Vec<Hb> {
        let mut out = Vec::new();
        if self.active().is_none() {
            return out;
        }
        while self.in_flight.len() < PREFETCH {
            let Some(hb) = self.waiting.pop_front() else {
                break;
            };
            if hb.expires <= now {
                self.expired += 1;
                continue;
            }
            self.in_flight.push(hb.clone());
            out.push(hb);
        }
        out
    }

    /// The consumer acked delivery `id` of `epoch`; false when that delivery was void.
    pub fn ack(&mut self, id: u64, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        let before = self.in_flight.len();
        self.in_flight.retain(|hb| hb.id != id);
        self.in_flight.len() != before
    }
}
