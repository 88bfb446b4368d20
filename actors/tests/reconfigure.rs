//! What a reload changes at run time, applied to running instances: nothing in flight is lost
//! or doubled, and the next messages follow the new settings.

mod support;

use std::time::Duration;

use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::mail::routing::Unroutable;
use mailroute_actors::testkit::wait_for;
use support::*;

#[actix::test]
async fn a_new_prefetch_mid_stream_loses_and_doubles_nothing() {
    let broker = MemoryBroker::new("qos");
    let mut a = start(&broker, settings("a", &["10.0.0.1"])).await;
    wait_listening(&a).await;
    for i in 0..2_000 {
        inject(&broker, "a.outbox", &format!("m-{i}"), &["10.0.0.1"]).await;
    }
    wait_for("some delivered", LIMIT, || async {
        broker.depth("a.deliver") >= 200
    })
    .await
    .unwrap();
    let mut live = a.settings.live();
    live.prefetch = 7;
    a.reconfigure(live);
    wait_for("all delivered", LIMIT, || async {
        broker.depth("a.deliver") == 2_000 && broker.depth("a.outbox") == 0
    })
    .await
    .unwrap();
    let delivered = ids(&broker.drain("a.deliver"));
    assert_eq!(delivered.len(), 2_000);
    assert!(delivered.values().all(|&n| n == 1));
    let s = a.stats.snapshot();
    assert_eq!(
        (s.delivered, s.restarts, s.publish_errors),
        (2_000, 0, 0),
        "{s:?}"
    );
}

#[actix::test]
async fn an_ip_moved_by_reconfigure_goes_to_its_new_owner_and_policy_changes_apply() {
    let broker = MemoryBroker::new("move");
    let mut a = start(&broker, settings("a", &["10.0.0.1", "10.0.0.9"])).await;
    let mut b = start(&broker, settings("b", &["10.0.0.2"])).await;
    wait_peers(&[&a, &b], 1).await;
    let mut live = a.settings.live();
    live.local_ips = vec![ip("10.0.0.1")];
    live.hold_time = Duration::from_millis(1234);
    a.reconfigure(live);
    let mut live = b.settings.live();
    live.local_ips = vec![ip("10.0.0.2"), ip("10.0.0.9")];
    b.reconfigure(live);
    wait_for("a knows b owns 10.0.0.9", LIMIT, || async {
        a.peers()
            .await
            .iter()
            .any(|p| p.announcement.local_ips.contains(&ip("10.0.0.9")))
    })
    .await
    .unwrap();
    for i in 0..50 {
        inject(&broker, "a.outbox", &format!("moved-{i}"), &["10.0.0.9"]).await;
    }
    // Nobody owns 10.0.0.77: held by a, with the new hold-time as its expiration.
    inject(&broker, "a.outbox", "unowned", &["10.0.0.77"]).await;
    wait_for("moved mail at b, unowned held", LIMIT, || async {
        broker.depth("b.deliver") == 50 && broker.depth("a.retry") == 1
    })
    .await
    .unwrap();
    assert_eq!(broker.depth("a.deliver"), 0);
    let held = broker.drain("a.retry");
    assert_eq!(held[0].properties.expiration.as_deref(), Some("1234"));
    // unroutable: fail, applied live.
    let mut live = a.settings.live();
    live.policy.unroutable = Unroutable::Fail;
    a.reconfigure(live);
    inject(&broker, "a.outbox", "unowned-2", &["10.0.0.77"]).await;
    wait_for("failed now", LIMIT, || async {
        broker.depth("a.failure") == 1
    })
    .await
    .unwrap();
}
