//! Whole gateways in one process, on distinct loopback addresses, with a real in-process DNS
//! server, real TLS (test CA made by rcgen) and XEP-0114 components on both sides.

mod acks;
mod addresses;
mod aliases;
mod certs;
mod cluster;
mod crl;
mod dane;
mod dashboards;
mod expiry;
#[path = "../support/gw_child.rs"]
#[allow(dead_code)]
mod gw_child;
mod http;
mod intercluster;
mod internal;
mod logs;
mod package;
mod policy;
mod posh;
mod probe;
#[path = "../support/redis.rs"]
mod redis_server;
#[path = "../support/relay.rs"]
#[allow(dead_code)]
mod relay;
mod silent_dns;
mod sip;
#[path = "../support/slapd.rs"]
mod slapd;
mod stream_errors;
mod support;

use std::time::Duration;

use fedgate::component_client::{body, message, presence};
use fedgate::testdns::Zone;
use fedgate_certs::dev::LeafSpec;
use fedgate_s2s::element::{Element, NS_CONTENT};
use support::*;

fn error_condition(el: &Element) -> Option<(String, String)> {
    fedgate_s2s::wire::stanza_error(el)
}

/// Two gateways a.test and b.test found through SRV, each with a component.
#[tokio::test]
async fn message_presence_and_iq_cross_the_federation() {
    let pki = Pki::new();
    let (a, b, dns) = srv_pair(&pki).await;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;

    ca.send(&message(
        "alice@a.test/home",
        "bob@b.test",
        "m1",
        "hello bob",
    ))
    .await
    .unwrap();
    let m = cb.recv(T).await.unwrap();
    assert_eq!(m.name, "message");
    assert_eq!(m.attr("from"), Some("alice@a.test/home"));
    assert_eq!(m.attr("to"), Some("bob@b.test"));
    assert_eq!(body(&m).as_deref(), Some("hello bob"));
    cb.send(&message(
        "bob@b.test/w",
        "alice@a.test/home",
        "m2",
        "hi alice",
    ))
    .await
    .unwrap();
    let r = ca.recv(T).await.unwrap();
    assert_eq!(body(&r).as_deref(), Some("hi alice"));

    // Presence subscription both ways.
    ca.send(&presence("alice@a.test", "bob@b.test", "subscribe"))
        .await
        .unwrap();
    let p = cb.recv(T).await.unwrap();
    assert_eq!(
        (p.name.as_str(), p.attr("type")),
        ("presence", Some("subscribe"))
    );
    cb.send(&presence("bob@b.test", "alice@a.test", "subscribed"))
        .await
        .unwrap();
    cb.send(&presence("bob@b.test/w", "alice@a.test", ""))
        .await
        .unwrap();
    let p = ca.recv(T).await.unwrap();
    assert_eq!(p.attr("type"), Some("subscribed"));
    let p = ca.recv(T).await.unwrap();
    assert_eq!(
        (p.attr("from"), p.attr("type")),
        (Some("bob@b.test/w"), None)
    );

    // iq round trip through the remote domain's service (a ping to the domain itself would be
    // answered by its gateway: see acks::a_ping_to_a_hosted_domain_is_answered_by_the_gateway).
    let iq = Element::new("iq", NS_CONTENT)
        .with_attr("from", "alice@a.test/home")
        .with_attr("to", "b.test")
        .with_attr("id", "ping1")
        .with_attr("type", "get")
        .with_child(Element::new("query", "jabber:iq:version"));
    ca.send(&iq).await.unwrap();
    let q = cb.recv(T).await.unwrap();
    assert!(q.child("query", "jabber:iq:version").is_some());
    let result = Element::new("iq", NS_CONTENT)
        .with_attr("from", "b.test")
        .with_attr("to", "alice@a.test/home")
        .with_attr("id", "ping1")
        .with_attr("type", "result");
    cb.send(&result).await.unwrap();
    let r = ca.recv(T).await.unwrap();
    assert_eq!(
        (r.attr("id"), r.attr("type")),
        (Some("ping1"), Some("result"))
    );

    // Both sides authenticated with SASL EXTERNAL (certificates from the trusted test CA),
    // and the observability endpoints say so.
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"out\",mechanism=\"sasl-external\",method=\"pkix\",result=\"ok\"}"
        ),
        1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "fedgate_stanzas_routed_total{path=\"local-to-remote\",remote_domain=\"b.test\"}"
        ) >= 3
    );
    // /status says how each direction of the pair authenticated (a.test's stream into b.test,
    // b.test's own stream to a.test).
    let s: serde_json::Value = serde_json::from_str(&http_get(&gb, "/status").await).unwrap();
    for direction in ["in", "out"] {
        let pair = &s["remote_domains"]["a.test"]["auth"][direction]["b.test"];
        assert_eq!(
            (&pair["mechanism"], &pair["method"]),
            (&"sasl-external".into(), &"pkix".into()),
            "{direction}: {s}"
        );
    }
    assert_eq!(http_get(&ga, "/healthz").await, "ok\n");
    ga.shutdown().await;
    gb.shutdown().await;
    dns.stop().await;
}

/// `_xmpps-server` only: the outbound stream uses direct TLS (XEP-0368) on the sniffing port.
#[tokio::test]
async fn direct_tls_through_xmpps_server_srv() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let b = GwSpec::new(&pki, "b.test");
    let mut zone = Zone::new();
    zone.srv("_xmpps-server._tcp.b.test", 0, 0, 5269, "xmpps.b.test")
        .a("xmpps.b.test", b.ip);
    let dns = dns(zone).await;
    a.dns = Some(dns.addr());
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    ca.send(&message(
        "alice@a.test",
        "bob@b.test",
        "d1",
        "over direct TLS",
    ))
    .await
    .unwrap();
    let m = cb.recv(T).await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("over direct TLS"));
    let s: serde_json::Value = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
    let attempts = s["remote_domains"]["b.test"]["attempts"].to_string();
    assert!(
        attempts.contains("direct TLS") && attempts.contains("\"ok\""),
        "{attempts}"
    );
    ga.shutdown().await;
    gb.shutdown().await;
}

/// The first SRV target is down; the second works.
#[tokio::test]
async fn falls_back_to_the_next_srv_target() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let b = GwSpec::new(&pki, "b.test");
    let dead = next_ip();
    let mut zone = Zone::new();
    zone.srv("_xmpp-server._tcp.b.test", 0, 0, 5269, "dead.b.test")
        .a("dead.b.test", dead)
        .srv("_xmpp-server._tcp.b.test", 10, 0, 5269, "live.b.test")
        .a("live.b.test", b.ip);
    let dns = dns(zone).await;
    a.dns = Some(dns.addr());
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(
        &mut ca,
        &mut cb,
        "alice@a.test",
        "bob@b.test",
        "second target",
    )
    .await;
    let s: serde_json::Value = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
    let attempts = s["remote_domains"]["b.test"]["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        attempts[0]["target"]
            .as_str()
            .unwrap()
            .starts_with("dead.b.test"),
        "{attempts:?}"
    );
    assert!(
        attempts[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("connect:"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1]["result"], "ok");
    ga.shutdown().await;
    gb.shutdown().await;
}

/// A "." SRV target and an unknown domain: the sender gets remote-server-not-found with the
/// failure kind in the text; presence is never bounced.
#[tokio::test]
async fn no_service_and_unknown_domains_bounce() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut zone = Zone::new();
    zone.srv("_xmpp-server._tcp.noservice.test", 0, 0, 0, ".");
    let dns = dns(zone).await;
    a.dns = Some(dns.addr());
    let ga = a.start().await;
    let mut ca = a.component(&ga).await;
    for (to, kind) in [("x@noservice.test", "dns"), ("x@unknown.test", "dns")] {
        ca.send(&presence("alice@a.test", to, "")).await.unwrap();
        ca.send(&message("alice@a.test/r", to, "b1", "anyone?"))
            .await
            .unwrap();
        let e = ca.recv(T).await.unwrap();
        assert_eq!(
            (e.attr("type"), e.attr("from"), e.attr("to")),
            (Some("error"), Some(to), Some("alice@a.test/r"))
        );
        let (cond, text) = error_condition(&e).unwrap();
        assert_eq!(cond, "remote-server-not-found", "{text}");
        assert!(text.contains(kind), "{text}");
        // RFC 6120 §8.3.2: the error was generated by our domain.
        assert_eq!(
            e.child("error", NS_CONTENT).unwrap().attr("by"),
            Some("a.test")
        );
    }
    let m = http_get(&ga, "/metrics").await;
    assert!(
        metric(&m, "fedgate_stanzas_bounced_total{reason=\"dns\"}") >= 2,
        "{m}"
    );
    assert!(
        metric(&m, "fedgate_stanzas_dropped_total{reason=\"dns\"}") >= 1,
        "presence counted, not bounced: {m}"
    );
    ga.shutdown().await;
}

/// b.test presents a certificate a.test does not trust: SASL EXTERNAL is impossible, so the
/// pair authenticates with dialback (a.test verifies the key with b.test's authoritative
/// server). With certificate-only authentication the stream is refused and the message bounces.
#[tokio::test]
async fn untrusted_certificate_uses_dialback_or_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b = GwSpec::new(&pki, "b.test");
    b.cert = other.leaf("b.test", &LeafSpec::dns(&["b.test"]));
    let mut zone = Zone::new();
    srv_to(&mut zone, "a.test", a.ip);
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    a.dns = Some(dns.addr());
    b.dns = Some(dns.addr());
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(
        &mut cb,
        &mut ca,
        "bob@b.test",
        "alice@a.test",
        "via dialback",
    )
    .await;
    let s: serde_json::Value = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
    let auth = &s["remote_domains"]["b.test"]["auth"];
    assert_eq!(auth["in"]["a.test"]["method"], "dialback", "{s}");
    assert_eq!(auth["in"]["a.test"]["mechanism"], "dialback", "{s}");
    assert!(auth["out"].is_null(), "a.test never sent to b.test: {s}");
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"in\",mechanism=\"dialback\",method=\"dialback\",remote_domain=\"b.test\",result=\"ok\"}"
        ),
        1,
        "{m}"
    );
    ga.shutdown().await;

    // Now a.test accepts certificates only.
    let mut a2 = GwSpec::new(&pki, "a.test");
    a2.ip = a.ip;
    a2.dns = a.dns;
    a2.extra_s2s = "auth_methods = [\"certificate\"]\n".into();
    let ga2 = a2.start().await;
    let _ca2 = a2.component(&ga2).await;
    cb.send(&message("bob@b.test", "alice@a.test", "u2", "refused"))
        .await
        .unwrap();
    let e = cb.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(cond, "remote-server-not-found");
    assert!(text.contains("auth"), "{text}");
    ga2.shutdown().await;
    gb.shutdown().await;
}

/// Two nodes serve b.test with one dialback secret; a.test's DNS points at node 1 only, so the
/// key that node 2 issues is verified by node 1.
#[tokio::test]
async fn two_nodes_share_one_domain() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b1 = GwSpec::new(&pki, "b.test");
    let mut b2 = GwSpec::new(&pki, "b.test");
    // Certificates a.test does not trust, so dialback (and its verify step) is used.
    let cert = untrusted.leaf("b.test", &LeafSpec::dns(&["b.test"]));
    b1.cert = cert.clone();
    b2.cert = cert;
    let mut zone = Zone::new();
    srv_to(&mut zone, "a.test", a.ip);
    srv_to(&mut zone, "b.test", b1.ip);
    let dns = dns(zone).await;
    for g in [&mut a, &mut b1, &mut b2] {
        g.dns = Some(dns.addr());
    }
    let (ga, gb1, gb2) = (a.start().await, b1.start().await, b2.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb2 = b2.component(&gb2).await;
    assert_delivered(
        &mut cb2,
        &mut ca,
        "bob@b.test",
        "alice@a.test",
        "from node 2",
    )
    .await;
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"in\",mechanism=\"dialback\",method=\"dialback\",result=\"ok\"}"
        ),
        1,
        "{m}"
    );

    // With different secrets the key is refused.
    ga.shutdown().await;
    gb1.shutdown().await;
    let mut b1x = GwSpec::new(&pki, "b.test");
    b1x.ip = b1.ip;
    b1x.cert = b1.cert.clone();
    b1x.dns = b1.dns;
    b1x.dialback_secret = "a-different-secret-entirely".into();
    let mut a2 = GwSpec::new(&pki, "a.test");
    a2.ip = a.ip;
    a2.dns = a.dns;
    let (ga2, gb1x) = (a2.start().await, b1x.start().await);
    let _ca2 = a2.component(&ga2).await;
    cb2.send(&message("bob@b.test", "alice@a.test", "n3", "wrong secret"))
        .await
        .unwrap();
    let e = cb2.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "remote-server-not-found");
    assert!(text.contains("auth") && text.contains("invalid"), "{text}");
    ga2.shutdown().await;
    gb1x.shutdown().await;
    gb2.shutdown().await;
}

/// A stanza larger than the receiving gateway's cap ends that stream with a stream error; the
/// sending gateway records it. Before authentication the smaller pre-auth cap applies.
#[tokio::test]
async fn oversized_stanza_gets_a_stream_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b = GwSpec::new(&pki, "b.test");
    b.extra_s2s = "max_stanza_bytes = 4096\n".into();
    a.static_targets
        .insert("b.test".into(), format!("tcp://{}:5269", b.ip));
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let _cb = b.component(&gb).await;
    ca.send(&message(
        "alice@a.test",
        "bob@b.test",
        "big",
        &"x".repeat(10_000),
    ))
    .await
    .unwrap();
    let mut closed = false;
    for _ in 0..100 {
        let m = http_get(&gb, "/metrics").await;
        if metric(
            &m,
            "fedgate_streams_closed_total{direction=\"in\",result=\"limit\"}",
        ) == 1
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "b.test closed the stream for the limit");
    let s: serde_json::Value = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
    let err = s["remote_domains"]["b.test"]["last_error"]["detail"].to_string();
    assert!(err.contains("policy-violation"), "{s}");

    // Pre-auth: a raw plaintext peer that sends 20 KB before authenticating.
    let mut raw = tokio::net::TcpStream::connect((b.ip, 5269)).await.unwrap();
    raw.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='evil.test' version='1.0'>").await.unwrap();
    raw.write_all(format!("<message>{}</message>", "y".repeat(20_000)).as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(T, raw.read_to_string(&mut out)).await;
    assert!(
        out.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{out}"
    );
    assert!(out.ends_with("</stream:stream>"), "{out}");
    ga.shutdown().await;
    gb.shutdown().await;
}

/// The component secret is checked; the wrong one is refused with not-authorized, and a
/// second component for a domain that has one is refused with conflict.
#[tokio::test]
async fn component_with_wrong_secret_or_a_second_one_is_refused() {
    let pki = Pki::new();
    let a = GwSpec::new(&pki, "a.test");
    let ga = a.start().await;
    let _first = a.component(&ga).await;
    let e = fedgate::component_client::ComponentClient::connect(
        ga.component_addr.unwrap(),
        "a.test",
        &a.component_secret(),
    )
    .await
    .err()
    .expect("refused");
    assert!(e.to_string().contains("conflict"), "{e}");
    let e = fedgate::component_client::ComponentClient::connect(
        ga.component_addr.unwrap(),
        "a.test",
        "wrong",
    )
    .await
    .err()
    .expect("refused");
    assert!(e.to_string().contains("not-authorized"), "{e}");
    ga.shutdown().await;
}

/// A message to a hosted domain whose component is not connected bounces back to the remote
/// sender with service-unavailable.
#[tokio::test]
async fn local_service_down_bounces_to_the_remote_sender() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b = GwSpec::new(&pki, "b.test");
    a.static_targets
        .insert("b.test".into(), format!("tcp://{}:5269", b.ip));
    b.static_targets
        .insert("a.test".into(), format!("tcp://{}:5269", a.ip));
    let (ga, gb) = (a.start().await, b.start().await);
    let mut cb = b.component(&gb).await;
    cb.send(&message("bob@b.test", "alice@a.test", "s1", "anyone home?"))
        .await
        .unwrap();
    let e = cb.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "service-unavailable");
    assert!(text.contains("not connected"), "{text}");
    ga.shutdown().await;
    gb.shutdown().await;
}

/// `fedgate demo` works on a fresh machine and exits 0; `fedgate check-config` names file and key.
#[test]
fn demo_and_check_config_binaries() {
    let exe = env!("CARGO_BIN_EXE_fedgate");
    let out = std::process::Command::new(exe)
        .args(["demo", "--base", "127.0.5.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("subscription complete"), "{text}");
    assert!(text.contains("<remote-server-not-found/>"), "{text}");
    assert!(
        text.contains("denied by policy with <policy-violation/>") && text.contains("no-blocked"),
        "{text}"
    );
    assert!(
        text.contains(
            "fedgate_auth_total{direction=\"out\",mechanism=\"sasl-external\",method=\"pkix\",remote_domain=\"south.test\",result=\"ok\"} 1"
        ),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[domains]]\nname = \"a.test\"\nself_signed = true\n[s2s]\nlisten = [\"localhost:5269\"]\n").unwrap();
    let out = std::process::Command::new(exe)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "fedgate: {}: s2s.listen: 'localhost:5269' is not an ip:port address",
            bad.display()
        )
    );
    let out = std::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "run refuses a bad config at start"
    );
}
