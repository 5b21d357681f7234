//! Test support: a test PKI, in-process gateways on distinct loopback addresses, components.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use fedgate::component_client::ComponentClient;
use fedgate::config::{Config, Env};
use fedgate::gateway::Gateway;
use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::LeafSpec;

pub const T: Duration = Duration::from_secs(15);

/// A fresh loopback address per gateway (127.1.0.10, 127.1.0.11, … 127.1.0.249, 127.1.1.10,
/// …): tests run in parallel in one process. Other fixed test addresses live in 127.0.x.y.
pub fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 240 * 200, "out of test addresses");
    Ipv4Addr::new(127, 1, (n / 240) as u8, (n % 240 + 10) as u8)
}

/// The lab PKI, panicking instead of returning errors (tests).
pub struct Pki(fedgate::labpki::LabPki);

impl std::ops::Deref for Pki {
    type Target = fedgate::labpki::LabPki;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pki {
    pub fn new() -> Self {
        Self(fedgate::labpki::LabPki::new("fedgate test CA").unwrap())
    }

    /// A leaf for `spec` written to files: (cert, key).
    pub fn leaf(&self, file: &str, spec: &LeafSpec) -> (PathBuf, PathBuf) {
        self.0.issue(file, spec).unwrap()
    }
}

/// How to build one gateway.
pub struct GwSpec {
    pub domain: String,
    pub ip: Ipv4Addr,
    pub dns: Option<SocketAddr>,
    pub cert: (PathBuf, PathBuf),
    pub trust: Vec<PathBuf>,
    pub dialback_secret: String,
    pub extra_s2s: String,
    pub static_targets: BTreeMap<String, String>,
    /// TOML appended at the end (e.g. a [policy] section).
    pub extra: String,
    /// Lines added to the [tls] table.
    pub extra_tls: String,
    /// Lines added to the [[domains]] entry (e.g. `internal = …`).
    pub domain_extra: String,
    /// No component secret (the domain is served by an internal server instead).
    pub no_component: bool,
    /// Lines added to the [metrics] section.
    pub metrics_extra: String,
    /// The lines of an [admin] section (none: no admin listener).
    pub admin: Option<String>,
}

impl GwSpec {
    pub fn new(pki: &Pki, domain: &str) -> Self {
        let cert = pki.leaf(domain, &LeafSpec::dns(&[domain]));
        Self {
            domain: domain.to_owned(),
            ip: next_ip(),
            dns: None,
            cert,
            trust: vec![pki.ca_path()],
            dialback_secret: format!("dialback-secret-of-{domain}"),
            extra_s2s: String::new(),
            static_targets: BTreeMap::new(),
            extra: String::new(),
            extra_tls: String::new(),
            domain_extra: String::new(),
            no_component: false,
            metrics_extra: String::new(),
            admin: None,
        }
    }

    pub fn component_secret(&self) -> String {
        format!("component-secret-{}", self.domain)
    }

    pub fn toml(&self) -> String {
        let q = |p: &PathBuf| format!("{:?}", p.display().to_string());
        let mut s = format!(
            "[[domains]]\nname = \"{d}\"\ncert = {c}\nkey = {k}\n{cs}{domain_extra}\n\
             [s2s]\nlisten = [\"{ip}:5269\"]\ndialback_secret = \"{sec}\"\n\
             connect_timeout_secs = 3\nnegotiation_timeout_secs = 10\nretry_backoff_min_secs = 0\n{extra}\n\
             [tls]\nsystem_roots = false\ntrust_anchors = [{trust}]\n{extra_tls}\n\
             [components]\nlisten = \"{ip}:5347\"\n\n[metrics]\nlisten = \"{ip}:9269\"\n{metrics_extra}",
            d = self.domain,
            c = q(&self.cert.0),
            k = q(&self.cert.1),
            cs = if self.no_component {
                String::new()
            } else {
                format!("component_secret = \"{}\"\n", self.component_secret())
            },
            domain_extra = self.domain_extra,
            ip = self.ip,
            sec = self.dialback_secret,
            extra = self.extra_s2s,
            extra_tls = self.extra_tls,
            metrics_extra = self.metrics_extra,
            trust = self.trust.iter().map(q).collect::<Vec<_>>().join(", "),
        );
        if let Some(dns) = self.dns {
            s.push_str(&format!("\n[dns]\nnameservers = [\"{dns}\"]\n"));
        }
        if let Some(admin) = &self.admin {
            s.push_str(&format!("\n[admin]\n{admin}\n"));
        }
        s.push_str(&self.extra);
        if !self.static_targets.is_empty() {
            s.push_str("\n[s2s.static_targets]\n");
            for (k, v) in &self.static_targets {
                s.push_str(&format!("{k:?} = {v:?}\n"));
            }
        }
        s
    }

    pub async fn start(&self) -> Gateway {
        self.try_start().await.unwrap()
    }

    /// The error (with its causes) the gateway refuses to start with; panics if it starts.
    pub async fn start_error(&self) -> String {
        match self.try_start().await {
            Ok(g) => {
                g.shutdown().await;
                panic!("the gateway started:\n{}", self.toml());
            }
            Err(e) => format!("{e:#}"),
        }
    }

    /// Starts the gateway, or the error it refuses to start with.
    pub async fn try_start(&self) -> anyhow::Result<Gateway> {
        let cfg = Config::from_toml(
            &self.toml(),
            "test.toml",
            std::path::Path::new("."),
            &Env::new(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.toml()));
        Gateway::start(&cfg).await
    }

    pub async fn component(&self, gw: &Gateway) -> ComponentClient {
        ComponentClient::connect(
            gw.component_addr.unwrap(),
            &self.domain,
            &self.component_secret(),
        )
        .await
        .unwrap()
    }
}

/// A test DNS server on its own loopback address with `zone`.
pub async fn dns(zone: Zone) -> TestDns {
    let ip = next_ip();
    TestDns::start(SocketAddr::new(ip.into(), 5353), zone)
        .await
        .unwrap()
}

/// SRV `_xmpp-server._tcp.<domain>` → `<ip>:5269`, with the target's A record.
pub fn srv_to(zone: &mut Zone, domain: &str, ip: Ipv4Addr) {
    let target = format!("xmpp.{domain}");
    zone.srv(&format!("_xmpp-server._tcp.{domain}"), 0, 5, 5269, &target)
        .a(&target, ip);
}

/// SRV `_sipfederationtls._tcp.<domain>` → `<target>:<port>`, with the target's A record.
pub fn sip_srv_to(zone: &mut Zone, domain: &str, target: &str, ip: Ipv4Addr, port: u16) {
    zone.srv(
        &format!("_sipfederationtls._tcp.{domain}"),
        0,
        5,
        port,
        target,
    )
    .a(target, ip);
}

/// GET a path from a gateway's metrics listener.
pub async fn http_get(gw: &Gateway, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The fedgate binary with `args`: (exit code, stdout + stderr). Run off the test's runtime
/// thread, which the gateways it talks to need.
pub async fn fedgate_cli(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    })
    .await
    .unwrap()
}

/// The value of a metric line that starts with `prefix` (0 if absent).
pub fn metric(text: &str, prefix: &str) -> u64 {
    // A whole selector (`name{a="x",b="y"}`) matches every series of that name carrying at
    // least those labels, so that a label added later does not blind a test; anything else
    // is a plain prefix of the series line.
    if let Some((name, want)) = prefix.strip_suffix('}').and_then(|s| s.split_once('{')) {
        let want = labels(want);
        return text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, have) = series.split_once('{').unwrap_or((series, "}"));
                let have = labels(have.strip_suffix('}')?);
                (n == name && want.iter().all(|w| have.contains(w)))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum::<f64>() as u64;
    }
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `a="x",b="y,z"` → [`a="x"`, `b="y,z"`] (commas inside quotes kept).
fn labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// a.test and b.test, each found through SRV in one test DNS server.
pub async fn srv_pair(pki: &Pki) -> (GwSpec, GwSpec, TestDns) {
    srv_pair_with(pki, &[]).await
}

/// Like [`srv_pair`], with SRV records for further names served by a.test (its aliases).
pub async fn srv_pair_with(pki: &Pki, a_names: &[&str]) -> (GwSpec, GwSpec, TestDns) {
    let mut a = GwSpec::new(pki, "a.test");
    let mut b = GwSpec::new(pki, "b.test");
    let mut zone = Zone::new();
    for name in std::iter::once(&"a.test").chain(a_names) {
        srv_to(&mut zone, name, a.ip);
    }
    srv_to(&mut zone, "b.test", b.ip);
    let dns = dns(zone).await;
    a.dns = Some(dns.addr());
    b.dns = Some(dns.addr());
    (a, b, dns)
}

/// A chat message from `from_jid` (sent by component `from`) reaches component `to` unchanged.
pub async fn assert_delivered(
    from: &mut ComponentClient,
    to: &mut ComponentClient,
    from_jid: &str,
    to_jid: &str,
    text: &str,
) {
    use fedgate::component_client::{body, message};
    from.send(&message(from_jid, to_jid, "d", text))
        .await
        .unwrap();
    let m = to.recv(T).await.unwrap();
    assert_eq!(body(&m).as_deref(), Some(text), "{m:?}");
    assert_eq!(m.attr("from"), Some(from_jid));
}
