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
//! HTTP: one `GET` per connection over HTTP/1.1 with `Connection: close`; the body is framed
//! by `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection (then a TLS
//! `close_notify` is required, so that a truncated body is not taken for a whole one); the
//! whole response may not exceed [`MAX_RESPONSE_BYTES`]; each document fetch (DNS, connect,
//! TLS, request, response) has [`FETCH_TIMEOUT`] in all.
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
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resolve::S2sResolver;

/// Default HTTPS port.
pub const HTTPS_PORT: u16 = 443;
/// Time allowed for one document fetch, from DNS to the last byte: 5 s.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP response accepted (headers and body): 64 KiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest time a document is cached, whatever its `expires` says: one day.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// How long a failure to get a document is cached: 60 s.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Most domains kept in the cache (expired entries are dropped first, then arbitrary ones).
pub const MAX_CACHE_ENTRIES: usize = 10_000;

type Fingerprints = Arc<Vec<[u8; 32]>>;

#[derive(Debug, Clone)]
struct Entry {
    until: Instant,
    result: Result<Fingerprints, String>,
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
    cache: Mutex<HashMap<String, Entry>>,
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
            cache: Mutex::new(HashMap::new()),
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
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| e.until > now)
            .count()
    }

    /// Number of HTTPS document fetches started so far (a delegation counts two).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Forgets every cached document and failure.
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn cached(&self, domain: &str) -> Option<Result<Fingerprints, String>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(domain)?;
        if entry.until <= Instant::now() {
            cache.remove(domain);
            return None;
        }
        Some(entry.result.clone().map_err(|e| format!("{e} (cached)")))
    }

    fn store(&self, domain: &str, result: &Result<Fingerprints, String>, ttl: Duration) {
        let ttl = match result {
            Ok(_) => ttl.min(self.max_ttl),
            Err(_) => self.negative_ttl,
        };
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHE_ENTRIES && !cache.contains_key(domain) {
            cache.retain(|_, e| e.until > now);
            if cache.len() >= MAX_CACHE_ENTRIES
                && let Some(k) = cache.keys().next().cloned()
            {
                cache.remove(&k);
            }
        }
        cache.insert(
            domain.to_owned(),
            Entry {
                until: now + ttl,
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
        let mut tls = self
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
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: fedgate\r\nConnection: close\r\n\r\n",
            url.path,
            url.host_header()
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("posh: {url}: write: {e}"))?;
        tls.flush()
            .await
            .map_err(|e| format!("posh: {url}: write: {e}"))?;
        let (status, body) = read_response(&mut tls)
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

async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // Closed without close_notify: only a response framed by length or chunks
                // is known to be whole.
                return match parse_response(&buf, false)? {
                    HttpParse::Done { status, body } => Ok((status, body)),
                    HttpParse::Incomplete => Err(
                        "connection closed without TLS close_notify before the response was complete"
                            .to_owned(),
                    ),
                };
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 {
            return match parse_response(&buf, true)? {
                HttpParse::Done { status, body } => Ok((status, body)),
                HttpParse::Incomplete => Err("response incomplete".to_owned()),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "response larger than {} KiB",
                MAX_RESPONSE_BYTES / 1024
            ));
        }
        if let HttpParse::Done { status, body } = parse_response(&buf, false)? {
            return Ok((status, body));
        }
    }
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

/// Result of parsing a (possibly partial) HTTP/1.x response.
#[derive(Debug, PartialEq, Eq)]
enum HttpParse {
    Incomplete,
    Done { status: u16, body: Vec<u8> },
}

/// Sans-IO HTTP/1.x response parser. `eof`: the connection has ended cleanly, so a body
/// without `Content-Length` or chunked framing ends here.
fn parse_response(buf: &[u8], eof: bool) -> Result<HttpParse, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err("connection closed before the end of the HTTP headers".to_owned())
        } else {
            Ok(HttpParse::Incomplete)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| "HTTP headers are not UTF-8".to_owned())?;
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("bad HTTP status line: {status_line:?}"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad HTTP header line: {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| format!("bad Content-Length: {value:?}"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err("conflicting Content-Length headers".to_owned());
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") || value.contains(',') {
                return Err(format!("unsupported Transfer-Encoding: {value:?}"));
            }
            chunked = true;
        }
    }
    if chunked {
        return match dechunk(body)? {
            Some(body) => Ok(HttpParse::Done { status, body }),
            None if eof => Err("connection closed inside a chunked body".to_owned()),
            None => Ok(HttpParse::Incomplete),
        };
    }
    if let Some(n) = content_length {
        return if body.len() >= n {
            Ok(HttpParse::Done {
                status,
                body: body[..n].to_vec(),
            })
        } else if eof {
            Err(format!(
                "body truncated: {} of {n} bytes (Content-Length)",
                body.len()
            ))
        } else {
            Ok(HttpParse::Incomplete)
        };
    }
    if eof {
        Ok(HttpParse::Done {
            status,
            body: body.to_vec(),
        })
    } else {
        Ok(HttpParse::Incomplete)
    }
}

/// Decodes a chunked body: `Ok(None)` while incomplete.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size line".to_owned())?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Optional trailers, then an empty line.
            if data.starts_with(b"\r\n") || find(data, b"\r\n\r\n").is_some() {
                return Ok(Some(out));
            }
            return Ok(None);
        }
        if size > MAX_RESPONSE_BYTES {
            return Err(format!("chunk of {size} bytes is too large"));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_owned());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: u16, body: &[u8]) -> HttpParse {
        HttpParse::Done {
            status,
            body: body.to_vec(),
        }
    }

    #[test]
    fn content_length_framing() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello extra";
        assert_eq!(parse_response(r, false).unwrap(), done(200, b"hello"));
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello";
        assert_eq!(parse_response(short, false).unwrap(), HttpParse::Incomplete);
        assert!(
            parse_response(short, true)
                .unwrap_err()
                .contains("truncated")
        );
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx";
        assert!(
            parse_response(bad, false)
                .unwrap_err()
                .contains("conflicting")
        );
    }

    #[test]
    fn close_delimited_and_statuses() {
        let r = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope";
        assert_eq!(parse_response(r, false).unwrap(), HttpParse::Incomplete);
        assert_eq!(parse_response(r, true).unwrap(), done(404, b"nope"));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n", false).unwrap(),
            HttpParse::Incomplete
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", true).is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n", true).is_err());
    }

    #[test]
    fn chunked_framing() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert_eq!(parse_response(r, false).unwrap(), done(200, b"Wikipedia"));
        let with_trailer =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            parse_response(with_trailer, false).unwrap(),
            done(200, b"ok")
        );
        let partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi";
        assert_eq!(
            parse_response(partial, false).unwrap(),
            HttpParse::Incomplete
        );
        assert!(parse_response(partial, true).is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(
            parse_response(bad, false)
                .unwrap_err()
                .contains("chunk size")
        );
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(
            parse_response(gzip, false)
                .unwrap_err()
                .contains("unsupported")
        );
    }

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
