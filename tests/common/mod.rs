//! Shared by the integration tests: a private RabbitMQ vhost per test (deleted on drop, even
//! when the test fails), traffic generation and accounting by message id.

#![allow(dead_code)]

pub mod http;
pub mod private;
pub mod proxy;
pub mod rq_cluster;
pub mod scenario;
pub mod servers;

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mailroute::amqp::AmqpBroker;
use mailroute_actors::broker::{Destination, Message, SharedBroker};
use mailroute_actors::mail::routing::HELD_SINCE_HEADER;
use mailroute_actors::testkit::wait_for;
pub use mailroute_actors::testkit::{Accounting, Expect, account};
use mailroute_actors::traffic::{mailerq_json, test_message};
use rand::Rng;

pub const BROKER_ROOT: &str = "amqp://guest:guest@127.0.0.1:5672";

/// A vhost of its own, so tests run in parallel and leave nothing behind, and a user of its own
/// for the instances, so a fault test can cut their connections and not the test's.
pub struct TestVhost {
    pub name: String,
    pub user: String,
    password: String,
}

pub fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (is RabbitMQ installed?)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestVhost {
    pub fn new(test: &str) -> Self {
        let name = format!("test-{test}-{:08x}", rand::rng().random::<u32>());
        let password = format!("{:016x}", rand::rng().random::<u64>());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        rabbitmqctl(&["add_user", &name, &password]);
        rabbitmqctl(&["set_permissions", "-p", &name, &name, ".*", ".*", ".*"]);
        TestVhost {
            user: name.clone(),
            name,
            password,
        }
    }

    /// The password of the instances' user: it must never show in their output.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The test's own address (user guest).
    pub fn address(&self) -> String {
        format!("{BROKER_ROOT}/{}", self.name)
    }

    /// The address the instances under test use (the vhost's own user).
    pub fn instance_address(&self) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:5672/{}",
            self.user, self.password, self.name
        )
    }

    pub async fn instance_broker(&self) -> SharedBroker {
        Arc::new(
            AmqpBroker::connect(&self.instance_address())
                .await
                .expect("RabbitMQ reachable"),
        )
    }

    /// Closes every connection of the instances (not the test's own).
    pub fn close_instance_connections(&self) {
        rabbitmqctl(&[
            "close_all_user_connections",
            &self.user,
            "mailroute fault test",
        ]);
    }

    /// Cuts the instances' user off: no permissions on the vhost (so reconnects are refused),
    /// and every open connection closed.
    pub fn revoke_instances(&self) {
        rabbitmqctl(&["clear_permissions", "-p", &self.name, &self.user]);
        self.close_instance_connections();
    }

    /// Lets the instances' user back in.
    pub fn grant_instances(&self) {
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.name,
            &self.user,
            ".*",
            ".*",
            ".*",
        ]);
    }

    pub async fn broker(&self) -> SharedBroker {
        Arc::new(
            AmqpBroker::connect(&self.address())
                .await
                .expect("RabbitMQ reachable at 127.0.0.1:5672"),
        )
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.user])
            .output();
    }
}

/// Publishes `messages` at about `rate` per second, each in its own task, retrying a failed
/// publish (broker down, connection closed) until it is confirmed. Returns the retries: a
/// retried message may have been stored twice, which the accounting then shows as a duplicate.
pub async fn publish_stream(
    broker: &SharedBroker,
    messages: Vec<(String, Message)>,
    rate: u32,
) -> usize {
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let per_tick = (rate as usize / 100).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = Vec::with_capacity(messages.len());
    let mut messages = messages.into_iter();
    loop {
        interval.tick().await;
        let batch: Vec<_> = messages.by_ref().take(per_tick).collect();
        if batch.is_empty() {
            break;
        }
        for (queue, message) in batch {
            let (broker, retries) = (broker.clone(), retries.clone());
            tasks.push(actix_rt::spawn(async move {
                let to = Destination::queue(&queue);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while let Err(e) = broker.publish(&to, &message, true).await {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publish kept failing: {e}"
                    );
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("publish task");
    }
    retries.load(std::sync::atomic::Ordering::Relaxed)
}

/// One line of the README's reliability table, printed by the test that measured it.
pub fn report(scenario: &str, acc: &Accounting, rejected: usize) {
    let delivered: usize = acc.delivered.values().sum();
    println!(
        "RELIABILITY | {scenario} | {} | {delivered} | {} | {} | {rejected} |",
        acc.sent,
        acc.lost.len(),
        acc.duplicates
    );
}

/// Cluster members named `names`, the i-th owning `ips(i)`, with outboxes `<name>.outbox`.
pub fn members(names: &[&str], ips: impl Fn(u8) -> Vec<IpAddr>) -> Vec<Member> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Member {
            name: n.to_string(),
            outbox: format!("{n}.outbox"),
            ips: ips(i as u8),
        })
        .collect()
}

/// Test ids and their expected destination, plus the messages to publish per outbox.
#[derive(Default)]
pub struct Traffic {
    pub expected: HashMap<String, Expect>,
    pub batches: Vec<(String, Message)>,
}

/// One cluster member as the traffic generator sees it.
pub struct Member {
    pub name: String,
    pub outbox: String,
    pub ips: Vec<IpAddr>,
}

/// `count` messages spread over the members' outboxes: IPs of every member, `unowned_pct`
/// percent for nobody (held by the receiving instance), `malformed_pct` percent broken JSON
/// (failed by the receiving instance).
pub fn traffic(
    members: &[Member],
    count: usize,
    unowned_pct: u32,
    malformed_pct: u32,
    prefix: &str,
) -> Traffic {
    let mut rng = rand::rng();
    let mut t = Traffic::default();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let entry = &members[rng.random_range(0..members.len())];
        let roll = rng.random_range(0..100);
        let (body, expect) = if roll < malformed_pct {
            (
                b"{\"ips\": [\"10.1.0.1\"], \"mime\": \"unterminated".to_vec(),
                Expect::Failed(entry.name.clone()),
            )
        } else if roll < malformed_pct + unowned_pct {
            let ip = IpAddr::from([192, 0, 2, rng.random_range(1..255)]);
            (
                mailerq_json(&id, Some(&[ip]), 1024),
                Expect::Held(entry.name.clone()),
            )
        } else {
            let owner = &members[rng.random_range(0..members.len())];
            let ip = owner.ips[rng.random_range(0..owner.ips.len())];
            (
                mailerq_json(&id, Some(&[ip]), 1024),
                Expect::Delivered(owner.name.clone()),
            )
        };
        t.expected.insert(id.clone(), expect);
        t.batches
            .push((entry.outbox.clone(), test_message(&id, body)));
    }
    t
}

/// Publishes with pipelined confirms.
pub async fn publish_all(broker: &SharedBroker, messages: &[(String, Message)]) {
    let mut confirms = futures::stream::iter(messages.iter().map(|(queue, m)| async move {
        broker.publish(&Destination::queue(queue), m, true).await
    }))
    .buffer_unordered(256);
    while let Some(result) = confirms.next().await {
        result.expect("test publish confirmed");
    }
}

pub async fn ready(broker: &SharedBroker, queue: &str) -> usize {
    broker.queue_len(queue).await.map_or(0, |n| n as usize)
}

/// Waits until the outboxes are empty and `total` messages sit in `sinks`.
pub async fn wait_settled(
    broker: &SharedBroker,
    outboxes: &[String],
    sinks: &[String],
    total: usize,
    limit: Duration,
) {
    let result = wait_for("all messages settled", limit, || async {
        let mut in_sinks = 0;
        for q in sinks {
            in_sinks += ready(broker, q).await;
        }
        let mut in_outboxes = 0;
        for q in outboxes {
            in_outboxes += ready(broker, q).await;
        }
        in_outboxes == 0 && in_sinks >= total
    })
    .await;
    if let Err(e) = result {
        let mut state = Vec::new();
        for q in outboxes.iter().chain(sinks) {
            state.push(format!("{q}={}", ready(broker, q).await));
        }
        panic!("{e}; queues: {}", state.join(" "));
    }
}

/// Resident memory of a process (`pid`, or "self"), MiB; 0 if unreadable.
/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// CPU time (user + system) of this process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the default RabbitMQ node (beam.smp) if it runs on this machine; not the rq
/// nodes of `scripts/rabbitmq-cluster`, which are started with their own RABBITMQ_NODENAME.
pub fn rabbitmq_cpu() -> Option<Duration> {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let rq = String::from_utf8_lossy(&environ).contains("RABBITMQ_NODENAME=rq");
        if comm.trim() == "beam.smp" && !rq {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            return Some(Duration::from_millis((utime + stime) * 1000 / ticks.max(1)));
        }
    }
    None
}

pub fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `<name>.outbox` of each instance.
pub fn outboxes(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{n}.outbox")).collect()
}

/// `<name>.deliver`, `.retry` and `.failure` of each instance: where a message can end up.
pub fn sinks(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| {
            [
                format!("{n}.deliver"),
                format!("{n}.retry"),
                format!("{n}.failure"),
            ]
        })
        .collect()
}

/// For instances whose hold-time outlasts the test (nothing moves once settled): waits until
/// the outboxes are empty and all of `expected` reached their sinks, then takes everything
/// out and counts it by id, the instances still running.
pub async fn settle_and_account(
    client: &SharedBroker,
    names: &[&str],
    expected: &HashMap<String, Expect>,
    limit: Duration,
) -> Accounting {
    wait_all_settled(client, names, expected, limit).await;
    let mut found = Vec::new();
    for n in names {
        for (place, queue) in [
            (Expect::Delivered(n.to_string()), "deliver"),
            (Expect::Held(n.to_string()), "retry"),
            (Expect::Failed(n.to_string()), "failure"),
        ] {
            found.push((place, drain(client, &format!("{n}.{queue}")).await));
        }
    }
    account(expected, found)
}

/// Waits until the instances' outboxes are empty and all of `expected` reached their sinks.
/// With a short hold-time, held mail moves on: stop the instances, then [`account_stopped`].
pub async fn wait_all_settled(
    client: &SharedBroker,
    names: &[&str],
    expected: &HashMap<String, Expect>,
    limit: Duration,
) {
    wait_settled(
        client,
        &outboxes(names),
        &sinks(names),
        expected.len(),
        limit,
    )
    .await;
}

/// With the instances stopped, takes everything out of their queues and counts it by id.
/// Held mail may be in the retry queue or, dead-lettered after its hold-time, back in the
/// outbox: found there with `x-mailroute-held-since`, it counts as held; without, it was never
/// routed. The retry queue is emptied first, so nothing moves while the outbox is read.
pub async fn account_stopped(
    client: &SharedBroker,
    names: &[&str],
    expected: &HashMap<String, Expect>,
) -> Accounting {
    let mut found = Vec::new();
    for n in names {
        found.extend(found_at(client, n).await);
    }
    account(expected, found)
}

/// Everything in instance `n`'s queues on `client`'s broker, taken out, by where it was found.
/// The retry queue is emptied before the outbox, so nothing moves while the outbox is read.
pub async fn found_at(client: &SharedBroker, n: &str) -> Vec<(Expect, Vec<Message>)> {
    let mut found = Vec::new();
    for (place, queue) in [
        (Expect::Delivered(n.to_string()), "deliver"),
        (Expect::Failed(n.to_string()), "failure"),
        (Expect::Held(n.to_string()), "retry"),
    ] {
        found.push((place, drain(client, &format!("{n}.{queue}")).await));
    }
    let (held, unrouted): (Vec<Message>, Vec<Message>) = drain(client, &format!("{n}.outbox"))
        .await
        .into_iter()
        .partition(|m| m.header(HELD_SINCE_HEADER).is_some());
    found.push((Expect::Held(n.to_string()), held));
    found.push((Expect::Unrouted(n.to_string()), unrouted));
    found
}

/// Messages in the deliver queues of `names` on `client`'s broker: how far a stream has got.
pub async fn delivered_in(client: &SharedBroker, names: &[&str]) -> usize {
    let mut total = 0;
    for n in names {
        total += ready(client, &format!("{n}.deliver")).await;
    }
    total
}

/// Takes every message out of a queue, until it is empty. Messages that leave it meanwhile (a
/// hold-time expiring) are not waited for.
pub async fn drain(broker: &SharedBroker, queue: &str) -> Vec<Message> {
    let mut out = Vec::new();
    // The test's own connection may have been dropped while the test thread blocked (waiting
    // for processes to exit: no heartbeat sent meanwhile); the next call reconnects. Only a
    // queue that is still not there after that is empty.
    let mut ready_now = None;
    for _ in 0..3 {
        match broker.queue_len(queue).await {
            Ok(n) => {
                ready_now = Some(n);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    if ready_now.unwrap_or(0) == 0 {
        return out;
    }
    let mut stream = broker.consume(queue, 1000).await.expect("consume");
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack().await.expect("ack");
                out.push(d.message);
            }
            Ok(other) => panic!("consumer of {queue} ended: {other:?}"),
            Err(_) if ready(broker, queue).await == 0 => return out,
            Err(_) => {}
        }
    }
}
