use super::*;

fn pol(text: &str) -> Policy {
    match Policy::parse(text, "p.toml") {
        Ok((p, _)) => p,
        Err(d) => panic!("policy refused: {d:#?}"),
    }
}

/// All diagnostics as "line:col: severity: message" (parse errors and warnings alike).
fn diags(text: &str) -> Vec<String> {
    let d = match Policy::parse(text, "p.toml") {
        Ok((_, w)) => w,
        Err(e) => e,
    };
    d.iter()
        .map(|d| {
            let s = d.to_string();
            s.strip_prefix("p.toml:").unwrap().to_string()
        })
        .collect()
}

fn has(diags: &[String], prefix: &str, needle: &str) -> bool {
    diags
        .iter()
        .any(|d| d.starts_with(prefix) && d.contains(needle))
}

#[track_caller]
fn assert_diag(text: &str, prefix: &str, needle: &str) {
    let d = diags(text);
    assert!(
        has(&d, prefix, needle),
        "expected `{prefix}` … `{needle}` in {d:#?}"
    );
}

fn req(remote: &str, kind: Kind, direction: Direction) -> Request<'_> {
    Request {
        remote,
        local: "alice@example.test",
        kind,
        direction,
    }
}

fn rule_of(p: &Policy, remote: &str, kind: Kind, dir: Direction) -> (bool, String) {
    let d = p.decide(&req(remote, kind, dir));
    let fast = p.decide_fast(&req(remote, kind, dir));
    assert_eq!(fast.allow, d.allow, "fast and explained decisions agree");
    assert_eq!(
        fast.rule.map(|i| p.rule(i).clone()),
        d.rule,
        "fast and explained rules agree"
    );
    (
        d.allow,
        d.rule.map(|r| r.id).unwrap_or_else(|| "default".into()),
    )
}

use Direction::{Inbound, Outbound};

// ---------------------------------------------------------------- parser: positions

#[test]
fn syntax_error_has_position() {
    let d = diags(
        "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"\naction = \"allow\"\n",
    );
    assert!(!d.is_empty());
    assert!(d[0].starts_with("5:"), "{d:?}");
    assert!(d[0].contains("error"), "{d:?}");
}

#[test]
fn unknown_key_is_an_error_with_suggestion() {
    let text = "default = \"deny\"\n\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\n  acton = \"deny\"\naction = \"allow\"\n";
    let err = Policy::parse(text, "policy.toml").unwrap_err();
    assert_eq!(err.len(), 1, "{err:#?}");
    let s = err[0].to_string();
    assert!(
        s.starts_with("policy.toml:6:3: error: unknown key `acton` (did you mean `action`? expected one of: id, domains, action,"),
        "{s}"
    );
}

#[test]
fn unknown_top_level_key_and_table() {
    let d = diags("default = \"deny\"\ndefualt = 1\n[rules]\nx = 1\n");
    assert!(has(
        &d,
        "2:1: error",
        "unknown key `defualt` (did you mean `default`?"
    ));
    assert!(has(
        &d,
        "3:2: error",
        "unknown key `rules` (did you mean `rule`?"
    ));
}

#[test]
fn missing_default_and_missing_rule_keys() {
    let d = diags("\n[[rule]]\nid = \"a\"\n");
    assert!(has(&d, "1:1: error", "missing required key `default`"));
    assert!(has(
        &d,
        "2:1: error",
        "rule is missing required key `domains`"
    ));
    assert!(has(
        &d,
        "2:1: error",
        "rule is missing required key `action`"
    ));
}

#[test]
fn wrong_types_and_bad_enum_values() {
    let text = "default = \"maybe\"\n[[rule]]\nid = \"a\"\ndomains = \"x.test\"\naction = 1\ndirection = \"in\"\ntls = \"always\"\nprotocol = \"smtp\"\nmax_streams = \"4\"\n";
    let d = diags(text);
    assert!(has(
        &d,
        "1:11: error",
        "`default` must be \"allow\" or \"deny\", found \"maybe\""
    ));
    assert!(has(
        &d,
        "4:11: error",
        "`domains` must be an array of strings, found string"
    ));
    assert!(has(
        &d,
        "5:10: error",
        "`action` must be a string, found integer"
    ));
    assert!(has(
        &d,
        "6:13: error",
        "`direction` must be \"inbound\" or \"outbound\" or \"both\""
    ));
    assert!(has(
        &d,
        "7:7: error",
        "`tls` must be \"required\" or \"optional\""
    ));
    assert!(has(
        &d,
        "8:12: error",
        "`protocol` must be \"xmpp\" or \"sip\""
    ));
    assert!(has(
        &d,
        "9:15: error",
        "`max_streams` must be an integer, found string"
    ));
}

#[test]
fn all_errors_are_reported_sorted() {
    let text = "default = \"deny\"\n[[rule]]\nid = \"A\"\ndomains = [\"*\"]\naction = \"allow\"\n[[rule]]\nid = \"b\"\ndomains = []\naction = \"nope\"\n";
    let err = Policy::parse(text, "p.toml").unwrap_err();
    let lines: Vec<usize> = err.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![3, 4, 8, 9], "{err:#?}");
}

#[test]
fn duplicate_rule_ids() {
    let text = "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\n[[rule]]\nid = \"a\"\ndomains = [\"y.test\"]\naction = \"deny\"\n";
    assert_diag(
        text,
        "7:6: error",
        "duplicate rule id `a` (first used at line 2)",
    );
}

#[test]
fn bad_rule_ids() {
    let base = |id: &str| {
        format!(
            "default = \"deny\"\n[[rule]]\nid = \"{id}\"\ndomains = [\"x.test\"]\naction = \"allow\"\n"
        )
    };
    assert_diag(&base("Partners"), "3:6: error", "may only use a-z");
    assert_diag(&base("default"), "3:6: error", "reserved");
    assert!(Policy::parse(&base("p-1.x_y"), "p").is_ok());
}

#[test]
fn empty_domains_is_an_error() {
    assert_diag(
        "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = []\naction = \"allow\"\n",
        "4:11: error",
        "`domains` is empty",
    );
}

fn one_domain(d: &str) -> String {
    format!(
        "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"ok.test\", \"{d}\"]\naction = \"allow\"\n"
    )
}

#[test]
fn wildcard_mistakes_are_errors_at_the_pattern() {
    // The second pattern starts at column 22 of line 4.
    for (pat, needle) in [
        ("*", "`*` alone would match every domain"),
        ("*.", "`*.` has no suffix"),
        ("**.x.test", "`**` is not a wildcard; write `*.x.test`"),
        ("a.*.b", "`*` is only allowed as the first label"),
        (
            "*x.test",
            "a wildcard must be a whole label; write `*.x.test`",
        ),
        ("*.a.*.b", "only one `*`"),
    ] {
        assert_diag(&one_domain(pat), "4:23: error", needle);
    }
}

#[test]
fn invalid_domain_names_are_errors() {
    for (pat, needle) in [
        ("x..test", "empty label"),
        (".x.test", "leading dot"),
        ("-x.test", "may not start or end with `-`"),
        ("x_y.test", "character `_` is not allowed"),
        ("bob@x.test", "looks like a JID"),
        ("x test", "whitespace"),
        ("", "empty domain name"),
    ] {
        assert_diag(&one_domain(pat), "4:23: error", needle);
    }
}

#[test]
fn tld_wildcard_and_uppercase_are_warnings() {
    let (p, w) = Policy::parse(&one_domain("*.test"), "p.toml").unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].severity, Severity::Warning);
    assert_eq!((w[0].line, w[0].column), (4, 23));
    assert!(w[0].message.contains("covers a whole top-level domain"));
    assert!(p.decide(&req("a.b.test", Kind::Message, Inbound)).allow);

    let (p, w) = Policy::parse(&one_domain("Partner.TEST"), "p.toml").unwrap();
    assert!(
        w[0].to_string().starts_with(
            "p.toml:4:23: warning: `Partner.TEST` is not written in canonical form; read as `partner.test`"
        ),
        "{w:?}"
    );
    assert!(
        p.decide(&req("bob@partner.test", Kind::Message, Inbound))
            .allow
    );
    assert!(
        p.decide(&req("bob@PARTNER.test", Kind::Message, Inbound))
            .allow
    );
}

#[test]
fn groups_unknown_unused_nested() {
    let text = "default = \"deny\"\n[groups]\nused = [\"a.test\"]\nspare = [\"b.test\"]\nnested = [\"@used\"]\n[[rule]]\nid = \"r\"\ndomains = [\"@used\", \"@usd\"]\naction = \"allow\"\n";
    let d = diags(text);
    assert!(
        has(
            &d,
            "8:21: error",
            "unknown group `usd` (did you mean `used`?"
        ),
        "{d:#?}"
    );
    assert!(
        has(&d, "4:1: warning", "group `spare` is not used"),
        "{d:#?}"
    );
    assert!(
        has(&d, "5:11: error", "groups cannot contain other groups"),
        "{d:#?}"
    );
}

#[test]
fn unknown_group_without_groups() {
    assert_diag(
        &one_domain("@nope"),
        "4:23: error",
        "unknown group `@nope` (no [groups] are defined)",
    );
}

#[test]
fn shadowed_rules_warn() {
    let text = "default = \"deny\"
[[rule]]
id = \"first\"
domains = [\"x.test\", \"y.test\"]
action = \"allow\"
[[rule]]
id = \"second\"
domains = [\"z.test\", \"y.test\", \"x.test\"]
action = \"allow\"
direction = \"inbound\"
[[rule]]
id = \"out\"
domains = [\"x.test\"]
action = \"allow\"
direction = \"outbound\"
[[rule]]
id = \"blocker\"
domains = [\"*.q.test\"]
action = \"deny\"
[[rule]]
id = \"opener\"
domains = [\"*.q.test\"]
action = \"allow\"
direction = \"inbound\"
";
    let d = diags(text);
    assert!(
        has(
            &d,
            "8:22: warning",
            "`y.test` (and 1 more shared patterns) in rule second is shadowed by rule first at line 2"
        ),
        "{d:#?}"
    );
    assert!(
        has(&d, "13:12: warning", "shadowed by rule first at line 2"),
        "{d:#?}"
    );
    // second (inbound) and out (outbound) do not overlap.
    assert!(
        !d.iter()
            .any(|x| x.contains("rule out is shadowed by rule second")),
        "{d:#?}"
    );
    assert!(
        has(
            &d,
            "22:12: warning",
            "matched by deny rule blocker (line 16) and allow rule opener (line 20) with the same specificity and overlapping direction: the deny wins"
        ),
        "{d:#?}"
    );
}

#[test]
fn empty_kinds_warn() {
    let text = "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\nkinds = []\n";
    assert_diag(text, "6:9: warning", "allows nothing");
    let p = pol(text);
    let d = p.decide(&req("x.test", Kind::Message, Inbound));
    assert!(!d.allow);
    assert_eq!(d.rule.unwrap().id, "a");
}

#[test]
fn kinds_values() {
    let text = "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"deny\"\nkinds = [\"mesage\", \"stream\"]\n";
    let d = diags(text);
    assert!(
        has(
            &d,
            "6:10: error",
            "unknown kind `mesage` (did you mean `message`?"
        ),
        "{d:#?}"
    );
    assert!(
        has(&d, "6:20: error", "`stream` is not a rule kind"),
        "{d:#?}"
    );
}

#[test]
fn pins_are_checked_and_normalized() {
    let good = "ab".repeat(32);
    let colon = vec!["CD"; 32].join(":");
    let text = format!(
        "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\npins = [\"{good}\", \"sha256:{colon}\"]\n"
    );
    let p = pol(&text);
    let s = p.domain_settings("x.test", Inbound);
    assert_eq!(s.pins[0], format!("sha256:{}", vec!["AB"; 32].join(":")));
    assert_eq!(s.pins[1], format!("sha256:{colon}"));

    let bad = "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\npins = [\"sha1:AB:CD\", \"sha256:zz\"]\n";
    let d = diags(bad);
    assert!(
        has(
            &d,
            "6:9: error",
            "pin `sha1:AB:CD` is not a SHA-256 fingerprint"
        ),
        "{d:#?}"
    );
    assert!(has(&d, "6:23: error", "pin `sha256:zz`"), "{d:#?}");
}

#[test]
fn rate_checks() {
    let base = |rate: &str| {
        format!(
            "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\nrate = {rate}\n"
        )
    };
    assert_diag(
        &base("{ per_second = 0, burst = 4 }"),
        "6:23: error",
        "`per_second` must be greater than 0",
    );
    assert_diag(
        &base("{ per_second = -1.5, burst = 4 }"),
        "6:23: error",
        "greater than 0, found -1.5",
    );
    assert_diag(
        &base("{ per_second = 2.0 }"),
        "6:8: error",
        "`rate` is missing `burst`",
    );
    assert_diag(
        &base("{ per_second = 2.0, burst = 0 }"),
        "6:36: error",
        "`burst` must be at least 1",
    );
    assert_diag(
        &base("{ per_second = 2.0, burst = 3, brust = 1 }"),
        "6:39: error",
        "unknown key `brust` (did you mean `burst`?",
    );
    assert_diag(&base("5"), "6:8: error", "`rate` must be a table");
    let p = pol(&base("{ per_second = 2, burst = 3 }"));
    assert_eq!(p.domain_settings("x.test", Outbound).rate, Some((2.0, 3)));
}

#[test]
fn other_limits_and_auth() {
    let base = |extra: &str| {
        format!(
            "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\n{extra}\n"
        )
    };
    assert_diag(&base("max_stanza_bytes = 0"), "6:20: error", "at least 1");
    assert_diag(&base("max_streams = -1"), "6:15: error", "at least 1");
    assert_diag(&base("auth = []"), "6:8: error", "`auth` is empty");
    assert_diag(
        &base("auth = [\"password\"]"),
        "6:9: error",
        "unknown authentication method `password`",
    );
    assert_diag(
        &base("tls = \"optional\"\nauth = [\"certificate\"]"),
        "6:7: warning",
        "certificate authentication needs TLS",
    );
}

#[test]
fn rule_must_be_array_of_tables() {
    assert_diag(
        "default = \"deny\"\n[rule]\nid = \"a\"\n",
        "2:1: error",
        "write [[rule]], not [rule]",
    );
}

#[test]
fn users_checks() {
    let text = "default = \"deny\"
[[rule]]
id = \"a\"
domains = [\"*.x.test\"]
action = \"allow\"
allow_users = [\"bob@y.test\", \"nobody\", \"eve@x.test/phone\", \"Both@x.test\"]
deny_users = [\"both@x.test\"]
";
    let d = diags(text);
    assert!(
        has(
            &d,
            "6:16: warning",
            "`bob@y.test`: its domain is not matched"
        ),
        "{d:#?}"
    );
    assert!(
        has(&d, "6:30: error", "`nobody` is not a bare JID"),
        "{d:#?}"
    );
    assert!(has(&d, "6:40: error", "has a resource"), "{d:#?}");
}

#[test]
fn users_in_both_lists_warn_and_deny_wins() {
    let text = "default = \"allow\"
[[rule]]
id = \"a\"
domains = [\"*.x.test\"]
action = \"allow\"
allow_users = [\"Both@x.test\"]
deny_users = [\"both@x.test\"]
";
    assert_diag(
        text,
        "6:16: warning",
        "in both allow_users and deny_users; deny_users wins",
    );
    let p = pol(text);
    assert_eq!(
        rule_of(&p, "both@x.test/r", Kind::Message, Inbound),
        (false, "a".into())
    );
}

#[test]
fn diagnostic_display_and_read_error() {
    let d = Diagnostic {
        file: "policy.toml".into(),
        line: 12,
        column: 5,
        severity: Severity::Warning,
        message: "m".into(),
    };
    assert_eq!(d.to_string(), "policy.toml:12:5: warning: m");
    let err = Policy::load(std::path::Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert_eq!((err[0].line, err[0].column), (0, 0));
    assert!(
        err[0]
            .to_string()
            .starts_with("/nonexistent/policy.toml:0:0: error: cannot read file")
    );
}

#[test]
fn column_counts_characters() {
    // "é" is two bytes; the column is still in characters.
    let text = "default = \"deny\" # é\n[[rule]]\nid = \"a\"\ndomains = [\"ok.test\"]\naction = \"allow\"\n# é\u{e9}\u{e9}\n\u{e9}x = 1\n";
    let d = diags(text);
    assert!(d.iter().any(|x| x.starts_with("7:1: error")), "{d:#?}");
    let text = "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"é.test\", \"*x\"]\naction = \"allow\"\n";
    assert_diag(text, "4:22: error", "whole label");
}

// ---------------------------------------------------------------- semantics

const SEM: &str = r#"default = "deny"

[groups]
partners = ["partner.test", "*.partners.example"]

[[rule]]
id = "partners"
domains = ["@partners"]
action = "allow"
deny_users = ["spam@partner.test"]
tls = "required"
auth = ["certificate"]
rate = { per_second = 10.0, burst = 20 }

[[rule]]
id = "wide"
domains = ["*.partner.test"]
action = "allow"
kinds = ["message"]
max_stanza_bytes = 1000

[[rule]]
id = "deep"
domains = ["*.eu.partners.example"]
action = "allow"
kinds = ["message", "presence"]
allow_users = ["boss@eu.partners.example", "nobody@x.eu.partners.example"]
max_streams = 2

[[rule]]
id = "no-iq"
domains = ["*.partners.example"]
action = "deny"
kinds = ["iq"]
direction = "inbound"

[[rule]]
id = "inbound-only"
domains = ["in.test"]
action = "allow"
direction = "inbound"

[[rule]]
id = "files-off"
domains = ["*.lab.partners.example"]
action = "deny"
kinds = ["file-transfer"]

[[rule]]
id = "evil"
domains = ["*.evil.test"]
action = "deny"
allow_users = ["friend@evil.test"]
"#;

#[test]
fn example_semantics_policy_parses() {
    let (p, w) = Policy::parse(SEM, "sem.toml").unwrap();
    // partners/no-iq share *.partners.example: the deny+allow warning.
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].message.contains("deny rule no-iq"));
    assert_eq!(p.rule_count(), 7);
    assert_eq!(
        p.rule(0),
        &RuleRef {
            id: "partners".into(),
            line: 6
        }
    );
    assert_eq!(p.rule_by_id("evil").unwrap().1.line, 49);
}

#[test]
fn exact_beats_wildcard() {
    let p = pol(SEM);
    // partner.test: exact (partners) beats *.partner.test (wide, message only).
    assert_eq!(
        rule_of(&p, "bob@partner.test", Kind::Iq, Inbound),
        (true, "partners".into())
    );
    // sub.partner.test: only the wildcard.
    assert_eq!(
        rule_of(&p, "bob@sub.partner.test", Kind::Message, Inbound),
        (true, "wide".into())
    );
    assert_eq!(
        rule_of(&p, "bob@sub.partner.test", Kind::Iq, Inbound),
        (false, "wide".into())
    );
}

#[test]
fn longer_suffix_beats_shorter() {
    let p = pol(SEM);
    assert_eq!(
        rule_of(&p, "x@a.eu.partners.example", Kind::Message, Outbound),
        (true, "deep".into())
    );
    assert_eq!(
        rule_of(&p, "x@eu.partners.example", Kind::FileTransfer, Outbound),
        (false, "deep".into())
    );
    assert_eq!(
        rule_of(&p, "x@us.partners.example", Kind::FileTransfer, Outbound),
        (true, "partners".into())
    );
    // The wildcard covers the suffix domain itself.
    assert_eq!(
        rule_of(&p, "x@partners.example", Kind::Message, Outbound),
        (true, "partners".into())
    );
    // But not a name that merely ends with the same characters.
    assert_eq!(
        rule_of(&p, "x@notpartners.example", Kind::Message, Outbound),
        (false, "default".into())
    );
}

#[test]
fn deny_beats_allow_at_same_specificity_and_falls_through_otherwise() {
    let p = pol(SEM);
    // *.partners.example: deny no-iq (inbound) vs allow partners → deny for iq inbound.
    assert_eq!(
        rule_of(&p, "x@us.partners.example", Kind::Iq, Inbound),
        (false, "no-iq".into())
    );
    assert_eq!(
        rule_of(&p, "x@us.partners.example", Kind::Iq, Outbound),
        (true, "partners".into())
    );
    assert_eq!(
        rule_of(&p, "x@us.partners.example", Kind::Message, Inbound),
        (true, "partners".into())
    );
    // *.lab.partners.example denies files only; messages fall through to partners.
    assert_eq!(
        rule_of(&p, "x@lab.partners.example", Kind::FileTransfer, Outbound),
        (false, "files-off".into())
    );
    assert_eq!(
        rule_of(&p, "x@a.lab.partners.example", Kind::Message, Outbound),
        (true, "partners".into())
    );
    // …and iq inbound falls through to the next level, where no-iq denies it.
    assert_eq!(
        rule_of(&p, "x@lab.partners.example", Kind::Iq, Inbound),
        (false, "no-iq".into())
    );
}

#[test]
fn direction_limits_candidates() {
    let p = pol(SEM);
    assert_eq!(
        rule_of(&p, "x@in.test", Kind::Message, Inbound),
        (true, "inbound-only".into())
    );
    assert_eq!(
        rule_of(&p, "x@in.test", Kind::Message, Outbound),
        (false, "default".into())
    );
    let d = p.explain(&req("x@in.test", Kind::Message, Outbound));
    assert!(
        d.reason
            .contains("rule inbound-only (line 37) matches the domain but only inbound"),
        "{}",
        d.reason
    );
}

#[test]
fn kinds_of_allow_rule() {
    let p = pol(SEM);
    let d = p.explain(&req("bob@sub.partner.test/x", Kind::Presence, Inbound));
    assert!(!d.allow);
    assert_eq!(
        d.reason,
        "rule wide (line 15) denies presence from sub.partner.test: kind not allowed by rule wide (it allows message) (wildcard *.partner.test)"
    );
}

#[test]
fn user_exceptions() {
    let p = pol(SEM);
    // deny_users of the deciding rule.
    assert_eq!(
        rule_of(&p, "spam@partner.test/res", Kind::Message, Inbound),
        (false, "partners".into())
    );
    assert_eq!(
        rule_of(&p, "SPAM@Partner.Test", Kind::Message, Inbound),
        (false, "partners".into())
    );
    // allow_users overrides kinds.
    assert_eq!(
        rule_of(&p, "boss@eu.partners.example", Kind::FileTransfer, Inbound),
        (true, "deep".into())
    );
    assert_eq!(
        rule_of(&p, "other@eu.partners.example", Kind::FileTransfer, Inbound),
        (false, "deep".into())
    );
    // allow_users of a deny rule.
    assert_eq!(
        rule_of(&p, "friend@evil.test", Kind::Message, Inbound),
        (true, "evil".into())
    );
    assert_eq!(
        rule_of(&p, "foe@evil.test", Kind::Message, Inbound),
        (false, "evil".into())
    );
    // Exceptions do not apply to the domain itself or to stream requests.
    assert_eq!(
        rule_of(&p, "evil.test", Kind::Stream, Inbound),
        (false, "evil".into())
    );
    let d = p.explain(&req("spam@partner.test", Kind::Message, Inbound));
    assert_eq!(
        d.reason,
        "rule partners (line 6) denies message from spam@partner.test: listed in its deny_users (exact match via group @partners)"
    );
}

#[test]
fn stream_requests() {
    let p = pol(SEM);
    // A deny covering all kinds refuses the stream.
    assert_eq!(
        rule_of(&p, "www.evil.test", Kind::Stream, Outbound),
        (false, "evil".into())
    );
    // Allow rules allow the stream whatever their kinds.
    assert_eq!(
        rule_of(&p, "sub.partner.test", Kind::Stream, Inbound),
        (true, "wide".into())
    );
    // A partial deny does not decide the stream: falls through.
    assert_eq!(
        rule_of(&p, "lab.partners.example", Kind::Stream, Inbound),
        (true, "partners".into())
    );
    // Nothing matches: the default.
    assert_eq!(
        rule_of(&p, "other.test", Kind::Stream, Inbound),
        (false, "default".into())
    );
    let d = p.explain(&req("www.evil.test", Kind::Stream, Outbound));
    assert_eq!(
        d.reason,
        "rule evil (line 49) denies federation (stream) to www.evil.test: it denies every kind (wildcard *.evil.test)"
    );
}

#[test]
fn default_decisions_and_allow_all() {
    let p = pol(SEM);
    let d = p.explain(&req("x@nowhere.test", Kind::Message, Inbound));
    assert!(!d.allow);
    assert_eq!(d.rule, None);
    assert_eq!(
        d.reason,
        "no rule decides inbound message from nowhere.test; the default is deny (line 1)"
    );

    let p = pol(
        "default = \"allow\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"deny\"\nkinds = [\"iq\"]\n",
    );
    assert_eq!(
        rule_of(&p, "x.test", Kind::Message, Inbound),
        (true, "default".into())
    );
    let d = p.explain(&req("x.test", Kind::Message, Inbound));
    assert!(
        d.reason
            .contains("passed over: deny rule a (line 2) matches inbound but denies only iq"),
        "{}",
        d.reason
    );

    let all = Policy::allow_all();
    assert!(
        all.decide(&req("x@any.test", Kind::FileTransfer, Outbound))
            .allow
    );
    assert_eq!(all.rule_count(), 0);
    assert_eq!(
        all.domain_settings("any.test", Inbound),
        DomainSettings::default()
    );
    assert_eq!(all.revision().len(), 64);
}

#[test]
fn explain_reason_names_rule_and_line() {
    let p = pol(SEM);
    let d = p.explain(&req("bob@partner.test", Kind::Message, Inbound));
    assert_eq!(
        d.rule,
        Some(RuleRef {
            id: "partners".into(),
            line: 6
        })
    );
    assert_eq!(
        d.reason,
        "rule partners (line 6) allows message from partner.test (exact match via group @partners)"
    );
    assert_eq!(
        d,
        p.decide(&req("bob@partner.test", Kind::Message, Inbound))
    );
}

#[test]
fn domain_settings_field_by_field() {
    let p = pol(SEM);
    // a.eu.partners.example: deep (max_streams) then partners (tls, auth, rate).
    let s = p.domain_settings("a.eu.partners.example", Inbound);
    assert_eq!(s.max_streams, Some(2));
    assert_eq!(s.tls, Some(TlsFloor::Required));
    assert_eq!(
        (s.auth_certificate, s.auth_dialback),
        (Some(true), Some(false))
    );
    assert_eq!(s.rate, Some((10.0, 20)));
    assert_eq!(s.max_stanza_bytes, None);
    assert_eq!(s.rule.unwrap().id, "deep");
    // sub.partner.test: only wide.
    let s = p.domain_settings("bob@sub.partner.test", Outbound);
    assert_eq!(s.max_stanza_bytes, Some(1000));
    assert_eq!(s.tls, None);
    // partner.test: exact partners only (wide is less specific but also matches).
    let s = p.domain_settings("partner.test", Outbound);
    assert_eq!(s.tls, Some(TlsFloor::Required));
    assert_eq!(s.max_stanza_bytes, Some(1000));
    // Direction: a rule for the other direction does not contribute.
    let p = pol(
        "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\ndirection = \"outbound\"\ntls = \"optional\"\nprotocol = \"sip\"\n",
    );
    assert_eq!(
        p.domain_settings("x.test", Inbound),
        DomainSettings::default()
    );
    let s = p.domain_settings("X.test.", Outbound);
    assert_eq!(s.tls, Some(TlsFloor::Optional));
    assert_eq!(s.protocol.as_deref(), Some("sip"));
}

#[test]
fn deep_domains_still_find_short_wildcards() {
    let p = pol(SEM);
    let deep = format!("x@{}partner.test", "a.".repeat(60));
    assert_eq!(
        rule_of(&p, &deep, Kind::Message, Inbound),
        (true, "wide".into())
    );
    assert_eq!(
        rule_of(&p, "", Kind::Message, Inbound),
        (false, "default".into())
    );
    assert_eq!(
        rule_of(&p, "@/", Kind::Message, Inbound),
        (false, "default".into())
    );
}

#[test]
fn revision_and_source() {
    let (p, _) = Policy::parse(SEM, "sem.toml").unwrap();
    assert_eq!(p.source(), "sem.toml");
    assert_eq!(p.revision(), text::sha256_hex(SEM.as_bytes()));
    assert_eq!(
        text::sha256_hex(b"test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn kind_and_direction_names_round_trip() {
    for k in [
        Kind::Stream,
        Kind::Message,
        Kind::Presence,
        Kind::Subscription,
        Kind::Iq,
        Kind::FileTransfer,
        Kind::GroupchatInvite,
    ] {
        assert_eq!(Kind::parse(k.as_str()), Some(k));
    }
    for d in [Inbound, Outbound] {
        assert_eq!(Direction::parse(d.as_str()), Some(d));
    }
    assert_eq!(Kind::parse("file_transfer"), None);
}

// ---------------------------------------------------------------- test files

#[test]
fn example_files_check_clean_and_their_tests_pass() {
    let text = include_str!("../../examples/policy.toml");
    let (p, w) = Policy::parse(text, "examples/policy.toml").unwrap();
    assert!(w.is_empty(), "{w:#?}");
    let tests = include_str!("../../examples/policy-tests.toml");
    let results = run_tests(&p, tests, "examples/policy-tests.toml").unwrap();
    assert!(results.len() >= 10);
    for r in &results {
        assert!(r.passed, "{r:#?}");
    }
}

#[test]
fn test_runner_reports_failures_and_names() {
    let p = pol(SEM);
    let tests = "[[case]]\nfrom = \"bob@partner.test\"\nto = \"alice@example.test\"\nkind = \"message\"\ndirection = \"inbound\"\nexpect = \"allow\"\nrule = \"partners\"\n\n[[case]]\nfrom = \"alice@example.test\"\nto = \"x@in.test\"\nkind = \"message\"\ndirection = \"outbound\"\nexpect = \"allow\"\n\n[[case]]\nfrom = \"bob@partner.test\"\nto = \"alice@example.test\"\nkind = \"message\"\ndirection = \"inbound\"\nexpect = \"allow\"\nrule = \"default\"\n";
    let r = run_tests(&p, tests, "t.toml").unwrap();
    assert_eq!(r.len(), 3);
    assert!(r[0].passed);
    assert_eq!(r[0].line, 1);
    assert_eq!(
        r[0].name,
        "bob@partner.test -> alice@example.test message inbound"
    );
    assert_eq!(r[0].expected, "allow by rule partners");
    assert!(!r[1].passed);
    assert_eq!(r[1].line, 9);
    assert_eq!(r[1].got.rule, None);
    assert!(!r[2].passed, "right allow, wrong rule");
    assert_eq!(r[2].expected, "allow by default");
}

#[test]
fn test_file_errors_have_positions() {
    let p = pol(SEM);
    let tests = "[[case]]\nfrom = \"a@b\"\nto = \"c@d\"\nkind = \"mesage\"\ndirection = \"in\"\nexpect = \"yes\"\nrule = \"nope\"\nextra = 1\n[[case]]\nfrom = \"a@b\"\n";
    let e = run_tests(&p, tests, "t.toml").unwrap_err();
    let s: Vec<String> = e.iter().map(|d| d.to_string()).collect();
    let want = [
        "t.toml:4:8: error: unknown kind `mesage` (did you mean `message`?",
        "t.toml:5:13: error: `direction` must be \"inbound\" or \"outbound\"",
        "t.toml:6:10: error: `expect` must be \"allow\" or \"deny\"",
        "t.toml:7:8: error: rule `nope` does not exist in p.toml",
        "t.toml:8:1: error: unknown key `extra`",
        "t.toml:9:1: error: case is missing required key `to`",
    ];
    for w in want {
        assert!(s.iter().any(|x| x.starts_with(w)), "missing {w} in {s:#?}");
    }
    let e = run_tests(&p, "[[case]\n", "t.toml").unwrap_err();
    assert_eq!(e[0].line, 1);
}

// ---------------------------------------------------------------- shadow, bench

#[test]
fn shadow_counts_differences() {
    let active = pol(SEM);
    let cand = pol("default = \"allow\"\n");
    let shadow = Shadow::new(cand);
    let r1 = req("x@nowhere.test", Kind::Message, Inbound);
    let r2 = req("bob@partner.test", Kind::Message, Inbound);
    shadow.observe(&r1, active.decide_fast(&r1));
    shadow.observe(&r2, active.decide_fast(&r2));
    assert_eq!(
        shadow.counts(),
        ShadowCounts {
            compared: 2,
            shadow_allowed: 2,
            shadow_denied: 0,
            diff: 1
        }
    );
    log_load(&active, "test", &[]);
    log_decision(&active, &r1, &active.explain(&r1));
}

#[test]
fn bench_runs_on_a_small_file() {
    let text = bench::generate(300);
    let (p, _) = Policy::parse(&text, "bench.toml").expect("generated policy parses");
    assert_eq!(p.rule_count(), 300);
    let r = bench(300);
    assert_eq!(r.rules, 300);
    assert!(r.median_decide_ns > 0.0 && r.reload_ms > 0.0);
}

#[test]
fn fast_and_explained_agree_on_many_requests() {
    let p = pol(SEM);
    let remotes = [
        "partner.test",
        "a@partner.test",
        "spam@partner.test",
        "a@b.partner.test",
        "x@eu.partners.example",
        "boss@eu.partners.example",
        "nobody@x.eu.partners.example",
        "x@lab.partners.example",
        "in.test",
        "friend@evil.test",
        "evil.test",
        "x.evil.test",
        "unknown.test",
    ];
    let kinds = [
        Kind::Stream,
        Kind::Message,
        Kind::Presence,
        Kind::Subscription,
        Kind::Iq,
        Kind::FileTransfer,
        Kind::GroupchatInvite,
    ];
    for r in remotes {
        for k in kinds {
            for d in [Inbound, Outbound] {
                rule_of(&p, r, k, d);
            }
        }
    }
    // allow_users entry for a subdomain of the rule's suffix applies at that level.
    assert_eq!(
        rule_of(&p, "nobody@x.eu.partners.example", Kind::Iq, Outbound),
        (true, "deep".into())
    );
}

#[test]
fn auth_can_name_certificate_methods() {
    let p = pol(
        "default = \"allow\"\n[[rule]]\nid = \"strict\"\ndomains = [\"bank.test\"]\naction = \"allow\"\n\
         auth = [\"pkix\", \"dane\"]\n[[rule]]\nid = \"loose\"\ndomains = [\"*.test\"]\naction = \"allow\"\n\
         auth = [\"certificate\", \"dialback\"]\n",
    );
    let s = p.domain_settings("bank.test", Inbound);
    assert_eq!(
        (s.auth_certificate, s.auth_dialback),
        (Some(true), Some(false))
    );
    assert_eq!(s.auth_cert_methods, Some((true, true, false)));
    let s = p.domain_settings("other.test", Inbound);
    assert_eq!(s.auth_cert_methods, Some((true, true, true)));
    assert_eq!(s.auth_dialback, Some(true));
    assert_diag(
        "default = \"allow\"\n[[rule]]\nid = \"x\"\ndomains = [\"a.test\"]\naction = \"allow\"\nauth = [\"pki\"]\n",
        "6:9: error:",
        "unknown authentication method `pki` (did you mean `pkix`?",
    );
}

#[test]
fn trust_anchors_per_rule_resolve_against_the_policy_file() {
    let dir = std::env::temp_dir().join(format!("fedgate-policy-anchors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("partner-ca.pem"), "placeholder").unwrap();
    let file = dir.join("policy.toml");
    let text = "default = \"allow\"\n[[rule]]\nid = \"p\"\ndomains = [\"partner.test\"]\naction = \"allow\"\n\
                trust_anchors = [\"partner-ca.pem\"]\n";
    let (p, _) = Policy::parse(text, file.to_str().unwrap()).unwrap();
    assert_eq!(
        p.domain_settings("partner.test", Inbound).trust_anchors,
        vec![dir.join("partner-ca.pem")]
    );
    assert!(
        p.domain_settings("other.test", Inbound)
            .trust_anchors
            .is_empty()
    );
    let bad = text.replace("partner-ca.pem", "missing.pem");
    let d = Policy::parse(&bad, file.to_str().unwrap()).err().unwrap();
    let msg = d[0].to_string();
    assert!(
        msg.contains(":6:18: error: cannot read trust anchor"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// Issue 13, item 1: addresses are compared in their RFC 7622 canonical form, whichever form a
// rule or a stanza used.

#[test]
fn a_domain_rule_matches_both_idna_forms() {
    let deny = |pat: &str| {
        pol(&format!(
            "default = \"allow\"\n[[rule]]\nid = \"idn\"\ndomains = [\"{pat}\"]\naction = \"deny\"\n"
        ))
    };
    // Written as an A-label: stanzas in U-labels (and A-labels) are denied.
    for p in [
        deny("xn--bcher-kva.example"),
        deny("bücher.example"),
        deny("BÜCHER.example"),
    ] {
        for remote in [
            "bob@bücher.example",
            "bob@xn--bcher-kva.example",
            "bob@XN--BCHER-KVA.example./phone",
            "bücher.example",
        ] {
            assert_eq!(
                rule_of(&p, remote, Kind::Message, Inbound),
                (false, "idn".into()),
                "{remote}"
            );
        }
        assert!(
            p.decide(&req("bucher.example", Kind::Message, Inbound))
                .allow,
            "another domain"
        );
    }
    // Wildcards too, both ways.
    for pat in ["*.xn--bcher-kva.example", "*.bücher.example"] {
        let p = deny(pat);
        for remote in ["a@chat.bücher.example", "a@chat.xn--bcher-kva.example"] {
            assert_eq!(
                rule_of(&p, remote, Kind::Message, Outbound),
                (false, "idn".into()),
                "{pat} {remote}"
            );
        }
    }
}

#[test]
fn deny_users_match_equivalent_addresses() {
    let text = "default = \"deny\"
[[rule]]
id = \"partner\"
domains = [\"partner.test\"]
action = \"allow\"
deny_users = [\"mallory@partner.test\", \"Ｅｖｅ@Partner.test.\"]
";
    let p = pol(text);
    for remote in [
        "mallory@partner.test",
        "MALLORY@partner.test",
        "Mallory@partner.test/desk",
        "ｍａｌｌｏｒｙ@partner.test",
        "ＭＡＬＬＯＲＹ@partner.test",
        "mallory@partner.test.",
        "mallory@PARTNER.TEST./desk",
        "eve@partner.test",
        "EVE@partner.test.",
    ] {
        assert_eq!(
            rule_of(&p, remote, Kind::Message, Inbound),
            (false, "partner".into()),
            "{remote}"
        );
        assert!(
            p.explain(&req(remote, Kind::Message, Inbound))
                .reason
                .contains("listed in its deny_users"),
            "{remote}"
        );
    }
    assert_eq!(
        rule_of(&p, "bob@partner.test", Kind::Message, Inbound),
        (true, "partner".into())
    );
}

#[test]
fn malformed_remote_addresses_are_denied() {
    let p = pol(&one_domain("partner.test"));
    for remote in [
        "a b@partner.test",
        "☃@partner.test",
        "bob@partner..test",
        "bob@partner.test/",
    ] {
        let d = p.decide(&req(remote, Kind::Message, Inbound));
        assert!(!d.allow, "{remote}");
        assert!(
            d.reason.contains("not a valid XMPP address"),
            "{}",
            d.reason
        );
        assert!(!p.decide_fast(&req(remote, Kind::Message, Inbound)).allow);
    }
}

#[test]
fn check_warns_at_non_canonical_patterns() {
    let text = "default = \"deny\"
[groups]
idn = [\"xn--bcher-kva.example\", \"ok.test\"]
[[rule]]
id = \"a\"
domains = [\"@idn\", \"*.Straße.example\", \"trailing.test.\"]
action = \"allow\"
allow_users = [\"ａｌｉｃｅ@trailing.test\", \"bob@xn--bcher-kva.example\"]
";
    let d = diags(text);
    for (at, needle) in [
        (
            "3:8: warning",
            "`xn--bcher-kva.example` is not written in canonical form; read as `bücher.example`",
        ),
        (
            "6:20: warning",
            "`*.Straße.example` is not written in canonical form; read as `*.straße.example`",
        ),
        (
            "6:40: warning",
            "`trailing.test.` is not written in canonical form; read as `trailing.test`",
        ),
        (
            "8:16: warning",
            "`ａｌｉｃｅ@trailing.test` is not written in canonical form; read as `alice@trailing.test`",
        ),
        (
            "8:39: warning",
            "`bob@xn--bcher-kva.example` is not written in canonical form; read as `bob@bücher.example`",
        ),
    ] {
        assert!(
            has(&d, at, needle),
            "expected `{at}` … `{needle}` in {d:#?}"
        );
    }
    // Canonical patterns draw no such warning.
    assert!(
        !diags(&one_domain("bücher.example"))
            .iter()
            .any(|d| d.contains("canonical")),
    );
    // Invalid ones are errors, with the reason.
    assert_diag(&one_domain("xn--zz.test"), "4:23: error", "IDNA2008");
    let bad_user = "default = \"deny\"\n[[rule]]\nid = \"a\"\ndomains = [\"x.test\"]\naction = \"allow\"\ndeny_users = [\"a b@x.test\"]\n";
    assert_diag(bad_user, "6:15: error", "localpart");
}
