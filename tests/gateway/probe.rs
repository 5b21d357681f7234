//! `fedgate probe` against real in-process gateways, found through the in-process test DNS.

use fedgate::probe::{ProbeArgs, ProbeReport, render_text, run};
use fedgate::testdns::Zone;

use crate::support::*;

fn args(domain: &str, dns: std::net::SocketAddr) -> ProbeArgs {
    let mut a = ProbeArgs::new(domain);
    a.dns = Some(dns.to_string());
    a.timeout_secs = 5;
    a
}

fn json(r: &ProbeReport) -> serde_json::Value {
    serde_json::to_value(r).unwrap()
}

/// A gateway found by SRV, probed with a client certificate from the test CA (through
/// `--config`) and the test CA as trust anchor: everything checks out.
#[tokio::test]
async fn probe_finds_a_working_gateway() {
    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let mut zone = Zone::new();
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    let gb = b.start().await;

    // The probing side: a config for a.test (never started) supplies the client certificate.
    let mut a = GwSpec::new(&pki, "a.test");
    a.dns = Some(dns.addr());
    let cfg_path = pki.dir.path().join("probe-a.toml");
    std::fs::write(&cfg_path, a.toml()).unwrap();
    let mut args = ProbeArgs::new("b.test");
    args.config = Some(cfg_path);
    args.ca = vec![pki.ca_path()];
    let r = run(args).await.unwrap();
    let text = render_text(&r);
    assert!(r.works, "{text}");
    assert_eq!(r.kind, None);
    assert_eq!(r.from.as_deref(), Some("a.test"));
    assert!(r.client_certificate);
    let j = json(&r);
    assert_eq!(j["srv"]["source"], "srv", "{j}");
    assert_eq!(j["srv"]["xmpp"][0]["target"], "xmpp.b.test", "{j}");
    let t = &j["targets"][0];
    assert_eq!(t["addr"], b.ip.to_string(), "{j}");
    assert_eq!(t["connect"]["ok"], true, "{j}");
    assert_eq!(t["tls"]["version"], "TLSv1.3", "{j}");
    assert_eq!(t["certificate"]["chain_check"]["ok"], true, "{j}");
    assert_eq!(t["certificate"]["name_check"]["ok"], true, "{j}");
    assert_eq!(t["certificate"]["name_check"]["detail"], "dns-id", "{j}");
    assert_eq!(t["certificate"]["chain"][0]["subject"], "CN=b.test", "{j}");
    assert_eq!(t["stream"]["starttls_required"], true, "{j}");
    assert_eq!(t["stream"]["sasl_mechanisms"][0], "EXTERNAL", "{j}");
    assert_eq!(t["stream"]["dialback"], true, "{j}");
    assert_eq!(t["auth"], serde_json::json!(["sasl-external", "dialback"]));
    assert!(
        r.verdict.contains("works") && r.verdict.contains("SASL EXTERNAL"),
        "{text}"
    );
    assert!(text.contains("SRV _xmpp-server._tcp.b.test:"), "{text}");
    assert!(text.contains("  name      ok (DNS-ID)"), "{text}");
    assert!(
        text.contains("before TLS: starttls(required); after TLS: SASL EXTERNAL, dialback"),
        "{text}"
    );
    gb.shutdown().await;
    dns.stop().await;
}

/// Without the test CA the chain check fails, but dialback is offered: federation still works.
#[tokio::test]
async fn probe_untrusted_certificate_still_works_with_dialback() {
    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let mut zone = Zone::new();
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    let gb = b.start().await;

    let r = run(args("b.test", dns.addr())).await.unwrap();
    let text = render_text(&r);
    assert!(r.works, "{text}");
    assert!(!r.client_certificate);
    let t = &r.targets[0];
    let cert = t.certificate.as_ref().unwrap();
    assert!(!cert.chain_check.ok, "{text}");
    assert_eq!(
        cert.chain_check.kind.as_deref(),
        Some("cert-chain"),
        "{text}"
    );
    assert!(cert.name_check.ok, "{text}");
    assert_eq!(t.auth, vec!["dialback"]);
    assert!(r.verdict.contains("dialback"), "{}", r.verdict);
    assert!(!r.verdict.contains("EXTERNAL"), "{}", r.verdict);
    assert!(text.contains("  chain     cert-chain: "), "{text}");
    gb.shutdown().await;
    dns.stop().await;
}

/// A "." SRV target: no XMPP service, reported as a dns failure without any connection.
#[tokio::test]
async fn probe_no_service_is_a_dns_failure() {
    let mut zone = Zone::new();
    zone.srv("_xmpp-server._tcp.noservice.test", 0, 0, 0, ".");
    let dns = dns(zone).await;
    let r = run(args("noservice.test", dns.addr())).await.unwrap();
    let text = render_text(&r);
    assert!(!r.works, "{text}");
    assert_eq!(r.kind.as_deref(), Some("dns"), "{text}");
    assert!(r.verdict.contains("does not work: dns:"), "{text}");
    assert!(r.targets.is_empty());
    assert!(
        text.contains("SRV _xmpp-server._tcp.noservice.test:  0 0 0 ."),
        "{text}"
    );
    dns.stop().await;
}

/// The SRV target exists in DNS but nothing listens there.
#[tokio::test]
async fn probe_dead_target_is_a_connect_failure() {
    let mut zone = Zone::new();
    srv_to(&mut zone, "dead.test", next_ip());
    let dns = dns(zone).await;
    let r = run(args("dead.test", dns.addr())).await.unwrap();
    let text = render_text(&r);
    assert!(!r.works, "{text}");
    assert_eq!(r.kind.as_deref(), Some("connect"), "{text}");
    assert_eq!(r.targets.len(), 1);
    assert_eq!(r.targets[0].connect.as_ref().map(|c| c.ok), Some(false));
    assert!(r.verdict.contains("target xmpp.dead.test:5269"), "{text}");
    assert!(text.contains("  connect   failed"), "{text}");
    dns.stop().await;
}

/// The real binary: `fedgate probe DOMAIN --dns ADDR --ca CA --json`, exit status 0 and JSON
/// on stdout. Needs the `probe` subcommand wired in src/main.rs (done by the lead); until
/// then run the others with `cargo test --test gateway probe -- --skip probe_binary`.
#[tokio::test]
async fn probe_binary_json_and_exit_status() {
    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let mut zone = Zone::new();
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    let gb = b.start().await;
    let (dns_addr, ca) = (dns.addr().to_string(), pki.ca_path());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args(["probe", "b.test", "--dns", &dns_addr, "--ca"])
            .arg(&ca)
            .arg("--json")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["works"], true, "{j}");
    assert_eq!(j["targets"][0]["tls"]["version"], "TLSv1.3", "{j}");
    assert_eq!(
        j["targets"][0]["certificate"]["chain_check"]["ok"], true,
        "{j}"
    );

    // A domain without service: exit status 1.
    let dns_addr = dns.addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args(["probe", "nothing.test", "--dns", &dns_addr])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("verdict: federation with nothing.test does not work")
    );
    gb.shutdown().await;
    dns.stop().await;
}

/// The arguments parse as the `probe` subcommand will (clap derive), and `cli` maps the
/// outcome to the exit status: 0 works, 1 does not work, 2 bad arguments.
#[tokio::test]
async fn probe_cli_args_and_exit_status() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Probe(ProbeArgs),
    }
    let parse = |argv: &[&str]| {
        let Cmd::Probe(a) = <Cli as clap::Parser>::try_parse_from(argv).unwrap().cmd;
        a
    };

    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let mut zone = Zone::new();
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    let gb = b.start().await;
    let (d, ca) = (dns.addr().to_string(), pki.ca_path().display().to_string());
    let ok = parse(&[
        "fedgate",
        "probe",
        "b.test",
        "--dns",
        &d,
        "--ca",
        &ca,
        "--json",
        "--timeout-secs",
        "5",
    ]);
    assert_eq!(ok.ca.len(), 1);
    assert!(ok.json);
    assert_eq!(ok.timeout_secs, 5);
    let missing = parse(&["fedgate", "probe", "nothing.test", "--dns", &d]);
    let bad = parse(&["fedgate", "probe", "b.test", "--dns", "not-an-address"]);
    let codes = tokio::task::spawn_blocking(move || [ok, missing, bad].map(fedgate::probe::cli))
        .await
        .unwrap();
    assert_eq!(codes, [0, 1, 2]);
    gb.shutdown().await;
    dns.stop().await;
}

/// An `_xmpps-server` SRV target: TLS from the first byte with ALPN xmpp-server (XEP-0368).
#[tokio::test]
async fn probe_direct_tls_target() {
    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let mut zone = Zone::new();
    zone.srv("_xmpps-server._tcp.b.test", 0, 0, 5269, "xmpps.b.test")
        .a("xmpps.b.test", b.ip);
    let dns = dns(zone).await;
    let gb = b.start().await;
    let mut a = args("b.test", dns.addr());
    a.ca = vec![pki.ca_path()];
    let r = run(a).await.unwrap();
    let text = render_text(&r);
    assert!(r.works, "{text}");
    let t = &r.targets[0];
    assert!(t.direct_tls);
    let tls = t.tls.as_ref().unwrap();
    assert_eq!(tls.alpn.as_deref(), Some("xmpp-server"), "{text}");
    let s = t.stream.as_ref().unwrap();
    assert!(s.features_before_tls.is_empty() && s.dialback, "{text}");
    assert!(text.contains("direct TLS"), "{text}");
    assert!(
        r.verdict.contains("certificate valid, dialback offered"),
        "{text}"
    );
    gb.shutdown().await;
    dns.stop().await;
}
