//! The digest leader's core (`cluster-protocol: digest`): what the consumer of the heartbeat
//! queue has heard of each member, and the digests that say so. Fed heartbeats and digest
//! ticks with an explicit `now`; no actor, broker or clock inside. `DigestLeader` is its
//! shell on a broker, the simulator (`actors/tests/simulation.rs`) on a simulated queue.
//!
//! Nobody is elected: RabbitMQ gives the heartbeat queue to one consumer at a time, so an
//! instance leads while heartbeats reach it and stops once they stop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::info;

use crate::cluster::wire::{DigestEntry, MAX_FRAME};

/// Digest entries per broadcast are capped so that one frame stays well under `MAX_FRAME`.
const DIGEST_BYTES: usize = MAX_FRAME * 3 / 4;

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
    }

    /// A heartbeat from the queue. `redelivered`: a leader that died before acking took it;
    /// it is from before that death, and its sender's next one is due within an interval, so
    /// counting it would keep a dead sender alive a little longer.
    pub fn heartbeat(
        &mut self,
        name: String,
        started_at: u64,
        sequence: u64,
        redelivered: bool,
        now: Instant,
    ) -> Heartbeat {
        if redelivered {
            return Heartbeat::Ignored;
        }
        let took_over = !self.leading;
        if took_over {
            self.leading = true;
            info!(instance = %self.me, "leading the heartbeat digest");
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
        self.heard
            .retain(|_, h| now.saturating_duration_since(h.at) < timeout);
        let entries = self.heard.iter().map(|(name, h)| DigestEntry {
            name: name.clone(),
            started_at: h.started_at,
            sequence: h.sequence,
            age_ms: u32::try_from(now.saturating_duration_since(h.at).as_millis())
                .unwrap_or(u32::MAX),
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
            leader.heartbeat("a".into(), 1, 1, false, t0),
            Heartbeat::TookOver
        );
        assert_eq!(
            leader.heartbeat("b".into(), 1, 1, false, t0 + s),
            Heartbeat::Heard
        );
        assert_eq!(
            leader.heartbeat("c".into(), 1, 1, true, t0 + s),
            Heartbeat::Ignored
        );
        assert_eq!(names(&mut leader, t0 + 2 * s), ["a", "b", "me"]);
        leader.heartbeat("b".into(), 1, 2, false, t0 + 4 * s);
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
        leader.heartbeat("a".into(), 5, 3, false, t0);
        assert_eq!(
            leader.heartbeat("a".into(), 4, 9, false, t0 + s),
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
        leader.heartbeat("a".into(), 1, 1, false, t0);
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
}
