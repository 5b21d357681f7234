//! fedgate-intercluster: router-to-router links between clusters of the same domain, the
//! user → home-cluster directory and its sync (sequenced deltas plus digest anti-entropy).
//!
//! Nothing lives here yet: the intercluster issue fills this room. It may use `certs`, `policy`
//! and the stream machinery of `s2s`; it may not know the router.
