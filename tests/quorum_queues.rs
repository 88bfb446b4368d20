//! `rabbitmq-queue-type: quorum`: three `serve` processes on quorum queues route, hand over,
//! hold and fail as on classic ones, every copy counted. Held mail must come back from the
//! quorum retry queue (at-least-once dead-lettering, per-message expiration): with
//! `hold-time: 1s` and `max-hold: 2s`, mail nobody owns goes round twice and is then failed, so
//! finding it in a failure queue proves the return path.

mod common;

use std::process::Command;

use std::time::Duration;

use common::Expect;
use common::scenario::Cluster;
use mailroute_actors::testkit::wait_for;

#[actix::test]
async fn quorum_queues_carry_every_message_including_held_mail_round_the_retry_queue() {
    let mut cluster = Cluster::start_with(
        "quorum",
        "rabbitmq-queue-type: quorum\nhold-time: 1s\nmax-hold: 2s\n",
    )
    .await;
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "-p",
            &cluster.vhost.name,
            "name",
            "type",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    for n in ["a", "b", "c"] {
        for q in ["outbox", "deliver", "failure", "retry"] {
            let line = format!("{n}.{q}");
            assert!(
                listed
                    .lines()
                    .any(|l| l.starts_with(&format!("{line}\t")) && l.ends_with("quorum")),
                "{line} is not a quorum queue:\n{listed}"
            );
        }
    }
    let mut traffic = common::traffic(&cluster.members(), 3_000, 5, 1, "quorum");
    for expect in traffic.expected.values_mut() {
        if let Expect::Held(by) = expect {
            *expect = Expect::Failed(by.clone());
        }
    }
    common::publish_all(&cluster.client, &traffic.batches).await;
    let names = ["a", "b", "c"];
    let client = cluster.client.clone();
    let settled = wait_for(
        "delivered or failed, none held",
        Duration::from_secs(120),
        || async {
            let (mut done, mut moving) = (0, 0);
            for n in names {
                done += common::ready(&client, &format!("{n}.deliver")).await;
                done += common::ready(&client, &format!("{n}.failure")).await;
                moving += common::ready(&client, &format!("{n}.outbox")).await;
                moving += common::ready(&client, &format!("{n}.retry")).await;
            }
            done >= 3_000 && moving == 0
        },
    )
    .await;
    if let Err(e) = settled {
        panic!("{e}\n{}", cluster.logs());
    }
    cluster.stop_all();
    let acc = common::account_stopped(&client, &names, &traffic.expected).await;
    common::report(
        "quorum queues, 3,000 messages; 5% held twice round the retry queue, then failed at max-hold",
        &acc,
        acc.held + acc.failed,
    );
    acc.assert_complete(&cluster.logs());
    // Every unowned message came back from the retry queue twice and was failed.
    assert_eq!(acc.held, 0);
    assert!(acc.failed > 0);
    assert_eq!(acc.duplicates, 0, "{:?}", acc.duplicate_detail);
}
