//! SIP federation against real SIP software on loopback: sipp (Debian's 3.6.1, TCP only)
//! behind socat mutual-TLS wrappers, and Kamailio 5.6 with its TLS module as the edge proxy of
//! `lync.test`. fedgate serves `example.test`, whose users are a XEP-0114 component; the
//! partner `lync.test` is configured with a static route (`[[sip.partners]]`). A missing peer
//! fails these tests (never a skip); every process is stopped by PID (the launchers' `Drop`).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fedgate::component_client::{ComponentClient, body, is_presence, message, presence};
use fedgate::gateway::Gateway;
use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::LeafSpec;
use fedgate_s2s::element::{Element, NS_CONTENT};

use crate::sip_peers::{
    Kamailio, KamailioOpts, Sipp, SippOutcome, TlsClientWrapper, TlsFiles, TlsServerWrapper,
    free_port,
};
use crate::support::{GwSpec, Pki, dns, http_get, sip_srv_to};

/// How long a component waits for a stanza.
const W: Duration = Duration::from_secs(20);
/// How long a sipp run may take once its peer has done its part.
const SIPP_WAIT: Duration = Duration::from_secs(40);

/// A fresh loopback address for sipp, socat and Kamailio (127.0.3.20 ..): 127.0.3.1-6 are the
/// harness README's, 127.1.x.y are the gateways' ([`crate::support::next_ip`]).
fn peer_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(20);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250, "out of SIP peer addresses");
    Ipv4Addr::new(127, 0, 3, n)
}

/// A free port on a fresh peer address.
fn peer_addr() -> SocketAddr {
    let ip = peer_ip();
    SocketAddr::from((ip, free_port(ip).unwrap()))
}

/// Certificate files for `lync.test` issued by `pki` (trusting `pki`'s CA).
fn lync_tls(pki: &Pki) -> TlsFiles {
    let (c, k) = pki.leaf("lync.test", &LeafSpec::dns(&["lync.test"]));
    TlsFiles::new(c, k, pki.ca_path())
}

/// Waits for a sipp run off the async runtime (sipp's wait is blocking) and requires exit 0.
async fn sipp_passes(s: Sipp) -> SippOutcome {
    tokio::task::spawn_blocking(move || {
        let mut s = s;
        s.wait(SIPP_WAIT)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits for a sipp run whatever its exit status.
async fn sipp_ends(s: Sipp, timeout: Duration) -> SippOutcome {
    tokio::task::spawn_blocking(move || {
        let mut s = s;
        s.wait_any(timeout)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A sipp UAS (blocking start: it waits until sipp listens).
fn uas(scenario: &str, listen: SocketAddr, args: &[&str]) -> Sipp {
    tokio::task::block_in_place(|| Sipp::uas(scenario, listen, args))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn uac(scenario: &str, remote: SocketAddr, args: &[&str]) -> Sipp {
    Sipp::uac(scenario, remote, peer_ip(), args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// sipp as `from`@lync.test sending a page-mode MESSAGE with `body` to alice@example.test
/// (`scenario`: uac_message.xml, or uac_message_error.xml with `-key expect_code N` in
/// `extra`), with `extra` sipp arguments.
fn page_to_alice(
    scenario: &str,
    remote: SocketAddr,
    from: &str,
    body: &str,
    extra: &[&str],
) -> Sipp {
    let mut args = vec!["-s", from, "-key", "to_user", "alice", "-key", "body", body];
    args.extend_from_slice(extra);
    uac(scenario, remote, &args)
}

/// The component's `<message>` from carol@lync.test to alice@example.test with `body`.
fn assert_page_from_carol(m: &Element, body: &str) {
    assert_eq!(text(m).as_deref(), Some(body), "{m:?}");
    assert_eq!(m.attr("to"), Some("alice@example.test"), "{m:?}");
    assert_eq!(bare(m.attr("from").unwrap()), "carol@lync.test", "{m:?}");
}

/// Sum of the samples of `name` whose labels include every `labels` pair (`k="v"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// fedgate for example.test with a SIP listener and `lync.test` as SIP partner.
struct Lab {
    pki: Pki,
    /// The `lync.test` certificate from the test CA (the partner's side of mutual TLS).
    lync: TlsFiles,
    dns: TestDns,
    gw: GwSpec,
    g: Gateway,
}

struct LabOpts {
    flavor: &'static str,
    /// Static route of lync.test (a TLS server wrapper or Kamailio).
    route: Option<SocketAddr>,
    /// Instead: `_sipfederationtls._tcp.lync.test` SRV → `sip.lync.test` at this address.
    srv: Option<SocketAddr>,
    session_idle_secs: u64,
}

impl LabOpts {
    fn new(flavor: &'static str) -> Self {
        Self {
            flavor,
            route: None,
            srv: None,
            session_idle_secs: 300,
        }
    }
}

impl Lab {
    async fn start(pki: Pki, lync: TlsFiles, opts: LabOpts) -> Self {
        let mut gw = GwSpec::new(&pki, "example.test");
        // Without SIP SRV records the static route is used (discovery order step 3).
        let mut zone = Zone::new();
        if let Some(srv) = opts.srv
            && let std::net::IpAddr::V4(ip) = srv.ip()
        {
            sip_srv_to(&mut zone, "lync.test", "sip.lync.test", ip, srv.port());
        }
        let dns = dns(zone).await;
        gw.dns = Some(dns.addr());
        let route = opts
            .route
            .map(|r| format!("route = \"{r}\"\n"))
            .unwrap_or_default();
        gw.extra = format!(
            "\n[sip]\nlisten = [\"{ip}:5061\"]\ndiscover = false\nsession_idle_secs = {idle}\n\
             transaction_timeout_secs = 10\nconnect_timeout_secs = 3\n\n\
             [[sip.partners]]\ndomain = \"lync.test\"\nflavor = \"{flavor}\"\n{route}",
            ip = gw.ip,
            idle = opts.session_idle_secs,
            flavor = opts.flavor,
        );
        let g = gw.start().await;
        Self {
            pki,
            lync,
            dns,
            gw,
            g,
        }
    }

    fn sip_addr(&self) -> SocketAddr {
        self.g.sip_addrs[0]
    }

    /// A socat client wrapper (plain TCP in, mutual TLS with `tls` out) to the gateway's SIP
    /// listener, checking that the gateway's certificate names example.test.
    fn client_wrapper(&self, tls: &TlsFiles) -> TlsClientWrapper {
        TlsClientWrapper::start(peer_addr(), self.sip_addr(), tls, "example.test")
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn component(&self) -> ComponentClient {
        self.gw.component(&self.g).await
    }

    async fn metrics(&self) -> String {
        http_get(&self.g, "/metrics").await
    }

    async fn stop(self) {
        self.g.shutdown().await;
        self.dns.stop().await;
        drop(self.pki);
    }
}

/// The body of a message without the line end sipp puts after `[body]` (it is part of the SIP
/// body sipp sends, so the gateway rightly keeps it).
fn text(m: &Element) -> Option<String> {
    body(m).map(|b| b.trim_end_matches(['\r', '\n']).to_owned())
}

/// The next `<message/>` with a body (chat states and the like are skipped).
async fn next_message(comp: &mut ComponentClient, diag: &dyn Fn() -> String) -> Element {
    comp.recv_matching(W, |e| e.name == "message" && body(e).is_some())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diag()))
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// 1. sipp (carol@lync.test) → socat mutual TLS → fedgate: a page-mode MESSAGE to a user of
/// example.test while its component is down gets the RFC 7247 mapping of
/// `service-unavailable` for a bare JID (480, never 503); once the component is up, the
/// MESSAGE arrives there as a `<message/>` with the body and sipp gets 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_sipp_message_reaches_component_or_gets_mapped_error() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let lab = Lab::start(pki, lync, LabOpts::new("standard")).await;
    let wrapper = lab.client_wrapper(&lab.lync);

    // No component connected: the router bounces service-unavailable → 480.
    let s = page_to_alice(
        "uac_message_error.xml",
        wrapper.listen,
        "carol",
        "anyone home?",
        &["-key", "expect_code", "480"],
    );
    let out = sipp_passes(s).await;
    assert!(out.messages.contains("SIP/2.0 480"), "{}", out.messages);
    assert!(!out.messages.contains("SIP/2.0 503"), "{}", out.messages);

    let mut comp = lab.component().await;
    let s = page_to_alice(
        "uac_message.xml",
        wrapper.listen,
        "carol",
        "hello from lync",
        &[],
    );
    let m = next_message(&mut comp, &|| wrapper.log()).await;
    assert_page_from_carol(&m, "hello from lync");
    sipp_passes(s).await;
    assert!(
        wrapper.log().contains("commonName matches"),
        "{}",
        wrapper.log()
    );

    // /status shows the partner with the message it sent us and the error it got.
    let deadline = Instant::now() + W;
    let partner = loop {
        let st: serde_json::Value =
            serde_json::from_str(&http_get(&lab.g, "/status").await).unwrap();
        let p = st["sip"]["partners"]["lync.test"].clone();
        if p["messages_in"] == 1 || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(partner["messages_in"], 1, "{partner}");
    assert_eq!(partner["errors_in"], 1, "{partner}");
    assert_eq!(partner["flavor"], "standard", "{partner}");

    let m = lab.metrics().await;
    for status in ["480", "200"] {
        assert_eq!(
            sample(
                &m,
                "fedgate_sip_transactions_total",
                &[
                    "partner=\"lync.test\"",
                    "direction=\"in\"",
                    "method=\"MESSAGE\"",
                    &format!("status=\"{status}\""),
                ],
            ),
            1,
            "{m}"
        );
    }
    comp.close().await;
    drop(wrapper);
    lab.stop().await;
}

/// Starts a sipp UAS behind a socat TLS server wrapper that presents `tls` and requires a
/// client certificate from the test CA: (wrapper, sipp, wrapper address).
fn uas_behind_tls(scenario: &str, tls: &TlsFiles, args: &[&str]) -> (TlsServerWrapper, Sipp) {
    let sipp = uas(scenario, peer_addr(), args);
    let wrapper =
        TlsServerWrapper::start(peer_addr(), sipp.local, tls).unwrap_or_else(|e| panic!("{e:#}"));
    (wrapper, sipp)
}

/// 2a. fedgate → sipp UAS with `flavor = "standard"`: the component's message to
/// bob@lync.test leaves as an RFC 7572 page-mode MESSAGE with the body, over mutual TLS (the
/// wrapper requires our client certificate). The partner is found the Microsoft way: SRV
/// `_sipfederationtls._tcp.lync.test` → `sip.lync.test`, whose certificate names only that
/// SRV target (accepted by the default `name_check = "domain-or-srv-target"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_component_message_reaches_sipp_as_page_mode() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let (ec, ek) = pki.leaf("sip.lync.test", &LeafSpec::dns(&["sip.lync.test"]));
    let edge = TlsFiles::new(ec, ek, pki.ca_path());
    let (wrapper, sipp) = uas_behind_tls(
        "uas_message.xml",
        &edge,
        &["-key", "expect_body", "hello bob, page mode"],
    );
    let mut opts = LabOpts::new("standard");
    opts.srv = Some(wrapper.listen);
    let lab = Lab::start(pki, lync, opts).await;
    let mut comp = lab.component().await;
    comp.send(&message(
        "alice@example.test/desk",
        "bob@lync.test",
        "m1",
        "hello bob, page mode",
    ))
    .await
    .unwrap();
    let out = sipp_passes(sipp).await;
    assert!(
        out.messages.contains("MESSAGE sip:bob@lync.test SIP/2.0"),
        "{}",
        out.messages
    );
    assert!(
        !out.messages.contains("INVITE sip:"),
        "page mode must not open a session\n{}",
        out.messages
    );
    let m = lab.metrics().await;
    assert_eq!(
        sample(
            &m,
            "fedgate_sip_transactions_total",
            &[
                "partner=\"lync.test\"",
                "direction=\"out\"",
                "method=\"MESSAGE\"",
                "status=\"200\"",
            ],
        ),
        1,
        "{m}"
    );
    comp.close().await;
    drop(wrapper);
    lab.stop().await;
}

/// 2b. fedgate → sipp UAS with `flavor = "microsoft"`: the first message rides in an INVITE's
/// `ms-text-format` (base64 of the text), the second is an in-dialog MESSAGE, and the gateway
/// closes the idle session with BYE after `session_idle_secs` (2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_component_messages_reach_sipp_in_a_microsoft_session() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let first = "héllo bob, session mode";
    let b64 = base64::engine::general_purpose::STANDARD.encode(first);
    let (wrapper, sipp) = uas_behind_tls(
        "uas_invite_im.xml",
        &lync,
        &[
            "-key",
            "expect_b64",
            &b64,
            "-key",
            "min_messages",
            "1",
            "-key",
            "await_bye",
            "1",
            "-timeout",
            "30s",
            "-timeout_error",
        ],
    );
    let mut opts = LabOpts::new("microsoft");
    opts.route = Some(wrapper.listen);
    opts.session_idle_secs = 2;
    let lab = Lab::start(pki, lync, opts).await;
    let mut comp = lab.component().await;
    for (id, text) in [("s1", first), ("s2", "second line")] {
        comp.send(&message(
            "alice@example.test/desk",
            "bob@lync.test",
            id,
            text,
        ))
        .await
        .unwrap();
    }
    let out = sipp_passes(sipp).await;
    assert!(
        out.logs.contains(&format!("INVITE ms-body={b64}")),
        "{}",
        out.logs
    );
    assert!(out.logs.contains("second line"), "{}", out.logs);
    assert!(
        out.messages.contains("BYE sip:"),
        "no BYE after the idle time\n{}",
        out.messages
    );
    // Neither message came back as an error.
    assert!(
        comp.recv_matching(Duration::from_millis(300), |e| e.name == "message")
            .await
            .is_err()
    );
    comp.close().await;
    drop(wrapper);
    lab.stop().await;
}

/// 3. sipp in Microsoft session mode → fedgate: INVITE carrying the first message
/// (`ms-text-format`), an in-dialog MESSAGE, BYE; the component receives both messages as
/// chat messages from carol@lync.test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_sipp_session_mode_im_reaches_component() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let lab = Lab::start(pki, lync, LabOpts::new("microsoft")).await;
    let wrapper = lab.client_wrapper(&lab.lync);
    let mut comp = lab.component().await;
    let first = "héllo alice from lync";
    let b64 = base64::engine::general_purpose::STANDARD.encode(first);
    let s = uac(
        "uac_invite_im.xml",
        wrapper.listen,
        &[
            "-s",
            "carol",
            "-key",
            "to_user",
            "alice",
            "-key",
            "body_b64",
            &b64,
            "-key",
            "body2",
            "and a second line",
        ],
    );
    let m1 = next_message(&mut comp, &|| wrapper.log()).await;
    let m2 = next_message(&mut comp, &|| wrapper.log()).await;
    for (m, text) in [(&m1, first), (&m2, "and a second line")] {
        assert_eq!(self::text(m).as_deref(), Some(text), "{m:?}");
        assert_eq!(m.attr("type"), Some("chat"), "{m:?}");
        assert_eq!(m.attr("to"), Some("alice@example.test"), "{m:?}");
        assert_eq!(bare(m.attr("from").unwrap()), "carol@lync.test", "{m:?}");
    }
    // Both belong to one conversation: the session's Call-ID is the thread.
    let thread = |m: &Element| m.child("thread", NS_CONTENT).map(Element::text);
    assert!(thread(&m1).is_some(), "{m1:?}");
    assert_eq!(thread(&m1), thread(&m2));
    sipp_passes(s).await;
    comp.close().await;
    drop(wrapper);
    lab.stop().await;
}

/// 4a. sipp watches alice: SUBSCRIBE → the component gets `subscribe` from carol@lync.test,
/// approves and sends available presence → sipp sees NOTIFY active with `<basic>open</basic>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_sipp_watcher_sees_component_presence() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let lab = Lab::start(pki, lync, LabOpts::new("microsoft")).await;
    let wrapper = lab.client_wrapper(&lab.lync);
    let mut comp = lab.component().await;
    let s = uac(
        "uac_subscribe.xml",
        wrapper.listen,
        &[
            "-s",
            "carol",
            "-key",
            "to_user",
            "alice",
            "-key",
            "await_closed",
            "0",
        ],
    );
    let sub = comp
        .recv_matching(W, |e| is_presence(e, "subscribe"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", wrapper.log()));
    assert_eq!(sub.attr("from"), Some("carol@lync.test"), "{sub:?}");
    assert_eq!(sub.attr("to"), Some("alice@example.test"), "{sub:?}");
    comp.send(&presence(
        "alice@example.test",
        "carol@lync.test",
        "subscribed",
    ))
    .await
    .unwrap();
    comp.send(&presence("alice@example.test/desk", "carol@lync.test", ""))
        .await
        .unwrap();
    let out = sipp_passes(s).await;
    assert!(out.logs.contains("basic=open"), "{}", out.logs);
    assert!(
        out.messages.contains("Subscription-State: active"),
        "{}",
        out.messages
    );
    comp.close().await;
    drop(wrapper);
    lab.stop().await;
}

/// 4b. The component's user subscribes to bob@lync.test: fedgate sends SUBSCRIBE to the sipp
/// presentity (behind mutual TLS), which answers and NOTIFYs active/open with a note; the
/// component gets `subscribed` and an available presence from bob carrying the note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_component_watches_sipp_presentity() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let (wrapper, sipp) = uas_behind_tls(
        "uas_subscribe.xml",
        &lync,
        &[
            "-key",
            "note",
            "Out to lunch",
            "-key",
            "hold_ms",
            "300",
            "-key",
            "then_closed",
            "0",
        ],
    );
    let mut opts = LabOpts::new("microsoft");
    opts.route = Some(wrapper.listen);
    let lab = Lab::start(pki, lync, opts).await;
    let mut comp = lab.component().await;
    comp.send(&presence(
        "alice@example.test",
        "bob@lync.test",
        "subscribe",
    ))
    .await
    .unwrap();
    let ok = comp
        .recv_matching(W, |e| is_presence(e, "subscribed"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", wrapper.log()));
    assert_eq!(ok.attr("from"), Some("bob@lync.test"), "{ok:?}");
    assert_eq!(ok.attr("to"), Some("alice@example.test"), "{ok:?}");
    let p = comp
        .recv_matching(W, |e| is_presence(e, ""))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", wrapper.log()));
    assert_eq!(bare(p.attr("from").unwrap()), "bob@lync.test", "{p:?}");
    assert_eq!(
        p.child("status", NS_CONTENT).map(Element::text).as_deref(),
        Some("Out to lunch"),
        "{p:?}"
    );
    let out = sipp_passes(sipp).await;
    assert!(
        out.messages.contains("SUBSCRIBE sip:bob@lync.test"),
        "{}",
        out.messages
    );
    comp.close().await;
    drop(wrapper);
    lab.stop().await;
}

/// 5. Kamailio as lync.test's TLS edge (requiring our certificate both ways) in front of sipp:
/// a MESSAGE from a lync.test user through Kamailio reaches the component, and the
/// component's message to bob@lync.test goes through Kamailio to the sipp UAS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_edge_relays_messages_both_ways() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let ua = peer_addr();
    let kam_ip = peer_ip();
    let kam_tls = free_port(kam_ip).unwrap();
    let kam_tcp = free_port(kam_ip).unwrap();
    let mut opts = LabOpts::new("standard");
    opts.route = Some(SocketAddr::from((kam_ip, kam_tls)));
    let lab = Lab::start(pki, lync, opts).await;
    let kam = tokio::task::block_in_place(|| {
        Kamailio::start(KamailioOpts::new(
            kam_ip,
            kam_tls,
            kam_tcp,
            lab.lync.clone(),
            ua,
            lab.sip_addr(),
        ))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut comp = lab.component().await;

    // lync.test → example.test: sipp -tcp-> Kamailio -mutual TLS-> fedgate.
    let s = page_to_alice(
        "uac_message.xml",
        kam.tcp_addr,
        "carol",
        "via the lync.test edge",
        &[],
    );
    let m = next_message(&mut comp, &|| kam.log()).await;
    assert_page_from_carol(&m, "via the lync.test edge");
    sipp_passes(s).await;

    // example.test → lync.test: fedgate -mutual TLS-> Kamailio -tcp-> sipp UAS.
    let sipp = uas(
        "uas_message.xml",
        ua,
        &["-key", "expect_body", "reply through the edge"],
    );
    comp.send(&message(
        "alice@example.test/desk",
        "bob@lync.test",
        "k1",
        "reply through the edge",
    ))
    .await
    .unwrap();
    let out = sipp_ends(sipp, SIPP_WAIT).await;
    assert!(out.success(), "{out:?}\n{}", kam.log());
    // The request came through Kamailio (its Via on top of ours).
    assert!(
        out.messages.contains(&format!("{kam_ip}:{kam_tcp}")),
        "{}",
        out.messages
    );
    comp.close().await;
    drop(kam);
    lab.stop().await;
}

/// `openssl s_client` without a client certificate, sending `request` and reading until the
/// server closes (stopped by PID if it has not exited after `timeout`). Returns its stdout.
fn s_client_without_cert(
    server: SocketAddr,
    ca: &std::path::Path,
    request: &str,
    timeout: Duration,
) -> String {
    use std::io::Write as _;
    let mut child = Command::new(crate::sip_peers::require_binary("openssl"))
        .args(["s_client", "-quiet", "-connect", &server.to_string()])
        .arg("-CAfile")
        .arg(ca)
        .args(["-servername", "example.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // stdin stays open until the end: s_client must stop because the server closes.
    let mut stdin = child.stdin.take();
    if let Some(i) = stdin.as_mut() {
        let _ = i.write_all(request.as_bytes());
    }
    let stdout = child.stdout.take();
    let mut guard = Guard(child);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(guard.0.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
    drop(stdin);
    let mut text = String::new();
    if let Some(mut s) = stdout {
        use std::io::Read as _;
        let _ = s.read_to_string(&mut text);
    }
    text
}

/// 6. Partners whose certificates fedgate cannot trust are refused with a typed failure: a
/// lync.test client certificate from another CA (`tls-untrusted`, inbound), a client without
/// certificate (`no-client-cert`), and, outbound, a lync.test server whose certificate comes
/// from another CA: the component's message comes back as an error naming `tls-untrusted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_untrusted_partner_is_refused_with_typed_error() {
    let pki = Pki::new();
    let lync = lync_tls(&pki);
    let rogue_pki = Pki::new();
    let (rc, rk) = rogue_pki.leaf("lync.test", &LeafSpec::dns(&["lync.test"]));
    // The rogue's certificate, but trusting our CA (so only fedgate's check can refuse).
    let rogue = TlsFiles::new(rc, rk, pki.ca_path());
    // Outbound: a lync.test server presenting the rogue certificate.
    let (out_wrapper, _sipp) = uas_behind_tls(
        "uas_message.xml",
        &rogue,
        &[
            "-key",
            "expect_body",
            "never delivered",
            "-timeout",
            "20s",
            "-timeout_error",
        ],
    );
    let mut opts = LabOpts::new("standard");
    opts.route = Some(out_wrapper.listen);
    let lab = Lab::start(pki, lync, opts).await;
    let mut comp = lab.component().await;

    // Inbound, certificate from another CA.
    let wrapper = lab.client_wrapper(&rogue);
    let s = page_to_alice(
        "uac_message.xml",
        wrapper.listen,
        "mallory",
        "let me in",
        &["-timeout", "8s", "-timeout_error"],
    );
    let out = sipp_ends(s, SIPP_WAIT).await;
    assert!(!out.success(), "{out:?}");
    assert!(!out.messages.contains("SIP/2.0 200"), "{}", out.messages);
    let m = lab.metrics().await;
    assert!(
        sample(
            &m,
            "fedgate_sip_failures_total",
            &["kind=\"tls-untrusted\""]
        ) >= 1,
        "{m}"
    );

    // Inbound, no client certificate at all.
    let before = sample(
        &m,
        "fedgate_sip_failures_total",
        &["kind=\"no-client-cert\""],
    );
    let request = "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.3.1:5061;branch=z9hG4bKnocert\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:mallory@lync.test>;tag=1\r\nTo: <sip:example.test>\r\n\
                   Call-ID: nocert@lync.test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let (addr, ca) = (lab.sip_addr(), lab.pki.ca_path());
    let answer = tokio::task::spawn_blocking(move || {
        s_client_without_cert(addr, &ca, request, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(!answer.contains("SIP/2.0"), "{answer}");
    let m = lab.metrics().await;
    assert_eq!(
        sample(
            &m,
            "fedgate_sip_failures_total",
            &["kind=\"no-client-cert\""]
        ),
        before + 1,
        "{m}"
    );
    // No message made it to the local user.
    assert!(
        comp.recv_matching(Duration::from_millis(300), |e| e.name == "message")
            .await
            .is_err()
    );

    // Outbound to a server with the rogue certificate: the sender gets an error.
    comp.send(&message(
        "alice@example.test/desk",
        "bob@lync.test",
        "u1",
        "never delivered",
    ))
    .await
    .unwrap();
    let err = comp
        .recv_matching(W, |e| e.name == "message")
        .await
        .unwrap();
    assert_eq!(err.attr("type"), Some("error"), "{err:?}");
    assert_eq!(err.attr("from"), Some("bob@lync.test"), "{err:?}");
    let text = String::from_utf8_lossy(&err.to_bytes()).into_owned();
    assert!(text.contains("tls-untrusted"), "{text}");
    let m = lab.metrics().await;
    assert!(
        sample(
            &m,
            "fedgate_sip_failures_total",
            &["kind=\"tls-untrusted\"", "partner=\"lync.test\""]
        ) >= 1,
        "{m}"
    );
    comp.close().await;
    drop(wrapper);
    drop(out_wrapper);
    lab.stop().await;
}
