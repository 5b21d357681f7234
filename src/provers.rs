//! DANE and POSH as identity provers for the stream layer: ways to establish that a peer's
//! certificate belongs to a domain when PKIX does not (a self-signed certificate published in
//! DNSSEC-signed TLSA records, or a hosting provider's certificate published by the domain
//! over HTTPS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fedgate_s2s::driver::context::{IdentityProver, ProveFailure};
use fedgate_s2s::driver::dane::{DaneOutcome, DaneResolver};
use fedgate_s2s::driver::posh::PoshClient;
use fedgate_s2s::inbound::{AuthMethod, CertOk};
use fedgate_s2s::resolve::S2sResolver;
use rustls_pki_types::CertificateDer;

/// The leaf's notAfter, for closing streams when it passes.
fn leaf_not_after(chain: &[CertificateDer<'static>]) -> Option<i64> {
    chain
        .first()
        .and_then(|c| fedgate_certs::cert_summary(c).ok())
        .map(|s| s.not_after)
}

/// POSH (RFC 7711): the domain's `/.well-known/posh/xmpp-server.json` names the key.
pub struct Posh(pub Arc<PoshClient>);

impl IdentityProver for Posh {
    fn prove<'a>(
        &'a self,
        domain: &'a str,
        chain: &'a [CertificateDer<'static>],
        _target: Option<(&'a str, u16)>,
    ) -> Pin<Box<dyn Future<Output = Result<CertOk, ProveFailure>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .verify(domain, chain)
                .await
                .map_err(ProveFailure::soft)?;
            Ok(CertOk {
                method: AuthMethod::Posh,
                not_after: leaf_not_after(chain),
            })
        })
    }
}

/// DANE (RFC 7673): DNSSEC-validated TLSA records at the SRV target. Outbound, the target we
/// connected to is checked, and TLSA records that validate but do not match refuse it (no
/// downgrade). Inbound, the peer's certificate is checked against the TLSA records of its
/// domain's SRV targets (the same key usually serves both directions); a mismatch there only
/// means DANE does not establish the identity.
pub struct Dane {
    pub dane: DaneResolver,
    pub resolver: S2sResolver,
}

impl IdentityProver for Dane {
    fn prove<'a>(
        &'a self,
        domain: &'a str,
        chain: &'a [CertificateDer<'static>],
        target: Option<(&'a str, u16)>,
    ) -> Pin<Box<dyn Future<Output = Result<CertOk, ProveFailure>> + Send + 'a>> {
        Box::pin(async move {
            let targets: Vec<(String, u16)> = match target {
                Some((h, p)) => vec![(h.to_owned(), p)],
                None => match self.resolver.targets(domain).await {
                    Ok(t) => t
                        .into_iter()
                        .filter(|t| t.from_srv)
                        .map(|t| (t.host, t.port))
                        .collect(),
                    Err(e) => return Err(ProveFailure::soft(format!("dane: {e}"))),
                },
            };
            let mut why = Vec::new();
            for (host, port) in &targets {
                match self.dane.check(domain, host, *port, chain, domain).await {
                    DaneOutcome::Verified { usage } => {
                        // DANE-EE ignores the certificate's dates; DANE-TA keeps them.
                        let not_after = if usage == 3 {
                            None
                        } else {
                            leaf_not_after(chain)
                        };
                        return Ok(CertOk {
                            method: AuthMethod::Dane,
                            not_after,
                        });
                    }
                    DaneOutcome::Failed(e) if target.is_some() => {
                        return Err(ProveFailure::fatal(format!("dane: {host}:{port}: {e}")));
                    }
                    DaneOutcome::Failed(e) | DaneOutcome::NotApplicable(e) => {
                        why.push(format!("{host}:{port}: {e}"))
                    }
                }
            }
            if why.is_empty() {
                why.push("no SRV targets".into());
            }
            Err(ProveFailure::soft(format!("dane: {}", why.join("; "))))
        })
    }
}

/// A DNSSEC trust anchor from a DNSKEY record in zone-file form
/// (`zone. [TTL] [IN] DNSKEY 257 3 13 <base64>`).
pub fn parse_dnskey(text: &str) -> Result<fedgate_s2s::driver::dane::DaneTrustAnchor, String> {
    use base64::Engine as _;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(';'))
        .ok_or("no DNSKEY record")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let at = f
        .iter()
        .position(|x| x.eq_ignore_ascii_case("DNSKEY"))
        .ok_or("no DNSKEY record")?;
    let rest = &f[at + 1..];
    if rest.len() < 4 {
        return Err("DNSKEY needs flags, protocol, algorithm and key".into());
    }
    let algorithm: u8 = rest[2]
        .parse()
        .map_err(|_| format!("bad algorithm {}", rest[2]))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(rest[3..].concat())
        .map_err(|e| format!("bad key: {e}"))?;
    Ok(fedgate_s2s::driver::dane::DaneTrustAnchor {
        zone: f[0].to_owned(),
        algorithm,
        public_key: key,
    })
}
