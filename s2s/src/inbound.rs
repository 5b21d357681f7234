//! The receiving side of an s2s stream, sans-IO: STARTTLS, SASL EXTERNAL (XEP-0178), Server
//! Dialback as receiving and as authoritative server (XEP-0220) with piggy-backed domain pairs,
//! and the per-stanza check that `from`/`to` belong to a domain pair authorized on this stream.
//!
//! The driver feeds parsed [`StreamEvent`]s and I/O results in and carries out the [`Action`]s.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;

use crate::dialback::DialbackSecret;
use crate::element::{
    Element, NS_CONTENT, NS_DIALBACK, NS_SASL, NS_SERVER, NS_STREAM, NS_TLS, escape, jid_domain,
};
use crate::gate::{Floor, Gatekeeper};
use crate::wire::{Header, StreamError, stanza_domains};
use crate::xml::StreamEvent;

/// Which authentication methods the gateway accepts (global today; per domain with policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthMethods {
    pub certificate: bool,
    pub dialback: bool,
}

impl Default for AuthMethods {
    fn default() -> Self {
        Self {
            certificate: true,
            dialback: true,
        }
    }
}

/// How a remote domain's identity was established (RFC 6125 PKIX, DANE RFC 7673, POSH
/// RFC 7711, or Server Dialback XEP-0220).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Pkix,
    Dane,
    Posh,
    Dialback,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pkix => "pkix",
            Self::Dane => "dane",
            Self::Posh => "posh",
            Self::Dialback => "dialback",
        }
    }
}

/// A certificate accepted for a domain: by which method, and until when (unix seconds; `None`
/// where the method ignores expiry, as DANE-EE does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertOk {
    pub method: AuthMethod,
    pub not_after: Option<i64>,
}

/// Settings an inbound stream needs.
#[derive(Clone)]
pub struct InboundSettings {
    /// Domains this gateway serves (stream `to`, dialback `to`).
    pub hosted: Arc<HashSet<String>>,
    /// The floor before the peer names its domain (and for peers that never do).
    pub tls_required: bool,
    pub auth: AuthMethods,
    pub secret: DialbackSecret,
    /// Policy: admission and per-domain floors.
    pub gate: Arc<dyn Gatekeeper>,
    /// `Some`: this is the internal listener, where the gateway's own IM server(s) for these
    /// hosted domains send their outbound s2s. The gateway then answers as every remote
    /// domain (any non-hosted `to`, dialback keys it issued as them), and only these domains
    /// may authenticate as the peer.
    pub internal: Option<Arc<HashSet<String>>>,
    /// Offer XEP-0198 stream management once the stream is authenticated.
    pub stream_management: bool,
}

impl InboundSettings {
    /// Whether `local` (a stream `to`, a dialback `to`) is a domain we answer for here.
    fn serves(&self, local: &str) -> bool {
        match &self.internal {
            None => self.hosted.contains(local),
            Some(_) => !self.hosted.contains(local),
        }
    }

    /// Whether the peer may authenticate as `remote` on this listener.
    fn peer_allowed(&self, remote: &str) -> Result<(), String> {
        match &self.internal {
            Some(internal) if !internal.contains(remote) => Err(format!(
                "{remote} is not an internal domain of this gateway (internal listener)"
            )),
            _ => Ok(()),
        }
    }

    /// Whether dialback keys for `originating` were issued by this gateway.
    fn issues_keys_for(&self, originating: &str) -> bool {
        self.serves(originating)
    }

    fn floor_for(&self, remote: Option<&str>) -> Floor {
        match remote {
            Some(r) => self.gate.floor(r, true),
            None => Floor {
                tls_required: self.tls_required,
                auth: self.auth,
                pins: Vec::new(),
                max_streams: None,
                rule: None,
            },
        }
    }
}

/// Checks the peer's certificate for a domain: how it is valid for it, else the failure text.
pub type CertCheck = Box<dyn Fn(&str) -> Result<CertOk, String> + Send + Sync>;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send(Vec<u8>),
    /// `<proceed/>` was queued: flush it, then run the TLS server handshake and call
    /// [`Inbound::tls_established`]; the parser must be reset.
    StartTls,
    /// A new stream begins on the same transport (after SASL success): reset the parser.
    ResetParser,
    /// Verify a dialback key with the authoritative server of `remote` (XEP-0220 §2.1.2), then
    /// call [`Inbound::dialback_verified`].
    VerifyKey {
        local: String,
        remote: String,
        stream_id: String,
        key: String,
    },
    Authenticated {
        local: String,
        remote: String,
        method: AuthMethod,
        /// When the certificate that proved the identity expires (RFC 6120 §13.7.2.3: the
        /// stream must not outlive it).
        not_after: Option<i64>,
        /// The protocol that authenticated the pair: "sasl-external" or "dialback".
        mechanism: &'static str,
    },
    /// A stanza from an authorized pair, to hand to the router; its addresses are canonical.
    Stanza(Element, usize),
    /// A stanza with an address that has no canonical form, from a domain authorized on this
    /// stream: answer it with `jid-malformed` from `local` (a hosted domain of the pair).
    Malformed {
        el: Element,
        size: usize,
        local: String,
        why: String,
    },
    /// The peer enabled XEP-0198 (`<enabled/>` was queued): count the stanzas from here on.
    SmEnabled,
    /// The peer asked for an acknowledgement (`<r/>`): answer with `<a h='…'/>` once what it
    /// sent so far is taken care of.
    AckRequested,
    /// Send the stream error and close.
    Close(StreamError),
    /// The peer closed the stream: answer with our closing tag and close.
    PeerClosed,
}

/// The XMPP version a stream header asks for (RFC 6120 §4.7.5).
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamVersion {
    /// No `version`, or 0.x: a pre-RFC 3920 peer (no stream features).
    Legacy,
    /// 1.x: XMPP 1.0 (a higher minor version is treated as 1.0).
    V1,
    /// A higher major version, or one that is not `major.minor`.
    Unsupported(String),
}

impl StreamVersion {
    fn of(v: Option<&str>) -> Self {
        let Some(v) = v else { return Self::Legacy };
        let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match v.split_once('.') {
            Some((major, minor)) if number(major) && number(minor) => {
                match major.trim_start_matches('0') {
                    "" => Self::Legacy,
                    "1" => Self::V1,
                    _ => Self::Unsupported(v.to_owned()),
                }
            }
            _ => Self::Unsupported(v.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHeader,
    Open,
    Closed,
}

pub struct Inbound {
    settings: InboundSettings,
    state: State,
    stream_id: String,
    tls: bool,
    cert: Option<CertCheck>,
    sasl_done: bool,
    /// The `to` of the current stream header (our domain the peer addressed).
    local: Option<String>,
    /// The `from` of the current stream header.
    peer: Option<String>,
    /// The floor for `peer` (or the global one).
    floor: Floor,
    authorized: HashSet<(String, String)>,
    pending: HashSet<(String, String)>,
    sm_enabled: bool,
    /// Whether our stream header for the current stream (a new one after STARTTLS and after
    /// SASL success) is on its way: a stream error needs it first (RFC 6120 §4.9.1.2).
    header_sent: bool,
    out: Vec<Action>,
}

impl Inbound {
    /// `stream_id` must be unpredictable (it feeds dialback keys); `tls` is true for direct TLS.
    pub fn new(settings: InboundSettings, stream_id: String, tls: bool) -> Self {
        Self {
            floor: settings.floor_for(None),
            settings,
            state: State::AwaitHeader,
            stream_id,
            tls,
            cert: None,
            sasl_done: false,
            local: None,
            peer: None,
            authorized: HashSet::new(),
            pending: HashSet::new(),
            sm_enabled: false,
            header_sent: false,
            out: Vec::new(),
        }
    }

    /// After a direct-TLS accept (before any event) or after STARTTLS completes.
    pub fn tls_established(&mut self, cert: Option<CertCheck>) {
        self.tls = true;
        self.cert = cert;
        self.state = State::AwaitHeader;
        self.header_sent = false;
    }

    /// Our domain as the stream header named it (`to`).
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn is_authenticated(&self) -> bool {
        !self.authorized.is_empty()
    }

    pub fn authorized_pairs(&self) -> impl Iterator<Item = &(String, String)> {
        self.authorized.iter()
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// The peer certificate's verdict for `domain`, narrowed to the methods the policy
    /// accepts for it.
    fn cert_for(&self, domain: &str) -> Result<CertOk, String> {
        let Some(check) = &self.cert else {
            return Err("no-certificate: the peer presented no certificate".into());
        };
        let ok = check(domain)?;
        if self
            .settings
            .gate
            .cert_methods(domain, true)
            .allows(ok.method)
        {
            Ok(ok)
        } else {
            Err(format!(
                "policy: {} is not an accepted method for {domain}",
                ok.method.as_str()
            ))
        }
    }

    fn send(&mut self, b: Vec<u8>) {
        self.out.push(Action::Send(b));
    }

    fn close(&mut self, e: StreamError) {
        if !self.header_sent {
            let h = self.bare_header();
            self.send(h);
        }
        self.state = State::Closed;
        self.out.push(Action::Close(e));
    }

    /// The bytes that end the current stream (with the stream error `e` if given), for what the driver finds itself
    /// (parser errors, limits, timeouts, shutdown): our stream header first when this stream
    /// has none yet, so that the `stream` prefix of `<stream:error>` is bound (RFC 6120
    /// §4.9.1.2), then the error and `</stream:stream>`. The machine is closed afterwards.
    pub fn closing_bytes(&mut self, e: Option<&StreamError>) -> Vec<u8> {
        let mut b = if self.header_sent {
            Vec::new()
        } else {
            self.bare_header()
        };
        self.header_sent = true;
        self.state = State::Closed;
        match e {
            Some(e) => b.extend_from_slice(&e.to_bytes()),
            None => b.extend_from_slice(b"</stream:stream>"),
        }
        b
    }

    /// Our stream header when the peer's header is not known (or not usable): no `from` (we
    /// do not know which of our domains it wants) and no `to`.
    fn bare_header(&self) -> Vec<u8> {
        Header {
            content_ns: NS_SERVER,
            from: None,
            to: None,
            id: Some(&self.stream_id),
            version: true,
            dialback: true,
        }
        .to_bytes()
    }

    pub fn handle(&mut self, ev: StreamEvent) {
        if self.state == State::Closed {
            return;
        }
        match ev {
            StreamEvent::Open(h) => self.on_header(h),
            StreamEvent::Close => {
                self.state = State::Closed;
                self.out.push(Action::PeerClosed);
            }
            StreamEvent::Element(el, size) => self.on_element(el, size),
        }
    }

    fn on_header(&mut self, h: crate::xml::StreamHeader) {
        // Domains in canonical form (RFC 7622; U-labels): a name without one is not served
        // here (`to`) or refused below (`from`).
        let local =
            h.to.as_deref()
                .map(|d| jid_domain(d).map_or_else(|| d.to_ascii_lowercase(), Cow::into_owned));
        let version = StreamVersion::of(h.version.as_deref());
        // Answer with a header first so that a stream error is well-formed. It names only a
        // domain we serve: never claim to be a host we are not.
        let reply_from = local.clone().filter(|l| self.settings.serves(l));
        self.send(
            Header {
                content_ns: NS_SERVER,
                from: reply_from.as_deref(),
                to: h.from.as_deref(),
                id: Some(&self.stream_id.clone()),
                // RFC 6120 §4.7.5: the lower of the two versions (ours is 1.0).
                version: version != StreamVersion::Legacy,
                dialback: true,
            }
            .to_bytes(),
        );
        self.header_sent = true;
        if h.default_ns != NS_SERVER {
            return self.close(StreamError::new(
                "invalid-namespace",
                format!(
                    "this port serves jabber:server streams, not {}",
                    h.default_ns
                ),
            ));
        }
        if let StreamVersion::Unsupported(v) = &version {
            return self.close(StreamError::new(
                "unsupported-version",
                format!("XMPP version {v} is not supported here (1.0 is)"),
            ));
        }
        // RFC 6120 §4.7.2: an s2s stream must name the domain it wants. This gateway hosts
        // several, so there is no default to fall back to.
        let Some(l) = &local else {
            return self.close(StreamError::new(
                "host-unknown",
                "the stream header has no 'to': name the domain this stream is for",
            ));
        };
        if !self.settings.serves(l) {
            return self.close(StreamError::new(
                "host-unknown",
                format!("{l} is not served here"),
            ));
        }
        self.local = local;
        self.peer = match h.from.as_deref().map(|d| (d, jid_domain(d))) {
            None => None,
            Some((_, Some(d))) if !d.contains(['@', '/']) => Some(d.into_owned()),
            Some((raw, _)) => {
                return self.close(StreamError::new(
                    "invalid-from",
                    format!("'{raw}' is not a domain name (RFC 7622)"),
                ));
            }
        };
        self.floor = self.settings.floor_for(self.peer.as_deref());
        if let Some(peer) = &self.peer
            && let Err(why) = self.settings.peer_allowed(peer)
        {
            return self.close(StreamError::new("not-authorized", why));
        }
        if let (Some(peer), Some(local)) = (&self.peer, &self.local)
            && let Err(why) = self.settings.gate.admit(peer, local, true)
        {
            return self.close(StreamError::new("policy-violation", why));
        }
        self.state = State::Open;
        if version == StreamVersion::Legacy {
            // A pre-RFC 3920 peer: no features; only dialback without TLS can work.
            if self.floor.tls_required && !self.tls {
                return self.close(StreamError::new(
                    "policy-violation",
                    "policy: TLS is required and this peer does not speak XMPP 1.0",
                ));
            }
            return;
        }
        let features = self.features();
        self.send(features.into_bytes());
    }

    fn features(&self) -> String {
        let mut f = String::from("<stream:features>");
        if !self.tls {
            f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
            if self.floor.tls_required {
                f.push_str("<required/>");
            }
            f.push_str("</starttls>");
            if self.floor.tls_required {
                f.push_str("</stream:features>");
                return f;
            }
        }
        if !self.sasl_done && self.floor.auth.certificate && self.tls {
            let offer = match (&self.cert, &self.peer) {
                (Some(_), Some(peer)) => self.cert_for(peer).is_ok(),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if offer {
                f.push_str(
                    "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>EXTERNAL</mechanism></mechanisms>",
                );
            }
        }
        if self.floor.auth.dialback || self.floor.auth.certificate && self.cert.is_some() {
            f.push_str("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>");
        }
        // XEP-0198 on s2s once the stream is authenticated (after SASL: the restarted
        // stream's features), as Prosody offers and enables it.
        if self.settings.stream_management && !self.authorized.is_empty() && !self.sm_enabled {
            f.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
        }
        f.push_str("</stream:features>");
        f
    }

    fn on_element(&mut self, el: Element, size: usize) {
        if self.state != State::Open {
            return self.close(StreamError::new("not-authorized", "stream not open"));
        }
        if el.ns == NS_TLS && el.name == "starttls" {
            if self.tls {
                return self.close(StreamError::new(
                    "policy-violation",
                    "TLS is already established",
                ));
            }
            self.send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec());
            self.out.push(Action::StartTls);
            return;
        }
        let may_authenticate = self.tls || !self.floor.tls_required;
        if el.ns == NS_SASL && el.name == "auth" {
            return self.on_sasl_auth(&el);
        }
        if el.ns == NS_DIALBACK {
            if !may_authenticate {
                return self.close(StreamError::new(
                    "policy-violation",
                    "policy: TLS is required before dialback",
                ));
            }
            match el.name.as_str() {
                "result" => return self.on_db_result(&el),
                "verify" => return self.on_db_verify(&el),
                _ => {}
            }
        }
        if el.ns == crate::ack::NS_SM {
            return self.on_sm(&el);
        }
        if el.ns == NS_STREAM && el.name == "error" {
            let (cond, text) = crate::wire::parse_stream_error(&el);
            tracing::info!(condition = %cond, text = %text, "peer sent stream error");
            self.state = State::Closed;
            self.out.push(Action::PeerClosed);
            return;
        }
        if el.ns != NS_CONTENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
            return self.close(StreamError::new(
                "unsupported-stanza-type",
                format!("unexpected <{}/> in {}", el.name, el.ns),
            ));
        }
        if self.authorized.is_empty() {
            return self.close(StreamError::new(
                "not-authorized",
                "stanza before authentication",
            ));
        }
        let mut el = el;
        let malformed = crate::address::canonicalize_stanza(&mut el).err();
        let (from, to) = stanza_domains(&el);
        let (from, to) = (from.map(Cow::into_owned), to.map(Cow::into_owned));
        match ((from, to), malformed) {
            ((Some(from), _), Some(why)) if el.attr("to").is_some() => {
                // Answered with jid-malformed (from the local domain of a pair the sender's
                // domain is authorized for), if the stream may speak for that domain.
                let Some(local) = self
                    .authorized
                    .iter()
                    .find(|(_, r)| *r == from)
                    .map(|(l, _)| l.clone())
                else {
                    return self.close(StreamError::new(
                        "invalid-from",
                        format!("{from} is not authenticated on this stream"),
                    ));
                };
                self.out.push(Action::Malformed {
                    el,
                    size,
                    local,
                    why: why.to_string(),
                });
            }
            ((Some(from), Some(to)), None) => {
                let pair = (to, from);
                if !self.authorized.contains(&pair) {
                    if !self.authorized.iter().any(|(_, r)| *r == pair.1) {
                        return self.close(StreamError::new(
                            "invalid-from",
                            format!("{} is not authenticated on this stream", pair.1),
                        ));
                    }
                    let cond = if self.settings.serves(&pair.0) {
                        "invalid-from"
                    } else {
                        "host-unknown"
                    };
                    return self.close(StreamError::new(
                        cond,
                        format!(
                            "{} -> {} is not an authenticated domain pair",
                            pair.1, pair.0
                        ),
                    ));
                }
                self.out.push(Action::Stanza(el, size));
            }
            _ => self.close(StreamError::new(
                "improper-addressing",
                "stanza without valid from and to",
            )),
        }
    }

    /// XEP-0198 elements: `<enable/>` once authenticated (no resumption on s2s), `<r/>` once
    /// enabled; our `<a/>` comes from the driver, which knows what the next hops took. The
    /// peer's `<a/>` would acknowledge stanzas we sent on this stream: we send none.
    fn on_sm(&mut self, el: &Element) {
        const FAILED: &str = "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>";
        match el.name.as_str() {
            "enable"
                if self.settings.stream_management
                    && !self.sm_enabled
                    && !self.authorized.is_empty() =>
            {
                self.sm_enabled = true;
                self.send(b"<enabled xmlns='urn:xmpp:sm:3'/>".to_vec());
                self.out.push(Action::SmEnabled);
            }
            "enable" | "resume" => self.send(FAILED.as_bytes().to_vec()),
            "r" if self.sm_enabled => self.out.push(Action::AckRequested),
            "r" | "a" => {}
            other => self.close(StreamError::new(
                "unsupported-stanza-type",
                format!("unexpected <{other}/> in {}", crate::ack::NS_SM),
            )),
        }
    }

    fn on_sasl_auth(&mut self, el: &Element) {
        let fail = |this: &mut Self, cond: &str, text: &str| {
            this.send(
                format!(
                    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{cond}/><text>{}</text></failure>",
                    escape(text)
                )
                .into_bytes(),
            );
        };
        if !self.tls || !self.floor.auth.certificate || self.sasl_done {
            return fail(self, "invalid-mechanism", "EXTERNAL is not offered");
        }
        if el.attr("mechanism") != Some("EXTERNAL") {
            return fail(self, "invalid-mechanism", "only EXTERNAL is offered");
        }
        let payload = el.text();
        let authzid = match payload.trim() {
            "" | "=" => None,
            b64 => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(b) => String::from_utf8(b).ok(),
                Err(_) => return fail(self, "incorrect-encoding", "bad base64"),
            },
        };
        let Some(domain) = authzid
            .or_else(|| self.peer.clone())
            .map(|d| jid_domain(&d).map_or_else(|| d.to_ascii_lowercase(), Cow::into_owned))
        else {
            return fail(
                self,
                "invalid-authzid",
                "no authorization identity and no stream from",
            );
        };
        if self.peer.as_ref().is_some_and(|p| *p != domain) {
            return fail(
                self,
                "invalid-authzid",
                "authzid differs from the stream's from",
            );
        }
        let Some(local) = self.local.clone() else {
            return fail(self, "not-authorized", "stream header had no 'to'");
        };
        if let Err(why) = self.settings.peer_allowed(&domain) {
            return fail(self, "not-authorized", &why);
        }
        if let Err(why) = self.settings.gate.admit(&domain, &local, true) {
            fail(self, "not-authorized", &why);
            return self.close(StreamError::new("policy-violation", why));
        }
        if !self.settings.gate.floor(&domain, true).auth.certificate {
            return fail(
                self,
                "not-authorized",
                "policy: certificate authentication is not accepted for this domain",
            );
        }
        match self.cert_for(&domain) {
            Ok(ok) => {
                self.sasl_done = true;
                self.send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_vec());
                self.out.push(Action::ResetParser);
                self.authorize(local, domain, ok.method, ok.not_after, "sasl-external");
                self.state = State::AwaitHeader;
                self.header_sent = false;
            }
            Err(text) => fail(self, "not-authorized", &text),
        }
    }

    fn authorize(
        &mut self,
        local: String,
        remote: String,
        method: AuthMethod,
        not_after: Option<i64>,
        mechanism: &'static str,
    ) {
        self.pending.remove(&(local.clone(), remote.clone()));
        if self.authorized.insert((local.clone(), remote.clone())) {
            self.out.push(Action::Authenticated {
                local,
                remote,
                method,
                not_after,
                mechanism,
            });
        }
    }

    fn on_db_result(&mut self, el: &Element) {
        if el.attr("type").is_some() {
            // A result type on an inbound stream makes no sense.
            return self.close(StreamError::new(
                "unsupported-stanza-type",
                "db:result with type on inbound stream",
            ));
        }
        let (Some(from), Some(to)) = (
            el.attr("from").and_then(jid_domain),
            el.attr("to").and_then(jid_domain),
        ) else {
            return self.close(StreamError::new(
                "improper-addressing",
                "db:result needs from and to",
            ));
        };
        let (remote, local) = (from.into_owned(), to.into_owned());
        let reply_error = |this: &mut Self, etype: &str, cond: &str| {
            this.send(
                format!(
                    "<db:result from='{}' to='{}' type='error'><error type='{etype}'><{cond} \
                     xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
                    escape(&local),
                    escape(&remote)
                )
                .into_bytes(),
            );
        };
        if !self.settings.serves(&local) {
            return reply_error(self, "cancel", "item-not-found");
        }
        if self.settings.peer_allowed(&remote).is_err() {
            return reply_error(self, "auth", "not-authorized");
        }
        if let Err(why) = self.settings.gate.admit(&remote, &local, true) {
            tracing::info!(%remote, %local, %why, "dialback pair refused by policy");
            if self.authorized.is_empty() && self.pending.is_empty() {
                return self.close(StreamError::new("policy-violation", why));
            }
            return reply_error(self, "cancel", "policy-violation");
        }
        let floor = self.settings.gate.floor(&remote, true);
        if floor.tls_required && !self.tls {
            return reply_error(self, "cancel", "policy-violation");
        }
        let cert = self.cert_for(&remote).ok();
        let cert_ok = cert.is_some();
        // Dialback needs the method allowed, or a certificate that would have passed SASL
        // EXTERNAL; pinned domains always need their certificate.
        let dialback_ok = floor.auth.dialback || floor.auth.certificate && cert_ok;
        let pins_ok = floor.pins.is_empty() || cert_ok;
        if !(dialback_ok && pins_ok) {
            return reply_error(self, "auth", "not-authorized");
        }
        if self.authorized.contains(&(local.clone(), remote.clone())) {
            self.send(db_result_valid(&local, &remote));
            return;
        }
        // XEP-0344: a certificate valid for the originating domain makes the verify round trip
        // unnecessary.
        if let Some(ok) = cert {
            self.send(db_result_valid(&local, &remote));
            return self.authorize(local, remote, ok.method, ok.not_after, "dialback");
        }
        if !self.pending.insert((local.clone(), remote.clone())) {
            return;
        }
        self.out.push(Action::VerifyKey {
            local,
            remote,
            stream_id: self.stream_id.clone(),
            key: el.text().trim().to_owned(),
        });
    }

    /// The authoritative server's answer to a [`Action::VerifyKey`].
    pub fn dialback_verified(&mut self, local: &str, remote: &str, valid: bool, why: &str) {
        let pair = (local.to_owned(), remote.to_owned());
        if self.state == State::Closed || !self.pending.contains(&pair) {
            return;
        }
        if valid {
            self.send(db_result_valid(local, remote));
            self.authorize(pair.0, pair.1, AuthMethod::Dialback, None, "dialback");
        } else {
            self.pending.remove(&pair);
            tracing::info!(local, remote, why, "dialback key not verified");
            self.send(
                format!(
                    "<db:result from='{}' to='{}' type='invalid'/>",
                    escape(local),
                    escape(remote)
                )
                .into_bytes(),
            );
            // XEP-0220 §2.4: an invalid key ends the stream only if nothing else is authorized.
            if self.authorized.is_empty() && self.pending.is_empty() {
                self.close(StreamError::new(
                    "not-authorized",
                    format!("auth: dialback key for {remote} was not verified: {why}"),
                ));
            }
        }
    }

    /// We are the authoritative server: check a key one of our nodes issued (XEP-0185).
    fn on_db_verify(&mut self, el: &Element) {
        let (Some(from), Some(to), Some(id)) = (
            el.attr("from").and_then(jid_domain),
            el.attr("to").and_then(jid_domain),
            el.attr("id"),
        ) else {
            return self.close(StreamError::new(
                "improper-addressing",
                "db:verify needs from, to and id",
            ));
        };
        let (receiving, originating) = (from.into_owned(), to.into_owned());
        let ty = if !self.settings.issues_keys_for(&originating) {
            "invalid"
        } else if self
            .settings
            .secret
            .verify(&receiving, &originating, id, &el.text())
        {
            "valid"
        } else {
            "invalid"
        };
        self.send(
            format!(
                "<db:verify from='{}' to='{}' id='{}' type='{ty}'/>",
                escape(&originating),
                escape(&receiving),
                escape(id)
            )
            .into_bytes(),
        );
    }
}

fn db_result_valid(local: &str, remote: &str) -> Vec<u8> {
    format!(
        "<db:result from='{}' to='{}' type='valid'/>",
        escape(local),
        escape(remote)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Limits, StreamParser};

    fn settings(tls_required: bool, auth: AuthMethods) -> InboundSettings {
        InboundSettings {
            hosted: Arc::new(["a.test".to_owned(), "b.test".to_owned()].into()),
            tls_required,
            auth,
            secret: DialbackSecret::new("s3cret"),
            gate: Arc::new(crate::gate::Open(Floor {
                tls_required,
                auth,
                pins: Vec::new(),
                max_streams: None,
                rule: None,
            })),
            internal: None,
            stream_management: true,
        }
    }

    /// Feeds `input` through a real parser into the machine; returns the actions.
    fn feed(m: &mut Inbound, p: &mut StreamParser, input: &str) -> Vec<Action> {
        p.feed(input.as_bytes());
        let mut acts = Vec::new();
        while let Some(ev) = p.next_event().unwrap() {
            m.handle(ev);
            for a in m.take_actions() {
                if matches!(a, Action::StartTls | Action::ResetParser) {
                    p.reset();
                }
                acts.push(a);
            }
        }
        acts
    }

    fn sent(acts: &[Action]) -> String {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn header(from: &str, to: &str) -> String {
        format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
        )
    }

    fn check_ok_for(domains: &'static [&'static str]) -> CertCheck {
        Box::new(move |d| {
            if domains.contains(&d) {
                Ok(CertOk {
                    method: AuthMethod::Pkix,
                    not_after: Some(2_000_000_000),
                })
            } else {
                Err(format!("cert-name: not valid for {d}"))
            }
        })
    }

    #[test]
    fn stream_management_is_offered_after_authentication_and_enabled_once() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "id1".into(), true);
        m.tls_established(Some(check_ok_for(&["r.test"])));
        let mut p = StreamParser::new(Limits::default());
        let out = sent(&feed(&mut m, &mut p, &header("r.test", "a.test")));
        assert!(!out.contains("urn:xmpp:sm:3"), "not before auth: {out}");
        // <enable/> before authentication fails, without closing the stream.
        let out = sent(&feed(&mut m, &mut p, "<enable xmlns='urn:xmpp:sm:3'/>"));
        assert!(out.contains("<failed xmlns='urn:xmpp:sm:3'>"), "{out}");
        feed(
            &mut m,
            &mut p,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>ci50ZXN0</auth>",
        );
        let out = sent(&feed(&mut m, &mut p, &header("r.test", "a.test")));
        assert!(out.contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{out}");
        // <r/> before <enable/> is ignored.
        assert!(feed(&mut m, &mut p, "<r xmlns='urn:xmpp:sm:3'/>").is_empty());
        let acts = feed(&mut m, &mut p, "<enable xmlns='urn:xmpp:sm:3'/>");
        assert!(sent(&acts).contains("<enabled xmlns='urn:xmpp:sm:3'/>"));
        assert!(acts.contains(&Action::SmEnabled));
        let acts = feed(&mut m, &mut p, "<enable xmlns='urn:xmpp:sm:3'/>");
        assert!(sent(&acts).contains("<failed"), "enabled only once");
        let acts = feed(
            &mut m,
            &mut p,
            "<message from='x@r.test' to='y@a.test'/><r xmlns='urn:xmpp:sm:3'/>",
        );
        assert!(
            matches!(&acts[..], [Action::Stanza(..), Action::AckRequested]),
            "{acts:?}"
        );
    }

    #[test]
    fn starttls_is_required_then_sasl_external() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "id1".into(), false);
        let mut p = StreamParser::new(Limits::default());
        let acts = feed(&mut m, &mut p, &header("r.test", "a.test"));
        let out = sent(&acts);
        assert!(out.contains("id='id1'"));
        assert!(out.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"));
        assert!(
            !out.contains("dialback xmlns"),
            "only STARTTLS before TLS: {out}"
        );

        // A stanza or dialback before TLS is refused.
        let mut m2 = Inbound::new(settings(true, AuthMethods::default()), "id1".into(), false);
        let mut p2 = StreamParser::new(Limits::default());
        feed(&mut m2, &mut p2, &header("r.test", "a.test"));
        let acts2 = feed(
            &mut m2,
            &mut p2,
            "<db:result from='r.test' to='a.test'>k</db:result>",
        );
        assert!(matches!(&acts2[..], [Action::Close(e)] if e.condition == "policy-violation"));

        let acts = feed(
            &mut m,
            &mut p,
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        );
        assert_eq!(acts[1], Action::StartTls);
        m.tls_established(Some(check_ok_for(&["r.test"])));
        let acts = feed(&mut m, &mut p, &header("r.test", "a.test"));
        let out = sent(&acts);
        assert!(out.contains("<mechanism>EXTERNAL</mechanism>"), "{out}");
        assert!(out.contains("urn:xmpp:features:dialback"));

        let acts = feed(
            &mut m,
            &mut p,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>ci50ZXN0</auth>",
        );
        assert!(sent(&acts).contains("<success"));
        assert!(acts.contains(&Action::Authenticated {
            local: "a.test".into(),
            remote: "r.test".into(),
            method: AuthMethod::Pkix,
            not_after: Some(2_000_000_000),
            mechanism: "sasl-external",
        }));
        let acts = feed(&mut m, &mut p, &header("r.test", "a.test"));
        assert!(!sent(&acts).contains("EXTERNAL"), "no second SASL");
        let acts = feed(
            &mut m,
            &mut p,
            "<message from='x@r.test' to='y@a.test'><body>hi</body></message>",
        );
        assert!(matches!(&acts[..], [Action::Stanza(e, _)] if e.name == "message"));
    }

    #[test]
    fn sasl_external_refused_for_wrong_certificate() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "id1".into(), true);
        m.tls_established(Some(check_ok_for(&["other.test"])));
        let mut p = StreamParser::new(Limits::default());
        let out = sent(&feed(&mut m, &mut p, &header("r.test", "a.test")));
        assert!(
            !out.contains("EXTERNAL"),
            "not offered for an invalid cert: {out}"
        );
        let out = sent(&feed(
            &mut m,
            &mut p,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
        ));
        assert!(out.contains("<failure"), "{out}");
        assert!(out.contains("cert-name"), "{out}");
        assert!(!m.is_authenticated());
    }

    #[test]
    fn dialback_with_verify_and_piggybacking() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("r.test", "a.test"));
        let acts = feed(
            &mut m,
            &mut p,
            "<db:result from='r.test' to='a.test'>KEY1</db:result>",
        );
        assert_eq!(
            acts,
            vec![Action::VerifyKey {
                local: "a.test".into(),
                remote: "r.test".into(),
                stream_id: "sid".into(),
                key: "KEY1".into()
            }]
        );
        // Piggy-backed: a second pair on the same stream.
        let acts = feed(
            &mut m,
            &mut p,
            "<db:result from='s.test' to='b.test'>KEY2</db:result>",
        );
        assert!(matches!(&acts[..], [Action::VerifyKey { remote, .. }] if remote == "s.test"));
        // A stanza before any pair is valid is refused.
        m.dialback_verified("a.test", "r.test", true, "");
        let out = sent(&m.take_actions());
        assert!(out.contains("<db:result from='a.test' to='r.test' type='valid'/>"));
        let acts = feed(&mut m, &mut p, "<message from='x@r.test' to='y@a.test'/>");
        assert!(matches!(&acts[..], [Action::Stanza(..)]));
        // s.test not yet verified: spoofing it is a stream error.
        let acts = feed(&mut m, &mut p, "<message from='x@s.test' to='y@b.test'/>");
        assert!(
            matches!(&acts[..], [Action::Close(e)] if e.condition == "invalid-from"),
            "{acts:?}"
        );
    }

    /// Issue 13, item 1: addresses are rewritten into canonical form where the stanza enters,
    /// so the pair check and everything after see one form; malformed ones are answered.
    #[test]
    fn stanza_addresses_are_canonical_and_malformed_ones_answered() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("R.Test", "a.test"));
        feed(
            &mut m,
            &mut p,
            "<db:result from='R.TEST.' to='A.test'>KEY1</db:result>",
        );
        m.dialback_verified("a.test", "r.test", true, "");
        m.take_actions();
        // Any form of an authorized pair's addresses passes, rewritten.
        let acts = feed(
            &mut m,
            &mut p,
            "<message from='ＭＡＬＬＯＲＹ@R.test./Desk' to='Bob@a.TEST.'/>",
        );
        let [Action::Stanza(el, _)] = &acts[..] else {
            panic!("{acts:?}")
        };
        assert_eq!(el.attr("from"), Some("mallory@r.test/Desk"));
        assert_eq!(el.attr("to"), Some("bob@a.test"));
        // Malformed localpart, empty label, overlong resource: jid-malformed, the stream lives.
        let long = "x".repeat(1024);
        for (input, attr) in [
            (
                "<message from='x@r.test' to='a b@a.test'/>".to_owned(),
                "to",
            ),
            (
                "<message from='x:y@r.test' to='bob@a.test'/>".to_owned(),
                "from",
            ),
            (
                "<message from='x@r.test' to='bob@a..test'/>".to_owned(),
                "to",
            ),
            (
                format!("<message from='x@r.test/{long}' to='bob@a.test'/>"),
                "from",
            ),
        ] {
            let acts = feed(&mut m, &mut p, &input);
            match &acts[..] {
                [Action::Malformed { local, why, .. }] => {
                    assert_eq!(local, "a.test");
                    assert!(why.contains(&format!("'{attr}'")), "{why}");
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        // A malformed address from a domain this stream does not speak for is still spoofing.
        let acts = feed(&mut m, &mut p, "<message from='x@s.test' to='a b@a.test'/>");
        assert!(
            matches!(&acts[..], [Action::Close(e)] if e.condition == "invalid-from"),
            "{acts:?}"
        );
    }

    #[test]
    fn piggybacked_pair_is_authorized_on_its_own() {
        let mut m = Inbound::new(settings(false, AuthMethods::default()), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("r.test", "a.test"));
        feed(
            &mut m,
            &mut p,
            "<db:result from='r.test' to='a.test'>K</db:result>",
        );
        feed(
            &mut m,
            &mut p,
            "<db:result from='s.test' to='b.test'>K</db:result>",
        );
        m.dialback_verified("a.test", "r.test", true, "");
        m.dialback_verified("b.test", "s.test", false, "invalid key");
        let out = sent(&m.take_actions());
        assert!(
            out.contains("from='b.test' to='s.test' type='invalid'"),
            "{out}"
        );
        // r.test→b.test was never authorized even though both domains are known on the stream.
        let acts = feed(&mut m, &mut p, "<message from='x@r.test' to='y@b.test'/>");
        assert!(matches!(&acts[..], [Action::Close(e)] if e.condition == "invalid-from"));
    }

    #[test]
    fn invalid_key_closes_when_nothing_is_authorized() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("r.test", "a.test"));
        feed(
            &mut m,
            &mut p,
            "<db:result from='r.test' to='a.test'>bad</db:result>",
        );
        m.dialback_verified("a.test", "r.test", false, "invalid key");
        let acts = m.take_actions();
        assert!(matches!(acts.last(), Some(Action::Close(e)) if e.condition == "not-authorized"));
    }

    #[test]
    fn dialback_with_valid_certificate_needs_no_verify() {
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "sid".into(), true);
        m.tls_established(Some(check_ok_for(&["r.test"])));
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("r.test", "a.test"));
        let acts = feed(
            &mut m,
            &mut p,
            "<db:result from='r.test' to='a.test'>K</db:result>",
        );
        assert!(sent(&acts).contains("type='valid'"));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Authenticated {
                method: AuthMethod::Pkix,
                ..
            }
        )));
    }

    #[test]
    fn dialback_disabled_and_unknown_host() {
        let mut m = Inbound::new(
            settings(
                true,
                AuthMethods {
                    certificate: true,
                    dialback: false,
                },
            ),
            "sid".into(),
            true,
        );
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        let out = sent(&feed(&mut m, &mut p, &header("r.test", "a.test")));
        assert!(!out.contains("dialback xmlns"));
        let out = sent(&feed(
            &mut m,
            &mut p,
            "<db:result from='r.test' to='a.test'>K</db:result>",
        ));
        assert!(
            out.contains("type='error'") && out.contains("not-authorized"),
            "{out}"
        );

        let mut m = Inbound::new(settings(true, AuthMethods::default()), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        let acts = feed(&mut m, &mut p, &header("r.test", "nothere.test"));
        assert!(matches!(acts.last(), Some(Action::Close(e)) if e.condition == "host-unknown"));
    }

    /// A gate that denies one domain and requires certificates from another.
    struct TestGate;
    impl Gatekeeper for TestGate {
        fn admit(&self, remote: &str, _: &str, _: bool) -> Result<(), String> {
            if remote == "evil.test" {
                Err("policy: rule block-evil (line 3) denies evil.test".into())
            } else {
                Ok(())
            }
        }
        fn floor(&self, remote: &str, _: bool) -> Floor {
            Floor {
                tls_required: true,
                auth: AuthMethods {
                    certificate: true,
                    dialback: remote != "strict.test",
                },
                pins: Vec::new(),
                max_streams: None,
                rule: None,
            }
        }
    }

    #[test]
    fn policy_is_applied_at_stream_open_and_to_each_pair() {
        let mut s = settings(true, AuthMethods::default());
        s.gate = Arc::new(TestGate);
        // Denied at stream open: the stream error names the rule.
        let mut m = Inbound::new(s.clone(), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        let acts = feed(&mut m, &mut p, &header("evil.test", "a.test"));
        assert!(
            matches!(acts.last(), Some(Action::Close(e)) if e.condition == "policy-violation" && e.text.contains("block-evil")),
            "{acts:?}"
        );
        // Piggy-backed: the denied pair gets an error, the stream and its other pair stay.
        let mut m = Inbound::new(s.clone(), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("r.test", "a.test"));
        feed(
            &mut m,
            &mut p,
            "<db:result from='r.test' to='a.test'>K</db:result>",
        );
        m.dialback_verified("a.test", "r.test", true, "");
        m.take_actions();
        let out = sent(&feed(
            &mut m,
            &mut p,
            "<db:result from='evil.test' to='a.test'>K</db:result>",
        ));
        assert!(
            out.contains("type='error'") && out.contains("policy-violation"),
            "{out}"
        );
        assert!(m.is_authenticated());
        // A domain that must use certificates cannot use dialback.
        let out = sent(&feed(
            &mut m,
            &mut p,
            "<db:result from='strict.test' to='a.test'>K</db:result>",
        ));
        assert!(out.contains("not-authorized"), "{out}");
    }

    #[test]
    fn internal_listener_fronts_remote_domains_for_internal_servers_only() {
        let mut s = settings(true, AuthMethods::default());
        s.internal = Some(Arc::new(["a.test".to_owned()].into()));
        // The internal server of a.test opens a stream "to" a remote domain we front.
        let mut m = Inbound::new(s.clone(), "sid".into(), true);
        m.tls_established(Some(check_ok_for(&["a.test"])));
        let mut p = StreamParser::new(Limits::default());
        let out = sent(&feed(&mut m, &mut p, &header("a.test", "partner.test")));
        assert!(out.contains("<mechanism>EXTERNAL</mechanism>"), "{out}");
        let acts = feed(
            &mut m,
            &mut p,
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
        );
        assert!(acts.iter().any(|a| matches!(a, Action::Authenticated { local, remote, .. } if local == "partner.test" && remote == "a.test")));
        feed(&mut m, &mut p, &header("a.test", "partner.test"));
        let acts = feed(
            &mut m,
            &mut p,
            "<message from='u@a.test' to='v@partner.test'/>",
        );
        assert!(matches!(&acts[..], [Action::Stanza(..)]), "{acts:?}");
        // Only internal domains may be the peer here, and hosted domains are not served.
        let mut m = Inbound::new(s.clone(), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        let acts = feed(&mut m, &mut p, &header("evil.test", "partner.test"));
        assert!(
            matches!(acts.last(), Some(Action::Close(e)) if e.condition == "not-authorized"),
            "{acts:?}"
        );
        let mut m = Inbound::new(s.clone(), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        let acts = feed(&mut m, &mut p, &header("a.test", "b.test"));
        assert!(
            matches!(acts.last(), Some(Action::Close(e)) if e.condition == "host-unknown"),
            "{acts:?}"
        );
        // Keys the gateway issued as a fronted domain are verified here.
        let key = DialbackSecret::new("s3cret").key("a.test", "partner.test", "id-7");
        let mut m = Inbound::new(s, "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("a.test", "partner.test"));
        let out = sent(&feed(
            &mut m,
            &mut p,
            &format!("<db:verify from='a.test' to='partner.test' id='id-7'>{key}</db:verify>"),
        ));
        assert!(out.contains("type='valid'"), "{out}");
    }

    #[test]
    fn answers_verify_requests_as_authoritative_server() {
        let secret = DialbackSecret::new("s3cret");
        let key = secret.key("r.test", "a.test", "their-id");
        let mut m = Inbound::new(settings(true, AuthMethods::default()), "sid".into(), true);
        m.tls_established(None);
        let mut p = StreamParser::new(Limits::default());
        feed(&mut m, &mut p, &header("r.test", "a.test"));
        let out = sent(&feed(
            &mut m,
            &mut p,
            &format!("<db:verify from='r.test' to='a.test' id='their-id'>{key}</db:verify>"),
        ));
        assert!(
            out.contains("<db:verify from='a.test' to='r.test' id='their-id' type='valid'/>"),
            "{out}"
        );
        let out = sent(&feed(
            &mut m,
            &mut p,
            "<db:verify from='r.test' to='a.test' id='their-id'>0000</db:verify>",
        ));
        assert!(out.contains("type='invalid'"));
    }

    /// Our stream header opens `out` exactly once, binds the `stream` prefix, and the stream
    /// error with `condition` (in the streams namespace) ends it.
    fn assert_error_document(out: &str, condition: &str) {
        assert!(
            out.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"),
            "{out}"
        );
        assert_eq!(out.matches("<stream:stream").count(), 1, "{out}");
        assert!(
            out.contains(&format!(
                "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            )),
            "{out}"
        );
        assert!(out.ends_with("</stream:error></stream:stream>"), "{out}");
    }

    fn open_with(header: &str) -> (Inbound, Vec<Action>) {
        let mut m = Inbound::new(settings(false, AuthMethods::default()), "sid".into(), false);
        let mut p = StreamParser::new(Limits::default());
        let acts = feed(&mut m, &mut p, header);
        (m, acts)
    }

    fn closed_with(acts: &[Action]) -> String {
        let Some(Action::Close(e)) = acts.last() else {
            panic!("not closed: {acts:?}")
        };
        let mut out = sent(acts);
        out.push_str(&String::from_utf8_lossy(&e.to_bytes()));
        out
    }

    /// RFC 6120 §4.7.2: an s2s header without `to` gets host-unknown, not an open stream;
    /// our header names none of our domains.
    #[test]
    fn a_header_without_to_is_host_unknown() {
        let (_, acts) = open_with(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
             from='r.test' version='1.0'>",
        );
        let out = closed_with(&acts);
        assert_error_document(&out, "host-unknown");
        assert!(!out.contains("from="), "{out}");
        assert!(!out.contains("<stream:features>"), "{out}");
    }

    /// An unknown `to`: our header does not claim to be that host.
    #[test]
    fn an_unknown_to_is_host_unknown_from_nobody() {
        let (_, acts) = open_with(&header("r.test", "nothere.test"));
        let out = closed_with(&acts);
        assert_error_document(&out, "host-unknown");
        assert!(!out.contains("from='nothere.test'"), "{out}");
    }

    /// RFC 6120 §4.7.5: a higher major version is unsupported-version; a higher minor
    /// version is 1.0; no version is a legacy peer.
    #[test]
    fn stream_versions() {
        let with = |v: &str| {
            format!(
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                 from='r.test' to='a.test'{v}>"
            )
        };
        for bad in [" version='2.0'", " version='one'", " version='1'"] {
            let (_, acts) = open_with(&with(bad));
            assert_error_document(&closed_with(&acts), "unsupported-version");
        }
        let (_, acts) = open_with(&with(" version='1.1'"));
        let out = sent(&acts);
        assert!(
            out.contains(" version='1.0'>") && out.contains("<stream:features>"),
            "{out}"
        );
        let (_, acts) = open_with(&with(""));
        let out = sent(&acts);
        assert!(
            out.ends_with(" id='sid'>"),
            "no version, no features: {out}"
        );
        assert!(!matches!(acts.last(), Some(Action::Close(_))), "{acts:?}");
    }

    /// What the driver finds itself (a parser error, a timeout) before the peer's header, and
    /// again on the new stream after STARTTLS: our header first. Once it is sent, not again.
    #[test]
    fn closing_bytes_start_a_stream_only_when_none_is_open() {
        let e = StreamError::new("not-well-formed", "garbage");
        let mut m = Inbound::new(settings(false, AuthMethods::default()), "sid".into(), false);
        let out = String::from_utf8(m.closing_bytes(Some(&e))).unwrap();
        assert_error_document(&out, "not-well-formed");

        let (mut m, acts) = open_with(&header("r.test", "a.test"));
        assert!(sent(&acts).starts_with("<?xml"));
        let out = String::from_utf8(m.closing_bytes(Some(&e))).unwrap();
        assert!(out.starts_with("<stream:error>"), "{out}");

        let (mut m, _) = open_with(&header("r.test", "a.test"));
        m.tls_established(None);
        let out = String::from_utf8(m.closing_bytes(Some(&e))).unwrap();
        assert_error_document(&out, "not-well-formed");
        let out = String::from_utf8(
            Inbound::new(settings(false, AuthMethods::default()), "s".into(), false)
                .closing_bytes(None),
        )
        .unwrap();
        assert!(
            out.starts_with("<?xml") && out.ends_with("'1.0'></stream:stream>"),
            "{out}"
        );
    }
}
