//! `fedgate bench directory`: the intercluster directory's figures.
//!
//! - full sync: a cluster hosting N users (75,000 by default, the largest cluster size of the
//!   design) and a new peer, joined by a real mutually authenticated TLS link on loopback:
//!   time from the link being dialed until the new peer's replica holds every user;
//! - delta propagation: single-user changes at the origin, time until the peer resolves the
//!   user (p50/p99);
//! - memory: resident memory added by a directory holding the replicas of P peers of N users
//!   each (the sans-IO directory, as every gateway keeps it);
//! - conflicts: in that directory, the time a snapshot repair of one peer holds the directory
//!   (with 1 % of its users also claimed by another peer at the same epoch), and the time to
//!   list the conflicts (what `/status` and the housekeeping do).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fedgate_certs::dev::LeafSpec;
use fedgate_certs::{Identity, PeerVerifier, TrustAnchors};
use fedgate_intercluster::directory::{Digest, Directory, Entries};
use fedgate_intercluster::driver::{Host, Intercluster, PeerConfig, Settings};
use fedgate_s2s::driver::{Origin, Stanza};
use fedgate_s2s::element::{Element, NS_CONTENT};
use fedgate_s2s::wire::ErrorType;

use super::{quantile, rss_kib, thousands};

pub struct DirectoryOpts {
    pub users: usize,
    pub peers: usize,
    pub deltas: usize,
    /// Stanzas routed over the link for the throughput figure.
    pub routed: usize,
}

/// Routes `n` messages from `from` to a user homed at the other cluster, at most 4,000 in
/// flight, and reports stanzas/s until the other side has delivered them all.
async fn route(from: &Intercluster, at: &Counting, n: usize) -> anyhow::Result<()> {
    let to = "u000001@example.test/desk";
    let body = "x".repeat(120);
    let stanza = |i: usize| {
        let el = Element::new("message", NS_CONTENT)
            .with_attr("from", "bench@b.bench.test/r")
            .with_attr("to", to)
            .with_attr("id", &format!("r{i}"))
            .with_child(Element::new("body", NS_CONTENT).with_text(&body));
        let size = el.wire_len();
        Stanza::new(el, size, Origin::Gateway)
    };
    let base = at.delivered.load(Ordering::Relaxed);
    let done = || at.delivered.load(Ordering::Relaxed) - base;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let mut sent = 0;
    while done() < n as u64 {
        anyhow::ensure!(Instant::now() < deadline, "routing did not finish in 120 s");
        anyhow::ensure!(
            at.bounced.load(Ordering::Relaxed) == 0,
            "a routed stanza bounced"
        );
        while sent < n && sent as u64 - done() < 4000 {
            anyhow::ensure!(
                from.route(stanza(sent)).is_ok(),
                "the user is not routed to the peer"
            );
            sent += 1;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "routing: {} messages over the link, acknowledged and delivered, in {:.0} ms: {} stanzas/s",
        thousands(n as u64),
        secs * 1e3,
        thousands((n as f64 / secs) as u64)
    );
    Ok(())
}

/// Counts what the links deliver and bounce (and delivers nowhere).
#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
    bounced: AtomicU64,
}

impl Host for Counting {
    fn deliver(&self, _: Stanza) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    fn bounce(&self, _: &Stanza, _: ErrorType, _: &str, _: &str, _: &str) {
        self.bounced.fetch_add(1, Ordering::Relaxed);
    }
}

fn users(prefix: &str, n: usize) -> HashMap<String, u64> {
    (0..n)
        .map(|i| (format!("{prefix}{i:06}@example.test"), 1))
        .collect()
}

/// RSS before and after (KiB).
type Rss = (u64, u64);
/// Snapshot repair time, conflict listing time, conflicts found.
type ConflictFigures = (Duration, Duration, usize);

fn memory(o: &DirectoryOpts) -> Option<(Rss, ConflictFigures)> {
    let pid = std::process::id();
    let before = rss_kib(pid)?;
    let mut dir = Directory::new("bench", 1, 1000);
    for p in 0..o.peers {
        let entries: Vec<(String, u64)> = (0..o.users)
            .map(|i| (format!("user{p}x{i:06}@example.test"), 1))
            .collect();
        let digest = Digest::of(entries.iter().map(|(u, e)| (u.as_str(), *e)));
        dir.apply_snapshot(&format!("peer{p}"), 1, 1, entries, digest)
            .ok()?;
    }
    let after = rss_kib(pid)?;
    let total = (0..o.peers)
        .map(|p| dir.users_of(&format!("peer{p}")))
        .sum::<usize>();
    assert_eq!(total, o.peers * o.users);
    // A repair snapshot of peer0 that also lists 1 % of peer1's users, at the same epoch.
    let mut entries: Vec<(String, u64)> = (0..o.users)
        .map(|i| (format!("user0x{i:06}@example.test"), 1))
        .collect();
    if o.peers > 1 {
        entries.extend((0..o.users / 100).map(|i| (format!("user1x{i:06}@example.test"), 1)));
    }
    let digest = Digest::of(entries.iter().map(|(u, e)| (u.as_str(), *e)));
    // The link builds the map as the entries arrive; the directory is held for the swap.
    let mut built = Entries::default();
    for (u, e) in entries {
        built.insert(u, e);
    }
    let t = Instant::now();
    dir.apply_snapshot_entries("peer0", 1, 2, built, digest)
        .ok()?;
    let repair = t.elapsed();
    let t = Instant::now();
    let found = dir.conflicts().len();
    let listing = t.elapsed();
    drop(dir);
    Some(((before, after), (repair, listing, found)))
}

async fn node(
    pki: &crate::labpki::LabPki,
    name: &str,
    ip: &str,
    host: Arc<Counting>,
) -> anyhow::Result<(Arc<Intercluster>, String)> {
    let (c, k) = pki.issue(name, &LeafSpec::dns(&[name]))?;
    let id = Identity::load(name, &c, &k)?;
    let anchors = Arc::new(TrustAnchors::new(false, &[pki.ca_path()])?);
    let mut s = Settings::new(name, "bench");
    s.backoff_min = Duration::from_millis(20);
    s.backoff_max = Duration::from_millis(200);
    let ic = Intercluster::new(
        s,
        id,
        Arc::new(PeerVerifier::new(anchors)),
        host,
        &prometheus::Registry::new(),
    );
    let l = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .with_context(|| format!("bind {ip}"))?;
    let addr = l.local_addr()?.to_string();
    ic.listen(l);
    Ok((ic, addr))
}

pub async fn run(o: DirectoryOpts) -> anyhow::Result<()> {
    println!(
        "directory bench: {} users per cluster, {} peers for the memory figure, {} deltas",
        thousands(o.users as u64),
        o.peers,
        o.deltas
    );
    match memory(&o) {
        Some(((before, after), conflicts)) => {
            println!(
                "memory: {} peers x {} users = {} entries: RSS +{} KiB ({:.0} bytes per entry)",
                o.peers,
                thousands(o.users as u64),
                thousands((o.peers * o.users) as u64),
                thousands(after.saturating_sub(before)),
                after.saturating_sub(before) as f64 * 1024.0 / (o.peers * o.users) as f64
            );
            let (repair, listing, found) = conflicts;
            println!(
                "conflicts: a snapshot repair of one peer holds the directory {:.1} ms; listing the {} conflicts takes {:.3} ms",
                repair.as_secs_f64() * 1e3,
                thousands(found as u64),
                listing.as_secs_f64() * 1e3
            );
        }
        None => println!("memory: /proc/self/status not readable"),
    }

    let pki = crate::labpki::LabPki::new("fedgate directory bench CA")?;
    let at_origin = Arc::new(Counting::default());
    let (origin, origin_addr) = node(&pki, "a-origin", "127.0.6.1", at_origin.clone()).await?;
    let (fresh, fresh_addr) = node(&pki, "b-fresh", "127.0.6.2", Arc::default()).await?;
    let t = Instant::now();
    origin.set_source("file", users("u", o.users));
    println!(
        "origin: {} users loaded in {:.0} ms",
        thousands(o.users as u64),
        t.elapsed().as_secs_f64() * 1e3
    );
    fresh.set_peers(&[PeerConfig {
        name: "a-origin".into(),
        address: Some(origin_addr),
    }]);
    // a-origin sorts first: it dials the new peer.
    let t = Instant::now();
    origin.set_peers(&[PeerConfig {
        name: "b-fresh".into(),
        address: Some(fresh_addr),
    }]);
    let deadline = t + Duration::from_secs(60);
    while fresh.replica("a-origin").1 < o.users {
        anyhow::ensure!(
            Instant::now() < deadline,
            "full sync did not finish in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let full = t.elapsed();
    println!(
        "full sync: {} users to a new peer over TLS in {:.0} ms (target <= 2000 ms)",
        thousands(o.users as u64),
        full.as_secs_f64() * 1e3
    );

    let mut lat_us: Vec<u32> = Vec::with_capacity(o.deltas);
    for i in 0..o.deltas {
        let user = format!("delta{i:05}@example.test");
        let t = Instant::now();
        origin.assign(&user, Some(1));
        let deadline = t + Duration::from_secs(10);
        while fresh.lookup(&user).0.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "a delta did not arrive in 10 s");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        lat_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat_us.sort_unstable();
    println!(
        "delta propagation ({} single-user changes, {} users at the origin): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 1000 ms)",
        o.deltas,
        thousands(o.users as u64),
        f64::from(quantile(&lat_us, 0.50)) / 1e3,
        f64::from(quantile(&lat_us, 0.99)) / 1e3,
        f64::from(lat_us.last().copied().unwrap_or(0)) / 1e3
    );
    route(&fresh, &at_origin, o.routed).await?;
    origin.shutdown();
    fresh.shutdown();
    Ok(())
}
