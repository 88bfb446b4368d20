//! IpOwnershipRouter: decides, per outbox message, whether it is sent here, handed over or
//! held/failed. It owns the IP → owner table; the decision itself is `routing::route_message`.

use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::messages::{Dispatch, OwnershipChanged, Route, Settled};
use crate::routing::{OwnershipTable, RoutePolicy, route_message};
use crate::stats::{Stats, bump};
use crate::wire::now_ms;

pub struct IpOwnershipRouter {
    local_ips: Vec<IpAddr>,
    policy: RoutePolicy,
    // Survives restarts: the supervisor reuses this struct, so peers need not re-announce.
    table: Arc<OwnershipTable>,
    publisher: Recipient<Dispatch>,
    stats: Arc<Stats>,
}

impl IpOwnershipRouter {
    pub fn new(
        local_ips: Vec<IpAddr>,
        policy: RoutePolicy,
        publisher: Recipient<Dispatch>,
        stats: Arc<Stats>,
    ) -> Self {
        IpOwnershipRouter {
            table: Arc::new(OwnershipTable::new(&local_ips)),
            local_ips,
            policy,
            publisher,
            stats,
        }
    }

    /// The live table, for inspection (console, tests).
    pub fn table(&self) -> Arc<OwnershipTable> {
        self.table.clone()
    }
}

impl Actor for IpOwnershipRouter {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {}
}

impl Supervised for IpOwnershipRouter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        bump(&self.stats.restarts);
    }
}

impl Handler<Route> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, route: Route, _: &mut Context<Self>) {
        let decision = route_message(&route.message, &self.policy, &self.table, now_ms());
        debug!(id = route.id, ?decision, "routed");
        let dispatch = Dispatch {
            id: route.id,
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
            dispatch.reply.do_send(Settled {
                id: dispatch.id,
                result: Err(crate::broker::BrokerError::ChannelClosed(
                    "publisher unreachable".into(),
                )),
            });
        }
    }
}

impl Handler<OwnershipChanged> for IpOwnershipRouter {
    type Result = ();

    fn handle(&mut self, changed: OwnershipChanged, _: &mut Context<Self>) {
        self.table.replace_peers(&self.local_ips, changed.claims);
        info!(owned_ips = self.table.len(), "ownership table updated");
    }
}
