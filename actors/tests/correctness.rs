//! The correctness review's findings, each as the test that failed before its fix: mail that
//! could be lost, wrongly failed or stalled. All on the in-memory broker, with short timings.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroute_actors::Instance;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::{Broker, Destination, HeaderValue, Message, QueueSpec};
use mailroute_actors::cluster::wire::{ClusterMessage, now_ms};
use mailroute_actors::mail::routing::{
    Decision, HELD_SINCE_HEADER, ID_HEADER, REASON_HEADER, Unroutable, Via,
};
use mailroute_actors::messages::{Dispatch, HearingNow, Run, Settled};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};
use support::*;

fn header_str(m: &Message, name: &str) -> Option<String> {
    m.header(name)
        .and_then(HeaderValue::as_str)
        .map(str::to_string)
}

/// 2. When *this* instance cannot hear the cluster (its cluster link is cut for longer than
/// peer-timeout), its peers must not expire: mail for their IPs still reaches them, none is
/// failed. Mail nobody owns waits until the cluster is heard again, then follows the policy.
#[actix::test]
async fn a_deaf_instance_keeps_its_peers_and_fails_nothing() {
    let local = MemoryBroker::new("deaf-local");
    let cluster_memory = MemoryBroker::new("deaf-cluster");
    let link = Arc::new(TweakedBroker::new(&cluster_memory));
    let mut sa = settings("a", &["10.0.0.1"]);
    sa.peer_timeout = Duration::from_millis(300);
    sa.policy.unroutable = Unroutable::Fail;
    let a = Instance::start(sa, Arc::new(local.clone()), link.clone())
        .await
        .unwrap();
    let mut sb = settings("b", &["10.0.0.2"]);
    sb.peer_timeout = Duration::from_millis(300);
    let b = Instance::start(
        sb,
        Arc::new(local.clone()),
        Arc::new(cluster_memory.clone()),
    )
    .await
    .unwrap();
    wait_peers(&[&a, &b], 1).await;

    link.set_cut(true);
    // Three peer-timeouts of deafness.
    tokio::time::sleep(Duration::from_millis(900)).await;
    for i in 0..50 {
        inject(&local, "a.outbox", &format!("b{i}"), &["10.0.0.2"]).await;
    }
    for i in 0..5 {
        inject(&local, "a.outbox", &format!("nobody{i}"), &["192.0.2.1"]).await;
    }
    wait_for("mail for b handed over while deaf", LIMIT, || async {
        local.depth("b.deliver") == 50
    })
    .await
    .unwrap();
    assert_eq!(local.depth("a.failure"), 0, "nothing failed while deaf");
    assert!(a.stats.snapshot().deferred >= 5);
    link.set_cut(false);
    wait_for("unowned mail failed once heard", LIMIT, || async {
        local.depth("a.failure") == 5
    })
    .await
    .unwrap();
    let failed = local.drain("a.failure");
    assert!(
        failed
            .iter()
            .all(|m| test_id(m).unwrap().starts_with("nobody"))
    );
    assert_eq!(a.peers().await.len(), 1, "b is still known");
}

/// 2. A reload re-validates peers instead of forgetting them first: mail for a live peer that
/// takes a moment to re-announce is never failed meanwhile, and a peer that does not
/// re-announce is forgotten at the end of the window, though its peer-timeout is a minute.
#[actix::test]
async fn reloads_neither_fail_mail_for_live_peers_nor_keep_dead_ones() {
    let broker = MemoryBroker::new("reloads");
    broker
        .declare_queue(&QueueSpec::durable("g.outbox"))
        .await
        .unwrap();
    let mut s = settings_with_ghosts("a", &["10.0.0.1"]);
    s.policy.unroutable = Unroutable::Fail;
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    let mut live = announce_ghost(&broker, "g", "10.0.0.7", "g.outbox").await;
    announce_ghost(&broker, "dead", "10.0.0.9", "dead.outbox").await;
    wait_peers(&[&a], 2).await;
    wait_proven(&a, &["10.0.0.7", "10.0.0.9"]).await;
    for round in 0..3 {
        publish_cluster(&broker, &ClusterMessage::Reload { from: None }).await;
        wait_for("reload taken", LIMIT, || async {
            a.stats.snapshot().reloads == round + 1
        })
        .await
        .unwrap();
        for i in 0..20 {
            inject(&broker, "a.outbox", &format!("g{round}-{i}"), &["10.0.0.7"]).await;
        }
        // Within the rejoin window (two announce intervals).
        tokio::time::sleep(Duration::from_millis(120)).await;
        reannounce_ghost(&broker, &mut live).await;
    }
    wait_for("all of g's mail handed over", LIMIT, || async {
        broker.depth("g.outbox") == 60
    })
    .await
    .unwrap();
    assert_eq!(broker.depth("a.failure"), 0);
    wait_peers(&[&a], 1).await;
    assert_eq!(a.peers().await[0].announcement.name, "g");
    assert_eq!(a.stats.snapshot().reloads, 3);
}

/// 3. A drain cancels the consumer first: with a full outbox it does not spin on requeued
/// messages until the grace runs out, and nothing is lost or duplicated.
#[actix::test]
async fn a_drain_with_a_full_outbox_stops_at_once() {
    let broker = MemoryBroker::new("drain");
    let mut s = settings("a", &["10.0.0.1"]);
    s.prefetch = 100;
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    for i in 0..5_000 {
        inject(&broker, "a.outbox", &format!("m{i}"), &["10.0.0.1"]).await;
    }
    wait_for("some delivered", LIMIT, || async {
        broker.depth("a.deliver") >= 200
    })
    .await
    .unwrap();
    let started = Instant::now();
    a.shutdown(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    let delivered = broker.depth("a.deliver");
    assert_eq!(delivered + broker.depth("a.outbox"), 5_000);
    let s = a.stats.snapshot();
    // Every delivery taken after the drain began went back once, not round and round.
    assert!(
        s.consumed <= delivered as u64 + 200,
        "{s:?}, delivered {delivered}"
    );
    let ids = ids(&broker.drain("a.deliver"));
    assert_eq!(ids.len(), delivered, "no duplicates");
}

/// 4. A requeue waiting out its backoff does not hold back the acks of everything behind
/// it: mail for the other destinations flows while one destination keeps failing.
#[actix::test]
async fn a_failing_destination_does_not_stall_the_others() {
    let broker = MemoryBroker::new("stall");
    broker
        .declare_queue(&QueueSpec::durable("g.outbox"))
        .await
        .unwrap();
    let mut s = settings_with_ghosts("a", &["10.0.0.1"]);
    s.prefetch = 10;
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    announce_ghost(&broker, "g", "10.0.0.7", "g.outbox").await;
    wait_peers(&[&a], 1).await;
    wait_proven(&a, &["10.0.0.7"]).await;
    broker.fail_next_publishes("g.outbox", 1_000_000);
    inject(&broker, "a.outbox", "to-g", &["10.0.0.7"]).await;
    // Let it fail a few times, so its backoff has grown.
    wait_for("g failing", LIMIT, || async {
        a.stats.snapshot().publish_errors >= 4
    })
    .await
    .unwrap();
    for i in 0..400 {
        inject(&broker, "a.outbox", &format!("m{i}"), &["10.0.0.1"]).await;
    }
    wait_for("local mail delivered and acked", LIMIT, || async {
        broker.depth("a.deliver") == 400 && broker.depth("a.outbox") <= 1
    })
    .await
    .unwrap();
    assert_eq!(broker.depth("g.outbox"), 0);
    assert_eq!(a.stats.snapshot().held, 0);
}

/// 5. The same message always carries the same `x-mailroute-id`, on every outcome: two
/// copies of one message (an injector's retry) get one id, so a receiver can drop one.
#[actix::test]
async fn the_same_message_always_gets_the_same_id() {
    let broker = MemoryBroker::new("ids");
    broker
        .declare_queue(&QueueSpec::durable("g.outbox"))
        .await
        .unwrap();
    let a = start(&broker, settings_with_ghosts("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    announce_ghost(&broker, "g", "10.0.0.7", "g.outbox").await;
    wait_peers(&[&a], 1).await;
    wait_proven(&a, &["10.0.0.7"]).await;
    let body = mailerq_json("same", Some(&[ip("10.0.0.7")]), 256);
    let without_id = Message::new(body, Default::default());
    // The first copy's handover fails once and is requeued: the retry keeps the id too.
    broker.fail_next_publishes("g.outbox", 1);
    for _ in 0..2 {
        broker
            .publish(&Destination::queue("a.outbox"), &without_id, true)
            .await
            .unwrap();
    }
    inject(&broker, "a.outbox", "local", &["10.0.0.1"]).await;
    inject(&broker, "a.outbox", "held", &["192.0.2.1"]).await;
    wait_for("all settled", LIMIT, || async {
        broker.depth("g.outbox") == 2
            && broker.depth("a.deliver") == 1
            && broker.depth("a.retry") == 1
    })
    .await
    .unwrap();
    let copies = broker.drain("g.outbox");
    let first = header_str(&copies[0], ID_HEADER).expect("an id");
    assert_eq!(
        header_str(&copies[1], ID_HEADER).as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        header_str(&broker.drain("a.deliver")[0], ID_HEADER).as_deref(),
        Some("local"),
        "the message-id property is the id"
    );
    assert_eq!(
        header_str(&broker.drain("a.retry")[0], ID_HEADER).as_deref(),
        Some("held")
    );
}

/// 7. `x-mailroute-held-since` is an AMQP timestamp in seconds, and a message that was held
/// and then handed over carries no `x-mailroute-reason`.
#[actix::test]
async fn held_mail_has_seconds_and_loses_its_reason_when_routed() {
    let broker = MemoryBroker::new("held");
    broker
        .declare_queue(&QueueSpec::durable("g.outbox"))
        .await
        .unwrap();
    let mut s = settings_with_ghosts("a", &["10.0.0.1"]);
    s.hold_time = Duration::from_millis(300);
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    wait_for("cluster heard", LIMIT, || async {
        a.stats.snapshot().announcements_received >= 3
    })
    .await
    .unwrap();
    inject(&broker, "a.outbox", "m", &["10.0.0.7"]).await;
    wait_for("held", LIMIT, || async { a.stats.snapshot().held >= 1 })
        .await
        .unwrap();
    announce_ghost(&broker, "g", "10.0.0.7", "g.outbox").await;
    wait_for("handed over after the hold", LIMIT, || async {
        broker.depth("g.outbox") == 1
    })
    .await
    .unwrap();
    let m = &broker.drain("g.outbox")[0];
    let since = match m.header(HELD_SINCE_HEADER) {
        Some(HeaderValue::Timestamp(t)) => *t,
        other => panic!("held-since: {other:?}"),
    };
    let now_s = now_ms() / 1000;
    assert!(since <= now_s && since + 60 > now_s, "{since} vs {now_s}");
    assert_eq!(m.header(REASON_HEADER), None);
}

/// 8. A peer that leaves or falls silent gets its confirm channel closed: the publisher
/// releases its outbox on the broker it publishes there with.
#[actix::test]
async fn a_departed_peer_releases_its_destination() {
    let memory = MemoryBroker::new("release");
    let broker = Arc::new(TweakedBroker::new(&memory));
    let mut s = settings("a", &["10.0.0.1"]);
    s.peer_timeout = Duration::from_millis(300);
    let a = Instance::start(s, broker.clone(), broker.clone())
        .await
        .unwrap();
    wait_listening(&a).await;
    let left = announce_ghost(&memory, "left", "10.0.0.7", "left.outbox").await;
    announce_ghost(&memory, "silent", "10.0.0.8", "silent.outbox").await;
    wait_peers(&[&a], 2).await;
    wait_proven(&a, &["10.0.0.7", "10.0.0.8"]).await;
    publish_cluster(
        &memory,
        &ClusterMessage::Leaving {
            name: left.name.clone(),
            started_at: left.started_at,
        },
    )
    .await;
    // Their outboxes; their handover queues were released when they proved to be here.
    let outboxes = || {
        let mut released: Vec<String> = broker
            .released
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.routing_key.clone())
            .filter(|key| key.ends_with(".outbox"))
            .collect();
        released.sort();
        released
    };
    wait_for("both released", LIMIT, || async { outboxes().len() == 2 })
        .await
        .unwrap();
    let released = outboxes();
    assert_eq!(released, ["left.outbox", "silent.outbox"]);
}

/// #10: a second copy of a message already delivered here (a redelivery upstream, an
/// injector's retry) is acked without being routed again, and counted; held mail coming back
/// on purpose is not taken for one.
#[actix::test]
async fn a_second_copy_of_delivered_mail_is_dropped() {
    let broker = MemoryBroker::new("dedupe");
    let mut s = settings("a", &["10.0.0.1"]);
    s.hold_time = Duration::from_millis(200);
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    inject(&broker, "a.outbox", "once", &["10.0.0.1"]).await;
    wait_for("delivered", LIMIT, || async {
        broker.depth("a.deliver") == 1
    })
    .await
    .unwrap();
    inject(&broker, "a.outbox", "once", &["10.0.0.1"]).await;
    inject(&broker, "a.outbox", "held", &["192.0.2.1"]).await;
    wait_for("dropped, and held twice", LIMIT, || async {
        let s = a.stats.snapshot();
        s.duplicates_dropped == 1 && s.held >= 2
    })
    .await
    .unwrap();
    assert_eq!(broker.depth("a.deliver"), 1);
    assert_eq!(a.stats.snapshot().delivered, 1);
}

/// #18: mail waiting in the router (the cluster not heard) when the outbox consumer restarts
/// went back to the outbox with the old consumer's channel, and comes again. The router drops
/// the old run's copies, so each message is held once, from its redelivery, not twice.
#[actix::test]
async fn a_consumer_restart_drops_the_old_runs_mail_from_the_router() {
    let local_memory = MemoryBroker::new("rerun-local");
    let local = Arc::new(TweakedBroker::new(&local_memory));
    let cluster_memory = MemoryBroker::new("rerun-cluster");
    let cluster = Arc::new(TweakedBroker::new(&cluster_memory));
    let a = Instance::start(settings("a", &["10.0.0.1"]), local.clone(), cluster.clone())
        .await
        .unwrap();
    wait_listening(&a).await;
    cluster.set_cut(true);
    wait_for("deaf", LIMIT, || async {
        a.registry.send(HearingNow).await.map(|h| h.0) == Ok(false)
    })
    .await
    .unwrap();
    const WAITING: usize = 20;
    for i in 0..WAITING {
        inject(&local_memory, "a.outbox", &format!("w{i}"), &["192.0.2.1"]).await;
    }
    wait_for("all waiting in the router", LIMIT, || async {
        a.stats.snapshot().deferred == WAITING as u64
    })
    .await
    .unwrap();
    // The outbox link drops: the broker takes the deliveries back and sends them again.
    local.set_cut(true);
    wait_for("requeued", LIMIT, || async {
        local_memory.peek("a.outbox").len() == WAITING
    })
    .await
    .unwrap();
    local.set_cut(false);
    wait_for("redelivered and waiting", LIMIT, || async {
        a.stats.snapshot().deferred == 2 * WAITING as u64
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} outbox {}",
            a.stats.snapshot(),
            local_memory.depth("a.outbox")
        )
    });
    cluster.set_cut(false);
    wait_for("heard again", LIMIT, || async {
        a.registry.send(HearingNow).await.map(|h| h.0) == Ok(true)
    })
    .await
    .unwrap();
    // Routed after whatever waited: once it is held, the rest is too.
    inject(&local_memory, "a.outbox", "last", &["192.0.2.1"]).await;
    wait_for("the last one held", LIMIT, || async {
        local_memory
            .peek("a.retry")
            .iter()
            .any(|m| test_id(m).as_deref() == Some("last"))
    })
    .await
    .unwrap();
    let held = ids(&local_memory.drain("a.retry"));
    assert_eq!(held.len(), WAITING + 1, "{held:?}");
    let twice: Vec<_> = held.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "held twice: {twice:?}");
    assert_eq!(local_memory.depth("a.outbox"), 0);
}

/// #18: a relay publish still retrying when the relay's consumer restarts gives up: the broker
/// requeued its delivery for the new consumer, and one copy reaches the outbox, not two.
#[actix::test]
async fn a_relay_restart_ends_the_old_runs_retries() {
    let local = MemoryBroker::new("relay-rerun-local");
    let cluster_memory = MemoryBroker::new("relay-rerun-cluster");
    let cluster = Arc::new(TweakedBroker::new(&cluster_memory));
    let a = Instance::start(
        settings("a", &["10.0.0.1"]),
        Arc::new(local.clone()),
        cluster.clone(),
    )
    .await
    .unwrap();
    wait_listening(&a).await;
    local.fail_next_publishes("a.outbox", 3);
    inject(
        &cluster_memory,
        "mailroute.handover.a",
        "handed",
        &["10.0.0.1"],
    )
    .await;
    wait_for("the relay retrying", LIMIT, || async {
        a.stats.snapshot().publish_errors >= 1
    })
    .await
    .unwrap();
    cluster.set_cut(true);
    wait_for("requeued", LIMIT, || async {
        cluster_memory.peek("mailroute.handover.a").len() == 1
    })
    .await
    .unwrap();
    cluster.set_cut(false);
    wait_for("relayed once, the old retry ended", LIMIT, || async {
        let s = a.stats.snapshot();
        s.relayed + s.stale_dropped >= 2 && local.depth("a.deliver") == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", a.stats.snapshot()));
    let s = a.stats.snapshot();
    assert_eq!((s.relayed, s.duplicates_dropped), (1, 0), "{s:?}");
    assert_eq!(local.depth("a.outbox"), 0);
}

/// Takes the publisher's answers: which ids it settled.
struct Answers(tokio::sync::mpsc::UnboundedSender<(u64, bool)>);

impl actix::Actor for Answers {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Settled> for Answers {
    type Result = ();

    fn handle(&mut self, settled: Settled, _: &mut actix::Context<Self>) {
        let _ = self.0.send((settled.id, settled.result.is_ok()));
    }
}

/// A publisher of instance "a", and where its answers go.
struct UnderTest {
    publisher: actix::Addr<mailroute_actors::mail::handover_publisher::HandoverPublisher>,
    reply: actix::Recipient<Settled>,
    /// Each settled id, and whether it was confirmed.
    settled: tokio::sync::mpsc::UnboundedReceiver<(u64, bool)>,
    stats: Arc<mailroute_actors::stats::Stats>,
}

fn publisher_on(broker: mailroute_actors::broker::SharedBroker) -> UnderTest {
    use actix::Actor;
    let stats = Arc::new(mailroute_actors::stats::Stats::default());
    let recent = Arc::new(mailroute_actors::mail::recent_ids::RecentIds::new(
        100,
        Duration::from_secs(60),
    ));
    let publisher = mailroute_actors::mail::handover_publisher::HandoverPublisher::new(
        &settings("a", &["10.0.0.1"]),
        broker.clone(),
        broker,
        stats.clone(),
        recent,
    )
    .start();
    let (tx, settled) = tokio::sync::mpsc::unbounded_channel();
    UnderTest {
        publisher,
        reply: Answers(tx).start().recipient(),
        settled,
        stats,
    }
}

fn dispatch(id: u64, run: &Run, decision: Decision, reply: &actix::Recipient<Settled>) -> Dispatch {
    Dispatch {
        id,
        run: run.clone(),
        decision,
        message: test_message(&format!("m{id}"), mailerq_json("m", None, 64)),
        reply: reply.clone(),
    }
}

/// #18: an outcome that waited in the publisher's mailbox while its consumer restarted is not
/// published: the broker has requeued its delivery, and the new run routes it again. (Before,
/// the old run's copy was published too: two copies in the deliver queue here, or one beside
/// a handover of the redelivered original.)
#[actix::test]
async fn the_publisher_drops_the_outcomes_of_an_ended_consumer_run() {
    let memory = MemoryBroker::new("stale-dispatch");
    memory
        .declare_queue(&QueueSpec::durable("a.deliver"))
        .await
        .unwrap();
    let UnderTest {
        publisher,
        reply,
        mut settled,
        stats,
    } = publisher_on(Arc::new(memory.clone()));
    let (ended, live) = (Run::default(), Run::default());
    ended.end();
    publisher.do_send(dispatch(1, &ended, Decision::Deliver, &reply));
    publisher.do_send(dispatch(2, &live, Decision::Deliver, &reply));
    // One mailbox, in order: once the second is settled the first was handled.
    let first = tokio::time::timeout(LIMIT, settled.recv()).await.unwrap();
    assert_eq!(
        first,
        Some((2, true)),
        "only the live run's outcome is settled"
    );
    let delivered = ids(&memory.drain("a.deliver"));
    assert_eq!(delivered, [("m2".to_string(), 1)].into(), "{delivered:?}");
    assert_eq!(stats.snapshot().stale_dropped, 1);
}

/// #18: a handover returned after its consumer run ended is neither held nor failed here: the
/// original is redelivered and routed again, so a held copy would be a second one.
#[actix::test]
async fn a_handover_returned_after_its_run_ended_is_not_held() {
    let memory = MemoryBroker::new("stale-return");
    memory
        .declare_queue(&QueueSpec::durable("a.retry"))
        .await
        .unwrap();
    let broker = Arc::new(TweakedBroker::new(&memory));
    let UnderTest {
        publisher,
        reply,
        mut settled,
        stats,
    } = publisher_on(broker.clone());
    let run = Run::default();
    *broker.ends_on_publish.lock().unwrap() = Some(run.clone());
    // b's outbox is not there: the broker returns the handover.
    let peer = mailroute_actors::mail::routing::PeerRoute {
        name: "b".into(),
        outbox: "b.outbox".into(),
        broker: "elsewhere".into(),
        via: Via::LocalBroker,
    };
    publisher.do_send(dispatch(
        1,
        &run,
        Decision::Handover(Arc::new(peer)),
        &reply,
    ));
    let answer = tokio::time::timeout(LIMIT, settled.recv()).await.unwrap();
    assert_eq!(
        answer,
        Some((1, false)),
        "not confirmed: the original is the broker's"
    );
    assert_eq!(memory.depth("a.retry"), 0, "nothing held");
    let stats = stats.snapshot();
    assert_eq!(
        (stats.handover_returned, stats.stale_dropped, stats.held),
        (1, 1, 0)
    );
}
