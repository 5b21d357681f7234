//! Per-remote-domain state for `/status` and `fedgate` logs: streams, how they authenticated,
//! the last attempts and the last error.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::wire::Failure;

/// How one domain pair authenticated in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairAuth {
    /// `sasl-external` or `dialback`.
    pub mechanism: &'static str,
    /// How the identity was established: `pkix`, `dane`, `posh` or `dialback`.
    pub method: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default)]
pub struct DomainStatus {
    pub inbound_streams: u32,
    pub outbound_streams: u32,
    /// How each domain pair with this remote domain last authenticated, per direction: the
    /// key is (direction `in`/`out`, local domain). A partner that accepts us only by
    /// dialback shows it on `out`, whatever it does on `in`.
    pub auth: BTreeMap<(&'static str, String), PairAuth>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<(SystemTime, Failure)>,
    /// The last attempts: when, target, result.
    pub attempts: VecDeque<(SystemTime, String, String)>,
    /// Expiry (unix seconds) of the certificate of each authenticated stream with this domain.
    pub peer_cert_expiry: Vec<i64>,
}

/// A display, not enforcement state (limits keep their own counts): bounded in size, and a
/// domain nothing happened with for [`IDLE`] is forgotten; with more domains than
/// [`MAX_DOMAINS`], the least recently used go first.
pub struct Status {
    domains: moka::sync::Cache<String, Arc<Mutex<DomainStatus>>>,
}

const MAX_ATTEMPTS: usize = 5;
const MAX_DOMAINS: u64 = 100_000;
const IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Status {
    fn default() -> Self {
        Self::with_capacity(MAX_DOMAINS)
    }
}

impl Status {
    fn with_capacity(domains: u64) -> Self {
        Self {
            domains: moka::sync::Cache::builder()
                .max_capacity(domains)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    fn with(&self, domain: &str, f: impl FnOnce(&mut DomainStatus)) {
        let d = self.domains.get_with_by_ref(domain, Arc::default);
        f(&mut d.lock().expect("status lock"));
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

    /// The pair (`local`, `remote`) authenticated: `outbound` when we initiated the stream.
    pub fn authenticated(
        &self,
        remote: &str,
        local: &str,
        outbound: bool,
        mechanism: &'static str,
        method: &str,
    ) {
        let now = SystemTime::now();
        self.with(remote, |d| {
            d.auth.insert(
                (if outbound { "out" } else { "in" }, local.to_owned()),
                PairAuth {
                    mechanism,
                    method: method.to_owned(),
                    at: now,
                },
            );
            d.last_success = Some(now);
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
            .iter()
            .map(|(k, v)| ((*k).clone(), v.lock().expect("status lock").clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_bounded_and_keeps_recording_new_domains() {
        let s = Status::with_capacity(100);
        for i in 0..1000 {
            s.stream_opened(&format!("d{i}.test"), false);
        }
        s.domains.run_pending_tasks();
        assert!(
            s.domains.entry_count() <= 100,
            "{}",
            s.domains.entry_count()
        );
        // A domain seen now is recorded (the old map refused new domains once full).
        s.stream_opened("late.test", true);
        let snap = s.snapshot();
        assert_eq!(snap["late.test"].outbound_streams, 1);
    }
}
