//! DANE for s2s (RFC 7673): DNSSEC-validated SRV + TLSA from the signed in-process test DNS,
//! checked by `fedgate_s2s::driver::dane::DaneResolver` against presented chains.

use std::net::{Ipv4Addr, SocketAddr};

use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::{LeafSpec, TestCa};
use fedgate_s2s::dane::Tlsa;
use fedgate_s2s::driver::dane::{DaneOutcome, DaneResolver, DaneTrustAnchor, TlsaLookup};
use fedgate_s2s::resolve::{S2sResolver, StaticTargets};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::support::next_ip;

fn chain_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// SRV `_xmpp-server._tcp.<d>` → `xmpp.<d>:5269`, A of the target.
fn srv(zone: &mut Zone, d: &str, ip: Ipv4Addr) {
    zone.srv(
        &format!("_xmpp-server._tcp.{d}"),
        0,
        5,
        5269,
        &format!("xmpp.{d}"),
    )
    .a(&format!("xmpp.{d}"), ip);
}

fn tlsa(zone: &mut Zone, d: &str, rec: &Tlsa) {
    zone.tlsa(
        &format!("_5269._tcp.xmpp.{d}"),
        rec.usage,
        rec.selector,
        rec.matching,
        &rec.data,
    );
}

async fn signed(zone: Zone) -> (TestDns, DaneTrustAnchor, DaneResolver) {
    let (dns, anchor) = TestDns::start_signed(SocketAddr::new(next_ip().into(), 5353), zone)
        .await
        .unwrap();
    let r = DaneResolver::new(Some(dns.nameservers()), Some(vec![anchor.clone()])).unwrap();
    (dns, anchor, r)
}

fn not_applicable(out: &DaneOutcome, needle: &str) {
    match out {
        DaneOutcome::NotApplicable(why) => assert!(why.contains(needle), "{why}"),
        other => panic!("expected NotApplicable({needle}), got {other:?}"),
    }
}

/// DANE-EE 3 1 1 with a certificate from a CA nobody trusts; a different certificate fails;
/// the same records unsigned are not applicable.
#[tokio::test]
async fn dane_ee_signed_verified_other_cert_failed_unsigned_not_applicable() {
    let untrusted = TestCa::new("nobody trusts this CA").unwrap();
    let (pem, _) = untrusted.issue(&LeafSpec::dns(&["d.test"])).unwrap();
    let good = chain_of(&pem);
    let (other_pem, _) = untrusted.issue(&LeafSpec::dns(&["d.test"])).unwrap();
    let other = chain_of(&other_pem);
    let rec = Tlsa::for_cert(3, 1, 1, &good[0]).unwrap();

    let mut zone = Zone::new();
    zone.sign("d.test");
    srv(&mut zone, "d.test", Ipv4Addr::new(127, 0, 2, 1));
    tlsa(&mut zone, "d.test", &rec);
    // The same records in an unsigned zone.
    srv(&mut zone, "u.test", Ipv4Addr::new(127, 0, 2, 2));
    tlsa(&mut zone, "u.test", &rec);
    let (dns, _anchor, r) = signed(zone).await;

    let out = r
        .check("d.test", "xmpp.d.test", 5269, &good, "d.test")
        .await;
    assert_eq!(out, DaneOutcome::Verified { usage: 3 });
    // DANE-EE needs no name match either: the same key for another XMPP domain.
    let out = r
        .check("d.test", "xmpp.d.test", 5269, &good, "x.test")
        .await;
    assert_eq!(out, DaneOutcome::Verified { usage: 3 });

    let out = r
        .check("d.test", "xmpp.d.test", 5269, &other, "d.test")
        .await;
    match &out {
        DaneOutcome::Failed(why) => assert!(why.contains("no TLSA record matches"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }

    let out = r
        .check("u.test", "xmpp.u.test", 5269, &good, "u.test")
        .await;
    not_applicable(&out, "insecure");

    // The lookup half alone, before a handshake.
    match r.lookup("d.test", "xmpp.d.test", 5269).await {
        TlsaLookup::Secure(records) => assert_eq!(records, vec![rec.clone()]),
        other => panic!("{other:?}"),
    }
    // The signed server still serves the plain s2s resolver.
    let plain = S2sResolver::new(Some(dns.nameservers()), StaticTargets::default()).unwrap();
    let t = plain.targets("d.test").await.unwrap();
    assert_eq!((t[0].host.as_str(), t[0].port), ("xmpp.d.test", 5269));
    dns.stop().await;
}

/// Signed zone without TLSA, a target the SRV records do not name, an IP literal.
#[tokio::test]
async fn dane_not_applicable_without_tlsa_or_secure_srv_target() {
    let ca = TestCa::new("CA").unwrap();
    let (pem, _) = ca.issue(&LeafSpec::dns(&["n.test"])).unwrap();
    let chain = chain_of(&pem);
    let mut zone = Zone::new();
    zone.sign("n.test");
    srv(&mut zone, "n.test", Ipv4Addr::new(127, 0, 2, 3));
    zone.a("elsewhere.n.test", Ipv4Addr::new(127, 0, 2, 4));
    let (dns, _anchor, r) = signed(zone).await;

    let out = r
        .check("n.test", "xmpp.n.test", 5269, &chain, "n.test")
        .await;
    not_applicable(&out, "no records");
    let out = r
        .check("n.test", "elsewhere.n.test", 5269, &chain, "n.test")
        .await;
    not_applicable(&out, "no record for elsewhere.n.test:5269");
    let out = r
        .check("n.test", "xmpp.n.test", 5270, &chain, "n.test")
        .await;
    not_applicable(&out, "no record for xmpp.n.test:5270");
    dns.stop().await;

    // No SRV at all for a signed domain (its apex exists: the NXDOMAIN proof validates).
    let mut zone = Zone::new();
    zone.sign("nosrv.test")
        .a("nosrv.test", Ipv4Addr::new(127, 0, 2, 8))
        .a("xmpp.nosrv.test", Ipv4Addr::new(127, 0, 2, 8));
    let (dns, _anchor, r) = signed(zone).await;
    let out = r
        .check("nosrv.test", "xmpp.nosrv.test", 5269, &chain, "nosrv.test")
        .await;
    not_applicable(&out, "_xmpp-server._tcp.nosrv.test.: no records");
    dns.stop().await;
}

/// DANE-TA 2 0 1 with the CA certificate in the chain: verified, and the name check applies.
#[tokio::test]
async fn dane_ta_verified_with_name_check() {
    let ca = TestCa::new("t.test private CA").unwrap();
    let ca_der = chain_of(&ca.cert_pem()).remove(0);
    let (pem, _) = ca.issue(&LeafSpec::dns(&["t.test"])).unwrap();
    let mut good = chain_of(&pem);
    good.push(ca_der.clone());
    let (wrong_pem, _) = ca.issue(&LeafSpec::dns(&["elsewhere.test"])).unwrap();
    let mut wrong_name = chain_of(&wrong_pem);
    wrong_name.push(ca_der.clone());

    let mut zone = Zone::new();
    zone.sign("t.test");
    srv(&mut zone, "t.test", Ipv4Addr::new(127, 0, 2, 5));
    tlsa(
        &mut zone,
        "t.test",
        &Tlsa::for_cert(2, 0, 1, &ca_der).unwrap(),
    );
    let (dns, _anchor, r) = signed(zone).await;

    let out = r
        .check("t.test", "xmpp.t.test", 5269, &good, "t.test")
        .await;
    assert_eq!(out, DaneOutcome::Verified { usage: 2 });
    let out = r
        .check("t.test", "xmpp.t.test", 5269, &wrong_name, "t.test")
        .await;
    assert!(matches!(out, DaneOutcome::Failed(_)), "{out:?}");
    // Without the CA in the chain, a digest (2 0 1) cannot be matched.
    let out = r
        .check("t.test", "xmpp.t.test", 5269, &good[..1], "t.test")
        .await;
    assert!(matches!(out, DaneOutcome::Failed(_)), "{out:?}");
    dns.stop().await;
}

/// Validation is real: a resolver with another trust anchor sees the signed zone as bogus
/// (DANE fails closed), and one with the built-in root anchors cannot validate either.
#[tokio::test]
async fn wrong_trust_anchor_is_bogus_and_fails() {
    let ca = TestCa::new("CA").unwrap();
    let (pem, _) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
    let chain = chain_of(&pem);
    let mut zone = Zone::new();
    zone.sign("b.test");
    srv(&mut zone, "b.test", Ipv4Addr::new(127, 0, 2, 6));
    tlsa(
        &mut zone,
        "b.test",
        &Tlsa::for_cert(3, 1, 1, &chain[0]).unwrap(),
    );
    let (dns, anchor, good) = signed(zone.clone()).await;
    assert_eq!(
        good.check("b.test", "xmpp.b.test", 5269, &chain, "b.test")
            .await,
        DaneOutcome::Verified { usage: 3 }
    );

    // Another signed tree's root key: everything served by `dns` is bogus for it.
    let (other_dns, other_anchor) =
        TestDns::start_signed(SocketAddr::new(next_ip().into(), 5353), zone)
            .await
            .unwrap();
    assert_ne!(anchor, other_anchor);
    other_dns.stop().await;
    let wrong = DaneResolver::new(Some(dns.nameservers()), Some(vec![other_anchor])).unwrap();
    let out = wrong
        .check("b.test", "xmpp.b.test", 5269, &chain, "b.test")
        .await;
    match &out {
        DaneOutcome::Failed(why) => assert!(why.contains("bogus"), "{why}"),
        other => panic!("expected Failed(bogus), got {other:?}"),
    }

    // The real root anchors (production default) do not know the test root either.
    let real = DaneResolver::new(Some(dns.nameservers()), None).unwrap();
    let out = real
        .check("b.test", "xmpp.b.test", 5269, &chain, "b.test")
        .await;
    assert!(matches!(out, DaneOutcome::Failed(_)), "{out:?}");
    dns.stop().await;
}

/// `set_zone` on a signed server re-signs: a TLSA record added later is seen (fresh resolver).
#[tokio::test]
async fn set_zone_resigns() {
    let ca = TestCa::new("CA").unwrap();
    let (pem, _) = ca.issue(&LeafSpec::dns(&["r.test"])).unwrap();
    let chain = chain_of(&pem);
    let mut zone = Zone::new();
    zone.sign("r.test");
    srv(&mut zone, "r.test", Ipv4Addr::new(127, 0, 2, 7));
    let (dns, anchor, r) = signed(zone.clone()).await;
    not_applicable(
        &r.check("r.test", "xmpp.r.test", 5269, &chain, "r.test")
            .await,
        "no records",
    );
    tlsa(
        &mut zone,
        "r.test",
        &Tlsa::for_cert(3, 0, 2, &chain[0]).unwrap(),
    );
    dns.set_zone(zone);
    let fresh = DaneResolver::new(Some(dns.nameservers()), Some(vec![anchor])).unwrap();
    assert_eq!(
        fresh
            .check("r.test", "xmpp.r.test", 5269, &chain, "r.test")
            .await,
        DaneOutcome::Verified { usage: 3 }
    );
    dns.stop().await;
}

/// End to end: b.test's certificate comes from a CA a.test does not trust, but b.test
/// publishes it in DNSSEC-signed TLSA records. a.test (tls.dane = true, the test zone's key as
/// trust anchor) establishes b.test's identity with `dane`. When the TLSA record does not
/// match, a.test refuses the target instead of falling back to dialback.
#[tokio::test]
async fn gateway_uses_dane_and_refuses_a_mismatch() {
    use base64::Engine as _;
    use fedgate::component_client::{body, message};

    let pki = crate::support::Pki::new();
    let other = crate::support::Pki::new();
    for matching in [true, false] {
        let mut a = crate::support::GwSpec::new(&pki, "a.test");
        let mut b = crate::support::GwSpec::new(&pki, "b.test");
        b.cert = other.leaf("b-dane", &LeafSpec::dns(&["b.test"]));
        let b_chain = chain_of(&std::fs::read_to_string(&b.cert.0).unwrap());
        let published = if matching {
            b_chain[0].clone()
        } else {
            chain_of(
                &std::fs::read_to_string(other.leaf("b-other", &LeafSpec::dns(&["b.test"])).0)
                    .unwrap(),
            )[0]
            .clone()
        };
        let mut zone = Zone::new();
        srv(&mut zone, "a.test", a.ip);
        srv(&mut zone, "b.test", b.ip);
        tlsa(
            &mut zone,
            "b.test",
            &Tlsa::for_cert(3, 1, 1, published.as_ref()).unwrap(),
        );
        zone.sign("b.test");
        let (dns, anchor, _) = signed(zone).await;
        let key_file = pki.dir.path().join("root.key");
        std::fs::write(
            &key_file,
            format!(
                ". IN DNSKEY 257 3 {} {}\n",
                anchor.algorithm,
                base64::engine::general_purpose::STANDARD.encode(&anchor.public_key)
            ),
        )
        .unwrap();
        a.dns = Some(dns.addr());
        b.dns = Some(dns.addr());
        a.extra_tls = format!(
            "dane = true\ndane_trust_anchor = {:?}\n",
            key_file.display().to_string()
        );
        let (ga, gb) = (a.start().await, b.start().await);
        let mut ca = a.component(&ga).await;
        let mut cb = b.component(&gb).await;
        ca.send(&message("alice@a.test", "bob@b.test", "d1", "over dane"))
            .await
            .unwrap();
        if matching {
            assert_eq!(
                body(&cb.recv(crate::support::T).await.unwrap()).as_deref(),
                Some("over dane")
            );
            let m = crate::support::http_get(&ga, "/metrics").await;
            assert_eq!(
                crate::support::metric(
                    &m,
                    "fedgate_auth_total{direction=\"out\",mechanism=\"sasl-external\",method=\"dane\",result=\"ok\"}"
                ),
                1,
                "{m}"
            );
        } else {
            let e = ca.recv(crate::support::T).await.unwrap();
            let (cond, text) = fedgate_s2s::wire::stanza_error(&e).unwrap();
            assert_eq!(cond, "remote-server-not-found", "{text}");
            assert!(text.contains("dane"), "{text}");
            assert!(
                cb.recv(std::time::Duration::from_millis(300))
                    .await
                    .is_err(),
                "nothing delivered"
            );
        }
        ga.shutdown().await;
        gb.shutdown().await;
        dns.stop().await;
    }
}
