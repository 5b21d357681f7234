//! What every node of a cluster must agree on, and the differences named: the dialback secret
//! (compared as a keyed hash, never the secret itself), the hosted names (domains and their
//! aliases) and the policy revision. The intercluster consistency digest is the model; here
//! the facts are compared one by one so that a refusal can say which one differs.

use std::collections::BTreeSet;

use ring::hmac;
use serde::{Deserialize, Serialize};

/// The label the dialback secret is keyed over: the keyed hash identifies the secret without
/// revealing it, and it is no dialback key (those are over `receiving originating id`).
const SECRET_LABEL: &[u8] = b"fedgate cluster consistency/1";

/// The facts a node publishes with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// HMAC-SHA256 (hex) of a fixed label, keyed with the dialback secret.
    pub dialback_secret: String,
    /// Hosted names (domains and aliases), sorted.
    pub domains: Vec<String>,
    /// The active policy's revision (SHA-256 of the file).
    pub policy_revision: String,
}

impl Facts {
    pub fn new(dialback_secret: &str, domains: &[String], policy_revision: &str) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, dialback_secret.as_bytes());
        let tag = hmac::sign(&key, SECRET_LABEL);
        let domains: BTreeSet<String> = domains.iter().cloned().collect();
        Self {
            dialback_secret: fedgate_s2s::dialback::hex(tag.as_ref()),
            domains: domains.into_iter().collect(),
            policy_revision: policy_revision.to_owned(),
        }
    }
}

/// One fact on which two nodes differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    DialbackSecret,
    Domains {
        /// Hosted here only.
        only_here: Vec<String>,
        /// Hosted there only.
        only_there: Vec<String>,
    },
    PolicyRevision {
        here: String,
        there: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        match self {
            Self::DialbackSecret => f.write_str(
                "the dialback secret differs (s2s.dialback_secret must be the same on every node)",
            ),
            Self::Domains {
                only_here,
                only_there,
            } => write!(
                f,
                "the hosted domains differ (only here: {}; only there: {})",
                list(only_here),
                list(only_there)
            ),
            Self::PolicyRevision { here, there } => write!(
                f,
                "the policy revision differs (here {}, there {})",
                short(here),
                short(there)
            ),
        }
    }
}

/// The first 12 characters of a revision, as logs show it.
pub fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// Where `own` and `other` differ, in a fixed order.
pub fn differences(own: &Facts, other: &Facts) -> Vec<Difference> {
    let mut out = Vec::new();
    if !fedgate_s2s::dialback::constant_time_eq(
        own.dialback_secret.as_bytes(),
        other.dialback_secret.as_bytes(),
    ) {
        out.push(Difference::DialbackSecret);
    }
    if own.domains != other.domains {
        let not_in = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|d| !b.contains(d)).cloned().collect()
        };
        out.push(Difference::Domains {
            only_here: not_in(&own.domains, &other.domains),
            only_there: not_in(&other.domains, &own.domains),
        });
    }
    if own.policy_revision != other.policy_revision {
        out.push(Difference::PolicyRevision {
            here: own.policy_revision.clone(),
            there: other.policy_revision.clone(),
        });
    }
    out
}

/// Whether a node with `own` facts may join a cluster whose live nodes publish `live` (name,
/// facts): the dialback secret and the hosted names must equal those of every live node; the
/// policy revision must equal that of at least one (a policy rollout may be under way, some
/// nodes having reloaded the new file and some not). `Err` names every difference.
pub fn join_check(own: &Facts, live: &[(String, Facts)]) -> Result<(), String> {
    let mut problems = Vec::new();
    for (name, facts) in live {
        let d: Vec<String> = differences(own, facts)
            .into_iter()
            .filter(|d| !matches!(d, Difference::PolicyRevision { .. }))
            .map(|d| d.to_string())
            .collect();
        if !d.is_empty() {
            problems.push(format!("node {name}: {}", d.join("; ")));
        }
    }
    if !live.is_empty()
        && !live
            .iter()
            .any(|(_, f)| f.policy_revision == own.policy_revision)
    {
        let mut theirs: Vec<String> = live
            .iter()
            .map(|(n, f)| format!("{n} {}", short(&f.policy_revision)))
            .collect();
        theirs.sort();
        problems.push(format!(
            "the policy revision {} is that of no running node ({}): use the same policy file on every node",
            short(&own.policy_revision),
            theirs.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_secret_is_compared_as_a_keyed_hash() {
        let a = Facts::new("a secret of sixteen+", &d(&["a.test"]), "r1");
        assert_eq!(a.dialback_secret.len(), 64);
        assert!(!a.dialback_secret.contains("sixteen"));
        assert_eq!(a, Facts::new("a secret of sixteen+", &d(&["a.test"]), "r1"));
        let b = Facts::new("another secret, 16+", &d(&["a.test"]), "r1");
        assert_eq!(differences(&a, &b), vec![Difference::DialbackSecret]);
    }

    #[test]
    fn differences_are_named() {
        let a = Facts::new(
            "s",
            &d(&["b.test", "a.test", "conf.a.test"]),
            "r1aaaaaaaaaaaaaa",
        );
        let b = Facts::new("s", &d(&["a.test", "c.test"]), "r2bbbbbbbbbbbbbb");
        let diffs = differences(&a, &b);
        assert_eq!(diffs.len(), 2);
        assert_eq!(
            diffs[0].to_string(),
            "the hosted domains differ (only here: b.test, conf.a.test; only there: c.test)"
        );
        assert_eq!(
            diffs[1].to_string(),
            "the policy revision differs (here r1aaaaaaaaaa, there r2bbbbbbbbbb)"
        );
    }

    #[test]
    fn joining_needs_the_same_secret_and_domains_and_a_known_policy() {
        let own = Facts::new("s", &d(&["a.test"]), "r1");
        assert_eq!(join_check(&own, &[]), Ok(()), "the first node");
        let same = Facts::new("s", &d(&["a.test"]), "r1");
        let rolled = Facts::new("s", &d(&["a.test"]), "r2");
        // A rollout under way: one node has the new policy, one the old.
        assert_eq!(
            join_check(&own, &[("n1".into(), same), ("n2".into(), rolled.clone())]),
            Ok(())
        );
        let e = join_check(&own, &[("n2".into(), rolled)]).unwrap_err();
        assert!(
            e.contains("policy revision r1 is that of no running node (n2 r2)"),
            "{e}"
        );
        let other_secret = Facts::new("t", &d(&["a.test", "x.test"]), "r1");
        let e = join_check(&own, &[("n3".into(), other_secret)]).unwrap_err();
        assert!(e.starts_with("node n3: the dialback secret differs"), "{e}");
        assert!(e.contains("only there: x.test"), "{e}");
    }
}
