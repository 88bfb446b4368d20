//! Maintenance: an instance paused (drain) takes no outbox mail but stays in the cluster, its
//! peers see it draining, and a resume takes the waiting mail; the cluster-wide command does
//! the same on every instance. Every message is counted where it ends.

mod support;

use mailroute_actors::Instance;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::messages::PeerState;
use mailroute_actors::testkit::wait_for;
use std::time::Duration;

use mailroute_actors::broker::{Broker, Destination, Message};
use mailroute_actors::cluster::wire::{self, ClusterMessage};
use support::*;

async fn state_seen_by(viewer: &Instance, peer: &str) -> Option<PeerState> {
    viewer
        .members()
        .await
        .into_iter()
        .find(|p| p.announcement.name == peer)
        .map(|p| p.state)
}

async fn wait_state(viewer: &Instance, peer: &str, state: PeerState) {
    wait_for(&format!("{peer} {state:?}"), LIMIT, || async {
        state_seen_by(viewer, peer).await == Some(state)
    })
    .await
    .unwrap();
}

/// All of `outbox` delivered once each at `deliver`, nothing else anywhere.
fn assert_delivered_once(broker: &MemoryBroker, deliver: &str, count: usize) {
    let delivered = ids(&broker.drain(deliver));
    assert_eq!(delivered.len(), count);
    assert!(delivered.values().all(|&n| n == 1), "a duplicate");
}

#[actix::test]
async fn a_paused_instance_takes_no_mail_stays_owner_and_resumes() {
    let broker = MemoryBroker::new("pause");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let b = start(&broker, settings("b", &["10.0.0.2"])).await;
    wait_peers(&[&a, &b], 1).await;
    for i in 0..1_000 {
        inject(&broker, "a.outbox", &format!("m-{i}"), &["10.0.0.1"]).await;
    }
    wait_for("some delivered", LIMIT, || async {
        broker.depth("a.deliver") >= 100
    })
    .await
    .unwrap();
    a.pause(true);
    // Paused and settled: nothing in flight, the rest waits (ready) in the outbox.
    wait_for("a drained", LIMIT, || async {
        broker.depth("a.deliver") + broker.depth("a.outbox") == 1_000
    })
    .await
    .unwrap();
    let delivered = broker.depth("a.deliver");
    // b keeps handing a's mail to a: a still owns its IP.
    for i in 0..200 {
        inject(&broker, "b.outbox", &format!("for-a-{i}"), &["10.0.0.1"]).await;
    }
    wait_for("b handed over", LIMIT, || async {
        broker.depth("a.outbox") == 1_200 - delivered
    })
    .await
    .unwrap();
    wait_state(&b, "a", PeerState::Draining).await;
    assert_eq!(broker.depth("a.deliver"), delivered, "a paused took mail");
    assert_eq!(a.stats.snapshot().consumed as usize, delivered);
    a.pause(false);
    wait_for("all delivered", LIMIT, || async {
        broker.depth("a.deliver") == 1_200 && broker.depth("a.outbox") == 0
    })
    .await
    .unwrap();
    wait_state(&b, "a", PeerState::Alive).await;
    assert_delivered_once(&broker, "a.deliver", 1_200);
    assert_eq!(broker.depth("b.deliver"), 0);
    let s = a.stats.snapshot();
    assert_eq!((s.held, s.failed, s.publish_errors), (0, 0, 0), "{s:?}");
}

#[actix::test]
async fn a_cluster_drain_pauses_every_instance_and_resume_takes_it_all() {
    let broker = MemoryBroker::new("cluster-drain");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let b = start(&broker, settings("b", &["10.0.0.2"])).await;
    let c = start(&broker, settings("c", &["10.0.0.3"])).await;
    wait_peers(&[&a, &b, &c], 2).await;
    b.broadcast(ClusterMessage::Drain {
        from: Some("b".into()),
    })
    .await
    .unwrap();
    for (viewer, peer) in [(&a, "b"), (&b, "c"), (&c, "a")] {
        wait_state(viewer, peer, PeerState::Draining).await;
    }
    // Every outbox keeps what comes in, own mail and handovers alike.
    let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    for (n, outbox) in ["a.outbox", "b.outbox", "c.outbox"].iter().enumerate() {
        for i in 0..300 {
            inject(
                &broker,
                outbox,
                &format!("{outbox}-{i}"),
                &[ips[(n + i) % 3]],
            )
            .await;
        }
    }
    for outbox in ["a.outbox", "b.outbox", "c.outbox"] {
        assert_eq!(broker.depth(outbox), 300, "{outbox} was consumed");
    }
    for instance in [&a, &b, &c] {
        assert_eq!(instance.stats.snapshot().consumed, 0);
    }
    a.broadcast(ClusterMessage::Resume { from: None })
        .await
        .unwrap();
    wait_for("all delivered", LIMIT, || async {
        ["a.deliver", "b.deliver", "c.deliver"]
            .iter()
            .all(|q| broker.depth(q) == 300)
    })
    .await
    .unwrap();
    for deliver in ["a.deliver", "b.deliver", "c.deliver"] {
        assert_delivered_once(&broker, deliver, 300);
    }
    for (viewer, peer) in [(&a, "b"), (&b, "c"), (&c, "a")] {
        wait_state(viewer, peer, PeerState::Alive).await;
    }
}

#[actix::test]
async fn peers_that_leave_or_fall_silent_stay_listed_as_such() {
    let broker = MemoryBroker::new("departed");
    let a = start(&broker, settings("a", &["10.0.0.1"])).await;
    let b = start(&broker, settings("b", &["10.0.0.2"])).await;
    wait_peers(&[&a, &b], 1).await;
    b.shutdown(LIMIT).await;
    wait_state(&a, "b", PeerState::Left).await;
    // Announced once, never again: expires after a's peer-timeout.
    announce_ghost(&broker, "ghost", "10.0.0.9", "ghost.outbox").await;
    wait_state(&a, "ghost", PeerState::Alive).await;
    wait_state(&a, "ghost", PeerState::Expired).await;
    assert!(a.peers().await.is_empty(), "gone peers are not live peers");
}

/// #19: a signed command copied off the cluster exchange and published again within the
/// freshness window is acted on once. A drain, a resume, then the drain's copy: the
/// instance stays resumed, and the copy is counted as replayed.
#[actix::test]
async fn a_replayed_signed_command_is_acted_on_once() {
    let broker = MemoryBroker::new("replayed-command");
    let codec = wire::Codec::new(Some("replay-test-secret"), Duration::from_secs(30));
    let mut s = settings("a", &["10.0.0.1"]);
    s.codec = codec.clone();
    let a = start(&broker, s).await;
    wait_listening(&a).await;
    let frame = |message: &ClusterMessage| {
        let body = codec.encode(message, wire::now_ms()).unwrap();
        (message.routing_key(), body)
    };
    let send = |(key, body): (String, Vec<u8>)| {
        let broker = broker.clone();
        async move {
            broker
                .publish(
                    &Destination::exchange("cluster", key),
                    &Message::new(body, Default::default()),
                    false,
                )
                .await
                .unwrap();
        }
    };
    let paused = || a.stats.snapshot().paused;
    let drain = frame(&ClusterMessage::Drain {
        from: Some("operator".into()),
    });
    send(drain.clone()).await;
    wait_for("drained", LIMIT, || async { paused() })
        .await
        .unwrap();
    send(frame(&ClusterMessage::Resume {
        from: Some("operator".into()),
    }))
    .await;
    wait_for("resumed", LIMIT, || async { !paused() })
        .await
        .unwrap();
    send(drain).await;
    wait_for("the copy dropped", LIMIT, || async {
        a.stats
            .dropped_replayed
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await
    .unwrap();
    assert!(!paused(), "the replayed drain was acted on");
    // A new drain, same content, another moment: a command of its own.
    send(frame(&ClusterMessage::Drain {
        from: Some("operator".into()),
    }))
    .await;
    wait_for("drained again", LIMIT, || async { paused() })
        .await
        .unwrap();
}
