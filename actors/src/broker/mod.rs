//! The Broker port: the few AMQP operations the actors need, independent of lapin.
//!
//! `src/amqp` implements it on RabbitMQ, [`memory`] in-process. Every publish waits for the
//! broker's confirm: an `Ok` means the broker took responsibility for the message.
//! [`own_queues`] names every queue mailroute uses.

pub mod memory;
pub mod own_queues;

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// Why a broker operation failed. A nack and a returned message are errors, never successes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("cannot connect to broker {address}: {reason}")]
    ConnectFailed { address: String, reason: String },
    #[error("broker channel closed: {0}")]
    ChannelClosed(String),
    #[error("broker refused the message (nack)")]
    Nack,
    #[error("broker returned the message: {reply_code} {reply_text}")]
    Returned { reply_code: u16, reply_text: String },
    #[error("no queue named {0}")]
    NoSuchQueue(String),
    #[error(
        "queue {queue} exists with {argument} = {existing}, but this instance declares {declared}; \
         RabbitMQ cannot change the arguments of a queue: move its messages elsewhere (a shovel) \
         and delete it so that mailroute declares it anew, or configure what the queue has{hint}"
    )]
    Inequivalent {
        queue: String,
        argument: String,
        existing: String,
        declared: String,
        /// What this argument is to mailroute, when that helps.
        hint: String,
    },
    #[error("broker operation timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("broker error: {0}")]
    Other(String),
}

/// An AMQP field value, kept lossless so a forwarded message keeps its headers exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal { scale: u8, value: u32 },
    ShortString(String),
    LongString(Vec<u8>),
    Array(Vec<HeaderValue>),
    Timestamp(u64),
    Table(Headers),
    Bytes(Vec<u8>),
    Void,
}

impl HeaderValue {
    /// Integer view of any integral value, as other clients encode counters differently.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            HeaderValue::I8(v) => Some(v.into()),
            HeaderValue::U8(v) => Some(v.into()),
            HeaderValue::I16(v) => Some(v.into()),
            HeaderValue::U16(v) => Some(v.into()),
            HeaderValue::I32(v) => Some(v.into()),
            HeaderValue::U32(v) => Some(v.into()),
            HeaderValue::I64(v) => Some(v),
            HeaderValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Text view of string values (AMQP strings are bytes; non-UTF-8 gives `None`).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::ShortString(s) => Some(s),
            HeaderValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

pub type Headers = BTreeMap<String, HeaderValue>;

/// AMQP basic properties, all kept so a handed-over message is untouched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Headers,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

impl Properties {
    /// Persistent messages survive a broker restart; everything mailroute publishes itself is.
    pub fn persistent() -> Self {
        Properties {
            delivery_mode: Some(2),
            ..Properties::default()
        }
    }
}

/// A message as it travels: properties and body both shared, so passing a message between
/// actors or keeping a copy for later costs two reference counts, not a copy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub properties: Arc<Properties>,
    pub body: Bytes,
}

impl Message {
    pub fn new(body: impl Into<Bytes>, properties: Properties) -> Self {
        Message {
            properties: Arc::new(properties),
            body: body.into(),
        }
    }

    /// The properties to change; copied first only if another holder still shares them.
    pub fn properties_mut(&mut self) -> &mut Properties {
        Arc::make_mut(&mut self.properties)
    }

    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.properties.headers.get(name)
    }
}

/// Where a publish goes: an exchange (empty = the default exchange) and a routing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub exchange: String,
    pub routing_key: String,
}

impl Destination {
    /// Straight into a queue through the default exchange.
    pub fn queue(name: impl Into<String>) -> Self {
        Destination {
            exchange: String::new(),
            routing_key: name.into(),
        }
    }

    pub fn exchange(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Destination {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exchange.is_empty() {
            write!(f, "queue {}", self.routing_key)
        } else {
            write!(f, "exchange {} key {}", self.exchange, self.routing_key)
        }
    }
}

/// How a queue is declared. Defaults: durable, shared, kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueSpec {
    pub name: String,
    /// Private to this connection and gone with it (the cluster listener's queue).
    pub exclusive: bool,
    pub auto_delete: bool,
    /// Messages expire after this long and are dead-lettered (the hold queue).
    pub message_ttl: Option<std::time::Duration>,
    /// Dead letters go to this queue through the default exchange.
    pub dead_letter_queue: Option<String>,
    /// A quorum queue (replicated, Raft); dead-lettering from one is at-least-once.
    pub quorum: bool,
    /// Only one consumer at a time gets messages; when it goes, the broker picks the next
    /// (`x-single-active-consumer`): the heartbeat queue's leader election.
    pub single_active_consumer: bool,
    /// The broker deletes the queue after this long without consumers (`x-expires`).
    pub expires: Option<std::time::Duration>,
}

impl QueueSpec {
    pub fn durable(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            ..QueueSpec::default()
        }
    }

    /// Durable, of the type this instance's queues have (`rabbitmq-queue-type`).
    pub fn durable_typed(name: impl Into<String>, quorum: bool) -> Self {
        QueueSpec {
            quorum,
            ..QueueSpec::durable(name)
        }
    }

    pub fn private(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            exclusive: true,
            auto_delete: true,
            ..QueueSpec::default()
        }
    }
}

/// Settles one delivery. Acking on a channel that died is an error the caller may ignore: the
/// broker requeues what was unacked on a dead channel, so the message is redelivered.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Acks this delivery and every earlier one of the same consumer not yet acked or nacked
    /// (AMQP's `multiple`): one frame settles a whole run of confirmed deliveries.
    async fn ack_through(&self) -> Result<(), BrokerError>;
    async fn nack(&self, requeue: bool) -> Result<(), BrokerError>;
}

pub struct Delivery {
    pub message: Message,
    pub redelivered: bool,
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// A consumer: yields deliveries until the broker cancels it or the connection fails (an `Err`
/// then the end). Dropping it (and its [`ConsumerControl`], if any) closes the consumer, and the
/// broker requeues its unacked deliveries.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery, BrokerError>> + Send>>;

/// Passes deliveries on only while `blocked` (when given) says no: a broker that blocks
/// publishing (a resource alarm) could not take the outcome of a delivery taken now, which
/// would wait unacked, holding memory, until the alarm clears.
pub fn paused_while(
    deliveries: DeliveryStream,
    blocked: Option<tokio::sync::watch::Receiver<bool>>,
) -> DeliveryStream {
    use futures::StreamExt;
    let Some(blocked) = blocked else {
        return deliveries;
    };
    Box::pin(futures::stream::unfold(
        (deliveries, blocked),
        |(mut deliveries, mut blocked)| async move {
            while *blocked.borrow_and_update() {
                if blocked.changed().await.is_err() {
                    break;
                }
            }
            let item = deliveries.next().await?;
            Some((item, (deliveries, blocked)))
        },
    ))
}

/// Stops a consumer without giving up its unacked deliveries: after `cancel` the broker sends
/// nothing new, the stream yields what was already sent and ends, and acks still work until
/// both the stream and this handle are dropped. A graceful drain needs exactly that.
#[async_trait]
pub trait ConsumerControl: Send + Sync {
    async fn cancel(&self) -> Result<(), BrokerError>;
}

/// A consumer and the handle that cancels it.
pub struct Subscription {
    pub deliveries: DeliveryStream,
    pub control: Box<dyn ConsumerControl>,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// host:port/vhost, never credentials: two instances with the same identity share a broker.
    fn identity(&self) -> String;
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError>;
    /// A topic exchange, durable.
    async fn declare_topic_exchange(&self, name: &str) -> Result<(), BrokerError>;
    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError>;
    /// Publishes and waits for the confirm. `mandatory`: an unroutable message is `Returned`.
    /// The answer is this publish's own fate, never another's (AMQP does not say which publish
    /// a `basic.return` belongs to; an adapter must find out, see `amqp::confirms`).
    async fn publish(
        &self,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError>;
    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Subscription, BrokerError>;
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError> {
        self.subscribe(queue, prefetch).await.map(|s| s.deliveries)
    }
    /// Messages ready in the queue (not counting unacked ones).
    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError>;
    /// Whether a queue of this name exists here, an exclusive one of another connection too.
    async fn queue_exists(&self, queue: &str) -> Result<bool, BrokerError> {
        match self.queue_len(queue).await {
            Ok(_) => Ok(true),
            Err(BrokerError::NoSuchQueue(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError>;
    async fn delete_exchange(&self, exchange: &str) -> Result<(), BrokerError>;
    /// This instance will not publish to `to` for a while (its peer left): whatever the broker
    /// keeps open for it (a confirm channel) may be closed. Publishing there again reopens it.
    fn release(&self, _to: &Destination) {}
    /// Whether this broker blocks publishing now (a resource alarm), as it changes: a consumer
    /// of *another* broker whose outcomes are published here pauses meanwhile.
    fn publishing_blocked(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// Ends this client's use of the broker in order: whatever it sent before (acks above
    /// all) is taken by the broker before the connection goes. Nothing connects afterwards.
    async fn close(&self) {}
}

pub type SharedBroker = Arc<dyn Broker>;

/// Whether two broker identities name the same broker: an identity of an address list is its
/// nodes' identities, comma-separated, and two lists with a node in common are one cluster.
pub fn same_broker(a: &str, b: &str) -> bool {
    a == b
        || a.split(',')
            .any(|node| b.split(',').any(|other| other == node))
}
