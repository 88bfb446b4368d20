//! A reload that really reloads, tried as an operator does it: edit the files, then
//! `mailroute cluster reload` (or SIGHUP on one instance, or `--only NAME`), with three
//! `mailroute serve` processes on the real RabbitMQ. Where the next messages land says whether
//! the change took.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::Duration;

use common::scenario::{Cluster, ips};
use common::servers::write_config;
use common::{Expect, publish_all};
use mailroute_actors::broker::Message;
use mailroute_actors::testkit::wait_for;
use mailroute_actors::traffic::{mailerq_json, test_message};

async fn mailroute(args: &[&str], config: &std::path::Path) -> Output {
    let (args, config): (Vec<String>, _) = (
        args.iter().map(ToString::to_string).collect(),
        config.to_path_buf(),
    );
    // Off the event loop: the test's own broker connections live on it.
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mailroute"))
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("mailroute runs")
    })
    .await
    .expect("command ran")
}

/// `count` messages for `ip` into `outbox`, each expected delivered by `owner`.
fn batch(
    prefix: &str,
    outbox: &str,
    ip: IpAddr,
    owner: &str,
    count: usize,
    expected: &mut HashMap<String, Expect>,
) -> Vec<(String, Message)> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            expected.insert(id.clone(), Expect::Delivered(owner.into()));
            let body = mailerq_json(&id, Some(&[ip]), 512);
            (outbox.to_string(), test_message(&id, body))
        })
        .collect()
}

async fn wait_log(cluster: &Cluster, name: &str, needle: &str, count: usize) {
    let server = cluster
        .servers
        .iter()
        .find(|s| s.name == name)
        .expect("known server");
    let found = wait_for(needle, Duration::from_secs(30), || async {
        server.log_count(needle) >= count
    })
    .await;
    if let Err(e) = found {
        panic!("{name}: {e}\n{}", server.log_text());
    }
}

#[actix::test]
async fn an_ip_moved_between_files_is_routed_to_its_new_owner_after_a_cluster_reload() {
    let mut cluster = Cluster::start("reload").await;
    let moved: IpAddr = "10.4.0.3".parse().unwrap();
    let address = cluster.vhost.instance_address();
    // a gives 10.4.0.3 up, b takes it; c's file is broken.
    let a_ips: Vec<IpAddr> = ips(0).into_iter().filter(|ip| *ip != moved).collect();
    let mut b_ips = ips(1);
    b_ips.push(moved);
    let a_conf = write_config(&cluster.dir, &address, "a", &a_ips, "");
    write_config(&cluster.dir, &address, "b", &b_ips, "");
    write_config(&cluster.dir, &address, "c", &ips(2), "max-hops: lots\n");

    let out = mailroute(&["cluster", "reload"], &a_conf).await;
    assert!(out.status.success(), "{out:?}");
    wait_log(&cluster, "a", "config reloaded: applied key=local-ips", 1).await;
    wait_log(&cluster, "b", "config reloaded: applied key=local-ips", 1).await;
    wait_log(&cluster, "c", "config reload rejected", 1).await;
    let c_log = cluster.servers[2].log_text();
    assert!(
        c_log.contains("max-hops"),
        "the error names the key: {c_log}"
    );
    // `cluster list` shows b's new IPs (and a new config hash would show the same way).
    let listed = wait_for(
        "b listed with 10.4.0.3",
        Duration::from_secs(10),
        || async {
            let out = mailroute(&["cluster", "list"], &a_conf).await;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.lines()
                .filter(|l| l.contains("10.4.0.3"))
                .all(|l| l.starts_with("b "))
                && text.contains("10.4.0.3")
        },
    )
    .await;
    assert!(listed.is_ok(), "{}", cluster.logs());

    // The next messages: the moved IP from every outbox goes to b, nothing is held on the way;
    // c still routes by its old config.
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for n in ["a", "b", "c"] {
        let outbox = format!("{n}.outbox");
        messages.extend(batch(
            &format!("moved-{n}"),
            &outbox,
            moved,
            "b",
            100,
            &mut expected,
        ));
    }
    let c_own: IpAddr = "10.4.2.1".parse().unwrap();
    let a_own: IpAddr = "10.4.0.1".parse().unwrap();
    messages.extend(batch("c-own", "c.outbox", c_own, "c", 100, &mut expected));
    messages.extend(batch("c-to-a", "c.outbox", a_own, "a", 100, &mut expected));
    publish_all(&cluster.client, &messages).await;
    let acc = cluster.account(&expected).await;
    acc.assert_complete(&cluster.logs());
    assert_eq!((acc.held, acc.failed, acc.duplicates), (0, 0, 0));
    assert_eq!(acc.delivered.get("b"), Some(&300));
}

#[actix::test]
async fn sighup_applies_live_keys_reports_the_rest_and_only_reloads_one() {
    let mut cluster = Cluster::start("reload-hup").await;
    let address = cluster.vhost.instance_address();
    let b_conf = write_config(
        &cluster.dir,
        &address,
        "b",
        &ips(1),
        "rabbitmq-qos: 50\nrabbitmq-outbox: b.elsewhere\ncluster-secret: not-now\n",
    );
    // Consuming already: the new prefetch takes a new consumer.
    wait_log(&cluster, "b", "consuming outbox", 1).await;
    cluster.server("b").signal("-HUP");
    wait_log(
        &cluster,
        "b",
        "config reloaded: applied key=rabbitmq-qos old=200 new=50",
        1,
    )
    .await;
    wait_log(&cluster, "b", "needs restart", 2).await;
    wait_log(
        &cluster,
        "b",
        "consuming again queue=b.outbox prefetch=50",
        1,
    )
    .await;
    let b_log = cluster.servers[1].log_text();
    assert!(
        b_log.contains("key=rabbitmq-outbox old=b.outbox new=b.elsewhere"),
        "{b_log}"
    );
    assert!(
        b_log.contains("key=cluster-secret old=(unset) new=***"),
        "{b_log}"
    );
    assert!(!b_log.contains("not-now"), "a secret in the log: {b_log}");

    // Only c re-reads its file.
    let out = mailroute(&["cluster", "reload", "--only", "c"], &b_conf).await;
    assert!(out.status.success(), "{out:?}");
    wait_log(&cluster, "c", "cluster reload: re-reading the config", 1).await;
    wait_log(&cluster, "c", "config reloaded: nothing changed", 1).await;

    // b still consumes its old outbox, with the new prefetch; nothing lost on the way.
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let outbox = format!("{n}.outbox");
        let ip = ips(((i + 1) % 3) as u8)[0];
        let owner = ["a", "b", "c"][(i + 1) % 3];
        messages.extend(batch(
            &format!("after-{n}"),
            &outbox,
            ip,
            owner,
            200,
            &mut expected,
        ));
    }
    publish_all(&cluster.client, &messages).await;
    let acc = cluster.account(&expected).await;
    acc.assert_complete(&cluster.logs());
    assert_eq!((acc.held, acc.failed, acc.duplicates), (0, 0, 0));
    for s in ["a", "b"] {
        let log = cluster
            .servers
            .iter()
            .find(|x| x.name == s)
            .unwrap()
            .log_text();
        assert_eq!(log.matches("cluster reload: re-reading").count(), 0, "{s}");
    }
}
