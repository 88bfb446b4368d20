//! DigestLeader (`cluster-protocol: digest`): every instance consumes the cluster's heartbeat
//! queue, a queue with a single active consumer. RabbitMQ delivers to one consumer at a time
//! and, when its consumer or connection goes, to the next: nobody is elected or told, an
//! instance leads while heartbeats reach it. The leader remembers when it last heard each
//! member and broadcasts a digest of that every interval, so each registry learns who is alive
//! from N heartbeats and one broadcast (2N deliveries an interval) instead of N announcements
//! that each reach N queues (N²).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, warn};

use crate::backoff;
use crate::broker::own_queues::heartbeat_queue;
use crate::broker::{BrokerError, ConsumerControl, Delivery, SharedBroker};
use crate::cluster::cluster_frame::publish;
use crate::cluster::membership::leader::{Heartbeat, Known, Leader};
use crate::cluster::wire::{ClusterMessage, Codec};
use crate::messages::{ListPeers, Reconfigure, Stop};
use crate::settings::InstanceSettings;
use crate::stats::{Stats, bump};

/// The shell around the leader's core ([`Leader`]): consumes the heartbeat queue, feeds the
/// core, seeds a new leadership from this instance's registry and broadcasts the digests.
pub struct DigestLeader {
    broker: SharedBroker,
    exchange: String,
    me: String,
    codec: Codec,
    stats: Arc<Stats>,
    /// This instance's registry: what it last heard of each peer seeds a new leadership.
    registry: Recipient<ListPeers>,
    core: Leader,
    failures: u32,
    ticker: Option<SpawnHandle>,
    control: Option<Arc<dyn ConsumerControl>>,
    stream: Option<SpawnHandle>,
    /// A graceful stop: the consumer is cancelled and not taken again, so the next instance
    /// leads at once.
    stopped: bool,
}

impl DigestLeader {
    /// `started_at`: this instance's run, as it announces it.
    pub fn new(
        settings: &InstanceSettings,
        broker: SharedBroker,
        started_at: u64,
        stats: Arc<Stats>,
        registry: Recipient<ListPeers>,
    ) -> Self {
        DigestLeader {
            registry,
            broker,
            exchange: settings.cluster_exchange.clone(),
            me: settings.name.clone(),
            codec: settings.codec.clone(),
            stats,
            core: Leader::new(
                settings.name.clone(),
                started_at,
                settings.announce_interval,
                settings.peer_timeout,
            ),
            failures: 0,
            ticker: None,
            control: None,
            stream: None,
            stopped: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if let Some(old) = self.ticker.take() {
            ctx.cancel_future(old);
        }
        self.ticker = Some(ctx.run_interval(self.core.interval(), |act, ctx| act.digest(ctx)));
    }

    /// The `digest_behind` gauge: whether the core reads the queue too late to digest.
    fn show_lag(&self) {
        let behind = u64::from(self.core.behind());
        self.stats
            .digest_behind
            .store(behind, std::sync::atomic::Ordering::Relaxed);
    }

    /// A new leadership starts from what this instance's registry last heard of each peer.
    fn take_over(&mut self, ctx: &mut Context<Self>) {
        let ask = self.registry.send(ListPeers);
        ctx.spawn(ask.into_actor(self).map(|peers, act, ctx| {
            let now = Instant::now();
            let known = peers.unwrap_or_default().into_iter().filter_map(|peer| {
                let a = peer.announcement;
                Some(Known {
                    heard_at: now.checked_sub(peer.last_seen)?,
                    name: a.name,
                    started_at: a.started_at,
                    sequence: a.sequence,
                })
            });
            act.core.seed(known, now);
            ctx.run_later(act.core.first_digest_after(), |act, ctx| act.digest(ctx));
            act.tick(ctx);
        }));
    }

    /// Broadcasts the core's digest, in as many frames as it takes.
    fn digest(&mut self, ctx: &mut Context<Self>) {
        let digest = self.core.digest(Instant::now());
        self.show_lag();
        let Some(chunks) = digest else {
            return;
        };
        for members in chunks {
            let message = ClusterMessage::Digest {
                from: self.me.clone(),
                members,
            };
            let send = publish(
                self.broker.clone(),
                self.exchange.clone(),
                self.codec.clone(),
                message,
            );
            ctx.spawn(send.into_actor(self).map(|result, act, ctx| match result {
                Ok(()) => bump(&act.stats.digests_sent),
                Err(error) => {
                    act.failures += 1;
                    warn!(%error, "cannot broadcast the digest; restarting");
                    ctx.stop();
                }
            }));
        }
    }
}

impl Actor for DigestLeader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        // No digest timer yet: it starts when heartbeats arrive (`take_over`).
        let delay = backoff::delay(self.failures).min(self.core.interval());
        ctx.run_later(delay, |act, ctx| {
            let broker = act.broker.clone();
            let spec = heartbeat_queue(&act.exchange);
            let subscribe = async move {
                broker.declare_queue(&spec).await?;
                // Heartbeats are acked one by one as they come: a leader's prefetch only
                // bounds what a failover hands to the next one.
                broker.subscribe(&spec.name, 256).await
            };
            ctx.wait(
                subscribe
                    .into_actor(act)
                    .map(|result, act, ctx| match result {
                        Ok(subscription) if !act.stopped => {
                            debug!("consuming the heartbeat queue");
                            act.control = Some(Arc::from(subscription.control));
                            act.stream = Some(ctx.add_stream(subscription.deliveries));
                        }
                        Ok(_) => {}
                        Err(error) => {
                            act.failures += 1;
                            warn!(%error, "cannot consume the heartbeat queue; restarting");
                            ctx.stop();
                        }
                    }),
            );
        });
    }
}

impl Supervised for DigestLeader {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
        self.ticker = None;
        self.control = None;
        self.stream = None;
        self.core.reset();
        self.show_lag();
    }
}

impl StreamHandler<Result<Delivery, BrokerError>> for DigestLeader {
    fn handle(&mut self, item: Result<Delivery, BrokerError>, ctx: &mut Context<Self>) {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => {
                self.failures += 1;
                warn!(%error, "heartbeat consumer failed; restarting");
                ctx.stop();
                return;
            }
        };
        self.failures = 0;
        let redelivered = delivery.redelivered;
        // How long it was on its way, by this clock: meaningful for this instance's own
        // heartbeats, which the core alone times.
        let now_ms = crate::cluster::wire::now_ms();
        let waited = crate::cluster::wire::sent_ms(&delivery.message.body)
            .map(|sent| Duration::from_millis(now_ms.saturating_sub(sent)));
        match crate::cluster::cluster_frame::take(delivery, &self.codec, &self.stats) {
            Some(ClusterMessage::Heartbeat {
                name,
                started_at,
                sequence,
            }) => {
                let now = Instant::now();
                let heard =
                    self.core
                        .heartbeat(name, started_at, sequence, redelivered, waited, now);
                self.show_lag();
                if heard == Heartbeat::TookOver {
                    self.take_over(ctx);
                }
            }
            Some(other) => {
                self.stats.dropped("garbage");
                warn!(kind = %other.routing_key(), "not a heartbeat in the heartbeat queue; dropped");
            }
            None => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if !self.stopped {
            warn!("heartbeat consumer cancelled by the broker; consuming again");
            self.failures += 1;
            ctx.stop();
        }
    }
}

impl Handler<Reconfigure> for DigestLeader {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, ctx: &mut Context<Self>) {
        let interval = self.core.interval();
        self.core
            .reconfigure(live.announce_interval, live.peer_timeout);
        if interval != live.announce_interval && self.ticker.is_some() {
            self.tick(ctx);
        }
    }
}

/// A graceful stop: the next consumer of the heartbeat queue takes over now, not when this
/// instance's connection closes.
impl Handler<Stop> for DigestLeader {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopped = true;
        self.core.reset();
        self.show_lag();
        if let Some(ticker) = self.ticker.take() {
            ctx.cancel_future(ticker);
        }
        if let Some(control) = self.control.take() {
            let stream = self.stream.take();
            ctx.spawn(async move { control.cancel().await }.into_actor(self).map(
                move |result, _, ctx| {
                    if let Err(error) = result {
                        debug!(%error, "cancelling the heartbeat consumer failed");
                    }
                    if let Some(stream) = stream {
                        ctx.cancel_future(stream);
                    }
                },
            ));
        }
    }
}
