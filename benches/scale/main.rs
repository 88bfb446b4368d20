//! Scale: N instances of the real actors on the in-memory broker in one process, no outbox
//! traffic, with the timings users run (`announce-interval` 2 s, `peer-timeout` 6 s). Measured:
//! the time until every registry agrees on the membership after all start together, after one
//! leaves (graceful), after one dies silently and after one joins; cluster messages delivered
//! per second at steady state; CPU and RSS per instance.
//!
//! Each size runs with both `cluster-protocol`s: `mesh`, the baseline (every instance announces
//! to every other each interval, as MailerQ and mailroute 0.1 do), and `digest`.
//!
//! `cargo bench --bench scale` (N = 10, 100, 1000; `-- 10 50` for others; `-- --rabbitmq 100`
//! for N instances on the local RabbitMQ, one connection each, in a vhost of their own;
//! `--protocol digest` for one protocol only). Prints a table and writes
//! `target/bench/scale.json` (`scale-rabbitmq.json`). Cluster traffic is counted where it
//! arrives: every cluster frame the instances take from the broker, all together. A phase
//! that does not agree within its limit is reported as such (`null`), as is a run stopped
//! because the process grew past 8 GiB.

use std::net::IpAddr;
use std::time::{Duration, Instant};

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use mailroute::amqp::AmqpBroker;
use mailroute_actors::InstanceSettings;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::{BrokerError, SharedBroker};
use mailroute_actors::settings::ClusterProtocol;
use mailroute_actors::testkit::fleet::Fleet;

/// The allocator `mailroute serve` ships with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INTERVAL: Duration = Duration::from_secs(2);
const PEER_TIMEOUT: Duration = Duration::from_secs(6);
/// How long each phase may take to agree before it counts as not converging.
const LIMIT: Duration = Duration::from_secs(60);
const STEADY_WINDOW: Duration = Duration::from_secs(10);
const RSS_CAP_KIB: u64 = 8 * 1024 * 1024;

#[derive(Debug, serde::Serialize)]
struct ScaleRow {
    name: String,
    n: usize,
    protocol: String,
    announce_interval_s: f64,
    peer_timeout_s: f64,
    /// All N started together: until every registry lists the other N-1.
    start_s: Option<f64>,
    /// Cluster messages delivered into listener queues per second, all instances together.
    steady_msgs_per_s: Option<f64>,
    /// Process CPU over the steady window, per instance, in percent of one core.
    cpu_pct_per_instance: Option<f64>,
    rss_kib_per_instance: Option<f64>,
    /// RabbitMQ runs: the broker node's CPU over the steady window, per instance, in percent
    /// of one core.
    broker_cpu_pct_per_instance: Option<f64>,
    leave_s: Option<f64>,
    silent_death_s: Option<f64>,
    join_s: Option<f64>,
    note: String,
}

fn settings(i: usize, protocol: ClusterProtocol) -> InstanceSettings {
    let ip = IpAddr::from([10, 200 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let mut s = InstanceSettings::new(format!("i{i:04}"), vec![ip]);
    s.announce_interval = INTERVAL;
    s.peer_timeout = PEER_TIMEOUT;
    s.protocol = protocol;
    s
}

fn protocol_name(protocol: ClusterProtocol) -> &'static str {
    match protocol {
        ClusterProtocol::Mesh => "mesh",
        ClusterProtocol::Digest => "digest",
    }
}

fn rss_kib() -> u64 {
    (common::rss_mib(&std::process::id().to_string()) * 1024.0) as u64
}

/// Until the fleet agrees, `LIMIT` passes, or the process outgrows the cap.
async fn agree(fleet: &Fleet, since: Instant, note: &mut String, phase: &str) -> Option<f64> {
    let deadline = since + LIMIT;
    loop {
        if fleet.agreed().await {
            return Some(since.elapsed().as_secs_f64());
        }
        if rss_kib() > RSS_CAP_KIB {
            note.push_str(&format!("{phase}: stopped at 8 GiB RSS; "));
            return None;
        }
        if Instant::now() >= deadline {
            note.push_str(&format!(
                "{phase}: no agreement within {LIMIT:?} ({}); ",
                fleet.disagreement(5).await
            ));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the fleet runs: one memory broker, or a connection of its own per instance to a vhost
/// of the local RabbitMQ.
enum Brokers {
    Memory(MemoryBroker),
    RabbitMq(common::TestVhost),
}

impl Brokers {
    async fn next(&self) -> Result<SharedBroker, BrokerError> {
        Ok(match self {
            Brokers::Memory(m) => Arc::new(m.clone()),
            Brokers::RabbitMq(vhost) => {
                // `SCALE_ADDRESS_QUERY=?frame_max=32768`: lapin sizes its buffers by frame_max.
                let query = std::env::var("SCALE_ADDRESS_QUERY").unwrap_or_default();
                let address = format!("{}{query}", vhost.instance_address());
                Arc::new(AmqpBroker::connect(&address).await?)
            }
        })
    }

    /// One more member; a broker that refuses (RabbitMQ's socket limit) ends the run with
    /// a note instead of a panic.
    async fn add(&self, fleet: &mut Fleet, killable: bool, note: &mut String) -> bool {
        let added = match self.next().await {
            Ok(broker) => fleet.add(broker, killable).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = &added {
            note.push_str(&format!(
                "instance {} not started: {error}; ",
                fleet.members.len() + 1
            ));
        }
        added.is_ok()
    }
}

async fn scale(n: usize, rabbitmq: bool, protocol: ClusterProtocol) -> ScaleRow {
    let brokers = if rabbitmq {
        Brokers::RabbitMq(common::TestVhost::new(&format!("scale-{n}")))
    } else {
        Brokers::Memory(MemoryBroker::new(format!("scale-{n}")))
    };
    let mut fleet = Fleet::new(move |i| settings(i, protocol));
    let mut row = ScaleRow {
        name: format!(
            "scale N={n} {}{}",
            protocol_name(protocol),
            if rabbitmq { " (RabbitMQ)" } else { "" }
        ),
        n,
        protocol: protocol_name(protocol).into(),
        announce_interval_s: INTERVAL.as_secs_f64(),
        peer_timeout_s: PEER_TIMEOUT.as_secs_f64(),
        start_s: None,
        steady_msgs_per_s: None,
        cpu_pct_per_instance: None,
        rss_kib_per_instance: None,
        broker_cpu_pct_per_instance: None,
        leave_s: None,
        silent_death_s: None,
        join_s: None,
        note: String::new(),
    };
    let rss_before = rss_kib();
    let started = Instant::now();
    for i in 0..n {
        // The second one runs on a thread of its own, so that it can die silently.
        if !brokers.add(&mut fleet, i == 1, &mut row.note).await {
            return row;
        }
    }
    row.start_s = agree(&fleet, started, &mut row.note, "start").await;
    if row.start_s.is_none() {
        return row;
    }
    // One interval first: the answers to the start's hellos are not steady traffic.
    tokio::time::sleep(INTERVAL).await;
    let (messages, cpu, node, window) = (
        fleet.sum(|s| s.cluster_deliveries),
        common::process_cpu(),
        common::rabbitmq_cpu(),
        Instant::now(),
    );
    // A measurement window: the traffic of a quiet cluster over five announce intervals.
    tokio::time::sleep(STEADY_WINDOW).await;
    let elapsed = window.elapsed().as_secs_f64();
    row.steady_msgs_per_s = Some((fleet.sum(|s| s.cluster_deliveries) - messages) as f64 / elapsed);
    if rabbitmq {
        row.broker_cpu_pct_per_instance = node
            .zip(common::rabbitmq_cpu())
            .map(|(before, after)| (after - before).as_secs_f64() / elapsed / n as f64 * 100.0);
    }
    row.cpu_pct_per_instance =
        Some((common::process_cpu() - cpu).as_secs_f64() / elapsed / n as f64 * 100.0);
    row.rss_kib_per_instance = Some(rss_kib().saturating_sub(rss_before) as f64 / n as f64);

    let leaving = fleet.members[0].instance.settings.name.clone();
    let t = Instant::now();
    fleet.leave(&leaving).await;
    row.leave_s = agree(&fleet, t, &mut row.note, "leave").await;
    let dying = fleet.members[0].instance.settings.name.clone();
    let digests =
        fleet.sum(|s| s.digests_sent) - fleet.members[0].instance.stats.snapshot().digests_sent;
    let t = Instant::now();
    fleet.kill(&dying);
    row.silent_death_s = agree(&fleet, t, &mut row.note, "silent death").await;
    if protocol == ClusterProtocol::Digest {
        // The heartbeat queue's second consumer (the first left): the leader itself died.
        let after = fleet.sum(|s| s.digests_sent);
        row.note.push_str(&format!(
            "digests sent by the survivors since the death: {}; ",
            after - digests
        ));
    }
    let t = Instant::now();
    if !brokers.add(&mut fleet, false, &mut row.note).await {
        return row;
    }
    row.join_s = agree(&fleet, t, &mut row.note, "join").await;
    row
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Each N runs in a process of its own (this bench again, with `--one N`), so that no
/// instance of one size runs on into the next one's figures.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args
        .iter()
        .position(|a| a == "--one")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
    {
        let rabbitmq = args.iter().any(|a| a == "--rabbitmq");
        let protocol = if args.iter().any(|a| a == "digest") {
            ClusterProtocol::Digest
        } else {
            ClusterProtocol::Mesh
        };
        let row = actix_rt::System::new().block_on(scale(n, rabbitmq, protocol));
        println!("{}", serde_json::to_string(&row).unwrap_or_default());
        return;
    }
    let sizes: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let protocols: Vec<&str> = match args.iter().position(|a| a == "--protocol") {
        Some(i) => args.get(i + 1).map(String::as_str).into_iter().collect(),
        None => vec!["mesh", "digest"],
    };
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "{:<32} {:>8} {:>10} {:>11} {:>10} {:>12} {:>8} {:>8} {:>8}  note",
        "scenario",
        "start s",
        "msgs/s",
        "cpu %/inst",
        "KiB/inst",
        "broker %/inst",
        "leave s",
        "death s",
        "join s"
    );
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let runs = sizes
        .iter()
        .flat_map(|n| protocols.iter().map(move |p| (*n, *p)));
    for (n, protocol) in runs {
        let mut child = std::process::Command::new(&args[0]);
        child.args(["--one", &n.to_string(), "--protocol", protocol]);
        if args.iter().any(|a| a == "--rabbitmq") {
            child.arg("--rabbitmq");
        }
        let out = child.output();
        let row: Option<serde_json::Value> = out.ok().and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
        });
        let Some(row) = row else {
            println!("scale N={n} {protocol}: the run ended without a result (killed?)");
            continue;
        };
        let f = |key: &str, digits: usize| opt(row[key].as_f64(), digits);
        println!(
            "{:<32} {:>8} {:>10} {:>11} {:>10} {:>12} {:>8} {:>8} {:>8}  {}",
            row["name"].as_str().unwrap_or("?"),
            f("start_s", 2),
            f("steady_msgs_per_s", 0),
            f("cpu_pct_per_instance", 3),
            f("rss_kib_per_instance", 0),
            f("broker_cpu_pct_per_instance", 3),
            f("leave_s", 2),
            f("silent_death_s", 2),
            f("join_s", 2),
            row["note"].as_str().unwrap_or("")
        );
        rows.push(row);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::to_string_pretty(&rows).unwrap_or_default();
    let file = if args.iter().any(|a| a == "--rabbitmq") {
        "scale-rabbitmq.json"
    } else {
        "scale.json"
    };
    let _ = std::fs::write(dir.join(file), json);
}
