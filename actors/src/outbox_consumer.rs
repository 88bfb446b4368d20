//! OutboxConsumer: reads the local outbox and settles each delivery only once its outcome is
//! confirmed. Unsettled deliveries stay unacked at the broker, so a crash or restart anywhere
//! downstream makes the broker redeliver them: nothing is lost.
//!
//! Acks go out as AMQP `multiple` acks, one at a time: while one is on its way, the deliveries
//! confirmed meanwhile wait for the next. Under load one frame settles a whole run of them; when
//! idle, each is acked at once. A delivery can only be covered once every earlier one is
//! confirmed (or its nack was sent), so a `multiple` ack never settles a message it should not.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::broker::{Acker, BrokerError, Delivery, QueueSpec, SharedBroker};
use crate::messages::{ClusterHeard, Drain, Route, Settled};
use crate::stats::{Stats, bump};

pub struct OutboxConsumer {
    broker: SharedBroker,
    queue: String,
    prefetch: u16,
    router: Recipient<Route>,
    stats: Arc<Stats>,
    /// Deliveries not yet acked or nacked, in delivery order (ids grow with delivery tags).
    in_flight: BTreeMap<u64, Pending>,
    /// An ack is on its way; deliveries confirmed meanwhile go in the next one.
    ack_busy: bool,
    /// Acks and nacks sent but not yet answered: a drain waits for them, since closing the
    /// channel first would requeue (and so duplicate) messages already handed over.
    acking: usize,
    /// Never reset, so a `Settled` from before a restart cannot settle a newer delivery.
    next_id: u64,
    failures: u32,
    /// When the current run of unconfirmed outcomes began (a confirmed one ends it). A message
    /// that fails again waits about half as long as the failures have lasted before it is
    /// requeued (100 ms to 10 s): a destination that stays broken is retried every few seconds,
    /// never in a loop at full speed.
    failing_since: Option<std::time::Instant>,
    draining: bool,
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    warmup: std::time::Duration,
    /// Closed until the registry first listens to the cluster: routing before the peers are
    /// known would hold mail that a peer owns.
    gate_open: bool,
    stream: Option<SpawnHandle>,
    /// This actor as the `Settled` recipient, made once: it travels with every message.
    me: Option<Recipient<Settled>>,
}

enum Pending {
    /// With the router or the publisher; `redelivered` as the broker said.
    Routed {
        acker: Box<dyn Acker>,
        redelivered: bool,
    },
    /// Its outcome is confirmed: to be acked with the next `multiple` ack.
    Confirmed(Box<dyn Acker>),
    /// Its nack is being sent; a `multiple` ack must not pass it until then.
    Nacking,
}

impl OutboxConsumer {
    pub fn new(
        broker: SharedBroker,
        queue: impl Into<String>,
        prefetch: u16,
        router: Recipient<Route>,
        stats: Arc<Stats>,
        warmup: std::time::Duration,
    ) -> Self {
        OutboxConsumer {
            broker,
            queue: queue.into(),
            prefetch,
            router,
            stats,
            in_flight: BTreeMap::new(),
            ack_busy: false,
            acking: 0,
            next_id: 0,
            failures: 0,
            failing_since: None,
            draining: false,
            drained: Vec::new(),
            warmup,
            gate_open: false,
            stream: None,
            me: None,
        }
    }

    fn reply(&mut self, ctx: &Context<Self>) -> Recipient<Settled> {
        self.me
            .get_or_insert_with(|| ctx.address().recipient())
            .clone()
    }

    /// Sends one `multiple` ack for the confirmed deliveries at the front, unless one is on its
    /// way already (its completion calls this again).
    fn flush_acks(&mut self, ctx: &mut Context<Self>) {
        if self.ack_busy {
            return;
        }
        let mut last = None;
        while let Some(entry) = self.in_flight.first_entry() {
            if !matches!(entry.get(), Pending::Confirmed(_)) {
                break;
            }
            if let Pending::Confirmed(acker) = entry.remove() {
                last = Some(acker);
            }
        }
        let Some(acker) = last else {
            return;
        };
        self.ack_busy = true;
        self.acking += 1;
        let ack = async move { acker.ack_through().await };
        ctx.spawn(ack.into_actor(self).map(|result, act, ctx| {
            act.ack_busy = false;
            act.acking = act.acking.saturating_sub(1);
            if let Err(error) = result {
                // The channel died; the broker redelivers, and duplicates beat loss.
                debug!(%error, "ack failed");
            }
            act.flush_acks(ctx);
            act.settle_if_drained(ctx);
        }));
    }

    /// Hands a delivery back to the broker after `delay`. It stays in `in_flight` until the
    /// nack is sent, so a later `multiple` ack cannot settle it first.
    fn requeue(
        &mut self,
        id: u64,
        acker: Box<dyn Acker>,
        delay: std::time::Duration,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight.insert(id, Pending::Nacking);
        self.acking += 1;
        let nack = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            acker.nack(true).await
        };
        ctx.spawn(nack.into_actor(self).map(move |result, act, ctx| {
            act.acking = act.acking.saturating_sub(1);
            if let Err(error) = result {
                debug!(%error, "requeue failed; the broker redelivers it anyway");
            }
            act.in_flight.remove(&id);
            act.flush_acks(ctx);
            act.settle_if_drained(ctx);
        }));
    }

    fn settle_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.draining && self.in_flight.is_empty() && self.acking == 0 {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
            // Dropping the consumer returns its prefetched deliveries to the queue. No
            // `ctx.stop()`: the supervisor would restart the actor and consume again.
            if let Some(handle) = self.stream.take() {
                ctx.cancel_future(handle);
            }
        }
    }
}

impl Actor for OutboxConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.gate_open && !self.draining {
            self.consume(ctx, backoff::delay(self.failures));
        }
    }
}

impl OutboxConsumer {
    fn consume(&mut self, ctx: &mut Context<Self>, delay: std::time::Duration) {
        ctx.run_later(delay, |act, ctx| {
            let broker = act.broker.clone();
            let (queue, prefetch) = (act.queue.clone(), act.prefetch);
            // Declared again on every start: if an operator or a broker failure removed the
            // outbox, this instance brings it back instead of sitting idle while peers' handovers
            // to it are returned.
            let consume = async move {
                broker
                    .declare_queue(&QueueSpec::durable(queue.as_str()))
                    .await?;
                broker.consume(&queue, prefetch).await
            };
            ctx.wait(
                consume
                    .into_actor(act)
                    .map(|result, act, ctx| match result {
                        Ok(stream) => {
                            info!(queue = %act.queue, "consuming outbox");
                            act.stream = Some(ctx.add_stream(stream));
                        }
                        Err(error) => {
                            act.failures += 1;
                            warn!(queue = %act.queue, %error, "cannot consume outbox; restarting");
                            ctx.stop();
                        }
                    }),
            );
        });
    }
}

impl Supervised for OutboxConsumer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
        // The old consumer was dropped with the old context, so the broker requeues all that
        // was unacked; the old ackers are dead.
        self.in_flight.clear();
        self.ack_busy = false;
        self.acking = 0;
        self.stream = None;
        for waiter in self.drained.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl StreamHandler<Result<Delivery, BrokerError>> for OutboxConsumer {
    fn handle(&mut self, item: Result<Delivery, BrokerError>, ctx: &mut Context<Self>) {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => {
                self.failures += 1;
                warn!(queue = %self.queue, %error, "outbox consumer failed; restarting");
                ctx.stop();
                return;
            }
        };
        self.failures = 0;
        self.next_id += 1;
        let id = self.next_id;
        if self.draining {
            // Prefetched but not routed: hand it back to the broker untouched.
            self.requeue(id, delivery.acker, std::time::Duration::ZERO, ctx);
            return;
        }
        bump(&self.stats.consumed);
        self.in_flight.insert(
            id,
            Pending::Routed {
                acker: delivery.acker,
                redelivered: delivery.redelivered,
            },
        );
        let route = Route {
            id,
            message: delivery.message,
            reply: self.reply(ctx),
        };
        // `do_send`: a supervised router keeps its mailbox across restarts; prefetch bounds it.
        if self.router.connected() {
            self.router.do_send(route);
        } else {
            warn!("router gone; requeueing");
            if let Some(Pending::Routed { acker, .. }) = self.in_flight.remove(&id) {
                self.requeue(id, acker, std::time::Duration::ZERO, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // lapin ends the stream when the broker cancels the consumer (queue deleted, node
        // restart): consume again rather than sit idle.
        if !self.draining {
            warn!(queue = %self.queue, "outbox consumer cancelled by the broker; consuming again");
            self.failures += 1;
            ctx.stop();
        }
    }
}

impl Handler<ClusterHeard> for OutboxConsumer {
    type Result = ();

    fn handle(&mut self, _: ClusterHeard, ctx: &mut Context<Self>) {
        if !self.gate_open {
            self.gate_open = true;
            if !self.draining {
                self.consume(ctx, self.warmup);
            }
        }
    }
}

impl Handler<Settled> for OutboxConsumer {
    type Result = ();

    fn handle(&mut self, settled: Settled, ctx: &mut Context<Self>) {
        let (acker, redelivered) = match self.in_flight.remove(&settled.id) {
            Some(Pending::Routed { acker, redelivered }) => (acker, redelivered),
            other => {
                if let Some(pending) = other {
                    self.in_flight.insert(settled.id, pending);
                }
                debug!(id = settled.id, "settled twice or after a restart; ignored");
                return;
            }
        };
        match settled.result {
            Ok(_) => {
                self.failing_since = None;
                self.in_flight.insert(settled.id, Pending::Confirmed(acker));
                self.flush_acks(ctx);
            }
            Err(error) => {
                bump(&self.stats.publish_errors);
                let since = *self
                    .failing_since
                    .get_or_insert_with(std::time::Instant::now);
                // A first failure is retried at once: hundreds fail together when a channel
                // dies, and delaying them would hold back the acks of everything behind them.
                // A message that fails again is what would loop.
                let delay = if redelivered {
                    backoff::requeue_delay(since.elapsed())
                } else {
                    std::time::Duration::ZERO
                };
                warn!(id = settled.id, %error, ?delay, "outcome not confirmed; requeueing the original");
                self.requeue(settled.id, acker, delay, ctx);
            }
        }
    }
}

impl Handler<Drain> for OutboxConsumer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        self.settle_if_drained(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
