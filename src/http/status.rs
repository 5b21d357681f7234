//! The status listener (`[metrics] listen`), read-only: `GET /metrics` (Prometheus text),
//! `GET /healthz`, `GET /status` (JSON per remote domain) and the intercluster reads `GET
//! /intercluster/peers|lookup|conflicts` (`fedgate directory peers|lookup|conflicts`).
//!
//! Other methods get `405 Method Not Allowed` (HEAD is answered like GET, without the body).
//! Admin requests are not served here: `/intercluster/assign|unassign` get a 404 that names
//! the admin listener ([`super::admin`]).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use fedgate_s2s::driver::{Components, Pool, S2sContext};
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{Encoder, Registry, TextEncoder};

use super::server::{Body, Peer, respond, text};

pub struct HttpState {
    pub registry: Registry,
    pub ctx: Arc<S2sContext>,
    pub pool: Arc<Pool>,
    pub components: Arc<Components>,
    /// SIP federation, when configured.
    pub sip: Option<Arc<crate::sip_route::SipRoute>>,
    /// Intercluster peering, when configured (also serves `GET /intercluster/…`).
    pub intercluster: Option<Arc<crate::intercluster_runtime::IcRuntime>>,
    /// The cluster state (`/healthz` says `degraded` while its store is unreachable).
    pub cluster: Arc<crate::cluster::ClusterStore>,
}

/// Serves the status listener until the gateway shuts down.
pub async fn serve(state: Arc<HttpState>, listener: super::server::Listener) {
    let shutdown = state.ctx.shutdown_signal();
    let handler = Arc::new(move |req: &Request<Incoming>, _: &Peer| handle(&state, req));
    super::server::serve(listener, handler, shutdown).await;
}

/// The paths of the admin requests, served by the admin listener only.
pub fn is_admin_path(path: &str) -> bool {
    matches!(path, "/intercluster/assign" | "/intercluster/unassign")
}

/// One request to the status listener.
pub fn handle(state: &HttpState, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if is_admin_path(path) {
        return text(
            StatusCode::NOT_FOUND,
            "admin requests are served by the admin listener only ([admin] in the \
             configuration; fedgate directory --admin)\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "this listener is read-only: GET only\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_text(state),
        ),
        // Degraded still serves: 200, so that a load balancer keeps the node.
        "/healthz" => match state.cluster.degraded() {
            None => text(StatusCode::OK, "ok\n"),
            Some(why) => text(StatusCode::OK, format!("degraded: {why}\n")),
        },
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            status_json(state).to_string(),
        ),
        p if p.starts_with("/intercluster/") => match &state.intercluster {
            Some(ic) => {
                let target = req.uri().path_and_query().map_or(p, |pq| pq.as_str());
                let (status, ctype, body) = ic.http(&Method::GET, target);
                respond(status, ctype, body)
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
            // Per direction and local domain: how the pair last authenticated.
            let mut auth = serde_json::Map::new();
            for ((direction, local), a) in &s.auth {
                let side = auth
                    .entry(*direction)
                    .or_insert_with(|| serde_json::json!({}));
                side[local.as_str()] = serde_json::json!({
                    "mechanism": a.mechanism,
                    "method": a.method,
                    "at": unix(a.at),
                });
            }
            (
                d,
                serde_json::json!({
                    "inbound_streams": s.inbound_streams,
                    "outbound_streams": s.outbound_streams,
                    "auth": auth,
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
    if let Some(o) = doc.as_object_mut() {
        o.insert("cluster".into(), state.cluster.status());
    }
    doc
}
