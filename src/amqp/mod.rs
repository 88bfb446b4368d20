//! The Broker port on RabbitMQ, with lapin.
//!
//! One connection per broker address, reopened on demand after a failure. Mandatory publishes
//! use one confirm-mode channel per destination, other publishes a shared one; a channel is
//! reused only while it is connected (as in vector's AMQP sink). Each consumer gets its own
//! channel, closed when its stream is dropped so RabbitMQ requeues whatever it had unacked.
//!
//! Each mandatory publish learns its fate from its own id, never from lapin's pairing: RabbitMQ
//! may confirm several publishes with one `multiple` ack, and lapin attaches a preceding
//! `basic.return` to whichever of those confirms it completes first (see `confirms`). A
//! channel per destination keeps one slow or missing queue from holding up the confirms of
//! the others.
//!
//! Consumers and publishers use separate connections: when RabbitMQ blocks publishing
//! connections (a memory or disk alarm), the outbox consumer's acks must still go through.
//! While publishing is blocked, consumers take no new deliveries (their outcomes could not be
//! published): they resume when the broker unblocks.

pub mod address;
mod confirms;
mod convert;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use mailroute_actors::broker::{
    Acker, Broker, BrokerError, ConsumerControl, Delivery, Destination, Message, QueueSpec,
    Subscription,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

pub use address::AddressError;

/// How long a connect, declare or confirm may take before it counts as a broker failure.
const TIMEOUT: Duration = Duration::from_secs(30);

/// TLS settings for `amqps://` nodes, beyond the system's roots.
#[derive(Clone, Default)]
pub struct Tls {
    /// Extra trusted CA certificates (PEM).
    pub ca: Option<String>,
    /// A client certificate for brokers that ask for one (`ssl_options.verify = verify_peer`).
    pub client: Option<ClientIdentity>,
}

/// How a client's connections are kept alive and named.
#[derive(Clone, Debug)]
pub struct Link {
    /// AMQP heartbeat proposed to the broker, in seconds (0: none), unless an address sets
    /// `?heartbeat=` itself. Without one lapin takes RabbitMQ's 60 s, and a link that stops
    /// without closing is trusted for two minutes.
    pub heartbeat: u16,
    /// What RabbitMQ shows for the connections (`rabbitmqctl list_connections name`), with
    /// the role appended: "mailroute a run 1733… (consume)". An operator, and a test, can
    /// tell whose a connection is, and find one left over.
    pub name: String,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            heartbeat: crate::config::DEFAULT_HEARTBEAT,
            name: format!("mailroute@{}", gethostname::gethostname().to_string_lossy()),
        }
    }
}

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct AmqpBroker {
    /// The nodes of the address list, in this instance's own shuffled order, so that a
    /// fleet given the same list does not all land on its first node.
    nodes: Vec<address::Node>,
    /// The node connected last: both connections go there first, the others on its loss.
    current: std::sync::atomic::AtomicUsize,
    masked: String,
    identity: String,
    /// For `amqps://` nodes: extra trusted CA certificates (PEM), beside the system's roots.
    tls: lapin::tcp::OwnedTLSConfig,
    handle: tokio::runtime::Handle,
    /// Held across connecting and opening channels (both await the broker).
    state: Mutex<State>,
    /// The open publish channels, looked up on every publish without awaiting `state`.
    publishers: std::sync::Mutex<Publishers>,
    /// Whether the broker blocks the publishing connection (`connection.blocked`).
    blocked: tokio::sync::watch::Sender<bool>,
    /// When the broker last unblocked publishing.
    unblocked_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    times_blocked: Arc<std::sync::atomic::AtomicU64>,
    /// Set by `close`: no connection is opened again (an actor restarting during the exit
    /// would otherwise reconnect).
    closed: std::sync::atomic::AtomicBool,
    /// Connection name prefix (see [`Link::name`]).
    name: String,
}

/// Confirm-mode channels of the current connection: for mandatory publishes by exchange then
/// routing key (looked up with borrowed keys), and a shared one for every other publish.
#[derive(Default)]
struct Publishers {
    mandatory: HashMap<String, HashMap<String, Arc<Confirming>>>,
    shared: Option<Arc<Confirming>>,
}

impl Publishers {
    fn get(&self, to: Option<&Destination>) -> Option<&Arc<Confirming>> {
        match to {
            Some(to) => self
                .mandatory
                .get(&to.exchange)
                .and_then(|keys| keys.get(&to.routing_key)),
            None => self.shared.as_ref(),
        }
    }
}

/// A confirm-mode channel and the fate of the publishes on it (see `confirms`).
struct Confirming {
    channel: Channel,
    ledger: confirms::Ledger,
}

#[derive(Default)]
struct State {
    /// Consumers and administrative calls (exclusive queues belong to the connection that
    /// declared them, so the cluster listener declares and consumes on the same one).
    consuming: Option<Arc<Connection>>,
    /// Publishes only: the connection RabbitMQ blocks under a resource alarm.
    publishing: Option<Arc<Connection>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Consuming,
    Publishing,
}

fn lapin_error(e: lapin::Error) -> BrokerError {
    BrokerError::ChannelClosed(e.to_string())
}

async fn timed<T>(what: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, BrokerError> {
    match tokio::time::timeout(TIMEOUT, what).await {
        Ok(result) => result.map_err(lapin_error),
        Err(_) => Err(BrokerError::Timeout(TIMEOUT)),
    }
}

impl AmqpBroker {
    /// Checks the address; connects lazily on first use. Must be called inside the runtime
    /// that outlives the broker (the actix System in `mailroute serve`).
    pub fn new(address: &str) -> Result<Self, AddressError> {
        Self::with_ca(address, None)
    }

    /// [`Self::new`], trusting `ca` (PEM certificates) too for `amqps://` nodes.
    pub fn with_ca(address: &str, ca: Option<String>) -> Result<Self, AddressError> {
        Self::with_tls(address, Tls { ca, client: None })
    }

    /// [`Self::new`] with TLS settings for `amqps://` nodes.
    pub fn with_tls(address: &str, tls: Tls) -> Result<Self, AddressError> {
        Self::with_link(address, tls, Link::default())
    }

    /// [`Self::with_tls`], with the heartbeat and connection name of `link`.
    pub fn with_link(address: &str, tls: Tls, link: Link) -> Result<Self, AddressError> {
        let mut nodes = address::parse_list(address)?;
        for node in &mut nodes {
            node.uri.query.heartbeat.get_or_insert(link.heartbeat);
        }
        let identity = address::list_identity(&nodes);
        rand::seq::SliceRandom::shuffle(nodes.as_mut_slice(), &mut rand::rng());
        Ok(AmqpBroker {
            nodes,
            current: std::sync::atomic::AtomicUsize::new(0),
            masked: address::mask_password(address),
            identity,
            tls: lapin::tcp::OwnedTLSConfig {
                identity: tls.client.map(|c| lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: c.cert_pem.into_bytes(),
                    key: c.key_pem.into_bytes(),
                }),
                cert_chain: tls.ca,
            },
            handle: tokio::runtime::Handle::current(),
            state: Mutex::new(State::default()),
            publishers: std::sync::Mutex::new(Publishers::default()),
            blocked: tokio::sync::watch::channel(false).0,
            unblocked_at: Arc::default(),
            times_blocked: Arc::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            name: link.name,
        })
    }

    /// Connects now, so a wrong address or credentials stop startup with a clear error.
    pub async fn connect(address: &str) -> Result<Self, BrokerError> {
        Self::connect_with_ca(address, None).await
    }

    /// [`Self::connect`], trusting `ca` (PEM certificates) too for `amqps://` nodes.
    pub async fn connect_with_ca(address: &str, ca: Option<String>) -> Result<Self, BrokerError> {
        Self::connect_with_tls(address, Tls { ca, client: None }).await
    }

    /// [`Self::connect`] with TLS settings for `amqps://` nodes.
    pub async fn connect_with_tls(address: &str, tls: Tls) -> Result<Self, BrokerError> {
        Self::connect_with_link(address, tls, Link::default()).await
    }

    /// [`Self::connect`] with TLS settings and the heartbeat and name of `link`.
    pub async fn connect_with_link(
        address: &str,
        tls: Tls,
        link: Link,
    ) -> Result<Self, BrokerError> {
        let broker =
            Self::with_link(address, tls, link).map_err(|e| BrokerError::ConnectFailed {
                address: e.masked.clone(),
                reason: e.reason,
            })?;
        broker.connection().await?;
        Ok(broker)
    }

    pub fn masked_address(&self) -> &str {
        &self.masked
    }

    /// How often the broker has blocked this instance's publishing (a resource alarm).
    pub fn times_blocked(&self) -> u64 {
        self.times_blocked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Confirm channels open for mandatory publishes, one per destination in use.
    pub fn confirm_channels(&self) -> usize {
        self.publishers_locked()
            .mandatory
            .values()
            .map(HashMap::len)
            .sum()
    }

    async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        let mut state = self.state.lock().await;
        self.connection_locked(&mut state, Role::Consuming).await
    }

    async fn connection_locked(
        &self,
        state: &mut State,
        role: Role,
    ) -> Result<Arc<Connection>, BrokerError> {
        let slot = match role {
            Role::Consuming => &mut state.consuming,
            Role::Publishing => &mut state.publishing,
        };
        if let Some(c) = slot {
            if c.status().connected() {
                return Ok(c.clone());
            }
        }
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(BrokerError::ChannelClosed("this client has closed".into()));
        }
        if role == Role::Publishing {
            *self.publishers_locked() = Publishers::default();
        }
        let kind = match role {
            Role::Consuming => "consume",
            Role::Publishing => "publish",
        };
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{} ({kind})", self.name).into());
        let (connection, node) = self.connect_any(props).await?;
        info!(broker = %node, connection = kind, "connected");
        if role == Role::Publishing {
            // A new connection starts unblocked; the broker says so again if it still is.
            self.blocked.send_replace(false);
            self.watch_blocked(&connection);
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Tries every node once, starting with the one in use; the first that answers is used
    /// from now on. All failing is one error naming each node and why.
    async fn connect_any(
        &self,
        props: ConnectionProperties,
    ) -> Result<(Arc<Connection>, String), BrokerError> {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for step in 0..self.nodes.len() {
            let index = (first + step) % self.nodes.len();
            let node = &self.nodes[index];
            let runtime = async_rs::Runtime::tokio_with_handle(self.handle.clone());
            let connect = Connection::connect_uri_with_config(
                node.uri.clone(),
                props.clone(),
                self.tls.clone(),
                runtime,
            );
            let reason = match tokio::time::timeout(TIMEOUT, connect).await {
                Ok(Ok(c)) => {
                    if index != first {
                        warn!(broker = %node.masked, "moved to another node of the address list");
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((Arc::new(c), node.masked.clone()));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {TIMEOUT:?}"),
            };
            if self.nodes.len() > 1 {
                warn!(broker = %node.masked, %reason, "node does not answer; trying the next");
            }
            failures.push(if self.nodes.len() > 1 {
                format!("{}: {reason}", node.masked)
            } else {
                reason
            });
        }
        Err(BrokerError::ConnectFailed {
            address: self.masked.clone(),
            reason: failures.join("; "),
        })
    }

    fn publishers_locked(&self) -> std::sync::MutexGuard<'_, Publishers> {
        // A panic while holding this lock cannot leave the map half-updated: every change is a
        // single insert or replace.
        self.publishers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The publish channel for mandatory publishes to `to` (`None`: the shared one), opened in
    /// confirm mode when missing or closed.
    async fn publisher(&self, to: Option<&Destination>) -> Result<Arc<Confirming>, BrokerError> {
        let open = |publishers: &Publishers| {
            publishers
                .get(to)
                .filter(|c| c.channel.status().connected())
                .cloned()
        };
        if let Some(channel) = open(&self.publishers_locked()) {
            return Ok(channel);
        }
        let mut state = self.state.lock().await;
        // Another publish may have opened it while this one waited for `state`.
        if let Some(channel) = open(&self.publishers_locked()) {
            return Ok(channel);
        }
        let connection = self.connection_locked(&mut state, Role::Publishing).await?;
        let channel = timed(connection.create_channel()).await?;
        timed(channel.confirm_select(ConfirmSelectOptions::default())).await?;
        let channel = Arc::new(Confirming {
            channel,
            ledger: confirms::Ledger::default(),
        });
        let mut publishers = self.publishers_locked();
        match to {
            Some(to) => {
                publishers
                    .mandatory
                    .entry(to.exchange.clone())
                    .or_default()
                    .insert(to.routing_key.clone(), channel.clone());
            }
            None => publishers.shared = Some(channel.clone()),
        }
        Ok(channel)
    }

    /// A short-lived channel for one administrative call: a failed passive declare or delete
    /// closes its channel, and must not take the publish channel with it.
    async fn admin_channel(&self) -> Result<Channel, BrokerError> {
        let connection = self.connection().await?;
        timed(connection.create_channel()).await
    }

    async fn with_admin<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        let channel = self.admin_channel().await?;
        let result = timed(op(channel.clone())).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    async fn publish_on(
        &self,
        confirming: &Arc<Confirming>,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let mut properties = convert::to_lapin(&message.properties);
        // A mandatory publish's fate is read from its own id (see `confirms`).
        let id = mandatory.then(|| confirming.ledger.begin());
        if let Some(id) = id {
            let mut headers = properties.headers().clone().unwrap_or_default();
            headers.insert(
                confirms::PUBLISH_ID_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(id).unwrap_or(i64::MAX)),
            );
            properties = properties.with_headers(headers);
        }
        let channel = &confirming.channel;
        // One timer for the publish and its confirm: a timer per step showed in profiles.
        let confirmation = self
            .timed_publish(async {
                channel
                    .basic_publish(
                        to.exchange.as_str().into(),
                        to.routing_key.as_str().into(),
                        options,
                        &message.body,
                        properties,
                    )
                    .await?
                    .await
            })
            .await;
        let (carried, ours) = match confirmation {
            Ok(Confirmation::Ack(carried)) => (carried, Ok(())),
            Ok(Confirmation::Nack(carried)) => (carried, Err(BrokerError::Nack)),
            failure => {
                let error = match failure {
                    Err(error) => error,
                    _ => BrokerError::Other("publish channel lost confirm mode".into()),
                };
                if let Some(id) = id {
                    confirming.ledger.abandon(id);
                }
                if matches!(error, BrokerError::Timeout(_)) {
                    self.discard(confirming);
                }
                return Err(error);
            }
        };
        let Some(id) = id else {
            return ours;
        };
        let carried = carried.as_ref().map(confirms::Carried::from_lapin);
        match confirming.ledger.confirmed(id, carried).await {
            confirms::Fate::Routed => ours,
            confirms::Fate::Returned {
                reply_code,
                reply_text,
            } => Err(BrokerError::Returned {
                reply_code,
                reply_text,
            }),
        }
    }

    /// A publish and its confirm, bounded by [`TIMEOUT`] of time the broker was free to
    /// answer: while it blocks publishing (a resource alarm), and for a timeout after, the
    /// publish waits instead of failing. A publish that failed is published again, and its
    /// first copy, already in lapin's buffers, would still go out when the alarm clears: one
    /// more copy of every message in flight for every timeout.
    async fn timed_publish<T>(
        &self,
        what: impl Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, BrokerError> {
        let mut what = std::pin::pin!(what);
        loop {
            match tokio::time::timeout(TIMEOUT, &mut what).await {
                Ok(result) => return result.map_err(lapin_error),
                Err(_) if self.blocked_lately() => continue,
                Err(_) => return Err(BrokerError::Timeout(TIMEOUT)),
            }
        }
    }

    /// Whether the broker blocks publishing now or did within the last [`TIMEOUT`].
    fn blocked_lately(&self) -> bool {
        *self.blocked.borrow()
            || self
                .unblocked_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|at| at.elapsed() < TIMEOUT)
    }

    /// A confirm channel whose publish timed out, unblocked: closed, so that nothing sent on
    /// it can still be confirmed, or returned, to a publish that was told it failed. The next
    /// publish to its destination opens another.
    fn discard(&self, confirming: &Arc<Confirming>) {
        let mut publishers = self.publishers_locked();
        for keys in publishers.mandatory.values_mut() {
            keys.retain(|_, c| !Arc::ptr_eq(c, confirming));
        }
        if publishers
            .shared
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, confirming))
        {
            publishers.shared = None;
        }
        drop(publishers);
        let channel = confirming.channel.clone();
        warn!("a publish timed out: closing its confirm channel");
        self.handle.spawn(async move {
            let _ = channel.close(200, "publish timed out".into()).await;
        });
    }
}

impl AmqpBroker {
    /// Follows RabbitMQ's `connection.blocked` (a memory or disk alarm: publishes wait until
    /// it clears) and its end: logged, counted, and the consumers pause meanwhile.
    fn watch_blocked(&self, connection: &Connection) {
        let mut events = connection.events_listener();
        let (blocked, times, broker, unblocked_at) = (
            self.blocked.clone(),
            self.times_blocked.clone(),
            self.masked.clone(),
            self.unblocked_at.clone(),
        );
        self.handle.spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    lapin::Event::ConnectionBlocked(reason) => {
                        times.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn!(%broker, %reason, "broker blocked publishing (resource alarm); consumers pause");
                        blocked.send_replace(true);
                    }
                    lapin::Event::ConnectionUnblocked => {
                        info!(%broker, "broker unblocked publishing; consumers resume");
                        *unblocked_at
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(std::time::Instant::now());
                        blocked.send_replace(false);
                    }
                    _ => {}
                }
            }
        });
    }
}

/// Closes a released confirm channel once no publish holds it. Closing earlier would lose the
/// confirms still on their way (a client discards what arrives after its `channel.close`): the
/// originals would be requeued although their copies were stored, and sent twice.
async fn close_when_idle(channel: Arc<Confirming>) {
    // Each publish in flight holds a clone of the `Arc` until its confirm is in.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while Arc::strong_count(&channel) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if channel.channel.status().connected() {
        let _ = channel
            .channel
            .close(200, "destination released".into())
            .await;
    }
}

/// RabbitMQ's `PRECONDITION_FAILED - inequivalent arg 'A' for queue 'Q' in vhost 'V': received
/// X but current is Y`, as an error that says what to do.
fn inequivalent(queue: &str, error: BrokerError) -> BrokerError {
    let BrokerError::ChannelClosed(text) = &error else {
        return error;
    };
    let Some(rest) = text.split("inequivalent arg '").nth(1) else {
        return error;
    };
    let Some((argument, rest)) = rest.split_once('\'') else {
        return error;
    };
    let Some((_, values)) = rest.split_once(": received ") else {
        return error;
    };
    let Some((declared, existing)) = values.split_once(" but current is ") else {
        return error;
    };
    let clean = |v: &str| {
        let v = v
            .trim()
            .trim_end_matches(['"', ')'])
            .replace("the value ", "");
        // A queue declared without a type is classic; RabbitMQ says "none".
        if argument == "x-queue-type" && v == "none" {
            "'classic'".to_string()
        } else {
            v
        }
    };
    let hint = match argument {
        "x-message-ttl" => {
            " (an earlier mailroute put hold-time on the retry queue as x-message-ttl; held mail \
             now carries its own expiration, so the new retry queue has none)"
        }
        "x-queue-type" => " (rabbitmq-queue-type)",
        _ => "",
    };
    BrokerError::Inequivalent {
        queue: queue.to_string(),
        argument: argument.to_string(),
        existing: clean(existing),
        declared: clean(declared),
        hint: hint.to_string(),
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let mut arguments = FieldTable::default();
        if let Some(ttl) = spec.message_ttl {
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        }
        if spec.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if let Some(expires) = spec.expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        if spec.quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            if spec.dead_letter_queue.is_some() {
                // Classic dead-lettering is fire-and-forget: held mail could be lost on its
                // way back to the outbox. At-least-once needs reject-publish overflow.
                arguments.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString(LongString::from("at-least-once")),
                );
                arguments.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString(LongString::from("reject-publish")),
                );
            }
        }
        if let Some(target) = &spec.dead_letter_queue {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(target.as_str())),
            );
        }
        let options = QueueDeclareOptions {
            durable: !spec.exclusive,
            exclusive: spec.exclusive,
            auto_delete: spec.auto_delete,
            ..QueueDeclareOptions::default()
        };
        let name = spec.name.clone();
        // Exclusive queues belong to the connection; admin channels share it, so that holds.
        self.with_admin(|ch| async move {
            ch.queue_declare(name.as_str().into(), options, arguments)
                .await
                .map(|_| ())
        })
        .await
        .map_err(|error| inequivalent(&spec.name, error))
    }

    async fn declare_topic_exchange(&self, name: &str) -> Result<(), BrokerError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let name = name.to_string();
        self.with_admin(|ch| async move {
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        let (q, e, p) = (queue.to_string(), exchange.to_string(), pattern.to_string());
        self.with_admin(|ch| async move {
            ch.queue_bind(
                q.as_str().into(),
                e.as_str().into(),
                p.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    async fn publish(
        &self,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        if mandatory {
            let channel = self.publisher(Some(to)).await?;
            return self.publish_on(&channel, to, message, true).await;
        }
        let channel = self.publisher(None).await?;
        self.publish_on(&channel, to, message, false).await
    }

    fn publishing_blocked(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.blocked.subscribe())
    }

    fn release(&self, to: &Destination) {
        let channel = self
            .publishers_locked()
            .mandatory
            .get_mut(&to.exchange)
            .and_then(|keys| keys.remove(&to.routing_key));
        if let Some(channel) = channel {
            debug!(%to, "closing the confirm channel of a destination no longer used");
            self.handle.spawn(close_when_idle(channel));
        }
    }

    /// `connection.close` waits for the broker's close-ok, which it sends only after the
    /// frames before it. A process that just exits resets its sockets instead, and RabbitMQ
    /// discards what it had not read yet: acks sent last were lost that way, and the mail
    /// they settled was delivered a second time.
    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state.lock().await;
        *self.publishers_locked() = Publishers::default();
        for connection in [state.publishing.take(), state.consuming.take()]
            .into_iter()
            .flatten()
        {
            if connection.status().connected() {
                if let Err(error) = timed(connection.close(200, "shutdown".into())).await {
                    debug!(%error, "closing the connection failed");
                }
            }
        }
    }

    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Subscription, BrokerError> {
        let connection = self.connection().await?;
        let channel = timed(connection.create_channel()).await?;
        timed(channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let consumer = timed(channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        debug!(queue, prefetch, "consumer started");
        let closer = Arc::new(ChannelCloser {
            channel: channel.clone(),
            handle: self.handle.clone(),
        });
        Ok(Subscription {
            control: Box::new(AmqpControl {
                tag: consumer.tag(),
                closer: closer.clone(),
            }),
            deliveries: mailroute_actors::broker::paused_while(
                Box::pin(AmqpConsumer {
                    inner: consumer,
                    _closer: closer,
                }),
                Some(self.blocked.subscribe()),
            ),
        })
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let name = queue.to_string();
        self.with_admin(|ch| async move {
            ch.queue_declare(name.as_str().into(), options, FieldTable::default())
                .await
                .map(|q| q.message_count())
        })
        .await
        .map_err(|e| match e {
            BrokerError::ChannelClosed(reason) if reason.contains("NOT_FOUND") => {
                BrokerError::NoSuchQueue(queue.to_string())
            }
            other => other,
        })
    }

    /// RabbitMQ answers a passive declare of another connection's exclusive queue with
    /// RESOURCE_LOCKED: the queue is there.
    async fn queue_exists(&self, queue: &str) -> Result<bool, BrokerError> {
        match self.queue_len(queue).await {
            Ok(_) => Ok(true),
            Err(BrokerError::NoSuchQueue(_)) => Ok(false),
            Err(BrokerError::ChannelClosed(reason)) if reason.contains("RESOURCE_LOCKED") => {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let name = queue.to_string();
        self.with_admin(|ch| async move {
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
        })
        .await
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), BrokerError> {
        let name = exchange.to_string();
        self.with_admin(|ch| async move {
            ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
        })
        .await
    }
}

struct AmqpConsumer {
    inner: lapin::Consumer,
    _closer: Arc<ChannelCloser>,
}

impl Stream for AmqpConsumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx).map(|item| {
            item.map(|result| {
                result.map_err(lapin_error).map(|d| Delivery {
                    message: Message {
                        properties: Arc::new(convert::from_lapin(&d.properties)),
                        body: d.data.into(),
                    },
                    redelivered: d.redelivered,
                    acker: Box::new(AmqpAcker(d.acker)),
                })
            })
        })
    }
}

/// Closes a consumer's channel once both its stream and its control are gone. Closing the
/// channel is what makes RabbitMQ requeue the unacked deliveries now rather than when the
/// connection dies; a drain keeps the control until its last ack is answered.
struct ChannelCloser {
    channel: Channel,
    handle: tokio::runtime::Handle,
}

impl Drop for ChannelCloser {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if channel.status().connected() {
            self.handle.spawn(async move {
                let _ = channel.close(200, "consumer stopped".into()).await;
            });
        }
    }
}

struct AmqpControl {
    tag: lapin::types::ShortString,
    closer: Arc<ChannelCloser>,
}

#[async_trait]
impl ConsumerControl for AmqpControl {
    async fn cancel(&self) -> Result<(), BrokerError> {
        timed(
            self.closer
                .channel
                .basic_cancel(self.tag.clone(), BasicCancelOptions::default()),
        )
        .await
    }
}

struct AmqpAcker(lapin::Acker);

/// lapin answers `Ok(false)` when it did not send the ack at all (the acker was used, or its
/// channel is gone): the delivery is not settled, and the caller must hear so.
fn sent(what: &str, result: Result<bool, BrokerError>) -> Result<(), BrokerError> {
    match result? {
        true => Ok(()),
        false => Err(BrokerError::ChannelClosed(format!(
            "{what} not sent: the delivery's channel is gone or it was settled already"
        ))),
    }
}

/// Acks, nacks and cancels are bounded like publishes: an answer that does not come (a link
/// gone silent) is an error, not a wait for ever.
#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        sent("ack", timed(self.0.ack(BasicAckOptions::default())).await)
    }

    async fn ack_through(&self) -> Result<(), BrokerError> {
        sent(
            "ack",
            timed(self.0.ack(BasicAckOptions { multiple: true })).await,
        )
    }

    async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        };
        sent("nack", timed(self.0.nack(options)).await)
    }
}
