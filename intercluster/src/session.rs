//! The sync session of one link (sans-IO): hello with the consistency gate, subscribe "since
//! N", snapshot or deltas, pushing own changes, periodic digest comparison and repair,
//! heartbeats and timeouts. Inputs are parsed messages, local changes and ticks with `now`;
//! outputs are [`Action`]s for the driver.
//!
//! Each side replicates only the peer's *own* origin (every cluster is the single writer of
//! its users, and the mesh is full), so a session carries two independent one-way syncs.

use std::time::{Duration, Instant};

use crate::delivery::Received;
use crate::directory::{Catchup, Change, Directory, Entries, SyncError};
use crate::failure::{FailureKind, LinkFailure};
use crate::wire::{Msg, Routed};

/// What to do when the peer's consistency digest differs from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMismatch {
    /// Refuse the link (`<refuse reason='consistency'>`).
    Refuse,
    /// Bring the link up, but show the mismatch in `/status` and the log.
    Flag,
}

/// Timers and sizes of a session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub heartbeat: Duration,
    /// No message at all for this long: the link is dead.
    pub timeout: Duration,
    pub digest_interval: Duration,
    pub on_mismatch: OnMismatch,
    /// Changes per `<deltas>` and entries per `<entries>` element.
    pub chunk: usize,
    /// Most users a peer may list (snapshot count, replica size): memory bound against a
    /// buggy or hostile peer.
    pub max_entries: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
            digest_interval: Duration::from_secs(30),
            on_mismatch: OnMismatch::Refuse,
            chunk: 2000,
            max_entries: 1_000_000,
        }
    }
}

/// Something that happened, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Hello exchanged; `flagged` holds the consistency mismatch when it was let through.
    Up {
        flagged: Option<String>,
    },
    DeltasIn(usize),
    DeltasOut(usize),
    SnapshotIn(usize),
    SnapshotOut(usize),
    /// The peer's digest differs from our replica at the same position: a snapshot was asked.
    DigestMismatch,
    /// The peer runs another incarnation than the one our replica came from.
    IncarnationChanged {
        old: u64,
        new: u64,
    },
    /// Our replica of the peer was found equal to the peer's digest (or freshly loaded).
    Reconciled,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Msg),
    Deliver(Routed),
    Note(Note),
    /// The peer's `<hello>`: hand routes over to this link (see [`crate::delivery`]).
    /// `incarnation` is the peer's; `peer_has` how many of our routes it has taken, and how
    /// many of those it has confirmed (`None`: its record is of another incarnation of ours,
    /// or it has none).
    Resume {
        incarnation: u64,
        peer_has: Option<(u64, u64)>,
    },
    /// `<ack h/>`: the peer has taken care of `h` of our routes.
    Acked(u64),
    /// Close the link (after sending what precedes).
    Close(LinkFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Up,
    Closed,
}

#[derive(Debug)]
struct Staging {
    incarnation: u64,
    seq: u64,
    count: u64,
    /// Entries received so far (a user listed twice counts twice).
    received: u64,
    /// Built chunk by chunk, so that the end of a snapshot only swaps it in.
    entries: Entries,
}

/// One link's session.
#[derive(Debug)]
pub struct Session {
    peer: String,
    consistency: String,
    settings: SessionSettings,
    state: State,
    last_rx: Instant,
    next_ping: Instant,
    next_digest: Instant,
    /// How far the peer has our log (set once it subscribed).
    peer_has: Option<u64>,
    staging: Option<Staging>,
    /// The peer's own log head as last advertised.
    peer_head: u64,
    behind_since: Option<Instant>,
    resync_pending: bool,
    flagged: Option<String>,
}

fn protocol(detail: impl Into<String>) -> Action {
    Action::Close(LinkFailure::new(FailureKind::Protocol, detail))
}

impl Session {
    /// A session with `peer` (its cluster name, already checked against its certificate);
    /// `consistency` is our digest of what must agree between clusters.
    pub fn new(peer: &str, consistency: &str, settings: SessionSettings, now: Instant) -> Self {
        Self {
            peer: peer.to_owned(),
            consistency: consistency.to_owned(),
            state: State::AwaitHello,
            last_rx: now,
            next_ping: now + settings.heartbeat,
            next_digest: now + settings.digest_interval,
            settings,
            peer_has: None,
            staging: None,
            peer_head: 0,
            behind_since: None,
            resync_pending: false,
            flagged: None,
        }
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The consistency mismatch that was let through (`on_mismatch = flag`).
    pub fn flagged(&self) -> Option<&str> {
        self.flagged.as_deref()
    }

    /// How long our replica of the peer has been behind what the peer advertised.
    pub fn lag(&self, now: Instant) -> Duration {
        self.behind_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Each side replicates only its peer's own origin: a directory message about another
    /// origin is a protocol error: the close action (the session is closed).
    fn own_origin_only(&mut self, element: &str, origin: &str) -> Option<Action> {
        if origin == self.peer {
            return None;
        }
        self.state = State::Closed;
        Some(protocol(format!(
            "<{element}> for origin '{origin}': {} may only send its own origin",
            self.peer
        )))
    }

    /// The first message; `received`: what this side has taken of the peer's routes.
    pub fn start(&mut self, dir: &Directory, received: Received) -> Vec<Action> {
        vec![Action::Send(Msg::Hello {
            cluster: dir.me().to_owned(),
            incarnation: dir.incarnation(),
            seq: dir.seq(),
            consistency: self.consistency.clone(),
            received,
        })]
    }

    fn update_behind(&mut self, dir: &Directory, now: Instant) {
        let have = dir.replica_position(&self.peer).map_or(0, |(_, s)| s);
        if have >= self.peer_head && !self.resync_pending {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(now);
        }
    }

    fn resubscribe_all(&mut self, out: &mut Vec<Action>) {
        if self.resync_pending {
            return;
        }
        self.resync_pending = true;
        out.push(Action::Send(Msg::Subscribe {
            origin: self.peer.clone(),
            incarnation: None,
            since: 0,
        }));
    }

    /// Our own log for the peer: deltas after `since`, or a snapshot.
    fn catchup(
        &self,
        dir: &Directory,
        incarnation: Option<u64>,
        since: u64,
        out: &mut Vec<Action>,
    ) {
        let me = dir.me().to_owned();
        match dir.catchup(incarnation, since) {
            Catchup::Deltas(changes) => {
                if changes.is_empty() {
                    return;
                }
                out.push(Action::Note(Note::DeltasOut(changes.len())));
                let mut first = since + 1;
                for chunk in changes.chunks(self.settings.chunk.max(1)) {
                    out.push(Action::Send(Msg::Deltas {
                        origin: me.clone(),
                        incarnation: dir.incarnation(),
                        first,
                        changes: chunk.to_vec(),
                    }));
                    first += chunk.len() as u64;
                }
            }
            Catchup::Snapshot => {
                let (seq, entries, digest) = dir.own_snapshot();
                out.push(Action::Note(Note::SnapshotOut(entries.len())));
                out.push(Action::Send(Msg::SnapshotBegin {
                    origin: me.clone(),
                    incarnation: dir.incarnation(),
                    seq,
                    count: entries.len() as u64,
                }));
                for chunk in entries.chunks(self.settings.chunk.max(1)) {
                    out.push(Action::Send(Msg::Entries {
                        origin: me.clone(),
                        entries: chunk.to_vec(),
                    }));
                }
                out.push(Action::Send(Msg::SnapshotEnd {
                    origin: me,
                    incarnation: dir.incarnation(),
                    seq,
                    digest,
                }));
            }
        }
    }

    /// A message from the peer.
    pub fn on_msg(&mut self, msg: Msg, dir: &mut Directory, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Closed {
            return out;
        }
        self.last_rx = now;
        if let Msg::Refuse { reason, text } = &msg {
            self.state = State::Closed;
            out.push(Action::Close(LinkFailure::new(
                FailureKind::from_reason(reason),
                format!("the peer refused the link: {text}"),
            )));
            return out;
        }
        if self.state == State::AwaitHello {
            let Msg::Hello {
                cluster,
                incarnation,
                seq,
                consistency,
                received,
            } = msg
            else {
                self.state = State::Closed;
                out.push(protocol("expected <hello> first"));
                return out;
            };
            if cluster != self.peer {
                self.state = State::Closed;
                out.push(Action::Close(LinkFailure::new(
                    FailureKind::CertName,
                    format!(
                        "the peer says it is cluster '{cluster}', expected '{}'",
                        self.peer
                    ),
                )));
                return out;
            }
            if consistency != self.consistency {
                let text = format!(
                    "consistency digest differs: ours {}, {}'s {consistency} (hosted domains, address scheme or policy revision)",
                    self.consistency, self.peer
                );
                match self.settings.on_mismatch {
                    OnMismatch::Refuse => {
                        self.state = State::Closed;
                        out.push(Action::Send(Msg::Refuse {
                            reason: FailureKind::Consistency.as_str().into(),
                            text: text.clone(),
                        }));
                        out.push(Action::Close(LinkFailure::new(
                            FailureKind::Consistency,
                            text,
                        )));
                        return out;
                    }
                    OnMismatch::Flag => self.flagged = Some(text),
                }
            }
            self.state = State::Up;
            self.peer_head = seq;
            out.push(Action::Resume {
                incarnation,
                peer_has: (received.incarnation == dir.incarnation())
                    .then_some((received.count, received.confirmed)),
            });
            out.push(Action::Note(Note::Up {
                flagged: self.flagged.clone(),
            }));
            match dir.replica_position(&self.peer) {
                Some((inc, have)) if inc == incarnation => out.push(Action::Send(Msg::Subscribe {
                    origin: self.peer.clone(),
                    incarnation: Some(inc),
                    since: have,
                })),
                Some((old, _)) => {
                    out.push(Action::Note(Note::IncarnationChanged {
                        old,
                        new: incarnation,
                    }));
                    self.resubscribe_all(&mut out);
                }
                None => self.resubscribe_all(&mut out),
            }
            self.update_behind(dir, now);
            return out;
        }
        match msg {
            Msg::Hello { .. } => {
                self.state = State::Closed;
                out.push(protocol("a second <hello>"));
            }
            Msg::Refuse { .. } => {}
            Msg::Subscribe {
                origin,
                incarnation,
                since,
            } => {
                if origin != dir.me() {
                    self.state = State::Closed;
                    out.push(protocol(format!(
                        "<subscribe> to origin '{origin}': only this cluster's own log is offered"
                    )));
                    return out;
                }
                self.catchup(dir, incarnation, since, &mut out);
                self.peer_has = Some(dir.seq());
            }
            Msg::Deltas {
                origin,
                incarnation,
                first,
                changes,
            } => {
                if let Some(a) = self.own_origin_only("deltas", &origin) {
                    out.push(a);
                    return out;
                }
                let n = changes.len();
                let added = changes
                    .iter()
                    .filter(|c| matches!(c, Change::Put { user, .. } if !dir.lists(&origin, user)))
                    .count();
                if dir.users_of(&origin).saturating_add(added) > self.settings.max_entries {
                    self.state = State::Closed;
                    out.push(protocol(format!(
                        "<deltas> would make {} list more than the {} entries allowed",
                        self.peer, self.settings.max_entries
                    )));
                    return out;
                }
                match dir.apply_deltas(&origin, incarnation, first, &changes) {
                    Ok(()) => {
                        out.push(Action::Note(Note::DeltasIn(n)));
                        if n > 0 {
                            let last = first.saturating_add(n as u64 - 1);
                            self.peer_head = self.peer_head.max(last);
                        }
                    }
                    Err(SyncError::Incarnation { have, got, .. }) => {
                        out.push(Action::Note(Note::IncarnationChanged {
                            old: have,
                            new: got,
                        }));
                        self.resubscribe_all(&mut out);
                    }
                    Err(_) => self.resubscribe_all(&mut out),
                }
            }
            Msg::SnapshotBegin {
                origin,
                incarnation,
                seq,
                count,
            } => {
                if let Some(a) = self.own_origin_only("snapshot", &origin) {
                    out.push(a);
                    return out;
                }
                if count > self.settings.max_entries as u64 {
                    self.state = State::Closed;
                    out.push(protocol(format!(
                        "a snapshot of {count} entries is more than the {} allowed",
                        self.settings.max_entries
                    )));
                    return out;
                }
                self.staging = Some(Staging {
                    incarnation,
                    seq,
                    count,
                    received: 0,
                    entries: Entries::default(),
                });
            }
            Msg::Entries { origin, entries } => {
                if let Some(a) = self.own_origin_only("entries", &origin) {
                    out.push(a);
                    return out;
                }
                let Some(s) = &mut self.staging else {
                    self.state = State::Closed;
                    out.push(protocol("<entries> outside a snapshot"));
                    return out;
                };
                s.received += entries.len() as u64;
                if s.received > s.count {
                    self.state = State::Closed;
                    out.push(protocol(format!(
                        "snapshot larger than its count {}",
                        s.count
                    )));
                    return out;
                }
                for (user, epoch) in entries {
                    s.entries.insert(user, epoch);
                }
            }
            Msg::SnapshotEnd {
                origin,
                incarnation,
                seq,
                digest,
            } => {
                if let Some(a) = self.own_origin_only("snapshot-end", &origin) {
                    out.push(a);
                    return out;
                }
                let Some(s) = self.staging.take() else {
                    self.state = State::Closed;
                    out.push(protocol("<snapshot-end> without <snapshot>"));
                    return out;
                };
                if (s.incarnation, s.seq) != (incarnation, seq) {
                    self.state = State::Closed;
                    out.push(protocol("<snapshot-end> does not match its <snapshot>"));
                    return out;
                }
                let n = s.entries.len();
                match dir.apply_snapshot_entries(&origin, incarnation, seq, s.entries, digest) {
                    Ok(()) => {
                        self.resync_pending = false;
                        self.peer_head = self.peer_head.max(seq);
                        out.push(Action::Note(Note::SnapshotIn(n)));
                        out.push(Action::Note(Note::Reconciled));
                    }
                    Err(e) => {
                        self.state = State::Closed;
                        out.push(protocol(e.to_string()));
                        return out;
                    }
                }
            }
            Msg::Digest {
                origin,
                incarnation,
                seq,
                digest,
            } => {
                if let Some(a) = self.own_origin_only("digest", &origin) {
                    out.push(a);
                    return out;
                }
                if self.resync_pending {
                    return out;
                }
                self.peer_head = self.peer_head.max(seq);
                match dir.replica_position(&origin) {
                    None => self.resubscribe_all(&mut out),
                    Some((inc, _)) if inc != incarnation => {
                        out.push(Action::Note(Note::IncarnationChanged {
                            old: inc,
                            new: incarnation,
                        }));
                        self.resubscribe_all(&mut out);
                    }
                    Some((_, have)) if have == seq => {
                        if dir.replica_digest(&origin) == Some(digest) {
                            out.push(Action::Note(Note::Reconciled));
                        } else {
                            out.push(Action::Note(Note::DigestMismatch));
                            self.resubscribe_all(&mut out);
                        }
                    }
                    // Behind (deltas are on their way) or a stale digest: nothing to compare.
                    Some(_) => {}
                }
            }
            Msg::Ping { seq } => {
                self.peer_head = self.peer_head.max(seq);
                out.push(Action::Send(Msg::Pong));
            }
            Msg::Pong => {}
            Msg::Route(r) => out.push(Action::Deliver(r)),
            Msg::Ack { h } => out.push(Action::Acked(h)),
        }
        self.update_behind(dir, now);
        out
    }

    /// Our own log changed: push what the peer does not have yet.
    pub fn on_local_change(&mut self, dir: &Directory) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != State::Up {
            return out;
        }
        if let Some(has) = self.peer_has
            && has < dir.seq()
        {
            self.catchup(dir, Some(dir.incarnation()), has, &mut out);
            self.peer_has = Some(dir.seq());
        }
        out
    }

    /// Timers: heartbeat, digest, timeout. Call at least every heartbeat interval.
    pub fn on_tick(&mut self, dir: &Directory, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Closed {
            return out;
        }
        if now.saturating_duration_since(self.last_rx) >= self.settings.timeout {
            self.state = State::Closed;
            out.push(Action::Close(LinkFailure::new(
                FailureKind::Timeout,
                format!(
                    "nothing from {} for {} s",
                    self.peer,
                    self.settings.timeout.as_secs_f32()
                ),
            )));
            return out;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.settings.heartbeat;
            out.push(Action::Send(Msg::Ping { seq: dir.seq() }));
        }
        if self.state == State::Up && now >= self.next_digest {
            self.next_digest = now + self.settings.digest_interval;
            out.push(Action::Send(Msg::Digest {
                origin: dir.me().to_owned(),
                incarnation: dir.incarnation(),
                seq: dir.seq(),
                digest: dir.own_digest(),
            }));
        }
        out
    }

    /// When `on_tick` should run next.
    pub fn next_deadline(&self) -> Instant {
        let t = self.next_ping.min(self.last_rx + self.settings.timeout);
        if self.state == State::Up {
            t.min(self.next_digest)
        } else {
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::directory::Digest;

    fn users(n: usize, prefix: &str) -> HashMap<String, u64> {
        (0..n).map(|i| (format!("{prefix}{i}@x"), 1)).collect()
    }

    fn settings() -> SessionSettings {
        SessionSettings {
            chunk: 3,
            max_entries: 50,
            timeout: Duration::from_secs(1000),
            ..SessionSettings::default()
        }
    }

    /// Two clusters and their sessions with each other, joined by an in-memory "wire" that
    /// serializes every message (so the wire format is exercised too).
    struct Pair {
        a: Directory,
        b: Directory,
        sa: Session,
        sb: Session,
        notes_a: Vec<Note>,
        notes_b: Vec<Note>,
        closed: Vec<LinkFailure>,
        delivered_b: Vec<Routed>,
    }

    impl Pair {
        fn new(
            a: Directory,
            b: Directory,
            ca: &str,
            cb: &str,
            s: SessionSettings,
            now: Instant,
        ) -> Self {
            let sa = Session::new(b.me(), ca, s.clone(), now);
            let sb = Session::new(a.me(), cb, s, now);
            Self {
                a,
                b,
                sa,
                sb,
                notes_a: vec![],
                notes_b: vec![],
                closed: vec![],
                delivered_b: vec![],
            }
        }

        /// Runs actions until both sides are quiet.
        fn pump(&mut self, mut to_b: Vec<Action>, mut to_a: Vec<Action>, now: Instant) {
            for _ in 0..1000 {
                if to_b.is_empty() && to_a.is_empty() {
                    return;
                }
                // a's actions (sent to b) first, then b's (sent to a).
                let next_a = Self::carry(
                    std::mem::take(&mut to_b),
                    (&mut self.sb, &mut self.b),
                    &mut self.notes_a,
                    &mut self.closed,
                    None,
                    now,
                );
                let next_b = Self::carry(
                    std::mem::take(&mut to_a),
                    (&mut self.sa, &mut self.a),
                    &mut self.notes_b,
                    &mut self.closed,
                    Some(&mut self.delivered_b),
                    now,
                );
                // Actions produced by b's session are for a, and the other way round.
                to_a = next_a;
                to_b = next_b;
            }
            panic!("no quiescence");
        }

        /// Carries one side's actions: what it sends goes through the wire to the other
        /// session (whose reply actions are returned); deliveries are only expected at b.
        fn carry(
            acts: Vec<Action>,
            (to, dir): (&mut Session, &mut Directory),
            notes: &mut Vec<Note>,
            closed: &mut Vec<LinkFailure>,
            mut delivered: Option<&mut Vec<Routed>>,
            now: Instant,
        ) -> Vec<Action> {
            let mut next = Vec::new();
            for act in acts {
                match act {
                    Action::Send(m) => {
                        let m = Msg::parse(&m.to_element()).unwrap();
                        next.extend(to.on_msg(m, dir, now));
                    }
                    Action::Note(n) => notes.push(n),
                    Action::Close(f) => closed.push(f),
                    Action::Deliver(r) => match delivered.as_deref_mut() {
                        Some(d) => d.push(r),
                        None => panic!("a delivered"),
                    },
                    // Route hand-over is the driver's (`delivery`), tested there.
                    Action::Resume { .. } | Action::Acked(_) => {}
                }
            }
            next
        }

        fn start(&mut self, now: Instant) {
            let x = self.sa.start(&self.a, Received::default());
            let y = self.sb.start(&self.b, Received::default());
            self.pump(x, y, now);
        }
    }

    #[test]
    fn a_new_peer_gets_a_snapshot_then_deltas() {
        let now = Instant::now();
        let mut a = Directory::new("tokyo", 1, 100);
        a.set_own(&users(10, "t"));
        let mut b = Directory::new("london", 2, 100);
        b.set_own(&users(4, "l"));
        let mut p = Pair::new(a, b, "c", "c", settings(), now);
        p.start(now);
        assert!(p.sa.is_up() && p.sb.is_up());
        assert_eq!(p.b.users_of("tokyo"), 10);
        assert_eq!(p.a.users_of("london"), 4);
        assert_eq!(p.b.replica_digest("tokyo"), Some(p.a.own_digest()));
        assert!(p.notes_a.contains(&Note::SnapshotOut(10)));
        assert!(p.notes_b.contains(&Note::SnapshotOut(4)));
        // A change at tokyo travels as a delta.
        let mut u = users(10, "t");
        u.insert("new@x".into(), 1);
        u.remove("t0@x");
        p.a.set_own(&u);
        let acts = p.sa.on_local_change(&p.a);
        assert!(
            acts.iter().any(
                |a| matches!(a, Action::Send(Msg::Deltas { changes, .. }) if changes.len() == 2)
            )
        );
        p.pump(acts, vec![], now);
        assert_eq!(p.b.resolve("new@x").unwrap().cluster, "tokyo");
        assert_eq!(p.b.resolve("t0@x"), None);
        assert_eq!(p.b.replica_position("tokyo"), Some((1, p.a.seq())));
        assert!(p.closed.is_empty(), "{:?}", p.closed);
    }

    #[test]
    fn a_reconnect_resumes_with_deltas_since_n() {
        let now = Instant::now();
        let mut a = Directory::new("tokyo", 1, 100);
        a.set_own(&users(5, "t"));
        let b = Directory::new("london", 2, 100);
        let mut p = Pair::new(a, b, "c", "c", settings(), now);
        p.start(now);
        // The link drops; tokyo changes; a new link comes up.
        let mut u = users(5, "t");
        u.insert("late@x".into(), 1);
        p.a.set_own(&u);
        p.sa = Session::new("london", "c", settings(), now);
        p.sb = Session::new("tokyo", "c", settings(), now);
        p.notes_a.clear();
        p.start(now);
        assert!(p.notes_a.contains(&Note::DeltasOut(1)), "{:?}", p.notes_a);
        assert!(!p.notes_a.iter().any(|n| matches!(n, Note::SnapshotOut(_))));
        assert_eq!(p.b.resolve("late@x").unwrap().cluster, "tokyo");
    }

    #[test]
    fn a_restarted_peer_is_detected_by_its_new_incarnation() {
        let now = Instant::now();
        let mut a = Directory::new("tokyo", 1, 100);
        a.set_own(&users(5, "t"));
        let b = Directory::new("london", 2, 100);
        let mut p = Pair::new(a, b, "c", "c", settings(), now);
        p.start(now);
        // tokyo restarts from a backup with fewer users and a new incarnation.
        let mut a2 = Directory::new("tokyo", 99, 100);
        a2.set_own(&users(3, "t"));
        p.a = a2;
        p.sa = Session::new("london", "c", settings(), now);
        p.sb = Session::new("tokyo", "c", settings(), now);
        p.notes_b.clear();
        p.notes_a.clear();
        p.start(now);
        assert!(
            p.notes_b
                .contains(&Note::IncarnationChanged { old: 1, new: 99 }),
            "{:?}",
            p.notes_b
        );
        assert_eq!(p.b.users_of("tokyo"), 3);
        assert_eq!(p.b.resolve("t4@x"), None);
        assert_eq!(p.b.replica_position("tokyo"), Some((99, p.a.seq())));
    }

    #[test]
    fn digest_comparison_finds_drift_and_repairs_it() {
        let t0 = Instant::now();
        let mut a = Directory::new("tokyo", 1, 100);
        a.set_own(&users(5, "t"));
        let b = Directory::new("london", 2, 100);
        let mut p = Pair::new(a, b, "c", "c", settings(), t0);
        p.start(t0);
        // Corrupt london's replica behind the protocol's back (same position, other content).
        let (inc, seq) = p.b.replica_position("tokyo").unwrap();
        let mut bad: Vec<(String, u64)> = users(5, "t").into_iter().collect();
        bad[0].1 = 7;
        let d = Digest::of(bad.iter().map(|(u, e)| (u.as_str(), *e)));
        p.b.apply_snapshot("tokyo", inc, seq, bad, d).unwrap();
        assert_ne!(p.b.replica_digest("tokyo"), Some(p.a.own_digest()));
        // tokyo's digest timer fires.
        let later = t0 + settings().digest_interval;
        let acts = p.sa.on_tick(&p.a, later);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Send(Msg::Digest { .. })))
        );
        p.pump(acts, vec![], later);
        assert!(p.notes_b.contains(&Note::DigestMismatch), "{:?}", p.notes_b);
        assert_eq!(p.b.replica_digest("tokyo"), Some(p.a.own_digest()));
        // The next comparison finds them equal.
        p.notes_b.clear();
        let later2 = later + settings().digest_interval;
        let acts = p.sa.on_tick(&p.a, later2);
        p.pump(acts, vec![], later2);
        assert!(p.notes_b.contains(&Note::Reconciled), "{:?}", p.notes_b);
        assert!(!p.notes_b.contains(&Note::DigestMismatch));
    }

    #[test]
    fn consistency_mismatch_refuses_or_flags() {
        let now = Instant::now();
        let mk = || {
            (
                Directory::new("tokyo", 1, 10),
                Directory::new("london", 2, 10),
            )
        };
        let (a, b) = mk();
        let mut p = Pair::new(a, b, "digest-1", "digest-2", settings(), now);
        p.start(now);
        assert!(!p.sa.is_up() && !p.sb.is_up());
        assert!(
            p.closed.iter().any(|f| f.kind == FailureKind::Consistency),
            "{:?}",
            p.closed
        );
        let (a, b) = mk();
        let flag = SessionSettings {
            on_mismatch: OnMismatch::Flag,
            ..settings()
        };
        let mut p = Pair::new(a, b, "digest-1", "digest-2", flag, now);
        p.start(now);
        assert!(p.sa.is_up() && p.sb.is_up());
        assert!(p.sa.flagged().unwrap().contains("digest-2"));
        assert!(p.closed.is_empty());
    }

    #[test]
    fn the_wrong_cluster_name_or_a_missing_hello_closes_the_link() {
        let now = Instant::now();
        let mut d = Directory::new("tokyo", 1, 10);
        let mut s = Session::new("london", "c", settings(), now);
        let acts = s.on_msg(
            Msg::Hello {
                cluster: "paris".into(),
                incarnation: 1,
                seq: 0,
                consistency: "c".into(),
                received: Received::default(),
            },
            &mut d,
            now,
        );
        assert!(matches!(&acts[..], [Action::Close(f)] if f.kind == FailureKind::CertName));
        let mut s = Session::new("london", "c", settings(), now);
        let acts = s.on_msg(Msg::Pong, &mut d, now);
        assert!(matches!(&acts[..], [Action::Close(f)] if f.kind == FailureKind::Protocol));
    }

    #[test]
    fn the_hello_says_what_was_taken_of_the_peer_and_acks_pass_through() {
        let now = Instant::now();
        let (mut a, mut b) = (
            Directory::new("tokyo", 0xa, 10),
            Directory::new("london", 0xb, 10),
        );
        let mut sa = Session::new("london", "c", settings(), now);
        let mut sb = Session::new("tokyo", "c", settings(), now);
        // tokyo took 5 routes of london's incarnation 0xb; london's record of tokyo is stale.
        let took = Received {
            incarnation: 0xb,
            count: 5,
            confirmed: 4,
        };
        let stale = Received {
            incarnation: 0x99,
            count: 7,
            confirmed: 7,
        };
        let hello = |acts: Vec<Action>| match &acts[..] {
            [Action::Send(m)] => Msg::parse(&m.to_element()).unwrap(),
            other => panic!("{other:?}"),
        };
        let ha = hello(sa.start(&a, took));
        let hb = hello(sb.start(&b, stale));
        let at_b = sb.on_msg(ha, &mut b, now);
        assert_eq!(
            at_b[0],
            Action::Resume {
                incarnation: 0xa,
                peer_has: Some((5, 4))
            }
        );
        let at_a = sa.on_msg(hb, &mut a, now);
        assert_eq!(
            at_a[0],
            Action::Resume {
                incarnation: 0xb,
                peer_has: None
            }
        );
        assert_eq!(
            sa.on_msg(Msg::Ack { h: 3 }, &mut a, now),
            vec![Action::Acked(3)]
        );
    }

    #[test]
    fn heartbeats_and_timeout() {
        let t0 = Instant::now();
        let d = Directory::new("tokyo", 1, 10);
        let s0 = settings();
        let mut s = Session::new("london", "c", s0.clone(), t0);
        assert!(s.on_tick(&d, t0).is_empty());
        let acts = s.on_tick(&d, t0 + s0.heartbeat);
        assert_eq!(acts, vec![Action::Send(Msg::Ping { seq: 0 })]);
        assert!(s.next_deadline() <= t0 + s0.timeout);
        let acts = s.on_tick(&d, t0 + s0.timeout);
        assert!(matches!(&acts[..], [Action::Close(f)] if f.kind == FailureKind::Timeout));
    }

    #[test]
    fn lag_is_measured_while_the_replica_is_behind() {
        let t0 = Instant::now();
        let mut a = Directory::new("tokyo", 1, 100);
        a.set_own(&users(2, "t"));
        let b = Directory::new("london", 2, 100);
        let mut p = Pair::new(a, b, "c", "c", settings(), t0);
        p.start(t0);
        assert_eq!(p.sb.lag(t0), Duration::ZERO);
        // A ping advertises a head london does not have yet.
        let t1 = t0 + Duration::from_secs(1);
        p.sb.on_msg(Msg::Ping { seq: p.a.seq() + 5 }, &mut p.b, t1);
        assert_eq!(
            p.sb.lag(t1 + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        let mut u = users(2, "t");
        for i in 0..5 {
            u.insert(format!("n{i}@x"), 1);
        }
        p.a.set_own(&u);
        let acts = p.sa.on_local_change(&p.a);
        p.pump(acts, vec![], t1);
        assert_eq!(p.sb.lag(t1 + Duration::from_secs(3)), Duration::ZERO);
    }

    /// A session with tokyo that is up, with a replica of tokyo at (4, 3).
    fn up_with_replica() -> (Directory, Session, Instant) {
        let now = Instant::now();
        let mut d = Directory::new("london", 1, 10);
        let mut t = Directory::new("tokyo", 4, 10);
        t.set_own(&users(3, "t"));
        let (seq, e, dg) = t.own_snapshot();
        d.apply_snapshot("tokyo", 4, seq, e, dg).unwrap();
        let mut s = Session::new("tokyo", "c", settings(), now);
        s.on_msg(
            Msg::Hello {
                cluster: "tokyo".into(),
                incarnation: 4,
                seq: 3,
                consistency: "c".into(),
                received: Received::default(),
            },
            &mut d,
            now,
        );
        assert!(s.is_up());
        (d, s, now)
    }

    #[test]
    fn absurd_sequence_numbers_neither_panic_nor_corrupt_the_replica() {
        let (mut d, mut s, now) = up_with_replica();
        // An empty batch at 0, a batch at 0, and a batch whose numbers overflow.
        for (first, changes) in [
            (0, vec![]),
            (
                0,
                vec![Change::Put {
                    user: "x@x".into(),
                    epoch: 1,
                }],
            ),
            (
                u64::MAX,
                vec![
                    Change::Del {
                        user: "t0@x".into(),
                    },
                    Change::Del {
                        user: "t1@x".into(),
                    },
                ],
            ),
        ] {
            s.on_msg(
                Msg::Deltas {
                    origin: "tokyo".into(),
                    incarnation: 4,
                    first,
                    changes,
                },
                &mut d,
                now,
            );
        }
        assert_eq!(d.replica_position("tokyo"), Some((4, 3)));
        assert_eq!(d.users_of("tokyo"), 3);
        assert_eq!(d.resolve("x@x"), None);
        // A snapshot at the highest seq, then deltas after it: refused, no overflow.
        d.apply_snapshot("tokyo", 4, u64::MAX, vec![], Digest::default())
            .unwrap();
        let r = d.apply_deltas(
            "tokyo",
            4,
            u64::MAX,
            &[Change::Del {
                user: "t0@x".into(),
            }],
        );
        assert!(matches!(r, Err(SyncError::Gap { .. })), "{r:?}");
    }

    #[test]
    fn messages_about_another_origin_close_the_link() {
        let msgs = [
            Msg::SnapshotBegin {
                origin: "london".into(),
                incarnation: 9,
                seq: 1,
                count: 1,
            },
            Msg::Deltas {
                origin: "paris".into(),
                incarnation: 9,
                first: 1,
                changes: vec![],
            },
            Msg::Entries {
                origin: "paris".into(),
                entries: vec![("a@x".into(), 1)],
            },
            Msg::Digest {
                origin: "paris".into(),
                incarnation: 9,
                seq: 1,
                digest: Digest::default(),
            },
            Msg::Subscribe {
                origin: "paris".into(),
                incarnation: None,
                since: 0,
            },
        ];
        for m in msgs {
            let (mut d, mut s, now) = up_with_replica();
            let acts = s.on_msg(m.clone(), &mut d, now);
            assert!(
                matches!(&acts[..], [Action::Close(f)] if f.kind == FailureKind::Protocol),
                "{m:?}: {acts:?}"
            );
            assert!(!s.is_up());
            assert_eq!(d.replica_position("london"), None);
        }
    }

    #[test]
    fn a_snapshot_or_replica_larger_than_the_bound_closes_the_link() {
        let (mut d, mut s, now) = up_with_replica();
        let max = settings().max_entries as u64;
        let acts = s.on_msg(
            Msg::SnapshotBegin {
                origin: "tokyo".into(),
                incarnation: 4,
                seq: 9,
                count: u64::MAX,
            },
            &mut d,
            now,
        );
        assert!(
            matches!(&acts[..], [Action::Close(f)] if f.kind == FailureKind::Protocol && f.detail.contains("entries")),
            "{acts:?}"
        );
        // Deltas that would grow the replica beyond the bound.
        let (mut d, mut s, now) = up_with_replica();
        let changes = (0..max)
            .map(|i| Change::Put {
                user: format!("n{i}@x"),
                epoch: 1,
            })
            .collect();
        let acts = s.on_msg(
            Msg::Deltas {
                origin: "tokyo".into(),
                incarnation: 4,
                first: 4,
                changes,
            },
            &mut d,
            now,
        );
        assert!(
            matches!(acts.last(), Some(Action::Close(f)) if f.kind == FailureKind::Protocol),
            "{acts:?}"
        );
        assert!(!s.is_up());
        assert_eq!(d.users_of("tokyo"), 3);
    }

    #[test]
    fn routed_stanzas_are_delivered_and_a_bad_snapshot_closes() {
        let now = Instant::now();
        let mut d = Directory::new("london", 1, 10);
        let mut s = Session::new("tokyo", "c", settings(), now);
        s.on_msg(
            Msg::Hello {
                cluster: "tokyo".into(),
                incarnation: 4,
                seq: 0,
                consistency: "c".into(),
                received: Received::default(),
            },
            &mut d,
            now,
        );
        let r = Routed {
            hops: 0,
            recipients: vec![],
            stanza: fedgate_s2s::element::Element::new("message", ""),
        };
        assert_eq!(
            s.on_msg(Msg::Route(r.clone()), &mut d, now),
            vec![Action::Deliver(r)]
        );
        let acts = s.on_msg(
            Msg::Entries {
                origin: "tokyo".into(),
                entries: vec![("a@x".into(), 1)],
            },
            &mut d,
            now,
        );
        assert!(matches!(&acts[..], [Action::Close(f)] if f.kind == FailureKind::Protocol));
    }
}
