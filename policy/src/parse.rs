//! `policy.toml` → checked rule definitions → compiled [`Policy`], with every finding as a
//! [`Diagnostic`] at the line:column of the offending key or value.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::text::{self, Source, check_domain, unknown_msg};
use crate::{
    ALL_KINDS, DIR_BOTH, DIR_IN, DIR_OUT, Diagnostic, Entry, Kind, Map, Policy, Rule, RuleRef,
    RuleSettings, Severity, TlsFloor,
};

type Sv<'i> = Spanned<DeValue<'i>>;
type Span = Range<usize>;

const TOP_KEYS: &[&str] = &["default", "groups", "rule"];
const RULE_KEYS: &[&str] = &[
    "id",
    "domains",
    "action",
    "direction",
    "kinds",
    "allow_users",
    "deny_users",
    "tls",
    "auth",
    "pins",
    "trust_anchors",
    "protocol",
    "max_stanza_bytes",
    "rate",
    "max_streams",
];
const RATE_KEYS: &[&str] = &["per_second", "burst"];
const KIND_NAMES: &[&str] = &[
    "message",
    "presence",
    "subscription",
    "iq",
    "file-transfer",
    "groupchat-invite",
];

/// A domain pattern in canonical form (RFC 7622 domainpart: U-labels, lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pat {
    Exact(String),
    /// `*.suffix`: the suffix itself and every subdomain.
    Wild(String),
}

impl Pat {
    fn display(&self) -> String {
        match self {
            Pat::Exact(d) => d.clone(),
            Pat::Wild(s) => format!("*.{s}"),
        }
    }

    fn matches(&self, domain: &str) -> bool {
        match self {
            Pat::Exact(d) => d == domain,
            Pat::Wild(s) => {
                domain == s
                    || (domain.len() > s.len()
                        && domain.ends_with(s.as_str())
                        && domain.as_bytes()[domain.len() - s.len() - 1] == b'.')
            }
        }
    }
}

struct RulePat {
    pat: Pat,
    /// In the rule: the pattern string, or the `@group` reference.
    span: Span,
    group: Option<u32>,
}

struct GroupDef {
    name: String,
    span: Span,
    pats: Vec<(Pat, Span)>,
    used: bool,
}

struct RuleDef {
    id: String,
    line: usize,
    allow: bool,
    dir: u8,
    kinds: u8,
    pats: Vec<RulePat>,
    allow_users: Vec<(String, Span)>,
    deny_users: Vec<(String, Span)>,
    settings: RuleSettings,
}

struct Parser<'a> {
    src: Source<'a>,
    diags: Vec<Diagnostic>,
}

pub(crate) fn parse(text: &str, file: &str) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
    let revision = text::sha256_hex(text.as_bytes());
    let mut p = Parser {
        src: Source::new(text, file),
        diags: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // Recovery after a syntax error cascades; one error per line is what a human needs.
        let mut lines = HashSet::new();
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let d = p.src.diag(&span, Severity::Error, e.message().to_string());
            if lines.insert(d.line) {
                p.diags.push(d);
            }
        }
        return Err(p.finish());
    }
    let root = root.into_inner();

    for (k, _) in root.iter() {
        if !TOP_KEYS.contains(&k.get_ref().as_ref()) {
            p.err(&k.span(), unknown_msg("key", k.get_ref(), TOP_KEYS));
        }
    }

    let mut default = None;
    let mut default_line = 1;
    match root.get("default") {
        None => p.err(
            &(0..0),
            "missing required key `default` (\"allow\" or \"deny\")".into(),
        ),
        Some(v) => {
            default_line = p.src.line(&v.span());
            default = p.choice("default", v, &["allow", "deny"]).map(|i| i == 0);
        }
    }

    let mut groups: Vec<GroupDef> = Vec::new();
    if let Some(v) = root.get("groups") {
        p.groups(v, &mut groups);
    }
    let group_ix: HashMap<String, u32> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.clone(), i as u32))
        .collect();

    let mut rules: Vec<RuleDef> = Vec::new();
    if let Some(v) = root.get("rule") {
        match v.get_ref() {
            DeValue::Array(a) => {
                let mut ids: HashMap<String, usize> = HashMap::new();
                for item in a.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            if let Some((r, id_span)) =
                                p.rule(t, &item.span(), &mut groups, &group_ix)
                            {
                                if let Some(first) = ids.get(&r.id) {
                                    p.err(
                                        &id_span,
                                        format!(
                                            "duplicate rule id `{}` (first used at line {first})",
                                            r.id
                                        ),
                                    );
                                } else {
                                    ids.insert(r.id.clone(), r.line);
                                }
                                rules.push(r);
                            }
                        }
                        other => p.err(
                            &item.span(),
                            format!("each rule must be a table, found {}", other.type_str()),
                        ),
                    }
                }
            }
            DeValue::Table(_) => p.err(
                &v.span(),
                "`rule` must be an array of tables: write [[rule]], not [rule]".into(),
            ),
            other => p.err(
                &v.span(),
                format!(
                    "`rule` must be an array of tables ([[rule]]), found {}",
                    other.type_str()
                ),
            ),
        }
    }

    for g in &groups {
        if !g.used {
            p.warn(
                &g.span,
                format!("group `{}` is not used by any rule", g.name),
            );
        }
    }
    p.lint_shadows(&rules);

    if p.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(p.finish());
    }
    let policy = compile(
        default.unwrap_or(false),
        default_line,
        rules,
        groups.into_iter().map(|g| g.name).collect(),
        revision,
        file,
    );
    Ok((policy, p.finish()))
}

impl<'a> Parser<'a> {
    fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by(|a, b| {
            (a.line, a.column, a.severity == Severity::Warning).cmp(&(
                b.line,
                b.column,
                b.severity == Severity::Warning,
            ))
        });
        self.diags
    }

    fn err(&mut self, span: &Span, msg: String) {
        let d = self.src.diag(span, Severity::Error, msg);
        self.diags.push(d);
    }

    fn warn(&mut self, span: &Span, msg: String) {
        let d = self.src.diag(span, Severity::Warning, msg);
        self.diags.push(d);
    }

    fn type_err(&mut self, key: &str, want: &str, v: &Sv<'_>) {
        self.err(
            &v.span(),
            format!("`{key}` must be {want}, found {}", v.get_ref().type_str()),
        );
    }

    fn string<'v>(&mut self, key: &str, v: &'v Sv<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.type_err(key, "a string", v);
                None
            }
        }
    }

    /// One of `choices`; returns its index.
    fn choice(&mut self, key: &str, v: &Sv<'_>, choices: &[&str]) -> Option<usize> {
        let s = self.string(key, v)?;
        match choices.iter().position(|c| *c == s) {
            Some(i) => Some(i),
            None => {
                let list = choices
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(" or ");
                self.err(&v.span(), format!("`{key}` must be {list}, found \"{s}\""));
                None
            }
        }
    }

    fn strings<'v>(&mut self, key: &str, v: &'v Sv<'_>) -> Option<Vec<(&'v str, Span)>> {
        let DeValue::Array(a) = v.get_ref() else {
            self.type_err(key, "an array of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(a.len());
        let mut ok = true;
        for item in a.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span())),
                other => {
                    self.err(
                        &item.span(),
                        format!(
                            "`{key}` must be an array of strings, found {} in it",
                            other.type_str()
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn integer(&mut self, key: &str, v: &Sv<'_>, min: i64) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_err(key, "an integer", v);
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= min => Some(n),
            Ok(n) => {
                self.err(
                    &v.span(),
                    format!("`{key}` must be at least {min}, found {n}"),
                );
                None
            }
            Err(_) => {
                self.err(&v.span(), format!("`{key}` is out of range"));
                None
            }
        }
    }

    fn number(&mut self, key: &str, v: &Sv<'_>) -> Option<f64> {
        let f = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.type_err(key, "a number", v);
                return None;
            }
        };
        match f {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.err(&v.span(), format!("`{key}` must be a finite number"));
                None
            }
        }
    }

    /// A domain pattern (not a group reference), in canonical form (RFC 7622: U-labels, lower
    /// case, no trailing dot), with a warning where it was written another way.
    fn pattern(&mut self, raw: &str, span: &Span) -> Option<Pat> {
        let pat = self.pattern_inner(raw, span)?;
        let shown = pat.display();
        if shown != raw {
            self.warn(span, non_canonical(raw, &shown));
        }
        Some(pat)
    }

    fn pattern_inner(&mut self, raw: &str, span: &Span) -> Option<Pat> {
        let lowered = raw.to_lowercase();
        let s = lowered.as_str();
        if s.trim() != s || s.contains(char::is_whitespace) {
            self.err(span, format!("`{raw}` contains whitespace"));
            return None;
        }
        if let Some(rest) = s.strip_prefix('*') {
            let problem = if rest.is_empty() {
                Some("`*` alone would match every domain; set `default` instead".to_string())
            } else if rest.starts_with('*') {
                Some(format!(
                    "`{s}`: `**` is not a wildcard; write `*.{}` (the domain and its subdomains)",
                    rest.trim_start_matches(['*', '.'])
                ))
            } else if rest == "." {
                Some("`*.` has no suffix; write `*.example.com`".to_string())
            } else if !rest.starts_with('.') {
                Some(format!(
                    "`{s}`: a wildcard must be a whole label; write `*.{}` (the domain and its subdomains)",
                    rest
                ))
            } else if rest[1..].contains('*') {
                Some(format!(
                    "`{s}`: only one `*`, as the first label (`*.suffix`), is allowed"
                ))
            } else {
                None
            };
            if let Some(m) = problem {
                self.err(span, m);
                return None;
            }
            // `raw` starts with `*.` as `s` does (lower-casing keeps ASCII punctuation).
            let suffix = self.domain(&raw[2..], span)?;
            if !suffix.contains('.') {
                self.warn(
                    span,
                    format!(
                        "`{s}` covers a whole top-level domain (every domain under `.{suffix}`)"
                    ),
                );
            }
            return Some(Pat::Wild(suffix.to_string()));
        }
        if s.contains('*') {
            self.err(
                span,
                format!("`{s}`: `*` is only allowed as the first label (`*.suffix`)"),
            );
            return None;
        }
        self.domain(raw, span).map(Pat::Exact)
    }

    /// A domain name in canonical form; an error with the reason if it has none.
    fn domain(&mut self, d: &str, span: &Span) -> Option<String> {
        match fedgate_jid::canonical_domain(d) {
            Ok(c) if !c.starts_with('[') => Some(c.into_owned()),
            Ok(_) => {
                self.err(span, format!("`{d}` is an IP address, not a domain name"));
                None
            }
            Err(e) => {
                // The ASCII checks name the mistake more precisely where they find one.
                let lowered = d.to_lowercase();
                let m = check_domain(lowered.strip_suffix('.').unwrap_or(&lowered))
                    .err()
                    .unwrap_or_else(|| format!("`{d}`: {e}"));
                self.err(span, m);
                None
            }
        }
    }

    fn groups(&mut self, v: &Sv<'_>, groups: &mut Vec<GroupDef>) {
        let DeValue::Table(t) = v.get_ref() else {
            self.type_err("groups", "a table of domain lists", v);
            return;
        };
        for (k, gv) in t.iter() {
            let name = k.get_ref().as_ref();
            if !valid_id(name) {
                self.err(
                    &k.span(),
                    format!("group name `{name}` may only use a-z, 0-9, `.`, `_` and `-`"),
                );
            }
            let Some(items) = self.strings(name, gv) else {
                continue;
            };
            if items.is_empty() {
                self.warn(&gv.span(), format!("group `{name}` is empty"));
            }
            let mut pats = Vec::new();
            for (s, span) in items {
                if s.starts_with('@') {
                    self.err(&span, format!("`{s}`: groups cannot contain other groups"));
                } else if let Some(p) = self.pattern(s, &span) {
                    pats.push((p, span));
                }
            }
            groups.push(GroupDef {
                name: name.to_string(),
                span: k.span(),
                pats,
                used: false,
            });
        }
    }

    /// One `[[rule]]`; returns the definition (if id and action parsed) and the id's span.
    fn rule(
        &mut self,
        t: &DeTable<'_>,
        header: &Span,
        groups: &mut [GroupDef],
        group_ix: &HashMap<String, u32>,
    ) -> Option<(RuleDef, Span)> {
        let line = self.src.line(header);
        for (k, _) in t.iter() {
            if !RULE_KEYS.contains(&k.get_ref().as_ref()) {
                self.err(&k.span(), unknown_msg("key", k.get_ref(), RULE_KEYS));
            }
        }
        let missing = |p: &mut Self, key: &str| {
            p.err(header, format!("rule is missing required key `{key}`"));
        };

        let id = match t.get("id") {
            None => {
                missing(self, "id");
                None
            }
            Some(v) => match self.string("id", v) {
                Some(s) if valid_id(s) && s != "default" => Some((s.to_string(), v.span())),
                Some("default") => {
                    self.err(
                        &v.span(),
                        "rule id `default` is reserved (tests name the default with it)".into(),
                    );
                    None
                }
                Some(s) => {
                    self.err(
                        &v.span(),
                        format!("rule id `{s}` may only use a-z, 0-9, `.`, `_` and `-`"),
                    );
                    None
                }
                None => None,
            },
        };
        let action = match t.get("action") {
            None => {
                missing(self, "action");
                None
            }
            Some(v) => self.choice("action", v, &["allow", "deny"]).map(|i| i == 0),
        };
        let dir = match t.get("direction") {
            None => Some(DIR_BOTH),
            Some(v) => self
                .choice("direction", v, &["inbound", "outbound", "both"])
                .map(|i| [DIR_IN, DIR_OUT, DIR_BOTH][i]),
        };

        let mut pats: Vec<RulePat> = Vec::new();
        match t.get("domains") {
            None => missing(self, "domains"),
            Some(v) => {
                if let Some(items) = self.strings("domains", v) {
                    if items.is_empty() {
                        self.err(
                            &v.span(),
                            "`domains` is empty: a rule must match at least one domain".into(),
                        );
                    }
                    for (s, span) in items {
                        if let Some(name) = s.strip_prefix('@') {
                            match group_ix.get(name) {
                                Some(&gi) => {
                                    let g = &mut groups[gi as usize];
                                    g.used = true;
                                    for (p, _) in &g.pats {
                                        pats.push(RulePat {
                                            pat: p.clone(),
                                            span: span.clone(),
                                            group: Some(gi),
                                        });
                                    }
                                }
                                None => {
                                    let names: Vec<&str> =
                                        groups.iter().map(|g| g.name.as_str()).collect();
                                    let msg = if names.is_empty() {
                                        format!("unknown group `@{name}` (no [groups] are defined)")
                                    } else {
                                        unknown_msg("group", name, &names)
                                    };
                                    self.err(&span, msg);
                                }
                            }
                        } else if let Some(p) = self.pattern(s, &span) {
                            pats.push(RulePat {
                                pat: p,
                                span,
                                group: None,
                            });
                        }
                    }
                }
            }
        }

        let mut kinds = Some(ALL_KINDS);
        if let Some(v) = t.get("kinds") {
            kinds = self.kinds(v);
            if kinds == Some(0) {
                match action {
                    Some(true) => self.warn(
                        &v.span(),
                        "`kinds` is empty: this allow rule allows nothing (every kind is denied by it)"
                            .into(),
                    ),
                    Some(false) => self.warn(
                        &v.span(),
                        "`kinds` is empty: this deny rule denies nothing and never decides".into(),
                    ),
                    None => {}
                }
            }
        }

        let allow_users = t
            .get("allow_users")
            .map(|v| self.users("allow_users", v, &pats))
            .unwrap_or_default();
        let deny_users = t
            .get("deny_users")
            .map(|v| self.users("deny_users", v, &pats))
            .unwrap_or_default();
        for (u, span) in &allow_users {
            if deny_users.iter().any(|(d, _)| d == u) {
                self.warn(
                    span,
                    format!("`{u}` is in both allow_users and deny_users; deny_users wins"),
                );
            }
        }

        let settings = self.settings(t);

        let (id, id_span) = id?;
        Some((
            RuleDef {
                id,
                line,
                allow: action?,
                dir: dir?,
                kinds: kinds?,
                pats,
                allow_users,
                deny_users,
                settings,
            },
            id_span,
        ))
    }

    fn kinds(&mut self, v: &Sv<'_>) -> Option<u8> {
        let items = self.strings("kinds", v)?;
        let mut mask = 0u8;
        let mut ok = true;
        for (s, span) in items {
            match Kind::parse(s) {
                Some(Kind::Stream) => {
                    self.err(
                        &span,
                        "`stream` is not a rule kind: a deny rule covering every kind (no `kinds` key) refuses the whole domain".into(),
                    );
                    ok = false;
                }
                Some(k) => mask |= k.bit(),
                None => {
                    self.err(&span, unknown_msg("kind", s, KIND_NAMES));
                    ok = false;
                }
            }
        }
        ok.then_some(mask)
    }

    fn users(&mut self, key: &str, v: &Sv<'_>, pats: &[RulePat]) -> Vec<(String, Span)> {
        let Some(items) = self.strings(key, v) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (s, span) in items {
            let Some((node, domain)) = s.split_once('@') else {
                self.err(
                    &span,
                    format!("`{s}` is not a bare JID (expected user@domain)"),
                );
                continue;
            };
            if node.is_empty() || domain.contains('@') {
                self.err(
                    &span,
                    format!("`{s}` is not a bare JID (expected user@domain)"),
                );
                continue;
            }
            if domain.contains('/') {
                self.err(
                    &span,
                    format!("`{s}` has a resource; use the bare JID (user@domain)"),
                );
                continue;
            }
            let jid = match fedgate_jid::Jid::parse(s) {
                Ok(j) => j,
                Err(e) => {
                    let m = match e.part() {
                        fedgate_jid::Part::Domain => {
                            check_domain(&domain.strip_suffix('.').unwrap_or(domain).to_lowercase())
                                .err()
                                .unwrap_or_else(|| format!("`{s}`: {e}"))
                        }
                        _ => format!("`{s}`: {e}"),
                    };
                    self.err(&span, m);
                    continue;
                }
            };
            let u = jid.as_str().to_owned();
            let domain = jid.domain();
            if u != s {
                self.warn(&span, non_canonical(s, &u));
            }
            if !pats.is_empty() && !pats.iter().any(|p| p.pat.matches(domain)) {
                self.warn(
                    &span,
                    format!(
                        "`{s}`: its domain is not matched by this rule's `domains`, so this entry can never apply"
                    ),
                );
            }
            out.push((u, span));
        }
        out
    }

    fn settings(&mut self, t: &DeTable<'_>) -> RuleSettings {
        let mut s = RuleSettings::default();
        if let Some(v) = t.get("tls") {
            s.tls = self
                .choice("tls", v, &["required", "optional"])
                .map(|i| [TlsFloor::Required, TlsFloor::Optional][i]);
        }
        if let Some(v) = t.get("auth")
            && let Some(items) = self.strings("auth", v)
        {
            let (mut cert, mut dialback, mut ok) = (false, false, true);
            let mut methods = (false, false, false);
            for (m, span) in &items {
                match *m {
                    "certificate" => {
                        cert = true;
                        methods = (true, true, true);
                    }
                    "pkix" => {
                        cert = true;
                        methods.0 = true;
                    }
                    "dane" => {
                        cert = true;
                        methods.1 = true;
                    }
                    "posh" => {
                        cert = true;
                        methods.2 = true;
                    }
                    "dialback" => dialback = true,
                    other => {
                        self.err(
                            span,
                            unknown_msg(
                                "authentication method",
                                other,
                                &["certificate", "pkix", "dane", "posh", "dialback"],
                            ),
                        );
                        ok = false;
                    }
                }
            }
            if ok && items.is_empty() {
                self.err(
                    &v.span(),
                    "`auth` is empty: no stream could authenticate (to refuse the domain use action = \"deny\")".into(),
                );
            } else if ok {
                s.auth = Some((cert, dialback));
                s.cert_methods = methods;
                if s.auth == Some((true, false)) && s.tls == Some(TlsFloor::Optional) {
                    let span = t.get("tls").map(|v| v.span()).unwrap_or(v.span());
                    self.warn(
                        &span,
                        "`tls = \"optional\"` has no effect: certificate authentication needs TLS"
                            .into(),
                    );
                }
            }
        }
        if let Some(v) = t.get("pins")
            && let Some(items) = self.strings("pins", v)
        {
            let mut pins = Vec::new();
            for (p, span) in items {
                match normalize_pin(p) {
                    Some(n) => pins.push(n),
                    None => self.err(
                        &span,
                        format!(
                            "pin `{p}` is not a SHA-256 fingerprint (expected `sha256:` and 32 hex bytes, e.g. sha256:AB:CD:…)"
                        ),
                    ),
                }
            }
            s.pins = Some(pins);
        }
        if let Some(v) = t.get("trust_anchors")
            && let Some(items) = self.strings("trust_anchors", v)
        {
            // Paths relative to the policy file; each must be readable now (a partner whose
            // anchors are missing would silently fall back to nothing).
            let base = std::path::Path::new(self.src.file)
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            let mut files = Vec::new();
            let empty = items.is_empty();
            for (f, span) in items {
                let path = base.join(f);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => files.push(path),
                    Ok(_) => self.err(
                        &span,
                        format!("trust anchor `{}` is not a file", path.display()),
                    ),
                    Err(e) => self.err(
                        &span,
                        format!("cannot read trust anchor `{}`: {e}", path.display()),
                    ),
                }
            }
            if empty {
                self.err(
                    &v.span(),
                    "`trust_anchors` is empty: no certificate could be trusted for these domains"
                        .into(),
                );
            } else if !files.is_empty() {
                s.trust_anchors = Some(files);
            }
        }
        if let Some(v) = t.get("protocol") {
            s.protocol = self
                .choice("protocol", v, &["xmpp", "sip"])
                .map(|i| ["xmpp", "sip"][i].to_string());
        }
        if let Some(v) = t.get("max_stanza_bytes") {
            s.max_stanza_bytes = self
                .integer("max_stanza_bytes", v, 1)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(v) = t.get("max_streams") {
            s.max_streams = self
                .integer("max_streams", v, 1)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        }
        if let Some(v) = t.get("rate") {
            s.rate = self.rate(v);
        }
        s
    }

    fn rate(&mut self, v: &Sv<'_>) -> Option<(f64, u32)> {
        let DeValue::Table(t) = v.get_ref() else {
            self.type_err("rate", "a table { per_second = …, burst = … }", v);
            return None;
        };
        for (k, _) in t.iter() {
            if !RATE_KEYS.contains(&k.get_ref().as_ref()) {
                self.err(&k.span(), unknown_msg("key", k.get_ref(), RATE_KEYS));
            }
        }
        let per_second = match t.get("per_second") {
            None => {
                self.err(&v.span(), "`rate` is missing `per_second`".into());
                None
            }
            Some(ps) => match self.number("per_second", ps) {
                Some(f) if f > 0.0 => Some(f),
                Some(f) => {
                    self.err(
                        &ps.span(),
                        format!("`per_second` must be greater than 0, found {f}"),
                    );
                    None
                }
                None => None,
            },
        };
        let burst = match t.get("burst") {
            None => {
                self.err(&v.span(), "`rate` is missing `burst`".into());
                None
            }
            Some(b) => self
                .integer("burst", b, 1)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        };
        Some((per_second?, burst?))
    }

    /// Same pattern in two rules with overlapping directions: one warning per rule pair, at
    /// the later rule's first shared pattern.
    fn lint_shadows(&mut self, rules: &[RuleDef]) {
        let mut by_pat: HashMap<&Pat, Vec<(usize, &Span)>> = HashMap::new();
        for (ri, r) in rules.iter().enumerate() {
            let mut seen: HashMap<&Pat, &RulePat> = HashMap::new();
            for rp in &r.pats {
                if let Some(first) = seen.get(&rp.pat) {
                    // Listed twice in one rule (directly and through a group, or two groups).
                    if first.span != rp.span || first.group.is_none() {
                        self.warn(
                            &rp.span,
                            format!(
                                "`{}` is listed more than once in this rule",
                                rp.pat.display()
                            ),
                        );
                    }
                    continue;
                }
                seen.insert(&rp.pat, rp);
                by_pat.entry(&rp.pat).or_default().push((ri, &rp.span));
            }
        }
        // (earlier, later) → (span in later, first pattern, count)
        let mut pairs: HashMap<(usize, usize), (Span, String, usize)> = HashMap::new();
        for (pat, users) in &by_pat {
            if users.len() < 2 {
                continue;
            }
            for (j, (b, bspan)) in users.iter().enumerate() {
                for (a, _) in &users[..j] {
                    if rules[*a].dir & rules[*b].dir == 0 {
                        continue;
                    }
                    let e = pairs
                        .entry((*a, *b))
                        .or_insert_with(|| ((*bspan).clone(), pat.display(), 0));
                    e.2 += 1;
                    if bspan.start < e.0.start {
                        e.0 = (*bspan).clone();
                        e.1 = pat.display();
                    }
                }
            }
        }
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        pairs.sort_by_key(|((a, b), _)| (*b, *a));
        for ((a, b), (span, pat, count)) in pairs {
            let (ra, rb) = (&rules[a], &rules[b]);
            let more = if count > 1 {
                format!(" (and {} more shared patterns)", count - 1)
            } else {
                String::new()
            };
            let msg = if ra.allow == rb.allow {
                format!(
                    "`{pat}`{more} in rule {} is shadowed by rule {} at line {}: same pattern, overlapping direction, same action; merge the rules",
                    rb.id, ra.id, ra.line
                )
            } else {
                let (deny, allow) = if ra.allow { (rb, ra) } else { (ra, rb) };
                format!(
                    "`{pat}`{more} is matched by deny rule {} (line {}) and allow rule {} (line {}) with the same specificity and overlapping direction: the deny wins for the kinds it covers",
                    deny.id, deny.line, allow.id, allow.line
                )
            };
            self.warn(&span, msg);
        }
    }
}

/// The warning for a pattern or user written in another form than the canonical one.
fn non_canonical(raw: &str, canonical: &str) -> String {
    format!(
        "`{raw}` is not written in canonical form; read as `{canonical}` (RFC 7622: domains in \
         lower-case U-labels without a trailing dot, localparts by PRECIS UsernameCaseMapped)"
    )
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// `sha256:AB:CD:…` (prefix optional, colons optional, any case) → `sha256:AB:CD:…` uppercase.
pub(crate) fn normalize_pin(p: &str) -> Option<String> {
    let body = match p.get(..7) {
        Some(pre) if pre.eq_ignore_ascii_case("sha256:") => &p[7..],
        _ => p,
    };
    let hex: String = if body.contains(':') {
        if !body.split(':').all(|part| part.len() == 2) {
            return None;
        }
        body.split(':').collect()
    } else {
        body.to_string()
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_uppercase();
    let pairs: Vec<&str> = (0..32).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(format!("sha256:{}", pairs.join(":")))
}

fn compile(
    default_allow: bool,
    default_line: usize,
    defs: Vec<RuleDef>,
    groups: Vec<String>,
    revision: String,
    file: &str,
) -> Policy {
    let mut exact = Map::<Vec<Entry>>::default();
    let mut wild = Map::<Vec<Entry>>::default();
    let mut max_wild_labels = 0;
    let mut rules = Vec::with_capacity(defs.len());
    for (ri, d) in defs.into_iter().enumerate() {
        let has_users = !d.allow_users.is_empty() || !d.deny_users.is_empty();
        for rp in &d.pats {
            let entry = Entry {
                rule: ri as u32,
                deny: !d.allow,
                dir: d.dir,
                kinds: d.kinds,
                has_users,
                via_group: rp.group,
            };
            let bucket = match &rp.pat {
                Pat::Exact(dom) => exact.entry(dom.as_str().into()).or_default(),
                Pat::Wild(suffix) => {
                    max_wild_labels = max_wild_labels.max(suffix.split('.').count());
                    wild.entry(suffix.as_str().into()).or_default()
                }
            };
            if !bucket.iter().any(|e: &Entry| e.rule == entry.rule) {
                bucket.push(entry);
            }
        }
        rules.push(Rule {
            rref: RuleRef {
                id: d.id,
                line: d.line,
            },
            dir: d.dir,
            kinds: d.kinds,
            allow_users: d.allow_users.into_iter().map(|(u, _)| u.into()).collect(),
            deny_users: d.deny_users.into_iter().map(|(u, _)| u.into()).collect(),
            settings: d.settings,
        });
    }
    let finish = |m: Map<Vec<Entry>>| -> Map<Box<[Entry]>> {
        m.into_iter()
            .map(|(k, mut v)| {
                v.sort_by_key(|e| (!e.deny, e.rule));
                (k, v.into_boxed_slice())
            })
            .collect()
    };
    Policy {
        default_allow,
        default_line,
        rules,
        groups,
        exact: finish(exact),
        wild: finish(wild),
        max_wild_labels,
        revision,
        source: file.to_string(),
    }
}
