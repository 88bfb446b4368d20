//! Two addresses of one broker: instances that spell it differently (`localhost` against
//! `127.0.0.1`; each on another node of a RabbitMQ cluster) find each other's presence queue
//! through their own connection and hand over straight into the peer's outbox, not through
//! its handover queue. Every message counted by id; nothing relayed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::rq_cluster::{PORTS, RqVhost, address_list, ensure_started};
use common::scenario::{NAMES, ips, spawn_members};
use common::{Expect, publish_all};
use mailroute::amqp::AmqpBroker;
use mailroute_actors::broker::{Message, SharedBroker};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};

/// 200 messages from each outbox for the next instance's IPs: all of it is handed over.
fn ring_traffic(prefix: &str) -> (HashMap<String, Expect>, Vec<(String, Message)>) {
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for (n, name) in NAMES.iter().enumerate() {
        let owner = (n + 1) % 3;
        for i in 0..200 {
            let id = format!("{prefix}-{name}-{i}");
            expected.insert(id.clone(), Expect::Delivered(NAMES[owner].into()));
            let body = mailerq_json(&id, Some(&[ips(owner as u8)[i % 3]]), 512);
            messages.push((format!("{name}.outbox"), test_message(&id, body)));
        }
    }
    (expected, messages)
}

/// Each instance's log says it hands over directly to the peers it found, and its stop line
/// says it relayed nothing.
fn assert_direct(servers: &[common::servers::Server], found_per_instance: usize) {
    for server in servers {
        let log = server.log_text();
        assert!(
            server.log_count("handing over directly") >= found_per_instance,
            "{}: {log}",
            server.name
        );
        assert!(log.contains("relayed=0"), "{}: {log}", server.name);
    }
}

async fn wait_found(servers: &[common::servers::Server], per_instance: usize) {
    for server in servers {
        let found = wait_for("peers found", Duration::from_secs(30), || async {
            server.log_count("handing over directly") >= per_instance
        })
        .await;
        assert!(found.is_ok(), "{}: {}", server.name, server.log_text());
    }
}

#[actix::test]
async fn localhost_and_127_0_0_1_are_one_broker() {
    let vhost = common::TestVhost::new("spelling");
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // a writes the address as users do, with a host name; b and c with the IP.
    let address = |i: usize| {
        let address = vhost.instance_address();
        if i == 0 {
            address.replace("@127.0.0.1:", "@localhost:")
        } else {
            address
        }
    };
    let mut servers = spawn_members(&dir, address, "", |_| Vec::new()).await;
    // a finds b and c; b and c find a (and each other as announced: same spelling).
    wait_found(&servers[..1], 2).await;
    wait_found(&servers[1..], 1).await;
    let client = vhost.broker().await;
    let (expected, messages) = ring_traffic("spelling");
    publish_all(&client, &messages).await;
    common::wait_all_settled(&client, &NAMES, &expected, Duration::from_secs(60)).await;
    common::servers::stop_all(&mut servers);
    let acc = common::account_stopped(&client, &NAMES, &expected).await;
    acc.assert_complete(&common::servers::logs(&servers));
    assert_direct(&servers[..1], 2);
    assert_direct(&servers[1..], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each instance on one node of the 3-node cluster only: no address in common, one broker.
#[actix::test]
async fn three_nodes_of_one_rabbitmq_cluster_are_one_broker() {
    ensure_started();
    let vhost = RqVhost::new("nodes");
    let dir = std::env::temp_dir().join(&vhost.0);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let address = |i: usize| format!("amqp://guest:guest@127.0.0.1:{}/{}", PORTS[i], vhost.0);
    let mut servers = spawn_members(&dir, address, "", |_| Vec::new()).await;
    wait_found(&servers, 2).await;
    let client: SharedBroker = Arc::new(
        AmqpBroker::connect(&address_list(&vhost.0, 0))
            .await
            .expect("the RabbitMQ cluster answers"),
    );
    let (expected, messages) = ring_traffic("nodes");
    publish_all(&client, &messages).await;
    common::wait_all_settled(&client, &NAMES, &expected, Duration::from_secs(60)).await;
    common::servers::stop_all(&mut servers);
    let acc = common::account_stopped(&client, &NAMES, &expected).await;
    acc.assert_complete(&common::servers::logs(&servers));
    assert_direct(&servers, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
