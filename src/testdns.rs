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
//!
//! **DNSSEC** ([`TestDns::start_signed`], for DANE tests): the same [`Zone`] is published as a
//! small signed DNS tree built with hickory-server's authoritative machinery
//! (`InMemoryZoneHandler` + `Catalog`, ECDSA P-256 keys, NSEC denial of existence):
//! - a signed root zone `.` whose key is the trust anchor to give the validating resolver
//!   (`DaneResolver::new(.., Some(vec![anchor]))`);
//! - one signed child zone per [`Zone::sign`] origin, with its DS in the root zone (a secure
//!   delegation), holding every record at or below that origin;
//! - every other record lives in an *unsigned* zone at its name's last two labels (`u.test`
//!   for `_xmpp-server._tcp.u.test`), delegated from the root without DS, so validators prove
//!   it insecure (NSEC at the delegation), exactly like an unsigned domain under a signed TLD.
//!
//! Limits of the signed mode:
//! - no IPv4-literal synthesis;
//! - a [`Zone::sign`] origin must not lie below one of the derived two-label unsigned zones
//!   (sign `d.test`, not `a.b.test` next to unsigned records under `b.test`);
//! - hickory-server 0.26.3's NSEC NXDOMAIN answers prove the absence of the wildcard at the
//!   query name's *parent* instead of at the closest encloser, so an NXDOMAIN for a name two or
//!   more labels below the closest existing name (e.g. `_xmpp-server._tcp.nosuch.d.test` when
//!   `nosuch.d.test` does not exist) can validate as bogus. NXDOMAIN one label below an
//!   existing name or an empty non-terminal (`_xmpps-server._tcp.d.test`,
//!   `_5269._tcp.xmpp.d.test`) and NODATA validate. (NSEC3 mode was tried and made every
//!   answer bogus for hickory-resolver 0.26.3, so NSEC is used.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, AAAA, NAPTR, SOA, SRV, TLSA};
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
    Naptr {
        order: u16,
        preference: u16,
        flags: String,
        services: String,
        replacement: String,
    },
    Tlsa {
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    },
}

impl Rec {
    fn record_type(&self) -> RecordType {
        match self {
            Self::Srv { .. } => RecordType::SRV,
            Self::A(_) => RecordType::A,
            Self::Aaaa(_) => RecordType::AAAA,
            Self::Naptr { .. } => RecordType::NAPTR,
            Self::Tlsa { .. } => RecordType::TLSA,
        }
    }

    /// The record data; `None` (with a warning) for an unusable SRV target.
    fn rdata(&self) -> Option<RData> {
        Some(match self {
            Self::Srv {
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
                            return None;
                        }
                    }
                };
                RData::SRV(SRV::new(*priority, *weight, *port, target))
            }
            Self::A(ip) => RData::A(A(*ip)),
            Self::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Self::Naptr {
                order,
                preference,
                flags,
                services,
                replacement,
            } => {
                let replacement = match Name::from_ascii(format!(
                    "{}.",
                    replacement.trim_end_matches('.')
                )) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(%replacement, error = %e, "testdns: bad NAPTR replacement");
                        return None;
                    }
                };
                RData::NAPTR(NAPTR::new(
                    *order,
                    *preference,
                    flags.as_bytes().into(),
                    services.as_bytes().into(),
                    Box::default(),
                    replacement,
                ))
            }
            Self::Tlsa {
                usage,
                selector,
                matching,
                data,
            } => RData::TLSA(TLSA::new(
                CertUsage::from(*usage),
                Selector::from(*selector),
                Matching::from(*matching),
                data.clone(),
            )),
        })
    }
}

/// Records for any number of names. Names are case-insensitive; a trailing dot is optional.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: BTreeMap<String, Vec<Rec>>,
    negative_ttl: Option<u32>,
    /// Origins published as signed zones by [`TestDns::start_signed`].
    signed: BTreeSet<String>,
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

    /// Add a NAPTR record (RFC 3403) with an empty regexp, e.g.
    /// `naptr("a.test", 10, 50, "s", "SIPS+D2T", "_sips._tcp.edge.a.test")`.
    pub fn naptr(
        &mut self,
        name: &str,
        order: u16,
        preference: u16,
        flags: &str,
        services: &str,
        replacement: &str,
    ) -> &mut Self {
        self.push(
            name,
            Rec::Naptr {
                order,
                preference,
                flags: flags.to_owned(),
                services: services.to_owned(),
                replacement: replacement.trim().to_owned(),
            },
        )
    }

    /// Add a TLSA record (RFC 6698), e.g.
    /// `tlsa("_5269._tcp.xmpp.d.test", 3, 1, 1, &sha256_of_spki)`.
    pub fn tlsa(
        &mut self,
        name: &str,
        usage: u8,
        selector: u8,
        matching: u8,
        data: &[u8],
    ) -> &mut Self {
        self.push(
            name,
            Rec::Tlsa {
                usage,
                selector,
                matching,
                data: data.to_vec(),
            },
        )
    }

    /// Publish `origin` (e.g. `"d.test"`) as a DNSSEC-signed zone, securely delegated from the
    /// signed test root, when served by [`TestDns::start_signed`]: every record at or below it
    /// is signed. Ignored by [`TestDns::start`] (plain, unsigned answers).
    pub fn sign(&mut self, origin: &str) -> &mut Self {
        self.signed.insert(key(origin));
        self
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
            let Some(data) = rec.rdata() else {
                continue;
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
    /// Present when serving the signed tree ([`TestDns::start_signed`]).
    signed: Option<Arc<signed::Signed>>,
}

impl Handler {
    async fn handle<R: ResponseHandler, T: Time>(
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

        if let Some(signed) = &self.signed {
            return signed
                .handle::<R, T>(request, &qname, qtype, response_handle)
                .await;
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
        Box::pin(self.handle::<R, T>(request, response_handle))
    }
}

/// A running test DNS server. Dropping it also stops it (the server's tasks are aborted);
/// [`TestDns::stop`] shuts down gracefully.
pub struct TestDns {
    server: Server<Handler>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    signed: Option<Arc<signed::Signed>>,
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
            signed: None,
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 65_535);
        tracing::debug!(%addr, "test DNS listening (udp+tcp)");
        Ok(Self {
            server,
            addr,
            shared,
            signed: None,
        })
    }

    /// Serve `zone` as a DNSSEC-signed tree (see the module docs): a signed root, a signed,
    /// securely delegated zone per [`Zone::sign`] origin, and insecurely delegated unsigned
    /// zones for every other record. Returns the server and the root's trust anchor, for
    /// `fedgate_s2s::driver::dane::DaneResolver::new(Some(dns.nameservers()), Some(vec![anchor]))`.
    ///
    /// Answers come from hickory-server's authoritative `Catalog`: with the DO bit they carry
    /// RRSIGs, DNSKEY/DS are served, and negative answers in signed zones carry NSEC proofs and
    /// the SOA (TTL/minimum [`Zone::negative_ttl`], default 1 s). Signatures are valid from now
    /// for 7 days. Query counting and [`TestDns::set_zone`] work as for [`TestDns::start`]
    /// (`set_zone` re-signs with the same keys). Only loopback addresses are accepted.
    pub async fn start_signed(
        bind: SocketAddr,
        zone: Zone,
    ) -> anyhow::Result<(Self, fedgate_s2s::driver::dane::DaneTrustAnchor)> {
        anyhow::ensure!(
            bind.ip().is_loopback(),
            "test DNS must bind a loopback address, not {bind}"
        );
        let signed = Arc::new(signed::Signed::new(&zone)?);
        let anchor = signed.trust_anchor()?;
        let (udp, tcp) = bind_pair(bind).await?;
        let addr = udp.local_addr().context("test DNS: local address")?;
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(zone)),
            ..Shared::default()
        });
        let mut server = Server::new(Handler {
            shared: shared.clone(),
            signed: Some(signed.clone()),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 65_535);
        tracing::debug!(%addr, "signed test DNS listening (udp+tcp)");
        Ok((
            Self {
                server,
                addr,
                shared,
                signed: Some(signed),
            },
            anchor,
        ))
    }

    /// The address (UDP and TCP) the server answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the zone while running. Resolvers may still hold cached positive answers
    /// (TTL 60); negative answers are uncached unless [`Zone::negative_ttl`] was set.
    ///
    /// On a signed server ([`TestDns::start_signed`]) the tree is rebuilt and re-signed with the
    /// same keys (new [`Zone::sign`] origins get new keys); a failure is logged and the old
    /// tree stays.
    pub fn set_zone(&self, zone: Zone) {
        if let Some(signed) = &self.signed
            && let Err(e) = signed.rebuild(&zone)
        {
            tracing::warn!(error = %e, "testdns: re-signing failed, old signed zones kept");
        }
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

/// The signed tree behind [`TestDns::start_signed`].
mod signed {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, RwLock};
    use std::time::Duration;

    use anyhow::Context as _;
    use hickory_server::dnssec::NxProofKind;
    use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
    use hickory_server::proto::dnssec::crypto::EcdsaSigningKey;
    use hickory_server::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS};
    use hickory_server::proto::dnssec::{
        Algorithm, DigestType, DnssecSigner, PublicKey as _, SigningKey,
    };
    use hickory_server::proto::rr::rdata::{NS, SOA};
    use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
    use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
    use rustls_pki_types::PrivatePkcs8KeyDer;

    use super::{TTL, Zone};

    const ALG: Algorithm = Algorithm::ECDSAP256SHA256;
    /// RRSIG validity.
    const SIG_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
    const NS_HOST: &str = "ns.testdns.invalid.";

    type Handler = InMemoryZoneHandler<TokioRuntimeProvider>;

    /// One zone of the tree, served by a catalog that holds only it.
    struct Served {
        origin: LowerName,
        catalog: Catalog,
    }

    pub(super) struct Signed {
        /// PKCS#8 keys by origin (`"."` for the root), kept across rebuilds.
        keys: Mutex<BTreeMap<String, Vec<u8>>>,
        /// Zones, most specific origin first.
        zones: RwLock<Arc<Vec<Served>>>,
    }

    impl Signed {
        pub(super) fn new(zone: &Zone) -> anyhow::Result<Self> {
            let this = Self {
                keys: Mutex::new(BTreeMap::new()),
                zones: RwLock::new(Arc::new(Vec::new())),
            };
            this.rebuild(zone)?;
            Ok(this)
        }

        /// The root zone's key as trust anchor.
        pub(super) fn trust_anchor(
            &self,
        ) -> anyhow::Result<fedgate_s2s::driver::dane::DaneTrustAnchor> {
            let key = self.key(".")?;
            let public = key.to_public_key().context("root public key")?;
            Ok(fedgate_s2s::driver::dane::DaneTrustAnchor {
                zone: ".".to_owned(),
                algorithm: u8::from(ALG),
                public_key: public.public_bytes().to_vec(),
            })
        }

        /// The signing key for `origin`, generated on first use.
        fn key(&self, origin: &str) -> anyhow::Result<EcdsaSigningKey> {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if !keys.contains_key(origin) {
                let pkcs8 = EcdsaSigningKey::generate_pkcs8(ALG)
                    .map_err(|e| anyhow::anyhow!("generating a DNSSEC key: {e}"))?;
                keys.insert(origin.to_owned(), pkcs8.secret_pkcs8_der().to_vec());
            }
            let der = PrivatePkcs8KeyDer::from(keys[origin].clone());
            EcdsaSigningKey::from_pkcs8(&der, ALG)
                .map_err(|e| anyhow::anyhow!("loading the DNSSEC key of {origin}: {e}"))
        }

        /// Builds (or rebuilds) every zone from `zone`.
        pub(super) fn rebuild(&self, zone: &Zone) -> anyhow::Result<()> {
            let soa_min = zone.negative_ttl.unwrap_or(1);
            let root = Name::root();
            // Origins: signed ones from the zone, unsigned ones derived from record names.
            let mut origins: BTreeMap<String, bool> = BTreeMap::new();
            for o in &zone.signed {
                origins.insert(o.clone(), true);
            }
            for name in zone.records.keys() {
                if zone.signed.iter().any(|o| under(name, o)) {
                    continue;
                }
                let labels: Vec<&str> = name.split('.').collect();
                let origin = labels[labels.len().saturating_sub(2)..].join(".");
                origins.entry(origin).or_insert(false);
            }

            let mut handlers: Vec<(Name, Handler, bool)> = Vec::new();
            let mut root_zone = new_zone(&root, true, soa_min)?;
            for (origin, &is_signed) in &origins {
                let name = fqdn(origin)?;
                let mut child = new_zone(&name, is_signed, soa_min)?;
                // Records at or below this origin, unless a more specific origin holds them.
                for (owner, recs) in &zone.records {
                    let home = origins
                        .keys()
                        .filter(|o| under(owner, o))
                        .max_by_key(|o| o.len());
                    if home != Some(origin) {
                        continue;
                    }
                    let owner_name = fqdn(owner)?;
                    for rec in recs {
                        if let Some(data) = rec.rdata() {
                            upsert(
                                &mut child,
                                Record::from_rdata(owner_name.clone(), TTL, data),
                            )?;
                        }
                    }
                }
                // Delegation from the root: NS, plus DS for a signed child.
                upsert(&mut root_zone, ns_record(&name)?)?;
                if is_signed {
                    let key = self.key(origin)?;
                    let public = key.to_public_key().context("child public key")?;
                    let ds = DS::from_key(&public, &name, DigestType::SHA256)
                        .map_err(|e| anyhow::anyhow!("DS for {origin}: {e}"))?;
                    upsert(
                        &mut root_zone,
                        Record::from_rdata(name.clone(), TTL, RData::DNSSEC(DNSSECRData::DS(ds))),
                    )?;
                    self.sign_zone(&mut child, &name, origin)?;
                }
                handlers.push((name, child, is_signed));
            }
            self.sign_zone(&mut root_zone, &root, ".")?;
            handlers.push((root, root_zone, true));

            let mut served: Vec<Served> = handlers
                .into_iter()
                .map(|(name, handler, _)| {
                    let origin = LowerName::from(&name);
                    let mut catalog = Catalog::new();
                    catalog.upsert(
                        origin.clone(),
                        vec![Arc::new(handler) as Arc<dyn ZoneHandler>],
                    );
                    Served { origin, catalog }
                })
                .collect();
            served.sort_by_key(|s| std::cmp::Reverse(s.origin.num_labels()));
            *self.zones.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
            Ok(())
        }

        fn sign_zone(&self, zone: &mut Handler, name: &Name, origin: &str) -> anyhow::Result<()> {
            let key = self.key(origin)?;
            let public = key.to_public_key().context("public key")?;
            let signer = DnssecSigner::new(
                DNSKEY::from_key(&public),
                Box::new(key),
                name.clone(),
                SIG_VALIDITY,
            );
            zone.add_zone_signing_key_mut(signer)
                .map_err(|e| anyhow::anyhow!("adding the key of {origin}: {e}"))?;
            zone.secure_zone_mut()
                .map_err(|e| anyhow::anyhow!("signing {origin}: {e}"))
        }

        /// Answers from the zone that is authoritative for the query: the most specific origin
        /// at or above the name, except that DS at a zone apex comes from the parent.
        pub(super) async fn handle<R: ResponseHandler, T: Time>(
            &self,
            request: &Request,
            qname: &Name,
            qtype: RecordType,
            response_handle: R,
        ) -> ResponseInfo {
            let zones = self.zones.read().unwrap_or_else(|e| e.into_inner()).clone();
            let lower = LowerName::from(qname);
            let served = zones
                .iter()
                .find(|z| {
                    z.origin.zone_of(&lower)
                        && !(qtype == RecordType::DS && z.origin == lower && !lower.is_root())
                })
                .or_else(|| zones.last());
            match served {
                Some(z) => {
                    z.catalog
                        .handle_request::<R, T>(request, response_handle)
                        .await
                }
                None => unreachable!("the root zone is always present"),
            }
        }
    }

    /// `name` equals `origin` or lies below it (both normalized, no trailing dot).
    fn under(name: &str, origin: &str) -> bool {
        name == origin || name.ends_with(&format!(".{origin}"))
    }

    fn fqdn(name: &str) -> anyhow::Result<Name> {
        if name.is_empty() || name == "." {
            return Ok(Name::root());
        }
        Name::from_ascii(format!("{name}.")).with_context(|| format!("bad zone name {name:?}"))
    }

    fn ns_record(owner: &Name) -> anyhow::Result<Record> {
        Ok(Record::from_rdata(
            owner.clone(),
            TTL,
            RData::NS(NS(Name::from_ascii(NS_HOST)?)),
        ))
    }

    fn upsert(zone: &mut Handler, record: Record) -> anyhow::Result<()> {
        let what = format!("{} {}", record.name, record.record_type());
        anyhow::ensure!(zone.upsert_mut(record, 1), "testdns: could not add {what}");
        Ok(())
    }

    /// An empty zone with SOA and NS at its apex.
    fn new_zone(origin: &Name, signed: bool, soa_min: u32) -> anyhow::Result<Handler> {
        let mut zone = Handler::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            signed.then_some(NxProofKind::Nsec),
        );
        let soa = SOA::new(
            Name::from_ascii(NS_HOST)?,
            Name::from_ascii("hostmaster.testdns.invalid.")?,
            1,
            3600,
            600,
            86_400,
            soa_min,
        );
        upsert(
            &mut zone,
            Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)),
        )?;
        upsert(&mut zone, ns_record(origin)?)?;
        Ok(zone)
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

    /// A plain hickory resolver asking only `addr` over one transport (raw lookups that
    /// S2sResolver does not offer).
    fn raw_resolver(addr: SocketAddr, tcp: bool) -> hickory_resolver::TokioResolver {
        let mut conn = if tcp {
            hickory_resolver::config::ConnectionConfig::tcp()
        } else {
            hickory_resolver::config::ConnectionConfig::udp()
        };
        conn.port = addr.port();
        hickory_resolver::TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![
                hickory_resolver::config::NameServerConfig::new(addr.ip(), true, vec![conn]),
            ]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap()
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
        let r = raw_resolver(dns.addr(), false);
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
    async fn tlsa_records_are_served_plain() {
        let mut z = Zone::new();
        z.tlsa("_5269._tcp.xmpp.g.test", 3, 1, 1, &[0xab; 32]);
        let (dns, _) = start(z).await;
        let r =
            fedgate_s2s::driver::dane::DaneResolver::new(Some(dns.nameservers()), None).unwrap();
        // Unsigned and not under the (real) root: never DANE, and no panic.
        let out = r.lookup("g.test", "xmpp.g.test", 5269).await;
        assert!(
            !matches!(out, fedgate_s2s::driver::dane::TlsaLookup::Secure(_)),
            "{out:?}"
        );
        let plain = raw_resolver(dns.addr(), false);
        let lookup = plain
            .tlsa_lookup(Name::from_ascii("_5269._tcp.xmpp.g.test.").unwrap())
            .await
            .unwrap();
        let got: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(t) => Some((
                    u8::from(t.cert_usage),
                    u8::from(t.selector),
                    u8::from(t.matching),
                    t.cert_data.clone(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![(3, 1, 1, vec![0xab; 32])]);
        dns.stop().await;
    }

    #[tokio::test]
    async fn signed_tree_validates_secure_and_insecure() {
        use fedgate_s2s::driver::dane::{DaneResolver, TlsaLookup};
        let mut z = Zone::new();
        z.sign("s.test")
            .srv("_xmpp-server._tcp.s.test", 0, 0, 5269, "xmpp.s.test")
            .a("xmpp.s.test", ip4("127.0.0.60"))
            .tlsa("_5269._tcp.xmpp.s.test", 3, 1, 1, &[0xcd; 32])
            .srv(
                "_xmpp-server._tcp.plain.test",
                0,
                0,
                5269,
                "xmpp.plain.test",
            )
            .a("xmpp.plain.test", ip4("127.0.0.61"))
            .tlsa("_5269._tcp.xmpp.plain.test", 3, 1, 1, &[0xcd; 32]);
        let (dns, anchor) = TestDns::start_signed(LO.parse().unwrap(), z).await.unwrap();
        assert_eq!(anchor.zone, ".");
        let r = DaneResolver::new(Some(dns.nameservers()), Some(vec![anchor])).unwrap();
        match r.lookup("s.test", "xmpp.s.test", 5269).await {
            TlsaLookup::Secure(recs) => assert_eq!(recs[0].data, vec![0xcd; 32]),
            other => panic!("{other:?}"),
        }
        match r.lookup("plain.test", "xmpp.plain.test", 5269).await {
            TlsaLookup::NotApplicable(why) => assert!(why.contains("insecure"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(dns.queries() > 0);
        assert!(
            dns.queried_names()
                .contains(&"_5269._tcp.xmpp.s.test".to_owned()),
            "{:?}",
            dns.queried_names()
        );
        // The non-validating s2s resolver gets the same records from the signed server.
        let s2s = S2sResolver::new(Some(dns.nameservers()), StaticTargets::default()).unwrap();
        assert_eq!(s2s.targets("s.test").await.unwrap()[0].host, "xmpp.s.test");
        assert_eq!(
            s2s.addrs("xmpp.plain.test").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.61"))]
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
        let r = raw_resolver(dns.addr(), true);
        let ips: Vec<IpAddr> = r.lookup_ip("tcp.f.test.").await.unwrap().iter().collect();
        assert!(ips.contains(&IpAddr::V4(ip4("127.0.0.50"))));
        dns.stop().await;
    }
}
