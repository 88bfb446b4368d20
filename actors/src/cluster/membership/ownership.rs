//! Who owns which IP, from the live peers' claims: the same answer on every instance that
//! knows the same peers, whatever order it heard them in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use std::time::{Duration, Instant};

use tracing::warn;

use super::roster::Peer;
use super::{Effect, Membership};
use crate::mail::routing::PeerRoute;
use crate::stats::bump;

/// At most one ownership telling per this, so a burst of announcements costs one.
const OWNERSHIP_GAP: Duration = Duration::from_millis(20);

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

impl Membership {
    /// Ownership changed: told at once, unless it was told within [`OWNERSHIP_GAP`]; then
    /// once at the end of it, for all the changes together. Each telling goes over every
    /// peer and makes the router rebuild its table: when N peers announce at once (a cluster
    /// start) that was N² work for every instance.
    pub(super) fn ownership_changed(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        self.ownership_dirty = true;
        if self.ownership_due.is_some() {
            return;
        }
        let wait = self.ownership_published.map_or(Duration::ZERO, |at| {
            OWNERSHIP_GAP.saturating_sub(now.saturating_duration_since(at))
        });
        if wait.is_zero() {
            self.flush_ownership(now, effects);
        } else {
            self.ownership_due = Some(now + wait);
            effects.push(Effect::Wake(wait));
        }
    }

    /// A peer is gone: the router stops handing it mail now, not at the end of a gap (mail
    /// handed to a peer that left waits in its outbox until it is back).
    pub(super) fn remove_from_ownership(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        self.ownership_dirty = true;
        self.flush_ownership(now, effects);
    }

    pub(super) fn flush_ownership(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if !self.ownership_dirty {
            return;
        }
        self.ownership_dirty = false;
        self.ownership_published = Some(now);
        let found = claims(self.roster.live.values(), &self.local_ips);
        self.stats.ip_conflicts.store(
            found.conflicts.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if found.conflicts != self.conflicts {
            for conflict in found.conflicts.difference(&self.conflicts) {
                bump(&self.stats.ownership_conflicts);
                warn!(%conflict, "IP conflict: two instances send from one IP");
            }
            self.conflicts = found.conflicts;
            self.conflicts_told = now;
        }
        if self.last_claims.as_ref() != Some(&found.claims) {
            self.last_claims = Some(found.claims.clone());
            effects.push(Effect::Ownership(found.claims));
        }
    }

    /// While a conflict lasts it is said again now and then (not on every announcement): mail
    /// for that IP goes out from whichever instance has it.
    pub(super) fn remind_conflicts(&mut self, now: Instant) {
        if !self.conflicts.is_empty()
            && now.saturating_duration_since(self.conflicts_told) >= self.remind_every
        {
            self.conflicts_told = now;
            bump(&self.stats.conflict_reminders);
            for conflict in &self.conflicts {
                warn!(%conflict, "IP conflict still there: two instances send from one IP");
            }
        }
    }
}
