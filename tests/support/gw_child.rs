//! A gateway as a child process (the built `fedgate` binary), for tests that kill it.
//!
//! Include from an integration test of the fedgate package beside `support.rs`:
//! `#[path = "../support/gw_child.rs"] mod gw_child;`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::support::GwSpec;

/// GET a path from an HTTP listener at `addr` (a gateway's metrics endpoint); None if it does
/// not answer.
pub async fn http_get_at(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// A gateway as a child process: the built `fedgate` binary running `fedgate run` with
/// [`GwSpec::toml`] written to a file, on the spec's own loopback address. Stopped by PID:
/// [`GwChild::kill`] is a crash (SIGKILL), dropping it stops it with SIGTERM (then SIGKILL).
pub struct GwChild {
    child: std::process::Child,
    pub ip: Ipv4Addr,
    config: PathBuf,
    dir: tempfile::TempDir,
    /// Processes started so far (1, then one more per restart).
    runs: u32,
}

impl GwChild {
    pub async fn start(spec: &GwSpec) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fedgate-child-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("fedgate.toml");
        std::fs::write(&config, spec.toml()).unwrap();
        let child = Self::spawn(&config, dir.path(), 1);
        let mut g = Self {
            child,
            ip: spec.ip,
            config,
            dir,
            runs: 1,
        };
        g.wait_ready().await;
        g
    }

    fn spawn(config: &std::path::Path, dir: &std::path::Path, run: u32) -> std::process::Child {
        let log = std::fs::File::create(dir.join(format!("fedgate.{run}.log"))).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Waits until the s2s, component and metrics listeners accept connections.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for port in [5269, 5347, 9269] {
            let addr = SocketAddr::new(self.ip.into(), port);
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("fedgate exited at start ({status}):\n{}", self.log_text());
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "fedgate not listening on {addr}:\n{}",
                    self.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by PID, as a crash: nothing is flushed, no stream is closed.
    pub fn kill(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts the gateway again with the same config after [`Self::kill`].
    pub async fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "fedgate is still running"
        );
        self.runs += 1;
        self.child = Self::spawn(&self.config, self.dir.path(), self.runs);
        self.wait_ready().await;
    }

    pub fn component_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), 5347)
    }

    pub async fn http_get(&self, path: &str) -> String {
        http_get_at(SocketAddr::new(self.ip.into(), 9269), path)
            .await
            .unwrap_or_default()
    }

    /// The logs of every run so far.
    pub fn log_text(&self) -> String {
        (1..=self.runs)
            .map(|r| {
                let p = self.dir.path().join(format!("fedgate.{r}.log"));
                format!(
                    "--- fedgate run {r} ---\n{}",
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for GwChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
