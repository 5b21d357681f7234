//! `fedgate bench sessions`: N authenticated s2s sessions to a target, each from its own
//! originating domain `sNNNNN.bench.test` (one wildcard certificate `*.bench.test`), kept idle.
//!
//! Each session: TCP connect, stream header, STARTTLS, TLS with the client certificate,
//! stream restart, SASL EXTERNAL (authzid = the session's domain), stream restart, features:
//! authenticated. The initiating machine is `fedgate_s2s::outbound::Outbound` (certificate
//! only, no dialback), driven over `fedgate_s2s::driver::conn::Conn`. The bench does not check
//! the target's certificate (it measures the target, it does not federate with it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fedgate_certs::Identity;
use fedgate_certs::dev::LeafSpec;
use fedgate_s2s::dialback::DialbackSecret;
use fedgate_s2s::driver::conn::Conn;
use fedgate_s2s::driver::io::Io;
use fedgate_s2s::inbound::AuthMethods;
use fedgate_s2s::outbound::{Action, Mode, Outbound, OutboundSettings};
use fedgate_s2s::xml::{Limits, StreamEvent};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{quantile, rss_kib, thousands, toml_path};
use crate::labpki::LabPki;

pub struct SessionOpts {
    pub target: Option<String>,
    pub domain: Option<String>,
    pub pid: Option<u32>,
    pub counts: Vec<usize>,
    pub ca_out: Option<PathBuf>,
    pub concurrency: usize,
}

const CHILD_IP: &str = "127.0.3.10";
const CHILD_DOMAIN: &str = "target.bench.test";
const KEEPALIVE: Duration = Duration::from_secs(60);
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `fedgate run` child; killed (by PID) and reaped when dropped.
struct ChildTarget {
    child: Child,
    log: PathBuf,
}

impl Drop for ChildTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_child(pki: &LabPki) -> anyhow::Result<ChildTarget> {
    let (cert, key) = pki.issue(CHILD_DOMAIN, &LeafSpec::dns(&[CHILD_DOMAIN]))?;
    let text = format!(
        "[[domains]]\nname = \"{CHILD_DOMAIN}\"\ncert = {c}\nkey = {k}\n\n\
         [s2s]\nlisten = [\"{CHILD_IP}:5269\"]\ndialback_secret = \"bench-dialback-secret-target\"\n\
         auth_methods = [\"certificate\"]\nidle_timeout_secs = 3600\nnegotiation_timeout_secs = 30\n\n\
         [tls]\nsystem_roots = false\ntrust_anchors = [{ca}]\n\n\
         [metrics]\nlisten = \"{CHILD_IP}:9269\"\n\n[log]\nlevel = \"warn\"\n",
        c = toml_path(&cert),
        k = toml_path(&key),
        ca = toml_path(&pki.ca_path()),
    );
    let cfg = pki.dir.path().join("target.toml");
    std::fs::write(&cfg, text)?;
    let log = pki.dir.path().join("target.log");
    let exe = std::env::current_exe().context("own executable")?;
    let child = Command::new(&exe)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {} run", exe.display()))?;
    Ok(ChildTarget { child, log })
}

/// The bench CA (PEM) and the client certificate `*.bench.test` with its key.
struct Creds {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Files next to `--ca-out`: `<ca-out>.client.crt` and `<ca-out>.client.key`.
fn sibling(ca_out: &Path, ext: &str) -> PathBuf {
    let mut s = ca_out.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// A fresh CA and client certificate, or, when `--ca-out` and its client files exist (from
/// an earlier run), those: an external target configured to trust the CA keeps working.
fn client_creds(pki: &LabPki, ca_out: Option<&Path>) -> anyhow::Result<(Creds, bool)> {
    if let Some(p) = ca_out {
        let (c, k) = (sibling(p, ".client.crt"), sibling(p, ".client.key"));
        if p.exists() && c.exists() && k.exists() {
            let read = |f: &Path| {
                std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))
            };
            let creds = Creds {
                ca_pem: read(p)?,
                cert_pem: read(&c)?,
                key_pem: read(&k)?,
            };
            return Ok((creds, true));
        }
    }
    let (cert_pem, key_pem) = pki.ca.issue(&LeafSpec::dns(&["*.bench.test"]))?;
    let creds = Creds {
        ca_pem: pki.ca.cert_pem(),
        cert_pem,
        key_pem,
    };
    if let Some(p) = ca_out {
        let write = |f: &Path, t: &str| {
            std::fs::write(f, t).with_context(|| format!("write {}", f.display()))
        };
        write(p, &creds.ca_pem)?;
        write(&sibling(p, ".client.crt"), &creds.cert_pem)?;
        write(&sibling(p, ".client.key"), &creds.key_pem)?;
    }
    Ok((creds, false))
}

struct Setup {
    addr: SocketAddr,
    domain: String,
    tls: tokio_rustls::TlsConnector,
}

/// Negotiate one session up to authenticated.
async fn open(setup: &Setup, n: usize) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(setup.addr).await?;
    tcp.set_nodelay(true)?;
    let mut conn = Conn::new(Io::Plain(tcp), Limits::default());
    let local = format!("s{n:05}.bench.test");
    let mut m = Outbound::new(OutboundSettings {
        local,
        remote: setup.domain.clone(),
        tls_required: true,
        auth: AuthMethods {
            certificate: true,
            dialback: false,
        },
        mode: Mode::Auth {
            secret: DialbackSecret::new("bench-dialback-secret-unused"),
        },
    });
    m.start(None);
    loop {
        let actions = m.take_actions();
        if actions.is_empty() {
            conn.flush().await?;
            let ev = conn
                .next_event()
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.failure()))?;
            m.handle(ev);
            continue;
        }
        for a in actions {
            match a {
                Action::Send(b) => conn.queue(&b),
                Action::StartTls => {
                    conn.connect_tls(&setup.tls, &setup.domain)
                        .await
                        .map_err(|f| anyhow::anyhow!("{f}"))?;
                    // The bench measures the target; it does not judge its certificate.
                    m.tls_established(Ok(fedgate_s2s::inbound::CertOk {
                        method: fedgate_s2s::inbound::AuthMethod::Pkix,
                        not_after: None,
                    }));
                }
                Action::ResetParser => conn.parser.reset(),
                Action::Established { .. } => {
                    conn.flush().await?;
                    conn.shrink();
                    return Ok(conn);
                }
                Action::Fail(f) => bail!("{f}"),
                Action::PeerClosed => bail!("the target closed the stream"),
                Action::Verified(_) | Action::Unexpected(_) => {}
            }
        }
    }
}

/// Keep a session idle: a whitespace keepalive every minute; notice when the target closes it.
async fn keep(mut conn: Conn, live: Arc<AtomicUsize>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.reset();
    loop {
        tokio::select! {
            ev = conn.next_event() => match ev {
                Ok(StreamEvent::Close) | Err(_) => break,
                Ok(_) => {}
            },
            _ = tick.tick() => {
                conn.queue(b" ");
                if conn.flush().await.is_err() {
                    break;
                }
                conn.shrink();
            }
            _ = stop.changed() => {
                live.fetch_sub(1, Ordering::Relaxed);
                conn.close_with(b"</stream:stream>").await;
                return;
            }
        }
    }
    live.fetch_sub(1, Ordering::Relaxed);
}

async fn wait_listening(addr: SocketAddr, child: &mut ChildTarget) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = child.child.try_wait()? {
            let log = std::fs::read_to_string(&child.log).unwrap_or_default();
            bail!("the target exited ({st}):\n{log}");
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the target does not listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(o: SessionOpts) -> anyhow::Result<()> {
    let pki = LabPki::new("fedgate bench CA")?;
    let (creds, reused) = client_creds(&pki, o.ca_out.as_deref())?;
    // The child target trusts the CA the client certificate comes from.
    std::fs::write(pki.ca_path(), &creds.ca_pem)?;
    let id = Identity::from_pem("bench.test", &creds.cert_pem, &creds.key_pem)?;
    let tls = tokio_rustls::TlsConnector::from(fedgate_certs::client_config(
        Some(Arc::new(id)),
        Vec::new(),
    ));

    let mut child = None;
    let (addr, domain, pid) = match &o.target {
        Some(t) => {
            let addr = tokio::net::lookup_host(t.as_str())
                .await
                .with_context(|| format!("resolve {t}"))?
                .next()
                .with_context(|| format!("{t}: no address"))?;
            let domain = o
                .domain
                .clone()
                .context("--domain (the target's hosted domain) is required with --target")?;
            (addr, domain, o.pid)
        }
        None => {
            let mut c = start_child(&pki)?;
            let addr: SocketAddr = format!("{CHILD_IP}:5269").parse()?;
            wait_listening(addr, &mut c).await?;
            let pid = c.child.id();
            child = Some(c);
            (addr, CHILD_DOMAIN.to_owned(), Some(pid))
        }
    };
    println!("fedgate bench sessions");
    match &child {
        Some(c) => println!(
            "  target: `fedgate run` child (pid {}) on {addr}, domain {domain}, certificate auth only, idle timeout 3600 s, log {}",
            c.child.id(),
            c.log.display()
        ),
        None => println!(
            "  target: {addr}, domain {domain}{}",
            match pid {
                Some(p) => format!(", pid {p}"),
                None => " (no --pid: no memory figures)".into(),
            }
        ),
    }
    println!(
        "  sessions: STARTTLS + SASL EXTERNAL from sNNNNN.bench.test (certificate *.bench.test, bench CA{}), {} setups in flight",
        match (&o.ca_out, reused) {
            (Some(p), true) => format!(" reused from {}", p.display()),
            (Some(p), false) => format!(" written to {}", p.display()),
            (None, _) => String::new(),
        },
        o.concurrency
    );
    // Let the target settle (and its first-connection allocations happen) before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = pid.and_then(rss_kib);
    if let Some(b) = baseline {
        println!("  target RSS before: {} KiB", thousands(b));
    }

    let setup = Arc::new(Setup { addr, domain, tls });
    let live = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut counts = o.counts.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut opened = 0usize;
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    println!();
    println!(
        "  {:>8} {:>12} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "sessions", "setup/s", "p50 ms", "p99 ms", "failed", "target RSS", "KiB/session"
    );
    for &target_count in &counts {
        if target_count <= opened {
            continue;
        }
        let first = opened;
        let next = Arc::new(AtomicUsize::new(first));
        let failed = Arc::new(AtomicU64::new(0));
        let times: Arc<Mutex<Vec<u32>>> = Arc::default();
        let t0 = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..o.concurrency.min(target_count - first) {
            let (setup, next, failed, times, live, stop, failures) = (
                setup.clone(),
                next.clone(),
                failed.clone(),
                times.clone(),
                live.clone(),
                stop_rx.clone(),
                failures.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= target_count {
                        break;
                    }
                    let s = Instant::now();
                    match tokio::time::timeout(SETUP_TIMEOUT, open(&setup, n)).await {
                        Ok(Ok(conn)) => {
                            mine.push(s.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            live.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(keep(conn, live.clone(), stop.clone()));
                        }
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *failures
                                .lock()
                                .expect("failures")
                                .entry(e.to_string())
                                .or_default() += 1;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *failures
                                .lock()
                                .expect("failures")
                                .entry("setup timed out".into())
                                .or_default() += 1;
                        }
                    }
                }
                times.lock().expect("times").append(&mut mine);
            }));
        }
        for w in workers {
            w.await?;
        }
        let wall = t0.elapsed();
        opened = target_count;
        let ok = live.load(Ordering::Relaxed);
        let mut t = std::mem::take(&mut *times.lock().expect("times"));
        t.sort_unstable();
        let rate = t.len() as f64 / wall.as_secs_f64();
        // Let the target go idle before reading its memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss, per) = match (pid.and_then(rss_kib), baseline) {
            (Some(r), Some(b)) if ok > 0 => (
                format!("{} KiB", thousands(r)),
                format!("{:.1}", r.saturating_sub(b) as f64 / ok as f64),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "  {:>8} {:>12} {:>10.2} {:>10.2} {:>10} {:>12} {:>14}",
            thousands(ok as u64),
            thousands(rate as u64),
            f64::from(quantile(&t, 0.5)) / 1000.0,
            f64::from(quantile(&t, 0.99)) / 1000.0,
            failed.load(Ordering::Relaxed),
            rss,
            per
        );
        println!(
            "           ({} new sessions in {:.2} s; live now {})",
            thousands(t.len() as u64),
            wall.as_secs_f64(),
            thousands(ok as u64)
        );
    }
    let f = failures.lock().expect("failures").clone();
    if !f.is_empty() {
        println!();
        println!("  failures:");
        for (why, n) in f.iter().take(10) {
            println!("    {n} × {why}");
        }
    }
    if let Some(r) = rss_kib(std::process::id()) {
        println!(
            "  bench process RSS (client side of all sessions): {} KiB",
            thousands(r)
        );
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(child);
    Ok(())
}
