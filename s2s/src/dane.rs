//! DANE TLSA matching (RFC 6698, RFC 7671) for s2s targets found via SRV (RFC 7673), sans-IO.
//!
//! Input: the TLSA records of `_<port>._tcp.<srv-target>` (already DNSSEC-validated by the
//! caller, see [`crate::driver::dane`]), the certificate chain the peer presented (leaf first)
//! and the XMPP domain being connected to. Output: which usage matched, or no match.
//!
//! Usages:
//! - **3, DANE-EE**: the leaf certificate (selector 0) or its SubjectPublicKeyInfo (selector 1)
//!   must match. No name check, no expiry check, no chain (RFC 7671 §5.1).
//! - **2, DANE-TA**: a certificate of the presented chain other than the leaf (or, for `2 0 0`,
//!   the full certificate published in DNS) must match; it becomes the only trust anchor, the
//!   leaf must chain to it (signatures, validity of the leaf and intermediates, serverAuth or
//!   clientAuth usage) and the leaf must name the XMPP domain (DNS-ID, SRV-ID or XmppAddr, with
//!   [`fedgate_certs::check_name`] rules). The SRV target host is *not* accepted as an
//!   identifier, only the domain.
//! - **0, PKIX-TA and 1, PKIX-EE**: treated as unusable, as RFC 7672 §3.1.3 advises for SMTP
//!   (they would add a dependency on the public CA system that DANE is meant to replace). A
//!   record set with only unusable records counts as "no TLSA" ([`has_usable`]), so ordinary
//!   PKIX/dialback authentication applies, unchanged.
//!
//! Unknown selectors and matching types are unusable too (RFC 6698 §4.1). Matching types:
//! 0 exact, 1 SHA-256, 2 SHA-512 (ring).

use std::sync::Arc;

use fedgate_certs::{PeerVerifier, TrustAnchors};
use ring::digest;
use rustls_pki_types::{CertificateDer, UnixTime};

/// Certificate usage DANE-TA (RFC 7218 mnemonic).
pub const USAGE_DANE_TA: u8 = 2;
/// Certificate usage DANE-EE.
pub const USAGE_DANE_EE: u8 = 3;
/// Selector: full certificate.
pub const SELECTOR_CERT: u8 = 0;
/// Selector: SubjectPublicKeyInfo.
pub const SELECTOR_SPKI: u8 = 1;
/// Matching type: exact content.
pub const MATCH_EXACT: u8 = 0;
/// Matching type: SHA-256 of the content.
pub const MATCH_SHA256: u8 = 1;
/// Matching type: SHA-512 of the content.
pub const MATCH_SHA512: u8 = 2;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage (0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE).
    pub usage: u8,
    /// Selector (0 full certificate, 1 SubjectPublicKeyInfo).
    pub selector: u8,
    /// Matching type (0 exact, 1 SHA-256, 2 SHA-512).
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether this record can be used here: usage 2 or 3, selector 0 or 1, matching 0–2.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, USAGE_DANE_TA | USAGE_DANE_EE)
            && matches!(self.selector, SELECTOR_CERT | SELECTOR_SPKI)
            && matches!(self.matching, MATCH_EXACT | MATCH_SHA256 | MATCH_SHA512)
    }

    /// The record that `cert` (DER) would be published as, e.g. `Tlsa::for_cert(3, 1, 1, leaf)`
    /// for `3 1 1 <sha256 of the SPKI>`. `None` for an unknown selector or matching type, or
    /// when the SPKI cannot be found.
    pub fn for_cert(usage: u8, selector: u8, matching: u8, cert: &[u8]) -> Option<Self> {
        let content = match selector {
            SELECTOR_CERT => cert,
            SELECTOR_SPKI => spki_of(cert)?,
            _ => return None,
        };
        let data = match matching {
            MATCH_EXACT => content.to_vec(),
            MATCH_SHA256 => digest::digest(&digest::SHA256, content).as_ref().to_vec(),
            MATCH_SHA512 => digest::digest(&digest::SHA512, content).as_ref().to_vec(),
            _ => return None,
        };
        Some(Self {
            usage,
            selector,
            matching,
            data,
        })
    }

    /// Does this record's association data match `cert` (selector and matching type applied)?
    /// False for unusable selectors/matching types and unparsable certificates.
    pub fn matches_cert(&self, cert: &[u8]) -> bool {
        let content = match self.selector {
            SELECTOR_CERT => cert,
            SELECTOR_SPKI => match spki_of(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            MATCH_EXACT => content == self.data.as_slice(),
            MATCH_SHA256 => digest::digest(&digest::SHA256, content).as_ref() == self.data,
            MATCH_SHA512 => digest::digest(&digest::SHA512, content).as_ref() == self.data,
            _ => false,
        }
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in self.data.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        if self.data.len() > 8 {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Result of matching a chain against a TLSA record set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneMatch {
    /// A usable record matched (and, for DANE-TA, the chain and name checks passed).
    Matched {
        /// The usage of the matching record (2 or 3).
        usage: u8,
    },
    /// No usable record matched.
    NoMatch,
}

/// Whether any record of the set is usable ([`Tlsa::is_usable`]). A set with none is treated
/// like no TLSA records at all.
pub fn has_usable(records: &[Tlsa]) -> bool {
    records.iter().any(Tlsa::is_usable)
}

/// Matches `chain` (leaf first) against `records` for the XMPP `domain`, at the current time
/// (the time matters only for DANE-TA chain validation). DANE-EE records are tried first.
pub fn match_tlsa(records: &[Tlsa], chain: &[CertificateDer<'_>], domain: &str) -> DaneMatch {
    match_tlsa_at(records, chain, domain, UnixTime::now())
}

/// [`match_tlsa`] at an explicit time.
pub fn match_tlsa_at(
    records: &[Tlsa],
    chain: &[CertificateDer<'_>],
    domain: &str,
    now: UnixTime,
) -> DaneMatch {
    let Some(leaf) = chain.first() else {
        return DaneMatch::NoMatch;
    };
    let usable = || records.iter().filter(|r| r.is_usable());
    if usable()
        .filter(|r| r.usage == USAGE_DANE_EE)
        .any(|r| r.matches_cert(leaf))
    {
        return DaneMatch::Matched {
            usage: USAGE_DANE_EE,
        };
    }
    for rec in usable().filter(|r| r.usage == USAGE_DANE_TA) {
        // Candidate anchors: chain certificates above the leaf that match, plus the record's
        // own data when it is a full certificate (2 0 0), which need not be in the chain.
        let mut anchors: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .filter(|c| rec.matches_cert(c))
            .cloned()
            .collect();
        if rec.selector == SELECTOR_CERT && rec.matching == MATCH_EXACT {
            anchors.push(CertificateDer::from(rec.data.as_slice()));
        }
        for anchor in anchors {
            if chains_to(chain, &anchor, domain, now) {
                return DaneMatch::Matched {
                    usage: USAGE_DANE_TA,
                };
            }
        }
    }
    DaneMatch::NoMatch
}

/// The leaf chains to `anchor` (as the only trust anchor) and names `domain`.
fn chains_to(
    chain: &[CertificateDer<'_>],
    anchor: &CertificateDer<'_>,
    domain: &str,
    now: UnixTime,
) -> bool {
    let mut anchors = TrustAnchors::empty();
    if anchors.add_der(anchor, "DANE-TA").is_err() {
        return false;
    }
    // Only the certificates below the anchor are offered as intermediates.
    let below: Vec<CertificateDer<'_>> = chain
        .iter()
        .take_while(|c| c.as_ref() != anchor.as_ref())
        .cloned()
        .collect();
    match PeerVerifier::new(Arc::new(anchors)).verify(&below, domain, false, now) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(%domain, error = %e, "DANE-TA: chain or name check failed");
            false
        }
    }
}

/// The DER SubjectPublicKeyInfo (tag and length included) of a DER X.509 certificate.
pub fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (certificate, _) = der_tlv(cert, 0x30)?;
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    //                               validity, subject, subjectPublicKeyInfo, ... }
    let (tbs, _) = der_tlv(certificate.content, 0x30)?;
    let mut rest = tbs.content;
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest, 0xa0)?.1;
    }
    rest = der_tlv(rest, 0x02)?.1; // serialNumber
    for _ in 0..4 {
        // signature, issuer, validity, subject
        rest = der_tlv(rest, 0x30)?.1;
    }
    Some(der_tlv(rest, 0x30)?.0.whole)
}

#[derive(Clone, Copy)]
struct Tlv<'a> {
    whole: &'a [u8],
    content: &'a [u8],
}

/// Reads one DER TLV with the expected tag: (the element, the bytes after it).
fn der_tlv(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((
        Tlv {
            whole: &input[..header + len],
            content: &rest[..len],
        },
        &rest[len..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedgate_certs::dev::{LeafSpec, TestCa};
    use rustls_pki_types::pem::PemObject;

    fn chain_of(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        chain_of(pem).remove(0)
    }

    /// Independent of `for_cert`: computes the data by hand.
    fn tlsa(usage: u8, selector: u8, matching: u8, cert: &[u8]) -> Tlsa {
        let content = if selector == 1 {
            spki_of(cert).unwrap()
        } else {
            cert
        };
        let data = match matching {
            0 => content.to_vec(),
            1 => digest::digest(&digest::SHA256, content).as_ref().to_vec(),
            _ => digest::digest(&digest::SHA512, content).as_ref().to_vec(),
        };
        let rec = Tlsa {
            usage,
            selector,
            matching,
            data,
        };
        assert_eq!(
            Tlsa::for_cert(usage, selector, matching, cert),
            Some(rec.clone())
        );
        rec
    }

    #[test]
    fn spki_extraction() {
        let ca = TestCa::new("spki CA").unwrap();
        let (chain, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let leaf = der_of(&chain);
        let spki = spki_of(&leaf).unwrap();
        // A SEQUENCE holding id-ecPublicKey (1.2.840.10045.2.1) and the P-256 point.
        assert_eq!(spki[0], 0x30);
        let oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        assert!(spki.windows(oid.len()).any(|w| w == oid));
        assert_eq!(spki.len(), 91, "P-256 SPKI is 91 bytes");
        // Two leaves of the same CA have different keys.
        let (other, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        assert_ne!(spki_of(&der_of(&other)).unwrap(), spki);
        assert!(spki_of(b"\x30\x03\x02\x01\x01").is_none());
        assert!(spki_of(&[]).is_none());
        assert!(spki_of(&leaf[..leaf.len() - 1]).is_none());
    }

    #[test]
    fn dane_ee_all_selectors_and_matching_types() {
        let ca = TestCa::new("untrusted CA").unwrap();
        let (pem, _) = ca.issue(&LeafSpec::dns(&["other.test"])).unwrap();
        let chain = chain_of(&pem);
        let leaf = chain[0].clone();
        for selector in [0, 1] {
            for matching in [0, 1, 2] {
                let rec = tlsa(3, selector, matching, &leaf);
                // No name check for DANE-EE: the certificate names other.test.
                assert_eq!(
                    match_tlsa(&[rec], &chain, "a.test"),
                    DaneMatch::Matched { usage: 3 },
                    "3 {selector} {matching}"
                );
            }
        }
    }

    #[test]
    fn dane_ee_ignores_expiry() {
        let ca = TestCa::new("CA").unwrap();
        let spec = LeafSpec {
            not_before: Some(1_000_000_000),
            not_after: Some(1_000_086_400),
            ..LeafSpec::dns(&["a.test"])
        };
        let (pem, _) = ca.issue(&spec).unwrap();
        let chain = chain_of(&pem);
        let rec = tlsa(3, 1, 1, &chain[0]);
        assert_eq!(
            match_tlsa(&[rec], &chain, "a.test"),
            DaneMatch::Matched { usage: 3 }
        );
    }

    #[test]
    fn dane_ee_mismatch() {
        let ca = TestCa::new("CA").unwrap();
        let (pem_a, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let (pem_b, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let a = chain_of(&pem_a);
        let b = chain_of(&pem_b);
        for (s, m) in [(0, 0), (0, 1), (1, 1), (1, 2)] {
            let rec = tlsa(3, s, m, &b[0]);
            assert_eq!(match_tlsa(&[rec], &a, "a.test"), DaneMatch::NoMatch);
        }
        // An empty chain never matches.
        assert_eq!(
            match_tlsa(&[tlsa(3, 1, 1, &a[0])], &[], "a.test"),
            DaneMatch::NoMatch
        );
        // A one-byte change in the data breaks the match.
        let mut rec = tlsa(3, 1, 1, &a[0]);
        rec.data[0] ^= 1;
        assert_eq!(match_tlsa(&[rec], &a, "a.test"), DaneMatch::NoMatch);
    }

    #[test]
    fn dane_ta_with_ca_in_chain_and_name_check() {
        let ca = TestCa::new("DANE TA").unwrap();
        let ca_der = der_of(&ca.cert_pem());
        let (pem, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let mut chain = chain_of(&pem);
        chain.push(ca_der.clone());
        for selector in [0, 1] {
            for matching in [0, 1, 2] {
                let rec = tlsa(2, selector, matching, &ca_der);
                assert_eq!(
                    match_tlsa(std::slice::from_ref(&rec), &chain, "a.test"),
                    DaneMatch::Matched { usage: 2 },
                    "2 {selector} {matching}"
                );
                // The name check applies to DANE-TA.
                assert_eq!(
                    match_tlsa(&[rec], &chain, "b.test"),
                    DaneMatch::NoMatch,
                    "2 {selector} {matching} wrong name"
                );
            }
        }
    }

    #[test]
    fn dane_ta_through_intermediate() {
        let root = TestCa::new("root").unwrap();
        let inter = root.intermediate("inter").unwrap();
        let (pem, _) = inter.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let mut chain = chain_of(&pem); // leaf, intermediate
        let root_der = der_of(&root.cert_pem());
        chain.push(root_der.clone());
        // Anchor at the root (in the chain).
        let rec = tlsa(2, 1, 1, &root_der);
        assert_eq!(
            match_tlsa(&[rec], &chain, "a.test"),
            DaneMatch::Matched { usage: 2 }
        );
        // Anchor at the intermediate.
        let rec = tlsa(2, 0, 1, &chain[1]);
        assert_eq!(
            match_tlsa(&[rec], &chain, "a.test"),
            DaneMatch::Matched { usage: 2 }
        );
    }

    #[test]
    fn dane_ta_full_cert_not_in_chain() {
        let ca = TestCa::new("TA").unwrap();
        let ca_der = der_of(&ca.cert_pem());
        let (pem, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let chain = chain_of(&pem); // leaf only
        // 2 0 0 carries the certificate itself: usable without it in the chain.
        assert_eq!(
            match_tlsa(&[tlsa(2, 0, 0, &ca_der)], &chain, "a.test"),
            DaneMatch::Matched { usage: 2 }
        );
        // A digest of a certificate that is not in the chain cannot be used.
        assert_eq!(
            match_tlsa(&[tlsa(2, 0, 1, &ca_der)], &chain, "a.test"),
            DaneMatch::NoMatch
        );
    }

    #[test]
    fn dane_ta_mismatch_and_wrong_issuer() {
        let ca = TestCa::new("real").unwrap();
        let other = TestCa::new("other").unwrap();
        let other_der = der_of(&other.cert_pem());
        let (pem, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let mut chain = chain_of(&pem);
        // The chain carries a certificate matching the TLSA record, but the leaf was not
        // issued by it: no match.
        chain.push(other_der.clone());
        assert_eq!(
            match_tlsa(&[tlsa(2, 1, 1, &other_der)], &chain, "a.test"),
            DaneMatch::NoMatch
        );
        // The leaf itself is not a trust anchor for usage 2.
        assert_eq!(
            match_tlsa(&[tlsa(2, 0, 1, &chain[0])], &chain, "a.test"),
            DaneMatch::NoMatch
        );
    }

    #[test]
    fn dane_ta_expired_leaf_fails() {
        let ca = TestCa::new("CA").unwrap();
        let ca_der = der_of(&ca.cert_pem());
        let spec = LeafSpec {
            not_before: Some(1_000_000_000),
            not_after: Some(1_000_086_400),
            ..LeafSpec::dns(&["a.test"])
        };
        let (pem, _) = ca.issue(&spec).unwrap();
        let mut chain = chain_of(&pem);
        chain.push(ca_der.clone());
        assert_eq!(
            match_tlsa(&[tlsa(2, 1, 1, &ca_der)], &chain, "a.test"),
            DaneMatch::NoMatch
        );
    }

    #[test]
    fn pkix_usages_and_unknown_fields_are_unusable() {
        let ca = TestCa::new("CA").unwrap();
        let (pem, _) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let chain = chain_of(&pem);
        let unusable = vec![
            tlsa(1, 1, 1, &chain[0]),
            tlsa(0, 0, 1, &chain[0]),
            Tlsa {
                selector: 7,
                ..tlsa(3, 1, 1, &chain[0])
            },
            Tlsa {
                matching: 9,
                ..tlsa(3, 1, 1, &chain[0])
            },
        ];
        assert!(!has_usable(&unusable));
        assert_eq!(match_tlsa(&unusable, &chain, "a.test"), DaneMatch::NoMatch);
        let mut mixed = unusable.clone();
        mixed.push(tlsa(3, 1, 2, &chain[0]));
        assert!(has_usable(&mixed));
        assert_eq!(
            match_tlsa(&mixed, &chain, "a.test"),
            DaneMatch::Matched { usage: 3 }
        );
    }

    #[test]
    fn display_is_short() {
        let r = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab; 32],
        };
        assert_eq!(r.to_string(), "3 1 1 abababababababab…");
    }
}
