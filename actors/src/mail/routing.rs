//! The route decision for one outbox message, as plain functions over plain data, and the
//! IP → owner table the router reads on every message.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub const HOPS_HEADER: &str = "x-mailroute-hops";
pub const FROM_HEADER: &str = "x-mailroute-from";
pub const ID_HEADER: &str = "x-mailroute-id";
pub const REASON_HEADER: &str = "x-mailroute-reason";
pub const HELD_SINCE_HEADER: &str = "x-mailroute-held-since";

/// What to do with a message whose listed IPs nobody in the cluster owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// Park it in the retry queue for `hold-time`, then try again; fail after `max-hold`.
    Hold,
    Fail,
    /// Send it from this instance anyway.
    Local,
    /// Not a setting: what the router uses while the cluster has not been heard (after a
    /// reconnect or a reload), so that mail no known peer owns waits instead.
    Defer,
}

/// A live peer as far as routing is concerned: where its mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub name: String,
    pub outbox: String,
    /// The broker holding `outbox` as the peer announced it (host:port/vhost): shown to
    /// operators, never compared to decide a path (two private brokers may both be
    /// `localhost:5672//`).
    pub broker: String,
    /// How this instance reaches `outbox`: proven by the peer's answer to a challenge, else
    /// through the peer's handover queue.
    pub via: Via,
}

/// The path of a handover, from what the peer proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// Not proven to share a broker with this instance: the peer's handover queue on the
    /// cluster broker, which its relay moves into its outbox. Always correct, one hop longer.
    #[default]
    HandoverQueue,
    /// The peer answered a challenge read from its presence queue on this instance's own
    /// broker: its outbox is there.
    LocalBroker,
    /// The same, on the cluster broker.
    ClusterBroker,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::HandoverQueue => "handover queue",
            Via::LocalBroker => "own broker",
            Via::ClusterBroker => "cluster broker",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Local,
    Peer(Arc<PeerRoute>),
}

/// IP → owner. Reads are lock-free per shard, so the router never waits on the registry.
#[derive(Debug, Default)]
pub struct OwnershipTable {
    owners: DashMap<IpAddr, Owner>,
}

impl OwnershipTable {
    pub fn new(local_ips: &[IpAddr]) -> Self {
        let table = OwnershipTable::default();
        table.replace_peers(local_ips, std::iter::empty());
        table
    }

    pub fn owner(&self, ip: &IpAddr) -> Option<Owner> {
        self.owners.get(ip).map(|o| o.value().clone())
    }

    /// Swaps in a complete, conflict-free claim list. Local IPs always stay local: a peer can
    /// never take mail for an IP this instance sends from.
    pub fn replace_peers(
        &self,
        local_ips: &[IpAddr],
        claims: impl IntoIterator<Item = (IpAddr, Arc<PeerRoute>)>,
    ) {
        let mut wanted: std::collections::HashMap<IpAddr, Owner> = claims
            .into_iter()
            .map(|(ip, peer)| (ip, Owner::Peer(peer)))
            .collect();
        for ip in local_ips {
            wanted.insert(*ip, Owner::Local);
        }
        self.owners.retain(|ip, _| wanted.contains_key(ip));
        for (ip, owner) in wanted {
            let unchanged = self.owners.get(&ip).is_some_and(|o| *o == owner);
            if !unchanged {
                self.owners.insert(ip, owner);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// Why a message cannot be routed at all; becomes the `x-mailroute-reason` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    #[error("ips[{index}] is not an IP address: {value:?}")]
    BadIp { index: usize, value: String },
}

/// The `ips` field of a MailerQ JSON message: `Some(list)` when it is an array (or a single
/// string), `None` when missing or of another type (the config's `default-ips` apply then).
///
/// Parsing stops at the `ips` field: what follows it, usually the MIME message and most of the
/// bytes, is not read (a 64 KiB message would otherwise cost more to scan than to hand over).
/// Only the last byte is checked, so a truncated body is still failed here; a body broken in
/// some other way after `ips` is passed on, and the MTA rejects it. Without `ips` the whole
/// body is read and validated.
pub fn extract_ips(body: &[u8]) -> Result<Option<Vec<IpAddr>>, Malformed> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de.deserialize_map(EnvelopeVisitor { found: &mut found });
    match (found, parsed) {
        (Some(ips), _) => {
            if body.trim_ascii_end().last() != Some(&b'}') {
                return Err(Malformed::NotJson(
                    "truncated: the body does not end with '}'".into(),
                ));
            }
            ips
        }
        (None, Ok(())) => {
            de.end().map_err(|e| Malformed::NotJson(e.to_string()))?;
            Ok(None)
        }
        (None, Err(e)) => Err(Malformed::NotJson(e.to_string())),
    }
}

struct EnvelopeVisitor<'a> {
    found: &'a mut Option<Result<Option<Vec<IpAddr>>, Malformed>>,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            if key.is_ips {
                // Returning before the end of the object makes serde_json stop with an error
                // at the next entry; `extract_ips` ignores it once it has the field. (Cheaper
                // than a custom error, which is formatted and parsed for a position.)
                *self.found = Some(map.next_value::<IpsField>()?.0);
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// A key compared in place, so no key is ever allocated.
struct Key {
    is_ips: bool,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key { is_ips: v == "ips" })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct IpsField(Result<Option<Vec<IpAddr>>, Malformed>);

impl<'de> de::Deserialize<'de> for IpsField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IpsVisitor)
    }
}

struct IpsVisitor;

fn parse_ip(index: usize, s: &str) -> Result<IpAddr, Malformed> {
    s.trim().parse().map_err(|_| Malformed::BadIp {
        index,
        value: s.chars().take(64).collect(),
    })
}

impl<'de> Visitor<'de> for IpsVisitor {
    type Value = IpsField;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of IP addresses")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IpsField, E> {
        Ok(IpsField(parse_ip(0, v).map(|ip| Some(vec![ip]))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IpsField, A::Error> {
        let mut ips = Vec::new();
        let mut error = None;
        let mut index = 0;
        while let Some(item) = seq.next_element::<IpItem>()? {
            match (item, &error) {
                (IpItem::Ip(s), None) => match parse_ip(index, s.as_ref()) {
                    Ok(ip) => ips.push(ip),
                    Err(e) => error = Some(e),
                },
                (IpItem::Other, None) => {
                    error = Some(Malformed::BadIp {
                        index,
                        value: "<not a string>".into(),
                    })
                }
                _ => {}
            }
            index += 1;
        }
        Ok(IpsField(match error {
            Some(e) => Err(e),
            None => Ok(Some(ips)),
        }))
    }

    // Any other JSON type means "no usable ips": the defaults apply, as in MailerQ.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<IpsField, E> {
        Ok(IpsField(Ok(None)))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<IpsField, E> {
        Ok(IpsField(Ok(None)))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<IpsField, E> {
        Ok(IpsField(Ok(None)))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<IpsField, E> {
        Ok(IpsField(Ok(None)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<IpsField, E> {
        Ok(IpsField(Ok(None)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IpsField, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(IpsField(Ok(None)))
    }
}

enum IpItem<'a> {
    Ip(std::borrow::Cow<'a, str>),
    Other,
}

impl<'de> de::Deserialize<'de> for IpItem<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = IpItem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an IP address string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(IpItem::Ip(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IpItem::Ip(v.to_string().into()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IpItem::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(IpItem::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(IpItem::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(IpItem::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(IpItem::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IpItem::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IpItem::Other)
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

/// Everything the decision needs besides the message; built once per config.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub default_ips: Vec<IpAddr>,
    pub max_hops: u32,
    pub unroutable: Unroutable,
    pub max_hold: Duration,
}

/// What the router does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deliver,
    Handover(Arc<PeerRoute>),
    Hold {
        reason: String,
    },
    Fail {
        reason: String,
    },
    /// Nobody known owns its IPs, and the cluster has not been heard since this instance
    /// (re)connected or reloaded: the router keeps it until it has.
    Defer,
}

/// The facts of one message that the decision reads.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub ips: Option<Vec<IpAddr>>,
    /// `x-mailroute-hops`: how often it was handed over already.
    pub hops: u32,
    /// Since the first hold, if it was held before.
    pub held_for: Option<Duration>,
}

/// The route decision of DESIGN.md. Order matters: local wins over everything (a message that
/// may be sent here is never bounced), the hop limit is checked only before a handover, and the
/// unroutable policy applies when nobody owns any listed IP.
pub fn decide(facts: &MessageFacts, policy: &RoutePolicy, table: &OwnershipTable) -> Decision {
    let ips = match &facts.ips {
        Some(ips) if !ips.is_empty() => ips.as_slice(),
        _ => policy.default_ips.as_slice(),
    };
    let mut first_peer = None;
    for ip in ips {
        match table.owner(ip) {
            Some(Owner::Local) => return Decision::Deliver,
            Some(Owner::Peer(peer)) if first_peer.is_none() => first_peer = Some(peer),
            _ => {}
        }
    }
    if let Some(peer) = first_peer {
        if facts.hops >= policy.max_hops {
            return Decision::Fail {
                reason: format!(
                    "handover loop: {} hops reached max-hops {}",
                    facts.hops, policy.max_hops
                ),
            };
        }
        return Decision::Handover(peer);
    }
    let listed = if ips.is_empty() {
        "the message lists no IPs and default-ips is empty".to_string()
    } else {
        format!("no instance owns {}", join_ips(ips))
    };
    match policy.unroutable {
        Unroutable::Defer => Decision::Defer,
        Unroutable::Local => Decision::Deliver,
        Unroutable::Fail => Decision::Fail {
            reason: format!("unroutable: {listed}"),
        },
        Unroutable::Hold => match facts.held_for {
            Some(held) if held >= policy.max_hold => Decision::Fail {
                reason: format!(
                    "unroutable: {listed}; held {}s, max-hold reached",
                    held.as_secs()
                ),
            },
            _ => Decision::Hold {
                reason: format!("unroutable: {listed}"),
            },
        },
    }
}

/// Reads the facts from an outbox message and decides. `now_ms`: Unix milliseconds.
pub fn route_message(
    message: &crate::broker::Message,
    policy: &RoutePolicy,
    table: &OwnershipTable,
    now_ms: u64,
) -> Decision {
    let ips = match extract_ips(&message.body) {
        Ok(ips) => ips,
        Err(malformed) => {
            return Decision::Fail {
                reason: format!("malformed message: {malformed}"),
            };
        }
    };
    let header_u64 = |name| {
        message
            .header(name)
            .and_then(crate::broker::HeaderValue::as_i64)
            .and_then(|v| u64::try_from(v).ok())
    };
    let facts = MessageFacts {
        ips,
        hops: header_u64(HOPS_HEADER).map_or(0, |h| u32::try_from(h).unwrap_or(u32::MAX)),
        held_for: header_u64(HELD_SINCE_HEADER)
            .map(|since| Duration::from_millis(now_ms.saturating_sub(held_since_ms(since)))),
    };
    decide(&facts, policy, table)
}

/// `x-mailroute-held-since` is an AMQP timestamp, seconds; versions before 0.2 wrote
/// milliseconds, which no plausible date in seconds reaches (10^11 s is the year 5138).
fn held_since_ms(value: u64) -> u64 {
    if value >= 100_000_000_000 {
        value
    } else {
        value.saturating_mul(1000)
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    let shown: Vec<String> = ips.iter().take(8).map(ToString::to_string).collect();
    let more = ips.len().saturating_sub(8);
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(name: &str) -> Arc<PeerRoute> {
        Arc::new(PeerRoute {
            name: name.into(),
            outbox: format!("{name}.outbox"),
            broker: "b".into(),
            via: Via::LocalBroker,
        })
    }

    fn policy(unroutable: Unroutable) -> RoutePolicy {
        RoutePolicy {
            default_ips: vec![],
            max_hops: 2,
            unroutable,
            max_hold: Duration::from_secs(600),
        }
    }

    fn table() -> OwnershipTable {
        let t = OwnershipTable::new(&[ip("10.0.0.1")]);
        t.replace_peers(
            &[ip("10.0.0.1")],
            vec![(ip("10.0.0.2"), peer("b")), (ip("::2"), peer("c"))],
        );
        t
    }

    fn facts(ips: &[&str]) -> MessageFacts {
        MessageFacts {
            ips: Some(ips.iter().map(|s| ip(s)).collect()),
            ..MessageFacts::default()
        }
    }

    #[test]
    fn decision_table() {
        let t = table();
        let hold = policy(Unroutable::Hold);
        let fail = policy(Unroutable::Fail);
        let local = policy(Unroutable::Local);
        let waiting = policy(Unroutable::Defer);
        let held_long = MessageFacts {
            held_for: Some(Duration::from_secs(601)),
            ..facts(&["192.0.2.9"])
        };
        let looped = MessageFacts {
            hops: 2,
            ..facts(&["10.0.0.2"])
        };
        let looped_but_local = MessageFacts {
            hops: 5,
            ..facts(&["10.0.0.1"])
        };
        let with_defaults = RoutePolicy {
            default_ips: vec![ip("10.0.0.2")],
            ..hold.clone()
        };
        let cases: Vec<(&str, MessageFacts, &RoutePolicy, &str)> = vec![
            ("local ip", facts(&["10.0.0.1"]), &hold, "deliver"),
            (
                "local wins over an earlier peer ip",
                facts(&["10.0.0.2", "10.0.0.1"]),
                &hold,
                "deliver",
            ),
            ("peer ip", facts(&["10.0.0.2"]), &hold, "handover b"),
            (
                "first peer ip wins",
                facts(&["::2", "10.0.0.2"]),
                &hold,
                "handover c",
            ),
            (
                "unknown then peer",
                facts(&["192.0.2.9", "::2"]),
                &hold,
                "handover c",
            ),
            ("loop", looped, &hold, "fail"),
            (
                "hops do not block local",
                looped_but_local,
                &hold,
                "deliver",
            ),
            ("unowned, hold", facts(&["192.0.2.9"]), &hold, "hold"),
            ("unowned, held too long", held_long, &hold, "fail"),
            ("unowned, fail", facts(&["192.0.2.9"]), &fail, "fail"),
            ("unowned, local", facts(&["192.0.2.9"]), &local, "deliver"),
            (
                "unowned, cluster unheard",
                facts(&["192.0.2.9"]),
                &waiting,
                "defer",
            ),
            (
                "owned, cluster unheard",
                facts(&["10.0.0.2"]),
                &waiting,
                "handover b",
            ),
            (
                "no ips, no defaults",
                MessageFacts::default(),
                &hold,
                "hold",
            ),
            (
                "no ips, default peer",
                MessageFacts::default(),
                &with_defaults,
                "handover b",
            ),
            (
                "empty ips, default peer",
                facts(&[]),
                &with_defaults,
                "handover b",
            ),
        ];
        for (name, facts, policy, want) in cases {
            let got = match decide(&facts, policy, &t) {
                Decision::Deliver => "deliver".to_string(),
                Decision::Handover(p) => format!("handover {}", p.name),
                Decision::Hold { .. } => "hold".to_string(),
                Decision::Fail { .. } => "fail".to_string(),
                Decision::Defer => "defer".to_string(),
            };
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn extracts_ips_and_skips_the_rest() {
        let body = br#"{"envelope":"a@b.c","mime":"From: x\r\n\r\n{\"ips\":[\"9.9.9.9\"]}","ips":["10.0.0.1"," ::1 "],"recipient":"d@e.f"}"#;
        assert_eq!(extract_ips(body), Ok(Some(vec![ip("10.0.0.1"), ip("::1")])));
    }

    #[test]
    fn ips_variants() {
        assert_eq!(extract_ips(br#"{"mime":"x"}"#), Ok(None));
        assert_eq!(extract_ips(br#"{"ips":null}"#), Ok(None));
        assert_eq!(extract_ips(br#"{"ips":{"a":1}}"#), Ok(None));
        assert_eq!(
            extract_ips(br#"{"ips":"10.0.0.1"}"#),
            Ok(Some(vec![ip("10.0.0.1")]))
        );
        assert_eq!(extract_ips(br#"{"ips":[]}"#), Ok(Some(vec![])));
        assert_eq!(
            extract_ips(br#"{"ips":["10.0.0.1"],"ips":["10.0.0.2"]}"#),
            Ok(Some(vec![ip("10.0.0.1")]))
        );
        assert_eq!(
            extract_ips(br#"{"ips":["\u0031\u0030.0.0.1"]}"#),
            Ok(Some(vec![ip("10.0.0.1")]))
        );
    }

    #[test]
    fn parsing_stops_at_the_ips_field() {
        // Invalid UTF-8 in the MIME part would be an error if it were read.
        let mut body = br#"{"ips":["10.0.0.1"],"mime":""#.to_vec();
        body.extend_from_slice(&[0xff; 4096]);
        body.extend_from_slice(b"\"}\n");
        assert_eq!(
            extract_ips(&body),
            Ok(Some(vec!["10.0.0.1".parse().unwrap()]))
        );
        // Truncated: failed here, not passed on.
        assert!(matches!(
            extract_ips(br#"{"ips":["10.0.0.1"],"mime":"From: a"#),
            Err(Malformed::NotJson(_))
        ));
        // Without ips, the whole body is validated.
        assert!(matches!(
            extract_ips(br#"{"mime":"a" x}"#),
            Err(Malformed::NotJson(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_rejected_with_a_reason() {
        for body in [
            &b""[..],
            b"{",
            b"[1,2]",
            b"\"x\"",
            b"{\"ips\":[\"10.0.0.1\"]} trailing",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(extract_ips(body), Err(Malformed::NotJson(_))),
                "{body:?}"
            );
        }
        assert_eq!(
            extract_ips(br#"{"ips":["10.0.0.1","nope"]}"#),
            Err(Malformed::BadIp {
                index: 1,
                value: "nope".into()
            })
        );
        assert!(matches!(
            extract_ips(br#"{"ips":[1]}"#),
            Err(Malformed::BadIp { index: 0, .. })
        ));
    }

    #[test]
    fn local_ips_survive_a_peer_claim() {
        let t = OwnershipTable::new(&[ip("10.0.0.1")]);
        t.replace_peers(&[ip("10.0.0.1")], vec![(ip("10.0.0.1"), peer("thief"))]);
        assert_eq!(t.owner(&ip("10.0.0.1")), Some(Owner::Local));
        t.replace_peers(&[ip("10.0.0.1")], Vec::new());
        assert_eq!(t.len(), 1);
    }
}
