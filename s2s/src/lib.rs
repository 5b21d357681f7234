//! fedgate-s2s: XMPP streams. This room holds the incremental XML stream parser with its limits,
//! the sans-IO stream negotiation machines (STARTTLS, SASL EXTERNAL, Server Dialback, XEP-0114
//! component handshake), DNS SRV discovery, and the thin tokio drivers that run them over
//! TCP/TLS: the s2s listener, the outbound connection pool per domain pair and the component
//! listener.
//!
//! It may use `certs` (identities, peer checks, TLS configs). It may not know the router: it
//! hands stanzas in and out through the [`driver::StanzaSink`] trait that the root crate
//! implements.

pub mod ack;
pub mod address;
pub mod component;
pub mod dane;
pub mod dialback;
pub mod driver;
pub mod element;
pub mod gate;
pub mod inbound;
pub mod outbound;
pub mod resolve;
pub mod srv;
pub mod wire;
pub mod xml;
