//! The HTTP listeners as a client meets them: the read-only status listener (`[metrics]
//! listen`) and the admin listener (`[admin]`) over TCP, TLS and a Unix socket, with raw
//! requests and with `fedgate directory`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fedgate::gateway::Gateway;
use fedgate_certs::dev::LeafSpec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::support::*;

/// A gateway of example.test that is intercluster cluster "solo" (no peers), with an admin
/// listener: `admin` makes the lines of its [admin] section from the spec, the token file and
/// a scratch directory.
struct Solo {
    spec: GwSpec,
    token: PathBuf,
    dir: tempfile::TempDir,
}

const TOKEN: &str = "solo-admin-token-0123456789";

impl Solo {
    fn new(pki: &Pki, admin: impl FnOnce(&GwSpec, &str, &Path) -> String) -> Self {
        let mut spec = GwSpec::new(pki, "example.test");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let (cc, ck) = pki.leaf("cluster-solo", &LeafSpec::dns(&["solo"]));
        spec.extra = format!(
            "\n[intercluster]\ncluster = \"solo\"\nlisten = \"{}:7400\"\ncert = {:?}\nkey = {:?}\n",
            spec.ip,
            cc.display().to_string(),
            ck.display().to_string()
        );
        let token_line = format!("token_file = {:?}\n", token.display().to_string());
        spec.admin = Some(admin(&spec, &token_line, dir.path()));
        Self { spec, token, dir }
    }

    /// `fedgate directory --admin <addr> --token-file <token> extra… assign <user>`.
    async fn assign(&self, addr: &str, extra: &[&str], user: &str) -> (Option<i32>, String) {
        let token = self.token.display().to_string();
        let mut args = vec!["directory", "--admin", addr, "--token-file", &token];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["assign", user]);
        fedgate_cli(&args).await
    }
}

/// Where `user` is routed, as `fedgate directory lookup` on the status listener says.
async fn home_of(gw: &Gateway, user: &str) -> serde_json::Value {
    let http = gw.metrics_addr.unwrap().to_string();
    let (code, out) = fedgate_cli(&["directory", "--http", &http, "lookup", user]).await;
    assert_eq!(code, Some(0), "{out}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["home"].clone()
}

/// Writes `request` as is and reads until the server closes: what it answered (lossy UTF-8;
/// a connection reset ends the answer too).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> String {
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no end of answer within {T:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw(addr: SocketAddr, request: &str) -> String {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(s, request.as_bytes()).await
}

/// The status line's code of an answer.
fn code(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or_default()
}

/// A header's value in an answer (name case-insensitive).
fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn assign_request(host: Option<&str>, token: Option<&str>, user: &str) -> String {
    format!(
        "POST /intercluster/assign?user={user} HTTP/1.1\r\n{}{}Content-Length: 0\r\n\r\n",
        host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default(),
        token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default()
    )
}

/// `/metrics`, `/status` and `/healthz` answer GET and HEAD only; admin requests are not
/// taken there, from loopback neither.
#[tokio::test]
async fn the_status_listener_is_read_only() {
    let pki = Pki::new();
    let solo = Solo::new(&pki, |s, token, _| {
        format!("listen = \"{}:9270\"\n{token}", s.ip)
    });
    let gw = solo.spec.start().await;
    let addr = gw.metrics_addr.unwrap();
    for path in ["/metrics", "/status", "/healthz"] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let a = raw(
                addr,
                &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            )
            .await;
            assert_eq!(code(&a), "405", "{method} {path}: {a}");
            assert_eq!(header(&a, "allow"), Some("GET, HEAD"), "{a}");
        }
        let a = raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(code(&a), "200", "{a}");
    }
    let a = raw(addr, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(code(&a), "200", "{a}");
    assert_eq!(header(&a, "content-length"), Some("3"), "{a}");
    assert!(a.ends_with("\r\n\r\n"), "no body: {a:?}");

    // An admin request from loopback with the right token: not here.
    let a = raw(
        addr,
        &assign_request(Some("localhost"), Some(TOKEN), "zoe%40example.test"),
    )
    .await;
    assert_eq!(code(&a), "404", "{a}");
    assert!(a.contains("admin listener"), "{a}");
    assert_eq!(
        home_of(&gw, "zoe@example.test").await,
        serde_json::Value::Null
    );
    gw.shutdown().await;
}

/// A request that is not HTTP, or has a bad header line, gets 400; a head over 8 KiB is not
/// served; a client that sends half a request holds nobody up. Both listeners go on serving.
#[tokio::test]
async fn malformed_requests_get_400_and_the_listeners_keep_serving() {
    let pki = Pki::new();
    let solo = Solo::new(&pki, |s, token, _| {
        format!("listen = \"{}:9270\"\n{token}", s.ip)
    });
    let gw = solo.spec.start().await;
    let status = gw.metrics_addr.unwrap();
    let admin = SocketAddr::new(status.ip(), 9270);
    let half = tokio::net::TcpStream::connect(status).await.unwrap();
    let mut half = half;
    half.write_all(b"GET /metr").await.unwrap();
    for addr in [status, admin] {
        for bad in [
            "HELLO\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nthis line has no colon\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n",
            "\u{1}\u{2}\u{3}\r\n\r\n",
        ] {
            let a = raw(addr, bad).await;
            assert_eq!(code(&a), "400", "{addr} {bad:?}: {a}");
        }
        let big = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
            "f".repeat(10_000)
        );
        let a = raw(addr, &big).await;
        assert!(!a.contains(" 200 "), "{a}");
    }
    let a = raw(status, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((code(&a), a.ends_with("ok\n")), ("200", true), "{a}");
    // The admin listener still answers (and still wants its token).
    let host = admin.to_string();
    let a = raw(
        admin,
        &assign_request(Some(&host), None, "zoe%40example.test"),
    )
    .await;
    assert_eq!(code(&a), "401", "{a}");
    drop(half);
    gw.shutdown().await;
}

/// Every admin request needs the token, from loopback too, and a `Host` the listener answers
/// to (by default its address and localhost); `fedgate directory` sends both.
#[tokio::test]
async fn admin_requests_need_the_token_and_an_allowed_host_even_from_loopback() {
    let pki = Pki::new();
    let solo = Solo::new(&pki, |s, token, _| {
        format!("listen = \"{}:9270\"\n{token}", s.ip)
    });
    let gw = solo.spec.start().await;
    let admin = match gw.admin_addr.clone().unwrap() {
        fedgate::http::admin::AdminAddr::Tcp(a) => a,
        other => panic!("{other}"),
    };
    let host = admin.to_string();
    let zoe = "zoe%40example.test";

    let a = raw(admin, &assign_request(Some(&host), None, zoe)).await;
    assert_eq!(code(&a), "401", "{a}");
    assert_eq!(header(&a, "www-authenticate"), Some("Bearer"), "{a}");
    let a = raw(admin, &assign_request(Some(&host), Some("nope"), zoe)).await;
    assert_eq!(code(&a), "401", "{a}");
    assert!(a.contains("wrong admin token"), "{a}");
    for bad_host in ["evil.test", "evil.test:9270", "127.0.0.1:9270"] {
        let a = raw(admin, &assign_request(Some(bad_host), Some(TOKEN), zoe)).await;
        assert_eq!(code(&a), "403", "{bad_host}: {a}");
        assert!(a.contains("allowed_hosts"), "{a}");
    }
    // HTTP/1.0 without Host.
    let a = raw(
        admin,
        &format!(
            "POST /intercluster/assign?user={zoe} HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(code(&a), "400", "{a}");
    assert_eq!(
        home_of(&gw, "zoe@example.test").await,
        serde_json::Value::Null
    );

    let (code_, out) = solo
        .assign(&host, &["--admin-host", "evil.test"], "zoe@example.test")
        .await;
    assert_eq!(code_, Some(1), "{out}");
    assert!(out.contains("HTTP 403"), "{out}");
    let (code_, out) = solo.assign(&host, &[], "zoe@example.test").await;
    assert_eq!(code_, Some(0), "{out}");
    assert_eq!(home_of(&gw, "zoe@example.test").await, "solo");
    let a = raw(
        admin,
        &assign_request(
            Some(&format!("LocalHost:{}", admin.port())),
            Some(TOKEN),
            "ann%40example.test",
        ),
    )
    .await;
    assert_eq!(code(&a), "200", "{a}");
    assert_eq!(home_of(&gw, "ann@example.test").await, "solo");
    // Reads are not served here.
    let a = raw(
        admin,
        &format!("GET /intercluster/peers HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    )
    .await;
    assert_eq!(code(&a), "404", "{a}");
    gw.shutdown().await;
}

/// `[admin] unix`: the socket is the owner's only, takes the token like TCP, and is removed at
/// shutdown; a socket file left behind is replaced, one a process serves is not.
#[tokio::test]
async fn admin_over_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let solo = Solo::new(&pki, |_, token, dir| {
        format!(
            "unix = {:?}\n{token}",
            dir.join("admin.sock").display().to_string()
        )
    });
    let sock = solo.dir.path().join("admin.sock");
    // Left behind by a gateway that did not stop cleanly.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let gw = solo.spec.start().await;
    assert_eq!(
        gw.admin_addr,
        Some(fedgate::http::admin::AdminAddr::Unix(sock.clone()))
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let a = exchange(
        tokio::net::UnixStream::connect(&sock).await.unwrap(),
        assign_request(Some("localhost"), None, "zoe%40example.test").as_bytes(),
    )
    .await;
    assert_eq!(code(&a), "401", "{a}");
    let addr = format!("unix:{}", sock.display());
    let (code_, out) = solo.assign(&addr, &[], "zoe@example.test").await;
    assert_eq!(code_, Some(0), "{out}");
    assert!(out.contains("\"cluster\": \"solo\""), "{out}");
    assert_eq!(home_of(&gw, "zoe@example.test").await, "solo");

    // A second gateway on the same socket is refused while the first serves it.
    let mut second = GwSpec::new(&pki, "example.test");
    second.admin = solo.spec.admin.clone();
    let e = second.start_error().await;
    assert!(
        e.contains("admin.unix") && e.contains("another process"),
        "{e}"
    );
    gw.shutdown().await;
    assert!(!sock.exists(), "removed at shutdown");
}

/// `[admin] cert`/`key`: HTTPS; `fedgate directory --admin-ca` checks the certificate against
/// the CA and the name given with --admin-host. Plain HTTP, or another CA, gets nowhere.
#[tokio::test]
async fn admin_over_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("admin-solo", &LeafSpec::dns(&["admin.solo.test"]));
    let solo = Solo::new(&pki, |s, token, _| {
        format!(
            "listen = \"{}:9270\"\n{token}cert = {:?}\nkey = {:?}\nallowed_hosts = [\"admin.solo.test\"]\n",
            s.ip,
            cert.display().to_string(),
            key.display().to_string()
        )
    });
    let gw = solo.spec.start().await;
    let addr = gw.admin_addr.as_ref().unwrap().to_string();
    let ca = pki.ca_path().display().to_string();
    let tls = ["--admin-ca", &ca, "--admin-host", "admin.solo.test"];

    let (code_, out) = solo.assign(&addr, &tls, "zoe@example.test").await;
    assert_eq!(code_, Some(0), "{out}");
    assert_eq!(home_of(&gw, "zoe@example.test").await, "solo");

    let (code_, out) = solo
        .assign(
            &addr,
            &["--admin-host", "admin.solo.test"],
            "ann@example.test",
        )
        .await;
    assert_eq!(code_, Some(1), "plain HTTP to the TLS listener: {out}");
    let other = Pki::new();
    let other_ca = other.ca_path().display().to_string();
    let (code_, out) = solo
        .assign(
            &addr,
            &["--admin-ca", &other_ca, "--admin-host", "admin.solo.test"],
            "ann@example.test",
        )
        .await;
    assert_eq!(code_, Some(1), "{out}");
    assert!(out.contains("TLS"), "{out}");
    // The certificate does not name the address.
    let (code_, out) = solo
        .assign(&addr, &["--admin-ca", &ca], "ann@example.test")
        .await;
    assert_eq!(code_, Some(1), "{out}");
    assert_eq!(
        home_of(&gw, "ann@example.test").await,
        serde_json::Value::Null
    );
    gw.shutdown().await;
}
