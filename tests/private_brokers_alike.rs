//! Private brokers spelled alike, the default deployment of "every instance has its own
//! RabbitMQ": each `serve` process writes the default `amqp://guest:guest@localhost/`, and
//! `localhost` is another standalone RabbitMQ node for each (a mount namespace per process
//! with its own `/etc/hosts`: 127.0.0.2, .3, .4, port 5672). The queue names are the same on
//! every node; only the cluster exchange is shared, on a broker of its own. Every instance
//! announces `localhost:5672//`; mail must still reach its owner on its owner's node, every
//! copy counted.
//!
//! And a spoof, with `cluster-secret` set: a client of one instance's private broker declares
//! a look-alike presence queue and outbox of another instance there and answers the
//! challenges it reads; no mail reaches it.
//!
//! Needs root (unshare, mount) and the standalone nodes of `scripts/rabbitmq-cluster`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::private::PrivateCluster;
use common::scenario::{NAMES, ips};
use common::servers::{Server, logs, stop_all, wait_joined, write_config};
use common::{TestVhost, drain, ready, report};
use mailroute::amqp::AmqpBroker;
use mailroute_actors::broker::own_queues::handover_queue;
use mailroute_actors::broker::{QueueSpec, SharedBroker};
use mailroute_actors::cluster::wire::Codec;
use mailroute_actors::mail::routing::HELD_SINCE_HEADER;
use mailroute_actors::testkit::{Expect, account, wait_for};
use mailroute_actors::traffic::{mailerq_json, test_message};
use rand::Rng;

const MESSAGES: usize = 10_000;

/// The standalone node that instance `i` knows as `localhost`.
fn node_host(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

#[actix::test]
async fn private_brokers_all_at_localhost_deliver_every_message_to_its_owner() {
    common::rq_cluster::ensure_started();
    let label = format!("alike-{:08x}", rand::rng().random::<u32>());
    let cluster = TestVhost::new("alike-cl");
    let dir = std::env::temp_dir().join(&label);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let queue = |kind: &str| format!("{label}.{kind}");
    let extra = format!(
        "rabbitmq-outbox: {}\nrabbitmq-deliver: {}\nrabbitmq-failure: {}\nrabbitmq-retry: {}\n\
         cluster-address: {}\n",
        queue("outbox"),
        queue("deliver"),
        queue("failure"),
        queue("retry"),
        cluster.instance_address()
    );
    let mut clients: Vec<SharedBroker> = Vec::new();
    let mut servers = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let hosts = dir.join(format!("{name}.hosts"));
        std::fs::write(&hosts, format!("{} localhost\n", node_host(i))).expect("hosts file");
        let config = write_config(
            &dir,
            "amqp://guest:guest@localhost/",
            name,
            &ips(i as u8),
            &extra,
        );
        servers.push(Server::spawn_with_hosts(&dir, name, &config, &hosts));
        let address = format!("amqp://guest:guest@{}:5672/", node_host(i));
        clients.push(Arc::new(
            AmqpBroker::connect(&address)
                .await
                .expect("standalone node reachable"),
        ));
    }
    wait_joined(&servers, 2).await;
    for s in &servers {
        assert!(
            s.log_text().contains("broker=localhost:5672//"),
            "every instance announces the same spelling:\n{}",
            s.log_text()
        );
    }

    // Each message enters at a random instance and names the IPs of a random owner.
    let mut rng = rand::rng();
    let mut expected = HashMap::new();
    let mut batches: Vec<Vec<(String, mailroute_actors::Message)>> = vec![Vec::new(); 3];
    for n in 0..MESSAGES {
        let id = format!("{label}-{n}");
        let (from, owner) = (rng.random_range(0..3), rng.random_range(0..3usize));
        let body = mailerq_json(&id, Some(&ips(owner as u8)), 256);
        batches[from].push((queue("outbox"), test_message(&id, body)));
        expected.insert(id, Expect::Delivered(NAMES[owner].to_string()));
    }
    PrivateCluster::publish_on(&clients, batches, 3_000).await;

    let delivered = || async {
        let mut total = 0;
        for client in &clients {
            total += ready(client, &queue("deliver")).await;
        }
        total
    };
    let settled = wait_for("all delivered", Duration::from_secs(300), || async {
        delivered().await >= MESSAGES
    })
    .await;
    if let Err(e) = settled {
        panic!("{e}: {} delivered\n{}", delivered().await, logs(&servers));
    }
    stop_all(&mut servers);

    // Every copy, wherever it is: each node's queues of that name, and the handover queues.
    let cluster_client = cluster.broker().await;
    let mut found = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let n = NAMES[i].to_string();
        found.push((
            Expect::Delivered(n.clone()),
            drain(client, &queue("deliver")).await,
        ));
        found.push((
            Expect::Failed(n.clone()),
            drain(client, &queue("failure")).await,
        ));
        found.push((
            Expect::Held(n.clone()),
            drain(client, &queue("retry")).await,
        ));
        let (held, unrouted): (Vec<_>, Vec<_>) = drain(client, &queue("outbox"))
            .await
            .into_iter()
            .partition(|m| m.header(HELD_SINCE_HEADER).is_some());
        found.push((Expect::Held(n.clone()), held));
        found.push((Expect::Unrouted(n.clone()), unrouted));
        found.push((
            Expect::Unrouted(n.clone()),
            drain(&cluster_client, &handover_queue(&n)).await,
        ));
    }
    let acc = account(&expected, found);
    report(
        "private brokers all at localhost (3 standalone nodes)",
        &acc,
        0,
    );
    acc.assert_complete(&logs(&servers));
    assert_eq!(acc.duplicates, 0, "{:?}", acc.duplicate_detail);
    for s in &servers {
        assert_eq!(s.log_count("handover loop"), 0, "{}", s.log_text());
    }
    for client in &clients {
        for kind in ["outbox", "deliver", "failure", "retry"] {
            let _ = client.delete_queue(&queue(kind)).await;
        }
    }
    for name in NAMES {
        let _ = cluster_client.delete_queue(&handover_queue(name)).await;
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `cluster-secret` set, a client of a's private broker declares `mailroute.instance.c`
/// and a `c.outbox` there, and answers every challenge it reads (it cannot sign). c restarts,
/// so everyone challenges it again: a must not take the look-alike for c. (Failed before: a
/// passive declare that succeeded was taken as proof, and a handed c's mail to the spoof.)
#[actix::test]
async fn a_spoofed_presence_queue_gets_no_mail_with_a_secret() {
    let mut cluster = PrivateCluster::start("spoof", "cluster-secret: the-real-secret\n").await;
    let a_client = cluster.client_of("a").clone();
    let spoof = "c.outbox";
    a_client
        .declare_queue(&QueueSpec::durable(spoof))
        .await
        .expect("spoof outbox");
    let answering = mailroute_actors::testkit::ghost::hold_presence(
        a_client.clone(),
        cluster.cluster_client.clone(),
        "c".into(),
        1,
        Codec::default(),
    )
    .await
    .expect("spoof presence queue");
    let attacker = actix_rt::spawn(answering);
    let c = cluster.server("c");
    c.signal("-TERM");
    assert!(c.wait().success());
    c.restart();
    let a = cluster.server("a");
    wait_for("a saw c come back", Duration::from_secs(60), || async {
        a.log_count("peer restarted") >= 1 || a.log_count("peer joined") >= 3
    })
    .await
    .expect("c rejoined");
    let traffic = common::traffic(&cluster.members(), 2_000, 0, 0, "spoof");
    cluster.publish(traffic.batches, 2_000).await;
    let acc = cluster.account(&traffic.expected).await;
    attacker.abort();
    report("a spoofed presence queue, cluster-secret set", &acc, 0);
    acc.assert_complete(&cluster.logs());
    let stolen = ready(&a_client, spoof).await;
    let _ = a_client.delete_queue(spoof).await;
    assert_eq!(stolen, 0, "mail reached the spoofed outbox");
}
