//! Handover throughput and latency, mailroute against a bare lapin pipeline, in one run.
//!
//! `cargo bench --bench handover` (add `-- --quick` for a short run). Needs RabbitMQ on
//! 127.0.0.1:5672 for the broker scenarios and says so when it is not there; the engine-only
//! and router scenarios run regardless. Prints a table and writes `target/bench/handover.json`.
//! Every broker scenario runs 3 times; the median is reported, with the ratio against the
//! baseline measured in the same run (the machine is shared and noisy: only ratios compare).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestVhost;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mailroute_actors::broker::{Destination, HeaderValue, Message, QueueSpec, SharedBroker};
use mailroute_actors::memory::MemoryBroker;
use mailroute_actors::routing::{
    MessageFacts, OwnershipTable, PeerRoute, RoutePolicy, Unroutable, decide, extract_ips,
};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};
use mailroute_actors::wire::{self, Announcement, ClusterMessage};
use mailroute_actors::{Instance, InstanceSettings};

/// The allocator `mailroute serve` ships with (see `src/main.rs`), so the engine is measured as
/// it runs; the bare lapin baseline in this process gets it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 3;
const B_IP: [u8; 4] = [10, 8, 0, 2];

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    scenario: String,
    size: usize,
    messages: usize,
    seconds: f64,
    msgs_per_s: f64,
    mib_per_s: f64,
    /// CPU seconds of this (the bench) process per 10k messages.
    cpu_s_per_10k: f64,
    /// CPU seconds of the RabbitMQ node per 10k messages.
    broker_cpu_s_per_10k: Option<f64>,
    rss_mib: f64,
    /// Throughput against the baseline of the same size (> 1: faster).
    ratio: Option<f64>,
    /// CPU per message against the baseline of the same size (< 1: cheaper).
    cpu_ratio: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Latency {
    scenario: String,
    rate: u32,
    /// Length of each run.
    seconds: u64,
    runs: usize,
    /// Medians over the runs of each run's p50, p99 and max.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Each run's p99, in the order measured.
    p99_runs_ms: Vec<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct MemoryBound {
    waiting: usize,
    prefetch: u16,
    start_rss_mib: f64,
    peak_rss_mib: f64,
    drained: usize,
    msgs_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Micro {
    name: String,
    ns_per_op: f64,
}

struct Sample {
    elapsed: Duration,
    cpu: Duration,
    broker_cpu: Option<Duration>,
}

fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the RabbitMQ node (beam.smp), if it runs on this machine.
fn broker_cpu() -> Option<Duration> {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "beam.smp" {
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

struct Meter {
    cpu: Duration,
    broker: Option<Duration>,
}

impl Meter {
    fn start() -> Self {
        Meter {
            cpu: process_cpu(),
            broker: broker_cpu(),
        }
    }

    fn stop(self, elapsed: Duration) -> Sample {
        Sample {
            elapsed,
            cpu: process_cpu().saturating_sub(self.cpu),
            broker_cpu: broker_cpu()
                .zip(self.broker)
                .map(|(b, a)| b.saturating_sub(a)),
        }
    }
}

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

/// Fixed-interval polling: `testkit::wait_for` backs off up to 100 ms, which would blur the
/// start and end of a measurement by as much.
async fn poll_until<F, Fut>(every: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(600);
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "scenario did not complete in 600 s"
        );
        tokio::time::sleep(every).await;
    }
}

async fn wait_depth(broker: &SharedBroker, queue: &str, n: usize) {
    poll_until(Duration::from_millis(10), || async {
        common::ready(broker, queue).await >= n
    })
    .await;
}

/// Scenario 1: a bare lapin consume → publish with confirm → ack pipeline, A to B.
/// The bare lapin pipeline's connection and channels: consume from A (prefetch), publish to B
/// in confirm mode.
async fn lapin_channels(
    address: &str,
    prefetch: u16,
) -> (Connection, lapin::Channel, lapin::Channel) {
    let runtime = async_rs::Runtime::tokio_with_handle(tokio::runtime::Handle::current());
    let conn = Connection::connect_with_runtime(address, ConnectionProperties::default(), runtime)
        .await
        .unwrap();
    let consume = conn.create_channel().await.unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    (conn, consume, publish)
}

/// Consume A → publish to B with confirm → ack A once confirmed; `limit` deliveries (or until
/// the consumer ends), each finished one counted in `done`.
async fn lapin_pump(
    consume: lapin::Channel,
    publish: lapin::Channel,
    limit: Option<usize>,
    done: Arc<AtomicU64>,
) {
    let mut consumer = consume
        .basic_consume(
            "A".into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut taken = 0;
    while limit.is_none_or(|l| taken < l) {
        let Some(Ok(delivery)) = consumer.next().await else {
            break;
        };
        taken += 1;
        let (publish, done) = (publish.clone(), done.clone());
        actix_rt::spawn(async move {
            let Ok(confirm) = publish
                .basic_publish(
                    "".into(),
                    "B".into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await
            else {
                return;
            };
            if confirm.await.is_ok_and(|c| c.is_ack())
                && delivery.acker.ack(BasicAckOptions::default()).await.is_ok()
            {
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Scenario 1: the bare lapin pipeline, A to B, timed until B holds every message.
async fn baseline(vhost: &TestVhost, messages: &[Message], prefetch: u16) -> Sample {
    let admin = vhost.broker().await;
    for q in ["A", "B"] {
        admin.declare_queue(&QueueSpec::durable(q)).await.unwrap();
    }
    fill(&admin, "A", messages).await;
    let (conn, consume, publish) = lapin_channels(&vhost.address(), prefetch).await;
    let meter = Meter::start();
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    lapin_pump(consume, publish, Some(messages.len()), done.clone()).await;
    wait_depth(&admin, "B", messages.len()).await;
    let sample = meter.stop(started.elapsed());
    let total = messages.len() as u64;
    poll_until(Duration::from_millis(5), || async {
        done.load(Ordering::Relaxed) >= total
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
    sample
}

fn settings(name: &str, ip: IpAddr, prefetch: u16) -> InstanceSettings {
    let mut s = InstanceSettings::new(name, vec![ip]);
    s.announce_interval = Duration::from_millis(500);
    s.peer_timeout = Duration::from_secs(600);
    s.hold_time = Duration::from_secs(600);
    s.prefetch = prefetch;
    s.warmup = Duration::from_millis(1500);
    s
}

async fn announce_b(broker: &SharedBroker, exchange: &str) {
    let a = Announcement {
        name: "b".into(),
        version: "bench".into(),
        started_at: 1,
        sequence: 1,
        local_ips: vec![b_ip()],
        outbox: "b.outbox".into(),
        broker: broker.identity(),
        console_url: None,
        config_hash: String::new(),
    };
    let m = ClusterMessage::Announcement(a);
    let body = wire::encode(&m).unwrap();
    broker
        .publish(
            &Destination::exchange(exchange, m.routing_key()),
            &Message::new(body, Default::default()),
            false,
        )
        .await
        .unwrap();
}

async fn wait_consuming(instance: &Instance) -> (Meter, Instant) {
    poll_until(Duration::from_millis(1), || async {
        instance.stats.snapshot().consumed > 0
    })
    .await;
    (Meter::start(), Instant::now())
}

/// Instance a, listening, with a peer b that is announced (owning `B_IP`) but not running.
async fn a_with_phantom_b(broker: &SharedBroker, a: InstanceSettings) -> Instance {
    broker
        .declare_queue(&QueueSpec::durable("b.outbox"))
        .await
        .unwrap();
    let exchange = a.cluster_exchange.clone();
    let instance = Instance::start(a, broker.clone(), broker.clone())
        .await
        .unwrap();
    wait_for("a listens", Duration::from_secs(30), || async {
        instance.stats.snapshot().announcements_received > 0
    })
    .await
    .unwrap();
    announce_b(broker, &exchange).await;
    instance
}

/// Scenario 2: a's outbox holds N messages that b owns; b is announced but not running.
async fn handover(broker: SharedBroker, messages: &[Message], prefetch: u16) -> Sample {
    let a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    mailroute_actors::own_queues::declare_queues(&a, &broker)
        .await
        .unwrap();
    fill(&broker, &a.outbox, messages).await;
    let instance = a_with_phantom_b(&broker, a).await;
    let (meter, started) = wait_consuming(&instance).await;
    wait_depth(&broker, "b.outbox", messages.len()).await;
    let sample = meter.stop(started.elapsed());
    instance.shutdown(Duration::from_secs(5)).await;
    sample
}

/// Scenario 3: a and b both run; mail for b enters a's outbox and ends in b's deliver queue.
async fn full_path(
    a_broker: SharedBroker,
    b_broker: SharedBroker,
    messages: &[Message],
    prefetch: u16,
) -> Sample {
    let a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    let mut b = settings("b", b_ip(), prefetch);
    b.warmup = Duration::ZERO;
    mailroute_actors::own_queues::declare_queues(&a, &a_broker)
        .await
        .unwrap();
    fill(&a_broker, &a.outbox, messages).await;
    let deliver = b.deliver.clone();
    let ib = Instance::start(b, b_broker.clone(), b_broker.clone())
        .await
        .unwrap();
    let ia = Instance::start(a, a_broker.clone(), a_broker.clone())
        .await
        .unwrap();
    let (meter, started) = wait_consuming(&ia).await;
    wait_depth(&b_broker, &deliver, messages.len()).await;
    let sample = meter.stop(started.elapsed());
    ia.shutdown(Duration::from_secs(5)).await;
    ib.shutdown(Duration::from_secs(5)).await;
    sample
}

/// Scenario 6: the same two instances on the in-memory broker.
async fn engine_only(messages: &[Message], prefetch: u16) -> Sample {
    let memory = MemoryBroker::new("bench");
    let broker: SharedBroker = Arc::new(memory.clone());
    let mut a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    a.warmup = Duration::ZERO;
    let mut b = settings("b", b_ip(), prefetch);
    b.warmup = Duration::ZERO;
    let outbox = a.outbox.clone();
    let ib = Instance::start(b, broker.clone(), broker.clone())
        .await
        .unwrap();
    let ia = Instance::start(a, broker.clone(), broker.clone())
        .await
        .unwrap();
    wait_for("peers", Duration::from_secs(30), || async {
        ia.peers().await.len() == 1
    })
    .await
    .unwrap();
    // The MTA's part: take what b delivers, so the memory broker does not keep every message
    // (with RabbitMQ that memory is the broker's; here it would be page faults in the bench).
    let taken = Arc::new(AtomicU64::new(0));
    let mut mta = broker.consume("b.deliver", 1000).await.unwrap();
    let counter = taken.clone();
    actix_rt::spawn(async move {
        while let Some(Ok(delivery)) = mta.next().await {
            let _ = delivery.acker.ack().await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    // In memory, publishing is part of the measured work: there is no broker to pre-fill.
    let meter = Meter::start();
    let started = Instant::now();
    for m in messages {
        broker
            .publish(&Destination::queue(&outbox), m, true)
            .await
            .unwrap();
    }
    let total = messages.len() as u64;
    poll_until(Duration::from_millis(1), || async {
        taken.load(Ordering::Relaxed) >= total
    })
    .await;
    let sample = meter.stop(started.elapsed());
    drop((ia, ib));
    sample
}

const SENT_HEADER: &str = "x-bench-sent-us";

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Offers `rate` msgs/s into `entry` for `seconds` and measures arrival in `exit`. The load
/// generator runs on its own thread, runtime and connection, so it neither shares the event loop
/// under test nor lets confirms of one message delay the next.
async fn latency(
    address: String,
    entry: &str,
    exit: &str,
    rate: u32,
    seconds: u64,
    size: usize,
) -> (usize, Vec<f64>) {
    let (entry, exit) = (entry.to_string(), exit.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(async move {
            let broker: SharedBroker = Arc::new(
                mailroute::amqp::AmqpBroker::connect(&address)
                    .await
                    .unwrap(),
            );
            let mut stream = broker.consume(&exit, 1000).await.unwrap();
            let total = rate as usize * seconds as usize;
            let collector = tokio::spawn(async move {
                let mut samples = Vec::with_capacity(total);
                while samples.len() < total {
                    let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
                    let Ok(Some(Ok(d))) = next else { break };
                    let sent = d
                        .message
                        .header(SENT_HEADER)
                        .and_then(HeaderValue::as_i64)
                        .unwrap_or(0) as u64;
                    samples.push(now_us().saturating_sub(sent) as f64 / 1000.0);
                    // Not awaited here: waiting for each ack would delay taking the next
                    // delivery, and the measurement would add to the latency it measures.
                    let acker = d.acker;
                    tokio::spawn(async move {
                        let _ = acker.ack().await;
                    });
                }
                samples
            });
            let body = bytes::Bytes::from(mailerq_json("latency", Some(&[b_ip()]), size));
            let per_tick = (rate as usize / 1000).max(1);
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0;
            while sent < total {
                interval.tick().await;
                for _ in 0..per_tick.min(total - sent) {
                    let mut m = test_message(&format!("lat-{sent}"), Vec::new());
                    m.body = body.clone();
                    m.properties_mut()
                        .headers
                        .insert(SENT_HEADER.into(), HeaderValue::I64(now_us() as i64));
                    let (broker, entry) = (broker.clone(), entry.clone());
                    tokio::spawn(async move {
                        let _ = broker.publish(&Destination::queue(&entry), &m, true).await;
                    });
                    sent += 1;
                }
            }
            let samples = collector.await.unwrap_or_default();
            (samples.len(), samples)
        });
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_default()
}

/// Memory bound: `waiting` messages (1 KiB, for a local IP) queued in an outbox, then a real
/// `mailroute serve` process started on it; its RSS is sampled while it drains a tenth of them.
/// RSS must follow the prefetch, not the queue length.
async fn memory_bound(waiting: usize) -> MemoryBound {
    let vhost = TestVhost::new("bench-rss");
    let client = vhost.broker().await;
    let prefetch = 1000;
    let ip = IpAddr::from([10, 8, 1, 1]);
    let mut s = settings("rss", ip, prefetch);
    s.outbox = "rss.outbox".into();
    s.deliver = "rss.deliver".into();
    s.failure = "rss.failure".into();
    s.retry = "rss.retry".into();
    mailroute_actors::own_queues::declare_queues(&s, &client)
        .await
        .unwrap();
    let body = bytes::Bytes::from(mailerq_json("rss", Some(&[ip]), 1024));
    for chunk in (0..waiting).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<(String, Message)> = chunk
            .iter()
            .map(|i| {
                let mut m = test_message(&format!("rss-{i}"), Vec::new());
                m.body = body.clone();
                ("rss.outbox".to_string(), m)
            })
            .collect();
        common::publish_all(&client, &batch).await;
    }
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = "rabbitmq-qos: 1000\n";
    let config = common::servers::write_config(&dir, &vhost.address(), "rss", &[ip], extra);
    let server = common::servers::Server::spawn(&dir, "rss", &config);
    let pid = server.child.id().to_string();
    wait_for("serving", Duration::from_secs(60), || async {
        server.log_count("serving") > 0
    })
    .await
    .unwrap();
    let start_rss = common::rss_mib(&pid);
    let target = waiting / 10;
    let mut peak: f64 = start_rss;
    let started = Instant::now();
    loop {
        peak = peak.max(common::rss_mib(&pid));
        if common::ready(&client, "rss.deliver").await >= target {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "memory scenario stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    MemoryBound {
        waiting,
        prefetch,
        start_rss_mib: start_rss,
        peak_rss_mib: peak,
        drained: target,
        msgs_per_s: target as f64 / elapsed.as_secs_f64(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Percentiles of each run, and their medians over the runs.
fn latency_row(scenario: &str, rate: u32, seconds: u64, runs: Vec<(usize, Vec<f64>)>) -> Latency {
    let mut per_run: Vec<[f64; 3]> = runs
        .into_iter()
        .map(|(_, mut samples)| {
            samples.sort_by(f64::total_cmp);
            [
                percentile(&samples, 0.5),
                percentile(&samples, 0.99),
                samples.last().copied().unwrap_or(f64::NAN),
            ]
        })
        .collect();
    let median = |i: usize, runs: &mut Vec<[f64; 3]>| {
        runs.sort_by(|a, b| a[i].total_cmp(&b[i]));
        runs.get(runs.len() / 2).map_or(f64::NAN, |r| r[i])
    };
    let p99_runs_ms = per_run.iter().map(|r| r[1]).collect();
    Latency {
        scenario: scenario.into(),
        rate,
        seconds,
        runs: per_run.len(),
        p50_ms: median(0, &mut per_run),
        p99_ms: median(1, &mut per_run),
        max_ms: median(2, &mut per_run),
        p99_runs_ms,
    }
}

fn row(scenario: &str, size: usize, n: usize, mut samples: Vec<Sample>) -> Row {
    samples.sort_by_key(|s| s.elapsed);
    let median = &samples[samples.len() / 2];
    let secs = median.elapsed.as_secs_f64();
    let per_10k = |d: Duration| d.as_secs_f64() * 10_000.0 / n as f64;
    Row {
        scenario: scenario.into(),
        size,
        messages: n,
        seconds: secs,
        msgs_per_s: n as f64 / secs,
        mib_per_s: (n * size) as f64 / secs / (1024.0 * 1024.0),
        cpu_s_per_10k: per_10k(median.cpu),
        broker_cpu_s_per_10k: median.broker_cpu.map(per_10k),
        rss_mib: common::rss_mib("self"),
        ratio: None,
        cpu_ratio: None,
    }
}

fn micro_benches() -> Vec<Micro> {
    let mut out = Vec::new();
    let policy = RoutePolicy {
        default_ips: vec![],
        max_hops: 2,
        unroutable: Unroutable::Hold,
        max_hold: Duration::from_secs(3600),
    };
    for size in [10u32, 1_000, 100_000] {
        let local = vec![IpAddr::from([192, 168, 255, 1])];
        let table = OwnershipTable::new(&local);
        let peer = Arc::new(PeerRoute {
            name: "p".into(),
            outbox: "p.outbox".into(),
            broker: "b".into(),
        });
        let ips: Vec<IpAddr> = (0..size)
            .map(|i| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()))
            .collect();
        table.replace_peers(&local, ips.iter().map(|ip| (*ip, peer.clone())));
        let facts: Vec<MessageFacts> = (0..1024)
            .map(|i| MessageFacts {
                ips: Some(vec![ips[(i * 7919) % ips.len()]]),
                ..MessageFacts::default()
            })
            .collect();
        let rounds = 1_000_000;
        let started = Instant::now();
        for i in 0..rounds {
            std::hint::black_box(decide(
                std::hint::black_box(&facts[i % facts.len()]),
                &policy,
                &table,
            ));
        }
        out.push(Micro {
            name: format!("route decision, table of {size} IPs"),
            ns_per_op: started.elapsed().as_nanos() as f64 / rounds as f64,
        });
    }
    // `ips` before the MIME part (parsing stops there) and after it (the whole body is read).
    for (size, ips_last) in [
        (1024usize, false),
        (1 << 20, false),
        (1024, true),
        (1 << 20, true),
    ] {
        let listed = [b_ip()];
        let mut body = mailerq_json("x", (!ips_last).then_some(&listed[..]), size);
        if ips_last {
            body.pop();
            body.extend_from_slice(format!(r#","ips":["{}"]}}"#, b_ip()).as_bytes());
        }
        let rounds = if size > 100_000 { 200 } else { 200_000 };
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(extract_ips(std::hint::black_box(&body)).ok());
        }
        let ns = started.elapsed().as_nanos() as f64 / rounds as f64;
        // A rate only where the whole body is read; with `ips` first it is not.
        let name = if ips_last {
            format!(
                "ips extraction, {} body, ips last ({:.0} MiB/s)",
                human(size),
                size as f64 / ns * 1e9 / 1048576.0
            )
        } else {
            format!(
                "ips extraction, {} body, ips first (rest not read)",
                human(size)
            )
        };
        out.push(Micro {
            name,
            ns_per_op: ns,
        });
    }
    out
}

fn human(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
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
    // `--latency S`: only the latency scenarios, 3 runs of S seconds each.
    if let Some(secs) = flag::<u64>(&args, "--latency") {
        let system = actix_rt::System::new();
        let rows = system.block_on(latency_rows(secs, 1000));
        print_report(&[], &rows, &[]);
        return;
    }
    if args.iter().any(|a| a == "--micro") {
        for m in micro_benches() {
            println!("{:<50} {:>10.1}", m.name, m.ns_per_op);
        }
        return;
    }
    // `--engine N`: only the engine-only scenario with N messages (for profiling).
    if let Some(n) = flag::<usize>(&args, "--engine") {
        let system = actix_rt::System::new();
        let sample = system.block_on(engine_only(&bodies(n, 1024), 1000));
        print_single(&row("engine only (memory broker)", 1024, n, vec![sample]));
        return;
    }
    // `--handover N` / `--baseline N`: only that scenario with N messages of 1 KiB (for
    // profiling one against the other).
    for (name_flag, name) in [
        ("--handover", "mailroute handover"),
        ("--baseline", "baseline (bare lapin)"),
    ] {
        let Some(n) = flag::<usize>(&args, name_flag) else {
            continue;
        };
        // `--size S`: message size in bytes (default 1 KiB).
        let size = flag::<usize>(&args, "--size").unwrap_or(1024);
        let system = actix_rt::System::new();
        let sample = system.block_on(async move {
            let vhost = TestVhost::new("bench-profile");
            let messages = bodies(n, size);
            if name_flag == "--baseline" {
                baseline(&vhost, &messages, 1000).await
            } else {
                handover(vhost.broker().await, &messages, 1000).await
            }
        });
        print_single(&row(name, size, n, vec![sample]));
        return;
    }
    let system = actix_rt::System::new();
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

/// Latency at 5,000 msgs/s offered, baseline and handover, 3 runs each, interleaved.
async fn latency_rows(seconds: u64, prefetch: u16) -> Vec<Latency> {
    const RATE: u32 = 5000;
    let (mut base, mut hand) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        base.push(latency_baseline(RATE, seconds, prefetch).await);
        hand.push(latency_handover(RATE, seconds, prefetch).await);
    }
    vec![
        latency_row("baseline (bare lapin)", RATE, seconds, base),
        latency_row("mailroute handover", RATE, seconds, hand),
    ]
}

async fn run(quick: bool, latency_secs: Option<u64>) {
    let prefetch = 1000;
    let sizes: [(usize, usize); 2] = if quick {
        [(1024, 5_000), (65536, 500)]
    } else {
        [(1024, 20_000), (65536, 2_000)]
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut latencies = Vec::new();
    let broker_up = rabbitmq_reachable().await;
    if !broker_up {
        eprintln!(
            "RabbitMQ is not reachable at 127.0.0.1:5672: the broker scenarios are skipped (start it with `rabbitmq-server -detached`)."
        );
    }
    for (size, n) in sizes {
        let messages = bodies(n, size);
        let bytes = size;
        if broker_up {
            let mut base = Vec::new();
            let mut hand = Vec::new();
            let mut full = Vec::new();
            // Interleaved so that drift in machine load hits all three alike.
            for _ in 0..REPEATS {
                let v = TestVhost::new("bench-base");
                base.push(baseline(&v, &messages, prefetch).await);
                let v = TestVhost::new("bench-handover");
                hand.push(handover(v.broker().await, &messages, prefetch).await);
                let v = TestVhost::new("bench-full");
                full.push(full_path(v.broker().await, v.broker().await, &messages, prefetch).await);
            }
            rows.push(row("baseline (bare lapin)", bytes, n, base));
            rows.push(row("mailroute handover", bytes, n, hand));
            rows.push(row("mailroute full path (a+b)", bytes, n, full));
        }
        let engine: Vec<Sample> = {
            let mut v = Vec::new();
            for _ in 0..REPEATS {
                v.push(engine_only(&messages, prefetch).await);
            }
            v
        };
        rows.push(row("engine only (memory broker)", bytes, n, engine));
    }
    if broker_up {
        let seconds = latency_secs.unwrap_or(if quick { 3 } else { 10 });
        latencies = latency_rows(seconds, prefetch).await;
    }
    for size in sizes.map(|(s, _)| s) {
        let base = rows
            .iter()
            .find(|r| r.scenario.starts_with("baseline") && r.size / 1024 == size / 1024)
            .map(|r| (r.msgs_per_s, r.cpu_s_per_10k));
        if let Some((tput, cpu)) = base {
            for r in rows.iter_mut().filter(|r| r.size / 1024 == size / 1024) {
                r.ratio = Some(r.msgs_per_s / tput);
                r.cpu_ratio = Some(r.cpu_s_per_10k / cpu);
            }
        }
    }
    let memory = if broker_up {
        Some(memory_bound(if quick { 100_000 } else { 1_000_000 }).await)
    } else {
        None
    };
    let micro = micro_benches();
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

/// Latency through the bare lapin pipeline, A to B.
async fn latency_baseline(rate: u32, seconds: u64, prefetch: u16) -> (usize, Vec<f64>) {
    let v = TestVhost::new("bench-lat-base");
    let admin = v.broker().await;
    for q in ["A", "B"] {
        admin.declare_queue(&QueueSpec::durable(q)).await.unwrap();
    }
    let pipeline = actix_rt::spawn(baseline_forever(v.address(), prefetch));
    let result = latency(v.address(), "A", "B", rate, seconds, 1024).await;
    pipeline.abort();
    result
}

/// Latency of a handover: into a's outbox, out of b's.
async fn latency_handover(rate: u32, seconds: u64, prefetch: u16) -> (usize, Vec<f64>) {
    let v = TestVhost::new("bench-lat-handover");
    let broker = v.broker().await;
    let mut a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    a.warmup = Duration::ZERO;
    let outbox = a.outbox.clone();
    let instance = a_with_phantom_b(&broker, a).await;
    wait_for("b known", Duration::from_secs(30), || async {
        instance.peers().await.len() == 1
    })
    .await
    .unwrap();
    let result = latency(v.address(), &outbox, "b.outbox", rate, seconds, 1024).await;
    instance.shutdown(Duration::from_secs(5)).await;
    result
}

/// The baseline pipeline, running until aborted (for the latency scenario).
async fn baseline_forever(address: String, prefetch: u16) {
    let (_conn, consume, publish) = lapin_channels(&address, prefetch).await;
    lapin_pump(consume, publish, None, Arc::new(AtomicU64::new(0))).await;
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
        "\n{:<30} {:>7} {:>7} {:>9} {:>8} {:>9} {:>10} {:>7} {:>7} {:>7}",
        "scenario",
        "size",
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
            "{:<30} {:>7} {:>7} {:>9.0} {:>8.1} {:>9.3} {:>10} {:>7.0} {:>7} {:>7}",
            r.scenario,
            human(r.size),
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
        "\n{:<30} {:>7} {:>5} {:>9} {:>8} {:>8} {:>8}",
        "latency (1 KiB)", "rate/s", "secs", "runs", "p50 ms", "p99 ms", "max ms"
    );
    for l in latencies {
        let each: Vec<String> = l.p99_runs_ms.iter().map(|p| format!("{p:.1}")).collect();
        println!(
            "{:<30} {:>7} {:>5} {:>9} {:>8.2} {:>8.2} {:>8.2}   p99 of each run: {}",
            l.scenario,
            l.rate,
            l.seconds,
            l.runs,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            each.join(" / ")
        );
    }
}
