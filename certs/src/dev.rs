//! Development and test certificates: a self-signed certificate for `fedgate run` without
//! configuration and for labs, and a small test CA that issues leaves with any mix of DNS-IDs,
//! SRV-IDs, XmppAddrs, extended key usages and validity periods.
//!
//! Keys are ECDSA P-256. Nothing here is meant for production identities.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};

use crate::clock::{to_offset, unix_now};
use crate::error::CertError;
use crate::names::{OID_SRV_NAME, OID_XMPP_ADDR};

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// Self-signed certificate and key (both PEM) valid for the given DNS names (the first is also
/// the subject CN), with serverAuth and clientAuth, valid from one hour ago for one year.
/// For `fedgate run` without configuration and for labs: peers will not trust it (they fall
/// back to dialback) unless they pin it.
pub fn self_signed(domains: &[&str]) -> Result<(String, String), CertError> {
    self_signed_days(domains, 365)
}

/// Like [`self_signed`], valid from one hour ago for `days` days (`fedgate certs generate`).
pub fn self_signed_days(domains: &[&str], days: i64) -> Result<(String, String), CertError> {
    let Some(first) = domains.first() else {
        return Err(CertError::Generate("no domain given".to_owned()));
    };
    let now = unix_now();
    let mut params = CertificateParams::default();
    params.distinguished_name = cn(first);
    params.not_before = offset(now - HOUR)?;
    params.not_after = offset(now + days * DAY)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let dns: Vec<String> = domains.iter().map(|d| (*d).to_owned()).collect();
    params
        .custom_extensions
        .push(san_extension(&dns, &[], &[])?);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Extended key usages of a test leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eku {
    /// serverAuth and clientAuth (the classic s2s certificate).
    #[default]
    ServerAndClient,
    /// serverAuth only (Let's Encrypt from 2026).
    ServerOnly,
    /// clientAuth only.
    ClientOnly,
    /// No extended key usage extension (valid for any usage).
    None,
}

/// What a test leaf certificate holds.
#[derive(Clone, Debug, Default)]
pub struct LeafSpec {
    /// DNS-IDs, e.g. `a.test`, `*.a.test`.
    pub dns_names: Vec<String>,
    /// SRV-IDs in full, e.g. `_xmpp-server.a.test`.
    pub srv_ids: Vec<String>,
    /// XmppAddr values, e.g. `a.test`.
    pub xmpp_addrs: Vec<String>,
    /// Extended key usages.
    pub eku: Eku,
    /// Start of validity, unix seconds; default one hour ago.
    pub not_before: Option<i64>,
    /// End of validity, unix seconds; default in 90 days.
    pub not_after: Option<i64>,
    /// Subject CN; default the first DNS name, else the first XmppAddr, else
    /// `fedgate test leaf`. (Never used for name checks: RFC 9525.)
    pub common_name: Option<String>,
}

impl LeafSpec {
    /// A spec with these DNS-IDs and defaults otherwise.
    pub fn dns(names: &[&str]) -> Self {
        LeafSpec {
            dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
            ..LeafSpec::default()
        }
    }
}

/// A test certificate authority (root, or intermediate made with
/// [`intermediate`](TestCa::intermediate)).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// Certificates to append after a leaf issued by this CA (this CA when it is an
    /// intermediate, then its parents up to, not including, the root).
    chain_suffix: Vec<String>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("intermediates", &self.chain_suffix.len())
            .finish_non_exhaustive()
    }
}

fn ca_params(name: &str) -> Result<CertificateParams, CertError> {
    let now = unix_now();
    let mut params = CertificateParams::default();
    params.distinguished_name = cn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - DAY)?;
    params.not_after = offset(now + 3650 * DAY)?;
    Ok(params)
}

impl TestCa {
    /// A new self-signed root CA with subject CN `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> Result<Self, CertError> {
        let params = ca_params(name)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            chain_suffix: Vec::new(),
        })
    }

    /// An intermediate CA signed by this one; leaves it issues carry the intermediate(s) in
    /// their chain PEM.
    pub fn intermediate(&self, name: &str) -> Result<TestCa, CertError> {
        let params = ca_params(name)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_pem = cert.pem();
        let mut chain_suffix = vec![cert_pem.clone()];
        chain_suffix.extend(self.chain_suffix.iter().cloned());
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            chain_suffix,
        })
    }

    /// A root CA loaded from its certificate and key PEM, as [`new`](TestCa::new) (and
    /// `fedgate certs generate --ca`) writes them: the subject must be a single CN. The key
    /// must belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let certs = crate::pem::parse_certs(cert_pem.as_bytes(), "CA certificate PEM")?;
        let parsed = crate::names::parse_cert(&certs[0])
            .map_err(|f| CertError::Generate(format!("CA certificate: {}", f.detail)))?;
        if !parsed.is_ca() {
            return Err(CertError::Generate(
                "the CA certificate is not a CA (no basicConstraints cA)".to_owned(),
            ));
        }
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| CertError::Generate("the CA certificate has no CN".to_owned()))?
            .to_owned();
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| CertError::Generate(format!("CA key: {e}")))?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::Generate(
                "the CA key does not match the CA certificate".to_owned(),
            ));
        }
        let params = ca_params(&name)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert_pem.to_owned(),
            chain_suffix: Vec::new(),
        })
    }

    /// This CA's private key (PKCS#8 PEM), to keep beside [`cert_pem`](TestCa::cert_pem).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// This CA's certificate (PEM), to use as trust anchor (for a root).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issues a leaf: returns the chain PEM (leaf, then intermediates if this CA is one) and
    /// the PKCS#8 key PEM.
    pub fn issue(&self, spec: &LeafSpec) -> Result<(String, String), CertError> {
        let now = unix_now();
        let mut params = CertificateParams::default();
        let common_name = spec
            .common_name
            .clone()
            .or_else(|| spec.dns_names.first().cloned())
            .or_else(|| spec.xmpp_addrs.first().cloned())
            .unwrap_or_else(|| "fedgate test leaf".to_owned());
        params.distinguished_name = cn(&common_name);
        params.not_before = offset(spec.not_before.unwrap_or(now - HOUR))?;
        params.not_after = offset(spec.not_after.unwrap_or(now + 90 * DAY))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.eku {
            Eku::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Eku::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Eku::ClientOnly => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::None => Vec::new(),
        };
        params.use_authority_key_identifier_extension = true;
        if !(spec.dns_names.is_empty() && spec.srv_ids.is_empty() && spec.xmpp_addrs.is_empty()) {
            params.custom_extensions.push(san_extension(
                &spec.dns_names,
                &spec.srv_ids,
                &spec.xmpp_addrs,
            )?);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = cert.pem();
        for pem in &self.chain_suffix {
            chain.push_str(pem);
        }
        Ok((chain, key.serialize_pem()))
    }
}

/// The serial number of the first certificate of a PEM text (for a chain from
/// [`TestCa::issue`], the leaf's), as big-endian bytes (the DER INTEGER content), to pass to
/// [`TestCa::crl`].
pub fn serial_of(pem: &str) -> Result<Vec<u8>, CertError> {
    let certs = crate::pem::parse_certs(pem.as_bytes(), "certificate PEM")?;
    let parsed = crate::names::parse_cert(&certs[0])
        .map_err(|f| CertError::Generate(format!("certificate: {}", f.detail)))?;
    Ok(parsed.raw_serial().to_vec())
}

impl TestCa {
    /// A CRL (PEM) signed by this CA that revokes the certificates with these serial numbers
    /// (see [`serial_of`]; an empty list is a CRL that revokes nothing), issued now with its
    /// nextUpdate in seven days.
    pub fn crl(&self, revoked_serials: &[Vec<u8>]) -> Result<String, CertError> {
        let now = unix_now();
        self.crl_at(revoked_serials, now - HOUR, now + 7 * DAY)
    }

    /// Like [`crl`](TestCa::crl) with thisUpdate and nextUpdate given (unix seconds), e.g. for
    /// a CRL past its nextUpdate. Revocation times are thisUpdate.
    pub fn crl_at(
        &self,
        revoked_serials: &[Vec<u8>],
        this_update: i64,
        next_update: i64,
    ) -> Result<String, CertError> {
        let this_update = offset(this_update)?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update: offset(next_update)?,
            crl_number: SerialNumber::from(unix_now().max(1).to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn cn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn offset(secs: i64) -> Result<time::OffsetDateTime, CertError> {
    to_offset(secs).ok_or_else(|| CertError::Generate(format!("time out of range: {secs}")))
}

// --- hand-made DER for the subjectAltName extension -------------------------------------
//
// rcgen encodes otherName values as UTF8String only; an SRV-ID must be an IA5String (RFC 4985),
// so the whole extension is encoded here.

/// id-ce-subjectAltName 2.5.29.17
const OID_SAN: &[u64] = &[2, 5, 29, 17];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_oid(dotted: &str) -> Result<Vec<u8>, CertError> {
    let bad = || CertError::Generate(format!("bad OID {dotted}"));
    let arcs: Vec<u64> = dotted
        .split('.')
        .map(|a| a.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if arcs.len() < 2 || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] >= 40) {
        return Err(bad());
    }
    let mut body = Vec::new();
    let mut push_arc = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        body.extend_from_slice(&tmp);
    };
    push_arc(arcs[0] * 40 + arcs[1]);
    for &a in &arcs[2..] {
        push_arc(a);
    }
    Ok(der_tlv(0x06, &body))
}

fn ascii(kind: &str, s: &str) -> Result<(), CertError> {
    if s.is_ascii() && !s.is_empty() {
        Ok(())
    } else {
        Err(CertError::Generate(format!(
            "{kind} must be non-empty ASCII (IA5String): {s:?}"
        )))
    }
}

/// otherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY } as GeneralName [0].
fn other_name(oid: &str, string_tag: u8, value: &str) -> Result<Vec<u8>, CertError> {
    let mut body = der_oid(oid)?;
    body.extend(der_tlv(0xa0, &der_tlv(string_tag, value.as_bytes())));
    Ok(der_tlv(0xa0, &body))
}

fn san_extension(
    dns: &[String],
    srv: &[String],
    xmpp: &[String],
) -> Result<CustomExtension, CertError> {
    let mut names = Vec::new();
    for d in dns {
        ascii("DNS name", d)?;
        names.extend(der_tlv(0x82, d.as_bytes()));
    }
    for s in srv {
        ascii("SRV-ID", s)?;
        names.extend(other_name(OID_SRV_NAME, 0x16, s)?);
    }
    for x in xmpp {
        if x.is_empty() {
            return Err(CertError::Generate("empty XmppAddr".to_owned()));
        }
        names.extend(other_name(OID_XMPP_ADDR, 0x0c, x)?);
    }
    Ok(CustomExtension::from_oid_content(
        OID_SAN,
        der_tlv(0x30, &names),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_encoding() {
        assert_eq!(
            der_oid("1.3.6.1.5.5.7.8.7").unwrap(),
            [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07]
        );
        // multi-byte arc
        assert_eq!(
            der_oid("1.2.840.113549").unwrap(),
            [0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
        assert!(der_oid("1").is_err());
        assert!(der_oid("1.x").is_err());
    }

    #[test]
    fn long_length() {
        let v = der_tlv(0x04, &[0u8; 300]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(v.len(), 304);
    }

    #[test]
    fn self_signed_needs_a_domain() {
        assert!(matches!(self_signed(&[]), Err(CertError::Generate(_))));
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = TestCa::new("round trip CA").unwrap();
        let again = TestCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let (chain, _) = again.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let anchors = crate::TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap();
        let certs = crate::pem::parse_certs(chain.as_bytes(), "leaf").unwrap();
        crate::PeerVerifier::new(std::sync::Arc::new(anchors))
            .verify(&certs, "a.test", false, rustls_pki_types::UnixTime::now())
            .unwrap();
        let other = TestCa::new("other").unwrap();
        assert!(TestCa::from_pem(&ca.cert_pem(), &other.key_pem()).is_err());
        let (leaf, leaf_key) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        assert!(TestCa::from_pem(&leaf, &leaf_key).is_err());
    }

    #[test]
    fn non_ascii_dns_refused() {
        let ca = TestCa::new("ca").unwrap();
        assert!(ca.issue(&LeafSpec::dns(&["bücher.test"])).is_err());
    }
}
