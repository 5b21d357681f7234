//! Own certificates: `fedgate certs check` and `certs generate` through the binary, hot reload
//! with a good and a bad replacement while a stream is open, and certificate choice by SNI.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedgate::config::{Config, Env};
use fedgate::gateway::Gateway;
use fedgate_certs::check::ymd;
use fedgate_certs::dev::{LeafSpec, self_signed};
use fedgate_certs::sha256_fingerprint;

use crate::support::*;

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn fedgate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_pair(dir: &Path, file: &str, pem: &(String, String)) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, &pem.0).unwrap();
    std::fs::write(&k, &pem.1).unwrap();
    (c, k)
}

fn domain_toml(name: &str, files: &(PathBuf, PathBuf), more: &str) -> String {
    format!(
        "[[domains]]\nname = \"{name}\"\ncert = {:?}\nkey = {:?}\n{more}\n",
        files.0.display().to_string(),
        files.1.display().to_string()
    )
}

fn tls_toml(anchor: &Path) -> String {
    format!(
        "[tls]\nsystem_roots = false\ntrust_anchors = [{:?}]\n",
        anchor.display().to_string()
    )
}

fn spec(names: &[&str], not_after: i64) -> LeafSpec {
    LeafSpec {
        not_after: Some(not_after),
        ..LeafSpec::dns(names)
    }
}

#[test]
fn certs_check_good_setup() {
    let pki = Pki::new();
    let na = now() + 90 * DAY + 3600;
    let a = write_pair(
        pki.dir.path(),
        "a",
        &pki.ca.issue(&spec(&["a.test", "conf.a.test"], na)).unwrap(),
    );
    let cfg = pki.dir.path().join("good.toml");
    std::fs::write(
        &cfg,
        domain_toml("a.test", &a, "aliases = [\"conf.a.test\"]") + &tls_toml(&pki.ca_path()),
    )
    .unwrap();
    let (code, out, err) = fedgate(&["certs", "check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(
        out,
        format!(
            "a.test: ok (CN=a.test, issuer CN=fedgate test CA, expires {}, 90 days, SANs DNS:a.test, DNS:conf.a.test)\n",
            ymd(na)
        ),
        "{err}"
    );
    assert_eq!(code, 0);

    // a bad config is exit 2 with file: key: problem
    std::fs::write(&cfg, "[[domains]]\nname = \"a.test\"\n").unwrap();
    let (code, out, err) = fedgate(&["certs", "check", "--config", cfg.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err.trim_end(),
        format!(
            "fedgate: {}: domains[0].cert: a.test needs cert and key (or self_signed = true for development)",
            cfg.display()
        )
    );
}

#[test]
fn certs_check_broken_setups() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let t = now();
    let good = |name: &str| pki.ca.issue(&spec(&[name], t + 90 * DAY)).unwrap();
    let a = good("a.test");
    let b = good("b.test");
    let mismatch = write_pair(dir, "mismatch", &(b.0.clone(), a.1.clone()));
    let alias = write_pair(dir, "alias", &good("c.test"));
    let expired_at = t - 2 * DAY - 3600;
    let expired = write_pair(
        dir,
        "expired",
        &pki.ca
            .issue(&LeafSpec {
                not_before: Some(t - 30 * DAY),
                ..spec(&["d.test"], expired_at)
            })
            .unwrap(),
    );
    let selfie = write_pair(dir, "selfie", &self_signed(&["e.test"]).unwrap());
    let missing = (dir.join("missing.crt"), selfie.1.clone());
    let soon_at = t + 3 * DAY + 3600;
    let soon = write_pair(
        dir,
        "soon",
        &pki.ca.issue(&spec(&["g.test"], soon_at)).unwrap(),
    );
    let text = [
        domain_toml("b.test", &mismatch, ""),
        domain_toml("c.test", &alias, "aliases = [\"muc.c.test\"]"),
        domain_toml("d.test", &expired, ""),
        domain_toml("e.test", &selfie, ""),
        domain_toml("f.test", &missing, ""),
        domain_toml("g.test", &soon, ""),
        tls_toml(&pki.ca_path()),
    ]
    .concat();
    let cfg = dir.join("broken.toml");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = fedgate(&["certs", "check", "--config", cfg.to_str().unwrap()]);
    let d = dir.display();
    let want = [
        format!(
            "b.test: cert {d}/mismatch.crt: key does not match the certificate ({d}/mismatch.key)"
        ),
        "c.test: SANs DNS:c.test do not cover alias muc.c.test".to_owned(),
        format!("d.test: expired on {} (2 days ago)", ymd(expired_at)),
        "e.test: chain: self-signed certificate, not issued by a trusted CA".to_owned(),
        format!(
            "f.test: cert {d}/missing.crt: cannot read: No such file or directory (os error 2)"
        ),
        format!(
            "g.test: expires in 3 days ({}), fewer than tls.min_days = 7",
            ymd(soon_at)
        ),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");
    assert_eq!(code, 1);

    // The self-signed one is fine when the config says it is on purpose.
    std::fs::write(
        &cfg,
        domain_toml("e.test", &selfie, "self_signed = true") + &tls_toml(&pki.ca_path()),
    )
    .unwrap();
    let (code, out, _) = fedgate(&["certs", "check", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.starts_with("e.test: ok (CN=e.test, issuer CN=e.test, expires "),
        "{out}"
    );
    assert_eq!(code, 0);
}

#[test]
fn certs_generate_then_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = fedgate(&[
        "certs",
        "generate",
        "--domain",
        "x.test",
        "--domain",
        "conf.x.test",
        "--out",
        d,
        "--ca",
    ]);
    assert_eq!(code, 0, "{err}");
    let expires = ymd(now() + 90 * DAY);
    assert_eq!(
        out,
        format!(
            "wrote {d}/ca.crt and {d}/ca.key (a new test CA; use ca.crt as tls.trust_anchors)\n\
             wrote {d}/x.test.crt and {d}/x.test.key (signed by the test CA, DNS names x.test, conf.x.test, expires {expires})\n"
        )
    );
    // a second run reuses the CA
    let (code, out, _) = fedgate(&[
        "certs", "generate", "--domain", "y.test", "--out", d, "--ca", "--days", "30",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("using the test CA {d}/ca.crt\n")),
        "{out}"
    );
    let (code, _, _) = fedgate(&["certs", "generate", "--domain", "z.test", "--out", d]);
    assert_eq!(code, 0);
    let key_mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(dir.path().join("x.test.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(key_mode, 0o600);

    let pair = |n: &str| {
        (
            dir.path().join(format!("{n}.crt")),
            dir.path().join(format!("{n}.key")),
        )
    };
    let cfg = dir.path().join("fedgate.toml");
    std::fs::write(
        &cfg,
        [
            domain_toml("x.test", &pair("x.test"), "aliases = [\"conf.x.test\"]"),
            domain_toml("y.test", &pair("y.test"), ""),
            domain_toml("z.test", &pair("z.test"), "self_signed = true"),
            tls_toml(&dir.path().join("ca.crt")),
        ]
        .concat(),
    )
    .unwrap();
    let (code, out, err) = fedgate(&["certs", "check", "--config", cfg.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}{err}");
    assert!(
        lines[0].starts_with("x.test: ok (CN=x.test, issuer CN=fedgate test CA, expires "),
        "{out}"
    );
    assert!(
        lines[0].ends_with("SANs DNS:x.test, DNS:conf.x.test)"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("y.test: ok (CN=y.test, issuer CN=fedgate test CA, expires "),
        "{out}"
    );
    assert!(
        lines[1].contains(", 29 days,") || lines[1].contains(", 30 days,"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("z.test: ok (CN=z.test, issuer CN=z.test, "),
        "{out}"
    );
    assert_eq!(code, 0);
}

/// The SHA-256 fingerprint of the leaf a direct-TLS handshake with `sni` gets from `ip:5269`.
async fn served_leaf(ip: Ipv4Addr, sni: &str) -> String {
    let cfg = fedgate_certs::client_config(None, vec![b"xmpp-server".to_vec()]);
    let tcp = tokio::net::TcpStream::connect((ip, 5269)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    sha256_fingerprint(leaf.as_ref())
}

fn file_fingerprint(path: &Path) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).unwrap();
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    sha256_fingerprint(leaf.as_ref())
}

/// Replaces a file by rename, as deployment tools do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn start_with_reload(spec: &GwSpec) -> Gateway {
    let env: Env = [("FEDGATE__TLS__RELOAD_CHECK_SECS".to_owned(), "1".to_owned())].into();
    let cfg = Config::from_toml(&spec.toml(), "test.toml", Path::new("."), &env).unwrap();
    Gateway::start(&cfg).await.unwrap()
}

async fn wait_metric(gw: &Gateway, prefix: &str, at_least: u64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = http_get(gw, "/metrics").await;
        if metric(&m, prefix) >= at_least {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for {prefix} >= {at_least}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Successful outbound domain-pair authentications (whatever the method labels say).
fn out_auth_ok(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("fedgate_auth_total{direction=\"out\"") && l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
const B_OK: &str = "fedgate_cert_reloads_total{domain=\"b.test\",result=\"ok\"}";
const B_REFUSED: &str = "fedgate_cert_reloads_total{domain=\"b.test\",result=\"refused\"}";

/// b.test's certificate files are replaced while a stream a.test → b.test is open: the good
/// replacement is used for new handshakes and the open stream carries on; bad replacements are
/// refused, counted, and the previous certificate stays in use.
#[tokio::test]
async fn reload_good_and_bad_replacements_while_a_stream_is_open() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b = GwSpec::new(&pki, "b.test");
    a.static_targets
        .insert("b.test".into(), format!("tcp://{}:5269", b.ip));
    b.static_targets
        .insert("a.test".into(), format!("tcp://{}:5269", a.ip));
    let (ga, gb) = (start_with_reload(&a).await, start_with_reload(&b).await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(&mut ca, &mut cb, "alice@a.test", "bob@b.test", "before").await;
    let first = file_fingerprint(&b.cert.0);
    assert_eq!(served_leaf(b.ip, "b.test").await, first);
    let m = http_get(&gb, "/metrics").await;
    let expiry = metric(&m, "fedgate_cert_expiry_seconds{domain=\"b.test\"}");
    assert!((89 * 86_400..=90 * 86_400).contains(&expiry), "{m}");

    // A good replacement (same CA): used by new handshakes.
    let (c2, k2) = pki.ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
    replace_file(&b.cert.1, &k2);
    replace_file(&b.cert.0, &c2);
    let second = file_fingerprint(&b.cert.0);
    assert_ne!(first, second);
    wait_metric(&gb, B_OK, 1).await;
    assert_eq!(served_leaf(b.ip, "b.test").await, second);
    // The open stream carries on (no new authentication on a.test's side).
    assert_delivered(
        &mut ca,
        &mut cb,
        "alice@a.test",
        "bob@b.test",
        "after good reload",
    )
    .await;
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(out_auth_ok(&m), 1, "{m}");
    // A new stream from b.test presents the new certificate as client certificate, and a.test
    // accepts it with SASL EXTERNAL.
    assert_delivered(&mut cb, &mut ca, "bob@b.test", "alice@a.test", "new stream").await;
    assert_eq!(out_auth_ok(&http_get(&gb, "/metrics").await), 1);

    // Bad: a new certificate without its key (key mismatch).
    let (c3, _) = pki.ca.issue(&LeafSpec::dns(&["b.test"])).unwrap();
    replace_file(&b.cert.0, &c3);
    let m = wait_metric(&gb, B_REFUSED, 1).await;
    assert_eq!(metric(&m, B_OK), 1, "{m}");
    assert_eq!(served_leaf(b.ip, "b.test").await, second);
    // SIGHUP path: the same check, the same refusal, with the exact problem.
    let r = gb.reload_certs("test");
    let problems = match &r[..] {
        [(d, fedgate::cert_reload::ReloadOutcome::Refused(p))] if d == "b.test" => p.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems,
        [format!(
            "b.test: cert {}: key does not match the certificate ({})",
            b.cert.0.display(),
            b.cert.1.display()
        )]
    );

    // Bad: a matching pair that does not name b.test.
    let (c4, k4) = pki.ca.issue(&LeafSpec::dns(&["other.test"])).unwrap();
    replace_file(&b.cert.1, &k4);
    replace_file(&b.cert.0, &c4);
    let m = wait_metric(&gb, B_REFUSED, 3).await;
    assert_eq!(metric(&m, B_OK), 1, "{m}");
    assert_eq!(served_leaf(b.ip, "b.test").await, second);
    match &gb.reload_certs("test")[..] {
        [(_, fedgate::cert_reload::ReloadOutcome::Refused(p))] => {
            assert_eq!(p, &["b.test: SANs DNS:other.test do not cover the domain"])
        }
        other => panic!("{other:?}"),
    }
    // Still flowing both ways over the open streams.
    assert_delivered(
        &mut ca,
        &mut cb,
        "alice@a.test",
        "bob@b.test",
        "after refusals",
    )
    .await;
    ga.shutdown().await;
    gb.shutdown().await;
}

/// One gateway hosting two domains with different certificates: SNI picks the certificate
/// (unknown SNI gets the first domain's); both have expiry gauges.
#[tokio::test]
async fn sni_picks_the_certificate_of_each_hosted_domain() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let d2 = pki.leaf("d2.test", &LeafSpec::dns(&["d2.test"]));
    a.extra = domain_toml("d2.test", &d2, "");
    let ga = a.start().await;
    let (fa, f2) = (file_fingerprint(&a.cert.0), file_fingerprint(&d2.0));
    assert_ne!(fa, f2);
    assert_eq!(served_leaf(a.ip, "a.test").await, fa);
    assert_eq!(served_leaf(a.ip, "d2.test").await, f2);
    assert_eq!(served_leaf(a.ip, "D2.TEST").await, f2);
    assert_eq!(served_leaf(a.ip, "unknown.test").await, fa);
    let m = http_get(&ga, "/metrics").await;
    for d in ["a.test", "d2.test"] {
        let v = metric(
            &m,
            &format!("fedgate_cert_expiry_seconds{{domain=\"{d}\"}}"),
        );
        assert!(v > 89 * 86_400, "{d}: {m}");
    }
    ga.shutdown().await;
}

/// STARTTLS from a peer that sends no SNI: the stream header's `to` chooses the certificate.
#[tokio::test]
async fn stream_to_picks_the_certificate_when_there_is_no_sni() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let d2 = pki.leaf("d2.test", &LeafSpec::dns(&["d2.test"]));
    a.extra = domain_toml("d2.test", &d2, "");
    let ga = a.start().await;
    for (to, expect) in [
        ("d2.test", file_fingerprint(&d2.0)),
        ("a.test", file_fingerprint(&a.cert.0)),
    ] {
        let mut tcp = tokio::net::TcpStream::connect((a.ip, 5269)).await.unwrap();
        tcp.write_all(
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                 xmlns:stream='http://etherx.jabber.org/streams' to='{to}' from='x.test' version='1.0'>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("</stream:features>") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .unwrap();
        seen.clear();
        while !seen.contains("<proceed") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // An IP address as server name: rustls sends no SNI.
        let name = rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::V4(a.ip).into());
        let tls = tokio_rustls::TlsConnector::from(fedgate_certs::client_config(None, vec![]))
            .connect(name, tcp)
            .await
            .unwrap();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(sha256_fingerprint(leaf.as_ref()), expect, "to={to}");
    }
    ga.shutdown().await;
}
