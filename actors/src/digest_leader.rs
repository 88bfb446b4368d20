//! DigestLeader (`cluster-protocol: digest`): every instance consumes the cluster's heartbeat
//! queue, a queue with a single active consumer. RabbitMQ delivers to one consumer at a time
//! and, when its consumer or connection goes, to the next: nobody is elected or told, an
//! instance leads while heartbeats reach it. The leader remembers when it last heard each
//! member and broadcasts a digest of that every interval, so each registry learns who is alive
//! from N heartbeats and one broadcast (2N deliveries an interval) instead of N announcements
//! that each reach N queues (N²).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::broker::{BrokerError, ConsumerControl, Delivery, SharedBroker};
use crate::cluster_frame::publish;
use crate::messages::{ListPeers, Reconfigure, Stop};
use crate::own_queues::heartbeat_queue;
use crate::settings::InstanceSettings;
use crate::stats::{Stats, bump};
use crate::wire::{ClusterMessage, Codec, DigestEntry, MAX_FRAME};

/// Digest entries per broadcast are capped so that one frame stays well under `MAX_FRAME`.
const DIGEST_BYTES: usize = MAX_FRAME * 3 / 4;

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

pub struct DigestLeader {
    broker: SharedBroker,
    exchange: String,
    me: String,
    /// This instance's run, for its own entry when it takes over.
    started_at: u64,
    interval: Duration,
    peer_timeout: Duration,
    codec: Codec,
    stats: Arc<Stats>,
    /// This instance's registry: what it last heard of each peer seeds a new leadership.
    registry: Recipient<ListPeers>,
    /// Per member: its run, the sequence of its latest announcement, when last heard.
    heard: HashMap<String, Heard>,
    last_heartbeat: Option<Instant>,
    leading: bool,
    failures: u32,
    ticker: Option<SpawnHandle>,
    control: Option<Arc<dyn ConsumerControl>>,
    stream: Option<SpawnHandle>,
    /// A graceful stop: the consumer is cancelled and not taken again, so the next instance
    /// leads at once.
    stopped: bool,
}

struct Heard {
    started_at: u64,
    sequence: u64,
    at: Instant,
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
            started_at,
            broker,
            exchange: settings.cluster_exchange.clone(),
            me: settings.name.clone(),
            interval: settings.announce_interval,
            peer_timeout: settings.peer_timeout,
            codec: settings.codec.clone(),
            stats,
            heard: HashMap::new(),
            last_heartbeat: None,
            leading: false,
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
        self.ticker = Some(ctx.run_interval(self.interval, |act, ctx| act.digest(ctx)));
    }

    fn on_heartbeat(
        &mut self,
        name: String,
        started_at: u64,
        sequence: u64,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        if !self.leading {
            self.leading = true;
            info!(instance = %self.me, "leading the heartbeat digest");
            self.take_over(ctx);
        }
        self.last_heartbeat = Some(now);
        match self.heard.get_mut(&name) {
            // A restart's heartbeat replaces the old run; an older run's late one does not.
            Some(h) if h.started_at > started_at => {}
            Some(h) if h.started_at == started_at && h.sequence > sequence => h.at = now,
            _ => {
                self.heard.insert(
                    name,
                    Heard {
                        started_at,
                        sequence,
                        at: now,
                    },
                );
            }
        }
    }

    /// A new leadership (the previous leader died, left or stalled): what this instance's
    /// registry last heard of each peer (through the previous leader's digests) is the
    /// starting point, with its true age, so the first digest lists every member and can go
    /// out after a quarter interval of fresh heartbeats. A digest of only the few heard since
    /// taking over would leave the others ageing toward their peer-timeout everywhere.
    fn take_over(&mut self, ctx: &mut Context<Self>) {
        let ask = self.registry.send(ListPeers);
        ctx.spawn(ask.into_actor(self).map(|peers, act, ctx| {
            let now = Instant::now();
            for peer in peers.unwrap_or_default() {
                let a = peer.announcement;
                if peer.last_seen >= act.peer_timeout || act.heard.contains_key(&a.name) {
                    continue;
                }
                let Some(at) = now.checked_sub(peer.last_seen) else {
                    continue;
                };
                act.heard.insert(
                    a.name,
                    Heard {
                        started_at: a.started_at,
                        sequence: a.sequence,
                        at,
                    },
                );
            }
            ctx.run_later(act.interval / 4, |act, ctx| act.digest(ctx));
            act.tick(ctx);
        }));
    }

    /// Broadcasts what was heard within `peer-timeout`, in as many digests as it takes. Stops
    /// leading once heartbeats stopped coming: another consumer has the queue now.
    fn digest(&mut self, ctx: &mut Context<Self>) {
        if !self.leading {
            return;
        }
        let quiet = self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= self.interval * 2);
        if quiet {
            // What was heard stays, with its true age: after a stall (this process frozen,
            // or starved of CPU) the next heartbeats make it lead again, and a digest that
            // listed only those would leave every other member unrefreshed.
            info!(instance = %self.me, "no heartbeats lately: not leading the digest");
            self.leading = false;
            return;
        }
        // This instance is alive, whatever its own heartbeat's place in the queue: after a
        // stall it sits behind everyone's backlog, and a digest without the leader made every
        // registry forget it while it was leading. Sequence 0 never reads as newer news than
        // what a registry holds.
        let now = Instant::now();
        self.heard
            .entry(self.me.clone())
            .and_modify(|h| h.at = now)
            .or_insert(Heard {
                started_at: self.started_at,
                sequence: 0,
                at: now,
            });
        let timeout = self.peer_timeout;
        self.heard.retain(|_, h| h.at.elapsed() < timeout);
        let entries = self.heard.iter().map(|(name, h)| DigestEntry {
            name: name.clone(),
            started_at: h.started_at,
            sequence: h.sequence,
            age_ms: u32::try_from(h.at.elapsed().as_millis()).unwrap_or(u32::MAX),
        });
        let chunks = chunked(entries);
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
        let delay = backoff::delay(self.failures).min(self.interval);
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
        self.leading = false;
        self.heard.clear();
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
        match crate::cluster_frame::take(delivery, &self.codec, &self.stats) {
            // Taken by a leader that died before acking it: from before that death, and its
            // sender's next one is due within an interval. Counting it now would keep a dead
            // sender alive a little longer.
            Some(ClusterMessage::Heartbeat { .. }) if redelivered => {}
            Some(ClusterMessage::Heartbeat {
                name,
                started_at,
                sequence,
            }) => self.on_heartbeat(name, started_at, sequence, ctx),
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
        self.peer_timeout = live.peer_timeout;
        if self.interval != live.announce_interval {
            self.interval = live.announce_interval;
            if self.ticker.is_some() {
                self.tick(ctx);
            }
        }
    }
}

/// A graceful stop: the next consumer of the heartbeat queue takes over now, not when this
/// instance's connection closes.
impl Handler<Stop> for DigestLeader {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopped = true;
        self.leading = false;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
