//! Typed views of the SIP headers the gateway reads and writes (RFC 3261 §20, RFC 6665 for
//! Event and Subscription-State), plus generators for branches, tags and Call-IDs.
//!
//! Every view keeps what it does not interpret byte-exact: parameters are stored as the raw
//! text between `;` separators ([`Params`]), display names and the sent-protocol part of Via as
//! written, so `parse(s).to_string() == s` for the forms we meet (Microsoft `ms-*`, `epid=`,
//! `opaque=`, quoted values). URIs are kept as raw strings; URI parsing lives in `address`.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::msg::{is_token, is_token_char, split_top};

/// A header value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HdrError {
    /// A required header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A header value does not match its grammar.
    #[error("malformed {header} header: {reason}")]
    Malformed {
        /// Which header.
        header: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn malformed(header: &'static str, reason: &'static str) -> HdrError {
    HdrError::Malformed { header, reason }
}

/// One `;name[=value]` parameter, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Param {
    /// Text after the `;` up to the next top-level `;` (untrimmed).
    raw: String,
}

impl Param {
    fn name(&self) -> &str {
        self.raw.split('=').next().unwrap_or_default().trim()
    }
    fn value(&self) -> &str {
        match self.raw.split_once('=') {
            Some((_, v)) => v.trim(),
            None => "",
        }
    }
}

/// Header parameters in order, each kept byte-exact. Names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params(Vec<Param>);

impl Params {
    /// Parse the text after the first `;` of a parameter list (e.g. `tag=1;epid=2`). An empty
    /// string gives no parameters.
    pub fn parse(s: &str) -> Self {
        if s.is_empty() {
            return Self::default();
        }
        Self(
            split_top(s, b';')
                .into_iter()
                .map(|raw| Param {
                    raw: raw.to_owned(),
                })
                .collect(),
        )
    }

    /// The value of `name`: `Some("")` for a flag parameter such as `lr`, quotes kept.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
            .map(Param::value)
    }

    /// Whether `name` is present (flag or valued).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Set `name` to `value` (`None` for a flag), replacing it in place or appending.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let raw = match value {
            Some(v) => format!("{name}={v}"),
            None => name.to_owned(),
        };
        match self
            .0
            .iter_mut()
            .find(|p| p.name().eq_ignore_ascii_case(name))
        {
            Some(p) => p.raw = raw,
            None => self.0.push(Param { raw }),
        }
    }

    /// Remove `name`; returns whether it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|p| !p.name().eq_ignore_ascii_case(name));
        before != self.0.len()
    }

    /// Parameter names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Param::name)
    }
}

impl fmt::Display for Params {
    /// Each parameter as `;raw`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            write!(f, ";{}", p.raw)?;
        }
        Ok(())
    }
}

/// Split `s` at the first top-level `;` into (head, params).
fn split_params(s: &str) -> (&str, Params) {
    match split_top(s, b';').first() {
        Some(head) if head.len() < s.len() => (head, Params::parse(&s[head.len() + 1..])),
        _ => (s, Params::default()),
    }
}

/// `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route, Record-Route,
/// Refer-To (RFC 3261 §20.10, §25.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Everything before `<` as written (display name with its quotes and trailing space), empty
    /// if none. Meaningless when `angle` is false.
    display_raw: String,
    /// The URI, raw.
    uri: String,
    /// Whether the URI was in `<...>`.
    angle: bool,
    /// Header parameters after the URI (`tag`, `epid`, `expires`, ...).
    pub params: Params,
}

impl NameAddr {
    /// `<uri>` with no display name or parameters.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            display_raw: String::new(),
            uri: uri.into(),
            angle: true,
            params: Params::default(),
        }
    }

    /// Parse one element (not a comma-separated list; use `SipMessage::headers` to split).
    pub fn parse(s: &str) -> Result<Self, HdrError> {
        const H: &str = "name-addr";
        let s = s.trim();
        if s.is_empty() {
            return Err(malformed(H, "empty"));
        }
        // Find a top-level '<' (not inside the quoted display name).
        let mut in_quote = false;
        let mut escaped = false;
        let mut lt = None;
        for (i, b) in s.bytes().enumerate() {
            if in_quote {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_quote = false,
                    _ => {}
                }
            } else if b == b'"' {
                in_quote = true;
            } else if b == b'<' {
                lt = Some(i);
                break;
            }
        }
        if in_quote {
            return Err(malformed(H, "unterminated quoted display name"));
        }
        match lt {
            Some(lt) => {
                let rest = &s[lt + 1..];
                let gt = rest.find('>').ok_or(malformed(H, "missing '>'"))?;
                let uri = &rest[..gt];
                if uri.trim().is_empty() {
                    return Err(malformed(H, "empty URI"));
                }
                let after = rest[gt + 1..].trim_start();
                let params = match after.strip_prefix(';') {
                    Some(p) => Params::parse(p),
                    None if after.is_empty() => Params::default(),
                    None => return Err(malformed(H, "text after '>'")),
                };
                Ok(Self {
                    display_raw: s[..lt].to_owned(),
                    uri: uri.to_owned(),
                    angle: true,
                    params,
                })
            }
            None => {
                // addr-spec: parameters after the URI belong to the header (§20.10).
                let (uri, params) = split_params(s);
                let uri = uri.trim();
                if uri.is_empty() || uri.contains([' ', '\t', '"', '>']) || !uri.contains(':') {
                    return Err(malformed(H, "not a URI"));
                }
                Ok(Self {
                    display_raw: String::new(),
                    uri: uri.to_owned(),
                    angle: false,
                    params,
                })
            }
        }
    }

    /// The URI as written.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Replace the URI (the result is written in `<...>`).
    pub fn set_uri(&mut self, uri: impl Into<String>) {
        self.uri = uri.into();
        self.angle = true;
    }

    /// The display name, unquoted and unescaped; None if absent.
    pub fn display_name(&self) -> Option<String> {
        let d = self.display_raw.trim();
        if !self.angle || d.is_empty() {
            return None;
        }
        match d.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            Some(inner) => {
                let mut out = String::new();
                let mut esc = false;
                for c in inner.chars() {
                    if esc {
                        out.push(c);
                        esc = false;
                    } else if c == '\\' {
                        esc = true;
                    } else {
                        out.push(c);
                    }
                }
                Some(out)
            }
            None => Some(d.to_owned()),
        }
    }

    /// Set the display name (quoted and escaped on output).
    pub fn set_display_name(&mut self, name: &str) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        self.display_raw = format!("\"{escaped}\" ");
        self.angle = true;
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").filter(|t| !t.is_empty())
    }

    /// Set (or replace) the `tag` parameter.
    pub fn set_tag(&mut self, tag: &str) {
        self.params.set("tag", Some(tag));
    }

    /// A header parameter (see [`Params::get`]).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name)
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.angle {
            write!(f, "{}<{}>{}", self.display_raw, self.uri, self.params)
        } else {
            write!(f, "{}{}", self.uri, self.params)
        }
    }
}

/// Whether a raw SIP URI carries URI parameter `name` (e.g. `lr`), looking only at the
/// parameters of the URI itself (before any `?headers`).
pub fn uri_has_param(uri: &str, name: &str) -> bool {
    let no_headers = uri.split('?').next().unwrap_or_default();
    no_headers.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case(name)
    })
}

/// One Via element: `SIP/2.0/TLS host[:port];params` (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Sent-protocol as written, including the whitespace before sent-by.
    proto_raw: String,
    /// Transport token, e.g. `TLS`, upper-cased.
    transport: String,
    /// `host[:port]` as written.
    sent_by: String,
    /// Via parameters (`branch`, `received`, `rport`, `ms-received-port`, ...).
    pub params: Params,
}

impl Via {
    /// `SIP/2.0/<transport> <sent_by>;branch=<branch>`.
    pub fn new(transport: &str, sent_by: &str, branch: &str) -> Self {
        let mut params = Params::default();
        params.set("branch", Some(branch));
        Self {
            proto_raw: format!("SIP/2.0/{transport} "),
            transport: transport.to_ascii_uppercase(),
            sent_by: sent_by.to_owned(),
            params,
        }
    }

    /// Parse one Via element.
    pub fn parse(s: &str) -> Result<Self, HdrError> {
        const H: &str = "Via";
        let s = s.trim();
        // sent-protocol = name SLASH version SLASH transport, with optional LWS around slashes.
        let mut slashes = 0;
        let mut i = 0;
        let b = s.as_bytes();
        while i < b.len() {
            if b[i] == b'/' {
                slashes += 1;
            } else if slashes == 2 && is_token_char(b[i]) {
                break;
            }
            i += 1;
        }
        if slashes != 2 || i >= b.len() {
            return Err(malformed(H, "no sent-protocol"));
        }
        let t_start = i;
        while i < b.len() && is_token_char(b[i]) {
            i += 1;
        }
        let transport = &s[t_start..i];
        let proto: String = s[..i].chars().filter(|c| !c.is_whitespace()).collect();
        let mut parts = proto.split('/');
        if !parts.next().is_some_and(|n| n.eq_ignore_ascii_case("SIP"))
            || parts.next() != Some("2.0")
        {
            return Err(malformed(H, "sent-protocol is not SIP/2.0"));
        }
        let ws_end = i + s[i..].len() - s[i..].trim_start().len();
        if ws_end == i {
            return Err(malformed(H, "no space before sent-by"));
        }
        let (sent_by, params) = split_params(&s[ws_end..]);
        let sent_by = sent_by.trim_end();
        if sent_by.is_empty() || sent_by.contains([' ', '\t', ',']) {
            return Err(malformed(H, "bad sent-by"));
        }
        Ok(Self {
            proto_raw: s[..ws_end].to_owned(),
            transport: transport.to_ascii_uppercase(),
            sent_by: sent_by.to_owned(),
            params,
        })
    }

    /// Transport, upper-cased (`TLS`, `TCP`, ...).
    pub fn transport(&self) -> &str {
        &self.transport
    }

    /// `host[:port]` as written.
    pub fn sent_by(&self) -> &str {
        &self.sent_by
    }

    /// Host part of sent-by (IPv6 references keep their brackets).
    pub fn host(&self) -> &str {
        split_host_port(&self.sent_by).0
    }

    /// Port of sent-by, if written and numeric.
    pub fn port(&self) -> Option<u16> {
        split_host_port(&self.sent_by)
            .1
            .and_then(|p| p.parse().ok())
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").filter(|b| !b.is_empty())
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&str> {
        self.params.get("received")
    }

    /// The `rport` parameter: `Some("")` when present as a flag (RFC 3581 request form).
    pub fn rport(&self) -> Option<&str> {
        self.params.get("rport")
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.proto_raw, self.sent_by, self.params)
    }
}

/// Split `host[:port]`, handling `[v6]:port`.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => (&s[..=end], s[end + 1..].strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

/// CSeq: sequence number and method (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (< 2^31 when we pick it).
    pub seq: u32,
    /// Method, case kept.
    pub method: String,
}

impl CSeq {
    /// Parse `1 INVITE`.
    pub fn parse(s: &str) -> Result<Self, HdrError> {
        let mut it = s.split_ascii_whitespace();
        let (Some(n), Some(m), None) = (it.next(), it.next(), it.next()) else {
            return Err(malformed("CSeq", "expected '<number> <method>'"));
        };
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("CSeq", "number is not decimal"));
        }
        let seq = n
            .parse()
            .map_err(|_| malformed("CSeq", "number out of range"))?;
        if !is_token(m) {
            return Err(malformed("CSeq", "method is not a token"));
        }
        Ok(Self {
            seq,
            method: m.to_owned(),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// Subscription-State (RFC 6665 §8.2.3): `active;expires=3600`, `terminated;reason=timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    /// The state token as written.
    pub state: String,
    /// Parameters (`expires`, `reason`, `retry-after`, ...).
    pub params: Params,
}

/// The three states of RFC 6665, plus anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// `active`
    Active,
    /// `pending`
    Pending,
    /// `terminated`
    Terminated,
    /// An extension value (RFC 6665 says: treat it as ... per the package; we log and ignore).
    Other,
}

impl SubscriptionState {
    /// A state with optional expires.
    pub fn new(state: &str, expires: Option<u32>) -> Self {
        let mut params = Params::default();
        if let Some(e) = expires {
            params.set("expires", Some(&e.to_string()));
        }
        Self {
            state: state.to_owned(),
            params,
        }
    }

    /// Parse the header value.
    pub fn parse(s: &str) -> Result<Self, HdrError> {
        let (state, params) = split_params(s.trim());
        let state = state.trim();
        if !is_token(state) {
            return Err(malformed("Subscription-State", "state is not a token"));
        }
        Ok(Self {
            state: state.to_owned(),
            params,
        })
    }

    /// Which state this is (case-insensitive).
    pub fn kind(&self) -> SubState {
        match self.state.to_ascii_lowercase().as_str() {
            "active" => SubState::Active,
            "pending" => SubState::Pending,
            "terminated" => SubState::Terminated,
            _ => SubState::Other,
        }
    }

    /// The `expires` parameter, if present and numeric (saturating at `u32::MAX`).
    pub fn expires(&self) -> Option<u32> {
        self.params.get("expires").and_then(|v| parse_delta(v).ok())
    }

    /// The `reason` parameter (`deactivated`, `probation`, `rejected`, `timeout`, ...).
    pub fn reason(&self) -> Option<&str> {
        self.params.get("reason").filter(|r| !r.is_empty())
    }

    /// The `retry-after` parameter, seconds.
    pub fn retry_after(&self) -> Option<u32> {
        self.params
            .get("retry-after")
            .and_then(|v| parse_delta(v).ok())
    }
}

impl fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.state, self.params)
    }
}

fn parse_delta(v: &str) -> Result<u32, ()> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    // RFC 3261 §20.19 / §25: delta-seconds too large for 32 bits means "very long": saturate.
    Ok(v.parse::<u64>()
        .map_or(u32::MAX, |n| n.min(u32::MAX as u64) as u32))
}

/// Parse an `Expires` value (delta-seconds, saturating at `u32::MAX`). The RFC 1123 date form
/// of RFC 2543 is refused.
pub fn parse_expires(s: &str) -> Result<u32, HdrError> {
    parse_delta(s).map_err(|()| malformed("Expires", "not delta-seconds"))
}

/// Parse `Max-Forwards` (0..=255).
pub fn parse_max_forwards(s: &str) -> Result<u8, HdrError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("Max-Forwards", "not a number"));
    }
    s.parse()
        .map_err(|_| malformed("Max-Forwards", "larger than 255"))
}

/// The option tags of every `name` header (Require, Proxy-Require, Supported, Unsupported), in
/// order, as written.
pub fn option_tags<'a>(msg: &'a crate::msg::SipMessage, name: &str) -> Vec<&'a str> {
    msg.headers(name).collect()
}

/// Event (RFC 6665 §8.2.1): package (with optional template, e.g. `presence.winfo`) and `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event type as written (`presence`).
    pub package: String,
    /// Parameters (`id`, ...).
    pub params: Params,
}

impl Event {
    /// An event header without parameters.
    pub fn new(package: &str) -> Self {
        Self {
            package: package.to_owned(),
            params: Params::default(),
        }
    }

    /// Parse the header value.
    pub fn parse(s: &str) -> Result<Self, HdrError> {
        let (package, params) = split_params(s.trim());
        let package = package.trim();
        if !is_token(package) {
            return Err(malformed("Event", "event type is not a token"));
        }
        Ok(Self {
            package: package.to_owned(),
            params,
        })
    }

    /// The `id` parameter.
    pub fn id(&self) -> Option<&str> {
        self.params.get("id").filter(|i| !i.is_empty())
    }

    /// Whether two Event headers name the same subscription (RFC 6665 §8.2.1: package compared
    /// case-insensitively, ids compared exactly, absent equals absent).
    pub fn matches(&self, other: &Event) -> bool {
        self.package.eq_ignore_ascii_case(&other.package) && self.id() == other.id()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.package, self.params)
    }
}

fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// The RFC 3261 §8.1.1.7 magic cookie every branch starts with.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// A fresh branch: `z9hG4bK` + 24 random alphanumerics. (For loop detection use
/// `check::LoopDetector::branch_for`, which embeds a request hash.)
pub fn new_branch() -> String {
    format!("{BRANCH_COOKIE}{}", random_alnum(24))
}

/// A fresh From/To tag (16 random alphanumerics, about 95 bits).
pub fn new_tag() -> String {
    random_alnum(16)
}

/// A fresh Call-ID `<24 random alphanumerics>@host`.
pub fn new_call_id(host: &str) -> String {
    format!("{}@{host}", random_alnum(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_round_trips_microsoft_shapes() {
        for s in [
            "\"Bob Example\" <sip:bob@lync.test>;tag=7a1b;epid=01010101ab",
            "<sip:alice@example.test>",
            "<sip:bob@lync.test;opaque=user:epid:AbCdEf0123456789abcdef==;gruu>;+sip.instance=\"<urn:uuid:1234>\"",
            "sip:alice@example.test;tag=abc",
            "Bob <sip:bob@lync.test>;tag=1",
            "<sip:edge.lync.test:5061;transport=tls;opaque=state:T;lr;ms-route-sig=aaBBcc>;ms-fe=fe.lync.test",
        ] {
            let n = NameAddr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(n.to_string(), s);
        }
    }

    #[test]
    fn name_addr_fields() {
        let n = NameAddr::parse(
            "\"Bob \\\"B\\\" <x>\" <sip:bob@lync.test;transport=tls>;tag=7a1b;epid=01ab",
        )
        .expect("parse");
        assert_eq!(n.display_name().as_deref(), Some("Bob \"B\" <x>"));
        assert_eq!(n.uri(), "sip:bob@lync.test;transport=tls");
        assert_eq!(n.tag(), Some("7a1b"));
        assert_eq!(n.param("EPID"), Some("01ab"));
        assert_eq!(n.param("missing"), None);
        // addr-spec: the ;tag belongs to the header, not the URI.
        let b = NameAddr::parse("sip:alice@example.test;tag=9").expect("parse");
        assert_eq!(b.uri(), "sip:alice@example.test");
        assert_eq!(b.tag(), Some("9"));
        assert_eq!(b.display_name(), None);
    }

    #[test]
    fn set_tag_keeps_other_params() {
        let mut n = NameAddr::parse("<sip:alice@example.test>;epid=1").expect("parse");
        n.set_tag("x");
        assert_eq!(n.to_string(), "<sip:alice@example.test>;epid=1;tag=x");
        n.set_tag("y");
        assert_eq!(n.to_string(), "<sip:alice@example.test>;epid=1;tag=y");
        let mut d = NameAddr::new("sip:a@b");
        d.set_display_name("A \"q\"");
        assert_eq!(d.to_string(), "\"A \\\"q\\\"\" <sip:a@b>");
        assert_eq!(d.display_name().as_deref(), Some("A \"q\""));
    }

    #[test]
    fn name_addr_rejects_garbage() {
        for s in [
            "",
            "<sip:a@b",
            "\"unterminated <sip:a@b>",
            "<>",
            "<sip:a@b> junk",
            "just words",
        ] {
            assert!(NameAddr::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn via_round_trip_and_fields() {
        let s = "SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKabc;ms-received-port=5061;ms-received-cid=1234;received=192.0.2.1;rport=40000";
        let v = Via::parse(s).expect("parse");
        assert_eq!(v.to_string(), s);
        assert_eq!(v.transport(), "TLS");
        assert_eq!(v.host(), "10.0.0.1");
        assert_eq!(v.port(), Some(5061));
        assert_eq!(v.branch(), Some("z9hG4bKabc"));
        assert_eq!(v.received(), Some("192.0.2.1"));
        assert_eq!(v.rport(), Some("40000"));
        assert_eq!(v.params.get("ms-received-cid"), Some("1234"));

        let v6 =
            Via::parse("SIP / 2.0 / tls  [2001:db8::1]:5061;rport;branch=z9hG4bK1").expect("v6");
        assert_eq!(v6.host(), "[2001:db8::1]");
        assert_eq!(v6.port(), Some(5061));
        assert_eq!(v6.rport(), Some(""));
        assert_eq!(v6.transport(), "TLS");
        assert_eq!(
            v6.to_string(),
            "SIP / 2.0 / tls  [2001:db8::1]:5061;rport;branch=z9hG4bK1"
        );

        let built = Via::new("TLS", "gw.example.test:5061", "z9hG4bKx");
        assert_eq!(
            built.to_string(),
            "SIP/2.0/TLS gw.example.test:5061;branch=z9hG4bKx"
        );
        assert_eq!(built.port(), Some(5061));

        for bad in [
            "",
            "SIP/2.0/TLS",
            "HTTP/1.1/TCP host",
            "SIP/2.0/TLS ;branch=1",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cseq_and_numbers() {
        assert_eq!(
            CSeq::parse(" 42  INVITE ").expect("cseq"),
            CSeq {
                seq: 42,
                method: "INVITE".into()
            }
        );
        assert!(CSeq::parse("INVITE").is_err());
        assert!(CSeq::parse("-1 INVITE").is_err());
        assert!(CSeq::parse("99999999999 INVITE").is_err());
        assert_eq!(parse_max_forwards("70"), Ok(70));
        assert!(parse_max_forwards("256").is_err());
        assert!(parse_max_forwards("x").is_err());
        assert_eq!(parse_expires(" 3600 "), Ok(3600));
        assert_eq!(parse_expires("99999999999"), Ok(u32::MAX));
        assert!(parse_expires("Thu, 01 Dec 1994 16:00:00 GMT").is_err());
    }

    #[test]
    fn subscription_state() {
        let s = SubscriptionState::parse("active;expires=3600").expect("parse");
        assert_eq!(s.kind(), SubState::Active);
        assert_eq!(s.expires(), Some(3600));
        assert_eq!(s.to_string(), "active;expires=3600");
        let t = SubscriptionState::parse("Terminated;reason=rejected;retry-after=60").expect("t");
        assert_eq!(t.kind(), SubState::Terminated);
        assert_eq!(t.reason(), Some("rejected"));
        assert_eq!(t.retry_after(), Some(60));
        assert_eq!(t.expires(), None);
        assert_eq!(
            SubscriptionState::new("pending", Some(30)).to_string(),
            "pending;expires=30"
        );
        assert!(SubscriptionState::parse("").is_err());
    }

    #[test]
    fn event_header() {
        let e = Event::parse("presence;id=abc").expect("parse");
        assert_eq!(e.package, "presence");
        assert_eq!(e.id(), Some("abc"));
        assert!(e.matches(&Event::parse("Presence;id=abc").expect("p")));
        assert!(!e.matches(&Event::new("presence")));
        assert_eq!(e.to_string(), "presence;id=abc");
        assert!(Event::parse("bad event").is_err());
    }

    #[test]
    fn uri_params() {
        let u = "sip:edge.lync.test:5061;transport=tls;opaque=state:T;lr;ms-route-sig=x";
        assert!(uri_has_param(u, "lr"));
        assert!(uri_has_param(u, "LR"));
        assert!(!uri_has_param("sip:p.example.test;transport=tls", "lr"));
        assert!(!uri_has_param("sip:a@b?x=1;lr", "lr"));
    }

    #[test]
    fn generators_have_the_right_shape() {
        let b = new_branch();
        assert!(b.starts_with(BRANCH_COOKIE) && b.len() == 31, "{b}");
        assert_ne!(new_branch(), new_branch());
        assert_eq!(new_tag().len(), 16);
        let c = new_call_id("gw.example.test");
        assert!(c.ends_with("@gw.example.test") && c.len() == 24 + 16, "{c}");
    }
}
