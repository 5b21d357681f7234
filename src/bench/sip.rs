//! `fedgate bench sip`: SIP MESSAGE ⇄ XMPP message translations per second through one
//! gateway, over real mutual TLS on the SIP side and a real XEP-0114 component stream on the
//! XMPP side.
//!
//! - SIP → XMPP: a partner edge (`lync.bench.test`) sends page-mode MESSAGEs to local users;
//!   each is translated, routed to the component, and answered `200` (only after the router took
//!   the stanza). Counted when both the `200` and the stanza have arrived.
//! - XMPP → SIP: the component sends chat messages to partner users; the gateway translates
//!   each to a MESSAGE over its own TLS connection to the partner, which answers `200`.
//!
//! A window bounds the messages in flight so queues stay small while every stage is busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fedgate_certs::dev::LeafSpec;
use fedgate_sip::msg::SipMessage;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{thousands, toml_path};
use crate::component_client::{ComponentClient, message};
use crate::config::{Config, Env};
use crate::gateway::Gateway;
use crate::labpki::LabPki;
use crate::sip_peer::{PeerTls, SipPeer, answer};

pub struct SipOpts {
    pub messages: u64,
    pub body_bytes: usize,
    pub window: usize,
}

const GW_IP: &str = "127.0.3.20";
const EDGE_IP: &str = "127.0.3.21";
const LOCAL: &str = "example.bench.test";
const PARTNER: &str = "lync.bench.test";
const SECRET: &str = "bench-component-secret";

fn config(pki: &LabPki) -> anyhow::Result<Config> {
    let (cert, key) = pki.issue(LOCAL, &LeafSpec::dns(&[LOCAL]))?;
    let text = format!(
        "[[domains]]\nname = \"{LOCAL}\"\ncert = {c}\nkey = {k}\ncomponent_secret = \"{SECRET}\"\n\n\
         [s2s]\nlisten = [\"{GW_IP}:5269\"]\nmax_queue_bytes = 67108864\n\n\
         [tls]\nsystem_roots = false\ntrust_anchors = [{ca}]\n\n\
         [components]\nlisten = \"{GW_IP}:5347\"\n\n[log]\nlevel = \"warn\"\n\n\
         [sip]\nlisten = [\"{GW_IP}:5061\"]\ndiscover = false\n\n\
         [[sip.partners]]\ndomain = \"{PARTNER}\"\nroute = \"{EDGE_IP}:5061\"\nflavor = \"standard\"\n",
        c = toml_path(&cert),
        k = toml_path(&key),
        ca = toml_path(&pki.ca_path()),
    );
    Config::from_toml(&text, "<bench sip config>", pki.dir.path(), &Env::new())
        .map_err(|e| anyhow::anyhow!("{e}\n{text}"))
}

fn page(i: u64, body: &str) -> SipMessage {
    let mut m = SipMessage::request("MESSAGE", format!("sip:user{}@{LOCAL}", i % 100));
    m.push_header(
        "Via",
        format!("SIP/2.0/TLS {EDGE_IP}:5061;branch=z9hG4bKbench{i}"),
    );
    m.push_header("Max-Forwards", "70");
    m.push_header("From", format!("<sip:peer{}@{PARTNER}>;tag=f{i}", i % 100));
    m.push_header("To", format!("<sip:user{}@{LOCAL}>", i % 100));
    m.push_header("Call-ID", format!("bench-{i}"));
    m.push_header("CSeq", "1 MESSAGE");
    m.push_header("Content-Type", "text/plain;charset=UTF-8");
    m.body = body.as_bytes().to_vec();
    m
}

pub async fn run(opts: SipOpts) -> anyhow::Result<()> {
    let pki = LabPki::new("fedgate bench CA")?;
    let (pc, pk) = pki.issue("partner", &LeafSpec::dns(&[PARTNER]))?;
    let tls = PeerTls::load(&pc, &pk, &pki.ca_path())?;
    let edge = TcpListener::bind((EDGE_IP, 5061))
        .await
        .with_context(|| format!("binding the partner edge on {EDGE_IP}:5061"))?;
    let cfg = config(&pki)?;
    let gw = Gateway::start(&cfg).await?;
    let comp =
        ComponentClient::connect(gw.component_addr.context("no component")?, LOCAL, SECRET).await?;
    let (mut comp_rd, mut comp_wr) = comp.split();
    let body = "x".repeat(opts.body_bytes);
    let n = opts.messages;
    let window = opts.window.max(1);
    println!(
        "fedgate bench sip: {} messages each way, {}-byte bodies, window {window}",
        thousands(n),
        opts.body_bytes
    );

    // ---------------------------------------------------------------- SIP → XMPP
    let peer = SipPeer::connect(gw.sip_addrs[0], LOCAL, &tls, true).await?;
    let (mut rd, mut wr) = peer.split();
    let slots = Arc::new(Semaphore::new(window));
    let oks = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let reader = {
        let (slots, oks) = (slots.clone(), oks.clone());
        tokio::spawn(async move {
            let mut errors = 0u64;
            while oks.load(Ordering::Relaxed) + errors < n {
                match rd.next().await {
                    Ok(Some(m)) if m.code() == Some(200) => {
                        oks.fetch_add(1, Ordering::Relaxed);
                        slots.add_permits(1);
                    }
                    Ok(Some(m)) if m.code().is_some() => {
                        errors += 1;
                        slots.add_permits(1);
                        if errors == 1 {
                            eprintln!("first error: {:?} {:?}", m.code(), m.start);
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            errors
        })
    };
    let stanzas = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            match comp_rd.recv(Duration::from_secs(30)).await {
                Ok(el) if el.name == "message" => got += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (got, comp_rd)
    });
    let mut batch = Vec::with_capacity(64 * 1024);
    for i in 0..n {
        slots.acquire().await?.forget();
        batch.extend_from_slice(&page(i, &body).to_bytes());
        if batch.len() > 32 * 1024 || i + 1 == n || slots.available_permits() == 0 {
            wr.write_all(&batch).await?;
            batch.clear();
        }
    }
    let errors = reader.await?;
    let (got, mut comp_rd) = stanzas.await?;
    let secs = start.elapsed().as_secs_f64();
    if got < n || errors > 0 {
        bail!("SIP → XMPP: {got} of {n} stanzas arrived, {errors} error responses");
    }
    println!(
        "SIP → XMPP: {} MESSAGE → <message> translations/s ({} in {secs:.2} s; every one answered 200 after the router took it)",
        thousands((n as f64 / secs) as u64),
        thousands(n)
    );

    // ---------------------------------------------------------------- XMPP → SIP
    let answered = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(window));
    let partner = {
        let (answered, slots) = (answered.clone(), slots.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let peer = SipPeer::accept(&edge, &tls).await?;
            let (mut rd, mut wr) = peer.split();
            while answered.load(Ordering::Relaxed) < n {
                let Some(m) = rd.next().await? else {
                    bail!("the gateway closed the connection");
                };
                if m.method() == Some("MESSAGE") {
                    wr.write_all(&answer(&m, 200, "OK", "edge").to_bytes())
                        .await?;
                    answered.fetch_add(1, Ordering::Relaxed);
                    slots.add_permits(1);
                }
            }
            anyhow::Ok(())
        })
    };
    let start = Instant::now();
    for i in 0..n {
        slots.acquire().await?.forget();
        let to = format!("peer{}@{PARTNER}", i % 100);
        let from = format!("user{}@{LOCAL}/bench", i % 100);
        comp_wr
            .send(&message(&from, &to, &i.to_string(), &body))
            .await?;
    }
    tokio::time::timeout(Duration::from_secs(120), partner).await???;
    let secs = start.elapsed().as_secs_f64();
    // Any bounce would have come back to the component.
    if let Ok(el) = comp_rd.recv(Duration::from_millis(200)).await {
        bail!("XMPP → SIP: unexpected stanza back: {el:?}");
    }
    println!(
        "XMPP → SIP: {} <message> → MESSAGE translations/s ({} in {secs:.2} s, each answered 200 by the partner)",
        thousands((n as f64 / secs) as u64),
        thousands(n)
    );
    gw.shutdown().await;
    Ok(())
}
