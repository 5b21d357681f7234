//! Errors of loading and generating certificates and keys.

use std::path::PathBuf;

/// Why an own identity, a trust anchor file or a generated certificate could not be produced.
///
/// Failures of *peer* certificates are not errors of this kind: they are
/// [`CertFailure`](crate::CertFailure) values with a [`CertFailureKind`](crate::CertFailureKind).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text could not be decoded.
    #[error("bad PEM in {source_name}: {detail}")]
    Pem {
        /// File path or description of where the PEM came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// The PEM holds no certificate.
    #[error("no certificate in {source_name}")]
    NoCertificate {
        /// File path or description of where the PEM came from.
        source_name: String,
    },
    /// The PEM holds no private key.
    #[error("no private key in {source_name}")]
    NoPrivateKey {
        /// File path or description of where the PEM came from.
        source_name: String,
    },
    /// The private key is of a kind the crypto provider cannot use.
    #[error("unusable private key in {source_name}: {detail}")]
    BadKey {
        /// File path or description of where the PEM came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the certificate of {domain}")]
    KeyMismatch {
        /// The hosted domain of the identity.
        domain: String,
    },
    /// A certificate could not be parsed.
    #[error("bad certificate in {source_name}: {detail}")]
    BadCertificate {
        /// File path or description of where the certificate came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// A certificate cannot be used as a trust anchor.
    #[error("cannot use certificate from {source_name} as trust anchor: {detail}")]
    Anchor {
        /// File path or description of where the certificate came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// A certificate revocation list could not be read or is not usable.
    #[error("bad CRL in {source_name}: {detail}")]
    Crl {
        /// File path or description of where the CRL came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// Invalid input to certificate generation (dev and test certificates).
    #[error("cannot generate certificate: {0}")]
    Generate(String),
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e.to_string())
    }
}
