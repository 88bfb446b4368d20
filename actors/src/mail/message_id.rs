//! The stable `x-mailroute-id` of a message: the same message always gets the same id, on
//! every instance and every outcome, so a receiver can drop a second copy of it.
//!
//! The AMQP `message-id` when the sender set one (MailerQ and most injectors do); otherwise a
//! SHA-256 over the body and the headers that the sender wrote, not the ones mailroute or the
//! broker add on the way (`x-mailroute-*`, `x-death`, `x-first-death-*`, `x-last-death-*`).

use sha2::{Digest, Sha256};

use crate::broker::{HeaderValue, Message};
use crate::mail::routing::ID_HEADER;

/// The id the message carries, or the one it should carry.
pub fn stable_id(message: &Message) -> String {
    if let Some(id) = message.header(ID_HEADER).and_then(HeaderValue::as_str) {
        return id.to_string();
    }
    match message.properties.message_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => content_hash(message),
    }
}

/// Sets `x-mailroute-id` unless the message has one.
pub fn ensure_id(message: &mut Message) {
    if message.header(ID_HEADER).is_some() {
        return;
    }
    let id = stable_id(message);
    message
        .properties_mut()
        .headers
        .insert(ID_HEADER.into(), HeaderValue::LongString(id.into_bytes()));
}

fn added_on_the_way(name: &str) -> bool {
    name.starts_with("x-mailroute-")
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

fn content_hash(message: &Message) -> String {
    let mut hash = Sha256::new();
    hash.update((message.body.len() as u64).to_be_bytes());
    hash.update(&message.body);
    // BTreeMap: the headers come in name order, whatever order they were sent in.
    for (name, value) in &message.properties.headers {
        if !added_on_the_way(name) {
            feed_bytes(&mut hash, name.as_bytes());
            feed(&mut hash, value);
        }
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(3 + 32);
    id.push_str("mr-");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

fn feed_bytes(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}

/// A canonical, length-prefixed encoding of a header value: a type tag, then the value. Not
/// `Debug`, whose format may change between Rust versions and split a cluster's ids.
fn feed(hash: &mut Sha256, value: &HeaderValue) {
    match value {
        HeaderValue::Bool(v) => hash.update([1, u8::from(*v)]),
        HeaderValue::I8(v) => hash.update([2, v.to_be_bytes()[0]]),
        HeaderValue::U8(v) => hash.update([3, *v]),
        HeaderValue::I16(v) => feed_tagged(hash, 4, &v.to_be_bytes()),
        HeaderValue::U16(v) => feed_tagged(hash, 5, &v.to_be_bytes()),
        HeaderValue::I32(v) => feed_tagged(hash, 6, &v.to_be_bytes()),
        HeaderValue::U32(v) => feed_tagged(hash, 7, &v.to_be_bytes()),
        HeaderValue::I64(v) => feed_tagged(hash, 8, &v.to_be_bytes()),
        HeaderValue::F32(v) => feed_tagged(hash, 9, &v.to_bits().to_be_bytes()),
        HeaderValue::F64(v) => feed_tagged(hash, 10, &v.to_bits().to_be_bytes()),
        HeaderValue::Decimal { scale, value } => {
            hash.update([11, *scale]);
            hash.update(value.to_be_bytes());
        }
        HeaderValue::ShortString(s) => feed_tagged(hash, 12, s.as_bytes()),
        HeaderValue::LongString(b) => feed_tagged(hash, 13, b),
        HeaderValue::Array(items) => {
            feed_tagged(hash, 14, &(items.len() as u64).to_be_bytes());
            for item in items {
                feed(hash, item);
            }
        }
        HeaderValue::Timestamp(v) => feed_tagged(hash, 15, &v.to_be_bytes()),
        HeaderValue::Table(table) => {
            feed_tagged(hash, 16, &(table.len() as u64).to_be_bytes());
            for (name, value) in table {
                feed_bytes(hash, name.as_bytes());
                feed(hash, value);
            }
        }
        HeaderValue::Bytes(b) => feed_tagged(hash, 17, b),
        HeaderValue::Void => hash.update([18]),
    }
}

fn feed_tagged(hash: &mut Sha256, tag: u8, bytes: &[u8]) {
    hash.update([tag]);
    feed_bytes(hash, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Properties;

    fn message(body: &str, headers: &[(&str, HeaderValue)]) -> Message {
        let mut p = Properties::persistent();
        for (k, v) in headers {
            p.headers.insert((*k).into(), v.clone());
        }
        Message::new(body.as_bytes().to_vec(), p)
    }

    #[test]
    fn the_message_id_property_wins() {
        let mut m = message("{}", &[]);
        m.properties_mut().message_id = Some("abc".into());
        assert_eq!(stable_id(&m), "abc");
    }

    #[test]
    fn without_message_id_the_content_decides() {
        let a = message("{\"ips\":[]}", &[("tenant", HeaderValue::I32(7))]);
        let same = message("{\"ips\":[]}", &[("tenant", HeaderValue::I32(7))]);
        let other_body = message("{\"ips\":[1]}", &[("tenant", HeaderValue::I32(7))]);
        let other_header = message("{\"ips\":[]}", &[("tenant", HeaderValue::I64(7))]);
        assert_eq!(stable_id(&a), stable_id(&same));
        assert_ne!(stable_id(&a), stable_id(&other_body));
        assert_ne!(stable_id(&a), stable_id(&other_header));
        // What mailroute and the broker add on the way does not change it.
        let travelled = message(
            "{\"ips\":[]}",
            &[
                ("tenant", HeaderValue::I32(7)),
                ("x-mailroute-hops", HeaderValue::I64(1)),
                ("x-death", HeaderValue::Array(vec![])),
                ("x-first-death-queue", HeaderValue::ShortString("q".into())),
            ],
        );
        assert_eq!(stable_id(&a), stable_id(&travelled));
    }

    #[test]
    fn an_id_once_set_stays() {
        let mut m = message("{}", &[]);
        ensure_id(&mut m);
        let first = stable_id(&m);
        m.properties_mut().message_id = Some("later".into());
        ensure_id(&mut m);
        assert_eq!(stable_id(&m), first);
    }
}
