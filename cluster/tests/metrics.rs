//! The replication layer's histograms and byte counter (`ClusterMetrics`) on a real sled
//! database in a temp dir: proposal latency from `propose` to the applied answer, the durable
//! write of each turn, the inbox depth at the start of a turn, and the bytes written.
//!
//! Waits are on channels fed by `done` callbacks, with a timeout only as a failure guard. One
//! test holds the state machine inside `apply` for a known time so that the measured latency
//! must cover it; the pause is the quantity measured, not a synchronisation.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use mimid_cluster::{Cluster, ClusterConfig, ClusterHandle, ProposeError, ShardId, StateMachine};

/// Guard against hangs; never reached when the code under test works.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Command that makes `Counter::apply` wait until the test releases it.
const BLOCK: &[u8] = b"block";

/// Counts applied commands; `BLOCK` waits for the test's release.
struct Counter {
    applied: u64,
    entered: Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl StateMachine for Counter {
    type Output = u64;

    fn apply(&mut self, _index: u64, command: &[u8]) -> u64 {
        if command == BLOCK {
            self.entered.send(()).expect("test waits for the gate");
            self.release
                .recv_timeout(TIMEOUT)
                .expect("test releases the gate");
        }
        self.applied += 1;
        self.applied
    }

    fn snapshot(&self) -> Vec<u8> {
        self.applied.to_be_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes = snapshot.try_into().map_err(|_| "not 8 bytes".to_owned())?;
        self.applied = u64::from_be_bytes(bytes);
        Ok(())
    }
}

struct Node {
    cluster: Cluster<Counter>,
    entered: Receiver<()>,
    release: crossbeam_channel::Sender<()>,
    _dir: tempfile::TempDir,
}

fn start() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ClusterConfig::new(1, dir.path());
    config.shards = 4;
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let cluster = Cluster::start(config, |_| Counter {
        applied: 0,
        entered: entered_tx.clone(),
        release: release_rx.clone(),
    })
    .expect("cluster starts");
    Node {
        cluster,
        entered,
        release,
        _dir: dir,
    }
}

fn propose(
    handle: &ClusterHandle<Counter>,
    shard: ShardId,
    command: &[u8],
) -> Receiver<Result<u64, ProposeError>> {
    let (tx, rx) = mpsc::channel();
    handle
        .propose(
            shard,
            command.to_vec(),
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        )
        .expect("proposal queued");
    rx
}

/// Polls until `count` proposal latencies were observed in all: the driver observes them right
/// after the phase of its turn that applied (and answered) them, so a caller may see its
/// answer a moment before the histogram counts it. Returns the metrics then.
fn wait_timed(handle: &ClusterHandle<Counter>, count: u64) -> mimid_cluster::ClusterMetrics {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = handle.metrics();
        if metrics.proposal_micros.count() >= count {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{count} latencies observed: {:?}",
            metrics.proposal_micros
        );
        std::thread::yield_now();
    }
}

fn wait_ready(handle: &ClusterHandle<Counter>) {
    let deadline = Instant::now() + TIMEOUT;
    while !handle.is_ready() {
        assert!(Instant::now() < deadline, "the node became ready");
        std::thread::yield_now();
    }
}

#[test]
fn every_applied_proposal_is_timed_and_every_durable_write_too() {
    let node = start();
    let handle = node.cluster.handle();
    wait_ready(&handle);
    let before = handle.metrics();
    let answers: Vec<_> = (0..40u64)
        .map(|n| propose(&handle, n % 4, format!("command {n}").as_bytes()))
        .collect();
    for answer in &answers {
        answer
            .recv_timeout(TIMEOUT)
            .expect("answered")
            .expect("applied");
    }
    let after = wait_timed(&handle, before.proposal_micros.count() + 40);

    let timed = after.proposal_micros.count() - before.proposal_micros.count();
    assert_eq!(timed, 40, "one latency per answered proposal");
    assert_eq!(
        after.proposal_micros.counts.len(),
        after.proposal_micros.bounds.len() + 1
    );
    assert!(after.proposal_micros.sum > before.proposal_micros.sum);
    // Every durable write of a turn is timed (only the final one at shutdown is not); a turn
    // may be between timing its write and counting it while the copy is taken.
    assert!(
        after.flush_micros.count().abs_diff(after.flushes) <= 1,
        "{} timed, {} flushes",
        after.flush_micros.count(),
        after.flushes
    );
    assert!(after.flushes > before.flushes, "the proposals were flushed");
    // At least one turn started with proposals waiting, and every turn saw at least one.
    let depth_turns = after.inbox_depth.count() - before.inbox_depth.count();
    assert!(depth_turns >= 1, "{:?}", after.inbox_depth);
    assert!(depth_turns <= 40, "{:?}", after.inbox_depth);
    assert!(after.inbox_depth.sum - before.inbox_depth.sum >= depth_turns);
    // Forty log entries of 10-11 bytes each, plus keys and hard states.
    assert!(
        after.written_bytes - before.written_bytes > 40 * 10,
        "{} bytes",
        after.written_bytes - before.written_bytes
    );
    node.cluster.shutdown();
}

#[test]
fn a_proposal_held_in_apply_is_timed_from_propose_to_its_answer() {
    let node = start();
    let handle = node.cluster.handle();
    wait_ready(&handle);
    let before = handle.metrics().proposal_micros;
    let started = Instant::now();
    let answer = propose(&handle, 2, BLOCK);
    node.entered.recv_timeout(TIMEOUT).expect("apply entered");
    // The state machine takes 30 ms on this entry: that time is what must be measured.
    std::thread::sleep(Duration::from_millis(30));
    node.release.send(()).expect("driver waits");
    answer
        .recv_timeout(TIMEOUT)
        .expect("answered")
        .expect("applied");
    let after = wait_timed(&handle, before.count() + 1).proposal_micros;
    let elapsed = started.elapsed();
    assert_eq!(after.count() - before.count(), 1);
    let measured = after.sum - before.sum;
    assert!(measured >= 30_000, "measured {measured} µs");
    assert!(
        u128::from(measured) <= elapsed.as_micros(),
        "measured {measured} µs of {elapsed:?}"
    );
    // The observation sits in the bucket of its value.
    let bucket = after
        .bounds
        .iter()
        .position(|&bound| bound >= measured)
        .unwrap_or(after.bounds.len());
    assert_eq!(after.counts[bucket] - before.counts[bucket], 1);
    node.cluster.shutdown();
}

#[test]
fn refused_proposals_are_not_timed() {
    let node = start();
    let handle = node.cluster.handle();
    wait_ready(&handle);
    let before = handle.metrics().proposal_micros.count();
    let (tx, _rx) = mpsc::channel::<Result<u64, ProposeError>>();
    assert_eq!(
        handle.propose(
            99,
            b"x".to_vec(),
            Box::new(move |answer| {
                let _ = tx.send(answer);
            })
        ),
        Err(ProposeError::UnknownShard)
    );
    propose(&handle, 1, b"y")
        .recv_timeout(TIMEOUT)
        .expect("answered")
        .expect("applied");
    assert_eq!(
        wait_timed(&handle, before + 1).proposal_micros.count(),
        before + 1
    );
    node.cluster.shutdown();
}
