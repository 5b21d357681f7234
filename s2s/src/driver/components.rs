//! XEP-0114 component links: the listener, and the registry through which the router hands
//! each connected component the stanzas for its domain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::conn::Conn;
use super::context::{Origin, S2sContext, Stanza, new_stream_id};
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
        if link.queued.load(Ordering::Relaxed) + st.size > ctx.settings.max_queue_bytes {
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
                    tokio::spawn(async move {
                        if let Err(f) = handle(&ctx, &components, tcp, peer).await {
                            tracing::info!(%peer, failure = %f, "component stream ended");
                        }
                    });
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
    let mut registered: Option<(
        String,
        u64,
        mpsc::UnboundedReceiver<Stanza>,
        Arc<AtomicUsize>,
    )> = None;
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
                        registered = Some((domain, id, rx, q));
                    }
                    None => {
                        let e = StreamError::new(
                            "conflict",
                            format!("a component for {domain} is already connected"),
                        );
                        conn.close_with(&e.to_bytes()).await;
                        stop = Some(Err(Failure::new(FailureKind::Auth, e.text)));
                    }
                },
                Action::Stanza(el, size) => {
                    let domain = machine.domain().unwrap_or_default().to_owned();
                    ctx.sink().route(Stanza {
                        el,
                        size,
                        origin: Origin::Component(domain),
                    });
                }
                Action::Close(e) => {
                    conn.close_with(&e.to_bytes()).await;
                    stop = Some(Err(Failure::new(
                        FailureKind::Auth,
                        format!("{}: {}", e.condition, e.text),
                    )));
                }
                Action::PeerClosed => {
                    conn.close_with(b"</stream:stream>").await;
                    stop = Some(Ok(()));
                }
            }
        }
        if let Some(r) = stop {
            break r;
        }
        if let Err(e) = conn.flush().await {
            break Err(Failure::new(FailureKind::Connect, format!("write: {e}")));
        }
        tokio::select! {
            ev = conn.next_event() => match ev {
                Ok(ev) => machine.handle(ev),
                Err(e) => {
                    let f = e.failure();
                    if let super::conn::ReadError::Xml(x) = &e {
                        conn.close_with(&StreamError::new(x.condition(), f.to_string()).to_bytes()).await;
                    }
                    break Err(f);
                }
            },
            st = async {
                match registered.as_mut() {
                    Some(r) => r.2.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(st) = st else { break Ok(()) };
                let Some((_, _, rx, q)) = registered.as_mut() else { break Ok(()) };
                let mut size = st.size;
                st.el.write_to(conn.wbuf_mut());
                while conn.queued() < 64 * 1024 {
                    let Ok(st) = rx.try_recv() else { break };
                    size += st.size;
                    st.el.write_to(conn.wbuf_mut());
                }
                q.fetch_sub(size, Ordering::Relaxed);
                ctx.metrics.queued_bytes.sub(size as i64);
            }
            _ = &mut negotiation, if registered.is_none() => {
                conn.close_with(&StreamError::new("connection-timeout", "no handshake in time").to_bytes()).await;
                break Err(Failure::new(FailureKind::Timeout, "component did not complete the handshake"));
            }
            _ = shutdown.changed() => {
                conn.close_with(&StreamError::new("system-shutdown", "fedgate is shutting down").to_bytes()).await;
                break Ok(());
            }
        }
    };
    match registered {
        Some((domain, id, mut rx, q)) => {
            components.unregister(&domain, id);
            ctx.metrics
                .streams
                .with_label_values(&["component", "established"])
                .dec();
            rx.close();
            let f = Failure::new(
                FailureKind::Connect,
                format!("the local service for {domain} disconnected"),
            );
            while let Ok(st) = rx.try_recv() {
                q.fetch_sub(st.size, Ordering::Relaxed);
                ctx.metrics.queued_bytes.sub(st.size as i64);
                ctx.bounce(
                    &st,
                    ErrorType::Cancel,
                    "service-unavailable",
                    "component-gone",
                    &format!("fedgate: {f}"),
                );
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
