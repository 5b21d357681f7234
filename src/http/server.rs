//! Serving one listener with hyper: plain TCP, TLS over TCP, or a Unix socket.
//!
//! One request per connection (no keep-alive: the answer carries `Connection: close`); the
//! request head (request line and headers) may not exceed [`MAX_HEADER_BYTES`] and must
//! arrive within [`HEADER_READ_TIMEOUT`]; a connection lives at most [`CONNECTION_TIMEOUT`];
//! at most [`MAX_CONNECTIONS`] are open at once per listener (more are closed at once).
//! Request bodies are never read. A request hyper cannot parse gets its `400 Bad Request`
//! (`431` for a head too large) and the connection closes; the listener goes on serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

/// Largest request head accepted (request line and headers): 8 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Time a client has to send the request head after connecting (after the TLS handshake,
/// which has the same limit): 5 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of a connection, answer included: 30 s.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once on one listener.
pub const MAX_CONNECTIONS: usize = 256;

/// The body of every answer.
pub type Body = Full<Bytes>;

/// What a listener accepts connections on.
pub enum Listener {
    Tcp(TcpListener),
    /// HTTPS: TLS over TCP.
    Tls(TcpListener, tokio_rustls::TlsAcceptor),
    /// A Unix socket, and its path (removed when serving ends).
    Unix(UnixListener, PathBuf),
}

/// The other end of a connection, for logs.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix socket"),
        }
    }
}

/// An answer with a body of content type `ctype`.
pub fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// A `text/plain` answer.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

/// Serves `listener` until `shutdown` changes, answering each request with `handler`. Open
/// connections are dropped when serving ends; a Unix socket's file is removed.
pub async fn serve<H>(
    listener: Listener,
    handler: Arc<H>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    H: Fn(&Request<Incoming>, &Peer) -> Response<Body> + Send + Sync + 'static,
{
    // Connection tasks live in the set: dropping it at the end aborts them.
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let (io, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "http: too many open connections; closed");
            continue;
        }
        let handler = handler.clone();
        let tls = match &listener {
            Listener::Tls(_, acceptor) => Some(acceptor.clone()),
            _ => None,
        };
        conns.spawn(async move {
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                match (io, tls) {
                    (Accepted::Tcp(tcp), Some(acceptor)) => {
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await
                        {
                            Ok(Ok(tls)) => serve_io(tls, handler, &peer).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "http: TLS handshake"),
                            Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                        }
                    }
                    (Accepted::Tcp(tcp), None) => serve_io(tcp, handler, &peer).await,
                    (Accepted::Unix(unix), _) => serve_io(unix, handler, &peer).await,
                }
            })
            .await;
            if served.is_err() {
                tracing::debug!("http: connection closed after {CONNECTION_TIMEOUT:?}");
            }
        });
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Accepted, Peer)> {
    match listener {
        Listener::Tcp(l) | Listener::Tls(l, _) => {
            let (s, a) = l.accept().await?;
            Ok((Accepted::Tcp(s), Peer::Tcp(a)))
        }
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok((Accepted::Unix(s), Peer::Unix))
        }
    }
}

async fn serve_io<I, H>(io: I, handler: Arc<H>, peer: &Peer)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(&Request<Incoming>, &Peer) -> Response<Body> + Send + Sync + 'static,
{
    let p = peer.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let answer = handler(&req, &p);
        async move { Ok::<_, Infallible>(answer) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http: connection ended with an error");
    }
}
