//! `cluster-protocol: digest` on the real RabbitMQ, three `mailroute serve` processes, the
//! cluster exchange on a vhost of its own, signed cluster messages, a 3 s peer-timeout:
//! 600 messages routed and counted by id; the heartbeat leader is killed (SIGKILL: no
//! `Leaving`, its connection dies with it), RabbitMQ hands the heartbeat queue to a survivor,
//! the dead one is forgotten and the survivors never forget each other; 300 more messages
//! between the survivors, each delivered once at its owner.

mod common;

use std::time::Duration;

use common::scenario::{Cluster, NAMES, ips};
use mailroute_actors::testkit::wait_for;

const LEADING: &str = "leading the heartbeat digest";

fn server<'a>(cluster: &'a Cluster, name: &str) -> &'a common::servers::Server {
    cluster
        .servers
        .iter()
        .find(|s| s.name == name)
        .expect("server")
}

#[actix::test]
async fn digest_cluster_survives_its_leaders_death() {
    let mut cluster = Cluster::start_split(
        "digest",
        "cluster-protocol: digest\ncluster-secret: digest-test-secret\nhold-time: 10m\n",
    )
    .await;
    let client = cluster.client.clone();
    let members = common::members(&NAMES, ips);
    let traffic = common::traffic(&members, 600, 0, 0, "digest");
    common::publish_all(&client, &traffic.batches).await;
    let acc =
        common::settle_and_account(&client, &NAMES, &traffic.expected, Duration::from_secs(120))
            .await;
    acc.assert_complete("");
    assert_eq!(acc.duplicates, 0);

    // The heartbeat queue is on the cluster broker, and one instance consumes it.
    let cluster_client = cluster
        .cluster_vhost
        .as_ref()
        .expect("split cluster")
        .broker()
        .await;
    assert!(
        cluster_client
            .queue_exists("mailroute.heartbeats.cluster")
            .await
            .expect("broker answers")
    );
    // `cluster list` asks (digest) instead of saying hello: every instance answers into its
    // queue alone.
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(["cluster", "list", "--config"])
        .arg(cluster.dir.join("a.conf"))
        .output()
        .expect("mailroute runs");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    for n in NAMES {
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{n} "))),
            "{n} missing in:\n{listed}"
        );
    }
    wait_for("a leader", Duration::from_secs(30), || async {
        cluster.servers.iter().any(|s| s.log_count(LEADING) > 0)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let leaders: Vec<&str> = cluster
        .servers
        .iter()
        .filter(|s| s.log_count(LEADING) > 0)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(leaders.len(), 1, "one active consumer: {leaders:?}");
    let dead = leaders[0].to_string();

    cluster.server(&dead).signal("-KILL");
    let survivors: Vec<&str> = NAMES.iter().copied().filter(|n| *n != dead).collect();
    for name in &survivors {
        let s = server(&cluster, name);
        wait_for(
            "the dead leader forgotten",
            Duration::from_secs(30),
            || async { s.log_count("peer fell silent") >= 1 },
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", s.log_text()));
    }
    wait_for("a new leader", Duration::from_secs(30), || async {
        cluster
            .servers
            .iter()
            .any(|s| s.name != dead && s.log_count(LEADING) > 0)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // Mail between the survivors while the new leader digests.
    let index = |name: &str| NAMES.iter().position(|n| *n == name).unwrap_or(0) as u8;
    let pair = common::members(&survivors, |i| ips(index(survivors[usize::from(i)])));
    let after = common::traffic(&pair, 300, 0, 0, "after-leader");
    common::publish_all(&client, &after.batches).await;
    let acc = common::settle_and_account(
        &client,
        &survivors,
        &after.expected,
        Duration::from_secs(60),
    )
    .await;
    acc.assert_complete("after the leader died");
    assert_eq!(acc.duplicates, 0);

    for name in &survivors {
        let s = server(&cluster, name);
        let log = s.log_text();
        // Only the dead leader fell silent, once; each peer joined once (none came back).
        assert_eq!(s.log_count("peer fell silent"), 1, "{name}:\n{log}");
        assert_eq!(s.log_count("peer joined"), 2, "{name}:\n{log}");
        assert!(log.contains(&format!("peer={dead}")), "{name}:\n{log}");
        assert!(
            !log.contains("digest-test-secret"),
            "{name}: secret in the log"
        );
    }
    for name in &survivors {
        cluster.server(name).signal("-TERM");
    }
    for name in &survivors {
        let status = cluster.server(name).wait();
        assert!(status.success(), "{name} did not stop cleanly");
    }
}
