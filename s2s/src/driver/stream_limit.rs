//! The policy's `max_streams`: how many inbound streams each remote domain has open, kept for
//! enforcement only (the per-domain status is a display that may forget domains; this may not).
//!
//! A domain is in the map exactly while it has an open stream, so the map is bounded by the
//! streams themselves (which the listener bounds) and nothing is ever evicted: no eviction can
//! lift a limit. Checking the limit and counting the new stream is one step under one lock, so
//! two streams authenticating at once cannot both pass a limit of one.
//!
//! In a cluster ([`SharedStreams`], set by the gateway) the limit holds for the cluster: the
//! streams the other nodes have open count too, and every change of this node's count is
//! handed over for publication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The other nodes of a cluster, for a cluster-wide `max_streams`.
pub trait SharedStreams: Send + Sync {
    /// Whether one more stream of `remote` may open on this node, which has `local` open,
    /// under a limit of `max` (`Err`: the count that reached the limit).
    fn admit(&self, remote: &str, local: u32, max: u32) -> Result<(), u32>;
    /// This node now has `local` streams of `remote` open. Called under the lock: must not
    /// block.
    fn changed(&self, remote: &str, local: u32);
}

/// Open inbound streams per remote domain.
#[derive(Default)]
pub struct StreamLimits {
    open: Mutex<HashMap<String, u32>>,
    shared: OnceLock<Arc<dyn SharedStreams>>,
}

impl std::fmt::Debug for StreamLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLimits")
            .field("open", &self.open)
            .field("shared", &self.shared.get().is_some())
            .finish()
    }
}

/// One counted stream of a remote domain; the count goes down when it is dropped.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    remote: String,
}

impl StreamLimits {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts a new stream of `remote` unless it has `max` open already (`Err`: how many).
    pub fn try_open(self: &Arc<Self>, remote: &str, max: Option<u32>) -> Result<StreamSlot, u32> {
        let mut open = self.open.lock().expect("stream limits lock");
        let n = open.get(remote).copied().unwrap_or(0);
        let shared = self.shared.get();
        if let Some(max) = max {
            match shared {
                Some(s) => s.admit(remote, n, max)?,
                None if n >= max => return Err(n),
                None => {}
            }
        }
        open.insert(remote.to_owned(), n + 1);
        if let Some(s) = shared {
            s.changed(remote, n + 1);
        }
        Ok(StreamSlot {
            limits: self.clone(),
            remote: remote.to_owned(),
        })
    }

    /// Makes the limits cluster-wide (once, before the first stream).
    pub fn set_shared(&self, shared: Arc<dyn SharedStreams>) {
        let _ = self.shared.set(shared);
    }

    /// Streams of `remote` open now.
    pub fn open(&self, remote: &str) -> u32 {
        self.open
            .lock()
            .expect("stream limits lock")
            .get(remote)
            .copied()
            .unwrap_or(0)
    }

    /// Remote domains with a stream open now.
    pub fn domains(&self) -> usize {
        self.open.lock().expect("stream limits lock").len()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("stream limits lock");
        if let Some(n) = open.get_mut(&self.remote) {
            *n -= 1;
            let left = *n;
            if left == 0 {
                open.remove(&self.remote);
            }
            if let Some(s) = self.limits.shared.get() {
                s.changed(&self.remote, left);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_holds_however_many_other_domains_have_streams() {
        let l = StreamLimits::new();
        // Far more domains than the status display keeps (10,000).
        let others: Vec<StreamSlot> = (0..20_000)
            .map(|i| l.try_open(&format!("d{i}.test"), Some(1)).unwrap())
            .collect();
        let first = l.try_open("late.test", Some(1)).unwrap();
        assert_eq!(l.try_open("late.test", Some(1)).unwrap_err(), 1);
        assert_eq!(l.open("late.test"), 1);
        drop(first);
        assert_eq!(l.open("late.test"), 0);
        let _again = l.try_open("late.test", Some(1)).unwrap();
        drop(others);
        assert_eq!(l.domains(), 1, "only domains with open streams are kept");
    }

    #[test]
    fn concurrent_opens_never_pass_the_limit_together() {
        let l = StreamLimits::new();
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || l.try_open("b.test", Some(3)).map(std::mem::forget).is_ok())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 3);
        assert_eq!(l.open("b.test"), 3);
    }

    /// Two nodes' streams in one count.
    struct OtherNode {
        open: u32,
        seen: Mutex<Vec<(String, u32)>>,
    }

    impl SharedStreams for OtherNode {
        fn admit(&self, _remote: &str, local: u32, max: u32) -> Result<(), u32> {
            if local + self.open >= max {
                Err(local + self.open)
            } else {
                Ok(())
            }
        }
        fn changed(&self, remote: &str, local: u32) {
            self.seen.lock().unwrap().push((remote.to_owned(), local));
        }
    }

    #[test]
    fn a_shared_count_decides_and_hears_every_change() {
        let l = StreamLimits::new();
        let other = Arc::new(OtherNode {
            open: 2,
            seen: Mutex::new(Vec::new()),
        });
        l.set_shared(other.clone());
        let a = l.try_open("b.test", Some(3)).unwrap();
        assert_eq!(l.try_open("b.test", Some(3)).unwrap_err(), 3);
        let b = l.try_open("b.test", None).unwrap();
        drop((a, b));
        assert_eq!(
            *other.seen.lock().unwrap(),
            [
                ("b.test".to_owned(), 1),
                ("b.test".to_owned(), 2),
                ("b.test".to_owned(), 1),
                ("b.test".to_owned(), 0)
            ]
        );
    }

    #[test]
    fn no_limit_still_counts() {
        let l = StreamLimits::new();
        let a = l.try_open("b.test", None).unwrap();
        let b = l.try_open("b.test", None).unwrap();
        assert_eq!(l.open("b.test"), 2);
        drop((a, b));
        assert_eq!(l.domains(), 0);
    }
}
