//! `mailroute cluster list` and `inject` as an operator meets them when something is off: an
//! empty cluster or a wrong exchange is an error (exit 1) saying what was asked where, and a
//! publish into a missing queue is a clear error with no mail body in the output.

mod common;

use std::process::{Command, Output};

use common::TestVhost;
use common::scenario::phantom_peer_on;
use common::servers::write_config;

fn run(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("mailroute runs")
}

#[actix::test]
async fn cluster_list_and_inject_fail_clearly() {
    let vhost = TestVhost::new("operator");
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).unwrap();
    let ips = ["10.9.2.1".parse().unwrap()];
    let config = write_config(&dir, &vhost.instance_address(), "a", &ips, "");

    // Nobody runs, and nobody ever declared the exchange: not created by asking.
    let out = run(&["cluster", "list"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("there is no exchange cluster on this broker"),
        "{err}"
    );
    assert!(err.contains("asking exchange cluster on amqp://"), "{err}");
    assert!(!err.contains(vhost.password()), "{err}");

    // The exchange exists, nobody answers.
    vhost
        .broker()
        .await
        .declare_topic_exchange("cluster")
        .await
        .unwrap();
    let out = run(&["cluster", "list"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no instance answered within cluster-timeout"),
        "{err}"
    );

    // Two instances claiming one IP: listed, and the conflict marked.
    let client = vhost.broker().await;
    let shared = vec!["10.9.2.9".parse().unwrap()];
    let claims = [
        phantom_peer_on(client.clone(), "cluster", "p1", "p1.outbox", shared.clone()),
        phantom_peer_on(client.clone(), "cluster", "p2", "p2.outbox", shared),
    ];
    // Off the event loop: the phantoms announce on it meanwhile.
    let path = config.clone();
    let out = tokio::task::spawn_blocking(move || run(&["cluster", "list"], &path))
        .await
        .unwrap();
    for claim in claims {
        claim.abort();
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("CONFLICT 10.9.2.9 is claimed by p1, p2"),
        "{listed}"
    );

    let out = run(
        &[
            "inject", "-n", "3", "--ips", "10.9.2.1", "--queue", "missing",
        ],
        &config,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("publishing to queue missing"), "{err}");
    assert!(err.contains("NO_ROUTE"), "{err}");
    assert!(
        !err.contains("Lorem ipsum"),
        "a mail body in the output: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
