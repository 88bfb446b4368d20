//! Broker connection loss on the real RabbitMQ: every connection of the test's vhost is closed
//! twice while three instances route 20,000 messages. Every actor reconnects on its own; no
//! message is lost; duplicates (redeliveries of messages whose ack died with the connection)
//! are counted and reported. And an instance whose deliver queue an operator deleted declares
//! it again.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestVhost;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};
use mailroute_actors::{Instance, InstanceSettings};

fn ips(n: u8) -> Vec<IpAddr> {
    (1..=5).map(|h| IpAddr::from([10, 3, n, h])).collect()
}

fn close_all_connections(vhost: &str) {
    let out = Command::new("rabbitmqctl")
        .args([
            "close_all_connections",
            "--vhost",
            vhost,
            "--limit",
            "1000",
            "mailroute fault test",
        ])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix::test]
async fn closing_all_connections_twice_loses_nothing() {
    let vhost = TestVhost::new("faults");
    let names = ["a", "b", "c"];
    let members = common::members(&names, ips);
    let mut settings = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut s = InstanceSettings::new(*name, ips(i as u8));
        // Timings as users run them: a peer missing three announcements expires, and held
        // mail goes round the retry queue and back while the faults happen.
        s.announce_interval = Duration::from_secs(1);
        s.peer_timeout = Duration::from_secs(3);
        s.hold_time = Duration::from_secs(2);
        s.prefetch = 100;
        settings.push(s);
    }
    // Queues first, traffic second, instances last: the faults then hit a busy cluster.
    let client = vhost.broker().await;
    for s in &settings {
        mailroute_actors::broker::own_queues::declare_queues(s, &client)
            .await
            .unwrap();
    }
    let traffic = common::traffic(&members, 20_000, 5, 1, "fault");
    common::publish_all(&client, &traffic.batches).await;

    let mut instances = Vec::new();
    for s in settings {
        let broker = vhost.broker().await;
        let mut s = s;
        // Hold consuming until the peers are known, or early mail for them would be held.
        s.warmup = Duration::from_secs(2);
        instances.push(Instance::start(s, broker.clone(), broker).await.unwrap());
    }
    let started = Instant::now();
    let consumed = || async {
        instances
            .iter()
            .map(|i| i.stats.snapshot().consumed)
            .sum::<u64>()
    };
    for threshold in [2_000u64, 9_000] {
        wait_for("traffic flowing", Duration::from_secs(120), || async {
            consumed().await >= threshold
        })
        .await
        .unwrap();
        close_all_connections(&vhost.name);
    }
    common::wait_all_settled(&client, &names, &traffic.expected, Duration::from_secs(300)).await;
    let elapsed = started.elapsed();
    for instance in &instances {
        instance.shutdown(Duration::from_secs(30)).await;
    }
    let acc = common::account_stopped(&client, &names, &traffic.expected).await;
    let restarts: u64 = instances.iter().map(|i| i.stats.snapshot().restarts).sum();
    println!(
        "connection loss x2: sent {} | delivered {:?} | held {} | failed {} | lost {} | duplicates {} | actor restarts {} | {:.2?}",
        acc.sent,
        acc.delivered,
        acc.held,
        acc.failed,
        acc.lost.len(),
        acc.duplicates,
        restarts,
        elapsed
    );
    common::report(
        "in-process instances: all connections closed twice (20k queued first)",
        &acc,
        acc.held + acc.failed,
    );
    acc.assert_complete("");
    assert!(restarts >= 2, "the faults must have restarted actors");
}

#[actix::test]
async fn a_deleted_deliver_queue_is_declared_again() {
    let vhost = TestVhost::new("deleted-deliver");
    let ip = IpAddr::from([10, 3, 9, 1]);
    let mut s = InstanceSettings::new("a", vec![ip]);
    s.announce_interval = Duration::from_millis(300);
    s.warmup = Duration::ZERO;
    s.prefetch = 100;
    let (outbox, deliver, retry) = (s.outbox.clone(), s.deliver.clone(), s.retry.clone());
    let broker = vhost.instance_broker().await;
    let a = Instance::start(s, broker.clone(), broker).await.unwrap();
    let client = vhost.broker().await;
    client.delete_queue(&deliver).await.unwrap();
    let batch: Vec<_> = (0..1000)
        .map(|i| {
            let id = format!("d{i}");
            (
                outbox.clone(),
                test_message(&id, mailerq_json(&id, Some(&[ip]), 512)),
            )
        })
        .collect();
    common::publish_all(&client, &batch).await;
    wait_for("outbox empty", Duration::from_secs(60), || async {
        common::ready(&client, &outbox).await == 0
            && common::ready(&client, &deliver).await + common::ready(&client, &retry).await >= 1000
    })
    .await
    .unwrap();
    let mut kept: Vec<String> = common::drain(&client, &deliver)
        .await
        .iter()
        .filter_map(test_id)
        .collect();
    let delivered = kept.len();
    // A publish returned together with another's confirm is held, by the unroutable policy.
    kept.extend(
        common::drain(&client, &retry)
            .await
            .iter()
            .filter_map(test_id),
    );
    kept.sort();
    let before = kept.len();
    kept.dedup();
    assert_eq!(kept.len(), 1000, "every message kept");
    assert_eq!(before, 1000, "none twice");
    let stats = a.stats.snapshot();
    assert!(stats.queues_redeclared >= 1, "{stats:?}");
    println!("deliver queue deleted: {stats:?}");
    println!(
        "RELIABILITY | an instance's own deliver queue deleted (declared again) | 1000 | {delivered} | 0 | 0 | {} |",
        1000 - delivered
    );
    a.shutdown(Duration::from_secs(5)).await;
}
