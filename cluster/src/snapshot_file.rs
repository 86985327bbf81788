//! Shard snapshot data in files beside the Raft database; sled keeps only a small record.
//!
//! # Why files
//!
//! A shard snapshot holds every room's state (several MB, growing with the rooms' logs). Stored
//! as one sled value in the tree that also holds the Raft log, sled rewrote it as a blob whenever
//! a neighbouring page changed (`Tree::split_node`, `PageCache::replace`), and sustained
//! throughput fell from ~19 000 to 1 000–5 000 messages/s after the first snapshot
//! (bench/README.md, "Snapshot cliff"). etcd separates them the same way: snapshot data in
//! `snap/<term>-<index>.snap`, a small record in the WAL.
//!
//! # Layout
//!
//! `<raft dir>/snapshots/<shard>-<term>-<index>.snap`, each number as 16 lowercase hex digits,
//! holds exactly the state-machine bytes (`Snapshot::data`). The sled record under
//! `shard ‖ 0x03` ([`SnapshotRecord`]) holds the Raft `SnapshotMetadata` (index, term, conf
//! state), the data length and its SHA-256; the file name follows from shard, term and index, so
//! no path is ever read back from disk. (sled keeps its own snapshots as `snap.<lsn>` files in
//! the Raft directory itself; the `snapshots/` directory does not match that prefix.)
//!
//! # Crash safety
//!
//! 1. [`SnapshotFiles::write`]: data to `<name>.tmp`, `fdatasync`, rename to `<name>`, `fsync`
//!    of the directory. The file is now durable under its final name.
//! 2. The record naming it is staged and becomes durable with the driver's next sled flush.
//! 3. Only then is the file it replaced deleted (`RaftDb::write`).
//!
//! A crash between 1 and 2 leaves the new file unreferenced, between 2 and 3 the old one;
//! [`SnapshotFiles::remove_unreferenced`] deletes such leftovers at start. So a durable record
//! always names a complete, durable file, and a file that is missing, short or fails its checksum
//! means the disk or an operator damaged it: [`StoreError::Corrupt`], never a panic.
//!
//! With `fsync` off the same steps run without the `fdatasync`/`fsync` calls: the rename still
//! makes a file appear whole, which survives a process crash but not a power loss, like sled's
//! flush in that mode.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raft::eraftpb::{Snapshot, SnapshotMetadata};
use sha2::{Digest as _, Sha256};

use crate::storage::{decode, encode, StoreError};
use crate::ShardId;

/// The directory of one node's snapshot files, and whether writes to it are synced.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    fsync: bool,
}

/// What sled stores about a snapshot whose data lives in a file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapshotRecord {
    metadata: SnapshotMetadata,
    len: u64,
    sha256: [u8; 32],
}

impl SnapshotFiles {
    /// Uses (and creates if needed) `dir`. The caller makes the directory entry itself durable
    /// (it syncs the Raft directory once at open).
    pub(crate) fn open(dir: PathBuf, fsync: bool) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|source| StoreError::SnapshotFile {
            context: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(SnapshotFiles { dir, fsync })
    }

    /// Writes `data` as the file of `record` (step 1 of the module docs): when this returns,
    /// the file is complete under its final name and, with `fsync`, durable.
    pub(crate) fn write(
        &self,
        shard: ShardId,
        record: &SnapshotRecord,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.path(shard, record);
        let mut tmp_name = path.clone().into_os_string();
        tmp_name.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp_name);
        let written = self.write_tmp(&tmp, data).and_then(|()| {
            fs::rename(&tmp, &path).map_err(|source| file_error("rename", &tmp, source))
        });
        if let Err(err) = written {
            // Best effort: a leftover is also removed at the next start.
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        if self.fsync {
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| file_error("fsync directory", &self.dir, source))?;
        }
        Ok(())
    }

    fn write_tmp(&self, tmp: &Path, data: &[u8]) -> Result<(), StoreError> {
        let mut file = File::create(tmp).map_err(|source| file_error("create", tmp, source))?;
        file.write_all(data)
            .map_err(|source| file_error("write", tmp, source))?;
        if self.fsync {
            file.sync_data()
                .map_err(|source| file_error("fdatasync", tmp, source))?;
        }
        Ok(())
    }

    /// Reads and verifies the data of `record`.
    pub(crate) fn read(
        &self,
        shard: ShardId,
        record: &SnapshotRecord,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.path(shard, record);
        let corrupt = |reason: String| StoreError::Corrupt { shard, reason };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(format!(
                    "snapshot file {} is missing",
                    path.display()
                )))
            }
            Err(source) => return Err(file_error("open", &path, source)),
        };
        let file_len = file
            .metadata()
            .map_err(|source| file_error("stat", &path, source))?
            .len();
        if file_len != record.len {
            return Err(corrupt(format!(
                "snapshot file {} has {file_len} bytes, its record says {}",
                path.display(),
                record.len
            )));
        }
        let capacity = usize::try_from(record.len).map_err(|_| {
            corrupt(format!(
                "snapshot file {} of {} bytes does not fit in memory",
                path.display(),
                record.len
            ))
        })?;
        let mut data = Vec::with_capacity(capacity);
        // One byte more than expected detects a file that grew since the `stat`.
        file.take(record.len.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| file_error("read", &path, source))?;
        if data.len() as u64 != record.len {
            return Err(corrupt(format!(
                "snapshot file {} changed length while being read",
                path.display()
            )));
        }
        if <[u8; 32]>::from(Sha256::digest(&data)) != record.sha256 {
            return Err(corrupt(format!(
                "snapshot file {} fails its SHA-256 check",
                path.display()
            )));
        }
        Ok(data)
    }

    /// Where the data of `record` lives.
    pub(crate) fn path(&self, shard: ShardId, record: &SnapshotRecord) -> PathBuf {
        self.dir.join(record.file_name(shard))
    }

    /// Deletes snapshot and temporary files whose names are not in `referenced` (leftovers of a
    /// crash, see the module docs). Files this module would never write are left alone, with a
    /// warning, since an operator may have put them there.
    pub(crate) fn remove_unreferenced(
        &self,
        referenced: &BTreeSet<OsString>,
    ) -> Result<(), StoreError> {
        let list_error = |source| file_error("list", &self.dir, source);
        for dir_entry in fs::read_dir(&self.dir).map_err(list_error)? {
            let name = dir_entry.map_err(list_error)?.file_name();
            if referenced.contains(&name) {
                continue;
            }
            let path = self.dir.join(&name);
            let ours = name.to_str().is_some_and(|name| {
                let name = name.strip_suffix(TMP_SUFFIX).unwrap_or(name);
                name.ends_with(SUFFIX)
            });
            if !ours {
                tracing::warn!(path = %path.display(), "unknown file in the snapshot directory");
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed unreferenced snapshot file")
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(file_error("remove", &path, source)),
            }
        }
        Ok(())
    }
}

impl SnapshotRecord {
    /// The record of a snapshot with `metadata` and state-machine `data`.
    pub(crate) fn new(metadata: SnapshotMetadata, data: &[u8]) -> Self {
        SnapshotRecord {
            metadata,
            len: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    }

    pub(crate) fn metadata(&self) -> &SnapshotMetadata {
        &self.metadata
    }

    /// The full Raft snapshot, given this record's verified data.
    pub(crate) fn to_snapshot(&self, data: Vec<u8>) -> Snapshot {
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        snapshot.set_metadata(self.metadata.clone());
        snapshot
    }

    /// `<shard>-<term>-<index>.snap`, fixed-width hex so names sort by shard, then term and
    /// index. Index and term identify the snapshot: a shard's snapshot index only grows.
    pub(crate) fn file_name(&self, shard: ShardId) -> OsString {
        format!(
            "{shard:016x}-{:016x}-{:016x}{SUFFIX}",
            self.metadata.term, self.metadata.index
        )
        .into()
    }

    /// `RECORD_VERSION ‖ len (u64 BE) ‖ SHA-256 ‖ SnapshotMetadata (protobuf)`.
    pub(crate) fn encode(&self, shard: ShardId) -> Result<Vec<u8>, StoreError> {
        let metadata = encode(shard, "snapshot metadata", &self.metadata)?;
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + metadata.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&metadata);
        Ok(out)
    }

    pub(crate) fn decode(shard: ShardId, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            shard,
            reason: format!("snapshot record: {reason}"),
        };
        let (&version, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        if version != RECORD_VERSION {
            return Err(corrupt(&format!("unknown record version {version}")));
        }
        let (len, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let (sha256, metadata) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| corrupt("truncated checksum"))?;
        Ok(SnapshotRecord {
            metadata: decode(shard, "snapshot metadata", metadata)?,
            len: u64::from_be_bytes(*len),
            sha256: *sha256,
        })
    }
}

fn file_error(context: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::SnapshotFile {
        context,
        path: path.to_owned(),
        source,
    }
}

/// Writes the files of snapshots a group took (hash, write, `fdatasync`, rename, directory
/// `fsync`) on a thread of its own, `mimid-snap-io`, so that the driver thread, which runs
/// every shard of the node, serialises the state machine and goes on while the bytes reach the
/// disk (ops/capacity.md M13: writing and syncing took more of a snapshot's stall than
/// serialising it). The group stages the record, and with it the log compaction, once the
/// file is complete ([`PendingWrite::try_finish`]); until then its latest snapshot is the
/// previous one. Cloning shares the thread, which ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct SnapshotWriter {
    jobs: mpsc::SyncSender<WriteJob>,
}

struct WriteJob {
    shard: ShardId,
    metadata: SnapshotMetadata,
    data: Vec<u8>,
    done: mpsc::SyncSender<Result<Written, StoreError>>,
}

/// A snapshot file being written: the record once the file is complete.
pub(crate) struct PendingWrite {
    done: mpsc::Receiver<Result<Written, StoreError>>,
}

/// A complete snapshot file: its record, and how long the writer took.
pub(crate) struct Written {
    pub(crate) record: SnapshotRecord,
    pub(crate) took: Duration,
}

impl SnapshotWriter {
    /// Starts the writer thread over `files`, with room for `capacity` queued files (a group
    /// has at most one being written, so the node's shard count).
    pub(crate) fn spawn(files: SnapshotFiles, capacity: usize) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::sync_channel::<WriteJob>(capacity.max(1));
        std::thread::Builder::new()
            .name("mimid-snap-io".into())
            .spawn(move || {
                for job in queue {
                    let started = Instant::now();
                    let record = SnapshotRecord::new(job.metadata, &job.data);
                    let written = files
                        .write(job.shard, &record, &job.data)
                        .map(|()| Written {
                            record,
                            took: started.elapsed(),
                        });
                    // A group that stopped meanwhile is gone; its file is an unreferenced
                    // leftover the next start removes.
                    let _ = job.done.send(written);
                }
            })
            .map_err(|source| StoreError::Io {
                context: "start the snapshot writer thread",
                source,
            })?;
        Ok(SnapshotWriter { jobs })
    }

    /// Queues the file of `shard`'s snapshot with `metadata` and state-machine `data`.
    pub(crate) fn submit(
        &self,
        shard: ShardId,
        metadata: SnapshotMetadata,
        data: Vec<u8>,
    ) -> Result<PendingWrite, StoreError> {
        let (done, finished) = mpsc::sync_channel(1);
        let job = WriteJob {
            shard,
            metadata,
            data,
            done,
        };
        self.jobs.send(job).map_err(|_| writer_stopped())?;
        Ok(PendingWrite { done: finished })
    }
}

impl PendingWrite {
    /// The record of the complete file, or why it could not be written; `None` while it is
    /// being written.
    pub(crate) fn try_finish(&self) -> Option<Result<Written, StoreError>> {
        match self.done.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(writer_stopped())),
        }
    }

    /// Waits until the file is complete (or failed).
    pub(crate) fn wait(self) -> Result<Written, StoreError> {
        self.done.recv().unwrap_or_else(|_| Err(writer_stopped()))
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Io {
        context: "write a snapshot file",
        source: io::Error::other("the snapshot writer thread stopped"),
    }
}

/// Suffix of a complete snapshot file.
const SUFFIX: &str = ".snap";
/// Appended to a snapshot file's name while it is being written.
const TMP_SUFFIX: &str = ".tmp";
/// Version byte of [`SnapshotRecord::encode`].
const RECORD_VERSION: u8 = 1;
/// Version byte, length and checksum before the metadata.
const RECORD_HEADER_LEN: usize = 1 + 8 + 32;
