//! The policy's `rate` for the cluster as a whole: one token bucket per remote domain and
//! direction in the store ([`TAKE_SCRIPT`], atomic, in the store's clock), and on each node a
//! local allowance ([`SharedBucket`], sans-IO) so that no stanza waits on the store.
//!
//! A node takes tokens from the cluster bucket in batches of [`batch_size`] and spends them
//! locally, asking for the next batch (asynchronously) when half of one is left. Every answer
//! also says how many tokens the cluster bucket kept and how many nodes took from it in the
//! last [`ACTIVE_WINDOW_MS`]. A stanza that finds no local token is let through **on credit**
//! while the node's credit is below its share: what the bucket held at the last answer (plus
//! the refill since) divided by the nodes taking from it, at least one batch. In its first
//! two round trips of activity (before any answer, and with the first one, which cannot know
//! who else turned busy meanwhile) the share is `burst / N` (N live nodes). Credit is taken
//! from the bucket with the next request (sent as soon as an answer comes back), even below
//! zero, so it is always paid back: the bucket then refuses everyone until the rate has
//! covered it. A node that heard that the bucket is empty gives no credit until the bucket's
//! own estimate of the next token.
//!
//! Accuracy (the README states it):
//! - nodes that turn busy together spend at most a share each (`burst / N`), then a k-th of
//!   what the bucket holds (k busy nodes): together not more than it holds;
//! - held batches and credit not yet reported add at most `2·N·batch`
//!   (`batch = max(1, burst / (4·N))`, so at most half a burst);
//! - a node that turns busy while another one, alone so far, spends the bucket within the
//!   same round trip can add its share (`burst / N`) once;
//! - over the long run the cluster admits exactly the rate;
//! - a domain whose traffic enters one node (one stream) gets its burst as from a single
//!   gateway from its third round trip on; before that, a burst that arrives faster than the
//!   store answers is cut to `burst / N`.

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

/// A node that took from a bucket this recently shares it.
pub const ACTIVE_WINDOW_MS: u64 = 2000;

/// Tokens a node takes from the cluster bucket at once.
pub fn batch_size(burst: u32, nodes: usize) -> u32 {
    let n = u32::try_from(nodes.max(1)).unwrap_or(u32::MAX);
    (burst / n.saturating_mul(4)).clamp(1, 1000)
}

/// The per-node share of a limit: `limit / N`, rounded up, at least 1 (while the store is
/// unreachable, and before a node heard from a bucket).
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

/// The store's answer to a [`Fetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub granted: u32,
    /// Until the bucket holds a token again (when it gave fewer than wanted).
    pub wait: Duration,
    /// Whole tokens the bucket kept (negative: owed).
    pub left: i64,
    /// Nodes that took from it within [`ACTIVE_WINDOW_MS`], this one included.
    pub active: u32,
}

/// One node's allowance for one remote domain and direction.
#[derive(Debug, Clone)]
pub struct SharedBucket {
    pub per_second: f64,
    pub burst: u32,
    batch: u32,
    /// The credit allowed before the first answer.
    cold_share: u32,
    allowance: u32,
    debt: u32,
    in_flight: Option<Fetch>,
    /// The last answer: what the bucket kept, when, and how many nodes share it.
    last: Option<(i64, Instant, u32)>,
    /// Answers since this node turned busy (its first request, or one after a pause longer
    /// than the active window): the first shows it alone even when others turn busy in the
    /// same round trip, so the share applies from the second.
    fresh: u32,
    /// The cluster bucket answered with fewer tokens than asked: refuse without credit…
    known_empty: bool,
    /// …until then.
    retry_at: Option<Instant>,
    pub last_used: Instant,
}

impl SharedBucket {
    /// A bucket of a node that sees `nodes` live nodes.
    pub fn new(per_second: f64, burst: u32, nodes: usize, now: Instant) -> Self {
        let batch = batch_size(burst, nodes);
        Self {
            per_second,
            burst,
            batch,
            cold_share: per_node_share(burst, nodes).max(batch),
            allowance: 0,
            debt: 0,
            in_flight: None,
            last: None,
            fresh: 0,
            known_empty: false,
            retry_at: None,
            last_used: now,
        }
    }

    /// How many stanzas may be owed now.
    fn credit_limit(&self, now: Instant) -> u32 {
        match self.last {
            Some(_) if self.fresh < 2 => self.cold_share,
            None => self.cold_share,
            Some((left, at, active)) => {
                let refill = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
                let estimate = (left as f64 + refill).min(f64::from(self.burst));
                let share = (estimate / f64::from(active.max(1))).floor();
                (share.max(0.0) as u32).max(self.batch)
            }
        }
    }

    fn owed(&self) -> u32 {
        self.debt + self.in_flight.map_or(0, |f| f.debt)
    }

    /// The next request, if one is due and none is in flight.
    fn next_fetch(&mut self) -> Option<Fetch> {
        let low = self.allowance < self.batch.div_ceil(2);
        if self.in_flight.is_some() || self.known_empty || !(low || self.debt > 0) {
            return None;
        }
        let f = Fetch {
            debt: self.debt,
            want: self.batch - self.allowance.min(self.batch),
        };
        self.debt = 0;
        self.in_flight = Some(f);
        Some(f)
    }

    /// One stanza: whether it passes, and a request to send to the store (at most one in
    /// flight).
    pub fn take(&mut self, now: Instant) -> (bool, Option<Fetch>) {
        self.last_used = now;
        if self.known_empty && self.retry_at.is_none_or(|t| now >= t) {
            // The next token is due: ask again.
            self.known_empty = false;
        }
        let allowed = if self.allowance > 0 {
            self.allowance -= 1;
            true
        } else if self.known_empty {
            false
        } else if self.owed() < self.credit_limit(now) {
            self.debt += 1;
            true
        } else {
            false
        };
        (allowed, self.next_fetch())
    }

    /// The store's answer; returns the next request at once when credit is owed (so that it
    /// is paid back without waiting for the next stanza).
    pub fn fetched(&mut self, a: Answer, now: Instant) -> Option<Fetch> {
        self.in_flight = None;
        self.allowance += a.granted;
        let window = Duration::from_millis(ACTIVE_WINDOW_MS);
        let paused = self
            .last
            .is_some_and(|(_, at, _)| now.saturating_duration_since(at) > window);
        self.fresh = if paused {
            1
        } else {
            self.fresh.saturating_add(1)
        };
        self.last = Some((a.left, now, a.active));
        // Not a whole token left: no credit until the next one is due.
        self.known_empty = a.left < 1;
        self.retry_at = self.known_empty.then(|| now + a.wait);
        if self.debt > 0 {
            // Credit is reported even when the bucket is empty.
            let f = Fetch {
                debt: self.debt,
                want: 0,
            };
            self.debt = 0;
            self.in_flight = Some(f);
            return Some(f);
        }
        None
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

/// `TAKE(key; per_second, burst, debt, want, node, window_ms)`: refills the cluster bucket in
/// the store's clock, takes the debt (all of it: only an older debt below `-burst` is
/// forgiven), grants up to `want` whole tokens, notes that `node` took from it, and answers
/// `{granted, ms until the next token, whole tokens left, nodes that took within the window}`.
/// The key expires once the bucket would be full again anyway.
pub const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local debt = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local window = tonumber(ARGV[6])
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
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now), 'n:' .. ARGV[5], tostring(now))
local active = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'n:' then
    if tonumber(fields[i + 1]) >= now - window then
      active = active + 1
    else
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + window)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
return {granted, wait, math.floor(tokens), active}
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
        takers: Vec<f64>,
    }

    impl Global {
        fn new(rate: f64, burst: u32, nodes: usize) -> Self {
            Self {
                tokens: f64::from(burst),
                at: 0.0,
                rate,
                burst: f64::from(burst),
                takers: vec![f64::NEG_INFINITY; nodes],
            }
        }

        fn take(&mut self, now: f64, node: usize, f: Fetch) -> Answer {
            self.tokens = (self.tokens + (now - self.at) * self.rate).min(self.burst);
            self.at = now;
            self.tokens = self.tokens.max(-self.burst) - f64::from(f.debt);
            let g = if self.tokens >= 1.0 {
                f64::from(f.want).min(self.tokens.floor()) as u32
            } else {
                0
            };
            self.tokens -= f64::from(g);
            self.takers[node] = now;
            let window = ACTIVE_WINDOW_MS as f64 / 1000.0;
            let active = self.takers.iter().filter(|t| **t >= now - window).count() as u32;
            let wait = if self.tokens < 1.0 {
                (1.0 - self.tokens) / self.rate
            } else {
                0.0
            };
            Answer {
                granted: g,
                wait: Duration::from_secs_f64(wait),
                left: self.tokens.floor() as i64,
                active,
            }
        }
    }

    /// `busy` of `nodes` nodes flooded with stanzas (one arrival per step, round robin),
    /// requests answered after `rtt` steps: (admitted, admitted in the first `rtt` steps).
    fn flood(nodes: usize, busy: usize, rate: f64, burst: u32, rtt: usize, seconds: f64) -> u64 {
        let t0 = Instant::now();
        let mut g = Global::new(rate, burst, nodes);
        let mut b: Vec<SharedBucket> = (0..nodes)
            .map(|_| SharedBucket::new(rate, burst, nodes, t0))
            .collect();
        // (due step, node, fetch)
        let mut pending: Vec<(usize, usize, Fetch)> = Vec::new();
        let steps = 20_000;
        let dt = seconds / steps as f64;
        let mut admitted = 0u64;
        for step in 0..steps {
            let now_s = step as f64 * dt;
            let now = t0 + Duration::from_secs_f64(now_s);
            let mut next = Vec::new();
            pending.retain(|(due, node, f)| {
                if *due <= step {
                    let a = g.take(now_s, *node, *f);
                    if let Some(f) = b[*node].fetched(a, now) {
                        next.push((step + rtt, *node, f));
                    }
                    false
                } else {
                    true
                }
            });
            pending.extend(next);
            let node = step % busy;
            let (ok, fetch) = b[node].take(now);
            admitted += u64::from(ok);
            if let Some(f) = fetch {
                pending.push((step + rtt, node, f));
            }
        }
        admitted
    }

    #[test]
    fn a_flood_on_every_node_stays_within_the_bound() {
        for (nodes, rate, burst, rtt) in [
            (3, 1.0, 30, 5),
            (3, 50.0, 100, 20),
            (6, 10.0, 12, 50),
            (2, 1000.0, 2000, 3),
            (3, 0.2, 24, 1),
            (3, 0.2, 24, 200),
        ] {
            let secs = 10.0;
            let admitted = flood(nodes, nodes, rate, burst, rtt, secs);
            // All nodes start together from a full bucket: no node overspends.
            let batch = f64::from(batch_size(burst, nodes));
            let bound = f64::from(burst) + rate * secs + 2.0 * nodes as f64 * batch;
            assert!(
                admitted as f64 <= bound,
                "{nodes} nodes, {rate}/s burst {burst}: {admitted} admitted, bound {bound}"
            );
            // And the limit is not much stricter than the rate: the burst and 90 % of the
            // refill get through, less what nodes may hold unspent.
            let floor = f64::from(burst) + 0.9 * rate * secs - nodes as f64 * batch;
            assert!(
                admitted as f64 >= floor,
                "{nodes} nodes, {rate}/s burst {burst}: only {admitted} admitted (floor {floor})"
            );
        }
    }

    #[test]
    fn one_busy_node_gets_the_whole_burst_once_it_has_heard_from_the_bucket() {
        // 3 nodes, traffic on one: the first burst is cut to the node's share until the
        // first answer; a burst that arrives faster than the store answers afterwards gets
        // through whole.
        let t0 = Instant::now();
        let mut g = Global::new(0.001, 30, 3);
        let mut b = SharedBucket::new(0.001, 30, 3, t0);
        let mut ok = 0;
        let mut fetch = None;
        for _ in 0..30 {
            let (a, f) = b.take(t0);
            ok += u32::from(a);
            fetch = fetch.or(f);
        }
        assert_eq!(ok, 10, "a third of the burst before the first answer");
        let mut f = fetch.unwrap();
        // The answers come back (credit paid), then the traffic pauses.
        loop {
            let a = g.take(0.0, 0, f);
            match b.fetched(a, t0) {
                Some(next) => f = next,
                None => break,
            }
        }
        // Warm: 20 tokens left, one node taking: all of them pass at once.
        let mut ok = 0;
        for _ in 0..30 {
            ok += u32::from(b.take(t0).0);
        }
        assert_eq!(ok, 20, "the rest of the burst");
    }

    #[test]
    fn the_first_stanza_passes_on_credit_and_is_paid_for() {
        let t0 = Instant::now();
        // burst 12, 3 nodes: batch 1, share 4.
        let mut b = SharedBucket::new(1.0, 12, 3, t0);
        let (ok, f) = b.take(t0);
        assert!(ok);
        assert_eq!(f, Some(Fetch { debt: 1, want: 1 }));
        for _ in 0..3 {
            assert!(b.take(t0).0, "within the node's share");
        }
        assert!(!b.take(t0).0, "beyond it");
        assert!(!b.idle());
        let answer = Answer {
            granted: 1,
            wait: Duration::ZERO,
            left: 10,
            active: 2,
        };
        // The credit of the three goes out with the answer.
        assert_eq!(b.fetched(answer, t0), Some(Fetch { debt: 3, want: 0 }));
        assert!(b.take(t0).0, "the granted token");
    }

    #[test]
    fn an_empty_cluster_bucket_refuses_until_its_next_token() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = SharedBucket::new(1.0, 12, 3, t0);
        let (_, f) = b.take(t0);
        assert!(f.is_some());
        let empty = Answer {
            granted: 0,
            wait: s(3),
            left: -2,
            active: 1,
        };
        assert_eq!(b.fetched(empty, t0), None);
        let (ok, f) = b.take(t0 + s(1));
        assert!(
            !ok && f.is_none(),
            "no credit and no request before the token is due"
        );
        // Once it is due: credit (at least a batch) and a request.
        let (ok, f) = b.take(t0 + s(3));
        assert!(ok);
        assert_eq!(f, Some(Fetch { debt: 1, want: 1 }));
        // A failed request owes its credit again, and sends it with the next one.
        b.fetch_failed();
        assert_eq!(
            b.take(t0 + s(3)),
            (true, Some(Fetch { debt: 2, want: 1 })),
            "within its share (one answer so far), sent with the old credit"
        );
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
