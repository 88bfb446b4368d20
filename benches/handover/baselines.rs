//! What a user could do without mailroute to move a full queue A into B, each run and timed
//! exactly as mailroute is:
//! - `baseline (bare lapin)`: consume, publish with confirm, ack each message once confirmed;
//! - `baseline (lapin, multiple acks)`: the same with mandatory publishes and AMQP `multiple`
//!   acks up to the highest contiguous confirmed delivery tag, one ack in flight (what the
//!   outbox consumer does);
//! - `shovel (on-confirm)`: RabbitMQ's own Shovel plugin, `ack-mode: on-confirm`, prefetch as
//!   the others: what an operator would configure instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::common::{TestVhost, rabbitmqctl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Bare,
    MultipleAcks,
    Shovel,
}

impl Baseline {
    pub const ALL: [Baseline; 3] = [Baseline::Bare, Baseline::MultipleAcks, Baseline::Shovel];

    pub fn name(self) -> &'static str {
        match self {
            Baseline::Bare => "baseline (bare lapin)",
            Baseline::MultipleAcks => "baseline (lapin, multiple acks)",
            Baseline::Shovel => "shovel (on-confirm)",
        }
    }
}

/// A pipeline moving A to B until stopped.
pub struct Running {
    task: Option<actix_rt::task::JoinHandle<()>>,
    connection: Option<Connection>,
    shovel: Option<String>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(connection) = self.connection.take() {
            let _ = connection.close(200, "done".into()).await;
        }
        if let Some(vhost) = self.shovel.take() {
            ctl(vec![
                "clear_parameter".into(),
                "-p".into(),
                vhost,
                "shovel".into(),
                "bench".into(),
            ])
            .await;
        }
    }
}

pub async fn start(kind: Baseline, vhost: &TestVhost, prefetch: u16) -> Running {
    if kind == Baseline::Shovel {
        let definition = serde_json::json!({
            "src-protocol": "amqp091",
            "src-uri": format!("amqp:///{}", vhost.name),
            "src-queue": "A",
            "src-prefetch-count": prefetch,
            "src-delete-after": "never",
            "dest-protocol": "amqp091",
            "dest-uri": format!("amqp:///{}", vhost.name),
            "dest-queue": "B",
            "ack-mode": "on-confirm",
        });
        ctl(vec![
            "set_parameter".into(),
            "-p".into(),
            vhost.name.clone(),
            "shovel".into(),
            "bench".into(),
            definition.to_string(),
        ])
        .await;
        return Running {
            task: None,
            connection: None,
            shovel: Some(vhost.name.clone()),
        };
    }
    let (connection, consume, publish) = channels(&vhost.address(), prefetch).await;
    let task = match kind {
        Baseline::Bare => actix_rt::spawn(bare(consume, publish)),
        _ => actix_rt::spawn(multiple_acks(consume, publish)),
    };
    Running {
        task: Some(task),
        connection: Some(connection),
        shovel: None,
    }
}

/// `rabbitmqctl` off the event loop: it takes half a second, during which the timer's watcher
/// must keep running (the Shovel starts moving messages before the command returns).
async fn ctl(args: Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl(&args);
    })
    .await
    .expect("rabbitmqctl");
}

/// Whether the Shovel plugin is on, enabling it if needed (Debian's rabbitmq-server ships it).
pub fn shovel_available() -> bool {
    std::process::Command::new("rabbitmq-plugins")
        .args(["enable", "rabbitmq_shovel"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One connection; consume from A (prefetch), publish to B in confirm mode.
async fn channels(address: &str, prefetch: u16) -> (Connection, lapin::Channel, lapin::Channel) {
    let runtime = async_rs::Runtime::tokio_with_handle(tokio::runtime::Handle::current());
    let conn = Connection::connect_with_runtime(address, ConnectionProperties::default(), runtime)
        .await
        .unwrap();
    let consume = conn.create_channel().await.unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    (conn, consume, publish)
}

async fn consumer(channel: &lapin::Channel, queue: &str, tag: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// Publishes a delivery's message to B and waits for the broker's confirm: `true` if acked.
async fn confirmed_in_b(
    publish: &lapin::Channel,
    delivery: &lapin::message::Delivery,
    mandatory: bool,
) -> bool {
    let options = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    let Ok(confirm) = publish
        .basic_publish(
            "".into(),
            "B".into(),
            options,
            &delivery.data,
            delivery.properties.clone(),
        )
        .await
    else {
        return false;
    };
    confirm.await.is_ok_and(|c| c.is_ack())
}

/// Consume A → publish to B with confirm → ack A once confirmed, one ack per message.
async fn bare(consume: lapin::Channel, publish: lapin::Channel) {
    let mut deliveries = consumer(&consume, "A", "baseline").await;
    while let Some(Ok(delivery)) = deliveries.next().await {
        let publish = publish.clone();
        actix_rt::spawn(async move {
            if confirmed_in_b(&publish, &delivery, false).await {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
}

/// Consume A → mandatory publish to B with confirm → one `multiple` ack at a time, up to the
/// highest delivery tag below which every publish is confirmed.
async fn multiple_acks(consume: lapin::Channel, publish: lapin::Channel) {
    let (confirmed_tx, mut confirmed) = tokio::sync::mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        let mut waiting: BTreeMap<u64, lapin::Acker> = BTreeMap::new();
        let mut acked = 0u64;
        while let Some((tag, acker)) = confirmed.recv().await {
            waiting.insert(tag, acker);
            while let Ok((tag, acker)) = confirmed.try_recv() {
                waiting.insert(tag, acker);
            }
            let mut last = None;
            while let Some(acker) = waiting.remove(&(acked + 1)) {
                acked += 1;
                last = Some(acker);
            }
            if let Some(acker) = last {
                let _ = acker.ack(BasicAckOptions { multiple: true }).await;
            }
        }
    });
    let mut deliveries = consumer(&consume, "A", "baseline").await;
    while let Some(Ok(delivery)) = deliveries.next().await {
        let (publish, confirmed_tx) = (publish.clone(), confirmed_tx.clone());
        actix_rt::spawn(async move {
            if confirmed_in_b(&publish, &delivery, true).await {
                let _ = confirmed_tx.send((delivery.delivery_tag, delivery.acker));
            }
        });
    }
}

/// Where a scenario's messages end up, counted: B growing (its depth), or B drained by a
/// consumer meanwhile, as the owning instance would (prefetch 1000, a `multiple` ack every
/// 100), counting what arrived.
pub struct Arrivals {
    queue: String,
    drainer: Option<(Connection, Arc<AtomicU64>)>,
}

impl Arrivals {
    pub async fn new(
        vhost: &TestVhost,
        admin: &mailroute_actors::broker::SharedBroker,
        queue: &str,
        drained: bool,
    ) -> Arrivals {
        if !drained {
            return Arrivals {
                queue: queue.to_string(),
                drainer: None,
            };
        }
        admin
            .declare_queue(&mailroute_actors::broker::QueueSpec::durable(queue))
            .await
            .unwrap();
        let (connection, channel, _) = channels(&vhost.address(), 1000).await;
        let mut deliveries = consumer(&channel, queue, "drain").await;
        let arrived = Arc::new(AtomicU64::new(0));
        let counter = arrived.clone();
        actix_rt::spawn(async move {
            let mut n = 0u64;
            while let Some(Ok(delivery)) = deliveries.next().await {
                n += 1;
                counter.fetch_add(1, Ordering::Relaxed);
                if n % 100 == 0 {
                    let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
                }
            }
        });
        Arrivals {
            queue: queue.to_string(),
            drainer: Some((connection, arrived)),
        }
    }

    /// Whether all `n` messages have arrived.
    pub async fn all(&self, admin: &mailroute_actors::broker::SharedBroker, n: usize) -> bool {
        match &self.drainer {
            Some((_, arrived)) => arrived.load(Ordering::Relaxed) >= n as u64,
            None => crate::common::ready(admin, &self.queue).await >= n,
        }
    }

    pub async fn close(self) {
        if let Some((connection, _)) = self.drainer {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// One timed run of `kind` moving `messages` from a full A into B (`drained`: a consumer
/// empties B meanwhile).
pub async fn throughput(
    kind: Baseline,
    messages: &[mailroute_actors::broker::Message],
    prefetch: u16,
    drained: bool,
) -> crate::measure::Sample {
    use mailroute_actors::broker::QueueSpec;
    let vhost = TestVhost::new("bench-base");
    let admin = vhost.broker().await;
    for q in ["A", "B"] {
        admin.declare_queue(&QueueSpec::durable(q)).await.unwrap();
    }
    crate::fill(&admin, "A", messages).await;
    let n = messages.len();
    let arrivals = Arrivals::new(&vhost, &admin, "B", drained).await;
    let watch = crate::measure::Watch::start(&admin, "A", n).await;
    let running = start(kind, &vhost, prefetch).await;
    let sample = watch.until(|| arrivals.all(&admin, n)).await;
    running.stop().await;
    arrivals.close().await;
    sample
}
