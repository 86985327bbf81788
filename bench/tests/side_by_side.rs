//! CI profile of the side-by-side peers and of commit-floor (issue 5 items 4 and 5): the real
//! `mimid-bench` binary starts a three-node NATS JetStream cluster and a three-member etcd
//! cluster as child processes (Debian's `nats-server` and `etcd`, installed by `.ci/run`),
//! drives each for two seconds with the bench's load engine, and must write a well-formed
//! report with every operation acknowledged, nothing failed, every acknowledged message
//! delivered to the subscribers, and no server process or data left behind. commit-floor runs
//! at group sizes 2 and 16 for a second each. Each writes `--out-dir` too, checked as the
//! scenarios' (`common`).
//!
//! The bench runs in its own process group; the guard kills the whole group if a test fails
//! or times out, so no server outlives a test.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{check_out_dir, check_out_dir_of};

/// Time allowed to one bench run (cluster start, set-up, a short phase, shutdown).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// A `mimid-bench` child in its own process group, killed with everything it started when
/// dropped.
struct BenchRun {
    child: Child,
}

impl Drop for BenchRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // The negative pid names the process group (the bench and its servers).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mimid-bench args`, its output in files under `dir`; returns the exit status and
/// stderr once it ended (or panics at the timeout, killing it).
fn bench(args: &[&str], dir: &Path) -> (ExitStatus, String) {
    let stdout = std::fs::File::create(dir.join("stdout")).expect("stdout file");
    let stderr_path = dir.join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let child = Command::new(env!("CARGO_BIN_EXE_mimid-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("mimid-bench starts");
    let mut run = BenchRun { child };
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = run.child.try_wait().expect("waitable") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mimid-bench {args:?} still running after {RUN_TIMEOUT:?}:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(run);
    (
        status,
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

fn bench_ok(args: &[&str], dir: &Path) -> String {
    let (status, stderr) = bench(args, dir);
    assert!(status.success(), "mimid-bench {args:?} failed:\n{stderr}");
    stderr
}

/// Processes whose command line mentions `path`: the servers started under it.
fn processes_under(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

fn report_of(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("report written")).expect("JSON report")
}

/// A peer's report: the three-node cluster, every operation acknowledged, nothing failed, the
/// same histograms and intervals as the scenarios, and every acknowledged message delivered.
fn check_peer_report(report: &Value, scenario: &str, model: &str) {
    assert_eq!(report["tool"], "mimid-bench");
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["config"]["load_model"], model);
    assert_eq!(report["config"]["message_bytes"], 256);
    assert_eq!(report["system"]["nodes"], 3);
    assert_eq!(report["system"]["replicas"], 3);
    assert!(report["system"]["durability"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert!(report["machine"]["nproc"].as_u64().is_some_and(|n| n >= 1));
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 1);
    let phase = &phases[0];
    let ops_ok = phase["ops_ok"].as_u64().expect("ops_ok");
    assert!(ops_ok > 0, "{scenario}: nothing was acknowledged");
    assert_eq!(phase["ops_failed"], 0, "{scenario}: {}", phase["errors"]);
    assert_eq!(phase["errors"], serde_json::json!({}), "{scenario}");
    assert_eq!(phase["stop_reason"], "duration", "{scenario}");
    assert_eq!(phase["senders"], 6, "{scenario}");
    for latency in ["latency_corrected", "latency_raw"] {
        let latency = &phase[latency];
        assert_eq!(latency["count"], ops_ok, "{scenario}");
        let p50 = latency["p50_us"].as_u64().expect("p50");
        let p99 = latency["p99_us"].as_u64().expect("p99");
        assert!(0 < p50 && p50 <= p99, "{scenario}: {latency}");
    }
    let interval_ops: u64 = phase["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|i| i["ops_ok"].as_u64().expect("interval ops"))
        .sum();
    assert_eq!(interval_ops, ops_ok, "{scenario}: intervals add up");
    assert!(
        phase["cpu"]["server_s"].as_f64().is_some_and(|s| s > 0.0),
        "{scenario}: the servers' CPU is read: {}",
        phase["cpu"]
    );
    assert_eq!(
        phase["cpu"]["server_nodes_s"].as_array().map(Vec::len),
        Some(3)
    );
    let stored = phase["stored"].as_u64().expect("stored");
    assert!(
        stored >= ops_ok,
        "{scenario}: the servers stored {stored} of {ops_ok} acknowledged"
    );
    let delivery = &phase["delivery"];
    assert_eq!(delivery["receivers"], 3, "{scenario}: {delivery}");
    assert_eq!(delivery["caught_up"], true, "{scenario}: {delivery}");
    assert_eq!(delivery["streams_lost"], 0, "{scenario}: {delivery}");
    assert!(
        delivery["delivered"].as_u64().expect("delivered") >= ops_ok,
        "{scenario}: {delivery}"
    );
}

fn run_peer(scenario: &str, load: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data parent");
    let json = dir.path().join("report.json");
    let out_dir = dir.path().join("out");
    let mut args = vec![
        scenario,
        "--rooms",
        "6",
        "--duration",
        "2s",
        "--no-progress",
    ];
    args.extend_from_slice(load);
    let data_arg = data.to_str().expect("UTF-8 path");
    let json_arg = json.to_str().expect("UTF-8 path");
    let out_arg = out_dir.to_str().expect("UTF-8 path");
    args.extend_from_slice(&[
        "--data-dir",
        data_arg,
        "--json",
        json_arg,
        "--out-dir",
        out_arg,
    ]);
    bench_ok(&args, dir.path());
    assert_eq!(
        std::fs::read_dir(&data).expect("readable").count(),
        0,
        "{scenario}: the cluster's directory is removed"
    );
    assert_eq!(
        processes_under(&data),
        Vec::<String>::new(),
        "{scenario}: no server outlives the run"
    );
    let report = report_of(&json);
    check_out_dir(&out_dir, &report);
    report
}

#[test]
fn nats_jetstream_r3_closed_model_acknowledges_and_delivers_everything() {
    let report = run_peer("nats", &["--concurrency", "6"]);
    check_peer_report(&report, "nats", "closed");
    assert_eq!(report["system"]["name"], "nats-jetstream");
    assert!(
        report["system"]["durability"]
            .as_str()
            .is_some_and(|d| d.contains("without fsync")),
        "JetStream 2.9.10 cannot fsync before its PubAck, and the report says so"
    );
}

#[test]
fn etcd_three_members_open_model_acknowledges_and_delivers_everything() {
    let report = run_peer("etcd", &["--rate", "150"]);
    check_peer_report(&report, "etcd", "open");
    assert_eq!(report["system"]["name"], "etcd");
    let ops_ok = report["phases"][0]["ops_ok"].as_u64().expect("ops_ok");
    assert_eq!(ops_ok, 300, "150 puts/s for 2 s, every one acknowledged");
}

#[test]
fn a_missing_server_binary_fails_with_its_name() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-such-nats-server");
    let (status, stderr) = bench(
        &[
            "nats",
            "--rooms",
            "2",
            "--duration",
            "1s",
            "--binary",
            missing.to_str().expect("UTF-8 path"),
        ],
        dir.path(),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("no nats-server binary at"),
        "the error names what is missing: {stderr}"
    );
}

#[test]
fn compare_reads_the_peer_reports_into_a_ratio_table() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = run_peer("etcd", &["--concurrency", "6", "--no-subscribers"]);
    let phase = &report["phases"][0];
    assert!(phase["delivery"].is_null(), "no watchers: {phase}");
    let etcd = dir.path().join("etcd.json");
    std::fs::write(&etcd, report.to_string()).expect("written");
    // The etcd report stands in for mimid's too: compare only reads the common fields.
    let comparison = dir.path().join("compare.json");
    let stderr = bench_ok(
        &[
            "compare",
            "--mimid",
            etcd.to_str().expect("UTF-8"),
            "--etcd",
            etcd.to_str().expect("UTF-8"),
            "--json",
            comparison.to_str().expect("UTF-8"),
        ],
        dir.path(),
    );
    assert!(stderr.contains("msg/s"), "the table: {stderr}");
    let comparison = report_of(&comparison);
    assert_eq!(comparison["systems"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        comparison["systems"][1]["ops_ok"],
        report["phases"][0]["ops_ok"]
    );
    assert_eq!(comparison["ratios"][0]["throughput"], 1.0, "{comparison}");
    assert_eq!(comparison["ratios"][0]["denominator"], "etcd");
}

/// commit-floor at group sizes 2 and 16: mimid's commits scenario and the openmls floor both
/// accept every Commit (RFC 9420 §12.4 self-updates), and the report has the ratios and the
/// scaling fit.
#[test]
fn commit_floor_at_two_and_sixteen_members_rfc9420_12_4() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data: PathBuf = dir.path().join("data");
    std::fs::create_dir(&data).expect("data parent");
    let json = dir.path().join("floor.json");
    let out_dir = dir.path().join("out");
    bench_ok(
        &[
            "commit-floor",
            "--group-size",
            "2,16",
            "--rooms",
            "2",
            "--floor-commits",
            "20",
            "--floor-budget",
            "300ms",
            "--duration",
            "1s",
            "--no-progress",
            "--data-dir",
            data.to_str().expect("UTF-8"),
            "--json",
            json.to_str().expect("UTF-8"),
            "--out-dir",
            out_dir.to_str().expect("UTF-8"),
        ],
        dir.path(),
    );
    let report = report_of(&json);
    assert_eq!(report["scenario"], "commit-floor");
    // mimid's side at each size is a timed phase, written as the scenarios' phases are.
    let phases: Vec<Value> = report["sizes"]
        .as_array()
        .expect("sizes")
        .iter()
        .map(|size| {
            let mut phase = size["mimid"].clone();
            phase["name"] = format!("commit-floor group_size={}", size["group_size"]).into();
            phase
        })
        .collect();
    check_out_dir_of(&out_dir, &report, &phases);
    let sizes = report["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 2);
    for (size, expected) in sizes.iter().zip([2, 16]) {
        assert_eq!(size["group_size"], expected);
        let floor = &size["floor"];
        let commits = floor["commits"].as_u64().expect("commits");
        assert!((5..=20).contains(&commits), "{floor}");
        for pass in ["hub_storage", "no_storage"] {
            assert_eq!(floor[pass]["latency"]["count"], commits, "{pass}: {floor}");
            assert!(floor[pass]["commits_per_s"]
                .as_f64()
                .is_some_and(|c| c > 0.0));
        }
        let mimid = &size["mimid"];
        assert!(mimid["ops_ok"].as_u64().is_some_and(|n| n > 0), "{mimid}");
        assert_eq!(mimid["ops_failed"], 0, "{mimid}");
        assert_eq!(mimid["rooms"], 2);
        assert!(mimid["raft_thread_cpu_us_per_commit"].as_f64().is_some());
        let generator = mimid["generator_threads"].as_array().expect("groups");
        assert!(generator.iter().any(|g| g == "bench-client"), "{mimid}");
        assert!(
            mimid["server_threads"]
                .as_array()
                .expect("groups")
                .iter()
                .all(|g| g.as_str().is_some_and(|g| !g.starts_with("bench-"))),
            "{mimid}"
        );
        if expected == 16 {
            assert!(
                generator.iter().any(|g| g == "bench-rayon"),
                "openmls encrypts a 16-member UpdatePath on rayon's pool: {mimid}"
            );
        }
        assert!(size["ratios"]["throughput"]
            .as_f64()
            .is_some_and(|r| r > 0.0));
    }
    let fit = &report["scaling"]["hub_storage"];
    assert_eq!(fit["log_log_slopes"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        std::fs::read_dir(&data).expect("readable").count(),
        0,
        "every node's data directory is removed"
    );
}
