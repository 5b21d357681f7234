//! SIP federation through a whole gateway: `example.test` (a component plays its users)
//! federates with `lync.test`, played by a SIP/TLS endpoint in the test (its edge server).
//! Microsoft-shaped fixtures (sip-fed/fixtures) are replayed against the gateway.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fedgate::component_client::{ComponentClient, body, message, presence};
use fedgate::gateway::Gateway;
use fedgate::sip_peer::{PeerTls, SipPeer, answer};
use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::LeafSpec;
use fedgate_s2s::element::Element;
use fedgate_sip::hdr::NameAddr;
use fedgate_sip::msg::SipMessage;
use tokio::net::TcpListener;

use super::support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sip-fed/fixtures");

fn fixture(name: &str) -> SipMessage {
    let bytes = std::fs::read(format!("{FIXTURES}/{name}")).unwrap();
    SipMessage::parse(&bytes).unwrap()
}

/// The lync.test side: its certificate and an address for its edge.
struct Partner {
    tls: PeerTls,
    ip: Ipv4Addr,
}

impl Partner {
    fn new(pki: &Pki) -> Self {
        let (c, k) = pki.leaf("lync", &LeafSpec::dns(&["lync.test", "edge.lync.test"]));
        Self {
            tls: PeerTls::load(&c, &k, &pki.ca_path()).unwrap(),
            ip: next_ip(),
        }
    }

    fn edge(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), 5061)
    }
}

/// example.test with a SIP listener; lync.test reached at the partner's edge.
fn gateway(pki: &Pki, partner: &Partner, flavor: &str, extra: &str) -> GwSpec {
    let mut g = GwSpec::new(pki, "example.test");
    g.extra = format!(
        "\n[sip]\nlisten = [\"{ip}:5061\"]\nsession_idle_secs = 2\ntransaction_timeout_secs = 5\n\
         connect_timeout_secs = 3\n{extra}\n[[sip.partners]]\ndomain = \"lync.test\"\n\
         route = \"{edge}\"\nflavor = \"{flavor}\"\n",
        ip = g.ip,
        edge = partner.edge(),
    );
    g
}

/// One test's world: example.test's gateway with SIP, a component playing its users (alice),
/// and lync.test's edge listening for the gateway's connections.
struct Lab {
    _pki: Pki,
    partner: Partner,
    listener: TcpListener,
    spec: GwSpec,
    gw: Gateway,
    alice: ComponentClient,
}

async fn lab(flavor: &str, extra: &str) -> Lab {
    lab_with(flavor, extra, |_| {}).await
}

/// Like [`lab`], with `tweak` applied to the gateway spec before it starts.
async fn lab_with(flavor: &str, extra: &str, tweak: impl FnOnce(&mut GwSpec)) -> Lab {
    let pki = Pki::new();
    let partner = Partner::new(&pki);
    let listener = TcpListener::bind(partner.edge()).await.unwrap();
    let mut spec = gateway(&pki, &partner, flavor, extra);
    tweak(&mut spec);
    let gw = spec.start().await;
    let alice = spec.component(&gw).await;
    Lab {
        _pki: pki,
        partner,
        listener,
        spec,
        gw,
        alice,
    }
}

/// A gateway that knows lync.test only from DNS (`_sipfederationtls._tcp`, no declared
/// partner; standard flavor), with `extra` config; the DNS server must outlive the lab.
async fn discovered_lab(extra: &str) -> (Lab, TestDns) {
    let pki = Pki::new();
    let partner = Partner::new(&pki);
    let listener = TcpListener::bind(partner.edge()).await.unwrap();
    let mut zone = Zone::new();
    sip_srv_to(&mut zone, "lync.test", "edge.lync.test", partner.ip, 5061);
    let dns = dns(zone).await;
    let mut spec = GwSpec::new(&pki, "example.test");
    spec.dns = Some(dns.addr());
    spec.extra = format!(
        "\n[sip]\nlisten = [\"{}:5061\"]\ndefault_flavor = \"standard\"\n{extra}",
        spec.ip
    );
    let gw = spec.start().await;
    let alice = spec.component(&gw).await;
    let lab = Lab {
        _pki: pki,
        partner,
        listener,
        spec,
        gw,
        alice,
    };
    (lab, dns)
}

/// The gateway's connection to the partner's edge, accepted on `listener`.
async fn accept(listener: &TcpListener, partner: &Partner) -> SipPeer {
    tokio::time::timeout(T, SipPeer::accept(listener, &partner.tls))
        .await
        .unwrap()
        .unwrap()
}

/// A page-mode MESSAGE (the in-dialog fixture, out of dialog) to `to`.
fn page_to(to: &str, call_id: &str) -> SipMessage {
    let mut page = fixture("ms-message-in-dialog.sip");
    page.remove_headers("To");
    page.push_header("To", format!("<{to}>"));
    page.set_header("Call-ID", call_id);
    page
}

async fn dial(gw: &Gateway, partner: &Partner) -> SipPeer {
    SipPeer::connect(gw.sip_addrs[0], "example.test", &partner.tls, true)
        .await
        .unwrap()
}

fn code(m: &SipMessage) -> u16 {
    m.code().unwrap_or(0)
}

fn to_tag(m: &SipMessage) -> String {
    NameAddr::parse(m.header("To").unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned()
}

fn with_to_tag(mut m: SipMessage, tag: &str) -> SipMessage {
    m.set_to_tag(tag).unwrap();
    m
}

async fn next_stanza(c: &mut ComponentClient, name: &'static str) -> Element {
    c.recv_matching(T, |e| e.name == name).await.unwrap()
}

/// The Microsoft session-mode fixtures (INVITE with the first message in `ms-text-format`,
/// an in-dialog MESSAGE, BYE) reach the local user as chat messages; the SIP side gets 200s.
#[tokio::test]
async fn microsoft_session_fixtures_reach_the_xmpp_user() {
    let Lab {
        partner,
        gw,
        mut alice,
        _pki,
        ..
    } = lab("microsoft", "").await;
    let mut edge = dial(&gw, &partner).await;

    edge.send(&fixture("ms-invite-im.sip")).await.unwrap();
    let ok = edge.recv(T).await.unwrap();
    assert_eq!(code(&ok), 200, "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.body).contains("m=message"));
    let tag = to_tag(&ok);
    let m = next_stanza(&mut alice, "message").await;
    assert_eq!(body(&m).as_deref(), Some("Hello from Lync"));
    assert_eq!(m.attr("to"), Some("alice@example.test"));
    assert_eq!(m.attr("type"), Some("chat"));
    assert!(
        m.attr("from").unwrap().starts_with("bob@lync.test/"),
        "{m:?}"
    );

    let mut ack = fixture("ms-invite-im.sip");
    ack.start = fedgate_sip::msg::StartLine::Request {
        method: "ACK".into(),
        uri: "sip:alice@example.test".into(),
    };
    ack.set_header("CSeq", "1 ACK");
    ack.body.clear();
    edge.send(&with_to_tag(ack, &tag)).await.unwrap();

    let msg = with_to_tag(fixture("ms-message-in-dialog.sip"), &tag);
    let expected = String::from_utf8_lossy(&msg.body).trim().to_owned();
    edge.send(&msg).await.unwrap();
    let ok = edge.recv(T).await.unwrap();
    assert_eq!((code(&ok), ok.cseq().unwrap().1), (200, "MESSAGE"));
    let m = next_stanza(&mut alice, "message").await;
    assert_eq!(body(&m).unwrap().trim(), expected);

    // Alice answers: the reply goes into the partner's session as an in-dialog MESSAGE.
    alice
        .send(&message(
            "alice@example.test/desk",
            "bob@lync.test",
            "r1",
            "hi Bob",
        ))
        .await
        .unwrap();
    let req = edge.recv(T).await.unwrap();
    assert_eq!(req.method(), Some("MESSAGE"));
    assert_eq!(req.call_id(), msg.call_id(), "same dialog");
    assert_eq!(String::from_utf8_lossy(&req.body), "hi Bob");
    edge.send(&answer(&req, 200, "OK", "x")).await.unwrap();

    edge.send(&with_to_tag(fixture("ms-bye.sip"), &tag))
        .await
        .unwrap();
    let ok = edge.recv(T).await.unwrap();
    assert_eq!((code(&ok), ok.cseq().unwrap().1), (200, "BYE"));
    // /status shows the partner, and (soon) no session left.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let status = http_get(&gw, "/status").await;
        if status.contains("\"lync.test\"") && status.contains("\"sessions\":0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message the XMPP side refuses is answered with the RFC 7247 mapping, never 503; one to
/// a domain we do not host gets 404.
#[tokio::test]
async fn refused_messages_get_mapped_errors() {
    let pki = Pki::new();
    let partner = Partner::new(&pki);
    let spec = gateway(&pki, &partner, "standard", "");
    let gw = spec.start().await;
    // No component connected: the local service is unavailable.
    let mut edge = dial(&gw, &partner).await;
    edge.send(&page_to("sip:alice@example.test", "page-1"))
        .await
        .unwrap();
    let resp = edge.recv(T).await.unwrap();
    assert_ne!(code(&resp), 503);
    assert_eq!(
        code(&resp),
        480,
        "service-unavailable for a bare JID: {resp:?}"
    );

    edge.send(&page_to("sip:carol@elsewhere.test", "page-2"))
        .await
        .unwrap();
    assert_eq!(code(&edge.recv(T).await.unwrap()), 404);

    // An unknown Require option: 420 with Unsupported.
    let mut page = page_to("sip:alice@example.test", "page-3");
    page.push_header("Require", "x-nonsense");
    edge.send(&page).await.unwrap();
    let resp = edge.recv(T).await.unwrap();
    assert_eq!(code(&resp), 420);
    assert_eq!(resp.header("Unsupported"), Some("x-nonsense"));
}

/// XMPP → Microsoft: the first message rides in the INVITE, the next one is an in-dialog
/// MESSAGE, and an idle session ends with BYE.
#[tokio::test]
async fn xmpp_user_starts_a_microsoft_session() {
    let Lab {
        partner,
        listener,
        mut alice,
        _pki,
        gw: _gw,
        ..
    } = lab("microsoft", "").await;
    alice
        .send(&message(
            "alice@example.test/desk",
            "bob@lync.test",
            "m1",
            "Hello Bob",
        ))
        .await
        .unwrap();
    let mut edge = accept(&listener, &partner).await;
    // The gateway presented example.test's certificate as a client.
    assert!(!edge.peer_certs().is_empty());
    let invite = edge.recv(T).await.unwrap();
    assert_eq!(invite.method(), Some("INVITE"));
    let (_, text) =
        fedgate_sip::im::decode_ms_text_format(invite.header("ms-text-format").unwrap()).unwrap();
    assert_eq!(text, b"Hello Bob");
    assert!(String::from_utf8_lossy(&invite.body).contains("m=message"));
    let mut ok = answer(&invite, 200, "OK", "edge-tag");
    ok.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
    edge.send(&ok).await.unwrap();
    let ack = edge.recv(T).await.unwrap();
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.cseq(), Some((invite.cseq().unwrap().0, "ACK")));

    alice
        .send(&message(
            "alice@example.test/desk",
            "bob@lync.test",
            "m2",
            "second",
        ))
        .await
        .unwrap();
    let msg = edge.recv(T).await.unwrap();
    assert_eq!(msg.method(), Some("MESSAGE"));
    assert_eq!(msg.call_id(), invite.call_id());
    assert_eq!(to_tag(&msg), "edge-tag");
    assert_eq!(String::from_utf8_lossy(&msg.body), "second");
    edge.send(&answer(&msg, 200, "OK", "edge-tag"))
        .await
        .unwrap();

    // session_idle_secs = 2
    let bye = edge.recv(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(bye.call_id(), invite.call_id());
    edge.send(&answer(&bye, 200, "OK", "edge-tag"))
        .await
        .unwrap();
}

/// XMPP → standards partner: page-mode MESSAGE; a SIP error comes back as the mapped XMPP
/// error, and a message over RFC 7572's 1300 bytes bounces with policy-violation.
#[tokio::test]
async fn page_mode_and_error_mapping() {
    let Lab {
        partner,
        listener,
        mut alice,
        _pki,
        gw: _gw,
        ..
    } = lab("standard", "").await;
    alice
        .send(&message(
            "alice@example.test/desk",
            "bob@lync.test",
            "p1",
            "page one",
        ))
        .await
        .unwrap();
    let mut edge = accept(&listener, &partner).await;
    let req = edge.recv(T).await.unwrap();
    assert_eq!(req.method(), Some("MESSAGE"));
    assert_eq!(req.header("Content-Type"), Some("text/plain;charset=UTF-8"));
    assert_eq!(String::from_utf8_lossy(&req.body), "page one");
    edge.send(&answer(&req, 200, "OK", "t")).await.unwrap();

    alice
        .send(&message(
            "alice@example.test/desk",
            "nobody@lync.test",
            "p2",
            "hello?",
        ))
        .await
        .unwrap();
    let req = edge.recv(T).await.unwrap();
    edge.send(&answer(&req, 404, "Not Found", "t"))
        .await
        .unwrap();
    let err = alice
        .recv_matching(T, |e| e.attr("id") == Some("p2"))
        .await
        .unwrap();
    assert_eq!(err.attr("type"), Some("error"));
    let (cond, _) = fedgate_s2s::wire::stanza_error(&err).unwrap();
    assert_eq!(cond, "item-not-found");

    let big = "x".repeat(1400);
    alice
        .send(&message(
            "alice@example.test/desk",
            "bob@lync.test",
            "p3",
            &big,
        ))
        .await
        .unwrap();
    let err = alice
        .recv_matching(T, |e| e.attr("id") == Some("p3"))
        .await
        .unwrap();
    assert_eq!(
        fedgate_s2s::wire::stanza_error(&err).unwrap().0,
        "policy-violation"
    );
}

/// A partner with `max_rate = 2`: a burst of twelve messages reaches it paced and in order;
/// those that would wait longer than `pace_max_wait_secs` come back to the sender as errors
/// that name the rate. None is lost, and the metrics count both.
#[tokio::test]
async fn a_partners_rate_paces_our_requests() {
    let Lab {
        partner,
        listener,
        mut alice,
        _pki,
        gw,
        ..
    } = lab_with("standard", "pace_max_wait_secs = 2\n", |s| {
        s.extra.push_str("max_rate = 2.0\n")
    })
    .await;
    const N: usize = 12;
    for i in 0..N {
        alice
            .send(&message(
                "alice@example.test/desk",
                "bob@lync.test",
                &format!("r{i}"),
                &format!("burst {i}"),
            ))
            .await
            .unwrap();
    }
    let mut edge = accept(&listener, &partner).await;
    let (mut got, mut failed) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() + failed.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {got:?}, failed {failed:?}"
        );
        if let Ok(req) = edge.recv(Duration::from_millis(100)).await {
            edge.send(&answer(&req, 200, "OK", "t")).await.unwrap();
            let body = String::from_utf8_lossy(&req.body).into_owned();
            got.push(body["burst ".len()..].parse::<usize>().unwrap());
        }
        while let Ok(e) = alice.recv(Duration::from_millis(10)).await {
            if e.attr("type") == Some("error") {
                let (_, text) = fedgate_s2s::wire::stanza_error(&e).unwrap();
                assert!(text.contains("rate of 2/s"), "{text}");
                failed.push(e.attr("id").unwrap().to_owned());
            }
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert!(got.len() >= 2, "{got:?}");
    assert!(!failed.is_empty(), "nothing waited too long: {got:?}");
    let m = http_get(&gw, "/metrics").await;
    assert!(
        metric(&m, "fedgate_sip_paced_total{partner=\"lync.test\"}") >= failed.len() as u64,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "fedgate_sip_failures_total{kind=\"limit\",partner=\"lync.test\"}"
        ),
        failed.len() as u64,
        "{m}"
    );
}

/// Presence both ways (RFC 8048): the partner's SUBSCRIBE fixture becomes an XMPP subscription
/// request; once Alice approves, the watcher gets NOTIFY active with her PIDF.
#[tokio::test]
async fn partner_subscribes_to_a_local_user() {
    let Lab {
        partner,
        gw,
        mut alice,
        _pki,
        ..
    } = lab("microsoft", "").await;
    let mut edge = dial(&gw, &partner).await;
    let sub = fixture("ms-subscribe-presence.sip");
    edge.send(&sub).await.unwrap();
    let ok = edge.recv(T).await.unwrap();
    assert_eq!((code(&ok), ok.cseq().unwrap().1), (200, "SUBSCRIBE"));
    let pending = edge.recv(T).await.unwrap();
    assert_eq!(pending.method(), Some("NOTIFY"));
    assert!(
        pending
            .header("Subscription-State")
            .unwrap()
            .starts_with("pending")
    );
    edge.send(&answer(&pending, 200, "OK", "x")).await.unwrap();

    let req = alice
        .recv_matching(T, |e| e.name == "presence")
        .await
        .unwrap();
    assert_eq!(req.attr("type"), Some("subscribe"));
    assert_eq!(req.attr("to"), Some("alice@example.test"));
    let from = req.attr("from").unwrap().to_owned();
    assert_eq!(from, "bob@lync.test");
    alice
        .send(&presence("alice@example.test", &from, "subscribed"))
        .await
        .unwrap();
    let active = edge.recv(T).await.unwrap();
    assert!(
        active
            .header("Subscription-State")
            .unwrap()
            .starts_with("active"),
        "{active:?}"
    );
    edge.send(&answer(&active, 200, "OK", "x")).await.unwrap();
    // Alice comes online (as away) on one resource: the watcher sees it.
    let mut p = presence("alice@example.test/desk", &from, "");
    p = p.with_child(Element::new("show", "").with_text("away"));
    alice.send(&p).await.unwrap();
    let n = edge.recv(T).await.unwrap();
    let pidf = String::from_utf8_lossy(&n.body).into_owned();
    assert!(pidf.contains("<basic>open</basic>"), "{pidf}");
    assert!(pidf.contains(">away<"), "{pidf}");
    edge.send(&answer(&n, 200, "OK", "x")).await.unwrap();
}

/// A local user subscribes to a partner user: SUBSCRIBE, NOTIFY pending (nothing for XMPP),
/// NOTIFY active → `subscribed` and the presence; the authorization survives a restart, after
/// which the gateway subscribes again by itself.
#[tokio::test]
async fn local_user_subscribes_and_the_authorization_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("authz.json");
    let extra = format!("authz_store = {:?}", store.display().to_string());
    let Lab {
        _pki,
        partner,
        listener,
        spec,
        gw,
        mut alice,
    } = lab("microsoft", &extra).await;
    alice
        .send(&presence(
            "alice@example.test",
            "bob@lync.test",
            "subscribe",
        ))
        .await
        .unwrap();
    let mut edge = accept(&listener, &partner).await;
    let sub = edge.recv(T).await.unwrap();
    assert_eq!(sub.method(), Some("SUBSCRIBE"));
    assert_eq!(sub.header("Event"), Some("presence"));
    assert_eq!(sub.header("Accept"), Some("application/pidf+xml"));
    let mut ok = answer(&sub, 200, "OK", "bob-tag");
    ok.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
    ok.push_header("Expires", "3600");
    edge.send(&ok).await.unwrap();

    let notify = |state: &str, body: &str| {
        let mut n = SipMessage::request("NOTIFY", "sip:alice@example.test");
        n.push_header(
            "Via",
            "SIP/2.0/TLS edge.lync.test:5061;branch=z9hG4bKn".to_owned()
                + state.split(';').next().unwrap(),
        );
        n.push_header("Max-Forwards", "70");
        n.push_header("From", format!("<{}>;tag=bob-tag", sub.uri().unwrap()));
        n.push_header("To", sub.header("From").unwrap());
        n.push_header("Call-ID", sub.call_id().unwrap());
        n.push_header(
            "CSeq",
            if state.starts_with("pending") {
                "1 NOTIFY"
            } else {
                "2 NOTIFY"
            },
        );
        n.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
        n.push_header("Event", "presence");
        n.push_header("Subscription-State", state);
        if !body.is_empty() {
            n.push_header("Content-Type", "application/pidf+xml");
            n.body = body.as_bytes().to_vec();
        }
        n
    };
    edge.send(&notify("pending;expires=3600", ""))
        .await
        .unwrap();
    assert_eq!(code(&edge.recv(T).await.unwrap()), 200);
    let pidf = "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
                entity=\"sip:bob@lync.test\"><tuple id=\"t1\"><status><basic>open</basic>\
                </status><note>In a meeting</note></tuple></presence>";
    edge.send(&notify("active;expires=3600", pidf))
        .await
        .unwrap();
    assert_eq!(code(&edge.recv(T).await.unwrap()), 200);
    let subscribed = alice
        .recv_matching(T, |e| e.name == "presence")
        .await
        .unwrap();
    assert_eq!(
        subscribed.attr("type"),
        Some("subscribed"),
        "{subscribed:?}"
    );
    let avail = alice
        .recv_matching(T, |e| e.name == "presence")
        .await
        .unwrap();
    assert_eq!(avail.attr("type"), None, "{avail:?}");
    assert!(avail.to_bytes().ends_with(b"</presence>"));
    assert!(String::from_utf8_lossy(&avail.to_bytes()).contains("In a meeting"));
    assert!(
        std::fs::read_to_string(&store)
            .unwrap()
            .contains("bob@lync.test")
    );

    // Restart: the notification dialog is gone, the authorization is not.
    gw.shutdown().await;
    drop(edge);
    let gw = spec.start().await;
    let mut edge = accept(&listener, &partner).await;
    let again = edge.recv(T).await.unwrap();
    assert_eq!(again.method(), Some("SUBSCRIBE"));
    assert_eq!(again.uri(), sub.uri());
    assert_ne!(again.call_id(), sub.call_id(), "a new dialog");
    gw.shutdown().await;
}

/// Mutual TLS: a partner whose certificate is from another CA, or who presents none, is
/// refused and counted by kind; a partner server we do not trust makes our messages bounce
/// with the typed failure.
#[tokio::test]
async fn untrusted_partners_are_refused_with_typed_errors() {
    let pki = Pki::new();
    let other = Pki::new();
    let partner = Partner::new(&pki);
    let stranger = Partner::new(&other);
    // Trusts our CA (to complete the handshake) but presents the other CA's certificate.
    let mut rogue_tls = stranger.tls.clone();
    rogue_tls.roots = partner.tls.roots.clone();
    let spec = gateway(&pki, &partner, "standard", "");
    let gw = spec.start().await;

    let mut rogue = SipPeer::connect(gw.sip_addrs[0], "example.test", &rogue_tls, true)
        .await
        .unwrap();
    let _ = rogue.send(&fixture("ms-subscribe-presence.sip")).await;
    assert!(rogue.closed_within(T).await, "untrusted client not refused");
    let mut anon = SipPeer::connect(gw.sip_addrs[0], "example.test", &partner.tls, false).await;
    if let Ok(a) = &mut anon {
        let _ = a.send(&fixture("ms-subscribe-presence.sip")).await;
        assert!(
            a.closed_within(T).await,
            "client without certificate not refused"
        );
    }
    let m = http_get(&gw, "/metrics").await;
    assert!(
        metric(&m, "fedgate_sip_failures_total{kind=\"tls-untrusted\"") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "fedgate_sip_failures_total{kind=\"no-client-cert\"") >= 1,
        "{m}"
    );

    // Our side: lync.test's edge shows a certificate from a CA we do not trust.
    let listener = TcpListener::bind(partner.edge()).await.unwrap();
    let mut mine = spec.component(&gw).await;
    let mut server_tls = stranger.tls.clone();
    server_tls.roots = partner.tls.roots.clone();
    tokio::spawn(async move {
        let _ = SipPeer::accept(&listener, &server_tls).await;
    });
    mine.send(&message("alice@example.test", "bob@lync.test", "u1", "hi"))
        .await
        .unwrap();
    let err = mine
        .recv_matching(T, |e| e.attr("id") == Some("u1"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&err.to_bytes()).into_owned();
    assert!(text.contains("remote-server-not-found"), "{text}");
    assert!(text.contains("tls-untrusted"), "{text}");
}

/// A domain with `_sipfederationtls._tcp` and no XMPP SRV records is reached over SIP without
/// being configured; the policy marking it "sip" refuses its XMPP streams.
#[tokio::test]
async fn sip_domains_are_discovered_through_dns() {
    let (lab, _dns) = discovered_lab("").await;
    let Lab {
        partner,
        listener,
        gw,
        mut alice,
        ..
    } = lab;
    alice
        .send(&message(
            "alice@example.test",
            "bob@lync.test",
            "d1",
            "found you",
        ))
        .await
        .unwrap();
    let mut edge = accept(&listener, &partner).await;
    let req = edge.recv(T).await.unwrap();
    assert_eq!(req.method(), Some("MESSAGE"));
    assert_eq!(String::from_utf8_lossy(&req.body), "found you");
    edge.send(&answer(&req, 200, "OK", "t")).await.unwrap();
    let m = http_get(&gw, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_sip_transactions_total{direction=\"out\",method=\"MESSAGE\",partner=\"lync.test\",status=\"200\"}"
        ),
        1,
        "{m}"
    );
}

/// A stanza that waits for a domain's protocol discovery passes the policy once: with a rate
/// of one stanza (burst 1), the one message is delivered, not refused by its own second pass.
#[tokio::test]
async fn a_stanza_parked_during_discovery_passes_the_policy_once() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n\n[[rule]]\nid = \"lync-slow\"\ndomains = [\"lync.test\"]\n\
         action = \"allow\"\ndirection = \"both\"\nrate = { per_second = 0.01, burst = 1 }\n",
    )
    .unwrap();
    let (lab, _dns) = discovered_lab(&format!(
        "\n[policy]\nfile = {:?}\n",
        policy.display().to_string()
    ))
    .await;
    let Lab {
        partner,
        listener,
        gw,
        mut alice,
        ..
    } = lab;
    alice
        .send(&message(
            "alice@example.test",
            "bob@lync.test",
            "r1",
            "once",
        ))
        .await
        .unwrap();
    let mut edge = accept(&listener, &partner).await;
    let req = edge.recv(T).await.unwrap();
    assert_eq!(req.method(), Some("MESSAGE"));
    assert_eq!(String::from_utf8_lossy(&req.body), "once");
    edge.send(&answer(&req, 200, "OK", "t")).await.unwrap();
    let m = http_get(&gw, "/metrics").await;
    assert_eq!(metric(&m, "fedgate_policy_rate_limited_total"), 0, "{m}");
    // The next one finds the bucket empty: the rate is enforced, once per stanza.
    alice
        .send(&message(
            "alice@example.test",
            "bob@lync.test",
            "r2",
            "twice",
        ))
        .await
        .unwrap();
    let err = alice
        .recv_matching(T, |e| e.attr("id") == Some("r2"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&err.to_bytes()).into_owned();
    assert!(text.contains("resource-constraint"), "{text}");
    let m = http_get(&gw, "/metrics").await;
    assert_eq!(metric(&m, "fedgate_policy_rate_limited_total"), 1, "{m}");
}

/// Where fedgate connects for a SIP domain, asked of a real DNS server: `_sipfederationtls`
/// first; else the NAPTR records for SIP over TLS (by order, then preference; other transports
/// skipped; an owner without SRV records passed over) to their SRV owner; else `_sips._tcp`;
/// else the static route; else the domain's A on 5061. A "." SRV target means no service.
#[tokio::test]
async fn sip_discovery_follows_rfc_3263() {
    let mut zone = Zone::new();
    zone.srv("_sipfederationtls._tcp.a.test", 0, 5, 5061, "ms.a.test")
        .naptr("a.test", 10, 10, "s", "SIPS+D2T", "_sips._tcp.naptr.a.test")
        .srv("_sips._tcp.naptr.a.test", 0, 5, 5062, "n.a.test")
        .srv("_sips._tcp.a.test", 0, 5, 5063, "s.a.test");
    zone.naptr("b.test", 5, 10, "s", "SIP+D2U", "_sip._udp.b.test")
        .srv("_sip._udp.b.test", 0, 5, 5060, "udp.b.test")
        .naptr("b.test", 20, 1, "s", "SIPS+D2T", "_sips._tcp.late.b.test")
        .srv("_sips._tcp.late.b.test", 0, 5, 5061, "late.b.test")
        .naptr("b.test", 10, 50, "s", "SIPS+D2T", "_sips._tcp.empty.b.test")
        .naptr("b.test", 10, 60, "S", "sips+d2t", "_sips._tcp.edge.b.test")
        .srv("_sips._tcp.edge.b.test", 0, 5, 5070, "edge.b.test")
        .srv("_sips._tcp.b.test", 0, 5, 5061, "fallback.b.test");
    zone.naptr("c.test", 10, 10, "s", "SIP+D2T", "_sip._tcp.c.test")
        .srv("_sip._tcp.c.test", 0, 5, 5060, "plain.c.test")
        .srv("_sips._tcp.c.test", 0, 5, 5061, "tls.c.test");
    zone.a("e.test", Ipv4Addr::new(127, 0, 0, 1));
    zone.srv("_sipfederationtls._tcp.f.test", 0, 0, 0, ".");
    let dns = dns(zone).await;
    let resolver = fedgate_s2s::resolve::S2sResolver::new(
        Some(vec![dns.addr()]),
        fedgate_s2s::resolve::StaticTargets::default(),
    )
    .unwrap();
    let statics =
        std::collections::BTreeMap::from([("d.test".to_owned(), ("127.0.0.9".to_owned(), 5099))]);
    let first = |d: &'static str| {
        let (resolver, statics) = (&resolver, &statics);
        async move {
            fedgate_sip::driver::discover::targets(resolver, statics, d)
                .await
                .map(|t| (t[0].host.clone(), t[0].port, t[0].srv.clone()))
                .map_err(|e| e.to_string())
        }
    };
    let srv = |s: &str| Some(s.to_owned());
    assert_eq!(
        first("a.test").await,
        Ok((
            "ms.a.test".into(),
            5061,
            srv("_sipfederationtls._tcp.a.test")
        ))
    );
    assert_eq!(
        first("B.test.").await,
        Ok(("edge.b.test".into(), 5070, srv("_sips._tcp.edge.b.test")))
    );
    assert_eq!(
        first("c.test").await,
        Ok(("tls.c.test".into(), 5061, srv("_sips._tcp.c.test")))
    );
    assert_eq!(first("d.test").await, Ok(("127.0.0.9".into(), 5099, None)));
    assert_eq!(first("e.test").await, Ok(("e.test".into(), 5061, None)));
    let none = first("f.test").await.unwrap_err();
    assert!(none.contains("no SIP service"), "{none}");
    assert!(first("g.test").await.is_err());
}

/// `fedgate probe --sip`: DNS, TCP, TLS both ways and OPTIONS; without a client certificate
/// the partner refuses us, and the probe says so with its kind.
#[tokio::test]
async fn probe_checks_a_sip_partner() {
    let pki = Pki::new();
    let partner = Partner::new(&pki);
    let spec = gateway(&pki, &partner, "standard", "");
    let gw = spec.start().await;
    let mut zone = Zone::new();
    sip_srv_to(&mut zone, "example.test", "sip.example.test", spec.ip, 5061);
    let dns = dns(zone).await;
    // lync.test's operator probes example.test with its own config.
    let (c, k) = pki.leaf("lync-probe", &LeafSpec::dns(&["lync.test"]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[domains]]\nname = \"lync.test\"\ncert = {:?}\nkey = {:?}\n\n[s2s]\nlisten = [\"127.0.0.1:0\"]\n\n\
             [tls]\nsystem_roots = false\ntrust_anchors = [{:?}]\n\n[dns]\nnameservers = [\"{}\"]\n",
            c.display().to_string(),
            k.display().to_string(),
            pki.ca_path().display().to_string(),
            dns.addr()
        ),
    )
    .unwrap();
    let mut args = fedgate::probe::ProbeArgs::new("example.test");
    args.sip = true;
    args.config = Some(cfg);
    let r = fedgate::probe_sip::run(args).await.unwrap();
    let text = fedgate::probe_sip::render_text(&r);
    assert!(r.works, "{text}");
    let t = &r.targets[0];
    assert_eq!(
        t.srv.as_deref(),
        Some("_sipfederationtls._tcp.example.test"),
        "{text}"
    );
    assert_eq!(
        t.certificate.as_deref(),
        Some("valid for example.test"),
        "{text}"
    );
    assert_eq!(t.options.as_deref(), Some("200 OK"), "{text}");
    assert!(
        t.allow.as_deref().unwrap_or("").contains("MESSAGE"),
        "{text}"
    );

    let mut anon = fedgate::probe::ProbeArgs::new("example.test");
    anon.sip = true;
    anon.ca = vec![pki.ca_path()];
    anon.dns = Some(dns.addr().to_string());
    anon.timeout_secs = 3;
    let r = fedgate::probe_sip::run(anon).await.unwrap();
    let text = fedgate::probe_sip::render_text(&r);
    assert!(!r.works, "{text}");
    assert_eq!(r.kind.as_deref(), Some("no-client-cert"), "{text}");
    drop(gw);
}

/// The policy applies to SIP partners as to XMPP ones: a kind the policy does not let in is
/// refused (as `service-unavailable`, i.e. 480 on the SIP side), an allowed one passes, and the
/// policy's `protocol = "sip"` makes the domain SIP without any `[sip]` partner entry.
#[tokio::test]
async fn the_policy_applies_to_sip_partners() {
    let pki = Pki::new();
    let partner = Partner::new(&pki);
    let listener = TcpListener::bind(partner.edge()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"deny\"\n\n[[rule]]\nid = \"lync-im-only\"\ndomains = [\"lync.test\"]\n\
         action = \"allow\"\ndirection = \"both\"\nkinds = [\"message\"]\nprotocol = \"sip\"\n",
    )
    .unwrap();
    let mut spec = GwSpec::new(&pki, "example.test");
    spec.extra = format!(
        "\n[policy]\nfile = {:?}\n\n[sip]\nlisten = [\"{}:5061\"]\ndiscover = false\n\
         default_flavor = \"standard\"\n",
        policy.display().to_string(),
        spec.ip
    );
    let gw = spec.start().await;
    let mut alice = spec.component(&gw).await;
    let mut edge = dial(&gw, &partner).await;

    let page = page_to("sip:alice@example.test", "policy-1");
    edge.send(&page).await.unwrap();
    assert_eq!(code(&edge.recv(T).await.unwrap()), 200);
    let m = next_stanza(&mut alice, "message").await;
    assert!(body(&m).is_some());

    // A kind the policy does not let in: a presence subscription from the partner.
    edge.send(&fixture("ms-subscribe-presence.sip"))
        .await
        .unwrap();
    let ok = edge.recv(T).await.unwrap();
    assert_eq!(code(&ok), 200, "the SUBSCRIBE dialog itself is answered");
    let pending = edge.recv(T).await.unwrap();
    edge.send(&answer(&pending, 200, "OK", "x")).await.unwrap();
    assert!(
        alice
            .recv_matching(Duration::from_millis(500), |e| e.name == "presence")
            .await
            .is_err(),
        "the denied subscription reached the user"
    );
    let metrics = http_get(&gw, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "fedgate_policy_denials_total{direction=\"inbound\""
        ) >= 1,
        "{metrics}"
    );

    // Outbound: the policy's protocol makes lync.test SIP although no [[sip.partners]] names
    // it; with no SIP records and no route it bounces from the SIP side (`SIP 502 … dns`).
    alice
        .send(&message("alice@example.test", "bob@lync.test", "o1", "out"))
        .await
        .unwrap();
    let err = alice
        .recv_matching(T, |e| e.attr("id") == Some("o1"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&err.to_bytes()).into_owned();
    assert!(text.contains("remote-server-not-found"), "{text}");
    assert!(text.contains("SIP"), "{text}");
    drop(listener);
}

/// A partner known only because it reached us over SIP (no `[[sip.partners]]`, nothing cached
/// from DNS): a refused message gets its mapped error at once, not a 200 followed by a lost
/// bounce that waited for a DNS lookup.
#[tokio::test]
async fn an_undeclared_partner_gets_its_error_not_a_200() {
    let pki = Pki::new();
    let partner = Partner::new(&pki);
    let dns = dns(Zone::new()).await;
    let mut spec = GwSpec::new(&pki, "example.test");
    spec.dns = Some(dns.addr());
    spec.extra = format!(
        "\n[sip]\nlisten = [\"{}:5061\"]\ndiscover = true\n",
        spec.ip
    );
    let gw = spec.start().await;
    // No component: the local service is down.
    let mut edge = dial(&gw, &partner).await;
    let page = page_to("sip:alice@example.test", "undeclared-1");
    edge.send(&page).await.unwrap();
    assert_eq!(code(&edge.recv(T).await.unwrap()), 480);
}

/// The partner's edge closes the connection after our MESSAGE went out and before it answered:
/// the sender gets its error at once, not after the 32 s transaction timeout.
#[tokio::test]
async fn a_connection_lost_before_the_answer_fails_the_message_at_once() {
    let Lab {
        partner,
        listener,
        mut alice,
        _pki,
        gw: _gw,
        ..
    } = lab_with("standard", "", |spec| {
        spec.extra = spec.extra.replace(
            "transaction_timeout_secs = 5",
            "transaction_timeout_secs = 32",
        );
    })
    .await;
    alice
        .send(&message(
            "alice@example.test",
            "bob@lync.test",
            "l1",
            "lost?",
        ))
        .await
        .unwrap();
    let mut edge = accept(&listener, &partner).await;
    let req = edge.recv(T).await.unwrap();
    assert_eq!(req.method(), Some("MESSAGE"));
    drop(edge);
    let err = alice
        .recv_matching(Duration::from_secs(5), |e| e.attr("id") == Some("l1"))
        .await
        .expect("an error well before Timer F");
    let text = String::from_utf8_lossy(&err.to_bytes()).into_owned();
    assert!(text.contains("remote-server-not-found"), "{text}");
    assert!(text.contains("connection closed"), "{text}");
}
