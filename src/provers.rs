//! DANE and POSH as identity provers for the stream layer: ways to establish that a peer's
//! certificate belongs to a domain when PKIX does not (a self-signed certificate published in
//! DNSSEC-signed TLSA records, or a hosting provider's certificate published by the domain
//! over HTTPS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fedgate_s2s::driver::context::IdentityProver;
use fedgate_s2s::driver::posh::PoshClient;
use fedgate_s2s::inbound::{AuthMethod, CertOk};
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
    ) -> Pin<Box<dyn Future<Output = Result<CertOk, String>> + Send + 'a>> {
        Box::pin(async move {
            self.0.verify(domain, chain).await?;
            Ok(CertOk {
                method: AuthMethod::Posh,
                not_after: leaf_not_after(chain),
            })
        })
    }
}
