//! Signed operator commands (`Drain`, `Resume`, `Reload`, `ReloadOne`) are acted on at most
//! once each. A signed frame is fresh for `cluster-freshness` either side of the receiver's
//! clock, and anyone who can bind a queue to the cluster exchange can copy it and publish it
//! again within that window; the copy is byte for byte the same frame, so its HMAC tag is the
//! same. The guard remembers the tags of the commands it let through for twice the window
//! (after that a copy is stale and the codec drops it), with the clock passed in.
//!
//! Why the tag and not a nonce field: the tag already names the frame (its content and the
//! millisecond it was sent, under the secret), it needs no change to the wire format, and an
//! older sender's commands are covered too. Two commands identical in content sent in the same
//! millisecond by one instance are one command.

use std::collections::{HashMap, VecDeque};

use crate::cluster::wire::TAG;

/// Commands remembered at most; the oldest go first beyond it (commands are rare).
const REMEMBERED: usize = 10_000;

#[derive(Debug)]
pub struct ReplayGuard {
    /// How long a tag is remembered, in ms.
    keep_ms: u64,
    seen: HashMap<[u8; TAG], u64>,
    /// Tags in the order seen, with when: the front expires first.
    order: VecDeque<([u8; TAG], u64)>,
}

impl ReplayGuard {
    pub fn new(freshness: std::time::Duration) -> Self {
        ReplayGuard {
            keep_ms: u64::try_from(freshness.as_millis())
                .unwrap_or(u64::MAX / 2)
                .saturating_mul(2),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the frame with `tag` is seen for the first time at `now_ms` (then remembered).
    pub fn first_time(&mut self, tag: [u8; TAG], now_ms: u64) -> bool {
        while let Some((old, at)) = self.order.front().copied() {
            if now_ms.saturating_sub(at) < self.keep_ms && self.order.len() < REMEMBERED {
                break;
            }
            // A tag is in `order` once: it is only inserted again after it left both.
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.contains_key(&tag) {
            return false;
        }
        self.seen.insert(tag, now_ms);
        self.order.push_back((tag, now_ms));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tag_passes_once_while_remembered() {
        let mut guard = ReplayGuard::new(Duration::from_secs(30));
        let (a, b) = ([1u8; TAG], [2u8; TAG]);
        assert!(guard.first_time(a, 1_000));
        assert!(!guard.first_time(a, 1_001));
        assert!(guard.first_time(b, 2_000));
        assert!(!guard.first_time(a, 60_999), "within twice the window");
        // Past twice the window a copy is stale for the codec; the guard may forget it.
        assert!(guard.first_time(a, 61_001));
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut guard = ReplayGuard::new(Duration::from_secs(30));
        for i in 0..(REMEMBERED as u32 + 10) {
            let mut tag = [0u8; TAG];
            tag[..4].copy_from_slice(&i.to_be_bytes());
            assert!(guard.first_time(tag, 5));
        }
        assert!(guard.seen.len() <= REMEMBERED);
    }
}
