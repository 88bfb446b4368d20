//! Three `mailroute serve` processes from the built binary on the real RabbitMQ: 1,000
//! messages accounted by id; then one instance gets SIGTERM, drains, says `Leaving`, and mail
//! for its IPs follows the unroutable policy (hold) at the others.

mod common;

use std::process::Command;
use std::time::Duration;

use common::scenario::{Cluster, NAMES, ips};
use mailroute_actors::testkit::wait_for;

const SECRET: &str = "processes-test-secret";

#[actix::test]
async fn three_serve_processes_route_and_one_leaves() {
    // A long hold-time: the held mail is inspected in the retry queues while the cluster runs.
    let mut cluster = Cluster::start_with(
        "processes",
        &format!("cluster-secret: {SECRET}\nhold-time: 10m\nlog-summary-interval: 1s\n"),
    )
    .await;
    let names = NAMES;
    let members = common::members(&names, ips);
    let traffic = common::traffic(&members, 1000, 5, 1, "proc");
    let client = cluster.client.clone();
    let password = cluster.vhost.password().to_string();
    common::publish_all(&client, &traffic.batches).await;
    let acc =
        common::settle_and_account(&client, &names, &traffic.expected, Duration::from_secs(120))
            .await;
    let outboxes = common::outboxes(&names);
    println!(
        "three processes: sent {} | delivered {:?} | held {} | failed {} | duplicates {} | lost {}",
        acc.sent,
        acc.delivered,
        acc.held,
        acc.failed,
        acc.duplicates,
        acc.lost.len()
    );
    acc.assert_complete("");
    assert_eq!(acc.duplicates, 0);
    // At INFO, what each instance did is said once per interval, and a failure reason new in
    // its window as it happens (the 1% malformed mail).
    for s in &cluster.servers {
        wait_for("a summary line", Duration::from_secs(10), || async {
            s.log_count("summary of the last") >= 1
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", s.name, s.log_text()));
    }
    if acc.failed > 0 {
        let told: usize = cluster
            .servers
            .iter()
            .map(|s| s.log_count("mail failed for a reason new in this summary window"))
            .sum();
        assert!(told >= 1, "{}", cluster.logs());
    }
    assert_eq!(acc.failed_without_reason, 0);

    // The operator commands, as a person would run them.
    let conf_a = cluster.dir.join("a.conf");
    let list = Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(["cluster", "list", "--config"])
        .arg(&conf_a)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    for n in names {
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{n} "))),
            "{n} missing in:\n{listed}"
        );
    }
    let b_ips: Vec<String> = ips(1).iter().map(ToString::to_string).collect();
    assert!(listed.contains(&b_ips.join(",")), "{listed}");
    assert!(
        !listed.contains(&password),
        "credentials must not be announced: {listed}"
    );
    let inject = Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args([
            "inject", "-n", "50", "--ips", &b_ips[1], "--prefix", "injected", "--config",
        ])
        .arg(&conf_a)
        .output()
        .unwrap();
    assert!(
        inject.status.success(),
        "{}",
        String::from_utf8_lossy(&inject.stderr)
    );
    common::wait_settled(
        &client,
        &outboxes,
        &["b.deliver".to_string()],
        50,
        Duration::from_secs(60),
    )
    .await;
    let injected = common::drain(&client, "b.deliver").await;
    let mut ids: Vec<String> = injected
        .iter()
        .filter_map(mailroute_actors::traffic::test_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "inject via a reached b: {ids:?}");

    // SIGTERM c: it drains, says Leaving and exits cleanly; a and b log "peer left" only for
    // a Leaving message (a timeout logs "peer fell silent").
    let mut c = cluster.servers.pop().unwrap();
    // SIGHUP (systemd's ExecReload) must not stop it: logged and ignored until reload is built.
    c.signal("-HUP");
    wait_for("SIGHUP logged", Duration::from_secs(10), || async {
        c.log_count("SIGHUP") == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_text()));
    assert!(c.child.try_wait().unwrap().is_none(), "SIGHUP stopped c");
    c.signal("-TERM");
    let (status, c) = tokio::task::spawn_blocking(move || (c.wait(), c))
        .await
        .unwrap();
    assert!(status.success(), "{}", c.log_text());
    assert_eq!(c.log_count("left the cluster"), 1, "{}", c.log_text());
    for s in &cluster.servers {
        wait_for("peer left", Duration::from_secs(10), || async {
            s.log_count("peer left") >= 1
        })
        .await
        .unwrap();
    }
    let senders = common::members(&["a", "b"], |_| ips(2));
    let after = common::traffic(&senders, 200, 0, 0, "after-leave");
    common::publish_all(&client, &after.batches).await;
    let retries = ["a.retry".to_string(), "b.retry".to_string()];
    common::wait_settled(
        &client,
        &outboxes[..2],
        &retries,
        200,
        Duration::from_secs(60),
    )
    .await;
    let held_a = common::drain(&client, "a.retry").await;
    let held_b = common::drain(&client, "b.retry").await;
    let want_a = after
        .batches
        .iter()
        .filter(|(q, _)| q == "a.outbox")
        .count();
    assert_eq!(
        (held_a.len(), held_b.len()),
        (want_a, 200 - want_a),
        "each holds what it got"
    );
    assert_eq!(
        common::ready(&client, "c.outbox").await,
        0,
        "c got nothing after leaving"
    );
    for s in &cluster.servers {
        s.signal("-TERM");
    }
    for s in cluster.servers.iter().chain(std::iter::once(&c)) {
        let log = s.log_text();
        assert!(
            !log.contains(SECRET) && !log.contains(&password),
            "secrets leaked into {}'s log",
            s.name
        );
        assert!(!log.contains("cluster-secret is not set"), "{}", s.name);
    }
}
