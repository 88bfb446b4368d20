//! Membership at N = 50 on the memory broker, with each `cluster-protocol`: after all start
//! together, after one leaves, after one dies silently, and after one joins, every registry
//! lists exactly the others; MailerQ's `{"hello": true}` and `{"reload": true}` still reach
//! every instance. Digest mode also: the heartbeat leader dies and nobody else is forgotten,
//! and the steady traffic is about 2 deliveries per instance and interval, not N; junk in the
//! heartbeat queue is dropped and counted.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroute_actors::InstanceSettings;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::own_queues::heartbeat_queue;
use mailroute_actors::broker::{Broker, Destination, Message, Properties};
use mailroute_actors::cluster::wire::{self, ClusterMessage};
use mailroute_actors::messages::{ListMembers, PeerState};
use mailroute_actors::settings::ClusterProtocol;
use mailroute_actors::testkit::fleet::Fleet;
use mailroute_actors::testkit::wait_for;

const N: usize = 50;

/// One fleet of fifty at a time: each is a cluster's worth of actors in this process, and
/// eight of them at once overran a two-core machine (registries starved of CPU, which is what
/// the simulator's slow-instance runs are for, not these).
static ONE_FLEET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LIMIT: Duration = Duration::from_secs(30);

fn settings(
    i: usize,
    interval: Duration,
    peer_timeout: Duration,
    protocol: ClusterProtocol,
) -> InstanceSettings {
    let mut s = InstanceSettings::new(format!("m{i:02}"), vec![IpAddr::from([10, 50, 0, i as u8])]);
    s.announce_interval = interval;
    s.peer_timeout = peer_timeout;
    s.protocol = protocol;
    s
}

/// N started together, agreed. In digest mode each on an arbiter of its own, so that any
/// (the heartbeat leader) can be killed; in mesh mode only the second.
async fn fleet(
    label: &str,
    interval: Duration,
    peer_timeout: Duration,
    protocol: ClusterProtocol,
) -> (MemoryBroker, Fleet) {
    let broker = MemoryBroker::new(label);
    let mut fleet = Fleet::new(move |i| settings(i, interval, peer_timeout, protocol));
    for i in 0..N {
        let killable = i == 1 || protocol == ClusterProtocol::Digest;
        fleet
            .add(Arc::new(broker.clone()), killable)
            .await
            .expect("memory broker");
    }
    let started = Instant::now();
    assert!(fleet.time_to_agree(started, LIMIT).await.is_some(), "start");
    (broker, fleet)
}

#[actix::test]
async fn fifty_agree_after_a_leave_a_silent_death_and_a_join() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    leave_death_join("membership", ClusterProtocol::Mesh).await;
}

#[actix::test]
async fn fifty_agree_after_a_leave_a_silent_death_and_a_join_by_digest() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    leave_death_join("membership-digest", ClusterProtocol::Digest).await;
}

async fn leave_death_join(label: &str, protocol: ClusterProtocol) {
    // The defaults scaled down twenty times (2 s → 100 ms), with room for a loaded CI machine:
    // a peer expires after ten missed announcements.
    let (broker, mut fleet) = fleet(
        label,
        Duration::from_millis(100),
        Duration::from_secs(1),
        protocol,
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
    let agreed = fleet.time_to_agree(Instant::now(), LIMIT).await.is_some();
    assert!(agreed, "silent death: {}", fleet.disagreement(10).await);
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
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    hello_and_reload("operator", ClusterProtocol::Mesh).await;
}

#[actix::test]
async fn mailerq_hello_and_reload_reach_all_fifty_by_digest() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    hello_and_reload("operator-digest", ClusterProtocol::Digest).await;
}

async fn hello_and_reload(label: &str, protocol: ClusterProtocol) {
    // Announcing only once a minute: what is sent within the test is the answer to hello.
    let (broker, fleet) = fleet(
        label,
        Duration::from_secs(60),
        Duration::from_secs(180),
        protocol,
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

/// Each member's `peers_expired` now: what the start cost (on a loaded machine a member is
/// heard of by its announcement before the leader reads its first heartbeat, and may be
/// forgotten once and heard again) is not what the digest tests are about.
fn expired_so_far(fleet: &Fleet) -> std::collections::HashMap<String, u64> {
    fleet
        .members
        .iter()
        .map(|m| {
            let s = &m.instance;
            (s.settings.name.clone(), s.stats.snapshot().peers_expired)
        })
        .collect()
}

/// How many peers `member` forgot since `before` was taken.
fn expired_since(
    before: &std::collections::HashMap<String, u64>,
    member: &mailroute_actors::testkit::fleet::Member,
) -> u64 {
    let name = &member.instance.settings.name;
    member.instance.stats.snapshot().peers_expired - before.get(name).copied().unwrap_or(0)
}

/// The instance whose digests the others hear: the heartbeat queue's active consumer.
async fn leader(fleet: &Fleet) -> String {
    let found = wait_for("a digest leader", LIMIT, || async {
        fleet.sum(|s| s.digests_sent) > 0
    })
    .await;
    assert!(found.is_ok(), "nobody leads the digest");
    let member = fleet
        .members
        .iter()
        .max_by_key(|m| m.instance.stats.snapshot().digests_sent)
        .expect("members");
    member.instance.settings.name.clone()
}

#[actix::test]
async fn the_digest_leader_dies_and_nobody_else_is_forgotten() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    // The defaults' ratio (peer-timeout = 3 intervals), scaled down ten times: a digest's
    // news is up to two intervals old, so a slow takeover would make survivors expire here.
    let interval = Duration::from_millis(200);
    let (broker, mut fleet) = fleet(
        "leader-death",
        interval,
        interval * 3,
        ClusterProtocol::Digest,
    )
    .await;

    // Steady state, counted where it arrives: deliveries against heartbeats sent meanwhile.
    let heartbeats = |fleet: &Fleet| fleet.sum(|s| s.heartbeats_sent);
    let (before, beats_before) = (broker.enqueued(), heartbeats(&fleet));
    let enough = wait_for("20 intervals of heartbeats", LIMIT, || async {
        heartbeats(&fleet) >= beats_before + 20 * N as u64
    })
    .await;
    assert!(enough.is_ok());
    let (deliveries, beats) = (
        broker.enqueued() - before,
        heartbeats(&fleet) - beats_before,
    );
    let per_heartbeat = deliveries as f64 / beats as f64;
    println!("digest steady state: {deliveries} deliveries for {beats} heartbeats");
    // One heartbeat and one digest delivery per instance and interval; mesh would be N = 50.
    assert!(
        per_heartbeat < 3.0,
        "{per_heartbeat:.2} deliveries per heartbeat"
    );

    let old = leader(&fleet).await;
    let digests = fleet.sum(|s| s.digests_sent);
    let expired_before = expired_so_far(&fleet);
    fleet.kill(&old);
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "leader death"
    );
    // Someone else digests now, and the survivors keep agreeing for a few peer-timeouts.
    let taken_over = wait_for("a new leader", LIMIT, || async {
        fleet.sum(|s| s.digests_sent) > digests + 10
    })
    .await;
    assert!(taken_over.is_ok());
    let new = leader(&fleet).await;
    assert_ne!(new, old);
    let beats_now = heartbeats(&fleet);
    let waited = wait_for(
        "10 intervals (3 peer-timeouts) of heartbeats",
        LIMIT,
        || async { heartbeats(&fleet) >= beats_now + 10 * (N as u64 - 1) },
    )
    .await;
    assert!(waited.is_ok());
    assert!(fleet.agreed().await, "a survivor was forgotten");
    // Nobody but the dead leader ever expired anywhere.
    for member in &fleet.members {
        let members = member
            .instance
            .registry
            .send(ListMembers)
            .await
            .expect("registry");
        let expired: Vec<&str> = members
            .iter()
            .filter(|p| p.state == PeerState::Expired)
            .map(|p| p.announcement.name.as_str())
            .collect();
        let name = &member.instance.settings.name;
        assert_eq!(expired, vec![old.as_str()], "at {name}");
        // Once: nobody else was forgotten and heard again meanwhile either.
        assert_eq!(expired_since(&expired_before, member), 1, "at {name}");
    }
}

/// A frozen leader keeps the heartbeat queue (its consumer is still there) while it says
/// nothing: the others must not take the missing digests for everyone's death.
#[actix::test]
async fn a_frozen_digest_leader_makes_nobody_forget_anybody() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    let (_broker, fleet) = fleet(
        "leader-freeze",
        Duration::from_millis(100),
        Duration::from_secs(1),
        ClusterProtocol::Digest,
    )
    .await;
    let frozen = leader(&fleet).await;
    let expired_before = expired_so_far(&fleet);
    let beats = |fleet: &Fleet| {
        fleet
            .members
            .iter()
            .find(|m| m.instance.settings.name == frozen)
            .map_or(0, |m| m.instance.stats.snapshot().heartbeats_sent)
    };
    let before = beats(&fleet);
    // Three peer-timeouts.
    fleet.freeze(&frozen, Duration::from_secs(3));
    let thawed = wait_for("the leader thawed", LIMIT, || async {
        beats(&fleet) > before + 5
    })
    .await;
    assert!(thawed.is_ok());
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "after the freeze"
    );
    // Counted, not listed: a peer forgotten and heard again is listed as alive.
    for member in &fleet.members {
        let expired = expired_since(&expired_before, member);
        assert_eq!(expired, 0, "{} forgot peers", member.instance.settings.name);
    }
}

/// Garbage and a frame of another kind put into the heartbeat queue by hand: the leader drops
/// and counts each, and goes on leading (the three keep agreeing, digests keep coming).
#[actix::test]
async fn junk_in_the_heartbeat_queue_is_dropped_and_counted() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    let broker = MemoryBroker::new("heartbeat-junk");
    let mut fleet = Fleet::new(|i| {
        settings(
            i,
            Duration::from_millis(100),
            Duration::from_secs(1),
            ClusterProtocol::Digest,
        )
    });
    for _ in 0..3 {
        fleet
            .add(Arc::new(broker.clone()), false)
            .await
            .expect("memory broker");
    }
    assert!(fleet.time_to_agree(Instant::now(), LIMIT).await.is_some());
    let name = leader(&fleet).await;
    let dropped = |fleet: &Fleet| {
        fleet
            .members
            .iter()
            .find(|m| m.instance.settings.name == name)
            .map(|m| {
                let s = &m.instance.stats;
                let get =
                    |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                (get(&s.dropped_bad_magic), get(&s.dropped_garbage))
            })
            .unwrap_or_default()
    };
    let before = dropped(&fleet);
    let queue = Destination::queue(heartbeat_queue("cluster").name);
    let not_a_heartbeat = wire::encode(&ClusterMessage::Hello { from: None }).expect("encodes");
    for body in [b"\xff\x00 not a frame".to_vec(), not_a_heartbeat] {
        broker
            .publish(&queue, &Message::new(body, Properties::default()), false)
            .await
            .expect("published");
    }
    let counted = wait_for("both dropped", LIMIT, || async {
        dropped(&fleet) == (before.0 + 1, before.1 + 1)
    })
    .await;
    assert!(counted.is_ok(), "{:?} → {:?}", before, dropped(&fleet));
    let digests = fleet.sum(|s| s.digests_sent);
    let more = wait_for("digests go on", LIMIT, || async {
        fleet.sum(|s| s.digests_sent) > digests + 3
    })
    .await;
    assert!(more.is_ok());
    assert!(fleet.agreed().await);
    assert_eq!(fleet.sum(|s| s.peers_expired), 0);
}

/// A cluster-wide reload while the digests have stopped (the leader frozen: RabbitMQ keeps
/// its consumer until its heartbeat times out): a reload's rejoin window must not take the
/// missing digests for everyone's silence, as the expiry sweep does not. (Failed before: every
/// registry forgot every peer that the frozen leader's digests would have vouched for.)
#[actix::test]
async fn a_reload_while_the_digest_leader_is_frozen_forgets_nobody() {
    let _fleet = ONE_FLEET_AT_A_TIME.lock().await;
    let (broker, fleet) = fleet(
        "reload-frozen",
        Duration::from_millis(100),
        Duration::from_secs(1),
        ClusterProtocol::Digest,
    )
    .await;
    let frozen = leader(&fleet).await;
    let expired_before = expired_so_far(&fleet);
    let quiet = || fleet.sum(|s| s.reloads);
    let before = quiet();
    fleet.freeze(&frozen, Duration::from_secs(2));
    // Past the point where the others notice that no digest comes (1.5 intervals).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let body = wire::encode(&ClusterMessage::Reload { from: None }).unwrap();
    broker
        .publish(
            &Destination::exchange("cluster", "reload"),
            &Message::new(body, Properties::default()),
            false,
        )
        .await
        .unwrap();
    wait_for("everyone reloaded", LIMIT, || async {
        quiet() >= before + N as u64 - 1
    })
    .await
    .unwrap();
    assert!(
        fleet.time_to_agree(Instant::now(), LIMIT).await.is_some(),
        "after the thaw"
    );
    for member in &fleet.members {
        let expired = expired_since(&expired_before, member);
        assert_eq!(expired, 0, "{} forgot peers", member.instance.settings.name);
    }
}
