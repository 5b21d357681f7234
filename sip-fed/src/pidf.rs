//! Presence mapping between XMPP `<presence/>` and PIDF (RFC 3863) per RFC 8048 §6, with the
//! RPID activities (RFC 4480) that SIP clients read and the Microsoft availability number.
//!
//! XMPP → PIDF ([`to_pidf`]): no `type` / `type='unavailable'` → `<basic>open</basic>` /
//! `closed`; the resource → tuple `id` (prefixed `ID-` so it is a valid `xs:ID`, other
//! characters hex-escaped as `_HH`, reversible with [`tuple_id_resource`]); `<status/>` →
//! `<note xml:lang>`; `<priority/>` 0..127 → `<contact priority>` 0..1 (a negative priority is
//! never mapped, RFC 8048 §6); `<show/>` → `<show xmlns='jabber:client'>` inside the tuple's
//! `<status>` (RFC 8048's recommendation) plus an RPID activity in a `<dm:person>` for peers
//! that read RPID (`dnd` → `busy`, `away`/`xa` → `away`).
//!
//! PIDF → XMPP ([`from_pidf`]): each tuple gives a presence (basic, note, priority, embedded
//! show); the show comes, in this order of trust, from the embedded `<show/>`, the Microsoft
//! availability number, or the RPID activities (also `<rpid:user-input>idle` → `away`);
//! several tuples are aggregated with [`most_available`]. The Microsoft availability number is
//! read from any element named `availability` whose text is a number, in any namespace
//! (MS-PRES documents that the PIDF subset for federation carries RPID activities; the number
//! itself lives in the `state` category as `<availability>3500</availability>`, and some
//! servers copy it into PIDF). Ranges per the research note:
//! [`availability_to_presence`] / [`show_to_availability`].
//!
//! XML documents are read with the s2s stream parser ([`parse_xml_document`]).

use fedgate_s2s::element::{Attr, Element, NS_CLIENT, NS_CONTENT, NS_SERVER, NS_STREAM, NS_XML};
use fedgate_s2s::xml::{Limits, StreamEvent, StreamParser, XmlError};

use crate::address::Jid;

pub const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";
pub const NS_DATA_MODEL: &str = "urn:ietf:params:xml:ns:pidf:data-model";
/// Content type of a PIDF body.
pub const CONTENT_TYPE: &str = "application/pidf+xml";
/// Prefix of tuple ids made from XMPP resources.
pub const TUPLE_ID_PREFIX: &str = "ID-";
/// Largest XML document [`parse_xml_document`] accepts.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PidfError {
    #[error("XML: {0}")]
    Xml(#[from] XmlError),
    #[error("document is not UTF-8")]
    NotUtf8,
    #[error("no root element")]
    Empty,
    #[error("more than one root element")]
    TrailingContent,
    #[error("root element is <{0}>, not a PIDF <presence>")]
    NotPidf(String),
    #[error("presence of type {0:?} is a subscription stanza, not availability")]
    NotAvailability(String),
}

/// Parse one XML document into an [`Element`].
///
/// The s2s [`StreamParser`] only reads streams, so the document is wrapped in a stream header
/// (`<stream:stream xmlns:stream=…>` with no default namespace, so elements keep their own
/// namespaces) and a closing tag. The parser refuses processing instructions inside a stream,
/// so a leading byte-order mark, white space and `<?xml …?>` declaration are removed first. The
/// parser's restrictions apply: no comments, DTDs or entity references other than the
/// predefined ones. A root in `jabber:client`/`jabber:server` gets the canonical content
/// namespace `""`, as stanzas do.
pub fn parse_xml_document(bytes: &[u8]) -> Result<Element, PidfError> {
    let mut doc = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    doc = trim_start(doc);
    if doc.starts_with(b"<?xml") {
        let end = doc
            .windows(2)
            .position(|w| w == b"?>")
            .ok_or_else(|| XmlError::NotWellFormed("unterminated XML declaration".into()))?;
        doc = trim_start(&doc[end + 2..]);
    }
    if std::str::from_utf8(doc).is_err() {
        return Err(PidfError::NotUtf8);
    }
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: MAX_DOCUMENT_BYTES,
        ..Limits::default()
    });
    p.feed(format!("<stream:stream xmlns:stream='{NS_STREAM}'>").as_bytes());
    p.feed(doc);
    p.feed(b"</stream:stream>");
    let mut root = None;
    loop {
        match p.next_event()? {
            Some(StreamEvent::Open(_)) => {}
            Some(StreamEvent::Element(e, _)) => {
                if root.is_some() {
                    return Err(PidfError::TrailingContent);
                }
                root = Some(e);
            }
            Some(StreamEvent::Close) => break,
            None => {
                return Err(
                    XmlError::NotWellFormed("document ends inside an element".into()).into(),
                );
            }
        }
    }
    root.ok_or(PidfError::Empty)
}

fn trim_start(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// XMPP `<show/>` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Show {
    Chat,
    Away,
    Xa,
    Dnd,
}

impl Show {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Away => "away",
            Self::Xa => "xa",
            Self::Dnd => "dnd",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "chat" => Some(Self::Chat),
            "away" => Some(Self::Away),
            "xa" => Some(Self::Xa),
            "dnd" => Some(Self::Dnd),
            _ => None,
        }
    }
}

/// The availability part of one XMPP presence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmppPresence {
    /// No `type` (true) or `type='unavailable'` (false).
    pub available: bool,
    pub show: Option<Show>,
    pub status: Option<String>,
    pub priority: i8,
    /// `xml:lang` of the status (or of the stanza).
    pub lang: Option<String>,
    /// The resource of the sender (XMPP side) or the tuple's resource (SIP side).
    pub resource: Option<String>,
}

fn xml_lang(el: &Element) -> Option<&str> {
    el.attrs
        .iter()
        .find(|a| a.ns == NS_XML && a.name == "lang")
        .map(|a| a.value.as_str())
}

fn lang_attr(lang: &str) -> Attr {
    Attr {
        ns: NS_XML.to_owned(),
        name: "lang".to_owned(),
        value: lang.to_owned(),
    }
}

fn is_client_ns(ns: &str) -> bool {
    ns == NS_CONTENT || ns == NS_CLIENT || ns == NS_SERVER
}

/// Pick the text for `lang` among elements with `xml:lang`: an exact match, else one without
/// `xml:lang`, else the first. Returns the text and its language.
fn pick_lang<'a>(
    els: &[&'a Element],
    lang: Option<&str>,
    default_lang: Option<&'a str>,
) -> Option<(String, Option<String>)> {
    let chosen = els
        .iter()
        .find(|e| lang.is_some() && xml_lang(e).or(default_lang) == lang)
        .or_else(|| els.iter().find(|e| xml_lang(e).is_none()))
        .or_else(|| els.first())?;
    let text = chosen.text();
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some((
        text.to_owned(),
        xml_lang(chosen).or(default_lang).map(str::to_owned),
    ))
}

impl XmppPresence {
    /// An unavailable presence with nothing else set.
    pub fn unavailable() -> Self {
        Self::default()
    }

    /// Read an XMPP `<presence/>` stanza. Subscription types (`subscribe`, `probe`, …) and
    /// `error` are refused with [`PidfError::NotAvailability`]. An unparsable `<priority/>`
    /// counts as 0.
    pub fn from_element(el: &Element) -> Result<Self, PidfError> {
        let available = match el.attr("type") {
            None => true,
            Some("unavailable") => false,
            Some(t) => return Err(PidfError::NotAvailability(t.to_owned())),
        };
        let stanza_lang = xml_lang(el);
        let kids = |name: &str| -> Vec<&Element> {
            el.elements()
                .filter(|c| c.name == name && is_client_ns(&c.ns))
                .collect()
        };
        let show = kids("show").first().and_then(|s| Show::parse(&s.text()));
        let (status, lang) = match pick_lang(&kids("status"), stanza_lang, stanza_lang) {
            Some((t, l)) => (Some(t), l),
            None => (None, stanza_lang.map(str::to_owned)),
        };
        let priority = kids("priority")
            .first()
            .and_then(|p| p.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        let resource = el
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .and_then(|j| j.resource);
        Ok(Self {
            available,
            show: if available { show } else { None },
            status,
            priority,
            lang,
            resource,
        })
    }

    /// Build the XMPP `<presence/>` stanza (content namespace) from `from` to `to`.
    pub fn to_element(&self, from: &str, to: &str) -> Element {
        let mut el = Element::new("presence", NS_CONTENT)
            .with_attr("from", from)
            .with_attr("to", to);
        if !self.available {
            el.set_attr("type", "unavailable");
        }
        if let Some(l) = &self.lang {
            el.attrs.push(lang_attr(l));
        }
        if self.available
            && let Some(s) = self.show
        {
            el = el.with_child(Element::new("show", NS_CONTENT).with_text(s.as_str()));
        }
        if let Some(s) = &self.status {
            el = el.with_child(Element::new("status", NS_CONTENT).with_text(s));
        }
        if self.available && self.priority != 0 {
            el = el.with_child(
                Element::new("priority", NS_CONTENT).with_text(&self.priority.to_string()),
            );
        }
        el
    }
}

/// Tuple id for a resource: `ID-` plus the resource with every character other than ASCII
/// letters, digits, `.` and `-` written as `_HH` per UTF-8 byte; `ID` alone for no resource.
pub fn resource_tuple_id(resource: Option<&str>) -> String {
    let Some(r) = resource else {
        return "ID".to_owned();
    };
    let mut out = String::from(TUPLE_ID_PREFIX);
    for b in r.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The resource a tuple id made by [`resource_tuple_id`] names; `None` for other ids.
pub fn tuple_id_resource(id: &str) -> Option<String> {
    let enc = id.strip_prefix(TUPLE_ID_PREFIX)?;
    let b = enc.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// XMPP priority 0..127 as a PIDF qvalue (`0.000`..`1.000`); `None` for a negative priority,
/// which RFC 8048 §6 says is not mapped.
pub fn priority_to_q(priority: i8) -> Option<String> {
    (priority >= 0).then(|| format!("{:.3}", f64::from(priority) / 127.0))
}

/// A PIDF qvalue as XMPP priority (0..127); `None` when it is not a number in 0..1.
pub fn q_to_priority(q: &str) -> Option<i8> {
    let v: f64 = q.trim().parse().ok()?;
    if !(0.0..=1.0).contains(&v) {
        return None;
    }
    // In range by the check above: 0.0..=127.0.
    Some((v * 127.0).round() as i8)
}

/// The RPID activity we publish for a show (`None`: no activity element).
fn show_to_activity(show: Option<Show>) -> Option<&'static str> {
    match show? {
        Show::Dnd => Some("busy"),
        Show::Away | Show::Xa => Some("away"),
        Show::Chat => None,
    }
}

/// An RPID activity (RFC 4480 §3.2) as a show, for the activities that say something about
/// reachability.
pub fn activity_to_show(activity: &str) -> Option<Show> {
    match activity {
        "busy" | "on-the-phone" | "meeting" | "performance" | "presentation" | "worship" => {
            Some(Show::Dnd)
        }
        "away" | "appointment" | "breakfast" | "dinner" | "meal" | "shopping" | "travel"
        | "in-transit" | "steering" | "spectator" => Some(Show::Away),
        "vacation" | "holiday" | "sleeping" | "permanent-absence" => Some(Show::Xa),
        _ => None,
    }
}

/// A Microsoft availability number as (available, show) (ranges from the research note).
pub fn availability_to_presence(availability: u32) -> (bool, Option<Show>) {
    match availability {
        0..=4499 => (true, None),
        4500..=5999 => (true, Some(Show::Away)),
        6000..=11999 => (true, Some(Show::Dnd)),
        12000..=17999 => (true, Some(Show::Away)),
        _ => (false, None),
    }
}

/// The Microsoft availability number we publish for an XMPP presence: 3500 available, 6500
/// busy (`dnd`), 15500 away (`away`, `xa`), 18000 offline.
pub fn show_to_availability(available: bool, show: Option<Show>) -> u32 {
    if !available {
        return 18000;
    }
    match show {
        None | Some(Show::Chat) => 3500,
        Some(Show::Dnd) => 6500,
        Some(Show::Away | Show::Xa) => 15500,
    }
}

/// The PIDF document for `entity` (the presentity's SIP URI as text) with one tuple.
pub fn to_pidf(entity: &str, p: &XmppPresence) -> Vec<u8> {
    let mut status = Element::new("status", NS_PIDF).with_child(
        Element::new("basic", NS_PIDF).with_text(if p.available { "open" } else { "closed" }),
    );
    if p.available
        && let Some(s) = p.show
    {
        status = status.with_child(Element::new("show", NS_CLIENT).with_text(s.as_str()));
    }
    let mut tuple = Element::new("tuple", NS_PIDF)
        .with_attr("id", &resource_tuple_id(p.resource.as_deref()))
        .with_child(status);
    let mut contact = Element::new("contact", NS_PIDF).with_text(entity);
    if p.available
        && let Some(q) = priority_to_q(p.priority)
    {
        contact.set_attr("priority", &q);
    }
    tuple = tuple.with_child(contact);
    if let Some(s) = &p.status {
        let mut note = Element::new("note", NS_PIDF).with_text(s);
        if let Some(l) = &p.lang {
            note.attrs.push(lang_attr(l));
        }
        tuple = tuple.with_child(note);
    }
    let mut doc = Element::new("presence", NS_PIDF)
        .with_attr("entity", entity)
        .with_child(tuple);
    if p.available
        && let Some(a) = show_to_activity(p.show)
    {
        doc = doc.with_child(
            Element::new("person", NS_DATA_MODEL)
                .with_attr("id", "p1")
                .with_child(
                    Element::new("activities", NS_RPID).with_child(Element::new(a, NS_RPID)),
                ),
        );
    }
    let mut out = b"<?xml version='1.0' encoding='UTF-8'?>\n".to_vec();
    doc.write_to(&mut out);
    out
}

/// Every descendant of `el` (depth first, not `el` itself).
fn descendants(el: &Element) -> Vec<&Element> {
    let mut out = Vec::new();
    let mut stack: Vec<&Element> = el.elements().collect();
    stack.reverse();
    while let Some(e) = stack.pop() {
        out.push(e);
        let mut kids: Vec<&Element> = e.elements().collect();
        kids.reverse();
        stack.extend(kids);
    }
    out
}

/// Show and availability hints that apply to the whole document (person / device level).
struct DocHints {
    ms_availability: Option<u32>,
    rpid_show: Option<Show>,
}

fn doc_hints(root: &Element) -> DocHints {
    let all = descendants(root);
    let ms_availability = all
        .iter()
        .filter(|e| e.name == "availability")
        .find_map(|e| e.text().trim().parse::<u32>().ok());
    let mut rpid_show = None;
    for e in &all {
        if e.ns != NS_RPID {
            continue;
        }
        let s = match e.name.as_str() {
            "activities" => e.elements().find_map(|a| activity_to_show(&a.name)),
            "user-input" if e.text().trim() == "idle" => Some(Show::Away),
            _ => None,
        };
        // The least available hint wins: busy beats idle.
        rpid_show = match (rpid_show, s) {
            (Some(Show::Dnd), _) | (_, None) => rpid_show,
            _ => s,
        };
    }
    DocHints {
        ms_availability,
        rpid_show,
    }
}

/// Read a PIDF document into the most available of its tuples (see the module
/// documentation). A document without tuples is an unavailable presence (with the
/// presence-level note as status, if any).
pub fn from_pidf(bytes: &[u8]) -> Result<XmppPresence, PidfError> {
    let root = parse_xml_document(bytes)?;
    if !root.is("presence", NS_PIDF) {
        return Err(PidfError::NotPidf(root.name));
    }
    let hints = doc_hints(&root);
    let root_notes: Vec<&Element> = root.elements().filter(|e| e.is("note", NS_PIDF)).collect();
    let root_note = pick_lang(&root_notes, None, None);
    let mut tuples = Vec::new();
    for t in root.elements().filter(|e| e.is("tuple", NS_PIDF)) {
        let status = t.child("status", NS_PIDF);
        let basic = status
            .and_then(|s| s.child("basic", NS_PIDF))
            .map(|b| b.text().trim().to_ascii_lowercase());
        let mut available = basic.as_deref() == Some("open");
        let embedded = status.and_then(|s| {
            s.elements()
                .find(|e| e.name == "show" && is_client_ns(&e.ns))
                .and_then(|e| Show::parse(&e.text()))
        });
        let mut show = embedded;
        if let Some(a) = hints.ms_availability {
            let (avail, s) = availability_to_presence(a);
            if basic.is_none() || !avail {
                available = avail;
            }
            show = show.or(s);
        }
        show = show.or(hints.rpid_show);
        let notes: Vec<&Element> = t.elements().filter(|e| e.is("note", NS_PIDF)).collect();
        let (status_text, lang) = match pick_lang(&notes, None, None).or(root_note.clone()) {
            Some((n, l)) => (Some(n), l),
            None => (None, None),
        };
        let priority = t
            .child("contact", NS_PIDF)
            .and_then(|c| c.attr("priority"))
            .and_then(q_to_priority)
            .unwrap_or(0);
        tuples.push(XmppPresence {
            available,
            show: if available { show } else { None },
            status: status_text,
            priority,
            lang,
            resource: t.attr("id").and_then(tuple_id_resource),
        });
    }
    if tuples.is_empty() {
        let (status, lang) = match root_note {
            Some((n, l)) => (Some(n), l),
            None => (None, None),
        };
        let (available, show) = match hints.ms_availability {
            Some(a) => availability_to_presence(a),
            None => (false, None),
        };
        return Ok(XmppPresence {
            available,
            show: if available {
                show.or(hints.rpid_show)
            } else {
                None
            },
            status,
            lang,
            ..XmppPresence::default()
        });
    }
    let best = most_available(&tuples).cloned().unwrap_or_default();
    Ok(best)
}

/// Rank on the availability scale: chat > online (no show) > away > xa > dnd > unavailable.
/// `dnd` ranks below `xa` because it is the state in which a person asks not to be reached.
fn rank(p: &XmppPresence) -> u8 {
    if !p.available {
        return 0;
    }
    match p.show {
        Some(Show::Chat) => 5,
        None => 4,
        Some(Show::Away) => 3,
        Some(Show::Xa) => 2,
        Some(Show::Dnd) => 1,
    }
}

/// The most available of several presences (one per XMPP resource or PIDF tuple): highest
/// [`rank`]-ing show first, then the highest priority, then the first in the slice.
pub fn most_available(presences: &[XmppPresence]) -> Option<&XmppPresence> {
    let mut best: Option<&XmppPresence> = None;
    for p in presences {
        best = match best {
            Some(b) if (rank(b), b.priority) >= (rank(p), p.priority) => Some(b),
            _ => Some(p),
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pres(available: bool, show: Option<Show>, priority: i8) -> XmppPresence {
        XmppPresence {
            available,
            show,
            priority,
            ..XmppPresence::default()
        }
    }

    #[test]
    fn parse_document_strips_declaration_and_keeps_namespaces() {
        let doc = b"\xEF\xBB\xBF  <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:a@b'>\
            <tuple id='t1'><status><basic>open</basic></status></tuple></presence>\n";
        let root = parse_xml_document(doc).unwrap();
        assert!(root.is("presence", NS_PIDF));
        assert_eq!(root.attr("entity"), Some("sip:a@b"));
        let basic = root
            .child("tuple", NS_PIDF)
            .and_then(|t| t.child("status", NS_PIDF))
            .and_then(|s| s.child("basic", NS_PIDF))
            .unwrap();
        assert_eq!(basic.text(), "open");
    }

    #[test]
    fn parse_document_errors() {
        assert_eq!(parse_xml_document(b"  "), Err(PidfError::Empty));
        assert_eq!(
            parse_xml_document(b"<a/><b/>"),
            Err(PidfError::TrailingContent)
        );
        assert!(matches!(
            parse_xml_document(b"<a><b></a>"),
            Err(PidfError::Xml(_))
        ));
        assert!(matches!(parse_xml_document(b"<a>"), Err(PidfError::Xml(_))));
        assert!(matches!(
            parse_xml_document(b"<!DOCTYPE x><a/>"),
            Err(PidfError::Xml(XmlError::Restricted(_)))
        ));
        assert_eq!(parse_xml_document(b"<a>\xFF</a>"), Err(PidfError::NotUtf8));
        assert!(matches!(
            from_pidf(b"<html xmlns='http://www.w3.org/1999/xhtml'/>"),
            Err(PidfError::NotPidf(n)) if n == "html"
        ));
    }

    #[test]
    fn xmpp_presence_element_round_trip() {
        let el = Element::new("presence", NS_CONTENT)
            .with_attr("from", "juliet@example.test/balcony")
            .with_attr("to", "romeo@lync.test")
            .with_child(Element::new("show", NS_CONTENT).with_text("dnd"))
            .with_child(Element::new("status", NS_CONTENT).with_text("Im Meeting"))
            .with_child(Element::new("priority", NS_CONTENT).with_text("5"));
        let mut el = el;
        el.attrs.push(lang_attr("de"));
        let p = XmppPresence::from_element(&el).unwrap();
        assert_eq!(
            p,
            XmppPresence {
                available: true,
                show: Some(Show::Dnd),
                status: Some("Im Meeting".into()),
                priority: 5,
                lang: Some("de".into()),
                resource: Some("balcony".into()),
            }
        );
        let back = p.to_element("juliet@example.test/balcony", "romeo@lync.test");
        assert_eq!(XmppPresence::from_element(&back).unwrap(), p);
        assert_eq!(back.attr("type"), None);

        let off = XmppPresence::unavailable().to_element("a@x.test", "b@y.test");
        assert_eq!(off.attr("type"), Some("unavailable"));
        assert!(!XmppPresence::from_element(&off).unwrap().available);

        let sub = Element::new("presence", NS_CONTENT).with_attr("type", "subscribe");
        assert_eq!(
            XmppPresence::from_element(&sub),
            Err(PidfError::NotAvailability("subscribe".into()))
        );
    }

    #[test]
    fn status_picks_the_stanza_language() {
        let mut el = Element::new("presence", NS_CONTENT);
        el.attrs.push(lang_attr("en"));
        let mut fr = Element::new("status", NS_CONTENT).with_text("Parti");
        fr.attrs.push(lang_attr("fr"));
        el = el
            .with_child(fr)
            .with_child(Element::new("status", NS_CONTENT).with_text("Gone"));
        let p = XmppPresence::from_element(&el).unwrap();
        assert_eq!(p.status.as_deref(), Some("Gone"));
        assert_eq!(p.lang.as_deref(), Some("en"));
    }

    #[test]
    fn to_pidf_maps_every_field() {
        let p = XmppPresence {
            available: true,
            show: Some(Show::Dnd),
            status: Some("In a <meeting> & busy".into()),
            priority: 127,
            lang: Some("en".into()),
            resource: Some("1 phone/ü".into()),
        };
        let bytes = to_pidf("sip:juliet@example.test", &p);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("<?xml version='1.0' encoding='UTF-8'?>"));
        let root = parse_xml_document(&bytes).unwrap();
        assert_eq!(root.attr("entity"), Some("sip:juliet@example.test"));
        let t = root.child("tuple", NS_PIDF).unwrap();
        let id = t.attr("id").unwrap();
        assert_eq!(id, "ID-1_20phone_2F_C3_BC");
        assert_eq!(tuple_id_resource(id).as_deref(), Some("1 phone/ü"));
        let st = t.child("status", NS_PIDF).unwrap();
        assert_eq!(st.child("basic", NS_PIDF).unwrap().text(), "open");
        assert_eq!(st.child("show", NS_CLIENT).unwrap().text(), "dnd");
        let c = t.child("contact", NS_PIDF).unwrap();
        assert_eq!(c.attr("priority"), Some("1.000"));
        assert_eq!(c.text(), "sip:juliet@example.test");
        let note = t.child("note", NS_PIDF).unwrap();
        assert_eq!(note.text(), "In a <meeting> & busy");
        assert_eq!(xml_lang(note), Some("en"));
        let act = root
            .child("person", NS_DATA_MODEL)
            .and_then(|p| p.child("activities", NS_RPID))
            .unwrap();
        assert!(act.child("busy", NS_RPID).is_some());
        // And back.
        assert_eq!(from_pidf(&bytes).unwrap(), p);
    }

    #[test]
    fn unavailable_and_negative_priority() {
        let p = XmppPresence {
            available: false,
            status: Some("bye".into()),
            ..XmppPresence::default()
        };
        let bytes = to_pidf("sip:a@x.test", &p);
        let root = parse_xml_document(&bytes).unwrap();
        let t = root.child("tuple", NS_PIDF).unwrap();
        assert_eq!(t.attr("id"), Some("ID"));
        let st = t.child("status", NS_PIDF).unwrap();
        assert_eq!(st.child("basic", NS_PIDF).unwrap().text(), "closed");
        assert!(st.child("show", NS_CLIENT).is_none());
        assert!(root.child("person", NS_DATA_MODEL).is_none());
        assert_eq!(from_pidf(&bytes).unwrap(), p);

        let neg = to_pidf("sip:a@x.test", &pres(true, None, -1));
        let root = parse_xml_document(&neg).unwrap();
        let c = root
            .child("tuple", NS_PIDF)
            .and_then(|t| t.child("contact", NS_PIDF))
            .unwrap();
        assert_eq!(c.attr("priority"), None);
    }

    #[test]
    fn priority_scale() {
        assert_eq!(priority_to_q(0).as_deref(), Some("0.000"));
        assert_eq!(priority_to_q(127).as_deref(), Some("1.000"));
        assert_eq!(priority_to_q(-5), None);
        for p in 0..=127i8 {
            assert_eq!(q_to_priority(&priority_to_q(p).unwrap()), Some(p));
        }
        assert_eq!(q_to_priority("0.5"), Some(64));
        assert_eq!(q_to_priority("1.5"), None);
        assert_eq!(q_to_priority("-0.1"), None);
        assert_eq!(q_to_priority("x"), None);
    }

    #[test]
    fn show_round_trips_through_pidf() {
        for show in [
            None,
            Some(Show::Chat),
            Some(Show::Away),
            Some(Show::Xa),
            Some(Show::Dnd),
        ] {
            let p = pres(true, show, 0);
            let back = from_pidf(&to_pidf("sip:a@x.test", &p)).unwrap();
            assert_eq!(back.show, show);
            assert!(back.available);
        }
    }

    #[test]
    fn reads_plain_rpid_from_a_sip_client() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
  xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:bob@sip.test">
 <tuple id="sg89ae"><status><basic>open</basic></status>
  <contact priority="0.8">sip:bob@sip.test</contact>
  <note xml:lang="fr">Au téléphone</note><note>On the phone</note></tuple>
 <dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>"#
            .as_bytes();
        let p = from_pidf(doc).unwrap();
        assert!(p.available);
        assert_eq!(p.show, Some(Show::Dnd));
        assert_eq!(p.status.as_deref(), Some("On the phone"));
        assert_eq!(p.lang, None);
        assert_eq!(p.priority, 102);
        assert_eq!(p.resource, None, "foreign tuple ids are not resources");

        let idle = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:b@s.test">
 <tuple id="t"><status><basic>open</basic></status></tuple>
 <device xmlns="urn:ietf:params:xml:ns:pidf:data-model" id="d">
 <user-input xmlns="urn:ietf:params:xml:ns:pidf:rpid">idle</user-input></device></presence>"#;
        assert_eq!(from_pidf(idle).unwrap().show, Some(Show::Away));
    }

    #[test]
    fn reads_microsoft_availability() {
        let doc = |avail: u32| {
            format!(
                "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:bob@lync.test'>\
                 <tuple id='x'><status><basic>open</basic></status></tuple>\
                 <state xmlns='http://schemas.microsoft.com/2006/09/sip/state' \
                 type='aggregateState'><availability>{avail}</availability></state></presence>"
            )
        };
        for (avail, want_avail, want_show) in [
            (3500, true, None),
            (4500, true, Some(Show::Away)),
            (6500, true, Some(Show::Dnd)),
            (7500, true, Some(Show::Dnd)),
            (9000, true, Some(Show::Dnd)),
            (12000, true, Some(Show::Away)),
            (15500, true, Some(Show::Away)),
            (18000, false, None),
        ] {
            let p = from_pidf(doc(avail).as_bytes()).unwrap();
            assert_eq!((p.available, p.show), (want_avail, want_show), "{avail}");
        }
    }

    #[test]
    fn availability_ranges_and_back() {
        assert_eq!(availability_to_presence(0), (true, None));
        assert_eq!(availability_to_presence(4499), (true, None));
        assert_eq!(availability_to_presence(5999), (true, Some(Show::Away)));
        assert_eq!(availability_to_presence(6000), (true, Some(Show::Dnd)));
        assert_eq!(availability_to_presence(11999), (true, Some(Show::Dnd)));
        assert_eq!(availability_to_presence(14999), (true, Some(Show::Away)));
        assert_eq!(availability_to_presence(17999), (true, Some(Show::Away)));
        assert_eq!(availability_to_presence(u32::MAX), (false, None));
        for show in [
            None,
            Some(Show::Chat),
            Some(Show::Away),
            Some(Show::Xa),
            Some(Show::Dnd),
        ] {
            let (a, s) = availability_to_presence(show_to_availability(true, show));
            assert!(a);
            let want = match show {
                Some(Show::Chat) => None,
                Some(Show::Xa) => Some(Show::Away),
                s => s,
            };
            assert_eq!(s, want);
        }
        assert_eq!(show_to_availability(false, Some(Show::Chat)), 18000);
    }

    #[test]
    fn most_available_orders_by_show_then_priority() {
        assert_eq!(most_available(&[]), None);
        let set = [
            pres(false, None, 100),
            pres(true, Some(Show::Dnd), 50),
            pres(true, Some(Show::Away), 1),
            pres(true, Some(Show::Away), 10),
            pres(true, Some(Show::Xa), 60),
        ];
        assert_eq!(most_available(&set), Some(&set[3]));
        let set2 = [pres(true, None, 0), pres(true, Some(Show::Chat), -1)];
        assert_eq!(most_available(&set2), Some(&set2[1]));
        let set3 = [pres(true, Some(Show::Dnd), 0), pres(false, None, 0)];
        assert_eq!(most_available(&set3), Some(&set3[0]));
        let tie = [pres(true, None, 3), pres(true, None, 3)];
        assert!(std::ptr::eq(most_available(&tie).unwrap(), &tie[0]));
    }

    #[test]
    fn several_tuples_aggregate() {
        let doc = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:b@s.test">
 <tuple id="ID-phone"><status><basic>closed</basic></status></tuple>
 <tuple id="ID-desk"><status><basic>open</basic>
   <show xmlns="jabber:client">away</show></status><note>lunch</note></tuple>
 <note>presence-level note</note></presence>"#;
        let p = from_pidf(doc).unwrap();
        assert!(p.available);
        assert_eq!(p.show, Some(Show::Away));
        assert_eq!(p.resource.as_deref(), Some("desk"));
        assert_eq!(p.status.as_deref(), Some("lunch"));

        let none = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:b@s.test"><note>x</note></presence>"#;
        let p = from_pidf(none).unwrap();
        assert!(!p.available);
        assert_eq!(p.status.as_deref(), Some("x"));
    }

    #[test]
    fn tuple_ids() {
        assert_eq!(resource_tuple_id(None), "ID");
        assert_eq!(resource_tuple_id(Some("a.b-c")), "ID-a.b-c");
        assert_eq!(resource_tuple_id(Some("a_b")), "ID-a_5Fb");
        assert_eq!(tuple_id_resource("ID-a_5Fb").as_deref(), Some("a_b"));
        assert_eq!(tuple_id_resource("ID"), None);
        assert_eq!(tuple_id_resource("ID-"), None);
        assert_eq!(tuple_id_resource("ID-_Z"), None);
        assert_eq!(tuple_id_resource("ID-_FF"), None);
        assert_eq!(tuple_id_resource("sg89ae"), None);
    }
}
