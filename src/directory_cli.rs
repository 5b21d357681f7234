//! `fedgate directory`: the intercluster directory of a running gateway, through its HTTP
//! endpoint (`[metrics] listen`). `assign` and `unassign` are admin requests: the gateway takes
//! them from loopback only, or, with `metrics.admin_token_file`, from whoever sends the token
//! (`--token-file`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct DirectoryArgs {
    /// The gateway's HTTP endpoint (`[metrics] listen`), host:port.
    #[arg(long, default_value = "127.0.0.1:9269")]
    pub http: String,
    /// A file holding the gateway's admin token (`metrics.admin_token_file`), sent with
    /// `assign` and `unassign`.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
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

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request; (status code, body).
pub fn request(
    addr: &str,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let sa = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an ip:port address"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(
        format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
            auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default()
        )
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer from {addr}"))?;
    Ok((code, body.to_owned()))
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
        DirectoryCmd::Peers => ("GET", "/intercluster/peers".to_owned()),
        DirectoryCmd::Lookup { user } => {
            ("GET", format!("/intercluster/lookup?user={}", encode(user)))
        }
        DirectoryCmd::Conflicts => ("GET", "/intercluster/conflicts".to_owned()),
        DirectoryCmd::Assign { user, epoch } => (
            "POST",
            format!(
                "/intercluster/assign?user={}{}",
                encode(user),
                epoch.map(|e| format!("&epoch={e}")).unwrap_or_default()
            ),
        ),
        DirectoryCmd::Unassign { user } => (
            "POST",
            format!("/intercluster/unassign?user={}", encode(user)),
        ),
    };
    let token = match &args.token_file {
        Some(f) => match crate::http::read_admin_token(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("fedgate directory: --token-file {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    match request(&args.http, method, &target, token.as_deref()) {
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
        Ok((404, _)) => {
            eprintln!(
                "fedgate directory: {} has no intercluster section (not configured?)",
                args.http
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
    use super::*;

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
