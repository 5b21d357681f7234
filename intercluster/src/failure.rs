//! Typed link failures: the kind is a metric label and a log field.

use std::fmt;

/// Why a link went down or could not come up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The peer's address did not resolve.
    Dns,
    /// TCP connect failed or timed out.
    Connect,
    /// TLS handshake failed.
    Tls,
    /// The peer's certificate chain is not trusted.
    CertChain,
    /// The certificate does not name the peer's cluster (or it claimed an unknown cluster).
    CertName,
    /// The consistency digests differ and the config says refuse.
    Consistency,
    /// No traffic (not even heartbeats) within the timeout.
    Timeout,
    /// The peer sent something that does not follow the protocol.
    Protocol,
    /// The peer refused the link.
    Refused,
    /// The peer closed the link, or the connection broke.
    Closed,
}

impl FailureKind {
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Dns,
        FailureKind::Connect,
        FailureKind::Tls,
        FailureKind::CertChain,
        FailureKind::CertName,
        FailureKind::Consistency,
        FailureKind::Timeout,
        FailureKind::Protocol,
        FailureKind::Refused,
        FailureKind::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::CertChain => "cert-chain",
            FailureKind::CertName => "cert-name",
            FailureKind::Consistency => "consistency",
            FailureKind::Timeout => "timeout",
            FailureKind::Protocol => "protocol",
            FailureKind::Refused => "refused",
            FailureKind::Closed => "closed",
        }
    }

    /// The kind a peer's `<refuse reason>` names.
    pub fn from_reason(reason: &str) -> Self {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == reason)
            .unwrap_or(FailureKind::Refused)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with its kind and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct LinkFailure {
    pub kind: FailureKind,
    pub detail: String,
}

impl LinkFailure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_refuse_reasons() {
        for k in FailureKind::ALL {
            assert_eq!(FailureKind::from_reason(k.as_str()), k);
        }
        assert_eq!(FailureKind::from_reason("whatever"), FailureKind::Refused);
        assert_eq!(
            LinkFailure::new(FailureKind::CertName, "x").to_string(),
            "cert-name: x"
        );
    }
}
