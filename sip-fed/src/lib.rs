//! fedgate-sip: SIP federation over mutual TLS on 5061 (Lync, Skype for Business, Office 365),
//! RFC 3263 / `_sipfederationtls._tcp` discovery, transactions and dialogs, and the XMPP⇄SIP
//! mapping of addresses, errors, presence and instant messages.
//!
//! Sans-IO cores: the message codec ([`msg`], [`hdr`]), transactions ([`txn`]), dialogs
//! ([`dialog`]), request checks ([`check`]), the RFC 7247 address and error mappings
//! ([`address`], [`errors`]), PIDF presence ([`pidf`]), IM bodies ([`im`]), per-partner
//! request pacing ([`pace`]) and the durable presence authorizations ([`authz_store`]); on top of them the XMPP⇄SIP back-to-back user
//! agent ([`bridge`]), and the tokio [`driver`] (mutual TLS listener and connections, RFC 3263
//! discovery, the core task, metrics).
//!
//! It may use `certs` (identities, peer checks, TLS configs) and the stanza type of `s2s`. It may
//! not know the router: it hands stanzas in and out through typed channels.

pub mod address;
pub mod authz_store;
pub mod bridge;
pub mod check;
pub mod dialog;
pub mod driver;
pub mod errors;
pub mod hdr;
pub mod im;
pub mod msg;
pub mod pace;
pub mod pidf;
pub mod txn;
