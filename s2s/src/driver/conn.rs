//! One stream's transport plus its parser: pull parsed events, queue and flush bytes, upgrade to
//! TLS in place.

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::Io;
use crate::wire::{Failure, FailureKind};
use crate::xml::{Limits, StreamEvent, StreamParser, XmlError};

const READ_CHUNK: usize = 4096;

pub struct Conn {
    pub io: Io,
    pub parser: StreamParser,
    rbuf: Vec<u8>,
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
            rbuf: Vec::new(),
            wbuf: Vec::new(),
        }
    }

    /// The next parsed event; reads from the socket only when the parser needs more bytes.
    /// Cancel-safe: bytes are fed to the parser only after a read completes.
    pub async fn next_event(&mut self) -> Result<StreamEvent, ReadError> {
        loop {
            if let Some(ev) = self.parser.next_event().map_err(ReadError::Xml)? {
                return Ok(ev);
            }
            self.rbuf.reserve(READ_CHUNK);
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            self.parser.feed(&self.rbuf);
            self.rbuf.clear();
            if self.rbuf.capacity() > 4 * READ_CHUNK {
                self.rbuf = Vec::new();
            }
        }
    }

    /// Give back idle memory (between bursts).
    pub fn shrink(&mut self) {
        self.rbuf = Vec::new();
        if self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
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
            self.wbuf.clear();
            if self.wbuf.capacity() > 64 * 1024 {
                self.wbuf = Vec::new();
            }
        }
        self.io.flush().await
    }

    /// Write what is queued plus `bytes`, then close the transport.
    pub async fn close_with(&mut self, bytes: &[u8]) {
        self.queue(bytes);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
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
        let name = ServerName::try_from(sni.to_owned()).map_err(|_| {
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
