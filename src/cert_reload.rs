//! Hot reload of own certificates: the cert/key files of every hosted domain are looked at
//! every `tls.reload_check_secs` (and on SIGHUP); a changed pair is validated with the same
//! check as `fedgate certs check` and swapped into the identity store only when it passes, so
//! new streams use it and open streams keep theirs. A refused pair leaves the old identity in
//! place; the refusal is logged (`fedgate::audit`, event `cert-refused`) and counted. The
//! expiry gauges follow whatever is in the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fedgate_certs::check::{CheckOptions, IdentityReport, check_identity_bytes, ymd};
use fedgate_certs::{IdentityStore, TrustAnchors, sha256_fingerprint};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::config::{Config, DomainConfig};

/// Size and modification time of a file (None when it cannot be read).
pub(crate) type FileStamp = Option<(SystemTime, u64)>;

/// What the pollers of watched files compare to see a change.
pub(crate) fn stamp(p: &Path) -> FileStamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A hosted domain whose identity comes from files.
#[derive(Debug, Clone)]
struct Watched {
    domain: String,
    aliases: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    self_signed: bool,
}

/// Watches, validates and swaps own certificates; owns the certificate metrics.
pub struct CertReloader {
    store: Arc<IdentityStore>,
    watched: Vec<Watched>,
    anchors: Arc<TrustAnchors>,
    min_days: i64,
    /// Last stamps seen per domain (cert, key).
    seen: Mutex<HashMap<String, (FileStamp, FileStamp)>>,
    reloads: IntCounterVec,
    expiry: IntGaugeVec,
}

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new identity is in use (SHA-256 fingerprint of the leaf).
    Loaded(String),
    /// The files hold the identity already in use.
    Unchanged,
    /// Refused; the old identity stays. The problems, one per line.
    Refused(Vec<String>),
}

fn watched(d: &DomainConfig) -> Option<Watched> {
    match (&d.cert, &d.key) {
        (Some(c), Some(k)) => Some(Watched {
            domain: d.name.clone(),
            aliases: d.aliases.clone(),
            cert: c.clone(),
            key: k.clone(),
            self_signed: d.self_signed,
        }),
        _ => None,
    }
}

impl CertReloader {
    /// Registers `fedgate_cert_reloads_total{domain,result}` and
    /// `fedgate_cert_expiry_seconds{domain}`, checks the identities loaded at start (problems
    /// are logged as warnings: the start itself does not refuse them) and sets the gauges.
    pub fn new(
        cfg: &Config,
        store: Arc<IdentityStore>,
        anchors: Arc<TrustAnchors>,
        registry: &Registry,
    ) -> Arc<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "fedgate_cert_reloads_total",
                "own certificate reloads by hosted domain and result (ok, refused)",
            ),
            &["domain", "result"],
        )
        .expect("valid metric");
        let expiry = IntGaugeVec::new(
            Opts::new(
                "fedgate_cert_expiry_seconds",
                "seconds until the own certificate of a hosted domain expires",
            ),
            &["domain"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(reloads.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(expiry.clone()))
            .expect("unique metric");
        let watched: Vec<Watched> = cfg.domains.iter().filter_map(watched).collect();
        let me = Arc::new(CertReloader {
            store,
            watched,
            anchors,
            min_days: cfg.tls.min_days,
            seen: Mutex::new(HashMap::new()),
            reloads,
            expiry,
        });
        for w in &me.watched {
            me.reloads.with_label_values(&[&w.domain, "ok"]);
            me.reloads.with_label_values(&[&w.domain, "refused"]);
            me.seen
                .lock()
                .expect("not poisoned")
                .insert(w.domain.clone(), (stamp(&w.cert), stamp(&w.key)));
            let report = me.check(w);
            if let Some(id) = me.store.get(&w.domain) {
                tracing::info!(
                    target: "fedgate::audit",
                    event = "cert-load",
                    domain = %w.domain,
                    file = %w.cert.display(),
                    sha256 = %sha256_fingerprint(id.leaf().as_ref()),
                    expires = %ymd(id.not_after),
                    trigger = "start",
                    "own certificate loaded"
                );
            }
            if !report.problems.is_empty() {
                tracing::warn!(
                    target: "fedgate::audit",
                    event = "cert-problem",
                    domain = %w.domain,
                    file = %w.cert.display(),
                    problems = %report.problems_text(),
                    "own certificate has problems (`fedgate certs check` shows them); a replacement must pass the check"
                );
            }
        }
        me.refresh_gauges();
        me
    }

    fn options(&self, w: &Watched) -> CheckOptions {
        CheckOptions {
            anchors: self.anchors.clone(),
            allow_self_signed: w.self_signed,
            min_days: self.min_days,
            now: fedgate_certs::unix_now(),
        }
    }

    fn check(&self, w: &Watched) -> IdentityReport {
        check_identity_bytes(
            &w.domain,
            &w.aliases,
            (&w.cert, std::fs::read(&w.cert)),
            (&w.key, std::fs::read(&w.key)),
            &self.options(w),
        )
    }

    /// Sets `fedgate_cert_expiry_seconds` from the identities in use.
    pub fn refresh_gauges(&self) {
        let now = fedgate_certs::unix_now();
        for id in self.store.identities() {
            self.expiry
                .with_label_values(&[&id.domain.to_ascii_lowercase()])
                .set(id.not_after - now);
        }
    }

    /// One look at the files: every domain whose cert or key file changed since the last look
    /// (and has been quiet for a moment, so a half-written pair is not judged) is reloaded.
    pub fn poll(&self) -> Vec<(String, ReloadOutcome)> {
        let mut out = Vec::new();
        for w in &self.watched {
            let now = (stamp(&w.cert), stamp(&w.key));
            let changed = self.seen.lock().expect("not poisoned").get(&w.domain) != Some(&now);
            if !changed {
                continue;
            }
            let quiet = [now.0, now.1].iter().all(|s| {
                s.is_none_or(|(t, _)| t.elapsed().unwrap_or_default() >= Duration::from_millis(200))
            });
            if !quiet {
                continue;
            }
            out.push((w.domain.clone(), self.reload(w, now, "file change")));
        }
        self.refresh_gauges();
        out
    }

    /// Reloads every file-based identity now (SIGHUP), changed or not.
    pub fn reload_all(&self, trigger: &str) -> Vec<(String, ReloadOutcome)> {
        let out = self
            .watched
            .iter()
            .map(|w| {
                let now = (stamp(&w.cert), stamp(&w.key));
                (w.domain.clone(), self.reload(w, now, trigger))
            })
            .collect();
        self.refresh_gauges();
        out
    }

    fn reload(&self, w: &Watched, stamps: (FileStamp, FileStamp), trigger: &str) -> ReloadOutcome {
        self.seen
            .lock()
            .expect("not poisoned")
            .insert(w.domain.clone(), stamps);
        let report = self.check(w);
        match report.identity {
            Some(id) if report.problems.is_empty() => {
                let current = self.store.get(&w.domain);
                if current.as_ref().is_some_and(|c| c.chain == id.chain) {
                    return ReloadOutcome::Unchanged;
                }
                let fp = sha256_fingerprint(id.leaf().as_ref());
                let expires = ymd(id.not_after);
                self.store.replace(id);
                self.reloads.with_label_values(&[&w.domain, "ok"]).inc();
                tracing::info!(
                    target: "fedgate::audit",
                    event = "cert-load",
                    domain = %w.domain,
                    file = %w.cert.display(),
                    sha256 = %fp,
                    expires = %expires,
                    trigger,
                    "own certificate replaced; new streams use it"
                );
                ReloadOutcome::Loaded(fp)
            }
            _ => {
                self.reloads
                    .with_label_values(&[&w.domain, "refused"])
                    .inc();
                let kept = self
                    .store
                    .get(&w.domain)
                    .map(|c| sha256_fingerprint(c.leaf().as_ref()))
                    .unwrap_or_default();
                tracing::error!(
                    target: "fedgate::audit",
                    event = "cert-refused",
                    domain = %w.domain,
                    file = %w.cert.display(),
                    key_file = %w.key.display(),
                    problems = %report.problems_text(),
                    kept_sha256 = %kept,
                    trigger,
                    "own certificate replacement refused; the previous one stays in use"
                );
                ReloadOutcome::Refused(report.problems.into_iter().map(|p| p.text).collect())
            }
        }
    }
}
