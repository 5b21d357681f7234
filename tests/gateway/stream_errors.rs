//! Stream errors as a strict peer sees them on the wire (RFC 6120 §4.9, issue 12): a raw TCP
//! client sends bad input, reads every byte the gateway sends until the connection ends, and
//! parses it with an independent strict XML parser (the `xml` crate, not fedgate's own). The
//! answer must be one well-formed document: the gateway's stream header binding the `stream`
//! prefix, exactly one `<stream:error>` with the expected condition in the streams namespace,
//! `</stream:stream>` and nothing after it; and the connection must end with a FIN (EOF), not a
//! reset, also while the client is still writing.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use xml::reader::{EventReader, XmlEvent};

use super::support::*;

const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// A correct s2s stream header but for `attrs` (which carry `to`, `from`, `version`).
fn s2s_header(attrs: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='{NS_STREAM}' xmlns:db='jabber:server:dialback' {attrs}>"
    )
}

/// How the read of the gateway's answer ended.
#[derive(Debug)]
enum End {
    /// The gateway closed with a FIN.
    Eof,
    /// A read error: a reset means the gateway's last words may be lost.
    Error(#[allow(dead_code, reason = "shown by Debug in failure messages")] io::Error),
    /// The gateway neither closed nor answered in time.
    Timeout,
}

/// Everything the gateway sends until the connection ends.
async fn read_answer(rd: OwnedReadHalf) -> (Vec<u8>, End) {
    read_to_end(rd).await
}

/// Everything `rd` yields until it ends (over TLS: until the gateway's `close_notify`).
async fn read_to_end(mut rd: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::timeout(T, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return End::Eof,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return End::Error(e),
            }
        }
    })
    .await
    .unwrap_or(End::Timeout);
    (got, end)
}

/// Connects to `addr`, sends `input`, then reads the answer to its end.
async fn exchange(addr: (Ipv4Addr, u16), input: &[u8]) -> (Vec<u8>, End) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = tcp.into_split();
    // The gateway may close before it read everything: a failed write is not the point here.
    let _ = wr.write_all(input).await;
    let answer = read_answer(rd).await;
    drop(wr);
    answer
}

/// Checks `bytes` with a strict parser as one stream document that ends with the stream error
/// `condition`; the error message names `case`.
fn assert_stream_error(case: &str, bytes: &[u8], end: &End, content_ns: &str, condition: &str) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        matches!(end, End::Eof),
        "{case}: the connection must end with a FIN, not {end:?}; got: {text}"
    );
    assert!(
        text.starts_with("<?xml version='1.0'?><stream:stream "),
        "{case}: the answer must open with our stream header: {text}"
    );
    assert!(
        text.ends_with("</stream:stream>"),
        "{case}: nothing may follow </stream:stream>: {text}"
    );
    let mut depth = 0usize;
    let mut errors = Vec::new();
    // Inside a <stream:error>: the defined conditions seen so far.
    let mut in_error: Option<Vec<String>> = None;
    let mut stream_closed = false;
    for ev in EventReader::new(bytes) {
        let ev = ev.unwrap_or_else(|e| panic!("{case}: not well-formed XML ({e}): {text}"));
        match ev {
            XmlEvent::StartElement {
                name, namespace, ..
            } => {
                let ns = name.namespace.as_deref();
                if depth == 0 {
                    assert_eq!(
                        (name.local_name.as_str(), ns, name.prefix.as_deref()),
                        ("stream", Some(NS_STREAM), Some("stream")),
                        "{case}: the root must be our <stream:stream>: {text}"
                    );
                    assert_eq!(
                        namespace.get(""),
                        Some(content_ns),
                        "{case}: the stream's content namespace: {text}"
                    );
                } else if depth == 1 && ns == Some(NS_STREAM) && name.local_name == "error" {
                    in_error = Some(Vec::new());
                } else if depth == 2
                    && let Some(conds) = in_error.as_mut()
                {
                    assert_eq!(
                        ns,
                        Some(NS_STREAMS),
                        "{case}: children of <stream:error> are in the streams namespace: {text}"
                    );
                    if name.local_name != "text" {
                        conds.push(name.local_name.clone());
                    }
                }
                depth += 1;
            }
            XmlEvent::EndElement { .. } => {
                depth -= 1;
                if depth == 1
                    && let Some(conds) = in_error.take()
                {
                    errors.push(conds);
                }
                if depth == 0 {
                    stream_closed = true;
                }
            }
            XmlEvent::EndDocument => break,
            _ => {}
        }
    }
    assert!(stream_closed, "{case}: the stream must be closed: {text}");
    assert_eq!(
        errors,
        vec![vec![condition.to_owned()]],
        "{case}: exactly one <stream:error> with exactly one defined condition: {text}"
    );
}

/// Errors before fedgate's header (garbage, the wrong streams namespace), at the header
/// (wrong content namespace, no `to`, an unknown `to`, an unsupported version) and after it
/// (not-well-formed XML): each a well-formed stream document that ends with the error and a
/// FIN. The same for the component port.
#[tokio::test]
async fn every_stream_error_is_a_well_formed_document() {
    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let gb = b.start().await;
    let s2s = (b.ip, 5269);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "garbage before any header",
            "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n".into(),
            "not-well-formed",
        ),
        (
            "the wrong streams namespace",
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='urn:not-the-streams-namespace' to='b.test' from='r.test' version='1.0'>"
                .into(),
            "invalid-namespace",
        ),
        (
            "the wrong content namespace",
            s2s_header("to='b.test' from='r.test' version='1.0'")
                .replace("xmlns='jabber:server'", "xmlns='jabber:client'"),
            "invalid-namespace",
        ),
        (
            "a header without to",
            s2s_header("from='r.test' version='1.0'"),
            "host-unknown",
        ),
        (
            "a to that is not served here",
            s2s_header("to='nothere.test' from='r.test' version='1.0'"),
            "host-unknown",
        ),
        (
            "an unsupported version",
            s2s_header("to='b.test' from='r.test' version='2.0'"),
            "unsupported-version",
        ),
        (
            "not-well-formed XML after the header",
            s2s_header("to='b.test' from='r.test' version='1.0'")
                + "<message to='x@b.test' from='y@r.test'><body>hi</bod></message>",
            "not-well-formed",
        ),
    ];
    for (case, input, condition) in &cases {
        let (bytes, end) = exchange(s2s, input.as_bytes()).await;
        assert_stream_error(case, &bytes, &end, "jabber:server", condition);
    }

    let component = gb.component_addr.unwrap();
    let component = match component.ip() {
        std::net::IpAddr::V4(ip) => (ip, component.port()),
        std::net::IpAddr::V6(_) => unreachable!("tests bind 127.0.0.0/8"),
    };
    let (bytes, end) = exchange(component, b"\x00\x01 not xml").await;
    assert_stream_error(
        "garbage on the component port",
        &bytes,
        &end,
        "jabber:component:accept",
        "not-well-formed",
    );
    gb.shutdown().await;
}

/// A stanza over the size limit while the client keeps writing (a further 1 MB after it): the
/// gateway stops reading mid-stanza, and the client must still read the whole error and a FIN
/// instead of a reset that would destroy it.
#[tokio::test]
async fn an_oversized_stanza_is_answered_while_the_client_keeps_writing() {
    let pki = Pki::new();
    let b = GwSpec::new(&pki, "b.test");
    let gb = b.start().await;
    let tcp = TcpStream::connect((b.ip, 5269)).await.unwrap();
    let (rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        let head = s2s_header("to='b.test' from='r.test' version='1.0'")
            + "<message to='x@b.test' from='y@r.test'><body>";
        if wr.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        // Over every stanza limit (the pre-authentication one and the default 256 KiB),
        // and then a further 1 MB.
        let chunk = [b'y'; 16 * 1024];
        while sent < 300 * 1024 + 1024 * 1024 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let (bytes, end) = read_answer(rd).await;
    assert_stream_error(
        "an oversized stanza",
        &bytes,
        &end,
        "jabber:server",
        "policy-violation",
    );
    // The writer ends either way (written all, or refused once the gateway let go).
    let mut writer = writer;
    let sent = match tokio::time::timeout(Duration::from_secs(10), &mut writer).await {
        Ok(sent) => sent.unwrap(),
        Err(_) => {
            writer.abort();
            panic!("the writer did not end");
        }
    };
    assert!(sent > 0);
    gb.shutdown().await;
}

/// A TLS client that trusts the test CA (`alpn`: the protocols offered, for direct TLS).
fn tls_connector(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(pki.ca_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// Reads from `tcp` until what was read so far contains `marker`.
async fn read_until(tcp: &mut TcpStream, marker: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(T, async {
        while !String::from_utf8_lossy(&got).contains(marker) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {marker}: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {marker}: {}", String::from_utf8_lossy(&got)));
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `input` on the TLS stream and reads the answer until the gateway's `close_notify`;
/// then the TCP connection under it must end with a FIN, not a reset.
async fn tls_exchange(
    mut tls: tokio_rustls::client::TlsStream<TcpStream>,
    input: &[u8],
) -> (Vec<u8>, End) {
    let _ = tls.write_all(input).await;
    let _ = tls.flush().await;
    let (bytes, end) = read_to_end(&mut tls).await;
    if !matches!(end, End::Eof) {
        return (bytes, end);
    }
    // After close_notify: the transport itself closes with a FIN (EOF), not a reset.
    let (tcp, _) = tls.get_mut();
    let mut rest = [0u8; 64];
    let tcp_end = match tokio::time::timeout(T, tcp.read(&mut rest)).await {
        Ok(Ok(0)) => End::Eof,
        Ok(Ok(n)) => End::Error(io::Error::other(format!("{n} bytes after close_notify"))),
        Ok(Err(e)) => End::Error(e),
        Err(_) => End::Timeout,
    };
    (bytes, tcp_end)
}

/// STARTTLS on a fresh connection: the first stream's header and features, `<starttls/>`,
/// `<proceed/>`, the TLS handshake for b.test.
async fn starttls(
    addr: (Ipv4Addr, u16),
    tls: &tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(s2s_header("to='b.test' from='r.test' version='1.0'").as_bytes())
        .await
        .unwrap();
    let features = read_until(&mut tcp, "</stream:features>").await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-tls"),
        "{features}"
    );
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap();
    read_until(&mut tcp, "<proceed").await;
    let name = rustls_pki_types::ServerName::try_from("b.test").unwrap();
    tls.connect(name, tcp).await.unwrap()
}

/// The same checks after TLS: on the stream that STARTTLS restarts, and on a direct TLS
/// (XEP-0368) listener. The gateway's answer is a new stream document of its own (its header
/// first), with one error and its closing tag and nothing after, then TLS `close_notify` and
/// a TCP FIN.
#[tokio::test]
async fn stream_errors_after_tls_are_well_formed_documents() {
    let pki = Pki::new();
    let mut b = GwSpec::new(&pki, "b.test");
    b.extra_s2s = format!("direct_tls_listen = [\"{}:5270\"]\n", b.ip);
    let gb = b.start().await;
    let s2s = (b.ip, 5269);
    let connector = tls_connector(&pki, &[]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "after STARTTLS: a new header for a host not served here",
            s2s_header("to='nothere.test' from='r.test' version='1.0'"),
            "host-unknown",
        ),
        (
            "after STARTTLS: garbage instead of the new header",
            "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n".into(),
            "not-well-formed",
        ),
        (
            "after STARTTLS: not-well-formed XML on the new stream",
            s2s_header("to='b.test' from='r.test' version='1.0'")
                + "<message to='x@b.test' from='y@r.test'><body>hi</bod></message>",
            "not-well-formed",
        ),
        (
            "after STARTTLS: an unsupported version on the new stream",
            s2s_header("to='b.test' from='r.test' version='2.0'"),
            "unsupported-version",
        ),
    ];
    for (case, input, condition) in &cases {
        let tls = starttls(s2s, &connector).await;
        let (bytes, end) = tls_exchange(tls, input.as_bytes()).await;
        assert_stream_error(case, &bytes, &end, "jabber:server", condition);
    }

    let direct = tls_connector(&pki, &[b"xmpp-server"]);
    let direct_cases: Vec<(&str, String, &str)> = vec![
        (
            "direct TLS: garbage before any header",
            "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n".into(),
            "not-well-formed",
        ),
        (
            "direct TLS: a header for a host not served here",
            s2s_header("to='nothere.test' from='r.test' version='1.0'"),
            "host-unknown",
        ),
    ];
    for (case, input, condition) in &direct_cases {
        let tcp = TcpStream::connect((b.ip, 5270)).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("b.test").unwrap();
        let tls = direct.connect(name, tcp).await.unwrap();
        let (bytes, end) = tls_exchange(tls, input.as_bytes()).await;
        assert_stream_error(case, &bytes, &end, "jabber:server", condition);
    }
    gb.shutdown().await;
}
