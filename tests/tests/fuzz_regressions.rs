//! Replays every input under `tests/fuzz/regressions/<target>/` through the check its fuzz
//! target runs (`mimid_tests::fuzz_checks`), so seeds and past crash inputs are re-checked by
//! the normal `cargo test --workspace` without cargo-fuzz or a nightly toolchain.

use std::path::{Path, PathBuf};

use mimid_tests::fuzz_checks::{check, TARGETS};

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions")
}

/// The inputs of one target, sorted so a failure names the same file on every run.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = regressions_dir().join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("readable regression input");
            (path, bytes)
        })
        .collect()
}

fn replay(target: &str) {
    let inputs = inputs(target);
    assert!(
        inputs.len() >= 3,
        "{target}: expected seed inputs under {}",
        regressions_dir().join(target).display()
    );
    for (path, bytes) in inputs {
        let result = std::panic::catch_unwind(|| check(target, &bytes));
        assert!(
            result.is_ok(),
            "{target}: {} fails its check",
            path.display()
        );
    }
}

/// Every target has a directory, and every directory belongs to a target (a crash input
/// filed under a misspelt name would otherwise never run).
#[test]
fn every_regression_directory_is_a_fuzz_target() {
    let mut dirs: Vec<String> = std::fs::read_dir(regressions_dir())
        .expect("tests/fuzz/regressions exists")
        .map(|entry| entry.expect("readable directory entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

#[test]
fn protocol_06_section_5_wire_requests_regressions() {
    replay("wire_requests");
}

#[test]
fn client_api_push_stream_wire_frames_regressions() {
    replay("wire_frames");
}

#[test]
fn content_08_section_4_mimi_content_regressions() {
    replay("mimi_content");
}

#[test]
fn design_section_2_command_log_regressions() {
    replay("command_log");
}

#[test]
fn mimi_section_2_mimi_uri_regressions() {
    replay("mimi_uri");
}

#[test]
fn mimi_section_6_hub_validation_regressions() {
    replay("hub_validation");
}
