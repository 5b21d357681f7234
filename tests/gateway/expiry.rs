//! RFC 6120 §13.7.2.3: a stream must not outlive the certificate that authenticated it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedgate::testdns::Zone;
use fedgate_certs::dev::LeafSpec;

use super::support::*;

#[tokio::test]
async fn stream_is_closed_when_the_peer_certificate_expires() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b = GwSpec::new(&pki, "b.test");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // b.test's certificate is valid for 6 more seconds.
    b.cert = pki.leaf(
        "b-short",
        &LeafSpec {
            not_before: Some(now - 60),
            not_after: Some(now + 6),
            ..LeafSpec::dns(&["b.test"])
        },
    );
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
        "while valid",
    )
    .await;
    let m = http_get(&ga, "/metrics").await;
    let left = metric(
        &m,
        "fedgate_peer_cert_expiry_seconds{remote_domain=\"b.test\"}",
    );
    assert!((1..=6).contains(&left), "{left}\n{m}");
    assert_eq!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"in\",mechanism=\"sasl-external\",method=\"pkix\",result=\"ok\"}"
        ),
        1
    );

    // After expiry a.test resets the stream.
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = http_get(&ga, "/metrics").await;
        if metric(
            &m,
            "fedgate_streams{direction=\"in\",state=\"established\"}",
        ) == 0
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the inbound stream from b.test was closed at expiry"
    );
    let s: serde_json::Value = serde_json::from_str(&http_get(&gb, "/status").await).unwrap();
    let err = s["remote_domains"]["a.test"]["last_error"]["detail"].to_string();
    assert!(err.contains("reset") && err.contains("expired"), "{s}");

    // The next stanza needs a new stream: the expired certificate no longer passes, so the
    // pair authenticates with dialback instead.
    assert_delivered(
        &mut cb,
        &mut ca,
        "bob@b.test",
        "alice@a.test",
        "after expiry",
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
    ga.shutdown().await;
    gb.shutdown().await;
}

/// A stream that ends (here normally: the peer closes it) takes its certificate's expiry out
/// of `/status` and `fedgate_peer_cert_expiry_seconds`: a stale expiry would go negative and
/// alert on a certificate the partner replaced long ago.
#[tokio::test]
async fn a_closed_stream_leaves_no_peer_certificate_expiry_behind() {
    let pki = Pki::new();
    let (a, b, _dns) = srv_pair(&pki).await;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(&mut cb, &mut ca, "bob@b.test", "alice@a.test", "hello").await;
    let expires =
        |s: &serde_json::Value| s["remote_domains"]["b.test"]["peer_cert_expires"].clone();
    let s: serde_json::Value = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
    assert!(expires(&s).is_i64(), "{s}");
    let series = "fedgate_peer_cert_expiry_seconds{remote_domain=\"b.test\"}";
    assert!(http_get(&ga, "/metrics").await.contains(series));
    // b.test goes away: it closes its stream to a.test cleanly.
    drop(cb);
    gb.shutdown().await;
    let mut s = serde_json::Value::Null;
    for _ in 0..150 {
        s = serde_json::from_str(&http_get(&ga, "/status").await).unwrap();
        if s["remote_domains"]["b.test"]["inbound_streams"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s["remote_domains"]["b.test"]["inbound_streams"], 0, "{s}");
    assert!(expires(&s).is_null(), "{s}");
    let m = http_get(&ga, "/metrics").await;
    assert!(!m.contains(series), "{m}");
    drop(ca);
    ga.shutdown().await;
}
