//! Canonical addresses where a stanza enters (ARCHITECTURE.md principle 7).
//!
//! Every link that takes stanzas in (inbound s2s streams, the internal link, components) runs
//! [`canonicalize_stanza`] before it looks at an address: `to` and `from` are rewritten into
//! their RFC 7622 canonical form ([`fedgate_jid`]), so the authorization checks, the policy,
//! the router, the SIP mapping and the directory see one form per address and compare strings.
//! Already canonical addresses (nearly all of them) are checked without allocating.
//!
//! A stanza with an address that has no canonical form is answered with `jid-malformed`
//! (RFC 6120 §8.3.3.8), as long as its sender's domain is one the link may speak for.

use std::borrow::Cow;

use fedgate_jid::{JidError, canonical};

use crate::element::Element;

/// Why a stanza's addresses could not all be brought into canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// `"to"` or `"from"`.
    pub attr: &'static str,
    pub error: JidError,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the '{}' address is malformed: {}",
            self.attr, self.error
        )
    }
}

/// Rewrites `to` and `from` of `el` into canonical form. Both are tried: a well-formed one is
/// rewritten even when the other is malformed, so an error reply reaches the sender by its
/// canonical address where it has one. A missing attribute is left alone.
pub fn canonicalize_stanza(el: &mut Element) -> Result<(), Malformed> {
    let mut first = None;
    for attr in ["from", "to"] {
        let Some(a) = el
            .attrs
            .iter_mut()
            .find(|a| a.ns.is_empty() && a.name == attr)
        else {
            continue;
        };
        match canonical(&a.value) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(c)) => a.value = c,
            Err(error) => {
                first.get_or_insert(Malformed { attr, error });
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::NS_CONTENT;

    #[test]
    fn addresses_are_rewritten_in_place_and_malformed_ones_named() {
        let mut m = Element::new("message", NS_CONTENT)
            .with_attr("from", "ＡＬＩＣＥ@Example.TEST./Desk")
            .with_attr("to", "bob@xn--bcher-kva.example");
        canonicalize_stanza(&mut m).unwrap();
        assert_eq!(m.attr("from"), Some("alice@example.test/Desk"));
        assert_eq!(m.attr("to"), Some("bob@bücher.example"));

        let mut m = Element::new("message", NS_CONTENT)
            .with_attr("from", "Alice@example.test")
            .with_attr("to", "a b@example.test");
        let e = canonicalize_stanza(&mut m).unwrap_err();
        assert_eq!(e.attr, "to");
        assert_eq!(
            m.attr("from"),
            Some("alice@example.test"),
            "still rewritten"
        );
        assert_eq!(m.attr("to"), Some("a b@example.test"), "left as it came");
    }
}
