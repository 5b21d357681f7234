//! A small owned XML element tree for stanzas and stream-level elements, and its serializer.
//!
//! Namespaces are resolved at parse time. Elements in the *content namespace* of the stream they
//! came from (`jabber:server`, `jabber:component:accept`, `jabber:client` at top level) carry the
//! canonical namespace [`NS_CONTENT`] (the empty string), so a stanza read from an s2s stream can be
//! written unchanged into a component stream and the other way round: the receiving stream's
//! default namespace gives it its meaning again (RFC 6120 §4.8.3, XEP-0114).

use std::io::Write as _;

/// The canonical namespace of stanzas (whatever the stream's default namespace is).
pub const NS_CONTENT: &str = "";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_DIALBACK: &str = "jabber:server:dialback";
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_SERVER: &str = "jabber:server";
pub const NS_CLIENT: &str = "jabber:client";
pub const NS_COMPONENT: &str = "jabber:component:accept";
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// A child node: an element or character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An attribute: namespace (empty for unprefixed attributes), local name, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ns: String,
    pub name: String,
    pub value: String,
}

/// An XML element with resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Self {
        Self {
            name: name.to_owned(),
            ns: ns.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: set an unprefixed attribute.
    #[must_use]
    pub fn with_attr(mut self, name: &str, value: &str) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: append a child element.
    #[must_use]
    pub fn with_child(mut self, child: Self) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append text.
    #[must_use]
    pub fn with_text(mut self, text: &str) -> Self {
        self.children.push(Node::Text(text.to_owned()));
        self
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// An unprefixed attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_empty() && a.name == name)
            .map(|a| a.value.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self
            .attrs
            .iter_mut()
            .find(|a| a.ns.is_empty() && a.name == name)
        {
            Some(a) => value.clone_into(&mut a.value),
            None => self.attrs.push(Attr {
                ns: String::new(),
                name: name.to_owned(),
                value: value.to_owned(),
            }),
        }
    }

    pub fn elements(&self) -> impl Iterator<Item = &Self> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn child(&self, name: &str, ns: &str) -> Option<&Self> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// Concatenated character data of this element (not of descendants).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialize into `out`. Elements in [`NS_CONTENT`] take the default namespace of the stream
    /// they are written into.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_inner(out, NS_CONTENT);
    }

    /// The length of [`Element::to_bytes`], without allocating a buffer per call (for queue
    /// accounting of stanzas that did not come from a stream).
    pub fn wire_len(&self) -> usize {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            self.write_inner(&mut b, NS_CONTENT);
            let n = b.len();
            b.clear();
            if b.capacity() > 64 * 1024 {
                b.shrink_to(64 * 1024);
            }
            n
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_inner(&mut out, NS_CONTENT);
        out
    }

    fn write_inner(&self, out: &mut Vec<u8>, parent_ns: &str) {
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if !same(&self.ns, parent_ns) {
            out.extend_from_slice(b" xmlns='");
            escape_bytes(out, &self.ns, true);
            out.push(b'\'');
        }
        let mut prefixes = 0usize;
        for a in &self.attrs {
            out.push(b' ');
            if a.ns.is_empty() {
                out.extend_from_slice(a.name.as_bytes());
            } else if a.ns == NS_XML {
                out.extend_from_slice(b"xml:");
                out.extend_from_slice(a.name.as_bytes());
            } else {
                let _ = write!(out, "xmlns:a{prefixes}='");
                escape_bytes(out, &a.ns, true);
                let _ = write!(out, "' a{prefixes}:{}", a.name);
                prefixes += 1;
            }
            out.extend_from_slice(b"='");
            escape_bytes(out, &a.value, true);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for c in &self.children {
            match c {
                Node::Element(e) => e.write_inner(out, &self.ns),
                Node::Text(t) => escape_bytes(out, t, false),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }
}

/// String equality that checks lengths before calling into `memcmp` (namespaces are mostly
/// empty or equal to the parent's).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Whether `b` needs escaping (in attribute values also the quotes).
const fn special(b: u8, attr: bool) -> bool {
    matches!(b, b'<' | b'>' | b'&') || attr && matches!(b, b'\'' | b'"')
}

/// [`escape_into`] for byte output: runs without special characters are copied at once.
fn escape_bytes(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !special(b, attr) {
            continue;
        }
        let rep: &[u8] = match b {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\'' => b"&apos;",
            _ => b"&quot;",
        };
        out.extend_from_slice(&bytes[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// Escape character data or an attribute value (single-quoted).
pub fn escape_into(out: &mut String, s: &str, attr: bool) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'\'' if attr => "&apos;",
            b'"' if attr => "&quot;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s, true);
    out
}

/// The domainpart of a JID (`user@domain/resource` → `domain`) in canonical form (RFC 7622:
/// lower-case U-labels, no trailing dot; borrowed when it already is); `None` when it has none.
/// The localpart and resource are not looked at: this names where a stanza goes, also for an
/// error reply to a sender whose own localpart is malformed.
pub fn jid_domain(jid: &str) -> Option<std::borrow::Cow<'_, str>> {
    fedgate_jid::canonical_domain(fedgate_jid::domain_of(jid)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_namespaces_and_escapes() {
        let el = Element::new("message", NS_CONTENT)
            .with_attr("to", "a@b.test")
            .with_attr("id", "x'<&")
            .with_child(Element::new("body", NS_CONTENT).with_text("1 < 2 & 'q'"))
            .with_child(Element::new("x", "urn:x").with_child(Element::new("y", "urn:x")));
        assert_eq!(
            String::from_utf8(el.to_bytes()).unwrap(),
            "<message to='a@b.test' id='x&apos;&lt;&amp;'><body>1 &lt; 2 &amp; 'q'</body>\
             <x xmlns='urn:x'><y/></x></message>"
        );
    }

    #[test]
    fn wire_len_is_the_serialized_length() {
        let small = Element::new("presence", NS_CONTENT).with_attr("to", "a@b.test");
        let big = Element::new("message", NS_CONTENT)
            .with_attr("to", "x&y")
            .with_child(Element::new("body", NS_CONTENT).with_text(&"<é>".repeat(40_000)));
        for el in [&small, &big, &small] {
            assert_eq!(el.wire_len(), el.to_bytes().len());
        }
    }

    #[test]
    fn jid_domains() {
        let d = |j| jid_domain(j).map(std::borrow::Cow::into_owned);
        assert_eq!(d("alice@example.test/res").as_deref(), Some("example.test"));
        assert_eq!(d("example.test").as_deref(), Some("example.test"));
        assert_eq!(d("example.test/a@b").as_deref(), Some("example.test"));
        assert_eq!(d("example.test.").as_deref(), Some("example.test"));
        assert_eq!(d("a b@EXAMPLE.test").as_deref(), Some("example.test"));
        assert_eq!(
            d("x@xn--bcher-kva.example").as_deref(),
            Some("bücher.example")
        );
        assert_eq!(d("alice@"), None);
        assert_eq!(d("alice@a..b"), None);
        assert_eq!(d(""), None);
    }
}
