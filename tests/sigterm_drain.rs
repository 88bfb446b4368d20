//! SIGTERM while 100,000 messages wait in the outbox: the instance cancels its consumer,
//! settles what it has in flight and exits 0 within a few seconds. Every message is then
//! exactly once in the deliver queue or still in the outbox: nothing lost, nothing twice.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::TestVhost;
use common::servers::{Server, write_config};
use mailroute_actors::broker::QueueSpec;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_id, test_message};

const WAITING: usize = 100_000;

#[actix::test]
async fn sigterm_with_a_full_outbox_exits_at_once() {
    let vhost = TestVhost::new("sigterm");
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).unwrap();
    let ip = IpAddr::from([10, 6, 0, 1]);
    let config = write_config(
        &dir,
        &vhost.instance_address(),
        "a",
        &[ip],
        "rabbitmq-qos: 1000\n",
    );
    let client = vhost.broker().await;
    client
        .declare_queue(&QueueSpec::durable("a.outbox"))
        .await
        .unwrap();
    let body = mailerq_json("x", Some(&[ip]), 200);
    let batch: Vec<_> = (0..WAITING)
        .map(|i| {
            (
                "a.outbox".to_string(),
                test_message(&format!("w{i}"), body.clone()),
            )
        })
        .collect();
    common::publish_all(&client, &batch).await;

    let mut server = Server::spawn(&dir, "a", &config);
    wait_for("delivering", Duration::from_secs(60), || async {
        common::ready(&client, "a.deliver").await >= 2_000
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    let asked = Instant::now();
    server.signal("-TERM");
    let status = server.wait();
    let took = asked.elapsed();
    println!("SIGTERM with a full outbox: exit {status} after {took:.2?}");
    assert!(status.success(), "{}", server.log_text());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}\n{}",
        server.log_text()
    );
    assert_eq!(server.log_count("left the cluster"), 1);

    let mut seen: HashMap<String, usize> = HashMap::new();
    for queue in ["a.deliver", "a.outbox"] {
        for m in common::drain(&client, queue).await {
            *seen.entry(test_id(&m).expect("test id")).or_default() += 1;
        }
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(seen.len(), WAITING, "lost {}", WAITING - seen.len());
    assert_eq!(twice, 0, "duplicated");
    let _ = std::fs::remove_dir_all(&dir);
}
