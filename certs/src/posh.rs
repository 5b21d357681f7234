//! POSH, "PKIX over Secure HTTP" (RFC 7711), with the XMPP profile of RFC 7712: sans-IO parsing
//! of POSH documents and matching of a peer's certificate against them.
//!
//! A domain publishes `https://<domain>/.well-known/posh/xmpp-server.json`, either
//!
//! ```json
//! {"fingerprints": [{"sha-256": "<base64 SHA-256 of the SubjectPublicKeyInfo>"}], "expires": 86400}
//! ```
//!
//! or a delegation to another HTTPS URL (the delegated document must hold fingerprints):
//!
//! ```json
//! {"url": "https://hosting.example/.well-known/posh/xmpp-server.json", "expires": 86400}
//! ```
//!
//! A peer whose leaf certificate's SPKI hash is listed is authenticated for that domain even
//! when its certificate names only the hosting provider. Fetching (HTTPS, checking the HTTPS
//! server's own certificate, caching) is the caller's job (`fedgate_s2s::driver::posh`).
//!
//! Parsing rules:
//! - `fingerprints` wins over `url` when both are present;
//! - each fingerprint object may hold several hash algorithms; only `sha-256` is used, objects
//!   without it are skipped, and a document left with no `sha-256` value is refused;
//! - a `sha-256` value must be base64 (padding optional) of exactly 32 bytes;
//! - `url` must be an `https://` URL;
//! - `expires` (seconds the document may be cached) must be a non-negative number when present
//!   (fractions are truncated); when absent it counts as 0: use the document once, do not cache.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use crate::failure::{CertFailure, CertFailureKind};
use crate::names::parse_cert;

/// Path of the XMPP server-to-server POSH document (RFC 7712).
pub const POSH_XMPP_SERVER_PATH: &str = "/.well-known/posh/xmpp-server.json";

/// A parsed POSH document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoshDoc {
    /// The SHA-256 hashes of the SubjectPublicKeyInfo of the certificates the domain uses.
    Fingerprints(Vec<[u8; 32]>),
    /// Look at this `https://` URL instead (follow at most one delegation).
    Delegation(String),
}

/// Parses a POSH document: the document and its `expires` (seconds, 0 when absent).
///
/// Errors are short human-readable reasons (`"not JSON: …"`, `"fingerprints[1]: sha-256 is 31
/// bytes, not 32"`, …); the caller prefixes them.
pub fn parse_posh(json: &[u8]) -> Result<(PoshDoc, u64), String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".to_owned());
    };
    let expires = match obj.get("expires") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                u
            } else {
                match n.as_f64() {
                    Some(f) if f >= 0.0 && f.is_finite() => f as u64,
                    _ => return Err(format!("expires is negative or invalid: {n}")),
                }
            }
        }
        Some(other) => return Err(format!("expires is not a number: {other}")),
    };
    if let Some(fps) = obj.get("fingerprints") {
        let Value::Array(list) = fps else {
            return Err("fingerprints is not an array".to_owned());
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let Value::Object(entry) = entry else {
                return Err(format!("fingerprints[{i}] is not an object"));
            };
            let Some(v) = entry.get("sha-256") else {
                // Another algorithm only (e.g. sha-512): not usable here.
                continue;
            };
            let Value::String(b64) = v else {
                return Err(format!("fingerprints[{i}]: sha-256 is not a string"));
            };
            out.push(decode_sha256(b64).map_err(|e| format!("fingerprints[{i}]: {e}"))?);
        }
        if out.is_empty() {
            return Err("no sha-256 fingerprint in the document".to_owned());
        }
        return Ok((PoshDoc::Fingerprints(out), expires));
    }
    match obj.get("url") {
        Some(Value::String(url)) => {
            let scheme_ok = url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
            if !scheme_ok || url.len() <= 8 {
                return Err(format!("url is not an https:// URL: {url:?}"));
            }
            Ok((PoshDoc::Delegation(url.clone()), expires))
        }
        Some(other) => Err(format!("url is not a string: {other}")),
        None => Err("neither fingerprints nor url in the document".to_owned()),
    }
}

fn decode_sha256(b64: &str) -> Result<[u8; 32], String> {
    let b64 = b64.trim();
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .map_err(|e| format!("sha-256 is not base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("sha-256 is {} bytes, not 32", bytes.len()))
}

/// SHA-256 of the certificate's DER-encoded SubjectPublicKeyInfo (what POSH fingerprints hold).
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], CertFailure> {
    let parsed = parse_cert(cert)?;
    let spki = parsed.public_key().raw;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    <[u8; 32]>::try_from(digest.as_ref())
        .map_err(|_| CertFailure::new(CertFailureKind::Malformed, "SHA-256 digest is not 32 bytes"))
}

/// Whether the leaf of `chain` has a SubjectPublicKeyInfo whose SHA-256 is in `fingerprints`.
/// An empty chain or an unparsable leaf never matches. Nothing else of the chain is looked at
/// (issuer, names, validity dates): that is the POSH trust model.
pub fn posh_matches(chain: &[CertificateDer<'_>], fingerprints: &[[u8; 32]]) -> bool {
    chain
        .first()
        .and_then(|leaf| spki_sha256(leaf).ok())
        .is_some_and(|fp| fingerprints.contains(&fp))
}

/// A fingerprint as it appears in a POSH document (standard base64 with padding).
pub fn fingerprint_b64(fp: &[u8; 32]) -> String {
    STANDARD.encode(fp)
}

/// A POSH document listing `fingerprints` (e.g. to publish one for an own hosted domain:
/// `posh_json(&[spki_sha256(leaf)?], 86400)`).
pub fn posh_json(fingerprints: &[[u8; 32]], expires: u64) -> String {
    let list: Vec<Value> = fingerprints
        .iter()
        .map(|fp| serde_json::json!({ "sha-256": fingerprint_b64(fp) }))
        .collect();
    serde_json::json!({ "fingerprints": list, "expires": expires }).to_string()
}

/// A POSH delegation document pointing at `url`.
pub fn posh_delegation_json(url: &str, expires: u64) -> String {
    serde_json::json!({ "url": url, "expires": expires }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{LeafSpec, TestCa};
    use rustls_pki_types::pem::PemObject;

    fn leaf(ca: &TestCa, name: &str) -> Vec<CertificateDer<'static>> {
        let (pem, _key) = ca.issue(&LeafSpec::dns(&[name])).unwrap();
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    #[test]
    fn parses_fingerprints() {
        let fp = [7u8; 32];
        let json = format!(
            r#"{{"fingerprints":[{{"sha-256":"{}"}}],"expires":604800}}"#,
            fingerprint_b64(&fp)
        );
        let (doc, exp) = parse_posh(json.as_bytes()).unwrap();
        assert_eq!(doc, PoshDoc::Fingerprints(vec![fp]));
        assert_eq!(exp, 604800);
    }

    #[test]
    fn parses_multiple_and_skips_other_algorithms() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let json = format!(
            r#"{{"fingerprints":[{{"sha-256":"{}","sha-512":"xx"}},{{"sha-512":"only"}},{{"sha-256":"{}"}}],"expires":60.9}}"#,
            fingerprint_b64(&a),
            STANDARD_NO_PAD.encode(b)
        );
        let (doc, exp) = parse_posh(json.as_bytes()).unwrap();
        assert_eq!(doc, PoshDoc::Fingerprints(vec![a, b]));
        assert_eq!(exp, 60);
        // Round trip of the generator.
        assert_eq!(
            parse_posh(posh_json(&[a, b], 5).as_bytes()).unwrap(),
            (PoshDoc::Fingerprints(vec![a, b]), 5)
        );
    }

    #[test]
    fn parses_delegation() {
        let url = "https://hosting.test/.well-known/posh/xmpp-server.json";
        let (doc, exp) = parse_posh(posh_delegation_json(url, 3600).as_bytes()).unwrap();
        assert_eq!(doc, PoshDoc::Delegation(url.to_owned()));
        assert_eq!(exp, 3600);
        let e = parse_posh(br#"{"url":"http://hosting.test/x","expires":1}"#).unwrap_err();
        assert!(e.contains("https://"), "{e}");
        let e = parse_posh(br#"{"url":42}"#).unwrap_err();
        assert!(e.contains("url is not a string"), "{e}");
    }

    #[test]
    fn refuses_bad_documents() {
        for (json, want) in [
            (&b"{not json"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"expires\":10}", "neither fingerprints nor url"),
            (b"{}", "neither fingerprints nor url"),
            (b"{\"fingerprints\":{},\"expires\":1}", "not an array"),
            (b"{\"fingerprints\":[],\"expires\":1}", "no sha-256"),
            (b"{\"fingerprints\":[\"abc\"]}", "fingerprints[0] is not an object"),
            (b"{\"fingerprints\":[{\"sha-256\":5}]}", "not a string"),
            (b"{\"fingerprints\":[{\"sha-256\":\"!!!\"}]}", "not base64"),
            (
                b"{\"fingerprints\":[{\"sha-256\":\"AAAA\"}]}",
                "3 bytes, not 32",
            ),
            (
                b"{\"fingerprints\":[{\"sha-256\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"}]}",
                "31 bytes, not 32",
            ),
            (b"{\"url\":\"https://x.test/\",\"expires\":-5}", "negative"),
            (b"{\"url\":\"https://x.test/\",\"expires\":\"5\"}", "not a number"),
        ] {
            let e = parse_posh(json).unwrap_err();
            assert!(
                e.contains(want),
                "{}: {e}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn missing_expires_means_do_not_cache() {
        let json = format!(
            r#"{{"fingerprints":[{{"sha-256":"{}"}}]}}"#,
            fingerprint_b64(&[9u8; 32])
        );
        assert_eq!(parse_posh(json.as_bytes()).unwrap().1, 0);
    }

    #[test]
    fn matches_the_leaf_spki_only() {
        let ca = TestCa::new("posh CA").unwrap();
        let a = leaf(&ca, "provider.test");
        let b = leaf(&ca, "provider.test");
        let fa = spki_sha256(&a[0]).unwrap();
        let fb = spki_sha256(&b[0]).unwrap();
        assert_ne!(fa, fb, "fresh keys differ");
        assert!(posh_matches(&a, &[fb, fa]));
        assert!(!posh_matches(&b, &[fa]));
        assert!(!posh_matches(&[], &[fa]));
        assert!(!posh_matches(&a, &[]));
        // The hash covers the SPKI, not the whole certificate.
        let whole = ring::digest::digest(&ring::digest::SHA256, a[0].as_ref());
        assert_ne!(whole.as_ref(), &fa[..]);
        // Garbage is malformed.
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        assert_eq!(
            spki_sha256(&junk).unwrap_err().kind,
            CertFailureKind::Malformed
        );
        assert!(!posh_matches(&[junk], &[fa]));
    }

    #[test]
    fn spki_hash_is_deterministic() {
        // Hashing one certificate's SPKI twice gives one value, and its base64 is the
        // 44-character form POSH documents carry.
        let ca = TestCa::new("posh CA").unwrap();
        let a = leaf(&ca, "a.test");
        let f1 = spki_sha256(&a[0]).unwrap();
        let f2 = spki_sha256(&a[0]).unwrap();
        assert_eq!(f1, f2);
        assert_eq!(fingerprint_b64(&f1).len(), 44);
    }
}
