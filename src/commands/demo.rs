//! `mailroute demo`: three instances in one process on the in-memory broker. Mail for every
//! instance's IPs is injected into all three outboxes; watch it being handed over live, then
//! read the accounting: every message where it belongs, none lost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use mailroute_actors::broker::{Destination, SharedBroker};
use mailroute_actors::memory::MemoryBroker;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};
use mailroute_actors::{Instance, InstanceSettings};
use rand::Rng;

#[derive(Args)]
pub struct DemoArgs {
    /// Messages to inject in total.
    #[arg(long, default_value_t = 6000)]
    messages: usize,
    /// Injection rate, messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
}

const NAMES: [&str; 3] = ["amsterdam", "berlin", "chicago"];

fn ips_of(index: usize) -> Vec<IpAddr> {
    (1..=4)
        .map(|host| IpAddr::from([10, 0, index as u8, host]))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    DeliveredBy(usize),
    Held(usize),
    Failed(usize),
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let memory = MemoryBroker::new("demo");
    let broker: SharedBroker = Arc::new(memory.clone());
    let mut instances = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let mut s = InstanceSettings::new(*name, ips_of(i));
        s.announce_interval = Duration::from_millis(250);
        s.peer_timeout = Duration::from_secs(2);
        s.prefetch = 200;
        // Held mail stays held for the whole demo, so it can be counted.
        s.hold_time = Duration::from_secs(600);
        instances.push(Instance::start(s, broker.clone(), broker.clone()).await?);
    }
    println!("mailroute demo: 3 instances on an in-memory broker");
    for (i, instance) in instances.iter().enumerate() {
        let ips: Vec<String> = ips_of(i).iter().map(ToString::to_string).collect();
        println!(
            "  {:<10} outbox {:<20} owns {}",
            instance.settings.name,
            instance.settings.outbox,
            ips.join(" ")
        );
    }
    for instance in &instances {
        wait_for("peers to announce", Duration::from_secs(10), || async {
            instance.peers().await.len() == 2
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }
    println!(
        "  every instance knows its 2 peers; injecting {} messages at {}/s into all three outboxes\n",
        args.messages, args.rate
    );

    let mut expected: HashMap<String, Expect> = HashMap::new();
    let mut rng = rand::rng();
    let tick = Duration::from_millis(100);
    let per_tick = (args.rate as usize / 10).max(1);
    let mut ticker = tokio::time::interval(tick);
    let mut last_print = tokio::time::Instant::now();
    let mut sent = 0;
    while sent < args.messages {
        ticker.tick().await;
        for _ in 0..per_tick.min(args.messages - sent) {
            let id = format!("demo-{sent}");
            let entry: usize = rng.random_range(0..3);
            let roll: u32 = rng.random_range(0..100);
            let (body, expect) = if roll == 0 {
                (b"{\"ips\": [\"10.0.0.1\", ".to_vec(), Expect::Failed(entry))
            } else if roll <= 5 {
                let ip = IpAddr::from([192, 0, 2, rng.random_range(1..255)]);
                (mailerq_json(&id, Some(&[ip]), 1024), Expect::Held(entry))
            } else {
                let owner: usize = rng.random_range(0..3);
                let ip = ips_of(owner)[rng.random_range(0..4)];
                (
                    mailerq_json(&id, Some(&[ip]), 1024),
                    Expect::DeliveredBy(owner),
                )
            };
            let outbox = Destination::queue(&instances[entry].settings.outbox);
            broker
                .publish(&outbox, &test_message(&id, body), true)
                .await?;
            expected.insert(id, expect);
            sent += 1;
        }
        if last_print.elapsed() >= Duration::from_millis(500) {
            last_print = tokio::time::Instant::now();
            progress(&instances, sent);
        }
    }
    let settled = wait_for(
        "every message to settle",
        Duration::from_secs(60),
        || async {
            instances
                .iter()
                .all(|i| memory.depth(&i.settings.outbox) == 0)
                && instances
                    .iter()
                    .map(|i| {
                        memory.depth(&i.settings.deliver)
                            + memory.depth(&i.settings.retry)
                            + memory.depth(&i.settings.failure)
                    })
                    .sum::<usize>()
                    >= sent
        },
    )
    .await;
    progress(&instances, sent);
    settled.map_err(anyhow::Error::msg)?;
    summary(&memory, &instances, &expected)
}

fn progress(instances: &[Instance], sent: usize) {
    let line: Vec<String> = instances
        .iter()
        .map(|i| {
            let s = i.stats.snapshot();
            format!(
                "{} routed {:>5} (deliver {:>5}, handover {:>5}, held {:>3}, failed {:>3})",
                &i.settings.name[..1],
                s.delivered + s.handed_over + s.held + s.failed,
                s.delivered,
                s.handed_over,
                s.held,
                s.failed
            )
        })
        .collect();
    println!("sent {sent:>6} | {}", line.join(" | "));
}

fn summary(
    memory: &MemoryBroker,
    instances: &[Instance],
    expected: &HashMap<String, Expect>,
) -> anyhow::Result<()> {
    let mut seen: HashMap<String, Vec<Expect>> = HashMap::new();
    println!(
        "\n{:<10} {:>9} {:>11} {:>6} {:>7}",
        "instance", "delivered", "handed over", "held", "failed"
    );
    for (index, instance) in instances.iter().enumerate() {
        let s = &instance.settings;
        let delivered = memory.drain(&s.deliver);
        let held = memory.drain(&s.retry);
        let failed = memory.drain(&s.failure);
        let stats = instance.stats.snapshot();
        println!(
            "{:<10} {:>9} {:>11} {:>6} {:>7}",
            s.name,
            delivered.len(),
            stats.handed_over,
            held.len(),
            failed.len()
        );
        for (messages, outcome) in [
            (delivered, Expect::DeliveredBy(index)),
            (held, Expect::Held(index)),
            (failed, Expect::Failed(index)),
        ] {
            for m in messages {
                seen.entry(test_id(&m).unwrap_or_default())
                    .or_default()
                    .push(outcome.clone());
            }
        }
    }
    let lost = expected.keys().filter(|id| !seen.contains_key(*id)).count();
    let misrouted = expected
        .iter()
        .filter(|(id, want)| seen.get(*id).is_some_and(|got| !got.contains(want)))
        .count();
    let duplicates: usize = seen.values().map(|v| v.len().saturating_sub(1)).sum();
    println!(
        "\nsent {}: lost {lost}, misrouted {misrouted}, duplicates {duplicates}",
        expected.len()
    );
    println!(
        "(malformed messages are in the failure queue with an x-mailroute-reason header; unowned ones are held)"
    );
    if lost + misrouted > 0 {
        bail!("demo accounting failed: {lost} lost, {misrouted} misrouted");
    }
    Ok(())
}
