//! `mailroute cluster list|reload`: talk to the cluster exchange without running an instance.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use mailroute_actors::broker::{BrokerError, QueueSpec, SharedBroker};
use mailroute_actors::cluster::cluster_frame;
use mailroute_actors::cluster::wire::{Announcement, ClusterMessage, Codec, now_ms};
use mailroute_actors::settings::ClusterProtocol;
use rand::Rng;

async fn publish(
    broker: &SharedBroker,
    exchange: &str,
    codec: &Codec,
    message: ClusterMessage,
) -> anyhow::Result<()> {
    cluster_frame::publish(broker.clone(), exchange.to_string(), codec.clone(), message)
        .await
        .context("cannot publish to the cluster exchange")
}

/// Says hello and gathers the announcements that answer within `wait`, newest per instance.
/// A `digest` cluster is asked instead: each instance answers into this command's queue
/// alone, not to every instance's.
pub async fn gather(
    broker: &SharedBroker,
    exchange: &str,
    codec: &Codec,
    wait: Duration,
    protocol: ClusterProtocol,
) -> anyhow::Result<Vec<Announcement>> {
    let queue = format!("mailroute.cli.{:08x}", rand::rng().random::<u32>());
    broker.declare_queue(&QueueSpec::private(&queue)).await?;
    // Binding is the check that the exchange exists: a command must not create the exchange
    // it was pointed at by a typo, and then report an empty cluster.
    broker
        .bind_queue(&queue, exchange, "announce.*")
        .await
        .map_err(|e| match e {
            BrokerError::ChannelClosed(text) if text.contains("NOT_FOUND") => anyhow::anyhow!(
                "there is no exchange {exchange} on this broker: is cluster-exchange right, and does any instance run?"
            ),
            other => other.into(),
        })?;
    let mut stream = broker.consume(&queue, 100).await?;
    let hello = match protocol {
        ClusterProtocol::Mesh => ClusterMessage::Hello { from: None },
        ClusterProtocol::Digest => ClusterMessage::Ask {
            from: queue.clone(),
            reply_to: queue.clone(),
            names: Vec::new(),
        },
    };
    publish(broker, exchange, codec, hello).await?;
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
    let asked = format!(
        "exchange {} on {}",
        config.cluster_exchange,
        mailroute::amqp::address::mask_password(&config.cluster_address)
    );
    let peers = gather(
        &cluster,
        &config.cluster_exchange,
        &config.codec(),
        config.cluster_timeout,
        config.protocol,
    )
    .await
    .with_context(|| format!("asking {asked}"))?;
    if peers.is_empty() {
        anyhow::bail!(
            "no instance answered within cluster-timeout ({:?}) on {asked}",
            config.cluster_timeout
        );
    }
    println!(
        "{} instance(s) answered on {asked} within {:?}\n",
        peers.len(),
        config.cluster_timeout
    );
    let rows: Vec<[String; 7]> = peers
        .iter()
        .map(|a| {
            let ips: Vec<String> = a.local_ips.iter().map(ToString::to_string).collect();
            [
                a.name.clone(),
                a.outbox.clone(),
                a.version.clone(),
                a.config_hash.clone(),
                a.broker.clone(),
                a.console_url.clone().unwrap_or_else(|| "-".into()),
                ips.join(","),
            ]
        })
        .collect();
    let header = [
        "NAME", "OUTBOX", "VERSION", "CONFIG", "BROKER", "CONSOLE", "IPS",
    ]
    .map(String::from);
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    let mut claims: BTreeMap<std::net::IpAddr, Vec<&str>> = BTreeMap::new();
    for a in &peers {
        for ip in &a.local_ips {
            claims.entry(*ip).or_default().push(&a.name);
        }
    }
    for (ip, names) in claims.iter().filter(|(_, names)| names.len() > 1) {
        println!(
            "CONFLICT {ip} is claimed by {}: the older claim holds at each instance",
            names.join(", ")
        );
    }
    Ok(())
}

/// Asks every instance (or only `only`) to re-read its own config file.
pub async fn reload(path: &Path, only: Option<String>) -> anyhow::Result<()> {
    let config = super::load_config(path)?;
    let (_, cluster) = super::connect(&config, None).await?;
    cluster
        .declare_topic_exchange(&config.cluster_exchange)
        .await?;
    publish(
        &cluster,
        &config.cluster_exchange,
        &config.codec(),
        match &only {
            None => ClusterMessage::Reload { from: None },
            Some(name) => ClusterMessage::ReloadOne {
                from: None,
                name: name.clone(),
            },
        },
    )
    .await?;
    match only {
        None => println!(
            "reload sent to every instance on exchange {}",
            config.cluster_exchange
        ),
        Some(name) => println!(
            "reload sent to {name} on exchange {}",
            config.cluster_exchange
        ),
    }
    Ok(())
}
