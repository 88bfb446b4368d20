//! The cluster wire format: `MAGIC`, a version byte, then the message in bincode 2 with a size
//! limit. MailerQ's operator messages `{"hello": true}` / `{"reload": true}` are read too, so
//! existing tooling keeps working.
//!
//! Decoding never panics and never allocates beyond `MAX_FRAME`: anything off is an error whose
//! [`DecodeError::reason`] names a counter.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 2] = *b"MR";
pub const VERSION: u8 = 1;
pub const MAX_FRAME: usize = 65536;

/// One instance telling the cluster who it is and what it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl ClusterMessage {
    /// Routing key on the topic exchange: `<kind>.<instance>`.
    pub fn routing_key(&self) -> String {
        match self {
            ClusterMessage::Announcement(a) => format!("announce.{}", a.name),
            ClusterMessage::Leaving { name, .. } => format!("leaving.{name}"),
            ClusterMessage::Hello { .. } => "hello".into(),
            ClusterMessage::Reload { .. } => "reload".into(),
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
}

impl DecodeError {
    /// A short stable name, used as the drop counter's label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized(_) => "oversized",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "bad_version",
            DecodeError::Garbage(_) => "garbage",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode cluster message: {0}")]
pub struct EncodeError(String);

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

pub fn encode(message: &ClusterMessage) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    bincode::serde::encode_into_std_write(message, &mut out, config())
        .map_err(|e| EncodeError(e.to_string()))?;
    if out.len() > MAX_FRAME {
        return Err(EncodeError(format!(
            "{} bytes exceeds {MAX_FRAME}",
            out.len()
        )));
    }
    Ok(out)
}

pub fn decode(frame: &[u8]) -> Result<ClusterMessage, DecodeError> {
    if frame.len() > MAX_FRAME {
        return Err(DecodeError::Oversized(frame.len()));
    }
    if let Some(json) = operator_json(frame) {
        return json;
    }
    let rest = frame.strip_prefix(&MAGIC).ok_or(DecodeError::BadMagic)?;
    let (&version, payload) = rest.split_first().ok_or(DecodeError::BadMagic)?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (message, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| DecodeError::Garbage(e.to_string()))?;
    if used != payload.len() {
        return Err(DecodeError::Garbage(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(message)
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

    #[test]
    fn every_truncation_is_rejected() {
        let frame = encode(&announcement()).unwrap();
        for len in 0..frame.len() {
            assert!(
                decode(&frame[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
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
        let mut huge = b"MR\x01\x00".to_vec();
        huge.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&huge).is_err());
        let mut trailing = encode(&announcement()).unwrap();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(DecodeError::Garbage(_))));
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
            if seed % 2 == 0 && bytes.len() > 3 {
                bytes[..3].copy_from_slice(b"MR\x01");
            }
            let _ = decode(&bytes);
        }
    }
}
