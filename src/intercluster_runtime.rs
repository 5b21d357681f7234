//! Intercluster peering in the gateway: the `[intercluster]` config section, starting the
//! links (`fedgate_intercluster::driver`), the user sources (directory file, LDAP, admin
//! assignments), the peers file watched for runtime changes, the consistency digest renewed
//! when the policy is reloaded, the router's host side (local delivery, bounces) and the
//! `/intercluster/…` admin endpoints that `fedgate directory` uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fedgate_certs::Identity;
use fedgate_intercluster::driver::{Host, Intercluster, PeerConfig, Settings, consistency_digest};
use fedgate_intercluster::ldap_source::LdapSourceConfig;
use fedgate_intercluster::session::OnMismatch;
use fedgate_intercluster::sources::ADMIN;
use fedgate_s2s::driver::{S2sContext, Stanza};
use fedgate_s2s::wire::ErrorType;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::cert_reload::stamp;
use crate::config::Config;

fn default_listen() -> Option<String> {
    Some("0.0.0.0:7400".into())
}
fn default_scheme() -> String {
    "bare-jid".into()
}
fn default_on_mismatch() -> OnMismatch {
    OnMismatch::Refuse
}

/// `[intercluster]`: this cluster's name, its link listener and identity, its peers, where its
/// own users come from, and the link timers and queue limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterclusterConfig {
    /// This cluster's name (peers find it in the certificate's subjectAltName).
    pub cluster: String,
    /// Link listener (default 0.0.0.0:7400).
    #[serde(default = "default_listen")]
    pub listen: Option<String>,
    /// The cluster identity (PEM chain and key); absent: the first hosted domain's files, whose
    /// certificate must then name the cluster too.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Static peers.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// More peers, in a TOML file (`[[peers]] name = … address = …`) watched for changes:
    /// peers are added and removed at runtime from it.
    pub peers_file: Option<PathBuf>,
    /// This cluster's users, one bare JID per line (optionally an epoch), watched for changes.
    pub directory_file: Option<PathBuf>,
    /// Where admin assignments (`fedgate directory assign`) are kept across restarts, in the
    /// directory file format; the gateway rewrites it atomically on every change. Without it,
    /// assignments last until the gateway stops.
    pub assignments_file: Option<PathBuf>,
    /// LDAP source of this cluster's users, polled every `ldap_poll_secs`.
    pub ldap: Option<LdapSourceConfig>,
    #[serde(default = "ldap_poll")]
    pub ldap_poll_secs: u64,
    /// "refuse" (default) or "flag" when a peer's consistency digest differs.
    #[serde(default = "default_on_mismatch")]
    pub on_mismatch: OnMismatch,
    /// The IM address scheme, part of the consistency digest (all clusters must agree).
    #[serde(default = "default_scheme")]
    pub address_scheme: String,
    /// Bytes of stanzas queued per peer while its link is down; also the most bytes sent and
    /// not yet acknowledged by the peer.
    #[serde(default = "queue_bytes")]
    pub queue_max_bytes: usize,
    /// Longest wait of a queued (or sent and unacknowledged) stanza for a link before it
    /// bounces with remote-server-timeout.
    #[serde(default = "queue_secs")]
    pub queue_max_secs: u64,
    #[serde(default = "heartbeat")]
    pub heartbeat_secs: u64,
    /// A link without any traffic for this long is dead.
    #[serde(default = "timeout")]
    pub timeout_secs: u64,
    /// Anti-entropy digest interval.
    #[serde(default = "digest")]
    pub digest_secs: u64,
    #[serde(default = "connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "backoff_min")]
    pub backoff_min_ms: u64,
    #[serde(default = "backoff_max")]
    pub backoff_max_ms: u64,
    /// How often the directory and peers files are checked for changes.
    #[serde(default = "watch")]
    pub watch_ms: u64,
}

fn ldap_poll() -> u64 {
    300
}
fn queue_bytes() -> usize {
    4 * 1024 * 1024
}
fn queue_secs() -> u64 {
    30
}
fn heartbeat() -> u64 {
    5
}
fn timeout() -> u64 {
    20
}
fn digest() -> u64 {
    30
}
fn connect_timeout() -> u64 {
    5
}
fn backoff_min() -> u64 {
    500
}
fn backoff_max() -> u64 {
    30_000
}
fn watch() -> u64 {
    1000
}

impl InterclusterConfig {
    /// Relative paths are relative to the config file.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.cert,
            &mut self.key,
            &mut self.peers_file,
            &mut self.directory_file,
            &mut self.assignments_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(l) = &mut self.ldap
            && let Some(p) = &mut l.bind_password_file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// (key, problem) for the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("intercluster.{k}"), m));
        if self.cluster.is_empty() || self.cluster.contains(['@', '/', ' ', '*']) {
            return bad(
                "cluster",
                format!("'{}' is not a cluster name", self.cluster),
            );
        }
        if let Some(a) = &self.listen
            && a.parse::<SocketAddr>().is_err()
        {
            return bad("listen", format!("'{a}' is not an ip:port address"));
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert", "cert and key go together".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.name.is_empty() || p.name == self.cluster || !seen.insert(&p.name) {
                return bad(
                    &format!("peers[{i}].name"),
                    format!("'{}' is empty, this cluster, or listed twice", p.name),
                );
            }
        }
        if self.heartbeat_secs == 0 || self.timeout_secs <= self.heartbeat_secs {
            return bad(
                "timeout_secs",
                "heartbeat_secs must be > 0 and timeout_secs larger".into(),
            );
        }
        Ok(())
    }

    fn settings(&self, consistency: String) -> Settings {
        let mut s = Settings::new(&self.cluster, &consistency);
        s.session.heartbeat = Duration::from_secs(self.heartbeat_secs);
        s.session.timeout = Duration::from_secs(self.timeout_secs);
        s.session.digest_interval = Duration::from_secs(self.digest_secs.max(1));
        s.session.on_mismatch = self.on_mismatch;
        s.queue_max_bytes = self.queue_max_bytes;
        s.queue_max_age = Duration::from_secs(self.queue_max_secs);
        s.connect_timeout = Duration::from_secs(self.connect_timeout_secs.max(1));
        s.backoff_min = Duration::from_millis(self.backoff_min_ms.max(1));
        s.backoff_max = Duration::from_millis(self.backoff_max_ms.max(self.backoff_min_ms));
        s
    }
}

/// The peers file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    #[serde(default)]
    peers: Vec<PeerConfig>,
}

/// The gateway side of the links: local delivery through the router, bounces.
struct GatewayHost(Arc<S2sContext>);

impl Host for GatewayHost {
    fn deliver(&self, st: Stanza) {
        self.0.sink().route(st);
    }
    fn bounce(&self, st: &Stanza, etype: ErrorType, condition: &str, reason: &str, text: &str) {
        self.0.bounce(st, etype, condition, reason, text);
    }
}

/// The running intercluster side of a gateway.
pub struct IcRuntime {
    pub ic: Arc<Intercluster>,
    /// Where the link listener is bound.
    pub addr: Option<SocketAddr>,
    cfg: InterclusterConfig,
    static_peers: Vec<PeerConfig>,
    /// The hosted domains and the policy, for the consistency digest (the policy's revision
    /// changes with a hot reload).
    domains: Vec<String>,
    policy: Arc<crate::policy_runtime::PolicyRuntime>,
    /// Serialises admin changes with their write to `assignments_file`.
    admin: std::sync::Mutex<()>,
    /// `fedgate_intercluster_file_reloads_total{file,result}`: loads of the watched
    /// directory_file and peers_file, ok or refused (the previous content stays).
    file_reloads: prometheus::IntCounterVec,
}

/// The admin assignments saved in `path` (none if the file does not exist yet); an error names
/// the file and line.
fn load_assignments(path: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let bytes = fedgate_certs::durable::read_state(path)
        .with_context(|| format!("{}", path.display()))?
        .unwrap_or_default();
    let text = String::from_utf8(bytes).with_context(|| format!("{}", path.display()))?;
    fedgate_intercluster::sources::parse_user_file(&text)
        .with_context(|| format!("{}", path.display()))
}

/// Builds the runtime (no links yet: call [`IcRuntime::run`] once the router is in place).
pub async fn prepare(
    cfg: &Config,
    ctx: &Arc<S2sContext>,
    policy: &Arc<crate::policy_runtime::PolicyRuntime>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Arc<IcRuntime>>> {
    let Some(ic_cfg) = &cfg.intercluster else {
        return Ok(None);
    };
    let (cert, key) = match (&ic_cfg.cert, &ic_cfg.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => cfg
            .domains
            .iter()
            .find_map(|d| Some((d.cert.clone()?, d.key.clone()?)))
            .with_context(|| {
                format!(
                    "{}: intercluster.cert: no cluster certificate and no hosted domain with cert/key files to reuse",
                    cfg.source
                )
            })?,
    };
    let identity = Identity::load(&ic_cfg.cluster, &cert, &key)
        .with_context(|| format!("{}: intercluster.cert", cfg.source))?;
    if let Err(e) = identity.covers(&ic_cfg.cluster) {
        anyhow::bail!(
            "{}: intercluster.cert: the certificate does not name cluster '{}' ({e}); peers would refuse it",
            cfg.source,
            ic_cfg.cluster
        );
    }
    let assignments = match &ic_cfg.assignments_file {
        Some(f) => {
            let users = load_assignments(f)
                .with_context(|| format!("{}: intercluster.assignments_file", cfg.source))?;
            tracing::info!(file = %f.display(), users = users.len(), "admin assignments loaded");
            Some(users)
        }
        None => None,
    };
    let domains: Vec<String> = cfg.domains.iter().map(|d| d.name.clone()).collect();
    let consistency =
        consistency_digest(&domains, &ic_cfg.address_scheme, policy.active().revision());
    let host = Arc::new(GatewayHost(ctx.clone()));
    let ic = Intercluster::new(
        ic_cfg.settings(consistency),
        identity,
        ctx.verifier.clone(),
        host,
        registry,
    );
    if let Some(users) = assignments {
        ic.set_source(ADMIN, users);
    }
    let addr = match &ic_cfg.listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("{}: intercluster.listen {a}", cfg.source))?;
            let addr = l.local_addr()?;
            ic.listen(l);
            Some(addr)
        }
        None => None,
    };
    let file_reloads = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "fedgate_intercluster_file_reloads_total",
            "Loads of the intercluster directory_file and peers_file, by result (ok, refused)",
        ),
        &["file", "result"],
    )?;
    registry.register(Box::new(file_reloads.clone()))?;
    for (file, set) in [
        ("directory", ic_cfg.directory_file.is_some()),
        ("peers", ic_cfg.peers_file.is_some()),
    ] {
        if set {
            for result in ["ok", "refused"] {
                file_reloads.with_label_values(&[file, result]);
            }
        }
    }
    Ok(Some(Arc::new(IcRuntime {
        ic,
        addr,
        static_peers: ic_cfg.peers.clone(),
        cfg: ic_cfg.clone(),
        domains,
        policy: policy.clone(),
        admin: std::sync::Mutex::new(()),
        file_reloads,
    })))
}

impl IcRuntime {
    /// Loads the user sources and the peers, and starts watching files and polling LDAP.
    pub fn run(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let rt = self.clone();
        rt.load_directory_file();
        rt.load_peers();
        tracing::info!(cluster = %rt.cfg.cluster, listen = ?rt.addr, peers = ?rt.ic.peer_names(), "intercluster started");
        let watcher = rt.clone();
        let mut sd = shutdown.clone();
        tokio::spawn(async move {
            let files: Vec<PathBuf> = [&watcher.cfg.directory_file, &watcher.cfg.peers_file]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            let mut stamps: Vec<_> = files.iter().map(|f| stamp(f)).collect();
            let mut tick =
                tokio::time::interval(Duration::from_millis(watcher.cfg.watch_ms.max(50)));
            let mut revision = watcher.policy.active().revision().to_owned();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = sd.changed() => return,
                }
                // A reloaded policy is part of what clusters must agree on.
                let active = watcher.policy.active();
                if active.revision() != revision {
                    revision = active.revision().to_owned();
                    watcher.ic.set_consistency(&consistency_digest(
                        &watcher.domains,
                        &watcher.cfg.address_scheme,
                        &revision,
                    ));
                }
                for (i, f) in files.iter().enumerate() {
                    let s = stamp(f);
                    if s != stamps[i] {
                        stamps[i] = s;
                        if Some(f) == watcher.cfg.directory_file.as_ref() {
                            watcher.load_directory_file();
                        }
                        if Some(f) == watcher.cfg.peers_file.as_ref() {
                            watcher.load_peers();
                        }
                    }
                }
            }
        });
        if let Some(ldap) = self.cfg.ldap.clone() {
            let ic = self.ic.clone();
            let every = Duration::from_secs(self.cfg.ldap_poll_secs.max(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.changed() => return,
                    }
                    match fedgate_intercluster::ldap_source::fetch_users(&ldap).await {
                        Ok(found) => {
                            for (dn, why) in &found.skipped {
                                tracing::debug!(%dn, %why, "LDAP entry skipped");
                            }
                            let users: HashMap<String, u64> = found
                                .users
                                .into_iter()
                                .map(|u| (u, fedgate_intercluster::sources::DEFAULT_EPOCH))
                                .collect();
                            let n = ic.set_source("ldap", users);
                            tracing::debug!(changes = n, "LDAP users loaded");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LDAP user source failed; keeping the users it gave last")
                        }
                    }
                }
            });
        }
    }

    fn load_directory_file(&self) {
        let Some(f) = &self.cfg.directory_file else {
            return;
        };
        match std::fs::read_to_string(f) {
            Ok(text) => match fedgate_intercluster::sources::parse_user_file(&text) {
                Ok(users) => {
                    let count = users.len();
                    let n = self.ic.set_source("file", users);
                    self.file_reloads
                        .with_label_values(&["directory", "ok"])
                        .inc();
                    tracing::info!(file = %f.display(), users = count, changes = n, "directory file loaded");
                }
                Err(e) => {
                    self.file_reloads
                        .with_label_values(&["directory", "refused"])
                        .inc();
                    tracing::error!(file = %f.display(), error = %e, "directory file refused; keeping the previous users")
                }
            },
            Err(e) => {
                self.file_reloads
                    .with_label_values(&["directory", "refused"])
                    .inc();
                tracing::error!(file = %f.display(), error = %e, "cannot read the directory file")
            }
        }
    }

    fn load_peers(&self) {
        let mut peers = self.static_peers.clone();
        if let Some(f) = &self.cfg.peers_file {
            match std::fs::read_to_string(f)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str::<PeersFile>(&t).map_err(|e| e.to_string()))
            {
                Ok(pf) => {
                    self.file_reloads.with_label_values(&["peers", "ok"]).inc();
                    peers.extend(pf.peers)
                }
                Err(e) => {
                    self.file_reloads
                        .with_label_values(&["peers", "refused"])
                        .inc();
                    tracing::error!(file = %f.display(), error = %e, "peers file refused; keeping the current peers");
                    return;
                }
            }
        }
        self.ic.set_peers(&peers);
    }

    pub fn shutdown(&self) {
        self.ic.shutdown();
    }

    /// The `/status` section.
    pub fn status(&self) -> serde_json::Value {
        self.ic.status_json()
    }

    /// `/intercluster/…` requests: (status, content type, body). The reads are GET, the admin
    /// requests (`assign`, `unassign`) POST; which listener may ask what is decided by the
    /// caller (`crate::http`).
    pub fn http(&self, method: &Method, target: &str) -> (StatusCode, &'static str, String) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let param = |k: &str| query_param(query, k);
        let json = |v: serde_json::Value| (StatusCode::OK, "application/json", v.to_string());
        let bad = |m: &str| (StatusCode::BAD_REQUEST, "text/plain", format!("{m}\n"));
        let (get, post) = (method == Method::GET, method == Method::POST);
        match path {
            "/intercluster/peers" if get => json(self.status()),
            "/intercluster/conflicts" if get => json(serde_json::json!(self.ic.conflicts())),
            "/intercluster/lookup" if get => {
                let Some(user) = param("user") else {
                    return bad("lookup needs ?user=");
                };
                let Ok(user) = user else {
                    return bad("the user is not UTF-8 once percent-decoded");
                };
                let (home, claims) = self.ic.lookup(&user);
                json(serde_json::json!({
                    "user": user.to_ascii_lowercase(),
                    "home": home.as_ref().map(|h| h.cluster.clone()),
                    "epoch": home.as_ref().map(|h| h.epoch),
                    "conflict": home.as_ref().is_some_and(|h| h.conflict),
                    "claims": claims.iter().map(|(c, e)| serde_json::json!({"cluster": c, "epoch": e})).collect::<Vec<_>>(),
                    "local": home.as_ref().is_none_or(|h| h.cluster == self.ic.cluster() || !self.ic.is_peer(&h.cluster)),
                }))
            }
            "/intercluster/assign" if post => {
                let Some(Ok(user)) = param("user") else {
                    return bad("assign needs ?user= (UTF-8, percent-encoded)");
                };
                if !fedgate_intercluster::sources::is_bare_jid(&user) {
                    return bad(&format!("'{user}' is not a bare JID"));
                }
                let epoch = match param("epoch").map(|e| e.ok().and_then(|e| e.parse::<u64>().ok()))
                {
                    None => None,
                    Some(Some(e)) if e > 0 => Some(e),
                    Some(_) => return bad("epoch must be a positive integer"),
                };
                let user = user.to_ascii_lowercase();
                let used = epoch.unwrap_or_else(|| self.ic.move_epoch(&user));
                let saved = match self.change_admin(|a| {
                    a.insert(user.clone(), used);
                }) {
                    Ok(((), saved)) => saved,
                    Err(e) => return e,
                };
                tracing::info!(%user, epoch = used, saved, cluster = %self.ic.cluster(), "user assigned to this cluster by the admin");
                json(
                    serde_json::json!({"user": user, "cluster": self.ic.cluster(), "epoch": used, "saved": saved}),
                )
            }
            "/intercluster/unassign" if post => {
                let Some(Ok(user)) = param("user") else {
                    return bad("unassign needs ?user= (UTF-8, percent-encoded)");
                };
                let user = user.to_ascii_lowercase();
                let (removed, saved) = match self.change_admin(|a| a.remove(&user).is_some()) {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                tracing::info!(%user, removed, saved, cluster = %self.ic.cluster(), "admin assignment removed");
                json(serde_json::json!({"user": user, "removed": removed, "saved": saved}))
            }
            "/intercluster/assign" | "/intercluster/unassign" => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "POST only\n".into(),
            ),
            "/intercluster/peers" | "/intercluster/conflicts" | "/intercluster/lookup" => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    /// Applies `change` to the admin assignments, saves them all to `assignments_file`, then
    /// publishes them: (the change's result, whether it was saved). If the file cannot be
    /// written nothing changes (peers never see it) and the answer is a 500 that says why.
    fn change_admin<T>(
        &self,
        change: impl FnOnce(&mut HashMap<String, u64>) -> T,
    ) -> Result<(T, bool), (StatusCode, &'static str, String)> {
        let _one_at_a_time = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let mut users = self.ic.source_users(ADMIN);
        let out = change(&mut users);
        let saved = match &self.cfg.assignments_file {
            None => {
                tracing::warn!(
                    "admin assignments are not kept across a restart: no intercluster.assignments_file"
                );
                false
            }
            Some(path) => {
                let text = fedgate_intercluster::sources::format_user_file(
                    "Admin assignments of this cluster, written by fedgate (`fedgate directory assign`).\n\
                     Edit only while the gateway is stopped.",
                    &users,
                );
                if let Err(e) = fedgate_certs::durable::replace(path, text.as_bytes(), 0o644) {
                    tracing::error!(file = %path.display(), error = %e, "cannot save admin assignments; nothing changed");
                    return Err((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("not changed: cannot save {}: {e}\n", path.display()),
                    ));
                }
                true
            }
        };
        self.ic.set_source(ADMIN, users);
        Ok((out, saved))
    }
}

/// The value of `key` in a query string (`a=1&b=2`), `+` and `%XX` decoded (as HTML forms
/// encode them); `Err` when the decoded bytes are not UTF-8.
fn query_param(query: &str, key: &str) -> Option<Result<String, std::str::Utf8Error>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .map(|v| v.into_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!(
            "[[domains]]\nname = \"example.test\"\nself_signed = true\n\n[intercluster]\ncluster = \"tokyo\"\n{extra}"
        );
        Config::from_toml(
            &text,
            "t.toml",
            Path::new("/etc/fedgate"),
            &Default::default(),
        )
    }

    #[test]
    fn the_section_is_checked_and_paths_are_resolved() {
        let c = load("directory_file = \"users\"\n[[intercluster.peers]]\nname = \"london\"\n")
            .unwrap();
        let ic = c.intercluster.unwrap();
        assert_eq!(ic.directory_file.unwrap(), Path::new("/etc/fedgate/users"));
        assert_eq!(ic.listen.as_deref(), Some("0.0.0.0:7400"));
        assert_eq!(ic.on_mismatch, OnMismatch::Refuse);
        for (extra, key) in [
            ("listen = \"nowhere\"\n", "intercluster.listen"),
            ("cert = \"c.pem\"\n", "intercluster.cert"),
            (
                "[[intercluster.peers]]\nname = \"tokyo\"\n",
                "intercluster.peers[0].name",
            ),
            (
                "heartbeat_secs = 5\ntimeout_secs = 5\n",
                "intercluster.timeout_secs",
            ),
            ("on_mismatch = \"ignore\"\n", "intercluster.on_mismatch"),
        ] {
            let e = load(extra).unwrap_err();
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn query_values_are_decoded() {
        let v = |q: &str, k: &str| query_param(q, k).map(|r| r.map_err(|_| ()));
        assert_eq!(
            v("user=alice%40example.test&epoch=3", "user"),
            Some(Ok("alice@example.test".into()))
        );
        assert_eq!(v("user=alice&epoch=3", "epoch"), Some(Ok("3".into())));
        assert_eq!(v("user=a+b%2Bc", "user"), Some(Ok("a b+c".into())));
        assert_eq!(v("user=100%", "user"), Some(Ok("100%".into())));
        assert_eq!(v("user=%zz", "user"), Some(Ok("%zz".into())));
        assert_eq!(v("user=%C3%A9", "user"), Some(Ok("é".into())));
        assert_eq!(v("user=%FF", "user"), Some(Err(())));
        assert_eq!(v("users=x", "user"), None);
        assert_eq!(v("", "user"), None);
    }
}
