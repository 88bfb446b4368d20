use super::*;
use crate::broker::Broker;
use futures::StreamExt;

#[test]
fn topic_patterns() {
    assert!(topic_matches("#", "announce.a"));
    assert!(topic_matches("#", ""));
    assert!(topic_matches("announce.*", "announce.a"));
    assert!(!topic_matches("announce.*", "announce.a.b"));
    assert!(topic_matches("announce.#", "announce.a.b"));
    assert!(!topic_matches("hello", "announce"));
}

/// A broker with queue `q` holding `n` messages whose bodies are 0, 1, …
async fn queue_of(n: u8) -> MemoryBroker {
    let broker = MemoryBroker::new("t");
    broker
        .declare_queue(&QueueSpec::durable("q"))
        .await
        .unwrap();
    for i in 0..n {
        let m = Message::new(vec![i], Default::default());
        broker
            .publish(&Destination::queue("q"), &m, true)
            .await
            .unwrap();
    }
    broker
}

#[tokio::test]
async fn ack_through_settles_earlier_deliveries_of_the_consumer_only() {
    let broker = queue_of(5).await;
    let mut consumer = broker.consume("q", 10).await.unwrap();
    let mut d = Vec::new();
    for _ in 0..5 {
        d.push(consumer.next().await.unwrap().unwrap());
    }
    d[1].acker.nack(true).await.unwrap();
    d[3].acker.ack_through().await.unwrap();
    let again = consumer.next().await.unwrap().unwrap();
    assert_eq!(&again.message.body[..], [1]);
    // Settled: 0, 2, 3. Unacked: 4 and the redelivered 1.
    assert_eq!(broker.depth("q"), 2);
    assert!(d[0].acker.ack().await.is_err(), "already settled");
}

#[tokio::test]
async fn unacked_messages_return_when_the_consumer_goes() {
    let broker = queue_of(3).await;
    let mut consumer = broker.consume("q", 2).await.unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    first.acker.ack().await.unwrap();
    let _second = consumer.next().await.unwrap().unwrap();
    drop(consumer);
    assert_eq!(broker.depth("q"), 2);
    let again = broker.drain("q");
    assert_eq!(again[0].body.as_ref(), &[1]);
}

#[tokio::test]
async fn mandatory_publish_to_missing_queue_is_returned() {
    let broker = MemoryBroker::new("t");
    let m = Message::new(&b"x"[..], Default::default());
    let err = broker.publish(&Destination::queue("none"), &m, true).await;
    assert!(matches!(
        err,
        Err(BrokerError::Returned {
            reply_code: 312,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn expired_messages_are_dead_lettered() {
    let broker = MemoryBroker::new("t");
    broker
        .declare_queue(&QueueSpec::durable("outbox"))
        .await
        .unwrap();
    let mut hold = QueueSpec::durable("hold");
    hold.message_ttl = Some(std::time::Duration::from_secs(5));
    hold.dead_letter_queue = Some("outbox".into());
    broker.declare_queue(&hold).await.unwrap();
    let m = Message::new(&b"x"[..], Default::default());
    broker
        .publish(&Destination::queue("hold"), &m, true)
        .await
        .unwrap();
    let mut consumer = broker.consume("outbox", 1).await.unwrap();
    let back = consumer.next().await.unwrap().unwrap();
    assert_eq!(back.message.body.as_ref(), b"x");
    assert_eq!(broker.depth("hold"), 0);
}
