//! The configuration file: TOML read through the `config` crate with `FEDGATE__SECTION__KEY`
//! environment overrides, strict (`deny_unknown_fields`), and validated before anything starts.
//! Every key is documented in README.md ("Configuration reference").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration a `fedgate run` without `--config` uses: a development domain on
/// loopback with a generated self-signed certificate.
pub const DEV_CONFIG: &str = include_str!("../examples/dev.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Hosted domains: each with its TLS identity and (optionally) its local component.
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    #[serde(default)]
    pub s2s: S2sConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub components: ComponentsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The admin listener (`[admin]`); off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub internal: InternalConfig,
    /// SIP federation (`[sip]`, see `crate::sip_config`).
    #[serde(default)]
    pub sip: crate::sip_config::SipConfig,
    /// Intercluster peering (`[intercluster]`, see `crate::intercluster_runtime`).
    #[serde(default)]
    pub intercluster: Option<crate::intercluster_runtime::InterclusterConfig>,
    /// Several nodes of the same domains acting as one gateway (`[cluster]`, see
    /// `crate::cluster`); none: a single node.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Where the file came from (not a key).
    #[serde(skip)]
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// PEM certificate chain (leaf first). Relative paths are relative to the config file.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Without cert/key: generate a self-signed certificate at start (development only).
    /// With cert/key: the certificate is self-signed on purpose (labs), so `certs check` and
    /// reload accept it although no trusted CA issued it.
    #[serde(default)]
    pub self_signed: bool,
    /// Further names the certificate must cover (e.g. `conference.example.test`); checked by
    /// `fedgate certs check` and on reload.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// XEP-0114 shared secret of this domain's local component; no component without it.
    pub component_secret: Option<String>,
    /// The s2s address of this domain's own IM server (`tcp://host:port` or `tls://…`):
    /// traffic for the domain is forwarded there over s2s, the gateway acting as the remote
    /// domain. Instead of a component.
    pub internal: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Listen addresses for s2s (STARTTLS and direct TLS on the same port, by first byte).
    pub listen: Vec<String>,
    /// Extra listen addresses that speak direct TLS only (XEP-0368).
    pub direct_tls_listen: Vec<String>,
    /// Server Dialback secret (XEP-0185); every node serving the same domains must share it.
    pub dialback_secret: Option<String>,
    /// Refuse streams that do not use TLS.
    pub tls_required: bool,
    /// Acceptable authentication methods: "certificate" (SASL EXTERNAL) and/or "dialback".
    pub auth_methods: Vec<String>,
    /// Require the clientAuth usage in certificates of initiating servers (private PKIs).
    pub strict_client_eku: bool,
    /// Per-domain targets that replace DNS: "partner.test" = "tcp://127.0.0.3:5269" or
    /// "tls://host:port" (direct TLS); "*" for every other domain.
    pub static_targets: BTreeMap<String, String>,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub preauth_max_bytes: u64,
    pub max_queue_bytes: usize,
    pub connect_timeout_secs: u64,
    pub negotiation_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub keepalive_secs: u64,
    pub retry_backoff_min_secs: u64,
    pub retry_backoff_max_secs: u64,
    /// Offer and enable XEP-0198 stream management on s2s (else every link confirms with
    /// XEP-0199 pings).
    pub stream_management: bool,
    /// Ask the next hop for confirmations after this many unconfirmed stanzas…
    pub ack_request_every: u32,
    /// …or when the oldest has waited this long.
    pub ack_request_after_ms: u64,
    /// A request unanswered this long means the link is dead (its stanzas are resent or
    /// bounced).
    pub ack_timeout_secs: u64,
    /// Bounds of what one link may have written and not had confirmed.
    pub max_unacked: usize,
    pub max_unacked_bytes: usize,
    /// Unconfirmed stanzas of a broken stream: "resend" (once on a new stream, then bounce)
    /// or "bounce".
    pub unacked: String,
    /// The same per remote domain: "partner.test" = "bounce".
    pub unacked_domains: BTreeMap<String, String>,
    /// How long a shutdown may take to deliver or bounce what is queued and unconfirmed.
    pub shutdown_grace_secs: u64,
    /// Not a setting (no key in the file): `fedgate bench relay` turns it off to measure what
    /// acknowledged delivery costs.
    #[serde(skip)]
    pub confirm_delivery: bool,
}

impl Default for S2sConfig {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:5269".into()],
            direct_tls_listen: Vec::new(),
            dialback_secret: None,
            tls_required: true,
            auth_methods: vec!["certificate".into(), "dialback".into()],
            strict_client_eku: false,
            static_targets: BTreeMap::new(),
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            preauth_max_bytes: 64 * 1024,
            max_queue_bytes: 1024 * 1024,
            connect_timeout_secs: 10,
            negotiation_timeout_secs: 30,
            idle_timeout_secs: 600,
            keepalive_secs: 60,
            retry_backoff_min_secs: 1,
            retry_backoff_max_secs: 60,
            stream_management: true,
            ack_request_every: 64,
            ack_request_after_ms: 200,
            ack_timeout_secs: 60,
            max_unacked: 4096,
            max_unacked_bytes: 4 * 1024 * 1024,
            unacked: "resend".into(),
            unacked_domains: BTreeMap::new(),
            confirm_delivery: true,
            shutdown_grace_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers as "ip:port"; empty = the system's (/etc/resolv.conf).
    pub nameservers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Trust the system's CA bundle for peer certificates.
    pub system_roots: bool,
    /// Extra trust anchors (PEM files).
    pub trust_anchors: Vec<PathBuf>,
    /// Certificate revocation lists (PEM or DER files) checked for peer certificate chains;
    /// relative paths are relative to the config file. Read at start.
    pub crls: Vec<PathBuf>,
    /// Own certificates with fewer days left are a problem (`certs check`, reload).
    pub min_days: i64,
    /// How often the running gateway looks at the cert/key files of hosted domains for
    /// changes (0: never; SIGHUP always reloads).
    pub reload_check_secs: u64,
    /// When PKIX does not establish a peer's identity, try POSH (RFC 7711): fetch
    /// `https://<domain>/.well-known/posh/xmpp-server.json` and accept the key it names.
    pub posh: bool,
    /// HTTPS port for POSH fetches (443; tests use another).
    pub posh_port: u16,
    /// When PKIX does not establish a peer's identity, try DANE (RFC 7673): TLSA records at
    /// the SRV target, used only when DNSSEC validates them.
    pub dane: bool,
    /// DNSSEC trust anchor for DANE (a file with DNSKEY records in zone-file form); none: the
    /// root zone's key built into the resolver.
    pub dane_trust_anchor: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            system_roots: true,
            trust_anchors: Vec::new(),
            crls: Vec::new(),
            min_days: 7,
            reload_check_secs: 30,
            posh: false,
            posh_port: 443,
            dane: false,
            dane_trust_anchor: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentsConfig {
    /// XEP-0114 listener; keep it on loopback or an internal address.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// HTTP listener for the read-only /metrics, /healthz, /status and
    /// `GET /intercluster/peers|lookup|conflicts`.
    pub listen: Option<String>,
    /// Removed: admin requests moved to `[admin]`. Kept as a field only to refuse it with a
    /// message that says where to go (instead of serde's "unknown field").
    pub admin_token_file: Option<PathBuf>,
}

/// `[admin]`: the listener for admin requests (`POST /intercluster/assign|unassign`). Every
/// request must carry the token of `token_file` and a `Host` from `allowed_hosts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// TCP listen address (ip:port); or `unix`.
    pub listen: Option<String>,
    /// Unix socket path (made mode 0600); or `listen`.
    pub unix: Option<PathBuf>,
    /// The file holding the token every admin request carries as `Authorization: Bearer …`;
    /// read on every request (rotate it by rewriting the file). Required.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and key: serve HTTPS on `listen`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `Host` values accepted (`name` or `name:port`; a name without port accepts any port).
    /// Default: the `listen` IP and `localhost` (for `unix`: `localhost`).
    pub allowed_hosts: Vec<String>,
}

impl AdminConfig {
    /// The `Host` values accepted: `allowed_hosts`, or the default (see the field).
    pub fn effective_allowed_hosts(&self) -> Vec<String> {
        if !self.allowed_hosts.is_empty() {
            return self
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect();
        }
        let mut hosts = vec!["localhost".to_owned()];
        if let Some(sa) = self
            .listen
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        {
            hosts.push(match sa.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        hosts
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let addr = match (&self.listen, &self.unix) {
            (Some(_), Some(_)) => {
                return Err((
                    "admin.unix",
                    "set admin.listen or admin.unix, not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    "admin.listen",
                    "the admin listener needs listen = \"127.0.0.1:9270\" or unix = \"/run/fedgate/admin.sock\" (remove [admin] to turn it off)".into(),
                ));
            }
            (Some(a), None) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| ("admin.listen", format!("'{a}' is not an ip:port address")))?,
            ),
            (None, Some(_)) => None,
        };
        if self.token_file.is_none() {
            return Err((
                "admin.token_file",
                "required: every admin request must carry this token (Authorization: Bearer)"
                    .into(),
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(("admin.key", "admin.cert needs admin.key".into())),
            (None, Some(_)) => return Err(("admin.cert", "admin.key needs admin.cert".into())),
            (Some(_), Some(_)) if addr.is_none() => {
                return Err((
                    "admin.cert",
                    "TLS is served on admin.listen only; a Unix socket is guarded by its file permissions".into(),
                ));
            }
            _ => {}
        }
        for h in &self.allowed_hosts {
            if !crate::http::admin::is_host_value(h) {
                return Err((
                    "admin.allowed_hosts",
                    format!("'{h}' is not a host name or address, with an optional :port"),
                ));
            }
        }
        if self.allowed_hosts.is_empty() && addr.is_some_and(|a| a.ip().is_unspecified()) {
            return Err((
                "admin.allowed_hosts",
                "required when admin.listen is a wildcard address: list the names clients use to reach it".into(),
            ));
        }
        Ok(())
    }
}

/// The internal side: where the gateway's own IM servers send their outbound s2s, and the
/// resolver that steers them there.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InternalConfig {
    /// s2s listener for the internal servers' outbound streams; the gateway answers there as
    /// every remote domain. Keep it on an internal address.
    pub listen: Option<String>,
    /// DNS listener that answers `_xmpp-server._tcp.<any non-hosted domain>` with `listen`
    /// and forwards every other question upstream; point the internal servers at it.
    pub resolver: Option<String>,
    /// Upstream resolvers for the questions the internal resolver does not answer
    /// (default: [dns] nameservers, else the system's).
    pub upstream: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The federation policy file (see examples/policy.toml); none: everyone may federate
    /// with the [s2s] floor.
    pub file: Option<PathBuf>,
    /// A candidate policy evaluated beside the active one (shadow mode): differences are
    /// counted and logged, never enforced.
    pub shadow_file: Option<PathBuf>,
    /// Reload the files when they change (SIGHUP always reloads).
    pub watch: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "fedgate=debug,info"; RUST_LOG overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

fn err(file: &str, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        key: key.into(),
        message: message.into(),
    }
}

/// Environment variables, injected (tests pass their own map; `fedgate run` passes the process
/// environment).
pub type Env = BTreeMap<String, String>;

pub fn process_env() -> Env {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("FEDGATE__"))
        .collect()
}

impl Config {
    /// Read and validate a config file (with environment overrides).
    pub fn load(path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(&file, "-", format!("cannot read: {e}")))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &file, &base, env)
    }

    /// Parse TOML text; `file` names it in errors; relative paths resolve against `base`.
    pub fn from_toml(text: &str, file: &str, base: &Path, env: &Env) -> Result<Self, ConfigError> {
        // Syntax errors first, with line and column from the TOML parser.
        if let Err(e) = text.parse::<toml::Table>() {
            let (key, msg) = toml_error(text, &e);
            return Err(err(file, key, msg));
        }
        let source = config::Environment::with_prefix("FEDGATE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("s2s.listen")
            .with_list_parse_key("s2s.direct_tls_listen")
            .with_list_parse_key("s2s.auth_methods")
            .with_list_parse_key("dns.nameservers")
            .with_list_parse_key("internal.upstream")
            .with_list_parse_key("sip.listen")
            .with_list_parse_key("tls.trust_anchors")
            .with_list_parse_key("tls.crls")
            .with_list_parse_key("admin.allowed_hosts")
            .source(Some(env.clone().into_iter().collect()));
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(source)
            .build()
            .map_err(|e| err(file, "-", e.to_string()))?;
        let mut cfg: Self = built.try_deserialize().map_err(|e| {
            let msg = e.to_string();
            let key = msg
                .split("for key `")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .unwrap_or("-")
                .to_owned();
            err(file, key, msg)
        })?;
        cfg.source = file.to_owned();
        for (i, d) in cfg.domains.iter_mut().enumerate() {
            // The canonical form every stanza's address is compared in (RFC 7622: U-labels).
            d.name = fedgate_jid::canonical_domain(&d.name)
                .map_err(|e| {
                    err(
                        file,
                        format!("domains[{i}].name"),
                        format!("{:?}: {e}", d.name),
                    )
                })?
                .into_owned();
            for (j, a) in d.aliases.iter_mut().enumerate() {
                *a = fedgate_jid::canonical_domain(a)
                    .map_err(|e| {
                        err(
                            file,
                            format!("domains[{i}].aliases[{j}]"),
                            format!("'{a}' is not a domain name ({e})"),
                        )
                    })?
                    .into_owned();
            }
            for p in [&mut d.cert, &mut d.key].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for p in cfg
            .policy
            .file
            .iter_mut()
            .chain(cfg.policy.shadow_file.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut cfg.sip.authz_store, &mut cfg.tls.dane_trust_anchor]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in cfg
            .tls
            .trust_anchors
            .iter_mut()
            .chain(cfg.tls.crls.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(a) = &mut cfg.admin {
            for p in [&mut a.unix, &mut a.token_file, &mut a.cert, &mut a.key]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if let Some(ic) = &mut cfg.intercluster {
            ic.resolve_paths(base);
            ic.validate().map_err(|(k, m)| err(file, k, m))?;
        }
        if let Some(c) = &mut cfg.cluster {
            c.resolve_paths(base);
            c.validate().map_err(|(k, m)| err(file, k, m))?;
            if cfg.s2s.dialback_secret.is_none() {
                return Err(err(
                    file,
                    "s2s.dialback_secret",
                    "required with [cluster]: every node verifies the others' dialback keys with it",
                ));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn dev() -> Self {
        Self::from_toml(
            DEV_CONFIG,
            "<embedded development config>",
            Path::new("."),
            &Env::new(),
        )
        .expect("the embedded development config is valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.source;
        if self.domains.is_empty() {
            return Err(err(
                f,
                "domains",
                "at least one hosted domain is required ([[domains]] name = \"example.test\")",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            let k = format!("domains[{i}]");
            if d.name.is_empty()
                || d.name.contains(['@', '/', ' ', '*'])
                || !d.name.contains('.') && d.name != "localhost"
            {
                return Err(err(
                    f,
                    format!("{k}.name"),
                    format!("'{}' is not a domain name", d.name),
                ));
            }
            if !seen.insert(d.name.clone()) {
                return Err(err(
                    f,
                    format!("{k}.name"),
                    format!("{} is listed twice", d.name),
                ));
            }
            match (&d.cert, &d.key, d.self_signed) {
                (Some(_), Some(_), _) | (None, None, true) => {}
                (None, None, false) => {
                    return Err(err(
                        f,
                        format!("{k}.cert"),
                        format!(
                            "{} needs cert and key (or self_signed = true for development)",
                            d.name
                        ),
                    ));
                }
                _ => return Err(err(f, format!("{k}.cert"), "cert and key go together")),
            }
            for (j, a) in d.aliases.iter().enumerate() {
                if a.is_empty() || a.contains(['@', '/', ' ']) || !a.contains('.') {
                    return Err(err(
                        f,
                        format!("{k}.aliases[{j}]"),
                        format!("'{a}' is not a domain name"),
                    ));
                }
                // An alias is served by exactly one hosted domain.
                let taken = self
                    .domains
                    .iter()
                    .enumerate()
                    .any(|(o, other)| other.name == *a || (o < i && other.aliases.contains(a)));
                if taken {
                    return Err(err(
                        f,
                        format!("{k}.aliases[{j}]"),
                        format!("'{a}' is already a hosted domain or another domain's alias"),
                    ));
                }
            }
            if let Some(i) = &d.internal {
                if d.component_secret.is_some() {
                    return Err(err(
                        f,
                        format!("{k}.internal"),
                        "a domain has either an internal server or a component, not both",
                    ));
                }
                let mut one = BTreeMap::new();
                one.insert(d.name.clone(), i.clone());
                fedgate_s2s::resolve::StaticTargets::parse(&one)
                    .map_err(|e| err(f, format!("{k}.internal"), e))?;
                if self.internal.listen.is_none() {
                    return Err(err(
                        f,
                        "internal.listen",
                        format!(
                            "required: {} has an internal server, whose outbound s2s arrives there",
                            d.name
                        ),
                    ));
                }
            }
            if d.component_secret.as_deref().is_some_and(str::is_empty) {
                return Err(err(f, format!("{k}.component_secret"), "must not be empty"));
            }
        }
        for (key, list) in [
            ("s2s.listen", &self.s2s.listen),
            ("s2s.direct_tls_listen", &self.s2s.direct_tls_listen),
            ("dns.nameservers", &self.dns.nameservers),
            ("internal.upstream", &self.internal.upstream),
        ] {
            for a in list {
                a.parse::<SocketAddr>()
                    .map_err(|_| err(f, key, format!("'{a}' is not an ip:port address")))?;
            }
        }
        for (key, v) in [
            ("components.listen", &self.components.listen),
            ("metrics.listen", &self.metrics.listen),
            ("internal.listen", &self.internal.listen),
            ("internal.resolver", &self.internal.resolver),
        ] {
            if let Some(a) = v {
                a.parse::<SocketAddr>()
                    .map_err(|_| err(f, key, format!("'{a}' is not an ip:port address")))?;
            }
        }
        if let Some(t) = &self.metrics.admin_token_file {
            return Err(err(
                f,
                "metrics.admin_token_file",
                format!(
                    "removed: admin requests are served by their own listener now, which always \
                     needs the token; move it there: [admin] listen = \"127.0.0.1:9270\" \
                     token_file = {:?} (and pass fedgate directory --admin 127.0.0.1:9270 \
                     --token-file for assign and unassign)",
                    t.display().to_string()
                ),
            ));
        }
        if let Some(a) = &self.admin {
            a.validate().map_err(|(k, m)| err(f, k, m))?;
        }
        self.sip.validate().map_err(|(k, m)| err(f, k, m))?;
        if self.s2s.listen.is_empty() && self.s2s.direct_tls_listen.is_empty() {
            return Err(err(f, "s2s.listen", "no s2s listen address"));
        }
        match &self.s2s.dialback_secret {
            Some(s) if s.len() < 16 => {
                return Err(err(
                    f,
                    "s2s.dialback_secret",
                    "must be at least 16 characters",
                ));
            }
            _ => {}
        }
        let mut methods = self.s2s.auth_methods.clone();
        methods.sort();
        methods.dedup();
        if methods.is_empty() {
            return Err(err(
                f,
                "s2s.auth_methods",
                "at least one of \"certificate\", \"dialback\"",
            ));
        }
        for m in &methods {
            if m != "certificate" && m != "dialback" {
                return Err(err(
                    f,
                    "s2s.auth_methods",
                    format!("unknown method '{m}' (use \"certificate\" or \"dialback\")"),
                ));
            }
        }
        fedgate_s2s::resolve::StaticTargets::parse(&self.s2s.static_targets)
            .map_err(|e| err(f, "s2s.static_targets", e))?;
        if self.s2s.max_stanza_bytes < 1024 {
            return Err(err(f, "s2s.max_stanza_bytes", "must be at least 1024"));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(err(f, "log.format", "\"text\" or \"json\""));
        }
        if self.tls.min_days < 0 {
            return Err(err(f, "tls.min_days", "must not be negative"));
        }
        if self.s2s.retry_backoff_min_secs > self.s2s.retry_backoff_max_secs {
            return Err(err(
                f,
                "s2s.retry_backoff_min_secs",
                "larger than retry_backoff_max_secs",
            ));
        }
        let unacked_ok = |v: &str| matches!(v, "resend" | "bounce");
        if !unacked_ok(&self.s2s.unacked) {
            return Err(err(f, "s2s.unacked", "\"resend\" or \"bounce\""));
        }
        if let Some((d, _)) = self
            .s2s
            .unacked_domains
            .iter()
            .find(|(_, v)| !unacked_ok(v))
        {
            return Err(err(
                f,
                format!("s2s.unacked_domains.{d}"),
                "\"resend\" or \"bounce\"",
            ));
        }
        if self.s2s.ack_request_every == 0 || self.s2s.max_unacked == 0 {
            return Err(err(
                f,
                "s2s.ack_request_every",
                "ack_request_every and max_unacked must be at least 1",
            ));
        }
        if self.s2s.ack_timeout_secs == 0 {
            return Err(err(f, "s2s.ack_timeout_secs", "must be at least 1"));
        }
        Ok(())
    }
}

/// (key, message with line:column) for a TOML syntax error.
fn toml_error(text: &str, e: &toml::de::Error) -> (String, String) {
    let msg = e.message().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before
                .rfind('\n')
                .map_or(before.len(), |n| before.len() - n - 1)
                + 1;
            (format!("line {line}, column {col}"), msg)
        }
        None => ("-".into(), msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "t.toml", Path::new("/etc/fedgate"), &Env::new())
    }

    const OK: &str = "[[domains]]\nname = \"Example.Test\"\nself_signed = true\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(OK).unwrap();
        assert_eq!(c.domains[0].name, "example.test");
        assert_eq!(c.s2s.listen, vec!["0.0.0.0:5269"]);
        assert!(c.s2s.tls_required);
        assert_eq!(c.s2s.auth_methods, vec!["certificate", "dialback"]);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse(&format!("{OK}[s2s]\nlisten = [\"nope\"]\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: s2s.listen: 'nope' is not an ip:port address"
        );
        let e = parse(&format!("{OK}[s2s]\nlisten = 5\n")).unwrap_err();
        assert_eq!(e.key, "s2s.listen", "{e}");
        let e = parse(&format!("{OK}[s2s]\nlistn = []\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `listn`"), "{e}");
        let e = parse(&format!(
            "{OK}[s2s.static_targets]\n\"p.test\" = \"ftp://x:1\"\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().starts_with("t.toml: s2s.static_targets: "),
            "{e}"
        );
        assert!(e.to_string().contains("ftp://x:1"), "{e}");
        let e = parse("[[domains]]\nname = \"a.test\"\n").unwrap_err();
        assert_eq!(e.key, "domains[0].cert");
        let e = parse(&format!("{OK}[s2s\n")).unwrap_err();
        assert_eq!(e.key, "line 4, column 5", "{e}");
        let e = parse(&format!("{OK}[s2s]\nauth_methods = [\"password\"]\n")).unwrap_err();
        assert_eq!(e.key, "s2s.auth_methods");
    }

    #[test]
    fn env_overrides_win() {
        let env: Env = [
            ("FEDGATE__S2S__TLS_REQUIRED".to_owned(), "false".to_owned()),
            (
                "FEDGATE__S2S__LISTEN".to_owned(),
                "127.0.0.9:5269,127.0.0.9:5270".to_owned(),
            ),
            (
                "FEDGATE__METRICS__LISTEN".to_owned(),
                "127.0.0.9:9000".to_owned(),
            ),
        ]
        .into();
        let c = Config::from_toml(OK, "t.toml", Path::new("."), &env).unwrap();
        assert!(!c.s2s.tls_required);
        assert_eq!(c.s2s.listen, vec!["127.0.0.9:5269", "127.0.0.9:5270"]);
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.9:9000"));
    }

    #[test]
    fn aliases_and_cert_settings() {
        let c = parse(
            "[[domains]]\nname = \"a.test\"\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             self_signed = true\naliases = [\"Conference.A.test.\"]\n[tls]\nmin_days = 3\n\
             reload_check_secs = 5\n",
        )
        .unwrap();
        assert_eq!(c.domains[0].aliases, ["conference.a.test"]);
        assert!(c.domains[0].self_signed);
        assert_eq!((c.tls.min_days, c.tls.reload_check_secs), (3, 5));
        let d = parse(OK).unwrap();
        assert_eq!((d.tls.min_days, d.tls.reload_check_secs), (7, 30));
        let e = parse("[[domains]]\nname = \"a.test\"\nself_signed = true\naliases = [\"x y\"]\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: domains[0].aliases[0]: 'x y' is not a domain name (domainpart is not a valid domain name (IDNA2008))"
        );
        let e = parse(&format!("{OK}[tls]\nmin_days = -1\n")).unwrap_err();
        assert_eq!(e.key, "tls.min_days");
    }

    #[test]
    fn the_admin_listener_is_checked() {
        let c = parse(OK).unwrap();
        assert!(c.admin.is_none(), "off by default");
        let c = parse(&format!(
            "{OK}[admin]\nlisten = \"127.0.0.1:9270\"\ntoken_file = \"admin.token\"\n"
        ))
        .unwrap();
        let a = c.admin.unwrap();
        assert_eq!(
            a.token_file.as_deref(),
            Some(Path::new("/etc/fedgate/admin.token"))
        );
        assert_eq!(a.effective_allowed_hosts(), ["localhost", "127.0.0.1"]);
        let c = parse(&format!(
            "{OK}[admin]\nlisten = \"[::1]:9270\"\ntoken_file = \"t\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.admin.unwrap().effective_allowed_hosts(),
            ["localhost", "[::1]"]
        );
        let c = parse(&format!(
            "{OK}[admin]\nunix = \"admin.sock\"\ntoken_file = \"t\"\nallowed_hosts = [\"Gw.Example.Test\"]\n"
        ))
        .unwrap();
        let a = c.admin.unwrap();
        assert_eq!(
            a.unix.as_deref(),
            Some(Path::new("/etc/fedgate/admin.sock"))
        );
        assert_eq!(a.effective_allowed_hosts(), ["gw.example.test"]);
        for (section, key, says) in [
            ("token_file = \"t\"\n", "admin.listen", "unix ="),
            (
                "listen = \"127.0.0.1:9270\"\n",
                "admin.token_file",
                "required",
            ),
            (
                "listen = \"127.0.0.1:9270\"\nunix = \"s\"\ntoken_file = \"t\"\n",
                "admin.unix",
                "not both",
            ),
            (
                "listen = \"localhost:9270\"\ntoken_file = \"t\"\n",
                "admin.listen",
                "ip:port",
            ),
            (
                "listen = \"0.0.0.0:9270\"\ntoken_file = \"t\"\n",
                "admin.allowed_hosts",
                "wildcard",
            ),
            (
                "listen = \"127.0.0.1:9270\"\ntoken_file = \"t\"\ncert = \"c.pem\"\n",
                "admin.key",
                "needs admin.key",
            ),
            (
                "unix = \"s\"\ntoken_file = \"t\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
                "admin.cert",
                "Unix socket",
            ),
            (
                "listen = \"127.0.0.1:9270\"\ntoken_file = \"t\"\nallowed_hosts = [\"http://x\"]\n",
                "admin.allowed_hosts",
                "http://x",
            ),
            (
                "listen = \"127.0.0.1:9270\"\ntoken = \"x\"\n",
                "-",
                "unknown field `token`",
            ),
        ] {
            let e = parse(&format!("{OK}[admin]\n{section}")).unwrap_err();
            assert!(
                (e.key == key || key == "-") && e.message.contains(says),
                "{section}: {e}"
            );
        }
        let env: Env = [
            (
                "FEDGATE__ADMIN__LISTEN".to_owned(),
                "0.0.0.0:9270".to_owned(),
            ),
            ("FEDGATE__ADMIN__TOKEN_FILE".to_owned(), "/t".to_owned()),
            (
                "FEDGATE__ADMIN__ALLOWED_HOSTS".to_owned(),
                "gw1.example.test,gw1.example.test:9270".to_owned(),
            ),
        ]
        .into();
        let c = Config::from_toml(OK, "t.toml", Path::new("."), &env).unwrap();
        assert_eq!(
            c.admin.unwrap().allowed_hosts,
            ["gw1.example.test", "gw1.example.test:9270"]
        );
    }

    /// `metrics.admin_token_file` is gone: refused with where to go instead.
    #[test]
    fn the_old_admin_token_key_says_where_it_went() {
        let e = parse(&format!(
            "{OK}[metrics]\nlisten = \"127.0.0.1:9269\"\nadmin_token_file = \"/etc/fedgate/admin.token\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "metrics.admin_token_file", "{e}");
        assert!(
            e.message.contains("[admin]")
                && e.message
                    .contains("token_file = \"/etc/fedgate/admin.token\"")
                && e.message.contains("--admin"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let c =
            parse("[[domains]]\nname = \"a.test\"\ncert = \"a.pem\"\nkey = \"/k.pem\"\n").unwrap();
        assert_eq!(
            c.domains[0].cert.as_deref(),
            Some(Path::new("/etc/fedgate/a.pem"))
        );
        assert_eq!(c.domains[0].key.as_deref(), Some(Path::new("/k.pem")));
    }

    #[test]
    fn crls_resolve_against_the_file() {
        let c = parse(&format!(
            "{OK}[tls]\ncrls = [\"ca.crl.pem\", \"/var/lib/crl/b.crl\"]\n"
        ))
        .unwrap();
        assert_eq!(
            c.tls.crls,
            [
                Path::new("/etc/fedgate/ca.crl.pem"),
                Path::new("/var/lib/crl/b.crl")
            ]
        );
        assert!(parse(OK).unwrap().tls.crls.is_empty());
    }

    #[test]
    fn the_cluster_section_is_checked() {
        let ok = format!(
            "{OK}[s2s]\ndialback_secret = \"sixteen characters!\"\n[cluster]\nname = \"node-a\"\n\
             redis = \"rediss://fedgate@redis.example.test\"\nnode_link = \"10.0.0.11:7410\"\n\
             password_file = \"redis.pw\"\n"
        );
        let c = parse(&ok).unwrap();
        let cc = c.cluster.as_ref().unwrap();
        assert_eq!(
            cc.password_file.as_deref(),
            Some(Path::new("/etc/fedgate/redis.pw"))
        );
        assert_eq!(
            (cc.lease_ms, cc.heartbeat_ms, cc.key_prefix.as_str()),
            (10_000, 2_000, "fedgate")
        );
        assert_eq!(cc.url().port, 6379);
        assert!(
            parse(OK).unwrap().cluster.is_none(),
            "a single node needs nothing"
        );
        let e = parse(&format!("{ok}lease = 5\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `lease`"), "{e}");
        let e = parse(&ok.replace("rediss://fedgate@", "redis://fedgate:pw@")).unwrap_err();
        assert_eq!(e.key, "cluster.redis", "{e}");
        assert!(e.message.contains("password_file"), "{e}");
        let e = parse(&ok.replace("10.0.0.11:7410", "node-a")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: cluster.node_link: 'node-a' is not an ip:port address"
        );
        let e = parse(&format!("{ok}heartbeat_ms = 6000\n")).unwrap_err();
        assert_eq!(e.key, "cluster.heartbeat_ms", "{e}");
        let e = parse(
            &ok.replace("rediss://", "redis://")
                .replace("password_file", "tls_ca"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: cluster.tls_ca: only with a rediss:// store"
        );
        let e = parse(&ok.replace("dialback_secret = \"sixteen characters!\"\n", "")).unwrap_err();
        assert_eq!(e.key, "s2s.dialback_secret", "{e}");
        assert!(e.message.contains("[cluster]"), "{e}");
        let e = parse(&ok.replace("node-a", "node a")).unwrap_err();
        assert_eq!(e.key, "cluster.name", "{e}");
    }

    #[test]
    fn every_example_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let is_policy = p
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("policy"));
            if p.extension().is_some_and(|x| x == "toml") && !is_policy {
                let c = Config::load(&p, &Env::new()).unwrap_or_else(|e| panic!("{e}"));
                if let Some(pf) = &c.policy.file {
                    fedgate_policy::Policy::load(pf)
                        .unwrap_or_else(|d| panic!("{}: {d:?}", pf.display()));
                }
                n += 1;
            }
        }
        assert!(n >= 2, "examples/ holds the configs");
        assert_eq!(Config::dev().domains[0].name, "example.test");
    }
}
