//! The driver over real mutually authenticated TLS links on loopback: directory sync, routing
//! between clusters, certificate-name checks, the queue while a peer is down, restart
//! detection.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedgate_certs::dev::{LeafSpec, TestCa};
use fedgate_certs::{Identity, PeerVerifier, TrustAnchors};
use fedgate_intercluster::driver::{Host, Intercluster, PeerConfig, Settings};
use fedgate_s2s::driver::{Origin, Stanza};
use fedgate_s2s::element::{Element, NS_CONTENT};
use fedgate_s2s::wire::ErrorType;

fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(10);
    Ipv4Addr::new(127, 0, 7, NEXT.fetch_add(1, Ordering::Relaxed))
}

#[derive(Default)]
struct TestHost {
    delivered: Mutex<Vec<Stanza>>,
    bounced: Mutex<Vec<(String, String)>>,
}

impl Host for TestHost {
    fn deliver(&self, st: Stanza) {
        self.delivered.lock().unwrap().push(st);
    }
    fn bounce(&self, st: &Stanza, _: ErrorType, condition: &str, reason: &str, _: &str) {
        let to = st.el.attr("to").unwrap_or_default().to_owned();
        self.bounced
            .lock()
            .unwrap()
            .push((to, format!("{condition}/{reason}")));
    }
}

struct Node {
    ic: Arc<Intercluster>,
    host: Arc<TestHost>,
    addr: SocketAddr,
}

async fn node(
    ca: &TestCa,
    name: &str,
    cert_names: &[&str],
    ip: Ipv4Addr,
    consistency: &str,
) -> Node {
    node_with(ca, name, cert_names, ip, consistency, |_| {}).await
}

async fn node_with(
    ca: &TestCa,
    name: &str,
    cert_names: &[&str],
    ip: Ipv4Addr,
    consistency: &str,
    tweak: impl FnOnce(&mut Settings),
) -> Node {
    let (c, k) = ca.issue(&LeafSpec::dns(cert_names)).unwrap();
    let id = Identity::from_pem(name, &c, &k).unwrap();
    let anchors = Arc::new(TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap());
    let verifier = Arc::new(PeerVerifier::new(anchors));
    let host = Arc::new(TestHost::default());
    let mut s = Settings::new(name, consistency);
    s.backoff_min = Duration::from_millis(50);
    s.backoff_max = Duration::from_millis(300);
    s.queue_max_age = Duration::from_secs(2);
    tweak(&mut s);
    let ic = Intercluster::new(s, id, verifier, host.clone(), &prometheus::Registry::new());
    let l = tokio::net::TcpListener::bind((ip, 7400)).await.unwrap();
    let addr = l.local_addr().unwrap();
    ic.listen(l);
    Node { ic, host, addr }
}

fn peer(name: &str, n: &Node) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        address: Some(n.addr.to_string()),
    }
}

fn users(list: &[&str]) -> HashMap<String, u64> {
    list.iter().map(|u| ((*u).to_owned(), 1)).collect()
}

fn message(to: &str, id: &str) -> Stanza {
    let el = Element::new("message", NS_CONTENT)
        .with_attr("from", "bob@b.test/r")
        .with_attr("to", to)
        .with_attr("id", id)
        .with_child(Element::new("body", NS_CONTENT).with_text(id));
    let size = el.to_bytes().len();
    Stanza::new(el, size, Origin::Component("example.test".into()))
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn clusters_sync_their_users_and_route_to_the_home_cluster() {
    let ca = TestCa::new("ic test CA").unwrap();
    let a = node(&ca, "alpha", &["alpha"], next_ip(), "c1").await;
    let b = node(&ca, "beta", &["beta"], next_ip(), "c1").await;
    a.ic.set_source("file", users(&["alice@example.test"]));
    b.ic.set_source("file", users(&["bob@example.test", "carol@example.test"]));
    a.ic.set_peers(&[peer("beta", &b)]);
    b.ic.set_peers(&[peer("alpha", &a)]);
    until("both replicas", || {
        a.ic.replica("beta").1 == 2 && b.ic.replica("alpha").1 == 1
    })
    .await;
    // A stanza entering alpha for bob goes over the link and is delivered at beta.
    assert!(a.ic.route(message("bob@example.test/phone", "m1")).is_ok());
    until("delivery at beta", || {
        b.host.delivered.lock().unwrap().len() == 1
    })
    .await;
    let d = b.host.delivered.lock().unwrap()[0].clone();
    assert_eq!(d.el.attr("to"), Some("bob@example.test/phone"));
    assert_eq!(
        d.origin,
        Origin::Intercluster {
            peer: "alpha".into()
        }
    );
    // Own and unknown users stay local.
    assert!(a.ic.route(message("alice@example.test", "m2")).is_err());
    assert!(a.ic.route(message("nobody@example.test", "m3")).is_err());
    // A delta (new user at beta) arrives, and an explicit move wins by epoch.
    b.ic.set_source(
        "file",
        users(&["bob@example.test", "carol@example.test", "dan@example.test"]),
    );
    until("delta", || a.ic.lookup("dan@example.test").0.is_some()).await;
    let epoch = b.ic.assign("alice@example.test", None);
    assert_eq!(epoch, 2);
    until("move", || {
        a.ic.lookup("alice@example.test").0.map(|h| h.cluster) == Some("beta".into())
    })
    .await;
    assert!(a.ic.route(message("alice@example.test", "m4")).is_ok());
    until("moved delivery", || {
        b.host.delivered.lock().unwrap().len() == 2
    })
    .await;
    let s = a.ic.status_json();
    assert_eq!(s["peers"]["beta"]["link"], "up", "{s}");
    until("entries gauge", || {
        a.ic.metrics.entries.with_label_values(&["beta"]).get() == 4
    })
    .await;
    assert_eq!(s["peers"]["beta"]["users"], 4, "{s}");
    a.ic.shutdown();
    b.ic.shutdown();
}

#[tokio::test]
async fn a_certificate_without_the_cluster_name_is_refused() {
    let ca = TestCa::new("ic test CA").unwrap();
    // "alpha" presents a certificate for another name.
    let a = node(&ca, "alpha", &["gamma"], next_ip(), "c1").await;
    let b = node(&ca, "beta", &["beta"], next_ip(), "c1").await;
    a.ic.set_peers(&[peer("beta", &b)]);
    b.ic.set_peers(&[peer("alpha", &a)]);
    until("refusal counted", || {
        b.ic.status_json()["peers"]["alpha"]["last_error"]["kind"] == "cert-name"
    })
    .await;
    assert_eq!(a.ic.status_json()["peers"]["beta"]["link"], "down");
    a.ic.shutdown();
    b.ic.shutdown();
}

#[tokio::test]
async fn a_consistency_mismatch_refuses_the_link() {
    let ca = TestCa::new("ic test CA").unwrap();
    let a = node(&ca, "alpha", &["alpha"], next_ip(), "c1").await;
    let b = node(&ca, "beta", &["beta"], next_ip(), "c2").await;
    a.ic.set_peers(&[peer("beta", &b)]);
    b.ic.set_peers(&[peer("alpha", &a)]);
    until("consistency failure", || {
        a.ic.status_json()["peers"]["beta"]["last_error"]["kind"] == "consistency"
    })
    .await;
    // alpha's policy is reloaded to what beta runs: the next attempt gets through.
    assert!(a.ic.set_consistency("c2"));
    assert!(!a.ic.set_consistency("c2"), "no change the second time");
    until("link up once the digests agree", || {
        a.ic.status_json()["peers"]["beta"]["link"] == "up"
    })
    .await;
    // beta changes again while the link is up: the link is set up again and refused.
    let failures = || {
        a.ic.metrics
            .failures
            .with_label_values(&["beta", "consistency"])
            .get()
    };
    let before = failures();
    assert!(b.ic.set_consistency("c3"));
    assert_eq!(b.ic.status_json()["consistency"], "c3");
    until("refused after the change", || failures() > before).await;
    until("down", || {
        a.ic.status_json()["peers"]["beta"]["link"] == "down"
    })
    .await;
    a.ic.shutdown();
    b.ic.shutdown();
}

#[tokio::test]
async fn stanzas_wait_while_the_peer_is_down_then_bounce_and_a_restart_is_detected() {
    let ca = TestCa::new("ic test CA").unwrap();
    let a = node(&ca, "alpha", &["alpha"], next_ip(), "c1").await;
    let b_ip = next_ip();
    let b = node(&ca, "beta", &["beta"], b_ip, "c1").await;
    b.ic.set_source("file", users(&["bob@example.test"]));
    a.ic.set_peers(&[peer("beta", &b)]);
    b.ic.set_peers(&[peer("alpha", &a)]);
    until("sync", || a.ic.replica("beta").1 == 1).await;
    let first_inc = a.ic.replica("beta").0.unwrap().0;
    b.ic.shutdown();
    until("link down", || {
        a.ic.status_json()["peers"]["beta"]["link"] == "down"
    })
    .await;
    // The last-known directory still routes to beta; the stanza waits, then bounces.
    assert!(a.ic.route(message("bob@example.test", "q1")).is_ok());
    until("bounce", || !a.host.bounced.lock().unwrap().is_empty()).await;
    assert_eq!(
        a.host.bounced.lock().unwrap()[0],
        (
            "bob@example.test".into(),
            "remote-server-timeout/link-down".into()
        )
    );
    // beta comes back (new process: new incarnation).
    drop(b);
    let b2 = node(&ca, "beta", &["beta"], b_ip, "c1").await;
    b2.ic
        .set_source("file", users(&["bob@example.test", "eve@example.test"]));
    b2.ic.set_peers(&[peer("alpha", &a)]);
    until("resync", || a.ic.replica("beta").1 == 2).await;
    assert_ne!(a.ic.replica("beta").0.unwrap().0, first_inc);
    assert_eq!(
        a.ic.status_json()["peers"]["beta"]["incarnation_changes"],
        1
    );
    // A stanza queued while the link is down is delivered when it comes back.
    assert!(a.ic.route(message("eve@example.test", "q2")).is_ok());
    until("delivered after restart", || {
        b2.host.delivered.lock().unwrap().len() == 1
    })
    .await;
    a.ic.shutdown();
    b2.ic.shutdown();
}

/// A TCP relay on `ip`:7400 to `to` whose connections the test can cut at once.
struct CuttableRelay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableRelay {
    async fn start(ip: Ipv4Addr, to: SocketAddr) -> Self {
        let l = tokio::net::TcpListener::bind((ip, 7400)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Drops every relayed connection (both sockets close with data still in flight).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// A link that breaks while stanzas are on their way: what the peer had not taken is sent
/// again on the next link, what it took is not. Every stanza is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_broken_mid_traffic_hands_unacknowledged_stanzas_to_the_next_link() {
    let ca = TestCa::new("ic test CA").unwrap();
    // Unacknowledged stanzas may wait long for the next link (a loaded CI machine).
    let long = |s: &mut Settings| s.queue_max_age = Duration::from_secs(60);
    let a = node_with(&ca, "alpha", &["alpha"], next_ip(), "c1", long).await;
    let b = node_with(&ca, "beta", &["beta"], next_ip(), "c1", long).await;
    let relay = CuttableRelay::start(next_ip(), b.addr).await;
    b.ic.set_source("file", users(&["bob@example.test"]));
    // alpha dials beta (its name sorts first) through the relay.
    a.ic.set_peers(&[PeerConfig {
        name: "beta".into(),
        address: Some(relay.addr.to_string()),
    }]);
    b.ic.set_peers(&[peer("alpha", &a)]);
    until("sync", || a.ic.replica("beta").1 == 1).await;
    let delivered = |b: &Node| b.host.delivered.lock().unwrap().len();
    let (bursts, per_burst) = (4, 3000);
    for burst in 0..bursts {
        let before = delivered(&b);
        for i in 0..per_burst {
            let id = format!("m{}", burst * per_burst + i);
            assert!(a.ic.route(message("bob@example.test/r", &id)).is_ok());
        }
        // Cut as soon as the burst starts arriving: the rest of it is in flight.
        until("the burst arriving", || delivered(&b) > before).await;
        relay.cut();
    }
    let total = bursts * per_burst;
    for _ in 0..1200 {
        if delivered(&b) >= total || !a.host.bounced.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = b
        .host
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|st| st.el.attr("id").unwrap().to_owned())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a stanza was delivered twice");
    assert!(
        a.host.bounced.lock().unwrap().is_empty(),
        "bounced: {:?}",
        a.host.bounced.lock().unwrap().len()
    );
    assert_eq!(ids.len(), total, "stanzas lost");
    // In order, too: resent stanzas go before newer ones.
    let order: Vec<usize> = ids.iter().map(|i| i[1..].parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    let resent = a.ic.metrics.resent.with_label_values(&["beta"]).get();
    assert!(resent > 0, "no cut caught a stanza in flight");
    let failures: u64 = ["closed", "protocol", "tls", "timeout"]
        .iter()
        .map(|k| a.ic.metrics.failures.with_label_values(&["beta", k]).get())
        .sum();
    assert!(failures >= 1, "the links did break");
    relay.accept.abort();
    a.ic.shutdown();
    b.ic.shutdown();
}

/// A hand-driven peer cluster: a TLS listener presenting `name`'s certificate, through which
/// the test reads and writes raw protocol bytes.
async fn fake_peer(
    ca: &TestCa,
    name: &str,
    ip: Ipv4Addr,
) -> (tokio::net::TcpListener, tokio_rustls::TlsAcceptor) {
    let (c, k) = ca.issue(&LeafSpec::dns(&[name])).unwrap();
    let mut store = fedgate_certs::IdentityStore::new();
    store.insert(Identity::from_pem(name, &c, &k).unwrap());
    let cfg = fedgate_certs::server_config_for(
        Arc::new(store),
        name,
        vec![fedgate_intercluster::driver::ALPN.to_vec()],
    );
    let l = tokio::net::TcpListener::bind((ip, 7400)).await.unwrap();
    (l, tokio_rustls::TlsAcceptor::from(cfg))
}

/// Reads from `io` until `needle` has been seen.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(io: &mut S, needle: &str) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("data in time")
            .unwrap();
        assert!(n > 0, "closed before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_peer_removed_while_its_link_is_being_set_up_gets_no_link() {
    use fedgate_intercluster::directory::Digest;
    use fedgate_intercluster::wire::{Msg, stream_header};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca = TestCa::new("ic test CA").unwrap();
    // A long session timeout: only the removal may end the link.
    let a = node_with(&ca, "alpha", &["alpha"], next_ip(), "c1", |s| {
        s.session.timeout = Duration::from_secs(600);
    })
    .await;
    let b_ip = next_ip();
    let (l, acceptor) = fake_peer(&ca, "beta", b_ip).await;
    a.ic.set_peers(&[PeerConfig {
        name: "beta".into(),
        address: Some(format!("{b_ip}:7400")),
    }]);
    let (sock, _) = l.accept().await.unwrap();
    let mut tls = acceptor.accept(sock).await.unwrap();
    read_until(&mut tls, "<stream:stream").await;
    // alpha waits for beta's stream header; beta is removed meanwhile.
    a.ic.set_peers(&[]);
    assert!(a.ic.peer_names().is_empty());
    let mut bytes = stream_header("beta", "alpha");
    for m in [
        Msg::Hello {
            cluster: "beta".into(),
            incarnation: 7,
            seq: 1,
            consistency: "c1".into(),
            received: Default::default(),
        },
        Msg::SnapshotBegin {
            origin: "beta".into(),
            incarnation: 7,
            seq: 1,
            count: 1,
        },
        Msg::Entries {
            origin: "beta".into(),
            entries: vec![("bob@example.test".into(), 1)],
        },
        Msg::SnapshotEnd {
            origin: "beta".into(),
            incarnation: 7,
            seq: 1,
            digest: Digest::of([("bob@example.test", 1)]),
        },
    ] {
        bytes.extend(m.to_bytes());
    }
    // The peer may already be gone when this is written.
    let _ = tls.write_all(&bytes).await;
    let _ = tls.flush().await;
    // alpha ends the link (it must not stay up, heartbeating, until its timeout).
    let mut buf = [0u8; 4096];
    let closed = async {
        while let Ok(n) = tls.read(&mut buf).await
            && n > 0
        {}
    };
    tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("alpha closes the link of a removed peer");
    assert_eq!(a.ic.replica("beta"), (None, 0));
    assert!(a.ic.lookup("bob@example.test").0.is_none());
    a.ic.shutdown();
}

#[tokio::test]
async fn an_assignment_over_a_claim_at_the_highest_epoch_is_a_conflict_not_a_panic() {
    let ca = TestCa::new("ic test CA").unwrap();
    let a = node(&ca, "alpha", &["alpha"], next_ip(), "c1").await;
    let b = node(&ca, "beta", &["beta"], next_ip(), "c1").await;
    b.ic.set_source(
        "file",
        HashMap::from([("alice@example.test".to_owned(), u64::MAX)]),
    );
    a.ic.set_peers(&[peer("beta", &b)]);
    b.ic.set_peers(&[peer("alpha", &a)]);
    until("sync", || a.ic.replica("beta").1 == 1).await;
    // "One more than the highest epoch" does not exist: the claim ties, and is reported.
    assert_eq!(a.ic.assign("alice@example.test", None), u64::MAX);
    let (home, _) = a.ic.lookup("alice@example.test");
    let home = home.unwrap();
    assert!(home.conflict);
    assert_eq!(home.cluster, "alpha");
    assert_eq!(a.ic.conflicts().len(), 1);
    // The admin's assignment is undone whatever the case of the address typed.
    assert!(a.ic.unassign("Alice@Example.TEST"));
    until("back at beta", || {
        a.ic.lookup("alice@example.test").0.map(|h| h.cluster) == Some("beta".into())
    })
    .await;
    assert!(a.ic.conflicts().is_empty());
    a.ic.shutdown();
    b.ic.shutdown();
}
