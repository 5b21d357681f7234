//! XEP-0114 component links: the listener, and the registry through which the router hands
//! each connected component the stanzas for its domain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use std::time::Instant;

use super::acked::AckedLink;
use super::conn::Conn;
use super::context::{Origin, S2sContext, Stanza, Unacked, new_stream_id};
use super::io::Io;
use crate::component::{Action, ComponentStream};
use crate::wire::{ErrorType, Failure, FailureKind, StreamError};

struct Link {
    id: u64,
    tx: mpsc::UnboundedSender<Stanza>,
    queued: Arc<AtomicUsize>,
}

/// Connected components by domain.
#[derive(Default)]
pub struct Components {
    links: Mutex<HashMap<String, Link>>,
    next_id: AtomicUsize,
}

/// Why a stanza could not be handed to a component.
pub enum DeliverError {
    NotConnected(Box<Stanza>),
    QueueFull(Box<Stanza>),
}

impl Components {
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .links
            .lock()
            .expect("components lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Queue a stanza for the component of `domain`.
    pub fn deliver(&self, ctx: &S2sContext, domain: &str, st: Stanza) -> Result<(), DeliverError> {
        let links = self.links.lock().expect("components lock");
        let Some(link) = links.get(domain) else {
            return Err(DeliverError::NotConnected(Box::new(st)));
        };
        if link.queued.load(Ordering::Relaxed) + st.size
            > super::context::queue_cap(&st, &ctx.settings)
        {
            return Err(DeliverError::QueueFull(Box::new(st)));
        }
        link.queued.fetch_add(st.size, Ordering::Relaxed);
        ctx.metrics.queued_bytes.add(st.size as i64);
        let size = st.size;
        link.tx.send(st).map_err(|e| {
            link.queued.fetch_sub(size, Ordering::Relaxed);
            ctx.metrics.queued_bytes.sub(size as i64);
            DeliverError::NotConnected(Box::new(e.0))
        })
    }

    fn register(
        &self,
        domain: &str,
    ) -> Option<(u64, mpsc::UnboundedReceiver<Stanza>, Arc<AtomicUsize>)> {
        let mut links = self.links.lock().expect("components lock");
        if links.contains_key(domain) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let queued = Arc::new(AtomicUsize::new(0));
        links.insert(
            domain.to_owned(),
            Link {
                id,
                tx,
                queued: queued.clone(),
            },
        );
        Some((id, rx, queued))
    }

    fn unregister(&self, domain: &str, id: u64) {
        let mut links = self.links.lock().expect("components lock");
        if links.get(domain).is_some_and(|l| l.id == id) {
            links.remove(domain);
        }
    }
}

/// Serve component connections on `listener` until shutdown.
pub async fn serve(ctx: Arc<S2sContext>, components: Arc<Components>, listener: TcpListener) {
    let mut shutdown = ctx.shutdown_signal();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let (ctx, components) = (ctx.clone(), components.clone());
                    let span = tracing::info_span!(
                        "component",
                        %peer,
                        domain = tracing::field::Empty,
                        link = tracing::field::Empty,
                    );
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            if let Err(f) = handle(&ctx, &components, tcp, peer).await {
                                tracing::info!(failure = %f, "component stream ended");
                            }
                        },
                        span,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "component accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn handle(
    ctx: &Arc<S2sContext>,
    components: &Components,
    tcp: TcpStream,
    _peer: SocketAddr,
) -> Result<(), Failure> {
    let _ = tcp.set_nodelay(true);
    let s = &ctx.settings;
    let mut conn = Conn::new(Io::Plain(tcp), s.limits);
    let mut machine = ComponentStream::new(ctx.component_secrets.clone(), new_stream_id());
    let mut shutdown = ctx.shutdown_signal();
    let mut drain: Option<tokio::time::Instant> = None;
    let mut outbound_done = false;
    let mut registered: Option<Registered> = None;
    ctx.metrics
        .streams
        .with_label_values(&["component", "negotiating"])
        .inc();
    let negotiation = tokio::time::sleep(s.negotiation_timeout);
    tokio::pin!(negotiation);
    let result = loop {
        let mut stop = None;
        for a in machine.take_actions() {
            match a {
                Action::Send(b) => conn.queue(&b),
                Action::Authenticated(domain) => match components.register(&domain) {
                    Some((id, rx, q)) => {
                        conn.queue(b"<handshake/>");
                        tracing::info!(%domain, "component connected");
                        ctx.metrics
                            .streams
                            .with_label_values(&["component", "negotiating"])
                            .dec();
                        ctx.metrics
                            .streams
                            .with_label_values(&["component", "established"])
                            .inc();
                        let span = tracing::Span::current();
                        span.record("domain", domain.as_str());
                        span.record("link", id);
                        // A component has no XEP-0198: pings on its stream confirm delivery.
                        let acks = AckedLink::new(
                            ctx,
                            &mut conn,
                            "component",
                            id,
                            false,
                            (&domain, &domain),
                            &domain,
                        );
                        registered = Some(Registered {
                            domain,
                            id,
                            rx,
                            queued: q,
                            acks,
                            _alive: ctx.component_guard(),
                        });
                    }
                    None => {
                        let e = StreamError::new(
                            "conflict",
                            format!("a component for {domain} is already connected"),
                        );
                        conn.close_with(&machine.closing_bytes(Some(&e))).await;
                        stop = Some(Err(Failure::new(FailureKind::Auth, e.text)));
                    }
                },
                Action::Stanza(el, size) => {
                    if ctx.take_ping_answer(&el) {
                        continue;
                    }
                    let domain = machine.domain().unwrap_or_default().to_owned();
                    let st = Stanza::new(el, size, Origin::Component(domain));
                    if drain.is_some() && !is_reply(&st.el) {
                        // Draining: no new work; the component hears why at once.
                        ctx.bounce(
                            &st,
                            ErrorType::Wait,
                            "service-unavailable",
                            "shutdown",
                            "fedgate: shutdown: fedgate is shutting down",
                        );
                        continue;
                    }
                    ctx.sink().route(st);
                }
                Action::Malformed {
                    el,
                    size,
                    local,
                    why,
                } => {
                    let st = Stanza::new(el, size, Origin::Component(local.clone()));
                    ctx.bounce_malformed(&st, &local, &why);
                }
                Action::Close(e) => {
                    // The machine queued its stream header before this error.
                    conn.close_with(&e.to_bytes()).await;
                    stop = Some(Err(Failure::new(
                        FailureKind::Auth,
                        format!("{}: {}", e.condition, e.text),
                    )));
                }
                Action::PeerClosed => {
                    conn.close_with(&machine.closing_bytes(None)).await;
                    stop = Some(Ok(()));
                }
            }
        }
        if let Some(r) = stop {
            break r;
        }
        if let Some(r) = registered.as_mut() {
            r.acks.poll(&mut conn, Instant::now());
            // Draining: done once the outbound streams are (their bounces may come here),
            // nothing is queued and the component confirmed everything.
            if outbound_done && r.rx.is_empty() && r.acks.ledger.unacked() == 0 {
                let e = StreamError::new("system-shutdown", "fedgate is shutting down");
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                break Ok(());
            }
        }
        if let Err(e) = conn.flush().await {
            break Err(Failure::new(FailureKind::Connect, format!("write: {e}")));
        }
        let room = registered
            .as_ref()
            .is_some_and(|r| r.acks.ledger.has_room());
        // Backpressure: while the queue to the component is past its cap (its own errors use
        // the reserve above it), read nothing more from it, so that what it sends cannot
        // bury the answers it is owed. Its ping answers are still read once we wait for them.
        let backlogged = room
            && registered
                .as_ref()
                .is_some_and(|r| r.queued.load(Ordering::Relaxed) > ctx.settings.max_queue_bytes);
        let deadline = registered.as_ref().and_then(|r| r.acks.deadline());
        let negotiating = registered.is_none();
        let (rx, acks) = match registered.as_mut() {
            Some(r) => (Some(&mut r.rx), Some(&mut r.acks)),
            None => (None, None),
        };
        tokio::select! {
            ev = conn.next_event(), if !backlogged => match ev {
                Ok(ev) => machine.handle(ev),
                Err(e) => {
                    let f = e.failure();
                    if let super::conn::ReadError::Xml(x) = &e {
                        let e = StreamError::new(x.condition(), f.to_string());
                        conn.close_with(&machine.closing_bytes(Some(&e))).await;
                    }
                    break Err(f);
                }
            },
            st = async {
                match rx {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            }, if room => {
                let Some(st) = st else { break Ok(()) };
                let Some(r) = registered.as_mut() else { break Ok(()) };
                let now = Instant::now();
                let mut size = st.size;
                st.el.write_to(conn.wbuf_mut());
                r.acks.wrote(st, now);
                while conn.queued() < 64 * 1024 && r.acks.ledger.has_room() {
                    let Ok(st) = r.rx.try_recv() else { break };
                    size += st.size;
                    st.el.write_to(conn.wbuf_mut());
                    r.acks.wrote(st, now);
                }
                r.queued.fetch_sub(size, Ordering::Relaxed);
                ctx.metrics.queued_bytes.sub(size as i64);
            }
            id = async {
                match acks {
                    Some(a) => a.ping_answered().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(r) = registered.as_mut() {
                    r.acks.on_ping_answer(&id, Instant::now());
                }
            }
            _ = super::pool::sleep_until_opt(deadline), if deadline.is_some() => {
                if let Some(Err(f)) = registered.as_ref().map(|r| r.acks.check_timeout(Instant::now())) {
                    let e = StreamError::new("connection-timeout", format!("the component did not answer our pings: {f}"));
                    conn.close_with(&machine.closing_bytes(Some(&e))).await;
                    break Err(f);
                }
            }
            _ = &mut negotiation, if negotiating => {
                let e = StreamError::new("connection-timeout", "no handshake in time");
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                break Err(Failure::new(FailureKind::Timeout, "component did not complete the handshake"));
            }
            _ = shutdown.changed(), if drain.is_none() => {
                if registered.is_none() {
                    let e = StreamError::new("system-shutdown", "fedgate is shutting down");
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                    break Ok(());
                }
                // Deliver what is queued, ask for the last confirmations, then close.
                drain = Some(tokio::time::Instant::now() + s.shutdown_grace);
                if let Some(r) = registered.as_mut() {
                    r.acks.request_now(&mut conn, Instant::now());
                }
            }
            _ = ctx.outbound_drained(), if drain.is_some() && !outbound_done => outbound_done = true,
            _ = super::pool::sleep_until_opt(drain.map(|d| d + std::time::Duration::from_millis(500))), if drain.is_some() => {
                let e = StreamError::new("system-shutdown", "fedgate is shutting down");
                conn.close_with(&machine.closing_bytes(Some(&e))).await;
                break Err(Failure::new(FailureKind::Shutdown, "fedgate is shutting down"));
            }
        }
    };
    match registered {
        Some(mut r) => {
            components.unregister(&r.domain, r.id);
            ctx.metrics
                .streams
                .with_label_values(&["component", "established"])
                .dec();
            r.rx.close();
            let domain = r.domain.clone();
            let f = match &result {
                Err(f) if f.kind == FailureKind::Shutdown => f.clone(),
                Err(f) => Failure::new(
                    FailureKind::Connect,
                    format!("the local service for {domain} disconnected ({f})"),
                ),
                Ok(()) => Failure::new(
                    FailureKind::Connect,
                    format!("the local service for {domain} disconnected"),
                ),
            };
            // Written but never confirmed: once more to a component that attached again
            // meanwhile (the setting allowing), else bounced.
            for mut st in r.acks.take_unacked() {
                if f.kind != FailureKind::Shutdown
                    && st.resent == 0
                    && ctx.settings.unacked_for(&domain) == Unacked::Resend
                {
                    st.resent += 1;
                    ctx.metrics.resent.with_label_values(&["component"]).inc();
                    match components.deliver(ctx, &domain, st) {
                        Ok(()) => continue,
                        Err(DeliverError::NotConnected(st) | DeliverError::QueueFull(st)) => {
                            bounce_gone(ctx, &st, &f);
                        }
                    }
                } else {
                    bounce_gone(ctx, &st, &f);
                }
            }
            while let Ok(st) = r.rx.try_recv() {
                r.queued.fetch_sub(st.size, Ordering::Relaxed);
                ctx.metrics.queued_bytes.sub(st.size as i64);
                bounce_gone(ctx, &st, &f);
            }
            tracing::info!(%domain, "component disconnected");
        }
        None => ctx
            .metrics
            .streams
            .with_label_values(&["component", "negotiating"])
            .dec(),
    }
    result
}

/// A component link that completed its handshake.
struct Registered {
    domain: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<Stanza>,
    queued: Arc<AtomicUsize>,
    acks: AckedLink,
    _alive: super::context::DrainGuard,
}

fn bounce_gone(ctx: &S2sContext, st: &Stanza, f: &Failure) {
    let (etype, reason) = if f.kind == FailureKind::Shutdown {
        (ErrorType::Wait, "shutdown")
    } else {
        (ErrorType::Cancel, "component-gone")
    };
    ctx.bounce(
        st,
        etype,
        "service-unavailable",
        reason,
        &format!("fedgate: {f}"),
    );
}

/// Answers (iq results, errors) still flow while draining: they complete work in flight.
fn is_reply(el: &crate::element::Element) -> bool {
    el.attr("type") == Some("error")
        || el.name == "iq" && matches!(el.attr("type"), Some("result" | "error"))
}
