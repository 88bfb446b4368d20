//! Private brokers on the real RabbitMQ: every instance has its outbox and sinks on a vhost and
//! user of its own, and only the cluster vhost is shared, so no instance can reach another's
//! outbox: every handover crosses brokers through the owner's handover queue and relay. Each
//! test counts every copy of every message, by id, on the vhost where it ended.

mod common;

use std::time::Duration;

use common::private::PrivateCluster;
use common::report;
use mailroute_actors::broker::own_queues::handover_queue;
use mailroute_actors::testkit::wait_for;

/// `duplicates_dropped=N` summed over the instances' final log lines.
fn dropped_duplicates(cluster: &PrivateCluster) -> usize {
    cluster
        .servers
        .iter()
        .flat_map(|s| {
            s.log_text()
                .lines()
                .filter(|l| l.contains("stopped"))
                .filter_map(|l| {
                    let (_, rest) = l.split_once("duplicates_dropped=")?;
                    rest.split_whitespace().next()?.parse::<usize>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

#[actix::test]
async fn ten_thousand_messages_reach_their_owners_across_private_brokers() {
    let mut cluster = PrivateCluster::start("private", "").await;
    let traffic = common::traffic(&cluster.members(), 10_000, 0, 0, "private");
    let retries = cluster.publish(traffic.batches, 3_000).await;
    let acc = cluster.account(&traffic.expected).await;
    report("private brokers (a vhost each), 10,000 messages", &acc, 0);
    acc.assert_complete(&cluster.logs());
    assert_eq!(retries, 0);
    assert_eq!(acc.duplicates, 0, "{:?}", acc.duplicate_detail);
    assert_eq!((acc.held, acc.failed), (0, 0));
    for s in &cluster.servers {
        assert_eq!(s.log_count("relaying handovers from the cluster broker"), 1);
    }
}

/// The target instance stops while mail for it crosses brokers, then comes back. `kill`: the
/// signal; SIGTERM makes it leave (peers hold its mail meanwhile), SIGKILL leaves it a known
/// peer for `peer-timeout` (peers keep handing over to its queue, which keeps the mail).
async fn target_stops(label: &str, signal: &str) {
    let mut cluster = PrivateCluster::start(label, "").await;
    let traffic = common::traffic(&cluster.members(), 6_000, 0, 0, label);
    let batches = traffic.batches;
    let publisher = {
        let clients = cluster.clients.clone();
        let split = PrivateCluster::split(batches);
        actix_rt::spawn(async move { PrivateCluster::publish_on(&clients, split, 1_000).await })
    };
    cluster.wait_delivered(1_500).await;
    let before = cluster.delivered().await;
    cluster.server("b").signal(signal);
    if signal == "-KILL" {
        // Mail for b piles up in its handover queue while b is dead but not yet expired.
        let queue = handover_queue("b");
        let cluster_client = cluster.cluster_client.clone();
        wait_for("mail waiting for b", Duration::from_secs(60), || async {
            common::ready(&cluster_client, &queue).await >= 100
        })
        .await
        .unwrap();
    } else {
        let status = cluster.server("b").wait();
        assert!(status.success(), "b drains and exits 0: {status}");
    }
    cluster.wait_delivered(before + 500).await;
    cluster.server("b").restart();
    let retries = publisher.await.unwrap();
    let acc = cluster.account(&traffic.expected).await;
    let dropped = dropped_duplicates(&cluster);
    report(
        &format!(
            "private brokers: target {} mid-stream, restarted ({dropped} duplicates dropped)",
            if signal == "-KILL" {
                "kill -9"
            } else {
                "SIGTERM"
            }
        ),
        &acc,
        0,
    );
    acc.assert_complete(&cluster.logs());
    assert_eq!(retries, 0);
    assert_eq!(cluster.server("b").log_count("serving"), 2);
    if signal == "-TERM" {
        assert_eq!(acc.duplicates, 0, "{:?}", acc.duplicate_detail);
    }
}

#[actix::test]
async fn the_target_gets_sigterm_while_mail_crosses_brokers() {
    target_stops("private-term", "-TERM").await;
}

#[actix::test]
async fn the_target_is_killed_while_mail_crosses_brokers() {
    target_stops("private-kill", "-KILL").await;
}

/// The cluster broker's user is cut off for 10 s (longer than `peer-timeout`): no handover can
/// cross, and no peer may be forgotten. Nothing is lost and nothing is failed.
#[actix::test]
async fn a_cluster_broker_outage_with_private_brokers_fails_nothing() {
    let mut cluster = PrivateCluster::start("private-cut", "unroutable: fail\n").await;
    let traffic = common::traffic(&cluster.members(), 6_000, 0, 0, "private-cut");
    let publisher = {
        let clients = cluster.clients.clone();
        let split = PrivateCluster::split(traffic.batches);
        actix_rt::spawn(async move { PrivateCluster::publish_on(&clients, split, 300).await })
    };
    cluster.wait_delivered(1_000).await;
    cluster.cluster.revoke_instances();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = cluster.delivered().await;
    cluster.cluster.grant_instances();
    let retries = publisher.await.unwrap();
    let acc = cluster.account(&traffic.expected).await;
    report(
        "private brokers: cluster broker's user cut off for 10 s",
        &acc,
        acc.held + acc.failed,
    );
    acc.assert_complete(&cluster.logs());
    assert_eq!(retries, 0);
    assert_eq!((acc.held, acc.failed), (0, 0), "{}", cluster.logs());
    assert!(
        during > 1_000,
        "each instance's own mail flowed during the outage"
    );
    for s in &cluster.servers {
        assert_eq!(s.log_count("peer fell silent"), 0, "{}", s.name);
    }
}
