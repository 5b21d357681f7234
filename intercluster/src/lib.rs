//! fedgate-intercluster: router-to-router links between clusters of the same domain, the
//! user → home-cluster directory and its sync (sequenced deltas plus digest anti-entropy).
//!
//! It may use `certs` and the stream machinery of `s2s`; it may not know the router: stanzas
//! come in through [`driver::Intercluster::route`] and go out through the [`driver::Host`]
//! trait the root crate implements.
//!
//! Sans-IO cores: [`directory`] (origin logs, replicas, resolution, conflicts), [`session`]
//! (the sync machine of one link), [`wire`] (the XML elements), [`routing`] (home lookup,
//! loop guard, presence packing), [`queue`] (bounded per-peer queue), [`delivery`] (numbered
//! routes, acknowledgements and their hand-over to a new link), [`sources`] (user sources
//! merged into the own origin). The tokio side is [`driver`].

pub mod delivery;
pub mod directory;
pub mod driver;
pub mod failure;
pub mod ldap_source;
pub mod queue;
pub mod routing;
pub mod session;
pub mod sources;
pub mod wire;
