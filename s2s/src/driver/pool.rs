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

use super::connect::{Outcome, connect};
use super::context::{S2sContext, Stanza};
use crate::outbound::Mode;
use crate::wire::{ErrorType, Failure, FailureKind};

type Pair = (String, String);

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
    backoff: Mutex<HashMap<String, Backoff>>,
    next_id: AtomicU64,
}

impl Pool {
    pub fn new(ctx: Arc<S2sContext>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            links: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
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
            let link = links
                .entry(key)
                .or_insert_with(|| self.spawn_link(local, remote));
            let size = st.size;
            if link.queued.load(Ordering::Relaxed) + size > self.ctx.settings.max_queue_bytes {
                drop(links);
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
        let b = self.backoff.lock().expect("backoff lock");
        let e = b.get(remote)?;
        let left = e.until.checked_duration_since(Instant::now())?;
        let mut f = e.failure.clone();
        f.detail = format!("{} (next attempt in {} s)", f.detail, left.as_secs() + 1);
        Some(f)
    }

    fn record_failure(&self, remote: &str, f: &Failure) {
        let s = &self.ctx.settings;
        let mut b = self.backoff.lock().expect("backoff lock");
        let delay = b.get(remote).map_or(s.retry_backoff_min, |e| {
            (e.delay * 2).min(s.retry_backoff_max)
        });
        // Up to 25 % jitter so that many domains do not retry in step.
        let jitter = delay.mul_f64(rand::rng().random_range(0.0..0.25));
        b.insert(
            remote.to_owned(),
            Backoff {
                until: Instant::now() + delay + jitter,
                delay,
                failure: f.clone(),
            },
        );
    }

    fn spawn_link(self: &Arc<Self>, local: &str, remote: &str) -> Link {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        let (l, r, q) = (local.to_owned(), remote.to_owned(), queued.clone());
        tokio::spawn(async move { pool.run_link(id, l, r, rx, q).await });
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
        let m = &ctx.metrics;
        m.streams.with_label_values(&["out", "negotiating"]).inc();
        let mode = Mode::Auth {
            secret: ctx.secret.clone(),
        };
        let res = connect(&ctx, &local, &remote, mode).await;
        m.streams.with_label_values(&["out", "negotiating"]).dec();
        let (mut conn, method, not_after, mechanism, target) = match res {
            Ok(Outcome::Established {
                conn,
                method,
                not_after,
                mechanism,
                target,
            }) => (conn, method, not_after, mechanism, target),
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
                        .with_label_values(&["out", "failed", "none", f.kind.as_str()])
                        .inc();
                }
                m.streams_closed
                    .with_label_values(&["out", f.kind.as_str()])
                    .inc();
                tracing::warn!(%local, %remote, failure = %f, "outbound s2s failed");
                ctx.status.error(&remote, &f);
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
        self.backoff.lock().expect("backoff lock").remove(&remote);
        m.auth
            .with_label_values(&["out", method.as_str(), mechanism, "ok"])
            .inc();
        m.streams.with_label_values(&["out", "established"]).inc();
        ctx.status.stream_opened(&remote, true);
        ctx.status.authenticated(&remote, &local, method.as_str());
        tracing::info!(%local, %remote, %target, method = method.as_str(), mechanism, tls = ?conn.io.tls_version(), "outbound s2s established");
        conn.parser.set_limits(ctx.settings.limits);
        let label = m.domain_label(&remote);
        // A link to a hosted domain is the internal link to our own IM server.
        let path = if ctx.hosted.contains(&remote) {
            "to-internal"
        } else {
            "local-to-remote"
        };
        let routed = m.routed.with_label_values(&[path, &label]);

        let mut shutdown = ctx.shutdown_signal();
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
            tokio::select! {
                st = rx.recv() => {
                    let Some(st) = st else { break Ok("closed") };
                    let mut n = 1;
                    self.dequeued(&queued, st.size);
                    st.el.write_to(conn.wbuf_mut());
                    // Batch what is already waiting into one write.
                    while conn.queued() < 64 * 1024 {
                        let Ok(st) = rx.try_recv() else { break };
                        self.dequeued(&queued, st.size);
                        st.el.write_to(conn.wbuf_mut());
                        n += 1;
                    }
                    routed.inc_by(n);
                    if let Err(e) = conn.flush().await {
                        break Err(Failure::new(FailureKind::Connect, format!("write: {e}")));
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + ctx.settings.idle_timeout);
                    keepalive.reset();
                }
                ev = conn.next_event() => match ev {
                    Ok(crate::xml::StreamEvent::Close) => break Err(Failure::new(FailureKind::Stream, "peer closed the stream")),
                    Ok(crate::xml::StreamEvent::Element(el, _)) => {
                        if el.is("error", crate::element::NS_STREAM) {
                            let (c, t) = crate::wire::parse_stream_error(&el);
                            break Err(Failure::new(FailureKind::Stream, format!("peer sent stream error {c}: {t}")));
                        }
                        tracing::debug!(name = %el.name, %remote, "ignored element on outbound stream");
                    }
                    Ok(_) => {}
                    Err(e) => break Err(e.failure()),
                },
                _ = &mut idle => break Ok("idle"),
                // RFC 6120 §13.7.2.3: do not keep using a stream whose peer certificate expired;
                // what is still queued goes over a new, freshly verified stream.
                _ = super::listener::until_expiry(&expiries) => {
                    break Err(Failure::new(FailureKind::CertChain, format!("the certificate of {remote} expired")));
                }
                _ = keepalive.tick() => {
                    conn.queue(b" ");
                    if let Err(e) = conn.flush().await {
                        break Err(Failure::new(FailureKind::Connect, format!("keepalive: {e}")));
                    }
                    conn.shrink();
                }
                _ = shutdown.changed() => break Ok("shutdown"),
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
        match end {
            Ok(why) => {
                for st in &rest {
                    st.el.write_to(conn.wbuf_mut());
                }
                routed.inc_by(rest.len() as u64);
                tracing::info!(%local, %remote, why, "closing outbound s2s stream");
                m.streams_closed.with_label_values(&["out", "ok"]).inc();
                conn.close_with(b"</stream:stream>").await;
            }
            Err(f) => {
                tracing::warn!(%local, %remote, failure = %f, requeued = rest.len(), "outbound s2s stream broke");
                m.streams_closed
                    .with_label_values(&["out", f.kind.as_str()])
                    .inc();
                ctx.status.error(&remote, &f);
                conn.close_with(b"</stream:stream>").await;
                for st in rest {
                    self.send(&local, &remote, st);
                }
            }
        }
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
