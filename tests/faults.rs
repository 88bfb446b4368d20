//! Faults during a steady stream of 20,000 messages through three `mailroute serve` processes on
//! the real RabbitMQ. After each: zero lost, none delivered by a non-owner, duplicates counted.
//! Each test prints its row of the README's reliability table (`RELIABILITY | ...`).

mod common;

use std::time::Duration;

use common::scenario::{Cluster, ips, phantom_peer};
use common::{Expect, report};

const MESSAGES: usize = 20_000;
const RATE: u32 = 2_000;

fn rejected(acc: &common::Accounting) -> usize {
    acc.held + acc.failed
}

#[actix::test]
async fn connections_closed_twice() {
    let mut cluster = Cluster::start("fault-close").await;
    let traffic = common::traffic(&cluster.members(), MESSAGES, 5, 1, "close");
    let client = cluster.client.clone();
    let stream =
        actix_rt::spawn(
            async move { common::publish_stream(&client, traffic.batches, RATE).await },
        );
    for at in [3_000, 9_000] {
        cluster.wait_delivered(at).await;
        cluster.vhost.close_instance_connections();
    }
    stream.await.unwrap();
    let acc = cluster.account(&traffic.expected).await;
    report(
        "all instance connections closed, twice",
        &acc,
        rejected(&acc),
    );
    acc.assert_complete(&cluster.logs());
    assert!(
        cluster
            .servers
            .iter()
            .all(|s| s.log_count("restarting") + s.log_count("consuming again") > 0)
    );
    // No cluster-secret in this cluster: every instance warned about it at start-up.
    assert!(
        cluster
            .servers
            .iter()
            .all(|s| s.log_count("cluster-secret is not set") == 1)
    );
}

#[actix::test]
async fn an_instance_killed_and_restarted() {
    let mut cluster = Cluster::start("fault-kill").await;
    let traffic = common::traffic(&cluster.members(), MESSAGES, 5, 1, "kill");
    let client = cluster.client.clone();
    let stream =
        actix_rt::spawn(
            async move { common::publish_stream(&client, traffic.batches, RATE).await },
        );
    cluster.wait_delivered(4_000).await;
    let a = cluster.server("a");
    a.signal("-KILL");
    a.restart();
    stream.await.unwrap();
    let acc = cluster.account(&traffic.expected).await;
    report(
        "kill -9 one instance mid-stream, restart it",
        &acc,
        rejected(&acc),
    );
    acc.assert_complete(&cluster.logs());
    assert_eq!(cluster.server("a").log_count("serving"), 2);
}

#[actix::test]
async fn an_instance_leaves_with_sigterm() {
    let mut cluster = Cluster::start("fault-term").await;
    let mut traffic = common::traffic(&cluster.members(), MESSAGES, 5, 1, "term");
    let client = cluster.client.clone();
    let batches = std::mem::take(&mut traffic.batches);
    let stream =
        actix_rt::spawn(async move { common::publish_stream(&client, batches, RATE).await });
    cluster.wait_delivered(4_000).await;
    let b = cluster.server("b");
    b.signal("-TERM");
    let status = b.wait();
    assert!(status.success(), "{}", b.log_text());
    assert_eq!(b.log_count("left the cluster"), 1);
    // A publish of the test's own that timed out and was retried may be stored twice.
    let retried = stream.await.unwrap();
    // What waited in b's own outbox when it left is b's to send: start it again to drain.
    cluster.server("b").restart();
    // Mail for b's IPs that reached a or c after b left is held there (unroutable: hold).
    for expect in traffic.expected.values_mut() {
        if *expect == Expect::Delivered("b".into()) {
            *expect = Expect::DeliveredOrHeld("b".into());
        }
    }
    let acc = cluster.account(&traffic.expected).await;
    report(
        "SIGTERM one instance: it drains and leaves",
        &acc,
        rejected(&acc),
    );
    acc.assert_complete(&cluster.logs());
    assert!(
        acc.duplicates <= retried,
        "a graceful leave causes no redelivery: {} duplicates, {retried} test publishes retried: {:?}\n{}",
        acc.duplicates,
        acc.duplicate_detail,
        cluster.logs()
    );
    for s in cluster.servers.iter().filter(|s| s.name != "b") {
        assert!(s.log_count("peer left") >= 1, "{}", s.name);
    }
}

#[actix::test]
async fn a_live_peer_whose_outbox_is_gone() {
    // Held mail stays in the retry queue for the whole test: with the default 2 s hold-time it
    // would go round (retry, outbox, returned, retry) and the count would need a moment when
    // all 1,000 sit in the retry queue at once, which a slow machine may never give.
    let mut cluster =
        Cluster::start_with("fault-returned", "hold-time: 10min\nmax-hold: 1h\n").await;
    let phantom = phantom_peer(cluster.client.clone(), "d", ips(9));
    let members = cluster.members();
    for s in &cluster.servers {
        mailroute_actors::testkit::wait_for("phantom known", Duration::from_secs(30), || async {
            s.log_count("peer joined") >= 3
        })
        .await
        .unwrap();
    }
    let mut traffic = common::traffic(&members, MESSAGES, 5, 1, "returned");
    // Mail for d's IPs, entering through a, b and c.
    let senders = common::members(&["a", "b", "c"], |_| ips(9));
    let for_d = common::traffic(&senders, 1_000, 0, 0, "for-d");
    // Whoever got it holds it: the handover to d is returned by the broker.
    traffic.expected.extend(
        for_d
            .expected
            .into_keys()
            .map(|id| (id, Expect::HeldAnywhere)),
    );
    traffic.batches.extend(for_d.batches);
    let client = cluster.client.clone();
    common::publish_stream(&client, traffic.batches, RATE).await;
    let acc = cluster.account(&traffic.expected).await;
    phantom.abort();
    report(
        "a live peer's outbox deleted (handovers returned)",
        &acc,
        rejected(&acc),
    );
    acc.assert_complete(&cluster.logs());
    assert!(acc.held >= 1_000, "mail for d was held: {}", acc.held);
    assert!(
        cluster
            .servers
            .iter()
            .map(|s| s.log_count("handover returned"))
            .sum::<usize>()
            >= 1_000
    );
}

#[actix::test]
async fn hostile_input_is_rejected_and_counted() {
    use mailroute_actors::broker::{Destination, Message};
    use mailroute_actors::cluster::wire::{Announcement, ClusterMessage, Codec, MAX_FRAME, now_ms};

    let mut cluster = Cluster::start_with("hostile", "cluster-secret: the-real-secret\n").await;
    let client = cluster.client.clone();
    // Forged claims on every instance's IPs, in every form an attacker could try.
    let forged = |name: &str| {
        ClusterMessage::Announcement(Announcement {
            name: name.into(),
            version: "evil".into(),
            started_at: 1,
            sequence: 1,
            local_ips: (0..3).flat_map(ips).collect(),
            outbox: "mallory.outbox".into(),
            broker: client.identity(),
            console_url: None,
            config_hash: String::new(),
            ..Default::default()
        })
    };
    let now = now_ms();
    let real = Codec::new(Some("the-real-secret"), Duration::from_secs(30));
    let classes: Vec<(&str, Vec<u8>)> = vec![
        (
            "unsigned forged announcement",
            Codec::default().encode(&forged("u"), now).unwrap(),
        ),
        (
            "wrongly signed announcement",
            Codec::new(Some("guess"), Duration::from_secs(30))
                .encode(&forged("w"), now)
                .unwrap(),
        ),
        (
            "replayed (stale) announcement",
            real.encode(&forged("s"), now - 600_000).unwrap(),
        ),
        ("garbage cluster frame", b"\x00garbage\xff".to_vec()),
        ("oversized cluster frame", vec![b'M'; MAX_FRAME + 10]),
        ("unsigned JSON reload", br#"{"reload": true}"#.to_vec()),
    ];
    const EACH: usize = 50;
    for (_, frame) in &classes {
        for _ in 0..EACH {
            let m = Message::new(frame.clone(), Default::default());
            client
                .publish(
                    &Destination::exchange("cluster", "announce.mallory"),
                    &m,
                    false,
                )
                .await
                .unwrap();
        }
    }
    // Real mail and malformed mail after the attack: it must reach the real owners.
    let traffic = common::traffic(&cluster.members(), 2_000, 0, 10, "hostile");
    common::publish_all(&client, &traffic.batches).await;
    let acc = cluster.account(&traffic.expected).await;
    let total = classes.len() * EACH;
    for s in &cluster.servers {
        mailroute_actors::testkit::wait_for("drops logged", Duration::from_secs(30), || async {
            s.log_count("cluster message dropped") >= total
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert_eq!(s.log_count("mallory"), 0, "{} took a forged peer", s.name);
        assert_eq!(s.log_count("cluster reload"), 0);
    }
    let a = &cluster.servers[0];
    let log = a.log_text();
    for (class, sent, reason) in [
        (
            "unsigned: forged announcement + MailerQ JSON reload",
            2 * EACH,
            "unsigned cluster message",
        ),
        (classes[1].0, EACH, "bad signature"),
        (classes[2].0, EACH, "stale cluster message"),
        (classes[3].0, EACH, "bad magic"),
        (classes[4].0, EACH, "exceeds the 65536 byte limit"),
    ] {
        let counted = log.matches(reason).count();
        println!(
            "RELIABILITY | hostile: {class} (per instance) | {sent} | 0 | 0 | 0 | {counted} |"
        );
        assert_eq!(counted, sent, "{class}");
    }
    let malformed = traffic
        .expected
        .values()
        .filter(|e| matches!(e, Expect::Failed(_)))
        .count();
    println!(
        "RELIABILITY | hostile: malformed outbox JSON (with x-mailroute-reason) | {malformed} | 0 | 0 | 0 | {} |",
        acc.failed
    );
    report("real mail sent after the attack", &acc, acc.failed);
    acc.assert_complete("");
    assert_eq!(acc.failed, malformed);
    assert_eq!(acc.failed_without_reason, 0);
}
