//! `[cluster]`: this node's name and `node_link`, the Redis store that holds the cluster's
//! shared state (`redis://` or `rediss://`, a password file, a CA for TLS), and the lease,
//! heartbeat and resynchronisation timers. Without the section the node is a cluster of one
//! that keeps its state in process (nothing to install).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

fn default_prefix() -> String {
    "fedgate".into()
}
fn lease() -> u64 {
    10_000
}
fn heartbeat() -> u64 {
    2_000
}
fn resync() -> u64 {
    5_000
}
fn timeout() -> u64 {
    2_000
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique within the cluster (`node-a`).
    pub name: String,
    /// The store: `redis://host[:port][/db]` or `rediss://…` (TLS). A user name may stand
    /// before the host (`redis://fedgate@host`); the password never does (`password_file`).
    pub redis: String,
    /// A file holding the Redis password (`AUTH`), read at every connection.
    pub password_file: Option<PathBuf>,
    /// The address other nodes reach this node's link at (`ip:port`), published with its
    /// lease.
    pub node_link: String,
    /// Trust anchors (PEM) for the Redis server's certificate with `rediss://`; none: the
    /// system bundle.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM chain and key) for `rediss://` servers that ask for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Prefix of every key and channel this cluster uses (clusters sharing one Redis
    /// database need distinct prefixes).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// A node whose lease is not renewed for this long is gone.
    #[serde(default = "lease")]
    pub lease_ms: u64,
    /// How often the lease is renewed.
    #[serde(default = "heartbeat")]
    pub heartbeat_ms: u64,
    /// How often the whole replica is read again (besides the change notifications).
    #[serde(default = "resync")]
    pub resync_ms: u64,
    /// A connection or a command that takes longer means the store is unreachable.
    #[serde(default = "timeout")]
    pub timeout_ms: u64,
}

/// Where the store is, from `cluster.redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub tls: bool,
    /// Host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
}

impl RedisUrl {
    /// Parses `redis://[user@]host[:port][/db]` and `rediss://…`; a password in the URL is
    /// refused (it would end up in logs and `/status`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis://") {
            (false, r)
        } else {
            return Err(format!("'{url}' is not a redis:// or rediss:// URL"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if user.is_some_and(|u| u.contains(':')) {
            return Err(
                "put the password in cluster.password_file, not in the URL (it would show in logs and /status)"
                    .into(),
            );
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{url}': unclosed '[' in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains([' ', '/', '?', '#']) {
            return Err(format!("'{url}' names no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("'{url}': '{p}' is not a port"))?,
            None => 6379,
        };
        let db = match path {
            "" => 0,
            p => p
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| format!("'{url}': '/{p}' is not a database number"))?,
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            db,
            username: user.filter(|u| !u.is_empty()).map(str::to_owned),
        })
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self
            .username
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{user}{host}:{}/{}", self.port, self.db)
    }
}

impl ClusterConfig {
    /// Relative paths are relative to the config file.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.password_file,
            &mut self.tls_ca,
            &mut self.tls_cert,
            &mut self.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The parsed `redis` URL (checked by [`Self::validate`]).
    pub fn url(&self) -> RedisUrl {
        RedisUrl::parse(&self.redis).expect("validated at load")
    }

    /// (key, problem) for the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("cluster.{k}"), m));
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !name_ok(&self.name) {
            return bad(
                "name",
                format!(
                    "'{}' is not a node name (letters, digits, '-', '_', '.'; at most 64)",
                    self.name
                ),
            );
        }
        if !name_ok(&self.key_prefix) {
            return bad(
                "key_prefix",
                format!(
                    "'{}': letters, digits, '-', '_', '.' (at most 64)",
                    self.key_prefix
                ),
            );
        }
        let url = RedisUrl::parse(&self.redis).map_err(|m| ("cluster.redis".to_owned(), m))?;
        if self.node_link.parse::<SocketAddr>().is_err() {
            return bad(
                "node_link",
                format!("'{}' is not an ip:port address", self.node_link),
            );
        }
        if !url.tls {
            for (k, v) in [
                ("tls_ca", &self.tls_ca),
                ("tls_cert", &self.tls_cert),
                ("tls_key", &self.tls_key),
            ] {
                if v.is_some() {
                    return bad(k, "only with a rediss:// store".into());
                }
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert", "tls_cert and tls_key go together".into());
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.lease_ms {
            return bad(
                "heartbeat_ms",
                format!(
                    "must be more than 0 and at most half of lease_ms ({}), so that one lost heartbeat does not end the lease",
                    self.lease_ms
                ),
            );
        }
        if self.resync_ms == 0 {
            return bad("resync_ms", "must be at least 1".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.lease_ms {
            return bad(
                "timeout_ms",
                format!(
                    "must be more than 0 and at most lease_ms ({})",
                    self.lease_ms
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (false, "127.0.0.1", 6379, 0)
        );
        let u = RedisUrl::parse("rediss://fedgate@redis.example.test:6380/2").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db, u.username.as_deref()),
            (true, "redis.example.test", 6380, 2, Some("fedgate"))
        );
        assert_eq!(u.to_string(), "rediss://fedgate@redis.example.test:6380/2");
        let u = RedisUrl::parse("redis://[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!(u.to_string(), "redis://[::1]:7000/0");
        for bad in [
            "http://x",
            "redis://",
            "redis://h:0",
            "redis://h:x",
            "redis://h/-1",
            "redis://h/a",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RedisUrl::parse("redis://u:secret@h").unwrap_err();
        assert!(e.contains("password_file"), "{e}");
        assert!(!e.contains("secret@"), "{e}");
    }
}
