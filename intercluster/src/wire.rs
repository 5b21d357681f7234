//! The link protocol on the wire: an XMPP-style stream whose default namespace is
//! [`NS_INTERCLUSTER`], read with `fedgate_s2s::xml::StreamParser` (which maps the stream's
//! default namespace to the canonical content namespace, so protocol elements and the stanzas
//! they carry are both in `NS_CONTENT` once parsed).
//!
//! Elements (all top level):
//! - `<hello cluster incarnation seq consistency version rcvd-inc rcvd rcvd-ok/>`: first
//!   element each side sends (`rcvd`: how many routes of the peer's incarnation `rcvd-inc` it
//!   has taken; `rcvd-ok`: how many of those its next hop confirmed, the same as `rcvd` when
//!   absent);
//! - `<refuse reason>text</refuse>`: the sender closes the link after it;
//! - `<subscribe origin incarnation? since/>`: "send me `origin`'s log after `since`";
//! - `<deltas origin incarnation first><put u e/><del u/>…</deltas>`: consecutive changes;
//! - `<snapshot origin incarnation seq count/>`, `<entries origin><e u e/>…</entries>`,
//!   `<snapshot-end origin incarnation seq digest/>`: a whole origin;
//! - `<digest origin incarnation seq digest/>`: anti-entropy check;
//! - `<ping seq/>`, `<pong/>`: heartbeats (the ping carries the sender's log head);
//! - `<route hops><rcpt to/>…<stanza/></route>`: a routed stanza, for one recipient (its own
//!   `to`) or several (`rcpt` elements: presence broadcast carried once per link);
//! - `<ack h/>`: the receiver has taken care of (delivered to its next hop, which confirmed
//!   them, or answered) `h` routes of the sender's incarnation in all (see
//!   [`crate::delivery`]).

use fedgate_s2s::element::{Element, NS_CONTENT};

use crate::delivery::Received;
use crate::directory::{Change, Digest};

/// The stream's default namespace.
pub const NS_INTERCLUSTER: &str = "urn:fedgate:intercluster:0";
/// Protocol version in `hello` ("1": numbered and acknowledged routes). Every cluster of a
/// deployment must speak the same one.
pub const VERSION: &str = "1";

/// Most recipients one `<route>` may list.
pub const MAX_ROUTE_RECIPIENTS: usize = 1000;
/// Most bytes a multi-recipient `<route>` may expand to (stanza size × recipients): one
/// element must not turn into gigabytes of copies.
pub const MAX_ROUTE_EXPANDED_BYTES: usize = 4 * 1024 * 1024;

/// A stanza routed over a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Clusters this stanza has been forwarded through beyond the first link.
    pub hops: u8,
    /// Recipients (full or bare JIDs); empty: the stanza's own `to`.
    pub recipients: Vec<String>,
    pub stanza: Element,
}

impl Routed {
    /// Its `<route>` element.
    pub fn to_element(&self) -> Element {
        let mut e = el("route").with_attr("hops", &self.hops.to_string());
        for to in &self.recipients {
            e = e.with_child(el("rcpt").with_attr("to", to));
        }
        e.with_child(self.stanza.clone())
    }

    /// One stanza per recipient, each addressed to it.
    pub fn expand(self) -> Vec<Element> {
        if self.recipients.is_empty() {
            return vec![self.stanza];
        }
        self.recipients
            .iter()
            .map(|r| {
                let mut s = self.stanza.clone();
                s.set_attr("to", r);
                s
            })
            .collect()
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello {
        cluster: String,
        incarnation: u64,
        seq: u64,
        consistency: String,
        /// What the sender has taken of the receiver's routes.
        received: Received,
    },
    Refuse {
        reason: String,
        text: String,
    },
    Subscribe {
        origin: String,
        incarnation: Option<u64>,
        since: u64,
    },
    Deltas {
        origin: String,
        incarnation: u64,
        first: u64,
        changes: Vec<Change>,
    },
    SnapshotBegin {
        origin: String,
        incarnation: u64,
        seq: u64,
        count: u64,
    },
    Entries {
        origin: String,
        entries: Vec<(String, u64)>,
    },
    SnapshotEnd {
        origin: String,
        incarnation: u64,
        seq: u64,
        digest: Digest,
    },
    Digest {
        origin: String,
        incarnation: u64,
        seq: u64,
        digest: Digest,
    },
    Ping {
        seq: u64,
    },
    Pong,
    Route(Routed),
    Ack {
        h: u64,
    },
}

/// A malformed protocol element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("<{element}>: missing or bad attribute '{attr}'")]
    BadAttr { element: String, attr: &'static str },
    #[error("unknown element <{0}>")]
    Unknown(String),
    #[error(
        "<hello> of protocol version {0:?}, this cluster speaks {VERSION:?}: run the same fedgate version on every cluster"
    )]
    Version(String),
    #[error("<route> without a stanza")]
    EmptyRoute,
    #[error("<route>: {0}")]
    BadRoute(String),
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn get<'a>(el: &'a Element, attr: &'static str) -> Result<&'a str, WireError> {
    el.attr(attr).ok_or_else(|| WireError::BadAttr {
        element: el.name.clone(),
        attr,
    })
}

fn num(el: &Element, attr: &'static str) -> Result<u64, WireError> {
    get(el, attr)?.parse().map_err(|_| WireError::BadAttr {
        element: el.name.clone(),
        attr,
    })
}

fn hexnum(el: &Element, attr: &'static str) -> Result<u64, WireError> {
    u64::from_str_radix(get(el, attr)?, 16).map_err(|_| WireError::BadAttr {
        element: el.name.clone(),
        attr,
    })
}

fn digest(el: &Element) -> Result<Digest, WireError> {
    Digest::parse(get(el, "digest")?).ok_or_else(|| WireError::BadAttr {
        element: el.name.clone(),
        attr: "digest",
    })
}

fn el(name: &str) -> Element {
    Element::new(name, NS_CONTENT)
}

/// The opening of a link stream.
pub fn stream_header(from: &str, to: &str) -> Vec<u8> {
    fedgate_s2s::wire::Header {
        content_ns: NS_INTERCLUSTER,
        from: Some(from),
        to: Some(to),
        id: None,
        version: true,
        dialback: false,
    }
    .to_bytes()
}

/// The end of a link stream.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

impl Msg {
    pub fn to_element(&self) -> Element {
        match self {
            Msg::Hello {
                cluster,
                incarnation,
                seq,
                consistency,
                received,
            } => el("hello")
                .with_attr("cluster", cluster)
                .with_attr("incarnation", &hex(*incarnation))
                .with_attr("seq", &seq.to_string())
                .with_attr("consistency", consistency)
                .with_attr("version", VERSION)
                .with_attr("rcvd-inc", &hex(received.incarnation))
                .with_attr("rcvd", &received.count.to_string())
                .with_attr("rcvd-ok", &received.confirmed.to_string()),
            Msg::Refuse { reason, text } => {
                el("refuse").with_attr("reason", reason).with_text(text)
            }
            Msg::Subscribe {
                origin,
                incarnation,
                since,
            } => {
                let mut e = el("subscribe")
                    .with_attr("origin", origin)
                    .with_attr("since", &since.to_string());
                if let Some(i) = incarnation {
                    e.set_attr("incarnation", &hex(*i));
                }
                e
            }
            Msg::Deltas {
                origin,
                incarnation,
                first,
                changes,
            } => {
                let mut e = el("deltas")
                    .with_attr("origin", origin)
                    .with_attr("incarnation", &hex(*incarnation))
                    .with_attr("first", &first.to_string());
                for c in changes {
                    e = e.with_child(match c {
                        Change::Put { user, epoch } => el("put")
                            .with_attr("u", user)
                            .with_attr("e", &epoch.to_string()),
                        Change::Del { user } => el("del").with_attr("u", user),
                    });
                }
                e
            }
            Msg::SnapshotBegin {
                origin,
                incarnation,
                seq,
                count,
            } => el("snapshot")
                .with_attr("origin", origin)
                .with_attr("incarnation", &hex(*incarnation))
                .with_attr("seq", &seq.to_string())
                .with_attr("count", &count.to_string()),
            Msg::Entries { origin, entries } => {
                let mut e = el("entries").with_attr("origin", origin);
                e.children.reserve(entries.len());
                for (u, ep) in entries {
                    e = e.with_child(el("e").with_attr("u", u).with_attr("e", &ep.to_string()));
                }
                e
            }
            Msg::SnapshotEnd {
                origin,
                incarnation,
                seq,
                digest,
            } => el("snapshot-end")
                .with_attr("origin", origin)
                .with_attr("incarnation", &hex(*incarnation))
                .with_attr("seq", &seq.to_string())
                .with_attr("digest", &digest.render()),
            Msg::Digest {
                origin,
                incarnation,
                seq,
                digest,
            } => el("digest")
                .with_attr("origin", origin)
                .with_attr("incarnation", &hex(*incarnation))
                .with_attr("seq", &seq.to_string())
                .with_attr("digest", &digest.render()),
            Msg::Ping { seq } => el("ping").with_attr("seq", &seq.to_string()),
            Msg::Pong => el("pong"),
            Msg::Ack { h } => el("ack").with_attr("h", &h.to_string()),
            Msg::Route(r) => r.to_element(),
        }
    }

    /// Bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_element().to_bytes()
    }

    /// Reads a top-level element of a link stream.
    pub fn parse(e: &Element) -> Result<Self, WireError> {
        if e.ns != NS_CONTENT {
            return Err(WireError::Unknown(format!("{{{}}}{}", e.ns, e.name)));
        }
        Ok(match e.name.as_str() {
            "hello" if e.attr("version") != Some(VERSION) => {
                return Err(WireError::Version(
                    e.attr("version").unwrap_or("none").to_owned(),
                ));
            }
            "hello" => Msg::Hello {
                cluster: get(e, "cluster")?.to_owned(),
                incarnation: hexnum(e, "incarnation")?,
                seq: num(e, "seq")?,
                consistency: get(e, "consistency")?.to_owned(),
                received: {
                    let count = num(e, "rcvd")?;
                    Received {
                        incarnation: hexnum(e, "rcvd-inc")?,
                        count,
                        // Before receipts, everything taken counted as confirmed.
                        confirmed: match e.attr("rcvd-ok") {
                            Some(_) => num(e, "rcvd-ok")?.min(count),
                            None => count,
                        },
                    }
                },
            },
            "refuse" => Msg::Refuse {
                reason: get(e, "reason")?.to_owned(),
                text: e.text(),
            },
            "subscribe" => Msg::Subscribe {
                origin: get(e, "origin")?.to_owned(),
                incarnation: match e.attr("incarnation") {
                    Some(_) => Some(hexnum(e, "incarnation")?),
                    None => None,
                },
                since: num(e, "since")?,
            },
            "deltas" => {
                let mut changes = Vec::new();
                for c in e.elements() {
                    changes.push(match c.name.as_str() {
                        "put" => Change::Put {
                            user: get(c, "u")?.to_owned(),
                            epoch: num(c, "e")?,
                        },
                        "del" => Change::Del {
                            user: get(c, "u")?.to_owned(),
                        },
                        other => return Err(WireError::Unknown(other.to_owned())),
                    });
                }
                Msg::Deltas {
                    origin: get(e, "origin")?.to_owned(),
                    incarnation: hexnum(e, "incarnation")?,
                    first: num(e, "first")?,
                    changes,
                }
            }
            "snapshot" => Msg::SnapshotBegin {
                origin: get(e, "origin")?.to_owned(),
                incarnation: hexnum(e, "incarnation")?,
                seq: num(e, "seq")?,
                count: num(e, "count")?,
            },
            "entries" => {
                let mut entries = Vec::with_capacity(e.children.len());
                for c in e.elements() {
                    entries.push((get(c, "u")?.to_owned(), num(c, "e")?));
                }
                Msg::Entries {
                    origin: get(e, "origin")?.to_owned(),
                    entries,
                }
            }
            "snapshot-end" => Msg::SnapshotEnd {
                origin: get(e, "origin")?.to_owned(),
                incarnation: hexnum(e, "incarnation")?,
                seq: num(e, "seq")?,
                digest: digest(e)?,
            },
            "digest" => Msg::Digest {
                origin: get(e, "origin")?.to_owned(),
                incarnation: hexnum(e, "incarnation")?,
                seq: num(e, "seq")?,
                digest: digest(e)?,
            },
            "ping" => Msg::Ping {
                seq: num(e, "seq")?,
            },
            "pong" => Msg::Pong,
            "ack" => Msg::Ack { h: num(e, "h")? },
            "route" => {
                let hops = get(e, "hops")?.parse().map_err(|_| WireError::BadAttr {
                    element: "route".into(),
                    attr: "hops",
                })?;
                let mut recipients = Vec::new();
                let mut stanza: Option<&Element> = None;
                for c in e.elements() {
                    if c.is("rcpt", NS_CONTENT) {
                        if recipients.len() == MAX_ROUTE_RECIPIENTS {
                            return Err(WireError::BadRoute(format!(
                                "more than {MAX_ROUTE_RECIPIENTS} recipients"
                            )));
                        }
                        recipients.push(get(c, "to")?.to_owned());
                    } else if stanza.replace(c).is_some() {
                        return Err(WireError::BadRoute("more than one stanza".into()));
                    }
                }
                let stanza = stanza.ok_or(WireError::EmptyRoute)?;
                if !recipients.is_empty() {
                    if !stanza.is("presence", NS_CONTENT) {
                        return Err(WireError::BadRoute(format!(
                            "only presence may list recipients, not <{}>",
                            stanza.name
                        )));
                    }
                    let size = stanza.wire_len();
                    if size.saturating_mul(recipients.len()) > MAX_ROUTE_EXPANDED_BYTES {
                        return Err(WireError::BadRoute(format!(
                            "{} recipients of a {size}-byte stanza expand beyond {MAX_ROUTE_EXPANDED_BYTES} bytes",
                            recipients.len(),
                        )));
                    }
                }
                Msg::Route(Routed {
                    hops,
                    recipients,
                    stanza: stanza.clone(),
                })
            }
            other => return Err(WireError::Unknown(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use fedgate_s2s::xml::{Limits, StreamEvent, StreamParser};

    use super::*;

    /// Writes messages into a stream and reads them back with the s2s parser.
    fn roundtrip(msgs: &[Msg]) -> Vec<Msg> {
        let mut bytes = stream_header("tokyo", "london");
        for m in msgs {
            bytes.extend(m.to_bytes());
        }
        let mut p = StreamParser::new(Limits::default());
        p.feed(&bytes);
        let Ok(Some(StreamEvent::Open(h))) = p.next_event() else {
            panic!("header")
        };
        assert_eq!(h.default_ns, NS_INTERCLUSTER);
        assert_eq!(h.from.as_deref(), Some("tokyo"));
        let mut out = Vec::new();
        while let Ok(Some(StreamEvent::Element(e, _))) = p.next_event() {
            out.push(Msg::parse(&e).unwrap());
        }
        out
    }

    #[test]
    fn every_message_survives_the_stream() {
        let stanza = Element::new("message", NS_CONTENT)
            .with_attr("from", "bob@b.test/r")
            .with_attr("to", "alice@example.test")
            .with_child(Element::new("body", NS_CONTENT).with_text("hi <there> & 'you'"))
            .with_child(Element::new("x", "urn:example:ext").with_attr("a", "1"));
        let msgs = vec![
            Msg::Hello {
                cluster: "tokyo".into(),
                incarnation: u64::MAX - 3,
                seq: 12,
                consistency: "abc".into(),
                received: Received {
                    incarnation: 7,
                    count: 42,
                    confirmed: 40,
                },
            },
            Msg::Refuse {
                reason: "consistency".into(),
                text: "domains differ".into(),
            },
            Msg::Subscribe {
                origin: "tokyo".into(),
                incarnation: None,
                since: 0,
            },
            Msg::Subscribe {
                origin: "tokyo".into(),
                incarnation: Some(5),
                since: 9,
            },
            Msg::Deltas {
                origin: "tokyo".into(),
                incarnation: 5,
                first: 10,
                changes: vec![
                    Change::Put {
                        user: "a@example.test".into(),
                        epoch: 2,
                    },
                    Change::Del {
                        user: "b@example.test".into(),
                    },
                ],
            },
            Msg::SnapshotBegin {
                origin: "tokyo".into(),
                incarnation: 5,
                seq: 11,
                count: 1,
            },
            Msg::Entries {
                origin: "tokyo".into(),
                entries: vec![("a@example.test".into(), 2)],
            },
            Msg::SnapshotEnd {
                origin: "tokyo".into(),
                incarnation: 5,
                seq: 11,
                digest: Digest::of([("a@example.test", 2)]),
            },
            Msg::Digest {
                origin: "tokyo".into(),
                incarnation: 5,
                seq: 11,
                digest: Digest { count: 1, hash: 77 },
            },
            Msg::Ping { seq: 11 },
            Msg::Pong,
            Msg::Ack { h: 1 << 40 },
            Msg::Route(Routed {
                hops: 0,
                recipients: vec![],
                stanza: stanza.clone(),
            }),
            Msg::Route(Routed {
                hops: 1,
                recipients: vec!["a@example.test".into(), "c@example.test/x".into()],
                stanza: Element::new("presence", NS_CONTENT)
                    .with_attr("from", "bob@b.test/r")
                    .with_child(Element::new("show", NS_CONTENT).with_text("away")),
            }),
        ];
        assert_eq!(roundtrip(&msgs), msgs);
    }

    #[test]
    fn malformed_elements_get_precise_errors() {
        let bad = el("deltas")
            .with_attr("origin", "tokyo")
            .with_attr("first", "1");
        assert_eq!(
            Msg::parse(&bad),
            Err(WireError::BadAttr {
                element: "deltas".into(),
                attr: "incarnation"
            })
        );
        let bad = el("ping").with_attr("seq", "-1");
        assert!(matches!(Msg::parse(&bad), Err(WireError::BadAttr { .. })));
        assert_eq!(
            Msg::parse(&el("route").with_attr("hops", "0")),
            Err(WireError::EmptyRoute)
        );
        assert_eq!(
            Msg::parse(&el("bogus")),
            Err(WireError::Unknown("bogus".into()))
        );
        assert!(Msg::parse(&Element::new("hello", "urn:other")).is_err());
        // A cluster running another protocol version is told so, not "bad attribute".
        let mut old = Msg::Hello {
            cluster: "tokyo".into(),
            incarnation: 1,
            seq: 0,
            consistency: "c".into(),
            received: Received::default(),
        }
        .to_element();
        old.set_attr("version", "0");
        let e = Msg::parse(&old).unwrap_err();
        assert_eq!(e, WireError::Version("0".into()));
        assert!(e.to_string().contains("same fedgate version"), "{e}");
    }

    #[test]
    fn routes_that_would_amplify_or_are_ambiguous_are_refused() {
        let big = Element::new("presence", NS_CONTENT)
            .with_child(Element::new("status", NS_CONTENT).with_text(&"x".repeat(64 * 1024)));
        let route = |stanza: &Element, n: usize| {
            let mut r = el("route").with_attr("hops", "0");
            for i in 0..n {
                r = r.with_child(el("rcpt").with_attr("to", &format!("u{i}@x")));
            }
            r.with_child(stanza.clone())
        };
        // 64 KiB × 100 copies: refused; 64 KiB × 10: fine.
        assert!(matches!(
            Msg::parse(&route(&big, 100)),
            Err(WireError::BadRoute(_))
        ));
        assert!(Msg::parse(&route(&big, 10)).is_ok());
        let small = Element::new("presence", NS_CONTENT);
        assert!(matches!(
            Msg::parse(&route(&small, MAX_ROUTE_RECIPIENTS + 1)),
            Err(WireError::BadRoute(_))
        ));
        assert!(Msg::parse(&route(&small, MAX_ROUTE_RECIPIENTS)).is_ok());
        // Recipients only for presence; one stanza per route.
        let msg = Element::new("message", NS_CONTENT);
        assert!(matches!(
            Msg::parse(&route(&msg, 2)),
            Err(WireError::BadRoute(_))
        ));
        let two = route(&msg, 0).with_child(msg.clone());
        assert!(matches!(Msg::parse(&two), Err(WireError::BadRoute(_))));
    }

    #[test]
    fn a_multi_recipient_route_expands_to_one_stanza_each() {
        let p = Element::new("presence", NS_CONTENT).with_attr("from", "bob@b.test/r");
        let r = Routed {
            hops: 0,
            recipients: vec!["a@x".into(), "c@x".into()],
            stanza: p,
        };
        let out = r.expand();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].attr("to"), Some("a@x"));
        assert_eq!(out[1].attr("to"), Some("c@x"));
        assert_eq!(out[1].attr("from"), Some("bob@b.test/r"));
    }
}
