//! Shared by the actor-level tests: instances on the in-memory broker, test traffic, and a
//! broker wrapper with the less friendly behaviours of a real one.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::{
    Acker, Broker, Destination, Message, QueueSpec, SharedBroker, Subscription,
};
use mailroute_actors::cluster::wire::{self, Announcement, ClusterMessage};
use mailroute_actors::mail::routing::{Owner, Via};
use mailroute_actors::messages::Run;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};
use mailroute_actors::{BrokerError, Instance, InstanceSettings};

pub const LIMIT: Duration = Duration::from_secs(10);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Timings as users run them, scaled down: a peer that misses ten announcements expires.
pub fn settings(name: &str, ips: &[&str]) -> InstanceSettings {
    let mut s = InstanceSettings::new(name, ips.iter().map(|i| ip(i)).collect());
    s.announce_interval = Duration::from_millis(100);
    s.peer_timeout = Duration::from_secs(1);
    s.prefetch = 50;
    s
}

pub async fn start(broker: &MemoryBroker, s: InstanceSettings) -> Instance {
    let shared: SharedBroker = Arc::new(broker.clone());
    Instance::start(s, shared.clone(), shared).await.unwrap()
}

pub async fn inject(broker: &MemoryBroker, outbox: &str, id: &str, ips: &[&str]) {
    let ips: Vec<IpAddr> = ips.iter().map(|i| ip(i)).collect();
    let message = test_message(id, mailerq_json(id, Some(&ips), 512));
    broker
        .publish(&Destination::queue(outbox), &message, true)
        .await
        .unwrap();
}

pub async fn wait_peers(instances: &[&Instance], count: usize) {
    for instance in instances {
        wait_for("peers announced", LIMIT, || async {
            instance.peers().await.len() == count
        })
        .await
        .unwrap();
    }
}

/// Waits until the instance's registry hears the cluster (its own announcement comes back).
pub async fn wait_listening(instance: &Instance) {
    wait_for("listening to the cluster", LIMIT, || async {
        instance.stats.snapshot().announcements_received > 0
    })
    .await
    .unwrap();
}

/// `settings`, for a test with ghosts: peers announced once by the test, which must not
/// expire while it runs.
pub fn settings_with_ghosts(name: &str, ips: &[&str]) -> InstanceSettings {
    let mut s = settings(name, ips);
    s.peer_timeout = Duration::from_secs(60);
    s
}

pub async fn announce_ghost(
    broker: &MemoryBroker,
    name: &str,
    ip_addr: &str,
    outbox: &str,
) -> Announcement {
    let a = Announcement {
        name: name.into(),
        version: "test".into(),
        started_at: 42,
        sequence: 1,
        local_ips: vec![ip(ip_addr)],
        outbox: outbox.into(),
        broker: broker.identity(),
        console_url: None,
        config_hash: String::new(),
        ..Default::default()
    };
    // The ghost's outbox is on this broker, and it answers challenges to prove so.
    let shared: SharedBroker = Arc::new(broker.clone());
    let answering = mailroute_actors::testkit::ghost::hold_presence(
        shared.clone(),
        shared,
        a.name.clone(),
        a.started_at,
        wire::Codec::default(),
    )
    .await
    .unwrap();
    actix::spawn(answering);
    publish_cluster(broker, &ClusterMessage::Announcement(a.clone())).await;
    a
}

/// Waits until `instance` routes each of `ips` to a peer whose outbox is proven to be on a
/// broker it uses (until then it hands their mail to their handover queues, which a ghost
/// does not read).
pub async fn wait_proven(instance: &Instance, ips: &[&str]) {
    wait_for("peers' presence proven", LIMIT, || async {
        ips.iter().all(|i| {
            matches!(instance.table.owner(&ip(i)),
                Some(Owner::Peer(route)) if route.via != Via::HandoverQueue)
        })
    })
    .await
    .unwrap();
}

/// The ghost announces again, as a live peer does (a higher sequence).
pub async fn reannounce_ghost(broker: &MemoryBroker, ghost: &mut Announcement) {
    ghost.sequence += 1;
    publish_cluster(broker, &ClusterMessage::Announcement(ghost.clone())).await;
}

pub async fn publish_cluster(broker: &MemoryBroker, message: &ClusterMessage) {
    let body = wire::encode(message).unwrap();
    broker
        .publish(
            &Destination::exchange("cluster", message.routing_key()),
            &Message::new(body, Default::default()),
            false,
        )
        .await
        .unwrap();
}

pub fn ids(messages: &[Message]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in messages {
        *counts.entry(test_id(m).unwrap_or_default()).or_insert(0) += 1;
    }
    counts
}

/// The memory broker with some of RabbitMQ's less friendly behaviours, each switched on by a
/// test, and a link that can be cut as a network or a broker user can be.
pub struct TweakedBroker {
    inner: MemoryBroker,
    /// A nack takes this long to reach the broker, as when its frame waits behind others.
    pub nack_delay: Duration,
    cut: tokio::sync::watch::Sender<bool>,
    /// Destinations the instance released (a peer left).
    pub released: std::sync::Mutex<Vec<Destination>>,
    /// A consumer run that ends while the next publish is on its way (a restart meanwhile).
    pub ends_on_publish: std::sync::Mutex<Option<Run>>,
}

impl TweakedBroker {
    pub fn with_nack_delay(inner: &MemoryBroker, delay: Duration) -> Self {
        TweakedBroker {
            nack_delay: delay,
            ..Self::new(inner)
        }
    }

    pub fn new(inner: &MemoryBroker) -> Self {
        TweakedBroker {
            inner: inner.clone(),
            nack_delay: Duration::ZERO,
            cut: tokio::sync::watch::channel(false).0,
            released: Default::default(),
            ends_on_publish: Default::default(),
        }
    }

    /// Cuts this client off (every call fails, consumers end with an error) or reconnects it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    fn check(&self) -> Result<(), BrokerError> {
        if *self.cut.borrow() {
            Err(BrokerError::ChannelClosed(
                "connection cut by the test".into(),
            ))
        } else {
            Ok(())
        }
    }
}

struct SlowNack {
    inner: Box<dyn Acker>,
    delay: Duration,
}

#[async_trait::async_trait]
impl Acker for SlowNack {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.inner.ack().await
    }
    async fn ack_through(&self) -> Result<(), BrokerError> {
        self.inner.ack_through().await
    }
    async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        tokio::time::sleep(self.delay).await;
        self.inner.nack(requeue).await
    }
}

#[async_trait::async_trait]
impl Broker for TweakedBroker {
    fn identity(&self) -> String {
        self.inner.identity()
    }
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.check()?;
        self.inner.declare_queue(spec).await
    }
    async fn declare_topic_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.check()?;
        self.inner.declare_topic_exchange(name).await
    }
    async fn bind_queue(&self, q: &str, e: &str, p: &str) -> Result<(), BrokerError> {
        self.check()?;
        self.inner.bind_queue(q, e, p).await
    }
    async fn publish(
        &self,
        to: &Destination,
        m: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        self.check()?;
        let ending = self
            .ends_on_publish
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(run) = ending {
            run.end();
        }
        self.inner.publish(to, m, mandatory).await
    }
    async fn subscribe(&self, q: &str, prefetch: u16) -> Result<Subscription, BrokerError> {
        self.check()?;
        let delay = self.nack_delay;
        let inner = self.inner.subscribe(q, prefetch).await?;
        let mut cut = self.cut.subscribe();
        let lost = futures::stream::once(async move {
            let _ = cut.wait_for(|c| *c).await;
            Err(BrokerError::ChannelClosed(
                "connection cut by the test".into(),
            ))
        });
        let deliveries = inner.deliveries.map(move |item| {
            item.map(|mut d| {
                d.acker = Box::new(SlowNack {
                    inner: d.acker,
                    delay,
                });
                d
            })
        });
        Ok(Subscription {
            deliveries: Box::pin(futures::stream::select(deliveries, lost)),
            control: inner.control,
        })
    }
    async fn queue_len(&self, q: &str) -> Result<u32, BrokerError> {
        self.inner.queue_len(q).await
    }
    async fn delete_queue(&self, q: &str) -> Result<(), BrokerError> {
        self.inner.delete_queue(q).await
    }
    async fn delete_exchange(&self, e: &str) -> Result<(), BrokerError> {
        self.inner.delete_exchange(e).await
    }
    fn release(&self, to: &Destination) {
        self.released.lock().unwrap().push(to.clone());
    }
}
