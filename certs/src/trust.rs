//! Trust anchors for peer certificate chains.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::error::CertError;
use crate::pem::{parse_certs, read_file};

/// Where Debian (and Ubuntu) keep the system CA bundle.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Trust anchors: optionally the system bundle plus extra anchor PEM files (a partner's root CA
/// or a pinned self-signed partner certificate).
#[derive(Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("len", &self.anchors.len())
            .finish()
    }
}

impl TrustAnchors {
    /// Builds the anchors: the system bundle at [`SYSTEM_BUNDLE`] when `system` is true and the
    /// file exists (unusable certificates in it are skipped with a warning; a missing bundle is
    /// only a warning), plus every certificate of each extra PEM file (each must hold at least
    /// one, and all must be usable: errors name the file).
    pub fn new(system: bool, extra_pem_files: &[PathBuf]) -> Result<Self, CertError> {
        let mut out = TrustAnchors::empty();
        if system {
            out.add_system_bundle(Path::new(SYSTEM_BUNDLE))?;
        }
        for path in extra_pem_files {
            let bytes = read_file(path)?;
            out.add_pem(&bytes, &path.display().to_string())?;
        }
        Ok(out)
    }

    /// Anchors from PEM texts; each text may hold several certificates and must hold one.
    pub fn from_pem_certs(pems: &[&str]) -> Result<Self, CertError> {
        let mut out = TrustAnchors::empty();
        for (i, pem) in pems.iter().enumerate() {
            out.add_pem(pem.as_bytes(), &format!("anchor PEM #{i}"))?;
        }
        Ok(out)
    }

    /// No anchors: every chain fails with `cert-chain` (dialback only).
    pub fn empty() -> Self {
        TrustAnchors::default()
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Adds one DER certificate as anchor.
    pub fn add_der(
        &mut self,
        cert: &CertificateDer<'_>,
        source_name: &str,
    ) -> Result<(), CertError> {
        let anchor = webpki::anchor_from_trusted_cert(cert).map_err(|e| CertError::Anchor {
            source_name: source_name.to_owned(),
            detail: e.to_string(),
        })?;
        self.anchors.push(anchor.to_owned());
        Ok(())
    }

    /// Adds every certificate of a PEM text (at least one is required).
    pub fn add_pem(&mut self, pem: &[u8], source_name: &str) -> Result<(), CertError> {
        for cert in parse_certs(pem, source_name)? {
            self.add_der(&cert, source_name)?;
        }
        Ok(())
    }

    fn add_system_bundle(&mut self, path: &Path) -> Result<(), CertError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "system CA bundle not found, not used");
                return Ok(());
            }
            Err(source) => {
                return Err(CertError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let (mut added, mut skipped) = (0usize, 0usize);
        for item in CertificateDer::pem_slice_iter(&bytes) {
            let der = match item {
                Ok(der) => der,
                Err(e) => {
                    // A PEM syntax error may not advance the reader: stop here.
                    tracing::warn!(path = %path.display(), error = %e, "bad PEM in system CA bundle, rest skipped");
                    break;
                }
            };
            match webpki::anchor_from_trusted_cert(&der) {
                Ok(anchor) => {
                    self.anchors.push(anchor.to_owned());
                    added += 1;
                }
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "unusable certificates in system CA bundle skipped");
        }
        tracing::debug!(path = %path.display(), added, "system CA bundle loaded");
        Ok(())
    }

    /// The anchors in webpki form.
    pub(crate) fn as_webpki(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}
