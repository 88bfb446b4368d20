//! How long an outbox message waits before it is requeued after its outcome was not
//! confirmed, by how long its destination has been failing; the clock is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backoff;

/// A destination's failures count as one run while they come less than this far apart.
const FAILURE_GAP: Duration = Duration::from_secs(10);
/// Runs kept at most before the ended ones are dropped.
const MAX_RUNS: usize = 1024;

/// Per destination, when its current run of unconfirmed outcomes began and when it last
/// failed. A message that fails again waits about half as long as its destination has been
/// failing before it is requeued (100 ms to 10 s): a destination that stays broken is retried
/// every few seconds, never in a loop, and mail for the others flows meanwhile.
#[derive(Default)]
pub struct FailureRuns {
    runs: HashMap<String, (Instant, Instant)>,
}

impl FailureRuns {
    /// The wait before requeueing a message whose outcome for `destination` was not
    /// confirmed. A first failure is retried at once: hundreds fail together when a channel
    /// dies. A message that fails again (`redelivered`) is what would loop.
    pub fn requeue_delay(
        &mut self,
        destination: String,
        redelivered: bool,
        now: Instant,
    ) -> Duration {
        if self.runs.len() > MAX_RUNS {
            self.runs
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < FAILURE_GAP);
        }
        let (since, last) = self.runs.entry(destination).or_insert((now, now));
        if now.saturating_duration_since(*last) >= FAILURE_GAP {
            *since = now;
        }
        *last = now;
        if redelivered {
            backoff::requeue_delay(now.saturating_duration_since(*since))
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first failure goes back at once; a repeat waits half the run so far; a pause of
    /// FAILURE_GAP starts a new run; each destination has its own.
    #[test]
    fn the_wait_follows_the_destinations_run() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut runs = FailureRuns::default();
        assert_eq!(runs.requeue_delay("b".into(), false, t0), Duration::ZERO);
        let repeat = runs.requeue_delay("b".into(), true, t0 + 4 * s);
        assert_eq!(repeat, backoff::requeue_delay(4 * s));
        let other = runs.requeue_delay("c".into(), true, t0 + 4 * s);
        assert_eq!(other, backoff::requeue_delay(Duration::ZERO));
        let after_gap = runs.requeue_delay("b".into(), true, t0 + 20 * s);
        assert_eq!(after_gap, backoff::requeue_delay(Duration::ZERO));
    }
}
