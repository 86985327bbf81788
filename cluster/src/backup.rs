//! Online backup and restore of every shard's state machine, without knowing what it holds.
//!
//! # Taking a backup
//!
//! [`ClusterHandle::snapshot_all`](crate::ClusterHandle::snapshot_all) asks the driver thread,
//! which owns the state machines, to serialise each shard with [`crate::StateMachine::snapshot`]
//! between two turns: after the turn's writes, when nothing of a shard is half applied. Each
//! part is therefore a consistent image of one shard at its applied index (and the term of the
//! entry there), taken without stopping anything and without reading state from another thread
//! mid-apply. Shards are independent Raft groups, so parts of different shards are taken at
//! unrelated points of their logs: a backup is consistent per shard, not across shards. The
//! driver serialises at most `max_snapshots_per_turn` shards per turn, so one backup never
//! holds every shard up at once; nothing is written to disk, and the log is not compacted.
//!
//! At most one `snapshot_all` runs at a time ([`SnapshotAllError::Busy`]), so the memory a
//! backup holds is bounded by one copy of the serialised state.
//!
//! # Restoring
//!
//! [`restore_data_dir`] initialises an empty data directory in which every shard's Raft storage
//! starts from its backed-up part, exactly as if the shard had received that snapshot from a
//! leader: the snapshot file and its sled record, a hard state committed at the snapshot's
//! index, and a configuration of the local node as the only voter. [`Cluster::start`] then
//! recovers each shard like any snapshotted shard: it restores the state machine from the part
//! and continues the log after its index. Everything is built in `raft.restoring/` and renamed
//! to `raft/` only once complete and synced, so a failed restore leaves no Raft state behind.
//!
//! [`Cluster::start`]: crate::Cluster::start

use std::fs::{self, File};
use std::io;
use std::path::Path;

use raft::eraftpb::ConfState;

use crate::storage::{new_snapshot, RaftDb, WriteBatch};
use crate::{ClusterConfig, ClusterError, ShardId};

/// One shard's state machine serialised at a known point of its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// The shard.
    pub shard: ShardId,
    /// Index of the last entry applied to the state machine when it was serialised.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// [`StateMachine::snapshot`](crate::StateMachine::snapshot) at `applied_index`.
    pub data: Vec<u8>,
}

/// Why [`ClusterHandle::snapshot_all`](crate::ClusterHandle::snapshot_all) produced no
/// snapshots.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SnapshotAllError {
    /// Another `snapshot_all` is still running.
    #[error("a snapshot of every shard is already being taken")]
    Busy,
    /// The shard has not applied any entry yet (it has no leader since start).
    #[error("shard {shard} has applied nothing yet")]
    NotReady {
        /// The shard.
        shard: ShardId,
    },
    /// The shard group was stopped by a failure (or failed while being serialised).
    #[error("shard {shard} is stopped")]
    ShardFailed {
        /// The shard.
        shard: ShardId,
    },
    /// The driver stopped.
    #[error("the replication driver is stopped")]
    Stopped,
}

/// Called exactly once with the outcome of an accepted
/// [`ClusterHandle::snapshot_all`](crate::ClusterHandle::snapshot_all), on the driver thread:
/// hand the result on (a channel) and return.
pub type SnapshotsDone = Box<dyn FnOnce(Result<Vec<ShardSnapshot>, SnapshotAllError>) + Send>;

/// A `snapshot_all` on its way to, or being served by, the driver. Answers `Stopped` if dropped
/// unanswered (the driver stopped or panicked), so `done` runs exactly once by construction.
pub(crate) struct SnapshotAllRequest {
    done: Option<SnapshotsDone>,
    /// Parts taken so far, for shards `0..parts.len()`.
    pub(crate) parts: Vec<ShardSnapshot>,
    /// Cleared when the request is answered, so the next `snapshot_all` may start.
    busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SnapshotAllRequest {
    pub(crate) fn new(
        done: SnapshotsDone,
        busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        SnapshotAllRequest {
            done: Some(done),
            parts: Vec::new(),
            busy,
        }
    }

    /// Answers the request with the parts taken so far.
    pub(crate) fn complete(mut self) {
        let parts = std::mem::take(&mut self.parts);
        self.answer(Ok(parts));
    }

    /// Answers the request with `error`.
    pub(crate) fn fail(mut self, error: SnapshotAllError) {
        self.answer(Err(error));
    }

    /// Discards the callback without calling it: only for a request that `snapshot_all` itself
    /// refused with an `Err`.
    pub(crate) fn disarm(mut self) {
        self.done = None;
    }

    fn answer(&mut self, result: Result<Vec<ShardSnapshot>, SnapshotAllError>) {
        // Free the slot first: whoever sees the answer may start the next backup at once.
        self.busy.store(false, std::sync::atomic::Ordering::Release);
        if let Some(done) = self.done.take() {
            let call = std::panic::AssertUnwindSafe(|| done(result));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!("snapshot_all completion callback panicked");
            }
        }
    }
}

impl Drop for SnapshotAllRequest {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.answer(Err(SnapshotAllError::Stopped));
        }
    }
}

/// Initialises the Raft storage of `config.data_dir` so that every shard starts from its part
/// of `snapshots` (one per shard `0..config.shards`, in any order): a restore from an online
/// backup. `data_dir/raft` must not exist yet, so existing state is never overwritten; a
/// leftover `data_dir/raft.restoring` of an interrupted restore is removed first.
///
/// Parts are written as received snapshots with the local node (`config.node_id`) as the only
/// voter, so the restored node starts as a single-node cluster whatever the backed-up one was.
/// The state-machine bytes are not interpreted here: check that they restore (the caller's
/// [`StateMachine::restore`](crate::StateMachine::restore)) before calling, or
/// [`Cluster::start`](crate::Cluster::start) fails on them later.
///
/// ```
/// use mimid_cluster::{restore_data_dir, ClusterConfig, ShardSnapshot};
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut config = ClusterConfig::new(1, dir.path());
/// config.shards = 2;
/// let parts = (0..2)
///     .map(|shard| ShardSnapshot { shard, applied_index: 7, applied_term: 2, data: vec![] })
///     .collect();
/// restore_data_dir(&config, parts).unwrap();
/// assert!(dir.path().join("raft").is_dir());
/// ```
pub fn restore_data_dir(
    config: &ClusterConfig,
    mut snapshots: Vec<ShardSnapshot>,
) -> Result<(), ClusterError> {
    config.validate()?;
    snapshots.sort_by_key(|part| part.shard);
    check_parts(config.shards, &snapshots)?;
    let raft_dir = config.data_dir.join(RAFT_DIR);
    if raft_dir.exists() {
        return Err(invalid(format!(
            "{} already exists: restore only into a data directory without Raft state",
            raft_dir.display()
        )));
    }
    let building = config.data_dir.join(RESTORING_DIR);
    remove_leftover(&building)?;
    let result = write_parts(config, &building, &snapshots)
        .and_then(|()| publish(&building, &raft_dir, &config.data_dir, config.fsync));
    if result.is_err() {
        // Best effort: the next attempt removes it too.
        let _ = fs::remove_dir_all(&building);
    }
    result
}

/// Parts must be exactly shards `0..shards`, each at a real log position.
fn check_parts(shards: u64, snapshots: &[ShardSnapshot]) -> Result<(), ClusterError> {
    if snapshots.len() as u64 != shards {
        return Err(invalid(format!(
            "{} shard snapshots for a configuration of {shards} shards",
            snapshots.len()
        )));
    }
    for (expected, part) in (0..shards).zip(snapshots) {
        if part.shard != expected {
            return Err(invalid(format!(
                "shard {expected} has no snapshot (found shard {} instead)",
                part.shard
            )));
        }
        // Raft log positions start at index 1, term 1: a part at 0 was never applied.
        if part.applied_index == 0 || part.applied_term == 0 {
            return Err(invalid(format!(
                "shard {} snapshot is at index {} term {}, not a log position",
                part.shard, part.applied_index, part.applied_term
            )));
        }
    }
    Ok(())
}

/// Writes every part into a new Raft database in `dir` and makes it durable.
fn write_parts(
    config: &ClusterConfig,
    dir: &Path,
    snapshots: &[ShardSnapshot],
) -> Result<(), ClusterError> {
    let mut db = RaftDb::open(dir, config.shards, config.fsync)?;
    let mut batch = WriteBatch::default();
    let voters = ConfState::from((vec![config.node_id], vec![]));
    for part in snapshots {
        let (mut storage, _) = db.load_shard(part.shard)?;
        let snapshot = new_snapshot(
            part.applied_index,
            part.applied_term,
            voters.clone(),
            part.data.clone(),
        );
        storage.stage_restored_snapshot(&snapshot)?;
        batch.take_from(&mut storage);
    }
    db.write(batch)?;
    db.sync()?;
    Ok(())
}

/// Renames the complete database into place and makes the rename durable.
fn publish(
    building: &Path,
    raft_dir: &Path,
    data_dir: &Path,
    fsync: bool,
) -> Result<(), ClusterError> {
    fs::rename(building, raft_dir)
        .map_err(|source| io_error("rename restored raft directory", source))?;
    if fsync {
        File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| io_error("fsync data directory", source))?;
    }
    Ok(())
}

fn remove_leftover(dir: &Path) -> Result<(), ClusterError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("remove an interrupted restore", source)),
    }
}

fn invalid(reason: String) -> ClusterError {
    ClusterError::InvalidRestore(reason)
}

fn io_error(context: &'static str, source: io::Error) -> ClusterError {
    ClusterError::Storage(crate::StoreError::Io { context, source })
}

/// The Raft directory inside the data directory (as `Cluster::start` opens it).
const RAFT_DIR: &str = "raft";
/// Where [`restore_data_dir`] builds the Raft directory before renaming it into place.
const RESTORING_DIR: &str = "raft.restoring";

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::{Cluster, ClusterHandle, StateMachine};

    const TIMEOUT: Duration = Duration::from_secs(30);
    const SHARDS: u64 = 3;
    /// Makes `Ledger::apply` wait until the test opens the gate.
    const BLOCK: &[u8] = b"block";

    /// Appends every command; shares its state with the test, which reads it like a node
    /// serves reads from its shards.
    struct Ledger {
        state: Arc<Mutex<LedgerState>>,
        gate: Option<Gate>,
    }

    /// Tells the test the driver entered a blocking apply, and waits for its release.
    type Gate = (Sender<()>, Arc<Mutex<Receiver<()>>>);

    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    struct LedgerState {
        last_index: u64,
        commands: Vec<Vec<u8>>,
    }

    impl StateMachine for Ledger {
        type Output = usize;

        fn apply(&mut self, index: u64, command: &[u8]) -> usize {
            if command == BLOCK {
                if let Some((entered, release)) = &self.gate {
                    entered.send(()).expect("test waits for the gate");
                    release
                        .lock()
                        .recv_timeout(TIMEOUT)
                        .expect("test opens the gate");
                }
            }
            let mut state = self.state.lock();
            state.last_index = index;
            state.commands.push(command.to_vec());
            state.commands.len()
        }

        fn snapshot(&self) -> Vec<u8> {
            encode(&self.state.lock())
        }

        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            *self.state.lock() = decode(snapshot).ok_or("not a ledger snapshot")?;
            Ok(())
        }
    }

    /// `last_index ‖ (len ‖ command)*`, all u64 big-endian.
    fn encode(state: &LedgerState) -> Vec<u8> {
        let mut out = state.last_index.to_be_bytes().to_vec();
        for command in &state.commands {
            out.extend_from_slice(&(command.len() as u64).to_be_bytes());
            out.extend_from_slice(command);
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Option<LedgerState> {
        let take_u64 = |bytes: &mut &[u8]| {
            let (head, rest) = bytes.split_first_chunk::<8>()?;
            *bytes = rest;
            Some(u64::from_be_bytes(*head))
        };
        let last_index = take_u64(&mut bytes)?;
        let mut commands = Vec::new();
        while !bytes.is_empty() {
            let len = usize::try_from(take_u64(&mut bytes)?).ok()?;
            let (command, rest) = (bytes.get(..len)?, bytes.get(len..)?);
            commands.push(command.to_vec());
            bytes = rest;
        }
        Some(LedgerState {
            last_index,
            commands,
        })
    }

    struct Node {
        cluster: Cluster<Ledger>,
        states: Vec<Arc<Mutex<LedgerState>>>,
    }

    fn config(dir: &Path) -> ClusterConfig {
        let mut config = ClusterConfig::new(1, dir);
        config.shards = SHARDS;
        config.tick_interval = Duration::from_millis(10);
        config.max_snapshots_per_turn = 1;
        config
    }

    fn start(config: ClusterConfig, gate: Option<(Sender<()>, Receiver<()>)>) -> Node {
        let states: Vec<_> = (0..config.shards).map(|_| Arc::default()).collect();
        let gate = gate.map(|(entered, release)| (entered, Arc::new(Mutex::new(release))));
        let shared = states.clone();
        let cluster = Cluster::start(config, |shard| Ledger {
            state: Arc::clone(&shared[shard as usize]),
            gate: gate.clone(),
        })
        .expect("cluster starts");
        wait_ready(&cluster.handle());
        Node { cluster, states }
    }

    fn wait_ready(handle: &ClusterHandle<Ledger>) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !handle.is_ready() {
            assert!(std::time::Instant::now() < deadline, "cluster not ready");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn propose(handle: &ClusterHandle<Ledger>, shard: ShardId, command: &[u8]) -> usize {
        let (tx, rx) = mpsc::channel();
        handle
            .propose(
                shard,
                command.to_vec(),
                Box::new(move |r| tx.send(r).unwrap()),
            )
            .expect("proposal queued");
        rx.recv_timeout(TIMEOUT)
            .expect("proposal answered")
            .expect("proposal applied")
    }

    fn snapshot_all(
        handle: &ClusterHandle<Ledger>,
    ) -> Receiver<Result<Vec<ShardSnapshot>, SnapshotAllError>> {
        let (tx, rx) = mpsc::channel();
        handle
            .snapshot_all(Box::new(move |r| tx.send(r).unwrap()))
            .expect("snapshot_all queued");
        rx
    }

    /// The backup bound: a restored data dir starts, every shard serves exactly the state of its
    /// part (reads equal the originals at backup time, not what was applied after), and takes
    /// new proposals after the restored log position.
    #[test]
    fn a_data_dir_restored_from_snapshots_starts_serves_the_backed_up_state_and_takes_proposals() {
        let original_dir = tempfile::tempdir().unwrap();
        let node = start(config(original_dir.path()), None);
        let handle = node.cluster.handle();
        for n in 0..10u8 {
            propose(&handle, u64::from(n) % SHARDS, &[b'a', n]);
        }
        let parts = snapshot_all(&handle)
            .recv_timeout(TIMEOUT)
            .expect("answered")
            .expect("snapshots taken");
        let at_backup: Vec<LedgerState> = node.states.iter().map(|s| s.lock().clone()).collect();
        // Written after the backup: must not appear in the restored node.
        propose(&handle, 0, b"after the backup");

        assert_eq!(parts.len() as u64, SHARDS);
        for (shard, part) in parts.iter().enumerate() {
            assert_eq!(part.shard, shard as u64);
            let state = decode(&part.data).expect("a ledger snapshot");
            assert_eq!(state, at_backup[shard], "shard {shard}");
            // The part is the state at its applied index: the last command applied is there
            // (a leader's empty entries may follow it, so the index can only be later).
            assert!(part.applied_index >= state.last_index, "shard {shard}");
            assert!(part.applied_term >= 1);
        }
        drop(node);

        let restored_dir = tempfile::tempdir().unwrap();
        restore_data_dir(&config(restored_dir.path()), parts.clone()).expect("restored");
        let restored = start(config(restored_dir.path()), None);
        for (shard, state) in restored.states.iter().enumerate() {
            assert_eq!(*state.lock(), at_backup[shard], "restored shard {shard}");
        }
        let handle = restored.cluster.handle();
        let before = at_backup[0].commands.len();
        assert_eq!(propose(&handle, 0, b"after the restore"), before + 1);
        let state = restored.states[0].lock().clone();
        assert!(
            state.last_index > parts[0].applied_index,
            "log continues after the part"
        );
        assert_eq!(state.commands.last().unwrap(), b"after the restore");
        drop(restored);

        // And it is a real data dir: a restart recovers the new entry too.
        let again = start(config(restored_dir.path()), None);
        assert_eq!(*again.states[0].lock(), state);
    }

    /// One backup at a time: a second request while the first waits for the driver is refused
    /// at once with `Busy`, and the slot is free again once the first is answered.
    #[test]
    fn a_second_snapshot_all_while_one_runs_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let node = start(config(dir.path()), Some((entered_tx, release_rx)));
        let handle = node.cluster.handle();
        // Hold the driver inside an apply, so the first request cannot be served yet.
        let (tx, blocked) = mpsc::channel();
        handle
            .propose(1, BLOCK.to_vec(), Box::new(move |r| tx.send(r).unwrap()))
            .unwrap();
        entered_rx
            .recv_timeout(TIMEOUT)
            .expect("driver entered apply");
        let first = snapshot_all(&handle);
        let (tx, _second) = mpsc::channel();
        assert_eq!(
            handle.snapshot_all(Box::new(move |r| tx.send(r).unwrap())),
            Err(SnapshotAllError::Busy)
        );
        release_tx.send(()).unwrap();
        blocked.recv_timeout(TIMEOUT).unwrap().unwrap();
        let parts = first.recv_timeout(TIMEOUT).unwrap().expect("first served");
        assert_eq!(parts.len() as u64, SHARDS);
        let parts = snapshot_all(&handle)
            .recv_timeout(TIMEOUT)
            .unwrap()
            .expect("the slot is free again");
        assert_eq!(
            decode(&parts[1].data).unwrap().commands,
            vec![BLOCK.to_vec()]
        );
    }

    #[test]
    fn a_request_queued_at_shutdown_is_answered_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let busy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let request = SnapshotAllRequest::new(Box::new(move |r| tx.send(r).unwrap()), busy.clone());
        drop(request);
        assert_eq!(rx.try_recv(), Ok(Err(SnapshotAllError::Stopped)));
        assert!(!busy.load(Ordering::Acquire), "slot freed");

        let node = start(config(dir.path()), None);
        let handle = node.cluster.handle();
        drop(node);
        let (tx, _rx) = mpsc::channel();
        assert_eq!(
            handle.snapshot_all(Box::new(move |r| tx.send(r).unwrap())),
            Err(SnapshotAllError::Stopped)
        );
    }

    #[test]
    fn restore_refuses_wrong_parts_and_existing_state_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let part = |shard, applied_index| ShardSnapshot {
            shard,
            applied_index,
            applied_term: 1,
            data: Vec::new(),
        };
        let cases: Vec<(&str, Vec<ShardSnapshot>)> = vec![
            (
                "2 shard snapshots for a configuration of 3",
                vec![part(0, 1), part(1, 1)],
            ),
            (
                "shard 2 has no snapshot",
                vec![part(0, 1), part(1, 1), part(1, 1)],
            ),
            (
                "not a log position",
                vec![part(0, 1), part(1, 0), part(2, 1)],
            ),
        ];
        for (expected, parts) in cases {
            match restore_data_dir(&config, parts) {
                Err(ClusterError::InvalidRestore(reason)) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("{expected}: {other:?}"),
            }
            assert!(
                fs::read_dir(dir.path()).unwrap().next().is_none(),
                "nothing written"
            );
        }

        let good = || (0..SHARDS).map(|shard| part(shard, 3)).collect::<Vec<_>>();
        // A leftover of an interrupted restore is replaced.
        fs::create_dir_all(dir.path().join(RESTORING_DIR).join("junk")).unwrap();
        restore_data_dir(&config, good()).expect("restores over a leftover");
        assert!(!dir.path().join(RESTORING_DIR).exists());
        match restore_data_dir(&config, good()) {
            Err(ClusterError::InvalidRestore(reason)) => {
                assert!(reason.contains("already exists"), "{reason}")
            }
            other => panic!("restore over raft state: {other:?}"),
        }
    }
}
