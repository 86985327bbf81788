//! Online backup and restore of a provider: the backup file format, the admin route's service
//! ([`Backups`], `POST /admin/backup`), and what `mimid backup` and `mimid restore` do.
//!
//! # Consistency
//!
//! A backup holds every shard's state machine ([`ShardMachine`]: hosted rooms as `RoomState`
//! snapshots, followers' mirror rooms, the directory of users, clients, token hashes and
//! KeyPackages), each serialised by the cluster's driver thread between two applies
//! ([`mimid_cluster::ClusterHandle::snapshot_all`]), so each shard's part is exactly its state
//! at one applied Raft index, recorded with the part. Shards are independent Raft groups and are
//! taken at unrelated points, so the backup is consistent per shard, not across shards. That is
//! enough for MIMI state because a room, with its log, membership, epoch and fan-out cursors,
//! lives in one shard, and so does a user with its clients and KeyPackages; what spans shards
//! (a client's rooms in other shards) is only ever read, never relied on as an invariant. The
//! node keeps serving while a backup is taken.
//!
//! With `cluster.replicas = "r"` a node holds only some shards: the parts of the others come
//! from a node that holds them (`Hub::snapshot_part`, over the node-to-node transport), so a
//! backup taken on any node has every shard; a shard no reachable node can serialise fails
//! the backup (503).
//!
//! The provider's secret keys are in a backup: the hub signing key and the franking keys are
//! replicated state (`mimid_actors::provider_keys`), in the part of their shard, so a restored
//! provider signs and franks with the keys it had. A backup must therefore be protected like
//! the key files, and so must the admin listener that serves it (behind the admin token,
//! `crate::admin::auth`, on loopback or an operators-only interface). Not in a backup: the TLS material and the configuration; back
//! those up separately (ops/runbooks/backup-restore.md).
//!
//! # Format (version 1)
//!
//! Self-describing, all integers big-endian:
//!
//! | field | bytes |
//! |---|---|
//! | magic `MIMIDBAK` | 8 |
//! | format version (1) | u32 |
//! | taken at, Unix ms | u64 |
//! | provider domain length, then the domain (UTF-8) | u16 + n |
//! | shard count | u64 |
//! | per shard, in shard order: shard id, applied index, applied term, data length, then the [`ShardMachine`] snapshot | 4 × u64 + n |
//! | SHA-256 over every byte before it | 32 |
//!
//! [`BackupFile::decode`] checks the magic, the version and the checksum before reading any
//! field, and refuses anything that does not parse exactly.
//!
//! # Restore
//!
//! [`restore`] turns a backup into a new data directory: it checks the file, the domain and the
//! shard count against the configuration and that every part restores into a [`ShardMachine`],
//! and only then lets [`mimid_cluster::restore_data_dir`] start each shard's Raft storage from
//! its part, as a snapshot at the backed-up index with the configured node as the only voter.
//! A node started on it recovers every shard like after a clean restart.
//!
//! With a configuration that uses `cluster.join` the new data directory seeds a **new
//! cluster** (`crate::cluster_ops::bootstrap`, "A cluster from a backup"): shard 0's part is
//! restored without the backed-up cluster's node registry (its node ids and addresses belong
//! to the old cluster; the new one seeds its own registry with the restored node and the new
//! id), and once the Raft state is in place [`restore`] writes the cluster id file naming a
//! new cluster id and the restored node as the only initial voter. `mimid start --join` on it
//! starts at once; nodes started with `--join` naming it join that cluster and are placed.
//! Without `cluster.join` (a node alone or a statically configured cluster) the registry is
//! restored as it was and no cluster id is written.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use mimid_actors::cluster_meta::{ClusterId, ClusterMeta, METADATA_SHARD};
use mimid_actors::hub::Hub;
use mimid_actors::shard::Shards;
use mimid_cluster::{ShardSnapshot, SnapshotAllError, SnapshotsDone, StateMachine as _};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::admin::auth::node_answered;
use crate::admin::AdminToken;
use crate::cluster_ops::bootstrap::{store_role, Role};
use crate::config::{check_domain, Config};
use crate::metrics::{BackupResult, Metrics};

/// First bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"MIMIDBAK";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// What `mimid backup` waits for the node's answer at most, by default.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// A decoded backup: what a provider's shards held when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// The provider's domain (rooms and users of other domains are not ours to host).
    pub domain: String,
    /// When the node assembled the backup (Unix ms; informational).
    pub taken_at_ms: u64,
    /// One part per shard, in shard order.
    pub shards: Vec<ShardSnapshot>,
}

/// Why bytes are not a usable backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupFormatError {
    /// The file does not start with [`MAGIC`].
    #[error("not a mimid backup (it does not start with the MIMIDBAK magic)")]
    NotABackup,
    /// Written by a build with another format.
    #[error("backup format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
    },
    /// The trailing SHA-256 does not match: damaged or truncated.
    #[error("backup checksum mismatch: the file is damaged or truncated")]
    Checksum,
    /// The checksum matched but the content does not parse (a bug in the writer).
    #[error("malformed backup: {0}")]
    Malformed(String),
}

impl BackupFile {
    /// The file bytes (see the module docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let data_len: usize = self.shards.iter().map(|part| part.data.len() + 32).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + self.domain.len() + data_len + 32);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.taken_at_ms.to_be_bytes());
        let domain_len = u16::try_from(self.domain.len()).expect("a DNS name is at most 253 bytes");
        out.extend_from_slice(&domain_len.to_be_bytes());
        out.extend_from_slice(self.domain.as_bytes());
        out.extend_from_slice(&(self.shards.len() as u64).to_be_bytes());
        for part in &self.shards {
            for field in [
                part.shard,
                part.applied_index,
                part.applied_term,
                part.data.len() as u64,
            ] {
                out.extend_from_slice(&field.to_be_bytes());
            }
            out.extend_from_slice(&part.data);
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Checks and parses backup file bytes.
    pub fn decode(bytes: &[u8]) -> Result<BackupFile, BackupFormatError> {
        if !bytes.starts_with(&MAGIC) {
            return Err(BackupFormatError::NotABackup);
        }
        let mut reader = Reader {
            rest: &bytes[MAGIC.len()..],
        };
        let version = u32::from_be_bytes(reader.array::<4>("format version")?);
        if version != FORMAT_VERSION {
            return Err(BackupFormatError::UnsupportedVersion { found: version });
        }
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(BackupFormatError::Checksum);
        };
        let (body, checksum) = bytes.split_at(body_len);
        if body_len < MAGIC.len() + 4 || Sha256::digest(body).as_slice() != checksum {
            return Err(BackupFormatError::Checksum);
        }
        let mut reader = Reader {
            rest: &body[MAGIC.len() + 4..],
        };
        let taken_at_ms = reader.u64("time")?;
        let domain_len = u16::from_be_bytes(reader.array::<2>("domain length")?);
        let domain = std::str::from_utf8(reader.bytes(domain_len.into(), "domain")?)
            .map_err(|_| malformed("the domain is not UTF-8"))?
            .to_owned();
        check_domain(&domain).map_err(malformed)?;
        let count = reader.u64("shard count")?;
        // Each part has a 32-byte header, so a count the body cannot hold is refused before
        // anything is allocated for it.
        if count == 0 || count > (reader.rest.len() / 32) as u64 {
            return Err(malformed(format!("{count} shards do not fit the file")));
        }
        let mut shards = Vec::with_capacity(count as usize);
        for expected in 0..count {
            let shard = reader.u64("shard id")?;
            if shard != expected {
                return Err(malformed(format!("shard {shard} where {expected} belongs")));
            }
            let applied_index = reader.u64("applied index")?;
            let applied_term = reader.u64("applied term")?;
            let len = usize::try_from(reader.u64("data length")?)
                .map_err(|_| malformed("a shard is larger than memory"))?;
            let data = reader.bytes(len, "shard data")?.to_vec();
            shards.push(ShardSnapshot {
                shard,
                applied_index,
                applied_term,
                data,
            });
        }
        if !reader.rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the last shard",
                reader.rest.len()
            )));
        }
        Ok(BackupFile {
            domain,
            taken_at_ms,
            shards,
        })
    }
}

/// Asks the cluster for every shard's snapshot ([`mimid_cluster::ClusterHandle::snapshot_all`]).
pub type SnapshotSource = Arc<dyn Fn(SnapshotsDone) -> Result<(), SnapshotAllError> + Send + Sync>;

/// The service behind `POST /admin/backup`: one backup at a time, counted in
/// `mimid_backups_total{result}`.
pub struct Backups {
    domain: String,
    source: SnapshotSource,
    metrics: Arc<Metrics>,
    running: AtomicBool,
    /// Where the parts of shards this node does not hold come from (`None`: it holds all).
    hub: Option<Arc<Hub>>,
}

/// Why no backup was produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupRefused {
    /// Another backup is being taken (HTTP 409).
    #[error("a backup is already running")]
    InProgress,
    /// The node cannot take one now, e.g. a shard has no leader yet (HTTP 503).
    #[error("not ready: {0}")]
    NotReady(String),
    /// A shard could not be serialised, or the node is stopping (HTTP 500).
    #[error("backup failed: {0}")]
    Failed(String),
}

impl Backups {
    /// Backups of provider `domain`, taken from `source`.
    pub fn new(domain: String, source: SnapshotSource, metrics: Arc<Metrics>) -> Self {
        Backups {
            domain,
            source,
            metrics,
            running: AtomicBool::new(false),
            hub: None,
        }
    }

    /// Takes the parts of shards this node does not hold from nodes that do, through `hub`.
    pub fn with_hub(mut self, hub: Arc<Hub>) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Whether a backup is being taken now.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Records a refusal decided before [`Backups::take`] (e.g. the node is not ready).
    pub fn count_refused(&self) {
        self.metrics.count_backup(BackupResult::Failed);
    }

    /// Takes a backup and returns the file bytes.
    ///
    /// Cancel safety: dropping the future releases the one-backup slot at once; the driver
    /// may still finish serialising the shards it was asked for, and a new backup started
    /// meanwhile is refused as [`BackupRefused::InProgress`] until it has.
    pub async fn take(&self) -> Result<Vec<u8>, BackupRefused> {
        let result = self.take_inner().await;
        self.metrics.count_backup(match &result {
            Ok(_) => BackupResult::Completed,
            Err(BackupRefused::InProgress) => BackupResult::Busy,
            Err(_) => BackupResult::Failed,
        });
        result
    }

    async fn take_inner(&self) -> Result<Vec<u8>, BackupRefused> {
        let Some(_slot) = Slot::acquire(&self.running) else {
            return Err(BackupRefused::InProgress);
        };
        let started = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        (self.source)(Box::new(move |result| {
            // The requester may have gone away; nothing to do then.
            let _ = tx.send(result);
        }))
        .map_err(refusal)?;
        let mut shards = match rx.await {
            Ok(result) => result.map_err(refusal)?,
            Err(_) => return Err(refusal(SnapshotAllError::Stopped)),
        };
        if let Some(hub) = &self.hub {
            for part in &mut shards {
                if hub.holds(part.shard) {
                    continue;
                }
                let (applied_index, applied_term, data) =
                    hub.snapshot_part(part.shard).await.map_err(|e| {
                        BackupRefused::NotReady(format!(
                            "shard {} is not held here and no node that holds it sent its \
                             part: {e}",
                            part.shard
                        ))
                    })?;
                *part = ShardSnapshot {
                    shard: part.shard,
                    applied_index,
                    applied_term,
                    data,
                };
            }
        }
        let file = BackupFile {
            domain: self.domain.clone(),
            taken_at_ms: unix_ms(SystemTime::now()),
            shards,
        };
        let summary = summary(&file);
        // Hashing and copying hundreds of MB must not hold up a runtime worker.
        let bytes = tokio::task::spawn_blocking(move || file.encode())
            .await
            .map_err(|err| BackupRefused::Failed(format!("encoding task: {err}")))?;
        tracing::info!(
            bytes = bytes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            shards = %summary,
            "backup taken"
        );
        Ok(bytes)
    }
}

/// The one-backup slot, released when dropped.
struct Slot<'a>(&'a AtomicBool);

impl<'a> Slot<'a> {
    fn acquire(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Slot(flag))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn refusal(error: SnapshotAllError) -> BackupRefused {
    match error {
        SnapshotAllError::Busy => BackupRefused::InProgress,
        SnapshotAllError::NotReady { .. } => BackupRefused::NotReady(error.to_string()),
        SnapshotAllError::ShardFailed { .. } | SnapshotAllError::Stopped => {
            BackupRefused::Failed(error.to_string())
        }
    }
}

/// `shard@index/term` for every part, for logs and reports.
fn summary(file: &BackupFile) -> String {
    let mut out = String::new();
    for part in &file.shards {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(
            out,
            "{}@{}/{}",
            part.shard, part.applied_index, part.applied_term
        );
    }
    out
}

/// What `mimid backup` wrote.
#[derive(Debug, Clone)]
pub struct SavedBackup {
    /// The provider the backup is of.
    pub domain: String,
    /// Shards in the backup.
    pub shards: usize,
    /// Size of the file.
    pub bytes: usize,
    /// Hex SHA-256 of the whole file (for an operator's manifest).
    pub sha256: String,
}

/// `mimid backup`: asks the node's admin listener at `admin` (`host:port`, optionally with
/// `http://`) for a backup, with the admin `token` when given, verifies it, and writes it to
/// `out` atomically (temporary file in the same directory, fsync, rename, directory fsync),
/// mode 0600. Reads the file back and verifies it again before reporting success.
///
/// Cancel safety: not cancel safe (a temporary file may be left behind).
pub async fn backup_to_file(
    admin: &str,
    token: Option<&AdminToken>,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<SavedBackup> {
    let bytes = tokio::time::timeout(timeout, fetch(admin, token))
        .await
        .with_context(|| format!("no backup from {admin} within {timeout:?}"))??;
    let file = BackupFile::decode(&bytes).context("checking the backup the node sent")?;
    let out = out.to_owned();
    let written = bytes.clone();
    tokio::task::spawn_blocking(move || write_atomically(&out, &written))
        .await
        .context("writing task")??;
    Ok(SavedBackup {
        domain: file.domain,
        shards: file.shards.len(),
        bytes: bytes.len(),
        sha256: hex::encode(Sha256::digest(&bytes)),
    })
}

/// `POST /admin/backup` over plain HTTP/1.1; the body of a 200, or the node's reason.
async fn fetch(admin: &str, token: Option<&AdminToken>) -> anyhow::Result<Vec<u8>> {
    let host = admin.strip_prefix("http://").unwrap_or(admin);
    let host = host.strip_suffix('/').unwrap_or(host);
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to the admin listener {host}"))?;
    let request = format!(
        "POST {BACKUP_PATH} HTTP/1.1\r\nHost: {host}\r\n{}Content-Length: 0\r\n\
         Connection: close\r\n\r\n",
        token.map(AdminToken::header_line).unwrap_or_default()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("sending the backup request")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .context("reading the backup")?;
    let (status, body) = parse_response(&response)?;
    if status != 200 {
        return Err(node_answered(status, body));
    }
    Ok(body.to_vec())
}

/// Status and body of an HTTP/1.1 response read to the end; a 200's body must be exactly its
/// `Content-Length`, so a cut connection is never taken for a backup.
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, &[u8])> {
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("the response has no complete HTTP head")?;
    let head = std::str::from_utf8(&response[..head_end]).context("the HTTP head is not UTF-8")?;
    let body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("the response has no HTTP status")?;
    if status != 200 {
        return Ok((status, body));
    }
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .context("the backup response has no Content-Length")?
        .context("the backup response has an invalid Content-Length")?;
    if body.len() != length {
        bail!(
            "the backup response was cut: {} of {length} bytes",
            body.len()
        );
    }
    Ok((status, body))
}

/// Writes `bytes` to `path` so that `path` is either unchanged or the complete, durable file:
/// a temporary file in the same directory is written, synced, read back and verified as a
/// backup, then renamed over `path`, and the directory is synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = write_synced(&tmp, bytes)
        .and_then(|()| {
            let on_disk =
                fs::read(&tmp).with_context(|| format!("reading back {}", tmp.display()))?;
            BackupFile::decode(&on_disk)
                .with_context(|| format!("verifying {} after writing it", tmp.display()))?;
            Ok(())
        })
        .and_then(|()| {
            fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    File::open(&dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn write_synced(tmp: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(BACKUP_FILE_MODE)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))
}

/// What `mimid restore` did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The provider.
    pub domain: String,
    /// When the backup was taken (Unix ms).
    pub taken_at_ms: u64,
    /// Shards restored.
    pub shards: usize,
    /// Rooms hosted in them.
    pub rooms: usize,
    /// `shard@index/term` of every part.
    pub positions: String,
    /// With `cluster.join`: the id of the new cluster the restored node seeds (in its cluster
    /// id file); `None` for a node alone or a statically configured cluster.
    pub cluster_id: Option<ClusterId>,
}

/// `mimid restore`: creates `config.data_dir` (it must be missing or empty) from the backup file
/// `from`, so that a node started with `config` resumes every shard at its backed-up index;
/// with `cluster.join`, as the seed of a new cluster (module docs). Refuses, before writing
/// anything, a damaged file, a backup of another domain, a shard count other than
/// `cluster.shards`, a part that does not restore, and for `cluster.join` a `cluster.listen`
/// the other nodes cannot dial.
pub fn restore(from: &Path, config: &Config) -> anyhow::Result<Restored> {
    let seed = match (config.cluster.uses_join(), config.cluster.listen) {
        (false, _) => None,
        (true, Some(listen)) => Some(Role::restored_seed(config.node_id, listen)?),
        (true, None) => bail!("cluster.join needs cluster.listen"),
    };
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let mut file =
        BackupFile::decode(&bytes).with_context(|| format!("checking {}", from.display()))?;
    drop(bytes);
    if file.domain != config.domain {
        bail!(
            "the backup is of provider {} but the configuration is for {}: rooms and users are \
             named after their provider, so a backup restores only under its own domain",
            file.domain,
            config.domain
        );
    }
    let count = file.shards.len() as u64;
    let more = config.cluster.shard_count() - config.cluster.shards;
    if count != config.cluster.shard_count() {
        if more == 0 {
            bail!(
                "the backup has {count} shards but the configuration asks for cluster.shards = \
                 {}; rooms hash to shards, so set cluster.shards = {count}",
                config.cluster.shards
            );
        }
        bail!(
            "the backup has {count} shards but the configuration has {} (cluster.shards = {}, \
             {} in [[cluster.residency]] and cluster.split_shards = {}); restore with the \
             backed-up cluster's cluster.shards, residency sets and split shards",
            config.cluster.shard_count(),
            config.cluster.shards,
            more - config.cluster.split_shards,
            config.cluster.split_shards
        );
    }
    if seed.is_some() {
        // The new cluster seeds its own registry (module docs).
        if let Some(part) = file
            .shards
            .iter_mut()
            .find(|part| part.shard == METADATA_SHARD)
        {
            let (_, rest) = ClusterMeta::split_snapshot(&part.data).map_err(|reason| {
                anyhow::anyhow!("shard {} does not restore: {reason}", part.shard)
            })?;
            part.data = rest.to_vec();
        }
    }
    // Every part must restore into a real shard state machine before anything is written.
    let shards = Shards::new(count);
    for part in &file.shards {
        shards
            .machine(part.shard)
            .restore(&part.data)
            .map_err(|reason| anyhow::anyhow!("shard {} does not restore: {reason}", part.shard))?;
    }
    let data_dir = &config.data_dir;
    let created = prepare_data_dir(data_dir)?;
    let positions = summary(&file);
    let restored = Restored {
        domain: file.domain,
        taken_at_ms: file.taken_at_ms,
        shards: file.shards.len(),
        rooms: shards.room_count(),
        positions,
        cluster_id: seed.as_ref().map(|role| role.cluster_id),
    };
    let cluster = crate::server::cluster_config(config);
    // The Raft state first, then the cluster id: a data directory with a cluster id whose
    // node is an initial voter but has no Raft state would start an empty cluster; one with
    // Raft state and no id is refused by `mimid start --join` with the reason.
    let written = mimid_cluster::restore_data_dir(&cluster, file.shards)
        .map_err(anyhow::Error::from)
        .and_then(|()| match &seed {
            Some(role) => store_role(data_dir, role),
            None => Ok(()),
        });
    if let Err(err) = written {
        // Nothing of this restore is left behind: the directory was empty before.
        let _ = fs::remove_dir_all(data_dir.join("raft"));
        if created {
            let _ = fs::remove_dir(data_dir);
        }
        return Err(err).with_context(|| format!("restoring into {}", data_dir.display()));
    }
    Ok(restored)
}

/// Refuses a data directory with anything in it; creates a missing one (mode 0700). Returns
/// whether it was created.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: restore only into a new data directory (move the old one \
                     aside first)",
                    dir.display()
                );
            }
            Ok(false)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DATA_DIR_MODE)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            Ok(true)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", dir.display())),
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn malformed(reason: impl Into<String>) -> BackupFormatError {
    BackupFormatError::Malformed(reason.into())
}

/// Reads big-endian fields off the front of a byte string.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], BackupFormatError> {
        if self.rest.len() < len {
            return Err(malformed(format!("truncated {what}")));
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], BackupFormatError> {
        let bytes = self.bytes(N, what)?;
        Ok(bytes.try_into().expect("bytes returned exactly N bytes"))
    }

    fn u64(&mut self, what: &str) -> Result<u64, BackupFormatError> {
        self.array::<8>(what).map(u64::from_be_bytes)
    }
}

/// The admin route.
pub const BACKUP_PATH: &str = "/admin/backup";
/// Magic, version, time and domain length: the fixed part before the domain.
const HEADER_LEN: usize = 8 + 4 + 8 + 2;
const CHECKSUM_LEN: usize = 32;
/// Backups hold token hashes, KeyPackages and every room's state: owner-only.
const BACKUP_FILE_MODE: u32 = 0o600;
const DATA_DIR_MODE: u32 = 0o700;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BackupFile {
        BackupFile {
            domain: "a.example".into(),
            taken_at_ms: 1_700_000_000_000,
            shards: (0..3)
                .map(|shard| ShardSnapshot {
                    shard,
                    applied_index: 10 + shard,
                    applied_term: 2,
                    // Not shard snapshots: postcard refuses an unterminated varint.
                    data: vec![0xff; 5 + shard as usize],
                })
                .collect(),
        }
    }

    #[test]
    fn backups_round_trip() {
        let file = sample();
        let bytes = file.encode();
        assert!(bytes.starts_with(b"MIMIDBAK\0\0\0\x01"));
        assert_eq!(BackupFile::decode(&bytes), Ok(file));
    }

    /// Every single flipped byte is refused, whatever field it lands in: nothing damaged is
    /// ever restored.
    #[test]
    fn any_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let err = BackupFile::decode(&damaged).expect_err("damaged backup accepted");
            let expected = match at {
                0..8 => BackupFormatError::NotABackup,
                8..12 => BackupFormatError::UnsupportedVersion {
                    found: FORMAT_VERSION ^ (1 << (8 * (11 - at))),
                },
                _ => BackupFormatError::Checksum,
            };
            assert_eq!(err, expected, "byte {at}");
        }
    }

    #[test]
    fn truncated_and_padded_files_are_refused() {
        let bytes = sample().encode();
        for len in [0, 4, 8, 12, 20, bytes.len() - 33, bytes.len() - 1] {
            assert!(BackupFile::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(
            BackupFile::decode(&padded),
            Err(BackupFormatError::Checksum)
        );
    }

    /// A well-checksummed body that does not parse (a writer bug) is refused with the reason,
    /// never a panic or an allocation the file cannot back.
    #[test]
    fn structure_is_checked_under_a_valid_checksum() {
        let with_checksum = |mut body: Vec<u8>| {
            let checksum = Sha256::digest(&body);
            body.extend_from_slice(&checksum);
            body
        };
        let header = |domain: &str, shards: u64| {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            body.extend_from_slice(&1u64.to_be_bytes());
            body.extend_from_slice(&(domain.len() as u16).to_be_bytes());
            body.extend_from_slice(domain.as_bytes());
            body.extend_from_slice(&shards.to_be_bytes());
            body
        };
        let part = |shard: u64, len: u64| {
            let mut out = Vec::new();
            for field in [shard, 1, 1, len] {
                out.extend_from_slice(&field.to_be_bytes());
            }
            out
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not a valid DNS name", header("not a domain", 1)),
            ("do not fit", header("a.example", u64::MAX)),
            ("do not fit", header("a.example", 0)),
            (
                "shard 1 where 0 belongs",
                [header("a.example", 1), part(1, 0)].concat(),
            ),
            (
                "truncated shard data",
                [header("a.example", 1), part(0, 1 << 40)].concat(),
            ),
            (
                "bytes after the last shard",
                [header("a.example", 1), part(0, 0), vec![9]].concat(),
            ),
        ];
        for (expected, body) in cases {
            match BackupFile::decode(&with_checksum(body)) {
                Err(BackupFormatError::Malformed(reason)) => {
                    assert!(reason.contains(expected), "{expected}: {reason}")
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn responses_are_taken_only_whole() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(parse_response(ok).unwrap(), (200, &b"abc"[..]));
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabc";
        assert!(parse_response(cut).unwrap_err().to_string().contains("cut"));
        let no_length = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert!(parse_response(no_length).is_err());
        let refused = b"HTTP/1.1 409 Conflict\r\n\r\nalready running\n";
        assert_eq!(
            parse_response(refused).unwrap(),
            (409, &b"already running\n"[..])
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn files_are_written_whole_with_owner_only_access() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.backup");
        let bytes = sample().encode();
        write_atomically(&path, &bytes).expect("written");
        assert_eq!(fs::read(&path).unwrap(), bytes);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        // A file that does not verify never replaces a good one.
        let err = write_atomically(&path, b"garbage").unwrap_err();
        assert!(format!("{err:#}").contains("not a mimid backup"), "{err:#}");
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn restore_refuses_before_writing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut config = Config {
            domain: "a.example".into(),
            data_dir: data_dir.clone(),
            ..Config::default()
        };
        config.cluster.shards = 3;
        let file = dir.path().join("backup");

        // Parts that are not shard snapshots.
        fs::write(&file, sample().encode()).unwrap();
        let err = restore(&file, &config).unwrap_err();
        assert!(
            format!("{err:#}").contains("shard 0 does not restore"),
            "{err:#}"
        );

        let mut other_domain = sample();
        other_domain.domain = "b.example".into();
        fs::write(&file, other_domain.encode()).unwrap();
        let err = restore(&file, &config).unwrap_err();
        assert!(
            format!("{err:#}").contains("backup is of provider b.example"),
            "{err:#}"
        );

        config.cluster.shards = 4;
        fs::write(&file, sample().encode()).unwrap();
        let err = restore(&file, &config).unwrap_err();
        assert!(format!("{err:#}").contains("cluster.shards = 3"), "{err:#}");
        assert!(!data_dir.exists(), "nothing written");

        // A valid backup of empty shards, into a non-empty directory.
        config.cluster.shards = 2;
        let empty = Shards::new(2);
        let valid = BackupFile {
            domain: "a.example".into(),
            taken_at_ms: 1,
            shards: (0..2)
                .map(|shard| ShardSnapshot {
                    shard,
                    applied_index: 5,
                    applied_term: 1,
                    data: empty.machine(shard).snapshot(),
                })
                .collect(),
        };
        fs::write(&file, valid.encode()).unwrap();
        fs::create_dir_all(data_dir.join("certs")).unwrap();
        let err = restore(&file, &config).unwrap_err();
        assert!(format!("{err:#}").contains("is not empty"), "{err:#}");
        fs::remove_dir(data_dir.join("certs")).unwrap();
        let restored = restore(&file, &config).expect("restored");
        assert_eq!((restored.shards, restored.rooms), (2, 0));
        assert!(data_dir.join("raft").is_dir());
        assert_eq!(restored.cluster_id, None, "no cluster.join, no cluster id");
        assert_eq!(
            crate::cluster_ops::bootstrap::load_role(&data_dir).unwrap(),
            None
        );
    }

    /// With `cluster.join` the restored directory seeds a new cluster: a cluster id file with a
    /// new id and the restored node as the only initial voter, and shard 0 without the
    /// backed-up registry. A `cluster.listen` nobody can dial is refused before anything is
    /// written.
    #[test]
    fn a_restore_for_cluster_join_seeds_a_new_cluster_without_the_old_registry() {
        use mimid_actors::cluster_meta::MetaChange;

        let dir = tempfile::tempdir().unwrap();
        let shards = Shards::new(2);
        let mut registry = ClusterMeta::default();
        let old_id = ClusterId::from_bytes([7; 16]);
        let changed = registry.apply(MetaChange::Bootstrap {
            cluster_id: old_id,
            nodes: vec![(1, Some("10.9.9.1:7443".parse().unwrap()))],
            replication_factor: 3,
        });
        assert_eq!(changed, Ok(true));
        let part = |shard: u64| {
            let mut data = shards.machine(shard).snapshot();
            if shard == METADATA_SHARD {
                let mut with_registry = registry.snapshot_prefix();
                with_registry.extend(data);
                data = with_registry;
            }
            ShardSnapshot {
                shard,
                applied_index: 9,
                applied_term: 2,
                data,
            }
        };
        let backup = BackupFile {
            domain: "a.example".into(),
            taken_at_ms: 1,
            shards: (0..2).map(part).collect(),
        };
        assert!(ClusterMeta::split_snapshot(&backup.shards[0].data)
            .unwrap()
            .0
            .is_seeded());
        let file = dir.path().join("backup");
        fs::write(&file, backup.encode()).unwrap();

        let data_dir = dir.path().join("data");
        let mut config = Config {
            domain: "a.example".into(),
            data_dir: data_dir.clone(),
            node_id: 5,
            ..Config::default()
        };
        config.cluster.shards = 2;
        config.cluster.join = vec!["10.0.0.2:7443".parse().unwrap()];
        config.cluster.listen = Some("0.0.0.0:7443".parse().unwrap());
        let err = restore(&file, &config).unwrap_err();
        assert!(format!("{err:#}").contains("cluster.listen"), "{err:#}");
        assert!(!data_dir.exists(), "nothing written");

        let listen = "10.0.0.5:7443".parse().unwrap();
        config.cluster.listen = Some(listen);
        let restored = restore(&file, &config).expect("restored");
        let role = crate::cluster_ops::bootstrap::load_role(&data_dir)
            .unwrap()
            .expect("a cluster id file");
        assert_eq!(restored.cluster_id, Some(role.cluster_id));
        assert_ne!(role.cluster_id, old_id, "a new cluster");
        assert_eq!(role.initial_voters, vec![(5, listen)]);
        assert!(data_dir.join("raft").is_dir());
    }
}
