//! `fedgate probe DOMAIN`: the operator's federation check.
//!
//! Shows how this gateway would reach `DOMAIN`: the SRV records (or the static target, or the
//! A/AAAA fallback), then for each target address the TCP connect, TLS (version, cipher, ALPN),
//! the certificate chain with the chain and name checks, and the stream features before and
//! after TLS (SASL mechanisms, dialback). It never authenticates: it opens the stream, reads the
//! features, upgrades to TLS, reads the features again and closes with `</stream:stream>`.
//!
//! A target works when TCP and TLS succeed and an authentication path exists: dialback is
//! offered, or the certificate is valid for the domain and SASL EXTERNAL is offered. Federation
//! works when any target works; the CLI exits 0 only then (1 otherwise, 2 for bad arguments).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fedgate_certs::{CertFailure, CertFailureKind, Identity, PeerVerifier, TrustAnchors};
use fedgate_s2s::driver::conn::Conn;
use fedgate_s2s::driver::io::Io;
use fedgate_s2s::element::{Element, NS_DIALBACK_FEATURE, NS_SASL, NS_SERVER, NS_STREAM, NS_TLS};
use fedgate_s2s::resolve::{DnsError, S2sResolver, StaticTargets, Target};
use fedgate_s2s::srv::SrvRecord;
use fedgate_s2s::wire::{Header, parse_stream_error};
use fedgate_s2s::xml::{Limits, StreamEvent};
use rustls_pki_types::UnixTime;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{Config, process_env};

/// At most this many target addresses are probed.
pub const MAX_TARGETS: usize = 10;

/// `fedgate probe` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The remote XMPP domain to check.
    pub domain: String,
    /// Nameserver as ip:port (or ip, port 53); default: the config's dns.nameservers, else the
    /// system's resolver.
    #[arg(long)]
    pub dns: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// A fedgate config: trust anchors, nameservers, static targets, and the `from` domain
    /// whose certificate is presented as TLS client certificate.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stream `from` domain (default: the first hosted domain of --config, else none).
    #[arg(long)]
    pub from: Option<String>,
    /// Extra trust anchors (PEM files); may be repeated.
    #[arg(long = "ca")]
    pub ca: Vec<PathBuf>,
    /// Timeout of each TCP connect and of each target's negotiation, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Probe the domain as a SIP federation partner: `_sipfederationtls._tcp` / NAPTR /
    /// `_sips._tcp` / static route, TCP, mutual TLS, then SIP OPTIONS.
    #[arg(long)]
    pub sip: bool,
}

impl ProbeArgs {
    /// Arguments for `domain` with every option at its default.
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            dns: None,
            json: false,
            config: None,
            from: None,
            ca: Vec::new(),
            timeout_secs: 10,
            sip: false,
        }
    }
}

/// The whole result of a probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub domain: String,
    /// Stream `from` sent (none: no `from` attribute).
    pub from: Option<String>,
    /// Whether a TLS client certificate was presented (needed for SASL EXTERNAL to be offered).
    pub client_certificate: bool,
    pub srv: SrvReport,
    pub targets: Vec<TargetReport>,
    /// Federation with the domain would work (some target works).
    pub works: bool,
    /// The failure kind of the verdict when it does not work (dns, connect, tls, cert-chain,
    /// cert-name, auth, timeout, stream).
    pub kind: Option<String>,
    /// One line: why it works, or the first blocking failure with its kind.
    pub verdict: String,
}

/// How the targets were found.
#[derive(Debug, Clone, Serialize)]
pub struct SrvReport {
    /// `srv`, `static`, `fallback` (no SRV records: the domain on 5269), or `error`.
    pub source: String,
    /// `_xmpps-server._tcp` answers (direct TLS), as DNS returned them.
    pub xmpps: Vec<SrvLine>,
    /// `_xmpp-server._tcp` answers (STARTTLS).
    pub xmpp: Vec<SrvLine>,
    /// The static target, the fallback, or the DNS error, in words.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SrvLine {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

impl From<&SrvRecord> for SrvLine {
    fn from(r: &SrvRecord) -> Self {
        Self {
            priority: r.priority,
            weight: r.weight,
            port: r.port,
            target: r.target.clone(),
        }
    }
}

/// One probed target address.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub host: String,
    pub port: u16,
    /// Direct TLS (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
    /// The target came from an SRV record.
    pub from_srv: bool,
    /// The address connected to (none when the host did not resolve).
    pub addr: Option<String>,
    pub connect: Option<ConnectReport>,
    pub tls: Option<TlsReport>,
    pub certificate: Option<CertReport>,
    pub stream: Option<StreamReport>,
    /// Authentication methods that would work: `sasl-external`, `dialback`.
    pub auth: Vec<String>,
    pub works: bool,
    /// The blocking failure of this target.
    pub error: Option<ProbeError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub ok: bool,
    pub ms: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    pub version: Option<String>,
    pub cipher: Option<String>,
    pub alpn: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    /// Leaf first, as the server sent it.
    pub chain: Vec<CertInfo>,
    pub chain_check: Check,
    pub name_check: Check,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub not_after_unix: i64,
    pub sha256: String,
}

/// The result of one certificate check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    /// Failure kind (`cert-chain`, `cert-expired`, `cert-name`, `no-certificate` …).
    pub kind: Option<String>,
    /// `ok`, the identifier that matched (`dns-id`, `srv-id` …), or what failed.
    pub detail: String,
}

impl Check {
    fn ok(detail: &str) -> Self {
        Self {
            ok: true,
            kind: None,
            detail: detail.to_owned(),
        }
    }

    fn failed(f: &CertFailure) -> Self {
        Self {
            ok: false,
            kind: Some(f.kind.as_str().to_owned()),
            detail: f.detail.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    /// Stream id of the last stream header received.
    pub id: Option<String>,
    /// Version attribute of the last stream header received.
    pub version: Option<String>,
    pub features_before_tls: Vec<String>,
    pub features_after_tls: Vec<String>,
    /// SASL mechanisms offered after TLS.
    pub sasl_mechanisms: Vec<String>,
    /// Dialback offered after TLS.
    pub dialback: bool,
    pub starttls_offered: bool,
    pub starttls_required: bool,
}

/// A typed failure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProbeError {
    pub kind: String,
    pub detail: String,
}

impl ProbeError {
    fn new(kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl From<fedgate_s2s::wire::Failure> for ProbeError {
    fn from(f: fedgate_s2s::wire::Failure) -> Self {
        Self::new(f.kind.as_str(), f.detail)
    }
}

/// The CLI entry: runs the probe (XMPP, or SIP with `--sip`), prints text or JSON, and returns
/// the exit status (0 federation works, 1 it does not, 2 bad arguments).
pub fn cli(args: ProbeArgs) -> u8 {
    let json = args.json;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fedgate: probe: tokio runtime: {e}");
            return 2;
        }
    };
    let outcome = if args.sip {
        rt.block_on(crate::probe_sip::run(args)).map(|r| {
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&r).unwrap_or_default())
            } else {
                crate::probe_sip::render_text(&r)
            };
            (r.works, text)
        })
    } else {
        rt.block_on(run(args)).map(|r| {
            let text = if json {
                format!("{}\n", render_json(&r))
            } else {
                render_text(&r)
            };
            (r.works, text)
        })
    };
    match outcome {
        Ok((works, text)) => {
            print!("{text}");
            if works { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("fedgate: probe: {e:#}");
            2
        }
    }
}

/// Everything a target probe needs.
struct Ctx {
    domain: String,
    from: Option<String>,
    verifier: PeerVerifier,
    starttls: tokio_rustls::TlsConnector,
    direct: tokio_rustls::TlsConnector,
    timeout: Duration,
}

fn parse_nameserver(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    anyhow::bail!("--dns {s:?}: expected ip:port or ip")
}

/// Run the probe. Errors only for unusable arguments (bad config, unreadable trust anchors,
/// bad nameserver); every network outcome is in the report.
/// What every probe (XMPP or SIP) starts from: the domain, the config, our identity, the
/// verifier and the resolver.
pub(crate) struct ProbeSetup {
    pub domain: String,
    pub cfg: Option<Config>,
    pub from: Option<String>,
    pub identity: Option<Arc<Identity>>,
    pub verifier: PeerVerifier,
    pub resolver: S2sResolver,
}

pub(crate) fn setup(args: &ProbeArgs) -> anyhow::Result<ProbeSetup> {
    let domain = args
        .domain
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if domain.is_empty() || domain.contains(['@', '/', ' ', ':']) {
        anyhow::bail!("{:?} is not a domain name", args.domain);
    }
    let cfg = match &args.config {
        Some(p) => Some(Config::load(p, &process_env()).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let from = args
        .from
        .as_deref()
        .map(|f| f.trim().trim_end_matches('.').to_ascii_lowercase())
        .or_else(|| {
            cfg.as_ref()
                .and_then(|c| c.domains.first().map(|d| d.name.clone()))
        });
    let identity: Option<Arc<Identity>> = match (&cfg, &from) {
        (Some(c), Some(f)) => crate::gateway::load_identities(c)?.get(f),
        _ => None,
    };

    let mut anchor_files: Vec<PathBuf> = cfg
        .as_ref()
        .map(|c| c.tls.trust_anchors.clone())
        .unwrap_or_default();
    anchor_files.extend(args.ca.iter().cloned());
    let system = cfg.as_ref().is_none_or(|c| c.tls.system_roots);
    let anchors = TrustAnchors::new(system, &anchor_files).context("trust anchors")?;
    let verifier = PeerVerifier::new(Arc::new(anchors))
        .strict_client_eku(cfg.as_ref().is_some_and(|c| c.s2s.strict_client_eku));

    let nameservers = match (&args.dns, &cfg) {
        (Some(d), _) => Some(vec![parse_nameserver(d)?]),
        (None, Some(c)) if !c.dns.nameservers.is_empty() => Some(
            c.dns
                .nameservers
                .iter()
                .map(|a| parse_nameserver(a))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
        _ => None,
    };
    let statics = match &cfg {
        Some(c) => StaticTargets::parse(&c.s2s.static_targets).map_err(anyhow::Error::msg)?,
        None => StaticTargets::default(),
    };
    let resolver = S2sResolver::new(nameservers, statics).map_err(|e| anyhow::anyhow!("{e}"))?;

    Ok(ProbeSetup {
        domain,
        cfg,
        from,
        identity,
        verifier,
        resolver,
    })
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<ProbeReport> {
    if args.sip {
        anyhow::bail!("use crate::probe_sip for --sip");
    }
    let ProbeSetup {
        domain,
        from,
        identity,
        verifier,
        resolver,
        ..
    } = setup(&args)?;
    let ctx = Ctx {
        domain: domain.clone(),
        from: from.clone(),
        verifier,
        starttls: tokio_rustls::TlsConnector::from(fedgate_certs::client_config(
            identity.clone(),
            Vec::new(),
        )),
        direct: tokio_rustls::TlsConnector::from(fedgate_certs::client_config(
            identity.clone(),
            vec![b"xmpp-server".to_vec()],
        )),
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };

    let mut report = ProbeReport {
        domain: domain.clone(),
        from,
        client_certificate: identity.is_some(),
        srv: SrvReport {
            source: "srv".into(),
            xmpps: Vec::new(),
            xmpp: Vec::new(),
            note: None,
        },
        targets: Vec::new(),
        works: false,
        kind: None,
        verdict: String::new(),
    };

    let targets = match discover(&resolver, &domain, &mut report.srv).await {
        Ok(t) => t,
        Err(e) => {
            // Every DNS failure, a nameserver that does not answer included, is kind `dns`
            // (the detail says "timed out"), as in the gateway.
            report.kind = Some("dns".to_owned());
            report.verdict = format!("federation with {domain} does not work: dns: {}", e.detail);
            return Ok(report);
        }
    };

    'targets: for t in targets {
        match resolver.addrs(&t.host).await {
            Err(e) => {
                let mut r = TargetReport::new(&t, None);
                r.error = Some(ProbeError::new("dns", e.detail));
                report.targets.push(r);
            }
            Ok(ips) => {
                for ip in ips {
                    if report.targets.len() >= MAX_TARGETS {
                        break 'targets;
                    }
                    let r = probe_target(&ctx, &t, SocketAddr::new(ip, t.port)).await;
                    report.targets.push(r);
                }
            }
        }
        if report.targets.len() >= MAX_TARGETS {
            break;
        }
    }

    finish(&mut report);
    Ok(report)
}

/// The targets in the order the gateway would try them; fills the SRV part of the report.
async fn discover(
    resolver: &S2sResolver,
    domain: &str,
    srv: &mut SrvReport,
) -> Result<Vec<Target>, DnsError> {
    if let Some(t) = resolver.statics().lookup(domain) {
        srv.source = "static".into();
        srv.note = Some(format!(
            "static target {}://{}:{} from the config (no DNS)",
            if t.direct_tls { "tls" } else { "tcp" },
            t.host,
            t.port
        ));
        return Ok(vec![t]);
    }
    match resolver.srv_records(domain).await {
        Ok(l) => {
            srv.xmpps = l.xmpps.iter().map(SrvLine::from).collect();
            srv.xmpp = l.xmpp.iter().map(SrvLine::from).collect();
            for list in [&mut srv.xmpps, &mut srv.xmpp] {
                list.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
            }
        }
        Err(e) => {
            srv.source = "error".into();
            srv.note = Some(e.detail.clone());
        }
    }
    let targets = resolver.targets(domain).await?;
    if let [only] = targets.as_slice()
        && !only.from_srv
    {
        srv.source = "fallback".into();
        srv.note = Some(format!("no SRV: fallback to {}:{}", only.host, only.port));
    }
    Ok(targets)
}

impl TargetReport {
    fn new(t: &Target, addr: Option<SocketAddr>) -> Self {
        Self {
            host: t.host.clone(),
            port: t.port,
            direct_tls: t.direct_tls,
            from_srv: t.from_srv,
            addr: addr.map(|a| a.ip().to_string()),
            connect: None,
            tls: None,
            certificate: None,
            stream: None,
            auth: Vec::new(),
            works: false,
            error: None,
        }
    }

    fn cert_ok(&self) -> bool {
        self.certificate
            .as_ref()
            .is_some_and(|c| c.chain_check.ok && c.name_check.ok)
    }

    /// The first failing certificate check as a blocking failure.
    fn cert_failure(&self) -> Option<ProbeError> {
        let c = self.certificate.as_ref()?;
        if !c.chain_check.ok {
            return Some(ProbeError::new("cert-chain", check_text(&c.chain_check)));
        }
        if !c.name_check.ok {
            return Some(ProbeError::new("cert-name", check_text(&c.name_check)));
        }
        None
    }
}

fn check_text(c: &Check) -> String {
    match &c.kind {
        Some(k) if k != "cert-chain" && k != "cert-name" => format!("{k}: {}", c.detail),
        _ => c.detail.clone(),
    }
}

async fn probe_target(ctx: &Ctx, t: &Target, addr: SocketAddr) -> TargetReport {
    let mut r = TargetReport::new(t, Some(addr));
    let started = Instant::now();
    let connected = tokio::time::timeout(ctx.timeout, TcpStream::connect(addr)).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let tcp = match connected {
        Err(_) => {
            let detail = format!("connect to {addr} timed out after {:?}", ctx.timeout);
            r.connect = Some(ConnectReport {
                ok: false,
                ms,
                error: Some(detail.clone()),
            });
            r.error = Some(ProbeError::new("timeout", detail));
            return r;
        }
        Ok(Err(e)) => {
            let detail = format!("{addr}: {e}");
            r.connect = Some(ConnectReport {
                ok: false,
                ms,
                error: Some(detail.clone()),
            });
            r.error = Some(ProbeError::new("connect", detail));
            return r;
        }
        Ok(Ok(s)) => s,
    };
    r.connect = Some(ConnectReport {
        ok: true,
        ms,
        error: None,
    });
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(Io::Plain(tcp), Limits::default());
    let outcome = tokio::time::timeout(ctx.timeout, negotiate(ctx, t, &mut conn, &mut r)).await;
    match outcome {
        Err(_) => {
            r.error = Some(ProbeError::new(
                "timeout",
                format!(
                    "negotiation with {addr} did not finish in {:?}",
                    ctx.timeout
                ),
            ));
        }
        Ok(Err(e)) => r.error = Some(e),
        Ok(Ok(())) => evaluate(&mut r),
    }
    if !matches!(conn.io, Io::Gone) {
        conn.close_with(b"</stream:stream>").await;
    }
    r
}

/// TLS (first or after STARTTLS), stream headers and features, without authenticating.
async fn negotiate(
    ctx: &Ctx,
    t: &Target,
    conn: &mut Conn,
    r: &mut TargetReport,
) -> Result<(), ProbeError> {
    r.stream = Some(StreamReport::default());
    if t.direct_tls {
        conn.connect_tls(&ctx.direct, &ctx.domain).await?;
        after_tls(ctx, conn, r);
    }
    let features = open_stream(ctx, conn, r).await?;
    let stream = r.stream.get_or_insert_with(StreamReport::default);
    if conn.io.is_tls() {
        read_features(features.as_ref(), stream, true);
        return Ok(());
    }
    read_features(features.as_ref(), stream, false);
    if !stream.starttls_offered {
        return Err(ProbeError::new(
            "tls",
            "STARTTLS not offered (fedgate requires TLS by default)",
        ));
    }
    conn.queue(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes());
    conn.flush()
        .await
        .map_err(|e| ProbeError::new("connect", format!("write: {e}")))?;
    let answer = next_element(conn).await?;
    if !answer.is("proceed", NS_TLS) {
        return Err(ProbeError::new(
            "tls",
            format!("the server answered <{}/> to <starttls/>", answer.name),
        ));
    }
    conn.connect_tls(&ctx.starttls, &ctx.domain).await?;
    after_tls(ctx, conn, r);
    let features = open_stream(ctx, conn, r).await?;
    let stream = r.stream.get_or_insert_with(StreamReport::default);
    read_features(features.as_ref(), stream, true);
    Ok(())
}

/// Send our stream header, read the server's and its features (none for a pre-1.0 stream).
async fn open_stream(
    ctx: &Ctx,
    conn: &mut Conn,
    r: &mut TargetReport,
) -> Result<Option<Element>, ProbeError> {
    conn.queue(
        &Header {
            content_ns: NS_SERVER,
            from: ctx.from.as_deref(),
            to: Some(&ctx.domain),
            id: None,
            version: true,
            dialback: true,
        }
        .to_bytes(),
    );
    conn.flush()
        .await
        .map_err(|e| ProbeError::new("connect", format!("write: {e}")))?;
    let header = match conn.next_event().await.map_err(|e| e.failure())? {
        StreamEvent::Open(h) => h,
        StreamEvent::Element(el, _) => return Err(unexpected(&el)),
        StreamEvent::Close => {
            return Err(ProbeError::new(
                "stream",
                "the server closed the stream instead of opening one",
            ));
        }
    };
    let stream = r.stream.get_or_insert_with(StreamReport::default);
    stream.id.clone_from(&header.id);
    stream.version.clone_from(&header.version);
    if header.version.as_deref() != Some("1.0") {
        // A pre-XMPP-1.0 server: no features; dialback if it declared the namespace.
        stream.dialback = header.declares_dialback;
        return Ok(None);
    }
    let el = next_element(conn).await?;
    if el.is("features", NS_STREAM) {
        Ok(Some(el))
    } else {
        Err(unexpected(&el))
    }
}

async fn next_element(conn: &mut Conn) -> Result<Element, ProbeError> {
    match conn.next_event().await.map_err(|e| e.failure())? {
        StreamEvent::Element(el, _) if el.is("error", NS_STREAM) => Err(unexpected(&el)),
        StreamEvent::Element(el, _) => Ok(el),
        StreamEvent::Open(_) => Err(ProbeError::new("stream", "unexpected second stream header")),
        StreamEvent::Close => Err(ProbeError::new(
            "stream",
            "the server closed the stream during negotiation",
        )),
    }
}

fn unexpected(el: &Element) -> ProbeError {
    if el.is("error", NS_STREAM) {
        let (cond, text) = parse_stream_error(el);
        let detail = if text.is_empty() {
            format!("stream error <{cond}/>")
        } else {
            format!("stream error <{cond}/>: {text}")
        };
        ProbeError::new("stream", detail)
    } else {
        ProbeError::new(
            "stream",
            format!("unexpected <{}/> ({}) during negotiation", el.name, el.ns),
        )
    }
}

fn read_features(features: Option<&Element>, s: &mut StreamReport, after_tls: bool) {
    let mut list = Vec::new();
    if let Some(f) = features {
        for c in f.elements() {
            if c.is("starttls", NS_TLS) {
                let required = c.elements().any(|e| e.name == "required");
                if !after_tls {
                    s.starttls_offered = true;
                    s.starttls_required = required;
                }
                list.push(if required {
                    "starttls(required)".to_owned()
                } else {
                    "starttls".to_owned()
                });
            } else if c.is("mechanisms", NS_SASL) {
                let mechs: Vec<String> = c
                    .elements()
                    .filter(|m| m.name == "mechanism")
                    .map(|m| m.text().trim().to_owned())
                    .collect();
                list.push(format!("SASL {}", mechs.join(" ")).trim_end().to_owned());
                if after_tls {
                    s.sasl_mechanisms = mechs;
                }
            } else if c.is("dialback", NS_DIALBACK_FEATURE) {
                list.push("dialback".to_owned());
                if after_tls {
                    s.dialback = true;
                }
            } else {
                list.push(format!("{} ({})", c.name, c.ns));
            }
        }
    }
    if after_tls {
        s.features_after_tls = list;
    } else {
        s.features_before_tls = list;
    }
}

/// Record TLS parameters and check the server's certificate for the domain.
fn after_tls(ctx: &Ctx, conn: &Conn, r: &mut TargetReport) {
    let (cipher, alpn) = match &conn.io {
        Io::TlsClient(tls) => {
            let c = tls.get_ref().1;
            (
                c.negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite())),
                c.alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            )
        }
        _ => (None, None),
    };
    r.tls = Some(TlsReport {
        version: conn.io.tls_version().map(str::to_owned),
        cipher,
        alpn,
    });
    let chain = conn.io.peer_certs();
    let infos = chain.iter().map(cert_info).collect();
    let (chain_check, name_check) = match chain.first() {
        None => {
            let f = CertFailure::new(
                CertFailureKind::NoCertificate,
                "the server sent no certificate",
            );
            (Check::failed(&f), Check::failed(&f))
        }
        Some(leaf) => match ctx
            .verifier
            .verify(&chain, &ctx.domain, false, UnixTime::now())
        {
            Ok(v) => (Check::ok("ok"), Check::ok(v.matched.as_str())),
            Err(f) if f.kind == CertFailureKind::Name => (Check::ok("ok"), Check::failed(&f)),
            Err(f) => (
                Check::failed(&f),
                match fedgate_certs::check_name(leaf, &ctx.domain) {
                    Ok(m) => Check::ok(m.as_str()),
                    Err(nf) => Check::failed(&nf),
                },
            ),
        },
    };
    r.certificate = Some(CertReport {
        chain: infos,
        chain_check,
        name_check,
    });
}

fn cert_info(c: &rustls_pki_types::CertificateDer<'static>) -> CertInfo {
    match fedgate_certs::cert_summary(c) {
        Ok(s) => CertInfo {
            subject: s.subject,
            issuer: s.issuer,
            names: s.names,
            not_before: fedgate_certs::fmt_unix(s.not_before),
            not_after: fedgate_certs::fmt_unix(s.not_after),
            not_after_unix: s.not_after,
            sha256: s.sha256_fingerprint,
        },
        Err(f) => CertInfo {
            subject: format!("(unreadable: {f})"),
            issuer: String::new(),
            names: Vec::new(),
            not_before: String::new(),
            not_after: String::new(),
            not_after_unix: 0,
            sha256: fedgate_certs::sha256_fingerprint(c.as_ref()),
        },
    }
}

/// After a complete negotiation: which authentication paths exist.
fn evaluate(r: &mut TargetReport) {
    if r.tls.is_none() {
        r.error = Some(ProbeError::new("tls", "TLS was not established"));
        return;
    }
    let cert_ok = r.cert_ok();
    let (external, dialback) = r.stream.as_ref().map_or((false, false), |s| {
        (
            s.sasl_mechanisms.iter().any(|m| m == "EXTERNAL"),
            s.dialback,
        )
    });
    if cert_ok && external {
        r.auth.push("sasl-external".into());
    }
    if dialback {
        r.auth.push("dialback".into());
    }
    if !r.auth.is_empty() {
        r.works = true;
        return;
    }
    r.error = Some(match r.cert_failure() {
        Some(mut f) => {
            f.detail.push_str("; and dialback is not offered");
            f
        }
        None => ProbeError::new(
            "auth",
            if external {
                "dialback is not offered and SASL EXTERNAL cannot be used".to_owned()
            } else {
                "neither SASL EXTERNAL nor dialback is offered".to_owned()
            },
        ),
    });
}

fn target_label(t: &TargetReport) -> String {
    format!("{}:{}", t.host, t.port)
}

fn finish(report: &mut ProbeReport) {
    let d = report.domain.clone();
    if let Some(t) = report.targets.iter().find(|t| t.works) {
        report.works = true;
        let external = t.auth.iter().any(|a| a == "sasl-external");
        let why = if t.cert_ok() {
            let offered = t
                .stream
                .as_ref()
                .is_some_and(|s| s.sasl_mechanisms.iter().any(|m| m == "EXTERNAL"));
            match (external, t.stream.as_ref().is_some_and(|s| s.dialback)) {
                (true, true) => "certificate valid, SASL EXTERNAL and dialback offered".to_owned(),
                (true, false) => "certificate valid, SASL EXTERNAL offered".to_owned(),
                _ if !offered && !report.client_certificate => {
                    "certificate valid, dialback offered (no client certificate presented, so \
                     no SASL EXTERNAL)"
                        .to_owned()
                }
                _ => "certificate valid, dialback offered".to_owned(),
            }
        } else {
            let cert = t
                .cert_failure()
                .map_or_else(|| "not checked".to_owned(), |f| f.to_string());
            format!("dialback only; certificate not accepted: {cert}")
        };
        report.verdict = format!(
            "federation with {d} works (target {}: {why})",
            target_label(t)
        );
        return;
    }
    report.works = false;
    match report
        .targets
        .iter()
        .find_map(|t| t.error.as_ref().map(|e| (t, e)))
    {
        Some((t, e)) => {
            report.kind = Some(e.kind.clone());
            let more = if report.targets.len() > 1 {
                format!(", and {} more target(s) failed", report.targets.len() - 1)
            } else {
                String::new()
            };
            report.verdict = format!(
                "federation with {d} does not work: {}: {} (target {}{more})",
                e.kind,
                e.detail,
                target_label(t)
            );
        }
        None => {
            report.kind = Some("dns".into());
            report.verdict = format!("federation with {d} does not work: dns: no targets");
        }
    }
}

/// The report as pretty JSON.
pub fn render_json(r: &ProbeReport) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn name_match_text(s: &str) -> &str {
    match s {
        "dns-id" => "DNS-ID",
        "wildcard-dns-id" => "wildcard DNS-ID",
        "srv-id" => "SRV-ID",
        "xmppaddr" => "XmppAddr",
        other => other,
    }
}

fn check_line(c: &Check, is_name: bool) -> String {
    if c.ok {
        if is_name {
            format!("ok ({})", name_match_text(&c.detail))
        } else {
            "ok".to_owned()
        }
    } else {
        format!("{}: {}", c.kind.as_deref().unwrap_or("failed"), c.detail)
    }
}

fn srv_lines(out: &mut String, label: &str, width: usize, list: &[SrvLine]) {
    let head = format!("SRV {label}:");
    if list.is_empty() {
        out.push_str(&format!("{head:<width$} (none)\n"));
        return;
    }
    for (i, r) in list.iter().enumerate() {
        let h = if i == 0 { head.as_str() } else { "" };
        out.push_str(&format!(
            "{h:<width$} {} {} {} {}\n",
            r.priority, r.weight, r.port, r.target
        ));
    }
}

/// Human-readable report (no colors).
pub fn render_text(r: &ProbeReport) -> String {
    let mut out = format!("fedgate probe {}\n", r.domain);
    if let Some(from) = &r.from {
        out.push_str(&format!(
            "from {from} ({})\n",
            if r.client_certificate {
                "client certificate presented"
            } else {
                "no client certificate"
            }
        ));
    }
    if r.srv.source == "static" {
        if let Some(n) = &r.srv.note {
            out.push_str(n);
            out.push('\n');
        }
    } else {
        let a = format!("_xmpps-server._tcp.{}", r.domain);
        let b = format!("_xmpp-server._tcp.{}", r.domain);
        let width = a.len().max(b.len()) + 5;
        srv_lines(&mut out, &a, width, &r.srv.xmpps);
        srv_lines(&mut out, &b, width, &r.srv.xmpp);
        if let Some(n) = &r.srv.note {
            out.push_str(n);
            out.push('\n');
        }
    }
    let now = fedgate_certs::unix_now();
    for t in &r.targets {
        out.push_str(&format!(
            "target {}:{} ({}) {}\n",
            t.host,
            t.port,
            t.addr.as_deref().unwrap_or("unresolved"),
            if t.direct_tls {
                "direct TLS"
            } else {
                "STARTTLS"
            }
        ));
        let row = |out: &mut String, k: &str, v: &str| {
            out.push_str(&format!("  {k:<9} {v}\n"));
        };
        if let Some(c) = &t.connect {
            let v = if c.ok {
                format!("ok ({} ms)", c.ms)
            } else {
                format!("failed ({} ms): {}", c.ms, c.error.as_deref().unwrap_or(""))
            };
            row(&mut out, "connect", &v);
        }
        if let Some(tls) = &t.tls {
            let mut v = tls.version.clone().unwrap_or_else(|| "?".into());
            if let Some(c) = &tls.cipher {
                v.push(' ');
                v.push_str(c);
            }
            if let Some(a) = &tls.alpn {
                v.push_str(&format!("  ALPN {a}"));
            }
            row(&mut out, "tls", &v);
        }
        if let Some(cert) = &t.certificate {
            for (i, c) in cert.chain.iter().enumerate() {
                let days = (c.not_after_unix - now).div_euclid(86_400);
                let when = if days >= 0 {
                    format!("expires {} ({days} days)", date_only(&c.not_after))
                } else {
                    format!("expired {} ({} days ago)", date_only(&c.not_after), -days)
                };
                row(
                    &mut out,
                    if i == 0 { "cert" } else { "" },
                    &format!("{}  issued by {}  {when}", c.subject, c.issuer),
                );
                if !c.names.is_empty() {
                    row(&mut out, "", &format!("names {}", c.names.join(", ")));
                }
            }
            if cert.chain.is_empty() {
                row(&mut out, "cert", "(none)");
            }
            row(&mut out, "chain", &check_line(&cert.chain_check, false));
            row(&mut out, "name", &check_line(&cert.name_check, true));
        }
        if let Some(s) = &t.stream {
            let list = |l: &[String]| {
                if l.is_empty() {
                    "(none)".to_owned()
                } else {
                    l.join(", ")
                }
            };
            let v = if t.direct_tls {
                format!("after TLS: {}", list(&s.features_after_tls))
            } else if t.tls.is_some() {
                format!(
                    "before TLS: {}; after TLS: {}",
                    list(&s.features_before_tls),
                    list(&s.features_after_tls)
                )
            } else {
                format!("before TLS: {}", list(&s.features_before_tls))
            };
            if s.id.is_some() || !s.features_before_tls.is_empty() {
                row(&mut out, "features", &v);
            }
        }
        match &t.error {
            Some(e) => row(&mut out, "error", &e.to_string()),
            None if t.works => row(&mut out, "auth", &t.auth.join(", ")),
            None => {}
        }
    }
    out.push_str(&format!("verdict: {}\n", r.verdict));
    out
}

fn date_only(s: &str) -> &str {
    s.split('T').next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(fedgate_certs::fmt_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(fedgate_certs::fmt_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            fedgate_certs::fmt_unix(1_803_254_399),
            "2027-02-21T23:59:59Z"
        );
        assert_eq!(fedgate_certs::fmt_unix(-86_400), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn nameservers() {
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert!(parse_nameserver("ns.example").is_err());
    }

    #[test]
    fn features_are_read() {
        let f = Element::new("features", NS_STREAM)
            .with_child(
                Element::new("mechanisms", NS_SASL)
                    .with_child(Element::new("mechanism", NS_SASL).with_text("EXTERNAL")),
            )
            .with_child(Element::new("dialback", NS_DIALBACK_FEATURE))
            .with_child(Element::new("sm", "urn:xmpp:sm:3"));
        let mut s = StreamReport::default();
        read_features(Some(&f), &mut s, true);
        assert_eq!(
            s.features_after_tls,
            vec!["SASL EXTERNAL", "dialback", "sm (urn:xmpp:sm:3)"]
        );
        assert_eq!(s.sasl_mechanisms, vec!["EXTERNAL"]);
        assert!(s.dialback);
    }
}
