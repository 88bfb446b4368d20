//! A fleet of instances, for the scale bench and the membership tests:
//! start N together, then one leaves, one dies silently, one joins; each time, how long until
//! every registry agrees on who is there.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use actix::Arbiter;

use crate::Instance;
use crate::broker::{BrokerError, SharedBroker};
use crate::messages::{PeerCount, PeerNames};
use crate::settings::InstanceSettings;
use crate::stats::StatsSnapshot;

pub struct Member {
    pub instance: Instance,
    /// The arbiter of a member that may be killed; `None`: the caller's.
    arbiter: Option<Arbiter>,
}

/// Instances on one broker (each with a connection of its own on RabbitMQ); `settings(i)`
/// makes the i-th one's (name and IPs included).
pub struct Fleet {
    pub members: Vec<Member>,
    settings: Box<dyn Fn(usize) -> InstanceSettings>,
    started: usize,
}

impl Fleet {
    pub fn new(settings: impl Fn(usize) -> InstanceSettings + 'static) -> Self {
        Fleet {
            members: Vec::new(),
            settings: Box::new(settings),
            started: 0,
        }
    }

    /// Starts one more member on `shared` (its local and cluster broker); with `killable`, on
    /// an arbiter (a thread) of its own, so that [`Fleet::kill`] can stop it without a word.
    /// Returns its name.
    pub async fn add(
        &mut self,
        shared: SharedBroker,
        killable: bool,
    ) -> Result<String, BrokerError> {
        let settings = (self.settings)(self.started);
        self.started += 1;
        let name = settings.name.clone();
        let member = if killable {
            let arbiter = Arbiter::new();
            let (tx, rx) = tokio::sync::oneshot::channel();
            arbiter.spawn(async move {
                let _ = tx.send(Instance::start(settings, shared.clone(), shared).await);
            });
            let instance = rx
                .await
                .map_err(|_| BrokerError::Other("the member's arbiter died".into()))??;
            Member {
                instance,
                arbiter: Some(arbiter),
            }
        } else {
            Member {
                instance: Instance::start(settings, shared.clone(), shared).await?,
                arbiter: None,
            }
        };
        self.members.push(member);
        Ok(name)
    }

    /// One counter summed over the members: `fleet.sum(|s| s.cluster_deliveries)` is the
    /// cluster traffic that reached them (every frame taken from the broker).
    pub fn sum(&self, counter: impl Fn(&StatsSnapshot) -> u64) -> u64 {
        self.members
            .iter()
            .map(|m| counter(&m.instance.stats.snapshot()))
            .sum()
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .map(|m| m.instance.settings.name.clone())
            .collect()
    }

    /// Whether every member lists exactly every other one as a live peer.
    pub async fn agreed(&self) -> bool {
        // Counts first: listing every name of every member is N² strings, too slow to poll
        // at N = 1,000 while the counts still differ.
        for member in &self.members {
            match member.instance.registry.send(PeerCount).await {
                Ok(count) if count + 1 == self.members.len() => {}
                _ => return false,
            }
        }
        let names = self.names();
        for member in &self.members {
            let me = &member.instance.settings.name;
            let Ok(peers) = member.instance.registry.send(PeerNames).await else {
                return false;
            };
            if peers.len() + 1 != names.len() || peers.iter().any(|p| p == me || !names.contains(p))
            {
                return false;
            }
        }
        true
    }

    /// Who does not agree, for a report: the members whose peer count is off, with it (at
    /// most `max` of them), and how many there are.
    pub async fn disagreement(&self, max: usize) -> String {
        let want = self.members.len().saturating_sub(1);
        let mut off = Vec::new();
        for member in &self.members {
            let count = member.instance.registry.send(PeerCount).await.unwrap_or(0);
            if count != want {
                off.push(format!("{}: {count}", member.instance.settings.name));
            }
        }
        let total = off.len();
        off.truncate(max);
        format!(
            "{total} of {} off (want {want}): {}",
            self.members.len(),
            off.join(", ")
        )
    }

    /// How long from `since` until every member agrees (polled), or `None` within `limit`.
    pub async fn time_to_agree(&self, since: Instant, limit: Duration) -> Option<Duration> {
        let agreed = crate::testkit::wait_for("membership agreed", limit, || self.agreed()).await;
        agreed.ok().map(|()| since.elapsed())
    }

    fn take(&mut self, name: &str) -> Option<Member> {
        let at = self
            .members
            .iter()
            .position(|m| m.instance.settings.name == name)?;
        Some(self.members.remove(at))
    }

    /// A graceful stop: drained, `Leaving` said.
    pub async fn leave(&mut self, name: &str) {
        if let Some(member) = self.take(name) {
            member.instance.shutdown(Duration::from_secs(5)).await;
            // Its actors keep running until the end (a process would exit): silent after Leave.
        }
    }

    /// A freeze (a stopped process, a paused VM): the member's thread blocks for `how_long`;
    /// its consumers stay registered, so the broker keeps delivering to it meanwhile.
    pub fn freeze(&self, name: &str, how_long: Duration) {
        let arbiter = self
            .members
            .iter()
            .find(|m| m.instance.settings.name == name)
            .and_then(|m| m.arbiter.as_ref());
        if let Some(arbiter) = arbiter {
            arbiter.spawn(async move { std::thread::sleep(how_long) });
        }
    }

    /// A silent death: the member's arbiter stops, its actors with it, nothing said.
    pub fn kill(&mut self, name: &str) {
        if let Some(Member {
            arbiter: Some(arbiter),
            ..
        }) = self.take(name)
        {
            arbiter.stop();
        }
    }
}
