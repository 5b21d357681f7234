//! The router: one routing table for every stanza. Hosted domains go to their component;
//! anything else from a hosted domain goes to the s2s pool (one stream per domain pair).
//! Whatever cannot be delivered is answered with an XMPP error (or, for errors and presence,
//! counted as dropped).

use std::sync::Arc;

use fedgate_s2s::driver::components::DeliverError;
use fedgate_s2s::driver::{Components, Origin, Pool, S2sContext, Stanza, StanzaSink};
use fedgate_s2s::wire::{ErrorType, stanza_domains};

pub struct Router {
    ctx: Arc<S2sContext>,
    pool: Arc<Pool>,
    components: Arc<Components>,
}

impl Router {
    pub fn new(ctx: Arc<S2sContext>, pool: Arc<Pool>, components: Arc<Components>) -> Self {
        Self {
            ctx,
            pool,
            components,
        }
    }
}

impl StanzaSink for Router {
    fn route(&self, st: Stanza) {
        let (from, to) = match stanza_domains(&st.el) {
            (Some(f), Some(t)) => (f.to_ascii_lowercase(), t.to_ascii_lowercase()),
            _ => {
                self.ctx
                    .metrics
                    .dropped
                    .with_label_values(&["no-address"])
                    .inc();
                return;
            }
        };
        if self.ctx.hosted.contains(&to) {
            if let Err(e) = self.components.deliver(&self.ctx, &to, st) {
                match e {
                    DeliverError::NotConnected(st) => self.ctx.bounce(
                        &st,
                        ErrorType::Cancel,
                        "service-unavailable",
                        "component-offline",
                        &format!("fedgate: the local service for {to} is not connected"),
                    ),
                    DeliverError::QueueFull(st) => self.ctx.bounce(
                        &st,
                        ErrorType::Wait,
                        "resource-constraint",
                        "limit",
                        &format!("fedgate: limit: the queue to the local service for {to} is full"),
                    ),
                }
            }
            return;
        }
        if self.ctx.hosted.contains(&from) {
            if let Origin::Remote { .. } = st.origin {
                // Inbound streams only carry pairs whose `to` is hosted; never relay.
                self.ctx.metrics.dropped.with_label_values(&["relay"]).inc();
                return;
            }
            self.pool.send(&from, &to, st);
            return;
        }
        self.ctx
            .metrics
            .dropped
            .with_label_values(&["not-routable"])
            .inc();
        tracing::debug!(%from, %to, "neither side is hosted here; dropped");
    }
}
