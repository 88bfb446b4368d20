//! Three instances in one process on the real RabbitMQ: 10,000 messages injected across the
//! three outboxes, counted by id at their destinations.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Expect, Member, TestVhost};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::{Instance, InstanceSettings};

fn ips(n: u8) -> Vec<IpAddr> {
    (1..=5).map(|h| IpAddr::from([10, 1, n, h])).collect()
}

#[actix::test]
async fn ten_thousand_messages_reach_their_owners() {
    let vhost = TestVhost::new("inprocess");
    let names = ["a", "b", "c"];
    let mut instances = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut s = InstanceSettings::new(*name, ips(i as u8));
        s.announce_interval = Duration::from_millis(500);
        s.peer_timeout = Duration::from_secs(30);
        s.hold_time = Duration::from_secs(600);
        s.prefetch = 500;
        // Each instance its own connection, as separate servers would have.
        let broker = vhost.broker().await;
        instances.push(
            Instance::start(s, broker.clone(), broker)
                .await
                .expect("instance starts"),
        );
    }
    for instance in &instances {
        wait_for("peers", Duration::from_secs(20), || async {
            instance.peers().await.len() == 2
        })
        .await
        .unwrap();
    }
    let members: Vec<Member> = instances
        .iter()
        .enumerate()
        .map(|(i, inst)| Member {
            name: inst.settings.name.clone(),
            outbox: inst.settings.outbox.clone(),
            ips: ips(i as u8),
        })
        .collect();
    let traffic = common::traffic(&members, 10_000, 5, 1, "inproc");
    let client = vhost.broker().await;
    let started = Instant::now();
    common::publish_all(&client, &traffic.batches).await;
    let published = started.elapsed();

    common::wait_settled(
        &client,
        &common::outboxes(&names),
        &common::sinks(&names),
        10_000,
        Duration::from_secs(300),
    )
    .await;
    let settled = started.elapsed();
    let acc =
        common::settle_and_account(&client, &names, &traffic.expected, Duration::from_secs(60))
            .await;
    let handed_over: u64 = instances
        .iter()
        .map(|i| i.stats.snapshot().handed_over)
        .sum();
    println!(
        "in-process cluster on RabbitMQ: sent {} | delivered a={} b={} c={} | handed over {} | held {} | failed {} | duplicates {} | lost {} | published in {:.2?}, all settled in {:.2?}",
        acc.sent,
        acc.delivered.get("a").unwrap_or(&0),
        acc.delivered.get("b").unwrap_or(&0),
        acc.delivered.get("c").unwrap_or(&0),
        handed_over,
        acc.held,
        acc.failed,
        acc.duplicates,
        acc.lost.len(),
        published,
        settled
    );
    acc.assert_complete("");
    assert_eq!(acc.duplicates, 0, "a run without faults has no duplicates");
    assert_eq!(acc.failed_without_reason, 0);
    let wanted_held = traffic
        .expected
        .values()
        .filter(|e| matches!(e, Expect::Held(_)))
        .count();
    assert_eq!(acc.held, wanted_held);
    for i in &instances {
        assert_eq!(common::ready(&client, &i.settings.outbox).await, 0);
    }
}
