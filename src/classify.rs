//! What kind of stanza this is, for policy: messages, presence, subscriptions, iq, file
//! transfer (XEP-0363 HTTP upload slots and links, XEP-0234 Jingle file transfer, XEP-0065
//! SOCKS5 bytestreams, XEP-0066 out-of-band data, XEP-0096 SI file transfer) and group chat
//! invitations (XEP-0045 mediated, XEP-0249 direct).

use fedgate_policy::Kind;
use fedgate_s2s::element::Element;

const FILE_TRANSFER_NS: [&str; 7] = [
    "urn:xmpp:http:upload:0",
    "urn:xmpp:jingle:apps:file-transfer:5",
    "urn:xmpp:jingle:apps:file-transfer:4",
    "http://jabber.org/protocol/bytestreams",
    "jabber:x:oob",
    "jabber:iq:oob",
    "http://jabber.org/protocol/si/profile/file-transfer",
];

fn has_descendant(el: &Element, depth: usize, pred: &dyn Fn(&Element) -> bool) -> bool {
    depth > 0
        && el
            .elements()
            .any(|c| pred(c) || has_descendant(c, depth - 1, pred))
}

fn is_file_transfer(el: &Element) -> bool {
    has_descendant(el, 4, &|c| FILE_TRANSFER_NS.contains(&c.ns.as_str()))
}

fn is_groupchat_invite(el: &Element) -> bool {
    el.elements().any(|c| {
        c.ns == "jabber:x:conference"
            || c.ns == "http://jabber.org/protocol/muc#user"
                && c.elements().any(|i| i.name == "invite")
    })
}

/// The policy kind of a stanza.
pub fn classify(stanza: &Element) -> Kind {
    match stanza.name.as_str() {
        "presence" => match stanza.attr("type") {
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => Kind::Subscription,
            _ => Kind::Presence,
        },
        "message" if is_groupchat_invite(stanza) => Kind::GroupchatInvite,
        "message" if is_file_transfer(stanza) => Kind::FileTransfer,
        "message" => Kind::Message,
        _ if is_file_transfer(stanza) => Kind::FileTransfer,
        _ => Kind::Iq,
    }
}

#[cfg(test)]
mod tests {
    use fedgate_s2s::xml::{Limits, StreamEvent, StreamParser};

    use super::*;

    fn parse(s: &str) -> Element {
        let mut p = StreamParser::new(Limits::default());
        p.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>");
        p.feed(s.as_bytes());
        loop {
            match p.next_event().unwrap() {
                Some(StreamEvent::Element(e, _)) => return e,
                Some(_) => {}
                None => panic!("incomplete"),
            }
        }
    }

    #[test]
    fn kinds() {
        for (xml, kind) in [
            ("<message><body>hi</body></message>", Kind::Message),
            ("<presence/>", Kind::Presence),
            ("<presence type='unavailable'/>", Kind::Presence),
            ("<presence type='probe'/>", Kind::Presence),
            ("<presence type='subscribe'/>", Kind::Subscription),
            ("<presence type='unsubscribed'/>", Kind::Subscription),
            (
                "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
                Kind::Iq,
            ),
            (
                "<message><body>https://x/f.png</body><x xmlns='jabber:x:oob'><url>https://x/f.png</url></x></message>",
                Kind::FileTransfer,
            ),
            (
                "<iq type='get'><request xmlns='urn:xmpp:http:upload:0' filename='a'/></iq>",
                Kind::FileTransfer,
            ),
            (
                "<iq type='set'><jingle xmlns='urn:xmpp:jingle:1'><content><description xmlns='urn:xmpp:jingle:apps:file-transfer:5'/></content></jingle></iq>",
                Kind::FileTransfer,
            ),
            (
                "<iq type='set'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s'/></iq>",
                Kind::FileTransfer,
            ),
            (
                "<iq type='set'><si xmlns='http://jabber.org/protocol/si'><file xmlns='http://jabber.org/protocol/si/profile/file-transfer'/></si></iq>",
                Kind::FileTransfer,
            ),
            (
                "<message><x xmlns='http://jabber.org/protocol/muc#user'><invite from='a@b'/></x></message>",
                Kind::GroupchatInvite,
            ),
            (
                "<message><x xmlns='jabber:x:conference' jid='room@muc.b'/></message>",
                Kind::GroupchatInvite,
            ),
            (
                "<message type='groupchat'><x xmlns='http://jabber.org/protocol/muc#user'><item/></x></message>",
                Kind::Message,
            ),
        ] {
            assert_eq!(classify(&parse(xml)), kind, "{xml}");
        }
    }
}
