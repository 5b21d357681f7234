//! POSH (RFC 7711, XMPP profile RFC 7712) for s2s peer authentication: fetches
//! `https://<domain>/.well-known/posh/xmpp-server.json` over HTTPS, follows at most one
//! delegation, caches the result, and checks a peer's leaf certificate against the published
//! SPKI fingerprints. Parsing and matching are sans-IO in [`fedgate_certs::posh`].
//!
//! Trust rules:
//! - the HTTPS server's certificate must chain to the configured anchors, allow serverAuth and
//!   carry a DNS-ID (exact or wildcard) for the host fetched — for the domain itself, and for
//!   the delegation URL's host when delegated. SRV-IDs and XmppAddrs do not count for HTTPS;
//! - only status 200 is accepted; redirects are **not** followed (a delegation document is the
//!   POSH way to point elsewhere);
//! - a peer is authenticated when the SHA-256 of its leaf's SubjectPublicKeyInfo is listed;
//!   its issuer, names and dates are not looked at (that is POSH's point).
//!
//! HTTP (hyper, HTTP/1.1): one `GET` per connection with `Connection: close`; the body is
//! framed by `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection (then
//! a TLS `close_notify` is required, so that a truncated body is not taken for a whole one); the
//! response head and the body may each not exceed [`MAX_RESPONSE_BYTES`]; each document fetch
//! (DNS, connect, TLS, request, response) has [`FETCH_TIMEOUT`] in all.
//!
//! Cache, per domain: a document's fingerprints are kept for its `expires` (with a delegation,
//! the smaller of both documents' values), capped at [`MAX_TTL`]; `expires` 0 or absent means
//! no caching. Every failure to obtain a usable document (DNS, connect, TLS, HTTPS
//! certificate, HTTP status, size, timeout, bad JSON, double delegation) is cached for
//! [`NEGATIVE_TTL`]. Concurrent verifications of one domain share one fetch. "No fingerprint
//! matches" is a per-certificate answer and is not cached as such: the document is.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedgate_certs::posh::{
    POSH_XMPP_SERVER_PATH, PoshDoc, fingerprint_b64, parse_posh, spki_sha256,
};
use fedgate_certs::{NameMatch, PeerVerifier, TrustAnchors};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::resolve::S2sResolver;

/// Default HTTPS port.
pub const HTTPS_PORT: u16 = 443;
/// Time allowed for one document fetch, from DNS to the last byte: 5 s.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP response head, and largest body, accepted: 64 KiB each.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest time a document is cached, whatever its `expires` says: one day.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// How long a failure to get a document is cached: 60 s.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Most domains kept in the cache (past it, the least recently used go first).
pub const MAX_CACHE_ENTRIES: u64 = 10_000;

type Fingerprints = Arc<Vec<[u8; 32]>>;

#[derive(Debug, Clone)]
struct Entry {
    until: Instant,
    result: Result<Fingerprints, String>,
}

/// Each cache entry expires at its own `until` (the document's `expires`, capped; or the
/// negative time for a failure).
struct UntilExpiry;

impl moka::Expiry<String, Entry> for UntilExpiry {
    fn expire_after_create(&self, _: &String, e: &Entry, now: Instant) -> Option<Duration> {
        Some(e.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        e: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.until.saturating_duration_since(now))
    }
}

/// Fetches, caches and checks POSH documents of remote XMPP domains. Share it behind an `Arc`.
pub struct PoshClient {
    verifier: PeerVerifier,
    resolver: S2sResolver,
    default_port: u16,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
    /// Documents and failures, each for its own time (bounded: [`MAX_CACHE_ENTRIES`]).
    cache: moka::sync::Cache<String, Entry>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for PoshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoshClient")
            .field("default_port", &self.default_port)
            .field("cache_len", &self.cache_len())
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

impl PoshClient {
    /// A client that checks HTTPS servers against `anchors`, resolves hosts with `resolver`
    /// (`addrs()`: A/AAAA, static targets are not used) and connects to port 443, or to
    /// `port_override` when given (tests). A port in a delegation URL is used as given.
    pub fn new(
        anchors: Arc<TrustAnchors>,
        resolver: S2sResolver,
        port_override: Option<u16>,
    ) -> Self {
        let config = fedgate_certs::client_config(None, vec![b"http/1.1".to_vec()]);
        PoshClient {
            // serverAuth required: the HTTPS server is a TLS server.
            verifier: PeerVerifier::new(anchors).strict_client_eku(true),
            resolver,
            default_port: port_override.unwrap_or(HTTPS_PORT),
            tls: tokio_rustls::TlsConnector::from(config),
            timeout: FETCH_TIMEOUT,
            max_ttl: MAX_TTL,
            negative_ttl: NEGATIVE_TTL,
            cache: moka::sync::Cache::builder()
                .max_capacity(MAX_CACHE_ENTRIES)
                .expire_after(UntilExpiry)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
        }
    }

    /// Changes the per-fetch timeout (default [`FETCH_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Changes the cache cap for documents (default [`MAX_TTL`]) and the time failures are
    /// cached (default [`NEGATIVE_TTL`]; zero disables negative caching).
    pub fn with_ttls(mut self, max_ttl: Duration, negative_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self.negative_ttl = negative_ttl;
        self
    }

    /// Whether the peer's certificate `chain` (leaf first) is authenticated for `domain` by
    /// the domain's POSH document: Ok when the SHA-256 of the leaf's SubjectPublicKeyInfo is
    /// listed. Errors start with `posh: ` and say why, e.g.
    /// `posh: hosted.test: no fingerprint matches the peer certificate's key (sha-256 …)`,
    /// `posh: https certificate of hosted.test rejected: cert-name: …`,
    /// `posh: https://hosted.test/.well-known/posh/xmpp-server.json: HTTP 404`; a failure
    /// answered from the cache ends with ` (cached)`.
    pub async fn verify(&self, domain: &str, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let domain = normalize(domain);
        let Some(leaf) = chain.first() else {
            return Err("posh: the peer presented no certificate".to_owned());
        };
        let fp = spki_sha256(leaf).map_err(|e| format!("posh: peer certificate: {e}"))?;
        let fps = self.fingerprints(&domain).await?;
        if fps.contains(&fp) {
            tracing::debug!(domain, "posh: peer key listed");
            Ok(())
        } else {
            Err(format!(
                "posh: {domain}: no fingerprint matches the peer certificate's key (sha-256 {})",
                fingerprint_b64(&fp)
            ))
        }
    }

    /// The SHA-256 SPKI fingerprints `domain` publishes (from the cache or fetched now).
    pub async fn fingerprints(&self, domain: &str) -> Result<Arc<Vec<[u8; 32]>>, String> {
        let domain = normalize(domain);
        if let Some(hit) = self.cached(&domain) {
            return hit;
        }
        // One fetch per domain at a time; later callers wait and then read the cache.
        let lock = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(domain.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Forget the in-flight entry when done, also when this future is dropped midway.
        let _inflight = InflightGuard {
            client: self,
            domain: &domain,
        };
        if let Some(hit) = self.cached(&domain) {
            return hit;
        }
        let (result, ttl) = self.fetch_fingerprints(&domain).await;
        if let Err(e) = &result {
            tracing::debug!(domain, error = %e, "posh: no usable document");
        }
        self.store(&domain, &result, ttl);
        result
    }

    /// Number of domains with an unexpired cache entry (positive or negative).
    pub fn cache_len(&self) -> usize {
        let now = Instant::now();
        self.cache.iter().filter(|(_, e)| e.until > now).count()
    }

    /// Number of HTTPS document fetches started so far (a delegation counts two).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Forgets every cached document and failure.
    pub fn clear_cache(&self) {
        self.cache.invalidate_all();
    }

    fn cached(&self, domain: &str) -> Option<Result<Fingerprints, String>> {
        let entry = self.cache.get(domain)?;
        if entry.until <= Instant::now() {
            return None;
        }
        Some(entry.result.map_err(|e| format!("{e} (cached)")))
    }

    fn store(&self, domain: &str, result: &Result<Fingerprints, String>, ttl: Duration) {
        let ttl = match result {
            Ok(_) => ttl.min(self.max_ttl),
            Err(_) => self.negative_ttl,
        };
        if ttl.is_zero() {
            return;
        }
        self.cache.insert(
            domain.to_owned(),
            Entry {
                until: Instant::now() + ttl,
                result: result.clone(),
            },
        );
    }

    /// The domain's document, following one delegation: the fingerprints and how long they
    /// may be cached.
    async fn fetch_fingerprints(&self, domain: &str) -> (Result<Fingerprints, String>, Duration) {
        let first = Url {
            // An HTTPS host is an A-label name (the domain is canonical, in U-labels).
            host: fedgate_jid::domain_to_ascii(domain)
                .map_or_else(|_| domain.to_owned(), std::borrow::Cow::into_owned),
            port: self.default_port,
            path: POSH_XMPP_SERVER_PATH.to_owned(),
        };
        let (doc, expires) = match self.fetch_doc(&first).await {
            Ok(d) => d,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        match doc {
            PoshDoc::Fingerprints(v) => (Ok(Arc::new(v)), Duration::from_secs(expires)),
            PoshDoc::Delegation(url) => {
                let target = match parse_https_url(&url, self.default_port) {
                    Ok(u) => u,
                    Err(e) => {
                        return (
                            Err(format!("posh: {first}: bad delegation url {url:?}: {e}")),
                            Duration::ZERO,
                        );
                    }
                };
                match self.fetch_doc(&target).await {
                    Ok((PoshDoc::Fingerprints(v), exp2)) => {
                        (Ok(Arc::new(v)), Duration::from_secs(expires.min(exp2)))
                    }
                    Ok((PoshDoc::Delegation(_), _)) => (
                        Err(format!(
                            "posh: {target}: delegated document is itself a delegation (only one is followed)"
                        )),
                        Duration::ZERO,
                    ),
                    Err(e) => (Err(e), Duration::ZERO),
                }
            }
        }
    }

    async fn fetch_doc(&self, url: &Url) -> Result<(PoshDoc, u64), String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = match tokio::time::timeout(self.timeout, self.get(url)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(format!(
                    "posh: {url}: timed out after {} ms",
                    self.timeout.as_millis()
                ));
            }
        };
        parse_posh(&body).map_err(|e| format!("posh: {url}: bad POSH document: {e}"))
    }

    /// GET over HTTPS with the server's certificate checked; the body of a 200 response.
    async fn get(&self, url: &Url) -> Result<Vec<u8>, String> {
        let addrs = self
            .resolver
            .addrs(&url.host)
            .await
            .map_err(|e| format!("posh: {url}: {e}"))?;
        let tcp = connect_any(&addrs, url.port)
            .await
            .map_err(|e| format!("posh: {url}: connect: {e}"))?;
        let sni = ServerName::try_from(url.host.clone())
            .map_err(|e| format!("posh: {url}: bad server name: {e}"))?;
        let tls = self
            .tls
            .connect(sni, tcp)
            .await
            .map_err(|e| format!("posh: {url}: TLS handshake: {e}"))?;
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        match self
            .verifier
            .verify(&chain, &url.host, false, UnixTime::now())
        {
            Ok(v) if matches!(v.matched, NameMatch::DnsId | NameMatch::WildcardDnsId) => {}
            Ok(v) => {
                return Err(format!(
                    "posh: https certificate of {} rejected: matched by {}, HTTPS needs a DNS-ID",
                    url.host,
                    v.matched.as_str()
                ));
            }
            Err(f) => {
                return Err(format!(
                    "posh: https certificate of {} rejected: {f}",
                    url.host
                ));
            }
        }
        let (status, body) = http_get(tls, url)
            .await
            .map_err(|e| format!("posh: {url}: {e}"))?;
        match status {
            200 => Ok(body),
            300..=399 => Err(format!(
                "posh: {url}: HTTP {status} (redirects are not followed)"
            )),
            _ => Err(format!("posh: {url}: HTTP {status}")),
        }
    }
}

struct InflightGuard<'a> {
    client: &'a PoshClient,
    domain: &'a str,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.client
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.domain);
    }
}

fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

async fn connect_any(addrs: &[IpAddr], port: u16) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for ip in addrs {
        let sa = SocketAddr::new(*ip, port);
        match TcpStream::connect(sa).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{sa}: {e}"),
        }
    }
    Err(last)
}

/// `GET url` on `io` (TLS set up, server checked): the status and, for a 200, the body.
async fn http_get<I>(io: I, url: &Url) -> Result<(u16, Vec<u8>), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_BYTES)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| error_chain(&e))?;
    let request = Request::get(url.path.as_str())
        .header(HOST, url.host_header())
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "fedgate")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok((status, Vec::new()));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("body larger than {} KiB", MAX_RESPONSE_BYTES / 1024)
                } else {
                    format!("reading the body: {}", error_chain(&*e))
                }
            })?;
        Ok((status, body.to_bytes().to_vec()))
    };
    let mut conn = std::pin::pin!(conn);
    let mut answer = std::pin::pin!(answer);
    // The connection is driven beside the exchange. When it ends first, what it received is
    // still read from the answer, which says whether it is whole (then a connection error
    // after it does not matter) or why not.
    tokio::select! {
        r = &mut answer => r,
        _ = &mut conn => answer.await,
    }
}

/// An error and its causes, `: `-separated (hyper's own messages are terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// An `https://` URL split for fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl Url {
    fn host_header(&self) -> String {
        if self.port == HTTPS_PORT {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.host_header(), self.path)
    }
}

/// Splits an `https://host[:port][/path][?query][#fragment]` URL. The host must be a DNS
/// name (the HTTPS certificate is checked for a DNS-ID); userinfo is refused; the fragment
/// is dropped; no port means `default_port`.
fn parse_https_url(url: &str, default_port: u16) -> Result<Url, String> {
    let rest = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or("not an https:// URL")?;
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("path holds spaces or control characters".to_owned());
    }
    if authority.contains('@') {
        return Err("userinfo is not allowed".to_owned());
    }
    if authority.starts_with('[') {
        return Err("an IP address host cannot be checked by DNS-ID".to_owned());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().map_err(|_| format!("bad port {p:?}"))?;
            if port == 0 {
                return Err("port 0".to_owned());
            }
            (h, port)
        }
        None => (authority, default_port),
    };
    let host = normalize(host);
    if host.is_empty() {
        return Err("empty host".to_owned());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err("an IP address host cannot be checked by DNS-ID".to_owned());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!("bad host {host:?}"));
    }
    Ok(Url { host, port, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls() {
        assert_eq!(
            parse_https_url("https://Host.Test/.well-known/posh/xmpp-server.json", 443).unwrap(),
            Url {
                host: "host.test".into(),
                port: 443,
                path: "/.well-known/posh/xmpp-server.json".into()
            }
        );
        let u = parse_https_url("HTTPS://h.test:8443?x=1#frag", 443).unwrap();
        assert_eq!((u.port, u.path.as_str()), (8443, "/?x=1"));
        assert_eq!(u.to_string(), "https://h.test:8443/?x=1");
        let u = parse_https_url("https://h.test", 9443).unwrap();
        assert_eq!((u.port, u.path.as_str()), (9443, "/"));
        for bad in [
            "http://h.test/",
            "https://",
            "https://user@h.test/",
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://h.test:0/",
            "https://h.test:x/",
            "https://h test/",
            "https://h.test/a b",
        ] {
            assert!(parse_https_url(bad, 443).is_err(), "{bad}");
        }
    }
}
