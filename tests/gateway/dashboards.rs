//! The Grafana dashboard and the Prometheus alert rules under `deploy/` use only metrics that
//! a running gateway exports. A gateway with SIP federation, an intercluster peer and a policy
//! is exercised until every labelled metric the artefacts name has a series (a labelled metric
//! with no series is not in `/metrics` at all, not even its `# TYPE` line); then every name
//! in the artefacts must be a `# TYPE` family of its `/metrics` (histogram names may carry
//! `_bucket`, `_sum`, `_count`).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use fedgate::component_client::{message, presence};
use fedgate::sip_peer::{PeerTls, SipPeer, answer};
use fedgate_certs::dev::LeafSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/fedgate-dashboard.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/fedgate-alerts.yml"
);

/// Every `fedgate_…` name in the queries of the dashboard (panel targets and variables) and
/// in the `expr` of the rules.
fn names_used() -> BTreeSet<String> {
    let mut queries = Vec::new();
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut queries);
    let n_dash = queries.len();
    assert!(n_dash > 30, "the dashboard's queries were found: {n_dash}");
    let rules = std::fs::read_to_string(RULES).unwrap();
    queries.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_owned),
    );
    assert!(
        queries.len() - n_dash >= 9,
        "the rules' expressions were found"
    );
    let mut names = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("fedgate_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// The metric families of a `/metrics` text (`# TYPE` lines), with the series names of
/// histograms and summaries.
fn families(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            out.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_rules_is_exported() {
    let used = names_used();
    let pki = Pki::new();
    let (mut a, b, _dns) = srv_pair(&pki).await;

    // SIP: lync.test answers at an edge run here; down.test's route has nothing listening.
    let (lc, lk) = pki.leaf("lync", &LeafSpec::dns(&["lync.test"]));
    let lync_tls = PeerTls::load(&lc, &lk, &pki.ca_path()).unwrap();
    let edge = TcpListener::bind((next_ip(), 5061)).await.unwrap();
    let nowhere = SocketAddr::new(next_ip().into(), 5061);
    // Intercluster: a peer cluster "zzz" that is not there ("aaa" sorts first, so it dials).
    let (cc, ck) = pki.leaf("cluster-aaa", &LeafSpec::dns(&["aaa"]));
    let dir = tempfile::tempdir().unwrap();
    // A directory file with a line that is not a JID: refused (and counted) at start.
    let users = dir.path().join("users");
    std::fs::write(&users, "alice@example.test\nnot a jid at all\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n\
         [[rule]]\nid = \"blocked\"\ndomains = [\"*.blocked.test\"]\naction = \"deny\"\n\
         [[rule]]\nid = \"slow\"\ndomains = [\"nowhere.test\"]\naction = \"allow\"\n\
         rate = { per_second = 0.01, burst = 1 }\n",
    )
    .unwrap();
    a.extra = format!(
        "\n[policy]\nfile = {policy:?}\n\
         \n[sip]\nlisten = [\"{ip}:5061\"]\nconnect_timeout_secs = 3\ntransaction_timeout_secs = 5\n\
         [[sip.partners]]\ndomain = \"lync.test\"\nroute = \"{edge}\"\nflavor = \"standard\"\n\
         [[sip.partners]]\ndomain = \"down.test\"\nroute = \"{nowhere}\"\nflavor = \"standard\"\n\
         \n[intercluster]\ncluster = \"aaa\"\nlisten = \"{ip}:7400\"\ncert = {cc:?}\nkey = {ck:?}\n\
         directory_file = {users:?}\nbackoff_min_ms = 50\nbackoff_max_ms = 400\nconnect_timeout_secs = 2\n\
         [[intercluster.peers]]\nname = \"zzz\"\naddress = \"{zzz}:7400\"\n",
        policy = policy.display().to_string(),
        ip = a.ip,
        edge = edge.local_addr().unwrap(),
        cc = cc.display().to_string(),
        ck = ck.display().to_string(),
        zzz = next_ip(),
        users = users.display().to_string(),
    );
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;

    // Federation with b.test: streams, authentication, routing, acknowledgements.
    assert_delivered(&mut ca, &mut cb, "alice@a.test/d", "bob@b.test", "hello").await;
    // A domain that does not exist (bounce and failure, kind dns), then its rate limit; a
    // presence there cannot be bounced (dropped).
    for (id, to) in [("n1", "x@nowhere.test"), ("n2", "y@nowhere.test")] {
        ca.send(&message("alice@a.test/d", to, id, "anyone?"))
            .await
            .unwrap();
        ca.recv_matching(T, |e| e.attr("id") == Some(id))
            .await
            .unwrap();
    }
    ca.send(&presence("alice@a.test", "z@other-nowhere.test", ""))
        .await
        .unwrap();
    // A domain the policy denies.
    ca.send(&message(
        "alice@a.test/d",
        "x@evil.blocked.test",
        "p1",
        "hi",
    ))
    .await
    .unwrap();
    ca.recv_matching(T, |e| e.attr("id") == Some("p1"))
        .await
        .unwrap();
    // SIP: a page-mode MESSAGE answered 200 by lync.test; one to down.test fails.
    ca.send(&message("alice@a.test/d", "bob@lync.test", "s1", "page"))
        .await
        .unwrap();
    let mut lync = tokio::time::timeout(T, SipPeer::accept(&edge, &lync_tls))
        .await
        .unwrap()
        .unwrap();
    let req = lync.recv(T).await.unwrap();
    lync.send(&answer(&req, 200, "OK", "t")).await.unwrap();
    ca.send(&message("alice@a.test/d", "bob@down.test", "s2", "page"))
        .await
        .unwrap();
    ca.recv_matching(T, |e| e.attr("id") == Some("s2"))
        .await
        .unwrap();
    // A TLS handshake that fails: a ClientHello that is not one.
    let mut raw = tokio::net::TcpStream::connect((a.ip, 5269)).await.unwrap();
    raw.write_all(b"\x16\x03\x01\x00\x08notahello")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(T, raw.read_to_end(&mut sink)).await;

    // The intercluster dial fails in the background; wait until every name is there.
    let deadline = tokio::time::Instant::now() + T * 2;
    let missing = loop {
        let text = http_get(&ga, "/metrics").await;
        let have = families(&text);
        let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "names in deploy/ that the gateway does not export: {missing:?}\n(used: {used:?})"
    );
    assert!(used.len() >= 25, "{used:?}");
    let text = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "fedgate_intercluster_file_reloads_total{file=\"directory\",result=\"refused\"}"
        ),
        1,
        "{text}"
    );
    drop(lync);
    ga.shutdown().await;
    gb.shutdown().await;
}

/// The dashboard's panel queries, with Grafana's variables given values, as recording rules:
/// `promtool check rules` then parses each one as PromQL.
fn dashboard_queries_as_rules() -> String {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| match (k.as_str(), v) {
                ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                _ => walk(v, out),
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$remote_domain", ".*")
            .replace("$partner", ".*")
            .replace("$peer", ".*");
        assert!(!e.contains('$'), "a variable the test does not know: {e}");
        y.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    y
}

/// The alert rules pass `promtool check rules` and their unit tests
/// (`deploy/prometheus/fedgate-alerts.test.yml`: each alert fires on the series that should
/// raise it, with its labels and texts, and stays quiet on the others), and every query of
/// the dashboard is valid PromQL.
#[test]
fn the_alert_rules_check_and_pass_their_promtool_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let tmp = tempfile::tempdir().unwrap();
    let dashboard_rules = tmp.path().join("dashboard-queries.yml");
    std::fs::write(&dashboard_rules, dashboard_queries_as_rules()).unwrap();
    let dashboard_rules = dashboard_rules.display().to_string();
    for args in [
        ["check", "rules", "fedgate-alerts.yml"],
        ["test", "rules", "fedgate-alerts.test.yml"],
        ["check", "rules", &dashboard_rules],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool: {e} (scripts/install-test-deps.sh installs it: Debian package prometheus)")
            });
        assert!(
            out.status.success(),
            "promtool {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
