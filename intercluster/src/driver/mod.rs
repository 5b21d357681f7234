//! The tokio side: one mutually authenticated TLS link per peer cluster, the directory behind
//! a lock, per-peer bounded queues, acknowledged routes handed over to the next link
//! ([`crate::delivery`]), reconnects with backoff and jitter, housekeeping (queue expiry,
//! gauges, conflict reports), peers added and removed at runtime.
//!
//! Who dials: of two clusters, the one whose name sorts first connects (when it knows the
//! other's address); the other only accepts. Both must list each other as peers: a link from
//! a cluster that is not a configured peer is refused (`cert-name`).
//!
//! Stanzas come in through [`Intercluster::route`] and leave through the [`Host`] the root
//! crate implements (local delivery, bounces).

mod link;
pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use fedgate_certs::{Identity, IdentityStore, PeerVerifier};
use fedgate_s2s::driver::receipt::{Confirm, Receipt};
use fedgate_s2s::driver::{Origin, Stanza};
use fedgate_s2s::wire::ErrorType;
use fedgate_s2s::xml::Limits;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::delivery::{Delivery, Taken};
use crate::directory::{Conflict, Directory, Home};
use crate::failure::LinkFailure;
use crate::queue::BoundedQueue;
use crate::routing::{Decision, decide};
use crate::session::SessionSettings;
use crate::sources::Sources;
use crate::wire::Routed;

pub use metrics::Metrics;

/// Default link port.
pub const DEFAULT_PORT: u16 = 7400;
/// ALPN protocol id of the links.
pub const ALPN: &[u8] = b"fedgate-intercluster/0";

/// What the driver needs from the gateway.
pub trait Host: Send + Sync + 'static {
    /// Deliver a stanza to a local user (its origin is [`Origin::Intercluster`]).
    fn deliver(&self, st: Stanza);
    /// Answer a stanza with an error (or count it dropped when it may not be answered).
    fn bounce(&self, st: &Stanza, etype: ErrorType, condition: &str, reason: &str, text: &str);
}

/// A peer cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's cluster name (must be in its certificate's subjectAltName).
    pub name: String,
    /// `host:port` or `host` (port 7400); needed on the side that dials.
    #[serde(default)]
    pub address: Option<String>,
}

/// Settings of the links.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    /// Digest of what must agree between clusters (see [`consistency_digest`]).
    pub consistency: String,
    pub session: SessionSettings,
    pub queue_max_bytes: usize,
    pub queue_max_age: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Own changes kept for peers that reconnect (older positions get a snapshot).
    pub log_cap: usize,
    pub limits: Limits,
}

impl Settings {
    pub fn new(cluster: &str, consistency: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            consistency: consistency.to_owned(),
            session: SessionSettings::default(),
            queue_max_bytes: 4 * 1024 * 1024,
            queue_max_age: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            log_cap: 200_000,
            limits: Limits {
                max_stanza_bytes: 1024 * 1024,
                max_depth: 32,
                max_attrs: 64,
            },
        }
    }
}

/// The digest of what must agree between clusters: the hosted domain set, the address scheme
/// and the policy revision (FNV-1a 64 in hex over a canonical text form).
pub fn consistency_digest(domains: &[String], scheme: &str, policy_revision: &str) -> String {
    let mut d: Vec<String> = domains.iter().map(|s| s.to_ascii_lowercase()).collect();
    d.sort();
    d.dedup();
    let text = format!(
        "domains={}\nscheme={scheme}\npolicy={policy_revision}\n",
        d.join(",")
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Link state of a peer, for `/status`.
#[derive(Debug, Clone, Default)]
struct LinkStatus {
    up: bool,
    since: Option<i64>,
    last_error: Option<(i64, LinkFailure)>,
    last_reconcile: Option<i64>,
    flagged: Option<String>,
    lag: Duration,
    incarnation_changes: u64,
}

struct Peer {
    name: String,
    address: Mutex<Option<String>>,
    queue: Mutex<BoundedQueue<(Stanza, u8)>>,
    /// Routes sent and not yet acknowledged (with the receipts of the stanzas in them), and
    /// what was taken from the peer: they outlive links. Lock order: `delivery` before
    /// `queue`.
    delivery: Mutex<Delivery<Vec<Receipt>>>,
    /// Where receipts of routes taken from the peer confirm (one per peer incarnation).
    confirmer: Mutex<Option<(u64, Arc<dyn Confirm>)>>,
    wake: Notify,
    /// More routes taken from the peer were taken care of: time to acknowledge them.
    confirmed: Notify,
    status: Mutex<LinkStatus>,
    /// Removal of the peer (or shutdown) stops its tasks.
    stop: watch::Sender<bool>,
    /// Each new link gets a generation; an older link sees it changed and ends.
    generation: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Confirms routes taken from one incarnation of a peer (see [`Peer::receipt`]).
struct RouteConfirm {
    peer: Weak<Peer>,
    epoch: u64,
}

impl Confirm for RouteConfirm {
    fn confirm(&self, seq: u64) {
        let Some(peer) = self.peer.upgrade() else {
            return;
        };
        let grew = lock(&peer.delivery).confirm(Taken {
            epoch: self.epoch,
            seq,
        });
        if grew {
            peer.confirmed.notify_one();
        }
    }
}

impl Peer {
    /// The receipt of a route taken from this peer: when it fires, the route counts as
    /// confirmed and is acknowledged to the peer.
    fn receipt(self: &Arc<Self>, taken: Taken) -> Receipt {
        let mut c = lock(&self.confirmer);
        let owner = match &*c {
            Some((epoch, owner)) if *epoch == taken.epoch => owner.clone(),
            _ => {
                let owner: Arc<dyn Confirm> = Arc::new(RouteConfirm {
                    peer: Arc::downgrade(self),
                    epoch: taken.epoch,
                });
                *c = Some((taken.epoch, owner.clone()));
                owner
            }
        };
        Receipt::new(taken.seq, owner)
    }
}

/// The intercluster runtime of one gateway.
pub struct Intercluster {
    settings: Settings,
    dir: Mutex<Directory>,
    sources: Mutex<Sources>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    host: Arc<dyn Host>,
    pub metrics: Metrics,
    /// Own log head, for the links to push changes.
    changed: watch::Sender<u64>,
    /// The consistency digest links are set up with (starts as `settings.consistency`); a
    /// change sets every link up again, so that peers compare the new one.
    consistency: watch::Sender<String>,
    shutdown: watch::Sender<bool>,
    server_tls: tokio_rustls::TlsAcceptor,
    client_tls: tokio_rustls::TlsConnector,
    verifier: Arc<PeerVerifier>,
}

impl Intercluster {
    /// A runtime for `settings.cluster` presenting `identity` on its links and checking peers
    /// with `verifier`. Nothing runs until [`Self::listen`] / [`Self::set_peers`].
    pub fn new(
        settings: Settings,
        identity: Identity,
        verifier: Arc<PeerVerifier>,
        host: Arc<dyn Host>,
        registry: &prometheus::Registry,
    ) -> Arc<Self> {
        let mut store = IdentityStore::new();
        store.insert(identity);
        let store = Arc::new(store);
        let server_tls = tokio_rustls::TlsAcceptor::from(fedgate_certs::server_config_for(
            store.clone(),
            &settings.cluster,
            vec![ALPN.to_vec()],
        ));
        let client_tls = tokio_rustls::TlsConnector::from(fedgate_certs::client_config_for(
            store,
            &settings.cluster,
            vec![ALPN.to_vec()],
        ));
        let incarnation = rand::random::<u64>() | 1;
        let dir = Directory::new(&settings.cluster, incarnation, settings.log_cap);
        let ic = Arc::new(Self {
            dir: Mutex::new(dir),
            sources: Mutex::new(Sources::default()),
            peers: Mutex::new(BTreeMap::new()),
            host,
            metrics: Metrics::new(registry),
            changed: watch::channel(0).0,
            consistency: watch::channel(settings.consistency.clone()).0,
            shutdown: watch::channel(false).0,
            server_tls,
            client_tls,
            verifier,
            settings,
        });
        tokio::spawn(housekeeping(Arc::downgrade(&ic), ic.shutdown.subscribe()));
        ic
    }

    pub fn cluster(&self) -> &str {
        &self.settings.cluster
    }

    /// A new consistency digest (the policy was reloaded, say): every link is set up again
    /// and the peers compare it (refused or flagged as configured). Whether it changed.
    pub fn set_consistency(&self, digest: &str) -> bool {
        let changed = self.consistency.send_if_modified(|c| {
            let differs = c != digest;
            if differs {
                digest.clone_into(c);
            }
            differs
        });
        if changed {
            tracing::info!(
                consistency = digest,
                "consistency digest changed: setting every intercluster link up again"
            );
        }
        changed
    }

    pub fn incarnation(&self) -> u64 {
        lock(&self.dir).incarnation()
    }

    /// Accepts links on `listener`.
    pub fn listen(self: &Arc<Self>, listener: TcpListener) {
        tokio::spawn(link::accept_loop(self.clone(), listener));
    }

    /// Stops every link.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for p in lock(&self.peers).values() {
            let _ = p.stop.send(true);
        }
    }

    fn dir(&self) -> MutexGuard<'_, Directory> {
        lock(&self.dir)
    }

    // ---- users ---------------------------------------------------------------------------

    /// Replaces the users `source` provides ("file", "ldap", "admin", …) and publishes the
    /// difference. Returns the number of own-log changes.
    pub fn set_source(&self, source: &str, users: HashMap<String, u64>) -> usize {
        let merged = {
            let mut s = lock(&self.sources);
            s.set(source, users);
            s.merged()
        };
        self.publish(&merged)
    }

    fn publish(&self, merged: &HashMap<String, u64>) -> usize {
        let (n, seq, own) = {
            let mut d = self.dir();
            let n = d.set_own(merged);
            (n, d.seq(), d.own_users())
        };
        self.metrics.own_entries.set(own as i64);
        if n > 0 {
            let _ = self.changed.send(seq);
        }
        n
    }

    /// Admin assignment: this cluster hosts `user` from now on, with `epoch` or (none) one
    /// more than the highest epoch any cluster claims it with (an explicit move). Returns the
    /// epoch used.
    pub fn assign(&self, user: &str, epoch: Option<u64>) -> u64 {
        let user = crate::sources::user_key(user);
        let epoch = epoch.unwrap_or_else(|| self.move_epoch(&user));
        let merged = {
            let mut s = lock(&self.sources);
            s.put(crate::sources::ADMIN, &user, epoch);
            s.merged()
        };
        self.publish(&merged);
        epoch
    }

    /// The epoch that moves `user` here: one more than the highest any cluster claims it with.
    pub fn move_epoch(&self, user: &str) -> u64 {
        self.dir()
            .max_epoch(&crate::sources::user_key(user))
            .saturating_add(1)
    }

    /// The users `source` provides now.
    pub fn source_users(&self, source: &str) -> HashMap<String, u64> {
        lock(&self.sources).get(source)
    }

    /// Removes an admin assignment; whether there was one.
    pub fn unassign(&self, user: &str) -> bool {
        let user = crate::sources::user_key(user);
        let (had, merged) = {
            let mut s = lock(&self.sources);
            (s.remove(crate::sources::ADMIN, &user), s.merged())
        };
        self.publish(&merged);
        had
    }

    /// Where `user` lives and every claim on it.
    pub fn lookup(&self, user: &str) -> (Option<Home>, Vec<(String, u64)>) {
        let user = crate::sources::user_key(user);
        let d = self.dir();
        (d.resolve(&user), d.claims(&user))
    }

    pub fn conflicts(&self) -> Vec<Conflict> {
        self.dir().conflicts()
    }

    /// (incarnation, seq) of the replica of `peer`, and its entry count.
    pub fn replica(&self, peer: &str) -> (Option<(u64, u64)>, usize) {
        let d = self.dir();
        (d.replica_position(peer), d.users_of(peer))
    }

    /// Own (incarnation, seq, users).
    pub fn own(&self) -> (u64, u64, usize) {
        let d = self.dir();
        (d.incarnation(), d.seq(), d.own_users())
    }

    // ---- peers ---------------------------------------------------------------------------

    /// The peer set becomes `peers`: new ones are added (and dialed when this side dials),
    /// missing ones removed (their link closed, their queue bounced, their replica dropped),
    /// changed addresses used from the next attempt.
    pub fn set_peers(self: &Arc<Self>, peers: &[PeerConfig]) {
        let wanted: BTreeMap<&str, &PeerConfig> = peers
            .iter()
            .filter(|p| p.name != self.settings.cluster)
            .map(|p| (p.name.as_str(), p))
            .collect();
        let mut removed = Vec::new();
        {
            let mut map = lock(&self.peers);
            map.retain(|name, p| {
                let keep = wanted.contains_key(name.as_str());
                if !keep {
                    removed.push(p.clone());
                }
                keep
            });
            for (name, cfg) in &wanted {
                if let Some(p) = map.get(*name) {
                    *lock(&p.address) = cfg.address.clone();
                    continue;
                }
                let peer = Arc::new(Peer {
                    name: (*name).to_owned(),
                    address: Mutex::new(cfg.address.clone()),
                    queue: Mutex::new(BoundedQueue::new(
                        self.settings.queue_max_bytes,
                        self.settings.queue_max_age,
                    )),
                    delivery: Mutex::new(Delivery::default()),
                    confirmer: Mutex::new(None),
                    wake: Notify::new(),
                    confirmed: Notify::new(),
                    status: Mutex::new(LinkStatus::default()),
                    stop: watch::channel(false).0,
                    generation: watch::channel(0).0,
                });
                self.metrics.link_up.with_label_values(&[name]).set(0);
                tracing::info!(peer = %name, address = ?cfg.address, "intercluster peer added");
                if self.settings.cluster.as_str() < *name {
                    let span = tracing::info_span!(
                        "intercluster",
                        direction = "out",
                        peer = %name,
                        generation = tracing::field::Empty,
                    );
                    tokio::spawn(tracing::Instrument::instrument(
                        link::dial_loop(self.clone(), peer.clone()),
                        span,
                    ));
                }
                map.insert((*name).to_owned(), peer);
            }
        }
        for p in removed {
            tracing::info!(peer = %p.name, "intercluster peer removed");
            let _ = p.stop.send(true);
            let text = format!(
                "fedgate: intercluster: cluster {} is no longer a peer",
                p.name
            );
            let unacked = lock(&p.delivery).drain();
            self.bounce_routes(
                &p.name,
                unacked,
                ErrorType::Cancel,
                "service-unavailable",
                "peer-removed",
                &format!("{text}; it may or may not have received this stanza"),
            );
            let items = lock(&p.queue).drain();
            for (st, _) in items {
                self.bounce(
                    &p.name,
                    &st,
                    ErrorType::Cancel,
                    "service-unavailable",
                    "peer-removed",
                    &text,
                );
            }
            self.dir().forget(&p.name);
            self.metrics.link_up.with_label_values(&[&p.name]).set(0);
            self.metrics
                .queue_depth
                .with_label_values(&[&p.name])
                .set(0);
            self.metrics.unacked.with_label_values(&[&p.name]).set(0);
            self.metrics.entries.with_label_values(&[&p.name]).set(0);
        }
    }

    pub fn peer_names(&self) -> Vec<String> {
        lock(&self.peers).keys().cloned().collect()
    }

    fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        lock(&self.peers).get(name).cloned()
    }

    pub fn is_peer(&self, name: &str) -> bool {
        lock(&self.peers).contains_key(name)
    }

    // ---- routing -------------------------------------------------------------------------

    /// A stanza for a hosted domain: `Ok` when it went (or waits) for a peer cluster, `Err`
    /// (the stanza back) when it is for this cluster: its user is homed here or listed in no
    /// directory, or it came over a link already.
    #[allow(clippy::result_large_err)]
    pub fn route(&self, st: Stanza) -> Result<(), Stanza> {
        if matches!(st.origin, Origin::Intercluster { .. }) {
            return Err(st);
        }
        let Some(to) = st.el.attr("to") else {
            return Err(st);
        };
        match self.decide(to, None) {
            (Decision::Peer { hops, .. }, Some(peer)) => {
                self.enqueue(&peer, st, hops);
                Ok(())
            }
            _ => Err(st),
        }
    }

    /// Where a stanza for `to` goes and, when to a peer, that peer: one look at the peer set
    /// per stanza.
    fn decide(&self, to: &str, arrived_hops: Option<u8>) -> (Decision, Option<Arc<Peer>>) {
        let peers = lock(&self.peers);
        let decision = decide(&self.dir(), |p| peers.contains_key(p), to, arrived_hops);
        let peer = match &decision {
            Decision::Peer { peer, .. } => peers.get(peer).cloned(),
            _ => None,
        };
        (decision, peer)
    }

    fn bounce(
        &self,
        peer: &str,
        st: &Stanza,
        etype: ErrorType,
        cond: &str,
        reason: &str,
        text: &str,
    ) {
        self.metrics
            .bounces
            .with_label_values(&[peer, reason])
            .inc();
        self.host.bounce(st, etype, cond, reason, text);
    }

    /// Bounces each stanza of `routes` (their recipients expanded); then lets go of what
    /// they held, which acknowledges them to their own senders.
    fn bounce_routes(
        &self,
        peer: &str,
        routes: Vec<(Routed, Vec<Receipt>)>,
        etype: ErrorType,
        cond: &str,
        reason: &str,
        text: &str,
    ) {
        for (route, held) in routes {
            for el in route.expand() {
                let size = el.wire_len();
                let st = Stanza::new(el, size, Origin::Gateway);
                self.bounce(peer, &st, etype, cond, reason, text);
            }
            drop(held);
        }
    }

    fn enqueue(&self, peer: &Peer, st: Stanza, hops: u8) {
        let peer_name = peer.name.as_str();
        let size = st.size.max(64);
        let mut q = lock(&peer.queue);
        // Removed after the routing decision: the removal drained the queue already, and
        // nothing would send or bounce what waited in it.
        if *peer.stop.borrow() {
            drop(q);
            let (etype, reason, text) = if *self.shutdown.borrow() {
                (
                    ErrorType::Wait,
                    "shutdown",
                    "fedgate is shutting down".to_owned(),
                )
            } else {
                (
                    ErrorType::Cancel,
                    "peer-removed",
                    format!("cluster {peer_name} is no longer a peer"),
                )
            };
            self.bounce(
                peer_name,
                &st,
                etype,
                "service-unavailable",
                reason,
                &format!("fedgate: intercluster: {text}"),
            );
            return;
        }
        let r = q.push((st, hops), size, Instant::now());
        drop(q);
        match r {
            Ok(()) => peer.wake.notify_one(),
            Err((st, _)) => self.bounce(
                peer_name,
                &st,
                ErrorType::Wait,
                "service-unavailable",
                "queue-full",
                &format!("fedgate: intercluster: the queue to cluster {peer_name} is full"),
            ),
        }
    }

    /// A route that arrived over the link from `from`; `receipt` (shared by the stanzas it
    /// carries) fires once each was delivered to its next hop, which confirmed it, or answered.
    fn on_routed(&self, from: &str, r: Routed, receipt: Option<Receipt>) {
        let hops = r.hops;
        let routed_in = self.metrics.routed.with_label_values(&[from, "in"]);
        for mut el in r.expand() {
            // The peer cluster's gateway canonicalized the addresses where the stanza entered
            // there; this link is an edge all the same (checked without allocating).
            let malformed = fedgate_s2s::address::canonicalize_stanza(&mut el).err();
            let size = el.wire_len();
            let mut st = Stanza::new(
                el,
                size,
                Origin::Intercluster {
                    peer: from.to_owned(),
                },
            );
            st.receipt = receipt.clone();
            routed_in.inc();
            if let Some(why) = malformed {
                self.bounce(
                    from,
                    &st,
                    ErrorType::Modify,
                    "jid-malformed",
                    "address",
                    &format!("fedgate: address: {why}"),
                );
                continue;
            }
            let to = st.el.attr("to").unwrap_or_default().to_owned();
            match self.decide(&to, Some(hops)) {
                (Decision::Peer { hops, .. }, Some(peer)) => {
                    tracing::debug!(%to, from, via = %peer.name, "forwarding once to the user's home");
                    self.enqueue(&peer, st, hops)
                }
                (Decision::Local | Decision::Peer { .. }, _) => self.host.deliver(st),
                (Decision::LoopGuard { home }, _) => self.bounce(
                    from,
                    &st,
                    ErrorType::Cancel,
                    "service-unavailable",
                    "loop-guard",
                    &format!("fedgate: intercluster: {to} is not hosted here and was forwarded already (directory says {home})"),
                ),
            }
        }
    }

    // ---- status --------------------------------------------------------------------------

    /// The `/status` section.
    pub fn status_json(&self) -> serde_json::Value {
        let conflicts = self.conflicts();
        self.metrics.conflicts.set(conflicts.len() as i64);
        let (inc, seq, own) = self.own();
        let peers: serde_json::Map<String, serde_json::Value> = lock(&self.peers)
            .values()
            .map(|p| {
                let st = lock(&p.status).clone();
                // One lock at a time (the link task takes `delivery` then `queue`).
                let queue_depth = lock(&p.queue).len();
                let unacked = lock(&p.delivery).unacked_len();
                let (pos, users) = self.replica(&p.name);
                let n_conf = conflicts
                    .iter()
                    .filter(|c| c.clusters.iter().any(|x| *x == p.name))
                    .count();
                (
                    p.name.clone(),
                    serde_json::json!({
                        "address": lock(&p.address).clone(),
                        "link": if st.up { "up" } else { "down" },
                        "since": st.since,
                        "users": users,
                        "incarnation": pos.map(|(i, _)| format!("{i:016x}")),
                        "replica_seq": pos.map(|(_, s)| s),
                        "sync_lag_seconds": st.lag.as_secs_f64(),
                        "last_reconcile": st.last_reconcile,
                        "incarnation_changes": st.incarnation_changes,
                        "conflicts": n_conf,
                        "consistency": st.flagged.as_deref().map_or("ok", |_| "mismatch"),
                        "consistency_detail": st.flagged,
                        "queue_depth": queue_depth,
                        "unacked": unacked,
                        "last_error": st.last_error.as_ref().map(|(at, f)| serde_json::json!({
                            "at": at, "kind": f.kind.as_str(), "detail": f.detail,
                        })),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "cluster": self.settings.cluster,
            "incarnation": format!("{inc:016x}"),
            "seq": seq,
            "users": own,
            "sources": lock(&self.sources).counts(),
            "consistency": *self.consistency.borrow(),
            "conflicts": conflicts.len(),
            "peers": peers,
        })
    }

    fn refresh_gauges(&self) {
        for p in lock(&self.peers).values() {
            let (_, users) = self.replica(&p.name);
            let lag = lock(&p.status).lag;
            self.metrics
                .entries
                .with_label_values(&[&p.name])
                .set(users as i64);
            self.metrics
                .lag_seconds
                .with_label_values(&[&p.name])
                .set(lag.as_secs_f64());
            self.metrics
                .queue_depth
                .with_label_values(&[&p.name])
                .set(lock(&p.queue).len() as i64);
            self.metrics
                .unacked
                .with_label_values(&[&p.name])
                .set(lock(&p.delivery).unacked_len() as i64);
        }
    }
}

/// Every 200 ms: expire queued and unacknowledged stanzas (bounce), refresh gauges, log the
/// conflicts that are new (the directory keeps them up to date).
async fn housekeeping(ic: Weak<Intercluster>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(ic) = ic.upgrade() else {
            return;
        };
        let now = Instant::now();
        let peers: Vec<Arc<Peer>> = lock(&ic.peers).values().cloned().collect();
        for p in peers {
            // Routes sent on a link that broke before the peer acknowledged them wait for
            // the next link as long as queued stanzas do (not once a link has resumed: the
            // check is made under the same lock as the hand-over).
            {
                let lost = lock(&p.delivery).expire(now, ic.settings.queue_max_age);
                ic.bounce_routes(
                    &p.name,
                    lost,
                    ErrorType::Wait,
                    "remote-server-timeout",
                    "link-down",
                    &format!(
                        "fedgate: intercluster: the link to cluster {} (the recipient's home) broke before it confirmed this stanza, and it has not come back",
                        p.name
                    ),
                );
            }
            let expired = lock(&p.queue).expire(now);
            for (st, _) in expired {
                ic.bounce(
                    &p.name,
                    &st,
                    ErrorType::Wait,
                    "remote-server-timeout",
                    "link-down",
                    &format!(
                        "fedgate: intercluster: cluster {} (the recipient's home) is unreachable",
                        p.name
                    ),
                );
            }
        }
        ic.refresh_gauges();
        let conflicts = ic.conflicts();
        ic.metrics.conflicts.set(conflicts.len() as i64);
        let users: Vec<String> = conflicts.iter().map(|c| c.user.clone()).collect();
        for c in &conflicts {
            if !known.contains(&c.user) {
                tracing::warn!(user = %c.user, epoch = c.epoch, clusters = ?c.clusters, routed_to = %c.clusters[0], "directory conflict: a user claimed by two clusters with the same epoch");
            }
        }
        known = users;
    }
}

/// The address to dial for a configured `address` (port 7400 when absent).
pub fn with_default_port(address: &str) -> String {
    if address.parse::<SocketAddr>().is_ok() {
        return address.to_owned();
    }
    match address.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() && !address.ends_with(']') => {
            address.to_owned()
        }
        _ => format!("{address}:{DEFAULT_PORT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(with_default_port("127.0.1.5"), "127.0.1.5:7400");
        assert_eq!(with_default_port("127.0.1.5:7401"), "127.0.1.5:7401");
        assert_eq!(
            with_default_port("tokyo.example.test"),
            "tokyo.example.test:7400"
        );
        assert_eq!(
            with_default_port("tokyo.example.test:9"),
            "tokyo.example.test:9"
        );
        assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
    }

    #[test]
    fn the_consistency_digest_covers_domains_scheme_and_policy() {
        let a = consistency_digest(&["b.test".into(), "A.test".into()], "bare", "r1");
        let b = consistency_digest(&["a.test".into(), "b.test".into()], "bare", "r1");
        assert_eq!(a, b);
        assert_ne!(a, consistency_digest(&["a.test".into()], "bare", "r1"));
        assert_ne!(
            a,
            consistency_digest(&["a.test".into(), "b.test".into()], "uri", "r1")
        );
        assert_ne!(
            a,
            consistency_digest(&["a.test".into(), "b.test".into()], "bare", "r2")
        );
    }
}
