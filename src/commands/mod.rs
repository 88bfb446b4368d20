//! The subcommands; each returns `anyhow::Result`, printed once by `main`.

pub mod cluster;
pub mod demo;
pub mod inject;
pub mod serve;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use mailroute::amqp::AmqpBroker;
use mailroute::config::Config;
use mailroute_actors::SharedBroker;

pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Plain text when logging to a file, so logs stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
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
pub async fn connect(config: &Config) -> anyhow::Result<(SharedBroker, SharedBroker)> {
    let local: SharedBroker = Arc::new(
        AmqpBroker::connect(&config.rabbitmq_address)
            .await
            .context("rabbitmq-address: cannot connect")?,
    );
    if config.cluster_address == config.rabbitmq_address {
        return Ok((local.clone(), local));
    }
    let cluster: SharedBroker = Arc::new(
        AmqpBroker::connect(&config.cluster_address)
            .await
            .context("cluster-address: cannot connect")?,
    );
    Ok((local, cluster))
}
