//! mailroute's own scenarios: a handover to an announced peer, the full path through two
//! instances, and the engine alone on the in-memory broker.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mailroute_actors::broker::memory::MemoryBroker;
use mailroute_actors::broker::{Destination, Message, QueueSpec, SharedBroker};
use mailroute_actors::cluster::wire::{self, Announcement, ClusterMessage};
use mailroute_actors::testkit::wait_for;
use mailroute_actors::{Instance, InstanceSettings};

use crate::common::{self, TestVhost};
use crate::measure::{Meter, Sample, Watch, poll_until};
use crate::{b_ip, baselines, fill};

pub fn settings(name: &str, ip: IpAddr, prefetch: u16) -> InstanceSettings {
    let mut s = InstanceSettings::new(name, vec![ip]);
    s.announce_interval = Duration::from_millis(500);
    s.peer_timeout = Duration::from_secs(600);
    s.hold_time = Duration::from_secs(600);
    s.prefetch = prefetch;
    s.warmup = Duration::from_millis(1500);
    s
}

async fn announce_b(broker: &SharedBroker, exchange: &str) {
    let a = Announcement {
        name: "b".into(),
        version: "bench".into(),
        started_at: 1,
        sequence: 1,
        local_ips: vec![b_ip()],
        outbox: "b.outbox".into(),
        broker: broker.identity(),
        console_url: None,
        config_hash: String::new(),
        ..Default::default()
    };
    let m = ClusterMessage::Announcement(a);
    let body = wire::encode(&m).unwrap();
    broker
        .publish(
            &Destination::exchange(exchange, m.routing_key()),
            &Message::new(body, Default::default()),
            false,
        )
        .await
        .unwrap();
}

/// Instance a, listening, with a peer b that is announced (owning `B_IP`) but not running.
pub async fn a_with_phantom_b(broker: &SharedBroker, a: InstanceSettings) -> Instance {
    broker
        .declare_queue(&QueueSpec::durable_typed("b.outbox", a.quorum_queues))
        .await
        .unwrap();
    let exchange = a.cluster_exchange.clone();
    let instance = Instance::start(a, broker.clone(), broker.clone())
        .await
        .unwrap();
    wait_for("a listens", Duration::from_secs(30), || async {
        instance.stats.snapshot().announcements_received > 0
    })
    .await
    .unwrap();
    announce_b(broker, &exchange).await;
    wait_for("b known", Duration::from_secs(30), || async {
        instance.peers().await.len() == 1
    })
    .await
    .unwrap();
    instance
}

/// a's outbox holds N messages that b owns; b is announced but not running. `drained`: a
/// consumer takes b's outbox meanwhile, as b would. `quorum`: every queue is a quorum queue.
pub async fn handover(
    vhost: &TestVhost,
    messages: &[Message],
    prefetch: u16,
    drained: bool,
    quorum: bool,
) -> Sample {
    let broker = vhost.broker().await;
    let mut a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    a.quorum_queues = quorum;
    mailroute_actors::broker::own_queues::declare_queues(&a, &broker)
        .await
        .unwrap();
    fill(&broker, &a.outbox, messages).await;
    let outbox = a.outbox.clone();
    let n = messages.len();
    let arrivals = baselines::Arrivals::new(vhost, &broker, "b.outbox", drained).await;
    let watch = Watch::start(&broker, &outbox, n).await;
    let instance = a_with_phantom_b(&broker, a).await;
    let sample = watch.until(|| arrivals.all(&broker, n)).await;
    instance.shutdown(Duration::from_secs(5)).await;
    arrivals.close().await;
    sample
}

/// a and b both run; mail for b enters a's outbox and ends in b's deliver queue.
pub async fn full_path(vhost: &TestVhost, messages: &[Message], prefetch: u16) -> Sample {
    let (a_broker, b_broker) = (vhost.broker().await, vhost.broker().await);
    let a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    let mut b = settings("b", b_ip(), prefetch);
    b.warmup = Duration::ZERO;
    mailroute_actors::broker::own_queues::declare_queues(&a, &a_broker)
        .await
        .unwrap();
    fill(&a_broker, &a.outbox, messages).await;
    let (outbox, deliver) = (a.outbox.clone(), b.deliver.clone());
    let watch = Watch::start(&a_broker, &outbox, messages.len()).await;
    let ib = Instance::start(b, b_broker.clone(), b_broker.clone())
        .await
        .unwrap();
    let ia = Instance::start(a, a_broker.clone(), a_broker.clone())
        .await
        .unwrap();
    let sample = watch
        .until(|| async { common::ready(&b_broker, &deliver).await >= messages.len() })
        .await;
    ia.shutdown(Duration::from_secs(5)).await;
    ib.shutdown(Duration::from_secs(5)).await;
    sample
}

/// The same two instances on the in-memory broker.
pub async fn engine_only(messages: &[Message], prefetch: u16) -> Sample {
    let memory = MemoryBroker::new("bench");
    let broker: SharedBroker = Arc::new(memory.clone());
    let mut a = settings("a", IpAddr::from([10, 8, 0, 1]), prefetch);
    a.warmup = Duration::ZERO;
    let mut b = settings("b", b_ip(), prefetch);
    b.warmup = Duration::ZERO;
    let outbox = a.outbox.clone();
    let ib = Instance::start(b, broker.clone(), broker.clone())
        .await
        .unwrap();
    let ia = Instance::start(a, broker.clone(), broker.clone())
        .await
        .unwrap();
    wait_for("peers", Duration::from_secs(30), || async {
        ia.peers().await.len() == 1
    })
    .await
    .unwrap();
    // The MTA's part: take what b delivers, so the memory broker does not keep every message
    // (with RabbitMQ that memory is the broker's; here it would be page faults in the bench).
    let taken = Arc::new(AtomicU64::new(0));
    let mut mta = broker.consume("b.deliver", 1000).await.unwrap();
    let counter = taken.clone();
    actix_rt::spawn(async move {
        while let Some(Ok(delivery)) = mta.next().await {
            let _ = delivery.acker.ack().await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    // In memory, publishing is part of the measured work: there is no broker to pre-fill.
    let meter = Meter::start();
    for m in messages {
        broker
            .publish(&Destination::queue(&outbox), m, true)
            .await
            .unwrap();
    }
    let total = messages.len() as u64;
    poll_until(Duration::from_millis(1), || async {
        taken.load(Ordering::Relaxed) >= total
    })
    .await;
    let sample = meter.stop();
    drop((ia, ib));
    sample
}
