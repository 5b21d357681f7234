//! Own identities: the certificate chain and key of each hosted domain, and the store that
//! picks one by SNI (or by the stream `to`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::error::CertError;
use crate::failure::CertFailure;
use crate::names::{NameMatch, check_name, parse_cert};
use crate::pem::{parse_certs, parse_key, read_file};
use crate::provider::crypto_provider;

/// One own identity: the certificate chain and key of a hosted domain.
#[derive(Clone)]
pub struct Identity {
    /// The hosted domain this identity is for (as configured).
    pub domain: String,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Chain and signing key, ready for rustls.
    pub certified: Arc<CertifiedKey>,
    /// Expiry of the leaf certificate, unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("domain", &self.domain)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads a chain (leaf first) and a private key from PEM files. Errors name the file.
    pub fn load(domain: &str, cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        Self::from_pem_bytes(
            domain,
            &cert_pem,
            &cert_path.display().to_string(),
            &key_pem,
            &key_path.display().to_string(),
        )
    }

    /// Builds an identity from PEM text (chain leaf first, and a PKCS#8/PKCS#1/SEC1 key).
    /// Checks that the key belongs to the leaf certificate.
    pub fn from_pem(domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Self::from_pem_bytes(
            domain,
            cert_pem.as_bytes(),
            &format!("certificate PEM of {domain}"),
            key_pem.as_bytes(),
            &format!("key PEM of {domain}"),
        )
    }

    pub(crate) fn from_pem_bytes(
        domain: &str,
        cert_pem: &[u8],
        cert_source: &str,
        key_pem: &[u8],
        key_source: &str,
    ) -> Result<Self, CertError> {
        let chain = parse_certs(cert_pem, cert_source)?;
        let key = parse_key(key_pem, key_source)?;
        let leaf = parse_cert(&chain[0]).map_err(|f| CertError::BadCertificate {
            source_name: cert_source.to_owned(),
            detail: f.detail,
        })?;
        let not_after = leaf.validity().not_after.timestamp();
        let provider = crypto_provider();
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| CertError::BadKey {
                    source_name: key_source.to_owned(),
                    detail: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                tracing::debug!(domain, "cannot tell whether key and certificate match");
            }
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(CertError::KeyMismatch {
                    domain: domain.to_owned(),
                });
            }
            Err(e) => {
                return Err(CertError::BadCertificate {
                    source_name: cert_source.to_owned(),
                    detail: e.to_string(),
                });
            }
        }
        if let Err(f) = check_name(&chain[0], domain) {
            // Not fatal: a hosted domain may be served under its provider's name with POSH.
            tracing::warn!(domain, %f, "own certificate does not name the hosted domain");
        }
        Ok(Identity {
            domain: domain.to_owned(),
            chain,
            certified: Arc::new(certified),
            not_after,
        })
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Whether the leaf names `domain` (a lint for configuration: the certificate of a hosted
    /// domain should cover it and its aliases).
    pub fn covers(&self, domain: &str) -> Result<NameMatch, CertFailure> {
        check_name(self.leaf(), domain)
    }
}

/// The canonical domain (RFC 7622: lower-case U-labels, no trailing dot), the key of the
/// store: a TLS SNI in A-labels and a stream `to` in U-labels find the same identity.
fn store_key(domain: &str) -> String {
    fedgate_jid::canonical_domain(domain).map_or_else(
        |_| {
            domain
                .strip_suffix('.')
                .unwrap_or(domain)
                .to_ascii_lowercase()
        },
        std::borrow::Cow::into_owned,
    )
}

/// The map behind the store: one immutable snapshot, swapped whole on change.
#[derive(Default, Clone)]
struct StoreMap {
    by_domain: HashMap<String, Arc<Identity>>,
    /// Insertion order of the keys; the first is the default.
    order: Vec<String>,
    /// Further names served with a domain's identity (`[[domains]] aliases`): alias key →
    /// domain key. A replaced identity serves its aliases at once.
    aliases: HashMap<String, String>,
}

impl StoreMap {
    fn lookup(&self, domain: &str) -> Option<&Arc<Identity>> {
        let key = store_key(domain);
        self.by_domain.get(&key).or_else(|| {
            self.aliases
                .get(&key)
                .and_then(|parent| self.by_domain.get(parent))
        })
    }

    fn with(&self, id: Identity) -> (StoreMap, Option<Arc<Identity>>) {
        let mut next = self.clone();
        let key = store_key(&id.domain);
        let old = next.by_domain.insert(key.clone(), Arc::new(id));
        if old.is_none() {
            next.order.push(key);
        }
        (next, old)
    }
}

/// Own identities by hosted domain.
///
/// Picks by SNI (or by stream `to` via [`get`](IdentityStore::get)); the TLS resolver falls back
/// to the default identity (the first one added) when SNI is absent or unknown.
///
/// The map sits behind an [`ArcSwap`]: [`replace`](IdentityStore::replace) swaps one domain's
/// identity while the store is shared (`Arc<IdentityStore>` inside rustls configs), so new
/// handshakes get the new certificate and open connections keep theirs. Validate a
/// replacement first ([`check_identity`](crate::check_identity)).
#[derive(Default)]
pub struct IdentityStore {
    map: ArcSwap<StoreMap>,
}

impl Clone for IdentityStore {
    /// An independent store holding the same identities now.
    fn clone(&self) -> Self {
        IdentityStore {
            map: ArcSwap::new(self.map.load_full()),
        }
    }
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore")
            .field("domains", &self.map.load().order)
            .finish()
    }
}

impl IdentityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an identity, replacing one of the same domain (which keeps its place in the order,
    /// so replacing the default keeps it the default).
    pub fn insert(&mut self, id: Identity) {
        self.replace(id);
    }

    /// Swaps in `id` for its domain (or adds it) while the store is shared; returns the
    /// identity it replaced. New TLS handshakes use it at once; open connections are not
    /// touched. No check is made here: validate first.
    pub fn replace(&self, id: Identity) -> Option<Arc<Identity>> {
        let mut old = None;
        self.map.rcu(|cur| {
            let (next, prev) = cur.with(id.clone());
            old = prev;
            next
        });
        old
    }

    /// Serves `alias` with the identity of hosted `domain` (whose certificate must cover it;
    /// `certs check` and reloads verify that).
    pub fn alias(&self, alias: &str, domain: &str) {
        let (alias, domain) = (store_key(alias), store_key(domain));
        self.map.rcu(|cur| {
            let mut next = StoreMap::clone(cur);
            next.aliases.insert(alias.clone(), domain.clone());
            next
        });
    }

    /// The identity of a hosted domain or one of its aliases (case-insensitive, trailing dot
    /// tolerant); no fallback.
    pub fn get(&self, domain: &str) -> Option<Arc<Identity>> {
        self.map.load().lookup(domain).cloned()
    }

    /// The identity for `domain`, or the default when there is none (what TLS uses).
    pub fn get_or_default(&self, domain: Option<&str>) -> Option<Arc<Identity>> {
        let map = self.map.load();
        domain
            .and_then(|d| map.lookup(d))
            .or_else(|| map.order.first().and_then(|k| map.by_domain.get(k)))
            .cloned()
    }

    /// The default identity: the first added.
    pub fn default_identity(&self) -> Option<Arc<Identity>> {
        self.get_or_default(None)
    }

    /// The hosted domains, in insertion order (normalized: lowercase, no trailing dot).
    pub fn domains(&self) -> Vec<String> {
        self.map.load().order.clone()
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.map.load().order.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.load().order.is_empty()
    }

    /// The current identities in insertion order (e.g. for expiry gauges): a snapshot.
    pub fn identities(&self) -> Vec<Arc<Identity>> {
        let map = self.map.load();
        map.order
            .iter()
            .filter_map(|k| map.by_domain.get(k))
            .cloned()
            .collect()
    }
}

impl ResolvesServerCert for IdentityStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        let id = self.get_or_default(sni)?;
        if let Some(sni) = sni
            && store_key(sni) != store_key(&id.domain)
        {
            tracing::debug!(sni, default = %id.domain, "unknown SNI, using default identity");
        }
        Some(id.certified.clone())
    }
}
