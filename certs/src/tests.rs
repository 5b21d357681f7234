//! Crate-level tests: an identity matrix built with the test CA, stores, and real in-memory
//! rustls handshakes.

use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::clock::unix_now;
use crate::dev::{Eku, LeafSpec, TestCa, self_signed};
use crate::*;

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn now() -> UnixTime {
    UnixTime::now()
}

struct Pki {
    ca: TestCa,
    verifier: PeerVerifier,
}

fn pki() -> Pki {
    let ca = TestCa::new("fedgate test root").unwrap();
    let anchors = TrustAnchors::from_pem_certs(&[&ca.cert_pem()]).unwrap();
    assert_eq!(anchors.len(), 1);
    Pki {
        verifier: PeerVerifier::new(Arc::new(anchors)),
        ca,
    }
}

impl Pki {
    fn leaf(&self, spec: &LeafSpec) -> Vec<CertificateDer<'static>> {
        certs(&self.ca.issue(spec).unwrap().0)
    }

    fn verify(&self, spec: &LeafSpec, domain: &str) -> Result<VerifiedPeer, CertFailure> {
        self.verifier.verify(&self.leaf(spec), domain, true, now())
    }
}

// --- identity matrix ------------------------------------------------------------------------

#[test]
fn exact_dns_id() {
    let p = pki();
    let v = p.verify(&LeafSpec::dns(&["a.test"]), "a.test").unwrap();
    assert_eq!(v.matched, NameMatch::DnsId);
    assert!(v.not_after > unix_now());
    // case and trailing dot
    let v = p.verify(&LeafSpec::dns(&["a.test"]), "A.Test.").unwrap();
    assert_eq!(v.matched, NameMatch::DnsId);
}

#[test]
fn internationalized_domains_match_in_a_label_form() {
    // Certificates carry A-labels; XMPP addresses (and so the domains fedgate checks) carry
    // U-labels. Either form of the domain matches.
    let p = pki();
    let chain = p.leaf(&LeafSpec::dns(&["xn--bcher-kva.example"]));
    for domain in ["bücher.example", "BÜCHER.example.", "xn--bcher-kva.example"] {
        let v = p.verifier.verify(&chain, domain, true, now()).unwrap();
        assert_eq!(v.matched, NameMatch::DnsId, "{domain}");
    }
    let f = p
        .verifier
        .verify(&chain, "bucher.example", true, now())
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Name);
    let chain = p.leaf(&LeafSpec::dns(&["*.xn--bcher-kva.example"]));
    let v = p
        .verifier
        .verify(&chain, "chat.bücher.example", true, now())
        .unwrap();
    assert_eq!(v.matched, NameMatch::WildcardDnsId);
}

#[test]
fn wildcard_dns_id() {
    let p = pki();
    let chain = p.leaf(&LeafSpec::dns(&["*.a.test"]));
    let ok = p.verifier.verify(&chain, "x.a.test", true, now()).unwrap();
    assert_eq!(ok.matched, NameMatch::WildcardDnsId);
    for bad in ["a.test", "y.x.a.test"] {
        let f = p.verifier.verify(&chain, bad, true, now()).unwrap_err();
        assert_eq!(f.kind, CertFailureKind::Name, "{bad}: {f}");
    }
    // a wildcard over a single label never matches
    let chain = p.leaf(&LeafSpec::dns(&["*.test"]));
    let f = p
        .verifier
        .verify(&chain, "a.test", true, now())
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Name);
}

#[test]
fn srv_id() {
    let p = pki();
    let spec = LeafSpec {
        srv_ids: vec!["_xmpp-server.a.test".into()],
        common_name: Some("a.test".into()),
        ..LeafSpec::default()
    };
    let chain = p.leaf(&spec);
    assert_eq!(cert_names(&chain[0]), ["SRV:_xmpp-server.a.test"]);
    let v = p.verifier.verify(&chain, "a.test", false, now()).unwrap();
    assert_eq!(v.matched, NameMatch::SrvId);
    // an _xmpp-client SRV-ID does not name a server
    let spec = LeafSpec {
        srv_ids: vec!["_xmpp-client.b.test".into()],
        ..LeafSpec::default()
    };
    assert_eq!(
        p.verify(&spec, "b.test").unwrap_err().kind,
        CertFailureKind::Name
    );
}

#[test]
fn xmpp_addr() {
    let p = pki();
    let spec = LeafSpec {
        xmpp_addrs: vec!["a.test".into()],
        ..LeafSpec::default()
    };
    let chain = p.leaf(&spec);
    assert_eq!(cert_names(&chain[0]), ["XmppAddr:a.test"]);
    assert_eq!(
        p.verifier
            .verify(&chain, "a.test", true, now())
            .unwrap()
            .matched,
        NameMatch::XmppAddr
    );
    assert_eq!(
        check_name(&chain[0], "b.test").unwrap_err().kind,
        CertFailureKind::Name
    );
}

#[test]
fn all_identifier_kinds_in_one_cert() {
    let p = pki();
    let spec = LeafSpec {
        dns_names: vec!["a.test".into(), "*.b.test".into()],
        srv_ids: vec!["_xmpp-server.c.test".into()],
        xmpp_addrs: vec!["d.test".into()],
        ..LeafSpec::default()
    };
    let chain = p.leaf(&spec);
    assert_eq!(
        cert_names(&chain[0]),
        [
            "DNS:a.test",
            "DNS:*.b.test",
            "SRV:_xmpp-server.c.test",
            "XmppAddr:d.test"
        ]
    );
    let leaf = &chain[0];
    assert_eq!(check_name(leaf, "a.test").unwrap(), NameMatch::DnsId);
    assert_eq!(
        check_name(leaf, "x.b.test").unwrap(),
        NameMatch::WildcardDnsId
    );
    assert_eq!(check_name(leaf, "c.test").unwrap(), NameMatch::SrvId);
    assert_eq!(check_name(leaf, "d.test").unwrap(), NameMatch::XmppAddr);
}

#[test]
fn mismatch_lists_names() {
    let p = pki();
    let f = p
        .verify(&LeafSpec::dns(&["a.test", "*.b.test"]), "c.test")
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Name);
    assert_eq!(
        f.to_string(),
        "cert-name: certificate is valid for a.test, *.b.test, not for c.test"
    );
}

#[test]
fn common_name_is_not_used() {
    let p = pki();
    // CN names the domain, no SAN at all
    let spec = LeafSpec {
        common_name: Some("a.test".into()),
        ..LeafSpec::default()
    };
    let f = p.verify(&spec, "a.test").unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Name);
    assert!(f.detail.contains("CN is not used"), "{f}");
    // CN names the domain, SAN names another
    let spec = LeafSpec {
        common_name: Some("a.test".into()),
        dns_names: vec!["b.test".into()],
        ..LeafSpec::default()
    };
    assert_eq!(
        p.verify(&spec, "a.test").unwrap_err().kind,
        CertFailureKind::Name
    );
}

// --- extended key usage -----------------------------------------------------------------

#[test]
fn server_auth_only_accepted_from_client_by_default() {
    let p = pki();
    let spec = LeafSpec {
        eku: Eku::ServerOnly,
        ..LeafSpec::dns(&["a.test"])
    };
    let chain = p.leaf(&spec);
    p.verifier.verify(&chain, "a.test", true, now()).unwrap();
    p.verifier.verify(&chain, "a.test", false, now()).unwrap();

    let strict = p.verifier.clone().strict_client_eku(true);
    let f = strict.verify(&chain, "a.test", true, now()).unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Usage, "{f}");
    assert!(f.to_string().starts_with("cert-usage: "), "{f}");
    // as TLS server the same certificate is fine in strict mode
    strict.verify(&chain, "a.test", false, now()).unwrap();
}

#[test]
fn client_only_and_no_eku() {
    let p = pki();
    let strict = p.verifier.clone().strict_client_eku(true);
    let client_only = p.leaf(&LeafSpec {
        eku: Eku::ClientOnly,
        ..LeafSpec::dns(&["a.test"])
    });
    strict.verify(&client_only, "a.test", true, now()).unwrap();
    assert_eq!(
        strict
            .verify(&client_only, "a.test", false, now())
            .unwrap_err()
            .kind,
        CertFailureKind::Usage
    );
    p.verifier
        .verify(&client_only, "a.test", false, now())
        .unwrap();

    let no_eku = p.leaf(&LeafSpec {
        eku: Eku::None,
        ..LeafSpec::dns(&["a.test"])
    });
    strict.verify(&no_eku, "a.test", true, now()).unwrap();
    strict.verify(&no_eku, "a.test", false, now()).unwrap();
}

// --- validity and chain ---------------------------------------------------------------------

#[test]
fn expired() {
    let p = pki();
    let t = unix_now();
    let spec = LeafSpec {
        not_before: Some(t - 10 * 86400),
        not_after: Some(t - 86400),
        ..LeafSpec::dns(&["a.test"])
    };
    let f = p.verify(&spec, "a.test").unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Expired, "{f}");
    assert!(
        f.to_string()
            .starts_with("cert-expired: certificate expired at "),
        "{f}"
    );
}

#[test]
fn not_yet_valid() {
    let p = pki();
    let t = unix_now();
    let spec = LeafSpec {
        not_before: Some(t + 86400),
        not_after: Some(t + 10 * 86400),
        ..LeafSpec::dns(&["a.test"])
    };
    let f = p.verify(&spec, "a.test").unwrap_err();
    assert_eq!(f.kind, CertFailureKind::NotYetValid, "{f}");
    assert_eq!(f.kind.as_str(), "cert-not-yet-valid");
}

#[test]
fn verification_time_is_the_given_now() {
    let p = pki();
    let chain = p.leaf(&LeafSpec::dns(&["a.test"]));
    let in_a_year =
        UnixTime::since_unix_epoch(Duration::from_secs((unix_now() + 365 * 86400) as u64));
    let f = p
        .verifier
        .verify(&chain, "a.test", true, in_a_year)
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Expired);
}

#[test]
fn unknown_ca() {
    let p = pki();
    let other = TestCa::new("someone else").unwrap();
    let chain = certs(&other.issue(&LeafSpec::dns(&["a.test"])).unwrap().0);
    let f = p
        .verifier
        .verify(&chain, "a.test", true, now())
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Chain, "{f}");
    assert!(f.detail.contains("someone else"), "{f}");
}

#[test]
fn self_signed_with_empty_anchors() {
    let (cert_pem, _) = self_signed(&["a.test", "b.test"]).unwrap();
    let chain = certs(&cert_pem);
    let v = PeerVerifier::new(Arc::new(TrustAnchors::empty()));
    let f = v.verify(&chain, "a.test", true, now()).unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Chain);
    // names are still readable, and match
    assert_eq!(cert_names(&chain[0]), ["DNS:a.test", "DNS:b.test"]);
    assert_eq!(check_name(&chain[0], "b.test").unwrap(), NameMatch::DnsId);
}

#[test]
fn self_signed_pinned_as_anchor() {
    let (cert_pem, _) = self_signed(&["a.test"]).unwrap();
    let anchors = TrustAnchors::from_pem_certs(&[&cert_pem]).unwrap();
    let v = PeerVerifier::new(Arc::new(anchors));
    let chain = certs(&cert_pem);
    // A pinned self-signed end-entity certificate is its own anchor (per-partner pins).
    let v = v.verify(&chain, "a.test", true, now()).unwrap();
    assert_eq!(v.matched, NameMatch::DnsId);
}

#[test]
fn intermediate_chain() {
    let p = pki();
    let inter = p.ca.intermediate("fedgate test intermediate").unwrap();
    let (chain_pem, _) = inter.issue(&LeafSpec::dns(&["a.test"])).unwrap();
    let chain = certs(&chain_pem);
    assert_eq!(chain.len(), 2);
    p.verifier.verify(&chain, "a.test", true, now()).unwrap();
    // without the intermediate the chain is broken
    let f = p
        .verifier
        .verify(&chain[..1], "a.test", true, now())
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Chain);
}

#[test]
fn no_certificate_and_malformed() {
    let p = pki();
    let f = p.verifier.verify(&[], "a.test", true, now()).unwrap_err();
    assert_eq!(f.kind, CertFailureKind::NoCertificate);
    assert_eq!(f.kind.as_str(), "no-certificate");
    let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
    let f = p
        .verifier
        .verify(std::slice::from_ref(&junk), "a.test", true, now())
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Malformed, "{f}");
    assert_eq!(
        check_name(&junk, "a.test").unwrap_err().kind,
        CertFailureKind::Malformed
    );
    assert!(cert_names(&junk).is_empty());
    assert!(cert_summary(&junk).is_err());
}

#[test]
fn kinds_have_distinct_labels() {
    let mut labels: Vec<_> = CertFailureKind::ALL.iter().map(|k| k.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), CertFailureKind::ALL.len());
    assert_eq!(CertFailureKind::Chain.as_str(), "cert-chain");
    assert_eq!(CertFailureKind::Name.as_str(), "cert-name");
    assert_eq!(CertFailureKind::Expired.as_str(), "cert-expired");
}

#[test]
fn summary() {
    let p = pki();
    let t = unix_now();
    let spec = LeafSpec {
        xmpp_addrs: vec!["a.test".into()],
        not_before: Some(t - 100),
        not_after: Some(t + 1000),
        ..LeafSpec::dns(&["a.test"])
    };
    let chain = p.leaf(&spec);
    let s = cert_summary(&chain[0]).unwrap();
    assert_eq!(s.subject, "CN=a.test");
    assert_eq!(s.issuer, "CN=fedgate test root");
    assert_eq!(s.names, ["DNS:a.test", "XmppAddr:a.test"]);
    assert_eq!(s.not_before, t - 100);
    assert_eq!(s.not_after, t + 1000);
    assert_eq!(s.sha256_fingerprint.len(), 32 * 3 - 1);
    assert!(
        s.sha256_fingerprint
            .chars()
            .all(|c| c == ':' || c.is_ascii_hexdigit())
    );
}

// --- own identities -------------------------------------------------------------------------

fn identity(ca: &TestCa, domain: &str) -> Identity {
    let (c, k) = ca.issue(&LeafSpec::dns(&[domain])).unwrap();
    Identity::from_pem(domain, &c, &k).unwrap()
}

#[test]
fn identity_from_pem_and_key_mismatch() {
    let ca = TestCa::new("ca").unwrap();
    let (c1, k1) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
    let (_c2, k2) = ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
    let id = Identity::from_pem("a.test", &c1, &k1).unwrap();
    assert_eq!(id.chain.len(), 1);
    assert!(id.not_after > unix_now());
    assert_eq!(id.covers("a.test").unwrap(), NameMatch::DnsId);
    assert!(id.covers("b.test").is_err());
    let e = Identity::from_pem("a.test", &c1, &k2).unwrap_err();
    assert!(
        matches!(e, CertError::KeyMismatch { ref domain } if domain == "a.test"),
        "{e}"
    );
}

#[test]
fn identity_pem_errors() {
    let ca = TestCa::new("ca").unwrap();
    let (c, k) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
    assert!(matches!(
        Identity::from_pem("a.test", "", &k),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        Identity::from_pem("a.test", &k, &k),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        Identity::from_pem("a.test", &c, &c),
        Err(CertError::NoPrivateKey { .. })
    ));
    let broken = "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        Identity::from_pem("a.test", broken, &k),
        Err(CertError::Pem { .. })
    ));
}

#[test]
fn identity_load_names_the_path() {
    let dir = std::env::temp_dir().join(format!("fedgate-certs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("ca").unwrap();
    let (c, k) = ca.issue(&LeafSpec::dns(&["a.test"])).unwrap();
    let cert_path = dir.join("a.crt");
    let key_path = dir.join("a.key");
    std::fs::write(&cert_path, &c).unwrap();
    std::fs::write(&key_path, &k).unwrap();
    let id = Identity::load("a.test", &cert_path, &key_path).unwrap();
    assert_eq!(id.domain, "a.test");

    let missing = dir.join("missing.crt");
    let e = Identity::load("a.test", &missing, &key_path).unwrap_err();
    assert!(e.to_string().contains("missing.crt"), "{e}");
    std::fs::write(&missing, "").unwrap();
    let e = Identity::load("a.test", &missing, &key_path).unwrap_err();
    assert!(matches!(e, CertError::NoCertificate { .. }));
    assert!(e.to_string().contains("missing.crt"), "{e}");

    // anchors from files
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let anchors = TrustAnchors::new(false, std::slice::from_ref(&ca_path)).unwrap();
    assert_eq!(anchors.len(), 1);
    let e = TrustAnchors::new(false, &[dir.join("nope.pem")]).unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn system_anchors_when_present() {
    let anchors = TrustAnchors::new(true, &[]).unwrap();
    if std::path::Path::new(SYSTEM_BUNDLE).exists() {
        assert!(!anchors.is_empty());
    } else {
        assert!(anchors.is_empty());
    }
    assert!(TrustAnchors::empty().is_empty());
    assert!(TrustAnchors::from_pem_certs(&["no pem here"]).is_err());
}

#[test]
fn store_sni_selection_and_default() {
    let ca = TestCa::new("ca").unwrap();
    let mut store = IdentityStore::new();
    assert!(store.is_empty());
    store.insert(identity(&ca, "a.test"));
    store.insert(identity(&ca, "B.test"));
    assert_eq!(store.domains(), ["a.test", "b.test"]);
    assert_eq!(store.get("b.test").unwrap().domain, "B.test");
    assert_eq!(store.get("A.TEST.").unwrap().domain, "a.test");
    assert!(store.get("c.test").is_none());
    assert_eq!(
        store.get_or_default(Some("c.test")).unwrap().domain,
        "a.test"
    );
    assert_eq!(store.get_or_default(None).unwrap().domain, "a.test");
    // replacing keeps the order (and the default)
    store.insert(identity(&ca, "a.test"));
    assert_eq!(store.domains(), ["a.test", "b.test"]);
    assert_eq!(store.len(), 2);
    assert!(format!("{store:?}").contains("b.test"));

    // through TLS: the served leaf follows SNI, default without a match
    let store = Arc::new(store);
    for (sni, want) in [
        ("b.test", "b.test"),
        ("a.test", "a.test"),
        ("zzz.test", "a.test"),
    ] {
        let hs = handshake(
            server_config(store.clone(), vec![]),
            client_config(None, vec![]),
            sni,
        )
        .unwrap();
        assert_eq!(
            check_name(&hs.server_chain[0], want).unwrap(),
            NameMatch::DnsId,
            "SNI {sni}"
        );
        assert!(hs.client_chain.is_none());
    }
}

// --- in-memory TLS ------------------------------------------------------------------------

struct Handshake {
    /// What the server saw of the client (`peer_certificates()`).
    client_chain: Option<Vec<CertificateDer<'static>>>,
    /// What the client saw of the server.
    server_chain: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

/// Moves pending TLS bytes from `from` to `to`; returns whether anything moved.
fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() {
        return Ok(false);
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(true)
}

fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<Handshake, rustls::Error> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut c = rustls::Connection::Client(ClientConnection::new(client, name)?);
    let mut s = rustls::Connection::Server(ServerConnection::new(server)?);
    for _ in 0..20 {
        let a = pump(&mut c, &mut s)?;
        let b = pump(&mut s, &mut c)?;
        if !a && !b {
            break;
        }
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake did not complete"
    );
    let owned = |chain: Option<&[CertificateDer<'_>]>| {
        chain.map(|ch| {
            ch.iter()
                .map(|c| c.clone().into_owned())
                .collect::<Vec<_>>()
        })
    };
    Ok(Handshake {
        client_chain: owned(s.peer_certificates()),
        server_chain: owned(c.peer_certificates()).expect("server presents a certificate"),
        alpn: c.alpn_protocol().map(<[u8]>::to_vec),
        version: c.protocol_version(),
    })
}

fn store_with(ca: &TestCa, domain: &str) -> Arc<IdentityStore> {
    let mut store = IdentityStore::new();
    store.insert(identity(ca, domain));
    Arc::new(store)
}

#[test]
fn tls_server_sees_client_certificate() {
    let p = pki();
    let store = store_with(&p.ca, "a.test");
    let client_id = Arc::new(identity(&p.ca, "b.test"));
    let hs = handshake(
        server_config(store, vec![b"xmpp-server".to_vec()]),
        client_config(Some(client_id), vec![b"xmpp-server".to_vec()]),
        "a.test",
    )
    .unwrap();
    assert_eq!(hs.alpn.as_deref(), Some(&b"xmpp-server"[..]));
    assert_eq!(hs.version, Some(rustls::ProtocolVersion::TLSv1_3));
    let client_chain = hs.client_chain.expect("server sees the client certificate");
    // the XMPP layer decides afterwards
    let v = p
        .verifier
        .verify(&client_chain, "b.test", true, now())
        .unwrap();
    assert_eq!(v.matched, NameMatch::DnsId);
    let v = p
        .verifier
        .verify(&hs.server_chain, "a.test", false, now())
        .unwrap();
    assert_eq!(v.matched, NameMatch::DnsId);
}

#[test]
fn tls_self_signed_client_still_completes() {
    let p = pki();
    let store = store_with(&p.ca, "a.test");
    let (c, k) = self_signed(&["selfie.test"]).unwrap();
    let client_id = Arc::new(Identity::from_pem("selfie.test", &c, &k).unwrap());
    let hs = handshake(
        server_config(store, vec![]),
        client_config(Some(client_id), vec![]),
        "a.test",
    )
    .unwrap();
    let client_chain = hs.client_chain.expect("server sees the client certificate");
    assert_eq!(cert_names(&client_chain[0]), ["DNS:selfie.test"]);
    // at the XMPP layer it is not trusted: dialback would be needed
    let f = p
        .verifier
        .verify(&client_chain, "selfie.test", true, now())
        .unwrap_err();
    assert_eq!(f.kind, CertFailureKind::Chain);
}

#[test]
fn tls_untrusted_server_and_anonymous_client_complete() {
    // self-signed server identity, client without certificate
    let (c, k) = self_signed(&["a.test"]).unwrap();
    let mut store = IdentityStore::new();
    store.insert(Identity::from_pem("a.test", &c, &k).unwrap());
    let hs = handshake(
        server_config(Arc::new(store), vec![]),
        client_config(None, vec![]),
        "a.test",
    )
    .unwrap();
    assert!(hs.client_chain.is_none());
    assert_eq!(cert_names(&hs.server_chain[0]), ["DNS:a.test"]);
}

#[test]
fn tls12_with_client_certificate() {
    let p = pki();
    let store = store_with(&p.ca, "a.test");
    let client_id = Arc::new(identity(&p.ca, "b.test"));
    let tls12 = &[&rustls::version::TLS12];
    let hs = handshake(
        tls_config::build_server_config(store, vec![], tls12),
        tls_config::build_client_config(Some(client_id), vec![], tls12),
        "a.test",
    )
    .unwrap();
    assert_eq!(hs.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let chain = hs.client_chain.expect("server sees the client certificate");
    assert_eq!(cert_names(&chain[0]), ["DNS:b.test"]);
}
