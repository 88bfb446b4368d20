//! What an instance did lately, said at INFO once per `log-summary-interval`: routed here,
//! handed over per peer, held, failed with its most frequent reasons. A failure reason not
//! seen in the current window is logged when it first happens, so an operator need not wait
//! for the summary to learn that mail is being failed, nor read every failure.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::messages::Outcome;

#[derive(Default)]
pub struct Summary {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    delivered: u64,
    held: u64,
    failed: u64,
    handed_over: BTreeMap<String, u64>,
    /// Failure reasons by class (the text before its first `:`).
    reasons: BTreeMap<String, u64>,
}

/// The class of a failure reason: "malformed message", "unroutable", "handover loop"; the rest
/// (an IP, a parse position) varies from message to message.
fn class(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason).trim()
}

impl Summary {
    pub fn record(&self, outcome: &Outcome) {
        // One lock a message, uncontended: the publish tasks share the arbiter's thread.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Outcome::Delivered => w.delivered += 1,
            Outcome::Held => w.held += 1,
            Outcome::Duplicate => {}
            Outcome::HandedOver { peer } => *w.handed_over.entry(peer.clone()).or_default() += 1,
            Outcome::Failed { reason } => {
                w.failed += 1;
                let count = w.reasons.entry(class(reason).to_string()).or_default();
                *count += 1;
                if *count == 1 {
                    warn!(%reason, "mail failed for a reason new in this summary window");
                }
            }
        }
    }

    /// Logs the window's line (if anything happened) and starts a new window.
    pub fn flush(&self, window: Duration) {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let handed: u64 = w.handed_over.values().sum();
        if w.delivered + w.held + w.failed + handed == 0 {
            return;
        }
        let join = |m: &BTreeMap<String, u64>, top: usize| {
            let mut v: Vec<(&String, &u64)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.iter()
                .take(top)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        info!(
            delivered = w.delivered,
            handed_over = handed,
            held = w.held,
            failed = w.failed,
            "summary of the last {window:?}: delivered here {}, handed over {handed} ({}), held {}, failed {}{}",
            w.delivered,
            join(&w.handed_over, usize::MAX),
            w.held,
            w.failed,
            if w.failed > 0 {
                format!(" ({})", join(&w.reasons, 3))
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_classed_by_their_first_part() {
        assert_eq!(
            class("unroutable: no instance owns 192.0.2.1"),
            "unroutable"
        );
        assert_eq!(
            class("malformed message: body is not a JSON object: EOF"),
            "malformed message"
        );
        assert_eq!(class("plain"), "plain");
    }
}
