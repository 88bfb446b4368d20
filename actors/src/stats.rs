//! Counters of one instance, shared by its actors and read by the demo, tests and the console.
//! Plain atomics: they are bumped on the hot path and must never wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries taken from the outbox (redeliveries included).
    pub consumed: AtomicU64,
    pub delivered: AtomicU64,
    pub handed_over: AtomicU64,
    /// Messages moved from this instance's handover queue on the cluster broker to its outbox.
    pub relayed: AtomicU64,
    pub held: AtomicU64,
    pub failed: AtomicU64,
    /// Handovers the broker returned (peer outbox missing); re-routed by the unroutable policy.
    pub handover_returned: AtomicU64,
    /// Second copies of messages already delivered or failed here, acked without routing.
    pub duplicates_dropped: AtomicU64,
    /// Outbox messages dropped before their publish because the consumer run that took them
    /// ended (its channel closed): the broker had requeued them, and routes the redelivery.
    pub stale_dropped: AtomicU64,
    /// Messages whose IPs nobody known owns, kept back while the cluster was not heard (after
    /// a reconnect or a reload) instead of being held, failed or sent from here.
    pub deferred: AtomicU64,
    /// Publishes that failed; the original was requeued for another try.
    pub publish_errors: AtomicU64,
    /// Own queues (deliver, retry, failure) found missing at publish time and declared again.
    pub queues_redeclared: AtomicU64,
    pub announcements_sent: AtomicU64,
    pub announcements_received: AtomicU64,
    /// Cluster frames taken from the broker (listener queue and heartbeat queue), whatever
    /// they held: this instance's share of the cluster broker's deliveries.
    pub cluster_deliveries: AtomicU64,
    /// Peers forgotten for silence (after `peer-timeout`, or not back after a reload).
    pub peers_expired: AtomicU64,
    /// `cluster-protocol: digest`: heartbeats put into the heartbeat queue, digests broadcast
    /// (as the queue's active consumer) and received, asks sent and answered.
    pub heartbeats_sent: AtomicU64,
    pub digests_sent: AtomicU64,
    pub digests_received: AtomicU64,
    pub asks_sent: AtomicU64,
    pub asks_answered: AtomicU64,
    /// Broker proofs: challenges put into peers' presence queues, challenges of peers
    /// answered, and answers received that proved a peer's outbox on a broker of ours.
    pub challenges_sent: AtomicU64,
    pub challenges_answered: AtomicU64,
    pub presences_proven: AtomicU64,
    pub ownership_conflicts: AtomicU64,
    /// IP conflicts that exist now (a gauge): an IP two instances claim.
    pub ip_conflicts: AtomicU64,
    /// How often lasting IP conflicts were logged again.
    pub conflict_reminders: AtomicU64,
    /// Peers announcing other cluster settings than this instance's.
    pub config_drift: AtomicU64,
    pub dropped_oversized: AtomicU64,
    pub dropped_bad_magic: AtomicU64,
    pub dropped_bad_version: AtomicU64,
    pub dropped_garbage: AtomicU64,
    pub dropped_unsigned: AtomicU64,
    pub dropped_bad_signature: AtomicU64,
    pub dropped_stale: AtomicU64,
    /// Well-formed frames this instance would not act on (a challenge with a foreign reply
    /// address or over the answer budget, an answer to no challenge of ours).
    pub dropped_refused: AtomicU64,
    /// Copies of a signed command already acted on (see `replay_guard`).
    pub dropped_replayed: AtomicU64,
    pub reloads: AtomicU64,
    pub restarts: AtomicU64,
    /// 1 while paused for maintenance (no outbox consumer), else 0.
    pub paused: AtomicU64,
    /// 1 while the registry hears nothing on the cluster exchange, not even itself (a link
    /// gone silent): nobody expires meanwhile. Else 0.
    pub deaf: AtomicU64,
    /// How often the registry went deaf.
    pub deaf_spells: AtomicU64,
    /// 1 while this instance leads the heartbeat digest but reads the queue too late to
    /// digest (it sends none, and nobody expires meanwhile). Else 0.
    pub digest_behind: AtomicU64,
    /// From publishing a handover copy to the broker's confirm of it.
    pub handover_seconds: Histogram,
}

/// Upper bounds of [`Histogram`]'s buckets, in seconds; one more bucket takes the rest.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram of plain atomics (fixed buckets), cheap enough for every handover.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        bump(&self.counts[bucket]);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Sum in seconds, count, and per bucket its upper bound and count (not cumulative; the
    /// last bound is infinity).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub consumed: u64,
    pub delivered: u64,
    pub handed_over: u64,
    pub relayed: u64,
    pub held: u64,
    pub failed: u64,
    pub handover_returned: u64,
    pub duplicates_dropped: u64,
    pub stale_dropped: u64,
    pub deferred: u64,
    pub publish_errors: u64,
    pub queues_redeclared: u64,
    pub announcements_sent: u64,
    pub announcements_received: u64,
    pub cluster_deliveries: u64,
    pub peers_expired: u64,
    pub heartbeats_sent: u64,
    pub digests_sent: u64,
    pub digests_received: u64,
    pub asks_sent: u64,
    pub asks_answered: u64,
    pub challenges_sent: u64,
    pub challenges_answered: u64,
    pub presences_proven: u64,
    pub ownership_conflicts: u64,
    pub ip_conflicts: u64,
    pub conflict_reminders: u64,
    pub config_drift: u64,
    pub dropped: u64,
    pub reloads: u64,
    pub restarts: u64,
    pub paused: bool,
    pub deaf: bool,
    pub deaf_spells: u64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Counts a dropped cluster message under its reason.
    pub fn dropped(&self, reason: &str) {
        bump(match reason {
            "oversized" => &self.dropped_oversized,
            "bad_magic" => &self.dropped_bad_magic,
            "bad_version" => &self.dropped_bad_version,
            "unsigned" => &self.dropped_unsigned,
            "bad_signature" => &self.dropped_bad_signature,
            "stale" => &self.dropped_stale,
            "refused" => &self.dropped_refused,
            "replayed" => &self.dropped_replayed,
            _ => &self.dropped_garbage,
        });
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            consumed: get(&self.consumed),
            delivered: get(&self.delivered),
            handed_over: get(&self.handed_over),
            relayed: get(&self.relayed),
            held: get(&self.held),
            failed: get(&self.failed),
            handover_returned: get(&self.handover_returned),
            duplicates_dropped: get(&self.duplicates_dropped),
            stale_dropped: get(&self.stale_dropped),
            deferred: get(&self.deferred),
            publish_errors: get(&self.publish_errors),
            queues_redeclared: get(&self.queues_redeclared),
            announcements_sent: get(&self.announcements_sent),
            announcements_received: get(&self.announcements_received),
            cluster_deliveries: get(&self.cluster_deliveries),
            peers_expired: get(&self.peers_expired),
            heartbeats_sent: get(&self.heartbeats_sent),
            digests_sent: get(&self.digests_sent),
            digests_received: get(&self.digests_received),
            asks_sent: get(&self.asks_sent),
            asks_answered: get(&self.asks_answered),
            challenges_sent: get(&self.challenges_sent),
            challenges_answered: get(&self.challenges_answered),
            presences_proven: get(&self.presences_proven),
            ownership_conflicts: get(&self.ownership_conflicts),
            ip_conflicts: get(&self.ip_conflicts),
            conflict_reminders: get(&self.conflict_reminders),
            config_drift: get(&self.config_drift),
            dropped: get(&self.dropped_oversized)
                + get(&self.dropped_bad_magic)
                + get(&self.dropped_bad_version)
                + get(&self.dropped_garbage)
                + get(&self.dropped_unsigned)
                + get(&self.dropped_bad_signature)
                + get(&self.dropped_stale)
                + get(&self.dropped_replayed),
            reloads: get(&self.reloads),
            restarts: get(&self.restarts),
            paused: get(&self.paused) == 1,
            deaf: get(&self.deaf) == 1,
            deaf_spells: get(&self.deaf_spells),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_puts_each_time_in_its_bucket() {
        let h = Histogram::default();
        for ms in [0, 1, 3, 3, 30, 5_000] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 6);
        assert!((sum - 5.037).abs() < 1e-9, "{sum}");
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(
            (
                at(0.0005),
                at(0.001),
                at(0.005),
                at(0.05),
                at(f64::INFINITY)
            ),
            (1, 1, 2, 1, 1)
        );
    }
}
