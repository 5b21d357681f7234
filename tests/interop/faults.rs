//! Crashes in the middle of a burst, with real peers (issue 12, "nothing accepted vanishes").
//! Every message carries an id; each test counts, per id, what the receiver got and what
//! errors came back to the sender, and prints the figures.
//!
//! What "accepted" means, per direction (a crashed server loses what it held itself; that
//! is its business, not fedgate's):
//!
//! - remote user → component user (the remote server dies): fedgate accepted what it took
//!   from the remote server's stream (`fedgate_stanzas_routed_total`). All of it must reach
//!   the component: the remote server is gone, so there is nobody to bounce to, and the
//!   component is there. Of these, the ones fedgate acknowledged with XEP-0198 `<a h>` are
//!   the first `h` of the stream (checked against Prosody's own log).
//! - component → remote user (the remote server dies): fedgate accepted every message the
//!   component sent. Each must be delivered to the remote user, or come back to the component
//!   as an error, or be one the remote server had confirmed (XEP-0198 `h` for Prosody, an
//!   answered XEP-0199 ping for ejabberd) before it died: those it lost with its crash.
//! - fedgate dies and restarts: the stanzas it had not acknowledged stay with Prosody, whose
//!   rules apply (mod_smacks: bounce to the sender, `recipient-unavailable`). Every message the
//!   Prosody user sent must be delivered to the component or come back to the user as an
//!   error; a message that is both was delivered by the killed fedgate whose acknowledgement
//!   died with it (the documented duplicate side effect).
//!
//! The receiving remote server is frozen (SIGSTOP) just before its SIGKILL, until fedgate has
//! stanzas written to it that it never read: those are the ones a crash puts at risk. fedgate
//! is killed while the local service stalls, so that it holds stanzas it took and the
//! service has not confirmed.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use fedgate::component_client::{ComponentClient, message};
use fedgate::testdns::{TestDns, Zone};
use fedgate_certs::dev::LeafSpec;
use tokio::time::Instant;

use super::srv_literal;
use crate::gw_child::GwChild;
use crate::peers::*;
use crate::support::*;

const W: Duration = Duration::from_secs(30);
/// Messages per burst, and how many the receiver has when the crash comes.
const N: usize = 400;
const KILL_AT: usize = 100;

/// What the two ends saw of a burst of ids `{prefix}0..{prefix}{n-1}`.
#[derive(Default, Debug)]
struct Tally {
    prefix: String,
    n: usize,
    /// Deliveries per id.
    delivered: HashMap<String, usize>,
    /// Errors that came back, per id: the condition.
    bounced: BTreeMap<String, String>,
}

impl Tally {
    fn new(prefix: &str, n: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            n,
            ..Self::default()
        }
    }

    fn ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.n).map(|i| format!("{}{i}", self.prefix))
    }

    fn ours(&self, id: &str) -> bool {
        id.strip_prefix(self.prefix.as_str())
            .is_some_and(|i| i.parse::<usize>().is_ok_and(|i| i < self.n))
    }

    fn deliver(&mut self, id: &str) {
        if self.ours(id) {
            *self.delivered.entry(id.to_owned()).or_default() += 1;
        }
    }

    fn bounce(&mut self, id: &str, condition: &str) {
        if self.ours(id) {
            self.bounced.insert(id.to_owned(), condition.to_owned());
        }
    }

    /// Ids neither delivered nor bounced nor `excused`.
    fn vanished(&self, excused: impl Fn(usize) -> bool) -> Vec<String> {
        self.ids()
            .enumerate()
            .filter(|(i, id)| {
                !excused(*i) && !self.delivered.contains_key(id) && !self.bounced.contains_key(id)
            })
            .map(|(_, id)| id)
            .collect()
    }

    /// Deliveries beyond the first of an id.
    fn duplicates(&self) -> usize {
        self.delivered.values().map(|c| c - 1).sum()
    }

    /// Ids both delivered and bounced (an acknowledgement lost with a crash).
    fn delivered_and_bounced(&self) -> usize {
        self.bounced
            .keys()
            .filter(|id| self.delivered.contains_key(*id))
            .count()
    }

    fn conditions(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for c in self.bounced.values() {
            *m.entry(c.as_str()).or_default() += 1;
        }
        m
    }
}

/// Reads what the component got (deliveries of our ids, errors for our ids) for `wait`.
async fn read_component(comp: &mut ComponentClient, t: &mut Tally, wait: Duration) {
    while let Ok(el) = comp.recv(wait).await {
        let id = el.attr("id").unwrap_or_default();
        if el.name != "message" {
            continue;
        }
        if el.attr("type") == Some("error") {
            let (cond, _) = fedgate_s2s::wire::stanza_error(&el).unwrap_or_default();
            t.bounce(id, &cond);
        } else {
            t.deliver(id);
        }
    }
}

/// Applies one event of a slixmpp client to the tally; true when it reports its disconnect.
fn client_event(ev: &Json, t: &mut Tally) -> bool {
    let field = |o: &Json, k: &str| o.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
    if let Some(m) = ev.get("message") {
        t.deliver(&field(m, "id"));
    } else if let Some(e) = ev.get("message_error") {
        t.bounce(&field(e, "id"), &field(e, "condition"));
    }
    ev.get("disconnected").is_some()
}

/// Waits (polling the gateway's metrics) until `cond` holds.
async fn until_metrics(
    get: impl AsyncFn() -> String,
    what: &str,
    cond: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + W;
    loop {
        let m = get().await;
        if cond(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The largest `h` Prosody's log says it sent in answer to an `<r/>`.
fn prosody_max_h(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("Received ack request, acking for ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// The stanzas Prosody's log says its outgoing s2s streams had acknowledged (`handle_a`:
/// `#queue = Q (acked: N)`, N newly acknowledged).
fn prosody_acked_out(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("s2sout"))
        .filter_map(|l| {
            l.split("(acked: ")
                .nth(1)?
                .split(')')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Sends `sig` to process `pid` (one the test started).
fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

struct Remote {
    pki: Pki,
    dns: TestDns,
    gw: GwSpec,
    user_jid: String,
    user_pw: String,
}

/// The test PKI, a DNS zone with `remote` at `remote_ip` and example.test at the gateway.
async fn remote_setup(remote: &str, remote_ip: Ipv4Addr, user: &str) -> Remote {
    let pki = Pki::new();
    let mut gw = GwSpec::new(&pki, "example.test");
    let mut zone = Zone::new();
    srv_literal(&mut zone, remote, remote_ip);
    srv_literal(&mut zone, "example.test", gw.ip);
    let dns = dns(zone).await;
    gw.dns = Some(dns.addr());
    Remote {
        pki,
        dns,
        gw,
        user_jid: format!("{user}@{remote}"),
        user_pw: format!("pw-{user}"),
    }
}

/// Prosody for p.test with XEP-0198 (mod_smacks: on s2s by default, `smacks_s2s_resend`
/// off, so what a broken stream never confirmed is bounced to the sender). Prosody 0.12
/// offers XEP-0198 to an inbound s2s stream only in the features after authentication, which
/// a dialback stream never gets: both sides trust the test CA, so that fedgate's stream in
/// authenticates with SASL EXTERNAL and has XEP-0198 too (its own outbound stream enables it
/// either way).
async fn prosody_sm(r: &Remote, ip: Ipv4Addr) -> Prosody {
    let (pc, pk) = r.pki.leaf("p.test", &LeafSpec::dns(&["p.test"]));
    let mut opts = ProsodyOpts::new("p.test", ip, r.dns.addr(), pc, pk).user("alice", &r.user_pw);
    opts.extra_modules = vec!["smacks".into()];
    opts.trust_ca = Some(r.pki.ca_path());
    opts.secure_auth = true;
    Prosody::start(opts).await.unwrap()
}

async fn client(r: &Remote, addr: std::net::SocketAddr) -> XmppClient {
    XmppClient::connect(&interop_python(), &r.user_jid, &r.user_pw, addr)
        .await
        .unwrap()
}

/// One message from the remote user to the component and one back, so that both streams
/// exist (and have negotiated their acknowledgements) before the burst.
async fn warm_up(
    comp: &mut ComponentClient,
    user: &mut XmppClient,
    local: &str,
    diag: &dyn Fn() -> String,
) {
    user.send_message(local, "warm-up").await.unwrap();
    let m = comp
        .recv_matching(W, |e| e.name == "message")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diag()));
    let from = m.attr("from").unwrap().to_owned();
    comp.send(&message(local, &from, "warm-up-back", "warm-up"))
        .await
        .unwrap();
    user.expect_message(W)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diag()));
}

fn print_figures(test: &str, t: &Tally, extra: &str) {
    eprintln!(
        "{test}: {} sent, {} delivered ({} duplicates, {} delivered and bounced), {} bounced {:?}{extra}",
        t.n,
        t.delivered.len(),
        t.duplicates(),
        t.delivered_and_bounced(),
        t.bounced.len(),
        t.conditions(),
    );
}

/// Remote user → component user; the remote server is SIGKILLed when the component has
/// `KILL_AT` of the burst. Everything fedgate took from the stream reaches the component,
/// and what it acknowledged (`fedgate_stanzas_confirmed_total{link="s2s-in"}`, XEP-0198) is
/// at most what it took, and at least what Prosody's log says it was told.
async fn remote_dies_while_sending(
    g: &fedgate::gateway::Gateway,
    comp: &mut ComponentClient,
    user: &mut XmppClient,
    kill: &mut dyn FnMut(),
    prosody_log: Option<&dyn Fn() -> String>,
    remote: &str,
    diag: &dyn Fn() -> String,
) -> (Tally, u64, u64, Option<u64>) {
    let local = "bob@example.test";
    let routed_key = format!(
        "fedgate_stanzas_routed_total{{path=\"remote-to-local\",remote_domain=\"{remote}\"}}"
    );
    let acked_key = "fedgate_stanzas_confirmed_total{link=\"s2s-in\"}";
    let m0 = http_get(g, "/metrics").await;
    let (routed0, acked0) = (metric(&m0, &routed_key), metric(&m0, acked_key));
    let told0 = prosody_log.map(|l| prosody_acked_out(&l()));
    let mut t = Tally::new("r", N);
    user.burst(local, "r", N, "burst", 5, Duration::from_millis(20))
        .unwrap();
    let deadline = Instant::now() + W;
    while t.delivered.len() < KILL_AT {
        assert!(
            Instant::now() < deadline,
            "the burst did not arrive\n{}",
            diag()
        );
        read_component(comp, &mut t, Duration::from_millis(20)).await;
    }
    kill();
    // The remote server is gone: what fedgate took keeps going to the component. Wait until
    // fedgate's inbound stream has ended and the component has everything it took.
    let mut last;
    let deadline = Instant::now() + W;
    loop {
        read_component(comp, &mut t, Duration::from_millis(100)).await;
        last = http_get(g, "/metrics").await;
        let accepted = metric(&last, &routed_key) - routed0;
        let inbound = metric(
            &last,
            "fedgate_streams{direction=\"in\",state=\"established\"}",
        );
        if inbound == 0 && t.delivered.len() as u64 >= accepted {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let accepted = metric(&last, &routed_key) - routed0;
    let acked = metric(&last, acked_key) - acked0;
    // Unique deliveries of the burst, first to last: ids past what fedgate took never came.
    let lost: Vec<String> = t
        .ids()
        .take(accepted as usize)
        .filter(|id| !t.delivered.contains_key(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of the {accepted} messages fedgate took from {remote} never reached the component: {:?}\n{last}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(
        t.delivered.len() as u64,
        accepted,
        "the component got what fedgate took, no more\n{last}"
    );
    assert!(acked <= accepted, "acknowledged {acked} of {accepted}");
    assert!(
        accepted < N as u64,
        "the crash came after the burst: fedgate took all {N}"
    );
    let told = prosody_log
        .zip(told0)
        .map(|(l, told0)| prosody_acked_out(&l()) - told0);
    if let Some(told) = told {
        assert!(
            told <= acked,
            "Prosody's log says fedgate acknowledged {told}, fedgate counted {acked}"
        );
        assert!(
            acked > 0,
            "fedgate acknowledged nothing with XEP-0198\n{last}"
        );
    }
    (t, accepted, acked, told)
}

/// Where a crash of the receiving remote server stands.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// SIGSTOPped: it reads nothing, and fedgate's stanzas pile up unread in the socket.
    Frozen,
    Killed,
}

/// Freezes the remote server once its user has `KILL_AT` of the burst, and kills it once
/// fedgate has at least 20 stanzas written to it and unconfirmed: a crash with stanzas in
/// flight, which the remote server never read.
async fn advance(
    phase: &mut Phase,
    t: &Tally,
    g: &fedgate::gateway::Gateway,
    freeze: &mut dyn FnMut(),
    kill: &mut dyn FnMut(),
) {
    match phase {
        Phase::Running if t.delivered.len() >= KILL_AT => {
            freeze();
            *phase = Phase::Frozen;
        }
        Phase::Frozen => {
            let m = http_get(g, "/metrics").await;
            if metric(&m, "fedgate_unconfirmed_stanzas{link=\"s2s-out\"}") >= 20 {
                kill();
                *phase = Phase::Killed;
            }
        }
        _ => {}
    }
}

/// Component → remote user; the remote server freezes when its user has `KILL_AT` of the
/// burst and is SIGKILLed once fedgate has stanzas in flight to it (the component goes on
/// sending). Every message is delivered, bounced to the
/// component, or was confirmed by the remote server before it died
/// (`fedgate_stanzas_confirmed_total{link="s2s-out"}`: the first ones of the stream, as a
/// stream is ordered).
async fn remote_dies_while_receiving(
    g: &fedgate::gateway::Gateway,
    comp: &mut ComponentClient,
    user: &mut XmppClient,
    freeze: &mut dyn FnMut(),
    kill: &mut dyn FnMut(),
    diag: &dyn Fn() -> String,
) -> (Tally, u64) {
    let remote_user = user.jid().to_owned();
    let from = format!("bob@{}/desk", comp.domain);
    let confirmed_key = "fedgate_stanzas_confirmed_total{link=\"s2s-out\"}";
    let unconfirmed_key = "fedgate_unconfirmed_stanzas{link=\"s2s-out\"}";
    // The warm-up is confirmed: what is confirmed from here on is the burst's.
    let m0 = until_metrics(
        async || http_get(g, "/metrics").await,
        "the warm-up was not confirmed",
        |m| metric(m, unconfirmed_key) == 0,
    )
    .await;
    let confirmed0 = metric(&m0, confirmed_key);
    let mut t = Tally::new("c", N);
    let mut phase = Phase::Running;
    let deadline = Instant::now() + W;
    for i in 0..N {
        comp.send(&message(&from, &remote_user, &format!("c{i}"), "burst"))
            .await
            .unwrap();
        if i % 20 == 19 {
            while let Some(ev) = user.next_event_within(Duration::from_millis(15)).await {
                client_event(&ev, &mut t);
            }
            advance(&mut phase, &t, g, freeze, kill).await;
            read_component(comp, &mut t, Duration::from_millis(1)).await;
        }
    }
    while phase != Phase::Killed {
        assert!(
            Instant::now() < deadline,
            "the burst did not arrive ({phase:?})\n{}",
            diag()
        );
        if let Some(ev) = user.next_event_within(Duration::from_millis(50)).await {
            client_event(&ev, &mut t);
        }
        advance(&mut phase, &t, g, freeze, kill).await;
    }
    // The user's last events, up to its disconnect.
    while Instant::now() < deadline {
        match user.next_event_within(Duration::from_secs(5)).await {
            Some(ev) if !client_event(&ev, &mut t) => {}
            _ => break,
        }
    }
    // What the remote server never confirmed comes back to the component.
    let mut confirmed;
    let deadline = Instant::now() + W;
    loop {
        read_component(comp, &mut t, Duration::from_millis(100)).await;
        let m = http_get(g, "/metrics").await;
        confirmed = metric(&m, confirmed_key) - confirmed0;
        if metric(&m, unconfirmed_key) == 0 && t.vanished(|i| (i as u64) < confirmed).is_empty()
            || Instant::now() >= deadline
        {
            break;
        }
    }
    let vanished = t.vanished(|i| (i as u64) < confirmed);
    assert!(
        vanished.is_empty(),
        "{} of {N} vanished (delivered {}, bounced {}, confirmed by the remote server {confirmed}): {:?}\n{}",
        vanished.len(),
        t.delivered.len(),
        t.bounced.len(),
        &vanished[..vanished.len().min(20)],
        http_get(g, "/metrics").await
    );
    // A bounce is never for a stanza the remote server confirmed: a message both delivered
    // and bounced is one whose confirmation was lost with the crash.
    let bounced_confirmed: Vec<_> = t
        .ids()
        .take(confirmed as usize)
        .filter(|id| t.bounced.contains_key(id))
        .collect();
    assert!(
        bounced_confirmed.is_empty(),
        "bounced although the remote server confirmed them: {bounced_confirmed:?}"
    );
    (t, confirmed)
}

/// Prosody (XEP-0198 on s2s) as p.test, SIGKILLed in the middle of a burst, in both
/// directions. Restarted afterwards: the next message goes through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_killed_mid_burst_loses_nothing_fedgate_accepted() {
    let p_ip = next_ip();
    let r = remote_setup("p.test", p_ip, "alice").await;
    let g = r.gw.start().await;
    let mut comp = r.gw.component(&g).await;
    let mut prosody = prosody_sm(&r, p_ip).await;
    let mut alice = client(&r, prosody.c2s_addr()).await;
    let diag_dir = prosody.dir().to_path_buf();
    let diag = move || read_lossy(&diag_dir.join("prosody.log"));
    warm_up(&mut comp, &mut alice, "bob@example.test", &diag).await;
    for link in ["s2s-in", "s2s-out"] {
        let key = format!("fedgate_ack_links_total{{link=\"{link}\",mode=\"sm\"}}");
        until_metrics(
            async || http_get(&g, "/metrics").await,
            &format!("no XEP-0198 on {link} with Prosody"),
            |m| metric(m, &key) >= 1,
        )
        .await;
    }

    // Prosody → component.
    let log_path = prosody.dir().join("prosody.log");
    let log = move || read_lossy(&log_path);
    let pid = prosody.pid();
    let (t, accepted, acked, told) = remote_dies_while_sending(
        &g,
        &mut comp,
        &mut alice,
        &mut || prosody.kill(),
        Some(&log),
        "p.test",
        &diag,
    )
    .await;
    print_figures(
        "prosody killed, p.test → component",
        &t,
        &format!(
            "; fedgate took {accepted} (acknowledged {acked} with XEP-0198; Prosody's log: {} acknowledged), {} stayed with the killed Prosody (pid {pid}), 0 vanished",
            told.unwrap_or_default(),
            N as u64 - accepted
        ),
    );
    alice.close();

    // Component → Prosody: a fresh Prosody process on the same data.
    prosody.restart().await.unwrap();
    let mut alice = client(&r, prosody.c2s_addr()).await;
    warm_up(&mut comp, &mut alice, "bob@example.test", &diag).await;
    let h_log = prosody.dir().join("prosody.log");
    let log_before = read_lossy(&h_log).len();
    let pid = prosody.pid();
    let (t, confirmed) = remote_dies_while_receiving(
        &g,
        &mut comp,
        &mut alice,
        &mut || signal("STOP", pid),
        &mut || prosody.kill(),
        &diag,
    )
    .await;
    // Prosody's own account: the h it sent for this stream covers what fedgate let go.
    let h = prosody_max_h(&read_lossy(&h_log)[log_before..]);
    assert!(
        confirmed < h.max(1),
        "fedgate counted {confirmed} confirmed, Prosody's log says h = {h} (the warm-up included)"
    );
    let lost_by_prosody = (0..confirmed as usize)
        .filter(|i| !t.delivered.contains_key(&format!("c{i}")))
        .count();
    print_figures(
        "prosody killed, component → p.test",
        &t,
        &format!(
            "; {confirmed} confirmed by Prosody (XEP-0198, its log: h = {h} with the warm-up), of which {lost_by_prosody} it lost with its crash, 0 vanished"
        ),
    );
    alice.close();

    // Back up: fedgate reaches the restarted Prosody again.
    prosody.restart().await.unwrap();
    let mut alice = client(&r, prosody.c2s_addr()).await;
    warm_up(&mut comp, &mut alice, "bob@example.test", &diag).await;
    alice.close();
    prosody.stop();
    g.shutdown().await;
    r.dns.stop().await;
}

/// ejabberd as e.test, SIGKILLed in the middle of a burst, in both directions. ejabberd 23.01
/// has no XEP-0198 on s2s (mod_stream_mgmt is c2s only) and never offers it: fedgate confirms
/// what it sends with XEP-0199 pings, and acknowledges nothing it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_killed_mid_burst_loses_nothing_fedgate_accepted() {
    let e_ip = next_ip();
    let r = remote_setup("e.test", e_ip, "carol").await;
    let g = r.gw.start().await;
    let mut comp = r.gw.component(&g).await;
    let start = async |r: &Remote| {
        let (ec, ek) = r.pki.leaf("e.test", &LeafSpec::dns(&["e.test"]));
        let opts =
            EjabberdOpts::new("e.test", e_ip, r.dns.addr(), ec, ek).user("carol", &r.user_pw);
        Ejabberd::start(opts).await.unwrap()
    };
    let mut ejabberd = start(&r).await;
    let mut carol = client(&r, ejabberd.c2s_addr()).await;
    let diag_dir = ejabberd.dir().to_path_buf();
    let diag = move || read_lossy(&diag_dir.join("logs/ejabberd.log"));
    warm_up(&mut comp, &mut carol, "dave@example.test", &diag).await;
    let m = http_get(&g, "/metrics").await;
    assert!(
        metric(
            &m,
            "fedgate_ack_links_total{link=\"s2s-out\",mode=\"ping\"}"
        ) >= 1,
        "fedgate confirms by pings towards ejabberd\n{m}"
    );
    assert_eq!(
        metric(&m, "fedgate_ack_links_total{link=\"s2s-in\",mode=\"sm\"}"),
        0,
        "ejabberd does not enable XEP-0198 on s2s\n{m}"
    );

    // ejabberd → component.
    let (t, accepted, acked, told) = remote_dies_while_sending(
        &g,
        &mut comp,
        &mut carol,
        &mut || ejabberd.kill(),
        None,
        "e.test",
        &diag,
    )
    .await;
    assert_eq!(
        (acked, told),
        (0, None),
        "nothing to acknowledge without XEP-0198"
    );
    print_figures(
        "ejabberd killed, e.test → component",
        &t,
        &format!(
            "; fedgate took {accepted}, {} stayed with the killed ejabberd, 0 vanished",
            N as u64 - accepted
        ),
    );
    carol.close();
    drop(ejabberd);

    // Component → ejabberd (a fresh node on the same address).
    let mut ejabberd = start(&r).await;
    let mut carol = client(&r, ejabberd.c2s_addr()).await;
    warm_up(&mut comp, &mut carol, "dave@example.test", &diag).await;
    let beam = ejabberd.beam_pid().expect("ejabberd's pid");
    let (t, confirmed) = remote_dies_while_receiving(
        &g,
        &mut comp,
        &mut carol,
        &mut || signal("STOP", beam),
        &mut || ejabberd.kill(),
        &diag,
    )
    .await;
    let lost_by_ejabberd = (0..confirmed as usize)
        .filter(|i| !t.delivered.contains_key(&format!("c{i}")))
        .count();
    print_figures(
        "ejabberd killed, component → e.test",
        &t,
        &format!(
            "; {confirmed} confirmed by ejabberd (answered pings), of which {lost_by_ejabberd} it lost with its crash, 0 vanished"
        ),
    );
    carol.close();
    drop(ejabberd);
    g.shutdown().await;
    r.dns.stop().await;
}

/// fedgate itself (a child process) SIGKILLed in the middle of a burst from a Prosody user
/// over XEP-0198, then restarted. What it had not acknowledged stayed with Prosody, which
/// bounces it to its user (mod_smacks, `smacks_s2s_resend` off); what it had acknowledged
/// it had delivered. Every message is delivered to the component or bounced to the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedgate_killed_mid_burst_leaves_the_rest_with_prosody() {
    let p_ip = next_ip();
    let mut r = remote_setup("p.test", p_ip, "alice").await;
    // At most 16 stanzas written to the component and unconfirmed: when it stalls, fedgate
    // keeps the rest of what it took in its queue.
    r.gw.extra_s2s = "max_unacked = 16\n".into();
    let mut gw = GwChild::start(&r.gw).await;
    let connect = async |gw: &GwChild| {
        ComponentClient::connect(
            gw.component_addr(),
            "example.test",
            &r.gw.component_secret(),
        )
        .await
        .unwrap()
    };
    let mut comp = connect(&gw).await;
    let prosody = prosody_sm(&r, p_ip).await;
    let mut alice = client(&r, prosody.c2s_addr()).await;
    let diag = || prosody.log_text();
    warm_up(&mut comp, &mut alice, "bob@example.test", &diag).await;
    let m = gw.http_get("/metrics").await;
    assert!(
        metric(&m, "fedgate_ack_links_total{link=\"s2s-in\",mode=\"sm\"}") >= 1,
        "Prosody enabled XEP-0198 on its stream to fedgate\n{m}"
    );

    let mut t = Tally::new("k", N);
    alice
        .burst(
            "bob@example.test",
            "k",
            N,
            "burst",
            // Slower than the other bursts: it goes on while fedgate is down and restarts.
            5,
            Duration::from_millis(20),
        )
        .unwrap();
    let deadline = Instant::now() + W;
    while t.delivered.len() < KILL_AT {
        assert!(
            Instant::now() < deadline,
            "the burst did not arrive\n{}",
            diag()
        );
        read_component(&mut comp, &mut t, Duration::from_millis(20)).await;
    }
    // The local service stalls (it stops reading and so answering pings): fedgate holds
    // what it took from Prosody and the service has not confirmed, at most `max_unacked`
    // written to the service, the rest queued. Then fedgate dies.
    comp.pause(true);
    let held = until_metrics(
        async || gw.http_get("/metrics").await,
        "fedgate did not fill its link to the stalled component",
        |m| {
            metric(m, "fedgate_unconfirmed_stanzas{link=\"component\"}") >= 16
                && metric(m, "fedgate_queued_bytes") > 0
        },
    )
    .await;
    let acked_before_kill = metric(&held, "fedgate_stanzas_confirmed_total{link=\"s2s-in\"}");
    let pid = gw.pid();
    gw.kill();
    // The component reads what reached its socket, then sees its stream end.
    comp.pause(false);
    read_component(&mut comp, &mut t, Duration::from_millis(300)).await;
    let at_kill: std::collections::HashSet<String> = t.delivered.keys().cloned().collect();
    gw.restart().await;
    let mut comp = connect(&gw).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut burst_sent = false;
    while Instant::now() < deadline && !(burst_sent && t.vanished(|_| false).is_empty()) {
        read_component(&mut comp, &mut t, Duration::from_millis(20)).await;
        while let Some(ev) = alice.next_event_within(Duration::from_millis(20)).await {
            burst_sent |= ev.get("burst_sent").is_some();
            client_event(&ev, &mut t);
        }
    }
    let vanished = t.vanished(|_| false);
    assert!(
        vanished.is_empty(),
        "{} of {N} vanished (delivered {}, bounced {}): {:?}\n{}\n{}",
        vanished.len(),
        t.delivered.len(),
        t.bounced.len(),
        &vanished[..vanished.len().min(20)],
        gw.log_text(),
        diag()
    );
    // Prosody bounced nothing fedgate had acknowledged (the first `acked_before_kill` of its
    // stream, the warm-up one of them): the messages both delivered and bounced are those
    // whose acknowledgement died with fedgate.
    let acked_burst = acked_before_kill.saturating_sub(1) as usize;
    let bounced_acked: Vec<_> = t
        .ids()
        .take(acked_burst)
        .filter(|id| t.bounced.contains_key(id))
        .collect();
    assert!(
        bounced_acked.is_empty(),
        "Prosody bounced messages fedgate had acknowledged: {bounced_acked:?}"
    );
    let after_restart = t
        .delivered
        .keys()
        .filter(|id| !at_kill.contains(*id))
        .count();
    print_figures(
        "fedgate killed, p.test → component",
        &t,
        &format!(
            "; {} delivered before the kill of fedgate (pid {pid}), which had acknowledged {acked_before_kill} to Prosody (the warm-up included), {after_restart} by the restarted fedgate, 0 vanished",
            at_kill.len()
        ),
    );
    // The restarted gateway carries the next message (Prosody's new stream).
    alice
        .send_command(r#"{"send":{"to":"bob@example.test","body":"after","id":"after-restart"}}"#)
        .unwrap();
    comp.recv_matching(W, |e| e.attr("id") == Some("after-restart"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gw.log_text(), diag()));
    alice.close();
    drop(prosody);
    drop(gw);
    r.dns.stop().await;
}
