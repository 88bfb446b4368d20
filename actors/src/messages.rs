//! The typed messages between the actors. Links go through `Recipient<M>`, so no actor names
//! another actor's type (actix's registry pattern).

use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;

use crate::broker::{BrokerError, Message as AmqpMessage};
use crate::cluster::wire::Announcement;
use crate::mail::routing::{Decision, PeerRoute};

/// One run of a consumer: from its subscribe until its channel is gone. When a run ends
/// without settling what it took, the broker has requeued those deliveries and sends them
/// again, so whoever still holds a message of that run drops it instead of publishing a
/// second copy beside the redelivered original.
#[derive(Debug, Clone, Default)]
pub struct Run(Arc<std::sync::atomic::AtomicBool>);

impl Run {
    pub fn end(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_over(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// OutboxConsumer → IpOwnershipRouter: decide where this outbox message goes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    /// Unique per consumer run; the consumer keeps the delivery's acker under it.
    pub id: u64,
    /// The consumer run that took it: once over, the message is the broker's again.
    pub run: Run,
    pub message: AmqpMessage,
    /// Who settles the original once the outcome is confirmed.
    pub reply: Recipient<Settled>,
}

/// IpOwnershipRouter → HandoverPublisher: publish the decided outcome with confirms.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub id: u64,
    pub run: Run,
    pub decision: Decision,
    pub message: AmqpMessage,
    pub reply: Recipient<Settled>,
}

/// What was confirmed by the broker for one outbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    HandedOver {
        peer: String,
    },
    Held,
    Failed {
        reason: String,
    },
    /// A second copy of a message this instance already delivered or failed: acked, not routed.
    Duplicate,
}

/// HandoverPublisher → OutboxConsumer: ack the original on `Ok`, requeue it on `Err`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Settled {
    pub id: u64,
    pub result: Result<Outcome, Unconfirmed>,
}

/// An outcome the broker did not confirm, and where it was going: the consumer backs off per
/// destination, so one broken peer does not slow the retries of mail for everybody else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    pub error: BrokerError,
    pub destination: String,
}

/// PeerRegistry → IpOwnershipRouter: the complete, conflict-free list of peer claims.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct OwnershipChanged {
    pub claims: Vec<(IpAddr, Arc<PeerRoute>)>,
}

/// PeerRegistry → IpOwnershipRouter: whether the cluster is heard. While it is not (the
/// listener reconnects, or a reload re-validates the peers), mail whose IPs no known peer
/// owns waits in the router instead of being held, failed or sent from the wrong IP.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
#[rtype(result = "()")]
pub struct Hearing(pub bool);

/// PeerRegistry → HandoverPublisher: these peer outboxes get no more mail from here.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PeersGone(pub Vec<Arc<PeerRoute>>);

/// → IpOwnershipRouter: hand every deferred message back for requeueing (the instance stops).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ReleaseDeferred;

/// PeerRegistry → Announcer: announce now (someone said hello, or a new peer appeared).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct AnnounceNow;

/// PeerRegistry → Announcer (`cluster-protocol: digest`): send this instance's announcement,
/// as it stands, straight to the queue `reply_to` (an `Ask` named it).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AnswerAsk {
    pub reply_to: String,
}

/// PeerRegistry → OutboxConsumer: the registry listens and has asked everyone to announce;
/// start consuming after the warm-up, so the first messages are routed with the peers known.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ClusterHeard;

/// → Announcer: tell the cluster this instance is leaving. Resolves once the broker confirmed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct Leave;

/// → OutboxConsumer: stop taking new messages; resolves once every routed one is settled.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Stop;

/// → PeerRegistry: whether it listens to the cluster and has heard it since (re)connecting.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Hearing")]
pub struct HearingNow;

/// → PeerRegistry: the live peers as last announced.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<PeerInfo>")]
pub struct ListPeers;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub announcement: Announcement,
    /// How long ago the last announcement arrived (or, once gone, how long ago it went).
    pub last_seen: std::time::Duration,
    pub state: PeerState,
}

/// A peer as the registry sees it. The first three are live (they own their IPs); the last
/// two are kept a while after the peer went, so a console can say what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    /// Paused for maintenance: takes no outbox mail; mail for its IPs waits in its outbox.
    Draining,
    /// Shutting down: settling what it took, then it leaves.
    Leaving,
    /// Said `Leaving` and went.
    Left,
    /// Fell silent for `peer-timeout`.
    Expired,
}

impl PeerState {
    pub fn of(a: &Announcement) -> PeerState {
        if a.leaving {
            PeerState::Leaving
        } else if a.draining {
            PeerState::Draining
        } else {
            PeerState::Alive
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Draining => "draining",
            PeerState::Leaving => "leaving",
            PeerState::Left => "left",
            PeerState::Expired => "expired",
        }
    }
}

/// → PeerRegistry: the names of the live peers (cheap: for membership checks at scale).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<String>")]
pub struct PeerNames;

/// → PeerRegistry: how many live peers it has (cheap at any N, unlike [`PeerNames`]).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct PeerCount;

/// → PeerRegistry: the live peers and those gone lately (left or expired), by name.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<PeerInfo>")]
pub struct ListMembers;

/// → OutboxConsumer and Announcer: `true` stops taking outbox mail without leaving the
/// cluster (maintenance), `false` takes it again. The announcer tells the peers.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Pause(pub bool);

/// → Announcer: announce that this instance is shutting down (before its drain).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Departing;

/// → Announcer: publish an operator command to the whole cluster (this instance included).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct Broadcast(pub crate::cluster::wire::ClusterMessage);

/// → every actor: the settings a reload changed; each takes what it uses.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Reconfigure(pub Arc<crate::settings::LiveSettings>);

/// PeerRegistry → whoever runs the instance (`serve`): the cluster asked this instance to
/// reload its config (`mailroute cluster reload`, MailerQ's `{"reload": true}`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ReloadRequested;
