//! Peer certificate verification: chain against trust anchors, extended key usage, then the
//! XMPP name check (RFC 6120 §13.7.2, RFC 9525, RFC 7590, XEP-0178).

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use webpki::{
    EndEntityCert, ExpirationPolicy, KeyUsage, RevocationCheckDepth, RevocationOptionsBuilder,
    UnknownStatusPolicy,
};

use crate::clock::fmt_unix;
use crate::crl::{Crls, hex_serial};
use crate::failure::{CertFailure, CertFailureKind};
use crate::names::{NameMatch, match_entries, name_failure, parse_cert, san_entries};
use crate::provider::crypto_provider;
use crate::trust::TrustAnchors;

/// A peer whose chain and name were accepted.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    /// Which identifier matched the domain.
    pub matched: NameMatch,
    /// The earliest expiry of the leaf and the intermediates of the verified path, unix
    /// seconds: a long-lived stream should be closed then (RFC 6120 §13.7.2.3).
    pub not_after: i64,
}

/// Checks a peer's certificate chain and name for an XMPP domain (RFC 6125 / RFC 9525 /
/// RFC 7590 / XEP-0178).
///
/// The result decides whether SASL EXTERNAL may be offered or used; on failure the caller
/// falls back to dialback (XEP-0220) or closes the stream, and uses
/// [`CertFailureKind::as_str`] for the log, metric label and stream-error text.
#[derive(Debug, Clone)]
pub struct PeerVerifier {
    anchors: Arc<TrustAnchors>,
    strict_client_eku: bool,
    crls: Arc<Crls>,
}

#[derive(Clone, Copy)]
enum Eku {
    Server,
    Client,
}

impl Eku {
    fn usage(self) -> KeyUsage {
        match self {
            Eku::Server => KeyUsage::server_auth(),
            Eku::Client => KeyUsage::client_auth(),
        }
    }
}

impl PeerVerifier {
    /// A verifier against these anchors, tolerant of serverAuth-only certificates.
    pub fn new(anchors: Arc<TrustAnchors>) -> Self {
        PeerVerifier {
            anchors,
            strict_client_eku: false,
            crls: Arc::default(),
        }
    }

    /// Checks chains against these certificate revocation lists (replacing any set before);
    /// none (the default): no revocation checks.
    ///
    /// - Depth: the whole chain: the leaf and every intermediate is looked up in the CRL of its
    ///   issuer (the CRL's issuer name must equal the certificate's issuer name and the CRL's
    ///   signature must verify with the issuer's key, which must allow cRLSign when it has a key
    ///   usage extension).
    /// - A certificate whose issuer has no CRL here is *not* an error: CRLs are checked where
    ///   configured, and peers of other CAs pass as before.
    /// - nextUpdate is not enforced: a CRL past its nextUpdate still revokes every certificate it
    ///   lists and never blocks one it does not list. The files are read at start, and failing
    ///   every peer of a CA because a refresh was missed would be an outage out of proportion;
    ///   [`load_crls`](crate::load_crls) logs a warning for a stale CRL instead.
    ///
    /// A listed certificate fails with [`CertFailureKind::Revoked`]; a CRL that cannot be
    /// checked (bad signature, issuer without cRLSign) fails the chain with
    /// [`CertFailureKind::Chain`]. Load files with [`load_crls`](crate::load_crls), which
    /// refuses unusable CRLs; an unparsable DER given here directly is left out with an error
    /// log.
    pub fn with_crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.crls = Arc::new(Crls::parse(&crls));
        self
    }

    /// A verifier with other anchors and this one's other settings (extended key usage mode,
    /// CRLs), e.g. for per-partner trust anchors.
    pub fn with_anchors(&self, anchors: Arc<TrustAnchors>) -> Self {
        PeerVerifier {
            anchors,
            ..self.clone()
        }
    }

    /// Number of CRLs in use.
    pub fn crl_count(&self) -> usize {
        self.crls.0.len()
    }

    /// Default `false`: a certificate whose extended key usage allows serverAuth *or*
    /// clientAuth is accepted in either role, so initiating servers with serverAuth-only
    /// certificates (Let's Encrypt from 2026) are accepted, as Prosody and ejabberd do.
    /// `true` (private PKIs): the peer needs clientAuth when it is the TLS client and
    /// serverAuth when it is the TLS server.
    ///
    /// A certificate without an extended key usage extension is valid for every usage.
    pub fn strict_client_eku(mut self, on: bool) -> Self {
        self.strict_client_eku = on;
        self
    }

    /// The anchors used.
    pub fn anchors(&self) -> &Arc<TrustAnchors> {
        &self.anchors
    }

    /// Verifies `chain` (leaf first, then intermediates as the peer sent them) for `domain`.
    ///
    /// `peer_is_client`: true when the peer initiated the connection (it is the TLS client).
    /// The chain is verified against the anchors at `now` with the usage rules of
    /// [`strict_client_eku`](Self::strict_client_eku), then the name is checked with
    /// [`check_name`](crate::check_name) rules.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        domain: &str,
        peer_is_client: bool,
        now: UnixTime,
    ) -> Result<VerifiedPeer, CertFailure> {
        let Some(leaf) = chain.first() else {
            return Err(CertFailure::new(
                CertFailureKind::NoCertificate,
                "the peer presented no certificate",
            ));
        };
        let intermediates = &chain[1..];
        let ee = EndEntityCert::try_from(leaf).map_err(|e| map_webpki_error(&e, leaf))?;
        let usages: &[Eku] = match (self.strict_client_eku, peer_is_client) {
            (false, _) => &[Eku::Server, Eku::Client],
            (true, true) => &[Eku::Client],
            (true, false) => &[Eku::Server],
        };
        let algs = crypto_provider().signature_verification_algorithms.all;
        let anchors = self.anchors.as_webpki();
        let crl_refs: Vec<&webpki::CertRevocationList<'static>> = self.crls.0.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        let mut last_err = None;
        for eku in usages {
            match ee.verify_for_usage(
                algs,
                anchors,
                intermediates,
                now,
                eku.usage(),
                revocation,
                None,
            ) {
                Ok(path) => {
                    let mut not_after = leaf_not_after(leaf)?;
                    for cert in path.intermediate_certificates() {
                        if let Ok(parsed) = parse_cert(&cert.der()) {
                            not_after = not_after.min(parsed.validity().not_after.timestamp());
                        }
                    }
                    let parsed = parse_cert(leaf)?;
                    let entries = san_entries(&parsed)?;
                    let matched = match_entries(&entries, domain)
                        .ok_or_else(|| name_failure(&entries, domain))?;
                    return Ok(VerifiedPeer { matched, not_after });
                }
                Err(e) if is_eku_error(&e) => last_err = Some(e),
                Err(webpki::Error::CertRevoked) => {
                    return Err(self.revoked_failure(&ee, leaf, intermediates));
                }
                Err(e) => return Err(map_webpki_error(&e, leaf)),
            }
        }
        let e = last_err.unwrap_or(webpki::Error::UnknownIssuer);
        let mut failure = map_webpki_error(&e, leaf);
        if failure.kind == CertFailureKind::Usage {
            failure.detail = match (self.strict_client_eku, peer_is_client) {
                (false, _) => "certificate allows neither serverAuth nor clientAuth".to_owned(),
                (true, true) => {
                    "certificate lacks the clientAuth extended key usage (strict mode)".to_owned()
                }
                (true, false) => "certificate lacks the serverAuth extended key usage".to_owned(),
            };
        }
        Err(failure)
    }

    /// The failure for a chain that webpki found revoked: which certificate, by whose CRL.
    fn revoked_failure(
        &self,
        ee: &EndEntityCert<'_>,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> CertFailure {
        if let Some(entry) = self.listed(ee.issuer(), ee.serial()) {
            return CertFailure::new(
                CertFailureKind::Revoked,
                format!(
                    "certificate serial {} is revoked by the CRL of {}{entry}",
                    hex_serial(ee.serial()),
                    issuer_of(leaf)
                ),
            );
        }
        for ca in intermediates {
            let Ok(cert) = EndEntityCert::try_from(ca) else {
                continue;
            };
            if let Some(entry) = self.listed(cert.issuer(), cert.serial()) {
                let subject = parse_cert(ca)
                    .map(|c| c.subject().to_string())
                    .unwrap_or_else(|_| "?".to_owned());
                return CertFailure::new(
                    CertFailureKind::Revoked,
                    format!(
                        "intermediate CA {subject} (serial {}) is revoked by the CRL of {}{entry}",
                        hex_serial(cert.serial()),
                        issuer_of(ca)
                    ),
                );
            }
        }
        CertFailure::new(
            CertFailureKind::Revoked,
            "a certificate of the chain is revoked by a configured CRL",
        )
    }

    /// `" (revoked <date>, reason <reason>)"` when a CRL of `issuer` lists `serial`.
    fn listed(&self, issuer: &[u8], serial: &[u8]) -> Option<String> {
        self.crls
            .0
            .iter()
            .filter(|crl| crl.issuer() == issuer)
            .find_map(|crl| crl.find_serial(serial).ok().flatten())
            .map(|entry| {
                let date = fmt_unix(i64::try_from(entry.revocation_date.as_secs()).unwrap_or(0));
                match entry.reason_code {
                    Some(reason) => format!(" (revoked {date}, reason {reason:?})"),
                    None => format!(" (revoked {date})"),
                }
            })
    }
}

fn leaf_not_after(leaf: &CertificateDer<'_>) -> Result<i64, CertFailure> {
    Ok(parse_cert(leaf)?.validity().not_after.timestamp())
}

#[allow(deprecated)]
fn is_eku_error(e: &webpki::Error) -> bool {
    matches!(
        e,
        webpki::Error::RequiredEkuNotFound
            | webpki::Error::RequiredEkuNotFoundContext(_)
            | webpki::Error::EmptyEkuExtension
    )
}

fn issuer_of(leaf: &CertificateDer<'_>) -> String {
    parse_cert(leaf)
        .map(|c| c.issuer().to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Maps a webpki error to a failure kind with a readable detail.
#[allow(deprecated)]
fn map_webpki_error(e: &webpki::Error, leaf: &CertificateDer<'_>) -> CertFailure {
    use CertFailureKind as K;
    use webpki::Error as E;
    let secs = |t: &UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    let (kind, detail) = match e {
        E::CertExpired { time, not_after } => (
            K::Expired,
            format!(
                "certificate expired at {} (now {})",
                fmt_unix(secs(not_after)),
                fmt_unix(secs(time))
            ),
        ),
        E::CertNotValidYet { time, not_before } => (
            K::NotYetValid,
            format!(
                "certificate is not valid before {} (now {})",
                fmt_unix(secs(not_before)),
                fmt_unix(secs(time))
            ),
        ),
        E::UnknownIssuer => (
            K::Chain,
            format!(
                "certificate chain does not lead to a trusted anchor (issuer: {})",
                issuer_of(leaf)
            ),
        ),
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => (
            K::Usage,
            "extended key usage does not allow this role".to_owned(),
        ),
        E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::MalformedExtensions
        | E::MalformedDnsIdentifier
        | E::UnsupportedCertVersion
        | E::UnsupportedCriticalExtension
        | E::InvalidCertValidity
        | E::ExtensionValueInvalid
        | E::InvalidSerialNumber => (K::Malformed, format!("malformed certificate: {e}")),
        E::CertRevoked => (
            K::Revoked,
            "a certificate of the chain is revoked by a configured CRL".to_owned(),
        ),
        E::CrlExpired { .. }
        | E::InvalidCrlNumber
        | E::InvalidCrlSignatureForPublicKey
        | E::IssuerNotCrlSigner
        | E::UnknownRevocationStatus
        | E::UnsupportedCrlIssuingDistributionPoint
        | E::UnsupportedCrlVersion
        | E::UnsupportedDeltaCrl
        | E::UnsupportedIndirectCrl
        | E::UnsupportedRevocationReason
        | E::UnsupportedRevocationReasonsPartitioning
        | E::UnsupportedCrlSignatureAlgorithm
        | E::UnsupportedCrlSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithmForPublicKey
        | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => (
            K::Chain,
            format!("revocation check against the configured CRLs failed: {e}"),
        ),
        other => (K::Chain, format!("certificate chain rejected: {other}")),
    };
    CertFailure::new(kind, detail)
}
