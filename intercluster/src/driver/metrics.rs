//! Prometheus metrics of the intercluster links, labelled per peer cluster (the label set is
//! the configured peers, so it stays small).

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub link_up: IntGaugeVec,
    pub entries: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub deltas: IntCounterVec,
    pub snapshots: IntCounterVec,
    pub digest_mismatches: IntCounterVec,
    pub incarnation_changes: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub unacked: IntGaugeVec,
    pub resent: IntCounterVec,
    pub bounces: IntCounterVec,
    pub failures: IntCounterVec,
    pub routed: IntCounterVec,
    pub conflicts: IntGauge,
    pub own_entries: IntGauge,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    let _ = r.register(Box::new(g.clone()));
    g
}

fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    let _ = r.register(Box::new(g.clone()));
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new(r: &Registry) -> Self {
        let conflicts = IntGauge::new(
            "fedgate_intercluster_conflicts",
            "Users claimed by two or more clusters with the same ownership epoch",
        )
        .expect("valid metric");
        let _ = r.register(Box::new(conflicts.clone()));
        let own_entries = IntGauge::new(
            "fedgate_intercluster_own_entries",
            "Users this cluster hosts (its own origin)",
        )
        .expect("valid metric");
        let _ = r.register(Box::new(own_entries.clone()));
        Self {
            link_up: gauge_vec(
                r,
                "fedgate_intercluster_link_up",
                "1 while the link to the peer is up",
                &["peer"],
            ),
            entries: gauge_vec(
                r,
                "fedgate_intercluster_entries",
                "Directory entries (users) the peer hosts, as replicated here",
                &["peer"],
            ),
            lag_seconds: float_gauge_vec(
                r,
                "fedgate_intercluster_lag_seconds",
                "How long the replica of the peer has been behind the peer's log (0: up to date)",
                &["peer"],
            ),
            deltas: counter_vec(
                r,
                "fedgate_intercluster_deltas_total",
                "Directory changes sent to / received from the peer",
                &["peer", "direction"],
            ),
            snapshots: counter_vec(
                r,
                "fedgate_intercluster_snapshots_total",
                "Directory snapshots sent to / received from the peer",
                &["peer", "direction"],
            ),
            digest_mismatches: counter_vec(
                r,
                "fedgate_intercluster_digest_mismatches_total",
                "Anti-entropy digest comparisons that found drift (repaired by a snapshot)",
                &["peer"],
            ),
            incarnation_changes: counter_vec(
                r,
                "fedgate_intercluster_incarnation_changes_total",
                "Times the peer came back with a new incarnation (restart, reset or restore)",
                &["peer"],
            ),
            queue_depth: gauge_vec(
                r,
                "fedgate_intercluster_queue_depth",
                "Stanzas waiting for the link to the peer",
                &["peer"],
            ),
            unacked: gauge_vec(
                r,
                "fedgate_intercluster_unacked",
                "Stanza routes sent to the peer and not yet acknowledged",
                &["peer"],
            ),
            resent: counter_vec(
                r,
                "fedgate_intercluster_resent_total",
                "Stanza routes sent again on a new link because the peer had not taken them",
                &["peer"],
            ),
            bounces: counter_vec(
                r,
                "fedgate_intercluster_bounces_total",
                "Stanzas for users of the peer answered with an error (or dropped when not bounceable)",
                &["peer", "reason"],
            ),
            failures: counter_vec(
                r,
                "fedgate_intercluster_link_failures_total",
                "Link failures by kind",
                &["peer", "kind"],
            ),
            routed: counter_vec(
                r,
                "fedgate_intercluster_routed_total",
                "Stanzas routed over the link to / from the peer",
                &["peer", "direction"],
            ),
            conflicts,
            own_entries,
        }
    }
}
