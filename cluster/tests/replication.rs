//! End-to-end tests of `mimid-cluster` on a real sled database in a temp dir: ordering, restart
//! recovery (log replay and snapshots), compaction, age-based and shutdown snapshots,
//! back-pressure, failure isolation and shutdown.
//!
//! No test sleeps to synchronise: every wait is on a channel fed by a `done` callback or by the
//! state machine, with a generous timeout only as a failure guard. The one condition no channel
//! reports (an age-based snapshot, which depends on the driver's clock) is polled with a
//! deadline (`wait_until`).

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use mimid_cluster::{
    Cluster, ClusterConfig, ClusterError, ClusterHandle, ProposeError, ShardId, StateMachine,
    StoreError,
};

/// Guard against hangs; never reached when the code under test works.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Command that makes `Journal::apply` block until the test releases it.
const BLOCK: &[u8] = b"block";
/// Command that makes `Journal::apply` panic, standing in for a state-machine bug.
const PANIC: &[u8] = b"panic";

/// Appends every command to a journal; the output describes the state after the apply.
#[derive(Default)]
struct Journal {
    commands: Vec<Vec<u8>>,
    last_index: u64,
    restored_len: usize,
    gate: Option<Gate>,
}

/// Lets a test hold the driver thread inside `apply`.
struct Gate {
    entered: Sender<()>,
    release: Receiver<()>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    index: u64,
    len: usize,
    digest: u64,
    restored_len: usize,
}

impl StateMachine for Journal {
    type Output = Applied;

    fn apply(&mut self, index: u64, command: &[u8]) -> Applied {
        assert!(
            index > self.last_index,
            "entry {index} applied after {}: applied twice or out of order",
            self.last_index
        );
        self.last_index = index;
        if command == BLOCK {
            if let Some(gate) = &self.gate {
                gate.entered.send(()).expect("test waits for the gate");
                gate.release
                    .recv_timeout(TIMEOUT)
                    .expect("test releases the gate");
            }
        }
        assert!(command != PANIC, "state machine bug on purpose");
        self.commands.push(command.to_vec());
        Applied {
            index,
            len: self.commands.len(),
            digest: digest(&self.commands),
            restored_len: self.restored_len,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.last_index.to_be_bytes().to_vec();
        for command in &self.commands {
            out.extend_from_slice(&(command.len() as u32).to_be_bytes());
            out.extend_from_slice(command);
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (index, mut rest) = split_u64(snapshot).ok_or("truncated snapshot index")?;
        let mut commands = Vec::new();
        while !rest.is_empty() {
            let len_bytes: [u8; 4] = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or("truncated command length")?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            let command = rest.get(4..4 + len).ok_or("truncated command")?;
            commands.push(command.to_vec());
            rest = &rest[4 + len..];
        }
        self.last_index = index;
        self.restored_len = commands.len();
        self.commands = commands;
        Ok(())
    }
}

fn split_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(head), &bytes[8..]))
}

/// Order-sensitive digest of a command sequence (FNV-1a over length-prefixed commands).
fn digest(commands: &[Vec<u8>]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for command in commands {
        for byte in (command.len() as u32).to_be_bytes().iter().chain(command) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

type Answer = Result<Applied, ProposeError>;

fn config(dir: &Path) -> ClusterConfig {
    let mut config = ClusterConfig::new(1, dir);
    config.shards = 4;
    config
}

fn start(config: ClusterConfig) -> Cluster<Journal> {
    Cluster::start(config, |_| Journal::default()).expect("cluster starts")
}

/// Proposes and returns the channel the `done` callback answers on.
fn propose(handle: &ClusterHandle<Journal>, shard: ShardId, command: &[u8]) -> Receiver<Answer> {
    let (tx, rx) = mpsc::channel();
    let done = Box::new(move |answer| {
        // The receiver may be gone when a test only counts answers; that is fine.
        let _ = tx.send(answer);
    });
    handle
        .propose(shard, command.to_vec(), done)
        .expect("proposal accepted");
    rx
}

/// Waits for the single answer of a proposal and checks no second one follows: the callback is
/// consumed by its call, so the channel then disconnects.
fn answer(rx: &Receiver<Answer>) -> Answer {
    let answer = rx.recv_timeout(TIMEOUT).expect("done called in time");
    match rx.recv_timeout(TIMEOUT) {
        Err(RecvTimeoutError::Disconnected) => answer,
        Ok(second) => panic!("done called twice: {answer:?} then {second:?}"),
        Err(RecvTimeoutError::Timeout) => panic!("done callback never released"),
    }
}

fn command(shard: ShardId, n: usize) -> Vec<u8> {
    format!("shard{shard}-command{n}").into_bytes()
}

/// Proposes `count` commands to `shard` (all queued before any is awaited) and returns the
/// outputs in proposal order.
fn propose_many(
    handle: &ClusterHandle<Journal>,
    shard: ShardId,
    range: std::ops::Range<usize>,
) -> Vec<Applied> {
    let receivers: Vec<_> = range
        .map(|n| propose(handle, shard, &command(shard, n)))
        .collect();
    receivers
        .iter()
        .map(|rx| answer(rx).expect("applied"))
        .collect()
}

/// Returns once every turn that started before the call has finished: the barrier proposal is
/// stepped in a later turn than anything already answered, and answered at the end of it.
fn barrier(handle: &ClusterHandle<Journal>, shard: ShardId) {
    answer(&propose(handle, shard, b"barrier")).expect("barrier applied");
}

fn expected_digest(shard: ShardId, count: usize) -> u64 {
    let commands: Vec<Vec<u8>> = (0..count).map(|n| command(shard, n)).collect();
    digest(&commands)
}

#[test]
fn proposals_apply_once_in_proposal_order_per_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    // Several turns' worth of proposals, interleaved across shards in one inbox.
    config.max_proposals_per_turn = 7;
    let cluster = start(config);
    let handle = cluster.handle();
    let per_shard = 40;
    let receivers: Vec<(ShardId, usize, Receiver<Answer>)> = (0..per_shard)
        .flat_map(|n| (0..4).map(move |shard| (shard, n)))
        .map(|(shard, n)| (shard, n, propose(&handle, shard, &command(shard, n))))
        .collect();
    let mut last_index = [0u64; 4];
    for (shard, n, rx) in &receivers {
        let applied = answer(rx).expect("applied");
        let slot = *shard as usize;
        assert_eq!(applied.len, n + 1, "shard {shard} applied out of order");
        assert_eq!(applied.digest, expected_digest(*shard, n + 1));
        assert!(applied.index > last_index[slot]);
        last_index[slot] = applied.index;
    }
    let metrics = handle.metrics();
    assert_eq!(metrics.proposals, 4 * per_shard as u64);
    // Each shard also applied the empty entry its leader appended on election (Raft §8).
    assert_eq!(metrics.applied_entries, 4 * per_shard as u64 + 4);
    assert_eq!(metrics.leader_changes, 4);
    assert_eq!(metrics.dropped_proposals, 0);
    assert_eq!(metrics.busy_rejections, 0);
    assert!(metrics.flushes >= 1 && metrics.flushes <= metrics.ready_turns + 1);
    assert!(metrics.ready_turns >= (4 * per_shard as u64) / 7);
    cluster.shutdown();
}

/// Crash recovery: with no shutdown snapshot (as after a crash), the log is replayed.
fn restart_replays_the_log(fsync: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.fsync = fsync;
    config.snapshot_on_shutdown = false;
    let cluster = start(config.clone());
    let handle = cluster.handle();
    propose_many(&handle, 0, 0..30);
    propose_many(&handle, 3, 0..5);
    cluster.shutdown();

    let cluster = start(config);
    let handle = cluster.handle();
    let after = propose_many(&handle, 0, 30..31);
    assert_eq!(after[0].len, 31);
    assert_eq!(after[0].digest, expected_digest(0, 31));
    assert_eq!(after[0].restored_len, 0, "no snapshot was taken");
    let after = propose_many(&handle, 3, 5..6);
    assert_eq!(after[0].digest, expected_digest(3, 6));
    // Readiness is published at the end of a turn; one more answered proposal proves a turn
    // ended after the recovered entries were applied.
    propose_many(&handle, 1, 0..1);
    assert!(handle.is_ready());
    assert_eq!(handle.metrics().snapshots_taken, 0);
    cluster.shutdown();
}

#[test]
fn restart_replays_the_log_with_fsync() {
    restart_replays_the_log(true);
}

#[test]
fn restart_replays_the_log_without_fsync() {
    restart_replays_the_log(false);
}

/// Counts shard `shard`'s log entries left in sled and returns the first index. Mirrors the
/// documented key layout of `storage.rs`: `shard ‖ 0x04 ‖ index`, all big-endian.
fn stored_log(dir: &Path, shard: ShardId) -> (usize, Option<u64>) {
    // sled's background jobs may hold its lock briefly after shutdown; wait for them.
    let data_file = std::fs::File::open(dir.join("raft").join("db")).expect("sled data file");
    data_file.lock().expect("wait for sled lock");
    data_file.unlock().expect("unlock");
    let db = sled::open(dir.join("raft")).expect("open sled");
    let tree = db.open_tree("raft").expect("raft tree");
    let mut prefix = shard.to_be_bytes().to_vec();
    prefix.push(4);
    let keys: Vec<_> = tree
        .scan_prefix(&prefix)
        .map(|item| item.expect("read key").0)
        .collect();
    let first = keys.first().map(|key| {
        let index: [u8; 8] = key[9..17].try_into().expect("entry key");
        u64::from_be_bytes(index)
    });
    (keys.len(), first)
}

/// Shards that reach `snapshot_interval` together serialise in turns of their own, one per
/// turn here (`max_snapshots_per_turn`), and each still gets its snapshot though nothing more
/// is proposed after the burst.
#[test]
fn shards_that_reach_the_interval_together_each_snapshot_in_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_interval = 5;
    config.max_snapshots_per_turn = 1;
    // Every file below comes from an interval snapshot.
    config.snapshot_on_shutdown = false;
    let cluster = start(config);
    let handle = cluster.handle();
    let receivers: Vec<_> = (0..4)
        .flat_map(|shard| (0..6).map(move |n| (shard, n)))
        .map(|(shard, n)| propose(&handle, shard, &command(shard, n)))
        .collect();
    for rx in &receivers {
        answer(rx).expect("applied");
    }
    wait_until("every shard's interval snapshot", || {
        handle.metrics().snapshots_taken >= 4
    });
    // Each was serialised on the driver thread and written on the writer thread, and both
    // took time.
    let metrics = handle.metrics();
    for (what, histogram) in [
        ("serialised", &metrics.snapshot_serialize_micros),
        ("written", &metrics.snapshot_write_micros),
    ] {
        assert!(histogram.count() >= 4, "{what}: {histogram:?}");
    }
    assert!(metrics.snapshot_write_micros.sum > 0);
    cluster.shutdown();
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 4, "{files:?}");
    for shard in 0..4 {
        let (_, first) = stored_log(dir.path(), shard);
        assert!(
            first.is_none_or(|first| first > 5),
            "shard {shard}: {first:?}"
        );
    }
}

#[test]
fn snapshots_compact_the_log_and_restart_restores_from_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_interval = 5;
    let cluster = start(config.clone());
    let handle = cluster.handle();
    // Rounds of at least `snapshot_interval` entries, each applied in its own turn(s), so shard 0
    // snapshots (and compacts) once per round; shard 1 takes everything in one go.
    for round in [0..6, 6..12, 12..18, 18..23] {
        propose_many(&handle, 0, round);
    }
    propose_many(&handle, 1, 0..12);
    // Snapshots are taken after the turn's answers went out, and counted once their files
    // are written (on the writer thread) and their compactions staged: at least one of
    // shard 0 (one per round while the previous file is written, so one to four) and one
    // of shard 1.
    barrier(&handle, 2);
    wait_until("the interval snapshots", || {
        handle.metrics().snapshots_taken >= 2
    });
    cluster.shutdown();

    // The shutdown snapshot compacted what the interval left over.
    assert_eq!(stored_log(dir.path(), 0), (0, None));
    // The data of each shard's latest snapshot is in one file; older files were deleted.
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 4, "{files:?}");
    for (shard, file) in files.iter().enumerate() {
        assert!(file.starts_with(&format!("{shard:016x}-")), "{files:?}");
    }

    let cluster = start(config);
    let handle = cluster.handle();
    let after = propose_many(&handle, 0, 23..24);
    assert_eq!(after[0].len, 24);
    assert_eq!(after[0].digest, expected_digest(0, 24));
    assert!(
        after[0].restored_len >= 19,
        "restored {} commands",
        after[0].restored_len
    );
    let after = propose_many(&handle, 1, 12..13);
    assert_eq!(after[0].digest, expected_digest(1, 13));
    assert!(after[0].restored_len >= 9);
    cluster.shutdown();
}

/// File names in `data_dir/raft/snapshots`, sorted.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("raft").join("snapshots"))
        .expect("snapshot directory")
        .map(|entry| {
            let name = entry.expect("directory entry").file_name();
            name.into_string().expect("UTF-8 file name")
        })
        .filter(|name| name.ends_with(".snap"))
        .collect();
    names.sort();
    names
}

#[test]
fn start_fails_with_corrupt_when_a_snapshot_file_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_interval = 2;
    // Only shard 3 snapshots, so it is the one whose file or data is broken below.
    config.snapshot_on_shutdown = false;
    let cluster = start(config.clone());
    propose_many(&cluster.handle(), 3, 0..4);
    cluster.shutdown();

    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let path = dir.path().join("raft").join("snapshots").join(&files[0]);
    let len = std::fs::metadata(&path).expect("snapshot file").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open snapshot file");
    file.set_len(len - 1).expect("truncate");
    drop(file);

    match Cluster::start(config, |_| Journal::default()) {
        Err(ClusterError::Storage(StoreError::Corrupt { shard, reason })) => {
            assert_eq!(shard, 3);
            assert!(reason.contains(&files[0]), "{reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, cluster started"),
    }
}

#[test]
fn full_inbox_answers_busy_without_calling_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.inbox_capacity = 3;
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let mut gate = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let cluster = Cluster::start(config, |shard| Journal {
        gate: if shard == 0 { gate.take() } else { None },
        ..Journal::default()
    })
    .expect("cluster starts");
    let handle = cluster.handle();

    let blocked = propose(&handle, 0, BLOCK);
    entered_rx
        .recv_timeout(TIMEOUT)
        .expect("driver blocked in apply");
    // The driver is held inside `apply`, so nothing leaves the inbox now.
    let queued: Vec<_> = (0..3)
        .map(|n| propose(&handle, 1, &command(1, n)))
        .collect();
    let (tx, rejected_rx) = mpsc::channel::<Answer>();
    let rejected = handle.propose(
        1,
        command(1, 3),
        Box::new(move |answer| {
            let _ = tx.send(answer);
        }),
    );
    assert_eq!(rejected, Err(ProposeError::Busy));
    // `done` was dropped without being called.
    assert_eq!(
        rejected_rx.recv_timeout(TIMEOUT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(handle.metrics().busy_rejections, 1);

    release_tx.send(()).expect("driver waits");
    assert_eq!(answer(&blocked).expect("applied").len, 1);
    for (n, rx) in queued.iter().enumerate() {
        assert_eq!(answer(rx).expect("applied").len, n + 1);
    }
    cluster.shutdown();
}

#[test]
fn failing_state_machine_stops_only_its_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(config(dir.path()));
    let handle = cluster.handle();
    propose_many(&handle, 2, 0..3);
    assert_eq!(
        answer(&propose(&handle, 2, PANIC)),
        Err(ProposeError::Stopped)
    );
    assert_eq!(
        answer(&propose(&handle, 2, b"after")),
        Err(ProposeError::Stopped)
    );
    // Other shards keep working.
    let applied = propose_many(&handle, 1, 0..2);
    assert_eq!(applied[1].digest, expected_digest(1, 2));
    let metrics = handle.metrics();
    assert_eq!(metrics.failed_shards, 1);
    assert!(!handle.is_ready(), "a failed shard makes the node unready");
    cluster.shutdown();
}

#[test]
fn unknown_shard_and_stopped_cluster_refuse_without_calling_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(config(dir.path()));
    let handle = cluster.handle();
    let never_called = |_: Answer| panic!("done must not be called");
    assert_eq!(
        handle.propose(4, b"x".to_vec(), Box::new(never_called)),
        Err(ProposeError::UnknownShard)
    );
    propose_many(&handle, 0, 0..1);
    cluster.shutdown();
    assert_eq!(
        handle.propose(0, b"x".to_vec(), Box::new(never_called)),
        Err(ProposeError::Stopped)
    );
    assert!(!handle.is_ready());
}

#[test]
fn shutdown_answers_every_queued_proposal_once_and_keeps_exactly_the_applied_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let mut gate = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    let cluster = Cluster::start(config.clone(), |shard| Journal {
        gate: if shard == 0 { gate.take() } else { None },
        ..Journal::default()
    })
    .expect("cluster starts");
    let handle = cluster.handle();
    let blocked = propose(&handle, 0, BLOCK);
    entered_rx
        .recv_timeout(TIMEOUT)
        .expect("driver blocked in apply");
    let queued: Vec<_> = (0..20)
        .map(|n| propose(&handle, 1, &command(1, n)))
        .collect();
    let stopper = std::thread::spawn(move || cluster.shutdown());
    release_tx.send(()).expect("driver waits");
    stopper.join().expect("shutdown completes");

    assert_eq!(answer(&blocked).expect("applied").len, 1);
    // Whether the driver saw the stop before or after the queued proposals, each gets exactly
    // one answer, and the ones answered `Ok` are exactly a prefix that is durable.
    let answers: Vec<Answer> = queued.iter().map(answer).collect();
    let applied = answers.iter().take_while(|a| a.is_ok()).count();
    assert!(
        answers[applied..]
            .iter()
            .all(|a| *a == Err(ProposeError::Stopped)),
        "{answers:?}"
    );

    let cluster = start(config);
    let after = propose_many(&cluster.handle(), 1, 100..101);
    assert_eq!(after[0].len, applied + 1);
    cluster.shutdown();
}

#[test]
fn start_fails_when_a_snapshot_cannot_be_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_interval = 2;
    // Only shard 3 snapshots, so it is the one whose file or data is broken below.
    config.snapshot_on_shutdown = false;
    let cluster = start(config.clone());
    propose_many(&cluster.handle(), 3, 0..4);
    cluster.shutdown();

    struct Unrestorable;
    impl StateMachine for Unrestorable {
        type Output = ();
        fn apply(&mut self, _index: u64, _command: &[u8]) {}
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
            Err("incompatible snapshot".to_owned())
        }
    }
    match Cluster::start(config, |_| Unrestorable) {
        Err(ClusterError::Recover { shard, reason }) => {
            assert_eq!(shard, 3);
            assert!(reason.contains("incompatible snapshot"), "{reason}");
        }
        Err(other) => panic!("expected Recover, got {other}"),
        Ok(_) => panic!("expected Recover, cluster started"),
    }
}

#[test]
fn changing_the_shard_count_of_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    start(config(dir.path())).shutdown();
    let mut config = config(dir.path());
    config.shards = 8;
    match Cluster::start(config, |_| Journal::default()) {
        Err(ClusterError::Storage(StoreError::ShardCountMismatch { stored, configured })) => {
            assert_eq!((stored, configured), (4, 8));
        }
        Err(other) => panic!("expected ShardCountMismatch, got {other}"),
        Ok(_) => panic!("expected ShardCountMismatch, cluster started"),
    }
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`]. For conditions that
/// depend on the driver's clock, which no channel reports; the pause only paces the polling.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn quiet_shard_snapshots_after_snapshot_max_age_before_snapshot_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_interval = 1_000_000;
    config.snapshot_max_age = Duration::from_millis(1);
    config.tick_interval = Duration::from_millis(10);
    // Leave the restart to the age-based snapshot alone, as after a crash.
    config.snapshot_on_shutdown = false;
    let cluster = start(config.clone());
    let handle = cluster.handle();
    let applied = propose_many(&handle, 0, 0..5);
    let last = applied[4].index;
    // Far fewer than `snapshot_interval` entries, yet once they are older than the age bound a
    // later turn snapshots them all.
    // The file is renamed into place before the driver counts the snapshot: wait for both.
    wait_until("an age-based snapshot of shard 0", || {
        handle.metrics().snapshots_taken >= 1
            && snapshot_files(dir.path()).iter().any(|file| {
                file.starts_with(&format!("{:016x}-", 0))
                    && file.ends_with(&format!("-{last:016x}.snap"))
            })
    });
    cluster.shutdown();
    assert_eq!(stored_log(dir.path(), 0), (0, None), "log compacted");

    let cluster = start(config);
    let after = propose_many(&cluster.handle(), 0, 5..6);
    assert_eq!(
        after[0].restored_len, 5,
        "restored from the age-based snapshot"
    );
    assert_eq!(after[0].len, 6, "nothing replayed on top of it");
    assert_eq!(after[0].digest, expected_digest(0, 6));
    cluster.shutdown();
}

#[test]
fn graceful_shutdown_snapshots_every_shard_so_a_restart_replays_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Defaults: neither the entry count nor the age would trigger a snapshot here.
    let config = config(dir.path());
    let cluster = start(config.clone());
    let handle = cluster.handle();
    propose_many(&handle, 0, 0..7);
    propose_many(&handle, 2, 0..3);
    assert_eq!(handle.metrics().snapshots_taken, 0);
    cluster.shutdown();
    // Every shard applied at least its leader's empty entry, so every shard snapshotted.
    assert_eq!(handle.metrics().snapshots_taken, 4);
    for shard in 0..4 {
        assert_eq!(stored_log(dir.path(), shard), (0, None), "shard {shard}");
    }
    assert_eq!(snapshot_files(dir.path()).len(), 4);

    let cluster = start(config);
    let handle = cluster.handle();
    let restored: Vec<usize> = (0..4)
        .map(|shard| propose_many(&handle, shard, 100..101)[0].restored_len)
        .collect();
    assert_eq!(restored, vec![7, 0, 3, 0]);
    // Only each shard's new leader entry and the proposal above were applied: no replay.
    assert_eq!(handle.metrics().applied_entries, 4 + 4);
    cluster.shutdown();
}
