//! Acknowledged links, sans-IO: which stanzas the next hop of a stream has taken.
//!
//! - [`Ledger`] is the sending side. Every stanza written to a stream is kept, in order, until
//!   the next hop confirms it: by XEP-0198 (`<a h='…'/>`, counters modulo 2^32) where the peer
//!   enabled stream management, or by an answered XEP-0199 ping where it did not (streams are
//!   ordered, so the answer to a ping confirms everything written before it; an error answer
//!   confirms as well as a result). It says when to ask (by count and by time, only while
//!   something is unconfirmed), bounds what is outstanding (stanzas and bytes), notices an
//!   answer that never comes, and hands back what is unconfirmed when the stream breaks.
//! - [`Window`] is the receiving side of XEP-0198: the stanzas received on a stream, in
//!   order, of which a prefix is confirmed (the next hop took them, or fedgate answered them
//!   itself); `h` is the length of that prefix, so fedgate never acknowledges upstream what
//!   its own next hop has not taken.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Namespace of XEP-0198 stream management (version 3).
pub const NS_SM: &str = "urn:xmpp:sm:3";
/// Namespace of XEP-0199 pings.
pub const NS_PING: &str = "urn:xmpp:ping";

/// How a link asks its next hop for confirmations.
#[derive(Debug, Clone)]
pub struct AckSettings {
    /// Ask after this many new unconfirmed stanzas.
    pub request_every: u32,
    /// Ask when the oldest unconfirmed stanza has waited this long without a request.
    pub request_after: Duration,
    /// A request unanswered for this long means the link is dead.
    pub timeout: Duration,
    /// At most this many stanzas outstanding; the link takes no more until some are confirmed.
    pub max_unacked: usize,
    /// At most this many bytes outstanding.
    pub max_unacked_bytes: usize,
    /// `false` for measurement only (`fedgate bench relay` compares both): links ask for no
    /// confirmation and count what they wrote as taken, as before acknowledged delivery, so
    /// what a broken link held in buffers is lost.
    pub confirm: bool,
}

impl Default for AckSettings {
    fn default() -> Self {
        Self {
            request_every: 64,
            request_after: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
            max_unacked: 4096,
            max_unacked_bytes: 4 * 1024 * 1024,
            confirm: true,
        }
    }
}

/// How the next hop confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `<enable/>` sent, no answer yet: stanzas are counted, nothing is requested.
    SmPending,
    /// XEP-0198 enabled.
    Sm,
    /// XEP-0199 pings.
    Ping,
    /// No confirmation ([`AckSettings::confirm`] off): written counts as taken.
    Off,
}

/// What the driver must send to ask for confirmations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<r xmlns='urn:xmpp:sm:3'/>`.
    Sm,
    /// A ping iq with this id.
    Ping(String),
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// XEP-0198 §4: an `h` larger than what was sent is an `undefined-condition` stream error.
    #[error("the peer acknowledged {acked} stanzas but only {sent} were sent")]
    TooMany { acked: u64, sent: u64 },
    /// A request stayed unanswered past the timeout.
    #[error("no acknowledgement for {0:?}")]
    Timeout(Duration),
}

struct Entry<T> {
    seq: u64,
    item: T,
    size: usize,
}

struct PendingRequest {
    /// Everything with a sequence number below this is confirmed by the answer.
    upto: u64,
    at: Instant,
    ping_id: Option<String>,
}

/// The sending side: what was written and is not confirmed yet.
pub struct Ledger<T> {
    settings: AckSettings,
    mode: Mode,
    q: VecDeque<Entry<T>>,
    /// Stanzas written (the next sequence number).
    sent: u64,
    /// Stanzas confirmed (a prefix: every sequence number below it).
    acked: u64,
    bytes: usize,
    /// Requests sent and not answered, oldest first.
    requests: VecDeque<PendingRequest>,
    /// `sent` when the last request was made.
    requested_upto: u64,
    /// When the oldest unconfirmed stanza that no request covers was written.
    uncovered_since: Option<Instant>,
    ping_prefix: String,
    next_ping: u64,
}

impl<T> Ledger<T> {
    /// `ping_prefix` makes the ids of this ledger's pings unique in the process.
    pub fn new(settings: AckSettings, mode: Mode, ping_prefix: impl Into<String>) -> Self {
        Self {
            settings,
            mode,
            q: VecDeque::new(),
            sent: 0,
            acked: 0,
            bytes: 0,
            requests: VecDeque::new(),
            requested_upto: 0,
            uncovered_since: None,
            ping_prefix: ping_prefix.into(),
            next_ping: 0,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `<enabled/>` (true) or `<failed/>` (false) answered our `<enable/>`. On failure the
    /// stanzas counted meanwhile are confirmed by the next ping instead.
    pub fn sm_answered(&mut self, enabled: bool) {
        if self.mode == Mode::SmPending {
            self.mode = if enabled { Mode::Sm } else { Mode::Ping };
        }
    }

    /// Number of stanzas written and not confirmed.
    pub fn unacked(&self) -> usize {
        self.q.len()
    }

    pub fn unacked_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the link may write another stanza now (the outstanding bounds).
    pub fn has_room(&self) -> bool {
        self.q.len() < self.settings.max_unacked && self.bytes < self.settings.max_unacked_bytes
    }

    /// A stanza of `size` bytes was written. Without confirmations ([`Mode::Off`]) it is
    /// let go of at once.
    pub fn sent(&mut self, item: T, size: usize, now: Instant) {
        if self.mode == Mode::Off {
            self.sent += 1;
            self.acked = self.sent;
            self.requested_upto = self.sent;
            drop(item);
            return;
        }
        self.q.push_back(Entry {
            seq: self.sent,
            item,
            size,
        });
        self.sent += 1;
        self.bytes += size;
        self.uncovered_since.get_or_insert(now);
    }

    /// The request to send now, if one is due (by count or by time).
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        if self.mode == Mode::SmPending || self.sent == self.requested_upto {
            return None;
        }
        let by_count = self.sent - self.requested_upto >= u64::from(self.settings.request_every);
        let by_time = self
            .uncovered_since
            .is_some_and(|t| now.duration_since(t) >= self.settings.request_after);
        // One request in flight at a time unless the count says more is due.
        if !(by_count || by_time && self.requests.is_empty()) {
            return None;
        }
        Some(self.request(now))
    }

    /// Ask now, whatever the count (e.g. before a clean close). `None` if nothing is
    /// unconfirmed or every unconfirmed stanza is already covered by a request.
    pub fn request_now(&mut self, now: Instant) -> Option<Request> {
        (self.mode != Mode::SmPending && self.sent != self.requested_upto)
            .then(|| self.request(now))
    }

    fn request(&mut self, now: Instant) -> Request {
        self.requested_upto = self.sent;
        self.uncovered_since = None;
        let ping_id = (self.mode == Mode::Ping).then(|| {
            self.next_ping += 1;
            format!("{}-{}", self.ping_prefix, self.next_ping)
        });
        self.requests.push_back(PendingRequest {
            upto: self.sent,
            at: now,
            ping_id: ping_id.clone(),
        });
        ping_id.map_or(Request::Sm, Request::Ping)
    }

    /// When the driver must call [`Self::poll_request`] or [`Self::check_timeout`] again.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ask = self
            .uncovered_since
            .filter(|_| self.requests.is_empty() && self.mode != Mode::SmPending)
            .map(|t| t + self.settings.request_after);
        let dead = self.requests.front().map(|r| r.at + self.settings.timeout);
        match (ask, dead) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
    }

    /// `Err` when the oldest request has waited past the timeout: the link is dead.
    pub fn check_timeout(&self, now: Instant) -> Result<(), AckError> {
        match self.requests.front() {
            Some(r) if now.duration_since(r.at) >= self.settings.timeout => {
                Err(AckError::Timeout(self.settings.timeout))
            }
            _ => Ok(()),
        }
    }

    /// XEP-0198 `<a h='…'/>`: `h` counts stanzas modulo 2^32. Returns the newly confirmed
    /// stanzas and, when it answered a request, that request's round-trip time. An `<a/>`
    /// answers the oldest outstanding `<r/>` even when it covers less than that request asked
    /// about (the peer's next hop had not taken everything yet): the rest is asked about again.
    pub fn on_sm_ack(
        &mut self,
        h: u32,
        now: Instant,
    ) -> Result<(Vec<T>, Option<Duration>), AckError> {
        // The distance from our confirmed count, on the 32-bit circle.
        let delta = u64::from(h.wrapping_sub(self.acked as u32));
        let upto = self.acked + delta;
        if upto > self.sent {
            return Err(AckError::TooMany {
                acked: upto,
                sent: self.sent,
            });
        }
        let rtt = self.requests.pop_front().map(|r| now.duration_since(r.at));
        let (items, _) = self.confirm_upto(upto, now);
        if !self.q.is_empty() && self.requests.is_empty() {
            // Nothing outstanding covers the rest: ask again (by count or by time).
            self.requested_upto = self.acked;
            self.uncovered_since = Some(now);
        }
        Ok((items, rtt))
    }

    /// An answer (result or error) to an iq with `id`. `None` if it is not one of our pings.
    pub fn on_ping_answer(&mut self, id: &str, now: Instant) -> Option<(Vec<T>, Duration)> {
        let pos = self
            .requests
            .iter()
            .position(|r| r.ping_id.as_deref() == Some(id))?;
        let upto = self.requests[pos].upto;
        let rtt = now.duration_since(self.requests[pos].at);
        let (items, _) = self.confirm_upto(upto, now);
        Some((items, rtt))
    }

    /// Whether `id` names a ping of this ledger that is still unanswered.
    pub fn is_pending_ping(&self, id: &str) -> bool {
        self.requests
            .iter()
            .any(|r| r.ping_id.as_deref() == Some(id))
    }

    fn confirm_upto(&mut self, upto: u64, now: Instant) -> (Vec<T>, Option<Duration>) {
        let mut rtt = None;
        while let Some(r) = self.requests.front() {
            if r.upto > upto {
                break;
            }
            if r.upto == upto {
                rtt = Some(now.duration_since(r.at));
            }
            self.requests.pop_front();
        }
        let mut out = Vec::new();
        while self.q.front().is_some_and(|e| e.seq < upto) {
            let e = self.q.pop_front().expect("front exists");
            self.bytes -= e.size;
            out.push(e.item);
        }
        self.acked = self.acked.max(upto);
        if self.q.is_empty() {
            self.uncovered_since = None;
        }
        (out, rtt)
    }

    /// The stream broke: everything unconfirmed, in send order. The ledger starts over.
    pub fn take_unacked(&mut self) -> Vec<T> {
        self.requests.clear();
        self.uncovered_since = None;
        self.requested_upto = self.sent;
        self.acked = self.sent;
        self.bytes = 0;
        self.q.drain(..).map(|e| e.item).collect()
    }
}

/// The receiving side of XEP-0198 on one stream: which received stanzas are confirmed.
#[derive(Debug, Default)]
pub struct Window {
    /// Sequence number of `pending[0]`.
    base: u64,
    /// Per received stanza from `base` on: confirmed yet?
    pending: VecDeque<bool>,
}

impl Window {
    /// A stanza was received: its sequence number.
    pub fn received(&mut self) -> u64 {
        let seq = self.base + self.pending.len() as u64;
        self.pending.push_back(false);
        seq
    }

    /// The stanza `seq` was taken by the next hop or answered by fedgate. Returns true when
    /// the confirmed prefix grew.
    pub fn confirm(&mut self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(self.base) else {
            return false;
        };
        let Some(slot) = self.pending.get_mut(i as usize) else {
            return false;
        };
        *slot = true;
        let mut grew = false;
        while self.pending.front() == Some(&true) {
            self.pending.pop_front();
            self.base += 1;
            grew = true;
        }
        grew
    }

    /// Stanzas confirmed, as a prefix (XEP-0198 `h` is this modulo 2^32).
    pub fn confirmed(&self) -> u64 {
        self.base
    }

    pub fn received_total(&self) -> u64 {
        self.base + self.pending.len() as u64
    }

    /// The `h` to send.
    pub fn h(&self) -> u32 {
        self.base as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AckSettings {
        AckSettings {
            request_every: 3,
            request_after: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            max_unacked: 10,
            max_unacked_bytes: 1000,
            confirm: true,
        }
    }

    #[test]
    fn sm_acks_confirm_a_prefix_and_requests_go_by_count() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Sm, "p");
        for i in 0..2 {
            l.sent(i, 10, t);
            assert_eq!(l.poll_request(t), None, "not yet by count");
        }
        l.sent(2, 10, t);
        assert_eq!(l.poll_request(t), Some(Request::Sm));
        assert_eq!(l.poll_request(t), None, "already asked for these");
        // The answer covers less than was asked about: the next hop had not taken the third.
        let (done, rtt) = l.on_sm_ack(2, t + Duration::from_millis(7)).unwrap();
        assert_eq!(done, vec![0, 1]);
        assert_eq!(rtt, Some(Duration::from_millis(7)));
        // The third is asked about again, by time.
        assert_eq!(l.poll_request(t + Duration::from_millis(8)), None);
        let again = t + Duration::from_millis(7) + Duration::from_millis(100);
        assert_eq!(l.next_deadline(), Some(again));
        assert_eq!(l.poll_request(again), Some(Request::Sm));
        let (done, rtt) = l.on_sm_ack(3, again + Duration::from_millis(2)).unwrap();
        assert_eq!(done, vec![2]);
        assert_eq!(rtt, Some(Duration::from_millis(2)));
        assert_eq!((l.unacked(), l.unacked_bytes()), (0, 0));
        // A repeated ack is harmless.
        assert_eq!(l.on_sm_ack(3, t).unwrap().0, Vec::<i32>::new());
    }

    #[test]
    fn requests_go_by_time_only_while_something_is_unconfirmed() {
        let t = Instant::now();
        let mut l: Ledger<u8> = Ledger::new(settings(), Mode::Sm, "p");
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.poll_request(t + Duration::from_secs(9)), None);
        l.sent(1, 1, t);
        assert_eq!(l.next_deadline(), Some(t + Duration::from_millis(100)));
        assert_eq!(l.poll_request(t + Duration::from_millis(50)), None);
        let at = t + Duration::from_millis(100);
        assert_eq!(l.poll_request(at), Some(Request::Sm));
        // Now only the answer's timeout is pending.
        assert_eq!(l.next_deadline(), Some(at + Duration::from_secs(5)));
        l.on_sm_ack(1, at).unwrap();
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn an_ack_for_more_than_was_sent_is_an_error() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Sm, "p");
        l.sent('a', 1, t);
        assert_eq!(
            l.on_sm_ack(2, t),
            Err(AckError::TooMany { acked: 2, sent: 1 })
        );
        // Nothing was lost by the bad ack.
        assert_eq!(l.take_unacked(), vec!['a']);
    }

    #[test]
    fn counters_wrap_at_2_pow_32() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Sm, "p");
        // Pretend 2^32 - 2 stanzas were sent and confirmed already.
        let start = u64::from(u32::MAX) - 1;
        l.sent = start;
        l.acked = start;
        l.requested_upto = start;
        for i in 0..5 {
            l.sent(i, 1, t);
        }
        // h wrapped: (2^32 - 2 + 4) mod 2^32 = 2.
        let (done, _) = l.on_sm_ack(2, t).unwrap();
        assert_eq!(done, vec![0, 1, 2, 3]);
        let (done, _) = l.on_sm_ack(3, t).unwrap();
        assert_eq!(done, vec![4]);
        assert!(l.on_sm_ack(4, t).is_err(), "one past what was sent");
    }

    #[test]
    fn acks_that_never_come_time_out() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Sm, "p");
        l.sent(1, 1, t);
        l.request_now(t).unwrap();
        assert!(l.check_timeout(t + Duration::from_secs(4)).is_ok());
        assert_eq!(
            l.check_timeout(t + Duration::from_secs(5)),
            Err(AckError::Timeout(Duration::from_secs(5)))
        );
        assert_eq!(l.take_unacked(), vec![1]);
    }

    #[test]
    fn an_answered_ping_confirms_everything_written_before_it() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Ping, "fg-1");
        l.sent("a", 1, t);
        l.sent("b", 1, t);
        let Some(Request::Ping(first)) = l.request_now(t) else {
            panic!("a ping")
        };
        l.sent("c", 1, t);
        let Some(Request::Ping(second)) = l.request_now(t) else {
            panic!("a ping")
        };
        assert_ne!(first, second);
        assert!(l.on_ping_answer("someone-else", t).is_none());
        let (done, rtt) = l
            .on_ping_answer(&first, t + Duration::from_millis(3))
            .unwrap();
        assert_eq!((done, rtt), (vec!["a", "b"], Duration::from_millis(3)));
        // Answers may overtake each other: the later ping confirms everything.
        let (done, _) = l.on_ping_answer(&second, t).unwrap();
        assert_eq!(done, vec!["c"]);
        assert!(!l.is_pending_ping(&first));
    }

    #[test]
    fn a_later_ping_answered_first_confirms_the_earlier_ones_too() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Ping, "x");
        l.sent(1, 1, t);
        let Some(Request::Ping(p1)) = l.request_now(t) else {
            panic!()
        };
        l.sent(2, 1, t);
        let Some(Request::Ping(p2)) = l.request_now(t) else {
            panic!()
        };
        assert_eq!(l.on_ping_answer(&p2, t).unwrap().0, vec![1, 2]);
        assert!(l.on_ping_answer(&p1, t).is_none(), "already covered");
    }

    #[test]
    fn enable_pending_then_failed_falls_back_to_pings() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::SmPending, "x");
        for i in 0..5 {
            l.sent(i, 1, t);
        }
        assert_eq!(l.poll_request(t + Duration::from_secs(1)), None);
        l.sm_answered(false);
        assert_eq!(l.mode(), Mode::Ping);
        let Some(Request::Ping(id)) = l.poll_request(t) else {
            panic!("by count")
        };
        assert_eq!(l.on_ping_answer(&id, t).unwrap().0, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn outstanding_stanzas_and_bytes_are_bounded() {
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Sm, "x");
        for i in 0..9 {
            l.sent(i, 10, t);
        }
        assert!(l.has_room());
        l.sent(9, 10, t);
        assert!(!l.has_room(), "10 stanzas");
        l.on_sm_ack(5, t).unwrap();
        assert!(l.has_room());
        l.sent(10, 2000, t);
        assert!(!l.has_room(), "bytes");
    }

    #[test]
    fn a_stream_replaced_while_acks_are_outstanding_hands_back_everything_in_order() {
        let t = Instant::now();
        let mut old = Ledger::new(settings(), Mode::Sm, "x");
        for i in 0..4 {
            old.sent(i, 1, t);
        }
        old.request_now(t);
        old.on_sm_ack(1, t).unwrap();
        let rest = old.take_unacked();
        assert_eq!(rest, vec![1, 2, 3]);
        assert!(
            old.on_sm_ack(2, t).is_err(),
            "the old stream's acks count no more"
        );
        // Resent on a new stream, they are counted from zero there.
        let mut new = Ledger::new(settings(), Mode::Sm, "y");
        for i in rest {
            new.sent(i, 1, t);
        }
        assert_eq!(new.on_sm_ack(3, t).unwrap().0, vec![1, 2, 3]);
    }

    #[test]
    fn window_confirms_only_a_prefix() {
        let mut w = Window::default();
        let a = w.received();
        let b = w.received();
        let c = w.received();
        assert!(!w.confirm(b), "b before a: the prefix did not grow");
        assert_eq!(w.h(), 0);
        assert!(w.confirm(a));
        assert_eq!(w.h(), 2);
        assert!(!w.confirm(a), "twice is harmless");
        assert!(w.confirm(c));
        assert_eq!((w.confirmed(), w.received_total()), (3, 3));
        assert!(!w.confirm(99));
    }

    #[test]
    fn without_confirmations_written_counts_as_taken() {
        use std::rc::Rc;
        let t = Instant::now();
        let mut l = Ledger::new(settings(), Mode::Off, "p");
        let item = Rc::new(());
        for _ in 0..5 {
            l.sent(item.clone(), 10, t);
        }
        assert_eq!(Rc::strong_count(&item), 1, "let go of at once");
        assert_eq!((l.unacked(), l.unacked_bytes()), (0, 0));
        assert!(l.has_room());
        assert_eq!(l.poll_request(t + Duration::from_secs(1)), None);
        assert_eq!(l.request_now(t), None);
        assert_eq!(l.next_deadline(), None);
        assert!(l.take_unacked().is_empty());
    }
}
