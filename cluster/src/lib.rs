//! Multi-raft replication of opaque commands for shard state machines.
//!
//! Rooms (and users) hash to **shards** ([`shard_for`]); each shard is one raft-rs group whose
//! replicated log feeds a deterministic [`StateMachine`] (DESIGN.md §3). This crate knows nothing
//! about MLS or MIMI: a command is a byte string, an output is whatever the state machine
//! returns, and deciding what a command means happens in `apply`, on the ordered log
//! (STYLE.md P5).
//!
//! One driver thread runs every local group ([`Cluster::start`]); callers talk to it through a
//! cloneable [`ClusterHandle`] over a bounded inbox. A proposal is answered once its entry is
//! durable and applied, or with a [`ProposeError`]. Raft state lives in one sled database under
//! `data_dir/raft`, except snapshot data, which lives in files under `data_dir/raft/snapshots`
//! (kept out of sled because sled rewrites large values along with the log around them); every
//! loop turn persists all groups' writes with one flush and one `fdatasync` (see the `driver`,
//! `storage` and `snapshot_file` modules for the durability argument).
//!
//! State machines are rebuilt at start from each shard's latest snapshot plus the log after it.
//! A shard snapshots (and compacts its log) every [`ClusterConfig::snapshot_interval`] applied
//! entries, and also once its oldest unsnapshotted entry is older than
//! [`ClusterConfig::snapshot_max_age`], so a crash restart replays a bounded, recent log;
//! [`Cluster::shutdown`] snapshots every shard, so a clean restart replays none.
//!
//! A cluster is one or more nodes, and every shard group starts with a replica on each: the
//! voters [`ClusterConfig::voters`], with which a fresh data directory bootstraps every group
//! (all nodes of a new cluster are given the same set; on an existing data directory the
//! membership comes from the log, and membership changes alter it per shard). [`Cluster::start`] runs a single-node cluster. [`Cluster::start_with_transport`]
//! runs one node of a larger one: at the end of each driver turn, once the turn's writes are
//! durable, every shard's Raft messages for a node go out as one frame (the format is in the
//! `frame` module) through the [`Transport`]; frames from other nodes come in through
//! [`ClusterHandle::receive`], and [`ClusterHandle::report_unreachable`] tells the groups about
//! a peer the transport cannot reach. Only a shard's leader takes proposals; the other
//! replicas answer [`ProposeError::NotLeader`] at once, and [`ClusterHandle::leader`] names the
//! leader they know; [`ClusterHandle::read_barrier`] (Raft ReadIndex) makes a replica, leader or
//! not, catch up with everything its leader acknowledged before a read. Groups run with
//! check-quorum and pre-vote: a leader cut off from a quorum
//! steps down (its pending proposals wait a while for the next leader to commit them, see
//! [`ClusterConfig::lost_leadership_wait_ticks`], and the node stops being ready),
//! and a node rejoining after a partition does not unseat the leader. A replica too far behind
//! the leader's compacted log catches up from a snapshot sent inside a frame.
//!
//! Membership changes one shard at a time, one change at a time
//! ([`ClusterHandle::change_members`]: add a learner, promote it, remove a node; single-voter
//! changes, so no joint consensus), and leadership moves on request
//! ([`ClusterHandle::transfer_leader`], e.g. to drain a node before removing or stopping it). A
//! node added to a running cluster starts with [`ClusterConfig::join_existing`]: its groups wait
//! empty until a leader adds the node and sends it a snapshot. A node removed from a shard
//! stops taking part in it (no campaigns, no leader, `NotLeader`); its data stays until the
//! data directory is deleted. [`ClusterHandle::status`] reports each local replica's leader,
//! term, commit and applied indexes, membership and, on leaders, every member's matched index.
//! The `membership` module has the details.
//!
//! # Hibernation
//!
//! An idle shard hibernates, as TiKV's hibernate regions do: once its leader has seen every
//! voter and learner caught up (matched, committed and applied to the last index) with nothing
//! pending for [`ClusterConfig::hibernate_after_ticks`] ticks, it sends each member a
//! hibernation notice (a raft heartbeat with a context of its own); a follower that takes the
//! notice from the leader it follows stops ticking and acknowledges, and once every member
//! acknowledged the leader stops ticking too. Nothing is sent and nothing campaigns until a
//! proposal, a read barrier, a membership change or leadership transfer, a raft message (a
//! snapshot, a vote, new entries) or [`ClusterHandle::report_unreachable`] naming the shard's
//! leader wakes it; groups start awake. A follower woken because its leader's node is gone
//! elects a new leader within the usual election timeout; until the transport reports that
//! node, the shard's followers still name it as the leader. A woken leader resets its
//! check-quorum clock and evidence, so it does not step down for the silence it slept through.
//! [`ShardStatus::hibernating`] and [`ClusterHandle::hibernating_groups`] show it; the
//! `group::hibernate` module has the details.
//!
//! Not yet present: removing a removed shard's data automatically.
//!
//! ```
//! use mimid_cluster::{shard_for, Cluster, ClusterConfig, StateMachine};
//!
//! /// Sums the bytes of every command.
//! #[derive(Default)]
//! struct Sum(u64);
//!
//! impl StateMachine for Sum {
//!     type Output = u64;
//!     fn apply(&mut self, _index: u64, command: &[u8]) -> u64 {
//!         self.0 += command.iter().map(|b| u64::from(*b)).sum::<u64>();
//!         self.0
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_be_bytes().to_vec()
//!     }
//!     fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
//!         let bytes = snapshot.try_into().map_err(|_| "snapshot is not 8 bytes".to_owned())?;
//!         self.0 = u64::from_be_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let cluster = Cluster::start(ClusterConfig::new(1, dir.path()), |_shard| Sum::default()).unwrap();
//! let handle = cluster.handle();
//! let (tx, rx) = std::sync::mpsc::channel();
//! let shard = shard_for(b"room-1", handle.shard_count());
//! handle.propose(shard, vec![2, 3], Box::new(move |result| tx.send(result).unwrap())).unwrap();
//! assert_eq!(rx.recv().unwrap(), Ok(5));
//! cluster.shutdown();
//! ```

#![warn(missing_docs)]

mod backup;
mod driver;
mod frame;
mod group;
mod membership;
mod metrics;
mod pending;
mod read_barrier;
mod reply;
mod snapshot_file;
pub mod splitmix;
mod storage;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::ConfState;

use crate::backup::SnapshotAllRequest;
use crate::driver::{Driver, DriverSettings, Inbound, LocalOnly, Proposal};
use crate::group::{error_chain, raft_config, Group, GroupError};
use crate::membership::AdminRequest;
use crate::metrics::{bump, Metrics};
use crate::read_barrier::{BarrierReply, BarrierRequest};
use crate::reply::Reply;
use crate::storage::{RaftDb, WriteBatch};

pub use crate::backup::{restore_data_dir, ShardSnapshot, SnapshotAllError, SnapshotsDone};
pub use crate::frame::MAX_FRAME_BYTES;
pub use crate::membership::{
    learner_caught_up, step_down_if_removed, ChangeDone, Handoff, Membership, MembershipChange,
    MembershipError, ShardStatus, StepDown, TransferDeadline, TransferDone, TransferError,
    TransferStep,
};
pub use crate::metrics::{
    ClusterMetrics, Histogram, HistogramSnapshot, DEPTH_BOUNDS, FLUSH_MICROS_BOUNDS,
    PROPOSAL_MICROS_BOUNDS, SNAPSHOT_MICROS_BOUNDS,
};
pub use crate::pending::PendingProposals;
pub use crate::read_barrier::{BarrierDone, ReadBarrierError};
pub use crate::storage::StoreError;

/// Identifier of a shard, i.e. of one Raft group. Shards are numbered `0..shards`.
pub type ShardId = u64;

/// Identifier of a node of the cluster (a Raft peer id; never 0).
pub type NodeId = u64;

/// Carries frames to other nodes. Called by the driver thread at the end of each loop turn,
/// at most once per destination per turn, with every shard's messages for that node in one frame.
/// Must not block (queue and return; dropping under pressure is allowed: Raft retransmits).
///
/// A frame is at most [`MAX_FRAME_BYTES`] long; frames carrying a snapshot are as large as the
/// shard's serialised state. The receiving node hands it to its [`ClusterHandle::receive`].
/// Delivery in order per destination is not required but keeps catching up cheap (a snapshot
/// that is overtaken by later appends is sent again).
pub trait Transport: Send + 'static {
    /// Queues `frame` for node `to`.
    fn send(&mut self, to: NodeId, frame: Vec<u8>);
}

/// A deterministic state machine for one shard. `apply` is called on committed entries in log
/// order, exactly once per entry per process lifetime (after a restart, entries after the last
/// snapshot are applied again to an instance restored from that snapshot).
///
/// Every replica must compute the same outputs from the same log: no clock, randomness or
/// hash-map iteration order inside (STYLE.md P2). `apply` cannot fail; a command the state
/// machine rejects is an `Output` that says so (STYLE.md §3).
pub trait StateMachine: Send + 'static {
    /// What applying one command produces; handed to the proposer's `done` callback.
    type Output: Send + 'static;
    /// Applies the committed command at log `index`.
    fn apply(&mut self, index: u64, command: &[u8]) -> Self::Output;
    /// Serialises the whole state, as of the last applied entry.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with one produced by [`StateMachine::snapshot`]. An error stops
    /// the shard (at start: [`Cluster::start`] fails).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Configuration of the local node's replication layer.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's Raft id (must not be 0). Default 1.
    pub node_id: NodeId,
    /// Data directory; sled lives in `data_dir/raft`, shard snapshots in
    /// `data_dir/raft/snapshots/<shard>-<term>-<index>.snap`.
    pub data_dir: PathBuf,
    /// Number of shard groups. Fixed for the life of the data directory (start refuses a
    /// different count, because keys would hash to other shards). Default 16.
    pub shards: u64,
    /// Raft logical clock period. Default 100 ms.
    pub tick_interval: Duration,
    /// Ticks without a heartbeat before a follower campaigns. Default 10.
    pub election_tick: usize,
    /// Ticks between leader heartbeats. Default 2.
    pub heartbeat_tick: usize,
    /// Proposals stepped per loop turn, bounding the work per `Ready` (floors pitfall 13); also
    /// the number of frames received from other nodes stepped per turn. Default 1024.
    pub max_proposals_per_turn: usize,
    /// Capacity of the driver's inbox; a full inbox answers [`ProposeError::Busy`].
    /// Default 65 536.
    pub inbox_capacity: usize,
    /// Applied entries per shard between two snapshots (each followed by log compaction).
    /// Default 10 000.
    pub snapshot_interval: u64,
    /// Longest a shard keeps applied entries not covered by a snapshot before it snapshots
    /// anyway, however few they are. State machines are rebuilt at start from the latest
    /// snapshot plus the log after it, so this bounds how old the replayed entries can be: a
    /// quiet shard would otherwise replay months of log, and replaying entries whose validity
    /// depended on the time they were first applied (MLS KeyPackage lifetimes, RFC 9420 §10)
    /// may diverge. Checked once per driver turn, so the effective bound is this plus up to one
    /// `tick_interval` (more while other shards wait their turn, see
    /// `max_snapshots_per_turn`). Default 10 minutes.
    pub snapshot_max_age: Duration,
    /// Snapshots taken per driver turn at most, by `snapshot_interval` and by age (oldest
    /// first), so one turn never stalls every shard serialising its state (shards under even
    /// load reach the interval together); likewise the snapshots received from leaders
    /// restored per turn. A membership change's snapshot is taken whatever the count.
    /// Default 2.
    pub max_snapshots_per_turn: usize,
    /// Snapshot every shard with unsnapshotted applied entries on a graceful shutdown, so a
    /// clean restart replays no log. Turn off only to exercise crash recovery. Default true.
    pub snapshot_on_shutdown: bool,
    /// Byte budget of one append message to a follower. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Bytes of proposed but uncommitted entries a leader accepts per shard before answering
    /// [`ProposeError::Busy`]; must be at least `max_size_per_msg`. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// `fdatasync` sled's files after each turn's flush (sled's own flush is only
    /// `sync_file_range`, floors pitfall 16). Turn off only to measure the cost. Default true.
    pub fsync: bool,
    /// Join an existing cluster: shards without local state start as empty, uninitialised
    /// groups that wait for a leader to add this node (`MembershipChange::AddLearner`) and send
    /// it a snapshot, instead of being bootstrapped with `voters` (which is then not used).
    /// Shards with state are unaffected. A node added to a running cluster must set this: one
    /// bootstrapped on its own would form a second, conflicting configuration. Default false.
    pub join_existing: bool,
    /// The voters every shard is bootstrapped with on a fresh data dir (all nodes of a new cluster
    /// must be given the same set). Default `vec![node_id]`.
    pub voters: Vec<NodeId>,
    /// Capacity of the inbox of frames received from other nodes; a full inbox drops the frame
    /// (counted). Default 4096.
    pub network_inbox_capacity: usize,
    /// Ticks a shard's leader must find the shard quiet (every member caught up, nothing
    /// pending) before it asks the shard to hibernate: no ticks, heartbeats or campaigns on any
    /// replica until something wakes it (crate docs, "Hibernation"). 0 disables hibernation on
    /// this node (its leaders never ask, its followers never agree). Default 30, three election
    /// timeouts at the default `election_tick`.
    pub hibernate_after_ticks: usize,
    /// Ticks a node that stopped leading a shard keeps the proposals it had not yet seen
    /// applied waiting for their entries (`pending.rs`, "orphans"): the next leader usually
    /// commits them, and this replica applies them and answers each with its real outcome.
    /// Those still unresolved then are answered [`ProposeError::Dropped`] (outcome unknown).
    /// 0 answers them `Dropped` at the step-down. Default 20, two election timeouts at the
    /// default `election_tick`.
    pub lost_leadership_wait_ticks: usize,
    /// Which shards must be caught up for this node to be ready ([`ClusterHandle::is_ready`]).
    /// `None`: every shard (every node holds every shard). `Some(shards)`: these, and every
    /// shard this node's replica has a configuration of (a member, or a former member, which
    /// counts as caught up); a shard this node was never given, whose group is uninitialised,
    /// does not count (a cluster whose shards live on some nodes only). Default `None`.
    pub required_shards: Option<Vec<ShardId>>,
}

impl ClusterConfig {
    /// The defaults documented on each field, for node `node_id` storing under `data_dir`.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            node_id,
            data_dir: data_dir.into(),
            shards: 16,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            max_proposals_per_turn: 1024,
            inbox_capacity: 65_536,
            snapshot_interval: 10_000,
            snapshot_max_age: Duration::from_secs(10 * 60),
            max_snapshots_per_turn: 2,
            snapshot_on_shutdown: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 * 1024 * 1024,
            fsync: true,
            join_existing: false,
            voters: vec![node_id],
            network_inbox_capacity: 4096,
            hibernate_after_ticks: 30,
            lost_leadership_wait_ticks: 20,
            required_shards: None,
        }
    }

    fn validate(&self) -> Result<(), ClusterError> {
        let invalid = |reason: &str| Err(ClusterError::InvalidConfig(reason.to_owned()));
        if self.node_id == 0 {
            return invalid("node_id must not be 0");
        }
        if self.shards == 0 {
            return invalid("shards must be at least 1");
        }
        if usize::try_from(self.shards).is_err() {
            return invalid("shards does not fit in memory");
        }
        if self.tick_interval.is_zero() {
            return invalid("tick_interval must be positive");
        }
        if self.max_proposals_per_turn == 0 {
            return invalid("max_proposals_per_turn must be at least 1");
        }
        if self.inbox_capacity == 0 {
            return invalid("inbox_capacity must be at least 1");
        }
        if self.snapshot_interval == 0 {
            return invalid("snapshot_interval must be at least 1");
        }
        if self.max_snapshots_per_turn == 0 {
            return invalid("max_snapshots_per_turn must be at least 1");
        }
        if self.network_inbox_capacity == 0 {
            return invalid("network_inbox_capacity must be at least 1");
        }
        if self.voters.contains(&0) {
            return invalid("voters must not contain node id 0");
        }
        if !self.join_existing && !self.voters.contains(&self.node_id) {
            return invalid("voters must contain this node's node_id");
        }
        if self.voters.iter().collect::<BTreeSet<_>>().len() != self.voters.len() {
            return invalid("voters must not list a node twice");
        }
        // Tick ratios and message/uncommitted sizes are checked by raft-rs itself.
        raft_config(self, 0)
            .validate()
            .map_err(|err| ClusterError::InvalidConfig(err.to_string()))
    }
}

/// Why a proposal was not applied. When `propose` returns one of these, `done` is never called;
/// otherwise `done` receives exactly one result.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// The inbox or the shard's uncommitted log is full; retry later (HTTP 503).
    #[error("replication is overloaded")]
    Busy,
    /// This node does not lead the shard (or leadership is being transferred).
    #[error("this node does not lead the shard")]
    NotLeader,
    /// The entry was overwritten by another leader's, or this node stopped leading before it
    /// committed and did not see it applied within
    /// [`ClusterConfig::lost_leadership_wait_ticks`]: then the entry may still commit, the
    /// outcome is unknown, so retries must be idempotent in `apply`.
    #[error("proposal dropped before it was applied")]
    Dropped,
    /// The driver stopped, or the shard group failed. A proposal already in the log may still
    /// be applied after a restart.
    #[error("the shard group is stopped")]
    Stopped,
    /// The shard id is not below the configured shard count.
    #[error("no such shard")]
    UnknownShard,
}

/// Why a frame from another node was not taken ([`ClusterHandle::receive`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReceiveError {
    /// The frame does not decode, or is not for this node, or names a shard this node does not
    /// have (the reason says which). Nothing of it was taken.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The network inbox is full; the frame was dropped (Raft retransmits).
    #[error("network inbox is full")]
    Busy,
    /// The driver stopped.
    #[error("the driver stopped")]
    Stopped,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A configuration value is out of range.
    #[error("invalid cluster configuration: {0}")]
    InvalidConfig(String),
    /// The Raft database could not be opened, read or written.
    #[error("raft storage failed")]
    Storage(#[from] StoreError),
    /// A shard group could not be recovered from its stored state.
    #[error("recover shard {shard}: {reason}")]
    Recover {
        /// The shard that failed.
        shard: ShardId,
        /// What went wrong.
        reason: String,
    },
    /// The driver thread could not be spawned.
    #[error("spawn raft driver thread")]
    Spawn(#[source] std::io::Error),
    /// [`restore_data_dir`] was given snapshots that do not fit the configuration, or a data
    /// directory that already has Raft state.
    #[error("cannot restore: {0}")]
    InvalidRestore(String),
}

/// Called exactly once with the outcome of an accepted proposal, on the driver thread: keep it
/// short and non-blocking (hand the result to a channel or an actor), since every shard waits
/// for it.
pub type Done<O> = Box<dyn FnOnce(Result<O, ProposeError>) + Send>;

/// The running replication layer of this node. Dropping it stops the driver like
/// [`Cluster::shutdown`].
pub struct Cluster<S: StateMachine> {
    handle: ClusterHandle<S>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl<S: StateMachine> Cluster<S> {
    /// Opens sled, recovers every shard (restore latest snapshot into a fresh state machine from
    /// `factory`, then raft re-applies committed entries after it), bootstraps shards that have
    /// no state as single-voter groups of `node_id`, campaigns, and starts the driver thread (a
    /// named std thread, no async runtime).
    ///
    /// A single-node cluster: `config.voters` must be `[node_id]` (the default), otherwise
    /// [`ClusterError::InvalidConfig`]; see [`Cluster::start_with_transport`] for more nodes.
    /// See the crate docs for an example.
    pub fn start(
        config: ClusterConfig,
        factory: impl FnMut(ShardId) -> S,
    ) -> Result<Self, ClusterError> {
        if config.join_existing {
            return Err(ClusterError::InvalidConfig(
                "join_existing needs other nodes; use start_with_transport".to_owned(),
            ));
        }
        if config.voters != [config.node_id] {
            return Err(ClusterError::InvalidConfig(
                "voters must be [node_id] for a single-node cluster; \
                 use start_with_transport for more nodes"
                    .to_owned(),
            ));
        }
        Self::start_with_transport(config, factory, Box::new(LocalOnly))
    }

    /// Like [`Cluster::start`], for one node of a cluster of `config.voters`: shards without
    /// state are bootstrapped with those voters (a shard with state keeps the membership in its
    /// log), and `transport` carries this node's frames to the others. Frames from them are
    /// handed in through [`ClusterHandle::receive`]. A group whose only voter is this node
    /// campaigns at once; the others elect a leader when an election timeout passes without one
    /// (`election_tick` to twice that, in ticks), so a restarting node does not disrupt a
    /// healthy leader.
    pub fn start_with_transport(
        config: ClusterConfig,
        mut factory: impl FnMut(ShardId) -> S,
        transport: Box<dyn Transport>,
    ) -> Result<Self, ClusterError> {
        config.validate()?;
        let mut db = RaftDb::open(&config.data_dir.join("raft"), config.shards, config.fsync)?;
        let mut voters = config.voters.clone();
        voters.sort_unstable();
        let mut loaded = Vec::new();
        let mut bootstrap = WriteBatch::default();
        for shard in 0..config.shards {
            let (mut storage, snapshot) = db.load_shard(shard)?;
            // A joining node's fresh groups stay empty until a leader's snapshot arrives.
            if !storage.is_initialized() && !config.join_existing {
                storage.stage_bootstrap(ConfState::from((voters.clone(), vec![])))?;
                bootstrap.take_from(&mut storage);
            }
            loaded.push((shard, storage, snapshot));
        }
        // Raft nodes read their storage on creation, so bootstrap state is written first.
        db.write(bootstrap)?;
        let mut groups = Vec::with_capacity(loaded.len());
        for (shard, storage, snapshot) in loaded {
            let recover = |err: GroupError| ClusterError::Recover {
                shard,
                reason: error_chain(&err),
            };
            let mut group =
                Group::open(shard, storage, snapshot, factory(shard), &config).map_err(recover)?;
            group
                .campaign_if_sole_voter(config.node_id)
                .map_err(recover)?;
            groups.push(group);
        }
        Self::spawn(config, db, groups, transport)
    }

    fn spawn(
        config: ClusterConfig,
        db: RaftDb,
        groups: Vec<Group<S>>,
        transport: Box<dyn Transport>,
    ) -> Result<Self, ClusterError> {
        let (inbox_tx, inbox_rx) = crossbeam_channel::bounded(config.inbox_capacity);
        let (network_tx, network_rx) = crossbeam_channel::bounded(config.network_inbox_capacity);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        // One `snapshot_all` at a time (`HandleInner::snapshot_all_busy`), so one slot suffices.
        let (control_tx, control_rx) = crossbeam_channel::bounded(1);
        let (barrier_tx, barrier_rx) = crossbeam_channel::bounded(config.inbox_capacity);
        let shared = Arc::new(Shared {
            open: RwLock::new(true),
            ready: AtomicBool::new(false),
            metrics: Metrics::default(),
            leaders: (0..config.shards).map(|_| AtomicU64::new(0)).collect(),
            unreachable: Mutex::new(BTreeSet::new()),
            hibernating: AtomicU64::new(0),
            status: (0..config.shards)
                .map(|shard| {
                    Mutex::new(ShardStatus {
                        shard,
                        ..ShardStatus::default()
                    })
                })
                .collect(),
        });
        let (admin_tx, admin_rx) = crossbeam_channel::bounded(membership::ADMIN_QUEUE);
        let settings = DriverSettings {
            node_id: config.node_id,
            tick_interval: config.tick_interval,
            max_proposals_per_turn: config.max_proposals_per_turn,
            snapshot_max_age: config.snapshot_max_age,
            max_snapshots_per_turn: config.max_snapshots_per_turn,
            snapshot_on_shutdown: config.snapshot_on_shutdown,
            required_shards: config.required_shards.clone(),
        };
        let driver = Driver::new(
            db,
            groups,
            inbox_rx,
            network_rx,
            stop_rx,
            Arc::clone(&shared),
            transport,
            settings,
        )
        .with_snapshot_requests(control_rx)
        .with_barrier_requests(barrier_rx)
        .with_admin_requests(admin_rx);
        let thread = std::thread::Builder::new()
            .name(format!("mimid-raft-{}", config.node_id))
            .spawn(move || driver.run())
            .map_err(ClusterError::Spawn)?;
        Ok(Cluster {
            handle: ClusterHandle {
                inner: Arc::new(HandleInner {
                    inbox: inbox_tx,
                    network: network_tx,
                    snapshot_requests: control_tx,
                    snapshot_all_busy: Arc::new(AtomicBool::new(false)),
                    barriers: barrier_tx,
                    admin: admin_tx,
                    shared,
                    shards: config.shards,
                    node_id: config.node_id,
                }),
            },
            stop: stop_tx,
            thread: Some(thread),
        })
    }

    /// A handle for proposing; cheap to clone and usable from any thread.
    pub fn handle(&self) -> ClusterHandle<S> {
        self.handle.clone()
    }

    /// Stops the driver: queued and pending proposals are answered `Err(Stopped)`, every shard
    /// with applied entries not covered by its latest snapshot is snapshotted (unless
    /// `snapshot_on_shutdown` is off), and sled is flushed and synced, so a clean restart
    /// replays no log. Dropping the `Cluster` does the same.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl<S: StateMachine> Drop for Cluster<S> {
    fn drop(&mut self) {
        // A full channel already holds a stop request.
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft driver thread panicked");
            }
        }
    }
}

/// A cloneable handle to the local replication layer.
pub struct ClusterHandle<S: StateMachine> {
    inner: Arc<HandleInner<S::Output>>,
}

struct HandleInner<O> {
    inbox: Sender<Proposal<O>>,
    /// Decoded frames from other nodes for the driver.
    network: Sender<Inbound>,
    /// `snapshot_all` requests for the driver (capacity one).
    snapshot_requests: Sender<SnapshotAllRequest>,
    /// True from an accepted `snapshot_all` until its answer.
    snapshot_all_busy: Arc<AtomicBool>,
    /// `read_barrier` requests for the driver (`read_barrier.rs`).
    barriers: Sender<BarrierRequest>,
    /// Membership changes and leadership transfers for the driver (`membership.rs`).
    admin: Sender<AdminRequest>,
    shared: Arc<Shared>,
    shards: u64,
    node_id: NodeId,
}

/// State shared by the driver and the handles.
pub(crate) struct Shared {
    /// False once the driver stopped taking proposals; see `Driver::close_inbox`.
    pub(crate) open: RwLock<bool>,
    pub(crate) ready: AtomicBool,
    pub(crate) metrics: Metrics,
    /// Each shard's leader as its replica here last knew it (0: unknown), published per turn.
    pub(crate) leaders: Vec<AtomicU64>,
    /// Nodes reported unreachable since the driver's last turn (a set: repeated reports of one
    /// node coalesce, so it holds at most the cluster's nodes).
    pub(crate) unreachable: Mutex<BTreeSet<NodeId>>,
    /// Local shard replicas hibernating, as of the driver's last turn.
    pub(crate) hibernating: AtomicU64,
    /// Each shard's status (`ClusterHandle::shard_status`), published by the driver.
    pub(crate) status: Vec<Mutex<ShardStatus>>,
}

impl<S: StateMachine> Clone for ClusterHandle<S> {
    fn clone(&self) -> Self {
        ClusterHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: StateMachine> ClusterHandle<S> {
    /// Queues a proposal; `done` is called exactly once, on the driver thread, with the apply
    /// output when the entry is committed (durable) and applied, or with an error. Returns
    /// `Err(Busy)` immediately (and does not call `done`) if the inbox is full; likewise
    /// `Err(UnknownShard)` for a shard out of range and `Err(Stopped)` once the driver stopped.
    pub fn propose(
        &self,
        shard: ShardId,
        command: Vec<u8>,
        done: Done<S::Output>,
    ) -> Result<(), ProposeError> {
        let inner = &self.inner;
        if shard >= inner.shards {
            return Err(ProposeError::UnknownShard);
        }
        let open = inner.shared.open.read();
        if !*open {
            return Err(ProposeError::Stopped);
        }
        let proposal = Proposal {
            shard,
            command,
            reply: Reply::new(done),
            queued: std::time::Instant::now(),
        };
        match inner.inbox.try_send(proposal) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(proposal)) => {
                proposal.reply.disarm();
                bump(&inner.shared.metrics.busy_rejections);
                Err(ProposeError::Busy)
            }
            Err(TrySendError::Disconnected(proposal)) => {
                proposal.reply.disarm();
                Err(ProposeError::Stopped)
            }
        }
    }

    /// Asks the driver to serialise every shard's state machine at its applied index, between
    /// two turns (see the `backup` module docs: each part is consistent for its shard, shards
    /// are taken at unrelated points). `done` is called exactly once, on the driver thread,
    /// with one [`ShardSnapshot`] per shard in shard order, or with the first shard that could
    /// not be serialised. Returns `Err(Busy)` at once (and never calls `done`) while another
    /// `snapshot_all` runs, and `Err(Stopped)` once the driver stopped.
    ///
    /// With [`ClusterConfig::required_shards`], a shard this node was never given (its group
    /// is uninitialised) has an empty part at index 0 instead of failing the request with
    /// `NotReady`; the caller gets that shard's part from a node that holds it.
    ///
    /// ```
    /// # use mimid_cluster::{Cluster, ClusterConfig, StateMachine};
    /// # struct Counter(u64);
    /// # impl StateMachine for Counter {
    /// #     type Output = ();
    /// #     fn apply(&mut self, _index: u64, _command: &[u8]) { self.0 += 1 }
    /// #     fn snapshot(&self) -> Vec<u8> { self.0.to_be_bytes().to_vec() }
    /// #     fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> { Ok(()) }
    /// # }
    /// let dir = tempfile::tempdir().unwrap();
    /// let cluster = Cluster::start(ClusterConfig::new(1, dir.path()), |_| Counter(0)).unwrap();
    /// let handle = cluster.handle();
    /// # while !handle.is_ready() { std::thread::sleep(std::time::Duration::from_millis(5)) }
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// handle.snapshot_all(Box::new(move |result| tx.send(result).unwrap())).unwrap();
    /// let parts = rx.recv().unwrap().unwrap();
    /// assert_eq!(parts.len() as u64, handle.shard_count());
    /// assert!(parts.iter().all(|part| part.applied_index >= 1));
    /// ```
    pub fn snapshot_all(&self, done: SnapshotsDone) -> Result<(), SnapshotAllError> {
        let inner = &self.inner;
        let busy = &inner.snapshot_all_busy;
        if busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(SnapshotAllError::Busy);
        }
        let request = SnapshotAllRequest::new(done, Arc::clone(busy));
        // The same gate as `propose`: once the driver closed it, nothing new is queued.
        let open = inner.shared.open.read();
        if !*open {
            request.disarm();
            busy.store(false, Ordering::Release);
            return Err(SnapshotAllError::Stopped);
        }
        match inner.snapshot_requests.try_send(request) {
            Ok(()) => Ok(()),
            // Full cannot happen while `busy` guards the single slot; treat it as busy anyway.
            Err(TrySendError::Full(request)) => {
                request.disarm();
                busy.store(false, Ordering::Release);
                Err(SnapshotAllError::Busy)
            }
            Err(TrySendError::Disconnected(request)) => {
                request.disarm();
                busy.store(false, Ordering::Release);
                Err(SnapshotAllError::Stopped)
            }
        }
    }

    /// A read barrier (Raft ReadIndex, see the `read_barrier` module): `done` is called with
    /// `Ok(())` once this replica of `shard` has applied everything the shard's leader had
    /// committed when the barrier reached it, so a local read after it sees every write
    /// acknowledged before this call, on a follower as on the leader. Otherwise `done` gets
    /// [`ReadBarrierError::NoLeader`] (no leader could be asked before `timeout`),
    /// [`ReadBarrierError::TimedOut`] (the leader did not confirm within `timeout`) or
    /// [`ReadBarrierError::Stopped`]. It costs the leader one heartbeat round to a quorum, so
    /// use it where a stale local read would be wrong, not on every read.
    ///
    /// Returns an error at once, and never calls `done`, for an unknown shard
    /// (`UnknownShard`), when the local replica knows no leader (`NoLeader`), when the queue is
    /// full (`Busy`) and once the driver stopped (`Stopped`).
    ///
    /// ```
    /// # use mimid_cluster::{Cluster, ClusterConfig, StateMachine};
    /// # struct Counter(u64);
    /// # impl StateMachine for Counter {
    /// #     type Output = ();
    /// #     fn apply(&mut self, _index: u64, _command: &[u8]) { self.0 += 1 }
    /// #     fn snapshot(&self) -> Vec<u8> { self.0.to_be_bytes().to_vec() }
    /// #     fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> { Ok(()) }
    /// # }
    /// # use std::time::Duration;
    /// let dir = tempfile::tempdir().unwrap();
    /// let cluster = Cluster::start(ClusterConfig::new(1, dir.path()), |_| Counter(0)).unwrap();
    /// let handle = cluster.handle();
    /// # while !handle.is_ready() { std::thread::sleep(Duration::from_millis(5)) }
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let done = Box::new(move |result| tx.send(result).unwrap());
    /// handle.read_barrier(0, Duration::from_secs(5), done).unwrap();
    /// assert_eq!(rx.recv().unwrap(), Ok(()));
    /// ```
    pub fn read_barrier(
        &self,
        shard: ShardId,
        timeout: Duration,
        done: BarrierDone,
    ) -> Result<(), ReadBarrierError> {
        let inner = &self.inner;
        if shard >= inner.shards {
            return Err(ReadBarrierError::UnknownShard);
        }
        let open = inner.shared.open.read();
        if !*open {
            return Err(ReadBarrierError::Stopped);
        }
        if self.leader(shard).is_none() {
            return Err(ReadBarrierError::NoLeader);
        }
        let request = BarrierRequest {
            shard,
            deadline: std::time::Instant::now() + timeout,
            reply: BarrierReply::new(done),
        };
        match inner.barriers.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(request)) => {
                request.reply.disarm();
                Err(ReadBarrierError::Busy)
            }
            Err(TrySendError::Disconnected(request)) => {
                request.reply.disarm();
                Err(ReadBarrierError::Stopped)
            }
        }
    }

    /// Number of shards (fixed for the data directory).
    pub fn shard_count(&self) -> u64 {
        self.inner.shards
    }

    /// True once every local shard knows a leader and has applied everything committed at start
    /// (for `/readyz`); false again if a shard fails, the driver stops, or a shard loses its
    /// leader (a node cut off from a quorum: its leaders step down by check-quorum, its
    /// followers forget the leader when their election timeout passes; a hibernating shard's
    /// replicas do neither until the transport reports the leader, or on the leader a member,
    /// unreachable and wakes them).
    pub fn is_ready(&self) -> bool {
        self.inner.shared.ready.load(Ordering::Relaxed)
    }

    /// Hands a frame received from another node to the driver. Decodes on the caller's thread.
    ///
    /// The frame must be addressed to this node and name only shards it has, or it is refused
    /// whole as [`ReceiveError::Malformed`] (see the `frame` module for every rule). A full
    /// network inbox drops it ([`ReceiveError::Busy`]); Raft retransmits what matters.
    pub fn receive(&self, frame: &[u8]) -> Result<(), ReceiveError> {
        let inner = &self.inner;
        let metrics = &inner.shared.metrics;
        let malformed = |reason: String| {
            bump(&metrics.frames_malformed);
            tracing::debug!(%reason, "refused a frame from another node");
            ReceiveError::Malformed(reason)
        };
        let decoded = frame::decode(frame).map_err(|err| malformed(err.to_string()))?;
        if decoded.to != inner.node_id {
            return Err(malformed(format!(
                "frame for node {} received by node {}",
                decoded.to, inner.node_id
            )));
        }
        if let Some((shard, _)) = decoded
            .messages
            .iter()
            .find(|(shard, _)| *shard >= inner.shards)
        {
            return Err(malformed(format!(
                "unknown shard {shard} (this node has {} shards)",
                inner.shards
            )));
        }
        if !*inner.shared.open.read() {
            return Err(ReceiveError::Stopped);
        }
        let inbound = Inbound {
            from: decoded.from,
            messages: decoded.messages,
        };
        match inner.network.try_send(inbound) {
            Ok(()) => {
                bump(&metrics.frames_received);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                bump(&metrics.frames_dropped_inbox_full);
                Err(ReceiveError::Busy)
            }
            Err(TrySendError::Disconnected(_)) => Err(ReceiveError::Stopped),
        }
    }

    /// The node this shard's replica believes leads it (None while unknown / during an election).
    /// As of the driver's last turn; `None` for a shard out of range, a stopped shard group, or
    /// once the driver stopped.
    pub fn leader(&self, shard: ShardId) -> Option<NodeId> {
        let leaders = &self.inner.shared.leaders;
        let id = leaders
            .get(usize::try_from(shard).ok()?)?
            .load(Ordering::Relaxed);
        (id != 0).then_some(id)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Tells every group that `node` could not be reached (raft `report_unreachable`), e.g. when
    /// the transport's connection failed; the driver applies it on its next turn. A leader then
    /// stops pipelining appends to that node and probes it instead. Hibernating shards that
    /// `node` leads wake up (and elect another leader if it stays silent), as do those this node
    /// leads with `node` as a member (crate docs, "Hibernation"): the transport must report a
    /// peer it lost, since nothing else tells a hibernating shard. Reports of this node itself
    /// or of node 0 are ignored.
    pub fn report_unreachable(&self, node: NodeId) {
        if node == 0 || node == self.inner.node_id {
            return;
        }
        self.inner.shared.unreachable.lock().insert(node);
    }

    /// How many of this node's shard replicas hibernate (do not tick, see the crate docs), as
    /// of the driver's last turn; [`ShardStatus::hibernating`] says which.
    ///
    /// ```
    /// # use mimid_cluster::{Cluster, ClusterConfig, StateMachine};
    /// # struct Nothing;
    /// # impl StateMachine for Nothing {
    /// #     type Output = ();
    /// #     fn apply(&mut self, _index: u64, _command: &[u8]) {}
    /// #     fn snapshot(&self) -> Vec<u8> { Vec::new() }
    /// #     fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> { Ok(()) }
    /// # }
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut config = ClusterConfig::new(1, dir.path());
    /// config.tick_interval = std::time::Duration::from_millis(1);
    /// config.hibernate_after_ticks = 5;
    /// let cluster = Cluster::start(config, |_| Nothing).unwrap();
    /// let handle = cluster.handle();
    /// // A single node's quiet shards fall asleep after five ticks.
    /// while handle.hibernating_groups() < handle.shard_count() {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));
    /// }
    /// assert!(handle.status().iter().all(|shard| shard.hibernating));
    /// ```
    pub fn hibernating_groups(&self) -> u64 {
        self.inner.shared.hibernating.load(Ordering::Relaxed)
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> ClusterMetrics {
        self.inner.shared.metrics.snapshot()
    }
}

/// Maps a key (room id, user id) to its shard: 64-bit FNV-1a of the key, modulo `shards`.
///
/// The function is part of the storage format: changing it would move keys to other shards, so
/// it is fixed here and covered by known-answer tests. `shards == 0` maps everything to shard 0.
///
/// ```
/// let shard = mimid_cluster::shard_for(b"room@a.example", 16);
/// assert!(shard < 16);
/// assert_eq!(shard, mimid_cluster::shard_for(b"room@a.example", 16));
/// ```
pub fn shard_for(key: &[u8], shards: u64) -> ShardId {
    fnv1a_64(key).checked_rem(shards).unwrap_or(0)
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// FNV-1a 64-bit parameters (draft-eastlake-fnv).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use raft::eraftpb::{Message, MessageType};

    use super::*;

    /// Counts applied commands; `BLOCK` holds the driver thread inside `apply` until released.
    struct Gated {
        entered: mpsc::Sender<()>,
        release: crossbeam_channel::Receiver<()>,
    }

    const BLOCK: &[u8] = b"block";

    impl StateMachine for Gated {
        type Output = ();
        fn apply(&mut self, _index: u64, command: &[u8]) {
            if command == BLOCK {
                self.entered.send(()).expect("test waits");
                self.release
                    .recv_timeout(Duration::from_secs(30))
                    .expect("test releases");
            }
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A frame from node 2 to node `to` with one heartbeat response per shard in `shards`.
    fn frame_to(to: NodeId, shards: &[ShardId]) -> Vec<u8> {
        let messages: Vec<(ShardId, Message)> = shards
            .iter()
            .map(|&shard| {
                let mut message = Message {
                    from: 2,
                    to,
                    term: 1,
                    ..Message::default()
                };
                message.set_msg_type(MessageType::MsgHeartbeatResponse);
                (shard, message)
            })
            .collect();
        frame::encode(2, to, &messages).bytes.expect("a frame")
    }

    #[test]
    fn start_is_single_node_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ClusterConfig::new(1, dir.path());
        config.voters = vec![1, 2, 3];
        match Cluster::start(config, |_| Gated {
            entered: mpsc::channel().0,
            release: crossbeam_channel::never(),
        }) {
            Err(ClusterError::InvalidConfig(reason)) => {
                assert!(reason.contains("start_with_transport"), "{reason}")
            }
            Err(other) => panic!("expected InvalidConfig, got {other}"),
            Ok(_) => panic!("a multi-voter config started as a single node"),
        }
    }

    #[test]
    fn a_joining_node_needs_no_voters_but_other_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ClusterConfig::new(4, dir.path());
        config.voters = vec![1, 2, 3];
        assert!(
            config.validate().is_err(),
            "a new cluster's node must be a voter"
        );
        config.join_existing = true;
        assert!(config.validate().is_ok());
        match Cluster::start(config, |_| Gated {
            entered: mpsc::channel().0,
            release: crossbeam_channel::never(),
        }) {
            Err(ClusterError::InvalidConfig(reason)) => {
                assert!(reason.contains("join_existing"), "{reason}")
            }
            Err(other) => panic!("expected InvalidConfig, got {other}"),
            Ok(_) => panic!("a joining node started without a transport"),
        }
    }

    #[test]
    fn receive_refuses_misaddressed_frames_and_drops_when_the_inbox_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ClusterConfig::new(1, dir.path());
        config.shards = 2;
        config.network_inbox_capacity = 1;
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = crossbeam_channel::bounded(1);
        let cluster = Cluster::start(config, move |_| Gated {
            entered: entered_tx.clone(),
            release: release_rx.clone(),
        })
        .expect("starts");
        let handle = cluster.handle();
        assert_eq!(handle.node_id(), 1);
        wait_until("ready", || handle.is_ready());
        assert_eq!(handle.leader(0), Some(1));
        assert_eq!(handle.leader(1), Some(1));
        assert_eq!(handle.leader(2), None);

        // Not for this node, or for a shard it does not have: refused whole.
        match handle.receive(&frame_to(3, &[0])) {
            Err(ReceiveError::Malformed(reason)) => {
                assert!(reason.contains("for node 3"), "{reason}")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        match handle.receive(&frame_to(1, &[0, 2])) {
            Err(ReceiveError::Malformed(reason)) => {
                assert!(reason.contains("unknown shard 2"), "{reason}")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(handle.metrics().frames_malformed, 2);

        // With the driver held inside `apply`, the one-frame inbox fills up.
        let (done_tx, done) = mpsc::channel();
        handle
            .propose(
                0,
                BLOCK.to_vec(),
                Box::new(move |result| done_tx.send(result).expect("test waits")),
            )
            .expect("proposed");
        entered
            .recv_timeout(Duration::from_secs(30))
            .expect("driver in apply");
        assert_eq!(handle.receive(&frame_to(1, &[0, 1])), Ok(()));
        assert_eq!(handle.receive(&frame_to(1, &[1])), Err(ReceiveError::Busy));
        let metrics = handle.metrics();
        assert_eq!(
            (metrics.frames_received, metrics.frames_dropped_inbox_full),
            (1, 1)
        );
        release.send(()).expect("driver waits");
        assert_eq!(
            done.recv_timeout(Duration::from_secs(30))
                .expect("answered"),
            Ok(())
        );
        // Node 2 is no member: raft-rs refuses its responses, and the groups carry on.
        wait_until("both messages refused", || {
            handle.metrics().messages_refused == 2
        });
        handle.report_unreachable(2);
        handle.report_unreachable(1);
        let (done_tx, done) = mpsc::channel();
        handle
            .propose(
                1,
                b"after".to_vec(),
                Box::new(move |result| done_tx.send(result).expect("test waits")),
            )
            .expect("proposed");
        assert_eq!(
            done.recv_timeout(Duration::from_secs(30))
                .expect("answered"),
            Ok(())
        );
        assert_eq!(handle.metrics().failed_shards, 0);
        assert!(handle.is_ready());

        cluster.shutdown();
        assert_eq!(
            handle.receive(&frame_to(1, &[0])),
            Err(ReceiveError::Stopped)
        );
        assert_eq!(handle.leader(0), None);
    }

    #[test]
    fn shard_for_is_fnv1a_64_with_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(shard_for(b"foobar", 16), 0x8594_4171_f739_67e8 % 16);
        assert_eq!(shard_for(b"foobar", 7), 0x8594_4171_f739_67e8 % 7);
    }

    #[test]
    fn shard_for_zero_shards_is_shard_zero() {
        assert_eq!(shard_for(b"anything", 0), 0);
    }

    #[test]
    fn config_validation_rejects_zero_limits() {
        let base = ClusterConfig::new(1, "/unused");
        type Mutation = fn(&mut ClusterConfig);
        let cases: Vec<(&str, Mutation)> = vec![
            ("node_id", |c| c.node_id = 0),
            ("shards", |c| c.shards = 0),
            ("tick_interval", |c| c.tick_interval = Duration::ZERO),
            ("max_proposals_per_turn", |c| c.max_proposals_per_turn = 0),
            ("inbox_capacity", |c| c.inbox_capacity = 0),
            ("snapshot_interval", |c| c.snapshot_interval = 0),
            ("max_snapshots_per_turn", |c| c.max_snapshots_per_turn = 0),
            // raft-rs: "election tick must be greater than heartbeat tick".
            ("election tick", |c| c.election_tick = c.heartbeat_tick),
            ("max uncommitted size", |c| {
                c.max_uncommitted_bytes = c.max_size_per_msg - 1
            }),
            ("network_inbox_capacity", |c| c.network_inbox_capacity = 0),
            ("voters must contain", |c| c.voters = vec![2, 3]),
            ("voters must not contain node id 0", |c| {
                c.voters = vec![1, 0]
            }),
            ("voters must not list a node twice", |c| {
                c.voters = vec![1, 2, 2]
            }),
            ("voters must contain", |c| c.voters = Vec::new()),
        ];
        assert!(base.validate().is_ok());
        for (field, mutate) in cases {
            let mut config = base.clone();
            mutate(&mut config);
            match config.validate() {
                Err(ClusterError::InvalidConfig(reason)) => {
                    assert!(reason.contains(field), "{field}: {reason}")
                }
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
