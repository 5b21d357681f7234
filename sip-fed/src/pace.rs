//! Outbound request pacing for one partner: a token bucket in front of the connection.
//!
//! Microsoft edges limit a discovered federation partner to 20 SIP messages per second; a
//! burst above that (a few hundred users signing in, each fetching presence) would be refused
//! or dropped there. [`Pacer`] lets requests through at `rate` per second with a burst of one
//! second's worth, keeps the rest in order, and gives back those that waited longer than
//! `max_wait` (or found the queue full) so the caller fails them with a typed error instead of
//! letting them hit the transaction timeout. Sans-IO: the caller passes `now` and asks
//! [`Pacer::next_deadline`] when to call [`Pacer::poll`] again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Float slack when counting whole tokens (refills in small steps add up to 0.999…).
const EPS: f64 = 1e-9;

/// What [`Pacer::offer`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Send it now.
    Now(T),
    /// It waits; [`Pacer::poll`] releases it.
    Queued,
    /// The queue is full: fail it.
    Refused(T),
}

/// A token bucket with a FIFO of waiting items.
#[derive(Debug)]
pub struct Pacer<T> {
    /// Tokens per second; 0 means no limit.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    max_wait: Duration,
    max_queued: usize,
    waiting: VecDeque<(Instant, T)>,
}

impl<T> Pacer<T> {
    /// `rate` requests per second (0: unlimited), burst of `max(rate, 1)`; an item waits at
    /// most `max_wait`, and at most `max_queued` wait.
    pub fn new(rate: f64, max_wait: Duration, max_queued: usize, now: Instant) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            0.0
        };
        let burst = rate.max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
            max_wait,
            max_queued,
            waiting: VecDeque::new(),
        }
    }

    /// Whether the pacer lets everything through.
    pub fn unlimited(&self) -> bool {
        self.rate == 0.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// An item to send: now, later (queued behind those already waiting) or not at all.
    pub fn offer(&mut self, item: T, now: Instant) -> Admit<T> {
        if self.unlimited() {
            return Admit::Now(item);
        }
        self.refill(now);
        if self.waiting.is_empty() && self.tokens >= 1.0 - EPS {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Admit::Now(item);
        }
        if self.waiting.len() >= self.max_queued {
            return Admit::Refused(item);
        }
        self.waiting.push_back((now, item));
        Admit::Queued
    }

    /// (items to send now, in order; items that waited too long).
    pub fn poll(&mut self, now: Instant) -> (Vec<T>, Vec<T>) {
        self.refill(now);
        let mut expired = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.max_wait)
        {
            if let Some((_, item)) = self.waiting.pop_front() {
                expired.push(item);
            }
        }
        let mut ready = Vec::new();
        while self.tokens >= 1.0 - EPS {
            let Some((_, item)) = self.waiting.pop_front() else {
                break;
            };
            self.tokens = (self.tokens - 1.0).max(0.0);
            ready.push(item);
        }
        (ready, expired)
    }

    /// When [`Pacer::poll`] has something to do: the next token for the first waiting item,
    /// or its expiry, whichever comes first. `None` when nothing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (at, _) = self.waiting.front()?;
        let missing = (1.0 - self.tokens).max(0.0);
        let token = self.last + Duration::from_secs_f64(missing / self.rate);
        Some(token.min(*at + self.max_wait + Duration::from_millis(1)))
    }

    /// Nothing waits and the bucket is full again: the pacer can be dropped and made anew
    /// later without letting more through than the rate allows.
    pub fn idle(&self, now: Instant) -> bool {
        self.waiting.is_empty()
            && (self.unlimited()
                || self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
                    >= self.burst - EPS)
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_goes_at_once_then_one_per_interval_in_order() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4.0, Duration::from_secs(10), 100, t0);
        let mut now_sent = Vec::new();
        for i in 0..10 {
            match p.offer(i, t0) {
                Admit::Now(i) => now_sent.push(i),
                Admit::Queued => {}
                Admit::Refused(i) => panic!("refused {i}"),
            }
        }
        assert_eq!(now_sent, vec![0, 1, 2, 3]);
        assert_eq!(p.len(), 6);
        // The next token comes after 250 ms.
        assert_eq!(p.next_deadline(), Some(t0 + ms(250)));
        assert_eq!(p.poll(t0 + ms(249)), (vec![], vec![]));
        assert_eq!(p.poll(t0 + ms(250)), (vec![4], vec![]));
        // Late polling releases what the elapsed time allows, never more than the burst.
        assert_eq!(p.poll(t0 + ms(2_000)), (vec![5, 6, 7, 8], vec![]));
        assert_eq!(p.poll(t0 + ms(2_250)), (vec![9], vec![]));
        assert!(p.is_empty() && p.next_deadline().is_none());
        // A new item may not overtake waiting ones.
        let t1 = t0 + ms(2_250);
        for i in 10..14 {
            assert!(matches!(p.offer(i, t1), Admit::Queued), "{i}");
        }
        let (ready, _) = p.poll(t1 + ms(1_000));
        assert_eq!(ready, vec![10, 11, 12, 13]);
    }

    #[test]
    fn items_that_wait_too_long_or_find_the_queue_full_come_back() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1.0, ms(1_500), 3, t0);
        assert_eq!(p.offer("a", t0), Admit::Now("a"));
        for x in ["b", "c", "d"] {
            assert_eq!(p.offer(x, t0), Admit::Queued);
        }
        assert_eq!(p.offer("e", t0), Admit::Refused("e"));
        assert_eq!(p.poll(t0 + ms(1_000)), (vec!["b"], vec![]));
        // c and d have waited longer than 1.5 s by now; no token was spent on them.
        assert_eq!(p.next_deadline(), Some(t0 + ms(1_501)));
        assert_eq!(p.poll(t0 + ms(1_600)), (vec![], vec!["c", "d"]));
        assert!(p.is_empty());
        // Empty, but the bucket is not full yet: not idle.
        assert!(!p.idle(t0 + ms(1_600)));
        assert!(p.idle(t0 + ms(3_000)));
    }

    #[test]
    fn zero_is_no_limit() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.0, ms(1), 0, t0);
        assert!(p.unlimited());
        for i in 0..10_000 {
            assert_eq!(p.offer(i, t0), Admit::Now(i));
        }
        let mut p = Pacer::new(f64::NAN, ms(1), 0, t0);
        assert!(p.unlimited());
        assert_eq!(p.offer(1, t0), Admit::Now(1));
    }

    #[test]
    fn a_fractional_rate_still_lets_one_through() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.5, Duration::from_secs(60), 10, t0);
        assert_eq!(p.offer(1, t0), Admit::Now(1));
        assert_eq!(p.offer(2, t0), Admit::Queued);
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(p.poll(t0 + Duration::from_secs(2)), (vec![2], vec![]));
        assert!(p.is_empty());
    }
}
