//! In-memory Raft storage that tells written from durable, so a simulated crash loses exactly
//! what a power failure would (research/reliability.md §1.1: LazyFS; the NATS failure mode).
//!
//! [`SimStorage`] is the replica's view through its page cache: every write lands there at once
//! and raft-rs reads it back through the [`Storage`] trait. [`Disk`] is what a sync made
//! durable. A replica syncs only where the Ready contract says it must (before sending
//! `persisted_messages` and calling `advance`, STYLE.md P4); a crash throws the live view away
//! and a restart rebuilds it from the disk. Writes that the real driver does not flush on their
//! own (the commit index after `advance`, compactions) stay volatile until the next sync, as
//! they do in `cluster::driver`.
//!
//! Misuse (an append that would leave a gap or overwrite compacted entries) is reported as a
//! [`StorageFault`] instead of a panic, so the simulation records it as a violation.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The durable (or, inside [`SimStorage`], the live) Raft state of one replica.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot (its metadata is the compaction point; index 0 at bootstrap).
    snapshot: Snapshot,
    /// Entries after the snapshot index, contiguous.
    entries: Vec<Entry>,
}

impl Disk {
    /// A new replica of a group whose voters are `voters` (all replicas bootstrap alike).
    pub fn bootstrap(voters: &[u64]) -> Self {
        let conf_state = ConfState::from((voters.to_vec(), vec![]));
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        Disk {
            hard_state: HardState::default(),
            conf_state,
            snapshot,
            entries: Vec::new(),
        }
    }

    /// A replica of a node joining a running group (`ClusterConfig::join_existing`): no
    /// configuration and no log until the leader's snapshot names it.
    pub fn empty() -> Self {
        Disk::default()
    }

    /// The stored snapshot, if one was taken or received (index > 0).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        (self.snapshot.get_metadata().index > 0).then_some(&self.snapshot)
    }

    /// Whether the entry at `index` of term `term` is durable here: in the log, or covered by
    /// the snapshot (which holds only committed, hence agreed, entries).
    pub fn holds(&self, index: u64, term: u64) -> bool {
        let snapshot = self.snapshot_index();
        if index <= snapshot {
            return index > 0;
        }
        self.entries
            .get((index - snapshot - 1) as usize)
            .is_some_and(|entry| entry.index == index && entry.term == term)
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |entry| entry.index)
    }
}

/// Why a write could not be applied to the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault(pub String);

/// The live Raft storage of a running replica.
pub struct SimStorage {
    live: Disk,
}

impl SimStorage {
    /// The live view right after a restart: exactly what was durable.
    pub fn recover(disk: &Disk) -> Self {
        SimStorage { live: disk.clone() }
    }

    /// What a sync writes to the disk.
    pub fn sync(&self) -> Disk {
        self.live.clone()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.live.snapshot_index()
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.live.conf_state
    }

    /// The configuration of the stored snapshot (the bootstrap configuration at index 0).
    pub fn snapshot_conf_state(&self) -> &ConfState {
        self.live.snapshot.get_metadata().get_conf_state()
    }

    /// The configuration an applied conf change produced, written with the next sync (as
    /// `cluster::group` stages it with the turn's write).
    pub fn set_conf_state(&mut self, conf_state: &ConfState) {
        self.live.conf_state = conf_state.clone();
    }

    /// Appends `entries`, dropping any conflicting suffix (Raft §5.3).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageFault> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let live = &mut self.live;
        if first.index <= live.snapshot_index() {
            return Err(StorageFault(format!(
                "append at {} overwrites compacted entries (snapshot at {})",
                first.index,
                live.snapshot_index()
            )));
        }
        if first.index > live.last_index() + 1 {
            return Err(StorageFault(format!(
                "append at {} leaves a gap after {}",
                first.index,
                live.last_index()
            )));
        }
        if entries
            .iter()
            .enumerate()
            .any(|(offset, entry)| entry.index != first.index + offset as u64)
        {
            return Err(StorageFault("appended entries are not contiguous".into()));
        }
        let keep = (first.index - live.snapshot_index() - 1) as usize;
        live.entries.truncate(keep);
        live.entries.extend_from_slice(entries);
        Ok(())
    }

    pub fn set_hard_state(&mut self, hard_state: &HardState) {
        self.live.hard_state = hard_state.clone();
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.live.hard_state.commit = commit;
    }

    /// Replaces the log with a snapshot received from the leader.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageFault> {
        let meta = snapshot.get_metadata();
        let live = &mut self.live;
        if meta.index <= live.snapshot_index() {
            return Err(StorageFault(format!(
                "received snapshot at {} is not newer than the stored one at {}",
                meta.index,
                live.snapshot_index()
            )));
        }
        live.snapshot = snapshot.clone();
        live.entries.clear();
        live.hard_state.term = live.hard_state.term.max(meta.term);
        live.hard_state.commit = meta.index;
        live.conf_state = meta.get_conf_state().clone();
        Ok(())
    }

    /// Stores a snapshot of applied (hence committed) state and drops the log up to it.
    pub fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageFault> {
        let index = snapshot.get_metadata().index;
        let live = &mut self.live;
        if index <= live.snapshot_index() || index > live.hard_state.commit {
            return Err(StorageFault(format!(
                "compaction to {index} outside (snapshot {}, commit {}]",
                live.snapshot_index(),
                live.hard_state.commit
            )));
        }
        let drop = (index - live.snapshot_index()) as usize;
        live.entries.drain(..drop.min(live.entries.len()));
        live.snapshot = snapshot;
        Ok(())
    }
}

impl Storage for SimStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.live.hard_state.clone(),
            self.live.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let live = &self.live;
        if low <= live.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > live.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = live.snapshot_index() + 1;
        let mut entries = live.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let live = &self.live;
        let snapshot = live.snapshot.get_metadata();
        if index == snapshot.index {
            return Ok(snapshot.term);
        }
        if index < snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        live.entries
            .get((index - snapshot.index - 1) as usize)
            .map(|entry| entry.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.live.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.live.last_index())
    }

    /// The stored snapshot; raft-rs retries later while it is older than requested, or while
    /// it was taken before `to` joined: raft-rs on `to` refuses a snapshot whose configuration
    /// does not name it, and every replica snapshots right after applying a change that adds
    /// a member (as `cluster::storage` and `cluster::group` do).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let conf = self.live.snapshot.get_metadata().get_conf_state();
        let names_to = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .any(|id| *id == to);
        if self.live.snapshot_index() >= request_index.max(1) && names_to {
            Ok(self.live.snapshot.clone())
        } else {
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot
            .mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        snapshot
    }

    #[test]
    fn unsynced_writes_are_lost_by_a_restart_and_synced_ones_are_not() {
        let mut storage = SimStorage::recover(&Disk::bootstrap(&[1, 2, 3]));
        storage.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let disk = storage.sync();
        storage.append(&[entry(3, 1)]).unwrap();
        storage.set_commit(3);
        let restarted = SimStorage::recover(&disk);
        assert_eq!(restarted.last_index().unwrap(), 2);
        assert_eq!(restarted.initial_state().unwrap().hard_state.commit, 0);
        assert_eq!(
            restarted.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3]
        );
    }

    #[test]
    fn raft_5_3_append_truncates_the_conflicting_suffix() {
        let mut storage = SimStorage::recover(&Disk::bootstrap(&[1]));
        storage
            .append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        storage.append(&[entry(2, 2)]).unwrap();
        assert_eq!(storage.last_index().unwrap(), 2);
        assert_eq!(storage.term(2).unwrap(), 2);
        assert!(storage.append(&[entry(5, 2)]).is_err(), "gap");
    }

    #[test]
    fn compaction_keeps_the_snapshot_term_and_refuses_compacted_reads() {
        let mut storage = SimStorage::recover(&Disk::bootstrap(&[1]));
        storage
            .append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .unwrap();
        assert!(storage.compact(snapshot(2, 1)).is_err(), "beyond commit");
        storage.set_commit(3);
        storage.compact(snapshot(2, 1)).unwrap();
        assert_eq!(storage.first_index().unwrap(), 3);
        assert_eq!(storage.term(2).unwrap(), 1);
        assert_eq!(
            storage.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        assert_eq!(
            storage.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        assert_eq!(
            storage
                .entries(3, 4, None, GetEntriesContext::empty(false))
                .unwrap(),
            vec![entry(3, 2)]
        );
        assert!(storage.append(&[entry(2, 3)]).is_err(), "compacted");
        assert_eq!(storage.snapshot(0, 2).unwrap().get_metadata().index, 2);
        assert!(storage.snapshot(3, 2).is_err());
    }

    #[test]
    fn a_snapshot_goes_only_to_a_node_its_configuration_names() {
        let mut storage = SimStorage::recover(&Disk::bootstrap(&[1, 2]));
        storage.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        storage.set_commit(2);
        let mut taken = snapshot(2, 1);
        let learner = ConfState::from((vec![1, 2], vec![3]));
        taken.mut_metadata().set_conf_state(learner.clone());
        storage.set_conf_state(&learner);
        storage.compact(taken).unwrap();
        assert_eq!(storage.snapshot(1, 3).unwrap().get_metadata().index, 2);
        assert_eq!(storage.snapshot(2, 2).unwrap().get_metadata().index, 2);
        assert!(storage.snapshot(2, 4).is_err(), "node 4 is no member");
        assert_eq!(storage.snapshot_conf_state(), &learner);
    }

    #[test]
    fn durable_entries_are_held_and_a_joining_replica_holds_nothing() {
        let mut storage = SimStorage::recover(&Disk::bootstrap(&[1]));
        storage
            .append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .unwrap();
        storage.set_commit(3);
        storage.compact(snapshot(2, 1)).unwrap();
        let disk = storage.sync();
        assert!(disk.holds(1, 1) && disk.holds(2, 1) && disk.holds(3, 2));
        assert!(!disk.holds(3, 1), "another term at that index");
        assert!(!disk.holds(4, 2));
        assert!(!disk.holds(0, 0));
        let empty = Disk::empty();
        assert!(!empty.holds(1, 1));
        let joining = SimStorage::recover(&empty);
        assert_eq!(
            joining.initial_state().unwrap().conf_state,
            ConfState::default()
        );
        assert!(joining.snapshot(0, 1).is_err());
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log() {
        let mut storage = SimStorage::recover(&Disk::bootstrap(&[1, 2]));
        storage.append(&[entry(1, 1)]).unwrap();
        storage.install_snapshot(&snapshot(5, 3)).unwrap();
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.last_index().unwrap(), 5);
        assert_eq!(storage.initial_state().unwrap().hard_state.commit, 5);
        assert!(storage.install_snapshot(&snapshot(4, 3)).is_err());
    }
}
