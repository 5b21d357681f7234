//! Which protocol reaches a remote domain, and the hand-off of stanzas to the SIP link.
//!
//! A domain is SIP when the policy says `protocol = "sip"`, when it is a configured
//! `[[sip.partners]]` domain, or (with `sip.discover`) when DNS has
//! `_sipfederationtls._tcp.<domain>` and no `_xmpp-server`/`_xmpps-server` records. XMPP wins
//! whenever it is explicit or its records exist, so a domain is never reached over both. The
//! discovery answer is cached for [`DISCOVERY_TTL`]; stanzas for a domain being looked up wait
//! (bounded) and go on when the answer is in, to the SIP link or the s2s pool: the router's
//! checks (policy, rate) ran once, before they were parked, and do not run again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedgate_s2s::driver::{Pool, S2sContext, Stanza};
use fedgate_s2s::wire::{ErrorType, stanza_domains};
use fedgate_sip::driver::SipFed;
use fedgate_sip::driver::discover::{Discovered, discover_protocol};

/// How long a discovered protocol is remembered.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(600);
/// Stanzas waiting for one domain's discovery.
const MAX_WAITING: usize = 1000;
/// Domains whose discovered protocol is remembered at most.
const MAX_DISCOVERED: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Xmpp,
    Sip,
    /// Discovery is under way: park the stanza.
    Wait,
}

pub struct SipRoute {
    pub link: SipFed,
    /// Where parked stanzas go when the domain turns out to be XMPP.
    pool: Arc<Pool>,
    partners: HashSet<String>,
    discover: bool,
    /// Discovered protocols (DNS-derived): bounded, each for [`DISCOVERY_TTL`].
    cache: moka::sync::Cache<String, (bool, Instant)>,
    waiting: Mutex<HashMap<String, Vec<Stanza>>>,
}

impl SipRoute {
    pub fn new(link: SipFed, pool: Arc<Pool>, partners: HashSet<String>, discover: bool) -> Self {
        Self {
            link,
            pool,
            partners,
            discover,
            cache: moka::sync::Cache::builder()
                .max_capacity(MAX_DISCOVERED)
                .time_to_live(DISCOVERY_TTL)
                .build(),
            waiting: Mutex::default(),
        }
    }

    pub fn is_partner(&self, domain: &str) -> bool {
        self.partners.contains(domain)
    }

    /// The protocol for `domain`, given the policy's `protocol` for it.
    pub fn choose(&self, domain: &str, policy: Option<&str>) -> Choice {
        match policy {
            Some("sip") => return Choice::Sip,
            Some(_) => return Choice::Xmpp,
            None => {}
        }
        if self.partners.contains(domain) {
            return Choice::Sip;
        }
        if !self.discover {
            return Choice::Xmpp;
        }
        match self.cache.get(domain) {
            Some((sip, at)) if at.elapsed() < DISCOVERY_TTL => {
                if sip {
                    Choice::Sip
                } else {
                    Choice::Xmpp
                }
            }
            _ => Choice::Wait,
        }
    }

    /// `domain` just reached us over SIP (its certificate verified for it): unless DNS already
    /// said XMPP, it is SIP, so replies and bounces go back at once instead of waiting for a
    /// lookup (a bounce that waited would find the SIP request already answered).
    pub fn learn(&self, domain: &str) {
        if !self.discover || self.partners.contains(domain) {
            return;
        }
        match self.cache.get(domain) {
            Some((_, at)) if at.elapsed() < DISCOVERY_TTL / 2 => {}
            Some((false, at)) if at.elapsed() < DISCOVERY_TTL => {}
            _ => self.cache.insert(domain.to_owned(), (true, Instant::now())),
        }
    }

    /// Hands a stanza to the SIP link; a full queue bounces it.
    pub fn send(&self, ctx: &S2sContext, st: Stanza) {
        if let Err(st) = self.link.send(st) {
            ctx.bounce(
                &st,
                ErrorType::Wait,
                "resource-constraint",
                "limit",
                "fedgate: limit: the SIP link's queue is full",
            );
        }
    }

    /// Parks `st`, which passed the router's checks, until `domain`'s protocol is known
    /// (starting the lookup if needed); then hands it to the SIP link or the s2s pool.
    pub fn park(self: &Arc<Self>, ctx: &Arc<S2sContext>, domain: &str, st: Stanza) {
        let first = {
            let mut w = self.waiting.lock().expect("sip route lock");
            let q = w.entry(domain.to_owned()).or_default();
            if q.len() >= MAX_WAITING {
                drop(w);
                ctx.bounce(
                    &st,
                    ErrorType::Wait,
                    "resource-constraint",
                    "limit",
                    "fedgate: limit: too many stanzas wait for this domain's DNS lookup",
                );
                return;
            }
            q.push(st);
            q.len() == 1
        };
        if !first {
            return;
        }
        let (this, ctx, domain) = (self.clone(), ctx.clone(), domain.to_owned());
        tokio::spawn(async move {
            let sip = match discover_protocol(&ctx.resolver, &domain).await {
                Ok(Discovered::Sip) => true,
                Ok(_) => false,
                Err(e) => {
                    tracing::debug!(%domain, error = %e, "protocol discovery failed; using XMPP");
                    false
                }
            };
            if sip {
                tracing::info!(%domain, "discovered a SIP federation domain (_sipfederationtls, no XMPP SRV)");
            }
            this.cache.insert(domain.clone(), (sip, Instant::now()));
            let parked = this
                .waiting
                .lock()
                .expect("sip route lock")
                .remove(&domain)
                .unwrap_or_default();
            for st in parked {
                if sip {
                    this.send(&ctx, st);
                    continue;
                }
                match stanza_domains(&st.el) {
                    (Some(from), Some(to)) => {
                        let (from, to) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
                        this.pool.send(&from, &to, st);
                    }
                    _ => ctx.metrics.dropped.with_label_values(&["no-address"]).inc(),
                }
            }
        });
    }
}
