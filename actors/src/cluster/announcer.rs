//! Announcer: tells the cluster who this instance is and which IPs it sends from; says
//! `Leaving` on a graceful shutdown. With `cluster-protocol: mesh` it announces every
//! `announce-interval` and whenever asked; with `digest`, only when something changed, and
//! each interval it puts a small heartbeat into the heartbeat queue instead (see
//! [`crate::cluster::digest_leader`]).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, warn};

use crate::backoff;
use crate::broker::own_queues::heartbeat_queue;
use crate::broker::{BrokerError, Destination, SharedBroker};
use crate::cluster::cluster_frame::{publish, publish_to};
use crate::cluster::membership::leader::heartbeat_ttl;
use crate::cluster::wire::{Announcement, ClusterMessage, Codec};
use crate::messages::{AnnounceNow, AnswerAsk, Broadcast, Departing, Leave, Pause, Reconfigure};
use crate::settings::ClusterProtocol;
use crate::stats::{Stats, bump};

pub struct Announcer {
    broker: SharedBroker,
    exchange: String,
    announcement: Announcement,
    interval: Duration,
    /// Digest mode: how long a heartbeat may wait in the queue and still count.
    peer_timeout: Duration,
    stats: Arc<Stats>,
    codec: Codec,
    protocol: ClusterProtocol,
    failures: u32,
    ticker: Option<SpawnHandle>,
    /// `Leaving` was said: no more announcements.
    left: bool,
    /// When the last announcement went out, and whether one is scheduled to answer requests
    /// that came too soon after it.
    last: Option<std::time::Instant>,
    requested: bool,
}

/// Requests to announce (a hello, a new peer) are answered at once, but at most one
/// announcement per this share of the interval goes out for them: when N instances start
/// together, each hears N hellos and would otherwise announce N times, N² announcements that
/// each reach N queues.
const REQUEST_SHARE: u32 = 8;
/// With a long interval (MailerQ announces every couple of minutes), a hello is still
/// answered within this.
const MAX_REQUEST_GAP: Duration = Duration::from_millis(250);

impl Announcer {
    pub fn new(
        broker: SharedBroker,
        exchange: impl Into<String>,
        announcement: Announcement,
        interval: Duration,
        stats: Arc<Stats>,
        codec: Codec,
        protocol: ClusterProtocol,
    ) -> Self {
        Announcer {
            broker,
            exchange: exchange.into(),
            announcement,
            interval,
            peer_timeout: interval,
            stats,
            codec,
            protocol,
            failures: 0,
            ticker: None,
            left: false,
            last: None,
            requested: false,
        }
    }

    /// Digest mode: the members' `peer-timeout`, which bounds how long a heartbeat counts.
    pub fn with_peer_timeout(mut self, peer_timeout: Duration) -> Self {
        self.peer_timeout = peer_timeout;
        self
    }

    /// A heartbeat that waited in the queue longer than this is dropped unread (see
    /// [`heartbeat_ttl`]).
    fn heartbeat_ttl(&self) -> Duration {
        heartbeat_ttl(self.interval, self.peer_timeout)
    }

    fn announce(&mut self, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        self.last = Some(std::time::Instant::now());
        self.announcement.sequence += 1;
        let message = ClusterMessage::Announcement(self.announcement.clone());
        let to = Destination::exchange(&self.exchange, message.routing_key());
        self.send(ctx, to, message, None, |stats| &stats.announcements_sent);
    }
}

impl Announcer {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.ticker.take() {
            ctx.cancel_future(old);
        }
        self.ticker = Some(
            ctx.run_interval(self.interval, |act, ctx| match act.protocol {
                ClusterProtocol::Mesh => act.announce(ctx),
                ClusterProtocol::Digest => act.heartbeat(ctx),
            }),
        );
    }

    /// One heartbeat into the heartbeat queue: a delivery to one consumer, not to N.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        let message = ClusterMessage::Heartbeat {
            name: self.announcement.name.clone(),
            started_at: self.announcement.started_at,
            sequence: self.announcement.sequence,
        };
        let to = Destination::queue(heartbeat_queue(&self.exchange).name);
        let ttl = Some(self.heartbeat_ttl());
        self.send(ctx, to, message, ttl, |stats| &stats.heartbeats_sent);
    }

    /// Publishes `message` to `to`; a failure restarts the announcer (the broker is gone).
    fn send(
        &mut self,
        ctx: &mut Context<Self>,
        to: Destination,
        message: ClusterMessage,
        ttl: Option<Duration>,
        counter: fn(&Stats) -> &std::sync::atomic::AtomicU64,
    ) {
        let publish = publish_to(self.broker.clone(), to, self.codec.clone(), message, ttl);
        ctx.spawn(
            publish
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(()) => {
                        act.failures = 0;
                        bump(counter(&act.stats));
                    }
                    Err(error) => {
                        act.failures += 1;
                        warn!(%error, "cluster publish failed; restarting the announcer");
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Actor for Announcer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Never longer than an interval: peers expire us after a few missed ones, so after a
        // cluster-broker outage the first announcement must not wait out a long backoff.
        let delay = backoff::delay(self.failures).min(self.interval);
        ctx.run_later(delay, |act, ctx| {
            let broker = act.broker.clone();
            let exchange = act.exchange.clone();
            let digest = act.protocol == ClusterProtocol::Digest;
            let declare = async move {
                broker.declare_topic_exchange(&exchange).await?;
                if digest {
                    // Declared here, the first heartbeats are not dropped for want of it. Best
                    // effort: the leader declares it too, and a queue declared otherwise (other
                    // arguments, by another version) still takes heartbeats; this instance
                    // must announce either way.
                    let queue = heartbeat_queue(&exchange);
                    if let Err(error) = broker.declare_queue(&queue).await {
                        warn!(queue = %queue.name, %error, "cannot declare the heartbeat queue");
                    }
                }
                Ok::<_, BrokerError>(())
            };
            ctx.wait(declare.into_actor(act).map(|result, act, ctx| match result {
                Ok(()) => {
                    // Digest mode: the registry asks for the first announcement once it
                    // listens. Announcing before would race the peers' own start: each could
                    // speak before the other listens, and only a digest (an interval later)
                    // would bring them together.
                    match act.protocol {
                        ClusterProtocol::Mesh => act.announce(ctx),
                        // Peers that hear of this instance by its announcement forget it
                        // unless a digest lists it within a peer-timeout: the leader must
                        // hear it now, not an interval from now.
                        ClusterProtocol::Digest => act.heartbeat(ctx),
                    }
                    act.tick(ctx);
                }
                Err(error) => {
                    act.failures += 1;
                    warn!(%error, exchange = %act.exchange, "cannot declare the cluster exchange");
                    ctx.stop();
                }
            }));
        });
    }
}

impl Supervised for Announcer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
        self.ticker = None;
        // A scheduled answer died with the old context.
        self.requested = false;
    }
}

impl Handler<AnnounceNow> for Announcer {
    type Result = ();

    fn handle(&mut self, _: AnnounceNow, ctx: &mut Context<Self>) {
        if self.requested {
            return;
        }
        let gap = (self.interval / REQUEST_SHARE).min(MAX_REQUEST_GAP);
        let wait = self
            .last
            .map_or(Duration::ZERO, |last| gap.saturating_sub(last.elapsed()));
        if wait.is_zero() {
            debug!("announcing on request");
            self.announce(ctx);
            return;
        }
        self.requested = true;
        ctx.run_later(wait, |act, ctx| {
            act.requested = false;
            debug!("announcing on requests");
            act.announce(ctx);
        });
    }
}

/// Announces the new IPs and config hash at once, so peers route by them within moments.
impl Handler<Reconfigure> for Announcer {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, ctx: &mut Context<Self>) {
        let changed = self.announcement.local_ips != live.local_ips
            || self.announcement.config_hash != live.config_hash;
        self.announcement.local_ips = live.local_ips.clone();
        self.announcement.config_hash = live.config_hash.clone();
        self.peer_timeout = live.peer_timeout;
        if self.interval != live.announce_interval {
            self.interval = live.announce_interval;
            if self.ticker.is_some() {
                self.tick(ctx);
            }
        }
        // Digest mode announces changes only: a cluster-wide reload would otherwise be N
        // announcements to N queues at once. The digests re-validate everyone meanwhile.
        if changed || self.protocol == ClusterProtocol::Mesh {
            self.announce(ctx);
        }
    }
}

impl Handler<Leave> for Announcer {
    type Result = ResponseFuture<Result<(), BrokerError>>;

    fn handle(&mut self, _: Leave, ctx: &mut Context<Self>) -> Self::Result {
        // Gone is gone: an announcement after `Leaving` would bring this instance back into
        // its peers' tables while it shuts down.
        self.left = true;
        if let Some(ticker) = self.ticker.take() {
            ctx.cancel_future(ticker);
        }
        let message = ClusterMessage::Leaving {
            name: self.announcement.name.clone(),
            started_at: self.announcement.started_at,
        };
        Box::pin(publish(
            self.broker.clone(),
            self.exchange.clone(),
            self.codec.clone(),
            message,
        ))
    }
}

/// Peers show the state on their consoles; routing to this instance goes on either way.
impl Handler<Pause> for Announcer {
    type Result = ();

    fn handle(&mut self, Pause(pause): Pause, ctx: &mut Context<Self>) {
        if self.announcement.draining != pause {
            self.announcement.draining = pause;
            self.announce(ctx);
        }
    }
}

impl Handler<Departing> for Announcer {
    type Result = ();

    fn handle(&mut self, _: Departing, ctx: &mut Context<Self>) {
        self.announcement.leaving = true;
        self.announce(ctx);
    }
}

impl Handler<Broadcast> for Announcer {
    type Result = ResponseFuture<Result<(), BrokerError>>;

    fn handle(&mut self, Broadcast(message): Broadcast, _: &mut Context<Self>) -> Self::Result {
        Box::pin(publish(
            self.broker.clone(),
            self.exchange.clone(),
            self.codec.clone(),
            message,
        ))
    }
}

/// `cluster-protocol: digest`: an `Ask` named this instance. The announcement goes as it
/// stands (same sequence: nothing changed), to the asker's queue alone.
impl Handler<AnswerAsk> for Announcer {
    type Result = ();

    fn handle(&mut self, AnswerAsk { reply_to }: AnswerAsk, ctx: &mut Context<Self>) {
        if self.left || self.announcement.sequence == 0 {
            // Not announced yet: the first announcement reaches the asker anyway.
            return;
        }
        let message = ClusterMessage::Announcement(self.announcement.clone());
        self.send(ctx, Destination::queue(reply_to), message, None, |stats| {
            &stats.asks_answered
        });
    }
}
