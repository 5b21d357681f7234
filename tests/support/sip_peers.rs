//! Real-peer SIP interop harness: launchers for sipp (Debian's 3.6.1, TCP only), socat
//! TLS wrappers in front of it (so fedgate still speaks mutual TLS) and Kamailio 5.6 as the
//! TLS edge proxy of `lync.test`. Scenarios live in `tests/interop/sipp/` (see the README
//! there for each scenario's keys); the Kamailio config is `tests/interop/kamailio.cfg.in`.
//!
//! Include from an integration test with `#[path = "../support/sip_peers.rs"] mod sip_peers;`,
//! beside `peers.rs` as `mod peers` (its binary, temp-dir and template helpers are shared).
//! Dependencies: std, anyhow, tempfile. The API is blocking (std only): from async tests
//! call [`Sipp::wait`] through `tokio::task::spawn_blocking` or `block_in_place`.
//!
//! Peers are never skipped: a missing binary panics with the install hint
//! (`scripts/install-test-deps.sh`). Every process is started as a child in its own process
//! group and stopped by PID (the whole group, so socat's and Kamailio's forked children go
//! too) in `Drop`. Everything binds to 127.0.0.0/8 only.
//!
//! Set `FEDGATE_KEEP_PEER_DIRS=1` to keep the per-instance temp dirs (configs, logs).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use crate::peers::require_binary;
use crate::peers::{INSTALL_HINT, keep_dirs, new_temp_dir, read_lossy, render};

const KAMAILIO_TEMPLATE: &str = include_str!("../interop/kamailio.cfg.in");
const KAMAILIO_TLS_TEMPLATE: &str = include_str!("../interop/tls.cfg.in");

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Global sipp `-timeout` (seconds) added unless the caller passes its own `-timeout`.
pub const SIPP_DEFAULT_TIMEOUT_S: u64 = 120;
const LOG_TAIL_LINES: usize = 60;

// ------------------------------------------------------------------------------------------
// Environment helpers
// ------------------------------------------------------------------------------------------

/// Directory holding the sipp scenarios (`tests/interop/sipp`).
pub fn sipp_scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sipp")
}

/// Kamailio's module directory (the one holding `tls.so`). Panics with the install hint.
pub fn kamailio_module_dir() -> PathBuf {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/aarch64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
        "/usr/lib64/kamailio/modules",
        "/usr/local/lib64/kamailio/modules",
    ] {
        if Path::new(dir).join("tls.so").is_file() {
            return PathBuf::from(dir);
        }
    }
    panic!("kamailio-tls-modules (tls.so) not installed: {INSTALL_HINT}");
}

fn check_loopback(addr: IpAddr, what: &str) -> Result<()> {
    if !addr.is_loopback() {
        bail!("{what} must be in 127.0.0.0/8 (got {addr})");
    }
    Ok(())
}

fn finish_dir(dir: &mut Option<tempfile::TempDir>) {
    if keep_dirs()
        && let Some(d) = dir.take()
    {
        eprintln!("keeping {}", d.keep().display());
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on `ip` (bind to port 0, read it, release it).
pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// True if some socket is in LISTEN state on exactly `addr` (IPv4), read from
/// /proc/net/tcp, so probing does not open a connection the peer would log as an error.
fn is_listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    read_lossy(Path::new("/proc/net/tcp"))
        .lines()
        .skip(1)
        .any(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1);
            let state = f.nth(1);
            local == Some(want.as_str()) && state == Some("0A")
        })
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops a child started with `process_group(0)`: TERM to the group, wait up to `grace`,
/// KILL to the group, reap.
fn stop_group(child: &mut Child, grace: Duration) {
    let pgid = format!("-{}", child.id());
    signal(&pgid, "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Forked children (socat per connection, Kamailio workers) may outlive the leader.
    signal(&pgid, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `addr` is listening or the child exits / `START_TIMEOUT` passes.
fn wait_listening(child: &mut Child, addr: SocketAddr, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{what} exited during startup ({status}):\n{}",
                tail(&read_lossy(log), LOG_TAIL_LINES)
            );
        }
        if is_listening(addr) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} not listening on {addr} after {START_TIMEOUT:?}:\n{}",
                tail(&read_lossy(log), LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

// ------------------------------------------------------------------------------------------
// sipp
// ------------------------------------------------------------------------------------------

/// How a sipp run ended.
#[derive(Debug)]
pub struct SippOutcome {
    pub status: ExitStatus,
    /// sipp's exit code: 0 = every call passed, 1 = at least one failed, 97/99/255 = abort.
    pub code: Option<i32>,
    /// Every SIP message sent and received (`-trace_msg`).
    pub messages: String,
    /// `<log>` action output (`-trace_logs`).
    pub logs: String,
    /// Unexpected messages and failed checks (`-trace_err`).
    pub errors: String,
}

impl SippOutcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// A sipp process (TCP, `-t t1`) running a scenario from `tests/interop/sipp/`.
pub struct Sipp {
    child: Child,
    pid: u32,
    dir: Option<tempfile::TempDir>,
    what: String,
    /// Local address sipp uses (`-i`, `-p`).
    pub local: SocketAddr,
}

impl Sipp {
    /// Starts a client: `sipp REMOTE -sf SCENARIO -i LOCAL_IP -p <free port> -t t1 ...`.
    /// `args` are extra sipp arguments, e.g. `["-s", "alice", "-key", "to_user", "bob",
    /// "-key", "body", "hi"]`. Adds `-m 1` and `-timeout 120s -timeout_error` unless `args`
    /// has its own `-m` / `-timeout`, and `-key contact_hostport "<local>;transport=tcp"`
    /// (the Contact of uac_invite_im/uac_subscribe) unless `args` sets it: a TLS-only peer
    /// (fedgate) cannot reach that TCP Contact, so put a [`TlsServerWrapper`] in front of
    /// `self.local` and pass `"<wrapper addr>;transport=tls"`, or go through Kamailio.
    pub fn uac(
        scenario: &str,
        remote: SocketAddr,
        local_ip: Ipv4Addr,
        args: &[&str],
    ) -> Result<Self> {
        check_loopback(remote.ip(), "sipp remote")?;
        check_loopback(IpAddr::V4(local_ip), "sipp local ip")?;
        let local = SocketAddr::from((local_ip, free_port(local_ip)?));
        Self::spawn(scenario, Some(remote), local, args)
    }

    /// Like [`Sipp::uac`] with an explicit local address (`-i`, `-p`), e.g. to put a
    /// [`TlsServerWrapper`] in front of it before the UAC starts.
    pub fn uac_at(
        scenario: &str,
        remote: SocketAddr,
        local: SocketAddr,
        args: &[&str],
    ) -> Result<Self> {
        check_loopback(remote.ip(), "sipp remote")?;
        check_loopback(local.ip(), "sipp local address")?;
        Self::spawn(scenario, Some(remote), local, args)
    }

    /// Starts a server listening on `listen` (TCP) and waits until it listens. Adds `-m 1`
    /// and `-timeout 120s -timeout_error` unless `args` has its own `-m` / `-timeout`.
    pub fn uas(scenario: &str, listen: SocketAddr, args: &[&str]) -> Result<Self> {
        check_loopback(listen.ip(), "sipp listen address")?;
        let mut this = Self::spawn(scenario, None, listen, args)?;
        let log = this.path("stderr.log");
        let what = this.what.clone();
        wait_listening(&mut this.child, listen, &what, &log)?;
        Ok(this)
    }

    fn spawn(
        scenario: &str,
        remote: Option<SocketAddr>,
        local: SocketAddr,
        args: &[&str],
    ) -> Result<Self> {
        let sipp = require_binary("sipp");
        let scenario_path = if scenario.contains('/') {
            PathBuf::from(scenario)
        } else {
            sipp_scenario_dir().join(scenario)
        };
        if !scenario_path.is_file() {
            bail!("sipp scenario {} not found", scenario_path.display());
        }
        let name = scenario_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sipp".to_owned());
        let dir = new_temp_dir(&format!("fedgate-sipp-{name}-"))?;
        let d = dir.path();
        let mut cmd = Command::new(&sipp);
        if let Some(remote) = remote {
            cmd.arg(remote.to_string());
        }
        cmd.arg("-sf")
            .arg(&scenario_path)
            .args(["-i", &local.ip().to_string()])
            .args(["-p", &local.port().to_string()])
            .args([
                "-t",
                "t1",
                "-nostdin",
                "-trace_err",
                "-trace_msg",
                "-trace_logs",
            ])
            .arg("-error_file")
            .arg(d.join("errors.log"))
            .arg("-message_file")
            .arg(d.join("messages.log"))
            .arg("-log_file")
            .arg(d.join("logs.log"));
        if !args.contains(&"-m") {
            cmd.args(["-m", "1"]);
        }
        if remote.is_some() && !args.windows(2).any(|w| w == ["-key", "contact_hostport"]) {
            cmd.args([
                "-key",
                "contact_hostport",
                &format!("{local};transport=tcp"),
            ]);
        }
        if !args.contains(&"-timeout") {
            cmd.args(["-timeout", &format!("{SIPP_DEFAULT_TIMEOUT_S}s")]);
            cmd.arg("-timeout_error");
        }
        cmd.args(args);
        let stderr = std::fs::File::create(d.join("stderr.log"))?;
        let stdout = std::fs::File::create(d.join("stdout.log"))?;
        let child = cmd
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context("spawning sipp")?;
        let pid = child.id();
        let what = match remote {
            Some(r) => format!("sipp {name} (pid {pid}, {local} -> {r})"),
            None => format!("sipp {name} (pid {pid}, listening on {local})"),
        };
        Ok(Self {
            child,
            pid,
            dir: Some(dir),
            what,
            local,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn path(&self, file: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.path().join(file),
            None => PathBuf::from(file),
        }
    }

    fn outcome(&self, status: ExitStatus) -> SippOutcome {
        SippOutcome {
            status,
            code: status.code(),
            messages: read_lossy(&self.path("messages.log")),
            logs: read_lossy(&self.path("logs.log")),
            errors: read_lossy(&self.path("errors.log")),
        }
    }

    /// Logs so far: the tails of the error, `<log>`, message and stderr files.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (title, file) in [
            ("errors", "errors.log"),
            ("logs", "logs.log"),
            ("messages", "messages.log"),
            ("stderr", "stderr.log"),
        ] {
            let text = read_lossy(&self.path(file));
            if !text.trim().is_empty() {
                out.push_str(&format!(
                    "--- {} {title} (last {LOG_TAIL_LINES} lines) ---\n{}\n",
                    self.what,
                    tail(&text, LOG_TAIL_LINES)
                ));
            }
        }
        out
    }

    /// Waits for sipp to exit (up to `timeout`, then kills it) and returns how it ended,
    /// whatever the exit status. Err only if it did not exit in time.
    pub fn wait_any(&mut self, timeout: Duration) -> Result<SippOutcome> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for sipp")? {
                return Ok(self.outcome(status));
            }
            if Instant::now() >= deadline {
                stop_group(&mut self.child, Duration::from_secs(2));
                bail!(
                    "{} still running after {timeout:?} (killed)\n{}",
                    self.what,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for sipp to exit (up to `timeout`) and requires exit status 0 (every call of
    /// the scenario passed its checks). On failure the error carries the log tails.
    pub fn wait(&mut self, timeout: Duration) -> Result<SippOutcome> {
        let outcome = self.wait_any(timeout)?;
        if !outcome.success() {
            bail!(
                "{} failed ({})\n{}",
                self.what,
                outcome.status,
                self.diagnostics()
            );
        }
        Ok(outcome)
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(2));
        finish_dir(&mut self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// socat TLS wrappers
// ------------------------------------------------------------------------------------------

/// Certificate, key and trust anchors (PEM paths) for one TLS endpoint.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }
}

fn socat_opt_path(p: &Path) -> Result<String> {
    let s = p.to_string_lossy().into_owned();
    if s.contains([',', ':', '!', '\'', '"', ' ']) {
        bail!("path {s:?} contains a character socat treats as a separator");
    }
    Ok(s)
}

struct Socat {
    child: Child,
    pid: u32,
    dir: Option<tempfile::TempDir>,
    what: String,
}

impl Socat {
    fn start(what: String, listen: SocketAddr, left: String, right: String) -> Result<Self> {
        let socat = require_binary("socat");
        let dir = new_temp_dir("fedgate-socat-")?;
        let log_path = dir.path().join("socat.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(&socat)
            .args(["-d", "-d", &left, &right])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("spawning socat")?;
        let pid = child.id();
        let what = format!("{what} (socat pid {pid})");
        if let Err(e) = wait_listening(&mut child, listen, &what, &log_path) {
            stop_group(&mut child, Duration::from_secs(1));
            return Err(e);
        }
        Ok(Self {
            child,
            pid,
            dir: Some(dir),
            what,
        })
    }

    fn log(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| read_lossy(&d.path().join("socat.log")))
            .unwrap_or_default()
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(1));
        finish_dir(&mut self.dir);
    }
}

/// Plain TCP in, mutual TLS out: lets a sipp UAC (TCP only) reach a TLS server (fedgate).
/// `socat TCP-LISTEN:port,bind=ip,reuseaddr,fork
///  OPENSSL:target,cert=,key=,cafile=,verify=1,commonname=<server_name>`:
/// presents `tls.cert` as client certificate, verifies the server against `tls.ca` and
/// its name against `server_name`.
pub struct TlsClientWrapper {
    socat: Socat,
    pub listen: SocketAddr,
}

impl TlsClientWrapper {
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        tls: &TlsFiles,
        server_name: &str,
    ) -> Result<Self> {
        check_loopback(listen.ip(), "TLS client wrapper listen address")?;
        check_loopback(target.ip(), "TLS client wrapper target")?;
        let left = format!(
            "TCP-LISTEN:{},bind={},reuseaddr,fork",
            listen.port(),
            listen.ip()
        );
        let right = format!(
            "OPENSSL:{target},cert={},key={},cafile={},verify=1,commonname={server_name}",
            socat_opt_path(&tls.cert)?,
            socat_opt_path(&tls.key)?,
            socat_opt_path(&tls.ca)?
        );
        let socat = Socat::start(
            format!("TLS client wrapper {listen} -> tls {target}"),
            listen,
            left,
            right,
        )?;
        Ok(Self { socat, listen })
    }

    pub fn pid(&self) -> u32 {
        self.socat.pid
    }

    /// socat's `-d -d` log (handshakes, "commonName matches", errors).
    pub fn log(&self) -> String {
        self.socat.log()
    }
}

/// Mutual TLS in, plain TCP out: puts a TLS listener in front of a sipp UAS.
/// `socat OPENSSL-LISTEN:port,bind=ip,reuseaddr,fork,cert=,key=,cafile=,verify=1 TCP:target`:
/// requires a client certificate that chains to `tls.ca` (no name check on the client).
pub struct TlsServerWrapper {
    socat: Socat,
    pub listen: SocketAddr,
}

impl TlsServerWrapper {
    pub fn start(listen: SocketAddr, target: SocketAddr, tls: &TlsFiles) -> Result<Self> {
        check_loopback(listen.ip(), "TLS server wrapper listen address")?;
        check_loopback(target.ip(), "TLS server wrapper target")?;
        let left = format!(
            "OPENSSL-LISTEN:{},bind={},reuseaddr,fork,cert={},key={},cafile={},verify=1",
            listen.port(),
            listen.ip(),
            socat_opt_path(&tls.cert)?,
            socat_opt_path(&tls.key)?,
            socat_opt_path(&tls.ca)?
        );
        let right = format!("TCP:{target}");
        let socat = Socat::start(
            format!("TLS server wrapper tls {listen} -> {target}"),
            listen,
            left,
            right,
        )?;
        Ok(Self { socat, listen })
    }

    pub fn pid(&self) -> u32 {
        self.socat.pid
    }

    /// socat's `-d -d` log; a refused client shows "peer did not return a certificate".
    pub fn log(&self) -> String {
        self.socat.log()
    }
}

// ------------------------------------------------------------------------------------------
// Kamailio
// ------------------------------------------------------------------------------------------

/// Options for [`Kamailio::start`].
#[derive(Clone, Debug)]
pub struct KamailioOpts {
    /// Listen address (loopback): `tls:ip:tls_port` and `tcp:ip:tcp_port`.
    pub ip: Ipv4Addr,
    pub tls_port: u16,
    pub tcp_port: u16,
    /// Kamailio's certificate (server and client side), key and trust anchors.
    pub tls: TlsFiles,
    /// Where requests for `@lync.test` go (TCP), e.g. a sipp UAS.
    pub lync_ua: SocketAddr,
    /// Where requests for any other domain go (TLS, Record-Routed), i.e. fedgate.
    pub next_hop: SocketAddr,
    /// Kamailio `debug` level (default 2 = info; 3 = debug).
    pub debug: u8,
}

impl KamailioOpts {
    pub fn new(
        ip: Ipv4Addr,
        tls_port: u16,
        tcp_port: u16,
        tls: TlsFiles,
        lync_ua: SocketAddr,
        next_hop: SocketAddr,
    ) -> Self {
        Self {
            ip,
            tls_port,
            tcp_port,
            tls,
            lync_ua,
            next_hop,
            debug: 2,
        }
    }
}

/// Kamailio 5.6 (`kamailio -DD -E`) as the mutual-TLS edge proxy of `lync.test`
/// (`tests/interop/kamailio.cfg.in`, `tests/interop/tls.cfg.in`).
pub struct Kamailio {
    child: Child,
    pid: u32,
    dir: Option<tempfile::TempDir>,
    pub tls_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
}

impl Kamailio {
    pub fn start(opts: KamailioOpts) -> Result<Self> {
        check_loopback(IpAddr::V4(opts.ip), "kamailio listen ip")?;
        check_loopback(opts.lync_ua.ip(), "kamailio lync_ua")?;
        check_loopback(opts.next_hop.ip(), "kamailio next_hop")?;
        let kamailio = require_binary("kamailio");
        let mpath = kamailio_module_dir();
        let dir = new_temp_dir("fedgate-kamailio-")?;
        let d = dir.path().to_path_buf();
        let run = d.join("run");
        std::fs::create_dir_all(&run)?;
        let tls_cfg = d.join("tls.cfg");
        std::fs::write(
            &tls_cfg,
            render(
                KAMAILIO_TLS_TEMPLATE,
                &[
                    ("CERT", opts.tls.cert.to_string_lossy().into_owned()),
                    ("KEY", opts.tls.key.to_string_lossy().into_owned()),
                    ("CA", opts.tls.ca.to_string_lossy().into_owned()),
                ],
            ),
        )?;
        let cfg = d.join("kamailio.cfg");
        std::fs::write(
            &cfg,
            render(
                KAMAILIO_TEMPLATE,
                &[
                    ("IP", opts.ip.to_string()),
                    ("TLS_PORT", opts.tls_port.to_string()),
                    ("TCP_PORT", opts.tcp_port.to_string()),
                    ("MPATH", format!("{}/", mpath.display())),
                    ("TLS_CFG", tls_cfg.to_string_lossy().into_owned()),
                    ("LYNC_UA", opts.lync_ua.to_string()),
                    ("NEXT_HOP", opts.next_hop.to_string()),
                    ("DEBUG", opts.debug.to_string()),
                ],
            ),
        )?;
        let log_path = d.join("kamailio.log");
        let check = Command::new(&kamailio)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .context("running kamailio -c")?;
        if !check.status.success() {
            bail!(
                "kamailio -c rejected {}:\n{}{}",
                cfg.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(&kamailio)
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(&run)
            .arg("-P")
            .arg(run.join("kamailio.pid"))
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("spawning kamailio")?;
        let pid = child.id();
        let tls_addr = SocketAddr::from((opts.ip, opts.tls_port));
        let tcp_addr = SocketAddr::from((opts.ip, opts.tcp_port));
        for addr in [tls_addr, tcp_addr] {
            if let Err(e) = wait_listening(
                &mut child,
                addr,
                &format!("kamailio (pid {pid})"),
                &log_path,
            ) {
                stop_group(&mut child, Duration::from_secs(3));
                return Err(e);
            }
        }
        Ok(Self {
            child,
            pid,
            dir: Some(dir),
            tls_addr,
            tcp_addr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kamailio's log (stderr, `-E`): relays, replies, TLS errors such as
    /// "peer did not return a certificate".
    pub fn log(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| read_lossy(&d.path().join("kamailio.log")))
            .unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(5));
        finish_dir(&mut self.dir);
    }
}
