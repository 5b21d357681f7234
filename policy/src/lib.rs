//! fedgate-policy: the per-domain federation policy (allow/deny, direction, what may cross,
//! authentication floor, limits), its file parser with line-accurate errors, lint, compiled
//! index and decisions with explanations.
//!
//! Nothing lives here yet: the policy issue fills this room. Until then the gateway applies the
//! global authentication settings of its config file. This crate is a leaf: it may not depend on
//! any other fedgate crate, and it does no I/O besides reading the files it is given.
