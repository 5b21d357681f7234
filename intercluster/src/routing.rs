//! Routing decisions (sans-IO): which cluster a stanza goes to, the one-hop loop guard for
//! stanzas that arrive over a link, and presence coalescing (one `<route>` per link for a
//! presence broadcast to several users of the same peer).

use std::borrow::Cow;

use fedgate_s2s::element::{Element, NS_CONTENT};

use crate::directory::Directory;
use crate::wire::{MAX_ROUTE_EXPANDED_BYTES, MAX_ROUTE_RECIPIENTS, Routed};

/// Clusters a stanza may be forwarded through after its first link: a cluster that receives
/// a stanza for a user it no longer hosts forwards it once; a second miss bounces.
pub const MAX_HOPS: u8 = 1;

/// The canonical bare JID (RFC 7622) of a `to`/`from` address, if it has a localpart
/// (borrowed when it is canonical already, as every address is once a link took the stanza
/// in: no allocation per stanza in the common case).
pub fn bare_user(jid: &str) -> Option<Cow<'_, str>> {
    let bare = fedgate_jid::bare_of(jid);
    fedgate_jid::local_of(bare)?;
    match fedgate_jid::canonical(bare).ok()? {
        Cow::Borrowed(b) => Some(Cow::Borrowed(b)),
        Cow::Owned(o) => Some(Cow::Owned(o)),
    }
}

/// Where a stanza for a user goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Deliver here: the user is homed here, listed nowhere, or homed on a cluster that is not
    /// a configured peer.
    Local,
    /// Over the link to `peer`, with this hop count.
    Peer { peer: String, hops: u8 },
    /// Refuse: the loop guard fired (the text says why).
    LoopGuard { home: String },
}

/// A stanza entering this cluster (from a local user, a remote domain, SIP: `hops = None`) or
/// arriving over a link with `Some(hops)`.
pub fn decide(
    dir: &Directory,
    is_peer: impl Fn(&str) -> bool,
    to: &str,
    arrived_hops: Option<u8>,
) -> Decision {
    let Some(user) = bare_user(to) else {
        return Decision::Local;
    };
    let Some(home) = dir.resolve(&user) else {
        return Decision::Local;
    };
    if home.cluster == dir.me() || !is_peer(&home.cluster) {
        return Decision::Local;
    }
    match arrived_hops {
        None => Decision::Peer {
            peer: home.cluster,
            hops: 0,
        },
        Some(h) if h < MAX_HOPS => Decision::Peer {
            peer: home.cluster,
            hops: h + 1,
        },
        Some(_) => Decision::LoopGuard { home: home.cluster },
    }
}

/// Broadcast presence (available or unavailable) may be carried once for several recipients.
fn coalescable(el: &Element) -> bool {
    el.name == "presence"
        && el.ns == NS_CONTENT
        && matches!(el.attr("type"), None | Some("unavailable"))
}

/// The stanza without its `to` (what must be equal for two presences to share a route).
fn without_to(el: &Element) -> Element {
    let mut e = el.clone();
    e.attrs.retain(|a| !(a.ns.is_empty() && a.name == "to"));
    e
}

/// Packs stanzas queued for one link into routes, in order: runs of consecutive broadcast
/// presences that differ only in `to` (and have the same hop count) become one route listing
/// the recipients, within the bounds a peer accepts ([`MAX_ROUTE_RECIPIENTS`],
/// [`MAX_ROUTE_EXPANDED_BYTES`]); everything else travels alone.
pub fn pack(items: impl IntoIterator<Item = (Element, u8)>) -> Vec<Routed> {
    let items = items.into_iter();
    let mut out: Vec<Routed> = Vec::with_capacity(items.size_hint().0);
    // The shared stanza of the current run and its size.
    let mut run_key: Option<(Element, usize)> = None;
    for (el, hops) in items {
        if coalescable(&el) {
            let key = without_to(&el);
            let to = el.attr("to").unwrap_or_default().to_owned();
            if let (Some((k, size)), Some(last)) = (&run_key, out.last_mut())
                && *k == key
                && last.hops == hops
                && last.recipients.len() < MAX_ROUTE_RECIPIENTS
                && size.saturating_mul(last.recipients.len().max(1) + 1) <= MAX_ROUTE_EXPANDED_BYTES
            {
                if last.recipients.is_empty() {
                    let first_to = last.stanza.attr("to").unwrap_or_default().to_owned();
                    last.recipients.push(first_to);
                    last.stanza = key.clone();
                }
                last.recipients.push(to);
                continue;
            }
            let size = key.wire_len();
            run_key = Some((key, size));
        } else {
            run_key = None;
        }
        out.push(Routed {
            hops,
            recipients: Vec::new(),
            stanza: el,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn presence(from: &str, to: &str, ty: Option<&str>) -> Element {
        let mut p = Element::new("presence", NS_CONTENT)
            .with_attr("from", from)
            .with_attr("to", to)
            .with_child(Element::new("show", NS_CONTENT).with_text("away"));
        if let Some(t) = ty {
            p.set_attr("type", t);
        }
        p
    }

    fn message(to: &str) -> Element {
        Element::new("message", NS_CONTENT).with_attr("to", to)
    }

    fn dirs() -> Directory {
        let mut london = Directory::new("london", 1, 10);
        london.set_own(&HashMap::from([("carol@x".to_owned(), 1)]));
        let mut tokyo = Directory::new("tokyo", 2, 10);
        tokyo.set_own(&HashMap::from([("alice@x".to_owned(), 1)]));
        let (seq, e, d) = tokyo.own_snapshot();
        london.apply_snapshot("tokyo", 2, seq, e, d).unwrap();
        let mut ghost = Directory::new("ghost", 3, 10);
        ghost.set_own(&HashMap::from([("gary@x".to_owned(), 1)]));
        let (seq, e, d) = ghost.own_snapshot();
        london.apply_snapshot("ghost", 3, seq, e, d).unwrap();
        london
    }

    #[test]
    fn entering_stanzas_go_to_the_home_cluster_or_stay() {
        let d = dirs();
        let peers = |p: &str| p == "tokyo";
        assert_eq!(
            decide(&d, peers, "Alice@X/phone", None),
            Decision::Peer {
                peer: "tokyo".into(),
                hops: 0
            }
        );
        assert_eq!(decide(&d, peers, "carol@x", None), Decision::Local);
        // Unknown users and domain-only addresses are delivered here as before.
        assert_eq!(decide(&d, peers, "nobody@x", None), Decision::Local);
        assert_eq!(decide(&d, peers, "x", None), Decision::Local);
        // Homed on a cluster that is no configured peer: here.
        assert_eq!(decide(&d, peers, "gary@x", None), Decision::Local);
    }

    #[test]
    fn a_stanza_from_a_link_is_forwarded_once_then_refused() {
        let d = dirs();
        let peers = |p: &str| p == "tokyo";
        assert_eq!(decide(&d, peers, "carol@x", Some(0)), Decision::Local);
        assert_eq!(
            decide(&d, peers, "alice@x", Some(0)),
            Decision::Peer {
                peer: "tokyo".into(),
                hops: 1
            }
        );
        assert_eq!(
            decide(&d, peers, "alice@x", Some(1)),
            Decision::LoopGuard {
                home: "tokyo".into()
            }
        );
    }

    #[test]
    fn packed_routes_stay_within_what_a_peer_accepts() {
        let items: Vec<(Element, u8)> = (0..2500)
            .map(|i| (presence("bob@b/r", &format!("u{i}@x"), None), 0))
            .collect();
        let routes = pack(items);
        let sizes: Vec<usize> = routes.iter().map(|r| r.recipients.len()).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        let big = Element::new("presence", NS_CONTENT)
            .with_attr("from", "bob@b/r")
            .with_child(Element::new("status", NS_CONTENT).with_text(&"x".repeat(1 << 20)));
        let items: Vec<(Element, u8)> = (0..10)
            .map(|i| {
                let mut p = big.clone();
                p.set_attr("to", &format!("u{i}@x"));
                (p, 0)
            })
            .collect();
        let routes = pack(items);
        for r in &routes {
            let m = crate::wire::Msg::Route(r.clone());
            assert!(crate::wire::Msg::parse(&m.to_element()).is_ok());
        }
        assert_eq!(
            routes
                .iter()
                .map(|r| r.recipients.len().max(1))
                .sum::<usize>(),
            10
        );
    }

    #[test]
    fn presence_broadcast_is_packed_once_per_link() {
        let items = vec![
            (presence("bob@b/r", "a@x", None), 0),
            (presence("bob@b/r", "c@x", None), 0),
            (presence("bob@b/r", "d@x", None), 0),
            (message("a@x"), 0),
            (presence("bob@b/r", "a@x", Some("unavailable")), 0),
            (presence("bob@b/r", "c@x", Some("unavailable")), 0),
            // Subscriptions and other senders travel alone.
            (presence("bob@b/r", "c@x", Some("subscribe")), 0),
            (presence("eve@b/r", "c@x", Some("subscribe")), 0),
            (presence("eve@b/r", "a@x", None), 1),
            (presence("eve@b/r", "c@x", None), 0),
        ];
        let routes = pack(items.clone());
        let shape: Vec<(usize, u8)> = routes
            .iter()
            .map(|r| (r.recipients.len(), r.hops))
            .collect();
        assert_eq!(
            shape,
            vec![(3, 0), (0, 0), (2, 0), (0, 0), (0, 0), (0, 1), (0, 0)]
        );
        // Expanding gives back exactly the stanzas that went in, in order.
        let back: Vec<Element> = routes.into_iter().flat_map(Routed::expand).collect();
        let orig: Vec<Element> = items.into_iter().map(|(e, _)| e).collect();
        assert_eq!(back.len(), orig.len());
        for (b, o) in back.iter().zip(&orig) {
            assert_eq!(b.attr("to"), o.attr("to"));
            assert_eq!(without_to(b), without_to(o));
        }
    }
}
