//! The s2s listener: accepts TCP on 5269 (or a configured address), sniffs the first byte to
//! tell direct TLS (XEP-0368, `0x16`) from a plain stream that will use STARTTLS, and runs the
//! receiving-side machine for each connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::conn::Conn;
use super::context::{Origin, S2sContext, Stanza, new_stream_id};
use super::io::Io;
use super::pool::Pool;
use crate::inbound::{Action, Inbound, InboundSettings};
use crate::wire::{Failure, FailureKind, StreamError, stanza_domains};

/// Serve s2s connections on `listener` until shutdown. `direct_tls_only`: a dedicated
/// XEP-0368 port (TLS from the first byte, no sniffing).
pub async fn serve(
    ctx: Arc<S2sContext>,
    pool: Arc<Pool>,
    listener: TcpListener,
    direct_tls_only: bool,
) {
    let mut shutdown = ctx.shutdown_signal();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let (ctx, pool) = (ctx.clone(), pool.clone());
                    tokio::spawn(async move { handle(ctx, pool, tcp, peer, direct_tls_only).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn handle(
    ctx: Arc<S2sContext>,
    pool: Arc<Pool>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls_only: bool,
) {
    let m = &ctx.metrics;
    m.streams.with_label_values(&["in", "negotiating"]).inc();
    let mut authenticated_gauge = false;
    let result = run(&ctx, &pool, tcp, direct_tls_only, &mut authenticated_gauge).await;
    if authenticated_gauge {
        m.streams.with_label_values(&["in", "established"]).dec();
    } else {
        m.streams.with_label_values(&["in", "negotiating"]).dec();
    }
    let label = match &result {
        Ok(()) => "ok",
        Err(f) => f.kind.as_str(),
    };
    m.streams_closed.with_label_values(&["in", label]).inc();
    if let Err(f) = result {
        tracing::info!(%peer, failure = %f, direct_tls_only, "inbound s2s stream ended");
    }
}

async fn run(
    ctx: &Arc<S2sContext>,
    pool: &Arc<Pool>,
    tcp: TcpStream,
    direct_tls_only: bool,
    established: &mut bool,
) -> Result<(), Failure> {
    let s = &ctx.settings;
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    let sniff = tokio::time::timeout(s.negotiation_timeout, tcp.peek(&mut first)).await;
    match sniff {
        Err(_) => return Err(Failure::new(FailureKind::Timeout, "no data")),
        Ok(Err(e)) => return Err(Failure::new(FailureKind::Connect, e.to_string())),
        Ok(Ok(0)) => {
            return Err(Failure::new(
                FailureKind::Stream,
                "closed before sending anything",
            ));
        }
        Ok(Ok(_)) => {}
    }
    let mut conn = Conn::new(Io::Plain(tcp), s.preauth_limits);
    let settings = InboundSettings {
        hosted: ctx.hosted.clone(),
        tls_required: s.tls_required,
        auth: s.auth,
        secret: ctx.secret.clone(),
        gate: ctx.gate(),
    };
    let mut machine = Inbound::new(settings, new_stream_id(), false);
    if first[0] == 0x16 || direct_tls_only {
        tokio::time::timeout(s.negotiation_timeout, conn.accept_tls(&ctx.server_tls))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "TLS handshake timed out"))?
            .inspect_err(|f| {
                ctx.metrics
                    .tls_failures
                    .with_label_values(&["in", f.kind.as_str()])
                    .inc();
            })?;
        machine.tls_established(ctx.cert_check(conn.io.peer_certs(), true));
    }

    let (vtx, mut vrx) = mpsc::unbounded_channel::<(String, String, bool, String)>();
    let mut shutdown = ctx.shutdown_signal();
    let deadline = tokio::time::Instant::now() + s.negotiation_timeout;
    let negotiation = tokio::time::sleep_until(deadline);
    tokio::pin!(negotiation);
    let idle = tokio::time::sleep(s.idle_timeout);
    tokio::pin!(idle);
    let mut remotes: Vec<String> = Vec::new();
    let result = loop {
        for a in machine.take_actions() {
            match a {
                Action::Send(b) => conn.queue(&b),
                Action::StartTls => {
                    let r = tokio::time::timeout(
                        s.negotiation_timeout,
                        conn.accept_tls(&ctx.server_tls),
                    )
                    .await;
                    match r {
                        Ok(Ok(())) => {
                            machine.tls_established(ctx.cert_check(conn.io.peer_certs(), true))
                        }
                        Ok(Err(f)) => {
                            ctx.metrics
                                .tls_failures
                                .with_label_values(&["in", f.kind.as_str()])
                                .inc();
                            return Err(f);
                        }
                        Err(_) => {
                            return Err(Failure::new(
                                FailureKind::Timeout,
                                "TLS handshake timed out",
                            ));
                        }
                    }
                }
                Action::ResetParser => conn.parser.reset(),
                Action::VerifyKey {
                    local,
                    remote,
                    stream_id,
                    key,
                } => {
                    let (pool, vtx) = (pool.clone(), vtx.clone());
                    tokio::spawn(async move {
                        let (ok, why) = pool.verify_key(&local, &remote, &stream_id, &key).await;
                        let _ = vtx.send((local, remote, ok, why));
                    });
                }
                Action::Authenticated {
                    local,
                    remote,
                    method,
                } => {
                    ctx.metrics
                        .auth
                        .with_label_values(&["in", method.as_str(), "ok"])
                        .inc();
                    ctx.status.authenticated(&remote, &local, method.as_str());
                    tracing::info!(%local, %remote, method = method.as_str(), tls = ?conn.io.tls_version(), "inbound s2s pair authenticated");
                    if !remotes.contains(&remote) {
                        let max = ctx.gate().floor(&remote, true).max_streams;
                        let open = ctx.status.inbound_streams(&remote);
                        if let Some(max) = max
                            && open >= max
                        {
                            let e = StreamError::new(
                                "policy-violation",
                                format!(
                                    "limit: {remote} already has {open} inbound streams (policy allows {max})"
                                ),
                            );
                            // Not the <success/> or valid result queued for this pair.
                            conn.discard_queued();
                            conn.close_with(&e.to_bytes()).await;
                            break_on_close(ctx, &remotes);
                            return Err(Failure::new(FailureKind::Limit, e.text));
                        }
                        ctx.status.stream_opened(&remote, false);
                        remotes.push(remote);
                    }
                    if !*established {
                        *established = true;
                        ctx.metrics
                            .streams
                            .with_label_values(&["in", "negotiating"])
                            .dec();
                        ctx.metrics
                            .streams
                            .with_label_values(&["in", "established"])
                            .inc();
                        conn.parser.set_limits(s.limits);
                    }
                }
                Action::Stanza(el, size) => {
                    let (Some(from), Some(to)) = stanza_domains(&el) else {
                        continue;
                    };
                    let (remote, local) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
                    let label = ctx.metrics.domain_label(&remote);
                    ctx.metrics
                        .routed
                        .with_label_values(&["remote-to-local", &label])
                        .inc();
                    ctx.sink().route(Stanza {
                        el,
                        size,
                        origin: Origin::Remote { local, remote },
                    });
                }
                Action::Close(e) => {
                    tracing::info!(condition = e.condition, text = %e.text, "closing inbound stream with error");
                    conn.close_with(&e.to_bytes()).await;
                    break_on_close(ctx, &remotes);
                    return Err(stream_error_failure(&e));
                }
                Action::PeerClosed => {
                    conn.close_with(b"</stream:stream>").await;
                    break_on_close(ctx, &remotes);
                    return Ok(());
                }
            }
        }
        if let Err(e) = conn.flush().await {
            break Err(Failure::new(FailureKind::Connect, format!("write: {e}")));
        }
        if !*established
            && (conn.parser.bytes_total() > s.preauth_max_bytes
                || conn.parser.elements_total() > s.preauth_max_elements)
        {
            let e = StreamError::new(
                "policy-violation",
                "limit: too much data before authentication",
            );
            conn.close_with(&e.to_bytes()).await;
            break Err(Failure::new(FailureKind::Limit, e.text));
        }
        tokio::select! {
            ev = conn.next_event() => match ev {
                Ok(ev) => {
                    machine.handle(ev);
                    idle.as_mut().reset(tokio::time::Instant::now() + s.idle_timeout);
                }
                Err(e) => {
                    let f = e.failure();
                    if let super::conn::ReadError::Xml(x) = &e {
                        let se = StreamError::new(x.condition(), f.to_string());
                        conn.close_with(&se.to_bytes()).await;
                    }
                    break Err(f);
                }
            },
            Some((local, remote, ok, why)) = vrx.recv() => machine.dialback_verified(&local, &remote, ok, &why),
            _ = &mut negotiation, if !*established => {
                let e = StreamError::new("connection-timeout", "timeout: not authenticated in time");
                conn.close_with(&e.to_bytes()).await;
                break Err(Failure::new(FailureKind::Timeout, e.text));
            }
            _ = &mut idle => {
                conn.close_with(b"</stream:stream>").await;
                break Ok(());
            }
            _ = shutdown.changed() => {
                let e = StreamError::new("system-shutdown", "fedgate is shutting down");
                conn.close_with(&e.to_bytes()).await;
                break Ok(());
            }
        }
    };
    break_on_close(ctx, &remotes);
    result
}

fn break_on_close(ctx: &S2sContext, remotes: &[String]) {
    for r in remotes {
        ctx.status.stream_closed(r, false);
    }
}

fn stream_error_failure(e: &StreamError) -> Failure {
    let kind = match e.condition {
        "policy-violation" => FailureKind::Policy,
        "not-authorized" | "invalid-from" => FailureKind::Auth,
        _ => FailureKind::Stream,
    };
    Failure::new(kind, format!("{}: {}", e.condition, e.text))
}
