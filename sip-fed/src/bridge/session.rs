//! Instant messages both ways.
//!
//! XMPP → SIP: standards partners get RFC 7572 page-mode MESSAGE (at most
//! [`PAGE_MODE_LIMIT`](crate::im::PAGE_MODE_LIMIT) bytes, RFC 7572 §6; larger messages bounce
//! with `policy-violation`). Microsoft partners get session mode: the first message rides in
//! the INVITE's `ms-text-format` header, later ones are in-dialog MESSAGEs, messages written
//! while the INVITE is pending wait for its answer, and the dialog is closed with BYE after
//! [`BridgeConfig::session_idle`](super::BridgeConfig::session_idle) without messages.
//!
//! SIP → XMPP: a MESSAGE (page mode or in a session) and the first message of an INVITE become
//! `<message/>` stanzas; the SIP side is answered when the router has taken the stanza
//! ([`Bridge::settle`](super::Bridge::settle)). One session per pair of users: replies of the
//! local user go into the partner's session when one is open, as Lync expects.

use std::collections::HashMap;
use std::time::Instant;

use fedgate_s2s::element::{Element, NS_CONTENT};
use fedgate_s2s::wire::ErrorType;

use super::pending::Ctx;
use super::{
    Awaiting, Bridge, BridgeConfig, ConnId, Dest, Flavor, Keep, Out, ReqCtx, add_to_tag_if_missing,
    bounce, bounce_sip, header_jid, respond, respond_with, set_lang, stanza, stanza_lang,
};
use crate::address::{Jid, jid_to_sip};
use crate::dialog::Dialog;
use crate::hdr::NameAddr;
use crate::msg::SipMessage;

type Key = (String, String);

enum State {
    /// INVITE sent; messages written meanwhile (with what acknowledges each to its sender).
    Inviting {
        queue: Vec<(Element, Keep)>,
    },
    Up,
}

struct Session {
    partner: String,
    /// The local user (full JID when a resource made or answered the session).
    local: Jid,
    /// The partner user, with its endpoint (`epid`) as resource when known.
    remote: Jid,
    dialog: Option<Dialog>,
    state: State,
    /// The connection the partner opened the session on (its in-dialog requests use it).
    conn: Option<ConnId>,
    last: Instant,
    call_id: String,
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_key: HashMap<Key, Session>,
    /// Call-ID → key, for in-dialog requests.
    by_call: HashMap<String, Key>,
}

impl Sessions {
    pub fn next_deadline(&self, cfg: &BridgeConfig) -> Option<Instant> {
        self.by_key
            .values()
            .filter(|s| matches!(s.state, State::Up))
            .map(|s| s.last + cfg.session_idle)
            .min()
    }

    pub fn count_for(&self, partner: &str) -> usize {
        self.by_key
            .values()
            .filter(|s| s.partner == partner)
            .count()
    }

    #[cfg(test)]
    pub fn sizes(&self) -> [(&'static str, usize); 3] {
        let queued = self
            .by_key
            .values()
            .map(|s| match &s.state {
                State::Inviting { queue } => queue.len(),
                State::Up => 0,
            })
            .sum();
        [
            ("sessions", self.by_key.len()),
            ("sessions by_call", self.by_call.len()),
            ("queued session messages", queued),
        ]
    }

    fn remove(&mut self, key: &Key) -> Option<Session> {
        let s = self.by_key.remove(key)?;
        self.by_call.remove(&s.call_id);
        Some(s)
    }

    fn insert(&mut self, key: Key, s: Session) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_call.remove(&old.call_id);
        }
        self.by_call.insert(s.call_id.clone(), key.clone());
        self.by_key.insert(key, s);
    }
}

fn key(local: &Jid, remote: &Jid) -> Key {
    (local.bare().to_string(), remote.bare().to_string())
}

/// The text of a `<message/>` (None for chat states, receipts and other body-less messages).
fn body_of(el: &Element) -> Option<String> {
    el.child("body", NS_CONTENT).map(Element::text)
}

/// XMPP → SIP.
pub(super) fn on_message(
    b: &mut Bridge,
    el: Element,
    keep: Keep,
    from: Jid,
    to: Jid,
    now: Instant,
    out: &mut Vec<Out>,
) {
    let Some(text) = body_of(&el) else {
        // Chat states and receipts have no SIP equivalent here.
        return;
    };
    let partner = to.domain.clone();
    let k = key(&from, &to);
    b.sessions
        .by_key
        .get_mut(&k)
        .map(|s| s.last = now)
        .unwrap_or(());
    let have_session = b.sessions.by_key.contains_key(&k);
    if !have_session && b.flavor(&partner) == Flavor::Standard {
        page_message(b, el, keep, &from, &to, &text, now, out);
        return;
    }
    match b.sessions.by_key.get_mut(&k).map(|s| &mut s.state) {
        Some(State::Inviting { queue }) => queue.push((el, keep)),
        Some(State::Up) => session_message(b, &k, el, keep, &text, now, out),
        None => invite(b, el, keep, from, to, &text, now, out),
    }
}

fn text_body(msg: &mut SipMessage, text: &str, lang: Option<&str>) {
    msg.push_header("Content-Type", "text/plain;charset=UTF-8");
    if let Some(l) = lang {
        msg.push_header("Content-Language", l);
    }
    msg.body = text.as_bytes().to_vec();
}

#[allow(clippy::too_many_arguments)]
fn page_message(
    b: &mut Bridge,
    el: Element,
    keep: Keep,
    from: &Jid,
    to: &Jid,
    text: &str,
    now: Instant,
    out: &mut Vec<Out>,
) {
    if text.len() > crate::im::PAGE_MODE_LIMIT {
        bounce(
            &el,
            ErrorType::Modify,
            "policy-violation",
            &format!(
                "fedgate: page-mode SIP messages are limited to {} bytes (RFC 7572 §6)",
                crate::im::PAGE_MODE_LIMIT
            ),
            out,
        );
        return;
    }
    let target = jid_to_sip(to);
    let mut req = SipMessage::request("MESSAGE", target.aor().to_string());
    let mut from_hdr = NameAddr::new(jid_to_sip(&from.bare()).to_string());
    from_hdr.set_tag(&crate::hdr::new_tag());
    req.push_header("From", from_hdr.to_string());
    req.push_header("To", format!("<{target}>"));
    let call_id = el
        .child("thread", NS_CONTENT)
        .map(Element::text)
        .filter(|t| !t.is_empty() && t.len() < 200 && !t.contains(char::is_whitespace))
        .unwrap_or_else(|| crate::hdr::new_call_id(&b.cfg.host));
    req.push_header("Call-ID", call_id);
    req.push_header("CSeq", "1 MESSAGE");
    if let Some(s) = el.child("subject", NS_CONTENT) {
        req.push_header("Subject", s.text());
    }
    text_body(&mut req, text, stanza_lang(&el));
    let partner = to.domain.clone();
    let dest = Dest::Partner {
        remote: partner.clone(),
        local: from.domain.clone(),
    };
    b.send_request(
        req,
        dest,
        Ctx::Page {
            partner,
            stanza: el,
            keep,
        },
        now,
        out,
    );
}

/// An SDP offer/answer for a Microsoft IM session (no media: `m=message … sip null`).
fn im_sdp(host: &str) -> Vec<u8> {
    format!(
        "v=0\r\no=- 0 0 IN IP4 {host}\r\ns=session\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
         m=message 5060 sip null\r\na=accept-types:text/plain\r\n"
    )
    .into_bytes()
}

#[allow(clippy::too_many_arguments)]
fn invite(
    b: &mut Bridge,
    el: Element,
    keep: Keep,
    from: Jid,
    to: Jid,
    text: &str,
    now: Instant,
    out: &mut Vec<Out>,
) {
    let target = jid_to_sip(&to.bare());
    let mut req = SipMessage::request("INVITE", target.to_string());
    let mut from_hdr = NameAddr::new(jid_to_sip(&from.bare()).to_string());
    let tag = crate::hdr::new_tag();
    from_hdr.set_tag(&tag);
    let call_id = crate::hdr::new_call_id(&b.cfg.host);
    req.push_header("From", from_hdr.to_string());
    req.push_header("To", format!("<{target}>"));
    req.push_header("Call-ID", call_id.clone());
    req.push_header("CSeq", "1 INVITE");
    req.push_header("Contact", b.contact(&from));
    req.push_header("Supported", "ms-text-format");
    req.push_header("ms-text-format", crate::im::encode_ms_text_format(text));
    if let Some(l) = stanza_lang(&el) {
        req.push_header("Content-Language", l);
    }
    req.push_header("Content-Type", "application/sdp");
    req.body = im_sdp(&b.cfg.host);
    let partner = to.domain.clone();
    let k = key(&from, &to);
    b.sessions.insert(
        k.clone(),
        Session {
            partner: partner.clone(),
            local: from.clone(),
            remote: to.bare(),
            dialog: None,
            state: State::Inviting { queue: Vec::new() },
            conn: None,
            last: now,
            call_id,
        },
    );
    // The first message travels in the INVITE; keep it to bounce it if the INVITE fails.
    let dest = Dest::Partner {
        remote: partner.clone(),
        local: from.domain.clone(),
    };
    let ctx = Ctx::Invite {
        partner,
        key: k.clone(),
        stanza: el,
        keep,
    };
    let before = out.len();
    b.send_request(req, dest, ctx, now, out);
    if out.len() == before {
        // Not sent (no transaction could be made): no session waits for it.
        b.sessions.remove(&k);
    }
}

fn session_dest(s: &Session) -> Dest {
    let local = s.local.domain.clone();
    match s.conn {
        Some(conn) => Dest::Prefer {
            conn,
            remote: s.partner.clone(),
            local,
        },
        None => Dest::Partner {
            remote: s.partner.clone(),
            local,
        },
    }
}

fn session_message(
    b: &mut Bridge,
    k: &Key,
    el: Element,
    keep: Keep,
    text: &str,
    now: Instant,
    out: &mut Vec<Out>,
) {
    let sent_by = b.sent_by();
    let Some(s) = b.sessions.by_key.get_mut(k) else {
        return;
    };
    let Some(dialog) = s.dialog.as_mut() else {
        return;
    };
    s.last = now;
    let mut req = dialog.request("MESSAGE", &sent_by);
    text_body(&mut req, text, stanza_lang(&el));
    let dest = session_dest(s);
    let partner = s.partner.clone();
    b.send_request(
        req,
        dest,
        Ctx::SessionMessage {
            partner,
            key: k.clone(),
            stanza: el,
            keep,
        },
        now,
        out,
    );
}

/// The XMPP `<message/>` for a SIP message body. `Err` is the SIP error to answer.
fn to_stanza(
    b: &mut Bridge,
    req: &SipMessage,
    content_type: &str,
    body: &[u8],
    from: &Jid,
    to: &Jid,
    chat: bool,
) -> Result<Element, (u16, String)> {
    let text = crate::im::body_to_text(content_type, body).map_err(|e| (415, format!("{e}")))?;
    let mut m = stanza("message", from, to);
    let id = b.new_id();
    m.set_attr("id", &id);
    if chat {
        m.set_attr("type", "chat");
    }
    if let Some(lang) = req.header("Content-Language") {
        let lang = lang.split(',').next().unwrap_or("").trim();
        if !lang.is_empty() {
            set_lang(&mut m, lang);
        }
    }
    if let Some(subject) = req.header("Subject") {
        m = m.with_child(Element::new("subject", NS_CONTENT).with_text(subject));
    }
    m = m.with_child(Element::new("body", NS_CONTENT).with_text(&text.text));
    // Formatted messages also carry a safe XEP-0071 rendering for clients that show it.
    if let Some(html) = text.html.as_deref().and_then(crate::im::xhtml_im) {
        m = m.with_child(html);
    }
    if let Some(call_id) = req.call_id() {
        m = m.with_child(Element::new("thread", NS_CONTENT).with_text(call_id));
    }
    Ok(m)
}

/// Hands `m` to the router, answering `ok` once it is taken ([`Bridge::settle`]).
fn deliver(
    b: &mut Bridge,
    ctx: &ReqCtx,
    req: SipMessage,
    m: Element,
    ok: SipMessage,
    out: &mut Vec<Out>,
) {
    let id = m.attr("id").unwrap_or_default().to_owned();
    let to_full_jid = m.attr("to").is_some_and(|t| t.contains('/'));
    let local = m
        .attr("to")
        .and_then(fedgate_s2s::element::jid_domain)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default();
    b.awaiting.insert(
        id,
        Awaiting {
            conn: ctx.conn,
            txn: Some(ctx.txn.clone()),
            req,
            partner: ctx.partner.clone(),
            ok,
            to_full_jid,
        },
    );
    out.push(Out::Xmpp {
        el: m,
        local,
        remote: ctx.partner.clone(),
    });
}

/// The local user a request is for: the To URI must be a user of a hosted domain.
fn local_user(b: &Bridge, req: &SipMessage) -> Result<Jid, (u16, String)> {
    let to = header_jid(req, "To")?;
    if !b.cfg.hosted.contains(&to.domain) || to.local.is_none() {
        return Err((404, "Not Found".to_owned()));
    }
    Ok(to)
}

/// The partner user a request is from; its domain must be the verified partner.
fn remote_user(req: &SipMessage, partner: &str) -> Result<Jid, (u16, String)> {
    let from = header_jid(req, "From")?;
    if from.domain != partner {
        return Err((403, "From domain does not match the connection".to_owned()));
    }
    Ok(from)
}

/// Out-of-dialog MESSAGE (RFC 7572 page mode).
pub(super) fn on_page_message(b: &mut Bridge, ctx: &ReqCtx, req: SipMessage, out: &mut Vec<Out>) {
    let users = local_user(b, &req).and_then(|l| Ok((l, remote_user(&req, &ctx.partner)?)));
    let (local, remote) = match users {
        Ok(x) => x,
        Err((code, reason)) => return respond(out, ctx.conn, &req, code, &reason),
    };
    let ct = req
        .header("Content-Type")
        .unwrap_or("text/plain")
        .to_owned();
    let m = match to_stanza(b, &req, &ct, &req.body.clone(), &remote, &local, false) {
        Ok(m) => m,
        Err((code, reason)) => return unsupported(out, ctx.conn, &req, code, &reason),
    };
    let mut ok = SipMessage::response_to(&req, 200, "OK");
    add_to_tag_if_missing(&mut ok);
    deliver(b, ctx, req, m, ok, out);
}

fn unsupported(out: &mut Vec<Out>, conn: ConnId, req: &SipMessage, code: u16, reason: &str) {
    let accept: &[(&str, &str)] = if code == 415 {
        &[("Accept", "text/plain, text/html, multipart/alternative")]
    } else {
        &[]
    };
    respond_with(out, conn, req, (code, reason), accept);
}

/// A new INVITE: a Microsoft IM session, possibly carrying its first message.
pub(super) fn on_invite(b: &mut Bridge, ctx: &ReqCtx, req: SipMessage, out: &mut Vec<Out>) {
    let users = local_user(b, &req).and_then(|l| Ok((l, remote_user(&req, &ctx.partner)?)));
    let (local, remote) = match users {
        Ok(x) => x,
        Err((code, reason)) => return respond(out, ctx.conn, &req, code, &reason),
    };
    // Only IM sessions: an SDP without an `m=message` line is a call we cannot bridge.
    let is_im = req.body.is_empty()
        || String::from_utf8_lossy(&req.body)
            .lines()
            .any(|l| l.starts_with("m=message"));
    if !is_im {
        return respond(out, ctx.conn, &req, 488, "Not Acceptable Here");
    }
    let first = match req.header("ms-text-format") {
        Some(v) => match crate::im::decode_ms_text_format(v) {
            Ok((ct, bytes)) => Some((ct, bytes)),
            Err(e) => return unsupported(out, ctx.conn, &req, 415, &format!("{e}")),
        },
        None => None,
    };
    let local_tag = crate::hdr::new_tag();
    let contact = b.contact(&local);
    let dialog = match Dialog::uas(&req, &local_tag, &contact) {
        Ok(d) => d,
        Err(e) => return respond(out, ctx.conn, &req, 400, &format!("Bad Request ({e})")),
    };
    let mut ok = SipMessage::response_to(&req, 200, "OK");
    let _ = ok.set_to_tag(&local_tag);
    ok.push_header("Contact", contact);
    ok.push_header("Supported", "ms-text-format");
    ok.push_header("Content-Type", "application/sdp");
    ok.body = im_sdp(&b.cfg.host);
    let call_id = req.call_id().unwrap_or_default().to_owned();
    let k = key(&local, &remote);
    b.sessions.insert(
        k,
        Session {
            partner: ctx.partner.clone(),
            local: local.clone(),
            remote: remote.clone(),
            dialog: Some(dialog),
            state: State::Up,
            conn: Some(ctx.conn),
            last: ctx.now,
            call_id,
        },
    );
    match first {
        Some((ct, bytes)) => match to_stanza(b, &req, &ct, &bytes, &remote, &local, true) {
            Ok(m) => deliver(b, ctx, req, m, ok, out),
            Err((code, reason)) => unsupported(out, ctx.conn, &req, code, &reason),
        },
        None => out.push(Out::Sip {
            dest: Dest::Conn(ctx.conn),
            msg: ok,
        }),
    }
}

pub(super) fn on_ack(_b: &mut Bridge, _req: &SipMessage) {
    // ACK of our 2xx to an INVITE: the session is already up; nothing to answer.
}

/// Whether an in-dialog request belongs to an IM session.
pub(super) fn owns(b: &Bridge, req: &SipMessage) -> bool {
    req.call_id()
        .is_some_and(|c| b.sessions.by_call.contains_key(c))
}

pub(super) fn in_dialog(b: &mut Bridge, ctx: &ReqCtx, req: SipMessage, out: &mut Vec<Out>) {
    let Some(k) = req
        .call_id()
        .and_then(|c| b.sessions.by_call.get(c))
        .cloned()
    else {
        return respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
    };
    let Some(s) = b.sessions.by_key.get_mut(&k) else {
        return respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
    };
    if let Some(d) = s.dialog.as_mut()
        && let Err((code, reason)) = d.on_remote_request(&req)
    {
        return respond(out, ctx.conn, &req, code, reason);
    }
    s.last = ctx.now;
    if s.conn.is_none() {
        s.conn = Some(ctx.conn);
    }
    let (local, remote) = (s.local.clone(), s.remote.clone());
    match req.method().unwrap_or("") {
        "MESSAGE" => {
            let ct = req
                .header("Content-Type")
                .unwrap_or("text/plain")
                .to_owned();
            // Typing notifications (`application/im-iscomposing+xml`) have no XMPP stanza here.
            if ct.starts_with("application/im-iscomposing") {
                return respond(out, ctx.conn, &req, 200, "OK");
            }
            match to_stanza(b, &req, &ct, &req.body.clone(), &remote, &local, true) {
                Ok(m) => {
                    let ok = SipMessage::response_to(&req, 200, "OK");
                    deliver(b, ctx, req, m, ok, out);
                }
                Err((code, reason)) => unsupported(out, ctx.conn, &req, code, &reason),
            }
        }
        "BYE" => {
            b.sessions.remove(&k);
            respond(out, ctx.conn, &req, 200, "OK");
        }
        "INVITE" => {
            // A re-INVITE (session refresh): same answer, with our Contact (a target refresh
            // request's 2xx carries it, RFC 3261 §12.2.2, §13.3.1.4).
            let mut ok = SipMessage::response_to(&req, 200, "OK");
            ok.push_header("Contact", b.contact(&local));
            ok.push_header("Content-Type", "application/sdp");
            ok.body = im_sdp(&b.cfg.host);
            out.push(Out::Sip {
                dest: Dest::Conn(ctx.conn),
                msg: ok,
            });
        }
        "INFO" | "OPTIONS" => respond(out, ctx.conn, &req, 200, "OK"),
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
        // What a request carried is acknowledged to its sender when `keep` goes: here, after
        // the final response was handled (the stanza delivered, or bounced).
        Ctx::Page { stanza, keep, .. } if code >= 300 => {
            bounce_sip(&stanza, resp, out);
            drop(keep);
        }
        Ctx::Page { .. } => {}
        Ctx::Invite {
            key: k,
            stanza: first,
            keep: _first_keep,
            partner,
        } => {
            // The session this INVITE opens, unless another one took its place meanwhile (a
            // session the partner opened for the same pair of users).
            let ours = b
                .sessions
                .by_key
                .get(&k)
                .is_some_and(|s| Some(s.call_id.as_str()) == req.call_id());
            if code >= 300 {
                let queued = match ours.then(|| b.sessions.remove(&k)).flatten() {
                    Some(Session {
                        state: State::Inviting { queue },
                        ..
                    }) => queue,
                    _ => Vec::new(),
                };
                bounce_sip(&first, resp, out);
                for (el, _keep) in &queued {
                    bounce_sip(el, resp, out);
                }
                return;
            }
            let sent_by = b.sent_by();
            let dialog = match Dialog::uac(req, resp) {
                Ok(d) => d,
                Err(e) => {
                    // No dialog to ACK or continue in: the session ends here, and the messages
                    // written meanwhile are bounced rather than kept forever.
                    tracing::warn!(error = %e, "sip: 2xx to INVITE does not make a dialog");
                    if ours
                        && let Some(Session {
                            state: State::Inviting { queue },
                            ..
                        }) = b.sessions.remove(&k)
                    {
                        for (el, _keep) in &queue {
                            bounce(
                                el,
                                ErrorType::Cancel,
                                "undefined-condition",
                                &format!(
                                    "fedgate: the partner's 2xx to INVITE made no dialog ({e})"
                                ),
                                out,
                            );
                        }
                    }
                    return;
                }
            };
            if !ours {
                // A dialog nobody wants: acknowledge it (RFC 3261 §13.2.2.4) and end it.
                let mut dialog = dialog;
                let seq = req.cseq().map_or(1, |(n, _)| n);
                let dest = Dest::Partner {
                    remote: partner.clone(),
                    local: k.0.rsplit('@').next().unwrap_or_default().to_owned(),
                };
                out.push(Out::Sip {
                    dest: dest.clone(),
                    msg: dialog.ack(seq, &sent_by),
                });
                let bye = dialog.request("BYE", &sent_by);
                b.send_request(bye, dest, Ctx::Bye { partner }, now, out);
                return;
            }
            let Some(s) = b.sessions.by_key.get_mut(&k) else {
                return;
            };
            // ACK for the 2xx: in the dialog, with the INVITE's CSeq number (RFC 3261 §13.2.2.4).
            let seq = req.cseq().map_or(1, |(n, _)| n);
            let ack = dialog.ack(seq, &sent_by);
            let dest = session_dest(s);
            out.push(Out::Sip { dest, msg: ack });
            s.dialog = Some(dialog);
            s.last = now;
            let queue = match std::mem::replace(&mut s.state, State::Up) {
                State::Inviting { queue } => queue,
                State::Up => Vec::new(),
            };
            for (el, keep) in queue {
                let text = body_of(&el).unwrap_or_default();
                session_message(b, &k, el, keep, &text, now, out);
            }
        }
        Ctx::SessionMessage {
            key: k,
            stanza,
            keep,
            ..
        } => {
            if code == 481 || code == 408 {
                // The partner forgot the session: start a new one for this message.
                b.sessions.remove(&k);
                if let (Some(from), Some(to)) = (
                    stanza.attr("from").and_then(|f| Jid::parse(f).ok()),
                    stanza.attr("to").and_then(|t| Jid::parse(t).ok()),
                ) && code == 481
                {
                    let text = body_of(&stanza).unwrap_or_default();
                    invite(b, stanza, keep, from, to, &text, now, out);
                    return;
                }
                bounce_sip(&stanza, resp, out);
            } else if code >= 300 {
                bounce_sip(&stanza, resp, out);
            }
        }
        Ctx::Bye { .. } => {}
        _ => {}
    }
}

/// Idle sessions end with BYE.
pub(super) fn poll(b: &mut Bridge, now: Instant, out: &mut Vec<Out>) {
    let idle = b.cfg.session_idle;
    let expired: Vec<Key> = b
        .sessions
        .by_key
        .iter()
        .filter(|(_, s)| matches!(s.state, State::Up) && s.last + idle <= now)
        .map(|(k, _)| k.clone())
        .collect();
    let sent_by = b.sent_by();
    for k in expired {
        let Some(mut s) = b.sessions.remove(&k) else {
            continue;
        };
        let Some(dialog) = s.dialog.as_mut() else {
            continue;
        };
        let bye = dialog.request("BYE", &sent_by);
        let dest = session_dest(&s);
        b.send_request(
            bye,
            dest,
            Ctx::Bye {
                partner: s.partner.clone(),
            },
            now,
            out,
        );
    }
}
