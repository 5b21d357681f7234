//! Rate-limited logging of repeated events (bounces, denials, refused streams): the first
//! event of a (party, reason) pair is logged at once, later ones at most once per window,
//! with the number left out since the previous line. An attack that causes a million
//! bounces writes a few lines per remote domain and minute, not a million. Sans-IO: the
//! caller passes the time, the caller logs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one (party, reason) pair may be logged.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How many pairs are tracked; past it, new parties share the key `other`.
pub const MAX_KEYS: usize = 4096;

#[derive(Debug)]
struct Seen {
    logged_at: Instant,
    left_out: u64,
}

/// The per-(party, reason) memory of when a line was last written.
#[derive(Debug)]
pub struct LogLimit {
    window: Duration,
    max_keys: usize,
    seen: Mutex<HashMap<(String, String), Seen>>,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(WINDOW, MAX_KEYS)
    }
}

impl LogLimit {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// One event of `reason` caused by `party` (a remote domain, an address) at `now`:
    /// `Some(n)` when a line should be written now, `n` being how many events of the pair
    /// were left out since the previous line; `None` when this one is left out.
    pub fn admit(&self, party: &str, reason: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().expect("log limit lock");
        let mut key = (party.to_ascii_lowercase(), reason.to_owned());
        if !seen.contains_key(&key) && seen.len() >= self.max_keys {
            let window = self.window;
            seen.retain(|_, s| now.duration_since(s.logged_at) < window || s.left_out > 0);
            if seen.len() >= self.max_keys {
                key = ("other".to_owned(), reason.to_owned());
            }
        }
        match seen.get_mut(&key) {
            Some(s) if now.duration_since(s.logged_at) < self.window => {
                s.left_out += 1;
                None
            }
            Some(s) => {
                let n = s.left_out;
                *s = Seen {
                    logged_at: now,
                    left_out: 0,
                };
                Some(n)
            }
            None => {
                seen.insert(
                    key,
                    Seen {
                        logged_at: now,
                        left_out: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_logged_then_one_line_per_window_with_the_count_left_out() {
        let l = LogLimit::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(l.admit("x.test", "limit", t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(
                l.admit("X.test", "limit", t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another reason or party is its own line.
        assert_eq!(l.admit("x.test", "policy", t0), Some(0));
        assert_eq!(l.admit("y.test", "limit", t0), Some(0));
        assert_eq!(
            l.admit("x.test", "limit", t0 + Duration::from_secs(10)),
            Some(1000)
        );
        assert_eq!(
            l.admit("x.test", "limit", t0 + Duration::from_secs(11)),
            None
        );
    }

    #[test]
    fn many_parties_share_one_key_past_the_bound() {
        let l = LogLimit::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for d in ["a", "b", "c"] {
            assert_eq!(l.admit(d, "r", t0), Some(0));
        }
        // Full: the fourth and fifth party are `other`, logged once per window together.
        assert_eq!(l.admit("d", "r", t0), Some(0));
        assert_eq!(l.admit("e", "r", t0), None);
        assert_eq!(l.seen.lock().unwrap().len(), 3 + 1);
        // Once the old pairs' windows passed with nothing left out, they make room.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(l.admit("f", "r", later), Some(0));
        assert!(
            l.seen
                .lock()
                .unwrap()
                .contains_key(&("f".to_owned(), "r".to_owned()))
        );
    }
}
