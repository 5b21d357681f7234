//! The tokio side of SIP federation: the mutual-TLS listener and outbound connections
//! ([`conn`]), server location ([`discover`]), metrics, and the core task that runs the
//! sans-IO [`Bridge`](crate::bridge::Bridge) between the router and the SIP connections.
//!
//! The router hands stanzas for SIP partners to [`SipFed::send`]; stanzas translated from SIP
//! go to the router's [`StanzaSink`] with [`Origin::Sip`].

pub mod conn;
mod core;
pub mod discover;
pub mod metrics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fedgate_s2s::driver::{S2sContext, Stanza};
use tokio::sync::{mpsc, watch};

pub use self::metrics::SipMetrics;
use crate::bridge::{BridgeConfig, Flavor};

/// A typed SIP link failure (logs, metrics, Warning headers, XMPP error text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Dns,
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The peer's chain does not lead to a trust anchor (or is expired, revoked, pinned away).
    TlsUntrusted,
    /// The chain is good but does not name the partner domain (nor an allowed SRV target).
    NameMismatch,
    /// The peer did not present a client certificate.
    NoClientCert,
    Timeout,
    /// Bytes that are not SIP.
    Protocol,
    /// A queue towards the partner is full.
    Limit,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::TlsUntrusted => "tls-untrusted",
            Self::NameMismatch => "name-mismatch",
            Self::NoClientCert => "no-client-cert",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::Limit => "limit",
        }
    }
}

/// Which names a partner's certificate may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameCheck {
    /// The SIP domain itself.
    Domain,
    /// The SIP domain, or the target of its `_sipfederationtls`/`_sips` SRV record (Microsoft
    /// edges carry their own FQDN).
    #[default]
    DomainOrSrvTarget,
}

/// One configured partner.
#[derive(Debug, Clone, Default)]
pub struct Partner {
    /// Static route `(host, port)`, used when DNS has no SIP records for the domain.
    pub route: Option<(String, u16)>,
    pub flavor: Option<Flavor>,
    pub name_check: NameCheck,
    /// Requests per second we send this partner (0: no limit).
    pub max_rate: f64,
}

/// SIP federation settings (from the `[sip]` config section).
#[derive(Debug, Clone)]
pub struct SipSettings {
    pub listen: Vec<SocketAddr>,
    pub partners: BTreeMap<String, Partner>,
    pub bridge: BridgeConfig,
    pub connect_timeout: Duration,
    /// Messages queued per connection before it is considered stuck.
    pub conn_queue: usize,
    pub limits: crate::msg::Limits,
    /// Requests per second we send a partner that is not configured (0: no limit). Microsoft
    /// edges take 20 SIP messages per second from a discovered partner.
    pub discovered_max_rate: f64,
    /// Longest wait of a request held back by a partner's rate before it fails (`limit`).
    pub pace_max_wait: Duration,
}

impl SipSettings {
    pub fn static_routes(&self) -> BTreeMap<String, (String, u16)> {
        self.partners
            .iter()
            .filter_map(|(d, p)| p.route.clone().map(|r| (d.clone(), r)))
            .collect()
    }

    /// Requests per second we send `domain` (0: no limit).
    pub fn max_rate(&self, domain: &str) -> f64 {
        self.partners
            .get(domain)
            .map_or(self.discovered_max_rate, |p| p.max_rate)
    }

    pub fn name_check(&self, domain: &str) -> NameCheck {
        self.partners
            .get(domain)
            .map(|p| p.name_check)
            .unwrap_or_default()
    }
}

impl Default for SipSettings {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            partners: BTreeMap::new(),
            bridge: BridgeConfig::default(),
            connect_timeout: Duration::from_secs(10),
            conn_queue: 4096,
            limits: crate::msg::Limits::default(),
            discovered_max_rate: 20.0,
            pace_max_wait: Duration::from_secs(10),
        }
    }
}

/// Stanzas queued from the router to the SIP core before it is considered overloaded.
const STANZA_QUEUE: usize = 16_384;

/// The running SIP federation link.
pub struct SipFed {
    stanzas: mpsc::Sender<Stanza>,
    status: watch::Receiver<serde_json::Value>,
    pub addrs: Vec<SocketAddr>,
    pub metrics: SipMetrics,
}

impl SipFed {
    /// Binds the listeners and starts the core task. `authz_path`: the durable presence
    /// authorization store.
    pub async fn start(
        ctx: Arc<S2sContext>,
        settings: SipSettings,
        authz_path: Option<PathBuf>,
        registry: &prometheus::Registry,
    ) -> Result<Self, String> {
        let settings = Arc::new(settings);
        let metrics = SipMetrics::new(registry);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let shared = Arc::new(conn::Shared::new(
            ctx.clone(),
            settings.clone(),
            events_tx,
            metrics.clone(),
        ));
        let mut addrs = Vec::new();
        for a in &settings.listen {
            let local = conn::listen(shared.clone(), *a)
                .await
                .map_err(|e| format!("cannot listen for SIP on {a}: {e}"))?;
            addrs.push(local);
        }
        let (stanzas_tx, stanzas_rx) = mpsc::channel(STANZA_QUEUE);
        let (status_tx, status_rx) = watch::channel(serde_json::Value::Null);
        let core = core::Core::new(shared, authz_path, status_tx)?;
        tokio::spawn(core.run(events_rx, stanzas_rx));
        Ok(Self {
            stanzas: stanzas_tx,
            status: status_rx,
            addrs,
            metrics,
        })
    }

    /// A stanza for a SIP partner. Never blocks: a full queue is `Err` with the stanza back
    /// (the caller bounces it).
    pub fn send(&self, st: Stanza) -> Result<(), Box<Stanza>> {
        self.stanzas.try_send(st).map_err(|e| match e {
            mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => {
                Box::new(s)
            }
        })
    }

    /// Per-partner status for `/status`.
    pub fn status(&self) -> serde_json::Value {
        self.status.borrow().clone()
    }
}
