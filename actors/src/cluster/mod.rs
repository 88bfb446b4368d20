//! Who is in the cluster and who owns which IP. The protocol logic is [`membership`], plain
//! state machines with an explicit clock (the registry's core and the digest leader's core);
//! the actors here are their shells on a broker: [`peer_registry`] listens to the cluster
//! exchange, [`announcer`] says who this instance is, [`digest_leader`] digests heartbeats
//! (`cluster-protocol: digest`), [`presence_responder`] answers broker-identity challenges.
//! [`wire`] is the frame format, [`cluster_frame`] sends and takes frames, [`replay_guard`]
//! drops copies of signed commands.

pub mod announcer;
pub mod cluster_frame;
pub mod digest_leader;
pub mod membership;
pub mod peer_registry;
pub mod presence_responder;
pub mod replay_guard;
pub mod wire;
