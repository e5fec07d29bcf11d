//! End-to-end with the real binaries: `reservoir serve` and `reservoir gateway` with their
//! embedded defaults, and the README's curl scan run as written (with `curl` from PATH; without
//! one that assertion is skipped with a note), retried with the same Idempotency-Key.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reservoir_tests::{spawn_until, Spawned};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reservoir"))
}

/// The README's curl example ("HTTP gateway"): the first `sh` block after that heading, its
/// continuation lines joined.
fn readme_curl() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("## HTTP gateway").nth(1).expect("README has an HTTP gateway section");
    let block = section.split("```sh\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a sh block");
    let command = block.replace("\\\n", " ");
    assert!(command.trim_start().starts_with("curl "), "{command}");
    command
}

/// One HTTP/1.1 request over a plain TCP connection (no curl needed); the whole answer.
fn http(address: &str, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn has_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok_and(|output| output.status.success())
}

#[test]
fn the_readme_curl_scan_works_through_the_real_gateway() {
    let directory = tempfile::tempdir().unwrap();
    let server = spawn_until(binary(), &["serve"], directory.path(), "reservoir: serving")
        .unwrap_or_else(|lines| panic!("the server did not start: {lines:?}"));
    let token = server
        .lines
        .iter()
        .find(|line| line.starts_with("tenant \"demo\" token"))
        .and_then(|line| line.split_whitespace().last())
        .expect("the demo token")
        .to_owned();
    // The embedded defaults (127.0.0.1:8080 in front of 127.0.0.1:7878, the CA of
    // ./reservoir-data); another port only if 8080 is taken on this machine.
    let start = |arguments: &[&str]| spawn_until(binary(), arguments, directory.path(), "reservoir: gateway on");
    let mut gateway: Spawned = start(&["gateway"]).or_else(|_| start(&["gateway", "--listen", "127.0.0.1:0"])).unwrap();
    let line = gateway.lines.last().unwrap().clone();
    let address = line.split(" on ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().to_owned();
    assert!(line.ends_with("for 127.0.0.1:7878"), "{line}");

    let health = http(&address, "GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http(&address, "GET /readyz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    let command = readme_curl().replace("127.0.0.1:8080", &address);
    if has_curl() {
        for attempt in ["first", "retry"] {
            let output = Command::new("sh")
                .arg("-c")
                .arg(&command)
                .env("RESERVOIR_TOKEN", &token)
                .current_dir(directory.path())
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let body: serde_json::Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|_| panic!("{attempt}: {}", String::from_utf8_lossy(&output.stdout)));
            assert_eq!((body["code"].as_str(), body["on_hand"].as_i64()), (Some("ok"), Some(12)), "{attempt}: {body}");
        }
    } else {
        println!("note: no curl on PATH: the README's curl example was not run (the same request follows over TCP)");
        let body = r#"{"sku":"SKU-1","location":"DC1","quantity":12}"#;
        let answer = http(
            &address,
            &format!(
                "POST /v1/tenants/demo/receipts HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\n\
                 idempotency-key: scan-0001\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Received once, whatever the retries: the CLI sees 12.
    let output = reservoir_tests::run_in(binary(), &["--token", &token, "stock", "SKU-1"], directory.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stock = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stock.lines().any(|line| line.starts_with("DC1") && line.split_whitespace().nth(1) == Some("12")),
        "{stock}"
    );

    // SIGTERM: the gateway stops cleanly.
    let status = Command::new("kill").arg("-TERM").arg(gateway.child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = gateway.child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    drop(server);
}
