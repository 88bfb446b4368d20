//! HandoverPublisher: publishes each decided outcome with publisher confirms and reports back,
//! so the consumer acks the original only after the broker took the copy. A handover goes
//! straight into the owner's outbox queue, `mandatory`: a returned message is not a success.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use tracing::{Instrument, error, warn};

use crate::broker::{
    BrokerError, Confirmed, Destination, HeaderValue, Message, QueueSpec, SharedBroker,
};
use crate::instance::own_queues;
use crate::messages::{Dispatch, Outcome, Settled};
use crate::routing::{
    Decision, FROM_HEADER, HELD_SINCE_HEADER, HOPS_HEADER, ID_HEADER, REASON_HEADER, Unroutable,
};
use crate::settings::InstanceSettings;
use crate::stats::{Stats, bump};
use crate::wire::now_ms;

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
    /// Declared again when a publish to one of them is returned (it was deleted).
    own_queues: Vec<QueueSpec>,
    unroutable: Unroutable,
    stats: Arc<Stats>,
    id_prefix: String,
    next_id: AtomicU64,
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
    ) -> Self {
        HandoverPublisher {
            targets: Arc::new(Targets {
                name: settings.name.clone(),
                local,
                cluster,
                deliver: settings.deliver.clone(),
                failure: settings.failure.clone(),
                retry: settings.retry.clone(),
                own_queues: own_queues(settings),
                unroutable: settings.policy.unroutable,
                stats,
                id_prefix: format!("{}-{:x}", settings.name, now_ms()),
                next_id: AtomicU64::new(0),
            }),
        }
    }
}

impl Targets {
    fn plan(&self, decision: Decision, mut message: Message) -> Plan {
        // No copy of the message is kept for the case the broker returns a handover: it is
        // rare, and `undo_handover` rebuilds the original. A copy would cost a deep clone of
        // the properties on every message, since changing them below would then share them.
        let headers = &mut message.properties_mut().headers;
        match decision {
            Decision::Deliver => Plan {
                broker: self.local.clone(),
                to: Destination::queue(&self.deliver),
                message,
                outcome: Outcome::Delivered,
            },
            Decision::Handover(peer) => {
                let hops = headers
                    .get(HOPS_HEADER)
                    .and_then(HeaderValue::as_i64)
                    .unwrap_or(0);
                headers.insert(HOPS_HEADER.into(), HeaderValue::I64(hops.saturating_add(1)));
                headers.insert(
                    FROM_HEADER.into(),
                    HeaderValue::LongString(self.name.clone().into_bytes()),
                );
                if !headers.contains_key(ID_HEADER) {
                    let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let id = format!("{}-{n}", self.id_prefix);
                    headers.insert(ID_HEADER.into(), HeaderValue::LongString(id.into_bytes()));
                }
                Plan {
                    broker: self.cluster.clone(),
                    to: Destination::queue(&peer.outbox),
                    message,
                    outcome: Outcome::HandedOver {
                        peer: peer.name.clone(),
                    },
                }
            }
            Decision::Hold { reason } => {
                headers
                    .entry(HELD_SINCE_HEADER.into())
                    .or_insert(HeaderValue::Timestamp(now_ms()));
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

    /// The unroutable policy, for a handover the broker returned (the peer's outbox is gone).
    fn fallback(&self, peer: &str, reply_text: &str) -> Decision {
        let reason = format!("handover to {peer} returned by the broker: {reply_text}");
        match self.unroutable {
            Unroutable::Hold => Decision::Hold { reason },
            Unroutable::Fail => Decision::Fail { reason },
            Unroutable::Local => Decision::Deliver,
        }
    }

    async fn execute(&self, plan: Plan) -> Result<Outcome, BrokerError> {
        match plan.broker.publish_mandatory(&plan.to, &plan.message).await {
            Ok(confirmed) => Ok(self.confirmed(plan, confirmed).await),
            Err(BrokerError::Returned { reply_text, .. }) => {
                let Outcome::HandedOver { peer } = &plan.outcome else {
                    return self.redeclare_and_retry(plan, &reply_text).await;
                };
                bump(&self.stats.handover_returned);
                warn!(%peer, to = %plan.to, "handover returned; applying the unroutable policy");
                let second = self.plan(
                    self.fallback(peer, &reply_text),
                    undo_handover(plan.message),
                );
                let confirmed = second
                    .broker
                    .publish_mandatory(&second.to, &second.message)
                    .await?;
                Ok(self.confirmed(second, confirmed).await)
            }
            Err(error) => Err(error),
        }
    }

    /// One of this instance's own queues is gone (an operator deleted it, or the broker lost
    /// it): declare it again and publish once more, rather than requeue the original until
    /// someone notices.
    async fn redeclare_and_retry(
        &self,
        plan: Plan,
        reply_text: &str,
    ) -> Result<Outcome, BrokerError> {
        let missing = || BrokerError::Returned {
            reply_code: 312,
            reply_text: format!("{} is missing: {reply_text}", plan.to),
        };
        let Some(spec) = self
            .own_queues
            .iter()
            .find(|q| plan.to.exchange.is_empty() && q.name == plan.to.routing_key)
        else {
            return Err(missing());
        };
        warn!(queue = %spec.name, "own queue missing; declaring it again");
        bump(&self.stats.queues_redeclared);
        plan.broker.declare_queue(spec).await?;
        let confirmed = match plan.broker.publish_mandatory(&plan.to, &plan.message).await {
            Err(BrokerError::Returned { .. }) => return Err(missing()),
            other => other?,
        };
        Ok(self.confirmed(plan, confirmed).await)
    }

    /// Counts a confirmed outcome and keeps whatever the broker returned along with its confirm.
    async fn confirmed(&self, plan: Plan, confirmed: Confirmed) -> Outcome {
        self.count(&plan.outcome);
        self.keep_returned(&plan.broker, confirmed).await;
        plan.outcome
    }

    /// A message the broker returned with the confirm of another publish was not routed, and
    /// its own publisher was told it was: it is ours to keep now, by the unroutable policy.
    async fn keep_returned(&self, broker: &SharedBroker, mut confirmed: Confirmed) {
        // Bounded: each round is a publish that itself came back with yet another return.
        for _ in 0..16 {
            let Confirmed::AlsoReturned {
                message,
                reply_text,
            } = confirmed
            else {
                return;
            };
            bump(&self.stats.handover_returned);
            let plan = self.plan(
                self.fallback("a peer", &reply_text),
                undo_handover(*message),
            );
            confirmed = match broker.publish_mandatory(&plan.to, &plan.message).await {
                Ok(next) => {
                    self.count(&plan.outcome);
                    next
                }
                Err(error) => {
                    error!(%error, to = %plan.to, "cannot keep a message the broker returned");
                    return;
                }
            };
        }
    }

    fn count(&self, outcome: &Outcome) {
        bump(match outcome {
            Outcome::Delivered => &self.stats.delivered,
            Outcome::HandedOver { .. } => &self.stats.handed_over,
            Outcome::Held => &self.stats.held,
            Outcome::Failed { .. } => &self.stats.failed,
        });
    }
}

/// The message as it was before a handover added to it, except that a previous hop's
/// `x-mailroute-from` is not restored (the message is held here now) and `x-mailroute-id` stays.
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
}

impl Supervised for HandoverPublisher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.targets.stats.restarts);
    }
}

impl Handler<Dispatch> for HandoverPublisher {
    type Result = ();

    fn handle(&mut self, dispatch: Dispatch, _: &mut Context<Self>) {
        let targets = self.targets.clone();
        // Plain strings, not the Debug of the decision: a span is built for every message, and
        // a log subscriber formats its fields whenever the span is enabled.
        let (outcome, peer) = match &dispatch.decision {
            Decision::Deliver => ("deliver", ""),
            Decision::Handover(peer) => ("handover", peer.name.as_str()),
            Decision::Hold { .. } => ("hold", ""),
            Decision::Fail { .. } => ("fail", ""),
        };
        let message_id = dispatch
            .message
            .properties
            .message_id
            .as_deref()
            .unwrap_or("-");
        let span = tracing::info_span!("publish", id = dispatch.id, message_id, outcome, peer);
        let plan = targets.plan(dispatch.decision, dispatch.message);
        let (id, reply) = (dispatch.id, dispatch.reply);
        // Detached from the actor on purpose: a restart here must not drop a publish whose
        // confirm is on its way, or the consumer would wait for it forever.
        // The publish state machine is boxed: tokio moves a task's future several times while
        // spawning it, and this one is large (it copied ~1.5 KB per message).
        let publish = Box::pin(async move { targets.execute(plan).await });
        actix::spawn(
            async move {
                let result = publish.await;
                reply.do_send(Settled { id, result });
            }
            .instrument(span),
        );
    }
}
