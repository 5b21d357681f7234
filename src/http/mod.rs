//! fedgate's HTTP, all on hyper (HTTP/1.1 only):
//!
//! - [`status`]: the status listener (`[metrics] listen`), read-only: `GET /metrics`,
//!   `/healthz`, `/status` and `GET /intercluster/peers|lookup|conflicts`;
//! - [`admin`]: the admin listener (`[admin]`, off by default): `POST
//!   /intercluster/assign|unassign`, each request checked for its `Host` and its token, over
//!   TCP, TLS or a Unix socket;
//! - [`server`]: how both listeners serve connections (limits, timeouts, bad requests);
//! - [`client`]: the HTTP client of `fedgate directory`.
//!
//! The POSH client (RFC 7711) is the other HTTP user; it lives with the s2s driver
//! (`fedgate_s2s::driver::posh`), on the same hyper.

pub mod admin;
pub mod client;
pub mod server;
pub mod status;

pub use admin::read_admin_token;
pub use status::{HttpState, metrics_text, status_json};
