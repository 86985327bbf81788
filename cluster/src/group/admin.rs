//! The group's side of membership changes, leadership transfer and status (the `membership`
//! module documents the behaviour).

use raft::eraftpb::{ConfState, Entry, EntryType};
use raft::StateRole;

use super::{send, Group, GroupError, Outbox};
use crate::membership::{
    is_member, step_down_if_removed, ChangeAnswer, Handoff, Membership, MembershipChange,
    MembershipError, ShardStatus, TransferAnswer, TransferDeadline, TransferError,
};
use crate::metrics::{bump, Metrics};
use crate::{NodeId, StateMachine};

/// The membership change this leader proposed and has not applied yet.
pub(super) struct PendingChange {
    term: u64,
    index: u64,
    reply: ChangeAnswer,
}

/// The leadership transfer in progress on this leader.
pub(super) struct PendingTransfer {
    /// The target and the deadline (answered `TimedOut` then).
    deadline: TransferDeadline,
    waiters: Vec<TransferAnswer>,
}

/// Membership state of one group, kept next to its Raft node.
#[derive(Default)]
pub(super) struct Admin {
    change: Option<PendingChange>,
    transfer: Option<PendingTransfer>,
    /// A change added a member the latest snapshot does not name: snapshot at the end of the
    /// turn, so the leader can send the new member a snapshot that names it.
    snapshot_due: bool,
    /// This node led, applied its own removal and stepped down: the voter it tells to campaign.
    handoff: Option<Handoff>,
}

impl<S: StateMachine> Group<S> {
    /// Validates and proposes one membership change; refusals are answered here.
    pub(crate) fn change_members(
        &mut self,
        change: MembershipChange,
        reply: ChangeAnswer,
        metrics: &Metrics,
    ) -> Result<(), GroupError> {
        let planned = change.plan_on_leader(
            &self.node.raft,
            self.node.store().conf_state(),
            self.admin.change.is_some(),
        );
        let conf_change = match planned {
            Ok(conf_change) => conf_change,
            Err(refused) => {
                reply.send(Err(refused));
                return Ok(());
            }
        };
        match self.node.propose_conf_change(Vec::new(), conf_change) {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => {
                bump(&metrics.busy_rejections);
                reply.send(Err(MembershipError::Busy));
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        let raft = &self.node.raft;
        let index = raft.raft_log.last_index();
        if raft.pending_conf_index != index {
            // raft-rs did not take it as a conf change (cannot happen after the checks above).
            reply.send(Err(MembershipError::Dropped));
            return Ok(());
        }
        tracing::info!(
            shard = self.shard,
            ?change,
            index,
            "proposed membership change"
        );
        self.admin.change = Some(PendingChange {
            term: raft.term,
            index,
            reply,
        });
        Ok(())
    }

    /// Starts a leadership transfer to `to`; answered when `to` leads or on timeout.
    pub(crate) fn transfer_leader(&mut self, to: NodeId, reply: TransferAnswer) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            reply.send(Err(TransferError::NotLeader));
            return;
        }
        if to == raft.id {
            reply.send(Ok(()));
            return;
        }
        if !self.node.store().conf_state().voters.contains(&to) {
            reply.send(Err(TransferError::NotAVoter(to)));
            return;
        }
        match &mut self.admin.transfer {
            Some(transfer) if transfer.deadline.to() == to => {
                transfer.waiters.push(reply);
                return;
            }
            Some(transfer) => {
                reply.send(Err(TransferError::InProgress(transfer.deadline.to())));
                return;
            }
            None => {}
        }
        tracing::info!(shard = self.shard, to, "transferring leadership");
        self.node.transfer_leader(to);
        self.admin.transfer = Some(PendingTransfer {
            deadline: TransferDeadline::new(to, self.transfer_ticks),
            waiters: vec![reply],
        });
    }

    /// The replica's status for `ClusterHandle::shard_status`.
    pub(crate) fn status(&self) -> ShardStatus {
        let raft = &self.node.raft;
        let membership = Membership::of(self.node.store().conf_state());
        let progress = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, progress)| (*id, progress.matched))
                .collect()
        } else {
            Default::default()
        };
        let leader = self.leader_id();
        ShardStatus {
            shard: self.shard,
            leader: (leader != 0).then_some(leader),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied_index,
            voters: membership.voters,
            learners: membership.learners,
            progress,
            hibernating: self.is_hibernating(),
            failed: false,
        }
    }

    /// Whether no membership change or leadership transfer is pending.
    pub(super) fn admin_is_idle(&self) -> bool {
        self.admin.change.is_none() && self.admin.transfer.is_none()
    }

    /// Whether the group has a configuration (a fresh group of a joining node has none until
    /// the leader's snapshot arrives).
    pub(crate) fn is_initialized(&self) -> bool {
        *self.node.store().conf_state() != ConfState::default()
    }

    /// Whether this node is a voter or learner of the applied configuration.
    pub(crate) fn is_member(&self) -> bool {
        is_member(self.node.store().conf_state(), self.node.raft.id)
    }

    /// Answers the pending change if `entry` (just applied) is its entry or passed it.
    pub(super) fn settle_change(&mut self, entry: &Entry, metrics: &Metrics) {
        let reached = self
            .admin
            .change
            .as_ref()
            .is_some_and(|pending| entry.index >= pending.index);
        if !reached {
            return;
        }
        let pending = self.admin.change.take().expect("checked above");
        let is_conf_change = matches!(
            entry.get_entry_type(),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2
        );
        if entry.index == pending.index && entry.term == pending.term && is_conf_change {
            let membership = Membership::of(self.node.store().conf_state());
            tracing::info!(shard = self.shard, ?membership, "membership changed");
            pending.reply.send(Ok(membership));
        } else {
            bump(&metrics.dropped_proposals);
            pending.reply.send(Err(MembershipError::Dropped));
        }
    }

    /// After a conf-change entry applied with the resulting `conf`.
    pub(super) fn on_conf_applied(&mut self, conf: &ConfState) {
        let named = self.node.store().snapshot_conf_state();
        let unnamed = |node: &NodeId| named.is_none_or(|snapshot| !is_member(snapshot, *node));
        if conf.voters.iter().chain(&conf.learners).any(unnamed) {
            self.admin.snapshot_due = true;
        }
        if !self.is_member() {
            tracing::info!(
                shard = self.shard,
                "this node was removed from the shard; its group no longer takes part"
            );
        }
    }

    /// Right after applying committed entries: a leader that applied its own removal steps
    /// down before raft-rs is stepped, ticked or advanced again (`step_down_if_removed`; its
    /// queued messages go out with the turn's), and hands leadership over on its next ticks.
    pub(super) fn step_down_if_removed(&mut self, outbox: &mut Outbox) {
        let Some(stepped) = step_down_if_removed(&mut self.node.raft) else {
            return;
        };
        send(self.shard, outbox, stepped.messages);
        tracing::info!(
            shard = self.shard,
            to = stepped.handoff.map(|handoff| handoff.to()),
            "leader applied its own removal; stepped down and hands leadership over"
        );
        self.admin.handoff = stepped.handoff;
    }

    /// Whether a snapshot is due because of a membership change; clears the flag.
    pub(super) fn take_membership_snapshot_due(&mut self) -> bool {
        std::mem::take(&mut self.admin.snapshot_due)
    }

    /// The leadership or the log was replaced: a pending change's outcome is unknown.
    pub(super) fn drop_pending_change(&mut self, metrics: &Metrics) {
        if let Some(pending) = self.admin.change.take() {
            bump(&metrics.dropped_proposals);
            pending.reply.send(Err(MembershipError::Dropped));
        }
    }

    /// After the soft state changed: a transfer completes when its target leads; a leader
    /// that stepped down loses its pending change.
    pub(super) fn admin_on_soft_state(&mut self, metrics: &Metrics) {
        if self.role != StateRole::Leader {
            self.drop_pending_change(metrics);
        }
        let done = self
            .admin
            .transfer
            .as_ref()
            .is_some_and(|transfer| transfer.deadline.to() == self.leader_id);
        if done {
            let transfer = self.admin.transfer.take().expect("checked above");
            tracing::info!(
                shard = self.shard,
                to = transfer.deadline.to(),
                "leadership transferred"
            );
            for waiter in transfer.waiters {
                waiter.send(Ok(()));
            }
        }
    }

    /// Once per tick: transfer retries and deadlines ([`TransferDeadline::tick`]), and a
    /// stepped-down leader's hand-off.
    pub(super) fn admin_tick(&mut self) {
        if let Some(transfer) = &mut self.admin.transfer {
            let step = transfer.deadline.tick(&self.node.raft);
            if step.perform(&mut self.node) {
                let transfer = self.admin.transfer.take().expect("checked above");
                let leader = (self.leader_id != 0).then_some(self.leader_id);
                tracing::info!(
                    shard = self.shard,
                    to = transfer.deadline.to(),
                    ?leader,
                    "leadership transfer timed out"
                );
                for waiter in transfer.waiters {
                    waiter.send(Err(TransferError::TimedOut { leader }));
                }
            }
        }
        if let Some(handoff) = &mut self.admin.handoff {
            if !handoff.tick(&mut self.node.raft) {
                self.admin.handoff = None;
            }
        }
    }
}
