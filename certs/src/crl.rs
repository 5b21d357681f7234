//! Certificate revocation lists (RFC 5280 §5) for peer certificate checks.
//!
//! CRL files are read once (at start); [`load_crls`] refuses files that hold no usable CRL, so
//! a typo or a truncated download is a start-up error, not a silently skipped revocation check.
//! [`PeerVerifier::with_crls`](crate::PeerVerifier::with_crls) then consults them for every
//! peer chain.

use std::fmt;
use std::path::PathBuf;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use webpki::{CertRevocationList, OwnedCertRevocationList};

use crate::clock::{fmt_unix, unix_now};
use crate::error::CertError;
use crate::pem::read_file;

/// Reads CRL files, PEM (one or more `X509 CRL` blocks) or DER (one CRL), in order.
///
/// Every CRL must parse as an RFC 5280 v2 CRL that webpki supports (no delta or indirect
/// CRLs); errors name the file. A CRL whose nextUpdate has passed is accepted with a warning:
/// it still revokes what it lists (see [`PeerVerifier::with_crls`](crate::PeerVerifier::with_crls)).
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = read_file(path)?;
        out.extend(parse_crls(&bytes, &path.display().to_string())?);
    }
    Ok(out)
}

/// The CRLs of one PEM or DER text (see [`load_crls`]); `source_name` names it in errors.
pub fn parse_crls(
    bytes: &[u8],
    source_name: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let bad = |detail: String| CertError::Crl {
        source_name: source_name.to_owned(),
        detail,
    };
    let pems = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let crls = if !pems.is_empty() {
        pems
    } else if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    } else {
        return Err(bad(
            "neither PEM with an X509 CRL block nor a DER CRL".to_owned()
        ));
    };
    let now = unix_now();
    for (i, crl) in crls.iter().enumerate() {
        let which = if crls.len() > 1 {
            format!("CRL #{}: ", i + 1)
        } else {
            String::new()
        };
        OwnedCertRevocationList::from_der(crl).map_err(|e| bad(format!("{which}{e}")))?;
        if let Some(next) = next_update(crl)
            && next <= now
        {
            tracing::warn!(
                source = source_name,
                next_update = %fmt_unix(next),
                "CRL is past its nextUpdate; it is still used, replace it with a current one"
            );
        }
    }
    Ok(crls)
}

fn next_update(crl: &CertificateRevocationListDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).ok()?;
    parsed.next_update().map(|t| t.timestamp())
}

/// Parsed CRLs as the verifier keeps them.
#[derive(Default)]
pub(crate) struct Crls(pub(crate) Vec<CertRevocationList<'static>>);

impl Crls {
    /// Parses `ders`; an unparsable CRL is left out with an error log ([`load_crls`] refuses
    /// those, so this only happens with CRLs that did not come through it).
    pub(crate) fn parse(ders: &[CertificateRevocationListDer<'_>]) -> Self {
        let mut out = Vec::with_capacity(ders.len());
        for (i, der) in ders.iter().enumerate() {
            match OwnedCertRevocationList::from_der(der) {
                Ok(crl) => out.push(CertRevocationList::from(crl)),
                Err(e) => {
                    tracing::error!(index = i, error = %e, "unusable CRL left out of peer certificate checks");
                }
            }
        }
        Crls(out)
    }
}

impl fmt::Debug for Crls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crls").field("len", &self.0.len()).finish()
    }
}

/// `3A:0F:…` as OpenSSL prints serial numbers.
pub(crate) fn hex_serial(serial: &[u8]) -> String {
    let trimmed = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    };
    trimmed
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls_pki_types::{CertificateDer, UnixTime};

    use super::*;
    use crate::dev::{LeafSpec, TestCa, serial_of};
    use crate::{CertFailureKind, PeerVerifier, TrustAnchors};

    const DAY: i64 = 86_400;

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        crate::pem::parse_certs(pem.as_bytes(), "test chain").unwrap()
    }

    fn verifier(ca: &TestCa, crl_pems: &[&str]) -> PeerVerifier {
        let anchors = TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap();
        let mut crls = Vec::new();
        for (i, pem) in crl_pems.iter().enumerate() {
            crls.extend(parse_crls(pem.as_bytes(), &format!("crl #{i}")).unwrap());
        }
        PeerVerifier::new(Arc::new(anchors)).with_crls(crls)
    }

    fn check(v: &PeerVerifier, pem: &str, domain: &str) -> Result<(), crate::CertFailure> {
        v.verify(&chain(pem), domain, true, UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn revoked_leaf_fails_and_others_pass() {
        let ca = TestCa::new("crl root").unwrap();
        let (revoked, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        let (good, _) = ca.issue(&LeafSpec::dns(&["c.test"])).unwrap();
        let crl = ca.crl(&[serial_of(&revoked).unwrap()]).unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");

        let v = verifier(&ca, &[&crl]);
        assert_eq!(v.crl_count(), 1);
        let f = check(&v, &revoked, "b.test").unwrap_err();
        assert_eq!(f.kind, CertFailureKind::Revoked, "{f}");
        let text = f.to_string();
        assert!(
            text.starts_with("cert-revoked: certificate serial "),
            "{text}"
        );
        assert!(text.contains("CN=crl root"), "{text}");
        // both roles
        let f = v
            .verify(&chain(&revoked), "b.test", false, UnixTime::now())
            .unwrap_err();
        assert_eq!(f.kind, CertFailureKind::Revoked);
        // strict EKU too
        let strict = verifier(&ca, &[&crl]).strict_client_eku(true);
        assert_eq!(
            check(&strict, &revoked, "b.test").unwrap_err().kind,
            CertFailureKind::Revoked
        );

        // a leaf the CRL does not list passes
        check(&v, &good, "c.test").unwrap();
        // an empty CRL of the same CA revokes nothing
        check(&verifier(&ca, &[&ca.crl(&[]).unwrap()]), &revoked, "b.test").unwrap();
        // no CRL configured: the revoked leaf passes
        let none = verifier(&ca, &[]);
        assert_eq!(none.crl_count(), 0);
        check(&none, &revoked, "b.test").unwrap();
        check(
            &verifier(&ca, &[]).with_crls(Vec::new()),
            &revoked,
            "b.test",
        )
        .unwrap();
    }

    #[test]
    fn revocation_applies_to_the_whole_chain() {
        let root = TestCa::new("crl chain root").unwrap();
        let inter = root.intermediate("crl chain intermediate").unwrap();
        let (leaf, _) = inter.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        // the root revokes the intermediate
        let crl = root.crl(&[serial_of(&inter.cert_pem()).unwrap()]).unwrap();
        let f = check(&verifier(&root, &[&crl]), &leaf, "b.test").unwrap_err();
        assert_eq!(f.kind, CertFailureKind::Revoked, "{f}");
        assert!(
            f.detail
                .starts_with("intermediate CA CN=crl chain intermediate (serial "),
            "{f}"
        );
        // the intermediate's own CRL revokes the leaf
        let crl = inter.crl(&[serial_of(&leaf).unwrap()]).unwrap();
        let f = check(&verifier(&root, &[&crl]), &leaf, "b.test").unwrap_err();
        assert_eq!(f.kind, CertFailureKind::Revoked, "{f}");
        assert!(f.detail.contains("CN=crl chain intermediate"), "{f}");
        // a root CRL that lists nothing: the leaf (whose issuer has no CRL here) passes
        check(
            &verifier(&root, &[&root.crl(&[]).unwrap()]),
            &leaf,
            "b.test",
        )
        .unwrap();
    }

    #[test]
    fn with_anchors_keeps_the_crls() {
        let ca = TestCa::new("crl root").unwrap();
        let (revoked, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        let crl = ca.crl(&[serial_of(&revoked).unwrap()]).unwrap();
        let base = verifier(&TestCa::new("unrelated").unwrap(), &[&crl]);
        let anchors = TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap();
        let partner = base.with_anchors(Arc::new(anchors));
        assert_eq!(partner.crl_count(), 1);
        assert_eq!(
            check(&partner, &revoked, "b.test").unwrap_err().kind,
            CertFailureKind::Revoked
        );
    }

    #[test]
    fn a_ca_without_a_configured_crl_is_not_an_error() {
        let ca = TestCa::new("crl root").unwrap();
        let other = TestCa::new("other root").unwrap();
        let (leaf, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        // another CA's CRL listing the same serial does not apply
        let crl = other.crl(&[serial_of(&leaf).unwrap()]).unwrap();
        check(&verifier(&ca, &[&crl]), &leaf, "b.test").unwrap();
    }

    #[test]
    fn a_crl_with_a_bad_signature_fails_the_chain() {
        let ca = TestCa::new("crl root").unwrap();
        // same issuer name, other key
        let impostor = TestCa::new("crl root").unwrap();
        let (leaf, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        let crl = impostor.crl(&[]).unwrap();
        let f = check(&verifier(&ca, &[&crl]), &leaf, "b.test").unwrap_err();
        assert_eq!(f.kind, CertFailureKind::Chain, "{f}");
        assert!(f.detail.contains("revocation check"), "{f}");
    }

    #[test]
    fn a_stale_crl_still_revokes() {
        let ca = TestCa::new("crl root").unwrap();
        let (revoked, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        let (good, _) = ca.issue(&LeafSpec::dns(&["c.test"])).unwrap();
        let now = unix_now();
        let crl = ca
            .crl_at(&[serial_of(&revoked).unwrap()], now - 10 * DAY, now - DAY)
            .unwrap();
        let v = verifier(&ca, &[&crl]);
        assert_eq!(
            check(&v, &revoked, "b.test").unwrap_err().kind,
            CertFailureKind::Revoked
        );
        check(&v, &good, "c.test").unwrap();
    }

    #[test]
    fn load_pem_der_and_bad_files() {
        let ca = TestCa::new("crl root").unwrap();
        let (leaf, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
        let crl = ca.crl(&[serial_of(&leaf).unwrap()]).unwrap();
        let dir = std::env::temp_dir().join(format!("fedgate-crl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.crl.pem");
        std::fs::write(&pem, format!("{crl}{}", ca.crl(&[]).unwrap())).unwrap();
        let der = dir.join("ca.crl");
        let der_bytes = CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
        std::fs::write(&der, der_bytes.as_ref()).unwrap();

        let loaded = load_crls(&[pem.clone(), der.clone()]).unwrap();
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded[2].as_ref(), der_bytes.as_ref());
        let anchors = TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap();
        let v = PeerVerifier::new(Arc::new(anchors)).with_crls(load_crls(&[der]).unwrap());
        assert_eq!(
            check(&v, &leaf, "b.test").unwrap_err().kind,
            CertFailureKind::Revoked
        );

        // a certificate is not a CRL
        let not_crl = dir.join("cert.pem");
        std::fs::write(&not_crl, &leaf).unwrap();
        let e = load_crls(std::slice::from_ref(&not_crl)).unwrap_err();
        assert!(matches!(e, CertError::Crl { .. }), "{e}");
        assert!(
            e.to_string().contains(&not_crl.display().to_string()),
            "{e}"
        );
        // DER-looking junk
        let junk = dir.join("junk.crl");
        std::fs::write(&junk, [0x30, 0x03, 0x02, 0x01, 0x00]).unwrap();
        let e = load_crls(std::slice::from_ref(&junk)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("bad CRL in {}: ", junk.display())),
            "{e}"
        );
        // missing file
        let e = load_crls(&[dir.join("nope.crl")]).unwrap_err();
        assert!(matches!(e, CertError::Io { .. }), "{e}");
        // unparsable DER given directly is left out
        let v = verifier(&ca, &[])
            .with_crls(vec![CertificateRevocationListDer::from(vec![0x30, 0x00])]);
        assert_eq!(v.crl_count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn serial_hex() {
        assert_eq!(hex_serial(&[0x00, 0x8f, 0x01]), "8F:01");
        assert_eq!(hex_serial(&[0x00]), "00");
        assert_eq!(hex_serial(&[0x3a]), "3A");
    }
}
