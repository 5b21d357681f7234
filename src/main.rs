//! The `fedgate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fedgate::config::{Config, process_env};
use fedgate::gateway::Gateway;

#[derive(Parser)]
#[command(
    name = "fedgate",
    version,
    about = "Federation gateway for XMPP server-to-server federation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (without --config: a development domain on loopback).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the main job working: an in-process DNS server and two gateways on loopback with
    /// components attached exchange messages and a presence subscription.
    Demo(fedgate::demo::DemoArgs),
    /// Check federation with a remote domain: SRV records, connect, TLS, certificate, auth methods.
    Probe(fedgate::probe::ProbeArgs),
    /// Check, test and explain federation policy files.
    Policy {
        #[command(subcommand)]
        cmd: fedgate::policy_cli::PolicyCmd,
    },
    /// Check the own certificates of every hosted domain, or generate lab/test certificates.
    Certs {
        #[command(subcommand)]
        cmd: fedgate::certs_cli::CertsCmd,
    },
    /// Load figures: s2s relay throughput and latency, s2s sessions/s and memory per idle
    /// session, policy decision cost.
    Bench(fedgate::bench::BenchArgs),
    /// The intercluster directory of a running gateway (peers, lookup, conflicts, assign),
    /// through its HTTP endpoint.
    Directory(fedgate::directory_cli::DirectoryArgs),
    /// The cluster a running gateway is a node of (nodes, leases, attached services, the
    /// store's health), through its HTTP endpoint.
    Cluster(fedgate::cluster::cli::ClusterArgs),
    /// Check a config file and exit (non-zero with file: key: problem on error).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    // Colour only on a terminal: journald and log files get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// `check-config` after the config itself loaded: the policy files it names must check too,
/// since a policy file that does not check stops the start.
fn check_policy_files(c: &Config) -> ExitCode {
    let mut policies = Vec::new();
    for f in c.policy.file.iter().chain(c.policy.shadow_file.iter()) {
        match fedgate_policy::Policy::load(f) {
            Ok((p, _warnings)) => {
                policies.push(format!("{} ({} rules)", f.display(), p.rule_count()))
            }
            Err(diags) => {
                for d in diags {
                    eprintln!("fedgate: {d}");
                }
                eprintln!(
                    "fedgate: {}: policy.file: the policy does not check",
                    c.source
                );
                return ExitCode::from(2);
            }
        }
    }
    let policies = if policies.is_empty() {
        String::new()
    } else {
        format!(", policy {}", policies.join(", "))
    };
    println!(
        "{}: ok ({} hosted domain(s){policies})",
        c.source,
        c.domains.len()
    );
    ExitCode::SUCCESS
}

fn load(config: Option<&PathBuf>) -> Result<Config, String> {
    match config {
        Some(p) => Config::load(p, &process_env()).map_err(|e| e.to_string()),
        None => Ok(Config::dev()),
    }
}

/// The packaging hook `fedgate generate-assets DIR`: the man pages and shell completions of
/// the command line below. It stays outside the clap definitions so that it appears in no help,
/// man page or completion (clap_complete lists hidden subcommands too).
fn generate_assets(args: &[std::ffi::OsString]) -> ExitCode {
    let [out] = args else {
        eprintln!("usage: fedgate generate-assets DIR");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    match fedgate::dist_assets::write(Cli::command(), &out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fedgate: generate-assets: {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "generate-assets") {
        return generate_assets(&args[2..]);
    }
    let cli = Cli::parse_from(args);
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(Some(&config)) {
            Ok(c) => check_policy_files(&c),
            Err(e) => {
                eprintln!("fedgate: {e}");
                ExitCode::from(2)
            }
        },

        Cmd::Bench(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(fedgate::bench::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fedgate: bench: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Policy { cmd } => fedgate::policy_cli::run(cmd),
        Cmd::Directory(args) => fedgate::directory_cli::run(args),
        Cmd::Cluster(args) => fedgate::cluster::cli::run(args),
        Cmd::Certs { cmd } => fedgate::certs_cli::run(cmd),
        Cmd::Probe(args) => ExitCode::from(fedgate::probe::cli(args)),
        Cmd::Demo(args) => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(fedgate::demo::run(args)) {
                Ok(transcript) => {
                    print!("{transcript}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fedgate demo: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fedgate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(&cfg);
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(async move {
                let gw = match Gateway::start(&cfg).await {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("fedgate: {e:#}");
                        return ExitCode::from(1);
                    }
                };
                wait_for_signal(&gw).await;
                tracing::info!("shutting down");
                gw.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}

/// Until SIGINT/SIGTERM; SIGHUP reloads the policy files and the own certificates.
async fn wait_for_signal(gw: &Gateway) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                let _ = gw.policy.reload("SIGHUP");
                let _ = gw.reload_certs("SIGHUP");
            }
        }
    }
}
