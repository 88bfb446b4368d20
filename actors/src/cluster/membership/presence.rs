//! Proof of where a peer's outbox is: a challenge put into the peer's presence queue on each
//! broker this instance uses, answered `Present` into this instance's listener queue. Then,
//! and only then, its outbox is known to be on that broker. Until then, and for good when the
//! broker returns the challenge (no such presence queue there), mail for it goes through its
//! handover queue, which is correct anyway, only one hop longer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Effect, Membership, released};
use crate::mail::routing::{PeerRoute, Via};
use crate::stats::bump;

/// How long an answer to a challenge may take before it is sent again, and how often: a
/// challenge the broker routed reached an instance's presence queue, so the answer is only
/// late or lost. One the broker returned is not retried: nobody of that name is there.
pub const ANSWER_WAIT: Duration = Duration::from_secs(3);
const CHALLENGE_ATTEMPTS: u32 = 3;

/// A challenge on its way: which peer (and run) it tests for which path.
struct Challenge {
    peer: String,
    started_at: u64,
    via: Via,
    sent: Instant,
    attempts: u32,
}

pub(super) struct Challenges {
    open: HashMap<u64, Challenge>,
    nonces: Box<dyn FnMut() -> u64 + Send>,
}

impl Challenges {
    pub fn new(nonces: Box<dyn FnMut() -> u64 + Send>) -> Self {
        Challenges {
            open: HashMap::new(),
            nonces,
        }
    }
}

impl Membership {
    pub(super) fn challenge(
        &mut self,
        peer: &str,
        started_at: u64,
        attempts: u32,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        // Without a listener there is nowhere to answer: every unproven peer is challenged
        // when it listens (see `listening`).
        let Some(reply_to) = self.queue.clone() else {
            return;
        };
        let mut ways = vec![Via::LocalBroker];
        if self.two_brokers {
            ways.push(Via::ClusterBroker);
        }
        for via in ways {
            let nonce = (self.presence.nonces)();
            self.presence.open.insert(
                nonce,
                Challenge {
                    peer: peer.to_owned(),
                    started_at,
                    via,
                    sent: now,
                    attempts: attempts + 1,
                },
            );
            bump(&self.stats.challenges_sent);
            effects.push(Effect::Challenge {
                peer: peer.to_owned(),
                via,
                nonce,
                reply_to: reply_to.clone(),
            });
        }
    }

    /// The broker returned the challenge: the peer's presence queue is not on that broker.
    pub fn challenge_failed(&mut self, nonce: u64) {
        if let Some(c) = self.presence.open.remove(&nonce) {
            debug!(peer = %c.peer, via = %c.via, "challenge not routed: not reached that way");
        }
    }

    /// A peer answered a challenge: its outbox is on the broker the challenge went to.
    pub(super) fn on_present(
        &mut self,
        name: &str,
        started_at: u64,
        nonce: u64,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let Some(challenge) = self
            .presence
            .open
            .remove(&nonce)
            .filter(|c| c.peer == name && c.started_at == started_at)
        else {
            // An answer to no challenge of ours: late, replayed, or forged.
            self.stats.dropped("refused");
            return;
        };
        let Some(peer) = self
            .roster
            .live
            .get_mut(name)
            .filter(|p| p.announcement.started_at == started_at)
        else {
            return;
        };
        bump(&self.stats.presences_proven);
        // The own broker beats the cluster broker when both are one (either path works).
        let better = matches!(
            (peer.route.via, challenge.via),
            (Via::HandoverQueue, _) | (Via::ClusterBroker, Via::LocalBroker)
        );
        if !better {
            return;
        }
        info!(peer = %name, announced = %peer.announcement.broker, via = %challenge.via,
            "peer proved its outbox is on a broker this instance uses: handing over directly");
        let route = Arc::new(PeerRoute {
            via: challenge.via,
            ..(*peer.route).clone()
        });
        let old = std::mem::replace(&mut peer.route, route);
        self.ownership_changed(now, effects);
        released(vec![old], effects);
    }

    /// Challenges that were routed but not answered in time are sent again (the answer was
    /// lost, or went to a listener queue that a reconnect replaced), a few times.
    pub(super) fn retry_challenges(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let late: Vec<u64> = self
            .presence
            .open
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.sent) >= ANSWER_WAIT)
            .map(|(nonce, _)| *nonce)
            .collect();
        let mut again = BTreeSet::new();
        for nonce in late {
            let Some(c) = self.presence.open.remove(&nonce) else {
                continue;
            };
            let unproven = self.roster.live.get(&c.peer).is_some_and(|p| {
                p.announcement.started_at == c.started_at && p.route.via != Via::LocalBroker
            });
            if unproven && c.attempts < CHALLENGE_ATTEMPTS {
                again.insert((c.peer, c.started_at, c.attempts));
            }
        }
        for (peer, started_at, attempts) in again {
            self.challenge(&peer, started_at, attempts, now, effects);
        }
    }

    /// Every peer not proven to share this instance's own broker, challenged again (the
    /// listener queue is new: answers to earlier challenges went to the old one).
    pub(super) fn challenge_unproven(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let mut unproven: Vec<(String, u64)> = self
            .roster
            .live
            .values()
            .filter(|p| p.route.via != Via::LocalBroker)
            .map(|p| (p.announcement.name.clone(), p.announcement.started_at))
            .collect();
        // In name order, so that a replay draws the same nonces for the same peers.
        unproven.sort();
        for (peer, started_at) in unproven {
            self.challenge(&peer, started_at, 0, now, effects);
        }
    }
}
