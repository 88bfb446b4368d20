//! Counters of one instance, shared by its actors and read by the demo, tests and the console.
//! Plain atomics: they are bumped on the hot path and must never wait.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Messages the broker returned with another publish's confirm, kept by this instance.
    pub strays_kept: AtomicU64,
    /// Second copies of messages already delivered or failed here, acked without routing.
    pub duplicates_dropped: AtomicU64,
    /// Messages whose IPs nobody known owns, kept back while the cluster was not heard (after
    /// a reconnect or a reload) instead of being held, failed or sent from here.
    pub deferred: AtomicU64,
    /// Publishes that failed; the original was requeued for another try.
    pub publish_errors: AtomicU64,
    /// Own queues (deliver, retry, failure) found missing at publish time and declared again.
    pub queues_redeclared: AtomicU64,
    pub announcements_sent: AtomicU64,
    pub announcements_received: AtomicU64,
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
    pub reloads: AtomicU64,
    pub restarts: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub consumed: u64,
    pub delivered: u64,
    pub handed_over: u64,
    pub relayed: u64,
    pub held: u64,
    pub failed: u64,
    pub handover_returned: u64,
    pub strays_kept: u64,
    pub duplicates_dropped: u64,
    pub deferred: u64,
    pub publish_errors: u64,
    pub queues_redeclared: u64,
    pub announcements_sent: u64,
    pub announcements_received: u64,
    pub ownership_conflicts: u64,
    pub ip_conflicts: u64,
    pub conflict_reminders: u64,
    pub config_drift: u64,
    pub dropped: u64,
    pub reloads: u64,
    pub restarts: u64,
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
            strays_kept: get(&self.strays_kept),
            duplicates_dropped: get(&self.duplicates_dropped),
            deferred: get(&self.deferred),
            publish_errors: get(&self.publish_errors),
            queues_redeclared: get(&self.queues_redeclared),
            announcements_sent: get(&self.announcements_sent),
            announcements_received: get(&self.announcements_received),
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
                + get(&self.dropped_stale),
            reloads: get(&self.reloads),
            restarts: get(&self.restarts),
        }
    }
}
