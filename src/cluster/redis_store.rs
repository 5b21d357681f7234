//! The Redis side of the cluster store: this node's lease (its record, renewed every
//! heartbeat), its stream counts, the change notifications that keep the local replica
//! current, periodic full reads, the cluster rate buckets, and degraded mode.
//!
//! Keys (`P` = `cluster.key_prefix`):
//! - `P:node:<name>`: the node's record (JSON, [`NodeRecord`]) with the lease as TTL;
//! - `P:nodes`: the set of node names (an index for full reads; stale names are removed);
//! - `P:streams:<name>`: hash remote domain → inbound streams open on that node, same TTL;
//! - `P:rate:in|out:<domain>`: a cluster token bucket ([`super::rate::TAKE_SCRIPT`]);
//! - channel `P:events`: `hb <name> <lease ms>`, `state <name>`, `leave <name>`.
//!
//! Only the driver task waits on the store. The data path (rate and stream checks) reads the
//! replica and the local allowances; requests for tokens go out asynchronously.
//!
//! Degraded mode: when a command or the connection fails, the store is marked down (metric,
//! log, `/healthz`), the replica is kept as last read (leases are not aged: no renewal can be
//! seen), limits fall back to per-node shares, and the driver reconnects. On reconnecting it
//! writes this node's state again (a restarted, empty Redis is refilled by every node), reads
//! everything, and only then marks the store up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fedgate_s2s::driver::Components;
use fedgate_s2s::driver::stream_limit::SharedStreams;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands as _, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::{Notify, watch};

use super::config::ClusterConfig;
use super::connect::{Endpoint, Link};
use super::facts::join_check;
use super::rate::{
    ACTIVE_WINDOW_MS, Answer, Fetch, RateVerdict, SharedBucket, SharedRate, TAKE_SCRIPT,
    per_node_share,
};
use super::replica::{NodeRecord, Replica};
use crate::policy_runtime::PolicyRuntime;

/// Past this many rate buckets, idle ones are forgotten (as the per-node buckets).
const MAX_BUCKETS: usize = 100_000;
/// How often attached components and the policy revision are looked at.
const LOCAL_CHECK: Duration = Duration::from_millis(250);
/// Changes written at most this often (a burst of stream opens is one write).
const DEBOUNCE: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) struct Metrics {
    pub store_up: IntGauge,
    pub nodes: IntGauge,
    pub consistent: IntGauge,
    store_failures: IntCounter,
    resyncs: IntCounter,
    fallback: IntCounterVec,
    rate_requests: IntCounterVec,
}

impl Metrics {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        let gauge = |n: &str, h: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(n, h)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |n: &str, h: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(n, h)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let vec = |n: &str, h: &str, l: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(n, h), l)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let m = Self {
            store_up: gauge(
                "fedgate_cluster_store_up",
                "1 while the cluster store (Redis) is reachable and this node's state is written there; 0: degraded",
            )?,
            nodes: gauge(
                "fedgate_cluster_nodes",
                "Nodes of the cluster this node sees (itself included)",
            )?,
            consistent: gauge(
                "fedgate_cluster_consistent",
                "1 while every node publishes the same dialback secret hash, hosted domains and policy revision",
            )?,
            store_failures: counter(
                "fedgate_cluster_store_failures_total",
                "Times the cluster store became unreachable",
            )?,
            resyncs: counter(
                "fedgate_cluster_resyncs_total",
                "Full reads of the cluster state into the local replica",
            )?,
            fallback: vec(
                "fedgate_cluster_limit_fallback_total",
                "Limit checks made with the per-node share while the store was unreachable",
                &["limit"],
            )?,
            rate_requests: vec(
                "fedgate_cluster_rate_requests_total",
                "Requests for tokens to the cluster rate buckets, by result",
                &["result"],
            )?,
        };
        for l in ["rate", "max_streams"] {
            m.fallback.with_label_values(&[l]);
        }
        for l in ["ok", "error"] {
            m.rate_requests.with_label_values(&[l]);
        }
        Ok(m)
    }
}

/// Whether the store is reachable, since when and why not.
#[derive(Debug, Clone)]
pub struct Health {
    pub up: bool,
    pub since: SystemTime,
    pub reason: Option<String>,
    /// The last full read of the replica.
    pub last_sync: Option<SystemTime>,
}

type BucketKey = (String, bool);

/// A node's connection to the cluster store.
pub struct RedisStore {
    pub(super) name: String,
    prefix: String,
    pub(super) endpoint: Endpoint,
    lease: Duration,
    heartbeat: Duration,
    resync: Duration,
    own: Mutex<NodeRecord>,
    own_streams: Mutex<HashMap<String, u32>>,
    dirty: Notify,
    pub(super) replica: RwLock<Replica>,
    conn: Mutex<Option<MultiplexedConnection>>,
    health: Mutex<Health>,
    /// A command on the data side failed: the driver connects again (the flag tells a
    /// request of this connection from a permit left over from an earlier one).
    reconnect: Notify,
    reconnect_wanted: AtomicBool,
    buckets: Mutex<HashMap<BucketKey, SharedBucket>>,
    fetches: UnboundedSender<(BucketKey, f64, u32, Fetch)>,
    take: redis::Script,
    pub(super) metrics: Metrics,
    components: Arc<Components>,
    /// Weak: the policy runtime holds this store (its shared rate).
    policy: std::sync::Weak<PolicyRuntime>,
    /// Whether the fallback of each limit was logged in this outage.
    fallback_logged: [AtomicBool; 2],
    /// The inconsistencies last logged.
    inconsistent: Mutex<Vec<String>>,
    /// The live nodes last logged.
    members: Mutex<Vec<String>>,
}

fn io<T>(r: redis::RedisResult<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

impl RedisStore {
    fn key_node(&self, name: &str) -> String {
        format!("{}:node:{name}", self.prefix)
    }
    fn key_streams(&self, name: &str) -> String {
        format!("{}:streams:{name}", self.prefix)
    }
    fn key_nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }
    fn key_rate(&self, domain: &str, inbound: bool) -> String {
        let dir = if inbound { "in" } else { "out" };
        format!("{}:rate:{dir}:{domain}", self.prefix)
    }

    /// Connects, checks that this node may join (same dialback secret and hosted domains as
    /// every live node, a policy revision one of them has, its name not held by another live
    /// node), writes its lease and starts the driver. A store unreachable at start is not
    /// fatal: the node starts degraded and is checked once the store answers (a difference
    /// found then is flagged, not fatal).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        cfg: &ClusterConfig,
        source: &str,
        own: NodeRecord,
        components: Arc<Components>,
        policy: Arc<PolicyRuntime>,
        registry: &Registry,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let endpoint =
            Endpoint::new(cfg).map_err(|(k, m)| anyhow::anyhow!("{source}: {k}: {m}"))?;
        let (fetches, fetch_rx) = tokio::sync::mpsc::unbounded_channel();
        let store = Arc::new(Self {
            name: cfg.name.clone(),
            prefix: cfg.key_prefix.clone(),
            endpoint,
            lease: Duration::from_millis(cfg.lease_ms),
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            resync: Duration::from_millis(cfg.resync_ms),
            own: Mutex::new(own.clone()),
            own_streams: Mutex::new(HashMap::new()),
            dirty: Notify::new(),
            replica: RwLock::new(Replica::default()),
            conn: Mutex::new(None),
            health: Mutex::new(Health {
                up: false,
                since: SystemTime::now(),
                reason: Some("not connected yet".into()),
                last_sync: None,
            }),
            reconnect: Notify::new(),
            reconnect_wanted: AtomicBool::new(false),
            buckets: Mutex::new(HashMap::new()),
            fetches,
            take: redis::Script::new(TAKE_SCRIPT),
            metrics: Metrics::new(registry)?,
            components,
            policy: Arc::downgrade(&policy),
            fallback_logged: [AtomicBool::new(false), AtomicBool::new(false)],
            inconsistent: Mutex::new(Vec::new()),
            members: Mutex::new(Vec::new()),
        });
        store
            .replica_mut()
            .apply(own, store.lease, HashMap::new(), Instant::now());
        store.metrics.nodes.set(1);
        let url = store.endpoint.url.to_string();
        let first = match store.endpoint.link().await {
            Ok(mut link) => {
                store
                    .join(&mut link.cmd)
                    .await
                    .map_err(|e| anyhow::anyhow!("{source}: cluster: {e}"))?;
                // Started means registered: the lease is written and the replica read.
                match store.establish(&mut link).await {
                    Ok(()) => Some(link),
                    Err(e) => {
                        store.set_down(e);
                        None
                    }
                }
            }
            Err(e) => {
                tracing::error!(store = %url, error = %e, "cluster store unreachable at start: starting degraded (limits per node, consistency with the other nodes unchecked until it answers)");
                store.set_down(format!("unreachable at start: {e}"));
                None
            }
        };
        tokio::spawn(store.clone().fetch_worker(fetch_rx, shutdown.clone()));
        tokio::spawn(store.clone().drive(first, shutdown));
        Ok(store)
    }

    fn replica_mut(&self) -> std::sync::RwLockWriteGuard<'_, Replica> {
        self.replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn replica(&self) -> std::sync::RwLockReadGuard<'_, Replica> {
        self.replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    pub fn is_up(&self) -> bool {
        lock(&self.health).up
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The join check against the live nodes (see [`Self::start`]).
    async fn join(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let nodes = self.read_all(conn).await?;
        let own = lock(&self.own).clone();
        let mut live = Vec::new();
        for (r, _, _) in &nodes {
            if r.name == own.name {
                if r.node_link != own.node_link {
                    return Err(format!(
                        "the node name '{}' is held by a live node at {} (lease still running): \
                         give this node another cluster.name, or stop that one",
                        r.name, r.node_link
                    ));
                }
                tracing::info!(node = %r.name, previous = %r.incarnation, "replacing the previous run of this node in the cluster");
                continue;
            }
            live.push((r.name.clone(), r.facts.clone()));
        }
        join_check(&own.facts, &live).map_err(|e| {
            format!(
                "this node may not join the cluster at {} (prefix {}):\n  {e}",
                self.endpoint.url, self.prefix
            )
        })?;
        tracing::info!(node = %own.name, others = ?live.iter().map(|(n, _)| n).collect::<Vec<_>>(), "joining the cluster");
        Ok(())
    }

    /// Every node in the store: (record, remaining lease, streams). Names without a record
    /// (expired or left) are removed from the index.
    async fn read_all(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Vec<(NodeRecord, Duration, HashMap<String, u32>)>, String> {
        let names: Vec<String> = io(conn.smembers(self.key_nodes()).await)?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for n in &names {
            p.get(self.key_node(n))
                .pttl(self.key_node(n))
                .hgetall(self.key_streams(n));
        }
        let values: Vec<Value> = io(p.query_async(conn).await)?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (n, v) in names.iter().zip(values.chunks(3)) {
            match parse_node(n, v) {
                Some(x) => out.push(x),
                None => gone.push(n.clone()),
            }
        }
        if !gone.is_empty() {
            let _: i64 = io(conn.srem(self.key_nodes(), &gone).await)?;
        }
        Ok(out)
    }

    /// One node as it is in the store now (None: gone).
    async fn read_node(
        &self,
        conn: &mut MultiplexedConnection,
        name: &str,
    ) -> Result<Option<(NodeRecord, Duration, HashMap<String, u32>)>, String> {
        let mut p = redis::pipe();
        p.get(self.key_node(name))
            .pttl(self.key_node(name))
            .hgetall(self.key_streams(name));
        let values: Vec<Value> = io(p.query_async(conn).await)?;
        Ok(parse_node(name, &values))
    }

    /// Writes this node's record (its lease) and stream counts, and announces it.
    async fn write_own(&self, conn: &mut MultiplexedConnection, event: &str) -> Result<(), String> {
        let record = lock(&self.own).clone();
        let streams: Vec<(String, u32)> = lock(&self.own_streams)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(d, n)| (d.clone(), *n))
            .collect();
        let json = serde_json::to_string(&record).map_err(|e| e.to_string())?;
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let message = match event {
            "hb" => format!("hb {} {lease_ms}", self.name),
            _ => format!("state {}", self.name),
        };
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SET")
            .arg(self.key_node(&self.name))
            .arg(json)
            .arg("PX")
            .arg(lease_ms)
            .ignore()
            .sadd(self.key_nodes(), &self.name)
            .ignore()
            .del(self.key_streams(&self.name))
            .ignore();
        if !streams.is_empty() {
            p.hset_multiple(self.key_streams(&self.name), &streams)
                .ignore()
                .pexpire(self.key_streams(&self.name), lease_ms as i64)
                .ignore();
        }
        p.publish(self.channel(), message).ignore();
        let () = io(p.query_async(conn).await)?;
        let now = Instant::now();
        self.replica_mut()
            .apply(record, self.lease, streams.into_iter().collect(), now);
        Ok(())
    }

    /// A full read into the replica.
    async fn resync(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let mut nodes = self.read_all(conn).await?;
        // This node as it knows itself (its write may be a moment older than its state).
        let own = lock(&self.own).clone();
        let own_streams = lock(&self.own_streams).clone();
        nodes.retain(|(r, _, _)| r.name != self.name);
        nodes.push((own, self.lease, own_streams));
        self.replica_mut().replace_all(nodes, Instant::now());
        lock(&self.health).last_sync = Some(SystemTime::now());
        self.metrics.resyncs.inc();
        self.after_replica_change();
        Ok(())
    }

    /// Gauges and the consistency log after the replica changed.
    fn after_replica_change(&self) {
        let now = Instant::now();
        let own = lock(&self.own).facts.clone();
        let (members, problems) = {
            let r = self.replica();
            let frozen = !self.is_up();
            let members: Vec<String> = r.live(now, frozen).map(|n| n.record.name.clone()).collect();
            let problems: Vec<String> = r
                .inconsistencies(&self.name, &own, now, frozen)
                .into_iter()
                .map(|(node, d)| {
                    format!(
                        "{node}: {}",
                        d.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })
                .collect();
            (members, problems)
        };
        self.metrics.nodes.set(members.len() as i64);
        let mut last = lock(&self.members);
        if *last != members {
            tracing::info!(nodes = ?members, "cluster members");
            *last = members;
        }
        drop(last);
        self.metrics.consistent.set(i64::from(problems.is_empty()));
        let mut last = lock(&self.inconsistent);
        if *last != problems {
            if problems.is_empty() {
                tracing::info!(
                    "cluster consistent again: every node has the same dialback secret, hosted domains and policy"
                );
            } else {
                for p in &problems {
                    tracing::warn!(difference = %p, "cluster nodes differ");
                }
            }
            *last = problems;
        }
    }

    /// The differences last seen with other nodes.
    pub fn inconsistencies(&self) -> Vec<String> {
        lock(&self.inconsistent).clone()
    }

    /// Looks at the attached components and the policy revision; true when the record changed.
    fn refresh_own(&self) -> bool {
        let mut components = self.components.connected();
        components.sort();
        let Some(policy) = self.policy.upgrade() else {
            return false;
        };
        let revision = policy.active().revision().to_owned();
        let mut own = lock(&self.own);
        let mut changed = false;
        if own.components != components {
            own.components = components;
            changed = true;
        }
        if own.facts.policy_revision != revision {
            tracing::warn!(
                revision = %super::facts::short(&revision),
                previous = %super::facts::short(&own.facts.policy_revision),
                "the policy was reloaded: the other nodes flag the difference until they load the same file"
            );
            own.facts.policy_revision = revision;
            changed = true;
        }
        changed
    }

    fn set_down(&self, reason: String) {
        *lock(&self.conn) = None;
        let mut h = lock(&self.health);
        if h.up {
            tracing::error!(store = %self.endpoint.url, error = %reason, "cluster store unreachable: serving with the last replica (degraded); rate and max_streams fall back to per-node shares");
            h.up = false;
            h.since = SystemTime::now();
            self.metrics.store_failures.inc();
        } else if h.reason.as_deref() != Some(reason.as_str()) {
            tracing::debug!(store = %self.endpoint.url, error = %reason, "cluster store still unreachable");
        }
        h.reason = Some(reason);
        self.metrics.store_up.set(0);
    }

    fn set_up(&self, conn: MultiplexedConnection) {
        *lock(&self.conn) = Some(conn);
        let mut h = lock(&self.health);
        if !h.up {
            let down_for = h.since.elapsed().unwrap_or_default();
            tracing::info!(store = %self.endpoint.url, down_secs = down_for.as_secs_f64(), "cluster store reachable: this node's state written, replica read");
            h.up = true;
            h.since = SystemTime::now();
            h.reason = None;
        }
        for f in &self.fallback_logged {
            f.store(false, Ordering::Relaxed);
        }
        self.metrics.store_up.set(1);
    }

    /// A command on the data side failed: the driver sets the connection up again.
    fn fail(&self, reason: String) {
        self.set_down(reason);
        self.reconnect_wanted.store(true, Ordering::Relaxed);
        self.reconnect.notify_one();
    }

    /// The driver: connect (again), write this node's state, read everything, then follow
    /// notifications and timers until the connection fails or the gateway stops.
    async fn drive(self: Arc<Self>, mut first: Option<Link>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let link = match first.take() {
                Some(c) => c,
                None => match self.connect_and_establish().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.set_down(e);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(self.heartbeat);
                        continue;
                    }
                },
            };
            match self.session(link, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    self.set_down(e);
                    backoff = Duration::from_millis(100);
                }
            }
        }
    }

    async fn connect_and_establish(&self) -> Result<Link, String> {
        let mut link = self.endpoint.link().await?;
        self.establish(&mut link).await?;
        Ok(link)
    }

    /// Subscribes, writes this node's state, reads everything, and marks the store up.
    async fn establish(&self, link: &mut Link) -> Result<(), String> {
        self.reconnect_wanted.store(false, Ordering::Relaxed);
        // Subscribed before the full read, so that no change falls between the two.
        io(link.sub.subscribe(self.channel()).await)?;
        self.refresh_own();
        self.write_own(&mut link.cmd, "state").await?;
        self.resync(&mut link.cmd).await?;
        self.set_up(link.cmd.clone());
        self.after_replica_change();
        Ok(())
    }

    /// Follows notifications and timers on an established connection.
    async fn session(
        &self,
        link: Link,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let Link {
            cmd: mut conn,
            sub: _sub,
            mut pushes,
        } = link;
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        let mut resync = tokio::time::interval(self.resync);
        let mut local = tokio::time::interval(LOCAL_CHECK);
        for t in [&mut heartbeat, &mut resync, &mut local] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.reset();
        }
        // Every heartbeat comes back as a notification on the other connection: one silent
        // for three heartbeats is dead even if no error says so.
        let mut last_push = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.leave(&mut conn).await;
                    *lock(&self.conn) = None;
                    return Ok(());
                }
                _ = heartbeat.tick() => {
                    if last_push.elapsed() > self.heartbeat * 3 {
                        return Err("no notification for three heartbeats".into());
                    }
                    self.refresh_own();
                    self.write_own(&mut conn, "hb").await?;
                    self.after_replica_change();
                }
                _ = resync.tick() => self.resync(&mut conn).await?,
                _ = local.tick() => {
                    if self.refresh_own() {
                        self.write_own(&mut conn, "state").await?;
                        self.after_replica_change();
                    }
                }
                _ = self.dirty.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    self.refresh_own();
                    self.write_own(&mut conn, "state").await?;
                }
                _ = self.reconnect.notified() => {
                    if self.reconnect_wanted.swap(false, Ordering::Relaxed) {
                        return Err(lock(&self.health).reason.clone().unwrap_or_else(|| "a command failed".into()));
                    }
                }
                p = pushes.recv() => match p {
                    None => return Err("the connection closed".into()),
                    Some(p) if p.kind == PushKind::Disconnection => return Err("the connection was lost".into()),
                    Some(p) if p.kind == PushKind::Message => {
                        last_push = Instant::now();
                        let text = p.data.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                        if let Some(text) = text {
                            self.on_event(&mut conn, &text).await?;
                        }
                    }
                    Some(_) => {}
                },
            }
        }
    }

    /// A change notification from another node (or this node's own echo, ignored).
    async fn on_event(&self, conn: &mut MultiplexedConnection, text: &str) -> Result<(), String> {
        let mut parts = text.split(' ');
        let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if name.is_empty() || name == self.name {
            return Ok(());
        }
        let now = Instant::now();
        match kind {
            "hb" => {
                let lease = parts
                    .next()
                    .and_then(|m| m.parse::<u64>().ok())
                    .map_or(self.lease, Duration::from_millis);
                if self.replica_mut().renew(name, lease, now) {
                    return Ok(());
                }
                self.refresh_node(conn, name).await?;
            }
            "state" => self.refresh_node(conn, name).await?,
            "leave" => {
                if self.replica_mut().remove(name) {
                    tracing::info!(node = %name, "node left the cluster");
                }
            }
            _ => tracing::debug!(event = %text, "unknown cluster event"),
        }
        self.after_replica_change();
        Ok(())
    }

    async fn refresh_node(
        &self,
        conn: &mut MultiplexedConnection,
        name: &str,
    ) -> Result<(), String> {
        match self.read_node(conn, name).await? {
            Some((r, ttl, s)) => {
                let known = self.replica().get(name).is_some();
                if !known {
                    tracing::info!(node = %name, node_link = %r.node_link, "node joined the cluster");
                }
                self.replica_mut().apply(r, ttl, s, Instant::now());
            }
            None => {
                self.replica_mut().remove(name);
            }
        }
        Ok(())
    }

    /// Leaves the cluster (graceful stop): the record and counts go at once, and the others
    /// are told.
    async fn leave(&self, conn: &mut MultiplexedConnection) {
        let mut p = redis::pipe();
        p.atomic()
            .del(self.key_node(&self.name))
            .ignore()
            .del(self.key_streams(&self.name))
            .ignore()
            .srem(self.key_nodes(), &self.name)
            .ignore()
            .publish(self.channel(), format!("leave {}", self.name))
            .ignore();
        match tokio::time::timeout(self.endpoint.timeout, p.query_async::<()>(conn)).await {
            Ok(Ok(())) => tracing::info!(node = %self.name, "left the cluster"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not leave the cluster: the lease runs out instead")
            }
            Err(_) => {
                tracing::warn!("could not leave the cluster in time: the lease runs out instead")
            }
        }
    }

    /// Sends the requests for tokens, each on its own task (the connection is multiplexed).
    async fn fetch_worker(
        self: Arc<Self>,
        mut rx: UnboundedReceiver<(BucketKey, f64, u32, Fetch)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (key, per_second, burst, fetch) = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            let conn = lock(&self.conn).clone();
            let this = self.clone();
            tokio::spawn(async move {
                let result = match conn {
                    Some(mut c) => {
                        let mut inv = this.take.prepare_invoke();
                        inv.key(this.key_rate(&key.0, key.1))
                            .arg(per_second)
                            .arg(burst)
                            .arg(fetch.debt)
                            .arg(fetch.want)
                            .arg(&this.name)
                            .arg(ACTIVE_WINDOW_MS);
                        io(inv.invoke_async::<(u32, u64, i64, u32)>(&mut c).await)
                    }
                    None => Err("the store is unreachable".into()),
                };
                let (failed, next) = {
                    let mut map = lock(&this.buckets);
                    let b = map.get_mut(&key);
                    match (&result, b) {
                        (Ok((granted, wait_ms, left, active)), Some(b)) => {
                            let answer = Answer {
                                granted: *granted,
                                wait: Duration::from_millis(*wait_ms),
                                left: *left,
                                active: *active,
                            };
                            (None, b.fetched(answer, Instant::now()))
                        }
                        (Ok(_), None) => (None, None),
                        (Err(e), b) => {
                            if let Some(b) = b {
                                b.fetch_failed();
                            }
                            (Some(e.clone()), None)
                        }
                    }
                };
                if let Some(f) = next {
                    let _ = this.fetches.send((key, per_second, burst, f));
                }
                let label = if failed.is_some() { "error" } else { "ok" };
                this.metrics.rate_requests.with_label_values(&[label]).inc();
                if let Some(e) = failed
                    && this.is_up()
                {
                    this.fail(format!("rate bucket: {e}"));
                }
            });
        }
    }

    /// The number of nodes the per-node shares divide by (the last read; at least 1).
    fn share_nodes(&self) -> usize {
        self.replica().live(Instant::now(), true).count().max(1)
    }

    fn fallback(&self, which: usize, limit: &str, detail: &str) {
        self.metrics.fallback.with_label_values(&[limit]).inc();
        if !self.fallback_logged[which].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit,
                detail,
                "cluster store unreachable: enforcing a per-node share of the limit (counted in fedgate_cluster_limit_fallback_total)"
            );
        }
    }

    /// Domains → nodes with their component attached (phase-2 routing reads this).
    pub fn serving(&self, domain: &str) -> Vec<String> {
        self.replica()
            .serving(&self.name, domain, Instant::now(), !self.is_up())
    }
}

/// (record, remaining lease, streams) from GET, PTTL, HGETALL values.
fn parse_node(name: &str, v: &[Value]) -> Option<(NodeRecord, Duration, HashMap<String, u32>)> {
    let [rec, ttl, streams] = v else {
        return None;
    };
    let json: Option<String> = redis::from_redis_value_ref(rec).ok()?;
    let record: NodeRecord = match serde_json::from_str(&json?) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "unreadable node record in the cluster store");
            return None;
        }
    };
    let ttl: i64 = redis::from_redis_value_ref(ttl).ok()?;
    if ttl <= 0 {
        return None;
    }
    let streams: HashMap<String, u32> = redis::from_redis_value_ref(streams).unwrap_or_default();
    Some((record, Duration::from_millis(ttl as u64), streams))
}

impl SharedStreams for RedisStore {
    fn admit(&self, remote: &str, local: u32, max: u32) -> Result<(), u32> {
        if self.is_up() {
            let others =
                self.replica()
                    .streams_elsewhere(&self.name, remote, Instant::now(), false);
            if local + others >= max {
                return Err(local + others);
            }
            return Ok(());
        }
        let n = self.share_nodes();
        let share = per_node_share(max, n);
        self.fallback(
            1,
            "max_streams",
            &format!("{remote}: at most {share} of {max} inbound streams on this node ({n} nodes)"),
        );
        if local >= share { Err(local) } else { Ok(()) }
    }

    fn changed(&self, remote: &str, local: u32) {
        let mut s = lock(&self.own_streams);
        if local == 0 {
            s.remove(remote);
        } else {
            s.insert(remote.to_owned(), local);
        }
        drop(s);
        self.dirty.notify_one();
    }
}

impl SharedRate for RedisStore {
    fn take(&self, remote: &str, inbound: bool, per_second: f64, burst: u32) -> RateVerdict {
        if !self.is_up() {
            let n = self.share_nodes();
            let share = per_node_share(burst, n);
            self.fallback(
                0,
                "rate",
                &format!(
                    "{remote}: {:.3}/s burst {share} on this node ({n} nodes)",
                    per_second / n as f64
                ),
            );
            return RateVerdict::PerNode {
                per_second: per_second / n as f64,
                burst: share,
            };
        }
        let now = Instant::now();
        let nodes = self.replica().live(now, false).count().max(1);
        let key = (remote.to_owned(), inbound);
        let (ok, fetch) = {
            let mut map = lock(&self.buckets);
            if map.len() >= MAX_BUCKETS {
                map.retain(|_, b| !b.idle());
            }
            let b = map
                .entry(key.clone())
                .or_insert_with(|| SharedBucket::new(per_second, burst, nodes, now));
            if b.per_second != per_second || b.burst != burst {
                // The policy changed the limit.
                *b = SharedBucket::new(per_second, burst, nodes, now);
            }
            b.take(now)
        };
        if let Some(f) = fetch {
            let _ = self.fetches.send((key, per_second, burst, f));
        }
        if ok {
            RateVerdict::Allowed
        } else {
            RateVerdict::Refused
        }
    }
}
