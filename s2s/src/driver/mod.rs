//! The tokio drivers around the sans-IO machines: transports, the s2s listener, the outbound
//! pool, component links, metrics and per-domain status.

pub mod acked;
pub mod components;
pub mod conn;
pub mod connect;
pub mod context;
pub mod dane;
pub mod io;
pub mod linger;
pub mod listener;
pub mod log_limit;
pub mod metrics;
pub mod pool;
pub mod posh;
pub mod receipt;
pub mod status;
pub mod stream_limit;

pub use components::Components;
pub use context::{Origin, S2sContext, Stanza, StanzaSink, StreamSettings};
pub use pool::Pool;
