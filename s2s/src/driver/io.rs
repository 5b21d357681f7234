//! The transport under a stream: plain TCP, or TLS as server or client.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Io {
    Plain(TcpStream),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The transport was moved out (into a TLS handshake that failed).
    Gone,
}

impl Io {
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::TlsServer(_) | Self::TlsClient(_))
    }

    /// The peer's certificate chain, if it sent one.
    pub fn peer_certs(&self) -> Vec<CertificateDer<'static>> {
        let certs = match self {
            Self::Plain(_) | Self::Gone => None,
            Self::TlsServer(t) => t.get_ref().1.peer_certificates(),
            Self::TlsClient(t) => t.get_ref().1.peer_certificates(),
        };
        certs.map(<[_]>::to_vec).unwrap_or_default()
    }

    pub fn tls_version(&self) -> Option<&'static str> {
        let v = match self {
            Self::Plain(_) | Self::Gone => None,
            Self::TlsServer(t) => t.get_ref().1.protocol_version(),
            Self::TlsClient(t) => t.get_ref().1.protocol_version(),
        };
        v.map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS (other)",
        })
    }
}

macro_rules! delegate {
    ($self:ident, $inner:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($inner) => {
                let $inner = Pin::new($inner);
                $e
            }
            Io::TlsServer($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $e
            }
            Io::TlsClient($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $e
            }
            Io::Gone => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "transport gone",
            ))),
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::TlsServer(s) => s.is_write_vectored(),
            Self::TlsClient(s) => s.is_write_vectored(),
            Self::Gone => false,
        }
    }
}
