//! The XMPP⇄SIP bridge: a sans-IO back-to-back user agent.
//!
//! Inputs are SIP requests and responses (with the connection they came on and the partner
//! domain their certificate was verified for), XMPP stanzas from the router, and time. Outputs
//! are [`Out`] actions: SIP messages to send (on a connection, or to a partner domain) and XMPP
//! stanzas to route. The tokio core task ([`crate::driver`]) does the I/O.
//!
//! What it translates:
//! - **instant messages**: RFC 7572 page mode (MESSAGE) with standards partners, Microsoft
//!   session mode (INVITE carrying the first message in `ms-text-format`, in-dialog MESSAGE,
//!   BYE after an idle time) with Microsoft partners; both accepted inbound whatever the
//!   partner's flavor ([`session`]);
//! - **presence**: RFC 8048 subscriptions and notifications both ways with durable
//!   authorizations ([`presence`]).
//!
//! No silent loss: a SIP request translated to XMPP is answered `200` only after the router took
//! the stanza without bouncing it ([`Bridge::settle`]); a bounce becomes the mapped SIP error
//! (RFC 7247 §7). A stanza translated to SIP that fails (error response, timeout, no
//! connection) is bounced to its XMPP sender with the mapped condition.

mod pending;
mod presence;
mod session;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fedgate_s2s::element::{Element, NS_CONTENT, NS_XML};
use fedgate_s2s::wire::ErrorType;

use crate::address::{Jid, SipUri, jid_to_sip, sip_to_jid};
use crate::authz_store::AuthzStore;
use crate::check::{LoopDetector, RequestChecker};
use crate::hdr::NameAddr;
use crate::msg::SipMessage;
use crate::txn::{RequestMatch, ServerTxnId};
use pending::{Ctx, Pending};

/// What acknowledges a stanza to its sender (see `fedgate_s2s::driver::receipt`). A message
/// keeps it until its SIP request has a final response (`2xx`: the partner took it; an error:
/// the stanza was bounced); presence and other stanzas let go of it once translated (presence
/// is state, which the bridge keeps and sends again).
pub type Keep = Option<fedgate_s2s::driver::receipt::Receipt>;

/// A connection, as the driver numbers them.
pub type ConnId = u64;

/// How a partner does instant messaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Lync / Skype for Business / Office 365: session-mode IM (INVITE + `ms-text-format`).
    #[default]
    Microsoft,
    /// RFC 7572 page mode (MESSAGE).
    Standard,
}

impl Flavor {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "microsoft" => Some(Self::Microsoft),
            "standard" => Some(Self::Standard),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Microsoft => "microsoft",
            Self::Standard => "standard",
        }
    }
}

/// Bridge settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Our SIP host (Via sent-by, Contact), e.g. the gateway's FQDN.
    pub host: String,
    pub port: u16,
    /// Hosted XMPP domains (the only ones SIP requests may be addressed to).
    pub hosted: HashSet<String>,
    /// A session-mode IM dialog with no message for this long is closed with BYE.
    pub session_idle: Duration,
    /// Expires we ask for (and grant at most) on presence subscriptions.
    pub subscription_expires: u32,
    /// Timer B/F (64·T1): a request with no final response by then fails with 408.
    pub txn_timeout: Duration,
    /// IM flavor of partners not listed in `flavors` and not learned from their traffic.
    pub default_flavor: Flavor,
    pub flavors: HashMap<String, Flavor>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 5061,
            hosted: HashSet::new(),
            session_idle: Duration::from_secs(300),
            subscription_expires: 3600,
            txn_timeout: Duration::from_secs(32),
            default_flavor: Flavor::Microsoft,
            flavors: HashMap::new(),
        }
    }
}

/// Where a SIP message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// On this connection (responses).
    Conn(ConnId),
    /// To the partner domain, over the gateway's connection for (partner, hosted domain).
    Partner { remote: String, local: String },
    /// On this connection while it is open (an in-dialog request on the connection the dialog
    /// was made on), else like `Partner`.
    Prefer {
        conn: ConnId,
        remote: String,
        local: String,
    },
}

/// What the bridge asks its driver to do.
#[derive(Debug, Clone)]
pub enum Out {
    Sip {
        dest: Dest,
        msg: SipMessage,
    },
    /// A stanza for the router, translated from `remote` (SIP partner) for hosted `local`.
    Xmpp {
        el: Element,
        local: String,
        remote: String,
    },
}

/// An inbound request whose translation went to the router, waiting to be answered.
struct Awaiting {
    conn: ConnId,
    txn: Option<ServerTxnId>,
    req: SipMessage,
    partner: String,
    /// The 2xx to send when the router accepted the stanza.
    ok: SipMessage,
    /// The stanza sent (for the sender's address in error mapping).
    to_full_jid: bool,
}

/// Per-partner counters for `/status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PartnerStatus {
    pub flavor: &'static str,
    pub messages_in: u64,
    pub messages_out: u64,
    pub errors_in: u64,
    pub errors_out: u64,
    pub last_error: Option<String>,
}

/// The bridge state.
pub struct Bridge {
    cfg: BridgeConfig,
    checker: RequestChecker,
    pending: Pending,
    awaiting: HashMap<String, Awaiting>,
    sessions: session::Sessions,
    presence: presence::Presence,
    learned: HashMap<String, Flavor>,
    partners: HashMap<String, PartnerStatus>,
    next_id: u64,
}

/// Option tags we understand in `Require`.
pub const SUPPORTED: &[&str] = &["timer", "ms-text-format"];
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY";

impl Bridge {
    pub fn new(cfg: BridgeConfig, authz: Option<AuthzStore>) -> Self {
        let sent_by = format!("{}:{}", cfg.host, cfg.port);
        Self {
            presence: presence::Presence::new(authz),
            checker: RequestChecker::new(SUPPORTED, LoopDetector::new(&sent_by)),
            pending: Pending::new(cfg.txn_timeout),
            cfg,
            awaiting: HashMap::new(),
            sessions: session::Sessions::default(),
            learned: HashMap::new(),
            partners: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    fn flavor(&self, partner: &str) -> Flavor {
        self.cfg
            .flavors
            .get(partner)
            .or_else(|| self.learned.get(partner))
            .copied()
            .unwrap_or(self.cfg.default_flavor)
    }

    /// The partner's status entry (made on first use; no allocation per request after).
    fn partner(&mut self, partner: &str) -> &mut PartnerStatus {
        let flavor = self.flavor(partner).as_str();
        if !self.partners.contains_key(partner) {
            self.partners
                .insert(partner.to_owned(), PartnerStatus::default());
        }
        let p = self.partners.get_mut(partner).expect("inserted just above");
        p.flavor = flavor;
        p
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("sip{}", self.next_id)
    }

    fn sent_by(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    /// Our Contact for a hosted user.
    fn contact(&self, local: &Jid) -> String {
        let user = jid_to_sip(&local.bare());
        let user = user.user.unwrap_or_default();
        format!("<sip:{user}@{};transport=tls>", self.sent_by())
    }

    /// The earliest time [`Bridge::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.pending.next_deadline(),
            self.sessions.next_deadline(&self.cfg),
            self.presence.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: transaction timeouts, idle sessions, subscription refreshes and expiries.
    pub fn poll(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        for (ctx, req) in self.pending.expired(now) {
            let resp = crate::txn::timeout_response(&req);
            self.on_final(ctx, &req, &resp, now, &mut out);
        }
        session::poll(self, now, &mut out);
        presence::poll(self, now, &mut out);
        out
    }

    /// Requests that could not be sent (no connection to the partner): each fails like a
    /// response with `code` would (`408` for timeouts, `503`-like otherwise, mapped to
    /// `remote-server-not-found` / `remote-server-timeout`).
    pub fn on_send_failed(&mut self, msg: &SipMessage, kind: &str, detail: &str) -> Vec<Out> {
        match top_branch(msg) {
            Some(branch) => self.on_lost(&branch, kind, detail),
            None => Vec::new(),
        }
    }

    /// The request with top-Via branch `branch` will get no response (its connection closed
    /// after it was written): it fails now, as [`Bridge::on_send_failed`], instead of by
    /// Timer F. Nothing happens when it was answered already.
    pub fn on_lost(&mut self, branch: &str, kind: &str, detail: &str) -> Vec<Out> {
        let mut out = Vec::new();
        let Some((ctx, req)) = self.pending.take_branch(branch) else {
            return out;
        };
        let (code, reason) = match kind {
            "timeout" => (408, "Request Timeout".to_owned()),
            _ => (502, format!("fedgate: {kind}: {detail}")),
        };
        let resp = SipMessage::response_to(&req, code, reason);
        self.on_final(ctx, &req, &resp, Instant::now(), &mut out);
        out
    }

    /// Answers `200` to every inbound request whose stanza the router took without a bounce.
    /// The driver calls this after routing a batch and handing back the bounces it produced.
    pub fn settle(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let now = Instant::now();
        for (_, a) in std::mem::take(&mut self.awaiting) {
            if let Some(p) = self.partners.get_mut(&a.partner) {
                p.messages_in += 1;
            }
            if let Some(id) = &a.txn {
                self.pending.respond(id, &a.ok, now);
            }
            out.push(Out::Sip {
                dest: Dest::Conn(a.conn),
                msg: a.ok,
            });
        }
        out
    }

    /// A stanza from the router for a SIP partner, with what acknowledges it to its sender.
    pub fn on_stanza(&mut self, el: Element, keep: Keep, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return out;
        };
        let (Ok(from), Ok(to)) = (Jid::parse(from), Jid::parse(to)) else {
            bounce(&el, ErrorType::Modify, "jid-malformed", "", &mut out);
            return out;
        };
        if el.attr("type") == Some("error") {
            self.on_xmpp_error(&el, &mut out);
            return out;
        }
        match el.name.as_str() {
            "message" => session::on_message(self, el, keep, from, to, now, &mut out),
            "presence" => presence::on_presence(self, el, from, to, now, &mut out),
            _ => bounce(
                &el,
                ErrorType::Cancel,
                "service-unavailable",
                "fedgate: SIP partners have no IQ service",
                &mut out,
            ),
        }
        out
    }

    /// An XMPP error for a SIP user: the answer to a request we translated.
    fn on_xmpp_error(&mut self, el: &Element, out: &mut Vec<Out>) {
        let Some(id) = el.attr("id") else { return };
        let Some(a) = self.awaiting.remove(id) else {
            tracing::debug!(
                id,
                "sip: XMPP error for a request already answered; dropped"
            );
            return;
        };
        let err = crate::errors::read_error(el);
        let (code, _) =
            crate::errors::xmpp_to_sip(&err.condition, a.to_full_jid, err.gone_has_new_address);
        let reason = crate::errors::reason_phrase(code, err.text.as_deref());
        let mut resp = SipMessage::response_to(&a.req, code, reason);
        add_to_tag_if_missing(&mut resp);
        if let Some(id) = &a.txn {
            self.pending.respond(id, &resp, Instant::now());
        }
        if let Some(p) = self.partners.get_mut(&a.partner) {
            p.errors_in += 1;
            p.last_error = Some(format!("{code} {}", err.condition));
        }
        out.push(Out::Sip {
            dest: Dest::Conn(a.conn),
            msg: resp,
        });
    }

    /// A SIP request from `partner` (its certificate verified for that domain) on `conn`.
    pub fn on_request(
        &mut self,
        conn: ConnId,
        partner: &str,
        req: SipMessage,
        now: Instant,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let method = req.method().unwrap_or("").to_owned();
        if let Err(rejection) = self.checker.check(&req) {
            if method != "ACK" {
                out.push(Out::Sip {
                    dest: Dest::Conn(conn),
                    msg: rejection.to_response(&req),
                });
            }
            return out;
        }
        let txn = match self.pending.on_request(&req, now) {
            Ok(RequestMatch::New(id)) => id,
            Ok(RequestMatch::Retransmission { last_response, .. }) => {
                if let Some(resp) = last_response {
                    out.push(Out::Sip {
                        dest: Dest::Conn(conn),
                        msg: resp,
                    });
                }
                return out;
            }
            Ok(RequestMatch::AckForNon2xx(_)) => return out,
            Ok(RequestMatch::AckOutsideTransaction) => {
                session::on_ack(self, &req);
                return out;
            }
            Err(e) => {
                respond(&mut out, conn, &req, 400, &format!("Bad Request ({e})"));
                return out;
            }
        };
        // A partner whose traffic carries Microsoft `ms-*` headers does session-mode IM.
        if !self.learned.contains_key(partner)
            && req.headers.iter().any(|h| {
                h.name
                    .get(..3)
                    .is_some_and(|p| p.eq_ignore_ascii_case("ms-"))
            })
        {
            self.learned.insert(partner.to_owned(), Flavor::Microsoft);
        }
        self.partner(partner);
        let to_tag = req
            .header("To")
            .and_then(|t| NameAddr::parse(t).ok())
            .and_then(|t| t.tag().map(str::to_owned));
        let ctx = ReqCtx {
            conn,
            partner: partner.to_owned(),
            now,
            txn: txn.clone(),
        };
        match (method.as_str(), to_tag.is_some()) {
            ("CANCEL", _) => {
                // Every INVITE is answered at once, so there is nothing left to cancel.
                respond(&mut out, conn, &req, 481, "Call/Transaction Does Not Exist");
            }
            ("OPTIONS", _) => respond_with(
                &mut out,
                conn,
                &req,
                (200, "OK"),
                &[
                    ("Allow", ALLOW),
                    ("Accept", "text/plain, text/html, application/pidf+xml"),
                    ("Supported", &SUPPORTED.join(", ")),
                ],
            ),
            ("MESSAGE", false) => session::on_page_message(self, &ctx, req, &mut out),
            ("INVITE", false) => session::on_invite(self, &ctx, req, &mut out),
            ("SUBSCRIBE", false) => presence::on_subscribe(self, &ctx, req, &mut out),
            (_, true) => self.in_dialog(&ctx, req, &mut out),
            ("BYE" | "NOTIFY" | "INFO", false) => {
                respond(&mut out, conn, &req, 481, "Call/Transaction Does Not Exist");
            }
            _ => respond_with(
                &mut out,
                conn,
                &req,
                (405, "Method Not Allowed"),
                &[("Allow", ALLOW)],
            ),
        }
        // Responses sent now end (or, for INVITE errors, complete) the server transaction.
        for o in &out {
            if let Out::Sip { msg, .. } = o
                && !msg.is_request()
                && top_branch(msg) == top_branch_of_id(&txn)
            {
                self.pending.respond(&txn, msg, now);
            }
        }
        out
    }

    fn in_dialog(&mut self, ctx: &ReqCtx, req: SipMessage, out: &mut Vec<Out>) {
        if session::owns(self, &req) {
            session::in_dialog(self, ctx, req, out);
        } else if presence::owns(self, &req) {
            presence::in_dialog(self, ctx, req, out);
        } else {
            respond(out, ctx.conn, &req, 481, "Call/Transaction Does Not Exist");
        }
    }

    /// A SIP response from a partner.
    pub fn on_response(&mut self, resp: SipMessage, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let Some((ctx, req)) = self.pending.on_response(&resp, now) else {
            return out;
        };
        self.on_final(ctx, &req, &resp, now, &mut out);
        out
    }

    fn on_final(
        &mut self,
        ctx: Ctx,
        req: &SipMessage,
        resp: &SipMessage,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let code = resp.code().unwrap_or(500);
        let partner = ctx.partner().to_owned();
        if code >= 300 {
            let p = self.partner(&partner);
            p.errors_out += 1;
            p.last_error = Some(format!(
                "{} {code} {}",
                req.method().unwrap_or(""),
                reason_of(resp)
            ));
        } else if matches!(
            ctx,
            Ctx::Page { .. } | Ctx::SessionMessage { .. } | Ctx::Invite { .. }
        ) {
            self.partner(&partner).messages_out += 1;
        }
        match ctx {
            Ctx::Page { .. }
            | Ctx::Invite { .. }
            | Ctx::SessionMessage { .. }
            | Ctx::Bye { .. } => session::on_final(self, ctx, req, resp, now, out),
            Ctx::Subscribe { .. } | Ctx::Notify { .. } => {
                presence::on_final(self, ctx, req, resp, now, out);
            }
        }
    }

    /// Sends a new request to `remote` for hosted `local`: adds Via and registers the client
    /// transaction.
    fn send_request(
        &mut self,
        mut req: SipMessage,
        dest: Dest,
        ctx: Ctx,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        // In-dialog requests come with a Via from the dialog; new ones get one here. Either
        // way the branch is a keyed one, so that our own request coming back is a loop
        // (RFC 5393) we recognise.
        if req.header("Max-Forwards").is_none() {
            req.push_header("Max-Forwards", "70");
        }
        let branch = self.checker.loop_detector().branch_for(&req);
        let via = format!("SIP/2.0/TLS {};branch={branch}", self.sent_by());
        match req.headers.iter_mut().find(|h| h.is("Via")) {
            Some(h) => h.value = via,
            None => req.prepend_header("Via", via),
        }
        if let Err(failed) = self.pending.insert(&req, ctx, now) {
            let (e, ctx) = *failed;
            tracing::warn!(error = %e, "sip: request not sent");
            // The message it carried must not vanish: its sender hears why.
            if let Some(stanza) = ctx.stanza() {
                bounce(
                    stanza,
                    ErrorType::Wait,
                    "internal-server-error",
                    &format!("fedgate: the SIP request could not be sent ({e})"),
                    out,
                );
            }
            return;
        }
        out.push(Out::Sip { dest, msg: req });
    }

    /// Per-partner status for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let mut partners = serde_json::Map::new();
        for (name, p) in &self.partners {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("sessions".into(), self.sessions.count_for(name).into());
                let (watching, watchers) = self.presence.count_for(name);
                o.insert("subscriptions_out".into(), watching.into());
                o.insert("subscriptions_in".into(), watchers.into());
            }
            partners.insert(name.clone(), v);
        }
        serde_json::json!({
            "partners": partners,
            "pending_transactions": self.pending.len(),
        })
    }

    /// Dialog counts per partner: (sessions, subscriptions) for metrics.
    pub fn dialog_counts(&self) -> Vec<(String, usize, usize)> {
        self.partners
            .keys()
            .map(|p| {
                let (a, b) = self.presence.count_for(p);
                (p.clone(), self.sessions.count_for(p), a + b)
            })
            .collect()
    }

    /// Entries of every map of the bridge, by name (tests check that they stay bounded).
    #[cfg(test)]
    pub(crate) fn state_sizes(&self) -> Vec<(&'static str, usize)> {
        let mut v = vec![
            ("awaiting", self.awaiting.len()),
            ("client transactions", self.pending.client_count()),
            ("server transactions", self.pending.server_count()),
            ("transaction contexts", self.pending.len()),
        ];
        v.extend(self.sessions.sizes());
        v.extend(self.presence.sizes());
        v
    }

    /// After a restart: renew the subscriptions the authorization store says our users hold.
    pub fn restore(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        presence::restore(self, now, &mut out);
        out
    }
}

/// Context of an inbound request.
pub(crate) struct ReqCtx {
    pub conn: ConnId,
    pub partner: String,
    pub now: Instant,
    /// The server transaction of the request.
    pub txn: ServerTxnId,
}

fn top_branch_of_id(id: &ServerTxnId) -> Option<String> {
    Some(id.branch().to_owned())
}

fn reason_of(resp: &SipMessage) -> &str {
    match &resp.start {
        crate::msg::StartLine::Response { reason, .. } => reason,
        crate::msg::StartLine::Request { .. } => "",
    }
}

/// The branch of a message's top Via.
pub(crate) fn top_branch(msg: &SipMessage) -> Option<String> {
    let via = crate::hdr::Via::parse(msg.top_via()?).ok()?;
    via.branch().map(str::to_owned)
}

fn add_to_tag_if_missing(resp: &mut SipMessage) {
    let has = resp
        .header("To")
        .and_then(|t| NameAddr::parse(t).ok())
        .is_some_and(|t| t.tag().is_some());
    if !has {
        let _ = resp.set_to_tag(&crate::hdr::new_tag());
    }
}

fn respond(out: &mut Vec<Out>, conn: ConnId, req: &SipMessage, code: u16, reason: &str) {
    respond_with(out, conn, req, (code, reason), &[]);
}

/// [`respond`] with extra headers (`Allow`, `Accept`, …).
fn respond_with(
    out: &mut Vec<Out>,
    conn: ConnId,
    req: &SipMessage,
    (code, reason): (u16, &str),
    headers: &[(&str, &str)],
) {
    let mut resp = SipMessage::response_to(req, code, reason);
    add_to_tag_if_missing(&mut resp);
    for (name, value) in headers {
        resp.push_header(*name, *value);
    }
    out.push(Out::Sip {
        dest: Dest::Conn(conn),
        msg: resp,
    });
}

/// An XMPP error reply to `el` (to its sender), as the router would bounce it.
fn bounce(el: &Element, etype: ErrorType, condition: &str, text: &str, out: &mut Vec<Out>) {
    if !fedgate_s2s::wire::bounceable(el) {
        return;
    }
    let local = el
        .attr("from")
        .and_then(fedgate_s2s::element::jid_domain)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default();
    let remote = el
        .attr("to")
        .and_then(fedgate_s2s::element::jid_domain)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default();
    let reply = fedgate_s2s::wire::bounce(el, etype, condition, text, Some(&remote));
    out.push(Out::Xmpp {
        el: reply,
        local,
        remote,
    });
}

/// Bounces `el` with the XMPP error a SIP final response maps to (RFC 7247 §7).
fn bounce_sip(el: &Element, resp: &SipMessage, out: &mut Vec<Out>) {
    let code = resp.code().unwrap_or(500);
    let e = crate::errors::sip_response_to_xmpp(code, reason_of(resp));
    let etype = match e.error_type {
        "wait" => ErrorType::Wait,
        "modify" => ErrorType::Modify,
        "auth" => ErrorType::Auth,
        _ => ErrorType::Cancel,
    };
    let text = format!(
        "fedgate: SIP {code} {}",
        e.text.as_deref().unwrap_or(reason_of(resp))
    );
    bounce(el, etype, e.condition, &text, out);
}

/// The XMPP address of a SIP header's URI (`From`/`To`), with the Microsoft `epid` parameter
/// of the header as resource when the URI has no `gr`.
fn header_jid(msg: &SipMessage, name: &str) -> Result<Jid, (u16, String)> {
    let value = msg
        .header(name)
        .ok_or((400, format!("Missing {name} header")))?;
    let na = NameAddr::parse(value).map_err(|_| (400, format!("Bad {name} header")))?;
    let uri = SipUri::parse(na.uri()).map_err(|e| (400, format!("Bad {name} URI: {e}")))?;
    let mut jid = sip_to_jid(&uri).map_err(|e| match e {
        crate::address::AddressError::Sips => (416, "Unsupported URI Scheme".to_owned()),
        e => (404, format!("Not Found ({e})")),
    })?;
    if jid.resource.is_none()
        && let Some(epid) = na.param("epid")
    {
        jid.resource = Some(crate::address::epid_resource(epid));
    }
    Ok(jid)
}

/// `xml:lang` of a stanza.
fn stanza_lang(el: &Element) -> Option<&str> {
    el.attrs
        .iter()
        .find(|a| a.ns == NS_XML && a.name == "lang")
        .map(|a| a.value.as_str())
}

fn set_lang(el: &mut Element, lang: &str) {
    el.attrs.push(fedgate_s2s::element::Attr {
        ns: NS_XML.to_owned(),
        name: "lang".to_owned(),
        value: lang.to_owned(),
    });
}

/// A new stanza element in the content namespace.
fn stanza(name: &str, from: &Jid, to: &Jid) -> Element {
    Element::new(name, NS_CONTENT)
        .with_attr("from", &from.to_string())
        .with_attr("to", &to.to_string())
}
