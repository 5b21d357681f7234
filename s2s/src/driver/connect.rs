//! Outbound connections: resolve the remote domain, try every target in order, run the
//! initiating negotiation (auth or dialback-verify mode) over TCP/TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::conn::Conn;
use super::context::S2sContext;
use super::io::Io;
use crate::inbound::{AuthMethod, CertOk};
use crate::outbound::{Action, Mode, Outbound, OutboundSettings};
use crate::resolve::{DnsErrorKind, Target};
use crate::wire::{Failure, FailureKind};

pub enum Outcome {
    Established {
        conn: Box<Conn>,
        /// How the remote's identity is known (pkix/dane/posh, or dialback: DNS only).
        method: AuthMethod,
        /// When the remote's certificate expires, if it established the identity.
        not_after: Option<i64>,
        /// How we authenticated: "sasl-external" or "dialback".
        mechanism: &'static str,
        target: String,
        /// The receiving server offered XEP-0198.
        sm_offered: bool,
    },
    Verified(bool),
}

/// Resolve `remote` and negotiate with its targets in order until one works.
pub async fn connect(
    ctx: &Arc<S2sContext>,
    local: &str,
    remote: &str,
    mode: Mode,
) -> Result<Outcome, Failure> {
    let targets = match ctx.resolver.targets(remote).await {
        Ok(t) => {
            ctx.metrics.dns.with_label_values(&["ok"]).inc();
            t
        }
        Err(e) => {
            ctx.metrics
                .dns
                .with_label_values(&[dns_label(e.kind)])
                .inc();
            // A nameserver that does not answer is a DNS problem (kind `dns`, the text says
            // "timed out"): the operator should look at DNS, not at the remote server.
            let f = Failure::new(FailureKind::Dns, format!("{remote}: {}", e.detail));
            ctx.status.attempt(remote, "dns", Err(&f));
            return Err(f);
        }
    };
    let mut last = Failure::new(FailureKind::Dns, format!("{remote}: no targets"));
    for t in targets {
        let addrs = match ctx.resolver.addrs(&t.host).await {
            Ok(a) => {
                ctx.metrics.dns.with_label_values(&["ok"]).inc();
                a
            }
            Err(e) => {
                ctx.metrics
                    .dns
                    .with_label_values(&[dns_label(e.kind)])
                    .inc();
                last = Failure::new(FailureKind::Dns, format!("{}: {}", t.host, e.detail));
                ctx.status.attempt(remote, &t.host, Err(&last));
                continue;
            }
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, t.port);
            let label = format!(
                "{}:{} ({addr}{})",
                t.host,
                t.port,
                if t.direct_tls { ", direct TLS" } else { "" }
            );
            match attempt(ctx, local, remote, &t, addr, mode.clone()).await {
                Ok(o) => {
                    ctx.metrics.connects.with_label_values(&["ok"]).inc();
                    ctx.status.attempt(remote, &label, Ok(()));
                    return Ok(match o {
                        Outcome::Established {
                            conn,
                            method,
                            not_after,
                            mechanism,
                            sm_offered,
                            ..
                        } => Outcome::Established {
                            conn,
                            method,
                            not_after,
                            mechanism,
                            target: label,
                            sm_offered,
                        },
                        v => v,
                    });
                }
                Err(f) => {
                    ctx.metrics
                        .connects
                        .with_label_values(&[f.kind.as_str()])
                        .inc();
                    tracing::info!(%local, %remote, target = %label, failure = %f, "s2s attempt failed");
                    ctx.status.attempt(remote, &label, Err(&f));
                    last = f;
                }
            }
        }
    }
    Err(last)
}

/// The `result` label of `fedgate_dns_lookups_total` for a failed lookup.
fn dns_label(kind: DnsErrorKind) -> &'static str {
    match kind {
        DnsErrorKind::NoService => "no-service",
        DnsErrorKind::NotFound => "not-found",
        DnsErrorKind::Timeout => "timeout",
        _ => "error",
    }
}

async fn attempt(
    ctx: &Arc<S2sContext>,
    local: &str,
    remote: &str,
    t: &Target,
    addr: SocketAddr,
    mode: Mode,
) -> Result<Outcome, Failure> {
    let s = &ctx.settings;
    let tcp = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(Failure::new(
                FailureKind::Timeout,
                format!("connect to {addr} timed out"),
            ));
        }
        Ok(Err(e)) => return Err(Failure::new(FailureKind::Connect, format!("{addr}: {e}"))),
        Ok(Ok(t)) => t,
    };
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(Io::Plain(tcp), s.preauth_limits);
    let floor = ctx.gate().floor(remote, false);
    let mut m = Outbound::new(OutboundSettings {
        local: local.to_owned(),
        remote: remote.to_owned(),
        tls_required: floor.tls_required,
        auth: floor.auth,
        mode,
    });
    let fut = async {
        if t.direct_tls {
            upgrade(ctx, &mut conn, local, remote, true).await?;
            let check = check_server(ctx, &conn, remote, (&t.host, t.port), &floor).await?;
            m.start(Some(check));
        } else {
            m.start(None);
        }
        loop {
            let actions = m.take_actions();
            if actions.is_empty() {
                conn.flush()
                    .await
                    .map_err(|e| Failure::new(FailureKind::Connect, format!("write: {e}")))?;
                let ev = conn.next_event().await.map_err(|e| e.failure())?;
                m.handle(ev);
                continue;
            }
            for a in actions {
                match a {
                    Action::Send(b) => conn.queue(&b),
                    Action::StartTls => {
                        upgrade(ctx, &mut conn, local, remote, false).await?;
                        let check =
                            check_server(ctx, &conn, remote, (&t.host, t.port), &floor).await?;
                        m.tls_established(check);
                    }
                    Action::ResetParser => conn.parser.reset(),
                    Action::Established {
                        identity,
                        not_after,
                        sasl,
                        sm_offered,
                    } => {
                        conn.flush()
                            .await
                            .map_err(|e| Failure::new(FailureKind::Connect, e.to_string()))?;
                        tracing::debug!(%local, %remote, identity = identity.as_str(), sasl, "outbound authenticated");
                        return Ok(Outcome::Established {
                            conn: Box::new(conn),
                            method: identity,
                            not_after,
                            mechanism: if sasl { "sasl-external" } else { "dialback" },
                            target: String::new(),
                            sm_offered,
                        });
                    }
                    Action::Verified(v) => {
                        conn.close_with(b"</stream:stream>").await;
                        return Ok(Outcome::Verified(v));
                    }
                    Action::Fail(f) => {
                        conn.close_with(b"</stream:stream>").await;
                        return Err(f);
                    }
                    Action::Unexpected(el) => {
                        tracing::debug!(name = %el.name, "ignoring element during negotiation");
                    }
                    Action::PeerClosed => {
                        conn.close_with(b"</stream:stream>").await;
                        return Err(Failure::new(
                            FailureKind::Stream,
                            "peer closed the stream during negotiation",
                        ));
                    }
                }
            }
        }
    };
    match tokio::time::timeout(s.negotiation_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            FailureKind::Timeout,
            format!(
                "negotiation with {addr} did not finish in {:?}",
                s.negotiation_timeout
            ),
        )),
    }
}

/// TLS client handshake on `conn` (direct TLS or after `<proceed/>`), counted on failure.
async fn upgrade(
    ctx: &S2sContext,
    conn: &mut Conn,
    local: &str,
    remote: &str,
    direct: bool,
) -> Result<(), Failure> {
    let connector = ctx
        .client_tls(local, direct)
        .ok_or_else(|| Failure::new(FailureKind::Tls, format!("no TLS identity for {local}")))?;
    conn.connect_tls(&connector, remote).await.inspect_err(|f| {
        ctx.metrics
            .tls_failures
            .with_label_values(&["out", f.kind.as_str()])
            .inc();
    })
}

/// Check the receiving server's certificate for the remote domain.
/// Check the receiving server's certificate for the remote domain (PKIX, then DANE/POSH).
/// `Ok(Err(_))`: not established, the negotiation may go on with dialback. `Err(_)`: the
/// attempt ends, because DANE records contradict the certificate or the domain is pinned.
async fn check_server(
    ctx: &S2sContext,
    conn: &Conn,
    remote: &str,
    target: (&str, u16),
    floor: &crate::gate::Floor,
) -> Result<Result<CertOk, String>, Failure> {
    let Some(peer) = ctx.peer_cert(conn.io.peer_certs(), false) else {
        return Ok(Err("no-certificate: the server sent none".into()));
    };
    ctx.prepare_identity(&peer, remote, Some(target)).await;
    if let Some(why) = peer.fatal(remote) {
        return Err(Failure::new(FailureKind::CertChain, why));
    }
    let check = super::context::check_peer(&ctx.verifier, ctx.gate().as_ref(), &peer, remote)
        .and_then(|ok| {
            if ctx.gate().cert_methods(remote, false).allows(ok.method) {
                Ok(ok)
            } else {
                Err(format!(
                    "policy: {} is not an accepted method for {remote}",
                    ok.method.as_str()
                ))
            }
        });
    match check {
        // No dialback fallback around a pin.
        Err(e) if !floor.pins.is_empty() => Err(Failure::new(FailureKind::CertChain, e)),
        other => Ok(other),
    }
}
