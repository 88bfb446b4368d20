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

#[cfg(test)]
mod tests {
    use super::*;

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
