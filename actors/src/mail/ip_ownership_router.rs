//! IpOwnershipRouter: decides, per outbox message, whether it is sent here, handed over or
//! held/failed. It owns the IP → owner table; the decision itself is `routing::route_message`.
//! While the cluster is not heard, mail that no known peer owns waits here (bounded by the
//! consumer's prefetch) and is routed again once it is, or once a peer claims its IP.

use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::broker::BrokerError;
use crate::cluster::wire::now_ms;
use crate::mail::recent_ids::{RecentIds, id_of};
use crate::mail::routing::{Decision, OwnershipTable, RoutePolicy, Unroutable, route_message};
use crate::messages::{
    Dispatch, Hearing, OwnershipChanged, Reconfigure, ReleaseDeferred, Route, Settled, Unconfirmed,
};
use crate::stats::{Stats, bump};

pub struct IpOwnershipRouter {
    local_ips: Vec<IpAddr>,
    policy: RoutePolicy,
    /// `policy` with `Unroutable::Defer`: used while the cluster is not heard.
    waiting: RoutePolicy,
    heard: bool,
    deferred: Vec<Route>,
    /// The peers' claims as last received: local IPs changed by a reload are applied on top.
    claims: Vec<(IpAddr, Arc<crate::mail::routing::PeerRoute>)>,
    /// The instance stops: nothing more is deferred, it goes back to the outbox.
    stopping: bool,
    // Survives restarts: the supervisor reuses this struct, so peers need not re-announce.
    table: Arc<OwnershipTable>,
    publisher: Recipient<Dispatch>,
    stats: Arc<Stats>,
    recent: Arc<RecentIds>,
}

impl IpOwnershipRouter {
    pub fn new(
        local_ips: Vec<IpAddr>,
        policy: RoutePolicy,
        publisher: Recipient<Dispatch>,
        stats: Arc<Stats>,
        recent: Arc<RecentIds>,
    ) -> Self {
        IpOwnershipRouter {
            table: Arc::new(OwnershipTable::new(&local_ips)),
            local_ips,
            waiting: RoutePolicy {
                unroutable: Unroutable::Defer,
                ..policy.clone()
            },
            policy,
            heard: false,
            deferred: Vec::new(),
            claims: Vec::new(),
            stopping: false,
            publisher,
            stats,
            recent,
        }
    }

    /// The live table, for inspection (console, tests).
    pub fn table(&self) -> Arc<OwnershipTable> {
        self.table.clone()
    }

    fn route(&mut self, route: Route) {
        if route.run.is_over() {
            // Its delivery died with the consumer's channel; the redelivery is routed instead.
            bump(&self.stats.stale_dropped);
            debug!(
                id = route.id,
                "the consumer run that took it ended; dropped"
            );
            return;
        }
        if id_of(&route.message).is_some_and(|id| self.recent.contains(id)) {
            // Delivered here already: this copy is a redelivery upstream or an injector's retry.
            bump(&self.stats.duplicates_dropped);
            debug!(
                id = route.id,
                "duplicate of a message delivered here; acked, not routed"
            );
            route.reply.do_send(Settled {
                id: route.id,
                result: Ok(crate::messages::Outcome::Duplicate),
            });
            return;
        }
        let policy = if self.heard {
            &self.policy
        } else {
            &self.waiting
        };
        let decision = route_message(&route.message, policy, &self.table, now_ms());
        debug!(id = route.id, ?decision, "routed");
        if decision == Decision::Defer {
            if self.stopping {
                refuse(route.id, &route.reply, "instance stopping");
                return;
            }
            bump(&self.stats.deferred);
            if self.deferred.first().is_some_and(|r| r.run.is_over()) {
                // The consumer restarted while these waited: what it took is redelivered.
                let before = self.deferred.len();
                self.deferred.retain(|r| !r.run.is_over());
                let dropped = (before - self.deferred.len()) as u64;
                self.stats
                    .stale_dropped
                    .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            }
            self.deferred.push(route);
            return;
        }
        let dispatch = Dispatch {
            id: route.id,
            run: route.run,
            decision,
            message: route.message,
            reply: route.reply,
        };
        // `do_send`, not `try_send`: the mailbox is bounded only by the consumer's prefetch, and
        // a supervised actor keeps its mailbox across restarts.
        if self.publisher.connected() {
            self.publisher.do_send(dispatch);
        } else {
            // Cannot reach the publisher: tell the consumer so the original is requeued.
            warn!(id = dispatch.id, "publisher unreachable; requeueing");
            refuse(dispatch.id, &dispatch.reply, "publisher unreachable");
        }
    }

    fn route_deferred(&mut self) {
        for route in std::mem::take(&mut self.deferred) {
            self.route(route);
        }
    }
}

fn refuse(id: u64, reply: &actix::Recipient<Settled>, why: &str) {
    reply.do_send(Settled {
        id,
        result: Err(Unconfirmed {
            error: BrokerError::ChannelClosed(why.into()),
            destination: "router".into(),
        }),
    });
}

impl Actor for IpOwnershipRouter {
    type Context = Context<Self>;
}

impl Supervised for IpOwnershipRouter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
    }
}

impl Handler<Route> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, route: Route, _: &mut Context<Self>) {
        self.route(route);
    }
}

impl Handler<OwnershipChanged> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, changed: OwnershipChanged, _: &mut Context<Self>) {
        self.claims = changed.claims;
        self.table
            .replace_peers(&self.local_ips, self.claims.iter().cloned());
        info!(owned_ips = self.table.len(), "ownership table updated");
        // A peer that announced may own what was waiting.
        self.route_deferred();
    }
}

impl Handler<Hearing> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, Hearing(heard): Hearing, _: &mut Context<Self>) {
        if heard != self.heard {
            info!(
                heard,
                waiting = self.deferred.len(),
                "cluster hearing changed"
            );
        }
        self.heard = heard;
        if heard {
            self.route_deferred();
        }
    }
}

impl Handler<ReleaseDeferred> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, _: ReleaseDeferred, _: &mut Context<Self>) {
        self.stopping = true;
        for route in std::mem::take(&mut self.deferred) {
            refuse(route.id, &route.reply, "instance stopping");
        }
    }
}

impl Handler<Reconfigure> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, Reconfigure(live): Reconfigure, _: &mut Context<Self>) {
        self.policy = live.policy.clone();
        self.waiting = RoutePolicy {
            unroutable: Unroutable::Defer,
            ..live.policy.clone()
        };
        if self.local_ips != live.local_ips {
            self.local_ips = live.local_ips.clone();
            // The registry re-sends claims once it applied the same change; until then a peer's
            // claim on an IP that is local now is overridden here (local always wins).
            self.table
                .replace_peers(&self.local_ips, self.claims.iter().cloned());
        }
        self.route_deferred();
    }
}
