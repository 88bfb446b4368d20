//! The cluster wire format:
//!
//! ```text
//! "MR" | version (1) | flags (1) | sent at, Unix ms (8, big endian) | bincode 2 payload | [tag]
//! ```
//!
//! With `cluster-secret` set, every frame carries an HMAC-SHA256 tag (flag bit 0) over all the
//! bytes before it: version, flags, timestamp and the payload (whose first field is the kind).
//! Receivers with the secret drop unsigned, badly signed and stale frames (timestamp outside
//! the freshness window: a replay). MailerQ's operator messages `{"hello": true}` /
//! `{"reload": true}` are read too when no secret is set.
//!
//! Decoding never panics and never allocates beyond `MAX_FRAME`: anything off is an error whose
//! [`DecodeError::reason`] names a counter.
//!
//! Rolling upgrades: a later version may add fields at the end of a message (bincode writes
//! fields in order, so they come after everything this version knows); this version reads what
//! it knows and skips the rest. A change that older readers must not misread (a new encoding,
//! a field that changes meaning) takes a new flag bit, which older readers reject, or a new
//! version byte. A message kind this version does not know is dropped and counted (garbage).

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const MAGIC: [u8; 2] = *b"MR";
pub const VERSION: u8 = 1;
pub const MAX_FRAME: usize = 65536;
const SIGNED: u8 = 0x01;
const HEADER: usize = 2 + 1 + 1 + 8;
pub const TAG: usize = 32;

/// One instance telling the cluster who it is and what it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Stable instance name (default: hostname); the registry key.
    pub name: String,
    /// mailroute version of the sender.
    pub version: String,
    /// Unix milliseconds when the instance started: tells a restart from a continuation.
    pub started_at: u64,
    /// Increases with every announcement of one run; a lower one is stale.
    pub sequence: u64,
    pub local_ips: Vec<IpAddr>,
    pub outbox: String,
    /// host:port/vhost of the broker with `outbox`; never credentials.
    pub broker: String,
    pub console_url: Option<String>,
    pub config_hash: String,
    /// Added in 0.2 (see [`v1`]): paused for maintenance, takes no outbox mail; it still owns
    /// its IPs, so mail for them waits in its outbox.
    pub draining: bool,
    /// Added in 0.2: shutting down; a `Leaving` follows once its in-flight mail is settled.
    pub leaving: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterMessage {
    Announcement(Announcement),
    /// The named instance shuts down: forget it now rather than after `peer-timeout`.
    Leaving {
        name: String,
        started_at: u64,
    },
    /// Everyone announce now (a newcomer or `mailroute cluster list` asks).
    Hello {
        from: Option<String>,
    },
    /// Everyone reset caches and reload.
    Reload {
        from: Option<String>,
    },
    /// Only the named instance reloads (`mailroute cluster reload --only NAME`). A new kind, not
    /// a field of `Reload`: an older instance drops it rather than reloading as if for all.
    ReloadOne {
        from: Option<String>,
        name: String,
    },
    /// Every instance stops taking outbox mail, staying in the cluster (maintenance).
    Drain {
        from: Option<String>,
    },
    /// Every instance takes outbox mail again.
    Resume {
        from: Option<String>,
    },
    /// `cluster-protocol: digest`: an instance is alive. Sent into the heartbeat queue, never
    /// to the exchange; `sequence` is that of its latest announcement.
    Heartbeat {
        name: String,
        started_at: u64,
        sequence: u64,
    },
    /// `cluster-protocol: digest`: the heartbeats the queue's active consumer heard lately,
    /// broadcast each interval. A long roster comes in several digests.
    Digest {
        from: String,
        members: Vec<DigestEntry>,
    },
    /// `cluster-protocol: digest`: the named instances (everyone, when `names` is empty)
    /// send their announcement straight to the queue `reply_to` (default exchange), instead
    /// of to the whole cluster: a newcomer learns N peers with N deliveries, not N².
    Ask {
        from: String,
        reply_to: String,
        names: Vec<String>,
    },
    /// Published into the named peer's presence queue on a broker this instance uses (never
    /// to the exchange): "if you read this, answer `Present` with `nonce` into `reply_to`".
    /// Only an instance connected to that broker can read it, so the answer proves where its
    /// outbox is, however either of them spells the broker's address.
    Challenge {
        from: String,
        reply_to: String,
        nonce: u64,
    },
    /// The answer to a `Challenge`, sent straight to the challenger's listener queue. Signed
    /// like every frame when `cluster-secret` is set: a client that declared a look-alike
    /// presence queue reads the challenge but cannot answer it.
    Present {
        name: String,
        started_at: u64,
        nonce: u64,
    },
}

/// One member as the heartbeat leader last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub name: String,
    pub started_at: u64,
    /// Of its latest announcement: a registry holding an older one asks for it.
    pub sequence: u64,
    /// How long ago its last heartbeat arrived, in milliseconds.
    pub age_ms: u32,
}

impl ClusterMessage {
    /// Routing key on the topic exchange: `<kind>.<instance>`.
    pub fn routing_key(&self) -> String {
        match self {
            ClusterMessage::Announcement(a) => format!("announce.{}", a.name),
            ClusterMessage::Leaving { name, .. } => format!("leaving.{name}"),
            ClusterMessage::Hello { .. } => "hello".into(),
            ClusterMessage::Reload { .. } => "reload".into(),
            ClusterMessage::ReloadOne { name, .. } => format!("reload.{name}"),
            ClusterMessage::Drain { .. } => "drain".into(),
            ClusterMessage::Resume { .. } => "resume".into(),
            ClusterMessage::Heartbeat { name, .. } => format!("heartbeat.{name}"),
            ClusterMessage::Digest { from, .. } => format!("digest.{from}"),
            ClusterMessage::Ask { from, .. } => format!("ask.{from}"),
            ClusterMessage::Challenge { from, .. } => format!("challenge.{from}"),
            ClusterMessage::Present { name, .. } => format!("present.{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("cluster message of {0} bytes exceeds the {MAX_FRAME} byte limit")]
    Oversized(usize),
    #[error("not a mailroute cluster message (bad magic)")]
    BadMagic,
    #[error("unsupported cluster wire version {0}")]
    UnsupportedVersion(u8),
    #[error("undecodable cluster message: {0}")]
    Garbage(String),
    #[error("unsigned cluster message while cluster-secret is set")]
    Unsigned,
    #[error("cluster message with a bad signature")]
    BadSignature,
    #[error("stale cluster message: sent {age_ms} ms from now, outside the freshness window")]
    Stale { age_ms: i64 },
}

impl DecodeError {
    /// A short stable name, used as the drop counter's label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized(_) => "oversized",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "bad_version",
            DecodeError::Garbage(_) => "garbage",
            DecodeError::Unsigned => "unsigned",
            DecodeError::BadSignature => "bad_signature",
            DecodeError::Stale { .. } => "stale",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode cluster message: {0}")]
pub struct EncodeError(String);

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Signs and checks cluster frames. Without a secret it neither signs nor checks.
#[derive(Clone)]
pub struct Codec {
    key: Option<Hmac<Sha256>>,
    freshness: Duration,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Codec")
            .field("signed", &self.key.is_some())
            .field("freshness", &self.freshness)
            .finish()
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new(None, Duration::from_secs(30))
    }
}

/// When a frame says it was sent (ms since the epoch, by its sender's clock), if it is one
/// of ours; nothing is verified here.
pub fn sent_ms(frame: &[u8]) -> Option<u64> {
    (frame.starts_with(&MAGIC) && frame.len() >= HEADER).then(|| header_sent(frame))
}

/// The send time in a frame's header; the caller has checked the frame is that long.
fn header_sent(frame: &[u8]) -> u64 {
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&frame[4..HEADER]);
    u64::from_be_bytes(sent)
}

impl Codec {
    /// `freshness`: how far a signed frame's timestamp may be from the receiver's clock.
    pub fn new(secret: Option<&str>, freshness: Duration) -> Self {
        let key = secret
            .filter(|s| !s.is_empty())
            .and_then(|s| Hmac::<Sha256>::new_from_slice(s.as_bytes()).ok());
        Codec { key, freshness }
    }

    pub fn is_signed(&self) -> bool {
        self.key.is_some()
    }

    pub fn encode(&self, message: &ClusterMessage, now_ms: u64) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(if self.key.is_some() { SIGNED } else { 0 });
        out.extend_from_slice(&now_ms.to_be_bytes());
        bincode::serde::encode_into_std_write(message, &mut out, config())
            .map_err(|e| EncodeError(e.to_string()))?;
        if let Some(key) = &self.key {
            let mut mac = key.clone();
            mac.update(&out);
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        if out.len() > MAX_FRAME {
            return Err(EncodeError(format!(
                "{} bytes exceeds {MAX_FRAME}",
                out.len()
            )));
        }
        Ok(out)
    }

    pub fn decode(&self, frame: &[u8], now_ms: u64) -> Result<ClusterMessage, DecodeError> {
        self.decode_tagged(frame, now_ms)
            .map(|(message, _)| message)
    }

    /// As [`Codec::decode`], with the frame's verified tag when this codec checks signatures:
    /// it names this very frame (its content and the instant it was sent), so a receiver can
    /// tell a replayed copy from a new command that says the same.
    pub fn decode_tagged(
        &self,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<(ClusterMessage, Option<[u8; TAG]>), DecodeError> {
        if frame.len() > MAX_FRAME {
            return Err(DecodeError::Oversized(frame.len()));
        }
        if let Some(json) = operator_json(frame) {
            return match self.key {
                Some(_) => Err(DecodeError::Unsigned),
                None => json.map(|message| (message, None)),
            };
        }
        if !frame.starts_with(&MAGIC) {
            return Err(DecodeError::BadMagic);
        }
        let version = *frame.get(2).ok_or(DecodeError::BadMagic)?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if frame.len() < HEADER {
            return Err(DecodeError::Garbage("truncated header".into()));
        }
        let flags = frame[3];
        if flags & !SIGNED != 0 {
            return Err(DecodeError::Garbage(format!("unknown flags {flags:#04x}")));
        }
        let sent = header_sent(frame);
        let signed = flags & SIGNED != 0;
        let body_end = if signed {
            frame
                .len()
                .checked_sub(TAG)
                .filter(|&end| end >= HEADER)
                .ok_or_else(|| DecodeError::Garbage("truncated tag".into()))?
        } else {
            frame.len()
        };
        let mut tag = None;
        match (&self.key, signed) {
            (Some(_), false) => return Err(DecodeError::Unsigned),
            (Some(key), true) => {
                let mut mac = key.clone();
                mac.update(&frame[..body_end]);
                // verify_slice compares in constant time.
                mac.verify_slice(&frame[body_end..])
                    .map_err(|_| DecodeError::BadSignature)?;
                let age_ms = i64::try_from(now_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(i64::try_from(sent).unwrap_or(i64::MAX));
                if age_ms.unsigned_abs() > self.freshness.as_millis() as u64 {
                    return Err(DecodeError::Stale { age_ms });
                }
                tag = <[u8; TAG]>::try_from(&frame[body_end..]).ok();
            }
            // Without a secret a signed frame is read unchecked: it lets a cluster roll the
            // secret out one instance at a time.
            (None, _) => {}
        }
        let payload = &frame[HEADER..body_end];
        // What follows the fields this version knows is a later version's additions.
        let message = match bincode::serde::decode_from_slice(payload, config()) {
            Ok((message, _used)) => Ok(message),
            // An announcement from 0.1 ends before the fields added since.
            Err(error) => {
                match bincode::serde::decode_from_slice::<v1::ClusterMessage, _>(payload, config())
                {
                    // 0.1 is the first version: nothing of its follows the fields it knows.
                    Ok((v1::ClusterMessage::Announcement(a), used)) if used == payload.len() => {
                        Ok(ClusterMessage::Announcement(a.into()))
                    }
                    _ => Err(DecodeError::Garbage(error.to_string())),
                }
            }
        }?;
        Ok((message, tag))
    }

    /// How far a signed frame's timestamp may be from the receiver's clock.
    pub fn freshness(&self) -> Duration {
        self.freshness
    }
}

/// What 0.1 sent. bincode cannot default a field missing at the end, so a frame that the
/// current layout cannot read is tried as 0.1's: a rolling upgrade keeps every instance heard.
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub struct Announcement {
        pub(super) name: String,
        pub(super) version: String,
        pub(super) started_at: u64,
        pub(super) sequence: u64,
        pub(super) local_ips: Vec<IpAddr>,
        pub(super) outbox: String,
        pub(super) broker: String,
        pub(super) console_url: Option<String>,
        pub(super) config_hash: String,
    }

    /// Only the announcement changed; the other kinds decode as the current ones.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub enum ClusterMessage {
        Announcement(Announcement),
    }

    impl From<Announcement> for super::Announcement {
        fn from(a: Announcement) -> Self {
            super::Announcement {
                name: a.name,
                version: a.version,
                started_at: a.started_at,
                sequence: a.sequence,
                local_ips: a.local_ips,
                outbox: a.outbox,
                broker: a.broker,
                console_url: a.console_url,
                config_hash: a.config_hash,
                draining: false,
                leaving: false,
            }
        }
    }
}

/// Wall-clock Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unsigned encoding, stamped now.
pub fn encode(message: &ClusterMessage) -> Result<Vec<u8>, EncodeError> {
    Codec::default().encode(message, now_ms())
}

/// Decoding without a secret.
pub fn decode(frame: &[u8]) -> Result<ClusterMessage, DecodeError> {
    Codec::default().decode(frame, now_ms())
}

/// MailerQ's JSON operator commands. `None` if the frame does not look like JSON at all.
fn operator_json(frame: &[u8]) -> Option<Result<ClusterMessage, DecodeError>> {
    let first = frame.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    #[derive(Deserialize)]
    struct Operator {
        #[serde(default)]
        hello: bool,
        #[serde(default)]
        reload: bool,
    }
    Some(match serde_json::from_slice::<Operator>(frame) {
        Ok(Operator { reload: true, .. }) => Ok(ClusterMessage::Reload { from: None }),
        Ok(Operator { hello: true, .. }) => Ok(ClusterMessage::Hello { from: None }),
        Ok(_) => Err(DecodeError::Garbage(
            "JSON message is neither hello nor reload".into(),
        )),
        Err(e) => Err(DecodeError::Garbage(e.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a sender of `message`'s layout writes it, signed if `codec` signs.
    fn frame_of(message: &impl Serialize, codec: &Codec, sent_ms: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.push(if codec.is_signed() { SIGNED } else { 0 });
        out.extend_from_slice(&sent_ms.to_be_bytes());
        bincode::serde::encode_into_std_write(message, &mut out, config()).unwrap();
        if let Some(key) = &codec.key {
            let mut mac = key.clone();
            mac.update(&out);
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    fn announcement() -> ClusterMessage {
        ClusterMessage::Announcement(Announcement {
            name: "a".into(),
            version: "0.1.0".into(),
            started_at: 1,
            sequence: 7,
            local_ips: vec!["10.0.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            outbox: "outbox.a".into(),
            broker: "127.0.0.1:5672/".into(),
            console_url: Some("http://a:8485/".into()),
            config_hash: "abcd".into(),
            draining: true,
            leaving: false,
        })
    }

    #[test]
    fn round_trip() {
        for m in [
            announcement(),
            ClusterMessage::Leaving {
                name: "a".into(),
                started_at: 1,
            },
            ClusterMessage::Hello {
                from: Some("b".into()),
            },
            ClusterMessage::Reload { from: None },
            ClusterMessage::ReloadOne {
                from: None,
                name: "c".into(),
            },
            ClusterMessage::Drain {
                from: Some("b".into()),
            },
            ClusterMessage::Resume { from: None },
            ClusterMessage::Heartbeat {
                name: "a".into(),
                started_at: 5,
                sequence: 3,
            },
            ClusterMessage::Digest {
                from: "a".into(),
                members: vec![DigestEntry {
                    name: "b".into(),
                    started_at: 9,
                    sequence: 2,
                    age_ms: 1500,
                }],
            },
            ClusterMessage::Ask {
                from: "c".into(),
                reply_to: "mailroute.cluster.c.0001".into(),
                names: vec!["a".into()],
            },
        ] {
            assert_eq!(decode(&encode(&m).unwrap()), Ok(m));
        }
    }

    #[test]
    fn operator_json_commands() {
        assert_eq!(
            decode(br#"{"hello": true}"#),
            Ok(ClusterMessage::Hello { from: None })
        );
        assert_eq!(
            decode(br#" {"reload":true}"#),
            Ok(ClusterMessage::Reload { from: None })
        );
        assert!(matches!(
            decode(br#"{"hello": false}"#),
            Err(DecodeError::Garbage(_))
        ));
        assert!(matches!(decode(b"{nope"), Err(DecodeError::Garbage(_))));
    }

    /// Every prefix but one: cut before its two 0.2 flags, an announcement is exactly what
    /// 0.1 sent, and reads as that. (AMQP frames carry their length and signed frames their
    /// tag, so a cut frame does not arrive in practice.)
    #[test]
    fn every_truncation_is_rejected() {
        let frame = encode(&announcement()).unwrap();
        for len in 0..frame.len() {
            match decode(&frame[..len]) {
                Err(_) => {}
                Ok(ClusterMessage::Announcement(a)) if len == frame.len() - 2 => {
                    assert!(!a.draining && !a.leaving);
                }
                Ok(other) => panic!("prefix of {len} bytes decoded: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_and_oversized_are_rejected() {
        assert_eq!(decode(b"hello"), Err(DecodeError::BadMagic));
        assert_eq!(
            decode(b"MR\x09abc"),
            Err(DecodeError::UnsupportedVersion(9))
        );
        assert!(matches!(
            decode(b"MR\x01\xff\xff\xff\xff\xff"),
            Err(DecodeError::Garbage(_))
        ));
        assert_eq!(
            decode(&vec![b'M'; MAX_FRAME + 1]),
            Err(DecodeError::Oversized(MAX_FRAME + 1))
        );
        // A length prefix claiming 4 GiB must not make the decoder allocate it.
        let mut huge = b"MR\x01\x00\0\0\0\0\0\0\0\0\x00".to_vec();
        huge.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&huge).is_err());
    }

    /// What the next version might send: the same kinds, with a field added to an
    /// announcement (and to the others). This version must read them.
    #[test]
    fn a_frame_from_the_next_version_with_added_fields_is_read() {
        #[derive(Serialize)]
        struct NextAnnouncement {
            name: String,
            version: String,
            started_at: u64,
            sequence: u64,
            local_ips: Vec<IpAddr>,
            outbox: String,
            broker: String,
            console_url: Option<String>,
            config_hash: String,
            draining: bool,
            leaving: bool,
            // Added by the next version.
            zone: Option<String>,
            weights: Vec<u32>,
        }
        #[derive(Serialize)]
        enum Next {
            Announcement(NextAnnouncement),
            Leaving {
                name: String,
                started_at: u64,
                reason: String,
            },
        }
        let frame = |message: &Next, codec: &Codec| frame_of(message, codec, 1_700_000_000_000);
        let next = Next::Announcement(NextAnnouncement {
            name: "a".into(),
            version: "0.3.0".into(),
            started_at: 1,
            sequence: 7,
            local_ips: vec!["10.0.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            outbox: "outbox.a".into(),
            broker: "127.0.0.1:5672/".into(),
            console_url: Some("http://a:8485/".into()),
            config_hash: "abcd".into(),
            draining: true,
            leaving: false,
            zone: Some("eu-west".into()),
            weights: vec![1, 2, 3],
        });
        let mut expected = announcement();
        if let ClusterMessage::Announcement(a) = &mut expected {
            a.version = "0.3.0".into();
        }
        for codec in [
            Codec::default(),
            Codec::new(Some("k"), Duration::from_secs(30)),
        ] {
            let read = codec.decode(&frame(&next, &codec), 1_700_000_000_000);
            assert_eq!(read, Ok(expected.clone()));
            let leaving = Next::Leaving {
                name: "a".into(),
                started_at: 1,
                reason: "upgrade".into(),
            };
            assert_eq!(
                codec.decode(&frame(&leaving, &codec), 1_700_000_000_000),
                Ok(ClusterMessage::Leaving {
                    name: "a".into(),
                    started_at: 1
                })
            );
        }
    }

    /// 0.1 announced without `draining`/`leaving`; during a rolling upgrade its instances
    /// must stay heard (as not draining, not leaving), signed or not.
    #[test]
    fn an_announcement_from_0_1_is_read() {
        let old = v1::ClusterMessage::Announcement(v1::Announcement {
            name: "a".into(),
            version: "0.1.0".into(),
            started_at: 1,
            sequence: 7,
            local_ips: vec!["10.0.0.1".parse().unwrap()],
            outbox: "outbox.a".into(),
            broker: "127.0.0.1:5672/".into(),
            console_url: None,
            config_hash: "abcd".into(),
        });
        let now = 1_700_000_000_000u64;
        for codec in [
            Codec::default(),
            Codec::new(Some("k"), Duration::from_secs(30)),
        ] {
            let frame = frame_of(&old, &codec, now);
            let Ok(ClusterMessage::Announcement(a)) = codec.decode(&frame, now) else {
                panic!("0.1 announcement not read");
            };
            assert_eq!(
                (a.name.as_str(), a.sequence, a.draining, a.leaving),
                ("a", 7, false, false)
            );
            assert_eq!(a.local_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        }
    }

    #[test]
    fn signed_frames() {
        let secret = Codec::new(Some("s3cret"), Duration::from_secs(30));
        let other = Codec::new(Some("other"), Duration::from_secs(30));
        let open = Codec::default();
        let now = 1_700_000_000_000;
        let m = announcement();
        let frame = secret.encode(&m, now).unwrap();
        assert_eq!(secret.decode(&frame, now + 1000), Ok(m.clone()));
        assert_eq!(
            open.decode(&frame, now),
            Ok(m.clone()),
            "no secret: read unchecked"
        );
        assert_eq!(other.decode(&frame, now), Err(DecodeError::BadSignature));
        assert_eq!(
            secret.decode(&open.encode(&m, now).unwrap(), now),
            Err(DecodeError::Unsigned)
        );
        assert_eq!(
            secret.decode(br#"{"hello": true}"#, now),
            Err(DecodeError::Unsigned)
        );
        assert!(matches!(
            secret.decode(&frame, now + 31_000),
            Err(DecodeError::Stale { .. })
        ));
        assert!(matches!(
            secret.decode(&frame, now - 31_000),
            Err(DecodeError::Stale { .. })
        ));
        // Any flipped bit breaks the tag: kind, payload, timestamp or the tag itself.
        for i in 4..frame.len() {
            let mut forged = frame.clone();
            forged[i] ^= 0x01;
            assert!(
                secret.decode(&forged, now).is_err(),
                "flipped byte {i} accepted"
            );
        }
        // Stripping the signed flag does not help a forger.
        let mut stripped = frame[..frame.len() - TAG].to_vec();
        stripped[3] = 0;
        assert_eq!(secret.decode(&stripped, now), Err(DecodeError::Unsigned));
        for len in 0..frame.len() {
            assert!(secret.decode(&frame[..len], now).is_err());
        }
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
            if seed % 2 == 0 && bytes.len() > 4 {
                bytes[..4].copy_from_slice(b"MR\x01\x00");
            }
            let _ = decode(&bytes);
            let _ = Codec::new(Some("k"), Duration::from_secs(1)).decode(&bytes, seed);
        }
    }
}
