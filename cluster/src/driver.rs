//! The node's Raft driver: one thread runs every local shard group (TiKV-style multi-raft,
//! STYLE.md P6), so one loop turn can persist all groups' writes with one durable flush.
//!
//! # One turn
//!
//! 1. Wait for a proposal, a frame from another node, the stop signal, or the next tick. Then
//!    take at most `max_proposals_per_turn` proposals from the bounded inbox and step them into
//!    their groups, and likewise at most `max_proposals_per_turn` received frames from the
//!    bounded network inbox, stepping each of their messages into its group. Bounding the work
//!    per turn keeps ticks and `Ready` handling flowing under load; stepping 100 000 proposals
//!    at once stalled a leader past its election timeout (floors pitfall 13). At most
//!    `max_snapshots_per_turn` received `MsgSnapshot`s are stepped per turn (restoring one
//!    means deserialising a whole state machine and writing its file); the rest of their frame
//!    waits for the next turn, which then starts at once, so a large snapshot holds the other
//!    groups up for no more than one turn. Then unreachable reports from the transport
//!    ([`crate::ClusterHandle::report_unreachable`]) are applied to every group, and queued
//!    membership changes and leadership transfers are handed to their groups
//!    (`membership.rs`).
//! 2. Tick every awake group if the tick is due; hibernating groups are skipped (see
//!    `group/hibernate.rs`: what wakes them happens in step 1, each proposal, read barrier,
//!    membership request, received message or unreachable report waking its group first).
//! 3. Phase one, every group with a `Ready` ([`Group::handle_ready`]): queue `messages` in the
//!    turn's outbox, apply a received snapshot, apply `committed_entries`, stage `entries` and
//!    the hard state.
//! 4. One atomic sled batch with every group's staged writes, one `flush`, one `fdatasync`
//!    ([`RaftDb::write`]).
//! 5. Phase two, the same groups ([`Group::handle_persisted`]): queue `persisted_messages`,
//!    `advance`, the `LightReady`, `advance_apply`, and the snapshot a membership change made
//!    due (written here; it compacts at once). A shard that reached `snapshot_interval` is
//!    queued for step 7.
//! 6. Apply phase two's writes (commit index, conf states, compactions). They need no flush of
//!    their own: the commit index is recoverable, and a compaction is atomic with its snapshot
//!    record, whose data file was synced before it was staged. Only a compaction that replaces
//!    an older snapshot is flushed, because the older file may be deleted only once the new
//!    record is durable (`snapshot_file.rs`).
//! 7. Snapshots, at most `max_snapshots_per_turn`: first the queued shards that reached
//!    `snapshot_interval`, then those whose oldest unsnapshotted applied entry is older than
//!    `snapshot_max_age`, oldest first. Each serialises here and hands its file to the writer
//!    thread (`snapshot_file::SnapshotWriter`). The compactions of the files the writer
//!    finished are staged, and those writes are applied like step 6's.
//! 8. Send the outbox: one frame per destination node with every group's messages for it, in
//!    the order the groups produced them (`frame.rs`), one [`Transport::send`] each. Every
//!    message goes after the turn's durable write, which is always safe for Raft (a message may
//!    be sent later than allowed, never earlier; a leader's `messages` could have gone before
//!    its own write, Raft thesis §10.2.1, at the price of a second send per turn). Each
//!    `MsgSnapshot` handed over is reported to its group as sent ([`Group::report_snapshot_sent`]).
//! 9. A running `snapshot_all` (online backup, `backup.rs`) serialises its next shards, at most
//!    `max_snapshots_per_turn`: every group is between turns here, so each part is its shard's
//!    state at its applied index. Nothing is written. While one runs, the loop does not wait
//!    for the next tick between turns.
//! 10. Publish readiness, each shard's leader and the number of hibernating shards to the
//!     handles, and the status ([`crate::ClusterHandle::shard_status`]) of the shards that took
//!     a `Ready` (on a tick also of every awake shard and of those that fell asleep).
//!
//! # Bounding replay
//!
//! State machines live in memory and are rebuilt at start from the latest snapshot plus the log
//! after it. `snapshot_interval` alone bounds the replay by entry count, which a quiet shard may
//! take months to reach; replaying old entries is slow and, because openmls checks KeyPackage
//! and leaf lifetimes (RFC 9420 §7.2) against the wall clock during apply, may even diverge
//! (ARCHITECTURE.md "Durability"). Step 7 bounds the age of what a crash restart replays to
//! about `snapshot_max_age` plus one tick, since the loop wakes at least every `tick_interval`.
//! Ages are read from the driver's monotonic clock, which only this shell reads; groups get
//! `now` as an input. A graceful shutdown snapshots every shard with unsnapshotted entries
//! before the final flush and sync, so a clean restart replays nothing.
//!
//! # Durability and ordering
//!
//! A proposal's `done` runs only when its entry is applied, and an entry is applied only once it
//! is committed, which raft-rs reports only for entries this node persisted (`committed_entries`
//! are bounded by the persisted index) and, with peers, a quorum persisted. Persisted here means
//! step 4 completed, so an answered proposal survives a crash or power loss (with `fsync` on).
//! Messages that promise persistence (votes, append responses) are only queued in step 5, and
//! nothing is sent before step 8.
//!
//! # Failures
//!
//! A group whose storage, state machine or Raft node fails (or panics) is stopped alone: its
//! pending proposals are answered `Stopped` and it receives no more work (STYLE.md P3). A failed
//! turn write means the database itself is failing; the driver then stops everything rather than
//! retry (STYLE.md P4).
//!
//! A message from another node that raft-rs refuses (a response from a node outside the group,
//! say) is dropped and counted (`messages_refused`); it never stops the group. Two exceptions
//! stop it: raft-rs reporting a storage error, and raft-rs panicking, which it does on a
//! message that contradicts what this replica holds committed, after which its state cannot be
//! trusted.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use raft::eraftpb::{Message, MessageType};

use crate::backup::{ShardSnapshot, SnapshotAllError, SnapshotAllRequest};
use crate::group::{catch, error_chain, Group, GroupError, Outbox, Proposed, Wait, Write};
use crate::membership::AdminRequest;
use crate::metrics::{add, bump, micros};
use crate::read_barrier::{BarrierRequest, Barriers};
use crate::reply::Reply;
use crate::storage::{RaftDb, StoreError, WriteBatch};
use crate::{frame, NodeId, ProposeError, ShardId, ShardStatus, Shared, StateMachine, Transport};

/// A proposal on its way from a handle to the driver.
pub(crate) struct Proposal<O> {
    pub(crate) shard: ShardId,
    pub(crate) command: Vec<u8>,
    pub(crate) reply: Reply<O>,
    /// When the handle queued it (the start of its measured latency, `metrics.rs`).
    pub(crate) queued: Instant,
}

/// A frame received from another node, decoded and checked by `ClusterHandle::receive`.
pub(crate) struct Inbound {
    pub(crate) from: NodeId,
    pub(crate) messages: Vec<(ShardId, Message)>,
}

/// Limits of the loop, from `ClusterConfig`.
pub(crate) struct DriverSettings {
    pub(crate) node_id: NodeId,
    pub(crate) tick_interval: Duration,
    pub(crate) max_proposals_per_turn: usize,
    pub(crate) snapshot_max_age: Duration,
    pub(crate) max_snapshots_per_turn: usize,
    pub(crate) snapshot_on_shutdown: bool,
    /// `ClusterConfig::required_shards`.
    pub(crate) required_shards: Option<Vec<ShardId>>,
}

pub(crate) struct Driver<S: StateMachine> {
    db: RaftDb,
    groups: Vec<Slot<S>>,
    inbox: Receiver<Proposal<S::Output>>,
    /// Frames from other nodes (`ClusterHandle::receive`).
    network: Receiver<Inbound>,
    stop: Receiver<()>,
    shared: Arc<Shared>,
    transport: Box<dyn Transport>,
    /// The turn's messages by destination, sent at the end of the turn (step 8).
    outbox: Outbox,
    /// Messages of received frames not yet stepped because the turn's snapshot budget ran out;
    /// they go before any newer frame, so each peer's messages are stepped in order.
    backlog: VecDeque<(ShardId, Message)>,
    settings: DriverSettings,
    /// `ClusterHandle::snapshot_all` requests; `None` until `with_snapshot_requests`.
    snapshot_requests: Option<Receiver<SnapshotAllRequest>>,
    /// The `snapshot_all` being served, one shard part after another.
    snapshot_all: Option<SnapshotAllRequest>,
    /// `ClusterHandle::read_barrier` requests; `None` until `with_barrier_requests`.
    barrier_requests: Option<Receiver<BarrierRequest>>,
    /// Read barriers in progress (`read_barrier.rs`).
    barriers: Barriers,
    /// Membership changes and leadership transfers (`membership.rs`); `None` until
    /// `with_admin_requests`.
    admin_requests: Option<Receiver<AdminRequest>>,
    /// Whether each shard's published status says it hibernates: a hibernating shard's status
    /// does not change, so ticks republish it only when that changed.
    published_hibernating: Vec<bool>,
    /// Shards that reached `snapshot_interval` and wait for a turn's snapshot budget.
    interval_due: BTreeSet<ShardId>,
}

enum Slot<S: StateMachine> {
    Running(Box<Group<S>>),
    Failed,
}

/// What woke the loop up.
enum Wake<O> {
    Proposal(Proposal<O>),
    Frame(Inbound),
    SnapshotAll(SnapshotAllRequest),
    Barrier(BarrierRequest),
    Admin(AdminRequest),
    TickDue,
    Stop,
}

impl<S: StateMachine> Driver<S> {
    /// `groups[i]` must be the group of shard `i`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: RaftDb,
        groups: Vec<Group<S>>,
        inbox: Receiver<Proposal<S::Output>>,
        network: Receiver<Inbound>,
        stop: Receiver<()>,
        shared: Arc<Shared>,
        transport: Box<dyn Transport>,
        settings: DriverSettings,
    ) -> Self {
        let published_hibernating = vec![false; groups.len()];
        Driver {
            db,
            groups: groups
                .into_iter()
                .map(|group| Slot::Running(Box::new(group)))
                .collect(),
            inbox,
            network,
            stop,
            shared,
            transport,
            outbox: Outbox::new(),
            backlog: VecDeque::new(),
            barriers: Barriers::new(settings.node_id),
            settings,
            snapshot_requests: None,
            snapshot_all: None,
            barrier_requests: None,
            admin_requests: None,
            published_hibernating,
            interval_due: BTreeSet::new(),
        }
    }

    /// Serves `ClusterHandle::change_members` and `transfer_leader` requests from `requests`.
    pub(crate) fn with_admin_requests(mut self, requests: Receiver<AdminRequest>) -> Self {
        self.admin_requests = Some(requests);
        self
    }

    /// Serves `ClusterHandle::snapshot_all` requests arriving on `requests`.
    pub(crate) fn with_snapshot_requests(mut self, requests: Receiver<SnapshotAllRequest>) -> Self {
        self.snapshot_requests = Some(requests);
        self
    }

    /// Serves `ClusterHandle::read_barrier` requests arriving on `requests`.
    pub(crate) fn with_barrier_requests(mut self, requests: Receiver<BarrierRequest>) -> Self {
        self.barrier_requests = Some(requests);
        self
    }

    /// Runs turns until told to stop (or until the database fails), then shuts down.
    pub(crate) fn run(mut self) {
        // The first turn runs at once, so the elections started by `Cluster::start` are handled
        // (and readiness published) without waiting a tick.
        let mut next_tick = Instant::now();
        loop {
            let (proposal, frame) = match self.wait(next_tick) {
                Wake::Stop => break,
                Wake::Proposal(proposal) => (Some(proposal), None),
                Wake::Frame(frame) => (None, Some(frame)),
                Wake::SnapshotAll(request) => {
                    self.begin_snapshot_all(request);
                    (None, None)
                }
                Wake::Barrier(request) => {
                    self.barriers.add(request);
                    (None, None)
                }
                Wake::Admin(request) => {
                    self.step_admin(request);
                    (None, None)
                }
                Wake::TickDue => (None, None),
            };
            if let Err(err) = self.turn(proposal, frame, &mut next_tick) {
                tracing::error!(
                    error = %error_chain(&err),
                    "raft database write failed; stopping all shard groups"
                );
                break;
            }
        }
        self.shut_down();
    }

    fn wait(&self, next_tick: Instant) -> Wake<S::Output> {
        // `select!` picks randomly among ready channels; a requested stop goes first so that
        // shutdown does not wait for a busy inbox to drain.
        if !matches!(self.stop.try_recv(), Err(TryRecvError::Empty)) {
            return Wake::Stop;
        }
        // A running `snapshot_all`, and received messages held back by the snapshot budget,
        // continue in the next turn without waiting for a tick.
        let timeout = if self.snapshot_all.is_some() || !self.backlog.is_empty() {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        // Without a request channel, `never` keeps the select's shape.
        let never = crossbeam_channel::never();
        let requests = self.snapshot_requests.as_ref().unwrap_or(&never);
        let never_barrier = crossbeam_channel::never();
        let barrier_requests = self.barrier_requests.as_ref().unwrap_or(&never_barrier);
        let never_admin = crossbeam_channel::never();
        let admin_requests = self.admin_requests.as_ref().unwrap_or(&never_admin);
        crossbeam_channel::select! {
            // A message or a disconnect (the `Cluster` was dropped) both mean stop.
            recv(self.stop) -> _ => Wake::Stop,
            recv(self.inbox) -> proposal => match proposal {
                Ok(proposal) => Wake::Proposal(proposal),
                Err(_) => Wake::Stop,
            },
            recv(self.network) -> frame => match frame {
                Ok(frame) => Wake::Frame(frame),
                Err(_) => Wake::Stop,
            },
            recv(requests) -> request => match request {
                Ok(request) => Wake::SnapshotAll(request),
                Err(_) => Wake::Stop,
            },
            recv(barrier_requests) -> request => match request {
                Ok(request) => Wake::Barrier(request),
                Err(_) => Wake::Stop,
            },
            recv(admin_requests) -> request => match request {
                Ok(request) => Wake::Admin(request),
                Err(_) => Wake::Stop,
            },
            default(timeout) => Wake::TickDue,
        }
    }

    /// One loop turn; the order of the steps is the durability argument in the module docs.
    fn turn(
        &mut self,
        proposal: Option<Proposal<S::Output>>,
        frame: Option<Inbound>,
        next_tick: &mut Instant,
    ) -> Result<(), StoreError> {
        self.step_proposals(proposal);
        self.step_network(frame);
        self.apply_unreachable_reports();
        self.send_barriers();
        self.step_admin_queue();
        let now = Instant::now();
        let ticked = now >= *next_tick;
        if ticked {
            self.tick_all();
            *next_tick = now + self.settings.tick_interval;
        }
        let readied = self.handle_readies();
        if !readied.is_empty() {
            bump(&self.shared.metrics.ready_turns);
        }
        self.observe_answered(&readied);
        self.write_staged()?;
        self.handle_persisted(&readied, now);
        self.observe_answered(&readied);
        self.settle_barriers(now);
        self.write_staged()?;
        let snapshots = self.snapshot_by_interval();
        self.snapshot_aged(now, snapshots);
        if self.finish_compactions(now) {
            self.write_staged()?;
        }
        self.send_outbox();
        self.continue_snapshot_all();
        self.publish_readiness();
        self.publish_status(&readied, ticked);
        Ok(())
    }

    /// Steps every queued membership change and leadership transfer (few: operator actions).
    fn step_admin_queue(&mut self) {
        let Some(requests) = &self.admin_requests else {
            return;
        };
        let queued: Vec<AdminRequest> = requests.try_iter().collect();
        for request in queued {
            self.step_admin(request);
        }
    }

    /// Hands one membership change or leadership transfer to its group (`membership.rs`).
    fn step_admin(&mut self, request: AdminRequest) {
        let shard = request.shard();
        let Some(Slot::Running(group)) = self.groups.get_mut(shard_slot(shard)) else {
            request.stopped();
            return;
        };
        group.wake_for_request();
        let metrics = &self.shared.metrics;
        let outcome = match request {
            AdminRequest::Change { change, reply, .. } => {
                catch(|| group.change_members(change, reply, metrics)).and_then(|result| result)
            }
            AdminRequest::Transfer { to, reply, .. } => catch(|| group.transfer_leader(to, reply)),
        };
        if let Err(err) = outcome {
            self.fail_group(shard, &err);
        }
    }

    /// Publishes the status of the shards that took a `Ready` this turn, and on a tick of
    /// every shard but those whose published status already says they hibernate (terms and
    /// matched indexes can move without a local `Ready`; a hibernating shard's cannot).
    fn publish_status(&mut self, readied: &[ShardId], ticked: bool) {
        if ticked {
            for shard in 0..self.groups.len() {
                let asleep =
                    matches!(&self.groups[shard], Slot::Running(group) if group.is_hibernating());
                if !(asleep && self.published_hibernating[shard]) {
                    self.publish_shard_status(shard);
                }
            }
        } else {
            for &shard in readied {
                self.publish_shard_status(shard_slot(shard));
            }
        }
    }

    fn publish_shard_status(&mut self, shard: usize) {
        let Some(status) = self.shared.status.get(shard) else {
            return;
        };
        let fresh = match &self.groups[shard] {
            Slot::Running(group) => group.status(),
            Slot::Failed => ShardStatus {
                shard: shard as ShardId,
                failed: true,
                ..ShardStatus::default()
            },
        };
        self.published_hibernating[shard] = fresh.hibernating;
        *status.lock() = fresh;
    }

    fn begin_snapshot_all(&mut self, request: SnapshotAllRequest) {
        if self.snapshot_all.is_some() {
            // Handles admit one request at a time; answer a second anyway rather than lose it.
            request.fail(SnapshotAllError::Busy);
            return;
        }
        self.snapshot_all = Some(request);
    }

    /// Serialises the next shards of the running `snapshot_all` (step 8), at most
    /// `max_snapshots_per_turn`, and answers it once every shard has its part or one cannot
    /// have one. Runs after the turn's writes, when no group is inside a `Ready`.
    fn continue_snapshot_all(&mut self) {
        for _ in 0..self.settings.max_snapshots_per_turn {
            let Some(request) = &mut self.snapshot_all else {
                return;
            };
            let shard = request.parts.len();
            let outcome = match self.groups.get(shard) {
                None => {
                    self.finish_snapshot_all(Ok(()));
                    return;
                }
                Some(Slot::Failed) => Err(SnapshotAllError::ShardFailed {
                    shard: shard as ShardId,
                }),
                Some(Slot::Running(group)) => match catch(|| group.serialize_applied()) {
                    Ok(Some((applied_index, applied_term, data))) => {
                        request.parts.push(ShardSnapshot {
                            shard: shard as ShardId,
                            applied_index,
                            applied_term,
                            data,
                        });
                        Ok(())
                    }
                    // A shard this node was never given (`required_shards`): an empty part
                    // at index 0, which the caller fills from a node that holds the shard.
                    Ok(None) if !requires(&self.settings, shard) && !group.is_initialized() => {
                        request.parts.push(ShardSnapshot {
                            shard: shard as ShardId,
                            applied_index: 0,
                            applied_term: 0,
                            data: Vec::new(),
                        });
                        Ok(())
                    }
                    Ok(None) => Err(SnapshotAllError::NotReady {
                        shard: shard as ShardId,
                    }),
                    Err(err) => {
                        // Like a failed snapshot: the state machine cannot be trusted.
                        self.fail_group(shard as ShardId, &err);
                        Err(SnapshotAllError::ShardFailed {
                            shard: shard as ShardId,
                        })
                    }
                },
            };
            if outcome.is_err() {
                self.finish_snapshot_all(outcome);
                return;
            }
        }
        if self
            .snapshot_all
            .as_ref()
            .is_some_and(|request| request.parts.len() == self.groups.len())
        {
            self.finish_snapshot_all(Ok(()));
        }
    }

    fn finish_snapshot_all(&mut self, outcome: Result<(), SnapshotAllError>) {
        let Some(request) = self.snapshot_all.take() else {
            return;
        };
        match outcome {
            Ok(()) => request.complete(),
            Err(error) => request.fail(error),
        }
    }

    /// Answers the running and any queued `snapshot_all` with `Stopped`.
    fn abort_snapshot_all(&mut self) {
        if let Some(request) = self.snapshot_all.take() {
            request.fail(SnapshotAllError::Stopped);
        }
        if let Some(requests) = &self.snapshot_requests {
            while let Ok(request) = requests.try_recv() {
                request.fail(SnapshotAllError::Stopped);
            }
        }
    }

    /// Takes queued read barriers (at most `max_proposals_per_turn`) and hands every shard's
    /// unsent ones to its group if it can take them (`read_barrier.rs`).
    fn send_barriers(&mut self) {
        if let Some(requests) = &self.barrier_requests {
            for _ in 0..self.settings.max_proposals_per_turn {
                let Ok(request) = requests.try_recv() else {
                    break;
                };
                self.barriers.add(request);
            }
        }
        if self.barriers.is_empty() {
            return;
        }
        for (shard, slot) in self.groups.iter_mut().enumerate() {
            let group = match slot {
                Slot::Running(group) => {
                    // A barrier keeps its shard's leader awake until it is answered.
                    if self.barriers.waits_on(shard as ShardId) {
                        group.wake_for_request();
                    }
                    Some(&mut **group)
                }
                Slot::Failed => None,
            };
            self.barriers.send(shard as ShardId, group);
        }
    }

    /// Answers the read barriers whose read index is applied, or whose deadline passed, and
    /// drops read indexes nobody waits for any more.
    fn settle_barriers(&mut self, now: Instant) {
        for (shard, slot) in self.groups.iter_mut().enumerate() {
            let group = match slot {
                Slot::Running(group) => Some(&mut **group),
                Slot::Failed => None,
            };
            self.barriers.settle(shard as ShardId, group, now);
        }
    }

    fn step_proposals(&mut self, first: Option<Proposal<S::Output>>) {
        let waiting = self.inbox.len() + usize::from(first.is_some());
        if waiting > 0 {
            self.shared
                .metrics
                .histograms
                .inbox_depth
                .observe(waiting as u64);
        }
        let mut first = first;
        for _ in 0..self.settings.max_proposals_per_turn {
            let Some(proposal) = first.take().or_else(|| self.inbox.try_recv().ok()) else {
                break;
            };
            self.step_proposal(proposal);
        }
    }

    /// Steps the backlog, then up to `max_proposals_per_turn` received frames, stopping early
    /// at a `MsgSnapshot` beyond the turn's budget (module docs, step 1).
    fn step_network(&mut self, first: Option<Inbound>) {
        let mut first = first;
        let mut frames = 0;
        let mut snapshots_left = self.settings.max_snapshots_per_turn;
        loop {
            let Some((_, front)) = self.backlog.front() else {
                if frames == self.settings.max_proposals_per_turn {
                    break;
                }
                let Some(inbound) = first.take().or_else(|| self.network.try_recv().ok()) else {
                    break;
                };
                frames += 1;
                tracing::trace!(
                    from = inbound.from,
                    messages = inbound.messages.len(),
                    "stepping frame"
                );
                self.backlog.extend(inbound.messages);
                continue;
            };
            if front.get_msg_type() == MessageType::MsgSnapshot {
                if snapshots_left == 0 {
                    break;
                }
                snapshots_left -= 1;
            }
            let (shard, message) = self.backlog.pop_front().expect("front exists");
            self.step_message(shard, message);
        }
        // Cut short with the frame that woke the loop still in hand: it waits its turn too.
        if let Some(inbound) = first {
            self.backlog.extend(inbound.messages);
        }
    }

    fn step_message(&mut self, shard: ShardId, message: Message) {
        let shared = Arc::clone(&self.shared);
        let metrics = &shared.metrics;
        let Some(Slot::Running(group)) = self.groups.get_mut(shard_slot(shard)) else {
            // `receive` checks the shard range, so this is a stopped group.
            bump(&metrics.messages_refused);
            tracing::debug!(shard, "dropping a message for a stopped shard group");
            return;
        };
        let from = message.from;
        let kind = message.get_msg_type();
        match catch(|| group.step(message)) {
            Ok(Ok(())) => {}
            Ok(Err(err @ raft::Error::Store(_))) => self.fail_group(shard, &GroupError::Raft(err)),
            Ok(Err(err)) => {
                bump(&metrics.messages_refused);
                tracing::debug!(shard, from, ?kind, error = %err, "raft refused a received message");
            }
            Err(err) => self.fail_group(shard, &err),
        }
    }

    /// Applies the unreachable reports handles collected since the last turn to every group.
    fn apply_unreachable_reports(&mut self) {
        let nodes = std::mem::take(&mut *self.shared.unreachable.lock());
        for node in nodes {
            for shard in 0..self.groups.len() {
                if let Slot::Running(group) = &mut self.groups[shard] {
                    if let Err(err) = catch(|| group.report_unreachable(node)) {
                        self.fail_group(shard as ShardId, &err);
                    }
                }
            }
        }
    }

    /// Step 8: one frame per destination, then the snapshots in them reported as sent.
    fn send_outbox(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        let shared = Arc::clone(&self.shared);
        let metrics = &shared.metrics;
        for (to, messages) in outbox {
            let encoded = frame::encode(self.settings.node_id, to, &messages);
            if encoded.left_out > 0 {
                add(&metrics.messages_too_large, encoded.left_out as u64);
                tracing::warn!(
                    to,
                    left_out = encoded.left_out,
                    max_frame_bytes = frame::MAX_FRAME_BYTES,
                    "raft messages too large for a frame were not sent"
                );
            }
            if let Some(bytes) = encoded.bytes {
                let transport = &mut *self.transport;
                if catch(|| transport.send(to, bytes)).is_err() {
                    tracing::error!(to, "transport panicked while sending a frame");
                }
                bump(&metrics.frames_sent);
                add(&metrics.messages_sent, encoded.messages as u64);
            }
            // Also a snapshot left out: reported sent, the leader probes and tries again.
            for (shard, message) in &messages {
                if message.get_msg_type() != MessageType::MsgSnapshot {
                    continue;
                }
                if let Some(Slot::Running(group)) = self.groups.get_mut(shard_slot(*shard)) {
                    if let Err(err) = catch(|| group.report_snapshot_sent(to)) {
                        self.fail_group(*shard, &err);
                    }
                }
            }
        }
    }

    fn step_proposal(&mut self, proposal: Proposal<S::Output>) {
        let Proposal {
            shard,
            command,
            reply,
            queued,
        } = proposal;
        // Handles check the shard range, so a missing slot would be a bug; answer anyway.
        let Some(Slot::Running(group)) = self.groups.get_mut(shard_slot(shard)) else {
            let error = match self.groups.get(shard_slot(shard)) {
                Some(Slot::Failed) => ProposeError::Stopped,
                _ => ProposeError::UnknownShard,
            };
            reply.send(Err(error));
            return;
        };
        group.wake_for_request();
        let metrics = &self.shared.metrics;
        match catch(|| group.propose(command, reply, queued, metrics)).and_then(|result| result) {
            Ok(Proposed::Accepted) => {}
            Ok(Proposed::Refused(reply, error)) => reply.send(Err(error)),
            Err(err) => self.fail_group(shard, &err),
        }
    }

    /// Ticks every awake group; hibernating ones cost a check each.
    fn tick_all(&mut self) {
        bump(&self.shared.metrics.ticks);
        for shard in 0..self.groups.len() {
            if let Slot::Running(group) = &mut self.groups[shard] {
                group.tick_orphans(&self.shared.metrics);
                if group.is_hibernating() {
                    continue;
                }
                if let Err(err) = catch(|| group.tick()) {
                    self.fail_group(shard as ShardId, &err);
                }
            }
        }
    }

    /// Phase one for every group with a `Ready`; returns the shards that took one.
    fn handle_readies(&mut self) -> Vec<ShardId> {
        let mut readied = Vec::new();
        for shard in 0..self.groups.len() {
            let Slot::Running(group) = &mut self.groups[shard] else {
                continue;
            };
            if !group.has_ready() {
                continue;
            }
            let outbox = &mut self.outbox;
            let metrics = &self.shared.metrics;
            match catch(|| group.handle_ready(outbox, metrics)).and_then(|result| result) {
                Ok(()) => readied.push(shard as ShardId),
                Err(err) => self.fail_group(shard as ShardId, &err),
            }
        }
        readied
    }

    /// Measures the latency of the proposals the groups in `readied` answered since the last
    /// call, with one clock read: right after the phase that applied them.
    fn observe_answered(&mut self, readied: &[ShardId]) {
        let now = Instant::now();
        let latency = &self.shared.metrics.histograms.proposal_micros;
        for &shard in readied {
            if let Slot::Running(group) = &mut self.groups[shard_slot(shard)] {
                for queued in group.take_answered() {
                    latency.observe(micros(now.saturating_duration_since(queued)));
                }
            }
        }
    }

    /// Phase two for the groups that handled a `Ready` this turn.
    /// Shards that reached `snapshot_interval` are queued for [`Self::snapshot_by_interval`].
    fn handle_persisted(&mut self, readied: &[ShardId], now: Instant) {
        for &shard in readied {
            let Slot::Running(group) = &mut self.groups[shard_slot(shard)] else {
                continue;
            };
            let outbox = &mut self.outbox;
            let metrics = &self.shared.metrics;
            match catch(|| group.handle_persisted(outbox, metrics, now)).and_then(|r| r) {
                Ok(()) if group.interval_snapshot_due() => {
                    self.interval_due.insert(shard);
                }
                Ok(()) => {}
                Err(err) => self.fail_group(shard, &err),
            }
        }
    }

    /// Snapshots the queued shards that reached `snapshot_interval`, lowest shard first and at
    /// most `max_snapshots_per_turn` (shards under even load reach it together, and each
    /// serialises on this thread: spread over turns, no turn holds every shard up). Their
    /// files are written by the writer thread. Returns how many of the turn's snapshots are
    /// left for [`Self::snapshot_aged`].
    fn snapshot_by_interval(&mut self) -> usize {
        let groups = &self.groups;
        let due = take_queued(
            &mut self.interval_due,
            self.settings.max_snapshots_per_turn,
            |shard| {
                matches!(&groups[shard_slot(shard)], Slot::Running(group)
                    if group.interval_snapshot_due())
            },
        );
        let left = self.settings.max_snapshots_per_turn - due.len();
        for shard in due {
            self.snapshot_in_background(shard);
        }
        left
    }

    /// Serialises `shard`'s state machine here and hands the snapshot's file to the writer
    /// thread (its compaction is staged by [`Self::finish_compactions`]), timed for
    /// `ClusterMetrics::snapshot_serialize_micros`; a failure fails the shard.
    fn snapshot_in_background(&mut self, shard: ShardId) {
        let Slot::Running(group) = &mut self.groups[shard_slot(shard)] else {
            return;
        };
        let metrics = &self.shared.metrics;
        let was_compacting = group.is_compacting();
        let started = Instant::now();
        match catch(|| group.snapshot_if_unsnapshotted(Write::Background, metrics)).and_then(|r| r)
        {
            Ok(_) if !was_compacting && group.is_compacting() => metrics
                .histograms
                .snapshot_serialize_micros
                .observe(micros(started.elapsed())),
            Ok(_) => {}
            Err(err) => self.fail_group(shard, &err),
        }
    }

    /// Stages the compactions of the snapshots whose files the writer thread finished
    /// (`snapshot_file::SnapshotWriter`); a file that could not be written fails its shard,
    /// like a failed snapshot did when it was written here. Returns whether anything was
    /// staged.
    fn finish_compactions(&mut self, now: Instant) -> bool {
        let mut staged = false;
        for shard in 0..self.groups.len() {
            let Slot::Running(group) = &mut self.groups[shard] else {
                continue;
            };
            if !group.is_compacting() {
                continue;
            }
            let metrics = &self.shared.metrics;
            match catch(|| group.finish_compaction(Wait::Poll, Some(now), metrics))
                .and_then(|result| result)
            {
                Ok(finished) => staged |= finished,
                Err(err) => self.fail_group(shard as ShardId, &err),
            }
        }
        staged
    }

    /// Snapshots the shards whose oldest unsnapshotted entry is older than `snapshot_max_age`,
    /// oldest first and at most `limit` of them (what the turn's `max_snapshots_per_turn` left
    /// after the interval snapshots of [`Self::snapshot_by_interval`]), so a restart never replays
    /// more than about that age of log and one turn never serialises every shard. Runs after
    /// the turn's writes, when every applied entry is committed in the written hard state.
    fn snapshot_aged(&mut self, now: Instant, limit: usize) {
        let ages = self
            .groups
            .iter()
            .enumerate()
            .map(|(shard, slot)| match slot {
                // One whose snapshot is being written takes no other meanwhile.
                Slot::Running(group) if group.is_compacting() => (shard as ShardId, None),
                Slot::Running(group) => (shard as ShardId, group.unsnapshotted_age(now)),
                Slot::Failed => (shard as ShardId, None),
            });
        let due = snapshots_due(ages, self.settings.snapshot_max_age, limit);
        for shard in due {
            self.snapshot_in_background(shard);
        }
    }

    /// Writes every running group's staged writes as one atomic batch.
    fn write_staged(&mut self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for slot in &mut self.groups {
            if let Slot::Running(group) = slot {
                group.take_staged(&mut batch);
            }
        }
        let metrics = &self.shared.metrics;
        add(&metrics.written_bytes, batch.bytes());
        let started = Instant::now();
        if self.db.write(batch)? {
            metrics
                .histograms
                .flush_micros
                .observe(micros(started.elapsed()));
            bump(&metrics.flushes);
        }
        Ok(())
    }

    /// Publishes each shard's leader, the number of hibernating shards and whether the node is
    /// ready: every shard knows a leader and has applied what it knew committed at start. A node
    /// cut off from a quorum loses its leaders (a leader steps down by check-quorum, a follower
    /// forgets its leader when it starts a pre-vote), so it reports not ready within about an
    /// election timeout of being awake (a hibernating shard wakes when the transport reports
    /// its leader or, on the leader, a member unreachable).
    /// Whether readiness and `snapshot_all` need `shard` (`ClusterConfig::required_shards`).
    fn requires(&self, shard: usize) -> bool {
        requires(&self.settings, shard)
    }

    fn publish_readiness(&self) {
        let hibernating = self
            .groups
            .iter()
            .filter(|slot| matches!(slot, Slot::Running(group) if group.is_hibernating()))
            .count();
        self.shared
            .hibernating
            .store(hibernating as u64, Ordering::Relaxed);
        for (slot, leader) in self.groups.iter().zip(&self.shared.leaders) {
            let id = match slot {
                Slot::Running(group) => group.leader_id(),
                Slot::Failed => 0,
            };
            leader.store(id, Ordering::Relaxed);
        }
        let ready = self
            .groups
            .iter()
            .enumerate()
            .all(|(shard, slot)| match slot {
                Slot::Running(group) => {
                    group.is_caught_up() || (!self.requires(shard) && !group.is_initialized())
                }
                Slot::Failed => false,
            });
        // A node removed from every shard serves none (`membership.rs`).
        let member_somewhere = self.groups.iter().any(|slot| match slot {
            Slot::Running(group) => group.is_member(),
            Slot::Failed => false,
        });
        self.shared
            .ready
            .store(ready && member_somewhere, Ordering::Relaxed);
    }

    /// Stops one group for good; dropping it answers its pending proposals `Stopped`.
    fn fail_group(&mut self, shard: ShardId, err: &GroupError) {
        tracing::error!(shard, error = %error_chain(err), "stopping shard group");
        self.groups[shard_slot(shard)] = Slot::Failed;
        bump(&self.shared.metrics.failed_shards);
        self.shared.ready.store(false, Ordering::Relaxed);
        if let Some(leader) = self.shared.leaders.get(shard_slot(shard)) {
            leader.store(0, Ordering::Relaxed);
        }
    }

    /// Refuses new proposals, answers queued ones `Stopped`, snapshots every shard with applied
    /// entries not covered by its latest snapshot (so a clean restart replays no log), makes
    /// everything durable, then answers pending proposals `Stopped` by dropping the groups.
    fn shut_down(mut self) {
        self.close_inbox();
        self.abort_snapshot_all();
        // Snapshots taken already land, whether or not the shutdown takes its own.
        for shard in 0..self.groups.len() {
            let Slot::Running(group) = &mut self.groups[shard] else {
                continue;
            };
            let metrics = &self.shared.metrics;
            if let Err(err) =
                catch(|| group.finish_compaction(Wait::Block, None, metrics)).and_then(|r| r)
            {
                self.fail_group(shard as ShardId, &err);
            }
        }
        if self.settings.snapshot_on_shutdown {
            for shard in 0..self.groups.len() {
                let Slot::Running(group) = &mut self.groups[shard] else {
                    continue;
                };
                let metrics = &self.shared.metrics;
                if let Err(err) = catch(|| group.snapshot_if_unsnapshotted(Write::Here, metrics))
                    .and_then(|result| result)
                {
                    // The shard's log is intact; it is replayed at the next start instead.
                    self.fail_group(shard as ShardId, &err);
                }
            }
        }
        let mut batch = WriteBatch::default();
        for slot in &mut self.groups {
            if let Slot::Running(group) = slot {
                group.take_staged(&mut batch);
            }
        }
        let result = self.db.write(batch).and_then(|_| self.db.sync());
        match result {
            Ok(()) => bump(&self.shared.metrics.flushes),
            Err(err) => {
                tracing::error!(error = %error_chain(&err), "final raft database flush failed")
            }
        }
        // Dropping the groups answers their pending proposals `Stopped`.
        self.groups.clear();
    }

    /// Closes the gate handles check before queueing, then drains what is queued. Once the write
    /// lock was held, no `propose` can add to the inbox any more, so nothing is left behind.
    fn close_inbox(&self) {
        *self.shared.open.write() = false;
        self.shared.ready.store(false, Ordering::Relaxed);
        for leader in &self.shared.leaders {
            leader.store(0, Ordering::Relaxed);
        }
        while let Ok(proposal) = self.inbox.try_recv() {
            proposal.reply.send(Err(ProposeError::Stopped));
        }
        if let Some(requests) = &self.admin_requests {
            requests.try_iter().for_each(AdminRequest::stopped);
        }
        for status in &self.shared.status {
            status.lock().leader = None;
        }
    }
}

impl<S: StateMachine> Drop for Driver<S> {
    /// Also runs if the driver thread panics, so queued proposals are still answered.
    fn drop(&mut self) {
        self.close_inbox();
        self.abort_snapshot_all();
    }
}

/// The transport of [`crate::Cluster::start`]: a single-node cluster never addresses another
/// node, so a frame for one means a misconfigured group.
pub(crate) struct LocalOnly;

impl Transport for LocalOnly {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        tracing::error!(
            to,
            bytes = frame.len(),
            "no transport to other nodes; dropping raft messages"
        );
    }
}

/// The shards whose unsnapshotted entries are at least `max_age` old, oldest first, at most
/// `limit` of them. `ages` yields each shard's unsnapshotted age (`None`: nothing to snapshot).
fn snapshots_due(
    ages: impl Iterator<Item = (ShardId, Option<Duration>)>,
    max_age: Duration,
    limit: usize,
) -> Vec<ShardId> {
    let mut due: Vec<(Duration, ShardId)> = ages
        .filter_map(|(shard, age)| age.filter(|age| *age >= max_age).map(|age| (age, shard)))
        .collect();
    // Oldest first; ties by shard id so the choice does not depend on anything else.
    due.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    due.into_iter()
        .take(limit)
        .map(|(_, shard)| shard)
        .collect()
}

/// Takes up to `limit` shards off `queue`, lowest first, skipping (and dropping) those no
/// longer `due`; the rest stay queued for the next turns.
fn take_queued(
    queue: &mut BTreeSet<ShardId>,
    limit: usize,
    mut due: impl FnMut(ShardId) -> bool,
) -> Vec<ShardId> {
    let mut taken = Vec::new();
    while taken.len() < limit {
        let Some(shard) = queue.pop_first() else {
            break;
        };
        if due(shard) {
            taken.push(shard);
        }
    }
    taken
}

fn shard_slot(shard: ShardId) -> usize {
    usize::try_from(shard).unwrap_or(usize::MAX)
}

/// Whether readiness and `snapshot_all` need `shard` (`ClusterConfig::required_shards`).
fn requires(settings: &DriverSettings, shard: usize) -> bool {
    settings
        .required_shards
        .as_ref()
        .is_none_or(|required| required.contains(&(shard as ShardId)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(600);

    #[test]
    fn only_shards_at_least_max_age_old_are_due() {
        let ages = [
            (0, None),
            (1, Some(MAX_AGE - Duration::from_nanos(1))),
            (2, Some(MAX_AGE)),
            (3, Some(MAX_AGE * 2)),
        ];
        assert_eq!(snapshots_due(ages.into_iter(), MAX_AGE, 4), vec![3, 2]);
    }

    #[test]
    fn at_most_limit_shards_are_due_oldest_first() {
        let ages = (0..8).map(|shard| (shard, Some(MAX_AGE + Duration::from_secs(shard))));
        assert_eq!(snapshots_due(ages, MAX_AGE, 2), vec![7, 6]);
    }

    #[test]
    fn equal_ages_are_picked_by_shard_id() {
        let ages = [(5, Some(MAX_AGE)), (1, Some(MAX_AGE)), (3, Some(MAX_AGE))];
        assert_eq!(snapshots_due(ages.into_iter(), MAX_AGE, 2), vec![1, 3]);
    }

    #[test]
    fn interval_snapshots_wait_in_a_queue_for_the_turns_budget() {
        let mut queue = BTreeSet::from([3, 0, 2, 1]);
        assert_eq!(take_queued(&mut queue, 2, |_| true), [0, 1]);
        assert_eq!(queue, BTreeSet::from([2, 3]));
        // A shard no longer due (a received snapshot covered it) leaves without using the
        // budget.
        assert_eq!(take_queued(&mut queue, 1, |shard| shard != 2), [3]);
        assert!(queue.is_empty());
        assert!(take_queued(&mut queue, 2, |_| true).is_empty());
    }

    #[test]
    fn nothing_is_due_when_no_shard_has_unsnapshotted_entries() {
        let ages = (0..4).map(|shard| (shard, None));
        assert!(snapshots_due(ages, Duration::ZERO, 2).is_empty());
    }
}
