//! One mailroute instance: the five supervised actors wired together, and its orderly stop.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::announcer::Announcer;
use crate::broker::{BrokerError, QueueSpec, SharedBroker};
use crate::handover_publisher::HandoverPublisher;
use crate::ip_ownership_router::IpOwnershipRouter;
use crate::messages::{Drain, Leave, ListPeers, PeerInfo};
use crate::outbox_consumer::OutboxConsumer;
use crate::peer_registry::{PeerRegistry, RegistryConfig};
use crate::routing::OwnershipTable;
use crate::settings::InstanceSettings;
use crate::stats::Stats;
use crate::wire::Announcement;
use crate::wire::now_ms;

pub struct Instance {
    pub settings: InstanceSettings,
    pub stats: Arc<Stats>,
    pub table: Arc<OwnershipTable>,
    pub consumer: Addr<OutboxConsumer>,
    pub router: Addr<IpOwnershipRouter>,
    pub publisher: Addr<HandoverPublisher>,
    pub announcer: Addr<Announcer>,
    pub registry: Addr<PeerRegistry>,
}

/// Declares the queues this instance owns. Fails fast, so a broker that refuses them (wrong
/// vhost, permissions, a queue declared elsewhere with other arguments) stops startup.
/// The queues this instance owns on its local broker, as it declares them.
pub fn own_queues(settings: &InstanceSettings) -> Vec<QueueSpec> {
    let mut retry = QueueSpec::durable(settings.retry.as_str());
    retry.message_ttl = Some(settings.hold_time);
    retry.dead_letter_queue = Some(settings.outbox.clone());
    vec![
        QueueSpec::durable(settings.outbox.as_str()),
        QueueSpec::durable(settings.deliver.as_str()),
        QueueSpec::durable(settings.failure.as_str()),
        retry,
    ]
}

pub async fn declare_queues(
    settings: &InstanceSettings,
    local: &SharedBroker,
) -> Result<(), BrokerError> {
    for spec in own_queues(settings) {
        local.declare_queue(&spec).await?;
    }
    Ok(())
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
        let stats = Arc::new(Stats::default());
        let started_at = now_ms();

        // Each actor is built here and handed to its supervisor, which keeps the same value
        // across restarts (calling `restarting`), so state such as the ownership table survives.
        let publisher =
            HandoverPublisher::new(&settings, local.clone(), cluster.clone(), stats.clone());
        let publisher = Supervisor::start(move |_| publisher);
        let router_actor = IpOwnershipRouter::new(
            settings.local_ips.clone(),
            settings.policy.clone(),
            publisher.clone().recipient(),
            stats.clone(),
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
        };
        let announcer = Announcer::new(
            cluster.clone(),
            settings.cluster_exchange.clone(),
            announcement,
            settings.announce_interval,
            stats.clone(),
            settings.codec.clone(),
        );
        let announcer = Supervisor::start(move |_| announcer);
        let consumer = OutboxConsumer::new(
            local.clone(),
            settings.outbox.clone(),
            settings.prefetch,
            router.clone().recipient(),
            stats.clone(),
            settings.warmup,
        );
        let consumer = Supervisor::start(move |_| consumer);
        let config = RegistryConfig {
            exchange: settings.cluster_exchange.clone(),
            me: settings.name.clone(),
            my_started_at: started_at,
            local_ips: settings.local_ips.clone(),
            peer_timeout: settings.peer_timeout,
            handover_broker: cluster.identity(),
            codec: settings.codec.clone(),
        };
        let registry = PeerRegistry::new(
            cluster.clone(),
            config,
            router.clone().recipient(),
            announcer.clone().recipient(),
            consumer.clone().recipient(),
            stats.clone(),
        );
        let registry = Supervisor::start(move |_| registry);
        info!(instance = %settings.name, outbox = %settings.outbox, ips = settings.local_ips.len(), "instance started");
        Ok(Instance {
            settings,
            stats,
            table,
            consumer,
            router,
            publisher,
            announcer,
            registry,
        })
    }

    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.registry.send(ListPeers).await.unwrap_or_default()
    }

    /// Graceful stop: no new messages, every routed one settled (bounded by `grace`), then
    /// `Leaving` so peers stop handing over at once instead of after `peer-timeout`.
    pub async fn shutdown(&self, grace: Duration) {
        info!(instance = %self.settings.name, "draining");
        if tokio::time::timeout(grace, self.consumer.send(Drain))
            .await
            .is_err()
        {
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
