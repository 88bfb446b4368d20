//! The digest leader's core (`cluster-protocol: digest`): what the consumer of the heartbeat
//! queue has heard of each member, and the digests that say so. Fed heartbeats and digest
//! ticks with an explicit `now`; no actor, broker or clock inside. `DigestLeader` is its
//! shell on a broker, the simulator (`actors/tests/simulation.rs`) on a simulated queue.
//!
//! Nobody is elected: RabbitMQ gives the heartbeat queue to one consumer at a time, so an
//! instance leads while heartbeats reach it and stops once they stop.
//!
//! A leader that reads the queue late (starved of CPU, a backlog after a stall) must not
//! take its own lag for its members' silence: a member whose later heartbeats wait unread in
//! the backlog would look silent to every registry. The leader knows its lag from a heartbeat
//! of its own choosing, its own (sent and read on one clock, so no clock skew enters): how
//! long the last one waited, or how overdue the next one is. Silence is measured on the
//! queue's clock: a member's age is how long ago it was heard, less the lag. While the lag is
//! over half the heartbeat TTL it sends no digests (the registries' guard then holds
//! everyone); if it went past the TTL, heartbeats were dropped unread, and every member gets a
//! fresh start once it has caught up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::info;

use crate::cluster::wire::{DigestEntry, MAX_FRAME};

/// Digest entries per broadcast are capped so that one frame stays well under `MAX_FRAME`.
const DIGEST_BYTES: usize = MAX_FRAME * 3 / 4;

/// How long a heartbeat may wait in the queue and still count (the announcer's TTL): read
/// later it would make a member that died meanwhile look alive. One interval was too short:
/// a leader starved of CPU read most heartbeats after their TTL. What waited less than
/// `peer-timeout` less an interval keeps its sender listed at most that much longer.
pub fn heartbeat_ttl(interval: Duration, peer_timeout: Duration) -> Duration {
    peer_timeout.saturating_sub(interval).max(interval)
}

/// What a heartbeat did to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Counted.
    Heard,
    /// The first one since it stopped leading: it leads now. Its shell seeds it with what
    /// its registry last heard ([`Leader::seed`]), digests a quarter interval later and then
    /// every interval.
    TookOver,
    /// Not counted (taken by a leader that died before acking it, or from an older run).
    Ignored,
}

struct Heard {
    started_at: u64,
    sequence: u64,
    at: Instant,
}

/// One member as this instance's registry last knew it, to seed a new leadership.
pub struct Known {
    pub name: String,
    pub started_at: u64,
    pub sequence: u64,
    pub heard_at: Instant,
}

pub struct Leader {
    me: String,
    /// This instance's run, for its own entry.
    started_at: u64,
    interval: Duration,
    peer_timeout: Duration,
    /// Per member: its run, the sequence of its latest announcement, when last heard.
    heard: HashMap<String, Heard>,
    last_heartbeat: Option<Instant>,
    leading: bool,
    /// When this leadership began, and when this instance last read a heartbeat of its own.
    led_since: Option<Instant>,
    own_read: Option<Instant>,
    /// How long its last own heartbeat waited.
    own_waited: Duration,
    /// Reading the queue too late for its digest to be complete: no digests until caught up.
    behind: bool,
    /// The lag passed the TTL in this spell: heartbeats were dropped unread.
    lost: bool,
    /// Test seam: a leader that digests however late it reads, which the simulator must catch.
    unguarded: bool,
}

impl Leader {
    pub fn new(me: String, started_at: u64, interval: Duration, peer_timeout: Duration) -> Self {
        Leader {
            me,
            started_at,
            interval,
            peer_timeout,
            heard: HashMap::new(),
            last_heartbeat: None,
            leading: false,
            led_since: None,
            own_read: None,
            own_waited: Duration::ZERO,
            behind: false,
            lost: false,
            unguarded: false,
        }
    }

    /// A leader that digests however late it reads (the bug the lag guard prevents), for the
    /// simulator's own test that it catches it.
    #[doc(hidden)]
    pub fn without_lag_guard(mut self) -> Self {
        self.unguarded = true;
        self
    }

    /// Whether it reads the queue too late to digest (see the module comment).
    pub fn behind(&self) -> bool {
        self.behind
    }

    fn ttl(&self) -> Duration {
        heartbeat_ttl(self.interval, self.peer_timeout)
    }

    /// How far behind the queue it reads: how long its last own heartbeat waited, or how
    /// overdue the next one is, whichever is more. Unknown until it has read one: how long it
    /// has led, less an interval.
    fn lag(&self, now: Instant) -> Duration {
        let last = self.own_read.or(self.led_since).unwrap_or(now);
        let overdue = now
            .saturating_duration_since(last)
            .saturating_sub(self.interval);
        self.own_waited.max(overdue)
    }

    /// Follows the lag: behind past half the TTL, caught up under a quarter of it. Catching up
    /// after heartbeats were dropped unread gives every member a fresh start.
    fn track_lag(&mut self, now: Instant) {
        let lag = self.lag(now);
        let ttl = self.ttl();
        if lag > ttl {
            self.lost = true;
        }
        if !self.behind && lag > ttl / 2 {
            self.behind = true;
            tracing::warn!(instance = %self.me, ?lag, "the heartbeat digest lags behind the queue: no digests until it catches up; nobody expires meanwhile");
        } else if self.behind && lag < ttl / 4 {
            self.behind = false;
            if std::mem::take(&mut self.lost) {
                for h in self.heard.values_mut() {
                    h.at = h.at.max(now);
                }
            }
            info!(instance = %self.me, ?lag, "the heartbeat digest caught up");
        }
    }

    pub fn leading(&self) -> bool {
        self.leading
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When a new leadership sends its first digest: soon, but after a few fresh heartbeats.
    pub fn first_digest_after(&self) -> Duration {
        self.interval / 4
    }

    /// A reload changed the timings.
    pub fn reconfigure(&mut self, interval: Duration, peer_timeout: Duration) {
        self.interval = interval;
        self.peer_timeout = peer_timeout;
    }

    /// The consumer is gone (a restart or a graceful stop): whatever comes next starts over.
    pub fn reset(&mut self) {
        self.leading = false;
        self.heard.clear();
        self.last_heartbeat = None;
        self.led_since = None;
        self.own_read = None;
        self.own_waited = Duration::ZERO;
        self.behind = false;
        self.lost = false;
    }

    /// A heartbeat from the queue. `redelivered`: a leader that died before acking took it;
    /// it is from before that death, and its sender's next one is due within an interval, so
    /// counting it would keep a dead sender alive a little longer. `waited`: how long it was
    /// on its way, by this instance's clock (only its own heartbeats are timed: their send
    /// time is on the same clock).
    pub fn heartbeat(
        &mut self,
        name: String,
        started_at: u64,
        sequence: u64,
        redelivered: bool,
        waited: Option<Duration>,
        now: Instant,
    ) -> Heartbeat {
        if redelivered {
            return Heartbeat::Ignored;
        }
        let took_over = !self.leading;
        if took_over {
            self.leading = true;
            self.led_since = Some(now);
            self.own_read = None;
            self.own_waited = Duration::ZERO;
            self.behind = false;
            self.lost = false;
            info!(instance = %self.me, "leading the heartbeat digest");
        }
        if name == self.me && started_at == self.started_at {
            self.own_read = Some(now);
            self.own_waited = waited.unwrap_or_default();
            self.track_lag(now);
        }
        self.last_heartbeat = Some(now);
        let counted = match self.heard.get_mut(&name) {
            // A restart's heartbeat replaces the old run; an older run's late one does not.
            Some(h) if h.started_at > started_at => false,
            Some(h) if h.started_at == started_at && h.sequence > sequence => {
                h.at = now;
                true
            }
            _ => {
                self.heard.insert(
                    name,
                    Heard {
                        started_at,
                        sequence,
                        at: now,
                    },
                );
                true
            }
        };
        match (took_over, counted) {
            (true, _) => Heartbeat::TookOver,
            (false, true) => Heartbeat::Heard,
            (false, false) => Heartbeat::Ignored,
        }
    }

    /// A new leadership (the previous leader died, left or stalled): what this instance's
    /// registry last heard of each member (through the previous leader's digests) is the
    /// starting point, with its true age, so the first digest lists every member. A digest of
    /// only the few heard since taking over would leave the others ageing toward their
    /// peer-timeout everywhere.
    pub fn seed(&mut self, known: impl IntoIterator<Item = Known>, now: Instant) {
        for k in known {
            if now.saturating_duration_since(k.heard_at) >= self.peer_timeout
                || self.heard.contains_key(&k.name)
            {
                continue;
            }
            self.heard.insert(
                k.name,
                Heard {
                    started_at: k.started_at,
                    sequence: k.sequence,
                    at: k.heard_at,
                },
            );
        }
    }

    /// The digest due now, in frames that each fit the wire; none once heartbeats stopped
    /// coming (another consumer has the queue, or this one stalled): it stops leading.
    pub fn digest(&mut self, now: Instant) -> Option<Vec<Vec<DigestEntry>>> {
        if !self.leading {
            return None;
        }
        let quiet = self
            .last_heartbeat
            .is_none_or(|at| now.saturating_duration_since(at) >= self.interval * 2);
        if quiet {
            // What was heard stays, with its true age: after a stall (this process frozen,
            // or starved of CPU) the next heartbeats make it lead again, and a digest that
            // listed only those would leave every other member unrefreshed.
            info!(instance = %self.me, "no heartbeats lately: not leading the digest");
            self.leading = false;
            return None;
        }
        // Unguarded (the test seam): ages by the wall clock, however late it reads.
        let lag = if self.unguarded {
            Duration::ZERO
        } else {
            self.track_lag(now);
            if self.behind {
                return None;
            }
            self.lag(now)
        };
        // This instance is alive, whatever its own heartbeat's place in the queue: after a
        // stall it sits behind everyone's backlog, and a digest without the leader made every
        // registry forget it while it was leading. Sequence 0 never reads as newer news than
        // what a registry holds.
        self.heard
            .entry(self.me.clone())
            .and_modify(|h| h.at = now)
            .or_insert(Heard {
                started_at: self.started_at,
                sequence: 0,
                at: now,
            });
        let timeout = self.peer_timeout;
        let age = |h: &Heard| now.saturating_duration_since(h.at).saturating_sub(lag);
        self.heard.retain(|_, h| age(h) < timeout);
        let entries = self.heard.iter().map(|(name, h)| DigestEntry {
            name: name.clone(),
            started_at: h.started_at,
            sequence: h.sequence,
            age_ms: u32::try_from(age(h).as_millis()).unwrap_or(u32::MAX),
        });
        Some(chunked(entries))
    }
}

/// Splits a digest into frames that each stay under [`DIGEST_BYTES`] encoded.
fn chunked(entries: impl Iterator<Item = DigestEntry>) -> Vec<Vec<DigestEntry>> {
    let mut chunks = vec![Vec::new()];
    let mut bytes = 0;
    for entry in entries {
        // The name, its length and three varints, at most.
        let size = entry.name.len() + 32;
        if bytes + size > DIGEST_BYTES {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(entry);
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::{ClusterMessage, Codec};

    /// 5,000 members with names of the longest hostname length: every frame encodes (under
    /// the wire's 64 KiB limit, signed), and every member is in exactly one.
    #[test]
    fn a_long_roster_goes_in_frames_that_fit() {
        let entries: Vec<DigestEntry> = (0..5000)
            .map(|i| DigestEntry {
                name: format!("{i:0>253}"),
                started_at: u64::MAX,
                sequence: u64::MAX,
                age_ms: u32::MAX,
            })
            .collect();
        let chunks = chunked(entries.clone().into_iter());
        assert!(chunks.len() > 1);
        let codec = Codec::new(Some("secret"), Duration::from_secs(30));
        for members in &chunks {
            let message = ClusterMessage::Digest {
                from: "x".repeat(253),
                members: members.clone(),
            };
            assert!(
                codec.encode(&message, 0).is_ok(),
                "{} members",
                members.len()
            );
        }
        let all: Vec<DigestEntry> = chunks.into_iter().flatten().collect();
        assert_eq!(all, entries);
    }

    fn names(leader: &mut Leader, now: Instant) -> Vec<String> {
        let mut names: Vec<String> = leader
            .digest(now)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .map(|e| e.name)
            .collect();
        names.sort();
        names
    }

    /// Leads from the first heartbeat, lists itself and whoever it heard within
    /// peer-timeout, and stops leading after two quiet intervals.
    #[test]
    fn leads_while_heartbeats_come() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut leader = Leader::new("me".into(), 1, 2 * s, 6 * s);
        assert_eq!(leader.digest(t0), None);
        assert_eq!(
            leader.heartbeat("a".into(), 1, 1, false, None, t0),
            Heartbeat::TookOver
        );
        assert_eq!(
            leader.heartbeat("b".into(), 1, 1, false, None, t0 + s),
            Heartbeat::Heard
        );
        assert_eq!(
            leader.heartbeat("c".into(), 1, 1, true, None, t0 + s),
            Heartbeat::Ignored
        );
        // Its own heartbeats come through the queue too, with little wait.
        leader.heartbeat("me".into(), 1, 0, false, Some(Duration::ZERO), t0 + s);
        assert_eq!(names(&mut leader, t0 + 2 * s), ["a", "b", "me"]);
        leader.heartbeat("b".into(), 1, 2, false, None, t0 + 4 * s);
        leader.heartbeat("me".into(), 1, 0, false, Some(Duration::ZERO), t0 + 4 * s);
        // a's heartbeat is 6 s old: gone from the digest.
        assert_eq!(names(&mut leader, t0 + 6 * s), ["b", "me"]);
        assert_eq!(leader.digest(t0 + 8 * s), None);
        assert!(!leader.leading());
    }

    /// A restart's heartbeat replaces the old run; the old run's late one does not.
    #[test]
    fn a_new_run_replaces_the_old() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut leader = Leader::new("me".into(), 1, 2 * s, 6 * s);
        leader.heartbeat("a".into(), 5, 3, false, None, t0);
        assert_eq!(
            leader.heartbeat("a".into(), 4, 9, false, None, t0 + s),
            Heartbeat::Ignored
        );
        let digest = leader.digest(t0 + s).unwrap_or_default();
        let a = digest.iter().flatten().find(|e| e.name == "a");
        assert_eq!(
            a.map(|e| (e.started_at, e.sequence, e.age_ms)),
            Some((5, 3, 1000))
        );
    }

    /// A new leadership lists what its registry knew, with its true age, and not what is
    /// older than peer-timeout.
    #[test]
    fn a_takeover_is_seeded_with_true_ages() {
        let t0 = Instant::now() + Duration::from_secs(60);
        let s = Duration::from_secs(1);
        let mut leader = Leader::new("me".into(), 1, 2 * s, 6 * s);
        leader.heartbeat("a".into(), 1, 1, false, None, t0);
        let known = |name: &str, ago: Duration| Known {
            name: name.into(),
            started_at: 1,
            sequence: 7,
            heard_at: t0 - ago,
        };
        leader.seed(
            [known("a", 3 * s), known("b", 3 * s), known("c", 7 * s)],
            t0,
        );
        let digest = leader.digest(t0).unwrap_or_default();
        let mut entries: Vec<(String, u64, u32)> = digest
            .into_iter()
            .flatten()
            .map(|e| (e.name, e.sequence, e.age_ms))
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                ("a".into(), 1, 0),
                ("b".into(), 7, 3000),
                ("me".into(), 0, 0)
            ]
        );
    }

    /// Its own heartbeat waited past half the TTL: no digest; caught up: digests again, the
    /// ages less the lag; behind past the TTL, everyone starts afresh.
    #[test]
    fn a_leader_behind_the_queue_sends_no_digest() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        // TTL 4 s: behind past 2 s of lag, caught up under 1 s.
        let mut leader = Leader::new("me".into(), 1, 2 * s, 6 * s);
        leader.heartbeat("me".into(), 1, 1, false, Some(s / 10), t0);
        leader.heartbeat("a".into(), 1, 1, false, None, t0);
        assert!(leader.digest(t0).is_some());
        leader.heartbeat("me".into(), 1, 1, false, Some(3 * s), t0 + s);
        assert!(leader.behind());
        assert_eq!(leader.digest(t0 + 2 * s), None);
        assert!(leader.leading());
        // Others' heartbeats still come (late), but no own one for 7 s: the next is 5 s
        // overdue, past the TTL, so heartbeats were dropped unread.
        for t in [3, 5, 7] {
            leader.heartbeat("b".into(), 1, 1, false, None, t0 + t * s);
        }
        assert_eq!(leader.digest(t0 + 8 * s), None);
        // Caught up at 8 s: a was heard 8 s ago, but it starts afresh instead of expiring.
        leader.heartbeat("me".into(), 1, 1, false, Some(s / 2), t0 + 8 * s);
        assert!(!leader.behind());
        let digest = leader.digest(t0 + 8 * s).unwrap_or_default();
        let a = digest
            .iter()
            .flatten()
            .find(|e| e.name == "a")
            .map(|e| e.age_ms);
        assert_eq!(a, Some(0));
    }
}
