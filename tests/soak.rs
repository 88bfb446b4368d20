//! Soak: traffic at a fixed rate through three `mailroute serve` processes for 15 minutes (set
//! `MAILROUTE_SOAK_SECS` for another length) with one fault a minute: cut connections, kill -9
//! and restart, SIGTERM and restart, in turn. Prints RSS per process and handover latency of
//! the first and the last minute, and asserts that every message arrived.
//!
//! Ignored by default: `cargo test --release --test soak -- --ignored --nocapture`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scenario::{Cluster, NAMES};
use futures::StreamExt;
use mailroute_actors::broker::{Destination, HeaderValue};
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};
use rand::Rng;

const SENT_HEADER: &str = "x-soak-sent-us";
const RATE: u32 = 1_000;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[derive(Default)]
struct Minute {
    latencies_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[actix::test]
#[ignore = "15 minutes; run on purpose"]
async fn soak_with_a_fault_a_minute() {
    let seconds: u64 = std::env::var("MAILROUTE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    let mut cluster = Cluster::start_with("soak", "hold-time: 5s\n").await;
    let started = Instant::now();
    let minutes = Arc::new(Mutex::new(HashMap::<u64, Minute>::new()));
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    // Drain the deliver queues as a sending MTA would, timing each message.
    let mut readers = Vec::new();
    for n in NAMES {
        let (broker, minutes, seen) = (cluster.vhost.broker().await, minutes.clone(), seen.clone());
        readers.push(actix_rt::spawn(async move {
            let queue = format!("{n}.deliver");
            loop {
                let Ok(mut stream) = broker.consume(&queue, 500).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                while let Some(Ok(d)) = stream.next().await {
                    let sent = d
                        .message
                        .header(SENT_HEADER)
                        .and_then(HeaderValue::as_i64)
                        .unwrap_or(0);
                    let minute = started.elapsed().as_secs() / 60;
                    minutes
                        .lock()
                        .unwrap()
                        .entry(minute)
                        .or_default()
                        .latencies_ms
                        .push((now_us() - sent) as f64 / 1000.0);
                    *seen
                        .lock()
                        .unwrap()
                        .entry(test_id(&d.message).unwrap_or_default())
                        .or_default() += 1;
                    let _ = d.acker.ack().await;
                }
            }
        }));
    }
    let members = cluster.members();
    let body_for: Vec<Vec<u8>> = members
        .iter()
        .map(|m| mailerq_json("soak", Some(&m.ips[..1]), 1024))
        .collect();
    let client = cluster.client.clone();
    let mut sent = 0usize;
    let mut rss: Vec<(u64, Vec<f64>)> = Vec::new();
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let per_tick = RATE as usize / 100;
    let mut next_fault = 1;
    let mut rng = rand::rng();
    while started.elapsed() < Duration::from_secs(seconds) {
        interval.tick().await;
        for _ in 0..per_tick {
            let owner = rng.random_range(0..members.len());
            let entry = &members[rng.random_range(0..members.len())];
            let mut m = test_message(&format!("soak-{sent}"), Vec::new());
            m.body = body_for[owner].clone().into();
            m.properties_mut()
                .headers
                .insert(SENT_HEADER.into(), HeaderValue::I64(now_us()));
            let (client, outbox) = (client.clone(), entry.outbox.clone());
            actix_rt::spawn(async move {
                while client
                    .publish(&Destination::queue(&outbox), &m, true)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            sent += 1;
        }
        let minute = started.elapsed().as_secs() / 60;
        if rss.last().is_none_or(|(m, _)| *m != minute) {
            rss.push((
                minute,
                cluster
                    .servers
                    .iter()
                    .map(|s| common::rss_mib(&s.child.id().to_string()))
                    .collect(),
            ));
        }
        if started.elapsed() >= Duration::from_secs(60 * next_fault) {
            match next_fault % 3 {
                1 => cluster.vhost.close_instance_connections(),
                2 => {
                    let b = cluster.server("b");
                    b.signal("-KILL");
                    b.restart();
                }
                _ => {
                    let c = cluster.server("c");
                    c.signal("-TERM");
                    let _ = c.wait();
                    c.restart();
                }
            }
            next_fault += 1;
        }
    }
    mailroute_actors::testkit::wait_for(
        "every message delivered",
        Duration::from_secs(300),
        || async { seen.lock().unwrap().len() >= sent },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {} of {sent} arrived", seen.lock().unwrap().len()));
    for r in readers {
        r.abort();
    }
    let seen = seen.lock().unwrap();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let mut minutes = minutes.lock().unwrap();
    // Every full minute of sending, so "flat" can be read off; the first and the last are
    // the ones to compare. The tail after sending stopped is not a minute of traffic.
    let full_minutes = (seconds / 60).max(1);
    for minute in 0..full_minutes {
        let label = match minute {
            0 => "first",
            m if m + 1 == full_minutes => "last",
            _ => "",
        };
        let m = minutes.entry(minute).or_default();
        m.latencies_ms.sort_by(f64::total_cmp);
        let rss_then = rss
            .iter()
            .find(|(k, _)| *k == minute)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        println!(
            "SOAK | minute {minute:>2} {label:<5} | delivered {:>6} | p50 {:>6.1} ms | p99 {:>7.1} ms | RSS MiB a/b/c {:?}",
            m.latencies_ms.len(),
            percentile(&m.latencies_ms, 0.5),
            percentile(&m.latencies_ms, 0.99),
            rss_then.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    println!(
        "SOAK | {seconds} s, {sent} sent, {} arrived, {duplicates} duplicates, {} faults",
        seen.len(),
        next_fault - 1
    );
    assert_eq!(seen.len(), sent, "lost messages");
}
