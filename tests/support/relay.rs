//! A TCP relay for fault tests: forwards connections to a target and cuts some of them
//! after a random number of bytes from the client, as a flaky network between fedgate and a
//! peer would. It runs on a loopback address of its own and stops when dropped.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct CuttingRelay {
    pub addr: SocketAddr,
    /// Connections cut so far.
    pub cuts: Arc<AtomicUsize>,
    /// While true, no byte passes either way (and none is read): a stalled network.
    stall: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CuttingRelay {
    /// Cuts the first `cuts` connections, each after a number of client bytes drawn from
    /// `after` (seeded, so a failing run can be repeated); later connections pass untouched.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        cuts: usize,
        after: Range<usize>,
        seed: u64,
    ) -> Self {
        Self::run(listen, target, cuts, after, seed, None).await
    }

    /// Passes everything, but client bytes at most at `rate` bytes per second (a slow link).
    pub async fn throttled(listen: SocketAddr, target: SocketAddr, rate: usize) -> Self {
        Self::run(listen, target, 0, 0..1, 0, Some(rate)).await
    }

    async fn run(
        listen: SocketAddr,
        target: SocketAddr,
        cuts: usize,
        after: Range<usize>,
        seed: u64,
        rate: Option<usize>,
    ) -> Self {
        let listener = TcpListener::bind(listen).await.expect("bind relay");
        let addr = listener.local_addr().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        let (stall, stall_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut left = cuts;
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let cut = (left > 0).then(|| {
                    left -= 1;
                    rng.random_range(after.clone())
                });
                let counter = counter.clone();
                let stall = stall_rx.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if relay(client, server, cut, rate, stall).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Self {
            addr,
            cuts: done,
            stall,
            task,
        }
    }

    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }

    /// Stops (true) or resumes (false) every connection in both directions: nothing is read
    /// from either side while stalled, so the senders' writes back up.
    pub fn stall(&self, on: bool) {
        self.stall.send_replace(on);
    }
}

/// Copies `from` to `to` while not stalled.
async fn copy_unless_stalled(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut stall: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        if stall.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stall.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Copies both ways; returns true if it cut the connection.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    cut: Option<usize>,
    rate: Option<usize>,
    mut stall: tokio::sync::watch::Receiver<bool>,
) -> bool {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down_stall = stall.clone();
    let down = tokio::spawn(async move {
        copy_unless_stalled(&mut sr, &mut cw, down_stall).await;
        let _ = cw.shutdown().await;
    });
    let mut buf = vec![0u8; if rate.is_some() { 1024 } else { 4096 }];
    let mut passed = 0usize;
    let mut cut_done = false;
    loop {
        if stall.wait_for(|s| !*s).await.is_err() {
            break;
        }
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stall.wait_for(|s| !*s).await.is_err() {
            break;
        }
        let n = match cut {
            Some(c) if passed + n >= c => {
                // Forward up to the cut point, then drop both connections.
                let _ = sw.write_all(&buf[..c - passed]).await;
                cut_done = true;
                break;
            }
            _ => n,
        };
        if sw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        passed += n;
        if let Some(r) = rate {
            tokio::time::sleep(std::time::Duration::from_secs_f64(n as f64 / r as f64)).await;
        }
    }
    if cut_done {
        down.abort();
        return true;
    }
    let _ = sw.shutdown().await;
    let _ = down.await;
    false
}
