//! The internal link (issue 8) with a fedgate as the internal server: edge A fronts
//! example.test for the world, internal server B (a second fedgate hosting example.test with
//! a component) sends all its outbound s2s to A's internal listener, and A forwards inbound
//! traffic to B over s2s, acting as the remote domain.

use std::time::Duration;

use fedgate::component_client::message;
use fedgate::testdns::Zone;

use super::error_condition;
use super::support::*;

struct Setup {
    edge: fedgate::gateway::Gateway,
    internal: fedgate::gateway::Gateway,
    remote: fedgate::gateway::Gateway,
    edge_spec: GwSpec,
    internal_spec: GwSpec,
    remote_spec: GwSpec,
    _dns: fedgate::testdns::TestDns,
}

async fn setup(pki: &Pki, edge_policy: Option<(&tempfile::TempDir, &str)>) -> Setup {
    let mut edge = GwSpec::new(pki, "example.test");
    let mut internal = GwSpec::new(pki, "example.test");
    let mut remote = GwSpec::new(pki, "r.test");
    let internal_listener = next_ip();
    // The world finds example.test at the edge and r.test at the remote gateway.
    let mut zone = Zone::new();
    srv_to(&mut zone, "example.test", edge.ip);
    srv_to(&mut zone, "r.test", remote.ip);
    let dns = dns(zone).await;
    edge.dns = Some(dns.addr());
    remote.dns = Some(dns.addr());
    // The edge: no component; example.test's own server is B.
    edge.domain_extra = format!("internal = \"tcp://{}:5269\"\n", internal.ip);
    edge.no_component = true;
    edge.extra = format!("\n[internal]\nlisten = \"{internal_listener}:5269\"\n");
    if let Some((dir, text)) = edge_policy {
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, text).unwrap();
        edge.extra.push_str(&format!(
            "\n[policy]\nfile = {:?}\n",
            p.display().to_string()
        ));
    }
    // The internal server sends every outbound stream to the edge's internal listener.
    internal
        .static_targets
        .insert("*".into(), format!("tcp://{internal_listener}:5269"));
    let (e, i, r) = (
        edge.start().await,
        internal.start().await,
        remote.start().await,
    );
    Setup {
        edge: e,
        internal: i,
        remote: r,
        edge_spec: edge,
        internal_spec: internal,
        remote_spec: remote,
        _dns: dns,
    }
}

#[tokio::test]
async fn the_internal_server_federates_only_through_the_edge() {
    let pki = Pki::new();
    let s = setup(&pki, None).await;
    let mut user = s.internal_spec.component(&s.internal).await;
    let mut peer = s.remote_spec.component(&s.remote).await;

    // Inbound: r.test → edge → (s2s, the edge acting as r.test) → internal server.
    assert_delivered(
        &mut peer,
        &mut user,
        "bob@r.test/x",
        "alice@example.test",
        "hello inside",
    )
    .await;
    // Outbound: internal server → edge's internal listener → r.test.
    assert_delivered(
        &mut user,
        &mut peer,
        "alice@example.test/y",
        "bob@r.test",
        "hello outside",
    )
    .await;

    let m = http_get(&s.edge, "/metrics").await;
    assert!(
        metric(
            &m,
            "fedgate_stanzas_routed_total{path=\"to-internal\",remote_domain=\"example.test\"}"
        ) >= 1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "fedgate_stanzas_routed_total{path=\"local-to-remote\",remote_domain=\"r.test\"}"
        ) >= 1,
        "{m}"
    );
    // The remote side only ever talked to the edge.
    let r: serde_json::Value = serde_json::from_str(&http_get(&s.remote, "/status").await).unwrap();
    let attempts = r["remote_domains"]["example.test"]["attempts"].to_string();
    assert!(
        attempts.contains(&s.edge_spec.ip.to_string())
            && !attempts.contains(&s.internal_spec.ip.to_string()),
        "{attempts}"
    );

    // A domain that does not exist: the internal sender gets remote-server-not-found.
    user.send(&message(
        "alice@example.test/y",
        "x@nowhere.test",
        "n1",
        "hi",
    ))
    .await
    .unwrap();
    let e = user.recv(T).await.unwrap();
    assert_eq!(error_condition(&e).unwrap().0, "remote-server-not-found");

    // The internal server goes away: the remote sender hears the local service is unavailable.
    s.internal.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    peer.send(&message(
        "bob@r.test/x",
        "alice@example.test",
        "d1",
        "still there?",
    ))
    .await
    .unwrap();
    let e = peer.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "service-unavailable", "{text}");
    assert!(text.contains("local server for example.test"), "{text}");
    s.edge.shutdown().await;
    s.remote.shutdown().await;
}

#[tokio::test]
async fn edge_policy_applies_to_the_internal_servers_traffic() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let s = setup(
        &pki,
        Some((&dir, "default = \"allow\"\n[[rule]]\nid = \"no-r\"\ndomains = [\"r.test\"]\naction = \"deny\"\n")),
    )
    .await;
    let mut user = s.internal_spec.component(&s.internal).await;
    user.send(&message(
        "alice@example.test/y",
        "bob@r.test",
        "p1",
        "denied?",
    ))
    .await
    .unwrap();
    let e = user.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "policy-violation");
    assert!(text.contains("no-r"), "{text}");
    s.edge.shutdown().await;
    s.internal.shutdown().await;
    s.remote.shutdown().await;
}
