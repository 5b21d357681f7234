//! A throw-away PKI for labs, the demo, benchmarks and tests: a test CA and leaf certificates
//! written as PEM files into a temporary directory that gateways can load.

use std::path::PathBuf;

use fedgate_certs::dev::{LeafSpec, TestCa};

pub struct LabPki {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl LabPki {
    /// A new CA named `name`; its certificate is written to `ca.pem`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let ca = TestCa::new(name)?;
        let dir = tempfile::Builder::new().prefix("fedgate-pki").tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem())?;
        Ok(Self { ca, dir })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issue a leaf for `spec`, written to `<file>.crt` / `<file>.key`.
    pub fn issue(&self, file: &str, spec: &LeafSpec) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (c, k) = self.ca.issue(spec)?;
        let cp = self.dir.path().join(format!("{file}.crt"));
        let kp = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cp, c)?;
        std::fs::write(&kp, k)?;
        Ok((cp, kp))
    }
}
