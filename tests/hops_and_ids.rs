//! End to end on the real RabbitMQ: a handover loop stops at `max-hops`, and one message keeps
//! one `x-mailroute-id` across instances and outcomes.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::TestVhost;
use common::scenario::phantom_peer_on;
use mailroute_actors::broker::{Destination, HeaderValue, Message, SharedBroker};
use mailroute_actors::mail::routing::{HOPS_HEADER, ID_HEADER, REASON_HEADER};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};
use mailroute_actors::{Instance, InstanceSettings};

const LOOPED: [u8; 4] = [10, 5, 9, 9];

fn settings(name: &str, last: u8, exchange: &str) -> InstanceSettings {
    let mut s = InstanceSettings::new(name, vec![IpAddr::from([10, 5, last, 1])]);
    s.cluster_exchange = exchange.into();
    s.announce_interval = Duration::from_secs(1);
    s.peer_timeout = Duration::from_secs(3);
    s.hold_time = Duration::from_secs(2);
    s.warmup = Duration::from_millis(500);
    s
}

fn header_str(m: &Message, name: &str) -> Option<String> {
    m.header(name)
        .and_then(HeaderValue::as_str)
        .map(str::to_string)
}

/// a and b listen on exchanges of their own, where each hears a claim that the *other* owns
/// 10.5.9.9 (as after a misconfiguration): a message for it goes a → b → a, and a fails it
/// with the loop's reason at `max-hops` (2) instead of passing it on for ever.
#[actix::test]
async fn a_handover_loop_stops_at_max_hops() {
    let vhost = TestVhost::new("hops");
    let a = Instance::start(
        settings("a", 1, "cluster-a"),
        vhost.instance_broker().await,
        vhost.instance_broker().await,
    )
    .await
    .unwrap();
    let b = Instance::start(
        settings("b", 2, "cluster-b"),
        vhost.instance_broker().await,
        vhost.instance_broker().await,
    )
    .await
    .unwrap();
    let client: SharedBroker = vhost.broker().await;
    let looped = vec![IpAddr::from(LOOPED)];
    // On a's exchange "b" owns it, on b's exchange "a" does.
    let claims = [
        phantom_peer_on(client.clone(), "cluster-a", "b", "b.outbox", looped.clone()),
        phantom_peer_on(client.clone(), "cluster-b", "a", "a.outbox", looped.clone()),
    ];
    for (instance, peer) in [(&a, "b"), (&b, "a")] {
        wait_for("the false claim heard", Duration::from_secs(20), || async {
            instance
                .peers()
                .await
                .iter()
                .any(|p| p.announcement.name == peer)
        })
        .await
        .unwrap();
    }
    let m = test_message("loop", mailerq_json("loop", Some(&looped), 512));
    client
        .publish(&Destination::queue("a.outbox"), &m, true)
        .await
        .unwrap();
    wait_for("failed at max-hops", Duration::from_secs(30), || async {
        common::ready(&client, "a.failure").await == 1
    })
    .await
    .unwrap();
    for claim in claims {
        claim.abort();
    }
    let failed = common::drain(&client, "a.failure").await;
    let reason = header_str(&failed[0], REASON_HEADER).unwrap_or_default();
    assert!(reason.contains("handover loop: 2 hops"), "{reason}");
    assert_eq!(
        failed[0].header(HOPS_HEADER).and_then(HeaderValue::as_i64),
        Some(2)
    );
    for q in [
        "a.deliver",
        "b.deliver",
        "b.failure",
        "a.outbox",
        "b.outbox",
    ] {
        assert_eq!(common::ready(&client, q).await, 0, "{q}");
    }
    assert_eq!(
        (
            a.stats.snapshot().handed_over,
            b.stats.snapshot().handed_over
        ),
        (1, 1)
    );
}

/// Two copies of one message without a message-id (an injector that retried) enter at a, one
/// after the other, and are handed to b with the same `x-mailroute-id`: b delivers the first and
/// drops the second as a duplicate (#10's receiver-side drop).
#[actix::test]
async fn one_message_keeps_one_id_across_instances() {
    let vhost = TestVhost::new("ids");
    let mut instances = Vec::new();
    for (name, last) in [("a", 1), ("b", 2)] {
        let broker = vhost.instance_broker().await;
        let mut s = settings(name, last, "cluster");
        s.cluster_exchange = "cluster".into();
        instances.push(Instance::start(s, broker.clone(), broker).await.unwrap());
    }
    for instance in &instances {
        wait_for("peers", Duration::from_secs(20), || async {
            instance.peers().await.len() == 1
        })
        .await
        .unwrap();
    }
    let client = vhost.broker().await;
    let body = mailerq_json("same", Some(&[IpAddr::from([10, 5, 2, 1])]), 512);
    let copy = Message::new(body, Default::default());
    let b = &instances[1];
    // The retry comes after the first copy was delivered, as a redelivery after a crash does
    // (two copies in flight at once are both routed: only settled mail is remembered).
    for _ in 0..2 {
        client
            .publish(&Destination::queue("a.outbox"), &copy, true)
            .await
            .unwrap();
        wait_for(
            "handed over and settled at b",
            Duration::from_secs(30),
            || async { common::ready(&client, "b.deliver").await == 1 },
        )
        .await
        .unwrap();
    }
    wait_for(
        "one delivered, one dropped by b",
        Duration::from_secs(30),
        || async {
            b.stats.snapshot().duplicates_dropped == 1
                && common::ready(&client, "b.deliver").await == 1
        },
    )
    .await
    .unwrap();
    assert_eq!(
        instances[0].stats.snapshot().handed_over,
        2,
        "a handed both over"
    );
    let delivered = common::drain(&client, "b.deliver").await;
    assert!(header_str(&delivered[0], ID_HEADER).is_some_and(|id| id.starts_with("mr-")));
}
