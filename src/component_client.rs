//! A XEP-0114 component client: what a local IM service does to attach to fedgate. Used by
//! `fedgate demo`, `fedgate bench` and the tests; it is the same protocol slixmpp components
//! and Prosody/ejabberd component links speak.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use fedgate_s2s::element::Element;
use fedgate_s2s::wire::Header;
use fedgate_s2s::xml::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc, watch};

pub struct ComponentClient {
    pub domain: String,
    reader: ComponentReader,
    writer: ComponentWriter,
}

/// The receiving half of a component connection. A task reads the stream and answers the
/// gateway's XEP-0199 pings at once (as every XMPP entity must answer an iq, and as a real
/// service reads all the time), so callers never see them; [`ComponentReader::pause`] stops
/// reading altogether, as a hung service would.
pub struct ComponentReader {
    rx: mpsc::UnboundedReceiver<anyhow::Result<StreamEvent>>,
    pings: Arc<AtomicU64>,
    paused: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ComponentReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sending half of a component connection.
pub struct ComponentWriter {
    wr: Arc<Mutex<OwnedWriteHalf>>,
    buf: Vec<u8>,
}

/// The next event from the stream: reads only when the parser needs more bytes.
async fn next_event(
    rd: &mut OwnedReadHalf,
    parser: &mut StreamParser,
    buf: &mut Vec<u8>,
) -> anyhow::Result<StreamEvent> {
    loop {
        if let Some(ev) = parser.next_event()? {
            return Ok(ev);
        }
        buf.clear();
        buf.reserve(8192);
        let n = rd.read_buf(buf).await?;
        if n == 0 {
            bail!("component connection closed");
        }
        parser.feed(buf);
    }
}

impl ComponentClient {
    /// Connect and complete the handshake for `domain` with `secret`.
    pub async fn connect(addr: SocketAddr, domain: &str, secret: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to component port {addr}"))?;
        tcp.set_nodelay(true)?;
        let (mut rd, mut wr) = tcp.into_split();
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
        let mut parser = StreamParser::new(Limits::default());
        let mut buf = Vec::with_capacity(8192);
        let ten = Duration::from_secs(10);
        let first = tokio::time::timeout(ten, next_event(&mut rd, &mut parser, &mut buf))
            .await
            .context("no stream header within 10 s")??;
        let id = match first {
            StreamEvent::Open(h) => h.id.context("component stream header without id")?,
            other => bail!("expected a stream header, got {other:?}"),
        };
        let hs = fedgate_s2s::component::handshake(&id, secret);
        wr.write_all(format!("<handshake>{hs}</handshake>").as_bytes())
            .await?;
        match tokio::time::timeout(ten, next_event(&mut rd, &mut parser, &mut buf))
            .await
            .context("no handshake answer within 10 s")??
        {
            StreamEvent::Element(el, _) if el.name == "handshake" => {}
            StreamEvent::Element(el, _) => {
                let (c, t) = fedgate_s2s::wire::parse_stream_error(&el);
                bail!("component handshake refused: {c}: {t}")
            }
            other => bail!("component handshake: unexpected {other:?}"),
        }
        let wr = Arc::new(Mutex::new(wr));
        let (tx, rx) = mpsc::unbounded_channel();
        let pings = Arc::new(AtomicU64::new(0));
        let (paused, mut paused_rx) = watch::channel(false);
        let (pwr, ppings) = (wr.clone(), pings.clone());
        let task = tokio::spawn(async move {
            loop {
                if paused_rx.wait_for(|p| !*p).await.is_err() {
                    return;
                }
                let ev = tokio::select! {
                    ev = next_event(&mut rd, &mut parser, &mut buf) => ev,
                    _ = paused_rx.wait_for(|p| *p) => continue,
                };
                match ev {
                    Ok(StreamEvent::Element(el, _)) if is_gateway_ping(&el) => {
                        let pong = Element::new("iq", fedgate_s2s::element::NS_CONTENT)
                            .with_attr("type", "result")
                            .with_attr("id", el.attr("id").unwrap_or_default())
                            .with_attr("from", el.attr("to").unwrap_or_default())
                            .with_attr("to", el.attr("from").unwrap_or_default());
                        if pwr.lock().await.write_all(&pong.to_bytes()).await.is_err() {
                            return;
                        }
                        ppings.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(ev) => {
                        let end = matches!(ev, StreamEvent::Close);
                        if tx.send(Ok(ev)).is_err() || end {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Ok(Self {
            domain: domain.to_owned(),
            reader: ComponentReader {
                rx,
                pings,
                paused,
                task,
            },
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

    /// Stop reading the socket (the gateway's writes then back up), or read again.
    pub fn pause(&self, paused: bool) {
        self.reader.pause(paused);
    }

    pub async fn close(self) {
        let mut wr = self.writer.wr.lock().await;
        let _ = wr.write_all(b"</stream:stream>").await;
        let _ = wr.shutdown().await;
    }

    /// Pings of the gateway answered so far.
    pub fn pings_answered(&self) -> u64 {
        self.reader.pings.load(Ordering::Relaxed)
    }
}

impl ComponentReader {
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Element> {
        let ev = tokio::time::timeout(timeout, self.rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no stanza within {timeout:?}"))?;
        match ev {
            Some(Ok(StreamEvent::Element(el, _))) => Ok(el),
            Some(Ok(StreamEvent::Close)) | None => {
                bail!("the gateway closed the component stream")
            }
            Some(Ok(StreamEvent::Open(_))) => bail!("unexpected stream header"),
            Some(Err(e)) => Err(e),
        }
    }

    /// Stop reading the socket, or read again.
    pub fn pause(&self, paused: bool) {
        let _ = self.paused.send(paused);
    }
}

impl ComponentWriter {
    pub async fn send(&mut self, el: &Element) -> anyhow::Result<()> {
        self.buf.clear();
        el.write_to(&mut self.buf);
        self.wr.lock().await.write_all(&self.buf).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.wr.lock().await.write_all(bytes).await?;
        Ok(())
    }
}

/// A XEP-0199 ping of the gateway itself (its own ids), which the client answers by itself.
pub fn is_gateway_ping(el: &Element) -> bool {
    el.name == "iq"
        && el.attr("type") == Some("get")
        && el
            .attr("id")
            .is_some_and(|i| i.starts_with(fedgate_s2s::driver::context::PING_ID_PREFIX))
        && el.child("ping", fedgate_s2s::ack::NS_PING).is_some()
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
