//! End-to-end: the real `reservoir` binary runs W1 in process and reports a clean ledger.

use std::path::Path;

use reservoir_tests::run;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reservoir"))
}

#[test]
fn help_lists_the_subcommands() {
    let output = run(binary(), &["--help"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("bench"), "{text}");
}

#[test]
fn bench_engine_json_matches_the_workload_format_and_checks_the_ledger() {
    for variant in ["uniform", "hot"] {
        let output = run(
            binary(),
            &[
                "bench",
                "engine",
                "--variant",
                variant,
                "--threads",
                "2",
                "--seconds",
                "0.5",
                "--warmup",
                "0.1",
                "--tenants",
                "4",
                "--skus",
                "500",
                "--json",
            ],
        );
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
        assert_eq!(report["workload"], "W1", "{report}");
        assert_eq!(report["check_ok"], true, "{report}");
        assert!(report["ops_per_s"].as_f64().unwrap() > 0.0, "{report}");
    }
}

#[test]
fn bench_engine_refuses_bad_settings_with_an_error() {
    let output = run(binary(), &["bench", "engine", "--threads", "0", "--seconds", "0.1"]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("reservoir:"), "{text}");
}

#[test]
fn bench_memory_reports_bytes_per_item() {
    let output = run(binary(), &["bench", "memory", "--items", "20000", "--reservations", "2000", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert!(report.is_object(), "{report}");
}

#[test]
fn bench_server_runs_w1_over_quic_checks_the_ledger_and_writes_the_histogram() {
    let directory = tempfile::tempdir().unwrap();
    let hist = directory.path().join("w1.hgrm");
    for variant in ["uniform", "hot"] {
        let output = run(
            binary(),
            &[
                "bench",
                "server",
                "--variant",
                variant,
                "--conns",
                "2",
                "--in-flight",
                "4",
                "--batch",
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
                "--hist",
                hist.to_str().unwrap(),
            ],
        );
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["durability"], "durable", "{report}");
        assert_eq!(
            (report["conns"].as_u64(), report["in_flight"].as_u64(), report["batch"].as_u64()),
            (Some(2), Some(4), Some(16))
        );
        assert_eq!(report["check_ok"], true, "{report}");
        assert!(report["ops_per_s"].as_f64().unwrap() > 0.0, "{report}");
    }
    let text = std::fs::read_to_string(&hist).unwrap();
    assert!(text.contains("Percentile") && text.contains("Total count"), "{text}");
    let svg = std::fs::read_to_string(hist.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}
