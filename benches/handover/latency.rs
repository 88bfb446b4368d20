//! Latency at a fixed offered rate: into the entry queue, out of the exit queue, every message
//! stamped at publish. A message that never arrives, or whose publish failed, counts as
//! infinitely late: a run that loses more than 1% has an infinite p99, never a flattering one.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mailroute_actors::broker::{Destination, HeaderValue, QueueSpec, SharedBroker};
use mailroute_actors::traffic::{mailerq_json, test_message};

use crate::baselines::{self, Baseline};
use crate::common::TestVhost;
use crate::measure::percentile;
use crate::scenarios::{a_with_phantom_b, settings};
use crate::{REPEATS, b_ip};

const SENT_HEADER: &str = "x-bench-sent-us";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub scenario: String,
    pub rate: u32,
    /// Length of each run.
    pub seconds: u64,
    pub runs: usize,
    /// Over all runs: messages offered, never arrived, and publishes that failed.
    pub sent: usize,
    pub lost: usize,
    pub publish_errors: usize,
    /// Medians over the runs of each run's p50, p99 and max (lost messages count as infinite).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Each run's p99, in the order measured.
    pub p99_runs_ms: Vec<f64>,
}

/// One run: what was sent, what failed to publish, and the latency of each arrival.
pub struct Run {
    sent: usize,
    publish_errors: usize,
    samples: Vec<f64>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Offers `rate` msgs/s into `entry` for `seconds` and measures arrival in `exit`. The load
/// generator runs on its own thread, runtime and connection, so it neither shares the event loop
/// under test nor lets confirms of one message delay the next.
async fn offer(address: String, entry: &str, exit: &str, rate: u32, seconds: u64) -> Run {
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
                    // Whatever has not arrived 10 s after the last arrival is lost.
                    let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
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
            let body = bytes::Bytes::from(mailerq_json("latency", Some(&[b_ip()]), 1024));
            let per_tick = (rate as usize / 1000).max(1);
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut publishes = Vec::with_capacity(total);
            let mut sent = 0;
            while sent < total {
                interval.tick().await;
                for _ in 0..per_tick.min(total - sent) {
                    let mut m = test_message(&format!("lat-{sent}"), Vec::new());
                    m.body = body.clone();
                    m.properties_mut()
                        .headers
                        .insert(SENT_HEADER.into(), HeaderValue::I64(now_us() as i64));
                    let (broker, entry, errors) = (broker.clone(), entry.clone(), errors.clone());
                    publishes.push(tokio::spawn(async move {
                        if broker
                            .publish(&Destination::queue(&entry), &m, true)
                            .await
                            .is_err()
                        {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }));
                    sent += 1;
                }
            }
            for p in publishes {
                let _ = p.await;
            }
            let samples = collector.await.unwrap_or_default();
            Run {
                sent,
                publish_errors: errors.load(std::sync::atomic::Ordering::Relaxed),
                samples,
            }
        });
        let _ = tx.send(result);
    });
    rx.await.unwrap_or(Run {
        sent: 0,
        publish_errors: 0,
        samples: Vec::new(),
    })
}

/// Latency through a baseline pipeline, A to B.
async fn through_baseline(kind: Baseline, rate: u32, seconds: u64, prefetch: u16) -> Run {
    let v = TestVhost::new("bench-lat-base");
    let admin = v.broker().await;
    for q in ["A", "B"] {
        admin.declare_queue(&QueueSpec::durable(q)).await.unwrap();
    }
    let pipeline = baselines::start(kind, &v, prefetch).await;
    let run = offer(v.address(), "A", "B", rate, seconds).await;
    pipeline.stop().await;
    run
}

/// Latency of a handover: into a's outbox, out of b's.
async fn through_handover(rate: u32, seconds: u64, prefetch: u16) -> Run {
    let v = TestVhost::new("bench-lat-handover");
    let broker = v.broker().await;
    let mut a = settings("a", std::net::IpAddr::from([10, 8, 0, 1]), prefetch);
    a.warmup = Duration::ZERO;
    let outbox = a.outbox.clone();
    let instance = a_with_phantom_b(&broker, a).await;
    let run = offer(v.address(), &outbox, "b.outbox", rate, seconds).await;
    instance.shutdown(Duration::from_secs(5)).await;
    run
}

/// Every pipeline at `rate`, `REPEATS` runs each, interleaved so drift in machine load hits
/// all alike.
pub async fn rows(rate: u32, seconds: u64, prefetch: u16, shovel: bool) -> Vec<Latency> {
    let kinds: Vec<Baseline> = Baseline::ALL
        .into_iter()
        .filter(|k| shovel || *k != Baseline::Shovel)
        .collect();
    let mut runs: Vec<Vec<Run>> = (0..=kinds.len()).map(|_| Vec::new()).collect();
    for _ in 0..REPEATS {
        for (i, kind) in kinds.iter().enumerate() {
            runs[i].push(through_baseline(*kind, rate, seconds, prefetch).await);
        }
        runs[kinds.len()].push(through_handover(rate, seconds, prefetch).await);
    }
    let names = kinds
        .iter()
        .map(|k| k.name())
        .chain(std::iter::once("mailroute handover"));
    names
        .zip(runs)
        .map(|(name, runs)| row(name, rate, seconds, runs))
        .collect()
}

/// Percentiles of each run, and their medians over the runs.
fn row(scenario: &str, rate: u32, seconds: u64, runs: Vec<Run>) -> Latency {
    let (mut sent, mut lost, mut publish_errors) = (0, 0, 0);
    let mut per_run: Vec<[f64; 3]> = runs
        .into_iter()
        .map(|run| {
            let missing = run.sent.saturating_sub(run.samples.len());
            sent += run.sent;
            lost += missing;
            publish_errors += run.publish_errors;
            let mut samples = run.samples;
            samples.extend(std::iter::repeat_n(f64::INFINITY, missing));
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
        sent,
        lost,
        publish_errors,
        p50_ms: median(0, &mut per_run),
        p99_ms: median(1, &mut per_run),
        max_ms: median(2, &mut per_run),
        p99_runs_ms,
    }
}
