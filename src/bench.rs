//! `fedgate bench`: load figures for the gateway, taken over real TLS s2s streams and real
//! XEP-0114 component streams on loopback.
//!
//! - `relay`: two gateways in this process, joined by TLS s2s (SASL EXTERNAL, certificates from
//!   a generated bench CA), with a component on each: sustained stanzas/s each way and latency
//!   percentiles at a fixed offered rate.
//! - `sessions`: N authenticated s2s sessions (STARTTLS + SASL EXTERNAL, one distinct
//!   originating domain each) to a target (a `fedgate run` child, or any s2s server):
//!   sessions/s and resident memory per idle session.
//! - `directory`: intercluster directory full sync to a new peer over TLS, delta propagation
//!   latency, memory of P peers x N users.
//! - `sip`: SIP MESSAGE ⇄ XMPP message translations per second through one gateway (mutual
//!   TLS on the SIP side, a component on the XMPP side).

use std::path::{Path, PathBuf};

mod directory;
mod relay;
mod sessions;
mod sip;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: BenchMode,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchMode {
    /// Policy decision cost and reload time with a generated rule file (compiled index).
    Policy {
        #[arg(long, default_value_t = 10_000)]
        rules: usize,
    },
    /// Two gateways (a.bench.test, b.bench.test) in this process on loopback, joined by real
    /// TLS s2s streams (SASL EXTERNAL with a generated test CA), with a component on each;
    /// measures throughput both ways and latency at a fixed offered rate.
    Relay {
        /// Messages per throughput run (each direction).
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Offered rate (messages/s) of the latency run.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Duration of the latency run (0: no latency run).
        #[arg(long, default_value_t = 5)]
        latency_secs: u64,
        /// Size of each message body.
        #[arg(long, default_value_t = 200)]
        body_bytes: usize,
        /// Which runs: `both` (without and with acknowledgements, side by side), `on` or
        /// `off` (one run; e.g. to count instructions of each under callgrind).
        #[arg(long, default_value = "both", value_parser = ["both", "on", "off"])]
        acks: String,
    },
    /// Open N authenticated s2s sessions (STARTTLS + SASL EXTERNAL, each from a distinct domain
    /// sNNNN.bench.test with one wildcard certificate *.bench.test from a bench CA) to a
    /// target; report sessions/s and, given the target's PID (or when the bench starts the
    /// target itself), RSS per idle session at each step.
    Sessions {
        /// host:port of the target; absent: start `fedgate run` as a child on 127.0.3.10
        /// with a generated config that trusts the bench CA.
        #[arg(long)]
        target: Option<String>,
        /// The target's hosted domain (default target.bench.test for the child).
        #[arg(long)]
        domain: Option<String>,
        /// PID of an external target, to read its resident memory.
        #[arg(long)]
        pid: Option<u32>,
        /// Session counts to reach, in steps.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        counts: Vec<usize>,
        /// Write the bench CA (PEM) here, for an external target to trust (Prosody
        /// `ssl.cafile`, ejabberd `s2s_cafile`), with the client certificate and key beside it
        /// (`<file>.client.crt`, `<file>.client.key`); when they exist already, they are
        /// reused, so a target configured once keeps trusting the bench.
        #[arg(long)]
        ca_out: Option<PathBuf>,
        /// Session setups in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
    /// Intercluster directory: full sync of N users to a new peer over a real TLS link,
    /// delta propagation latency, memory of P peers x N users, conflict index, and stanzas/s
    /// routed over the link (numbered, acknowledged, delivered).
    Directory {
        #[arg(long, default_value_t = 75_000)]
        users: usize,
        #[arg(long, default_value_t = 6)]
        peers: usize,
        #[arg(long, default_value_t = 300)]
        deltas: usize,
        /// Messages routed over the link for the throughput figure.
        #[arg(long, default_value_t = 200_000)]
        routed: usize,
    },
    /// SIP MESSAGE ⇄ XMPP message translations per second through one gateway: a partner edge
    /// (lync.bench.test) over mutual TLS, a component for the local users.
    Sip {
        /// Messages each way.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 200)]
        body_bytes: usize,
        /// Messages in flight at most.
        #[arg(long, default_value_t = 2_000)]
        window: usize,
    },
}

/// Run a bench and print its report. Expects a multi-threaded tokio runtime.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        BenchMode::Policy { rules } => {
            crate::policy_cli::bench(rules);
            Ok(())
        }
        BenchMode::Relay {
            messages,
            rate,
            latency_secs,
            body_bytes,
            acks,
        } => {
            relay::run(relay::RelayOpts {
                messages,
                rate,
                latency_secs,
                body_bytes,
                acks: match acks.as_str() {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                },
            })
            .await
        }
        BenchMode::Sessions {
            target,
            domain,
            pid,
            counts,
            ca_out,
            concurrency,
        } => {
            sessions::run(sessions::SessionOpts {
                target,
                domain,
                pid,
                counts,
                ca_out,
                concurrency: concurrency.max(1),
            })
            .await
        }
        BenchMode::Directory {
            users,
            peers,
            deltas,
            routed,
        } => {
            directory::run(directory::DirectoryOpts {
                users,
                peers,
                deltas,
                routed,
            })
            .await
        }
        BenchMode::Sip {
            messages,
            body_bytes,
            window,
        } => {
            sip::run(sip::SipOpts {
                messages,
                body_bytes,
                window,
            })
            .await
        }
    }
}

pub(crate) fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time this process has used so far (user + system), from /proc (10 ms resolution).
pub(crate) fn cpu_time() -> Option<std::time::Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports clock ticks of USER_HZ, which is 100 on Linux.
    Some(std::time::Duration::from_millis(ticks * 10))
}

/// `n` with thousands separators.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The value at quantile `q` of sorted `v`.
pub(crate) fn quantile(v: &[u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert!(rss_kib(std::process::id()).is_some());
    }
}
