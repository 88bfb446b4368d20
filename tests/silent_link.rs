//! A link that goes silent without closing: b reaches RabbitMQ through a proxy that stops
//! forwarding for 10 s (nothing closed, no error anywhere), then lets new connections
//! through while the old ones stay frozen. With the default heartbeat b gives the frozen
//! connection up and reconnects, RabbitMQ requeues what b had taken, and every message is
//! delivered within 30 s of the heal; b, deaf meanwhile, forgets nobody. (Failed before:
//! lapin took RabbitMQ's 60 s heartbeat, b was dark for two minutes and forgot its peers.)

mod common;

use std::time::{Duration, Instant};

use common::proxy::SilentProxy;
use common::scenario::{NAMES, ips, spawn_members};
use common::servers::logs;
use common::{TestVhost, account_stopped, delivered_in, report};
use mailroute_actors::testkit::wait_for;

const MESSAGES: usize = 3_000;
const STALL: Duration = Duration::from_secs(10);
const AFTER_HEAL: Duration = Duration::from_secs(30);

#[actix::test]
async fn a_link_that_goes_silent_delays_mail_by_seconds_and_forgets_nobody() {
    let vhost = TestVhost::new("silent");
    let proxy = SilentProxy::start("127.0.0.1:5672");
    let direct = vhost.instance_address();
    let through_proxy = direct.replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port));
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The default heartbeat: nothing in the config about it.
    let mut servers = spawn_members(
        &dir,
        |i| {
            if NAMES[i] == "b" {
                through_proxy.clone()
            } else {
                direct.clone()
            }
        },
        "",
        |_| Vec::new(),
    )
    .await;
    let client = vhost.broker().await;
    let members = common::members(&NAMES, ips);
    let common::Traffic { expected, batches } = common::traffic(&members, MESSAGES, 0, 0, "silent");
    let publisher = {
        let client = client.clone();
        actix_rt::spawn(async move { common::publish_stream(&client, batches, 300).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.freeze();
    tokio::time::sleep(STALL).await;
    proxy.heal();
    let healed = Instant::now();
    publisher.await.expect("publisher");
    let in_time = wait_for("every message delivered", AFTER_HEAL, || async {
        delivered_in(&client, &NAMES).await >= MESSAGES
    })
    .await;
    let took = healed.elapsed();
    if let Err(e) = in_time {
        panic!(
            "{e}: {} of {MESSAGES} delivered {took:?} after the heal\n{}",
            delivered_in(&client, &NAMES).await,
            logs(&servers)
        );
    }
    println!("SILENT LINK | all {MESSAGES} delivered {took:?} after a {STALL:?} stall healed");
    let b = servers.iter().find(|s| s.name == "b").expect("b");
    let b_log = b.log_text();
    assert_eq!(
        b_log.matches("peer fell silent").count() + b_log.matches("did not re-announce").count(),
        0,
        "b, deaf, forgot a peer:\n{b_log}"
    );
    assert!(b_log.contains("deaf"), "b said it was deaf:\n{b_log}");
    common::servers::stop_all(&mut servers);
    let acc = account_stopped(&client, &NAMES, &expected).await;
    report(
        "a link silent for 10 s (no close), default heartbeat",
        &acc,
        0,
    );
    acc.assert_complete(&logs(&servers));
}
