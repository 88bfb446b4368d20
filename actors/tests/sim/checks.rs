//! The invariants, checked after every step of a run.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::{INTERVAL, Node, PEER_TIMEOUT, SWEEP, Sim, Violation};

impl Sim {
    /// Whom `node` just forgot must have been gone, or silent to it; and once the cluster is
    /// calm and settled, nobody live is forgotten at all.
    pub(super) fn check_forgotten(
        &self,
        node: usize,
        forgotten: Vec<String>,
    ) -> Result<(), Violation> {
        let n = &self.nodes[node];
        for name in &forgotten {
            let Some(peer) = self.nodes.iter().find(|p| &p.name == name) else {
                continue;
            };
            if !peer.alive {
                continue;
            }
            if self.settled_from.is_some_and(|t| self.now >= t) {
                return Err(format!(
                    "at {:?}: {} forgot live {} in a calm, settled cluster",
                    self.now, n.name, name
                ));
            }
            let deaf_for = n
                .last_heard
                .map_or(self.now, |at| self.now.saturating_sub(at));
            if deaf_for >= INTERVAL * 3 / 2 {
                let what = if self.digest() {
                    "had no digest"
                } else {
                    "heard nothing"
                };
                return Err(format!(
                    "at {:?}: {} forgot live {} while it {what} for {deaf_for:?} (deaf)",
                    self.now, n.name, name
                ));
            }
            let silent = n
                .heard_from
                .get(name)
                .map_or(Duration::MAX, |at| self.now.saturating_sub(*at));
            if silent < PEER_TIMEOUT {
                return Err(format!(
                    "at {:?}: {} forgot live {} heard {silent:?} ago",
                    self.now, n.name, name
                ));
            }
        }
        Ok(())
    }

    /// A dead or departed peer is gone from `node`'s list in time (checked on its ticks,
    /// where expiry happens). In digest mode a heartbeat the leader read late keeps its
    /// sender listed up to the heartbeat TTL longer, and a member no digest listed yet has
    /// two peer-timeouts.
    pub(super) fn check_dead_are_forgotten(&self, node: usize) -> Result<(), Violation> {
        let trip = Duration::from_millis(self.max_delay);
        let n = &self.nodes[node];
        // Without digests (a dead leader holds the heartbeat queue until the broker gives up
        // its link) silence says nothing, of the dead either; the clock starts again when
        // digests do.
        let no_digest = n
            .last_heard
            .is_none_or(|at| self.now.saturating_sub(at) >= INTERVAL * 3 / 2);
        if self.digest() && no_digest {
            return Ok(());
        }
        // Loaded for the whole run (`Sim::load`, the scale scenario): no spell to wait out,
        // so no bound to check; the scenario measures the time to forget the dead itself.
        if n.slow_until == Duration::MAX {
            return Ok(());
        }
        // A `Leaving` may be lost: then it expires like a silent death.
        let heard_since = n.hears_since.max(n.slow_until);
        for dead in self.dead.iter().map(|d| &self.nodes[*d]) {
            let Some(gone_at) = dead.gone_at else {
                continue;
            };
            let timeout = match (self.digest(), n.heard_from.contains_key(&dead.name)) {
                (false, _) => PEER_TIMEOUT,
                (true, true) => PEER_TIMEOUT + self.options.heartbeat_ttl,
                (true, false) => PEER_TIMEOUT * 2,
            };
            let bound = timeout + SWEEP + trip + INTERVAL;
            if self.now > gone_at.max(heard_since) + bound && n.core.knows(&dead.name) {
                return Err(format!(
                    "at {:?}: {} still lists {} (gone at {gone_at:?})",
                    self.now, n.name, dead.name
                ));
            }
        }
        Ok(())
    }

    /// With the faults over and settled, every live instance routes every IP to the same,
    /// live owner.
    pub fn check_agreement(&self) -> Result<(), Violation> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.alive).collect();
        for n in &live {
            let want: BTreeMap<IpAddr, String> = live
                .iter()
                .filter(|p| p.name != n.name)
                .flat_map(|p| p.ips.iter().map(|ip| (*ip, p.name.clone())))
                .collect();
            if n.table != want {
                let missing: Vec<&String> = want
                    .iter()
                    .filter(|(ip, _)| !n.table.contains_key(ip))
                    .map(|(_, owner)| owner)
                    .collect();
                let shown = &missing[..missing.len().min(8)];
                return Err(format!(
                    "at {:?}: {} routes {} IPs, want {} (missing {} of them: {shown:?}…)",
                    self.now,
                    n.name,
                    n.table.len(),
                    want.len(),
                    missing.len()
                ));
            }
        }
        Ok(())
    }
}
