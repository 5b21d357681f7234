//! fedgate-intercluster: router-to-router links between clusters of the same domain, the
//! user → home-cluster directory and its sync (sequenced deltas plus digest anti-entropy).
//!
//! It may use `certs` and the stream machinery of `s2s`; it may not know the router.

pub mod ldap_source;
