//! DANE for outgoing s2s connections (RFC 7673 over RFC 6698/7671): DNSSEC-validated SRV,
//! address and TLSA lookups with hickory-resolver 0.26 (`dnssec-ring`), then TLSA matching
//! with [`crate::dane::match_tlsa`].
//!
//! For a target found via SRV (`_xmpp-server._tcp.D` or `_xmpps-server._tcp.D` → host `H`,
//! port `P`), the TLSA records of `_P._tcp.H` decide, and only when the SRV records, the
//! address records of `H` and the TLSA records all validate as *secure*:
//!
//! | situation | [`DaneOutcome`] |
//! |---|---|
//! | SRV / address / TLSA answer insecure (unsigned zone, proven by DNSSEC) | `NotApplicable` |
//! | no SRV record naming `H:P`, no TLSA records (NXDOMAIN/NODATA), only unusable TLSA records (PKIX-TA/PKIX-EE, unknown parameters) | `NotApplicable` |
//! | SRV or address lookup failed (timeout, SERVFAIL) | `NotApplicable` |
//! | any answer *bogus* (signatures fail, missing where the parent says they must exist) | `Failed` |
//! | TLSA lookup failed (timeout, SERVFAIL) after a secure SRV: indeterminate (RFC 7673 §3, RFC 7672 §2.2) | `Failed` |
//! | secure TLSA records, a usable one matches | `Verified { usage }` |
//! | secure TLSA records, none matches | `Failed` |
//!
//! `NotApplicable` means: authenticate as without DANE (PKIX, POSH, dialback). `Failed` means:
//! refuse this target (never downgrade to dialback); other SRV targets may still be tried.
//!
//! The resolver here is separate from [`crate::resolve::S2sResolver`] and always validates:
//! with `trust_anchors: None` against the root KSKs built into hickory (20326 and 38696),
//! otherwise against the given keys only (tests: the test DNS server's root key).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::dnssec::{Algorithm, Proof, PublicKeyBuf, TrustAnchors};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use rustls_pki_types::CertificateDer;

use crate::dane::{DaneMatch, Tlsa, has_usable, match_tlsa};
use crate::resolve::{DNS_ATTEMPTS, DNS_TIMEOUT, DnsError, DnsErrorKind};

/// Responses kept in the DANE resolver's cache.
const CACHE_SIZE: u64 = 2_048;

/// A DNSSEC trust anchor: a DNSKEY public key for a zone (`"."` for the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneTrustAnchor {
    /// The zone the key is the anchor of, e.g. `"."` or `"example."` (trailing dot optional).
    pub zone: String,
    /// DNSSEC algorithm number (8 RSASHA256, 13 ECDSAP256SHA256, 15 ED25519, …).
    pub algorithm: u8,
    /// The public key in DNSKEY wire form (the DNSKEY record's public key field).
    pub public_key: Vec<u8>,
}

/// The outcome of a DANE check for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneOutcome {
    /// DANE does not apply (why: insecure, no TLSA, lookup failed …): authenticate as usual.
    NotApplicable(String),
    /// Secure TLSA records exist and one of them matched the presented chain.
    Verified {
        /// Usage of the matching record: 3 (DANE-EE) or 2 (DANE-TA).
        usage: u8,
    },
    /// DANE applies and failed: the connection to this target must be refused.
    Failed(String),
}

impl DaneOutcome {
    /// Short stable label for logs and metrics: `not-applicable`, `verified`, `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotApplicable(_) => "not-applicable",
            Self::Verified { .. } => "verified",
            Self::Failed(_) => "failed",
        }
    }
}

/// The DNS half of the check: what the TLSA lookup for a target said. Can run before the TLS
/// handshake; [`TlsaLookup::check`] then matches the presented chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaLookup {
    /// DANE does not apply (why).
    NotApplicable(String),
    /// Secure TLSA records, at least one of them usable.
    Secure(Vec<Tlsa>),
    /// DANE applies and the lookup failed (bogus or indeterminate): refuse the target.
    Failed(String),
}

impl TlsaLookup {
    /// Matches `chain` (leaf first) for the XMPP `domain`.
    pub fn check(&self, chain: &[CertificateDer<'_>], domain: &str) -> DaneOutcome {
        match self {
            Self::NotApplicable(why) => DaneOutcome::NotApplicable(why.clone()),
            Self::Failed(why) => DaneOutcome::Failed(why.clone()),
            Self::Secure(records) => match match_tlsa(records, chain, domain) {
                DaneMatch::Matched { usage } => DaneOutcome::Verified { usage },
                DaneMatch::NoMatch => DaneOutcome::Failed(format!(
                    "no TLSA record matches the presented certificate ({} record(s): {})",
                    records.len(),
                    records
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        }
    }
}

/// A DNSSEC-validating resolver for DANE. Cheap to clone.
#[derive(Clone)]
pub struct DaneResolver {
    resolver: TokioResolver,
}

impl std::fmt::Debug for DaneResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaneResolver").finish_non_exhaustive()
    }
}

/// How one validated lookup ended.
enum Validated {
    /// Records, all secure.
    Secure(Vec<Record>),
    /// Records or a negative answer that DNSSEC proves insecure.
    Insecure,
    /// NXDOMAIN / NODATA (secure, or not proven otherwise).
    NoRecords,
    /// Bogus (validation failed).
    Bogus(String),
    /// Timeout, SERVFAIL, I/O …
    Error(String),
}

impl DaneResolver {
    /// `nameservers`: `None` = the system's resolv.conf; `Some(list)` = only those servers, UDP
    /// and TCP on each address's own port, without /etc/hosts. `trust_anchors`: `None` = the
    /// root trust anchors built into hickory; `Some(keys)` = only those keys. Validation is
    /// always on; 2 s per query, 2 attempts.
    pub fn new(
        nameservers: Option<Vec<SocketAddr>>,
        trust_anchors: Option<Vec<DaneTrustAnchor>>,
    ) -> Result<Self, DnsError> {
        Self::with_timeouts(nameservers, trust_anchors, DNS_TIMEOUT, DNS_ATTEMPTS)
    }

    /// Like [`DaneResolver::new`] with an explicit per-query timeout and attempt count.
    pub fn with_timeouts(
        nameservers: Option<Vec<SocketAddr>>,
        trust_anchors: Option<Vec<DaneTrustAnchor>>,
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self, DnsError> {
        let other = |detail: String| DnsError {
            kind: DnsErrorKind::Other,
            detail,
        };
        let mut builder = crate::resolve::resolver_builder(nameservers)?;
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = attempts;
        opts.cache_size = CACHE_SIZE;
        opts.edns0 = true;
        opts.validate = true;
        if let Some(keys) = trust_anchors {
            builder = builder.with_trust_anchor(Arc::new(build_anchors(&keys)?));
        }
        let resolver = builder
            .build()
            .map_err(|e| other(format!("building DNSSEC resolver: {e}")))?;
        Ok(Self { resolver })
    }

    /// The DNS half: validates the SRV records of `srv_domain` (the XMPP domain `D`; the
    /// target must be among its `_xmpp-server._tcp` or `_xmpps-server._tcp` records), the
    /// address records of `host`, and looks up the TLSA records of `_<port>._tcp.<host>`.
    pub async fn lookup(&self, srv_domain: &str, host: &str, port: u16) -> TlsaLookup {
        let host_key = normalize(host);
        if host_key.parse::<std::net::IpAddr>().is_ok() {
            return TlsaLookup::NotApplicable(format!(
                "target {host_key} is an IP literal (no TLSA name)"
            ));
        }
        // 1. The SRV record naming host:port must be secure.
        match self.secure_srv(srv_domain, &host_key, port).await {
            Ok(()) => {}
            Err(outcome) => return outcome,
        }
        // 2. The address records of the host must be secure (RFC 7672 §2.2.2 / RFC 7673 §3).
        let Ok(host_name) = absolute(&host_key) else {
            return TlsaLookup::NotApplicable(format!("bad host name {host_key:?}"));
        };
        match self.address_proof(&host_name).await {
            Validated::Secure(_) => {}
            Validated::Insecure => {
                return TlsaLookup::NotApplicable(format!(
                    "address records of {host_key} are insecure (unsigned zone)"
                ));
            }
            Validated::NoRecords => {
                return TlsaLookup::NotApplicable(format!("{host_key} has no address records"));
            }
            Validated::Bogus(why) => {
                return TlsaLookup::Failed(format!("address records of {host_key}: {why}"));
            }
            Validated::Error(why) => {
                return TlsaLookup::NotApplicable(format!(
                    "address lookup of {host_key} failed: {why}"
                ));
            }
        }
        // 3. TLSA at _port._tcp.host.
        let tlsa_name = match Name::from_ascii(format!("_{port}._tcp"))
            .and_then(|n| n.append_domain(&host_name))
        {
            Ok(n) => n,
            Err(e) => return TlsaLookup::NotApplicable(format!("TLSA name for {host_key}: {e}")),
        };
        let what = format!("TLSA {tlsa_name}");
        match self.validated(tlsa_name.clone(), RecordType::TLSA).await {
            Validated::Secure(records) => {
                let tlsa: Vec<Tlsa> = records
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data.clone(),
                        }),
                        _ => None,
                    })
                    .collect();
                if tlsa.is_empty() {
                    TlsaLookup::NotApplicable(format!("{what}: no records"))
                } else if !has_usable(&tlsa) {
                    TlsaLookup::NotApplicable(format!(
                        "{what}: no usable records (only PKIX-TA/PKIX-EE or unknown parameters)"
                    ))
                } else {
                    TlsaLookup::Secure(tlsa)
                }
            }
            Validated::Insecure => TlsaLookup::NotApplicable(format!("{what}: insecure")),
            Validated::NoRecords => TlsaLookup::NotApplicable(format!("{what}: no records")),
            Validated::Bogus(why) => TlsaLookup::Failed(format!("{what}: {why}")),
            Validated::Error(why) => TlsaLookup::Failed(format!(
                "{what}: lookup failed after a secure SRV, DANE state indeterminate: {why}"
            )),
        }
    }

    /// The full check for one target: [`DaneResolver::lookup`], then matching of `chain`
    /// (leaf first, as presented by the peer) for the XMPP `domain` ([`TlsaLookup::check`]).
    pub async fn check(
        &self,
        srv_domain: &str,
        host: &str,
        port: u16,
        chain: &[CertificateDer<'static>],
        domain: &str,
    ) -> DaneOutcome {
        let outcome = self
            .lookup(srv_domain, host, port)
            .await
            .check(chain, domain);
        tracing::debug!(%srv_domain, %host, port, %domain, outcome = outcome.as_str(), ?outcome, "DANE check");
        outcome
    }

    /// Drop every cached answer.
    pub fn clear_cache(&self) {
        self.resolver.clear_cache();
    }

    /// Ok when a secure SRV record of `srv_domain` names `host:port`.
    async fn secure_srv(&self, srv_domain: &str, host: &str, port: u16) -> Result<(), TlsaLookup> {
        let domain = normalize(srv_domain);
        let base = absolute(&domain)
            .map_err(|e| TlsaLookup::NotApplicable(format!("bad domain {domain:?}: {e}")))?;
        let mut why_not = Vec::new();
        for service in ["_xmpp-server", "_xmpps-server"] {
            let Ok(name) =
                Name::from_ascii(format!("{service}._tcp")).and_then(|n| n.append_domain(&base))
            else {
                continue;
            };
            match self.validated(name.clone(), RecordType::SRV).await {
                Validated::Secure(records) => {
                    let names_target = records.iter().any(|r| match &r.data {
                        RData::SRV(srv) => {
                            srv.port == port && normalize(&srv.target.to_ascii()) == host
                        }
                        _ => false,
                    });
                    if names_target {
                        return Ok(());
                    }
                    why_not.push(format!(
                        "SRV {name}: secure, but no record for {host}:{port}"
                    ));
                }
                Validated::Insecure => why_not.push(format!("SRV {name}: insecure")),
                Validated::NoRecords => why_not.push(format!("SRV {name}: no records")),
                Validated::Bogus(why) => {
                    return Err(TlsaLookup::Failed(format!("SRV {name}: {why}")));
                }
                Validated::Error(why) => why_not.push(format!("SRV {name}: lookup failed: {why}")),
            }
        }
        Err(TlsaLookup::NotApplicable(why_not.join("; ")))
    }

    /// Validated A and AAAA of `host`: secure only if every address record is.
    async fn address_proof(&self, host: &Name) -> Validated {
        let (a, aaaa) = tokio::join!(
            self.validated(host.clone(), RecordType::A),
            self.validated(host.clone(), RecordType::AAAA)
        );
        match (a, aaaa) {
            (Validated::Bogus(w), _) | (_, Validated::Bogus(w)) => Validated::Bogus(w),
            (Validated::Insecure, _) | (_, Validated::Insecure) => Validated::Insecure,
            (Validated::Secure(mut x), Validated::Secure(y)) => {
                x.extend(y);
                Validated::Secure(x)
            }
            (Validated::Secure(x), _) | (_, Validated::Secure(x)) => Validated::Secure(x),
            (Validated::Error(w), _) | (_, Validated::Error(w)) => Validated::Error(w),
            (Validated::NoRecords, Validated::NoRecords) => Validated::NoRecords,
        }
    }

    /// One validated query; classifies the records of type `rtype` in the answer.
    async fn validated(&self, name: Name, rtype: RecordType) -> Validated {
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .cloned()
                    .collect();
                if records.is_empty() {
                    return Validated::NoRecords;
                }
                classify(records)
            }
            Err(e) => classify_error(&e),
        }
    }
}

fn classify(records: Vec<Record>) -> Validated {
    if records.iter().any(|r| r.proof == Proof::Bogus) {
        return Validated::Bogus("DNSSEC bogus".to_owned());
    }
    if records.iter().all(|r| r.proof == Proof::Secure) {
        Validated::Secure(records)
    } else if records.iter().all(|r| r.proof == Proof::Insecure) {
        Validated::Insecure
    } else {
        // Indeterminate, or a mix: never treated as secure.
        Validated::Bogus(format!(
            "DNSSEC state not secure: {:?}",
            records.iter().map(|r| r.proof).collect::<Vec<_>>()
        ))
    }
}

fn classify_error(e: &NetError) -> Validated {
    match e {
        NetError::Dns(HickoryDnsError::DnssecBogus) => {
            Validated::Bogus("DNSSEC validation failed (bogus)".to_owned())
        }
        NetError::Dns(HickoryDnsError::Nsec { proof, .. }) => match proof {
            Proof::Secure => Validated::NoRecords,
            Proof::Insecure => Validated::Insecure,
            other => Validated::Bogus(format!("denial of existence not proven ({other})")),
        },
        e if e.is_no_records_found() || e.is_nx_domain() => Validated::NoRecords,
        e => Validated::Error(e.to_string()),
    }
}

fn build_anchors(keys: &[DaneTrustAnchor]) -> Result<TrustAnchors, DnsError> {
    let mut anchors = TrustAnchors::empty();
    for key in keys {
        let zone = absolute(&normalize(&key.zone)).or_else(|e| {
            if normalize(&key.zone).is_empty() {
                Ok(Name::root())
            } else {
                Err(e)
            }
        })?;
        let public = PublicKeyBuf::new(key.public_key.clone(), Algorithm::from_u8(key.algorithm));
        anchors.insert_with_name(&public, LowerName::from(&zone));
    }
    Ok(anchors)
}

/// Lower case, no surrounding blanks or trailing dot.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn absolute(domain: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_utf8(domain).map_err(|e| DnsError {
        kind: DnsErrorKind::Other,
        detail: format!("invalid domain name {domain:?}: {e}"),
    })?;
    if name.is_root() {
        return Err(DnsError {
            kind: DnsErrorKind::Other,
            detail: "empty domain name".to_owned(),
        });
    }
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels() {
        assert_eq!(DaneOutcome::Verified { usage: 3 }.as_str(), "verified");
        assert_eq!(
            DaneOutcome::NotApplicable("x".into()).as_str(),
            "not-applicable"
        );
        assert_eq!(DaneOutcome::Failed("x".into()).as_str(), "failed");
    }

    #[test]
    fn anchors_for_root_and_zone() {
        let a = build_anchors(&[
            DaneTrustAnchor {
                zone: ".".into(),
                algorithm: 13,
                public_key: vec![1; 64],
            },
            DaneTrustAnchor {
                zone: "Example.Test.".into(),
                algorithm: 13,
                public_key: vec![2; 64],
            },
        ])
        .unwrap();
        assert_eq!(a.len(), 1, "one root key");
        let k = PublicKeyBuf::new(vec![2; 64], Algorithm::ECDSAP256SHA256);
        let zone = LowerName::from(&Name::from_ascii("example.test.").unwrap());
        assert!(a.contains_with_name(&k, &zone));
    }

    #[test]
    fn classification_never_upgrades_to_secure() {
        let rec = |p: Proof| {
            let mut r = Record::from_rdata(
                Name::from_ascii("a.test.").unwrap(),
                60,
                RData::A(hickory_proto::rr::rdata::A::new(127, 0, 0, 1)),
            );
            r.proof = p;
            r
        };
        assert!(matches!(
            classify(vec![rec(Proof::Secure)]),
            Validated::Secure(_)
        ));
        assert!(matches!(
            classify(vec![rec(Proof::Insecure)]),
            Validated::Insecure
        ));
        assert!(matches!(
            classify(vec![rec(Proof::Secure), rec(Proof::Insecure)]),
            Validated::Bogus(_)
        ));
        assert!(matches!(
            classify(vec![rec(Proof::Indeterminate)]),
            Validated::Bogus(_)
        ));
        assert!(matches!(
            classify(vec![rec(Proof::Secure), rec(Proof::Bogus)]),
            Validated::Bogus(_)
        ));
    }

    #[tokio::test]
    async fn ip_literal_target_is_not_applicable() {
        let r =
            DaneResolver::new(Some(vec!["127.0.0.1:9".parse().unwrap()]), Some(vec![])).unwrap();
        let out = r.lookup("a.test", "127.0.0.5", 5269).await;
        assert!(matches!(out, TlsaLookup::NotApplicable(_)), "{out:?}");
    }
}
