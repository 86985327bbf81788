//! One simulated replica of the shard group: a raft-rs `RawNode` over [`SimStorage`] and the
//! real `ShardMachine` (`Shards::new(1).machine(0)`), driven in the order `cluster::group` and
//! `cluster::driver` use (STYLE.md P4):
//!
//! 1. phase one ([`Replica::drive`]): send `messages`, install a received snapshot, apply
//!    `committed_entries`, write `entries` and the hard state to the live storage; the replica
//!    is now busy until its sync completes (the driver blocks on `fdatasync` the same way);
//! 2. phase two ([`Replica::on_synced`]), scheduled by the simulation after a disk latency:
//!    make the live state durable, send `persisted_messages`, `advance`, handle the
//!    `LightReady`, `advance_apply`, snapshot and compact when due, then work through what
//!    arrived meanwhile.
//!
//! Proposals are tracked by `(term, index)` in the product's own queue
//! ([`PendingProposals`]) and answered exactly once: with the apply output, `Dropped` when the
//! entry at their index turned out to be another leader's, or this replica stopped leading and
//! did not apply it within two election timeouts (orphans, with the product's default wait),
//! `Crashed` when it crashed first (floors pitfall 13). A replica never panics
//! on purpose: storage faults and Raft errors stop it and are reported as violations.
//!
//! Membership changes follow `cluster::group::admin` (the `membership` module documents them):
//! [`Replica::change_members`] checks the change with the product's own code
//! ([`MembershipChange::plan_on_leader`], which `ClusterHandle::change_members` runs: the
//! leader leads and transfers nothing, no change is pending, the configuration rules, a
//! promoted learner has caught up) and proposes one single-change `ConfChangeV2`, answered once
//! its entry applies here or dropped. Every replica applies the entry at its index, stores the
//! configuration with the next sync, and snapshots at the end of the turn when a member is
//! missing from its latest snapshot (so a new member catches up from a snapshot that names it).
//! A leader that applies its own removal steps down right after applying and hands leadership
//! over on its next ticks, with the product's code ([`step_down_if_removed`], [`Handoff`]);
//! [`Replica::transfer_leader`] retries and times out as `ClusterHandle::transfer_leader` does.
//! A replica of a joining node starts with an empty disk ([`Replica::joining`]) and waits for
//! the leader's snapshot; a replica removed from the group answers requests `NotLeader` without
//! a hint, as a removed node's group does.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mimid_actors::command::{
    Command, HandshakeBundle, ReceivedItem, Stamped, SubmitVerdict, UpdateVerdict,
};
use mimid_actors::ids::{ClientId, RoomId};
use mimid_actors::room::core::RoomView;
use mimid_actors::room::log::LogItem;
use mimid_actors::room::state::RoomState;
use mimid_actors::shard::{ApplyOutput, CreateRoomRejection, ShardMachine, Shards};
use mimid_cluster::{
    step_down_if_removed, Handoff, MembershipChange, MembershipError, PendingProposals,
    StateMachine, TransferDeadline, TransferError,
};
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot,
};
use raft::{ProgressState, RawNode, Ready, SnapshotStatus, StateRole};

use crate::sim::conf_change;
use crate::sim::storage::{Disk, SimStorage};
use crate::sim::trace::{Event, Trace};
use crate::sim::PlantedBug;

/// Identifies a client request across the simulation.
pub type RequestId = u64;

/// Identifies a membership change or leadership transfer the operator asked for.
pub type AdminId = u64;

/// How a replica answers a client request.
#[derive(Debug)]
pub enum Answer {
    /// The entry was committed (durable on a quorum) and applied here, as leader.
    Applied(ApplyOutput),
    /// Refused before proposing: this replica does not lead (`leader` is its hint, 0 if none).
    NotLeader { leader: u64 },
    /// Refused before proposing: the inbox or the uncommitted log is full.
    Busy,
    /// Refused before proposing: the replica was down or crashed before looking at it.
    Unavailable,
    /// Outcome unknown: leadership moved before the entry applied here.
    Dropped,
    /// Outcome unknown: the replica crashed with the proposal pending.
    Crashed,
}

/// What handling one input produced, for the simulation to deliver.
#[derive(Default)]
pub struct Outbox {
    pub messages: Vec<Message>,
    pub answers: Vec<(RequestId, Answer)>,
    /// A Ready waits for its sync: schedule [`Replica::on_synced`].
    pub sync_needed: bool,
    /// Something was applied (or restored): compare the room log with the reference again.
    pub applied: bool,
    /// The state machine was replaced (snapshot installed): compare the room log from scratch.
    pub restored: bool,
    /// The replica stopped for good.
    pub failure: Option<String>,
    /// Entries whose apply output went to a requester as `Answer::Applied`: (index, term).
    pub acknowledged: Vec<(u64, u64)>,
    /// Configurations applied here, by the index of their conf-change entry.
    pub configurations: Vec<(u64, ConfState)>,
    /// Answers to membership changes: the configuration once applied here, or the refusal.
    pub changes: Vec<(AdminId, Result<ConfState, MembershipError>)>,
    /// Answers to leadership transfers.
    pub transfers: Vec<(AdminId, Result<(), TransferError>)>,
    /// A proposal was taken while this replica is no voter of its own configuration.
    pub proposed_as_non_voter: bool,
    /// This replica led, applied its own removal and stepped down.
    pub stepped_down: bool,
    /// A learner raft-rs held in the probe state was promoted (caught up by its matched index).
    pub promoted_while_probed: bool,
}

/// Raft timing and limits of the simulated group.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Applied entries between two snapshots (each followed by log compaction).
    pub snapshot_interval: u64,
    /// Inputs queued while a sync is in flight; further ones are dropped (messages) or
    /// answered `Busy` (requests).
    pub inbox_capacity: usize,
}

pub struct Replica {
    id: u64,
    settings: RaftSettings,
    bug: PlantedBug,
    /// What survives a crash.
    disk: Disk,
    running: Option<Running>,
}

struct Running {
    node: RawNode<SimStorage>,
    machine: Machine,
    bug: PlantedBug,
    /// Ticks a leadership transfer may take (twice the election timeout).
    transfer_ticks: usize,
    /// The membership change this leader proposed, not applied yet: (term, index, id).
    change: Option<(u64, u64, AdminId)>,
    /// The leadership transfer this leader runs.
    transfer: Option<Transfer>,
    /// This replica led, applied its own removal and stepped down: the voter it tells to
    /// campaign.
    handoff: Option<Handoff>,
    /// A member is missing from the latest snapshot: snapshot at the end of the turn.
    snapshot_due: bool,
    /// [`PlantedBug::CountsRemovedVoter`] struck: Raft's tracker differs from the stored
    /// configuration, which later changes keep right.
    miscounting: bool,
    /// Proposals waiting for their entries.
    pending: PendingProposals<RequestId>,
    /// How long orphans wait for their entries (`ClusterConfig::lost_leadership_wait_ticks`).
    orphan_wait_ticks: usize,
    applied_index: u64,
    applied_term: u64,
    role: StateRole,
    leader: u64,
    in_flight: Option<Ready>,
    inbox: VecDeque<Input>,
    ticks_due: u32,
    /// Live writes not yet synced (lost by a crash).
    dirty: bool,
}

enum Input {
    Message(Message),
    Request(RequestId, Command, u64),
    SnapshotReport(u64, SnapshotStatus),
    Change(AdminId, MembershipChange),
    Transfer(AdminId, u64),
}

/// A leadership transfer in progress (`cluster::group::admin::PendingTransfer`).
struct Transfer {
    /// The target and the deadline, stepped by the product's `TransferDeadline::tick`.
    deadline: TransferDeadline,
    waiters: Vec<AdminId>,
}

impl Replica {
    /// A replica that has never run: bootstrapped with every voter, down until started.
    pub fn new(id: u64, voters: &[u64], settings: RaftSettings, bug: PlantedBug) -> Self {
        Replica {
            id,
            settings,
            bug,
            disk: Disk::bootstrap(voters),
            running: None,
        }
    }

    /// A replica of a node joining the running group (`ClusterConfig::join_existing`): no
    /// configuration, no log; it never campaigns and waits for the leader's snapshot.
    pub fn joining(id: u64, settings: RaftSettings, bug: PlantedBug) -> Self {
        Replica {
            id,
            settings,
            bug,
            disk: Disk::empty(),
            running: None,
        }
    }

    /// The node's data directory is deleted (it must be down): it holds nothing any more.
    pub fn wipe(&mut self) {
        assert!(self.running.is_none(), "wipe of a running replica");
        self.disk = Disk::empty();
    }

    /// Whether the entry at `index` of `term` is durable on this replica's disk.
    pub fn holds(&self, index: u64, term: u64) -> bool {
        self.disk.holds(index, term)
    }

    /// The applied configuration while running (the default one while joining).
    pub fn conf_state(&self) -> Option<&ConfState> {
        self.running
            .as_ref()
            .map(|running| running.node.store().conf_state())
    }

    /// Running, with a configuration, and no member of it: this replica applied its removal.
    pub fn is_removed(&self) -> bool {
        self.running.as_ref().is_some_and(Running::is_removed)
    }

    /// On a leader that is a voter and transfers nothing: its term, commit index and every
    /// member's matched index, as `ShardStatus` reports them.
    pub fn leader_view(&self) -> Option<LeaderView> {
        let running = self.running.as_ref()?;
        let raft = &running.node.raft;
        let voter = running.node.store().conf_state().voters.contains(&self.id);
        if raft.state != StateRole::Leader || raft.lead_transferee.is_some() || !voter {
            return None;
        }
        let progress = raft
            .prs()
            .iter()
            .map(|(id, progress)| (*id, progress.matched))
            .collect();
        Some(LeaderView {
            term: raft.term,
            commit: raft.raft_log.committed,
            progress,
        })
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// True while a Ready waits for its sync.
    pub fn is_busy(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|running| running.in_flight.is_some())
    }

    /// (applied index, commit index) while running.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.running
            .as_ref()
            .map(|running| (running.applied_index, running.node.raft.raft_log.committed))
    }

    pub fn is_leader(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|running| running.node.raft.state == StateRole::Leader)
    }

    /// Starts (or restarts) from the disk: the state machine restored from the stored snapshot,
    /// then raft-rs re-delivers the committed entries after it.
    pub fn start(&mut self, trace: &mut Trace, now: u64) -> Result<(), String> {
        assert!(self.running.is_none(), "start of a running replica");
        let storage = SimStorage::recover(&self.disk);
        let mut machine = Machine::new(self.id, self.bug);
        let (applied_index, applied_term) = match self.disk.snapshot() {
            Some(snapshot) => {
                machine.restore(&snapshot.data)?;
                let meta = snapshot.get_metadata();
                (meta.index, meta.term)
            }
            None => (0, 0),
        };
        let config = raft::Config {
            id: self.id,
            election_tick: self.settings.election_tick,
            heartbeat_tick: self.settings.heartbeat_tick,
            // A one-value range: raft-rs draws the randomized timeout from `thread_rng`, which
            // the simulation cannot seed; ticks are jittered by the seeded RNG instead.
            min_election_tick: self.settings.election_tick,
            max_election_tick: self.settings.election_tick + 1,
            applied: applied_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * 1024 * 1024,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config, storage, &logger).map_err(|err| err.to_string())?;
        let (role, leader) = (node.raft.state, node.raft.leader_id);
        trace.record(
            now,
            Event::Role {
                node: self.id,
                leader,
                role: role_name(role),
            },
        );
        self.running = Some(Running {
            node,
            machine,
            bug: self.bug,
            transfer_ticks: self.settings.election_tick * 2,
            // The product's default `lost_leadership_wait_ticks`: two election timeouts.
            orphan_wait_ticks: self.settings.election_tick * 2,
            change: None,
            transfer: None,
            handoff: None,
            snapshot_due: false,
            miscounting: false,
            pending: PendingProposals::default(),
            applied_index,
            applied_term,
            role,
            leader,
            in_flight: None,
            inbox: VecDeque::new(),
            ticks_due: 0,
            dirty: false,
        });
        Ok(())
    }

    /// Runs `f`, turning a raft-rs panic into this replica's failure, as the cluster driver
    /// does (`catch` in `cluster::driver`: the group stops); the simulation reports it.
    fn guarded<R>(
        &mut self,
        out: &mut Outbox,
        failed: R,
        f: impl FnOnce(&mut Self, &mut Outbox) -> R,
    ) -> R {
        match catch_unwind(AssertUnwindSafe(|| f(self, out))) {
            Ok(result) => result,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                self.fail(format!("panicked: {message}"), out);
                failed
            }
        }
    }

    pub fn on_tick(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        self.guarded(out, (), |replica, out| {
            replica.on_tick_unguarded(trace, now, out)
        })
    }

    /// Returns false when the message had to be dropped (down, or inbox full).
    pub fn on_message(
        &mut self,
        message: Message,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) -> bool {
        self.guarded(out, true, |replica, out| {
            replica.on_message_unguarded(message, trace, now, out)
        })
    }

    /// The transport's report on a snapshot this replica sent to `to`. raft-rs keeps a
    /// follower's progress in the snapshot state until told (the follower's answer alone does
    /// not release it if that answer is lost), so a transport must report both outcomes.
    pub fn on_snapshot_report(
        &mut self,
        to: u64,
        delivered: bool,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        self.guarded(out, (), |replica, out| {
            replica.on_snapshot_report_unguarded(to, delivered, trace, now, out)
        })
    }

    /// A client request; `stamp_ms` is this replica's clock, stamped into the entry if it
    /// leads (DESIGN.md §2: apply never reads a clock).
    pub fn on_request(
        &mut self,
        request: RequestId,
        command: Command,
        stamp_ms: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        self.guarded(out, (), |replica, out| {
            replica.on_request_unguarded(request, command, stamp_ms, trace, now, out)
        })
    }

    /// A membership change from the operator (`ClusterHandle::change_members` on this node).
    pub fn change_members(
        &mut self,
        id: AdminId,
        change: MembershipChange,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        self.guarded(out, (), |replica, out| {
            replica.change_members_unguarded(id, change, trace, now, out)
        })
    }

    /// A leadership transfer from the operator (`ClusterHandle::transfer_leader` on this node).
    pub fn transfer_leader(
        &mut self,
        id: AdminId,
        to: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        self.guarded(out, (), |replica, out| {
            replica.transfer_leader_unguarded(id, to, trace, now, out)
        })
    }

    /// Phase two of the Ready in flight, once the simulated disk finished its sync.
    pub fn on_synced(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        self.guarded(out, (), |replica, out| {
            replica.on_synced_unguarded(trace, now, out)
        })
    }

    /// Handles the Ready a (re)started replica may have at once (entries to re-apply).
    pub fn resume(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        self.guarded(out, (), |replica, out| {
            replica.resume_unguarded(trace, now, out)
        })
    }

    /// Power loss: everything not synced is gone. Returns whether unsynced writes were lost.
    pub fn crash(&mut self, out: &mut Outbox) -> bool {
        let Some(running) = self.running.take() else {
            return false;
        };
        let mut pending = running.pending;
        pending.drain(|request| out.answers.push((request, Answer::Crashed)));
        for input in running.inbox {
            match input {
                Input::Request(request, _, _) => out.answers.push((request, Answer::Unavailable)),
                Input::Change(id, _) => out.changes.push((id, Err(MembershipError::Stopped))),
                Input::Transfer(id, _) => out.transfers.push((id, Err(TransferError::Stopped))),
                Input::Message(_) | Input::SnapshotReport(..) => {}
            }
        }
        if let Some((_, _, id)) = running.change {
            out.changes.push((id, Err(MembershipError::Stopped)));
        }
        for id in running
            .transfer
            .into_iter()
            .flat_map(|transfer| transfer.waiters)
        {
            out.transfers.push((id, Err(TransferError::Stopped)));
        }
        running.dirty || running.in_flight.is_some()
    }

    fn on_tick_unguarded(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if running.in_flight.is_some() {
            running.ticks_due = (running.ticks_due + 1).min(MAX_TICKS_DUE);
            return;
        }
        running.tick(out);
        trace.record(now, Event::Tick { node: self.id });
        self.drive(trace, now, out);
    }

    fn on_message_unguarded(
        &mut self,
        message: Message,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) -> bool {
        let capacity = self.settings.inbox_capacity;
        let Some(running) = self.running.as_mut() else {
            return false;
        };
        if running.in_flight.is_some() {
            if running.inbox.len() >= capacity {
                return false;
            }
            running.inbox.push_back(Input::Message(message));
            return true;
        }
        // Errors are messages raft-rs refuses (e.g. from a stale term); nothing to do.
        let _ = running.node.step(message);
        self.drive(trace, now, out);
        true
    }

    fn on_snapshot_report_unguarded(
        &mut self,
        to: u64,
        delivered: bool,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if running.in_flight.is_some() {
            // Never dropped for a full inbox: a lost report would stall the follower for good.
            running.inbox.push_back(Input::SnapshotReport(to, status));
            return;
        }
        running.node.report_snapshot(to, status);
        self.drive(trace, now, out);
    }

    fn on_request_unguarded(
        &mut self,
        request: RequestId,
        command: Command,
        stamp_ms: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        let capacity = self.settings.inbox_capacity;
        let Some(running) = self.running.as_mut() else {
            out.answers.push((request, Answer::Unavailable));
            return;
        };
        if running.in_flight.is_some() {
            if running.inbox.len() >= capacity {
                out.answers.push((request, Answer::Busy));
            } else {
                running
                    .inbox
                    .push_back(Input::Request(request, command, stamp_ms));
            }
            return;
        }
        running.propose(request, command, stamp_ms, out);
        self.drive(trace, now, out);
    }

    fn change_members_unguarded(
        &mut self,
        id: AdminId,
        change: MembershipChange,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        let Some(running) = self.running.as_mut() else {
            out.changes.push((id, Err(MembershipError::Stopped)));
            return;
        };
        if running.in_flight.is_some() {
            // The driver takes admin requests between turns; never dropped.
            running.inbox.push_back(Input::Change(id, change));
            return;
        }
        running.change_members(id, change, out);
        self.drive(trace, now, out);
    }

    fn transfer_leader_unguarded(
        &mut self,
        id: AdminId,
        to: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        let Some(running) = self.running.as_mut() else {
            out.transfers.push((id, Err(TransferError::Stopped)));
            return;
        };
        if running.in_flight.is_some() {
            running.inbox.push_back(Input::Transfer(id, to));
            return;
        }
        running.transfer_leader(id, to, out);
        self.drive(trace, now, out);
    }

    fn on_synced_unguarded(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let Some(ready) = running.in_flight.take() else {
            return;
        };
        self.disk = running.node.store().sync();
        running.dirty = false;
        trace.record(
            now,
            Event::Synced {
                node: self.id,
                last_index: running.node.raft.raft_log.last_index(),
            },
        );
        let interval = self.settings.snapshot_interval;
        if let Err(reason) = running.phase_two(ready, interval, self.id, trace, now, out) {
            self.fail(reason, out);
            return;
        }
        self.drive(trace, now, out);
    }

    /// The room log of this replica after `after` (None while down): the hosted room's log on
    /// a hub replica, the mirror's (local seqs) on a follower replica.
    pub fn room_log(&self, room: &RoomId, after: u64) -> Option<Vec<LogItem>> {
        self.running
            .as_ref()
            .map(|running| running.machine.log_after(room, after, None))
    }

    /// What `client` would be delivered from this replica after `after` (None while down).
    pub fn deliver(&self, room: &RoomId, client: &ClientId, after: u64) -> Option<Vec<LogItem>> {
        self.running
            .as_ref()
            .map(|running| running.machine.log_after(room, after, Some(client)))
    }

    /// `f` of the hosted room's applied state (None while down or before the room exists).
    pub fn with_room<R>(&self, room: &RoomId, f: impl FnOnce(&RoomState) -> R) -> Option<R> {
        let running = self.running.as_ref()?;
        let data = running.machine.shards.get(0).read();
        data.room(room).map(f)
    }

    fn resume_unguarded(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        self.drive(trace, now, out);
    }

    /// Phase one of the next Ready, if there is one and none is in flight.
    fn drive(&mut self, trace: &mut Trace, now: u64, out: &mut Outbox) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if running.in_flight.is_some() || !running.node.has_ready() {
            return;
        }
        if let Err(reason) = running.phase_one(self.id, trace, now, out) {
            self.fail(reason, out);
        }
    }

    fn fail(&mut self, reason: String, out: &mut Outbox) {
        self.crash(out);
        out.failure = Some(reason);
    }
}

impl Running {
    /// Every Ready goes through the disk, as in the driver's loop turn, so the replica is busy
    /// until [`Replica::on_synced`].
    fn phase_one(
        &mut self,
        node: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) -> Result<(), String> {
        let mut ready = self.node.ready();
        trace.record(
            now,
            Event::Ready {
                node,
                entries: ready.entries().len(),
                committed: ready.committed_entries().len(),
                messages: ready.messages().len() + ready.persisted_messages().len(),
                commit: ready.hs().map_or(0, |hs| hs.commit),
                term: ready.hs().map_or(0, |hs| hs.term),
            },
        );
        // Only a leader's messages may leave before its own append is durable (Raft thesis
        // §10.2.1); raft-rs puts a follower's into `persisted_messages`.
        out.messages.extend(ready.take_messages());
        self.install_snapshot(ready.snapshot(), out)?;
        self.apply_committed(ready.take_committed_entries(), node, trace, now, out)?;
        self.step_down_if_removed(out);
        let storage = self.node.mut_store();
        storage
            .append(ready.entries())
            .map_err(|fault| format!("append: {}", fault.0))?;
        if let Some(hard_state) = ready.hs() {
            storage.set_hard_state(hard_state);
        }
        if let Some(soft) = ready.ss() {
            self.on_soft_state(soft.raft_state, soft.leader_id, node, trace, now, out);
        }
        self.dirty = true;
        self.in_flight = Some(ready);
        out.sync_needed = true;
        Ok(())
    }

    /// After the sync: `persisted_messages`, `advance`, the `LightReady`, `advance_apply`, a
    /// snapshot when due, then the inputs that queued up meanwhile.
    fn phase_two(
        &mut self,
        mut ready: Ready,
        snapshot_interval: u64,
        node: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) -> Result<(), String> {
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
            self.dirty = true;
        }
        out.messages.extend(light.take_messages());
        self.apply_committed(light.take_committed_entries(), node, trace, now, out)?;
        self.step_down_if_removed(out);
        self.node.advance_apply();
        self.maybe_snapshot(snapshot_interval)?;
        for input in std::mem::take(&mut self.inbox) {
            match input {
                // Errors are messages raft-rs refuses (e.g. from a stale term).
                Input::Message(message) => {
                    let _ = self.node.step(message);
                }
                Input::Request(request, command, stamp_ms) => {
                    self.propose(request, command, stamp_ms, out)
                }
                Input::SnapshotReport(to, status) => self.node.report_snapshot(to, status),
                Input::Change(id, change) => self.change_members(id, change, out),
                Input::Transfer(id, to) => self.transfer_leader(id, to, out),
            }
        }
        for _ in 0..std::mem::take(&mut self.ticks_due) {
            self.tick(out);
            trace.record(now, Event::Tick { node });
        }
        Ok(())
    }

    fn is_removed(&self) -> bool {
        let conf = self.node.store().conf_state();
        *conf != ConfState::default() && !is_member(conf, self.node.raft.id)
    }

    /// The leader this replica knows (0: none; always 0 once removed, as `Group::leader_id`).
    fn leader_hint(&self) -> u64 {
        if self.is_removed() {
            0
        } else {
            self.node.raft.leader_id
        }
    }

    /// One Raft tick, then the transfer's retries and deadline and a stepped-down leader's
    /// hand-off (`Group::tick`, `admin_tick`).
    fn tick(&mut self, out: &mut Outbox) {
        self.tick_orphans(out);
        self.node.tick();
        if let Some(transfer) = &mut self.transfer {
            let step = transfer.deadline.tick(&self.node.raft);
            if step.perform(&mut self.node) {
                let raft = &self.node.raft;
                let leader = (raft.leader_id != 0).then_some(raft.leader_id);
                let transfer = self.transfer.take().expect("checked above");
                for id in transfer.waiters {
                    out.transfers
                        .push((id, Err(TransferError::TimedOut { leader })));
                }
            }
        }
        if let Some(handoff) = &mut self.handoff {
            if !handoff.tick(&mut self.node.raft) {
                self.handoff = None;
            }
        }
    }

    /// `Group::tick_orphans`: the orphans still waiting when the wait ends are answered
    /// `Dropped`.
    fn tick_orphans(&mut self, out: &mut Outbox) {
        self.pending
            .tick(|request| out.answers.push((request, Answer::Dropped)));
    }

    /// `Group::step_down_if_removed`: right after applying, a leader that applied its own
    /// removal steps down (its queued messages go out now) and hands leadership over.
    fn step_down_if_removed(&mut self, out: &mut Outbox) {
        if let Some(stepped) = step_down_if_removed(&mut self.node.raft) {
            out.messages.extend(stepped.messages);
            out.stepped_down = true;
            self.handoff = stepped.handoff;
        }
    }

    /// `Group::change_members`: the product's checks on the leader, then the proposal.
    fn change_members(&mut self, id: AdminId, change: MembershipChange, out: &mut Outbox) {
        let raft = &self.node.raft;
        let planned =
            change.plan_on_leader(raft, self.node.store().conf_state(), self.change.is_some());
        let conf_change = match planned {
            Ok(conf_change) => conf_change,
            Err(refused) => {
                out.changes.push((id, Err(refused)));
                return;
            }
        };
        let probed = |node| {
            raft.prs()
                .get(node)
                .is_some_and(|progress| progress.state == ProgressState::Probe)
        };
        let promoted_while_probed =
            matches!(change, MembershipChange::Promote(node) if probed(node));
        if self
            .node
            .propose_conf_change(Vec::new(), conf_change)
            .is_err()
        {
            out.changes.push((id, Err(MembershipError::Busy)));
            return;
        }
        let raft = &self.node.raft;
        let index = raft.raft_log.last_index();
        if raft.pending_conf_index != index {
            out.changes.push((id, Err(MembershipError::Dropped)));
            return;
        }
        self.change = Some((raft.term, index, id));
        out.promoted_while_probed |= promoted_while_probed;
    }

    /// `Group::transfer_leader`.
    fn transfer_leader(&mut self, id: AdminId, to: u64, out: &mut Outbox) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            out.transfers.push((id, Err(TransferError::NotLeader)));
            return;
        }
        if to == raft.id {
            out.transfers.push((id, Ok(())));
            return;
        }
        if !self.node.store().conf_state().voters.contains(&to) {
            out.transfers.push((id, Err(TransferError::NotAVoter(to))));
            return;
        }
        match &mut self.transfer {
            Some(transfer) if transfer.deadline.to() == to => {
                transfer.waiters.push(id);
                return;
            }
            Some(transfer) => {
                let busy = transfer.deadline.to();
                out.transfers
                    .push((id, Err(TransferError::InProgress(busy))));
                return;
            }
            None => {}
        }
        self.node.transfer_leader(to);
        self.transfer = Some(Transfer {
            deadline: TransferDeadline::new(to, self.transfer_ticks),
            waiters: vec![id],
        });
    }

    /// Applies a committed conf change (`Group::apply_entry`, `on_conf_applied`).
    fn apply_conf_change(&mut self, entry: &Entry, out: &mut Outbox) -> Result<(), String> {
        let change = conf_change::decode(&entry.data)
            .map_err(|err| format!("decode conf change {}: {err}", entry.index))?;
        let conf = match self.counted_removed_voter(&change) {
            Some(conf) => {
                self.miscounting = true;
                conf
            }
            None => {
                let conf = self
                    .node
                    .apply_conf_change(&change)
                    .map_err(|err| format!("apply conf change {}: {err}", entry.index))?;
                if self.miscounting {
                    simple_change(self.node.store().conf_state(), &change)
                } else {
                    conf
                }
            }
        };
        self.node.mut_store().set_conf_state(&conf);
        self.dirty = true;
        let named = self.node.store().snapshot_conf_state();
        if conf
            .voters
            .iter()
            .chain(&conf.learners)
            .any(|node| !is_member(named, *node))
        {
            self.snapshot_due = true;
        }
        out.configurations.push((entry.index, conf));
        Ok(())
    }

    /// The planted bug [`PlantedBug::CountsRemovedVoter`]: a leader applying the removal of
    /// another voter removes a third voter from its own Raft instead, so the removed one keeps
    /// counting toward its quorum; the configuration it stores and reports is the right one.
    fn counted_removed_voter(&mut self, change: &ConfChangeV2) -> Option<ConfState> {
        if self.bug != PlantedBug::CountsRemovedVoter || self.node.raft.state != StateRole::Leader {
            return None;
        }
        let [single] = change.changes.as_slice() else {
            return None;
        };
        let removed = single.node_id;
        let me = self.node.raft.id;
        let conf = self.node.store().conf_state().clone();
        if single.get_change_type() != ConfChangeType::RemoveNode
            || removed == me
            || !conf.voters.contains(&removed)
        {
            return None;
        }
        let instead = *conf
            .voters
            .iter()
            .find(|id| **id != removed && **id != me)?;
        let mut wrong = ConfChangeSingle {
            node_id: instead,
            ..ConfChangeSingle::default()
        };
        wrong.set_change_type(ConfChangeType::RemoveNode);
        let mut wrong_change = ConfChangeV2::default();
        wrong_change.mut_changes().push(wrong);
        self.node.apply_conf_change(&wrong_change).ok()?;
        let mut right = conf;
        right.voters.retain(|id| *id != removed);
        Some(right)
    }

    /// Answers the pending change once `entry` (just applied) is its entry or passed it.
    fn settle_change(&mut self, entry: &Entry, out: &mut Outbox) {
        let Some((term, index, id)) = self.change else {
            return;
        };
        if entry.index < index {
            return;
        }
        self.change = None;
        let is_conf_change = matches!(
            entry.get_entry_type(),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2
        );
        if entry.index == index && entry.term == term && is_conf_change {
            let conf = self.node.store().conf_state().clone();
            out.changes.push((id, Ok(conf)));
        } else {
            out.changes.push((id, Err(MembershipError::Dropped)));
        }
    }

    fn drop_pending_change(&mut self, out: &mut Outbox) {
        if let Some((_, _, id)) = self.change.take() {
            out.changes.push((id, Err(MembershipError::Dropped)));
        }
    }

    fn propose(&mut self, request: RequestId, command: Command, stamp_ms: u64, out: &mut Outbox) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || raft.lead_transferee.is_some() {
            out.answers.push((
                request,
                Answer::NotLeader {
                    leader: self.leader_hint(),
                },
            ));
            return;
        }
        if !self.node.store().conf_state().voters.contains(&raft.id) {
            out.proposed_as_non_voter = true;
        }
        let entry = Stamped {
            ts_ms: stamp_ms,
            command,
        }
        .encode();
        if self.node.propose(COMMAND_CONTEXT.to_vec(), entry).is_err() {
            // As leader, raft-rs drops a proposal only at `max_uncommitted_size`.
            out.answers.push((request, Answer::Busy));
            return;
        }
        let term = self.node.raft.term;
        let index = self.node.raft.raft_log.last_index();
        self.pending.push(term, index, request, |stale| {
            out.answers.push((stale, Answer::Dropped))
        });
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot, out: &mut Outbox) -> Result<(), String> {
        if snapshot.get_metadata().index == 0 {
            return Ok(());
        }
        self.machine.restore(&snapshot.data)?;
        self.node
            .mut_store()
            .install_snapshot(snapshot)
            .map_err(|fault| format!("install snapshot: {}", fault.0))?;
        let meta = snapshot.get_metadata();
        self.applied_index = meta.index;
        self.applied_term = meta.term;
        self.pending
            .drain(|request| out.answers.push((request, Answer::Dropped)));
        self.drop_pending_change(out);
        out.restored = true;
        Ok(())
    }

    fn apply_committed(
        &mut self,
        entries: Vec<Entry>,
        node: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) -> Result<(), String> {
        for entry in entries {
            if entry.index != self.applied_index + 1 {
                return Err(format!(
                    "committed entry {} delivered after applied index {}",
                    entry.index, self.applied_index
                ));
            }
            let output = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.context.as_ref() == COMMAND_CONTEXT => {
                    Some(self.machine.apply(entry.index, &entry.data))
                }
                // The empty entry of a new leader (Raft §8).
                EntryType::EntryNormal => None,
                EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry, out)?;
                    None
                }
                EntryType::EntryConfChange => {
                    return Err(format!(
                        "version 1 configuration change at {} that nobody proposed",
                        entry.index
                    ));
                }
            };
            self.applied_index = entry.index;
            self.applied_term = entry.term;
            let outcome = match (&output, entry.get_entry_type()) {
                (Some(output), _) => outcome_name(output),
                (None, EntryType::EntryNormal) => "empty",
                (None, _) => "conf-change",
            };
            trace.record(
                now,
                Event::Applied {
                    node,
                    index: entry.index,
                    term: entry.term,
                    outcome,
                },
            );
            self.settle_change(&entry, out);
            out.applied |= output.is_some();
            // Proposals before this entry, or another term's at its index, can no longer apply
            // (another leader's entries won).
            let ours = self.pending.take(entry.term, entry.index, |request| {
                out.answers.push((request, Answer::Dropped))
            });
            if let Some(request) = ours {
                match output {
                    Some(output) => {
                        out.acknowledged.push((entry.index, entry.term));
                        out.answers.push((request, Answer::Applied(output)))
                    }
                    None => out.answers.push((request, Answer::Dropped)),
                }
            }
        }
        Ok(())
    }

    fn on_soft_state(
        &mut self,
        role: StateRole,
        leader: u64,
        node: u64,
        trace: &mut Trace,
        now: u64,
        out: &mut Outbox,
    ) {
        if self.role == StateRole::Leader && role != StateRole::Leader {
            // raft-rs forgets uncommitted proposals silently when it steps down; they often
            // commit under the next leader, whose log this replica applies: orphans wait for
            // their entries (`Group::on_soft_state`).
            self.pending.orphan_all(self.orphan_wait_ticks, |request| {
                out.answers.push((request, Answer::Dropped))
            });
        }
        if role != StateRole::Leader {
            self.drop_pending_change(out);
        }
        if let Some(transfer) = self
            .transfer
            .take_if(|transfer| transfer.deadline.to() == leader)
        {
            for id in transfer.waiters {
                out.transfers.push((id, Ok(())));
            }
        }
        if role != self.role || leader != self.leader {
            trace.record(
                now,
                Event::Role {
                    node,
                    leader,
                    role: role_name(role),
                },
            );
        }
        self.role = role;
        self.leader = leader;
    }

    /// Snapshots and compacts once `interval` entries were applied since the last snapshot.
    /// Runs after `advance`, when everything applied is also within the stored commit index.
    fn maybe_snapshot(&mut self, interval: u64) -> Result<(), String> {
        let snapshot_index = self.node.store().snapshot_index();
        let unsnapshotted = self.applied_index.saturating_sub(snapshot_index);
        let membership_due = std::mem::take(&mut self.snapshot_due);
        if unsnapshotted < interval && !(membership_due && unsnapshotted > 0) {
            return Ok(());
        }
        let mut snapshot = Snapshot {
            data: self.machine.snapshot().into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = self.applied_index;
        meta.term = self.applied_term;
        meta.set_conf_state(self.node.store().conf_state().clone());
        self.node
            .mut_store()
            .compact(snapshot)
            .map_err(|fault| format!("compact: {}", fault.0))?;
        self.dirty = true;
        Ok(())
    }
}

/// The shard's state machine, optionally with a bug planted on purpose so the tests can show
/// that the checker notices.
struct Machine {
    node: u64,
    bug: PlantedBug,
    shards: Shards,
    inner: ShardMachine,
}

impl Machine {
    fn new(node: u64, bug: PlantedBug) -> Self {
        let shards = Shards::new(1);
        let inner = shards.machine(0);
        Machine {
            node,
            bug,
            shards,
            inner,
        }
    }

    fn apply(&mut self, index: u64, command: &[u8]) -> ApplyOutput {
        if self.bug == PlantedBug::None {
            // Decoding twice costs a tenth of a debug-build run.
            return self.inner.apply(index, command);
        }
        let Ok(stamped) = Stamped::decode(command) else {
            return self.inner.apply(index, command);
        };
        match (self.bug, &stamped.command) {
            (PlantedBug::SkipMessagesOn(node), Command::AppMessage { room, .. })
                if node == self.node =>
            {
                // Answers as if it had appended the message, without appending it.
                ApplyOutput::Submitted(SubmitVerdict::Accepted {
                    accepted_ts_ms: stamped.ts_ms,
                    seq: self.last_seq(room) + 1,
                })
            }
            (
                PlantedBug::AckLosingCommits,
                Command::Handshake {
                    room,
                    bundle: HandshakeBundle::Commit { .. },
                    ..
                },
            ) => {
                let room = room.clone();
                match self.inner.apply(index, command) {
                    // Tells the loser of an epoch that it won, at a seq the next item takes.
                    ApplyOutput::Updated(UpdateVerdict::WrongEpoch { .. }) => {
                        ApplyOutput::Updated(UpdateVerdict::Success {
                            accepted_ts_ms: stamped.ts_ms,
                            seq: self.last_seq(&room) + 1,
                        })
                    }
                    other => other,
                }
            }
            (
                PlantedBug::FollowerIgnoresHubSeqs,
                Command::FanoutReceived {
                    room,
                    items,
                    body_hash,
                },
            ) => {
                // The follower drops the hub's numbering and falls back to recognising
                // byte-identical notify bodies only.
                let items = items
                    .iter()
                    .cloned()
                    .map(|item| ReceivedItem {
                        hub_seq: None,
                        ..item
                    })
                    .collect();
                let stripped = Stamped {
                    ts_ms: stamped.ts_ms,
                    command: Command::FanoutReceived {
                        room: room.clone(),
                        items,
                        body_hash: *body_hash,
                    },
                };
                self.inner.apply(index, &stripped.encode())
            }
            _ => self.inner.apply(index, command),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.inner.restore(snapshot)
    }

    fn last_seq(&self, room: &RoomId) -> u64 {
        self.shards
            .get(0)
            .read()
            .room(room)
            .map_or(0, |state| state.last_seq())
    }

    /// Log items of the hosted or mirrored room after `after`; with `client`, only those
    /// delivered to it (DESIGN.md §4), as `RoomCore` reads them for push streams.
    fn log_after(&self, room: &RoomId, after: u64, client: Option<&ClientId>) -> Vec<LogItem> {
        let data = self.shards.get(0).read();
        let Some(state) = data.view(room) else {
            return Vec::new();
        };
        state
            .items_after(after)
            .iter()
            .filter(|item| client.is_none_or(|client| state.visible_to(item, client)))
            .cloned()
            .collect()
    }
}

/// `conf` after the single changes of `change`, as raft-rs' simple changes make it (for a
/// replica whose Raft tracks something else: [`PlantedBug::CountsRemovedVoter`]).
fn simple_change(conf: &ConfState, change: &ConfChangeV2) -> ConfState {
    let mut conf = conf.clone();
    for single in &change.changes {
        let node = single.node_id;
        conf.voters.retain(|id| *id != node);
        conf.learners.retain(|id| *id != node);
        match single.get_change_type() {
            ConfChangeType::AddNode => conf.voters.push(node),
            ConfChangeType::AddLearnerNode => conf.learners.push(node),
            ConfChangeType::RemoveNode => {}
        }
    }
    conf
}

/// What a leader reports of its group (`ShardStatus` on the leader).
#[derive(Debug, Clone)]
pub struct LeaderView {
    pub term: u64,
    pub commit: u64,
    /// Every member's matched index, this node included.
    pub progress: BTreeMap<u64, u64>,
}

/// Whether `node` is a voter (in either half) or a learner of `conf` (`membership::is_member`).
pub fn is_member(conf: &ConfState, node: u64) -> bool {
    conf.voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .any(|id| *id == node)
}

/// A short, stable name of an apply outcome for the trace.
pub fn outcome_name(output: &ApplyOutput) -> &'static str {
    match output {
        ApplyOutput::RoomCreated(Ok(())) => "room-created",
        ApplyOutput::RoomCreated(Err(CreateRoomRejection::AlreadyExists)) => "room-exists",
        ApplyOutput::RoomCreated(Err(CreateRoomRejection::Invalid(_))) => "room-invalid",
        ApplyOutput::Updated(UpdateVerdict::Success { .. }) => "update-success",
        ApplyOutput::Updated(UpdateVerdict::WrongEpoch { .. }) => "wrong-epoch",
        ApplyOutput::Updated(UpdateVerdict::NotAllowed { .. }) => "update-not-allowed",
        ApplyOutput::Updated(UpdateVerdict::InvalidProposal { .. }) => "invalid-proposal",
        ApplyOutput::Submitted(SubmitVerdict::Accepted { .. }) => "message-accepted",
        ApplyOutput::Submitted(SubmitVerdict::NotAllowed { .. }) => "message-not-allowed",
        ApplyOutput::Submitted(SubmitVerdict::EpochTooOld { .. }) => "epoch-too-old",
        ApplyOutput::Rejected(_) => "rejected",
        ApplyOutput::ClusterMeta(_) => "cluster-meta",
        ApplyOutput::ProviderKeys { .. } => "provider-keys",
        ApplyOutput::ShardDescriptor(_) => "shard-descriptor",
        ApplyOutput::RoomPinned(_) => "room-pinned",
        ApplyOutput::RoomFrozen(_)
        | ApplyOutput::RoomAdopted(_)
        | ApplyOutput::RoomRepinned(_)
        | ApplyOutput::RoomReleased(_) => "room-move",
        ApplyOutput::RoomMoving { .. } => "room-moving",
        ApplyOutput::RoomMoved { .. } => "room-moved",
        ApplyOutput::Registered(_)
        | ApplyOutput::Published(_)
        | ApplyOutput::Claimed(_)
        | ApplyOutput::ProfileSet(_)
        | ApplyOutput::PreferencesSet(_)
        | ApplyOutput::ConsentRecorded(_)
        | ApplyOutput::Acked
        | ApplyOutput::Housekept => "directory",
        ApplyOutput::BlockSet(_) | ApplyOutput::AbuseReported(_) => "moderation",
        ApplyOutput::FanoutDelivered
        | ApplyOutput::FanoutReceived { .. }
        | ApplyOutput::MirrorJoined { .. } => "fanout",
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::Leader => "leader",
        StateRole::PreCandidate => "pre-candidate",
    }
}

/// Entry context marking a client command (as in `cluster::group`), so the empty entries a new
/// leader appends are told apart deterministically.
const COMMAND_CONTEXT: &[u8] = &[1];

/// Ticks remembered while a sync is in flight; more would only fire elections in a burst.
const MAX_TICKS_DUE: u32 = 4;
