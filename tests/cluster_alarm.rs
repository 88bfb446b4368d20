//! A two-minute memory alarm on the cluster broker while handovers cross it: a and b have
//! private brokers (a vhost each on the default node), the cluster exchange and the handover
//! queues are on the 3-node cluster of `scripts/rabbitmq-cluster`, whose alarm blocks every
//! publish there. a's handovers in flight wait out the alarm instead of timing out and being
//! published again beside their first copies (four 30 s timeouts would have been four more
//! copies of each), a takes no more outbox mail meanwhile, its memory stays flat, and once
//! the alarm clears every message reaches b exactly once. Alone in its test binary: the alarm
//! is the whole cluster's.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::rq_cluster::{RqVhost, ensure_started};
use common::scenario::ips;
use common::servers::{Server, logs, stop_all, wait_joined, write_config};
use common::{TestVhost, drain, ready, rss_mib};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};

const MESSAGES: usize = 2_000;
const ALARM: Duration = Duration::from_secs(120);

/// Clears the alarm even when the test fails.
struct Alarm;

impl Alarm {
    fn raise() -> Alarm {
        set_watermark("0.0000001");
        Alarm
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        set_watermark("0.4");
    }
}

fn set_watermark(value: &str) {
    for node in ["rq1", "rq2", "rq3"] {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &format!("{node}@localhost")])
            .args(["set_vm_memory_high_watermark", value])
            .output();
    }
}

#[actix::test]
async fn a_two_minute_alarm_on_the_cluster_broker_costs_no_copy_and_no_memory() {
    ensure_started();
    let cluster = RqVhost::new("alarm-cl");
    let (va, vb) = (TestVhost::new("alarm-a"), TestVhost::new("alarm-b"));
    let dir = std::env::temp_dir().join(&va.name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let extra = format!(
        "cluster-address: amqp://guest:guest@127.0.0.1:5681/{}\nrabbitmq-qos: 200\n",
        cluster.0
    );
    let mut servers = Vec::new();
    for (i, (name, vhost)) in [("a", &va), ("b", &vb)].into_iter().enumerate() {
        let config = write_config(&dir, &vhost.instance_address(), name, &ips(i as u8), &extra);
        servers.push(Server::spawn(&dir, name, &config));
    }
    wait_joined(&servers, 1).await;
    let (ca, cb) = (va.broker().await, vb.broker().await);

    // All of it for b's IPs, entering at a: every message is a handover across the cluster
    // broker.
    let batch: Vec<(String, mailroute_actors::Message)> = (0..MESSAGES)
        .map(|n| {
            let id = format!("alarm-{n}");
            let body = mailerq_json(&id, Some(&ips(1)), 1024);
            ("a.outbox".to_string(), test_message(&id, body))
        })
        .collect();
    let publisher = {
        let ca = ca.clone();
        actix_rt::spawn(async move { common::publish_stream(&ca, batch, 400).await })
    };
    wait_for("handovers flowing", Duration::from_secs(60), || async {
        ready(&cb, "b.deliver").await >= 200
    })
    .await
    .expect("handovers flow");
    let alarm = Alarm::raise();
    let a_pid = servers[0].child.id().to_string();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_start = rss_mib(&a_pid);
    let delivered_start = ready(&cb, "b.deliver").await;
    tokio::time::sleep(ALARM - Duration::from_secs(10)).await;
    let rss_end = rss_mib(&a_pid);
    let delivered_end = ready(&cb, "b.deliver").await;
    drop(alarm);
    publisher.await.expect("publisher");
    let all = wait_for("all at b", Duration::from_secs(180), || async {
        ready(&cb, "b.deliver").await >= MESSAGES
    })
    .await;
    if let Err(e) = all {
        panic!(
            "{e}: {} at b\n{}",
            ready(&cb, "b.deliver").await,
            logs(&servers)
        );
    }
    println!(
        "CLUSTER ALARM | {ALARM:?}: a's RSS {rss_start:.1} -> {rss_end:.1} MiB, b delivered {delivered_start} -> {delivered_end} during it"
    );
    stop_all(&mut servers);
    let mut copies: HashMap<String, usize> = HashMap::new();
    for m in drain(&cb, "b.deliver").await {
        *copies.entry(test_id(&m).unwrap_or_default()).or_default() += 1;
    }
    let twice = copies.values().filter(|&&n| n > 1).count();
    assert_eq!(copies.len(), MESSAGES, "lost some\n{}", logs(&servers));
    assert_eq!(twice, 0, "delivered twice");
    for queue in ["a.outbox", "a.retry", "a.failure", "a.deliver"] {
        assert_eq!(ready(&ca, queue).await, 0, "{queue}");
    }
    let a_log = servers[0].log_text();
    assert_eq!(
        a_log.matches("a publish timed out").count(),
        0,
        "a handover timed out (and was published again) while the broker blocked:\n{a_log}"
    );
    assert!(
        rss_end <= rss_start + 20.0,
        "a's memory grew during the alarm: {rss_start:.1} -> {rss_end:.1} MiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
