//! The admin listener (`[admin]`, off by default): `POST /intercluster/assign|unassign`
//! (`fedgate directory assign|unassign`), the requests that change what the gateway does.
//!
//! Every request, whatever its path, passes two checks before anything else, in this order:
//! 1. its `Host` (or the authority of an absolute-form target) must be one of
//!    `admin.allowed_hosts` (a browser tricked into posting to the listener, e.g. by DNS
//!    rebinding, sends the attacker's name): missing → `400`, not allowed → `403`;
//! 2. it must carry `Authorization: Bearer <the token in admin.token_file>`, from every client,
//!    loopback and Unix socket included: missing or wrong → `401`. The file is read on every
//!    request (rotate the token by rewriting it); compared in constant time (`subtle`).
//!
//! Refusals are logged with the client address. The listener serves TCP, TLS (`admin.cert`,
//! `admin.key`) or a Unix socket (`admin.unix`, made mode 0600), see [`super::server`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, HOST, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::server::{Body, Peer, respond, text};

/// What the admin listener needs.
pub struct AdminState {
    /// `admin.token_file`.
    pub token_file: PathBuf,
    /// The `Host` values accepted (`AdminConfig::effective_allowed_hosts`), lower case.
    pub allowed_hosts: Vec<String>,
    /// Intercluster peering, when configured (`assign`, `unassign`).
    pub intercluster: Option<Arc<crate::intercluster_runtime::IcRuntime>>,
}

/// Where the admin listener is, as `fedgate directory --admin` takes it: `ip:port` or
/// `unix:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddr::Tcp(a) => write!(f, "{a}"),
            AdminAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Serves the admin listener until `shutdown` changes.
pub async fn serve(
    state: Arc<AdminState>,
    listener: super::server::Listener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let handler = Arc::new(move |req: &Request<Incoming>, peer: &Peer| handle(&state, req, peer));
    super::server::serve(listener, handler, shutdown).await;
}

/// Reads the admin token file: its trimmed content, which must not be empty.
pub fn read_admin_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// Splits `host[:port]` (`[v6]` or `[v6]:port` for IPv6): the host in lower case and the
/// port; None when it is not one.
pub fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let v6: std::net::Ipv6Addr = v6.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{v6}]"), port)
    } else {
        let (h, p) = match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        };
        let name_ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !name_ok {
            return None;
        }
        (h.to_owned(), p)
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Whether `value` is a `Host` value (`admin.allowed_hosts` entries are checked with it).
pub fn is_host_value(value: &str) -> bool {
    split_host(value).is_some()
}

/// Whether the request's `host` is allowed: its name equals an entry's, and the entry has no
/// port or the same port.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|a| split_host(a))
        .any(|(an, ap)| an == name && (ap.is_none() || ap == port))
}

/// Whether `authorization` (the header's value) carries `token` as a Bearer token.
pub fn token_matches(authorization: Option<&[u8]>, token: &str) -> Result<(), &'static str> {
    let Some(a) = authorization else {
        return Err(
            "admin requests need Authorization: Bearer <the token in admin.token_file> \
             (fedgate directory --token-file)",
        );
    };
    let a = a.trim_ascii();
    let given = match a.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => return Err("admin requests need a Bearer token (Authorization: Bearer <token>)"),
    };
    if bool::from(given.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err("wrong admin token")
    }
}

/// The checks every request passes (see the module docs): the status and reason of a
/// refusal otherwise.
fn gate(state: &AdminState, req: &Request<Incoming>) -> Result<(), (StatusCode, String)> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(HOST).iter().collect();
    let host = match (req.uri().authority(), hosts.as_slice()) {
        (Some(a), _) => a.as_str().to_owned(),
        (None, [h]) => String::from_utf8_lossy(h.as_bytes()).into_owned(),
        (None, []) => return Err((StatusCode::BAD_REQUEST, "a Host header is required".into())),
        (None, _) => return Err((StatusCode::BAD_REQUEST, "more than one Host header".into())),
    };
    if !host_allowed(&state.allowed_hosts, &host) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not one the admin listener answers to (admin.allowed_hosts)"),
        ));
    }
    let token = read_admin_token(&state.token_file).map_err(|e| {
        tracing::error!(error = %e, "cannot read admin.token_file; admin request refused");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the admin token: {e}"),
        )
    })?;
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    token_matches(authorization, &token).map_err(|why| (StatusCode::UNAUTHORIZED, why.to_owned()))
}

/// One request to the admin listener.
pub fn handle(state: &AdminState, req: &Request<Incoming>, peer: &Peer) -> Response<Body> {
    let (method, path) = (req.method(), req.uri().path());
    if let Err((status, why)) = gate(state, req) {
        tracing::warn!(client = %peer, %method, %path, status = status.as_u16(), %why, "admin request refused");
        let mut r = text(status, format!("{why}\n"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return r;
    }
    if !super::status::is_admin_path(path) {
        return text(
            StatusCode::NOT_FOUND,
            "the admin listener serves POST /intercluster/assign and /intercluster/unassign\n",
        );
    }
    if method != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Some(ic) = &state.intercluster else {
        return text(
            StatusCode::NOT_FOUND,
            "no intercluster section: nothing to assign\n",
        );
    };
    let target = req.uri().path_and_query().map_or(path, |pq| pq.as_str());
    let (status, ctype, body) = ic.http(method, target);
    respond(status, ctype, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_by_name_and_port() {
        let allowed: Vec<String> = ["localhost", "127.0.1.7", "admin.example.test:8443", "[::1]"]
            .map(String::from)
            .into();
        for ok in [
            "localhost",
            "LocalHost:9270",
            "127.0.1.7:9270",
            "127.0.1.7",
            "admin.example.test:8443",
            "[::1]:9270",
            "[0:0:0:0:0:0:0:1]",
        ] {
            assert!(host_allowed(&allowed, ok), "{ok}");
        }
        for bad in [
            "evil.test",
            "127.0.0.1",
            "admin.example.test",
            "admin.example.test:443",
            "localhost.evil.test",
            "localhost:99999",
            "localhost:",
            "",
            "[::2]",
            "user@localhost",
        ] {
            assert!(!host_allowed(&allowed, bad), "{bad}");
        }
        assert_eq!(split_host("[::1]:80"), Some(("[::1]".to_owned(), Some(80))));
        for bad in ["[::1", "[zz]", "a b", "h:0", "h:x", ":80", "a/b"] {
            assert!(!is_host_value(bad), "{bad}");
        }
    }

    #[test]
    fn the_token_is_a_bearer_token() {
        let t = "s3cret-token";
        for ok in [
            "Bearer s3cret-token",
            " bearer s3cret-token ",
            "BEARER s3cret-token",
        ] {
            assert_eq!(token_matches(Some(ok.as_bytes()), t), Ok(()), "{ok}");
        }
        assert!(token_matches(None, t).unwrap_err().contains("--token-file"));
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-token2",
            "Bearer S3CRET-TOKEN",
            "Basic s3cret-token",
            "s3cret-token",
            "Bearer",
            "",
        ] {
            assert!(
                token_matches(Some(wrong.as_bytes()), t).is_err(),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn the_token_file_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  abc123\n").unwrap();
        assert_eq!(read_admin_token(&f).unwrap(), "abc123");
        std::fs::write(&f, "\n  \n").unwrap();
        assert!(read_admin_token(&f).unwrap_err().contains("empty"));
        assert!(read_admin_token(&dir.path().join("missing")).is_err());
    }
}
