//! The one validation of an own identity (certificate chain and key files of a hosted domain),
//! used by `fedgate certs check` and by hot reload in the running gateway: files readable, PEM
//! parses, key matches the leaf, chain verifies against the anchors for serverAuth, the SANs
//! cover the domain and every alias, the leaf is valid now, and enough days are left.
//!
//! Problem texts are stable (tests and operators match on them); each starts with the domain.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::error::CertError;
use crate::failure::CertFailureKind;
use crate::identity::Identity;
use crate::names::{cert_names, check_name, parse_cert};
use crate::pem::{parse_certs, parse_key};
use crate::summary::{CertSummary, cert_summary};
use crate::trust::TrustAnchors;
use crate::verify::PeerVerifier;

const DAY: i64 = 86_400;

/// What kind of problem an own identity has.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A file cannot be read.
    File,
    /// A file holds no usable PEM certificate or key.
    Pem,
    /// The key does not belong to the leaf certificate, or cannot be used.
    Key,
    /// The chain does not verify against the anchors (for serverAuth), or is self-signed.
    Chain,
    /// The SANs do not cover the domain or an alias.
    Name,
    /// The leaf has expired.
    Expired,
    /// The leaf is not valid yet.
    NotYetValid,
    /// Fewer days left than the configured minimum.
    ExpiresSoon,
}

impl ProblemKind {
    /// Stable short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProblemKind::File => "file",
            ProblemKind::Pem => "pem",
            ProblemKind::Key => "key",
            ProblemKind::Chain => "chain",
            ProblemKind::Name => "name",
            ProblemKind::Expired => "expired",
            ProblemKind::NotYetValid => "not-yet-valid",
            ProblemKind::ExpiresSoon => "expires-soon",
        }
    }
}

/// One problem of an own identity; `text` is the full line, starting with the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub text: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How to judge an identity.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Anchors the chain must lead to (the same as for peers: system roots per config plus
    /// `tls.trust_anchors`).
    pub anchors: Arc<TrustAnchors>,
    /// Accept a self-signed leaf (development: `self_signed = true`).
    pub allow_self_signed: bool,
    /// Fewer whole days left than this is a problem.
    pub min_days: i64,
    /// The time to judge at, unix seconds.
    pub now: i64,
}

/// The result of [`check_identity`].
#[derive(Debug, Clone)]
pub struct IdentityReport {
    /// The hosted domain.
    pub domain: String,
    /// The loaded identity when files, PEM and key were fine (even if other problems exist).
    pub identity: Option<Identity>,
    /// A summary of the leaf when it could be parsed.
    pub summary: Option<CertSummary>,
    /// Every problem found; empty means the identity is fine.
    pub problems: Vec<Problem>,
    /// Whole days until the leaf expires (negative once expired), when known.
    pub days_left: Option<i64>,
}

impl IdentityReport {
    /// No problem at all.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.identity.is_some()
    }

    /// What `fedgate certs check` prints: one `domain: ok (…)` line, or one line per problem.
    pub fn lines(&self) -> Vec<String> {
        if !self.problems.is_empty() {
            return self.problems.iter().map(|p| p.text.clone()).collect();
        }
        match (&self.summary, self.days_left) {
            (Some(s), Some(days)) => vec![format!(
                "{}: ok ({}, issuer {}, expires {}, {} days, SANs {})",
                self.domain,
                s.subject,
                s.issuer,
                ymd(s.not_after),
                days,
                san_list(&s.names)
            )],
            _ => vec![format!("{}: ok", self.domain)],
        }
    }

    /// The problems joined with "; " (for one log field).
    pub fn problems_text(&self) -> String {
        self.problems
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `YYYY-MM-DD` (UTC) of a unix time.
pub fn ymd(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => format!("@{secs}"),
    }
}

fn san_list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// Checks the identity of `domain` in `cert_path` (chain, leaf first) and `key_path`.
/// Never fails: everything wrong is a [`Problem`] in the report.
pub fn check_identity(
    domain: &str,
    aliases: &[String],
    cert_path: &Path,
    key_path: &Path,
    opts: &CheckOptions,
) -> IdentityReport {
    let cert_bytes = std::fs::read(cert_path);
    let key_bytes = std::fs::read(key_path);
    check_identity_bytes(
        domain,
        aliases,
        (cert_path, cert_bytes),
        (key_path, key_bytes),
        opts,
    )
}

/// Like [`check_identity`] with the file contents already read (the reloader reads them once,
/// so what it checks is what it loads).
pub fn check_identity_bytes(
    domain: &str,
    aliases: &[String],
    cert: (&Path, std::io::Result<Vec<u8>>),
    key: (&Path, std::io::Result<Vec<u8>>),
    opts: &CheckOptions,
) -> IdentityReport {
    let (cert_path, cert_bytes) = cert;
    let (key_path, key_bytes) = key;
    let cp = cert_path.display().to_string();
    let kp = key_path.display().to_string();
    let mut report = IdentityReport {
        domain: domain.to_owned(),
        identity: None,
        summary: None,
        problems: Vec::new(),
        days_left: None,
    };
    let mut problems = Vec::new();
    let mut push = |kind: ProblemKind, text: String| problems.push(Problem { kind, text });

    let cert_bytes = match cert_bytes {
        Ok(b) => Some(b),
        Err(e) => {
            push(
                ProblemKind::File,
                format!("{domain}: cert {cp}: cannot read: {e}"),
            );
            None
        }
    };
    let key_bytes = match key_bytes {
        Ok(b) => Some(b),
        Err(e) => {
            push(
                ProblemKind::File,
                format!("{domain}: key {kp}: cannot read: {e}"),
            );
            None
        }
    };
    let chain = cert_bytes.as_ref().and_then(|b| match parse_certs(b, &cp) {
        Ok(c) => Some(c),
        Err(CertError::NoCertificate { .. }) => {
            push(
                ProblemKind::Pem,
                format!("{domain}: cert {cp}: no certificate in the file"),
            );
            None
        }
        Err(e) => {
            push(ProblemKind::Pem, format!("{domain}: cert {cp}: {e}"));
            None
        }
    });
    let key_ok = key_bytes.as_ref().is_some_and(|b| match parse_key(b, &kp) {
        Ok(_) => true,
        Err(CertError::NoPrivateKey { .. }) => {
            push(
                ProblemKind::Pem,
                format!("{domain}: key {kp}: no private key in the file"),
            );
            false
        }
        Err(e) => {
            push(ProblemKind::Pem, format!("{domain}: key {kp}: {e}"));
            false
        }
    });

    if let Some(chain) = &chain {
        let leaf = &chain[0];
        match cert_summary(leaf) {
            Ok(s) => {
                if key_ok && let (Some(c), Some(k)) = (&cert_bytes, &key_bytes) {
                    match Identity::from_pem_bytes(domain, c, &cp, k, &kp) {
                        Ok(id) => report.identity = Some(id),
                        Err(CertError::KeyMismatch { .. }) => push(
                            ProblemKind::Key,
                            format!(
                                "{domain}: cert {cp}: key does not match the certificate ({kp})"
                            ),
                        ),
                        Err(CertError::BadKey { detail, .. }) => push(
                            ProblemKind::Key,
                            format!("{domain}: key {kp}: unusable private key: {detail}"),
                        ),
                        Err(e) => push(ProblemKind::Pem, format!("{domain}: {e}")),
                    }
                }
                let (now, nb, na) = (opts.now, s.not_before, s.not_after);
                report.days_left = Some((na - now).div_euclid(DAY));
                if let Some(text) = chain_problem(domain, chain, &s, opts) {
                    push(ProblemKind::Chain, text);
                }
                let sans = san_list(&cert_names(leaf));
                if check_name(leaf, domain).is_err() {
                    push(
                        ProblemKind::Name,
                        format!("{domain}: SANs {sans} do not cover the domain"),
                    );
                }
                for alias in aliases {
                    if check_name(leaf, alias).is_err() {
                        push(
                            ProblemKind::Name,
                            format!("{domain}: SANs {sans} do not cover alias {alias}"),
                        );
                    }
                }
                if now >= na {
                    push(
                        ProblemKind::Expired,
                        format!(
                            "{domain}: expired on {} ({} days ago)",
                            ymd(na),
                            (now - na) / DAY
                        ),
                    );
                } else if now < nb {
                    push(
                        ProblemKind::NotYetValid,
                        format!("{domain}: not valid before {}", ymd(nb)),
                    );
                } else {
                    let days = (na - now) / DAY;
                    if days < opts.min_days {
                        push(
                            ProblemKind::ExpiresSoon,
                            format!(
                                "{domain}: expires in {days} days ({}), fewer than tls.min_days = {}",
                                ymd(na),
                                opts.min_days
                            ),
                        );
                    }
                }
                report.summary = Some(s);
            }
            Err(f) => push(
                ProblemKind::Pem,
                format!(
                    "{domain}: cert {cp}: cannot parse the certificate: {}",
                    f.detail
                ),
            ),
        }
    }
    report.problems = problems;
    report
}

/// The chain problem, if any, judged at a time inside the leaf's validity (expiry of the leaf
/// is its own problem).
fn chain_problem(
    domain: &str,
    chain: &[CertificateDer<'static>],
    leaf: &CertSummary,
    opts: &CheckOptions,
) -> Option<String> {
    let self_issued = parse_cert(&chain[0])
        .map(|c| c.subject().as_raw() == c.issuer().as_raw())
        .unwrap_or(false);
    let anchors = if opts.allow_self_signed && self_issued {
        let mut a = (*opts.anchors).clone();
        if let Err(e) = a.add_der(&chain[0], "the certificate itself") {
            return Some(format!("{domain}: chain: {e}"));
        }
        Arc::new(a)
    } else {
        opts.anchors.clone()
    };
    let at = opts.now.clamp(
        leaf.not_before,
        leaf.not_after.saturating_sub(1).max(leaf.not_before),
    );
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at).unwrap_or(0),
    ));
    let verifier = PeerVerifier::new(anchors).strict_client_eku(true);
    match verifier.verify(chain, domain, false, at) {
        Ok(_) => None,
        // The chain verified; names are judged separately (with the aliases).
        Err(f) if f.kind == CertFailureKind::Name => None,
        Err(f) if f.kind == CertFailureKind::Chain && chain.len() == 1 && self_issued => Some(
            format!("{domain}: chain: self-signed certificate, not issued by a trusted CA"),
        ),
        Err(f) => Some(format!("{domain}: chain: {}", f.detail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{LeafSpec, TestCa, self_signed};

    struct Lab {
        ca: TestCa,
        dir: std::path::PathBuf,
        anchors: Arc<TrustAnchors>,
    }

    fn lab(name: &str) -> Lab {
        let ca = TestCa::new("check CA").unwrap();
        let dir = std::env::temp_dir().join(format!("fedgate-check-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let anchors = Arc::new(TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap());
        Lab { ca, dir, anchors }
    }

    impl Lab {
        fn files(
            &self,
            file: &str,
            pem: &(String, String),
        ) -> (std::path::PathBuf, std::path::PathBuf) {
            let c = self.dir.join(format!("{file}.crt"));
            let k = self.dir.join(format!("{file}.key"));
            std::fs::write(&c, &pem.0).unwrap();
            std::fs::write(&k, &pem.1).unwrap();
            (c, k)
        }

        fn run(
            &self,
            domain: &str,
            aliases: &[&str],
            files: &(std::path::PathBuf, std::path::PathBuf),
            self_signed: bool,
        ) -> IdentityReport {
            let aliases: Vec<String> = aliases.iter().map(|a| (*a).to_owned()).collect();
            let opts = CheckOptions {
                anchors: self.anchors.clone(),
                allow_self_signed: self_signed,
                min_days: 7,
                now: crate::clock::unix_now(),
            };
            check_identity(domain, &aliases, &files.0, &files.1, &opts)
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn texts(r: &IdentityReport) -> Vec<String> {
        r.problems.iter().map(|p| p.text.clone()).collect()
    }

    #[test]
    fn good_identity_with_alias() {
        let l = lab("good");
        let f = l.files(
            "a",
            &l.ca
                .issue(&LeafSpec::dns(&["a.test", "conf.a.test"]))
                .unwrap(),
        );
        let r = l.run("a.test", &["conf.a.test"], &f, false);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert!(r.identity.is_some());
        let line = &r.lines()[0];
        assert!(
            line.starts_with("a.test: ok (CN=a.test, issuer CN=check CA, expires "),
            "{line}"
        );
        assert!(
            line.ends_with(", 89 days, SANs DNS:a.test, DNS:conf.a.test)")
                || line.ends_with(", 90 days, SANs DNS:a.test, DNS:conf.a.test)"),
            "{line}"
        );
    }

    #[test]
    fn each_problem_has_its_text() {
        let l = lab("bad");
        let now = crate::clock::unix_now();
        let good = l.ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let other = l.ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let d = l.dir.display();

        let f = l.files("mismatch", &(good.0.clone(), other.1.clone()));
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            [format!(
                "a.test: cert {d}/mismatch.crt: key does not match the certificate ({d}/mismatch.key)"
            )]
        );
        assert!(r.identity.is_none());

        let f = l.files("alias", &good);
        let r = l.run("a.test", &["muc.a.test"], &f, false);
        assert_eq!(
            texts(&r),
            ["a.test: SANs DNS:a.test do not cover alias muc.a.test"]
        );
        assert_eq!(r.problems[0].kind, ProblemKind::Name);
        let r = l.run("b.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            ["b.test: SANs DNS:a.test do not cover the domain"]
        );

        let expired =
            l.ca.issue(&LeafSpec {
                not_before: Some(now - 40 * DAY),
                not_after: Some(now - 3 * DAY - 60),
                ..LeafSpec::dns(&["a.test"])
            })
            .unwrap();
        let f = l.files("expired", &expired);
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            [format!(
                "a.test: expired on {} (3 days ago)",
                ymd(now - 3 * DAY - 60)
            )]
        );

        let soon =
            l.ca.issue(&LeafSpec {
                not_after: Some(now + 3 * DAY + 60),
                ..LeafSpec::dns(&["a.test"])
            })
            .unwrap();
        let f = l.files("soon", &soon);
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            [format!(
                "a.test: expires in 3 days ({}), fewer than tls.min_days = 7",
                ymd(now + 3 * DAY + 60)
            )]
        );
        assert!(r.identity.is_some());

        let later =
            l.ca.issue(&LeafSpec {
                not_before: Some(now + 2 * DAY),
                ..LeafSpec::dns(&["a.test"])
            })
            .unwrap();
        let f = l.files("later", &later);
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            [format!("a.test: not valid before {}", ymd(now + 2 * DAY))]
        );

        let selfie = self_signed(&["a.test"]).unwrap();
        let f = l.files("selfie", &selfie);
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            ["a.test: chain: self-signed certificate, not issued by a trusted CA"]
        );
        assert!(l.run("a.test", &[], &f, true).is_ok());

        let stranger = TestCa::new("stranger CA")
            .unwrap()
            .issue(&LeafSpec::dns(&["a.test"]))
            .unwrap();
        let f = l.files("stranger", &stranger);
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            [
                "a.test: chain: certificate chain does not lead to a trusted anchor (issuer: CN=stranger CA)"
            ]
        );

        let client_only =
            l.ca.issue(&LeafSpec {
                eku: crate::dev::Eku::ClientOnly,
                ..LeafSpec::dns(&["a.test"])
            })
            .unwrap();
        let f = l.files("client", &client_only);
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            ["a.test: chain: certificate lacks the serverAuth extended key usage"]
        );

        let missing = (l.dir.join("none.crt"), l.dir.join("none.key"));
        let r = l.run("a.test", &[], &missing, false);
        assert_eq!(
            texts(&r),
            [
                format!(
                    "a.test: cert {d}/none.crt: cannot read: No such file or directory (os error 2)"
                ),
                format!(
                    "a.test: key {d}/none.key: cannot read: No such file or directory (os error 2)"
                ),
            ]
        );
        assert_eq!(r.lines(), texts(&r));

        let f = l.files("swapped", &(good.1.clone(), good.0.clone()));
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(
            texts(&r),
            [
                format!("a.test: cert {d}/swapped.crt: no certificate in the file"),
                format!("a.test: key {d}/swapped.key: no private key in the file"),
            ]
        );
    }

    #[test]
    fn intermediate_chain_verifies() {
        let l = lab("inter");
        let inter = l.ca.intermediate("check intermediate").unwrap();
        let f = l.files("a", &inter.issue(&LeafSpec::dns(&["a.test"])).unwrap());
        let r = l.run("a.test", &[], &f, false);
        assert!(r.is_ok(), "{:?}", r.problems);
        // the leaf alone does not lead to the root
        let (chain, key) = inter.issue(&LeafSpec::dns(&["a.test"])).unwrap();
        let leaf_only = chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap()
            .to_owned();
        let f = l.files("b", &(leaf_only, key));
        let r = l.run("a.test", &[], &f, false);
        assert_eq!(r.problems[0].kind, ProblemKind::Chain);
        assert_eq!(
            r.problems[0].text,
            "a.test: chain: certificate chain does not lead to a trusted anchor (issuer: CN=check intermediate)"
        );
    }
}
