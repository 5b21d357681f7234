//! A bounded per-peer queue (sans-IO): stanzas wait here while the link is down or busy, up
//! to a byte budget and a maximum age; what overflows or expires is handed back to be bounced.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// FIFO of items with their size and arrival time.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<(Instant, usize, T)>,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl<T> BoundedQueue<T> {
    pub fn new(max_bytes: usize, max_age: Duration) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age,
        }
    }

    /// Queues `item`; `Err(item)` when it does not fit in the byte budget.
    pub fn push(&mut self, item: T, size: usize, now: Instant) -> Result<(), T> {
        if self.bytes + size > self.max_bytes {
            return Err(item);
        }
        self.bytes += size;
        self.items.push_back((now, size, item));
        Ok(())
    }

    /// Removes and returns the items older than the maximum age at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some((t, _, _)) = self.items.front() {
            if now.saturating_duration_since(*t) < self.max_age {
                break;
            }
            if let Some((_, size, item)) = self.items.pop_front() {
                self.bytes -= size;
                out.push(item);
            }
        }
        out
    }

    /// Removes and returns everything (to send it).
    pub fn drain(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.items.drain(..).map(|(_, _, i)| i).collect()
    }

    /// Removes and returns the oldest items up to `max_bytes` in all (at least one, when
    /// any waits): the rest stays for later.
    pub fn drain_up_to(&mut self, max_bytes: usize) -> Vec<T> {
        let mut taken = 0;
        let mut out = Vec::new();
        while let Some((_, size, _)) = self.items.front() {
            if !out.is_empty() && taken + size > max_bytes {
                break;
            }
            let (_, size, item) = self.items.pop_front().expect("front exists");
            taken += size;
            self.bytes -= size;
            out.push(item);
        }
        out
    }

    /// When the oldest item expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.items.front().map(|(t, _, _)| *t + self.max_age)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_age_are_bounded() {
        let t0 = Instant::now();
        let mut q = BoundedQueue::new(100, Duration::from_secs(5));
        q.push("a", 60, t0).unwrap();
        assert_eq!(q.push("b", 50, t0), Err("b"));
        q.push("c", 40, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((q.len(), q.bytes()), (2, 100));
        assert_eq!(q.next_expiry(), Some(t0 + Duration::from_secs(5)));
        assert!(q.expire(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(q.expire(t0 + Duration::from_secs(5)), vec!["a"]);
        assert_eq!(q.bytes(), 40);
        q.push("d", 10, t0 + Duration::from_secs(6)).unwrap();
        q.push("e", 30, t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(q.drain_up_to(45), vec!["c"]);
        assert_eq!(q.drain_up_to(0), vec!["d"], "one item even over the budget");
        assert_eq!(q.bytes(), 30);
        q.push("f", 10, t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(q.drain(), vec!["e", "f"]);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }
}
