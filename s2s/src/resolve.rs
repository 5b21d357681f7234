//! DNS discovery for outgoing s2s connections (RFC 6120 §3.2, XEP-0368), driven by
//! hickory-resolver 0.26 on tokio.
//!
//! Order of precedence for a remote domain:
//! 1. a static target from config ([`StaticTargets`]; no DNS at all),
//! 2. SRV `_xmpps-server._tcp.<domain>` (direct TLS) and `_xmpp-server._tcp.<domain>`
//!    (STARTTLS), queried concurrently, merged and ordered by [`order_srv`],
//! 3. the domain's own A/AAAA on port 5269 when neither SRV name has records.
//!
//! Names are always queried as absolute names (trailing dot), so resolv.conf `search`
//! domains and `ndots` never cause extra queries.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};

use crate::srv::{SrvRecord, is_no_service, order_srv};

/// Default XMPP s2s port (RFC 6120 §14.7), used for the A/AAAA fallback.
pub const DEFAULT_S2S_PORT: u16 = 5269;
/// Per-query timeout of the gateway resolver: 2 s (hickory's default is 5 s).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per query (hickory `ResolverOpts::attempts`): 2.
pub const DNS_ATTEMPTS: usize = 2;
/// Number of responses hickory's cache keeps (hickory's default is 8192).
pub const DNS_CACHE_SIZE: u64 = 8_192;

/// One place to connect to, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name (no trailing dot) or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Direct TLS (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    /// Came from an SRV record (so an SRV-ID in the peer certificate is acceptable).
    pub from_srv: bool,
}

/// Why a DNS lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsErrorKind {
    /// The SRV answer was the RFC 2782 "." target: no XMPP service at this domain.
    NoService,
    /// NXDOMAIN, or no SRV and no A/AAAA.
    NotFound,
    /// No answer within the resolver's timeout and attempts.
    Timeout,
    /// Anything else (SERVFAIL, REFUSED, bad name, I/O …).
    Other,
}

impl DnsErrorKind {
    /// Short stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoService => "no-service",
            Self::NotFound => "not-found",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// A typed DNS failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("dns: {detail}")]
pub struct DnsError {
    /// The failure class.
    pub kind: DnsErrorKind,
    /// Human-readable detail, naming the query.
    pub detail: String,
}

impl DnsError {
    pub(crate) fn new(kind: DnsErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn from_net(what: &str, err: &NetError) -> Self {
        let kind = if err.is_nx_domain() || err.is_no_records_found() {
            DnsErrorKind::NotFound
        } else if is_timeout(err) {
            DnsErrorKind::Timeout
        } else {
            DnsErrorKind::Other
        };
        let detail = match kind {
            DnsErrorKind::NotFound if err.is_nx_domain() => format!("{what}: NXDOMAIN"),
            DnsErrorKind::NotFound => format!("{what}: no records"),
            DnsErrorKind::Timeout => format!("{what}: timed out"),
            _ => format!("{what}: {err}"),
        };
        Self { kind, detail }
    }
}

fn is_timeout(err: &NetError) -> bool {
    match err {
        NetError::Timeout => true,
        NetError::Io(e) => e.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// Result of one SRV query: records, "no records" (NXDOMAIN/NODATA), or a failure.
fn no_records(err: &NetError) -> bool {
    matches!(err, NetError::Dns(HickoryDnsError::NoRecordsFound(_)))
}

/// A NAPTR record: the order and preference it is tried in, its flags (`"s"`: the next lookup
/// is SRV), services (e.g. `"SIPS+D2T"`) and the replacement name (`"."` for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaptrRecord {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub replacement: String,
}

/// Static target overrides from config, e.g.
/// `"partner.test" = "tcp://127.0.0.3:5269"`, `"other.test" = "tls://host:5270"` (direct
/// TLS) and a `"*"` catch-all. Domains are matched case-insensitively, trailing dot
/// ignored; an exact match wins over `"*"`.
#[derive(Debug, Clone, Default)]
pub struct StaticTargets {
    exact: BTreeMap<String, Target>,
    wildcard: Option<Target>,
}

impl StaticTargets {
    /// Parse `domain -> "tcp://host:port" | "tls://host:port"` entries. The host may be a
    /// name, an IPv4 literal or a bracketed IPv6 literal (`tcp://[::1]:5269`); the port is
    /// required. Errors name the offending key and value.
    pub fn parse(entries: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut out = Self::default();
        for (key, value) in entries {
            let target = parse_target(value)
                .map_err(|why| format!("static target {key:?} = {value:?}: {why}"))?;
            if key == "*" {
                out.wildcard = Some(target);
            } else {
                let domain = normalize_domain(key);
                if domain.is_empty() || domain.contains(['/', ':', ' ']) {
                    return Err(format!(
                        "static target {key:?} = {value:?}: bad domain {key:?}"
                    ));
                }
                out.exact.insert(domain, target);
            }
        }
        Ok(out)
    }

    /// The configured target for `domain`: exact match first, then `"*"`.
    pub fn lookup(&self, domain: &str) -> Option<Target> {
        self.exact
            .get(&normalize_domain(domain))
            .or(self.wildcard.as_ref())
            .cloned()
    }

    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_none()
    }
}

/// The canonical domain (RFC 7622: U-labels), as stanzas carry it; other names lower-cased.
fn normalize_domain(domain: &str) -> String {
    let d = domain.trim();
    fedgate_jid::canonical_domain(d).map_or_else(
        |_| d.trim_end_matches('.').to_ascii_lowercase(),
        std::borrow::Cow::into_owned,
    )
}

fn parse_target(value: &str) -> Result<Target, String> {
    let (scheme, rest) = value
        .split_once("://")
        .ok_or("expected tcp://host:port or tls://host:port")?;
    let direct_tls = match scheme {
        "tcp" => false,
        "tls" => true,
        _ => return Err(format!("unknown scheme {scheme:?} (use tcp or tls)")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (ip, port) = v6
            .split_once("]:")
            .ok_or("expected [ipv6]:port after the scheme")?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("bad IPv6 address {ip:?}"))?;
        (ip, port)
    } else {
        rest.rsplit_once(':').ok_or("missing :port")?
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
        return Err(format!("bad host {host:?}"));
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if port == 0 {
        return Err("port 0".to_owned());
    }
    Ok(Target {
        host: host.trim_end_matches('.').to_owned(),
        port,
        direct_tls,
        from_srv: false,
    })
}

/// Raw SRV answers for a domain, as returned by DNS (unordered), for `fedgate probe`.
#[derive(Debug, Clone, Default)]
pub struct SrvLookup {
    /// `_xmpps-server._tcp` answers (direct TLS).
    pub xmpps: Vec<SrvRecord>,
    /// `_xmpp-server._tcp` answers (STARTTLS).
    pub xmpp: Vec<SrvRecord>,
}

/// The s2s resolver: static overrides plus a caching hickory resolver.
///
/// Resolver settings: per-query timeout [`DNS_TIMEOUT`] (2 s), [`DNS_ATTEMPTS`] (2)
/// attempts, A and AAAA queried in parallel. Caching is hickory's own response cache
/// ([`DNS_CACHE_SIZE`] entries, always on in hickory 0.26): positive answers are kept for
/// their TTL, negative answers (NXDOMAIN/NODATA) for the SOA-derived negative TTL (RFC 2308)
/// when the server sends an SOA, otherwise they are not cached. Cheap to clone (the cache
/// and connections are shared).
#[derive(Clone)]
pub struct S2sResolver {
    resolver: TokioResolver,
    statics: StaticTargets,
}

impl std::fmt::Debug for S2sResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S2sResolver")
            .field("statics", &self.statics)
            .finish_non_exhaustive()
    }
}

impl S2sResolver {
    /// `nameservers`: `None` = the system's resolv.conf (and /etc/hosts); `Some(list)` = only
    /// those servers, over UDP and TCP on each address's own port, without /etc/hosts.
    /// Uses hickory's TTL-respecting cache with negative caching (see the type docs), a
    /// 2 s per-query timeout and 2 attempts.
    pub fn new(
        nameservers: Option<Vec<SocketAddr>>,
        statics: StaticTargets,
    ) -> Result<Self, DnsError> {
        Self::with_timeouts(nameservers, statics, DNS_TIMEOUT, DNS_ATTEMPTS)
    }

    /// Like [`S2sResolver::new`] with an explicit per-query timeout and attempt count.
    pub fn with_timeouts(
        nameservers: Option<Vec<SocketAddr>>,
        statics: StaticTargets,
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self, DnsError> {
        let mut builder = resolver_builder(nameservers)?;
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = attempts;
        opts.cache_size = DNS_CACHE_SIZE;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::new(DnsErrorKind::Other, format!("building resolver: {e}")))?;
        Ok(Self { resolver, statics })
    }

    /// The static overrides this resolver was built with.
    pub fn statics(&self) -> &StaticTargets {
        &self.statics
    }

    /// Where to connect for `domain`, in the order to try.
    ///
    /// A static target, if configured, is returned alone without any DNS query. Otherwise
    /// `_xmpps-server._tcp` and `_xmpp-server._tcp` are queried concurrently, merged and
    /// ordered with [`order_srv`]. Rules:
    /// - a "." answer on `_xmpp-server` with no usable `_xmpps-server` records, or a "."
    ///   answer on both, is [`DnsErrorKind::NoService`];
    /// - a "." answer on `_xmpps-server` alone only rules out direct TLS;
    /// - no SRV records at all (NXDOMAIN or NODATA on both) gives one fallback target: the
    ///   domain itself on port 5269, STARTTLS, `from_srv: false` (its A/AAAA are looked up
    ///   later through [`S2sResolver::addrs`]);
    /// - a timeout or server failure on either query, without usable records from the other,
    ///   is an error (no fallback: the SRV records may well exist).
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, DnsError> {
        if let Some(t) = self.statics.lookup(domain) {
            return Ok(vec![t]);
        }
        let domain_name = normalize_domain(domain);
        let (xmpps, xmpp) = self.srv_both(&domain_name).await?;

        let xmpps_none = xmpps.as_ref().is_ok_and(|r| is_no_service(r));
        let xmpp_none = xmpp.as_ref().is_ok_and(|r| is_no_service(r));
        let usable = |r: &Result<Vec<SrvRecord>, DnsError>| -> Vec<SrvRecord> {
            match r {
                Ok(list) => list
                    .iter()
                    .filter(|r| !r.is_root_target())
                    .cloned()
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        let merged: Vec<SrvRecord> = usable(&xmpps).into_iter().chain(usable(&xmpp)).collect();

        if !merged.is_empty() {
            let ordered = order_srv(merged, &mut rand::rng());
            return Ok(ordered
                .into_iter()
                .map(|r| Target {
                    host: r.target,
                    port: r.port,
                    direct_tls: r.direct_tls,
                    from_srv: true,
                })
                .collect());
        }
        // Nothing usable. A hard failure of either query wins over the fallback.
        for r in [&xmpp, &xmpps] {
            if let Err(e) = r {
                return Err(e.clone());
            }
        }
        let xmpp_empty = xmpp.as_ref().is_ok_and(|r| r.is_empty());
        if xmpp_none || (xmpps_none && !xmpp_empty) {
            return Err(DnsError::new(
                DnsErrorKind::NoService,
                format!("_xmpp-server._tcp.{domain_name}: \".\" target, no XMPP service"),
            ));
        }
        Ok(vec![Target {
            host: domain_name,
            port: DEFAULT_S2S_PORT,
            direct_tls: false,
            from_srv: false,
        }])
    }

    /// Raw SRV answers of both service names (NXDOMAIN/NODATA give an empty list). Errors
    /// only when a query fails (timeout, SERVFAIL …). Does not consult static targets.
    pub async fn srv_records(&self, domain: &str) -> Result<SrvLookup, DnsError> {
        let domain_name = normalize_domain(domain);
        let (xmpps, xmpp) = self.srv_both(&domain_name).await?;
        Ok(SrvLookup {
            xmpps: xmpps?,
            xmpp: xmpp?,
        })
    }

    /// SRV answers at a full owner name (e.g. `_sipfederationtls._tcp.a.test`, or a NAPTR
    /// replacement), unordered; NXDOMAIN/NODATA give an empty list. Shares this resolver's
    /// cache and servers with s2s.
    pub async fn srv_at(&self, owner: &str) -> Result<Vec<SrvRecord>, DnsError> {
        let name = absolute_name(&normalize_domain(owner))?;
        self.srv_query(name, true).await
    }

    /// NAPTR answers of `domain` (RFC 3403, as RFC 3263 §4.1 uses them), unordered;
    /// NXDOMAIN/NODATA give an empty list.
    pub async fn naptr(&self, domain: &str) -> Result<Vec<NaptrRecord>, DnsError> {
        let name = absolute_name(&normalize_domain(domain))?;
        match self
            .resolver
            .lookup(name.clone(), hickory_proto::rr::RecordType::NAPTR)
            .await
        {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::NAPTR(n) => Some(NaptrRecord {
                        order: n.order,
                        preference: n.preference,
                        flags: String::from_utf8_lossy(&n.flags).into_owned(),
                        services: String::from_utf8_lossy(&n.services).into_owned(),
                        replacement: name_to_host(&n.replacement),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(DnsError::from_net(&format!("NAPTR {name}"), &e)),
        }
    }

    /// Both SRV queries concurrently. The outer error is for an invalid domain; the inner
    /// results are per query, with "no records" mapped to an empty list.
    #[allow(clippy::type_complexity)]
    async fn srv_both(
        &self,
        domain: &str,
    ) -> Result<
        (
            Result<Vec<SrvRecord>, DnsError>,
            Result<Vec<SrvRecord>, DnsError>,
        ),
        DnsError,
    > {
        let base = absolute_name(domain)?;
        let xmpps_name = srv_name("_xmpps-server", &base)?;
        let xmpp_name = srv_name("_xmpp-server", &base)?;
        Ok(tokio::join!(
            self.srv_query(xmpps_name, true),
            self.srv_query(xmpp_name, false)
        ))
    }

    async fn srv_query(&self, name: Name, direct_tls: bool) -> Result<Vec<SrvRecord>, DnsError> {
        match self.resolver.srv_lookup(name.clone()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: name_to_host(&srv.target),
                        direct_tls,
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => {
                tracing::debug!(query = %name, error = %e, "SRV lookup failed");
                Err(DnsError::from_net(&format!("SRV {name}"), &e))
            }
        }
    }

    /// A and AAAA addresses of a target host (queried in parallel, A first in the result).
    /// An IP literal (`127.0.0.3`, `::1`, `[::1]`) is returned as-is without DNS.
    /// No addresses at all is [`DnsErrorKind::NotFound`].
    pub async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let trimmed = host.trim();
        let literal = trimmed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = absolute_name(&normalize_domain(trimmed))?;
        match self.resolver.lookup_ip(name.clone()).await {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().collect();
                if ips.is_empty() {
                    Err(DnsError::new(
                        DnsErrorKind::NotFound,
                        format!("A/AAAA {name}: no records"),
                    ))
                } else {
                    Ok(ips)
                }
            }
            Err(e) => Err(DnsError::from_net(&format!("A/AAAA {name}"), &e)),
        }
    }

    /// Drop every cached answer (e.g. after a config reload).
    pub fn clear_cache(&self) {
        self.resolver.clear_cache();
    }
}

fn absolute_name(domain: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_utf8(domain).map_err(|e| {
        DnsError::new(
            DnsErrorKind::Other,
            format!("invalid domain name {domain:?}: {e}"),
        )
    })?;
    if name.is_root() {
        return Err(DnsError::new(DnsErrorKind::Other, "empty domain name"));
    }
    name.set_fqdn(true);
    Ok(name)
}

fn srv_name(service: &str, base: &Name) -> Result<Name, DnsError> {
    Name::from_ascii(format!("{service}._tcp"))
        .and_then(|n| n.append_domain(base))
        .map_err(|e| DnsError::new(DnsErrorKind::Other, format!("SRV name for {base}: {e}")))
}

/// `host.example.` -> `host.example`; the root name stays `"."`.
fn name_to_host(name: &Name) -> String {
    if name.is_root() {
        return ".".to_owned();
    }
    name.to_ascii().trim_end_matches('.').to_owned()
}

/// A hickory resolver builder for `nameservers` (UDP and TCP on each address's port, no
/// hosts file), or for the system's resolv.conf when `None`. Shared with the DANE resolver.
pub(crate) fn resolver_builder(
    nameservers: Option<Vec<SocketAddr>>,
) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, DnsError> {
    match nameservers {
        None => TokioResolver::builder_tokio().map_err(|e| {
            DnsError::new(
                DnsErrorKind::Other,
                format!("reading system resolver config: {e}"),
            )
        }),
        Some(list) => {
            if list.is_empty() {
                return Err(DnsError::new(DnsErrorKind::Other, "empty nameserver list"));
            }
            let servers = list
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            Ok(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn static_targets_exact_then_wildcard() {
        let s = StaticTargets::parse(&map(&[
            ("partner.test", "tcp://127.0.0.3:5269"),
            ("Direct.Test.", "tls://127.0.0.4:5270"),
            ("*", "tcp://127.0.0.9:15269"),
        ]))
        .unwrap();
        assert_eq!(
            s.lookup("partner.test"),
            Some(Target {
                host: "127.0.0.3".into(),
                port: 5269,
                direct_tls: false,
                from_srv: false
            })
        );
        let d = s.lookup("direct.test.").unwrap();
        assert!(d.direct_tls);
        assert_eq!((d.host.as_str(), d.port), ("127.0.0.4", 5270));
        let w = s.lookup("anything.else").unwrap();
        assert_eq!((w.host.as_str(), w.port), ("127.0.0.9", 15269));
    }

    #[test]
    fn static_targets_without_wildcard() {
        let s = StaticTargets::parse(&map(&[("a.test", "tcp://xmpp.a.test:5269")])).unwrap();
        assert_eq!(s.lookup("a.test").unwrap().host, "xmpp.a.test");
        assert_eq!(s.lookup("b.test"), None);
        assert!(StaticTargets::default().lookup("a.test").is_none());
        assert!(StaticTargets::default().is_empty());
    }

    #[test]
    fn static_targets_ipv6_literal() {
        let s = StaticTargets::parse(&map(&[("a.test", "tcp://[::1]:5269")])).unwrap();
        assert_eq!(s.lookup("a.test").unwrap().host, "::1");
    }

    #[test]
    fn static_target_errors_name_the_value() {
        for bad in [
            "127.0.0.3:5269",
            "udp://127.0.0.3:5269",
            "tcp://127.0.0.3",
            "tcp://127.0.0.3:notaport",
            "tcp://127.0.0.3:0",
            "tcp://:5269",
            "tcp://[::1:5269",
            "tls://[nope]:5269",
        ] {
            let err = StaticTargets::parse(&map(&[("a.test", bad)])).unwrap_err();
            assert!(err.contains(bad), "{err:?} should name {bad:?}");
        }
    }

    #[test]
    fn new_with_explicit_nameservers() {
        let addr: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let r = S2sResolver::new(Some(vec![addr]), StaticTargets::default());
        // Building needs no runtime; only lookups do.
        assert!(r.is_ok());
        assert!(S2sResolver::new(Some(vec![]), StaticTargets::default()).is_err());
    }

    #[tokio::test]
    async fn static_target_needs_no_dns() {
        // Nameserver points at a port nobody answers on; a static target must not query it.
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let statics = StaticTargets::parse(&map(&[("a.test", "tls://127.0.0.5:5270")])).unwrap();
        let r =
            S2sResolver::with_timeouts(Some(vec![addr]), statics, Duration::from_millis(100), 1)
                .unwrap();
        let t = r.targets("a.test").await.unwrap();
        assert_eq!(
            t,
            vec![Target {
                host: "127.0.0.5".into(),
                port: 5270,
                direct_tls: true,
                from_srv: false
            }]
        );
    }

    #[tokio::test]
    async fn ip_literals_skip_dns() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = S2sResolver::with_timeouts(
            Some(vec![addr]),
            StaticTargets::default(),
            Duration::from_millis(100),
            1,
        )
        .unwrap();
        assert_eq!(
            r.addrs("127.0.0.7").await.unwrap(),
            vec!["127.0.0.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            r.addrs("[::1]").await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn silent_server_is_timeout() {
        // A bound UDP socket that never answers: queries must time out, not hang.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let r = S2sResolver::with_timeouts(
            Some(vec![addr]),
            StaticTargets::default(),
            Duration::from_millis(200),
            1,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = r.targets("silent.test").await.unwrap_err();
        assert_eq!(err.kind, DnsErrorKind::Timeout, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = r.addrs("host.silent.test").await.unwrap_err();
        assert_eq!(err.kind, DnsErrorKind::Timeout, "{err}");
        drop(sock);
    }
}
