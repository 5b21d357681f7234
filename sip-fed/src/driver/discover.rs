//! Where to connect for a SIP partner domain, and whether a domain federates over SIP at all.
//!
//! Order for a partner domain (the SIP federation issue, RFC 3263 §4):
//! 1. SRV `_sipfederationtls._tcp.<domain>` (the Microsoft federation record),
//! 2. NAPTR `<domain>` (RFC 3263 §4.1): the records for SIP over TLS over TCP (`SIPS+D2T`,
//!    flag `s`), in order and preference, each naming an SRV owner to look up (other
//!    transports are skipped: we only speak TLS over TCP),
//! 3. SRV `_sips._tcp.<domain>` (the §4.1 fallback when NAPTR gives nothing usable),
//! 4. a static route from config,
//! 5. the domain's own A/AAAA on port 5061 (RFC 3263 §4.2).
//!
//! Each target remembers the SRV owner it came from: the partner's certificate may then name
//! the SRV target instead of the SIP domain (as Lync edges do), when the partner's name check
//! allows it.

use std::collections::BTreeMap;

use fedgate_s2s::resolve::{DnsError, DnsErrorKind, NaptrRecord, S2sResolver};
use fedgate_s2s::srv::{SrvRecord, is_no_service, order_srv};

/// The SIP-over-TLS port (RFC 3261 §19.1.2).
pub const DEFAULT_SIPS_PORT: u16 = 5061;

/// One place to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    pub host: String,
    pub port: u16,
    /// The SRV owner name it came from (`_sipfederationtls._tcp.<domain>`, a NAPTR
    /// replacement, `_sips._tcp.<domain>`), if any.
    pub srv: Option<String>,
}

/// Ordered targets for `domain`.
pub async fn targets(
    resolver: &S2sResolver,
    statics: &BTreeMap<String, (String, u16)>,
    domain: &str,
) -> Result<Vec<SipTarget>, DnsError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut last_err = None;
    let mut owners = vec![format!("_sipfederationtls._tcp.{domain}")];
    let mut naptr_done = false;
    let mut i = 0;
    while i < owners.len() {
        let owner = owners[i].clone();
        i += 1;
        match resolver.srv_at(&owner).await {
            Ok(records) if is_no_service(&records) => {
                return Err(DnsError {
                    kind: DnsErrorKind::NoService,
                    detail: format!("{owner}: \".\" target, no SIP service"),
                });
            }
            Ok(records) if !records.is_empty() => {
                return Ok(ordered(records, &owner));
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
        // Only asked when the Microsoft record gave nothing.
        if !naptr_done {
            naptr_done = true;
            match resolver.naptr(&domain).await {
                Ok(records) => owners.extend(naptr_owners(records)),
                Err(e) => last_err = Some(e),
            }
            let fallback = format!("_sips._tcp.{domain}");
            if !owners.contains(&fallback) {
                owners.push(fallback);
            }
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

/// The SRV owners that NAPTR records name for SIP over TLS over TCP, most preferred first.
fn naptr_owners(mut records: Vec<NaptrRecord>) -> Vec<String> {
    records.retain(|r| {
        r.services.eq_ignore_ascii_case("SIPS+D2T")
            && r.flags.eq_ignore_ascii_case("s")
            && r.replacement != "."
    });
    records.sort_by_key(|r| (r.order, r.preference));
    let mut out: Vec<String> = Vec::new();
    for r in records {
        let owner = r.replacement.to_ascii_lowercase();
        if !out.contains(&owner) {
            out.push(owner);
        }
    }
    out
}

fn ordered(records: Vec<SrvRecord>, owner: &str) -> Vec<SipTarget> {
    let usable: Vec<SrvRecord> = records
        .into_iter()
        .filter(|r| !r.is_root_target())
        .collect();
    order_srv(usable, &mut rand::rng())
        .into_iter()
        .map(|r| SipTarget {
            host: r.target,
            port: r.port,
            srv: Some(owner.to_owned()),
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
    let sip_owner = format!("_sipfederationtls._tcp.{}", domain.trim_end_matches('.'));
    let (xmpp, sip) = tokio::join!(resolver.srv_records(domain), resolver.srv_at(&sip_owner));
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
