//! TEMPORARY smoke test for tests/support/peers.rs (not to be committed).
#[path = "support/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use peers::*;

/// Minimal UDP DNS responder: SRV _xmpp-server._tcp.D -> 0 0 5269 IP., A D -> IP,
/// A IP. -> IP. Everything else NXDOMAIN.
async fn scratch_dns(listen: SocketAddr, zone: &[(&str, Ipv4Addr)]) -> tokio::task::JoinHandle<()> {
    let zone: Vec<(&str, Ipv4Addr, u16)> = zone.iter().map(|(d, ip)| (*d, *ip, 5269)).collect();
    scratch_dns_ports(listen, &zone).await
}

async fn scratch_dns_ports(
    listen: SocketAddr,
    zone: &[(&str, Ipv4Addr, u16)],
) -> tokio::task::JoinHandle<()> {
    let mut a: HashMap<String, Ipv4Addr> = HashMap::new();
    let mut srv: HashMap<String, (Ipv4Addr, u16)> = HashMap::new();
    for (d, ip, port) in zone {
        a.insert(format!("{d}."), *ip);
        a.insert(format!("{ip}."), *ip);
        srv.insert(format!("_xmpp-server._tcp.{d}."), (*ip, *port));
    }
    let sock = tokio::net::UdpSocket::bind(listen).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let q = &buf[..n];
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let l = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + l]).to_lowercase());
                i += 1 + l;
            }
            let name = format!("{}.", labels.join("."));
            let qend = i + 5;
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let mut answers: Vec<u8> = Vec::new();
            let mut count = 0u16;
            let known = a.contains_key(&name) || srv.contains_key(&name);
            if qtype == 1 {
                if let Some(ip) = a.get(&name) {
                    answers.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                    answers.extend_from_slice(&ip.octets());
                    count += 1;
                }
            }
            if qtype == 33 {
                if let Some((ip, port)) = srv.get(&name) {
                    let mut rd = vec![0, 0, 0, 0];
                    rd.extend_from_slice(&port.to_be_bytes());
                    for l in ip.to_string().split('.') {
                        rd.push(l.len() as u8);
                        rd.extend_from_slice(l.as_bytes());
                    }
                    rd.push(0);
                    answers.extend_from_slice(&[0xc0, 0x0c, 0, 33, 0, 1, 0, 0, 0, 5]);
                    answers.extend_from_slice(&(rd.len() as u16).to_be_bytes());
                    answers.extend_from_slice(&rd);
                    count += 1;
                }
            }
            let rcode = if known { 0 } else { 3 };
            let mut resp = vec![q[0], q[1], 0x84 | (q[2] & 0x01), rcode, 0, 1];
            resp.extend_from_slice(&count.to_be_bytes());
            resp.extend_from_slice(&[0, 0, 0, 0]);
            resp.extend_from_slice(&q[12..qend]);
            resp.extend_from_slice(&answers);
            let _ = sock.send_to(&resp, peer).await;
        }
    })
}

fn self_signed(dir: &Path, domain: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{domain}.crt"));
    let key = dir.join(format!("{domain}.key"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={domain}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{domain},DNS:*.{domain}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    (cert, key)
}

#[tokio::test]
async fn prosody_and_ejabberd_federate() {
    let python = interop_python();
    let tmp = tempfile::tempdir().unwrap();
    let (pc, pk) = self_signed(tmp.path(), "p.test");
    let (ec, ek) = self_signed(tmp.path(), "e.test");
    let p_ip: Ipv4Addr = "127.0.0.10".parse().unwrap();
    let e_ip: Ipv4Addr = "127.0.0.20".parse().unwrap();
    let dns: SocketAddr = "127.0.0.53:5354".parse().unwrap();
    let _dns = scratch_dns(dns, &[("p.test", p_ip), ("e.test", e_ip)]).await;

    let t = Instant::now();
    let prosody =
        Prosody::start(ProsodyOpts::new("p.test", p_ip, dns, &pc, &pk).user("alice", "alicepw"))
            .await
            .unwrap();
    eprintln!("TIMING prosody start (incl. 1 register): {:?}", t.elapsed());
    let t = Instant::now();
    let ejabberd =
        Ejabberd::start(EjabberdOpts::new("e.test", e_ip, dns, &ec, &ek).user("bob", "bobpw"))
            .await
            .unwrap();
    eprintln!(
        "TIMING ejabberd start (incl. 1 register): {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    let mut bob = XmppClient::connect(&python, "bob@e.test", "bobpw", ejabberd.c2s_addr())
        .await
        .unwrap();
    let mut alice = XmppClient::connect(&python, "alice@p.test", "alicepw", prosody.c2s_addr())
        .await
        .unwrap();
    eprintln!("TIMING two clients connected: {:?}", t.elapsed());

    let t = Instant::now();
    alice
        .send_message("bob@e.test", "hello from prosody")
        .await
        .unwrap();
    let (from, body) = bob
        .expect_message(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nPROSODY:\n{}\nEJABBERD:\n{}",
                prosody.diagnostics(),
                ejabberd.diagnostics()
            )
        });
    assert_eq!(
        (from.as_str(), body.as_str()),
        ("alice@p.test", "hello from prosody")
    );
    eprintln!("TIMING first s2s message p->e: {:?}", t.elapsed());

    bob.send_message("alice@p.test", "hi back").await.unwrap();
    let (from, body) = alice.expect_message(Duration::from_secs(20)).await.unwrap();
    assert_eq!((from.as_str(), body.as_str()), ("bob@e.test", "hi back"));

    alice.subscribe("bob@e.test").await;
    alice
        .expect_presence("bob@e.test", "subscribed", Duration::from_secs(10))
        .await
        .unwrap();
    alice
        .expect_presence("bob@e.test/", "available", Duration::from_secs(10))
        .await
        .unwrap();
    bob.expect_presence("alice@p.test", "subscribe", Duration::from_secs(10))
        .await
        .unwrap();
    alice.ping("e.test", Duration::from_secs(10)).await.unwrap();
    bob.ping("p.test", Duration::from_secs(10)).await.unwrap();
    let err = alice
        .ping("nowhere.test", Duration::from_secs(10))
        .await
        .unwrap_err();
    eprintln!("expected ping failure: {err:#}");

    let out = ejabberd.ctl(&["incoming_s2s_number"]).await.unwrap();
    eprintln!("ejabberd incoming_s2s_number: {}", out.trim());
    let out = prosody.shell("s2s:show()").await.unwrap();
    eprintln!("prosody s2s:show():\n{out}");
    assert!(prosody.log_text().contains("e.test"));
    assert!(ejabberd.log_text().contains("p.test"));

    alice.close();
    bob.close();
    let t = Instant::now();
    prosody.stop();
    eprintln!("TIMING prosody stop: {:?}", t.elapsed());
    let t = Instant::now();
    ejabberd.stop();
    eprintln!("TIMING ejabberd stop: {:?}", t.elapsed());
}

/// Two ejabberd instances at once must not clash (node names, epmd).
#[tokio::test]
async fn two_ejabberds_in_parallel() {
    let tmp = tempfile::tempdir().unwrap();
    let (c1, k1) = self_signed(tmp.path(), "e1.test");
    let (c2, k2) = self_signed(tmp.path(), "e2.test");
    let ip1: Ipv4Addr = "127.0.0.21".parse().unwrap();
    let ip2: Ipv4Addr = "127.0.0.22".parse().unwrap();
    let dns: SocketAddr = "127.0.0.54:5354".parse().unwrap();
    let _dns = scratch_dns(dns, &[("e1.test", ip1), ("e2.test", ip2)]).await;
    let (a, b) = tokio::join!(
        Ejabberd::start(EjabberdOpts::new("e1.test", ip1, dns, &c1, &k1).user("u", "pw")),
        Ejabberd::start(EjabberdOpts::new("e2.test", ip2, dns, &c2, &k2).user("v", "pw")),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.node(), b.node());
    a.ctl(&[
        "send_message",
        "chat",
        "u@e1.test",
        "v@e2.test",
        "",
        "cross",
    ])
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = b.ctl(&["get_offline_count", "v", "e2.test"]).await.unwrap();
        if n.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {}\n{}",
            a.diagnostics(),
            b.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop();
    b.stop();
}

fn ca_issued(
    dir: &Path,
) -> (
    std::path::PathBuf,
    Vec<(std::path::PathBuf, std::path::PathBuf)>,
) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let sh = |args: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "{args}");
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=TestCA -keyout ca.key -out ca.crt",
    );
    let mut out = Vec::new();
    for d in ["sp.test", "se.test"] {
        sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -subj /CN={d} -keyout {d}.key -out {d}.csr"
        ));
        sh(&format!(
            "printf 'subjectAltName=DNS:{d},DNS:*.{d}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > {d}.ext && openssl x509 -req -in {d}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile {d}.ext -out {d}.crt"
        ));
        out.push((dir.join(format!("{d}.crt")), dir.join(format!("{d}.key"))));
    }
    let _ = ca_key;
    (ca, out)
}

/// Trusted CA: Prosody s2s_secure_auth=true, ejabberd without dialback + STARTTLS required.
#[tokio::test]
async fn secure_auth_with_trusted_ca() {
    let python = interop_python();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, certs) = ca_issued(tmp.path());
    let p_ip: Ipv4Addr = "127.0.0.11".parse().unwrap();
    let e_ip: Ipv4Addr = "127.0.0.23".parse().unwrap();
    let dns: SocketAddr = "127.0.0.55:5354".parse().unwrap();
    let _dns = scratch_dns(dns, &[("sp.test", p_ip), ("se.test", e_ip)]).await;
    let mut po =
        ProsodyOpts::new("sp.test", p_ip, dns, &certs[0].0, &certs[0].1).user("alice", "pw");
    po.secure_auth = true;
    po.trust_ca = Some(ca.clone());
    let mut eo =
        EjabberdOpts::new("se.test", e_ip, dns, &certs[1].0, &certs[1].1).user("bob", "pw");
    eo.dialback = false;
    eo.starttls_required = true;
    eo.trust_ca = Some(ca.clone());
    let (p, e) = tokio::join!(Prosody::start(po), Ejabberd::start(eo));
    let (p, e) = (p.unwrap(), e.unwrap());
    let mut bob = XmppClient::connect(&python, "bob@se.test", "pw", e.c2s_addr())
        .await
        .unwrap();
    let mut alice = XmppClient::connect(&python, "alice@sp.test", "pw", p.c2s_addr())
        .await
        .unwrap();
    alice
        .send_message("bob@se.test", "secure hello")
        .await
        .unwrap();
    let r = bob.expect_message(Duration::from_secs(20)).await;
    let r2 = async {
        bob.send_message("alice@sp.test", "secure back").await?;
        alice.expect_message(Duration::from_secs(20)).await
    }
    .await;
    let show = p.shell("s2s:show()").await.unwrap();
    eprintln!("prosody s2s:show():\n{show}");
    if r.is_err() || r2.is_err() {
        panic!(
            "{r:?} {r2:?}\nPROSODY:\n{}\nEJABBERD:\n{}",
            p.diagnostics(),
            e.diagnostics()
        );
    }
    assert_eq!(r.unwrap().1, "secure hello");
    assert_eq!(r2.unwrap().1, "secure back");
    let elog = e.log_text();
    eprintln!(
        "{}",
        elog.lines()
            .filter(|l| l.contains("s2s"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Both servers' outbound s2s for gw.test lands on the SRV target 127.0.0.30:15269.
#[tokio::test]
async fn outbound_follows_srv_to_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let (pc, pk) = self_signed(tmp.path(), "p2.test");
    let (ec, ek) = self_signed(tmp.path(), "e2x.test");
    let p_ip: Ipv4Addr = "127.0.0.12".parse().unwrap();
    let e_ip: Ipv4Addr = "127.0.0.24".parse().unwrap();
    let gw: Ipv4Addr = "127.0.0.30".parse().unwrap();
    let dns: SocketAddr = "127.0.0.56:5354".parse().unwrap();
    let _dns = scratch_dns_ports(
        dns,
        &[
            ("p2.test", p_ip, 5269),
            ("e2x.test", e_ip, 5269),
            ("gw.test", gw, 15269),
        ],
    )
    .await;
    let listener = tokio::net::TcpListener::bind((gw, 15269)).await.unwrap();
    let (p, e) = tokio::join!(
        Prosody::start(ProsodyOpts::new("p2.test", p_ip, dns, &pc, &pk)),
        Ejabberd::start(EjabberdOpts::new("e2x.test", e_ip, dns, &ec, &ek).user("u", "pw")),
    );
    let (p, e) = (p.unwrap(), e.unwrap());
    let mut seen = Vec::new();
    let ping = tokio::spawn({
        let cfg = p.dir().join("prosody.cfg.lua");
        async move {
            let _ = tokio::task::spawn_blocking(move || {
                Command::new(require_binary("prosodyctl"))
                    .arg("--config")
                    .arg(cfg)
                    .args(["shell", "xmpp:ping('p2.test', 'gw.test')"])
                    .output()
            })
            .await;
        }
    });
    e.ctl(&[
        "send_message",
        "chat",
        "u@e2x.test",
        "x@gw.test",
        "",
        "to gw",
    ])
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(Ok((mut s, peer))) =
            tokio::time::timeout(Duration::from_secs(1), listener.accept()).await
        {
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 400];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(0);
            let first = String::from_utf8_lossy(&b[..n]).into_owned();
            eprintln!(
                "gateway stand-in: connection from {peer}: first bytes {:?}",
                &first[..first.len().min(200)]
            );
            seen.push(first);
        }
    }
    ping.abort();
    assert!(
        seen.len() >= 2,
        "expected connections from both servers, got {}",
        seen.len()
    );
}
