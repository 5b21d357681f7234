//! fedgate against real third-party servers: Debian's Prosody 0.12 and ejabberd 23.01 as
//! remote domains, slixmpp clients logged into them, and a XEP-0114 component behind fedgate
//! as the local user side of example.test. A missing peer fails these tests (never a skip).

mod faults;
#[path = "../support/gw_child.rs"]
mod gw_child;
mod internal;
#[path = "../support/peers.rs"]
mod peers;
mod sip;
#[path = "../support/sip_peers.rs"]
mod sip_peers;
#[path = "../gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use fedgate::component_client::{body, is_presence, message, presence};
use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::LeafSpec;
use peers::*;
use support::*;

const W: Duration = Duration::from_secs(30);

/// SRV for `domain` with an IP-literal target (what Prosody and ejabberd need), plus A records.
fn srv_literal(zone: &mut Zone, domain: &str, ip: Ipv4Addr) {
    zone.srv(
        &format!("_xmpp-server._tcp.{domain}"),
        0,
        5,
        5269,
        &ip.to_string(),
    )
    .a(domain, ip);
}

async fn metrics(gw: &fedgate::gateway::Gateway) -> String {
    http_get(gw, "/metrics").await
}

/// The user-visible job against a real server: `client` (a user of the remote server) and the
/// component user `local` exchange messages, then subscribe to each other's presence.
async fn message_and_subscriptions(
    comp: &mut fedgate::component_client::ComponentClient,
    client: &mut XmppClient,
    local: &str,
    diagnostics: &dyn Fn() -> String,
) {
    let remote = client.jid().split('/').next().unwrap().to_owned();
    client
        .send_message(local, "hello from the remote server")
        .await
        .unwrap();
    let m = comp
        .recv_matching(W, |e| e.name == "message")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics()));
    assert_eq!(body(&m).as_deref(), Some("hello from the remote server"));
    let from = m.attr("from").unwrap().to_owned();
    assert!(from.starts_with(&format!("{remote}/")), "{from}");
    let resource = format!("{local}/desk");
    comp.send(&message(&resource, &from, "r1", "hello from fedgate"))
        .await
        .unwrap();
    let (from, text) = client
        .expect_message(W)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics()));
    assert_eq!(
        (from.as_str(), text.as_str()),
        (local, "hello from fedgate")
    );

    // The remote user subscribes: the component approves and sends its presence.
    client.subscribe(local).await;
    let s = comp
        .recv_matching(W, |e| is_presence(e, "subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics()));
    assert_eq!(s.attr("from"), Some(remote.as_str()));
    comp.send(&presence(local, &remote, "subscribed"))
        .await
        .unwrap();
    comp.send(&presence(&resource, &remote, "")).await.unwrap();
    client
        .expect_presence(local, "subscribed", W)
        .await
        .unwrap();
    client
        .expect_presence(&resource, "available", W)
        .await
        .unwrap();
    // The component user subscribes: the remote server asks its user, who approves.
    comp.send(&presence(local, &remote, "subscribe"))
        .await
        .unwrap();
    let ok = comp
        .recv_matching(W, |e| is_presence(e, "subscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics()));
    assert_eq!(ok.attr("from"), Some(remote.as_str()));
}

/// fedgate for example.test (with `extra` config, e.g. a [policy] section) and Prosody for
/// p.test trusting the test CA, both found through the test DNS, and alice logged into Prosody.
struct ProsodySetup {
    _pki: Pki,
    dns: TestDns,
    gw: GwSpec,
    g: fedgate::gateway::Gateway,
    prosody: Prosody,
    alice: XmppClient,
}

async fn with_prosody(extra: String, secure_auth: bool) -> ProsodySetup {
    let pki = Pki::new();
    let mut gw = GwSpec::new(&pki, "example.test");
    gw.extra = extra;
    let p_ip = next_ip();
    let mut zone = Zone::new();
    srv_literal(&mut zone, "p.test", p_ip);
    srv_literal(&mut zone, "example.test", gw.ip);
    let dns: TestDns = dns(zone).await;
    gw.dns = Some(dns.addr());
    let g = gw.start().await;
    let (pc, pk) = pki.leaf("p.test", &LeafSpec::dns(&["p.test"]));
    let mut opts = ProsodyOpts::new("p.test", p_ip, dns.addr(), pc, pk).user("alice", "pw-alice");
    opts.trust_ca = Some(pki.ca_path());
    opts.secure_auth = secure_auth;
    let prosody = Prosody::start(opts).await.unwrap();
    let alice = XmppClient::connect(
        &interop_python(),
        "alice@p.test",
        "pw-alice",
        prosody.c2s_addr(),
    )
    .await
    .unwrap();
    ProsodySetup {
        _pki: pki,
        dns,
        gw,
        g,
        prosody,
        alice,
    }
}

impl ProsodySetup {
    async fn stop(self) {
        self.alice.close();
        self.prosody.stop();
        self.g.shutdown().await;
        self.dns.stop().await;
    }
}

/// Prosody as remote domain p.test: message from a Prosody user to a component user of
/// example.test and the reply back; subscriptions both ways; SASL EXTERNAL both ways (both
/// sides trust the test CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_federates_with_sasl_external() {
    let mut t = with_prosody(String::new(), true).await;
    let mut comp = t.gw.component(&t.g).await;
    let prosody = &t.prosody;
    message_and_subscriptions(&mut comp, &mut t.alice, "bob@example.test", &|| {
        prosody.diagnostics()
    })
    .await;

    let m = metrics(&t.g).await;
    assert!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"in\",mechanism=\"sasl-external\",method=\"pkix\",result=\"ok\"}"
        ) >= 1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"out\",mechanism=\"sasl-external\",method=\"pkix\",result=\"ok\"}"
        ) >= 1,
        "{m}"
    );
    t.stop().await;
}

/// ejabberd as remote domain e.test, which does not trust our CA: our outbound stream falls
/// back to dialback and ejabberd verifies the key with fedgate as authoritative server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_federates_with_dialback() {
    let pki = Pki::new();
    let mut gw = GwSpec::new(&pki, "example.test");
    let e_ip = next_ip();
    let mut zone = Zone::new();
    srv_literal(&mut zone, "e.test", e_ip);
    srv_literal(&mut zone, "example.test", gw.ip);
    let dns: TestDns = dns(zone).await;
    gw.dns = Some(dns.addr());
    let g = gw.start().await;
    let mut comp = gw.component(&g).await;

    let (ec, ek) = pki.leaf("e.test", &LeafSpec::dns(&["e.test"]));
    let opts = EjabberdOpts::new("e.test", e_ip, dns.addr(), ec, ek).user("carol", "pw-carol");
    let ejabberd = Ejabberd::start(opts).await.unwrap();
    let mut carol = XmppClient::connect(
        &interop_python(),
        "carol@e.test",
        "pw-carol",
        ejabberd.c2s_addr(),
    )
    .await
    .unwrap();

    message_and_subscriptions(&mut comp, &mut carol, "dave@example.test", &|| {
        ejabberd.diagnostics()
    })
    .await;

    let m = metrics(&g).await;
    assert!(
        metric(
            &m,
            "fedgate_auth_total{direction=\"out\",mechanism=\"dialback\",method=\"pkix\",result=\"ok\"}"
        ) >= 1,
        "{m}"
    );
    carol.close();
    ejabberd.stop();
    g.shutdown().await;
    dns.stop().await;
}

/// A message from a Prosody user to a domain fedgate cannot reach comes back as an error from
/// fedgate (through Prosody to the client), with the failure kind in the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_user_gets_errors_for_unreachable_local_service() {
    // No component attached: the local service is down.
    let mut t = with_prosody(String::new(), false).await;
    t.alice
        .send_message("bob@example.test", "is anyone there?")
        .await
        .unwrap();
    let (from, cond) = t
        .alice
        .expect_message_error(W)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", t.prosody.diagnostics()));
    assert!(from.starts_with("bob@example.test"), "{from}");
    assert_eq!(cond, "service-unavailable");
    t.stop().await;
}

/// A real Prosody peer under policy: messages from p.test are not allowed (presence is), so
/// its user gets service-unavailable; then the whole domain is denied and Prosody's user gets
/// an error for the refused stream, while fedgate counts the denial by rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_user_is_denied_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"allow\"\n[[rule]]\nid = \"p-no-chat\"\ndomains = [\"p.test\"]\naction = \"allow\"\n\
         kinds = [\"presence\", \"subscription\", \"iq\"]\n",
    )
    .unwrap();
    let mut t = with_prosody(
        format!("\n[policy]\nfile = {:?}\n", policy.display().to_string()),
        false,
    )
    .await;
    let mut comp = t.gw.component(&t.g).await;
    let (alice, prosody, g) = (&mut t.alice, &t.prosody, &t.g);

    alice
        .send_message("bob@example.test", "may I chat?")
        .await
        .unwrap();
    let (from, cond) = alice
        .expect_message_error(W)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", prosody.diagnostics()));
    assert!(from.starts_with("bob@example.test"), "{from}");
    assert_eq!(cond, "service-unavailable");
    // Presence is allowed: the subscription request reaches the component.
    alice.subscribe("bob@example.test").await;
    comp.recv_matching(W, |e| is_presence(e, "subscribe"))
        .await
        .unwrap();
    let m = metrics(g).await;
    assert_eq!(
        metric(
            &m,
            "fedgate_policy_denials_total{direction=\"inbound\",kind=\"message\",rule=\"p-no-chat\"}"
        ),
        1,
        "{m}"
    );

    // Deny the whole domain: Prosody's new stream is refused with a policy-violation stream
    // error naming the rule, and alice gets an error instead of silence.
    std::fs::write(&policy, "default = \"allow\"\n[[rule]]\nid = \"p-blocked\"\ndomains = [\"p.test\"]\naction = \"deny\"\n").unwrap();
    g.policy.reload("test").unwrap();
    prosody
        .shell("s2s:close('p.test', 'example.test')")
        .await
        .ok();
    alice
        .send_message("bob@example.test", "and now?")
        .await
        .unwrap();
    let (_, cond) = alice
        .expect_message_error(W)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", prosody.diagnostics()));
    // Prosody 0.12 reports a stream refused by the peer to its user as a failed s2s link.
    assert!(
        matches!(
            cond.as_str(),
            "remote-server-timeout" | "remote-server-not-found"
        ),
        "{cond}"
    );
    let m = metrics(g).await;
    assert!(
        metric(
            &m,
            "fedgate_policy_denials_total{direction=\"inbound\",kind=\"stream\",rule=\"p-blocked\"}"
        ) >= 1,
        "{m}"
    );
    t.stop().await;
}
