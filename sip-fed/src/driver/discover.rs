//! Where to connect for a SIP partner domain, and whether a domain federates over SIP at all.
//!
//! Order for a partner domain (the SIP federation issue, RFC 3263 §4):
//! 1. SRV `_sipfederationtls._tcp.<domain>` (the Microsoft federation record),
//! 2. SRV `_sips._tcp.<domain>` (RFC 3263 §4.1 for TLS; NAPTR is not consulted: we only speak
//!    TLS over TCP, which is what the SRV fallback of §4.1 names),
//! 3. a static route from config,
//! 4. the domain's own A/AAAA on port 5061 (RFC 3263 §4.2).
//!
//! Each target remembers whether it came from SRV: the partner's certificate may then name
//! the SRV target instead of the SIP domain (as Lync edges do), when the partner's name check
//! allows it.

use std::collections::BTreeMap;

use fedgate_s2s::resolve::{DnsError, DnsErrorKind, S2sResolver};
use fedgate_s2s::srv::{SrvRecord, is_no_service, order_srv};

/// The SIP-over-TLS port (RFC 3261 §19.1.2).
pub const DEFAULT_SIPS_PORT: u16 = 5061;

/// One place to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    pub host: String,
    pub port: u16,
    /// The SRV record it came from (`_sipfederationtls` or `_sips`), if any.
    pub srv: Option<&'static str>,
}

/// Ordered targets for `domain`.
pub async fn targets(
    resolver: &S2sResolver,
    statics: &BTreeMap<String, (String, u16)>,
    domain: &str,
) -> Result<Vec<SipTarget>, DnsError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut last_err = None;
    for service in ["_sipfederationtls", "_sips"] {
        match resolver.srv(service, &domain).await {
            Ok(records) if is_no_service(&records) => {
                return Err(DnsError {
                    kind: DnsErrorKind::NoService,
                    detail: format!("{service}._tcp.{domain}: \".\" target, no SIP service"),
                });
            }
            Ok(records) if !records.is_empty() => {
                return Ok(ordered(records, service));
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    if let Some((host, port)) = statics.get(&domain) {
        return Ok(vec![SipTarget {
            host: host.clone(),
            port: *port,
            srv: None,
        }]);
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    // RFC 3263 §4.2: no SRV records: the domain itself on the default port.
    resolver.addrs(&domain).await?;
    Ok(vec![SipTarget {
        host: domain,
        port: DEFAULT_SIPS_PORT,
        srv: None,
    }])
}

fn ordered(records: Vec<SrvRecord>, service: &'static str) -> Vec<SipTarget> {
    let usable: Vec<SrvRecord> = records
        .into_iter()
        .filter(|r| !r.is_root_target())
        .collect();
    order_srv(usable, &mut rand::rng())
        .into_iter()
        .map(|r| SipTarget {
            host: r.target,
            port: r.port,
            srv: Some(service),
        })
        .collect()
}

/// What DNS says about a domain's federation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovered {
    /// `_xmpp-server`/`_xmpps-server` records exist (whatever else exists: XMPP wins, so a
    /// domain is never reached over both protocols).
    Xmpp,
    /// `_sipfederationtls._tcp` records and no XMPP SRV records.
    Sip,
    /// Neither: treated as XMPP (the s2s A/AAAA fallback applies).
    Unknown,
}

/// Looks up the XMPP and the SIP federation records of `domain` concurrently.
pub async fn discover_protocol(
    resolver: &S2sResolver,
    domain: &str,
) -> Result<Discovered, DnsError> {
    let (xmpp, sip) = tokio::join!(
        resolver.srv_records(domain),
        resolver.srv("_sipfederationtls", domain)
    );
    let xmpp = xmpp?;
    let has_xmpp = !(xmpp.xmpp.is_empty() && xmpp.xmpps.is_empty());
    if has_xmpp {
        return Ok(Discovered::Xmpp);
    }
    match sip {
        Ok(r) if !r.is_empty() && !is_no_service(&r) => Ok(Discovered::Sip),
        Ok(_) => Ok(Discovered::Unknown),
        Err(e) => Err(e),
    }
}
