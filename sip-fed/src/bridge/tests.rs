//! The bridge without sockets: time is passed in, so refreshes, idle sessions and timeouts are
//! checked exactly.

use std::time::{Duration, Instant};

use fedgate_s2s::element::{Element, NS_CONTENT};

use super::*;

fn bridge() -> Bridge {
    let cfg = BridgeConfig {
        host: "gw.example.test".into(),
        hosted: ["example.test".to_owned()].into_iter().collect(),
        session_idle: Duration::from_secs(60),
        subscription_expires: 600,
        txn_timeout: Duration::from_secs(32),
        default_flavor: Flavor::Standard,
        ..BridgeConfig::default()
    };
    Bridge::new(cfg, None)
}

fn presence(from: &str, to: &str, ptype: Option<&str>) -> Element {
    let mut p = Element::new("presence", NS_CONTENT)
        .with_attr("from", from)
        .with_attr("to", to);
    if let Some(t) = ptype {
        p.set_attr("type", t);
    }
    p
}

fn sip(out: &[Out]) -> Vec<&SipMessage> {
    out.iter()
        .filter_map(|o| match o {
            Out::Sip { msg, .. } => Some(msg),
            Out::Xmpp { .. } => None,
        })
        .collect()
}

fn xmpp(out: &[Out]) -> Vec<&Element> {
    out.iter()
        .filter_map(|o| match o {
            Out::Xmpp { el, .. } => Some(el),
            Out::Sip { .. } => None,
        })
        .collect()
}

fn ok_with_tag(req: &SipMessage, extra: &[(&str, &str)]) -> SipMessage {
    let mut r = SipMessage::response_to(req, 200, "OK");
    r.set_to_tag("remote").unwrap();
    r.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
    for (k, v) in extra {
        r.push_header(*k, *v);
    }
    r
}

/// `200 OK` to one of our requests.
fn ok(req: &SipMessage) -> SipMessage {
    SipMessage::response_to(req, 200, "OK")
}

/// A NOTIFY from bob in the dialog of `sub`.
fn notify(sub: &SipMessage, cseq: u32, state: &str, body: &str) -> SipMessage {
    let mut n = SipMessage::request("NOTIFY", "sip:alice@gw.example.test");
    n.push_header(
        "Via",
        format!("SIP/2.0/TLS edge.lync.test;branch=z9hG4bKn{cseq}"),
    );
    n.push_header("Max-Forwards", "70");
    n.push_header("From", "<sip:bob@lync.test>;tag=remote");
    n.push_header("To", sub.header("From").unwrap());
    n.push_header("Call-ID", sub.call_id().unwrap());
    n.push_header("CSeq", format!("{cseq} NOTIFY"));
    n.push_header("Event", "presence");
    n.push_header("Subscription-State", state);
    if !body.is_empty() {
        n.push_header("Content-Type", "application/pidf+xml");
        n.body = body.as_bytes().to_vec();
    }
    n
}

#[test]
fn subscription_refresh_tolerates_a_missing_expires_and_has_jitter() {
    let mut b = bridge();
    let t0 = Instant::now();
    let out = b.on_stanza(
        presence("alice@example.test", "bob@lync.test", Some("subscribe")),
        None,
        t0,
    );
    let sub = sip(&out)[0].clone();
    assert_eq!(sub.method(), Some("SUBSCRIBE"));
    assert_eq!(sub.header("Expires"), Some("600"));
    // No Expires in the 2xx: what we asked for counts.
    let out = b.on_response(ok_with_tag(&sub, &[]), t0);
    assert!(out.is_empty());
    let due = b.next_deadline().unwrap();
    let secs = due.duration_since(t0).as_secs_f64();
    assert!(
        (420.0..=480.0).contains(&secs),
        "refresh after {secs} s of 600"
    );
    assert!(b.poll(due - Duration::from_millis(1)).is_empty());
    let out = b.poll(due);
    let refresh = sip(&out)[0].clone();
    assert_eq!(refresh.method(), Some("SUBSCRIBE"));
    assert_eq!(refresh.call_id(), sub.call_id(), "in the same dialog");
    assert_eq!(refresh.cseq().unwrap().0, sub.cseq().unwrap().0 + 1);
    assert_eq!(refresh.uri(), Some("sip:bob@edge.lync.test;transport=tls"));
}

#[test]
fn notify_states_map_to_xmpp_and_a_timeout_resubscribes() {
    let mut b = bridge();
    let t0 = Instant::now();
    let out = b.on_stanza(
        presence("alice@example.test", "bob@lync.test", Some("subscribe")),
        None,
        t0,
    );
    let sub = sip(&out)[0].clone();
    b.on_response(ok_with_tag(&sub, &[("Expires", "600")]), t0);
    // pending: answered, nothing for XMPP
    let out = b.on_request(7, "lync.test", notify(&sub, 1, "pending", ""), t0);
    assert_eq!(sip(&out)[0].code(), Some(200));
    assert!(xmpp(&out).is_empty());
    // active: subscribed, then the presence
    let pidf = "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:bob@lync.test'>\
                <tuple id='t'><status><basic>open</basic></status></tuple></presence>";
    let out = b.on_request(
        7,
        "lync.test",
        notify(&sub, 2, "active;expires=600", pidf),
        t0,
    );
    let x = xmpp(&out);
    assert_eq!(x[0].attr("type"), Some("subscribed"));
    assert_eq!(x[1].attr("type"), None);
    assert_eq!(x[1].attr("from"), Some("bob@lync.test"));
    // terminated;reason=timeout: the authorization stands, a new dialog is made
    let out = b.on_request(
        7,
        "lync.test",
        notify(&sub, 3, "terminated;reason=timeout", ""),
        t0,
    );
    let again = sip(&out).into_iter().find(|m| m.is_request()).unwrap();
    assert_eq!(again.method(), Some("SUBSCRIBE"));
    assert_ne!(again.call_id(), sub.call_id());
    assert!(xmpp(&out).is_empty(), "no unsubscribed for a timeout");
    // rejected: unavailable + unsubscribed
    let again = again.clone();
    b.on_response(ok_with_tag(&again, &[]), t0);
    let out = b.on_request(
        7,
        "lync.test",
        notify(&again, 1, "terminated;reason=rejected", ""),
        t0,
    );
    let types: Vec<_> = xmpp(&out).iter().map(|e| e.attr("type")).collect();
    assert_eq!(types, vec![Some("unavailable"), Some("unsubscribed")]);
}

#[test]
fn a_request_without_answer_fails_as_remote_server_timeout() {
    let mut b = bridge();
    let t0 = Instant::now();
    let msg = Element::new("message", NS_CONTENT)
        .with_attr("from", "alice@example.test/pc")
        .with_attr("to", "bob@lync.test")
        .with_attr("id", "m1")
        .with_child(Element::new("body", NS_CONTENT).with_text("hello"));
    let out = b.on_stanza(msg, None, t0);
    assert_eq!(sip(&out)[0].method(), Some("MESSAGE"));
    assert!(b.poll(t0 + Duration::from_secs(31)).is_empty());
    let out = b.poll(t0 + Duration::from_secs(32));
    let err = xmpp(&out)[0];
    assert_eq!(err.attr("type"), Some("error"));
    assert_eq!(err.attr("id"), Some("m1"));
    let (cond, _) = fedgate_s2s::wire::stanza_error(err).unwrap();
    assert_eq!(cond, "remote-server-timeout");
}

#[test]
fn the_watcher_sees_the_most_available_resource() {
    let mut b = bridge();
    let t0 = Instant::now();
    // Alice already authorized bob (no store: memory).
    b.on_stanza(
        presence("alice@example.test", "bob@lync.test", Some("subscribed")),
        None,
        t0,
    );
    let s = out_of_dialog(
        "SUBSCRIBE",
        1,
        &[("Event", "presence"), ("Expires", "3600")],
    );
    let out = b.on_request(3, "lync.test", s, t0);
    let msgs = sip(&out);
    assert_eq!(msgs[0].code(), Some(200));
    assert_eq!(
        msgs[0].header("Expires"),
        Some("600"),
        "granted at most our maximum"
    );
    let first = msgs[1];
    assert!(
        first
            .header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
    let first = first.clone();
    assert!(b.on_response(ok(&first), t0).is_empty());
    // Two resources: dnd on one, chat on the other; the watcher sees chat.
    let mut dnd = presence("alice@example.test/desk", "bob@lync.test", None);
    dnd = dnd.with_child(Element::new("show", NS_CONTENT).with_text("dnd"));
    let out = b.on_stanza(dnd, None, t0);
    let dnd_notify = sip(&out)[0].clone();
    let mut chat = presence("alice@example.test/phone", "bob@lync.test", None);
    chat = chat.with_child(Element::new("show", NS_CONTENT).with_text("chat"));
    // RFC 6665 §4.2.2: no new NOTIFY in the dialog before the previous one is answered.
    assert!(sip(&b.on_stanza(chat, None, t0)).is_empty());
    let out = b.on_response(ok(&dnd_notify), t0);
    let n = sip(&out)[0];
    let body = String::from_utf8_lossy(&n.body);
    assert!(body.contains(">chat<"), "{body}");
    let n = n.clone();
    assert!(b.on_response(ok(&n), t0).is_empty());
    // The subscription ends unrefreshed after the granted time.
    let out = b.poll(t0 + Duration::from_secs(600));
    let end = sip(&out)[0];
    assert!(
        end.header("Subscription-State")
            .unwrap()
            .starts_with("terminated;reason=timeout")
    );
}

#[test]
fn an_html_message_becomes_clean_text_with_xhtml_im_and_waits_for_the_router() {
    let mut b = bridge();
    let t0 = Instant::now();
    let mut m = out_of_dialog(
        "MESSAGE",
        2,
        &[
            ("Content-Type", "text/html;charset=UTF-8"),
            ("Content-Language", "de"),
        ],
    );
    m.body = b"<p>Hallo <b>Alice</b></p><script>x()</script>".to_vec();
    let out = b.on_request(1, "lync.test", m, t0);
    assert!(
        sip(&out).is_empty(),
        "no answer before the router took the stanza"
    );
    let st = xmpp(&out)[0].clone();
    let text = String::from_utf8_lossy(&st.to_bytes()).into_owned();
    assert!(text.contains("<body>Hallo Alice</body>"), "{text}");
    assert!(
        text.contains("http://jabber.org/protocol/xhtml-im"),
        "{text}"
    );
    assert!(!text.contains("x()"), "{text}");
    assert!(
        text.contains("xml:lang='de'") || text.contains("xml:lang=\"de\""),
        "{text}"
    );
    let out = b.settle();
    assert_eq!(sip(&out)[0].code(), Some(200));
}

/// The same request again as the next one in its dialog: `tag` as To tag, CSeq `seq`, a new
/// branch.
fn next_in_dialog(req: &SipMessage, tag: &str, seq: u32, branch: &str) -> SipMessage {
    let mut r = req.clone();
    r.remove_headers("Via");
    r.prepend_header(
        "Via",
        format!("SIP/2.0/TLS edge.lync.test;branch=z9hG4bK{branch}"),
    );
    let to = r.header("To").unwrap().to_owned();
    r.set_header("To", format!("{to};tag={tag}"));
    let method = r.method().unwrap().to_owned();
    r.set_header("CSeq", format!("{seq} {method}"));
    r
}

fn to_tag(msg: &SipMessage) -> String {
    NameAddr::parse(msg.header("To").unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned()
}

#[test]
fn target_refresh_answers_carry_our_contact() {
    let mut b = bridge();
    let t0 = Instant::now();
    // A session the partner opens, then refreshes with a re-INVITE.
    let invite = SipMessage::parse(include_bytes!("../../fixtures/ms-invite-im.sip")).unwrap();
    b.on_request(1, "lync.test", invite.clone(), t0);
    let ok = sip(&b.settle())[0].clone();
    assert_eq!(ok.code(), Some(200));
    let reinvite = next_in_dialog(&invite, &to_tag(&ok), 2, "re1");
    let out = b.on_request(1, "lync.test", reinvite, t0);
    let ok = sip(&out)[0];
    assert_eq!((ok.code(), ok.cseq()), (Some(200), Some((2, "INVITE"))));
    assert_eq!(
        ok.header("Contact"),
        Some("<sip:alice@gw.example.test:5061;transport=tls>"),
        "RFC 3261 §12.2.2: the 2xx to a re-INVITE carries Contact"
    );
    // A presence subscription the partner refreshes.
    let sub =
        SipMessage::parse(include_bytes!("../../fixtures/ms-subscribe-presence.sip")).unwrap();
    let out = b.on_request(2, "lync.test", sub.clone(), t0);
    let ok = sip(&out)[0].clone();
    assert_eq!(ok.code(), Some(200));
    let refresh = next_in_dialog(&sub, &to_tag(&ok), 2, "sr1");
    let out = b.on_request(2, "lync.test", refresh, t0);
    let ok = sip(&out)[0];
    assert_eq!((ok.code(), ok.cseq()), (Some(200), Some((2, "SUBSCRIBE"))));
    assert!(ok.header("Expires").is_some());
    assert_eq!(
        ok.header("Contact"),
        Some("<sip:alice@gw.example.test:5061;transport=tls>"),
        "a refreshing SUBSCRIBE's 2xx carries Contact"
    );
}

fn chat(from: &str, to: &str, id: &str, text: &str) -> Element {
    Element::new("message", NS_CONTENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_child(Element::new("body", NS_CONTENT).with_text(text))
}

#[test]
fn an_invite_whose_2xx_makes_no_dialog_ends_its_session() {
    let mut b = bridge();
    b.cfg.flavors.insert("lync.test".into(), Flavor::Microsoft);
    let t0 = Instant::now();
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@lync.test", "m1", "one"),
        None,
        t0,
    );
    let invite = sip(&out)[0].clone();
    assert_eq!(invite.method(), Some("INVITE"));
    // Written while the INVITE is pending: waits for its answer.
    assert!(
        b.on_stanza(
            chat("alice@example.test/pc", "bob@lync.test", "m2", "two"),
            None,
            t0
        )
        .is_empty()
    );
    // A 2xx without a To tag makes no dialog: the waiting message is bounced, not kept.
    let out = b.on_response(ok(&invite), t0);
    let bounced: Vec<_> = xmpp(&out).iter().map(|e| e.attr("id")).collect();
    assert_eq!(bounced, vec![Some("m2")]);
    assert_eq!(xmpp(&out)[0].attr("type"), Some("error"));
    // The next message opens a new session instead of queueing forever.
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@lync.test", "m3", "three"),
        None,
        t0,
    );
    let again = sip(&out)[0];
    assert_eq!(again.method(), Some("INVITE"));
    assert_ne!(again.call_id(), invite.call_id());
}

#[test]
fn the_answer_to_an_invite_superseded_by_the_partners_session_leaves_that_session_alone() {
    let mut b = bridge();
    b.cfg.flavors.insert("lync.test".into(), Flavor::Microsoft);
    let t0 = Instant::now();
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@lync.test", "m1", "one"),
        None,
        t0,
    );
    let invite = sip(&out)[0].clone();
    // Meanwhile bob opens a session with alice.
    let theirs = SipMessage::parse(include_bytes!("../../fixtures/ms-invite-im.sip")).unwrap();
    b.on_request(1, "lync.test", theirs.clone(), t0);
    b.settle();
    // Our INVITE fails: its message is bounced, bob's session stays.
    let out = b.on_response(SipMessage::response_to(&invite, 486, "Busy Here"), t0);
    assert_eq!(xmpp(&out)[0].attr("id"), Some("m1"));
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@lync.test", "m2", "two"),
        None,
        t0,
    );
    let m = sip(&out)[0];
    assert_eq!(m.method(), Some("MESSAGE"));
    assert_eq!(m.call_id(), theirs.call_id(), "in bob's session");
}

#[test]
fn a_fetch_whose_notify_never_comes_is_given_up() {
    let mut b = bridge();
    let t0 = Instant::now();
    b.on_stanza(
        presence("alice@example.test", "bob@lync.test", Some("subscribed")),
        None,
        t0,
    );
    b.on_stanza(
        presence("alice@example.test", "bob@lync.test", Some("subscribe")),
        None,
        t0,
    );
    // A probe: a one-off SUBSCRIBE Expires: 0.
    let out = b.on_stanza(
        presence("alice@example.test", "bob@lync.test", Some("probe")),
        None,
        t0,
    );
    let fetch = sip(&out)
        .into_iter()
        .find(|m| m.header("Expires") == Some("0"))
        .unwrap()
        .clone();
    assert!(b.on_response(ok_with_tag(&fetch, &[]), t0).is_empty());
    // No NOTIFY: after 64·T1 the fetch is forgotten, and a late NOTIFY is not ours.
    b.poll(t0 + Duration::from_secs(33));
    let late = notify(&fetch, 1, "terminated;reason=timeout", "");
    let out = b.on_request(7, "lync.test", late, t0 + Duration::from_secs(34));
    assert_eq!(sip(&out)[0].code(), Some(481));
}

#[test]
fn a_notify_that_times_out_or_is_refused_ends_the_subscription() {
    for code in [408, 404, 481, 489] {
        let mut b = bridge();
        let t0 = Instant::now();
        b.on_stanza(
            presence("alice@example.test", "bob@lync.test", Some("subscribed")),
            None,
            t0,
        );
        let sub =
            SipMessage::parse(include_bytes!("../../fixtures/ms-subscribe-presence.sip")).unwrap();
        let out = b.on_request(2, "lync.test", sub.clone(), t0);
        let ok = sip(&out)[0].clone();
        let first = sip(&out)[1].clone();
        assert_eq!(first.method(), Some("NOTIFY"));
        // RFC 6665 §4.2.2: Timer F, or one of the listed failures, removes the subscription.
        let out = b.on_response(SipMessage::response_to(&first, code, "X"), t0);
        assert!(sip(&out).is_empty(), "{code}");
        let online = presence("alice@example.test/pc", "bob@lync.test", None);
        assert!(
            sip(&b.on_stanza(online, None, t0)).is_empty(),
            "{code}: no NOTIFY after it"
        );
        let refresh = next_in_dialog(&sub, &to_tag(&ok), 2, "gone");
        let out = b.on_request(2, "lync.test", refresh, t0);
        assert_eq!(sip(&out)[0].code(), Some(481), "{code}");
    }
}

/// A seeded random partner and XMPP side: the fixtures, the bridge's own messages and
/// stanzas, mutated and replayed in random orders at advancing times.
mod chaos {
    use rand::rngs::StdRng;
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::hdr::NameAddr;
    use fedgate_s2s::wire::ErrorType;

    const FIXTURES: [&[u8]; 5] = [
        include_bytes!("../../fixtures/ms-invite-im.sip"),
        include_bytes!("../../fixtures/ms-message-in-dialog.sip"),
        include_bytes!("../../fixtures/ms-bye.sip"),
        include_bytes!("../../fixtures/ms-subscribe-presence.sip"),
        include_bytes!("../../fixtures/ms-notify-pidf.sip"),
    ];
    const LOCALS: [&str; 4] = [
        "alice@example.test/pc",
        "alice@example.test/phone",
        "carol@example.test",
        "carol@example.test/x",
    ];
    const REMOTES: [&str; 4] = [
        "bob@lync.test",
        "dave@lync.test",
        "bob@lync.test/7f3a92b01c",
        "eve@other.test",
    ];
    const PIDF: &str = "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:bob@lync.test'>\
        <tuple id='t'><status><basic>open</basic></status></tuple></presence>";
    const GARBAGE: [&str; 10] = [
        "",
        "0",
        "4294967296",
        "-1",
        "<sip:>",
        ";;;",
        "<sips:bob@lync.test>;tag=x",
        "active;expires=abc",
        "terminated;reason=rejected",
        "\u{e9}\u{1F600}",
    ];

    struct World {
        b: Bridge,
        rng: StdRng,
        now: Instant,
        /// Fixtures and messages the bridge sent: material for mutations.
        pool: Vec<SipMessage>,
        /// Requests the bridge sent, not yet answered here.
        ours: Vec<SipMessage>,
        /// Stanzas the bridge routed (their errors can come back).
        routed: Vec<Element>,
        inbound_2xx_checked: usize,
    }

    impl World {
        fn new(seed: u64) -> Self {
            let pool = FIXTURES
                .iter()
                .map(|f| SipMessage::parse(f).expect("fixture parses"))
                .collect();
            Self {
                b: bridge(),
                rng: StdRng::seed_from_u64(seed),
                now: Instant::now(),
                pool,
                ours: Vec::new(),
                routed: Vec::new(),
                inbound_2xx_checked: 0,
            }
        }

        /// Records what the bridge did, and checks what every response must carry.
        fn take(&mut self, out: Vec<Out>, answered: Option<&SipMessage>) {
            for o in out {
                match o {
                    Out::Sip { msg, .. } if msg.is_request() => {
                        if msg.method() != Some("ACK") && self.ours.len() < 500 {
                            self.ours.push(msg.clone());
                        }
                        if self.pool.len() < 200 {
                            self.pool.push(msg);
                        }
                    }
                    Out::Sip { msg, .. } => {
                        if let Some(req) = answered {
                            check_response(req, &msg);
                            self.inbound_2xx_checked += 1;
                        }
                    }
                    Out::Xmpp { el, .. } => {
                        if self.routed.len() < 500 {
                            self.routed.push(el);
                        }
                    }
                }
            }
        }

        fn mutate(&mut self, mut m: SipMessage) -> Option<SipMessage> {
            for _ in 0..self.rng.random_range(0..4) {
                let n = m.headers.len();
                match self.rng.random_range(0..9) {
                    0 if n > 0 => {
                        m.headers.remove(self.rng.random_range(0..n));
                    }
                    1 if n > 0 => {
                        let h = m.headers[self.rng.random_range(0..n)].clone();
                        m.headers.insert(self.rng.random_range(0..n), h);
                    }
                    2 if n > 0 => {
                        let i = self.rng.random_range(0..n);
                        m.headers[i].value = (*GARBAGE.choose(&mut self.rng)?).to_owned();
                    }
                    3 => {
                        let c = self.rng.random_range(0..6);
                        m.set_header("Call-ID", format!("call-{c}"));
                    }
                    4 => {
                        let method = m.cseq().map(|(_, x)| x.to_owned()).unwrap_or_default();
                        let n: u32 = self.rng.random_range(0..6);
                        m.set_header("CSeq", format!("{n} {method}"));
                    }
                    5 => {
                        let e = ["0", "1", "600", "99999999999", "x"].choose(&mut self.rng)?;
                        m.set_header("Expires", *e);
                    }
                    6 => {
                        let s = [
                            "active;expires=10",
                            "pending",
                            "terminated;reason=timeout",
                            "terminated;reason=noresource",
                            "terminated",
                            "active",
                        ]
                        .choose(&mut self.rng)?;
                        m.set_header("Subscription-State", *s);
                    }
                    7 => {
                        m.body = match self.rng.random_range(0..3) {
                            0 => Vec::new(),
                            1 => PIDF.as_bytes().to_vec(),
                            _ => (0..self.rng.random_range(0..40))
                                .map(|_| self.rng.random())
                                .collect(),
                        };
                    }
                    _ => {
                        // Bytes: flip a few and parse again.
                        let mut bytes = m.to_bytes();
                        for _ in 0..self.rng.random_range(1..4) {
                            let i = self.rng.random_range(0..bytes.len());
                            bytes[i] = self.rng.random();
                        }
                        m = SipMessage::parse(&bytes).ok()?;
                    }
                }
            }
            Some(m)
        }

        /// A request from the partner in the dialog of a request the bridge sent.
        fn reverse(&mut self, ours: &SipMessage) -> SipMessage {
            let methods = [
                "NOTIFY",
                "NOTIFY",
                "MESSAGE",
                "BYE",
                "SUBSCRIBE",
                "INVITE",
                "INFO",
                "ACK",
                "CANCEL",
                "PRACK",
            ];
            let method = *methods.choose(&mut self.rng).unwrap_or(&"NOTIFY");
            let mut r = SipMessage::request(method, "sip:alice@gw.example.test");
            let b = self.rng.random_range(0..1_000_000);
            r.push_header(
                "Via",
                format!("SIP/2.0/TLS edge.lync.test;branch=z9hG4bKr{b}"),
            );
            r.push_header("Max-Forwards", "70");
            let to = ours.header("To").unwrap_or("<sip:bob@lync.test>");
            let from = match NameAddr::parse(to) {
                Ok(na) if na.tag().is_some() => to.to_owned(),
                _ => format!("{to};tag=remote"),
            };
            r.push_header("From", from);
            r.push_header("To", ours.header("From").unwrap_or(""));
            r.push_header("Call-ID", ours.call_id().unwrap_or(""));
            let seq = self.rng.random_range(1..8);
            r.push_header("CSeq", format!("{seq} {method}"));
            r.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
            r.push_header("Event", "presence");
            let state = [
                "active;expires=600",
                "pending;expires=600",
                "terminated;reason=rejected",
                "terminated;reason=timeout",
                "terminated;reason=deactivated",
                "active",
            ];
            r.push_header("Subscription-State", *state.choose(&mut self.rng).unwrap());
            if method == "NOTIFY" && self.rng.random_bool(0.5) {
                r.push_header("Content-Type", "application/pidf+xml");
                r.body = PIDF.as_bytes().to_vec();
            } else if method == "MESSAGE" {
                r.push_header("Content-Type", "text/plain");
                r.body = b"hi".to_vec();
            }
            r
        }

        fn answer(&mut self, req: &SipMessage) -> SipMessage {
            let codes = [
                100, 180, 200, 200, 200, 202, 403, 404, 408, 415, 481, 486, 488, 489, 500, 503, 603,
            ];
            let code = *codes.choose(&mut self.rng).unwrap_or(&200);
            let mut r = SipMessage::response_to(req, code, "X");
            if self.rng.random_bool(0.9) {
                let _ = r.set_to_tag("remote");
            }
            if self.rng.random_bool(0.9) {
                r.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
            }
            if self.rng.random_bool(0.5) {
                let e = ["0", "5", "600", "3600", "bad"]
                    .choose(&mut self.rng)
                    .unwrap();
                r.push_header("Expires", *e);
            }
            r
        }

        fn stanza(&mut self) -> Element {
            let from = *LOCALS.choose(&mut self.rng).unwrap();
            let to = *REMOTES.choose(&mut self.rng).unwrap();
            let id = format!("x{}", self.rng.random_range(0..1000));
            if self.rng.random_bool(0.4) {
                let mut m = Element::new("message", NS_CONTENT)
                    .with_attr("from", from)
                    .with_attr("to", to)
                    .with_attr("id", &id);
                if self.rng.random_bool(0.9) {
                    let len = if self.rng.random_bool(0.05) { 2000 } else { 5 };
                    m = m.with_child(Element::new("body", NS_CONTENT).with_text(&"h".repeat(len)));
                }
                return m;
            }
            let types = [
                None,
                None,
                Some("unavailable"),
                Some("subscribe"),
                Some("subscribed"),
                Some("unsubscribe"),
                Some("unsubscribed"),
                Some("probe"),
                Some("error"),
            ];
            let mut p = presence(from, to, *types.choose(&mut self.rng).unwrap());
            p.set_attr("id", &id);
            if self.rng.random_bool(0.3) {
                let show = ["away", "chat", "dnd", "xa", "bogus"];
                p = p.with_child(
                    Element::new("show", NS_CONTENT).with_text(show.choose(&mut self.rng).unwrap()),
                );
            }
            p
        }

        /// The router's error for a stanza the bridge routed.
        fn error_for_routed(&mut self) -> Option<Element> {
            let el = self.routed.choose(&mut self.rng)?.clone();
            let cond = [
                "service-unavailable",
                "item-not-found",
                "recipient-unavailable",
                "remote-server-timeout",
                "gone",
                "bogus",
            ];
            let cond = *cond.choose(&mut self.rng)?;
            Some(fedgate_s2s::wire::bounce(
                &el,
                ErrorType::Cancel,
                cond,
                "",
                Some("example.test"),
            ))
        }

        fn step(&mut self) {
            let conn = self.rng.random_range(1..5);
            let partner = if self.rng.random_bool(0.9) {
                "lync.test"
            } else {
                "other.test"
            };
            match self.rng.random_range(0..100) {
                0..20 => {
                    let m = self.pool.choose(&mut self.rng).cloned();
                    if let Some(m) = m.and_then(|m| self.mutate(m))
                        && m.is_request()
                    {
                        let out = self.b.on_request(conn, partner, m.clone(), self.now);
                        self.take(out, Some(&m));
                    }
                }
                20..40 if !self.ours.is_empty() => {
                    let i = self.rng.random_range(0..self.ours.len());
                    let req = if self.rng.random_bool(0.8) {
                        self.ours.swap_remove(i)
                    } else {
                        self.ours[i].clone()
                    };
                    let resp = self.answer(&req);
                    let resp = if self.rng.random_bool(0.1) {
                        self.mutate(resp)
                    } else {
                        Some(resp)
                    };
                    if let Some(resp) = resp {
                        let out = self.b.on_response(resp, self.now);
                        self.take(out, None);
                    }
                }
                40..55 if !self.ours.is_empty() => {
                    let ours = self.ours.choose(&mut self.rng).cloned().unwrap();
                    let r = self.reverse(&ours);
                    let out = self.b.on_request(conn, partner, r.clone(), self.now);
                    self.take(out, Some(&r));
                }
                55..80 => {
                    let st = self.stanza();
                    let out = self.b.on_stanza(st, None, self.now);
                    self.take(out, None);
                }
                80..85 => {
                    if let Some(err) = self.error_for_routed() {
                        let out = self.b.on_stanza(err, None, self.now);
                        self.take(out, None);
                    }
                }
                85..88 => {
                    // Our own request coming back (a loop), or a send failure.
                    if let Some(m) = self.ours.choose(&mut self.rng).cloned() {
                        let out = if self.rng.random_bool(0.5) {
                            self.b.on_request(conn, partner, m, self.now)
                        } else {
                            self.b.on_send_failed(&m, "connect", "refused")
                        };
                        self.take(out, None);
                    }
                }
                88..94 => {
                    let out = self.b.settle();
                    self.take(out, None);
                }
                _ => {
                    self.now += Duration::from_millis(self.rng.random_range(0..90_000));
                    let out = self.b.poll(self.now);
                    self.take(out, None);
                }
            }
        }
    }

    /// What every response to a partner's request carries (RFC 3261 §8.2.6.2, §12.1.1,
    /// RFC 6665 §4.2.1.1).
    fn check_response(req: &SipMessage, resp: &SipMessage) {
        if resp.cseq() != req.cseq() || resp.call_id() != req.call_id() {
            return; // a response to another request of the same batch
        }
        let code = resp.code().unwrap_or(0);
        let to_tag = resp
            .header("To")
            .and_then(|t| NameAddr::parse(t).ok())
            .is_some_and(|t| t.tag().is_some());
        // (A mutated To with quotes in its parameters is beyond reading a tag back.)
        let readable_to = req
            .header("To")
            .is_some_and(|t| NameAddr::parse(t).is_ok() && !t.contains('"'));
        if code > 100 && readable_to {
            assert!(to_tag, "response without To tag: {resp:?} to {req:?}");
        }
        let method = req.method().unwrap_or("");
        if (200..300).contains(&code) && matches!(method, "INVITE" | "SUBSCRIBE") {
            assert!(
                resp.header("Contact").is_some(),
                "2xx to {method} without Contact: {resp:?}"
            );
            if method == "SUBSCRIBE" {
                assert!(
                    resp.header("Expires").is_some(),
                    "2xx to SUBSCRIBE: {resp:?}"
                );
            }
        }
    }

    #[test]
    fn random_partner_traffic_never_panics_and_all_state_drains() {
        for seed in 0..64 {
            let mut w = World::new(seed);
            for _ in 0..800 {
                w.step();
                for (name, n) in w.b.state_sizes() {
                    assert!(n < 2000, "seed {seed}: {name} has {n} entries");
                }
            }
            // The partner and the XMPP side go silent: every dialog and transaction must end
            // by itself (timeouts, idle BYE, subscription expiry, fetches given up).
            let out = w.b.settle();
            w.take(out, None);
            for _ in 0..2000 {
                w.now += Duration::from_secs(10);
                let out = w.b.poll(w.now);
                w.take(out, None);
            }
            let left: Vec<_> =
                w.b.state_sizes()
                    .into_iter()
                    .filter(|(name, n)| *n > 0 && *name != "local presences")
                    .collect();
            assert!(left.is_empty(), "seed {seed}: left after silence: {left:?}");
        }
    }
}

/// A request from bob@lync.test outside any dialog (`method`, branch `n`), plus `extra`.
fn out_of_dialog(method: &str, n: u32, extra: &[(&str, &str)]) -> SipMessage {
    let mut r = SipMessage::request(method, "sip:alice@example.test");
    r.push_header(
        "Via",
        format!("SIP/2.0/TLS edge.lync.test;branch=z9hG4bKod{n}"),
    );
    r.push_header("Max-Forwards", "70");
    r.push_header("From", "<sip:bob@lync.test>;tag=od");
    r.push_header("To", "<sip:alice@example.test>");
    r.push_header("Call-ID", format!("od-{n}"));
    r.push_header("CSeq", format!("1 {method}"));
    r.push_header("Contact", "<sip:bob@edge.lync.test;transport=tls>");
    for (k, v) in extra {
        r.push_header(*k, *v);
    }
    r
}

#[test]
fn answers_that_name_what_is_supported_carry_the_right_headers() {
    let mut b = bridge();
    let t0 = Instant::now();
    let answer = |b: &mut Bridge, req: SipMessage| {
        let out = b.on_request(4, "lync.test", req, t0);
        let msgs = sip(&out);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        let r = msgs[0].clone();
        assert!(r.header("To").is_some_and(|t| t.contains("tag=")), "{r:?}");
        r
    };
    let r = answer(&mut b, out_of_dialog("OPTIONS", 1, &[]));
    assert_eq!(r.code(), Some(200));
    assert!(
        r.header("Allow").is_some_and(|a| a.contains("SUBSCRIBE")),
        "{r:?}"
    );
    assert!(
        r.header("Accept")
            .is_some_and(|a| a.contains("application/pidf+xml")),
        "{r:?}"
    );
    assert!(r.header("Supported").is_some(), "{r:?}");
    let r = answer(&mut b, out_of_dialog("PUBLISH", 2, &[]));
    assert_eq!(r.code(), Some(405));
    assert!(
        r.header("Allow").is_some_and(|a| a.contains("MESSAGE")),
        "{r:?}"
    );
    let r = answer(
        &mut b,
        out_of_dialog("SUBSCRIBE", 3, &[("Event", "dialog")]),
    );
    assert_eq!(r.code(), Some(489));
    assert_eq!(r.header("Allow-Events"), Some("presence"));
    let r = answer(
        &mut b,
        out_of_dialog(
            "SUBSCRIBE",
            4,
            &[
                ("Event", "presence"),
                ("Accept", "application/cpim-pidf+xml"),
            ],
        ),
    );
    assert_eq!(r.code(), Some(406));
    assert_eq!(r.header("Accept"), Some("application/pidf+xml"));
    let r = answer(
        &mut b,
        out_of_dialog(
            "MESSAGE",
            5,
            &[("Content-Type", "application/octet-stream")],
        ),
    );
    assert_eq!(r.code(), Some(415));
    assert!(
        r.header("Accept")
            .is_some_and(|a| a.starts_with("text/plain")),
        "{r:?}"
    );
}

/// A message is acknowledged to its sender (its receipt fires) only once its SIP request has a
/// final response: page mode on `200`, session mode when the INVITE that carries it (or the
/// in-dialog MESSAGE) is answered, and a message bounced on an error answer after the bounce.
#[test]
fn a_message_is_acknowledged_upstream_only_after_the_partners_final_answer() {
    use fedgate_s2s::driver::receipt::Receipts;
    let t0 = Instant::now();
    // Page mode (a standards partner).
    let mut b = bridge();
    let r = Receipts::new();
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@sip.test", "p1", "one"),
        Some(r.issue()),
        t0,
    );
    let page = sip(&out)[0].clone();
    assert_eq!(page.method(), Some("MESSAGE"));
    assert_eq!(r.counts(), (0, 1), "sent, not yet answered");
    let out = b.on_response(SipMessage::response_to(&page, 100, "Trying"), t0);
    assert!(out.is_empty());
    assert_eq!(r.counts(), (0, 1), "a provisional answer takes nothing");
    b.on_response(ok(&page), t0);
    assert_eq!(r.counts(), (1, 1));
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@sip.test", "p2", "two"),
        Some(r.issue()),
        t0,
    );
    let page = sip(&out)[0].clone();
    let out = b.on_response(SipMessage::response_to(&page, 480, "Unavailable"), t0);
    assert_eq!(xmpp(&out)[0].attr("id"), Some("p2"), "bounced");
    assert_eq!(r.counts(), (2, 2), "answered with an error: taken care of");

    // Session mode (Microsoft): the first message rides in the INVITE, the second waits.
    let mut b = bridge();
    b.cfg.flavors.insert("lync.test".into(), Flavor::Microsoft);
    let r = Receipts::new();
    let out = b.on_stanza(
        chat("alice@example.test/pc", "bob@lync.test", "m1", "one"),
        Some(r.issue()),
        t0,
    );
    let invite = sip(&out)[0].clone();
    assert!(
        b.on_stanza(
            chat("alice@example.test/pc", "bob@lync.test", "m2", "two"),
            Some(r.issue()),
            t0,
        )
        .is_empty()
    );
    assert_eq!(r.counts(), (0, 2));
    let out = b.on_response(
        ok_with_tag(&invite, &[("Contact", "<sip:bob@10.0.0.9;transport=tls>")]),
        t0,
    );
    assert_eq!(
        r.counts(),
        (1, 2),
        "the INVITE's message is taken, the queued one is sent"
    );
    let message = sip(&out)
        .into_iter()
        .find(|m| m.method() == Some("MESSAGE"))
        .expect("the queued message goes in the dialog")
        .clone();
    b.on_response(ok(&message), t0);
    assert_eq!(r.counts(), (2, 2));
}
