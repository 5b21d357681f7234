//! The router: one routing table for every stanza. Hosted domains go to their component;
//! anything else from a hosted domain goes to the s2s pool (one stream per domain pair).
//! Whatever cannot be delivered is answered with an XMPP error (or, for errors and presence,
//! counted as dropped).

use std::sync::Arc;

use fedgate_policy::Direction;
use fedgate_s2s::driver::components::DeliverError;
use fedgate_s2s::driver::{Components, Origin, Pool, S2sContext, Stanza, StanzaSink};
use fedgate_s2s::gate::Gatekeeper as _;
use fedgate_s2s::wire::{ErrorType, stanza_domains};

use crate::classify::classify;
use crate::policy_runtime::PolicyRuntime;
use crate::sip_route::{Choice, SipRoute};

pub struct Router {
    ctx: Arc<S2sContext>,
    pool: Arc<Pool>,
    components: Arc<Components>,
    policy: Arc<PolicyRuntime>,
    /// Hosted domains served by our own IM server over the internal link.
    internal: Arc<std::collections::HashSet<String>>,
    /// Aliases (`[[domains]] aliases`) → the hosted domain whose service serves them.
    alias_of: Arc<std::collections::HashMap<String, String>>,
    /// SIP federation, when configured.
    sip: std::sync::OnceLock<Arc<SipRoute>>,
    /// Intercluster peering, when configured.
    intercluster: std::sync::OnceLock<Arc<fedgate_intercluster::driver::Intercluster>>,
}

impl Router {
    pub fn new(
        ctx: Arc<S2sContext>,
        pool: Arc<Pool>,
        components: Arc<Components>,
        policy: Arc<PolicyRuntime>,
        internal: Arc<std::collections::HashSet<String>>,
        alias_of: Arc<std::collections::HashMap<String, String>>,
    ) -> Self {
        Self {
            ctx,
            pool,
            components,
            policy,
            internal,
            alias_of,
            sip: std::sync::OnceLock::new(),
            intercluster: std::sync::OnceLock::new(),
        }
    }

    /// Routes stanzas for hosted users homed on peer clusters over their links from now on.
    pub fn set_intercluster(&self, ic: Arc<fedgate_intercluster::driver::Intercluster>) {
        let _ = self.intercluster.set(ic);
    }

    /// Routes stanzas for SIP partners over `sip` from now on.
    pub fn set_sip(&self, sip: Arc<SipRoute>) {
        let _ = self.sip.set(sip);
    }

    /// Per-stanza policy for a stanza crossing the federation boundary. `remote`/`local` are
    /// domains; `Err` means the stanza was answered (or dropped) and must not be routed; `Ok`
    /// carries the policy's `protocol` for the remote domain (used to pick s2s or SIP).
    ///
    /// Inbound denials answer `service-unavailable` without naming the rule, as a server does
    /// for a user who does not exist or blocks the sender (RFC 6121 §8.5): the remote side
    /// learns nothing about the policy. Outbound denials answer `policy-violation` with the
    /// rule, because the sender is our own user and should know why.
    fn check(
        &self,
        st: &Stanza,
        remote: &str,
        local: &str,
        direction: Direction,
    ) -> Result<Option<String>, ()> {
        let p = &self.policy;
        let inbound = direction == Direction::Inbound;
        let settings = p.settings(remote, direction);
        if !inbound {
            // Before DNS: a denied domain is never looked up or connected to.
            if let Err(why) = p.admit(remote, local, false) {
                self.ctx.bounce(
                    st,
                    ErrorType::Cancel,
                    "policy-violation",
                    "policy",
                    &format!("fedgate: {why}"),
                );
                return Err(());
            }
            if settings.protocol.as_deref() == Some("sip") && self.sip.get().is_none() {
                self.ctx.bounce(
                    st,
                    ErrorType::Cancel,
                    "service-unavailable",
                    "policy",
                    &format!("fedgate: policy: {remote} federates over SIP, and SIP federation is not configured here ([sip])"),
                );
                return Err(());
            }
        } else if matches!(st.origin, Origin::Sip { .. })
            && settings.protocol.as_deref() == Some("xmpp")
        {
            // A domain is never reached over both protocols: the policy says XMPP.
            self.ctx
                .bounce(st, ErrorType::Cancel, "service-unavailable", "policy", "");
            return Err(());
        }
        if let Some(max) = settings.max_stanza_bytes
            && st.size > max
        {
            self.ctx.bounce(
                st,
                ErrorType::Modify,
                "policy-violation",
                "limit",
                &format!("fedgate: limit: stanza of {} bytes is larger than the {max} bytes allowed for {remote}", st.size),
            );
            return Err(());
        }
        if let Err(why) = p.rate_check(remote, direction, &settings) {
            self.ctx.bounce(
                st,
                ErrorType::Wait,
                "resource-constraint",
                "rate",
                &format!("fedgate: {why}"),
            );
            return Err(());
        }
        let (from, to) = (
            st.el.attr("from").unwrap_or(""),
            st.el.attr("to").unwrap_or(""),
        );
        let (remote_jid, local_jid) = if inbound { (from, to) } else { (to, from) };
        let Some(d) = p.decide(remote_jid, local_jid, classify(&st.el), direction) else {
            return Ok(settings.protocol);
        };
        if inbound {
            self.ctx
                .bounce(st, ErrorType::Cancel, "service-unavailable", "policy", "");
        } else {
            let rule = d.rule.map_or("the default".to_owned(), |r| {
                format!("rule {} (line {})", r.id, r.line)
            });
            self.ctx.bounce(
                st,
                ErrorType::Cancel,
                "policy-violation",
                "policy",
                &format!("fedgate: policy: {rule}: {}", d.reason),
            );
        }
        Err(())
    }
}

impl StanzaSink for Router {
    fn route(&self, st: Stanza) {
        // Canonical domains (RFC 7622): every link rewrote the stanza's addresses where it
        // entered; the gateway's own error replies may echo a sender's malformed localpart, and
        // go where its domain says.
        let (from, to) = match stanza_domains(&st.el) {
            (Some(f), Some(t)) => (f.into_owned(), t.into_owned()),
            _ => {
                self.ctx
                    .metrics
                    .dropped
                    .with_label_values(&["no-address"])
                    .inc();
                return;
            }
        };
        let to_hosted = self.ctx.hosted.contains(&to);
        if let (Origin::Sip { remote, .. }, Some(sip)) = (&st.origin, self.sip.get()) {
            sip.learn(remote);
        }
        let crossing = match &st.origin {
            Origin::Remote { .. } | Origin::Sip { .. } => {
                Some((from.as_str(), to.as_str(), Direction::Inbound))
            }
            Origin::Component(_) | Origin::Internal { .. } if !to_hosted => {
                Some((to.as_str(), from.as_str(), Direction::Outbound))
            }
            _ => None,
        };
        let mut protocol = None;
        if let Some((remote, local, direction)) = crossing {
            match self.check(&st, remote, local, direction) {
                Ok(p) => protocol = p,
                Err(()) => return,
            }
        }
        // XEP-0199 pings to a hosted domain itself are answered here, as a server does, whether
        // or not its local service is attached: peers use them to test the link.
        if to_hosted && let Some(reply) = fedgate_s2s::wire::server_ping_reply(&st.el) {
            self.ctx.sink().route(Stanza::generated(reply));
            return;
        }
        // A hosted user whose home is a peer cluster: over that cluster's link (users listed
        // in no directory, and stanzas that came over a link, stay here).
        let st = match self.intercluster.get() {
            Some(ic) if to_hosted => match ic.route(st) {
                Ok(()) => return,
                Err(st) => st,
            },
            _ => st,
        };
        // The hosted domain whose service takes stanzas for `to` (itself, or the domain it is
        // an alias of).
        let service = self.alias_of.get(&to).unwrap_or(&to);
        if to_hosted && self.internal.contains(service) {
            // To our own IM server over s2s, the gateway acting as the sender's domain.
            self.pool.send(&from, &to, st);
            return;
        }
        if to_hosted {
            if let Err(e) = self.components.deliver(&self.ctx, service, st) {
                match e {
                    DeliverError::NotConnected(st) => self.ctx.bounce(
                        &st,
                        ErrorType::Cancel,
                        "service-unavailable",
                        "component-offline",
                        &format!("fedgate: the local service for {to} is not connected"),
                    ),
                    DeliverError::QueueFull(st) => self.ctx.bounce(
                        &st,
                        ErrorType::Wait,
                        "resource-constraint",
                        "limit",
                        &format!("fedgate: limit: the queue to the local service for {to} is full"),
                    ),
                }
            }
            return;
        }
        if self.ctx.hosted.contains(&from) {
            if let Origin::Remote { .. } | Origin::Sip { .. } | Origin::Intercluster { .. } =
                st.origin
            {
                // Inbound streams, SIP partners and peer clusters only bring stanzas for
                // hosted users; never relay them to the outside (no policy check ran).
                self.ctx.metrics.dropped.with_label_values(&["relay"]).inc();
                return;
            }
            if let Some(sip) = self.sip.get() {
                // The policy's `protocol`: from the outbound check above, or (for the gateway's
                // own error replies, which are not checked) looked up now.
                if crossing.is_none() {
                    protocol = self.policy.settings(&to, Direction::Outbound).protocol;
                }
                match sip.choose(&to, protocol.as_deref()) {
                    Choice::Sip => return sip.send(&self.ctx, st),
                    Choice::Wait => return sip.park(&self.ctx, &to, st),
                    Choice::Xmpp => {}
                }
            }
            self.pool.send(&from, &to, st);
            return;
        }
        if let Origin::Component(domain) = &st.origin
            && fedgate_s2s::wire::bounceable(&st.el)
        {
            // A component may send from a subdomain of its domain (its stream allows it), but
            // only a configured alias is a name this gateway serves: tell the component. The
            // error goes straight back to it (its `to`, the subdomain, is not routable).
            let reply = fedgate_s2s::wire::bounce(
                &st.el,
                ErrorType::Cancel,
                "not-allowed",
                &format!(
                    "fedgate: {from} is not served here: add it to the aliases of {domain} ([[domains]] aliases) to send from it"
                ),
                Some(domain),
            );
            self.ctx
                .metrics
                .bounced
                .with_label_values(&["not-hosted"])
                .inc();
            let _ = self
                .components
                .deliver(&self.ctx, domain, Stanza::generated(reply));
            return;
        }
        self.ctx
            .metrics
            .dropped
            .with_label_values(&["not-routable"])
            .inc();
        tracing::debug!(%from, %to, "neither side is hosted here; dropped");
    }
}
