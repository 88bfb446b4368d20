//! What the outbox consumer is told: the cluster heard (the gate opens), an outcome settled,
//! a graceful stop, a new prefetch, a maintenance pause.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::{Intent, Link, OutboxConsumer};
use crate::messages::{ClusterHeard, Pause, Reconfigure, Settled, Stop, Unconfirmed};
use crate::stats::bump;

impl Handler<ClusterHeard> for OutboxConsumer {
    type Result = ();

    fn handle(&mut self, _: ClusterHeard, ctx: &mut Context<Self>) {
        if self.link == Link::Gated {
            self.link = Link::Idle;
            self.consume(ctx, self.warmup);
        }
    }
}

impl Handler<Settled> for OutboxConsumer {
    type Result = ();

    fn handle(&mut self, settled: Settled, ctx: &mut Context<Self>) {
        let Some((acker, redelivered)) = self.frontier.settle(settled.id) else {
            debug!(id = settled.id, "settled twice or after a restart; ignored");
            return;
        };
        match settled.result {
            Ok(_) => {
                self.frontier.confirmed(settled.id, acker);
                self.flush_acks(ctx);
            }
            Err(Unconfirmed { error, destination }) => {
                bump(&self.stats.publish_errors);
                let delay = self
                    .failing
                    .requeue_delay(destination, redelivered, Instant::now());
                warn!(id = settled.id, %error, ?delay, "outcome not confirmed; requeueing the original");
                self.requeue(settled.id, acker, delay, ctx);
            }
        }
    }
}

impl Handler<Stop> for OutboxConsumer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        // A stop wins over a pause or a prefetch change in progress.
        self.intent = Intent::Stop;
        if !matches!(self.link, Link::Draining { .. }) {
            // Cancel first: a consumer that stays subscribed is handed every requeued message
            // straight back, and with a full outbox a drain would spin until its grace ran out.
            self.drain(ctx);
        }
        self.settle_if_drained(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// A new `rabbitmq-qos` takes a new consumer (a prefetch applies from `basic.consume` on): the
/// current one is cancelled and drained like on a stop, nothing routed is requeued, then a new
/// one subscribes. Deliveries the broker sent after the cancel go back untouched.
impl Handler<Reconfigure> for OutboxConsumer {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, ctx: &mut Context<Self>) {
        if live.prefetch == self.prefetch {
            return;
        }
        self.prefetch = live.prefetch;
        // Draining, paused or not consuming yet: the next subscribe uses the new value.
        if self.link == Link::Consuming {
            self.drain(ctx);
        }
    }
}

/// Maintenance: a pause cancels the consumer and settles what it delivered, like a stop,
/// but the instance stays in the cluster and keeps its IPs (mail for them waits in the
/// outbox). A resume subscribes again, at once or once a drain in progress is done.
impl Handler<Pause> for OutboxConsumer {
    type Result = ();

    fn handle(&mut self, Pause(pause): Pause, ctx: &mut Context<Self>) {
        let intent = if pause {
            Intent::Pause
        } else {
            Intent::Consume
        };
        if self.intent == intent || self.intent == Intent::Stop {
            return;
        }
        self.intent = intent;
        self.stats
            .paused
            .store(u64::from(pause), std::sync::atomic::Ordering::Relaxed);
        if pause {
            info!(queue = %self.queue, "pausing: no more outbox mail until resumed");
            if self.link == Link::Consuming {
                self.drain(ctx);
            }
        } else {
            info!(queue = %self.queue, "resuming");
            // While a drain is in progress, `settle_if_drained` subscribes when it is done.
            self.consume(ctx, Duration::ZERO);
        }
    }
}
