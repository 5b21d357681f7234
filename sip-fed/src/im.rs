//! Instant-message bodies between SIP and XMPP (RFC 7572 §7–8, Microsoft session-mode IM).
//!
//! * Microsoft puts the first message of a session into the INVITE as the header
//!   `ms-text-format: text/plain; charset=UTF-8; ms-body=<base64>`:
//!   [`decode_ms_text_format`], [`encode_ms_text_format`].
//! * [`body_to_text`]: a SIP body (`text/plain`, `text/html`, `multipart/alternative`) becomes
//!   clean text for the XMPP `<body/>`, plus the HTML when there was some. HTML is reduced to
//!   text: tags stripped, `script`/`style` dropped, entities decoded (named and numeric),
//!   `<br>`/`<p>`/`<div>`/list items/rows/headings become line breaks, white space collapsed as
//!   a browser would, at most one blank line in a row. The Lync plain-text link duplication
//!   `https://x.test <https://x.test>` becomes `https://x.test`. RTF and other types are refused
//!   with [`ImError::Unsupported`], which names the type.
//! * Charsets: UTF-8 / US-ASCII (default), ISO-8859-1 and windows-1252.
//! * [`xhtml_im`]: a minimal safe XEP-0071 body (`p`, `br`, `a href` with a safe scheme,
//!   `strong`, `em`, `span` without attributes); everything else is reduced to its text.
//! * [`PAGE_MODE_LIMIT`] and the `Content-Language` ⇄ `xml:lang` helpers.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use fedgate_s2s::element::{Element, Node};

/// Largest page-mode MESSAGE body (bytes): RFC 7572 §6 / RFC 3428 §7. A larger message gets
/// `<policy-violation/>` or goes over a session.
pub const PAGE_MODE_LIMIT: usize = 1300;
/// Namespace of the XEP-0071 wrapper.
pub const NS_XHTML_IM: &str = "http://jabber.org/protocol/xhtml-im";
/// Namespace of the XEP-0071 `<body/>`.
pub const NS_XHTML: &str = "http://www.w3.org/1999/xhtml";
/// Deepest `multipart` nesting [`body_to_text`] follows.
const MAX_MULTIPART_DEPTH: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImError {
    #[error("unsupported message content type {0:?}")]
    Unsupported(String),
    #[error("unsupported charset {0:?}")]
    Charset(String),
    #[error("body is not valid {0}")]
    BadEncoding(&'static str),
    #[error("ms-text-format header without ms-body")]
    MissingBody,
    #[error("bad base64 in ms-body")]
    BadBase64,
    #[error("multipart body: {0}")]
    Multipart(&'static str),
    #[error("no usable part in multipart/alternative (types: {0})")]
    NoUsablePart(String),
}

/// A message body as text for XMPP, with the HTML it came from (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImText {
    pub text: String,
    pub html: Option<String>,
}

/// A parsed `Content-Type`: lower-cased `type/subtype` and parameters (names lower-cased,
/// quotes removed from values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    pub media: String,
    pub params: Vec<(String, String)>,
}

impl ContentType {
    pub fn parse(value: &str) -> Self {
        let mut parts = split_params(value).into_iter();
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params = parts
            .filter_map(|p| {
                let (n, v) = p.split_once('=')?;
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .map_or_else(|| v.to_owned(), |q| q.replace("\\\"", "\""));
                Some((n.trim().to_ascii_lowercase(), v))
            })
            .collect();
        Self { media, params }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Split at `;` outside double quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn base64_lenient() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Decode a Microsoft `ms-text-format` (or `ms-im-format`) header value: the content type
/// without the `ms-body` parameter (other parameters kept, e.g. `charset`, `msgr`) and the
/// decoded body bytes.
pub fn decode_ms_text_format(header_value: &str) -> Result<(String, Vec<u8>), ImError> {
    let mut kept = Vec::new();
    let mut body = None;
    for p in split_params(header_value) {
        let t = p.trim();
        match t.split_once('=') {
            Some((n, v)) if n.trim().eq_ignore_ascii_case("ms-body") => body = Some(v.trim()),
            _ if !t.is_empty() => kept.push(t),
            _ => {}
        }
    }
    let body = body.ok_or(ImError::MissingBody)?;
    let clean: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64_lenient()
        .decode(clean)
        .map_err(|_| ImError::BadBase64)?;
    Ok((kept.join("; "), bytes))
}

/// The `ms-text-format` header value for a plain-text message.
pub fn encode_ms_text_format(text: &str) -> String {
    format!(
        "text/plain; charset=UTF-8;ms-body={}",
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    )
}

/// windows-1252 code points for bytes 0x80..=0x9F (undefined bytes map to the C1 control of
/// the same value, as browsers do).
const CP1252_HIGH: [u16; 32] = [
    0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
];

/// Decode `bytes` in `charset` (`None`: UTF-8).
pub fn decode_charset(bytes: &[u8], charset: Option<&str>) -> Result<String, ImError> {
    let cs = charset.unwrap_or("utf-8").trim().to_ascii_lowercase();
    match cs.as_str() {
        "utf-8" | "utf8" => {
            String::from_utf8(bytes.to_vec()).map_err(|_| ImError::BadEncoding("UTF-8"))
        }
        "us-ascii" | "ascii" => {
            if bytes.is_ascii() {
                Ok(String::from_utf8_lossy(bytes).into_owned())
            } else {
                Err(ImError::BadEncoding("US-ASCII"))
            }
        }
        "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "l1" => {
            Ok(bytes.iter().map(|&b| char::from(b)).collect())
        }
        "windows-1252" | "cp1252" => Ok(bytes
            .iter()
            .map(|&b| match b {
                0x80..=0x9F => char::from_u32(u32::from(CP1252_HIGH[usize::from(b - 0x80)]))
                    .unwrap_or('\u{FFFD}'),
                _ => char::from(b),
            })
            .collect()),
        _ => Err(ImError::Charset(cs)),
    }
}

/// Turn a SIP message body into text for XMPP (see the module documentation). An empty
/// content type counts as `text/plain`.
pub fn body_to_text(content_type: &str, bytes: &[u8]) -> Result<ImText, ImError> {
    body_to_text_depth(&ContentType::parse(content_type), bytes, 0)
}

fn body_to_text_depth(ct: &ContentType, bytes: &[u8], depth: usize) -> Result<ImText, ImError> {
    match ct.media.as_str() {
        "" | "text/plain" => Ok(ImText {
            text: strip_url_duplicates(&normalize_newlines(&decode_charset(
                bytes,
                ct.param("charset"),
            )?)),
            html: None,
        }),
        "text/html" | "application/xhtml+xml" => {
            let html = decode_charset(bytes, ct.param("charset"))?;
            Ok(ImText {
                text: strip_url_duplicates(&html_to_text(&html)),
                html: Some(html),
            })
        }
        "multipart/alternative" if depth < MAX_MULTIPART_DEPTH => {
            let boundary = ct
                .param("boundary")
                .filter(|b| !b.is_empty())
                .ok_or(ImError::Multipart("no boundary"))?;
            let parts = split_multipart(bytes, boundary)?;
            let mut plain = None;
            let mut html = None;
            let mut types = Vec::new();
            for (pct, body) in &parts {
                types.push(pct.media.clone());
                let body = decode_transfer(&pct.params, body)?;
                match pct.media.as_str() {
                    "text/plain" | "" if plain.is_none() => {
                        plain = Some(body_to_text_depth(pct, &body, depth + 1)?);
                    }
                    "text/html" if html.is_none() => {
                        html = Some(body_to_text_depth(pct, &body, depth + 1)?);
                    }
                    "multipart/alternative" if plain.is_none() => {
                        if let Ok(t) = body_to_text_depth(pct, &body, depth + 1) {
                            plain = Some(t);
                        }
                    }
                    _ => {}
                }
            }
            match (plain, html) {
                (Some(p), h) => Ok(ImText {
                    text: p.text,
                    html: h.and_then(|h| h.html).or(p.html),
                }),
                (None, Some(h)) => Ok(h),
                (None, None) => Err(ImError::NoUsablePart(types.join(", "))),
            }
        }
        other => Err(ImError::Unsupported(other.to_owned())),
    }
}

fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// Split a multipart body into (part content type + `content-transfer-encoding` as a
/// pseudo-parameter, part body).
fn split_multipart(bytes: &[u8], boundary: &str) -> Result<Vec<(ContentType, Vec<u8>)>, ImError> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut positions = Vec::new();
    let mut i = 0;
    while i + d.len() <= bytes.len() {
        if &bytes[i..i + d.len()] == d && (i == 0 || bytes[i - 1] == b'\n') {
            positions.push(i);
            i += d.len();
        } else {
            i += 1;
        }
    }
    if positions.is_empty() {
        return Err(ImError::Multipart("boundary not found"));
    }
    let mut parts = Vec::new();
    for w in 0..positions.len() {
        let start = positions[w] + d.len();
        if bytes[start..].starts_with(b"--") {
            break;
        }
        let Some(end) = positions.get(w + 1).copied() else {
            return Err(ImError::Multipart("missing closing boundary"));
        };
        // Drop the line end after the boundary and the CRLF that belongs to the next one.
        let mut seg = &bytes[start..end];
        seg = seg
            .strip_prefix(b"\r\n")
            .or_else(|| seg.strip_prefix(b"\n"))
            .unwrap_or(seg);
        seg = seg
            .strip_suffix(b"\r\n")
            .or_else(|| seg.strip_suffix(b"\n"))
            .unwrap_or(seg);
        let (head, body) = match find(seg, b"\r\n\r\n") {
            Some(p) => (&seg[..p], &seg[p + 4..]),
            None => match find(seg, b"\n\n") {
                Some(p) => (&seg[..p], &seg[p + 2..]),
                None if seg.starts_with(b"\r\n") => (&seg[..0], &seg[2..]),
                None => return Err(ImError::Multipart("part without header/body separator")),
            },
        };
        let head = String::from_utf8_lossy(head);
        let mut ct = ContentType {
            media: "text/plain".to_owned(),
            params: Vec::new(),
        };
        let mut cte = None;
        for line in head.lines() {
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            match n.trim().to_ascii_lowercase().as_str() {
                "content-type" => ct = ContentType::parse(v),
                "content-transfer-encoding" => cte = Some(v.trim().to_ascii_lowercase()),
                _ => {}
            }
        }
        if let Some(c) = cte {
            ct.params.push(("content-transfer-encoding".to_owned(), c));
        }
        parts.push((ct, body.to_vec()));
    }
    Ok(parts)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Undo a part's Content-Transfer-Encoding (7bit/8bit/binary, base64, quoted-printable).
fn decode_transfer(params: &[(String, String)], body: &[u8]) -> Result<Vec<u8>, ImError> {
    let cte = params
        .iter()
        .find(|(n, _)| n == "content-transfer-encoding")
        .map(|(_, v)| v.as_str());
    match cte {
        None | Some("7bit" | "8bit" | "binary") => Ok(body.to_vec()),
        Some("base64") => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64_lenient()
                .decode(clean)
                .map_err(|_| ImError::BadBase64)
        }
        Some("quoted-printable") => Ok(decode_quoted_printable(body)),
        Some(other) => Err(ImError::Unsupported(format!(
            "content-transfer-encoding {other}"
        ))),
    }
}

fn decode_quoted_printable(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if b[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let Some(h) = b.get(i + 1..i + 3)
                && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(h), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether `s` looks like a URL Lync would duplicate.
fn looks_like_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    !s.is_empty()
        && !s.chars().any(char::is_whitespace)
        && (l.contains("://")
            || l.starts_with("mailto:")
            || l.starts_with("www.")
            || l.starts_with("sip:"))
}

/// Remove the Lync duplication `url <url>` (also without the space), keeping `url`.
pub fn strip_url_duplicates(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(lt) = rest.find('<') {
        let after = &rest[lt + 1..];
        let Some(gt) = after.find('>') else {
            break;
        };
        let inner = &after[..gt];
        let before = &rest[..lt];
        let before_trim = before.strip_suffix(' ').unwrap_or(before);
        let dup = looks_like_url(inner)
            && before_trim.ends_with(inner)
            && before_trim[..before_trim.len() - inner.len()]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || "([\"'".contains(c));
        if dup {
            out.push_str(before_trim);
        } else {
            out.push_str(before);
            out.push('<');
            out.push_str(inner);
            out.push('>');
        }
        rest = &after[gt + 1..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// HTML

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Text(String),
    Start {
        name: String,
        attrs: Vec<(String, String)>,
        self_closing: bool,
    },
    End(String),
}

/// A forgiving HTML tokenizer: comments, doctypes and processing instructions are skipped,
/// `script`/`style` contents dropped, entities in text and attribute values decoded.
fn html_tokens(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        if b[i] != b'<' {
            let end = s[i..].find('<').map_or(s.len(), |p| i + p);
            out.push(Tok::Text(decode_entities(&s[i..end])));
            i = end;
            continue;
        }
        let rest = &s[i..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            i = comment.find("-->").map_or(s.len(), |p| i + 4 + p + 3);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            i = rest.find('>').map_or(s.len(), |p| i + p + 1);
            continue;
        }
        let closing = rest.starts_with("</");
        let name_start = if closing { 2 } else { 1 };
        let name_len = rest[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ':'))
            .unwrap_or(rest.len() - name_start);
        if name_len == 0 {
            // A lone '<' is text.
            out.push(Tok::Text("<".to_owned()));
            i += 1;
            continue;
        }
        let name = rest[name_start..name_start + name_len].to_ascii_lowercase();
        // Find the end of the tag, respecting quoted attribute values.
        let mut j = name_start + name_len;
        let rb = rest.as_bytes();
        let mut quote = None;
        while j < rb.len() {
            match (quote, rb[j]) {
                (Some(q), c) if c == q => quote = None,
                (None, b'"' | b'\'') => quote = Some(rb[j]),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        let inner = &rest[name_start + name_len..j.min(rest.len())];
        i += (j + 1).min(rest.len());
        if closing {
            out.push(Tok::End(name));
            continue;
        }
        let self_closing = inner.trim_end().ends_with('/');
        let attrs = parse_attrs(inner.trim_end().trim_end_matches('/'));
        let raw_text = name == "script" || name == "style";
        out.push(Tok::Start {
            name: name.clone(),
            attrs,
            self_closing,
        });
        if raw_text && !self_closing {
            let close = format!("</{name}");
            let lower = s[i..].to_ascii_lowercase();
            match lower.find(&close) {
                Some(p) => {
                    let after = i + p;
                    i = s[after..].find('>').map_or(s.len(), |q| after + q + 1);
                }
                None => i = s.len(),
            }
            out.push(Tok::End(name));
        }
    }
    out
}

fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        if start == i {
            i += 1;
            continue;
        }
        let name = s[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                let ve = s[vs..].find(char::from(q)).map_or(s.len(), |p| vs + p);
                value = decode_entities(&s[vs..ve]);
                i = ve + 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = decode_entities(&s[vs..i]);
            }
        }
        out.push((name, value));
    }
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{A0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "deg" => '°',
        "times" => '×',
        "divide" => '÷',
        "sect" => '§',
        "para" => '¶',
        "auml" => 'ä',
        "ouml" => 'ö',
        "uuml" => 'ü',
        "Auml" => 'Ä',
        "Ouml" => 'Ö',
        "Uuml" => 'Ü',
        "szlig" => 'ß',
        "eacute" => 'é',
        "egrave" => 'è',
        "agrave" => 'à',
        "ccedil" => 'ç',
        _ => return None,
    })
}

/// Decode HTML character references; unknown or malformed ones stay as written.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';').filter(|&p| p <= 10);
        let decoded = semi.and_then(|p| {
            let name = &after[..p];
            let c = if let Some(num) = name.strip_prefix('#') {
                let v = match num.strip_prefix(['x', 'X']) {
                    Some(h) => u32::from_str_radix(h, 16).ok(),
                    None => num.parse::<u32>().ok(),
                }?;
                match v {
                    0 => '\u{FFFD}',
                    _ => char::from_u32(v).unwrap_or('\u{FFFD}'),
                }
            } else {
                named_entity(name)?
            };
            Some((c, p))
        });
        match decoded {
            Some((c, p)) => {
                out.push(c);
                rest = &after[p + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "li"
            | "tr"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "blockquote"
            | "pre"
            | "ul"
            | "ol"
            | "table"
            | "hr"
            | "body"
            | "html"
    )
}

fn is_safe_href(href: &str) -> bool {
    let l = href.trim().to_ascii_lowercase();
    [
        "http://", "https://", "mailto:", "xmpp:", "sip:", "sips:", "im:", "tel:",
    ]
    .iter()
    .any(|p| l.starts_with(p))
}

/// Reduce HTML to clean plain text (see the module documentation).
pub fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut pre = 0usize;
    let mut skip = 0usize; // inside <head>, <title>, <script>, <style>
    let mut links: Vec<(usize, Option<String>)> = Vec::new();
    for t in html_tokens(html) {
        match t {
            Tok::Text(s) => {
                if skip > 0 {
                    continue;
                }
                if pre > 0 {
                    out.push_str(&normalize_newlines(&s));
                } else {
                    for (k, piece) in s.split(|c: char| c.is_ascii_whitespace()).enumerate() {
                        if k > 0 && !out.ends_with([' ', '\n']) && !out.is_empty() {
                            out.push(' ');
                        }
                        out.push_str(piece);
                    }
                }
            }
            Tok::Start {
                name,
                attrs,
                self_closing,
            } => match name.as_str() {
                "script" | "style" | "head" | "title" if !self_closing => skip += 1,
                "br" => out.push('\n'),
                "img" => {
                    if let Some((_, alt)) = attrs.iter().find(|(n, _)| n == "alt") {
                        out.push_str(alt);
                    }
                }
                "a" if !self_closing => {
                    let href = attrs
                        .iter()
                        .find(|(n, _)| n == "href")
                        .map(|(_, v)| v.trim().to_owned())
                        .filter(|h| is_safe_href(h));
                    links.push((out.len(), href));
                }
                n if is_block(n) => {
                    if n == "pre" {
                        pre += 1;
                    }
                    block_break(&mut out);
                }
                "td" | "th" => out.push(' '),
                _ => {}
            },
            Tok::End(name) => match name.as_str() {
                "script" | "style" | "head" | "title" => skip = skip.saturating_sub(1),
                "a" => {
                    if let Some((start, Some(href))) = links.pop() {
                        let label = out.get(start..).unwrap_or("").trim().to_owned();
                        let bare = href.strip_prefix("mailto:").unwrap_or(&href);
                        if label.is_empty() {
                            out.push_str(&href);
                        } else if label != href && label != bare {
                            out.push_str(&format!(" ({href})"));
                        }
                    }
                }
                n if is_block(n) => {
                    if n == "pre" {
                        pre = pre.saturating_sub(1);
                    }
                    block_break(&mut out);
                }
                _ => {}
            },
        }
    }
    tidy_lines(&out)
}

/// Start a new line unless the output is empty or already at a line start (block elements).
fn block_break(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Trim trailing spaces of each line, keep at most one blank line in a row, drop line breaks
/// at both ends, turn no-break spaces into spaces.
fn tidy_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending = 0usize;
    for line in s.split('\n') {
        let l = line.trim_end_matches([' ', '\t']).replace('\u{A0}', " ");
        if l.is_empty() {
            pending += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if pending > 1 { "\n\n" } else { "\n" });
        }
        out.push_str(&l);
        pending = 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// XHTML-IM

/// A minimal, safe XEP-0071 `<html/>` element for `html`: only `p`, `br`, `a` (with a safe
/// `href`), `strong` (also from `b`), `em` (also from `i`) and `span` survive, without other
/// attributes; everything else is reduced to its text, `script`/`style`/`head` dropped.
/// `None` when nothing with text is left.
pub fn xhtml_im(html: &str) -> Option<Element> {
    let mut stack: Vec<Element> = vec![Element::new("body", NS_XHTML)];
    let mut skip = 0usize;
    for t in html_tokens(html) {
        match t {
            Tok::Text(s) => {
                if skip == 0
                    && !s.is_empty()
                    && let Some(top) = stack.last_mut()
                {
                    top.children.push(Node::Text(s));
                }
            }
            Tok::Start {
                name,
                attrs,
                self_closing,
            } => {
                if matches!(name.as_str(), "script" | "style" | "head" | "title") {
                    if !self_closing {
                        skip += 1;
                    }
                    continue;
                }
                if skip > 0 {
                    continue;
                }
                let mapped = match name.as_str() {
                    "b" => "strong",
                    "i" => "em",
                    n @ ("p" | "br" | "a" | "strong" | "em" | "span") => n,
                    _ => continue,
                };
                let mut el = Element::new(mapped, NS_XHTML);
                if mapped == "a" {
                    match attrs.iter().find(|(n, _)| n == "href") {
                        Some((_, h)) if is_safe_href(h) => el.set_attr("href", h.trim()),
                        _ => el = Element::new("span", NS_XHTML),
                    }
                }
                if mapped == "br" || self_closing {
                    if let Some(top) = stack.last_mut() {
                        top.children.push(Node::Element(el));
                    }
                } else {
                    stack.push(el);
                }
            }
            Tok::End(name) => {
                if matches!(name.as_str(), "script" | "style" | "head" | "title") {
                    skip = skip.saturating_sub(1);
                    continue;
                }
                let mapped = match name.as_str() {
                    "b" => "strong",
                    "i" => "em",
                    n => n,
                };
                // Close up to the matching open element (an `a` without safe href became a
                // span); ignore stray end tags.
                let pos = stack
                    .iter()
                    .rposition(|e| e.name == mapped || mapped == "a" && e.name == "span");
                if let Some(pos) = pos.filter(|&p| p > 0) {
                    while stack.len() > pos {
                        let done = stack.pop()?;
                        stack.last_mut()?.children.push(Node::Element(done));
                    }
                }
            }
        }
    }
    while stack.len() > 1 {
        let done = stack.pop()?;
        stack.last_mut()?.children.push(Node::Element(done));
    }
    let body = stack.pop()?;
    if !has_text(&body) {
        return None;
    }
    Some(Element::new("html", NS_XHTML_IM).with_child(body))
}

fn has_text(el: &Element) -> bool {
    el.children.iter().any(|n| match n {
        Node::Text(t) => !t.trim().is_empty(),
        Node::Element(e) => has_text(e),
    })
}

// ---------------------------------------------------------------------------------------------
// Languages

/// A language tag if `s` looks like one (RFC 5646 shape: alphanumeric subtags joined by `-`,
/// first subtag alphabetic, at most 35 characters).
fn language_tag(s: &str) -> Option<String> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.len() <= 35
        && t.split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_alphanumeric()))
        && t.split('-')
            .next()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_alphabetic()));
    ok.then(|| t.to_owned())
}

/// `Content-Language` (a comma-separated list) → `xml:lang`: the first valid tag.
pub fn content_language_to_xml_lang(header: &str) -> Option<String> {
    header.split(',').find_map(language_tag)
}

/// `xml:lang` → `Content-Language` value; `None` for an empty or malformed tag.
pub fn xml_lang_to_content_language(lang: &str) -> Option<String> {
    language_tag(lang)
}

/// Whether a page-mode MESSAGE body of `len` bytes exceeds [`PAGE_MODE_LIMIT`].
pub fn exceeds_page_mode(len: usize) -> bool {
    len > PAGE_MODE_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_text_format_round_trip() {
        let h = encode_ms_text_format("Grüße, Bob! ☺");
        assert!(h.starts_with("text/plain; charset=UTF-8;ms-body="));
        let (ct, body) = decode_ms_text_format(&h).unwrap();
        assert_eq!(ct, "text/plain; charset=UTF-8");
        assert_eq!(String::from_utf8(body).unwrap(), "Grüße, Bob! ☺");
    }

    #[test]
    fn ms_text_format_as_lync_sends_it() {
        // "Hello" without padding, msgr parameter kept, spaces around parameters.
        let (ct, body) = decode_ms_text_format(
            "text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AA; ms-body=SGVsbG8",
        )
        .unwrap();
        assert_eq!(body, b"Hello");
        assert!(ct.contains("msgr=WAAt"));
        let t = body_to_text(&ct, &body).unwrap();
        assert_eq!(t.text, "Hello");
        assert_eq!(
            decode_ms_text_format("text/plain; charset=UTF-8"),
            Err(ImError::MissingBody)
        );
        assert_eq!(
            decode_ms_text_format("text/plain;ms-body=!!!"),
            Err(ImError::BadBase64)
        );
    }

    #[test]
    fn charsets() {
        assert_eq!(
            decode_charset(b"caf\xE9", Some("ISO-8859-1")).unwrap(),
            "café"
        );
        assert_eq!(
            decode_charset(b"\x80 \x93hi\x94", Some("windows-1252")).unwrap(),
            "€ \u{201C}hi\u{201D}"
        );
        assert_eq!(
            decode_charset(b"caf\xE9", None),
            Err(ImError::BadEncoding("UTF-8"))
        );
        assert_eq!(
            decode_charset(b"x", Some("koi8-r")),
            Err(ImError::Charset("koi8-r".into()))
        );
        let t = body_to_text("text/plain; charset=\"iso-8859-1\"", b"na\xefve").unwrap();
        assert_eq!(t.text, "naïve");
    }

    #[test]
    fn plain_text_and_url_duplication() {
        let t = body_to_text(
            "text/plain; charset=UTF-8",
            b"see https://x.test/a?b=1 <https://x.test/a?b=1> and <b>not this</b>\r\nbye",
        )
        .unwrap();
        assert_eq!(t.text, "see https://x.test/a?b=1 and <b>not this</b>\nbye");
        assert_eq!(t.html, None);
        assert_eq!(strip_url_duplicates("www.x.test<www.x.test>"), "www.x.test");
        assert_eq!(
            strip_url_duplicates("a https://x.test <https://y.test>"),
            "a https://x.test <https://y.test>"
        );
        assert_eq!(
            strip_url_duplicates("ahttps://x.test <https://x.test>"),
            "ahttps://x.test <https://x.test>"
        );
        assert_eq!(strip_url_duplicates("1 < 2 > 0"), "1 < 2 > 0");
    }

    #[test]
    fn html_to_clean_text() {
        let html = "<html><head><title>t</title><style>p{color:red}</style></head><body>\
            <p>Hello&nbsp;<b>World</b> &amp; &lt;friends&gt; &#9786; &#x263A;</p>\
            <div>line   one<br>line two</div><script>alert(1)</script>\
            <!-- a comment --><p>see <a href='https://x.test'>the site</a>, \
            <a href=\"https://y.test\">https://y.test</a></p><ul><li>a</li><li>b</li></ul>\
            </body></html>";
        let t = body_to_text("text/html; charset=UTF-8", html.as_bytes()).unwrap();
        assert_eq!(
            t.text,
            "Hello World & <friends> ☺ ☺\nline one\nline two\n\
             see the site (https://x.test), https://y.test\na\nb"
        );
        assert_eq!(t.html.as_deref(), Some(html));
        assert_eq!(html_to_text("a<p></p><p></p><p></p>b"), "a\nb");
        assert_eq!(html_to_text("<pre>  x\n  y</pre>"), "  x\n  y");
        assert_eq!(html_to_text("a<br><br><br>b"), "a\n\nb");
        assert_eq!(html_to_text("<img src='e.gif' alt=':-)'> ok"), ":-) ok");
        assert_eq!(html_to_text("<a href='javascript:x()'>click</a>"), "click");
        assert_eq!(
            html_to_text("a &unknown; &#xZZ; & b"),
            "a &unknown; &#xZZ; & b"
        );
        assert_eq!(html_to_text("x < y"), "x < y");
    }

    #[test]
    fn multipart_alternative_prefers_plain() {
        let body = b"--b1\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nplain text\r\n\
            --b1\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n<p>html <b>text</b></p>\r\n--b1--\r\n";
        let t = body_to_text("multipart/alternative; boundary=\"b1\"", body).unwrap();
        assert_eq!(t.text, "plain text");
        assert_eq!(t.html.as_deref(), Some("<p>html <b>text</b></p>"));

        let html_only = b"preamble\r\n--b2\r\nContent-Type: text/html\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nPHA+SGk8L3A+\r\n--b2\r\n\
            Content-Type: text/rtf\r\n\r\n{\\rtf1 Hi}\r\n--b2--";
        let t = body_to_text("multipart/alternative;boundary=b2", html_only).unwrap();
        assert_eq!(t.text, "Hi");

        let qp = b"--q\nContent-Type: text/plain; charset=ISO-8859-1\n\
            Content-Transfer-Encoding: quoted-printable\n\ncaf=E9 =\nau lait\n--q--\n";
        assert_eq!(
            body_to_text("multipart/alternative; boundary=q", qp)
                .unwrap()
                .text,
            "café au lait"
        );

        let rtf_only = b"--b3\r\nContent-Type: text/rtf\r\n\r\n{\\rtf1}\r\n--b3--";
        assert_eq!(
            body_to_text("multipart/alternative; boundary=b3", rtf_only),
            Err(ImError::NoUsablePart("text/rtf".into()))
        );
        assert_eq!(
            body_to_text("multipart/alternative", body),
            Err(ImError::Multipart("no boundary"))
        );
        assert_eq!(
            body_to_text("multipart/alternative; boundary=zz", body),
            Err(ImError::Multipart("boundary not found"))
        );
        assert_eq!(
            body_to_text(
                "multipart/alternative; boundary=b1",
                b"--b1\r\nContent-Type: text/plain\r\n\r\nx"
            ),
            Err(ImError::Multipart("missing closing boundary"))
        );
    }

    #[test]
    fn unsupported_types_are_named() {
        for ct in [
            "text/rtf",
            "text/x-msmsgsinvite; charset=UTF-8",
            "image/gif",
        ] {
            let want = ct.split(';').next().unwrap().to_owned();
            assert_eq!(body_to_text(ct, b"x"), Err(ImError::Unsupported(want)));
        }
    }

    #[test]
    fn xhtml_im_is_minimal_and_safe() {
        let el = xhtml_im(
            "<div style='x'><p class='c'>Hi <b>bold</b> <i>it</i><br>\
             <a href='https://x.test' onclick='evil()'>link</a> \
             <a href='javascript:evil()'>bad</a><script>evil()</script>\
             <font color=red>red</font></p></div>",
        )
        .unwrap();
        let s = String::from_utf8(el.to_bytes()).unwrap();
        assert_eq!(
            s,
            "<html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'><p>Hi <strong>bold</strong> <em>it</em><br/>\
             <a href='https://x.test'>link</a> <span>bad</span>red</p></body></html>"
        );
        assert_eq!(xhtml_im("<p> </p><script>x</script>"), None);
        // Unclosed elements are closed; stray end tags ignored.
        let s = String::from_utf8(xhtml_im("<b>x</i>y").unwrap().to_bytes()).unwrap();
        assert!(s.contains("<strong>xy</strong>"), "{s}");
    }

    #[test]
    fn languages_and_limit() {
        assert_eq!(
            content_language_to_xml_lang("de-CH, en").as_deref(),
            Some("de-CH")
        );
        assert_eq!(content_language_to_xml_lang(" , fr").as_deref(), Some("fr"));
        assert_eq!(content_language_to_xml_lang("1x"), None);
        assert_eq!(
            xml_lang_to_content_language("en-US").as_deref(),
            Some("en-US")
        );
        assert_eq!(xml_lang_to_content_language("en US"), None);
        assert_eq!(xml_lang_to_content_language(""), None);
        assert_eq!(PAGE_MODE_LIMIT, 1300);
        assert!(!exceeds_page_mode(1300));
        assert!(exceeds_page_mode(1301));
    }

    #[test]
    fn random_markup_never_panics() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        const PIECES: &[&str] = &[
            "<",
            ">",
            "</",
            "/>",
            "<!--",
            "-->",
            "<!",
            "<?",
            "&",
            ";",
            "&#",
            "&#x",
            "amp",
            "\"",
            "'",
            "=",
            " ",
            "\n",
            "a",
            "p",
            "br",
            "script",
            "<script>",
            "</script",
            "href",
            "https://x.test",
            "ü",
            "中",
            "--b",
            "\r\n",
            "Content-Type: text/html",
            "base64",
        ];
        let mut rng = StdRng::seed_from_u64(7572);
        for _ in 0..3000 {
            let n = rng.random_range(0..40);
            let s: String = (0..n)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();
            // Output is plain text (escaped when put into a stanza): only panics matter here.
            let _ = html_to_text(&s);
            let _ = xhtml_im(&s);
            let _ = strip_url_duplicates(&s);
            let _ = body_to_text("multipart/alternative; boundary=b", s.as_bytes());
            let _ = decode_ms_text_format(&s);
            let _ = crate::pidf::from_pidf(s.as_bytes());
            let _ = crate::address::SipUri::parse(&s);
        }
    }
}
