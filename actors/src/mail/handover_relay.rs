//! HandoverRelay: moves mail that peers handed over through the cluster broker (because this
//! instance's outbox is on a broker they cannot reach) from this instance's handover queue
//! there into its own outbox. Each message is published to the outbox with confirms, body,
//! properties and headers untouched, and only then acked on the cluster broker: at least once
//! across the two brokers. A second copy (the ack lost with a connection) is dropped by the
//! router's duplicate memory once the first was delivered.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{Instrument, info, warn};

use crate::backoff;
use crate::broker::own_queues::handover_queue;
use crate::broker::{BrokerError, ConsumerControl, Delivery, Destination, QueueSpec, SharedBroker};
use crate::messages::{Reconfigure, Run, Stop};
use crate::stats::{Stats, bump};

pub struct HandoverRelay {
    cluster: SharedBroker,
    links: Arc<Links>,
    queue: String,
    quorum: bool,
    prefetch: u16,
    failures: u32,
    control: Option<Arc<dyn ConsumerControl>>,
    /// The local broker's publishing state, when it is another broker than the cluster's.
    also_blocked: Option<tokio::sync::watch::Receiver<bool>>,
    /// Deliveries taken and not yet acked (their publish may still be retrying).
    in_flight: usize,
    /// Ended on a restart: a task still retrying a delivery of the old consumer gives up,
    /// since the broker has requeued that delivery for the new one.
    run: Run,
    draining: bool,
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// What a relay task needs, shared with the detached tasks.
struct Links {
    local: SharedBroker,
    outbox: Destination,
    outbox_spec: QueueSpec,
    stats: Arc<Stats>,
}

/// A relay task is done with one delivery (acked, or given back with its channel).
#[derive(Message)]
#[rtype(result = "()")]
struct Relayed;

impl HandoverRelay {
    pub fn new(
        cluster: SharedBroker,
        local: SharedBroker,
        instance: &str,
        outbox: &str,
        prefetch: u16,
        quorum: bool,
        stats: Arc<Stats>,
    ) -> Self {
        HandoverRelay {
            cluster,
            links: Arc::new(Links {
                local,
                outbox: Destination::queue(outbox),
                outbox_spec: QueueSpec::durable_typed(outbox, quorum),
                stats,
            }),
            queue: handover_queue(instance),
            quorum,
            prefetch,
            failures: 0,
            control: None,
            also_blocked: None,
            in_flight: 0,
            run: Run::default(),
            draining: false,
            drained: Vec::new(),
        }
    }

    /// Takes no handovers while `blocked` (the local broker's publishing, where they go) says
    /// so: each would wait, unacked, for the alarm to clear.
    pub fn pause_while(mut self, blocked: Option<tokio::sync::watch::Receiver<bool>>) -> Self {
        self.also_blocked = blocked;
        self
    }

    fn settle_if_drained(&mut self) {
        if self.draining && self.in_flight == 0 {
            for tx in self.drained.drain(..) {
                let _ = tx.send(());
            }
        }
    }
}

impl Links {
    /// Publishes one message into the outbox until the local broker confirms it, and says
    /// whether it did. A missing outbox is declared again; anything else is retried with
    /// backoff, the delivery kept unacked meanwhile (the prefetch bounds how many wait), for
    /// as long as the consumer `run` that took it lasts.
    async fn relay(self: &Arc<Self>, message: &crate::broker::Message, run: &Run) -> bool {
        let mut attempt = 0;
        loop {
            if run.is_over() {
                bump(&self.stats.stale_dropped);
                return false;
            }
            let error = match self.local.publish(&self.outbox, message, true).await {
                Ok(()) => return true,
                Err(error) => error,
            };
            attempt += 1;
            bump(&self.stats.publish_errors);
            if matches!(error, BrokerError::Returned { .. }) {
                warn!(outbox = %self.outbox, "outbox missing; declaring it again");
                bump(&self.stats.queues_redeclared);
                let _ = self.local.declare_queue(&self.outbox_spec).await;
            } else {
                warn!(%error, attempt, "cannot relay into the outbox yet; retrying");
            }
            tokio::time::sleep(backoff::delay(attempt)).await;
        }
    }
}

impl Actor for HandoverRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            self.settle_if_drained();
            return;
        }
        let delay = backoff::delay(self.failures);
        ctx.run_later(delay, |act, ctx| {
            let (cluster, queue, prefetch) = (act.cluster.clone(), act.queue.clone(), act.prefetch);
            let spec = QueueSpec::durable_typed(&queue, act.quorum);
            let subscribe = async move {
                cluster.declare_queue(&spec).await?;
                cluster.subscribe(&queue, prefetch).await
            };
            ctx.wait(subscribe.into_actor(act).map(|result, act, ctx| match result {
                Ok(subscription) => {
                    info!(queue = %act.queue, "relaying handovers from the cluster broker");
                    act.control = Some(Arc::from(subscription.control));
                    let deliveries = crate::broker::paused_while(
                        subscription.deliveries,
                        act.also_blocked.clone(),
                    );
                    ctx.add_stream(deliveries);
                }
                Err(error) => {
                    act.failures += 1;
                    warn!(%error, queue = %act.queue, "cannot consume the handover queue; restarting");
                    ctx.stop();
                }
            }));
        });
    }
}

impl Supervised for HandoverRelay {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.links.stats.restarts);
        self.control = None;
        self.run.end();
        self.run = Run::default();
    }
}

impl StreamHandler<Result<Delivery, BrokerError>> for HandoverRelay {
    fn handle(&mut self, item: Result<Delivery, BrokerError>, ctx: &mut Context<Self>) {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => {
                self.failures += 1;
                warn!(%error, "handover relay's consumer failed; restarting");
                ctx.stop();
                return;
            }
        };
        self.failures = 0;
        self.in_flight += 1;
        let links = self.links.clone();
        let me = ctx.address();
        let id = crate::mail::recent_ids::id_of(&delivery.message)
            .unwrap_or("-")
            .to_owned();
        let from = delivery
            .message
            .header(crate::mail::routing::FROM_HEADER)
            .and_then(crate::broker::HeaderValue::as_str)
            .unwrap_or("-")
            .to_owned();
        let span = tracing::info_span!("relay", id, peer = from);
        let run = self.run.clone();
        actix::spawn(
            async move {
                if !links.relay(&delivery.message, &run).await {
                    me.do_send(Relayed);
                    return;
                }
                bump(&links.stats.relayed);
                // A failed ack (the cluster connection dropped) makes the broker redeliver:
                // a second copy in the outbox, dropped by the router once the first went out.
                if let Err(error) = delivery.acker.ack().await {
                    warn!(%error, "relayed, but the ack on the cluster broker failed");
                }
                me.do_send(Relayed);
            }
            .instrument(span),
        );
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        self.failures += 1;
        warn!("handover relay's consumer ended; restarting");
        ctx.stop();
    }
}

impl Handler<Relayed> for HandoverRelay {
    type Result = ();

    fn handle(&mut self, _: Relayed, _: &mut Context<Self>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.settle_if_drained();
    }
}

/// Stops taking handovers and resolves once those taken are in the outbox and acked, so a
/// graceful stop leaves no copy in both places.
/// A new `rabbitmq-qos` applies from the relay's next subscription (after a reconnect): the
/// relay moves what peers could not hand over directly, rarely enough that replacing its
/// consumer at once, as the outbox consumer does, is not worth a drain.
impl Handler<Reconfigure> for HandoverRelay {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, _: &mut Context<Self>) {
        self.prefetch = live.prefetch;
    }
}

impl Handler<Stop> for HandoverRelay {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        self.draining = true;
        let control = self.control.clone();
        self.settle_if_drained();
        Box::pin(async move {
            if let Some(control) = control {
                let _ = control.cancel().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(60), rx).await;
        })
    }
}
