//! The counters of the other instances, read from their own consoles' `/api/v1/stats`: each
//! instance counts only what it did, and a peer whose console does not answer (off,
//! firewalled, down) is shown as unreachable rather than as zeros.
//!
//! An announced console URL is whatever the announcer wrote, so fetching it is bounded: only
//! `http(s)` URLs (see `links`), only when the announcements were verified (`cluster-secret`
//! set: the page does not fetch otherwise), each URL at most once per [`INTERVAL`] however
//! many pages are drawn (the answer is cached), no redirects, at most [`LIMIT`] bytes, a
//! one-second timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mailroute_actors::stats::StatsSnapshot;

use crate::config::Secret;

/// Long enough for a busy peer, short enough that one dead peer does not stall the page.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Peers asked at once; a cluster of hundreds is asked in waves.
const CONCURRENT: usize = 16;
/// A peer's console is asked at most this often (the page refreshes at this pace).
pub const INTERVAL: Duration = Duration::from_secs(5);
/// The largest answer read: a stats object is well under 2 KiB.
const LIMIT: usize = 16 * 1024;
/// Answers kept for URLs nobody asked about for this long are forgotten.
const FORGET: Duration = Duration::from_secs(600);

struct Entry {
    asked: Instant,
    /// The last answer (`None`: unreachable, or not answered yet).
    stats: Option<StatsSnapshot>,
}

#[derive(Default)]
pub struct PeerCounters {
    cache: Mutex<HashMap<String, Entry>>,
}

/// `url/api/v1/stats`, whether or not the announced URL ends in `/`.
fn stats_url(console: &url::Url) -> String {
    format!("{}/api/v1/stats", console.as_str().trim_end_matches('/'))
}

async fn fetch(
    client: &awc::Client,
    console: &url::Url,
    token: Option<&Secret>,
) -> Option<StatsSnapshot> {
    let mut request = client.get(stats_url(console)).timeout(TIMEOUT);
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let mut response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<StatsSnapshot>().limit(LIMIT).await.ok()
}

impl PeerCounters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Per console URL, the counters it reported (`None`: unreachable or not known yet).
    /// URLs asked within [`INTERVAL`] are answered from the cache; the others are asked now,
    /// and marked asked first, so pages drawn meanwhile do not ask again.
    /// `token`: this instance's `www-read-token`, for peers whose API needs it.
    pub async fn stats(
        &self,
        consoles: Vec<url::Url>,
        token: Option<Secret>,
    ) -> HashMap<String, Option<StatsSnapshot>> {
        let now = Instant::now();
        let mut known = HashMap::new();
        let mut ask = Vec::new();
        {
            let mut cache = self.lock();
            cache.retain(|_, e| now.duration_since(e.asked) < FORGET);
            for url in consoles {
                let key = url.as_str().to_string();
                match cache.get_mut(&key) {
                    Some(entry) if now.duration_since(entry.asked) < INTERVAL => {
                        known.insert(key, entry.stats);
                    }
                    Some(entry) => {
                        entry.asked = now;
                        ask.push(url);
                    }
                    None => {
                        cache.insert(
                            key,
                            Entry {
                                asked: now,
                                stats: None,
                            },
                        );
                        ask.push(url);
                    }
                }
            }
        }
        if ask.is_empty() {
            return known;
        }
        let client = awc::Client::builder()
            .disable_redirects()
            .timeout(TIMEOUT)
            .finish();
        let (client, token) = (&client, token.as_ref());
        let fetched: Vec<(String, Option<StatsSnapshot>)> = futures::stream::iter(ask)
            .map(|url| async move {
                let stats = fetch(client, &url, token).await;
                (url.as_str().to_string(), stats)
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        let mut cache = self.lock();
        for (key, stats) in fetched {
            if let Some(entry) = cache.get_mut(&key) {
                entry.stats = stats;
            }
            known.insert(key, stats);
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_url_joins_either_form() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            stats_url(&url("http://a:8485/")),
            "http://a:8485/api/v1/stats"
        );
        assert_eq!(
            stats_url(&url("http://a:8485")),
            "http://a:8485/api/v1/stats"
        );
    }
}
