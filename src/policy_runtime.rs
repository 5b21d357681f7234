//! The policy in force: loaded from the policy file, swapped atomically on reload (file change or
//! SIGHUP), refused and kept when a new file does not check. It answers the stream layer
//! ([`Gatekeeper`]) and the router (per-stanza decisions, rate limits), runs an optional
//! candidate file in shadow mode, counts denials by rule and writes audit lines
//! (`target: "fedgate::audit"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fedgate_certs::{PeerVerifier, TrustAnchors};
use fedgate_policy::{Decision, Diagnostic, Direction, Kind, Policy, Request, Shadow, TlsFloor};
use fedgate_s2s::gate::{CertMethods, Floor, Gatekeeper};
use fedgate_s2s::inbound::AuthMethods;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

struct Metrics {
    reloads: IntCounterVec,
    denials: IntCounterVec,
    shadow_diff: IntCounterVec,
    rate_limited: IntCounterVec,
    rules: IntGauge,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let rules = IntGauge::new("fedgate_policy_rules", "Rules in the active policy")
            .expect("valid metric");
        r.register(Box::new(rules.clone())).expect("unique metric");
        Self {
            reloads: counter(
                "fedgate_policy_reloads_total",
                "Policy loads by file and result",
                &["file", "result"],
            ),
            denials: counter(
                "fedgate_policy_denials_total",
                "Denials by rule, direction and kind",
                &["rule", "direction", "kind"],
            ),
            shadow_diff: counter(
                "fedgate_policy_shadow_diff_total",
                "Decisions where the shadow policy differs from the active one",
                &["active", "shadow"],
            ),
            rate_limited: counter(
                "fedgate_policy_rate_limited_total",
                "Stanzas refused by a rate limit",
                &["direction"],
            ),
            rules,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// The rate and burst it was last used with.
    per_second: f64,
    burst: u32,
}

impl Bucket {
    /// Whether it has refilled by `now`: forgetting it then changes nothing.
    fn full(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second
            >= f64::from(self.burst)
    }
}

/// Past this many buckets, the ones that have refilled are forgotten (never one that has not:
/// that would lift a limit). Buckets live only while they refill, so the map stays small.
const MAX_BUCKETS: usize = 100_000;

pub struct PolicyRuntime {
    active: ArcSwap<Policy>,
    shadow: Option<ArcSwap<Shadow>>,
    file: Option<PathBuf>,
    shadow_file: Option<PathBuf>,
    /// The global floor from the config, for what the policy does not set.
    defaults: Floor,
    metrics: Metrics,
    buckets: Mutex<HashMap<(String, bool), Bucket>>,
    /// Verifiers for per-partner trust anchors, by anchor files (emptied on reload).
    partner_verifiers: Mutex<HashMap<Vec<PathBuf>, Option<Arc<PeerVerifier>>>>,
    /// Builds a verifier from anchors with the gateway's other settings (EKU, CRLs).
    verifier_builder: std::sync::OnceLock<VerifierBuilder>,
    /// Domains configured as SIP partners (`[[sip.partners]]`).
    sip_partners: std::sync::OnceLock<std::collections::HashSet<String>>,
    /// The cluster's shared buckets (`[cluster]`): `rate` holds for the cluster as a whole.
    cluster_rate: std::sync::OnceLock<Arc<dyn crate::cluster::SharedRate>>,
}

/// How the gateway turns trust anchors into a peer verifier.
pub type VerifierBuilder = Box<dyn Fn(Arc<TrustAnchors>) -> PeerVerifier + Send + Sync>;

/// Diagnostics as lines `file:line:column: severity: message`.
pub fn render_diagnostics(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn load_file(path: &Path) -> Result<(Policy, Vec<Diagnostic>), String> {
    match Policy::load(path) {
        Ok((p, warnings)) => {
            for w in &warnings {
                tracing::warn!(target: "fedgate::audit", diagnostic = %w, "policy warning");
            }
            Ok((p, warnings))
        }
        Err(d) => Err(render_diagnostics(&d)),
    }
}

impl PolicyRuntime {
    /// Load the configured files. A file that does not check stops the start (the operator
    /// sees every diagnostic).
    pub fn start(
        file: Option<PathBuf>,
        shadow_file: Option<PathBuf>,
        defaults: Floor,
        registry: &Registry,
    ) -> Result<Arc<Self>, String> {
        let metrics = Metrics::new(registry);
        let (active, active_warnings) = match &file {
            Some(f) => load_file(f)?,
            None => (Policy::allow_all(), Vec::new()),
        };
        let (shadow, shadow_warnings) = match &shadow_file {
            Some(f) => {
                let (p, w) = load_file(f)?;
                (Some(ArcSwap::from_pointee(Shadow::new(p))), w)
            }
            None => (None, Vec::new()),
        };
        let rt = Arc::new(Self {
            active: ArcSwap::from_pointee(active),
            shadow,
            file,
            shadow_file,
            defaults,
            metrics,
            buckets: Mutex::new(HashMap::new()),
            partner_verifiers: Mutex::new(HashMap::new()),
            verifier_builder: std::sync::OnceLock::new(),
            sip_partners: std::sync::OnceLock::new(),
            cluster_rate: std::sync::OnceLock::new(),
        });
        rt.loaded("active", &rt.active.load(), &active_warnings, "start");
        if let Some(s) = &rt.shadow {
            rt.loaded("shadow", s.load().candidate(), &shadow_warnings, "start");
        }
        Ok(rt)
    }

    fn loaded(&self, which: &str, p: &Policy, warnings: &[Diagnostic], why: &str) {
        self.metrics.reloads.with_label_values(&[which, "ok"]).inc();
        if which == "active" {
            self.metrics.rules.set(p.rule_count() as i64);
        }
        fedgate_policy::log_load(p, &format!("{which} policy ({why})"), warnings);
    }

    /// How per-partner verifiers are built (set once by the gateway).
    pub fn set_verifier_builder(&self, b: VerifierBuilder) {
        let _ = self.verifier_builder.set(b);
    }

    /// Rate limits from now on hold for the cluster as a whole (set once, at start).
    pub fn set_cluster_rate(&self, shared: Arc<dyn crate::cluster::SharedRate>) {
        let _ = self.cluster_rate.set(shared);
    }

    pub fn set_sip_partners(&self, partners: std::collections::HashSet<String>) {
        let _ = self.sip_partners.set(partners);
    }

    /// Whether `domain` federates over SIP: a configured SIP partner, or `protocol = "sip"`
    /// in the policy.
    pub fn is_sip_domain(&self, domain: &str) -> bool {
        self.sip_partners.get().is_some_and(|p| p.contains(domain))
            || self
                .settings(domain, Direction::Inbound)
                .protocol
                .as_deref()
                == Some("sip")
    }

    pub fn active(&self) -> Arc<Policy> {
        self.active.load_full()
    }

    /// Re-read the files; a file that does not check is refused and the old policy stays.
    /// Returns the errors of refused files.
    pub fn reload(&self, why: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(file) = &self.file {
            let current = self.active.load().revision().to_owned();
            match self.reload_file("active", file, &current, why) {
                Ok(Some(p)) => self.active.store(Arc::new(p)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if let (Some(file), Some(slot)) = (&self.shadow_file, &self.shadow) {
            let current = slot.load().candidate().revision().to_owned();
            match self.reload_file("shadow", file, &current, why) {
                Ok(Some(p)) => slot.store(Arc::new(Shadow::new(p))),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Reads one policy file: `Ok(Some)` when it changed and checks, `Ok(None)` when it is
    /// unchanged, `Err` (logged and counted) when it does not check.
    fn reload_file(
        &self,
        which: &str,
        file: &Path,
        current: &str,
        why: &str,
    ) -> Result<Option<Policy>, String> {
        match load_file(file) {
            Ok((p, warnings)) if p.revision() != current => {
                self.loaded(which, &p, &warnings, why);
                self.partner_verifiers
                    .lock()
                    .expect("verifiers lock")
                    .clear();
                Ok(Some(p))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                self.metrics
                    .reloads
                    .with_label_values(&[which, "refused"])
                    .inc();
                tracing::error!(
                    target: "fedgate::audit",
                    event = "policy-refused",
                    which,
                    file = %file.display(),
                    kept_revision = current,
                    trigger = why,
                    errors = %e,
                    "policy file refused; the previous policy stays in force"
                );
                Err(e)
            }
        }
    }

    /// The files to watch.
    pub fn files(&self) -> Vec<PathBuf> {
        self.file
            .iter()
            .chain(self.shadow_file.iter())
            .cloned()
            .collect()
    }

    /// Decide one request: `None` when allowed, else the explained denial. Denials are
    /// counted by rule and audited; shadow differences are counted and logged. The reason text
    /// is only built for denials and differences (the hot path allocates nothing).
    pub fn decide(
        &self,
        remote: &str,
        local: &str,
        kind: Kind,
        direction: Direction,
    ) -> Option<Decision> {
        let req = Request {
            remote,
            local,
            kind,
            direction,
        };
        let active = self.active.load();
        let fast = active.decide_fast(&req);
        if let Some(shadow) = &self.shadow {
            // The shadow logs its differences; the counter is by outcome.
            let s = shadow.load().observe(&req, fast);
            if s.allow != fast.allow {
                let label = |x: bool| if x { "allow" } else { "deny" };
                self.metrics
                    .shadow_diff
                    .with_label_values(&[label(fast.allow), label(s.allow)])
                    .inc();
            }
        }
        if fast.allow {
            return None;
        }
        let d = active.explain(&req);
        let rule = d.rule.as_ref().map_or("default", |r| r.id.as_str());
        self.metrics
            .denials
            .with_label_values(&[rule, direction.as_str(), kind.as_str()])
            .inc();
        fedgate_policy::log_decision(&active, &req, &d);
        Some(d)
    }

    /// The transport, authentication and limits the policy sets for a remote domain, for the
    /// per-stanza checks (computed once per stanza).
    pub fn settings(
        &self,
        remote_domain: &str,
        direction: Direction,
    ) -> fedgate_policy::DomainSettings {
        self.active.load().domain_settings(remote_domain, direction)
    }

    /// Token bucket per remote domain and direction; `Err` names the limit.
    pub fn rate_check(
        &self,
        remote_domain: &str,
        direction: Direction,
        settings: &fedgate_policy::DomainSettings,
    ) -> Result<(), String> {
        let Some((per_second, burst)) = settings.rate else {
            return Ok(());
        };
        let inbound = direction == Direction::Inbound;
        // In a cluster the shared bucket decides; while its store is unreachable, this node's
        // share of the limit does, in the local bucket below.
        use crate::cluster::RateVerdict;
        let (per_second, burst) = match self.cluster_rate.get() {
            None => (per_second, burst),
            Some(c) => match c.take(remote_domain, inbound, per_second, burst) {
                RateVerdict::Allowed => return Ok(()),
                RateVerdict::Refused => {
                    return Err(self.rate_limited(remote_domain, direction, settings));
                }
                RateVerdict::PerNode { per_second, burst } => (per_second, burst),
            },
        };
        let mut b = self.buckets.lock().expect("buckets lock");
        let now = Instant::now();
        if b.len() >= MAX_BUCKETS {
            b.retain(|_, v| !v.full(now));
        }
        let e = b
            .entry((remote_domain.to_owned(), inbound))
            .or_insert(Bucket {
                tokens: f64::from(burst),
                at: now,
                per_second,
                burst,
            });
        (e.per_second, e.burst) = (per_second, burst);
        e.tokens =
            (e.tokens + now.duration_since(e.at).as_secs_f64() * per_second).min(f64::from(burst));
        e.at = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            Ok(())
        } else {
            drop(b);
            Err(self.rate_limited(remote_domain, direction, settings))
        }
    }

    /// Counts a refusal by a rate limit and says which (the policy's limit, also when a
    /// node's share of a cluster's limit refused it).
    fn rate_limited(
        &self,
        remote_domain: &str,
        direction: Direction,
        settings: &fedgate_policy::DomainSettings,
    ) -> String {
        self.metrics
            .rate_limited
            .with_label_values(&[direction.as_str()])
            .inc();
        let (per_second, burst) = settings.rate.unwrap_or_default();
        format!(
            "limit: {remote_domain} exceeds {per_second} stanzas/s (burst {burst}){}",
            settings
                .rule
                .as_ref()
                .map(|r| format!(" set by rule {} (line {})", r.id, r.line))
                .unwrap_or_default()
        )
    }
}

fn dir(inbound: bool) -> Direction {
    if inbound {
        Direction::Inbound
    } else {
        Direction::Outbound
    }
}

impl Gatekeeper for PolicyRuntime {
    fn admit(&self, remote: &str, local: &str, inbound: bool) -> Result<(), String> {
        if inbound && self.is_sip_domain(remote) {
            // A domain is never reached over both protocols.
            return Err(format!(
                "policy: {remote} federates over SIP here, not XMPP"
            ));
        }
        let Some(d) = self.decide(remote, local, Kind::Stream, dir(inbound)) else {
            return Ok(());
        };
        Err(match d.rule {
            Some(r) => format!(
                "policy: rule {} (line {}) denies federation with {remote}",
                r.id, r.line
            ),
            None => format!("policy: the default denies federation with {remote}"),
        })
    }

    fn floor(&self, remote: &str, inbound: bool) -> Floor {
        let s = self.active.load().domain_settings(remote, dir(inbound));
        let d = &self.defaults;
        Floor {
            tls_required: s.tls.map_or(d.tls_required, |t| t == TlsFloor::Required),
            auth: AuthMethods {
                certificate: s.auth_certificate.unwrap_or(d.auth.certificate),
                dialback: s.auth_dialback.unwrap_or(d.auth.dialback),
            },
            pins: s.pins,
            max_streams: s.max_streams,
            rule: s.rule.map(|r| format!("{} (line {})", r.id, r.line)),
        }
    }

    fn verifier(&self, remote: &str) -> Option<Arc<PeerVerifier>> {
        let files = self
            .active
            .load()
            .domain_settings(remote, Direction::Inbound)
            .trust_anchors;
        if files.is_empty() {
            return None;
        }
        let mut cache = self.partner_verifiers.lock().expect("verifiers lock");
        if let Some(v) = cache.get(&files) {
            return v.clone();
        }
        let v = match TrustAnchors::new(false, &files) {
            Ok(a) => {
                let a = Arc::new(a);
                Some(Arc::new(match self.verifier_builder.get() {
                    Some(build) => build(a),
                    None => PeerVerifier::new(a),
                }))
            }
            Err(e) => {
                // The policy checked the files when it loaded; they changed since. Trust
                // nothing for the domain rather than falling back to the global anchors.
                tracing::error!(target: "fedgate::audit", event = "partner-anchors-unreadable", %remote, error = %e, "per-partner trust anchors cannot be loaded");
                Some(Arc::new(PeerVerifier::new(Arc::new(TrustAnchors::empty()))))
            }
        };
        cache.insert(files, v.clone());
        v
    }

    fn cert_methods(&self, remote: &str, inbound: bool) -> CertMethods {
        match self
            .active
            .load()
            .domain_settings(remote, dir(inbound))
            .auth_cert_methods
        {
            Some((pkix, dane, posh)) => CertMethods { pkix, dane, posh },
            None => CertMethods::ALL,
        }
    }
}

/// Watch the policy files and reload on change (editors replace files, so the parent
/// directories are watched and events filtered by name); debounced.
pub fn watch(rt: Arc<PolicyRuntime>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let files = rt.files();
    if files.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let names: Vec<PathBuf> = files.clone();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev
                .paths
                .iter()
                .any(|p| names.iter().any(|n| p.file_name() == n.file_name()))
        {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch policy files; reload with SIGHUP");
            return None;
        }
    };
    for f in &files {
        let dir = f
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch policy directory; reload with SIGHUP");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let the editor finish writing, then take everything that piled up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let _ = rt.reload("file-change");
        }
    });
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refilled_buckets_may_be_forgotten() {
        let t0 = Instant::now();
        // 0.01 stanzas/s, burst 1, just used: empty for 100 s.
        let b = Bucket {
            tokens: 0.0,
            at: t0,
            per_second: 0.01,
            burst: 1,
        };
        assert!(
            !b.full(t0 + Duration::from_secs(60)),
            "forgetting it would lift the limit"
        );
        assert!(b.full(t0 + Duration::from_secs(100)));
    }
}
