//! fedgate-jid: XMPP addresses (JIDs) in their one canonical form, RFC 7622.
//!
//! Two strings are the same address exactly when their canonical forms are equal, so every
//! comparison in fedgate (policy rules, routing table, SIP mapping, directory) is a plain string
//! comparison of canonical forms. The gateway turns each address into this form once, where a
//! stanza enters; an address that has no canonical form is malformed (`jid-malformed`).
//!
//! | part | rule | canonical form |
//! |---|---|---|
//! | localpart | PRECIS `UsernameCaseMapped` (RFC 8265 §3.3), without `"&'/:<>@` (RFC 7622 §3.3.1), 1–1023 bytes | width-mapped, lower-cased, NFC |
//! | domainpart | IDNA2008 by UTS #46 non-transitional processing with STD3 rules, DNS lengths; or an IP literal | U-labels, lower case, no trailing dot (RFC 7622 §3.2) |
//! | resourcepart | PRECIS `OpaqueString` (RFC 8265 §4.2), 1–1023 bytes | non-ASCII spaces as U+0020, NFC |
//!
//! **Which form goes on the wire.** A domainpart is written in U-labels wherever it is part of
//! an XMPP address: stanza `to`/`from`, stream headers, dialback and SASL identities (RFC 7622
//! §3.2: A-labels are converted to U-labels when a JID is prepared). A-labels
//! ([`domain_to_ascii`]) are used only where the name leaves XMPP: DNS queries, TLS SNI and
//! certificate DNS-ID/SRV-ID checks. For the ASCII domains most deployments have both forms
//! are the same string.
//!
//! Most addresses on a federation link are plain ASCII and already canonical: they are checked
//! byte by byte without allocating ([`canonical`] returns them borrowed); only the others go
//! through the PRECIS and IDNA machinery.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use precis_core::profile::PrecisFastInvocation as _;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// The most bytes of a localpart, domainpart or resourcepart (RFC 7622 §3.1).
pub const MAX_PART: usize = 1023;

/// Which part of an address is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Local,
    Domain,
    Resource,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Local => "localpart",
            Part::Domain => "domainpart",
            Part::Resource => "resourcepart",
        }
    }
}

/// Why a string is not an XMPP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JidError {
    #[error("empty {}", .0.as_str())]
    Empty(Part),
    #[error("{} longer than 1023 bytes", .0.as_str())]
    TooLong(Part),
    #[error("{part} has the forbidden character {c:?}", part = .0.as_str(), c = .1)]
    Forbidden(Part, char),
    /// The PRECIS profile refused it (a disallowed code point, the bidi rule, …).
    #[error("{part} is not allowed by PRECIS {profile}", part = .0.as_str(), profile = .1)]
    Precis(Part, &'static str),
    /// IDNA2008/UTS #46 refused the domain (bad characters, hyphens, label or name length,
    /// bad punycode, bidi or context rules).
    #[error("domainpart is not a valid domain name (IDNA2008)")]
    Idna,
}

impl JidError {
    /// The part that is wrong.
    pub fn part(&self) -> Part {
        match self {
            JidError::Empty(p)
            | JidError::TooLong(p)
            | JidError::Forbidden(p, _)
            | JidError::Precis(p, _) => *p,
            JidError::Idna => Part::Domain,
        }
    }
}

/// An XMPP address in canonical form: `[localpart@]domainpart[/resourcepart]`.
///
/// It can only be made by [`Jid::parse`] (or the constructors that check their parts), so
/// holding one means holding a canonical address; [`fmt::Display`] and [`Jid::as_str`] give the
/// canonical string, and equality is equality of addresses.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    full: String,
    /// Byte offset of the `@`, if there is a localpart.
    at: Option<usize>,
    /// Byte offset of the `/`, if there is a resourcepart.
    slash: Option<usize>,
}

impl Jid {
    /// Parses any form of an address into its canonical form.
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        let (local, domain, resource) = split(s);
        let local = local.map(canonical_localpart).transpose()?;
        let domain = canonical_domain(domain)?;
        let resource = resource.map(canonical_resource).transpose()?;
        Ok(Self::assemble(
            local.as_deref(),
            &domain,
            resource.as_deref(),
        ))
    }

    /// A domain-only address (a server).
    pub fn domain_jid(domain: &str) -> Result<Jid, JidError> {
        Ok(Self::assemble(None, &canonical_domain(domain)?, None))
    }

    /// An address from its parts, each given in any form.
    pub fn from_parts(
        local: Option<&str>,
        domain: &str,
        resource: Option<&str>,
    ) -> Result<Jid, JidError> {
        let local = local.map(canonical_localpart).transpose()?;
        let domain = canonical_domain(domain)?;
        let resource = resource.map(canonical_resource).transpose()?;
        Ok(Self::assemble(
            local.as_deref(),
            &domain,
            resource.as_deref(),
        ))
    }

    fn assemble(local: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
        let mut full = String::with_capacity(
            local.map_or(0, |l| l.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1),
        );
        let mut at = None;
        if let Some(l) = local {
            full.push_str(l);
            at = Some(full.len());
            full.push('@');
        }
        full.push_str(domain);
        let mut slash = None;
        if let Some(r) = resource {
            slash = Some(full.len());
            full.push('/');
            full.push_str(r);
        }
        Jid { full, at, slash }
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn local(&self) -> Option<&str> {
        self.at.map(|a| &self.full[..a])
    }

    pub fn domain(&self) -> &str {
        let start = self.at.map_or(0, |a| a + 1);
        let end = self.slash.unwrap_or(self.full.len());
        &self.full[start..end]
    }

    pub fn resource(&self) -> Option<&str> {
        self.slash.map(|s| &self.full[s + 1..])
    }

    /// `localpart@domainpart` (or the domain alone), without the resource.
    pub fn bare_str(&self) -> &str {
        &self.full[..self.slash.unwrap_or(self.full.len())]
    }

    /// The address without its resource.
    pub fn to_bare(&self) -> Jid {
        Jid {
            full: self.bare_str().to_owned(),
            at: self.at,
            slash: None,
        }
    }

    /// The same address with `resource` (given in any form) as its resourcepart.
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        let r = canonical_resource(resource)?;
        let bare = self.bare_str();
        let mut full = String::with_capacity(bare.len() + 1 + r.len());
        full.push_str(bare);
        let slash = Some(full.len());
        full.push('/');
        full.push_str(&r);
        Ok(Jid {
            full,
            at: self.at,
            slash,
        })
    }

    pub fn is_bare(&self) -> bool {
        self.slash.is_none()
    }

    pub fn into_string(self) -> String {
        self.full
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jid({:?})", self.full)
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jid::parse(s)
    }
}

impl AsRef<str> for Jid {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

/// RFC 7622 §3.1: the resourcepart starts at the first `/`; the localpart ends at the first
/// `@` before it.
fn split(s: &str) -> (Option<&str>, &str, Option<&str>) {
    let (bare, resource) = match s.find('/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    match bare.find('@') {
        Some(i) => (Some(&bare[..i]), &bare[i + 1..], resource),
        None => (None, bare, resource),
    }
}

/// The canonical form of an address; borrowed when `s` already is canonical (the common case
/// on a federation link, checked without allocating).
pub fn canonical(s: &str) -> Result<Cow<'_, str>, JidError> {
    let (local, domain, resource) = split(s);
    let l = local.map(canonical_localpart).transpose()?;
    let d = canonical_domain(domain)?;
    let r = resource.map(canonical_resource).transpose()?;
    let unchanged = matches!(l, None | Some(Cow::Borrowed(_)))
        && matches!(d, Cow::Borrowed(x) if x.len() == domain.len())
        && matches!(r, None | Some(Cow::Borrowed(_)));
    if unchanged {
        return Ok(Cow::Borrowed(s));
    }
    Ok(Cow::Owned(
        Jid::assemble(l.as_deref(), &d, r.as_deref()).into_string(),
    ))
}

/// Whether `s` is an address in canonical form.
pub fn is_canonical(s: &str) -> bool {
    matches!(canonical(s), Ok(Cow::Borrowed(_)))
}

/// The domainpart of an address already in canonical form (for any other string: the text
/// between the first `@` and the first `/`).
pub fn domain_of(jid: &str) -> &str {
    split(jid).1
}

/// The localpart of an address already in canonical form.
pub fn local_of(jid: &str) -> Option<&str> {
    split(jid).0
}

/// The bare form (without resource) of an address already in canonical form.
pub fn bare_of(jid: &str) -> &str {
    jid.find('/').map_or(jid, |i| &jid[..i])
}

const LOCAL_FORBIDDEN: &[u8] = b"\"&'/:<>@";

/// A localpart by PRECIS `UsernameCaseMapped` with RFC 7622's extra exclusions.
pub fn canonical_localpart(s: &str) -> Result<Cow<'_, str>, JidError> {
    const P: Part = Part::Local;
    if s.is_empty() {
        return Err(JidError::Empty(P));
    }
    // ASCII fast path: printable ASCII is valid in IdentifierClass and unchanged by width
    // mapping, NFC and the bidi rule; only case mapping can change it.
    let b = s.as_bytes();
    if b.iter().all(|&c| (0x21..=0x7e).contains(&c)) {
        if let Some(&c) = b.iter().find(|c| LOCAL_FORBIDDEN.contains(c)) {
            return Err(JidError::Forbidden(P, char::from(c)));
        }
        if b.len() > MAX_PART {
            return Err(JidError::TooLong(P));
        }
        return Ok(if b.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        });
    }
    let out =
        UsernameCaseMapped::enforce(s).map_err(|_| JidError::Precis(P, "UsernameCaseMapped"))?;
    if let Some(c) = out
        .chars()
        .find(|c| c.is_ascii() && LOCAL_FORBIDDEN.contains(&(*c as u8)))
    {
        return Err(JidError::Forbidden(P, c));
    }
    if out.len() > MAX_PART {
        return Err(JidError::TooLong(P));
    }
    Ok(if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out.into_owned())
    })
}

/// A resourcepart by PRECIS `OpaqueString`.
pub fn canonical_resource(s: &str) -> Result<Cow<'_, str>, JidError> {
    const P: Part = Part::Resource;
    if s.is_empty() {
        return Err(JidError::Empty(P));
    }
    let b = s.as_bytes();
    if b.iter().all(|&c| (0x20..=0x7e).contains(&c)) {
        if b.len() > MAX_PART {
            return Err(JidError::TooLong(P));
        }
        return Ok(Cow::Borrowed(s));
    }
    let out = OpaqueString::enforce(s).map_err(|_| JidError::Precis(P, "OpaqueString"))?;
    if out.len() > MAX_PART {
        return Err(JidError::TooLong(P));
    }
    Ok(if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out.into_owned())
    })
}

/// Whether `d` is a lower-case LDH name that IDNA leaves as it is: labels of 1–63 letters,
/// digits and inner hyphens, none an A-label (`xn--…`, which is written as its U-label), at most
/// 253 bytes.
fn plain_ldh(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    for label in d.split(|&c| c == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
            || label.len() >= 4 && label[2] == b'-' && label[3] == b'-'
            || !label
                .iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return false;
        }
    }
    true
}

/// A domainpart in canonical form: U-labels, lower case, no trailing dot; IP literals as such.
pub fn canonical_domain(s: &str) -> Result<Cow<'_, str>, JidError> {
    const P: Part = Part::Domain;
    let d = s.strip_suffix('.').unwrap_or(s);
    if d.is_empty() {
        return Err(JidError::Empty(P));
    }
    if d.len() > MAX_PART {
        return Err(JidError::TooLong(P));
    }
    if plain_ldh(d.as_bytes()) {
        return Ok(Cow::Borrowed(d));
    }
    if let Some(v6) = d.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let ip: Ipv6Addr = v6.parse().map_err(|_| JidError::Idna)?;
        let out = format!("[{ip}]");
        return Ok(if out == d {
            Cow::Borrowed(d)
        } else {
            Cow::Owned(out)
        });
    }
    if d.parse::<Ipv4Addr>().is_ok() {
        return Ok(Cow::Borrowed(d));
    }
    let uts46 = Uts46::new();
    // To A-labels first: this applies the UTS #46 mapping (case, width, ideographic full
    // stops, …) and checks every rule and the DNS lengths; then back to U-labels.
    let ascii = uts46
        .to_ascii(
            d.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map_err(|_| JidError::Idna)?;
    let (unicode, ok) = uts46.to_unicode(
        ascii.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::CheckFirstLast,
    );
    ok.map_err(|_| JidError::Idna)?;
    if unicode.len() > MAX_PART {
        return Err(JidError::TooLong(P));
    }
    Ok(if unicode == d {
        Cow::Borrowed(d)
    } else {
        Cow::Owned(unicode.into_owned())
    })
}

/// The A-label (ASCII) form of a domain, for DNS queries, TLS SNI and certificate name checks.
/// Accepts any form [`canonical_domain`] accepts; borrowed when already ASCII and canonical.
pub fn domain_to_ascii(s: &str) -> Result<Cow<'_, str>, JidError> {
    let d = s.strip_suffix('.').unwrap_or(s);
    if plain_ldh(d.as_bytes()) {
        return Ok(Cow::Borrowed(d));
    }
    if d.starts_with('[') || d.parse::<Ipv4Addr>().is_ok() {
        return canonical_domain(d);
    }
    Uts46::new()
        .to_ascii(
            d.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map(|a| {
            if a == d {
                Cow::Borrowed(d)
            } else {
                Cow::Owned(a.into_owned())
            }
        })
        .map_err(|_| JidError::Idna)
}

#[cfg(test)]
mod tests;
