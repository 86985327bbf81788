//! Membership changes, leadership transfer and per-shard status.
//!
//! # Changing a shard's members
//!
//! [`ClusterHandle::change_members`] proposes one [`MembershipChange`] on the shard's leader as
//! a raft-rs `ConfChangeV2` holding a single change. A single change moves at most one voter,
//! which Raft allows without joint consensus (Raft thesis §4.1), and raft-rs then uses its
//! "simple" protocol: no joint configuration is ever entered, so none has to be left. (If one
//! were found in the log, changes are refused with [`MembershipError::ChangeInProgress`] until
//! raft-rs' auto-leave has left it.) One change at a time per shard: raft-rs itself silently
//! turns a second conf change into an empty entry while one is unapplied, so the leader refuses
//! it first ([`MembershipError::ChangeInProgress`]); a newly elected leader counts its whole
//! unapplied log as possibly holding one, which also gives the single-server-change safety fix
//! (a new leader commits an entry of its term before it changes the configuration).
//!
//! The change is validated on the leader against its applied configuration, which is exactly
//! the configuration the change will apply to (no other change is pending): adding a node that
//! is already a member, promoting a node that is not a learner (or a learner that has not caught
//! up: the leader neither replicates to it normally nor knows it holds the leader's whole log),
//! removing a non-member, the last voter, or the leader itself are refused with their own
//! [`MembershipError`] variants and change nothing. The leader never removes itself: transfer
//! leadership first ([`ClusterHandle::transfer_leader`]). [`MembershipChange::plan_on_leader`]
//! is the whole check as a pure function of the leader's raft-rs state.
//!
//! The answer comes once the conf-change entry is applied on the leader, with the membership
//! it produced. Every replica applies the same entry at the same index, stores the new
//! configuration durably with the turn's write, and raft-rs switches its quorum rules then.
//!
//! # Adding a node
//!
//! A node joining an existing cluster starts with [`crate::ClusterConfig::join_existing`]: its
//! shards without local state start as empty, uninitialised groups (no configuration, no log),
//! which never campaign and only answer the leader. The operator then, per shard,
//! `AddLearner(node)`, waits until the learner caught up ([`ClusterHandle::shard_status`]
//! shows its matched index on the leader), and `Promote(node)`. The node is not ready
//! ([`ClusterHandle::is_ready`]) while any of its groups is still uninitialised.
//!
//! A new node always catches up from a snapshot, never from the log: the initial configuration
//! of a bootstrapped group is not in its log, so a log replayed from index 1 would leave the new
//! node without it. After applying a change that adds a node the latest snapshot does not name,
//! every replica snapshots (and compacts its log) at the end of that turn, and the storage never
//! sends a node a snapshot whose configuration does not name it (raft-rs on the receiver would
//! refuse it). The leader probes the empty node, finds its log compacted and sends the snapshot.
//!
//! # Removing a node
//!
//! `Remove(node)` applies on every replica. On the removed node itself (once it applies the
//! entry: the leader broadcasts the commit of a conf change to every member before it applies
//! it and forgets the node, which reaches the node if the leader is replicating to it normally),
//! the group no longer counts itself a member: raft-rs stops it campaigning, proposals answer
//! `NotLeader`, [`ClusterHandle::leader`] answers `None` for the shard and the shard no longer
//! counts for readiness (a node that is a member of no shard is not ready). The group keeps
//! ticking and keeps its data in the data directory until the node is stopped and the directory
//! deleted; nothing deletes it automatically. A removed node that missed the commit (cut off
//! at the time, or still being probed by a leader elected just before) still believes it is a
//! member and, no longer hearing from the leader, pre-votes periodically; pre-vote keeps it
//! from disturbing anyone (its log lacks the removal, so no one grants it a vote).
//!
//! A removed node can be added back to the shard with the replica it kept, in memory or restarted
//! from disk (the node crate's placement may move a shard back to a node it left): `AddLearner`,
//! then `Promote`, as for a new node. The kept log agrees with the leader's up to the node's commit
//! index (an uncommitted tail that differs is replaced, as on any follower): the leader's first
//! append moves the node to the leader's term, raft-rs' probe finds where the two logs part, and
//! the leader sends what follows; or, once it compacted past that point, a snapshot, which raft-rs
//! accepts as long as its configuration names the node (raft-rs 0.7 `Raft::restore`), whatever
//! configuration the node believed in, and which replaces the state machine. From the log, the node
//! applies what it lacks like any other entries (its new addition, and its removal if it missed
//! it); either way it ends with exactly the leader's state. `cluster/tests/membership.rs`
//! (`removed_node_added_back`) checks this for a node that applied its removal, one restarted
//! since, and one removed while cut off (still a voter at an older term in its own eyes), each by
//! log and by snapshot. Starting the node with a fresh data directory and `join_existing` and
//! adding it like a new one works too.
//!
//! A leader that applies its own removal (possible only if leadership moved to the node after
//! the change was proposed: raft-rs lets a voter campaign while a removal of it sits
//! uncommitted in its log, and a new leader commits it with its first entry) steps down in the
//! same turn, before anything else touches its Raft state ([`step_down_if_removed`]). raft-rs
//! 0.7 leaves such a leader leading without its own progress entry (`post_conf_change` returns
//! early; its "step down" is a TODO), and the next commit or persisted entry of that leader
//! unwraps that entry and panics (`maybe_commit`, `on_persist_entries`), which stopped the
//! shard group on that node. Refusing to campaign with a removal in the log instead would cost
//! liveness: with the old leader down, the node holding the uncommitted removal may be the only
//! one the others can elect. The stepped-down node then tells the most up-to-date voter to
//! campaign at once ([`Handoff`]) on its next ticks, when that voter has applied the removal
//! too (raft-rs refuses to campaign with a committed conf change unapplied); if that fails, the
//! voters elect a leader after an election timeout.
//!
//! # Leadership transfer
//!
//! [`ClusterHandle::transfer_leader`] asks the shard's leader to hand leadership to a voter
//! (raft-rs `transfer_leader`: the leader catches the target up, then tells it to campaign at
//! once). Proposals are refused `NotLeader` meanwhile. raft-rs tells the target only once, and
//! a target that has not applied its own promotion yet ignores it, so the leader asks again
//! every eighth of the deadline. The answer comes once this node sees the target lead (soft
//! state), or [`TransferError::TimedOut`] after twice the election timeout, when the leader
//! gives up and takes proposals again. Draining a node is one transfer per shard it leads.
//!
//! # Status
//!
//! [`ClusterHandle::status`] and [`ClusterHandle::shard_status`] read what the driver publishes
//! at the end of each turn that touched the shard and on every tick (of an awake shard; a
//! hibernating one has nothing new): cheap, and at most one tick old. `hibernating` says
//! whether the replica sleeps, and [`ClusterHandle::hibernating_groups`] counts the node's
//! sleeping replicas.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::TrySendError;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Message};
use raft::{ProgressState, Raft, RawNode, StateRole, Storage};

use crate::metrics::bump;
use crate::{ClusterHandle, NodeId, ShardId, StateMachine};

/// One change of a shard's membership ([`ClusterHandle::change_members`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a node as a learner: it receives the log (first a snapshot) but does not vote and
    /// does not count for commits.
    AddLearner(NodeId),
    /// Makes a learner a voter.
    Promote(NodeId),
    /// Removes a voter or a learner.
    Remove(NodeId),
}

impl MembershipChange {
    /// The rules [`ClusterHandle::change_members`] checks against the configuration, as a pure
    /// function: this change checked against the applied configuration `conf` of a shard led
    /// by `leader`, as the single-change `ConfChangeV2` to propose, or the rule that refuses it.
    /// The leader checks its own state first (it leads, no change is pending, a promoted
    /// learner is replicating), so `conf` is the configuration the change will apply to. Public
    /// for the deterministic simulator (`tests/src/sim`), which drives raft-rs directly.
    pub fn plan(self, conf: &ConfState, leader: NodeId) -> Result<ConfChangeV2, MembershipError> {
        plan_change(conf, self, leader)
    }

    /// Everything [`ClusterHandle::change_members`] checks on the shard's leader, as a pure
    /// function of its raft-rs state `raft` and applied configuration `conf`: it leads and
    /// transfers nothing ([`MembershipError::NotLeader`]); no change is pending
    /// (`change_pending`: one this leader proposed and has not applied; raft-rs' pending index
    /// covers one a predecessor left unapplied) ([`MembershipError::ChangeInProgress`]); the
    /// configuration rules of [`Self::plan`]; and a learner to promote has caught up
    /// ([`learner_caught_up`], else [`MembershipError::LearnerBehind`]). Public for the
    /// deterministic simulator (`tests/src/sim`), which drives raft-rs directly.
    pub fn plan_on_leader<T: Storage>(
        self,
        raft: &Raft<T>,
        conf: &ConfState,
        change_pending: bool,
    ) -> Result<ConfChangeV2, MembershipError> {
        if raft.state != StateRole::Leader || raft.lead_transferee.is_some() {
            return Err(MembershipError::NotLeader);
        }
        // raft-rs would turn a second conf change into an empty entry without a word.
        if change_pending || raft.has_pending_conf() {
            return Err(MembershipError::ChangeInProgress);
        }
        let conf_change = self.plan(conf, raft.id)?;
        if let MembershipChange::Promote(node) = self {
            if !learner_caught_up(raft, node) {
                return Err(MembershipError::LearnerBehind(node));
            }
        }
        Ok(conf_change)
    }
}

/// Whether the leader `raft` may promote learner `node`: it replicates to it normally, or the
/// learner holds the leader's whole log (matched at its last index) whatever raft-rs' progress
/// state. raft-rs leaves a follower in the probe state until an append moves its matched index
/// (a report of it unreachable, or a snapshot answered while still counted in flight, puts it
/// there), and a leader whose log does not grow sends a member that matched its last index no
/// append: a caught-up learner of an idle (or hibernating) shard would be refused until a write.
pub fn learner_caught_up<T: Storage>(raft: &Raft<T>, node: NodeId) -> bool {
    raft.prs().get(node).is_some_and(|progress| {
        progress.state == ProgressState::Replicate || progress.matched >= raft.raft_log.last_index()
    })
}

/// What a leader that applied its own removal did ([`step_down_if_removed`]).
#[derive(Debug)]
pub struct StepDown {
    /// Messages raft-rs queued while the node still led (appends, commit broadcasts): send them
    /// with the turn's others. They must leave raft-rs now: `RawNode::advance` refuses a
    /// follower with messages queued.
    pub messages: Vec<Message>,
    /// The voter to hand leadership to, if any voter's progress was known.
    pub handoff: Option<Handoff>,
}

/// A removed leader's hand-off: on each of its next ticks (an election timeout's worth), while
/// its term stands, it tells the most up-to-date voter to campaign at once (`MsgTimeoutNow`).
/// Not at the step-down itself: that voter learns the removal's commit in the same frame and
/// refuses to campaign until it applied it. A repeat after the voter campaigned carries an
/// older term and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    to: NodeId,
    term: u64,
    ticks_left: usize,
}

impl Handoff {
    /// The voter told to campaign.
    pub fn to(&self) -> NodeId {
        self.to
    }

    /// Once per tick of the stepped-down replica `raft`: tells the voter to campaign. Returns
    /// false once the hand-off is over (it was the last tick, or `raft` moved to a newer term);
    /// then drop it.
    pub fn tick<T: Storage>(&mut self, raft: &mut Raft<T>) -> bool {
        if self.ticks_left == 0 || raft.term != self.term || raft.state == StateRole::Leader {
            return false;
        }
        self.ticks_left -= 1;
        raft.send_timeout_now(self.to);
        self.ticks_left > 0
    }
}

/// A leadership transfer a leader runs ([`ClusterHandle::transfer_leader`]): its target and
/// its deadline in ticks. [`Self::tick`] is the sans-IO step the driver takes once per tick
/// (and the deterministic simulator, `tests/src/sim`, with it): from the transfer and the
/// leader's raft-rs state it says what to do, [`TransferStep::perform`] does it.
///
/// raft-rs tells the target to campaign (`MsgTimeoutNow`) once, when it has caught up; a
/// target that has not applied its own promotion yet ignores it, and the message may be lost.
/// So the leader tells it again every eighth of the deadline while it still leads (a
/// candidate or a newer leader ignores the repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferDeadline {
    to: NodeId,
    /// Ticks until the transfer times out.
    ticks_left: usize,
    /// Ticks between two repeats: an eighth of the deadline, at least one.
    retry_every: usize,
}

/// What a leader does about its leadership transfer at one tick ([`TransferDeadline::tick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStep {
    /// Nothing this tick.
    Wait,
    /// raft-rs still transfers to this caught-up target: tell it again to campaign
    /// (`Raft::send_timeout_now`). Not by stepping the transfer again: that would also restart
    /// the leader's election clock and so postpone its check-quorum.
    TellAgain(NodeId),
    /// This node still leads but raft-rs gave its transfer up (after one election timeout;
    /// the deadline is two): start it again (`RawNode::transfer_leader`).
    Restart(NodeId),
    /// The deadline passed: answer every waiter [`TransferError::TimedOut`] and drop the
    /// transfer. `abort`: raft-rs still transfers to the target, so abort that first, and
    /// proposals are taken again at once, not after raft-rs' own timeout.
    TimedOut {
        /// Whether raft-rs' own transfer is to be aborted.
        abort: bool,
    },
}

impl TransferDeadline {
    /// A transfer to `to` that times out after `deadline_ticks` ticks (twice the election
    /// timeout in the driver).
    pub fn new(to: NodeId, deadline_ticks: usize) -> Self {
        TransferDeadline {
            to,
            ticks_left: deadline_ticks,
            retry_every: (deadline_ticks / 8).max(1),
        }
    }

    /// The node leadership goes to.
    pub fn to(&self) -> NodeId {
        self.to
    }

    /// One tick of the leader `raft` that runs this transfer: counts the tick and says what to
    /// do. Reads `raft` only.
    pub fn tick<T: Storage>(&mut self, raft: &Raft<T>) -> TransferStep {
        self.ticks_left = self.ticks_left.saturating_sub(1);
        let leads = raft.state == StateRole::Leader;
        let ours = leads && raft.lead_transferee == Some(self.to);
        if self.ticks_left == 0 {
            return TransferStep::TimedOut { abort: ours };
        }
        if !self.ticks_left.is_multiple_of(self.retry_every) {
            return TransferStep::Wait;
        }
        if ours {
            let caught_up = raft
                .prs()
                .get(self.to)
                .is_some_and(|progress| progress.matched == raft.raft_log.last_index());
            if caught_up {
                TransferStep::TellAgain(self.to)
            } else {
                TransferStep::Wait
            }
        } else if leads {
            TransferStep::Restart(self.to)
        } else {
            TransferStep::Wait
        }
    }
}

impl TransferStep {
    /// Does the step's raft-rs part on `node`. Returns whether the transfer timed out: then
    /// answer its waiters `TimedOut` and drop it.
    pub fn perform<T: Storage>(self, node: &mut RawNode<T>) -> bool {
        match self {
            TransferStep::Wait => false,
            TransferStep::TellAgain(to) => {
                node.raft.send_timeout_now(to);
                false
            }
            TransferStep::Restart(to) => {
                node.transfer_leader(to);
                false
            }
            TransferStep::TimedOut { abort } => {
                if abort {
                    node.raft.abort_leader_transfer();
                }
                true
            }
        }
    }
}

/// Steps `raft` down if it leads but is no voter of its configuration, which happens when it
/// just applied its own removal (module docs, "Removing a node"): call it right after applying
/// committed entries, before anything else steps or advances the node. raft-rs 0.7 keeps such a
/// leader leading without its own progress entry and panics at its next commit. It becomes a
/// follower of no leader in the same term (its vote stands, so it cannot lead that term
/// again, and as a non-voter it never campaigns). Returns `None` when `raft` is not such a
/// leader. Public for the deterministic simulator (`tests/src/sim`).
pub fn step_down_if_removed<T: Storage>(raft: &mut Raft<T>) -> Option<StepDown> {
    if raft.state != StateRole::Leader || raft.promotable() {
        return None;
    }
    // The most up-to-date voter, read before `become_follower` resets every progress.
    let voters = raft.prs().conf().voters();
    let best = raft
        .prs()
        .iter()
        .filter(|(id, _)| voters.contains(**id))
        .map(|(id, progress)| (progress.matched, *id))
        .max();
    let messages = std::mem::take(&mut raft.msgs);
    let term = raft.term;
    raft.become_follower(term, raft::INVALID_ID);
    Some(StepDown {
        messages,
        handoff: best.map(|(_, to)| Handoff {
            to,
            term,
            ticks_left: raft.election_timeout(),
        }),
    })
}

/// A shard's configuration: its voters and learners, each in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Nodes that vote and count for commits.
    pub voters: Vec<NodeId>,
    /// Nodes that receive the log without voting.
    pub learners: Vec<NodeId>,
}

impl Membership {
    pub(crate) fn of(conf: &ConfState) -> Self {
        let sorted = |ids: &[NodeId]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        Membership {
            voters: sorted(&conf.voters),
            learners: sorted(&conf.learners),
        }
    }
}

/// Why a membership change was not applied. Every refusal leaves the membership unchanged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MembershipError {
    /// The request queue is full; retry later.
    #[error("replication is overloaded")]
    Busy,
    /// This node does not lead the shard (or leadership is being transferred).
    #[error("this node does not lead the shard")]
    NotLeader,
    /// The change was proposed but this node stopped leading (or the entry was replaced)
    /// before it applied: it may or may not take effect under the next leader. Read
    /// [`ClusterHandle::shard_status`] before retrying.
    #[error("membership change dropped before it was applied")]
    Dropped,
    /// The driver stopped, or the shard group failed.
    #[error("the shard group is stopped")]
    Stopped,
    /// The shard id is not below the configured shard count.
    #[error("no such shard")]
    UnknownShard,
    /// Node id 0 is not a node.
    #[error("node id 0 is not a node")]
    InvalidNode,
    /// `AddLearner` of a node that is already a voter or a learner of the shard.
    #[error("node {0} is already a member of the shard")]
    AlreadyMember(NodeId),
    /// `Promote` of a node that is not a learner of the shard (a voter, or no member).
    #[error("node {0} is not a learner of the shard")]
    NotALearner(NodeId),
    /// `Promote` of a learner the leader is not replicating to normally yet (still probing
    /// it or sending it a snapshot): as a voter it would weaken the quorum. Retry once it
    /// caught up.
    #[error("learner {0} has not caught up with the leader yet")]
    LearnerBehind(NodeId),
    /// `Remove` of a node that is neither a voter nor a learner of the shard.
    #[error("node {0} is not a member of the shard")]
    NotAMember(NodeId),
    /// `Remove` of the shard's only voter, which would leave it without voters.
    #[error("node {0} is the last voter of the shard")]
    LastVoter(NodeId),
    /// `Remove` of the leader itself: transfer leadership first.
    #[error("node {0} leads the shard; transfer leadership before removing it")]
    RemovesLeader(NodeId),
    /// Another membership change of the shard is proposed and not yet applied. Also answered
    /// by a newly elected leader until it applied its whole log (which may hold a change its
    /// predecessor proposed): retry shortly.
    #[error("another membership change of the shard is in progress")]
    ChangeInProgress,
}

/// Why a leadership transfer did not complete.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// The request queue is full; retry later.
    #[error("replication is overloaded")]
    Busy,
    /// This node does not lead the shard.
    #[error("this node does not lead the shard")]
    NotLeader,
    /// The driver stopped, or the shard group failed.
    #[error("the shard group is stopped")]
    Stopped,
    /// The shard id is not below the configured shard count.
    #[error("no such shard")]
    UnknownShard,
    /// The target is not a voter of the shard (only voters can lead).
    #[error("node {0} is not a voter of the shard")]
    NotAVoter(NodeId),
    /// A transfer to another node is in progress on this shard.
    #[error("leadership is being transferred to node {0}")]
    InProgress(NodeId),
    /// The target did not become leader within twice the election timeout; `leader` is the
    /// leader this node knew then.
    #[error("leadership transfer timed out (leader now {leader:?})")]
    TimedOut {
        /// The leader as this node knew it when the transfer timed out.
        leader: Option<NodeId>,
    },
}

/// One shard's replica on this node, as of the driver's last turn that touched it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub shard: ShardId,
    /// The leader this replica knows (None: unknown, removed from the shard, or failed).
    pub leader: Option<NodeId>,
    /// The replica's current term.
    pub term: u64,
    /// The replica's commit index.
    pub commit: u64,
    /// The index of the last entry applied to the state machine here.
    pub applied: u64,
    /// The voters of the applied configuration, ascending (empty: the group is uninitialised,
    /// waiting for the leader's snapshot).
    pub voters: Vec<NodeId>,
    /// The learners of the applied configuration, ascending.
    pub learners: Vec<NodeId>,
    /// On the leader, every member's matched index (the highest log index known replicated
    /// there, this node included); empty on other replicas.
    pub progress: BTreeMap<NodeId, u64>,
    /// The replica hibernates: it does not tick (no heartbeats, no campaigns) until a
    /// proposal, a message or an unreachable leader wakes it (crate docs, "Hibernation").
    pub hibernating: bool,
    /// The shard group failed and stopped on this node.
    pub failed: bool,
}

/// Called exactly once with the outcome of an accepted [`ClusterHandle::change_members`], on
/// the driver thread: keep it short and non-blocking.
pub type ChangeDone = Box<dyn FnOnce(Result<Membership, MembershipError>) + Send>;

/// Called exactly once with the outcome of an accepted [`ClusterHandle::transfer_leader`], on
/// the driver thread: keep it short and non-blocking.
pub type TransferDone = Box<dyn FnOnce(Result<(), TransferError>) + Send>;

/// Capacity of the driver's queue of membership and transfer requests (operator actions, few).
pub(crate) const ADMIN_QUEUE: usize = 256;

/// A caller's completion callback.
type Callback<T, E> = Box<dyn FnOnce(Result<T, E>) + Send>;

/// Exactly-once answer, like `reply::Reply`: dropped unanswered, it answers `stopped`.
pub(crate) struct Answer<T, E> {
    done: Option<Callback<T, E>>,
    stopped: fn() -> E,
}

impl<T, E> Answer<T, E> {
    fn new(done: Callback<T, E>, stopped: fn() -> E) -> Self {
        Answer {
            done: Some(done),
            stopped,
        }
    }

    pub(crate) fn send(mut self, result: Result<T, E>) {
        if let Some(done) = self.done.take() {
            invoke(done, result);
        }
    }

    /// Discards the callback unanswered: only when the handle itself returns the error.
    fn disarm(mut self) {
        self.done = None;
    }
}

impl<T, E> Drop for Answer<T, E> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            invoke(done, Err((self.stopped)()));
        }
    }
}

/// Calls a caller's callback, containing its panics (the driver thread runs it).
fn invoke<R>(done: Box<dyn FnOnce(R) + Send>, result: R) {
    if catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
        tracing::error!("membership or transfer completion callback panicked");
    }
}

pub(crate) type ChangeAnswer = Answer<Membership, MembershipError>;
pub(crate) type TransferAnswer = Answer<(), TransferError>;

/// A membership or transfer request on its way from a handle to the driver.
pub(crate) enum AdminRequest {
    Change {
        shard: ShardId,
        change: MembershipChange,
        reply: ChangeAnswer,
    },
    Transfer {
        shard: ShardId,
        to: NodeId,
        reply: TransferAnswer,
    },
}

impl AdminRequest {
    pub(crate) fn shard(&self) -> ShardId {
        match self {
            AdminRequest::Change { shard, .. } | AdminRequest::Transfer { shard, .. } => *shard,
        }
    }

    /// Answers `Stopped` (the shard group failed, or the driver is stopping).
    pub(crate) fn stopped(self) {
        match self {
            AdminRequest::Change { reply, .. } => reply.send(Err(MembershipError::Stopped)),
            AdminRequest::Transfer { reply, .. } => reply.send(Err(TransferError::Stopped)),
        }
    }

    fn disarm(self) {
        match self {
            AdminRequest::Change { reply, .. } => reply.disarm(),
            AdminRequest::Transfer { reply, .. } => reply.disarm(),
        }
    }
}

/// Why a request could not be queued (the handle returns it; `done` is never called).
enum QueueError {
    UnknownShard,
    Busy,
    Stopped,
}

impl From<QueueError> for MembershipError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::UnknownShard => MembershipError::UnknownShard,
            QueueError::Busy => MembershipError::Busy,
            QueueError::Stopped => MembershipError::Stopped,
        }
    }
}

impl From<QueueError> for TransferError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::UnknownShard => TransferError::UnknownShard,
            QueueError::Busy => TransferError::Busy,
            QueueError::Stopped => TransferError::Stopped,
        }
    }
}

impl<S: StateMachine> ClusterHandle<S> {
    /// Proposes one membership change of `shard` (module `membership` docs: one change at a
    /// time, single-voter changes, no joint consensus). Only the shard's leader takes it;
    /// `done` is called exactly once, on the driver thread, with the shard's membership once
    /// the change is applied on the leader, or with the reason it was refused
    /// ([`MembershipError`]; a refusal changes nothing). Returns `Err(UnknownShard)`,
    /// `Err(Busy)` (queue full) or `Err(Stopped)` at once instead, and then never calls `done`.
    ///
    /// ```
    /// # use mimid_cluster::{Cluster, ClusterConfig, MembershipChange, MembershipError, StateMachine};
    /// # struct Nothing;
    /// # impl StateMachine for Nothing {
    /// #     type Output = ();
    /// #     fn apply(&mut self, _index: u64, _command: &[u8]) {}
    /// #     fn snapshot(&self) -> Vec<u8> { Vec::new() }
    /// #     fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> { Ok(()) }
    /// # }
    /// let dir = tempfile::tempdir().unwrap();
    /// let cluster = Cluster::start(ClusterConfig::new(1, dir.path()), |_| Nothing).unwrap();
    /// let handle = cluster.handle();
    /// # while !handle.is_ready() { std::thread::sleep(std::time::Duration::from_millis(5)) }
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let done = Box::new(move |result| tx.send(result).unwrap());
    /// handle.change_members(0, MembershipChange::Remove(1), done).unwrap();
    /// assert_eq!(rx.recv().unwrap(), Err(MembershipError::LastVoter(1)));
    /// ```
    pub fn change_members(
        &self,
        shard: ShardId,
        change: MembershipChange,
        done: ChangeDone,
    ) -> Result<(), MembershipError> {
        let reply = Answer::new(done, || MembershipError::Stopped);
        self.queue_admin(AdminRequest::Change {
            shard,
            change,
            reply,
        })
        .map_err(MembershipError::from)
    }

    /// Asks the leader of `shard` (this node) to hand leadership to voter `to`. `done` is
    /// called exactly once, on the driver thread: `Ok` once this node sees `to` lead (at once
    /// if `to` is this node and it leads), or [`TransferError`] (`NotLeader` on any other
    /// node, `TimedOut` after twice the election timeout). Proposals to this node are answered
    /// `NotLeader` while the transfer runs. Returns `Err(UnknownShard)`, `Err(Busy)` or
    /// `Err(Stopped)` at once instead, and then never calls `done`.
    pub fn transfer_leader(
        &self,
        shard: ShardId,
        to: NodeId,
        done: TransferDone,
    ) -> Result<(), TransferError> {
        let reply = Answer::new(done, || TransferError::Stopped);
        self.queue_admin(AdminRequest::Transfer { shard, to, reply })
            .map_err(TransferError::from)
    }

    /// This node's replica of `shard` as the driver last published it (at the end of each
    /// turn that touched the shard, and at every tick); `None` for a shard out of range.
    pub fn shard_status(&self, shard: ShardId) -> Option<ShardStatus> {
        let slot = usize::try_from(shard).ok()?;
        Some(self.inner.shared.status.get(slot)?.lock().clone())
    }

    /// [`Self::shard_status`] of every shard, in shard order.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.inner
            .shared
            .status
            .iter()
            .map(|status| status.lock().clone())
            .collect()
    }

    fn queue_admin(&self, request: AdminRequest) -> Result<(), QueueError> {
        let inner = &self.inner;
        if request.shard() >= inner.shards {
            request.disarm();
            return Err(QueueError::UnknownShard);
        }
        // The same gate as `propose`: once the driver closed it, nothing new is queued.
        let open = inner.shared.open.read();
        if !*open {
            request.disarm();
            return Err(QueueError::Stopped);
        }
        match inner.admin.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(request)) => {
                request.disarm();
                bump(&inner.shared.metrics.busy_rejections);
                Err(QueueError::Busy)
            }
            Err(TrySendError::Disconnected(request)) => {
                request.disarm();
                Err(QueueError::Stopped)
            }
        }
    }
}

/// Whether `node` is a voter (in either half) or a learner of `conf`.
pub(crate) fn is_member(conf: &ConfState, node: NodeId) -> bool {
    conf.voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .any(|id| *id == node)
}

/// Checks `change` against the applied configuration `conf` of the shard led by `leader` and
/// builds the conf change to propose. The caller has checked that no other change is pending,
/// so `conf` is the configuration the change will apply to.
pub(crate) fn plan_change(
    conf: &ConfState,
    change: MembershipChange,
    leader: NodeId,
) -> Result<ConfChangeV2, MembershipError> {
    if !conf.voters_outgoing.is_empty() {
        // A joint configuration raft-rs has not left yet (auto-leave is on its way).
        return Err(MembershipError::ChangeInProgress);
    }
    let is_voter = |node| conf.voters.contains(&node);
    let is_learner = |node| conf.learners.contains(&node);
    let (node, change_type) = match change {
        MembershipChange::AddLearner(node) => (node, ConfChangeType::AddLearnerNode),
        MembershipChange::Promote(node) => (node, ConfChangeType::AddNode),
        MembershipChange::Remove(node) => (node, ConfChangeType::RemoveNode),
    };
    if node == 0 {
        return Err(MembershipError::InvalidNode);
    }
    match change {
        MembershipChange::AddLearner(_) if is_voter(node) || is_learner(node) => {
            return Err(MembershipError::AlreadyMember(node))
        }
        MembershipChange::Promote(_) if !is_learner(node) => {
            return Err(MembershipError::NotALearner(node))
        }
        MembershipChange::Remove(_) if !is_voter(node) && !is_learner(node) => {
            return Err(MembershipError::NotAMember(node))
        }
        MembershipChange::Remove(_) if is_voter(node) && conf.voters.len() == 1 => {
            return Err(MembershipError::LastVoter(node))
        }
        MembershipChange::Remove(_) if node == leader => {
            return Err(MembershipError::RemovesLeader(node))
        }
        _ => {}
    }
    let mut single = ConfChangeSingle {
        node_id: node,
        ..ConfChangeSingle::default()
    };
    single.set_change_type(change_type);
    let mut conf_change = ConfChangeV2::default();
    // One change with the `Auto` transition: raft-rs applies it without a joint configuration.
    conf_change.mut_changes().push(single);
    Ok(conf_change)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use raft::eraftpb::ConfChangeTransition;

    use super::*;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState::from((voters.to_vec(), learners.to_vec()))
    }

    fn single(conf_change: &ConfChangeV2) -> (NodeId, ConfChangeType) {
        assert_eq!(conf_change.changes.len(), 1);
        assert_eq!(
            conf_change.get_transition(),
            ConfChangeTransition::Auto,
            "one change, auto transition: raft-rs' simple protocol, no joint state"
        );
        let change = &conf_change.changes[0];
        (change.node_id, change.get_change_type())
    }

    #[test]
    fn valid_changes_become_one_single_change() {
        let three = conf(&[1, 2, 3], &[4]);
        let planned = |change| single(&plan_change(&three, change, 1).expect("valid"));
        assert_eq!(
            planned(MembershipChange::AddLearner(5)),
            (5, ConfChangeType::AddLearnerNode)
        );
        assert_eq!(
            planned(MembershipChange::Promote(4)),
            (4, ConfChangeType::AddNode)
        );
        assert_eq!(
            planned(MembershipChange::Remove(3)),
            (3, ConfChangeType::RemoveNode)
        );
        assert_eq!(
            planned(MembershipChange::Remove(4)),
            (4, ConfChangeType::RemoveNode)
        );
    }

    #[test]
    fn refusals_name_the_rule() {
        let cases = [
            (
                conf(&[1, 2], &[3]),
                MembershipChange::AddLearner(0),
                MembershipError::InvalidNode,
            ),
            (
                conf(&[1, 2], &[3]),
                MembershipChange::AddLearner(2),
                MembershipError::AlreadyMember(2),
            ),
            (
                conf(&[1, 2], &[3]),
                MembershipChange::AddLearner(3),
                MembershipError::AlreadyMember(3),
            ),
            (
                conf(&[1, 2], &[3]),
                MembershipChange::Promote(2),
                MembershipError::NotALearner(2),
            ),
            (
                conf(&[1, 2], &[3]),
                MembershipChange::Promote(9),
                MembershipError::NotALearner(9),
            ),
            (
                conf(&[1, 2], &[3]),
                MembershipChange::Remove(9),
                MembershipError::NotAMember(9),
            ),
            (
                conf(&[1, 2], &[3]),
                MembershipChange::Remove(1),
                MembershipError::RemovesLeader(1),
            ),
            (
                conf(&[1], &[3]),
                MembershipChange::Remove(1),
                MembershipError::LastVoter(1),
            ),
        ];
        for (conf, change, expected) in cases {
            assert_eq!(plan_change(&conf, change, 1), Err(expected), "{change:?}");
        }
        // The only voter's learners can still go.
        assert!(plan_change(&conf(&[1], &[3]), MembershipChange::Remove(3), 1).is_ok());
    }

    #[test]
    fn no_change_while_a_joint_configuration_is_not_left() {
        let mut joint = conf(&[1, 2, 4], &[]);
        joint.voters_outgoing = vec![1, 2, 3];
        assert_eq!(
            plan_change(&joint, MembershipChange::AddLearner(5), 1),
            Err(MembershipError::ChangeInProgress)
        );
        assert!(is_member(&joint, 3));
        assert!(!is_member(&joint, 5));
    }

    /// Node 1 leading voters 1 and 2, over raft-rs' in-memory storage.
    fn leader_of_two() -> RawNode<raft::storage::MemStorage> {
        let storage = raft::storage::MemStorage::new_with_conf_state(conf(&[1, 2], &[]));
        let config = raft::Config {
            id: 1,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage, &logger).expect("raft node");
        node.raft.become_candidate();
        node.raft.become_leader();
        node
    }

    #[test]
    fn a_transfer_is_told_again_every_eighth_of_its_deadline_then_times_out() {
        let mut node = leader_of_two();
        let mut deadline = TransferDeadline::new(2, 16);
        let mut ticks = |node: &RawNode<_>, n| -> Vec<TransferStep> {
            (0..n).map(|_| deadline.tick(&node.raft)).collect()
        };
        // raft-rs transfers to node 2, which has not matched the leader's log: only waits.
        node.raft.lead_transferee = Some(2);
        assert!(ticks(&node, 4)
            .iter()
            .all(|&step| step == TransferStep::Wait));
        // Caught up: told again on every second tick (16 / 8).
        let last = node.raft.raft_log.last_index();
        node.raft.mut_prs().get_mut(2).expect("progress").matched = last;
        assert_eq!(
            ticks(&node, 2),
            [TransferStep::Wait, TransferStep::TellAgain(2)]
        );
        // raft-rs gave its transfer up while this node still leads: started again.
        node.raft.lead_transferee = None;
        assert_eq!(
            ticks(&node, 2),
            [TransferStep::Wait, TransferStep::Restart(2)]
        );
        // No longer leading: nothing to repeat, and nothing of raft-rs' to abort at the end.
        let term = node.raft.term;
        node.raft.become_follower(term + 1, 2);
        let rest = ticks(&node, 8);
        assert!(rest[..7].iter().all(|&step| step == TransferStep::Wait));
        assert_eq!(rest[7], TransferStep::TimedOut { abort: false });

        // Still transferring at the deadline: raft-rs' transfer is aborted.
        let mut node = leader_of_two();
        node.raft.lead_transferee = Some(2);
        let step = TransferDeadline::new(2, 1).tick(&node.raft);
        assert_eq!(step, TransferStep::TimedOut { abort: true });
        assert!(step.perform(&mut node), "timed out");
        assert_eq!(node.raft.lead_transferee, None);
        assert!(!TransferStep::Wait.perform(&mut node));
    }

    #[test]
    fn membership_is_sorted() {
        assert_eq!(
            Membership::of(&conf(&[3, 1, 2], &[5, 4])),
            Membership {
                voters: vec![1, 2, 3],
                learners: vec![4, 5]
            }
        );
    }

    #[test]
    fn an_answer_dropped_unanswered_says_stopped_and_a_disarmed_one_says_nothing() {
        let (tx, rx) = mpsc::channel();
        let answer: ChangeAnswer = Answer::new(
            Box::new(move |result| tx.send(result).expect("receiver alive")),
            || MembershipError::Stopped,
        );
        drop(answer);
        assert_eq!(rx.try_recv(), Ok(Err(MembershipError::Stopped)));
        assert!(rx.try_recv().is_err(), "answered twice");

        let (tx, rx) = mpsc::channel();
        let answer: TransferAnswer = Answer::new(
            Box::new(move |result| tx.send(result).expect("receiver alive")),
            || TransferError::Stopped,
        );
        answer.disarm();
        assert!(rx.try_recv().is_err());
    }
}
