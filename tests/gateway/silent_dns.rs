//! A nameserver that never answers is a DNS failure: kind `dns` with "timed out" in the text
//! (in the bounce, `/status`, the metrics and `fedgate probe`), so the operator looks at DNS,
//! not at the remote server.

use fedgate::component_client::message;
use fedgate::probe::{ProbeArgs, render_text, run};

use crate::support::*;

/// A UDP socket on its own loopback address that reads queries and never replies.
async fn silent_nameserver() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::UdpSocket::bind((next_ip(), 5353))
        .await
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while sock.recv_from(&mut buf).await.is_ok() {}
    });
    (addr, reader)
}

#[tokio::test]
async fn a_silent_nameserver_is_reported_as_dns() {
    let (ns, reader) = silent_nameserver().await;
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    a.dns = Some(ns);
    let ga = a.start().await;
    let mut ca = a.component(&ga).await;

    ca.send(&message("alice@a.test/d", "bob@far.test", "m1", "hello?"))
        .await
        .unwrap();
    // The resolver gives up after its timeout and attempts (a few seconds).
    let err = ca
        .recv_matching(T * 2, |e| e.attr("id") == Some("m1"))
        .await
        .unwrap();
    assert_eq!(err.attr("type"), Some("error"), "{err:?}");
    let (cond, text) = fedgate_s2s::wire::stanza_error(&err).unwrap();
    assert_eq!(cond, "remote-server-not-found", "{text}");
    assert!(text.starts_with("fedgate: dns: far.test: "), "{text}");
    assert!(text.contains("timed out"), "{text}");

    let status: serde_json::Value = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
    let last = &status["remote_domains"]["far.test"]["last_error"];
    assert_eq!(last["kind"], "dns", "{status}");
    assert!(
        last["detail"].as_str().unwrap().contains("timed out"),
        "{status}"
    );
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(&m, "fedgate_stanzas_bounced_total{reason=\"dns\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "fedgate_stanzas_bounced_total{reason=\"timeout\"}"),
        0
    );
    assert_eq!(
        metric(
            &m,
            "fedgate_remote_failures_total{kind=\"dns\",remote_domain=\"far.test\"}"
        ),
        1,
        "{m}"
    );
    assert!(
        metric(&m, "fedgate_dns_lookups_total{result=\"timeout\"}") >= 1,
        "{m}"
    );
    ga.shutdown().await;

    // `fedgate probe` says the same.
    let mut args = ProbeArgs::new("far.test");
    args.dns = Some(ns.to_string());
    args.timeout_secs = 5;
    // (about 12 s: the probe's lookups each wait for the resolver's timeout)
    let r = run(args).await.unwrap();
    let text = render_text(&r);
    assert!(!r.works, "{text}");
    assert_eq!(r.kind.as_deref(), Some("dns"), "{text}");
    assert!(
        r.verdict.contains("dns: ") && r.verdict.contains("timed out"),
        "{text}"
    );
    reader.abort();
}
