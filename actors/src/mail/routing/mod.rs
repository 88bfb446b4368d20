//! The route decision for one outbox message, as plain functions over plain data, and the
//! IP → owner table the router reads on every message. The body is read only as far as its
//! `ips` field (`ips.rs`).

mod ips;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

pub use ips::{Malformed, extract_ips};

pub const HOPS_HEADER: &str = "x-mailroute-hops";
pub const FROM_HEADER: &str = "x-mailroute-from";
pub const ID_HEADER: &str = "x-mailroute-id";
pub const REASON_HEADER: &str = "x-mailroute-reason";
pub const HELD_SINCE_HEADER: &str = "x-mailroute-held-since";

/// What to do with a message whose listed IPs nobody in the cluster owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// Park it in the retry queue for `hold-time`, then try again; fail after `max-hold`.
    Hold,
    Fail,
    /// Send it from this instance anyway.
    Local,
    /// Not a setting: what the router uses while the cluster has not been heard (after a
    /// reconnect or a reload), so that mail no known peer owns waits instead.
    Defer,
}

/// A live peer as far as routing is concerned: where its mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub name: String,
    pub outbox: String,
    /// The broker holding `outbox` as the peer announced it (host:port/vhost): shown to
    /// operators, never compared to decide a path (two private brokers may both be
    /// `localhost:5672//`).
    pub broker: String,
    /// How this instance reaches `outbox`: proven by the peer's answer to a challenge, else
    /// through the peer's handover queue.
    pub via: Via,
}

/// The path of a handover, from what the peer proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// Not proven to share a broker with this instance: the peer's handover queue on the
    /// cluster broker, which its relay moves into its outbox. Always correct, one hop longer.
    #[default]
    HandoverQueue,
    /// The peer answered a challenge read from its presence queue on this instance's own
    /// broker: its outbox is there.
    LocalBroker,
    /// The same, on the cluster broker.
    ClusterBroker,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::HandoverQueue => "handover queue",
            Via::LocalBroker => "own broker",
            Via::ClusterBroker => "cluster broker",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Local,
    Peer(Arc<PeerRoute>),
}

/// IP → owner. Reads are lock-free per shard, so the router never waits on the registry.
#[derive(Debug, Default)]
pub struct OwnershipTable {
    owners: DashMap<IpAddr, Owner>,
}

impl OwnershipTable {
    pub fn new(local_ips: &[IpAddr]) -> Self {
        let table = OwnershipTable::default();
        table.replace_peers(local_ips, std::iter::empty());
        table
    }

    pub fn owner(&self, ip: &IpAddr) -> Option<Owner> {
        self.owners.get(ip).map(|o| o.value().clone())
    }

    /// Swaps in a complete, conflict-free claim list. Local IPs always stay local: a peer can
    /// never take mail for an IP this instance sends from.
    pub fn replace_peers(
        &self,
        local_ips: &[IpAddr],
        claims: impl IntoIterator<Item = (IpAddr, Arc<PeerRoute>)>,
    ) {
        let mut wanted: std::collections::HashMap<IpAddr, Owner> = claims
            .into_iter()
            .map(|(ip, peer)| (ip, Owner::Peer(peer)))
            .collect();
        for ip in local_ips {
            wanted.insert(*ip, Owner::Local);
        }
        self.owners.retain(|ip, _| wanted.contains_key(ip));
        for (ip, owner) in wanted {
            let unchanged = self.owners.get(&ip).is_some_and(|o| *o == owner);
            if !unchanged {
                self.owners.insert(ip, owner);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// Everything the decision needs besides the message; built once per config.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub default_ips: Vec<IpAddr>,
    pub max_hops: u32,
    pub unroutable: Unroutable,
    pub max_hold: Duration,
}

/// What the router does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deliver,
    Handover(Arc<PeerRoute>),
    Hold {
        reason: String,
    },
    Fail {
        reason: String,
    },
    /// Nobody known owns its IPs, and the cluster has not been heard since this instance
    /// (re)connected or reloaded: the router keeps it until it has.
    Defer,
}

/// The facts of one message that the decision reads.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub ips: Option<Vec<IpAddr>>,
    /// `x-mailroute-hops`: how often it was handed over already.
    pub hops: u32,
    /// Since the first hold, if it was held before.
    pub held_for: Option<Duration>,
}

/// The route decision of DESIGN.md. Order matters: local wins over everything (a message that
/// may be sent here is never bounced), the hop limit is checked only before a handover, and the
/// unroutable policy applies when nobody owns any listed IP.
pub fn decide(facts: &MessageFacts, policy: &RoutePolicy, table: &OwnershipTable) -> Decision {
    let ips = match &facts.ips {
        Some(ips) if !ips.is_empty() => ips.as_slice(),
        _ => policy.default_ips.as_slice(),
    };
    let mut first_peer = None;
    for ip in ips {
        match table.owner(ip) {
            Some(Owner::Local) => return Decision::Deliver,
            Some(Owner::Peer(peer)) if first_peer.is_none() => first_peer = Some(peer),
            _ => {}
        }
    }
    if let Some(peer) = first_peer {
        if facts.hops >= policy.max_hops {
            return Decision::Fail {
                reason: format!(
                    "handover loop: {} hops reached max-hops {}",
                    facts.hops, policy.max_hops
                ),
            };
        }
        return Decision::Handover(peer);
    }
    let listed = if ips.is_empty() {
        "the message lists no IPs and default-ips is empty".to_string()
    } else {
        format!("no instance owns {}", join_ips(ips))
    };
    match policy.unroutable {
        Unroutable::Defer => Decision::Defer,
        Unroutable::Local => Decision::Deliver,
        Unroutable::Fail => Decision::Fail {
            reason: format!("unroutable: {listed}"),
        },
        Unroutable::Hold => match facts.held_for {
            Some(held) if held >= policy.max_hold => Decision::Fail {
                reason: format!(
                    "unroutable: {listed}; held {}s, max-hold reached",
                    held.as_secs()
                ),
            },
            _ => Decision::Hold {
                reason: format!("unroutable: {listed}"),
            },
        },
    }
}

/// Reads the facts from an outbox message and decides. `now_ms`: Unix milliseconds.
pub fn route_message(
    message: &crate::broker::Message,
    policy: &RoutePolicy,
    table: &OwnershipTable,
    now_ms: u64,
) -> Decision {
    let ips = match extract_ips(&message.body) {
        Ok(ips) => ips,
        Err(malformed) => {
            return Decision::Fail {
                reason: format!("malformed message: {malformed}"),
            };
        }
    };
    let header_u64 = |name| {
        message
            .header(name)
            .and_then(crate::broker::HeaderValue::as_i64)
            .and_then(|v| u64::try_from(v).ok())
    };
    let facts = MessageFacts {
        ips,
        hops: header_u64(HOPS_HEADER).map_or(0, |h| u32::try_from(h).unwrap_or(u32::MAX)),
        held_for: header_u64(HELD_SINCE_HEADER)
            .map(|since| Duration::from_millis(now_ms.saturating_sub(held_since_ms(since)))),
    };
    decide(&facts, policy, table)
}

/// `x-mailroute-held-since` is an AMQP timestamp, seconds; versions before 0.2 wrote
/// milliseconds, which no plausible date in seconds reaches (10^11 s is the year 5138).
fn held_since_ms(value: u64) -> u64 {
    if value >= 100_000_000_000 {
        value
    } else {
        value.saturating_mul(1000)
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    let shown: Vec<String> = ips.iter().take(8).map(ToString::to_string).collect();
    let more = ips.len().saturating_sub(8);
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
