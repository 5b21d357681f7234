//! The `[sip]` config section: SIP federation with Lync, Skype for Business, Office 365 and
//! standards SIP partners (documented in README.md, "Configuration reference").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fedgate_sip::bridge::{BridgeConfig, Flavor};
use fedgate_sip::driver::{NameCheck, Partner, SipSettings};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// SIP over mutual TLS listen addresses (5061). Empty: no SIP listener (partners can still
    /// be reached outbound when `partners` or the policy names SIP domains).
    pub listen: Vec<String>,
    /// Our SIP host name in Via and Contact (default: the first hosted domain).
    pub host: Option<String>,
    /// Port in Via and Contact (default: the first listen port, else 5061).
    pub port: Option<u16>,
    /// Treat a domain as SIP when DNS has `_sipfederationtls._tcp` and no XMPP SRV records.
    pub discover: bool,
    /// IM flavor of partners not configured below: "microsoft" (session mode) or "standard"
    /// (RFC 7572 page mode).
    pub default_flavor: String,
    /// A session-mode IM dialog is closed with BYE after this many idle seconds.
    pub session_idle_secs: u64,
    /// Expires asked for and granted at most on presence subscriptions.
    pub subscription_expires_secs: u32,
    /// Timer B/F: a request with no final response by then fails (64·T1 = 32 s).
    pub transaction_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Largest SIP message body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The presence authorization store (JSON, rewritten atomically on change). Without it,
    /// authorizations are kept in memory and lost at restart.
    pub authz_store: Option<PathBuf>,
    /// Requests per second sent to a partner not listed in `partners` (0: no limit); Microsoft
    /// edges take 20 SIP messages per second from a discovered partner.
    pub discovered_max_rate: f64,
    /// Longest wait, in seconds, of a request held back by a partner's rate before it fails
    /// (at most half of `transaction_timeout_secs`).
    pub pace_max_wait_secs: u64,
    pub partners: Vec<SipPartnerConfig>,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            host: None,
            port: None,
            discover: true,
            default_flavor: "microsoft".into(),
            session_idle_secs: 300,
            subscription_expires_secs: 3600,
            transaction_timeout_secs: 32,
            connect_timeout_secs: 10,
            max_body_bytes: 64 * 1024,
            authz_store: None,
            discovered_max_rate: 20.0,
            pace_max_wait_secs: 10,
            partners: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipPartnerConfig {
    /// The partner's SIP domain.
    pub domain: String,
    /// Static route "host:port", used when DNS has no SIP records for the domain.
    pub route: Option<String>,
    /// "microsoft" or "standard"; default: `default_flavor`, or what its traffic shows.
    pub flavor: Option<String>,
    /// "domain" (the certificate must name the SIP domain) or "domain-or-srv-target" (or the
    /// target of its SRV record, as Microsoft edges' certificates do). Default: the latter.
    pub name_check: Option<String>,
    /// Requests per second we send this partner (default 0: no limit).
    #[serde(default)]
    pub max_rate: f64,
}

impl SipConfig {
    /// Whether SIP federation runs at all.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.partners.is_empty()
    }

    /// `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for a in &self.listen {
            a.parse::<SocketAddr>().map_err(|_| {
                (
                    "sip.listen".to_owned(),
                    format!("'{a}' is not an ip:port address"),
                )
            })?;
        }
        if Flavor::parse(&self.default_flavor).is_none() {
            return Err((
                "sip.default_flavor".into(),
                format!(
                    "'{}': use \"microsoft\" or \"standard\"",
                    self.default_flavor
                ),
            ));
        }
        if self.subscription_expires_secs < 60 {
            return Err((
                "sip.subscription_expires_secs".into(),
                "must be at least 60".into(),
            ));
        }
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        if !rate_ok(self.discovered_max_rate) {
            return Err((
                "sip.discovered_max_rate".into(),
                "must be a number >= 0 (0: no limit)".into(),
            ));
        }
        if self.pace_max_wait_secs == 0 {
            return Err(("sip.pace_max_wait_secs".into(), "must be at least 1".into()));
        }
        for (i, p) in self.partners.iter().enumerate() {
            let k = format!("sip.partners[{i}]");
            if !rate_ok(p.max_rate) {
                return Err((
                    format!("{k}.max_rate"),
                    "must be a number >= 0 (0: no limit)".into(),
                ));
            }
            if p.domain.is_empty() || p.domain.contains(['@', '/', ' ']) || !p.domain.contains('.')
            {
                return Err((
                    format!("{k}.domain"),
                    format!("'{}' is not a domain name", p.domain),
                ));
            }
            if let Some(r) = &p.route {
                parse_route(r).map_err(|e| (format!("{k}.route"), e))?;
            }
            if let Some(f) = &p.flavor
                && Flavor::parse(f).is_none()
            {
                return Err((
                    format!("{k}.flavor"),
                    format!("'{f}': use \"microsoft\" or \"standard\""),
                ));
            }
            if let Some(n) = &p.name_check
                && !matches!(n.as_str(), "domain" | "domain-or-srv-target")
            {
                return Err((
                    format!("{k}.name_check"),
                    format!("'{n}': use \"domain\" or \"domain-or-srv-target\""),
                ));
            }
        }
        Ok(())
    }

    /// The settings of the SIP link.
    pub fn settings(&self, first_domain: &str) -> SipSettings {
        let listen: Vec<SocketAddr> = self.listen.iter().filter_map(|a| a.parse().ok()).collect();
        let port = self
            .port
            .or_else(|| listen.first().map(SocketAddr::port))
            .unwrap_or(5061);
        let partners = self
            .partners
            .iter()
            .map(|p| {
                let domain = fedgate_jid::canonical_domain(&p.domain).map_or_else(
                    |_| p.domain.trim_end_matches('.').to_ascii_lowercase(),
                    std::borrow::Cow::into_owned,
                );
                (
                    domain,
                    Partner {
                        route: p.route.as_deref().and_then(|r| parse_route(r).ok()),
                        flavor: p.flavor.as_deref().and_then(Flavor::parse),
                        name_check: match p.name_check.as_deref() {
                            Some("domain") => NameCheck::Domain,
                            _ => NameCheck::DomainOrSrvTarget,
                        },
                        max_rate: p.max_rate,
                    },
                )
            })
            .collect();
        let limits = fedgate_sip::msg::Limits {
            max_body_bytes: self.max_body_bytes,
            ..Default::default()
        };
        SipSettings {
            listen,
            partners,
            bridge: BridgeConfig {
                host: self.host.clone().unwrap_or_else(|| first_domain.to_owned()),
                port,
                session_idle: Duration::from_secs(self.session_idle_secs),
                subscription_expires: self.subscription_expires_secs,
                txn_timeout: Duration::from_secs(self.transaction_timeout_secs),
                default_flavor: Flavor::parse(&self.default_flavor).unwrap_or_default(),
                ..BridgeConfig::default()
            },
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            limits,
            discovered_max_rate: self.discovered_max_rate,
            pace_max_wait: Duration::from_secs(
                self.pace_max_wait_secs
                    .min(self.transaction_timeout_secs / 2)
                    .max(1),
            ),
            ..SipSettings::default()
        }
    }
}

/// "host:port" (IPv6 in brackets).
fn parse_route(r: &str) -> Result<(String, u16), String> {
    let (host, port) = r
        .rsplit_once(':')
        .ok_or_else(|| format!("'{r}': expected host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("'{r}': bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(format!("'{r}': bad host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SipConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn partner_rates_default_to_twenty_for_undeclared_and_none_for_declared() {
        let c = parse(
            "[[partners]]\ndomain = \"lync.test\"\n\n[[partners]]\ndomain = \"o365.test\"\nmax_rate = 5.5\n",
        );
        c.validate().unwrap();
        let s = c.settings("example.test");
        assert_eq!(s.max_rate("lync.test"), 0.0);
        assert_eq!(s.max_rate("o365.test"), 5.5);
        assert_eq!(s.max_rate("somewhere.test"), 20.0);
        assert_eq!(s.pace_max_wait, Duration::from_secs(10));
    }

    #[test]
    fn bad_rates_and_waits_are_named() {
        let key = |text: &str| parse(text).validate().unwrap_err().0;
        assert_eq!(
            key("discovered_max_rate = -1.0\n"),
            "sip.discovered_max_rate"
        );
        assert_eq!(
            key("[[partners]]\ndomain = \"a.test\"\nmax_rate = -3.0\n"),
            "sip.partners[0].max_rate"
        );
        assert_eq!(key("pace_max_wait_secs = 0\n"), "sip.pace_max_wait_secs");
        assert!(parse("discovered_max_rate = 0.0\n").validate().is_ok());
        // The wait stays well inside the transaction timeout.
        let c = parse("transaction_timeout_secs = 6\npace_max_wait_secs = 30\n");
        c.validate().unwrap();
        assert_eq!(c.settings("x.test").pace_max_wait, Duration::from_secs(3));
    }
}
