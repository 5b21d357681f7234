//! Small text helpers: positions, hashing, domain and JID syntax, suggestions.

use std::ops::Range;

use crate::{Diagnostic, Severity};

/// Byte offsets → 1-based line:column (column counted in characters).
pub(crate) struct Source<'a> {
    pub text: &'a str,
    pub file: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str, file: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            text,
            file,
            line_starts,
        }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start);
        (line + 1, column + 1)
    }

    pub fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    pub fn diag(&self, span: &Range<usize>, severity: Severity, message: String) -> Diagnostic {
        let (line, column) = self.line_col(span.start);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            severity,
            message,
        }
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks a domain name (already lowercased); `Err` says what is wrong.
pub(crate) fn check_domain(d: &str) -> Result<(), String> {
    if d.is_empty() {
        return Err("empty domain name".into());
    }
    if d.contains('@') || d.contains('/') {
        return Err(format!(
            "`{d}` is not a domain name (looks like a JID; put users in allow_users/deny_users)"
        ));
    }
    if d.ends_with('.') {
        return Err(format!("`{d}`: trailing dot; write the name without it"));
    }
    if d.starts_with('.') {
        return Err(format!("`{d}`: leading dot; for a wildcard write `*{d}`"));
    }
    if d.len() > 253 {
        return Err(format!("`{d}`: longer than 253 bytes"));
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(format!("`{d}`: empty label (`..`)"));
        }
        if label.len() > 63 {
            return Err(format!("`{d}`: label `{label}` longer than 63 bytes"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "`{d}`: label `{label}` may not start or end with `-`"
            ));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_alphanumeric() || *c == '-')) {
            return Err(format!(
                "`{d}`: character `{c}` is not allowed in a domain name"
            ));
        }
    }
    Ok(())
}

/// Splits a canonical JID into (bare JID if it has a localpart, domainpart). The resource is
/// dropped.
pub(crate) fn split_jid(jid: &str) -> (Option<&str>, &str) {
    let bare = fedgate_jid::bare_of(jid);
    let node = fedgate_jid::local_of(jid).is_some();
    (node.then_some(bare), fedgate_jid::domain_of(jid))
}

/// Levenshtein distance, for "did you mean" suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(crate) fn suggest<'a>(word: &str, choices: &[&'a str]) -> Option<&'a str> {
    choices
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "unknown key `acton` (did you mean `action`? expected one of: a, b)".
pub(crate) fn unknown_msg(what: &str, word: &str, choices: &[&str]) -> String {
    let list = choices.join(", ");
    match suggest(word, choices) {
        Some(s) => format!("unknown {what} `{word}` (did you mean `{s}`? expected one of: {list})"),
        None => format!("unknown {what} `{word}` (expected one of: {list})"),
    }
}
