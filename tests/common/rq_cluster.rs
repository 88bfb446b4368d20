//! The 3-node RabbitMQ cluster of `scripts/rabbitmq-cluster` (started here when it is not up):
//! a vhost of its own per test on it, and three `mailroute serve` processes whose
//! `rabbitmq-address` lists all three nodes, each in another order.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use mailroute::amqp::AmqpBroker;
use mailroute_actors::broker::SharedBroker;
use rand::Rng;

use super::servers::Server;

pub const PORTS: [u16; 3] = [5681, 5682, 5683];
/// rq1's TLS listener, and the CA that signed its certificate (made by the script).
pub const TLS_PORT: u16 = 5691;
pub const TLS_CA: &str = "/tmp/mailroute-rabbitmq-cluster/tls/ca.pem";
/// rq2's TLS listener, which asks clients for a certificate signed by that CA, and one.
pub const TLS_VERIFY_PEER_PORT: u16 = 5692;
pub const TLS_CLIENT_CERT: &str = "/tmp/mailroute-rabbitmq-cluster/tls/client.pem";
pub const TLS_CLIENT_KEY: &str = "/tmp/mailroute-rabbitmq-cluster/tls/client.key";

/// Starts the nodes unless they are up (the script takes a lock, so tests may race for it).
pub fn ensure_started() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster");
    let status = Command::new(script)
        .arg("start")
        .status()
        .expect("scripts/rabbitmq-cluster runs");
    assert!(status.success(), "the RabbitMQ cluster starts");
}

/// A vhost of its own on the cluster, for guest; deleted on drop.
pub struct RqVhost(pub String);

impl RqVhost {
    pub fn new(label: &str) -> RqVhost {
        let name = format!("test-{label}-{:08x}", rand::rng().random::<u32>());
        ctl("rq1", &["add_vhost", &name]);
        ctl(
            "rq1",
            &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"],
        );
        RqVhost(name)
    }
}

impl Drop for RqVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", "rq1@localhost", "delete_vhost", &self.0])
            .output();
    }
}

fn ctl(node: &str, args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "-n", &format!("{node}@localhost")])
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl -n {node} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node (`rq1`..`rq3`) listening on `port`.
pub fn node_of(port: u16) -> String {
    format!("rq{}", port - 5680)
}

pub fn stop_node(node: &str) {
    ctl(node, &["stop_app"]);
}

pub fn start_node(node: &str) {
    ctl(node, &["start_app"]);
    ctl(node, &["await_startup"]);
}

pub struct RqCluster {
    pub vhost: String,
    pub dir: PathBuf,
    pub servers: Vec<Server>,
    pub client: SharedBroker,
}

/// Every node's address for `vhost`, starting with the one at `first`.
pub fn address_list(vhost: &str, first: usize) -> String {
    (0..3)
        .map(|i| {
            let port = PORTS[(first + i) % 3];
            format!("amqp://guest:guest@127.0.0.1:{port}/{vhost}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl RqCluster {
    pub async fn start(label: &str, extra: &str) -> RqCluster {
        ensure_started();
        let vhost = format!("test-{label}-{:08x}", rand::rng().random::<u32>());
        ctl("rq1", &["add_vhost", &vhost]);
        ctl(
            "rq1",
            &["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"],
        );
        let dir = std::env::temp_dir().join(&vhost);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let servers = super::scenario::spawn_members(
            &dir,
            |i| address_list(&vhost, i),
            extra,
            |_| Vec::new(),
        )
        .await;
        let client: SharedBroker = Arc::new(
            AmqpBroker::connect(&address_list(&vhost, 0))
                .await
                .expect("the RabbitMQ cluster answers"),
        );
        RqCluster {
            vhost,
            dir,
            servers,
            client,
        }
    }

    /// The port of the node `name`'s consuming connection is on now (from its log).
    pub fn node_port_of(&self, name: &str) -> u16 {
        let server = self.servers.iter().find(|s| s.name == name).expect("known");
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("connected broker=") && l.contains("\"consume\""))
            .filter_map(|l| {
                let (_, rest) = l.split_once("@127.0.0.1:")?;
                rest.get(..4)?.parse::<u16>().ok()
            })
            .next_back()
            .expect("a connected line")
    }

    pub fn logs(&self) -> String {
        super::servers::logs(&self.servers)
    }

    /// SIGTERM to every instance; each must drain and exit 0.
    pub fn stop_all(&mut self) {
        super::servers::stop_all(&mut self.servers);
    }
}

impl Drop for RqCluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", "rq1@localhost", "delete_vhost", &self.vhost])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
