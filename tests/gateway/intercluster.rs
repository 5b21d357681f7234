//! Intercluster peering: three clusters (tokyo, newyork, london) of example.test on distinct
//! loopback addresses, each with a component acting as its local users, joined by mutually
//! authenticated TLS links; a remote domain b.test federating through one of them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use fedgate::component_client::{ComponentClient, body, message, presence};
use fedgate::gateway::Gateway;
use fedgate_certs::dev::LeafSpec;

use super::error_condition;
use super::support::*;

const DOMAIN: &str = "example.test";

/// One cluster of example.test: a gateway spec plus its intercluster files.
struct Cluster {
    name: &'static str,
    spec: GwSpec,
    users_file: PathBuf,
    peers_file: PathBuf,
    assignments_file: PathBuf,
    /// The token of its admin listener (`[admin] listen = "<ip>:9270"`).
    admin_token: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(pki: &Pki, name: &'static str, users: &[&str]) -> Self {
        let mut spec = GwSpec::new(pki, DOMAIN);
        // Every cluster serves the same domain: one certificate for example.test and one for
        // the cluster's own name.
        spec.cert = pki.leaf(&format!("{name}-domain"), &LeafSpec::dns(&[DOMAIN]));
        spec.dialback_secret = "one-secret-for-every-cluster".into();
        let (cc, ck) = pki.leaf(&format!("cluster-{name}"), &LeafSpec::dns(&[name]));
        let dir = tempfile::tempdir().unwrap();
        let users_file = dir.path().join("users");
        let peers_file = dir.path().join("peers.toml");
        let assignments_file = dir.path().join("assignments");
        std::fs::write(&users_file, users.join("\n")).unwrap();
        std::fs::write(&peers_file, "").unwrap();
        let admin_token = dir.path().join("admin.token");
        std::fs::write(&admin_token, format!("admin-token-of-{name}-0123456789\n")).unwrap();
        spec.admin = Some(format!(
            "listen = \"{}:9270\"\ntoken_file = {:?}\n",
            spec.ip,
            admin_token.display().to_string()
        ));
        spec.extra = format!(
            "\n[intercluster]\ncluster = \"{name}\"\nlisten = \"{ip}:7400\"\ncert = {cc:?}\nkey = {ck:?}\n\
             directory_file = {uf:?}\npeers_file = {pf:?}\nassignments_file = {af:?}\nheartbeat_secs = 1\ntimeout_secs = 4\n\
             digest_secs = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 400\nqueue_max_secs = 2\nwatch_ms = 100\n",
            ip = spec.ip,
            cc = cc.display().to_string(),
            ck = ck.display().to_string(),
            uf = users_file.display().to_string(),
            pf = peers_file.display().to_string(),
            af = assignments_file.display().to_string(),
        );
        Self {
            name,
            spec,
            users_file,
            peers_file,
            assignments_file,
            admin_token,
            _dir: dir,
        }
    }

    /// Writes the peers file (picked up while running).
    fn set_peers(&self, peers: &[&Cluster]) {
        let text: String = peers
            .iter()
            .map(|p| {
                format!(
                    "[[peers]]\nname = \"{}\"\naddress = \"{}:7400\"\n",
                    p.name, p.spec.ip
                )
            })
            .collect();
        std::fs::write(&self.peers_file, text).unwrap();
    }

    fn set_users(&self, users: &[&str]) {
        std::fs::write(&self.users_file, users.join("\n")).unwrap();
    }
}

/// Every cluster lists every other one as a peer.
fn mesh(clusters: &[&Cluster]) {
    for c in clusters {
        let others: Vec<&Cluster> = clusters
            .iter()
            .copied()
            .filter(|o| o.name != c.name)
            .collect();
        c.set_peers(&others);
    }
}

async fn status(gw: &Gateway) -> serde_json::Value {
    serde_json::from_str(&http_get(gw, "/status").await).unwrap()
}

/// Polls `/status` of `gw` until `f` holds.
async fn until_status(gw: &Gateway, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        last = status(gw).await;
        if f(&last["intercluster"]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}: {last}");
}

/// Until every listed peer of `gw` is up and hosts the given number of users.
async fn until_synced(gw: &Gateway, peers: &[(&str, u64)]) {
    until_status(gw, &format!("{peers:?}"), |ic| {
        peers.iter().all(|(p, n)| {
            ic["peers"][p]["link"] == "up" && ic["peers"][p]["users"].as_u64() == Some(*n)
        })
    })
    .await;
}

fn http_addr(gw: &Gateway) -> String {
    gw.metrics_addr.unwrap().to_string()
}

/// `fedgate directory --http <gw> args…`.
async fn directory(gw: &Gateway, args: &[&str]) -> (Option<i32>, String) {
    let addr = http_addr(gw);
    let mut all = vec!["directory", "--http", &addr];
    all.extend_from_slice(args);
    fedgate_cli(&all).await
}

/// `fedgate directory --admin <gw's admin listener> --token-file <c's token> args…`.
async fn admin(c: &Cluster, gw: &Gateway, args: &[&str]) -> (Option<i32>, String) {
    let addr = gw.admin_addr.as_ref().unwrap().to_string();
    let token = c.admin_token.display().to_string();
    let mut all = vec!["directory", "--admin", &addr, "--token-file", &token];
    all.extend_from_slice(args);
    fedgate_cli(&all).await
}

/// Two distinct elements of a slice, mutably.
fn two<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

/// Sends a message and expects it at `to_comp` exactly as sent.
async fn deliver(
    from: &mut ComponentClient,
    to: &mut ComponentClient,
    f: &str,
    t: &str,
    text: &str,
) {
    from.send(&message(f, t, text, text)).await.unwrap();
    let m = to
        .recv_matching(T, |e| e.name == "message")
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(body(&m).as_deref(), Some(text));
    assert_eq!((m.attr("from"), m.attr("to")), (Some(f), Some(t)), "{text}");
}

/// Three clusters that list each other; b.test reaches example.test through london.
#[tokio::test]
async fn every_entry_point_reaches_every_cluster_and_replies_flow_back() {
    let pki = Pki::new();
    let mut tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let mut newyork = Cluster::new(&pki, "newyork", &["bob@example.test", "dave@example.test"]);
    let mut london = Cluster::new(&pki, "london", &["carol@example.test"]);
    let mut b = GwSpec::new(&pki, "b.test");
    b.static_targets
        .insert(DOMAIN.into(), format!("tcp://{}:5269", london.spec.ip));
    mesh(&[&tokyo, &newyork, &london]);
    for c in [&mut tokyo, &mut newyork, &mut london] {
        c.spec
            .static_targets
            .insert("b.test".into(), format!("tcp://{}:5269", b.ip));
    }
    let (gt, gn, gl, gb) = (
        tokyo.spec.start().await,
        newyork.spec.start().await,
        london.spec.start().await,
        b.start().await,
    );
    until_synced(&gt, &[("newyork", 2), ("london", 1)]).await;
    until_synced(&gn, &[("tokyo", 1), ("london", 1)]).await;
    until_synced(&gl, &[("tokyo", 1), ("newyork", 2)]).await;
    let mut comps = vec![
        tokyo.spec.component(&gt).await,
        newyork.spec.component(&gn).await,
        london.spec.component(&gl).await,
    ];
    let mut cb = b.component(&gb).await;

    // From each cluster's user to a user on each cluster, and a reply back.
    let users = [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ];
    for (i, from) in users.iter().enumerate() {
        for (j, to) in users.iter().enumerate() {
            let text = format!("{i}->{j}");
            if i == j {
                // To a user of the same cluster: delivered there.
                let c = &mut comps[i];
                c.send(&message(from, to, &text, &text)).await.unwrap();
                let m = c.recv_matching(T, |e| e.name == "message").await.unwrap();
                assert_eq!(body(&m).as_deref(), Some(text.as_str()));
                continue;
            }
            let (src, dst) = two(&mut comps, i, j);
            deliver(src, dst, from, to, &text).await;
            deliver(dst, src, to, from, &format!("re {text}")).await;
        }
    }
    let [ct, cn, cl] = &mut comps[..] else {
        unreachable!()
    };
    // From a remote domain through london, to every cluster; replies go out from the home
    // cluster's own s2s.
    deliver(
        &mut cb,
        ct,
        "zed@b.test/r",
        "alice@example.test/phone",
        "b to tokyo",
    )
    .await;
    deliver(
        &mut cb,
        cn,
        "zed@b.test/r",
        "bob@example.test",
        "b to newyork",
    )
    .await;
    deliver(
        &mut cb,
        cl,
        "zed@b.test/r",
        "carol@example.test",
        "b to london",
    )
    .await;
    deliver(
        ct,
        &mut cb,
        "alice@example.test/phone",
        "zed@b.test/r",
        "tokyo to b",
    )
    .await;
    // A user listed in no directory is delivered where the stanza entered (as before).
    deliver(
        &mut cb,
        cl,
        "zed@b.test/r",
        "nobody@example.test",
        "unknown user",
    )
    .await;

    // Presence broadcast from carol to both newyork users: one route on the link, two
    // stanzas delivered.
    let before = metric(
        &http_get(&gl, "/metrics").await,
        "fedgate_intercluster_routed_total{direction=\"out\",peer=\"newyork\"}",
    );
    for to in ["bob@example.test", "dave@example.test"] {
        cl.send(&presence("carol@example.test/desk", to, ""))
            .await
            .unwrap();
    }
    let mut got = HashSet::new();
    for _ in 0..2 {
        let p = cn.recv_matching(T, |e| e.name == "presence").await.unwrap();
        assert_eq!(p.attr("from"), Some("carol@example.test/desk"));
        got.insert(p.attr("to").unwrap().to_owned());
    }
    assert_eq!(got.len(), 2);
    let after = metric(
        &http_get(&gl, "/metrics").await,
        "fedgate_intercluster_routed_total{direction=\"out\",peer=\"newyork\"}",
    );
    assert_eq!(after - before, 2, "two stanzas routed");

    // Observability: /status section, metrics, the directory CLI.
    let s = status(&gl).await;
    let ic = &s["intercluster"];
    assert_eq!(ic["cluster"], "london");
    assert_eq!(ic["users"], 1);
    assert_eq!(ic["peers"]["tokyo"]["users"], 1, "{s}");
    assert_eq!(ic["peers"]["newyork"]["consistency"], "ok");
    assert!(
        ic["peers"]["newyork"]["last_reconcile"].as_u64().is_some(),
        "{s}"
    );
    let m = http_get(&gl, "/metrics").await;
    assert_eq!(
        metric(&m, "fedgate_intercluster_link_up{peer=\"tokyo\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "fedgate_intercluster_entries{peer=\"newyork\"}"),
        2,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "fedgate_intercluster_snapshots_total{direction=\"in\",peer=\"tokyo\"}"
        ) >= 1
    );
    let (code, out) = directory(&gl, &["peers"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cluster london"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("newyork") && l.contains(" up ")),
        "{out}"
    );
    let (code, out) = directory(&gl, &["lookup", "Bob@example.test"]).await;
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["home"].as_str(), v["epoch"].as_u64()),
        (Some("newyork"), Some(1))
    );
    for g in [gt, gn, gl, gb] {
        g.shutdown().await;
    }
}

/// alice moves from tokyo to newyork (admin assignment with a higher epoch) while london sends
/// her a stream of messages: each one arrives exactly once, at the old or the new home, and
/// after the move has propagated they arrive at the new home.
#[tokio::test]
async fn a_user_moves_while_traffic_flows() {
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let newyork = Cluster::new(&pki, "newyork", &["bob@example.test"]);
    let london = Cluster::new(&pki, "london", &["carol@example.test"]);
    mesh(&[&tokyo, &newyork, &london]);
    let (gt, gn, gl) = (
        tokyo.spec.start().await,
        newyork.spec.start().await,
        london.spec.start().await,
    );
    until_synced(&gl, &[("tokyo", 1), ("newyork", 1)]).await;
    until_synced(&gt, &[("newyork", 1), ("london", 1)]).await;
    let mut ct = tokyo.spec.component(&gt).await;
    let mut cn = newyork.spec.component(&gn).await;
    let mut cl = london.spec.component(&gl).await;

    const N: usize = 60;
    let mut moved = false;
    for i in 0..N {
        cl.send(&message(
            "carol@example.test",
            "alice@example.test",
            &format!("m{i}"),
            "x",
        ))
        .await
        .unwrap();
        if i == N / 2 {
            let (code, out) = admin(&newyork, &gn, &["assign", "alice@example.test"]).await;
            assert_eq!(code, Some(0), "{out}");
            assert!(out.contains("\"epoch\": 2"), "{out}");
            moved = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved);
    // Once london sees the move, new messages go to newyork.
    until_status(&gl, "london sees alice at newyork", |ic| {
        ic["peers"]["newyork"]["users"] == 2
    })
    .await;
    cl.send(&message(
        "carol@example.test",
        "alice@example.test",
        "after",
        "x",
    ))
    .await
    .unwrap();
    let mut at: HashMap<String, Vec<&str>> = HashMap::new();
    let mut bounced = 0;
    let deadline = tokio::time::Instant::now() + T;
    while at.values().map(Vec::len).sum::<usize>() + bounced < N + 1 {
        assert!(tokio::time::Instant::now() < deadline, "missing: {at:?}");
        for (name, c) in [("tokyo", &mut ct), ("newyork", &mut cn)] {
            if let Ok(m) = c.recv(Duration::from_millis(100)).await {
                at.entry(m.attr("id").unwrap().to_owned())
                    .or_default()
                    .push(name);
            }
        }
        if let Ok(e) = cl.recv(Duration::from_millis(10)).await
            && error_condition(&e).is_some()
        {
            bounced += 1;
        }
    }
    // Nothing twice, nothing missing (bounced ones came back with an error).
    assert!(at.values().all(|v| v.len() == 1), "duplicates: {at:?}");
    assert_eq!(at.len() + bounced, N + 1);
    assert_eq!(at["after"], vec!["newyork"]);
    assert_eq!(at["m0"], vec!["tokyo"]);
    // No more stray copies arrive later.
    for c in [&mut ct, &mut cn] {
        assert!(c.recv(Duration::from_millis(300)).await.is_err());
    }
    // The move is not a conflict: the higher epoch wins.
    let (_, out) = directory(&gl, &["conflicts"]).await;
    assert!(out.contains("no conflicts"), "{out}");
    for g in [gt, gn, gl] {
        g.shutdown().await;
    }
}

/// alice moves to newyork by admin assignment; newyork restarts (a new incarnation) and still
/// hosts her, since the assignment was saved; withdrawing it is saved too. A hand-broken
/// assignments file stops the gateway from starting, naming the file and line.
#[tokio::test]
async fn an_admin_move_survives_a_restart() {
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test", "dave@example.test"]);
    let newyork = Cluster::new(&pki, "newyork", &["bob@example.test"]);
    mesh(&[&tokyo, &newyork]);
    let (gt, gn) = (tokyo.spec.start().await, newyork.spec.start().await);
    until_synced(&gt, &[("newyork", 1)]).await;
    let (code, out) = admin(&newyork, &gn, &["assign", "Alice@Example.test"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\"epoch\": 2") && out.contains("\"saved\": true"),
        "{out}"
    );
    assert!(!out.contains("not kept"), "{out}");
    let saved = std::fs::read_to_string(&newyork.assignments_file).unwrap();
    assert!(
        saved.lines().any(|l| l == "alice@example.test 2"),
        "{saved}"
    );
    until_synced(&gt, &[("newyork", 2)]).await;

    gn.shutdown().await;
    until_status(&gt, "link down", |ic| {
        ic["peers"]["newyork"]["link"] == "down"
    })
    .await;
    let gn = newyork.spec.start().await;
    until_status(&gt, "newyork back with alice", |ic| {
        ic["peers"]["newyork"]["link"] == "up"
            && ic["peers"]["newyork"]["users"] == 2
            && ic["peers"]["newyork"]["incarnation_changes"] == 1
    })
    .await;
    let (_, out) = directory(&gt, &["lookup", "alice@example.test"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert_eq!(
        (doc["home"].as_str(), doc["epoch"].as_u64()),
        (Some("newyork"), Some(2)),
        "{out}"
    );
    let mut ct = tokyo.spec.component(&gt).await;
    let mut cn = newyork.spec.component(&gn).await;
    deliver(
        &mut ct,
        &mut cn,
        "dave@example.test/r",
        "alice@example.test",
        "moved for good",
    )
    .await;

    // Withdrawn: saved, and alice is tokyo's again.
    let (code, out) = admin(&newyork, &gn, &["unassign", "alice@example.test"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\"removed\": true") && out.contains("\"saved\": true"),
        "{out}"
    );
    let saved = std::fs::read_to_string(&newyork.assignments_file).unwrap();
    assert!(!saved.contains("alice"), "{saved}");
    until_synced(&gt, &[("newyork", 1)]).await;

    // The file cannot be written (a directory is in its place): the assignment is refused with
    // the reason, and not made.
    std::fs::remove_file(&newyork.assignments_file).unwrap();
    std::fs::create_dir(&newyork.assignments_file).unwrap();
    std::fs::write(newyork.assignments_file.join("x"), "").unwrap();
    let (code, out) = admin(&newyork, &gn, &["assign", "alice@example.test"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("HTTP 500: not changed: cannot save"), "{out}");
    let (_, out) = directory(&gn, &["lookup", "alice@example.test"]).await;
    assert!(out.contains("\"home\": \"tokyo\""), "{out}");
    std::fs::remove_dir_all(&newyork.assignments_file).unwrap();
    gn.shutdown().await;

    // Broken by hand: refused at start with the file and line.
    std::fs::write(
        &newyork.assignments_file,
        "# moved\nalice@example.test two\n",
    )
    .unwrap();
    let e = newyork.spec.start_error().await;
    assert!(e.contains("intercluster.assignments_file"), "{e}");
    assert!(
        e.contains(&newyork.assignments_file.display().to_string()),
        "{e}"
    );
    assert!(e.contains("line 2: 'two' is not an epoch"), "{e}");
    gt.shutdown().await;
}

/// `assign` goes to the admin listener with the token, from loopback too: without the token,
/// with a wrong one, or to the status listener, it is refused and nothing changes; reads stay
/// open on the status listener. A gateway whose token file is empty does not start.
#[tokio::test]
async fn admin_requests_need_the_token() {
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let gt = tokyo.spec.start().await;
    let addr = gt.admin_addr.as_ref().unwrap().to_string();

    let (code, out) = directory(&gt, &["--admin", &addr, "assign", "zoe@example.test"]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--token-file"), "{out}");
    let wrong = tokyo._dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let w = wrong.display().to_string();
    let (code, out) = directory(
        &gt,
        &[
            "--admin",
            &addr,
            "--token-file",
            &w,
            "assign",
            "zoe@example.test",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("HTTP 401: wrong admin token"), "{out}");
    // The status listener does not take admin requests, from loopback neither.
    let status_addr = http_addr(&gt);
    let t = tokyo.admin_token.display().to_string();
    let (code, out) = directory(
        &gt,
        &[
            "--admin",
            &status_addr,
            "--token-file",
            &t,
            "assign",
            "zoe@example.test",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("HTTP 404") && out.contains("admin listener"),
        "{out}"
    );
    let (_, out) = directory(&gt, &["lookup", "zoe@example.test"]).await;
    assert!(out.contains("\"home\": null"), "{out}");

    let (code, out) = admin(&tokyo, &gt, &["assign", "zoe@example.test"]).await;
    assert_eq!(code, Some(0), "{out}");
    let (_, out) = directory(&gt, &["lookup", "zoe@example.test"]).await;
    assert!(out.contains("\"home\": \"tokyo\""), "{out}");
    gt.shutdown().await;

    std::fs::write(&tokyo.admin_token, "\n").unwrap();
    let e = tokyo.spec.start_error().await;
    assert!(e.contains("admin.token_file") && e.contains("empty"), "{e}");
}

/// newyork goes down: tokyo keeps its last-known directory and bounces stanzas for newyork's
/// users with remote-server-timeout after the queue time; newyork comes back (a new
/// incarnation), tokyo resyncs and delivers again.
#[tokio::test]
async fn a_cluster_killed_and_restarted() {
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let newyork = Cluster::new(&pki, "newyork", &["bob@example.test"]);
    mesh(&[&tokyo, &newyork]);
    let (gt, gn) = (tokyo.spec.start().await, newyork.spec.start().await);
    until_synced(&gt, &[("newyork", 1)]).await;
    let first_inc = status(&gt).await["intercluster"]["peers"]["newyork"]["incarnation"].clone();
    let mut ct = tokyo.spec.component(&gt).await;
    gn.shutdown().await;
    until_status(&gt, "link down", |ic| {
        ic["peers"]["newyork"]["link"] == "down"
    })
    .await;
    ct.send(&message(
        "alice@example.test/r",
        "bob@example.test",
        "q1",
        "are you there?",
    ))
    .await
    .unwrap();
    let e = ct.recv_matching(T, |e| e.name == "message").await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "remote-server-timeout", "{text}");
    assert!(text.contains("newyork"), "{text}");
    let m = http_get(&gt, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_intercluster_bounces_total{peer=\"newyork\",reason=\"link-down\"}"
        ),
        1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "fedgate_intercluster_link_failures_total{kind=\"closed\",peer=\"newyork\"}"
        ) >= 1
            || metric(
                &m,
                "fedgate_intercluster_link_failures_total{kind=\"connect\",peer=\"newyork\"}"
            ) >= 1,
        "{m}"
    );

    // Back, with one more user.
    newyork.set_users(&["bob@example.test", "eve@example.test"]);
    let gn2 = newyork.spec.start().await;
    until_synced(&gt, &[("newyork", 2)]).await;
    let s = status(&gt).await;
    assert_ne!(
        s["intercluster"]["peers"]["newyork"]["incarnation"], first_inc,
        "{s}"
    );
    assert_eq!(
        s["intercluster"]["peers"]["newyork"]["incarnation_changes"], 1,
        "{s}"
    );
    let mut cn = newyork.spec.component(&gn2).await;
    deliver(
        &mut ct,
        &mut cn,
        "alice@example.test/r",
        "eve@example.test",
        "welcome back",
    )
    .await;
    gt.shutdown().await;
    gn2.shutdown().await;
}

/// Acknowledged upstream only once the next hop took it: b.test sends over XEP-0198 to london,
/// which routes to newyork (bob's home), whose component stops reading. While it confirms
/// nothing, newyork does not acknowledge the routes to london, and london does not acknowledge
/// the stanzas to b.test: had newyork died then, london would still hold them (and bounce
/// them), and b.test would still hold them before it. When the component reads again,
/// everything is delivered and acknowledged all the way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_acknowledged_only_after_the_next_hop_confirmed_it() {
    let pki = Pki::new();
    let mut newyork = Cluster::new(&pki, "newyork", &["bob@example.test"]);
    let london = Cluster::new(&pki, "london", &["carol@example.test"]);
    let mut b = GwSpec::new(&pki, "b.test");
    b.static_targets
        .insert(DOMAIN.into(), format!("tcp://{}:5269", london.spec.ip));
    newyork
        .spec
        .static_targets
        .insert("b.test".into(), format!("tcp://{}:5269", b.ip));
    mesh(&[&newyork, &london]);
    let (gn, gl, gb) = (
        newyork.spec.start().await,
        london.spec.start().await,
        b.start().await,
    );
    until_synced(&gl, &[("newyork", 1)]).await;
    until_synced(&gn, &[("london", 1)]).await;
    let mut cn = newyork.spec.component(&gn).await;
    let mut cb = b.component(&gb).await;
    deliver(
        &mut cb,
        &mut cn,
        "zed@b.test",
        "bob@example.test",
        "warm-up",
    )
    .await;
    let unconfirmed = |m: &str, link: &str| {
        metric(
            m,
            &format!("fedgate_unconfirmed_stanzas{{link=\"{link}\"}}"),
        )
    };
    cn.pause(true);
    let n = 40;
    for i in 0..n {
        cb.send(&message(
            "zed@b.test",
            "bob@example.test",
            &format!("k{i}"),
            "x",
        ))
        .await
        .unwrap();
    }
    // newyork wrote them all to its component, which confirms none of them.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = http_get(&gn, "/metrics").await;
        if unconfirmed(&m, "component") >= n {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not written\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // So london holds every route unacknowledged (the warm-up too, if the component's last
    // ping answer had not come yet), and b.test every stanza unconfirmed.
    let s = status(&gl).await;
    let unacked = s["intercluster"]["peers"]["newyork"]["unacked"].as_u64();
    assert!(unacked >= Some(n), "{s}");
    let m = http_get(&gb, "/metrics").await;
    assert!(unconfirmed(&m, "s2s-out") >= n, "{m}");
    // The component reads again: all delivered, and confirmed back to b.test.
    cn.pause(false);
    let mut got = HashSet::new();
    while got.len() < n as usize {
        let e = cn
            .recv_matching(T, |e| e.name == "message")
            .await
            .unwrap_or_else(|e| panic!("{e}: got {}", got.len()));
        got.insert(e.attr("id").unwrap().to_owned());
    }
    until_status(&gl, "routes acknowledged", |ic| {
        ic["peers"]["newyork"]["unacked"].as_u64() == Some(0)
    })
    .await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = http_get(&gb, "/metrics").await;
        if unconfirmed(&m, "s2s-out") == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not confirmed\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(cn);
    gb.shutdown().await;
    gl.shutdown().await;
    gn.shutdown().await;
}

/// tokyo and newyork both list dave with epoch 1: every cluster reports the conflict and routes
/// dave's stanzas to the same cluster (the name that sorts first: newyork), never to both.
#[tokio::test]
async fn a_conflict_is_reported_and_routed_to_one_cluster() {
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test", "dave@example.test"]);
    let newyork = Cluster::new(&pki, "newyork", &["bob@example.test", "dave@example.test"]);
    let london = Cluster::new(&pki, "london", &["carol@example.test"]);
    mesh(&[&tokyo, &newyork, &london]);
    let (gt, gn, gl) = (
        tokyo.spec.start().await,
        newyork.spec.start().await,
        london.spec.start().await,
    );
    until_synced(&gl, &[("tokyo", 2), ("newyork", 2)]).await;
    until_synced(&gt, &[("newyork", 2), ("london", 1)]).await;
    let mut ct = tokyo.spec.component(&gt).await;
    let mut cn = newyork.spec.component(&gn).await;
    let mut cl = london.spec.component(&gl).await;
    until_status(&gl, "conflict", |ic| ic["conflicts"] == 1).await;
    let (code, out) = directory(&gl, &["conflicts"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("dave@example.test: epoch 1 claimed by newyork, tokyo (routed to newyork)"),
        "{out}"
    );
    let m = http_get(&gt, "/metrics").await;
    assert_eq!(metric(&m, "fedgate_intercluster_conflicts "), 1, "{m}");
    // From london and from tokyo (which lists dave itself): newyork gets it, tokyo does not.
    deliver(
        &mut cl,
        &mut cn,
        "carol@example.test",
        "dave@example.test",
        "from london",
    )
    .await;
    deliver(
        &mut ct,
        &mut cn,
        "alice@example.test",
        "dave@example.test",
        "from tokyo",
    )
    .await;
    assert!(
        ct.recv(Duration::from_millis(500)).await.is_err(),
        "tokyo got a copy"
    );
    // Resolved by an explicit move: tokyo takes dave with a higher epoch.
    let (code, out) = admin(&tokyo, &gt, &["assign", "dave@example.test"]).await;
    assert_eq!(code, Some(0), "{out}");
    until_status(&gl, "conflict resolved", |ic| ic["conflicts"] == 0).await;
    deliver(
        &mut cl,
        &mut ct,
        "carol@example.test",
        "dave@example.test",
        "after the move",
    )
    .await;
    for g in [gt, gn, gl] {
        g.shutdown().await;
    }
}

/// london joins while tokyo and newyork run: until they list it, its links are refused
/// (cert-name: not a configured peer); once their peers files name it, it syncs and routes.
#[tokio::test]
async fn a_peer_is_added_at_runtime() {
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let newyork = Cluster::new(&pki, "newyork", &["bob@example.test"]);
    let london = Cluster::new(&pki, "london", &["carol@example.test"]);
    tokyo.set_peers(&[&newyork]);
    newyork.set_peers(&[&tokyo]);
    london.set_peers(&[&tokyo, &newyork]);
    let (gt, gn, gl) = (
        tokyo.spec.start().await,
        newyork.spec.start().await,
        london.spec.start().await,
    );
    until_synced(&gt, &[("newyork", 1)]).await;
    until_status(&gl, "refused by tokyo", |ic| {
        ic["peers"]["tokyo"]["link"] == "down"
    })
    .await;
    // tokyo counted the unknown caller's attempts (without a per-caller label).
    let mut refused = 0;
    for _ in 0..100 {
        let m = http_get(&gt, "/metrics").await;
        refused = metric(
            &m,
            "fedgate_intercluster_link_failures_total{kind=\"cert-name\",peer=\"unknown\"}",
        );
        if refused > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 0);
    tokyo.set_peers(&[&newyork, &london]);
    newyork.set_peers(&[&tokyo, &london]);
    until_synced(&gl, &[("tokyo", 1), ("newyork", 1)]).await;
    until_synced(&gt, &[("newyork", 1), ("london", 1)]).await;
    let mut ct = tokyo.spec.component(&gt).await;
    let mut cl = london.spec.component(&gl).await;
    deliver(
        &mut ct,
        &mut cl,
        "alice@example.test",
        "carol@example.test",
        "hello london",
    )
    .await;
    // And removed again: tokyo drops london's users (they are delivered locally, unknown).
    tokyo.set_peers(&[&newyork]);
    until_status(&gt, "london removed", |ic| ic["peers"]["london"].is_null()).await;
    let (_, out) = directory(&gt, &["lookup", "carol@example.test"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["home"].is_null(), "{out}");
    for g in [gt, gn, gl] {
        g.shutdown().await;
    }
}

/// The example cluster config loads, with its paths resolved and its users file valid.
#[test]
fn the_cluster_example_config_loads() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster-tokyo.toml");
    let c = fedgate::config::Config::load(&p, &fedgate::config::Env::new()).unwrap();
    let ic = c.intercluster.unwrap();
    assert_eq!(ic.cluster, "tokyo");
    assert_eq!(ic.peers.len(), 2);
    assert!(ic.ldap.is_some());
    let users = ic.directory_file.unwrap();
    assert!(users.is_absolute());
    let text = std::fs::read_to_string(users).unwrap();
    let u = fedgate_intercluster::sources::parse_user_file(&text).unwrap();
    assert_eq!(u.get("yuki@example.test"), Some(&2));
    assert_eq!(
        ic.assignments_file.as_deref(),
        Some(std::path::Path::new("/var/lib/fedgate/assignments"))
    );
    let admin = c.admin.unwrap();
    assert_eq!(
        admin.unix.as_deref(),
        Some(std::path::Path::new("/run/fedgate/admin.sock"))
    );
    assert!(admin.token_file.is_some());
}

/// A cluster whose users come from LDAP (a real slapd on loopback): its peers learn them, a
/// stanza for one of them reaches that cluster, and a user added in LDAP shows up at the peer
/// after the next poll.
#[tokio::test]
async fn users_from_ldap_are_synced_and_routed() {
    use super::slapd::Slapd;
    let pki = Pki::new();
    let ldap_ip = std::net::Ipv4Addr::new(127, 0, 4, 200);
    let port = super::slapd::free_port(ldap_ip).unwrap();
    let directory = Slapd::start(ldap_ip, port, "dc=example,dc=test", "admin-secret").unwrap();
    let mut ldif = String::from(
        "dn: ou=people,dc=example,dc=test\nobjectClass: organizationalUnit\nou: people\n\n",
    );
    for u in ["erin", "frank"] {
        ldif.push_str(&format!(
            "dn: uid={u},ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: {u}\n\
             cn: {u}\nsn: {u}\nmail: {u}@example.test\n\n"
        ));
    }
    directory.add_ldif(&ldif).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("ldap.pw");
    std::fs::write(&pw, "admin-secret").unwrap();

    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let mut newyork = Cluster::new(&pki, "newyork", &[]);
    newyork.spec.extra = newyork
        .spec
        .extra
        .replace("[intercluster]\n", "[intercluster]\nldap_poll_secs = 1\n")
        + &format!(
            "\n[intercluster.ldap]\nurl = \"{url}\"\nbind_dn = \"{dn}\"\nbind_password_file = {pw:?}\n\
         base = \"ou=people,dc=example,dc=test\"\nfilter = \"(objectClass=inetOrgPerson)\"\n\
         attribute = \"mail\"\n",
            url = directory.url(),
            dn = directory.admin_dn(),
            pw = pw.display().to_string(),
        );
    mesh(&[&tokyo, &newyork]);
    let (gt, gn) = (tokyo.spec.start().await, newyork.spec.start().await);
    until_synced(&gt, &[("newyork", 2)]).await;
    let mut ct = tokyo.spec.component(&gt).await;
    let mut cn = newyork.spec.component(&gn).await;
    deliver(
        &mut ct,
        &mut cn,
        "alice@example.test",
        "frank@example.test",
        "to an LDAP user",
    )
    .await;

    directory
        .add_ldif(
            "dn: uid=grace,ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: grace\n\
             cn: grace\nsn: grace\nmail: grace@example.test\n",
        )
        .unwrap();
    until_synced(&gt, &[("newyork", 3)]).await;
    deliver(
        &mut ct,
        &mut cn,
        "alice@example.test",
        "grace@example.test",
        "to a new LDAP user",
    )
    .await;
    drop(directory);
}

/// A stanza that came over an intercluster link for a non-hosted domain is never relayed to
/// the outside (a buggy or hostile peer cannot use a cluster as an open relay).
#[tokio::test]
async fn a_peer_cannot_use_a_cluster_as_a_relay() {
    use fedgate_s2s::driver::{Origin, Stanza};
    let pki = Pki::new();
    let tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let gw = tokyo.spec.start().await;
    let el = message("alice@example.test", "eve@elsewhere.test", "r1", "relay me");
    let size = el.to_bytes().len();
    gw.ctx.sink().route(Stanza::new(
        el,
        size,
        Origin::Intercluster {
            peer: "newyork".into(),
        },
    ));
    let m = http_get(&gw, "/metrics").await;
    assert_eq!(
        metric(&m, "fedgate_stanzas_dropped_total{reason=\"relay\"}"),
        1,
        "{m}"
    );
    assert_eq!(gw.pool.len(), 0, "no outbound stream was opened");
}

/// The policy is part of what clusters must agree on: a hot reload on one cluster sets its
/// links up again with the new digest, refused while the clusters differ, and back up once
/// the other cluster reloads the same policy.
#[tokio::test]
async fn a_policy_reload_is_checked_again_between_clusters() {
    let pki = Pki::new();
    let mut tokyo = Cluster::new(&pki, "tokyo", &["alice@example.test"]);
    let mut london = Cluster::new(&pki, "london", &["bob@example.test"]);
    let dir = tempfile::tempdir().unwrap();
    let v1 = "default = \"allow\"\n";
    let v2 =
        "default = \"allow\"\n[[rule]]\nid = \"no-c\"\ndomains = [\"c.test\"]\naction = \"deny\"\n";
    let mut files = Vec::new();
    for c in [&mut tokyo, &mut london] {
        let f = dir.path().join(format!("{}-policy.toml", c.name));
        std::fs::write(&f, v1).unwrap();
        c.spec.extra.push_str(&format!(
            "\n[policy]\nfile = {:?}\n",
            f.display().to_string()
        ));
        files.push(f);
    }
    mesh(&[&tokyo, &london]);
    let (gt, gl) = (tokyo.spec.start().await, london.spec.start().await);
    until_synced(&gt, &[("london", 1)]).await;
    let before = status(&gt).await["intercluster"]["consistency"].clone();
    std::fs::write(&files[1], v2).unwrap();
    until_status(&gl, "london's new digest", |ic| ic["consistency"] != before).await;
    until_status(&gt, "the link refused as inconsistent", |ic| {
        ic["peers"]["london"]["link"] == "down"
            && ic["peers"]["london"]["last_error"]["kind"] == "consistency"
    })
    .await;
    std::fs::write(&files[0], v2).unwrap();
    until_synced(&gt, &[("london", 1)]).await;
    until_synced(&gl, &[("tokyo", 1)]).await;
    let after = status(&gt).await["intercluster"].clone();
    assert_eq!(
        after["consistency"],
        status(&gl).await["intercluster"]["consistency"]
    );
    assert_eq!(after["peers"]["london"]["consistency"], "ok", "{after}");
    for g in [gt, gl] {
        g.shutdown().await;
    }
}
