//! A real 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster`): three `serve` processes, each
//! with all three nodes in its `rabbitmq-address` (another first node each), a steady stream of
//! 20,000 messages, and the node instance a consumes from is stopped mid-stream and started
//! again. Every copy counted by id. Once with quorum queues, once with classic ones, to show
//! what quorum buys. The two share the nodes, so they run one after the other.

mod common;

use std::time::Duration;

use common::report;
use common::rq_cluster::{RqCluster, node_of, start_node, stop_node};
use mailroute_actors::testkit::wait_for;

static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MESSAGES: usize = 20_000;

async fn node_stopped_mid_stream(label: &str, queue_type: &str) {
    let _nodes = NODES.lock().await;
    let extra = format!("rabbitmq-queue-type: {queue_type}\n");
    let mut cluster = RqCluster::start(label, &extra).await;
    let traffic = common::traffic(
        &common::members(&["a", "b", "c"], common::scenario::ips),
        MESSAGES,
        5,
        1,
        label,
    );
    let client = cluster.client.clone();
    let stream =
        actix_rt::spawn(
            async move { common::publish_stream(&client, traffic.batches, 2_000).await },
        );
    wait_for("stream flows", Duration::from_secs(120), || async {
        common::delivered_in(&cluster.client, &["a", "b", "c"]).await >= 4_000
    })
    .await
    .expect("mail flows");
    let port = cluster.node_port_of("a");
    let node = node_of(port);
    stop_node(&node);
    let moved = wait_for(
        "a moved to another node",
        Duration::from_secs(60),
        || async { cluster.node_port_of("a") != port },
    )
    .await;
    start_node(&node);
    let retries = stream.await.unwrap();
    if let Err(e) = moved {
        panic!("{e}\n{}", cluster.logs());
    }
    common::wait_all_settled(
        &cluster.client,
        &["a", "b", "c"],
        &traffic.expected,
        Duration::from_secs(300),
    )
    .await;
    cluster.stop_all();
    let acc = common::account_stopped(&cluster.client, &["a", "b", "c"], &traffic.expected).await;
    report(
        &format!(
            "3-node RabbitMQ, {queue_type} queues: a's node stopped mid-stream and started again ({retries} publish retries)"
        ),
        &acc,
        acc.held + acc.failed,
    );
    acc.assert_complete(&cluster.logs());
}

#[actix::test]
async fn a_node_stops_under_quorum_queues() {
    node_stopped_mid_stream("rq-quorum", "quorum").await;
}

#[actix::test]
async fn a_node_stops_under_classic_queues() {
    node_stopped_mid_stream("rq-classic", "classic").await;
}
