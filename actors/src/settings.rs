//! What one instance needs to run, already validated (the binary's config parser builds it).

use std::net::IpAddr;
use std::time::Duration;

use crate::mail::routing::RoutePolicy;

#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// Stable instance name; the peer registry's key.
    pub name: String,
    pub outbox: String,
    pub deliver: String,
    pub failure: String,
    /// Hold queue: messages wait here `hold_time`, then are dead-lettered back to the outbox.
    pub retry: String,
    /// Prefetch of the outbox consumer; bounds the messages in flight, and so memory.
    pub prefetch: u16,
    pub cluster_exchange: String,
    pub announce_interval: Duration,
    pub peer_timeout: Duration,
    pub local_ips: Vec<IpAddr>,
    pub policy: RoutePolicy,
    pub hold_time: Duration,
    pub console_url: Option<String>,
    pub config_hash: String,
    /// Signs and checks cluster messages (`cluster-secret`, `cluster-freshness`).
    pub codec: crate::cluster::wire::Codec,
    /// How long the outbox consumer waits after start so peers can announce first; without it,
    /// mail for peers arriving in the first second would be treated as unroutable.
    pub warmup: Duration,
    /// How often the INFO summary of what this instance did is logged.
    pub summary_interval: Duration,
    /// Ids of messages delivered or failed here, remembered to drop second copies: how many,
    /// and for how long (`duplicate-memory`, `duplicate-window`).
    pub duplicate_memory: usize,
    pub duplicate_window: Duration,
    /// Outbox, deliver, failure, retry and handover queues are quorum queues
    /// (`rabbitmq-queue-type: quorum`).
    pub quorum_queues: bool,
    /// How members keep track of each other (`cluster-protocol`).
    pub protocol: ClusterProtocol,
}

/// How the members of a cluster keep track of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterProtocol {
    /// Every instance announces itself to every other each interval: N² deliveries per
    /// interval on the cluster broker. What MailerQ and mailroute 0.1 do and expect.
    #[default]
    Mesh,
    /// Announcements only on change; liveness through one heartbeat per instance per interval
    /// into a shared queue, whose single active consumer broadcasts a digest of them: about
    /// 2N deliveries per interval. Every instance of the cluster must run it (0.2 and later).
    Digest,
}

impl InstanceSettings {
    /// Sensible defaults around a name and an outbox; tests and the demo start from here.
    pub fn new(name: impl Into<String>, local_ips: Vec<IpAddr>) -> Self {
        let name = name.into();
        InstanceSettings {
            outbox: format!("{name}.outbox"),
            deliver: format!("{name}.deliver"),
            failure: format!("{name}.failure"),
            retry: format!("{name}.retry"),
            name,
            prefetch: 1000,
            cluster_exchange: "cluster".into(),
            announce_interval: Duration::from_secs(2),
            peer_timeout: Duration::from_secs(6),
            local_ips,
            policy: RoutePolicy {
                default_ips: Vec::new(),
                max_hops: 2,
                unroutable: crate::mail::routing::Unroutable::Hold,
                max_hold: Duration::from_secs(3600),
            },
            hold_time: Duration::from_secs(60),
            console_url: None,
            config_hash: String::new(),
            codec: crate::cluster::wire::Codec::default(),
            warmup: Duration::ZERO,
            summary_interval: Duration::from_secs(60),
            duplicate_memory: 50_000,
            duplicate_window: Duration::from_secs(600),
            quorum_queues: false,
            protocol: ClusterProtocol::Mesh,
        }
    }
}

/// What a reload changes while the instance runs (`mailroute cluster reload`, SIGHUP). The
/// rest of [`InstanceSettings`] (queue names, brokers, the instance name) needs a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub local_ips: Vec<IpAddr>,
    pub policy: RoutePolicy,
    pub hold_time: Duration,
    pub announce_interval: Duration,
    pub peer_timeout: Duration,
    pub prefetch: u16,
    /// Announced, and compared with the peers' (max-hops is part of it).
    pub config_hash: String,
}

impl InstanceSettings {
    pub fn live(&self) -> LiveSettings {
        LiveSettings {
            local_ips: self.local_ips.clone(),
            policy: self.policy.clone(),
            hold_time: self.hold_time,
            announce_interval: self.announce_interval,
            peer_timeout: self.peer_timeout,
            prefetch: self.prefetch,
            config_hash: self.config_hash.clone(),
        }
    }

    pub fn apply(&mut self, live: &LiveSettings) {
        self.local_ips = live.local_ips.clone();
        self.policy = live.policy.clone();
        self.hold_time = live.hold_time;
        self.announce_interval = live.announce_interval;
        self.peer_timeout = live.peer_timeout;
        self.prefetch = live.prefetch;
        self.config_hash = live.config_hash.clone();
    }
}
