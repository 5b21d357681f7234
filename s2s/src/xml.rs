//! Incremental, sans-IO XML stream parser for XMPP streams (RFC 6120 §4, §11).
//!
//! Feed it bytes as they arrive with [`StreamParser::feed`], then pull [`StreamEvent`]s with
//! [`StreamParser::next_event`]. It builds each top-level element (a stanza or a stream-level
//! element) completely before handing it out, and enforces limits while it reads: the size of one
//! top-level element, the nesting depth, the number of attributes. It refuses what RFC 6120 §11.1
//! forbids: comments, processing instructions (other than the XML declaration), DTDs and entity
//! references other than the five predefined ones and character references.

use std::collections::HashMap;

use crate::element::{
    Attr, Element, NS_CLIENT, NS_COMPONENT, NS_CONTENT, NS_SERVER, NS_STREAM, NS_XML, Node,
};

/// Limits of one stream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest top-level element (stanza) in bytes, as it appears on the wire.
    pub max_stanza_bytes: usize,
    /// Deepest nesting below the stream element.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attrs: 64,
        }
    }
}

/// The opening `<stream:stream>` tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace (`jabber:server`, `jabber:component:accept`, `jabber:client`).
    pub default_ns: String,
    /// Whether `xmlns:db='jabber:server:dialback'` was declared (XEP-0220 §2.1).
    pub declares_dialback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Open(StreamHeader),
    /// A complete top-level element and the number of bytes it took on the wire.
    Element(Element, usize),
    Close,
}

/// Why the parser stopped. Each maps to a stream error condition (RFC 6120 §4.9.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    #[error("stanza larger than {0} bytes")]
    StanzaTooBig(usize),
    #[error("elements nested deeper than {0}")]
    TooDeep(usize),
    #[error("more than {0} attributes on one element")]
    TooManyAttrs(usize),
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    #[error("bad stream header: {0}")]
    BadHeader(String),
}

impl XmlError {
    /// The RFC 6120 stream error condition for this failure.
    pub fn condition(&self) -> &'static str {
        match self {
            Self::NotWellFormed(_) => "not-well-formed",
            Self::Restricted(_) => "restricted-xml",
            Self::StanzaTooBig(_) | Self::TooDeep(_) | Self::TooManyAttrs(_) => "policy-violation",
            Self::InvalidNamespace(_) => "invalid-namespace",
            Self::BadHeader(_) => "bad-format",
        }
    }
}

/// One open element under construction, with the namespace declarations it made.
struct Open {
    el: Element,
    /// The prefixed name as written, when it differs from `el.name`.
    qname: Option<String>,
    scope: Vec<(String, Option<String>)>,
}

pub struct StreamParser {
    limits: Limits,
    buf: Vec<u8>,
    pos: usize,
    /// Prefix → namespace (`""` is the default namespace); shadowed values are restored from
    /// each element's saved scope when it closes.
    ns: HashMap<String, String>,
    stack: Vec<Open>,
    stream_open: bool,
    closed: bool,
    /// The stream's default namespace, mapped to [`NS_CONTENT`].
    content_ns: String,
    /// Offset in `buf` where the current top-level element started (may be negative relative
    /// to the buffer once consumed bytes were dropped: kept as an absolute offset).
    el_start_abs: u64,
    /// Bytes dropped from the front of `buf` so far (absolute offset of `buf[0]`).
    dropped: u64,
    elements: u64,
    bytes: u64,
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            pos: 0,
            ns: HashMap::new(),
            stack: Vec::new(),
            stream_open: false,
            closed: false,
            content_ns: String::new(),
            el_start_abs: 0,
            dropped: 0,
            elements: 0,
            bytes: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Forget everything: used after STARTTLS and SASL success, when a new stream begins.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.ns.clear();
        self.stack = Vec::new();
        self.stream_open = false;
        self.closed = false;
        self.content_ns.clear();
        self.el_start_abs = 0;
        self.dropped = 0;
    }

    fn abs_pos(&self) -> u64 {
        self.dropped + self.pos as u64
    }

    /// Bytes read that are not yet parsed.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Total bytes fed since creation (not reset by [`Self::reset`]).
    pub fn bytes_total(&self) -> u64 {
        self.bytes
    }

    /// Total top-level elements parsed since creation.
    pub fn elements_total(&self) -> u64 {
        self.elements
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.dropped += self.pos as u64;
            self.buf.clear();
            self.pos = 0;
        }
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
    }

    /// Read straight into the parser (no intermediate buffer): drops the consumed prefix and
    /// returns the input buffer with at least `want` bytes of spare capacity. Append the bytes
    /// read to it (e.g. `AsyncReadExt::read_buf`, which only extends it once a read
    /// completed, so a cancelled read leaves the parser as it was), then call
    /// [`Self::commit_read`] with their number. Equivalent to [`Self::feed`].
    pub fn read_buf(&mut self, want: usize) -> &mut Vec<u8> {
        if self.pos > 0 {
            if self.pos == self.buf.len() {
                self.buf.clear();
            } else {
                self.buf.drain(..self.pos);
            }
            self.dropped += self.pos as u64;
            self.pos = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 2 * want {
            // Traffic slowed down: give back the large buffer of a burst.
            self.buf = Vec::with_capacity(want);
        } else {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// Account for `n` bytes appended to the buffer returned by [`Self::read_buf`].
    pub fn commit_read(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// Give back idle memory: the input buffer when everything in it was parsed, and the
    /// element stack when no element is open.
    pub fn shrink(&mut self) {
        if self.pos == self.buf.len() {
            self.dropped += self.pos as u64;
            self.buf = Vec::new();
            self.pos = 0;
        }
        if self.stack.is_empty() {
            self.stack = Vec::new();
        }
    }

    /// Next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            if !self.stack.is_empty() {
                let size = (self.abs_pos() - self.el_start_abs) as usize + self.buffered();
                if size > self.limits.max_stanza_bytes {
                    return Err(XmlError::StanzaTooBig(self.limits.max_stanza_bytes));
                }
            }
            let Some(ev) = self.step()? else {
                self.compact();
                return Ok(None);
            };
            if let Some(ev) = ev {
                return Ok(Some(ev));
            }
        }
    }

    fn compact(&mut self) {
        // Text and tags already consumed live in the element tree: the buffer keeps only the
        // unparsed tail.
        let keep_from = self.pos;
        if keep_from > 4096 && keep_from * 2 > self.buf.len() {
            self.buf.drain(..keep_from);
            self.pos = 0;
            self.dropped += keep_from as u64;
        }
    }

    /// One token. `Ok(None)`: incomplete; `Ok(Some(None))`: consumed, no event yet.
    #[allow(clippy::option_option)] // incomplete vs. consumed-without-event
    fn step(&mut self) -> Result<Option<Option<StreamEvent>>, XmlError> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest[0] != b'<' {
            let end = find_byte(rest, b'<');
            let Some(end) = end else {
                // Whitespace between stanzas may be consumed at once (keepalives).
                if self.stack.is_empty() {
                    if rest.iter().all(u8::is_ascii_whitespace) {
                        self.pos = self.buf.len();
                        return Ok(Some(None));
                    }
                    return Err(XmlError::NotWellFormed("text outside of stanzas".into()));
                }
                if self.buffered() > self.limits.max_stanza_bytes {
                    return Err(XmlError::StanzaTooBig(self.limits.max_stanza_bytes));
                }
                return Ok(None);
            };
            let raw = &rest[..end];
            if self.stack.is_empty() {
                if !raw.iter().all(u8::is_ascii_whitespace) {
                    return Err(XmlError::NotWellFormed("text outside of stanzas".into()));
                }
            } else {
                let text = unescape(raw)?;
                if let Some(top) = self.stack.last_mut() {
                    match top.el.children.last_mut() {
                        Some(Node::Text(t)) => t.push_str(&text),
                        _ => top.el.children.push(Node::Text(text)),
                    }
                }
            }
            self.pos += end;
            return Ok(Some(None));
        }
        if rest.len() < 2 {
            return Ok(None);
        }
        match rest[1] {
            b'?' => {
                let Some(end) = find(rest, b"?>") else {
                    return self.incomplete(rest.len());
                };
                if self.stream_open || !rest.starts_with(b"<?xml ") && !rest.starts_with(b"<?xml?")
                {
                    return Err(XmlError::Restricted("processing instructions"));
                }
                self.pos += end + 2;
                Ok(Some(None))
            }
            b'!' => {
                if rest.len() < 9 {
                    return if b"<![CDATA[".starts_with(&rest[..rest.len().min(9)])
                        || b"<!--".starts_with(&rest[..rest.len().min(4)])
                    {
                        if rest.starts_with(b"<!--") {
                            Err(XmlError::Restricted("comments"))
                        } else {
                            Ok(None)
                        }
                    } else {
                        Err(XmlError::Restricted("DTDs"))
                    };
                }
                if rest.starts_with(b"<!--") {
                    return Err(XmlError::Restricted("comments"));
                }
                if !rest.starts_with(b"<![CDATA[") {
                    return Err(XmlError::Restricted("DTDs"));
                }
                if self.stack.is_empty() {
                    return Err(XmlError::NotWellFormed("CDATA outside of stanzas".into()));
                }
                let Some(end) = find(&rest[9..], b"]]>") else {
                    return self.incomplete(rest.len());
                };
                let text = std::str::from_utf8(&rest[9..9 + end])
                    .map_err(|_| XmlError::NotWellFormed("invalid UTF-8".into()))?
                    .to_owned();
                if let Some(top) = self.stack.last_mut() {
                    top.el.children.push(Node::Text(text));
                }
                self.pos += 9 + end + 3;
                Ok(Some(None))
            }
            b'/' => {
                let Some(end) = find_byte(rest, b'>') else {
                    return self.incomplete(rest.len());
                };
                let raw = &rest[2..end];
                // Fast path: the end tag names the open element exactly (its last byte is
                // ASCII, so trimming below would not change it either).
                if let Some(top) = self.stack.last()
                    && raw
                        .last()
                        .is_some_and(|b| !b.is_ascii_whitespace() && b.is_ascii())
                    && top.qname.as_deref().unwrap_or(&top.el.name).as_bytes() == raw
                {
                    self.pos += end + 1;
                    let open = self.stack.pop().expect("checked above");
                    self.unwind(open.scope);
                    return Ok(Some(self.finish(open.el)));
                }
                let name = std::str::from_utf8(&rest[2..end])
                    .map_err(|_| XmlError::NotWellFormed("invalid UTF-8".into()))?
                    .trim_end()
                    .to_owned();
                self.pos += end + 1;
                self.end_tag(&name).map(Some)
            }
            _ => {
                let Some((tag, len)) = parse_tag(rest)? else {
                    return self.incomplete(rest.len());
                };
                if self.stack.is_empty() && self.stream_open {
                    self.el_start_abs = self.abs_pos();
                }
                self.pos += len;
                self.start_tag(tag).map(Some)
            }
        }
    }

    fn incomplete<T>(&self, have: usize) -> Result<Option<T>, XmlError> {
        if have > self.limits.max_stanza_bytes {
            return Err(XmlError::StanzaTooBig(self.limits.max_stanza_bytes));
        }
        Ok(None)
    }

    fn start_tag(&mut self, tag: RawTag) -> Result<Option<StreamEvent>, XmlError> {
        if tag.attrs.len() > self.limits.max_attrs {
            return Err(XmlError::TooManyAttrs(self.limits.max_attrs));
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(XmlError::TooDeep(self.limits.max_depth));
        }
        let top_level = self.stack.is_empty();
        // Namespace declarations first.
        let mut scope = Vec::new();
        let mut plain = Vec::with_capacity(tag.attrs.len());
        for (k, v) in tag.attrs {
            if k == "xmlns" {
                let v = if !self.stream_open {
                    v
                } else if top_level && (v == NS_SERVER || v == NS_CLIENT || v == NS_COMPONENT)
                    || v == self.content_ns
                        && self.stack.last().is_none_or(|o| o.el.ns == NS_CONTENT)
                {
                    NS_CONTENT.to_owned()
                } else {
                    v
                };
                scope.push((String::new(), self.ns.insert(String::new(), v)));
            } else if let Some(p) = k.strip_prefix("xmlns:") {
                if v.is_empty() {
                    return Err(XmlError::InvalidNamespace(format!("empty xmlns:{p}")));
                }
                scope.push((p.to_owned(), self.ns.insert(p.to_owned(), v)));
            } else {
                plain.push((k, v));
            }
        }
        let (prefix, local) = split_qname(&tag.name);
        let ns = self.resolve(prefix)?.to_owned();
        let mut attrs = Vec::with_capacity(plain.len());
        for (k, value) in plain {
            let (p, name) = split_qname(&k);
            let ans = match p {
                None => String::new(),
                Some("xml") => NS_XML.to_owned(),
                Some(p) => self.resolve(Some(p))?.to_owned(),
            };
            if attrs.iter().any(|a: &Attr| a.name == name && a.ns == ans) {
                return Err(XmlError::NotWellFormed(format!("duplicate attribute {k}")));
            }
            let name = match p {
                None => k,
                Some(_) => name.to_owned(),
            };
            attrs.push(Attr {
                ns: ans,
                name,
                value,
            });
        }

        if !self.stream_open {
            // RFC 6120 §4.9.3.10: a stream element in another namespace is invalid-namespace;
            // anything else where the stream header belongs is bad-format.
            if local == "stream" && ns != NS_STREAM {
                return Err(XmlError::InvalidNamespace(format!(
                    "the stream element must be in {NS_STREAM}, not '{ns}'"
                )));
            }
            if local != "stream" || ns != NS_STREAM {
                return Err(XmlError::BadHeader(format!(
                    "expected <stream:stream xmlns:stream='{NS_STREAM}'>, got <{}>",
                    tag.name
                )));
            }
            if tag.self_closing {
                return Err(XmlError::BadHeader("self-closing stream header".into()));
            }
            let get = |n: &str| {
                attrs
                    .iter()
                    .find(|a| a.ns.is_empty() && a.name == n)
                    .map(|a| a.value.clone())
            };
            let default_ns = self.ns.get("").cloned().unwrap_or_default();
            let header = StreamHeader {
                to: get("to"),
                from: get("from"),
                id: get("id"),
                version: get("version"),
                lang: attrs
                    .iter()
                    .find(|a| a.ns == NS_XML && a.name == "lang")
                    .map(|a| a.value.clone()),
                declares_dialback: self.ns.values().any(|v| v == crate::element::NS_DIALBACK),
                default_ns: default_ns.clone(),
            };
            // Stanzas in the stream's default namespace get the canonical content namespace.
            self.content_ns = default_ns;
            self.ns.insert(String::new(), NS_CONTENT.to_owned());
            self.stream_open = true;
            return Ok(Some(StreamEvent::Open(header)));
        }

        let prefixed = prefix.is_some();
        let local = prefixed.then(|| local.to_owned());
        let (name, qname) = match local {
            Some(l) => (l, Some(tag.name)),
            None => (tag.name, None),
        };
        let el = Element {
            name,
            ns,
            attrs,
            children: Vec::new(),
        };
        if tag.self_closing {
            self.unwind(scope);
            return Ok(self.finish(el));
        }
        self.stack.push(Open { el, qname, scope });
        Ok(None)
    }

    fn end_tag(&mut self, name: &str) -> Result<Option<StreamEvent>, XmlError> {
        let Some(open) = self.stack.pop() else {
            if self.stream_open && split_qname(name).1 == "stream" {
                self.closed = true;
                return Ok(Some(StreamEvent::Close));
            }
            return Err(XmlError::NotWellFormed(format!("unexpected </{name}>")));
        };
        let qname = open.qname.as_deref().unwrap_or(&open.el.name);
        if qname != name {
            return Err(XmlError::NotWellFormed(format!(
                "</{name}> closes <{qname}>"
            )));
        }
        self.unwind(open.scope);
        Ok(self.finish(open.el))
    }

    fn finish(&mut self, el: Element) -> Option<StreamEvent> {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.el.children.push(Node::Element(el));
                None
            }
            None => {
                self.elements += 1;
                Some(StreamEvent::Element(
                    el,
                    (self.abs_pos() - self.el_start_abs) as usize,
                ))
            }
        }
    }

    fn unwind(&mut self, scope: Vec<(String, Option<String>)>) {
        for (prefix, old) in scope.into_iter().rev() {
            match old {
                Some(v) => self.ns.insert(prefix, v),
                None => self.ns.remove(&prefix),
            };
        }
    }

    fn resolve(&self, prefix: Option<&str>) -> Result<&str, XmlError> {
        let key = prefix.unwrap_or("");
        match self.ns.get(key) {
            Some(v) => Ok(v),
            None if prefix.is_none() => Ok(""),
            None => Err(XmlError::InvalidNamespace(format!(
                "undeclared prefix {key}"
            ))),
        }
    }
}

fn split_qname(q: &str) -> (Option<&str>, &str) {
    match q.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, q),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct RawTag {
    name: String,
    attrs: Vec<(String, String)>,
    self_closing: bool,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.') || b >= 0x80
}

/// Parse `<name a='v' ...>` at the start of `s`. `Ok(None)` when incomplete.
fn parse_tag(s: &[u8]) -> Result<Option<(RawTag, usize)>, XmlError> {
    let bad = |m: &str| XmlError::NotWellFormed(m.to_owned());
    let mut i = 1;
    let start = i;
    while i < s.len() && is_name_byte(s[i]) {
        i += 1;
    }
    if i == s.len() {
        return Ok(None);
    }
    if i == start || s[start].is_ascii_digit() || matches!(s[start], b'-' | b'.' | b':') {
        return Err(bad("invalid element name"));
    }
    let name = utf8(&s[start..i])?;
    let mut attrs = Vec::new();
    loop {
        let ws_start = i;
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == s.len() {
            return Ok(None);
        }
        match s[i] {
            b'>' => {
                return Ok(Some((
                    RawTag {
                        name,
                        attrs,
                        self_closing: false,
                    },
                    i + 1,
                )));
            }
            b'/' => {
                if i + 1 == s.len() {
                    return Ok(None);
                }
                if s[i + 1] != b'>' {
                    return Err(bad("expected '>' after '/'"));
                }
                return Ok(Some((
                    RawTag {
                        name,
                        attrs,
                        self_closing: true,
                    },
                    i + 2,
                )));
            }
            _ => {}
        }
        if ws_start == i {
            return Err(bad("expected whitespace between attributes"));
        }
        let an_start = i;
        while i < s.len() && is_name_byte(s[i]) {
            i += 1;
        }
        if i == s.len() {
            return Ok(None);
        }
        if an_start == i {
            return Err(bad("invalid attribute name"));
        }
        let an = utf8(&s[an_start..i])?;
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == s.len() {
            return Ok(None);
        }
        if s[i] != b'=' {
            return Err(bad("expected '=' after attribute name"));
        }
        i += 1;
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == s.len() {
            return Ok(None);
        }
        let q = s[i];
        if q != b'\'' && q != b'"' {
            return Err(bad("attribute value must be quoted"));
        }
        i += 1;
        let v_start = i;
        while i < s.len() && s[i] != q {
            if s[i] == b'<' {
                return Err(bad("'<' in attribute value"));
            }
            i += 1;
        }
        if i == s.len() {
            return Ok(None);
        }
        let value = unescape(&s[v_start..i])?;
        i += 1;
        attrs.push((an, value));
    }
}

fn utf8(b: &[u8]) -> Result<String, XmlError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| XmlError::NotWellFormed("invalid UTF-8".into()))
}

/// Resolve the predefined entities and character references.
fn unescape(raw: &[u8]) -> Result<String, XmlError> {
    let s =
        std::str::from_utf8(raw).map_err(|_| XmlError::NotWellFormed("invalid UTF-8".into()))?;
    if !s.contains('&') {
        if has_forbidden(s) {
            return Err(XmlError::NotWellFormed("invalid XML character".into()));
        }
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .filter(|&n| n <= 10)
            .ok_or_else(|| XmlError::NotWellFormed("unterminated entity reference".into()))?;
        let ent = &after[..semi];
        let c = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse::<u32>().ok()
                } else {
                    return Err(XmlError::Restricted("entity references"));
                };
                code.and_then(char::from_u32)
                    .filter(|c| !is_forbidden_char(*c))
                    .ok_or_else(|| {
                        XmlError::NotWellFormed(format!("bad character reference &{ent};"))
                    })?
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    if has_forbidden(&out) {
        return Err(XmlError::NotWellFormed("invalid XML character".into()));
    }
    Ok(out)
}

/// Whether `s` holds a character XML forbids. Bytes first (a loop without early exit, which
/// the compiler vectorizes): only control bytes and 0xEF (the lead byte of U+FFFE/U+FFFF)
/// can start one.
fn has_forbidden(s: &str) -> bool {
    let candidate = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') | (b == 0xEF)
    });
    candidate && s.contains(is_forbidden_char)
}

/// Position of the first `needle` in `hay`, eight bytes at a time.
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut i = 0;
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().expect("8 bytes")) ^ pattern;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            // The lowest flagged byte is always a real match.
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|p| i + p)
}

fn is_forbidden_char(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::{NS_DIALBACK, NS_TLS};

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        to='a.test' from='b.test' version='1.0' xml:lang='en'>";

    fn all(p: &mut StreamParser) -> Result<Vec<StreamEvent>, XmlError> {
        let mut v = Vec::new();
        while let Some(e) = p.next_event()? {
            v.push(e);
        }
        Ok(v)
    }

    fn open(p: &mut StreamParser) -> StreamHeader {
        p.feed(HDR.as_bytes());
        match all(p).unwrap().pop() {
            Some(StreamEvent::Open(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_and_stanza_byte_by_byte() {
        let input = format!(
            "{HDR}<message to='x@a.test' from='y@b.test'><body>a &amp; b &#x263A;</body>\
             <x xmlns='urn:x'><y/></x></message> <db:result to='a.test' from='b.test'>k</db:result>\
             <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>"
        );
        let mut p = StreamParser::new(Limits::default());
        let mut ev = Vec::new();
        for b in input.as_bytes() {
            p.feed(std::slice::from_ref(b));
            ev.extend(all(&mut p).unwrap());
        }
        assert_eq!(ev.len(), 5, "{ev:?}");
        let StreamEvent::Open(h) = &ev[0] else {
            panic!()
        };
        assert_eq!(h.to.as_deref(), Some("a.test"));
        assert_eq!(h.from.as_deref(), Some("b.test"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        assert_eq!(h.default_ns, "jabber:server");
        assert!(h.declares_dialback);
        let StreamEvent::Element(m, n) = &ev[1] else {
            panic!()
        };
        assert!(m.is("message", NS_CONTENT));
        assert_eq!(
            m.child("body", NS_CONTENT).unwrap().text(),
            "a & b \u{263A}"
        );
        assert!(m.child("x", "urn:x").unwrap().child("y", "urn:x").is_some());
        assert_eq!(*n, 105);
        let StreamEvent::Element(db, _) = &ev[2] else {
            panic!()
        };
        assert!(db.is("result", NS_DIALBACK));
        assert_eq!(db.text(), "k");
        let StreamEvent::Element(st, _) = &ev[3] else {
            panic!()
        };
        assert!(st.is("starttls", NS_TLS));
        assert_eq!(ev[4], StreamEvent::Close);
        // Re-serialised stanza keeps its meaning.
        assert_eq!(
            String::from_utf8(m.to_bytes()).unwrap(),
            "<message to='x@a.test' from='y@b.test'><body>a &amp; b \u{263A}</body>\
             <x xmlns='urn:x'><y/></x></message>"
        );
    }

    #[test]
    fn explicit_content_namespaces_become_canonical() {
        let mut p = StreamParser::new(Limits::default());
        p.feed(
            b"<stream:stream xmlns='jabber:component:accept' \
              xmlns:stream='http://etherx.jabber.org/streams' to='c.test'>\
              <message xmlns='jabber:client' to='a@b'><body>x</body></message>\
              <iq type='get'><q xmlns='urn:q'><message xmlns='jabber:client'/></q></iq>",
        );
        let ev = all(&mut p).unwrap();
        let StreamEvent::Element(m, _) = &ev[1] else {
            panic!()
        };
        assert!(m.is("message", NS_CONTENT));
        assert!(m.child("body", NS_CONTENT).is_some());
        let StreamEvent::Element(iq, _) = &ev[2] else {
            panic!()
        };
        assert!(iq.is("iq", NS_CONTENT));
        // Nested under a foreign namespace, jabber:client stays what it is.
        let q = iq.child("q", "urn:q").unwrap();
        assert!(q.child("message", NS_CLIENT).is_some());
    }

    #[test]
    fn limits_and_restrictions() {
        let mut p = StreamParser::new(Limits {
            max_stanza_bytes: 100,
            ..Limits::default()
        });
        open(&mut p);
        p.feed(format!("<message><body>{}</body></message>", "x".repeat(200)).as_bytes());
        assert_eq!(all(&mut p), Err(XmlError::StanzaTooBig(100)));

        // Too big even when it arrives in small pieces, before the end of the stanza.
        let mut p = StreamParser::new(Limits {
            max_stanza_bytes: 100,
            ..Limits::default()
        });
        open(&mut p);
        p.feed(b"<message><body>");
        assert_eq!(all(&mut p), Ok(vec![]));
        let mut failed = false;
        for _ in 0..20 {
            p.feed(b"xxxxxxxxxx");
            if all(&mut p).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);

        let mut p = StreamParser::new(Limits {
            max_depth: 3,
            ..Limits::default()
        });
        open(&mut p);
        p.feed(b"<a><b><c><d/></c></b></a>");
        assert_eq!(all(&mut p), Err(XmlError::TooDeep(3)));

        for (bad, cond) in [
            (&b"<!-- hi -->"[..], "restricted-xml"),
            (b"<!DOCTYPE x [<!ENTITY a 'b'>]>", "restricted-xml"),
            (b"<message>&xxe;</message>", "restricted-xml"),
            (b"<?php x ?>", "restricted-xml"),
            (b"<message></iq>", "not-well-formed"),
            (b"<message a='1' a='2'/>", "not-well-formed"),
            (b"<p:message/>", "invalid-namespace"),
            (b"hello", "not-well-formed"),
            (b"<message>\x01</message>", "not-well-formed"),
            (b"<message a=1/>", "not-well-formed"),
        ] {
            let mut p = StreamParser::new(Limits::default());
            open(&mut p);
            p.feed(bad);
            let err = all(&mut p).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(err.condition(), cond, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bad_headers() {
        let mut p = StreamParser::new(Limits::default());
        p.feed(b"<message/>");
        assert!(matches!(all(&mut p), Err(XmlError::BadHeader(_))));
        let mut p = StreamParser::new(Limits::default());
        // RFC 6120 §4.9.3.10: the wrong streams namespace is invalid-namespace.
        p.feed(b"<stream:stream xmlns:stream='urn:wrong'>");
        let err = all(&mut p).unwrap_err();
        assert!(matches!(err, XmlError::InvalidNamespace(_)), "{err:?}");
        assert_eq!(err.condition(), "invalid-namespace");
    }

    #[test]
    fn reset_starts_a_new_stream_and_whitespace_is_ignored() {
        let mut p = StreamParser::new(Limits::default());
        open(&mut p);
        p.feed(b" \n ");
        assert_eq!(all(&mut p), Ok(vec![]));
        p.reset();
        let h = open(&mut p);
        assert_eq!(h.to.as_deref(), Some("a.test"));
    }

    #[test]
    fn read_buf_is_feed() {
        let input = format!(
            "{HDR}<message to='x@a.test'><body>a &amp; b</body></message> \
             <iq type='get' id='1'><q xmlns='urn:q'/></iq></stream:stream>"
        );
        let mut fed = StreamParser::new(Limits::default());
        fed.feed(input.as_bytes());
        let want = all(&mut fed).unwrap();
        for chunk in [1, 7, 64, 4096] {
            let mut p = StreamParser::new(Limits::default());
            let mut got = Vec::new();
            for piece in input.as_bytes().chunks(chunk) {
                let buf = p.read_buf(chunk);
                assert!(buf.capacity() - buf.len() >= chunk);
                buf.extend_from_slice(piece);
                p.commit_read(piece.len());
                got.extend(all(&mut p).unwrap());
                p.shrink();
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert_eq!(p.bytes_total(), input.len() as u64);
        }
    }

    #[test]
    fn byte_search_and_forbidden_scan_match_the_simple_versions() {
        let hay: Vec<u8> = (0..64u8).map(|i| b'a' + i % 26).collect();
        for len in 0..hay.len() {
            for at in 0..len {
                let mut h = hay[..len].to_vec();
                h[at] = b'<';
                assert_eq!(find_byte(&h, b'<'), h.iter().position(|&b| b == b'<'));
                h[len - 1] = b'<';
                assert_eq!(find_byte(&h, b'<'), Some(at));
            }
            assert_eq!(find_byte(&hay[..len], b'<'), None);
        }
        assert_eq!(find_byte(&[0x3C ^ 0x01, b'<'], b'<'), Some(1));
        for t in [
            "plain text",
            "tab\tnl\ncr\r",
            "a\u{1}b",
            "\u{FFFE}",
            "x\u{FFFF}",
            "\u{FFFD}\u{EFFF}é",
        ] {
            assert_eq!(has_forbidden(t), t.contains(is_forbidden_char), "{t:?}");
        }
    }

    #[test]
    fn cdata_is_text() {
        let mut p = StreamParser::new(Limits::default());
        open(&mut p);
        p.feed(b"<message><body><![CDATA[<b>&]]></body></message>");
        let ev = all(&mut p).unwrap();
        let StreamEvent::Element(m, _) = &ev[0] else {
            panic!()
        };
        assert_eq!(m.child("body", NS_CONTENT).unwrap().text(), "<b>&");
    }
}
