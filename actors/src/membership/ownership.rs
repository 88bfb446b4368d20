//! Who owns which IP, from the live peers' claims: the same answer on every instance that
//! knows the same peers, whatever order it heard them in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::roster::Peer;
use crate::routing::PeerRoute;

pub(super) struct Claims {
    pub claims: Vec<(IpAddr, Arc<PeerRoute>)>,
    /// Every IP claimed twice, or claimed from this instance, said as a sentence.
    pub conflicts: BTreeSet<String>,
}

/// The earliest started claimant of an IP holds it, by what every instance sees alike (its
/// announced start, then its name), not by when this registry happened to hear it: two
/// registries that heard two claimants in opposite orders still route the IP to the same one.
/// An IP of this instance is never a peer's.
pub(super) fn claims<'a>(peers: impl Iterator<Item = &'a Peer>, local_ips: &[IpAddr]) -> Claims {
    let mut peers: Vec<&Peer> = peers.collect();
    peers.sort_by(|a, b| {
        (a.announcement.started_at, &a.announcement.name)
            .cmp(&(b.announcement.started_at, &b.announcement.name))
    });
    let local: HashSet<IpAddr> = local_ips.iter().copied().collect();
    let mut owner_of: HashMap<IpAddr, &str> = HashMap::new();
    let mut claims = Vec::new();
    let mut conflicts = BTreeSet::new();
    for peer in peers {
        for ip in &peer.announcement.local_ips {
            if local.contains(ip) {
                conflicts.insert(format!(
                    "{ip}: {} claims an IP of this instance (ignored)",
                    peer.announcement.name
                ));
            } else if let Some(holder) = owner_of.get(ip) {
                conflicts.insert(format!(
                    "{ip}: claimed by {holder} and {} (the older claim, {holder}, holds)",
                    peer.announcement.name
                ));
            } else {
                owner_of.insert(*ip, &peer.announcement.name);
                claims.push((*ip, peer.route.clone()));
            }
        }
    }
    Claims { claims, conflicts }
}
