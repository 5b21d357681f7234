//! Shared state behind one interface ([`ClusterStore`]): membership with leases, what is
//! attached to which node, cluster-wide limits and the facts every node must agree on.
//!
//! - Without `[cluster]` the node is a cluster of one with an **embedded** store: its state is
//!   in process, as it always was (nothing to install, nothing changes).
//! - With `[cluster]` a **Redis** store ([`redis_store`]) holds it; each node keeps a local
//!   replica that the data path reads, kept current by notifications and periodic full reads.
//!   The policy's `rate` ([`rate`]) and `max_streams` then hold for the cluster as a whole.
//!
//! Node links (stanzas between nodes) are not built yet: [`ClusterStore::placement`] answers
//! "which node has this domain's component attached" from the replica for them.

pub mod cli;
pub mod config;
pub mod connect;
pub mod facts;
pub mod rate;
pub mod redis_store;
pub mod replica;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fedgate_s2s::driver::{Components, S2sContext};

pub use config::ClusterConfig;
pub use rate::{RateVerdict, SharedRate};
use redis_store::RedisStore;
use replica::NodeRecord;

use crate::config::Config;
use crate::policy_runtime::PolicyRuntime;

/// The cluster state of this node.
pub enum ClusterStore {
    /// A single node (no `[cluster]`): everything in process.
    Embedded(Embedded),
    /// A node of a cluster whose state is in Redis.
    Redis(Arc<RedisStore>),
}

/// Where a hosted domain's service is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Here,
    Node { name: String, node_link: String },
    Nowhere,
}

/// The embedded store: this node is the whole cluster.
pub struct Embedded {
    components: Arc<Components>,
    internal: Vec<String>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Starts the store the config asks for. With `[cluster]` this checks that the node may join
/// (an error names the difference) and makes `rate` and `max_streams` cluster-wide.
pub async fn start(
    cfg: &Config,
    ctx: &Arc<S2sContext>,
    components: &Arc<Components>,
    policy: &Arc<PolicyRuntime>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Arc<ClusterStore>> {
    let internal: Vec<String> = cfg
        .domains
        .iter()
        .filter(|d| d.internal.is_some())
        .map(|d| d.name.clone())
        .collect();
    let Some(cc) = &cfg.cluster else {
        return Ok(Arc::new(ClusterStore::Embedded(Embedded {
            components: components.clone(),
            internal,
        })));
    };
    let secret = cfg
        .s2s
        .dialback_secret
        .as_deref()
        .expect("checked at load: a cluster needs s2s.dialback_secret");
    let hosted: Vec<String> = cfg
        .domains
        .iter()
        .flat_map(|d| std::iter::once(d.name.clone()).chain(d.aliases.iter().cloned()))
        .collect();
    let own = NodeRecord {
        name: cc.name.clone(),
        node_link: cc.node_link.clone(),
        incarnation: fedgate_s2s::driver::context::new_stream_id(),
        started: unix(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        facts: facts::Facts::new(secret, &hosted, policy.active().revision()),
        components: Vec::new(),
        internal,
    };
    let store = RedisStore::start(
        cc,
        &cfg.source,
        own,
        components.clone(),
        policy.clone(),
        registry,
        ctx.shutdown_signal(),
    )
    .await?;
    policy.set_cluster_rate(store.clone());
    ctx.stream_limits.set_shared(store.clone());
    Ok(Arc::new(ClusterStore::Redis(store)))
}

impl ClusterStore {
    /// `None` while healthy; else why this node is degraded (`/healthz`).
    pub fn degraded(&self) -> Option<String> {
        match self {
            Self::Embedded(_) => None,
            Self::Redis(s) => {
                let h = s.health();
                (!h.up).then(|| {
                    format!(
                        "cluster store {} unreachable since {} ({}): serving with the last replica, limits per node",
                        s.endpoint.url,
                        unix(h.since),
                        h.reason.as_deref().unwrap_or("unknown")
                    )
                })
            }
        }
    }

    /// Where a stanza for hosted `domain` is delivered: here, on another live node that has
    /// its component attached (phase 2 forwards it over the node link), or nowhere.
    pub fn placement(&self, domain: &str) -> Placement {
        match self {
            Self::Embedded(e) => {
                if e.components.connected().iter().any(|c| c == domain) {
                    Placement::Here
                } else {
                    Placement::Nowhere
                }
            }
            Self::Redis(s) => {
                let serving = s.serving(domain);
                match serving.first() {
                    None => Placement::Nowhere,
                    Some(n) if *n == s.name => Placement::Here,
                    Some(n) => Placement::Node {
                        name: n.clone(),
                        node_link: s
                            .replica()
                            .get(n)
                            .map(|x| x.record.node_link.clone())
                            .unwrap_or_default(),
                    },
                }
            }
        }
    }

    /// The `cluster` section of `/status`.
    pub fn status(&self) -> serde_json::Value {
        match self {
            Self::Embedded(e) => serde_json::json!({
                "store": { "kind": "embedded", "up": true },
                "node": null,
                "nodes": [{
                    "name": null,
                    "self": true,
                    "live": true,
                    "components": e.components.connected(),
                    "internal": e.internal,
                }],
                "consistency": { "ok": true, "differences": [] },
            }),
            Self::Redis(s) => {
                let h = s.health();
                let now = Instant::now();
                let frozen = !h.up;
                let r = s.replica();
                let nodes: Vec<serde_json::Value> = r
                    .all()
                    .map(|n| {
                        let left = n.lease_until.saturating_duration_since(now);
                        serde_json::json!({
                            "name": n.record.name,
                            "self": n.record.name == s.name,
                            "live": frozen || n.lease_until > now,
                            "node_link": n.record.node_link,
                            "incarnation": n.record.incarnation,
                            "started": n.record.started,
                            "version": n.record.version,
                            "lease_left_ms": u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                            "components": n.record.components,
                            "internal": n.record.internal,
                            "policy_revision": n.record.facts.policy_revision,
                            "inbound_streams": n.streams.values().sum::<u32>(),
                        })
                    })
                    .collect();
                let differences = s.inconsistencies();
                serde_json::json!({
                    "store": {
                        "kind": "redis",
                        "url": s.endpoint.url.to_string(),
                        "up": h.up,
                        "since": unix(h.since),
                        "reason": h.reason,
                        "last_sync": h.last_sync.map(unix),
                    },
                    "node": s.name,
                    "lease_ms": u64::try_from(s.lease().as_millis()).unwrap_or(u64::MAX),
                    "nodes": nodes,
                    "consistency": { "ok": differences.is_empty(), "differences": differences },
                })
            }
        }
    }
}
