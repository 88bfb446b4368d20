//! Counting every copy of every message where it ended up, by test id: nothing lost, no copy
//! where its message does not belong (a duplicate in a wrong place is a misroute), no stray.

use std::collections::HashMap;

use super::test_id;
use crate::broker::{HeaderValue, Message};
use crate::mail::routing::REASON_HEADER;

/// Where each message must end up. The places where messages are found are always one of the
/// first four; the last two say which places a test accepts when the owner may be gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    Delivered(String),
    Held(String),
    Failed(String),
    /// Found in an instance's outbox after it stopped, never routed: no test accepts it.
    Unrouted(String),
    /// Held by whichever instance received it (nobody owns its IP).
    HeldAnywhere,
    /// Delivered by its owner, or held anywhere if the owner had left when it arrived.
    DeliveredOrHeld(String),
}

impl Expect {
    /// Whether finding a message at `place` meets this expectation.
    pub fn accepts(&self, place: &Expect) -> bool {
        match (self, place) {
            (Expect::HeldAnywhere, Expect::Held(_)) => true,
            (Expect::DeliveredOrHeld(owner), Expect::Delivered(by)) => owner == by,
            (Expect::DeliveredOrHeld(_), Expect::Held(_)) => true,
            _ => self == place,
        }
    }
}

/// The accounting of one run, by message id.
#[derive(Debug, Default)]
pub struct Accounting {
    pub sent: usize,
    pub delivered: HashMap<String, usize>,
    pub held: usize,
    pub failed: usize,
    pub lost: Vec<String>,
    pub misplaced: Vec<String>,
    /// `id: expected …, found …` for each misplaced message.
    pub misplaced_detail: Vec<String>,
    /// Found messages whose test id is missing or was never sent.
    pub strays: Vec<String>,
    pub duplicates: usize,
    /// `id: places` of the first duplicated messages, for the failure message.
    pub duplicate_detail: Vec<String>,
    pub failed_without_reason: usize,
}

impl Accounting {
    /// Nothing lost, nothing where it does not belong; otherwise shows the first offenders
    /// and `context` (the instances' logs, say).
    pub fn assert_complete(&self, context: &str) {
        assert!(
            self.lost.is_empty(),
            "lost {:?}\n{context}",
            &self.lost[..self.lost.len().min(5)]
        );
        assert!(
            self.misplaced.is_empty(),
            "misplaced {:?}",
            &self.misplaced_detail[..self.misplaced_detail.len().min(5)]
        );
        assert!(
            self.strays.is_empty(),
            "strays {:?}",
            &self.strays[..self.strays.len().min(5)]
        );
    }
}

/// Collects `(place, messages)` pairs and compares them with what was sent. Every copy counts:
/// a duplicate in a wrong place is misplaced even if another copy is right, and a message
/// without a known test id is a stray, never found.
pub fn account(
    expected: &HashMap<String, Expect>,
    found: Vec<(Expect, Vec<Message>)>,
) -> Accounting {
    let mut acc = Accounting {
        sent: expected.len(),
        ..Accounting::default()
    };
    let mut seen: HashMap<String, Vec<Expect>> = HashMap::new();
    for (place, messages) in found {
        for m in messages {
            match &place {
                Expect::Delivered(who) => *acc.delivered.entry(who.clone()).or_default() += 1,
                Expect::Held(_) => acc.held += 1,
                Expect::Failed(_) => {
                    acc.failed += 1;
                    if m.header(REASON_HEADER)
                        .and_then(HeaderValue::as_str)
                        .is_none_or(str::is_empty)
                    {
                        acc.failed_without_reason += 1;
                    }
                }
                Expect::Unrouted(_) => {}
                Expect::HeldAnywhere | Expect::DeliveredOrHeld(_) => {
                    panic!("{place:?} is an expectation, not a place a message is found")
                }
            }
            match test_id(&m) {
                Some(id) if expected.contains_key(&id) => {
                    seen.entry(id).or_default().push(place.clone())
                }
                other => acc.strays.push(format!("{other:?} in {place:?}")),
            }
        }
    }
    for (id, want) in expected {
        match seen.get(id) {
            None => acc.lost.push(id.clone()),
            Some(places) if !places.iter().all(|p| want.accepts(p)) => {
                acc.misplaced.push(id.clone());
                acc.misplaced_detail
                    .push(format!("{id}: expected {want:?}, found {places:?}"));
            }
            Some(_) => {}
        }
    }
    acc.duplicates = seen.values().map(|v| v.len().saturating_sub(1)).sum();
    acc.duplicate_detail = seen
        .iter()
        .filter(|(_, places)| places.len() > 1)
        .take(5)
        .map(|(id, places)| format!("{id}: {places:?}"))
        .collect();
    acc
}
