//! Checks on every incoming request before anything else looks at it. Each failure is a
//! [`Rejection`]: the status code, reason phrase and extra headers of the response to send
//! (build it with [`Rejection::to_response`]; never answer an ACK, just drop it).
//!
//! In order:
//! 1. mandatory headers (RFC 3261 §8.1.1: To, From, Call-ID, CSeq, Via, Max-Forwards) present
//!    and readable → else `400` naming the header;
//! 2. CSeq method equal to the request method → else `400`;
//! 3. `sips:` Request-URI or To → `416 Unsupported URI Scheme`. RFC 7247 §8 says a request
//!    addressed to a `sips:` URI MUST NOT be translated to XMPP (the gateway cannot keep the
//!    "TLS on every hop" promise on the XMPP side) but names no status code. We choose `416`,
//!    the code RFC 3261 §8.2.2.1 gives for a Request-URI scheme the UAS will not process: it is
//!    precise, it is final, and RFC 7247 §7 maps it to `<not-acceptable/>` for logs and
//!    metrics. (`403` would read as a policy refusal, `480` would invite retries.)
//! 4. `Max-Forwards: 0` → `483 Too Many Hops` (RFC 3261 §16.3 item 2);
//! 5. RFC 5393 loop detection → `482 Loop Detected` (see [`LoopDetector`]);
//! 6. `Require` / `Proxy-Require` option tags we do not support → `420 Bad Extension` with an
//!    `Unsupported` header listing them (§8.2.2.3; not applied to ACK and CANCEL).

use crate::hdr::{BRANCH_COOKIE, CSeq, NameAddr, Via, new_tag, parse_max_forwards};
use crate::msg::{Header, SipMessage};

/// A request refused by a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Status code (400, 416, 420, 482, 483).
    pub code: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers to add to the response (e.g. `Unsupported`).
    pub headers: Vec<Header>,
}

impl Rejection {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// The response for `req`: `SipMessage::response_to`, a fresh To tag if the request had
    /// none (§8.2.6.2), and the extra headers (before Content-Length).
    pub fn to_response(&self, req: &SipMessage) -> SipMessage {
        let mut resp = SipMessage::response_to(req, self.code, self.reason.clone());
        let has_tag = req
            .header("To")
            .and_then(|t| NameAddr::parse(t).ok())
            .is_some_and(|t| t.tag().is_some());
        if !has_tag {
            // Fails only if To is missing or unreadable, and then there is nothing to tag.
            let _ = resp.set_to_tag(&new_tag());
        }
        let at = resp.headers.len().saturating_sub(1);
        resp.headers.splice(at..at, self.headers.iter().cloned());
        resp
    }
}

/// FNV-1a, 64 bits: stable across builds and versions (unlike `DefaultHasher`), which matters
/// because branches outlive a restart. Not cryptographic; it does not need to be.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// RFC 5393 loop detection for a B2BUA. Branches we generate with
/// [`LoopDetector::branch_for`] have the form
/// `z9hG4bK` `fg<mark>` `.` `<request hash>` `.` `<random>` where `<mark>` is derived from a
/// per-gateway secret (so we recognise our own branches, [`LoopDetector::is_ours`]) and
/// `<request hash>` covers the fields that identify the request as we sent it: Request-URI,
/// From tag, To tag, Call-ID and CSeq (RFC 3261 §16.6 step 8 lists these plus Route and
/// Proxy-Require/-Authorization, which proxies on the way legitimately consume, so we leave
/// them out). A request that comes back with one of our branches in a Via *at our sent-by* and
/// the same hash is a loop (`482`); with another hash it is a spiral and is processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDetector {
    secret: String,
    mark: String,
    sent_by: String,
}

impl LoopDetector {
    /// A detector for our Via `sent_by` (`host[:port]`) with a random secret.
    pub fn new(sent_by: &str) -> Self {
        Self::with_secret(sent_by, &new_tag())
    }

    /// A detector with a given secret (share it across the nodes of a cluster and restarts).
    pub fn with_secret(sent_by: &str, secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            mark: format!("fg{:08x}", fnv1a(&["mark", secret]) as u32),
            sent_by: sent_by.to_owned(),
        }
    }

    /// Our Via sent-by.
    pub fn sent_by(&self) -> &str {
        &self.sent_by
    }

    fn request_hash(&self, req: &SipMessage) -> String {
        let tag = |name| {
            req.header(name)
                .and_then(|v| NameAddr::parse(v).ok())
                .and_then(|n| n.tag().map(str::to_owned))
                .unwrap_or_default()
        };
        let (from_tag, to_tag) = (tag("From"), tag("To"));
        let cseq = req.header("CSeq").unwrap_or_default();
        let cseq_norm = CSeq::parse(cseq).map_or_else(|_| cseq.to_owned(), |c| c.to_string());
        format!(
            "{:016x}",
            fnv1a(&[
                &self.secret,
                req.uri().unwrap_or_default(),
                &from_tag,
                &to_tag,
                req.call_id().unwrap_or_default(),
                &cseq_norm,
            ])
        )
    }

    /// The branch for a request we are about to send; call it once the Request-URI, From,
    /// To, Call-ID and CSeq are final.
    pub fn branch_for(&self, req: &SipMessage) -> String {
        let random: String = new_tag().chars().take(12).collect();
        format!(
            "{BRANCH_COOKIE}{}.{}.{random}",
            self.mark,
            self.request_hash(req)
        )
    }

    /// Whether `branch` was generated by this gateway.
    pub fn is_ours(&self, branch: &str) -> bool {
        branch
            .strip_prefix(BRANCH_COOKIE)
            .is_some_and(|b| b.starts_with(&self.mark) && b[self.mark.len()..].starts_with('.'))
    }

    /// Whether `req` is one of our own requests come back unchanged (a loop, not a spiral).
    pub fn is_loop(&self, req: &SipMessage) -> bool {
        let hash = self.request_hash(req);
        req.headers("Via")
            .filter_map(|v| Via::parse(v).ok())
            .filter(|v| v.sent_by().eq_ignore_ascii_case(&self.sent_by))
            .filter_map(|v| v.branch().map(str::to_owned))
            .filter(|b| self.is_ours(b))
            .any(|b| b.split('.').nth(1) == Some(hash.as_str()))
    }
}

/// The checks, configured once per gateway.
#[derive(Debug, Clone)]
pub struct RequestChecker {
    supported: Vec<String>,
    loops: LoopDetector,
}

const MANDATORY: [&str; 6] = ["To", "From", "Call-ID", "CSeq", "Via", "Max-Forwards"];

fn is_sips(uri: &str) -> bool {
    uri.trim_start()
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
}

impl RequestChecker {
    /// `supported`: the option tags we implement (compared case-insensitively).
    pub fn new(supported: &[&str], loops: LoopDetector) -> Self {
        Self {
            supported: supported.iter().map(|s| s.to_ascii_lowercase()).collect(),
            loops,
        }
    }

    /// The loop detector (to generate branches for requests we send).
    pub fn loop_detector(&self) -> &LoopDetector {
        &self.loops
    }

    /// Run every check on a received request (see the module docs for the order).
    pub fn check(&self, req: &SipMessage) -> Result<(), Rejection> {
        let method = req
            .method()
            .ok_or_else(|| Rejection::new(400, "Not a Request"))?;
        for name in MANDATORY {
            if req.header(name).is_none() {
                return Err(Rejection::new(400, format!("Missing {name} Header")));
            }
        }
        let bad = |name: &str| Rejection::new(400, format!("Malformed {name} Header"));
        let cseq = CSeq::parse(req.header("CSeq").unwrap_or_default()).map_err(|_| bad("CSeq"))?;
        let max_forwards = parse_max_forwards(req.header("Max-Forwards").unwrap_or_default())
            .map_err(|_| bad("Max-Forwards"))?;
        let to = NameAddr::parse(req.header("To").unwrap_or_default()).map_err(|_| bad("To"))?;
        NameAddr::parse(req.header("From").unwrap_or_default()).map_err(|_| bad("From"))?;
        for v in req.headers("Via") {
            Via::parse(v).map_err(|_| bad("Via"))?;
        }
        if cseq.method != method {
            return Err(Rejection::new(400, "CSeq Method Does Not Match Request"));
        }
        if is_sips(req.uri().unwrap_or_default()) || is_sips(to.uri()) {
            return Err(Rejection::new(416, "Unsupported URI Scheme"));
        }
        if max_forwards == 0 {
            return Err(Rejection::new(483, "Too Many Hops"));
        }
        if self.loops.is_loop(req) {
            return Err(Rejection::new(482, "Loop Detected"));
        }
        if !matches!(method, "ACK" | "CANCEL") {
            let mut unsupported: Vec<&str> = Vec::new();
            for tag in req.headers("Require").chain(req.headers("Proxy-Require")) {
                let known = self.supported.iter().any(|s| s.eq_ignore_ascii_case(tag));
                if !known && !unsupported.iter().any(|u| u.eq_ignore_ascii_case(tag)) {
                    unsupported.push(tag);
                }
            }
            if !unsupported.is_empty() {
                let mut r = Rejection::new(420, "Bad Extension");
                r.headers
                    .push(Header::new("Unsupported", unsupported.join(", ")));
                return Err(r);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT_BY: &str = "gw.example.test:5061";

    fn checker() -> RequestChecker {
        RequestChecker::new(
            &["timer", "ms-text-format"],
            LoopDetector::with_secret(SENT_BY, "s3cret"),
        )
    }

    fn req() -> SipMessage {
        SipMessage::parse(include_bytes!("../fixtures/ms-message-in-dialog.sip")).expect("fixture")
    }

    fn rejected(m: &SipMessage) -> (u16, String) {
        let r = checker().check(m).expect_err("should be rejected");
        (r.code, r.reason)
    }

    #[test]
    fn every_fixture_passes() {
        let c = RequestChecker::new(&[], LoopDetector::new(SENT_BY));
        for (name, bytes) in crate::msg::tests::FIXTURES {
            let m = SipMessage::parse(bytes).expect("fixture");
            assert_eq!(c.check(&m), Ok(()), "{name}");
        }
    }

    #[test]
    fn missing_mandatory_headers_are_named() {
        for name in MANDATORY {
            let mut m = req();
            assert!(m.remove_headers(name) > 0, "{name}");
            assert_eq!(rejected(&m), (400, format!("Missing {name} Header")));
        }
    }

    #[test]
    fn malformed_headers_and_cseq_mismatch() {
        let mut m = req();
        m.set_header("CSeq", "two MESSAGE");
        assert_eq!(rejected(&m), (400, "Malformed CSeq Header".into()));
        let mut m = req();
        m.set_header("Max-Forwards", "-1");
        assert_eq!(rejected(&m), (400, "Malformed Max-Forwards Header".into()));
        let mut m = req();
        m.set_header("CSeq", "2 INFO");
        assert_eq!(
            rejected(&m),
            (400, "CSeq Method Does Not Match Request".into())
        );
    }

    #[test]
    fn sips_is_refused_with_416() {
        let mut m = req();
        m.start = crate::msg::StartLine::Request {
            method: "MESSAGE".into(),
            uri: "sips:alice@example.test".into(),
        };
        assert_eq!(rejected(&m), (416, "Unsupported URI Scheme".into()));
        let mut m = req();
        m.set_header("To", "<SIPS:alice@example.test>;tag=x");
        assert_eq!(rejected(&m).0, 416);
    }

    #[test]
    fn max_forwards_zero_is_483() {
        let mut m = req();
        m.set_header("Max-Forwards", "0");
        assert_eq!(rejected(&m), (483, "Too Many Hops".into()));
        m.set_header("Max-Forwards", "1");
        assert_eq!(checker().check(&m), Ok(()));
    }

    #[test]
    fn unsupported_require_is_420_with_unsupported_header() {
        let mut m = req();
        m.push_header("Require", "TIMER, 100rel");
        m.push_header("Proxy-Require", "sec-agree, 100rel");
        let r = checker().check(&m).expect_err("420");
        assert_eq!((r.code, r.reason.as_str()), (420, "Bad Extension"));
        assert_eq!(r.headers, [Header::new("Unsupported", "100rel, sec-agree")]);
        let resp = r.to_response(&m);
        assert_eq!(resp.code(), Some(420));
        assert_eq!(resp.header("Unsupported"), Some("100rel, sec-agree"));
        assert_eq!(
            resp.headers.last().map(|h| h.name.as_str()),
            Some("Content-Length")
        );
        // Supported-only Require passes; ACK and CANCEL are not checked.
        let mut ok = req();
        ok.push_header("Require", "timer");
        assert_eq!(checker().check(&ok), Ok(()));
        let mut ack = req();
        ack.start = crate::msg::StartLine::Request {
            method: "ACK".into(),
            uri: "sip:alice@gw.example.test".into(),
        };
        ack.set_header("CSeq", "2 ACK");
        ack.push_header("Require", "100rel");
        assert_eq!(checker().check(&ack), Ok(()));
    }

    #[test]
    fn rejection_response_adds_a_to_tag_only_when_missing() {
        let sub = SipMessage::parse(include_bytes!("../fixtures/ms-subscribe-presence.sip"))
            .expect("fixture");
        let resp = Rejection::new(483, "Too Many Hops").to_response(&sub);
        let to = NameAddr::parse(resp.header("To").expect("to")).expect("parse");
        assert!(to.tag().is_some());
        let resp = Rejection::new(483, "Too Many Hops").to_response(&req());
        assert_eq!(resp.header("To"), req().header("To"), "existing tag kept");
    }

    fn our_request(d: &LoopDetector) -> SipMessage {
        let mut m = SipMessage::request("MESSAGE", "sip:bob@lync.test");
        m.push_header("Max-Forwards", "70");
        m.push_header("From", "<sip:alice@example.test>;tag=a1");
        m.push_header("To", "<sip:bob@lync.test>");
        m.push_header("Call-ID", "c9@gw.example.test");
        m.push_header("CSeq", "1 MESSAGE");
        let b = d.branch_for(&m);
        m.prepend_header("Via", format!("SIP/2.0/TLS {SENT_BY};branch={b}"));
        m
    }

    #[test]
    fn own_request_coming_back_is_a_loop() {
        let c = checker();
        let mut m = our_request(c.loop_detector());
        let ours = Via::parse(m.top_via().expect("via")).expect("via");
        assert!(c.loop_detector().is_ours(ours.branch().expect("branch")));
        // Back to us through the edge, which added its Via on top.
        m.prepend_header("Via", "SIP/2.0/TLS edge.lync.test:5061;branch=z9hG4bKedge1");
        m.set_header("Max-Forwards", "69");
        assert_eq!(rejected(&m), (482, "Loop Detected".into()));
    }

    #[test]
    fn spiral_and_foreign_branches_are_not_loops() {
        let c = checker();
        // Same Via, but the Request-URI was retargeted: a spiral.
        let mut m = our_request(c.loop_detector());
        m.start = crate::msg::StartLine::Request {
            method: "MESSAGE".into(),
            uri: "sip:bob@other.lync.test".into(),
        };
        assert_eq!(c.check(&m), Ok(()));
        // Our branch format but another gateway's secret.
        let other = LoopDetector::with_secret(SENT_BY, "other-secret");
        let m = our_request(&other);
        assert!(!c.loop_detector().is_ours(&other.branch_for(&m)));
        assert_eq!(c.check(&m), Ok(()));
        // Our branch but at another sent-by.
        let elsewhere = LoopDetector::with_secret("gw2.example.test", "s3cret");
        let mut m = SipMessage::request("MESSAGE", "sip:bob@lync.test");
        for (n, v) in [
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.test>;tag=a1"),
            ("To", "<sip:bob@lync.test>"),
            ("Call-ID", "c9@gw.example.test"),
            ("CSeq", "1 MESSAGE"),
        ] {
            m.push_header(n, v);
        }
        let b = elsewhere.branch_for(&m);
        m.prepend_header("Via", format!("SIP/2.0/TLS gw2.example.test;branch={b}"));
        assert_eq!(c.check(&m), Ok(()));
    }
}
