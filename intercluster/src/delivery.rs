//! Hand-over of routed stanzas across link breaks (sans-IO): each side numbers the `<route>`
//! elements it sends to a peer, the receiver counts what it took and acknowledges
//! (`<ack h/>`) what its next hop confirmed (see `fedgate_s2s::driver::receipt`), and a new
//! link starts with each side saying how many routes of the other's incarnation it has taken
//! and how many of those are confirmed (in `<hello>`). What the peer had not taken is sent
//! again on the new link, in order; what it took is never sent twice; what it took and has
//! not confirmed stays with the sender until it is confirmed.
//!
//! The sender keeps what a route holds for its own upstream (`H`: the receipts of the
//! stanzas in it) until the peer confirmed the route or the route was bounced, so a gateway
//! that dies leaves what its peer never confirmed with the sender before it.
//!
//! Both records outlive links and live as long as the process (the peer's record of us is
//! keyed by our incarnation). When the peer lost its record (it restarted), the fate of the
//! routes it had not acknowledged is unknown: they are handed back to be bounced, never sent
//! twice. Routes that wait unacknowledged while no link is up expire like queued stanzas;
//! when the peer then turns out to have taken fewer, the rest go again under new numbers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fedgate_s2s::ack::Window;

use crate::wire::Routed;

/// What a side has taken from its peer: `count` routes of the peer's `incarnation`, of which
/// the first `confirmed` were taken care of (delivered to the next hop, or answered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub incarnation: u64,
    pub count: u64,
    pub confirmed: u64,
}

/// A route the peer has not acknowledged yet, and what it holds for its own sender.
#[derive(Debug)]
struct Unacked<H> {
    sent: Instant,
    size: usize,
    route: Routed,
    hold: H,
}

/// A route taken from the peer: confirm it with [`Delivery::confirm`] once it is taken care
/// of. `epoch` changes with the peer's incarnation, so that late confirmations of an older
/// incarnation's routes are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub epoch: u64,
    pub seq: u64,
}

/// Both directions of one peer, owned by the current link.
#[derive(Debug)]
pub struct Delivery<H = ()> {
    /// The link generation allowed to send and take routes: a replaced link that still runs
    /// must neither number new routes nor count what it reads (the new link's `<hello>`
    /// already told the peer how many were taken). Only grows; `u64::MAX` once the peer is
    /// removed.
    owner: u64,
    /// The owning link has resumed (its hand-over is done): unacknowledged routes are its
    /// business now and do not expire.
    resumed: bool,
    /// The peer incarnation whose routes `window` counts, and its epoch.
    received_incarnation: u64,
    epoch: u64,
    window: Window,
    /// Routes numbered so far (the last one's number).
    sent: u64,
    unacked: VecDeque<Unacked<H>>,
    bytes: usize,
}

impl<H> Default for Delivery<H> {
    fn default() -> Self {
        Self {
            owner: 0,
            resumed: false,
            received_incarnation: 0,
            epoch: 0,
            window: Window::default(),
            sent: 0,
            unacked: VecDeque::new(),
            bytes: 0,
        }
    }
}

/// How a new link goes on: routes to send again first, routes whose fate is unknown (with
/// what they held, to let go of once they are bounced), and what the routes the peer
/// confirmed held.
#[derive(Debug)]
pub struct Resume<H = ()> {
    pub resend: Vec<Routed>,
    pub lost: Vec<(Routed, H)>,
    pub released: Vec<H>,
}

impl<H> Default for Resume<H> {
    fn default() -> Self {
        Self {
            resend: Vec::new(),
            lost: Vec::new(),
            released: Vec::new(),
        }
    }
}

/// A peer acknowledged more routes than were sent to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the peer acknowledged {h} routed stanzas, only {sent} were sent")]
pub struct AckError {
    pub h: u64,
    pub sent: u64,
}

impl<H> Delivery<H> {
    /// Link `generation` takes over (unless a newer one already did); returns what to
    /// announce in its `<hello>`.
    pub fn take_over(&mut self, generation: u64) -> Received {
        if generation > self.owner {
            self.owner = generation;
            self.resumed = false;
        }
        self.received()
    }

    /// Link `generation` ended: what it had not handed over waits (and may expire).
    pub fn link_ended(&mut self, generation: u64) {
        if self.owns(generation) {
            self.resumed = false;
        }
    }

    pub fn owns(&self, generation: u64) -> bool {
        self.owner == generation
    }

    /// The peer's `<hello>` on link `generation`: `incarnation` is the peer's, `peer_has`
    /// how many of our routes it took and confirmed (`None`: its record is not of our
    /// incarnation).
    pub fn resume(
        &mut self,
        generation: u64,
        incarnation: u64,
        peer_has: Option<(u64, u64)>,
    ) -> Resume<H> {
        if !self.owns(generation) {
            return Resume::default();
        }
        if self.received_incarnation != incarnation {
            self.received_incarnation = incarnation;
            self.window = Window::default();
            self.epoch += 1;
        }
        self.resumed = true;
        let acked = self.sent - self.unacked.len() as u64;
        match peer_has {
            Some((taken, confirmed)) if (acked..=self.sent).contains(&taken) => {
                // What it confirmed is released; what it took and has not confirmed stays
                // (the peer delivers it, and its receipts wait for the confirmation); the
                // rest goes again, under the same numbers.
                let released = self.release(confirmed.clamp(acked, taken));
                let held = taken - (self.sent - self.unacked.len() as u64);
                Resume {
                    resend: self
                        .unacked
                        .iter()
                        .skip(held as usize)
                        .map(|u| u.route.clone())
                        .collect(),
                    lost: Vec::new(),
                    released,
                }
            }
            // Fewer than we stopped waiting for (some expired and were bounced): the peer
            // counts in order, so it took none after `taken`, and what is left goes again
            // under the numbers that follow.
            Some((taken, _)) if taken < acked => {
                self.sent = taken + self.unacked.len() as u64;
                Resume {
                    resend: self.unacked.iter().map(|u| u.route.clone()).collect(),
                    ..Resume::default()
                }
            }
            other => {
                self.sent = other.map_or(0, |(taken, _)| taken);
                self.bytes = 0;
                Resume {
                    lost: self.unacked.drain(..).map(|u| (u.route, u.hold)).collect(),
                    ..Resume::default()
                }
            }
        }
    }

    /// A route from the peer on link `generation`: `Some` when it is taken (counted, to be
    /// delivered and then confirmed), `None` when a newer link owns the peer (the peer sends
    /// it again there).
    pub fn take(&mut self, generation: u64) -> Option<Taken> {
        if !self.owns(generation) {
            return None;
        }
        Some(Taken {
            epoch: self.epoch,
            seq: self.window.received(),
        })
    }

    /// A taken route was taken care of; `true` when the confirmed prefix grew (time to
    /// acknowledge).
    pub fn confirm(&mut self, taken: Taken) -> bool {
        taken.epoch == self.epoch && self.window.confirm(taken.seq)
    }

    /// What to acknowledge (`confirmed`) and to announce in a `<hello>`.
    pub fn received(&self) -> Received {
        Received {
            incarnation: self.received_incarnation,
            count: self.window.received_total(),
            confirmed: self.window.confirmed(),
        }
    }

    /// Numbers `route` (to be sent on link `generation`); `false` when a newer link owns
    /// the peer (nothing is numbered).
    /// `hold` stays until the peer confirmed the route (or it is handed back to bounce).
    pub fn push(
        &mut self,
        generation: u64,
        route: Routed,
        size: usize,
        now: Instant,
        hold: H,
    ) -> Result<(), H> {
        if !self.owns(generation) {
            return Err(hold);
        }
        self.sent += 1;
        self.bytes += size;
        self.unacked.push_back(Unacked {
            sent: now,
            size,
            route,
            hold,
        });
        Ok(())
    }

    /// `<ack h/>` from the peer: routes up to `h` are taken care of; returns what they held
    /// (to let go of outside any lock: a receipt that fires may confirm on another link).
    pub fn ack(&mut self, generation: u64, h: u64) -> Result<Vec<H>, AckError> {
        if !self.owns(generation) {
            return Ok(Vec::new());
        }
        if h > self.sent {
            return Err(AckError { h, sent: self.sent });
        }
        Ok(self.release(h))
    }

    fn release(&mut self, h: u64) -> Vec<H> {
        let acked = self.sent - self.unacked.len() as u64;
        let mut out = Vec::new();
        for _ in acked..h {
            if let Some(u) = self.unacked.pop_front() {
                self.bytes -= u.size;
                out.push(u.hold);
            }
        }
        out
    }

    /// While no link has resumed: routes unacknowledged for `max_age` (their fate unknown:
    /// bounced, never sent again). Their numbers stay used: the peer may have taken them.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> Vec<(Routed, H)> {
        let mut out = Vec::new();
        if self.resumed {
            return out;
        }
        while let Some(u) = self.unacked.front() {
            if now.saturating_duration_since(u.sent) < max_age {
                break;
            }
            // Forget them as if acknowledged; a later `<hello>` with a smaller count than
            // `sent - unacked` falls back to "lost", which has nothing left to bounce.
            let u = self.unacked.pop_front().expect("front exists");
            self.bytes -= u.size;
            out.push((u.route, u.hold));
        }
        out
    }

    /// Everything unacknowledged (the peer was removed); no link owns the record any more.
    pub fn drain(&mut self) -> Vec<(Routed, H)> {
        self.owner = u64::MAX;
        self.resumed = false;
        self.bytes = 0;
        self.unacked.drain(..).map(|u| (u.route, u.hold)).collect()
    }

    /// Bytes of routes waiting for an acknowledgement.
    pub fn unacked_bytes(&self) -> usize {
        self.bytes
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use fedgate_s2s::element::{Element, NS_CONTENT};

    use super::*;

    fn route(i: u32) -> Routed {
        Routed {
            hops: 0,
            recipients: Vec::new(),
            stanza: Element::new("message", NS_CONTENT)
                .with_attr("to", &format!("u{i}@example.test"))
                .with_attr("id", &i.to_string()),
        }
    }

    fn ids(rs: &[Routed]) -> Vec<String> {
        rs.iter()
            .map(|r| r.stanza.attr("id").unwrap().to_owned())
            .collect()
    }

    fn lost_ids<H>(rs: &[(Routed, H)]) -> Vec<String> {
        rs.iter()
            .map(|(r, _)| r.stanza.attr("id").unwrap().to_owned())
            .collect()
    }

    /// One side's sender and the other side's receiver, each with its own `Delivery`.
    fn pair(now: Instant) -> (Delivery, Delivery) {
        let (mut a, mut b) = (Delivery::default(), Delivery::default());
        a.take_over(1);
        b.take_over(1);
        // Link 1 is up: both took nothing of the other yet.
        assert!(a.resume(1, 0xb, None).lost.is_empty());
        assert!(b.resume(1, 0xa, None).lost.is_empty());
        for i in 0..5 {
            assert!(a.push(1, route(i), 100, now, ()).is_ok());
        }
        (a, b)
    }

    #[test]
    fn what_the_peer_took_is_released_and_the_rest_sent_again_in_order() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        // b took 3 of the 5 before the link broke, and acknowledged 2.
        for _ in 0..3 {
            assert!(b.take(1).is_some());
        }
        a.ack(1, 2).unwrap();
        assert_eq!((a.unacked_len(), a.unacked_bytes()), (3, 300));
        // Link 2: b's hello says 3 of a's incarnation.
        let said = b.take_over(2);
        assert_eq!(
            said,
            Received {
                incarnation: 0xa,
                count: 3,
                confirmed: 0
            }
        );
        a.take_over(2);
        let r = a.resume(2, 0xb, Some((said.count, said.confirmed)));
        assert_eq!(ids(&r.resend), ["3", "4"]);
        assert!(r.lost.is_empty());
        // Resent and new routes keep their numbers: b's count and a's acks agree.
        assert!(a.push(2, route(5), 100, now, ()).is_ok());
        b.resume(2, 0xa, Some((0, 0)));
        for _ in 0..3 {
            assert!(b.take(2).is_some());
        }
        a.ack(2, b.received().count).unwrap();
        assert_eq!(a.unacked_len(), 0);
    }

    #[test]
    fn routes_taken_and_not_confirmed_stay_with_the_sender_and_are_not_sent_again() {
        use std::rc::Rc;
        let now = Instant::now();
        let (mut a, mut b) = (Delivery::<Rc<()>>::default(), Delivery::<()>::default());
        a.take_over(1);
        b.take_over(1);
        a.resume(1, 0xb, None);
        b.resume(1, 0xa, None);
        // What each route holds for its own sender (the receipts of its stanzas).
        let holds: Vec<Rc<()>> = (0..5).map(|_| Rc::new(())).collect();
        for (i, h) in holds.iter().enumerate() {
            a.push(1, route(i as u32), 100, now, h.clone()).unwrap();
        }
        let fired = |h: &Rc<()>| Rc::strong_count(h) == 1;
        let taken: Vec<Taken> = (0..3).map(|_| b.take(1).unwrap()).collect();
        // b's next hop confirms the first and the third: the confirmed prefix is 1.
        assert!(b.confirm(taken[0]));
        assert!(!b.confirm(taken[2]), "not a prefix yet");
        assert_eq!(b.received().confirmed, 1);
        drop(a.ack(1, b.received().confirmed).unwrap());
        assert!(fired(&holds[0]));
        assert!(!fired(&holds[1]), "taken by b, not confirmed: still held");
        // The link breaks. b's hello: took 3, confirmed 1.
        let said = b.take_over(2);
        assert_eq!((said.count, said.confirmed), (3, 1));
        a.take_over(2);
        let r = a.resume(2, 0xb, Some((said.count, said.confirmed)));
        assert_eq!(ids(&r.resend), ["3", "4"], "1 and 2 are b's to deliver");
        assert_eq!(a.unacked_len(), 4);
        drop(r);
        assert!(!fired(&holds[1]) && !fired(&holds[2]));
        // b's next hop confirms the second: b acknowledges 3, and a lets go of 1 and 2.
        b.resume(2, 0xa, Some((0, 0)));
        assert!(b.confirm(taken[1]));
        assert_eq!(b.received().confirmed, 3);
        let released = a.ack(2, 3).unwrap();
        assert_eq!(released.len(), 2);
        assert!(
            !fired(&holds[1]),
            "let go of by the caller, outside its lock"
        );
        drop(released);
        assert!(holds[..3].iter().all(fired));
        assert!(!fired(&holds[3]) && !fired(&holds[4]));
        // A peer that restarted hands back what was left, with what it held.
        a.take_over(3);
        let r = a.resume(3, 0xbb, None);
        assert_eq!(lost_ids(&r.lost), ["3", "4"]);
        assert!(!fired(&holds[3]), "held until the caller bounced the route");
        drop(r);
        assert!(holds.iter().all(fired));
    }

    #[test]
    fn confirmations_of_an_older_incarnation_of_the_peer_are_ignored() {
        let mut b = Delivery::<()>::default();
        b.take_over(1);
        b.resume(1, 0xa, None);
        let old = b.take(1).unwrap();
        // The peer restarted: its routes are counted from zero again.
        b.take_over(2);
        b.resume(2, 0xa2, None);
        let new = b.take(2).unwrap();
        assert!(!b.confirm(old));
        assert_eq!(
            b.received(),
            Received {
                incarnation: 0xa2,
                count: 1,
                confirmed: 0
            }
        );
        assert!(b.confirm(new));
        assert_eq!(b.received().confirmed, 1);
    }

    #[test]
    fn a_replaced_link_neither_takes_nor_numbers() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        assert!(b.take(1).is_some());
        let said = b.take_over(2);
        // The old link still reads a route: not counted, so a sends it again on link 2.
        assert!(b.take(1).is_none());
        assert_eq!(b.received().count, 1);
        a.take_over(2);
        assert!(a.push(1, route(9), 100, now, ()).is_err());
        assert_eq!(
            a.ack(1, 5),
            Ok(vec![]),
            "acks of a replaced link are ignored"
        );
        let r = a.resume(2, 0xb, Some((said.count, said.confirmed)));
        assert_eq!(ids(&r.resend), ["1", "2", "3", "4"]);
    }

    #[test]
    fn a_restarted_peer_makes_the_unacknowledged_routes_lost_not_resent() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        a.ack(1, 1).unwrap();
        a.take_over(2);
        // The peer's record is of another incarnation of ours (or none): fate unknown.
        let r = a.resume(2, 0xbb, None);
        assert_eq!(lost_ids(&r.lost), ["1", "2", "3", "4"]);
        assert!(r.resend.is_empty());
        assert_eq!((a.unacked_len(), a.unacked_bytes()), (0, 0));
        // Numbering restarts with the peer's count (0).
        assert!(a.push(2, route(7), 10, now, ()).is_ok());
        assert_eq!(a.ack(2, 2), Err(AckError { h: 2, sent: 1 }));
        a.ack(2, 1).unwrap();
        // And the new incarnation of the peer is counted from zero on our side.
        assert_eq!(
            a.received(),
            Received {
                incarnation: 0xbb,
                count: 0,
                confirmed: 0
            }
        );
    }

    #[test]
    fn a_count_below_the_acknowledged_ones_renumbers_and_one_above_what_was_sent_loses() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        a.ack(1, 3).unwrap();
        a.take_over(2);
        // Fewer than already acknowledged: nothing after 1 was taken; 3 and 4 go again as
        // the peer's 2 and 3.
        let r = a.resume(2, 0xb, Some((1, 1)));
        assert_eq!(ids(&r.resend), ["3", "4"]);
        assert!(r.lost.is_empty());
        assert!(a.push(2, route(8), 10, now, ()).is_ok());
        assert_eq!(a.ack(2, 5), Err(AckError { h: 5, sent: 4 }));
        a.ack(2, 3).unwrap();
        assert_eq!(a.unacked_len(), 1);
        // More than was ever sent: the record is not ours; what is unacknowledged is lost.
        a.take_over(3);
        let r = a.resume(3, 0xb, Some((99, 99)));
        assert_eq!(lost_ids(&r.lost), ["8"]);
        assert!(a.push(3, route(9), 10, now, ()).is_ok());
        a.ack(3, 100).unwrap();
        assert_eq!(a.unacked_len(), 0);
    }

    #[test]
    fn unacknowledged_routes_expire_while_no_link_is_up() {
        let t0 = Instant::now();
        let (mut a, _) = pair(t0);
        assert!(
            a.push(1, route(5), 100, t0 + Duration::from_secs(10), ())
                .is_ok()
        );
        a.ack(1, 1).unwrap();
        // Not while the link that resumed them runs.
        let late = t0 + Duration::from_secs(30);
        assert!(a.expire(late, Duration::from_secs(30)).is_empty());
        // A replaced link ending changes nothing; the owner ending does.
        a.link_ended(0);
        assert!(a.expire(late, Duration::from_secs(30)).is_empty());
        a.link_ended(1);
        let gone = a.expire(late, Duration::from_secs(30));
        assert_eq!(lost_ids(&gone), ["1", "2", "3", "4"]);
        assert_eq!((a.unacked_len(), a.unacked_bytes()), (1, 100));
        // The peer took two of them after all: its count is below what we forgot, and the
        // one left goes again (the peer never took it).
        a.take_over(2);
        let r = a.resume(2, 0xb, Some((2, 2)));
        assert_eq!(ids(&r.resend), ["5"]);
        assert!(r.lost.is_empty());
        a.ack(2, 3).unwrap();
        assert_eq!(lost_ids(&a.drain()), Vec::<String>::new());
    }
    #[test]
    fn an_older_link_taking_over_late_does_not_win() {
        let mut d = Delivery::default();
        d.take_over(3);
        // Generation 2 reaches its take-over after 3 (two threads): 3 keeps the record.
        d.take_over(2);
        assert!(d.owns(3) && !d.owns(2));
        assert!(d.push(3, route(1), 10, Instant::now(), ()).is_ok());
        assert!(d.take(2).is_none());
        assert!(d.take(3).is_some());
    }

    #[test]
    fn a_removed_peer_record_takes_and_numbers_nothing_more() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        assert_eq!(lost_ids(&a.drain()), ["0", "1", "2", "3", "4"]);
        // A link task woken before the removal finds the record closed.
        assert!(a.push(1, route(9), 10, now, ()).is_err());
        assert!(a.take(1).is_none());
        assert!(a.resume(1, 0xb, Some((0, 0))).resend.is_empty());
        assert_eq!(a.unacked_len(), 0);
    }
}
