//! The accepting side of a XEP-0114 component stream, sans-IO: the handshake
//! (SHA-1 of stream id + shared secret) and the check that every stanza comes from the
//! component's own domain.

use std::collections::HashMap;
use std::sync::Arc;

use ring::digest;

use crate::dialback::{constant_time_eq, hex};
use crate::element::{Element, NS_COMPONENT, NS_CONTENT, NS_STREAM};
use crate::wire::{Header, StreamError, stanza_domains};
use crate::xml::StreamEvent;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send(Vec<u8>),
    /// The component for `domain` gave the right secret: register it, then send
    /// `<handshake/>` (or refuse with `conflict`).
    Authenticated(String),
    /// A stanza from the component; its addresses are canonical.
    Stanza(Element, usize),
    /// A stanza with an address that has no canonical form: answer it with `jid-malformed`
    /// (from `local`, the component's domain, where its own `to` is the malformed address).
    Malformed {
        el: Element,
        size: usize,
        local: String,
        why: String,
    },
    Close(StreamError),
    PeerClosed,
}

pub struct ComponentStream {
    secrets: Arc<HashMap<String, String>>,
    stream_id: String,
    domain: Option<String>,
    authenticated: bool,
    closed: bool,
    /// Whether our stream header is on its way: a stream error needs it first (RFC 6120
    /// §4.9.1.2).
    header_sent: bool,
    out: Vec<Action>,
}

impl ComponentStream {
    /// `secrets`: component domain → shared secret.
    pub fn new(secrets: Arc<HashMap<String, String>>, stream_id: String) -> Self {
        Self {
            secrets,
            stream_id,
            domain: None,
            authenticated: false,
            closed: false,
            header_sent: false,
            out: Vec::new(),
        }
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    fn close(&mut self, e: StreamError) {
        if !self.header_sent {
            let h = self.header(None);
            self.out.push(Action::Send(h));
        }
        self.closed = true;
        self.out.push(Action::Close(e));
    }

    /// The bytes that end the stream (with the stream error `e` if given), for what the driver finds itself (parser
    /// errors, timeouts, shutdown): our stream header first when none was sent yet, so that
    /// the `stream` prefix of `<stream:error>` is bound (RFC 6120 §4.9.1.2), then the error
    /// and `</stream:stream>`. The machine is closed afterwards.
    pub fn closing_bytes(&mut self, e: Option<&StreamError>) -> Vec<u8> {
        let mut b = if self.header_sent {
            Vec::new()
        } else {
            self.header(None)
        };
        self.header_sent = true;
        self.closed = true;
        match e {
            Some(e) => b.extend_from_slice(&e.to_bytes()),
            None => b.extend_from_slice(b"</stream:stream>"),
        }
        b
    }

    /// Our stream header, `from` the component domain when it is one we know.
    fn header(&self, from: Option<&str>) -> Vec<u8> {
        Header {
            content_ns: NS_COMPONENT,
            from,
            to: None,
            id: Some(&self.stream_id),
            version: false,
            dialback: false,
        }
        .to_bytes()
    }

    pub fn handle(&mut self, ev: StreamEvent) {
        if self.closed {
            return;
        }
        match ev {
            StreamEvent::Open(h) => {
                let to = h.to.as_deref().map(|d| {
                    crate::element::jid_domain(d)
                        .map_or_else(|| d.to_ascii_lowercase(), std::borrow::Cow::into_owned)
                });
                // Never claim to be a domain that is not configured here.
                let known = to.as_deref().filter(|d| self.secrets.contains_key(*d));
                let header = self.header(known);
                self.out.push(Action::Send(header));
                self.header_sent = true;
                if h.default_ns != NS_COMPONENT {
                    return self.close(StreamError::new(
                        "invalid-namespace",
                        "this port serves jabber:component:accept streams",
                    ));
                }
                match to {
                    Some(d) if self.secrets.contains_key(&d) => self.domain = Some(d),
                    Some(d) => self.close(StreamError::new(
                        "host-unknown",
                        format!("no component is configured for {d}"),
                    )),
                    None => self.close(StreamError::new(
                        "host-unknown",
                        "the stream header has no 'to': name the component domain",
                    )),
                }
            }
            StreamEvent::Close => {
                self.closed = true;
                self.out.push(Action::PeerClosed);
            }
            StreamEvent::Element(el, size) => self.on_element(el, size),
        }
    }

    fn on_element(&mut self, el: Element, size: usize) {
        let Some(domain) = self.domain.clone() else {
            return self.close(StreamError::new("not-authorized", "no stream header"));
        };
        if !self.authenticated {
            if !el.is("handshake", NS_CONTENT) {
                return self.close(StreamError::new("not-authorized", "handshake first"));
            }
            let secret = &self.secrets[&domain];
            let mut input = self.stream_id.clone();
            input.push_str(secret);
            let expected =
                hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes()).as_ref());
            let given = el.text().trim().to_ascii_lowercase();
            if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                return self.close(StreamError::new("not-authorized", "wrong component secret"));
            }
            // The driver answers `<handshake/>` once it has registered the component (a second
            // component for the same domain gets a `conflict` stream error instead).
            self.authenticated = true;
            self.out.push(Action::Authenticated(domain));
            return;
        }
        if el.is("error", NS_STREAM) {
            self.closed = true;
            self.out.push(Action::PeerClosed);
            return;
        }
        if el.ns != NS_CONTENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
            return self.close(StreamError::new(
                "unsupported-stanza-type",
                format!("unexpected <{}/>", el.name),
            ));
        }
        let mut el = el;
        let malformed = crate::address::canonicalize_stanza(&mut el).err();
        let (from, to) = stanza_domains(&el);
        let (from, to) = (
            from.map(std::borrow::Cow::into_owned),
            to.is_some() || el.attr("to").is_some(),
        );
        match (from, to) {
            (Some(from), true) => {
                if from != domain && !from.ends_with(&format!(".{domain}")) {
                    return self.close(StreamError::new(
                        "invalid-from",
                        format!("the component for {domain} may not send as {from}"),
                    ));
                }
                self.out.push(match malformed {
                    None => Action::Stanza(el, size),
                    Some(why) => Action::Malformed {
                        el,
                        size,
                        local: domain,
                        why: why.to_string(),
                    },
                });
            }
            _ => self.close(StreamError::new(
                "improper-addressing",
                "stanza without valid from and to",
            )),
        }
    }
}

/// The handshake value a component sends (for our own test clients and `fedgate demo`).
pub fn handshake(stream_id: &str, secret: &str) -> String {
    hex(digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{stream_id}{secret}").as_bytes(),
    )
    .as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Limits, StreamParser};

    fn run(m: &mut ComponentStream, p: &mut StreamParser, s: &str) -> Vec<Action> {
        p.feed(s.as_bytes());
        let mut v = Vec::new();
        while let Some(ev) = p.next_event().unwrap() {
            m.handle(ev);
            v.extend(m.take_actions());
        }
        v
    }

    const HDR: &str = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='example.test'>";

    #[test]
    fn handshake_and_from_check() {
        let secrets = Arc::new([("example.test".to_owned(), "pw".to_owned())].into());
        let mut m = ComponentStream::new(secrets, "abc".into());
        let mut p = StreamParser::new(Limits::default());
        let acts = run(&mut m, &mut p, HDR);
        assert!(
            matches!(&acts[..], [Action::Send(b)] if String::from_utf8_lossy(b).contains("id='abc'"))
        );
        let acts = run(
            &mut m,
            &mut p,
            &format!("<handshake>{}</handshake>", handshake("abc", "pw")),
        );
        assert_eq!(acts, vec![Action::Authenticated("example.test".into())]);
        let acts = run(
            &mut m,
            &mut p,
            "<message from='a@example.test' to='b@remote.test'/>",
        );
        assert!(matches!(&acts[..], [Action::Stanza(..)]));
        let acts = run(
            &mut m,
            &mut p,
            "<message from='a@evil.test' to='b@remote.test'/>",
        );
        assert!(matches!(&acts[..], [Action::Close(e)] if e.condition == "invalid-from"));
    }

    #[test]
    fn wrong_secret_and_unknown_domain() {
        let secrets: Arc<HashMap<String, String>> =
            Arc::new([("example.test".to_owned(), "pw".to_owned())].into());
        let mut m = ComponentStream::new(secrets.clone(), "abc".into());
        let mut p = StreamParser::new(Limits::default());
        run(&mut m, &mut p, HDR);
        let acts = run(
            &mut m,
            &mut p,
            &format!("<handshake>{}</handshake>", handshake("abc", "nope")),
        );
        assert!(matches!(&acts[..], [Action::Close(e)] if e.condition == "not-authorized"));
        let mut m = ComponentStream::new(secrets, "abc".into());
        let mut p = StreamParser::new(Limits::default());
        let acts = run(&mut m, &mut p, &HDR.replace("example.test", "other.test"));
        assert!(matches!(acts.last(), Some(Action::Close(e)) if e.condition == "host-unknown"));
        // Our header does not claim to be the unknown domain.
        assert!(
            matches!(&acts[0], Action::Send(b) if !String::from_utf8_lossy(b).contains("from=")),
            "{acts:?}"
        );
    }

    /// An error the driver finds before the component's header (garbage, a timeout) is
    /// preceded by our header; after it, the header is not repeated.
    #[test]
    fn closing_bytes_open_a_stream_only_when_none_is_open() {
        let secrets: Arc<HashMap<String, String>> =
            Arc::new([("example.test".to_owned(), "pw".to_owned())].into());
        let e = StreamError::new("connection-timeout", "no handshake in time");
        let mut m = ComponentStream::new(secrets.clone(), "abc".into());
        let out = String::from_utf8(m.closing_bytes(Some(&e))).unwrap();
        assert!(
            out.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='abc'>\
                 <stream:error><connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
            "{out}"
        );
        assert!(out.ends_with("</stream:error></stream:stream>"), "{out}");
        let mut m = ComponentStream::new(secrets, "abc".into());
        let mut p = StreamParser::new(Limits::default());
        run(&mut m, &mut p, HDR);
        let out = String::from_utf8(m.closing_bytes(None)).unwrap();
        assert_eq!(out, "</stream:stream>");
    }
}
