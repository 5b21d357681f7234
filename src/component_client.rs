//! A XEP-0114 component client: what a local IM service does to attach to fedgate. Used by
//! `fedgate demo`, `fedgate bench` and the tests; it is the same protocol slixmpp components
//! and Prosody/ejabberd component links speak.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fedgate_s2s::element::Element;
use fedgate_s2s::wire::Header;
use fedgate_s2s::xml::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub struct ComponentClient {
    pub domain: String,
    reader: ComponentReader,
    writer: ComponentWriter,
}

/// The receiving half of a component connection.
pub struct ComponentReader {
    rd: OwnedReadHalf,
    parser: StreamParser,
    buf: Vec<u8>,
}

/// The sending half of a component connection.
pub struct ComponentWriter {
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl ComponentClient {
    /// Connect and complete the handshake for `domain` with `secret`.
    pub async fn connect(addr: SocketAddr, domain: &str, secret: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to component port {addr}"))?;
        tcp.set_nodelay(true)?;
        let (rd, mut wr) = tcp.into_split();
        wr.write_all(
            &Header {
                content_ns: fedgate_s2s::element::NS_COMPONENT,
                from: None,
                to: Some(domain),
                id: None,
                version: false,
                dialback: false,
            }
            .to_bytes(),
        )
        .await?;
        let mut reader = ComponentReader {
            rd,
            parser: StreamParser::new(Limits::default()),
            buf: Vec::with_capacity(8192),
        };
        let id = match reader.next_event(Duration::from_secs(10)).await? {
            StreamEvent::Open(h) => h.id.context("component stream header without id")?,
            other => bail!("expected a stream header, got {other:?}"),
        };
        let hs = fedgate_s2s::component::handshake(&id, secret);
        wr.write_all(format!("<handshake>{hs}</handshake>").as_bytes())
            .await?;
        match reader.next_event(Duration::from_secs(10)).await? {
            StreamEvent::Element(el, _) if el.name == "handshake" => {}
            StreamEvent::Element(el, _) => {
                let (c, t) = fedgate_s2s::wire::parse_stream_error(&el);
                bail!("component handshake refused: {c}: {t}")
            }
            other => bail!("component handshake: unexpected {other:?}"),
        }
        Ok(Self {
            domain: domain.to_owned(),
            reader,
            writer: ComponentWriter {
                wr,
                buf: Vec::with_capacity(8192),
            },
        })
    }

    pub async fn send(&mut self, el: &Element) -> anyhow::Result<()> {
        self.writer.send(el).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.send_raw(bytes).await
    }

    /// The next stanza, or an error after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Element> {
        self.reader.recv(timeout).await
    }

    /// Wait for a stanza that satisfies `pred`, skipping others.
    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Element) -> bool,
    ) -> anyhow::Result<Element> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let el = self.recv(left).await?;
            if pred(&el) {
                return Ok(el);
            }
        }
    }

    pub fn split(self) -> (ComponentReader, ComponentWriter) {
        (self.reader, self.writer)
    }

    pub async fn close(mut self) {
        let _ = self.writer.wr.write_all(b"</stream:stream>").await;
        let _ = self.writer.wr.shutdown().await;
    }
}

impl ComponentReader {
    async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<StreamEvent> {
        let fut = async {
            loop {
                if let Some(ev) = self.parser.next_event()? {
                    return Ok::<_, anyhow::Error>(ev);
                }
                self.buf.clear();
                self.buf.reserve(8192);
                let n = self.rd.read_buf(&mut self.buf).await?;
                if n == 0 {
                    bail!("component connection closed");
                }
                self.parser.feed(&self.buf);
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow::anyhow!("no stanza within {timeout:?}"))?
    }

    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Element> {
        match self.next_event(timeout).await? {
            StreamEvent::Element(el, _) => Ok(el),
            StreamEvent::Close => bail!("the gateway closed the component stream"),
            StreamEvent::Open(_) => bail!("unexpected stream header"),
        }
    }
}

impl ComponentWriter {
    pub async fn send(&mut self, el: &Element) -> anyhow::Result<()> {
        self.buf.clear();
        el.write_to(&mut self.buf);
        self.wr.write_all(&self.buf).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.wr.write_all(bytes).await?;
        Ok(())
    }
}

/// A chat message stanza.
pub fn message(from: &str, to: &str, id: &str, body: &str) -> Element {
    use fedgate_s2s::element::NS_CONTENT;
    Element::new("message", NS_CONTENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_attr("type", "chat")
        .with_child(Element::new("body", NS_CONTENT).with_text(body))
}

/// A presence stanza (`ptype` empty for available).
pub fn presence(from: &str, to: &str, ptype: &str) -> Element {
    let mut p = Element::new("presence", fedgate_s2s::element::NS_CONTENT)
        .with_attr("from", from)
        .with_attr("to", to);
    if !ptype.is_empty() {
        p.set_attr("type", ptype);
    }
    p
}

/// Whether `el` is a presence of type `ptype` (empty for available), as [`presence`] builds it.
pub fn is_presence(el: &Element, ptype: &str) -> bool {
    el.name == "presence" && el.attr("type").unwrap_or("") == ptype
}

/// The body text of a message, if any.
pub fn body(el: &Element) -> Option<String> {
    el.child("body", fedgate_s2s::element::NS_CONTENT)
        .map(Element::text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_presence_matches_what_presence_builds() {
        let avail = presence("a@x.test", "b@y.test", "");
        let sub = presence("a@x.test", "b@y.test", "subscribe");
        assert!(is_presence(&avail, "") && !is_presence(&avail, "subscribe"));
        assert!(is_presence(&sub, "subscribe") && !is_presence(&sub, ""));
        assert!(!is_presence(
            &message("a@x.test", "b@y.test", "1", "hi"),
            ""
        ));
    }
}
