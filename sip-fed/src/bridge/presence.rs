//! Presence both ways (RFC 8048).
//!
//! An XMPP subscription is a long-lived authorization; a SIP subscription is a notification
//! dialog that lives for `Expires` seconds. The authorizations are kept in the durable
//! [`AuthzStore`](crate::authz_store::AuthzStore) so they survive a restart; the notification
//! dialogs are refreshed before they expire (at 80 % of the granted time, minus up to 10 %
//! jitter, so that many subscriptions made together do not refresh together) and, after a
//! restart, made again from the store ([`restore`]).
//!
//! XMPP user watching a SIP user (we subscribe):
//! `subscribe` → SUBSCRIBE; NOTIFY `pending` → nothing for XMPP; the first NOTIFY `active` →
//! `subscribed`, then the presence in its PIDF; NOTIFY `terminated;reason=rejected` →
//! `unsubscribed`; `unsubscribe` → SUBSCRIBE `Expires: 0`, and `unsubscribed` on its 2xx;
//! `probe` → a one-off fetch (SUBSCRIBE `Expires: 0` in a new dialog).
//!
//! SIP user watching an XMPP user (they subscribe): SUBSCRIBE → 200 at once, then NOTIFY
//! `active` with the current presence when the user already authorized the watcher, else
//! NOTIFY `pending` and XMPP `subscribe`; `subscribed` → NOTIFY `active`; `unsubscribed` →
//! NOTIFY `terminated;reason=rejected`; each presence of the user → NOTIFY with the PIDF of its
//! most available resource; an expired subscription → NOTIFY `terminated;reason=timeout`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fedgate_s2s::element::Element;
use rand::Rng;

use super::pending::{Ctx, SubscribeKind};
use super::{
    Bridge, ConnId, Dest, Out, ReqCtx, bounce_sip, header_jid, respond, respond_with, stanza,
};
use crate::address::{Jid, jid_to_sip};
use crate::authz_store::{Authz, AuthzStore, Subscription};
use crate::dialog::Dialog;
use crate::hdr::{NameAddr, SubscriptionState};
use crate::msg::SipMessage;
use crate::pidf::{XmppPresence, from_pidf, most_available, to_pidf};

type Key = (String, String);

/// What a SIP notification dialog of ours is doing (for `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceState {
    Subscribing,
    Pending,
    Active,
}

/// A local user watching a partner user (our SUBSCRIBE).
struct Watching {
    partner: String,
    local: Jid,
    remote: Jid,
    call_id: String,
    /// The SUBSCRIBE that made the dialog (for building it from the 2xx).
    first: SipMessage,
    dialog: Option<Dialog>,
    state: PresenceState,
    refresh_at: Option<Instant>,
    unsubscribing: bool,
}

/// A partner user watching a local user (their SUBSCRIBE).
struct Watcher {
    partner: String,
    local: Jid,
    dialog: Dialog,
    conn: ConnId,
    expires_at: Instant,
    active: bool,
    /// A NOTIFY of this dialog awaits its final response (RFC 6665 §4.2.2: no new NOTIFY in
    /// the dialog until then).
    notify_in_flight: bool,
    /// The state changed while a NOTIFY was in flight: send the current state on its answer.
    notify_again: bool,
}

pub(crate) struct Presence {
    store: Option<AuthzStore>,
    /// Authorizations when no store is configured (lost at restart; the config docs say so).
    memory: HashMap<Key, Authz>,
    watching: HashMap<Key, Watching>,
    watchers: HashMap<Key, Watcher>,
    /// Call-ID → (is_watcher, key).
    by_call: HashMap<String, (bool, Key)>,
    /// Call-IDs of one-off fetches → (local prober, partner user, when to give up waiting
    /// for the NOTIFY).
    fetches: HashMap<String, (Jid, Jid, Instant)>,
    /// Current presence of local users, per resource.
    local: HashMap<String, BTreeMap<String, XmppPresence>>,
}

impl Presence {
    pub fn new(store: Option<AuthzStore>) -> Self {
        Self {
            store,
            memory: HashMap::new(),
            watching: HashMap::new(),
            watchers: HashMap::new(),
            by_call: HashMap::new(),
            fetches: HashMap::new(),
            local: HashMap::new(),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let a = self.watching.values().filter_map(|w| w.refresh_at).min();
        let b = self.watchers.values().map(|w| w.expires_at).min();
        let c = self.fetches.values().map(|f| f.2).min();
        a.into_iter().chain(b).chain(c).min()
    }

    /// (our subscriptions, their subscriptions) with `partner`.
    pub fn count_for(&self, partner: &str) -> (usize, usize) {
        (
            self.watching
                .values()
                .filter(|w| w.partner == partner)
                .count(),
            self.watchers
                .values()
                .filter(|w| w.partner == partner)
                .count(),
        )
    }

    #[cfg(test)]
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("watching", self.watching.len()),
            ("watchers", self.watchers.len()),
            ("presence by_call", self.by_call.len()),
            ("fetches", self.fetches.len()),
            (
                "local presences",
                self.local.values().map(BTreeMap::len).sum(),
            ),
        ]
    }

    fn authz(&self, local: &str, remote: &str) -> Authz {
        match &self.store {
            Some(s) => s.get(local, remote),
            None => self
                .memory
                .get(&(local.to_owned(), remote.to_owned()))
                .cloned(),
        }
        .unwrap_or_default()
    }

    fn update(&mut self, local: &str, remote: &str, f: impl FnOnce(&mut Authz)) {
        let mut a = self.authz(local, remote);
        f(&mut a);
        a.updated_unix = fedgate_certs::unix_now();
        let empty = a.subscription == Subscription::None && !a.pending_in && !a.pending_out;
        match &mut self.store {
            Some(s) => {
                let r = if empty {
                    s.remove(local, remote).map(|_| ())
                } else {
                    s.set(local, remote, a)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "sip: cannot save a presence authorization");
                }
            }
            None => {
                let k = (local.to_owned(), remote.to_owned());
                if empty {
                    self.memory.remove(&k);
                } else {
                    self.memory.insert(k, a);
                }
            }
        }
    }

    fn aggregate(&self, local_bare: &str) -> Option<XmppPresence> {
        let all: Vec<XmppPresence> = self
            .local
            .get(local_bare)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        most_available(&all).cloned()
    }
}

/// `has` with the "to" half (the local user receives the partner user's presence) and/or the
/// "from" half (the partner user receives ours) set or cleared.
fn change(has: Subscription, to: Option<bool>, from: Option<bool>) -> Subscription {
    let (t, f) = match has {
        Subscription::None => (false, false),
        Subscription::To => (true, false),
        Subscription::From => (false, true),
        Subscription::Both => (true, true),
    };
    match (to.unwrap_or(t), from.unwrap_or(f)) {
        (false, false) => Subscription::None,
        (true, false) => Subscription::To,
        (false, true) => Subscription::From,
        (true, true) => Subscription::Both,
    }
}

fn with_to(has: Subscription) -> Subscription {
    change(has, Some(true), None)
}

fn with_from(has: Subscription) -> Subscription {
    change(has, None, Some(true))
}

fn without_to(has: Subscription) -> Subscription {
    change(has, Some(false), None)
}

fn without_from(has: Subscription) -> Subscription {
    change(has, None, Some(false))
}

fn presence_stanza(kind: Option<&str>, from: &Jid, to: &Jid) -> Element {
    let mut p = stanza("presence", from, to);
    if let Some(t) = kind {
        p.set_attr("type", t);
    }
    p
}

/// A presence stanza of type `kind` from partner user `remote` to local user `local`.
fn send_presence(out: &mut Vec<Out>, kind: &str, remote: &Jid, local: &Jid) {
    xmpp_out(
        out,
        presence_stanza(Some(kind), remote, local),
        local,
        remote,
    );
}

fn xmpp_out(out: &mut Vec<Out>, el: Element, local: &Jid, remote: &Jid) {
    out.push(Out::Xmpp {
        el,
        local: local.domain.clone(),
        remote: remote.domain.clone(),
    });
}

/// Refresh at 80 % of `expires`, minus up to 10 % jitter.
fn refresh_time(now: Instant, expires: u32) -> Instant {
    let secs = f64::from(expires.max(10));
    let jitter = rand::rng().random_range(0.0..0.1);
    now + Duration::from_secs_f64(secs * (0.8 - jitter))
}

// ------------------------------------------------------------------------ XMPP → SIP

pub(super) fn on_presence(
    b: &mut Bridge,
    el: Element,
    from: Jid,
    to: Jid,
    now: Instant,
    out: &mut Vec<Out>,
) {
    let (local, remote) = (from.bare().to_string(), to.bare().to_string());
    match el.attr("type") {
        Some("subscribe") => {
            b.presence.update(&local, &remote, |a| a.pending_out = true);
            let k = (local, remote);
            if let Some(w) = b.presence.watching.get(&k)
                && w.state == PresenceState::Active
            {
                // Already subscribed: confirm again (RFC 6121 §3.1.3).
                send_presence(out, "subscribed", &to.bare(), &from.bare());
                return;
            }
            subscribe(b, &from.bare(), &to.bare(), SubscribeKind::New, now, out);
        }
        Some("unsubscribe") => {
            b.presence.update(&local, &remote, |a| {
                a.subscription = without_to(a.subscription);
                a.pending_out = false;
            });
            let k = (local, remote);
            if b.presence
                .watching
                .get(&k)
                .is_some_and(|w| w.dialog.is_some())
            {
                subscribe(
                    b,
                    &from.bare(),
                    &to.bare(),
                    SubscribeKind::Unsubscribe,
                    now,
                    out,
                );
            } else {
                if let Some(w) = b.presence.watching.remove(&k) {
                    b.presence.by_call.remove(&w.call_id);
                }
                send_presence(out, "unsubscribed", &to.bare(), &from.bare());
            }
        }
        Some("subscribed") => {
            b.presence.update(&local, &remote, |a| {
                a.subscription = with_from(a.subscription);
                a.pending_in = false;
            });
            let k = (remote, local);
            if let Some(w) = b.presence.watchers.get_mut(&k) {
                w.active = true;
            }
            notify(b, &k, None, now, out);
        }
        Some("unsubscribed") => {
            b.presence.update(&local, &remote, |a| {
                a.subscription = without_from(a.subscription);
                a.pending_in = false;
            });
            let k = (remote, local);
            notify(b, &k, Some("terminated;reason=rejected"), now, out);
            if let Some(w) = b.presence.watchers.remove(&k) {
                b.presence.by_call.remove(&w.dialog.id.call_id);
            }
        }
        Some("probe") => {
            if b.presence.authz(&local, &remote).subscription == Subscription::None {
                return;
            }
            fetch(b, &from.bare(), &to.bare(), now, out);
        }
        None | Some("unavailable") => {
            let p = match XmppPresence::from_element(&el) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "sip: presence not mapped");
                    return;
                }
            };
            let resource = from.resource.clone().unwrap_or_default();
            let entry = b.presence.local.entry(local.clone()).or_default();
            if p.available {
                entry.insert(resource, p);
            } else {
                entry.remove(&resource);
                if entry.is_empty() {
                    b.presence.local.remove(&local);
                }
            }
            // Directed presence to a partner user: notify its subscription, if any.
            notify(b, &(remote, local), None, now, out);
        }
        Some(_) => {}
    }
}

/// Sends a SUBSCRIBE for local user `local` to partner user `remote`.
fn subscribe(
    b: &mut Bridge,
    local: &Jid,
    remote: &Jid,
    kind: SubscribeKind,
    now: Instant,
    out: &mut Vec<Out>,
) {
    let k = (local.to_string(), remote.to_string());
    let partner = remote.domain.clone();
    let expires = if kind == SubscribeKind::Unsubscribe {
        0
    } else {
        b.cfg.subscription_expires
    };
    let sent_by = b.sent_by();
    let existing = b.presence.watching.get_mut(&k);
    let req = match existing.and_then(|w| w.dialog.as_mut()) {
        Some(d) if kind != SubscribeKind::New => {
            let mut r = d.request("SUBSCRIBE", &sent_by);
            r.push_header("Event", "presence");
            r.push_header("Accept", "application/pidf+xml");
            r.push_header("Expires", expires.to_string());
            r
        }
        _ => {
            let req = new_subscribe(b, local, remote, expires);
            let call_id = req.call_id().unwrap_or_default().to_owned();
            if let Some(old) = b.presence.watching.remove(&k) {
                b.presence.by_call.remove(&old.call_id);
            }
            b.presence
                .by_call
                .insert(call_id.clone(), (false, k.clone()));
            b.presence.watching.insert(
                k.clone(),
                Watching {
                    partner: partner.clone(),
                    local: local.clone(),
                    remote: remote.clone(),
                    call_id,
                    first: req.clone(),
                    dialog: None,
                    state: PresenceState::Subscribing,
                    refresh_at: None,
                    unsubscribing: false,
                },
            );
            req
        }
    };
    if let Some(w) = b.presence.watching.get_mut(&k) {
        w.refresh_at = None;
        w.unsubscribing |= kind == SubscribeKind::Unsubscribe;
    }
    let dest = Dest::Partner {
        remote: partner.clone(),
        local: local.domain.clone(),
    };
    b.send_request(
        req,
        dest,
        Ctx::Subscribe {
            partner,
            key: k,
            kind,
        },
        now,
        out,
    );
}

fn new_subscribe(b: &Bridge, local: &Jid, remote: &Jid, expires: u32) -> SipMessage {
    let target = jid_to_sip(remote);
    let mut req = SipMessage::request("SUBSCRIBE", target.to_string());
    let mut from_hdr = NameAddr::new(jid_to_sip(local).to_string());
    from_hdr.set_tag(&crate::hdr::new_tag());
    req.push_header("From", from_hdr.to_string());
    req.push_header("To", format!("<{target}>"));
    req.push_header("Call-ID", crate::hdr::new_call_id(&b.cfg.host));
    req.push_header("CSeq", "1 SUBSCRIBE");
    req.push_header("Contact", b.contact(local));
    req.push_header("Event", "presence");
    req.push_header("Accept", "application/pidf+xml");
    req.push_header("Expires", expires.to_string());
    req
}

/// A probe: a one-off SUBSCRIBE `Expires: 0` (RFC 6665 fetch); its NOTIFY answers the prober.
fn fetch(b: &mut Bridge, local: &Jid, remote: &Jid, now: Instant, out: &mut Vec<Out>) {
    let req = new_subscribe(b, local, remote, 0);
    let call_id = req.call_id().unwrap_or_default().to_owned();
    // Given up when neither the 2xx nor the NOTIFY comes (RFC 6665 §4.1.2.4: 64·T1 after the
    // 2xx), so that a partner that never notifies leaves nothing behind.
    let give_up = now + 2 * b.cfg.txn_timeout;
    b.presence
        .fetches
        .insert(call_id, (local.clone(), remote.clone(), give_up));
    let partner = remote.domain.clone();
    let dest = Dest::Partner {
        remote: partner.clone(),
        local: local.domain.clone(),
    };
    let key = (local.to_string(), remote.to_string());
    b.send_request(
        req,
        dest,
        Ctx::Subscribe {
            partner,
            key,
            kind: SubscribeKind::Fetch,
        },
        now,
        out,
    );
}

/// Sends a NOTIFY on watcher `k` = (partner user, local user): with `state` when given
/// (`terminated;…`), else `active`/`pending` as the watcher is, with the user's current
/// presence as PIDF when active.
fn notify(b: &mut Bridge, k: &Key, state: Option<&str>, now: Instant, out: &mut Vec<Out>) {
    let presence = b.presence.aggregate(&k.1);
    let sent_by = b.sent_by();
    let Some(w) = b.presence.watchers.get_mut(k) else {
        return;
    };
    // One NOTIFY at a time per dialog (RFC 6665 §4.2.2); a state change meanwhile is sent,
    // as it then is, when the NOTIFY in flight is answered. A final (terminated) NOTIFY is
    // sent at once: the watcher ends with it.
    if w.notify_in_flight && state.is_none() {
        w.notify_again = true;
        return;
    }
    w.notify_in_flight = true;
    w.notify_again = false;
    let remaining = w.expires_at.saturating_duration_since(now).as_secs();
    let sub_state = match state {
        Some(s) => s.to_owned(),
        None if w.active => format!("active;expires={remaining}"),
        None => format!("pending;expires={remaining}"),
    };
    let mut req = w.dialog.request("NOTIFY", &sent_by);
    req.push_header("Event", "presence");
    req.push_header("Subscription-State", sub_state);
    if w.active && state.is_none_or(|s| !s.contains("rejected")) {
        let p = presence.unwrap_or_else(XmppPresence::unavailable);
        let entity = jid_to_sip(&w.local.bare()).to_string();
        req.push_header("Content-Type", "application/pidf+xml");
        req.body = to_pidf(&entity, &p);
    }
    let dest = Dest::Prefer {
        conn: w.conn,
        remote: w.partner.clone(),
        local: w.local.domain.clone(),
    };
    let partner = w.partner.clone();
    b.send_request(
        req,
        dest,
        Ctx::Notify {
            partner,
            key: k.clone(),
        },
        now,
        out,
    );
}

// ------------------------------------------------------------------------ SIP → XMPP

/// A new SUBSCRIBE from a partner user.
pub(super) fn on_subscribe(b: &mut Bridge, ctx: &ReqCtx, req: SipMessage, out: &mut Vec<Out>) {
    let event = req.header("Event").unwrap_or("");
    if event
        .split(';')
        .next()
        .is_none_or(|e| e.trim() != "presence")
    {
        respond_with(
            out,
            ctx.conn,
            &req,
            (489, "Bad Event"),
            &[("Allow-Events", "presence")],
        );
        return;
    }
    let accepts_pidf = req.headers("Accept").next().is_none()
        || req
            .headers("Accept")
            .any(|a| a.trim().starts_with("application/pidf+xml"));
    if !accepts_pidf {
        respond_with(
            out,
            ctx.conn,
            &req,
            (406, "Not Acceptable"),
            &[("Accept", "application/pidf+xml")],
        );
        return;
    }
    let local = match header_jid(&req, "To") {
        Ok(j) if b.cfg.hosted.contains(&j.domain) && j.local.is_some() => j.bare(),
        Ok(_) => return respond(out, ctx.conn, &req, 404, "Not Found"),
        Err((code, reason)) => return respond(out, ctx.conn, &req, code, &reason),
    };
    let remote = match header_jid(&req, "From") {
        Ok(j) if j.domain == ctx.partner => j.bare(),
        Ok(_) => {
            return respond(
                out,
                ctx.conn,
                &req,
                403,
                "From domain does not match the connection",
            );
        }
        Err((code, reason)) => return respond(out, ctx.conn, &req, code, &reason),
    };
    let expires = req
        .header("Expires")
        .and_then(|e| crate::hdr::parse_expires(e).ok())
        .unwrap_or(b.cfg.subscription_expires)
        .min(b.cfg.subscription_expires);
    let local_tag = crate::hdr::new_tag();
    let contact = b.contact(&local);
    let dialog = match Dialog::uas(&req, &local_tag, &contact) {
        Ok(d) => d,
        Err(e) => return respond(out, ctx.conn, &req, 400, &format!("Bad Request ({e})")),
    };
    let mut ok = SipMessage::response_to(&req, 200, "OK");
    let _ = ok.set_to_tag(&local_tag);
    ok.push_header("Contact", contact);
    ok.push_header("Expires", expires.to_string());
    out.push(Out::Sip {
        dest: Dest::Conn(ctx.conn),
        msg: ok,
    });
    let (l, r) = (local.to_string(), remote.to_string());
    let authz = b.presence.authz(&l, &r);
    let authorized = matches!(authz.subscription, Subscription::From | Subscription::Both);
    let k = (r.clone(), l.clone());
    if let Some(old) = b.presence.watchers.remove(&k) {
        b.presence.by_call.remove(&old.dialog.id.call_id);
    }
    b.presence
        .by_call
        .insert(dialog.id.call_id.clone(), (true, k.clone()));
    b.presence.watchers.insert(
        k.clone(),
        Watcher {
            partner: ctx.partner.clone(),
            local: local.clone(),
            dialog,
            conn: ctx.conn,
            expires_at: ctx.now + Duration::from_secs(expires.into()),
            active: authorized,
            notify_in_flight: false,
            notify_again: false,
        },
    );
    if expires == 0 {
        // A fetch: one NOTIFY with the state, and the dialog ends.
        notify(b, &k, Some("terminated;reason=timeout"), ctx.now, out);
        if let Some(w) = b.presence.watchers.remove(&k) {
            b.presence.by_call.remove(&w.dialog.id.call_id);
        }
        if authorized && b.presence.aggregate(&l).is_none() {
            send_presence(out, "probe", &remote, &local);
        }
        return;
    }
    notify(b, &k, None, ctx.now, out);
    if authorized {
        if b.presence.aggregate(&l).is_none() {
            send_presence(out, "probe", &remote, &local);
        }
    } else {
        b.presence.update(&l, &r, |a| a.pending_in = true);
        send_presence(out, "subscribe", &remote, &local);
    }
}

pub(super) fn owns(b: &Bridge, req: &SipMessage) -> bool {
    req.call_id()
        .is_some_and(|c| b.presence.by_call.contains_key(c) || b.presence.fetches.contains_key(c))
}

pub(super) fn in_dialog(b: &mut Bridge, ctx: &ReqCtx, req: SipMessage, out: &mut Vec<Out>) {
    let call_id = req.call_id().unwrap_or_default().to_owned();
    match req.method().unwrap_or("") {
        "NOTIFY" => on_notify(b, ctx, &call_id, req, out),
        "SUBSCRIBE" => {
            // A refresh (or end) of a partner's subscription.
            let Some((true, k)) = b.presence.by_call.get(&call_id).cloned() else {
                return respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
            };
            let expires = req
                .header("Expires")
                .and_then(|e| crate::hdr::parse_expires(e).ok())
                .unwrap_or(b.cfg.subscription_expires)
                .min(b.cfg.subscription_expires);
            let contact = match b.presence.watchers.get(&k) {
                Some(w) => b.contact(&w.local),
                None => String::new(),
            };
            let Some(w) = b.presence.watchers.get_mut(&k) else {
                return respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
            };
            if let Err((code, reason)) = w.dialog.on_remote_request(&req) {
                return respond(out, ctx.conn, &req, code, reason);
            }
            w.expires_at = ctx.now + Duration::from_secs(expires.into());
            w.conn = ctx.conn;
            // SUBSCRIBE is a target refresh request: its 2xx carries our Contact (RFC 6665
            // §4.1.2.1, RFC 3261 §12.2.2).
            let mut ok = SipMessage::response_to(&req, 200, "OK");
            ok.push_header("Contact", contact);
            ok.push_header("Expires", expires.to_string());
            out.push(Out::Sip {
                dest: Dest::Conn(ctx.conn),
                msg: ok,
            });
            if expires == 0 {
                notify(b, &k, Some("terminated;reason=timeout"), ctx.now, out);
                if let Some(w) = b.presence.watchers.remove(&k) {
                    b.presence.by_call.remove(&w.dialog.id.call_id);
                }
            } else {
                notify(b, &k, None, ctx.now, out);
            }
        }
        _ => {
            let mut resp = SipMessage::response_to(&req, 405, "Method Not Allowed");
            resp.push_header("Allow", super::ALLOW);
            out.push(Out::Sip {
                dest: Dest::Conn(ctx.conn),
                msg: resp,
            });
        }
    }
}

fn on_notify(b: &mut Bridge, ctx: &ReqCtx, call_id: &str, req: SipMessage, out: &mut Vec<Out>) {
    let state = match req
        .header("Subscription-State")
        .map(SubscriptionState::parse)
    {
        Some(Ok(s)) => s,
        _ => {
            return respond(
                out,
                ctx.conn,
                &req,
                400,
                "Missing or bad Subscription-State",
            );
        }
    };
    let presence = if req.body.is_empty() {
        None
    } else {
        match from_pidf(&req.body) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "sip: NOTIFY body is not PIDF we can read");
                None
            }
        }
    };
    // A fetch for an XMPP probe.
    if let Some((local, remote, _)) = b.presence.fetches.get(call_id).cloned() {
        respond(out, ctx.conn, &req, 200, "OK");
        if state.state.eq_ignore_ascii_case("terminated") {
            b.presence.fetches.remove(call_id);
        }
        if let Some(p) = presence {
            xmpp_out(
                out,
                p.to_element(&remote.to_string(), &local.to_string()),
                &local,
                &remote,
            );
        }
        return;
    }
    let Some((false, k)) = b.presence.by_call.get(call_id).cloned() else {
        return respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
    };
    let Some(w) = b.presence.watching.get_mut(&k) else {
        return respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
    };
    if let Some(d) = w.dialog.as_mut()
        && let Err((code, reason)) = d.on_remote_request(&req)
    {
        return respond(out, ctx.conn, &req, code, reason);
    }
    respond(out, ctx.conn, &req, 200, "OK");
    let (local, remote) = (w.local.clone(), w.remote.clone());
    match state.state.to_ascii_lowercase().as_str() {
        "pending" => {
            // RFC 8048 §5.2.1: nothing goes to XMPP while the partner user decides.
            if w.state == PresenceState::Subscribing {
                w.state = PresenceState::Pending;
            }
        }
        "active" => {
            let first = w.state != PresenceState::Active;
            w.state = PresenceState::Active;
            if let Some(exp) = state.expires() {
                w.refresh_at = Some(refresh_time(ctx.now, exp));
            }
            if first {
                b.presence.update(&k.0, &k.1, |a| {
                    a.subscription = with_to(a.subscription);
                    a.pending_out = false;
                });
                send_presence(out, "subscribed", &remote, &local);
            }
            if let Some(p) = presence {
                xmpp_out(
                    out,
                    p.to_element(&remote.to_string(), &local.to_string()),
                    &local,
                    &remote,
                );
            }
        }
        _ => {
            // terminated
            let reason = state.reason().unwrap_or("").to_ascii_lowercase();
            let unsubscribing = w.unsubscribing;
            b.presence.by_call.remove(call_id);
            b.presence.watching.remove(&k);
            match reason.as_str() {
                "rejected" | "noresource" => {
                    b.presence.update(&k.0, &k.1, |a| {
                        a.subscription = without_to(a.subscription);
                        a.pending_out = false;
                    });
                    send_presence(out, "unavailable", &remote, &local);
                    send_presence(out, "unsubscribed", &remote, &local);
                }
                _ if unsubscribing => {}
                _ => {
                    // deactivated, timeout, probation, giveup or none: the authorization
                    // stands; make a new notification dialog.
                    let a = b.presence.authz(&k.0, &k.1);
                    if matches!(a.subscription, Subscription::To | Subscription::Both)
                        || a.pending_out
                    {
                        subscribe(b, &local, &remote, SubscribeKind::New, ctx.now, out);
                    }
                }
            }
        }
    }
}

pub(super) fn on_final(
    b: &mut Bridge,
    ctx: Ctx,
    req: &SipMessage,
    resp: &SipMessage,
    now: Instant,
    out: &mut Vec<Out>,
) {
    let code = resp.code().unwrap_or(500);
    match ctx {
        Ctx::Subscribe { key: k, kind, .. } => {
            if kind == SubscribeKind::Fetch {
                let Some(call_id) = req.call_id() else { return };
                if code >= 300 {
                    b.presence.fetches.remove(call_id);
                } else if let Some(f) = b.presence.fetches.get_mut(call_id) {
                    f.2 = now + b.cfg.txn_timeout;
                }
                return;
            }
            let Some(w) = b.presence.watching.get_mut(&k) else {
                return;
            };
            let (local, remote) = (w.local.clone(), w.remote.clone());
            if code < 300 {
                if w.dialog.is_none() {
                    match Dialog::uac(&w.first, resp) {
                        Ok(d) => w.dialog = Some(d),
                        Err(e) => {
                            tracing::warn!(error = %e, "sip: 2xx to SUBSCRIBE makes no dialog")
                        }
                    }
                }
                let granted = resp
                    .header("Expires")
                    .and_then(|e| crate::hdr::parse_expires(e).ok())
                    .or_else(|| {
                        req.header("Expires")
                            .and_then(|e| crate::hdr::parse_expires(e).ok())
                    })
                    .unwrap_or(b.cfg.subscription_expires);
                if kind == SubscribeKind::Unsubscribe {
                    // RFC 8048 §5.3: confirm to the XMPP user.
                    w.refresh_at = None;
                    send_presence(out, "unsubscribed", &remote, &local);
                    if let Some(w) = b.presence.watching.remove(&k) {
                        b.presence.by_call.remove(&w.call_id);
                    }
                } else {
                    w.refresh_at = Some(refresh_time(now, granted));
                }
                return;
            }
            match (kind, code) {
                (SubscribeKind::Refresh, 481) | (SubscribeKind::Refresh, 408) => {
                    // The partner lost the dialog: a new one.
                    subscribe(b, &local, &remote, SubscribeKind::New, now, out);
                }
                (SubscribeKind::Refresh, _) => {
                    w.refresh_at = Some(now + Duration::from_secs(60));
                }
                (SubscribeKind::Unsubscribe, _) => {
                    if let Some(w) = b.presence.watching.remove(&k) {
                        b.presence.by_call.remove(&w.call_id);
                    }
                    send_presence(out, "unsubscribed", &remote, &local);
                }
                _ => {
                    // A refused subscription request.
                    if let Some(w) = b.presence.watching.remove(&k) {
                        b.presence.by_call.remove(&w.call_id);
                    }
                    b.presence.update(&k.0, &k.1, |a| a.pending_out = false);
                    if matches!(code, 403 | 603) {
                        send_presence(out, "unsubscribed", &remote, &local);
                    } else {
                        let sub = presence_stanza(Some("subscribe"), &local, &remote);
                        bounce_sip(&sub, resp, out);
                    }
                }
            }
        }
        Ctx::Notify { key: k, .. } => {
            // RFC 6665 §4.2.2: Timer F (our 408) and these failures remove the subscription.
            let gone = matches!(
                code,
                404 | 405 | 408 | 410 | 416 | 480..=485 | 489 | 501 | 604
            );
            if gone && let Some(w) = b.presence.watchers.remove(&k) {
                b.presence.by_call.remove(&w.dialog.id.call_id);
            } else if let Some(w) = b.presence.watchers.get_mut(&k) {
                w.notify_in_flight = false;
                if w.notify_again {
                    notify(b, &k, None, now, out);
                }
            }
        }
        _ => {}
    }
}

/// Refreshes due subscriptions; ends expired ones of partners; gives up fetches.
pub(super) fn poll(b: &mut Bridge, now: Instant, out: &mut Vec<Out>) {
    b.presence.fetches.retain(|_, f| f.2 > now);
    let due: Vec<Key> = b
        .presence
        .watching
        .iter()
        .filter(|(_, w)| w.refresh_at.is_some_and(|t| t <= now))
        .map(|(k, _)| k.clone())
        .collect();
    for k in due {
        let Some(w) = b.presence.watching.get(&k) else {
            continue;
        };
        let (local, remote) = (w.local.clone(), w.remote.clone());
        // RFC 8048 §8.1: probe the XMPP user before refreshing on its behalf is for the
        // gateway that holds the user's presence; the authorization is what we check here.
        let a = b.presence.authz(&k.0, &k.1);
        if matches!(a.subscription, Subscription::To | Subscription::Both) || a.pending_out {
            subscribe(b, &local, &remote, SubscribeKind::Refresh, now, out);
        } else if let Some(w) = b.presence.watching.remove(&k) {
            b.presence.by_call.remove(&w.call_id);
        }
    }
    let expired: Vec<Key> = b
        .presence
        .watchers
        .iter()
        .filter(|(_, w)| w.expires_at <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for k in expired {
        notify(b, &k, Some("terminated;reason=timeout"), now, out);
        if let Some(w) = b.presence.watchers.remove(&k) {
            b.presence.by_call.remove(&w.dialog.id.call_id);
        }
    }
}

/// After a restart: a new SUBSCRIBE for every authorization that says a local user watches
/// a partner user (their notification dialogs did not survive), spread over a few seconds.
pub(super) fn restore(b: &mut Bridge, now: Instant, out: &mut Vec<Out>) {
    let entries: Vec<(String, String)> = match &b.presence.store {
        Some(s) => s
            .iter()
            .filter(|(_, _, a)| {
                matches!(a.subscription, Subscription::To | Subscription::Both) || a.pending_out
            })
            .map(|(l, r, _)| (l.to_owned(), r.to_owned()))
            .collect(),
        None => Vec::new(),
    };
    for (l, r) in entries {
        let (Ok(local), Ok(remote)) = (Jid::parse(&l), Jid::parse(&r)) else {
            continue;
        };
        subscribe(b, &local, &remote, SubscribeKind::New, now, out);
    }
}
