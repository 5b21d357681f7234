//! A minimal SIP-over-mutual-TLS endpoint for tests, the benchmark and labs: it plays a
//! partner's edge server (dials the gateway or accepts its connections) and sends and reads
//! whole SIP messages with the gateway's own codec. It has no transaction logic: the caller
//! says what to send and checks what comes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use fedgate_sip::msg::{Frame, Framer, Limits, SipMessage};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// Certificate, key and the CA to trust, as PEM files.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub roots: Arc<RootCertStore>,
}

impl PeerTls {
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Self> {
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("{}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        Ok(Self {
            certs,
            key: Arc::new(key),
            roots: Arc::new(roots),
        })
    }

    fn client_config(&self, with_cert: bool) -> anyhow::Result<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(fedgate_certs::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone());
        Ok(if with_cert {
            b.with_client_auth_cert(self.certs.clone(), self.key.clone_key())?
        } else {
            b.with_no_client_auth()
        })
    }

    fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            fedgate_certs::crypto_provider(),
        )
        .build()?;
        Ok(
            rustls::ServerConfig::builder_with_provider(fedgate_certs::crypto_provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(self.certs.clone(), self.key.clone_key())?,
        )
    }
}

/// One SIP/TLS connection.
pub struct SipPeer {
    stream: TlsStream<TcpStream>,
    framer: Framer,
    buf: Vec<u8>,
}

impl SipPeer {
    /// Dials `addr`, checking that the server's certificate names `server_name`, and presents
    /// the client certificate unless `with_cert` is false.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: &PeerTls,
        with_cert: bool,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let connector = TlsConnector::from(Arc::new(tls.client_config(with_cert)?));
        let name = ServerName::try_from(server_name.to_owned())?;
        let stream = connector.connect(name, tcp).await?;
        Ok(Self::new(TlsStream::Client(stream)))
    }

    /// Accepts one connection on `listener`, requiring a client certificate from the CA.
    pub async fn accept(listener: &TcpListener, tls: &PeerTls) -> anyhow::Result<Self> {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls.server_config()?));
        let stream = acceptor.accept(tcp).await?;
        Ok(Self::new(TlsStream::Server(stream)))
    }

    fn new(stream: TlsStream<TcpStream>) -> Self {
        Self {
            stream,
            framer: Framer::new(Limits::default()),
            buf: vec![0; 16 * 1024],
        }
    }

    /// The certificates the other side presented.
    pub fn peer_certs(&self) -> Vec<CertificateDer<'static>> {
        let certs = match &self.stream {
            TlsStream::Client(s) => s.get_ref().1.peer_certificates(),
            TlsStream::Server(s) => s.get_ref().1.peer_certificates(),
        };
        certs.map(<[_]>::to_vec).unwrap_or_default()
    }

    pub async fn send(&mut self, msg: &SipMessage) -> anyhow::Result<()> {
        self.send_raw(&msg.to_bytes()).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next message (keep-alives are skipped).
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<SipMessage> {
        tokio::time::timeout(timeout, self.recv_inner())
            .await
            .map_err(|_| anyhow!("no SIP message within {timeout:?}"))?
    }

    async fn recv_inner(&mut self) -> anyhow::Result<SipMessage> {
        loop {
            match self.framer.next()? {
                Some(Frame::Message(m)) => return Ok(m),
                Some(Frame::KeepAlive) => continue,
                None => {}
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.framer.push(&self.buf[..n]);
        }
    }

    /// Reads messages until one satisfies `pred`, answering nothing; the others are returned
    /// too, in order, so the caller can check them.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&SipMessage) -> bool,
    ) -> anyhow::Result<(SipMessage, Vec<SipMessage>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv(left).await?;
            if pred(&m) {
                return Ok((m, skipped));
            }
            skipped.push(m);
        }
    }

    /// Whether the other side closed the connection within `timeout` (reading and discarding).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, async {
                loop {
                    match self.stream.read(&mut self.buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await,
            Ok(())
        )
    }
}

/// The reading half of a split [`SipPeer`].
pub struct SipReader {
    rd: tokio::io::ReadHalf<TlsStream<TcpStream>>,
    framer: Framer,
    buf: Vec<u8>,
}

impl SipReader {
    /// The next message (keep-alives are skipped); `None` when the connection closed.
    pub async fn next(&mut self) -> anyhow::Result<Option<SipMessage>> {
        loop {
            match self.framer.next()? {
                Some(Frame::Message(m)) => return Ok(Some(m)),
                Some(Frame::KeepAlive) => continue,
                None => {}
            }
            let n = self.rd.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.framer.push(&self.buf[..n]);
        }
    }
}

/// The writing half of a split [`SipPeer`].
pub type SipWriter = tokio::io::WriteHalf<TlsStream<TcpStream>>;

impl SipPeer {
    /// Separate reading and writing (pipelined load).
    pub fn split(self) -> (SipReader, SipWriter) {
        let (rd, wr) = tokio::io::split(self.stream);
        (
            SipReader {
                rd,
                framer: self.framer,
                buf: self.buf,
            },
            wr,
        )
    }
}

/// A `200 OK` (or other) answer to `req` with a To tag.
pub fn answer(req: &SipMessage, code: u16, reason: &str, to_tag: &str) -> SipMessage {
    let mut r = SipMessage::response_to(req, code, reason);
    let has_tag = r
        .header("To")
        .and_then(|t| fedgate_sip::hdr::NameAddr::parse(t).ok())
        .is_some_and(|t| t.tag().is_some());
    if !has_tag {
        let _ = r.set_to_tag(to_tag);
    }
    r
}
