use super::*;

fn canon(s: &str) -> String {
    canonical(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .into_owned()
}

#[test]
fn ascii_canonical_addresses_are_borrowed() {
    for s in [
        "alice@example.test",
        "alice@example.test/desk 1",
        "example.test",
        "a.b-c.example.test/x@y/z",
        "127.0.0.1",
        "[::1]",
        "o.hara+x_1@example.test",
    ] {
        let c = canonical(s);
        assert!(
            matches!(c, Ok(Cow::Borrowed(b)) if b == s),
            "{s:?} -> {c:?}"
        );
    }
}

#[test]
fn equivalent_forms_have_one_canonical_form() {
    let same = [
        // case of localpart and domain; a trailing dot
        ("Alice@Example.TEST", "alice@example.test"),
        ("alice@example.test.", "alice@example.test"),
        ("alice@example.test./r", "alice@example.test/r"),
        // fullwidth (compatibility) forms in the localpart: width mapping (RFC 8265 §3.3.1)
        ("ａｌｉｃｅ@example.test", "alice@example.test"),
        ("ＡＬＩＣＥ@example.test", "alice@example.test"),
        // non-ASCII case mapping and NFC
        ("ÉLODIE@example.test", "élodie@example.test"),
        ("e\u{301}lodie@example.test", "élodie@example.test"),
        // A-labels are written as U-labels; U-labels are mapped (case, width)
        ("bob@xn--bcher-kva.example", "bob@bücher.example"),
        ("bob@XN--BCHER-KVA.example", "bob@bücher.example"),
        ("bob@BÜCHER.example", "bob@bücher.example"),
        ("bob@ｂüｃｈｅｒ。example", "bob@bücher.example"),
        // IDNA2008, not 2003: ß stays ß
        ("bob@straße.example", "bob@straße.example"),
        ("bob@xn--strae-oqa.example", "bob@straße.example"),
        // resources are case-sensitive, NFC only
        ("a@b.test/Desk", "a@b.test/Desk"),
        ("a@b.test/e\u{301}", "a@b.test/é"),
        ("[0:0::1]", "[::1]"),
    ];
    for (input, want) in same {
        assert_eq!(canon(input), want, "{input:?}");
        assert_eq!(canon(want), want, "{want:?} is canonical");
        assert_eq!(Jid::parse(input).unwrap().as_str(), want);
    }
    assert_ne!(canon("a@b.test/desk"), canon("a@b.test/Desk"));
}

#[test]
fn malformed_addresses_are_refused_with_the_part() {
    let long = "a".repeat(1024);
    let cases: Vec<(String, Part)> = vec![
        ("@example.test".into(), Part::Local),
        ("a b@example.test".into(), Part::Local),
        ("a:b@example.test".into(), Part::Local),
        ("a<b@example.test".into(), Part::Local),
        ("a\"b@example.test".into(), Part::Local),
        ("☃@example.test".into(), Part::Local), // a symbol: not in IdentifierClass
        (format!("{long}@example.test"), Part::Local),
        (format!("{}@example.test", "é".repeat(512)), Part::Local),
        ("alice@".into(), Part::Domain),
        ("alice@.".into(), Part::Domain),
        ("alice@a..test".into(), Part::Domain),
        ("alice@.example.test".into(), Part::Domain),
        ("alice@exa mple.test".into(), Part::Domain),
        ("alice@-x.test".into(), Part::Domain),
        ("alice@x_y.test".into(), Part::Domain),
        ("alice@b@c.test".into(), Part::Domain),
        (format!("alice@{}.test", "a".repeat(64)), Part::Domain),
        (format!("alice@{long}"), Part::Domain),
        ("alice@xn--zz.test".into(), Part::Domain),
        ("alice@[::1".into(), Part::Domain),
        ("alice@example.test/".into(), Part::Resource),
        ("alice@example.test/a\u{7}b".into(), Part::Resource),
        (format!("alice@example.test/{long}"), Part::Resource),
    ];
    for (s, part) in cases {
        let e = canonical(&s).expect_err(&s);
        assert_eq!(e.part(), part, "{s:?}: {e}");
        assert!(Jid::parse(&s).is_err());
    }
}

#[test]
fn jid_parts_and_forms() {
    let j = Jid::parse("Alice@Bücher.example./Desk/1@x").unwrap();
    assert_eq!(j.local(), Some("alice"));
    assert_eq!(j.domain(), "bücher.example");
    assert_eq!(j.resource(), Some("Desk/1@x"));
    assert_eq!(j.bare_str(), "alice@bücher.example");
    assert_eq!(j.to_bare().as_str(), "alice@bücher.example");
    assert_eq!(
        j.to_bare().with_resource("r").unwrap().as_str(),
        "alice@bücher.example/r"
    );
    assert_eq!(domain_of(j.as_str()), "bücher.example");
    let d = Jid::domain_jid("EXAMPLE.test.").unwrap();
    assert_eq!(
        (d.local(), d.domain(), d.resource()),
        (None, "example.test", None)
    );
    assert_eq!(
        Jid::from_parts(Some("Bob"), "xn--bcher-kva.example", Some("x")).unwrap(),
        Jid::parse("bob@bücher.example/x").unwrap()
    );
}

#[test]
fn a_labels_for_dns_and_tls() {
    assert_eq!(
        domain_to_ascii("bücher.example").unwrap(),
        "xn--bcher-kva.example"
    );
    assert_eq!(
        domain_to_ascii("Bücher.Example.").unwrap(),
        "xn--bcher-kva.example"
    );
    assert_eq!(domain_to_ascii("example.test").unwrap(), "example.test");
    assert!(matches!(
        domain_to_ascii("example.test"),
        Ok(Cow::Borrowed(_))
    ));
    assert_eq!(domain_to_ascii("EXAMPLE.test").unwrap(), "example.test");
    assert!(domain_to_ascii("a..b").is_err());
    // and back
    assert_eq!(
        canonical_domain("xn--bcher-kva.example").unwrap(),
        "bücher.example"
    );
}
