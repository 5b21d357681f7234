//! `fedgate policy check|test|explain` and `fedgate bench policy`: thin glue over
//! `fedgate_policy`; all logic lives in that crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fedgate_policy::{Diagnostic, Direction, Kind, Policy, Request, Severity};

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Parse and lint a policy file (like `visudo -c`): prints `file:line:column: …` findings,
    /// exits 1 on any error.
    Check { file: PathBuf },
    /// Run a test file (`[[case]]` request → expected decision) against a policy; exits 1 if
    /// any case fails.
    Test { file: PathBuf, tests: PathBuf },
    /// Show the decision for one request, the rule that decided it (id and line) and why.
    Explain {
        file: PathBuf,
        /// Sending JID (inbound: the remote JID; outbound: the local one).
        #[arg(long)]
        from: String,
        /// Receiving JID.
        #[arg(long)]
        to: String,
        /// stream, message, presence, subscription, iq, file-transfer, groupchat-invite.
        #[arg(long)]
        kind: String,
        /// inbound or outbound.
        #[arg(long)]
        direction: String,
    },
}

pub fn run(cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Check { file } => check(&file),
        PolicyCmd::Test { file, tests } => test(&file, &tests),
        PolicyCmd::Explain {
            file,
            from,
            to,
            kind,
            direction,
        } => explain(&file, &from, &to, &kind, &direction),
    }
}

fn print_diags(diags: &[Diagnostic]) {
    for d in diags {
        println!("{d}");
    }
}

/// Loads a policy, printing its diagnostics; `None` on errors.
fn load(file: &Path) -> Option<(Policy, Vec<Diagnostic>)> {
    match Policy::load(file) {
        Ok((p, warnings)) => Some((p, warnings)),
        Err(diags) => {
            print_diags(&diags);
            let errors = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            println!(
                "{}: {errors} error{} — policy refused",
                file.display(),
                if errors == 1 { "" } else { "s" }
            );
            None
        }
    }
}

fn check(file: &Path) -> ExitCode {
    let Some((policy, warnings)) = load(file) else {
        return ExitCode::from(1);
    };
    print_diags(&warnings);
    println!(
        "{}: ok ({} rules, {} warning{}, revision {}…)",
        file.display(),
        policy.rule_count(),
        warnings.len(),
        if warnings.len() == 1 { "" } else { "s" },
        &policy.revision()[..16]
    );
    ExitCode::SUCCESS
}

fn test(file: &Path, tests: &Path) -> ExitCode {
    let Some((policy, warnings)) = load(file) else {
        return ExitCode::from(1);
    };
    print_diags(&warnings);
    let text = match std::fs::read_to_string(tests) {
        Ok(t) => t,
        Err(e) => {
            println!("{}:0:0: error: cannot read file: {e}", tests.display());
            return ExitCode::from(1);
        }
    };
    let results = match fedgate_policy::run_tests(&policy, &text, &tests.display().to_string()) {
        Ok(r) => r,
        Err(diags) => {
            print_diags(&diags);
            return ExitCode::from(1);
        }
    };
    let mut failed = 0;
    for r in &results {
        let got_rule = r
            .got
            .rule
            .as_ref()
            .map(|x| format!("rule {}", x.id))
            .unwrap_or_else(|| "default".into());
        let got = format!(
            "{} by {got_rule}",
            if r.got.allow { "allow" } else { "deny" }
        );
        if r.passed {
            println!("PASS {}:{}: {} => {got}", tests.display(), r.line, r.name);
        } else {
            failed += 1;
            println!(
                "FAIL {}:{}: {}: expected {}, got {got} ({})",
                tests.display(),
                r.line,
                r.name,
                r.expected,
                r.got.reason
            );
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn explain(file: &Path, from: &str, to: &str, kind: &str, direction: &str) -> ExitCode {
    let Some(kind) = Kind::parse(kind) else {
        eprintln!(
            "unknown kind `{kind}` (expected stream, message, presence, subscription, iq, file-transfer, groupchat-invite)"
        );
        return ExitCode::from(2);
    };
    let Some(direction) = Direction::parse(direction) else {
        eprintln!("unknown direction `{direction}` (expected inbound or outbound)");
        return ExitCode::from(2);
    };
    let Some((policy, warnings)) = load(file) else {
        return ExitCode::from(1);
    };
    for w in &warnings {
        eprintln!("{w}");
    }
    let (remote, local) = match direction {
        Direction::Inbound => (from, to),
        Direction::Outbound => (to, from),
    };
    let d = policy.explain(&Request {
        remote,
        local,
        kind,
        direction,
    });
    println!("{}", if d.allow { "ALLOW" } else { "DENY" });
    match &d.rule {
        Some(r) => println!("rule: {} (line {})", r.id, r.line),
        None => println!("rule: default"),
    }
    println!("why: {}", d.reason);
    let domain = remote.rsplit('@').next().unwrap_or(remote);
    let domain = domain.split('/').next().unwrap_or(domain);
    let s = policy.domain_settings(domain, direction);
    if s != Default::default() {
        let mut parts = Vec::new();
        if let Some(t) = s.tls {
            parts.push(format!("tls {t:?}").to_lowercase());
        }
        if let (Some(c), Some(db)) = (s.auth_certificate, s.auth_dialback) {
            let mut m = Vec::new();
            if c {
                m.push("certificate");
            }
            if db {
                m.push("dialback");
            }
            parts.push(format!("auth {}", m.join("+")));
        }
        if !s.pins.is_empty() {
            parts.push(format!("{} pin(s)", s.pins.len()));
        }
        if let Some(p) = &s.protocol {
            parts.push(format!("protocol {p}"));
        }
        if let Some(n) = s.max_stanza_bytes {
            parts.push(format!("max_stanza_bytes {n}"));
        }
        if let Some((ps, b)) = s.rate {
            parts.push(format!("rate {ps}/s burst {b}"));
        }
        if let Some(n) = s.max_streams {
            parts.push(format!("max_streams {n}"));
        }
        let from_rule = s
            .rule
            .as_ref()
            .map(|r| format!(" (most specific: rule {} line {})", r.id, r.line))
            .unwrap_or_default();
        println!("{domain} {direction}: {}{from_rule}", parts.join(", "));
    }
    println!("revision: {}", policy.revision());
    ExitCode::SUCCESS
}

/// `fedgate bench policy`: decision cost and reload time with `rules` generated rules.
pub fn bench(rules: usize) -> ExitCode {
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; figures are only meaningful with --release");
    }
    let report = fedgate_policy::bench(rules);
    println!("{report}");
    ExitCode::SUCCESS
}
