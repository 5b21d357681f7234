//! Audit log lines (policy loads, denials) and shadow mode (a candidate policy evaluated beside
//! the active one, differences counted and logged). Structured `tracing` events under the
//! target `fedgate::audit` (events `policy-load`, `policy-deny`, `policy-shadow-diff`); the
//! gateway's subscriber decides where they go.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Decision, Diagnostic, FastDecision, Policy, Request, Severity};

/// Logs a policy load: revision, source file, who or what loaded it, rule and warning counts.
pub fn log_load(policy: &Policy, who: &str, diagnostics: &[Diagnostic]) {
    let warnings = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    tracing::info!(
        target: "fedgate::audit",
        event = "policy-load",
        revision = policy.revision(),
        source = policy.source(),
        who,
        rules = policy.rule_count(),
        warnings,
        "policy loaded"
    );
}

/// Logs a decision if it denies (allowed traffic is counted by the gateway, not logged). `d`
/// is the explained decision ([`Policy::explain`]), so a denial is explained once.
pub fn log_decision(policy: &Policy, req: &Request<'_>, d: &Decision) {
    if d.allow {
        return;
    }
    tracing::info!(
        target: "fedgate::audit",
        event = "policy-deny",
        revision = policy.revision(),
        remote = req.remote,
        local = req.local,
        kind = req.kind.as_str(),
        direction = req.direction.as_str(),
        rule = d.rule.as_ref().map(|r| r.id.as_str()).unwrap_or("default"),
        line = d.rule.as_ref().map(|r| r.line).unwrap_or(0),
        reason = %d.reason,
        "policy denied"
    );
}

/// Counters of a shadow comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    pub compared: u64,
    /// The candidate would allow (whatever the active policy decided).
    pub shadow_allowed: u64,
    pub shadow_denied: u64,
    /// The candidate decides differently from the active policy.
    pub diff: u64,
}

/// A candidate policy run beside the active one. Every differing decision is counted and
/// logged (target `fedgate::audit`, event `policy-shadow-diff`).
#[derive(Debug)]
pub struct Shadow {
    candidate: Policy,
    compared: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    diff: AtomicU64,
}

impl Shadow {
    pub fn new(candidate: Policy) -> Self {
        Shadow {
            candidate,
            compared: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            diff: AtomicU64::new(0),
        }
    }

    pub fn candidate(&self) -> &Policy {
        &self.candidate
    }

    /// Evaluates the candidate for a request the active policy decided as `active`; returns
    /// the candidate's decision. Logs when the allow/deny outcome differs.
    pub fn observe(&self, req: &Request<'_>, active: FastDecision) -> FastDecision {
        let cand = self.candidate.decide_fast(req);
        self.compared.fetch_add(1, Ordering::Relaxed);
        if cand.allow {
            self.allowed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        if cand.allow != active.allow {
            self.diff.fetch_add(1, Ordering::Relaxed);
            let d = self.candidate.explain(req);
            tracing::info!(
                target: "fedgate::audit",
                event = "policy-shadow-diff",
                candidate_revision = self.candidate.revision(),
                remote = req.remote,
                local = req.local,
                kind = req.kind.as_str(),
                direction = req.direction.as_str(),
                active_allow = active.allow,
                candidate_allow = cand.allow,
                candidate_rule = d.rule.as_ref().map(|r| r.id.as_str()).unwrap_or("default"),
                reason = %d.reason,
                "shadow policy differs"
            );
        }
        cand
    }

    pub fn counts(&self) -> ShadowCounts {
        ShadowCounts {
            compared: self.compared.load(Ordering::Relaxed),
            shadow_allowed: self.allowed.load(Ordering::Relaxed),
            shadow_denied: self.denied.load(Ordering::Relaxed),
            diff: self.diff.load(Ordering::Relaxed),
        }
    }
}
