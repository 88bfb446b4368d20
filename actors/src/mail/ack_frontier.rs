//! The outbox consumer's ack frontier, without I/O: which deliveries are unsettled, which are
//! confirmed, and what to ack next. `OutboxConsumer` sends what [`AckFrontier::next_acks`]
//! answers and reports back; the clock is passed in.
//!
//! Acks go out as AMQP `multiple` acks, one at a time: while one is on its way, the deliveries
//! confirmed meanwhile wait for the next. Under load one frame settles a whole run of them;
//! when idle, each is acked at once. A delivery can only be covered once every earlier one is
//! confirmed (or its nack was sent), so a `multiple` ack never settles a message it should
//! not. A delivery that stays unsettled long (a requeue waiting out its backoff, mail waiting
//! for the cluster to be heard) does not hold back the others: those behind it are acked one
//! by one instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the oldest unsettled delivery may hold back the acks of those behind it.
pub const STALL: Duration = Duration::from_millis(250);

enum Pending<A> {
    /// With the router or the publisher; `redelivered` as the broker said.
    Routed {
        acker: A,
        redelivered: bool,
        since: Instant,
    },
    /// Its outcome is confirmed: to be acked with the next `multiple` ack.
    Confirmed(A),
    /// Its nack is waiting or being sent; a `multiple` ack must not pass it until then.
    Nacking,
}

/// What to ack now.
#[derive(Debug, PartialEq, Eq)]
pub enum Acks<A> {
    /// One `multiple` ack through this delivery.
    Through(A),
    /// Each of these on its own: the front has stalled.
    Each(Vec<A>),
    /// Confirmed ones wait behind the front: ask again after [`STALL`].
    Later,
    /// Nothing to ack, or an ack is on its way.
    None,
}

/// Deliveries not yet acked or nacked, in delivery order (ids grow with delivery tags).
pub struct AckFrontier<A> {
    in_flight: BTreeMap<u64, Pending<A>>,
    /// An ack is on its way; deliveries confirmed meanwhile go in the next one.
    ack_busy: bool,
}

impl<A> Default for AckFrontier<A> {
    fn default() -> Self {
        AckFrontier {
            in_flight: BTreeMap::new(),
            ack_busy: false,
        }
    }
}

impl<A> AckFrontier<A> {
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// A restart: the broker requeues everything, and the old ackers are dead.
    pub fn clear(&mut self) {
        self.in_flight.clear();
        self.ack_busy = false;
    }

    /// Delivery `id` went to the router.
    pub fn routed(&mut self, id: u64, acker: A, redelivered: bool, now: Instant) {
        self.in_flight.insert(
            id,
            Pending::Routed {
                acker,
                redelivered,
                since: now,
            },
        );
    }

    /// The outcome of a routed delivery came: its acker and whether it was redelivered. None
    /// when `id` is not with the router (settled twice, or from before a restart).
    pub fn settle(&mut self, id: u64) -> Option<(A, bool)> {
        match self.in_flight.remove(&id)? {
            Pending::Routed {
                acker, redelivered, ..
            } => Some((acker, redelivered)),
            other => {
                self.in_flight.insert(id, other);
                None
            }
        }
    }

    /// Its outcome is confirmed: it goes with the next ack.
    pub fn confirmed(&mut self, id: u64, acker: A) {
        self.in_flight.insert(id, Pending::Confirmed(acker));
    }

    /// Its nack is waiting or being sent: no `multiple` ack passes it until [`Self::nacked`].
    pub fn nacking(&mut self, id: u64) {
        self.in_flight.insert(id, Pending::Nacking);
    }

    pub fn nacked(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }

    /// The ack on its way was answered (or failed).
    pub fn ack_done(&mut self) {
        self.ack_busy = false;
    }

    /// What to ack now; an answer with ackers marks an ack on its way until
    /// [`Self::ack_done`].
    pub fn next_acks(&mut self, now: Instant) -> Acks<A> {
        if self.ack_busy {
            return Acks::None;
        }
        let mut last = None;
        while let Some(entry) = self.in_flight.first_entry() {
            if !matches!(entry.get(), Pending::Confirmed(_)) {
                break;
            }
            if let Pending::Confirmed(acker) = entry.remove() {
                last = Some(acker);
            }
        }
        if let Some(acker) = last {
            self.ack_busy = true;
            return Acks::Through(acker);
        }
        let stalled = match self.in_flight.values().next() {
            None => return Acks::None,
            Some(Pending::Nacking) => true,
            Some(Pending::Routed { since, .. }) => now.saturating_duration_since(*since) >= STALL,
            Some(Pending::Confirmed(_)) => false,
        };
        let waiting = self
            .in_flight
            .values()
            .any(|p| matches!(p, Pending::Confirmed(_)));
        if !waiting {
            return Acks::None;
        }
        if !stalled {
            return Acks::Later;
        }
        let ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Confirmed(_)))
            .map(|(id, _)| *id)
            .collect();
        let ackers = ids
            .into_iter()
            .filter_map(|id| match self.in_flight.remove(&id) {
                Some(Pending::Confirmed(acker)) => Some(acker),
                _ => None,
            })
            .collect();
        self.ack_busy = true;
        Acks::Each(ackers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontier(n: u64, now: Instant) -> AckFrontier<u64> {
        let mut f = AckFrontier::default();
        for id in 1..=n {
            f.routed(id, id, false, now);
        }
        f
    }

    fn confirm(f: &mut AckFrontier<u64>, id: u64) {
        let (acker, _) = f.settle(id).expect("routed");
        f.confirmed(id, acker);
    }

    /// Confirmed in order: one `multiple` ack through the last confirmed; those confirmed
    /// while it is on its way go in the next.
    #[test]
    fn a_run_of_confirmed_deliveries_takes_one_ack() {
        let t0 = Instant::now();
        let mut f = frontier(5, t0);
        confirm(&mut f, 1);
        confirm(&mut f, 2);
        assert_eq!(f.next_acks(t0), Acks::Through(2));
        confirm(&mut f, 3);
        confirm(&mut f, 4);
        assert_eq!(f.next_acks(t0), Acks::None, "one ack at a time");
        f.ack_done();
        assert_eq!(f.next_acks(t0), Acks::Through(4));
        f.ack_done();
        assert_eq!(f.next_acks(t0), Acks::None);
        assert!(!f.is_empty());
    }

    /// A `multiple` ack never passes an unsettled delivery: confirmed ones behind it wait for
    /// STALL, then go one by one.
    #[test]
    fn a_stalled_front_does_not_hold_back_the_rest() {
        let t0 = Instant::now();
        let mut f = frontier(3, t0);
        confirm(&mut f, 2);
        confirm(&mut f, 3);
        assert_eq!(f.next_acks(t0), Acks::Later);
        assert_eq!(f.next_acks(t0 + STALL), Acks::Each(vec![2, 3]));
        f.ack_done();
        confirm(&mut f, 1);
        assert_eq!(f.next_acks(t0 + STALL), Acks::Through(1));
        f.ack_done();
        assert!(f.is_empty());
    }

    /// A nack on its way stalls the front at once; once sent, the front moves on.
    #[test]
    fn a_nack_holds_the_front_until_sent() {
        let t0 = Instant::now();
        let mut f = frontier(2, t0);
        let _ = f.settle(1);
        f.nacking(1);
        confirm(&mut f, 2);
        assert_eq!(f.next_acks(t0), Acks::Each(vec![2]));
        f.ack_done();
        f.nacked(1);
        assert!(f.is_empty());
    }

    /// An outcome for a delivery that is not with the router changes nothing.
    #[test]
    fn settling_twice_is_ignored() {
        let t0 = Instant::now();
        let mut f = frontier(1, t0);
        confirm(&mut f, 1);
        assert_eq!(f.settle(1), None);
        assert_eq!(f.settle(9), None);
        assert_eq!(f.next_acks(t0), Acks::Through(1));
    }
}
