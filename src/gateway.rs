//! Wiring: builds the stream context, router, pool, listeners and HTTP endpoint from a
//! [`Config`], and stops them again.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fedgate_certs::{Identity, IdentityStore, PeerVerifier, TrustAnchors};
use fedgate_s2s::dialback::DialbackSecret;
use fedgate_s2s::driver::{Components, Pool, S2sContext, StreamSettings};
use fedgate_s2s::inbound::AuthMethods;
use fedgate_s2s::resolve::{S2sResolver, StaticTargets};
use fedgate_s2s::xml::Limits;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cert_reload::{CertReloader, ReloadOutcome};
use crate::config::Config;
use crate::http::HttpState;
use crate::policy_runtime::PolicyRuntime;
use crate::router::Router;
use crate::sip_route::SipRoute;
use fedgate_sip::driver::SipFed;

pub struct Gateway {
    pub ctx: Arc<S2sContext>,
    /// Own certificates: hot reload and expiry gauges.
    pub certs: Arc<CertReloader>,
    pub policy: Arc<PolicyRuntime>,
    _watcher: Option<notify::RecommendedWatcher>,
    pub pool: Arc<Pool>,
    pub components: Arc<Components>,
    pub http: Arc<HttpState>,
    pub s2s_addrs: Vec<SocketAddr>,
    pub direct_tls_addrs: Vec<SocketAddr>,
    pub component_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the admin listener is (`[admin]`), when configured.
    pub admin_addr: Option<crate::http::admin::AdminAddr>,
    /// Where the internal servers' outbound s2s arrives.
    pub internal_addr: Option<SocketAddr>,
    /// The internal resolver (stopped when the gateway is dropped).
    pub internal_resolver: Option<crate::internal_dns::InternalResolver>,
    /// SIP federation, when configured.
    pub sip: Option<Arc<SipRoute>>,
    /// Where the SIP/TLS listeners are bound.
    pub sip_addrs: Vec<SocketAddr>,
    /// Intercluster peering, when configured.
    pub intercluster: Option<Arc<crate::intercluster_runtime::IcRuntime>>,
    /// The cluster state: embedded (a single node), or in Redis with `[cluster]`.
    pub cluster: Arc<crate::cluster::ClusterStore>,
    tasks: Vec<JoinHandle<()>>,
}

/// The stream settings a config asks for.
pub fn stream_settings(cfg: &Config) -> StreamSettings {
    let s = &cfg.s2s;
    let secs = Duration::from_secs;
    StreamSettings {
        tls_required: s.tls_required,
        auth: AuthMethods {
            certificate: s.auth_methods.iter().any(|m| m == "certificate"),
            dialback: s.auth_methods.iter().any(|m| m == "dialback"),
        },
        strict_client_eku: s.strict_client_eku,
        limits: Limits {
            max_stanza_bytes: s.max_stanza_bytes,
            max_depth: s.max_depth,
            ..Limits::default()
        },
        preauth_max_bytes: s.preauth_max_bytes,
        max_queue_bytes: s.max_queue_bytes,
        connect_timeout: secs(s.connect_timeout_secs),
        negotiation_timeout: secs(s.negotiation_timeout_secs),
        idle_timeout: secs(s.idle_timeout_secs),
        keepalive_interval: secs(s.keepalive_secs),
        retry_backoff_min: secs(s.retry_backoff_min_secs),
        retry_backoff_max: secs(s.retry_backoff_max_secs),
        acks: fedgate_s2s::ack::AckSettings {
            request_every: s.ack_request_every,
            request_after: Duration::from_millis(s.ack_request_after_ms),
            timeout: secs(s.ack_timeout_secs),
            max_unacked: s.max_unacked,
            max_unacked_bytes: s.max_unacked_bytes,
            confirm: s.confirm_delivery,
        },
        unacked: unacked(&s.unacked),
        unacked_by_domain: s
            .unacked_domains
            .iter()
            .map(|(d, v)| (d.to_ascii_lowercase(), unacked(v)))
            .collect(),
        stream_management: s.stream_management && s.confirm_delivery,
        shutdown_grace: secs(s.shutdown_grace_secs),
        ..StreamSettings::default()
    }
}

/// `resend` or `bounce` (checked when the config is loaded).
fn unacked(v: &str) -> fedgate_s2s::driver::context::Unacked {
    use fedgate_s2s::driver::context::Unacked;
    if v == "bounce" {
        Unacked::Bounce
    } else {
        Unacked::Resend
    }
}

/// Own identities from the config (loading PEM files or generating self-signed ones).
pub fn load_identities(cfg: &Config) -> anyhow::Result<IdentityStore> {
    let mut store = IdentityStore::new();
    for d in &cfg.domains {
        let id = match (&d.cert, &d.key) {
            (Some(c), Some(k)) => Identity::load(&d.name, c, k)
                .with_context(|| format!("{}: domains: {}: TLS identity", cfg.source, d.name))?,
            _ => {
                let wildcard = format!("*.{}", d.name);
                let (c, k) = fedgate_certs::dev::self_signed(&[&d.name, &wildcard])?;
                tracing::warn!(domain = %d.name, "using a generated self-signed certificate (development only)");
                Identity::from_pem(&d.name, &c, &k)?
            }
        };
        store.insert(id);
    }
    Ok(store)
}

/// Accept queue depth: a domain reconnecting hundreds of streams at once (after an outage)
/// must not see SYNs dropped (and retried a second later) behind the default 128.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("cannot listen for {what} on {addr}"))?;
    let socket = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(sa)?;
        Ok(s)
    })
    .with_context(|| format!("cannot listen for {what} on {addr}"))?;
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// The admin listener of `[admin]`: TCP (TLS with `cert`/`key`) or a Unix socket.
async fn bind_admin(
    cfg: &Config,
    admin: &crate::config::AdminConfig,
) -> anyhow::Result<(crate::http::server::Listener, crate::http::admin::AdminAddr)> {
    use crate::http::admin::AdminAddr;
    use crate::http::server::Listener;
    if let Some(path) = &admin.unix {
        let l = bind_unix(path)
            .with_context(|| format!("{}: admin.unix {}", cfg.source, path.display()))?;
        return Ok((
            Listener::Unix(l, path.clone()),
            AdminAddr::Unix(path.clone()),
        ));
    }
    let a = admin.listen.as_deref().unwrap_or_default();
    let l = bind(a, "admin").await?;
    let addr = AdminAddr::Tcp(l.local_addr()?);
    let listener = match (&admin.cert, &admin.key) {
        (Some(cert), Some(key)) => {
            let identity = Identity::load("admin", cert, key)
                .with_context(|| format!("{}: admin.cert", cfg.source))?;
            let mut store = IdentityStore::new();
            store.insert(identity);
            let tls = fedgate_certs::server_config(Arc::new(store), vec![b"http/1.1".to_vec()]);
            Listener::Tls(l, tokio_rustls::TlsAcceptor::from(tls))
        }
        _ => Listener::Tcp(l),
    };
    Ok((listener, addr))
}

/// Binds a Unix socket at `path`, made mode 0600. A socket file left by a gateway that did
/// not stop cleanly is replaced; one that a running process answers on, or a file that is not
/// a socket, is an error.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "the path exists and is not a socket"
        );
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "another process is serving this socket"
        );
        std::fs::remove_file(path).context("cannot remove the stale socket")?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

impl Gateway {
    pub async fn start(cfg: &Config) -> anyhow::Result<Self> {
        let identities = load_identities(cfg)?;
        if let Some(f) = cfg.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
            crate::http::read_admin_token(f)
                .map_err(|e| anyhow::anyhow!("{}: admin.token_file: {e}", cfg.source))?;
        }
        let anchors = Arc::new(
            TrustAnchors::new(cfg.tls.system_roots, &cfg.tls.trust_anchors)
                .with_context(|| format!("{}: tls.trust_anchors", cfg.source))?,
        );
        let crls = fedgate_certs::load_crls(&cfg.tls.crls)
            .with_context(|| format!("{}: tls.crls", cfg.source))?;
        let verifier = PeerVerifier::new(anchors.clone())
            .strict_client_eku(cfg.s2s.strict_client_eku)
            .with_crls(crls);
        let nameservers = if cfg.dns.nameservers.is_empty() {
            None
        } else {
            Some(
                cfg.dns
                    .nameservers
                    .iter()
                    .map(|a| a.parse())
                    .collect::<Result<Vec<SocketAddr>, _>>()?,
            )
        };
        // Internal servers are reached at their configured address, never through DNS.
        let mut targets = cfg.s2s.static_targets.clone();
        for d in &cfg.domains {
            if let Some(i) = &d.internal {
                // Its aliases are served by the same server.
                for name in std::iter::once(&d.name).chain(&d.aliases) {
                    targets.insert(name.clone(), i.clone());
                }
            }
        }
        let statics = StaticTargets::parse(&targets).map_err(anyhow::Error::msg)?;
        let resolver =
            S2sResolver::new(nameservers.clone(), statics).map_err(|e| anyhow::anyhow!("{e}"))?;
        let secret = match &cfg.s2s.dialback_secret {
            Some(s) => DialbackSecret::new(s),
            None => {
                tracing::warn!(
                    "no s2s.dialback_secret configured: using a random one (other nodes of the same domain cannot verify this node's dialback keys)"
                );
                DialbackSecret::new(&fedgate_s2s::driver::context::new_stream_id())
            }
        };
        // Aliases are hosted names too: served with their domain's certificate, by its
        // component or internal server.
        let alias_of: HashMap<String, String> = cfg
            .domains
            .iter()
            .flat_map(|d| d.aliases.iter().map(|a| (a.clone(), d.name.clone())))
            .collect();
        for (alias, domain) in &alias_of {
            identities.alias(alias, domain);
        }
        let hosted: HashSet<String> = cfg
            .domains
            .iter()
            .map(|d| d.name.clone())
            .chain(alias_of.keys().cloned())
            .collect();
        let component_secrets: HashMap<String, String> = cfg
            .domains
            .iter()
            .filter_map(|d| d.component_secret.clone().map(|s| (d.name.clone(), s)))
            .collect();
        let registry = prometheus::Registry::new();
        let settings = stream_settings(cfg);
        let defaults = fedgate_s2s::gate::Floor {
            tls_required: settings.tls_required,
            auth: settings.auth,
            pins: Vec::new(),
            max_streams: None,
            rule: None,
        };
        let policy = PolicyRuntime::start(
            cfg.policy.file.clone(),
            cfg.policy.shadow_file.clone(),
            defaults,
            &registry,
        )
        .map_err(|e| anyhow::anyhow!("policy file refused:\n{e}"))?;
        let verifier = Arc::new(verifier);
        let base_verifier = verifier.clone();
        policy.set_verifier_builder(Box::new(move |anchors| base_verifier.with_anchors(anchors)));
        let ctx = S2sContext::new(
            settings,
            hosted,
            secret,
            identities,
            verifier,
            resolver,
            &registry,
            component_secrets,
            policy.clone(),
        );
        let mut provers: Vec<Arc<dyn fedgate_s2s::driver::context::IdentityProver>> = Vec::new();
        if cfg.tls.dane {
            let anchors = match &cfg.tls.dane_trust_anchor {
                Some(f) => {
                    let text = std::fs::read_to_string(f).with_context(|| {
                        format!("{}: tls.dane_trust_anchor: {}", cfg.source, f.display())
                    })?;
                    let a = crate::provers::parse_dnskey(&text).map_err(|e| {
                        anyhow::anyhow!(
                            "{}: tls.dane_trust_anchor: {}: {e}",
                            cfg.source,
                            f.display()
                        )
                    })?;
                    Some(vec![a])
                }
                None => None,
            };
            let dane = fedgate_s2s::driver::dane::DaneResolver::new(nameservers.clone(), anchors)
                .map_err(|e| anyhow::anyhow!("DANE resolver: {e}"))?;
            provers.push(Arc::new(crate::provers::Dane {
                dane,
                resolver: ctx.resolver.clone(),
            }));
        }
        if cfg.tls.posh {
            let port = (cfg.tls.posh_port != 443).then_some(cfg.tls.posh_port);
            let client = fedgate_s2s::driver::posh::PoshClient::new(
                anchors.clone(),
                ctx.resolver.clone(),
                port,
            );
            provers.push(Arc::new(crate::provers::Posh(Arc::new(client))));
        }
        ctx.set_provers(provers);
        let certs = CertReloader::new(cfg, ctx.identities.clone(), anchors, &registry);
        let pool = Pool::new(ctx.clone());
        let components = Arc::new(Components::default());
        // Before any listener: a node that may not join its cluster never serves.
        let cluster = crate::cluster::start(cfg, &ctx, &components, &policy, &registry).await?;
        let internal_domains: Arc<HashSet<String>> = Arc::new(
            cfg.domains
                .iter()
                .filter(|d| d.internal.is_some())
                .map(|d| d.name.clone())
                .collect(),
        );
        let router = Arc::new(Router::new(
            ctx.clone(),
            pool.clone(),
            components.clone(),
            policy.clone(),
            internal_domains.clone(),
            Arc::new(alias_of),
        ));
        ctx.set_sink(router.clone());
        let sip = if cfg.sip.enabled() {
            let first = cfg.domains.first().map_or("localhost", |d| d.name.as_str());
            let settings = cfg.sip.settings(first);
            let partners: HashSet<String> = settings.partners.keys().cloned().collect();
            let link = SipFed::start(
                ctx.clone(),
                settings,
                cfg.sip.authz_store.clone(),
                &registry,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: sip: {e}", cfg.source))?;
            policy.set_sip_partners(partners.clone());
            let route = Arc::new(SipRoute::new(
                link,
                pool.clone(),
                partners,
                cfg.sip.discover,
            ));
            router.set_sip(route.clone());
            Some(route)
        } else {
            None
        };
        let intercluster =
            crate::intercluster_runtime::prepare(cfg, &ctx, &policy, &registry).await?;
        if let Some(ic) = &intercluster {
            router.set_intercluster(ic.ic.clone());
            ic.run(ctx.shutdown_signal());
        }
        let sip_addrs = sip
            .as_ref()
            .map(|s| s.link.addrs.clone())
            .unwrap_or_default();
        let watcher = if cfg.policy.watch.unwrap_or(true) {
            crate::policy_runtime::watch(policy.clone())
        } else {
            None
        };
        let http = Arc::new(HttpState {
            registry,
            ctx: ctx.clone(),
            pool: pool.clone(),
            components: components.clone(),
            sip: sip.clone(),
            intercluster: intercluster.clone(),
            cluster: cluster.clone(),
        });

        let mut tasks = Vec::new();
        let mut s2s_addrs = Vec::new();
        let mut direct_tls_addrs = Vec::new();
        for (list, direct, out) in [
            (&cfg.s2s.listen, false, &mut s2s_addrs),
            (&cfg.s2s.direct_tls_listen, true, &mut direct_tls_addrs),
        ] {
            for a in list {
                let l = bind(a, "s2s").await?;
                out.push(l.local_addr()?);
                tasks.push(tokio::spawn(fedgate_s2s::driver::listener::serve(
                    ctx.clone(),
                    pool.clone(),
                    l,
                    direct,
                    None,
                )));
            }
        }
        // The internal side: our own IM servers' outbound s2s arrives here.
        let internal_addr = match &cfg.internal.listen {
            Some(a) => {
                let l = bind(a, "internal s2s").await?;
                let addr = l.local_addr()?;
                tasks.push(tokio::spawn(fedgate_s2s::driver::listener::serve(
                    ctx.clone(),
                    pool.clone(),
                    l,
                    false,
                    Some(internal_domains.clone()),
                )));
                Some(addr)
            }
            None => None,
        };
        // The internal resolver steers the internal servers' SRV lookups to that listener.
        let internal_resolver = match (&cfg.internal.resolver, internal_addr) {
            (Some(bind), Some(listener)) => {
                let parse = |list: &[String]| -> anyhow::Result<Vec<SocketAddr>> {
                    list.iter().map(|a| Ok(a.parse()?)).collect()
                };
                let upstream = if cfg.internal.upstream.is_empty() {
                    parse(&cfg.dns.nameservers)?
                } else {
                    parse(&cfg.internal.upstream)?
                };
                let hosted = cfg
                    .domains
                    .iter()
                    .flat_map(|d| std::iter::once(d.name.clone()).chain(d.aliases.iter().cloned()))
                    .collect();
                let r = crate::internal_dns::InternalResolver::start(
                    crate::internal_dns::InternalResolverConfig {
                        bind: bind.parse()?,
                        hosted,
                        listener,
                        upstream,
                    },
                )
                .await
                .with_context(|| format!("{}: internal.resolver {bind}", cfg.source))?;
                tracing::info!(addr = %r.addr(), %listener, "internal resolver started");
                Some(r)
            }
            (Some(_), None) => {
                anyhow::bail!("{}: internal.resolver needs internal.listen", cfg.source)
            }
            _ => None,
        };
        let component_addr = match &cfg.components.listen {
            Some(a) => {
                let l = bind(a, "components").await?;
                let addr = l.local_addr()?;
                tasks.push(tokio::spawn(fedgate_s2s::driver::components::serve(
                    ctx.clone(),
                    components.clone(),
                    l,
                )));
                Some(addr)
            }
            None => None,
        };
        let metrics_addr = match &cfg.metrics.listen {
            Some(a) => {
                let l = bind(a, "metrics").await?;
                let addr = l.local_addr()?;
                tasks.push(tokio::spawn(crate::http::status::serve(
                    http.clone(),
                    crate::http::server::Listener::Tcp(l),
                )));
                Some(addr)
            }
            None => None,
        };
        let admin_addr = match &cfg.admin {
            Some(admin) => {
                let (listener, addr) = bind_admin(cfg, admin).await?;
                let state = Arc::new(crate::http::admin::AdminState {
                    token_file: admin.token_file.clone().unwrap_or_default(),
                    allowed_hosts: admin.effective_allowed_hosts(),
                    intercluster: intercluster.clone(),
                });
                tasks.push(tokio::spawn(crate::http::admin::serve(
                    state,
                    listener,
                    ctx.shutdown_signal(),
                )));
                tracing::info!(%addr, tls = admin.cert.is_some(), allowed_hosts = ?admin.effective_allowed_hosts(), "admin listener started");
                Some(addr)
            }
            None => None,
        };
        if cfg.tls.reload_check_secs > 0 {
            tasks.push(tokio::spawn(poll_certs(
                certs.clone(),
                ctx.shutdown_signal(),
                Duration::from_secs(cfg.tls.reload_check_secs),
            )));
        }
        let mut hosted: Vec<_> = ctx.hosted.iter().cloned().collect();
        hosted.sort();
        tracing::info!(domains = ?hosted, s2s = ?s2s_addrs, direct_tls = ?direct_tls_addrs, components = ?component_addr, metrics = ?metrics_addr, "fedgate started");
        Ok(Self {
            ctx,
            certs,
            policy,
            _watcher: watcher,
            pool,
            components,
            http,
            s2s_addrs,
            direct_tls_addrs,
            component_addr,
            metrics_addr,
            admin_addr,
            internal_addr,
            internal_resolver,
            sip,
            sip_addrs,
            intercluster,
            cluster,
            tasks,
        })
    }

    /// Reloads the own certificates of every hosted domain from their files now (SIGHUP):
    /// each pair that passes the checks of `fedgate certs check` replaces the identity in use
    /// for new streams; a failing pair is refused, logged and counted, the old one stays.
    pub fn reload_certs(&self, trigger: &str) -> Vec<(String, ReloadOutcome)> {
        self.certs.reload_all(trigger)
    }

    /// Drain, then stop: listeners stop accepting; every outbound stream and component link
    /// delivers what it holds and waits for its next hop's confirmation (or, past
    /// `s2s.shutdown_grace_secs`, bounces what is left); inbound streams keep reading answers
    /// meanwhile and take no new work, then send their last acknowledgement and close with
    /// `system-shutdown`.
    pub async fn shutdown(self) {
        let grace = self.ctx.settings.shutdown_grace;
        self.ctx.begin_shutdown();
        if let Some(ic) = &self.intercluster {
            ic.shutdown();
        }
        // Each link ends itself at the grace time; the extra second is for its bounces.
        if tokio::time::timeout(grace + Duration::from_secs(1), self.ctx.drained())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: links still open after the grace time");
        }
        self.ctx.begin_closing();
        // Inbound streams wait up to 2 s for their last acknowledgements, then close.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ctx.inbound_closed()).await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if let Some(r) = self.internal_resolver {
            r.stop().await;
        }
    }
}

/// Looks at the certificate files every `every` until shutdown (the check itself reads small
/// files and verifies one chain per changed domain, so it runs on a blocking thread).
async fn poll_certs(
    certs: Arc<CertReloader>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let c = certs.clone();
                let _ = tokio::task::spawn_blocking(move || c.poll()).await;
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}
