//! PeerRegistry: the actor around the membership core (`membership`). It listens to all
//! cluster traffic on a private queue, feeds the core what it hears and the time, and carries
//! out what the core decides: tells the router who owns which IP, announces, asks,
//! challenges. Forged or broken cluster messages are dropped and counted here; nothing here
//! can panic on input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::broker::own_queues::presence_queue;
use crate::broker::{
    BrokerError, Delivery, Destination, Message, Properties, QueueSpec, SharedBroker,
};
use crate::cluster::membership::{Effect, Membership, MembershipConfig};
use crate::cluster::replay_guard::ReplayGuard;
use crate::cluster::wire::{ClusterMessage, Codec};
use crate::mail::routing::Via;
use crate::messages::{
    AnnounceNow, AnswerAsk, ClusterHeard, Hearing, HearingNow, ListMembers, ListPeers,
    OwnershipChanged, Pause, PeerCount, PeerNames, PeersGone, Reconfigure,
};
use crate::settings::ClusterProtocol;
use crate::stats::{Stats, bump};

pub struct PeerRegistry {
    broker: SharedBroker,
    /// This instance's own broker: where a peer's presence queue is looked for first.
    local: SharedBroker,
    exchange: String,
    me: String,
    codec: Codec,
    /// Signed commands acted on lately: a copy of one is dropped. Survives restarts (the
    /// supervisor reuses this struct), so a reconnect does not open a window for replays.
    replays: ReplayGuard,
    core: Membership,
    links: RegistryLinks,
    /// The core's tick, rescheduled when a reload changes `peer-timeout`.
    sweep: Option<SpawnHandle>,
    stats: Arc<Stats>,
    failures: u32,
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
    pub local_ips: Vec<std::net::IpAddr>,
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
        let core = Membership::new(
            MembershipConfig {
                me: config.me.clone(),
                my_started_at: config.my_started_at,
                local_ips: config.local_ips,
                peer_timeout: config.peer_timeout,
                announce_interval: config.announce_interval,
                config_hash: config.config_hash,
                protocol: config.protocol,
                two_brokers: !Arc::ptr_eq(&config.local, &broker),
            },
            Box::new(|| rand::rng().random()),
            stats.clone(),
            Instant::now(),
        );
        PeerRegistry {
            broker,
            local: config.local,
            exchange: config.exchange,
            me: config.me,
            replays: ReplayGuard::new(config.codec.freshness()),
            codec: config.codec,
            core,
            links,
            sweep: None,
            stats,
            failures: 0,
        }
    }

    /// Carries out what the core decided, in its order.
    fn apply(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Ownership(claims) => self.links.router.do_send(OwnershipChanged { claims }),
                Effect::Hearing(heard) => self.links.hearing.do_send(Hearing(heard)),
                Effect::Announce => self.links.announcer.do_send(AnnounceNow),
                Effect::AnswerAsk { reply_to } => self.links.answer.do_send(AnswerAsk { reply_to }),
                Effect::Ask { reply_to, names } => self.ask(reply_to, names, ctx),
                Effect::Challenge {
                    peer,
                    via,
                    nonce,
                    reply_to,
                } => self.challenge(peer, via, nonce, reply_to, ctx),
                Effect::Released(routes) => self.links.released.do_send(PeersGone(routes)),
                Effect::Pause(pause) => {
                    for to in &self.links.pause {
                        to.do_send(Pause(pause));
                    }
                }
                Effect::Reload => self.links.reload_requests.send_modify(|n| *n += 1),
                Effect::Wake(after) => {
                    ctx.run_later(after, |act, ctx| act.tick(ctx));
                }
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let effects = self.core.tick(Instant::now());
        self.apply(effects, ctx);
    }

    /// Asks the named instances to send their announcement to this registry's queue alone.
    fn ask(&mut self, reply_to: String, names: Vec<String>, ctx: &mut Context<Self>) {
        let message = ClusterMessage::Ask {
            from: self.me.clone(),
            reply_to,
            names,
        };
        let send = crate::cluster::cluster_frame::publish(
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

    /// Puts the core's challenge into the peer's presence queue on the broker `via` names.
    fn challenge(
        &mut self,
        peer: String,
        via: Via,
        nonce: u64,
        reply_to: String,
        ctx: &mut Context<Self>,
    ) {
        let broker = match via {
            Via::ClusterBroker => self.broker.clone(),
            Via::LocalBroker | Via::HandoverQueue => self.local.clone(),
        };
        let message = ClusterMessage::Challenge {
            from: self.me.clone(),
            reply_to,
            nonce,
        };
        let Ok(body) = self.codec.encode(&message, crate::cluster::wire::now_ms()) else {
            self.core.challenge_failed(nonce);
            return;
        };
        let properties = Properties {
            expiration: Some(
                crate::cluster::membership::ANSWER_WAIT
                    .as_millis()
                    .to_string(),
            ),
            ..Properties::default()
        };
        let to = Destination::queue(presence_queue(&peer).name);
        let send = async move {
            broker
                .publish(&to, &Message::new(body, properties), true)
                .await
        };
        ctx.spawn(send.into_actor(self).map(move |result, act, _| {
            if let Err(error) = result {
                debug!(%peer, %via, %error, "challenge not sent or returned");
                act.core.challenge_failed(nonce);
            }
        }));
    }

    fn schedule_sweep(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.sweep.take() {
            ctx.cancel_future(old);
        }
        self.sweep = Some(ctx.run_interval(self.core.sweep_interval(), |act, ctx| act.tick(ctx)));
    }

    /// Declares and binds a fresh listener queue, consumes it, and says hello.
    fn listen(&mut self, ctx: &mut Context<Self>) {
        let broker = self.broker.clone();
        let exchange = self.exchange.clone();
        let codec = self.codec.clone();
        let suffix: u32 = rand::rng().random();
        let queue = format!("mailroute.cluster.{}.{suffix:08x}", self.me);
        let hello = self.core.hello(&queue);
        let listen = async move {
            broker.declare_topic_exchange(&exchange).await?;
            broker.declare_queue(&QueueSpec::private(&queue)).await?;
            broker.bind_queue(&queue, &exchange, "#").await?;
            let stream = broker.consume(&queue, 256).await?;
            crate::cluster::cluster_frame::publish(broker, exchange, codec, hello).await?;
            Ok::<_, BrokerError>((stream, queue))
        };
        ctx.wait(
            listen
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok((stream, queue)) => {
                        info!(exchange = %act.exchange, "listening to the cluster");
                        ctx.add_stream(stream);
                        let effects = act.core.listening(queue, Instant::now());
                        act.apply(effects, ctx);
                        act.links.listening.do_send(ClusterHeard);
                    }
                    Err(error) => {
                        act.failures += 1;
                        warn!(%error, "cannot listen to the cluster; restarting");
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Actor for PeerRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.schedule_sweep(ctx);
        // Capped at an announce interval: while deaf, this instance keeps its peers and defers
        // unowned mail, so it must be listening again soon after the broker is back.
        let delay = backoff::delay(self.failures).min(self.core.rejoin_window() / 2);
        ctx.run_later(delay, |act, ctx| act.listen(ctx));
    }
}

impl Supervised for PeerRegistry {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        bump(&self.stats.restarts);
        self.sweep = None;
        let effects = self.core.listener_lost(Instant::now());
        self.apply(effects, ctx);
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
        let now = Instant::now();
        self.core.frame(now);
        let Some((message, tag)) =
            crate::cluster::cluster_frame::take_tagged(delivery, &self.codec, &self.stats)
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
            if !self.replays.first_time(tag, crate::cluster::wire::now_ms()) {
                self.stats.dropped("replayed");
                warn!(kind = %message.routing_key(), "a copy of a signed command already acted on; dropped");
                return;
            }
        }
        let effects = self.core.message(message, now);
        self.apply(effects, ctx);
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
        let sweep = self.core.sweep_interval();
        let effects = self.core.reconfigure(
            live.local_ips.clone(),
            live.config_hash.clone(),
            live.announce_interval,
            live.peer_timeout,
            Instant::now(),
        );
        if self.core.sweep_interval() != sweep {
            self.schedule_sweep(ctx);
        }
        self.apply(effects, ctx);
    }
}

impl Handler<HearingNow> for PeerRegistry {
    type Result = Hearing;

    fn handle(&mut self, _: HearingNow, _: &mut Context<Self>) -> Hearing {
        Hearing(self.core.hearing())
    }
}

impl Handler<ListPeers> for PeerRegistry {
    type Result = MessageResult<ListPeers>;

    fn handle(&mut self, _: ListPeers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.peers(Instant::now()))
    }
}

impl Handler<PeerCount> for PeerRegistry {
    type Result = usize;

    fn handle(&mut self, _: PeerCount, _: &mut Context<Self>) -> usize {
        self.core.peer_count()
    }
}

impl Handler<PeerNames> for PeerRegistry {
    type Result = MessageResult<PeerNames>;

    fn handle(&mut self, _: PeerNames, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.peer_names())
    }
}

impl Handler<ListMembers> for PeerRegistry {
    type Result = MessageResult<ListMembers>;

    fn handle(&mut self, _: ListMembers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.members(Instant::now()))
    }
}
