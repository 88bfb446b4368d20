//! The settings hash every instance of a cluster announces.

use mailroute_actors::settings::ClusterProtocol;
use sha2::{Digest, Sha256};

use super::Config;

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
