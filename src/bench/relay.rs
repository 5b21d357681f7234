//! `fedgate bench relay`: two gateways in this process joined by TLS s2s, a component on each.
//!
//! Path of every message: component X → gateway X (component stream in, router, outbound
//! s2s pool: local→remote) → TLS s2s stream → gateway Y (inbound s2s: remote→local, router)
//! → component Y. One measured message is therefore relayed by two gateways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fedgate_s2s::wire::Header;
use fedgate_s2s::xml::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{quantile, thousands, toml_path};
use crate::config::{Config, Env};
use crate::gateway::Gateway;
use crate::labpki::LabPki;
use fedgate_certs::dev::LeafSpec;

pub struct RelayOpts {
    pub messages: u64,
    pub rate: u64,
    pub latency_secs: u64,
    pub body_bytes: usize,
    /// One run with (`Some(true)`) or without acknowledgements, or both side by side.
    pub acks: Option<bool>,
}

/// Per-component queue cap written into the generated configs.
const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Messages in flight at most during a throughput run (sent, not yet received): keeps the
/// queues far below [`QUEUE_BYTES`] while keeping every stage of the pipeline busy.
const WINDOW: u64 = 20_000;
/// Messages per write of the sending component.
const BATCH: usize = 64;

struct Side {
    domain: &'static str,
    ip: &'static str,
}

const A: Side = Side {
    domain: "a.bench.test",
    ip: "127.0.3.1",
};
const B: Side = Side {
    domain: "b.bench.test",
    ip: "127.0.3.2",
};

fn secret(domain: &str) -> String {
    format!("bench-component-secret-{domain}")
}

fn config(pki: &LabPki, me: &Side, peer: &Side, acks: bool) -> anyhow::Result<Config> {
    let (cert, key) = pki.issue(me.domain, &LeafSpec::dns(&[me.domain]))?;
    let text = format!(
        "[[domains]]\nname = \"{d}\"\ncert = {c}\nkey = {k}\ncomponent_secret = \"{cs}\"\n\n\
         [s2s]\nlisten = [\"{ip}:5269\"]\ndialback_secret = \"bench-dialback-secret-{d}\"\n\
         auth_methods = [\"certificate\"]\nmax_queue_bytes = {q}\nidle_timeout_secs = 3600\n\
         negotiation_timeout_secs = 10\nconnect_timeout_secs = 3\n\n\
         [s2s.static_targets]\n\"{pd}\" = \"tcp://{pip}:5269\"\n\n\
         [tls]\nsystem_roots = false\ntrust_anchors = [{ca}]\n\n\
         [components]\nlisten = \"{ip}:5347\"\n\n[log]\nlevel = \"warn\"\n",
        d = me.domain,
        c = toml_path(&cert),
        k = toml_path(&key),
        cs = secret(me.domain),
        ip = me.ip,
        q = QUEUE_BYTES,
        pd = peer.domain,
        pip = peer.ip,
        ca = toml_path(&pki.ca_path()),
    );
    let mut cfg = Config::from_toml(&text, "<bench relay config>", pki.dir.path(), &Env::new())
        .map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    cfg.s2s.confirm_delivery = acks;
    Ok(cfg)
}

/// What one run measured.
struct Figures {
    /// Stanzas/s a→b and b→a.
    rates: [f64; 2],
    /// CPU time of the whole process per relayed stanza in the throughput runs (both
    /// gateways and the bench's own components), in µs: what the machine pays per stanza,
    /// which a busy machine disturbs far less than wall-clock rates.
    cpu_us: f64,
    /// p50, p99, p999 latency in ms.
    latency: [f64; 3],
}

/// XEP-0114 handshake, then the raw socket halves (the bench reads and writes bytes itself so
/// that its own parsing and serialization cost stays small next to the gateways').
async fn component(
    addr: SocketAddr,
    domain: &str,
) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to component port {addr}"))?;
    tcp.set_nodelay(true)?;
    let (mut rd, mut wr) = tcp.into_split();
    let hdr = Header {
        content_ns: fedgate_s2s::element::NS_COMPONENT,
        from: None,
        to: Some(domain),
        id: None,
        version: false,
        dialback: false,
    };
    wr.write_all(&hdr.to_bytes()).await?;
    let mut parser = StreamParser::new(Limits::default());
    let t = Duration::from_secs(10);
    let id = match tokio::time::timeout(t, next_event(&mut rd, &mut parser)).await?? {
        StreamEvent::Open(h) => h.id.context("component stream header without id")?,
        other => bail!("expected a stream header, got {other:?}"),
    };
    let hs = fedgate_s2s::component::handshake(&id, &secret(domain));
    wr.write_all(format!("<handshake>{hs}</handshake>").as_bytes())
        .await?;
    match tokio::time::timeout(t, next_event(&mut rd, &mut parser)).await?? {
        StreamEvent::Element(el, _) if el.name == "handshake" => {}
        other => bail!("component handshake refused: {other:?}"),
    }
    Ok((rd, wr))
}

async fn next_event(
    rd: &mut OwnedReadHalf,
    parser: &mut StreamParser,
) -> anyhow::Result<StreamEvent> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        if let Some(ev) = parser.next_event()? {
            return Ok(ev);
        }
        buf.clear();
        if rd.read_buf(&mut buf).await? == 0 {
            bail!("component connection closed during the handshake");
        }
        parser.feed(&buf);
    }
}

/// What a component's reader task has seen.
#[derive(Default)]
struct Seen {
    messages: AtomicU64,
    errors: AtomicU64,
    /// Microseconds since the bench epoch of the last read that completed a message.
    last_us: AtomicU64,
    /// Latency samples (µs) of messages whose id is `L<send time in µs>`.
    latencies: Mutex<Vec<u32>>,
}

fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Count messages in the raw byte stream: `</message>` ends one; `<message … type='error'>`
/// is a bounce; an `id='L<µs>'` carries the send time.
async fn reader(mut rd: OwnedReadHalf, wr: SharedWriter, seen: Arc<Seen>, epoch: Instant) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut lat = Vec::new();
    loop {
        buf.reserve(64 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let t = now_us(epoch);
        // Complete tags end at the last '>'; keep the rest for the next read.
        let Some(end) = buf.iter().rposition(|&b| b == b'>') else {
            continue;
        };
        let (mut n, mut errors) = (0u64, 0u64);
        let mut answers = Vec::new();
        let data = &buf[..=end];
        let mut i = 0;
        while let Some(off) = data[i..].iter().position(|&b| b == b'<') {
            i += off;
            let rest = &data[i..];
            if rest.starts_with(b"</message>") {
                n += 1;
                i += 10;
            } else if rest.starts_with(b"<message ") {
                let close = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len());
                let tag = &rest[..close];
                if find(tag, b"type='error'").is_some() {
                    errors += 1;
                }
                if let Some(p) = find(tag, b" id='L") {
                    let digits = &tag[p + 6..];
                    let mut v = 0u64;
                    for &d in digits.iter().take_while(|d| d.is_ascii_digit()) {
                        v = v * 10 + u64::from(d - b'0');
                    }
                    lat.push(t.saturating_sub(v).min(u64::from(u32::MAX)) as u32);
                }
                i += close;
            } else if rest.starts_with(b"<iq ") {
                // The gateway's XEP-0199 pings confirm delivery on the component link: answer
                // them as any XMPP entity must, or the link stops once max_unacked is reached.
                let close = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len());
                let tag = &rest[..close];
                if find(tag, b"type='get'").is_some() {
                    let attr = |name: &[u8]| {
                        let p = find(tag, name)? + name.len();
                        let len = tag[p..].iter().position(|&b| b == b'\'')?;
                        Some(&tag[p..p + len])
                    };
                    if let (Some(id), Some(from), Some(to)) =
                        (attr(b" id='"), attr(b" from='"), attr(b" to='"))
                    {
                        answers.extend_from_slice(b"<iq type='result' id='");
                        answers.extend_from_slice(id);
                        answers.extend_from_slice(b"' from='");
                        answers.extend_from_slice(to);
                        answers.extend_from_slice(b"' to='");
                        answers.extend_from_slice(from);
                        answers.extend_from_slice(b"'/>");
                    }
                }
                i += close;
            } else {
                i += 1;
            }
        }
        buf.drain(..=end);
        if !answers.is_empty() && wr.lock().await.write_all(&answers).await.is_err() {
            return;
        }
        if !lat.is_empty() {
            seen.latencies.lock().expect("latencies").append(&mut lat);
        }
        if errors > 0 {
            seen.errors.fetch_add(errors, Ordering::Relaxed);
        }
        if n > 0 {
            seen.last_us.store(t, Ordering::Relaxed);
            seen.messages.fetch_add(n, Ordering::Release);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|&b| b == first) {
        let at = i + p;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// One message as bytes; `id` is written verbatim.
fn push_message(out: &mut Vec<u8>, from: &str, to: &str, id: &str, body: &[u8]) {
    out.extend_from_slice(b"<message from='user@");
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(b"/bench' to='user@");
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(b"' id='");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"' type='chat'><body>");
    out.extend_from_slice(body);
    out.extend_from_slice(b"</body></message>");
}

/// A component's write half, shared by its sender and its reader (which answers pings).
type SharedWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

struct Endpoint {
    domain: &'static str,
    wr: SharedWriter,
    seen: Arc<Seen>,
}

/// Wait until `seen` counts `target` messages; error when nothing moves for 10 s.
async fn wait_for(seen: &Seen, target: u64) -> anyhow::Result<()> {
    let mut last = seen.messages.load(Ordering::Acquire);
    let mut still = Instant::now();
    loop {
        let n = seen.messages.load(Ordering::Acquire);
        if n >= target {
            return Ok(());
        }
        if n != last {
            last = n;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(10) {
            bail!("stalled: {n} of {target} messages arrived (no progress for 10 s)");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Send `count` messages from `src` to `dst` as fast as the pipeline takes them (at most
/// [`WINDOW`] in flight); returns (elapsed from first write to last arrival).
async fn throughput(
    src: &mut Endpoint,
    dst: &Endpoint,
    count: u64,
    body: &[u8],
    epoch: Instant,
) -> anyhow::Result<Duration> {
    let base = dst.seen.messages.load(Ordering::Acquire);
    let mut buf = Vec::with_capacity(BATCH * (body.len() + 200));
    let mut sent = 0u64;
    let t0 = now_us(epoch);
    let mut id = String::new();
    while sent < count {
        // Flow control: at most WINDOW in flight.
        let mut still = Instant::now();
        let mut last = 0;
        loop {
            let got = dst.seen.messages.load(Ordering::Acquire) - base;
            if sent - got < WINDOW {
                break;
            }
            if got != last {
                last = got;
                still = Instant::now();
            } else if still.elapsed() > Duration::from_secs(10) {
                bail!("stalled: {got} of {sent} sent messages arrived (no progress for 10 s)");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        buf.clear();
        let n = (BATCH as u64).min(count - sent);
        for k in 0..n {
            id.clear();
            use std::fmt::Write as _;
            let _ = write!(id, "T{}", sent + k);
            push_message(&mut buf, src.domain, dst.domain, &id, body);
        }
        src.wr.lock().await.write_all(&buf).await?;
        sent += n;
    }
    wait_for(&dst.seen, base + count).await?;
    let t1 = dst.seen.last_us.load(Ordering::Relaxed);
    Ok(Duration::from_micros(t1.saturating_sub(t0)))
}

/// Offer `rate` messages/s for `secs`, each stamped with its send time; returns (sorted
/// latencies in µs, achieved offered rate).
async fn latency(
    src: &mut Endpoint,
    dst: &Endpoint,
    rate: u64,
    secs: u64,
    body: &[u8],
    epoch: Instant,
) -> anyhow::Result<(Vec<u32>, f64, u64)> {
    dst.seen.latencies.lock().expect("latencies").clear();
    let base = dst.seen.messages.load(Ordering::Acquire);
    let total = rate * secs;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = Vec::new();
    let mut id = String::new();
    let mut writes = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due > sent {
            buf.clear();
            let stamp = now_us(epoch);
            for _ in sent..due {
                id.clear();
                use std::fmt::Write as _;
                let _ = write!(id, "L{stamp}");
                push_message(&mut buf, src.domain, dst.domain, &id, body);
            }
            src.wr.lock().await.write_all(&buf).await?;
            writes += 1;
            sent = due;
        }
        // Next message due at sent / rate.
        let next = Duration::from_secs_f64(sent as f64 / rate as f64);
        let wait = next.saturating_sub(start.elapsed());
        tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
    }
    let achieved = sent as f64 / start.elapsed().as_secs_f64();
    wait_for(&dst.seen, base + total).await?;
    let mut v = std::mem::take(&mut *dst.seen.latencies.lock().expect("latencies"));
    v.sort_unstable();
    Ok((v, achieved, writes))
}

pub async fn run(o: RelayOpts) -> anyhow::Result<()> {
    let pki = LabPki::new("fedgate bench CA")?;
    let body = vec![b'x'; o.body_bytes];
    let mut sample = Vec::new();
    push_message(&mut sample, A.domain, B.domain, "T12345", &body);
    println!("fedgate bench relay");
    println!(
        "  gateways: a.bench.test ({}:5269) and b.bench.test ({}:5269) in this process, tokio runtime of the caller",
        A.ip, B.ip
    );
    println!("  s2s: STARTTLS + SASL EXTERNAL, bench CA; one outbound stream per direction");
    println!(
        "  components: XEP-0114 on :5347; s2s.max_queue_bytes = {} MiB; at most {} messages in flight in throughput runs",
        QUEUE_BYTES >> 20,
        thousands(WINDOW)
    );
    println!(
        "  message: {} bytes on the wire (body {} bytes)",
        sample.len(),
        o.body_bytes
    );
    const OFF: &str = "== without acknowledgements (for comparison only: written counts as delivered, as before acknowledged delivery)";
    const ON: &str = "== with acknowledgements (the product: XEP-0198 between the gateways, XEP-0199 pings on the component links)";
    if let Some(acks) = o.acks {
        println!();
        println!("{}", if acks { ON } else { OFF });
        run_once(&o, &pki, &body, &sample, acks).await?;
        return Ok(());
    }
    println!();
    println!("{OFF}");
    let off = run_once(&o, &pki, &body, &sample, false).await?;
    println!();
    println!("{ON}");
    let on = run_once(&o, &pki, &body, &sample, true).await?;
    println!();
    println!("acknowledged delivery costs (with / without):");
    for (i, dir) in ["a→b", "b→a"].iter().enumerate() {
        println!(
            "  throughput {dir}: {} vs {} stanzas/s = {:.1} %",
            thousands(on.rates[i] as u64),
            thousands(off.rates[i] as u64),
            100.0 * on.rates[i] / off.rates[i]
        );
    }
    println!(
        "  CPU per relayed stanza: {:.2} vs {:.2} µs = {:.1} % (on an otherwise idle machine the throughput ratio approaches the inverse, {:.1} %)",
        on.cpu_us,
        off.cpu_us,
        100.0 * on.cpu_us / off.cpu_us,
        100.0 * off.cpu_us / on.cpu_us
    );
    for (i, q) in ["p50", "p99", "p999"].iter().enumerate() {
        println!(
            "  latency {q} at {} stanzas/s: {:.3} ms vs {:.3} ms",
            thousands(o.rate),
            on.latency[i],
            off.latency[i]
        );
    }
    if let Some(rss) = super::rss_kib(std::process::id()) {
        println!(
            "  bench process RSS at the end (both runs' gateways stopped): {} KiB",
            thousands(rss)
        );
    }
    Ok(())
}

async fn run_once(
    o: &RelayOpts,
    pki: &LabPki,
    body: &[u8],
    sample: &[u8],
    acks: bool,
) -> anyhow::Result<Figures> {
    let ca = config(pki, &A, &B, acks)?;
    let cb = config(pki, &B, &A, acks)?;
    let ga = Gateway::start(&ca).await.context("gateway a.bench.test")?;
    let gb = Gateway::start(&cb).await.context("gateway b.bench.test")?;
    let epoch = Instant::now();
    let mut ends = Vec::new();
    for (gw, side) in [(&ga, &A), (&gb, &B)] {
        let addr = gw.component_addr.context("component listener")?;
        let (rd, wr) = component(addr, side.domain).await?;
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let seen = Arc::new(Seen::default());
        tokio::spawn(reader(rd, wr.clone(), seen.clone(), epoch));
        ends.push(Endpoint {
            domain: side.domain,
            wr,
            seen,
        });
    }
    let mut eb = ends.pop().expect("b");
    let mut ea = ends.pop().expect("a");

    // Warm-up: establishes the s2s streams both ways.
    let warm = 2_000.min(o.messages.max(1));
    throughput(&mut ea, &eb, warm, body, epoch)
        .await
        .context("warm-up a→b")?;
    throughput(&mut eb, &ea, warm, body, epoch)
        .await
        .context("warm-up b→a")?;

    println!(
        "throughput ({} messages each way, pipelined)",
        thousands(o.messages)
    );
    let mut rates = [0.0; 2];
    let cpu0 = super::cpu_time();
    for (i, (label, from_a)) in [
        (
            "a→b: component a → gw a (local→remote) → s2s → gw b (remote→local) → component b",
            true,
        ),
        (
            "b→a: component b → gw b (local→remote) → s2s → gw a (remote→local) → component a",
            false,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let d = if from_a {
            throughput(&mut ea, &eb, o.messages, body, epoch).await?
        } else {
            throughput(&mut eb, &ea, o.messages, body, epoch).await?
        };
        let rate = o.messages as f64 / d.as_secs_f64();
        let mbps = rate * sample.len() as f64 / 1e6;
        println!(
            "  {label}\n      {} stanzas/s relayed ({:.2} s, {:.1} MB/s of stanzas)",
            thousands(rate as u64),
            d.as_secs_f64(),
            mbps
        );
        rates[i] = rate;
    }
    let cpu_us = match (cpu0, super::cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e6 / (2 * o.messages) as f64,
        _ => f64::NAN,
    };
    println!("  CPU per relayed stanza (whole process, both directions): {cpu_us:.2} µs");

    let (v, achieved, writes) = if o.latency_secs == 0 {
        println!("latency: not measured (--latency-secs 0)");
        (vec![0], 0.0, 0)
    } else {
        println!(
            "latency a→b at {} stanzas/s offered for {} s (send time in the id; includes both gateways, s2s TLS and both component streams)",
            thousands(o.rate),
            o.latency_secs
        );
        latency(&mut ea, &eb, o.rate, o.latency_secs, body, epoch).await?
    };
    println!(
        "  offered {} stanzas/s in {} writes; {} samples",
        thousands(achieved as u64),
        thousands(writes),
        thousands(v.len() as u64)
    );
    let ms = |us: u32| f64::from(us) / 1000.0;
    let latency = [
        ms(quantile(&v, 0.5)),
        ms(quantile(&v, 0.99)),
        ms(quantile(&v, 0.999)),
    ];
    println!(
        "  p50 {:.3} ms   p99 {:.3} ms   p999 {:.3} ms   max {:.3} ms",
        latency[0],
        latency[1],
        latency[2],
        ms(v.last().copied().unwrap_or(0))
    );
    let errors = ea.seen.errors.load(Ordering::Relaxed) + eb.seen.errors.load(Ordering::Relaxed);
    println!("  error bounces received by the components: {errors}");
    // The gateways' own counters (warm-up included): every message crossed both.
    let routed = |gw: &Gateway, path: &str, remote: &str| {
        gw.ctx
            .metrics
            .routed
            .with_label_values(&[path, remote])
            .get()
    };
    println!(
        "  gateway counters: a local→remote {}, b remote→local {}, b local→remote {}, a remote→local {}",
        thousands(routed(&ga, "local-to-remote", B.domain)),
        thousands(routed(&gb, "remote-to-local", A.domain)),
        thousands(routed(&gb, "local-to-remote", A.domain)),
        thousands(routed(&ga, "remote-to-local", B.domain)),
    );
    // How the links confirmed (both gateways): proof that the run measured what it says.
    let mut modes = Vec::new();
    for link in ["s2s-out", "component"] {
        for mode in ["sm", "ping"] {
            let n: u64 = [&ga, &gb]
                .iter()
                .map(|g| {
                    g.ctx
                        .metrics
                        .ack_mode
                        .with_label_values(&[link, mode])
                        .get()
                })
                .sum();
            if n > 0 {
                modes.push(format!("{link} by {mode}: {n}"));
            }
        }
    }
    println!(
        "  links by confirmation: {}",
        if modes.is_empty() {
            "none (acknowledgements off)".to_owned()
        } else {
            modes.join(", ")
        }
    );
    if let Some(rss) = super::rss_kib(std::process::id()) {
        println!(
            "  bench process RSS (both gateways + bench): {} KiB",
            thousands(rss)
        );
    }
    drop(ea);
    drop(eb);
    ga.shutdown().await;
    gb.shutdown().await;
    Ok(Figures {
        rates,
        cpu_us,
        latency,
    })
}
