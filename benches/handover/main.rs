//! Handover throughput and latency, mailroute against what a user could do without it, in one
//! run: a bare lapin pipeline, a lapin pipeline with mailroute's own ack batching and mandatory
//! publishes, and RabbitMQ's Shovel (see `handover/baselines.rs`).
//!
//! `cargo bench --bench handover` (add `-- --quick` for a short run). Needs RabbitMQ on
//! 127.0.0.1:5672 for the broker scenarios and says so when it is not there; the engine-only
//! and micro scenarios run regardless. Prints a table and writes `target/bench/handover.json`.
//! Every broker scenario runs 3 times, interleaved; the median is reported with its ratio
//! against the best baseline of the same run, size and drain mode (the machine is shared and
//! noisy: only ratios compare). Every scenario is timed the same way (`measure::Watch`).

#[path = "../../tests/common/mod.rs"]
mod common;

mod baselines;
mod latency;
mod measure;
mod memory;
mod micro;
mod scenarios;

use std::net::IpAddr;
use std::time::Duration;

use baselines::Baseline;
use common::TestVhost;
use latency::Latency;
use mailroute_actors::broker::{Message, SharedBroker};
use mailroute_actors::traffic::{mailerq_json, test_message};
use measure::{Row, human, row};
use micro::Micro;

/// The allocator `mailroute serve` ships with (see `src/main.rs`), so the engine is measured as
/// it runs; the lapin baselines in this process get it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 3;
const B_IP: [u8; 4] = [10, 8, 0, 2];
const PREFETCH: u16 = 1000;

fn b_ip() -> IpAddr {
    IpAddr::from(B_IP)
}

fn bodies(n: usize, size: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let id = format!("bench-{i}");
            test_message(&id, mailerq_json(&id, Some(&[b_ip()]), size))
        })
        .collect()
}

async fn fill(broker: &SharedBroker, queue: &str, messages: &[Message]) {
    let batch: Vec<(String, Message)> = messages
        .iter()
        .map(|m| (queue.to_string(), m.clone()))
        .collect();
    common::publish_all(broker, &batch).await;
}

async fn rabbitmq_reachable() -> bool {
    tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect("127.0.0.1:5672"),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let system = actix_rt::System::new();
    // `--latency S`: only the latency scenarios, 3 runs of S seconds each, at `--rate R`
    // msgs/s offered (default: half the best 1 KiB baseline, measured first).
    if let Some(secs) = flag::<u64>(&args, "--latency") {
        let rows = system.block_on(async move {
            let shovel = baselines::shovel_available();
            let rate = match flag::<u32>(&args, "--rate") {
                Some(rate) => rate,
                None => half_best(&baseline_rows(&bodies(20_000, 1024), 1024, true, shovel).await),
            };
            latency::rows(rate, secs, PREFETCH, shovel).await
        });
        print_report(&[], &rows, &[]);
        return;
    }
    if args.iter().any(|a| a == "--micro") {
        for m in micro::micro_benches() {
            println!("{:<50} {:>10.1}", m.name, m.ns_per_op);
        }
        return;
    }
    // `--engine N`: only the engine-only scenario with N messages (for profiling).
    if let Some(n) = flag::<usize>(&args, "--engine") {
        let sample = system.block_on(scenarios::engine_only(&bodies(n, 1024), PREFETCH));
        print_single(&row(
            "engine only (memory broker)",
            1024,
            n,
            false,
            vec![sample],
        ));
        return;
    }
    // `--handover N` / `--baseline N`: only that scenario with N messages of `--size S` bytes
    // (default 1 KiB), for profiling one against the other.
    for (name_flag, name) in [
        ("--handover", "mailroute handover"),
        ("--baseline", "baseline (lapin, multiple acks)"),
    ] {
        let Some(n) = flag::<usize>(&args, name_flag) else {
            continue;
        };
        let size = flag::<usize>(&args, "--size").unwrap_or(1024);
        let sample = system.block_on(async move {
            let messages = bodies(n, size);
            if name_flag == "--baseline" {
                baselines::throughput(Baseline::MultipleAcks, &messages, PREFETCH, false).await
            } else {
                let vhost = TestVhost::new("bench-profile");
                scenarios::handover(&vhost, &messages, PREFETCH, false, false).await
            }
        });
        print_single(&row(name, size, n, false, vec![sample]));
        return;
    }
    // `--latency-secs S`: the full run with latency windows of S seconds (default 10).
    system.block_on(run(quick, flag::<u64>(&args, "--latency-secs")));
}

/// The value after `name` on the command line, if given and well-formed.
fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// One scenario run alone, for profiling.
fn print_single(r: &Row) {
    println!(
        "{:.0} msgs/s, {:.2} us CPU per message",
        r.msgs_per_s,
        r.cpu_s_per_10k * 100.0
    );
}

/// The baselines (the Shovel only if its plugin is on), `REPEATS` runs each, interleaved.
async fn baseline_rows(messages: &[Message], size: usize, drained: bool, shovel: bool) -> Vec<Row> {
    let kinds: Vec<Baseline> = Baseline::ALL
        .into_iter()
        .filter(|k| shovel || *k != Baseline::Shovel)
        .collect();
    let mut samples: Vec<Vec<measure::Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    for _ in 0..REPEATS {
        for (i, kind) in kinds.iter().enumerate() {
            samples[i].push(baselines::throughput(*kind, messages, PREFETCH, drained).await);
        }
    }
    kinds
        .iter()
        .zip(samples)
        .map(|(k, s)| row(k.name(), size, messages.len(), drained, s))
        .collect()
}

/// Half the best 1 KiB baseline throughput with B drained: the offered rate for latency, so
/// that it measures the pipelines, not the queueing of a machine past its capacity.
fn half_best(rows: &[Row]) -> u32 {
    let best = rows
        .iter()
        .filter(|r| r.is_baseline() && r.drained && r.size / 1024 == 1)
        .map(|r| r.msgs_per_s)
        .fold(0.0, f64::max);
    ((best / 2.0) as u32).max(100)
}

async fn run(quick: bool, latency_secs: Option<u64>) {
    let sizes: [(usize, usize); 2] = if quick {
        [(1024, 5_000), (65536, 500)]
    } else {
        [(1024, 20_000), (65536, 2_000)]
    };
    let mut rows: Vec<Row> = Vec::new();
    let broker_up = rabbitmq_reachable().await;
    if !broker_up {
        eprintln!(
            "RabbitMQ is not reachable at 127.0.0.1:5672: the broker scenarios are skipped (start it with `rabbitmq-server -detached`)."
        );
    }
    let shovel = broker_up && baselines::shovel_available();
    if broker_up && !shovel {
        eprintln!("the rabbitmq_shovel plugin cannot be enabled: the Shovel baseline is skipped");
    }
    for (size, n) in sizes {
        let messages = bodies(n, size);
        if broker_up {
            for drained in [false, true] {
                rows.extend(baseline_rows(&messages, size, drained, shovel).await);
                let (mut hand, mut full, mut quorum) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..REPEATS {
                    let v = TestVhost::new("bench-handover");
                    hand.push(scenarios::handover(&v, &messages, PREFETCH, drained, false).await);
                    if !drained {
                        // The same handover with every queue a quorum queue: the price of the
                        // replicated queue type, measured beside classic in the same run.
                        let v = TestVhost::new("bench-quorum");
                        quorum
                            .push(scenarios::handover(&v, &messages, PREFETCH, false, true).await);
                        let v = TestVhost::new("bench-full");
                        full.push(scenarios::full_path(&v, &messages, PREFETCH).await);
                    }
                }
                rows.push(row("mailroute handover", size, n, drained, hand));
                if !quorum.is_empty() {
                    rows.push(row(
                        "mailroute handover, quorum queues",
                        size,
                        n,
                        drained,
                        quorum,
                    ));
                }
                if !full.is_empty() {
                    rows.push(row("mailroute full path (a+b)", size, n, drained, full));
                }
            }
        }
        let mut engine = Vec::new();
        for _ in 0..REPEATS {
            engine.push(scenarios::engine_only(&messages, PREFETCH).await);
        }
        rows.push(row("engine only (memory broker)", size, n, false, engine));
    }
    measure::compare(&mut rows);
    let latencies: Vec<Latency> = if broker_up {
        let seconds = latency_secs.unwrap_or(if quick { 3 } else { 10 });
        latency::rows(half_best(&rows), seconds, PREFETCH, shovel).await
    } else {
        Vec::new()
    };
    let memory = if broker_up {
        Some(memory::memory_bound(if quick { 100_000 } else { 1_000_000 }).await)
    } else {
        None
    };
    let micro = micro::micro_benches();
    print_report(&rows, &latencies, &micro);
    if let Some(m) = &memory {
        println!(
            "\nmemory: a `mailroute serve` process (prefetch {}) with {} messages waiting in its outbox: peak RSS {:.1} MiB, RSS at start {:.1} MiB; it drained {} of them at {:.0} msgs/s",
            m.prefetch, m.waiting, m.peak_rss_mib, m.start_rss_mib, m.drained, m.msgs_per_s
        );
    }
    let json = serde_json::json!({ "quick": quick, "throughput": rows, "latency": latencies, "micro": micro, "memory": memory });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("handover.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nwritten: {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

fn print_report(rows: &[Row], latencies: &[Latency], micro: &[Micro]) {
    if !rows.is_empty() {
        print_throughput(rows);
    }
    if !latencies.is_empty() {
        print_latency(latencies);
    }
    if !micro.is_empty() {
        println!("\n{:<50} {:>10}", "micro-benchmark", "ns/op");
        for m in micro {
            println!("{:<50} {:>10.1}", m.name, m.ns_per_op);
        }
    }
}

fn print_throughput(rows: &[Row]) {
    println!(
        "\n{:<32} {:>6} {:>7} {:>7} {:>9} {:>8} {:>9} {:>10} {:>7} {:>7} {:>7}",
        "scenario",
        "size",
        "B",
        "msgs",
        "msgs/s",
        "MiB/s",
        "cpu s/10k",
        "rmq s/10k",
        "RSS MiB",
        "x base",
        "cpu x"
    );
    for r in rows {
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        println!(
            "{:<32} {:>6} {:>7} {:>7} {:>9.0} {:>8.1} {:>9.3} {:>10} {:>7.0} {:>7} {:>7}",
            r.scenario,
            human(r.size),
            if r.drained { "drained" } else { "grows" },
            r.messages,
            r.msgs_per_s,
            r.mib_per_s,
            r.cpu_s_per_10k,
            opt(r.broker_cpu_s_per_10k, 3),
            r.rss_mib,
            opt(r.ratio, 2),
            opt(r.cpu_ratio, 2)
        );
    }
}

fn print_latency(latencies: &[Latency]) {
    println!(
        "\n{:<32} {:>7} {:>5} {:>5} {:>7} {:>6} {:>8} {:>8} {:>8}",
        "latency (1 KiB)", "rate/s", "secs", "runs", "lost", "errors", "p50 ms", "p99 ms", "max ms"
    );
    for l in latencies {
        let each: Vec<String> = l.p99_runs_ms.iter().map(|p| format!("{p:.1}")).collect();
        println!(
            "{:<32} {:>7} {:>5} {:>5} {:>7} {:>6} {:>8.2} {:>8.2} {:>8.2}   p99 of each run: {}",
            l.scenario,
            l.rate,
            l.seconds,
            l.runs,
            l.lost,
            l.publish_errors,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            each.join(" / ")
        );
    }
}
