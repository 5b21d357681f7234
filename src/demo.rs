//! `fedgate demo`: the main job, end to end, on one machine. It starts an in-process DNS server
//! and two gateways on loopback (north.test and south.test, certificates from a throw-away CA),
//! attaches a component to each, sends messages both ways and completes a presence
//! subscription across the federation, then prints the transcript and the key metrics.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fedgate_certs::dev::LeafSpec;

use crate::component_client::{ComponentClient, body, message, presence};
use crate::config::{Config, Env};
use crate::gateway::Gateway;
use crate::labpki::LabPki;
use crate::testdns::{TestDns, Zone};

const T: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// First of three consecutive loopback addresses to use (DNS, north, south).
    #[arg(long, default_value = "127.0.4.1")]
    pub base: Ipv4Addr,
}

struct Side {
    domain: &'static str,
    ip: Ipv4Addr,
    gw: Gateway,
    comp: ComponentClient,
}

fn ip_plus(ip: Ipv4Addr, n: u8) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(n))
}

async fn start_side(
    pki: &LabPki,
    domain: &'static str,
    ip: Ipv4Addr,
    dns: SocketAddr,
) -> anyhow::Result<Side> {
    let (cp, kp) = pki.issue(domain, &LeafSpec::dns(&[domain]))?;
    let dir = pki.dir.path();
    let ca_path = pki.ca_path();
    let secret = format!("demo-component-secret-{domain}");
    let policy = dir.join(format!("{domain}.policy.toml"));
    std::fs::write(
        &policy,
        "# Everyone may federate, except the domains under blocked.test.\n\
         default = \"allow\"\n\n[[rule]]\nid = \"no-blocked\"\ndomains = [\"*.blocked.test\"]\naction = \"deny\"\n",
    )?;
    let toml = format!(
        "[[domains]]\nname = \"{domain}\"\ncert = {cp:?}\nkey = {kp:?}\ncomponent_secret = \"{secret}\"\n\
         [s2s]\nlisten = [\"{ip}:5269\"]\ndialback_secret = \"demo-dialback-secret-{domain}\"\n\
         [dns]\nnameservers = [\"{dns}\"]\n[tls]\nsystem_roots = false\ntrust_anchors = [{ca_path:?}]\n\
         [components]\nlisten = \"{ip}:5347\"\n[metrics]\nlisten = \"{ip}:9269\"\n[policy]\nfile = {policy:?}\n"
    );
    let cfg = Config::from_toml(&toml, &format!("<demo {domain}>"), dir, &Env::new())?;
    let gw = Gateway::start(&cfg).await?;
    let comp = ComponentClient::connect(
        gw.component_addr.context("component listener")?,
        domain,
        &secret,
    )
    .await?;
    Ok(Side {
        domain,
        ip,
        gw,
        comp,
    })
}

/// Runs the demo; returns the transcript (printed by the CLI) or the first failure.
pub async fn run(args: DemoArgs) -> anyhow::Result<String> {
    let mut out = String::new();
    let pki = LabPki::new("fedgate demo CA")?;
    let (dns_ip, north_ip, south_ip) = (args.base, ip_plus(args.base, 1), ip_plus(args.base, 2));
    let mut zone = Zone::new();
    for (d, ip) in [("north.test", north_ip), ("south.test", south_ip)] {
        zone.srv(
            &format!("_xmpp-server._tcp.{d}"),
            0,
            5,
            5269,
            &format!("xmpp.{d}"),
        )
        .a(&format!("xmpp.{d}"), ip);
    }
    let dns = TestDns::start(SocketAddr::new(dns_ip.into(), 5353), zone).await?;
    writeln!(
        out,
        "fedgate demo: two gateways federating over XMPP s2s on loopback\n"
    )?;
    writeln!(
        out,
        "  dns      {}  SRV _xmpp-server._tcp.north.test -> xmpp.north.test:5269 ({north_ip})",
        dns.addr()
    )?;
    writeln!(
        out,
        "                           SRV _xmpp-server._tcp.south.test -> xmpp.south.test:5269 ({south_ip})"
    )?;
    let mut north = start_side(&pki, "north.test", north_ip, dns.addr()).await?;
    let mut south = start_side(&pki, "south.test", south_ip, dns.addr()).await?;
    for s in [&north, &south] {
        writeln!(
            out,
            "  gateway  {:<11} s2s {}:5269, component attached on {}:5347, metrics http://{}:9269/metrics",
            s.domain, s.ip, s.ip, s.ip
        )?;
    }
    writeln!(out)?;

    let t0 = Instant::now();
    exchange(
        &mut out,
        &mut north,
        &mut south,
        "alice@north.test/laptop",
        "bob@south.test",
        "Hello from the north!",
    )
    .await?;
    writeln!(
        out,
        "           (first message: DNS SRV lookup, TCP, STARTTLS, SASL EXTERNAL, delivery in {} ms)",
        t0.elapsed().as_millis()
    )?;
    exchange(
        &mut out,
        &mut south,
        &mut north,
        "bob@south.test/phone",
        "alice@north.test/laptop",
        "Hi Alice, greetings from the south.",
    )
    .await?;

    // Presence subscription: alice asks, bob approves and sends his presence.
    writeln!(
        out,
        "\n  alice@north.test asks to see bob@south.test's presence"
    )?;
    north
        .comp
        .send(&presence("alice@north.test", "bob@south.test", "subscribe"))
        .await?;
    let p = south
        .comp
        .recv_matching(T, |e| e.name == "presence")
        .await?;
    expect(
        p.attr("type") == Some("subscribe"),
        "south.test received the subscription request",
    )?;
    writeln!(
        out,
        "  <- south.test delivered <presence type='subscribe'> from {}",
        p.attr("from").unwrap_or("?")
    )?;
    south
        .comp
        .send(&presence(
            "bob@south.test",
            "alice@north.test",
            "subscribed",
        ))
        .await?;
    south
        .comp
        .send(&presence("bob@south.test/phone", "alice@north.test", ""))
        .await?;
    let p = north
        .comp
        .recv_matching(T, |e| e.name == "presence")
        .await?;
    expect(
        p.attr("type") == Some("subscribed"),
        "north.test received the approval",
    )?;
    writeln!(
        out,
        "  <- north.test delivered <presence type='subscribed'> from bob@south.test"
    )?;
    let p = north
        .comp
        .recv_matching(T, |e| e.name == "presence")
        .await?;
    expect(
        p.attr("type").is_none(),
        "north.test received bob's availability",
    )?;
    writeln!(
        out,
        "  <- north.test delivered bob@south.test/phone is available: subscription complete"
    )?;

    // An unknown domain: the sender gets an error, not silence.
    north
        .comp
        .send(&message(
            "alice@north.test/laptop",
            "carol@nowhere.test",
            "x1",
            "Anyone there?",
        ))
        .await?;
    let e = north.comp.recv_matching(T, |e| e.name == "message").await?;
    let (cond, text) = fedgate_s2s::wire::stanza_error(&e).context("an error reply")?;
    writeln!(
        out,
        "\n  alice@north.test -> carol@nowhere.test: bounced with <{cond}/> \"{text}\""
    )?;

    // A domain the policy denies: refused before any DNS lookup, with the rule in the error.
    let before = dns.queries();
    north
        .comp
        .send(&message(
            "alice@north.test/laptop",
            "mallory@shady.blocked.test",
            "x2",
            "Hello?",
        ))
        .await?;
    let e = north.comp.recv_matching(T, |e| e.name == "message").await?;
    let (cond, text) = fedgate_s2s::wire::stanza_error(&e).context("an error reply")?;
    expect(
        cond == "policy-violation",
        "the policy denied shady.blocked.test",
    )?;
    expect(
        dns.queries() == before,
        "a denied domain is never looked up",
    )?;
    writeln!(
        out,
        "  alice@north.test -> mallory@shady.blocked.test: denied by policy with <{cond}/> \"{text}\" (no DNS query)"
    )?;

    writeln!(out, "\n  metrics (north.test):")?;
    let metrics = crate::http::metrics_text(&north.gw.http);
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("fedgate_auth_total")
                || l.starts_with("fedgate_stanzas_routed_total")
                || l.starts_with("fedgate_stanzas_bounced_total")
                || l.starts_with("fedgate_policy_denials_total")
                || l.starts_with("fedgate_streams{"))
    }) {
        writeln!(out, "    {line}")?;
    }
    writeln!(
        out,
        "\n  status (north.test): {}",
        crate::http::status_json(&north.gw.http)["remote_domains"]["south.test"]
    )?;
    for s in [north, south] {
        s.comp.close().await;
        s.gw.shutdown().await;
    }
    dns.stop().await;
    writeln!(
        out,
        "\ndemo complete: messages, a presence subscription, error bounces and a policy denial."
    )?;
    Ok(out)
}

async fn exchange(
    out: &mut String,
    from: &mut Side,
    to: &mut Side,
    from_jid: &str,
    to_jid: &str,
    text: &str,
) -> anyhow::Result<()> {
    writeln!(out, "  {from_jid} -> {to_jid}: \"{text}\"")?;
    from.comp
        .send(&message(from_jid, to_jid, "demo", text))
        .await?;
    let m = to.comp.recv_matching(T, |e| e.name == "message").await?;
    expect(
        body(&m).as_deref() == Some(text),
        "the message arrived unchanged",
    )?;
    expect(
        m.attr("from") == Some(from_jid),
        "the sender address is kept",
    )?;
    writeln!(out, "  <- {} delivered it to its local service", to.domain)?;
    Ok(())
}

fn expect(ok: bool, what: &str) -> anyhow::Result<()> {
    if !ok {
        bail!("demo failed: expected that {what}");
    }
    Ok(())
}
