//! Sample traffic in MailerQ's JSON format, and the accounting of where every copy of it
//! ended up: what `mailroute demo` and `mailroute inject` run (so it is part of the engine's
//! build), and what the tests and the benchmark count with. Each message carries its own id
//! in [`TEST_ID_HEADER`]; [`wait_for`] waits on a condition instead of sleeping.

pub mod accounting;
mod wait;

use std::net::IpAddr;

pub use accounting::{Accounting, Expect, account};
pub use wait::wait_for;

use crate::broker::{HeaderValue, Message, Properties};

/// Header carrying the traffic generator's own id, so a test can count every message by id.
pub const TEST_ID_HEADER: &str = "x-test-id";

/// A MailerQ message body: envelope, recipient, `ips`, and a MIME body of about `mime_size`
/// bytes. `ips: None` leaves the field out (the instance's `default-ips` apply).
pub fn mailerq_json(id: &str, ips: Option<&[IpAddr]>, mime_size: usize) -> Vec<u8> {
    let mut body = String::with_capacity(mime_size + 256);
    body.push_str(r#"{"envelope":"bounces@example.com","recipient":"user"#);
    body.push_str(id);
    body.push_str(r#"@example.org","#);
    if let Some(ips) = ips {
        body.push_str(r#""ips":["#);
        for (i, ip) in ips.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push('"');
            body.push_str(&ip.to_string());
            body.push('"');
        }
        body.push_str("],");
    }
    body.push_str(r#""mime":"From: sender@example.com\r\nTo: user@example.org\r\nSubject: test "#);
    body.push_str(id);
    body.push_str(r#"\r\n\r\n"#);
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\\r\\n";
    while body.len() + line.len() + 2 < mime_size {
        body.push_str(line);
    }
    body.push_str("\"}");
    body.into_bytes()
}

/// A persistent outbox message carrying `id` in [`TEST_ID_HEADER`] and as message id.
pub fn test_message(id: &str, body: Vec<u8>) -> Message {
    let mut properties = Properties::persistent();
    properties.content_type = Some("application/json".into());
    properties.message_id = Some(id.to_string());
    properties.headers.insert(
        TEST_ID_HEADER.into(),
        HeaderValue::LongString(id.as_bytes().to_vec()),
    );
    Message::new(body, properties)
}

/// The test id of a message, if it carries one.
pub fn test_id(message: &Message) -> Option<String> {
    message
        .header(TEST_ID_HEADER)
        .and_then(HeaderValue::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::routing::extract_ips;

    #[test]
    fn generated_bodies_parse() {
        let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let body = mailerq_json("m1", Some(&ips), 1024);
        assert!(body.len() >= 1000 && body.len() <= 1100, "{}", body.len());
        assert_eq!(extract_ips(&body), Ok(Some(ips)));
        assert_eq!(extract_ips(&mailerq_json("m2", None, 10)), Ok(None));
    }
}
