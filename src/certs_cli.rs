//! `fedgate certs check` (the own certificates of every hosted domain, with the same checks
//! as hot reload) and `fedgate certs generate` (self-signed or test-CA certificates for labs
//! and tests).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use fedgate_certs::TrustAnchors;
use fedgate_certs::check::{CheckOptions, check_identity, ymd};
use fedgate_certs::dev::{LeafSpec, TestCa};

use crate::config::{Config, process_env};

const DAY: i64 = 86_400;

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// For every hosted domain: certificate present, key matches, chain verifies against the
    /// configured anchors, SANs cover the domain and its aliases, days until expiry.
    /// Exit 0 when all is well, 1 on any problem, 2 for a bad config.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a certificate and key for labs and tests: self-signed, or with --ca signed by a
    /// small test CA (ca.crt/ca.key in DIR, made on first use and reused afterwards).
    Generate {
        /// A DNS name for the certificate (repeatable; the first names the files and is the CN).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Directory to write to (created when missing).
        #[arg(long)]
        out: PathBuf,
        /// Sign with the test CA in DIR (ca.crt, ca.key) instead of self-signing.
        #[arg(long)]
        ca: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

pub fn run(cmd: CertsCmd) -> ExitCode {
    match cmd {
        CertsCmd::Check { config } => check(&config),
        CertsCmd::Generate {
            domains,
            out,
            ca,
            days,
        } => match generate(&domains, &out, ca, days) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fedgate: certs generate: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// The lines `certs check` prints for a loaded config, and whether any problem was found.
pub fn check_config(cfg: &Config, anchors: Arc<TrustAnchors>, now: i64) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut problems = false;
    for d in &cfg.domains {
        match (&d.cert, &d.key) {
            (Some(c), Some(k)) => {
                let opts = CheckOptions {
                    anchors: anchors.clone(),
                    allow_self_signed: d.self_signed,
                    min_days: cfg.tls.min_days,
                    now,
                };
                let report = check_identity(&d.name, &d.aliases, c, k, &opts);
                problems |= !report.problems.is_empty();
                lines.extend(report.lines());
            }
            _ => lines.push(format!(
                "{}: ok (self-signed certificate generated at start, development only)",
                d.name
            )),
        }
    }
    (lines, problems)
}

fn check(config: &Path) -> ExitCode {
    let cfg = match Config::load(config, &process_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fedgate: {e}");
            return ExitCode::from(2);
        }
    };
    let anchors = match TrustAnchors::new(cfg.tls.system_roots, &cfg.tls.trust_anchors) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("fedgate: {}: tls.trust_anchors: {e}", cfg.source);
            return ExitCode::from(2);
        }
    };
    let (lines, problems) = check_config(&cfg, anchors, fedgate_certs::unix_now());
    for l in lines {
        println!("{l}");
    }
    if problems {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A key is created private (0600) from the start; a watcher reloading the files never reads
/// half of one.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    let mode = if secret { 0o600 } else { 0o644 };
    fedgate_certs::durable::replace(path, text.as_bytes(), mode)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes the files and returns what `certs generate` prints.
pub fn generate(
    domains: &[String],
    out: &Path,
    ca: bool,
    days: i64,
) -> Result<Vec<String>, String> {
    let Some(first) = domains.first() else {
        return Err("no --domain given".to_owned());
    };
    if days < 1 {
        return Err("--days must be at least 1".to_owned());
    }
    for d in domains {
        if d.is_empty() || !d.is_ascii() || d.contains(['/', '@', ' ']) {
            return Err(format!("'{d}' is not a DNS name (use A-labels for IDNs)"));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut lines = Vec::new();
    let names: Vec<&str> = domains.iter().map(String::as_str).collect();
    let (chain, key, how) = if ca {
        let (ca_crt, ca_key) = (out.join("ca.crt"), out.join("ca.key"));
        let test_ca = match (ca_crt.exists(), ca_key.exists()) {
            (true, true) => {
                let read = |p: &Path| {
                    std::fs::read_to_string(p)
                        .map_err(|e| format!("cannot read {}: {e}", p.display()))
                };
                let ca = TestCa::from_pem(&read(&ca_crt)?, &read(&ca_key)?)
                    .map_err(|e| format!("{}: {e}", ca_crt.display()))?;
                lines.push(format!("using the test CA {}", ca_crt.display()));
                ca
            }
            (false, false) => {
                let ca = TestCa::new("fedgate test CA").map_err(|e| e.to_string())?;
                write(&ca_crt, &ca.cert_pem(), false)?;
                write(&ca_key, &ca.key_pem(), true)?;
                lines.push(format!(
                    "wrote {} and {} (a new test CA; use ca.crt as tls.trust_anchors)",
                    ca_crt.display(),
                    ca_key.display()
                ));
                ca
            }
            _ => {
                return Err(format!(
                    "{} and {} go together: found only one",
                    ca_crt.display(),
                    ca_key.display()
                ));
            }
        };
        let spec = LeafSpec {
            not_after: Some(fedgate_certs::unix_now() + days * DAY),
            ..LeafSpec::dns(&names)
        };
        let (c, k) = test_ca.issue(&spec).map_err(|e| e.to_string())?;
        (c, k, "signed by the test CA")
    } else {
        let (c, k) =
            fedgate_certs::dev::self_signed_days(&names, days).map_err(|e| e.to_string())?;
        (c, k, "self-signed")
    };
    let (crt_path, key_path) = (
        out.join(format!("{first}.crt")),
        out.join(format!("{first}.key")),
    );
    write(&crt_path, &chain, false)?;
    write(&key_path, &key, true)?;
    lines.push(format!(
        "wrote {} and {} ({how}, DNS names {}, expires {})",
        crt_path.display(),
        key_path.display(),
        domains.join(", "),
        ymd(fedgate_certs::unix_now() + days * DAY)
    ));
    Ok(lines)
}
