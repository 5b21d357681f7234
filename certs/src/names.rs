//! Name checks of XMPP server certificates (RFC 9525, which obsoletes RFC 6125; RFC 6120
//! §13.7; XEP-0178), without any chain validation.
//!
//! Identifiers looked at, all in the subjectAltName extension:
//! - DNS-ID (`dNSName`), including wildcards in the RFC 9525 form: the whole leftmost label is
//!   `*`, it stands for exactly one label, and at least two labels follow it (`*.test` never
//!   matches);
//! - SRV-ID `_xmpp-server.<domain>` (`otherName` 1.3.6.1.5.5.7.8.7, IA5String, RFC 4985);
//! - XmppAddr (`otherName` 1.3.6.1.5.5.7.8.5, UTF8String, RFC 6120 §13.7.1.4), kept for
//!   backward compatibility.
//!
//! Following RFC 9525, the subject common name (CN-ID) is **not used at all**, whether or not
//! the certificate has a subjectAltName. Comparisons are case-insensitive and tolerate a
//! trailing dot. Domains are expected as A-labels (IDNA conversion is the caller's job), except
//! for XmppAddr values, which are compared with Unicode lowercase.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::failure::{CertFailure, CertFailureKind};

/// OID of the SRV-ID otherName (id-on-dnsSRV, RFC 4985).
pub(crate) const OID_SRV_NAME: &str = "1.3.6.1.5.5.7.8.7";
/// OID of the XmppAddr otherName (id-on-xmppAddr, RFC 6120).
pub(crate) const OID_XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
/// The SRV service label of server-to-server XMPP.
const SRV_SERVICE: &str = "_xmpp-server.";

/// Which identifier of the certificate matched the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameMatch {
    /// An exact DNS-ID.
    DnsId,
    /// A wildcard DNS-ID (`*.example.com`).
    WildcardDnsId,
    /// An SRV-ID `_xmpp-server.<domain>`.
    SrvId,
    /// An XmppAddr holding the bare domain.
    XmppAddr,
}

impl NameMatch {
    /// Short stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NameMatch::DnsId => "dns-id",
            NameMatch::WildcardDnsId => "wildcard-dns-id",
            NameMatch::SrvId => "srv-id",
            NameMatch::XmppAddr => "xmppaddr",
        }
    }
}

/// One subjectAltName entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SanEntry {
    Dns(String),
    Srv(String),
    XmppAddr(String),
    /// Anything else, already formatted for display (`IP:…`, `URI:…`, `otherName:<oid>`, …).
    Other(String),
}

impl SanEntry {
    pub(crate) fn display(&self) -> String {
        match self {
            SanEntry::Dns(n) => format!("DNS:{n}"),
            SanEntry::Srv(n) => format!("SRV:{n}"),
            SanEntry::XmppAddr(n) => format!("XmppAddr:{n}"),
            SanEntry::Other(s) => s.clone(),
        }
    }
}

pub(crate) fn parse_cert<'a>(
    cert: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, CertFailure> {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => Ok(parsed),
        Err(e) => Err(CertFailure::new(
            CertFailureKind::Malformed,
            format!("cannot parse certificate: {e}"),
        )),
    }
}

/// All subjectAltName entries of a parsed certificate.
pub(crate) fn san_entries(cert: &X509Certificate<'_>) -> Result<Vec<SanEntry>, CertFailure> {
    let san = cert.subject_alternative_name().map_err(|e| {
        CertFailure::new(
            CertFailureKind::Malformed,
            format!("bad subjectAltName extension: {e}"),
        )
    })?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(san.value.general_names.len());
    for name in &san.value.general_names {
        out.push(match name {
            GeneralName::DNSName(n) => SanEntry::Dns((*n).to_owned()),
            GeneralName::OtherName(oid, value) => {
                let oid = oid.to_id_string();
                match oid.as_str() {
                    OID_SRV_NAME => match decode_other_name_string(value, TAG_IA5_STRING) {
                        Some(s) => SanEntry::Srv(s),
                        None => SanEntry::Other(format!("otherName:{oid}:<undecodable>")),
                    },
                    OID_XMPP_ADDR => match decode_other_name_string(value, TAG_UTF8_STRING) {
                        Some(s) => SanEntry::XmppAddr(s),
                        None => SanEntry::Other(format!("otherName:{oid}:<undecodable>")),
                    },
                    _ => SanEntry::Other(format!("otherName:{oid}")),
                }
            }
            GeneralName::RFC822Name(n) => SanEntry::Other(format!("email:{n}")),
            GeneralName::URI(n) => SanEntry::Other(format!("URI:{n}")),
            GeneralName::IPAddress(b) => SanEntry::Other(format!("IP:{}", format_ip(b))),
            GeneralName::DirectoryName(n) => SanEntry::Other(format!("DirName:{n}")),
            GeneralName::RegisteredID(oid) => SanEntry::Other(format!("RID:{oid}")),
            GeneralName::X400Address(_) => SanEntry::Other("X400Address".to_owned()),
            GeneralName::EDIPartyName(_) => SanEntry::Other("EDIPartyName".to_owned()),
        });
    }
    Ok(out)
}

fn format_ip(b: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        std::net::Ipv4Addr::from(v4).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        std::net::Ipv6Addr::from(v6).to_string()
    } else {
        "<bad length>".to_owned()
    }
}

const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_IA5_STRING: u8 = 0x16;
/// `[0]` constructed, context-specific.
const TAG_EXPLICIT_0: u8 = 0xa0;

/// Reads one DER TLV (single-byte tag, definite length): returns (tag, content, rest).
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Decodes the value part of an otherName (after the OID): `[0] EXPLICIT <string type>`.
fn decode_other_name_string(value: &[u8], want_tag: u8) -> Option<String> {
    let (tag, inner, rest) = read_tlv(value)?;
    if tag != TAG_EXPLICIT_0 || !rest.is_empty() {
        return None;
    }
    let (tag, content, rest) = read_tlv(inner)?;
    if tag != want_tag || !rest.is_empty() {
        return None;
    }
    let s = std::str::from_utf8(content).ok()?;
    if want_tag == TAG_IA5_STRING && !s.is_ascii() {
        return None;
    }
    Some(s.to_owned())
}

/// The A-label form of a domain (lower case, no trailing dot); names IDNA refuses are only
/// lower-cased (they then match nothing a CA would issue).
fn a_label(name: &str) -> String {
    fedgate_jid::domain_to_ascii(name)
        .map_or_else(|_| normalize_dns(name), std::borrow::Cow::into_owned)
}

/// Lowercase (ASCII) and strip one trailing dot.
fn normalize_dns(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn valid_reference_domain(domain: &str) -> bool {
    !domain.is_empty() && !domain.contains('*') && domain.split('.').all(|label| !label.is_empty())
}

/// Does the DNS-ID `pattern` (already normalized) match the normalized `domain`?
fn dns_id_matches(pattern: &str, domain: &str) -> Option<NameMatch> {
    if let Some(base) = pattern.strip_prefix("*.") {
        // RFC 9525 §6.3: only a whole leftmost `*` label, matching exactly one label; we also
        // require at least two labels after it, so `*.test` or `*.` never match.
        if base.contains('*') || base.split('.').count() < 2 || base.split('.').any(str::is_empty) {
            return None;
        }
        let (first, rest) = domain.split_once('.')?;
        (!first.is_empty() && rest == base).then_some(NameMatch::WildcardDnsId)
    } else if !pattern.contains('*') && pattern == domain {
        Some(NameMatch::DnsId)
    } else {
        None
    }
}

/// Matches decoded SAN entries against a domain. Order of preference: exact DNS-ID, SRV-ID,
/// XmppAddr, wildcard DNS-ID.
pub(crate) fn match_entries(entries: &[SanEntry], domain: &str) -> Option<NameMatch> {
    // Certificates name domains in A-labels (RFC 9525 §6.3): an internationalized domain,
    // which XMPP writes in U-labels, is compared in its A-label form.
    let domain = a_label(domain);
    if !valid_reference_domain(&domain) {
        return None;
    }
    let mut best: Option<NameMatch> = None;
    let rank = |m: NameMatch| match m {
        NameMatch::DnsId => 0,
        NameMatch::SrvId => 1,
        NameMatch::XmppAddr => 2,
        NameMatch::WildcardDnsId => 3,
    };
    for entry in entries {
        let found = match entry {
            SanEntry::Dns(pattern) => dns_id_matches(&normalize_dns(pattern), &domain),
            SanEntry::Srv(srv) => {
                let srv = normalize_dns(srv);
                srv.strip_prefix(SRV_SERVICE)
                    .filter(|rest| *rest == domain)
                    .map(|_| NameMatch::SrvId)
            }
            SanEntry::XmppAddr(addr) => {
                // Only a bare domain JID names a server; compared in A-label form too.
                (!addr.contains(['@', '/']) && a_label(addr) == domain)
                    .then_some(NameMatch::XmppAddr)
            }
            SanEntry::Other(_) => None,
        };
        if let Some(m) = found
            && best.is_none_or(|b| rank(m) < rank(b))
        {
            best = Some(m);
        }
    }
    best
}

/// The names for the detail text of a name failure: DNS-IDs bare, the others with a prefix.
fn relevant_names(entries: &[SanEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match e {
            SanEntry::Dns(n) => Some(n.clone()),
            SanEntry::Srv(_) | SanEntry::XmppAddr(_) => Some(e.display()),
            SanEntry::Other(_) => None,
        })
        .collect()
}

pub(crate) fn name_failure(entries: &[SanEntry], domain: &str) -> CertFailure {
    let names = relevant_names(entries);
    let detail = if names.is_empty() {
        format!(
            "certificate has no DNS-ID, SRV-ID or XmppAddr (the subject CN is not used), \
             not valid for {domain}"
        )
    } else {
        format!(
            "certificate is valid for {}, not for {domain}",
            names.join(", ")
        )
    };
    CertFailure::new(CertFailureKind::Name, detail)
}

/// Checks that a certificate names the XMPP domain `domain` (no chain validation).
///
/// Accepted identifiers: DNS-ID (exact or RFC 9525 wildcard), SRV-ID `_xmpp-server.<domain>`
/// and XmppAddr `<domain>`. We follow RFC 9525: the subject CN is not used at all, even when
/// the certificate has no subjectAltName. Case-insensitive; a trailing dot on either side is
/// ignored.
///
/// Errors: [`CertFailureKind::Malformed`] when the certificate or its subjectAltName cannot be
/// parsed, [`CertFailureKind::Name`] when no identifier matches (the detail lists the names
/// the certificate is valid for).
pub fn check_name(cert: &CertificateDer<'_>, domain: &str) -> Result<NameMatch, CertFailure> {
    let parsed = parse_cert(cert)?;
    let entries = san_entries(&parsed)?;
    match_entries(&entries, domain).ok_or_else(|| name_failure(&entries, domain))
}

/// Human-readable list of the subjectAltName entries of a certificate, for error texts and
/// `fedgate probe`: `DNS:a.test`, `SRV:_xmpp-server.a.test`, `XmppAddr:a.test`, `IP:…`,
/// `URI:…`, `email:…`, `otherName:<oid>`. Empty when the certificate cannot be parsed or has no
/// subjectAltName.
pub fn cert_names(cert: &CertificateDer<'_>) -> Vec<String> {
    parse_cert(cert)
        .and_then(|parsed| san_entries(&parsed))
        .map(|entries| entries.iter().map(SanEntry::display).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(n: &str) -> SanEntry {
        SanEntry::Dns(n.to_owned())
    }

    #[test]
    fn wildcard_rules() {
        let e = [dns("*.a.test")];
        assert_eq!(
            match_entries(&e, "x.a.test"),
            Some(NameMatch::WildcardDnsId)
        );
        assert_eq!(
            match_entries(&e, "X.A.TEST."),
            Some(NameMatch::WildcardDnsId)
        );
        assert_eq!(match_entries(&e, "a.test"), None);
        assert_eq!(match_entries(&e, "y.x.a.test"), None);
        assert_eq!(match_entries(&e, ".a.test"), None);
        assert_eq!(match_entries(&[dns("*.test")], "a.test"), None);
        assert_eq!(match_entries(&[dns("x*.a.test")], "xy.a.test"), None);
        assert_eq!(match_entries(&[dns("*x.a.test")], "yx.a.test"), None);
        assert_eq!(match_entries(&[dns("a.*.test")], "a.b.test"), None);
        assert_eq!(match_entries(&[dns("*.*.test")], "a.b.test"), None);
    }

    #[test]
    fn exact_and_case() {
        assert_eq!(
            match_entries(&[dns("A.Test.")], "a.test"),
            Some(NameMatch::DnsId)
        );
        assert_eq!(match_entries(&[dns("a.test")], ""), None);
        assert_eq!(match_entries(&[dns("*.a.test")], "*.a.test"), None);
    }

    #[test]
    fn exact_preferred_over_wildcard() {
        let e = [dns("*.a.test"), dns("x.a.test")];
        assert_eq!(match_entries(&e, "x.a.test"), Some(NameMatch::DnsId));
    }

    #[test]
    fn srv_and_xmppaddr() {
        let e = [
            SanEntry::Srv("_xmpp-server.A.test".into()),
            SanEntry::Srv("_xmpp-client.c.test".into()),
            SanEntry::XmppAddr("b.test".into()),
            SanEntry::XmppAddr("user@d.test".into()),
        ];
        assert_eq!(match_entries(&e, "a.test"), Some(NameMatch::SrvId));
        assert_eq!(match_entries(&e, "b.test"), Some(NameMatch::XmppAddr));
        assert_eq!(match_entries(&e, "c.test"), None);
        assert_eq!(match_entries(&e, "d.test"), None);
    }

    #[test]
    fn failure_detail_lists_names() {
        let e = [dns("a.test"), dns("*.b.test")];
        let f = name_failure(&e, "c.test");
        assert_eq!(
            f.to_string(),
            "cert-name: certificate is valid for a.test, *.b.test, not for c.test"
        );
        let f = name_failure(&[], "c.test");
        assert!(f.detail.contains("CN is not used"), "{f}");
    }

    #[test]
    fn tlv_reader() {
        // [0] { IA5String "ab" }
        let v = [0xa0, 0x04, 0x16, 0x02, b'a', b'b'];
        assert_eq!(
            decode_other_name_string(&v, TAG_IA5_STRING).as_deref(),
            Some("ab")
        );
        assert_eq!(decode_other_name_string(&v, TAG_UTF8_STRING), None);
        assert_eq!(decode_other_name_string(&v[..5], TAG_IA5_STRING), None);
        // long-form length
        let v = [0xa0, 0x81, 0x04, 0x0c, 0x02, b'x', b'y'];
        assert_eq!(
            decode_other_name_string(&v, TAG_UTF8_STRING).as_deref(),
            Some("xy")
        );
    }
}
