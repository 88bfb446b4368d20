//! One mailroute instance: the supervised actors (seven, eight with the digest leader) wired together, and its orderly stop.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::broker::own_queues::declare_queues;
use crate::broker::{BrokerError, SharedBroker};
use crate::cluster::announcer::Announcer;
use crate::cluster::digest_leader::DigestLeader;
use crate::cluster::peer_registry::{PeerRegistry, RegistryConfig, RegistryLinks};
use crate::cluster::presence_responder::PresenceResponder;
use crate::cluster::wire::now_ms;
use crate::cluster::wire::{Announcement, ClusterMessage};
use crate::mail::handover_publisher::HandoverPublisher;
use crate::mail::handover_relay::HandoverRelay;
use crate::mail::ip_ownership_router::IpOwnershipRouter;
use crate::mail::outbox_consumer::OutboxConsumer;
use crate::mail::recent_ids::RecentIds;
use crate::mail::routing::OwnershipTable;
use crate::messages::{
    Broadcast, Departing, Leave, ListMembers, ListPeers, Pause, PeerInfo, Reconfigure,
    ReleaseDeferred, Stop,
};
use crate::settings::{ClusterProtocol, InstanceSettings, LiveSettings};
use crate::stats::Stats;

/// Operator actions on one instance, cheap to clone.
#[derive(Clone)]
pub struct Controls {
    pause: Vec<Recipient<Pause>>,
    broadcast: Recipient<Broadcast>,
}

impl Controls {
    /// Maintenance on this instance alone: `true` stops taking outbox mail (what was taken is
    /// settled first) while staying in the cluster; `false` takes it again. Peers are told.
    pub fn pause(&self, pause: bool) {
        for to in &self.pause {
            to.do_send(Pause(pause));
        }
    }

    /// Publishes an operator command (drain, resume, reload) to every instance, this one too.
    pub async fn broadcast(&self, message: ClusterMessage) -> Result<(), BrokerError> {
        self.broadcast
            .send(Broadcast(message))
            .await
            .map_err(|e| BrokerError::Other(format!("announcer gone: {e}")))?
    }
}

pub struct Instance {
    pub settings: InstanceSettings,
    /// Unix ms, as announced.
    pub started_at: u64,
    pub stats: Arc<Stats>,
    pub table: Arc<OwnershipTable>,
    pub consumer: Addr<OutboxConsumer>,
    pub router: Addr<IpOwnershipRouter>,
    pub publisher: Addr<HandoverPublisher>,
    pub announcer: Addr<Announcer>,
    pub registry: Addr<PeerRegistry>,
    pub relay: Addr<HandoverRelay>,
    pub presence: Addr<PresenceResponder>,
    /// Only with `cluster-protocol: digest`.
    pub leader: Option<Addr<DigestLeader>>,
    /// Bumped each time the cluster asks this instance to reload (see [`Instance::reconfigure`]).
    pub reload_requests: tokio::sync::watch::Receiver<u64>,
}

/// `publishing`'s blocked state for a consumer of `consuming`, when they are two brokers (a
/// broker's own consumers already pause while it blocks).
fn blocked_elsewhere(
    publishing: &SharedBroker,
    consuming: &SharedBroker,
) -> Option<tokio::sync::watch::Receiver<bool>> {
    if Arc::ptr_eq(publishing, consuming) {
        return None;
    }
    publishing.publishing_blocked()
}

impl Instance {
    /// Declares the queues, then starts the actors on the current arbiter. `local` holds the
    /// outbox and the deliver/failure/retry queues, `cluster` the cluster exchange and the
    /// peers' outboxes (the same broker unless `cluster-address` says otherwise).
    pub async fn start(
        settings: InstanceSettings,
        local: SharedBroker,
        cluster: SharedBroker,
    ) -> Result<Instance, BrokerError> {
        declare_queues(&settings, &local).await?;
        // Before the first announcement, so a peer's challenge finds it (and waits there for
        // the responder). Not fatal: held by another connection (this name running twice on
        // the broker, or an earlier run in this process), peers hand over through the
        // handover queue instead.
        let presence = crate::broker::own_queues::presence_queue(&settings.name);
        if let Err(error) = local.declare_queue(&presence).await {
            warn!(queue = %presence.name, %error, "cannot hold this instance's presence queue; is another instance of this name connected?");
        }
        let stats = Arc::new(Stats::default());
        let started_at = now_ms();

        // Each actor is built here and handed to its supervisor, which keeps the same value
        // across restarts (calling `restarting`), so state such as the ownership table survives.
        let recent = Arc::new(RecentIds::new(
            settings.duplicate_memory,
            settings.duplicate_window,
        ));
        let publisher = HandoverPublisher::new(
            &settings,
            local.clone(),
            cluster.clone(),
            stats.clone(),
            recent.clone(),
        );
        let publisher = Supervisor::start(move |_| publisher);
        let router_actor = IpOwnershipRouter::new(
            settings.local_ips.clone(),
            settings.policy.clone(),
            publisher.clone().recipient(),
            stats.clone(),
            recent,
        );
        let table = router_actor.table();
        let router = Supervisor::start(move |_| router_actor);

        let announcement = Announcement {
            name: settings.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            sequence: 0,
            local_ips: settings.local_ips.clone(),
            outbox: settings.outbox.clone(),
            broker: local.identity(),
            console_url: settings.console_url.clone(),
            config_hash: settings.config_hash.clone(),
            ..Default::default()
        };
        let announcer = Announcer::new(
            cluster.clone(),
            settings.cluster_exchange.clone(),
            announcement,
            settings.announce_interval,
            stats.clone(),
            settings.codec.clone(),
            settings.protocol,
        )
        .with_peer_timeout(settings.peer_timeout);
        let announcer = Supervisor::start(move |_| announcer);
        let consumer = OutboxConsumer::new(
            local.clone(),
            crate::broker::QueueSpec::durable_typed(&settings.outbox, settings.quorum_queues),
            settings.prefetch,
            router.clone().recipient(),
            stats.clone(),
            settings.warmup,
        )
        .pause_while(blocked_elsewhere(&cluster, &local));
        let consumer = Supervisor::start(move |_| consumer);
        let config = RegistryConfig {
            local: local.clone(),
            exchange: settings.cluster_exchange.clone(),
            me: settings.name.clone(),
            my_started_at: started_at,
            local_ips: settings.local_ips.clone(),
            peer_timeout: settings.peer_timeout,
            announce_interval: settings.announce_interval,
            codec: settings.codec.clone(),
            config_hash: settings.config_hash.clone(),
            protocol: settings.protocol,
        };
        let (reload_tx, reload_requests) = tokio::sync::watch::channel(0);
        let links = RegistryLinks {
            router: router.clone().recipient(),
            hearing: router.clone().recipient(),
            released: publisher.clone().recipient(),
            announcer: announcer.clone().recipient(),
            answer: announcer.clone().recipient(),
            listening: consumer.clone().recipient(),
            pause: vec![consumer.clone().recipient(), announcer.clone().recipient()],
            reload_requests: reload_tx,
        };
        let registry = PeerRegistry::new(cluster.clone(), config, links, stats.clone());
        let registry = Supervisor::start(move |_| registry);
        // Always running, even when this instance's outbox is on the cluster broker: a peer
        // that spells that broker's address differently hands over through the queue.
        let relay = HandoverRelay::new(
            cluster.clone(),
            local.clone(),
            &settings.name,
            &settings.outbox,
            settings.prefetch,
            settings.quorum_queues,
            stats.clone(),
        )
        .pause_while(blocked_elsewhere(&local, &cluster));
        let relay = Supervisor::start(move |_| relay);
        let presence = PresenceResponder::new(
            local.clone(),
            cluster.clone(),
            &settings.name,
            started_at,
            settings.codec.clone(),
            stats.clone(),
        );
        let presence = Supervisor::start(move |_| presence);
        let leader = (settings.protocol == ClusterProtocol::Digest).then(|| {
            let leader = DigestLeader::new(
                &settings,
                cluster.clone(),
                started_at,
                stats.clone(),
                registry.clone().recipient(),
            );
            Supervisor::start(move |_| leader)
        });
        info!(instance = %settings.name, outbox = %settings.outbox, ips = settings.local_ips.len(), "instance started");
        Ok(Instance {
            settings,
            started_at,
            stats,
            table,
            consumer,
            router,
            publisher,
            announcer,
            registry,
            relay,
            presence,
            leader,
            reload_requests,
        })
    }

    /// Applies what a reload may change at run time, and announces it at once. Nothing in
    /// flight is dropped: each actor takes the new values for what it does next.
    pub fn reconfigure(&mut self, live: LiveSettings) {
        self.settings.apply(&live);
        let message = Reconfigure(Arc::new(live));
        self.registry.do_send(message.clone());
        self.router.do_send(message.clone());
        self.publisher.do_send(message.clone());
        self.consumer.do_send(message.clone());
        self.relay.do_send(message.clone());
        if let Some(leader) = &self.leader {
            leader.do_send(message.clone());
        }
        self.announcer.do_send(message);
    }

    /// What an operator may do to a running instance (a console holds a copy).
    pub fn controls(&self) -> Controls {
        Controls {
            pause: vec![
                self.consumer.clone().recipient(),
                self.announcer.clone().recipient(),
            ],
            broadcast: self.announcer.clone().recipient(),
        }
    }

    /// See [`Controls::pause`].
    pub fn pause(&self, pause: bool) {
        self.controls().pause(pause);
    }

    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.registry.send(ListPeers).await.unwrap_or_default()
    }

    /// The live peers and those that left or expired lately.
    pub async fn members(&self) -> Vec<PeerInfo> {
        self.registry.send(ListMembers).await.unwrap_or_default()
    }

    /// See [`Controls::broadcast`].
    pub async fn broadcast(&self, message: ClusterMessage) -> Result<(), BrokerError> {
        self.controls().broadcast(message).await
    }

    /// Graceful stop: no new messages, every routed one settled (bounded by `grace`), then
    /// `Leaving` so peers stop handing over at once instead of after `peer-timeout`.
    pub async fn shutdown(&self, grace: Duration) {
        info!(instance = %self.settings.name, "draining");
        self.announcer.do_send(Departing);
        if let Some(leader) = &self.leader {
            leader.do_send(Stop);
        }
        let drain = futures::future::join(self.consumer.send(Stop), self.relay.send(Stop));
        // Mail waiting for the cluster to be heard goes back to the outbox now.
        self.router.do_send(ReleaseDeferred);
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                ?grace,
                "drain timed out; unsettled messages are redelivered by the broker"
            );
        }
        match self.announcer.send(Leave).await {
            Ok(Ok(())) => info!(instance = %self.settings.name, "left the cluster"),
            Ok(Err(error)) => warn!(%error, "could not announce leaving; peers expire us"),
            Err(error) => warn!(%error, "announcer gone; peers expire us"),
        }
    }
}
