//! The one place where the crypto provider is chosen.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider of fedgate: *ring* (aws-lc-rs is not built, it doubles build time).
///
/// Every rustls config and every signature check of this crate uses it; other crates should
/// take it from here rather than rely on a process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
