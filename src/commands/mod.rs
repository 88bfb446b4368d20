//! The subcommands; each returns `anyhow::Result`, printed once by `main`.

pub mod cluster;
pub mod demo;
pub mod inject;
pub mod reload;
pub mod serve;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mailroute::amqp::AmqpBroker;
use mailroute::config::Config;
use mailroute_actors::{BrokerError, SharedBroker};

/// How log lines are written: text for people, JSON (one object a line) for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The live log filter, for `log-level` on a reload.
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// `directives` in `RUST_LOG` syntax, with lapin's returned-message logging kept quiet: lapin
/// logs every returned message whole, body included, and mail bodies have no place in logs.
fn filter(directives: &str) -> tracing_subscriber::EnvFilter {
    let mut filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !directives.contains("lapin") {
        if let Ok(quiet) = "lapin::returned_messages=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    filter
}

pub fn init_tracing(default_level: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.to_string());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter(&directives));
    let _ = LOG_FILTER.set(handle);
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Spans (message id, peer) as fields of each line, so a shipper can index them.
        LogFormat::Json => registry.with(layer.json().with_current_span(true)).init(),
        // Plain text when logging to a file, so logs stay greppable.
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init(),
    }
}

/// Replaces the log filter (`log-level`); the key was validated when the config was read.
pub fn set_log_level(directives: &str) {
    if let Some(handle) = LOG_FILTER.get() {
        if let Err(error) = handle.reload(filter(directives)) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path).context("configuration rejected")?;
    for (key, origin) in &config.unknown_keys {
        match mailroute::config::did_you_mean(key) {
            Some(known) => {
                tracing::warn!(%key, %origin, "config key not used by mailroute; did you mean {known}?")
            }
            None => tracing::warn!(%key, %origin, "config key not used by mailroute"),
        }
    }
    Ok(config)
}

/// The local broker and the cluster broker (the same connection when the addresses match).
/// `wait`: how long to keep trying a broker that does not answer yet (`None`: one try).
pub async fn connect(
    config: &Config,
    wait: Option<Duration>,
) -> anyhow::Result<(SharedBroker, SharedBroker)> {
    // One run of this process: every connection it opens carries it in its name.
    let run = mailroute_actors::cluster::wire::now_ms();
    let link = |broker: &str, heartbeat: u16| mailroute::amqp::Link {
        heartbeat,
        name: format!("mailroute {} {broker} run {run}", config.cluster_name),
    };
    let local: SharedBroker = Arc::new(
        connect_one(
            &config.rabbitmq_address,
            tls(config.rabbitmq_ca.as_ref(), config.rabbitmq_client.as_ref()),
            link("local", config.rabbitmq_heartbeat),
            wait,
        )
        .await
        .context("rabbitmq-address: cannot connect")?,
    );
    if config.cluster_address == config.rabbitmq_address {
        return Ok((local.clone(), local));
    }
    let cluster: SharedBroker = Arc::new(
        connect_one(
            &config.cluster_address,
            tls(config.cluster_ca.as_ref(), config.cluster_client.as_ref()),
            link("cluster", config.cluster_heartbeat),
            wait,
        )
        .await
        .context("cluster-address: cannot connect")?,
    );
    Ok((local, cluster))
}

/// Connects, retrying with the usual backoff while the broker does not answer (a service
/// started next to RabbitMQ must not give up before it is up). `Some(ZERO)`: for ever.
fn tls(
    ca: Option<&mailroute::config::CaFile>,
    client: Option<&mailroute::config::ClientCert>,
) -> mailroute::amqp::Tls {
    mailroute::amqp::Tls {
        ca: ca.map(|c| c.pem.clone()),
        client: client.map(|c| mailroute::amqp::ClientIdentity {
            cert_pem: c.cert.pem.clone(),
            key_pem: c.key_pem().to_string(),
        }),
    }
}

async fn connect_one(
    address: &str,
    tls: mailroute::amqp::Tls,
    link: mailroute::amqp::Link,
    wait: Option<Duration>,
) -> Result<AmqpBroker, BrokerError> {
    let started = tokio::time::Instant::now();
    // A wrong address fails at once: waiting cannot fix it.
    let wait = wait.filter(|_| mailroute::amqp::address::parse_list(address).is_ok());
    let mut attempt = 0;
    loop {
        let error = match AmqpBroker::connect_with_link(address, tls.clone(), link.clone()).await {
            Ok(broker) => return Ok(broker),
            Err(error) => error,
        };
        // A certificate the broker's does not verify against will not change by waiting.
        if error
            .to_string()
            .to_ascii_lowercase()
            .contains("certificate")
        {
            return Err(error);
        }
        let Some(wait) = wait else {
            return Err(error);
        };
        if !wait.is_zero() && started.elapsed() >= wait {
            return Err(error);
        }
        attempt += 1;
        let delay = mailroute_actors::backoff::delay(attempt);
        tracing::warn!(%error, attempt, retry_in = ?delay, "broker not reachable yet; retrying (startup-timeout)");
        tokio::time::sleep(delay).await;
    }
}
