//! fedgate-policy: the per-domain federation policy a security team owns as `policy.toml`.
//!
//! This room holds the policy file model (a default plus rules over remote domains: direction,
//! kinds of traffic, user exceptions, transport and authentication floor, pins, protocol,
//! limits), its TOML parser with `file:line:column` diagnostics, the lint (shadowed rules,
//! unused groups, wildcard mistakes), the compiled index decisions come from (hash lookups per
//! domain label, never a scan of the rules), decisions with human explanations, the
//! `policy-tests.toml` runner, shadow comparison and audit log lines, and the decision/reload
//! benchmark.
//!
//! It may not touch anything else: it is a leaf crate (no dependency on other fedgate crates),
//! opens no sockets, spawns nothing, and reads only the files it is handed. Reload (the
//! `arc-swap` of a freshly built [`Policy`]) and enforcement belong to the gateway.

#![forbid(unsafe_code)]

mod audit;
pub mod bench;
mod engine;
mod parse;
mod testfile;
mod text;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use audit::{Shadow, ShadowCounts, log_decision, log_load};
pub use bench::{BenchReport, bench};
pub use testfile::{CaseResult, run_tests};

/// Which way traffic crosses the gateway, seen from the local domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a remote domain to a local user.
    Inbound,
    /// From a local user to a remote domain.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Direction::Inbound => DIR_IN,
            Direction::Outbound => DIR_OUT,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) const DIR_IN: u8 = 1;
pub(crate) const DIR_OUT: u8 = 2;
pub(crate) const DIR_BOTH: u8 = DIR_IN | DIR_OUT;

/// What is asking to cross. `Stream` is the domain-level question "may this domain federate
/// with us at all in this direction"; the others are stanza kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Stream,
    Message,
    Presence,
    Subscription,
    Iq,
    FileTransfer,
    GroupchatInvite,
}

/// The kinds a rule's `kinds` list may name (every kind but `Stream`), in file order.
pub(crate) const RULE_KINDS: [Kind; 6] = [
    Kind::Message,
    Kind::Presence,
    Kind::Subscription,
    Kind::Iq,
    Kind::FileTransfer,
    Kind::GroupchatInvite,
];
pub(crate) const ALL_KINDS: u8 = 0b11_1111;

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Message => "message",
            Kind::Presence => "presence",
            Kind::Subscription => "subscription",
            Kind::Iq => "iq",
            Kind::FileTransfer => "file-transfer",
            Kind::GroupchatInvite => "groupchat-invite",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stream" => Some(Kind::Stream),
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "subscription" => Some(Kind::Subscription),
            "iq" => Some(Kind::Iq),
            "file-transfer" => Some(Kind::FileTransfer),
            "groupchat-invite" => Some(Kind::GroupchatInvite),
            _ => None,
        }
    }

    /// Bit in a rule's kind mask; 0 for `Stream` (handled apart).
    pub(crate) fn bit(self) -> u8 {
        match self {
            Kind::Stream => 0,
            Kind::Message => 1,
            Kind::Presence => 2,
            Kind::Subscription => 4,
            Kind::Iq => 8,
            Kind::FileTransfer => 16,
            Kind::GroupchatInvite => 32,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One question to the policy. `remote` is the remote JID (`user@domain/resource`, bare JID or
/// plain domain); `local` the local JID (used in explanations only). Addresses are matched in
/// their RFC 7622 canonical form (see [`fedgate_jid`]); a remote address without one is denied.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub remote: &'a str,
    pub local: &'a str,
    pub kind: Kind,
    pub direction: Direction,
}

/// A rule as the file names it: its id and the line of its `[[rule]]` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub id: String,
    pub line: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {})", self.id, self.line)
    }
}

/// A decision with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The deciding rule; `None` = the file's default.
    pub rule: Option<RuleRef>,
    /// For humans, e.g. "rule partners (line 12) allows message from partner.test (exact match)".
    pub reason: String,
}

/// The hot-path decision: no allocation. `rule` indexes [`Policy::rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastDecision {
    pub allow: bool,
    pub rule: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFloor {
    Required,
    Optional,
}

/// Transport, authentication and limits for one remote domain and direction. `None`/empty =
/// not set by the policy: the gateway config applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainSettings {
    pub tls: Option<TlsFloor>,
    pub auth_certificate: Option<bool>,
    pub auth_dialback: Option<bool>,
    /// Which certificate methods may prove the domain's identity: (pkix, dane, posh); set
    /// together with `auth_certificate`.
    pub auth_cert_methods: Option<(bool, bool, bool)>,
    /// Normalized `sha256:AB:CD:…` (uppercase hex, 32 bytes): the SHA-256 of the certificate
    /// or of its SubjectPublicKeyInfo.
    pub pins: Vec<String>,
    /// Trust anchors for this domain alone (PEM files); empty: the gateway's.
    pub trust_anchors: Vec<std::path::PathBuf>,
    pub protocol: Option<String>,
    pub max_stanza_bytes: Option<usize>,
    /// (stanzas per second, burst) of a token bucket.
    pub rate: Option<(f64, u32)>,
    pub max_streams: Option<u32>,
    /// The most specific matching rule that set at least one of the fields above.
    pub rule: Option<RuleRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding of the parser or lint, at the line:column (1-based; column in characters) of
/// the offending key or value. Read errors of a file are reported at 0:0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, sev, self.message
        )
    }
}

/// Settings a rule may carry for its domains (each `None` = not set by this rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuleSettings {
    pub tls: Option<TlsFloor>,
    /// (certificate, dialback)
    pub auth: Option<(bool, bool)>,
    /// (pkix, dane, posh): "certificate" stands for all three.
    pub cert_methods: (bool, bool, bool),
    pub pins: Option<Vec<String>>,
    /// CA certificates (PEM files) that replace the gateway's anchors for these domains.
    pub trust_anchors: Option<Vec<std::path::PathBuf>>,
    pub protocol: Option<String>,
    pub max_stanza_bytes: Option<usize>,
    pub rate: Option<(f64, u32)>,
    pub max_streams: Option<u32>,
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub rref: RuleRef,
    pub dir: u8,
    pub kinds: u8,
    pub allow_users: HashSet<Box<str>>,
    pub deny_users: HashSet<Box<str>>,
    pub settings: RuleSettings,
}

/// One rule under one index key, with what the hot path needs copied in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub rule: u32,
    pub deny: bool,
    pub dir: u8,
    pub kinds: u8,
    pub has_users: bool,
    /// Index into `Policy::groups` when the pattern came from a group.
    pub via_group: Option<u32>,
}

pub(crate) type Map<V> = HashMap<Box<str>, V, engine::IndexHash>;

/// A parsed, compiled policy. Immutable once built; `Send + Sync`; swap whole values on reload.
#[derive(Debug)]
pub struct Policy {
    pub(crate) default_allow: bool,
    pub(crate) default_line: usize,
    pub(crate) rules: Vec<Rule>,
    pub(crate) groups: Vec<String>,
    /// Exact domain → entries (deny first, then file order).
    pub(crate) exact: Map<Box<[Entry]>>,
    /// Wildcard suffix (`*.partner.test` → `partner.test`) → entries.
    pub(crate) wild: Map<Box<[Entry]>>,
    /// Most labels of any wildcard suffix: longer suffixes of a remote domain are not looked up.
    pub(crate) max_wild_labels: usize,
    pub(crate) revision: String,
    pub(crate) source: String,
}

impl Policy {
    /// Parse and compile. `Err` = at least one error (all errors found, sorted by position);
    /// `Ok` carries the warnings.
    pub fn parse(text: &str, file: &str) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        parse::parse(text, file)
    }

    /// Read and parse a file; a read error is one diagnostic at 0:0.
    pub fn load(path: &std::path::Path) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let file = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Policy::parse(&text, &file),
                Err(e) => Err(vec![Diagnostic {
                    file,
                    line: 0,
                    column: 0,
                    severity: Severity::Error,
                    message: format!("file is not UTF-8: {e}"),
                }]),
            },
            Err(e) => Err(vec![Diagnostic {
                file,
                line: 0,
                column: 0,
                severity: Severity::Error,
                message: format!("cannot read file: {e}"),
            }]),
        }
    }

    /// The policy in force when no file is configured: default allow, no rules.
    pub fn allow_all() -> Policy {
        Policy {
            default_allow: true,
            default_line: 0,
            rules: Vec::new(),
            groups: Vec::new(),
            exact: Map::default(),
            wild: Map::default(),
            max_wild_labels: 0,
            revision: text::sha256_hex(b""),
            source: "(no policy file: allow all)".to_string(),
        }
    }

    /// The decision with its explanation (builds the reason string).
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.explain(req)
    }

    /// The hot path: hash lookups per domain label, no allocation (unless the remote address
    /// is not in canonical form and must be brought into it; the gateway hands in canonical
    /// addresses).
    pub fn decide_fast(&self, req: &Request<'_>) -> FastDecision {
        let o = self.walk(req, None);
        FastDecision {
            allow: o.allow,
            rule: o.rule,
        }
    }

    /// The decision and why, naming the deciding rule and its line.
    pub fn explain(&self, req: &Request<'_>) -> Decision {
        engine::explain(self, req)
    }

    /// Transport/auth floor, pins, protocol and limits for a remote domain: each field from
    /// the most specific matching rule for that direction that sets it.
    pub fn domain_settings(&self, remote_domain: &str, direction: Direction) -> DomainSettings {
        engine::domain_settings(self, remote_domain, direction)
    }

    /// Hex SHA-256 of the file bytes.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The file name the policy was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The rule a [`FastDecision::rule`] names. Panics on an index not from this policy.
    pub fn rule(&self, index: u32) -> &RuleRef {
        &self.rules[index as usize].rref
    }

    /// The file's default action.
    pub fn default_allow(&self) -> bool {
        self.default_allow
    }

    /// The rule with this id, with its index.
    pub fn rule_by_id(&self, id: &str) -> Option<(u32, &RuleRef)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.rref.id == id)
            .map(|(i, r)| (i as u32, &r.rref))
    }
}

#[cfg(test)]
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
};
