//! From raw values to a checked [`Config`]: every key read, validated and defaulted, and the
//! settings the engine takes from it.

use std::path::Path;
use std::time::Duration;

use mailroute_actors::InstanceSettings;
use mailroute_actors::mail::routing::{RoutePolicy, Unroutable};
use mailroute_actors::settings::ClusterProtocol;

use super::defaults::{default_name, default_www_url, detect_local_ips};
use super::file::{Raw, apply_env, parse_text};
use super::keys::{DEFAULT_HEARTBEAT, KEYS};
use super::values::Values;
use super::{Config, ConfigError, Secret, cluster_hash};

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

    pub fn codec(&self) -> mailroute_actors::cluster::wire::Codec {
        mailroute_actors::cluster::wire::Codec::new(
            self.cluster_secret.as_ref().map(|s| s.0.as_str()),
            self.cluster_freshness,
        )
    }
}
