//! `fedgate cluster status`: the `cluster` section of a running gateway's `/status`, as a
//! table or as JSON.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// The gateway's HTTP endpoint (`[metrics] listen`), host:port.
    #[arg(long, default_value = "127.0.0.1:9269")]
    pub http: String,
    #[command(subcommand)]
    pub cmd: ClusterCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every node with its lease and what is attached to it, the store's health, and the
    /// differences between nodes.
    Status {
        /// The `cluster` section of `/status` as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The table `fedgate cluster status` prints.
pub fn render(doc: &serde_json::Value) -> String {
    let store = &doc["store"];
    let mut out = String::new();
    if store["kind"] == "embedded" {
        out.push_str("single node (no [cluster] section): state kept in process\n");
    } else {
        let health = if store["up"] == true {
            "up".to_owned()
        } else {
            format!(
                "DOWN since {} ({}): degraded, serving with the last replica, limits per node",
                store["since"],
                store["reason"].as_str().unwrap_or("?")
            )
        };
        out.push_str(&format!(
            "node {} — store {} {health}\n",
            doc["node"].as_str().unwrap_or("?"),
            store["url"].as_str().unwrap_or("?"),
        ));
    }
    out.push_str(&format!(
        "{:<16} {:<5} {:<22} {:>9} {:>8} {:<13}  {}\n",
        "NODE", "LIVE", "NODE_LINK", "LEASE_MS", "STREAMS", "POLICY", "ATTACHED"
    ));
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let list = |k: &str| -> Vec<String> {
            n[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let mut attached: Vec<String> = list("components")
            .into_iter()
            .map(|c| format!("component {c}"))
            .collect();
        attached.extend(
            list("internal")
                .into_iter()
                .map(|d| format!("internal {d}")),
        );
        let name = match (n["name"].as_str(), n["self"] == true) {
            (Some(name), true) => format!("{name} (this)"),
            (Some(name), false) => name.to_owned(),
            (None, _) => "(this)".into(),
        };
        let revision = n["policy_revision"]
            .as_str()
            .map_or("-", super::facts::short);
        out.push_str(&format!(
            "{:<16} {:<5} {:<22} {:>9} {:>8} {:<13}  {}\n",
            name,
            if n["live"] == true { "yes" } else { "no" },
            n["node_link"].as_str().unwrap_or("-"),
            n["lease_left_ms"]
                .as_u64()
                .map_or("-".into(), |m| m.to_string()),
            n["inbound_streams"]
                .as_u64()
                .map_or("-".into(), |m| m.to_string()),
            revision,
            if attached.is_empty() {
                "-".to_owned()
            } else {
                attached.join(", ")
            }
        ));
    }
    for d in doc["consistency"]["differences"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("DIFFERS {}\n", d.as_str().unwrap_or("?")));
    }
    out
}

pub fn run(args: ClusterArgs) -> ExitCode {
    let ClusterCmd::Status { json } = args.cmd;
    let fail = |m: String| {
        eprintln!("fedgate cluster: {m}");
        ExitCode::from(1)
    };
    let endpoint = match crate::http::client::Endpoint::parse(&args.http, None, None) {
        Ok(e) => e,
        Err(e) => return fail(format!("--http: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let (status, body) =
        match runtime.block_on(endpoint.request(hyper::Method::GET, "/status", None)) {
            Ok(r) => r,
            Err(e) => {
                return fail(format!(
                    "{}: {}",
                    args.http,
                    crate::http::client::error_chain(&e)
                ));
            }
        };
    if status != hyper::StatusCode::OK {
        return fail(format!("{} answered {status}: {}", args.http, body.trim()));
    }
    let doc: serde_json::Value = match serde_json::from_str(&body) {
        Ok(d) => d,
        Err(e) => return fail(format!("{}: not a status document: {e}", args.http)),
    };
    let section = &doc["cluster"];
    if section.is_null() {
        return fail(format!("{}: the status has no cluster section", args.http));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(section).unwrap_or_default()
        );
    } else {
        print!("{}", render(section));
    }
    ExitCode::SUCCESS
}
