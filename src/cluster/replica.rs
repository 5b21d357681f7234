//! The local replica of the cluster state (sans-IO): every node's record (name, `node_link`,
//! facts, what is attached to it), its lease as this node last saw it renewed, and its inbound
//! stream counts. The data path reads only this; the store driver keeps it current from change
//! notifications and periodic full reads.
//!
//! Leases are kept in this node's clock: a record read with `PTTL` t, or a heartbeat
//! notification that says "renewed for t", holds the node until now + t. No clocks are
//! compared between nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::facts::{Difference, Facts, differences};

/// What a node publishes about itself (JSON in the store), renewed with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Where other nodes reach its node link.
    pub node_link: String,
    /// Random per start: a restart is a new incarnation.
    pub incarnation: String,
    /// Unix seconds of its start.
    pub started: u64,
    pub version: String,
    pub facts: Facts,
    /// Hosted domains whose component is attached to this node now.
    #[serde(default)]
    pub components: Vec<String>,
    /// Hosted domains whose internal server this node reaches (configured).
    #[serde(default)]
    pub internal: Vec<String>,
}

/// A node as the replica holds it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub record: NodeRecord,
    /// Until when its lease holds, in this node's clock.
    pub lease_until: Instant,
    /// Its open inbound streams per remote domain.
    pub streams: HashMap<String, u32>,
}

/// The replica.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    nodes: BTreeMap<String, Arc<NodeState>>,
}

impl Replica {
    /// A node's record and streams as just read, its lease holding for `ttl` more.
    pub fn apply(
        &mut self,
        record: NodeRecord,
        ttl: Duration,
        streams: HashMap<String, u32>,
        now: Instant,
    ) {
        let name = record.name.clone();
        self.nodes.insert(
            name,
            Arc::new(NodeState {
                record,
                lease_until: now + ttl,
                streams,
            }),
        );
    }

    /// A heartbeat notification: `name` renewed its lease for `lease`. Unknown nodes are
    /// read at the next notification of their state or resync.
    pub fn renew(&mut self, name: &str, lease: Duration, now: Instant) -> bool {
        match self.nodes.get_mut(name) {
            Some(n) => {
                let until = now + lease;
                if until > n.lease_until {
                    Arc::make_mut(n).lease_until = until;
                }
                true
            }
            None => false,
        }
    }

    /// A node left, or its record is gone from the store.
    pub fn remove(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }

    /// A full read: exactly these nodes.
    pub fn replace_all(
        &mut self,
        nodes: Vec<(NodeRecord, Duration, HashMap<String, u32>)>,
        now: Instant,
    ) {
        self.nodes.clear();
        for (r, ttl, s) in nodes {
            self.apply(r, ttl, s, now);
        }
    }

    /// Nodes whose lease holds at `now`; with `frozen` (the store is unreachable, so no lease
    /// can be seen renewed) every node of the last read.
    pub fn live(&self, now: Instant, frozen: bool) -> impl Iterator<Item = &NodeState> {
        self.nodes
            .values()
            .map(|n| &**n)
            .filter(move |n| frozen || n.lease_until > now)
    }

    /// Every node of the replica, live or not.
    pub fn all(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values().map(|n| &**n)
    }

    pub fn get(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name).map(|n| &**n)
    }

    /// Inbound streams of `remote` open on live nodes other than `own`.
    pub fn streams_elsewhere(&self, own: &str, remote: &str, now: Instant, frozen: bool) -> u32 {
        self.live(now, frozen)
            .filter(|n| n.record.name != own)
            .map(|n| n.streams.get(remote).copied().unwrap_or(0))
            .sum()
    }

    /// The live nodes that have a component of `domain` attached, own first (for routing
    /// "domain → node").
    pub fn serving(&self, own: &str, domain: &str, now: Instant, frozen: bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .live(now, frozen)
            .filter(|n| n.record.components.iter().any(|c| c == domain))
            .map(|n| n.record.name.clone())
            .collect();
        v.sort_by_key(|n| n != own);
        v
    }

    /// Where live nodes differ from `own` facts: (node, differences).
    pub fn inconsistencies(
        &self,
        own_name: &str,
        own: &Facts,
        now: Instant,
        frozen: bool,
    ) -> Vec<(String, Vec<Difference>)> {
        self.live(now, frozen)
            .filter(|n| n.record.name != own_name)
            .map(|n| (n.record.name.clone(), differences(own, &n.record.facts)))
            .filter(|(_, d)| !d.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, components: &[&str], rev: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            node_link: "127.0.0.1:7410".into(),
            incarnation: "i".into(),
            started: 0,
            version: "0".into(),
            facts: Facts::new("s", &["a.test".into()], rev),
            components: components.iter().map(|s| s.to_string()).collect(),
            internal: Vec::new(),
        }
    }

    #[test]
    fn leases_expire_unless_renewed_and_freeze_while_the_store_is_down() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Replica::default();
        r.apply(rec("a", &["a.test"], "r"), s(10), HashMap::new(), t0);
        r.apply(rec("b", &[], "r"), s(10), HashMap::new(), t0);
        assert_eq!(r.live(t0 + s(5), false).count(), 2);
        assert!(r.renew("a", s(10), t0 + s(8)));
        assert!(
            !r.renew("c", s(10), t0),
            "unknown nodes are read, not invented"
        );
        fn names(r: &Replica, now: Instant, frozen: bool) -> Vec<String> {
            r.live(now, frozen).map(|n| n.record.name.clone()).collect()
        }
        assert_eq!(names(&r, t0 + s(11), false), ["a"], "b's lease ran out");
        assert_eq!(
            names(&r, t0 + s(11), true),
            ["a", "b"],
            "frozen: the last read"
        );
        // A renewal never shortens a lease.
        assert!(r.renew("a", s(1), t0 + s(9)));
        assert_eq!(names(&r, t0 + s(17), false), ["a"]);
    }

    #[test]
    fn streams_and_attachments_of_live_nodes_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Replica::default();
        let st = |n: u32| HashMap::from([("b.test".to_owned(), n)]);
        r.apply(rec("a", &[], "r"), s(10), st(1), t0);
        r.apply(rec("b", &["a.test"], "r"), s(10), st(2), t0);
        r.apply(rec("c", &["a.test"], "r"), s(3), st(4), t0);
        assert_eq!(r.streams_elsewhere("a", "b.test", t0, false), 6);
        assert_eq!(r.streams_elsewhere("a", "b.test", t0 + s(4), false), 2);
        assert_eq!(r.streams_elsewhere("a", "x.test", t0, false), 0);
        assert_eq!(r.serving("c", "a.test", t0, false), ["c", "b"]);
        assert_eq!(r.serving("a", "a.test", t0 + s(4), false), ["b"]);
        r.replace_all(vec![(rec("a", &[], "r2"), s(10), HashMap::new())], t0);
        assert_eq!(r.all().count(), 1);
    }

    #[test]
    fn inconsistencies_name_the_node() {
        let t0 = Instant::now();
        let mut r = Replica::default();
        let ttl = Duration::from_secs(10);
        r.apply(rec("a", &[], "r1"), ttl, HashMap::new(), t0);
        r.apply(rec("b", &[], "r2"), ttl, HashMap::new(), t0);
        let own = rec("a", &[], "r1").facts;
        let i = r.inconsistencies("a", &own, t0, false);
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].0, "b");
        assert!(matches!(i[0].1[0], Difference::PolicyRevision { .. }));
    }
}
