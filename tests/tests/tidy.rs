//! Tidy checks: the architecture's invariants that a reviewer would otherwise have to remember
//! (ARCHITECTURE.md "Invariants", STYLE.md P1, P2, P8, §10).

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The production part of a source file: test modules (files named `tests.rs`, and everything
/// after a `#[cfg(test)]` line) are left out.
fn production_source(path: &Path) -> String {
    let relative = path.strip_prefix(workspace()).unwrap_or(path);
    if relative.file_name().is_some_and(|n| n == "tests.rs")
        || relative
            .components()
            .skip(1)
            .any(|c| c.as_os_str() == "tests")
    {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("readable source");
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn violations(files: &[PathBuf], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let source = production_source(file);
        for (n, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in forbidden {
                if code.contains(word) {
                    found.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    found
}

/// Sans-IO cores (STYLE.md P1, P2): the state machines that apply replicated commands never
/// read a clock or a global random source, never iterate a hash map into an output, and do no
/// IO or spawning.
#[test]
fn cores_take_time_and_randomness_as_inputs_and_do_no_io() {
    let root = workspace();
    let cores: Vec<PathBuf> = [
        "actors/src/command.rs",
        "actors/src/shard.rs",
        "actors/src/policy.rs",
        "actors/src/directory.rs",
        "actors/src/directory/key_package.rs",
        "actors/src/directory/profile.rs",
        "actors/src/directory/consent.rs",
        "actors/src/cluster_meta.rs",
        "actors/src/provider_keys.rs",
        "actors/src/moderation.rs",
        "actors/src/franking.rs",
        "actors/src/room/mirror.rs",
        "actors/src/room/fanout.rs",
        "node/src/cluster_ops/placement.rs",
        "actors/src/room/state.rs",
        "actors/src/room/core.rs",
        "actors/src/room/log.rs",
        "actors/src/room/storage.rs",
        "actors/src/room/identity.rs",
        "cluster/src/group.rs",
        "cluster/src/group/admin.rs",
        "cluster/src/group/hibernate.rs",
        "cluster/src/read_barrier.rs",
        "cluster/src/frame.rs",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    for core in &cores {
        assert!(core.exists(), "{} moved: update this list", core.display());
    }
    let found = violations(
        &cores,
        &[
            "Instant::now",
            "SystemTime::now",
            "thread_rng",
            "OsRng",
            "HashMap",
            "HashSet",
            "tokio::spawn",
            "std::thread",
            "std::fs",
            "actix",
            "quinn",
            "sled::",
        ],
    );
    assert!(
        found.is_empty(),
        "cores must stay sans-IO:\n{}",
        found.join("\n")
    );
}

/// `cluster` replicates opaque bytes: it never knows MLS, MIMI or the actor runtime.
#[test]
fn cluster_never_imports_mls_mimi_or_actors() {
    let mut files = Vec::new();
    rust_files(&workspace().join("cluster/src"), &mut files);
    let found = violations(
        &files,
        &["openmls", "mimid_actors", "mimid_node", "actix", "quinn"],
    );
    assert!(
        found.is_empty(),
        "cluster must stay generic:\n{}",
        found.join("\n")
    );
    let manifest = std::fs::read_to_string(workspace().join("cluster/Cargo.toml")).unwrap();
    for dependency in ["openmls", "actix", "mimid-actors", "quinn"] {
        assert!(
            !manifest.contains(dependency),
            "cluster depends on {dependency}"
        );
    }
}

/// Only `node` knows wire transports, TLS and telemetry exporters (STYLE.md P10, §9).
#[test]
fn only_node_touches_transports_tls_and_exporters() {
    let mut files = Vec::new();
    for dir in ["actors/src", "cluster/src"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let found = violations(
        &files,
        &[
            "quinn",
            "h3::",
            "rustls",
            "opentelemetry",
            "axum",
            "prometheus",
        ],
    );
    assert!(
        found.is_empty(),
        "edges leaked inward:\n{}",
        found.join("\n")
    );
}

/// Dependency versions live in the root `[workspace.dependencies]` only (STYLE.md §10).
#[test]
fn member_crates_take_versions_from_the_workspace() {
    for member in ["node", "actors", "cluster", "bench", "tests"] {
        let manifest =
            std::fs::read_to_string(workspace().join(member).join("Cargo.toml")).unwrap();
        let mut in_deps = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_deps = line.contains("dependencies");
                continue;
            }
            if in_deps && !line.is_empty() && !line.starts_with('#') {
                assert!(
                    line.contains("workspace = true"),
                    "{member}/Cargo.toml: `{line}` must use `.workspace = true`"
                );
            }
        }
    }
}
