//! SIP message codec for stream transports (RFC 3261 §7, §18.3; TLS only).
//!
//! [`SipMessage`] keeps every header as written: [`SipMessage::to_bytes`] reproduces header
//! names, their order and their values byte for byte (Microsoft `ms-*` headers and parameters
//! included), with two documented normalisations:
//!
//! * the separator between a header name and its value is written as `": "` (the value is stored
//!   without the surrounding whitespace, RFC 3261 §7.3.1);
//! * `Content-Length` is always written from the body length, at the position (and with the
//!   name, e.g. compact `l`) of the first `Content-Length` header, or appended at the end.
//!   Duplicate `Content-Length` headers are dropped.
//!
//! Header folding: a line that starts with SP or HTAB continues the previous header (RFC 3261
//! §7.3.1, `LWS = [*WSP CRLF] 1*WSP`). The line break and the whitespace around it are
//! replaced by a single SP, which the RFC defines as equivalent; a folded message is therefore
//! written back unfolded.
//!
//! The parser is strict where laxness would be ambiguous: header lines end with CRLF (a bare CR
//! or LF in the header section is an error), the header section is UTF-8, and a stream message
//! must carry `Content-Length` (RFC 3261 §18.3). [`Framer`] cuts a byte stream into messages
//! and RFC 5626 §4.4.1 keep-alives.

use std::fmt::Write as _;

use crate::hdr::{HdrError, NameAddr};

/// The only SIP version we speak.
pub const SIP_VERSION: &str = "SIP/2.0";

/// One header line: `name` as written (case and compact form kept), `value` without the
/// whitespace around it (folded lines joined by one SP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name as written on the wire.
    pub name: String,
    /// Header value, trimmed.
    pub value: String,
}

impl Header {
    /// A header from its name and value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Whether this header is `name` (case-insensitive, compact forms understood).
    pub fn is(&self, name: &str) -> bool {
        same_header(&self.name, name)
    }
}

/// Request line or status line (the version is always `SIP/2.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`
    Request {
        /// Method token, case kept (SIP methods are case-sensitive).
        method: String,
        /// Request-URI as written.
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code, 100..=699.
        code: u16,
        /// Reason phrase (may be empty or contain spaces).
        reason: String,
    },
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    /// Request or status line.
    pub start: StartLine,
    /// Headers in wire order.
    pub headers: Vec<Header>,
    /// Body bytes (exactly `Content-Length` of them).
    pub body: Vec<u8>,
}

/// Why bytes could not be read as SIP. The `Display` text is safe to use as a `400` reason
/// phrase or a log line: quoted input is truncated and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The header section exceeds [`Limits::max_header_bytes`].
    #[error("header section larger than {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More header lines than [`Limits::max_headers`].
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The limit in header fields.
        limit: usize,
    },
    /// `Content-Length` exceeds [`Limits::max_body_bytes`].
    #[error("body of {length} bytes exceeds the limit of {limit}")]
    BodyTooLarge {
        /// Declared body length.
        length: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// No `Content-Length` on a stream transport (RFC 3261 §18.3).
    #[error("missing Content-Length header")]
    MissingContentLength,
    /// `Content-Length` is not a decimal number.
    #[error("invalid Content-Length {0:?}")]
    InvalidContentLength(String),
    /// Several `Content-Length` headers that disagree.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
    /// The start line is neither a request line nor a status line.
    #[error("malformed start line {0:?}")]
    BadStartLine(String),
    /// A version other than `SIP/2.0`.
    #[error("unsupported SIP version {0:?}")]
    UnsupportedVersion(String),
    /// A status code outside 100..=699 or not three digits.
    #[error("invalid status code {0:?}")]
    BadStatusCode(String),
    /// A header line without a colon, or a continuation line before the first header.
    #[error("malformed header line {line}: {reason}")]
    BadHeaderLine {
        /// 1-based line number in the message (the start line is line 1).
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header name with characters outside `token`.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// The start line or a header is not UTF-8.
    #[error("header section is not valid UTF-8")]
    NotUtf8,
    /// A CR or LF that is not part of a CRLF in the header section.
    #[error("bare CR or LF in the header section")]
    BareLineEnding,
    /// A control character in the start line or a header value.
    #[error("control character in line {line}")]
    ControlCharacter {
        /// 1-based line number.
        line: usize,
    },
    /// [`SipMessage::parse`]: the bytes end before the message does.
    #[error("message is incomplete")]
    Incomplete,
    /// [`SipMessage::parse`]: bytes after the end of the message.
    #[error("{0} bytes after the end of the message")]
    TrailingData(usize),
}

/// Resource limits for one message on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line plus headers plus the blank line, in bytes. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Body bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Header fields (after unfolding). Default 100.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_headers: 100,
        }
    }
}

/// What the [`Framer`] found on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message.
    Message(SipMessage),
    /// A double-CRLF keep-alive ping (RFC 5626 §4.4.1); answer with a single CRLF.
    KeepAlive,
}

/// Compact header forms (RFC 3261 §7.3.3 and the event/refer extensions).
const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("f", "From"),
    ("t", "To"),
    ("v", "Via"),
    ("m", "Contact"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("k", "Supported"),
    ("s", "Subject"),
    ("e", "Content-Encoding"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
];

/// Headers whose values are comma-separated lists (RFC 3261 §7.3.1 `#element` grammar).
const LIST_HEADERS: &[&str] = &[
    "Via",
    "Route",
    "Record-Route",
    "Contact",
    "Require",
    "Proxy-Require",
    "Supported",
    "Unsupported",
    "Allow",
    "Allow-Events",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Content-Encoding",
    "Content-Language",
    "In-Reply-To",
    "Alert-Info",
    "Call-Info",
    "Error-Info",
    "Path",
    "Service-Route",
];

/// The full name for a header name (compact forms expanded); other names are returned as is.
pub fn canonical_name(name: &str) -> &str {
    if name.len() == 1 {
        for (short, long) in COMPACT {
            if name.eq_ignore_ascii_case(short) {
                return long;
            }
        }
    }
    name
}

/// Whether two header names denote the same header (case-insensitive, compact forms).
pub fn same_header(a: &str, b: &str) -> bool {
    canonical_name(a).eq_ignore_ascii_case(canonical_name(b))
}

fn is_list_header(name: &str) -> bool {
    let c = canonical_name(name);
    LIST_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(c))
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Split `s` at top-level `sep` bytes: not inside a quoted string (with `\` escapes) nor inside
/// `<...>`. Pieces are returned untrimmed.
pub(crate) fn split_top(s: &str, sep: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let (mut in_quote, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            _ if b == sep && !in_angle => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Shorten and escape input for an error message (no CR/LF can reach a reason phrase).
fn snippet(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == 40 {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn has_ctl(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

impl SipMessage {
    /// A request with no headers and no body.
    pub fn request(method: impl Into<String>, uri: impl Into<String>) -> Self {
        Self {
            start: StartLine::Request {
                method: method.into(),
                uri: uri.into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response to `req` per RFC 3261 §8.2.6: copies every Via (in order), From, To, Call-ID
    /// and CSeq, then `Content-Length: 0`. Adding the To tag is the caller's job
    /// ([`SipMessage::set_to_tag`]); so is Contact/Record-Route for dialog-creating responses
    /// (see `dialog::Dialog::response_to`).
    pub fn response_to(req: &SipMessage, code: u16, reason: impl Into<String>) -> Self {
        let mut headers: Vec<Header> = req
            .headers
            .iter()
            .filter(|h| h.is("Via"))
            .cloned()
            .collect();
        for name in ["From", "To", "Call-ID", "CSeq"] {
            headers.extend(req.headers.iter().filter(|h| h.is(name)).cloned());
        }
        headers.push(Header::new("Content-Length", "0"));
        Self {
            start: StartLine::Response {
                code,
                reason: reason.into(),
            },
            headers,
            body: Vec::new(),
        }
    }

    /// Parse exactly one complete message (with `Content-Length`) using default limits.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut framer = Framer::new(Limits::default());
        framer.push(bytes);
        match framer.next()? {
            Some(Frame::Message(m)) if framer.buffered() == 0 => Ok(m),
            Some(Frame::Message(_)) => Err(ParseError::TrailingData(framer.buffered())),
            Some(Frame::KeepAlive) | None => Err(ParseError::Incomplete),
        }
    }

    /// Serialize (see the module docs for the two normalisations).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(256 + self.headers.len() * 48);
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(head, "{method} {uri} {SIP_VERSION}\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(head, "{SIP_VERSION} {code} {reason}\r\n");
            }
        }
        let mut wrote_length = false;
        for h in &self.headers {
            if h.is("Content-Length") {
                if !wrote_length {
                    let _ = write!(head, "{}: {}\r\n", h.name, self.body.len());
                    wrote_length = true;
                }
                continue;
            }
            let _ = write!(head, "{}: {}\r\n", h.name, h.value);
        }
        if !wrote_length {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (None for a response; use [`SipMessage::cseq`] there).
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI (None for a response).
    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code (None for a request).
    pub fn code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of header `name` (case-insensitive; `i` finds `Call-ID` and vice versa).
    /// For list headers this is the whole first header line, not its first element.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.is(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of header `name`, in order. For list headers (Via, Route, Record-Route,
    /// Contact, Require, Supported, Allow, ...) each line is also split at top-level commas
    /// (outside quotes and `<...>`), trimmed, and empty elements are skipped.
    pub fn headers<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let list = is_list_header(name);
        let mut out: Vec<&'a str> = Vec::new();
        for h in self.headers.iter().filter(|h| h.is(name)) {
            if list {
                out.extend(
                    split_top(&h.value, b',')
                        .into_iter()
                        .map(str::trim)
                        .filter(|s| !s.is_empty()),
                );
            } else {
                out.push(&h.value);
            }
        }
        out.into_iter()
    }

    /// Replace the first `name` header's value (and name), removing the others; append if absent.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.headers.iter().position(|h| h.is(name)) {
            Some(i) => {
                self.headers[i] = Header::new(name, value);
                let mut n = 0;
                self.headers.retain(|h| {
                    n += 1;
                    n - 1 == i || !h.is(name)
                });
            }
            None => self.headers.push(Header::new(name, value)),
        }
    }

    /// Append a header line.
    pub fn push_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push(Header::new(name, value));
    }

    /// Insert a header line before every other header (used for Via).
    pub fn prepend_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.insert(0, Header::new(name, value));
    }

    /// Remove every `name` header; returns how many were removed.
    pub fn remove_headers(&mut self, name: &str) -> usize {
        let before = self.headers.len();
        self.headers.retain(|h| !h.is(name));
        before - self.headers.len()
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method, if present and well formed.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_ascii_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?;
        if it.next().is_some() {
            return None;
        }
        Some((n, m))
    }

    /// The value of the topmost Via element.
    pub fn top_via(&self) -> Option<&str> {
        self.headers("Via").next()
    }

    /// Set the tag of the To header (responses, §8.2.6.2). Fails if To is missing or malformed.
    pub fn set_to_tag(&mut self, tag: &str) -> Result<(), HdrError> {
        let i = self
            .headers
            .iter()
            .position(|h| h.is("To"))
            .ok_or(HdrError::Missing("To"))?;
        let mut to = NameAddr::parse(&self.headers[i].value)?;
        to.set_tag(tag);
        self.headers[i].value = to.to_string();
        Ok(())
    }
}

/// Cuts a byte stream into [`Frame`]s. Feed bytes with [`Framer::push`], then call
/// [`Framer::next`] until it returns `Ok(None)`. After an error the stream is unusable: the
/// driver answers (if it can) and closes the connection.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    limits: Limits,
}

impl Framer {
    /// A framer with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            limits,
        }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    #[allow(clippy::should_implement_trait)] // fallible, not an Iterator
    pub fn next(&mut self) -> Result<Option<Frame>, ParseError> {
        // CRLFs between messages: a double CRLF is a keep-alive ping, a single one (the pong,
        // or slack) is ignored (RFC 5626 §4.4.1, RFC 3261 §7.5).
        while self.buf.starts_with(b"\r\n") {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.drain(..4);
                return Ok(Some(Frame::KeepAlive));
            }
            if self.buf.len() < 4 && b"\r\n\r\n".starts_with(&self.buf) {
                return Ok(None); // could still become a ping
            }
            self.buf.drain(..2);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let window = self.buf.len().min(self.limits.max_header_bytes);
        let Some(end) = find(&self.buf[..window], b"\r\n\r\n") else {
            if self.buf.len() >= self.limits.max_header_bytes {
                return Err(ParseError::HeadersTooLarge {
                    limit: self.limits.max_header_bytes,
                });
            }
            // Reject garbage early instead of waiting for 64 KiB of it.
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line = &self.buf[..nl];
                if line.last() != Some(&b'\r') {
                    return Err(ParseError::BareLineEnding);
                }
                parse_start_line(&line[..line.len() - 1])?;
            }
            return Ok(None);
        };
        let head_len = end + 4;
        if head_len > self.limits.max_header_bytes {
            return Err(ParseError::HeadersTooLarge {
                limit: self.limits.max_header_bytes,
            });
        }
        let (start, headers) = parse_head(&self.buf[..end + 2], &self.limits)?;
        let length = content_length(&headers)?;
        if length > self.limits.max_body_bytes as u64 {
            return Err(ParseError::BodyTooLarge {
                length,
                limit: self.limits.max_body_bytes,
            });
        }
        let length = length as usize; // <= max_body_bytes
        if self.buf.len() < head_len + length {
            return Ok(None);
        }
        // Keep one Content-Length, in canonical form, so that the message equals what
        // `to_bytes` writes for it.
        let mut headers = headers;
        let mut seen = false;
        headers.retain_mut(|h| {
            if !h.is("Content-Length") {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            h.value = length.to_string();
            true
        });
        let body = self.buf[head_len..head_len + length].to_vec();
        self.buf.drain(..head_len + length);
        Ok(Some(Frame::Message(SipMessage {
            start,
            headers,
            body,
        })))
    }
}

/// Fuzzing oracle for the framer (used by `fuzz/fuzz_targets/framer.rs` and by the unit tests):
/// feeds `data` whole and in two pieces, and panics if an invariant breaks:
/// * both ways yield the same frames and both fail or neither does;
/// * every message re-parses from its `to_bytes()` to an equal message.
///
/// Not for production use: it panics by design.
#[doc(hidden)]
pub fn check_framer_invariants(data: &[u8]) -> FramerOutcome {
    fn run(chunks: &[&[u8]]) -> (Vec<Frame>, bool) {
        let mut f = Framer::default();
        let mut frames = Vec::new();
        for chunk in chunks {
            f.push(chunk);
            loop {
                match f.next() {
                    Ok(Some(fr)) => frames.push(fr),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
    }
    let (whole, whole_err) = run(&[data]);
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    let (split_frames, split_err) = run(&[&data[..split], &data[split..]]);
    assert_eq!(whole_err, split_err, "chunking changed the outcome");
    let n = whole.len().min(split_frames.len());
    assert_eq!(whole[..n], split_frames[..n], "chunking changed the frames");
    if !whole_err {
        assert_eq!(whole, split_frames, "chunking changed the frames");
    }
    let mut outcome = FramerOutcome {
        messages: 0,
        keepalives: 0,
        failed: whole_err,
    };
    for fr in &whole {
        match fr {
            Frame::KeepAlive => outcome.keepalives += 1,
            Frame::Message(m) => {
                outcome.messages += 1;
                let bytes = m.to_bytes();
                // `": "` separators may grow the head a little: allow for it.
                let mut f = Framer::new(Limits {
                    max_header_bytes: Limits::default().max_header_bytes + 4096,
                    ..Limits::default()
                });
                f.push(&bytes);
                match f.next() {
                    Ok(Some(Frame::Message(again))) => assert_eq!(&again, m, "re-parse differs"),
                    other => panic!("to_bytes() did not re-parse: {other:?}"),
                }
                assert_eq!(f.buffered(), 0, "to_bytes() left trailing bytes");
            }
        }
    }
    outcome
}

/// What [`check_framer_invariants`] saw.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerOutcome {
    /// Messages parsed.
    pub messages: usize,
    /// Keep-alives seen.
    pub keepalives: usize,
    /// Whether the stream ended in an error.
    pub failed: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_start_line(line: &[u8]) -> Result<StartLine, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    if line.contains('\r') {
        return Err(ParseError::BareLineEnding);
    }
    if has_ctl(line) {
        return Err(ParseError::ControlCharacter { line: 1 });
    }
    let bad = || ParseError::BadStartLine(snippet(line));
    if let Some(rest) = strip_prefix_ci(line, "SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let (version, rest) = rest.split_once(' ').ok_or_else(bad)?;
        if version != "2.0" {
            return Err(ParseError::UnsupportedVersion(snippet(
                &line[..4 + version.len()],
            )));
        }
        let (code, reason) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        let n: u16 = if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
            code.parse()
                .map_err(|_| ParseError::BadStatusCode(snippet(code)))?
        } else {
            return Err(ParseError::BadStatusCode(snippet(code)));
        };
        if !(100..=699).contains(&n) {
            return Err(ParseError::BadStatusCode(snippet(code)));
        }
        return Ok(StartLine::Response {
            code: n,
            reason: reason.to_owned(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !is_token(method) || uri.is_empty() || uri.contains('\t') {
        return Err(bad());
    }
    if !version.eq_ignore_ascii_case(SIP_VERSION) {
        return Err(ParseError::UnsupportedVersion(snippet(version)));
    }
    Ok(StartLine::Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parse the start line and headers; `head` ends with the CRLF of the last header line.
fn parse_head(head: &[u8], limits: &Limits) -> Result<(StartLine, Vec<Header>), ParseError> {
    let text = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
    // Every LF must be preceded by CR and every CR followed by LF.
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
        {
            return Err(ParseError::BareLineEnding);
        }
    }
    let body = text.strip_suffix("\r\n").unwrap_or(text);
    let mut lines = body.split("\r\n");
    let start = parse_start_line(lines.next().unwrap_or_default().as_bytes())?;
    let mut headers: Vec<Header> = Vec::new();
    for (idx, line) in lines.enumerate() {
        let lineno = idx + 2;
        if has_ctl(line) {
            return Err(ParseError::ControlCharacter { line: lineno });
        }
        if line.bytes().next().is_some_and(is_wsp) {
            let Some(last) = headers.last_mut() else {
                return Err(ParseError::BadHeaderLine {
                    line: lineno,
                    reason: "continuation line before the first header",
                });
            };
            let cont = line.trim_matches([' ', '\t']);
            if !cont.is_empty() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(cont);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ParseError::BadHeaderLine {
                line: lineno,
                reason: "no colon",
            });
        };
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(ParseError::InvalidHeaderName(snippet(name)));
        }
        if headers.len() == limits.max_headers {
            return Err(ParseError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        headers.push(Header::new(name, value.trim_matches([' ', '\t'])));
    }
    Ok((start, headers))
}

fn content_length(headers: &[Header]) -> Result<u64, ParseError> {
    let mut found: Option<u64> = None;
    for h in headers.iter().filter(|h| h.is("Content-Length")) {
        let v = &h.value;
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::InvalidContentLength(snippet(v)));
        }
        let n: u64 = v
            .parse()
            .map_err(|_| ParseError::InvalidContentLength(snippet(v)))?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::ConflictingContentLength);
        }
        found = Some(n);
    }
    found.ok_or(ParseError::MissingContentLength)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FIXTURES: &[(&str, &[u8])] = &[
        (
            "ms-invite-im.sip",
            include_bytes!("../fixtures/ms-invite-im.sip"),
        ),
        (
            "ms-message-in-dialog.sip",
            include_bytes!("../fixtures/ms-message-in-dialog.sip"),
        ),
        ("ms-bye.sip", include_bytes!("../fixtures/ms-bye.sip")),
        (
            "ms-subscribe-presence.sip",
            include_bytes!("../fixtures/ms-subscribe-presence.sip"),
        ),
        (
            "ms-notify-pidf.sip",
            include_bytes!("../fixtures/ms-notify-pidf.sip"),
        ),
    ];

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    const SIMPLE: &str = "MESSAGE sip:alice@example.test SIP/2.0\n\
Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKabc;ms-received-port=5061;ms-received-cid=1234\n\
v: SIP/2.0/TLS edge.lync.test:5061;branch=z9hG4bKdef\n\
Max-Forwards: 70\n\
f: \"Bob, Jr.\" <sip:bob@lync.test>;tag=1;epid=abc\n\
t: <sip:alice@example.test>\n\
i: call-1\n\
CSeq: 2 MESSAGE\n\
k: ms-dialog-route-set-update, timer\n\
Supported: histinfo\n\
c: text/plain; charset=UTF-8\n\
l: 5\n\
\n\
hello";

    #[test]
    fn every_fixture_parses_and_round_trips_byte_exact() {
        for (name, bytes) in FIXTURES {
            let m = SipMessage::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.to_bytes(), *bytes, "{name} did not round-trip");
            assert!(m.call_id().is_some(), "{name}");
            assert!(m.cseq().is_some(), "{name}");
        }
    }

    #[test]
    fn fixture_invite_keeps_ms_details() {
        let m = SipMessage::parse(FIXTURES[0].1).expect("parse");
        assert_eq!(m.method(), Some("INVITE"));
        let via = m.top_via().expect("via");
        assert!(
            via.contains(";ms-received-port=5061;ms-received-cid="),
            "{via}"
        );
        assert!(
            m.header("ms-text-format")
                .expect("ms-text-format")
                .contains("ms-body=")
        );
        let rr: Vec<_> = m.headers("Record-Route").collect();
        assert!(rr[0].contains(";ms-route-sig="), "{rr:?}");
        assert!(m.headers("Supported").any(|t| t == "ms-text-format"));
        assert_eq!(m.header("Content-Type"), Some("application/sdp"));
        assert!(
            std::str::from_utf8(&m.body)
                .expect("utf8")
                .contains("m=message 5060 sip null")
        );
    }

    #[test]
    fn compact_forms_are_found_both_ways_and_kept_on_output() {
        let raw = crlf(SIMPLE);
        let m = SipMessage::parse(&raw).expect("parse");
        assert_eq!(m.call_id(), Some("call-1"));
        assert_eq!(m.header("CALL-ID"), Some("call-1"));
        assert_eq!(m.header("f"), m.header("From"));
        assert_eq!(m.header("Content-Type"), Some("text/plain; charset=UTF-8"));
        assert_eq!(m.cseq(), Some((2, "MESSAGE")));
        assert_eq!(m.body, b"hello");
        // Via from both lines, in order; Supported across two lines and two names.
        let vias: Vec<_> = m.headers("via").collect();
        assert_eq!(vias.len(), 2);
        assert!(vias[1].starts_with("SIP/2.0/TLS edge.lync.test"));
        let sup: Vec<_> = m.headers("Supported").collect();
        assert_eq!(sup, ["ms-dialog-route-set-update", "timer", "histinfo"]);
        // From is not a list header: the comma in the quoted display name stays.
        assert_eq!(m.headers("From").count(), 1);
        assert_eq!(m.to_bytes(), raw);
    }

    #[test]
    fn list_split_respects_quotes_and_angles() {
        let mut m = SipMessage::request("INVITE", "sip:a@b");
        m.push_header("Contact", "\"a, \\\"b\" <sip:x@y;p=1,2>;q=0.5 ,<sip:z@w>, ");
        let v: Vec<_> = m.headers("m").collect();
        assert_eq!(v, ["\"a, \\\"b\" <sip:x@y;p=1,2>;q=0.5", "<sip:z@w>"]);
    }

    #[test]
    fn folded_header_is_joined_with_one_space() {
        let raw = crlf(
            "OPTIONS sip:a@b SIP/2.0\nSubject: first part  \n \t second part\nCall-ID: x\nContent-Length: 0\n\n",
        );
        let m = SipMessage::parse(&raw).expect("parse");
        assert_eq!(m.header("Subject"), Some("first part second part"));
        let again = SipMessage::parse(&m.to_bytes()).expect("reparse");
        assert_eq!(again, m);
    }

    #[test]
    fn content_length_is_rewritten_from_the_body() {
        let mut m = SipMessage::parse(&crlf(SIMPLE)).expect("parse");
        m.body = b"hi".to_vec();
        let out = String::from_utf8(m.to_bytes()).expect("utf8");
        assert!(out.contains("\r\nl: 2\r\n"), "{out}");
        m.remove_headers("Content-Length");
        let out = String::from_utf8(m.to_bytes()).expect("utf8");
        assert!(out.ends_with("Content-Length: 2\r\n\r\nhi"), "{out}");
    }

    #[test]
    fn header_edit_helpers() {
        let mut m = SipMessage::parse(&crlf(SIMPLE)).expect("parse");
        m.set_header("Supported", "timer");
        assert_eq!(m.headers("Supported").collect::<Vec<_>>(), ["timer"]);
        assert_eq!(m.remove_headers("Via"), 2);
        assert_eq!(m.top_via(), None);
        m.prepend_header("Via", "SIP/2.0/TLS gw.example.test;branch=z9hG4bK1");
        assert_eq!(m.headers[0].name, "Via");
        m.push_header("X-New", "1");
        assert_eq!(m.headers.last().map(|h| h.value.as_str()), Some("1"));
    }

    #[test]
    fn response_to_copies_the_right_headers() {
        let req = SipMessage::parse(&crlf(SIMPLE)).expect("parse");
        let mut resp = SipMessage::response_to(&req, 200, "OK");
        assert_eq!(resp.code(), Some(200));
        let names: Vec<_> = resp.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Via", "v", "f", "t", "i", "CSeq", "Content-Length"]);
        assert_eq!(resp.header("Via"), req.header("Via"));
        resp.set_to_tag("xyz").expect("tag");
        assert_eq!(resp.header("To"), Some("<sip:alice@example.test>;tag=xyz"));
        let bytes = resp.to_bytes();
        assert!(bytes.starts_with(b"SIP/2.0 200 OK\r\n"));
        assert_eq!(SipMessage::parse(&bytes).expect("reparse"), resp);
    }

    #[test]
    fn framer_splits_messages_and_keepalives_across_pushes() {
        let one = crlf(SIMPLE);
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(&one);
        stream.extend_from_slice(b"\r\n"); // single CRLF: ignored
        stream.extend_from_slice(&one);
        let mut f = Framer::default();
        let mut frames = Vec::new();
        for chunk in stream.chunks(7) {
            f.push(chunk);
            while let Some(fr) = f.next().expect("frame") {
                frames.push(fr);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Frame::KeepAlive);
        assert!(matches!(&frames[1], Frame::Message(m) if m.body == b"hello"));
        assert_eq!(frames[1], frames[2]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn framer_waits_for_the_whole_body() {
        let one = crlf(SIMPLE);
        let mut f = Framer::new(Limits::default());
        f.push(&one[..one.len() - 1]);
        assert_eq!(f.next(), Ok(None));
        f.push(&one[one.len() - 1..]);
        assert!(matches!(f.next(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn limits_give_typed_errors() {
        let small = Limits {
            max_header_bytes: 100,
            max_body_bytes: 4,
            max_headers: 3,
        };
        let mut f = Framer::new(small);
        f.push(&crlf(SIMPLE));
        assert_eq!(f.next(), Err(ParseError::HeadersTooLarge { limit: 100 }));

        let mut f = Framer::new(Limits {
            max_header_bytes: 4096,
            ..small
        });
        f.push(&crlf(SIMPLE));
        assert_eq!(f.next(), Err(ParseError::TooManyHeaders { limit: 3 }));

        let mut f = Framer::new(Limits {
            max_header_bytes: 4096,
            max_headers: 100,
            ..small
        });
        f.push(&crlf(SIMPLE));
        assert_eq!(
            f.next(),
            Err(ParseError::BodyTooLarge {
                length: 5,
                limit: 4
            })
        );

        // Without a blank line yet, the header limit still triggers.
        let mut f = Framer::new(small);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\n");
        f.push(&[b'X'; 200]);
        assert_eq!(f.next(), Err(ParseError::HeadersTooLarge { limit: 100 }));
    }

    #[test]
    fn bad_input_errors() {
        let cases: &[(&str, ParseError)] = &[
            (
                "OPTIONS sip:a@b SIP/2.0\nCall-ID: x\n\n",
                ParseError::MissingContentLength,
            ),
            (
                "OPTIONS sip:a@b SIP/3.0\nContent-Length: 0\n\n",
                ParseError::UnsupportedVersion("SIP/3.0".into()),
            ),
            (
                "SIP/1.0 200 OK\nContent-Length: 0\n\n",
                ParseError::UnsupportedVersion("SIP/1.0".into()),
            ),
            (
                "SIP/2.0 2000 OK\nContent-Length: 0\n\n",
                ParseError::BadStatusCode("2000".into()),
            ),
            (
                "SIP/2.0 099 Odd\nContent-Length: 0\n\n",
                ParseError::BadStatusCode("099".into()),
            ),
            (
                "OPTIONS  sip:a@b SIP/2.0\nContent-Length: 0\n\n",
                ParseError::BadStartLine("OPTIONS  sip:a@b SIP/2.0".into()),
            ),
            (
                "OPTIONS sip:a@b SIP/2.0\nContent-Length: abc\n\n",
                ParseError::InvalidContentLength("abc".into()),
            ),
            (
                "OPTIONS sip:a@b SIP/2.0\nContent-Length: 1\nl: 2\n\nxy",
                ParseError::ConflictingContentLength,
            ),
            (
                "OPTIONS sip:a@b SIP/2.0\nNoColonHere\nContent-Length: 0\n\n",
                ParseError::BadHeaderLine {
                    line: 2,
                    reason: "no colon",
                },
            ),
            (
                "OPTIONS sip:a@b SIP/2.0\n folded first\nContent-Length: 0\n\n",
                ParseError::BadHeaderLine {
                    line: 2,
                    reason: "continuation line before the first header",
                },
            ),
            (
                "OPTIONS sip:a@b SIP/2.0\nBad Name: 1\nContent-Length: 0\n\n",
                ParseError::InvalidHeaderName("Bad Name".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                SipMessage::parse(&crlf(input)).as_ref(),
                Err(want),
                "{input:?}"
            );
        }
        // Bare LF inside the header section.
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\nY: 1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(SipMessage::parse(raw), Err(ParseError::BareLineEnding));
        // Not UTF-8.
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: \xff\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(SipMessage::parse(raw), Err(ParseError::NotUtf8));
        // Trailing bytes and truncation.
        let mut raw = crlf("OPTIONS sip:a@b SIP/2.0\nContent-Length: 0\n\n");
        raw.extend_from_slice(b"junk");
        assert_eq!(SipMessage::parse(&raw), Err(ParseError::TrailingData(4)));
        assert_eq!(
            SipMessage::parse(&crlf("OPTIONS sip:a@b SIP/2.0\nContent-Length: 5\n\nab")),
            Err(ParseError::Incomplete)
        );
        // Garbage is refused before the blank line arrives.
        let mut f = Framer::default();
        f.push(b"\x16\x03\x01 hello\r\n");
        assert_eq!(f.next(), Err(ParseError::ControlCharacter { line: 1 }));
        let mut f = Framer::default();
        f.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            f.next(),
            Err(ParseError::UnsupportedVersion("HTTP/1.1".into()))
        );
        let mut f = Framer::default();
        f.push(b"hello\r\n");
        assert!(matches!(f.next(), Err(ParseError::BadStartLine(_))));
    }

    #[test]
    fn content_length_is_normalised_on_parse() {
        let m = SipMessage::parse(&crlf(
            "OPTIONS sip:a@b SIP/2.0\nl: 002\nContent-Length: 2\nCall-ID: x\n\nok",
        ))
        .expect("parse");
        assert_eq!(m.headers("Content-Length").collect::<Vec<_>>(), ["2"]);
        assert_eq!(m.headers[0].name, "l");
        assert_eq!(SipMessage::parse(&m.to_bytes()).expect("reparse"), m);
    }

    /// The fuzz target's oracle over the fixtures, their concatenation and seeded random
    /// mutations of them (runs without cargo-fuzz).
    #[test]
    fn framer_oracle_over_mutated_fixtures() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut corpus: Vec<Vec<u8>> = FIXTURES.iter().map(|(_, b)| b.to_vec()).collect();
        let mut all = b"\r\n\r\n".to_vec();
        for (_, b) in FIXTURES {
            all.extend_from_slice(b);
            all.extend_from_slice(b"\r\n");
        }
        corpus.push(all.clone());
        let o = check_framer_invariants(&all);
        assert_eq!(
            (o.messages, o.keepalives, o.failed),
            (FIXTURES.len(), 1, false)
        );

        let mut rng = StdRng::seed_from_u64(0x5170_f00d);
        let (mut ok, mut failed) = (0usize, 0usize);
        for _ in 0..4000 {
            let mut d = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                if d.is_empty() {
                    break;
                }
                let i = rng.random_range(0..d.len());
                match rng.random_range(0..7) {
                    0 => d[i] = rng.random(),
                    1 => d.insert(i, b"\r\n :;,<>\"\t"[rng.random_range(0..10)]),
                    2 => {
                        let j = rng.random_range(i..=d.len().min(i + 40));
                        d.drain(i..j);
                    }
                    3 => {
                        let j = rng.random_range(i..=d.len().min(i + 40));
                        let piece = d[i..j].to_vec();
                        d.splice(i..i, piece);
                    }
                    4 => d.truncate(i),
                    5 => {
                        d.splice(i..i, *b"\r\n ");
                    }
                    _ => {
                        let digits = rng.random_range(0u32..100_000).to_string();
                        d.splice(i..i, digits.into_bytes());
                    }
                }
            }
            let o = check_framer_invariants(&d);
            ok += o.messages;
            failed += usize::from(o.failed);
        }
        // The mutations exercise both paths.
        assert!(ok > 500 && failed > 500, "ok={ok} failed={failed}");
    }

    #[test]
    fn error_text_is_safe_for_a_reason_phrase() {
        let e = ParseError::BadStartLine(snippet("a\r\nb"));
        let text = e.to_string();
        assert!(!text.contains('\r') && !text.contains('\n'), "{text}");
    }
}
