//! `fedgate directory`: the intercluster directory of a running gateway. The reads (`peers`,
//! `lookup`, `conflicts`) go to its status listener (`[metrics] listen`, `--http`); `assign`
//! and `unassign` go to its admin listener (`[admin]`, `--admin`) with the admin token
//! (`--token-file`).

use std::process::ExitCode;

use hyper::Method;

use crate::http::client::Endpoint;

#[derive(clap::Args, Debug)]
pub struct DirectoryArgs {
    /// The gateway's status listener (`[metrics] listen`), host:port: `peers`, `lookup`,
    /// `conflicts`.
    #[arg(long, default_value = "127.0.0.1:9269")]
    pub http: String,
    /// The gateway's admin listener, for `assign` and `unassign`: host:port (`[admin]
    /// listen`) or unix:<path> (`[admin] unix`).
    #[arg(long)]
    pub admin: Option<String>,
    /// A file holding the admin token (`admin.token_file`), sent with `assign` and `unassign`.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// The admin listener serves HTTPS (`admin.cert`): check its certificate against the CA
    /// certificates in this PEM file.
    #[arg(long)]
    pub admin_ca: Option<std::path::PathBuf>,
    /// The name to reach the admin listener by: sent as `Host` (one of `admin.allowed_hosts`)
    /// and, with --admin-ca, the name its certificate must carry. Default: the --admin
    /// address (localhost for a Unix socket).
    #[arg(long)]
    pub admin_host: Option<String>,
    #[command(subcommand)]
    pub cmd: DirectoryCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum DirectoryCmd {
    /// Each peer: link state, users it hosts, sync lag, last reconcile, conflicts.
    Peers,
    /// Where a user lives, and every cluster that claims it.
    Lookup { user: String },
    /// Users claimed by two clusters with the same epoch (and where they are routed).
    Conflicts,
    /// This cluster hosts the user from now on: an explicit move with a higher epoch (default:
    /// one more than the highest known). Kept across restarts in `intercluster.assignments_file`.
    Assign {
        user: String,
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Withdraw an admin assignment.
    Unassign { user: String },
}

/// A query value, percent-encoded (all but unreserved characters, RFC 3986).
fn encode(s: &str) -> String {
    const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// The human-readable peers table from the `/intercluster/peers` document.
pub fn render_peers(doc: &serde_json::Value) -> String {
    let mut out = format!(
        "cluster {} (incarnation {}, seq {}, {} users, {} conflicts)\n",
        doc["cluster"].as_str().unwrap_or("?"),
        doc["incarnation"].as_str().unwrap_or("?"),
        doc["seq"],
        doc["users"],
        doc["conflicts"]
    );
    out.push_str(&format!(
        "{:<16} {:<5} {:>8} {:>8} {:>14} {:>9} {:>6}  {}\n",
        "PEER", "LINK", "USERS", "LAG_S", "LAST_RECONCILE", "CONFLICTS", "QUEUE", "NOTES"
    ));
    if let Some(peers) = doc["peers"].as_object() {
        for (name, p) in peers {
            let mut notes = Vec::new();
            if p["consistency"] == "mismatch" {
                notes.push("consistency mismatch".to_owned());
            }
            if let Some(n) = p["unacked"].as_u64().filter(|n| *n > 0) {
                notes.push(format!("{n} sent, not yet acknowledged"));
            }
            if let Some(k) = p["last_error"]["kind"].as_str() {
                notes.push(format!("last error: {k}"));
            }
            out.push_str(&format!(
                "{:<16} {:<5} {:>8} {:>8.1} {:>14} {:>9} {:>6}  {}\n",
                name,
                p["link"].as_str().unwrap_or("?"),
                p["users"],
                p["sync_lag_seconds"].as_f64().unwrap_or(0.0),
                p["last_reconcile"]
                    .as_u64()
                    .map_or("-".to_owned(), |t| fedgate_certs::fmt_unix(t as i64)),
                p["conflicts"],
                p["queue_depth"],
                notes.join("; ")
            ));
        }
    }
    out
}

pub fn run(args: DirectoryArgs) -> ExitCode {
    let (method, target) = match &args.cmd {
        DirectoryCmd::Peers => (Method::GET, "/intercluster/peers".to_owned()),
        DirectoryCmd::Lookup { user } => (
            Method::GET,
            format!("/intercluster/lookup?user={}", encode(user)),
        ),
        DirectoryCmd::Conflicts => (Method::GET, "/intercluster/conflicts".to_owned()),
        DirectoryCmd::Assign { user, epoch } => (
            Method::POST,
            format!(
                "/intercluster/assign?user={}{}",
                encode(user),
                epoch.map(|e| format!("&epoch={e}")).unwrap_or_default()
            ),
        ),
        DirectoryCmd::Unassign { user } => (
            Method::POST,
            format!("/intercluster/unassign?user={}", encode(user)),
        ),
    };
    let fail = |m: String| {
        eprintln!("fedgate directory: {m}");
        ExitCode::from(2)
    };
    let admin = method == Method::POST;
    let (endpoint, token) = if admin {
        let (Some(addr), Some(token_file)) = (&args.admin, &args.token_file) else {
            return fail(
                "assign and unassign go to the gateway's admin listener: pass --admin <[admin] \
                 listen, or unix:<[admin] unix>> and --token-file <admin.token_file>"
                    .into(),
            );
        };
        let token = match crate::http::read_admin_token(token_file) {
            Ok(t) => t,
            Err(e) => return fail(format!("--token-file {e}")),
        };
        match Endpoint::parse(addr, args.admin_ca.as_deref(), args.admin_host.as_deref()) {
            Ok(e) => (e, Some(token)),
            Err(e) => return fail(format!("--admin: {e}")),
        }
    } else {
        match Endpoint::parse(&args.http, None, None) {
            Ok(e) => (e, None),
            Err(e) => return fail(format!("--http: {e}")),
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let answer = runtime.block_on(endpoint.request(method, &target, token.as_deref()));
    match answer.map(|(status, body)| (status.as_u16(), body)) {
        Ok((200, body)) => {
            let doc: serde_json::Value =
                serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            match args.cmd {
                DirectoryCmd::Peers => print!("{}", render_peers(&doc)),
                DirectoryCmd::Conflicts => {
                    let list = doc.as_array().cloned().unwrap_or_default();
                    if list.is_empty() {
                        println!("no conflicts");
                    }
                    for c in list {
                        let clusters: Vec<&str> = c["clusters"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        println!(
                            "{}: epoch {} claimed by {} (routed to {})",
                            c["user"].as_str().unwrap_or("?"),
                            c["epoch"],
                            clusters.join(", "),
                            clusters.first().unwrap_or(&"?")
                        );
                    }
                }
                DirectoryCmd::Assign { .. } | DirectoryCmd::Unassign { .. } => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or(body));
                    if doc["saved"] == false {
                        eprintln!(
                            "fedgate directory: note: this change is not kept across a restart \
                             of the gateway (set intercluster.assignments_file)"
                        );
                    }
                }
                DirectoryCmd::Lookup { .. } => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or(body))
                }
            }
            ExitCode::SUCCESS
        }
        Ok((404, body)) => {
            eprintln!(
                "fedgate directory: {endpoint}: HTTP 404: {} (no intercluster section?)",
                body.trim()
            );
            ExitCode::from(1)
        }
        Ok((code, body)) => {
            eprintln!("fedgate directory: HTTP {code}: {}", body.trim());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("fedgate directory: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("alice@example.test"), "alice%40example.test");
        assert_eq!(encode("a b+c/é&x=~_.-"), "a%20b%2Bc%2F%C3%A9%26x%3D~_.-");
    }

    #[test]
    fn endpoints_are_host_port_or_a_unix_socket() {
        for ok in [
            "127.0.0.1:9270",
            "localhost:9270",
            "[::1]:9270",
            "unix:/run/a.sock",
        ] {
            assert!(Endpoint::parse(ok, None, None).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", "unix:", "http://127.0.0.1:9270", "/run/a.sock"] {
            assert!(Endpoint::parse(bad, None, None).is_err(), "{bad}");
        }
        assert!(Endpoint::parse("127.0.0.1:9270", None, Some("a b")).is_err());
        let e = Endpoint::parse("unix:/run/a.sock", Some(Path::new("/ca.pem")), None);
        assert!(e.unwrap_err().to_string().contains("Unix socket"));
        let e = Endpoint::parse(
            "127.0.0.1:9270",
            Some(Path::new("/nonexistent/ca.pem")),
            None,
        );
        assert!(e.unwrap_err().to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn the_peers_table_shows_each_peer_with_its_notes() {
        let doc = serde_json::json!({
            "cluster": "tokyo", "incarnation": "00000000000000ab", "seq": 7, "users": 3,
            "conflicts": 1,
            "peers": {
                "london": {"link": "up", "users": 2, "sync_lag_seconds": 0.0,
                           "last_reconcile": null, "conflicts": 1, "queue_depth": 0,
                           "unacked": 3, "consistency": "ok", "last_error": null},
                "paris": {"link": "down", "users": 0, "sync_lag_seconds": 1.5,
                          "last_reconcile": null, "conflicts": 0, "queue_depth": 4,
                          "unacked": 0, "consistency": "mismatch",
                          "last_error": {"kind": "connect"}}
            }
        });
        let t = render_peers(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("cluster tokyo"), "{t}");
        let london = lines.iter().find(|l| l.starts_with("london")).unwrap();
        assert!(london.contains(" up "), "{london}");
        assert!(london.ends_with("3 sent, not yet acknowledged"), "{london}");
        let paris = lines.iter().find(|l| l.starts_with("paris")).unwrap();
        assert!(
            paris.ends_with("consistency mismatch; last error: connect"),
            "{paris}"
        );
        assert!(!paris.contains("acknowledged"), "{paris}");
    }
}
