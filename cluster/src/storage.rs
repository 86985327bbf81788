//! sled-backed Raft log storage for many shard groups in one database.
//!
//! Every shard group's Raft state lives in one sled tree, `raft`, under keys prefixed by the
//! shard id (8 bytes, big-endian) and a kind byte, so one group's keys are contiguous and ordered
//! by log index:
//!
//! | key | value |
//! |---|---|
//! | `shard ‖ 0x01` | `HardState` (protobuf) |
//! | `shard ‖ 0x02` | `ConfState` (protobuf) |
//! | `shard ‖ 0x03` | record of the latest snapshot: version, data length, SHA-256 and `SnapshotMetadata` (protobuf); see `snapshot_file.rs` |
//! | `shard ‖ 0x04 ‖ index` | `Entry` (protobuf), `index` big-endian |
//!
//! The default tree holds node-wide metadata (`format_version`, `shard_count`, u64 big-endian).
//!
//! The snapshot's state-machine data is not in sled: it lives in
//! `snapshots/<shard>-<term>-<index>.snap` beside sled's files, written and synced before its
//! record enters a batch, and deleted only after a newer record is durable (`snapshot_file.rs`
//! has the protocol). Format version 1 kept the whole `Snapshot` under `shard ‖ 0x03`, where
//! sled rewrote the multi-MB value with every neighbouring log write (bench/README.md);
//! [`RaftDb::open`] moves such snapshots to files once.
//!
//! Writes are never applied directly. [`ShardStorage`] stages them and updates its in-memory view
//! (first/last index, hard state, conf state, snapshot metadata) at once; the driver then collects
//! the staged writes of *all* groups of one loop turn into one atomic `sled::Batch` and makes it
//! durable with a single [`RaftDb::write`]: one `flush` plus one `fdatasync` of sled's data file
//! (research/floors.md pitfall 16: sled's `flush` is only `sync_file_range`, which neither
//! flushes the disk cache nor file metadata). Values above sled's blob threshold (a quarter of a
//! segment) are written by sled to separate files under `blobs/`, which sled never syncs; they
//! are synced here too.
//!
//! Reads see the staged writes: raft reads (`entries`, `term`) take a log entry from the staged
//! writes when one is staged for its key (an append not yet written, or a deletion) and from
//! sled otherwise, and the bounds they check (first, last and snapshot index) are the in-memory
//! view, which staging updates at once. So a read answers for the log as staged, whenever
//! raft-rs makes it. raft-rs does read in the middle of a turn: a leader that applies a conf
//! change probes the new members at once (`post_conf_change`), and a group whose only voter is
//! the leader commits and applies its own entries in the turn's second phase, with the new
//! commit index (and any conf state applied before) still staged. Reads never wait for a write,
//! so the turn keeps its single durable flush.
//!
//! Storage failures are returned as errors and never retried here: raft-rs treats an error from
//! `Storage` as fatal for the group (STYLE.md P4), and the driver stops the group.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional as _;

use crate::snapshot_file::{PendingWrite, SnapshotFiles, SnapshotRecord, SnapshotWriter};
use crate::ShardId;

/// Why the Raft storage could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled returned an error (IO, corruption detected by sled, or a bug in sled).
    #[error("sled operation failed")]
    Sled(#[from] sled::Error),
    /// A filesystem call outside sled failed (opening or syncing files).
    #[error("{context}")]
    Io {
        /// Short verb phrase naming the operation.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A stored protobuf value could not be decoded or encoded.
    #[error("codec failure for {what} of shard {shard}")]
    Codec {
        /// The shard whose value failed.
        shard: ShardId,
        /// Which kind of value.
        what: &'static str,
        /// The protobuf error.
        #[source]
        source: protobuf::ProtobufError,
    },
    /// A snapshot file could not be created, written, synced, read or removed.
    #[error("snapshot storage: {context} {}", path.display())]
    SnapshotFile {
        /// Short verb naming the operation.
        context: &'static str,
        /// The file (or the snapshot directory).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Stored state violates an invariant of this module (for example a gap in the log, or a
    /// snapshot file that is missing, short or fails its checksum).
    #[error("corrupt raft state for shard {shard}: {reason}")]
    Corrupt {
        /// The shard whose state is inconsistent.
        shard: ShardId,
        /// What is wrong.
        reason: String,
    },
    /// A caller asked for a write that would break the log's invariants.
    #[error("rejected raft write for shard {shard}: {reason}")]
    InvalidWrite {
        /// The shard the write was for.
        shard: ShardId,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was created by an incompatible version of this crate.
    #[error("unsupported raft storage format version {found} (expected {expected})")]
    FormatVersion {
        /// Version found on disk.
        found: u64,
        /// Version this build writes.
        expected: u64,
    },
    /// Another process (or another `Cluster` in this one) has the Raft directory open.
    #[error("raft directory {} is in use by another instance", path.display())]
    DirectoryInUse {
        /// The Raft directory.
        path: PathBuf,
    },
    /// The database was created with a different shard count; rooms would hash elsewhere.
    #[error("database holds {stored} shards but the configuration asks for {configured}")]
    ShardCountMismatch {
        /// Shard count recorded on disk.
        stored: u64,
        /// Shard count in the configuration.
        configured: u64,
    },
}

/// The node's Raft database: one sled `Db` shared by every local shard group.
pub(crate) struct RaftDb {
    db: sled::Db,
    tree: sled::Tree,
    files: SnapshotFiles,
    /// Writes the files of the snapshots the groups take, off the driver thread.
    writer: SnapshotWriter,
    durability: Durability,
    /// Held for as long as the database is open; declared last so it is released after sled.
    _dir_lock: File,
}

/// How [`RaftDb::write`] makes a batch durable.
enum Durability {
    /// `flush` plus `fdatasync` of the data file and of new blob files.
    Fsync { data_file: File, blobs: BlobSync },
    /// `flush` only (`sync_file_range`): survives a process crash, not a power loss.
    FlushOnly,
}

/// Writes staged by one or more groups, applied atomically by [`RaftDb::write`].
#[derive(Default)]
pub(crate) struct WriteBatch {
    batch: sled::Batch,
    ops: usize,
    /// Bytes of the keys and values in `batch` (for `ClusterMetrics::written_bytes`).
    bytes: u64,
    must_sync: bool,
    /// Snapshot files replaced by records in `batch`: deleted once `batch` is durable.
    retired_files: Vec<PathBuf>,
}

/// One shard group's view of the Raft log, implementing [`raft::Storage`].
pub(crate) struct ShardStorage {
    shard: ShardId,
    tree: sled::Tree,
    files: SnapshotFiles,
    writer: SnapshotWriter,
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot (stored or staged); its file is complete whenever this is set.
    snapshot: Option<SnapshotRecord>,
    snapshot_index: u64,
    snapshot_term: u64,
    last_index: u64,
    last_term: u64,
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    must_sync: bool,
    /// Files of snapshots replaced by a staged one, to delete once the staged record is durable.
    retired_files: Vec<PathBuf>,
}

impl RaftDb {
    /// Opens (or creates) the database in `dir` and checks it was written by this format version
    /// for `shards` shards.
    pub(crate) fn open(dir: &Path, shards: u64, fsync: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            context: "create raft data directory",
            source,
        })?;
        let dir_lock = lock_dir(dir)?;
        wait_for_sled_release(dir)?;
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree(RAFT_TREE)?;
        let files = SnapshotFiles::open(dir.join(SNAPSHOT_DIR), fsync)?;
        check_meta(&db, &tree, &files, shards)?;
        let durability = if fsync {
            // The directory entries of sled's files and of `snapshots/` must be durable too, once.
            sync_dir(dir)?;
            let data_file = File::open(dir.join("db")).map_err(|source| StoreError::Io {
                context: "open sled data file for fdatasync",
                source,
            })?;
            Durability::Fsync {
                data_file,
                blobs: BlobSync::new(dir.join("blobs")),
            }
        } else {
            Durability::FlushOnly
        };
        let writer =
            SnapshotWriter::spawn(files.clone(), usize::try_from(shards).unwrap_or(usize::MAX))?;
        let mut raft_db = RaftDb {
            db,
            tree,
            files,
            writer,
            durability,
            _dir_lock: dir_lock,
        };
        // Make the metadata (and the directory syncs above) durable before anything else runs.
        raft_db.sync()?;
        // Only files that no durable record names may go.
        remove_unreferenced_snapshots(&raft_db.tree, &raft_db.files, shards)?;
        Ok(raft_db)
    }

    /// Loads one shard's state and its latest snapshot, data read from its file and verified
    /// (read once here because restoring the state machine needs it anyway). A shard with
    /// nothing stored comes back empty (`is_initialized() == false`).
    pub(crate) fn load_shard(
        &self,
        shard: ShardId,
    ) -> Result<(ShardStorage, Option<Snapshot>), StoreError> {
        ShardStorage::load(
            shard,
            self.tree.clone(),
            self.files.clone(),
            self.writer.clone(),
        )
    }

    /// Applies `batch` atomically. When any staged write must be durable (log entries, term,
    /// vote, conf state, snapshots received from a leader) the batch is flushed and synced before
    /// this returns; otherwise it is only applied and rides along with the next durable write or
    /// sled's periodic flush. A batch that retires snapshot files is flushed too, and the files
    /// are deleted only after that, so a durable record never names a deleted file. Returns
    /// whether a durable flush happened.
    pub(crate) fn write(&mut self, batch: WriteBatch) -> Result<bool, StoreError> {
        if batch.ops == 0 {
            return Ok(false);
        }
        self.tree.apply_batch(batch.batch)?;
        if !batch.must_sync && batch.retired_files.is_empty() {
            return Ok(false);
        }
        self.sync()?;
        for path in batch.retired_files {
            remove_retired(&path);
        }
        Ok(true)
    }

    /// Flushes everything applied so far and makes it durable, whatever was staged.
    pub(crate) fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush()?;
        match &mut self.durability {
            Durability::FlushOnly => Ok(()),
            Durability::Fsync { data_file, blobs } => {
                data_file.sync_data().map_err(|source| StoreError::Io {
                    context: "fdatasync sled data file",
                    source,
                })?;
                blobs.sync_new()
            }
        }
    }
}

impl WriteBatch {
    /// Bytes of the keys and values written so far into this batch.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Moves the writes staged by `storage` into this batch.
    pub(crate) fn take_from(&mut self, storage: &mut ShardStorage) {
        for (key, value) in std::mem::take(&mut storage.staged) {
            let len = key.len() + value.as_ref().map_or(0, Vec::len);
            match value {
                Some(value) => self.batch.insert(key, value),
                None => self.batch.remove(key),
            }
            self.ops += 1;
            self.bytes += len as u64;
        }
        self.must_sync |= std::mem::take(&mut storage.must_sync);
        self.retired_files.append(&mut storage.retired_files);
    }
}

impl ShardStorage {
    fn load(
        shard: ShardId,
        tree: sled::Tree,
        files: SnapshotFiles,
        writer: SnapshotWriter,
    ) -> Result<(Self, Option<Snapshot>), StoreError> {
        let hard_state: HardState =
            read_message(&tree, shard, Kind::HardState)?.unwrap_or_default();
        let conf_state: ConfState =
            read_message(&tree, shard, Kind::ConfState)?.unwrap_or_default();
        let record = read_snapshot_record(&tree, shard)?;
        let (snapshot_index, snapshot_term) = record
            .as_ref()
            .map_or((0, 0), |r| (r.metadata().index, r.metadata().term));
        let mut storage = ShardStorage {
            shard,
            tree,
            files,
            writer,
            hard_state,
            conf_state,
            snapshot: record,
            snapshot_index,
            snapshot_term,
            last_index: snapshot_index,
            last_term: snapshot_term,
            staged: BTreeMap::new(),
            must_sync: false,
            retired_files: Vec::new(),
        };
        storage.load_log_bounds()?;
        storage.check_loaded()?;
        let snapshot = storage.stored_snapshot()?;
        Ok((storage, snapshot))
    }

    /// Finds the last entry and checks that the log starts right after the snapshot.
    fn load_log_bounds(&mut self) -> Result<(), StoreError> {
        let range = entry_key(self.shard, 0)..=entry_key(self.shard, u64::MAX);
        let first = self.tree.range(range.clone()).next().transpose()?;
        let last = self.tree.range(range).next_back().transpose()?;
        let (Some((first_key, _)), Some((_, last_value))) = (first, last) else {
            return Ok(());
        };
        let first_index =
            index_from_entry_key(&first_key).ok_or_else(|| self.corrupt("bad entry key"))?;
        if first_index != self.snapshot_index + 1 {
            return Err(self.corrupt(format!(
                "log starts at {first_index} but the snapshot is at {}",
                self.snapshot_index
            )));
        }
        let last = decode::<Entry>(self.shard, "entry", &last_value)?;
        self.last_index = last.index;
        self.last_term = last.term;
        Ok(())
    }

    /// Rejects stored states that raft-rs would panic on in `RawNode::new`.
    fn check_loaded(&self) -> Result<(), StoreError> {
        let commit = self.hard_state.commit;
        if commit > self.last_index {
            return Err(self.corrupt(format!(
                "commit index {commit} is beyond the last index {}",
                self.last_index
            )));
        }
        if self.hard_state != HardState::default() && commit < self.snapshot_index {
            return Err(self.corrupt(format!(
                "commit index {commit} is below the snapshot index {}",
                self.snapshot_index
            )));
        }
        if self.last_index > 0 && self.conf_state == ConfState::default() {
            return Err(self.corrupt("log entries without a conf state"));
        }
        Ok(())
    }

    /// Whether this shard has ever been bootstrapped (has a configuration).
    pub(crate) fn is_initialized(&self) -> bool {
        self.conf_state != ConfState::default()
    }

    /// Stages the initial configuration of a brand-new group: the log is empty and starts at
    /// index 1, like raft-rs' `MemStorage::new_with_conf_state`.
    pub(crate) fn stage_bootstrap(&mut self, conf_state: ConfState) -> Result<(), StoreError> {
        if self.is_initialized() || self.last_index != 0 {
            return Err(self.invalid("bootstrap of a group that already has state"));
        }
        self.stage_conf_state(&conf_state)
    }

    /// Stages `entries`, replacing any stored suffix that starts at or after the first of them
    /// (a leader may overwrite uncommitted entries, Raft §5.3).
    pub(crate) fn stage_entries(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        if first.index <= self.snapshot_index {
            return Err(self.invalid(format!(
                "append at {} overwrites compacted entries (snapshot at {})",
                first.index, self.snapshot_index
            )));
        }
        if first.index > self.last_index + 1 {
            return Err(self.invalid(format!(
                "append at {} leaves a gap after {}",
                first.index, self.last_index
            )));
        }
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != first.index + offset as u64 {
                return Err(self.invalid("entries are not contiguous"));
            }
            let value = encode(self.shard, "entry", entry)?;
            self.staged
                .insert(entry_key(self.shard, entry.index), Some(value));
        }
        // Entries of the old log beyond the new last one conflict and must go.
        for index in last.index + 1..=self.last_index {
            self.staged.insert(entry_key(self.shard, index), None);
        }
        self.last_index = last.index;
        self.last_term = last.term;
        self.must_sync = true;
        Ok(())
    }

    /// Stages a new hard state. Term and vote changes must be durable before any message that
    /// depends on them leaves (Raft §5.1, floors pitfall 14); a commit-only change need not be,
    /// because the commit index is recovered from the log on restart.
    pub(crate) fn stage_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError> {
        if hard_state.term != self.hard_state.term || hard_state.vote != self.hard_state.vote {
            self.must_sync = true;
        }
        self.stage_value(Kind::HardState, "hard state", hard_state)?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    /// Stages a commit index advance learned from a `LightReady`.
    pub(crate) fn stage_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        if commit < self.hard_state.commit || commit > self.last_index {
            return Err(self.invalid(format!(
                "commit {commit} outside [{}, {}]",
                self.hard_state.commit, self.last_index
            )));
        }
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = commit;
        self.stage_hard_state(&hard_state)
    }

    /// Stages a configuration applied from a conf-change entry.
    pub(crate) fn stage_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.stage_value(Kind::ConfState, "conf state", conf_state)?;
        self.conf_state = conf_state.clone();
        self.must_sync = true;
        Ok(())
    }

    /// Stages a snapshot received from the leader: it replaces the whole log.
    pub(crate) fn stage_received_snapshot(
        &mut self,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot_index {
            return Err(self.invalid(format!(
                "received snapshot at {} is not newer than the stored one at {}",
                meta.index, self.snapshot_index
            )));
        }
        self.stage_snapshot(snapshot)?;
        for index in self.snapshot_index + 1..=self.last_index {
            self.staged.insert(entry_key(self.shard, index), None);
        }
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.last_index = meta.index;
        self.last_term = meta.term;
        let mut hard_state = self.hard_state.clone();
        hard_state.term = hard_state.term.max(meta.term);
        hard_state.commit = meta.index;
        self.stage_hard_state(&hard_state)?;
        self.stage_conf_state(meta.get_conf_state())?;
        self.must_sync = true;
        Ok(())
    }

    /// Stages the snapshot a restore starts this group from (`backup.rs`): the same records as
    /// a snapshot received from a leader, into a group that has no state at all yet.
    pub(crate) fn stage_restored_snapshot(
        &mut self,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        if self.is_initialized() || self.last_index != 0 || self.hard_state != HardState::default()
        {
            return Err(self.invalid("restore into a group that already has state"));
        }
        if snapshot.get_metadata().index == 0 {
            return Err(self.invalid("restored snapshot at index 0"));
        }
        self.stage_received_snapshot(snapshot)
    }

    /// Stages a snapshot of the applied state at `snapshot`'s index and deletes the log up to
    /// and including it, writing the snapshot's file on this thread. The snapshot must cover
    /// only committed entries, so that the stored commit index never falls below the snapshot
    /// after a crash.
    pub(crate) fn stage_compaction(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        self.check_compaction(meta.index)?;
        self.stage_snapshot(snapshot)?;
        self.compact_to(meta.index, meta.term);
        Ok(())
    }

    /// Starts a compaction like [`Self::stage_compaction`] whose file the snapshot writer
    /// thread writes; [`Self::finish_compaction`] stages it once the file is complete. Until
    /// then the latest snapshot and the log stay as they are.
    pub(crate) fn begin_compaction(
        &self,
        metadata: SnapshotMetadata,
        data: Vec<u8>,
    ) -> Result<PendingWrite, StoreError> {
        self.check_compaction(metadata.index)?;
        self.writer.submit(self.shard, metadata, data)
    }

    /// Stages the record of a snapshot whose file [`Self::begin_compaction`] had written, and
    /// deletes the log up to its index; `false` (nothing staged, the file retired) when a
    /// snapshot received from the leader meanwhile covers that index already.
    pub(crate) fn finish_compaction(&mut self, record: SnapshotRecord) -> Result<bool, StoreError> {
        let (index, term) = (record.metadata().index, record.metadata().term);
        if index <= self.snapshot_index {
            let superseded = self.files.path(self.shard, &record);
            let current = self
                .snapshot
                .as_ref()
                .map(|r| self.files.path(self.shard, r));
            if current.as_ref() != Some(&superseded) {
                self.retired_files.push(superseded);
            }
            return Ok(false);
        }
        self.check_compaction(index)?;
        let value = record.encode(self.shard)?;
        self.stage_record(record, value);
        self.compact_to(index, term);
        Ok(true)
    }

    /// Why a compaction to `index` may not be staged, if it may not.
    fn check_compaction(&self, index: u64) -> Result<(), StoreError> {
        if index <= self.snapshot_index {
            return Err(self.invalid(format!(
                "compaction to {index} is not past the snapshot at {}",
                self.snapshot_index
            )));
        }
        if index > self.hard_state.commit {
            return Err(self.invalid(format!(
                "compaction to {index} is beyond the commit index {}",
                self.hard_state.commit
            )));
        }
        Ok(())
    }

    /// Deletes the log up to and including `index`, now covered by the staged snapshot.
    fn compact_to(&mut self, index: u64, term: u64) {
        for index in self.snapshot_index + 1..=index {
            self.staged.insert(entry_key(self.shard, index), None);
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Writes the snapshot's data file (complete and synced when this returns) and stages the
    /// record naming it; the file it replaces is retired with the staged writes. Runs before any
    /// other change of a staging call, so a failed file write leaves the staged state untouched
    /// (the group then stops, and the next start removes any partial file).
    fn stage_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let record = SnapshotRecord::new(snapshot.get_metadata().clone(), &snapshot.data);
        let value = record.encode(self.shard)?;
        self.files.write(self.shard, &record, &snapshot.data)?;
        self.stage_record(record, value);
        Ok(())
    }

    /// Stages `record` (encoded: `value`), whose file is complete; the file it replaces is
    /// retired with the staged writes.
    fn stage_record(&mut self, record: SnapshotRecord, value: Vec<u8>) {
        self.staged
            .insert(meta_key(self.shard, Kind::Snapshot), Some(value));
        if let Some(old) = self.snapshot.replace(record) {
            self.retired_files.push(self.files.path(self.shard, &old));
        }
    }

    /// The latest snapshot, with its data read from its file, if the group has one. The file is
    /// complete as soon as the snapshot is staged, so unlike log reads this does not depend on
    /// the staged writes having been committed.
    pub(crate) fn stored_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some(record) = &self.snapshot else {
            return Ok(None);
        };
        let data = self.files.read(self.shard, record)?;
        Ok(Some(record.to_snapshot(data)))
    }

    /// The current configuration (as of the last applied or staged conf change).
    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The current hard state (including staged changes).
    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index of the latest snapshot (0 if none).
    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// The configuration recorded in the latest snapshot (None: no snapshot yet). A node that
    /// joins a shard starts from the leader's snapshot, which must name it
    /// (`membership.rs`), so the leader snapshots again when this lacks a member.
    pub(crate) fn snapshot_conf_state(&self) -> Option<&ConfState> {
        self.snapshot
            .as_ref()
            .map(|record| record.metadata().get_conf_state())
    }

    fn stage_value(
        &mut self,
        kind: Kind,
        what: &'static str,
        message: &impl PbMessage,
    ) -> Result<(), StoreError> {
        let value = encode(self.shard, what, message)?;
        self.staged.insert(meta_key(self.shard, kind), Some(value));
        Ok(())
    }

    /// The encoded entry at `index` as staged: a staged write of its key first (`None` for a
    /// staged deletion), else what sled holds.
    fn entry_value(&self, index: u64) -> Result<Option<Value<'_>>, StoreError> {
        let key = entry_key(self.shard, index);
        match self.staged.get(&key) {
            Some(staged) => Ok(staged.as_deref().map(Value::Staged)),
            None => Ok(self.tree.get(key)?.map(Value::Stored)),
        }
    }

    fn read_entry(&self, index: u64) -> Result<Entry, StoreError> {
        let value = self
            .entry_value(index)?
            .ok_or_else(|| self.corrupt(format!("entry {index} is missing")))?;
        let entry: Entry = decode(self.shard, "entry", value.as_ref())?;
        if entry.index != index {
            return Err(self.corrupt(format!("entry stored at {index} has index {}", entry.index)));
        }
        Ok(entry)
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        let mut total_size: u64 = 0;
        let mut stopped_by_size = false;
        let range = entry_key(self.shard, low)..entry_key(self.shard, high);
        let values: Box<dyn Iterator<Item = Result<Value<'_>, StoreError>> + '_> =
            if self.staged.range(range.clone()).next().is_none() {
                Box::new(self.tree.range(range).map(|item| {
                    item.map(|(_, value)| Value::Stored(value))
                        .map_err(StoreError::from)
                }))
            } else {
                // Entries of the range are staged (rare: a read in the turn that appended or
                // truncated them): key by key, each staged write before sled. A missing entry
                // ends the range, which the gap check below reports.
                Box::new((low..high).map_while(|index| self.entry_value(index).transpose()))
            };
        for item in values {
            let value = item?;
            let value = value.as_ref();
            let expected = low + entries.len() as u64;
            let entry: Entry = decode(self.shard, "entry", value)?;
            if entry.index != expected {
                return Err(
                    self.corrupt(format!("expected entry {expected}, found {}", entry.index))
                );
            }
            // Same rule as raft-rs `limit_size`: always at least one entry, then stop before
            // exceeding the budget.
            total_size += value.len() as u64;
            if !entries.is_empty() && max_size.is_some_and(|max| total_size > max) {
                stopped_by_size = true;
                break;
            }
            entries.push(entry);
        }
        if !stopped_by_size && entries.len() as u64 != high - low {
            return Err(self.corrupt(format!("entries [{low}, {high}) have a gap")));
        }
        Ok(entries)
    }

    fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            shard: self.shard,
            reason: reason.into(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> StoreError {
        StoreError::InvalidWrite {
            shard: self.shard,
            reason: reason.into(),
        }
    }
}

impl raft::Storage for ShardStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low == high {
            return Ok(Vec::new());
        }
        let max_size = max_size.into().filter(|max| *max != raft::NO_LIMIT);
        self.read_entries(low, high, max_size)
            .map_err(into_raft_error)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if index == self.last_index {
            return Ok(self.last_term);
        }
        self.read_entry(index)
            .map(|entry| entry.term)
            .map_err(into_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than the request is useless to the follower; say "not yet" so raft
        // retries later instead of sending stale state. Likewise a snapshot from before `to`
        // was added: raft-rs on `to` refuses a snapshot whose configuration does not name it,
        // and the group takes a newer one right after applying the change (`membership.rs`).
        let names_to = self.snapshot_conf_state().is_some_and(|conf| {
            conf.voters
                .iter()
                .chain(&conf.learners)
                .chain(&conf.voters_outgoing)
                .any(|id| *id == to)
        });
        if self.snapshot_index == 0 || self.snapshot_index < request_index || !names_to {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        match self.stored_snapshot() {
            Ok(Some(snapshot)) => Ok(snapshot),
            Ok(None) => Err(into_raft_error(
                self.corrupt("snapshot index without snapshot record"),
            )),
            Err(err) => Err(into_raft_error(err)),
        }
    }
}

/// The metadata of a snapshot of the state at `index` (of `term`) with `conf_state`.
pub(crate) fn snapshot_metadata(index: u64, term: u64, conf_state: ConfState) -> SnapshotMetadata {
    let mut metadata = SnapshotMetadata {
        index,
        term,
        ..SnapshotMetadata::default()
    };
    metadata.set_conf_state(conf_state);
    metadata
}

/// Builds the `Snapshot` message stored by [`ShardStorage::stage_compaction`].
pub(crate) fn new_snapshot(
    index: u64,
    term: u64,
    conf_state: ConfState,
    data: Vec<u8>,
) -> Snapshot {
    let metadata = snapshot_metadata(index, term, conf_state);
    let mut snapshot = Snapshot {
        data: data.into(),
        ..Snapshot::default()
    };
    snapshot.set_metadata(metadata);
    snapshot
}

/// Syncs blob files that sled wrote since the last call (sled writes large values to
/// `blobs/<lsn>` without ever syncing them).
struct BlobSync {
    dir: PathBuf,
    /// Blob files already synced, with the length they had; blobs are written once, so a
    /// changed length means sled was still writing when we last looked.
    synced: BTreeMap<OsString, u64>,
}

impl BlobSync {
    fn new(dir: PathBuf) -> Self {
        BlobSync {
            dir,
            synced: BTreeMap::new(),
        }
    }

    fn sync_new(&mut self) -> Result<(), StoreError> {
        let read_dir = match std::fs::read_dir(&self.dir) {
            Ok(read_dir) => read_dir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StoreError::Io {
                    context: "list sled blob directory",
                    source,
                })
            }
        };
        let mut present = BTreeMap::new();
        let mut synced_any = false;
        for dir_entry in read_dir {
            let dir_entry = dir_entry.map_err(|source| StoreError::Io {
                context: "list sled blob directory",
                source,
            })?;
            let name = dir_entry.file_name();
            let synced_len = self.synced.get(&name).copied();
            let Some(len) = sync_blob(&dir_entry.path(), synced_len)? else {
                // sled garbage-collected it in the meantime.
                continue;
            };
            synced_any |= synced_len != Some(len);
            present.insert(name, len);
        }
        self.synced = present;
        if synced_any {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Syncs one blob file unless it was already synced at its current length. Returns its length,
/// or `None` if it no longer exists.
fn sync_blob(path: &Path, synced_len: Option<u64>) -> Result<Option<u64>, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                context: "open sled blob file",
                source,
            })
        }
    };
    let len = file
        .metadata()
        .map_err(|source| StoreError::Io {
            context: "stat sled blob file",
            source,
        })?
        .len();
    if synced_len != Some(len) {
        file.sync_data().map_err(|source| StoreError::Io {
            context: "fdatasync sled blob file",
            source,
        })?;
    }
    Ok(Some(len))
}

/// Takes exclusive ownership of the Raft directory, failing fast if someone else has it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(DIR_LOCK_FILE))
        .map_err(|source| StoreError::Io {
            context: "open raft directory lock file",
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::DirectoryInUse {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
            context: "lock raft directory",
            source,
        }),
    }
}

/// Waits until no earlier sled instance in this process holds sled's own lock on its data file.
///
/// sled 0.34 hands writes and file truncations to a global thread pool whose jobs keep the
/// data file open (and thereby its `flock`) for a moment after the `Db` is dropped, so an
/// immediate reopen (a restart within one process) can fail with "could not acquire lock".
/// Holding the directory lock proves no other instance owns the files, so whoever holds sled's
/// lock is such a job, and blocking on the lock ends when the job does.
fn wait_for_sled_release(dir: &Path) -> Result<(), StoreError> {
    let file = match File::open(dir.join("db")) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                context: "open sled data file",
                source,
            })
        }
    };
    file.lock()
        .and_then(|()| file.unlock())
        .map_err(|source| StoreError::Io {
            context: "wait for sled data file lock",
            source,
        })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::Io {
            context: "fsync raft directory",
            source,
        })
}

/// Checks the shard count and the format version, recording both in a new database and
/// upgrading a version 1 database.
fn check_meta(
    db: &sled::Db,
    tree: &sled::Tree,
    files: &SnapshotFiles,
    shards: u64,
) -> Result<(), StoreError> {
    match read_u64(db, SHARD_COUNT_KEY)? {
        None => {
            db.insert(SHARD_COUNT_KEY, &shards.to_be_bytes())?;
        }
        Some(stored) if stored != shards => {
            return Err(StoreError::ShardCountMismatch {
                stored,
                configured: shards,
            })
        }
        Some(_) => {}
    }
    match read_u64(db, FORMAT_VERSION_KEY)? {
        None => {
            db.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
            Ok(())
        }
        Some(FORMAT_VERSION) => Ok(()),
        Some(1) => migrate_from_version_1(db, tree, files, shards),
        Some(found) => Err(StoreError::FormatVersion {
            found,
            expected: FORMAT_VERSION,
        }),
    }
}

/// Moves every shard's snapshot data from its version 1 sled value into a file, then replaces
/// the values by records and sets the new version in one sled transaction: a crash before the
/// transaction leaves a version 1 database (its new files are rewritten by the next attempt),
/// a crash after it a version 2 one whose records name complete files.
fn migrate_from_version_1(
    db: &sled::Db,
    tree: &sled::Tree,
    files: &SnapshotFiles,
    shards: u64,
) -> Result<(), StoreError> {
    let mut records = Vec::new();
    for shard in 0..shards {
        let key = meta_key(shard, Kind::Snapshot);
        let Some(value) = tree.get(&key)? else {
            continue;
        };
        let snapshot: Snapshot = decode(shard, "version 1 snapshot", &value)?;
        let record = SnapshotRecord::new(snapshot.get_metadata().clone(), &snapshot.data);
        let encoded = record.encode(shard)?;
        files.write(shard, &record, &snapshot.data)?;
        records.push((key, encoded));
    }
    let meta_tree: &sled::Tree = db;
    (tree, meta_tree)
        .transaction(|(raft, meta)| {
            for (key, value) in &records {
                raft.insert(key.as_slice(), value.as_slice())?;
            }
            meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
            Ok::<(), ConflictableTransactionError<Infallible>>(())
        })
        .map_err(|err| match err {
            TransactionError::Storage(err) => StoreError::Sled(err),
            TransactionError::Abort(never) => match never {},
        })?;
    tracing::info!(
        snapshots = records.len(),
        "raft storage upgraded from format version 1: snapshot data moved to files"
    );
    Ok(())
}

/// Deletes snapshot files no shard's record names: leftovers of a crash between writing a file
/// and committing its record, or between committing a record and deleting the file it replaced.
fn remove_unreferenced_snapshots(
    tree: &sled::Tree,
    files: &SnapshotFiles,
    shards: u64,
) -> Result<(), StoreError> {
    let mut referenced = BTreeSet::new();
    for shard in 0..shards {
        if let Some(record) = read_snapshot_record(tree, shard)? {
            referenced.insert(record.file_name(shard));
        }
    }
    files.remove_unreferenced(&referenced)
}

fn read_snapshot_record(
    tree: &sled::Tree,
    shard: ShardId,
) -> Result<Option<SnapshotRecord>, StoreError> {
    tree.get(meta_key(shard, Kind::Snapshot))?
        .map(|value| SnapshotRecord::decode(shard, &value))
        .transpose()
}

/// Deletes a snapshot file replaced by a now durable record. A failure costs only disk space
/// until the next start removes the file, so it is logged rather than stopping every group.
fn remove_retired(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(
            path = %path.display(),
            error = %err,
            "could not remove a replaced snapshot file"
        ),
    }
}

fn read_u64(db: &sled::Db, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let Some(value) = db.get(key)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| StoreError::Corrupt {
        shard: 0,
        reason: format!("metadata key {} is not a u64", String::from_utf8_lossy(key)),
    })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

fn read_message<M: PbMessage>(
    tree: &sled::Tree,
    shard: ShardId,
    kind: Kind,
) -> Result<Option<M>, StoreError> {
    match tree.get(meta_key(shard, kind))? {
        Some(value) => decode(shard, kind.name(), &value).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn encode(
    shard: ShardId,
    what: &'static str,
    message: &impl PbMessage,
) -> Result<Vec<u8>, StoreError> {
    message
        .write_to_bytes()
        .map_err(|source| StoreError::Codec {
            shard,
            what,
            source,
        })
}

pub(crate) fn decode<M: PbMessage>(
    shard: ShardId,
    what: &'static str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|source| StoreError::Codec {
        shard,
        what,
        source,
    })
}

/// An encoded log entry read by [`ShardStorage`]: from sled, or staged and not yet written.
enum Value<'a> {
    Stored(sled::IVec),
    Staged(&'a [u8]),
}

impl AsRef<[u8]> for Value<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Value::Stored(value) => value,
            Value::Staged(value) => value,
        }
    }
}

fn into_raft_error(err: StoreError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(err)))
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    HardState = 1,
    ConfState = 2,
    Snapshot = 3,
    Entry = 4,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::HardState => "hard state",
            Kind::ConfState => "conf state",
            Kind::Snapshot => "snapshot",
            Kind::Entry => "entry",
        }
    }
}

fn meta_key(shard: ShardId, kind: Kind) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.extend_from_slice(&shard.to_be_bytes());
    key.push(kind as u8);
    key
}

fn entry_key(shard: ShardId, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.extend_from_slice(&shard.to_be_bytes());
    key.push(Kind::Entry as u8);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn index_from_entry_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Lock file marking the Raft directory as owned by one running instance.
const DIR_LOCK_FILE: &str = "mimid.lock";
/// sled tree holding all groups' Raft state.
const RAFT_TREE: &str = "raft";
/// Subdirectory of the Raft directory holding snapshot data files.
const SNAPSHOT_DIR: &str = "snapshots";
/// Default-tree key of the storage format version.
const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// Default-tree key of the shard count the database was created with.
const SHARD_COUNT_KEY: &[u8] = b"shard_count";
/// Bump when the key layout or value encoding changes (and teach [`check_meta`] the upgrade).
/// Version 2 moved snapshot data out of sled into files.
const FORMAT_VERSION: u64 = 2;

#[cfg(test)]
mod tests {
    use raft::storage::MemStorage;
    use raft::{Storage as _, StorageError as RaftStorageError};

    use super::*;

    const SHARDS: u64 = 3;

    fn open(dir: &Path) -> RaftDb {
        RaftDb::open(dir, SHARDS, true).expect("open raft db")
    }

    fn commit(db: &mut RaftDb, storage: &mut ShardStorage) {
        let mut batch = WriteBatch::default();
        batch.take_from(storage);
        db.write(batch).expect("write batch");
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState::from((ids.to_vec(), Vec::new()))
    }

    fn compacted<T>(result: &raft::Result<T>) -> bool {
        matches!(result, Err(raft::Error::Store(RaftStorageError::Compacted)))
    }

    fn unavailable<T>(result: &raft::Result<T>) -> bool {
        matches!(
            result,
            Err(raft::Error::Store(RaftStorageError::Unavailable))
        )
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    /// A fixed-seed generator so a failing sequence replays exactly.
    struct Rng(crate::splitmix::SplitMix64);

    impl Rng {
        /// Uniform in `low..=high`.
        fn range(&mut self, low: u64, high: u64) -> u64 {
            low + self.0.below(high - low + 1)
        }
    }

    /// Our storage against raft-rs' `MemStorage` given the same writes. `MemStorage` forgets
    /// the term of its compaction point (it has no snapshot for it), so `snapshot` carries it.
    fn assert_same(ours: &ShardStorage, model: &MemStorage, snapshot: (u64, u64)) {
        let model_state = model.initial_state().expect("model state");
        let our_state = ours.initial_state().expect("our state");
        assert_eq!(our_state.hard_state, model_state.hard_state);
        assert_eq!(our_state.conf_state, model_state.conf_state);
        let first = model.first_index().expect("model first");
        let last = model.last_index().expect("model last");
        assert_eq!(ours.first_index().expect("first"), first);
        assert_eq!(ours.last_index().expect("last"), last);
        for index in 0..=last + 1 {
            let model_term = model.term(index);
            let our_term = ours.term(index);
            if index == snapshot.0 {
                assert_eq!(
                    our_term.expect("snapshot term"),
                    snapshot.1,
                    "term({index})"
                );
            } else if index < snapshot.0 || compacted(&model_term) {
                // `MemStorage` still answers for its never-updated snapshot point (index 0).
                assert!(compacted(&our_term), "term({index}) should be compacted");
            } else if unavailable(&model_term) {
                assert!(
                    unavailable(&our_term),
                    "term({index}) should be unavailable"
                );
            } else {
                assert_eq!(our_term.expect("term"), model_term.expect("model term"));
            }
        }
        for max_size in [None, Some(0), Some(100), Some(400)] {
            if first > last {
                // `MemStorage::entries` indexes its first entry even for an empty range.
                let our_entries = ours.entries(first, last + 1, max_size, ctx());
                assert!(our_entries.expect("empty range").is_empty());
                continue;
            }
            let model_entries = model
                .entries(first, last + 1, max_size, ctx())
                .expect("model");
            let our_entries = ours
                .entries(first, last + 1, max_size, ctx())
                .expect("entries");
            assert_eq!(
                our_entries, model_entries,
                "entries with max_size {max_size:?}"
            );
        }
        if first > 1 {
            assert!(compacted(&ours.entries(first - 1, last + 1, None, ctx())));
        }
        assert!(unavailable(&ours.entries(first, last + 2, None, ctx())));
    }

    #[test]
    fn model_matches_mem_storage_across_appends_compactions_and_reopens_staged_or_written() {
        let seed = 0x5eed_0001;
        eprintln!("storage model seed {seed:#x}");
        let mut rng = Rng(crate::splitmix::SplitMix64::new(seed));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let shard = 1;
        let (mut ours, _) = db.load_shard(shard).expect("load");
        let model = MemStorage::new();
        ours.stage_bootstrap(voters(&[1])).expect("bootstrap");
        model.wl().set_conf_state(voters(&[1]));
        commit(&mut db, &mut ours);
        let mut term = 1;
        let mut snapshot = (0, 0);
        let (mut overwrites, mut compactions) = (0, 0);
        for step in 0..400 {
            let first = ours.first_index().expect("first");
            let last = ours.last_index().expect("last");
            let commit_index = ours.hard_state().commit;
            match rng.range(0, 9) {
                // Append, possibly overwriting an uncommitted suffix (Raft §5.3).
                0..=4 => {
                    term += rng.range(0, 1);
                    let start = rng.range(commit_index.max(first - 1) + 1, last + 1);
                    let count = rng.range(1, 4);
                    let entries: Vec<Entry> = (start..start + count)
                        .map(|index| {
                            let len = rng.range(0, 120) as usize;
                            entry(index, term, &vec![step as u8; len])
                        })
                        .collect();
                    if start <= last {
                        overwrites += 1;
                    }
                    ours.stage_entries(&entries).expect("stage entries");
                    model.wl().append(&entries).expect("model append");
                }
                5 | 6 => {
                    let commit_to = rng.range(commit_index, last);
                    let hs = hard_state(term, 1, commit_to);
                    ours.stage_hard_state(&hs).expect("stage hard state");
                    model.wl().set_hardstate(hs);
                }
                7 if commit_index > snapshot.0 => {
                    let index = rng.range(snapshot.0 + 1, commit_index);
                    let index_term = ours.term(index).expect("term of compaction point");
                    let snap = new_snapshot(index, index_term, voters(&[1]), vec![7; 3]);
                    ours.stage_compaction(&snap).expect("stage compaction");
                    if index == last {
                        model.wl().apply_snapshot(snap).expect("model snapshot");
                    } else {
                        model.wl().compact(index + 1).expect("model compact");
                    }
                    snapshot = (index, index_term);
                    compactions += 1;
                }
                _ => {}
            }
            // Reads see the staged writes before they are written (raft-rs reads in the middle
            // of a driver turn), and the same once they are.
            assert_same(&ours, &model, snapshot);
            commit(&mut db, &mut ours);
            assert_same(&ours, &model, snapshot);
            if step % 25 == 24 {
                drop(ours);
                drop(db);
                db = open(dir.path());
                ours = db.load_shard(shard).expect("reload").0;
                assert_same(&ours, &model, snapshot);
            }
        }
        // The sequence must have exercised the interesting paths.
        assert!(overwrites > 10, "only {overwrites} overwrites");
        assert!(compactions > 10, "only {compactions} compactions");
    }

    #[test]
    fn received_snapshot_replaces_the_log_like_mem_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let (mut ours, _) = db.load_shard(0).expect("load");
        let model = MemStorage::new();
        ours.stage_bootstrap(voters(&[1])).expect("bootstrap");
        model.wl().set_conf_state(voters(&[1]));
        let entries: Vec<Entry> = (1..=5).map(|index| entry(index, 1, b"x")).collect();
        ours.stage_entries(&entries).expect("stage");
        model.wl().append(&entries).expect("model append");
        commit(&mut db, &mut ours);
        let snap = new_snapshot(8, 2, voters(&[1, 2]), b"state".to_vec());
        ours.stage_received_snapshot(&snap).expect("stage snapshot");
        model
            .wl()
            .apply_snapshot(snap.clone())
            .expect("model snapshot");
        commit(&mut db, &mut ours);
        assert_same(&ours, &model, (8, 2));
        drop(ours);
        drop(db);
        // A received snapshot takes the same path as a local one: data in a file.
        assert_eq!(
            snapshot_files(dir.path()),
            ["0000000000000000-0000000000000002-0000000000000008.snap"]
        );
        let db = open(dir.path());
        let (ours, stored) = db.load_shard(0).expect("reload");
        assert_same(&ours, &model, (8, 2));
        assert_eq!(stored, Some(snap.clone()));
        assert_eq!(ours.snapshot(8, 2).expect("snapshot for a follower"), snap);
        assert!(matches!(
            ours.snapshot(9, 2),
            Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        // Node 3 joined after this snapshot: raft-rs there would refuse it, so it is not sent.
        assert!(matches!(
            ours.snapshot(8, 3),
            Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable
            ))
        ));
    }

    #[test]
    fn invalid_writes_are_rejected_without_side_effects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let (mut ours, _) = db.load_shard(0).expect("load");
        ours.stage_bootstrap(voters(&[1])).expect("bootstrap");
        let entries: Vec<Entry> = (1..=3).map(|index| entry(index, 1, b"x")).collect();
        ours.stage_entries(&entries).expect("stage");
        ours.stage_hard_state(&hard_state(1, 1, 2))
            .expect("hard state");
        commit(&mut db, &mut ours);

        let gap = ours.stage_entries(&[entry(5, 1, b"gap")]);
        assert!(
            matches!(gap, Err(StoreError::InvalidWrite { .. })),
            "{gap:?}"
        );
        let holes = ours.stage_entries(&[entry(4, 1, b"a"), entry(6, 1, b"b")]);
        assert!(
            matches!(holes, Err(StoreError::InvalidWrite { .. })),
            "{holes:?}"
        );
        let beyond_commit = ours.stage_compaction(&new_snapshot(3, 1, voters(&[1]), Vec::new()));
        assert!(matches!(
            beyond_commit,
            Err(StoreError::InvalidWrite { .. })
        ));
        assert!(
            snapshot_files(dir.path()).is_empty(),
            "file of a rejected snapshot"
        );
        let backwards = ours.stage_commit(1);
        assert!(matches!(backwards, Err(StoreError::InvalidWrite { .. })));
        assert!(ours.stage_bootstrap(voters(&[1])).is_err());
        assert_eq!(ours.last_index().expect("last"), 3);

        ours.stage_compaction(&new_snapshot(2, 1, voters(&[1]), Vec::new()))
            .expect("compact");
        commit(&mut db, &mut ours);
        let over_compacted = ours.stage_entries(&[entry(2, 2, b"old")]);
        assert!(matches!(
            over_compacted,
            Err(StoreError::InvalidWrite { .. })
        ));
    }

    #[test]
    fn shards_do_not_see_each_others_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let (mut zero, _) = db.load_shard(0).expect("load 0");
        zero.stage_bootstrap(voters(&[1])).expect("bootstrap");
        zero.stage_entries(&[entry(1, 1, b"zero")]).expect("stage");
        commit(&mut db, &mut zero);
        let (one, _) = db.load_shard(1).expect("load 1");
        assert!(!one.is_initialized());
        assert_eq!(one.last_index().expect("last"), 0);
        assert_eq!(
            db.load_shard(0)
                .expect("reload 0")
                .0
                .last_index()
                .expect("last"),
            1
        );
    }

    #[test]
    fn values_above_the_blob_threshold_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let (mut ours, _) = db.load_shard(0).expect("load");
        ours.stage_bootstrap(voters(&[1])).expect("bootstrap");
        // sled stores values above a quarter of its 512 KiB segment in `blobs/`.
        let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        ours.stage_entries(&[entry(1, 1, &big)]).expect("stage");
        commit(&mut db, &mut ours);
        let blob_count = std::fs::read_dir(dir.path().join("blobs"))
            .expect("sled wrote a blob")
            .count();
        assert!(blob_count >= 1);
        drop(ours);
        drop(db);
        let db = open(dir.path());
        let (ours, _) = db.load_shard(0).expect("reload");
        let entries = ours.entries(1, 2, None, ctx()).expect("read back");
        assert_eq!(entries[0].data.as_ref(), big.as_slice());
    }

    #[test]
    fn a_directory_is_opened_by_one_instance_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open(dir.path());
        assert!(matches!(
            RaftDb::open(dir.path(), SHARDS, true),
            Err(StoreError::DirectoryInUse { .. })
        ));
        drop(first);
        // Reopening right away works even while sled's background jobs wind down.
        for _ in 0..5 {
            drop(open(dir.path()));
        }
    }

    #[test]
    fn shard_count_is_fixed_for_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path()));
        match RaftDb::open(dir.path(), SHARDS + 1, true) {
            Err(StoreError::ShardCountMismatch { stored, configured }) => {
                assert_eq!((stored, configured), (SHARDS, SHARDS + 1));
            }
            other => panic!("expected ShardCountMismatch, got {:?}", other.err()),
        }
    }

    #[test]
    fn corrupt_state_on_disk_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        db.tree
            .insert(
                meta_key(0, Kind::HardState),
                b"\xff\xff not protobuf".to_vec(),
            )
            .expect("insert");
        assert!(matches!(
            db.load_shard(0).err(),
            Some(StoreError::Codec { shard: 0, .. })
        ));
        // A log that does not start right after the (absent) snapshot.
        let value = entry(3, 1, b"x").write_to_bytes().expect("encode");
        db.tree.insert(entry_key(1, 3), value).expect("insert");
        db.tree
            .insert(
                meta_key(1, Kind::ConfState),
                voters(&[1]).write_to_bytes().expect("encode"),
            )
            .expect("insert");
        assert!(matches!(
            db.load_shard(1).err(),
            Some(StoreError::Corrupt { shard: 1, .. })
        ));
        // A commit index beyond the log.
        db.tree
            .insert(
                meta_key(2, Kind::HardState),
                hard_state(1, 1, 9).write_to_bytes().expect("encode"),
            )
            .expect("insert");
        assert!(matches!(
            db.load_shard(2).err(),
            Some(StoreError::Corrupt { shard: 2, .. })
        ));
    }

    /// Names in the snapshot directory, sorted.
    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
            .expect("snapshot directory")
            .map(|entry| {
                let name = entry.expect("directory entry").file_name();
                name.into_string().expect("UTF-8 file name")
            })
            .collect();
        names.sort();
        names
    }

    fn snapshot_path(dir: &Path, shard: ShardId, term: u64, index: u64) -> PathBuf {
        dir.join(SNAPSHOT_DIR)
            .join(format!("{shard:016x}-{term:016x}-{index:016x}.snap"))
    }

    /// A bootstrapped shard with entries `1..=last` of term 1, all committed.
    fn committed_log(db: &mut RaftDb, shard: ShardId, last: u64) -> ShardStorage {
        let (mut ours, _) = db.load_shard(shard).expect("load");
        ours.stage_bootstrap(voters(&[1])).expect("bootstrap");
        let entries: Vec<Entry> = (1..=last).map(|index| entry(index, 1, b"x")).collect();
        ours.stage_entries(&entries).expect("stage");
        ours.stage_hard_state(&hard_state(1, 1, last))
            .expect("hard state");
        commit(db, &mut ours);
        ours
    }

    /// Data large enough that sled would have stored it as a blob (a quarter of a segment).
    fn big_state(seed: u8) -> Vec<u8> {
        (0..300 * 1024u32).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn a_compaction_written_by_the_writer_thread_is_staged_only_once_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let mut ours = committed_log(&mut db, 1, 10);
        let state = big_state(3);
        let pending = ours
            .begin_compaction(snapshot_metadata(6, 1, voters(&[1])), state.clone())
            .expect("begin");
        // Until it is finished the log and the latest snapshot stay as they were.
        assert_eq!(ours.first_index().expect("first"), 1);
        assert!(ours.stored_snapshot().expect("read").is_none());
        let record = pending.wait().expect("written").record;
        assert_eq!(
            snapshot_files(dir.path()),
            [snapshot_path(dir.path(), 1, 1, 6)
                .file_name()
                .and_then(|name| name.to_str())
                .expect("name")
                .to_string()]
        );
        assert!(ours.finish_compaction(record).expect("finish"));
        commit(&mut db, &mut ours);
        assert_eq!(ours.first_index().expect("first"), 7);
        drop((ours, db));

        let db = open(dir.path());
        let (ours, stored) = db.load_shard(1).expect("reload");
        assert_eq!(stored.expect("snapshot").data.as_ref(), state.as_slice());
        assert_eq!(ours.first_index().expect("first"), 7);
        assert_eq!(ours.last_index().expect("last"), 10);
    }

    #[test]
    fn a_compaction_overtaken_by_a_received_snapshot_stages_nothing_and_its_file_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let mut ours = committed_log(&mut db, 0, 5);
        // Refused before any file is written: past the commit index, or not past the latest
        // snapshot.
        let beyond = ours.begin_compaction(snapshot_metadata(6, 1, voters(&[1])), Vec::new());
        assert!(matches!(beyond, Err(StoreError::InvalidWrite { .. })));
        let zero = ours.begin_compaction(snapshot_metadata(0, 0, voters(&[1])), Vec::new());
        assert!(matches!(zero, Err(StoreError::InvalidWrite { .. })));
        assert!(snapshot_files(dir.path()).is_empty());

        let pending = ours
            .begin_compaction(snapshot_metadata(4, 1, voters(&[1])), b"ours".to_vec())
            .expect("begin");
        let record = pending.wait().expect("written").record;
        // The leader's snapshot arrives before the compaction is staged.
        let received = new_snapshot(9, 2, voters(&[1, 2]), b"leader's".to_vec());
        ours.stage_received_snapshot(&received).expect("received");
        assert!(!ours.finish_compaction(record).expect("finish"));
        commit(&mut db, &mut ours);
        assert_eq!(
            snapshot_files(dir.path()),
            ["0000000000000000-0000000000000002-0000000000000009.snap"]
        );
        let stored = ours.stored_snapshot().expect("read").expect("snapshot");
        assert_eq!(stored.data.as_ref(), b"leader's");
        assert_eq!(ours.first_index().expect("first"), 10);
    }

    #[test]
    fn snapshot_data_lives_in_a_file_and_is_read_back_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let mut ours = committed_log(&mut db, 2, 10);
        let state = big_state(1);
        let snap = new_snapshot(6, 1, voters(&[1]), state.clone());
        ours.stage_compaction(&snap).expect("compact");
        commit(&mut db, &mut ours);

        // sled holds a record of a few dozen bytes, the file exactly the state.
        let record = db
            .tree
            .get(meta_key(2, Kind::Snapshot))
            .expect("read record")
            .expect("record stored");
        assert!(record.len() < 100, "record of {} bytes", record.len());
        assert_eq!(
            std::fs::read(snapshot_path(dir.path(), 2, 1, 6)).expect("snapshot file"),
            state
        );
        assert_eq!(ours.snapshot(6, 1).expect("snapshot for a follower"), snap);

        drop(ours);
        drop(db);
        let db = open(dir.path());
        let (ours, stored) = db.load_shard(2).expect("reload");
        assert_eq!(stored, Some(snap.clone()));
        assert_eq!(ours.first_index().expect("first"), 7);
        assert_eq!(ours.last_index().expect("last"), 10);
        assert_eq!(ours.snapshot(6, 1).expect("snapshot for a follower"), snap);
    }

    #[test]
    fn an_older_snapshot_file_is_deleted_only_once_the_newer_record_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let mut ours = committed_log(&mut db, 0, 10);
        ours.stage_compaction(&new_snapshot(3, 1, voters(&[1]), b"three".to_vec()))
            .expect("compact to 3");
        commit(&mut db, &mut ours);
        let first = "0000000000000000-0000000000000001-0000000000000003.snap";
        let second = "0000000000000000-0000000000000001-0000000000000007.snap";
        assert_eq!(snapshot_files(dir.path()), [first]);

        ours.stage_compaction(&new_snapshot(7, 1, voters(&[1]), b"seven".to_vec()))
            .expect("compact to 7");
        // Staged: the new file is complete, the old one still backs the durable record.
        assert_eq!(snapshot_files(dir.path()), [first, second]);
        let mut batch = WriteBatch::default();
        batch.take_from(&mut ours);
        assert!(
            db.write(batch).expect("write"),
            "retiring a file forces a durable flush"
        );
        assert_eq!(snapshot_files(dir.path()), [second]);

        drop(ours);
        drop(db);
        let db = open(dir.path());
        let (_, stored) = db.load_shard(0).expect("reload");
        assert_eq!(stored.expect("snapshot").data.as_ref(), b"seven");
        assert_eq!(snapshot_files(dir.path()), [second]);
    }

    #[test]
    fn leftovers_of_a_crash_before_the_record_committed_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        let mut ours = committed_log(&mut db, 1, 10);
        ours.stage_compaction(&new_snapshot(4, 1, voters(&[1]), b"four".to_vec()))
            .expect("compact to 4");
        commit(&mut db, &mut ours);
        // The process dies after writing the next snapshot's file, before its record commits.
        ours.stage_compaction(&new_snapshot(9, 1, voters(&[1]), b"nine".to_vec()))
            .expect("compact to 9");
        drop(ours);
        drop(db);
        // ... and one that died in the middle of writing a file; plus a file that is not ours.
        let snapshots = dir.path().join(SNAPSHOT_DIR);
        let partial = "0000000000000002-0000000000000001-0000000000000005.snap.tmp";
        std::fs::write(snapshots.join(partial), b"par").expect("write partial file");
        std::fs::write(snapshots.join("notes.txt"), b"operator").expect("write other file");
        assert_eq!(snapshot_files(dir.path()).len(), 4);

        let db = open(dir.path());
        assert_eq!(
            snapshot_files(dir.path()),
            [
                "0000000000000001-0000000000000001-0000000000000004.snap",
                "notes.txt"
            ]
        );
        let (ours, stored) = db.load_shard(1).expect("reload");
        assert_eq!(stored.expect("snapshot").data.as_ref(), b"four");
        assert_eq!(ours.first_index().expect("first"), 5);
        assert_eq!(ours.last_index().expect("last"), 10);
    }

    #[test]
    fn a_damaged_snapshot_file_is_a_corrupt_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        for shard in 0..SHARDS {
            let mut ours = committed_log(&mut db, shard, 5);
            let state = big_state(shard as u8);
            ours.stage_compaction(&new_snapshot(5, 1, voters(&[1]), state))
                .expect("compact");
            commit(&mut db, &mut ours);
        }
        drop(db);
        // Shard 0 loses its tail, shard 1 a bit, shard 2 its whole file.
        let truncated = std::fs::OpenOptions::new()
            .write(true)
            .open(snapshot_path(dir.path(), 0, 1, 5))
            .expect("open file of shard 0");
        truncated.set_len(1000).expect("truncate");
        drop(truncated);
        let flipped = snapshot_path(dir.path(), 1, 1, 5);
        let mut bytes = std::fs::read(&flipped).expect("read file of shard 1");
        bytes[12_345] ^= 0x10;
        std::fs::write(&flipped, bytes).expect("write file of shard 1");
        std::fs::remove_file(snapshot_path(dir.path(), 2, 1, 5)).expect("remove file of shard 2");

        let db = open(dir.path());
        for (shard, expected) in [(0, "has 1000 bytes"), (1, "SHA-256"), (2, "missing")] {
            match db.load_shard(shard).err() {
                Some(StoreError::Corrupt {
                    shard: found,
                    reason,
                }) => {
                    assert_eq!(found, shard);
                    assert!(reason.contains(expected), "shard {shard}: {reason}");
                }
                other => panic!("shard {shard}: expected Corrupt, got {other:?}"),
            }
        }
        // A damaged record is reported the same way.
        db.tree
            .insert(meta_key(0, Kind::Snapshot), vec![1, 0, 0])
            .expect("insert");
        assert!(matches!(
            db.load_shard(0).err(),
            Some(StoreError::Corrupt { shard: 0, .. })
        ));
    }

    #[test]
    fn a_version_1_database_is_upgraded_by_moving_snapshots_to_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = big_state(7);
        let snap = new_snapshot(4, 1, voters(&[1]), state.clone());
        {
            // The version 1 layout: the whole `Snapshot` as one value in the raft tree.
            let db = sled::open(dir.path()).expect("open sled");
            db.insert(FORMAT_VERSION_KEY, &1u64.to_be_bytes())
                .expect("insert");
            db.insert(SHARD_COUNT_KEY, &SHARDS.to_be_bytes())
                .expect("insert");
            let tree = db.open_tree(RAFT_TREE).expect("raft tree");
            let put = |key: Vec<u8>, message: &dyn PbMessage| {
                let value = message.write_to_bytes().expect("encode");
                tree.insert(key, value).expect("insert");
            };
            put(meta_key(1, Kind::ConfState), &voters(&[1]));
            put(meta_key(1, Kind::HardState), &hard_state(1, 1, 6));
            put(meta_key(1, Kind::Snapshot), &snap);
            put(entry_key(1, 5), &entry(5, 1, b"five"));
            put(entry_key(1, 6), &entry(6, 1, b"six"));
            db.flush().expect("flush");
        }

        let db = open(dir.path());
        assert_eq!(
            read_u64(&db.db, FORMAT_VERSION_KEY).expect("read"),
            Some(FORMAT_VERSION)
        );
        assert_eq!(
            std::fs::read(snapshot_path(dir.path(), 1, 1, 4)).expect("snapshot file"),
            state
        );
        let (ours, stored) = db.load_shard(1).expect("load upgraded shard");
        assert_eq!(stored, Some(snap));
        assert_eq!(ours.first_index().expect("first"), 5);
        assert_eq!(ours.last_index().expect("last"), 6);
        assert_eq!(
            ours.entries(5, 7, None, ctx()).expect("entries")[1]
                .data
                .as_ref(),
            b"six"
        );
        let (empty, none) = db.load_shard(0).expect("load untouched shard");
        assert!(!empty.is_initialized() && none.is_none());
        drop(ours);
        drop(empty);
        drop(db);
        // Upgraded once: the next open finds version 2 and the same file.
        let db = open(dir.path());
        assert!(db.load_shard(1).expect("reload").1.is_some());
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path()));
        {
            wait_for_sled_release(dir.path()).expect("sled released");
            let db = sled::open(dir.path()).expect("open sled");
            db.insert(FORMAT_VERSION_KEY, &3u64.to_be_bytes())
                .expect("insert");
            db.flush().expect("flush");
        }
        match RaftDb::open(dir.path(), SHARDS, true) {
            Err(StoreError::FormatVersion { found, expected }) => {
                assert_eq!((found, expected), (3, FORMAT_VERSION));
            }
            other => panic!("expected FormatVersion, got {:?}", other.err()),
        }
    }
}
