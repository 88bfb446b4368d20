//! `mailroute cluster list|reload`: talk to the cluster exchange without running an instance.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use mailroute_actors::announcer;
use mailroute_actors::broker::{QueueSpec, SharedBroker};
use mailroute_actors::wire::{Announcement, ClusterMessage, Codec, now_ms};
use rand::Rng;

async fn publish(
    broker: &SharedBroker,
    exchange: &str,
    codec: &Codec,
    message: ClusterMessage,
) -> anyhow::Result<()> {
    announcer::publish(broker.clone(), exchange.to_string(), codec.clone(), message)
        .await
        .context("cannot publish to the cluster exchange")
}

/// Says hello and gathers the announcements that answer within `wait`, newest per instance.
pub async fn gather(
    broker: &SharedBroker,
    exchange: &str,
    codec: &Codec,
    wait: Duration,
) -> anyhow::Result<Vec<Announcement>> {
    let queue = format!("mailroute.cli.{:08x}", rand::rng().random::<u32>());
    broker.declare_topic_exchange(exchange).await?;
    broker.declare_queue(&QueueSpec::private(&queue)).await?;
    broker.bind_queue(&queue, exchange, "announce.*").await?;
    let mut stream = broker.consume(&queue, 100).await?;
    publish(
        broker,
        exchange,
        codec,
        ClusterMessage::Hello { from: None },
    )
    .await?;
    let mut seen: BTreeMap<String, Announcement> = BTreeMap::new();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            item = stream.next() => match item {
                Some(Ok(delivery)) => {
                    let _ = delivery.acker.ack().await;
                    if let Ok(ClusterMessage::Announcement(a)) = codec.decode(&delivery.message.body, now_ms()) {
                        seen.insert(a.name.clone(), a);
                    }
                }
                Some(Err(e)) => return Err(e).context("cluster listener failed"),
                None => break,
            },
        }
    }
    drop(stream);
    let _ = broker.delete_queue(&queue).await;
    Ok(seen.into_values().collect())
}

pub async fn list(path: &Path) -> anyhow::Result<()> {
    let config = super::load_config(path)?;
    let (_, cluster) = super::connect(&config, None).await?;
    let peers = gather(
        &cluster,
        &config.cluster_exchange,
        &config.codec(),
        config.cluster_timeout,
    )
    .await?;
    if peers.is_empty() {
        println!(
            "no instance answered within {:?} on exchange {}",
            config.cluster_timeout, config.cluster_exchange
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<8} {:<10} {:<24} {:<18} IPS",
        "NAME", "OUTBOX", "VERSION", "CONFIG", "BROKER", "CONSOLE"
    );
    for a in peers {
        let ips: Vec<String> = a.local_ips.iter().map(ToString::to_string).collect();
        println!(
            "{:<20} {:<24} {:<8} {:<10} {:<24} {:<18} {}",
            a.name,
            a.outbox,
            a.version,
            a.config_hash,
            a.broker,
            a.console_url.as_deref().unwrap_or("-"),
            ips.join(",")
        );
    }
    Ok(())
}

pub async fn reload(path: &Path) -> anyhow::Result<()> {
    let config = super::load_config(path)?;
    let (_, cluster) = super::connect(&config, None).await?;
    cluster
        .declare_topic_exchange(&config.cluster_exchange)
        .await?;
    publish(
        &cluster,
        &config.cluster_exchange,
        &config.codec(),
        ClusterMessage::Reload { from: None },
    )
    .await?;
    println!("reload sent to exchange {}", config.cluster_exchange);
    Ok(())
}
