//! Who may see and do what on the console. Probes (`/livez`, `/readyz`), `/metrics` and the
//! page's script and style are open. The page and the JSON API need `www-read-token` when it
//! is set (or `www-token`, which grants everything); the actions need `www-token`. A token
//! comes as `Authorization: Bearer <token>`, or as the password of HTTP Basic auth (what a
//! browser asks for when it is shown the page); the user name is ignored.
//!
//! Wrong tokens are counted per client address: after [`ALLOWED`] in [`WINDOW`] that address
//! gets `429` for the rest of the window, whatever it sends, and the burst is logged once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;
use tracing::warn;

use crate::config::Secret;

/// Wrong tokens an address may send in [`WINDOW`] before it is refused outright.
pub const ALLOWED: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond that, spells that ended are forgotten first.
const REMEMBERED: usize = 4096;

/// The tokens as they run now (a reload may change them).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// `www-token`: actions, and reading.
    pub action: Option<Secret>,
    /// `www-read-token`: reading only. `None`: reading is open.
    pub read: Option<Secret>,
}

/// A run of wrong tokens from one address.
struct Spell {
    since: Instant,
    wrong: u32,
}

#[derive(Default)]
pub struct Limiter {
    spells: Mutex<HashMap<IpAddr, Spell>>,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Spell>> {
        self.spells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `ip` is still refused, if it is.
    fn refused_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let spells = self.lock();
        let spell = spells.get(&ip)?;
        let left = WINDOW.checked_sub(now.duration_since(spell.since))?;
        (spell.wrong >= ALLOWED && !left.is_zero()).then_some(left)
    }

    /// Counts a wrong token from `ip`; logs the first of a spell and the one that blocks it.
    fn wrong(&self, ip: IpAddr, now: Instant, what: &str) {
        let mut spells = self.lock();
        if spells.len() >= REMEMBERED {
            spells.retain(|_, s| now.duration_since(s.since) < WINDOW);
        }
        let spell = spells.entry(ip).or_insert(Spell {
            since: now,
            wrong: 0,
        });
        if now.duration_since(spell.since) >= WINDOW {
            *spell = Spell {
                since: now,
                wrong: 0,
            };
        }
        spell.wrong += 1;
        if spell.wrong == 1 {
            warn!(client = %ip, what, "console token refused");
        } else if spell.wrong == ALLOWED {
            warn!(
                client = %ip,
                wrong = spell.wrong,
                refused_for_s = WINDOW.as_secs(),
                "console token refused again and again: refusing this client for a while"
            );
        }
    }
}

/// Equal without telling, through timing, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token the request carries: a bearer token, or a Basic password.
fn presented(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64_decode(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Standard base64 (RFC 4648, with or without padding); `None` if it is not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

fn matches(token: &Option<Secret>, presented: &str) -> bool {
    token
        .as_ref()
        .is_some_and(|t| same(presented.as_bytes(), t.expose().as_bytes()))
}

fn error(mut response: actix_web::HttpResponseBuilder, message: &str) -> HttpResponse {
    response.json(json!({ "error": message }))
}

fn client(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

fn too_many(left: Duration) -> HttpResponse {
    let mut response = HttpResponse::TooManyRequests();
    response.insert_header((header::RETRY_AFTER, left.as_secs().max(1).to_string()));
    error(
        response,
        "too many wrong tokens from this address; try again later",
    )
}

/// `None` if `req` may read the page and the API; else the answer refusing it.
pub fn refuse_read(tokens: &Tokens, limiter: &Limiter, req: &HttpRequest) -> Option<HttpResponse> {
    tokens.read.as_ref()?;
    let now = Instant::now();
    let ip = client(req);
    if let Some(left) = ip.and_then(|ip| limiter.refused_for(ip, now)) {
        return Some(too_many(left));
    }
    match presented(req) {
        Some(p) if matches(&tokens.read, &p) || matches(&tokens.action, &p) => None,
        presented => {
            if let (Some(ip), Some(_)) = (ip, presented) {
                limiter.wrong(ip, now, "read");
            }
            let mut response = HttpResponse::Unauthorized();
            // Basic: a browser shown the page asks for the token (as the password).
            response.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"mailroute\""));
            Some(error(response, "missing or wrong token (www-read-token)"))
        }
    }
}

/// `None` if `req` may act (drain, resume, reload); else the answer refusing it.
pub fn refuse_action(
    tokens: &Tokens,
    limiter: &Limiter,
    req: &HttpRequest,
) -> Option<HttpResponse> {
    if tokens.action.is_none() {
        return Some(error(
            HttpResponse::Forbidden(),
            "operator actions are off: set www-token in the config to enable them",
        ));
    }
    let now = Instant::now();
    let ip = client(req);
    if let Some(left) = ip.and_then(|ip| limiter.refused_for(ip, now)) {
        return Some(too_many(left));
    }
    match presented(req) {
        Some(p) if matches(&tokens.action, &p) => None,
        _ => {
            if let Some(ip) = ip {
                limiter.wrong(ip, now, "action");
            }
            let mut response = HttpResponse::Unauthorized();
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"mailroute\""));
            Some(error(response, "missing or wrong bearer token (www-token)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_browsers_send() {
        assert_eq!(
            base64_decode("dXNlcjpzZWNyZXQ=").as_deref(),
            Some(&b"user:secret"[..])
        );
        assert_eq!(base64_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("**"), None);
    }

    #[test]
    fn an_address_is_refused_after_a_burst_then_let_in_again() {
        let limiter = Limiter::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        let start = Instant::now();
        for _ in 0..ALLOWED - 1 {
            limiter.wrong(ip, start, "read");
        }
        assert_eq!(limiter.refused_for(ip, start), None);
        limiter.wrong(ip, start, "read");
        assert!(limiter.refused_for(ip, start).is_some());
        assert_eq!(limiter.refused_for(other, start), None);
        assert_eq!(limiter.refused_for(ip, start + WINDOW), None);
    }
}
