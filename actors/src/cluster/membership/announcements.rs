//! What an announcement changes: a peer joins, restarts, moves or claims other IPs, or is
//! only heard again.

use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use super::roster::Peer;
use super::{Effect, Membership, released};
use crate::cluster::wire::Announcement;
use crate::mail::routing::{PeerRoute, Via};
use crate::stats::{Stats, bump};

impl Membership {
    pub(super) fn on_announcement(
        &mut self,
        a: Announcement,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        bump(&self.stats.announcements_received);
        if a.name == self.me {
            if a.started_at != self.my_started_at {
                bump(&self.stats.ownership_conflicts);
                error!(name = %a.name, "another instance announces with this instance's name; ignored");
            }
            return;
        }
        // The same run at the same announced broker and outbox: what it proved still holds.
        // Anything else (new, restarted, moved) is challenged again, and meanwhile reached
        // through its handover queue.
        let same_run = self.roster.live.get(&a.name).filter(|p| {
            p.announcement.started_at == a.started_at
                && p.announcement.broker == a.broker
                && p.announcement.outbox == a.outbox
        });
        let via = same_run.map_or(Via::HandoverQueue, |p| p.route.via);
        if same_run.is_none() {
            self.challenge(&a.name, a.started_at, 0, now, effects);
        }
        let route = Arc::new(PeerRoute {
            name: a.name.clone(),
            outbox: a.outbox.clone(),
            broker: a.broker.clone(),
            via,
        });
        match self.roster.live.get_mut(&a.name) {
            Some(peer)
                if peer.announcement.started_at == a.started_at
                    && a.sequence < peer.announcement.sequence =>
            {
                // Reordered or replayed: older news than what we hold.
            }
            Some(peer)
                if peer.announcement.started_at == a.started_at
                    && a.sequence == peer.announcement.sequence =>
            {
                // The same news again: an answer to an `Ask`, or a duplicate. It is alive.
                peer.last_seen = now;
                self.heard_from(&a.name, now, effects);
            }
            Some(peer) => {
                let changed = peer.announcement.local_ips != a.local_ips || *peer.route != *route;
                if peer.announcement.config_hash != a.config_hash {
                    check_drift(&self.stats, &self.config_hash, &a);
                }
                if peer.announcement.started_at != a.started_at {
                    info!(peer = %a.name, "peer restarted");
                    peer.vouched = self.liveness.announcement_vouches();
                    self.next_expiry = None;
                }
                peer.last_seen = now;
                let mut moved = None;
                if changed {
                    let old = std::mem::replace(&mut peer.route, route);
                    if old.outbox != peer.route.outbox || old.via != peer.route.via {
                        moved = Some(old);
                    }
                }
                let name = a.name.clone();
                peer.announcement = a;
                if changed {
                    self.ownership_changed(now, effects);
                }
                released(moved.into_iter().collect(), effects);
                self.heard_from(&name, now, effects);
            }
            None => {
                info!(peer = %a.name, ips = a.local_ips.len(), outbox = %a.outbox, broker = %a.broker, "peer joined");
                self.roster.joined(&a.name);
                self.next_expiry = None;
                check_drift(&self.stats, &self.config_hash, &a);
                self.roster.live.insert(
                    a.name.clone(),
                    Peer {
                        announcement: a,
                        route,
                        last_seen: now,
                        vouched: self.liveness.announcement_vouches(),
                    },
                );
                self.ownership_changed(now, effects);
                self.liveness.on_join(effects);
            }
        }
    }
}

/// Every instance must share the cluster settings (broker, exchange, max-hops, signing):
/// said once when a peer joins or its settings change, not on every announcement.
fn check_drift(stats: &Stats, ours: &str, a: &Announcement) {
    if !a.config_hash.is_empty() && !ours.is_empty() && a.config_hash != ours {
        bump(&stats.config_drift);
        warn!(peer = %a.name, theirs = %a.config_hash, %ours,
            "peer's cluster settings differ from this instance's (cluster broker, exchange, max-hops, cluster-secret set): make them equal");
    }
}
