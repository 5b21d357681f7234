//! Decisions from the compiled index: one hash lookup for the exact domain, then one per
//! wildcard suffix from the longest to the shortest. Never a scan of the rules.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};

use fedgate_jid::canonical;

use crate::text::split_jid;
use crate::{
    ALL_KINDS, DIR_IN, Decision, Direction, DomainSettings, Entry, Kind, Policy, RULE_KINDS,
    Request,
};

/// A small multiplicative hasher for the index. Keys come from the policy file; the remote
/// domain only ever looks up, so hash flooding would need the file's own author.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexHash;

impl BuildHasher for IndexHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0x243f_6a88_85a3_08d3)
    }
}

pub(crate) struct FastHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let mut tail = 0u64;
        for (i, b) in chunks.remainder().iter().enumerate() {
            tail |= u64::from(*b) << (i * 8);
        }
        h = (h.rotate_left(5) ^ tail ^ (bytes.len() as u64)).wrapping_mul(K);
        self.0 = h;
    }

    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        let h = self.0;
        (h ^ (h >> 29)).wrapping_mul(K) ^ (h >> 32)
    }
}

/// Where a candidate matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    None,
    Exact,
    /// Wildcard whose suffix starts at this byte offset of the (canonical) domain.
    Wild(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The remote address has no canonical form (RFC 7622): it cannot be matched safely.
    Malformed,
    UserDeny,
    UserAllow,
    DenyKind,
    AllowKind,
    AllowLacksKind,
    Default,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub allow: bool,
    pub rule: Option<u32>,
    pub why: Why,
    pub level: Level,
    pub via_group: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Direction,
    KindNotDenied,
}

/// What explain wants to know about candidates passed over.
#[derive(Default)]
pub(crate) struct Trace {
    skipped: Vec<(u32, Skip)>,
}

/// Index levels for a domain, most specific first: the exact entry, then wildcard suffixes
/// from the longest (at most `max_wild_labels` labels) to the shortest.
struct Levels<'p, 'd> {
    p: &'p Policy,
    d: &'d str,
    /// None = exact not yet tried; Some(offset) = next wildcard suffix; Some(usize::MAX) = done.
    next: Option<usize>,
}

impl<'p> Levels<'p, '_> {
    fn new<'d>(p: &'p Policy, d: &'d str) -> Levels<'p, 'd> {
        Levels { p, d, next: None }
    }
}

fn start_of_last_labels(d: &str, n: usize) -> usize {
    let mut count = 0;
    for (i, b) in d.bytes().enumerate().rev() {
        if b == b'.' {
            count += 1;
            if count == n {
                return i + 1;
            }
        }
    }
    0
}

impl<'p> Iterator for Levels<'p, '_> {
    type Item = (&'p [Entry], Level);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next {
                None => {
                    self.next = if self.p.max_wild_labels == 0 || self.d.is_empty() {
                        Some(usize::MAX)
                    } else {
                        Some(start_of_last_labels(self.d, self.p.max_wild_labels))
                    };
                    if let Some(e) = self.p.exact.get(self.d) {
                        return Some((e, Level::Exact));
                    }
                }
                Some(usize::MAX) => return None,
                Some(start) => {
                    let s = &self.d[start..];
                    self.next = Some(match s.find('.') {
                        Some(i) => start + i + 1,
                        None => usize::MAX,
                    });
                    if let Some(e) = self.p.wild.get(s) {
                        return Some((e, Level::Wild(start)));
                    }
                }
            }
        }
    }
}

impl Policy {
    /// Rules match canonical addresses (RFC 7622). The gateway hands in canonical addresses
    /// (it rewrites them where a stanza enters); any other caller's are brought into that form
    /// here (no allocation when already canonical), and an address without one is denied: a
    /// rule can never be sidestepped by writing an address another way.
    pub(crate) fn walk(&self, req: &Request<'_>, mut trace: Option<&mut Trace>) -> Outcome {
        let Ok(remote) = canonical(req.remote) else {
            return Outcome {
                allow: false,
                rule: None,
                why: Why::Malformed,
                level: Level::None,
                via_group: None,
            };
        };
        let (bare, domain) = split_jid(&remote);
        let dir = req.direction.bit();
        let user = if req.kind == Kind::Stream { None } else { bare };
        for (entries, level) in Levels::new(self, domain) {
            if let Some(o) = self.eval(entries, dir, req.kind, user, level, trace.as_deref_mut()) {
                return o;
            }
        }
        Outcome {
            allow: self.default_allow,
            rule: None,
            why: Why::Default,
            level: Level::None,
            via_group: None,
        }
    }

    fn eval(
        &self,
        entries: &[Entry],
        dir: u8,
        kind: Kind,
        user: Option<&str>,
        level: Level,
        mut trace: Option<&mut Trace>,
    ) -> Option<Outcome> {
        let mk = |e: &Entry, allow: bool, why: Why| Outcome {
            allow,
            rule: Some(e.rule),
            why,
            level,
            via_group: e.via_group,
        };
        if let Some(u) = user
            && entries.iter().any(|e| e.has_users && e.dir & dir != 0)
        {
            let with_users = || entries.iter().filter(|e| e.has_users && e.dir & dir != 0);
            for e in with_users() {
                if self.rules[e.rule as usize].deny_users.contains(u) {
                    return Some(mk(e, false, Why::UserDeny));
                }
            }
            for e in with_users() {
                if self.rules[e.rule as usize].allow_users.contains(u) {
                    return Some(mk(e, true, Why::UserAllow));
                }
            }
        }
        let kbit = kind.bit();
        let mut first_allow = None;
        for e in entries {
            if e.dir & dir == 0 {
                if let Some(t) = trace.as_deref_mut() {
                    t.skipped.push((e.rule, Skip::Direction));
                }
                continue;
            }
            if e.deny {
                let covers = if kind == Kind::Stream {
                    e.kinds == ALL_KINDS
                } else {
                    e.kinds & kbit != 0
                };
                if covers {
                    return Some(mk(e, false, Why::DenyKind));
                }
                if let Some(t) = trace.as_deref_mut() {
                    t.skipped.push((e.rule, Skip::KindNotDenied));
                }
            } else {
                if kind == Kind::Stream || e.kinds & kbit != 0 {
                    return Some(mk(e, true, Why::AllowKind));
                }
                first_allow.get_or_insert(e);
            }
        }
        first_allow.map(|e| mk(e, false, Why::AllowLacksKind))
    }
}

fn kinds_list(mask: u8) -> String {
    let v: Vec<&str> = RULE_KINDS
        .iter()
        .filter(|k| mask & k.bit() != 0)
        .map(|k| k.as_str())
        .collect();
    if v.is_empty() {
        "nothing".to_string()
    } else {
        v.join(", ")
    }
}

pub(crate) fn explain(p: &Policy, req: &Request<'_>) -> Decision {
    let remote = match canonical(req.remote) {
        Ok(r) => r,
        Err(e) => {
            return Decision {
                allow: false,
                rule: None,
                reason: format!(
                    "`{}` is not a valid XMPP address ({e}); denied before any rule",
                    req.remote
                ),
            };
        }
    };
    let mut trace = Trace::default();
    let o = p.walk(req, Some(&mut trace));
    let (bare, domain) = split_jid(&remote);
    let prep = match req.direction {
        Direction::Inbound => "from",
        Direction::Outbound => "to",
    };
    let what = match req.kind {
        Kind::Stream => "federation (stream)".to_string(),
        k => k.as_str().to_string(),
    };
    let how = {
        let mut h = match o.level {
            Level::Exact => "exact match".to_string(),
            Level::Wild(off) => format!("wildcard *.{}", &domain[off..]),
            Level::None => String::new(),
        };
        if let Some(g) = o.via_group {
            let _ = write!(h, " via group @{}", p.groups[g as usize]);
        }
        h
    };
    let rule = o.rule.map(|i| &p.rules[i as usize]);
    let head = rule.map(|r| format!("rule {} (line {})", r.rref.id, r.rref.line));
    let verb = if o.allow { "allows" } else { "denies" };
    let mut reason = match (o.why, rule, head) {
        (Why::Default | Why::Malformed, _, _) | (_, None, _) | (_, _, None) => {
            let src = if p.default_line == 0 {
                "no policy file".to_string()
            } else {
                format!("line {}", p.default_line)
            };
            format!(
                "no rule decides {} {what} {prep} {domain}; the default is {} ({src})",
                req.direction,
                if o.allow { "allow" } else { "deny" }
            )
        }
        (Why::UserDeny | Why::UserAllow, Some(_), Some(head)) => {
            let list = if o.why == Why::UserDeny {
                "deny_users"
            } else {
                "allow_users"
            };
            let user = bare.unwrap_or(domain);
            format!("{head} {verb} {what} {prep} {user}: listed in its {list} ({how})")
        }
        (Why::DenyKind, Some(r), Some(head)) => {
            let covers = if r.kinds == ALL_KINDS {
                "it denies every kind".to_string()
            } else {
                format!("it denies {}", kinds_list(r.kinds))
            };
            format!("{head} denies {what} {prep} {domain}: {covers} ({how})")
        }
        (Why::AllowKind, Some(_), Some(head)) => {
            format!("{head} allows {what} {prep} {domain} ({how})")
        }
        (Why::AllowLacksKind, Some(r), Some(head)) => format!(
            "{head} denies {what} {prep} {domain}: kind not allowed by rule {} (it allows {}) ({how})",
            r.rref.id,
            kinds_list(r.kinds)
        ),
    };
    append_passed_over(p, req.direction, &trace, &mut reason);
    Decision {
        allow: o.allow,
        rule: rule.map(|r| r.rref.clone()),
        reason,
    }
}

/// Appends "; passed over: …" notes for candidates that matched the domain but did not decide.
fn append_passed_over(p: &Policy, dir: Direction, trace: &Trace, reason: &mut String) {
    let mut seen = Vec::new();
    let mut notes = Vec::new();
    for (ri, why) in &trace.skipped {
        if seen.contains(ri) {
            continue;
        }
        seen.push(*ri);
        let r = &p.rules[*ri as usize];
        notes.push(match why {
            Skip::Direction => format!(
                "rule {} (line {}) matches the domain but only {}",
                r.rref.id,
                r.rref.line,
                if r.dir == DIR_IN {
                    "inbound"
                } else {
                    "outbound"
                }
            ),
            Skip::KindNotDenied => format!(
                "deny rule {} (line {}) matches {} but denies only {}",
                r.rref.id,
                r.rref.line,
                dir,
                kinds_list(r.kinds)
            ),
        });
    }
    if !notes.is_empty() {
        let _ = write!(reason, "; passed over: {}", notes.join("; "));
    }
}

pub(crate) fn domain_settings(p: &Policy, remote: &str, direction: Direction) -> DomainSettings {
    let Ok(remote) = canonical(remote) else {
        return DomainSettings::default();
    };
    let (_, domain) = split_jid(&remote);
    let dir = direction.bit();
    let mut out = DomainSettings::default();
    let mut pins_set = false;
    let mut ids: Vec<u32> = Vec::new();
    for (entries, _) in Levels::new(p, domain) {
        ids.clear();
        ids.extend(entries.iter().filter(|e| e.dir & dir != 0).map(|e| e.rule));
        ids.sort_unstable();
        for &ri in &ids {
            let r = &p.rules[ri as usize];
            let s = &r.settings;
            let mut contributed = false;
            if out.tls.is_none() && s.tls.is_some() {
                out.tls = s.tls;
                contributed = true;
            }
            if out.auth_certificate.is_none()
                && let Some((c, d)) = s.auth
            {
                out.auth_certificate = Some(c);
                out.auth_dialback = Some(d);
                out.auth_cert_methods = Some(s.cert_methods);
                contributed = true;
            }
            if !pins_set && let Some(pins) = &s.pins {
                out.pins = pins.clone();
                pins_set = true;
                contributed = true;
            }
            if out.trust_anchors.is_empty()
                && let Some(a) = &s.trust_anchors
            {
                out.trust_anchors = a.clone();
                contributed = true;
            }
            if out.protocol.is_none() && s.protocol.is_some() {
                out.protocol = s.protocol.clone();
                contributed = true;
            }
            if out.max_stanza_bytes.is_none() && s.max_stanza_bytes.is_some() {
                out.max_stanza_bytes = s.max_stanza_bytes;
                contributed = true;
            }
            if out.rate.is_none() && s.rate.is_some() {
                out.rate = s.rate;
                contributed = true;
            }
            if out.max_streams.is_none() && s.max_streams.is_some() {
                out.max_streams = s.max_streams;
                contributed = true;
            }
            if contributed && out.rule.is_none() {
                out.rule = Some(r.rref.clone());
            }
        }
    }
    out
}
