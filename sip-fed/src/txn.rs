//! RFC 3261 §17 transactions for a reliable transport (TLS), sans-IO.
//!
//! Over a reliable transport nothing is retransmitted by us (Timers A, E, G are not used) and
//! the "linger" timers D, I, J, K are zero, so a transaction disappears as soon as it is
//! complete. What remains are the timeouts:
//!
//! * Timer B (client INVITE) and Timer F (client non-INVITE): `64·T1` (32 s) without a final
//!   response → [`Timeout::Client`]; the caller synthesizes a `408` ([`timeout_response`]).
//! * After a provisional response to an INVITE, RFC 3261 stops Timer B. We then apply a guard of
//!   [`TxnConfig::invite_proceeding`] (default 180 s, like a proxy's Timer C), reported the same
//!   way; the caller should send CANCEL and treat the INVITE as failed.
//! * Timer H (server INVITE, waiting for the ACK of a non-2xx final): `64·T1` →
//!   [`Timeout::ServerNoAck`].
//!
//! Matching: responses by top-Via branch and CSeq method (§17.1.3); requests by branch,
//! sent-by and method, with ACK matched to its INVITE (§17.2.3). Only RFC 3261 branches (`z9hG4bK...`)
//! are accepted; RFC 2543 peers get [`TxnError::NoBranch`] (answer `400`).
//!
//! Not in here, by design:
//! * the ACK for a **2xx** to INVITE is an in-dialog request outside any transaction (§13.2.2.4,
//!   §17.1.1.3): the UAC builds it with `dialog::Dialog::ack`, and on the UAS side
//!   [`TransactionLayer::on_request`] returns [`RequestMatch::AckOutsideTransaction`] for it;
//! * a client INVITE transaction ends on the first 2xx (RFC 3261, not the RFC 6026 Accepted
//!   state), so further 2xx from forking come back from [`TransactionLayer::on_response`] as
//!   `None` and go to the dialog layer (ACK then BYE);
//! * a server transaction the caller never answers is kept until it answers: always respond.
//!
//! Time is an explicit `now: Instant`; call [`TransactionLayer::poll`] at
//! [`TransactionLayer::next_deadline`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::hdr::{BRANCH_COOKIE, Via};
use crate::msg::{Header, SipMessage};

/// Timer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnConfig {
    /// RTT estimate T1 (default 500 ms); Timers B, F and H are `64·T1`.
    pub t1: Duration,
    /// How long a client INVITE may stay in Proceeding after a 1xx (default 180 s).
    pub invite_proceeding: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            invite_proceeding: Duration::from_secs(180),
        }
    }
}

impl TxnConfig {
    /// `64·T1`: Timers B, F and H.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// Why a message could not enter the transaction layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// A response was given where a request is needed.
    #[error("not a request")]
    NotARequest,
    /// A request was given where a response is needed.
    #[error("not a response")]
    NotAResponse,
    /// No (parsable) Via header.
    #[error("missing or malformed Via")]
    NoVia,
    /// The top Via has no RFC 3261 branch (`z9hG4bK...`).
    #[error("top Via has no RFC 3261 branch")]
    NoBranch,
    /// No (parsable) CSeq, or its method differs from the request method.
    #[error("missing or inconsistent CSeq")]
    BadCSeq,
    /// ACK never creates a client transaction (§17.1.1.3, §13.2.2.4).
    #[error("ACK does not create a client transaction")]
    AckIsNotATransaction,
    /// A client transaction with this branch and method already exists.
    #[error("duplicate client transaction")]
    Duplicate,
    /// No live server transaction with this id.
    #[error("unknown or finished server transaction")]
    UnknownTransaction,
    /// The server transaction already sent a final response.
    #[error("a final response was already sent")]
    AlreadyFinal,
}

/// A client transaction: top-Via branch + method (§17.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientTxnId {
    branch: String,
    method: String,
}

impl ClientTxnId {
    /// The branch of our top Via.
    pub fn branch(&self) -> &str {
        &self.branch
    }
    /// The method of the request (CSeq method).
    pub fn method(&self) -> &str {
        &self.method
    }
}

/// A server transaction: branch + sent-by + method, ACK counted as INVITE (§17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTxnId {
    branch: String,
    sent_by: String,
    method: String,
}

impl ServerTxnId {
    /// The branch of the request's top Via.
    pub fn branch(&self) -> &str {
        &self.branch
    }
    /// The method (`INVITE` for an INVITE and its ACK).
    pub fn method(&self) -> &str {
        &self.method
    }
}

/// A response that matched a client transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMatch {
    /// The transaction.
    pub id: ClientTxnId,
    /// Final (>= 200): the transaction is over. Provisional: more will come.
    pub is_final: bool,
    /// The request this response answers.
    pub request: SipMessage,
    /// For a non-2xx final to INVITE: the ACK to send now (§17.1.1.3).
    pub ack: Option<SipMessage>,
}

/// What an incoming request is, transaction-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestMatch {
    /// A new server transaction: hand the request to the TU, which must [`TransactionLayer::respond`]
    /// (for INVITE, send `100 Trying` first: [`trying`]).
    New(ServerTxnId),
    /// A retransmission: re-send `last_response` if there is one, do nothing else.
    Retransmission {
        /// The transaction.
        id: ServerTxnId,
        /// The last response sent, to send again.
        last_response: Option<SipMessage>,
    },
    /// The ACK for our non-2xx final to an INVITE: absorbed, the transaction is over.
    AckForNon2xx(ServerTxnId),
    /// An ACK outside any transaction (the ACK for a 2xx): give it to the dialog layer.
    AckOutsideTransaction,
}

/// A timer that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timeout {
    /// Timer B/F (or the INVITE proceeding guard): no final response. Synthesize `408`
    /// ([`timeout_response`]) for the TU.
    Client {
        /// The transaction, now gone.
        id: ClientTxnId,
        /// The request that timed out.
        request: SipMessage,
    },
    /// Timer H: the ACK for our non-2xx final never came. The transaction is gone.
    ServerNoAck {
        /// The transaction, now gone.
        id: ServerTxnId,
    },
}

#[derive(Debug)]
struct ClientTxn {
    request: SipMessage,
    deadline: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum ServerState {
    /// Trying/Proceeding: no final response yet.
    Open,
    /// INVITE only: non-2xx final sent, waiting for the ACK until `deadline`.
    Completed { deadline: Instant },
}

#[derive(Debug)]
struct ServerTxn {
    state: ServerState,
    last_response: Option<SipMessage>,
}

/// All client and server transactions of one gateway (or one connection).
#[derive(Debug, Default)]
pub struct TransactionLayer {
    config: TxnConfig,
    clients: HashMap<ClientTxnId, ClientTxn>,
    servers: HashMap<ServerTxnId, ServerTxn>,
}

fn top_via(msg: &SipMessage) -> Result<Via, TxnError> {
    let v = msg.top_via().ok_or(TxnError::NoVia)?;
    Via::parse(v).map_err(|_| TxnError::NoVia)
}

fn rfc3261_branch(via: &Via) -> Result<String, TxnError> {
    match via.branch() {
        Some(b) if b.starts_with(BRANCH_COOKIE) && b.len() > BRANCH_COOKIE.len() => {
            Ok(b.to_owned())
        }
        _ => Err(TxnError::NoBranch),
    }
}

impl TransactionLayer {
    /// An empty layer.
    pub fn new(config: TxnConfig) -> Self {
        Self {
            config,
            clients: HashMap::new(),
            servers: HashMap::new(),
        }
    }

    /// Number of live client transactions.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Ends client transaction `id` without a response (its request could not be sent, or the
    /// connection it went out on closed): its request, for the caller to fail it.
    pub fn abandon(&mut self, id: &ClientTxnId) -> Option<SipMessage> {
        self.clients.remove(id).map(|t| t.request)
    }

    /// Number of live server transactions.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Register a request we are about to send (any method but ACK). Its top Via must carry a
    /// fresh RFC 3261 branch and its CSeq method must equal the method.
    pub fn send_request(
        &mut self,
        req: &SipMessage,
        now: Instant,
    ) -> Result<ClientTxnId, TxnError> {
        let method = req.method().ok_or(TxnError::NotARequest)?;
        if method == "ACK" {
            return Err(TxnError::AckIsNotATransaction);
        }
        match req.cseq() {
            Some((_, m)) if m == method => {}
            _ => return Err(TxnError::BadCSeq),
        }
        let branch = rfc3261_branch(&top_via(req)?)?;
        let id = ClientTxnId {
            branch,
            method: method.to_owned(),
        };
        if self.clients.contains_key(&id) {
            return Err(TxnError::Duplicate);
        }
        self.clients.insert(
            id.clone(),
            ClientTxn {
                request: req.clone(),
                deadline: now + self.config.timeout(),
            },
        );
        Ok(id)
    }

    /// Match a received response to its client transaction (§17.1.3). `None`: no transaction
    /// (a stray, or a further 2xx to an INVITE: give it to the dialog layer).
    pub fn on_response(&mut self, resp: &SipMessage, now: Instant) -> Option<ResponseMatch> {
        let code = resp.code()?;
        let branch = top_via(resp).ok()?.branch()?.to_owned();
        let (_, method) = resp.cseq()?;
        let id = ClientTxnId {
            branch,
            method: method.to_owned(),
        };
        let invite = id.method == "INVITE";
        if code < 200 {
            let txn = self.clients.get_mut(&id)?;
            if invite {
                // Proceeding: Timer B no longer applies; our guard does.
                txn.deadline = now + self.config.invite_proceeding;
            }
            return Some(ResponseMatch {
                request: txn.request.clone(),
                id,
                is_final: false,
                ack: None,
            });
        }
        let txn = self.clients.remove(&id)?;
        let ack = (invite && code >= 300).then(|| ack_for_non2xx(&txn.request, resp));
        Some(ResponseMatch {
            id,
            is_final: true,
            request: txn.request,
            ack,
        })
    }

    /// Classify a received request (§17.2.3) and open a server transaction if it is new.
    pub fn on_request(&mut self, req: &SipMessage, now: Instant) -> Result<RequestMatch, TxnError> {
        let _ = now;
        let method = req.method().ok_or(TxnError::NotARequest)?;
        let via = top_via(req)?;
        let branch = match rfc3261_branch(&via) {
            Ok(b) => b,
            // An ACK for a 2xx is end-to-end; do not insist on its branch.
            Err(_) if method == "ACK" => return Ok(RequestMatch::AckOutsideTransaction),
            Err(e) => return Err(e),
        };
        let key_method = if method == "ACK" { "INVITE" } else { method };
        let id = ServerTxnId {
            branch,
            sent_by: via.sent_by().to_ascii_lowercase(),
            method: key_method.to_owned(),
        };
        if method == "ACK" {
            return Ok(match self.servers.get(&id) {
                Some(ServerTxn {
                    state: ServerState::Completed { .. },
                    ..
                }) => {
                    self.servers.remove(&id);
                    RequestMatch::AckForNon2xx(id)
                }
                _ => RequestMatch::AckOutsideTransaction,
            });
        }
        if let Some(txn) = self.servers.get(&id) {
            return Ok(RequestMatch::Retransmission {
                last_response: txn.last_response.clone(),
                id,
            });
        }
        self.servers.insert(
            id.clone(),
            ServerTxn {
                state: ServerState::Open,
                last_response: None,
            },
        );
        Ok(RequestMatch::New(id))
    }

    /// Record a response we send on server transaction `id`. A final response ends the
    /// transaction, except a non-2xx final to INVITE, which waits for its ACK (Timer H).
    pub fn respond(
        &mut self,
        id: &ServerTxnId,
        resp: &SipMessage,
        now: Instant,
    ) -> Result<(), TxnError> {
        let code = resp.code().ok_or(TxnError::NotAResponse)?;
        let txn = self
            .servers
            .get_mut(id)
            .ok_or(TxnError::UnknownTransaction)?;
        if txn.state != ServerState::Open {
            return Err(TxnError::AlreadyFinal);
        }
        if code < 200 {
            txn.last_response = Some(resp.clone());
        } else if id.method == "INVITE" && code >= 300 {
            txn.last_response = Some(resp.clone());
            txn.state = ServerState::Completed {
                deadline: now + self.config.timeout(),
            };
        } else {
            // Timer J = 0 (non-INVITE) or 2xx to INVITE: done.
            self.servers.remove(id);
        }
        Ok(())
    }

    /// The INVITE server transaction a CANCEL refers to (§9.2: same branch and sent-by).
    pub fn invite_for_cancel(&self, cancel: &SipMessage) -> Option<ServerTxnId> {
        if cancel.method() != Some("CANCEL") {
            return None;
        }
        let via = top_via(cancel).ok()?;
        let id = ServerTxnId {
            branch: rfc3261_branch(&via).ok()?,
            sent_by: via.sent_by().to_ascii_lowercase(),
            method: "INVITE".to_owned(),
        };
        matches!(
            self.servers.get(&id),
            Some(ServerTxn {
                state: ServerState::Open,
                ..
            })
        )
        .then_some(id)
    }

    /// Fire every timer due at `now`; the affected transactions are removed.
    pub fn poll(&mut self, now: Instant) -> Vec<Timeout> {
        let mut out = Vec::new();
        let due: Vec<ClientTxnId> = self
            .clients
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(t) = self.clients.remove(&id) {
                out.push(Timeout::Client {
                    id,
                    request: t.request,
                });
            }
        }
        let due: Vec<ServerTxnId> = self
            .servers
            .iter()
            .filter(
                |(_, t)| matches!(t.state, ServerState::Completed { deadline } if deadline <= now),
            )
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.servers.remove(&id);
            out.push(Timeout::ServerNoAck { id });
        }
        out
    }

    /// The earliest time [`TransactionLayer::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let c = self.clients.values().map(|t| t.deadline);
        let s = self.servers.values().filter_map(|t| match t.state {
            ServerState::Completed { deadline } => Some(deadline),
            ServerState::Open => None,
        });
        c.chain(s).min()
    }
}

/// `100 Trying` for an INVITE (no To tag, §8.2.6.1). Send it at once on a new INVITE
/// transaction and record it with [`TransactionLayer::respond`].
pub fn trying(invite: &SipMessage) -> SipMessage {
    SipMessage::response_to(invite, 100, "Trying")
}

/// The `408 Request Timeout` a client transaction timeout stands for (§8.1.3.1).
pub fn timeout_response(request: &SipMessage) -> SipMessage {
    SipMessage::response_to(request, 408, "Request Timeout")
}

/// The ACK a client INVITE transaction sends for a non-2xx final (§17.1.1.3): same
/// Request-URI, Call-ID, From, CSeq number and top Via as the INVITE, To from the response,
/// the INVITE's Route headers.
pub fn ack_for_non2xx(invite: &SipMessage, response: &SipMessage) -> SipMessage {
    let mut ack = SipMessage::request("ACK", invite.uri().unwrap_or_default());
    if let Some(v) = invite.top_via() {
        ack.push_header("Via", v);
    }
    ack.push_header("Max-Forwards", "70");
    ack.headers
        .extend(invite.headers.iter().filter(|h| h.is("Route")).cloned());
    let copy = |ack: &mut SipMessage, from: &SipMessage, name: &str| {
        if let Some(h) = from.headers.iter().find(|h| h.is(name)) {
            ack.headers
                .push(Header::new(h.name.clone(), h.value.clone()));
        }
    };
    copy(&mut ack, invite, "From");
    copy(&mut ack, response, "To");
    copy(&mut ack, invite, "Call-ID");
    let seq = invite.cseq().map_or(0, |(n, _)| n);
    ack.push_header("CSeq", format!("{seq} ACK"));
    ack.push_header("Content-Length", "0");
    ack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, branch: &str, sent_by: &str) -> SipMessage {
        let mut m = SipMessage::request(method, "sip:alice@example.test");
        m.push_header("Via", format!("SIP/2.0/TLS {sent_by};branch={branch}"));
        m.push_header("Max-Forwards", "70");
        m.push_header("Route", "<sip:edge.lync.test;lr>");
        m.push_header("From", "<sip:bob@lync.test>;tag=f1");
        m.push_header("To", "<sip:alice@example.test>");
        m.push_header("Call-ID", "c1");
        m.push_header("CSeq", format!("7 {method}"));
        m
    }

    fn resp(r: &SipMessage, code: u16) -> SipMessage {
        let mut s = SipMessage::response_to(r, code, "X");
        if code > 100 {
            s.set_to_tag("t2").expect("to tag");
        }
        s
    }

    fn layer() -> TransactionLayer {
        TransactionLayer::new(TxnConfig {
            t1: Duration::from_millis(10),
            invite_proceeding: Duration::from_secs(5),
        })
    }

    #[test]
    fn client_non_invite_provisional_then_final() {
        let mut l = layer();
        let t0 = Instant::now();
        let r = req("MESSAGE", "z9hG4bKm1", "gw.example.test");
        let id = l.send_request(&r, t0).expect("send");
        assert_eq!((id.branch(), id.method()), ("z9hG4bKm1", "MESSAGE"));
        let m = l.on_response(&resp(&r, 180), t0).expect("1xx matches");
        assert!(!m.is_final && m.ack.is_none());
        assert_eq!(m.request, r);
        // Timer F keeps running through Proceeding.
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_millis(640)));
        let m = l.on_response(&resp(&r, 200), t0).expect("final matches");
        assert!(m.is_final && m.ack.is_none());
        assert_eq!(l.client_count(), 0);
        assert_eq!(l.on_response(&resp(&r, 200), t0), None, "Timer K = 0");
    }

    #[test]
    fn client_invite_non2xx_generates_ack() {
        let mut l = layer();
        let t0 = Instant::now();
        let r = req("INVITE", "z9hG4bKi1", "gw.example.test");
        l.send_request(&r, t0).expect("send");
        let m = l.on_response(&resp(&r, 486), t0).expect("match");
        let ack = m.ack.expect("ack");
        assert_eq!(ack.method(), Some("ACK"));
        assert_eq!(ack.uri(), Some("sip:alice@example.test"));
        assert_eq!(ack.top_via(), r.top_via());
        assert_eq!(ack.header("To"), Some("<sip:alice@example.test>;tag=t2"));
        assert_eq!(ack.header("From"), r.header("From"));
        assert_eq!(ack.header("Route"), Some("<sip:edge.lync.test;lr>"));
        assert_eq!(ack.cseq(), Some((7, "ACK")));
        assert_eq!(l.client_count(), 0, "Timer D = 0");
    }

    #[test]
    fn client_invite_2xx_ends_without_ack_and_later_2xx_is_stray() {
        let mut l = layer();
        let t0 = Instant::now();
        let r = req("INVITE", "z9hG4bKi2", "gw.example.test");
        l.send_request(&r, t0).expect("send");
        let m = l.on_response(&resp(&r, 200), t0).expect("match");
        assert!(m.is_final && m.ack.is_none());
        assert_eq!(l.on_response(&resp(&r, 200), t0), None);
    }

    #[test]
    fn client_timeouts_b_f_and_proceeding_guard() {
        let mut l = layer();
        let t0 = Instant::now();
        let msg = req("MESSAGE", "z9hG4bKt1", "gw.example.test");
        let inv = req("INVITE", "z9hG4bKt2", "gw.example.test");
        l.send_request(&msg, t0).expect("send");
        l.send_request(&inv, t0).expect("send");
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_millis(640)));
        // A 1xx to the INVITE moves it to the proceeding guard.
        l.on_response(&resp(&inv, 180), t0).expect("1xx");
        assert!(l.poll(t0 + Duration::from_millis(639)).is_empty());
        let fired = l.poll(t0 + Duration::from_millis(640));
        assert_eq!(fired.len(), 1);
        let Timeout::Client { id, request } = &fired[0] else {
            panic!("{fired:?}")
        };
        assert_eq!(id.method(), "MESSAGE");
        let r408 = timeout_response(request);
        assert_eq!(r408.code(), Some(408));
        assert_eq!(r408.call_id(), Some("c1"));
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(5)));
        let fired = l.poll(t0 + Duration::from_secs(5));
        assert!(matches!(&fired[..], [Timeout::Client { id, .. }] if id.method() == "INVITE"));
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn client_matching_needs_branch_and_method() {
        let mut l = layer();
        let t0 = Instant::now();
        let inv = req("INVITE", "z9hG4bKsame", "gw.example.test");
        let cancel = req("CANCEL", "z9hG4bKsame", "gw.example.test");
        l.send_request(&inv, t0).expect("invite");
        l.send_request(&cancel, t0)
            .expect("cancel has its own transaction");
        let m = l.on_response(&resp(&cancel, 200), t0).expect("cancel 200");
        assert_eq!(m.id.method(), "CANCEL");
        assert_eq!(l.client_count(), 1, "the INVITE is still open");
        let other = req("INVITE", "z9hG4bKother", "gw.example.test");
        assert_eq!(l.on_response(&resp(&other, 200), t0), None);
        assert_eq!(l.send_request(&inv, t0), Err(TxnError::Duplicate));
    }

    #[test]
    fn client_refuses_bad_requests() {
        let mut l = layer();
        let t0 = Instant::now();
        assert_eq!(
            l.send_request(&req("ACK", "z9hG4bKa", "h"), t0),
            Err(TxnError::AckIsNotATransaction)
        );
        assert_eq!(
            l.send_request(&req("MESSAGE", "old2543", "h"), t0),
            Err(TxnError::NoBranch)
        );
        let mut bad = req("MESSAGE", "z9hG4bKa", "h");
        bad.set_header("CSeq", "1 INVITE");
        assert_eq!(l.send_request(&bad, t0), Err(TxnError::BadCSeq));
        let r = req("MESSAGE", "z9hG4bKa", "h");
        assert_eq!(
            l.send_request(&resp(&r, 200), t0),
            Err(TxnError::NotARequest)
        );
    }

    #[test]
    fn server_non_invite_new_retransmission_and_done() {
        let mut l = layer();
        let t0 = Instant::now();
        let r = req("MESSAGE", "z9hG4bKs1", "edge.lync.test:5061");
        let RequestMatch::New(id) = l.on_request(&r, t0).expect("new") else {
            panic!("not new")
        };
        assert_eq!(
            l.on_request(&r, t0),
            Ok(RequestMatch::Retransmission {
                id: id.clone(),
                last_response: None
            })
        );
        let p = resp(&r, 100);
        l.respond(&id, &p, t0).expect("1xx");
        assert_eq!(
            l.on_request(&r, t0),
            Ok(RequestMatch::Retransmission {
                id: id.clone(),
                last_response: Some(p)
            })
        );
        l.respond(&id, &resp(&r, 200), t0).expect("final");
        assert_eq!(l.server_count(), 0, "Timer J = 0");
        assert_eq!(
            l.respond(&id, &resp(&r, 200), t0),
            Err(TxnError::UnknownTransaction)
        );
    }

    #[test]
    fn server_invite_non2xx_absorbs_ack() {
        let mut l = layer();
        let t0 = Instant::now();
        let inv = req("INVITE", "z9hG4bKs2", "edge.lync.test:5061");
        let RequestMatch::New(id) = l.on_request(&inv, t0).expect("new") else {
            panic!("not new")
        };
        let t = trying(&inv);
        assert_eq!(t.code(), Some(100));
        assert_eq!(t.header("To"), inv.header("To"), "no tag on 100");
        l.respond(&id, &t, t0).expect("100");
        let busy = resp(&inv, 486);
        l.respond(&id, &busy, t0).expect("486");
        assert_eq!(l.respond(&id, &busy, t0), Err(TxnError::AlreadyFinal));
        assert_eq!(
            l.on_request(&inv, t0),
            Ok(RequestMatch::Retransmission {
                id: id.clone(),
                last_response: Some(busy.clone())
            })
        );
        let ack = ack_for_non2xx(&inv, &busy);
        assert_eq!(l.on_request(&ack, t0), Ok(RequestMatch::AckForNon2xx(id)));
        assert_eq!(l.server_count(), 0, "Timer I = 0");
        assert_eq!(
            l.on_request(&ack, t0),
            Ok(RequestMatch::AckOutsideTransaction)
        );
    }

    #[test]
    fn server_timer_h_without_ack() {
        let mut l = layer();
        let t0 = Instant::now();
        let inv = req("INVITE", "z9hG4bKs3", "edge.lync.test:5061");
        let RequestMatch::New(id) = l.on_request(&inv, t0).expect("new") else {
            panic!("not new")
        };
        assert_eq!(l.next_deadline(), None, "no timer before the final");
        l.respond(&id, &resp(&inv, 603), t0).expect("603");
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_millis(640)));
        assert!(l.poll(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(
            l.poll(t0 + Duration::from_secs(1)),
            vec![Timeout::ServerNoAck { id }]
        );
        assert_eq!(l.server_count(), 0);
    }

    #[test]
    fn server_invite_2xx_ends_and_its_ack_is_outside() {
        let mut l = layer();
        let t0 = Instant::now();
        let inv = req("INVITE", "z9hG4bKs4", "edge.lync.test:5061");
        let RequestMatch::New(id) = l.on_request(&inv, t0).expect("new") else {
            panic!("not new")
        };
        l.respond(&id, &resp(&inv, 200), t0).expect("200");
        assert_eq!(l.server_count(), 0);
        let ack = req("ACK", "z9hG4bKnewbranch", "edge.lync.test:5061");
        assert_eq!(
            l.on_request(&ack, t0),
            Ok(RequestMatch::AckOutsideTransaction)
        );
    }

    #[test]
    fn server_matching_uses_sent_by_and_method() {
        let mut l = layer();
        let t0 = Instant::now();
        let inv = req("INVITE", "z9hG4bKs5", "edge.lync.test:5061");
        assert!(matches!(l.on_request(&inv, t0), Ok(RequestMatch::New(_))));
        // Same branch from another sent-by: a different transaction.
        let other = req("INVITE", "z9hG4bKs5", "edge2.lync.test:5061");
        assert!(matches!(l.on_request(&other, t0), Ok(RequestMatch::New(_))));
        // Sent-by compares case-insensitively.
        let upper = req("INVITE", "z9hG4bKs5", "EDGE.lync.test:5061");
        assert!(matches!(
            l.on_request(&upper, t0),
            Ok(RequestMatch::Retransmission { .. })
        ));
        // CANCEL: its own transaction, pointing at the INVITE.
        let cancel = req("CANCEL", "z9hG4bKs5", "edge.lync.test:5061");
        let found = l.invite_for_cancel(&cancel).expect("invite found");
        assert_eq!(found.method(), "INVITE");
        assert!(
            matches!(l.on_request(&cancel, t0), Ok(RequestMatch::New(id)) if id.method() == "CANCEL")
        );
        let stray = req("CANCEL", "z9hG4bKnone", "edge.lync.test:5061");
        assert_eq!(l.invite_for_cancel(&stray), None);
        // RFC 2543 branches are refused.
        assert_eq!(
            l.on_request(&req("MESSAGE", "1234", "edge.lync.test"), t0),
            Err(TxnError::NoBranch)
        );
    }
}
