//! POSH (RFC 7711 / RFC 7712): a hosted domain whose XMPP certificate names only its provider
//! is authenticated by the SPKI fingerprints it publishes over HTTPS. In-process DNS
//! ([`fedgate::testdns`]) and HTTPS ([`fedgate::testhttps`]) servers on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use fedgate::testdns::{TestDns, Zone};
use fedgate::testhttps::TestHttps;
use fedgate_certs::TrustAnchors;
use fedgate_certs::dev::LeafSpec;
use fedgate_certs::posh::{POSH_XMPP_SERVER_PATH, posh_delegation_json, posh_json, spki_sha256};
use fedgate_s2s::driver::posh::PoshClient;
use fedgate_s2s::resolve::{S2sResolver, StaticTargets};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::support::*;

const PORT: u16 = 8443;

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// An HTTPS server on a fresh loopback address with a certificate for `names` from `pki`.
async fn https(
    pki: &Pki,
    file: &str,
    names: &[&str],
    routes: Vec<(String, u16, String)>,
) -> TestHttps {
    let (c, k) = pki.leaf(file, &LeafSpec::dns(names));
    TestHttps::start(
        SocketAddr::new(next_ip().into(), PORT),
        &read(&c),
        &read(&k),
        routes,
    )
    .await
    .unwrap()
}

fn ip_of(server: &TestHttps) -> Ipv4Addr {
    match server.addr().ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("{other}"),
    }
}

fn client(pki: &Pki, dns: &TestDns) -> PoshClient {
    let anchors = TrustAnchors::from_pem_certs(&[&pki.ca.cert_pem()]).unwrap();
    let resolver = S2sResolver::new(Some(dns.nameservers()), StaticTargets::default()).unwrap();
    PoshClient::new(Arc::new(anchors), resolver, Some(PORT))
}

/// The XMPP certificate of the hosting provider: names provider.test only, from a CA the
/// verifying side does not trust. Returns its chain.
fn provider_cert(untrusted: &Pki, file: &str) -> Vec<CertificateDer<'static>> {
    let (c, _k) = untrusted.leaf(file, &LeafSpec::dns(&["provider.test"]));
    chain(&c)
}

fn route(path: &str, status: u16, body: String) -> (String, u16, String) {
    (path.to_owned(), status, body)
}

/// (1) the listed key authenticates hosted.test; the document is cached for `expires`;
/// (2) another key does not match.
#[tokio::test]
async fn posh_fingerprint_authenticates_a_hosted_domain() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let peer = provider_cert(&untrusted, "provider-xmpp");
    let other_peer = provider_cert(&untrusted, "provider-xmpp-2");
    let fp = spki_sha256(&peer[0]).unwrap();
    let doc = posh_json(&[[0x42; 32], fp], 3600);
    let server = https(
        &pki,
        "hosted-https",
        &["hosted.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 200, doc)],
    )
    .await;
    let mut zone = Zone::new();
    zone.a("hosted.test", ip_of(&server));
    let dns = dns(zone).await;
    let posh = client(&pki, &dns);

    // The certificate names neither hosted.test nor chains to a trusted CA.
    assert!(fedgate_certs::check_name(&peer[0], "hosted.test").is_err());
    posh.verify("hosted.test", &peer).await.unwrap();
    assert_eq!(server.requests(), 1);
    assert_eq!(server.sni_seen(), vec!["hosted.test".to_owned()]);
    assert_eq!((posh.fetches(), posh.cache_len()), (1, 1));

    // Cached: no new request, also for a case-different, dotted domain.
    posh.verify("Hosted.Test.", &peer).await.unwrap();
    let e = posh.verify("hosted.test", &other_peer).await.unwrap_err();
    assert!(
        e.starts_with("posh: ") && e.contains("no fingerprint matches"),
        "{e}"
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(posh.fetches(), 1);

    // No certificate at all.
    let e = posh.verify("hosted.test", &[]).await.unwrap_err();
    assert!(e.contains("no certificate"), "{e}");
    server.stop().await;
    dns.stop().await;
}

/// (3) hosted.test delegates to a document on provider.test (another host, other path); the
/// provider answers chunked. A delegation to a delegation is refused.
#[tokio::test]
async fn posh_delegation_is_followed_once() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let peer = provider_cert(&untrusted, "provider-xmpp");
    let fp = spki_sha256(&peer[0]).unwrap();
    let provider = https(
        &pki,
        "provider-https",
        &["provider.test"],
        vec![
            route("/posh/hosted.json", 200, posh_json(&[fp], 600)),
            route(
                "/posh/loop.json",
                200,
                posh_delegation_json("https://provider.test/posh/hosted.json", 600),
            ),
        ],
    )
    .await;
    provider.set_chunked(true);
    let hosted = https(
        &pki,
        "hosted-https",
        &["hosted.test"],
        vec![route(
            POSH_XMPP_SERVER_PATH,
            200,
            posh_delegation_json(
                &format!("https://provider.test:{PORT}/posh/hosted.json"),
                600,
            ),
        )],
    )
    .await;
    let twice = https(
        &pki,
        "twice-https",
        &["twice.test"],
        vec![route(
            POSH_XMPP_SERVER_PATH,
            200,
            // No port in the URL: the client's default (the override in tests) is used.
            posh_delegation_json("https://provider.test/posh/loop.json", 600),
        )],
    )
    .await;
    let mut zone = Zone::new();
    zone.a("hosted.test", ip_of(&hosted))
        .a("provider.test", ip_of(&provider))
        .a("twice.test", ip_of(&twice));
    let dns = dns(zone).await;
    let posh = client(&pki, &dns);

    posh.verify("hosted.test", &peer).await.unwrap();
    assert_eq!((hosted.requests(), provider.requests()), (1, 1));
    assert_eq!(
        posh.fetches(),
        2,
        "the domain's document and the delegated one"
    );
    assert_eq!(provider.sni_seen(), vec!["provider.test".to_owned()]);
    posh.verify("hosted.test", &peer).await.unwrap();
    assert_eq!(posh.fetches(), 2, "cached");

    let e = posh.verify("twice.test", &peer).await.unwrap_err();
    assert!(e.contains("itself a delegation"), "{e}");
    assert_eq!(twice.requests(), 1);
    assert_eq!(provider.requests(), 2);
    for s in [hosted, provider, twice] {
        s.stop().await;
    }
    dns.stop().await;
}

/// (4) the HTTPS server's certificate must be valid for the domain fetched: a trusted
/// certificate for another name, and a certificate for the right name from an untrusted CA,
/// are both refused before the body is used.
#[tokio::test]
async fn posh_refuses_a_bad_https_certificate() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let peer = provider_cert(&untrusted, "provider-xmpp");
    let doc = posh_json(&[spki_sha256(&peer[0]).unwrap()], 3600);
    let wrong_name = https(
        &pki,
        "wrong-name",
        &["elsewhere.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 200, doc.clone())],
    )
    .await;
    let wrong_ca = https(
        &untrusted,
        "wrong-ca",
        &["hosted2.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 200, doc)],
    )
    .await;
    let mut zone = Zone::new();
    zone.a("hosted.test", ip_of(&wrong_name))
        .a("hosted2.test", ip_of(&wrong_ca));
    let dns = dns(zone).await;
    let posh = client(&pki, &dns);

    let e = posh.verify("hosted.test", &peer).await.unwrap_err();
    assert!(
        e.starts_with("posh: https certificate of hosted.test") && e.contains("cert-name"),
        "{e}"
    );
    let e = posh.verify("hosted2.test", &peer).await.unwrap_err();
    assert!(
        e.starts_with("posh: https certificate of hosted2.test") && e.contains("cert-chain"),
        "{e}"
    );
    // The body was never requested.
    assert_eq!((wrong_name.requests(), wrong_ca.requests()), (0, 0));
    wrong_name.stop().await;
    wrong_ca.stop().await;
    dns.stop().await;
}

/// (5) 404, a redirect and bad JSON fail and are cached as failures; `expires: 0` is not
/// cached; a domain without an address fails with the DNS reason.
#[tokio::test]
async fn posh_failures_are_cached_briefly_and_expires_zero_is_not_cached() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let peer = provider_cert(&untrusted, "provider-xmpp");
    let fp = spki_sha256(&peer[0]).unwrap();
    // One server for several domains: routes by path are the same for all, so each domain
    // gets its own server.
    let missing = https(&pki, "missing", &["missing.test"], Vec::new()).await;
    let moved = https(
        &pki,
        "moved",
        &["moved.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 302, String::new())],
    )
    .await;
    let garbage = https(
        &pki,
        "garbage",
        &["garbage.test"],
        vec![route(
            POSH_XMPP_SERVER_PATH,
            200,
            "{\"fingerprints\":".into(),
        )],
    )
    .await;
    let nocache = https(
        &pki,
        "nocache",
        &["nocache.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 200, posh_json(&[fp], 0))],
    )
    .await;
    let mut zone = Zone::new();
    zone.a("missing.test", ip_of(&missing))
        .a("moved.test", ip_of(&moved))
        .a("garbage.test", ip_of(&garbage))
        .a("nocache.test", ip_of(&nocache));
    let dns = dns(zone).await;
    let posh = client(&pki, &dns);

    let e = posh.verify("missing.test", &peer).await.unwrap_err();
    assert!(e.starts_with("posh: ") && e.contains("HTTP 404"), "{e}");
    assert_eq!(missing.requests(), 1);
    let e = posh.verify("missing.test", &peer).await.unwrap_err();
    assert!(e.contains("HTTP 404") && e.ends_with("(cached)"), "{e}");
    assert_eq!(missing.requests(), 1, "negative result cached");

    let e = posh.verify("moved.test", &peer).await.unwrap_err();
    assert!(e.contains("HTTP 302") && e.contains("not followed"), "{e}");
    let e = posh.verify("garbage.test", &peer).await.unwrap_err();
    assert!(e.contains("bad POSH document: not JSON"), "{e}");
    posh.verify("garbage.test", &peer).await.unwrap_err();
    assert_eq!(garbage.requests(), 1);

    let e = posh.verify("unknown.test", &peer).await.unwrap_err();
    assert!(e.starts_with("posh: ") && e.contains("dns"), "{e}");

    posh.verify("nocache.test", &peer).await.unwrap();
    posh.verify("nocache.test", &peer).await.unwrap();
    assert_eq!(nocache.requests(), 2, "expires 0: fetched each time");

    // missing, moved, garbage, unknown cached as failures; nocache not cached.
    assert_eq!(posh.cache_len(), 4);
    posh.clear_cache();
    assert_eq!(posh.cache_len(), 0);
    posh.verify("missing.test", &peer).await.unwrap_err();
    assert_eq!(missing.requests(), 2);
    for s in [missing, moved, garbage, nocache] {
        s.stop().await;
    }
    dns.stop().await;
}

/// The limits of a fetch: a body over 64 KiB, a body cut off before its end (the connection
/// dropped inside the chunked body) and a server that never answers each fail with their
/// reason, and nothing of them is taken for a document.
#[tokio::test]
async fn posh_oversized_cut_off_and_silent_servers_fail() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let peer = provider_cert(&untrusted, "provider-xmpp");
    let doc = posh_json(&[spki_sha256(&peer[0]).unwrap()], 3600);
    let big = https(
        &pki,
        "big",
        &["big.test"],
        vec![route(
            POSH_XMPP_SERVER_PATH,
            200,
            format!("{doc}{}", " ".repeat(70 * 1024)),
        )],
    )
    .await;
    let cut = https(
        &pki,
        "cut",
        &["cut.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 200, doc.clone())],
    )
    .await;
    cut.set_truncated(true);
    // Accepts connections and says nothing.
    let silent = tokio::net::TcpListener::bind(SocketAddr::new(next_ip().into(), PORT))
        .await
        .unwrap();
    let silent_ip = match silent.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("{other}"),
    };
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let mut zone = Zone::new();
    zone.a("big.test", ip_of(&big))
        .a("cut.test", ip_of(&cut))
        .a("silent.test", silent_ip);
    let dns = dns(zone).await;
    let posh = client(&pki, &dns).with_timeout(std::time::Duration::from_secs(1));

    let e = posh.verify("big.test", &peer).await.unwrap_err();
    assert!(e.contains("body larger than 64 KiB"), "{e}");
    let e = posh.verify("cut.test", &peer).await.unwrap_err();
    assert!(e.contains("reading the body"), "{e}");
    assert_eq!(cut.requests(), 1);
    let e = posh.verify("silent.test", &peer).await.unwrap_err();
    assert!(e.contains("timed out after 1000 ms"), "{e}");
    // The same document served whole is fine.
    cut.set_truncated(false);
    posh.clear_cache();
    posh.verify("cut.test", &peer).await.unwrap();
    hold.abort();
    for s in [big, cut] {
        s.stop().await;
    }
    dns.stop().await;
}

/// Concurrent verifications of one domain share one fetch.
#[tokio::test]
async fn posh_concurrent_verifications_share_one_fetch() {
    let pki = Pki::new();
    let untrusted = Pki::new();
    let peer = provider_cert(&untrusted, "provider-xmpp");
    let doc = posh_json(&[spki_sha256(&peer[0]).unwrap()], 3600);
    let server = https(
        &pki,
        "hosted-https",
        &["hosted.test"],
        vec![route(POSH_XMPP_SERVER_PATH, 200, doc)],
    )
    .await;
    let mut zone = Zone::new();
    zone.a("hosted.test", ip_of(&server));
    let dns = dns(zone).await;
    let posh = Arc::new(client(&pki, &dns));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (posh, peer) = (posh.clone(), peer.clone());
        tasks.push(tokio::spawn(async move {
            posh.verify("hosted.test", &peer).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(server.requests(), 1);
    assert_eq!(posh.fetches(), 1);
    server.stop().await;
    dns.stop().await;
}

/// End to end: b.test's gateway presents its hosting provider's certificate (names
/// provider.test, from a CA a.test does not trust). b.test publishes that key over POSH, so
/// a.test (with `tls.posh = true`) accepts SASL EXTERNAL from it and records the method `posh`.
/// Without POSH the same peer falls back to dialback.
#[tokio::test]
async fn gateway_authenticates_a_hosted_peer_with_posh() {
    let pki = Pki::new();
    let provider = Pki::new();
    for posh in [true, false] {
        let mut a = GwSpec::new(&pki, "a.test");
        let mut b = GwSpec::new(&pki, "b.test");
        b.cert = provider.leaf("provider", &LeafSpec::dns(&["provider.test"]));
        let fp = spki_sha256(&chain(&b.cert.0)[0]).unwrap();
        // b.test's web server (a certificate a.test trusts) publishes the provider's key.
        let (wc, wk) = pki.leaf("b-web", &LeafSpec::dns(&["b.test"]));
        let web = TestHttps::start(
            SocketAddr::new(b.ip.into(), PORT),
            &read(&wc),
            &read(&wk),
            vec![route(POSH_XMPP_SERVER_PATH, 200, posh_json(&[fp], 3600))],
        )
        .await
        .unwrap();
        let mut zone = Zone::new();
        srv_to(&mut zone, "a.test", a.ip);
        srv_to(&mut zone, "b.test", b.ip);
        zone.a("b.test", b.ip);
        let dns = dns(zone).await;
        a.dns = Some(dns.addr());
        b.dns = Some(dns.addr());
        if posh {
            a.extra_tls = format!("posh = true\nposh_port = {PORT}\n");
        }
        let ga = a.start().await;
        let gb = b.start().await;
        let mut ca = a.component(&ga).await;
        let mut cb = b.component(&gb).await;
        cb.send(&fedgate::component_client::message(
            "bob@b.test",
            "alice@a.test",
            "p1",
            "hosted",
        ))
        .await
        .unwrap();
        let m = ca.recv(T).await.unwrap();
        assert_eq!(
            fedgate::component_client::body(&m).as_deref(),
            Some("hosted")
        );
        let metrics = http_get(&ga, "/metrics").await;
        let (method, mechanism) = if posh {
            ("posh", "sasl-external")
        } else {
            ("dialback", "dialback")
        };
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "fedgate_auth_total{{direction=\"in\",mechanism=\"{mechanism}\",method=\"{method}\",result=\"ok\"}}"
                )
            ),
            1,
            "{metrics}"
        );
        ga.shutdown().await;
        gb.shutdown().await;
        web.stop().await;
        dns.stop().await;
    }
}
