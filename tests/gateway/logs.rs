//! Text logs written to a file (or journald: anything that is not a terminal) are plain text,
//! without ANSI colour codes.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let pki = Pki::new();
    let a = GwSpec::new(&pki, "a.test");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fedgate.toml");
    std::fs::write(&cfg, format!("{}\n[log]\nformat = \"text\"\n", a.toml())).unwrap();
    let log = dir.path().join("fedgate.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // Up when its metrics listener answers.
    let metrics = format!("{}:9269", a.ip);
    let mut up = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(&metrics).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(up, "the gateway started: {text}");
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape codes in the log file: {text:?}"
    );
    assert!(
        text.contains(" INFO ") && text.contains("shutting down"),
        "{text}"
    );
}
