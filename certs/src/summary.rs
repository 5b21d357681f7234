//! A readable summary of one certificate (for `fedgate probe`, `fedgate certs`, logs).

use rustls_pki_types::CertificateDer;

use crate::failure::CertFailure;
use crate::names::{SanEntry, parse_cert, san_entries};

/// What `fedgate probe` and `fedgate certs` show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject distinguished name (RFC 4514-like text).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// subjectAltName entries as [`cert_names`](crate::cert_names) formats them.
    pub names: Vec<String>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER certificate, uppercase hex pairs separated by colons.
    pub sha256_fingerprint: String,
}

/// Summarizes a certificate; fails with kind `cert-malformed` when it cannot be parsed.
pub fn cert_summary(cert: &CertificateDer<'_>) -> Result<CertSummary, CertFailure> {
    let parsed = parse_cert(cert)?;
    let names = san_entries(&parsed)?
        .iter()
        .map(SanEntry::display)
        .collect();
    Ok(CertSummary {
        subject: parsed.subject().to_string(),
        issuer: parsed.issuer().to_string(),
        names,
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
        sha256_fingerprint: sha256_fingerprint(cert.as_ref()),
    })
}

/// SHA-256 of `der` as `AB:CD:…`.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
