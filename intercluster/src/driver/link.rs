//! One link: dialing (with backoff and jitter) or accepting, mutual TLS with the peer's cluster
//! name checked in its certificate, the stream headers, then the session loop (reads, timers,
//! own changes, queued stanzas) with a separate writer task so that two snapshots crossing on
//! one link never block each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fedgate_certs::{CertFailureKind, unix_now};
use fedgate_s2s::wire::ErrorType;
use fedgate_s2s::xml::{StreamEvent, StreamHeader, StreamParser};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{Intercluster, Peer, lock, with_default_port};
use crate::failure::{FailureKind, LinkFailure};
use crate::routing::pack;
use crate::session::{Action, Note, Session};
use crate::wire::{Msg, NS_INTERCLUSTER, STREAM_CLOSE, stream_header};

fn fail(kind: FailureKind, detail: impl Into<String>) -> LinkFailure {
    LinkFailure::new(kind, detail)
}

/// Logs and counts a failure of the link to `peer`.
fn record(ic: &Intercluster, peer: Option<&Peer>, name: &str, f: &LinkFailure) {
    ic.metrics
        .failures
        .with_label_values(&[name, f.kind.as_str()])
        .inc();
    tracing::warn!(peer = %name, kind = f.kind.as_str(), detail = %f.detail, "intercluster link failure");
    if let Some(p) = peer {
        lock(&p.status).last_error = Some((unix_now(), f.clone()));
    }
}

/// The wait before attempt `attempt + 1`: doubling from `min` up to `max`, then a random
/// point in its upper half (jitter, so that clusters do not reconnect in lockstep).
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let base = min
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .max(Duration::from_millis(1));
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

fn cert_failure(f: &fedgate_certs::CertFailure) -> LinkFailure {
    let kind = match f.kind {
        CertFailureKind::Name => FailureKind::CertName,
        _ => FailureKind::CertChain,
    };
    fail(kind, f.to_string())
}

/// The certificate chain the peer presented in the handshake.
fn peer_chain(conn: &rustls::CommonState) -> Vec<CertificateDer<'static>> {
    conn.peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    parser: &mut StreamParser,
    timeout: Duration,
) -> Result<StreamHeader, LinkFailure> {
    let work = async {
        loop {
            match parser.next_event() {
                Ok(Some(StreamEvent::Open(h))) => {
                    if h.default_ns != NS_INTERCLUSTER {
                        return Err(fail(
                            FailureKind::Protocol,
                            format!(
                                "stream namespace '{}' is not {NS_INTERCLUSTER}",
                                h.default_ns
                            ),
                        ));
                    }
                    return Ok(h);
                }
                Ok(Some(_)) => return Err(fail(FailureKind::Protocol, "expected a stream header")),
                Ok(None) => {}
                Err(e) => return Err(fail(FailureKind::Protocol, e.to_string())),
            }
            match io.read_buf(parser.read_buf(4096)).await {
                Ok(0) => return Err(fail(FailureKind::Closed, "closed before the stream header")),
                Ok(n) => parser.commit_read(n),
                Err(e) => return Err(fail(FailureKind::Closed, e.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(fail(FailureKind::Timeout, "no stream header in time")))
}

/// Dials `peer` until it is removed or the gateway stops.
pub(super) async fn dial_loop(ic: Arc<Intercluster>, peer: Arc<Peer>) {
    let mut stop = peer.stop.subscribe();
    let mut shutdown = ic.shutdown.subscribe();
    let mut attempt = 0u32;
    loop {
        if *stop.borrow() || *shutdown.borrow() {
            return;
        }
        let address = lock(&peer.address).clone();
        match address {
            Some(a) => {
                let mut went_up = false;
                if let Err(f) = dial_once(&ic, &peer, &a, &mut went_up).await {
                    record(&ic, Some(&peer), &peer.name, &f);
                }
                if went_up {
                    attempt = 0;
                }
            }
            None => {
                tracing::debug!(peer = %peer.name, "no address: waiting for the peer to connect")
            }
        }
        if *stop.borrow() || *shutdown.borrow() {
            return;
        }
        let wait = backoff(ic.settings.backoff_min, ic.settings.backoff_max, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

async fn dial_once(
    ic: &Arc<Intercluster>,
    peer: &Arc<Peer>,
    address: &str,
    went_up: &mut bool,
) -> Result<(), LinkFailure> {
    let target = with_default_port(address);
    let timeout = ic.settings.connect_timeout;
    let addrs: Vec<std::net::SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host(&target))
            .await
            .map_err(|_| fail(FailureKind::Dns, format!("{target}: lookup timed out")))?
            .map_err(|e| fail(FailureKind::Dns, format!("{target}: {e}")))?
            .collect();
    let Some(sa) = addrs.first() else {
        return Err(fail(FailureKind::Dns, format!("{target}: no address")));
    };
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(sa))
        .await
        .map_err(|_| fail(FailureKind::Connect, format!("{sa}: timed out")))?
        .map_err(|e| fail(FailureKind::Connect, format!("{sa}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(peer.name.clone()).map_err(|e| {
        fail(
            FailureKind::CertName,
            format!("'{}' is not a DNS name: {e}", peer.name),
        )
    })?;
    let mut tls = tokio::time::timeout(timeout, ic.client_tls.connect(name, tcp))
        .await
        .map_err(|_| {
            fail(
                FailureKind::Timeout,
                format!("{sa}: TLS handshake timed out"),
            )
        })?
        .map_err(|e| fail(FailureKind::Tls, format!("{sa}: {e}")))?;
    let chain = peer_chain(tls.get_ref().1);
    ic.verifier
        .verify(&chain, &peer.name, false, UnixTime::now())
        .map_err(|f| cert_failure(&f))?;
    tls.write_all(&stream_header(&ic.settings.cluster, &peer.name))
        .await
        .map_err(|e| fail(FailureKind::Closed, e.to_string()))?;
    let mut parser = StreamParser::new(ic.settings.limits);
    let h = read_header(&mut tls, &mut parser, timeout).await?;
    if h.from.as_deref() != Some(peer.name.as_str()) {
        return Err(fail(
            FailureKind::CertName,
            format!("the stream is from {:?}, expected {}", h.from, peer.name),
        ));
    }
    run_link(ic, peer, tls, parser, went_up).await
}

/// Accepts links until the gateway stops.
pub(super) async fn accept_loop(ic: Arc<Intercluster>, listener: TcpListener) {
    let mut shutdown = ic.shutdown.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((sock, from)) = r else { continue };
                let ic = ic.clone();
                let span = tracing::info_span!(
                    "intercluster",
                    direction = "in",
                    %from,
                    peer = tracing::field::Empty,
                    generation = tracing::field::Empty,
                );
                tokio::spawn(tracing::Instrument::instrument(async move {
                    if let Err((peer, f)) = accept_one(&ic, sock).await {
                        let p = peer.as_deref().and_then(|n| ic.peer(n));
                        let name = peer.unwrap_or_else(|| format!("unknown ({from})"));
                        // Unknown callers are not a label value (unbounded): count them as one.
                        let label = if p.is_some() { name.clone() } else { "unknown".to_owned() };
                        ic.metrics.failures.with_label_values(&[&label, f.kind.as_str()]).inc();
                        tracing::warn!(peer = %name, kind = f.kind.as_str(), detail = %f.detail, "intercluster link failure (inbound)");
                        if let Some(p) = p {
                            lock(&p.status).last_error = Some((unix_now(), f));
                        }
                    }
                }, span));
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn accept_one(
    ic: &Arc<Intercluster>,
    sock: TcpStream,
) -> Result<(), (Option<String>, LinkFailure)> {
    let _ = sock.set_nodelay(true);
    let timeout = ic.settings.connect_timeout;
    let mut tls = tokio::time::timeout(timeout, ic.server_tls.accept(sock))
        .await
        .map_err(|_| (None, fail(FailureKind::Timeout, "TLS handshake timed out")))?
        .map_err(|e| (None, fail(FailureKind::Tls, e.to_string())))?;
    let chain = peer_chain(tls.get_ref().1);
    let mut parser = StreamParser::new(ic.settings.limits);
    let h = read_header(&mut tls, &mut parser, timeout)
        .await
        .map_err(|f| (None, f))?;
    let Some(name) = h.from.clone() else {
        return Err((
            None,
            fail(FailureKind::Protocol, "stream header without 'from'"),
        ));
    };
    tracing::Span::current().record("peer", name.as_str());
    let Some(peer) = ic.peer(&name) else {
        return Err((
            Some(name.clone()),
            fail(
                FailureKind::CertName,
                format!("cluster '{name}' is not a configured peer"),
            ),
        ));
    };
    let named = Some(name.clone());
    ic.verifier
        .verify(&chain, &name, true, UnixTime::now())
        .map_err(|f| (named.clone(), cert_failure(&f)))?;
    tls.write_all(&stream_header(&ic.settings.cluster, &name))
        .await
        .map_err(|e| (named.clone(), fail(FailureKind::Closed, e.to_string())))?;
    let mut went_up = false;
    run_link(ic, &peer, tls, parser, &mut went_up)
        .await
        .map_err(|f| (named, f))
}

/// Bytes handed to the writer and not yet written before a link is closed: a peer that stops
/// reading (while asking for snapshots, say) may not grow our memory without bound.
const MAX_UNWRITTEN: usize = 64 * 1024 * 1024;

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    unwritten: Arc<AtomicUsize>,
) {
    while let Some(b) = rx.recv().await {
        let r = wr.write_all(&b).await;
        unwritten.fetch_sub(b.len(), Ordering::Relaxed);
        if r.is_err() {
            return;
        }
    }
    let _ = wr.write_all(STREAM_CLOSE).await;
    let _ = wr.shutdown().await;
}

/// The writing side of one link and its generation.
struct LinkIo {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    unwritten: Arc<AtomicUsize>,
    generation: u64,
}

impl LinkIo {
    /// Hands `out` to the writer; `Err` when the peer does not read.
    fn send(&self, out: Vec<u8>) -> Result<(), LinkFailure> {
        if out.is_empty() {
            return Ok(());
        }
        let waiting = self.unwritten.fetch_add(out.len(), Ordering::Relaxed) + out.len();
        let _ = self.tx.send(out);
        if waiting > MAX_UNWRITTEN {
            return Err(fail(
                FailureKind::Timeout,
                format!("the peer does not read: {waiting} bytes wait to be written"),
            ));
        }
        Ok(())
    }
}

/// Sends queued stanzas, numbered (see [`crate::delivery`]), as far as the budget of
/// unacknowledged bytes allows; the rest waits for acknowledgements. The receipts of a batch
/// ride with its last route: acknowledgements are cumulative, so they fire once the peer
/// confirmed every route of the batch (or the routes were bounced).
fn send_queued(ic: &Intercluster, peer: &Peer, io: &LinkIo) -> Result<(), LinkFailure> {
    let mut d = lock(&peer.delivery);
    let room = ic
        .settings
        .queue_max_bytes
        .saturating_sub(d.unacked_bytes());
    if !d.owns(io.generation) || room == 0 {
        return Ok(());
    }
    let items = lock(&peer.queue).drain_up_to(room);
    ic.metrics
        .routed
        .with_label_values(&[&peer.name, "out"])
        .inc_by(items.len() as u64);
    let now = Instant::now();
    let mut receipts = Vec::new();
    let routes = pack(items.into_iter().map(|(st, h)| {
        receipts.extend(st.receipt);
        (st.el, h)
    }));
    let last = routes.len().saturating_sub(1);
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (i, r) in routes.into_iter().enumerate() {
        let before = out.len();
        r.to_element().write_to(&mut out);
        let hold = if i == last {
            std::mem::take(&mut receipts)
        } else {
            Vec::new()
        };
        // Owned under this lock, so numbering cannot be refused; if it were, what the route
        // held is let go of below, outside the lock.
        if let Err(hold) = d.push(io.generation, r, out.len() - before, now, hold) {
            refused.push(hold);
        }
    }
    drop(d);
    drop(refused);
    io.send(out)
}

/// Acknowledges to the peer what our next hops confirmed of its routes, when that changed
/// since `last` (the peer incarnation and count this link acknowledged last).
fn send_ack(peer: &Peer, io: &LinkIo, last: &mut (u64, u64)) -> Result<(), LinkFailure> {
    let d = lock(&peer.delivery);
    if !d.owns(io.generation) {
        return Ok(());
    }
    let r = d.received();
    drop(d);
    let h = r.confirmed;
    if (r.incarnation, h) == *last {
        return Ok(());
    }
    *last = (r.incarnation, h);
    let mut out = Vec::new();
    Msg::Ack { h }.to_element().write_to(&mut out);
    io.send(out)
}

/// Carries out session actions; `Err` when the link must close.
fn execute(
    ic: &Intercluster,
    peer: &Arc<Peer>,
    session: &Session,
    acts: Vec<Action>,
    io: &LinkIo,
    went_up: &mut bool,
) -> Result<(), LinkFailure> {
    let mut out = Vec::new();
    let mut closing = None;
    let name = peer.name.as_str();
    for a in acts {
        match a {
            Action::Send(m) => m.to_element().write_to(&mut out),
            // A replaced link does not take routes: the peer sends them again on the new one.
            // What it carries is acknowledged once our next hop confirmed it (its receipt).
            Action::Deliver(r) => {
                let taken = lock(&peer.delivery).take(io.generation);
                if let Some(t) = taken {
                    ic.on_routed(name, r, Some(peer.receipt(t)));
                }
            }
            Action::Resume {
                incarnation,
                peer_has,
            } => {
                let r = lock(&peer.delivery).resume(io.generation, incarnation, peer_has);
                drop(r.released);
                if !r.resend.is_empty() {
                    tracing::info!(peer = %name, routes = r.resend.len(), "sending again the stanzas the peer had not taken when the last link broke");
                    ic.metrics
                        .resent
                        .with_label_values(&[name])
                        .inc_by(r.resend.len() as u64);
                    for route in &r.resend {
                        route.to_element().write_to(&mut out);
                    }
                }
                if !r.lost.is_empty() {
                    tracing::warn!(peer = %name, routes = r.lost.len(), "the peer restarted before confirming stanzas sent to it: bouncing them");
                    ic.bounce_routes(
                        name,
                        r.lost,
                        ErrorType::Wait,
                        "remote-server-timeout",
                        "peer-restarted",
                        &format!(
                            "fedgate: intercluster: cluster {name} (the recipient's home) restarted before it confirmed this stanza; it may not have been delivered"
                        ),
                    );
                }
            }
            Action::Acked(h) => {
                let mut d = lock(&peer.delivery);
                let released = match d.ack(io.generation, h) {
                    Ok(released) => released,
                    Err(e) => {
                        closing = Some(fail(FailureKind::Protocol, e.to_string()));
                        break;
                    }
                };
                let room = d.unacked_bytes() < ic.settings.queue_max_bytes;
                drop(d);
                // Fires the receipts of what the peer confirmed: our senders may acknowledge.
                drop(released);
                if room && !lock(&peer.queue).is_empty() {
                    peer.wake.notify_one();
                }
            }
            Action::Close(f) => {
                closing = Some(f);
                break;
            }
            Action::Note(n) => {
                let m = &ic.metrics;
                match n {
                    // A link replaced meanwhile does not claim the status.
                    Note::Up { .. } if !lock(&peer.delivery).owns(io.generation) => {}
                    Note::Up { flagged } => {
                        *went_up = true;
                        if let Some(why) = &flagged {
                            tracing::warn!(peer = %name, %why, "intercluster link up despite a consistency mismatch (on_mismatch = flag)");
                        } else {
                            tracing::info!(peer = %name, "intercluster link up");
                        }
                        let mut st = lock(&peer.status);
                        st.up = true;
                        st.since = Some(unix_now());
                        st.flagged = flagged;
                        m.link_up.with_label_values(&[name]).set(1);
                        peer.wake.notify_one();
                    }
                    Note::DeltasIn(k) => {
                        m.deltas.with_label_values(&[name, "in"]).inc_by(k as u64);
                        m.entries
                            .with_label_values(&[name])
                            .set(ic.replica(name).1 as i64);
                    }
                    Note::DeltasOut(k) => {
                        m.deltas.with_label_values(&[name, "out"]).inc_by(k as u64)
                    }
                    Note::SnapshotIn(k) => {
                        m.snapshots.with_label_values(&[name, "in"]).inc();
                        tracing::info!(peer = %name, users = k, "directory snapshot received");
                        m.entries.with_label_values(&[name]).set(k as i64);
                    }
                    Note::SnapshotOut(_) => m.snapshots.with_label_values(&[name, "out"]).inc(),
                    Note::DigestMismatch => {
                        m.digest_mismatches.with_label_values(&[name]).inc();
                        tracing::warn!(peer = %name, "directory digest mismatch: asking for a snapshot");
                    }
                    Note::IncarnationChanged { old, new } => {
                        m.incarnation_changes.with_label_values(&[name]).inc();
                        lock(&peer.status).incarnation_changes += 1;
                        tracing::info!(peer = %name, old = format!("{old:016x}"), new = format!("{new:016x}"), "peer cluster has a new incarnation (restart, reset or restore): resyncing");
                    }
                    Note::Reconciled => lock(&peer.status).last_reconcile = Some(unix_now()),
                }
            }
        }
    }
    let sent = io.send(out);
    lock(&peer.status).lag = session.lag(Instant::now());
    closing.map_or(sent, Err)
}

/// The session loop of an established stream; returns why it ended (`Ok` for removal,
/// shutdown or replacement by a newer link).
async fn run_link<S>(
    ic: &Arc<Intercluster>,
    peer: &Arc<Peer>,
    io: S,
    mut parser: StreamParser,
    went_up: &mut bool,
) -> Result<(), LinkFailure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut generation = 0;
    peer.generation.send_modify(|g| {
        *g += 1;
        generation = *g;
    });
    tracing::Span::current().record("generation", generation);
    let mut gen_rx = peer.generation.subscribe();
    let mut stop = peer.stop.subscribe();
    let mut shutdown = ic.shutdown.subscribe();
    let mut changed = ic.changed.subscribe();
    let mut consistency = ic.consistency.subscribe();
    let digest = consistency.borrow_and_update().clone();
    // A removal (or shutdown) during the handshake is already "seen" by these receivers and
    // would never wake `changed()`: the link would live on for a peer that is gone.
    let ended = |stop: &watch::Receiver<bool>, shutdown: &watch::Receiver<bool>| {
        *stop.borrow() || *shutdown.borrow()
    };
    if ended(&stop, &shutdown) {
        return Ok(());
    }
    let (mut rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::unbounded_channel();
    let unwritten = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(wr, rx, unwritten.clone()));
    let io = LinkIo {
        tx,
        unwritten,
        generation,
    };
    // From here an older link of this peer neither takes nor sends routes; what we took of
    // the peer's goes into our hello.
    let received = lock(&peer.delivery).take_over(generation);
    let mut acked = (received.incarnation, received.confirmed);
    let mut session = Session::new(
        &peer.name,
        &digest,
        ic.settings.session.clone(),
        Instant::now(),
    );
    let acts = session.start(&ic.dir(), received);
    let mut result = execute(ic, peer, &session, acts, &io, went_up);
    while result.is_ok() && !ended(&stop, &shutdown) {
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let acts = tokio::select! {
            r = rd.read_buf(parser.read_buf(16 * 1024)) => match r {
                Ok(0) => Err(fail(FailureKind::Closed, "the peer closed the connection")),
                Ok(n) => {
                    parser.commit_read(n);
                    let mut acts = Vec::new();
                    let mut bad = None;
                    loop {
                        match parser.next_event() {
                            Ok(Some(StreamEvent::Element(el, _))) => match Msg::parse(&el) {
                                Ok(m) => {
                                    let mut d = ic.dir();
                                    // Checked under the directory lock: once the peer is
                                    // removed (and its replica forgotten), nothing of it is
                                    // applied any more.
                                    if ended(&stop, &shutdown) {
                                        break;
                                    }
                                    acts.extend(session.on_msg(m, &mut d, Instant::now()));
                                }
                                Err(e) => {
                                    bad = Some(fail(FailureKind::Protocol, e.to_string()));
                                    break;
                                }
                            },
                            Ok(Some(StreamEvent::Close)) => {
                                bad = Some(fail(FailureKind::Closed, "the peer closed the stream"));
                                break;
                            }
                            Ok(Some(StreamEvent::Open(_))) => {
                                bad = Some(fail(FailureKind::Protocol, "a second stream header"));
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                bad = Some(fail(FailureKind::Protocol, e.to_string()));
                                break;
                            }
                        }
                    }
                    // Act on what was read before the problem (e.g. a <refuse> before the close).
                    match bad {
                        Some(f) => {
                            let r = execute(ic, peer, &session, acts, &io, went_up);
                            Err(r.err().unwrap_or(f))
                        }
                        None => Ok(acts),
                    }
                }
                Err(e) => Err(fail(FailureKind::Closed, e.to_string())),
            },
            _ = tokio::time::sleep_until(deadline) => Ok(session.on_tick(&ic.dir(), Instant::now())),
            r = changed.changed() => match r {
                Ok(()) => Ok(session.on_local_change(&ic.dir())),
                Err(_) => break,
            },
            _ = peer.wake.notified(), if session.is_up() => {
                send_queued(ic, peer, &io).map(|()| Vec::new())
            }
            _ = peer.confirmed.notified(), if session.is_up() => {
                send_ack(peer, &io, &mut acked).map(|()| Vec::new())
            }
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
            _ = consistency.changed() => {
                tracing::info!(peer = %peer.name, "the consistency digest changed: setting the link up again");
                break;
            }
            _ = gen_rx.changed() => {
                if *gen_rx.borrow() != generation {
                    tracing::info!(peer = %peer.name, "a newer link replaces this one");
                    break;
                }
                Ok(Vec::new())
            }
        };
        result = acts.and_then(|a| execute(ic, peer, &session, a, &io, went_up));
    }
    if *peer.generation.borrow() == generation {
        let mut st = lock(&peer.status);
        st.up = false;
        st.lag = Duration::ZERO;
        ic.metrics.link_up.with_label_values(&[&peer.name]).set(0);
    }
    lock(&peer.delivery).link_ended(generation);
    drop(io);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..10 {
            let base = (min * (1 << attempt)).min(max);
            let d = backoff(min, max, attempt);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        assert!(backoff(min, max, 40) <= max);
    }
}
