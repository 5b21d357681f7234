//! Error mapping between XMPP stanza errors and SIP responses (RFC 7247 §7, Tables 2 and 3).
//!
//! * [`xmpp_to_sip`]: an XMPP error condition (RFC 6120 §8.3.3) becomes a SIP status code and
//!   its standard reason phrase. Where the RFC splits a condition by target, the caller says
//!   whether the stanza was addressed to a full JID (4xx: this one resource) or a bare JID
//!   (6xx: the user everywhere).
//! * [`sip_to_xmpp`]: a SIP final status becomes an [`XmppError`] (error type and condition);
//!   codes the table does not list take the default of their class (3xx `redirect`,
//!   4xx `bad-request`, 5xx `internal-server-error`, 6xx `recipient-unavailable`).
//! * The human-readable part travels both ways: a SIP reason phrase that says more than the
//!   standard phrase becomes the XMPP `<text/>` ([`sip_response_to_xmpp`]), and an XMPP
//!   `<text/>` becomes the reason phrase ([`reason_phrase`]).
//!
//! **`service-unavailable` is never mapped to 503.** A SIP proxy that gets 503 concludes that the
//! whole next hop is down and fails over or stops sending to it for a while (RFC 3261 §21.5.4),
//! while XMPP servers use `service-unavailable` for one recipient's situation: the user has no
//! available resource and no offline storage, or does not want to be found (RFC 6121 §8.5,
//! privacy). So: full JID → 405 Method Not Allowed (the resource does not offer what was asked),
//! bare JID → 480 Temporarily Unavailable (the user cannot take the request now).
//!
//! Other choices where the RFC offers two codes: `remote-server-not-found` → 404 (a server that
//! does not exist); the caller that only timed out resolving it reports
//! `remote-server-timeout` (408). `unexpected-request` → 491 (the RFC allows 491 or 400; 491 maps
//! back to `unexpected-request`, 400 would not).

use fedgate_s2s::element::{Element, NS_CONTENT, NS_STANZA_ERRORS, NS_XML};

/// Every defined XMPP stanza error condition (RFC 6120 §8.3.3).
pub const CONDITIONS: &[&str] = &[
    "bad-request",
    "conflict",
    "feature-not-implemented",
    "forbidden",
    "gone",
    "internal-server-error",
    "item-not-found",
    "jid-malformed",
    "not-acceptable",
    "not-allowed",
    "not-authorized",
    "policy-violation",
    "recipient-unavailable",
    "redirect",
    "registration-required",
    "remote-server-not-found",
    "remote-server-timeout",
    "resource-constraint",
    "service-unavailable",
    "subscription-required",
    "undefined-condition",
    "unexpected-request",
];

/// Longest reason phrase we put on the wire (characters); longer `<text/>` is cut.
pub const MAX_REASON_CHARS: usize = 200;

/// Map an XMPP error condition to a SIP status code and its standard reason phrase
/// (RFC 7247 §7, Table 2).
///
/// `target_is_full_jid`: the failed stanza was addressed to `user@domain/resource`.
/// `gone_has_new_address`: for `gone`, the error carried a new address (then 301, else 410).
/// An unknown condition is treated as `undefined-condition` (400).
pub fn xmpp_to_sip(
    condition: &str,
    target_is_full_jid: bool,
    gone_has_new_address: bool,
) -> (u16, &'static str) {
    let full = target_is_full_jid;
    let code = match condition {
        "bad-request"
        | "conflict"
        | "jid-malformed"
        | "subscription-required"
        | "undefined-condition" => 400,
        "feature-not-implemented" => {
            if full {
                405
            } else {
                501
            }
        }
        "forbidden" => {
            if full {
                403
            } else {
                603
            }
        }
        "gone" => {
            if gone_has_new_address {
                301
            } else {
                410
            }
        }
        "internal-server-error" | "resource-constraint" => 500,
        "item-not-found" => {
            if full {
                404
            } else {
                604
            }
        }
        "not-acceptable" => {
            if full {
                406
            } else {
                606
            }
        }
        "not-allowed" | "policy-violation" => 403,
        "not-authorized" => 401,
        "recipient-unavailable" => {
            if full {
                480
            } else {
                600
            }
        }
        "redirect" => 302,
        "registration-required" => 407,
        "remote-server-not-found" => 404,
        "remote-server-timeout" => 408,
        // Never 503: see the module documentation.
        "service-unavailable" => {
            if full {
                405
            } else {
                480
            }
        }
        "unexpected-request" => 491,
        _ => 400,
    };
    (code, standard_reason(code))
}

/// An XMPP stanza error: `type` attribute, defined condition and optional `<text/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmppError {
    /// `cancel`, `wait`, `modify`, `auth` (RFC 6120 §8.3.2).
    pub error_type: &'static str,
    /// A condition from [`CONDITIONS`].
    pub condition: &'static str,
    /// Human-readable text (from the SIP reason phrase), if any.
    pub text: Option<String>,
}

impl XmppError {
    /// The `<error/>` child for an error stanza (content namespace, condition in
    /// `urn:ietf:params:xml:ns:xmpp-stanzas`, `<text/>` with `xml:lang` when given).
    pub fn to_element(&self, lang: Option<&str>) -> Element {
        let mut el = Element::new("error", NS_CONTENT)
            .with_attr("type", self.error_type)
            .with_child(Element::new(self.condition, NS_STANZA_ERRORS));
        if let Some(t) = &self.text {
            let mut text = Element::new("text", NS_STANZA_ERRORS).with_text(t);
            if let Some(l) = lang {
                text.attrs.push(fedgate_s2s::element::Attr {
                    ns: NS_XML.to_owned(),
                    name: "lang".to_owned(),
                    value: l.to_owned(),
                });
            }
            el = el.with_child(text);
        }
        el
    }
}

/// What an incoming XMPP `<error/>` element says: its condition (`undefined-condition` when
/// none is recognisable), its `<text/>`, and whether a `<gone/>` carries a new address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedError {
    pub condition: String,
    pub text: Option<String>,
    pub gone_has_new_address: bool,
}

/// Read the `<error/>` child of an error stanza (or the `<error/>` element itself).
pub fn read_error(stanza_or_error: &Element) -> ReceivedError {
    let err = if stanza_or_error.name == "error" {
        Some(stanza_or_error)
    } else {
        stanza_or_error.child("error", NS_CONTENT)
    };
    let mut out = ReceivedError {
        condition: "undefined-condition".to_owned(),
        text: None,
        gone_has_new_address: false,
    };
    let Some(err) = err else {
        return out;
    };
    for c in err.elements().filter(|c| c.ns == NS_STANZA_ERRORS) {
        if c.name == "text" {
            let t = c.text();
            if !t.trim().is_empty() {
                out.text = Some(t);
            }
        } else if CONDITIONS.contains(&c.name.as_str()) {
            out.condition.clone_from(&c.name);
            if c.name == "gone" {
                out.gone_has_new_address = !c.text().trim().is_empty();
            }
        }
    }
    out
}

/// Map a SIP final status code (300–699) to an XMPP error (RFC 7247 §7, Table 3), without text.
/// Codes outside 300–699 (which are not errors) map to `undefined-condition`.
pub fn sip_to_xmpp(code: u16) -> XmppError {
    let condition = match code {
        300 | 302 | 305 => "redirect",
        301 | 410 => "gone",
        400 | 402 | 493 => "bad-request",
        401 => "not-authorized",
        403 => "forbidden",
        404 | 481 | 484 | 485 | 604 => "item-not-found",
        405 | 420 | 439 | 501 => "feature-not-implemented",
        380 | 406 | 415 | 416 | 421 | 482 | 483 | 488 | 505 | 606 => "not-acceptable",
        407 => "registration-required",
        408 | 504 => "remote-server-timeout",
        413 | 414 | 440 | 489 | 513 => "policy-violation",
        423 => "resource-constraint",
        430 | 480 | 486 | 487 | 600 | 603 => "recipient-unavailable",
        491 => "unexpected-request",
        500 | 503 => "internal-server-error",
        502 => "remote-server-not-found",
        _ => match code / 100 {
            3 => "redirect",
            4 => "bad-request",
            5 => "internal-server-error",
            6 => "recipient-unavailable",
            _ => "undefined-condition",
        },
    };
    XmppError {
        error_type: error_type_of(condition),
        condition,
        text: None,
    }
}

/// [`sip_to_xmpp`] plus the reason phrase as `<text/>`: the phrase is kept when it is not
/// empty and says something else than the standard phrase of the code (a bare "Not Found"
/// adds nothing to `<item-not-found/>`).
pub fn sip_response_to_xmpp(code: u16, reason_phrase: &str) -> XmppError {
    let mut e = sip_to_xmpp(code);
    let phrase = reason_phrase.trim();
    if !phrase.is_empty() && !phrase.eq_ignore_ascii_case(standard_reason(code)) {
        e.text = Some(phrase.to_owned());
    }
    e
}

/// The reason phrase for a SIP response made from an XMPP error: the `<text/>` when there is
/// one (control characters replaced by spaces, whitespace collapsed, cut to
/// [`MAX_REASON_CHARS`]), else the standard phrase of `code`.
pub fn reason_phrase(code: u16, text: Option<&str>) -> String {
    let Some(text) = text else {
        return standard_reason(code).to_owned();
    };
    let cleaned: String = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if cleaned.is_empty() {
        return standard_reason(code).to_owned();
    }
    cleaned.chars().take(MAX_REASON_CHARS).collect()
}

/// The error `type` RFC 6120 §8.3.3 gives each condition in its examples.
pub fn error_type_of(condition: &str) -> &'static str {
    match condition {
        "bad-request"
        | "jid-malformed"
        | "not-acceptable"
        | "policy-violation"
        | "redirect"
        | "undefined-condition" => "modify",
        "forbidden" | "not-authorized" | "registration-required" | "subscription-required" => {
            "auth"
        }
        "recipient-unavailable"
        | "remote-server-timeout"
        | "resource-constraint"
        | "unexpected-request" => "wait",
        _ => "cancel",
    }
}

/// The standard reason phrase of a SIP status code (RFC 3261 §21 and the RFCs that added
/// codes); the class name for unknown codes.
pub fn standard_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        430 => "Flow Failed",
        439 => "First Hop Lacks Outbound Support",
        440 => "Max-Breadth Exceeded",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            6 => "Global Failure",
            _ => "Unknown",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7247 Table 2, one row per condition: (condition, full-JID code, bare-JID code).
    const XMPP_TO_SIP: &[(&str, u16, u16)] = &[
        ("bad-request", 400, 400),
        ("conflict", 400, 400),
        ("feature-not-implemented", 405, 501),
        ("forbidden", 403, 603),
        ("internal-server-error", 500, 500),
        ("item-not-found", 404, 604),
        ("jid-malformed", 400, 400),
        ("not-acceptable", 406, 606),
        ("not-allowed", 403, 403),
        ("not-authorized", 401, 401),
        ("policy-violation", 403, 403),
        ("recipient-unavailable", 480, 600),
        ("redirect", 302, 302),
        ("registration-required", 407, 407),
        ("remote-server-not-found", 404, 404),
        ("remote-server-timeout", 408, 408),
        ("resource-constraint", 500, 500),
        ("service-unavailable", 405, 480),
        ("subscription-required", 400, 400),
        ("undefined-condition", 400, 400),
        ("unexpected-request", 491, 491),
    ];

    #[test]
    fn every_xmpp_condition_maps_per_table_2() {
        for &(cond, full, bare) in XMPP_TO_SIP {
            assert_eq!(xmpp_to_sip(cond, true, false).0, full, "{cond} full JID");
            assert_eq!(xmpp_to_sip(cond, false, false).0, bare, "{cond} bare JID");
        }
        // Every defined condition is covered by the table above or by `gone`.
        for c in CONDITIONS {
            assert!(*c == "gone" || XMPP_TO_SIP.iter().any(|r| r.0 == *c), "{c}");
        }
    }

    #[test]
    fn gone_depends_on_new_address() {
        assert_eq!(xmpp_to_sip("gone", true, true), (301, "Moved Permanently"));
        assert_eq!(xmpp_to_sip("gone", false, false), (410, "Gone"));
    }

    #[test]
    fn service_unavailable_is_never_503() {
        for full in [true, false] {
            assert_ne!(xmpp_to_sip("service-unavailable", full, false).0, 503);
        }
        for c in CONDITIONS {
            for full in [true, false] {
                assert_ne!(xmpp_to_sip(c, full, false).0, 503, "{c}");
            }
        }
    }

    #[test]
    fn unknown_condition_is_undefined_condition() {
        assert_eq!(
            xmpp_to_sip("no-such-thing", true, false),
            (400, "Bad Request")
        );
    }

    #[test]
    fn reason_phrases_are_the_standard_ones() {
        assert_eq!(xmpp_to_sip("item-not-found", true, false).1, "Not Found");
        assert_eq!(
            xmpp_to_sip("item-not-found", false, false).1,
            "Does Not Exist Anywhere"
        );
        assert_eq!(
            xmpp_to_sip("service-unavailable", false, false).1,
            "Temporarily Unavailable"
        );
    }

    /// RFC 7247 Table 3, every listed code.
    const SIP_TO_XMPP: &[(&str, &[u16])] = &[
        ("redirect", &[300, 302, 305]),
        ("gone", &[301, 410]),
        ("bad-request", &[400, 402, 493]),
        ("not-authorized", &[401]),
        ("forbidden", &[403]),
        ("item-not-found", &[404, 481, 484, 485, 604]),
        ("feature-not-implemented", &[405, 420, 439, 501]),
        (
            "not-acceptable",
            &[380, 406, 415, 416, 421, 482, 483, 488, 505, 606],
        ),
        ("registration-required", &[407]),
        ("remote-server-timeout", &[408, 504]),
        ("policy-violation", &[413, 414, 440, 489, 513]),
        ("resource-constraint", &[423]),
        ("recipient-unavailable", &[430, 480, 486, 487, 600, 603]),
        ("unexpected-request", &[491]),
        ("internal-server-error", &[500, 503]),
        ("remote-server-not-found", &[502]),
    ];

    #[test]
    fn every_sip_code_maps_per_table_3() {
        for &(cond, codes) in SIP_TO_XMPP {
            for &code in codes {
                let e = sip_to_xmpp(code);
                assert_eq!(e.condition, cond, "{code}");
                assert_eq!(e.error_type, error_type_of(cond), "{code}");
                assert!(e.text.is_none());
            }
        }
    }

    #[test]
    fn unlisted_codes_take_their_class_default() {
        let listed = |c: u16| SIP_TO_XMPP.iter().any(|r| r.1.contains(&c));
        for code in 300..700u16 {
            if listed(code) {
                continue;
            }
            let want = match code / 100 {
                3 => "redirect",
                4 => "bad-request",
                5 => "internal-server-error",
                _ => "recipient-unavailable",
            };
            assert_eq!(sip_to_xmpp(code).condition, want, "{code}");
        }
        assert_eq!(sip_to_xmpp(200).condition, "undefined-condition");
    }

    #[test]
    fn error_types() {
        assert_eq!(sip_to_xmpp(404).error_type, "cancel");
        assert_eq!(sip_to_xmpp(480).error_type, "wait");
        assert_eq!(sip_to_xmpp(488).error_type, "modify");
        assert_eq!(sip_to_xmpp(401).error_type, "auth");
        assert_eq!(sip_to_xmpp(403).error_type, "auth");
        assert_eq!(sip_to_xmpp(408).error_type, "wait");
    }

    #[test]
    fn reason_phrase_becomes_text_only_when_it_says_more() {
        assert_eq!(sip_response_to_xmpp(404, "Not Found").text, None);
        assert_eq!(sip_response_to_xmpp(404, "  ").text, None);
        let e = sip_response_to_xmpp(480, "User is in a meeting");
        assert_eq!(e.condition, "recipient-unavailable");
        assert_eq!(e.text.as_deref(), Some("User is in a meeting"));
    }

    #[test]
    fn text_becomes_reason_phrase() {
        assert_eq!(reason_phrase(404, None), "Not Found");
        assert_eq!(reason_phrase(404, Some(" \n ")), "Not Found");
        assert_eq!(
            reason_phrase(403, Some("not in\r\nyour  roster")),
            "not in your roster"
        );
        let long = "x".repeat(500);
        assert_eq!(
            reason_phrase(400, Some(&long)).chars().count(),
            MAX_REASON_CHARS
        );
    }

    #[test]
    fn error_element_round_trip() {
        let e = sip_response_to_xmpp(486, "Busy in a call");
        let el = e.to_element(Some("en"));
        assert_eq!(el.attr("type"), Some("wait"));
        let bytes = String::from_utf8(el.to_bytes()).unwrap();
        assert!(
            bytes.contains("<recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
        );
        assert!(bytes.contains("xml:lang='en'>Busy in a call</text>"));
        let r = read_error(&Element::new("message", NS_CONTENT).with_child(el));
        assert_eq!(r.condition, "recipient-unavailable");
        assert_eq!(r.text.as_deref(), Some("Busy in a call"));
        assert!(!r.gone_has_new_address);
    }

    #[test]
    fn read_error_finds_gone_address_and_defaults() {
        let el = Element::new("error", NS_CONTENT)
            .with_attr("type", "cancel")
            .with_child(Element::new("gone", NS_STANZA_ERRORS).with_text("xmpp:new@x.test"));
        let r = read_error(&el);
        assert_eq!(r.condition, "gone");
        assert!(r.gone_has_new_address);
        assert_eq!(
            xmpp_to_sip(&r.condition, false, r.gone_has_new_address).0,
            301
        );
        let r = read_error(&Element::new("message", NS_CONTENT));
        assert_eq!(r.condition, "undefined-condition");
    }
}
