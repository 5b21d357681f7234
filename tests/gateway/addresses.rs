//! Canonical addresses on whole gateways (issue 13, item 1): whichever form a sender writes an
//! address in, the policy sees the one RFC 7622 form, so a rule cannot be sidestepped by writing
//! the address another way; an address that has no canonical form is answered `jid-malformed`.

use std::time::Duration;

use fedgate::component_client::{ComponentClient, body, message};
use fedgate::gateway::Gateway;

use super::error_condition;
use super::support::*;

/// Gateway a's policy: an IDN domain denied by its A-label, one user of b.test denied.
const POLICY: &str = "default = \"allow\"

[[rule]]
id = \"idn\"
domains = [\"xn--bcher-kva.example\"]
action = \"deny\"

[[rule]]
id = \"b-users\"
domains = [\"b.test\"]
action = \"allow\"
deny_users = [\"mallory@b.test\"]
";

/// Gateways a.test (with [`POLICY`]) and b.test, each with its component.
async fn gateways() -> (
    Gateway,
    Gateway,
    ComponentClient,
    ComponentClient,
    fedgate::testdns::TestDns,
    tempfile::TempDir,
) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, POLICY).unwrap();
    let (mut a, b, dns) = srv_pair(&pki).await;
    a.extra = format!("\n[policy]\nfile = {:?}\n", p.display().to_string());
    let (ga, gb) = (a.start().await, b.start().await);
    let ca = a.component(&ga).await;
    let cb = b.component(&gb).await;
    (ga, gb, ca, cb, dns, dir)
}

#[tokio::test]
async fn a_domain_rule_holds_for_both_idna_forms() {
    let (ga, gb, mut ca, _cb, dns, _dir) = gateways().await;
    // A domain rule written as an A-label holds for the U-label form (and other spellings of
    // the A-label): refused before DNS, naming the rule.
    for (i, to) in [
        "x@bücher.example",
        "x@BÜCHER.example",
        "x@XN--BCHER-KVA.example.",
    ]
    .into_iter()
    .enumerate()
    {
        ca.send(&message("alice@a.test", to, &format!("idn{i}"), "hi"))
            .await
            .unwrap();
        let e = ca.recv(T).await.unwrap();
        let (cond, text) = error_condition(&e).unwrap_or_default();
        assert_eq!(cond, "policy-violation", "{to}: {e:?}");
        assert!(text.contains("idn"), "{to}: {text}");
    }
    assert!(
        !dns.queried_names()
            .iter()
            .any(|n| n.contains("bcher") || n.contains("bücher")),
        "{:?}",
        dns.queried_names()
    );
    ga.shutdown().await;
    gb.shutdown().await;
}

#[tokio::test]
async fn deny_users_hold_for_equivalent_addresses() {
    let (ga, gb, mut ca, mut cb, _dns, _dir) = gateways().await;
    // deny_users holds for other case, fullwidth forms and a trailing dot; the policy on
    // a sees b's stanzas after both gateways' edges.
    for (i, from) in [
        "MALLORY@b.test",
        "ｍａｌｌｏｒｙ@b.test/desk",
        "Ｍallory@B.TEST.",
        "mallory@b.test./phone",
    ]
    .into_iter()
    .enumerate()
    {
        cb.send(&message(
            from,
            "alice@a.test",
            &format!("m{i}"),
            "let me in",
        ))
        .await
        .unwrap();
        let e = cb.recv(T).await.unwrap();
        assert_eq!(
            error_condition(&e).map(|(c, _)| c).as_deref(),
            Some("service-unavailable"),
            "{from}: {e:?}"
        );
    }
    // Others pass, and the receiving side sees canonical addresses.
    cb.send(&message("Bob@B.test./Desk", "ALICE@a.test.", "ok", "hello"))
        .await
        .unwrap();
    let m = ca.recv(T).await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("hello"), "{m:?}");
    assert_eq!(m.attr("from"), Some("bob@b.test/Desk"));
    assert_eq!(m.attr("to"), Some("alice@a.test"));
    // Nothing of mallory's reached a.test's component.
    assert!(ca.recv(Duration::from_millis(300)).await.is_err());
    ga.shutdown().await;
    gb.shutdown().await;
}

#[tokio::test]
async fn malformed_addresses_are_answered_jid_malformed() {
    let (ga, gb, mut ca, mut cb, _dns, _dir) = gateways().await;
    // Addresses without a canonical form are answered with jid-malformed, to the sender.
    let long = "l".repeat(1024);
    for (from, to) in [
        ("alice@a.test", "a b@b.test".to_owned()),
        ("alice@a.test", "☃@b.test".to_owned()),
        ("alice@a.test", "bob@b..test".to_owned()),
        ("alice@a.test", format!("{long}@b.test")),
        ("alice@a.test", "bob@b.test/".to_owned()),
        ("x:y@a.test", "bob@b.test".to_owned()),
    ] {
        ca.send(&message(from, &to, "bad", "hi")).await.unwrap();
        let e = ca.recv(T).await.unwrap();
        assert_eq!(e.attr("type"), Some("error"), "{to}: {e:?}");
        assert_eq!(e.attr("to"), Some(from), "{to}");
        let (cond, text) = error_condition(&e).unwrap_or_default();
        assert_eq!(cond, "jid-malformed", "{from} -> {to}: {e:?}");
        assert!(text.contains("malformed"), "{text}");
    }
    // None of them went anywhere.
    assert!(cb.recv(Duration::from_millis(300)).await.is_err());

    ga.shutdown().await;
    gb.shutdown().await;
}
