//! In-process HTTPS server for tests (POSH documents, RFC 7711), the HTTPS sibling of
//! [`crate::testdns`].
//!
//! A [`TestHttps`] serves fixed routes `path → (status, body)` over TLS with one certificate
//! on a loopback address. Each connection carries one `GET` (HTTP/1.1, answered with
//! `Connection: close` and a `Content-Length`, or chunked after
//! [`TestHttps::set_chunked`]); unknown paths get 404, other methods 405. Requests are
//! counted ([`TestHttps::requests`]) and the SNI names seen are kept ([`TestHttps::sni_seen`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fedgate_certs::{Identity, IdentityStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Largest request head read (bytes).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    routes: Vec<(String, u16, String)>,
    requests: AtomicU64,
    chunked: AtomicBool,
    sni: Mutex<Vec<String>>,
}

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
    let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut tls = acceptor.accept(tcp).await?;
        let sni = tls.get_ref().1.server_name().unwrap_or_default().to_owned();
        shared
            .sni
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sni);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut chunk).await?;
            if n == 0 || buf.len() + n > MAX_REQUEST {
                return Ok::<_, std::io::Error>(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let head = String::from_utf8_lossy(&buf);
        let mut parts = head.lines().next().unwrap_or_default().split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = if method != "GET" {
            (405, "method not allowed\n".to_owned())
        } else {
            shared
                .routes
                .iter()
                .find(|(path, _, _)| path == target)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, "not found\n".to_owned()))
        };
        let response = if shared.chunked.load(Ordering::SeqCst) {
            let (a, b) = body.as_bytes().split_at(body.len() / 2);
            let mut r = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                reason(status)
            )
            .into_bytes();
            for part in [a, b] {
                if !part.is_empty() {
                    r.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    r.extend_from_slice(part);
                    r.extend_from_slice(b"\r\n");
                }
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        } else {
            let mut r = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reason(status),
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body.as_bytes());
            r
        };
        tls.write_all(&response).await?;
        tls.shutdown().await?;
        Ok(())
    })
    .await;
    if let Ok(Err(e)) = result {
        tracing::debug!(error = %e, "test HTTPS connection");
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Status",
    }
}
