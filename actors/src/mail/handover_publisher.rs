//! HandoverPublisher: publishes each decided outcome with publisher confirms and reports back,
//! so the consumer acks the original only after the broker took the copy. Every publish is
//! `mandatory`: a returned message is not a success.
//!
//! A handover takes one of three paths, by the broker the owner announced (host:port/vhost):
//! this instance's own broker or the cluster broker → straight into the owner's outbox there;
//! any other (the owner's private broker) → the owner's handover queue on the cluster broker,
//! which its relay moves into its outbox (see `handover_relay`).

use std::sync::Arc;

use actix::prelude::*;
use tracing::{Instrument, warn};

use crate::broker::own_queues::handover_queue;
use crate::broker::own_queues::own_queues;
use crate::broker::{BrokerError, Destination, HeaderValue, Message, QueueSpec, SharedBroker};
use crate::cluster::wire::now_ms;
use crate::mail::message_id::ensure_id;
use crate::mail::recent_ids::{RecentIds, id_of};
use crate::mail::routing::{
    Decision, FROM_HEADER, HELD_SINCE_HEADER, HOPS_HEADER, PeerRoute, REASON_HEADER, Unroutable,
    Via,
};
use crate::messages::{Dispatch, Outcome, PeersGone, Reconfigure, Run, Settled, Unconfirmed};
use crate::settings::InstanceSettings;
use crate::stats::{Stats, bump};
use crate::summary::Summary;

pub struct HandoverPublisher {
    targets: Arc<Targets>,
}

/// Everything a publish needs, shared with the detached publish tasks.
struct Targets {
    name: String,
    local: SharedBroker,
    cluster: SharedBroker,
    deliver: String,
    failure: String,
    retry: String,
    /// What a reload may change.
    live: std::sync::RwLock<LivePolicy>,
    /// Declared again when a publish to one of them is returned (it was deleted).
    own_queues: Vec<QueueSpec>,
    stats: Arc<Stats>,
    summary: Summary,
    summary_interval: std::time::Duration,
    recent: Arc<RecentIds>,
}

struct LivePolicy {
    /// Held mail's `expiration` (ms, as AMQP wants it): the retry queue dead-letters it back
    /// to the outbox then.
    hold_expiration: String,
    unroutable: Unroutable,
}

impl LivePolicy {
    fn new(hold_time: std::time::Duration, unroutable: Unroutable) -> Self {
        LivePolicy {
            hold_expiration: hold_time.as_millis().max(1).to_string(),
            unroutable,
        }
    }
}

struct Plan {
    broker: SharedBroker,
    to: Destination,
    message: Message,
    outcome: Outcome,
}

impl HandoverPublisher {
    pub fn new(
        settings: &InstanceSettings,
        local: SharedBroker,
        cluster: SharedBroker,
        stats: Arc<Stats>,
        recent: Arc<RecentIds>,
    ) -> Self {
        HandoverPublisher {
            targets: Arc::new(Targets {
                name: settings.name.clone(),
                local,
                cluster,
                deliver: settings.deliver.clone(),
                failure: settings.failure.clone(),
                retry: settings.retry.clone(),
                live: std::sync::RwLock::new(LivePolicy::new(
                    settings.hold_time,
                    settings.policy.unroutable,
                )),
                own_queues: own_queues(settings),
                stats,
                summary: Summary::default(),
                summary_interval: settings.summary_interval,
                recent,
            }),
        }
    }
}

impl Targets {
    fn plan(&self, decision: Decision, mut message: Message) -> Plan {
        // No copy of the message is kept for the case the broker returns a handover: it is
        // rare, and `undo_handover` rebuilds the original. A copy would cost a deep clone of
        // the properties on every message, since changing them below would then share them.
        ensure_id(&mut message);
        let headers = &mut message.properties_mut().headers;
        match decision {
            // The router keeps deferred mail itself; were one to come here, holding it is the
            // choice that loses nothing and sends nothing from the wrong IP.
            Decision::Defer => self.plan(
                Decision::Hold {
                    reason: "unroutable: the cluster had not been heard".into(),
                },
                message,
            ),
            Decision::Deliver => {
                // A reason belongs on held and failed mail only; this one was held before.
                headers.remove(REASON_HEADER);
                Plan {
                    broker: self.local.clone(),
                    to: Destination::queue(&self.deliver),
                    message,
                    outcome: Outcome::Delivered,
                }
            }
            Decision::Handover(peer) => {
                headers.remove(REASON_HEADER);
                let hops = headers
                    .get(HOPS_HEADER)
                    .and_then(HeaderValue::as_i64)
                    .unwrap_or(0);
                headers.insert(HOPS_HEADER.into(), HeaderValue::I64(hops.saturating_add(1)));
                headers.insert(
                    FROM_HEADER.into(),
                    HeaderValue::LongString(self.name.clone().into_bytes()),
                );
                let (broker, to) = self.path(&peer);
                Plan {
                    broker,
                    to,
                    message,
                    outcome: Outcome::HandedOver {
                        peer: peer.name.clone(),
                    },
                }
            }
            Decision::Hold { reason } => {
                // AMQP timestamps are seconds: other clients (pika, say) read them as such.
                let headers = {
                    let properties = message.properties_mut();
                    properties.expiration = Some(self.live().hold_expiration.clone());
                    &mut properties.headers
                };
                headers
                    .entry(HELD_SINCE_HEADER.into())
                    .or_insert(HeaderValue::Timestamp(now_ms() / 1000));
                headers.insert(
                    REASON_HEADER.into(),
                    HeaderValue::LongString(reason.into_bytes()),
                );
                Plan {
                    broker: self.local.clone(),
                    to: Destination::queue(&self.retry),
                    message,
                    outcome: Outcome::Held,
                }
            }
            Decision::Fail { reason } => {
                headers.insert(
                    REASON_HEADER.into(),
                    HeaderValue::LongString(reason.clone().into_bytes()),
                );
                Plan {
                    broker: self.local.clone(),
                    to: Destination::queue(&self.failure),
                    message,
                    outcome: Outcome::Failed { reason },
                }
            }
        }
    }

    /// A poisoned lock only means a panic elsewhere while it was held; the values are whole.
    fn live(&self) -> std::sync::RwLockReadGuard<'_, LivePolicy> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where a handover to `peer` is published: its outbox when it proved to be on a broker
    /// this instance publishes to anyway, else its handover queue on the cluster broker.
    fn path(&self, peer: &PeerRoute) -> (SharedBroker, Destination) {
        match peer.via {
            Via::LocalBroker => (self.local.clone(), Destination::queue(&peer.outbox)),
            Via::ClusterBroker => (self.cluster.clone(), Destination::queue(&peer.outbox)),
            Via::HandoverQueue => (
                self.cluster.clone(),
                Destination::queue(handover_queue(&peer.name)),
            ),
        }
    }

    /// The unroutable policy, for a handover the broker returned (the peer's outbox is gone).
    fn fallback(&self, peer: &str, reply_text: &str) -> Decision {
        let reason = format!("handover to {peer} returned by the broker: {reply_text}");
        match self.live().unroutable {
            Unroutable::Hold | Unroutable::Defer => Decision::Hold { reason },
            Unroutable::Fail => Decision::Fail { reason },
            Unroutable::Local => Decision::Deliver,
        }
    }

    fn own_queue(&self, to: &Destination) -> Option<&QueueSpec> {
        self.own_queues
            .iter()
            .find(|q| to.exchange.is_empty() && q.name == to.routing_key)
    }

    /// `run`: the consumer run the original came with. Once it is over, the original is the
    /// broker's again, so a returned handover is not held or failed here as well.
    async fn execute(self: &Arc<Self>, plan: Plan, run: &Run) -> Result<Outcome, Unconfirmed> {
        let Outcome::HandedOver { peer } = &plan.outcome else {
            return self.publish(plan).await;
        };
        let started = std::time::Instant::now();
        match self.attempt(&plan).await {
            Ok(()) => {
                self.stats.handover_seconds.observe(started.elapsed());
                Ok(plan.outcome)
            }
            Err(BrokerError::Returned { reply_text, .. }) => {
                bump(&self.stats.handover_returned);
                if run.is_over() {
                    bump(&self.stats.stale_dropped);
                    let error = BrokerError::ChannelClosed("the consumer run ended".into());
                    return Err(unconfirmed(error, &plan.to));
                }
                warn!(%peer, to = %plan.to, "handover returned; applying the unroutable policy");
                let fallback = self.fallback(peer, &reply_text);
                self.publish(self.plan(fallback, undo_handover(plan.message)))
                    .await
            }
            Err(error) => Err(unconfirmed(error, &plan.to)),
        }
    }

    /// Publishes to one of this instance's own queues (or delivers by `unroutable: local`).
    /// A queue that is gone (an operator deleted it, or the broker lost it) is declared again
    /// and the publish made once more, rather than the original requeued until someone notices.
    async fn publish(self: &Arc<Self>, plan: Plan) -> Result<Outcome, Unconfirmed> {
        let reply_text = match self.attempt(&plan).await {
            Ok(()) => return Ok(plan.outcome),
            Err(BrokerError::Returned { reply_text, .. }) => reply_text,
            Err(error) => return Err(unconfirmed(error, &plan.to)),
        };
        let missing = || BrokerError::Returned {
            reply_code: 312,
            reply_text: format!("{} is missing: {reply_text}", plan.to),
        };
        let Some(spec) = self.own_queue(&plan.to) else {
            return Err(unconfirmed(missing(), &plan.to));
        };
        warn!(queue = %spec.name, "own queue missing; declaring it again");
        bump(&self.stats.queues_redeclared);
        if let Err(error) = plan.broker.declare_queue(spec).await {
            return Err(unconfirmed(error, &plan.to));
        }
        match self.attempt(&plan).await {
            Ok(()) => Ok(plan.outcome),
            Err(BrokerError::Returned { .. }) => Err(unconfirmed(missing(), &plan.to)),
            Err(error) => Err(unconfirmed(error, &plan.to)),
        }
    }

    /// One mandatory publish of the plan; a confirmed outcome is counted (and remembered).
    async fn attempt(&self, plan: &Plan) -> Result<(), BrokerError> {
        plan.broker.publish(&plan.to, &plan.message, true).await?;
        self.confirmed(plan);
        Ok(())
    }

    /// Counts a confirmed outcome, and remembers the id of mail delivered here so that a
    /// second copy is dropped (see `recent_ids`).
    fn confirmed(&self, plan: &Plan) {
        self.count(&plan.outcome);
        if plan.outcome == Outcome::Delivered {
            if let Some(id) = id_of(&plan.message) {
                self.recent.remember(id);
            }
        }
    }

    fn count(&self, outcome: &Outcome) {
        self.summary.record(outcome);
        bump(match outcome {
            Outcome::Delivered => &self.stats.delivered,
            Outcome::HandedOver { .. } => &self.stats.handed_over,
            Outcome::Held => &self.stats.held,
            Outcome::Failed { .. } => &self.stats.failed,
            Outcome::Duplicate => &self.stats.duplicates_dropped,
        });
    }
}

fn unconfirmed(error: BrokerError, to: &Destination) -> Unconfirmed {
    Unconfirmed {
        error,
        destination: to.to_string(),
    }
}

/// The message as it was before this instance's handover added to it, except that a previous
/// hop's `x-mailroute-from` is not restored (the message is held here now) and
/// `x-mailroute-id` stays.
fn undo_handover(mut message: Message) -> Message {
    let headers = &mut message.properties_mut().headers;
    headers.remove(FROM_HEADER);
    match headers.get(HOPS_HEADER).and_then(HeaderValue::as_i64) {
        Some(hops) if hops > 1 => {
            headers.insert(HOPS_HEADER.into(), HeaderValue::I64(hops - 1));
        }
        _ => {
            headers.remove(HOPS_HEADER);
        }
    }
    message
}

impl Actor for HandoverPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.targets.summary_interval;
        ctx.run_interval(every, move |act, _| act.targets.summary.flush(every));
    }
}

impl Supervised for HandoverPublisher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.targets.stats.restarts);
    }
}

impl Handler<Dispatch> for HandoverPublisher {
    type Result = ();

    fn handle(&mut self, dispatch: Dispatch, _: &mut Context<Self>) {
        if dispatch.run.is_over() {
            // Waited in this mailbox while its consumer restarted: redelivered, routed anew.
            bump(&self.targets.stats.stale_dropped);
            return;
        }
        let targets = self.targets.clone();
        // Plain strings, not the Debug of the decision: a span is built for every message, and
        // a log subscriber formats its fields whenever the span is enabled.
        let (outcome, peer) = match &dispatch.decision {
            Decision::Deliver => ("deliver", ""),
            Decision::Handover(peer) => ("handover", peer.name.as_str()),
            Decision::Hold { .. } => ("hold", ""),
            Decision::Fail { .. } => ("fail", ""),
            Decision::Defer => ("defer", ""),
        };
        let message_id = dispatch
            .message
            .properties
            .message_id
            .as_deref()
            .unwrap_or("-");
        let span = tracing::info_span!("publish", id = dispatch.id, message_id, outcome, peer);
        let plan = targets.plan(dispatch.decision, dispatch.message);
        let (id, reply, run) = (dispatch.id, dispatch.reply, dispatch.run);
        // Detached from the actor on purpose: a restart here must not drop a publish whose
        // confirm is on its way, or the consumer would wait for it forever.
        // The publish state machine is boxed: tokio moves a task's future several times while
        // spawning it, and this one is large (it copied ~1.5 KB per message).
        let publish = Box::pin(async move { targets.execute(plan, &run).await });
        actix::spawn(
            async move {
                let result = publish.await;
                reply.do_send(Settled { id, result });
            }
            .instrument(span),
        );
    }
}

impl Handler<PeersGone> for HandoverPublisher {
    type Result = ();

    fn handle(&mut self, PeersGone(routes): PeersGone, _: &mut Context<Self>) {
        for route in routes {
            let (broker, to) = self.targets.path(&route);
            broker.release(&to);
        }
    }
}

impl Handler<Reconfigure> for HandoverPublisher {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, _: &mut Context<Self>) {
        let policy = LivePolicy::new(live.hold_time, live.policy.unroutable);
        *self
            .targets
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }
}
