//! Certificate revocation lists configured with `[tls] crls`: a peer whose certificate its CA
//! revoked is not authenticated by PKIX (the pair falls back to dialback), one the CRL does not
//! list is; own certificates (`fedgate certs check`) are not checked against the CRLs.

use std::path::PathBuf;

use fedgate::config::{Config, Env};
use fedgate::gateway::Gateway;
use fedgate::testdns::Zone;
use fedgate_certs::dev::serial_of;

use crate::support::*;

const IN_DIALBACK_OK: &str =
    "fedgate_auth_total{direction=\"in\",mechanism=\"dialback\",method=\"dialback\",result=\"ok\"}";
const IN_PKIX_OK: &str = "fedgate_auth_total{direction=\"in\",mechanism=\"sasl-external\",method=\"pkix\",result=\"ok\"}";

/// Writes a CRL of the test CA that revokes `serials` into the PKI directory.
fn write_crl(pki: &Pki, file: &str, serials: &[Vec<u8>]) -> PathBuf {
    let path = pki.dir.path().join(file);
    std::fs::write(&path, pki.ca.crl(serials).unwrap()).unwrap();
    path
}

fn crls_toml(path: &std::path::Path) -> String {
    format!("crls = [{:?}]\n", path.display().to_string())
}

/// b.test sends to a.test; returns a.test's inbound auth counters (dialback ok, pkix ok).
async fn b_to_a(crl_revokes_b: bool) -> (u64, u64) {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let mut b = GwSpec::new(&pki, "b.test");
    let b_serial = serial_of(&std::fs::read_to_string(&b.cert.0).unwrap()).unwrap();
    // The CRL always lists some other certificate of the same CA.
    let other = pki.leaf("other", &fedgate_certs::dev::LeafSpec::dns(&["other.test"]));
    let mut revoked = vec![serial_of(&std::fs::read_to_string(&other.0).unwrap()).unwrap()];
    if crl_revokes_b {
        revoked.push(b_serial);
    }
    let crl = write_crl(&pki, "ca.crl.pem", &revoked);
    a.extra_tls = crls_toml(&crl);
    let mut zone = Zone::new();
    srv_to(&mut zone, "a.test", a.ip);
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    a.dns = Some(dns.addr());
    b.dns = Some(dns.addr());
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(&mut cb, &mut ca, "bob@b.test", "alice@a.test", "hello").await;
    let m = http_get(&ga, "/metrics").await;
    let counts = (metric(&m, IN_DIALBACK_OK), metric(&m, IN_PKIX_OK));
    ga.shutdown().await;
    gb.shutdown().await;
    dns.stop().await;
    counts
}

#[tokio::test]
async fn crl_revoked_peer_falls_back_to_dialback() {
    assert_eq!(b_to_a(true).await, (1, 0));
}

#[tokio::test]
async fn crl_not_listing_the_peer_keeps_pkix() {
    assert_eq!(b_to_a(false).await, (0, 1));
}

#[tokio::test]
async fn crl_unusable_file_stops_the_start() {
    let pki = Pki::new();
    let mut a = GwSpec::new(&pki, "a.test");
    let bad = pki.dir.path().join("bad.crl.pem");
    // a certificate is not a CRL
    std::fs::copy(pki.ca_path(), &bad).unwrap();
    a.extra_tls = crls_toml(&bad);
    let cfg = Config::from_toml(
        &a.toml(),
        "test.toml",
        std::path::Path::new("."),
        &Env::new(),
    )
    .unwrap();
    assert_eq!(cfg.tls.crls, std::slice::from_ref(&bad));
    let e = format!("{:#}", Gateway::start(&cfg).await.err().unwrap());
    assert!(
        e.starts_with("test.toml: tls.crls: bad CRL in ") && e.contains(&bad.display().to_string()),
        "{e}"
    );
}

#[test]
fn crl_does_not_affect_certs_check() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("a.test", &fedgate_certs::dev::LeafSpec::dns(&["a.test"]));
    // Even a CRL that lists the own certificate: `certs check` looks at own certificates
    // against the anchors only; CRLs are for peers.
    let own = serial_of(&std::fs::read_to_string(&cert).unwrap()).unwrap();
    write_crl(&pki, "ca.crl.pem", &[own]);
    let cfg = pki.dir.path().join("fedgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[domains]]\nname = \"a.test\"\ncert = {:?}\nkey = {:?}\n\n\
             [tls]\nsystem_roots = false\ntrust_anchors = [\"ca.pem\"]\ncrls = [\"ca.crl.pem\"]\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["certs", "check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("a.test: ok ("),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}
