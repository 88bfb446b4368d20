//! The two ways a cluster keeps track of its members, behind one interface. `Mesh`: every
//! instance announces to every other each interval, and hears its own announcement back, so
//! a silence of its own is deafness. `Digest`: announcements only on change, liveness from a
//! leader's digest of everyone's heartbeats; no digest means silence says nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Effect;
use super::roster::Roster;
use crate::cluster::wire::{ClusterMessage, DigestEntry};
use crate::settings::ClusterProtocol;
use crate::stats::{Stats, bump};

/// Names in one `Ask`: 255-byte names still fit a frame.
const MAX_ASKED: usize = 200;

/// What the registry hears on the cluster exchange, whichever the protocol.
pub struct Ears {
    /// The listener is consuming: silence means something.
    pub listening: bool,
    /// When the listener last took a frame, any frame.
    pub last_frame: Instant,
    pub deaf: bool,
}

/// What a digest told: who was heard (alive), and whose announcements to ask for.
#[derive(Default)]
pub struct DigestNews {
    pub heard: Vec<String>,
    pub wanted: Vec<String>,
    /// A member was vouched for the first time: its deadline came closer.
    pub vouched: bool,
}

/// The timings a strategy decides by.
#[derive(Clone, Copy)]
pub struct Timing {
    pub announce_interval: Duration,
    pub peer_timeout: Duration,
}

pub trait Liveness: Send {
    fn protocol(&self) -> ClusterProtocol;

    /// Whether silence now says nothing of the peers, so that nobody expires.
    fn silence_says_nothing(
        &mut self,
        ears: &mut Ears,
        timing: Timing,
        stats: &Stats,
        now: Instant,
    ) -> bool;

    /// Whether an announcement is proof enough that its sender is alive.
    fn announcement_vouches(&self) -> bool;

    /// A newcomer joined.
    fn on_join(&self, effects: &mut Vec<Effect>);

    /// Somebody asked for this instance's announcement, to go to `reply_to`.
    fn on_ask(&self, reply_to: String, effects: &mut Vec<Effect>);

    /// The cluster reloads.
    fn on_reload(&self, effects: &mut Vec<Effect>);

    /// What the listener says when it (re)starts, to be heard by everyone.
    fn hello(&self, me: &str, queue: &str) -> ClusterMessage;

    /// The listener is consuming again.
    fn on_listening(&self, effects: &mut Vec<Effect>);

    /// A digest came (only a digest leader sends them).
    fn on_digest(
        &mut self,
        roster: &mut Roster,
        me: &str,
        from: String,
        members: Vec<DigestEntry>,
        timing: Timing,
        now: Instant,
    ) -> DigestNews;

    /// After a reload, may silence within the window forget a peer?
    fn silence_counts_after_reload(&self, timing: Timing, now: Instant) -> bool;
}

pub fn for_protocol(protocol: ClusterProtocol) -> Box<dyn Liveness> {
    match protocol {
        ClusterProtocol::Mesh => Box::new(Mesh),
        ClusterProtocol::Digest => Box::new(Digest::default()),
    }
}

pub struct Mesh;

impl Liveness for Mesh {
    fn protocol(&self) -> ClusterProtocol {
        ClusterProtocol::Mesh
    }

    /// Its own announcement comes back every interval: a longer silence is this instance's
    /// deafness (a link that stopped without closing), not the peers' death.
    fn silence_says_nothing(
        &mut self,
        ears: &mut Ears,
        timing: Timing,
        stats: &Stats,
        now: Instant,
    ) -> bool {
        let silent = now.saturating_duration_since(ears.last_frame);
        if silent < timing.announce_interval * 3 / 2 {
            return false;
        }
        if !ears.deaf {
            ears.deaf = true;
            bump(&stats.deaf_spells);
            stats.deaf.store(1, std::sync::atomic::Ordering::Relaxed);
            warn!(
                ?silent,
                "this instance hears nothing on the cluster exchange, not even itself: deaf; nobody expires until it hears again"
            );
        }
        true
    }

    /// Liveness is the announcements themselves.
    fn announcement_vouches(&self) -> bool {
        true
    }

    /// The newcomer may not know us yet.
    fn on_join(&self, effects: &mut Vec<Effect>) {
        effects.push(Effect::Announce);
    }

    fn on_ask(&self, _reply_to: String, effects: &mut Vec<Effect>) {
        effects.push(Effect::Announce);
    }

    /// Everyone announces on a reload; a peer that does not within the window is forgotten.
    fn on_reload(&self, effects: &mut Vec<Effect>) {
        effects.push(Effect::Announce);
    }

    fn hello(&self, me: &str, _queue: &str) -> ClusterMessage {
        ClusterMessage::Hello {
            from: Some(me.to_owned()),
        }
    }

    fn on_listening(&self, _effects: &mut Vec<Effect>) {}

    fn on_digest(
        &mut self,
        _roster: &mut Roster,
        _me: &str,
        _from: String,
        _members: Vec<DigestEntry>,
        _timing: Timing,
        _now: Instant,
    ) -> DigestNews {
        // No leader runs in a mesh; a digest here is from a member configured otherwise
        // (its config hash differs, and that is warned of).
        DigestNews::default()
    }

    fn silence_counts_after_reload(&self, _timing: Timing, _now: Instant) -> bool {
        true
    }
}

#[derive(Default)]
pub struct Digest {
    /// When the last digest came, and whether they have stopped coming.
    last_digest: Option<Instant>,
    quiet: bool,
    /// Who sent the last digest: a change is a new leadership.
    from: Option<String>,
    /// Names asked for lately, so a digest does not ask again before the answer had time
    /// to come.
    asked: HashMap<String, Instant>,
}

impl Digest {
    /// A digest is overdue (or none came yet), so silence says nothing.
    fn missing(&self, timing: Timing, now: Instant) -> bool {
        self.last_digest
            .is_none_or(|at| now.saturating_duration_since(at) >= timing.announce_interval * 3 / 2)
    }
}

impl Liveness for Digest {
    fn protocol(&self) -> ClusterProtocol {
        ClusterProtocol::Digest
    }

    /// A digest missed (or none yet): the heartbeat leader is frozen (a stopped process holds
    /// its consumer until its connection times out) or being replaced. That silence says
    /// nothing of the others; forgetting them all would hold their mail.
    fn silence_says_nothing(
        &mut self,
        _ears: &mut Ears,
        timing: Timing,
        _stats: &Stats,
        now: Instant,
    ) -> bool {
        if !self.missing(timing, now) {
            return false;
        }
        if !self.quiet {
            self.quiet = true;
            if self.last_digest.is_some() {
                warn!(
                    quiet = ?(timing.announce_interval * 3 / 2),
                    "no digest lately: no peer expires until digests come again"
                );
            }
        }
        true
    }

    /// Liveness is the leader's: until a digest lists it, a member is only heard of.
    fn announcement_vouches(&self) -> bool {
        false
    }

    /// It asked everyone already.
    fn on_join(&self, _effects: &mut Vec<Effect>) {}

    fn on_ask(&self, reply_to: String, effects: &mut Vec<Effect>) {
        effects.push(Effect::AnswerAsk { reply_to });
    }

    /// The digests re-validate the peers; each instance announces itself if the reload
    /// changed what it announces. Everyone announcing to everyone at once would be N².
    fn on_reload(&self, _effects: &mut Vec<Effect>) {}

    /// Everyone answers into this queue alone (N deliveries, not N²).
    fn hello(&self, me: &str, queue: &str) -> ClusterMessage {
        ClusterMessage::Ask {
            from: me.to_owned(),
            reply_to: queue.to_owned(),
            names: Vec::new(),
        }
    }

    /// Only now: whoever started before and missed it hears our `Ask`.
    fn on_listening(&self, effects: &mut Vec<Effect>) {
        effects.push(Effect::Announce);
    }

    /// Refreshes the members heard lately, and lists the announcements this registry lacks
    /// or holds an older one of.
    fn on_digest(
        &mut self,
        roster: &mut Roster,
        me: &str,
        from: String,
        members: Vec<DigestEntry>,
        timing: Timing,
        now: Instant,
    ) -> DigestNews {
        let first = self.last_digest.replace(now).is_none();
        let new_leader = self.from.as_ref().is_some_and(|f| *f != from);
        let mut news = DigestNews::default();
        // A digest is its sender's proof of life, whatever the entries say of it.
        if let Some(leader) = roster.live.get_mut(&from) {
            leader.last_seen = now;
            news.vouched |= !leader.vouched;
            leader.vouched = true;
            news.heard.push(from.clone());
        }
        self.from = Some(from);
        if new_leader || self.quiet {
            // A new leader, or digests again after a pause: what was not heard in between is
            // as old as the gap, and the leader may not have heard every member yet (a
            // heartbeat per interval reaches it; the last digest's news was already up to two
            // intervals old). Everyone gets at least two more intervals from now; a dead
            // leader is no longer in them, and expires as before.
            if new_leader {
                info!(leader = ?self.from, "a new digest leader");
            } else if !first {
                info!("digests again");
            }
            self.quiet = false;
            let grace = timing
                .peer_timeout
                .saturating_sub(timing.announce_interval * 2);
            let floor = now.checked_sub(grace).unwrap_or(now);
            for peer in roster.live.values_mut() {
                peer.last_seen = peer.last_seen.max(floor);
            }
        }
        for entry in members {
            if entry.name == me {
                continue;
            }
            let age = Duration::from_millis(u64::from(entry.age_ms));
            if age >= timing.peer_timeout {
                continue;
            }
            let heard_at = now.checked_sub(age).unwrap_or(now);
            match roster.live.get_mut(&entry.name) {
                Some(peer) if peer.announcement.started_at == entry.started_at => {
                    peer.last_seen = peer.last_seen.max(heard_at);
                    news.vouched |= !peer.vouched;
                    peer.vouched = true;
                    let stale = entry.sequence > peer.announcement.sequence;
                    news.heard.push(entry.name.clone());
                    if stale {
                        news.wanted.push(entry.name);
                    }
                }
                // Its old run's news is all this registry has.
                Some(peer) if peer.announcement.started_at < entry.started_at => {
                    news.wanted.push(entry.name);
                }
                Some(_) => {}
                None => {
                    if !roster.left(&entry.name, entry.started_at) {
                        news.wanted.push(entry.name);
                    }
                }
            }
        }
        let again = timing.announce_interval;
        self.asked
            .retain(|_, at| now.saturating_duration_since(*at) < again);
        news.wanted.retain(|name| !self.asked.contains_key(name));
        // One frame holds a few hundred names of any length; the rest go with the next digest.
        news.wanted.truncate(MAX_ASKED);
        for name in &news.wanted {
            self.asked.insert(name.clone(), now);
        }
        news
    }

    /// With no digests (a frozen or replaced leader) nobody could be heard, and the expiry
    /// sweep takes over once they come.
    fn silence_counts_after_reload(&self, timing: Timing, now: Instant) -> bool {
        !self.missing(timing, now)
    }
}
