//! The RabbitMQ application stopped and started during a steady stream of 20,000 messages.
//! Alone in its test binary on purpose: it takes the broker away from every other test, and
//! cargo runs test binaries one after the other.

mod common;

use common::scenario::Cluster;
use common::{rabbitmqctl, report};

#[actix::test]
async fn the_broker_restarts_mid_stream() {
    let mut cluster = Cluster::start("fault-restart").await;
    let traffic = common::traffic(&cluster.members(), 20_000, 5, 1, "restart");
    let client = cluster.client.clone();
    let stream =
        actix_rt::spawn(
            async move { common::publish_stream(&client, traffic.batches, 2_000).await },
        );
    cluster.wait_delivered(4_000).await;
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let retries = stream.await.unwrap();
    let acc = cluster.account(&traffic.expected).await;
    report(
        "RabbitMQ stop_app / start_app mid-stream",
        &acc,
        acc.held + acc.failed,
    );
    println!("publisher retries during the outage: {retries}");
    acc.assert_complete(&cluster.logs());
}
