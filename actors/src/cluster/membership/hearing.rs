//! Whether this instance hears the cluster, and what silence then means: the rejoin window
//! after a reconnect or reload, the cluster "heard" again, and who expires.

use std::time::Instant;

use tracing::{info, warn};

use super::{Effect, Membership, Rejoin, released};
use crate::messages::PeerState;
use crate::stats::bump;

impl Membership {
    pub(super) fn reload(&mut self, from: Option<String>, now: Instant, effects: &mut Vec<Effect>) {
        info!(
            from = from.as_deref().unwrap_or("operator"),
            peers = self.roster.live.len(),
            "cluster reload: re-validating peers and re-reading the config"
        );
        bump(&self.stats.reloads);
        effects.push(Effect::Reload);
        // A peer that does not re-announce within the window is forgotten then. Forgetting
        // all first would hold or fail mail for live peers.
        self.start_rejoin(Rejoin::Reload, now, effects);
        self.liveness.on_reload(effects);
    }

    /// After a reconnect or a reload: every known peer must be heard again within the window,
    /// and until the cluster is heard, unowned mail waits in the router.
    pub(super) fn start_rejoin(&mut self, why: Rejoin, now: Instant, effects: &mut Vec<Effect>) {
        self.rejoining = self.roster.live.keys().cloned().collect();
        self.rejoin = Some((now + self.rejoin_window, why));
        self.set_heard(false, now, effects);
        effects.push(Effect::Wake(self.rejoin_window));
    }

    pub(super) fn end_rejoin(&mut self, why: Rejoin, now: Instant, effects: &mut Vec<Effect>) {
        let mut silent: Vec<String> = self.rejoining.drain().collect();
        silent.sort();
        // After a reconnect, a peer still silent may itself be reconnecting: it has a whole
        // peer-timeout from the reconnect. After a reload everyone is listening and announces
        // at once, so silence within the window means gone (in digest mode only while digests
        // come).
        let counts = self.unguarded || self.liveness.silence_counts_after_reload(self.timing, now);
        if why == Rejoin::Reload && !silent.is_empty() && counts {
            let mut gone = Vec::new();
            for name in &silent {
                warn!(peer = %name, "peer did not re-announce after a reload or reconnect; forgotten");
                bump(&self.stats.peers_expired);
                gone.extend(self.roster.forget(name, PeerState::Expired, now));
            }
            self.remove_from_ownership(now, effects);
            released(gone, effects);
        }
        self.set_heard(true, now, effects);
    }

    /// A peer known before a reconnect or reload was heard again.
    pub(super) fn heard_from(&mut self, name: &str, now: Instant, effects: &mut Vec<Effect>) {
        if self.rejoining.remove(name) && self.rejoining.is_empty() && !self.heard {
            // Everyone known before has answered: no need to wait out the window.
            self.set_heard(true, now, effects);
        }
    }

    pub(super) fn set_heard(&mut self, heard: bool, now: Instant, effects: &mut Vec<Effect>) {
        if heard {
            // The router routes what it kept back as soon as it hears this: with the table
            // as it is now, not as it was before the last gap.
            self.flush_ownership(now, effects);
        }
        if self.heard != heard {
            self.heard = heard;
            if heard {
                info!(peers = self.roster.live.len(), "cluster heard");
            }
            effects.push(Effect::Hearing(heard));
        }
    }

    pub(super) fn expire(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if !self.unguarded {
            if !self.ears.listening {
                // Silence is this instance's own deafness, not the peers' death.
                return;
            }
            let timing = self.timing;
            if self
                .liveness
                .silence_says_nothing(&mut self.ears, timing, &self.stats, now)
            {
                return;
            }
        }
        if self.next_expiry.is_some_and(|at| now < at) {
            return;
        }
        let timeout = self.timing.peer_timeout;
        let mut silent: Vec<String> = Vec::new();
        let mut next: Option<Instant> = None;
        for (name, peer) in &self.roster.live {
            let deadline = peer.last_seen + if peer.vouched { timeout } else { timeout * 2 };
            if now >= deadline {
                silent.push(name.clone());
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        self.next_expiry = next;
        silent.sort();
        if silent.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for name in silent {
            warn!(peer = %name, ?timeout, "peer fell silent; forgotten");
            bump(&self.stats.peers_expired);
            gone.extend(self.roster.forget(&name, PeerState::Expired, now));
        }
        self.remove_from_ownership(now, effects);
        released(gone, effects);
    }
}
