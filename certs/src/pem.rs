//! PEM and file helpers shared by identities and trust anchors.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::CertError;

/// Reads a whole file; the error names the path.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// All `CERTIFICATE` blocks of a PEM text, in order; other blocks are skipped.
/// At least one certificate is required.
pub(crate) fn parse_certs(
    pem_bytes: &[u8],
    source_name: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            source_name: source_name.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            source_name: source_name.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM text.
pub(crate) fn parse_key(
    pem_bytes: &[u8],
    source_name: &str,
) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::NoPrivateKey {
            source_name: source_name.to_owned(),
        },
        e => CertError::Pem {
            source_name: source_name.to_owned(),
            detail: e.to_string(),
        },
    })
}
