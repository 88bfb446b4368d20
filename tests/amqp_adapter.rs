//! The lapin adapter's semantics on a real RabbitMQ that the actors rely on: `multiple` acks
//! that settle no more than they should, a cancel that keeps unacked deliveries ackable, and
//! confirm channels closed when their destination is released.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestVhost;
use futures::StreamExt;
use mailroute::amqp::AmqpBroker;
use mailroute_actors::broker::{Broker, Delivery, DeliveryStream, Destination, Message, QueueSpec};
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

async fn queue_of(broker: &dyn Broker, queue: &str, n: usize) {
    broker
        .declare_queue(&QueueSpec::durable(queue))
        .await
        .unwrap();
    for i in 0..n {
        let m = Message::new(format!("m{i}"), Default::default());
        broker
            .publish(&Destination::queue(queue), &m, true)
            .await
            .unwrap();
    }
}

/// A drain cancels the consumer: nothing new arrives, what was sent can still be acked, and
/// only what is left unacked goes back once the stream and its control are dropped.
#[actix::test]
async fn a_cancelled_consumer_keeps_its_deliveries_ackable() {
    let vhost = TestVhost::new("cancel");
    let broker = vhost.broker().await;
    queue_of(broker.as_ref(), "q", 5).await;
    let subscription = broker.subscribe("q", 10).await.unwrap();
    let mut stream = subscription.deliveries;
    let mut d = Vec::new();
    for _ in 0..5 {
        d.push(next(&mut stream).await);
    }
    subscription.control.cancel().await.unwrap();
    // Published after the cancel: stays in the queue.
    queue_of(broker.as_ref(), "q", 3).await;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends after a cancel");
    assert!(end.is_none(), "nothing delivered after the cancel");
    for delivery in &d[..3] {
        delivery.acker.ack().await.expect("ack after cancel");
    }
    assert_eq!(common::ready(&broker, "q").await, 3);
    drop(stream);
    drop(subscription.control);
    wait_for("the two unacked back", Duration::from_secs(10), || async {
        common::ready(&broker, "q").await == 5
    })
    .await
    .unwrap();
}

/// The confirm channel of a destination is closed when it is released (its peer left) and
/// opened again if mail goes there later.
#[actix::test]
async fn a_released_destination_closes_its_confirm_channel() {
    let vhost = TestVhost::new("release");
    let broker = AmqpBroker::connect(&vhost.address()).await.unwrap();
    let m = Message::new("x", Default::default());
    for q in ["p1.outbox", "p2.outbox"] {
        queue_of(&broker, q, 0).await;
        broker
            .publish(&Destination::queue(q), &m, true)
            .await
            .unwrap();
    }
    assert_eq!(broker.confirm_channels(), 2);
    broker.release(&Destination::queue("p1.outbox"));
    assert_eq!(broker.confirm_channels(), 1);
    broker
        .publish(&Destination::queue("p1.outbox"), &m, true)
        .await
        .unwrap();
    assert_eq!(broker.confirm_channels(), 2);
    assert_eq!(common::ready(&vhost.broker().await, "p1.outbox").await, 2);
}

/// Releasing a destination while publishes to it are in flight fails none of them: a failed
/// publish whose message was stored would make the original be sent again (a duplicate after
/// every peer's leave).
#[actix::test]
async fn releasing_a_busy_destination_fails_no_publish() {
    let vhost = TestVhost::new("release-busy");
    let broker = Arc::new(AmqpBroker::connect(&vhost.address()).await.unwrap());
    queue_of(broker.as_ref(), "p.outbox", 0).await;
    let to = Destination::queue("p.outbox");
    let m = Message::new(vec![b'x'; 4096], Default::default());
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publishes = futures::stream::iter(0..3000).map(|_| {
        let (broker, to, m, done) = (broker.clone(), to.clone(), m.clone(), done.clone());
        async move {
            let result = broker.publish(&to, &m, true).await;
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            result
        }
    });
    let releaser = {
        let (broker, to, done) = (broker.clone(), to.clone(), done.clone());
        actix_rt::spawn(async move {
            wait_for("publishing", Duration::from_secs(30), || async {
                done.load(std::sync::atomic::Ordering::Relaxed) >= 300
            })
            .await
            .unwrap();
            broker.release(&to);
        })
    };
    let results: Vec<_> = publishes.buffer_unordered(1000).collect().await;
    releaser.await.unwrap();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 0, "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(common::ready(&vhost.broker().await, "p.outbox").await, 3000);
}

/// MailerQ's own address form: `amqp://user:pass@host/` (empty vhost) means vhost `/`.
#[actix::test]
async fn an_address_with_an_empty_vhost_reaches_the_default_vhost() {
    let broker = AmqpBroker::connect("amqp://guest:guest@127.0.0.1/")
        .await
        .expect("amqp://host/ connects");
    let queue = format!("test-empty-vhost-{:08x}", rand::random::<u32>());
    queue_of(&broker, &queue, 1).await;
    let root = AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f")
        .await
        .unwrap();
    assert_eq!(
        root.queue_len(&queue).await.unwrap(),
        1,
        "the same vhost: /"
    );
    root.delete_queue(&queue).await.unwrap();
}

/// MailerQ's address list: the first node refuses connections, the broker connects through
/// the next one (whichever order this instance shuffled them in) and works.
#[actix::test]
async fn an_address_list_connects_through_a_node_that_answers() {
    let vhost = TestVhost::new("nodes");
    let refusing = format!("amqp://guest:guest@127.0.0.1:1/{}", vhost.name);
    let list = format!("{refusing}, {}", vhost.address());
    let broker = AmqpBroker::connect(&list)
        .await
        .expect("the second node answers");
    broker
        .declare_queue(&QueueSpec::durable("q"))
        .await
        .unwrap();
    let to = Destination::queue("q");
    broker
        .publish(&to, &Message::new(&b"x"[..], Default::default()), true)
        .await
        .unwrap();
    assert_eq!(broker.queue_len("q").await.unwrap(), 1);
    assert_eq!(
        broker.identity(),
        format!("127.0.0.1:1/{0},127.0.0.1:5672/{0}", vhost.name)
    );
    // No node answers: one error naming each node, passwords masked.
    let err = AmqpBroker::connect(&format!("{refusing},amqp://guest:guest@127.0.0.1:2/"))
        .await
        .err()
        .expect("nobody answers")
        .to_string();
    assert!(
        err.contains("127.0.0.1:1") && err.contains("127.0.0.1:2"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
}

/// One destination, some publishes routed and some returned: a headers exchange routes a
/// message by its headers, so they share a confirm channel, and the routed ones (persistent,
/// confirmed after the disk write) make RabbitMQ confirm the burst with `multiple` acks. lapin
/// pairs each return with whichever confirm it resolves next; each publish must still be told
/// its own fate, with no other message's return handed to it. (Before, swapped pairs came
/// back as "routed, and here is a stray", the stray kept alive only in a detached task.)
#[actix::test]
async fn each_publish_of_a_mixed_burst_is_told_its_own_fate() {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use mailroute_actors::broker::{HeaderValue, Properties};

    let vhost = TestVhost::new("mixed-returns");
    let setup = lapin::Connection::connect(&vhost.address(), Default::default())
        .await
        .unwrap();
    let channel = setup.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "by-header".into(),
            lapin::ExchangeKind::Headers,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let broker = Arc::new(AmqpBroker::connect(&vhost.address()).await.unwrap());
    broker
        .declare_queue(&QueueSpec::durable("routed"))
        .await
        .unwrap();
    let mut binding = FieldTable::default();
    binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
    binding.insert("route".into(), AMQPValue::LongString("yes".into()));
    channel
        .queue_bind(
            "routed".into(),
            "by-header".into(),
            "".into(),
            QueueBindOptions::default(),
            binding,
        )
        .await
        .unwrap();
    let to = Destination::exchange("by-header", "");
    let publishes = (0..2_000).map(|i| {
        let (broker, to) = (broker.clone(), to.clone());
        async move {
            let routed = i % 2 == 0;
            let mut properties = Properties {
                delivery_mode: Some(2),
                ..Properties::default()
            };
            let route = if routed { "yes" } else { "no" };
            properties.headers.insert(
                "route".into(),
                HeaderValue::LongString(route.as_bytes().to_vec()),
            );
            let m = Message::new(format!("m{i}"), properties);
            (routed, broker.publish(&to, &m, true).await)
        }
    });
    let results = futures::future::join_all(publishes).await;
    let mut wrong = 0;
    for (routed, published) in &results {
        let returned = matches!(
            published,
            Err(mailroute_actors::BrokerError::Returned { .. })
        );
        let told_right = if *routed { published.is_ok() } else { returned };
        wrong += usize::from(!told_right);
    }
    assert_eq!(wrong, 0, "publishes told another's fate");
    let shared: mailroute_actors::broker::SharedBroker = broker.clone();
    assert_eq!(common::ready(&shared, "routed").await, 1_000);
    let _ = setup.close(200, "done".into()).await;
}
