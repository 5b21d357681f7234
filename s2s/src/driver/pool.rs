//! The outbound pool: one s2s stream per (local, remote) domain pair, created on demand,
//! reused, closed when idle. Stanzas queue (bounded in bytes) while the stream connects; if it
//! cannot be established, queued stanzas are bounced with the failure's kind in the text and the
//! remote domain is not retried before its backoff (exponential, with jitter) runs out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::mpsc;

use super::acked::AckedLink;
use super::connect::{Outcome, connect};
use super::context::{S2sContext, Stanza, Unacked};
use crate::outbound::Mode;
use crate::wire::{ErrorType, Failure, FailureKind};

type Pair = (String, String);

/// Stream errors (RFC 6120 §4.9.3) that say nothing about the stanzas we sent: what was
/// unconfirmed may be sent again on a new stream.
const TRANSIENT_STREAM_ERRORS: &[&str] = &[
    "connection-timeout",
    "internal-server-error",
    "remote-connection-failed",
    "reset",
    "resource-constraint",
    "see-other-host",
    "system-shutdown",
    "undefined-condition",
];

struct Link {
    id: u64,
    tx: mpsc::UnboundedSender<Stanza>,
    queued: Arc<AtomicUsize>,
}

struct Backoff {
    until: Instant,
    delay: Duration,
    failure: Failure,
}

pub struct Pool {
    ctx: Arc<S2sContext>,
    links: Mutex<HashMap<Pair, Link>>,
    /// Failed remote domains: bounded in size, and an entry goes once it has not been renewed
    /// for a few maximum backoffs (the next failure then starts from the shortest wait).
    backoff: moka::sync::Cache<String, Arc<Backoff>>,
    next_id: AtomicU64,
}

/// Remote domains remembered as failed at most (a flood of failing domains evicts the least
/// recently used, which may then be retried early).
const BACKOFF_CAPACITY: u64 = 100_000;

impl Pool {
    pub fn new(ctx: Arc<S2sContext>) -> Arc<Self> {
        let remember = (ctx.settings.retry_backoff_max * 4).max(Duration::from_secs(60));
        Arc::new(Self {
            ctx,
            backoff: moka::sync::Cache::builder()
                .max_capacity(BACKOFF_CAPACITY)
                .time_to_live(remember)
                .build(),
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Number of outbound links (connecting or established).
    pub fn len(&self) -> usize {
        self.links.lock().expect("pool lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Send a stanza from `local` to `remote`.
    pub fn send(self: &Arc<Self>, local: &str, remote: &str, st: Stanza) {
        if let Some(f) = self.backing_off(remote) {
            return self.bounce_failed(remote, &st, &f);
        }
        let mut st = st;
        for _ in 0..2 {
            let mut links = self.links.lock().expect("pool lock");
            let key = (local.to_owned(), remote.to_owned());
            if self.ctx.is_shutting_down() && !links.contains_key(&key) {
                // No new streams while shutting down.
                drop(links);
                return self.bounce_failed(
                    remote,
                    &st,
                    &Failure::new(FailureKind::Shutdown, "fedgate is shutting down"),
                );
            }
            let link = links
                .entry(key)
                .or_insert_with(|| self.spawn_link(local, remote));
            let size = st.size;
            let cap = super::context::queue_cap(&st, &self.ctx.settings);
            if link.queued.load(Ordering::Relaxed) + size > cap {
                drop(links);
                if st.el.attr("type") == Some("error") {
                    return self.ctx.error_without_room(remote, st);
                }
                return self.ctx.bounce(
                    &st,
                    ErrorType::Wait,
                    "resource-constraint",
                    "limit",
                    &format!("fedgate: limit: queue towards {remote} is full"),
                );
            }
            link.queued.fetch_add(size, Ordering::Relaxed);
            self.ctx.metrics.queued_bytes.add(size as i64);
            match link.tx.send(st) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    // The link task ended between lookup and send: forget it and retry once.
                    link.queued.fetch_sub(size, Ordering::Relaxed);
                    self.ctx.metrics.queued_bytes.sub(size as i64);
                    links.remove(&(local.to_owned(), remote.to_owned()));
                    st = back;
                }
            }
        }
        self.bounce_failed(
            remote,
            &st,
            &Failure::new(FailureKind::Connect, "link unavailable"),
        );
    }

    /// Answer a stanza whose link failed. For the internal link (the remote side is a hosted
    /// domain: our own IM server) the sender hears that the local service is unavailable.
    fn bounce_failed(&self, remote: &str, st: &Stanza, f: &Failure) {
        if self.ctx.hosted.contains(remote) {
            self.ctx.bounce(
                st,
                ErrorType::Cancel,
                "service-unavailable",
                "internal-server",
                &format!("fedgate: the local server for {remote} is unavailable ({f})"),
            );
        } else {
            self.ctx.bounce_failure(st, f);
        }
    }

    fn backing_off(&self, remote: &str) -> Option<Failure> {
        let e = self.backoff.get(remote)?;
        let left = e.until.checked_duration_since(Instant::now())?;
        let mut f = e.failure.clone();
        f.detail = format!("{} (next attempt in {} s)", f.detail, left.as_secs() + 1);
        Some(f)
    }

    fn record_failure(&self, remote: &str, f: &Failure) {
        let s = &self.ctx.settings;
        let delay = self.backoff.get(remote).map_or(s.retry_backoff_min, |e| {
            (e.delay * 2).min(s.retry_backoff_max)
        });
        // Up to 25 % jitter so that many domains do not retry in step.
        let jitter = delay.mul_f64(rand::rng().random_range(0.0..0.25));
        self.backoff.insert(
            remote.to_owned(),
            Arc::new(Backoff {
                until: Instant::now() + delay + jitter,
                delay,
                failure: f.clone(),
            }),
        );
    }

    fn spawn_link(self: &Arc<Self>, local: &str, remote: &str) -> Link {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        let (l, r, q) = (local.to_owned(), remote.to_owned(), queued.clone());
        let span = tracing::info_span!(
            "s2s_out",
            local = %l,
            remote = %r,
            link = id,
            target = tracing::field::Empty,
            auth = tracing::field::Empty,
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move { pool.run_link(id, l, r, rx, q).await },
            span,
        ));
        Link { id, tx, queued }
    }

    /// Forget the link if it is still the one with `id`; later stanzas start a new one.
    fn forget(&self, local: &str, remote: &str, id: u64) {
        let mut links = self.links.lock().expect("pool lock");
        let key = (local.to_owned(), remote.to_owned());
        if links.get(&key).is_some_and(|l| l.id == id) {
            links.remove(&key);
        }
    }

    fn dequeued(&self, queued: &AtomicUsize, size: usize) {
        queued.fetch_sub(size, Ordering::Relaxed);
        self.ctx.metrics.queued_bytes.sub(size as i64);
    }

    async fn run_link(
        self: Arc<Self>,
        id: u64,
        local: String,
        remote: String,
        mut rx: mpsc::UnboundedReceiver<Stanza>,
        queued: Arc<AtomicUsize>,
    ) {
        let ctx = self.ctx.clone();
        // A shutdown waits for this link to deliver or bounce what it holds.
        let _alive = ctx.drain_guard();
        let m = &ctx.metrics;
        m.streams.with_label_values(&["out", "negotiating"]).inc();
        let mode = Mode::Auth {
            secret: ctx.secret.clone(),
        };
        let res = connect(&ctx, &local, &remote, mode).await;
        m.streams.with_label_values(&["out", "negotiating"]).dec();
        let (mut conn, method, not_after, mechanism, target, sm_offered) = match res {
            Ok(Outcome::Established {
                conn,
                method,
                not_after,
                mechanism,
                target,
                sm_offered,
            }) => (conn, method, not_after, mechanism, target, sm_offered),
            Ok(Outcome::Verified(_)) => unreachable!("auth mode"),
            Err(f) => {
                // Authentication failures count as such; DNS/connect/TLS failures never got
                // that far (they are in fedgate_connect_attempts_total).
                if matches!(
                    f.kind,
                    FailureKind::Auth
                        | FailureKind::CertChain
                        | FailureKind::CertName
                        | FailureKind::Policy
                ) {
                    m.auth
                        .with_label_values(&[
                            "out",
                            "failed",
                            "none",
                            f.kind.as_str(),
                            &m.domain_label(&remote),
                        ])
                        .inc();
                }
                m.streams_closed
                    .with_label_values(&["out", f.kind.as_str()])
                    .inc();
                tracing::warn!(%local, %remote, failure = %f, "outbound s2s failed");
                ctx.status.error(&remote, &f);
                m.remote_failure(&remote, &f);
                self.record_failure(&remote, &f);
                self.forget(&local, &remote, id);
                rx.close();
                while let Some(st) = rx.recv().await {
                    self.dequeued(&queued, st.size);
                    self.bounce_failed(&remote, &st, &f);
                }
                return;
            }
        };
        self.backoff.invalidate(&remote);
        m.auth
            .with_label_values(&[
                "out",
                method.as_str(),
                mechanism,
                "ok",
                &m.domain_label(&remote),
            ])
            .inc();
        m.streams.with_label_values(&["out", "established"]).inc();
        ctx.status.stream_opened(&remote, true);
        ctx.status
            .authenticated(&remote, &local, true, mechanism, method.as_str());
        let span = tracing::Span::current();
        span.record("target", target.to_string());
        span.record("auth", method.as_str());
        tracing::info!(%local, %remote, %target, method = method.as_str(), mechanism, tls = ?conn.io.tls_version(), sm = sm_offered, "outbound s2s established");
        conn.parser.set_limits(ctx.settings.limits);
        let label = m.domain_label(&remote);
        // A link to a hosted domain is the internal link to our own IM server.
        let internal = ctx.hosted.contains(&remote);
        let path = if internal {
            "to-internal"
        } else {
            "local-to-remote"
        };
        let routed = m.routed.with_label_values(&[path, &label]);
        let mut acks = AckedLink::new(
            &ctx,
            &mut conn,
            if internal { "internal" } else { "s2s-out" },
            id,
            sm_offered && ctx.settings.stream_management,
            (&local, &remote),
            &remote,
        );

        let mut shutdown = ctx.shutdown_signal();
        // A shutdown that began while the stream was being set up: drain at once.
        let mut drain = ctx
            .is_shutting_down()
            .then(|| tokio::time::Instant::now() + ctx.settings.shutdown_grace);
        let mut resend = true;
        // What ends the stream: our closing tag, or a stream error (which carries it). Written
        // once, at the close: nothing may follow `</stream:stream>` (RFC 6120 §4.9.1).
        let mut last_words: Vec<u8> = b"</stream:stream>".to_vec();
        let idle = tokio::time::sleep(ctx.settings.idle_timeout);
        tokio::pin!(idle);
        let mut keepalive = tokio::time::interval(ctx.settings.keepalive_interval);
        keepalive.reset();
        let expiries: Vec<(String, i64)> =
            not_after.map(|t| (remote.clone(), t)).into_iter().collect();
        if let Some(t) = not_after {
            ctx.status.peer_cert_add(&remote, t);
        }
        let end: Result<&str, Failure> = loop {
            let now = Instant::now();
            acks.poll(&mut conn, now);
            if conn.queued() > 0 {
                if let Err(e) = conn.flush().await {
                    break Err(Failure::new(FailureKind::Connect, format!("write: {e}")));
                }
                keepalive.reset();
            }
            // Draining: done once nothing is queued and the peer confirmed everything.
            if drain.is_some() && rx.is_empty() && acks.ledger.unacked() == 0 {
                break Ok("shutdown");
            }
            let deadline = acks.deadline();
            tokio::select! {
                st = rx.recv(), if acks.ledger.has_room() => {
                    let Some(st) = st else { break Ok("closed") };
                    let mut n = 1;
                    self.dequeued(&queued, st.size);
                    st.el.write_to(conn.wbuf_mut());
                    acks.wrote(st, now);
                    // Batch what is already waiting into one write.
                    while conn.queued() < 64 * 1024 && acks.ledger.has_room() {
                        let Ok(st) = rx.try_recv() else { break };
                        self.dequeued(&queued, st.size);
                        st.el.write_to(conn.wbuf_mut());
                        acks.wrote(st, now);
                        n += 1;
                    }
                    routed.inc_by(n);
                    idle.as_mut().reset(tokio::time::Instant::now() + ctx.settings.idle_timeout);
                }
                ev = conn.next_event() => match ev {
                    Ok(crate::xml::StreamEvent::Close) => break Err(Failure::new(FailureKind::Stream, "peer closed the stream")),
                    Ok(crate::xml::StreamEvent::Element(el, _)) => {
                        if el.is("error", crate::element::NS_STREAM) {
                            let (c, t) = crate::wire::parse_stream_error(&el);
                            // A stream error our stanzas caused would come back on a new stream:
                            // resend only after those that say nothing about them.
                            resend = TRANSIENT_STREAM_ERRORS.contains(&c.as_str());
                            break Err(Failure::new(FailureKind::Stream, format!("peer sent stream error {c}: {t}")));
                        }
                        match acks.on_element(&mut conn, &el, Instant::now()) {
                            Ok(true) => {}
                            Ok(false) => {
                                if ctx.take_ping_answer(&el) {
                                    continue;
                                }
                                tracing::debug!(name = %el.name, %remote, "ignored element on outbound stream");
                            }
                            Err(f) => {
                                last_words = crate::wire::StreamError::new("undefined-condition", f.detail.clone()).to_bytes();
                                break Err(f);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break Err(e.failure()),
                },
                id = acks.ping_answered() => acks.on_ping_answer(&id, Instant::now()),
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    if let Err(f) = acks.check_timeout(Instant::now()) {
                        break Err(f);
                    }
                }
                _ = &mut idle, if acks.ledger.unacked() == 0 && drain.is_none() => break Ok("idle"),
                // RFC 6120 §13.7.2.3: do not keep using a stream whose peer certificate expired;
                // what is still queued goes over a new, freshly verified stream.
                _ = super::listener::until_expiry(&expiries) => {
                    break Err(Failure::new(FailureKind::CertChain, format!("the certificate of {remote} expired")));
                }
                _ = keepalive.tick() => {
                    conn.queue(b" ");
                    conn.shrink();
                }
                _ = shutdown.changed(), if drain.is_none() => {
                    // Deliver what is queued, ask for the last confirmations, then close.
                    drain = Some(tokio::time::Instant::now() + ctx.settings.shutdown_grace);
                    acks.request_now(&mut conn, Instant::now());
                }
                _ = sleep_until_opt(drain), if drain.is_some() => {
                    break Err(Failure::new(FailureKind::Shutdown, "fedgate is shutting down"));
                }
            }
        };
        // No new stanzas reach this link from here on; what is already queued is written
        // (clean close) or handed to a new link (broken stream).
        self.forget(&local, &remote, id);
        rx.close();
        let mut rest = Vec::new();
        while let Ok(st) = rx.try_recv() {
            self.dequeued(&queued, st.size);
            rest.push(st);
        }
        m.streams.with_label_values(&["out", "established"]).dec();
        ctx.status.stream_closed(&remote, true);
        if let Some(t) = not_after {
            ctx.status.peer_cert_remove(&remote, t);
        }
        let unacked = acks.take_unacked();
        match end {
            Ok(why) if unacked.is_empty() && rest.is_empty() => {
                tracing::info!(%local, %remote, why, "closing outbound s2s stream");
                m.streams_closed.with_label_values(&["out", "ok"]).inc();
                conn.close_with(&last_words).await;
            }
            end => {
                let f = end.err().unwrap_or_else(|| {
                    Failure::new(
                        FailureKind::Stream,
                        "the link closed with stanzas unconfirmed",
                    )
                });
                tracing::warn!(%local, %remote, failure = %f, unconfirmed = unacked.len(), requeued = rest.len(), "outbound s2s stream broke");
                m.streams_closed
                    .with_label_values(&["out", f.kind.as_str()])
                    .inc();
                if f.kind != FailureKind::Shutdown {
                    ctx.status.error(&remote, &f);
                    m.remote_failure(&remote, &f);
                }
                conn.close_with(&last_words).await;
                for st in unacked {
                    self.unconfirmed(&local, &remote, st, &f, resend);
                }
                for st in rest {
                    self.send(&local, &remote, st);
                }
            }
        }
    }

    /// A stanza written to a stream that broke before the peer confirmed it: sent again once
    /// (a duplicate if only the confirmation was lost), or bounced, as set for `remote`.
    fn unconfirmed(
        self: &Arc<Self>,
        local: &str,
        remote: &str,
        mut st: Stanza,
        f: &Failure,
        resend: bool,
    ) {
        let s = &self.ctx.settings;
        if resend
            && f.kind != FailureKind::Shutdown
            && st.resent == 0
            && s.unacked_for(remote) == Unacked::Resend
        {
            st.resent += 1;
            let link = if self.ctx.hosted.contains(remote) {
                "internal"
            } else {
                "s2s-out"
            };
            self.ctx.metrics.resent.with_label_values(&[link]).inc();
            return self.send(local, remote, st);
        }
        let why = Failure::new(
            f.kind,
            format!("{remote} did not confirm delivery before the stream ended ({f})"),
        );
        self.bounce_failed(remote, &st, &why);
    }

    /// Verify a dialback key with the authoritative server of `remote` (we are `local`, the
    /// receiving server). Returns (valid, explanation).
    pub async fn verify_key(
        self: &Arc<Self>,
        local: &str,
        remote: &str,
        stream_id: &str,
        key: &str,
    ) -> (bool, String) {
        let mode = Mode::Verify {
            stream_id: stream_id.to_owned(),
            key: key.to_owned(),
        };
        match connect(&self.ctx, local, remote, mode).await {
            Ok(Outcome::Verified(true)) => (true, "valid".into()),
            Ok(Outcome::Verified(false)) => (
                false,
                "the authoritative server says the key is invalid".into(),
            ),
            Ok(Outcome::Established { .. }) => (false, "unexpected outcome".into()),
            Err(f) => (false, format!("verification failed: {f}")),
        }
    }
}

/// Sleeps until `t`; never resolves for `None` (select branches guard on `is_some`).
pub(crate) async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
