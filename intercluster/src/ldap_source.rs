//! LDAP user source: the list of users this cluster hosts, read from a directory server.
//!
//! [`fetch_users`] connects to `url` (plain `ldap://` only, see below), binds with `bind_dn`
//! and the password read from `bind_password_file` (or stays anonymous when both are absent),
//! and runs one subtree search under `base` with `filter`, asking only for `attribute`. The
//! search uses the simple paged results control (RFC 2696) with `page_size` entries per page,
//! so directories larger than the server's per-search size limit (slapd: 500) are read in full.
//!
//! Each value of `attribute` becomes one bare JID, lowercased: a value with an `@` is taken as
//! a full bare JID (when `domain` is configured its domain must be that domain); a value
//! without `@` gets `@domain` appended. Values that are not valid bare JIDs (whitespace, a
//! resource part, characters RFC 7622 forbids in a localpart, no `@` and no `domain`, binary
//! values, ...) are reported in [`LdapUsers::skipped`] with the entry's DN and the reason; they
//! are never fatal. Any failure of the search itself (including a size or time limit hit by
//! the server) is an error: a partial list is never returned, since a caller that trusted a
//! truncated list would un-home the missing users.
//!
//! `timeout_secs` bounds every single wait: connecting, the bind, and each read from the
//! search (so a large directory may take longer in total, as long as pages keep coming).
//!
//! Limitations: no TLS (`ldaps://`, StartTLS) in-process; reach a TLS-only server through a
//! TLS-terminating proxy on loopback (e.g. stunnel). No Unicode normalization (NFC) of values
//! beyond lowercasing. Referrals (continuation references) are not followed; they are listed
//! in `skipped`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ldap3::adapters::PagedResults;
use ldap3::asn1::{PL, StructureTag, TagClass};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapResult, Scope};
use serde::Deserialize;

/// Where and how to read this cluster's users from LDAP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSourceConfig {
    /// Server URL, `ldap://host:port` (e.g. `ldap://127.0.4.2:3890`).
    pub url: String,
    /// DN to bind as; `None` (together with no password file) searches anonymously.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// File holding the bind password (one line; a trailing newline is ignored).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Search base, e.g. `ou=people,dc=example,dc=test` (subtree scope).
    pub base: String,
    /// Search filter, e.g. `(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))`.
    pub filter: String,
    /// Attribute holding the IM address (`mail`) or the bare user id (`uid`, with `domain`).
    pub attribute: String,
    /// Domain appended to values without `@`; also the only domain accepted in values with `@`.
    #[serde(default)]
    pub domain: Option<String>,
    /// Longest single wait (connect, bind, each search read), in seconds. Default 10.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Entries per page of the paged results control. Default 500.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_timeout_secs() -> u64 {
    10
}

fn default_page_size() -> u32 {
    500
}

/// Result of one fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LdapUsers {
    /// Lowercase bare JIDs, sorted, without duplicates.
    pub users: Vec<String>,
    /// `(dn, why)` for every value (or referral) that did not become a user.
    pub skipped: Vec<(String, String)>,
}

/// The step of a fetch that timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LdapStep {
    Connect,
    Bind,
    Search,
}

impl std::fmt::Display for LdapStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LdapStep::Connect => "connect",
            LdapStep::Bind => "bind",
            LdapStep::Search => "search",
        })
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LdapSourceError {
    #[error("LDAP source: cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("LDAP source: bind as {dn:?} failed: {reason}")]
    Bind { dn: String, reason: String },
    #[error("LDAP source: search under {base:?} with filter {filter} failed: {reason}")]
    Search {
        base: String,
        filter: String,
        reason: String,
    },
    #[error("LDAP source: {step} on {url} got no answer within {secs} s (timeout_secs)")]
    Timeout {
        url: String,
        step: LdapStep,
        secs: u64,
    },
    #[error("LDAP source config: {0}")]
    Config(String),
}

impl LdapSourceConfig {
    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), LdapSourceError> {
        let bad = |m: String| Err(LdapSourceError::Config(m));
        let scheme = self
            .url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("ldap") => {}
            Some("ldaps") => {
                return bad(format!(
                    "url {:?}: ldaps:// is not supported; use ldap:// through a \
                     TLS-terminating proxy on loopback",
                    self.url
                ));
            }
            _ => return bad(format!("url {:?} must be ldap://host:port", self.url)),
        }
        let authority = &self.url["ldap://".len()..];
        let host = authority.split(['/', '?']).next().unwrap_or_default();
        if host.is_empty() {
            return bad(format!("url {:?} has no host", self.url));
        }
        if self.base.trim().is_empty() {
            return bad("base must not be empty".into());
        }
        if ldap3::parse_filter(&self.filter).is_err() {
            return bad(format!(
                "filter {:?} is not a valid LDAP filter",
                self.filter
            ));
        }
        let attr_ok = !self.attribute.is_empty()
            && self
                .attribute
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ';');
        if !attr_ok {
            return bad(format!(
                "attribute {:?} is not an LDAP attribute name",
                self.attribute
            ));
        }
        if let Some(domain) = &self.domain
            && let Err(why) = check_domain(domain)
        {
            return bad(format!("domain {domain:?}: {why}"));
        }
        match (&self.bind_dn, &self.bind_password_file) {
            (Some(_), Some(_)) | (None, None) => {}
            (Some(dn), None) => {
                return bad(format!(
                    "bind_dn {dn:?} needs bind_password_file (an empty password would be an \
                     unauthenticated bind)"
                ));
            }
            (None, Some(p)) => {
                return bad(format!(
                    "bind_password_file {} given without bind_dn",
                    p.display()
                ));
            }
        }
        if self.timeout_secs == 0 {
            return bad("timeout_secs must be at least 1".into());
        }
        if self.page_size == 0 || i32::try_from(self.page_size).is_err() {
            return bad(format!(
                "page_size {} must be between 1 and {}",
                self.page_size,
                i32::MAX
            ));
        }
        Ok(())
    }
}

/// Reads the users selected by `cfg` from the directory.
pub async fn fetch_users(cfg: &LdapSourceConfig) -> Result<LdapUsers, LdapSourceError> {
    cfg.validate()?;
    let password = match &cfg.bind_password_file {
        Some(path) => Some(read_password(path).await?),
        None => None,
    };
    let limit = Duration::from_secs(cfg.timeout_secs);
    let timeout = |step| LdapSourceError::Timeout {
        url: cfg.url.clone(),
        step,
        secs: cfg.timeout_secs,
    };
    let search_err = |reason: String| LdapSourceError::Search {
        base: cfg.base.clone(),
        filter: cfg.filter.clone(),
        reason,
    };

    let connect = LdapConnAsync::with_settings(LdapConnSettings::new(), &cfg.url);
    let (conn, mut ldap) = tokio::time::timeout(limit, connect)
        .await
        .map_err(|_| timeout(LdapStep::Connect))?
        .map_err(|e| LdapSourceError::Connect {
            url: cfg.url.clone(),
            reason: e.to_string(),
        })?;
    let url = cfg.url.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(url, error = %e, "LDAP connection ended with an error");
        }
    });

    if let (Some(dn), Some(password)) = (&cfg.bind_dn, &password) {
        let bind_err = |reason: String| LdapSourceError::Bind {
            dn: dn.clone(),
            reason,
        };
        let res = tokio::time::timeout(limit, ldap.simple_bind(dn, password))
            .await
            .map_err(|_| timeout(LdapStep::Bind))?
            .map_err(|e| bind_err(e.to_string()))?;
        if res.rc != 0 {
            return Err(bind_err(describe(&res)));
        }
    }

    // i32 range checked by validate().
    let page_size = i32::try_from(cfg.page_size).unwrap_or(i32::MAX);
    let attrs = vec![cfg.attribute.clone()];
    let mut stream = tokio::time::timeout(
        limit,
        ldap.streaming_search_with(
            PagedResults::new(page_size),
            &cfg.base,
            Scope::Subtree,
            &cfg.filter,
            attrs,
        ),
    )
    .await
    .map_err(|_| timeout(LdapStep::Search))?
    .map_err(|e| search_err(e.to_string()))?;

    let mut collector = Collector::new(cfg.domain.as_deref());
    loop {
        let item = tokio::time::timeout(limit, stream.next())
            .await
            .map_err(|_| timeout(LdapStep::Search))?
            .map_err(|e| search_err(e.to_string()))?;
        let Some(entry) = item else { break };
        if entry.is_intermediate() {
            continue;
        }
        if entry.is_ref() {
            let urls = ldap3::parse_refs(entry.0);
            collector.skip(
                "(continuation reference)",
                format!("referral to {} not followed", urls.join(" ")),
            );
            continue;
        }
        match entry_values(entry.0) {
            Ok((dn, values)) => collector.add_entry(&dn, values),
            Err(why) => collector.skip("(unparsable entry)", why),
        }
    }
    let done = tokio::time::timeout(limit, stream.finish())
        .await
        .map_err(|_| timeout(LdapStep::Search))?;
    if done.rc != 0 {
        return Err(search_err(describe(&done)));
    }
    // Best effort: the result is complete; a slow unbind changes nothing.
    let _ = tokio::time::timeout(Duration::from_secs(1), ldap.unbind()).await;

    let users = collector.finish();
    tracing::debug!(
        url = cfg.url,
        users = users.users.len(),
        skipped = users.skipped.len(),
        "LDAP user source fetched"
    );
    Ok(users)
}

async fn read_password(path: &std::path::Path) -> Result<String, LdapSourceError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        LdapSourceError::Config(format!(
            "cannot read bind_password_file {}: {e}",
            path.display()
        ))
    })?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(LdapSourceError::Config(format!(
            "bind_password_file {} is empty",
            path.display()
        )));
    }
    Ok(password.to_owned())
}

/// `invalidCredentials (49): <server text>`.
fn describe(res: &LdapResult) -> String {
    // LdapResult's Display is `rc=49 (invalidCredentials), dn: "", text: "..."`.
    let name = res
        .to_string()
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mut out = format!("{name} (result code {})", res.rc);
    if !res.text.is_empty() {
        out.push_str(": ");
        out.push_str(&res.text);
    }
    if !res.matched.is_empty() {
        out.push_str(&format!(" (matched DN {:?})", res.matched));
    }
    out
}

/// DN and all attribute values of a SearchResultEntry (`[APPLICATION 4] SEQUENCE { objectName,
/// attributes SEQUENCE OF { type, vals SET OF value } }`), without panicking on bad input.
/// Only the requested attribute was asked for, so every returned value belongs to it.
fn entry_values(tag: StructureTag) -> Result<(String, Vec<Vec<u8>>), String> {
    if tag.class != TagClass::Application || tag.id != 4 {
        return Err(format!("not a search result entry (tag {})", tag.id));
    }
    let PL::C(parts) = tag.payload else {
        return Err("search result entry is not constructed".into());
    };
    let mut parts = parts.into_iter();
    let dn = match parts.next().map(|t| t.payload) {
        Some(PL::P(bytes)) => {
            String::from_utf8(bytes).map_err(|_| "entry DN is not UTF-8".to_owned())?
        }
        _ => return Err("search result entry has no DN".into()),
    };
    let mut values = Vec::new();
    if let Some(PL::C(attributes)) = parts.next().map(|t| t.payload) {
        for attribute in attributes {
            let PL::C(fields) = attribute.payload else {
                return Err(format!("entry {dn:?}: malformed attribute"));
            };
            match fields.into_iter().nth(1).map(|t| t.payload) {
                Some(PL::C(vals)) => {
                    for v in vals {
                        match v.payload {
                            PL::P(bytes) => values.push(bytes),
                            PL::C(_) => return Err(format!("entry {dn:?}: malformed value")),
                        }
                    }
                }
                _ => return Err(format!("entry {dn:?}: attribute without a value set")),
            }
        }
    }
    Ok((dn, values))
}

/// Turns entries into the sorted, deduplicated user list plus the skip report.
struct Collector {
    /// Lowercased configured domain.
    domain: Option<String>,
    /// JID → DN of the first entry that provided it.
    users: BTreeMap<String, String>,
    skipped: Vec<(String, String)>,
}

impl Collector {
    fn new(domain: Option<&str>) -> Self {
        Collector {
            domain: domain.map(str::to_lowercase),
            users: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    fn skip(&mut self, dn: &str, why: String) {
        self.skipped.push((dn.to_owned(), why));
    }

    fn add_entry(&mut self, dn: &str, values: Vec<Vec<u8>>) {
        if values.is_empty() {
            self.skip(dn, "entry has no value for the configured attribute".into());
            return;
        }
        for raw in values {
            let Ok(value) = String::from_utf8(raw) else {
                self.skip(dn, "value is not UTF-8 text".into());
                continue;
            };
            match jid_from_value(&value, self.domain.as_deref()) {
                Ok(jid) => match self.users.get(&jid) {
                    Some(first) if first != dn => {
                        let why = format!("{value:?}: {jid} is already provided by {first:?}");
                        self.skip(dn, why);
                    }
                    Some(_) => {}
                    None => {
                        self.users.insert(jid, dn.to_owned());
                    }
                },
                Err(why) => self.skip(dn, format!("{value:?}: {why}")),
            }
        }
    }

    fn finish(self) -> LdapUsers {
        LdapUsers {
            users: self.users.into_keys().collect(),
            skipped: self.skipped,
        }
    }
}

/// Characters RFC 7622 (section 3.3.1) forbids in a localpart, besides whitespace/controls.
const LOCALPART_FORBIDDEN: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];
const MAX_PART_BYTES: usize = 1023;

/// One attribute value → lowercase bare JID, or why not. `domain` must be lowercase.
fn jid_from_value(value: &str, domain: Option<&str>) -> Result<String, String> {
    if value.is_empty() {
        return Err("empty value".into());
    }
    if value.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if value.contains('/') {
        return Err("contains '/' (a resource part; only bare JIDs are accepted)".into());
    }
    let (local, dom) = match value.split_once('@') {
        Some((local, dom)) => {
            if dom.contains('@') {
                return Err("contains more than one '@'".into());
            }
            let canon = |d: &str| {
                fedgate_jid::canonical_domain(d)
                    .map_or_else(|_| d.to_lowercase(), std::borrow::Cow::into_owned)
            };
            let dom = canon(dom);
            if let Some(expected) = domain
                && dom != canon(expected)
            {
                return Err(format!(
                    "domain {dom:?} is not the configured domain {expected:?}"
                ));
            }
            (local, dom)
        }
        None => match domain {
            Some(d) => (value, d.to_owned()),
            None => return Err("no '@' and no domain configured to append".into()),
        },
    };
    if local.is_empty() {
        return Err("empty localpart".into());
    }
    if local.len() > MAX_PART_BYTES {
        return Err(format!("localpart longer than {MAX_PART_BYTES} bytes"));
    }
    if let Some(c) = local.chars().find(|c| LOCALPART_FORBIDDEN.contains(c)) {
        return Err(format!("localpart contains {c:?}, not allowed in a JID"));
    }
    check_domain(&dom)?;
    // The canonical form (RFC 7622) the directory and every link compare.
    fedgate_jid::Jid::from_parts(Some(local), &dom, None)
        .map(fedgate_jid::Jid::into_string)
        .map_err(|e| e.to_string())
}

/// A DNS-style domain part: dot-separated non-empty labels of letters, digits and '-'.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain".into());
    }
    if domain.len() > MAX_PART_BYTES {
        return Err(format!("domain longer than {MAX_PART_BYTES} bytes"));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(format!("domain {domain:?} has an empty label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("domain label {label:?} starts or ends with '-'"));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_alphanumeric() || *c == '-')) {
            return Err(format!("domain {domain:?} contains {c:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LdapSourceConfig {
        serde_json::from_str(
            r#"{"url":"ldap://127.0.4.2:3890","base":"ou=people,dc=example,dc=test",
                "filter":"(objectClass=inetOrgPerson)","attribute":"mail"}"#,
        )
        .expect("minimal config parses")
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let c = cfg();
        assert_eq!(c.timeout_secs, 10);
        assert_eq!(c.page_size, 500);
        assert_eq!(c.bind_dn, None);
        assert_eq!(c.domain, None);
        c.validate().expect("minimal config is valid");
        let err = serde_json::from_str::<LdapSourceConfig>(
            r#"{"url":"ldap://h","base":"b","filter":"(a=b)","attribute":"mail","bind_pw":"x"}"#,
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("bind_pw"), "{err}");
    }

    fn config_error(c: &LdapSourceConfig) -> String {
        match c.validate() {
            Err(LdapSourceError::Config(m)) => m,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let mut c = cfg();
        c.url = "ldaps://127.0.4.2:636".into();
        assert!(config_error(&c).contains("ldaps:// is not supported"));
        c.url = "http://x".into();
        assert!(config_error(&c).contains("must be ldap://"));
        c.url = "ldap://".into();
        assert!(config_error(&c).contains("no host"));

        let mut c = cfg();
        c.filter = "(&(uid=a)".into();
        assert!(config_error(&c).contains("not a valid LDAP filter"));

        let mut c = cfg();
        c.bind_dn = Some("cn=svc,dc=example,dc=test".into());
        assert!(config_error(&c).contains("needs bind_password_file"));
        c.bind_dn = None;
        c.bind_password_file = Some("/run/pw".into());
        assert!(config_error(&c).contains("without bind_dn"));

        let mut c = cfg();
        c.page_size = 0;
        assert!(config_error(&c).contains("page_size"));
        c.page_size = u32::MAX;
        assert!(config_error(&c).contains("page_size"));

        let mut c = cfg();
        c.timeout_secs = 0;
        assert!(config_error(&c).contains("timeout_secs"));

        let mut c = cfg();
        c.domain = Some("example..test".into());
        assert!(config_error(&c).contains("empty label"));

        let mut c = cfg();
        c.attribute = "mail address".into();
        assert!(config_error(&c).contains("attribute"));
    }

    #[test]
    fn values_become_lowercase_bare_jids() {
        assert_eq!(
            jid_from_value("Alice@Example.TEST", None),
            Ok("alice@example.test".into())
        );
        assert_eq!(
            jid_from_value("Bob", Some("example.test")),
            Ok("bob@example.test".into())
        );
        assert_eq!(
            jid_from_value("bob@EXAMPLE.test", Some("example.test")),
            Ok("bob@example.test".into())
        );
    }

    #[test]
    fn invalid_values_give_a_reason() {
        let why = |v: &str, d: Option<&str>| jid_from_value(v, d).expect_err(v);
        assert!(why("alice", None).contains("no '@'"));
        assert!(why("al ice@example.test", None).contains("whitespace"));
        assert!(why("alice@example.test/phone", None).contains("resource"));
        assert!(why("a@b@example.test", None).contains("more than one '@'"));
        assert!(why("@example.test", None).contains("empty localpart"));
        assert!(why("alice@", None).contains("empty domain"));
        assert!(why("a<b@example.test", None).contains("'<'"));
        assert!(why("alice@example.test:5222", None).contains("':'"));
        assert!(why("alice@corp.example", Some("example.test")).contains("configured domain"));
        assert!(why("", Some("example.test")).contains("empty value"));
        assert!(why("a\u{7}b", Some("example.test")).contains("control"));
        let long = "a".repeat(MAX_PART_BYTES + 1);
        assert!(why(&long, Some("example.test")).contains("longer than"));
    }

    #[test]
    fn collector_sorts_dedups_and_reports_skips() {
        let mut c = Collector::new(Some("Example.Test"));
        c.add_entry("uid=b,dc=t", vec![b"Bob".to_vec()]);
        c.add_entry("uid=a,dc=t", vec![b"alice".to_vec(), b"ALICE".to_vec()]);
        c.add_entry("uid=a2,dc=t", vec![b"alice".to_vec()]);
        c.add_entry("uid=x,dc=t", vec![b"x y".to_vec(), vec![0xff, 0xfe]]);
        c.add_entry("uid=e,dc=t", vec![]);
        let out = c.finish();
        assert_eq!(out.users, ["alice@example.test", "bob@example.test"]);
        let dns: Vec<&str> = out.skipped.iter().map(|(dn, _)| dn.as_str()).collect();
        assert_eq!(
            dns,
            ["uid=a2,dc=t", "uid=x,dc=t", "uid=x,dc=t", "uid=e,dc=t"]
        );
        assert!(
            out.skipped[0]
                .1
                .contains("already provided by \"uid=a,dc=t\"")
        );
        assert!(out.skipped[1].1.contains("whitespace"));
        assert!(out.skipped[2].1.contains("not UTF-8"));
        assert!(out.skipped[3].1.contains("no value"));
    }

    fn prim(id: u64, bytes: &[u8]) -> StructureTag {
        StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::P(bytes.to_vec()),
        }
    }

    fn cons(class: TagClass, id: u64, inner: Vec<StructureTag>) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::C(inner),
        }
    }

    #[test]
    fn entry_values_reads_dn_and_values_and_rejects_malformed_entries() {
        let attr = cons(
            TagClass::Universal,
            16,
            vec![
                prim(4, b"mail"),
                cons(
                    TagClass::Universal,
                    17,
                    vec![prim(4, b"a@x.test"), prim(4, b"b@x.test")],
                ),
            ],
        );
        let entry = cons(
            TagClass::Application,
            4,
            vec![
                prim(4, b"uid=a,dc=x"),
                cons(TagClass::Universal, 16, vec![attr]),
            ],
        );
        let (dn, values) = entry_values(entry).expect("well-formed entry");
        assert_eq!(dn, "uid=a,dc=x");
        assert_eq!(values, [b"a@x.test".to_vec(), b"b@x.test".to_vec()]);

        let no_attrs = cons(TagClass::Application, 4, vec![prim(4, b"uid=a,dc=x")]);
        assert_eq!(entry_values(no_attrs).expect("no attributes").1.len(), 0);

        let wrong_tag = cons(TagClass::Application, 5, vec![]);
        assert!(entry_values(wrong_tag).is_err());
        let no_dn = cons(TagClass::Application, 4, vec![]);
        assert!(entry_values(no_dn).unwrap_err().contains("no DN"));
        let bad_attr = cons(
            TagClass::Application,
            4,
            vec![
                prim(4, b"uid=a,dc=x"),
                cons(TagClass::Universal, 16, vec![prim(4, b"mail")]),
            ],
        );
        assert!(entry_values(bad_attr).unwrap_err().contains("malformed"));
    }

    #[tokio::test]
    async fn password_file_problems_are_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg();
        c.bind_dn = Some("cn=svc,dc=example,dc=test".into());
        c.bind_password_file = Some(dir.path().join("missing"));
        match fetch_users(&c).await {
            Err(LdapSourceError::Config(m)) => assert!(m.contains("cannot read"), "{m}"),
            other => panic!("expected Config, got {other:?}"),
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        c.bind_password_file = Some(empty);
        match fetch_users(&c).await {
            Err(LdapSourceError::Config(m)) => assert!(m.contains("is empty"), "{m}"),
            other => panic!("expected Config, got {other:?}"),
        }
        let good = dir.path().join("pw");
        std::fs::write(&good, "s3cret\r\n").expect("write");
        assert_eq!(read_password(&good).await.expect("read"), "s3cret");
    }
}
