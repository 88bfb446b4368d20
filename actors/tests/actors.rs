//! Actor-level tests on the in-memory broker: membership, handover, faults and supervision.
//! Every assertion counts messages where they ended up.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailroute_actors::Instance;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::{
    Broker, Destination, HeaderValue, Message, QueueSpec, SharedBroker,
};
use mailroute_actors::cluster::wire::{self, Announcement, ClusterMessage};
use mailroute_actors::mail::routing::{FROM_HEADER, HOPS_HEADER, Owner, REASON_HEADER, Unroutable};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};
use support::*;

#[actix::test]
async fn announcements_reach_every_peer() {
    let broker = MemoryBroker::new("announce");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let b = start(&broker, settings("b", &["10.0.0.2"])).await;
    let c = start(&broker, settings("c", &["10.0.0.3", "2001:db8::3"])).await;
    wait_peers(&[&a, &b, &c], 2).await;
    let names: Vec<String> = a
        .peers()
        .await
        .into_iter()
        .map(|p| p.announcement.name)
        .collect();
    assert_eq!(names, ["b", "c"]);
    // The registry lists a peer at once; the router's table follows within the ownership gap
    // (20 ms), through a message of its own.
    let routed = wait_for("c's IP in a's table", LIMIT, || async {
        a.table.owner(&ip("2001:db8::3")).is_some()
    })
    .await;
    assert!(routed.is_ok(), "{routed:?}");
    match a.table.owner(&ip("2001:db8::3")) {
        Some(Owner::Peer(p)) => assert_eq!(p.outbox, "c.outbox"),
        other => panic!("expected c to own the IP, got {other:?}"),
    }
    assert_eq!(a.table.owner(&ip("10.0.0.1")), Some(Owner::Local));
}

#[actix::test]
async fn a_silent_peer_expires() {
    let broker = MemoryBroker::new("expire");
    let mut s = settings("a", &["10.0.0.1"]);
    s.peer_timeout = Duration::from_millis(300);
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    announce_ghost(&broker, "ghost", "10.9.9.9", "ghost.outbox").await;
    wait_peers(&[&a], 1).await;
    assert!(matches!(
        a.table.owner(&ip("10.9.9.9")),
        Some(Owner::Peer(_))
    ));
    // The ghost never announces again: it must be forgotten after peer-timeout.
    wait_peers(&[&a], 0).await;
    assert_eq!(a.table.owner(&ip("10.9.9.9")), None);
}

#[actix::test]
async fn leaving_removes_a_peer_at_once() {
    let broker = MemoryBroker::new("leave");
    // peer-timeout of a minute: only `Leaving` can remove c within the test's limit.
    let mut bs = settings("b", &["10.0.0.2"]);
    bs.peer_timeout = Duration::from_secs(60);
    let b = start(&broker, bs).await;
    let c = start(&broker, settings("c", &["10.0.0.3"])).await;
    wait_peers(&[&b, &c], 1).await;
    c.shutdown(Duration::from_secs(5)).await;
    wait_for("c removed from b", Duration::from_secs(5), || async {
        b.peers().await.is_empty()
    })
    .await
    .unwrap();
    assert_eq!(b.table.owner(&ip("10.0.0.3")), None);
}

#[actix::test]
async fn a_handover_lands_in_the_peer_outbox_untouched() {
    let broker = MemoryBroker::new("handover");
    broker
        .declare_queue(&QueueSpec::durable("g.outbox"))
        .await
        .unwrap();
    let a = start(&broker, settings_with_ghosts("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    announce_ghost(&broker, "g", "10.0.0.7", "g.outbox").await;
    wait_peers(&[&a], 1).await;
    wait_proven(&a, &["10.0.0.7"]).await;
    for i in 0..20 {
        inject(
            &broker,
            "a.outbox",
            &format!("m{i}"),
            &["192.0.2.1", "10.0.0.7"],
        )
        .await;
    }
    wait_for("20 handovers", LIMIT, || async {
        broker.depth("g.outbox") == 20
    })
    .await
    .unwrap();
    let landed = broker.drain("g.outbox");
    assert_eq!(ids(&landed).len(), 20);
    let first = &landed[0];
    let id = test_id(first).unwrap();
    assert_eq!(
        first.body,
        mailerq_json(&id, Some(&[ip("192.0.2.1"), ip("10.0.0.7")]), 512)
    );
    assert_eq!(first.properties.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        first.header(HOPS_HEADER).and_then(HeaderValue::as_i64),
        Some(1)
    );
    assert_eq!(
        first.header(FROM_HEADER).and_then(HeaderValue::as_str),
        Some("a")
    );
    wait_for("outbox settled", LIMIT, || async {
        broker.depth("a.outbox") == 0
    })
    .await
    .unwrap();
    assert_eq!(a.stats.snapshot().handed_over, 20);
}

#[actix::test]
async fn unroutable_and_malformed_messages_follow_the_policy() {
    let broker = MemoryBroker::new("policy");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let mut fs = settings("f", &["10.0.0.6"]);
    fs.policy.unroutable = Unroutable::Fail;
    let f = start(&broker, fs).await;
    wait_peers(&[&a, &f], 1).await;
    inject(&broker, "a.outbox", "held", &["192.0.2.1"]).await;
    inject(&broker, "f.outbox", "failed", &["192.0.2.1"]).await;
    let garbage = test_message("garbage", b"{\"ips\": [\"10.0.0.1\"".to_vec());
    broker
        .publish(&Destination::queue("a.outbox"), &garbage, true)
        .await
        .unwrap();
    inject(&broker, "a.outbox", "bad-ip", &[]).await;
    let bad_ip = test_message("bad-ip2", br#"{"ips":["10.0.0.1","not-an-ip"]}"#.to_vec());
    broker
        .publish(&Destination::queue("a.outbox"), &bad_ip, true)
        .await
        .unwrap();

    wait_for("all settled", LIMIT, || async {
        broker.depth("a.retry") == 2
            && broker.depth("f.failure") == 1
            && broker.depth("a.failure") == 2
    })
    .await
    .unwrap();
    let reason = |m: &Message| {
        m.header(REASON_HEADER)
            .and_then(HeaderValue::as_str)
            .unwrap()
            .to_string()
    };
    let held = broker.drain("a.retry");
    assert_eq!(
        ids(&held).keys().count(),
        2,
        "held: the unowned one and the one with empty ips"
    );
    assert!(
        reason(&held[0]).contains("no instance owns 192.0.2.1"),
        "{}",
        reason(&held[0])
    );
    let failed_f = broker.drain("f.failure");
    assert!(reason(&failed_f[0]).starts_with("unroutable"));
    let failed_a = broker.drain("a.failure");
    let reasons: HashMap<String, String> = failed_a
        .iter()
        .map(|m| (test_id(m).unwrap(), reason(m)))
        .collect();
    assert!(
        reasons["garbage"].starts_with("malformed message: body is not a JSON object"),
        "{reasons:?}"
    );
    assert!(
        reasons["bad-ip2"].contains("ips[1] is not an IP address"),
        "{reasons:?}"
    );
    assert_eq!(
        failed_a[0].body.len() + failed_a[1].body.len(),
        garbage.body.len() + bad_ip.body.len()
    );
}

#[actix::test]
async fn a_broker_failure_restarts_the_actors_and_loses_nothing() {
    let broker = MemoryBroker::new("faults");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let b = start(&broker, settings("b", &["10.0.0.2"])).await;
    wait_peers(&[&a, &b], 1).await;
    let mut expected = Vec::new();
    for i in 0..400 {
        let id = format!("m{i}");
        let (outbox, target) = if i % 2 == 0 {
            ("a.outbox", "10.0.0.2")
        } else {
            ("b.outbox", "10.0.0.1")
        };
        inject(&broker, outbox, &id, &[target]).await;
        expected.push(id);
        if i == 150 {
            broker.sever();
        }
        if i == 250 {
            broker.fail_next_publishes("a.deliver", 4);
            broker.fail_next_publishes("b.deliver", 3);
        }
    }
    broker.sever();
    wait_for("all delivered", Duration::from_secs(30), || async {
        broker.depth("a.outbox")
            + broker.depth("b.outbox")
            + broker.depth("a.retry")
            + broker.depth("b.retry")
            == 0
            && broker.depth("a.deliver") + broker.depth("b.deliver") >= 400
    })
    .await
    .unwrap();
    let mut delivered = broker.drain("a.deliver");
    let to_a = ids(&delivered);
    let to_b_msgs = broker.drain("b.deliver");
    let to_b = ids(&to_b_msgs);
    delivered.extend(to_b_msgs);
    let counts = ids(&delivered);
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    // Each went to its owner: odd ids were for a, even for b.
    assert!(
        to_a.keys()
            .all(|id| id[1..].parse::<u32>().unwrap() % 2 == 1)
    );
    assert!(
        to_b.keys()
            .all(|id| id[1..].parse::<u32>().unwrap() % 2 == 0)
    );
    let (sa, sb) = (a.stats.snapshot(), b.stats.snapshot());
    assert!(
        sa.restarts + sb.restarts >= 4,
        "actors restarted: {sa:?} {sb:?}"
    );
    assert!(sa.publish_errors + sb.publish_errors >= 7);
    let duplicates = delivered.len() - counts.len();
    println!(
        "delivered {} unique, {duplicates} duplicates after faults",
        counts.len()
    );
}

#[actix::test]
async fn operator_json_hello_makes_everyone_announce_now() {
    let broker = MemoryBroker::new("hello");
    let mut s = settings("a", &["10.0.0.1"]);
    // A long interval: only a hello can cause another announcement within the test.
    s.announce_interval = Duration::from_secs(3600);
    let a = start(&broker, s).await;
    wait_for("first announcement", LIMIT, || async {
        a.stats.snapshot().announcements_sent >= 1
    })
    .await
    .unwrap();
    let before = a.stats.snapshot().announcements_sent;
    let hello = Message::new(&br#"{"hello": true}"#[..], Default::default());
    broker
        .publish(&Destination::exchange("cluster", "hello"), &hello, false)
        .await
        .unwrap();
    wait_for("announcement on hello", LIMIT, || async {
        a.stats.snapshot().announcements_sent > before
    })
    .await
    .unwrap();
}

#[actix::test]
async fn reload_forgets_peers_and_relearns_them() {
    let broker = MemoryBroker::new("reload");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let b = start(&broker, settings("b", &["10.0.0.2"])).await;
    wait_peers(&[&a, &b], 1).await;
    let reload = Message::new(&br#"{"reload": true}"#[..], Default::default());
    broker
        .publish(&Destination::exchange("cluster", "reload"), &reload, false)
        .await
        .unwrap();
    wait_for("both reloaded", LIMIT, || async {
        a.stats.snapshot().reloads == 1 && b.stats.snapshot().reloads == 1
    })
    .await
    .unwrap();
    wait_peers(&[&a, &b], 1).await;
    assert!(matches!(
        a.table.owner(&ip("10.0.0.2")),
        Some(Owner::Peer(_))
    ));
}

#[actix::test]
async fn garbage_and_forged_cluster_messages_are_dropped_and_counted() {
    let broker = MemoryBroker::new("garbage");
    let a = start(&broker, settings_with_ghosts("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    for body in [
        &b"\x00\x01garbage"[..],
        b"MR\x07future",
        b"MR\x01\xff\xff\xff",
        b"{\"nope\": 1}",
    ] {
        let m = Message::new(body.to_vec(), Default::default());
        broker
            .publish(&Destination::exchange("cluster", "announce.x"), &m, false)
            .await
            .unwrap();
    }
    let huge = Message::new(vec![b'M'; wire::MAX_FRAME + 1], Default::default());
    broker
        .publish(
            &Destination::exchange("cluster", "announce.x"),
            &huge,
            false,
        )
        .await
        .unwrap();
    // A peer claiming a's own IP must not take its mail.
    announce_ghost(&broker, "thief", "10.0.0.1", "thief.outbox").await;
    wait_for("drops counted", LIMIT, || async {
        let s = a.stats.snapshot();
        s.dropped == 5 && s.ownership_conflicts >= 1
    })
    .await
    .unwrap();
    assert_eq!(a.table.owner(&ip("10.0.0.1")), Some(Owner::Local));
    inject(&broker, "a.outbox", "mine", &["10.0.0.1"]).await;
    wait_for("delivered locally", LIMIT, || async {
        broker.depth("a.deliver") == 1
    })
    .await
    .unwrap();
}

#[actix::test]
async fn a_returned_handover_follows_the_unroutable_policy() {
    let broker = MemoryBroker::new("returned");
    let a = start(&broker, settings_with_ghosts("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    // The peer is alive in the registry, but its outbox queue does not exist.
    announce_ghost(&broker, "g", "10.0.0.7", "g.missing-outbox").await;
    wait_peers(&[&a], 1).await;
    for i in 0..5 {
        inject(&broker, "a.outbox", &format!("r{i}"), &["10.0.0.7"]).await;
    }
    wait_for("held", LIMIT, || async { broker.depth("a.retry") == 5 })
        .await
        .unwrap();
    let held = broker.drain("a.retry");
    let reason = held[0]
        .header(REASON_HEADER)
        .and_then(HeaderValue::as_str)
        .unwrap();
    assert!(
        reason.contains("handover to g returned by the broker"),
        "{reason}"
    );
    // The held copy is the original: no hop was added by the failed handover.
    assert_eq!(held[0].header(HOPS_HEADER), None);
    assert_eq!(a.stats.snapshot().handover_returned, 5);
    assert_eq!(broker.depth("a.outbox"), 0);
}

#[actix::test]
async fn with_a_secret_only_signed_fresh_messages_count() {
    use mailroute_actors::cluster::wire::Codec;
    let broker = MemoryBroker::new("signed");
    let secret = Codec::new(Some("cluster-secret"), Duration::from_secs(30));
    let mut sa = settings("a", &["10.0.0.1"]);
    sa.codec = secret.clone();
    let mut sb = settings("b", &["10.0.0.2"]);
    sb.codec = secret.clone();
    let a = start(&broker, sa).await;
    let b = start(&broker, sb).await;
    wait_peers(&[&a, &b], 1).await;

    // A forger without the secret, one with a wrong secret, and a replay of a stale frame.
    let forged = ClusterMessage::Announcement(Announcement {
        name: "mallory".into(),
        version: "x".into(),
        started_at: 1,
        sequence: 1,
        local_ips: vec![ip("10.0.0.66")],
        outbox: "mallory.outbox".into(),
        broker: broker.identity(),
        console_url: None,
        config_hash: String::new(),
        ..Default::default()
    });
    let now = mailroute_actors::cluster::wire::now_ms();
    let frames = [
        Codec::default().encode(&forged, now).unwrap(),
        Codec::new(Some("guess"), Duration::from_secs(30))
            .encode(&forged, now)
            .unwrap(),
        secret.encode(&forged, now - 120_000).unwrap(),
        br#"{"reload": true}"#.to_vec(),
    ];
    for frame in frames {
        broker
            .publish(
                &Destination::exchange("cluster", "announce.mallory"),
                &Message::new(frame, Default::default()),
                false,
            )
            .await
            .unwrap();
    }
    wait_for("drops counted", LIMIT, || async {
        let s = a.stats.snapshot();
        s.dropped == 4
    })
    .await
    .unwrap();
    let s = &a.stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        s.dropped_unsigned.load(Relaxed),
        2,
        "unsigned announcement and unsigned JSON reload"
    );
    assert_eq!(s.dropped_bad_signature.load(Relaxed), 1);
    assert_eq!(s.dropped_stale.load(Relaxed), 1);
    assert_eq!(a.stats.snapshot().reloads, 0);
    let names: Vec<String> = a
        .peers()
        .await
        .into_iter()
        .map(|p| p.announcement.name)
        .collect();
    assert_eq!(names, ["b"]);
    assert_eq!(a.table.owner(&ip("10.0.0.66")), None);
}

/// Acks go out as `multiple` acks: one must never cover a delivery whose nack is still on its
/// way, or that message would be acked and lost instead of requeued.
#[actix::test]
async fn a_multiple_ack_never_covers_a_requeued_delivery() {
    let memory = MemoryBroker::new("slow-nacks");
    let broker: SharedBroker = Arc::new(TweakedBroker::with_nack_delay(
        &memory,
        Duration::from_millis(30),
    ));
    let a = Instance::start(settings("a", &["10.0.0.1"]), broker.clone(), broker)
        .await
        .unwrap();
    wait_listening(&a).await;
    // The first publishes fail, so their nacks are still on the way while the messages
    // behind them are confirmed and acked.
    memory.fail_next_publishes("a.deliver", 6);
    for i in 0..60 {
        inject(&memory, "a.outbox", &format!("m{i}"), &["10.0.0.1"]).await;
    }
    wait_for("all delivered", LIMIT, || async {
        memory.depth("a.outbox") == 0 && memory.depth("a.deliver") >= 60
    })
    .await
    .unwrap();
    let delivered = memory.drain("a.deliver");
    let counts = ids(&delivered);
    assert_eq!(counts.len(), 60, "every message delivered");
    assert_eq!(delivered.len(), 60, "and none twice");
    assert!(a.stats.snapshot().publish_errors >= 6);
}

#[actix::test]
async fn a_returned_handover_is_held_with_its_hop_undone() {
    let memory = MemoryBroker::new("returned");
    let broker: SharedBroker = Arc::new(memory.clone());
    let mut s = settings_with_ghosts("a", &["10.0.0.1"]);
    s.prefetch = 1; // one at a time, so the order of publishes is known
    let a = Instance::start(s, broker.clone(), broker).await.unwrap();
    wait_listening(&a).await;
    announce_ghost(&memory, "g", "10.0.0.7", "g.missing-outbox").await;
    wait_peers(&[&a], 1).await;
    inject(&memory, "a.outbox", "to-g", &["10.0.0.7"]).await;
    inject(&memory, "a.outbox", "local", &["10.0.0.1"]).await;
    wait_for("both settled", LIMIT, || async {
        memory.depth("a.retry") == 1 && memory.depth("a.deliver") == 1
    })
    .await
    .unwrap();
    let held = memory.drain("a.retry");
    assert_eq!(test_id(&held[0]).as_deref(), Some("to-g"));
    assert_eq!(
        held[0].header(HOPS_HEADER),
        None,
        "the handover's hop is undone"
    );
    assert_eq!(
        test_id(&memory.drain("a.deliver")[0]).as_deref(),
        Some("local")
    );
    assert_eq!(a.stats.snapshot().handover_returned, 1);
}

#[actix::test]
async fn a_second_claim_on_a_live_peers_ip_does_not_take_it_over() {
    let broker = MemoryBroker::new("conflict");
    broker
        .declare_queue(&QueueSpec::durable("first.outbox"))
        .await
        .unwrap();
    broker
        .declare_queue(&QueueSpec::durable("second.outbox"))
        .await
        .unwrap();
    let a = start(&broker, settings_with_ghosts("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    announce_ghost(&broker, "first", "10.0.0.9", "first.outbox").await;
    wait_peers(&[&a], 1).await;
    announce_ghost(&broker, "second", "10.0.0.9", "second.outbox").await;
    wait_peers(&[&a], 2).await;
    wait_proven(&a, &["10.0.0.9"]).await;
    // Ownership is published at most once per 20 ms: a burst of announcements costs one.
    wait_for("the conflict seen", LIMIT, || async {
        a.stats.snapshot().ownership_conflicts >= 1
    })
    .await
    .unwrap();
    inject(&broker, "a.outbox", "contested", &["10.0.0.9"]).await;
    wait_for("handed over", LIMIT, || async {
        broker.depth("first.outbox") == 1
    })
    .await
    .unwrap();
    assert_eq!(broker.depth("second.outbox"), 0, "the older claim holds");
}

/// An operator deleted the deliver queue: the publisher declares it again instead of requeueing
/// the originals until someone notices.
#[actix::test]
async fn a_deleted_own_queue_is_declared_again() {
    let broker = MemoryBroker::new("deleted-deliver");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    broker.delete_queue("a.deliver").await.unwrap();
    for i in 0..20 {
        inject(&broker, "a.outbox", &format!("m{i}"), &["10.0.0.1"]).await;
    }
    wait_for("all delivered", LIMIT, || async {
        broker.depth("a.deliver") == 20
    })
    .await
    .unwrap();
    let s = a.stats.snapshot();
    assert!(s.queues_redeclared >= 1, "{s:?}");
    assert_eq!(s.publish_errors, 0, "{s:?}");
    assert_eq!(ids(&broker.drain("a.deliver")).len(), 20);
}

/// A destination that keeps failing is retried after a delay, not in a loop at full speed:
/// a message failing a second and third time costs at least two of the shortest delays.
#[actix::test]
async fn failed_outcomes_are_retried_with_backoff() {
    let broker = MemoryBroker::new("backoff");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    broker.fail_next_publishes("a.deliver", 3);
    let started = std::time::Instant::now();
    inject(&broker, "a.outbox", "m", &["10.0.0.1"]).await;
    wait_for("delivered", LIMIT, || async {
        broker.depth("a.deliver") == 1
    })
    .await
    .unwrap();
    let s = a.stats.snapshot();
    assert_eq!((s.publish_errors, s.consumed), (3, 4), "{s:?}");
    // The first requeue is at once; the message failing again waits at least 100 ms each time.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "retried after {:?}",
        started.elapsed()
    );
}

/// A peer whose cluster settings differ (another config hash) is warned of and counted once,
/// not on every announcement.
#[actix::test]
async fn a_peer_with_other_cluster_settings_is_flagged_once() {
    let broker = MemoryBroker::new("drift");
    let mut s = settings_with_ghosts("a", &["10.0.0.1"]);
    s.config_hash = "aaaa".into();
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    let mut same = announce_ghost(&broker, "same", "10.0.0.7", "same.outbox").await;
    same.config_hash = "aaaa".into();
    reannounce_ghost(&broker, &mut same).await;
    let mut other = announce_ghost(&broker, "other", "10.0.0.8", "other.outbox").await;
    other.config_hash = "bbbb".into();
    for _ in 0..3 {
        reannounce_ghost(&broker, &mut other).await;
    }
    wait_for("drift counted", LIMIT, || async {
        a.stats.snapshot().config_drift >= 1
    })
    .await
    .unwrap();
    wait_for("all announcements read", LIMIT, || async {
        a.stats.snapshot().announcements_received >= 7
    })
    .await
    .unwrap();
    assert_eq!(a.stats.snapshot().config_drift, 1);
}

/// Two peers claiming one IP is a conflict while it lasts: counted as a gauge, said again now
/// and then (every 30 announce intervals here: 3 s), and gone when one of them leaves.
#[actix::test]
async fn an_ip_conflict_is_flagged_while_it_lasts() {
    let broker = MemoryBroker::new("ip-conflict");
    let a = start(&broker, settings_with_ghosts("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    announce_ghost(&broker, "first", "10.0.0.9", "first.outbox").await;
    let second = announce_ghost(&broker, "second", "10.0.0.9", "second.outbox").await;
    wait_for("conflict seen", LIMIT, || async {
        a.stats.snapshot().ip_conflicts == 1
    })
    .await
    .unwrap();
    wait_for("conflict said again", LIMIT, || async {
        a.stats.snapshot().conflict_reminders >= 1
    })
    .await
    .unwrap();
    publish_cluster(
        &broker,
        &ClusterMessage::Leaving {
            name: second.name.clone(),
            started_at: second.started_at,
        },
    )
    .await;
    wait_for("conflict gone", LIMIT, || async {
        a.stats.snapshot().ip_conflicts == 0
    })
    .await
    .unwrap();
}

/// Two instances that heard two claimants of one IP in opposite orders route it to the same
/// one: the claim of the earlier announced start holds, whoever was heard first. (Failed
/// before: each registry kept the claim it heard first.)
#[actix::test]
async fn an_ip_conflict_has_one_winner_whatever_order_it_was_heard_in() {
    let claim = |name: &str, started_at: u64| Announcement {
        name: name.into(),
        version: "test".into(),
        started_at,
        sequence: 1,
        local_ips: vec![ip("10.0.0.9")],
        outbox: format!("{name}.outbox"),
        broker: "elsewhere".into(),
        ..Default::default()
    };
    let (older, newer) = (claim("zed", 1_000), claim("amy", 2_000));
    let mut owners = Vec::new();
    for (label, order) in [("x", [&newer, &older]), ("y", [&older, &newer])] {
        let broker = MemoryBroker::new(format!("conflict-order-{label}"));
        let instance = start(&broker, settings(label, &["10.0.0.1"])).await;
        wait_listening(&instance).await;
        for (n, a) in order.into_iter().enumerate() {
            publish_cluster(&broker, &ClusterMessage::Announcement(a.clone())).await;
            wait_peers(&[&instance], n + 1).await;
        }
        wait_for("the conflict seen", LIMIT, || async {
            instance.stats.snapshot().ownership_conflicts >= 1
        })
        .await
        .unwrap();
        let owner = || match instance.table.owner(&ip("10.0.0.9")) {
            Some(Owner::Peer(route)) => route.name.clone(),
            other => format!("{other:?}"),
        };
        // The router takes the table a moment after the registry decides.
        let _ = wait_for(
            "the earlier start owns the IP",
            Duration::from_secs(2),
            || async { owner() == "zed" },
        )
        .await;
        owners.push(owner());
    }
    assert_eq!(owners, ["zed", "zed"]);
}
