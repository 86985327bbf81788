//! Deterministic whole-system simulation (`mimid_tests::sim`): many seeds against every
//! invariant, the determinism check, and bugs planted on purpose to show the checker works.
//!
//! Environment:
//! * `MIMID_SIM_SEEDS=n`: how many seeds `seeds_hold_every_invariant` runs (default
//!   [`DEFAULT_SEEDS`]), starting at `MIMID_SIM_FIRST_SEED` (default 0);
//! * `MIMID_SIM_SEED=n`: replay exactly one seed, printing its whole event trace;
//! * `MIMID_SIM_LEAF_NOT_BEFORE=s`: the MLS leaf-lifetime window a report printed (trace hashes
//!   cover MLS bytes, which contain it; it changes every 28 days).
//!
//! Measured on the 2-core dev VM: a debug build runs about 26 seeds/s on two threads (this file
//! takes about 20 s with 500 seeds; 31 seeds/s and 17 s before the follower provider joined;
//! the membership plans cost a few percent of CPU more, within the noise of a shared VM), a
//! release build about 100 seeds/s idle (20,000 seeds in 194 s; 78 seeds/s with other builds
//! running, 36,000 seeds in 461 s); a seed simulates 30 s of faults plus the time to settle
//! (about 31 s of simulated time, ~1500x faster than real time per thread in release). The
//! nightly-sized run prints seeds, simulated hours, coverage, federation, membership, faults by
//! kind and violations:
//!
//! ```text
//! MIMID_SIM_SEEDS=20000 cargo test --release -p mimid-tests --test simulation -- --nocapture
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use mimid_tests::sim::{
    run, Coverage, FaultCounts, PlantedBug, RequestCounts, SimConfig, SimReport, ViolationKind,
};

/// Seeds per `cargo test` run (research/reliability.md §5.1 asks 500 per PR); with the
/// measurement above this file stays well under a minute in a debug build on two cores.
const DEFAULT_SEEDS: u64 = 500;

/// Every seed holds every invariant: one log, one Commit per epoch, no acknowledged item lost,
/// nothing accepted from removed members, every request answered, convergence and liveness
/// after the faults heal (research/reliability.md §5.1); and for the follower provider
/// (MIMI.md §5.4): its mirror is always a prefix of the hub's log restricted to what it is to
/// see, without duplicates, nothing it acknowledged is lost, and it catches up after healing.
/// Through membership changes of both groups (a spare added and promoted, an original voter
/// removed and its data deleted): every acknowledged entry stays durable on enough voters of
/// the current configuration to survive the loss of any minority, removed replicas take no
/// proposal, no replica stops (a leader that applies its own removal steps down instead of
/// panicking in raft-rs), and every plan finishes.
#[test]
fn seeds_hold_every_invariant() {
    let config = config();
    if let Some(seed) = env_u64("MIMID_SIM_SEED") {
        let report = run(
            seed,
            &SimConfig {
                echo: true,
                ..config
            },
        );
        print_report(&report);
        assert!(report.violations.is_empty(), "seed {seed} violates");
        return;
    }
    let first = env_u64("MIMID_SIM_FIRST_SEED").unwrap_or(0);
    let count = env_u64("MIMID_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let started = Instant::now();
    let outcomes = run_seeds(first..first + count, &config);
    let elapsed = started.elapsed().as_secs_f64();

    let mut faults = FaultCounts::default();
    let mut requests = RequestCounts::default();
    let mut coverage = Coverage::default();
    let (mut simulated_ms, mut events, mut items, mut mirrored) = (0u64, 0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for (seed, outcome) in &outcomes {
        match outcome {
            Ok(report) => {
                faults.add(&report.faults);
                requests.add(&report.requests);
                coverage.add(&report.coverage);
                simulated_ms += report.simulated_ms;
                events += report.events;
                items += report.log_items;
                mirrored += report.mirror_items;
                if !report.violations.is_empty() {
                    let shown: Vec<String> = report
                        .violations
                        .iter()
                        .take(SHOWN_VIOLATIONS)
                        .map(ToString::to_string)
                        .collect();
                    failures.push(format!(
                        "seed {seed} ({} violations, leaf window {}): {}",
                        report.violations.len(),
                        config.leaf_not_before_s,
                        shown.join("; ")
                    ));
                }
            }
            Err(panic) => failures.push(format!("seed {seed}: panicked: {panic}")),
        }
    }
    println!(
        "simulation: {count} seeds from {first} in {elapsed:.1} s ({:.1} seeds/s), {:.2} simulated hours ({:.0}x wall clock), {events} events, {items} room log items, {mirrored} mirrored by the follower",
        count as f64 / elapsed,
        simulated_ms as f64 / 3_600_000.0,
        simulated_ms as f64 / 1000.0 / elapsed,
    );
    println!(
        "requests: {} sent, {} acknowledged, {} rejected by apply, {} refused before proposing, {} outcome unknown",
        requests.sent, requests.acknowledged, requests.rejected, requests.refused, requests.indeterminate
    );
    println!(
        "coverage: {} commits acknowledged, {} commits lost their epoch, {} requests from removed clients refused, {} snapshots installed, {} messages decrypted by members ({} from the follower's mirror)",
        coverage.commits_acknowledged, coverage.commits_lost_epoch, coverage.removed_client_refusals, coverage.snapshots_installed, coverage.messages_decrypted, coverage.mirror_messages_decrypted
    );
    println!(
        "federation: {} notifies sent, {} delivered, {} failed or timed out, {} notified items deduplicated by the follower, {} fan-out cores started by hub leaders, {} cursors recorded",
        coverage.notifies_sent, coverage.notifies_delivered, coverage.notifies_failed, coverage.notified_items_deduplicated, coverage.fanout_cores_started, coverage.fanout_cursors_recorded
    );
    println!(
        "membership: {} changes refused by rule ({} learners behind, {} while another change was in progress), {} dropped, {} leadership transfers, {} requests and reads redirected from removed replicas, {} durability audits of acknowledged entries, {} leaders that applied their own removal stepped down, {} learners promoted from raft-rs' probe state",
        coverage.membership_refused, coverage.learners_behind_refused, coverage.changes_in_progress_refused, coverage.membership_dropped, coverage.leader_transfers, coverage.removed_replica_redirects, coverage.durability_audits, coverage.removed_leaders_stepped_down, coverage.probed_learners_promoted
    );
    for (kind, n) in faults.fields() {
        println!("faults: {kind}: {n}");
    }
    println!("violations: {} seeds", failures.len());
    for failure in &failures {
        println!("  {failure}");
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds violate invariants; replay one with MIMID_SIM_LEAF_NOT_BEFORE={} MIMID_SIM_SEED=<seed> cargo test -p mimid-tests --test simulation seeds_hold -- --nocapture\n{}",
        failures.len(),
        config.leaf_not_before_s,
        failures.join("\n")
    );
    let exercised = requests.acknowledged > count
        && coverage.commits_lost_epoch > 0
        && coverage.removed_client_refusals > 0
        && coverage.snapshots_installed > 0
        && coverage.mirror_messages_decrypted > 0
        && coverage.notifies_failed > 0
        && coverage.notified_items_deduplicated > 0
        && coverage.fanout_cores_started > count
        && coverage.fanout_cursors_recorded > 0
        && faults.crashes_losing_writes > 0
        && faults.follower_crashes > 0
        && faults.provider_partitions > 0
        && faults.partitions > 0
        && faults.learners_added > 0
        && faults.learners_promoted > 0
        && faults.voters_removed > 0
        && faults.leaders_removed > 0
        && faults.removed_data_deleted > 0
        && coverage.learners_behind_refused > 0
        && coverage.probed_learners_promoted > 0
        && coverage.changes_in_progress_refused > 0
        && coverage.leader_transfers > 0
        && coverage.removed_replica_redirects > 0;
    assert!(
        count < COVERAGE_MIN_SEEDS || exercised,
        "the workload or the fault schedule stopped exercising something: {requests:?} {coverage:?} {faults:?}"
    );
}

/// madsim's `check_determinism`: the same seed twice gives the same trace hash (which covers
/// the MLS bytes of every log item), and different seeds give different ones.
#[test]
fn a_seed_replays_to_the_same_trace_hash() {
    let config = config();
    let mut hashes = Vec::new();
    for seed in [3, 17, 4242] {
        let first = run(seed, &config);
        let second = run(seed, &config);
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(
            (first.events, first.simulated_ms, first.log_items),
            (second.events, second.simulated_ms, second.log_items)
        );
        assert!(first.log_items > 0, "seed {seed} did nothing");
        hashes.push(first.trace_hash);
    }
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "different seeds produced the same trace");
}

/// A hub that tells the loser of an epoch "success" (so two Commits are acknowledged for one
/// epoch, RFC 9420 §14), a replica that acknowledges messages it never appends, and a
/// follower that ignores hub seqs (MIMI.md §5.4: a resend batched differently is appended
/// again) must all be caught; the same seeds without the bug are clean.
#[test]
fn planted_bugs_are_caught() {
    let catches_in = |seeds: std::ops::Range<u64>, bug: PlantedBug, kinds: &[ViolationKind]| {
        let config = SimConfig { bug, ..config() };
        run_seeds(seeds, &config)
            .into_iter()
            .filter(|(_, outcome)| {
                outcome.as_ref().is_ok_and(|report| {
                    report
                        .violations
                        .iter()
                        .any(|violation| kinds.contains(&violation.kind))
                })
            })
            .count()
    };
    let catches = |bug, kinds: &[ViolationKind]| catches_in(0..PLANTED_SEEDS, bug, kinds);
    let lying = catches(
        PlantedBug::AckLosingCommits,
        &[ViolationKind::TwoCommitsAcked, ViolationKind::AckedItemLost],
    );
    let skipping = catches(
        PlantedBug::SkipMessagesOn(2),
        &[ViolationKind::LogDivergence, ViolationKind::AckedItemLost],
    );
    // A duplicate needs a resend batched differently from what the follower already applied
    // (a lost 201 while more items arrived, or a new hub leader resending from the durable
    // cursor): about one seed in four has one.
    let duplicating = catches_in(
        0..FOLLOWER_PLANTED_SEEDS,
        PlantedBug::FollowerIgnoresHubSeqs,
        &[ViolationKind::MirrorDuplicate],
    );
    let clean = catches(
        PlantedBug::None,
        &[
            ViolationKind::TwoCommitsAcked,
            ViolationKind::AckedItemLost,
            ViolationKind::LogDivergence,
            ViolationKind::MirrorDivergence,
            ViolationKind::MirrorDuplicate,
            ViolationKind::NotifiedItemLost,
            ViolationKind::QuorumLost,
            ViolationKind::RemovedReplicaServed,
        ],
    );
    println!(
        "planted bugs caught in {PLANTED_SEEDS} seeds: acknowledging losing Commits {lying}, skipping messages on one replica {skipping}, unmodified flagged {clean}; in {FOLLOWER_PLANTED_SEEDS} seeds: follower ignoring hub seqs {duplicating}"
    );
    assert_eq!(clean, 0, "the unmodified state machine was flagged");
    assert!(
        lying >= PLANTED_SEEDS as usize / 2,
        "acknowledging losing Commits was caught in only {lying} of {PLANTED_SEEDS} seeds"
    );
    assert!(
        skipping >= PLANTED_SEEDS as usize / 2,
        "a replica skipping messages was caught in only {skipping} of {PLANTED_SEEDS} seeds"
    );
    assert!(
        duplicating >= 2,
        "a follower ignoring hub seqs was caught in only {duplicating} of {FOLLOWER_PLANTED_SEEDS} seeds"
    );
}

/// A leader that keeps counting a voter it removed (whose data is then deleted) acknowledges
/// entries that too few voters of the new configuration hold: the durability audit must catch
/// it (`QuorumLost`), and the same seeds without the bug are clean (checked by
/// `planted_bugs_are_caught`). It shows only when the removed replica's acknowledgement
/// completes a quorum before a remaining voter's and the new configuration has three voters
/// (in one plan order of two the spare is promoted first), so not in every seed; the seeds it
/// misses still break convergence (the voter the leader dropped in its place stays behind).
#[test]
fn a_removed_voter_counted_toward_the_quorum_is_caught() {
    let config = SimConfig {
        bug: PlantedBug::CountsRemovedVoter,
        ..config()
    };
    let outcomes = run_seeds(0..MEMBERSHIP_PLANTED_SEEDS, &config);
    let caught = outcomes
        .iter()
        .filter(|(_, outcome)| {
            outcome.as_ref().is_ok_and(|report| {
                report
                    .violations
                    .iter()
                    .any(|violation| violation.kind == ViolationKind::QuorumLost)
            })
        })
        .count();
    println!(
        "planted bug caught in {MEMBERSHIP_PLANTED_SEEDS} seeds: a removed voter counted toward the quorum {caught}"
    );
    assert!(
        caught >= MEMBERSHIP_PLANTED_MIN_CAUGHT,
        "a removed voter counted toward the quorum was caught in only {caught} of {MEMBERSHIP_PLANTED_SEEDS} seeds"
    );
}

const PLANTED_SEEDS: u64 = 8;
/// Seeds for the membership bug, and in how many `QuorumLost` must show (it showed in 11 of
/// seeds 0-15 and 21 of seeds 0-31 when it was added).
const MEMBERSHIP_PLANTED_SEEDS: u64 = 16;
const MEMBERSHIP_PLANTED_MIN_CAUGHT: usize = 6;
/// Seeds for the follower's planted bug (caught in 28 of seeds 0-99 when it was added).
const FOLLOWER_PLANTED_SEEDS: u64 = 16;

/// From this many seeds on, every fault kind and every checked path must have occurred.
const COVERAGE_MIN_SEEDS: u64 = 100;

/// Violations printed per failing seed (replaying it shows everything).
const SHOWN_VIOLATIONS: usize = 5;

/// Runs `seeds` on every core (the simulator itself is single-threaded; seeds are independent),
/// catching panics so a failing seed is reported with its number.
fn run_seeds(
    seeds: std::ops::Range<u64>,
    config: &SimConfig,
) -> Vec<(u64, Result<SimReport, String>)> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let seeds: Vec<u64> = seeds.collect();
    let mut outcomes: Vec<(u64, Result<SimReport, String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let mine: Vec<u64> = seeds
                    .iter()
                    .copied()
                    .skip(worker)
                    .step_by(threads)
                    .collect();
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|seed| {
                            let outcome = catch_unwind(AssertUnwindSafe(|| run(seed, config)))
                                .map_err(|payload| {
                                    payload
                                        .downcast_ref::<&str>()
                                        .map(|s| (*s).to_owned())
                                        .or_else(|| payload.downcast_ref::<String>().cloned())
                                        .unwrap_or_else(|| "non-string panic".to_owned())
                                });
                            (seed, outcome)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("seed runner threads catch panics"))
            .collect()
    });
    outcomes.sort_by_key(|(seed, _)| *seed);
    outcomes
}

fn print_report(report: &SimReport) {
    println!(
        "seed {}: trace {}, {} events, {} simulated ms, {} log items",
        report.seed, report.trace_hash, report.events, report.simulated_ms, report.log_items
    );
    println!("requests: {:?}", report.requests);
    println!("coverage: {:?}", report.coverage);
    for (kind, n) in report.faults.fields() {
        println!("faults: {kind}: {n}");
    }
    for violation in &report.violations {
        println!("violation: {violation}");
    }
}

/// The default run sizes. Leaf lifetimes start at the current 28-day window of the wall clock
/// (openmls checks them against it), so MLS bytes, and with them trace hashes, stay the same
/// for 28 days; `MIMID_SIM_LEAF_NOT_BEFORE` pins the window to replay an older report exactly.
fn config() -> SimConfig {
    const WINDOW_S: u64 = 28 * 24 * 3_600;
    let leaf_not_before_s = env_u64("MIMID_SIM_LEAF_NOT_BEFORE").unwrap_or_else(|| {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the wall clock is after 1970")
            .as_secs();
        now_s - now_s % WINDOW_S
    });
    SimConfig::new(leaf_not_before_s)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => Some(n),
        Err(err) => panic!("{name}={value}: {err}"),
    }
}
