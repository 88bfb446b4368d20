//! The lapin adapter's acknowledgement semantics on a real RabbitMQ: the consumer relies on
//! them to settle runs of deliveries with one `multiple` ack without settling one too many.

mod common;

use std::time::Duration;

use common::TestVhost;
use futures::StreamExt;
use mailroute_actors::broker::{Delivery, DeliveryStream, Destination, Message, QueueSpec};
use mailroute_actors::testkit::wait_for;

async fn next(stream: &mut DeliveryStream) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery within 10 s")
        .expect("stream open")
        .expect("delivery")
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.body).into_owned()
}

#[actix::test]
async fn ack_through_settles_earlier_deliveries_but_not_a_nacked_or_later_one() {
    let vhost = TestVhost::new("ack-through");
    let broker = vhost.broker().await;
    broker
        .declare_queue(&QueueSpec::durable("q"))
        .await
        .unwrap();
    for i in 0..5 {
        let m = Message::new(format!("m{i}"), Default::default());
        broker
            .publish(&Destination::queue("q"), &m, true)
            .await
            .unwrap();
    }
    let mut stream = broker.consume("q", 10).await.unwrap();
    let mut d = Vec::new();
    for _ in 0..5 {
        d.push(next(&mut stream).await);
    }
    // m1 handed back, then one ack through m3: m0, m2 and m3 are settled, m4 is not.
    d[1].acker.nack(true).await.unwrap();
    d[3].acker.ack_through().await.unwrap();
    let again = next(&mut stream).await;
    assert_eq!(body(&again), "m1", "only the nacked message comes back");
    assert!(again.redelivered);
    drop(stream);
    // The consumer's channel is closed: whatever it had unacked is back in the queue.
    wait_for("m1 and m4 back", Duration::from_secs(10), || async {
        common::ready(&broker, "q").await == 2
    })
    .await
    .unwrap();
    let mut left: Vec<String> = common::drain(&broker, "q")
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["m1", "m4"]);
}
