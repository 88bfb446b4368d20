//! What every scenario measures, the same way: wall time from the moment the source queue
//! starts to drain until every message arrived, CPU of this process and of the RabbitMQ node,
//! and the rows the report prints.

use std::future::Future;
use std::time::{Duration, Instant};

use mailroute_actors::broker::SharedBroker;

use crate::common;

pub struct Sample {
    pub elapsed: Duration,
    pub cpu: Duration,
    pub broker_cpu: Option<Duration>,
}

pub struct Meter {
    cpu: Duration,
    broker: Option<Duration>,
    started: Instant,
}

impl Meter {
    pub fn start() -> Self {
        Meter {
            cpu: common::process_cpu(),
            broker: common::rabbitmq_cpu(),
            started: Instant::now(),
        }
    }

    pub fn stop(self) -> Sample {
        Sample {
            elapsed: self.started.elapsed(),
            cpu: common::process_cpu().saturating_sub(self.cpu),
            broker_cpu: common::rabbitmq_cpu()
                .zip(self.broker)
                .map(|(b, a)| b.saturating_sub(a)),
        }
    }
}

/// Fixed-interval polling: `testkit::wait_for` backs off up to 100 ms, which would blur the
/// start and end of a measurement by as much.
pub async fn poll_until<F, Fut>(every: Duration, mut condition: F)
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

/// The one timer of every broker scenario. Watching starts before the pipeline does (the
/// first look must find all `n` messages in `source`); the clock starts when `source` first
/// holds fewer, whoever takes them (a lapin consumer, mailroute, the Shovel), and stops in
/// [`Watch::until`] when everything arrived.
pub struct Watch(actix_rt::task::JoinHandle<Meter>);

impl Watch {
    pub async fn start(admin: &SharedBroker, source: &str, n: usize) -> Watch {
        let found = common::ready(admin, source).await;
        assert_eq!(found, n, "{source} must be full before the pipeline starts");
        let (admin, source) = (admin.clone(), source.to_string());
        Watch(actix_rt::spawn(async move {
            poll_until(Duration::from_millis(1), || async {
                common::ready(&admin, &source).await < n
            })
            .await;
            Meter::start()
        }))
    }

    pub async fn until<F, Fut>(self, arrived: F) -> Sample
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let meter = self.0.await.expect("start watcher");
        poll_until(Duration::from_millis(10), arrived).await;
        meter.stop()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub size: usize,
    pub messages: usize,
    /// B (the destination) drained by a consumer meanwhile, as the owning instance does.
    pub drained: bool,
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub mib_per_s: f64,
    /// CPU seconds of this (the bench) process per 10k messages.
    pub cpu_s_per_10k: f64,
    /// CPU seconds of the RabbitMQ node per 10k messages.
    pub broker_cpu_s_per_10k: Option<f64>,
    pub rss_mib: f64,
    /// Throughput against the best baseline of the same size and drain mode (> 1: faster).
    pub ratio: Option<f64>,
    /// CPU per message, this process and the broker together, against the baseline of the same
    /// size and drain mode that needs the least (< 1: cheaper).
    pub cpu_ratio: Option<f64>,
}

impl Row {
    pub fn is_baseline(&self) -> bool {
        self.scenario.starts_with("baseline") || self.scenario.starts_with("shovel")
    }

    pub fn total_cpu_s_per_10k(&self) -> f64 {
        self.cpu_s_per_10k + self.broker_cpu_s_per_10k.unwrap_or(0.0)
    }
}

pub fn row(scenario: &str, size: usize, n: usize, drained: bool, mut samples: Vec<Sample>) -> Row {
    samples.sort_by_key(|s| s.elapsed);
    let median = &samples[samples.len() / 2];
    let secs = median.elapsed.as_secs_f64();
    let per_10k = |d: Duration| d.as_secs_f64() * 10_000.0 / n as f64;
    Row {
        scenario: scenario.into(),
        size,
        messages: n,
        drained,
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

/// Fills in each row's ratios against the baselines of its size and drain mode.
pub fn compare(rows: &mut [Row]) {
    let groups: Vec<(usize, bool)> = rows.iter().map(|r| (r.size, r.drained)).collect();
    for (size, drained) in groups {
        let same = |r: &&Row| r.size == size && r.drained == drained && r.is_baseline();
        let best = rows
            .iter()
            .filter(same)
            .map(|r| r.msgs_per_s)
            .fold(0.0, f64::max);
        let cheapest = rows
            .iter()
            .filter(same)
            .map(Row::total_cpu_s_per_10k)
            .fold(f64::INFINITY, f64::min);
        if best == 0.0 {
            continue;
        }
        for r in rows
            .iter_mut()
            .filter(|r| r.size == size && r.drained == drained)
        {
            r.ratio = Some(r.msgs_per_s / best);
            r.cpu_ratio = Some(r.total_cpu_s_per_10k() / cheapest);
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

pub fn human(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}
