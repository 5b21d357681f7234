//! The bridge's transactions: the RFC 3261 [`TransactionLayer`] plus, for each request the
//! bridge sends, what to do with its final response (or with Timer B/F, which stands for a
//! `408`).

use std::collections::HashMap;
use std::time::Instant;

use fedgate_s2s::element::Element;

use super::Keep;
use crate::msg::SipMessage;
use crate::txn::{
    ClientTxnId, RequestMatch, ServerTxnId, Timeout, TransactionLayer, TxnConfig, TxnError,
};

/// Why a request was sent: what to do with its final response.
#[derive(Debug, Clone)]
pub(crate) enum Ctx {
    /// Page-mode MESSAGE carrying `stanza`.
    Page {
        partner: String,
        stanza: Element,
        keep: Keep,
    },
    /// INVITE opening the session `key`, carrying the first message `stanza` (bounced if
    /// the INVITE fails).
    Invite {
        partner: String,
        key: (String, String),
        stanza: Element,
        keep: Keep,
    },
    /// In-dialog MESSAGE of session `key`.
    SessionMessage {
        partner: String,
        key: (String, String),
        stanza: Element,
        keep: Keep,
    },
    Bye {
        partner: String,
    },
    /// SUBSCRIBE of local user `key.0` to partner user `key.1`.
    Subscribe {
        partner: String,
        key: (String, String),
        kind: SubscribeKind,
    },
    /// NOTIFY to watcher `key` = (partner user, local user).
    Notify {
        partner: String,
        key: (String, String),
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeKind {
    New,
    Refresh,
    Unsubscribe,
    /// A one-off `Expires: 0` fetch for a probe.
    Fetch,
}

impl Ctx {
    /// The message this request carries, if any.
    pub fn stanza(&self) -> Option<&Element> {
        match self {
            Ctx::Page { stanza, .. }
            | Ctx::Invite { stanza, .. }
            | Ctx::SessionMessage { stanza, .. } => Some(stanza),
            _ => None,
        }
    }

    pub fn partner(&self) -> &str {
        match self {
            Ctx::Page { partner, .. }
            | Ctx::Invite { partner, .. }
            | Ctx::SessionMessage { partner, .. }
            | Ctx::Bye { partner }
            | Ctx::Subscribe { partner, .. }
            | Ctx::Notify { partner, .. } => partner,
        }
    }
}

/// The transaction layer plus what each client transaction was for.
pub(crate) struct Pending {
    layer: TransactionLayer,
    ctx: HashMap<ClientTxnId, Ctx>,
}

impl Pending {
    pub fn new(timeout: std::time::Duration) -> Self {
        Self {
            layer: TransactionLayer::new(TxnConfig {
                t1: timeout / 64,
                ..TxnConfig::default()
            }),
            ctx: HashMap::new(),
        }
    }

    /// Registers a request we send (not ACK).
    /// Registers a request to send; `Err` hands `ctx` back (nothing was registered).
    pub fn insert(
        &mut self,
        req: &SipMessage,
        ctx: Ctx,
        now: Instant,
    ) -> Result<(), Box<(TxnError, Ctx)>> {
        match self.layer.send_request(req, now) {
            Ok(id) => {
                self.ctx.insert(id, ctx);
                Ok(())
            }
            Err(e) => Err(Box::new((e, ctx))),
        }
    }

    /// A final response to one of our requests: what it was for, and the request. Provisional
    /// responses and strays give `None`.
    pub fn on_response(&mut self, resp: &SipMessage, now: Instant) -> Option<(Ctx, SipMessage)> {
        let m = self.layer.on_response(resp, now)?;
        if !m.is_final {
            return None;
        }
        let ctx = self.ctx.remove(&m.id)?;
        Some((ctx, m.request))
    }

    /// Client transactions whose Timer B/F fired, and server transactions done waiting.
    pub fn expired(&mut self, now: Instant) -> Vec<(Ctx, SipMessage)> {
        let mut out = Vec::new();
        for t in self.layer.poll(now) {
            if let Timeout::Client { id, request } = t
                && let Some(ctx) = self.ctx.remove(&id)
            {
                out.push((ctx, request));
            }
        }
        out
    }

    /// The client transaction whose request has the top-Via branch `branch`, ended without a
    /// response (the request could not be sent, or its connection closed).
    pub fn take_branch(&mut self, branch: &str) -> Option<(Ctx, SipMessage)> {
        let id = self.ctx.keys().find(|id| id.branch() == branch)?.clone();
        let ctx = self.ctx.remove(&id)?;
        let req = self.layer.abandon(&id)?;
        Some((ctx, req))
    }

    /// A request from a partner, transaction-wise.
    pub fn on_request(&mut self, req: &SipMessage, now: Instant) -> Result<RequestMatch, TxnError> {
        self.layer.on_request(req, now)
    }

    /// Records a response we send on a server transaction.
    pub fn respond(&mut self, id: &ServerTxnId, resp: &SipMessage, now: Instant) {
        if let Err(e) = self.layer.respond(id, resp, now) {
            tracing::debug!(error = %e, "sip: response outside its transaction");
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.layer.next_deadline()
    }

    pub fn len(&self) -> usize {
        self.ctx.len()
    }

    #[cfg(test)]
    pub fn client_count(&self) -> usize {
        self.layer.client_count()
    }

    #[cfg(test)]
    pub fn server_count(&self) -> usize {
        self.layer.server_count()
    }
}
