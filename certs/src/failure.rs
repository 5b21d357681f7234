//! Typed failures of peer certificate checks.

use std::fmt;

/// The kind of a peer certificate failure; its [`as_str`](CertFailureKind::as_str) form is used
/// as a metric label, in logs, in stream-error text and in `fedgate probe` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertFailureKind {
    /// The peer presented no certificate.
    NoCertificate,
    /// The chain does not lead to a trust anchor (unknown issuer, bad signature, CA used as
    /// end entity, path constraints, an unusable CRL, ...).
    Chain,
    /// The chain is fine but the certificate does not name the domain.
    Name,
    /// A certificate of the chain has expired.
    Expired,
    /// A certificate of the chain is not valid yet.
    NotYetValid,
    /// The extended key usage does not allow the role the peer plays.
    Usage,
    /// The certificate could not be parsed.
    Malformed,
    /// The certificate, or an intermediate of its chain, is listed in a configured certificate
    /// revocation list of its issuer.
    Revoked,
}

impl CertFailureKind {
    /// All kinds, e.g. to pre-register metric label values.
    pub const ALL: [CertFailureKind; 8] = [
        CertFailureKind::NoCertificate,
        CertFailureKind::Chain,
        CertFailureKind::Name,
        CertFailureKind::Expired,
        CertFailureKind::NotYetValid,
        CertFailureKind::Usage,
        CertFailureKind::Malformed,
        CertFailureKind::Revoked,
    ];

    /// Stable short name: `no-certificate`, `cert-chain`, `cert-name`, `cert-expired`,
    /// `cert-not-yet-valid`, `cert-usage`, `cert-malformed`, `cert-revoked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CertFailureKind::NoCertificate => "no-certificate",
            CertFailureKind::Chain => "cert-chain",
            CertFailureKind::Name => "cert-name",
            CertFailureKind::Expired => "cert-expired",
            CertFailureKind::NotYetValid => "cert-not-yet-valid",
            CertFailureKind::Usage => "cert-usage",
            CertFailureKind::Malformed => "cert-malformed",
            CertFailureKind::Revoked => "cert-revoked",
        }
    }
}

impl fmt::Display for CertFailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer certificate failure: its kind and a human-readable detail.
///
/// Displays as `"<kind>: <detail>"`, e.g.
/// `cert-name: certificate is valid for a.test, *.b.test, not for c.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFailure {
    /// The kind (metric label).
    pub kind: CertFailureKind,
    /// What exactly failed.
    pub detail: String,
}

impl CertFailure {
    /// A failure of the given kind.
    pub fn new(kind: CertFailureKind, detail: impl Into<String>) -> Self {
        CertFailure {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for CertFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for CertFailure {}
