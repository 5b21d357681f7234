//! In-process HTTPS server for tests (POSH documents, RFC 7711), the HTTPS sibling of
//! [`crate::testdns`].
//!
//! A [`TestHttps`] serves fixed routes `path → (status, body)` over TLS with one certificate
//! on a loopback address, with hyper (HTTP/1.1). Bodies carry a `Content-Length`, or come in
//! two chunks after [`TestHttps::set_chunked`], or break off after their first half (the
//! connection is dropped) after [`TestHttps::set_truncated`]; unknown paths get 404, other
//! methods than GET 405. Requests are counted ([`TestHttps::requests`]) and the SNI names
//! seen are kept ([`TestHttps::sni_seen`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fedgate_certs::{Identity, IdentityStore};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Time a client has to send its request after connecting (for the TLS handshake, then for
/// the request head).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    routes: Vec<(String, u16, String)>,
    requests: AtomicU64,
    chunked: AtomicBool,
    truncated: AtomicBool,
    sni: Mutex<Vec<String>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

/// A running test HTTPS server. Dropping it stops it (its tasks are aborted).
pub struct TestHttps {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TestHttps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHttps")
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Drop for TestHttps {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl TestHttps {
    /// Serve `routes` (`(path, status, body)`; the path is compared with the request target
    /// exactly, query included) over TLS with the certificate chain `cert_pem` (leaf first)
    /// and key `key_pem` at `bind` (port 0 for an ephemeral port; read it back with
    /// [`addr`](Self::addr)). Only loopback addresses are accepted.
    pub async fn start(
        bind: SocketAddr,
        cert_pem: &str,
        key_pem: &str,
        routes: Vec<(String, u16, String)>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bind.ip().is_loopback(),
            "test HTTPS must bind a loopback address, not {bind}"
        );
        let leaf = rustls_pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .context("test HTTPS: no certificate in the PEM")?
            .context("test HTTPS: certificate PEM")?;
        let leaf: rustls_pki_types::CertificateDer<'static> = leaf;
        // The identity's domain only labels log lines here: use the first DNS-ID if any.
        let label = fedgate_certs::cert_names(&leaf)
            .into_iter()
            .find_map(|n| n.strip_prefix("DNS:").map(str::to_owned))
            .unwrap_or_else(|| "testhttps".to_owned());
        let identity = Identity::from_pem(&label, cert_pem, key_pem)
            .context("test HTTPS: certificate and key")?;
        let mut store = IdentityStore::new();
        store.insert(identity);
        let acceptor = tokio_rustls::TlsAcceptor::from(fedgate_certs::server_config(
            Arc::new(store),
            vec![b"http/1.1".to_vec()],
        ));
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("test HTTPS: bind {bind}"))?;
        let addr = listener.local_addr().context("test HTTPS: local address")?;
        let shared = Arc::new(Shared {
            routes,
            ..Shared::default()
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        tracing::debug!(%addr, "test HTTPS listening");
        Ok(Self {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of HTTP requests received so far (whatever their path).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answer with `Transfer-Encoding: chunked` (two chunks) instead of `Content-Length`.
    pub fn set_chunked(&self, on: bool) {
        self.shared.chunked.store(on, Ordering::SeqCst);
    }

    /// Send half of each body (chunked), then drop the connection.
    pub fn set_truncated(&self, on: bool) {
        self.shared.truncated.store(on, Ordering::SeqCst);
    }

    /// The SNI names clients sent, in order (`""` when a client sent none).
    pub fn sni_seen(&self) -> Vec<String> {
        self.shared
            .sni
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop serving: the listener and open connections are closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    // Connection tasks live in the set: aborting this task drops the set, which aborts them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    conns.spawn(serve(tcp, acceptor.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "test HTTPS accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let tls = match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(error = %e, "test HTTPS handshake"),
        Err(_) => return tracing::debug!("test HTTPS handshake timed out"),
    };
    let sni = tls.get_ref().1.server_name().unwrap_or_default().to_owned();
    shared
        .sni
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(sni);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let answer = answer(&shared, &req);
        async move { Ok::<_, std::convert::Infallible>(answer) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "test HTTPS connection");
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    let (status, body) = if req.method() != Method::GET {
        (405, "method not allowed\n".to_owned())
    } else {
        shared
            .routes
            .iter()
            .find(|(path, _, _)| path == target)
            .map(|(_, s, b)| (*s, b.clone()))
            .unwrap_or((404, "not found\n".to_owned()))
    };
    let body = Bytes::from(body);
    let (a, b) = (body.slice(..body.len() / 2), body.slice(body.len() / 2..));
    let body: Body = if shared.truncated.load(Ordering::SeqCst) {
        // The head and the first half go out; then an error from the body makes hyper drop
        // the connection before the last chunk.
        use futures_util::StreamExt as _;
        let first = futures_util::stream::once(async move { Ok(Frame::data(a)) });
        let cut = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(std::io::Error::other("test HTTPS: body cut off"))
        });
        BodyExt::boxed(StreamBody::new(first.chain(cut)))
    } else if shared.chunked.load(Ordering::SeqCst) {
        // No length known: hyper sends `Transfer-Encoding: chunked`, a chunk per frame.
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = [a, b]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| Ok(Frame::data(p)))
            .collect();
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    } else {
        BodyExt::boxed(Full::new(body).map_err(|never| match never {}))
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
