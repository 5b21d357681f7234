//! SRV record ordering for XMPP server-to-server discovery (sans-IO).
//!
//! RFC 6120 §3.2 tells an initiating server to look up `_xmpp-server._tcp.<domain>`
//! (STARTTLS on connect) and XEP-0368 adds `_xmpps-server._tcp.<domain>` (direct TLS).
//! Both answers share one priority/weight space, so they are merged into one list and
//! ordered by the RFC 2782 rules here. No I/O happens in this module: the DNS driver is
//! [`crate::resolve`].

use rand::Rng;
use rand::seq::SliceRandom;

/// One SRV answer, from either `_xmpps-server._tcp` or `_xmpp-server._tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative chance of being tried first among records of the same priority.
    pub weight: u16,
    /// TCP port of the target.
    pub port: u16,
    /// Target host name without the trailing dot; `"."` for the RFC 2782 "no service" target.
    pub target: String,
    /// `true` when the record came from `_xmpps-server._tcp` (XEP-0368 direct TLS).
    pub direct_tls: bool,
}

impl SrvRecord {
    /// True for the RFC 2782 "." target (the service is decidedly not available).
    pub fn is_root_target(&self) -> bool {
        self.target.is_empty() || self.target == "."
    }
}

/// RFC 2782 ordering of a merged `_xmpps-server` + `_xmpp-server` answer set.
///
/// Records are grouped by priority (ascending). Within a priority group the records are
/// first shuffled, then all weight-0 records are moved to the front (stable), and then the
/// RFC's selection is repeated until the group is empty: compute the total weight of the
/// remaining records, draw a uniform random number in `0..=total`, and pick the first
/// record whose running weight sum is `>=` that number. A weight-0 record at the front is
/// therefore picked first with probability `1 / (total + 1)`.
///
/// XEP-0368: `_xmpps-server` and `_xmpp-server` records live in the same priority space, so
/// the caller passes both lists concatenated. Every input record is returned exactly once.
pub fn order_srv(mut records: Vec<SrvRecord>, rng: &mut impl Rng) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some(first) = rest.next() {
        let priority = first.priority;
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|r| r.priority == priority) {
            group.push(next);
        }
        order_group(group, rng, &mut out);
    }
    out
}

/// Weighted random selection within one priority group (RFC 2782, "Usage rules").
fn order_group(mut group: Vec<SrvRecord>, rng: &mut impl Rng, out: &mut Vec<SrvRecord>) {
    group.shuffle(rng);
    // Stable sort keeps the shuffled order inside each class; weight 0 goes first.
    group.sort_by_key(|r| r.weight != 0);
    while !group.is_empty() {
        let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
        let pick = rng.random_range(0..=total);
        let mut running = 0u32;
        let mut chosen = group.len() - 1;
        for (i, r) in group.iter().enumerate() {
            running += u32::from(r.weight);
            if running >= pick {
                chosen = i;
                break;
            }
        }
        out.push(group.remove(chosen));
    }
}

/// RFC 2782: a single record whose target is `"."` (or empty) means the service is
/// decidedly not available at this domain. Any other shape (several records, or a real
/// target) is not a "no service" answer.
pub fn is_no_service(records: &[SrvRecord]) -> bool {
    matches!(records, [only] if only.is_root_target())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rec(priority: u16, weight: u16, target: &str, direct_tls: bool) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: if direct_tls { 5270 } else { 5269 },
            target: target.to_owned(),
            direct_tls,
        }
    }

    #[test]
    fn priority_order_ascending() {
        let mut rng = StdRng::seed_from_u64(1);
        let input = vec![
            rec(30, 5, "c", false),
            rec(10, 5, "a", false),
            rec(20, 5, "b", false),
            rec(10, 5, "a2", false),
        ];
        for _ in 0..50 {
            let out = order_srv(input.clone(), &mut rng);
            let prios: Vec<u16> = out.iter().map(|r| r.priority).collect();
            assert_eq!(prios, vec![10, 10, 20, 30]);
        }
    }

    #[test]
    fn each_record_exactly_once() {
        let mut rng = StdRng::seed_from_u64(2);
        let input: Vec<SrvRecord> = (0..20u16)
            .map(|i| rec(i % 3, i % 4, &format!("h{i}"), i % 2 == 0))
            .collect();
        for _ in 0..100 {
            let mut out = order_srv(input.clone(), &mut rng);
            assert_eq!(out.len(), input.len());
            out.sort_by(|a, b| a.target.cmp(&b.target));
            let mut expected = input.clone();
            expected.sort_by(|a, b| a.target.cmp(&b.target));
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn empty_input() {
        let mut rng = StdRng::seed_from_u64(3);
        assert!(order_srv(Vec::new(), &mut rng).is_empty());
    }

    #[test]
    fn weighting_is_statistically_right() {
        let mut rng = StdRng::seed_from_u64(4);
        let input = vec![
            rec(0, 10, "w10", false),
            rec(0, 30, "w30", false),
            rec(0, 60, "w60", false),
        ];
        let draws = 10_000;
        let mut counts = [0u32; 3];
        for _ in 0..draws {
            let out = order_srv(input.clone(), &mut rng);
            let idx = match out[0].target.as_str() {
                "w10" => 0,
                "w30" => 1,
                "w60" => 2,
                other => panic!("unexpected {other}"),
            };
            counts[idx] += 1;
        }
        for (count, expected) in counts.iter().zip([0.10, 0.30, 0.60]) {
            let freq = f64::from(*count) / f64::from(draws);
            assert!(
                (freq - expected).abs() <= 0.03,
                "first-pick frequency {freq} not within 3% of {expected} ({counts:?})"
            );
        }
    }

    #[test]
    fn weight_zero_records_still_appear_and_sometimes_first() {
        let mut rng = StdRng::seed_from_u64(5);
        let input = vec![rec(0, 0, "zero", false), rec(0, 5, "five", false)];
        let mut zero_first = 0;
        for _ in 0..2_000 {
            let out = order_srv(input.clone(), &mut rng);
            assert_eq!(out.len(), 2);
            assert!(out.iter().any(|r| r.target == "zero"));
            if out[0].target == "zero" {
                zero_first += 1;
            }
        }
        // Expected 1/6 of the draws; allow a wide margin, but it must not be never/always.
        assert!(zero_first > 150 && zero_first < 550, "{zero_first}");
    }

    #[test]
    fn all_weight_zero_is_randomised() {
        let mut rng = StdRng::seed_from_u64(6);
        let input = vec![rec(0, 0, "a", false), rec(0, 0, "b", false)];
        let a_first = (0..1_000)
            .filter(|_| order_srv(input.clone(), &mut rng)[0].target == "a")
            .count();
        assert!(a_first > 300 && a_first < 700, "{a_first}");
    }

    #[test]
    fn merged_xmpps_and_xmpp_share_priority_space() {
        let mut rng = StdRng::seed_from_u64(7);
        let xmpps = vec![rec(5, 10, "tls.example", true), rec(20, 10, "tls2", true)];
        let xmpp = vec![rec(10, 10, "tcp.example", false)];
        let merged: Vec<SrvRecord> = xmpps.into_iter().chain(xmpp).collect();
        let out = order_srv(merged, &mut rng);
        let got: Vec<(&str, bool)> = out
            .iter()
            .map(|r| (r.target.as_str(), r.direct_tls))
            .collect();
        assert_eq!(
            got,
            vec![
                ("tls.example", true),
                ("tcp.example", false),
                ("tls2", true)
            ]
        );
    }

    #[test]
    fn no_service_detection() {
        assert!(is_no_service(&[rec(0, 0, ".", false)]));
        assert!(is_no_service(&[rec(0, 0, "", true)]));
        assert!(!is_no_service(&[]));
        assert!(!is_no_service(&[rec(0, 0, "host.example", false)]));
        assert!(!is_no_service(&[
            rec(0, 0, ".", false),
            rec(1, 0, "host.example", false)
        ]));
    }
}
