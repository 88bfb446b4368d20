//! PresenceResponder: holds this instance's presence queue on its local broker and answers
//! the challenges peers put there. A peer that gets the answer knows, rather than guesses
//! from how an address is spelled, that this instance's outbox is on a broker it reaches:
//! two private brokers that are both `localhost` are told apart, and one broker spelled two
//! ways is found equal.
//!
//! A challenge is answered only when it decodes (signed, with `cluster-secret` set), names a
//! listener queue as its reply address, and at most [`ANSWERS_PER_SECOND`] a second: the
//! queue cannot be used to make this instance publish elsewhere or flood the cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::broker::own_queues::presence_queue;
use crate::broker::{BrokerError, Delivery, Destination, SharedBroker};
use crate::cluster::wire::{ClusterMessage, Codec};
use crate::stats::{Stats, bump};

/// Challenges come when a peer joins or restarts; more than this is someone else's doing.
pub const ANSWERS_PER_SECOND: u32 = 200;

/// The prefix of every registry's listener queue on the cluster broker: the only queues an
/// answer is sent to.
pub const LISTENER_PREFIX: &str = "mailroute.cluster.";

pub struct PresenceResponder {
    local: SharedBroker,
    cluster: SharedBroker,
    name: String,
    started_at: u64,
    codec: Codec,
    stats: Arc<Stats>,
    failures: u32,
    window: (Instant, u32),
}

impl PresenceResponder {
    pub fn new(
        local: SharedBroker,
        cluster: SharedBroker,
        name: &str,
        started_at: u64,
        codec: Codec,
        stats: Arc<Stats>,
    ) -> Self {
        PresenceResponder {
            local,
            cluster,
            name: name.to_owned(),
            started_at,
            codec,
            stats,
            failures: 0,
            window: (Instant::now(), 0),
        }
    }

    /// Whether one more answer fits this second's budget.
    fn within_budget(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 <= ANSWERS_PER_SECOND
    }
}

impl Actor for PresenceResponder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = backoff::delay(self.failures);
        ctx.run_later(delay, |act, ctx| {
            let local = act.local.clone();
            let spec = presence_queue(&act.name);
            let hold = async move {
                // Exclusive: it exists exactly while this instance's connection does.
                local.declare_queue(&spec).await?;
                local.consume(&spec.name, 16).await
            };
            ctx.wait(hold.into_actor(act).map(|result, act, ctx| match result {
                Ok(stream) => {
                    debug!(instance = %act.name, "holding the presence queue");
                    ctx.add_stream(stream);
                }
                Err(error) => {
                    act.failures += 1;
                    warn!(%error, "cannot hold the presence queue (is another instance of this name connected?); peers hand over through the handover queue");
                    ctx.stop();
                }
            }));
        });
    }
}

impl Supervised for PresenceResponder {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
    }
}

impl StreamHandler<Result<Delivery, BrokerError>> for PresenceResponder {
    fn handle(&mut self, item: Result<Delivery, BrokerError>, ctx: &mut Context<Self>) {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(error) => {
                self.failures += 1;
                warn!(%error, "presence queue consumer failed; restarting");
                ctx.stop();
                return;
            }
        };
        self.failures = 0;
        let Some(message) = crate::cluster::cluster_frame::take(delivery, &self.codec, &self.stats)
        else {
            return;
        };
        let Some((to, answer)) = answer(message, &self.name, self.started_at) else {
            self.stats.dropped("refused");
            return;
        };
        if !self.within_budget() {
            self.stats.dropped("refused");
            debug!("challenge over the answer budget; not answered");
            return;
        }
        let send = crate::cluster::cluster_frame::publish_to(
            self.cluster.clone(),
            to,
            self.codec.clone(),
            answer,
            Some(Duration::from_secs(30)),
        );
        let stats = self.stats.clone();
        ctx.spawn(send.into_actor(self).map(move |result, _, _| match result {
            Ok(()) => bump(&stats.challenges_answered),
            // The challenger sees no answer and keeps the handover queue: correct, one hop
            // longer; it challenges again when it next sees this instance restart.
            Err(error) => debug!(%error, "challenge answer not sent"),
        }));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.failures += 1;
        info!("presence queue consumer ended; restarting");
        ctx.stop();
    }
}

/// The answer to a frame read from the presence queue of instance `name` (run `started_at`),
/// and where it goes: `None` for anything but a challenge naming a listener queue.
pub fn answer(
    message: ClusterMessage,
    name: &str,
    started_at: u64,
) -> Option<(Destination, ClusterMessage)> {
    let ClusterMessage::Challenge {
        reply_to, nonce, ..
    } = message
    else {
        return None;
    };
    if !reply_to.starts_with(LISTENER_PREFIX) {
        return None;
    }
    let present = ClusterMessage::Present {
        name: name.to_owned(),
        started_at,
        nonce,
    };
    Some((Destination::queue(reply_to), present))
}
