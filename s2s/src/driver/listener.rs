//! The s2s listener: accepts TCP on 5269 (or a configured address), sniffs the first byte to
//! tell direct TLS (XEP-0368, `0x16`) from a plain stream that will use STARTTLS, and runs the
//! receiving-side machine for each connection.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::conn::Conn;
use super::context::{Origin, S2sContext, Stanza, new_stream_id};
use super::io::Io;
use super::pool::Pool;
use super::receipt::Receipts;
use crate::element::jid_domain;
use crate::inbound::{Action, Inbound, InboundSettings};
use crate::wire::{Failure, FailureKind, StreamError, stanza_domains};

/// Serve s2s connections on `listener` until shutdown. `direct_tls_only`: a dedicated
/// XEP-0368 port (TLS from the first byte, no sniffing). `internal`: the internal listener,
/// where the gateway's own IM servers for these hosted domains send their outbound s2s.
pub async fn serve(
    ctx: Arc<S2sContext>,
    pool: Arc<Pool>,
    listener: TcpListener,
    direct_tls_only: bool,
    internal: Option<Arc<HashSet<String>>>,
) {
    let mut shutdown = ctx.shutdown_signal();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let (ctx, pool, internal) = (ctx.clone(), pool.clone(), internal.clone());
                    // Every line of this stream carries who it is with: the fields are filled
                    // in as they become known (stream id at the header, the pair at auth).
                    let span = tracing::info_span!(
                        "s2s_in",
                        %peer,
                        internal = internal.is_some(),
                        stream = tracing::field::Empty,
                        local = tracing::field::Empty,
                        remote = tracing::field::Empty,
                        auth = tracing::field::Empty,
                    );
                    tokio::spawn(
                        handle(ctx, pool, tcp, peer, direct_tls_only, internal).instrument(span),
                    );
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
    internal: Option<Arc<HashSet<String>>>,
) {
    let _alive = ctx.inbound_guard();
    let m = &ctx.metrics;
    m.streams.with_label_values(&["in", "negotiating"]).inc();
    let mut authenticated_gauge = false;
    let result = run(
        &ctx,
        &pool,
        tcp,
        direct_tls_only,
        internal,
        &mut authenticated_gauge,
    )
    .await;
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
    if let Err(f) = result
        && let Some(left_out) =
            ctx.log_limit
                .admit(&peer.ip().to_string(), label, std::time::Instant::now())
    {
        tracing::info!(%peer, failure = %f, direct_tls_only, left_out, "inbound s2s stream ended (left_out: like ones from this address since the last line)");
    }
}

async fn run(
    ctx: &Arc<S2sContext>,
    pool: &Arc<Pool>,
    tcp: TcpStream,
    direct_tls_only: bool,
    internal: Option<Arc<HashSet<String>>>,
    established: &mut bool,
) -> Result<(), Failure> {
    let is_internal = internal.is_some();
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
        // The internal servers are ours (config, not policy): policy applies to what they
        // send per stanza, in the router.
        gate: if is_internal {
            Arc::new(crate::gate::Open(crate::gate::Floor {
                tls_required: s.tls_required,
                auth: s.auth,
                pins: Vec::new(),
                max_streams: None,
                rule: None,
            }))
        } else {
            ctx.gate()
        },
        internal,
        stream_management: s.stream_management,
    };
    let stream_id = new_stream_id();
    tracing::Span::current().record("stream", stream_id.as_str());
    let mut machine = Inbound::new(settings, stream_id, false);
    let mut peer = None;
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
        peer = ctx.peer_cert(conn.io.peer_certs(), true);
        machine.tls_established(ctx.cert_check(peer.as_ref()));
    }

    let (vtx, mut vrx) = mpsc::unbounded_channel::<(String, String, bool, String)>();
    let mut shutdown = ctx.shutdown_signal();
    let mut closing = ctx.closing_signal();
    let mut overload = ctx.overload_signal();
    // XEP-0198 once the peer enabled it: what the next hops took, and the peer's request
    // waiting for it (the count it covers, and when it must be answered anyway).
    let mut sm: Option<Arc<Receipts>> = None;
    let mut ack_wanted: Option<(u64, tokio::time::Instant)> = None;
    let mut shutdown_begun = *shutdown.borrow();
    let deadline = tokio::time::Instant::now() + s.negotiation_timeout;
    let negotiation = tokio::time::sleep_until(deadline);
    tokio::pin!(negotiation);
    let idle = tokio::time::sleep(s.idle_timeout);
    tokio::pin!(idle);
    // What this stream adds to the per-domain status, taken out however it ends.
    let mut marks = StatusMarks::new(ctx);
    let mut routed: std::collections::HashMap<String, prometheus::IntCounter> =
        std::collections::HashMap::new();
    let result = loop {
        for a in machine.take_actions() {
            match a {
                Action::Send(b) => conn.queue(&b),
                Action::StartTls => {
                    let acceptor = ctx.server_tls_for(machine.local()).clone();
                    let r = tokio::time::timeout(s.negotiation_timeout, conn.accept_tls(&acceptor))
                        .await;
                    match r {
                        Ok(Ok(())) => {
                            peer = ctx.peer_cert(conn.io.peer_certs(), true);
                            machine.tls_established(ctx.cert_check(peer.as_ref()));
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
                    not_after,
                    mechanism,
                } => {
                    if let Some(t) = not_after {
                        marks.peer_cert(&remote, t);
                    }
                    if marks.remotes.is_empty() {
                        // The stream's first pair (more may be multiplexed on it later).
                        let span = tracing::Span::current();
                        span.record("local", local.as_str());
                        span.record("remote", remote.as_str());
                        span.record("auth", method.as_str());
                    }
                    ctx.metrics
                        .auth
                        .with_label_values(&[
                            "in",
                            method.as_str(),
                            mechanism,
                            "ok",
                            &ctx.metrics.domain_label(&remote),
                        ])
                        .inc();
                    ctx.status
                        .authenticated(&remote, &local, false, mechanism, method.as_str());
                    tracing::info!(%local, %remote, method = method.as_str(), mechanism, tls = ?conn.io.tls_version(), "inbound s2s pair authenticated");
                    if !marks.remotes.contains(&remote) {
                        let max = ctx.gate().floor(&remote, true).max_streams;
                        let slot = match ctx.stream_limits.try_open(&remote, max) {
                            Ok(slot) => slot,
                            Err(open) => {
                                let e = StreamError::new(
                                    "policy-violation",
                                    format!(
                                        "limit: {remote} already has {open} inbound streams (policy allows {})",
                                        max.unwrap_or(open)
                                    ),
                                );
                                // Not the <success/> or valid result queued for this pair.
                                conn.discard_queued();
                                // The error goes on the stream that authenticated the pair,
                                // whose header is sent (without the <success/>, SASL starts
                                // no new one).
                                conn.close_with(&e.to_bytes()).await;
                                return Err(Failure::new(FailureKind::Limit, e.text));
                            }
                        };
                        marks.stream_opened(remote, slot);
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
                Action::SmEnabled => {
                    ctx.metrics
                        .ack_mode
                        .with_label_values(&["s2s-in", "sm"])
                        .inc();
                    sm = Some(Receipts::new());
                }
                Action::AckRequested => {
                    if let Some(r) = &sm {
                        let (_, received) = r.counts();
                        ack_wanted =
                            Some((received, tokio::time::Instant::now() + ACK_ANSWER_MAX_DELAY));
                    }
                }
                Action::Stanza(el, size) => {
                    if ctx.take_ping_answer(&el) {
                        continue;
                    }
                    if shutdown_begun && !is_reply(&el) {
                        // Draining: no new work. With XEP-0198 the sender keeps it (we never
                        // acknowledge it); without, it is answered now.
                        if sm.is_none() {
                            let st = Stanza::new(el, size, Origin::Gateway);
                            ctx.bounce(
                                &st,
                                crate::wire::ErrorType::Wait,
                                "service-unavailable",
                                "shutdown",
                                "fedgate: shutdown: fedgate is shutting down",
                            );
                        }
                        continue;
                    }
                    let (Some(from), Some(to)) = stanza_domains(&el) else {
                        continue;
                    };
                    // Canonical already: the machine rewrote the addresses.
                    let (from, to) = (from.into_owned(), to.into_owned());
                    let origin = if is_internal {
                        // From our internal server (from = hosted) to a remote domain.
                        Origin::Internal {
                            local: from,
                            remote: to,
                        }
                    } else {
                        // One counter lookup per remote domain and stream, not per stanza.
                        routed
                            .entry(from.clone())
                            .or_insert_with(|| {
                                ctx.metrics.routed.with_label_values(&[
                                    "remote-to-local",
                                    &ctx.metrics.domain_label(&from),
                                ])
                            })
                            .inc();
                        Origin::Remote {
                            local: to,
                            remote: from,
                        }
                    };
                    let mut st = Stanza::new(el, size, origin);
                    st.receipt = sm.as_ref().map(|r| r.issue());
                    ctx.sink().route(st);
                }
                Action::Malformed {
                    el,
                    size,
                    local,
                    why,
                } => {
                    let mut st = Stanza::new(el, size, Origin::Gateway);
                    // Counted and acknowledged like any stanza: the error reply answers it.
                    st.receipt = sm.as_ref().map(|r| r.issue());
                    ctx.bounce_malformed(&st, &local, &why);
                }
                Action::Close(e) => {
                    tracing::info!(condition = e.condition, text = %e.text, "closing inbound stream with error");
                    // The machine queued its stream header before this error.
                    conn.close_with(&e.to_bytes()).await;
                    return Err(stream_error_failure(&e));
                }
                Action::PeerClosed => {
                    final_ack(ctx, &mut conn, sm.as_deref()).await;
                    conn.close_with(&machine.closing_bytes(None)).await;
                    return Ok(());
                }
            }
        }
        if let (Some(r), Some((upto, by))) = (&sm, ack_wanted) {
            let (confirmed, _) = r.counts();
            if confirmed >= upto || tokio::time::Instant::now() >= by {
                conn.queue(&ack_element(ctx, r));
                ack_wanted = None;
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
            conn.close_with(&machine.closing_bytes(Some(&e))).await;
            break Err(Failure::new(FailureKind::Limit, e.text));
        }
        tokio::select! {
            ev = conn.next_event() => match ev {
                Ok(ev) => {
                    // DANE/POSH need I/O: ask them before the machine decides about a domain.
                    if let Some(p) = &peer {
                        for d in domains_to_prove(&ev) {
                            ctx.prepare_identity(p, &d, None).await;
                        }
                    }
                    machine.handle(ev);
                    idle.as_mut().reset(tokio::time::Instant::now() + s.idle_timeout);
                }
                Err(e) => {
                    let f = e.failure();
                    if let super::conn::ReadError::Xml(x) = &e {
                        let se = StreamError::new(x.condition(), f.to_string());
                        conn.close_with(&machine.closing_bytes(Some(&se))).await;
                    }
                    break Err(f);
                }
            },
            Some((local, remote, ok, why)) = vrx.recv() => machine.dialback_verified(&local, &remote, ok, &why),
            // What the next hops took grew while the peer waits for an answer.
            _ = async { match &sm { Some(r) => r.changed().await, None => std::future::pending().await } }, if ack_wanted.is_some() => {}
            _ = super::pool::sleep_until_opt(ack_wanted.map(|(_, by)| by)), if ack_wanted.is_some() => {}
            _ = &mut negotiation, if !*established => {
                let e = StreamError::new("connection-timeout", "timeout: not authenticated in time");
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                break Err(Failure::new(FailureKind::Timeout, e.text));
            }
            _ = &mut idle => {
                conn.close_with(&machine.closing_bytes(None)).await;
                break Ok(());
            }
            remote = until_expiry(&marks.expiries) => {
                // RFC 6120 §13.7.2.3 and §4.9.3.16: the stream must not outlive the certificate.
                let e = StreamError::new("reset", format!("the certificate of {remote} expired"));
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                tracing::info!(%remote, "closed inbound stream: peer certificate expired");
                break Ok(());
            }
            // Shutdown: keep reading (answers to our pings and acks arrive here) while the
            // links drain, take no new work, then close.
            _ = shutdown.changed(), if !shutdown_begun => shutdown_begun = true,
            // The errors owed to the peer found no room: tell it with a stream error rather
            // than drop them silently.
            _ = overload.changed() => if ctx.is_overloaded(&marks.remotes) {
                final_ack(ctx, &mut conn, sm.as_deref()).await;
                let e = StreamError::new(
                    "resource-constraint",
                    "limit: the errors owed to your domain found no room in the queue back to you",
                );
                conn.close_with(&e.to_bytes()).await;
                break Err(Failure::new(FailureKind::Limit, e.text));
            },
            _ = closing.changed() => {
                final_ack(ctx, &mut conn, sm.as_deref()).await;
                let e = StreamError::new("system-shutdown", "fedgate is shutting down");
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                break Ok(());
            }
        }
    };
    drop(marks);
    result
}

/// The marks one inbound stream leaves in the per-domain status (an open stream per remote
/// domain it authenticated, the expiry of each certificate that authenticated a pair): taken
/// out when the stream ends, whether it ends normally, by a limit, by a stream error or by a
/// failure, so that `/status` and `fedgate_peer_cert_expiry_seconds` show only live streams.
struct StatusMarks<'a> {
    ctx: &'a S2sContext,
    remotes: Vec<String>,
    /// The streams counted against each remote domain's `max_streams`.
    slots: Vec<super::stream_limit::StreamSlot>,
    expiries: Vec<(String, i64)>,
}

impl<'a> StatusMarks<'a> {
    fn new(ctx: &'a S2sContext) -> Self {
        Self {
            ctx,
            remotes: Vec::new(),
            slots: Vec::new(),
            expiries: Vec::new(),
        }
    }

    fn stream_opened(&mut self, remote: String, slot: super::stream_limit::StreamSlot) {
        self.ctx.status.stream_opened(&remote, false);
        self.remotes.push(remote);
        self.slots.push(slot);
    }

    fn peer_cert(&mut self, remote: &str, not_after: i64) {
        self.ctx.status.peer_cert_add(remote, not_after);
        self.expiries.push((remote.to_owned(), not_after));
    }
}

impl Drop for StatusMarks<'_> {
    fn drop(&mut self) {
        for r in &self.remotes {
            self.ctx.status.stream_closed(r, false);
        }
        for (r, t) in &self.expiries {
            self.ctx.status.peer_cert_remove(r, *t);
        }
    }
}

/// How long a peer's `<r/>` may wait for the next hops before it is answered with what they
/// took so far.
const ACK_ANSWER_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Before closing a stream with XEP-0198: wait briefly for the next hops, then tell the peer
/// what was taken care of (XEP-0198 §5: a last `<a/>` before the close), so it resends or
/// bounces only the rest.
async fn final_ack(ctx: &S2sContext, conn: &mut Conn, sm: Option<&Receipts>) {
    let Some(r) = sm else { return };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        loop {
            let (c, n) = r.counts();
            if c >= n {
                break;
            }
            r.changed().await;
        }
    })
    .await;
    conn.queue(&ack_element(ctx, r));
}

/// The XEP-0198 `<a/>` telling the peer what the next hops took, counted as acknowledged.
fn ack_element(ctx: &S2sContext, r: &Receipts) -> Vec<u8> {
    let (h, newly) = r.tell();
    ctx.metrics
        .confirmed
        .with_label_values(&["s2s-in"])
        .inc_by(newly);
    format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>").into_bytes()
}

/// Answers (iq results, errors) still flow while draining: they complete work in flight.
fn is_reply(el: &crate::element::Element) -> bool {
    el.attr("type") == Some("error")
        || el.name == "iq" && matches!(el.attr("type"), Some("result" | "error"))
}

/// The domains whose identity the machine is about to check: the stream header's `from`
/// and the `from` of a dialback request.
fn domains_to_prove(ev: &crate::xml::StreamEvent) -> Vec<String> {
    use crate::xml::StreamEvent;
    match ev {
        StreamEvent::Open(h) => h
            .from
            .iter()
            .filter_map(|f| jid_domain(f).map(Cow::into_owned))
            .collect(),
        StreamEvent::Element(el, _)
            if el.is("result", crate::element::NS_DIALBACK) && el.attr("type").is_none() =>
        {
            el.attr("from")
                .and_then(jid_domain)
                .map(Cow::into_owned)
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Resolves when the earliest certificate expiry among `expiries` passes (never if none).
pub(crate) async fn until_expiry(expiries: &[(String, i64)]) -> String {
    let Some((remote, t)) = expiries.iter().min_by_key(|(_, t)| *t) else {
        return std::future::pending().await;
    };
    let now = fedgate_certs::unix_now();
    // notAfter is the last valid second: act once it has passed.
    let left = u64::try_from(t.saturating_sub(now)).unwrap_or(0) + 1;
    tokio::time::sleep(std::time::Duration::from_secs(left)).await;
    remote.clone()
}

fn stream_error_failure(e: &StreamError) -> Failure {
    let kind = match e.condition {
        "policy-violation" => FailureKind::Policy,
        "not-authorized" | "invalid-from" => FailureKind::Auth,
        _ => FailureKind::Stream,
    };
    Failure::new(kind, format!("{}: {}", e.condition, e.text))
}
