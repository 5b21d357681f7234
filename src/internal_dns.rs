//! Internal resolver (issue 8): a small DNS server for the XMPP servers *behind* fedgate.
//!
//! Bookworm's Prosody 0.12.3 and ejabberd 23.01 cannot be told to send all outbound s2s to one
//! host:port, but they can be pointed at a DNS server. Pointed at this one, every outbound s2s
//! connection they make lands on fedgate's internal listener:
//!
//! - `_xmpp-server._tcp.D` for a domain D that fedgate does **not** host: one SRV record
//!   `0 0 <port> <ip-literal>.` (e.g. `0 0 15269 127.0.0.30.`), TTL [`TTL`], naming the
//!   internal listener, with the matching A record in the additional section.
//!   The target is an IP literal because ejabberd resolves SRV *targets* with libc
//!   `getaddrinfo`, which ignores the DNS server ejabberd was given but accepts literals.
//! - `_xmpps-server._tcp.D` for D not hosted: NOERROR with no answers (NODATA). Both servers
//!   try direct TLS first when `_xmpps-server` answers (Prosody sends a ClientHello with the
//!   remote domain as SNI). fedgate's listener would cope (it sniffs the first byte), but
//!   answering only `_xmpp-server` keeps one connection attempt per stream and the plain
//!   STARTTLS path, which both servers handle the same way.
//! - the listener's IP-literal name (`127.0.0.30.`): A `127.0.0.30` (other types: NODATA),
//!   because Prosody resolves an IP-literal SRV target as a DNS name. The listener must be
//!   IPv4: an IPv6 literal is not a valid DNS name, so it cannot be an SRV target.
//! - everything else (any question about a hosted domain, other names and types, several
//!   questions, classes other than IN) is forwarded **unchanged** to the upstream resolvers
//!   over the transport it arrived on (UDP, or TCP with the 2-byte length prefix), each
//!   upstream in order with a [`UPSTREAM_TIMEOUT`] (2 s) limit, and the reply bytes are relayed
//!   unchanged (the transaction id already matches, since the query bytes were not changed).
//!   When no upstream answers, the client gets SERVFAIL.
//!
//! Answers made here are not DNSSEC-signed: the internal servers must not validate the names
//! this resolver rewrites (neither Prosody's lua-unbound nor ejabberd does by default).
//! Non-query opcodes (NOTIFY, UPDATE, ...) get NOTIMP; DNS *responses* sent to it are dropped.
//!
//! **Exposure.** The resolver is off by default. It answers anyone who can reach it and it
//! forwards recursively, so bind it to loopback or an internal address that the internet cannot
//! reach (an open forwarder is an amplification tool). It refuses an upstream that is its own
//! address (an immediate loop); it cannot see longer loops (e.g. an upstream unbound that
//! forwards back to it), so do not list it as a forwarder of its own upstream.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// TTL of the answers made locally, in seconds (short, so that turning the resolver off or
/// moving the listener takes effect quickly).
pub const TTL: u32 = 60;
/// How long to wait for each upstream resolver (per query, per upstream).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle timeout of a client TCP connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queries (UDP) or connections (TCP) handled at once; UDP queries beyond it are dropped
/// (the client retries), TCP connections beyond it wait in the accept backlog.
const MAX_IN_FLIGHT: usize = 256;
/// Resolver configuration read when [`InternalResolverConfig::upstream`] is empty.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Configuration of the [`InternalResolver`].
#[derive(Debug, Clone)]
pub struct InternalResolverConfig {
    /// Where to listen, UDP and TCP on the same port (port 0: any free port; read it back with
    /// [`InternalResolver::addr`]). Loopback or an internal address; never internet-facing.
    pub bind: SocketAddr,
    /// Domains fedgate hosts (case-insensitive, trailing dot optional): questions about them
    /// are forwarded, not redirected. Include aliases such as `conference.example.test`;
    /// subdomains are not covered implicitly.
    pub hosted: HashSet<String>,
    /// fedgate's internal s2s listener: the SRV answers point here. Must be a concrete IPv4
    /// address (not `0.0.0.0`) with a non-zero port.
    pub listener: SocketAddr,
    /// Upstream resolvers, tried in order. Empty: the `nameserver` lines of
    /// `/etc/resolv.conf` (port 53).
    pub upstream: Vec<SocketAddr>,
}

/// Query counters shared by the server tasks.
#[derive(Debug, Default)]
struct Counters {
    answered: AtomicU64,
    forwarded: AtomicU64,
    failed: AtomicU64,
}

/// What the server tasks need.
#[derive(Debug)]
struct State {
    hosted: HashSet<String>,
    listener: SocketAddrV4,
    /// The listener's address as a DNS name (`127.0.0.30.`, four labels).
    target: Name,
    upstream: Vec<SocketAddr>,
    timeout: Duration,
    counters: Counters,
}

/// A running internal resolver. Dropping it stops it (its tasks are aborted); [`stop`]
/// also waits until the sockets are closed.
///
/// [`stop`]: InternalResolver::stop
#[derive(Debug)]
pub struct InternalResolver {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl InternalResolver {
    /// Bind UDP and TCP on `cfg.bind` and start serving (see the module docs for the answers).
    /// Fails when the listener is not a concrete address and port, when no upstream is
    /// configured or found in `/etc/resolv.conf`, when an upstream is this resolver's own
    /// address, or when binding fails.
    pub async fn start(cfg: InternalResolverConfig) -> anyhow::Result<Self> {
        Self::start_with_timeout(cfg, UPSTREAM_TIMEOUT).await
    }

    async fn start_with_timeout(
        cfg: InternalResolverConfig,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let listener_ip = match cfg.listener {
            SocketAddr::V4(v4) if !v4.ip().is_unspecified() && v4.port() != 0 => *v4.ip(),
            other => anyhow::bail!(
                "internal DNS: the listener must be a concrete IPv4 address and port, not {other}"
            ),
        };
        let upstream = if cfg.upstream.is_empty() {
            let text = std::fs::read_to_string(RESOLV_CONF).with_context(|| {
                format!("internal DNS: no upstream given, reading {RESOLV_CONF}")
            })?;
            let found = resolv_conf_nameservers(&text);
            anyhow::ensure!(
                !found.is_empty(),
                "internal DNS: no upstream given and no nameserver in {RESOLV_CONF}"
            );
            found
        } else {
            cfg.upstream.clone()
        };
        if cfg.bind.port() != 0
            && let Some(u) = upstream.iter().find(|u| is_self(&cfg.bind, u))
        {
            anyhow::bail!("internal DNS: upstream {u} is the resolver itself");
        }
        let target = Name::from_ascii(format!("{listener_ip}."))
            .context("internal DNS: listener address as a DNS name")?;
        let (udp, tcp) = bind_pair(cfg.bind).await?;
        let addr = udp.local_addr().context("internal DNS: local address")?;
        if let Some(u) = upstream.iter().find(|u| is_self(&addr, u)) {
            anyhow::bail!("internal DNS: upstream {u} is the resolver itself");
        }
        let state = Arc::new(State {
            hosted: cfg.hosted.iter().map(|d| normalize(d)).collect(),
            listener: SocketAddrV4::new(listener_ip, cfg.listener.port()),
            target,
            upstream,
            timeout,
            counters: Counters::default(),
        });
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "internal DNS bound to a non-loopback address: it must not face the internet");
        }
        tracing::info!(%addr, listener = %state.listener, upstream = ?state.upstream, "internal DNS listening (udp+tcp)");
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        Ok(Self { addr, state, tasks })
    }

    /// The bound address (UDP and TCP share the port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Questions answered locally (the SRV redirect, the `_xmpps-server` NODATA, the listener's
    /// A).
    pub fn answered(&self) -> u64 {
        self.state.counters.answered.load(Ordering::Relaxed)
    }

    /// Questions forwarded to the upstream resolvers (answered or not).
    pub fn forwarded(&self) -> u64 {
        self.state.counters.forwarded.load(Ordering::Relaxed)
    }

    /// Forwarded questions that no upstream answered (the client got SERVFAIL).
    pub fn upstream_failures(&self) -> u64 {
        self.state.counters.failed.load(Ordering::Relaxed)
    }

    /// The upstream resolvers in use (the configured ones or those of `/etc/resolv.conf`).
    pub fn upstream(&self) -> &[SocketAddr] {
        &self.state.upstream
    }

    /// Stop serving and wait until the sockets are closed.
    pub async fn stop(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        tracing::debug!(addr = %self.addr, "internal DNS stopped");
    }
}

impl Drop for InternalResolver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `nameserver` lines of a resolv.conf text, port 53, in order. IPv6 addresses with a zone
/// (`fe80::1%eth0`) are skipped.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Would sending to `upstream` reach the resolver bound at `bind`?
fn is_self(bind: &SocketAddr, upstream: &SocketAddr) -> bool {
    upstream.port() == bind.port()
        && (upstream.ip() == bind.ip()
            || (bind.ip().is_unspecified()
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
}

/// Lower case, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Bind UDP and TCP on the same address; with port 0, retry until both get the same port.
async fn bind_pair(bind: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("internal DNS: bind udp {bind}"))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(bind.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e).with_context(|| format!("internal DNS: bind tcp {bind}")),
        }
    }
    Err(anyhow::anyhow!(
        "internal DNS: no port free for both udp and tcp on {}: {last_err:?}",
        bind.ip()
    ))
}

/// What to do with one incoming packet.
#[derive(Debug)]
enum Action {
    /// Send this (locally made) reply.
    Reply(Vec<u8>),
    /// Forward the query bytes; on failure reply with this SERVFAIL.
    Forward { servfail: Vec<u8> },
    /// Say nothing.
    Drop,
}

impl State {
    /// Decide what to do with a packet from a client.
    fn classify(&self, packet: &[u8]) -> Action {
        let msg = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "internal DNS: unparseable query");
                // FORMERR when at least the id can be read and it is not a response.
                return match packet {
                    [a, b, flags, ..] if packet.len() >= 12 && flags & 0x80 == 0 => {
                        let id = u16::from_be_bytes([*a, *b]);
                        encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr))
                            .map_or(Action::Drop, Action::Reply)
                    }
                    _ => Action::Drop,
                };
            }
        };
        if msg.metadata.message_type != MessageType::Query {
            return Action::Drop;
        }
        if msg.metadata.op_code != OpCode::Query {
            let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
            resp.metadata = Metadata::response_from_request(&msg.metadata);
            resp.metadata.response_code = ResponseCode::NotImp;
            return encode(resp).map_or(Action::Drop, Action::Reply);
        }
        match self.local_answer(&msg) {
            Some(resp) => {
                self.counters.answered.fetch_add(1, Ordering::Relaxed);
                encode(resp).map_or(Action::Drop, Action::Reply)
            }
            None => match encode(response_to(&msg, ResponseCode::ServFail)) {
                Some(servfail) => Action::Forward { servfail },
                None => Action::Drop,
            },
        }
    }

    /// The local answer to `msg`, if the question is one this resolver answers itself.
    fn local_answer(&self, msg: &Message) -> Option<Message> {
        let [q] = msg.queries.as_slice() else {
            return None;
        };
        if q.query_class() != DNSClass::IN {
            return None;
        }
        let qtype = q.query_type();
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let labels: Vec<String> = q
            .name()
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match labels.as_slice() {
            [service, tcp, domain @ ..]
                if tcp == "_tcp"
                    && !domain.is_empty()
                    && (service == "_xmpp-server" || service == "_xmpps-server") =>
            {
                if self.hosted.contains(&domain.join(".")) {
                    return None;
                }
                if service == "_xmpp-server" && wants(RecordType::SRV) {
                    answers.push(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 0, self.listener.port(), self.target.clone())),
                    ));
                    additionals.push(self.target_record());
                }
                // `_xmpps-server`, or another type at `_xmpp-server`: the name exists, no data.
            }
            _ if labels.join(".").parse::<Ipv4Addr>().ok() == Some(*self.listener.ip()) => {
                if wants(RecordType::A) {
                    let mut rec = self.target_record();
                    rec.name = q.name().clone();
                    answers.push(rec);
                }
            }
            _ => return None,
        }
        tracing::debug!(name = %q.name(), %qtype, answers = answers.len(), "internal DNS: answered locally");
        let mut resp = response_to(msg, ResponseCode::NoError);
        resp.metadata.authoritative = true;
        resp.answers = answers;
        resp.additionals = additionals;
        Some(resp)
    }

    /// A of the listener's literal name.
    fn target_record(&self) -> Record {
        Record::from_rdata(self.target.clone(), TTL, RData::A(A(*self.listener.ip())))
    }
}

/// An empty response to `msg` with this code: same id, the question echoed, RD/CD copied,
/// RA set, EDNS answered when the query had it.
fn response_to(msg: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&msg.metadata);
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = code;
    resp.queries = msg.queries.clone();
    if let Some(req) = &msg.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().max(512));
        resp.set_edns(edns);
    }
    resp
}

fn encode(msg: Message) -> Option<Vec<u8>> {
    msg.to_vec()
        .inspect_err(|e| tracing::warn!(error = %e, "internal DNS: cannot encode a reply"))
        .ok()
}

/// The transaction id of a DNS packet.
fn packet_id(packet: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.first()?, *packet.get(1)?]))
}

async fn serve_udp(sock: Arc<UdpSocket>, state: Arc<State>) {
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; 65_535];
    loop {
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            got = sock.recv_from(&mut buf) => {
                let (n, peer) = match got {
                    Ok(x) => x,
                    Err(e) => {
                        // e.g. ICMP errors reported on the socket; keep serving.
                        tracing::debug!(error = %e, "internal DNS: udp receive");
                        continue;
                    }
                };
                if in_flight.len() >= MAX_IN_FLIGHT {
                    tracing::debug!(%peer, "internal DNS: too many queries in flight, dropped");
                    continue;
                }
                let packet = buf[..n].to_vec();
                let (sock, state) = (sock.clone(), state.clone());
                in_flight.spawn(async move {
                    let Some(reply) = state.handle(&packet, Transport::Udp).await else {
                        return;
                    };
                    if let Err(e) = sock.send_to(&reply, peer).await {
                        tracing::debug!(%peer, error = %e, "internal DNS: udp send");
                    }
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            got = listener.accept(), if conns.len() < MAX_IN_FLIGHT => {
                match got {
                    Ok((stream, peer)) => {
                        let state = state.clone();
                        conns.spawn(async move {
                            if let Err(e) = serve_tcp_conn(stream, &state).await {
                                tracing::debug!(%peer, error = %e, "internal DNS: tcp connection");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "internal DNS: tcp accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

/// Queries on one client TCP connection, answered in order, until EOF or idle timeout.
async fn serve_tcp_conn(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let mut packet = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if let Some(reply) = state.handle(&packet, Transport::Tcp).await {
            write_framed(&mut stream, &reply).await?;
        }
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl State {
    /// The reply to one client packet, if any.
    async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match self.classify(packet) {
            Action::Reply(r) => Some(r),
            Action::Drop => None,
            Action::Forward { servfail } => {
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                match self.forward(packet, transport).await {
                    Some(r) => Some(r),
                    None => {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        Some(servfail)
                    }
                }
            }
        }
    }

    /// Each upstream in order; the first reply wins.
    async fn forward(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let id = packet_id(packet)?;
        for up in &self.upstream {
            let got = match transport {
                Transport::Udp => {
                    tokio::time::timeout(self.timeout, forward_udp(packet, id, *up)).await
                }
                Transport::Tcp => {
                    tokio::time::timeout(self.timeout, forward_tcp(packet, id, *up)).await
                }
            };
            match got {
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %up, ?transport, error = %e, "internal DNS: upstream failed");
                }
                Err(_) => {
                    tracing::debug!(upstream = %up, ?transport, "internal DNS: upstream timed out");
                }
            }
        }
        None
    }
}

/// Send the query from a fresh socket connected to `up`; return the first reply with the same id.
async fn forward_udp(packet: &[u8], id: u16, up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match up {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(packet).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A response (QR set) with our id; anything else is stray and ignored.
        if n >= 12 && packet_id(&buf[..n]) == Some(id) && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// One query over a new TCP connection to `up` (2-byte length prefix).
async fn forward_tcp(packet: &[u8], id: u16, up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(up).await?;
    write_framed(&mut stream, packet).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    if reply.len() < 12 || packet_id(&reply) != Some(id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "reply with another transaction id",
        ));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdns::{TestDns, Zone};
    use fedgate_s2s::resolve::{S2sResolver, StaticTargets, Target};
    use hickory_proto::op::Query;
    use hickory_resolver::TokioResolver;
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use std::time::Instant;

    const LISTENER: &str = "127.0.0.30:15269";

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cfg(upstream: Vec<SocketAddr>) -> InternalResolverConfig {
        InternalResolverConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            hosted: [
                "Example.test.".to_owned(),
                "conference.example.test".to_owned(),
            ]
            .into_iter()
            .collect(),
            listener: LISTENER.parse().unwrap(),
            upstream,
        }
    }

    async fn upstream_dns() -> TestDns {
        let mut z = Zone::new();
        z.a("upstream.test", ip4("127.0.0.41"))
            .srv(
                "_xmpp-server._tcp.example.test",
                0,
                0,
                5269,
                "xmpp.example.test",
            )
            .a("xmpp.example.test", ip4("127.0.0.42"));
        TestDns::start("127.0.0.1:0".parse().unwrap(), z)
            .await
            .unwrap()
    }

    /// A hickory resolver that asks only `addr`, over UDP or TCP.
    fn raw_resolver(addr: SocketAddr, tcp: bool) -> TokioResolver {
        let mut conn = if tcp {
            ConnectionConfig::tcp()
        } else {
            ConnectionConfig::udp()
        };
        conn.port = addr.port();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                addr.ip(),
                true,
                vec![conn],
            )]),
            TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap()
    }

    /// A port on loopback where nothing listens (UDP and TCP), so sends are refused at once.
    async fn dead_addr() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
        // dropped here: the port is closed again
    }

    fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    async fn udp_exchange(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), s.recv_from(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn redirects_unhosted_domains_to_the_listener() {
        let up = upstream_dns().await;
        let res = InternalResolver::start(cfg(vec![up.addr()])).await.unwrap();
        let r = S2sResolver::new(Some(vec![res.addr()]), StaticTargets::default()).unwrap();
        let t = r.targets("partner.test").await.unwrap();
        assert_eq!(
            t,
            vec![Target {
                host: "127.0.0.30".into(),
                port: 15269,
                direct_tls: false,
                from_srv: true
            }]
        );
        // Any domain, any case, including ones the upstream has never heard of.
        let t = r.targets("Some.Other.ORG").await.unwrap();
        assert_eq!((t[0].host.as_str(), t[0].port), ("127.0.0.30", 15269));
        // _xmpp-server and _xmpps-server for two domains: answered here, never upstream.
        assert_eq!(res.answered(), 4);
        assert_eq!(res.forwarded(), 0);
        assert_eq!(up.queries(), 0);
        res.stop().await;
        up.stop().await;
    }

    #[tokio::test]
    async fn srv_answer_shape_and_xmpps_nodata() {
        let res = InternalResolver::start(cfg(vec![dead_addr().await]))
            .await
            .unwrap();
        let reply = udp_exchange(
            res.addr(),
            &query_bytes(0x4242, "_xmpp-server._tcp.partner.test.", RecordType::SRV),
        )
        .await;
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, TTL);
        match &m.answers[0].data {
            RData::SRV(s) => {
                assert_eq!((s.priority, s.weight, s.port), (0, 0, 15269));
                assert_eq!(s.target.to_ascii(), "127.0.0.30.");
            }
            other => panic!("{other:?}"),
        }
        // The target's A record rides along in the additional section.
        assert!(
            m.additionals
                .iter()
                .any(|r| matches!(r.data, RData::A(A(ip)) if ip == ip4("127.0.0.30"))),
            "{:?}",
            m.additionals
        );
        // _xmpps-server: NOERROR, no answers.
        let reply = udp_exchange(
            res.addr(),
            &query_bytes(7, "_xmpps-server._tcp.partner.test.", RecordType::SRV),
        )
        .await;
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(res.answered(), 2);
        assert_eq!(res.forwarded(), 0);
        res.stop().await;
    }

    #[tokio::test]
    async fn hosted_domains_and_other_names_are_forwarded() {
        let up = upstream_dns().await;
        let res = InternalResolver::start(cfg(vec![up.addr()])).await.unwrap();
        let r = S2sResolver::new(Some(vec![res.addr()]), StaticTargets::default()).unwrap();
        // Hosted (configured as "Example.test."): the upstream's SRV.
        let t = r.targets("example.test").await.unwrap();
        assert_eq!(
            t,
            vec![Target {
                host: "xmpp.example.test".into(),
                port: 5269,
                direct_tls: false,
                from_srv: true
            }]
        );
        assert_eq!(
            r.addrs("xmpp.example.test").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.42"))]
        );
        assert_eq!(
            r.addrs("upstream.test").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.41"))]
        );
        // NXDOMAIN from upstream is relayed as NXDOMAIN.
        let err = r.addrs("nosuch.test").await.unwrap_err();
        assert!(err.detail.contains("NXDOMAIN"), "{err}");
        assert_eq!(res.answered(), 0);
        // 2 SRV + (A, AAAA) x 3 names.
        assert_eq!(res.forwarded(), 8);
        assert_eq!(up.queries(), 8);
        assert_eq!(res.upstream_failures(), 0);
        res.stop().await;
        up.stop().await;
    }

    #[tokio::test]
    async fn forwarded_reply_is_relayed_byte_for_byte() {
        let up = upstream_dns().await;
        let res = InternalResolver::start(cfg(vec![up.addr()])).await.unwrap();
        for (name, qtype) in [
            ("upstream.test.", RecordType::A),
            ("_xmpp-server._tcp.example.test.", RecordType::SRV),
            ("nosuch.test.", RecordType::AAAA),
        ] {
            let q = query_bytes(0xbeef, name, qtype);
            let direct = udp_exchange(up.addr(), &q).await;
            let relayed = udp_exchange(res.addr(), &q).await;
            assert_eq!(relayed, direct, "{name} {qtype}");
        }
        assert_eq!(res.forwarded(), 3);
        res.stop().await;
        up.stop().await;
    }

    #[tokio::test]
    async fn literal_target_name_gets_an_a_record() {
        let up = upstream_dns().await;
        let res = InternalResolver::start(cfg(vec![up.addr()])).await.unwrap();
        let r = raw_resolver(res.addr(), false);
        let lookup = r
            .lookup(Name::from_ascii("127.0.0.30.").unwrap(), RecordType::A)
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
        assert_eq!(ips, vec![ip4("127.0.0.30")]);
        assert_eq!(res.answered(), 1);
        // AAAA of the v4 literal: NODATA, locally.
        let reply =
            udp_exchange(res.addr(), &query_bytes(9, "127.0.0.30.", RecordType::AAAA)).await;
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(res.answered(), 2);
        // Another literal is not ours: forwarded (the test upstream synthesizes it too).
        let lookup = r
            .lookup(Name::from_ascii("127.0.0.31.").unwrap(), RecordType::A)
            .await
            .unwrap();
        assert_eq!(lookup.answers().len(), 1);
        assert_eq!(res.forwarded(), 1);
        // S2sResolver never asks DNS for a literal.
        let s2s = S2sResolver::new(Some(vec![res.addr()]), StaticTargets::default()).unwrap();
        assert_eq!(
            s2s.addrs("127.0.0.30").await.unwrap(),
            vec![IpAddr::V4(ip4("127.0.0.30"))]
        );
        assert_eq!(res.answered() + res.forwarded(), 3);
        res.stop().await;
        up.stop().await;
    }

    #[tokio::test]
    async fn upstream_down_is_servfail_promptly() {
        let res = InternalResolver::start(cfg(vec![dead_addr().await]))
            .await
            .unwrap();
        let started = Instant::now();
        let reply = udp_exchange(
            res.addr(),
            &query_bytes(0x1234, "upstream.test.", RecordType::A),
        )
        .await;
        assert!(
            started.elapsed() < UPSTREAM_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(res.forwarded(), 1);
        assert_eq!(res.upstream_failures(), 1);
        // Over TCP too.
        let r = raw_resolver(res.addr(), true);
        let started = Instant::now();
        assert!(r.lookup_ip("upstream.test.").await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(res.upstream_failures() >= 2);
        // Local answers do not need the upstream.
        let s2s = S2sResolver::new(Some(vec![res.addr()]), StaticTargets::default()).unwrap();
        assert_eq!(s2s.targets("partner.test").await.unwrap()[0].port, 15269);
        res.stop().await;
    }

    #[tokio::test]
    async fn silent_upstream_times_out_then_next_upstream_answers() {
        // Bound but never answering: costs the (shortened) timeout, then the next one answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = upstream_dns().await;
        let res = InternalResolver::start_with_timeout(
            cfg(vec![
                dead_addr().await,
                silent.local_addr().unwrap(),
                up.addr(),
            ]),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let reply =
            udp_exchange(res.addr(), &query_bytes(5, "upstream.test.", RecordType::A)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(res.upstream_failures(), 0);
        // With only the silent one: SERVFAIL after the timeout.
        let only_silent = InternalResolver::start_with_timeout(
            cfg(vec![silent.local_addr().unwrap()]),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let reply = udp_exchange(
            only_silent.addr(),
            &query_bytes(6, "upstream.test.", RecordType::A),
        )
        .await;
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
        assert_eq!(only_silent.upstream_failures(), 1);
        only_silent.stop().await;
        res.stop().await;
        up.stop().await;
    }

    #[tokio::test]
    async fn tcp_answers_locally_and_forwards() {
        let up = upstream_dns().await;
        let res = InternalResolver::start(cfg(vec![up.addr()])).await.unwrap();
        let r = raw_resolver(res.addr(), true);
        let srv = r
            .srv_lookup(Name::from_ascii("_xmpp-server._tcp.partner.test.").unwrap())
            .await
            .unwrap();
        let got: Vec<_> = srv
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![(15269, "127.0.0.30.".to_owned())]);
        let ips: Vec<IpAddr> = r
            .lookup_ip("upstream.test.")
            .await
            .unwrap()
            .iter()
            .collect();
        assert_eq!(ips, vec![IpAddr::V4(ip4("127.0.0.41"))]);
        assert_eq!(res.answered(), 1);
        assert!(res.forwarded() >= 1);
        res.stop().await;
        up.stop().await;
    }

    #[tokio::test]
    async fn odd_packets() {
        let res = InternalResolver::start(cfg(vec![dead_addr().await]))
            .await
            .unwrap();
        // Garbage with a readable header: FORMERR with the same id.
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0x3f; 5]);
        let reply = udp_exchange(res.addr(), &junk).await;
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
        // NOTIFY: NOTIMP.
        let mut m = Message::new(3, MessageType::Query, OpCode::Notify);
        m.add_query(Query::query(
            Name::from_ascii("partner.test.").unwrap(),
            RecordType::SOA,
        ));
        let reply = udp_exchange(res.addr(), &m.to_vec().unwrap()).await;
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(res.answered() + res.forwarded(), 0);
        // Still serving.
        let reply = udp_exchange(
            res.addr(),
            &query_bytes(4, "_xmpp-server._tcp.p.test.", RecordType::SRV),
        )
        .await;
        assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 1);
        res.stop().await;
    }

    #[tokio::test]
    async fn refuses_bad_configs() {
        let mut c = cfg(vec!["127.0.0.1:5399".parse().unwrap()]);
        c.bind = "127.0.0.1:5399".parse().unwrap();
        let err = InternalResolver::start(c).await.unwrap_err();
        assert!(err.to_string().contains("itself"), "{err}");
        let mut c = cfg(vec!["127.0.0.1:5399".parse().unwrap()]);
        c.bind = "0.0.0.0:5399".parse().unwrap();
        assert!(InternalResolver::start(c).await.is_err());
        let mut c = cfg(vec!["127.0.0.1:53".parse().unwrap()]);
        c.listener = "0.0.0.0:15269".parse().unwrap();
        assert!(InternalResolver::start(c).await.is_err());
        let mut c = cfg(vec!["127.0.0.1:53".parse().unwrap()]);
        c.listener = "127.0.0.30:0".parse().unwrap();
        assert!(InternalResolver::start(c).await.is_err());
        let mut c = cfg(vec!["127.0.0.1:53".parse().unwrap()]);
        c.listener = "[::1]:15269".parse().unwrap();
        let err = InternalResolver::start(c).await.unwrap_err();
        assert!(err.to_string().contains("IPv4"), "{err}");
    }

    #[tokio::test]
    async fn stop_frees_the_port() {
        let res = InternalResolver::start(cfg(vec![dead_addr().await]))
            .await
            .unwrap();
        let addr = res.addr();
        res.stop().await;
        UdpSocket::bind(addr).await.unwrap();
        TcpListener::bind(addr).await.unwrap();
    }

    #[test]
    fn parses_resolv_conf() {
        let text = "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\noptions edns0\n nameserver 10.0.0.2 # trailing\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn self_loop_detection() {
        let b: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert!(is_self(&b, &"127.0.0.1:53".parse().unwrap()));
        assert!(!is_self(&b, &"10.0.0.1:53".parse().unwrap()));
        assert!(!is_self(&b, &"127.0.0.1:5353".parse().unwrap()));
        let b: SocketAddr = "127.0.0.53:5353".parse().unwrap();
        assert!(is_self(&b, &b));
        assert!(!is_self(&b, &"127.0.0.54:5353".parse().unwrap()));
    }
}
