//! The acknowledging half of a sending link, shared by outbound s2s streams and component
//! links: a [`Ledger`] of what was written, the XEP-0198 or XEP-0199 requests it asks for,
//! the answers, and the metrics. The link's own loop decides when to write and when to stop.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::conn::Conn;
use super::context::{PING_ID_PREFIX, S2sContext, Stanza};
use crate::ack::{Ledger, Mode, NS_PING, NS_SM, Request};
use crate::element::{Element, escape};
use crate::wire::{Failure, FailureKind};

pub struct AckedLink {
    ctx: Arc<S2sContext>,
    pub ledger: Ledger<Stanza>,
    /// Metrics label: s2s-out, internal, component.
    link: &'static str,
    /// (from, to) of our pings, and the domain their answers must come from.
    ping_from: String,
    ping_to: String,
    answer_from: String,
    pings_tx: mpsc::UnboundedSender<String>,
    pings_rx: mpsc::UnboundedReceiver<String>,
    pings: Vec<String>,
    /// Stanzas the peer sent on this stream (for its `<r/>`; bidi is not negotiated, so 0).
    received: u32,
}

impl AckedLink {
    /// `sm`: `<enable/>` is sent now (the peer offered XEP-0198), else pings confirm.
    pub fn new(
        ctx: &Arc<S2sContext>,
        conn: &mut Conn,
        link: &'static str,
        id: u64,
        sm: bool,
        (ping_from, ping_to): (&str, &str),
        answer_from: &str,
    ) -> Self {
        let mode = if !ctx.settings.acks.confirm {
            Mode::Off
        } else if sm {
            conn.queue(b"<enable xmlns='urn:xmpp:sm:3'/>");
            Mode::SmPending
        } else {
            ctx.metrics
                .ack_mode
                .with_label_values(&[link, "ping"])
                .inc();
            Mode::Ping
        };
        let (pings_tx, pings_rx) = mpsc::unbounded_channel();
        Self {
            ctx: ctx.clone(),
            ledger: Ledger::new(
                ctx.settings.acks.clone(),
                mode,
                format!("{PING_ID_PREFIX}{link}-{id}"),
            ),
            link,
            ping_from: ping_from.to_owned(),
            ping_to: ping_to.to_owned(),
            answer_from: answer_from.to_ascii_lowercase(),
            pings_tx,
            pings_rx,
            pings: Vec::new(),
            received: 0,
        }
    }

    fn mode_label(&self) -> &'static str {
        match self.ledger.mode() {
            Mode::Ping => "ping",
            Mode::Sm | Mode::SmPending => "sm",
            Mode::Off => "off",
        }
    }

    /// A stanza was written to `conn`'s buffer.
    pub fn wrote(&mut self, st: Stanza, now: Instant) {
        let size = st.size;
        if self.ledger.mode() == Mode::Off {
            return self.ledger.sent(st, size, now);
        }
        self.ledger.sent(st, size, now);
        self.ctx
            .metrics
            .unconfirmed
            .with_label_values(&[self.link])
            .inc();
    }

    /// Queue a request for confirmations if one is due.
    pub fn poll(&mut self, conn: &mut Conn, now: Instant) {
        if let Some(r) = self.ledger.poll_request(now) {
            self.write_request(conn, r);
        }
    }

    /// Queue a request now if anything is unconfirmed and not yet asked about.
    pub fn request_now(&mut self, conn: &mut Conn, now: Instant) {
        if let Some(r) = self.ledger.request_now(now) {
            self.write_request(conn, r);
        }
    }

    fn write_request(&mut self, conn: &mut Conn, r: Request) {
        match r {
            Request::Sm => conn.queue(b"<r xmlns='urn:xmpp:sm:3'/>"),
            Request::Ping(id) => {
                self.ctx
                    .expect_ping_answer(&id, &self.answer_from, &self.pings_tx);
                conn.queue(
                    format!(
                        "<iq type='get' id='{}' from='{}' to='{}'><ping xmlns='{NS_PING}'/></iq>",
                        escape(&id),
                        escape(&self.ping_from),
                        escape(&self.ping_to)
                    )
                    .as_bytes(),
                );
                self.pings.push(id);
            }
        }
    }

    fn confirmed(&mut self, items: Vec<Stanza>, rtt: Option<std::time::Duration>) {
        let m = &self.ctx.metrics;
        m.unconfirmed
            .with_label_values(&[self.link])
            .sub(items.len() as i64);
        m.confirmed
            .with_label_values(&[self.link])
            .inc_by(items.len() as u64);
        if let Some(rtt) = rtt {
            m.ack_rtt
                .with_label_values(&[self.link, self.mode_label()])
                .observe(rtt.as_secs_f64());
        }
        // Dropping them fires their receipts: the sender's link may acknowledge them now.
        drop(items);
    }

    /// The answer to one of our pings arrived (through the router or this stream).
    pub async fn ping_answered(&mut self) -> String {
        match self.pings_rx.recv().await {
            Some(id) => id,
            None => std::future::pending().await,
        }
    }

    pub fn on_ping_answer(&mut self, id: &str, now: Instant) {
        self.pings.retain(|p| p != id);
        if let Some((items, rtt)) = self.ledger.on_ping_answer(id, now) {
            self.confirmed(items, Some(rtt));
        }
    }

    /// A XEP-0198 element from the peer on this stream. `Ok(true)`: it was one and is handled.
    pub fn on_element(
        &mut self,
        conn: &mut Conn,
        el: &Element,
        now: Instant,
    ) -> Result<bool, Failure> {
        if el.ns != NS_SM {
            if el.ns == crate::element::NS_CONTENT {
                self.received = self.received.wrapping_add(1);
            }
            return Ok(false);
        }
        match el.name.as_str() {
            "enabled" => {
                self.ledger.sm_answered(true);
                self.ctx
                    .metrics
                    .ack_mode
                    .with_label_values(&[self.link, "sm"])
                    .inc();
            }
            "failed" => {
                tracing::info!(link = self.link, peer = %self.answer_from, "peer refused stream management; confirming with pings");
                self.ledger.sm_answered(false);
                self.ctx
                    .metrics
                    .ack_mode
                    .with_label_values(&[self.link, "ping"])
                    .inc();
            }
            "a" => {
                let h = el
                    .attr("h")
                    .and_then(|h| h.parse::<u32>().ok())
                    .ok_or_else(|| {
                        Failure::new(FailureKind::Stream, "XEP-0198 <a/> without a valid h")
                    })?;
                let (items, rtt) = self
                    .ledger
                    .on_sm_ack(h, now)
                    .map_err(|e| Failure::new(FailureKind::Stream, e.to_string()))?;
                self.confirmed(items, rtt);
            }
            "r" => conn.queue(format!("<a xmlns='{NS_SM}' h='{}'/>", self.received).as_bytes()),
            _ => {}
        }
        Ok(true)
    }

    /// When the link must look at its ledger again (a request by time, or a timeout).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.ledger
            .next_deadline()
            .map(tokio::time::Instant::from_std)
    }

    pub fn check_timeout(&self, now: Instant) -> Result<(), Failure> {
        self.ledger
            .check_timeout(now)
            .map_err(|e| Failure::new(FailureKind::Timeout, format!("{}: {e}", self.answer_from)))
    }

    /// The stream is gone: what it never confirmed, in order.
    pub fn take_unacked(&mut self) -> Vec<Stanza> {
        let v = self.ledger.take_unacked();
        self.ctx
            .metrics
            .unconfirmed
            .with_label_values(&[self.link])
            .sub(v.len() as i64);
        self.ctx.forget_pings(std::mem::take(&mut self.pings));
        v
    }
}

impl Drop for AckedLink {
    fn drop(&mut self) {
        let n = self.ledger.unacked() as i64;
        self.ctx
            .metrics
            .unconfirmed
            .with_label_values(&[self.link])
            .sub(n);
        self.ctx.forget_pings(std::mem::take(&mut self.pings));
    }
}
