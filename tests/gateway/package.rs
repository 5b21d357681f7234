//! The Debian package (`deploy/build-deb.sh`, `[package.metadata.deb]`), installed into this
//! machine's real system, checked as an operator would, and purged; and the installed default
//! config and the compose file's settings, checked without it.
//!
//! The package is made from the binary this test run already built (`--no-build --profile dev`,
//! `--fast` compression): the package's layout, maintainer scripts, unit and assets are what is
//! under test, and a release build would add about 8 minutes. Releases use
//! `deploy/build-deb.sh` (release profile).
//!
//! Why the real system and not `dpkg --root`/`--instdir`: with `--root`, dpkg runs the
//! maintainer scripts chrooted into the new root, which then needs a whole Debian system
//! (sh, adduser, dpkg-statoverride, getent); with `--instdir` they run against the real root
//! while the files land elsewhere. Neither tests what an operator's `dpkg -i` does. So this
//! test needs root (CI runs as root) or passwordless sudo, refuses to run when a fedgate
//! package is already installed (it would purge someone's installation), and purges what it
//! installed, also when it fails half-way; the fedgate system user is removed again if the
//! test made it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `program` as root: directly when we are root, else through `sudo -n`.
fn as_root(program: &str) -> Command {
    let uid = run(Command::new("id").arg("-u"));
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args([
            "-c",
            &format!("PATH=\"$PATH:/usr/sbin:/sbin\" command -v {tool}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: run scripts/install-test-deps.sh (a missing tool is a failure, not a skip)"
    );
}

fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "fedgate"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn user_exists() -> bool {
    Command::new("getent")
        .args(["passwd", "fedgate"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Purges the package when dropped (also after a failed assertion), and removes the fedgate
/// user and group if this test made them.
struct Installed {
    user_was_there: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = as_root("dpkg").args(["--purge", "fedgate"]).output();
        if !self.user_was_there && user_exists() {
            let _ = as_root("userdel").arg("fedgate").output();
            let _ = as_root("groupdel").arg("fedgate").output();
        }
    }
}

fn gunzip(path: &str) -> String {
    ok(Command::new("gzip").args(["-dc", path]))
}

fn read(path: impl AsRef<Path>) -> String {
    let p = path.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_debian_package_installs_checks_and_purges() {
    for tool in [
        "cargo-deb",
        "dpkg",
        "dpkg-deb",
        "systemd-analyze",
        "man",
        "runuser",
    ] {
        require(tool);
    }
    assert!(
        !package_installed(),
        "a fedgate package is installed on this machine; this test installs and purges its \
         own, so remove that one first (dpkg --purge fedgate)"
    );
    // The binary of this test run: <target>/debug/fedgate.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_fedgate"));
    let target_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let out_dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    ok(Command::new("bash")
        .arg(Path::new(REPO).join("deploy/build-deb.sh"))
        .args(["--no-build", "--profile", "dev", "--output"])
        .arg(out_dir.path())
        .args(["--", "--fast"])
        .env("CARGO_TARGET_DIR", &target_dir));
    let built_in = started.elapsed();
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote a .deb");
    let depends = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    assert!(depends.contains("adduser"), "{depends}");
    let size = std::fs::metadata(&deb).unwrap().len();
    eprintln!(
        "package: {} ({} KiB, made in {:.1?})",
        deb.display(),
        size / 1024,
        built_in
    );

    let guard = Installed {
        user_was_there: user_exists(),
    };
    ok(as_root("dpkg").arg("-i").arg(&deb));

    // The binary, and the installed config as the service would read it.
    let version = ok(Command::new("/usr/bin/fedgate").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("fedgate {}", env!("CARGO_PKG_VERSION"))
    );
    let check = ok(Command::new("/usr/bin/fedgate").args([
        "check-config",
        "--config",
        "/etc/fedgate/fedgate.toml",
    ]));
    assert_eq!(
        check.trim(),
        "/etc/fedgate/fedgate.toml: ok (1 hosted domain(s), policy /etc/fedgate/policy.toml (0 rules))"
    );
    // The service user exists and can read /etc/fedgate; other users cannot.
    ok(as_root("runuser").args([
        "-u",
        "fedgate",
        "--",
        "/usr/bin/fedgate",
        "check-config",
        "--config",
        "/etc/fedgate/fedgate.toml",
    ]));
    let nobody =
        run(as_root("runuser").args(["-u", "nobody", "--", "cat", "/etc/fedgate/fedgate.toml"]));
    assert!(!nobody.status.success(), "{}", text(&nobody));
    let stat = ok(Command::new("stat").args(["-c", "%U:%G %a", "/etc/fedgate"]));
    assert_eq!(stat.trim(), "root:fedgate 750");
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "fedgate"]));
    for f in ["/etc/fedgate/fedgate.toml", "/etc/fedgate/policy.toml"] {
        assert!(conffiles.contains(f), "{f} is a conffile: {conffiles}");
    }
    assert_eq!(
        read("/etc/fedgate/fedgate.toml"),
        read(Path::new(REPO).join("examples/package/fedgate.toml"))
    );

    // Man pages and completions, made from the same clap definitions.
    let man = gunzip("/usr/share/man/man1/fedgate.1.gz");
    assert!(man.contains(".TH fedgate 1"), "{man}");
    assert!(man.contains("check\\-config"), "{man}");
    let man_check = gunzip("/usr/share/man/man1/fedgate-check-config.1.gz");
    assert!(man_check.contains("\\-\\-config"), "{man_check}");
    let found = ok(Command::new("man").args(["-w", "fedgate-policy-check"]));
    assert_eq!(
        found.trim(),
        "/usr/share/man/man1/fedgate-policy-check.1.gz"
    );
    let bash = read("/usr/share/bash-completion/completions/fedgate");
    assert!(
        bash.contains("complete -F _fedgate") && bash.contains("check-config"),
        "{bash}"
    );
    assert!(read("/usr/share/zsh/vendor-completions/_fedgate").starts_with("#compdef fedgate"));
    assert!(
        read("/usr/share/fish/vendor_completions.d/fedgate.fish").contains("complete -c fedgate")
    );
    for (installed, source) in [
        (
            "/usr/share/fedgate/grafana/fedgate-dashboard.json",
            "deploy/grafana/fedgate-dashboard.json",
        ),
        (
            "/usr/share/fedgate/prometheus/fedgate-alerts.yml",
            "deploy/prometheus/fedgate-alerts.yml",
        ),
    ] {
        assert_eq!(read(installed), read(Path::new(REPO).join(source)));
    }

    // The unit: installed, not enabled (the operator configures first), and valid.
    let unit = "/usr/lib/systemd/system/fedgate.service";
    assert_eq!(
        read(unit),
        read(Path::new(REPO).join("deploy/debian/fedgate.service"))
    );
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/fedgate.service").exists());
    let verify = run(Command::new("systemd-analyze").args(["verify", unit]));
    let complaints: Vec<&str> = std::str::from_utf8(&verify.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.contains("fedgate"))
        .collect();
    assert!(
        verify.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );

    // Purge: everything goes but the user (kept, as Debian does; the guard removes it if this
    // test made it).
    ok(as_root("dpkg").args(["--purge", "fedgate"]));
    for gone in [
        "/usr/bin/fedgate",
        "/etc/fedgate",
        unit,
        "/usr/share/fedgate",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    let over = run(Command::new("dpkg-statoverride").args(["--list", "/etc/fedgate"]));
    assert!(!over.status.success(), "statoverride left: {}", text(&over));
    drop(guard);
    eprintln!("package test: {:.1?} in all", started.elapsed());
}

/// The config the package and the image install: it loads, names its policy, and the policy
/// checks with no error.
#[test]
fn the_installed_default_config_checks() {
    let dir = Path::new(REPO).join("examples/package");
    let cfg =
        fedgate::config::Config::load(&dir.join("fedgate.toml"), &fedgate::config::Env::new())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.domains.len(), 1);
    assert_eq!(cfg.log.format, "text");
    let policy = cfg.policy.file.as_ref().expect("a policy file");
    assert_eq!(policy, &dir.join("policy.toml"));
    fedgate_policy::Policy::load(policy).unwrap_or_else(|d| panic!("{d:?}"));
}

/// The compose file sets fedgate's settings through FEDGATE__ variables: each one is a key the
/// config accepts (an unknown key is an error), with the values the compose file gives.
#[test]
fn the_compose_files_settings_are_keys_fedgate_accepts() {
    let compose = read(Path::new(REPO).join("deploy/compose/compose.yml"));
    let mut env = fedgate::config::Env::new();
    for l in compose.lines() {
        let l = l.trim();
        if let Some((k, v)) = l.split_once(": ")
            && k.starts_with("FEDGATE__")
        {
            // ${FEDGATE_DIALBACK_SECRET:?…} is the operator's secret.
            let v = if v.starts_with("${") {
                "a-secret-of-at-least-16-characters"
            } else {
                v
            };
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    assert_eq!(env.len(), 3, "{env:?}");
    let p = Path::new(REPO).join("examples/package/fedgate.toml");
    let cfg = fedgate::config::Config::load(&p, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.s2s.dialback_secret.as_deref(),
        Some("a-secret-of-at-least-16-characters")
    );
    assert_eq!(cfg.metrics.listen.as_deref(), Some("0.0.0.0:9269"));
    assert_eq!(cfg.components.listen.as_deref(), Some("0.0.0.0:5347"));
}
