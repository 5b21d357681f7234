//! `fedgate probe --sip DOMAIN`: the operator's check of a SIP federation partner.
//!
//! The same steps the gateway takes: discovery (`_sipfederationtls._tcp`, then NAPTR
//! `SIPS+D2T`, then `_sips._tcp`, then the config's static route, then the domain's A/AAAA on 5061), then for each target
//! address TCP, TLS with our client certificate (from `--config`), the partner certificate's
//! chain and name (the SIP domain, or the SRV target), and a SIP `OPTIONS` whose answer shows
//! the partner accepted our certificate. Each failure has a kind: dns, connect, timeout, tls,
//! tls-untrusted, name-mismatch, no-client-cert, protocol. Exit 0 when a target answers the
//! OPTIONS with 2xx, 1 otherwise, 2 for bad arguments.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fedgate_certs::CertFailureKind;
use fedgate_sip::driver::discover::{self, SipTarget};
use fedgate_sip::msg::{Frame, Framer, Limits, SipMessage};
use rustls_pki_types::{ServerName, UnixTime};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::probe::{MAX_TARGETS, ProbeArgs, ProbeSetup, setup};

#[derive(Debug, Clone, Serialize)]
pub struct SipProbeReport {
    pub domain: String,
    pub from: Option<String>,
    pub client_certificate: bool,
    pub targets: Vec<SipTargetReport>,
    pub works: bool,
    pub kind: Option<String>,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SipTargetReport {
    pub host: String,
    pub port: u16,
    /// The SRV name it came from, if any.
    pub srv: Option<String>,
    pub addr: Option<String>,
    pub connect_ms: Option<u64>,
    pub tls_version: Option<String>,
    /// What the partner's certificate was found valid for.
    pub certificate: Option<String>,
    /// The status line answering our OPTIONS.
    pub options: Option<String>,
    pub allow: Option<String>,
    pub error: Option<(String, String)>,
}

impl SipTargetReport {
    fn new(t: &SipTarget) -> Self {
        Self {
            host: t.host.clone(),
            port: t.port,
            srv: t.srv.clone(),
            addr: None,
            connect_ms: None,
            tls_version: None,
            certificate: None,
            options: None,
            allow: None,
            error: None,
        }
    }

    fn fail(mut self, kind: &str, detail: impl Into<String>) -> Self {
        self.error = Some((kind.to_owned(), detail.into()));
        self
    }
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<SipProbeReport> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let ProbeSetup {
        domain,
        cfg,
        from,
        identity,
        verifier,
        resolver,
    } = setup(&args)?;
    let statics = cfg
        .as_ref()
        .map(|c| c.sip.settings(&domain).static_routes())
        .unwrap_or_default();
    let mut report = SipProbeReport {
        domain: domain.clone(),
        from: from.clone(),
        client_certificate: identity.is_some(),
        targets: Vec::new(),
        works: false,
        kind: None,
        verdict: String::new(),
    };
    let targets = match discover::targets(&resolver, &statics, &domain).await {
        Ok(t) => t,
        Err(e) => {
            report.kind = Some("dns".into());
            report.verdict = format!("SIP federation with {domain} does not work: dns: {e}");
            return Ok(report);
        }
    };
    let with_cert = identity.is_some();
    let connector =
        tokio_rustls::TlsConnector::from(fedgate_certs::client_config(identity, Vec::new()));
    'targets: for t in targets {
        let ips = match resolver.addrs(&t.host).await {
            Ok(ips) => ips,
            Err(e) => {
                report
                    .targets
                    .push(SipTargetReport::new(&t).fail("dns", e.detail));
                continue;
            }
        };
        for ip in ips {
            if report.targets.len() >= MAX_TARGETS {
                break 'targets;
            }
            let addr = SocketAddr::new(ip, t.port);
            let r = probe_target(
                &t,
                addr,
                &domain,
                from.as_deref(),
                &verifier,
                (&connector, with_cert),
                timeout,
            )
            .await;
            report.targets.push(r);
        }
    }
    let good = report.targets.iter().find(|t| t.error.is_none());
    match good {
        Some(t) => {
            report.works = true;
            report.verdict = format!(
                "SIP federation with {domain} works through {}:{} ({})",
                t.host,
                t.port,
                t.options.as_deref().unwrap_or("")
            );
        }
        None => {
            let (kind, detail) = report
                .targets
                .iter()
                .rev()
                .find_map(|t| t.error.clone())
                .unwrap_or(("connect".into(), "no targets".into()));
            report.verdict =
                format!("SIP federation with {domain} does not work: {kind}: {detail}");
            report.kind = Some(kind);
        }
    }
    Ok(report)
}

async fn probe_target(
    t: &SipTarget,
    addr: SocketAddr,
    domain: &str,
    from: Option<&str>,
    verifier: &fedgate_certs::PeerVerifier,
    (connector, with_cert): (&tokio_rustls::TlsConnector, bool),
    timeout: Duration,
) -> SipTargetReport {
    // A partner that refuses our client certificate (or its absence) ends the connection
    // right after the handshake, often without an alert.
    let refused = |e: String| {
        if with_cert {
            (
                "tls-untrusted",
                format!(
                    "the partner closed the connection: it refused our client certificate ({e})"
                ),
            )
        } else {
            (
                "no-client-cert",
                format!(
                    "the partner closed the connection: it requires a client certificate ({e})"
                ),
            )
        }
    };
    let mut r = SipTargetReport::new(t);
    r.addr = Some(addr.to_string());
    let start = Instant::now();
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return r.fail("connect", e.to_string()),
        Err(_) => return r.fail("timeout", "TCP connect"),
    };
    r.connect_ms = Some(start.elapsed().as_millis() as u64);
    let Ok(sni) = ServerName::try_from(t.host.clone()) else {
        return r.fail("tls", format!("{} is not a valid TLS server name", t.host));
    };
    let mut tls = match tokio::time::timeout(timeout, connector.connect(sni, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return r.fail("tls", e.to_string()),
        Err(_) => return r.fail("timeout", "TLS handshake"),
    };
    let conn = tls.get_ref().1;
    r.tls_version = conn.protocol_version().map(|v| format!("{v:?}"));
    let chain = conn
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    match verifier.verify(&chain, domain, false, UnixTime::now()) {
        Ok(_) => r.certificate = Some(format!("valid for {domain}")),
        Err(f) if f.kind == CertFailureKind::Name && t.srv.is_some() => {
            if fedgate_certs::check_name(&chain[0], &t.host).is_ok() {
                r.certificate = Some(format!("valid for the SRV target {}", t.host));
            } else {
                return r.fail(
                    "name-mismatch",
                    format!("{f}; nor the SRV target {}", t.host),
                );
            }
        }
        Err(f) if f.kind == CertFailureKind::Name => return r.fail("name-mismatch", f.to_string()),
        Err(f) => return r.fail("tls-untrusted", f.to_string()),
    }
    // OPTIONS: the partner answers only if it accepted our certificate.
    let local = from.unwrap_or("probe.invalid");
    let mut req = SipMessage::request("OPTIONS", format!("sip:{domain}"));
    req.push_header(
        "Via",
        format!(
            "SIP/2.0/TLS {local};branch={}",
            fedgate_sip::hdr::new_branch()
        ),
    );
    req.push_header("Max-Forwards", "70");
    req.push_header(
        "From",
        format!(
            "<sip:fedgate-probe@{local}>;tag={}",
            fedgate_sip::hdr::new_tag()
        ),
    );
    req.push_header("To", format!("<sip:{domain}>"));
    req.push_header("Call-ID", fedgate_sip::hdr::new_call_id(local));
    req.push_header("CSeq", "1 OPTIONS");
    if let Err(e) = tls.write_all(&req.to_bytes()).await {
        return r.fail("protocol", format!("writing OPTIONS: {e}"));
    }
    let mut framer = Framer::new(Limits::default());
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match framer.next() {
            Ok(Some(Frame::Message(m))) if m.code().is_some() => {
                let code = m.code().unwrap_or(0);
                let reason = match &m.start {
                    fedgate_sip::msg::StartLine::Response { reason, .. } => reason.clone(),
                    fedgate_sip::msg::StartLine::Request { .. } => String::new(),
                };
                r.options = Some(format!("{code} {reason}"));
                r.allow = m.header("Allow").map(str::to_owned);
                if !(200..300).contains(&code) {
                    let kind = if code == 403 {
                        "tls-untrusted"
                    } else {
                        "protocol"
                    };
                    let warning = m.header("Warning").unwrap_or("").to_owned();
                    return r.fail(kind, format!("OPTIONS answered {code} {reason} {warning}"));
                }
                return r;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return r.fail("protocol", e.to_string()),
        }
        let n = match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let (k, d) = refused("closed".into());
                return r.fail(k, d);
            }
            Ok(Ok(n)) => n,
            Ok(Err(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.to_string().contains("Certificate") =>
            {
                let (k, d) = refused(e.to_string());
                return r.fail(k, d);
            }
            Ok(Err(e)) => return r.fail("protocol", e.to_string()),
            Err(_) => return r.fail("timeout", "no answer to OPTIONS"),
        };
        framer.push(&buf[..n]);
    }
}

pub fn render_text(r: &SipProbeReport) -> String {
    let mut out = format!(
        "SIP partner {}{}\n",
        r.domain,
        match &r.from {
            Some(f) if r.client_certificate => format!(" (as {f}, with its certificate)"),
            Some(f) => format!(" (as {f}, no client certificate)"),
            None => " (no client certificate)".into(),
        }
    );
    for t in &r.targets {
        out.push_str(&format!(
            "  {}:{}{} {}\n",
            t.host,
            t.port,
            t.srv
                .as_deref()
                .map(|s| format!(" (from {s} SRV)"))
                .unwrap_or_default(),
            t.addr.as_deref().unwrap_or("")
        ));
        if let Some(ms) = t.connect_ms {
            out.push_str(&format!("    tcp: connected in {ms} ms\n"));
        }
        if let Some(v) = &t.tls_version {
            out.push_str(&format!("    tls: {v}\n"));
        }
        if let Some(c) = &t.certificate {
            out.push_str(&format!("    certificate: {c}\n"));
        }
        if let Some(o) = &t.options {
            out.push_str(&format!("    OPTIONS: {o}\n"));
        }
        if let Some(a) = &t.allow {
            out.push_str(&format!("    Allow: {a}\n"));
        }
        if let Some((k, d)) = &t.error {
            out.push_str(&format!("    error: {k}: {d}\n"));
        }
    }
    out.push_str(&format!("{}\n", r.verdict));
    out
}
