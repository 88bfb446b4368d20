//! RabbitMQ's memory alarm blocks publishing connections. The instance logs and counts it,
//! takes no new deliveries while blocked (their outcomes could not be published), and resumes
//! when the alarm clears: nothing lost. Alone in its test binary on purpose: the alarm is the
//! whole broker's, and cargo runs test binaries one after the other.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{TestVhost, rabbitmqctl};
use mailroute::amqp::AmqpBroker;
use mailroute_actors::broker::SharedBroker;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};
use mailroute_actors::{Instance, InstanceSettings};

/// Clears the alarm even when the test fails, or every later test would hang on publishing.
struct Alarm;

impl Alarm {
    fn raise() -> Alarm {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        Alarm
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

#[actix::test]
async fn a_memory_alarm_pauses_consuming_and_loses_nothing() {
    let vhost = TestVhost::new("alarm");
    let ip = IpAddr::from([10, 7, 0, 1]);
    let mut s = InstanceSettings::new("a", vec![ip]);
    s.announce_interval = Duration::from_millis(200);
    s.peer_timeout = Duration::from_secs(3);
    // The consumer starts only once the alarm is up.
    s.warmup = Duration::from_secs(2);
    let client = vhost.broker().await;
    mailroute_actors::broker::own_queues::declare_queues(&s, &client)
        .await
        .unwrap();
    let batch: Vec<_> = (0..500)
        .map(|i| {
            let id = format!("m{i}");
            (
                "a.outbox".to_string(),
                test_message(&id, mailerq_json(&id, Some(&[ip]), 256)),
            )
        })
        .collect();
    common::publish_all(&client, &batch).await;

    let broker = Arc::new(
        AmqpBroker::connect(&vhost.instance_address())
            .await
            .unwrap(),
    );
    let shared: SharedBroker = broker.clone();
    let a = Instance::start(s, shared.clone(), shared).await.unwrap();
    wait_for("announcing", Duration::from_secs(10), || async {
        a.stats.snapshot().announcements_sent >= 1
    })
    .await
    .unwrap();
    let alarm = Alarm::raise();
    wait_for("publishing blocked", Duration::from_secs(20), || async {
        broker.times_blocked() >= 1
    })
    .await
    .unwrap();
    // Past the warm-up, the consumer is subscribed but takes nothing. Proving an absence
    // takes a wait: twice the warm-up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        a.stats.snapshot().consumed,
        0,
        "took deliveries while blocked"
    );
    assert_eq!(common::ready(&client, "a.deliver").await, 0);
    drop(alarm);
    wait_for(
        "all delivered after the alarm",
        Duration::from_secs(60),
        || async { common::ready(&client, "a.deliver").await == 500 },
    )
    .await
    .unwrap();
    a.shutdown(Duration::from_secs(10)).await;
    assert_eq!(common::ready(&client, "a.outbox").await, 0);
    let delivered = common::drain(&client, "a.deliver").await;
    assert_eq!(delivered.len(), 500);
}
