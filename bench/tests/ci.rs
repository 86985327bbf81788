//! CI profile of the bench: the real `mimid-bench` binary runs each scenario for a second or
//! two at a low load against in-process nodes (real quinn on loopback, sled in a temporary
//! directory, openmls clients), or for idle-density against a real `mimid` child process, and
//! must finish with zero errors and a well-formed JSON report. Every scenario's run writes
//! `--out-dir`, and its files must be there and well-formed: for the timed scenarios the CSVs,
//! HdrHistogram interval logs and PNGs; for idle-density the samples' CSV and its two PNGs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

mod common;
use common::{check_out_dir, check_png};

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
    check_cpu(phase);
    assert!(
        phase["raft"]["applied"].as_u64().is_some(),
        "{name}: the in-process node's Raft counters are reported"
    );
}

/// Checks a phase's CPU attribution: the generator is its `bench-` threads (the clients'
/// runtime, rayon's pool, the main thread), the in-process node every other thread, and the
/// two add up to the threads' total.
fn check_cpu(phase: &Value) {
    let name = phase["name"].as_str().expect("phase name");
    let cpu = &phase["cpu"];
    assert!(cpu["process_s"].as_f64().is_some(), "{name}");
    let server_s = cpu["server_s"].as_f64().expect("server_s");
    assert!(
        server_s > 0.0,
        "{name}: the in-process node's CPU is told apart"
    );
    let generator_s = cpu["generator_s"].as_f64().expect("generator_s");
    let groups = |key: &str| -> Vec<String> {
        cpu[key]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {key}: {cpu}"))
            .iter()
            .map(|g| g.as_str().expect("a thread group").to_string())
            .collect()
    };
    let (generator, server) = (groups("generator_threads"), groups("server_threads"));
    assert!(
        generator.contains(&"bench-client".to_string()),
        "{name}: {cpu}"
    );
    for group in &generator {
        assert!(
            ["bench-client", "bench-rayon", "bench-main"].contains(&group.as_str()),
            "{name}: {group} is not the generator's: {cpu}"
        );
    }
    assert!(
        server.iter().all(|group| !group.starts_with("bench-")),
        "{name}: a generator thread counted as the node's: {cpu}"
    );
    assert!(
        server.iter().any(|group| group == "mimid-raft"),
        "{name}: {cpu}"
    );
    let threads = cpu["threads_s"].as_object().expect("threads_s");
    let sum = |groups: &[String]| -> f64 {
        groups
            .iter()
            .map(|g| threads[g.as_str()].as_f64().expect("seconds"))
            .sum()
    };
    assert!(
        (sum(&generator) - generator_s).abs() < 0.002 && (sum(&server) - server_s).abs() < 0.002,
        "{name}: generator_s and server_s are their groups' sums: {cpu}"
    );
    assert_eq!(
        generator.len() + server.len(),
        threads.len(),
        "{name}: every thread group is counted once: {cpu}"
    );
}

/// Checks idle-density's `--out-dir` for `report` (its JSON): summary.json is the report;
/// samples.csv has its header and rows of the baseline (no room yet), the creation (rooms
/// rising to every room) and the idle window (every room), in time order; rss.png has one
/// panel and timeline.png two.
fn check_density_out_dir(dir: &Path, report: &Value) {
    let summary: Value = serde_json::from_slice(
        &std::fs::read(dir.join("summary.json")).expect("summary.json written"),
    )
    .expect("summary.json is JSON");
    assert_eq!(&summary, report, "summary.json is the report");
    let rooms = report["config"]["rooms"].as_u64().expect("rooms");

    let csv = std::fs::read_to_string(dir.join("samples.csv")).expect("samples.csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("stage,elapsed_s,rooms,rss_kib,hwm_kib,node_cpu_s,cpu_percent_of_core")
    );
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert!(rows.iter().all(|row| row.len() == 7), "{csv}");
    let number = |field: &str| {
        field
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{field}: {csv}"))
    };
    let stages: Vec<&str> = rows.iter().map(|row| row[0]).collect();
    let stage_rows =
        |stage: &str| -> Vec<&Vec<&str>> { rows.iter().filter(|row| row[0] == stage).collect() };
    for stage in ["baseline", "creation", "idle"] {
        assert!(
            stage_rows(stage).len() >= 2,
            "{stage}: a sample at its start and end at least: {csv}"
        );
    }
    let mut sorted = stages.clone();
    sorted.sort_by_key(|stage| {
        ["baseline", "creation", "idle"]
            .iter()
            .position(|s| s == stage)
    });
    assert_eq!(stages, sorted, "the stages in order: {csv}");
    assert!(
        stage_rows("baseline").iter().all(|row| row[2] == "0"),
        "{csv}"
    );
    let created: Vec<f64> = stage_rows("creation")
        .iter()
        .map(|row| number(row[2]))
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] <= w[1]) && created.last() == Some(&(rooms as f64)),
        "rooms created rise to {rooms}: {csv}"
    );
    assert!(
        stage_rows("idle")
            .iter()
            .all(|row| number(row[2]) == rooms as f64),
        "{csv}"
    );
    let elapsed: Vec<f64> = rows.iter().map(|row| number(row[1])).collect();
    assert!(elapsed.windows(2).all(|w| w[0] <= w[1]), "{csv}");
    assert!(
        rows.iter()
            .all(|row| number(row[3]) > 0.0 && number(row[4]) >= number(row[3])),
        "RSS and its peak: {csv}"
    );
    assert_eq!(
        rows[0][6], "",
        "no CPU share before a first interval: {csv}"
    );
    let cores = report["machine"]["nproc"].as_f64().expect("nproc");
    let shares: Vec<f64> = rows[1..]
        .iter()
        .filter(|row| !row[6].is_empty())
        .map(|row| number(row[6]))
        .collect();
    assert!(
        !shares.is_empty()
            && shares
                .iter()
                .all(|p| (0.0..=cores * 100.0 + 5.0).contains(p)),
        "CPU shares within the machine's cores: {csv}"
    );
    let last_rss = number(rows.last().expect("rows")[3]);
    assert_eq!(
        last_rss,
        report["idle"]["rss_end_kib"].as_f64().expect("rss_end_kib"),
        "the last sample is the end of the idle window"
    );

    check_png(&dir.join("rss.png"), 1);
    check_png(&dir.join("timeline.png"), 2);
}

#[test]
fn messages_open_model_reports_to_stdout_without_errors_protocol06_5_3() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = tempfile::tempdir().expect("temporary directory");
    let out_dir = out.path().join("out");
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
            "--out-dir",
            out_dir.to_str().expect("UTF-8 path"),
        ],
        dir.path(),
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    check_out_dir(&out_dir, &report);
    assert!(
        out_dir.join("messages.message.corrected.hlog").is_file(),
        "the interval log of the phase's one operation"
    );
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
            "--out-dir",
            dir.path().join("out").to_str().expect("UTF-8 path"),
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
    // At 3 members an UpdatePath has two nodes, which openmls encrypts on rayon's pool: that
    // CPU is the generator's, not the node's.
    let cpu = &phases[1]["cpu"];
    assert!(
        cpu["threads_s"]["bench-rayon"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{cpu}"
    );
    assert!(
        cpu["generator_threads"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|g| g == "bench-rayon")),
        "{cpu}"
    );
    check_out_dir(&dir.path().join("out"), &report);
}

#[test]
fn cross_provider_open_model_delivers_every_message_to_the_other_provider_protocol06_5_4() {
    // bench_with_out_dir also checks that both providers' data directories are removed.
    let report = bench_with_out_dir(&[
        "cross-provider",
        "--rooms",
        "3",
        "--rate",
        "30",
        "--duration",
        "1500ms",
        "--message-bytes",
        "64",
    ]);
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
}

#[test]
fn cluster_open_model_replicates_forwards_and_delivers_on_three_nodes_issue4() {
    // bench_with_out_dir also checks that every node's data directory is removed.
    let report = bench_with_out_dir(&[
        "cluster",
        "--rooms",
        "6",
        "--rate",
        "60",
        "--duration",
        "2s",
        "--message-bytes",
        "64",
    ]);
    assert_eq!(report["config"]["load_model"], "open");
    assert_eq!(report["config"]["nodes"], 3);
    assert_eq!(report["config"]["attached_members"], true);
    assert_eq!(report["node"]["mode"], "in-process");
    assert_eq!(report["node"]["fsync"], true);
    assert_eq!(report["node"]["nodes"], 3);
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 1);
    let phase = &phases[0];
    check_phase(phase, 6);
    assert_eq!(
        phase["ops_ok"], 120,
        "every scheduled message was acknowledged"
    );
    let cluster = &phase["cluster"];
    let nodes = cluster["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let shards = report["node"]["shards"].as_u64().expect("shards");
    assert_eq!(
        cluster["shards_led_total"], shards,
        "every shard has one leader: {cluster}"
    );
    let mut forwarded_ever = 0;
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(node["node_id"], index as u64 + 1);
        assert_eq!(node["senders"], 2, "senders go round-robin: {node}");
        assert_eq!(
            node["push_streams"], 2,
            "the members of two rooms are attached to each node: {node}"
        );
        assert!(
            node["raft"]["applied"].as_u64().is_some_and(|n| n > 0),
            "every node applies: {node}"
        );
        forwarded_ever += node["forwarded_since_start"]["room/applied"]
            .as_u64()
            .unwrap_or(0);
    }
    // Registrations, KeyPackages, rooms and messages went through nodes chosen by room, not
    // by shard leader: some of the many requests reached a node that does not lead their shard.
    assert!(forwarded_ever > 0, "nothing was forwarded: {cluster}");
    // No message was forwarded and applied twice. Only the room commands count: the nodes'
    // own proposals (shard descriptors after a leadership change) are `direct` ones.
    assert!(
        cluster["forwarded_applied"]
            .as_u64()
            .is_some_and(|n| n <= 120),
        "{cluster}"
    );
    let delivery = &cluster["delivery"];
    assert_eq!(delivery["receivers"], 6);
    assert_eq!(
        delivery["delivered"], 120,
        "each member on another node got every message: {delivery}"
    );
    assert_eq!(delivery["caught_up"], true);
    assert_eq!(delivery["streams_lost"], 0);
}

#[test]
fn cluster_closed_model_with_detached_members_reports_no_delivery() {
    let report = bench_with_out_dir(&[
        "cluster",
        "--rooms",
        "3",
        "--concurrency",
        "3",
        "--duration",
        "1s",
        "--max-ops",
        "300",
        "--detached-members",
    ]);
    assert_eq!(report["config"]["load_model"], "closed");
    assert_eq!(report["config"]["attached_members"], false);
    let phase = &report["phases"][0];
    assert_eq!(phase["workers"], 3);
    assert!(phase["ops_ok"].as_u64().is_some_and(|n| n > 0 && n <= 300));
    assert_eq!(phase["ops_failed"], 0, "{}", phase["errors"]);
    assert_eq!(phase["latency_corrected"], phase["latency_raw"]);
    let cluster = &phase["cluster"];
    assert!(cluster["delivery"].is_null(), "{cluster}");
    for node in cluster["nodes"].as_array().expect("nodes") {
        assert_eq!(node["push_streams"], 0, "no member stays attached: {node}");
    }
}

#[test]
fn cluster_splits_a_shard_under_load_and_every_message_arrives_exactly_once_issue9() {
    // Two hashed shards and two split shards: about half of the rooms of the busier hashed
    // shard move while the senders go on.
    let report = bench_with_out_dir(&[
        "cluster",
        "--rooms",
        "12",
        "--shards",
        "2",
        "--split-shards",
        "2",
        "--split-at",
        "1",
        "--rate",
        "60",
        "--duration",
        "3s",
        "--message-bytes",
        "64",
    ]);
    assert_eq!(report["config"]["split_shards"], 2);
    assert_eq!(report["config"]["split_at_s"], 1.0);
    assert_eq!(report["node"]["split_shards"], 2);
    let phase = &report["phases"][0];
    check_phase(phase, 12);
    assert_eq!(
        phase["ops_ok"], 180,
        "every scheduled message was acknowledged"
    );
    assert_eq!(
        phase["cluster"]["shards_led_total"], 4,
        "the split shards have leaders too: {}",
        phase["cluster"]
    );
    let split = &phase["split"];
    assert_eq!(split["status"], 200, "{split}");
    let shard = split["shard"].as_u64().expect("the shard split");
    assert!(shard < 2, "a hashed shard: {split}");
    assert_eq!(split["from"], shard);
    assert!(
        [2, 3].contains(&split["to"].as_u64().expect("a split shard")),
        "{split}"
    );
    let on_shard = split["bench_rooms_by_shard"][shard.to_string()]
        .as_u64()
        .expect("the bench's rooms on the shard");
    let moved = split["rooms_moved"].as_u64().expect("rooms moved");
    assert_eq!(moved, on_shard / 2, "half of the shard's rooms: {split}");
    assert_eq!(split["bench_rooms_moved"], moved);
    assert_eq!(split["rooms_failed"], 0, "{split}");
    assert_eq!(
        split["moves"]["moved"], moved,
        "the nodes counted the moves"
    );
    assert_eq!(split["moves"]["timed"], moved);
    assert!(split["moves"]["mean_move_ms"]
        .as_f64()
        .is_some_and(|ms| ms > 0.0));
    let asked = split["asked_at_s"].as_f64().expect("asked");
    let answered = split["answered_at_s"].as_f64().expect("answered");
    assert!((1.0..answered).contains(&asked), "{split}");
    let windows = split["windows"].as_array().expect("windows");
    let names: Vec<&str> = windows
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before_split", "during_split", "after_split"]);
    assert_eq!(windows[1]["start_s"], asked);
    assert_eq!(windows[2]["start_s"], answered);
    let in_windows: u64 = windows.iter().map(|w| w["ops_ok"].as_u64().unwrap()).sum();
    assert_eq!(in_windows, 180, "each operation is in one window");
    assert!(windows[0]["ops_ok"].as_u64().is_some_and(|n| n >= 55));
    assert!(windows[2]["ops_ok"].as_u64().is_some_and(|n| n > 0));
    // The moved rooms' messages after their move are told apart.
    let moved_after = windows[2]["by_operation"]["message_moved"]["ops_ok"]
        .as_u64()
        .expect("the moved rooms' messages after the split");
    assert!(moved_after > 0, "{}", windows[2]);
    assert!(
        windows[0]["by_operation"].get("message_moved").is_none(),
        "no room had moved before the split: {}",
        windows[0]
    );
    assert!(
        phase["by_operation"]["message_moved"]["ops_ok"]
            .as_u64()
            .is_some_and(|n| n >= moved_after),
        "{}",
        phase["by_operation"]
    );
    assert!(phase.get("windows").is_none(), "only under split");
    let delivery = &phase["cluster"]["delivery"];
    assert_eq!(delivery["delivered"], 180, "{delivery}");
    for field in ["lost", "duplicated", "out_of_order", "unrecognised"] {
        assert_eq!(delivery[field], 0, "{field}: {delivery}");
    }
    assert_eq!(delivery["caught_up"], true);
}

#[test]
fn a_split_without_split_shards_or_outside_the_phase_is_refused_before_anything_starts() {
    let data = tempfile::tempdir().expect("temporary directory");
    for (args, says) in [
        (&["cluster", "--split-at", "5"][..], "--split-shards"),
        (
            &[
                "cluster",
                "--split-shards",
                "0",
                "--split-at",
                "5",
                "--duration",
                "10s",
            ][..],
            "--split-shards 1 or more",
        ),
        (
            &[
                "cluster",
                "--split-shards",
                "2",
                "--split-at",
                "10",
                "--duration",
                "5s",
            ][..],
            "not within the timed phase",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mimid-bench"))
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .expect("mimid-bench starts");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("starting provider"),
            "{args:?}: refused before any node starts: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_dir(data.path()).expect("readable").count(),
        0,
        "nothing was created"
    );
}

/// Runs `args` with `--out-dir` and `--no-progress`; returns the report on stdout, after
/// checking the out-dir files and that the in-process providers' data directory is gone.
fn bench_with_out_dir(args: &[&str]) -> Value {
    let data = tempfile::tempdir().expect("temporary directory");
    let out = tempfile::tempdir().expect("temporary directory");
    let mut args = args.to_vec();
    let out_dir = out.path().join("out");
    args.extend([
        "--no-progress",
        "--out-dir",
        out_dir.to_str().expect("UTF-8"),
    ]);
    let output = bench(&args, data.path());
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    assert_eq!(report["scenario"], args[0]);
    check_out_dir(&out_dir, &report);
    assert_eq!(
        std::fs::read_dir(data.path()).expect("readable").count(),
        0,
        "the providers' data directories are removed"
    );
    report
}

#[test]
fn dm_delivers_every_message_to_the_other_member_protocol06_5_3() {
    let report = bench_with_out_dir(&[
        "dm",
        "--rooms",
        "3",
        "--rate",
        "30",
        "--duration",
        "1500ms",
        "--message-bytes",
        "64",
    ]);
    assert_eq!(report["config"]["members"], 2);
    let phase = &report["phases"][0];
    check_phase(phase, 3);
    assert_eq!(
        phase["ops_ok"], 45,
        "every scheduled message reached the other member"
    );
    let fanout = &phase["fanout"];
    assert_eq!(fanout["recipients_per_message"], 1);
    assert_eq!(fanout["deliveries"], 45);
    assert_eq!(
        fanout["receivers"], 6,
        "both members of each room are attached"
    );
}

#[test]
fn small_rooms_deliver_every_message_to_all_other_members_mimi_6_4() {
    let report = bench_with_out_dir(&[
        "small-rooms",
        "--rooms",
        "2",
        "--members",
        "4",
        "--concurrency",
        "2",
        "--duration",
        "1s",
        "--max-ops",
        "400",
        "--message-bytes",
        "64",
    ]);
    assert_eq!(report["config"]["members"], 4);
    let phase = &report["phases"][0];
    assert_eq!(phase["members"], 4);
    assert_eq!(phase["ops_failed"], 0, "{}", phase["errors"]);
    let ops = phase["ops_ok"].as_u64().expect("ops_ok");
    assert!(ops > 0);
    let fanout = &phase["fanout"];
    assert_eq!(fanout["recipients_per_message"], 3);
    assert_eq!(
        fanout["deliveries"],
        ops * 3,
        "each message was decrypted by the 3 other members"
    );
    assert!(fanout["deliveries_per_s"].as_f64().is_some_and(|d| d > 0.0));
}

#[test]
fn large_room_fanout_pushes_every_message_to_every_member_at_three_providers_protocol06_5_4() {
    let report = bench_with_out_dir(&[
        "large-room-fanout",
        "--members",
        "26",
        "--senders",
        "2",
        "--members-per-connection",
        "4",
        "--rate",
        "20",
        "--duration",
        "1500ms",
    ]);
    assert_eq!(
        report["node"]["providers"],
        serde_json::json!(["a.example", "b.example", "c.example"])
    );
    assert_eq!(report["options"]["providers"], 3);
    assert_eq!(report["options"]["senders_per_room"], 2);
    let phase = &report["phases"][0];
    check_phase(phase, 2);
    assert_eq!(
        phase["ops_ok"], 30,
        "every scheduled message reached every member"
    );
    let fanout = &phase["fanout"];
    assert_eq!(fanout["recipients_per_message"], 24);
    assert_eq!(fanout["receivers"], 24);
    assert_eq!(
        fanout["deliveries"],
        30 * 24,
        "the members counted every push: {fanout}"
    );
    assert_eq!(fanout["streams_lost"], 0, "{fanout}");
    // Members 1..=24 at provider j mod 3: 8 each.
    for domain in ["a.example", "b.example", "c.example"] {
        assert_eq!(fanout["receivers_by_provider"][domain], 8, "{fanout}");
        assert_eq!(fanout["deliveries_by_provider"][domain], 30 * 8, "{fanout}");
    }
    assert!(
        phase["raft_follower"]["applied"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "b.example appended the notified messages: {}",
        phase["raft_follower"]
    );
}

#[test]
fn commit_churn_adds_removes_and_updates_at_two_group_sizes_mimi_6_2_6_5() {
    let report = bench_with_out_dir(&[
        "commit-churn",
        "--rooms",
        "2",
        "--group-size",
        "2,8",
        "--mix",
        "add=1,remove=1,update=1",
        "--concurrency",
        "2",
        "--duration",
        "1s",
    ]);
    assert_eq!(report["config"]["group_sizes"], serde_json::json!([2, 8]));
    assert_eq!(
        report["options"]["mix"],
        serde_json::json!({"add": 1, "remove": 1, "update": 1})
    );
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2);
    for (phase, size) in phases.iter().zip([2u64, 8]) {
        check_phase(phase, 2);
        let kinds = phase["by_operation"].as_object().expect("by_operation");
        let mut counts = Vec::new();
        for kind in ["add", "remove", "update"] {
            let ok = kinds[kind]["ops_ok"].as_u64().expect("ops_ok");
            assert!(ok > 0, "{kind} at {size}: {}", phase["by_operation"]);
            assert_eq!(kinds[kind]["ops_failed"], 0);
            counts.push(ok);
        }
        let (most, least) = (counts.iter().max().unwrap(), counts.iter().min().unwrap());
        assert!(most - least <= 2, "the kinds take turns 1:1:1: {counts:?}");
        assert_eq!(
            counts.iter().sum::<u64>(),
            phase["ops_ok"].as_u64().unwrap()
        );
        let sizes = &phase["group_size"];
        assert_eq!(sizes["start"], size);
        assert!(
            sizes["end_min"].as_u64() >= Some(size) && sizes["end_max"].as_u64() <= Some(size + 1),
            "adds and removes alternate around the group size: {sizes}"
        );
    }
}

#[test]
fn join_storm_joins_by_external_commit_at_the_offered_rate_mimi_6_6() {
    let report = bench_with_out_dir(&[
        "join-storm",
        "--rooms",
        "3",
        "--rate",
        "6",
        "--duration",
        "1500ms",
    ]);
    assert_eq!(report["config"]["load_model"], "open");
    let phase = &report["phases"][0];
    check_phase(phase, 3);
    assert_eq!(phase["ops_ok"], 9, "every scheduled join was accepted");
    assert_eq!(phase["by_operation"]["join"]["ops_ok"], 9);
    let sizes = &phase["group_size"];
    assert_eq!(sizes["start"], 2);
    assert_eq!(
        (sizes["end_min"].as_u64(), sizes["end_max"].as_u64()),
        (Some(5), Some(5)),
        "three joins into each room: {sizes}"
    );
}

/// The `mimid` binary of this build, built by cargo itself, so it is never missing or stale:
/// `cargo build --workspace --bins --test ci` in this test's profile and target directory.
/// Selecting every workspace member and a test target resolves features exactly as
/// `cargo test --workspace` does (dev-dependencies' features included), so after that command
/// there is nothing to build; after `cargo test -p mimid-bench` it builds the binary once, with
/// the same artifacts a workspace test run uses. No other crate's test targets are built. The
/// path comes from cargo's own artifact messages.
fn mimid_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is inside the target directory");
        // This test runs from <target>/<profile dir>/deps/.
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|name| name.to_str())
            .expect("the test runs from <target>/<profile>/deps");
        let profile = match profile_dir {
            "debug" => "dev",
            other => other,
        };
        let output = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--bins", "--message-format=json"])
            .args(["--test", env!("CARGO_CRATE_NAME")])
            .arg("--profile")
            .arg(profile)
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|message| {
                message["reason"] == "compiler-artifact"
                    && message["target"]["name"] == "mimid"
                    && message["profile"]["test"] == false
                    && message["target"]["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
            })
            .and_then(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the mimid binary it built")
    })
}

#[test]
fn idle_density_measures_a_mimid_child_holding_200_rooms_issue4_g5() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("density.json");
    let out_dir = dir.path().join("out");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data parent");
    let output = bench(
        &[
            "idle-density",
            "--rooms",
            "200",
            "--idle",
            "2s",
            "--baseline",
            "1s",
            "--mimid",
            mimid_binary().to_str().expect("UTF-8 path"),
            "--json",
            json.to_str().expect("UTF-8 path"),
            "--out-dir",
            out_dir.to_str().expect("UTF-8 path"),
        ],
        &data,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rooms/GiB"), "summary line: {stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("JSON");
    check_density_out_dir(&out_dir, &report);
    assert_eq!(report["scenario"], "idle-density");
    assert_eq!(report["node"]["mode"], "child-process");
    assert_eq!(report["node"]["fsync"], true);
    assert_eq!(report["config"]["rooms"], 200);
    assert_eq!(
        report["config"]["users"], 8,
        "one creator and one member per 50 rooms"
    );
    let creation = &report["creation"];
    assert_eq!(creation["rooms"], 200);
    assert!(creation["rooms_per_s"].as_f64().is_some_and(|r| r > 0.0));
    assert!(
        creation["node_cpu_s"].as_f64().is_some_and(|s| s > 0.0),
        "{creation}"
    );
    let metrics = &report["node_metrics"];
    assert_eq!(
        metrics["push_streams"], 0,
        "no client is connected while idle"
    );
    assert!(
        metrics["raft_applied"]
            .as_u64()
            .is_some_and(|n| n >= 3 * 200),
        "each room is at least a creation, a claim and a Commit: {metrics}"
    );
    for window in ["baseline", "idle"] {
        let window = &report[window];
        let rss_end = window["rss_end_kib"].as_u64().expect("rss");
        assert!(
            rss_end > 0 && window["hwm_kib"].as_u64() >= Some(rss_end),
            "{window}"
        );
        assert!(
            window["cpu_percent_of_core"]
                .as_f64()
                .is_some_and(|p| (0.0..=200.0).contains(&p)),
            "{window}"
        );
    }
    assert!(
        report["idle"]["window_s"]
            .as_f64()
            .is_some_and(|s| s >= 2.0),
        "the idle window lasted as asked"
    );
    let density = &report["density"];
    assert_eq!(density["rooms"], 200);
    let rss_mib = density["rss_mib"].as_f64().expect("rss");
    let per_room = density["bytes_per_room"].as_f64().expect("bytes per room");
    assert!(
        (per_room * 200.0 / (1024.0 * 1024.0) - rss_mib).abs() < 0.1,
        "bytes per room is the RSS shared by the rooms: {density}"
    );
    assert!(density["rooms_per_gib"].as_f64().is_some_and(|r| r > 0.0));
    assert_eq!(
        std::fs::read_dir(&data).expect("readable").count(),
        0,
        "the child's directory is removed"
    );
}
