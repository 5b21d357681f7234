//! `policy-tests.toml`: a table of requests and the decisions the security team expects.
//!
//! ```toml
//! [[case]]
//! from = "bob@partner.test"     # inbound: the remote JID; outbound: the local JID
//! to = "alice@example.test"
//! kind = "message"
//! direction = "inbound"
//! expect = "allow"              # "allow" | "deny"
//! rule = "partners"             # optional: the deciding rule id, or "default"
//! ```

use toml::de::{DeTable, DeValue};

use crate::text::{Source, unknown_msg};
use crate::{Decision, Diagnostic, Direction, Kind, Policy, Request, Severity};

const CASE_KEYS: &[&str] = &["from", "to", "kind", "direction", "expect", "rule"];

/// The outcome of one `[[case]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// Line of the case's `[[case]]` header.
    pub line: usize,
    /// "bob@partner.test -> alice@example.test message inbound"
    pub name: String,
    pub passed: bool,
    /// "allow", "deny", "allow by rule partners", "deny by default".
    pub expected: String,
    pub got: Decision,
}

struct Case {
    line: usize,
    from: String,
    to: String,
    kind: Kind,
    direction: Direction,
    allow: bool,
    rule: Option<String>,
}

/// Runs a test file against a policy. `Err` = the test file itself is wrong (syntax, unknown
/// keys, bad values, a rule id the policy does not have); failing cases are `Ok` results with
/// `passed == false`.
pub fn run_tests(
    policy: &Policy,
    tests_text: &str,
    tests_file: &str,
) -> Result<Vec<CaseResult>, Vec<Diagnostic>> {
    let src = Source::new(tests_text, tests_file);
    let mut diags = Vec::new();
    let (root, errors) = DeTable::parse_recoverable(tests_text);
    if !errors.is_empty() {
        let mut lines = std::collections::HashSet::new();
        for e in errors {
            let d = src.diag(
                &e.span().unwrap_or(0..0),
                Severity::Error,
                e.message().to_string(),
            );
            if lines.insert(d.line) {
                diags.push(d);
            }
        }
        return Err(diags);
    }
    let root = root.into_inner();
    let mut err = |span: &std::ops::Range<usize>, m: String| {
        diags.push(src.diag(span, Severity::Error, m));
    };
    for (k, _) in root.iter() {
        if k.get_ref() != "case" {
            err(&k.span(), unknown_msg("key", k.get_ref(), &["case"]));
        }
    }
    let mut cases = Vec::new();
    match root.get("case").map(|v| (v.get_ref(), v.span())) {
        None => {}
        Some((DeValue::Array(a), _)) => {
            for item in a.iter() {
                let header = item.span();
                let DeValue::Table(t) = item.get_ref() else {
                    err(&header, "each case must be a table".into());
                    continue;
                };
                for (k, _) in t.iter() {
                    if !CASE_KEYS.contains(&k.get_ref().as_ref()) {
                        err(&k.span(), unknown_msg("key", k.get_ref(), CASE_KEYS));
                    }
                }
                let mut get = |key: &str| -> Option<(String, std::ops::Range<usize>)> {
                    match t.get(key) {
                        None => {
                            if key != "rule" {
                                err(&header, format!("case is missing required key `{key}`"));
                            }
                            None
                        }
                        Some(v) => match v.get_ref() {
                            DeValue::String(s) => Some((s.to_string(), v.span())),
                            other => {
                                err(
                                    &v.span(),
                                    format!("`{key}` must be a string, found {}", other.type_str()),
                                );
                                None
                            }
                        },
                    }
                };
                let from = get("from");
                let to = get("to");
                let kind = get("kind");
                let direction = get("direction");
                let expect = get("expect");
                let rule = get("rule");
                let kind = kind.and_then(|(s, span)| {
                    let k = Kind::parse(&s);
                    if k.is_none() {
                        err(
                            &span,
                            unknown_msg(
                                "kind",
                                &s,
                                &[
                                    "stream",
                                    "message",
                                    "presence",
                                    "subscription",
                                    "iq",
                                    "file-transfer",
                                    "groupchat-invite",
                                ],
                            ),
                        );
                    }
                    k
                });
                let direction = direction.and_then(|(s, span)| {
                    let d = Direction::parse(&s);
                    if d.is_none() {
                        err(
                            &span,
                            format!(
                                "`direction` must be \"inbound\" or \"outbound\", found \"{s}\""
                            ),
                        );
                    }
                    d
                });
                let allow = expect.and_then(|(s, span)| match s.as_str() {
                    "allow" => Some(true),
                    "deny" => Some(false),
                    _ => {
                        err(
                            &span,
                            format!("`expect` must be \"allow\" or \"deny\", found \"{s}\""),
                        );
                        None
                    }
                });
                let rule = match rule {
                    Some((id, span)) if id != "default" && policy.rule_by_id(&id).is_none() => {
                        err(
                            &span,
                            format!("rule `{id}` does not exist in {}", policy.source()),
                        );
                        None
                    }
                    Some((id, _)) => Some(Some(id)),
                    None => Some(None),
                };
                if let (
                    Some(from),
                    Some(to),
                    Some(kind),
                    Some(direction),
                    Some(allow),
                    Some(rule),
                ) = (from, to, kind, direction, allow, rule)
                {
                    cases.push(Case {
                        line: src.line(&header),
                        from: from.0,
                        to: to.0,
                        kind,
                        direction,
                        allow,
                        rule,
                    });
                }
            }
        }
        Some((_, span)) => err(
            &span,
            "`case` must be an array of tables: write [[case]]".into(),
        ),
    }
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line, d.column));
        return Err(diags);
    }
    Ok(cases.iter().map(|c| run_case(policy, c)).collect())
}

fn run_case(policy: &Policy, c: &Case) -> CaseResult {
    let (remote, local) = match c.direction {
        Direction::Inbound => (&c.from, &c.to),
        Direction::Outbound => (&c.to, &c.from),
    };
    let got = policy.explain(&Request {
        remote,
        local,
        kind: c.kind,
        direction: c.direction,
    });
    let verb = if c.allow { "allow" } else { "deny" };
    let expected = match &c.rule {
        None => verb.to_string(),
        Some(r) if r == "default" => format!("{verb} by default"),
        Some(r) => format!("{verb} by rule {r}"),
    };
    let rule_ok = match &c.rule {
        None => true,
        Some(r) if r == "default" => got.rule.is_none(),
        Some(r) => got.rule.as_ref().is_some_and(|g| &g.id == r),
    };
    CaseResult {
        line: c.line,
        name: format!("{} -> {} {} {}", c.from, c.to, c.kind, c.direction),
        passed: got.allow == c.allow && rule_ok,
        expected,
        got,
    }
}
