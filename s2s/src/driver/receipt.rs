//! Receipts: how a stanza that came in on an acknowledging link (XEP-0198 on an inbound s2s
//! stream) tells that link it has been taken care of. The receipt travels with the stanza
//! through the router and the next link; it fires when the last copy of the stanza is dropped,
//! which happens when the next hop confirmed it (its ledger lets go), when fedgate answered it
//! with an error (the bounce replaces it), or when it was counted as dropped. A stanza resent on
//! a new stream keeps its receipt, so the sender is acknowledged only for what the next hop took.
//! If fedgate dies, nothing fires, and the sender still holds what was not acknowledged.
//!
//! Any acknowledging link can hand receipts out: it implements [`Confirm`] (XEP-0198 streams
//! use [`Receipts`]; intercluster links count routes of their own).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ack::Window;

/// Who is told when a receipt fires: the receiving side of an acknowledging link.
pub trait Confirm: Send + Sync + 'static {
    /// The stanza numbered `seq` was taken care of.
    fn confirm(&self, seq: u64);
}

/// The receiving side of one acknowledging stream, shared with the receipts it handed out.
#[derive(Default)]
pub struct Receipts {
    window: Mutex<Window>,
    changed: Notify,
    /// The confirmed count last told to the peer.
    told: std::sync::atomic::AtomicU64,
}

impl Receipts {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Count a received stanza and give it its receipt.
    pub fn issue(self: &Arc<Self>) -> Receipt {
        let seq = self.window.lock().expect("receipt window").received();
        Receipt::new(seq, self.clone())
    }

    /// (confirmed, received) so far.
    pub fn counts(&self) -> (u64, u64) {
        let w = self.window.lock().expect("receipt window");
        (w.confirmed(), w.received_total())
    }

    /// The XEP-0198 `h` to send: the confirmed prefix modulo 2^32.
    pub fn h(&self) -> u32 {
        self.window.lock().expect("receipt window").h()
    }

    /// The `h` to tell the peer now, and how many stanzas it acknowledges that earlier
    /// answers did not.
    pub fn tell(&self) -> (u32, u64) {
        let w = self.window.lock().expect("receipt window");
        let before = self
            .told
            .swap(w.confirmed(), std::sync::atomic::Ordering::Relaxed);
        (w.h(), w.confirmed().saturating_sub(before))
    }

    /// Resolves after the confirmed prefix grew (a permit is kept if nobody waited).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl Confirm for Receipts {
    fn confirm(&self, seq: u64) {
        let grew = self
            .window
            .lock()
            .map(|mut w| w.confirm(seq))
            .unwrap_or(false);
        if grew {
            self.changed.notify_one();
        }
    }
}

/// Carried by a stanza; fires when the last clone is dropped.
#[derive(Clone)]
pub struct Receipt(Arc<Inner>);

impl Receipt {
    /// A receipt for stanza `seq` of `owner`'s link.
    pub fn new(seq: u64, owner: Arc<dyn Confirm>) -> Self {
        Self(Arc::new(Inner { seq, owner }))
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Receipt({})", self.0.seq)
    }
}

struct Inner {
    seq: u64,
    owner: Arc<dyn Confirm>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.owner.confirm(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receipt_fires_when_its_last_copy_is_dropped() {
        let r = Receipts::new();
        let a = r.issue();
        let b = r.issue();
        let a2 = a.clone();
        drop(b);
        assert_eq!(r.counts(), (0, 2), "b waits for a");
        drop(a);
        assert_eq!(r.counts(), (0, 2), "a copy of a is still alive");
        drop(a2);
        assert_eq!(r.counts(), (2, 2));
        assert_eq!(r.h(), 2);
        assert_eq!(r.tell(), (2, 2));
        assert_eq!(r.tell(), (2, 0), "told once");
        // The growth left a permit for the next waiter.
        tokio::time::timeout(std::time::Duration::from_secs(1), r.changed())
            .await
            .expect("notified");
    }
}
