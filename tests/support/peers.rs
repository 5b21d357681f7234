//! Real-peer interop harness: launchers for Debian's Prosody 0.12 and ejabberd 23.01 on
//! loopback, and a slixmpp-based c2s client (`tests/interop/client.py`).
//!
//! Include from an integration test with `#[path = "support/peers.rs"] mod peers;`.
//! Dependencies: std, tokio (`time`, `net`, `sync`, `rt`), anyhow, tempfile.
//!
//! Peers are never skipped: a missing binary or venv panics with the install hint
//! (`scripts/install-test-deps.sh`). Every process is started as a child (or, for
//! ejabberd, found through its pid file) and stopped by PID in `Drop`.
//!
//! Addresses: each server listens on `ip:5269` (s2s) and `ip:5222` (c2s) only; `ip` must be
//! in 127.0.0.0/8 and not 127.0.0.1. Outbound s2s of both servers resolves through the
//! given test DNS server only (SRV `_xmpp-server._tcp.DOMAIN` + A records). Use
//! IP-literal SRV targets (`127.0.0.30.`) and also answer A for that literal name
//! (Prosody resolves it as a DNS name; ejabberd resolves SRV targets with getaddrinfo).
//!
//! Internal role (a server behind fedgate, `ProsodyOpts::internal` / `EjabberdOpts::internal`):
//! pass fedgate's `[internal] resolver` address as `dns`; it steers every non-hosted domain to
//! fedgate's internal listener and forwards other questions to the test DNS (its upstream).
//!
//! Set `FEDGATE_KEEP_PEER_DIRS=1` to keep the per-instance temp dirs (configs, logs).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

const PROSODY_TEMPLATE: &str = include_str!("../interop/prosody.cfg.lua.in");
const EJABBERD_TEMPLATE: &str = include_str!("../interop/ejabberd.yml.in");
const CLIENT_PY: &str = include_str!("../interop/client.py");

pub(crate) const INSTALL_HINT: &str = "run scripts/install-test-deps.sh";
const START_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------
// Environment helpers
// ------------------------------------------------------------------------------------------

/// Absolute path of an installed binary (PATH, then /usr/sbin, /usr/bin, /sbin, /bin).
/// Panics with "`name` not installed: run scripts/install-test-deps.sh" if missing.
pub fn require_binary(name: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not installed: {INSTALL_HINT}");
}

/// Python interpreter with slixmpp: `$FEDGATE_INTEROP_PYTHON`, else the nearest
/// `.venv-interop/bin/python` above this crate. Panics if missing (never skips).
pub fn interop_python() -> PathBuf {
    if let Some(p) = std::env::var_os("FEDGATE_INTEROP_PYTHON") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        panic!(
            "FEDGATE_INTEROP_PYTHON={} does not exist: {INSTALL_HINT}",
            p.display()
        );
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let p = dir.join(".venv-interop/bin/python");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "interop python venv not found (FEDGATE_INTEROP_PYTHON unset, no .venv-interop above {}): \
         {INSTALL_HINT}",
        manifest.display()
    );
}

fn check_peer_ip(ip: Ipv4Addr) -> Result<()> {
    if !ip.is_loopback() || ip == Ipv4Addr::LOCALHOST {
        bail!("peer servers must listen on 127.0.0.0/8 but not 127.0.0.1 (got {ip})");
    }
    Ok(())
}

fn check_dns(dns: SocketAddr) -> Result<Ipv4Addr> {
    match dns {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => Ok(*v4.ip()),
        _ => bail!("test DNS server must be an IPv4 loopback address (got {dns})"),
    }
}

pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("FEDGATE_KEEP_PEER_DIRS").is_some_and(|v| !v.is_empty() && v != "0")
}

pub(crate) fn new_temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating peer temp dir")
}

pub(crate) fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("@{name}@"), value);
    }
    out
}

fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs a command to completion on the blocking pool; returns stdout+stderr, errors on
/// non-zero exit.
async fn run_cmd(mut cmd: Command, what: String) -> Result<String> {
    let out = tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output())
        .await
        .context("join")?
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; treat state Z as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// TERM, wait up to `grace`, then KILL, then reap.
fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal_pid(child.id(), "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn wait_tcp(addr: SocketAddr, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// Prosody
// ------------------------------------------------------------------------------------------

/// Options for [`Prosody::start`]. Build with [`ProsodyOpts::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct ProsodyOpts {
    /// Served domain, e.g. "p.test".
    pub domain: String,
    /// Listen address (s2s :5269, c2s :5222), e.g. 127.0.0.10.
    pub ip: Ipv4Addr,
    /// Test DNS server lua-unbound forwards to (UDP/TCP, loopback).
    pub dns: SocketAddr,
    pub cert_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
    /// `s2s_secure_auth` (true: peers must present a certificate trusted via `trust_ca`).
    pub secure_auth: bool,
    /// CA bundle (PEM) used to verify s2s peers (`ssl.cafile`).
    pub trust_ca: Option<PathBuf>,
    /// Accounts created with `prosodyctl register` before start.
    pub users: Vec<(String, String)>,
    /// `s2s_require_encryption` (default true).
    pub require_encryption: bool,
    /// Extra module names for `modules_enabled` (e.g. "s2s_bidi").
    pub extra_modules: Vec<String>,
    /// Raw Lua appended to the end of the config (inside the VirtualHost section).
    pub extra_config: String,
    /// Prosody log level (default "debug").
    pub log_level: String,
}

impl ProsodyOpts {
    pub fn new(
        domain: &str,
        ip: Ipv4Addr,
        dns: SocketAddr,
        cert_pem_path: impl Into<PathBuf>,
        key_pem_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            domain: domain.to_owned(),
            ip,
            dns,
            cert_pem_path: cert_pem_path.into(),
            key_pem_path: key_pem_path.into(),
            secure_auth: false,
            trust_ca: None,
            users: Vec::new(),
            require_encryption: true,
            extra_modules: Vec::new(),
            extra_config: String::new(),
            log_level: "debug".to_owned(),
        }
    }

    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push((user.to_owned(), password.to_owned()));
        self
    }

    /// Prosody as the *internal* server of `domain` behind fedgate: `resolver` is fedgate's
    /// `[internal] resolver` (it answers `_xmpp-server._tcp` of every domain Prosody does not
    /// host with fedgate's internal listener and forwards the rest upstream), so all of
    /// Prosody's outbound s2s goes to fedgate without per-partner settings. Inbound, fedgate
    /// connects as the remote domains it fronts, without a certificate for them: Prosody must
    /// accept dialback (`s2s_secure_auth = false`) and verifies the keys through the same
    /// resolver, i.e. with fedgate. TLS stays required. `cert`/`key` are Prosody's own
    /// certificate for `domain` (fedgate trusts its CA through `[tls] trust_anchors`).
    pub fn internal(
        domain: &str,
        ip: Ipv4Addr,
        resolver: SocketAddr,
        cert_pem_path: impl Into<PathBuf>,
        key_pem_path: impl Into<PathBuf>,
    ) -> Self {
        let mut o = Self::new(domain, ip, resolver, cert_pem_path, key_pem_path);
        o.secure_auth = false;
        o.require_encryption = true;
        o
    }
}

/// A Prosody instance running in the foreground (`prosody --config FILE -F`) as a child.
pub struct Prosody {
    child: Child,
    dir: Option<tempfile::TempDir>,
    config: PathBuf,
    domain: String,
    ip: Ipv4Addr,
    binary: PathBuf,
    /// Processes started so far (1, then one more per restart).
    runs: u32,
}

impl Prosody {
    pub async fn start(opts: ProsodyOpts) -> Result<Self> {
        check_peer_ip(opts.ip)?;
        let dns_ip = check_dns(opts.dns)?;
        let prosody = require_binary("prosody");
        let prosodyctl = require_binary("prosodyctl");
        require_binary("lua5.4");

        let dir = new_temp_dir(&format!("fedgate-prosody-{}-", opts.domain))?;
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("data"))?;
        std::fs::create_dir_all(d.join("certs"))?;
        let cert = d.join("certs").join(format!("{}.crt", opts.domain));
        let key = d.join("certs").join(format!("{}.key", opts.domain));
        std::fs::copy(&opts.cert_pem_path, &cert)
            .with_context(|| format!("copying {}", opts.cert_pem_path.display()))?;
        std::fs::copy(&opts.key_pem_path, &key)
            .with_context(|| format!("copying {}", opts.key_pem_path.display()))?;
        let cafile = match &opts.trust_ca {
            Some(ca) => {
                let p = d.join("trust-ca.pem");
                std::fs::copy(ca, &p).with_context(|| format!("copying {}", ca.display()))?;
                format!("cafile = {};", lua_str(&p.to_string_lossy()))
            }
            None => String::new(),
        };
        let extra_modules: String = opts
            .extra_modules
            .iter()
            .map(|m| format!("{}; ", lua_str(m)))
            .collect();
        let config_text = render(
            PROSODY_TEMPLATE,
            &[
                ("DIR", d.to_string_lossy().into_owned()),
                ("DOMAIN", opts.domain.clone()),
                ("IP", opts.ip.to_string()),
                ("DNS", format!("{dns_ip}@{}", opts.dns.port())),
                ("CERT", cert.to_string_lossy().into_owned()),
                ("KEY", key.to_string_lossy().into_owned()),
                ("CAFILE", cafile),
                ("S2S_SECURE_AUTH", opts.secure_auth.to_string()),
                (
                    "S2S_REQUIRE_ENCRYPTION",
                    opts.require_encryption.to_string(),
                ),
                ("EXTRA_MODULES", extra_modules),
                ("EXTRA_CONFIG", opts.extra_config.clone()),
                ("LOG_LEVEL", opts.log_level.clone()),
            ],
        );
        let config = d.join("prosody.cfg.lua");
        std::fs::write(&config, config_text)?;

        for (user, password) in &opts.users {
            let mut cmd = Command::new(&prosodyctl);
            cmd.arg("--config")
                .arg(&config)
                .args(["register", user, &opts.domain, password]);
            run_cmd(cmd, format!("prosodyctl register {user}@{}", opts.domain)).await?;
        }

        let child = Self::spawn(&prosody, &config, &d, "prosody.stdout")?;
        let mut this = Self {
            child,
            dir: Some(dir),
            config,
            domain: opts.domain.clone(),
            ip: opts.ip,
            binary: prosody,
            runs: 1,
        };
        this.wait_listening().await?;
        Ok(this)
    }

    fn spawn(prosody: &Path, config: &Path, dir: &Path, out: &str) -> Result<Child> {
        let out = std::fs::File::create(dir.join(out))?;
        Command::new(prosody)
            .arg("--config")
            .arg(config)
            .arg("-F")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning prosody")
    }

    async fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        for port in [5222, 5269] {
            let addr = SocketAddr::from((self.ip, port));
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    bail!(
                        "prosody for {} exited during startup ({status}):\n{}",
                        self.domain,
                        self.diagnostics()
                    );
                }
                if wait_tcp(
                    addr,
                    (Instant::now() + Duration::from_millis(200)).min(deadline),
                )
                .await
                {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "prosody for {} not listening on {addr} after {START_TIMEOUT:?}:\n{}",
                        self.domain,
                        self.diagnostics()
                    );
                }
            }
        }
        Ok(())
    }

    /// SIGKILL by PID, as a crash: no stream is closed, nothing is flushed. The directory
    /// (accounts, offline messages, the log) stays for [`Self::restart`].
    pub fn kill(&mut self) {
        signal_pid(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    /// Starts the same server again (same config and data) after [`Self::kill`]; its output
    /// goes to `prosody.stdout.N`, its log on in `prosody.log`.
    pub async fn restart(&mut self) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(None)) {
            bail!("prosody for {} is still running", self.domain);
        }
        self.runs += 1;
        let out = format!("prosody.stdout.{}", self.runs);
        self.child = Self::spawn(&self.binary, &self.config, self.dir(), &out)?;
        self.wait_listening().await
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 5222))
    }

    pub fn s2s_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 5269))
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The instance directory (config, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }

    /// Contents of prosody.log (debug level by default).
    pub fn log_text(&self) -> String {
        read_lossy(&self.dir().join("prosody.log"))
    }

    /// Log plus stdout/stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- {}/prosody.stdout ---\n{}\n--- prosody.log ---\n{}",
            self.dir().display(),
            read_lossy(&self.dir().join("prosody.stdout")),
            self.log_text()
        )
    }

    /// `prosodyctl --config FILE shell COMMAND` against the running instance, e.g.
    /// `shell("xmpp:ping('p.test', 'e.test')")` or `shell("s2s:show()")`.
    pub async fn shell(&self, command: &str) -> Result<String> {
        let mut cmd = Command::new(require_binary("prosodyctl"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(["shell", command]);
        run_cmd(cmd, format!("prosodyctl shell {command:?}")).await
    }

    /// Stops the server (SIGTERM by PID, SIGKILL after 10 s) and removes its directory.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
        // Dropping the TempDir removes it unless FEDGATE_KEEP_PEER_DIRS is set.
        if let Some(dir) = self.dir.take().filter(|_| keep_dirs()) {
            eprintln!("keeping prosody dir {}", dir.keep().display());
        }
    }
}

// ------------------------------------------------------------------------------------------
// ejabberd
// ------------------------------------------------------------------------------------------

/// Options for [`Ejabberd::start`]. Build with [`EjabberdOpts::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct EjabberdOpts {
    pub domain: String,
    pub ip: Ipv4Addr,
    /// Test DNS server (ejabberd's inet_res nameserver via ERL_INETRC).
    pub dns: SocketAddr,
    pub cert_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
    /// CA bundle used to verify s2s peers (`s2s_cafile`).
    pub trust_ca: Option<PathBuf>,
    /// Accounts created with `ejabberdctl register` after start.
    pub users: Vec<(String, String)>,
    /// Load `mod_s2s_dialback` (default true).
    pub dialback: bool,
    /// `s2s_use_starttls: required` (true) or `optional` (false, default).
    pub starttls_required: bool,
    /// Extra YAML lines placed under `modules:` (indent them by two spaces).
    pub extra_modules: String,
    /// Extra top-level YAML appended at the end.
    pub extra_config: String,
    /// ejabberd loglevel (default "info"; "debug" is very verbose).
    pub log_level: String,
}

impl EjabberdOpts {
    pub fn new(
        domain: &str,
        ip: Ipv4Addr,
        dns: SocketAddr,
        cert_pem_path: impl Into<PathBuf>,
        key_pem_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            domain: domain.to_owned(),
            ip,
            dns,
            cert_pem_path: cert_pem_path.into(),
            key_pem_path: key_pem_path.into(),
            trust_ca: None,
            users: Vec::new(),
            dialback: true,
            starttls_required: false,
            extra_modules: String::new(),
            extra_config: String::new(),
            log_level: "info".to_owned(),
        }
    }

    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push((user.to_owned(), password.to_owned()));
        self
    }

    /// ejabberd as the *internal* server of `domain` behind fedgate: its resolver (ERL_INETRC
    /// nameserver) is fedgate's `[internal] resolver`, which answers `_xmpp-server._tcp` of
    /// every non-hosted domain with fedgate's internal listener as an IP-literal target (what
    /// ejabberd's SRV-target resolution needs) and forwards every other question upstream.
    /// `mod_s2s_dialback` stays loaded: fedgate connects as the remote domains it fronts,
    /// without certificates for them, and ejabberd verifies their keys with fedgate.
    pub fn internal(
        domain: &str,
        ip: Ipv4Addr,
        resolver: SocketAddr,
        cert_pem_path: impl Into<PathBuf>,
        key_pem_path: impl Into<PathBuf>,
    ) -> Self {
        let mut o = Self::new(domain, ip, resolver, cert_pem_path, key_pem_path);
        o.dialback = true;
        o
    }
}

/// An ejabberd node started with `ejabberdctl start` in its own config/spool/log dir.
/// Each instance has a unique Erlang node name and runs epmd-less (`ERL_DIST_PORT`, a free
/// port on 127.0.0.1), so instances never share or start an epmd.
pub struct Ejabberd {
    dir: Option<tempfile::TempDir>,
    domain: String,
    ip: Ipv4Addr,
    node: String,
    beam_pid: Option<u32>,
    /// Killed by [`Ejabberd::kill`]: nothing to stop politely.
    killed: bool,
}

static EJABBERD_SEQ: AtomicU32 = AtomicU32::new(0);

impl Ejabberd {
    pub async fn start(opts: EjabberdOpts) -> Result<Self> {
        check_peer_ip(opts.ip)?;
        let dns_ip = check_dns(opts.dns)?;
        require_binary("ejabberdctl");
        require_binary("erl");

        let dir = new_temp_dir(&format!("fedgate-ejabberd-{}-", opts.domain))?;
        let d = dir.path().to_path_buf();
        for sub in ["spool", "logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let mut pem = std::fs::read_to_string(&opts.cert_pem_path)
            .with_context(|| format!("reading {}", opts.cert_pem_path.display()))?;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(
            &std::fs::read_to_string(&opts.key_pem_path)
                .with_context(|| format!("reading {}", opts.key_pem_path.display()))?,
        );
        let pem_path = d.join(format!("{}.pem", opts.domain));
        std::fs::write(&pem_path, pem)?;
        std::fs::set_permissions(
            &pem_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let s2s_cafile = match &opts.trust_ca {
            Some(ca) => {
                let p = d.join("trust-ca.pem");
                std::fs::copy(ca, &p).with_context(|| format!("copying {}", ca.display()))?;
                format!("s2s_cafile: \"{}\"", p.display())
            }
            None => String::new(),
        };
        let yml = render(
            EJABBERD_TEMPLATE,
            &[
                ("DIR", d.to_string_lossy().into_owned()),
                ("DOMAIN", opts.domain.clone()),
                ("IP", opts.ip.to_string()),
                ("LOG_LEVEL", opts.log_level.clone()),
                ("S2S_CAFILE", s2s_cafile),
                (
                    "S2S_USE_STARTTLS",
                    if opts.starttls_required {
                        "required"
                    } else {
                        "optional"
                    }
                    .to_owned(),
                ),
                (
                    "DIALBACK_MODULE",
                    if opts.dialback {
                        "  mod_s2s_dialback: {}"
                    } else {
                        ""
                    }
                    .to_owned(),
                ),
                ("EXTRA_MODULES", opts.extra_modules.clone()),
                ("EXTRA_CONFIG", opts.extra_config.clone()),
            ],
        );
        std::fs::write(d.join("ejabberd.yml"), yml)?;

        let node = format!(
            "fedgate-{}-{}-{}@localhost",
            opts.domain
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            EJABBERD_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dist_port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        std::fs::write(
            d.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE={node}\n\
                 ERL_DIST_PORT={dist_port}\n\
                 ERL_OPTIONS=\"-kernel inet_dist_use_interface {{127,0,0,1}}\"\n\
                 ERL_EPMD_ADDRESS=127.0.0.1\n\
                 EJABBERD_PID_PATH={}/ejabberd.pid\n",
                d.display()
            ),
        )?;
        let o = dns_ip.octets();
        std::fs::write(
            d.join("inetrc"),
            format!(
                "{{resolv_conf, \"\"}}.\n{{hosts_file, \"\"}}.\n\
                 {{host, {{127,0,0,1}}, [\"localhost\"]}}.\n\
                 {{nameserver, {{{},{},{},{}}}, {}}}.\n{{lookup, [file, dns]}}.\n",
                o[0],
                o[1],
                o[2],
                o[3],
                opts.dns.port()
            ),
        )?;
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("ejabberd:ejabberd").arg(&d);
        run_cmd(chown, "chown -R ejabberd".into()).await?;

        let mut this = Self {
            dir: Some(dir),
            domain: opts.domain.clone(),
            ip: opts.ip,
            node,
            beam_pid: None,
            killed: false,
        };
        this.ctl(&["start"]).await?;

        // `ejabberdctl status` exits 0 once the ejabberd application is started.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if this.beam_pid.is_none() {
                this.beam_pid = this.read_pid_file();
            }
            if let Some(pid) = this.beam_pid.filter(|p| !pid_alive(*p)) {
                bail!(
                    "ejabberd for {} (beam pid {pid}) exited during startup:\n{}",
                    this.domain,
                    this.diagnostics()
                );
            }
            match this.ctl(&["status"]).await {
                Ok(text) if text.contains("status: started") => break,
                _ if Instant::now() >= deadline => bail!(
                    "ejabberd for {} not started after {START_TIMEOUT:?}:\n{}",
                    this.domain,
                    this.diagnostics()
                ),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        if this.beam_pid.is_none() {
            this.beam_pid = this.read_pid_file();
        }
        if !wait_tcp(this.c2s_addr(), Instant::now() + Duration::from_secs(10)).await {
            bail!(
                "ejabberd c2s not listening on {}:\n{}",
                this.c2s_addr(),
                this.diagnostics()
            );
        }
        for (user, password) in &opts.users {
            this.ctl(&["register", user, &opts.domain, password])
                .await?;
        }
        Ok(this)
    }

    fn read_pid_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir().join("ejabberd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let d = self.dir();
        let mut cmd = Command::new(require_binary("ejabberdctl"));
        cmd.env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .arg("--config-dir")
            .arg(d)
            .arg("--config")
            .arg(d.join("ejabberd.yml"))
            .arg("--spool")
            .arg(d.join("spool"))
            .arg("--logs")
            .arg(d.join("logs"))
            .args(args);
        cmd
    }

    /// Runs `ejabberdctl <args>` against this node (e.g. `["send_message", "chat", from, to,
    /// "", body]`, `["incoming_s2s_number"]`); returns its output, errors on non-zero exit.
    pub async fn ctl(&self, args: &[&str]) -> Result<String> {
        run_cmd(
            self.ctl_command(args),
            format!("ejabberdctl {}", args.join(" ")),
        )
        .await
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 5222))
    }

    pub fn s2s_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 5269))
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The PID of the node's beam process.
    pub fn beam_pid(&self) -> Option<u32> {
        self.beam_pid.or_else(|| self.read_pid_file())
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }

    /// Contents of logs/ejabberd.log.
    pub fn log_text(&self) -> String {
        read_lossy(&self.dir().join("logs/ejabberd.log"))
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "--- {}/logs/ejabberd.log ---\n{}\n--- error.log ---\n{}",
            self.dir().display(),
            self.log_text(),
            read_lossy(&self.dir().join("logs/error.log"))
        )
    }

    /// `ejabberdctl stop`, then SIGKILL by PID whatever is left of this node.
    pub fn stop(self) {
        drop(self)
    }
    /// SIGKILL by PID of the node's beam process (and whatever else runs for this node), as
    /// a crash: no stream is closed, nothing is flushed.
    pub fn kill(&mut self) {
        let beam = self.beam_pid.or_else(|| self.read_pid_file());
        if let Some(pid) = beam {
            signal_pid(pid, "KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive: Vec<u32> = self
                .node_pids()
                .into_iter()
                .chain(beam.filter(|p| pid_alive(*p)))
                .collect();
            if alive.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in alive {
                signal_pid(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.killed = true;
    }

    /// PIDs of processes whose command line names this node (beam.smp, ctl leftovers).
    fn node_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(self.node.as_str()) && pid_alive(pid) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let Some(_) = self.dir.as_ref() else { return };
        let beam = self.beam_pid.or_else(|| self.read_pid_file());
        if !self.killed {
            let _ = self
                .ctl_command(&["stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut alive = self.node_pids();
            if let Some(pid) = beam.filter(|p| pid_alive(*p) && !alive.contains(p)) {
                alive.push(pid);
            }
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for pid in alive {
                    signal_pid(pid, "KILL");
                }
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dropping the TempDir removes it unless FEDGATE_KEEP_PEER_DIRS is set.
        if let Some(dir) = self.dir.take().filter(|_| keep_dirs()) {
            eprintln!("keeping ejabberd dir {}", dir.keep().display());
        }
    }
}

// ------------------------------------------------------------------------------------------
// XMPP client (slixmpp, tests/interop/client.py)
// ------------------------------------------------------------------------------------------

/// A c2s client session driven through `tests/interop/client.py` (JSON lines on
/// stdin/stdout). Unconsumed events are kept, so `expect_*` calls may come in any order.
pub struct XmppClient {
    jid: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: tokio::sync::mpsc::UnboundedReceiver<String>,
    pending: VecDeque<Json>,
    seen: Vec<String>,
    dir: tempfile::TempDir,
}

impl XmppClient {
    /// Starts the client and waits (30 s) until the session is established (after
    /// STARTTLS without certificate verification, SASL, bind, initial presence + roster).
    pub async fn connect(
        python: &Path,
        jid: &str,
        password: &str,
        addr: SocketAddr,
    ) -> Result<Self> {
        Self::connect_with(python, jid, password, addr, true).await
    }

    /// Like [`connect`](Self::connect); `auto_accept = false` leaves subscription requests
    /// unanswered (they still arrive as presence events).
    pub async fn connect_with(
        python: &Path,
        jid: &str,
        password: &str,
        addr: SocketAddr,
        auto_accept: bool,
    ) -> Result<Self> {
        if !addr.ip().is_loopback() {
            bail!("XmppClient only connects to loopback (got {addr})");
        }
        let dir = new_temp_dir("fedgate-xmppclient-")?;
        let script = dir.path().join("client.py");
        std::fs::write(&script, CLIENT_PY)?;
        let stderr = std::fs::File::create(dir.path().join("client.stderr"))?;
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg(&script).args([
            jid,
            password,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]);
        if !auto_accept {
            cmd.arg("--no-auto-accept");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {} (slixmpp client)", python.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("xmppclient-{jid}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        let mut this = Self {
            jid: jid.to_owned(),
            child,
            stdin,
            events: rx,
            pending: VecDeque::new(),
            seen: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ev = this
                .next_event(deadline)
                .await
                .context("waiting for session start")?;
            if ev.get("connected").is_some() {
                break;
            }
            if let Some(err) = ev.get("error") {
                let kind = err.get("kind").and_then(Json::as_str).unwrap_or("");
                if kind == "auth" || kind == "connection" {
                    bail!("{jid}: {kind} error: {}\n{}", err, this.diagnostics());
                }
            }
            this.pending.push_back(ev);
        }
        Ok(this)
    }

    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// Sends a raw command object (one JSON line, see client.py).
    pub fn send_command(&mut self, json_line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("client stdin closed"))?;
        stdin.write_all(json_line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Chat message.
    pub async fn send_message(&mut self, to: &str, body: &str) -> Result<()> {
        self.send_command(&format!(
            r#"{{"send":{{"to":{},"body":{}}}}}"#,
            json_str(to),
            json_str(body)
        ))
    }

    /// `n` chat messages to `to` with ids `{prefix}0` .. `{prefix}{n-1}`, sent by the client
    /// in the background (a `burst_sent` event follows), with a pause of `pause` after every
    /// `pause_every` messages (0: none).
    pub fn burst(
        &mut self,
        to: &str,
        prefix: &str,
        n: usize,
        body: &str,
        pause_every: usize,
        pause: Duration,
    ) -> Result<()> {
        self.send_command(&format!(
            r#"{{"burst":{{"to":{},"prefix":{},"n":{n},"body":{},"pause_every":{pause_every},"pause":{}}}}}"#,
            json_str(to),
            json_str(prefix),
            json_str(body),
            pause.as_secs_f64()
        ))
    }

    /// The next event (queued ones first), or None if none comes within `timeout` or the
    /// client process has ended.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<Json> {
        if let Some(ev) = self.pending.pop_front() {
            return Some(ev);
        }
        self.next_event(Instant::now() + timeout).await.ok()
    }

    /// Next chat/normal message with a body: (bare from JID, body). A message error
    /// (`type=error`) arriving first makes this fail with its condition.
    pub async fn expect_message(&mut self, timeout: Duration) -> Result<(String, String)> {
        let ev = self
            .expect_event(timeout, "a message", |ev| {
                ev.get("message").is_some() || ev.get("message_error").is_some()
            })
            .await?;
        if let Some(err) = ev.get("message_error") {
            bail!(
                "{}: received a message error instead of a message: {err}",
                self.jid
            );
        }
        let m = ev.get("message").expect("matched");
        Ok((
            m.get("from")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
            m.get("body")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    /// Next message error: (bare from JID, error condition, e.g. "remote-server-not-found").
    pub async fn expect_message_error(&mut self, timeout: Duration) -> Result<(String, String)> {
        let ev = self
            .expect_event(timeout, "a message error", |ev| {
                ev.get("message_error").is_some()
            })
            .await?;
        let m = ev.get("message_error").expect("matched");
        Ok((
            m.get("from")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
            m.get("condition")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    /// Next message error with its text: (bare from JID, condition, text or "").
    pub async fn expect_message_error_text(
        &mut self,
        timeout: Duration,
    ) -> Result<(String, String, String)> {
        let ev = self
            .expect_event(timeout, "a message error", |ev| {
                ev.get("message_error").is_some()
            })
            .await?;
        let m = ev.get("message_error").expect("matched");
        let field = |k: &str| {
            m.get(k)
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok((field("from"), field("condition"), field("text")))
    }

    /// Sends `<presence type="subscribe" to=TO/>`. Panics if the client process is gone.
    pub async fn subscribe(&mut self, to: &str) {
        let line = format!(r#"{{"subscribe":{}}}"#, json_str(to));
        if let Err(e) = self.send_command(&line) {
            panic!(
                "{}: cannot send subscribe: {e}\n{}",
                self.jid,
                self.diagnostics()
            );
        }
    }

    /// Sends a presence (`to`/`ptype` optional; ptype e.g. "unavailable", "subscribed").
    pub async fn send_presence(&mut self, to: Option<&str>, ptype: Option<&str>) -> Result<()> {
        self.send_presence_status(to, ptype, None).await
    }

    /// [`Self::send_presence`] with a `<status/>` text, so that the receiver can tell this
    /// presence from earlier ones of the same type (e.g. a server's answer to a probe).
    pub async fn send_presence_status(
        &mut self,
        to: Option<&str>,
        ptype: Option<&str>,
        status: Option<&str>,
    ) -> Result<()> {
        let mut fields = Vec::new();
        if let Some(to) = to {
            fields.push(format!(r#""to":{}"#, json_str(to)));
        }
        if let Some(t) = ptype {
            fields.push(format!(r#""type":{}"#, json_str(t)));
        }
        if let Some(st) = status {
            fields.push(format!(r#""status":{}"#, json_str(st)));
        }
        self.send_command(&format!(r#"{{"presence":{{{}}}}}"#, fields.join(",")))
    }

    /// Turns automatic answering of subscription requests on or off.
    pub async fn set_auto_accept(&mut self, on: bool) -> Result<()> {
        self.send_command(&format!(r#"{{"auto_accept":{on}}}"#))
    }

    /// Waits for a presence whose from (full JID) starts with `from_prefix` and whose type
    /// is `ptype` ("available", "unavailable", "subscribe", "subscribed", ...).
    pub async fn expect_presence(
        &mut self,
        from_prefix: &str,
        ptype: &str,
        timeout: Duration,
    ) -> Result<()> {
        self.expect_presence_where(from_prefix, ptype, None, timeout)
            .await
    }

    /// [`Self::expect_presence`] that also requires the `<status/>` text: an earlier
    /// presence of the same type still queued (say a probe answer) does not match.
    pub async fn expect_presence_status(
        &mut self,
        from_prefix: &str,
        ptype: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<()> {
        self.expect_presence_where(from_prefix, ptype, Some(status), timeout)
            .await
    }

    async fn expect_presence_where(
        &mut self,
        from_prefix: &str,
        ptype: &str,
        status: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let what = match status {
            Some(st) => format!("presence type={ptype} status={st:?} from {from_prefix}*"),
            None => format!("presence type={ptype} from {from_prefix}*"),
        };
        self.expect_event(timeout, &what, |ev| {
            ev.get("presence").is_some_and(|p| {
                p.get("type").and_then(Json::as_str) == Some(ptype)
                    && p.get("from_full")
                        .and_then(Json::as_str)
                        .is_some_and(|f| f.starts_with(from_prefix))
                    && status.is_none_or(|st| p.get("status").and_then(Json::as_str) == Some(st))
            })
        })
        .await
        .map(|_| ())
    }

    /// XEP-0199 ping; Ok once a result arrives, Err with the error condition otherwise.
    pub async fn ping(&mut self, to: &str, timeout: Duration) -> Result<()> {
        self.send_command(&format!(
            r#"{{"iq_ping":{{"to":{},"timeout":{}}}}}"#,
            json_str(to),
            timeout.as_secs_f64()
        ))?;
        let to_owned = to.to_owned();
        let ev = self
            .expect_event(
                timeout + Duration::from_secs(2),
                &format!("ping result from {to}"),
                |ev| {
                    ev.get("iq_result")
                        .is_some_and(|r| r.get("to").and_then(Json::as_str) == Some(&to_owned))
                        || ev.get("error").is_some_and(|e| {
                            e.get("kind").and_then(Json::as_str) == Some("iq_ping")
                                && e.get("to").and_then(Json::as_str) == Some(&to_owned)
                        })
                },
            )
            .await?;
        if let Some(err) = ev.get("error") {
            bail!("{}: ping {to} failed: {err}", self.jid);
        }
        Ok(())
    }

    /// Waits for (and removes) the first event matching `pred`; non-matching events stay
    /// queued for later `expect_*` calls.
    pub async fn expect_event(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Json) -> bool,
    ) -> Result<Json> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return Ok(self.pending.remove(i).expect("index valid"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let ev = match self.next_event(deadline).await {
                Ok(ev) => ev,
                Err(e) => bail!("{}: waiting for {what}: {e:#}", self.jid),
            };
            if pred(&ev) {
                return Ok(ev);
            }
            self.pending.push_back(ev);
        }
    }

    /// Events received but not consumed yet.
    pub fn pending_events(&self) -> &VecDeque<Json> {
        &self.pending
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Json> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.events.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                Json::parse(&line).map_err(|e| anyhow!("bad event line {line:?}: {e}"))
            }
            Ok(None) => bail!("client process ended\n{}", self.diagnostics()),
            Err(_) => bail!("timed out\n{}", self.diagnostics()),
        }
    }

    /// All event lines received so far plus the client's stderr tail.
    pub fn diagnostics(&self) -> String {
        let stderr = read_lossy(&self.dir.path().join("client.stderr"));
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let mut out = format!("--- events received by {} ---\n", self.jid);
        for l in &self.seen {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(out, "--- client.py stderr (last 40 lines) ---");
        for l in tail.iter().rev() {
            let _ = writeln!(out, "{l}");
        }
        out
    }

    /// Closes stdin (the client disconnects and exits) and waits for it.
    pub fn close(self) {
        drop(self)
    }
}

impl Drop for XmppClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

// ------------------------------------------------------------------------------------------
// Minimal JSON (enough for client.py's event lines)
// ------------------------------------------------------------------------------------------

/// JSON string literal for `s`.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn parse(text: &str) -> Result<Json> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            bail!("trailing data at byte {}", p.i);
        }
        Ok(v)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Num(n) => write!(f, "{n}"),
            Json::Str(s) => f.write_str(&json_str(s)),
            Json::Arr(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Json::Obj(fields) => {
                f.write_str("{")?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{v}", json_str(k))?;
                }
                f.write_str("}")
            }
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Result<()> {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            bail!("expected {:?} at byte {}", b as char, self.i)
        }
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            bail!("bad literal at byte {}", self.i)
        }
    }

    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    fields.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => bail!("expected , or }} at byte {}", self.i),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => bail!("expected , or ] at byte {}", self.i),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'n') => self.lit("null", Json::Null),
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i])?;
                Ok(Json::Num(
                    text.parse().map_err(|_| anyhow!("bad number {text:?}"))?,
                ))
            }
            None => bail!("unexpected end of input"),
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| anyhow!("short \\u escape"))?;
        self.i += 4;
        Ok(u32::from_str_radix(std::str::from_utf8(h)?, 16)?)
    }

    fn string(&mut self) -> Result<String> {
        if self.s.get(self.i) != Some(&b'"') {
            bail!("expected string at byte {}", self.i);
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = *self
                .s
                .get(self.i)
                .ok_or_else(|| anyhow!("unterminated string"))?;
            self.i += 1;
            match b {
                b'"' => return Ok(String::from_utf8(out)?),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or_else(|| anyhow!("bad escape"))?;
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                cp = 0x10000
                                    + ((cp - 0xD800) << 10)
                                    + (lo.wrapping_sub(0xDC00) & 0x3FF);
                            }
                            char::from_u32(cp).unwrap_or('\u{FFFD}')
                        }
                        _ => bail!("bad escape \\{}", e as char),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b => out.push(b),
            }
        }
    }
}

/// A loopback socket address helper: `addr(127, 0, 0, 10, 5222)`.
pub fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}
