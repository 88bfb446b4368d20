//! `mailroute demo`: three instances in one process on the in-memory broker. Mail for every
//! instance's IPs is injected into all three outboxes; watch it being handed over live, then
//! read the accounting: every message where it belongs, none lost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::{Destination, SharedBroker};
use mailroute_actors::traffic::{Expect, account, mailerq_json, test_message, wait_for};
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
            let entry_name = NAMES[entry].to_string();
            let (body, expect) = if roll == 0 {
                (
                    b"{\"ips\": [\"10.0.0.1\", ".to_vec(),
                    Expect::Failed(entry_name),
                )
            } else if roll <= 5 {
                let ip = IpAddr::from([192, 0, 2, rng.random_range(1..255)]);
                (
                    mailerq_json(&id, Some(&[ip]), 1024),
                    Expect::Held(entry_name),
                )
            } else {
                let owner: usize = rng.random_range(0..3);
                let ip = ips_of(owner)[rng.random_range(0..4)];
                (
                    mailerq_json(&id, Some(&[ip]), 1024),
                    Expect::Delivered(NAMES[owner].to_string()),
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

/// Every copy of every message counted where it ended up, by the same accounting the tests
/// use: a message is lost if no copy is found, misrouted if any copy is somewhere it does not
/// belong.
fn summary(
    memory: &MemoryBroker,
    instances: &[Instance],
    expected: &HashMap<String, Expect>,
) -> anyhow::Result<()> {
    println!(
        "\n{:<10} {:>9} {:>11} {:>6} {:>7}",
        "instance", "delivered", "handed over", "held", "failed"
    );
    let mut found = Vec::new();
    for instance in instances {
        let s = &instance.settings;
        let delivered = memory.drain(&s.deliver);
        let held = memory.drain(&s.retry);
        let failed = memory.drain(&s.failure);
        println!(
            "{:<10} {:>9} {:>11} {:>6} {:>7}",
            s.name,
            delivered.len(),
            instance.stats.snapshot().handed_over,
            held.len(),
            failed.len()
        );
        found.push((Expect::Delivered(s.name.clone()), delivered));
        found.push((Expect::Held(s.name.clone()), held));
        found.push((Expect::Failed(s.name.clone()), failed));
    }
    let acc = account(expected, found);
    let (lost, misrouted) = (acc.lost.len(), acc.misplaced.len());
    println!(
        "\nsent {}: lost {lost}, misrouted {misrouted}, duplicates {}, strays {}",
        acc.sent,
        acc.duplicates,
        acc.strays.len()
    );
    println!(
        "(malformed messages are in the failure queue with an x-mailroute-reason header; unowned ones are held)"
    );
    if lost + misrouted + acc.strays.len() > 0 {
        bail!(
            "demo accounting failed: {lost} lost, {misrouted} misrouted, {} strays",
            acc.strays.len()
        );
    }
    Ok(())
}
