//! Prometheus metrics of the stream layer. Remote-domain labels are capped: past
//! [`MAX_DOMAIN_LABELS`] distinct domains, further ones are counted as `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub const MAX_DOMAIN_LABELS: usize = 200;

pub struct Metrics {
    /// Streams currently open, by direction (in/out/component) and state (negotiating/established).
    pub streams: IntGaugeVec,
    /// Streams ended, by direction and result (ok or failure kind).
    pub streams_closed: IntCounterVec,
    /// Domain-pair authentications by direction, identity method (pkix/dane/posh/dialback),
    /// mechanism (sasl-external/dialback) and result.
    pub auth: IntCounterVec,
    /// Stanzas routed, by path (remote-to-local, local-to-remote) and remote domain.
    pub routed: IntCounterVec,
    /// Stanzas answered with an error by us, by reason (failure kind or condition).
    pub bounced: IntCounterVec,
    /// Stanzas dropped without an error reply (errors and presence are never bounced), by reason.
    pub dropped: IntCounterVec,
    /// DNS lookups by result.
    pub dns: IntCounterVec,
    /// TLS handshake failures by direction and kind.
    pub tls_failures: IntCounterVec,
    /// Outbound connection attempts by result.
    pub connects: IntCounterVec,
    /// Bytes queued towards remote domains and components, waiting to be written.
    pub queued_bytes: IntGauge,
    /// Seconds until the soonest-expiring certificate among a remote domain's authenticated
    /// streams expires (refreshed at each scrape).
    pub peer_cert_expiry: IntGaugeVec,
    /// Stanzas written to a link and not yet confirmed by its next hop, by link kind
    /// (s2s-out, internal, component).
    pub unconfirmed: IntGaugeVec,
    /// Stanzas sent again on a new stream because the broken one never confirmed them.
    pub resent: IntCounterVec,
    /// Round-trip time of acknowledgement requests (XEP-0198 `<r/>` or XEP-0199 ping).
    pub ack_rtt: HistogramVec,
    /// Links that negotiated XEP-0198, by direction, and those that fell back to pings.
    pub ack_mode: IntCounterVec,
    domains: Mutex<HashSet<String>>,
}

fn vec_counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new(r: &Registry) -> Self {
        let streams = IntGaugeVec::new(
            Opts::new("fedgate_streams", "Streams open now"),
            &["direction", "state"],
        )
        .expect("valid metric");
        r.register(Box::new(streams.clone()))
            .expect("unique metric");
        let queued_bytes = IntGauge::new(
            "fedgate_queued_bytes",
            "Bytes of stanzas queued towards links, not yet written",
        )
        .expect("valid metric");
        r.register(Box::new(queued_bytes.clone()))
            .expect("unique metric");
        let peer_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "fedgate_peer_cert_expiry_seconds",
                "Seconds until the certificate of a remote domain's authenticated stream expires (soonest)",
            ),
            &["remote_domain"],
        )
        .expect("valid metric");
        r.register(Box::new(peer_cert_expiry.clone()))
            .expect("unique metric");
        let unconfirmed = IntGaugeVec::new(
            Opts::new(
                "fedgate_unconfirmed_stanzas",
                "Stanzas written to a link whose next hop has not confirmed them yet",
            ),
            &["link"],
        )
        .expect("valid metric");
        r.register(Box::new(unconfirmed.clone()))
            .expect("unique metric");
        let ack_rtt = HistogramVec::new(
            HistogramOpts::new(
                "fedgate_ack_rtt_seconds",
                "Round-trip time of acknowledgement requests (XEP-0198 or XEP-0199 ping)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["link", "mode"],
        )
        .expect("valid metric");
        r.register(Box::new(ack_rtt.clone()))
            .expect("unique metric");
        Self {
            unconfirmed,
            ack_rtt,
            resent: vec_counter(
                r,
                "fedgate_stanzas_resent_total",
                "Stanzas sent again on a new stream because the broken one never confirmed them",
                &["link"],
            ),
            ack_mode: vec_counter(
                r,
                "fedgate_ack_links_total",
                "Links by how their next hop confirms delivery (sm = XEP-0198, ping = XEP-0199)",
                &["link", "mode"],
            ),
            streams,
            streams_closed: vec_counter(
                r,
                "fedgate_streams_closed_total",
                "Streams ended",
                &["direction", "result"],
            ),
            auth: vec_counter(
                r,
                "fedgate_auth_total",
                "Domain-pair authentications",
                &["direction", "method", "mechanism", "result"],
            ),
            routed: vec_counter(
                r,
                "fedgate_stanzas_routed_total",
                "Stanzas routed",
                &["path", "remote_domain"],
            ),
            bounced: vec_counter(
                r,
                "fedgate_stanzas_bounced_total",
                "Stanzas answered with an error by the gateway",
                &["reason"],
            ),
            dropped: vec_counter(
                r,
                "fedgate_stanzas_dropped_total",
                "Stanzas dropped without an error reply",
                &["reason"],
            ),
            dns: vec_counter(r, "fedgate_dns_lookups_total", "DNS lookups", &["result"]),
            tls_failures: vec_counter(
                r,
                "fedgate_tls_handshake_failures_total",
                "TLS handshake failures",
                &["direction", "kind"],
            ),
            connects: vec_counter(
                r,
                "fedgate_connect_attempts_total",
                "Outbound connection attempts",
                &["result"],
            ),
            queued_bytes,
            peer_cert_expiry,
            domains: Mutex::new(HashSet::new()),
        }
    }

    /// Refresh the peer certificate expiry gauges from the per-domain status.
    pub fn refresh_peer_cert_expiry(&self, status: &super::status::Status) {
        let now = fedgate_certs::unix_now();
        self.peer_cert_expiry.reset();
        for (domain, s) in status.snapshot() {
            if let Some(t) = s.peer_cert_expiry.iter().min() {
                self.peer_cert_expiry
                    .with_label_values(&[&self.domain_label(&domain)])
                    .set(t - now);
            }
        }
    }

    /// The label to use for a remote domain (capped).
    pub fn domain_label(&self, domain: &str) -> String {
        capped_label(&self.domains, domain, MAX_DOMAIN_LABELS)
    }
}

/// `value` as a metric label while fewer than `max` distinct values have been seen in `seen`,
/// else `other`: label sets per remote party stay bounded.
pub fn capped_label(seen: &Mutex<HashSet<String>>, value: &str, max: usize) -> String {
    let mut d = seen.lock().expect("metrics lock");
    if d.contains(value) {
        return value.to_owned();
    }
    if d.len() < max {
        d.insert(value.to_owned());
        return value.to_owned();
    }
    "other".to_owned()
}
