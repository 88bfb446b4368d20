//! Private brokers: three `mailroute serve` processes, each with its outbox and sinks on a vhost
//! (and user) of its own, sharing only the cluster broker, itself a vhost of its own. Handovers
//! must cross brokers through the handover queues on the cluster vhost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use mailroute_actors::broker::own_queues::handover_queue;
use mailroute_actors::broker::{Message, SharedBroker};
use mailroute_actors::testkit::wait_for;

use super::scenario::{NAMES, ips};
use super::servers::Server;
use super::{Accounting, Expect, Member, TestVhost, account, drain, ready};

pub struct PrivateCluster {
    pub cluster: TestVhost,
    /// One per instance, in the order of `NAMES`.
    pub vhosts: Vec<TestVhost>,
    /// The test's own connection to each instance's vhost, and to the cluster vhost.
    pub clients: Vec<SharedBroker>,
    pub cluster_client: SharedBroker,
    pub dir: PathBuf,
    pub servers: Vec<Server>,
}

impl PrivateCluster {
    /// `extra`: more config lines for every instance.
    pub async fn start(label: &str, extra: &str) -> PrivateCluster {
        let cluster = TestVhost::new(&format!("{label}-cl"));
        let vhosts: Vec<TestVhost> = NAMES
            .iter()
            .map(|n| TestVhost::new(&format!("{label}-{n}")))
            .collect();
        let dir = std::env::temp_dir().join(&cluster.name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // As a list whose other node refuses connections (port 1): every instance must get
        // through to the node that answers, whichever it tries first.
        let refusing = cluster
            .instance_address()
            .replace("127.0.0.1:5672", "127.0.0.1:1");
        let extra = format!(
            "cluster-address: {refusing}, {}\n{extra}",
            cluster.instance_address()
        );
        let servers = super::scenario::spawn_members(
            &dir,
            |i| vhosts[i].instance_address(),
            &extra,
            |_| Vec::new(),
        )
        .await;
        let mut clients = Vec::new();
        for v in &vhosts {
            clients.push(v.broker().await);
        }
        let cluster_client = cluster.broker().await;
        PrivateCluster {
            cluster,
            vhosts,
            clients,
            cluster_client,
            dir,
            servers,
        }
    }

    pub fn members(&self) -> Vec<Member> {
        super::members(&NAMES, ips)
    }

    pub fn client_of(&self, name: &str) -> &SharedBroker {
        let i = NAMES.iter().position(|n| *n == name).expect("known name");
        &self.clients[i]
    }

    /// Publishes each message into its outbox on its instance's own vhost, at about `rate` per
    /// second in all; returns the retried publishes (each may have stored a second copy).
    pub async fn publish(&self, batches: Vec<(String, Message)>, rate: u32) -> usize {
        Self::publish_on(&self.clients, Self::split(batches), rate).await
    }

    /// The messages for each instance's outbox, in the order of `NAMES`.
    pub fn split(batches: Vec<(String, Message)>) -> Vec<Vec<(String, Message)>> {
        let mut split = vec![Vec::new(); NAMES.len()];
        for (outbox, m) in batches {
            let i = NAMES
                .iter()
                .position(|n| outbox == format!("{n}.outbox"))
                .expect("an instance's outbox");
            split[i].push((outbox, m));
        }
        split
    }

    /// [`Self::publish`] from a task: `clients` in the order of `NAMES`.
    pub async fn publish_on(
        clients: &[SharedBroker],
        split: Vec<Vec<(String, Message)>>,
        rate: u32,
    ) -> usize {
        let mut tasks = Vec::new();
        for (client, batch) in clients.iter().zip(split) {
            let client = client.clone();
            let rate = rate / NAMES.len() as u32;
            tasks.push(actix_rt::spawn(async move {
                super::publish_stream(&client, batch, rate).await
            }));
        }
        let mut retries = 0;
        for t in tasks {
            retries += t.await.expect("publisher task");
        }
        retries
    }

    /// Messages in the deliver queues of every instance.
    pub async fn delivered(&self) -> usize {
        let mut total = 0;
        for (n, client) in NAMES.iter().zip(&self.clients) {
            total += ready(client, &format!("{n}.deliver")).await;
        }
        total
    }

    pub async fn wait_delivered(&self, count: usize) {
        wait_for("stream progress", Duration::from_secs(300), || async {
            self.delivered().await >= count
        })
        .await
        .expect("the stream flows");
    }

    /// Messages not yet where they end: in an outbox, a retry queue or a handover queue.
    async fn moving(&self) -> usize {
        let mut total = 0;
        for (n, client) in NAMES.iter().zip(&self.clients) {
            total += ready(client, &format!("{n}.outbox")).await;
            total += ready(client, &format!("{n}.retry")).await;
            total += ready(&self.cluster_client, &handover_queue(n)).await;
        }
        total
    }

    /// For traffic that all gets delivered: waits until `total` messages are in deliver queues
    /// and nothing is moving, stops every instance (SIGTERM), then counts every copy by id.
    pub async fn account(&mut self, expected: &HashMap<String, Expect>) -> Accounting {
        let total = expected.len();
        let settled = wait_for("all delivered", Duration::from_secs(300), || async {
            self.delivered().await >= total && self.moving().await == 0
        })
        .await;
        if let Err(e) = settled {
            panic!(
                "{e}: {} delivered, {} moving\n{}",
                self.delivered().await,
                self.moving().await,
                self.logs()
            );
        }
        self.stop_all();
        self.account_stopped(expected).await
    }

    /// With the instances stopped, takes everything out of every queue they own (on their own
    /// vhosts and on the cluster vhost) and counts it by id.
    pub async fn account_stopped(&self, expected: &HashMap<String, Expect>) -> Accounting {
        let mut found = Vec::new();
        for (n, client) in NAMES.iter().zip(&self.clients) {
            found.extend(super::found_at(client, n).await);
            found.push((
                Expect::Unrouted(n.to_string()),
                drain(&self.cluster_client, &handover_queue(n)).await,
            ));
        }
        account(expected, found)
    }

    pub fn server(&mut self, name: &str) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .expect("known server")
    }

    /// SIGTERM to every running instance; each must drain and exit 0.
    pub fn stop_all(&mut self) {
        super::servers::stop_all(&mut self.servers);
    }

    pub fn logs(&self) -> String {
        super::servers::logs(&self.servers)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
