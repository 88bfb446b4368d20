//! Reconnect delays: exponential, capped, with jitter so a restarted broker is not hit by every
//! instance in the same millisecond.

use std::time::Duration;

use rand::Rng;

const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(10);

/// Delay before attempt number `attempt` (0 = first try, no delay).
pub fn delay(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let exp = BASE.saturating_mul(1u32 << attempt.min(16)).min(CAP);
    // Full jitter in the upper half: never less than half the step, never above the cap.
    let half = exp / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// How long to wait before requeueing a message whose outcome could not be confirmed, when
/// outcomes have been failing for `failing_for`: half of that, between 100 ms and 10 s.
pub fn requeue_delay(failing_for: Duration) -> Duration {
    (failing_for / 2).clamp(BASE, CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_delay_follows_the_outage() {
        assert_eq!(requeue_delay(Duration::ZERO), BASE);
        assert_eq!(
            requeue_delay(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(requeue_delay(Duration::from_secs(3600)), CAP);
    }

    #[test]
    fn grows_and_caps() {
        assert_eq!(delay(0), Duration::ZERO);
        for attempt in 1..40 {
            let d = delay(attempt);
            assert!(d <= CAP, "{attempt}: {d:?}");
            assert!(d >= BASE, "{attempt}: {d:?}");
        }
        assert!(delay(30) >= CAP / 2);
    }
}
