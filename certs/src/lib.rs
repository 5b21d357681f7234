//! `fedgate-certs`: everything about certificates, and nothing else.
//!
//! This room holds:
//! - the **certificate store per hosted domain** ([`Identity`], [`IdentityStore`], picked by SNI
//!   or stream `to`);
//! - **peer identity checks**: chain against trust anchors with the EKU rules of the 2026
//!   Let's Encrypt change ([`PeerVerifier`]) and RFC 9525 / RFC 6120 / XEP-0178 name checks
//!   for DNS-ID, SRV-ID and XmppAddr ([`check_name`], [`cert_names`], [`cert_summary`]), with
//!   typed failures ([`CertFailure`], [`CertFailureKind`]);
//! - **trust anchors** ([`TrustAnchors`]: system bundle and extra PEM files) and
//!   **certificate revocation lists** ([`load_crls`], [`PeerVerifier::with_crls`]);
//! - **rustls config builders** ([`server_config`], [`client_config`]) that defer peer
//!   certificate decisions to the XMPP layer, and the one choice of crypto provider
//!   ([`crypto_provider`], ring);
//! - **dev/test certificate generation** ([`dev`]), and the atomic, durable file replacement
//!   ([`durable`]) that writes generated keys and that the gateway's small state files reuse.
//!
//! What it may not touch: no sockets or other I/O besides reading certificate, key, anchor and
//! CRL files and [`durable::replace`]; no async runtime; no other fedgate crate — it is a leaf
//! that `fedgate-s2s`, `fedgate-sip`, `fedgate-intercluster` and the root crate use.

pub mod check;
mod clock;
pub use clock::{fmt_unix, unix_now};
pub mod crl;
pub mod dev;
pub mod durable;
mod error;
mod failure;
mod identity;
mod names;
mod pem;
pub mod posh;
mod provider;
mod summary;
mod tls_config;
mod trust;
mod verify;

pub use check::{CheckOptions, IdentityReport, Problem, ProblemKind, check_identity};
pub use crl::{load_crls, parse_crls};
pub use error::CertError;
pub use failure::{CertFailure, CertFailureKind};
pub use identity::{Identity, IdentityStore};
pub use names::{NameMatch, cert_names, check_name};
pub use provider::crypto_provider;
pub use summary::{CertSummary, cert_summary, sha256_fingerprint};
pub use tls_config::client_config_for;
pub use tls_config::{client_config, server_config, server_config_for, server_config_mutual};
pub use trust::{SYSTEM_BUNDLE, TrustAnchors};
pub use verify::{PeerVerifier, VerifiedPeer};

#[cfg(test)]
mod tests;
