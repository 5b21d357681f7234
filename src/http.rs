//! The metrics/health HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz`,
//! `GET /status` (JSON per remote domain). A deliberately small HTTP/1.1 responder: one request
//! per connection, bounded header size and time.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fedgate_s2s::driver::{Components, Pool, S2sContext};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct HttpState {
    pub registry: Registry,
    pub ctx: Arc<S2sContext>,
    pub pool: Arc<Pool>,
    pub components: Arc<Components>,
    /// SIP federation, when configured.
    pub sip: Option<Arc<crate::sip_route::SipRoute>>,
    /// Intercluster peering, when configured (also serves `/intercluster/…`).
    pub intercluster: Option<Arc<crate::intercluster_runtime::IcRuntime>>,
}

pub async fn serve(state: Arc<HttpState>, listener: TcpListener) {
    let mut shutdown = state.ctx.shutdown_signal();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((mut sock, _)) = r else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(&state, &mut sock)).await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn handle(state: &HttpState, sock: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 || buf.len() > 8192 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) =
        if let (Some(ic), true) = (&state.intercluster, path.starts_with("/intercluster/")) {
            let (s, c, b) = ic.http(method, path);
            (s, c, b)
        } else if method != "GET" {
            (
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n".to_owned(),
            )
        } else {
            match path.split('?').next().unwrap_or("") {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics_text(state)),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/status" => ("200 OK", "application/json", status_json(state).to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
            }
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

/// The Prometheus text exposition of every metric.
pub fn metrics_text(state: &HttpState) -> String {
    state
        .ctx
        .metrics
        .refresh_peer_cert_expiry(&state.ctx.status);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&state.registry.gather(), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `/status` document.
pub fn status_json(state: &HttpState) -> serde_json::Value {
    let domains: serde_json::Map<String, serde_json::Value> = state
        .ctx
        .status
        .snapshot()
        .into_iter()
        .map(|(d, s)| {
            (
                d,
                serde_json::json!({
                    "inbound_streams": s.inbound_streams,
                    "outbound_streams": s.outbound_streams,
                    "auth": s.auth_methods,
                    "last_success": s.last_success.map(unix),
                    "last_error": s.last_error.map(|(t, f)| serde_json::json!({
                        "at": unix(t), "kind": f.kind.as_str(), "detail": f.detail,
                    })),
                    "peer_cert_expires": s.peer_cert_expiry.iter().min(),
                    "attempts": s.attempts.iter().map(|(t, target, r)| serde_json::json!({
                        "at": unix(*t), "target": target, "result": r,
                    })).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let mut hosted: Vec<_> = state.ctx.hosted.iter().cloned().collect();
    hosted.sort();
    let mut doc = serde_json::json!({
        "hosted_domains": hosted,
        "components_connected": state.components.connected(),
        "outbound_links": state.pool.len(),
        "remote_domains": domains,
    });
    if let (Some(sip), Some(o)) = (&state.sip, doc.as_object_mut()) {
        o.insert("sip".into(), sip.link.status());
    }
    if let (Some(ic), Some(o)) = (&state.intercluster, doc.as_object_mut()) {
        o.insert("intercluster".into(), ic.status());
    }
    doc
}
