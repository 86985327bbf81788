//! Writes the seed inputs of every fuzz target (`mimid_tests::fuzz_checks::seed_inputs`) to
//! `regressions/<target>/seed-<name>`, replacing earlier seeds and leaving crash inputs alone.
//!
//! Run from the repository root:
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --example write_seeds`

use std::path::Path;

use mimid_tests::fuzz_checks::{check, seed_inputs, TARGETS};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for target in TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let is_seed = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("seed-"));
            if is_seed {
                std::fs::remove_file(path)?;
            }
        }
    }
    let seeds = seed_inputs();
    for seed in &seeds {
        // A seed that breaks its own property would make the regression test fail: say so now.
        check(seed.target, &seed.bytes);
        std::fs::write(
            root.join(seed.target).join(format!("seed-{}", seed.name)),
            &seed.bytes,
        )?;
    }
    println!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}
