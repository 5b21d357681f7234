//! The policy's `rate` for the cluster as a whole: one token bucket per remote domain and
//! direction in the store ([`TAKE_SCRIPT`], atomic, in the store's clock), and on each node a
//! local allowance ([`SharedBucket`], sans-IO) so that no stanza waits on the store.
//!
//! A node takes tokens from the cluster bucket in batches of [`batch_size`] and spends them
//! locally, asking for the next batch (asynchronously) when half of one is left. A stanza that
//! finds no local token while the cluster bucket is not known to be empty (the first stanza of
//! a domain, or a batch still on its way) is let through **on credit**, at most one batch per
//! node; the credit is taken from the cluster bucket with the next request, which may leave it
//! below zero (down to `-burst`) so that it is paid back before anyone gets tokens again. A
//! node that heard that the bucket is empty refuses until the bucket's own estimate of the
//! next token, then asks again.
//!
//! Accuracy (the README states it): over any interval of length t the cluster admits at most
//! `burst + rate·t + 2·N·batch` stanzas of a domain (N nodes: each may hold one batch
//! unspent and have one batch on credit), and in the long run exactly the rate. With
//! `batch = max(1, burst / (4·N))` that is at most 1.5 × burst beyond the rate when
//! `burst ≥ 4·N`, else `burst + 2·N`. Tokens a node holds when its traffic stops stay unused
//! (never more than one batch per node): the cluster may then admit up to `N·batch` fewer.

use std::time::{Duration, Instant};

/// What the rate check answers when the node is part of a cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateVerdict {
    Allowed,
    Refused,
    /// The store is unreachable: apply a per-node bucket with these (the cluster's limits
    /// divided by the number of nodes).
    PerNode {
        per_second: f64,
        burst: u32,
    },
}

/// The cluster-wide rate limits the policy runtime consults (set when `[cluster]` is
/// configured).
pub trait SharedRate: Send + Sync {
    fn take(&self, remote: &str, inbound: bool, per_second: f64, burst: u32) -> RateVerdict;
}

/// Tokens a node takes from the cluster bucket at once.
pub fn batch_size(burst: u32, nodes: usize) -> u32 {
    let n = u32::try_from(nodes.max(1)).unwrap_or(u32::MAX);
    (burst / n.saturating_mul(4)).clamp(1, 1000)
}

/// The per-node share of a limit while the store is unreachable: `limit / N`, rounded up, at
/// least 1.
pub fn per_node_share(limit: u32, nodes: usize) -> u32 {
    let n = u32::try_from(nodes.max(1)).unwrap_or(u32::MAX);
    limit.div_ceil(n).max(1)
}

/// A request for tokens to the cluster bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Stanzas let through on credit since the last request, taken first.
    pub debt: u32,
    /// Tokens wanted.
    pub want: u32,
}

/// One node's allowance for one remote domain and direction.
#[derive(Debug, Clone)]
pub struct SharedBucket {
    pub per_second: f64,
    pub burst: u32,
    batch: u32,
    allowance: u32,
    debt: u32,
    in_flight: Option<Fetch>,
    /// The cluster bucket answered with fewer tokens than asked: refuse without credit…
    known_empty: bool,
    /// …and ask again from then on.
    retry_at: Option<Instant>,
    pub last_used: Instant,
}

impl SharedBucket {
    pub fn new(per_second: f64, burst: u32, batch: u32, now: Instant) -> Self {
        Self {
            per_second,
            burst,
            batch: batch.max(1),
            allowance: 0,
            debt: 0,
            in_flight: None,
            known_empty: false,
            retry_at: None,
            last_used: now,
        }
    }

    /// One stanza: whether it passes, and a request to send to the store (at most one in
    /// flight).
    pub fn take(&mut self, now: Instant) -> (bool, Option<Fetch>) {
        self.last_used = now;
        if self.known_empty && self.retry_at.is_none_or(|t| now >= t) {
            // The next token is due: as good as unknown again.
            self.known_empty = false;
        }
        let allowed = if self.allowance > 0 {
            self.allowance -= 1;
            true
        } else if self.known_empty {
            false
        } else if self.debt < self.batch {
            self.debt += 1;
            true
        } else {
            false
        };
        let low = self.allowance < self.batch.div_ceil(2);
        let fetch = if self.in_flight.is_none() && !self.known_empty && (low || self.debt > 0) {
            let f = Fetch {
                debt: self.debt,
                want: self.batch - self.allowance.min(self.batch),
            };
            self.debt = 0;
            self.in_flight = Some(f);
            Some(f)
        } else {
            None
        };
        (allowed, fetch)
    }

    /// The store's answer: `granted` tokens, and how long until the cluster bucket holds a
    /// token again when it gave fewer than wanted.
    pub fn fetched(&mut self, granted: u32, wait: Duration, now: Instant) {
        let want = self.in_flight.take().map_or(0, |f| f.want);
        self.allowance += granted;
        if granted < want {
            self.known_empty = true;
            self.retry_at = Some(now + wait);
        } else {
            self.known_empty = false;
            self.retry_at = None;
        }
    }

    /// The request failed (the store is unreachable): its credit is owed again.
    pub fn fetch_failed(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.debt += f.debt;
        }
    }

    /// Whether the bucket may be forgotten without lifting a limit or losing a debt.
    pub fn idle(&self) -> bool {
        self.debt == 0 && self.in_flight.is_none()
    }
}

/// `TAKE(key; per_second, burst, debt, want)`: refills the cluster bucket in the store's
/// clock, takes the debt (all of it: an older debt below `-burst` is forgiven, a new one never),
/// grants up to `want` whole tokens, and
/// answers `{granted, ms until the next token}`. The key expires once the bucket would be full
/// again anyway.
pub const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local debt = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
end
tokens = math.max(-burst, tokens) - debt
local granted = 0
if tokens >= 1 then
  granted = math.min(want, math.floor(tokens))
end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
return {granted, wait}
";

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster bucket as the script keeps it.
    struct Global {
        tokens: f64,
        at: f64,
        rate: f64,
        burst: f64,
    }

    impl Global {
        fn take(&mut self, now: f64, f: Fetch) -> (u32, Duration) {
            self.tokens = (self.tokens + (now - self.at) * self.rate).min(self.burst);
            self.at = now;
            self.tokens = self.tokens.max(-self.burst) - f64::from(f.debt);
            let g = if self.tokens >= 1.0 {
                (f.want as f64).min(self.tokens.floor()) as u32
            } else {
                0
            };
            self.tokens -= f64::from(g);
            let wait = if self.tokens < 1.0 {
                (1.0 - self.tokens) / self.rate
            } else {
                0.0
            };
            (g, Duration::from_secs_f64(wait))
        }
    }

    /// N nodes flooded with stanzas, requests answered after `rtt` stanza arrivals: what
    /// the cluster admits stays within the documented bound.
    fn flood(nodes: usize, rate: f64, burst: u32, rtt: usize, seconds: f64) -> (u64, u64) {
        let t0 = Instant::now();
        let batch = batch_size(burst, nodes);
        let mut g = Global {
            tokens: f64::from(burst),
            at: 0.0,
            rate,
            burst: f64::from(burst),
        };
        let mut b: Vec<SharedBucket> = (0..nodes)
            .map(|_| SharedBucket::new(rate, burst, batch, t0))
            .collect();
        // (due step, node, fetch)
        let mut pending: Vec<(usize, usize, Fetch)> = Vec::new();
        let steps = 20_000;
        let dt = seconds / steps as f64;
        let mut admitted = 0u64;
        for step in 0..steps {
            let now_s = step as f64 * dt;
            let now = t0 + Duration::from_secs_f64(now_s);
            pending.retain(|(due, node, f)| {
                if *due <= step {
                    let (granted, wait) = g.take(now_s, *f);
                    b[*node].fetched(granted, wait, now);
                    false
                } else {
                    true
                }
            });
            let node = step % nodes;
            let (ok, fetch) = b[node].take(now);
            admitted += u64::from(ok);
            if let Some(f) = fetch {
                pending.push((step + rtt, node, f));
            }
        }
        let bound = f64::from(burst) + rate * seconds + 2.0 * (nodes as f64) * f64::from(batch);
        (admitted, bound as u64)
    }

    #[test]
    fn a_flood_on_every_node_stays_within_the_bound() {
        for (nodes, rate, burst, rtt) in [
            (3, 1.0, 30, 5),
            (3, 50.0, 100, 20),
            (6, 10.0, 12, 50),
            (2, 1000.0, 2000, 3),
            (3, 0.2, 24, 1),
        ] {
            let (admitted, bound) = flood(nodes, rate, burst, rtt, 10.0);
            assert!(
                admitted <= bound,
                "{nodes} nodes, {rate}/s burst {burst}: {admitted} admitted, bound {bound}"
            );
            // And the limit is not much stricter than the rate: at least the burst and 90 %
            // of the refill get through.
            let floor = (f64::from(burst) + 0.9 * rate * 10.0) as u64
                - u64::from(batch_size(burst, nodes)) * nodes as u64;
            assert!(
                admitted >= floor,
                "{nodes} nodes, {rate}/s burst {burst}: only {admitted} admitted (floor {floor})"
            );
        }
    }

    #[test]
    fn the_first_stanza_passes_on_credit_and_is_paid_for() {
        let t0 = Instant::now();
        let mut b = SharedBucket::new(1.0, 10, 2, t0);
        let (ok, f) = b.take(t0);
        assert!(ok);
        assert_eq!(f, Some(Fetch { debt: 1, want: 2 }));
        // Credit is one batch at most while the answer is on its way.
        assert!(b.take(t0).0);
        assert!(!b.take(t0).0);
        assert!(!b.idle());
        b.fetched(2, Duration::ZERO, t0);
        assert!(b.take(t0).0);
        // The second credit stanza goes with the next request.
        let (ok, f) = b.take(t0);
        assert!(ok);
        assert_eq!(f, Some(Fetch { debt: 1, want: 2 }));
    }

    #[test]
    fn an_empty_cluster_bucket_refuses_until_its_next_token() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = SharedBucket::new(1.0, 10, 2, t0);
        let (_, f) = b.take(t0);
        assert!(f.is_some());
        b.fetched(0, s(3), t0);
        let (ok, f) = b.take(t0 + s(1));
        assert!(
            !ok && f.is_none(),
            "no credit and no request before the token is due"
        );
        // Once it is due, the bucket is as good as unknown: credit, paid with the request.
        let (ok, f) = b.take(t0 + s(3));
        assert!(ok);
        assert_eq!(f, Some(Fetch { debt: 1, want: 2 }));
        b.fetched(2, Duration::ZERO, t0 + s(3));
        assert!(b.take(t0 + s(3)).0);
        // A failed request owes its credit again.
        let mut c = SharedBucket::new(1.0, 10, 2, t0);
        c.take(t0);
        c.fetch_failed();
        assert_eq!(c.take(t0).1, Some(Fetch { debt: 2, want: 2 }));
    }

    #[test]
    fn batches_and_shares() {
        assert_eq!(batch_size(100, 3), 8);
        assert_eq!(batch_size(3, 3), 1);
        assert_eq!(batch_size(1_000_000, 1), 1000);
        assert_eq!(per_node_share(10, 3), 4);
        assert_eq!(per_node_share(1, 3), 1);
        assert_eq!(per_node_share(9, 0), 9);
    }
}
