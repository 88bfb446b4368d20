//! Broker connection loss on the real RabbitMQ: every connection of the test's vhost is closed
//! twice while three instances route 20,000 messages. Every actor reconnects on its own; no
//! message is lost; duplicates (redeliveries of messages whose ack died with the connection)
//! are counted and reported.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestVhost;
use mailroute_actors::testkit::wait_for;
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
        s.announce_interval = Duration::from_millis(300);
        s.peer_timeout = Duration::from_secs(30);
        s.hold_time = Duration::from_secs(600);
        s.prefetch = 100;
        settings.push(s);
    }
    // Queues first, traffic second, instances last: the faults then hit a busy cluster.
    let client = vhost.broker().await;
    for s in &settings {
        mailroute_actors::instance::declare_queues(s, &client)
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
    let acc =
        common::settle_and_account(&client, &names, &traffic.expected, Duration::from_secs(300))
            .await;
    let elapsed = started.elapsed();
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
