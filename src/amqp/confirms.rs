//! The fate of each mandatory publish, from its own id.
//!
//! AMQP does not say which publish a `basic.return` belongs to. lapin pairs each return with
//! the next confirm it resolves, and when RabbitMQ confirms a burst with one `multiple` ack it
//! resolves them in hash-map order: a returned publish can be told "routed" while another,
//! routed, is handed its return. So every mandatory publish carries an id of its own (header
//! [`PUBLISH_ID_HEADER`]); a return, whichever confirm lapin hands it to, is filed under the id
//! read back from it, and a publish learns its fate from the file, never from the pairing.
//!
//! When is the file complete for a publish P? RabbitMQ sends P's return before P's ack, and
//! lapin pops waiting returns in arrival order while it resolves one ack frame under one
//! lock: P's return is carried by some confirm of the frame that confirms P. Those confirms
//! are all of publishes outstanding when P's confirm came. So P's fate is final once P's id
//! is filed, or once every publish that was outstanding then has been resolved and filed what
//! it carried. That costs a routed publish at most about one more round trip of waiting,
//! never a guess.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use lapin::message::BasicReturnMessage;
use lapin::types::AMQPValue;
use tokio::sync::oneshot;

/// The header that carries a mandatory publish's id, on the copy too (harmless there: a
/// relay or a later handover sets its own).
pub const PUBLISH_ID_HEADER: &str = "x-mailroute-publish";

/// A return as lapin handed it over: the publish it names, and why it came back.
#[derive(Debug, Clone)]
pub struct Carried {
    pub owner: Option<u64>,
    pub reply_code: u16,
    pub reply_text: String,
}

impl Carried {
    pub fn from_lapin(returned: &BasicReturnMessage) -> Carried {
        Carried {
            owner: publish_id(returned),
            reply_code: returned.reply_code,
            reply_text: returned.reply_text.as_str().to_owned(),
        }
    }
}

/// What became of one publish.
#[derive(Debug)]
pub enum Fate {
    Routed,
    Returned { reply_code: u16, reply_text: String },
}

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Sent, not yet confirmed (nor failed).
    outstanding: BTreeSet<u64>,
    /// Returns read back, by the id in them, whose publish has not been told yet.
    returned: HashMap<u64, (u16, String)>,
    /// Confirmed publishes waiting until every publish outstanding at their confirm (ids up
    /// to the key) has filed what it carried.
    waiting: BTreeMap<u64, Vec<(u64, oneshot::Sender<Fate>)>>,
}

impl Ledger {
    /// A new publish: its id, counted as outstanding.
    pub fn begin(&self) -> u64 {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner.outstanding.insert(id);
        id
    }

    /// The publish failed (no confirm: a timeout, a closed channel): not outstanding any more.
    pub fn abandon(&self, id: u64) {
        let mut inner = self.lock();
        inner.outstanding.remove(&id);
        inner.returned.remove(&id);
        inner.release();
    }

    /// The publish `id` was confirmed, carrying `carried` (maybe another publish's return).
    /// Resolves to its own fate.
    pub async fn confirmed(&self, id: u64, carried: Option<Carried>) -> Fate {
        let rx = {
            let mut inner = self.lock();
            if let Some(carried) = carried {
                match carried.owner {
                    Some(owner) => {
                        inner
                            .returned
                            .insert(owner, (carried.reply_code, carried.reply_text));
                    }
                    None => tracing::warn!("a returned message without a publish id; ignored"),
                }
            }
            inner.outstanding.remove(&id);
            let (tx, rx) = oneshot::channel();
            match inner.outstanding.last().copied() {
                // Every publish that could carry its return is in: decided now.
                None => {
                    let fate = inner.fate(id);
                    inner.release();
                    return fate;
                }
                Some(last) => {
                    inner.waiting.entry(last).or_default().push((id, tx));
                    inner.release();
                }
            }
            rx
        };
        // Every outstanding publish resolves (confirmed, or abandoned when it fails), so the
        // answer comes: the ledger outlives this call (the publish holds its channel), and
        // only a release drops a waiter's sender, after sending.
        rx.await.unwrap_or(Fate::Routed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn fate(&mut self, id: u64) -> Fate {
        match self.returned.remove(&id) {
            Some((reply_code, reply_text)) => Fate::Returned {
                reply_code,
                reply_text,
            },
            None => Fate::Routed,
        }
    }

    /// Tells every waiting publish whose fate is final: its return is filed, or every
    /// publish up to its mark has resolved.
    fn release(&mut self) {
        let first = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let done: Vec<u64> = self.waiting.range(..first).map(|(mark, _)| *mark).collect();
        for mark in done {
            for (id, tx) in self.waiting.remove(&mark).unwrap_or_default() {
                let fate = self.fate(id);
                let _ = tx.send(fate);
            }
        }
        // A return filed for a waiting publish decides it at once.
        if self.returned.is_empty() {
            return;
        }
        let returned: Vec<(u64, u64)> = self
            .waiting
            .iter()
            .flat_map(|(mark, list)| list.iter().map(move |(id, _)| (*mark, *id)))
            .filter(|(_, id)| self.returned.contains_key(id))
            .collect();
        for (mark, id) in returned {
            let Some(list) = self.waiting.get_mut(&mark) else {
                continue;
            };
            let Some(at) = list.iter().position(|(i, _)| *i == id) else {
                continue;
            };
            let (_, tx) = list.swap_remove(at);
            if list.is_empty() {
                self.waiting.remove(&mark);
            }
            let fate = self.fate(id);
            let _ = tx.send(fate);
        }
        // Returns of publishes that are neither outstanding nor waiting failed already (their
        // originals were requeued): nothing to tell.
        let outstanding = &self.outstanding;
        self.returned.retain(|id, _| outstanding.contains(id));
    }
}

fn publish_id(returned: &BasicReturnMessage) -> Option<u64> {
    let headers = returned.delivery.properties.headers().as_ref()?;
    match headers.inner().get(PUBLISH_ID_HEADER)? {
        AMQPValue::LongLongInt(id) => u64::try_from(*id).ok(),
        AMQPValue::LongUInt(id) => Some(u64::from(*id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned(id: u64) -> Carried {
        Carried {
            owner: Some(id),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }
    }

    /// Two returned publishes whose returns lapin swapped, and a routed one handed a third's
    /// return: each is told its own fate, whatever order their confirms are read in.
    #[tokio::test]
    async fn swapped_returns_reach_their_own_publishes() {
        let ledger = std::sync::Arc::new(Ledger::default());
        let ids: Vec<u64> = (0..4).map(|_| ledger.begin()).collect();
        // 1 and 2 returned, 3 routed, 4 returned; lapin paired: 1 <- ret(2), 2 <- ret(1),
        // 3 <- ret(4), 4 <- nothing. Read in the order 3, 1, 4, 2.
        let fate = |id: u64, carried: Option<u64>| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.confirmed(id, carried.map(returned)).await })
        };
        let f3 = fate(ids[2], Some(ids[3]));
        let f1 = fate(ids[0], Some(ids[1]));
        let f4 = fate(ids[3], None);
        let f2 = fate(ids[1], Some(ids[0]));
        let is_returned = |f: Fate| matches!(f, Fate::Returned { .. });
        assert!(is_returned(f1.await.unwrap()));
        assert!(is_returned(f2.await.unwrap()));
        assert!(matches!(f3.await.unwrap(), Fate::Routed));
        assert!(is_returned(f4.await.unwrap()));
    }

    #[tokio::test]
    async fn a_routed_publish_waits_for_those_outstanding_at_its_confirm() {
        let ledger = std::sync::Arc::new(Ledger::default());
        let (a, b) = (ledger.begin(), ledger.begin());
        let early = {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.confirmed(a, None).await })
        };
        tokio::task::yield_now().await;
        assert!(!early.is_finished(), "b could still carry a's return");
        // b's confirm carries a's return: a was returned after all.
        assert!(matches!(
            ledger.confirmed(b, Some(returned(a))).await,
            Fate::Routed
        ));
        assert!(matches!(early.await.unwrap(), Fate::Returned { .. }));
        // An abandoned publish releases those waiting on it.
        let (c, d) = (ledger.begin(), ledger.begin());
        let waiting = {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.confirmed(c, None).await })
        };
        tokio::task::yield_now().await;
        ledger.abandon(d);
        assert!(matches!(waiting.await.unwrap(), Fate::Routed));
    }
}
