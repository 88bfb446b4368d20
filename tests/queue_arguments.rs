//! `hold-time` can change between two runs of an instance without touching its queues, and a
//! queue that exists with other arguments is reported with its name, the argument, both values
//! and what to do: never a bare `PRECONDITION_FAILED`.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::TestVhost;
use mailroute_actors::broker::{Destination, QueueSpec};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};
use mailroute_actors::{Instance, InstanceSettings};

fn settings(hold: Duration) -> InstanceSettings {
    let mut s = InstanceSettings::new("a", vec![IpAddr::from([10, 9, 0, 1])]);
    s.announce_interval = Duration::from_millis(300);
    s.peer_timeout = Duration::from_secs(3);
    s.hold_time = hold;
    s
}

#[actix::test]
async fn hold_time_changes_without_touching_the_retry_queue() {
    let vhost = TestVhost::new("hold-time");
    let client = vhost.broker().await;
    let first = Instance::start(
        settings(Duration::from_secs(1)),
        vhost.instance_broker().await,
        vhost.instance_broker().await,
    )
    .await
    .unwrap();
    let nobody = IpAddr::from([192, 0, 2, 7]);
    let m = test_message("held", mailerq_json("held", Some(&[nobody]), 256));
    client
        .publish(&Destination::queue("a.outbox"), &m, true)
        .await
        .unwrap();
    // Held, back after 1 s, held again: the per-message expiration works.
    wait_for("held twice", Duration::from_secs(20), || async {
        first.stats.snapshot().held >= 2
    })
    .await
    .unwrap();
    first.shutdown(Duration::from_secs(5)).await;

    let second = Instance::start(
        settings(Duration::from_secs(30)),
        vhost.instance_broker().await,
        vhost.instance_broker().await,
    )
    .await
    .expect("a new hold-time starts on the same queues");
    wait_for(
        "held by the second run",
        Duration::from_secs(20),
        || async { second.stats.snapshot().held >= 1 },
    )
    .await
    .unwrap();
    second.shutdown(Duration::from_secs(5)).await;
    let held = common::drain(&client, "a.retry").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].properties.expiration.as_deref(), Some("30000"));
}

#[actix::test]
async fn a_queue_with_other_arguments_is_reported_clearly() {
    let vhost = TestVhost::new("inequivalent");
    let client = vhost.broker().await;
    // The retry queue as an earlier mailroute declared it.
    let mut old = QueueSpec::durable("a.retry");
    old.message_ttl = Some(Duration::from_secs(60));
    old.dead_letter_queue = Some("a.outbox".into());
    client.declare_queue(&old).await.unwrap();
    let broker = vhost.instance_broker().await;
    let error =
        match Instance::start(settings(Duration::from_secs(1)), broker.clone(), broker).await {
            Ok(_) => panic!("an inequivalent queue must stop startup"),
            Err(error) => error.to_string(),
        };
    for part in [
        "queue a.retry exists with x-message-ttl = ",
        "60000",
        "move its messages elsewhere",
        "an earlier mailroute put hold-time on the retry queue",
    ] {
        assert!(error.contains(part), "{part:?} missing in: {error}");
    }
    assert!(!error.contains("PRECONDITION_FAILED"), "{error}");
}

/// `rabbitmq-queue-type: quorum` against an outbox that exists as a classic queue: startup
/// stops with the queue, both types and the config key named, not a channel-closed error.
#[actix::test]
async fn a_queue_of_the_other_type_is_reported_clearly() {
    let vhost = TestVhost::new("queue-type");
    let client = vhost.broker().await;
    client
        .declare_queue(&QueueSpec::durable("a.outbox"))
        .await
        .unwrap();
    let broker = vhost.instance_broker().await;
    let mut s = settings(Duration::from_secs(1));
    s.quorum_queues = true;
    let error = match Instance::start(s, broker.clone(), broker).await {
        Ok(_) => panic!("a queue of the other type must stop startup"),
        Err(error) => error.to_string(),
    };
    for part in [
        "queue a.outbox exists with x-queue-type = 'classic'",
        "declares 'quorum'",
        "rabbitmq-queue-type",
    ] {
        assert!(error.contains(part), "{part:?} missing in: {error}");
    }
    assert!(!error.contains("PRECONDITION_FAILED"), "{error}");
}
