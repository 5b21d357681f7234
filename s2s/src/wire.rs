//! What goes on the wire outside of stanzas: stream headers, features, stream errors, stanza
//! errors and bounces, and the typed failure kinds that appear in logs, metrics and error texts.

use crate::element::{Element, NS_CONTENT, NS_STANZA_ERRORS, escape, jid_domain};

/// Why a stream or an attempt failed (ARCHITECTURE.md principle 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Dns,
    Connect,
    Tls,
    CertChain,
    CertName,
    Auth,
    Policy,
    Timeout,
    Limit,
    /// The peer closed the stream with a stream error or broke the protocol.
    Stream,
    /// The gateway is shutting down.
    Shutdown,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::CertChain => "cert-chain",
            Self::CertName => "cert-name",
            Self::Auth => "auth",
            Self::Policy => "policy",
            Self::Timeout => "timeout",
            Self::Limit => "limit",
            Self::Stream => "stream",
            Self::Shutdown => "shutdown",
        }
    }

    pub const ALL: [Self; 11] = [
        Self::Dns,
        Self::Connect,
        Self::Tls,
        Self::CertChain,
        Self::CertName,
        Self::Auth,
        Self::Policy,
        Self::Timeout,
        Self::Limit,
        Self::Stream,
        Self::Shutdown,
    ];
}

/// A typed failure with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

/// A stream error we send (RFC 6120 §4.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: &'static str,
    pub text: String,
}

impl StreamError {
    pub fn new(condition: &'static str, text: impl Into<String>) -> Self {
        Self {
            condition,
            text: text.into(),
        }
    }

    /// `<stream:error>` followed by the closing tag of the stream.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "<stream:error><{} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{}</text></stream:error></stream:stream>",
            self.condition,
            escape(&self.text)
        )
        .into_bytes()
    }
}

/// Reads a received `<stream:error/>`: (condition, text).
pub fn parse_stream_error(el: &Element) -> (String, String) {
    let mut cond = String::from("undefined-condition");
    let mut text = String::new();
    for c in el.elements() {
        if c.name == "text" {
            text = c.text();
        } else {
            cond.clone_from(&c.name);
        }
    }
    (cond, text)
}

/// The opening stream tag we send.
pub struct Header<'a> {
    pub content_ns: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub id: Option<&'a str>,
    pub version: bool,
    pub dialback: bool,
}

impl Header<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        s.push_str("<?xml version='1.0'?><stream:stream xmlns='");
        s.push_str(self.content_ns);
        s.push_str("' xmlns:stream='http://etherx.jabber.org/streams'");
        if self.dialback {
            s.push_str(" xmlns:db='jabber:server:dialback'");
        }
        for (k, v) in [("from", self.from), ("to", self.to), ("id", self.id)] {
            if let Some(v) = v {
                s.push(' ');
                s.push_str(k);
                s.push_str("='");
                s.push_str(&escape(v));
                s.push('\'');
            }
        }
        if self.version {
            s.push_str(" version='1.0'");
        }
        s.push('>');
        s.into_bytes()
    }
}

/// Stanza error types (RFC 6120 §8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Cancel,
    Wait,
    Modify,
    Auth,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Wait => "wait",
            Self::Modify => "modify",
            Self::Auth => "auth",
        }
    }
}

/// Whether a stanza may be answered with an error: never an error, never presence other
/// than subscription requests (RFC 6120 §8.3.1, §10.4.3; RFC 6121 §3.1.3), never an iq result.
pub fn bounceable(stanza: &Element) -> bool {
    if stanza.ns != NS_CONTENT || stanza.attr("type") == Some("error") {
        return false;
    }
    match stanza.name.as_str() {
        "message" => true,
        "iq" => matches!(stanza.attr("type"), Some("get" | "set")),
        "presence" => stanza.attr("type") == Some("subscribe"),
        _ => false,
    }
}

/// The most of a message's body an error reply carries back (bytes of text).
pub const EXCERPT_BYTES: usize = 200;

/// What of a message an error reply carries back: its `<thread/>` and the start of its
/// `<body/>` (at most [`EXCERPT_BYTES`], cut at a character boundary and marked with `…`).
/// Everything else is left out (RFC 6120 §8.3.1 allows it), so an error is small whatever the
/// message was, and the errors of an overload fit where the messages did not.
fn message_excerpt(stanza: &Element) -> Vec<crate::element::Node> {
    let mut out = Vec::new();
    if let Some(body) = stanza.child("body", NS_CONTENT) {
        let text = body.text();
        let excerpt = if text.len() > EXCERPT_BYTES {
            let mut cut = EXCERPT_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}…", &text[..cut])
        } else {
            text
        };
        out.push(crate::element::Node::Element(
            Element::new("body", NS_CONTENT).with_text(&excerpt),
        ));
    }
    if let Some(thread) = stanza.child("thread", NS_CONTENT) {
        let mut t = Element::new("thread", NS_CONTENT).with_text(&thread.text());
        if let Some(parent) = thread.attr("parent") {
            t.set_attr("parent", parent);
        }
        out.push(crate::element::Node::Element(t));
    }
    out
}

/// The error reply to `stanza`: from/to swapped, `type='error'`, an excerpt of a message's
/// body (see [`message_excerpt`]), `by` naming the generating entity.
pub fn bounce(
    stanza: &Element,
    etype: ErrorType,
    condition: &str,
    text: &str,
    by: Option<&str>,
) -> Element {
    let mut reply = Element::new(&stanza.name, NS_CONTENT);
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    reply.set_attr("type", "error");
    if stanza.name == "message" {
        reply.children.extend(message_excerpt(stanza));
    }
    let mut err = Element::new("error", NS_CONTENT).with_attr("type", etype.as_str());
    if let Some(by) = by {
        err.set_attr("by", by);
    }
    err = err.with_child(Element::new(condition, NS_STANZA_ERRORS));
    if !text.is_empty() {
        err = err.with_child(Element::new("text", NS_STANZA_ERRORS).with_text(text));
    }
    reply.children.push(crate::element::Node::Element(err));
    reply
}

/// Reads an error reply (the counterpart of [`bounce`]): (condition, text), or `None` when the
/// stanza carries no `<error/>`.
pub fn stanza_error(stanza: &Element) -> Option<(String, String)> {
    let e = stanza.child("error", NS_CONTENT)?;
    let cond = e
        .elements()
        .find(|c| c.ns == NS_STANZA_ERRORS && c.name != "text")?
        .name
        .clone();
    let text = e
        .child("text", NS_STANZA_ERRORS)
        .map(Element::text)
        .unwrap_or_default();
    Some((cond, text))
}

/// The answer to an XEP-0199 ping addressed to a server itself (`to` a bare domain, no
/// localpart or resource), or `None` when `stanza` is not such a ping. Servers answer these
/// themselves; peers use them to test the link.
pub fn server_ping_reply(stanza: &Element) -> Option<Element> {
    let to = stanza.attr("to")?;
    if stanza.name != "iq"
        || stanza.ns != NS_CONTENT
        || stanza.attr("type") != Some("get")
        || to.contains(['@', '/'])
        || stanza.elements().count() != 1
        || stanza.child("ping", crate::ack::NS_PING).is_none()
    {
        return None;
    }
    let mut reply = Element::new("iq", NS_CONTENT)
        .with_attr("type", "result")
        .with_attr("from", to);
    for (name, value) in [("to", stanza.attr("from")), ("id", stanza.attr("id"))] {
        if let Some(v) = value {
            reply.set_attr(name, v);
        }
    }
    Some(reply)
}

/// The (from-domain, to-domain) of a stanza in canonical form, each if present and well-formed
/// (see [`jid_domain`]).
pub fn stanza_domains(
    stanza: &Element,
) -> (
    Option<std::borrow::Cow<'_, str>>,
    Option<std::borrow::Cow<'_, str>>,
) {
    (
        stanza.attr("from").and_then(jid_domain),
        stanza.attr("to").and_then(jid_domain),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounces_carry_a_small_excerpt_whatever_the_message_was() {
        let long = "é".repeat(1500); // 3000 bytes, two per character
        let m = Element::new("message", NS_CONTENT)
            .with_attr("from", "a@x.test/r")
            .with_attr("to", "b@y.test")
            .with_attr("id", "big")
            .with_child(Element::new("body", NS_CONTENT).with_text(&long))
            .with_child(Element::new("thread", NS_CONTENT).with_text("t1"))
            .with_child(Element::new("x", "urn:example:payload").with_text(&long));
        let b = bounce(&m, ErrorType::Wait, "resource-constraint", "full", None);
        let bytes = b.to_bytes();
        assert!(bytes.len() < 600, "{} bytes", bytes.len());
        let body = b.child("body", NS_CONTENT).unwrap().text();
        assert!(body.ends_with('…') && body.len() <= EXCERPT_BYTES + '…'.len_utf8());
        assert!(long.starts_with(body.trim_end_matches('…')));
        assert_eq!(b.child("thread", NS_CONTENT).unwrap().text(), "t1");
        assert!(b.child("x", "urn:example:payload").is_none());
        // Presence and iq carry nothing back.
        let sub = Element::new("presence", NS_CONTENT)
            .with_attr("type", "subscribe")
            .with_child(Element::new("status", NS_CONTENT).with_text(&long));
        let b = bounce(&sub, ErrorType::Cancel, "service-unavailable", "", None);
        assert_eq!(b.elements().count(), 1, "only the error");
    }

    #[test]
    fn pings_to_a_server_are_answered_and_others_are_not() {
        let ping = |to: &str| {
            Element::new("iq", NS_CONTENT)
                .with_attr("type", "get")
                .with_attr("id", "p1")
                .with_attr("from", "x.test")
                .with_attr("to", to)
                .with_child(Element::new("ping", crate::ack::NS_PING))
        };
        let r = server_ping_reply(&ping("a.test")).expect("answered");
        assert_eq!(
            (r.attr("type"), r.attr("id"), r.attr("from"), r.attr("to")),
            (Some("result"), Some("p1"), Some("a.test"), Some("x.test"))
        );
        assert!(r.children.is_empty());
        // Users and resources are pinged by their own clients, not by the gateway.
        assert!(server_ping_reply(&ping("bob@a.test")).is_none());
        assert!(server_ping_reply(&ping("a.test/res")).is_none());
        // Not a ping, or not a get.
        let mut set = ping("a.test");
        set.set_attr("type", "set");
        assert!(server_ping_reply(&set).is_none());
        let version = Element::new("iq", NS_CONTENT)
            .with_attr("type", "get")
            .with_attr("to", "a.test")
            .with_child(Element::new("query", "jabber:iq:version"));
        assert!(server_ping_reply(&version).is_none());
    }

    #[test]
    fn bounces_swap_addresses_and_carry_the_condition() {
        let m = Element::new("message", NS_CONTENT)
            .with_attr("from", "a@x.test/r")
            .with_attr("to", "b@y.test")
            .with_attr("id", "1")
            .with_child(Element::new("body", NS_CONTENT).with_text("hi"));
        assert!(bounceable(&m));
        let b = bounce(
            &m,
            ErrorType::Cancel,
            "remote-server-not-found",
            "dns: no such domain",
            Some("x.test"),
        );
        assert_eq!(
            String::from_utf8(b.to_bytes()).unwrap(),
            "<message to='a@x.test/r' from='b@y.test' id='1' type='error'><body>hi</body>\
             <error type='cancel' by='x.test'><remote-server-not-found \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>dns: no such domain</text></error></message>"
        );
        assert!(!bounceable(&b));
        assert_eq!(
            stanza_error(&b),
            Some((
                "remote-server-not-found".into(),
                "dns: no such domain".into()
            ))
        );
        assert_eq!(stanza_error(&m), None);
        let p = Element::new("presence", NS_CONTENT);
        assert!(!bounceable(&p));
        assert!(bounceable(&p.clone().with_attr("type", "subscribe")));
        assert!(!bounceable(
            &Element::new("iq", NS_CONTENT).with_attr("type", "result")
        ));
    }

    #[test]
    fn stream_error_text_is_escaped() {
        let e = StreamError::new("invalid-from", "a<b");
        assert!(
            String::from_utf8(e.to_bytes())
                .unwrap()
                .contains("<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b</text>")
        );
    }
}
