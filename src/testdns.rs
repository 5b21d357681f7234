//! In-process authoritative DNS server for tests and `fedgate demo`.
//!
//! A [`TestDns`] serves a [`Zone`] (SRV, A and AAAA records for any names, not tied to one
//! origin) over UDP and TCP on one loopback address, using hickory-server 0.26 with our own
//! [`RequestHandler`] over a shared, swappable record map. That allows [`TestDns::set_zone`]
//! while running, query counting ([`TestDns::queries`], [`TestDns::queried_names`]) and the
//! IPv4-literal rule (see [`TestDns::start`]).
//!
//! Answers:
//! - records of the queried name and type present: NOERROR with them, TTL [`TTL`] (60 s),
//!   authoritative;
//! - the name exists (has records of other types, is an IPv4 literal, or is an empty
//!   non-terminal such as `_tcp.a.test` below `_xmpp-server._tcp.a.test`): NOERROR, no answers;
//! - otherwise NXDOMAIN.
//!
//! Negative answers carry no SOA unless [`Zone::negative_ttl`] is set, so by default a
//! resolver does not cache them (RFC 2308 §5) and records added with `set_zone` are seen at
//! once. Positive answers are cached by resolvers for [`TTL`] seconds: tests that change an
//! existing name's records should use a fresh resolver or distinct names.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// TTL of every answer record, in seconds.
pub const TTL: u32 = 60;
/// Most names kept by [`TestDns::queried_names`] (oldest dropped first).
const MAX_LOGGED_NAMES: usize = 10_000;
/// Idle timeout of a TCP connection to the test server.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
}

impl Rec {
    fn record_type(&self) -> RecordType {
        match self {
            Self::Srv { .. } => RecordType::SRV,
            Self::A(_) => RecordType::A,
            Self::Aaaa(_) => RecordType::AAAA,
        }
    }
}

/// Records for any number of names. Names are case-insensitive; a trailing dot is optional.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: BTreeMap<String, Vec<Rec>>,
    negative_ttl: Option<u32>,
}

/// Lower case, no trailing dot.
fn key(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// An empty zone (every name NXDOMAIN, except IPv4 literals).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an SRV record, e.g. `srv("_xmpp-server._tcp.a.test", 0, 5, 5269, "xmpp.a.test")`.
    /// `target` may be `"."` (RFC 2782 "no service") or an IPv4 literal.
    pub fn srv(
        &mut self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
    ) -> &mut Self {
        self.push(
            name,
            Rec::Srv {
                priority,
                weight,
                port,
                target: target.trim().to_owned(),
            },
        )
    }

    /// Add an A record.
    pub fn a(&mut self, name: &str, ip: Ipv4Addr) -> &mut Self {
        self.push(name, Rec::A(ip))
    }

    /// Add an AAAA record.
    pub fn aaaa(&mut self, name: &str, ip: Ipv6Addr) -> &mut Self {
        self.push(name, Rec::Aaaa(ip))
    }

    /// Put an SOA with this TTL/minimum into NXDOMAIN and NODATA answers, so that resolvers
    /// cache them for that long (RFC 2308). Default: no SOA, negative answers not cached.
    pub fn negative_ttl(&mut self, seconds: u32) -> &mut Self {
        self.negative_ttl = Some(seconds);
        self
    }

    fn push(&mut self, name: &str, rec: Rec) -> &mut Self {
        self.records.entry(key(name)).or_default().push(rec);
        self
    }

    /// Does the name exist (records, an IPv4 literal, or an empty non-terminal)?
    fn name_exists(&self, k: &str) -> bool {
        if k.parse::<Ipv4Addr>().is_ok() || self.records.contains_key(k) {
            return true;
        }
        let suffix = format!(".{k}");
        self.records.keys().any(|n| n.ends_with(&suffix))
    }

    /// Answer records for `qname` (owner name as queried) and `qtype`.
    fn answers(&self, k: &str, qname: &Name, qtype: RecordType) -> Vec<Record> {
        let mut out = Vec::new();
        let wanted = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        for rec in self.records.get(k).into_iter().flatten() {
            if !wanted(rec.record_type()) {
                continue;
            }
            let data = match rec {
                Rec::Srv {
                    priority,
                    weight,
                    port,
                    target,
                } => {
                    let target = if target == "." || target.is_empty() {
                        Name::root()
                    } else {
                        match Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                            Ok(n) => n,
                            Err(e) => {
                                tracing::warn!(%target, error = %e, "testdns: bad SRV target");
                                continue;
                            }
                        }
                    };
                    RData::SRV(SRV::new(*priority, *weight, *port, target))
                }
                Rec::A(ip) => RData::A(A(*ip)),
                Rec::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            };
            out.push(Record::from_rdata(qname.clone(), TTL, data));
        }
        // Prosody resolves IP-literal SRV targets as names: "127.0.0.10." has A 127.0.0.10.
        if out.is_empty()
            && wanted(RecordType::A)
            && let Ok(ip) = k.parse::<Ipv4Addr>()
        {
            out.push(Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))));
        }
        out
    }

    /// SOA for negative answers when [`Zone::negative_ttl`] is set. The owner is the
    /// queried name's parent (the test zones have no real apex).
    fn negative_soa(&self, qname: &Name) -> Option<Record> {
        let ttl = self.negative_ttl?;
        let apex = if qname.num_labels() > 1 {
            qname.base_name()
        } else {
            qname.clone()
        };
        let mname = Name::from_ascii("ns.testdns.invalid.").ok()?;
        let rname = Name::from_ascii("hostmaster.testdns.invalid.").ok()?;
        Some(Record::from_rdata(
            apex,
            ttl,
            RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86_400, ttl)),
        ))
    }
}

/// State shared between the [`TestDns`] handle and the request handler.
#[derive(Debug, Default)]
struct Shared {
    zone: RwLock<Arc<Zone>>,
    queries: AtomicU64,
    names: Mutex<VecDeque<String>>,
}

struct Handler {
    shared: Arc<Shared>,
}

impl Handler {
    async fn handle<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let serve_failed = || {
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata: meta,
                counts: Default::default(),
            })
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            let resp = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return response_handle
                .send_response(resp)
                .await
                .unwrap_or_else(|_| serve_failed());
        }
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return response_handle
                    .send_response(resp)
                    .await
                    .unwrap_or_else(|_| serve_failed());
            }
        };
        let qname: Name = info.query.original().name().clone();
        let qtype = info.query.query_type();
        let k = key(&qname.to_ascii());

        self.shared.queries.fetch_add(1, Ordering::SeqCst);
        {
            let mut names = self.shared.names.lock().unwrap_or_else(|e| e.into_inner());
            if names.len() >= MAX_LOGGED_NAMES {
                names.pop_front();
            }
            names.push_back(k.clone());
        }

        let zone = self
            .shared
            .zone
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let answers = zone.answers(&k, &qname, qtype);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = true;
        meta.response_code = if answers.is_empty() && !zone.name_exists(&k) {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        let soa: Vec<Record> = if answers.is_empty() {
            zone.negative_soa(&qname).into_iter().collect()
        } else {
            Vec::new()
        };
        tracing::debug!(name = %k, %qtype, code = ?meta.response_code, answers = answers.len(), "testdns query");

        let mut edns_resp = Edns::new();
        let mut builder = builder;
        if let Some(req_edns) = request.edns.as_ref() {
            edns_resp.set_max_payload(req_edns.max_payload().max(512));
            builder.edns(&edns_resp);
        }
        let resp = builder.build(meta, answers.iter(), soa.iter(), [], []);
        response_handle
            .send_response(resp)
            .await
            .unwrap_or_else(|_| serve_failed())
    }
}

// hickory's `RequestHandler` is declared with `#[async_trait]`; this is the same signature
// written out by hand, so the root crate needs no `async-trait` dependency.
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle(request, response_handle))
    }
}

/// A running test DNS server. Dropping it also stops it (the server's tasks are aborted);
/// [`TestDns::stop`] shuts down gracefully.
pub struct TestDns {
    server: Server<Handler>,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

impl TestDns {
    /// Serve `zone` on UDP and TCP at `bind` (e.g. `127.0.0.53:0` for an ephemeral port, the
    /// same port for both protocols; read it back with [`TestDns::addr`]). Only loopback
    /// addresses are accepted. Answers authoritatively: records present -> answer (TTL 60);
    /// name exists with other types -> NOERROR empty; unknown name -> NXDOMAIN. Names that are
    /// IPv4 literals (`127.0.0.10.`) get an A record for that address automatically (Prosody
    /// resolves IP-literal SRV targets as names).
    pub async fn start(bind: SocketAddr, zone: Zone) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bind.ip().is_loopback(),
            "test DNS must bind a loopback address, not {bind}"
        );
        let (udp, tcp) = bind_pair(bind).await?;
        let addr = udp.local_addr().context("test DNS: local address")?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(zone)),
            ..Shared::default()
        });
        let mut server = Server::new(Handler {
            shared: shared.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 65_535);
        tracing::debug!(%addr, "test DNS listening (udp+tcp)");
        Ok(Self {
            server,
            addr,
            shared,
        })
    }

    /// The address (UDP and TCP) the server answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the zone while running. Resolvers may still hold cached positive answers
    /// (TTL 60); negative answers are uncached unless [`Zone::negative_ttl`] was set.
    pub fn set_zone(&self, zone: Zone) {
        *self.shared.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }

    /// Number of queries answered so far.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Queried names in arrival order (lower case, no trailing dot, e.g.
    /// `"_xmpp-server._tcp.a.test"`), one entry per query, the last 10,000 kept.
    pub fn queried_names(&self) -> Vec<String> {
        self.shared
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// `vec![self.addr()]`, the shape `S2sResolver::new` takes for its nameservers.
    pub fn nameservers(&self) -> Vec<SocketAddr> {
        vec![self.addr]
    }

    /// Stop serving and wait for the server tasks to end.
    pub async fn stop(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "test DNS shutdown");
        }
    }
}

/// Bind UDP and TCP on the same address; with port 0, retry until both get the same port.
async fn bind_pair(
    bind: SocketAddr,
) -> anyhow::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(bind)
            .await
            .with_context(|| format!("test DNS: bind udp {bind}"))?;
        let port = udp.local_addr()?.port();
        match tokio::net::TcpListener::bind(SocketAddr::new(bind.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e).with_context(|| format!("test DNS: bind tcp {bind}")),
        }
    }
    Err(anyhow::anyhow!(
        "test DNS: no port free for both udp and tcp on {}: {:?}",
        bind.ip(),
        last_err
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedgate_s2s::resolve::{DnsErrorKind, S2sResolver, StaticTargets, Target};
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    const LO: &str = "127.0.0.1:0";

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    async fn start(zone: Zone) -> (TestDns, S2sResolver) {
        let dns = TestDns::start(LO.parse().unwrap(), zone).await.unwrap();
        let r = S2sResolver::new(Some(vec![dns.addr()]), StaticTargets::default()).unwrap();
        (dns, r)
    }

    #[tokio::test]
    async fn srv_found_and_ordered_with_direct_tls() {
        let mut z = Zone::new();
        z.srv("_xmpp-server._tcp.a.test", 10, 0, 5269, "xmpp.a.test")
            .srv("_xmpps-server._tcp.a.test", 5, 0, 5270, "tls.a.test")
            .srv("_xmpp-server._tcp.a.test", 20, 0, 15269, "backup.a.test");
        let (dns, r) = start(z).await;
        let t = r.targets("a.test").await.unwrap();
        assert_eq!(
            t,
            vec![
                Target {
                    host: "tls.a.test".into(),
                    port: 5270,
                    direct_tls: true,
                    from_srv: true
                },
                Target {
                    host: "xmpp.a.test".into(),
                    port: 5269,
                    direct_tls: false,
                    from_srv: true
                },
                Target {
                    host: "backup.a.test".into(),
                    port: 15269,
                    direct_tls: false,
                    from_srv: true
                },
            ]
        );
        let raw = r.srv_records("a.test").await.unwrap();
        assert_eq!(raw.xmpps.len(), 1);
        assert!(raw.xmpps[0].direct_tls);
        assert_eq!(raw.xmpp.len(), 2);
        assert!(raw.xmpp.iter().all(|s| !s.direct_tls));
        let names = dns.queried_names();
        assert!(
            names.contains(&"_xmpps-server._tcp.a.test".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"_xmpp-server._tcp.a.test".to_owned()),
            "{names:?}"
        );
        dns.stop().await;
    }

    #[tokio::test]
    async fn dot_target_is_no_service() {
        let mut z = Zone::new();
        z.srv("_xmpp-server._tcp.none.test", 0, 0, 0, ".");
        let (dns, r) = start(z).await;
        let err = r.targets("none.test").await.unwrap_err();
        assert_eq!(err.kind, DnsErrorKind::NoService, "{err}");
        // "." on _xmpps-server only rules out direct TLS: fall back to 5269.
        let mut z = Zone::new();
        z.srv("_xmpps-server._tcp.notls.test", 0, 0, 0, ".");
        dns.set_zone(z);
        let t = r.targets("notls.test").await.unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].host.as_str(), t[0].port), ("notls.test", 5269));
        // "." on _xmpp-server but real _xmpps-server records: direct TLS only.
        let mut z = Zone::new();
        z.srv("_xmpp-server._tcp.tlsonly.test", 0, 0, 0, ".").srv(
            "_xmpps-server._tcp.tlsonly.test",
            0,
            0,
            5270,
            "x.tlsonly.test",
        );
        dns.set_zone(z);
        let t = r.targets("tlsonly.test").await.unwrap();
        assert_eq!(t.len(), 1);
        assert!(t[0].direct_tls && t[0].from_srv);
        assert_eq!((t[0].host.as_str(), t[0].port), ("x.tlsonly.test", 5270));
        dns.stop().await;
    }

    #[tokio::test]
    async fn no_srv_falls_back_to_5269() {
        let mut z = Zone::new();
        z.a("plain.test", ip4("127.0.0.20"));
        let (dns, r) = start(z).await;
        let t = r.targets("plain.test").await.unwrap();
        assert_eq!(
            t,
            vec![Target {
                host: "plain.test".into(),
                port: 5269,
                direct_tls: false,
                from_srv: false
            }]
        );
        // NXDOMAIN for the SRV names too (domain unknown): still the fallback target.
        let t = r.targets("unknown.test").await.unwrap();
        assert_eq!(t[0].port, 5269);
        assert!(!t[0].from_srv);
        let raw = r.srv_records("plain.test").await.unwrap();
        assert!(raw.xmpp.is_empty() && raw.xmpps.is_empty());
        dns.stop().await;
    }

    #[tokio::test]
    async fn addrs_of_names_and_literals() {
        let mut z = Zone::new();
        z.a("xmpp.b.test", ip4("127.0.0.21"))
            .aaaa("xmpp.b.test", Ipv6Addr::LOCALHOST)
            .a("v4only.b.test", ip4("127.0.0.22"));
        let (dns, r) = start(z).await;
        let got = r.addrs("xmpp.b.test").await.unwrap();
        assert_eq!(
            got,
            vec![
                IpAddr::V4(ip4("127.0.0.21")),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
        assert_eq!(
            r.addrs("v4only.b.test").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.22"))]
        );
        // An IP literal never reaches DNS.
        let before = dns.queries();
        assert_eq!(
            r.addrs("127.0.0.23").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.23"))]
        );
        assert_eq!(dns.queries(), before);
        dns.stop().await;
    }

    #[tokio::test]
    async fn ip_literal_names_get_an_a_record() {
        // What Prosody does with an SRV target of "127.0.0.10.": it asks for A of that name.
        let mut z = Zone::new();
        z.srv("_xmpp-server._tcp.lit.test", 0, 0, 5269, "127.0.0.10");
        let dns = TestDns::start(LO.parse().unwrap(), z).await.unwrap();
        let r = hickory_resolver::TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![{
                let mut udp = hickory_resolver::config::ConnectionConfig::udp();
                udp.port = dns.addr().port();
                hickory_resolver::config::NameServerConfig::new(dns.addr().ip(), true, vec![udp])
            }]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap();
        let lookup = r
            .lookup(Name::from_ascii("127.0.0.10.").unwrap(), RecordType::A)
            .await
            .unwrap();
        let ips: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec![ip4("127.0.0.10")]);
        // And the SRV target comes back as the literal, usable directly.
        let s2s = S2sResolver::new(Some(vec![dns.addr()]), StaticTargets::default()).unwrap();
        let t = s2s.targets("lit.test").await.unwrap();
        assert_eq!(t[0].host, "127.0.0.10");
        dns.stop().await;
    }

    #[tokio::test]
    async fn nxdomain_is_not_found_and_nodata_is_not_found() {
        let mut z = Zone::new();
        z.srv("_xmpp-server._tcp.c.test", 0, 0, 5269, "xmpp.c.test");
        let (dns, r) = start(z).await;
        let err = r.addrs("missing.c.test").await.unwrap_err();
        assert_eq!(err.kind, DnsErrorKind::NotFound, "{err}");
        assert!(err.detail.contains("NXDOMAIN"), "{err}");
        // Name exists (empty non-terminal _tcp.c.test), no A/AAAA: NODATA, also NotFound.
        let err = r.addrs("_tcp.c.test").await.unwrap_err();
        assert_eq!(err.kind, DnsErrorKind::NotFound, "{err}");
        dns.stop().await;
    }

    #[tokio::test]
    async fn static_target_bypasses_dns() {
        let dns = TestDns::start(LO.parse().unwrap(), Zone::new())
            .await
            .unwrap();
        let mut m = BTreeMap::new();
        m.insert("partner.test".to_owned(), "tcp://127.0.0.3:5269".to_owned());
        let statics = StaticTargets::parse(&m).unwrap();
        let r = S2sResolver::new(Some(vec![dns.addr()]), statics).unwrap();
        let t = r.targets("partner.test").await.unwrap();
        assert_eq!(t[0].host, "127.0.0.3");
        assert_eq!(dns.queries(), 0);
        assert!(dns.queried_names().is_empty());
        // A non-static domain does query.
        let _ = r.targets("other.test").await.unwrap();
        assert_eq!(dns.queries(), 2);
        dns.stop().await;
    }

    #[tokio::test]
    async fn set_zone_takes_effect() {
        let (dns, r) = start(Zone::new()).await;
        // Unknown first (negative answers carry no SOA, so they are not cached).
        assert_eq!(
            r.addrs("late.d.test").await.unwrap_err().kind,
            DnsErrorKind::NotFound
        );
        let mut z = Zone::new();
        z.a("late.d.test", ip4("127.0.0.30")).srv(
            "_xmpp-server._tcp.d.test",
            0,
            0,
            5269,
            "late.d.test",
        );
        dns.set_zone(z);
        assert_eq!(
            r.addrs("late.d.test").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.30"))]
        );
        assert_eq!(r.targets("d.test").await.unwrap()[0].host, "late.d.test");
        dns.stop().await;
    }

    #[tokio::test]
    async fn resolver_caches_positive_and_negative_answers() {
        let mut z = Zone::new();
        z.a("cached.e.test", ip4("127.0.0.40")).negative_ttl(30);
        let (dns, r) = start(z).await;
        r.addrs("cached.e.test").await.unwrap();
        let after_first = dns.queries();
        r.addrs("cached.e.test").await.unwrap();
        assert_eq!(
            dns.queries(),
            after_first,
            "positive answer served from cache"
        );
        // Negative answer with SOA (negative TTL 30 s) is cached too.
        r.addrs("gone.e.test").await.unwrap_err();
        let after_neg = dns.queries();
        let err = r.addrs("gone.e.test").await.unwrap_err();
        assert_eq!(err.kind, DnsErrorKind::NotFound);
        assert_eq!(
            dns.queries(),
            after_neg,
            "negative answer served from cache"
        );
        dns.stop().await;
    }

    #[tokio::test]
    async fn refuses_non_loopback_bind() {
        let err = TestDns::start("0.0.0.0:0".parse().unwrap(), Zone::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("loopback"));
    }

    #[tokio::test]
    async fn tcp_transport_answers_too() {
        let mut z = Zone::new();
        z.a("tcp.f.test", ip4("127.0.0.50"));
        let dns = TestDns::start(LO.parse().unwrap(), z).await.unwrap();
        let mut tcp = hickory_resolver::config::ConnectionConfig::tcp();
        tcp.port = dns.addr().port();
        let r = hickory_resolver::TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![
                hickory_resolver::config::NameServerConfig::new(dns.addr().ip(), true, vec![tcp]),
            ]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap();
        let ips: Vec<IpAddr> = r.lookup_ip("tcp.f.test.").await.unwrap().iter().collect();
        assert!(ips.contains(&IpAddr::V4(ip4("127.0.0.50"))));
        dns.stop().await;
    }
}
