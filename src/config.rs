//! Configuration in MailerQ's `key: value` file format, with `MAILROUTE_<KEY>` environment
//! overrides (`rabbitmq-qos` → `MAILROUTE_RABBITMQ_QOS`). A bad value stops startup with an
//! error naming the key and where it came from; keys mailroute does not know are reported
//! but accepted, so a MailerQ config file can be shared.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use mailroute_actors::InstanceSettings;
use mailroute_actors::routing::{RoutePolicy, Unroutable};
use mailroute_actors::settings::ClusterProtocol;
use sha2::{Digest, Sha256};

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

/// A CA file for TLS: where it was read from, and its PEM certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: String,
    pub pem: String,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// A client certificate (PEM chain) and its private key (PEM), read at load. Printed as the
/// two paths: the key never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: CaFile,
    pub key_path: String,
    key_pem: Secret,
}

impl ClientCert {
    pub fn key_pem(&self) -> &str {
        self.key_pem.expose()
    }
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} + {}", self.cert.path, self.key_path)
    }
}

/// A secret value: printed as `***`, so a logged config never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for checking a presented token; never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// RabbitMQ's own default is 60 s, so a link that stops without closing is trusted for two
/// minutes; RabbitMQ recommends 5 to 20 s. 10 s: a silent link is given up after 20 s.
pub const DEFAULT_HEARTBEAT: u16 = 10;

const KEYS: &[&str] = &[
    "rabbitmq-address",
    "rabbitmq-outbox",
    "rabbitmq-deliver",
    "rabbitmq-failure",
    "rabbitmq-retry",
    "rabbitmq-qos",
    "cluster-address",
    "rabbitmq-ca",
    "cluster-ca",
    "rabbitmq-cert",
    "rabbitmq-key",
    "cluster-cert",
    "cluster-key",
    "rabbitmq-verify",
    "cluster-verify",
    "cluster-exchange",
    "cluster-secret",
    "cluster-timeout",
    "startup-timeout",
    "rabbitmq-heartbeat",
    "cluster-heartbeat",
    "cluster-freshness",
    "cluster-name",
    "announce-interval",
    "peer-timeout",
    "local-ips",
    "default-ips",
    "max-hops",
    "unroutable",
    "hold-time",
    "max-hold",
    "warmup",
    "log-summary-interval",
    "log-level",
    "rabbitmq-queue-type",
    "cluster-protocol",
    "duplicate-memory",
    "duplicate-window",
    "www-address",
    "www-url",
    "www-token",
    "www-read-token",
];

type Raw = BTreeMap<String, (String, Origin)>;

/// A comment starts with `#` at the start of a line or after whitespace, so a value such as
/// `cluster-secret: ab#cd` keeps its `#`.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let start = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
        .map(|(i, _)| i);
    start.map_or(line, |i| &line[..i])
}

/// A known key within two edits of `key` (a typo), for the unknown-key warning.
pub fn did_you_mean(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|known| (edit_distance(key, known), *known))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replace = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = replace.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Reads `key: value` lines; `#` after whitespace or at line start begins a comment; a key
/// given twice is an error naming both lines.
pub fn parse_text(text: &str, path: &str) -> Result<Raw, ConfigError> {
    let mut raw = Raw::new();
    for (index, line) in text.lines().enumerate() {
        let origin = Origin::File {
            path: path.to_string(),
            line: index + 1,
        };
        let content = strip_comment(line).trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once(':') else {
            return Err(ConfigError::Syntax {
                origin,
                text: content.to_string(),
            });
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(ConfigError::Syntax {
                origin,
                text: content.to_string(),
            });
        }
        if let Some((_, first)) = raw.get(&key) {
            return Err(ConfigError::Duplicate {
                key,
                first: first.clone(),
                second: origin,
            });
        }
        raw.insert(key, (value.trim().to_string(), origin));
    }
    Ok(raw)
}

/// Applies `MAILROUTE_<KEY>` overrides from `vars`.
pub fn apply_env(raw: &mut Raw, vars: impl IntoIterator<Item = (String, String)>) {
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("MAILROUTE_") else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace('_', "-");
        raw.insert(key, (value, Origin::Env(var)));
    }
}

impl Config {
    /// The console's tokens as configured.
    pub fn console_tokens(&self) -> crate::console::access::Tokens {
        crate::console::access::Tokens {
            action: self.www_token.clone(),
            read: self.www_read_token.clone(),
        }
    }

    /// File, then the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut raw = parse_text(&text, &shown)?;
        apply_env(&mut raw, std::env::vars());
        Config::from_raw(raw)
    }

    pub fn from_raw(raw: Raw) -> Result<Config, ConfigError> {
        let values = Values { raw: &raw };
        let rabbitmq_address =
            values.string("rabbitmq-address", "amqp://guest:guest@localhost/")?;
        crate::amqp::address::parse_list(&rabbitmq_address)
            .map_err(|e| values.error("rabbitmq-address", format!("{}: {}", e.masked, e.reason)))?;
        let cluster_address = values.string("cluster-address", "")?;
        let cluster_address = if cluster_address.is_empty() {
            rabbitmq_address.clone()
        } else {
            crate::amqp::address::parse_list(&cluster_address).map_err(|e| {
                values.error("cluster-address", format!("{}: {}", e.masked, e.reason))
            })?;
            cluster_address
        };
        let rabbitmq_ca = values.ca_file("rabbitmq-ca")?;
        let cluster_ca = match values.ca_file("cluster-ca")? {
            None if !raw.contains_key("cluster-address") => rabbitmq_ca.clone(),
            other => other,
        };
        let rabbitmq_client = values.client_cert("rabbitmq-cert", "rabbitmq-key")?;
        let cluster_client = match values.client_cert("cluster-cert", "cluster-key")? {
            None if !raw.contains_key("cluster-address") => rabbitmq_client.clone(),
            other => other,
        };
        values.verify("rabbitmq-verify")?;
        values.verify("cluster-verify")?;
        let rabbitmq_heartbeat = values.heartbeat("rabbitmq-heartbeat", DEFAULT_HEARTBEAT)?;
        let cluster_heartbeat = values.heartbeat("cluster-heartbeat", rabbitmq_heartbeat)?;
        let announce_interval =
            values.positive_duration("announce-interval", Duration::from_secs(2))?;
        let peer_timeout = values.positive_duration("peer-timeout", announce_interval * 3)?;
        if peer_timeout <= announce_interval {
            return Err(values.error(
                "peer-timeout",
                format!("must be longer than announce-interval ({announce_interval:?}), or every peer flaps"),
            ));
        }
        let local_ips = match raw.get("local-ips") {
            Some(_) => values.ips("local-ips")?,
            None => detect_local_ips(),
        };
        let config = Config {
            rabbitmq_outbox: values.name("rabbitmq-outbox", "outbox")?,
            rabbitmq_deliver: values.name("rabbitmq-deliver", "deliver")?,
            rabbitmq_failure: values.name("rabbitmq-failure", "failure")?,
            rabbitmq_retry: values.name("rabbitmq-retry", "retry")?,
            rabbitmq_qos: values.number("rabbitmq-qos", 1000, 1, u64::from(u16::MAX))? as u16,
            cluster_exchange: values.name("cluster-exchange", "cluster")?,
            cluster_secret: Some(values.string("cluster-secret", "")?)
                .filter(|s| !s.is_empty())
                .map(Secret),
            cluster_timeout: values.positive_duration("cluster-timeout", Duration::from_secs(1))?,
            startup_timeout: values.duration("startup-timeout", Duration::from_secs(300))?,
            rabbitmq_heartbeat,
            cluster_heartbeat,
            cluster_freshness: values
                .positive_duration("cluster-freshness", Duration::from_secs(30))?,
            cluster_name: values.name("cluster-name", &default_name())?,
            announce_interval,
            peer_timeout,
            local_ips,
            default_ips: match raw.get("default-ips") {
                Some(_) => values.ips("default-ips")?,
                None => Vec::new(),
            },
            max_hops: values.number("max-hops", 2, 1, 100)? as u32,
            unroutable: values.one_of(
                "unroutable",
                &[
                    ("hold", Unroutable::Hold),
                    ("fail", Unroutable::Fail),
                    ("local", Unroutable::Local),
                ],
            )?,
            hold_time: values.positive_duration("hold-time", Duration::from_secs(60))?,
            max_hold: values.positive_duration("max-hold", Duration::from_secs(3600))?,
            warmup: values.duration("warmup", announce_interval)?,
            log_summary_interval: values
                .positive_duration("log-summary-interval", Duration::from_secs(60))?,
            log_level: {
                let level = values.string("log-level", "info")?;
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
                    return Err(values.error(
                        "log-level",
                        format!("{e} (try info, debug, or mailroute=debug,info)"),
                    ));
                }
                level
            },
            quorum_queues: values.one_of(
                "rabbitmq-queue-type",
                &[("classic", false), ("quorum", true)],
            )?,
            protocol: values.one_of(
                "cluster-protocol",
                &[
                    ("mesh", ClusterProtocol::Mesh),
                    ("digest", ClusterProtocol::Digest),
                ],
            )?,
            duplicate_memory: values.number("duplicate-memory", 50_000, 0, 10_000_000)? as usize,
            duplicate_window: values
                .positive_duration("duplicate-window", Duration::from_secs(600))?,
            www_address: Some(values.string("www-address", "")?).filter(|s| !s.is_empty()),
            www_url: match values.string("www-url", "")?.as_str() {
                "" => default_www_url(&values.string("www-address", "")?),
                url if crate::console::links::web_url(url).is_some() => Some(url.to_string()),
                _ => {
                    return Err(values.error(
                        "www-url",
                        "expected an http:// or https:// URL with a host (peers show it as a link)"
                            .into(),
                    ));
                }
            },
            www_token: values.token("www-token")?,
            www_read_token: values.token("www-read-token")?,
            unknown_keys: raw
                .iter()
                .filter(|(k, _)| !KEYS.contains(&k.as_str()))
                .map(|(k, (_, origin))| (k.clone(), origin.clone()))
                .collect(),
            hash: String::new(),
            rabbitmq_address,
            cluster_address,
            rabbitmq_ca,
            cluster_ca,
            rabbitmq_client,
            cluster_client,
        };
        let config = Config {
            hash: cluster_hash(&config),
            ..config
        };
        let queues = [
            ("rabbitmq-deliver", &config.rabbitmq_deliver),
            ("rabbitmq-failure", &config.rabbitmq_failure),
            ("rabbitmq-retry", &config.rabbitmq_retry),
        ];
        for (key, queue) in queues {
            if *queue == config.rabbitmq_outbox {
                return Err(values.error(
                    key,
                    format!("must differ from rabbitmq-outbox ({queue}), or mail loops"),
                ));
            }
        }
        Ok(config)
    }

    pub fn settings(&self) -> InstanceSettings {
        let mut s = InstanceSettings::new(self.cluster_name.clone(), self.local_ips.clone());
        s.outbox = self.rabbitmq_outbox.clone();
        s.deliver = self.rabbitmq_deliver.clone();
        s.failure = self.rabbitmq_failure.clone();
        s.retry = self.rabbitmq_retry.clone();
        s.prefetch = self.rabbitmq_qos;
        s.cluster_exchange = self.cluster_exchange.clone();
        s.announce_interval = self.announce_interval;
        s.peer_timeout = self.peer_timeout;
        s.policy = RoutePolicy {
            default_ips: self.default_ips.clone(),
            max_hops: self.max_hops,
            unroutable: self.unroutable,
            max_hold: self.max_hold,
        };
        s.hold_time = self.hold_time;
        s.console_url = self.www_url.clone();
        s.config_hash = self.hash.clone();
        s.warmup = self.warmup;
        s.summary_interval = self.log_summary_interval;
        s.duplicate_memory = self.duplicate_memory;
        s.duplicate_window = self.duplicate_window;
        s.quorum_queues = self.quorum_queues;
        s.protocol = self.protocol;
        s.codec = self.codec();
        s
    }

    pub fn codec(&self) -> mailroute_actors::wire::Codec {
        mailroute_actors::wire::Codec::new(
            self.cluster_secret.as_ref().map(|s| s.0.as_str()),
            self.cluster_freshness,
        )
    }
}

struct Values<'a> {
    raw: &'a Raw,
}

impl Values<'_> {
    fn origin(&self, key: &str) -> Origin {
        self.raw
            .get(key)
            .map_or(Origin::Default, |(_, o)| o.clone())
    }

    fn error(&self, key: &'static str, reason: String) -> ConfigError {
        ConfigError::Value {
            key,
            origin: self.origin(key),
            reason,
        }
    }

    /// A PEM file of CA certificates, read now so a wrong path stops startup naming the key.
    fn ca_file(&self, key: &'static str) -> Result<Option<CaFile>, ConfigError> {
        let path = self.string(key, "")?;
        if path.is_empty() {
            return Ok(None);
        }
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| self.error(key, format!("cannot read {path}: {e}")))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.error(key, format!("{path} holds no PEM certificate")));
        }
        Ok(Some(CaFile { path, pem }))
    }

    /// A client certificate and its key: both or neither, read now so that a wrong path
    /// stops startup naming the key.
    fn client_cert(
        &self,
        cert_key: &'static str,
        key_key: &'static str,
    ) -> Result<Option<ClientCert>, ConfigError> {
        let cert = self.ca_file(cert_key)?;
        let key_path = self.string(key_key, "")?;
        match (cert, key_path.is_empty()) {
            (None, true) => Ok(None),
            (Some(_), true) => {
                Err(self.error(key_key, format!("{cert_key} needs its private key")))
            }
            (None, false) => Err(self.error(cert_key, format!("{key_key} needs its certificate"))),
            (Some(cert), false) => {
                let pem = std::fs::read_to_string(&key_path)
                    .map_err(|e| self.error(key_key, format!("cannot read {key_path}: {e}")))?;
                if !pem.contains("PRIVATE KEY-----") {
                    return Err(self.error(key_key, format!("{key_path} holds no PEM private key")));
                }
                Ok(Some(ClientCert {
                    cert,
                    key_path,
                    key_pem: Secret(pem),
                }))
            }
        }
    }

    /// MailerQ's `rabbitmq-verify` / `cluster-verify`: `true` is what mailroute does; `false`
    /// (accept any certificate) is refused rather than silently verified or not.
    fn verify(&self, key: &'static str) -> Result<(), ConfigError> {
        match self.string(key, "true")?.as_str() {
            "true" | "yes" | "1" => Ok(()),
            "false" | "no" | "0" => Err(self.error(
                key,
                "turning certificate verification off is not supported: give the CA that \
                 signed the broker's certificate with rabbitmq-ca / cluster-ca instead"
                    .into(),
            )),
            other => Err(self.error(key, format!("expected true or false, got {other:?}"))),
        }
    }

    /// A bearer token: long enough not to be guessed, printable, no spaces. The error never
    /// repeats the value.
    fn token(&self, key: &'static str) -> Result<Option<Secret>, ConfigError> {
        let value = self.string(key, "")?;
        if value.is_empty() {
            return Ok(None);
        }
        if value.chars().count() < 16 {
            return Err(self.error(key, "too short: use at least 16 characters".into()));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.error(key, "must not contain spaces or control characters".into()));
        }
        Ok(Some(Secret(value)))
    }

    fn string(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self
            .raw
            .get(key)
            .map_or_else(|| default.to_string(), |(v, _)| v.clone()))
    }

    /// One of `options` by its name; the first is the default.
    fn one_of<T: Copy>(&self, key: &'static str, options: &[(&str, T)]) -> Result<T, ConfigError> {
        let default = options.first().map_or("", |(name, _)| *name);
        let value = self.string(key, default)?;
        if let Some((_, chosen)) = options.iter().find(|(name, _)| *name == value) {
            return Ok(*chosen);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let expected = match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.error(key, format!("expected {expected}, got {value:?}")))
    }

    /// A queue, exchange or instance name: non-empty, printable, no spaces.
    fn name(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.string(key, default)?;
        if value.is_empty()
            || value.len() > 200
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.error(
                key,
                format!("expected a non-empty name without spaces, got {value:?}"),
            ));
        }
        Ok(value)
    }

    fn number(
        &self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some((value, _)) = self.raw.get(key) else {
            return Ok(default);
        };
        match value.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.error(
                key,
                format!("expected a whole number from {min} to {max}, got {value:?}"),
            )),
        }
    }

    fn duration(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let Some((value, _)) = self.raw.get(key) else {
            return Ok(default);
        };
        parse_duration(value).ok_or_else(|| {
            self.error(key, format!("expected a duration such as 2, 2s, 500ms, 5m or 1h (bare numbers are seconds), got {value:?}"))
        })
    }

    /// An AMQP heartbeat: whole seconds that fit the protocol's 16 bits; 0 turns it off.
    fn heartbeat(&self, key: &'static str, default: u16) -> Result<u16, ConfigError> {
        let value = self.duration(key, Duration::from_secs(default.into()))?;
        if value.subsec_nanos() != 0 || value.as_secs() > u64::from(u16::MAX) {
            return Err(self.error(
                key,
                format!("must be whole seconds from 0 (off) to {}", u16::MAX),
            ));
        }
        Ok(value.as_secs() as u16)
    }

    /// A duration that must not be zero: an interval or a timeout of nothing makes no sense.
    fn positive_duration(
        &self,
        key: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(key, default)?;
        if value.is_zero() {
            return Err(self.error(key, "must be more than zero".into()));
        }
        Ok(value)
    }

    fn ips(&self, key: &'static str) -> Result<Vec<IpAddr>, ConfigError> {
        let value = self.string(key, "")?;
        value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| self.error(key, format!("{s:?} is not an IP address")))
            })
            .collect()
    }
}

/// As MailerQ does: the console's address with this host's name when it listens on every
/// interface (`0.0.0.0:8485` → `http://<hostname>:8485/`); none without an address.
fn default_www_url(address: &str) -> Option<String> {
    let (host, port) = address.rsplit_once(':')?;
    let host = match host {
        "" | "0.0.0.0" | "[::]" | "*" => gethostname::gethostname().to_string_lossy().into_owned(),
        host => host.to_string(),
    };
    Some(format!("http://{host}:{port}/"))
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" | "seconds" => number,
        "ms" => number / 1000.0,
        "m" | "min" | "minutes" => number * 60.0,
        "h" | "hours" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && (0.0..1e9).contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

fn default_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Non-loopback addresses of this machine's interfaces.
pub fn detect_local_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|addrs| {
            addrs
                .into_iter()
                .filter(|a| !a.is_loopback())
                .map(|a| a.ip())
                .collect()
        })
        .unwrap_or_default()
}

/// A hash of the settings that must be equal on every instance of a cluster (MailerQ's docs
/// insist on the same cluster settings everywhere): the cluster broker (without credentials)
/// and exchange, `max-hops`, and whether messages are signed. Per-instance values (names,
/// queues, IPs) and secrets stay out, so equal hashes mean agreement and a hash leaks nothing.
pub fn cluster_hash(config: &Config) -> String {
    let broker = crate::amqp::address::parse_list(&config.cluster_address)
        .map(|nodes| crate::amqp::address::list_identity(&nodes))
        .unwrap_or_default();
    let mut digest = Sha256::new();
    let mut parts = vec![
        broker,
        config.cluster_exchange.clone(),
        config.max_hops.to_string(),
        config.cluster_secret.is_some().to_string(),
    ];
    // Only when not the default, so a mesh cluster's hash is what 0.1 announces: a rolling
    // upgrade warns of nothing. An instance in another mode than its peers is warned of.
    if config.protocol == ClusterProtocol::Digest {
        parts.push("digest".into());
    }
    for part in parts {
        digest.update(part.as_bytes());
        digest.update(b"\0");
    }
    digest
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let mut raw = parse_text(text, "test.conf")?;
        apply_env(&mut raw, Vec::new());
        Config::from_raw(raw)
    }

    #[test]
    fn defaults_and_values() {
        let c = load(
            "# a MailerQ-style file\nrabbitmq-address: amqp://u:p@broker:5673/vh\nrabbitmq-outbox: outbox-a\n\
             local-ips: 10.0.0.1, 2001:db8::1\nannounce-interval: 500ms\nunroutable: fail\nmax-hops: 3\n\
             license-key: xyz  # MailerQ's own key\n",
        )
        .unwrap();
        assert_eq!(c.rabbitmq_outbox, "outbox-a");
        assert_eq!(c.cluster_address, c.rabbitmq_address);
        assert_eq!(c.cluster_exchange, "cluster");
        assert_eq!(c.rabbitmq_qos, 1000);
        assert_eq!(c.local_ips.len(), 2);
        assert_eq!(c.peer_timeout, Duration::from_millis(1500));
        assert_eq!(c.unroutable, Unroutable::Fail);
        assert_eq!(c.max_hops, 3);
        assert_eq!(c.unknown_keys.len(), 1);
        assert_eq!(c.unknown_keys[0].0, "license-key");
        let s = c.settings();
        assert_eq!(s.outbox, "outbox-a");
        assert_eq!(s.policy.max_hops, 3);
    }

    #[test]
    fn env_overrides_the_file() {
        let mut raw = parse_text("rabbitmq-qos: 10\n", "f").unwrap();
        apply_env(
            &mut raw,
            vec![
                ("MAILROUTE_RABBITMQ_QOS".into(), "20".into()),
                ("OTHER".into(), "1".into()),
            ],
        );
        assert_eq!(Config::from_raw(raw).unwrap().rabbitmq_qos, 20);
    }

    fn error_of(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let cases = [
            (
                "x: 1\nrabbitmq-qos: lots\n",
                "test.conf line 2: invalid value for `rabbitmq-qos`",
            ),
            (
                "rabbitmq-qos: 0\n",
                "`rabbitmq-qos`: expected a whole number from 1 to 65535",
            ),
            (
                "unroutable: maybe\n",
                "`unroutable`: expected hold, fail or local",
            ),
            (
                "local-ips: 10.0.0.1, 10.0.0.300\n",
                "`local-ips`: \"10.0.0.300\" is not an IP address",
            ),
            (
                "announce-interval: soon\n",
                "`announce-interval`: expected a duration",
            ),
            (
                "announce-interval: 5\npeer-timeout: 5\n",
                "line 2: invalid value for `peer-timeout`",
            ),
            ("rabbitmq-address: http://x\n", "`rabbitmq-address`"),
            (
                "rabbitmq-deliver: outbox\n",
                "`rabbitmq-deliver`: must differ from rabbitmq-outbox",
            ),
            (
                "rabbitmq-outbox: two words\n",
                "`rabbitmq-outbox`: expected a non-empty name",
            ),
            ("\n\njust text\n", "test.conf line 3: expected `key: value`"),
            (
                "rabbitmq-verify: false\n",
                "`rabbitmq-verify`: turning certificate verification off is not supported",
            ),
            (
                "rabbitmq-ca: /nonexistent/ca.pem\n",
                "`rabbitmq-ca`: cannot read /nonexistent/ca.pem",
            ),
            (
                "rabbitmq-queue-type: mirrored\n",
                "`rabbitmq-queue-type`: expected classic or quorum",
            ),
            (
                "cluster-protocol: gossip\n",
                "`cluster-protocol`: expected mesh or digest",
            ),
            (
                "rabbitmq-address: amqp://u:secret@h1/, amqp://u:secret@h2:x/\n",
                "`rabbitmq-address`: amqp://u:***@h2:x/",
            ),
        ];
        for (text, want) in cases {
            let got = error_of(text);
            assert!(got.contains(want), "{text:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn env_errors_name_the_variable() {
        let mut raw = Raw::new();
        apply_env(&mut raw, vec![("MAILROUTE_MAX_HOPS".into(), "-1".into())]);
        let err = Config::from_raw(raw).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "environment variable MAILROUTE_MAX_HOPS: invalid value for `max-hops`"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_secret_signs_and_never_prints() {
        let c = load("cluster-secret: hunter2\nrabbitmq-address: amqp://u:pw@h/\n").unwrap();
        assert!(c.codec().is_signed());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!load("").unwrap().codec().is_signed());
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_never_prints() {
        let dir = std::env::temp_dir().join(format!("mailroute-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        let key = dir.join("c.key");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nsecretkeybytes\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let c = load(&format!("rabbitmq-cert: {cert}\nrabbitmq-key: {key}\n")).unwrap();
        let client = c.rabbitmq_client.clone().unwrap();
        assert!(client.key_pem().contains("secretkeybytes"));
        assert_eq!(
            c.cluster_client, c.rabbitmq_client,
            "the cluster broker is the same one"
        );
        assert!(!format!("{c:?}").contains("secretkeybytes"));
        let e = load(&format!("rabbitmq-cert: {cert}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rabbitmq-key"), "{e}");
        let e = load(&format!("cluster-key: {key}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster-cert"), "{e}");
        let e = load(&format!("rabbitmq-cert: {cert}\nrabbitmq-key: {cert}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rabbitmq-key") && e.contains("no PEM private key"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_console_token_must_be_long_and_never_prints() {
        let c = load("www-token: correct-horse-battery-staple\n").unwrap();
        assert_eq!(
            c.www_token.as_ref().map(Secret::expose),
            Some("correct-horse-battery-staple")
        );
        assert!(!format!("{c:?}").contains("correct-horse"));
        for bad in ["www-token: short-one\n", "www-token: sixteen chars here\n"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("www-token"), "{e}");
            assert!(!e.contains("short-one") && !e.contains("chars here"), "{e}");
        }
        assert_eq!(load("").unwrap().www_token, None);
        for bad in [
            "www-url: javascript:document.title='pwned'//\n",
            "www-url: /relative\n",
            "www-url: http://user:pw@host/\n",
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("www-url"), "{e}");
        }
        assert!(load("www-url: https://console.example.net/\n").is_ok());
        let c = load("www-read-token: read-only-token-0123456789\n").unwrap();
        assert_eq!(
            c.console_tokens().read.as_ref().map(Secret::expose),
            Some("read-only-token-0123456789")
        );
    }

    #[test]
    fn a_hash_starts_a_comment_only_after_whitespace() {
        let c =
            load("cluster-secret: ab#cd # the real comment\n#whole line\n  # indented\n").unwrap();
        assert_eq!(c.cluster_secret, Some(Secret("ab#cd".into())));
    }

    #[test]
    fn zero_durations_are_refused_naming_their_key() {
        for key in [
            "announce-interval",
            "peer-timeout",
            "cluster-timeout",
            "cluster-freshness",
            "hold-time",
            "max-hold",
        ] {
            let got = error_of(&format!("{key}: 0\n"));
            assert!(
                got.contains(&format!(
                    "line 1: invalid value for `{key}`: must be more than zero"
                )),
                "{key}: {got}"
            );
        }
        assert!(load("warmup: 0\n").is_ok(), "no warm-up is a choice");
    }

    #[test]
    fn heartbeats_default_to_ten_seconds_and_the_cluster_follows_the_local_one() {
        let c = load("").unwrap();
        assert_eq!((c.rabbitmq_heartbeat, c.cluster_heartbeat), (10, 10));
        let c = load("rabbitmq-heartbeat: 5s\n").unwrap();
        assert_eq!((c.rabbitmq_heartbeat, c.cluster_heartbeat), (5, 5));
        let c = load("rabbitmq-heartbeat: 0\ncluster-heartbeat: 20\n").unwrap();
        assert_eq!((c.rabbitmq_heartbeat, c.cluster_heartbeat), (0, 20));
        for bad in ["500ms", "70000", "soon"] {
            let got = error_of(&format!("cluster-heartbeat: {bad}\n"));
            assert!(got.contains("`cluster-heartbeat`"), "{bad}: {got}");
        }
    }

    #[test]
    fn a_key_given_twice_names_both_lines() {
        let got = error_of("rabbitmq-qos: 10\nmax-hops: 3\nrabbitmq-qos: 20\n");
        assert_eq!(
            got,
            "test.conf line 3: `rabbitmq-qos` is given twice (first at test.conf line 1); remove one"
        );
    }

    #[test]
    fn a_misspelt_key_gets_a_suggestion() {
        assert_eq!(did_you_mean("rabbitmq-qso"), Some("rabbitmq-qos"));
        assert_eq!(did_you_mean("peer-timout"), Some("peer-timeout"));
        assert_eq!(did_you_mean("license-key"), None);
    }

    #[test]
    fn debug_masks_every_password() {
        let c =
            load("rabbitmq-address: amqp://u:hunter2@h/\ncluster-address: amqp://c:swordfish@k/\n")
                .unwrap();
        let shown = format!("{c:?}");
        for secret in ["hunter2", "swordfish"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("amqp://u:***@h/"), "{shown}");
    }

    #[test]
    fn the_cluster_hash_covers_shared_settings_only() {
        let base = "cluster-address: amqp://x:pw@k/c\nmax-hops: 2\n";
        let a = load(&format!("{base}cluster-name: a\nrabbitmq-outbox: oa\nlocal-ips: 10.0.0.1\nrabbitmq-address: amqp://a:one@h/\n")).unwrap();
        let b = load(&format!("{base}cluster-name: b\nrabbitmq-outbox: ob\nlocal-ips: 10.0.0.2\nrabbitmq-address: amqp://b:two@h/\n")).unwrap();
        assert_eq!(
            a.hash, b.hash,
            "per-instance values and credentials do not count"
        );
        let hops = load(&format!("{base}max-hops: 3\n").replace("max-hops: 2\n", "")).unwrap();
        assert_ne!(a.hash, hops.hash);
        let signed = load(&format!("{base}cluster-secret: s\n")).unwrap();
        assert_ne!(a.hash, signed.hash);
        let other_broker = load("cluster-address: amqp://x:pw@k/other\nmax-hops: 2\n").unwrap();
        assert_ne!(a.hash, other_broker.hash);
        let mesh = load(&format!("{base}cluster-protocol: mesh\n")).unwrap();
        assert_eq!(a.hash, mesh.hash, "the default leaves 0.1's hash as it was");
        let digest = load(&format!("{base}cluster-protocol: digest\n")).unwrap();
        assert_ne!(a.hash, digest.hash);
    }

    #[test]
    fn the_example_config_has_every_key_and_loads() {
        let example = include_str!("../packaging/mailroute.conf.example");
        for key in KEYS {
            assert!(
                example.contains(&format!("\n#{key}:")),
                "{key} missing in packaging/mailroute.conf.example"
            );
        }
        // Commented out, it is a valid (empty) config.
        assert!(load(example).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("1 fortnight"), None);
    }
}
