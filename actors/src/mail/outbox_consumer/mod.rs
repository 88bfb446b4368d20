//! OutboxConsumer: reads the local outbox and settles each delivery only once its outcome is
//! confirmed. Unsettled deliveries stay unacked at the broker, so a crash or restart anywhere
//! downstream makes the broker redeliver them: nothing is lost. What to ack when is the
//! [`AckFrontier`]'s; what the broker consumer is doing is one [`Link`] state, and what the
//! instance wants of it one [`Intent`].

mod control;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::broker::{
    Acker, BrokerError, ConsumerControl, Delivery, QueueSpec, SharedBroker, paused_while,
};
use crate::mail::ack_frontier::{AckFrontier, Acks, STALL};
use crate::mail::failure_runs::FailureRuns;
use crate::messages::{Route, Run, Settled};
use crate::stats::{Stats, bump};

pub struct OutboxConsumer {
    broker: SharedBroker,
    queue: String,
    /// Declared again on every start, as this instance declares it.
    spec: QueueSpec,
    prefetch: u16,
    /// The cluster broker's publishing state, when it is another broker: handovers are
    /// published there, so the consumer takes nothing while it blocks (see `pause_while`).
    also_blocked: Option<tokio::sync::watch::Receiver<bool>>,
    router: Recipient<Route>,
    stats: Arc<Stats>,
    /// Deliveries not yet acked or nacked, and what to ack next.
    frontier: AckFrontier<Box<dyn Acker>>,
    /// A flush is scheduled for when the oldest unsettled delivery counts as stalled.
    flush_scheduled: bool,
    /// Acks and nacks sent but not yet answered: a drain waits for them, since closing the
    /// channel first would requeue (and so duplicate) messages already handed over.
    acking: usize,
    /// Never reset, so a `Settled` from before a restart cannot settle a newer delivery.
    next_id: u64,
    /// Ended on a restart, so the router and the publisher drop what this run took and still hold.
    run: Run,
    failures: u32,
    /// How long a message whose outcome failed waits before it is requeued.
    failing: FailureRuns,
    intent: Intent,
    link: Link,
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    warmup: Duration,
    stream: Option<SpawnHandle>,
    control: Option<Arc<dyn ConsumerControl>>,
    /// This actor as the `Settled` recipient, made once: it travels with every message.
    me: Option<Recipient<Settled>>,
}

/// What the instance wants of the outbox consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Consume,
    /// Maintenance (`Pause(true)`): no consumer until `Pause(false)`.
    Pause,
    /// A graceful stop: nothing subscribes again.
    Stop,
}

/// Where the broker consumer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not before the registry first listens to the cluster: routing before the peers are
    /// known would hold mail that a peer owns.
    Gated,
    /// No consumer.
    Idle,
    /// A subscribe is scheduled or on its way, so a resume does not start a second one.
    Subscribing,
    Consuming,
    /// Being cancelled and what it delivered settled: for a stop, a pause or a new prefetch.
    /// `cancelled`: the broker has stopped sending. Unless stopping or paused, a new
    /// consumer follows once drained.
    Draining {
        cancelled: bool,
    },
}

impl OutboxConsumer {
    pub fn new(
        broker: SharedBroker,
        spec: QueueSpec,
        prefetch: u16,
        router: Recipient<Route>,
        stats: Arc<Stats>,
        warmup: Duration,
    ) -> Self {
        OutboxConsumer {
            broker,
            queue: spec.name.clone(),
            spec,
            prefetch,
            also_blocked: None,
            router,
            stats,
            frontier: AckFrontier::default(),
            flush_scheduled: false,
            acking: 0,
            next_id: 0,
            run: Run::default(),
            failures: 0,
            failing: FailureRuns::default(),
            intent: Intent::Consume,
            link: Link::Gated,
            drained: Vec::new(),
            warmup,
            stream: None,
            control: None,
            me: None,
        }
    }

    fn reply(&mut self, ctx: &Context<Self>) -> Recipient<Settled> {
        self.me
            .get_or_insert_with(|| ctx.address().recipient())
            .clone()
    }

    /// Sends what the frontier says is due, or looks again once the front has stalled.
    fn flush_acks(&mut self, ctx: &mut Context<Self>) {
        match self.frontier.next_acks(Instant::now()) {
            Acks::Through(acker) => self.send_acks(ctx, vec![acker], true),
            Acks::Each(ackers) => self.send_acks(ctx, ackers, false),
            Acks::Later if !self.flush_scheduled => {
                self.flush_scheduled = true;
                ctx.run_later(STALL, |act, ctx| {
                    act.flush_scheduled = false;
                    act.flush_acks(ctx);
                });
            }
            Acks::Later | Acks::None => {}
        }
    }

    /// `multiple`: one ack through the last of `ackers` (there is one); else each on its own.
    fn send_acks(&mut self, ctx: &mut Context<Self>, ackers: Vec<Box<dyn Acker>>, multiple: bool) {
        self.acking += 1;
        let acks = async move {
            let mut result = Ok(());
            for acker in ackers {
                let sent = if multiple {
                    acker.ack_through().await
                } else {
                    acker.ack().await
                };
                result = result.and(sent);
            }
            result
        };
        ctx.spawn(acks.into_actor(self).map(|result, act, ctx| {
            act.frontier.ack_done();
            act.acking = act.acking.saturating_sub(1);
            if let Err(error) = result {
                // The channel died; the broker redelivers, and duplicates beat loss.
                debug!(%error, "ack failed");
            }
            act.flush_acks(ctx);
            act.settle_if_drained(ctx);
        }));
    }

    /// Hands a delivery back to the broker after `delay`. It stays in the frontier until the
    /// nack is sent, so a later `multiple` ack cannot settle it first.
    fn requeue(
        &mut self,
        id: u64,
        acker: Box<dyn Acker>,
        delay: Duration,
        ctx: &mut Context<Self>,
    ) {
        self.frontier.nacking(id);
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
            act.frontier.nacked(id);
            act.flush_acks(ctx);
            act.settle_if_drained(ctx);
        }));
        if !delay.is_zero() {
            // The ones confirmed behind it need not wait for its delay.
            self.flush_acks(ctx);
        }
    }

    fn settle_if_drained(&mut self, ctx: &mut Context<Self>) {
        let cancelled = self.link == Link::Draining { cancelled: true };
        if !(cancelled && self.frontier.is_empty() && self.acking == 0) {
            return;
        }
        for waiter in self.drained.drain(..) {
            let _ = waiter.send(());
        }
        // Only now may the channel close: every ack has been answered, so nothing that was
        // settled comes back. No `ctx.stop()`: the supervisor would consume again.
        self.control = None;
        if let Some(handle) = self.stream.take() {
            ctx.cancel_future(handle);
        }
        self.link = Link::Idle;
        match self.intent {
            Intent::Stop => {}
            Intent::Pause => info!(queue = %self.queue, "paused: taking no outbox mail"),
            // A new prefetch: ready for the next consumer.
            Intent::Consume => {
                info!(queue = %self.queue, prefetch = self.prefetch, "consuming again");
                self.consume(ctx, Duration::ZERO);
            }
        }
    }

    /// Starts a drain: the consumer is cancelled, and what it delivered settled.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.link = Link::Draining { cancelled: false };
        self.cancel_consumer(ctx);
    }

    /// Stops the broker sending more, keeping what it sent: those are settled (or requeued,
    /// if not routed yet) on the open channel before it closes.
    fn cancel_consumer(&mut self, ctx: &mut Context<Self>) {
        let Some(control) = self.control.clone() else {
            self.link = Link::Draining { cancelled: true };
            self.settle_if_drained(ctx);
            return;
        };
        let cancel = async move { control.cancel().await };
        ctx.spawn(cancel.into_actor(self).map(|result, act, ctx| {
            if let Err(error) = result {
                // The channel is gone: the broker has requeued what was unacked already.
                debug!(%error, "cancelling the outbox consumer failed");
            }
            info!(queue = %act.queue, "outbox consumer cancelled");
            if let Link::Draining { .. } = act.link {
                act.link = Link::Draining { cancelled: true };
            }
            act.settle_if_drained(ctx);
        }));
    }
}

impl Actor for OutboxConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.consume(ctx, backoff::delay(self.failures));
    }
}

impl OutboxConsumer {
    /// Takes no outbox mail while `blocked` (another broker's publishing, where this
    /// instance's handovers go) says so, besides while its own broker blocks: a handover
    /// taken then could only wait, unacked, for the alarm to clear.
    pub fn pause_while(mut self, blocked: Option<tokio::sync::watch::Receiver<bool>>) -> Self {
        self.also_blocked = blocked;
        self
    }

    /// Subscribes after `delay`, unless the gate is closed, a stop or pause wants no
    /// consumer, or one is there or on its way already.
    fn consume(&mut self, ctx: &mut Context<Self>, delay: std::time::Duration) {
        if self.link != Link::Idle || self.intent != Intent::Consume {
            return;
        }
        self.link = Link::Subscribing;
        ctx.run_later(delay, |act, ctx| {
            if act.link != Link::Subscribing {
                return;
            }
            if act.intent != Intent::Consume {
                act.link = Link::Idle;
                return;
            }
            let broker = act.broker.clone();
            let (queue, spec, prefetch) = (act.queue.clone(), act.spec.clone(), act.prefetch);
            // Declared again on every start: if an operator or a broker failure removed the
            // outbox, this instance brings it back instead of sitting idle while peers' handovers
            // to it are returned.
            let consume = async move {
                broker.declare_queue(&spec).await?;
                broker.subscribe(&queue, prefetch).await
            };
            let also_blocked = act.also_blocked.clone();
            ctx.wait(
                consume
                    .into_actor(act)
                    .map(|result, act, ctx| match result {
                        Ok(subscription) => {
                            act.link = Link::Consuming;
                            info!(queue = %act.queue, "consuming outbox");
                            act.control = Some(Arc::from(subscription.control));
                            let deliveries = paused_while(subscription.deliveries, also_blocked);
                            act.stream = Some(ctx.add_stream(deliveries));
                        }
                        Err(error) => {
                            act.link = Link::Idle;
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
        // The restart subscribes anew (unless paused, stopping, or not yet let through), with
        // the current prefetch.
        if self.link != Link::Gated {
            self.link = Link::Idle;
        }
        // The old consumer was dropped with the old context, so the broker requeues all that
        // was unacked; the old ackers are dead, and what the router and the publisher still hold is stale.
        self.frontier.clear();
        self.run.end();
        self.run = Run::default();
        self.flush_scheduled = false;
        self.acking = 0;
        self.stream = None;
        self.control = None;
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
        if let Link::Draining { .. } = self.link {
            // Sent before the cancel took effect, not routed: hand it back untouched.
            self.requeue(id, delivery.acker, Duration::ZERO, ctx);
            return;
        }
        bump(&self.stats.consumed);
        self.frontier
            .routed(id, delivery.acker, delivery.redelivered, Instant::now());
        let route = Route {
            id,
            run: self.run.clone(),
            message: delivery.message,
            reply: self.reply(ctx),
        };
        // `do_send`: a supervised router keeps its mailbox across restarts; prefetch bounds it.
        if self.router.connected() {
            self.router.do_send(route);
        } else {
            warn!("router gone; requeueing");
            if let Some((acker, _)) = self.frontier.settle(id) {
                self.requeue(id, acker, Duration::ZERO, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // lapin ends the stream when the broker cancels the consumer (queue deleted, node
        // restart): consume again rather than sit idle. A drain's own cancel ends it too.
        if !matches!(self.link, Link::Draining { .. }) {
            warn!(queue = %self.queue, "outbox consumer cancelled by the broker; consuming again");
            self.failures += 1;
            ctx.stop();
        }
    }
}
