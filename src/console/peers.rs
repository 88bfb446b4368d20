//! The counters of the other instances, read from their own consoles' `/api/v1/stats` when
//! the page is drawn: each instance counts only what it did, and a peer whose console does
//! not answer (off, firewalled, down) is shown as unreachable rather than as zeros.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use mailroute_actors::stats::StatsSnapshot;

/// Long enough for a busy peer, short enough that one dead peer does not stall the page.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Peers asked at once; a cluster of hundreds is asked in waves.
const CONCURRENT: usize = 16;

/// `url/api/v1/stats`, whether or not the announced URL ends in `/`.
fn stats_url(console: &str) -> String {
    format!("{}/api/v1/stats", console.trim_end_matches('/'))
}

async fn fetch(client: &awc::Client, console: &str) -> Option<StatsSnapshot> {
    let mut response = client
        .get(stats_url(console))
        .timeout(TIMEOUT)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<StatsSnapshot>().await.ok()
}

/// Per console URL, the counters it reported (`None`: unreachable).
pub async fn stats(consoles: Vec<String>) -> HashMap<String, Option<StatsSnapshot>> {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let client = &client;
    futures::stream::iter(consoles)
        .map(|url| async move {
            let stats = fetch(client, &url).await;
            (url, stats)
        })
        .buffer_unordered(CONCURRENT)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_url_joins_either_form() {
        assert_eq!(stats_url("http://a:8485/"), "http://a:8485/api/v1/stats");
        assert_eq!(stats_url("http://a:8485"), "http://a:8485/api/v1/stats");
    }
}
