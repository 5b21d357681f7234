//! Where a cluster's own users come from: the directory file, the LDAP source and admin
//! assignments. Each source gives a set of (user, epoch); the own origin is their union, the
//! highest epoch winning when two sources name the same user.
//!
//! Directory file format: one bare JID per line, optionally followed by whitespace and an
//! ownership epoch (default 1); `#` starts a comment; blank lines are ignored. JIDs are
//! lowercased.

use std::collections::{BTreeMap, HashMap};

/// The source name of admin assignments (`fedgate directory assign`).
pub const ADMIN: &str = "admin";

/// The epoch of a user listed without one.
pub const DEFAULT_EPOCH: u64 = 1;

/// A line of a directory file that is not a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("line {line}: '{text}' is not a bare JID (user@domain)")]
    BadJid { line: usize, text: String },
    #[error("line {line}: '{text}' is not an epoch (a positive integer)")]
    BadEpoch { line: usize, text: String },
    #[error("line {line}: unexpected '{text}' after the epoch")]
    Trailing { line: usize, text: String },
}

/// Whether `s` is a bare JID with a localpart (`local@domain`, no resource) that has a
/// canonical form (RFC 7622).
pub fn is_bare_jid(s: &str) -> bool {
    canonical_user(s).is_some()
}

/// The canonical form (RFC 7622, see [`fedgate_jid`]) of a user's bare JID; `None` when `s`
/// has no localpart, has a resource or is malformed. Directory keys are always in this form.
pub fn canonical_user(s: &str) -> Option<String> {
    let j = fedgate_jid::Jid::parse(s).ok()?;
    (j.local().is_some() && j.is_bare()).then(|| j.into_string())
}

/// [`canonical_user`], or `s` lower-cased when it has no canonical form (it then matches no
/// directory entry).
pub fn user_key(s: &str) -> String {
    canonical_user(s).unwrap_or_else(|| s.to_lowercase())
}

/// Parses a directory file.
pub fn parse_user_file(text: &str) -> Result<HashMap<String, u64>, SourceError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut words = content.split_whitespace();
        let raw = words.next().unwrap_or_default();
        let Some(jid) = canonical_user(raw) else {
            return Err(SourceError::BadJid {
                line,
                text: raw.to_owned(),
            });
        };
        let epoch = match words.next() {
            None => DEFAULT_EPOCH,
            Some(w) => match w.parse::<u64>() {
                Ok(e) if e > 0 => e,
                _ => {
                    return Err(SourceError::BadEpoch {
                        line,
                        text: w.to_owned(),
                    });
                }
            },
        };
        if let Some(extra) = words.next() {
            return Err(SourceError::Trailing {
                line,
                text: extra.to_owned(),
            });
        }
        let e = out.entry(jid).or_insert(epoch);
        *e = (*e).max(epoch);
    }
    Ok(out)
}

/// Writes `users` in the directory file format (sorted, one `jid epoch` per line) after the
/// comment lines of `header`; [`parse_user_file`] reads it back.
pub fn format_user_file(header: &str, users: &HashMap<String, u64>) -> String {
    let mut out: String = header.lines().map(|l| format!("# {l}\n")).collect();
    let mut sorted: Vec<_> = users.iter().collect();
    sorted.sort();
    for (u, e) in sorted {
        out.push_str(&format!("{u} {e}\n"));
    }
    out
}

/// The user sets of every source, by source name ("file", "ldap", "admin").
#[derive(Debug, Clone, Default)]
pub struct Sources {
    by_source: BTreeMap<String, HashMap<String, u64>>,
}

impl Sources {
    /// Replaces what `source` provides.
    pub fn set(&mut self, source: &str, users: HashMap<String, u64>) {
        self.by_source.insert(source.to_owned(), users);
    }

    /// What `source` provides (empty if nothing).
    pub fn get(&self, source: &str) -> HashMap<String, u64> {
        self.by_source.get(source).cloned().unwrap_or_default()
    }

    /// Adds or changes one user of `source`.
    pub fn put(&mut self, source: &str, user: &str, epoch: u64) {
        self.by_source
            .entry(source.to_owned())
            .or_default()
            .insert(user_key(user), epoch);
    }

    /// Removes one user of `source`; whether it was there.
    pub fn remove(&mut self, source: &str, user: &str) -> bool {
        self.by_source
            .get_mut(source)
            .is_some_and(|m| m.remove(&user_key(user)).is_some())
    }

    /// The union, highest epoch per user.
    pub fn merged(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for users in self.by_source.values() {
            for (u, e) in users {
                let v = out.entry(u.clone()).or_insert(*e);
                *v = (*v).max(*e);
            }
        }
        out
    }

    /// Number of users per source.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.by_source
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_file_has_jids_optional_epochs_and_comments() {
        let text = "# tokyo's users\n\nAlice@Example.test\nbob@example.test 3  # moved here\n  carol@example.test\t2\nalice@example.test 2\n";
        let u = parse_user_file(text).unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(u["alice@example.test"], 2);
        assert_eq!(u["bob@example.test"], 3);
        assert_eq!(u["carol@example.test"], 2);
    }

    #[test]
    fn directory_users_are_read_in_canonical_form() {
        // One user however it is written: case, fullwidth letters, A-label, trailing dot.
        let text = "ａｌｉｃｅ@XN--BCHER-KVA.example. 2\nAlice@bücher.example 5\n";
        let u = parse_user_file(text).unwrap();
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u["alice@bücher.example"], 5);
        assert_eq!(
            parse_user_file("a b@x.test\n"),
            Err(SourceError::BadJid {
                line: 1,
                text: "a".into()
            }),
            "whitespace ends the JID"
        );
        assert!(matches!(
            parse_user_file("☃@x.test\n"),
            Err(SourceError::BadJid { line: 1, .. })
        ));
        assert_eq!(
            crate::routing::bare_user("Alice@Bücher.example/desk").as_deref(),
            Some("alice@bücher.example")
        );
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse_user_file("a@x\nexample.test\n"),
            Err(SourceError::BadJid {
                line: 2,
                text: "example.test".into()
            })
        );
        assert_eq!(
            parse_user_file("a@x/res\n"),
            Err(SourceError::BadJid {
                line: 1,
                text: "a@x/res".into()
            })
        );
        assert_eq!(
            parse_user_file("a@x zero\n"),
            Err(SourceError::BadEpoch {
                line: 1,
                text: "zero".into()
            })
        );
        assert_eq!(
            parse_user_file("a@x 0\n"),
            Err(SourceError::BadEpoch {
                line: 1,
                text: "0".into()
            })
        );
        assert_eq!(
            parse_user_file("a@x 1 2\n"),
            Err(SourceError::Trailing {
                line: 1,
                text: "2".into()
            })
        );
    }

    #[test]
    fn sources_merge_with_the_highest_epoch() {
        let mut s = Sources::default();
        s.set(
            "file",
            HashMap::from([("a@x".into(), 1), ("b@x".into(), 1)]),
        );
        s.set(
            "ldap",
            HashMap::from([("b@x".into(), 1), ("c@x".into(), 1)]),
        );
        s.put("admin", "A@X", 5);
        let m = s.merged();
        assert_eq!(m.len(), 3);
        assert_eq!(m["a@x"], 5);
        assert_eq!(s.get("admin"), HashMap::from([("a@x".to_owned(), 5)]));
        assert!(s.remove("admin", "a@x"));
        assert!(!s.remove("admin", "a@x"));
        assert_eq!(s.merged()["a@x"], 1);
        assert_eq!(s.counts()["ldap"], 2);
    }

    #[test]
    fn a_written_user_file_reads_back_the_same() {
        let users = HashMap::from([
            ("zed@example.test".to_owned(), 7),
            ("alice@example.test".to_owned(), 1),
        ]);
        let text = format_user_file("written by fedgate\nsecond line", &users);
        assert_eq!(
            text,
            "# written by fedgate\n# second line\nalice@example.test 1\nzed@example.test 7\n"
        );
        assert_eq!(parse_user_file(&text).unwrap(), users);
        assert!(
            parse_user_file(&format_user_file("x", &HashMap::new()))
                .unwrap()
                .is_empty()
        );
    }
}
