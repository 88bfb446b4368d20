//! OutboxConsumer: reads the local outbox and settles each delivery only once its outcome is
//! confirmed. Unsettled deliveries stay unacked at the broker, so a crash or restart anywhere
//! downstream makes the broker redeliver them: nothing is lost.

use std::collections::HashMap;
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
    /// Ackers of the deliveries routed but not yet settled.
    in_flight: HashMap<u64, Box<dyn Acker>>,
    /// Acks and nacks sent but not yet answered: a drain waits for them, since closing the
    /// channel first would requeue (and so duplicate) messages already handed over.
    acking: usize,
    /// Never reset, so a `Settled` from before a restart cannot settle a newer delivery.
    next_id: u64,
    failures: u32,
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
            in_flight: HashMap::new(),
            acking: 0,
            next_id: 0,
            failures: 0,
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
        if self.draining {
            // Prefetched but not routed: hand it back to the broker untouched.
            let acker = delivery.acker;
            actix::spawn(async move {
                let _ = acker.nack(true).await;
            });
            return;
        }
        bump(&self.stats.consumed);
        self.next_id += 1;
        let id = self.next_id;
        self.in_flight.insert(id, delivery.acker);
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
            if let Some(acker) = self.in_flight.remove(&id) {
                actix::spawn(async move {
                    let _ = acker.nack(true).await;
                });
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
        let Some(acker) = self.in_flight.remove(&settled.id) else {
            debug!(
                id = settled.id,
                "settled after restart; the broker redelivers it"
            );
            return;
        };
        let requeue = settled.result.is_err();
        if let Err(error) = &settled.result {
            bump(&self.stats.publish_errors);
            warn!(id = settled.id, %error, "outcome not confirmed; requeueing the original");
        }
        self.acking += 1;
        let settle = async move {
            if requeue {
                acker.nack(true).await
            } else {
                acker.ack().await
            }
        };
        ctx.spawn(settle.into_actor(self).map(|result, act, ctx| {
            act.acking = act.acking.saturating_sub(1);
            if let Err(error) = result {
                // The channel died; the broker redelivers, and duplicates beat loss.
                debug!(%error, "settling failed");
            }
            act.settle_if_drained(ctx);
        }));
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
