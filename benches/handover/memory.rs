//! Memory bound: RSS of a real `mailroute serve` process must follow its prefetch, not the
//! length of its outbox.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mailroute_actors::broker::Message;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};

use crate::common::{self, TestVhost};
use crate::scenarios::settings;

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryBound {
    pub waiting: usize,
    pub prefetch: u16,
    pub start_rss_mib: f64,
    pub peak_rss_mib: f64,
    pub drained: usize,
    pub msgs_per_s: f64,
}

/// Memory bound: `waiting` messages (1 KiB, for a local IP) queued in an outbox, then a real
/// `mailroute serve` process started on it; its RSS is sampled while it drains a tenth of them.
/// RSS must follow the prefetch, not the queue length.
pub async fn memory_bound(waiting: usize) -> MemoryBound {
    let vhost = TestVhost::new("bench-rss");
    let client = vhost.broker().await;
    let prefetch = 1000;
    let ip = IpAddr::from([10, 8, 1, 1]);
    let mut s = settings("rss", ip, prefetch);
    s.outbox = "rss.outbox".into();
    s.deliver = "rss.deliver".into();
    s.failure = "rss.failure".into();
    s.retry = "rss.retry".into();
    mailroute_actors::broker::own_queues::declare_queues(&s, &client)
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
    // hold-time as `settings` declared the retry queue.
    let extra = "rabbitmq-qos: 1000\nhold-time: 10m\n";
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
