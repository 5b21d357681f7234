//! SIP URIs, JIDs and the RFC 7247 §6 address mapping between them.
//!
//! * [`SipUri`]: parse and serialize `sip:`/`sips:`/`im:`/`pres:` URIs, keeping the user part
//!   exactly as on the wire and every parameter and header (also unknown ones) in order.
//! * [`Jid`]: a small JID type (local, domain, resource).
//! * [`sip_to_jid`] (RFC 7247 §6.4): the user part is percent-decoded as UTF-8, then what an
//!   XMPP localpart forbids is escaped with XEP-0106 (`\20 \22 \26 \27 \2f \3a \3c \3e \40 \5c`);
//!   the domain is lower-cased; `;gr=X` becomes the resource `X`. A `sips:` URI is refused with
//!   [`AddressError::Sips`]: RFC 7247 §8 forbids translating it, the caller answers the request
//!   with an error.
//! * [`jid_to_sip`] (RFC 7247 §6.5): XEP-0106 is undone, then every character that RFC 3261 does
//!   not allow unescaped in a `user` (`unreserved` / `user-unreserved`) and every non-ASCII byte
//!   is percent-encoded (upper-case hex); the resource becomes `;gr=`.
//!
//! The local part is not case-folded in either direction (SIP user parts are case-sensitive and
//! a round trip must give the same address); full PRECIS enforcement is left to the XMPP server.
//! Characters that no XEP-0106 escape can carry (control characters, non-ASCII white space)
//! make [`sip_to_jid`] fail with [`AddressError::Unrepresentable`].
//!
//! **Microsoft endpoints** do not use `gr=`: an instance is named by `epid=` on the From/To
//! header and by `;opaque=user:epid:<value>;gruu` in the Contact URI. Its JID form is the
//! resource `epid:<value>` (resourceprep / the RFC 7622 OpaqueString profile allows `:`). To keep
//! the mapping reversible, a `gr=` value that itself starts with `epid:` or `gr:` is carried as
//! resource `gr:<value>`; [`jid_to_sip`] undoes exactly one `gr:` prefix. Helpers:
//! [`epid_resource`], [`resource_epid`], [`resource_to_gr`].

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Longest localpart, domainpart or resourcepart in bytes (RFC 7622 §3).
pub const MAX_JID_PART: usize = 1023;

/// Resource prefix for a Microsoft endpoint id.
pub const EPID_PREFIX: &str = "epid:";
/// Resource prefix that protects a `gr=` value which would look like another form.
pub const GR_PREFIX: &str = "gr:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("unsupported URI scheme in {0:?} (want sip, sips, im or pres)")]
    Scheme(String),
    #[error("malformed SIP URI {uri:?}: {why}")]
    Malformed { uri: String, why: String },
    #[error("a sips: URI must not be translated to XMPP (RFC 7247 §8)")]
    Sips,
    #[error("bad percent-escape in {0:?}")]
    BadEscape(String),
    #[error("user part {0:?} is not UTF-8 once percent-decoded")]
    NotUtf8(String),
    #[error("user part {0:?} holds characters no XMPP localpart can carry")]
    Unrepresentable(String),
    #[error("{0} longer than 1023 bytes")]
    TooLong(&'static str),
    #[error("empty user part")]
    EmptyUser,
    #[error("malformed JID {jid:?}: {why}")]
    Jid { jid: String, why: String },
}

/// URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Sip,
    Sips,
    Im,
    Pres,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sip => "sip",
            Self::Sips => "sips",
            Self::Im => "im",
            Self::Pres => "pres",
        }
    }
}

/// A SIP (or `im:`/`pres:`) URI. `user` and `password` are as on the wire (still
/// percent-encoded); parameter names and values, and headers, are kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host name or IPv4 address, or an IPv6 reference with its brackets.
    pub host: String,
    pub port: Option<u16>,
    /// `;name` or `;name=value`, in order.
    pub params: Vec<(String, Option<String>)>,
    /// `?name=value&…`, in order.
    pub headers: Vec<(String, String)>,
}

impl SipUri {
    /// `sip:user@host` with an already-encoded user part.
    pub fn new(scheme: Scheme, user: Option<&str>, host: &str) -> Self {
        Self {
            scheme,
            user: user.map(str::to_owned),
            password: None,
            host: host.to_owned(),
            port: None,
            params: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let bad = |why: &str| AddressError::Malformed {
            uri: s.to_owned(),
            why: why.to_owned(),
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| AddressError::Scheme(s.to_owned()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "im" => Scheme::Im,
            "pres" => Scheme::Pres,
            _ => return Err(AddressError::Scheme(s.to_owned())),
        };
        let (userinfo, rest) = match rest.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pw) = match u.split_once(':') {
                    Some((a, b)) => (a, Some(b)),
                    None => (u, None),
                };
                if user.is_empty() {
                    return Err(bad("empty user part before '@'"));
                }
                check_chars(user, is_user_char).map_err(|c| bad(&format!("{c:?} in user part")))?;
                if let Some(pw) = pw {
                    check_chars(pw, is_password_char)
                        .map_err(|c| bad(&format!("{c:?} in password")))?;
                }
                (Some(user.to_owned()), pw.map(str::to_owned))
            }
        };
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => (r, Some(h)),
            None => (rest, None),
        };
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or_default();
        let (host, port) = split_hostport(hostport).ok_or_else(|| bad("bad host or port"))?;
        let mut params = Vec::new();
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            };
            if name.is_empty() {
                return Err(bad("empty parameter name"));
            }
            check_chars(name, is_param_char).map_err(|c| bad(&format!("{c:?} in parameter")))?;
            if let Some(v) = value {
                check_chars(v, is_param_char)
                    .map_err(|c| bad(&format!("{c:?} in parameter value")))?;
            }
            params.push((name.to_owned(), value.map(str::to_owned)));
        }
        let mut hdrs = Vec::new();
        if let Some(h) = headers {
            for pair in h.split('&') {
                let (n, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad("header without '='"))?;
                if n.is_empty() {
                    return Err(bad("empty header name"));
                }
                check_chars(n, is_header_char).map_err(|c| bad(&format!("{c:?} in header")))?;
                check_chars(v, is_header_char).map_err(|c| bad(&format!("{c:?} in header")))?;
                hdrs.push((n.to_owned(), v.to_owned()));
            }
        }
        Ok(Self {
            scheme,
            user,
            password,
            host: host.to_owned(),
            port,
            params,
            headers: hdrs,
        })
    }

    /// The value of parameter `name` (case-insensitive name): `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// Set (or add) a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(str::to_owned);
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(p) => p.1 = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }

    pub fn remove_param(&mut self, name: &str) {
        self.params.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The address-of-record form: scheme, user, host and port only.
    pub fn aor(&self) -> Self {
        Self {
            scheme: self.scheme,
            user: self.user.clone(),
            password: None,
            host: self.host.clone(),
            port: self.port,
            params: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The percent-decoded user part as UTF-8.
    pub fn user_decoded(&self) -> Result<Option<String>, AddressError> {
        self.user
            .as_deref()
            .map(|u| {
                let bytes = percent_decode(u)?;
                String::from_utf8(bytes).map_err(|_| AddressError::NotUtf8(u.to_owned()))
            })
            .transpose()
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme.as_str())?;
        f.write_str(":")?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        for (i, (n, v)) in self.headers.iter().enumerate() {
            write!(f, "{}{n}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl FromStr for SipUri {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn split_hostport(hp: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if hp.starts_with('[') {
        let end = hp.find(']')?;
        let host = &hp[..=end];
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ":.".contains(c))
        {
            return None;
        }
        match &hp[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match hp.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// RFC 3261 `unreserved` (alphanum / mark).
fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

/// Characters allowed unescaped in a `user` (`unreserved` / `user-unreserved`).
fn is_user_char(c: char) -> bool {
    is_unreserved(c) || "&=+$,;?/".contains(c)
}

fn is_password_char(c: char) -> bool {
    is_unreserved(c) || "&=+$,".contains(c)
}

/// `paramchar` = `param-unreserved` / `unreserved` / escaped.
fn is_param_char(c: char) -> bool {
    is_unreserved(c) || "[]/:&+$".contains(c)
}

fn is_header_char(c: char) -> bool {
    is_unreserved(c) || "[]/?:+$".contains(c)
}

/// Check that `s` uses only `allowed` characters and well-formed `%hh` escapes; the first
/// offending character otherwise.
fn check_chars(s: &str, allowed: fn(char) -> bool) -> Result<(), char> {
    let b = s.as_bytes();
    let mut i = 0;
    for (idx, c) in s.char_indices() {
        if idx < i {
            continue;
        }
        if c == '%' {
            if b.len() < idx + 3
                || !b[idx + 1].is_ascii_hexdigit()
                || !b[idx + 2].is_ascii_hexdigit()
            {
                return Err('%');
            }
            i = idx + 3;
        } else if !allowed(c) {
            return Err(c);
        }
    }
    Ok(())
}

/// Decode `%hh` escapes into bytes.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, AddressError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|x| x.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| AddressError::BadEscape(s.to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encode every byte of `s` for which `keep` is false (and every non-ASCII byte).
fn percent_encode(s: &str, keep: fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && keep(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Percent-encode a decoded user part for a SIP URI (RFC 3261 `user`, RFC 7247 §6.5).
pub fn encode_sip_user(decoded: &str) -> String {
    percent_encode(decoded, is_user_char)
}

/// Percent-encode a decoded parameter value (RFC 3261 `paramchar`).
pub fn encode_param_value(decoded: &str) -> String {
    percent_encode(decoded, is_param_char)
}

// ---------------------------------------------------------------------------------------------
// XEP-0106

/// The ten characters XEP-0106 escapes, with their escape codes.
const XEP0106: &[(char, &str)] = &[
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

/// Whether `s` starts with the two hex digits of one of the XEP-0106 escapes.
fn starts_with_escape_code(s: &str) -> Option<char> {
    let code = s.get(..2)?;
    XEP0106
        .iter()
        .find(|(_, c)| c.eq_ignore_ascii_case(code))
        .map(|(ch, _)| *ch)
}

/// XEP-0106 escaping of a localpart. A backslash is escaped only where it would otherwise be
/// read as the start of an escape sequence (XEP-0106 §4.2), so `a\b` stays `a\b`.
pub fn xep0106_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        match XEP0106.iter().find(|(ch, _)| *ch == c) {
            Some((_, code)) if c != '\\' || starts_with_escape_code(&s[i + 1..]).is_some() => {
                out.push('\\');
                out.push_str(code);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Undo XEP-0106 escaping: each `\hh` that names one of the ten escaped characters becomes that
/// character; any other backslash stays.
pub fn xep0106_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if let Some(after) = rest.strip_prefix('\\')
            && let Some(ch) = starts_with_escape_code(after)
        {
            out.push(ch);
            i += 3;
            continue;
        }
        let c = rest.chars().next().unwrap_or('\0');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// JID

/// A JID by its parts, in the RFC 7622 canonical form of [`fedgate_jid`] (localpart in
/// XEP-0106-escaped form, PRECIS-mapped; domain in lower-case U-labels; resource by PRECIS
/// OpaqueString). Made only through [`Jid::parse`] and [`sip_to_jid`], which both canonicalize,
/// so two equal addresses compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    pub local: Option<String>,
    pub domain: String,
    pub resource: Option<String>,
}

impl Jid {
    /// Parse `[local@]domain[/resource]` into canonical parts (see [`fedgate_jid::Jid::parse`]).
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let j = fedgate_jid::Jid::parse(s).map_err(|e| AddressError::Jid {
            jid: s.to_owned(),
            why: e.to_string(),
        })?;
        Ok(Self {
            local: j.local().map(str::to_owned),
            domain: j.domain().to_owned(),
            resource: j.resource().map(str::to_owned),
        })
    }

    /// The JID without its resource.
    pub fn bare(&self) -> Self {
        Self {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }

    pub fn is_full(&self) -> bool {
        self.resource.is_some()
    }

    /// This JID with another resource.
    #[must_use]
    pub fn with_resource(&self, resource: Option<&str>) -> Self {
        Self {
            resource: resource.map(str::to_owned),
            ..self.clone()
        }
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

impl FromStr for Jid {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Mapping

/// The resource naming a Microsoft endpoint (`epid` from From/To or the Contact's opaque GRUU).
pub fn epid_resource(epid: &str) -> String {
    format!("{EPID_PREFIX}{epid}")
}

/// The Microsoft endpoint id a resource names, if it is in the [`epid_resource`] form.
pub fn resource_epid(resource: &str) -> Option<&str> {
    resource.strip_prefix(EPID_PREFIX).filter(|e| !e.is_empty())
}

/// The resource for a decoded `gr=` value (protecting values that look like our other forms).
pub fn gr_resource(gr: &str) -> String {
    if gr.starts_with(EPID_PREFIX) || gr.starts_with(GR_PREFIX) {
        format!("{GR_PREFIX}{gr}")
    } else {
        gr.to_owned()
    }
}

/// The decoded `gr=` value for a resource that is not in the epid form.
pub fn resource_to_gr(resource: &str) -> &str {
    resource.strip_prefix(GR_PREFIX).unwrap_or(resource)
}

/// The epid of a Microsoft Contact URI (`;opaque=user:epid:<value>;gruu`).
pub fn contact_epid(uri: &SipUri) -> Option<String> {
    uri.param("gruu")?;
    let opaque = uri.param("opaque")??;
    let decoded = String::from_utf8(percent_decode(opaque).ok()?).ok()?;
    decoded
        .strip_prefix("user:epid:")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
}

/// Map a SIP URI to a JID (RFC 7247 §6.4, see the module documentation).
pub fn sip_to_jid(uri: &SipUri) -> Result<Jid, AddressError> {
    if uri.scheme == Scheme::Sips {
        return Err(AddressError::Sips);
    }
    let local = match uri.user_decoded()? {
        None => None,
        Some(u) if u.is_empty() => return Err(AddressError::EmptyUser),
        Some(u) => {
            if u.chars()
                .any(|c| c.is_control() || c.is_whitespace() && c != ' ')
            {
                return Err(AddressError::Unrepresentable(u));
            }
            let l = xep0106_escape(&u);
            if l.len() > MAX_JID_PART {
                return Err(AddressError::TooLong("localpart"));
            }
            // The canonical localpart (PRECIS UsernameCaseMapped): what every other link
            // and the policy compare.
            match fedgate_jid::canonical_localpart(&l) {
                Ok(c) => Some(c.into_owned()),
                Err(fedgate_jid::JidError::TooLong(_)) => {
                    return Err(AddressError::TooLong("localpart"));
                }
                Err(_) => return Err(AddressError::Unrepresentable(u)),
            }
        }
    };
    // SIP hosts are A-labels; the JID carries the canonical U-label form.
    let domain = fedgate_jid::canonical_domain(&uri.host)
        .map_err(|e| AddressError::Jid {
            jid: uri.host.clone(),
            why: e.to_string(),
        })?
        .into_owned();
    let resource = if let Some(epid) = contact_epid(uri) {
        Some(epid_resource(&epid))
    } else {
        match uri.param("gr") {
            Some(Some(v)) if !v.is_empty() => {
                let v = String::from_utf8(percent_decode(v)?)
                    .map_err(|_| AddressError::NotUtf8(v.to_owned()))?;
                if v.chars().any(char::is_control) {
                    return Err(AddressError::Unrepresentable(v));
                }
                Some(gr_resource(&v))
            }
            _ => None,
        }
    };
    let resource = match resource {
        None => None,
        Some(r) => match fedgate_jid::canonical_resource(&r) {
            Ok(c) => Some(c.into_owned()),
            Err(fedgate_jid::JidError::TooLong(_)) => {
                return Err(AddressError::TooLong("resource"));
            }
            Err(_) => return Err(AddressError::Unrepresentable(r)),
        },
    };
    Ok(Jid {
        local,
        domain,
        resource,
    })
}

/// Map a JID to a `sip:` URI (RFC 7247 §6.5, see the module documentation).
pub fn jid_to_sip(jid: &Jid) -> SipUri {
    let user = jid
        .local
        .as_deref()
        .map(|l| encode_sip_user(&xep0106_unescape(l)));
    // A SIP host is an ASCII name (RFC 3261): the A-label form of the domain.
    let host = fedgate_jid::domain_to_ascii(&jid.domain).unwrap_or(Cow::Borrowed(&jid.domain));
    let mut uri = SipUri::new(Scheme::Sip, user.as_deref(), &host);
    if let Some(r) = &jid.resource {
        match resource_epid(r) {
            Some(epid) => {
                uri.set_param(
                    "opaque",
                    Some(&format!("user:epid:{}", encode_param_value(epid))),
                );
                uri.set_param("gruu", None);
            }
            None => uri.set_param("gr", Some(&encode_param_value(resource_to_gr(r)))),
        }
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn uri(s: &str) -> SipUri {
        SipUri::parse(s).unwrap()
    }

    #[test]
    fn parses_and_serializes_uris() {
        for s in [
            "sip:alice@example.test",
            "sips:alice@example.test:5061",
            "sip:example.test",
            "sip:o'malley@Example.TEST;transport=tls;lr",
            "sip:alice:secret@[2001:db8::1]:5061;maddr=x.test?subject=hi&priority=urgent",
            "sip:bob@lync.test;opaque=user:epid:3ObsPqyLUViXkg2vN0H5lAAA;gruu",
            "im:f%C3%BC@example.test",
            "pres:juliet@example.test",
            "sip:+15551234567;ext=12@example.test;user=phone",
        ] {
            assert_eq!(uri(s).to_string(), s, "round trip");
        }
        let u = uri("sip:alice:pw@[::1]:5061;Transport=TLS;lr;x-unknown=1?h=v");
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.host, "[::1]");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param("transport"), Some(Some("TLS")));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.param("x-unknown"), Some(Some("1")));
        assert_eq!(u.headers, vec![("h".to_owned(), "v".to_owned())]);
        assert_eq!(
            u.aor().to_string(),
            "sip:alice:pw@[::1]:5061".replace("alice:pw", "alice")
        );
    }

    #[test]
    fn refuses_malformed_uris() {
        for s in [
            "http://x.test",
            "alice@example.test",
            "sip:@example.test",
            "sip:al ice@example.test",
            "sip:al%2@example.test",
            "sip:alice@",
            "sip:alice@ex ample.test",
            "sip:alice@example.test:99999",
            "sip:alice@example.test:",
            "sip:alice@[zz::1]",
            "sip:alice@example.test;=x",
            "sip:alice@example.test?novalue",
            "sip:alice@example.test;a=<b>",
        ] {
            assert!(SipUri::parse(s).is_err(), "{s} must be refused");
        }
        assert!(matches!(
            SipUri::parse("tel:+1555"),
            Err(AddressError::Scheme(_))
        ));
    }

    #[test]
    fn rfc7247_examples() {
        let j = sip_to_jid(&uri("sip:o'malley@example.com")).unwrap();
        assert_eq!(j.to_string(), r"o\27malley@example.com");
        assert_eq!(jid_to_sip(&j).to_string(), "sip:o'malley@example.com");

        let j = sip_to_jid(&uri("sip:f%C3%BC@example.com")).unwrap();
        assert_eq!(j.to_string(), "fü@example.com");
        assert_eq!(jid_to_sip(&j).to_string(), "sip:f%C3%BC@example.com");

        let j = sip_to_jid(&uri("sip:foo@example.com;gr=bar")).unwrap();
        assert_eq!(j.to_string(), "foo@example.com/bar");
        assert_eq!(jid_to_sip(&j).to_string(), "sip:foo@example.com;gr=bar");
    }

    #[test]
    fn sip_to_jid_escapes_and_lowercases() {
        let j = sip_to_jid(&uri("sip:a%20b%22c&d/e%3Af%3Cg%3Eh%40i@EXAMPLE.Test.")).unwrap();
        assert_eq!(
            j.local.as_deref(),
            Some(r"a\20b\22c\26d\2fe\3af\3cg\3eh\40i")
        );
        assert_eq!(j.domain, "example.test");
        assert_eq!(j.resource, None);
        // A backslash is escaped only before an escape code.
        let j = sip_to_jid(&uri("sip:a%5Cb%5C20@x.test")).unwrap();
        assert_eq!(j.local.as_deref(), Some(r"a\b\5c20"));
        // Non-canonical escapes are decoded.
        let j = sip_to_jid(&uri("sip:%61lice@x.test")).unwrap();
        assert_eq!(j.local.as_deref(), Some("alice"));
        // The localpart is canonical (RFC 7622, PRECIS UsernameCaseMapped): lower case, fullwidth
        // letters mapped; the host's A-labels become U-labels, and go back as A-labels.
        let j = sip_to_jid(&uri("sip:Alice@x.test")).unwrap();
        assert_eq!(j.local.as_deref(), Some("alice"));
        let j = sip_to_jid(&uri("sip:%EF%BC%A1lice@XN--BCHER-KVA.example")).unwrap();
        assert_eq!(j.to_string(), "alice@bücher.example");
        assert_eq!(
            jid_to_sip(&j).to_string(),
            "sip:alice@xn--bcher-kva.example"
        );
        assert!(matches!(
            sip_to_jid(&uri("sip:%E2%98%83@x.test")),
            Err(AddressError::Unrepresentable(_))
        ));
    }

    #[test]
    fn sip_to_jid_refusals() {
        assert_eq!(
            sip_to_jid(&uri("sips:alice@example.test")),
            Err(AddressError::Sips)
        );
        assert!(matches!(
            sip_to_jid(&uri("sip:%FF%FE@x.test")),
            Err(AddressError::NotUtf8(_))
        ));
        assert!(matches!(
            sip_to_jid(&uri("sip:a%0Ab@x.test")),
            Err(AddressError::Unrepresentable(_))
        ));
        assert!(matches!(
            sip_to_jid(&uri("sip:a%C2%A0b@x.test")),
            Err(AddressError::Unrepresentable(_))
        ));
        let long = format!("sip:{}@x.test", "a".repeat(1024));
        assert_eq!(
            sip_to_jid(&uri(&long)),
            Err(AddressError::TooLong("localpart"))
        );
    }

    #[test]
    fn microsoft_epid_forms() {
        let c = uri("sip:bob@lync.test;opaque=user:epid:3ObsPqyLUViXkg2vN0H5lAAA;gruu");
        assert_eq!(
            contact_epid(&c).as_deref(),
            Some("3ObsPqyLUViXkg2vN0H5lAAA")
        );
        let j = sip_to_jid(&c).unwrap();
        assert_eq!(j.to_string(), "bob@lync.test/epid:3ObsPqyLUViXkg2vN0H5lAAA");
        assert_eq!(
            jid_to_sip(&j).to_string(),
            "sip:bob@lync.test;opaque=user:epid:3ObsPqyLUViXkg2vN0H5lAAA;gruu"
        );
        // From/To carry `epid=` as a header parameter: the helpers make and read the resource.
        let r = epid_resource("a1b2c3d4e5");
        assert_eq!(r, "epid:a1b2c3d4e5");
        assert_eq!(resource_epid(&r), Some("a1b2c3d4e5"));
        assert_eq!(resource_epid("laptop"), None);
        assert_eq!(resource_epid("epid:"), None);
        // An opaque without gruu is not an endpoint GRUU.
        assert_eq!(
            contact_epid(&uri("sip:bob@lync.test;opaque=user:epid:x")),
            None
        );
        assert!(Jid::parse(&j.to_string()).is_ok());
    }

    #[test]
    fn gr_values_that_look_like_our_forms_stay_reversible() {
        for gr in [
            "epid:abc",
            "gr:x",
            "gr:gr:y",
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        ] {
            let s = format!("sip:a@x.test;gr={}", encode_param_value(gr));
            let j = sip_to_jid(&uri(&s)).unwrap();
            assert_eq!(jid_to_sip(&j).to_string(), s, "{gr}");
        }
        let j = sip_to_jid(&uri("sip:a@x.test;gr=epid:abc")).unwrap();
        assert_eq!(j.resource.as_deref(), Some("gr:epid:abc"));
    }

    #[test]
    fn jid_to_sip_encodes() {
        let j = Jid::parse(r"a\20b#c%d[e]f^g`h{i|j}k\5c3al@Example.test/My Phone").unwrap();
        let u = jid_to_sip(&j);
        assert_eq!(
            u.to_string(),
            "sip:a%20b%23c%25d%5Be%5Df%5Eg%60h%7Bi%7Cj%7Dk%5C3al@example.test;gr=My%20Phone"
        );
        assert_eq!(sip_to_jid(&u).unwrap(), j);
        // A needless `\5c` (not before an escape code) comes back in its canonical form.
        let j = Jid::parse(r"k\5cl@x.test").unwrap();
        assert_eq!(jid_to_sip(&j).to_string(), "sip:k%5Cl@x.test");
        assert_eq!(
            sip_to_jid(&jid_to_sip(&j)).unwrap().local.as_deref(),
            Some(r"k\l")
        );
        let d = jid_to_sip(&Jid::parse("example.test").unwrap());
        assert_eq!(d.to_string(), "sip:example.test");
    }

    #[test]
    fn jid_parse() {
        let j = Jid::parse("Alice@Example.TEST/res/with/slash").unwrap();
        assert_eq!(j.local.as_deref(), Some("alice"));
        assert_eq!(j.domain, "example.test");
        assert_eq!(j.resource.as_deref(), Some("res/with/slash"));
        assert_eq!(j.bare().to_string(), "alice@example.test");
        assert!(j.is_full() && !j.bare().is_full());
        assert_eq!(j.to_string(), "alice@example.test/res/with/slash");
        for bad in [
            "@x.test",
            "a@",
            "a@x.test/",
            "a b@x.test",
            "a'b@x.test",
            "",
            "a@b@c",
        ] {
            assert!(Jid::parse(bad).is_err(), "{bad}");
        }
    }

    /// Characters the property tests draw from: ASCII specials, space, quotes, backslash
    /// sequences and non-ASCII letters.
    const PIECES: &[&str] = &[
        "a", "Z", "0", "9", " ", "\"", "'", "&", "/", ":", "<", ">", "@", "\\", "\\20", "\\5c",
        "\\zz", "%", "#", "[", "]", "^", "`", "{", "|", "}", "!", "$", "(", ")", "*", "+", ",",
        ";", "=", "?", "~", "-", "_", ".", "ü", "é", "ß", "中", "文", "Ω", "ж", "\\4", "%41",
    ];

    fn random_local(rng: &mut StdRng) -> String {
        let n = rng.random_range(1..12);
        (0..n)
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect()
    }

    #[test]
    fn property_jid_sip_jid_round_trip() {
        let mut rng = StdRng::seed_from_u64(7247);
        for _ in 0..5000 {
            let raw = random_local(&mut rng);
            let local = xep0106_escape(&raw);
            let res = match rng.random_range(0..4) {
                0 => None,
                1 => Some(epid_resource("0123abcdEF")),
                _ => Some(random_local(&mut rng)),
            };
            // A JID as the gateway holds it: canonical (RFC 7622).
            let jid = Jid {
                local: Some(
                    fedgate_jid::canonical_localpart(&local)
                        .unwrap()
                        .into_owned(),
                ),
                domain: "example.test".into(),
                resource: res.map(|r| fedgate_jid::canonical_resource(&r).unwrap().into_owned()),
            };
            let s = jid_to_sip(&jid).to_string();
            let back = sip_to_jid(&SipUri::parse(&s).unwrap()).unwrap();
            assert_eq!(back, jid, "raw {raw:?} via {s}");
            // The JID text is a valid JID and parses to the same value.
            assert_eq!(Jid::parse(&jid.to_string()).unwrap(), jid, "{jid}");
        }
    }

    #[test]
    fn property_sip_jid_sip_round_trip_is_canonical() {
        let mut rng = StdRng::seed_from_u64(8048);
        for _ in 0..5000 {
            let raw = random_local(&mut rng);
            let user = encode_sip_user(&raw);
            let gr = (rng.random_range(0..2) == 0).then(|| random_local(&mut rng));
            let mut s = format!("sip:{user}@example.test");
            if let Some(g) = &gr {
                s.push_str(";gr=");
                s.push_str(&encode_param_value(g));
            }
            let u = SipUri::parse(&s).unwrap();
            let jid = sip_to_jid(&u).unwrap();
            // Back to the same URI, but for the user's case: JID localparts are case-mapped.
            let mut lower = format!("sip:{}@example.test", encode_sip_user(&raw.to_lowercase()));
            if let Some(g) = &gr {
                lower.push_str(";gr=");
                lower.push_str(&encode_param_value(g));
            }
            assert_eq!(jid_to_sip(&jid).to_string(), lower, "raw {raw:?}");
            // A non-canonical spelling (every byte escaped, lower-case hex) gives the same JID.
            let all: String = raw.bytes().map(|b| format!("%{b:02x}")).collect();
            let u2 = SipUri::parse(&format!("sip:{all}@example.test")).unwrap();
            assert_eq!(sip_to_jid(&u2).unwrap().local, jid.local);
        }
    }
}
