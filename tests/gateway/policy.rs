//! Policy enforcement on whole gateways: before DNS, at stream open and pair authentication,
//! per stanza both ways, rate limits, hot reload.

use std::time::Duration;

use fedgate::component_client::{body, message, presence};

use fedgate_certs::dev::LeafSpec;
use fedgate_s2s::element::{Element, NS_CONTENT};

use super::error_condition;
use super::support::*;

/// Writes `text` as policy.toml in a fresh directory and returns the [policy] TOML for it.
fn policy_file(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, text).unwrap();
    format!("\n[policy]\nfile = {:?}\n", p.display().to_string())
}

async fn pair(
    pki: &Pki,
    a_policy: &str,
    dir: &tempfile::TempDir,
) -> (GwSpec, GwSpec, fedgate::testdns::TestDns) {
    let (mut a, b, dns) = srv_pair(pki).await;
    a.extra = policy_file(dir, a_policy);
    (a, b, dns)
}

#[tokio::test]
async fn denied_outbound_domain_is_never_looked_up() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, _b, dns) = pair(
        &pki,
        "default = \"allow\"\n\n[[rule]]\nid = \"no-evil\"\ndomains = [\"*.evil.test\"]\naction = \"deny\"\n",
        &dir,
    )
    .await;
    let ga = a.start().await;
    let mut ca = a.component(&ga).await;
    ca.send(&message("alice@a.test", "x@www.evil.test", "e1", "hi"))
        .await
        .unwrap();
    let e = ca.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "policy-violation");
    assert!(
        text.contains("no-evil") && text.contains("line 3"),
        "{text}"
    );
    assert!(
        !dns.queried_names().iter().any(|n| n.contains("evil")),
        "{:?}",
        dns.queried_names()
    );
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_policy_denials_total{direction=\"outbound\",kind=\"stream\",rule=\"no-evil\"}"
        ),
        1,
        "{m}"
    );
    ga.shutdown().await;
}

#[tokio::test]
async fn denied_inbound_stream_is_refused_with_the_rule() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _dns) = pair(
        &pki,
        "default = \"allow\"\n\n[[rule]]\nid = \"block-b\"\ndomains = [\"b.test\"]\naction = \"deny\"\ndirection = \"inbound\"\n",
        &dir,
    )
    .await;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    cb.send(&message("bob@b.test", "alice@a.test", "s1", "let me in"))
        .await
        .unwrap();
    let e = cb.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "policy-violation", "{text}");
    assert!(text.contains("block-b"), "{text}");
    // Outbound from a.test to b.test is still allowed (the rule is inbound only).
    assert_delivered(
        &mut ca,
        &mut cb,
        "alice@a.test",
        "bob@b.test",
        "I may write",
    )
    .await;
    ga.shutdown().await;
    gb.shutdown().await;
}

#[tokio::test]
async fn denied_stanzas_bounce_with_the_documented_errors() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _dns) = pair(
        &pki,
        "default = \"deny\"\n\n\
         [[rule]]\nid = \"b-chat\"\ndomains = [\"b.test\"]\naction = \"allow\"\nkinds = [\"message\", \"presence\"]\n\
         deny_users = [\"mallory@b.test\"]\n",
        &dir,
    )
    .await;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    // Allowed kind crosses.
    assert_delivered(
        &mut cb,
        &mut ca,
        "bob@b.test",
        "alice@a.test",
        "chat is fine",
    )
    .await;
    // Inbound subscription (not in kinds): service-unavailable, nothing about the policy.
    cb.send(&presence("bob@b.test", "alice@a.test", "subscribe"))
        .await
        .unwrap();
    let e = cb.recv(T).await.unwrap();
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(
        error_condition(&e).unwrap(),
        ("service-unavailable".into(), String::new())
    );
    // A denied user within an allowed domain.
    cb.send(&message("mallory@b.test", "alice@a.test", "k2", "hi"))
        .await
        .unwrap();
    let e = cb.recv(T).await.unwrap();
    assert_eq!(error_condition(&e).unwrap().0, "service-unavailable");
    // Outbound iq (not in kinds): policy-violation naming the rule.
    let iq = Element::new("iq", NS_CONTENT)
        .with_attr("from", "alice@a.test/r")
        .with_attr("to", "bob@b.test")
        .with_attr("id", "q1")
        .with_attr("type", "get")
        .with_child(Element::new("ping", "urn:xmpp:ping"));
    ca.send(&iq).await.unwrap();
    let e = ca.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "policy-violation");
    assert!(text.contains("b-chat"), "{text}");
    // Nothing else reached a.test's component.
    assert!(ca.recv(Duration::from_millis(300)).await.is_err());
    ga.shutdown().await;
    gb.shutdown().await;
}

#[tokio::test]
async fn rate_limits_hold_per_domain() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _dns) = pair(
        &pki,
        "default = \"allow\"\n\n[[rule]]\nid = \"b-slow\"\ndomains = [\"b.test\"]\naction = \"allow\"\n\
         rate = { per_second = 1.0, burst = 3 }\n",
        &dir,
    )
    .await;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    for i in 0..10 {
        cb.send(&message(
            "bob@b.test",
            "alice@a.test",
            &format!("r{i}"),
            "burst",
        ))
        .await
        .unwrap();
    }
    let mut delivered = 0;
    while ca.recv(Duration::from_millis(500)).await.is_ok() {
        delivered += 1;
    }
    let mut limited = 0;
    while let Ok(e) = cb.recv(Duration::from_millis(500)).await {
        let (cond, text) = error_condition(&e).unwrap();
        assert_eq!(cond, "resource-constraint");
        assert!(text.contains("b-slow"), "{text}");
        limited += 1;
    }
    assert!((3..=4).contains(&delivered), "{delivered} delivered");
    assert_eq!(delivered + limited, 10);
    ga.shutdown().await;
    gb.shutdown().await;
}

#[tokio::test]
async fn hot_reload_applies_good_files_and_keeps_the_old_on_bad_ones() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _dns) = pair(&pki, "default = \"allow\"\n", &dir).await;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(&mut cb, &mut ca, "bob@b.test", "alice@a.test", "before").await;

    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "default = \"allow\"\n[[rule]]\nid = \"now-deny\"\ndomains = [\"b.test\"]\naction = \"deny\"\nkinds = [\"message\"]\n").unwrap();
    let mut denied = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ga.policy.active().rule_count() == 1 {
            cb.send(&message(
                "bob@b.test",
                "alice@a.test",
                &format!("h2-{i}"),
                "after",
            ))
            .await
            .unwrap();
            let e = cb.recv(T).await.unwrap();
            assert_eq!(error_condition(&e).unwrap().0, "service-unavailable");
            denied = true;
            break;
        }
    }
    assert!(denied, "the watcher picked up the new file");

    // A broken file is refused; the deny stays in force.
    std::fs::write(
        &file,
        "default = \"allow\"\n[[rule]]\nid = \"oops\"\nacton = \"deny\"\n",
    )
    .unwrap();
    let err = ga.policy.reload("test").unwrap_err();
    assert!(err.contains(":4:1:") && err.contains("acton"), "{err}");
    assert_eq!(ga.policy.active().rule_count(), 1);
    cb.send(&message("bob@b.test", "alice@a.test", "h3", "still denied"))
        .await
        .unwrap();
    assert_eq!(
        error_condition(&cb.recv(T).await.unwrap()).unwrap().0,
        "service-unavailable"
    );
    let m = http_get(&ga, "/metrics").await;
    assert!(
        metric(
            &m,
            "fedgate_policy_reloads_total{file=\"active\",result=\"refused\"}"
        ) >= 1,
        "{m}"
    );
    ga.shutdown().await;
    gb.shutdown().await;
}

#[tokio::test]
async fn certificate_floor_refuses_dialback_for_that_domain() {
    let pki = Pki::new();
    let other = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, _dns) = pair(
        &pki,
        "default = \"allow\"\n[[rule]]\nid = \"b-certs\"\ndomains = [\"b.test\"]\naction = \"allow\"\nauth = [\"certificate\"]\n",
        &dir,
    )
    .await;
    b.cert = other.leaf("b.test", &LeafSpec::dns(&["b.test"]));
    let (ga, gb) = (a.start().await, b.start().await);
    let _ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    cb.send(&message(
        "bob@b.test",
        "alice@a.test",
        "c1",
        "dialback please",
    ))
    .await
    .unwrap();
    let e = cb.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "remote-server-not-found", "{text}");
    assert!(text.contains("auth"), "{text}");
    ga.shutdown().await;
    gb.shutdown().await;
}

/// `fedgate policy check|test|explain` on the shipped example and on a broken file.
#[test]
fn policy_cli_check_test_explain() {
    let exe = env!("CARGO_BIN_EXE_fedgate");
    let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let policy = ex.join("policy.toml");
    let tests = ex.join("policy-tests.toml");
    let (code, out) = run(&["policy", "check", policy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": ok ("), "{out}");
    let (code, out) = run(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        tests.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{out}"
    );
    let (code, out) = run(&[
        "policy",
        "explain",
        policy.to_str().unwrap(),
        "--from",
        "bob@partner.test",
        "--to",
        "alice@example.test",
        "--kind",
        "message",
        "--direction",
        "inbound",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ALLOW\nrule: partners (line "), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "default = \"allow\"\n[[rule]]\nid = \"x\"\ndomains = [\"*x.test\"]\nacton = \"deny\"\n",
    )
    .unwrap();
    let (code, out) = run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    let b = bad.display();
    assert!(
        out.contains(&format!(
            "{b}:4:12: error: `*x.test`: a wildcard must be a whole label"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{b}:5:1: error: unknown key `acton` (did you mean `action`?"
        )),
        "{out}"
    );

    // A pattern or user written in a non-canonical form (RFC 7622) is read in canonical form,
    // with a warning at its line and column; the file still checks.
    let idn = dir.path().join("idn.toml");
    std::fs::write(
        &idn,
        "default = \"allow\"\n[[rule]]\nid = \"x\"\ndomains = [\"xn--bcher-kva.example\"]\naction = \"deny\"\ndeny_users = [\"Mallory@partner.test.\"]\n",
    )
    .unwrap();
    let (code, out) = run(&["policy", "check", idn.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let f = idn.display();
    for want in [
        format!(
            "{f}:4:12: warning: `xn--bcher-kva.example` is not written in canonical form; read as `bücher.example`"
        ),
        format!(
            "{f}:6:15: warning: `Mallory@partner.test.` is not written in canonical form; read as `mallory@partner.test`"
        ),
    ] {
        assert!(out.contains(&want), "{want}\nin\n{out}");
    }

    // A failing case fails the command.
    let t = dir.path().join("t.toml");
    std::fs::write(&t, "[[case]]\nfrom = \"bob@partner.test\"\nto = \"alice@example.test\"\nkind = \"message\"\ndirection = \"inbound\"\nexpect = \"deny\"\n").unwrap();
    let (code, out) = run(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        t.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL") && out.contains("0 passed, 1 failed"),
        "{out}"
    );
}

/// A candidate policy in shadow mode decides beside the active one: differences are counted,
/// never enforced.
#[tokio::test]
async fn shadow_policy_counts_differences_without_enforcing() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, _dns) = pair(&pki, "default = \"allow\"\n", &dir).await;
    let cand = dir.path().join("candidate.toml");
    std::fs::write(&cand, "default = \"allow\"\n[[rule]]\nid = \"would-deny\"\ndomains = [\"b.test\"]\naction = \"deny\"\nkinds = [\"message\"]\n").unwrap();
    a.extra
        .push_str(&format!("shadow_file = {:?}\n", cand.display().to_string()));
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(
        &mut cb,
        &mut ca,
        "bob@b.test",
        "alice@a.test",
        "still delivered",
    )
    .await;
    let m = http_get(&ga, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "fedgate_policy_shadow_diff_total{active=\"allow\",shadow=\"deny\"}"
        ),
        1,
        "{m}"
    );
    ga.shutdown().await;
    gb.shutdown().await;
}

/// max_streams caps concurrent inbound streams from one domain: two nodes of b.test connect,
/// the second is refused with a policy-violation stream error.
#[tokio::test]
async fn max_streams_caps_inbound_streams_per_domain() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b1, dns) = pair(
        &pki,
        "default = \"allow\"\n[[rule]]\nid = \"b-one-stream\"\ndomains = [\"b.test\"]\naction = \"allow\"\nmax_streams = 1\n",
        &dir,
    )
    .await;
    let mut b2 = GwSpec::new(&pki, "b.test");
    b2.dns = Some(dns.addr());
    b2.dialback_secret = b1.dialback_secret.clone();
    let (ga, gb1, gb2) = (a.start().await, b1.start().await, b2.start().await);
    let mut ca = a.component(&ga).await;
    let mut c1 = b1.component(&gb1).await;
    let mut c2 = b2.component(&gb2).await;
    assert_delivered(
        &mut c1,
        &mut ca,
        "bob@b.test",
        "alice@a.test",
        "first stream",
    )
    .await;
    c2.send(&message(
        "carl@b.test",
        "alice@a.test",
        "m2",
        "second stream",
    ))
    .await
    .unwrap();
    let e = c2.recv(T).await.unwrap();
    let (cond, text) = error_condition(&e).unwrap();
    assert_eq!(cond, "policy-violation", "{text}");
    assert!(
        text.contains("limit: b.test already has 1 inbound streams"),
        "{text}"
    );
    ga.shutdown().await;
    gb1.shutdown().await;
    gb2.shutdown().await;
}

/// Pinned fingerprints: with the right pin b.test federates; with a wrong one its certificate
/// is refused for SASL EXTERNAL and dialback alike, even though the CA is trusted.
#[tokio::test]
async fn pinned_fingerprints_are_required() {
    let pki = Pki::new();
    for (pin_ok, expect_delivery) in [(true, true), (false, false)] {
        let dir = tempfile::tempdir().unwrap();
        // b.test's certificate from the trusted CA; the pin is its fingerprint or a wrong one.
        let b_cert = pki.leaf("b-pinned", &LeafSpec::dns(&["b.test"]));
        let leaf = fedgate_certs::Identity::load("b.test", &b_cert.0, &b_cert.1).unwrap();
        let pin = if pin_ok {
            fedgate_certs::sha256_fingerprint(leaf.leaf().as_ref())
        } else {
            ["AB"; 32].join(":")
        };
        let (a, mut b, _dns) = pair(
            &pki,
            &format!("default = \"allow\"\n[[rule]]\nid = \"b-pinned\"\ndomains = [\"b.test\"]\naction = \"allow\"\npins = [\"sha256:{pin}\"]\n"),
            &dir,
        )
        .await;
        b.cert = b_cert;
        let (ga, gb) = (a.start().await, b.start().await);
        let mut ca = a.component(&ga).await;
        let mut cb = b.component(&gb).await;
        cb.send(&message("bob@b.test", "alice@a.test", "p1", "pinned"))
            .await
            .unwrap();
        if expect_delivery {
            assert_eq!(body(&ca.recv(T).await.unwrap()).as_deref(), Some("pinned"));
        } else {
            let e = cb.recv(T).await.unwrap();
            let (cond, text) = error_condition(&e).unwrap();
            assert_eq!(cond, "remote-server-not-found", "{text}");
            assert!(text.contains("auth"), "{text}");
            assert!(ca.recv(Duration::from_millis(300)).await.is_err());
        }
        ga.shutdown().await;
        gb.shutdown().await;
    }
}

/// SIGHUP makes a running `fedgate run` reload its policy (file watching off).
#[tokio::test]
async fn sighup_reloads_the_policy_of_a_running_gateway() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut a = GwSpec::new(&pki, "a.test");
    a.extra = policy_file(&dir, "default = \"allow\"\n");
    a.extra.push_str("watch = false\n");
    let cfg = dir.path().join("fedgate.toml");
    std::fs::write(&cfg, a.toml()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics_url = format!("{}:9269", a.ip);
    let get = || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&metrics_url).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(metric(&out, "fedgate_policy_rules"))
    };
    let mut rules = None;
    for _ in 0..100 {
        rules = get().await;
        if rules.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rules, Some(0));
    std::fs::write(
        dir.path().join("policy.toml"),
        "default = \"allow\"\n[[rule]]\nid = \"new\"\ndomains = [\"x.test\"]\naction = \"deny\"\n",
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut reloaded = false;
    for _ in 0..100 {
        if get().await == Some(1) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = child.wait().unwrap();
    assert!(reloaded, "SIGHUP reloaded the policy");
    assert!(status.success(), "clean shutdown on SIGTERM: {status:?}");
}

/// Per-partner trust: b.test's certificate comes from a CA a.test does not trust globally;
/// the policy names that CA for b.test only, so b.test authenticates with pkix. A rule naming
/// another CA for b.test means its certificate is not trusted (dialback instead), even though
/// the global anchors would have accepted a certificate from the test CA.
#[tokio::test]
async fn per_partner_trust_anchors_replace_the_global_ones() {
    let pki = Pki::new();
    let partner = Pki::new();
    for (b_from_partner_ca, expect) in [
        (true, ("sasl-external", "pkix")),
        (false, ("dialback", "dialback")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(partner.ca_path(), dir.path().join("partner-ca.pem")).unwrap();
        let (a, mut b, _dns) = pair(
            &pki,
            "default = \"allow\"\n[[rule]]\nid = \"b-own-ca\"\ndomains = [\"b.test\"]\naction = \"allow\"\n\
             trust_anchors = [\"partner-ca.pem\"]\n",
            &dir,
        )
        .await;
        if b_from_partner_ca {
            b.cert = partner.leaf("b-partner", &LeafSpec::dns(&["b.test"]));
        }
        let (ga, gb) = (a.start().await, b.start().await);
        let mut ca = a.component(&ga).await;
        let mut cb = b.component(&gb).await;
        assert_delivered(&mut cb, &mut ca, "bob@b.test", "alice@a.test", "trusted?").await;
        let m = http_get(&ga, "/metrics").await;
        let (mechanism, method) = expect;
        assert_eq!(
            metric(
                &m,
                &format!(
                    "fedgate_auth_total{{direction=\"in\",mechanism=\"{mechanism}\",method=\"{method}\",result=\"ok\"}}"
                )
            ),
            1,
            "{m}"
        );
        ga.shutdown().await;
        gb.shutdown().await;
    }
}

/// A pin may name the certificate's SubjectPublicKeyInfo (survives re-issuing with the same key).
#[tokio::test]
async fn spki_pins_are_accepted() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let b_cert = pki.leaf("b-spki", &LeafSpec::dns(&["b.test"]));
    let leaf = fedgate_certs::Identity::load("b.test", &b_cert.0, &b_cert.1).unwrap();
    let spki = fedgate_certs::posh::spki_sha256(leaf.leaf()).unwrap();
    let pin = spki
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let (a, mut b, _dns) = pair(
        &pki,
        &format!("default = \"allow\"\n[[rule]]\nid = \"b-spki\"\ndomains = [\"b.test\"]\naction = \"allow\"\npins = [\"sha256:{pin}\"]\n"),
        &dir,
    )
    .await;
    b.cert = b_cert;
    let (ga, gb) = (a.start().await, b.start().await);
    let mut ca = a.component(&ga).await;
    let mut cb = b.component(&gb).await;
    assert_delivered(&mut cb, &mut ca, "bob@b.test", "alice@a.test", "spki").await;
    ga.shutdown().await;
    gb.shutdown().await;
}
