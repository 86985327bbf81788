//! CI profile of the bench: the real `mimid-bench` binary runs each scenario for a second or
//! two at a low load against an in-process node (real quinn on loopback, sled in a temporary
//! directory, openmls clients) and must finish with zero errors and a well-formed JSON report.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str], data_dir: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_mimid-bench"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("mimid-bench starts");
    assert!(
        output.status.success(),
        "mimid-bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Checks one phase of a report: everything accepted, no error of any kind, the histograms
/// hold every success, and the per-second intervals add up to the total.
fn check_phase(phase: &Value, expect_senders: u64) {
    let name = phase["name"].as_str().expect("phase name");
    let ops_ok = phase["ops_ok"].as_u64().expect("ops_ok");
    assert!(ops_ok > 0, "{name}: nothing was accepted");
    assert_eq!(phase["ops_failed"], 0, "{name}: {}", phase["errors"]);
    assert_eq!(phase["errors"], serde_json::json!({}), "{name}");
    assert_eq!(phase["stop_reason"], "duration", "{name}");
    assert_eq!(phase["senders"], expect_senders, "{name}");
    assert_eq!(phase["retired_senders"], 0, "{name}");
    for latency in ["latency_corrected", "latency_raw"] {
        let latency = &phase[latency];
        assert_eq!(latency["count"], ops_ok, "{name}");
        let p50 = latency["p50_us"].as_u64().expect("p50");
        let p99 = latency["p99_us"].as_u64().expect("p99");
        let max = latency["max_us"].as_u64().expect("max");
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{name}: {latency}");
    }
    let intervals = phase["intervals"].as_array().expect("intervals");
    assert!(!intervals.is_empty(), "{name}");
    let interval_ops: u64 = intervals
        .iter()
        .map(|i| i["ops_ok"].as_u64().expect("interval ops"))
        .sum();
    assert_eq!(
        interval_ops, ops_ok,
        "{name}: intervals add up to the total"
    );
    assert!(phase["cpu"]["process_s"].as_f64().is_some(), "{name}");
    assert!(
        phase["cpu"]["server_s"].as_f64().is_some_and(|s| s > 0.0),
        "{name}: the in-process node's CPU is told apart"
    );
    assert!(
        phase["raft"]["applied"].as_u64().is_some(),
        "{name}: the in-process node's Raft counters are reported"
    );
}

#[test]
fn messages_open_model_reports_to_stdout_without_errors_protocol06_5_3() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = bench(
        &[
            "messages",
            "--rooms",
            "4",
            "--rate",
            "40",
            "--duration",
            "1500ms",
            "--no-progress",
        ],
        dir.path(),
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    assert_eq!(report["scenario"], "messages");
    assert_eq!(report["config"]["load_model"], "open");
    assert_eq!(report["config"]["encryption"], "pregenerated");
    assert_eq!(report["node"]["mode"], "in-process");
    assert_eq!(report["node"]["fsync"], true);
    assert!(report["machine"]["nproc"].as_u64().is_some_and(|n| n >= 1));
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 1);
    check_phase(&phases[0], 4);
    assert_eq!(
        phases[0]["pregenerated_messages"], 60,
        "40 ops/s for 1.5 s were encrypted in advance"
    );
    assert_eq!(
        phases[0]["ops_ok"], 60,
        "every scheduled message was accepted"
    );
    // The data directory was a temporary one inside the given parent, and it is gone.
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("readable").count(),
        0,
        "the node's data directory is removed"
    );
}

#[test]
fn commits_closed_model_at_two_group_sizes_writes_the_json_file_rfc9420_12_4() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data parent");
    let json = dir.path().join("report.json");
    let output = bench(
        &[
            "commits",
            "--rooms",
            "3",
            "--group-size",
            "2,3",
            "--concurrency",
            "2",
            "--duration",
            "1s",
            "--json",
            json.to_str().expect("UTF-8 path"),
        ],
        &data,
    );
    assert!(output.stdout.is_empty(), "the report goes to the file");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("p99.9 ms"), "progress lines: {stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("JSON");
    assert_eq!(report["scenario"], "commits");
    assert_eq!(report["config"]["load_model"], "closed");
    assert_eq!(report["config"]["group_sizes"], serde_json::json!([2, 3]));
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2);
    for (phase, members) in phases.iter().zip([2, 3]) {
        assert_eq!(phase["members"], members);
        assert_eq!(phase["workers"], 2);
        check_phase(phase, 3);
        assert_eq!(
            phase["latency_corrected"], phase["latency_raw"],
            "closed model: corrected and raw latency are the same"
        );
    }
}

#[test]
fn cross_provider_open_model_delivers_every_message_to_the_other_provider_protocol06_5_4() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = bench(
        &[
            "cross-provider",
            "--rooms",
            "3",
            "--rate",
            "30",
            "--duration",
            "1500ms",
            "--message-bytes",
            "64",
            "--no-progress",
        ],
        dir.path(),
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    assert_eq!(report["scenario"], "cross-provider");
    assert_eq!(report["config"]["load_model"], "open");
    assert_eq!(report["config"]["members"], 2);
    assert_eq!(report["node"]["mode"], "in-process");
    assert_eq!(
        report["node"]["providers"],
        serde_json::json!(["a.example", "b.example"])
    );
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 1);
    let phase = &phases[0];
    check_phase(phase, 3);
    assert_eq!(
        phase["ops_ok"], 45,
        "every scheduled message reached Bob at the other provider"
    );
    assert!(
        phase["raft_follower"]["applied"].as_u64().is_some(),
        "the follower's Raft counters are reported too: {}",
        phase["raft_follower"]
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("readable").count(),
        0,
        "both providers' data directory is removed"
    );
}
