//! The policy's `max_streams`: how many inbound streams each remote domain has open, kept for
//! enforcement only (the per-domain status is a display that may forget domains; this may not).
//!
//! A domain is in the map exactly while it has an open stream, so the map is bounded by the
//! streams themselves (which the listener bounds) and nothing is ever evicted: no eviction can
//! lift a limit. Checking the limit and counting the new stream is one step under one lock, so
//! two streams authenticating at once cannot both pass a limit of one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open inbound streams per remote domain.
#[derive(Debug, Default)]
pub struct StreamLimits {
    open: Mutex<HashMap<String, u32>>,
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
        if max.is_some_and(|max| n >= max) {
            return Err(n);
        }
        open.insert(remote.to_owned(), n + 1);
        Ok(StreamSlot {
            limits: self.clone(),
            remote: remote.to_owned(),
        })
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
            if *n == 0 {
                open.remove(&self.remote);
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
