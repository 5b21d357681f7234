//! fedgate: the federation gateway binary and its wiring. This room holds the CLI, config
//! loading, the router (routing table: domain → link: components, s2s, SIP, peer clusters),
//! the metrics/health/status HTTP endpoint, `fedgate probe` (XMPP and `--sip`), `fedgate
//! directory`, `fedgate demo`, `fedgate bench`, and test helpers (in-process DNS, a SIP
//! partner endpoint, a component client) used by the demo, the benchmarks and the tests.
//!
//! Protocol logic lives in the crates beside it (`s2s`, `certs`, `policy`, `sip-fed`,
//! `intercluster`); this crate only wires them together and may not reimplement it.

pub mod bench;
pub mod cert_reload;
pub mod certs_cli;
pub mod classify;
pub mod cluster;
pub mod component_client;
pub mod config;
pub mod demo;
pub mod directory_cli;
pub mod dist_assets;
pub mod gateway;
pub mod http;
pub mod intercluster_runtime;
pub mod internal_dns;
pub mod labpki;
pub mod policy_cli;
pub mod policy_runtime;
pub mod probe;
pub mod probe_sip;
pub mod provers;
pub mod router;
pub mod sip_config;
pub mod sip_peer;
pub mod sip_route;
pub mod testdns;
pub mod testhttps;
