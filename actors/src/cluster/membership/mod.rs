//! The membership core: who is in the cluster and who owns which IP, as a plain state machine.
//! It is fed cluster messages, listener events and ticks, each with an explicit `now`, and
//! answers with [`Effect`]s for its shell to carry out (`PeerRegistry` does, on a broker; the
//! simulator in `actors/tests/simulation.rs` does, on a simulated exchange). No actor, broker
//! or clock inside, so any schedule of events can be replayed exactly.
//!
//! Silence is only evidence while this instance listens: when *it* cannot hear (its listener
//! reconnects, or it hears not even itself), no peer expires, and once it listens again every
//! peer gets a full `peer-timeout` to be heard. Until the cluster has been heard again (every
//! peer known before re-announced, or a rejoin window of two announce intervals passed), the
//! router keeps back mail that no known peer owns. A reload does the same: peers are
//! re-validated (kept while they re-announce within the window), not forgotten first.

mod announcements;
mod hearing;
pub mod leader;
mod ownership;
mod presence;
mod roster;
mod strategy;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use crate::cluster::wire::ClusterMessage;
use crate::mail::routing::{PeerRoute, Via};
use crate::messages::{PeerInfo, PeerState};
use crate::settings::ClusterProtocol;
use crate::stats::{Stats, bump};
pub use presence::ANSWER_WAIT;
use roster::Roster;
use strategy::{Ears, Liveness, Timing};

/// What the core asks its shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The router's new table: each claimed IP and its owner.
    Ownership(Vec<(IpAddr, Arc<PeerRoute>)>),
    /// Whether the cluster is heard (the router keeps unowned mail back while it is not).
    Hearing(bool),
    /// Announce this instance now.
    Announce,
    /// Send this instance's announcement to `reply_to` alone (digest mode).
    AnswerAsk { reply_to: String },
    /// Ask the named instances for their announcements, into this listener's queue.
    Ask {
        reply_to: String,
        names: Vec<String>,
    },
    /// Put a challenge with `nonce` into `peer`'s presence queue, on the broker `via` names;
    /// tell [`Membership::challenge_failed`] if the broker returns it.
    Challenge {
        peer: String,
        via: Via,
        nonce: u64,
        reply_to: String,
    },
    /// Peer outboxes this instance will not publish to any more.
    Released(Vec<Arc<PeerRoute>>),
    /// The cluster asks for a maintenance pause (`true`) or its end.
    Pause(bool),
    /// The cluster asks this instance to reload its config.
    Reload,
    /// Call [`Membership::tick`] again after this long.
    Wake(Duration),
}

/// What does not change at run time, and the timings a reload may change.
pub struct MembershipConfig {
    pub me: String,
    pub my_started_at: u64,
    pub local_ips: Vec<IpAddr>,
    pub peer_timeout: Duration,
    pub announce_interval: Duration,
    /// Hash of the settings every instance must share; a peer announcing another is warned of.
    pub config_hash: String,
    pub protocol: ClusterProtocol,
    /// The cluster broker is another connection than this instance's own: a peer may be
    /// proven on either, so challenges go to both.
    pub two_brokers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    Reconnect,
    Reload,
}

pub struct Membership {
    me: String,
    my_started_at: u64,
    local_ips: Vec<IpAddr>,
    timing: Timing,
    rejoin_window: Duration,
    remind_every: Duration,
    config_hash: String,
    two_brokers: bool,
    liveness: Box<dyn Liveness>,
    stats: Arc<Stats>,
    roster: Roster,
    ears: Ears,
    /// The listener queue, where answers to this instance's asks and challenges come.
    queue: Option<String>,
    /// The cluster has been heard since the listener (re)started or the last reload.
    heard: bool,
    /// Peers known before a reconnect or reload that have not announced since.
    rejoining: HashSet<String>,
    /// When the current rejoin window ends, and why it was opened.
    rejoin: Option<(Instant, Rejoin)>,
    /// The claims as last told to the router.
    last_claims: Option<Vec<(IpAddr, Arc<PeerRoute>)>>,
    /// IP conflicts as last found, and when they were last said.
    conflicts: BTreeSet<String>,
    conflicts_told: Instant,
    /// Ownership changed and is not told yet; when it was last told; a flush is due at.
    ownership_dirty: bool,
    ownership_published: Option<Instant>,
    ownership_due: Option<Instant>,
    presence: presence::Challenges,
    /// No peer can fall silent before this (a lower bound, so a sweep over every peer runs
    /// only when one may): forgotten whenever a deadline may have come closer.
    next_expiry: Option<Instant>,
    /// Test seam: a core without the guard that keeps a deaf or digest-less registry from
    /// expiring peers, which the simulator must catch.
    unguarded: bool,
}

impl Membership {
    /// `nonces`: where challenge nonces come from (random in production, seeded in a
    /// simulation).
    pub fn new(
        config: MembershipConfig,
        nonces: Box<dyn FnMut() -> u64 + Send>,
        stats: Arc<Stats>,
        now: Instant,
    ) -> Self {
        let timing = Timing {
            announce_interval: config.announce_interval,
            peer_timeout: config.peer_timeout,
        };
        Membership {
            me: config.me,
            my_started_at: config.my_started_at,
            local_ips: config.local_ips,
            rejoin_window: rejoin_window(timing),
            remind_every: remind_every(timing),
            timing,
            config_hash: config.config_hash,
            two_brokers: config.two_brokers,
            liveness: strategy::for_protocol(config.protocol),
            stats,
            roster: Roster::default(),
            ears: Ears {
                listening: false,
                last_frame: now,
                deaf: false,
            },
            queue: None,
            heard: false,
            rejoining: HashSet::new(),
            rejoin: None,
            last_claims: None,
            conflicts: BTreeSet::new(),
            conflicts_told: now,
            ownership_dirty: false,
            ownership_published: None,
            ownership_due: None,
            presence: presence::Challenges::new(nonces),
            next_expiry: None,
            unguarded: false,
        }
    }

    /// A core that expires peers whatever it hears (the bug the deafness guard prevents), for
    /// the simulator's own test that it catches it.
    #[doc(hidden)]
    pub fn without_silence_guard(mut self) -> Self {
        self.unguarded = true;
        self
    }

    pub fn protocol(&self) -> ClusterProtocol {
        self.liveness.protocol()
    }

    /// How often [`Membership::tick`] should run: a silent peer is forgotten at most 5% after
    /// its peer-timeout. A tick only compares instants, a thousand peers in microseconds.
    pub fn sweep_interval(&self) -> Duration {
        (self.timing.peer_timeout / 20).max(Duration::from_millis(50))
    }

    /// How long peers known before a reconnect or reload have to be heard again.
    pub fn rejoin_window(&self) -> Duration {
        self.rejoin_window
    }

    /// What the listener says when it (re)starts, into the exchange.
    pub fn hello(&self, queue: &str) -> ClusterMessage {
        self.liveness.hello(&self.me, queue)
    }

    /// Listening (again) on `queue`: whatever was heard before the outage is as old as the
    /// outage, so every peer gets a full peer-timeout from now.
    pub fn listening(&mut self, queue: String, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.queue = Some(queue);
        self.ears.listening = true;
        self.ears.last_frame = now;
        self.challenge_unproven(now, &mut effects);
        for peer in self.roster.live.values_mut() {
            peer.last_seen = peer.last_seen.max(now);
        }
        self.start_rejoin(Rejoin::Reconnect, now, &mut effects);
        self.liveness.on_listening(&mut effects);
        effects
    }

    /// The listener is gone (it restarts): nothing is heard until it listens again.
    pub fn listener_lost(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.ears.listening = false;
        // Answers to the old queue's asks and challenges go nowhere now.
        self.queue = None;
        self.rejoin = None;
        self.ownership_due = None;
        self.set_heard(false, now, &mut effects);
        self.flush_ownership(now, &mut effects);
        effects
    }

    /// Any frame arrived on the listener. After a deaf spell, what was heard before is as old
    /// as the deafness: every peer gets a full peer-timeout from now.
    pub fn frame(&mut self, now: Instant) {
        self.ears.last_frame = now;
        if self.ears.deaf {
            self.ears.deaf = false;
            self.stats
                .deaf
                .store(0, std::sync::atomic::Ordering::Relaxed);
            for peer in self.roster.live.values_mut() {
                peer.last_seen = peer.last_seen.max(now);
            }
            info!("hearing the cluster again");
        }
    }

    /// A cluster message, decoded and checked by the shell.
    pub fn message(&mut self, message: ClusterMessage, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        match message {
            ClusterMessage::Announcement(a) => {
                let span = tracing::info_span!("announcement", peer = %a.name);
                let _enter = span.enter();
                self.on_announcement(a, now, &mut effects);
            }
            ClusterMessage::Leaving { name, started_at } => {
                let leaving = self
                    .roster
                    .live
                    .get(&name)
                    .is_some_and(|p| p.announcement.started_at == started_at);
                if leaving {
                    info!(peer = %name, "peer left");
                    let gone = self.roster.forget(&name, PeerState::Left, now);
                    self.remove_from_ownership(now, &mut effects);
                    released(gone.into_iter().collect(), &mut effects);
                }
            }
            ClusterMessage::Hello { from } => {
                if from.as_deref() != Some(self.me.as_str()) {
                    effects.push(Effect::Announce);
                }
            }
            ClusterMessage::Reload { from } => self.reload(from, now, &mut effects),
            ClusterMessage::ReloadOne { from, name } => {
                if name == self.me {
                    self.reload(from, now, &mut effects);
                }
            }
            ClusterMessage::Drain { from } => pause(true, from, &mut effects),
            ClusterMessage::Resume { from } => pause(false, from, &mut effects),
            ClusterMessage::Digest { from, members } => {
                bump(&self.stats.digests_received);
                let news = self.liveness.on_digest(
                    &mut self.roster,
                    &self.me,
                    from,
                    members,
                    self.timing,
                    now,
                );
                if news.vouched {
                    self.next_expiry = None;
                }
                for name in &news.heard {
                    self.heard_from(name, now, &mut effects);
                }
                if let (false, Some(reply_to)) = (news.wanted.is_empty(), self.queue.clone()) {
                    tracing::debug!(
                        count = news.wanted.len(),
                        "asking for announcements the digest says are newer"
                    );
                    effects.push(Effect::Ask {
                        reply_to,
                        names: news.wanted,
                    });
                }
            }
            ClusterMessage::Ask {
                from,
                reply_to,
                names,
            } => {
                let me = self.me.as_str();
                if from != me && (names.is_empty() || names.iter().any(|n| n == me)) {
                    self.liveness.on_ask(reply_to, &mut effects);
                }
            }
            ClusterMessage::Present {
                name,
                started_at,
                nonce,
            } => self.on_present(&name, started_at, nonce, now, &mut effects),
            // Heartbeats go to the heartbeat queue only, challenges to presence queues; one
            // here was misrouted by hand.
            ClusterMessage::Heartbeat { .. } | ClusterMessage::Challenge { .. } => {}
        }
        effects
    }

    /// Time passed: silent peers expire, the rejoin window closes, late challenges go again,
    /// a held-back ownership change is told, a lasting conflict is said again.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.ownership_due.is_some_and(|due| now >= due) {
            self.ownership_due = None;
            self.flush_ownership(now, &mut effects);
        }
        if let Some((ends, why)) = self.rejoin {
            if now >= ends {
                self.rejoin = None;
                self.end_rejoin(why, now, &mut effects);
            }
        }
        self.expire(now, &mut effects);
        self.retry_challenges(now, &mut effects);
        self.remind_conflicts(now);
        effects
    }

    /// A reload changed this instance's IPs or timings.
    pub fn reconfigure(
        &mut self,
        local_ips: Vec<IpAddr>,
        config_hash: String,
        announce_interval: Duration,
        peer_timeout: Duration,
        now: Instant,
    ) -> Vec<Effect> {
        self.local_ips = local_ips;
        self.config_hash = config_hash;
        self.timing = Timing {
            announce_interval,
            peer_timeout,
        };
        self.rejoin_window = rejoin_window(self.timing);
        self.remind_every = remind_every(self.timing);
        self.next_expiry = None;
        // A peer's claim on an IP that was this instance's is valid now, and the reverse.
        let mut effects = Vec::new();
        self.ownership_changed(now, &mut effects);
        effects
    }

    /// Listening, and the cluster heard since.
    pub fn hearing(&self) -> bool {
        self.ears.listening && self.heard
    }

    pub fn peer_count(&self) -> usize {
        self.roster.live.len()
    }

    pub fn knows(&self, name: &str) -> bool {
        self.roster.live.contains_key(name)
    }

    pub fn peer_names(&self) -> Vec<String> {
        self.roster.live.keys().cloned().collect()
    }

    pub fn peers(&self, now: Instant) -> Vec<PeerInfo> {
        self.roster.peers(now)
    }

    /// The live peers and the ones gone lately.
    pub fn members(&self, now: Instant) -> Vec<PeerInfo> {
        self.roster.members(now)
    }
}

fn rejoin_window(timing: Timing) -> Duration {
    (timing.announce_interval * 2).min(timing.peer_timeout)
}

fn remind_every(timing: Timing) -> Duration {
    (timing.announce_interval * 30).min(Duration::from_secs(60))
}

fn released(routes: Vec<Arc<PeerRoute>>, effects: &mut Vec<Effect>) {
    if !routes.is_empty() {
        effects.push(Effect::Released(routes));
    }
}

fn pause(pause: bool, from: Option<String>, effects: &mut Vec<Effect>) {
    info!(
        from = from.as_deref().unwrap_or("operator"),
        "cluster {}",
        if pause { "drain" } else { "resume" }
    );
    effects.push(Effect::Pause(pause));
}
