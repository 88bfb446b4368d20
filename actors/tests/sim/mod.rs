//! The simulated cluster: membership cores (and, in digest mode, leader cores) on a simulated
//! cluster exchange and heartbeat queue, in simulated time, with seeded faults. The
//! invariants it checks are in `checks.rs`.

mod checks;
mod heartbeats;
pub mod rng;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroute_actors::cluster::membership::leader::{Heartbeat, Known, Leader, heartbeat_ttl};
use mailroute_actors::cluster::membership::{Effect, Membership, MembershipConfig};
use mailroute_actors::cluster::wire::{Announcement, ClusterMessage};
use mailroute_actors::settings::ClusterProtocol;
use mailroute_actors::stats::Stats;

use heartbeats::{Hb, HeartbeatQueue};
pub use rng::Rng;

pub const INTERVAL: Duration = Duration::from_secs(2);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(6);
/// The cores' sweep: a twentieth of the timeout.
pub const SWEEP: Duration = Duration::from_millis(300);
/// A link that stops without closing is given up by the broker after two missed AMQP
/// heartbeats (`cluster-heartbeat`, 10 s by default).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(20);

/// What a run found wrong, with when.
pub type Violation = String;

pub struct Node {
    pub name: String,
    pub started_at: u64,
    pub ips: Vec<IpAddr>,
    sequence: u64,
    pub core: Membership,
    leader: Leader,
    /// Bumped on each takeover: the digest timer of an older leadership stops.
    leader_gen: u64,
    pub alive: bool,
    /// When it went (a leave or a silent death).
    pub gone_at: Option<Duration>,
    /// The router's table as the core last told it.
    pub table: BTreeMap<IpAddr, String>,
    /// Nothing reaches it (not even itself) until then.
    deaf_until: Duration,
    /// When it last heard again after a deaf spell, a freeze or a gap in the digests.
    pub hears_since: Duration,
    /// Processing one delivery takes this long (a CPU-starved instance), until `slow_until`.
    cost: Duration,
    pub slow_until: Duration,
    busy_until: Duration,
    /// A frozen process (SIGSTOP, a VM paused): it does nothing until then.
    frozen_until: Duration,
    /// When it last processed news of each peer's life: its announcement (mesh), a digest
    /// listing it (digest, at the age the digest gives), a digest it sent. (A presence
    /// answer proves a broker, not a life.)
    pub heard_from: HashMap<String, Duration>,
    /// The newest announcement it processed of each peer (run, sequence).
    newest: HashMap<String, (u64, u64)>,
    /// When it last processed any frame (mesh), or any digest (digest).
    pub last_heard: Option<Duration>,
    /// Who sent the last digest it processed.
    digest_from: Option<String>,
    /// Deliveries waiting for a busy or frozen instance, in order of arrival.
    inbox: std::collections::VecDeque<Inbound>,
    /// A `Process` event is on its way.
    processing: bool,
}

/// What reaches an instance from the broker.
enum Inbound {
    Frame(ClusterMessage),
    Heartbeat { hb: Hb, epoch: u64 },
}

enum What {
    Deliver {
        to: usize,
        message: ClusterMessage,
    },
    Tick {
        node: usize,
    },
    /// A mesh announcement, or a digest heartbeat, every interval.
    Announce {
        node: usize,
    },
    /// A heartbeat reaches the heartbeat queue.
    Enqueue(Hb),
    /// The broker delivers a heartbeat to the queue's active consumer.
    HeartbeatTo {
        node: usize,
        hb: Hb,
        epoch: u64,
    },
    LeaderDigest {
        node: usize,
        generation: u64,
        again: bool,
    },
    /// A dead instance's link is given up: its consumer of the heartbeat queue goes.
    LinkDown {
        node: usize,
    },
    /// A busy instance takes the next delivery from its inbox.
    Process {
        node: usize,
    },
}

/// Knobs a test may turn.
pub struct Options {
    pub protocol: ClusterProtocol,
    /// A core without the guard that keeps a deaf or digest-less registry from expiring
    /// peers (the bug the simulator must catch).
    pub unguarded: bool,
    /// How long a heartbeat may wait in the queue (the announcer's TTL).
    pub heartbeat_ttl: Duration,
    /// Leaders that digest however late they read the heartbeat queue.
    pub leader_unguarded: bool,
}

impl Options {
    pub fn new(protocol: ClusterProtocol) -> Options {
        Options {
            protocol,
            unguarded: false,
            heartbeat_ttl: heartbeat_ttl(INTERVAL, PEER_TIMEOUT),
            leader_unguarded: false,
        }
    }
}

pub struct Sim {
    seed: u64,
    pub rng: Rng,
    options: Options,
    base: Instant,
    pub now: Duration,
    pub nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: HashMap<usize, What>,
    next_event: usize,
    order: u64,
    heartbeats: HeartbeatQueue,
    /// Faults switched on for this phase.
    pub loss: u64,
    pub duplication: u64,
    pub max_delay: u64,
    /// One-way cuts: (from, to) → until.
    cuts: HashMap<(usize, usize), Duration>,
    /// From then on the cluster is calm and settled: nobody may forget a live peer.
    pub settled_from: Option<Duration>,
    /// Frames processed, for the record.
    pub processed: u64,
    /// The instances that died or left, in order.
    dead: Vec<usize>,
    /// `SIM_TRACE=<name>`: prints what reaches that instance.
    trace: Option<String>,
}

impl Sim {
    pub fn new(seed: u64, options: Options) -> Sim {
        Sim {
            seed,
            rng: Rng(seed),
            options,
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            order: 0,
            heartbeats: HeartbeatQueue::default(),
            loss: 0,
            duplication: 0,
            max_delay: 50,
            cuts: HashMap::new(),
            settled_from: None,
            processed: 0,
            dead: Vec::new(),
            trace: std::env::var("SIM_TRACE").ok(),
        }
    }

    fn digest(&self) -> bool {
        self.options.protocol == ClusterProtocol::Digest
    }

    fn at(&self, t: Duration) -> Instant {
        self.base + t
    }

    pub fn heartbeats_expired(&self) -> u64 {
        self.heartbeats.expired
    }

    fn schedule(&mut self, after: Duration, what: What) {
        let id = self.next_event;
        self.next_event += 1;
        self.order += 1;
        self.events.insert(id, what);
        self.queue.push(Reverse((self.now + after, self.order, id)));
    }

    pub fn start_node(&mut self) -> usize {
        let index = self.nodes.len();
        let name = format!("n{index:03}");
        let ips = vec![IpAddr::from([
            10,
            (index / 250) as u8,
            (index % 250) as u8,
            1,
        ])];
        let mut nonces = Rng(self.seed ^ (index as u64).wrapping_mul(0x1234_5678_9ABC));
        let started_at = 1_000 + index as u64;
        let core = Membership::new(
            MembershipConfig {
                me: name.clone(),
                my_started_at: started_at,
                local_ips: ips.clone(),
                peer_timeout: PEER_TIMEOUT,
                announce_interval: INTERVAL,
                config_hash: String::new(),
                protocol: self.options.protocol,
                two_brokers: false,
            },
            Box::new(move || nonces.next()),
            Arc::new(Stats::default()),
            self.at(self.now),
        );
        let core = if self.options.unguarded {
            core.without_silence_guard()
        } else {
            core
        };
        let leader = Leader::new(name.clone(), started_at, INTERVAL, PEER_TIMEOUT);
        let leader = if self.options.leader_unguarded {
            leader.without_lag_guard()
        } else {
            leader
        };
        self.nodes.push(Node {
            leader,
            leader_gen: 0,
            name,
            started_at,
            ips,
            sequence: 0,
            core,
            alive: true,
            gone_at: None,
            table: BTreeMap::new(),
            deaf_until: Duration::ZERO,
            hears_since: self.now,
            cost: Duration::ZERO,
            slow_until: Duration::ZERO,
            busy_until: Duration::ZERO,
            frozen_until: Duration::ZERO,
            heard_from: HashMap::new(),
            newest: HashMap::new(),
            last_heard: None,
            digest_from: None,
            inbox: std::collections::VecDeque::new(),
            processing: false,
        });
        let now = self.at(self.now);
        let queue = queue_name(index);
        let hello = self.nodes[index].core.hello(&queue);
        let effects = self.nodes[index].core.listening(queue, now);
        if self.digest() {
            // Listening, it asks everyone into its queue; it consumes the heartbeat queue and
            // sends its first heartbeat at once.
            self.broadcast(index, hello);
            self.heartbeats.subscribe(index);
            self.heartbeat(index);
        }
        // A core just started forgets nobody.
        let _ = self.apply(index, effects);
        if !self.digest() {
            self.announce(index);
        }
        let jitter = self.rng.millis(1, 300);
        self.schedule(jitter, What::Tick { node: index });
        self.schedule(INTERVAL, What::Announce { node: index });
        index
    }

    /// A frame from `from` on the cluster exchange: every listener gets a copy (itself too),
    /// each delayed, lost or duplicated on its own.
    fn broadcast(&mut self, from: usize, message: ClusterMessage) {
        for to in 0..self.nodes.len() {
            self.send(from, to, message.clone());
        }
    }

    fn send(&mut self, from: usize, to: usize, message: ClusterMessage) {
        if !self.nodes[to].alive || self.rng.chance(self.loss) {
            return;
        }
        if self
            .cuts
            .get(&(from, to))
            .is_some_and(|until| *until > self.now)
        {
            return;
        }
        let copies = if self.rng.chance(self.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.trip();
            self.schedule(
                delay,
                What::Deliver {
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    fn trip(&mut self) -> Duration {
        self.rng.millis(1, self.max_delay)
    }

    fn announcement(&self, node: usize) -> Announcement {
        let n = &self.nodes[node];
        Announcement {
            name: n.name.clone(),
            started_at: n.started_at,
            sequence: n.sequence,
            local_ips: n.ips.clone(),
            outbox: format!("{}.outbox", n.name),
            broker: "sim".into(),
            ..Announcement::default()
        }
    }

    fn announce(&mut self, node: usize) {
        self.nodes[node].sequence += 1;
        let a = self.announcement(node);
        self.broadcast(node, ClusterMessage::Announcement(a));
    }

    /// One heartbeat on its way to the heartbeat queue (lost like any frame).
    fn heartbeat(&mut self, node: usize) {
        if self.rng.chance(self.loss) {
            return;
        }
        let trip = self.trip();
        let n = &self.nodes[node];
        let hb = Hb {
            id: 0,
            name: n.name.clone(),
            started_at: n.started_at,
            sequence: n.sequence,
            sent: self.now,
            expires: self.now + trip + self.options.heartbeat_ttl,
            redelivered: false,
        };
        self.schedule(trip, What::Enqueue(hb));
    }

    /// The broker hands the active consumer what it may take now.
    fn pump(&mut self) {
        let Some(to) = self.heartbeats.active() else {
            return;
        };
        let epoch = self.heartbeats.epoch;
        for hb in self.heartbeats.deliveries(self.now) {
            let trip = self.trip();
            self.schedule(
                trip,
                What::HeartbeatTo {
                    node: to,
                    hb,
                    epoch,
                },
            );
        }
    }

    /// Carries out what a core decided; whom it forgot must have been forgettable.
    fn apply(&mut self, node: usize, effects: Vec<Effect>) -> Result<(), Violation> {
        for effect in effects {
            match effect {
                Effect::Ownership(claims) => {
                    self.nodes[node].table = claims
                        .into_iter()
                        .map(|(ip, route)| (ip, route.name.clone()))
                        .collect();
                }
                Effect::Announce => self.announce(node),
                Effect::AnswerAsk { reply_to } => {
                    // The announcement as it stands, to the asker's queue alone.
                    if self.nodes[node].sequence == 0 {
                        continue;
                    }
                    let Some(to) = queue_owner(&reply_to) else {
                        continue;
                    };
                    let a = self.announcement(node);
                    self.send(node, to, ClusterMessage::Announcement(a));
                }
                Effect::Ask { reply_to, names } => {
                    let ask = ClusterMessage::Ask {
                        from: self.nodes[node].name.clone(),
                        reply_to,
                        names,
                    };
                    self.broadcast(node, ask);
                }
                Effect::Challenge { peer, nonce, .. } => {
                    // Into the peer's presence queue; it answers into ours.
                    let Some(target) = self.nodes.iter().position(|n| n.name == peer) else {
                        continue;
                    };
                    // A frozen process answers nothing; the challenge's TTL runs out.
                    let t = &self.nodes[target];
                    if !t.alive || t.frozen_until > self.now || self.rng.chance(self.loss) {
                        continue;
                    }
                    let present = ClusterMessage::Present {
                        name: peer,
                        started_at: self.nodes[target].started_at,
                        nonce,
                    };
                    self.send(target, node, present);
                }
                Effect::Wake(after) => self.schedule(after, What::Tick { node }),
                Effect::Released(routes) => {
                    // A peer that moved is released too, and still known.
                    let core = &self.nodes[node].core;
                    let forgotten: Vec<String> = routes
                        .iter()
                        .filter(|r| !core.knows(&r.name))
                        .map(|r| r.name.clone())
                        .collect();
                    self.check_forgotten(node, forgotten)?;
                }
                Effect::Hearing(_) | Effect::Pause(_) | Effect::Reload => {}
            }
        }
        Ok(())
    }

    /// Runs every event up to `until`, checking after each.
    pub fn run(&mut self, until: Duration) -> Result<(), Violation> {
        while let Some(Reverse((t, _, id))) = self.queue.peek().copied() {
            if t > until {
                break;
            }
            self.queue.pop();
            self.now = t;
            let Some(what) = self.events.remove(&id) else {
                continue;
            };
            self.step(what)?;
        }
        self.now = until;
        Ok(())
    }

    /// A frozen instance runs no timer until it thaws. `Some(wait)`: try again then.
    fn frozen(&self, node: usize) -> Option<Duration> {
        let n = &self.nodes[node];
        (n.frozen_until > self.now).then(|| n.frozen_until - self.now)
    }

    /// A delivery reaches `to`: taken at once by a free instance, else queued in its inbox
    /// (a frozen one takes nothing; a starved one takes them one after another).
    fn arrive(&mut self, to: usize, inbound: Inbound) -> Result<(), Violation> {
        let now = self.now;
        let n = &mut self.nodes[to];
        let free_at = n.busy_until.max(n.frozen_until);
        if n.inbox.is_empty() && free_at <= now {
            if n.slow_until > now {
                n.busy_until = now + n.cost;
            }
            return self.process(to, inbound);
        }
        n.inbox.push_back(inbound);
        if !n.processing {
            n.processing = true;
            self.schedule(free_at.saturating_sub(now), What::Process { node: to });
        }
        Ok(())
    }

    fn process_next(&mut self, node: usize) -> Result<(), Violation> {
        let now = self.now;
        let n = &mut self.nodes[node];
        n.processing = false;
        if !n.alive {
            n.inbox.clear();
            return Ok(());
        }
        let free_at = n.busy_until.max(n.frozen_until);
        if free_at <= now {
            let Some(inbound) = n.inbox.pop_front() else {
                return Ok(());
            };
            if n.slow_until > now {
                n.busy_until = now + n.cost;
            }
            self.process(node, inbound)?;
        }
        let n = &mut self.nodes[node];
        if !n.inbox.is_empty() && !n.processing {
            n.processing = true;
            let free_at = n.busy_until.max(n.frozen_until);
            self.schedule(free_at.saturating_sub(now), What::Process { node });
        }
        Ok(())
    }

    fn process(&mut self, to: usize, inbound: Inbound) -> Result<(), Violation> {
        match inbound {
            Inbound::Frame(message) => self.deliver(to, message),
            Inbound::Heartbeat { hb, epoch } => {
                if !self.heartbeats.ack(hb.id, epoch) {
                    return Ok(());
                }
                self.processed += 1;
                let now = self.at(self.now);
                let waited = Some(self.now.saturating_sub(hb.sent));
                let n = &mut self.nodes[to];
                let heard = n.leader.heartbeat(
                    hb.name,
                    hb.started_at,
                    hb.sequence,
                    hb.redelivered,
                    waited,
                    now,
                );
                if heard == Heartbeat::TookOver {
                    self.take_over(to);
                }
                self.pump();
                Ok(())
            }
        }
    }

    fn step(&mut self, what: What) -> Result<(), Violation> {
        match what {
            What::Deliver { to, message } => {
                if !self.nodes[to].alive {
                    return Ok(());
                }
                if self.nodes[to].deaf_until > self.now {
                    return Ok(());
                }
                self.arrive(to, Inbound::Frame(message))?;
            }
            What::Tick { node } => {
                if !self.nodes[node].alive {
                    return Ok(());
                }
                if let Some(wait) = self.frozen(node) {
                    self.schedule(wait, What::Tick { node });
                    return Ok(());
                }
                let now = self.at(self.now);
                let effects = self.nodes[node].core.tick(now);
                self.apply(node, effects)?;
                self.schedule(SWEEP, What::Tick { node });
                self.check_dead_are_forgotten(node)?;
            }
            What::Announce { node } => {
                if !self.nodes[node].alive {
                    return Ok(());
                }
                if let Some(wait) = self.frozen(node) {
                    self.schedule(wait, What::Announce { node });
                    return Ok(());
                }
                if self.digest() {
                    self.heartbeat(node);
                } else {
                    self.announce(node);
                }
                self.schedule(INTERVAL, What::Announce { node });
            }
            What::Enqueue(hb) => {
                self.heartbeats.push(hb);
                self.pump();
            }
            What::HeartbeatTo { node, hb, epoch } => {
                if epoch != self.heartbeats.epoch {
                    return Ok(());
                }
                // A link that stalls delivers late, as TCP does once it moves again.
                let deaf = self.nodes[node].deaf_until.saturating_sub(self.now);
                if !deaf.is_zero() {
                    self.schedule(deaf, What::HeartbeatTo { node, hb, epoch });
                    return Ok(());
                }
                self.arrive(node, Inbound::Heartbeat { hb, epoch })?;
            }
            What::LeaderDigest {
                node,
                generation,
                again,
            } => {
                if !self.nodes[node].alive || generation != self.nodes[node].leader_gen {
                    return Ok(());
                }
                if let Some(wait) = self.frozen(node) {
                    let what = What::LeaderDigest {
                        node,
                        generation,
                        again,
                    };
                    self.schedule(wait, what);
                    return Ok(());
                }
                let now = self.at(self.now);
                let chunks = self.nodes[node].leader.digest(now);
                if self.trace.is_some() {
                    let n = &self.nodes[node];
                    let entries = chunks
                        .as_ref()
                        .map(|c| c.iter().map(Vec::len).sum::<usize>());
                    let (inbox, behind) = (n.inbox.len(), n.leader.behind());
                    eprintln!(
                        "{:?} leader {} digest {entries:?} (behind {behind}, inbox {inbox})",
                        self.now, n.name
                    );
                }
                if let Some(chunks) = chunks {
                    for members in chunks {
                        let from = self.nodes[node].name.clone();
                        self.broadcast(node, ClusterMessage::Digest { from, members });
                    }
                }
                if again {
                    self.schedule(
                        INTERVAL,
                        What::LeaderDigest {
                            node,
                            generation,
                            again,
                        },
                    );
                }
            }
            What::Process { node } => self.process_next(node)?,
            What::LinkDown { node } => {
                self.heartbeats.unsubscribe(node);
                self.pump();
            }
        }
        Ok(())
    }

    /// A cluster frame reaches `to`'s registry.
    fn deliver(&mut self, to: usize, message: ClusterMessage) -> Result<(), Violation> {
        self.processed += 1;
        if self.trace.as_ref() == Some(&self.nodes[to].name) {
            eprintln!("{:?} {} <- {message:?}", self.now, self.nodes[to].name);
        }
        let digest = self.digest();
        let now_t = self.now;
        let node = &mut self.nodes[to];
        // What the frame tells of whom, for the invariants.
        match &message {
            // A copy, or one overtaken by a newer one, was sent before what was heard already.
            ClusterMessage::Announcement(a) if !digest => {
                let newest = node.newest.entry(a.name.clone()).or_default();
                if (a.started_at, a.sequence) >= *newest {
                    *newest = (a.started_at, a.sequence);
                    node.heard_from.insert(a.name.clone(), now_t);
                }
            }
            ClusterMessage::Digest { from, members } if digest => {
                // A new leader: the core gives everyone a grace, as after a gap.
                if node.digest_from.as_ref() != Some(from) {
                    node.hears_since = node.hears_since.max(now_t);
                }
                node.digest_from = Some(from.clone());
                node.heard_from.insert(from.clone(), now_t);
                for entry in members {
                    let at = now_t.saturating_sub(Duration::from_millis(u64::from(entry.age_ms)));
                    let seen = node.heard_from.entry(entry.name.clone()).or_default();
                    *seen = (*seen).max(at);
                }
            }
            _ => {}
        }
        // What the core's guard counts as hearing: any frame (mesh), a digest (digest). After
        // 1.5 intervals without (a deaf fault, loss, a leader gone or behind) the core gives
        // everyone a full peer-timeout from now.
        let hearing = !digest || matches!(message, ClusterMessage::Digest { .. });
        if hearing {
            let gap = node
                .last_heard
                .is_none_or(|at| now_t.saturating_sub(at) >= INTERVAL * 3 / 2);
            if gap {
                node.hears_since = node.hears_since.max(now_t);
            }
            node.last_heard = Some(now_t);
        }
        let now = self.base + self.now;
        node.core.frame(now);
        let effects = node.core.message(message, now);
        self.apply(to, effects)
    }

    /// `node` leads the digest now: it starts from what its registry knows, digests a
    /// quarter interval later and every interval after.
    fn take_over(&mut self, node: usize) {
        let now = self.at(self.now);
        let n = &mut self.nodes[node];
        n.leader_gen += 1;
        let known: Vec<Known> = n
            .core
            .peers(now)
            .into_iter()
            .filter_map(|p| {
                Some(Known {
                    heard_at: now.checked_sub(p.last_seen)?,
                    name: p.announcement.name,
                    started_at: p.announcement.started_at,
                    sequence: p.announcement.sequence,
                })
            })
            .collect();
        n.leader.seed(known, now);
        let generation = n.leader_gen;
        let first = n.leader.first_digest_after();
        self.schedule(
            first,
            What::LeaderDigest {
                node,
                generation,
                again: false,
            },
        );
        self.schedule(
            INTERVAL,
            What::LeaderDigest {
                node,
                generation,
                again: true,
            },
        );
    }

    /// A silent death: the process is gone, its link only when the broker gives it up.
    pub fn die(&mut self, node: usize) {
        self.nodes[node].alive = false;
        self.nodes[node].gone_at = Some(self.now);
        self.dead.push(node);
        self.schedule(LINK_TIMEOUT, What::LinkDown { node });
    }

    /// A graceful leave: `Leaving` said, the heartbeat consumer cancelled, then gone.
    pub fn leave(&mut self, node: usize) {
        let n = &self.nodes[node];
        let leaving = ClusterMessage::Leaving {
            name: n.name.clone(),
            started_at: n.started_at,
        };
        self.broadcast(node, leaving);
        self.nodes[node].alive = false;
        self.nodes[node].gone_at = Some(self.now);
        self.dead.push(node);
        self.heartbeats.unsubscribe(node);
        self.pump();
    }

    /// A loaded machine: each delivery takes `cost` for the whole run. Unlike a starved
    /// spell this is the normal state, so no invariant waits it out.
    pub fn load(&mut self, node: usize, cost: Duration) {
        let n = &mut self.nodes[node];
        n.cost = cost;
        n.slow_until = Duration::MAX;
    }

    /// The instance the broker gives the heartbeat queue to now.
    pub fn digest_leader(&self) -> Option<usize> {
        self.heartbeats.active()
    }

    /// Starved of CPU: each delivery takes `cost`, until `until`.
    pub fn starve(&mut self, node: usize, cost: Duration, until: Duration) {
        let n = &mut self.nodes[node];
        n.cost = cost;
        n.slow_until = until;
        n.hears_since = n.hears_since.max(until);
    }

    /// One fault, picked by the seed.
    pub fn fault(&mut self) {
        self.fault_inner();
    }

    fn fault_inner(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect();
        if live.len() < 2 {
            self.start_node();
            return;
        }
        let pick = live[self.rng.below(live.len() as u64) as usize];
        let other = live[self.rng.below(live.len() as u64) as usize];
        // Digest mode: half of the faults that hit one instance hit the leader.
        let pick = match self.heartbeats.active() {
            Some(leader) if self.digest() && self.nodes[leader].alive && self.rng.chance(500) => {
                leader
            }
            _ => pick,
        };
        let kind = self.rng.below(8);
        if self.trace.is_some() {
            let names = (&self.nodes[pick].name, &self.nodes[other].name);
            eprintln!("{:?} fault {kind} on {names:?}", self.now);
        }
        match kind {
            0 => self.die(pick),
            1 => self.leave(pick),
            2 => {
                self.start_node();
            }
            3 if pick != other => {
                // One way only: `other` stops hearing `pick` for a while.
                let until = self.now + self.rng.millis(1_000, 12_000);
                self.cuts.insert((pick, other), until);
            }
            4 => {
                // Deaf: nothing reaches it, not even itself, for longer than a peer-timeout.
                let until = self.now + self.rng.millis(3_000, 15_000);
                self.nodes[pick].deaf_until = until;
                self.nodes[pick].hears_since = until;
            }
            5 => {
                // Starved of CPU: each delivery takes long enough that they queue up.
                let cost = self.rng.millis(5, 60);
                let until = self.now + self.rng.millis(2_000, 10_000);
                self.starve(pick, cost, until);
            }
            6 => {
                // Frozen (SIGSTOP, a paused VM), shorter than the link timeout.
                let until = self.now + self.rng.millis(1_000, 15_000);
                let n = &mut self.nodes[pick];
                n.frozen_until = until;
                n.hears_since = n.hears_since.max(until);
            }
            _ => {
                self.loss = self.rng.below(80);
                self.duplication = self.rng.below(50);
                self.max_delay = 1 + self.rng.below(300);
            }
        }
    }

    /// No more loss, short trips, every cut over; from `settle` after now, nobody may
    /// forget a live peer.
    pub fn calm(&mut self, settle: Duration) {
        self.loss = 0;
        self.duplication = 0;
        self.max_delay = 50;
        self.settled_from = Some(self.now + settle);
    }
}

fn queue_name(index: usize) -> String {
    format!("q{index}")
}

fn queue_owner(queue: &str) -> Option<usize> {
    queue.strip_prefix('q')?.parse().ok()
}
