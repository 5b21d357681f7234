//! SIP over mutual TLS: the listener, outbound connections and the per-connection task that
//! frames messages, answers keep-alives and checks that each request's `From` domain is one
//! the connection's certificate was verified for.
//!
//! Inbound: a client certificate is required (`no-client-cert` otherwise) and its chain must
//! lead to a trust anchor (`tls-untrusted`) before any byte of SIP is read. The name is checked
//! per partner domain, on the first request from that domain: the certificate must name the
//! SIP domain, or (when the partner's name check allows it) a target of the domain's SRV
//! records, as Microsoft edge servers' certificates do (`name-mismatch` otherwise; the request
//! gets `403`). Outbound: the server's certificate is checked the same way for the partner
//! domain (or the SRV target the connection went to).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fedgate_s2s::driver::S2sContext;
use fedgate_s2s::driver::context::check_peer;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::discover::{self, SipTarget};
use super::metrics::SipMetrics;
use super::{FailureKind, NameCheck, SipSettings};
use crate::msg::{Frame, Framer, SipMessage};

pub(crate) type ConnId = u64;

/// What connection tasks tell the core task.
#[derive(Debug)]
pub(crate) enum Event {
    Up {
        id: ConnId,
        tx: mpsc::Sender<Vec<u8>>,
        /// Outbound connections: (partner domain, hosted domain) it was opened for.
        outbound: Option<(String, String)>,
        addr: SocketAddr,
    },
    /// A message; requests carry the partner domain their `From` was verified for.
    Message {
        id: ConnId,
        msg: SipMessage,
        partner: Option<String>,
    },
    Down {
        id: ConnId,
        reason: String,
    },
    ConnectFailed {
        remote: String,
        local: String,
        kind: FailureKind,
        detail: String,
    },
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub ctx: Arc<S2sContext>,
    pub settings: Arc<SipSettings>,
    pub events: mpsc::Sender<Event>,
    pub metrics: SipMetrics,
    next_id: AtomicU64,
    acceptor: TlsAcceptor,
}

impl Shared {
    pub fn new(
        ctx: Arc<S2sContext>,
        settings: Arc<SipSettings>,
        events: mpsc::Sender<Event>,
        metrics: SipMetrics,
    ) -> Self {
        // A client certificate is required at the handshake (mutual TLS is SIP federation's
        // only authentication); its chain and name are checked afterwards.
        let acceptor =
            TlsAcceptor::from(fedgate_certs::server_config_mutual(ctx.identities.clone()));
        Self {
            ctx,
            settings,
            events,
            metrics,
            next_id: AtomicU64::new(1),
            acceptor,
        }
    }

    fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn fail(&self, partner: &str, kind: FailureKind, detail: &str) {
        self.metrics.failure(partner, kind);
        tracing::warn!(
            partner,
            kind = kind.as_str(),
            detail,
            "sip: connection failure"
        );
    }
}

/// Accepts SIP/TLS connections until the gateway shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.ctx.shutdown_signal();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "sip: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let span = tracing::info_span!(
            "sip_conn",
            direction = "in",
            peer = %addr,
            partner = tracing::field::Empty
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move { inbound(shared, tcp, addr).await },
            span,
        ));
    }
}

async fn inbound(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let timeout = shared.settings.connect_timeout;
    let tls = match tokio::time::timeout(timeout, shared.acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let no_cert = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::NoCertificatesPresented));
            let kind = if no_cert {
                FailureKind::NoClientCert
            } else {
                FailureKind::Tls
            };
            shared.fail("unknown", kind, &format!("{addr}: handshake: {e}"));
            return;
        }
        Err(_) => {
            shared.fail(
                "unknown",
                FailureKind::Timeout,
                &format!("{addr}: handshake"),
            );
            return;
        }
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    if chain.is_empty() {
        shared.fail(
            "unknown",
            FailureKind::NoClientCert,
            &format!("{addr}: the peer presented no client certificate"),
        );
        return;
    }
    // The chain must be good whatever domain it will speak for; the name comes per request.
    if let Err(f) = shared.ctx.verifier.verify(
        &chain,
        "name.invalid",
        true,
        rustls_pki_types::UnixTime::now(),
    ) && f.kind != fedgate_certs::CertFailureKind::Name
    {
        shared.fail(
            "unknown",
            FailureKind::TlsUntrusted,
            &format!("{addr}: {f}"),
        );
        return;
    }
    let id = shared.next_id();
    let checker = PeerCheck::new(shared.clone(), chain, true, None);
    session(
        shared,
        tokio_rustls::TlsStream::Server(tls),
        id,
        addr,
        None,
        checker,
    )
    .await;
}

/// Opens a connection to `remote` for hosted domain `local` and runs it; reports
/// [`Event::ConnectFailed`] with a typed failure when no target works.
pub(crate) async fn connect(shared: Arc<Shared>, remote: String, local: String) {
    let statics = shared.settings.static_routes();
    let targets = match discover::targets(&shared.ctx.resolver, &statics, &remote).await {
        Ok(t) => t,
        Err(e) => {
            report_connect_failure(&shared, &remote, &local, FailureKind::Dns, &e.to_string())
                .await;
            return;
        }
    };
    let mut last = (FailureKind::Connect, format!("{remote}: no targets"));
    for target in targets {
        match open(&shared, &remote, &local, &target).await {
            Ok((tls, addr, checker)) => {
                let id = shared.next_id();
                shared.metrics.connections.with_label_values(&["out"]).inc();
                session(
                    shared.clone(),
                    tokio_rustls::TlsStream::Client(tls),
                    id,
                    addr,
                    Some((remote.clone(), local.clone())),
                    checker,
                )
                .await;
                shared.metrics.connections.with_label_values(&["out"]).dec();
                return;
            }
            Err((kind, detail)) => {
                tracing::debug!(%remote, target = %target.host, kind = kind.as_str(), %detail, "sip: target failed");
                last = (kind, detail);
            }
        }
    }
    report_connect_failure(&shared, &remote, &local, last.0, &last.1).await;
}

async fn report_connect_failure(
    shared: &Shared,
    remote: &str,
    local: &str,
    kind: FailureKind,
    detail: &str,
) {
    shared.fail(remote, kind, detail);
    let _ = shared
        .events
        .send(Event::ConnectFailed {
            remote: remote.to_owned(),
            local: local.to_owned(),
            kind,
            detail: detail.to_owned(),
        })
        .await;
}

type Opened = (
    tokio_rustls::client::TlsStream<TcpStream>,
    SocketAddr,
    PeerCheck,
);

async fn open(
    shared: &Arc<Shared>,
    remote: &str,
    local: &str,
    target: &SipTarget,
) -> Result<Opened, (FailureKind, String)> {
    let timeout = shared.settings.connect_timeout;
    let ips = shared
        .ctx
        .resolver
        .addrs(&target.host)
        .await
        .map_err(|e| (FailureKind::Dns, e.to_string()))?;
    let mut last = (FailureKind::Connect, format!("{}: no address", target.host));
    for ip in ips {
        let addr = SocketAddr::new(ip, target.port);
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                last = (FailureKind::Connect, format!("{addr}: {e}"));
                continue;
            }
            Err(_) => {
                last = (FailureKind::Timeout, format!("{addr}: connect timed out"));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let config =
            fedgate_certs::client_config_for(shared.ctx.identities.clone(), local, Vec::new());
        let connector = TlsConnector::from(config);
        let sni = ServerName::try_from(target.host.clone())
            .map_err(|e| (FailureKind::Tls, format!("{}: {e}", target.host)))?;
        let tls = match tokio::time::timeout(timeout, connector.connect(sni, tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let kind = if e.to_string().contains("CertificateRequired") {
                    FailureKind::NoClientCert
                } else {
                    FailureKind::Tls
                };
                return Err((kind, format!("{addr}: handshake: {e}")));
            }
            Err(_) => return Err((FailureKind::Timeout, format!("{addr}: TLS handshake"))),
        };
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let checker = PeerCheck::new(shared.clone(), chain, false, Some(target.clone()));
        checker
            .check(remote)
            .await
            .map_err(|(k, d)| (k, format!("{addr}: {d}")))?;
        return Ok((tls, addr, checker));
    }
    Err(last)
}

/// Name checks of one connection's peer certificate, cached per partner domain.
pub(crate) struct PeerCheck {
    shared: Arc<Shared>,
    peer: Option<Arc<fedgate_s2s::driver::context::PeerCert>>,
    /// The SRV target an outbound connection went to.
    target: Option<SipTarget>,
    ok: std::collections::HashMap<String, Result<(), (FailureKind, String)>>,
}

impl PeerCheck {
    fn new(
        shared: Arc<Shared>,
        chain: Vec<CertificateDer<'static>>,
        peer_is_client: bool,
        target: Option<SipTarget>,
    ) -> Self {
        let peer = shared.ctx.peer_cert(chain, peer_is_client);
        Self {
            shared,
            peer,
            target,
            ok: Default::default(),
        }
    }

    /// Whether the certificate speaks for `domain` (chain, name, the policy's pins and anchors).
    async fn check(&self, domain: &str) -> Result<(), (FailureKind, String)> {
        let Some(peer) = &self.peer else {
            return Err((
                FailureKind::NoClientCert,
                "the peer presented no certificate".into(),
            ));
        };
        let gate = self.shared.ctx.gate();
        let err = match check_peer(&self.shared.ctx.verifier, gate.as_ref(), peer, domain) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !err.starts_with("cert-name") {
            return Err((FailureKind::TlsUntrusted, err));
        }
        if self.shared.settings.name_check(domain) == NameCheck::Domain {
            return Err((FailureKind::NameMismatch, err));
        }
        // The SRV target the connection went to, or (inbound) any SIP SRV target of the domain.
        let leaf = &peer.chain[0];
        let mut names: Vec<String> = Vec::new();
        match &self.target {
            Some(t) if t.srv.is_some() => names.push(t.host.clone()),
            Some(_) => {}
            None => {
                let statics = Default::default();
                if let Ok(ts) = discover::targets(&self.shared.ctx.resolver, &statics, domain).await
                {
                    names.extend(ts.into_iter().filter(|t| t.srv.is_some()).map(|t| t.host));
                }
            }
        }
        for name in &names {
            if fedgate_certs::check_name(leaf, name).is_ok() {
                return Ok(());
            }
        }
        Err((
            FailureKind::NameMismatch,
            if names.is_empty() {
                err
            } else {
                format!("{err}; nor SRV target(s) {}", names.join(", "))
            },
        ))
    }

    async fn check_cached(&mut self, domain: &str) -> Result<(), (FailureKind, String)> {
        if let Some(r) = self.ok.get(domain) {
            return r.clone();
        }
        let r = self.check(domain).await;
        if let Err((kind, detail)) = &r {
            self.shared.fail(domain, *kind, detail);
        }
        if self.ok.len() < 64 {
            self.ok.insert(domain.to_owned(), r.clone());
        }
        r
    }
}

/// The partner domain a request claims to come from (`From` host).
fn from_domain(msg: &SipMessage) -> Option<String> {
    let from = msg.header("From")?;
    let na = crate::hdr::NameAddr::parse(from).ok()?;
    let uri = na.uri().to_owned();
    let parsed = crate::address::SipUri::parse(&uri).ok()?;
    Some(parsed.host.to_ascii_lowercase())
}

async fn session(
    shared: Arc<Shared>,
    mut stream: tokio_rustls::TlsStream<TcpStream>,
    id: ConnId,
    addr: SocketAddr,
    outbound: Option<(String, String)>,
    mut checker: PeerCheck,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(shared.settings.conn_queue);
    if let Some((remote, _)) = &outbound {
        checker.ok.insert(remote.clone(), Ok(()));
    }
    if shared
        .events
        .send(Event::Up {
            id,
            tx,
            outbound: outbound.clone(),
            addr,
        })
        .await
        .is_err()
    {
        return;
    }
    let mut framer = Framer::new(shared.settings.limits);
    let mut buf = vec![0u8; 16 * 1024];
    let mut shutdown = shared.ctx.shutdown_signal();
    let reason: String = loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => break "closed by the peer".into(),
                Ok(n) => {
                    framer.push(&buf[..n]);
                    let mut out = Vec::new();
                    let res = drain(&shared, &mut framer, &mut checker, id, &mut out).await;
                    if !out.is_empty() && stream.write_all(&out).await.is_err() {
                        break "write failed".into();
                    }
                    if let Err(why) = res {
                        break why;
                    }
                }
                Err(e) => break format!("read: {e}"),
            },
            w = rx.recv() => match w {
                Some(bytes) => {
                    if let Err(e) = stream.write_all(&bytes).await {
                        break format!("write: {e}");
                    }
                }
                None => break "closed by the gateway".into(),
            },
            _ = shutdown.changed() => break "shutdown".into(),
        }
    };
    let _ = stream.shutdown().await;
    tracing::debug!(id, %addr, %reason, "sip: connection closed");
    let _ = shared.events.send(Event::Down { id, reason }).await;
}

/// Hands every complete message to the core; answers keep-alives and refused requests into
/// `out`. `Err` closes the connection.
async fn drain(
    shared: &Shared,
    framer: &mut Framer,
    checker: &mut PeerCheck,
    id: ConnId,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    loop {
        match framer.next() {
            Ok(None) => return Ok(()),
            Ok(Some(Frame::KeepAlive)) => out.extend_from_slice(b"\r\n"),
            Ok(Some(Frame::Message(msg))) => {
                let mut partner = None;
                if msg.is_request() {
                    let Some(domain) = from_domain(&msg) else {
                        let resp = SipMessage::response_to(&msg, 400, "Bad From header");
                        out.extend_from_slice(&resp.to_bytes());
                        continue;
                    };
                    if let Err((kind, detail)) = checker.check_cached(&domain).await {
                        if msg.method() != Some("ACK") {
                            let mut resp = SipMessage::response_to(&msg, 403, "Forbidden");
                            resp.push_header(
                                "Warning",
                                format!(
                                    "399 fedgate \"{}: {}\"",
                                    kind.as_str(),
                                    detail.replace('"', "'")
                                ),
                            );
                            out.extend_from_slice(&resp.to_bytes());
                        }
                        continue;
                    }
                    partner = Some(domain);
                }
                if shared
                    .events
                    .send(Event::Message { id, msg, partner })
                    .await
                    .is_err()
                {
                    return Err("gateway stopped".into());
                }
            }
            Err(e) => {
                shared.metrics.failure("unknown", FailureKind::Protocol);
                return Err(format!("protocol: {e}"));
            }
        }
    }
}

/// Binds and serves a listener.
pub(crate) async fn listen(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(shared, listener));
    Ok(local)
}
