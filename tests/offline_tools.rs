//! End-to-end: `reservoir bench engine --data-dir` writes a real durable log; `reservoir verify`
//! and `reservoir wal dump` read it back; a corrupt record makes `verify` fail with its place.

use std::path::Path;

use reservoir_tests::run;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reservoir"))
}

fn bench_into(directory: &Path) {
    let data = directory.to_str().unwrap();
    let output = run(
        binary(),
        &[
            "bench",
            "engine",
            "--data-dir",
            data,
            "--threads",
            "2",
            "--in-flight",
            "16",
            "--seconds",
            "0.5",
            "--warmup",
            "0.1",
            "--tenants",
            "2",
            "--skus",
            "50",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["durability"], "durable", "{report}");
    assert_eq!(report["in_flight"], 16, "{report}");
    assert_eq!(report["check_ok"], true, "{report}");
}

#[test]
fn verify_and_dump_read_back_what_a_durable_run_wrote() {
    let directory = tempfile::tempdir().unwrap();
    bench_into(directory.path());
    let data = directory.path().to_str().unwrap();

    let verify = run(binary(), &["verify", "--data-dir", data]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}\n{}", String::from_utf8_lossy(&verify.stderr));
    assert!(text.contains("verify     ok"), "{text}");
    assert!(text.contains("tenant-0001"), "{text}");

    let dump = run(binary(), &["wal", "dump", "--data-dir", data, "--from-lsn", "1", "--to-lsn", "3"]);
    assert!(dump.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&dump.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("lsn=1 ") && lines[0].contains("tenant_created"), "{lines:?}");

    let only = run(binary(), &["wal", "dump", "--data-dir", data, "--tenant", "tenant-0001"]);
    let text = String::from_utf8_lossy(&only.stdout);
    assert!(text.lines().count() > 10);
    assert!(text
        .lines()
        .filter(|line| !line.contains("tenant_created"))
        .all(|line| line.contains("tenant=tenant-0001")));
}

#[test]
fn verify_refuses_a_log_with_a_corrupt_middle_record() {
    let directory = tempfile::tempdir().unwrap();
    bench_into(directory.path());
    let segment = directory.path().join("wal").join("0000000000000000.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte well inside the written part: the import records at the start are large.
    bytes[64 + 200] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let verify = run(binary(), &["verify", "--data-dir", directory.path().to_str().unwrap()]);
    assert!(!verify.status.success());
    let text = String::from_utf8_lossy(&verify.stderr);
    assert!(text.contains("0000000000000000.wal at offset"), "{text}");
    assert!(text.contains("--to-lsn"), "{text}");
}

#[test]
fn verify_of_a_directory_without_a_log_is_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let verify = run(binary(), &["verify", "--data-dir", directory.path().to_str().unwrap()]);
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stderr).contains("is not a data directory"));
}

#[test]
fn snapshot_then_verify_starts_from_the_snapshot() {
    let directory = tempfile::tempdir().unwrap();
    bench_into(directory.path());
    let data = directory.path().to_str().unwrap();
    let snapshot = run(binary(), &["snapshot", "--data-dir", data]);
    assert!(snapshot.status.success(), "{}", String::from_utf8_lossy(&snapshot.stderr));
    let verify = run(binary(), &["verify", "--data-dir", data]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    assert!(text.contains("snapshot   covers LSN 1..="), "{text}");
    assert!(text.contains("(0 records in"), "everything was in the snapshot: {text}");
    assert!(text.contains("verify     ok"), "{text}");
}

/// `verify` of a directory whose rewind a crash cut short (zeros past the fork, then valid
/// frames) checks the state the next start will recover, up to the kept LSN, instead of
/// refusing the half-cut tail as corruption.
#[test]
fn verify_of_a_directory_with_an_interrupted_rewind_checks_the_log_up_to_the_kept_lsn() {
    use reservoir_wal::format::{decode_frame, Frame, SEGMENT_HEADER_BYTES};
    let directory = tempfile::tempdir().unwrap();
    bench_into(directory.path());
    let segment = directory.path().join("wal").join("0000000000000000.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut frames = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while let (Frame::Record { record, .. }, length) = decode_frame(&bytes[offset..]) {
        frames.push((offset, record.lsn.0));
        offset += length;
    }
    assert!(frames.len() > 200, "{} frames", frames.len());
    let (cut_offset, first_cut) = frames[frames.len() / 2];
    bytes[cut_offset..cut_offset + 4_096].fill(0);
    std::fs::write(&segment, bytes).unwrap();
    let data = directory.path().to_str().unwrap();
    let refused = run(binary(), &["verify", "--data-dir", data]);
    assert!(!refused.status.success(), "zeros before valid frames read as corruption without the intent");

    reservoir_wal::rejoin::write_rewind_intent(directory.path(), reservoir_engine::Lsn(first_cut - 1)).unwrap();
    let verify = run(binary(), &["verify", "--data-dir", data]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}\n{}", String::from_utf8_lossy(&verify.stderr));
    assert!(text.contains(&format!("kept through LSN {}", first_cut - 1)), "{text}");
    assert!(text.contains(&format!("the log holds LSN 1..={}", first_cut - 1)), "{text}");
    assert!(text.contains("verify     ok"), "{text}");
}
