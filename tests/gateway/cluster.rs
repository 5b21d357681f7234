//! Nodes of one domain as a cluster (`[cluster]`), with their shared state in a real
//! `redis-server` started by each test on a loopback address of its own: membership with
//! leases, the policy's `rate` and `max_streams` for the cluster as a whole, degraded mode
//! while Redis is down, and the consistency check at join (over `rediss://` with a password).
//!
//! a.test is served by the cluster's nodes; b.test by one gateway per a.test node, each
//! pointed at "its" node (static targets), so that b.test's traffic enters every node.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use fedgate::component_client::{ComponentClient, body, message};
use fedgate::gateway::Gateway;
use fedgate_certs::dev::LeafSpec;
use serde_json::Value;

use crate::gw_child::{GwChild, http_get_at};
use crate::redis_server::{Redis, RedisTls};
use crate::support::*;

/// Conditions are awaited this long at most (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(30);

/// The `[cluster]` section of a node, with short timers so that tests see leases run out.
fn cluster_section(node: &str, url: &str, ip: Ipv4Addr, extra: &str) -> String {
    format!(
        "\n[cluster]\nname = \"{node}\"\nredis = \"{url}\"\nnode_link = \"{ip}:7410\"\n\
         lease_ms = 2000\nheartbeat_ms = 400\nresync_ms = 1000\ntimeout_ms = 1000\n{extra}"
    )
}

/// A node of the a.test cluster; `extra` goes before its `[cluster]` section.
fn a_node(pki: &Pki, name: &str, url: &str, extra: &str, cluster_extra: &str) -> GwSpec {
    let mut s = GwSpec::new(pki, "a.test");
    s.extra = format!("{extra}{}", cluster_section(name, url, s.ip, cluster_extra));
    s
}

fn policy_file(dir: &Path, text: &str) -> String {
    let f = dir.join("policy.toml");
    std::fs::write(&f, text).unwrap();
    format!("\n[policy]\nfile = {:?}\n", f.display().to_string())
}

fn redis_addr() -> SocketAddr {
    SocketAddr::new(next_ip().into(), 6379)
}

/// The `cluster` section of a node's `/status` (Null if it does not answer).
async fn cluster_status(metrics: SocketAddr) -> Value {
    let body = http_get_at(metrics, "/status").await.unwrap_or_default();
    serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["cluster"].clone()
}

/// Names of the nodes a status shows live, sorted.
fn live(c: &Value) -> Vec<String> {
    let mut v: Vec<String> = c["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["live"] == true)
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn node<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Polls `check` until it passes; panics with its last complaint after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: still {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the node at `metrics` sees exactly `names` live.
async fn wait_members(metrics: SocketAddr, names: &[&str]) {
    wait_until(&format!("{metrics} sees {names:?}"), || async move {
        let c = cluster_status(metrics).await;
        let l = live(&c);
        if l == names {
            Ok(())
        } else {
            Err(format!("{l:?}: {c}"))
        }
    })
    .await;
}

/// b.test gateways, the i-th sending to the i-th a.test node (and back).
fn pair_up(pki: &Pki, a: &mut [GwSpec]) -> Vec<GwSpec> {
    a.iter_mut()
        .map(|a| {
            let mut b = GwSpec::new(pki, "b.test");
            b.static_targets
                .insert("a.test".into(), format!("tcp://{}:5269", a.ip));
            a.static_targets
                .insert("b.test".into(), format!("tcp://{}:5269", b.ip));
            b
        })
        .collect()
}

async fn start_all(specs: &[GwSpec]) -> Vec<Gateway> {
    let mut v = Vec::new();
    for s in specs {
        v.push(s.start().await);
    }
    v
}

async fn components(specs: &[GwSpec], gws: &[Gateway]) -> Vec<ComponentClient> {
    let mut v = Vec::new();
    for (s, g) in specs.iter().zip(gws) {
        v.push(s.component(g).await);
    }
    v
}

/// Stops the gateways together (each waits up to 2 s for its inbound streams' last
/// acknowledgements).
async fn shutdown_all(gws: Vec<Gateway>) {
    futures_join(gws.into_iter().map(Gateway::shutdown)).await;
}

/// Three nodes see each other with what is attached to them; a node killed (no goodbye) is
/// dropped by the others once its lease runs out; a node stopped leaves at once.
/// `fedgate cluster status` prints the nodes.
#[tokio::test]
async fn nodes_see_each_other_and_drop_a_dead_one_when_its_lease_runs_out() {
    let pki = Pki::new();
    let redis = Redis::start(redis_addr(), None, None);
    let url = redis.url("");
    // The same policy, each node with its own copy of the file.
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let policy = "default = \"allow\"\n";
    let specs: Vec<GwSpec> = ["node-1", "node-2", "node-3"]
        .iter()
        .zip(&dirs)
        .map(|(n, d)| a_node(&pki, n, &url, &policy_file(d.path(), policy), ""))
        .collect();
    let g1 = specs[0].start().await;
    let g2 = specs[1].start().await;
    let mut g3 = GwChild::start(&specs[2]).await;
    let _c1 = specs[0].component(&g1).await;
    let m3 = SocketAddr::new(specs[2].ip.into(), 9269);
    let all = ["node-1", "node-2", "node-3"];
    let link3 = format!("{}:7410", specs[2].ip);
    let link3 = &link3;
    for m in [g1.metrics_addr.unwrap(), g2.metrics_addr.unwrap(), m3] {
        wait_members(m, &all).await;
        wait_until("node-1's component is seen", || async move {
            let c = cluster_status(m).await;
            let n1 = node(&c, "node-1");
            if n1["components"] == serde_json::json!(["a.test"])
                && node(&c, "node-3")["node_link"] == link3.as_str()
            {
                Ok(())
            } else {
                Err(c.to_string())
            }
        })
        .await;
    }
    let c = cluster_status(g2.metrics_addr.unwrap()).await;
    assert_eq!(c["store"]["up"], true, "{c}");
    assert_eq!(c["consistency"]["ok"], true, "{c}");

    let http = g2.metrics_addr.unwrap().to_string();
    let cli = |json: bool| {
        let http = http.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["cluster", "--http", &http, "status"];
            if json {
                args.push("--json");
            }
            std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let out = cli(true).await.unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["node"], "node-2");
    assert_eq!(live(&doc), all);
    let out = cli(false).await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("node node-2 — store redis://"), "{table}");
    for line in ["node-1 ", "node-2 (this)", "node-3 "] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(line) && l.contains(" yes ")),
            "{line}: {table}"
        );
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-1 ") && l.ends_with("component a.test")),
        "{table}"
    );

    // A policy reload on one node is not refused: the others flag the difference until it
    // is undone.
    let m2 = g2.metrics_addr.unwrap();
    std::fs::write(dirs[0].path().join("policy.toml"), "default = \"deny\"\n").unwrap();
    wait_until("node-2 flags node-1's policy", || async move {
        let c = cluster_status(m2).await;
        let d = c["consistency"]["differences"].to_string();
        if c["consistency"]["ok"] == false && d.contains("node-1: the policy revision differs") {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;
    assert_eq!(
        metric(
            &http_get(&g2, "/metrics").await,
            "fedgate_cluster_consistent "
        ),
        0
    );
    std::fs::write(dirs[0].path().join("policy.toml"), policy).unwrap();
    wait_until("consistent again", || async move {
        let c = cluster_status(m2).await;
        if c["consistency"]["ok"] == true {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;

    // A crash: no goodbye, the lease (2 s) runs out.
    g3.kill();
    let killed = Instant::now();
    wait_members(g1.metrics_addr.unwrap(), &["node-1", "node-2"]).await;
    wait_members(g2.metrics_addr.unwrap(), &["node-1", "node-2"]).await;
    eprintln!(
        "membership: node-3 dropped {:.1} s after SIGKILL (lease 2 s, heartbeat 0.4 s)",
        killed.elapsed().as_secs_f64()
    );
    // A stop: the node leaves.
    g2.shutdown().await;
    wait_members(g1.metrics_addr.unwrap(), &["node-1"]).await;
    let m = http_get(&g1, "/metrics").await;
    assert_eq!(metric(&m, "fedgate_cluster_nodes "), 1, "{m}");
    assert_eq!(metric(&m, "fedgate_cluster_store_up "), 1, "{m}");
    g1.shutdown().await;
}

/// Stanzas received on the components: (delivered to a.test, refused back to b.test), until
/// every one of `total` is accounted for.
async fn count(
    a: &mut [ComponentClient],
    b: &mut [ComponentClient],
    total: usize,
) -> (usize, usize) {
    let (mut delivered, mut refused) = (0, 0);
    let deadline = Instant::now() + WAIT * 2;
    while delivered + refused < total {
        assert!(
            Instant::now() < deadline,
            "only {delivered} delivered and {refused} refused of {total}"
        );
        for c in a.iter_mut() {
            while let Ok(m) = c.recv(Duration::from_millis(20)).await {
                assert_eq!(m.attr("type"), Some("chat"), "{m:?}");
                assert!(body(&m).is_some(), "{m:?}");
                delivered += 1;
            }
        }
        for c in b.iter_mut() {
            while let Ok(e) = c.recv(Duration::from_millis(20)).await {
                let (cond, text) = fedgate_s2s::wire::stanza_error(&e).expect("an error");
                assert_eq!(cond, "resource-constraint", "{text}");
                assert!(text.contains("b-slow"), "{text}");
                refused += 1;
            }
        }
    }
    (delivered, refused)
}

/// b.test sends through all three nodes at once; the cluster admits its `rate` (burst 24,
/// 0.2/s) once, within the README's bound (burst + rate·t + 2·N·batch, batch = 24/(4·3) = 2),
/// not three times.
#[tokio::test]
async fn a_partners_rate_holds_for_the_cluster_as_a_whole() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(redis_addr(), None, None);
    let url = redis.url("");
    let policy = policy_file(
        dir.path(),
        "default = \"allow\"\n[[rule]]\nid = \"b-slow\"\ndomains = [\"b.test\"]\naction = \"allow\"\n\
         rate = { per_second = 0.2, burst = 24 }\n",
    );
    let mut a: Vec<GwSpec> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| a_node(&pki, n, &url, &policy, ""))
        .collect();
    let b = pair_up(&pki, &mut a);
    let ga = start_all(&a).await;
    let gb = start_all(&b).await;
    let mut ca = components(&a, &ga).await;
    let mut cb = components(&b, &gb).await;
    for g in &ga {
        wait_members(g.metrics_addr.unwrap(), &["node-1", "node-2", "node-3"]).await;
    }
    let per_node = 24;
    let started = Instant::now();
    let sends = cb.iter_mut().enumerate().map(|(i, c)| async move {
        for k in 0..per_node {
            c.send(&message(
                "bob@b.test/x",
                "alice@a.test",
                &format!("r{i}-{k}"),
                "burst",
            ))
            .await
            .unwrap();
        }
    });
    futures_join(sends).await;
    let total = 3 * per_node;
    let (delivered, refused) = count(&mut ca, &mut cb, total).await;
    let secs = started.elapsed().as_secs_f64();
    let bound = 24.0 + 0.2 * secs + 2.0 * 3.0 * 2.0;
    eprintln!("rate: {delivered} admitted, {refused} refused in {secs:.1} s (bound {bound:.1})");
    assert_eq!(delivered + refused, total);
    assert!(
        (delivered as f64) <= bound,
        "{delivered} admitted in {secs:.1} s: more than the bound {bound:.1} (3 × 24 = 72 would be per node)"
    );
    assert!(
        delivered >= 24 - 3 * 2,
        "{delivered} admitted: fewer than the burst less the batches nodes may hold"
    );
    let mut requests = 0;
    for g in &ga {
        let m = http_get(g, "/metrics").await;
        requests += metric(&m, "fedgate_cluster_rate_requests_total{result=\"ok\"}");
        assert_eq!(
            metric(&m, "fedgate_cluster_limit_fallback_total"),
            0,
            "the store was up: {m}"
        );
    }
    assert!(
        requests >= 3,
        "every node asked the cluster bucket: {requests}"
    );
    shutdown_all(ga.into_iter().chain(gb).collect()).await;
}

/// Runs the futures concurrently (no futures crate in the tests).
async fn futures_join<F: Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let set: Vec<_> = fs.map(Box::pin).collect();
    let mut set: Vec<Option<std::pin::Pin<Box<F>>>> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in set.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

/// `max_streams = 1` for b.test: its stream into node-1 counts on node-2 too, which refuses
/// a second one with a policy-violation.
#[tokio::test]
async fn max_streams_holds_across_nodes() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(redis_addr(), None, None);
    let url = redis.url("");
    let policy = policy_file(
        dir.path(),
        "default = \"allow\"\n[[rule]]\nid = \"b-one-stream\"\ndomains = [\"b.test\"]\naction = \"allow\"\nmax_streams = 1\n",
    );
    let mut a: Vec<GwSpec> = ["node-1", "node-2"]
        .iter()
        .map(|n| a_node(&pki, n, &url, &policy, ""))
        .collect();
    let b = pair_up(&pki, &mut a);
    let ga = start_all(&a).await;
    let gb = start_all(&b).await;
    let mut ca = components(&a, &ga).await;
    let mut cb = components(&b, &gb).await;
    let m2 = ga[1].metrics_addr.unwrap();
    wait_members(m2, &["node-1", "node-2"]).await;
    assert_delivered(
        &mut cb[0],
        &mut ca[0],
        "bob@b.test",
        "alice@a.test",
        "first",
    )
    .await;
    wait_until("node-2 counts b.test's stream on node-1", || async move {
        let c = cluster_status(m2).await;
        match node(&c, "node-1")["inbound_streams"].as_u64() {
            Some(1) => Ok(()),
            _ => Err(c.to_string()),
        }
    })
    .await;
    cb[1]
        .send(&message(
            "carl@b.test",
            "alice@a.test",
            "m2",
            "second stream",
        ))
        .await
        .unwrap();
    let e = cb[1].recv(T).await.unwrap();
    let (cond, text) = fedgate_s2s::wire::stanza_error(&e).unwrap();
    assert_eq!(cond, "policy-violation", "{text}");
    assert!(
        text.contains("limit: b.test already has 1 inbound streams"),
        "{text}"
    );
    assert!(ca[1].recv(Duration::from_millis(300)).await.is_err());
    shutdown_all(ga.into_iter().chain(gb).collect()).await;
}

/// Redis stops (by PID) and starts again, empty: meanwhile traffic flows, `/healthz` says
/// degraded (HTTP 200), the rate falls back to a per-node share (counted), and a component
/// attaches; afterwards every node is back in the store and sees the others and the new
/// component.
#[tokio::test]
async fn traffic_flows_while_redis_is_down_and_state_converges_after() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(redis_addr(), None, None);
    let url = redis.url("");
    let policy = policy_file(
        dir.path(),
        "default = \"allow\"\n[[rule]]\nid = \"b-slow\"\ndomains = [\"b.test\"]\naction = \"allow\"\n\
         rate = { per_second = 100.0, burst = 200 }\n",
    );
    let mut a: Vec<GwSpec> = ["node-1", "node-2"]
        .iter()
        .map(|n| a_node(&pki, n, &url, &policy, ""))
        .collect();
    let b = pair_up(&pki, &mut a);
    let ga = start_all(&a).await;
    let gb = start_all(&b).await;
    let mut ca1 = a[0].component(&ga[0]).await;
    let mut cb1 = b[0].component(&gb[0]).await;
    let (m1, m2) = (ga[0].metrics_addr.unwrap(), ga[1].metrics_addr.unwrap());
    wait_members(m1, &["node-1", "node-2"]).await;
    wait_members(m2, &["node-1", "node-2"]).await;
    assert_delivered(&mut cb1, &mut ca1, "bob@b.test", "alice@a.test", "before").await;
    assert_eq!(http_get(&ga[0], "/healthz").await, "ok\n");

    redis.stop();
    let stopped = Instant::now();
    for g in &ga {
        wait_until("degraded", || async {
            let h = http_get(g, "/healthz").await;
            if h.starts_with("degraded: cluster store redis://") {
                Ok(())
            } else {
                Err(h)
            }
        })
        .await;
    }
    eprintln!(
        "outage: both nodes degraded {:.2} s after redis stopped",
        stopped.elapsed().as_secs_f64()
    );
    // The HTTP status stays 200: a load balancer keeps a degraded node.
    let raw = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(m1).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    for i in 0..20 {
        cb1.send(&message(
            "bob@b.test",
            "alice@a.test",
            &format!("d{i}"),
            "while redis is down",
        ))
        .await
        .unwrap();
    }
    for _ in 0..20 {
        let m = ca1.recv(T).await.unwrap();
        assert_eq!(body(&m).as_deref(), Some("while redis is down"), "{m:?}");
    }
    let m = http_get(&ga[0], "/metrics").await;
    assert_eq!(metric(&m, "fedgate_cluster_store_up "), 0, "{m}");
    assert!(
        metric(&m, "fedgate_cluster_limit_fallback_total{limit=\"rate\"}") >= 20,
        "{m}"
    );
    assert!(
        metric(&m, "fedgate_cluster_store_failures_total ") >= 1,
        "{m}"
    );
    // The last replica is kept: node-1 still sees node-2.
    assert_eq!(live(&cluster_status(m1).await), ["node-1", "node-2"]);
    // A component attaches to node-2 meanwhile.
    let _ca2 = a[1].component(&ga[1]).await;

    redis.restart();
    let restarted = Instant::now();
    for g in &ga {
        wait_until("healthy again", || async {
            let h = http_get(g, "/healthz").await;
            if h == "ok\n" { Ok(()) } else { Err(h) }
        })
        .await;
    }
    wait_until("node-1 sees node-2's new component", || async {
        let c = cluster_status(m1).await;
        if live(&c) == ["node-1", "node-2"]
            && node(&c, "node-2")["components"] == serde_json::json!(["a.test"])
        {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;
    wait_members(m2, &["node-1", "node-2"]).await;
    eprintln!(
        "outage: state converged {:.2} s after redis started again",
        restarted.elapsed().as_secs_f64()
    );
    assert_delivered(&mut cb1, &mut ca1, "bob@b.test", "alice@a.test", "after").await;
    let m = http_get(&ga[0], "/metrics").await;
    assert_eq!(metric(&m, "fedgate_cluster_store_up "), 1, "{m}");
    shutdown_all(ga.into_iter().chain(gb).collect()).await;
}

/// Over `rediss://` with a password file: a node with another dialback secret, one with
/// another domain set and one with another policy are refused at start, each with the
/// difference named; the first node stays alone in the cluster.
#[tokio::test]
async fn a_node_that_differs_from_the_cluster_is_refused_at_start() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf("redis-localhost", &LeafSpec::dns(&["localhost"]));
    let tls = RedisTls {
        cert,
        key,
        ca: pki.ca_path(),
    };
    // The certificate names localhost, so the store is reached by that name.
    let redis = Redis::start(
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 16380),
        Some("cluster-password-1"),
        Some(tls),
    );
    let url = redis.url("localhost");
    let pw = dir.path().join("redis.password");
    std::fs::write(&pw, "cluster-password-1\n").unwrap();
    let secure = format!(
        "password_file = {:?}\ntls_ca = {:?}\n",
        pw.display().to_string(),
        pki.ca_path().display().to_string()
    );
    let first = a_node(&pki, "node-1", &url, "", &secure);
    let g1 = first.start().await;
    let m1 = g1.metrics_addr.unwrap();
    wait_members(m1, &["node-1"]).await;
    let c = cluster_status(m1).await;
    assert_eq!(c["store"]["url"], "rediss://localhost:16380/0", "{c}");
    assert_eq!(c["store"]["up"], true, "{c}");

    let mut other_secret = a_node(&pki, "node-2", &url, "", &secure);
    other_secret.dialback_secret = "another-dialback-secret".into();
    let e = other_secret.start_error().await;
    assert!(
        e.contains("may not join the cluster")
            && e.contains("node node-1: the dialback secret differs"),
        "{e}"
    );
    let other_domains = a_node(
        &pki,
        "node-3",
        &url,
        "\n[[domains]]\nname = \"c.test\"\nself_signed = true\n",
        &secure,
    );
    let e = other_domains.start_error().await;
    assert!(
        e.contains("node node-1: the hosted domains differ (only here: c.test; only there: none)"),
        "{e}"
    );
    let other_policy = a_node(
        &pki,
        "node-4",
        &url,
        &policy_file(dir.path(), "default = \"deny\"\n"),
        &secure,
    );
    let e = other_policy.start_error().await;
    assert!(e.contains("is that of no running node (node-1 "), "{e}");
    // The same name as a live node elsewhere.
    let twin = a_node(&pki, "node-1", &url, "", &secure);
    let e = twin.start_error().await;
    assert!(
        e.contains("the node name 'node-1' is held by a live node"),
        "{e}"
    );
    let c = cluster_status(m1).await;
    assert_eq!(live(&c), ["node-1"], "{c}");
    g1.shutdown().await;
}
