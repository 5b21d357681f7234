//! The HTTP client of `fedgate directory`: one request on its own connection, over TCP, TLS
//! (checked against given CA certificates) or a Unix socket, on hyper.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};

/// Time for connecting (TLS included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the whole exchange, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Where a request goes.
#[derive(Clone)]
pub struct Endpoint {
    transport: Transport,
    /// HTTPS: the client configuration and the name the server's certificate must carry.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The `Host` header.
    host: String,
    /// As given, for messages.
    label: String,
}

#[derive(Clone)]
enum Transport {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.label)
            .field("tls", &self.tls.is_some())
            .field("host", &self.host)
            .finish()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP with {addr}: {detail}")]
    Http { addr: String, detail: String },
    #[error("{addr}: no answer within {} s", .after.as_secs())]
    Timeout { addr: String, after: Duration },
}

impl Endpoint {
    /// `addr` is `host:port` or `unix:<path>`. With `ca` (PEM CA certificates) the request is
    /// HTTPS and the server's certificate must chain to them and name `host`. `host` is sent
    /// as `Host` (default: `addr`'s host and port; `localhost` for a Unix socket).
    pub fn parse(addr: &str, ca: Option<&Path>, host: Option<&str>) -> Result<Self, ClientError> {
        let setup = |m: String| ClientError::Setup(m);
        let (transport, default_host) = match addr.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => (Transport::Unix(PathBuf::from(p)), "localhost".to_owned()),
            Some(_) => return Err(setup("unix: needs a socket path".into())),
            None => {
                if super::admin::split_host(addr).is_none_or(|(_, port)| port.is_none()) {
                    return Err(setup(format!(
                        "'{addr}' is neither host:port nor unix:<path>"
                    )));
                }
                (Transport::Tcp(addr.to_owned()), addr.to_owned())
            }
        };
        let host = host.map_or(default_host, str::to_owned);
        let Some((name, _)) = super::admin::split_host(&host) else {
            return Err(setup(format!("'{host}' is not a host name")));
        };
        let tls = match ca {
            None => None,
            Some(ca) => {
                if matches!(transport, Transport::Unix(_)) {
                    return Err(setup("TLS is not used over a Unix socket".into()));
                }
                let mut roots = rustls::RootCertStore::empty();
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
                    .map_err(|e| setup(format!("{}: {e}", ca.display())))?;
                for c in certs {
                    let c = c.map_err(|e| setup(format!("{}: {e}", ca.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| setup(format!("{}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(setup(format!("{}: no certificate", ca.display())));
                }
                let mut config =
                    rustls::ClientConfig::builder_with_provider(fedgate_certs::crypto_provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| setup(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let bare = name.trim_start_matches('[').trim_end_matches(']');
                let server_name = ServerName::try_from(bare.to_owned())
                    .map_err(|e| setup(format!("'{name}': {e}")))?;
                Some((Arc::new(config), server_name))
            }
        };
        Ok(Self {
            transport,
            tls,
            host,
            label: addr.to_owned(),
        })
    }

    /// One request without a body, with `Authorization: Bearer <token>` when given: the
    /// answer's status and body (lossy UTF-8).
    pub async fn request(
        &self,
        method: Method,
        target: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, String), ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, &self.host)
            .header(USER_AGENT, "fedgate-directory");
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Setup(format!("bad request {target:?}: {e}")))?;
        let addr = self.label.clone();
        match tokio::time::timeout(REQUEST_TIMEOUT, self.connect_and_send(req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr,
                after: REQUEST_TIMEOUT,
            }),
        }
    }

    async fn connect_and_send(
        &self,
        req: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, String), ClientError> {
        let addr = self.label.clone();
        let connect_error = |source| ClientError::Connect {
            addr: addr.clone(),
            source,
        };
        match &self.transport {
            Transport::Unix(path) => {
                let s = in_time(
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await,
                )
                .map_err(connect_error)?;
                exchange(s, req, &addr).await
            }
            Transport::Tcp(a) => {
                let tcp = in_time(
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a)).await,
                )
                .map_err(connect_error)?;
                match &self.tls {
                    None => exchange(tcp, req, &addr).await,
                    Some((config, name)) => {
                        let tls = in_time(
                            tokio::time::timeout(
                                CONNECT_TIMEOUT,
                                tokio_rustls::TlsConnector::from(config.clone())
                                    .connect(name.clone(), tcp),
                            )
                            .await,
                        )
                        .map_err(|source| ClientError::Tls {
                            addr: addr.clone(),
                            source,
                        })?;
                        exchange(tls, req, &addr).await
                    }
                }
            }
        }
    }
}

/// A connection step's result, or a `TimedOut` error after [`CONNECT_TIMEOUT`].
fn in_time<T>(r: Result<std::io::Result<T>, tokio::time::error::Elapsed>) -> std::io::Result<T> {
    r.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        ))
    })
}

/// Sends `req` on `io` and reads the whole answer.
async fn exchange<I>(
    io: I,
    req: Request<Empty<Bytes>>,
    addr: &str,
) -> Result<(StatusCode, String), ClientError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: &dyn std::error::Error| ClientError::Http {
        addr: addr.to_owned(),
        detail: error_chain(e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(&e))?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| http(&*e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let mut conn = std::pin::pin!(conn);
    let mut answer = std::pin::pin!(answer);
    // The connection is driven beside the exchange. When it ends first, what it received is
    // still read from the answer, which says whether it is whole (then a connection error
    // after it does not matter) or why not.
    tokio::select! {
        r = &mut answer => r,
        _ = &mut conn => answer.await,
    }
}

/// An error and its causes, `: `-separated (hyper's own messages are terse).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
