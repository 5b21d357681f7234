//! One stream's transport plus its parser: pull parsed events, queue and flush bytes, upgrade to
//! TLS in place.

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::Io;
use super::linger::{self, Closed, Linger};
use crate::wire::{Failure, FailureKind};
use crate::xml::{Limits, StreamEvent, StreamParser, XmlError};

/// Smallest and largest read: idle streams keep a small pending read (their buffers are
/// freed), busy ones grow it by doubling while reads fill it.
const READ_MIN: usize = 256;
const READ_MAX: usize = 64 * 1024;
/// A write buffer that held less than this is freed after the flush (idle streams hold none).
const WBUF_KEEP: usize = 1024;

pub struct Conn {
    pub io: Io,
    pub parser: StreamParser,
    /// Size of the next read (adaptive, between READ_MIN and READ_MAX).
    read_hint: usize,
    wbuf: Vec<u8>,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    Xml(XmlError),
    Eof,
    Io(std::io::Error),
}

impl ReadError {
    pub fn failure(&self) -> Failure {
        match self {
            Self::Xml(e) => Failure::new(
                if matches!(
                    e,
                    XmlError::StanzaTooBig(_) | XmlError::TooDeep(_) | XmlError::TooManyAttrs(_)
                ) {
                    FailureKind::Limit
                } else {
                    FailureKind::Stream
                },
                e.to_string(),
            ),
            Self::Eof => Failure::new(FailureKind::Stream, "connection closed by peer"),
            Self::Io(e) => Failure::new(FailureKind::Connect, format!("read: {e}")),
        }
    }
}

impl Conn {
    pub fn new(io: Io, limits: Limits) -> Self {
        Self {
            io,
            parser: StreamParser::new(limits),
            read_hint: READ_MIN,
            wbuf: Vec::new(),
        }
    }

    /// The next parsed event; reads from the socket only when the parser needs more bytes.
    /// Cancel-safe: bytes reach the parser only when a read completes. Reads go straight into
    /// the parser's buffer.
    pub async fn next_event(&mut self) -> Result<StreamEvent, ReadError> {
        loop {
            if let Some(ev) = self.parser.next_event().map_err(ReadError::Xml)? {
                return Ok(ev);
            }
            let want = self.read_hint;
            if want == READ_MIN {
                self.parser.shrink();
            }
            let buf = self.parser.read_buf(want);
            let spare = buf.capacity() - buf.len();
            let n = self.io.read_buf(buf).await.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            self.parser.commit_read(n);
            self.read_hint = if n >= spare {
                (want * 2).min(READ_MAX)
            } else if n < want / 4 {
                (want / 2).max(READ_MIN)
            } else {
                want
            };
        }
    }

    /// Give back idle memory (between bursts).
    pub fn shrink(&mut self) {
        self.parser.shrink();
        self.read_hint = READ_MIN;
        if self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Drop bytes queued but not yet written (a refusal replaces what was about to be said).
    pub fn discard_queued(&mut self) {
        self.wbuf.clear();
    }

    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    pub fn wbuf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            if self.wbuf.capacity() > 64 * 1024 || self.wbuf.len() < WBUF_KEEP {
                self.wbuf = Vec::new();
            } else {
                self.wbuf.clear();
            }
        }
        self.io.flush().await
    }

    /// Write what is queued plus `bytes`, then close the transport the one way every stream
    /// is closed ([`linger::close`]: shut down our write side, drain what the peer still
    /// sends, bounded), so that the peer reads our last words instead of a reset.
    pub async fn close_with(&mut self, bytes: &[u8]) -> Closed {
        self.queue(bytes);
        let last = std::mem::take(&mut self.wbuf);
        let how = linger::close(&mut self.io, &last, Linger::STREAM).await;
        tracing::debug!(?how, "stream transport closed");
        how
    }

    /// STARTTLS as the receiving server: the transport becomes TLS in place.
    pub async fn accept_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> Result<(), Failure> {
        self.flush()
            .await
            .map_err(|e| Failure::new(FailureKind::Connect, format!("write: {e}")))?;
        let io = std::mem::replace(&mut self.io, Io::Gone);
        let Io::Plain(tcp) = io else {
            return Err(Failure::new(FailureKind::Tls, "TLS already active"));
        };
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| Failure::new(FailureKind::Tls, format!("handshake: {e}")))?;
        self.io = Io::TlsServer(Box::new(tls));
        self.parser.reset();
        Ok(())
    }

    /// STARTTLS as the initiating server.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        sni: &str,
    ) -> Result<(), Failure> {
        self.flush()
            .await
            .map_err(|e| Failure::new(FailureKind::Connect, format!("write: {e}")))?;
        // SNI is an ASCII host name: the A-label form of the (canonical, U-label) domain.
        let sni = fedgate_jid::domain_to_ascii(sni).unwrap_or(std::borrow::Cow::Borrowed(sni));
        let name = ServerName::try_from(sni.clone().into_owned()).map_err(|_| {
            Failure::new(
                FailureKind::Tls,
                format!("{sni} is not a valid TLS server name"),
            )
        })?;
        let io = std::mem::replace(&mut self.io, Io::Gone);
        let Io::Plain(tcp) = io else {
            return Err(Failure::new(FailureKind::Tls, "TLS already active"));
        };
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::new(FailureKind::Tls, format!("handshake: {e}")))?;
        self.io = Io::TlsClient(Box::new(tls));
        self.parser.reset();
        Ok(())
    }
}
