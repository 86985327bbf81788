//! Hibernation of idle groups (TiKV's hibernate regions; DESIGN.md §3, research/anchors.md:
//! idle Raft groups' heartbeats are what a node with many groups spends its CPU on).
//!
//! # Falling asleep
//!
//! A group hibernates by a round of the leader's: once, for
//! [`crate::ClusterConfig::hibernate_after_ticks`] ticks in a row, the leader found its group
//! quiet (see [`Group::is_quiet`]: every voter and learner has matched its last index, which is
//! committed and applied, and nothing is pending: no proposal, membership change, leadership
//! transfer, read index or `Ready`), it sends every member a hibernation notice and polls. A
//! follower that receives the notice from the leader it follows, in its term, stops ticking and
//! acknowledges; once every member acknowledged in the leader's term, and the group is still
//! quiet, the leader stops ticking too. Nobody ticks, so nobody heartbeats and nobody campaigns:
//! a hibernating group costs nothing until something wakes it. A member that does not
//! acknowledge (unreachable, hibernation off on its node, an older release) keeps the leader
//! polling and ticking, with a notice again every election timeout: a group hibernates only
//! whole. A follower may also fall asleep under a polling leader; it is then asleep while its
//! leader heartbeats, which is safe (the leader is there) and spares its ticks.
//!
//! The notice is a raft `MsgHeartbeat` whose context is [`NOTICE_CONTEXT`], built like raft-rs'
//! own heartbeats (commit index `min(matched, committed)`, so it also tells the follower the
//! commit index); raft-rs answers a heartbeat with a `MsgHeartbeatResponse` echoing its context,
//! which the follower's group rewrites to [`ACK_CONTEXT`] when it falls asleep and to an empty
//! context when it does not. An older release's follower therefore answers with the notice's own
//! context and is never counted as asleep, and to raft-rs on either side both messages are
//! plain heartbeats (read-index contexts are 16 bytes, these are not). The frame format is
//! unchanged (`frame.rs`).
//!
//! # Waking up
//!
//! - A proposal, a read barrier, a membership change or a leadership transfer wakes the group
//!   on its leader ([`Group::wake_for_request`]); a follower refuses the first and last two
//!   anyway, and its read barrier reaches the leader as a message.
//! - Any raft message for the group wakes it, but for the ones that say nothing new: the notice
//!   itself, the current leader's heartbeats to a follower and the acknowledgements and
//!   heartbeat responses of the leader's term to the leader. A snapshot is a message.
//! - The transport reporting a node unreachable wakes the groups that node leads, and on their
//!   leader the groups it is a member of ([`Group::wake_if_unreachable`]): a follower whose
//!   leader's node went away campaigns after the usual election timeout, and a leader cut off
//!   from its followers steps down by check-quorum.
//! - A restart: groups start awake.
//!
//! A follower woken alone (its leader's node reported unreachable) ticks and, hearing nothing,
//! pre-votes after its election timeout; the pre-vote wakes the others, so a false alarm costs
//! one round trip, and a real one elects a leader as fast as without hibernation.
//!
//! # Check-quorum
//!
//! A leader checks every election timeout that a quorum answered since the last check, and steps
//! down otherwise. Asleep, it does not tick, so it does not check, and nothing steps it down
//! while its followers are healthy and silent. When it wakes, the answers it saw before it fell
//! asleep prove nothing about now, and its election clock may be close to the next check: both
//! are reset ([`Group::wake`]: election clock to zero, every member's `recent_active` cleared)
//! and the leader heartbeats at once, so the first check after waking comes a full election
//! timeout later and counts exactly the answers to heartbeats sent since. A healthy quorum
//! answers those; a leader woken into a partition steps down one election timeout later.
//!
//! Hibernation is per node and in memory: it is not replicated and a restart forgets it.

use std::collections::BTreeSet;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::Group;
use crate::{NodeId, StateMachine};

/// Context of a leader's hibernation notice (a `MsgHeartbeat`), version 1.
pub(crate) const NOTICE_CONTEXT: &[u8] = b"mimid.hibernate.v1";
/// Context of a follower's acknowledgement of a notice (a `MsgHeartbeatResponse`): it fell
/// asleep.
pub(crate) const ACK_CONTEXT: &[u8] = b"mimid.hibernate.ack.v1";

/// A group's hibernation state on this node.
pub(super) struct Hibernation {
    /// Quiet ticks after which a leader polls its group to hibernate; 0 disables hibernation.
    after_ticks: usize,
    /// Ticks between notices to members that have not acknowledged yet (an election timeout).
    resend_ticks: usize,
    state: Sleep,
}

enum Sleep {
    /// Ticking. A leader counts the ticks its group has been quiet.
    Awake { quiet_ticks: usize },
    /// A leader that sent its notices: still ticking, waiting for every member to acknowledge.
    Polling {
        acked: BTreeSet<NodeId>,
        ticks_since_notice: usize,
    },
    /// Not ticking.
    Asleep,
}

/// What a received message means for hibernation, decided before it is stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Incoming {
    /// A leader's hibernation notice.
    Notice,
    /// A follower's acknowledgement, in this leader's term.
    Ack,
    /// Nothing new: the followed leader's heartbeat to a follower, or a heartbeat response of
    /// the leader's term to the leader.
    Routine,
    /// Anything else: wakes the group.
    Other,
}

impl Hibernation {
    pub(super) fn new(after_ticks: usize, resend_ticks: usize) -> Self {
        Hibernation {
            after_ticks,
            resend_ticks: resend_ticks.max(1),
            state: Sleep::Awake { quiet_ticks: 0 },
        }
    }
}

impl<S: StateMachine> Group<S> {
    /// Whether the group is asleep here (not ticking).
    pub(crate) fn is_hibernating(&self) -> bool {
        matches!(self.hibernation.state, Sleep::Asleep)
    }

    /// A local request for the group (proposal, read barrier, membership change, leadership
    /// transfer): a leader wakes and counts its quiet ticks from zero again. A follower stays
    /// as it is: it refuses the request or sends it to the leader as a message, which wakes
    /// the leader, and ticking alone under a hibernating leader would only make it campaign.
    pub(crate) fn wake_for_request(&mut self) {
        if self.node.raft.state == StateRole::Leader {
            self.wake();
        }
    }

    /// The transport cannot reach `node`: wake if it leads the group, or if this node leads it
    /// and `node` is a member (module docs).
    pub(super) fn wake_if_unreachable(&mut self, node: NodeId) {
        let raft = &self.node.raft;
        let ours_to_check = raft.state == StateRole::Leader && raft.prs().get(node).is_some();
        if raft.leader_id == node || ours_to_check {
            self.wake();
        }
    }

    /// Wakes the group; a leader that was asleep resets its check-quorum clock and evidence
    /// and heartbeats (module docs, "Check-quorum").
    pub(super) fn wake(&mut self) {
        let was_asleep = self.is_hibernating();
        self.hibernation.state = Sleep::Awake { quiet_ticks: 0 };
        if !was_asleep {
            return;
        }
        let raft = &mut self.node.raft;
        if raft.state == StateRole::Leader {
            let id = raft.id;
            raft.election_elapsed = 0;
            for (member, progress) in raft.mut_prs().iter_mut() {
                if *member != id {
                    progress.recent_active = false;
                }
            }
            raft.ping();
        }
        tracing::debug!(shard = self.shard, role = ?raft.state, "shard group woke up");
    }

    /// Classifies a message before it is stepped; wakes the group for [`Incoming::Other`].
    pub(super) fn hibernation_before_step(&mut self, message: &Message) -> Incoming {
        let incoming = classify(
            message,
            self.node.raft.state,
            self.node.raft.term,
            self.node.raft.leader_id,
        );
        if incoming == Incoming::Other {
            self.wake();
        }
        incoming
    }

    /// After the message `(from, term, commit)` classified as `incoming` was stepped: a
    /// follower falls asleep on its leader's notice (and acknowledges) or refuses it (and
    /// wakes); a polling leader counts an acknowledgement.
    pub(super) fn hibernation_after_step(
        &mut self,
        incoming: Incoming,
        from: NodeId,
        term: u64,
        commit: u64,
    ) {
        match incoming {
            Incoming::Notice => {
                let raft = &self.node.raft;
                let agrees = self.hibernation.after_ticks > 0
                    && raft.state == StateRole::Follower
                    && raft.leader_id == from
                    && raft.term == term;
                answer_notice(&mut self.node.raft.msgs, from, agrees);
                if agrees {
                    if !self.is_hibernating() {
                        tracing::debug!(
                            shard = self.shard,
                            leader = from,
                            "shard group hibernates"
                        );
                    }
                    self.hibernation.state = Sleep::Asleep;
                } else {
                    self.wake();
                }
            }
            Incoming::Ack => {
                let raft = &self.node.raft;
                let current = raft.state == StateRole::Leader
                    && raft.term == term
                    && commit == raft.raft_log.committed;
                if let Sleep::Polling { acked, .. } = &mut self.hibernation.state {
                    if current {
                        acked.insert(from);
                    }
                }
            }
            Incoming::Routine | Incoming::Other => {}
        }
    }

    /// After each tick of an awake group: a quiet leader counts, polls, and falls asleep once
    /// every member acknowledged; anything not quiet starts the count again.
    pub(super) fn hibernation_tick(&mut self) {
        if self.hibernation.after_ticks == 0 {
            return;
        }
        let quiet = self.is_quiet();
        let after_ticks = self.hibernation.after_ticks;
        let resend_ticks = self.hibernation.resend_ticks;
        match &mut self.hibernation.state {
            Sleep::Asleep => {}
            Sleep::Awake { .. } | Sleep::Polling { .. } if !quiet => {
                self.hibernation.state = Sleep::Awake { quiet_ticks: 0 };
            }
            Sleep::Awake { quiet_ticks } => {
                *quiet_ticks += 1;
                if *quiet_ticks >= after_ticks {
                    self.hibernation.state = Sleep::Polling {
                        acked: BTreeSet::new(),
                        ticks_since_notice: 0,
                    };
                    self.send_notices();
                    self.sleep_if_all_acked();
                }
            }
            Sleep::Polling {
                ticks_since_notice, ..
            } => {
                *ticks_since_notice += 1;
                let resend = *ticks_since_notice >= resend_ticks;
                if resend {
                    *ticks_since_notice = 0;
                }
                if !self.sleep_if_all_acked() && resend {
                    self.send_notices();
                }
            }
        }
    }

    /// Whether this replica leads a group with nothing to do: the leader is a voter, every
    /// member matched the last index, which is committed and applied here, and nothing is
    /// pending (proposals, a membership change or transfer, a conf change in the log, read
    /// indexes, a `Ready` between its phases).
    fn is_quiet(&self) -> bool {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || raft.lead_transferee.is_some() {
            return false;
        }
        let conf = self.node.store().conf_state();
        if !conf.voters.contains(&raft.id) || !conf.voters_outgoing.is_empty() {
            return false;
        }
        let last = raft.raft_log.last_index();
        let settled = raft.raft_log.committed == last
            && self.applied_index == last
            && raft
                .prs()
                .iter()
                .all(|(_, progress)| progress.matched == last);
        settled
            && !raft.has_pending_conf()
            && raft.pending_read_count() == 0
            && self.read_states.is_empty()
            && self.pending.is_empty()
            && self.in_flight.is_none()
            && self.admin_is_idle()
    }

    /// Queues a notice to every member that has not acknowledged the current poll.
    fn send_notices(&mut self) {
        let Sleep::Polling { acked, .. } = &self.hibernation.state else {
            return;
        };
        let raft = &mut self.node.raft;
        let (id, term, committed) = (raft.id, raft.term, raft.raft_log.committed);
        let notices: Vec<Message> = raft
            .prs()
            .iter()
            .filter(|(member, _)| **member != id && !acked.contains(*member))
            .map(|(member, progress)| notice(id, *member, term, progress.matched.min(committed)))
            .collect();
        raft.msgs.extend(notices);
    }

    /// A polling leader whose every member acknowledged falls asleep; returns whether it did.
    fn sleep_if_all_acked(&mut self) -> bool {
        let Sleep::Polling { acked, .. } = &self.hibernation.state else {
            return false;
        };
        let raft = &self.node.raft;
        let all = raft
            .prs()
            .iter()
            .all(|(member, _)| *member == raft.id || acked.contains(member));
        if all {
            tracing::debug!(shard = self.shard, "shard group hibernates");
            self.hibernation.state = Sleep::Asleep;
        }
        all
    }
}

/// What `message` means for hibernation to a replica in `role` at `term` following `leader`.
pub(super) fn classify(message: &Message, role: StateRole, term: u64, leader: NodeId) -> Incoming {
    let current = message.term == term;
    match message.get_msg_type() {
        MessageType::MsgHeartbeat if message.context.as_ref() == NOTICE_CONTEXT => Incoming::Notice,
        MessageType::MsgHeartbeat
            if current && role == StateRole::Follower && message.from == leader =>
        {
            Incoming::Routine
        }
        MessageType::MsgHeartbeatResponse if current && role == StateRole::Leader => {
            if message.context.as_ref() == ACK_CONTEXT {
                Incoming::Ack
            } else {
                Incoming::Routine
            }
        }
        _ => Incoming::Other,
    }
}

/// A hibernation notice from leader `from` to `to` in `term`, carrying `commit` like a raft-rs
/// heartbeat.
pub(super) fn notice(from: NodeId, to: NodeId, term: u64, commit: u64) -> Message {
    let mut message = Message {
        from,
        to,
        term,
        commit,
        context: NOTICE_CONTEXT.into(),
        ..Message::default()
    };
    message.set_msg_type(MessageType::MsgHeartbeat);
    message
}

/// Rewrites raft-rs' answer to the notice from `leader` (a heartbeat response echoing the
/// notice's context, the last one queued for `leader`) into an acknowledgement, or into a plain
/// heartbeat response when the follower does not fall asleep.
pub(super) fn answer_notice(queued: &mut [Message], leader: NodeId, asleep: bool) {
    let answer = queued.iter_mut().rev().find(|message| {
        message.to == leader
            && message.get_msg_type() == MessageType::MsgHeartbeatResponse
            && message.context.as_ref() == NOTICE_CONTEXT
    });
    if let Some(answer) = answer {
        answer.context = if asleep {
            ACK_CONTEXT.into()
        } else {
            Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, from: NodeId, term: u64, context: &'static [u8]) -> Message {
        let mut message = Message {
            from,
            to: 2,
            term,
            context: context.into(),
            ..Message::default()
        };
        message.set_msg_type(kind);
        message
    }

    #[test]
    fn only_news_wakes_a_follower() {
        let follower = |message: &Message| classify(message, StateRole::Follower, 5, 1);
        let heartbeat = MessageType::MsgHeartbeat;
        assert_eq!(follower(&notice(1, 2, 5, 9)), Incoming::Notice);
        assert_eq!(follower(&message(heartbeat, 1, 5, b"")), Incoming::Routine);
        // Another node, or another term: possibly a new leader.
        assert_eq!(follower(&message(heartbeat, 3, 5, b"")), Incoming::Other);
        assert_eq!(follower(&message(heartbeat, 1, 6, b"")), Incoming::Other);
        for kind in [
            MessageType::MsgAppend,
            MessageType::MsgSnapshot,
            MessageType::MsgRequestPreVote,
            MessageType::MsgRequestVote,
            MessageType::MsgTimeoutNow,
            MessageType::MsgReadIndexResp,
        ] {
            assert_eq!(
                follower(&message(kind, 1, 5, b"")),
                Incoming::Other,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn only_news_wakes_a_leader() {
        let leader = |message: &Message| classify(message, StateRole::Leader, 5, 2);
        let response = MessageType::MsgHeartbeatResponse;
        assert_eq!(leader(&message(response, 3, 5, ACK_CONTEXT)), Incoming::Ack);
        assert_eq!(leader(&message(response, 3, 5, b"")), Incoming::Routine);
        // An older release echoes the notice: routine, but no acknowledgement.
        assert_eq!(
            leader(&message(response, 3, 5, NOTICE_CONTEXT)),
            Incoming::Routine
        );
        // A response of a newer term makes the leader step down.
        assert_eq!(
            leader(&message(response, 3, 6, ACK_CONTEXT)),
            Incoming::Other
        );
        for kind in [
            MessageType::MsgAppendResponse,
            MessageType::MsgReadIndex,
            MessageType::MsgRequestPreVote,
            MessageType::MsgTransferLeader,
        ] {
            assert_eq!(
                leader(&message(kind, 3, 5, b"")),
                Incoming::Other,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_notice_is_a_heartbeat_with_its_own_context_unlike_read_indexes() {
        let notice = notice(1, 3, 7, 42);
        assert_eq!(notice.get_msg_type(), MessageType::MsgHeartbeat);
        assert_eq!(
            (notice.from, notice.to, notice.term, notice.commit),
            (1, 3, 7, 42)
        );
        assert_eq!(notice.context.as_ref(), NOTICE_CONTEXT);
        // Read barrier contexts are node id ‖ sequence number, 16 bytes (`read_barrier.rs`).
        assert_ne!(NOTICE_CONTEXT.len(), 16);
        assert_ne!(ACK_CONTEXT.len(), 16);
    }

    #[test]
    fn the_answer_to_a_notice_becomes_an_ack_or_a_plain_response() {
        let response = MessageType::MsgHeartbeatResponse;
        for (asleep, expected) in [(true, ACK_CONTEXT), (false, &b""[..])] {
            let mut queued = vec![
                message(response, 2, 5, NOTICE_CONTEXT),
                message(MessageType::MsgAppendResponse, 2, 5, b""),
            ];
            queued.iter_mut().for_each(|message| message.to = 1);
            let mut other = message(response, 2, 5, NOTICE_CONTEXT);
            other.to = 3;
            queued.push(other);
            answer_notice(&mut queued, 1, asleep);
            assert_eq!(queued[0].context.as_ref(), expected);
            assert_eq!(
                queued[2].context.as_ref(),
                NOTICE_CONTEXT,
                "another node's answer"
            );
        }
    }
}
