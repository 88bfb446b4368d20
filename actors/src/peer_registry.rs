//! PeerRegistry: listens to all cluster traffic on a private queue, keeps the live peers, and
//! tells the router who owns which IP. Forged or broken cluster messages are dropped and
//! counted; nothing here can panic on input.
//!
//! Silence is only evidence while this registry listens: when *it* cannot hear (its listener
//! reconnects), no peer expires, and once it listens again every peer gets a full
//! `peer-timeout` to be heard. Until the cluster has been heard again (every peer known before
//! re-announced, or a rejoin window of two announce intervals passed), the router keeps back
//! mail that no known peer owns. A reload does the same: peers are re-validated (kept while
//! they re-announce within the window), not forgotten first.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use tracing::{debug, error, info, info_span, warn};

use crate::backoff;
use crate::broker::{
    BrokerError, Delivery, Destination, Message, Properties, QueueSpec, SharedBroker,
};
use crate::messages::{
    AnnounceNow, AnswerAsk, ClusterHeard, Hearing, HearingNow, ListMembers, ListPeers,
    OwnershipChanged, Pause, PeerCount, PeerInfo, PeerNames, PeerState, PeersGone, Reconfigure,
};
use crate::own_queues::presence_queue;
use crate::replay_guard::ReplayGuard;
use crate::routing::{PeerRoute, Via};
use crate::settings::ClusterProtocol;
use crate::stats::{Stats, bump};
use crate::wire::{Announcement, ClusterMessage, Codec, DigestEntry};

pub struct PeerRegistry {
    broker: SharedBroker,
    /// This instance's own broker: where a peer's presence queue is looked for first.
    local: SharedBroker,
    exchange: String,
    me: String,
    my_started_at: u64,
    local_ips: Vec<IpAddr>,
    peer_timeout: Duration,
    rejoin_window: Duration,
    announce_interval: Duration,
    codec: Codec,
    /// Signed commands acted on lately: a copy of one is dropped. Survives restarts (the
    /// supervisor reuses this struct), so a reconnect does not open a window for replays.
    replays: ReplayGuard,
    protocol: ClusterProtocol,
    /// The listener queue, where answers to this instance's `Ask` come.
    queue: Option<String>,
    /// Digest mode: names asked for lately, so a digest does not ask again before the
    /// answer had time to come.
    asked: HashMap<String, Instant>,
    /// Digest mode: when the last digest came, and whether they have stopped coming.
    last_digest: Option<Instant>,
    digests_quiet: bool,
    /// Who sent the last digest: a change is a new leadership.
    digest_from: Option<String>,
    config_hash: String,
    peers: HashMap<String, Peer>,
    /// Peers that left or expired lately, for the console; forgotten after [`KEEP_GONE`].
    departed: HashMap<String, Departed>,
    /// The listener is consuming: silence means something.
    listening: bool,
    /// When the listener last took a frame, any frame: this instance's own announcements
    /// (mesh) or the digests (digest mode) come every interval, so a longer silence is this
    /// instance's deafness (a link that stopped without closing), not the peers' death.
    last_frame: Instant,
    deaf: bool,
    /// The cluster has been heard since the listener (re)started or the last reload.
    heard: bool,
    /// Peers known before a reconnect or reload that have not announced since.
    rejoining: HashSet<String>,
    /// Bumped by each reconnect or reload, so a stale window timer does nothing.
    epoch: u64,
    router: Recipient<OwnershipChanged>,
    hearing: Recipient<Hearing>,
    released: Recipient<PeersGone>,
    announcer: Recipient<AnnounceNow>,
    answer: Recipient<AnswerAsk>,
    cluster_heard: Recipient<ClusterHeard>,
    pause: Vec<Recipient<Pause>>,
    reload_requests: tokio::sync::watch::Sender<u64>,
    /// The expiry sweep, rescheduled when a reload changes `peer-timeout`.
    sweep: Option<SpawnHandle>,
    stats: Arc<Stats>,
    failures: u32,
    last_claims: Option<Vec<(IpAddr, Arc<PeerRoute>)>>,
    /// IP conflicts as last found, and when they were last said.
    conflicts: BTreeSet<String>,
    conflicts_told: Instant,
    remind_every: Duration,
    /// Challenges sent into peers' presence queues and not answered yet, by nonce.
    challenges: HashMap<u64, Challenge>,
    /// See `publish_ownership`.
    ownership_dirty: bool,
    ownership_scheduled: bool,
    ownership_published: Instant,
}

/// Names in one `Ask`: 255-byte names still fit a frame.
const MAX_ASKED: usize = 200;

/// At most one ownership publish per this, so a burst of announcements costs one.
const OWNERSHIP_GAP: Duration = Duration::from_millis(20);

struct Peer {
    announcement: Announcement,
    route: Arc<PeerRoute>,
    last_seen: Instant,
}

/// A challenge on its way: which peer (and run) it tests for which path.
struct Challenge {
    peer: String,
    started_at: u64,
    via: Via,
    sent: Instant,
    attempts: u32,
}

/// How long an answer to a challenge may take before it is sent again, and how often: a
/// challenge the broker routed reached an instance's presence queue, so the answer is only
/// late or lost. One the broker returned is not retried: nobody of that name is there.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
const CHALLENGE_ATTEMPTS: u32 = 3;

struct Departed {
    announcement: Announcement,
    state: PeerState,
    at: Instant,
}

/// How long a departed peer stays listed, and how many at most: enough for an operator to
/// see what happened, bounded however many come and go.
const KEEP_GONE: Duration = Duration::from_secs(600);
const MAX_GONE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    Reconnect,
    Reload,
}

/// Who the registry tells what.
pub struct RegistryLinks {
    pub router: Recipient<OwnershipChanged>,
    pub hearing: Recipient<Hearing>,
    pub released: Recipient<PeersGone>,
    pub announcer: Recipient<AnnounceNow>,
    /// Digest mode: answers an `Ask` naming this instance.
    pub answer: Recipient<AnswerAsk>,
    pub listening: Recipient<ClusterHeard>,
    /// Told of the cluster-wide `Drain` and `Resume` commands (consumer and announcer).
    pub pause: Vec<Recipient<Pause>>,
    /// Bumped when the cluster asks this instance to reload its config; whoever runs the
    /// instance with a config file (`serve`) watches it.
    pub reload_requests: tokio::sync::watch::Sender<u64>,
}

/// Registry settings that do not change at run time.
pub struct RegistryConfig {
    pub local: SharedBroker,
    pub exchange: String,
    pub me: String,
    pub my_started_at: u64,
    pub local_ips: Vec<IpAddr>,
    pub peer_timeout: Duration,
    pub announce_interval: Duration,
    pub codec: Codec,
    /// Hash of the settings every instance must share; a peer announcing another is warned of.
    pub config_hash: String,
    pub protocol: ClusterProtocol,
}

impl PeerRegistry {
    pub fn new(
        broker: SharedBroker,
        config: RegistryConfig,
        links: RegistryLinks,
        stats: Arc<Stats>,
    ) -> Self {
        let RegistryLinks {
            router,
            hearing,
            released,
            announcer,
            answer,
            listening,
            pause,
            reload_requests,
        } = links;
        PeerRegistry {
            broker,
            local: config.local,
            exchange: config.exchange,
            me: config.me,
            my_started_at: config.my_started_at,
            local_ips: config.local_ips,
            rejoin_window: (config.announce_interval * 2).min(config.peer_timeout),
            peer_timeout: config.peer_timeout,
            announce_interval: config.announce_interval,
            replays: ReplayGuard::new(config.codec.freshness()),
            codec: config.codec,
            protocol: config.protocol,
            queue: None,
            asked: HashMap::new(),
            last_digest: None,
            digests_quiet: false,
            digest_from: None,
            config_hash: config.config_hash,
            peers: HashMap::new(),
            departed: HashMap::new(),
            listening: false,
            last_frame: Instant::now(),
            deaf: false,
            heard: false,
            rejoining: HashSet::new(),
            epoch: 0,
            router,
            hearing,
            released,
            announcer,
            answer,
            cluster_heard: listening,
            pause,
            reload_requests,
            stats,
            failures: 0,
            sweep: None,
            last_claims: None,
            conflicts: BTreeSet::new(),
            conflicts_told: Instant::now(),
            challenges: HashMap::new(),
            ownership_dirty: false,
            ownership_scheduled: false,
            ownership_published: Instant::now(),
            remind_every: (config.announce_interval * 30).min(Duration::from_secs(60)),
        }
    }

    /// Ownership changed: published at once, unless it was published within
    /// [`OWNERSHIP_GAP`]; then once at the end of it, for all the changes together. Each
    /// publish goes over every peer and makes the router rebuild its table: when N peers
    /// announce at once (a cluster start) that was N² work for every instance.
    fn publish_ownership(&mut self, ctx: &mut Context<Self>) {
        self.ownership_dirty = true;
        if self.ownership_scheduled {
            return;
        }
        let wait = OWNERSHIP_GAP.saturating_sub(self.ownership_published.elapsed());
        if wait.is_zero() {
            self.flush_ownership();
            return;
        }
        self.ownership_scheduled = true;
        ctx.run_later(wait, |act, _| {
            act.ownership_scheduled = false;
            act.flush_ownership();
        });
    }

    /// A peer is gone: the router stops handing it mail now, not at the end of a gap (mail
    /// handed to a peer that left waits in its outbox until it is back).
    fn remove_from_ownership(&mut self) {
        self.ownership_dirty = true;
        self.flush_ownership();
    }

    /// Recomputes claims, the earliest started peer first so an established owner keeps its IPs, and tells
    /// the router if anything changed.
    fn flush_ownership(&mut self) {
        if !self.ownership_dirty {
            return;
        }
        self.ownership_dirty = false;
        self.ownership_published = Instant::now();
        let mut peers: Vec<&Peer> = self.peers.values().collect();
        // By what every instance sees alike (the claimant's announced start, then its name),
        // not by when this registry happened to hear it: two registries that heard two
        // claimants in opposite orders still route the IP to the same one.
        peers.sort_by_key(|p| (p.announcement.started_at, p.announcement.name.clone()));
        let local: HashSet<IpAddr> = self.local_ips.iter().copied().collect();
        let mut owner_of: HashMap<IpAddr, &str> = HashMap::new();
        let mut claims = Vec::new();
        let mut conflicts = BTreeSet::new();
        for peer in peers {
            for ip in &peer.announcement.local_ips {
                if local.contains(ip) {
                    conflicts.insert(format!(
                        "{ip}: {} claims an IP of this instance (ignored)",
                        peer.announcement.name
                    ));
                } else if let Some(holder) = owner_of.get(ip) {
                    conflicts.insert(format!(
                        "{ip}: claimed by {holder} and {} (the older claim, {holder}, holds)",
                        peer.announcement.name
                    ));
                } else {
                    owner_of.insert(*ip, &peer.announcement.name);
                    claims.push((*ip, peer.route.clone()));
                }
            }
        }
        self.stats
            .ip_conflicts
            .store(conflicts.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if conflicts != self.conflicts {
            for conflict in conflicts.difference(&self.conflicts) {
                bump(&self.stats.ownership_conflicts);
                warn!(%conflict, "IP conflict: two instances send from one IP");
            }
            self.conflicts = conflicts;
            self.conflicts_told = Instant::now();
        }
        if self.last_claims.as_ref() != Some(&claims) {
            self.last_claims = Some(claims.clone());
            self.router.do_send(OwnershipChanged { claims });
        }
    }

    fn on_announcement(&mut self, a: Announcement, ctx: &mut Context<Self>) {
        bump(&self.stats.announcements_received);
        if a.name == self.me {
            if a.started_at != self.my_started_at {
                bump(&self.stats.ownership_conflicts);
                error!(name = %a.name, "another instance announces with this instance's name; ignored");
            }
            return;
        }
        let now = Instant::now();
        // The same run at the same announced broker and outbox: what it proved still holds.
        // Anything else (new, restarted, moved) is challenged again, and meanwhile reached
        // through its handover queue.
        let same_run = self.peers.get(&a.name).filter(|p| {
            p.announcement.started_at == a.started_at
                && p.announcement.broker == a.broker
                && p.announcement.outbox == a.outbox
        });
        let via = same_run.map_or(Via::HandoverQueue, |p| p.route.via);
        if same_run.is_none() {
            self.challenge(&a.name, a.started_at, 0, ctx);
        }
        let route = Arc::new(PeerRoute {
            name: a.name.clone(),
            outbox: a.outbox.clone(),
            broker: a.broker.clone(),
            via,
        });
        match self.peers.get_mut(&a.name) {
            Some(peer)
                if peer.announcement.started_at == a.started_at
                    && a.sequence < peer.announcement.sequence =>
            {
                // Reordered or replayed: older news than what we hold.
            }
            Some(peer)
                if peer.announcement.started_at == a.started_at
                    && a.sequence == peer.announcement.sequence =>
            {
                // The same news again: an answer to an `Ask`, or a duplicate. It is alive.
                peer.last_seen = now;
                self.heard_from(&a.name, ctx);
            }
            Some(peer) => {
                let changed = peer.announcement.local_ips != a.local_ips || *peer.route != *route;
                if peer.announcement.config_hash != a.config_hash {
                    Self::check_drift(&self.stats, &self.config_hash, &a);
                }
                if peer.announcement.started_at != a.started_at {
                    info!(peer = %a.name, "peer restarted");
                }
                peer.last_seen = now;
                let mut moved = None;
                if changed {
                    let old = std::mem::replace(&mut peer.route, route);
                    if old.outbox != peer.route.outbox || old.via != peer.route.via {
                        moved = Some(old);
                    }
                }
                let name = a.name.clone();
                peer.announcement = a;
                if changed {
                    self.publish_ownership(ctx);
                }
                self.gone(moved.into_iter().collect());
                self.heard_from(&name, ctx);
            }
            None => {
                info!(peer = %a.name, ips = a.local_ips.len(), outbox = %a.outbox, broker = %a.broker, "peer joined");
                self.departed.remove(&a.name);
                Self::check_drift(&self.stats, &self.config_hash, &a);
                self.peers.insert(
                    a.name.clone(),
                    Peer {
                        announcement: a,
                        route,
                        last_seen: now,
                    },
                );
                self.publish_ownership(ctx);
                if self.protocol == ClusterProtocol::Mesh {
                    // The newcomer may not know us yet. (In digest mode it asked everyone.)
                    self.announcer.do_send(AnnounceNow);
                }
            }
        }
    }

    /// A peer known before a reconnect or reload was heard again.
    fn heard_from(&mut self, name: &str, ctx: &mut Context<Self>) {
        if self.rejoining.remove(name) && self.rejoining.is_empty() && !self.heard {
            // Everyone known before has answered: no need to wait out the window.
            ctx.run_later(Duration::ZERO, |act, _| act.set_heard(true));
        }
    }

    /// Digest mode: refreshes the members heard lately, and asks for the announcements this
    /// registry lacks or holds an older one of.
    fn on_digest(&mut self, from: String, members: Vec<DigestEntry>, ctx: &mut Context<Self>) {
        bump(&self.stats.digests_received);
        let now = Instant::now();
        let first = self.last_digest.replace(now).is_none();
        let new_leader = self.digest_from.as_ref().is_some_and(|f| *f != from);
        self.digest_from = Some(from);
        if new_leader || self.digests_quiet {
            // A new leader, or digests again after a pause: what was not heard in between is
            // as old as the gap, and the leader may not have heard every member yet (a
            // heartbeat per interval reaches it; the last digest's news was already up to two
            // intervals old). Everyone gets at least two more intervals from now; a dead
            // leader is no longer in them, and expires as before.
            if new_leader {
                info!(leader = ?self.digest_from, "a new digest leader");
            } else if !first {
                info!("digests again");
            }
            self.digests_quiet = false;
            let grace = self.peer_timeout.saturating_sub(self.announce_interval * 2);
            let floor = now.checked_sub(grace).unwrap_or(now);
            for peer in self.peers.values_mut() {
                peer.last_seen = peer.last_seen.max(floor);
            }
        }
        let mut wanted = Vec::new();
        for entry in members {
            if entry.name == self.me {
                continue;
            }
            let age = Duration::from_millis(u64::from(entry.age_ms));
            if age >= self.peer_timeout {
                continue;
            }
            let heard_at = now.checked_sub(age).unwrap_or(now);
            match self.peers.get_mut(&entry.name) {
                Some(peer) if peer.announcement.started_at == entry.started_at => {
                    peer.last_seen = peer.last_seen.max(heard_at);
                    let stale = entry.sequence > peer.announcement.sequence;
                    self.heard_from(&entry.name, ctx);
                    if stale {
                        wanted.push(entry.name);
                    }
                }
                // Its old run's news is all this registry has.
                Some(peer) if peer.announcement.started_at < entry.started_at => {
                    wanted.push(entry.name);
                }
                Some(_) => {}
                None => {
                    let left = self.departed.get(&entry.name).is_some_and(|d| {
                        d.state == PeerState::Left && d.announcement.started_at == entry.started_at
                    });
                    if !left {
                        wanted.push(entry.name);
                    }
                }
            }
        }
        let again = self.announce_interval;
        self.asked.retain(|_, at| at.elapsed() < again);
        wanted.retain(|name| !self.asked.contains_key(name));
        if wanted.is_empty() {
            return;
        }
        // One frame holds a few hundred names of any length; the rest go with the next digest.
        wanted.truncate(MAX_ASKED);
        for name in &wanted {
            self.asked.insert(name.clone(), now);
        }
        debug!(
            count = wanted.len(),
            "asking for announcements the digest says are newer"
        );
        self.ask(wanted, ctx);
    }

    /// Asks the named instances (everyone, with no names) to send their announcement to this
    /// registry's queue alone.
    fn ask(&mut self, names: Vec<String>, ctx: &mut Context<Self>) {
        let Some(reply_to) = self.queue.clone() else {
            return;
        };
        let message = ClusterMessage::Ask {
            from: self.me.clone(),
            reply_to,
            names,
        };
        let send = crate::announcer::publish(
            self.broker.clone(),
            self.exchange.clone(),
            self.codec.clone(),
            message,
        );
        ctx.spawn(send.into_actor(self).map(|result, act, _| match result {
            Ok(()) => bump(&act.stats.asks_sent),
            // The listener notices a dead broker itself; the next digest asks again.
            Err(error) => debug!(%error, "ask not sent"),
        }));
    }

    /// Puts a challenge into the peer's presence queue on each broker this instance uses
    /// (its own, and the cluster broker when that is another connection). The peer, reading
    /// it there, answers `Present` into this instance's listener queue: then, and only then,
    /// its outbox is known to be on that broker (see `on_present`). Until then, and for good
    /// when the broker returns the challenge (no such presence queue there), mail for it goes
    /// through its handover queue, which is correct anyway, only one hop longer.
    fn challenge(&mut self, peer: &str, started_at: u64, attempts: u32, ctx: &mut Context<Self>) {
        // Without a listener there is nowhere to answer: every unproven peer is challenged
        // when it starts (see `started`).
        let Some(reply_to) = self.queue.clone() else {
            return;
        };
        let mut brokers = vec![(self.local.clone(), Via::LocalBroker)];
        if !Arc::ptr_eq(&self.local, &self.broker) {
            brokers.push((self.broker.clone(), Via::ClusterBroker));
        }
        let to = Destination::queue(presence_queue(peer).name);
        for (broker, via) in brokers {
            let nonce: u64 = rand::rng().random();
            let message = ClusterMessage::Challenge {
                from: self.me.clone(),
                reply_to: reply_to.clone(),
                nonce,
            };
            let Ok(body) = self.codec.encode(&message, crate::wire::now_ms()) else {
                continue;
            };
            self.challenges.insert(
                nonce,
                Challenge {
                    peer: peer.to_owned(),
                    started_at,
                    via,
                    sent: Instant::now(),
                    attempts: attempts + 1,
                },
            );
            bump(&self.stats.challenges_sent);
            let properties = Properties {
                expiration: Some(ANSWER_WAIT.as_millis().to_string()),
                ..Properties::default()
            };
            let to = to.clone();
            let send = async move {
                broker
                    .publish(&to, &Message::new(body, properties), true)
                    .await
            };
            let peer = peer.to_owned();
            ctx.spawn(send.into_actor(self).map(move |result, act, _| {
                if let Err(error) = result {
                    // Returned: the peer's presence queue is not on this broker.
                    act.challenges.remove(&nonce);
                    debug!(%peer, %via, %error, "challenge not routed: not reached that way");
                }
            }));
        }
    }

    /// A peer answered a challenge: its outbox is on the broker the challenge went to.
    fn on_present(&mut self, name: &str, started_at: u64, nonce: u64, ctx: &mut Context<Self>) {
        let Some(challenge) = self
            .challenges
            .remove(&nonce)
            .filter(|c| c.peer == name && c.started_at == started_at)
        else {
            // An answer to no challenge of ours: late, replayed, or forged.
            self.stats.dropped("refused");
            return;
        };
        let Some(peer) = self
            .peers
            .get_mut(name)
            .filter(|p| p.announcement.started_at == started_at)
        else {
            return;
        };
        bump(&self.stats.presences_proven);
        // The own broker beats the cluster broker when both are one (either path works).
        let better = matches!(
            (peer.route.via, challenge.via),
            (Via::HandoverQueue, _) | (Via::ClusterBroker, Via::LocalBroker)
        );
        if !better {
            return;
        }
        info!(peer = %name, announced = %peer.announcement.broker, via = %challenge.via,
            "peer proved its outbox is on a broker this instance uses: handing over directly");
        let route = Arc::new(PeerRoute {
            via: challenge.via,
            ..(*peer.route).clone()
        });
        let old = std::mem::replace(&mut peer.route, route);
        self.publish_ownership(ctx);
        self.gone(vec![old]);
    }

    /// Challenges that were routed but not answered in time are sent again (the answer was
    /// lost, or went to a listener queue that a reconnect replaced), a few times.
    fn retry_challenges(&mut self, ctx: &mut Context<Self>) {
        let late: Vec<u64> = self
            .challenges
            .iter()
            .filter(|(_, c)| c.sent.elapsed() >= ANSWER_WAIT)
            .map(|(nonce, _)| *nonce)
            .collect();
        let mut again = BTreeSet::new();
        for nonce in late {
            let Some(c) = self.challenges.remove(&nonce) else {
                continue;
            };
            let unproven = self.peers.get(&c.peer).is_some_and(|p| {
                p.announcement.started_at == c.started_at && p.route.via != Via::LocalBroker
            });
            if unproven && c.attempts < CHALLENGE_ATTEMPTS {
                again.insert((c.peer, c.started_at, c.attempts));
            }
        }
        for (peer, started_at, attempts) in again {
            self.challenge(&peer, started_at, attempts, ctx);
        }
    }

    /// Every peer not proven to share this instance's own broker, challenged again (the
    /// listener queue is new: answers to earlier challenges went to the old one).
    fn challenge_unproven(&mut self, ctx: &mut Context<Self>) {
        let unproven: Vec<(String, u64)> = self
            .peers
            .values()
            .filter(|p| p.route.via != Via::LocalBroker)
            .map(|p| (p.announcement.name.clone(), p.announcement.started_at))
            .collect();
        for (peer, started_at) in unproven {
            self.challenge(&peer, started_at, 0, ctx);
        }
    }

    /// Every instance must share the cluster settings (broker, exchange, max-hops, signing):
    /// said once when a peer joins or its settings change, not on every announcement.
    fn check_drift(stats: &Stats, ours: &str, a: &Announcement) {
        if !a.config_hash.is_empty() && !ours.is_empty() && a.config_hash != ours {
            bump(&stats.config_drift);
            warn!(peer = %a.name, theirs = %a.config_hash, %ours,
                "peer's cluster settings differ from this instance's (cluster broker, exchange, max-hops, cluster-secret set): make them equal");
        }
    }

    fn on_message(&mut self, message: ClusterMessage, ctx: &mut Context<Self>) {
        match message {
            ClusterMessage::Announcement(a) => {
                let span = info_span!("announcement", peer = %a.name);
                let _enter = span.enter();
                self.on_announcement(a, ctx);
            }
            ClusterMessage::Leaving { name, started_at } => {
                let leaving = self
                    .peers
                    .get(&name)
                    .is_some_and(|p| p.announcement.started_at == started_at);
                if leaving {
                    info!(peer = %name, "peer left");
                    let gone = self.forget(&name, PeerState::Left);
                    self.remove_from_ownership();
                    self.gone(gone.into_iter().collect());
                }
            }
            ClusterMessage::Hello { from } => {
                if from.as_deref() != Some(self.me.as_str()) {
                    self.announcer.do_send(AnnounceNow);
                }
            }
            ClusterMessage::Reload { from } => self.reload(from, ctx),
            ClusterMessage::ReloadOne { from, name } => {
                if name == self.me {
                    self.reload(from, ctx);
                }
            }
            ClusterMessage::Drain { from } => self.pause(true, from),
            ClusterMessage::Resume { from } => self.pause(false, from),
            ClusterMessage::Digest { from, members } => self.on_digest(from, members, ctx),
            ClusterMessage::Ask {
                from,
                reply_to,
                names,
            } => {
                let me = self.me.as_str();
                if from != me && (names.is_empty() || names.iter().any(|n| n == me)) {
                    match self.protocol {
                        ClusterProtocol::Digest => self.answer.do_send(AnswerAsk { reply_to }),
                        ClusterProtocol::Mesh => self.announcer.do_send(AnnounceNow),
                    }
                }
            }
            ClusterMessage::Present {
                name,
                started_at,
                nonce,
            } => self.on_present(&name, started_at, nonce, ctx),
            // Heartbeats go to the heartbeat queue only, challenges to presence queues; one
            // here was misrouted by hand.
            ClusterMessage::Heartbeat { .. } | ClusterMessage::Challenge { .. } => {}
        }
    }

    fn pause(&self, pause: bool, from: Option<String>) {
        info!(
            from = from.as_deref().unwrap_or("operator"),
            "cluster {}",
            if pause { "drain" } else { "resume" }
        );
        for to in &self.pause {
            to.do_send(Pause(pause));
        }
    }

    /// Removes a live peer, keeping it listed as `state` for a while.
    fn forget(&mut self, name: &str, state: PeerState) -> Option<Arc<PeerRoute>> {
        let peer = self.peers.remove(name)?;
        if state == PeerState::Expired {
            bump(&self.stats.peers_expired);
        }
        let now = Instant::now();
        self.departed
            .retain(|_, d| now.duration_since(d.at) < KEEP_GONE);
        if self.departed.len() >= MAX_GONE {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(_, d)| d.at)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.departed.remove(&oldest);
            }
        }
        self.departed.insert(
            name.to_owned(),
            Departed {
                announcement: peer.announcement,
                state,
                at: now,
            },
        );
        Some(peer.route)
    }

    fn reload(&mut self, from: Option<String>, ctx: &mut Context<Self>) {
        info!(
            from = from.as_deref().unwrap_or("operator"),
            peers = self.peers.len(),
            "cluster reload: re-validating peers and re-reading the config"
        );
        bump(&self.stats.reloads);
        self.reload_requests.send_modify(|n| *n += 1);
        // Everyone announces on a reload; a peer that does not within the window is
        // forgotten then. Forgetting all first would hold or fail mail for live peers.
        self.start_rejoin(ctx, Rejoin::Reload);
        // In digest mode the digests re-validate the peers; each instance announces itself
        // if the reload changed what it announces. Everyone announcing to everyone at once
        // would be N² deliveries.
        if self.protocol == ClusterProtocol::Mesh {
            self.announcer.do_send(AnnounceNow);
        }
    }

    fn schedule_sweep(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.sweep.take() {
            ctx.cancel_future(old);
        }
        // A twentieth: a silent peer is forgotten at most 5% after its peer-timeout. The sweep
        // only compares instants, a thousand peers in microseconds.
        let sweep = (self.peer_timeout / 20).max(Duration::from_millis(50));
        self.sweep = Some(ctx.run_interval(sweep, |act, _| act.expire()));
    }

    /// After a reconnect or a reload: every known peer must be heard again within the window,
    /// and until the cluster is heard, unowned mail waits in the router.
    fn start_rejoin(&mut self, ctx: &mut Context<Self>, why: Rejoin) {
        self.epoch += 1;
        let epoch = self.epoch;
        self.rejoining = self.peers.keys().cloned().collect();
        self.set_heard(false);
        ctx.run_later(self.rejoin_window, move |act, _| {
            if act.epoch != epoch {
                return;
            }
            let silent: Vec<String> = act.rejoining.drain().collect();
            // After a reconnect, a peer still silent may itself be reconnecting: it has a
            // whole peer-timeout from the reconnect. After a reload everyone is listening and
            // announces at once, so silence within the window means gone.
            // In digest mode only while digests come: with none (a frozen or replaced
            // leader) nobody could be heard, and the expiry sweep takes over once they do.
            if why == Rejoin::Reload && !silent.is_empty() && !act.digests_missing() {
                let mut gone = Vec::new();
                for name in &silent {
                    warn!(peer = %name, "peer did not re-announce after a reload or reconnect; forgotten");
                    gone.extend(act.forget(name, PeerState::Expired));
                }
                act.remove_from_ownership();
                act.gone(gone);
            }
            act.set_heard(true);
        });
    }

    fn set_heard(&mut self, heard: bool) {
        if heard {
            // The router routes what it kept back as soon as it hears this: with the table
            // as it is now, not as it was before the last gap.
            self.flush_ownership();
        }
        if self.heard != heard {
            self.heard = heard;
            if heard {
                info!(peers = self.peers.len(), "cluster heard");
            }
            self.hearing.do_send(Hearing(heard));
        }
    }

    /// While a conflict lasts it is said again now and then (not on every announcement): mail
    /// for that IP goes out from whichever instance has it.
    fn remind_conflicts(&mut self) {
        if !self.conflicts.is_empty() && self.conflicts_told.elapsed() >= self.remind_every / 2 {
            self.conflicts_told = Instant::now();
            bump(&self.stats.conflict_reminders);
            for conflict in &self.conflicts {
                warn!(%conflict, "IP conflict still there: two instances send from one IP");
            }
        }
    }

    /// Digest mode: a digest is overdue (or none came yet), so silence says nothing.
    fn digests_missing(&self) -> bool {
        self.protocol == ClusterProtocol::Digest
            && self
                .last_digest
                .is_none_or(|at| at.elapsed() >= self.announce_interval * 3 / 2)
    }

    fn expire(&mut self) {
        if !self.listening {
            // Silence is this instance's own deafness, not the peers' death.
            return;
        }
        // Mesh: its own announcement comes back every interval. (Digest mode: the digests
        // do, see `digests_missing`.)
        if self.protocol == ClusterProtocol::Mesh
            && self.last_frame.elapsed() >= self.announce_interval * 3 / 2
        {
            if !self.deaf {
                self.deaf = true;
                bump(&self.stats.deaf_spells);
                self.stats
                    .deaf
                    .store(1, std::sync::atomic::Ordering::Relaxed);
                warn!(silent = ?self.last_frame.elapsed(),
                    "this instance hears nothing on the cluster exchange, not even itself: deaf; nobody expires until it hears again");
            }
            return;
        }
        if self.digests_missing() {
            // A digest missed (or none yet): the heartbeat leader is frozen (a stopped
            // process holds its consumer until its connection times out) or being replaced.
            // That silence says nothing of the others; forgetting them all would hold their
            // mail.
            if !self.digests_quiet {
                self.digests_quiet = true;
                if self.last_digest.is_some() {
                    warn!(
                        quiet = ?(self.announce_interval * 3 / 2),
                        "no digest lately: no peer expires until digests come again"
                    );
                }
            }
            return;
        }
        let timeout = self.peer_timeout;
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.last_seen.elapsed() >= timeout)
            .map(|(name, _)| name.clone())
            .collect();
        if silent.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for name in silent {
            warn!(peer = %name, ?timeout, "peer fell silent; forgotten");
            gone.extend(self.forget(&name, PeerState::Expired));
        }
        self.remove_from_ownership();
        self.gone(gone);
    }

    /// Tells the publisher which peer outboxes it will not publish to any more, so what it
    /// keeps open for them (a confirm channel each) is closed: a long-running instance in a
    /// cluster whose members come and go does not walk toward the broker's channel_max.
    fn gone(&self, routes: Vec<Arc<PeerRoute>>) {
        if !routes.is_empty() {
            self.released.do_send(PeersGone(routes));
        }
    }
}

impl Actor for PeerRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.schedule_sweep(ctx);
        ctx.run_interval(self.remind_every, |act, _| act.remind_conflicts());
        ctx.run_interval(ANSWER_WAIT, |act, ctx| act.retry_challenges(ctx));
        // Capped at an announce interval: while deaf, this instance keeps its peers and defers
        // unowned mail, so it must be listening again soon after the broker is back.
        let delay = backoff::delay(self.failures).min(self.rejoin_window / 2);
        ctx.run_later(delay, |act, ctx| {
            let broker = act.broker.clone();
            let exchange = act.exchange.clone();
            let me = act.me.clone();
            let codec = act.codec.clone();
            let protocol = act.protocol;
            let listen = async move {
                let suffix: u32 = rand::rng().random();
                let queue = format!("mailroute.cluster.{me}.{suffix:08x}");
                broker.declare_topic_exchange(&exchange).await?;
                broker.declare_queue(&QueueSpec::private(&queue)).await?;
                broker.bind_queue(&queue, &exchange, "#").await?;
                let stream = broker.consume(&queue, 256).await?;
                // Digest mode: everyone answers into this queue alone (N deliveries, not N²).
                let hello = match protocol {
                    ClusterProtocol::Mesh => ClusterMessage::Hello { from: Some(me) },
                    ClusterProtocol::Digest => ClusterMessage::Ask {
                        from: me,
                        reply_to: queue.clone(),
                        names: Vec::new(),
                    },
                };
                crate::announcer::publish(broker, exchange, codec, hello).await?;
                Ok::<_, BrokerError>((stream, queue))
            };
            ctx.wait(listen.into_actor(act).map(|result, act, ctx| match result {
                Ok((stream, queue)) => {
                    info!(exchange = %act.exchange, "listening to the cluster");
                    act.queue = Some(queue);
                    ctx.add_stream(stream);
                    act.listening = true;
                    act.last_frame = Instant::now();
                    act.challenge_unproven(ctx);
                    // Whatever was heard before the outage is as old as the outage: every
                    // peer gets a full peer-timeout from now.
                    let now = Instant::now();
                    for peer in act.peers.values_mut() {
                        peer.last_seen = peer.last_seen.max(now);
                    }
                    act.start_rejoin(ctx, Rejoin::Reconnect);
                    act.cluster_heard.do_send(ClusterHeard);
                    if act.protocol == ClusterProtocol::Digest {
                        // Only now: whoever started before and missed it hears our `Ask`.
                        act.announcer.do_send(AnnounceNow);
                    }
                }
                Err(error) => {
                    act.failures += 1;
                    warn!(%error, "cannot listen to the cluster; restarting");
                    ctx.stop();
                }
            }));
        });
    }
}

impl Supervised for PeerRegistry {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
        self.sweep = None;
        self.listening = false;
        self.epoch += 1;
        self.set_heard(false);
        // A scheduled publish died with the old context.
        self.ownership_scheduled = false;
        self.flush_ownership();
    }
}

impl StreamHandler<Result<Delivery, BrokerError>> for PeerRegistry {
    fn handle(&mut self, item: Result<Delivery, BrokerError>, ctx: &mut Context<Self>) {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => {
                self.failures += 1;
                warn!(%error, "cluster listener failed; restarting");
                ctx.stop();
                return;
            }
        };
        self.failures = 0;
        self.last_frame = Instant::now();
        if self.deaf {
            self.deaf = false;
            self.stats
                .deaf
                .store(0, std::sync::atomic::Ordering::Relaxed);
            // What was heard before is as old as the deafness: a full peer-timeout from now.
            for peer in self.peers.values_mut() {
                peer.last_seen = peer.last_seen.max(self.last_frame);
            }
            info!("hearing the cluster again");
        }
        let Some((message, tag)) =
            crate::cluster_frame::take_tagged(delivery, &self.codec, &self.stats)
        else {
            return;
        };
        let command = matches!(
            message,
            ClusterMessage::Drain { .. }
                | ClusterMessage::Resume { .. }
                | ClusterMessage::Reload { .. }
                | ClusterMessage::ReloadOne { .. }
        );
        if let (true, Some(tag)) = (command, tag) {
            if !self.replays.first_time(tag, crate::wire::now_ms()) {
                self.stats.dropped("replayed");
                warn!(kind = %message.routing_key(), "a copy of a signed command already acted on; dropped");
                return;
            }
        }
        self.on_message(message, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        warn!("cluster listener cancelled by the broker; listening again");
        self.failures += 1;
        ctx.stop();
    }
}

impl Handler<Reconfigure> for PeerRegistry {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, ctx: &mut Context<Self>) {
        self.local_ips = live.local_ips.clone();
        self.config_hash = live.config_hash.clone();
        self.rejoin_window = (live.announce_interval * 2).min(live.peer_timeout);
        self.announce_interval = live.announce_interval;
        self.remind_every = (live.announce_interval * 30).min(Duration::from_secs(60));
        if self.peer_timeout != live.peer_timeout {
            self.peer_timeout = live.peer_timeout;
            self.schedule_sweep(ctx);
        }
        // A peer's claim on an IP that was this instance's is valid now, and the reverse.
        self.publish_ownership(ctx);
    }
}

impl Handler<HearingNow> for PeerRegistry {
    type Result = Hearing;

    fn handle(&mut self, _: HearingNow, _: &mut Context<Self>) -> Hearing {
        Hearing(self.listening && self.heard)
    }
}

impl Handler<ListPeers> for PeerRegistry {
    type Result = MessageResult<ListPeers>;

    fn handle(&mut self, _: ListPeers, _: &mut Context<Self>) -> Self::Result {
        let mut peers: Vec<PeerInfo> = self
            .peers
            .values()
            .map(|p| PeerInfo {
                announcement: p.announcement.clone(),
                last_seen: p.last_seen.elapsed(),
                state: PeerState::of(&p.announcement),
            })
            .collect();
        peers.sort_by(|a, b| a.announcement.name.cmp(&b.announcement.name));
        MessageResult(peers)
    }
}

impl Handler<PeerCount> for PeerRegistry {
    type Result = usize;

    fn handle(&mut self, _: PeerCount, _: &mut Context<Self>) -> usize {
        self.peers.len()
    }
}

impl Handler<PeerNames> for PeerRegistry {
    type Result = MessageResult<PeerNames>;

    fn handle(&mut self, _: PeerNames, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.peers.keys().cloned().collect())
    }
}

impl Handler<ListMembers> for PeerRegistry {
    type Result = MessageResult<ListMembers>;

    fn handle(&mut self, _: ListMembers, ctx: &mut Context<Self>) -> Self::Result {
        let MessageResult(mut members) = Handler::<ListPeers>::handle(self, ListPeers, ctx);
        members.extend(
            self.departed
                .values()
                .filter(|d| d.at.elapsed() < KEEP_GONE)
                .map(|d| PeerInfo {
                    announcement: d.announcement.clone(),
                    last_seen: d.at.elapsed(),
                    state: d.state,
                }),
        );
        members.sort_by(|a, b| a.announcement.name.cmp(&b.announcement.name));
        MessageResult(members)
    }
}
