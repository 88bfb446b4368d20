//! The ids (`x-mailroute-id`) of messages this instance settled for good — delivered here or
//! failed — kept for a while, so that a second copy (redelivered after a crash or a cut
//! connection somewhere upstream, or injected twice) is acked without being routed again.
//!
//! Bounded by count and by age. Held and handed-over messages are not remembered: held mail
//! comes back on purpose, and a message handed over may legitimately return (ownership moved,
//! or a loop that `max-hops` must see). A restart empties the set, so duplicates that cross a
//! restart of the receiver still get through.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::broker::{HeaderValue, Message};
use crate::mail::routing::ID_HEADER;

pub struct RecentIds {
    limit: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

/// The id a message carries: `x-mailroute-id`, else its AMQP `message-id`. `None` for a message
/// with neither (hashing its body just to look for a duplicate would cost every message).
pub fn id_of(message: &Message) -> Option<&str> {
    message
        .header(ID_HEADER)
        .and_then(HeaderValue::as_str)
        .or(message.properties.message_id.as_deref())
        .filter(|id| !id.is_empty())
}

impl RecentIds {
    /// `limit` ids at most, each for `max_age` at most; `limit == 0` keeps nothing.
    pub fn new(limit: usize, max_age: Duration) -> Self {
        RecentIds {
            limit,
            max_age,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contains(&self, id: &str) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut inner = self.lock();
        self.evict(&mut inner, Instant::now());
        inner.seen.contains_key(id)
    }

    pub fn remember(&self, id: &str) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        // Remembered again: the new time counts, and it gets an entry of its own in the order,
        // or the id would outlive its age limit (its old entry no longer matches, and would
        // not remove it).
        inner.seen.insert(id.to_string(), now);
        inner.order.push_back((now, id.to_string()));
        self.evict(&mut inner, now);
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _)) = inner.order.front() {
            let old = now.duration_since(*at) > self.max_age;
            if !old && inner.order.len() <= self.limit {
                break;
            }
            if let Some((at, id)) = inner.order.pop_front() {
                // Only if not remembered again since (then a later entry stands for it).
                if inner.seen.get(&id) == Some(&at) {
                    inner.seen.remove(&id);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count() {
        let ids = RecentIds::new(2, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            ids.remember(id);
        }
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn bounded_by_age() {
        let ids = RecentIds::new(10, Duration::from_millis(20));
        ids.remember("a");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!ids.contains("a"));
        assert!(ids.is_empty());
    }

    #[test]
    fn an_id_remembered_twice_still_ages_out() {
        let ids = RecentIds::new(10, Duration::from_millis(20));
        ids.remember("a");
        ids.remember("a");
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            !ids.contains("a"),
            "remembered twice, it must still be forgotten"
        );
        assert!(ids.is_empty());
    }

    #[test]
    fn zero_keeps_nothing() {
        let ids = RecentIds::new(0, Duration::from_secs(60));
        ids.remember("a");
        assert!(!ids.contains("a"));
    }
}
