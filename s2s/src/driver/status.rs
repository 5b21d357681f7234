//! Per-remote-domain state for `/status` and `fedgate` logs: streams, how they authenticated,
//! the last attempts and the last error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::wire::Failure;

#[derive(Debug, Clone, Default)]
pub struct DomainStatus {
    pub inbound_streams: u32,
    pub outbound_streams: u32,
    /// (local domain, method) for each authenticated pair with this remote domain.
    pub auth_methods: BTreeMap<String, String>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<(SystemTime, Failure)>,
    /// The last attempts: when, target, result.
    pub attempts: VecDeque<(SystemTime, String, String)>,
    /// Expiry (unix seconds) of the certificate of each authenticated stream with this domain.
    pub peer_cert_expiry: Vec<i64>,
}

#[derive(Default)]
pub struct Status {
    domains: Mutex<HashMap<String, DomainStatus>>,
}

const MAX_ATTEMPTS: usize = 5;
const MAX_DOMAINS: usize = 10_000;

impl Status {
    fn with(&self, domain: &str, f: impl FnOnce(&mut DomainStatus)) {
        let mut m = self.domains.lock().expect("status lock");
        if !m.contains_key(domain) && m.len() >= MAX_DOMAINS {
            return;
        }
        f(m.entry(domain.to_owned()).or_default());
    }

    pub fn stream_opened(&self, remote: &str, outbound: bool) {
        self.with(remote, |d| {
            if outbound {
                d.outbound_streams += 1;
            } else {
                d.inbound_streams += 1;
            }
        });
    }

    pub fn stream_closed(&self, remote: &str, outbound: bool) {
        self.with(remote, |d| {
            if outbound {
                d.outbound_streams = d.outbound_streams.saturating_sub(1);
            } else {
                d.inbound_streams = d.inbound_streams.saturating_sub(1);
            }
        });
    }

    pub fn authenticated(&self, remote: &str, local: &str, method: &str) {
        self.with(remote, |d| {
            d.auth_methods.insert(local.to_owned(), method.to_owned());
            d.last_success = Some(SystemTime::now());
        });
    }

    pub fn attempt(&self, remote: &str, target: &str, result: Result<(), &Failure>) {
        self.with(remote, |d| {
            let now = SystemTime::now();
            let r = match result {
                Ok(()) => "ok".to_owned(),
                Err(f) => {
                    d.last_error = Some((now, f.clone()));
                    f.to_string()
                }
            };
            d.attempts.push_back((now, target.to_owned(), r));
            while d.attempts.len() > MAX_ATTEMPTS {
                d.attempts.pop_front();
            }
        });
    }

    pub fn peer_cert_add(&self, remote: &str, not_after: i64) {
        self.with(remote, |d| d.peer_cert_expiry.push(not_after));
    }

    pub fn peer_cert_remove(&self, remote: &str, not_after: i64) {
        self.with(remote, |d| {
            if let Some(i) = d.peer_cert_expiry.iter().position(|t| *t == not_after) {
                d.peer_cert_expiry.swap_remove(i);
            }
        });
    }

    pub fn error(&self, remote: &str, f: &Failure) {
        self.with(remote, |d| {
            d.last_error = Some((SystemTime::now(), f.clone()))
        });
    }

    pub fn snapshot(&self) -> BTreeMap<String, DomainStatus> {
        self.domains
            .lock()
            .expect("status lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
