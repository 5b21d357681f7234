//! Test launcher for a real `redis-server` on loopback (Debian's redis-server 7.0), the
//! cluster store.
//!
//! Include from an integration test with
//! `#[path = "../support/redis.rs"] mod redis_server;` (path relative to the including file).
//! Dependencies: std, tempfile.
//!
//! [`Redis::start`] runs `redis-server` in the foreground as a child with everything on the
//! command line (no config file, no persistence: `save ""`, `appendonly no`), in a temp dir of
//! its own, bound to one loopback address and port, optionally with a password and with TLS
//! only (`tls-port`, `port 0`). It waits until the port accepts connections.
//! [`Redis::stop`] ends it by PID (SIGTERM, then SIGKILL after 10 s); [`Redis::kill`] is a
//! crash (SIGKILL); [`Redis::restart`] starts it again on the same address, port and options
//! (empty: nothing was persisted). `Drop` stops it by PID and removes the temp dir unless
//! `FEDGATE_KEEP_PEER_DIRS=1`.
//!
//! A missing `redis-server` panics with the install hint (never a skip).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// TLS files for a `rediss://` instance.
#[derive(Clone)]
pub struct RedisTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A running (or stopped) redis-server child.
pub struct Redis {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    addr: SocketAddr,
    password: Option<String>,
    tls: Option<RedisTls>,
    runs: u32,
}

fn binary() -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    panic!("redis-server is not installed: {INSTALL_HINT}");
}

impl Redis {
    /// Starts redis-server on `addr` (a loopback address), with `password` (`requirepass`)
    /// and TLS only when `tls` is given.
    pub fn start(addr: SocketAddr, password: Option<&str>, tls: Option<RedisTls>) -> Redis {
        assert!(
            addr.ip().is_loopback(),
            "redis test instances bind to loopback only"
        );
        let dir = tempfile::Builder::new()
            .prefix("fedgate-redis-")
            .tempdir()
            .expect("a temp dir for redis");
        let mut r = Redis {
            child: None,
            dir: Some(dir),
            addr,
            password: password.map(str::to_owned),
            tls,
            runs: 0,
        };
        r.spawn();
        r
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = self.dir().join(format!("redis.{}.log", self.runs));
        let mut cmd = Command::new(binary());
        let port = self.addr.port().to_string();
        cmd.arg("--bind")
            .arg(self.addr.ip().to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--databases", "4"])
            .arg("--dir")
            .arg(self.dir())
            .arg("--logfile")
            .arg(&log);
        match &self.tls {
            Some(t) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &port]);
            }
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e} ({INSTALL_HINT})"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server exited at start ({status}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not listening on {}:\n{}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://IP:PORT` or `rediss://HOST:PORT` (TLS: the host the certificate names).
    pub fn url(&self, tls_host: &str) -> String {
        match &self.tls {
            Some(_) => format!("rediss://{tls_host}:{}", self.addr.port()),
            None => format!("redis://{}", self.addr),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// SIGTERM by PID, SIGKILL after the grace time; waits for the exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL by PID, as a crash.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts it again (after [`Self::stop`] or [`Self::kill`]) on the same address and port,
    /// empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn();
    }

    /// Every log of this instance so far.
    pub fn log_text(&self) -> String {
        (1..=self.runs)
            .map(|r| {
                let p = self.dir().join(format!("redis.{r}.log"));
                format!(
                    "--- redis run {r} ---\n{}",
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("FEDGATE_KEEP_PEER_DIRS").is_some_and(|v| v == "1")
            && let Some(d) = self.dir.take()
        {
            eprintln!("keeping {}", d.keep().display());
        }
    }
}
