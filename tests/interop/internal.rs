//! A real Prosody or ejabberd as the *internal* server of example.test behind fedgate (issue
//! 8), federating with a real remote server for partner.test, with slixmpp clients on both.
//!
//! Layout (all loopback, fresh addresses per test):
//!
//! ```text
//! alice ─ internal server ──s2s──▶ fedgate [internal] listen ──s2s──▶ remote server ─ bob
//!         (example.test)                                             (partner.test)
//!            ▲  └─ DNS: fedgate [internal] resolver                        │
//!            └──s2s, fedgate acting as partner.test ◀── fedgate s2s listen ◀┘
//! ```
//!
//! The test DNS is both the world's DNS (the remote server's resolver and fedgate's
//! `[dns] nameservers`) and the internal resolver's upstream.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fedgate::gateway::Gateway;
use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::LeafSpec;

use super::peers::*;
use super::support::*;
use super::{W, metrics, srv_literal};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@partner.test";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Prosody,
    Ejabberd,
}

enum Server {
    Prosody(Prosody),
    Ejabberd(Ejabberd),
}

impl Server {
    /// Starts `kind` for `domain` on `ip` resolving through `dns`, with one user.
    /// `internal`: the role behind fedgate (dialback accepted, DNS = fedgate's resolver);
    /// otherwise a remote server (Prosody trusts the test CA, ejabberd trusts nothing and
    /// uses dialback, as in the other interop tests).
    #[allow(clippy::too_many_arguments)]
    async fn start(
        kind: Kind,
        pki: &Pki,
        domain: &str,
        ip: Ipv4Addr,
        dns: SocketAddr,
        internal: bool,
        user: (&str, &str),
        quiet: bool,
    ) -> Server {
        let (c, k) = pki.leaf(&format!("server-{domain}-{ip}"), &LeafSpec::dns(&[domain]));
        match kind {
            Kind::Prosody => {
                let mut o = if internal {
                    ProsodyOpts::internal(domain, ip, dns, c, k)
                } else {
                    let mut o = ProsodyOpts::new(domain, ip, dns, c, k);
                    o.trust_ca = Some(pki.ca_path());
                    o
                };
                if quiet {
                    o.log_level = "info".into();
                }
                Server::Prosody(Prosody::start(o.user(user.0, user.1)).await.unwrap())
            }
            Kind::Ejabberd => {
                let o = if internal {
                    EjabberdOpts::internal(domain, ip, dns, c, k)
                } else {
                    EjabberdOpts::new(domain, ip, dns, c, k)
                };
                Server::Ejabberd(Ejabberd::start(o.user(user.0, user.1)).await.unwrap())
            }
        }
    }

    fn c2s_addr(&self) -> SocketAddr {
        match self {
            Server::Prosody(p) => p.c2s_addr(),
            Server::Ejabberd(e) => e.c2s_addr(),
        }
    }

    fn stop(self) {
        match self {
            Server::Prosody(p) => p.stop(),
            Server::Ejabberd(e) => e.stop(),
        }
    }
}

struct Opts {
    internal: Kind,
    remote: Option<Kind>,
    /// TOML appended to fedgate's config (e.g. a [policy] section).
    extra: String,
    /// Further `_xmpp-server._tcp` records in the world's DNS (IP-literal targets).
    also_srv: Vec<(&'static str, Ipv4Addr)>,
    /// Prosody at log level "info" instead of "debug" (benchmark).
    quiet: bool,
}

impl Opts {
    fn new(internal: Kind, remote: Option<Kind>) -> Self {
        Self {
            internal,
            remote,
            extra: String::new(),
            also_srv: Vec::new(),
            quiet: false,
        }
    }
}

/// fedgate at the edge of example.test, its internal server with alice, and (optionally) a
/// remote server for partner.test with bob.
struct Edge {
    pki: Pki,
    dns: TestDns,
    g: Gateway,
    internal: Option<Server>,
    remote: Option<Server>,
    alice: Option<XmppClient>,
    bob: Option<XmppClient>,
}

async fn edge(o: Opts) -> Edge {
    let pki = Pki::new();
    let mut gw = GwSpec::new(&pki, "example.test");
    let internal_ip = next_ip(); // the internal server
    let side_ip = next_ip(); // fedgate's internal listener and resolver
    let remote_ip = next_ip();
    let mut zone = Zone::new();
    srv_literal(&mut zone, "example.test", gw.ip);
    if o.remote.is_some() {
        srv_literal(&mut zone, "partner.test", remote_ip);
    }
    for (d, ip) in &o.also_srv {
        srv_literal(&mut zone, d, *ip);
    }
    let dns: TestDns = dns(zone).await;
    gw.dns = Some(dns.addr());
    gw.no_component = true;
    gw.domain_extra = format!("internal = \"tcp://{internal_ip}:5269\"\n");
    gw.extra = format!(
        "\n[internal]\nlisten = \"{side_ip}:5269\"\nresolver = \"{side_ip}:5353\"\n\
         upstream = [\"{}\"]\n{}",
        dns.addr(),
        o.extra
    );
    let g = gw.start().await;
    let resolver = SocketAddr::from((side_ip, 5353));

    let internal = Server::start(
        o.internal,
        &pki,
        "example.test",
        internal_ip,
        resolver,
        true,
        ("alice", "pw-alice"),
        o.quiet,
    )
    .await;
    let remote = match o.remote {
        Some(kind) => Some(
            Server::start(
                kind,
                &pki,
                "partner.test",
                remote_ip,
                dns.addr(),
                false,
                ("bob", "pw-bob"),
                o.quiet,
            )
            .await,
        ),
        None => None,
    };
    let py = interop_python();
    let alice = XmppClient::connect_with(&py, ALICE, "pw-alice", internal.c2s_addr(), false)
        .await
        .unwrap();
    let bob = match &remote {
        Some(r) => Some(
            XmppClient::connect_with(&py, BOB, "pw-bob", r.c2s_addr(), false)
                .await
                .unwrap(),
        ),
        None => None,
    };
    Edge {
        pki,
        dns,
        g,
        internal: Some(internal),
        remote,
        alice: Some(alice),
        bob,
    }
}

impl Edge {
    /// (alice, bob)
    fn clients(&mut self) -> (&mut XmppClient, &mut XmppClient) {
        (
            self.alice.as_mut().expect("alice"),
            self.bob.as_mut().expect("bob"),
        )
    }

    async fn stop(mut self) {
        drop(self.alice.take());
        drop(self.bob.take());
        if let Some(s) = self.internal.take() {
            s.stop();
        }
        if let Some(s) = self.remote.take() {
            s.stop();
        }
        self.g.shutdown().await;
        self.dns.stop().await;
        drop(self.pki);
    }
}

fn fail(e: anyhow::Error, diag: &dyn Fn() -> String) -> ! {
    panic!("{e:#}\n{}", diag())
}

/// Sum of the `fedgate_stanzas_routed_total` lines with `path` and `remote_domain`.
fn routed(m: &str, path: &str, remote_domain: &str) -> u64 {
    metric(
        m,
        &format!(
            "fedgate_stanzas_routed_total{{path=\"{path}\",remote_domain=\"{remote_domain}\"}}"
        ),
    )
}

/// What the issue asks of the edge, seen by the users: messages both ways, presence
/// subscriptions both ways, then live presence changes both ways.
async fn chat_and_presence(t: &mut Edge) {
    let diag = t.diagnostics_fn();
    let (alice, bob) = t.clients();

    // Messages both ways.
    alice
        .send_message(BOB, "hello from inside example.test")
        .await
        .unwrap();
    let (from, body) = bob
        .expect_message(W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    assert_eq!(
        (from.as_str(), body.as_str()),
        (ALICE, "hello from inside example.test")
    );
    bob.send_message(ALICE, "hello from partner.test")
        .await
        .unwrap();
    let (from, body) = alice
        .expect_message(W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    assert_eq!(
        (from.as_str(), body.as_str()),
        (BOB, "hello from partner.test")
    );

    // alice subscribes to bob; bob approves; alice then sees bob's presence.
    alice.subscribe(BOB).await;
    bob.expect_presence(ALICE, "subscribe", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    bob.send_presence(Some(ALICE), Some("subscribed"))
        .await
        .unwrap();
    alice
        .expect_presence(BOB, "subscribed", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    alice
        .expect_presence(&format!("{BOB}/"), "available", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));

    // bob subscribes to alice; alice approves; bob then sees alice's presence.
    bob.subscribe(ALICE).await;
    alice
        .expect_presence(BOB, "subscribe", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    alice
        .send_presence(Some(BOB), Some("subscribed"))
        .await
        .unwrap();
    bob.expect_presence(ALICE, "subscribed", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    bob.expect_presence(&format!("{ALICE}/"), "available", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));

    // Live presence both ways: each goes unavailable (broadcast to the contact through fedgate).
    // Each live change carries its own status text: the servers' answers to the probes above
    // are presences of the same types, may still be queued at the client, and must not stand
    // in for the live change (they once let alice go offline before bob was back).
    bob.send_presence_status(None, Some("unavailable"), Some("bob away"))
        .await
        .unwrap();
    alice
        .expect_presence_status(&format!("{BOB}/"), "unavailable", "bob away", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    // bob comes back first: a server delivers presence only to available resources.
    bob.send_presence_status(None, None, Some("bob back"))
        .await
        .unwrap();
    alice
        .expect_presence_status(&format!("{BOB}/"), "available", "bob back", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
    alice
        .send_presence_status(None, Some("unavailable"), Some("alice away"))
        .await
        .unwrap();
    bob.expect_presence_status(&format!("{ALICE}/"), "unavailable", "alice away", W)
        .await
        .unwrap_or_else(|e| fail(e, &diag));
}

impl Edge {
    /// A closure giving the servers' logs, for failure messages (no borrow of self kept).
    fn diagnostics_fn(&self) -> impl Fn() -> String + use<> {
        let text = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let dirs: Vec<(String, std::path::PathBuf)> = [&self.internal, &self.remote]
            .into_iter()
            .flatten()
            .map(|s| match s {
                Server::Prosody(p) => ("prosody".to_owned(), p.dir().to_path_buf()),
                Server::Ejabberd(e) => ("ejabberd".to_owned(), e.dir().to_path_buf()),
            })
            .collect();
        move || {
            let mut g = text.lock().unwrap();
            if g.is_none() {
                let mut out = String::new();
                for (kind, dir) in &dirs {
                    let files: &[&str] = if kind == "prosody" {
                        &["prosody.stdout", "prosody.log"]
                    } else {
                        &["logs/ejabberd.log", "logs/error.log"]
                    };
                    for f in files {
                        let p = dir.join(f);
                        let body = std::fs::read(&p)
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default();
                        out.push_str(&format!("--- {} ---\n{body}\n", p.display()));
                    }
                }
                *g = Some(out);
            }
            g.clone().unwrap()
        }
    }
}

/// Chat and presence both ways between the internal server `internal` and the remote
/// `remote`, with fedgate's routing metrics: the internal server's stanzas for partner.test
/// leave through fedgate, and bob's for example.test are forwarded to the internal server.
async fn federates_through_fedgate(internal: Kind, remote: Kind) {
    let mut t = edge(Opts::new(internal, Some(remote))).await;
    chat_and_presence(&mut t).await;
    let m = metrics(&t.g).await;
    assert!(routed(&m, "local-to-remote", "partner.test") >= 3, "{m}");
    assert!(routed(&m, "to-internal", "example.test") >= 3, "{m}");
    t.stop().await;
}

/// (a) Internal Prosody for example.test, fedgate, remote ejabberd for partner.test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_prosody_federates_with_remote_ejabberd_through_fedgate() {
    federates_through_fedgate(Kind::Prosody, Kind::Ejabberd).await;
}

/// (b) The reverse roles: internal ejabberd for example.test, remote Prosody for partner.test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_ejabberd_federates_with_remote_prosody_through_fedgate() {
    federates_through_fedgate(Kind::Ejabberd, Kind::Prosody).await;
}

/// (c) The edge policy denies a remote domain: alice (on the internal Prosody) gets
/// policy-violation naming the rule, and the denied domain is never looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_sender_gets_policy_violation_for_a_denied_domain() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n[[rule]]\nid = \"no-denied\"\ndomains = [\"denied.test\"]\naction = \"deny\"\n",
    )
    .unwrap();
    let mut o = Opts::new(Kind::Prosody, None);
    o.extra = format!("\n[policy]\nfile = {:?}\n", policy.display().to_string());
    let mut t = edge(o).await;
    let diag = t.diagnostics_fn();
    let alice = t.alice.as_mut().unwrap();
    alice
        .send_message("carol@denied.test", "may I?")
        .await
        .unwrap();
    let (from, cond, text) = alice
        .expect_message_error_text(W)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    assert!(from.starts_with("carol@denied.test"), "{from}");
    assert_eq!(cond, "policy-violation", "{text}");
    assert!(text.contains("no-denied"), "{text}");
    assert!(
        !t.dns.queried_names().iter().any(|n| n.contains("denied")),
        "{:?}",
        t.dns.queried_names()
    );
    let m = metrics(&t.g).await;
    assert!(
        metric(&m, "fedgate_policy_denials_total{direction=\"outbound\"") >= 1,
        "{m}"
    );
    t.stop().await;
}

/// (d) A remote domain that does not exist: alice gets remote-server-not-found from fedgate
/// (the internal Prosody itself reached fedgate's internal listener, as for every domain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_sender_gets_remote_server_not_found_for_an_unknown_domain() {
    let mut t = edge(Opts::new(Kind::Prosody, None)).await;
    let diag = t.diagnostics_fn();
    let alice = t.alice.as_mut().unwrap();
    alice
        .send_message("someone@nowhere.test", "anyone?")
        .await
        .unwrap();
    let (from, cond, text) = alice
        .expect_message_error_text(W)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    assert!(from.starts_with("someone@nowhere.test"), "{from}");
    assert_eq!(cond, "remote-server-not-found", "{text}");
    assert!(text.contains("dns"), "{text}");
    t.stop().await;
}

/// (e) The internal server is stopped: bob's next message to alice comes back to him as an
/// error from fedgate (service-unavailable, "the local server for example.test is
/// unavailable"), carried by ejabberd to its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_sender_gets_an_error_when_the_internal_server_is_down() {
    let mut t = edge(Opts::new(Kind::Prosody, Some(Kind::Ejabberd))).await;
    let diag = t.diagnostics_fn();
    {
        let (_, bob) = t.clients();
        // The path works first (ejabberd's stream to fedgate and fedgate's to Prosody are up).
        bob.send_message(ALICE, "are you there?").await.unwrap();
    }
    let (from, body) = t
        .alice
        .as_mut()
        .unwrap()
        .expect_message(W)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    assert_eq!((from.as_str(), body.as_str()), (BOB, "are you there?"));

    drop(t.alice.take());
    t.internal.take().unwrap().stop();
    let bob = t.bob.as_mut().unwrap();
    bob.send_message(ALICE, "and now?").await.unwrap();
    let (from, cond, text) = bob
        .expect_message_error_text(W)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    assert!(from.starts_with(ALICE), "{from}");
    // Observed: service-unavailable with fedgate's text (ejabberd passes it through).
    assert_eq!(cond, "service-unavailable", "{text}");
    t.stop().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One round trip: `sender` → `echo` (the test reads it and answers from `echo`) → `sender`.
async fn round_trip(
    sender: &mut XmppClient,
    sender_jid: &str,
    echo: &mut XmppClient,
    echo_jid: &str,
    i: usize,
) -> Duration {
    let text = format!("ping {i}");
    let t0 = Instant::now();
    sender.send_message(echo_jid, &text).await.unwrap();
    let (from, body) = echo.expect_message(W).await.unwrap();
    assert_eq!((from.as_str(), body.as_str()), (sender_jid, text.as_str()));
    echo.send_message(sender_jid, &body).await.unwrap();
    let (from, body) = sender.expect_message(W).await.unwrap();
    assert_eq!((from.as_str(), body.as_str()), (echo_jid, text.as_str()));
    t0.elapsed()
}

/// The added latency of the edge: round trips alice@example.test (internal Prosody →
/// fedgate) ↔ bob@partner.test (ejabberd) against carol@direct.test (a second Prosody that
/// federates with the same ejabberd directly), interleaved round by round in the same run.
/// Both paths include the same slixmpp/test-harness overhead; the difference is fedgate's.
///
/// `cargo test --release --test interop edge_latency_benchmark -- --ignored --nocapture`
/// (`FEDGATE_BENCH_N` rounds per path, default 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn edge_latency_benchmark() {
    let n: usize = std::env::var("FEDGATE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let direct_ip = next_ip();
    let mut o = Opts::new(Kind::Prosody, Some(Kind::Ejabberd));
    o.also_srv = vec![("direct.test", direct_ip)];
    o.quiet = true;
    let mut t = edge(o).await;
    let direct = Server::start(
        Kind::Prosody,
        &t.pki,
        "direct.test",
        direct_ip,
        t.dns.addr(),
        false,
        ("carol", "pw-carol"),
        true,
    )
    .await;
    let mut carol = XmppClient::connect_with(
        &interop_python(),
        "carol@direct.test",
        "pw-carol",
        direct.c2s_addr(),
        false,
    )
    .await
    .unwrap();
    let (alice, bob) = t.clients();
    // Warm-up: streams established, dialback done, caches filled.
    for i in 0..5 {
        round_trip(alice, ALICE, bob, BOB, i).await;
        round_trip(&mut carol, "carol@direct.test", bob, BOB, i).await;
    }
    let (mut via, mut direct_rtts) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let start = Instant::now();
    for i in 0..n {
        via.push(round_trip(alice, ALICE, bob, BOB, i).await);
        direct_rtts.push(round_trip(&mut carol, "carol@direct.test", bob, BOB, i).await);
    }
    let wall = start.elapsed();
    via.sort();
    direct_rtts.sort();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "edge latency: {n} sequential round trips per path (message + echo reply), interleaved, \
         {:.1} s in all",
        wall.as_secs_f64()
    );
    println!("  path                                        p50 ms    p99 ms   mean ms");
    for (name, v) in [
        ("via fedgate (internal Prosody ↔ ejabberd)", &via),
        ("direct      (Prosody ↔ ejabberd)         ", &direct_rtts),
    ] {
        println!(
            "  {name}  {:8.2}  {:8.2}  {:8.2}",
            ms(percentile(v, 0.50)),
            ms(percentile(v, 0.99)),
            ms(mean(v))
        );
    }
    println!(
        "  added by the edge (round trip = 2 passes)    {:8.2}  {:8.2}  {:8.2}",
        ms(percentile(&via, 0.50)) - ms(percentile(&direct_rtts, 0.50)),
        ms(percentile(&via, 0.99)) - ms(percentile(&direct_rtts, 0.99)),
        ms(mean(&via)) - ms(mean(&direct_rtts)),
    );
    // Every measured edge round trip crossed fedgate both ways; the direct ones never did.
    let m = metrics(&t.g).await;
    assert!(
        routed(&m, "local-to-remote", "partner.test") >= n as u64,
        "{m}"
    );
    assert!(routed(&m, "to-internal", "example.test") >= n as u64, "{m}");
    assert!(!m.contains("direct.test"), "{m}");
    carol.close();
    direct.stop();
    t.stop().await;
}
