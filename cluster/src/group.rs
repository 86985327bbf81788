//! One local replica of one shard group: a raft-rs `RawNode` over [`ShardStorage`], the shard's
//! [`StateMachine`], and the proposals waiting for their entries to apply.
//!
//! The driver calls a group in a fixed order per loop turn (see `driver.rs`): proposals and ticks
//! first, then [`Group::handle_ready`] (phase one of the Raft `Ready` contract: everything up to
//! staging the writes), then, once the turn's single durable write has completed,
//! [`Group::handle_persisted`] (phase two: persisted messages, `advance`, the `LightReady`,
//! `advance_apply`, snapshotting). Proposals are matched to applied entries by `(term, index)`
//! (see `pending.rs`).
//!
//! A group never panics the driver on purpose: every failure is a [`GroupError`], and the driver
//! stops the group (STYLE.md P3, P4). It does not know what commands mean: entries are opaque
//! bytes handed to the state machine.

mod admin;
mod hibernate;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, ReadState, Ready, SnapshotStatus, StateRole};

use crate::metrics::{bump, micros, Metrics};
use crate::pending::{answer_dropped, PendingProposals};
use crate::reply::Reply;
use crate::snapshot_file::PendingWrite;
use crate::storage::{new_snapshot, snapshot_metadata, ShardStorage, StoreError, WriteBatch};
use crate::{ClusterConfig, NodeId, ProposeError, ShardId, StateMachine};

use self::admin::Admin;
use self::hibernate::Hibernation;

/// Why a shard group had to stop.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GroupError {
    #[error("raft storage failed")]
    Storage(#[from] StoreError),
    #[error("raft rejected an operation")]
    Raft(#[from] raft::Error),
    #[error("decode conf change entry {index}")]
    ConfChange {
        index: u64,
        #[source]
        source: protobuf::ProtobufError,
    },
    #[error("restore state machine from snapshot {index}: {reason}")]
    Restore { index: u64, reason: String },
    #[error("committed entry {found} delivered after applied index {applied}")]
    OutOfOrder { found: u64, applied: u64 },
    #[error("panicked: {0}")]
    Panicked(String),
}

/// Raft messages of one driver turn, by destination node, in the order the groups produced
/// them; the driver sends each destination's messages as one frame once the turn's writes are
/// durable (`driver.rs`, `frame.rs`).
pub(crate) type Outbox = BTreeMap<NodeId, Vec<(ShardId, Message)>>;

/// How a proposal stepped into the group ended up.
pub(crate) enum Proposed<O> {
    /// Appended to the leader's log; the reply is answered when it applies or is dropped.
    Accepted,
    /// Refused before reaching the log; the reply comes back to be answered with the error.
    Refused(Reply<O>, ProposeError),
}

pub(crate) struct Group<S: StateMachine> {
    shard: ShardId,
    node: RawNode<ShardStorage>,
    machine: S,
    /// Each proposal's reply and when `ClusterHandle::propose` queued it.
    pending: PendingProposals<(Reply<S::Output>, Instant)>,
    role: StateRole,
    leader_id: NodeId,
    applied_index: u64,
    applied_term: u64,
    /// Commit index found on disk at start: the group is caught up once it applied this far.
    recovered_commit: u64,
    snapshot_interval: u64,
    /// When (driver clock) the oldest applied entry not covered by the latest snapshot was
    /// applied; `None` when the snapshot covers everything applied. Drives the age-based
    /// snapshot that bounds replay at restart (`ClusterConfig::snapshot_max_age`).
    unsnapshotted_since: Option<Instant>,
    /// The snapshot whose file the writer thread is writing (`snapshot_file::SnapshotWriter`);
    /// it becomes the latest snapshot, and the log is compacted, in
    /// [`Self::finish_compaction`]. One at a time: no other snapshot is taken meanwhile.
    compacting: Option<PendingWrite>,
    /// The `Ready` between phase one and phase two of the current turn.
    in_flight: Option<Ready>,
    /// Read indexes received for this node's read barriers, not yet taken by the driver.
    read_states: Vec<ReadState>,
    /// The pending membership change and leadership transfer (`admin.rs`).
    admin: Admin,
    /// Ticks a leadership transfer may take before it is answered `TimedOut`.
    transfer_ticks: usize,
    /// `ClusterConfig::lost_leadership_wait_ticks`: how long orphaned proposals wait for
    /// their entries after this node stopped leading (`pending.rs`).
    orphan_wait_ticks: usize,
    /// Whether the group is asleep here, and a leader's count of quiet ticks (`hibernate.rs`).
    hibernation: Hibernation,
    /// When the proposals answered with their output since the driver last asked were queued
    /// ([`Self::take_answered`]); the driver, which owns the clock, measures their latency.
    answered: Vec<Instant>,
}

impl<S: StateMachine> Group<S> {
    /// Restores `machine` from the stored snapshot (if any) and builds the Raft node on top of
    /// `storage`, which must hold durable, committed-to-disk state.
    pub(crate) fn open(
        shard: ShardId,
        storage: ShardStorage,
        snapshot: Option<Snapshot>,
        mut machine: S,
        config: &ClusterConfig,
    ) -> Result<Self, GroupError> {
        let (applied_index, applied_term) = match &snapshot {
            Some(snapshot) => {
                let meta = snapshot.get_metadata();
                machine
                    .restore(&snapshot.data)
                    .map_err(|reason| GroupError::Restore {
                        index: meta.index,
                        reason,
                    })?;
                (meta.index, meta.term)
            }
            None => (0, 0),
        };
        let recovered_commit = storage.hard_state().commit;
        let raft_config = raft_config(config, applied_index);
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        // raft-rs asserts on inconsistent initial state; `ShardStorage::load` rejects the known
        // cases first, this catches the rest so a bad disk never takes the whole node down.
        let node = catch(|| RawNode::new(&raft_config, storage, &logger))??;
        Ok(Group {
            shard,
            role: node.raft.state,
            leader_id: node.raft.leader_id,
            node,
            machine,
            pending: PendingProposals::default(),
            applied_index,
            applied_term,
            recovered_commit,
            snapshot_interval: config.snapshot_interval,
            unsnapshotted_since: None,
            compacting: None,
            in_flight: None,
            read_states: Vec::new(),
            admin: Admin::default(),
            transfer_ticks: config.election_tick.saturating_mul(2),
            orphan_wait_ticks: config.lost_leadership_wait_ticks,
            hibernation: Hibernation::new(config.hibernate_after_ticks, config.election_tick),
            answered: Vec::new(),
        })
    }

    /// Steps a message received from another node. Raft-rs refuses node-local message types
    /// and responses from nodes outside the configuration with an error; a message that
    /// contradicts what this replica knows is committed makes it panic (caught by the driver,
    /// which stops the group: such a replica cannot be trusted to go on). Every message but a
    /// few routine ones wakes a hibernating group; a leader's hibernation notice puts a follower
    /// to sleep (`hibernate.rs`).
    pub(crate) fn step(&mut self, message: Message) -> Result<(), raft::Error> {
        assert!(self.in_flight.is_none(), "stepped inside a Ready");
        let incoming = self.hibernation_before_step(&message);
        let (from, term, commit) = (message.from, message.term, message.commit);
        self.node.step(message)?;
        self.hibernation_after_step(incoming, from, term, commit);
        Ok(())
    }

    /// Tells raft-rs that the last messages to `node` may not have arrived (a leader stops
    /// pipelining appends to it and probes instead), and wakes the group if `node` leads it or,
    /// on its leader, is a member (`hibernate.rs`).
    pub(crate) fn report_unreachable(&mut self, node: NodeId) {
        self.node.report_unreachable(node);
        self.wake_if_unreachable(node);
    }

    /// Tells raft-rs that a `MsgSnapshot` to `node` was handed to the transport. The transport
    /// cannot say whether it arrived, so it is reported finished at once: the leader then
    /// probes the follower from the snapshot's index on, and a follower that did not get the
    /// snapshot rejects the probe, which makes the leader send the snapshot again. (Left in
    /// the snapshot state, the leader would never send that follower anything again.)
    pub(crate) fn report_snapshot_sent(&mut self, node: NodeId) {
        self.node.report_snapshot(node, SnapshotStatus::Finish);
    }

    /// The node this replica believes leads the shard (0: unknown), as of the last `Ready`;
    /// also 0 once this node was removed from the shard (it no longer hears from the leader).
    pub(crate) fn leader_id(&self) -> NodeId {
        if self.is_initialized() && !self.is_member() {
            return 0;
        }
        self.leader_id
    }

    /// Starts an election right away when this node is the only voter, which is always the case
    /// for a single-node cluster; with peers the election timeout decides instead, so restarting
    /// nodes do not disrupt a healthy leader.
    pub(crate) fn campaign_if_sole_voter(&mut self, node_id: NodeId) -> Result<(), GroupError> {
        let conf_state = self.node.store().conf_state();
        if conf_state.voters == [node_id] && conf_state.voters_outgoing.is_empty() {
            self.node.campaign()?;
        }
        Ok(())
    }

    /// Appends `command` to the log if this replica leads; `queued` is when its handle queued
    /// it, for the latency measured once it applies.
    pub(crate) fn propose(
        &mut self,
        command: Vec<u8>,
        reply: Reply<S::Output>,
        queued: Instant,
        metrics: &Metrics,
    ) -> Result<Proposed<S::Output>, GroupError> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || raft.lead_transferee.is_some() {
            return Ok(Proposed::Refused(reply, ProposeError::NotLeader));
        }
        match self.node.propose(COMMAND_CONTEXT.to_vec(), command) {
            Ok(()) => {}
            // As leader, raft-rs only drops a proposal when the uncommitted log is at
            // `max_uncommitted_size`: back-pressure, like a full inbox.
            Err(raft::Error::ProposalDropped) => {
                bump(&metrics.busy_rejections);
                return Ok(Proposed::Refused(reply, ProposeError::Busy));
            }
            Err(err) => return Err(err.into()),
        }
        let term = self.node.raft.term;
        let index = self.node.raft.raft_log.last_index();
        self.pending
            .push(term, index, (reply, queued), |(stale, _)| {
                answer_dropped(stale, metrics)
            });
        bump(&metrics.proposals);
        Ok(Proposed::Accepted)
    }

    /// Counts one tick of the wait for orphaned proposals (`pending.rs`), hibernating or
    /// not (a replica asleep may still hold orphans past the leader's last index); answers
    /// those still waiting `Dropped` when it ends.
    pub(crate) fn tick_orphans(&mut self, metrics: &Metrics) {
        self.pending
            .tick(|(reply, _)| answer_dropped(reply, metrics));
    }

    /// One Raft tick, unless the group hibernates (`hibernate.rs`); a quiet leader counts it
    /// towards hibernation.
    pub(crate) fn tick(&mut self) {
        if self.is_hibernating() {
            return;
        }
        self.node.tick();
        self.admin_tick();
        self.hibernation_tick();
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Phase one of the `Ready` contract, in raft-rs' documented order: send `messages`, apply a
    /// snapshot, apply `committed_entries`, stage `entries` and the hard state. The staged writes
    /// become durable in the driver's single write for the turn, before [`Self::handle_persisted`].
    pub(crate) fn handle_ready(
        &mut self,
        outbox: &mut Outbox,
        metrics: &Metrics,
    ) -> Result<(), GroupError> {
        assert!(self.in_flight.is_none(), "ready taken twice in one turn");
        let mut ready = self.node.ready();
        // Only a follower's messages wait for persistence; a leader's may go before its own
        // append is durable (Raft thesis §10.2.1), which is what `messages` holds. The driver
        // sends the whole outbox after the turn's durable write anyway, which is always safe.
        send(self.shard, outbox, ready.take_messages());
        self.read_states.extend(ready.take_read_states());
        if !ready.snapshot().is_empty() {
            self.apply_received_snapshot(ready.snapshot(), metrics)?;
        }
        self.apply_committed(ready.take_committed_entries(), metrics)?;
        self.step_down_if_removed(outbox);
        self.node.mut_store().stage_entries(ready.entries())?;
        if let Some(hard_state) = ready.hs() {
            self.node.mut_store().stage_hard_state(hard_state)?;
        }
        if let Some(soft_state) = ready.ss() {
            self.on_soft_state(soft_state.raft_state, soft_state.leader_id, metrics);
        }
        self.in_flight = Some(ready);
        Ok(())
    }

    /// Phase two, after the turn's writes are durable: `persisted_messages`, `advance`, the
    /// `LightReady` (commit index, messages, committed entries), `advance_apply`, then the
    /// snapshot a membership change made due. (One due by `snapshot_interval`, see
    /// [`Self::interval_snapshot_due`], the driver takes when the turn's budget allows.) `now`
    /// is the driver's clock for this turn: entries applied in it and left unsnapshotted are
    /// dated with it.
    pub(crate) fn handle_persisted(
        &mut self,
        outbox: &mut Outbox,
        metrics: &Metrics,
        now: Instant,
    ) -> Result<(), GroupError> {
        let Some(mut ready) = self.in_flight.take() else {
            return Ok(());
        };
        send(self.shard, outbox, ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().stage_commit(commit)?;
        }
        send(self.shard, outbox, light.take_messages());
        self.apply_committed(light.take_committed_entries(), metrics)?;
        self.step_down_if_removed(outbox);
        self.node.advance_apply();
        if self.take_membership_snapshot_due() && self.has_unsnapshotted() {
            // A new member must get a snapshot that names it, never the log from its start
            // (`membership.rs`): this one is staged, and the log compacted, before the next
            // `Ready` can send the member anything. Membership changes are rare, so its file
            // is written here (after the one being written, if any).
            self.finish_compaction(Wait::Block, Some(now), metrics)?;
            if self.has_unsnapshotted() {
                self.take_snapshot(Write::Here, metrics)?;
            }
        }
        // A snapshot received from the leader also covers everything applied.
        self.unsnapshotted_since = if self.has_unsnapshotted() {
            self.unsnapshotted_since.or(Some(now))
        } else {
            None
        };
        Ok(())
    }

    /// How long ago (as of `now`) the oldest applied entry not covered by the latest snapshot
    /// was applied; `None` when there is no such entry.
    pub(crate) fn unsnapshotted_age(&self, now: Instant) -> Option<Duration> {
        self.unsnapshotted_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Snapshots the state machine and compacts the log if any applied entry is not covered by
    /// the latest snapshot; returns whether anything was staged. For the interval and
    /// age-based snapshots the driver takes (`write` [`Write::Background`]: the compaction is
    /// staged once the file is written) and
    /// the shutdown ones ([`Write::Here`], after the file being written, if any, is complete
    /// and staged): call only between turns (after [`Self::handle_persisted`]), when
    /// everything applied is also committed in the written hard state.
    pub(crate) fn snapshot_if_unsnapshotted(
        &mut self,
        write: Write,
        metrics: &Metrics,
    ) -> Result<bool, GroupError> {
        if self.in_flight.is_some() {
            return Ok(false);
        }
        let staged = match write {
            Write::Background if self.compacting.is_some() => return Ok(false),
            Write::Background => false,
            Write::Here => self.finish_compaction(Wait::Block, None, metrics)?,
        };
        if !self.has_unsnapshotted() {
            return Ok(staged);
        }
        self.take_snapshot(write, metrics)?;
        Ok(staged || write == Write::Here)
    }

    /// Stages the compaction of the snapshot whose file the writer thread finished (with
    /// [`Wait::Block`], once it has), like [`Self::snapshot_if_unsnapshotted`] only between
    /// turns; returns whether anything was staged. Entries applied since that snapshot was
    /// taken are dated `now` (`None`: the driver is shutting down and dates nothing).
    pub(crate) fn finish_compaction(
        &mut self,
        wait: Wait,
        now: Option<Instant>,
        metrics: &Metrics,
    ) -> Result<bool, GroupError> {
        if self.in_flight.is_some() {
            return Ok(false);
        }
        let Some(pending) = self.compacting.take() else {
            return Ok(false);
        };
        let written = match wait {
            Wait::Block => pending.wait(),
            Wait::Poll => match pending.try_finish() {
                Some(written) => written,
                None => {
                    self.compacting = Some(pending);
                    return Ok(false);
                }
            },
        };
        let written = written?;
        metrics
            .histograms
            .snapshot_write_micros
            .observe(micros(written.took));
        let index = written.record.metadata().index;
        let staged = self.node.mut_store().finish_compaction(written.record)?;
        if staged {
            bump(&metrics.snapshots_taken);
        }
        tracing::debug!(shard = self.shard, index, staged, "snapshot written");
        self.unsnapshotted_since = if self.has_unsnapshotted() {
            self.unsnapshotted_since.and(now)
        } else {
            None
        };
        Ok(true)
    }

    /// Whether `snapshot_interval` entries were applied since the latest snapshot and none is
    /// being written.
    pub(crate) fn interval_snapshot_due(&self) -> bool {
        self.compacting.is_none()
            && self
                .applied_index
                .saturating_sub(self.node.store().snapshot_index())
                >= self.snapshot_interval
    }

    /// Whether a snapshot's file is being written.
    pub(crate) fn is_compacting(&self) -> bool {
        self.compacting.is_some()
    }

    /// The state machine serialised at the applied index, with that index and the term of the
    /// entry there, for an online backup (`backup.rs`); stores and compacts nothing. `None`
    /// before the group applied its first entry. Call only between turns, like
    /// [`Self::snapshot_if_unsnapshotted`], so no entry is half applied.
    pub(crate) fn serialize_applied(&self) -> Option<(u64, u64, Vec<u8>)> {
        assert!(self.in_flight.is_none(), "serialised inside a Ready");
        if self.applied_index == 0 {
            return None;
        }
        Some((
            self.applied_index,
            self.applied_term,
            self.machine.snapshot(),
        ))
    }

    /// Moves this group's staged writes into the turn's batch.
    pub(crate) fn take_staged(&mut self, batch: &mut WriteBatch) {
        batch.take_from(self.node.mut_store());
    }

    /// True once the group knows a leader and applied everything that was committed on disk
    /// when it started. An uninitialised group (waiting for the leader's first snapshot) is
    /// not caught up; a group this node was removed from is, since it no longer has anything
    /// to catch up with (`membership.rs`).
    pub(crate) fn is_caught_up(&self) -> bool {
        if !self.is_initialized() {
            return false;
        }
        if !self.is_member() {
            return true;
        }
        self.leader_id != 0 && self.applied_index >= self.recovered_commit
    }

    /// Whether raft-rs would act on a read index request now: a follower must know a leader,
    /// and a leader must have committed an entry of its own term (raft-rs drops the request
    /// silently otherwise; `read_barrier.rs`).
    pub(crate) fn can_read_index(&self) -> bool {
        let raft = &self.node.raft;
        match raft.state {
            StateRole::Leader => raft.commit_to_current_term(),
            _ => raft.leader_id != 0,
        }
    }

    /// Asks for a read index under context `ctx` (raft ReadIndex); the answer comes back in a
    /// later `Ready` and is kept for [`Self::take_read_states`]. Call only between turns.
    pub(crate) fn read_index(&mut self, ctx: Vec<u8>) {
        assert!(self.in_flight.is_none(), "read index inside a Ready");
        self.node.read_index(ctx);
    }

    /// The read indexes received since the last call.
    pub(crate) fn take_read_states(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.read_states)
    }

    /// When the proposals answered with their output since the last call were queued.
    pub(crate) fn take_answered(&mut self) -> std::vec::Drain<'_, Instant> {
        self.answered.drain(..)
    }

    /// The index of the last entry applied to the state machine.
    pub(crate) fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn apply_committed(
        &mut self,
        entries: Vec<Entry>,
        metrics: &Metrics,
    ) -> Result<(), GroupError> {
        for entry in entries {
            if entry.index != self.applied_index + 1 {
                return Err(GroupError::OutOfOrder {
                    found: entry.index,
                    applied: self.applied_index,
                });
            }
            let reply = self.pending.take(entry.term, entry.index, |(reply, _)| {
                answer_dropped(reply, metrics)
            });
            let output = self.apply_entry(&entry)?;
            self.applied_index = entry.index;
            self.applied_term = entry.term;
            bump(&metrics.applied_entries);
            self.settle_change(&entry, metrics);
            // Answer last, so a caller that sees the answer also sees the apply counted.
            match (reply, output) {
                (Some((reply, queued)), Some(output)) => {
                    reply.send(Ok(output));
                    self.answered.push(queued);
                }
                (Some((reply, _)), None) => answer_dropped(reply, metrics),
                (None, _) => {}
            }
        }
        Ok(())
    }

    /// Applies one committed entry; only command entries produce an output.
    fn apply_entry(&mut self, entry: &Entry) -> Result<Option<S::Output>, GroupError> {
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.context.as_ref() == COMMAND_CONTEXT => {
                Ok(Some(self.machine.apply(entry.index, &entry.data)))
            }
            // The empty entry a new leader appends (Raft §8) carries no command.
            EntryType::EntryNormal => Ok(None),
            EntryType::EntryConfChange => {
                let change = decode_conf_change::<ConfChange>(entry)?;
                let conf_state = self.node.apply_conf_change(&change)?;
                self.node.mut_store().stage_conf_state(&conf_state)?;
                self.on_conf_applied(&conf_state);
                Ok(None)
            }
            EntryType::EntryConfChangeV2 => {
                let change = decode_conf_change::<ConfChangeV2>(entry)?;
                let conf_state = self.node.apply_conf_change(&change)?;
                self.node.mut_store().stage_conf_state(&conf_state)?;
                self.on_conf_applied(&conf_state);
                Ok(None)
            }
        }
    }

    fn apply_received_snapshot(
        &mut self,
        snapshot: &Snapshot,
        metrics: &Metrics,
    ) -> Result<(), GroupError> {
        // A snapshot of ours being written is older than this one: its file is waited for
        // (so that the two never write one file) and retired once this one is staged.
        let written = self.compacting.take().map(PendingWrite::wait);
        let meta = snapshot.get_metadata();
        self.machine
            .restore(&snapshot.data)
            .map_err(|reason| GroupError::Restore {
                index: meta.index,
                reason,
            })?;
        self.node.mut_store().stage_received_snapshot(snapshot)?;
        match written {
            Some(Ok(written)) => {
                self.node.mut_store().finish_compaction(written.record)?;
            }
            Some(Err(err)) => tracing::warn!(
                shard = self.shard,
                error = %error_chain(&err),
                "snapshot file not written; the leader's snapshot replaces it anyway"
            ),
            None => {}
        }
        self.applied_index = meta.index;
        self.applied_term = meta.term;
        self.pending
            .drain(|(reply, _)| answer_dropped(reply, metrics));
        self.drop_pending_change(metrics);
        bump(&metrics.snapshots_received);
        tracing::info!(
            shard = self.shard,
            index = meta.index,
            term = meta.term,
            bytes = snapshot.data.len(),
            "restored snapshot received from the leader"
        );
        Ok(())
    }

    fn on_soft_state(&mut self, role: StateRole, leader_id: NodeId, metrics: &Metrics) {
        if self.role == StateRole::Leader && role != StateRole::Leader {
            // raft-rs forgets our uncommitted proposals silently when it steps down (floors
            // pitfall 13); they often commit under the next leader, whose log this replica
            // applies: they wait for their entries as orphans (`pending.rs`).
            self.pending
                .orphan_all(self.orphan_wait_ticks, |(reply, _)| {
                    answer_dropped(reply, metrics)
                });
        }
        if leader_id != 0 && leader_id != self.leader_id {
            bump(&metrics.leader_changes);
            tracing::info!(shard = self.shard, leader_id, ?role, "shard leader changed");
        }
        self.role = role;
        self.leader_id = leader_id;
        self.admin_on_soft_state(metrics);
    }

    fn has_unsnapshotted(&self) -> bool {
        self.applied_index > self.node.store().snapshot_index()
    }

    /// Snapshots the state machine at the applied index and stages the log compaction up to it.
    /// Runs only at the end of a turn (phase two or between turns), when everything applied is
    /// also committed in the staged hard state, so the stored snapshot never gets ahead of the
    /// stored commit index.
    /// With [`Write::Background`] only the serialising runs here; the writer thread writes
    /// the file and [`Self::finish_compaction`] stages the compaction afterwards.
    fn take_snapshot(&mut self, write: Write, metrics: &Metrics) -> Result<(), GroupError> {
        debug_assert!(self.compacting.is_none(), "one snapshot written at a time");
        // Serialising runs on the driver thread and holds up every shard; the size is logged
        // (the driver's turn timing covers the time).
        let data = self.machine.snapshot();
        let bytes = data.len();
        let conf_state = self.node.store().conf_state().clone();
        let (index, term) = (self.applied_index, self.applied_term);
        match write {
            Write::Here => {
                let snapshot = new_snapshot(index, term, conf_state, data);
                self.node.mut_store().stage_compaction(&snapshot)?;
                self.unsnapshotted_since = None;
                bump(&metrics.snapshots_taken);
            }
            Write::Background => {
                let metadata = snapshot_metadata(index, term, conf_state);
                let pending = self.node.store().begin_compaction(metadata, data)?;
                self.compacting = Some(pending);
            }
        }
        tracing::debug!(
            shard = self.shard,
            index = self.applied_index,
            bytes,
            ?write,
            "took snapshot"
        );
        Ok(())
    }
}

/// Where a snapshot's file is written ([`Group::snapshot_if_unsnapshotted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// On the driver thread, staged at once (shutdown, a membership change).
    Here,
    /// On the writer thread, staged by a later [`Group::finish_compaction`].
    Background,
}

/// Whether [`Group::finish_compaction`] waits for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Block,
    Poll,
}

impl<S: StateMachine> Group<S> {}

/// Formats an error with its whole `source` chain, for log lines and error reasons.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Runs `f`, turning a panic into [`GroupError::Panicked`].
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, GroupError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        GroupError::Panicked(message)
    })
}

/// The raft-rs configuration for one group; `applied` is where the restored state machine is.
pub(crate) fn raft_config(config: &ClusterConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: config.node_id,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        applied,
        max_size_per_msg: config.max_size_per_msg,
        max_inflight_msgs: config.max_inflight_msgs,
        max_uncommitted_size: config.max_uncommitted_bytes,
        check_quorum: true,
        pre_vote: true,
        ..raft::Config::default()
    }
}

/// Queues `messages` in the turn's outbox, keeping their order per destination.
fn send(shard: ShardId, outbox: &mut Outbox, messages: Vec<Message>) {
    for message in messages {
        outbox.entry(message.to).or_default().push((shard, message));
    }
}

fn decode_conf_change<M: PbMessage>(entry: &Entry) -> Result<M, GroupError> {
    M::parse_from_bytes(&entry.data).map_err(|source| GroupError::ConfChange {
        index: entry.index,
        source,
    })
}

/// Entry context marking a client command, so the empty entries raft-rs appends on leader
/// election are told apart from (possibly empty) commands deterministically on every replica.
const COMMAND_CONTEXT: &[u8] = &[1];
