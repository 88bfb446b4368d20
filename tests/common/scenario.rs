//! A fault scenario: three `mailroute serve` processes, a steady stream of test mail, faults
//! while it flows, then every message counted by id where it ended up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use mailroute_actors::broker::{Destination, Message, SharedBroker};
use mailroute_actors::cluster::wire::{self, Announcement, ClusterMessage};
use mailroute_actors::testkit::wait_for;

use super::servers::{Server, write_config};
use super::{Accounting, Expect, Member, TestVhost};

pub const NAMES: [&str; 3] = ["a", "b", "c"];

pub fn ips(index: u8) -> Vec<IpAddr> {
    (1..=3).map(|h| IpAddr::from([10, 4, index, h])).collect()
}

/// `serve` processes a, b and c in `dir`, the i-th on `address(i)` owning `ips(i)`, with
/// `extra` config lines and `env(i)`; returns once each has seen the other two join.
pub async fn spawn_members(
    dir: &std::path::Path,
    address: impl Fn(usize) -> String,
    extra: &str,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Server> {
    let servers: Vec<Server> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let config = write_config(dir, &address(i), name, &ips(i as u8), extra);
            Server::spawn_with_env(dir, name, &config, env(i))
        })
        .collect();
    super::servers::wait_joined(&servers, 2).await;
    servers
}

pub struct Cluster {
    pub vhost: TestVhost,
    /// The cluster exchange's own vhost and user, when the cluster broker is separate.
    pub cluster_vhost: Option<TestVhost>,
    pub dir: PathBuf,
    pub servers: Vec<Server>,
    pub client: SharedBroker,
}

impl Cluster {
    pub async fn start(label: &str) -> Cluster {
        Self::start_with(label, "").await
    }

    /// `extra`: more config lines for every instance.
    pub async fn start_with(label: &str, extra: &str) -> Cluster {
        Self::launch(label, extra, None, |_| Vec::new()).await
    }

    /// `env(i)`: environment variables for the i-th instance (a per-instance key, say).
    pub async fn start_with_env(
        label: &str,
        extra: &str,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        Self::launch(label, extra, None, env).await
    }

    /// With consoles: the i-th on `127.0.0.1:ports[i]`, all with `token` as `www-token` if given
    /// (through the environment, as an operator may set them); `extra`: more config lines.
    pub async fn start_with_consoles(
        label: &str,
        ports: &[u16],
        token: Option<&str>,
        extra: &str,
    ) -> Cluster {
        Self::start_with_env(label, extra, |i| {
            let mut env = vec![(
                "MAILROUTE_WWW_ADDRESS".to_string(),
                format!("127.0.0.1:{}", ports[i]),
            )];
            env.extend(token.map(|t| ("MAILROUTE_WWW_TOKEN".to_string(), t.to_string())));
            env
        })
        .await
    }

    /// The cluster exchange on a vhost and user of its own (`cluster-address`), the outboxes
    /// on another: as when the cluster broker is a separate RabbitMQ.
    pub async fn start_split(label: &str, extra: &str) -> Cluster {
        let cluster = TestVhost::new(&format!("{label}-cluster"));
        Self::launch(label, extra, Some(cluster), |_| Vec::new()).await
    }

    async fn launch(
        label: &str,
        extra: &str,
        cluster_vhost: Option<TestVhost>,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let vhost = TestVhost::new(label);
        let extra = match &cluster_vhost {
            Some(c) => format!("cluster-address: {}\n{extra}", c.instance_address()),
            None => extra.to_string(),
        };
        let extra = extra.as_str();
        let dir = std::env::temp_dir().join(&vhost.name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let servers = spawn_members(&dir, |_| vhost.instance_address(), extra, env).await;
        let client = vhost.broker().await;
        Cluster {
            vhost,
            cluster_vhost,
            dir,
            servers,
            client,
        }
    }

    pub fn members(&self) -> Vec<Member> {
        super::members(&NAMES, ips)
    }

    /// Ready messages in all deliver queues: how far the stream has got.
    pub async fn delivered(&self) -> usize {
        super::delivered_in(&self.client, &NAMES).await
    }

    pub async fn wait_delivered(&self, count: usize) {
        wait_for("stream progress", Duration::from_secs(300), || async {
            self.delivered().await >= count
        })
        .await
        .expect("the stream flows");
    }

    pub fn server(&mut self, name: &str) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .expect("known server")
    }

    /// Waits until everything sent is in a deliver, retry or failure queue and the outboxes
    /// are empty, stops every instance (SIGTERM: they drain), then takes it all out and counts
    /// it against `expected`: held mail may be going round the retry queue meanwhile.
    pub async fn account(&mut self, expected: &HashMap<String, Expect>) -> Accounting {
        super::wait_all_settled(&self.client, &NAMES, expected, Duration::from_secs(300)).await;
        self.stop_all();
        super::account_stopped(&self.client, &NAMES, expected).await
    }

    /// SIGTERM to every running instance; each must drain and exit 0.
    pub fn stop_all(&mut self) {
        super::servers::stop_all(&mut self.servers);
    }

    pub fn logs(&self) -> String {
        super::servers::logs(&self.servers)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Announces a peer `name` whose outbox queue does not exist, every 300 ms until aborted: it
/// is alive in every registry, and every handover to it is returned by the broker.
pub fn phantom_peer(
    broker: SharedBroker,
    name: &str,
    ips: Vec<IpAddr>,
) -> actix_rt::task::JoinHandle<()> {
    let outbox = format!("{name}.outbox-deleted");
    phantom_peer_on(broker, "cluster", name, &outbox, ips)
}

/// Announces a peer `name` with `outbox` on `exchange`, every 300 ms until aborted.
pub fn phantom_peer_on(
    broker: SharedBroker,
    exchange: &str,
    name: &str,
    outbox: &str,
    ips: Vec<IpAddr>,
) -> actix_rt::task::JoinHandle<()> {
    let (name, outbox, exchange) = (name.to_string(), outbox.to_string(), exchange.to_string());
    // It answers challenges on `broker` as a running instance does: its outbox is proven to
    // be there (gone or not), and nobody reaches it through its handover queue.
    let presence = mailroute_actors::testkit::ghost::hold_presence(
        broker.clone(),
        broker.clone(),
        name.clone(),
        7,
        wire::Codec::default(),
    );
    let announce = async move {
        let mut sequence = 0;
        loop {
            sequence += 1;
            let message = ClusterMessage::Announcement(Announcement {
                name: name.clone(),
                version: "phantom".into(),
                started_at: 7,
                sequence,
                local_ips: ips.clone(),
                outbox: outbox.clone(),
                broker: broker.identity(),
                console_url: None,
                config_hash: String::new(),
                ..Default::default()
            });
            if let Ok(body) = wire::encode(&message) {
                let _ = broker
                    .publish(
                        &Destination::exchange(&exchange, message.routing_key()),
                        &Message::new(body, Default::default()),
                        false,
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    actix_rt::spawn(async move {
        // Held before the first announcement, as an instance holds it.
        match presence.await {
            Ok(answering) => {
                futures::future::join(answering, announce).await;
            }
            Err(_) => announce.await,
        }
    })
}

/// Announces `announcement` on the `cluster` exchange every 300 ms, encoded by `codec` (signed
/// when it has a secret), until aborted: a peer that exists only in what it says.
pub fn announce_forever(
    broker: SharedBroker,
    mut announcement: Announcement,
    codec: wire::Codec,
) -> actix_rt::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        loop {
            announcement.sequence += 1;
            let message = ClusterMessage::Announcement(announcement.clone());
            if let Ok(body) = codec.encode(&message, wire::now_ms()) {
                let _ = broker
                    .publish(
                        &Destination::exchange("cluster", message.routing_key()),
                        &Message::new(body, Default::default()),
                        false,
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}
