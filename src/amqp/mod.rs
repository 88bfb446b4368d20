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
mod connection;
mod consume;
mod convert;
mod port;
mod publish;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use mailroute_actors::broker::{BrokerError, Destination};
use tokio::sync::Mutex;

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
}
