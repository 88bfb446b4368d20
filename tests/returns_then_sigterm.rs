//! Returned handovers in a burst, then SIGTERM at once. Half of a 4,000-message burst is for a
//! live peer whose outbox is gone (every handover to it is returned, held here instead), half
//! for a live peer whose outbox is there; the instance is stopped while returns are coming
//! back. A returned handover's original is acked only after the held copy is confirmed, so
//! there is no copy that only a background task knows about: after the exit, every message is
//! exactly once where it belongs (held, handed over, or still in the outbox).

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use common::TestVhost;
use common::scenario::{phantom_peer, phantom_peer_on};
use common::servers::{Server, write_config};
use mailroute_actors::broker::QueueSpec;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};

const BURST: usize = 4_000;

#[actix::test]
async fn returned_handovers_then_sigterm_lose_nothing() {
    let vhost = TestVhost::new("returns-sigterm");
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).unwrap();
    let own = IpAddr::from([10, 7, 0, 1]);
    let gone = IpAddr::from([10, 7, 0, 2]);
    let there = IpAddr::from([10, 7, 0, 3]);
    // Held mail stays in the retry queue: it is counted there, not chased round the cycle.
    let config = write_config(
        &dir,
        &vhost.instance_address(),
        "a",
        &[own],
        "rabbitmq-qos: 1000\nhold-time: 10min\nmax-hold: 1h\n",
    );
    let client = vhost.broker().await;
    for queue in ["a.outbox", "e.outbox"] {
        client
            .declare_queue(&QueueSpec::durable(queue))
            .await
            .unwrap();
    }
    let mut server = Server::spawn(&dir, "a", &config);
    let d = phantom_peer(client.clone(), "d", vec![gone]);
    let e = phantom_peer_on(client.clone(), "cluster", "e", "e.outbox", vec![there]);
    wait_for("both peers proven", Duration::from_secs(30), || async {
        server.log_count("handing over directly") >= 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));

    let mut expected = HashMap::new();
    let batch: Vec<_> = (0..BURST)
        .map(|i| {
            let (id, ip, home) = if i % 2 == 0 {
                (format!("gone{i}"), gone, "a.retry")
            } else {
                (format!("there{i}"), there, "e.outbox")
            };
            expected.insert(id.clone(), home);
            let body = mailerq_json(&id, Some(&[ip]), 512);
            ("a.outbox".to_string(), test_message(&id, body))
        })
        .collect();
    common::publish_all(&client, &batch).await;
    wait_for("returns coming back", Duration::from_secs(60), || async {
        common::ready(&client, "a.retry").await >= 200
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    server.signal("-TERM");
    let status = server.wait();
    d.abort();
    e.abort();
    assert!(status.success(), "{}", server.log_text());

    let mut seen: HashMap<String, Vec<&str>> = HashMap::new();
    for queue in ["a.retry", "e.outbox", "a.outbox", "a.deliver", "a.failure"] {
        for m in common::drain(&client, queue).await {
            seen.entry(test_id(&m).expect("a test id"))
                .or_default()
                .push(queue);
        }
    }
    let mut lost = 0;
    let mut misplaced = Vec::new();
    let mut twice = 0;
    let mut waiting = 0;
    for (id, home) in &expected {
        match seen.get(id).map(Vec::as_slice) {
            None => lost += 1,
            Some([place]) if place == home => {}
            Some(["a.outbox"]) => waiting += 1,
            Some([_]) => misplaced.push(id.clone()),
            Some(_) => twice += 1,
        }
    }
    let held = seen
        .values()
        .filter(|places| places.contains(&"a.retry"))
        .count();
    println!(
        "RELIABILITY | returned handovers in a burst, SIGTERM right after ({waiting} still in the outbox) | {BURST} | {} | {lost} | {twice} | {held}",
        BURST - waiting
    );
    assert_eq!(lost, 0, "lost");
    assert!(misplaced.is_empty(), "misplaced: {misplaced:?}");
    assert_eq!(twice, 0, "more than one copy");
    assert_eq!(seen.len(), expected.len(), "a message nobody sent");
    assert!(server.log_count("handover returned") >= 200);
    let _ = std::fs::remove_dir_all(&dir);
}
