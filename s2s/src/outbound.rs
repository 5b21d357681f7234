//! The initiating side of an s2s stream, sans-IO. Two modes:
//! - [`Mode::Auth`]: STARTTLS (or direct TLS), then SASL EXTERNAL if offered and allowed, else
//!   Server Dialback; ends in [`Action::Established`] for one (local, remote) domain pair;
//! - [`Mode::Verify`]: a short stream to the authoritative server of a remote domain that asks
//!   whether a dialback key is valid (XEP-0220 §2.1.2) and ends in [`Action::Verified`].

use base64::Engine as _;

use crate::dialback::DialbackSecret;
use crate::element::{
    Element, NS_DIALBACK, NS_DIALBACK_FEATURE, NS_SASL, NS_SERVER, NS_STREAM, NS_TLS, escape,
};
use crate::inbound::{AuthMethod, AuthMethods, CertOk};
use crate::wire::{Failure, FailureKind, Header, parse_stream_error};
use crate::xml::StreamEvent;

#[derive(Debug, Clone)]
pub enum Mode {
    Auth { secret: DialbackSecret },
    Verify { stream_id: String, key: String },
}

#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub local: String,
    pub remote: String,
    pub tls_required: bool,
    pub auth: AuthMethods,
    pub mode: Mode,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send(Vec<u8>),
    /// Run the TLS client handshake (SNI = remote domain), then call
    /// [`Outbound::tls_established`]; the parser must be reset.
    StartTls,
    ResetParser,
    /// Authenticated. `identity`: how the remote's identity is known (its certificate by
    /// pkix/dane/posh, or only by DNS as with dialback); `not_after`: when that certificate
    /// expires; `sasl`: we authenticated with SASL EXTERNAL (else dialback).
    Established {
        identity: AuthMethod,
        not_after: Option<i64>,
        sasl: bool,
        /// The receiving server offered XEP-0198 stream management on the authenticated
        /// stream.
        sm_offered: bool,
    },
    /// Verify mode: the authoritative server's answer.
    Verified(bool),
    /// Give up on this stream; send `</stream:stream>` if it is open and close.
    Fail(Failure),
    /// A stanza or element arriving on an established outbound stream (bidi is not negotiated,
    /// so only stream-level traffic is expected; the driver logs it).
    Unexpected(Element),
    PeerClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHeader,
    AwaitFeatures,
    AwaitProceed,
    AwaitSasl,
    AwaitDialback,
    AwaitVerify,
    Established,
    Done,
}

pub struct Outbound {
    s: OutboundSettings,
    state: State,
    tls: bool,
    /// Result of checking the remote server's certificate for the remote domain.
    remote_cert: Option<Result<CertOk, String>>,
    sasl_done: bool,
    sasl_tried: bool,
    stream_id: Option<String>,
    peer_declares_db: bool,
    /// The last features offered `<sm xmlns='urn:xmpp:sm:3'/>`.
    sm_offered: bool,
    out: Vec<Action>,
}

impl Outbound {
    pub fn new(settings: OutboundSettings) -> Self {
        Self {
            s: settings,
            state: State::AwaitHeader,
            tls: false,
            remote_cert: None,
            sasl_done: false,
            sasl_tried: false,
            stream_id: None,
            peer_declares_db: false,
            sm_offered: false,
            out: Vec::new(),
        }
    }

    /// Call once connected (after the TLS handshake for direct TLS, with its certificate check).
    pub fn start(&mut self, direct_tls_cert: Option<Result<CertOk, String>>) {
        if let Some(c) = direct_tls_cert {
            self.tls = true;
            self.remote_cert = Some(c);
        }
        self.send_header();
    }

    pub fn tls_established(&mut self, remote_cert: Result<CertOk, String>) {
        self.tls = true;
        self.remote_cert = Some(remote_cert);
        self.send_header();
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    fn send_header(&mut self) {
        self.state = State::AwaitHeader;
        self.out.push(Action::Send(
            Header {
                content_ns: NS_SERVER,
                from: Some(&self.s.local),
                to: Some(&self.s.remote),
                id: None,
                version: true,
                dialback: true,
            }
            .to_bytes(),
        ));
    }

    fn fail(&mut self, kind: FailureKind, detail: impl Into<String>) {
        self.state = State::Done;
        self.out.push(Action::Fail(Failure::new(kind, detail)));
    }

    pub fn handle(&mut self, ev: StreamEvent) {
        if self.state == State::Done {
            return;
        }
        match ev {
            StreamEvent::Open(h) => {
                if self.state != State::AwaitHeader {
                    return self.fail(FailureKind::Stream, "unexpected second stream header");
                }
                if h.default_ns != NS_SERVER {
                    return self.fail(
                        FailureKind::Stream,
                        format!("peer opened a {} stream", h.default_ns),
                    );
                }
                self.stream_id = h.id.filter(|i| !i.is_empty());
                self.peer_declares_db = h.declares_dialback;
                if h.version.as_deref() == Some("1.0") {
                    self.state = State::AwaitFeatures;
                } else {
                    // Pre-XMPP 1.0 peer: no features will follow.
                    self.after_features(None);
                }
            }
            StreamEvent::Close => {
                self.state = State::Done;
                self.out.push(Action::PeerClosed);
            }
            StreamEvent::Element(el, _) => self.on_element(el),
        }
    }

    fn on_element(&mut self, el: Element) {
        if el.is("error", NS_STREAM) {
            let (cond, text) = parse_stream_error(&el);
            let kind = match cond.as_str() {
                "policy-violation" => FailureKind::Policy,
                "not-authorized" | "invalid-from" => FailureKind::Auth,
                "host-unknown" | "remote-connection-failed" | "host-gone" => FailureKind::Stream,
                _ => FailureKind::Stream,
            };
            let detail = if text.is_empty() {
                format!("peer sent stream error {cond}")
            } else {
                format!("peer sent stream error {cond}: {text}")
            };
            return self.fail(kind, detail);
        }
        match self.state {
            State::AwaitFeatures if el.is("features", NS_STREAM) => self.after_features(Some(&el)),
            State::AwaitProceed if el.is("proceed", NS_TLS) => {
                self.out.push(Action::StartTls);
            }
            State::AwaitProceed => self.fail(FailureKind::Tls, "peer refused STARTTLS"),
            State::AwaitSasl if el.is("success", NS_SASL) => {
                self.sasl_done = true;
                self.out.push(Action::ResetParser);
                self.send_header();
            }
            State::AwaitSasl if el.is("failure", NS_SASL) => {
                let why = el
                    .elements()
                    .map(|c| {
                        if c.name == "text" {
                            c.text()
                        } else {
                            c.name.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(": ");
                tracing::info!(local = %self.s.local, remote = %self.s.remote, %why, "SASL EXTERNAL refused");
                if self.dialback_possible(None) {
                    self.send_db_result();
                } else {
                    self.fail(
                        FailureKind::Auth,
                        format!("SASL EXTERNAL refused ({why}) and dialback is not available"),
                    );
                }
            }
            State::AwaitDialback if el.is("result", NS_DIALBACK) => {
                let matches = el.attr("from") == Some(self.s.remote.as_str())
                    && el.attr("to") == Some(self.s.local.as_str());
                if !matches {
                    return;
                }
                match el.attr("type") {
                    Some("valid") => self.established(false),
                    Some("invalid") => {
                        self.fail(FailureKind::Auth, "dialback: peer says our key is invalid")
                    }
                    _ => {
                        let cond = el
                            .child("error", crate::element::NS_CONTENT)
                            .and_then(|e| e.elements().next().map(|c| c.name.clone()))
                            .unwrap_or_else(|| "unknown".into());
                        self.fail(FailureKind::Auth, format!("dialback error: {cond}"));
                    }
                }
            }
            State::AwaitVerify if el.is("verify", NS_DIALBACK) => {
                let valid = el.attr("type") == Some("valid");
                self.state = State::Done;
                self.out.push(Action::Verified(valid));
            }
            State::Established | State::AwaitDialback | State::AwaitVerify => {
                self.out.push(Action::Unexpected(el));
            }
            _ => self.fail(
                FailureKind::Stream,
                format!("unexpected <{}/> during negotiation", el.name),
            ),
        }
    }

    fn dialback_possible(&self, features: Option<&Element>) -> bool {
        self.s.auth.dialback
            && self.stream_id.is_some()
            && (self.peer_declares_db
                || features.is_some_and(|f| f.child("dialback", NS_DIALBACK_FEATURE).is_some()))
    }

    fn after_features(&mut self, features: Option<&Element>) {
        self.sm_offered = features.is_some_and(|f| f.child("sm", crate::ack::NS_SM).is_some());
        if !self.tls {
            if features.is_some_and(|f| f.child("starttls", NS_TLS).is_some()) {
                self.state = State::AwaitProceed;
                self.out.push(Action::Send(
                    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec(),
                ));
                return;
            }
            if self.s.tls_required {
                return self.fail(
                    FailureKind::Tls,
                    "peer does not offer STARTTLS and TLS is required",
                );
            }
        }
        if let Mode::Verify { stream_id, key } = &self.s.mode {
            let msg = format!(
                "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
                escape(&self.s.local),
                escape(&self.s.remote),
                escape(stream_id),
                escape(key)
            );
            self.state = State::AwaitVerify;
            self.out.push(Action::Send(msg.into_bytes()));
            return;
        }
        if self.sasl_done {
            return self.established(true);
        }
        let cert_ok = matches!(self.remote_cert, Some(Ok(_)));
        if !cert_ok && !self.s.auth.dialback {
            let why = match &self.remote_cert {
                Some(Err(e)) => e.clone(),
                _ => "no TLS".into(),
            };
            let kind = if why.starts_with("cert-chain") {
                FailureKind::CertChain
            } else {
                FailureKind::CertName
            };
            return self.fail(
                kind,
                format!("remote certificate not acceptable and dialback is disabled: {why}"),
            );
        }
        let offers_external = features.is_some_and(|f| {
            f.child("mechanisms", NS_SASL).is_some_and(|m| {
                m.elements()
                    .any(|x| x.name == "mechanism" && x.text().trim() == "EXTERNAL")
            })
        });
        if self.tls && self.s.auth.certificate && offers_external && !self.sasl_tried {
            self.sasl_tried = true;
            self.state = State::AwaitSasl;
            let authzid = base64::engine::general_purpose::STANDARD.encode(self.s.local.as_bytes());
            self.out.push(Action::Send(
                format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
                )
                .into_bytes(),
            ));
            return;
        }
        if self.dialback_possible(features) {
            return self.send_db_result();
        }
        let offered = match features {
            Some(f) => f
                .elements()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            None => "nothing (pre-1.0 peer)".into(),
        };
        self.fail(
            FailureKind::Auth,
            format!("no acceptable authentication method; peer offered: {offered}"),
        );
    }

    fn established(&mut self, sasl: bool) {
        self.state = State::Established;
        let (identity, not_after) = match &self.remote_cert {
            Some(Ok(ok)) => (ok.method, ok.not_after),
            _ => (AuthMethod::Dialback, None),
        };
        self.out.push(Action::Established {
            identity,
            not_after,
            sasl,
            sm_offered: self.sm_offered,
        });
    }

    fn send_db_result(&mut self) {
        let Mode::Auth { secret } = &self.s.mode else {
            return;
        };
        let Some(id) = &self.stream_id else {
            return self.fail(FailureKind::Auth, "peer stream has no id for dialback");
        };
        let key = secret.key(&self.s.remote, &self.s.local, id);
        self.state = State::AwaitDialback;
        self.out.push(Action::Send(
            format!(
                "<db:result from='{}' to='{}'>{key}</db:result>",
                escape(&self.s.local),
                escape(&self.s.remote)
            )
            .into_bytes(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::inbound::{self, Inbound, InboundSettings};
    use crate::xml::{Limits, StreamParser};

    /// Runs an outbound machine against an inbound machine through two real parsers, with TLS
    /// simulated by flags. Returns the outbound's final actions of interest.
    fn run(
        out_settings: OutboundSettings,
        in_settings: InboundSettings,
        out_cert_valid_for: Option<&'static str>,
        verify_answer: impl Fn(&str, &str, &str, &str) -> bool,
    ) -> (Vec<Action>, Vec<inbound::Action>) {
        let mut o = Outbound::new(out_settings);
        let mut i = Inbound::new(in_settings, "stream-1".into(), false);
        let mut po = StreamParser::new(Limits::default());
        let mut pi = StreamParser::new(Limits::default());
        let mut o_log = Vec::new();
        let mut i_log = Vec::new();
        o.start(None);
        for _ in 0..50 {
            let mut progressed = false;
            for a in o.take_actions() {
                progressed = true;
                match a {
                    Action::Send(b) => pi.feed(&b),
                    Action::StartTls => {
                        po.reset();
                        pi.reset();
                        let cert: Option<inbound::CertCheck> = out_cert_valid_for.map(|d| {
                            Box::new(move |x: &str| {
                                if x == d {
                                    Ok(CertOk {
                                        method: AuthMethod::Pkix,
                                        not_after: Some(7),
                                    })
                                } else {
                                    Err(format!("cert-name: not {x}"))
                                }
                            }) as inbound::CertCheck
                        });
                        i.tls_established(cert);
                        o.tls_established(Ok(CertOk {
                            method: AuthMethod::Pkix,
                            not_after: Some(7),
                        }));
                    }
                    Action::ResetParser => po.reset(),
                    other => o_log.push(other),
                }
            }
            loop {
                let ev = pi.next_event().unwrap();
                let had_event = ev.is_some();
                if let Some(ev) = ev {
                    i.handle(ev);
                }
                let acts = i.take_actions();
                if acts.is_empty() && !had_event {
                    break;
                }
                for a in acts {
                    progressed = true;
                    match a {
                        inbound::Action::Send(b) => po.feed(&b),
                        inbound::Action::ResetParser => pi.reset(),
                        inbound::Action::StartTls => {}
                        inbound::Action::VerifyKey {
                            local,
                            remote,
                            stream_id,
                            key,
                        } => {
                            let ok = verify_answer(&local, &remote, &stream_id, &key);
                            i.dialback_verified(&local, &remote, ok, "test");
                        }
                        other => i_log.push(other),
                    }
                }
            }
            while let Some(ev) = po.next_event().unwrap() {
                progressed = true;
                o.handle(ev);
            }
            if !progressed {
                break;
            }
        }
        (o_log, i_log)
    }

    fn in_settings(secret: &str, auth: AuthMethods) -> InboundSettings {
        InboundSettings {
            hosted: Arc::new(["remote.test".to_owned()].into()),
            tls_required: true,
            auth,
            secret: DialbackSecret::new(secret),
            gate: Arc::new(crate::gate::Open(crate::gate::Floor {
                tls_required: true,
                auth,
                pins: Vec::new(),
                max_streams: None,
                rule: None,
            })),
            internal: None,
            stream_management: true,
        }
    }

    fn out_settings(secret: &str, auth: AuthMethods) -> OutboundSettings {
        OutboundSettings {
            local: "local.test".into(),
            remote: "remote.test".into(),
            tls_required: true,
            auth,
            mode: Mode::Auth {
                secret: DialbackSecret::new(secret),
            },
        }
    }

    #[test]
    fn starttls_then_sasl_external() {
        let (o, i) = run(
            out_settings("x", AuthMethods::default()),
            in_settings("y", AuthMethods::default()),
            Some("local.test"),
            |_, _, _, _| false,
        );
        assert_eq!(
            o,
            vec![Action::Established {
                identity: AuthMethod::Pkix,
                not_after: Some(7),
                sasl: true,
                sm_offered: true,
            }]
        );
        assert!(i.iter().any(|a| matches!(
            a,
            inbound::Action::Authenticated {
                method: AuthMethod::Pkix,
                ..
            }
        )));
    }

    #[test]
    fn falls_back_to_dialback_when_certificate_is_not_valid() {
        // The authoritative side checks the key with the same secret (shared between nodes).
        let secret = DialbackSecret::new("shared");
        let (o, _) = run(
            out_settings("shared", AuthMethods::default()),
            in_settings("other", AuthMethods::default()),
            None,
            |local, remote, id, key| secret.verify(local, remote, id, key),
        );
        assert_eq!(
            o,
            vec![Action::Established {
                identity: AuthMethod::Pkix,
                not_after: Some(7),
                sasl: false,
                sm_offered: false,
            }]
        );
    }

    #[test]
    fn wrong_dialback_key_fails_with_auth() {
        let (o, _) = run(
            out_settings("mine", AuthMethods::default()),
            in_settings("x", AuthMethods::default()),
            None,
            |_, _, _, _| false,
        );
        assert!(
            matches!(&o[..], [Action::Fail(f)] if f.kind == FailureKind::Auth),
            "{o:?}"
        );
    }

    #[test]
    fn certificate_only_peer_refuses_dialback() {
        let (o, _) = run(
            out_settings("s", AuthMethods::default()),
            in_settings(
                "s",
                AuthMethods {
                    certificate: true,
                    dialback: false,
                },
            ),
            Some("wrong.test"),
            |_, _, _, _| true,
        );
        assert!(
            matches!(&o[..], [Action::Fail(f)] if f.kind == FailureKind::Auth),
            "{o:?}"
        );
    }

    #[test]
    fn verify_mode_asks_the_authoritative_server() {
        let secret = DialbackSecret::new("auth-secret");
        // We (local.test, receiving) ask remote.test (authoritative) about a key it issued for us.
        let key = secret.key("local.test", "remote.test", "sid-9");
        for (k, expect) in [(key.as_str(), true), ("bogus", false)] {
            let mut s = out_settings("unused", AuthMethods::default());
            s.mode = Mode::Verify {
                stream_id: "sid-9".into(),
                key: k.into(),
            };
            let (o, _) = run(
                s,
                in_settings("auth-secret", AuthMethods::default()),
                None,
                |_, _, _, _| false,
            );
            assert_eq!(o, vec![Action::Verified(expect)]);
        }
    }

    #[test]
    fn no_starttls_offered_fails_with_tls_kind() {
        let mut o = Outbound::new(out_settings("s", AuthMethods::default()));
        o.start(None);
        let mut p = StreamParser::new(Limits::default());
        p.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='1' version='1.0'><stream:features/>");
        while let Some(ev) = p.next_event().unwrap() {
            o.handle(ev);
        }
        let acts = o.take_actions();
        assert!(matches!(acts.last(), Some(Action::Fail(f)) if f.kind == FailureKind::Tls));
    }

    #[test]
    fn stream_error_from_peer_is_reported() {
        let mut o = Outbound::new(out_settings("s", AuthMethods::default()));
        o.start(None);
        let mut p = StreamParser::new(Limits::default());
        p.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='1' version='1.0'><stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>");
        while let Some(ev) = p.next_event().unwrap() {
            o.handle(ev);
        }
        let acts = o.take_actions();
        assert!(matches!(acts.last(), Some(Action::Fail(f)) if f.detail.contains("host-unknown")));
    }
}
