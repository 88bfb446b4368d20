//! Waiting on a condition instead of sleeping.

use std::future::Future;
use std::time::Duration;

/// Polls `condition` until it holds, at most `limit`; `Err` names what never happened.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
