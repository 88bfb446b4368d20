//! `mailroute serve`: one instance until SIGINT/SIGTERM, then a graceful leave.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use mailroute_actors::Instance;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// How long a graceful stop waits for in-flight messages before leaving anyway.
const GRACE: Duration = Duration::from_secs(30);

pub async fn run(path: &Path) -> anyhow::Result<()> {
    let mut config = super::load_config(path)?;
    if std::env::var_os("RUST_LOG").is_none() {
        super::set_log_level(&config.log_level);
    }
    if config.cluster_secret.is_none() {
        warn!("cluster-secret is not set: any client of the cluster broker can claim IPs");
    }
    if config.local_ips.is_empty() {
        warn!("no local-ips: this instance sends nothing itself and hands everything over");
    }
    let (local, cluster) = super::connect(&config, Some(config.startup_timeout)).await?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    // SIGHUP re-reads the config (systemd's `ExecReload=kill -HUP $MAINPID`); listening also
    // replaces its default action, which would end the process without a word.
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut instance = Instance::start(config.settings(), local.clone(), cluster.clone())
        .await
        .context("cannot declare this instance's queues")?;
    let console = match &config.www_address {
        Some(address) => {
            let state = std::sync::Arc::new(mailroute::console::ConsoleState::of(
                &instance,
                local.clone(),
                config.console_tokens(),
            ));
            let handle = mailroute::console::start(address, state.clone())
                .with_context(|| format!("www-address: cannot listen on {address}"))?;
            info!(%address, url = config.www_url.as_deref().unwrap_or("-"), "console listening");
            Some((handle, state))
        }
        None => None,
    };
    info!(name = %config.cluster_name, outbox = %config.rabbitmq_outbox, "serving");
    let mut reloads = instance.reload_requests.clone();
    // The console's local reload; without a console, nobody notifies it.
    let console_reload = console
        .as_ref()
        .map_or_else(Default::default, |(_, state)| state.reload.clone());
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                info!("SIGTERM: shutting down");
                break;
            }
            _ = interrupt.recv() => {
                info!("SIGINT: shutting down");
                break;
            }
            _ = hangup.recv() => {
                info!(path = %path.display(), "SIGHUP: re-reading the config");
                super::reload::run(path, &mut config, &mut instance);
            }
            Ok(()) = reloads.changed() => {
                info!(path = %path.display(), "cluster reload: re-reading the config");
                super::reload::run(path, &mut config, &mut instance);
            }
            () = console_reload.notified() => {
                info!(path = %path.display(), "console reload: re-reading the config");
                super::reload::run(path, &mut config, &mut instance);
            }
        }
        if let Some((_, state)) = &console {
            state.update(&instance.settings, config.console_tokens());
        }
    }
    instance.shutdown(GRACE).await;
    if let Some((handle, _)) = console {
        handle.stop(true).await;
    }
    // Before the process ends: see `Broker::close`. One broker for both is closed once.
    local.close().await;
    cluster.close().await;
    let s = instance.stats.snapshot();
    info!(
        consumed = s.consumed,
        delivered = s.delivered,
        handed_over = s.handed_over,
        relayed = s.relayed,
        duplicates_dropped = s.duplicates_dropped,
        held = s.held,
        failed = s.failed,
        "stopped"
    );
    Ok(())
}
