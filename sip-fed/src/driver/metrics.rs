//! Prometheus metrics of SIP federation, per partner domain (labels capped like the s2s ones:
//! past [`MAX_PARTNER_LABELS`] distinct partners, further ones count as `other`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use fedgate_s2s::driver::metrics::capped_label;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::FailureKind;

pub const MAX_PARTNER_LABELS: usize = 200;

#[derive(Clone)]
pub struct SipMetrics {
    /// Transactions completed, by partner, direction (in/out), method and final status.
    pub transactions: IntCounterVec,
    /// Dialogs open now, by partner and kind (session/subscription).
    pub dialogs: IntGaugeVec,
    /// Failures by partner and kind (dns, connect, tls, tls-untrusted, name-mismatch,
    /// no-client-cert, timeout, protocol, limit).
    pub failures: IntCounterVec,
    /// Connections open now by direction.
    pub connections: IntGaugeVec,
    /// Translations by direction (sip-to-xmpp, xmpp-to-sip) and kind (message, presence,
    /// subscription).
    pub translated: IntCounterVec,
    /// Requests held back by the partner's rate (`max_rate`) before they were sent or failed.
    pub paced: IntCounterVec,
    partners: Arc<Mutex<HashSet<String>>>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl SipMetrics {
    pub fn new(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Self {
            transactions: counter(
                "fedgate_sip_transactions_total",
                "SIP transactions completed, by partner, direction, method and final status",
                &["partner", "direction", "method", "status"],
            ),
            dialogs: gauge(
                "fedgate_sip_dialogs",
                "SIP dialogs open now, by partner and kind",
                &["partner", "kind"],
            ),
            failures: counter(
                "fedgate_sip_failures_total",
                "SIP link failures by partner and kind",
                &["partner", "kind"],
            ),
            connections: gauge(
                "fedgate_sip_connections",
                "SIP/TLS connections open now, by direction",
                &["direction"],
            ),
            translated: counter(
                "fedgate_sip_translated_total",
                "Stanzas translated between XMPP and SIP, by direction and kind",
                &["direction", "kind"],
            ),
            paced: counter(
                "fedgate_sip_paced_total",
                "SIP requests that waited for the partner's rate limit",
                &["partner"],
            ),
            partners: Arc::default(),
        }
    }

    /// The label for a partner domain (capped).
    pub fn partner_label(&self, partner: &str) -> String {
        capped_label(&self.partners, partner, MAX_PARTNER_LABELS)
    }

    pub fn failure(&self, partner: &str, kind: FailureKind) {
        let p = self.partner_label(partner);
        self.failures
            .with_label_values(&[p.as_str(), kind.as_str()])
            .inc();
    }

    pub fn transaction(&self, partner: &str, direction: &str, method: &str, status: u16) {
        let p = self.partner_label(partner);
        let status = status.to_string();
        self.transactions
            .with_label_values(&[p.as_str(), direction, method, status.as_str()])
            .inc();
    }
}
