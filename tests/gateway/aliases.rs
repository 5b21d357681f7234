//! `[[domains]] aliases`: further names a hosted domain's service answers to (a MUC service at
//! `conference.a.test`, say). The component of a.test sends from them and receives for them;
//! remote servers reach them like any hosted domain, with a.test's certificate.

use fedgate::component_client::{body, message};
use fedgate_certs::dev::LeafSpec;

use super::support::*;

#[tokio::test]
async fn a_component_sends_and_receives_for_its_aliases_and_hears_about_other_subdomains() {
    let pki = Pki::new();
    let (mut a, b, _dns) = srv_pair_with(&pki, &["conference.a.test"]).await;
    a.cert = pki.leaf(
        "a-with-alias",
        &LeafSpec::dns(&["a.test", "conference.a.test"]),
    );
    a.domain_extra = "aliases = [\"Conference.A.test\"]\n".into();
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;

    // From the alias, out to b.test.
    ca.send(&message(
        "room@conference.a.test/alice",
        "bob@b.test",
        "m1",
        "from the room",
    ))
    .await
    .unwrap();
    let m = cb.recv_matching(T, |e| e.name == "message").await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("from the room"));
    assert_eq!(m.attr("from"), Some("room@conference.a.test/alice"));
    // And back: b.test reaches the alias, and a.test's component gets it.
    cb.send(&message(
        "bob@b.test",
        "room@conference.a.test",
        "m2",
        "to the room",
    ))
    .await
    .unwrap();
    let m = ca.recv_matching(T, |e| e.name == "message").await.unwrap();
    assert_eq!(body(&m).as_deref(), Some("to the room"));
    assert_eq!(m.attr("to"), Some("room@conference.a.test"));

    // A subdomain that is not an alias: the component hears why, instead of a silent drop.
    ca.send(&message("x@chat.a.test", "bob@b.test", "m3", "lost?"))
        .await
        .unwrap();
    let e = ca
        .recv_matching(T, |e| e.attr("id") == Some("m3"))
        .await
        .unwrap();
    assert_eq!(e.attr("type"), Some("error"));
    let (cond, text) = fedgate_s2s::wire::stanza_error(&e).unwrap();
    assert_eq!(cond, "not-allowed", "{text}");
    assert!(
        text.contains("chat.a.test") && text.contains("aliases"),
        "{text}"
    );
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(&m, "fedgate_stanzas_bounced_total{reason=\"not-hosted\"}"),
        1,
        "{m}"
    );
    ga.shutdown().await;
    gb.shutdown().await;
}

#[test]
fn an_alias_is_served_by_one_domain_only() {
    let text = "[[domains]]\nname = \"a.test\"\nself_signed = true\naliases = [\"x.test\"]\n\
                [[domains]]\nname = \"b.test\"\nself_signed = true\naliases = [\"X.test.\"]\n";
    let e = fedgate::config::Config::from_toml(
        text,
        "t.toml",
        std::path::Path::new("."),
        &fedgate::config::Env::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("domains[1].aliases[0]") && e.contains("another domain's alias"),
        "{e}"
    );
}
