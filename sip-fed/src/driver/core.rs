//! The core task: owns the [`Bridge`], the table of connections, the outbound link per
//! (partner, hosted domain) and the request pacer per partner; turns connection events, router
//! stanzas and timers into bridge calls and carries out what the bridge asks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedgate_s2s::driver::{Origin, Stanza};
use tokio::sync::{mpsc, watch};

use super::FailureKind;
use super::conn::{self, ConnId, Event, Shared};
use crate::authz_store::AuthzStore;
use crate::bridge::{Bridge, Dest, Out, top_branch};
use crate::msg::SipMessage;
use crate::pace::{Admit, Pacer};

/// After a failed connection attempt, requests to the partner fail at once for this long.
const FAIL_FAST: Duration = Duration::from_secs(5);
/// How often, at most, `/status` is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// Requests waiting for a connection to a partner (below the per-connection write queue, so
/// that all of them can be flushed when it is up).
const MAX_WAITING: usize = 4_000;

enum Link {
    Connecting(Vec<SipMessage>),
    Up(ConnId),
    Failed {
        until: Instant,
        kind: FailureKind,
        detail: String,
    },
}

struct ConnState {
    tx: mpsc::Sender<Vec<u8>>,
    outbound: Option<(String, String)>,
    /// Branches of our requests written here and not answered yet (with when), to fail them
    /// at once when the connection closes.
    inflight: HashMap<String, Instant>,
}

/// Above this many unanswered requests on one connection, entries older than the transaction
/// timeout (which the bridge has failed by Timer F already) are dropped.
const INFLIGHT_PRUNE: usize = 10_000;

pub(crate) struct Core {
    shared: Arc<Shared>,
    bridge: Bridge,
    conns: HashMap<ConnId, ConnState>,
    links: HashMap<(String, String), Link>,
    /// Requests to a partner held back by its rate (only while some wait or the bucket
    /// refills).
    pacers: HashMap<String, Pacer<(Dest, SipMessage)>>,
    status: watch::Sender<serde_json::Value>,
    last_status: Instant,
    /// Something changed since the status was last published.
    dirty: bool,
}

impl Core {
    pub fn new(
        shared: Arc<Shared>,
        authz_path: Option<PathBuf>,
        status: watch::Sender<serde_json::Value>,
    ) -> Result<Self, String> {
        let store = match authz_path {
            Some(p) => Some(AuthzStore::open(&p).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut cfg = shared.settings.bridge.clone();
        cfg.hosted = shared.ctx.hosted.iter().cloned().collect();
        for (d, p) in &shared.settings.partners {
            if let Some(f) = p.flavor {
                cfg.flavors.insert(d.clone(), f);
            }
        }
        Ok(Self {
            bridge: Bridge::new(cfg, store),
            shared,
            conns: HashMap::new(),
            links: HashMap::new(),
            pacers: HashMap::new(),
            status,
            last_status: Instant::now(),
            dirty: true,
        })
    }

    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut stanzas: mpsc::Receiver<Stanza>,
    ) {
        let mut shutdown = self.shared.ctx.shutdown_signal();
        let outs = self.bridge.restore(Instant::now());
        self.apply(outs, &mut stanzas);
        loop {
            let mut deadline = self
                .bridge
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            if let Some(p) = self.pacers.values().filter_map(Pacer::next_deadline).min() {
                deadline = deadline.min(tokio::time::Instant::from_std(p));
            }
            if self.dirty {
                // The status is published at most every STATUS_EVERY, and soon after a change.
                deadline = deadline.min(tokio::time::Instant::from_std(
                    self.last_status + STATUS_EVERY,
                ));
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev, &mut stanzas),
                    None => return,
                },
                st = stanzas.recv() => match st {
                    Some(st) => {
                        let outs = self.bridge.on_stanza(st.el, st.receipt, Instant::now());
                        self.apply(outs, &mut stanzas);
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let outs = self.bridge.poll(Instant::now());
                    self.apply(outs, &mut stanzas);
                    self.poll_pacers(&mut stanzas);
                }
                _ = shutdown.changed() => return,
            }
            self.dirty = true;
            if self.last_status.elapsed() >= STATUS_EVERY {
                self.publish_status();
            }
        }
    }

    fn publish_status(&mut self) {
        self.last_status = Instant::now();
        self.dirty = false;
        let mut v = self.bridge.status();
        let links: serde_json::Map<String, serde_json::Value> = self
            .links
            .iter()
            .map(|((remote, local), l)| {
                let state = match l {
                    Link::Connecting(q) => serde_json::json!({"state": "connecting", "queued": q.len()}),
                    Link::Up(_) => serde_json::json!({"state": "up"}),
                    Link::Failed { kind, detail, .. } => {
                        serde_json::json!({"state": "failed", "kind": kind.as_str(), "error": detail})
                    }
                };
                (format!("{local}->{remote}"), state)
            })
            .collect();
        let paced: serde_json::Map<String, serde_json::Value> = self
            .pacers
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(partner, p)| (partner.clone(), p.len().into()))
            .collect();
        if let Some(o) = v.as_object_mut() {
            o.insert("links".into(), links.into());
            o.insert("connections".into(), self.conns.len().into());
            o.insert("paced".into(), paced.into());
        }
        for (partner, sessions, subs) in self.bridge.dialog_counts() {
            let p = self.shared.metrics.partner_label(&partner);
            self.shared
                .metrics
                .dialogs
                .with_label_values(&[p.as_str(), "session"])
                .set(sessions as i64);
            self.shared
                .metrics
                .dialogs
                .with_label_values(&[p.as_str(), "subscription"])
                .set(subs as i64);
        }
        let _ = self.status.send(v);
    }

    fn on_event(&mut self, ev: Event, stanzas: &mut mpsc::Receiver<Stanza>) {
        match ev {
            Event::Up {
                id,
                tx,
                outbound,
                addr,
            } => {
                tracing::debug!(id, %addr, ?outbound, "sip: connection up");
                let queued = match &outbound {
                    Some(key) => match self.links.insert(key.clone(), Link::Up(id)) {
                        Some(Link::Connecting(queue)) => queue,
                        _ => Vec::new(),
                    },
                    None => Vec::new(),
                };
                if outbound.is_none() {
                    self.shared
                        .metrics
                        .connections
                        .with_label_values(&["in"])
                        .inc();
                }
                self.conns.insert(
                    id,
                    ConnState {
                        tx,
                        outbound,
                        inflight: HashMap::new(),
                    },
                );
                let mut work = Vec::new();
                for msg in queued {
                    self.write(id, &msg, &mut work);
                }
                self.apply(work, stanzas);
            }
            Event::Down { id, reason } => {
                tracing::debug!(id, %reason, "sip: connection down");
                if let Some(c) = self.conns.remove(&id) {
                    // Requests written here will get no answer: they fail now.
                    let mut outs = Vec::new();
                    for branch in c.inflight.keys() {
                        outs.extend(self.bridge.on_lost(
                            branch,
                            "connect",
                            &format!("the connection closed before the answer ({reason})"),
                        ));
                    }
                    self.apply(outs, stanzas);
                    match c.outbound {
                        Some(key) => {
                            if matches!(self.links.get(&key), Some(Link::Up(i)) if *i == id) {
                                self.links.remove(&key);
                            }
                        }
                        None => {
                            self.shared
                                .metrics
                                .connections
                                .with_label_values(&["in"])
                                .dec();
                        }
                    }
                }
            }
            Event::ConnectFailed {
                remote,
                local,
                kind,
                detail,
            } => {
                let key = (remote, local);
                let queue = match self.links.insert(
                    key,
                    Link::Failed {
                        until: Instant::now() + FAIL_FAST,
                        kind,
                        detail: detail.clone(),
                    },
                ) {
                    Some(Link::Connecting(q)) => q,
                    _ => Vec::new(),
                };
                let mut outs = Vec::new();
                for msg in queue {
                    outs.extend(self.bridge.on_send_failed(&msg, kind.as_str(), &detail));
                }
                self.apply(outs, stanzas);
            }
            Event::Message { id, msg, partner } => {
                let now = Instant::now();
                let outs = if msg.is_request() {
                    let partner = partner.unwrap_or_default();
                    self.bridge.on_request(id, &partner, msg, now)
                } else {
                    if let (Some(c), Some(branch)) = (self.conns.get_mut(&id), top_branch(&msg))
                        && msg.code().is_some_and(|c| c >= 200)
                    {
                        c.inflight.remove(&branch);
                    }
                    self.count_transaction(&msg, "out", "To");
                    self.bridge.on_response(msg, now)
                };
                self.apply(outs, stanzas);
            }
        }
    }

    /// Carries out the bridge's actions; stanzas go to the router, whose synchronous bounces
    /// come back on `stanzas` and are handed to the bridge before it settles the requests
    /// that are still waiting (so a bounced stanza's request gets its error, not `200`).
    fn apply(&mut self, outs: Vec<Out>, stanzas: &mut mpsc::Receiver<Stanza>) {
        let mut routed = false;
        let mut work = outs;
        loop {
            for o in std::mem::take(&mut work) {
                match o {
                    Out::Sip { dest, msg } => self.send(dest, msg, &mut work),
                    Out::Xmpp { el, local, remote } => {
                        routed = true;
                        let size = el.wire_len();
                        self.shared
                            .metrics
                            .translated
                            .with_label_values(&["sip-to-xmpp", el.name.as_str()])
                            .inc();
                        self.shared.ctx.sink().route(Stanza::new(
                            el,
                            size,
                            Origin::Sip { local, remote },
                        ));
                    }
                }
            }
            // Bounces the router produced while we routed.
            while let Ok(st) = stanzas.try_recv() {
                work.extend(self.bridge.on_stanza(st.el, st.receipt, Instant::now()));
            }
            if work.is_empty() {
                if routed {
                    routed = false;
                    work = self.bridge.settle();
                    if work.is_empty() {
                        return;
                    }
                } else {
                    return;
                }
            }
        }
    }

    /// Sends `msg`, or holds a request back while its partner's rate (`max_rate`) is used up.
    fn send(&mut self, dest: Dest, msg: SipMessage, work: &mut Vec<Out>) {
        if !msg.is_request() || msg.method() == Some("ACK") {
            return self.dispatch(dest, msg, work);
        }
        let partner = header_host(&msg, "To");
        let rate = self.shared.settings.max_rate(&partner);
        if rate <= 0.0 {
            return self.dispatch(dest, msg, work);
        }
        let now = Instant::now();
        let wait = self.shared.settings.pace_max_wait;
        let pacer = self
            .pacers
            .entry(partner.clone())
            .or_insert_with(|| Pacer::new(rate, wait, MAX_WAITING, now));
        match pacer.offer((dest, msg), now) {
            Admit::Now((dest, msg)) => self.dispatch(dest, msg, work),
            Admit::Queued => {
                let p = self.shared.metrics.partner_label(&partner);
                self.shared
                    .metrics
                    .paced
                    .with_label_values(&[p.as_str()])
                    .inc();
            }
            Admit::Refused((_, msg)) => {
                self.shared.metrics.failure(&partner, FailureKind::Limit);
                work.extend(self.bridge.on_send_failed(
                    &msg,
                    "limit",
                    &format!("too many requests waiting for {partner}'s rate of {rate}/s"),
                ));
            }
        }
    }

    /// Sends what the pacers release; fails what waited longer than `pace_max_wait`.
    fn poll_pacers(&mut self, stanzas: &mut mpsc::Receiver<Stanza>) {
        if self.pacers.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut expired = Vec::new();
        self.pacers.retain(|partner, p| {
            let (r, e) = p.poll(now);
            ready.extend(r);
            expired.extend(e.into_iter().map(|(_, msg)| (partner.clone(), msg)));
            !p.idle(now)
        });
        let mut work = Vec::new();
        for (dest, msg) in ready {
            self.dispatch(dest, msg, &mut work);
        }
        let wait = self.shared.settings.pace_max_wait.as_secs_f64();
        for (partner, msg) in expired {
            self.shared.metrics.failure(&partner, FailureKind::Limit);
            let rate = self.shared.settings.max_rate(&partner);
            work.extend(self.bridge.on_send_failed(
                &msg,
                "limit",
                &format!("waited more than {wait} s for {partner}'s rate of {rate}/s"),
            ));
        }
        self.apply(work, stanzas);
    }

    fn dispatch(&mut self, dest: Dest, msg: SipMessage, work: &mut Vec<Out>) {
        let (remote, local) = match dest {
            Dest::Conn(id) => {
                self.write(id, &msg, work);
                return;
            }
            Dest::Prefer {
                conn,
                remote,
                local,
            } => {
                if self.conns.contains_key(&conn) {
                    self.write(conn, &msg, work);
                    return;
                }
                (remote, local)
            }
            Dest::Partner { remote, local } => (remote, local),
        };
        if msg.is_request() {
            self.shared
                .metrics
                .translated
                .with_label_values(&["xmpp-to-sip", msg.method().unwrap_or("")])
                .inc();
        }
        let key = (remote, local);
        match self.links.get_mut(&key) {
            Some(Link::Up(id)) => {
                let id = *id;
                self.write(id, &msg, work);
            }
            Some(Link::Connecting(q)) => {
                if q.len() < MAX_WAITING {
                    q.push(msg);
                } else {
                    work.extend(self.bridge.on_send_failed(
                        &msg,
                        "limit",
                        "too many requests waiting for the connection",
                    ));
                }
            }
            Some(Link::Failed {
                until,
                kind,
                detail,
            }) if *until > Instant::now() => {
                let (kind, detail) = (kind.as_str(), detail.clone());
                work.extend(self.bridge.on_send_failed(&msg, kind, &detail));
            }
            _ => {
                self.links.insert(key.clone(), Link::Connecting(vec![msg]));
                let span = tracing::info_span!(
                    "sip_conn",
                    direction = "out",
                    partner = %key.0,
                    local = %key.1
                );
                tokio::spawn(tracing::Instrument::instrument(
                    conn::connect(self.shared.clone(), key.0, key.1),
                    span,
                ));
            }
        }
    }

    /// Counts a final response: `direction` "in" for requests partners sent us (the partner is
    /// in `From`), "out" for ours (the partner is in `To`).
    fn count_transaction(&self, resp: &SipMessage, direction: &str, partner_header: &str) {
        let Some(code) = resp.code().filter(|c| *c >= 200) else {
            return;
        };
        let partner = header_host(resp, partner_header);
        let method = resp.cseq().map(|(_, m)| m.to_owned()).unwrap_or_default();
        self.shared
            .metrics
            .transaction(&partner, direction, &method, code);
    }

    /// Queues `msg` on connection `id`. A request that cannot be queued (the connection is
    /// gone, or its write queue is full) fails at once with a typed failure instead of waiting
    /// for its transaction timeout; a response that cannot be queued is counted and logged.
    fn write(&mut self, id: ConnId, msg: &SipMessage, work: &mut Vec<Out>) {
        if !msg.is_request() {
            self.count_transaction(msg, "in", "From");
        }
        let timeout = self.bridge.config().txn_timeout;
        let (kind, detail) = match self.conns.get_mut(&id) {
            Some(c) => match c.tx.try_send(msg.to_bytes()) {
                Ok(()) => {
                    if msg.is_request()
                        && msg.method() != Some("ACK")
                        && let Some(branch) = top_branch(msg)
                    {
                        if c.inflight.len() >= INFLIGHT_PRUNE {
                            c.inflight.retain(|_, at| at.elapsed() < timeout);
                        }
                        c.inflight.insert(branch, Instant::now());
                    }
                    return;
                }
                Err(_) => (FailureKind::Limit, "the connection's write queue is full"),
            },
            None => (FailureKind::Connect, "the connection closed"),
        };
        let partner = self
            .conns
            .get(&id)
            .and_then(|c| c.outbound.as_ref().map(|(r, _)| r.clone()))
            .unwrap_or_else(|| "unknown".to_owned());
        self.shared.metrics.failure(&partner, kind);
        tracing::warn!(id, kind = kind.as_str(), detail, "sip: message not sent");
        if msg.is_request() {
            work.extend(self.bridge.on_send_failed(msg, kind.as_str(), detail));
        }
    }
}

/// The lower-case host of the address in `header` (`From`, `To`), or "".
fn header_host(msg: &SipMessage, header: &str) -> String {
    msg.header(header)
        .and_then(|v| crate::hdr::NameAddr::parse(v).ok())
        .and_then(|na| crate::address::SipUri::parse(na.uri()).ok())
        .map(|u| u.host.to_ascii_lowercase())
        .unwrap_or_default()
}
