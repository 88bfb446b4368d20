//! Configuration in MailerQ's `key: value` file format, with `MAILROUTE_<KEY>` environment
//! overrides (`rabbitmq-qos` → `MAILROUTE_RABBITMQ_QOS`). A bad value stops startup with an
//! error naming the key and where it came from; keys mailroute does not know are reported
//! but accepted, so a MailerQ config file can be shared.
//!
//! [`file`] reads the format, [`keys`] is the table of keys, [`build`] validates every value
//! into a [`Config`] (typed readers in `values`), [`hash`] is what every instance must share.

mod build;
mod defaults;
pub mod file;
pub mod hash;
pub mod keys;
mod secrets;
#[cfg(test)]
mod tests;
mod values;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use mailroute_actors::mail::routing::Unroutable;
use mailroute_actors::settings::ClusterProtocol;

pub use defaults::detect_local_ips;
pub use file::{Raw, apply_env, parse_duration, parse_text};
pub use hash::cluster_hash;
pub use keys::{DEFAULT_HEARTBEAT, did_you_mean};
pub use secrets::{CaFile, ClientCert, Secret};

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: String, line: usize },
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line } => write!(f, "{path} line {line}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The OS error is the source: printed once, by whoever prints the chain.
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: expected `key: value`, got {text:?}")]
    Syntax { origin: Origin, text: String },
    #[error("{second}: `{key}` is given twice (first at {first}); remove one")]
    Duplicate {
        key: String,
        first: Origin,
        second: Origin,
    },
    #[error("{origin}: invalid value for `{key}`: {reason}")]
    Value {
        key: &'static str,
        origin: Origin,
        reason: String,
    },
}

#[derive(Clone)]
pub struct Config {
    pub rabbitmq_address: String,
    pub rabbitmq_outbox: String,
    pub rabbitmq_deliver: String,
    pub rabbitmq_failure: String,
    pub rabbitmq_retry: String,
    pub rabbitmq_qos: u16,
    pub cluster_address: String,
    /// Extra CA certificates trusted for `amqps://` (`rabbitmq-ca`, `cluster-ca`).
    pub rabbitmq_ca: Option<CaFile>,
    pub cluster_ca: Option<CaFile>,
    /// A client certificate and key for brokers that ask for one (`rabbitmq-cert`,
    /// `rabbitmq-key`; `cluster-cert`, `cluster-key`).
    pub rabbitmq_client: Option<ClientCert>,
    pub cluster_client: Option<ClientCert>,
    pub cluster_exchange: String,
    pub cluster_secret: Option<Secret>,
    pub cluster_timeout: Duration,
    /// How long `serve` waits for its brokers at startup (zero: for ever).
    pub startup_timeout: Duration,
    /// AMQP heartbeat proposed to each broker, whole seconds (0: none); an address's own
    /// `?heartbeat=` wins. Two missed beats (no frame for twice this) end the connection, on
    /// either side: a link that goes silent without closing is given up and reopened.
    pub rabbitmq_heartbeat: u16,
    pub cluster_heartbeat: u16,
    /// How far a signed cluster message's timestamp may be from this clock (replay window).
    pub cluster_freshness: Duration,
    pub cluster_name: String,
    pub announce_interval: Duration,
    pub peer_timeout: Duration,
    pub local_ips: Vec<IpAddr>,
    pub default_ips: Vec<IpAddr>,
    pub max_hops: u32,
    pub unroutable: Unroutable,
    pub hold_time: Duration,
    pub max_hold: Duration,
    pub warmup: Duration,
    pub log_summary_interval: Duration,
    /// `RUST_LOG` syntax (`info`, `mailroute=debug,info`); `RUST_LOG` itself wins at startup.
    pub log_level: String,
    /// `classic` (default) or `quorum` for the queues this instance declares.
    pub quorum_queues: bool,
    /// `mesh` (default) or `digest`: how the instances keep track of each other.
    pub protocol: ClusterProtocol,
    pub duplicate_memory: usize,
    pub duplicate_window: Duration,
    pub www_address: Option<String>,
    pub www_url: Option<String>,
    /// Bearer token the console's operator actions require; unset: actions off.
    pub www_token: Option<Secret>,
    /// `www-read-token`: needed to read the console's page and API (probes and metrics stay
    /// open). `None`: reading is open.
    pub www_read_token: Option<Secret>,
    /// Keys that were set but mean nothing to mailroute (e.g. MailerQ's own).
    pub unknown_keys: Vec<(String, Origin)>,
    /// Short hash of the settings every instance of a cluster must share, announced so that
    /// drift is spotted: see [`cluster_hash`].
    pub hash: String,
}

impl fmt::Debug for Config {
    // By hand, so that the broker addresses print with their passwords masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::amqp::address::mask_password;
        f.debug_struct("Config")
            .field("rabbitmq_address", &mask_password(&self.rabbitmq_address))
            .field("rabbitmq_outbox", &self.rabbitmq_outbox)
            .field("rabbitmq_deliver", &self.rabbitmq_deliver)
            .field("rabbitmq_failure", &self.rabbitmq_failure)
            .field("rabbitmq_retry", &self.rabbitmq_retry)
            .field("rabbitmq_qos", &self.rabbitmq_qos)
            .field("cluster_address", &mask_password(&self.cluster_address))
            .field("rabbitmq_ca", &self.rabbitmq_ca)
            .field("cluster_ca", &self.cluster_ca)
            .field("rabbitmq_client", &self.rabbitmq_client)
            .field("cluster_client", &self.cluster_client)
            .field("cluster_exchange", &self.cluster_exchange)
            .field("cluster_secret", &self.cluster_secret)
            .field("cluster_timeout", &self.cluster_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("rabbitmq_heartbeat", &self.rabbitmq_heartbeat)
            .field("cluster_heartbeat", &self.cluster_heartbeat)
            .field("cluster_freshness", &self.cluster_freshness)
            .field("cluster_name", &self.cluster_name)
            .field("announce_interval", &self.announce_interval)
            .field("peer_timeout", &self.peer_timeout)
            .field("local_ips", &self.local_ips)
            .field("default_ips", &self.default_ips)
            .field("max_hops", &self.max_hops)
            .field("unroutable", &self.unroutable)
            .field("hold_time", &self.hold_time)
            .field("max_hold", &self.max_hold)
            .field("warmup", &self.warmup)
            .field("log_summary_interval", &self.log_summary_interval)
            .field("log_level", &self.log_level)
            .field("quorum_queues", &self.quorum_queues)
            .field("protocol", &self.protocol)
            .field("duplicate_memory", &self.duplicate_memory)
            .field("duplicate_window", &self.duplicate_window)
            .field("www_address", &self.www_address)
            .field("www_url", &self.www_url)
            .field("www_token", &self.www_token)
            .field("www_read_token", &self.www_read_token)
            .field("unknown_keys", &self.unknown_keys)
            .field("hash", &self.hash)
            .finish()
    }
}
