//! The metrics/health HTTP endpoint: `GET /metrics` (Prometheus text), `GET /healthz`,
//! `GET /status` (JSON per remote domain), and the intercluster `/intercluster/…` requests. A
//! deliberately small HTTP/1.1 responder: one request per connection, bounded header size and
//! time.
//!
//! Admin requests (anything but GET under `/intercluster/`: they move users) pass
//! [`admin_gate`]: with `metrics.admin_token_file` they need `Authorization: Bearer <token>`;
//! without it, only loopback clients may make them.

use std::net::IpAddr;
use std::path::PathBuf;
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
    /// `metrics.admin_token_file`.
    pub admin_token_file: Option<PathBuf>,
}

/// Reads the admin token file: its trimmed content, which must not be empty.
pub fn read_admin_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// Whether an admin request from `client` with the `Authorization` header `authorization` may
/// go on, given the configured token; else the status line and the reason.
pub fn admin_gate(
    client: Option<IpAddr>,
    authorization: Option<&str>,
    token: Option<&str>,
) -> Result<(), (&'static str, String)> {
    match token {
        Some(token) => {
            let given = authorization
                .and_then(|a| a.trim().strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if fedgate_s2s::dialback::constant_time_eq(g.as_bytes(), token.as_bytes()) => {
                    Ok(())
                }
                Some(_) => Err(("401 Unauthorized", "wrong admin token".into())),
                None => Err((
                    "401 Unauthorized",
                    "admin requests need Authorization: Bearer <the token in metrics.admin_token_file> \
                     (fedgate directory --token-file)"
                        .into(),
                )),
            }
        }
        None if client.is_some_and(|ip| ip.to_canonical().is_loopback()) => Ok(()),
        None => Err((
            "403 Forbidden",
            "admin requests are accepted from loopback only, unless metrics.admin_token_file is set"
                .into(),
        )),
    }
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
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authorization = request.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("authorization").then_some(v)
    });
    let (status, ctype, body) =
        if let (Some(ic), true) = (&state.intercluster, path.starts_with("/intercluster/")) {
            let client = sock.peer_addr().ok().map(|a| a.ip());
            intercluster_request(state, ic, method, path, authorization, client)
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

/// An `/intercluster/…` request; admin ones (not GET) pass [`admin_gate`] first.
fn intercluster_request(
    state: &HttpState,
    ic: &crate::intercluster_runtime::IcRuntime,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    client: Option<IpAddr>,
) -> (&'static str, &'static str, String) {
    if method != "GET" {
        let token = match &state.admin_token_file {
            Some(f) => match read_admin_token(f) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read metrics.admin_token_file; admin request refused");
                    return (
                        "500 Internal Server Error",
                        "text/plain",
                        format!("cannot read the admin token: {e}\n"),
                    );
                }
            },
            None => None,
        };
        if let Err((status, why)) = admin_gate(client, authorization, token.as_deref()) {
            tracing::warn!(?client, %method, %path, %why, "admin request refused");
            return (status, "text/plain", format!("{why}\n"));
        }
    }
    ic.http(method, path)
}

/// The Prometheus text exposition of every metric.
pub fn metrics_text(state: &HttpState) -> String {
    state.ctx.metrics.refresh_remote_domains(&state.ctx.status);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&state.registry.gather(), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What `/status` shows of delivery confirmation: per link kind the stanzas written and not yet
/// confirmed, resent on a new stream, and the round trip of acks or pings; then every stanza
/// bounced or dropped since start, by reason.
fn acks_json(m: &fedgate_s2s::driver::metrics::Metrics) -> serde_json::Value {
    let links: Vec<_> = m
        .link_acks()
        .into_iter()
        .map(|l| {
            serde_json::json!({
                "link": l.link,
                "unconfirmed": l.unconfirmed,
                "resent": l.resent,
                "modes": l.modes.iter().map(|m| serde_json::json!({
                    "mode": m.mode,
                    "links": m.links,
                    "answered": m.answered,
                    "rtt_mean_ms": (m.rtt_mean_secs * 1e6).round() / 1e3,
                    "rtt_p99_at_most_ms": m.rtt_p99_at_most_secs.map(|s| (s * 1e6).round() / 1e3),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (bounced, dropped) = m.by_reason();
    let map = |v: fedgate_s2s::driver::metrics::ReasonCounts| -> serde_json::Map<String, serde_json::Value> {
        v.into_iter().map(|(k, n)| (k, n.into())).collect()
    };
    serde_json::json!({ "links": links, "bounced": map(bounced), "dropped": map(dropped) })
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
    if let Some(o) = doc.as_object_mut() {
        o.insert("acks".into(), acks_json(&state.ctx.metrics));
    }
    if let (Some(sip), Some(o)) = (&state.sip, doc.as_object_mut()) {
        o.insert("sip".into(), sip.link.status());
    }
    if let (Some(ic), Some(o)) = (&state.intercluster, doc.as_object_mut()) {
        o.insert("intercluster".into(), ic.status());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_requests_need_loopback_or_the_token() {
        let lo: IpAddr = "127.0.1.7".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.0.2.10".parse().unwrap();
        // No token configured: loopback only.
        for ip in [lo, lo6, mapped] {
            assert_eq!(admin_gate(Some(ip), None, None), Ok(()), "{ip}");
        }
        let (s, why) = admin_gate(Some(lan), Some("Bearer x"), None).unwrap_err();
        assert_eq!(s, "403 Forbidden");
        assert!(why.contains("admin_token_file"), "{why}");
        assert!(admin_gate(None, None, None).is_err());
        // A token configured: required from everyone, loopback included.
        let t = Some("s3cret-token");
        assert_eq!(
            admin_gate(Some(lan), Some(" Bearer s3cret-token "), t),
            Ok(())
        );
        assert_eq!(admin_gate(Some(lo), Some("Bearer s3cret-token"), t), Ok(()));
        let (s, why) = admin_gate(Some(lo), None, t).unwrap_err();
        assert_eq!(s, "401 Unauthorized");
        assert!(why.contains("--token-file"), "{why}");
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-token2",
            "Basic s3cret-token",
            "",
        ] {
            assert!(admin_gate(Some(lo), Some(wrong), t).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn the_token_file_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  abc123\n").unwrap();
        assert_eq!(read_admin_token(&f).unwrap(), "abc123");
        std::fs::write(&f, "\n  \n").unwrap();
        assert!(read_admin_token(&f).unwrap_err().contains("empty"));
        assert!(read_admin_token(&dir.path().join("missing")).is_err());
    }
}
