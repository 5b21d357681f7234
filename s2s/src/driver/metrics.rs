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
    /// Stanzas confirmed, by link kind: by the next hop on sending links (s2s-out, internal,
    /// component); on s2s-in, acknowledged to the sending server with XEP-0198.
    pub confirmed: IntCounterVec,
    /// Round-trip time of acknowledgement requests (XEP-0198 `<r/>` or XEP-0199 ping).
    pub ack_rtt: HistogramVec,
    /// Links that negotiated XEP-0198, by direction, and those that fell back to pings.
    pub ack_mode: IntCounterVec,
    /// Streams open now with each remote domain, by direction (refreshed at each scrape).
    pub remote_streams: IntGaugeVec,
    /// Domain pairs authenticated with each remote domain since start, by how the remote's
    /// identity was last established (pkix/dane/posh/dialback; refreshed at each scrape).
    pub remote_auth: IntGaugeVec,
    /// Outbound links to a remote domain that could not be set up or broke, by failure kind.
    pub remote_failures: IntCounterVec,
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
        let remote_streams = IntGaugeVec::new(
            Opts::new(
                "fedgate_remote_streams",
                "Streams open now with a remote domain, by direction",
            ),
            &["remote_domain", "direction"],
        )
        .expect("valid metric");
        r.register(Box::new(remote_streams.clone()))
            .expect("unique metric");
        let remote_auth = IntGaugeVec::new(
            Opts::new(
                "fedgate_remote_auth_pairs",
                "Domain pairs authenticated with a remote domain since start, by how its identity was last established",
            ),
            &["remote_domain", "direction", "mechanism", "method"],
        )
        .expect("valid metric");
        r.register(Box::new(remote_auth.clone()))
            .expect("unique metric");
        let m = Self {
            unconfirmed,
            ack_rtt,
            remote_streams,
            remote_auth,
            remote_failures: vec_counter(
                r,
                "fedgate_remote_failures_total",
                "Outbound links to a remote domain that could not be set up or broke, by failure kind",
                &["remote_domain", "kind"],
            ),
            resent: vec_counter(
                r,
                "fedgate_stanzas_resent_total",
                "Stanzas sent again on a new stream because the broken one never confirmed them",
                &["link"],
            ),
            confirmed: vec_counter(
                r,
                "fedgate_stanzas_confirmed_total",
                "Stanzas confirmed by the next hop (s2s-out, internal, component) or acknowledged to the sending server with XEP-0198 (s2s-in)",
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
                "Domain-pair authentications (remote_domain: capped label set, see fedgate_remote_*)",
                &[
                    "direction",
                    "method",
                    "mechanism",
                    "result",
                    "remote_domain",
                ],
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
        };
        // Per link kind from the start, at 0: a first resend is then an increase, and the
        // series are there for dashboards before anything broke.
        for link in LINKS {
            m.resent.with_label_values(&[link]);
            m.unconfirmed.with_label_values(&[link]);
        }
        m
    }

    /// Refresh the per-remote-domain gauges (peer certificate expiry, streams, authentication
    /// methods) from the per-domain status; called at each scrape.
    pub fn refresh_remote_domains(&self, status: &super::status::Status) {
        let now = fedgate_certs::unix_now();
        self.peer_cert_expiry.reset();
        self.remote_streams.reset();
        self.remote_auth.reset();
        for (domain, s) in status.snapshot() {
            let label = self.domain_label(&domain);
            if let Some(t) = s.peer_cert_expiry.iter().min() {
                self.peer_cert_expiry
                    .with_label_values(&[&label])
                    .set(t - now);
            }
            for (direction, n) in [("in", s.inbound_streams), ("out", s.outbound_streams)] {
                self.remote_streams
                    .with_label_values(&[&label, direction])
                    .add(i64::from(n));
            }
            for ((direction, _), a) in &s.auth {
                self.remote_auth
                    .with_label_values(&[label.as_str(), direction, a.mechanism, a.method.as_str()])
                    .inc();
            }
        }
    }

    /// Count an outbound link to `remote` that could not be set up or broke.
    pub fn remote_failure(&self, remote: &str, f: &crate::wire::Failure) {
        self.remote_failures
            .with_label_values(&[&self.domain_label(remote), f.kind.as_str()])
            .inc();
    }

    /// Acknowledgement figures of each link kind, for `/status`.
    pub fn link_acks(&self) -> Vec<LinkAcks> {
        LINKS
            .iter()
            .map(|&link| LinkAcks {
                link,
                unconfirmed: self.unconfirmed.with_label_values(&[link]).get(),
                resent: self.resent.with_label_values(&[link]).get(),
                modes: ["sm", "ping"]
                    .into_iter()
                    .map(|mode| {
                        let h = self.ack_rtt.with_label_values(&[link, mode]);
                        let links = self.ack_mode.with_label_values(&[link, mode]).get();
                        rtt_figures(mode, links, &h)
                    })
                    .filter(|m| m.links > 0 || m.answered > 0)
                    .collect(),
            })
            .filter(|l| l.unconfirmed != 0 || l.resent > 0 || !l.modes.is_empty())
            .collect()
    }

    /// Stanzas bounced and dropped since start, by reason (non-zero reasons only), for `/status`.
    pub fn by_reason(&self) -> (ReasonCounts, ReasonCounts) {
        (
            counts_by_label(&self.bounced),
            counts_by_label(&self.dropped),
        )
    }

    /// The label to use for a remote domain (capped).
    pub fn domain_label(&self, domain: &str) -> String {
        capped_label(&self.domains, domain, MAX_DOMAIN_LABELS)
    }
}

/// The link kinds that confirm delivery (the `link` label of the ack metrics).
pub const LINKS: [&str; 4] = ["s2s-out", "internal", "component", "s2s-in"];

/// What `/status` shows of one link kind's acknowledgements.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkAcks {
    pub link: &'static str,
    /// Stanzas written and not yet confirmed, now.
    pub unconfirmed: i64,
    /// Stanzas sent again on a new stream since start.
    pub resent: u64,
    pub modes: Vec<ModeAcks>,
}

/// Round trips of one confirmation mode (sm or ping) on one link kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeAcks {
    pub mode: &'static str,
    /// Links opened in this mode since start.
    pub links: u64,
    /// Requests answered.
    pub answered: u64,
    pub rtt_mean_secs: f64,
    /// The upper bound of the histogram bucket holding the 99th percentile (`None` past the
    /// last bucket or with no answers).
    pub rtt_p99_at_most_secs: Option<f64>,
}

/// (reason, count) pairs, sorted by reason.
pub type ReasonCounts = Vec<(String, u64)>;

/// Each value of a one-label counter with a non-zero count, sorted by label.
fn counts_by_label(c: &IntCounterVec) -> ReasonCounts {
    use prometheus::core::Collector;
    let mut out: Vec<(String, u64)> = c
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .filter_map(|m| {
            let label = m.get_label().first()?.value().to_string();
            let n = m.get_counter().get_value() as u64;
            (n > 0).then_some((label, n))
        })
        .collect();
    out.sort();
    out
}

fn rtt_figures(mode: &'static str, links: u64, h: &prometheus::Histogram) -> ModeAcks {
    use prometheus::core::Collector;
    let mut answered = 0;
    let mut sum = 0.0;
    let mut p99 = None;
    if let Some(m) = h.collect().first().and_then(|f| f.get_metric().first()) {
        let hist = m.get_histogram();
        answered = hist.get_sample_count();
        sum = hist.get_sample_sum();
        let want = (answered as f64 * 0.99).ceil() as u64;
        p99 = hist
            .get_bucket()
            .iter()
            .find(|b| answered > 0 && b.cumulative_count() >= want)
            .map(|b| b.upper_bound());
    }
    ModeAcks {
        mode,
        links,
        answered,
        rtt_mean_secs: if answered > 0 {
            sum / answered as f64
        } else {
            0.0
        },
        rtt_p99_at_most_secs: p99,
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
