//! `mailroute inject`: test traffic in MailerQ JSON into an outbox, with publisher confirms.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use mailroute_actors::broker::Destination;
use mailroute_actors::traffic::{mailerq_json, test_message};
use rand::seq::IndexedRandom;

#[derive(Args)]
pub struct InjectArgs {
    /// A config file naming the broker and outbox (an instance's).
    #[arg(long, short)]
    config: PathBuf,
    /// How many messages.
    #[arg(long, short = 'n', default_value_t = 100)]
    count: usize,
    /// IPs to list in each message (comma separated). Without it: one random IP announced by
    /// the cluster per message.
    #[arg(long, value_delimiter = ',')]
    ips: Vec<IpAddr>,
    /// With --ips: list one of them, chosen at random, instead of all.
    #[arg(long)]
    random: bool,
    /// Approximate body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Queue to publish into (default: the config's rabbitmq-outbox).
    #[arg(long)]
    queue: Option<String>,
    /// Prefix of the test ids (x-test-id header and message id).
    #[arg(long, default_value = "inject")]
    prefix: String,
}

pub async fn run(args: InjectArgs) -> anyhow::Result<()> {
    let config = super::load_config(&args.config)?;
    let (local, cluster) = super::connect(&config, None).await?;
    let (pool, pick_one) = if args.ips.is_empty() {
        let peers = super::cluster::gather(
            &cluster,
            &config.cluster_exchange,
            &config.codec(),
            config.cluster_timeout,
            config.protocol,
        )
        .await?;
        let ips: Vec<IpAddr> = peers
            .iter()
            .flat_map(|a| a.local_ips.iter().copied())
            .collect();
        if ips.is_empty() {
            bail!("--ips not given and no instance announced any IP within cluster-timeout");
        }
        (ips, true)
    } else {
        (args.ips.clone(), args.random)
    };
    let queue = args.queue.unwrap_or(config.rabbitmq_outbox);
    let to = Destination::queue(&queue);
    let mut rng = rand::rng();
    let messages: Vec<_> = (0..args.count)
        .map(|i| {
            let id = format!("{}-{i}", args.prefix);
            let ips: Vec<IpAddr> = if pick_one {
                pool.choose(&mut rng).copied().into_iter().collect()
            } else {
                pool.clone()
            };
            test_message(&id, mailerq_json(&id, Some(&ips), args.size))
        })
        .collect();
    // Confirms are pipelined: waiting for each before the next would cap this at one
    // message per round trip.
    let mut confirms = futures::stream::iter(messages.iter().map(|m| local.publish(&to, m, true)))
        .buffer_unordered(256);
    while let Some(result) = confirms.next().await {
        result.with_context(|| format!("publishing to queue {queue}"))?;
    }
    println!("published {} messages into {queue}", args.count);
    Ok(())
}
