//! Test launcher for a real OpenLDAP `slapd` on loopback (Debian's slapd 2.5).
//!
//! Include from an integration test with
//! `#[path = "../../tests/support/slapd.rs"] mod slapd;` (path relative to the including file).
//! Dependencies: std, anyhow, tempfile.
//!
//! [`Slapd::start`] writes a minimal `slapd.conf` (core, cosine and inetorgperson schemas from
//! `/etc/ldap/schema`, one mdb database for `suffix` with a plaintext `rootpw`, everything
//! readable, `userPassword` usable only for binds) into a fresh temp dir, starts
//! `slapd -d none -f slapd.conf -h ldap://IP:PORT/` as a foreground child, waits until it accepts
//! connections and adds the suffix entry. Nothing else is configured: in particular slapd's
//! default size limit (500 entries per search for everyone but the rootdn) is in force, and it
//! also caps the total of a paged search (`size.prtotal` defaults to the hard limit); extra
//! database directives such as `limits ... size.prtotal=unlimited` can be passed to
//! [`Slapd::start_with_directives`].
//!
//! [`Slapd::add_ldif`] and [`Slapd::modify`] run `ldapadd` / `ldapmodify` against the running
//! server as the rootdn. `Drop` stops slapd by PID (SIGTERM, SIGKILL after 10 s) and removes the
//! temp dir unless `FEDGATE_KEEP_PEER_DIRS=1`.
//!
//! A missing binary panics with the install hint (tests are never skipped silently). Use
//! addresses 127.0.4.x only (other test binaries use other 127.0.x.y ranges).
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const SCHEMA_DIR: &str = "/etc/ldap/schema";
const MODULE_DIR: &str = "/usr/lib/ldap";

/// A running slapd child process and its temp dir.
pub struct Slapd {
    child: Child,
    dir: Option<tempfile::TempDir>,
    url: String,
    suffix: String,
    admin_dn: String,
    password_file: PathBuf,
    ldapadd: PathBuf,
    ldapmodify: PathBuf,
}

impl Slapd {
    /// Starts slapd serving `suffix` (e.g. `dc=example,dc=test`) on `ldap://ip:port/` only,
    /// with rootdn `cn=admin,<suffix>` / `admin_password`, and creates the suffix entry.
    /// `ip` must be a loopback address (127.0.0.0/8).
    pub fn start(ip: Ipv4Addr, port: u16, suffix: &str, admin_password: &str) -> Result<Slapd> {
        Self::start_with_directives(ip, port, suffix, admin_password, &[])
    }

    /// Like [`Slapd::start`], with extra slapd.conf lines appended to the database section,
    /// e.g. `limits dn.exact="cn=svc,dc=example,dc=test" size.prtotal=unlimited`.
    pub fn start_with_directives(
        ip: Ipv4Addr,
        port: u16,
        suffix: &str,
        admin_password: &str,
        db_directives: &[&str],
    ) -> Result<Slapd> {
        let slapd_bin = require_binary("slapd");
        let ldapadd = require_binary("ldapadd");
        let ldapmodify = require_binary("ldapmodify");
        if !ip.is_loopback() {
            bail!("slapd test instances bind to 127.0.0.0/8 only, not {ip}");
        }
        if admin_password.is_empty() || admin_password.contains(['\n', '\r']) {
            bail!("the slapd admin password must be one non-empty line");
        }
        let suffix_entry = suffix_entry_ldif(suffix)?;

        let dir = tempfile::Builder::new()
            .prefix("fedgate-slapd-")
            .tempdir()
            .context("creating the slapd temp dir")?;
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("db")).context("creating the slapd db dir")?;
        let admin_dn = format!("cn=admin,{suffix}");
        let mut conf = slapd_conf(&root, suffix, &admin_dn, admin_password);
        for line in db_directives {
            if line.contains(['\n', '\r']) {
                bail!("slapd.conf directive {line:?} must be one line");
            }
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = root.join("slapd.conf");
        std::fs::write(&conf_path, conf).context("writing slapd.conf")?;
        // ldapadd/ldapmodify read the password from a file (-y): no trailing newline.
        let password_file = root.join("admin.pw");
        std::fs::write(&password_file, admin_password).context("writing admin.pw")?;
        let log_path = root.join("slapd.log");
        let log = std::fs::File::create(&log_path).context("creating slapd.log")?;
        let log_err = log.try_clone().context("cloning the slapd.log handle")?;

        let url = format!("ldap://{ip}:{port}/");
        let child = Command::new(&slapd_bin)
            // Foreground; "none" still logs errors (LDAP_DEBUG_ANY) to slapd.log.
            .arg("-d")
            .arg("none")
            .arg("-f")
            .arg(&conf_path)
            .arg("-h")
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("spawning {}", slapd_bin.display()))?;
        let mut slapd = Slapd {
            child,
            dir: Some(dir),
            url: format!("ldap://{ip}:{port}"),
            suffix: suffix.to_owned(),
            admin_dn,
            password_file,
            ldapadd,
            ldapmodify,
        };
        slapd
            .wait_ready(SocketAddrV4::new(ip, port), &log_path)
            .with_context(|| format!("starting slapd on {url}"))?;
        slapd
            .add_ldif(&suffix_entry)
            .context("adding the suffix entry")?;
        Ok(slapd)
    }

    /// `ldap://IP:PORT` of this instance.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The suffix this instance serves.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The rootdn (`cn=admin,<suffix>`), which has no size limits.
    pub fn admin_dn(&self) -> &str {
        &self.admin_dn
    }

    /// PID of the slapd child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The instance's temp dir (config, database, `slapd.log`).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// Adds the entries of `ldif` (plain entries, no changetype needed) as the rootdn.
    pub fn add_ldif(&self, ldif: &str) -> Result<()> {
        self.run_ldap_tool(&self.ldapadd, ldif)
            .context("ldapadd failed")
    }

    /// Applies an LDIF of change records (`changetype: add|modify|delete|modrdn`) as the rootdn.
    pub fn modify(&self, ldif: &str) -> Result<()> {
        self.run_ldap_tool(&self.ldapmodify, ldif)
            .context("ldapmodify failed")
    }

    /// Stops slapd (SIGTERM by PID, SIGKILL after 10 s) and removes its temp dir.
    pub fn stop(self) {
        drop(self)
    }

    fn run_ldap_tool(&self, tool: &Path, ldif: &str) -> Result<()> {
        let mut child = Command::new(tool)
            .arg("-x")
            .arg("-H")
            .arg(&self.url)
            .arg("-D")
            .arg(&self.admin_dn)
            .arg("-y")
            .arg(&self.password_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", tool.display()))?;
        let mut stdin = child.stdin.take().context("tool stdin")?;
        // Write on a thread so a tool that stops reading early cannot dead-lock us.
        let input = ldif.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", tool.display()))?;
        let write_result = writer.join();
        if !out.status.success() {
            bail!(
                "{} exited with {}: {}",
                tool.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        match write_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e).context("writing LDIF to the tool"),
            Err(_) => bail!("the LDIF writer thread panicked"),
        }
    }

    fn wait_ready(&mut self, addr: SocketAddrV4, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling slapd")? {
                bail!(
                    "slapd exited early with {status}; log:\n{}",
                    read_log(log_path)
                );
            }
            // The port must be open *and* held by our child: another process (say a second
            // run of the same test binary) may already listen there, and our slapd will then
            // exit with "Address already in use".
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
                && listens_on(self.child.id(), addr)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "slapd did not accept connections on {addr} within {START_TIMEOUT:?}; log:\n{}",
                    read_log(log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        stop_child(&mut self.child, STOP_GRACE);
        if let Some(dir) = self.dir.take().filter(|_| keep_dirs()) {
            eprintln!("keeping slapd dir {}", dir.keep().display());
        }
    }
}

fn slapd_conf(root: &Path, suffix: &str, admin_dn: &str, admin_password: &str) -> String {
    let root = root.display();
    let suffix = quote(suffix);
    let admin_dn = quote(admin_dn);
    let password = quote(admin_password);
    format!(
        "include {SCHEMA_DIR}/core.schema\n\
         include {SCHEMA_DIR}/cosine.schema\n\
         include {SCHEMA_DIR}/inetorgperson.schema\n\
         pidfile {root}/slapd.pid\n\
         argsfile {root}/slapd.args\n\
         modulepath {MODULE_DIR}\n\
         moduleload back_mdb\n\
         database mdb\n\
         maxsize 268435456\n\
         suffix {suffix}\n\
         rootdn {admin_dn}\n\
         rootpw {password}\n\
         directory {root}/db\n\
         index objectClass eq\n\
         access to attrs=userPassword by self write by anonymous auth by * none\n\
         access to * by * read\n"
    )
}

/// Double-quoted slapd.conf argument.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// LDIF for the suffix entry, from its first RDN (`dc=`, `o=` or `ou=`).
fn suffix_entry_ldif(suffix: &str) -> Result<String> {
    let first = suffix.split(',').next().unwrap_or_default();
    let Some((attr, value)) = first.split_once('=') else {
        bail!("suffix {suffix:?} does not start with an attr=value RDN");
    };
    let attr = attr.trim().to_ascii_lowercase();
    let value = value.trim();
    let body = match attr.as_str() {
        "dc" => format!(
            "objectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: {value}\no: {value}\n"
        ),
        "o" => format!("objectClass: top\nobjectClass: organization\no: {value}\n"),
        "ou" => format!("objectClass: top\nobjectClass: organizationalUnit\nou: {value}\n"),
        other => bail!("unsupported suffix RDN type {other:?} (use dc=, o= or ou=)"),
    };
    Ok(format!("dn: {suffix}\n{body}"))
}

/// Whether process `pid` holds the listening TCP socket for `addr` (Linux /proc).
fn listens_on(pid: u32, addr: SocketAddrV4) -> bool {
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A TCP port on `ip` that is free right now (bind to port 0, read it, release it).
pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let listener = std::net::TcpListener::bind(SocketAddrV4::new(ip, 0))
        .with_context(|| format!("binding {ip}:0"))?;
    Ok(listener.local_addr()?.port())
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

fn keep_dirs() -> bool {
    std::env::var_os("FEDGATE_KEEP_PEER_DIRS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Absolute path of an installed binary (PATH, then /usr/sbin, /usr/bin, /sbin, /bin).
/// Panics with "`name` not installed: run scripts/install-test-deps.sh" if missing.
fn require_binary(name: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    if name == "slapd" {
        panic!("slapd not installed: {INSTALL_HINT}");
    }
    panic!("{name} not installed (package ldap-utils): {INSTALL_HINT}");
}

/// TERM by PID, wait up to `grace`, then KILL, then reap.
fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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
