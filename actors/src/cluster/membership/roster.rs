//! Who is known: the live peers with what they announced and how each is reached, and the
//! ones that went lately (kept a while so a console can say what became of them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::wire::Announcement;
use crate::mail::routing::PeerRoute;
use crate::messages::{PeerInfo, PeerState};

pub(super) struct Peer {
    pub announcement: Announcement,
    pub route: Arc<PeerRoute>,
    pub last_seen: Instant,
    /// Its liveness has been confirmed the protocol's way (always, in a mesh; by a digest,
    /// in digest mode). Until then it has two peer-timeouts: a newcomer is heard of by its
    /// announcement before the leader has read its first heartbeat.
    pub vouched: bool,
}

struct Departed {
    announcement: Announcement,
    state: PeerState,
    at: Instant,
}

/// How long a departed peer stays listed, and how many at most: enough for an operator to
/// see what happened, bounded however many come and go.
const KEEP_GONE: Duration = Duration::from_secs(600);
const MAX_GONE: usize = 256;

#[derive(Default)]
pub(super) struct Roster {
    pub live: HashMap<String, Peer>,
    departed: HashMap<String, Departed>,
}

impl Roster {
    /// Removes a live peer, keeping it listed as `state` for a while.
    pub fn forget(&mut self, name: &str, state: PeerState, now: Instant) -> Option<Arc<PeerRoute>> {
        let peer = self.live.remove(name)?;
        self.departed
            .retain(|_, d| now.saturating_duration_since(d.at) < KEEP_GONE);
        if self.departed.len() >= MAX_GONE {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(_, d)| d.at)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.departed.remove(&oldest);
            }
        }
        self.departed.insert(
            name.to_owned(),
            Departed {
                announcement: peer.announcement,
                state,
                at: now,
            },
        );
        Some(peer.route)
    }

    /// A peer joined (again): no longer listed as gone.
    pub fn joined(&mut self, name: &str) {
        self.departed.remove(name);
    }

    /// It said `Leaving` in this run and went: a digest still listing it is not news.
    pub fn left(&self, name: &str, started_at: u64) -> bool {
        self.departed
            .get(name)
            .is_some_and(|d| d.state == PeerState::Left && d.announcement.started_at == started_at)
    }

    pub fn peers(&self, now: Instant) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .live
            .values()
            .map(|p| PeerInfo {
                announcement: p.announcement.clone(),
                last_seen: now.saturating_duration_since(p.last_seen),
                state: PeerState::of(&p.announcement),
            })
            .collect();
        peers.sort_by(|a, b| a.announcement.name.cmp(&b.announcement.name));
        peers
    }

    /// The live peers and the ones gone lately.
    pub fn members(&self, now: Instant) -> Vec<PeerInfo> {
        let mut members = self.peers(now);
        members.extend(
            self.departed
                .values()
                .filter(|d| now.saturating_duration_since(d.at) < KEEP_GONE)
                .map(|d| PeerInfo {
                    announcement: d.announcement.clone(),
                    last_seen: now.saturating_duration_since(d.at),
                    state: d.state,
                }),
        );
        members.sort_by(|a, b| a.announcement.name.cmp(&b.announcement.name));
        members
    }
}
