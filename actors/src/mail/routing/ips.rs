//! The `ips` field of a MailerQ message, read with a streaming visitor that skips every other
//! field (the MIME body is never copied), and why a body is malformed.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
