//! Membership at N = 50 on the memory broker: after all start together, after one leaves,
//! after one dies silently, and after one joins, every registry lists exactly the others; and
//! MailerQ's `{"hello": true}` and `{"reload": true}` still reach every instance.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroute_actors::InstanceSettings;
use mailroute_actors::broker::{Broker, Destination, Message, Properties};
use mailroute_actors::memory::MemoryBroker;
use mailroute_actors::testkit::fleet::Fleet;
use mailroute_actors::testkit::wait_for;

const N: usize = 50;
const LIMIT: Duration = Duration::from_secs(30);

fn settings(i: usize, interval: Duration, peer_timeout: Duration) -> InstanceSettings {
    let mut s = InstanceSettings::new(format!("m{i:02}"), vec![IpAddr::from([10, 50, 0, i as u8])]);
    s.announce_interval = interval;
    s.peer_timeout = peer_timeout;
    s
}

/// N started together, agreed.
async fn fleet(label: &str, interval: Duration, peer_timeout: Duration) -> (MemoryBroker, Fleet) {
    let broker = MemoryBroker::new(label);
    let mut fleet = Fleet::new(move |i| settings(i, interval, peer_timeout));
    for i in 0..N {
        fleet
            .add(Arc::new(broker.clone()), i == 1)
            .await
            .expect("memory broker");
    }
    let started = Instant::now();
    assert!(fleet.time_to_agree(started, LIMIT).await.is_some(), "start");
    (broker, fleet)
}

#[actix::test]
async fn fifty_agree_after_a_leave_a_silent_death_and_a_join() {
    // The defaults scaled down twenty times (2 s → 100 ms), with room for a loaded CI machine:
    // a peer expires after ten missed announcements.
    let (broker, mut fleet) = fleet(
        "membership",
        Duration::from_millis(100),
        Duration::from_secs(1),
    )
    .await;
    let leaving = fleet.members[0].instance.settings.name.clone();
    fleet.leave(&leaving).await;
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "leave"
    );
    // members[0] is now the one on its own arbiter.
    let dying = fleet.members[0].instance.settings.name.clone();
    assert_eq!(dying, "m01");
    fleet.kill(&dying);
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "silent death"
    );
    let joined = fleet
        .add(Arc::new(broker.clone()), false)
        .await
        .expect("memory broker");
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "join"
    );
    assert_eq!(fleet.members.len(), N - 1);
    assert!(fleet.names().contains(&joined));
    for gone in [&leaving, &dying] {
        assert!(!fleet.names().contains(gone));
    }
}

/// MailerQ's operator JSON on the cluster exchange, as MailerQ's own tools publish it.
async fn operator(broker: &MemoryBroker, json: &str) {
    let message = Message::new(json.as_bytes().to_vec(), Properties::default());
    broker
        .publish(
            &Destination::exchange("cluster", "mailerq"),
            &message,
            false,
        )
        .await
        .expect("published");
}

#[actix::test]
async fn mailerq_hello_and_reload_reach_all_fifty() {
    // Announcing only once a minute: what is sent within the test is the answer to hello.
    let (broker, fleet) = fleet(
        "operator",
        Duration::from_secs(60),
        Duration::from_secs(180),
    )
    .await;
    let sent: Vec<u64> = fleet
        .members
        .iter()
        .map(|m| m.instance.stats.snapshot().announcements_sent)
        .collect();
    operator(&broker, r#"{"hello": true}"#).await;
    operator(&broker, r#"{"reload": true}"#).await;
    let reached = wait_for("every instance reloaded", LIMIT, || async {
        fleet
            .members
            .iter()
            .all(|m| m.instance.stats.snapshot().reloads == 1)
    })
    .await;
    assert!(reached.is_ok());
    for member in &fleet.members {
        let mut reloads = member.instance.reload_requests.clone();
        assert!(
            reloads.has_changed().unwrap_or(false),
            "serve would re-read its file"
        );
        reloads.mark_unchanged();
    }
    // Every timer is a minute away: each announces because of the hello (and the reload).
    let announced = wait_for("every instance announced", LIMIT, || async {
        fleet
            .members
            .iter()
            .zip(&sent)
            .all(|(m, before)| m.instance.stats.snapshot().announcements_sent > *before)
    })
    .await;
    assert!(announced.is_ok());
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "after reload"
    );
}
