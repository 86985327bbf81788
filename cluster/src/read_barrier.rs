//! Read barriers: linearizable reads of a local replica (Raft ReadIndex, Raft thesis §6.4).
//!
//! A replica that does not lead its shard may lag the leader by a few entries, so what it reads
//! locally may miss a write that was already acknowledged (by the leader, to a client that now
//! asks this node). [`crate::ClusterHandle::read_barrier`] closes that gap: the driver asks
//! raft-rs for a read index (`RawNode::read_index`); the leader confirms with a heartbeat round
//! to a quorum that it still leads and answers its commit index (a follower forwards the
//! request to the leader and gets the index back), and the barrier resolves once this replica
//! has applied up to that index. Anything acknowledged before the call is then visible locally.
//! On a single-voter group the index is the commit index at once.
//!
//! A barrier ends exactly once: `Ok` as above, or [`ReadBarrierError`]. raft-rs silently drops a
//! read index request on a follower without a leader and on a leader that has not yet committed
//! an entry of its own term; the driver therefore sends a request only when neither is the case
//! and retries at each turn until it can, and a request the leader never answers (lost
//! messages, a leader that stepped down) ends at its deadline ([`ReadBarrierError::TimedOut`]).
//! Deadlines are checked once per driver turn, so a barrier may end up to one `tick_interval`
//! late.
//!
//! Request contexts are `node id (u64 BE) | sequence number (u64 BE)`, unique across the
//! cluster: a leader coalesces read requests with equal contexts.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::group::Group;
use crate::{NodeId, ShardId, StateMachine};

/// Called exactly once with the outcome of an accepted read barrier, on the driver thread: keep
/// it short and non-blocking. (When `read_barrier` returns an error, it is never called.)
pub type BarrierDone = Box<dyn FnOnce(Result<(), ReadBarrierError>) + Send>;

/// Why a read barrier could not confirm that the local replica is up to date.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReadBarrierError {
    /// The local replica knows no leader for the shard (an election is in progress, or this
    /// node is cut off from a quorum).
    #[error("the shard has no leader (election in progress)")]
    NoLeader,
    /// The leader did not confirm its commit index before the deadline (it may have lost its
    /// quorum, or messages were lost).
    #[error("the leader did not confirm its commit index in time")]
    TimedOut,
    /// The barrier queue is full; retry later.
    #[error("too many read barriers are waiting")]
    Busy,
    /// The driver stopped, or the shard group failed.
    #[error("the shard group is stopped")]
    Stopped,
    /// The shard id is not below the configured shard count.
    #[error("no such shard")]
    UnknownShard,
}

/// A read barrier on its way from a handle to the driver.
pub(crate) struct BarrierRequest {
    pub(crate) shard: ShardId,
    pub(crate) deadline: Instant,
    pub(crate) reply: BarrierReply,
}

/// Answers a barrier exactly once: dropped unanswered (driver stopped, queue dropped), it
/// answers [`ReadBarrierError::Stopped`].
pub(crate) struct BarrierReply(Option<BarrierDone>);

impl BarrierReply {
    pub(crate) fn new(done: BarrierDone) -> Self {
        BarrierReply(Some(done))
    }

    pub(crate) fn send(mut self, result: Result<(), ReadBarrierError>) {
        if let Some(done) = self.0.take() {
            done(result);
        }
    }

    /// Forgets the callback without calling it (the request was refused synchronously).
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for BarrierReply {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Err(ReadBarrierError::Stopped));
        }
    }
}

enum Progress {
    /// Not yet handed to raft-rs (no leader known, or the leader has not committed in its term).
    Unsent,
    /// Handed to raft-rs; waiting for the read index.
    Sent,
    /// The leader's commit index at the time of the request; waiting for the local apply.
    ReadAt(u64),
}

struct Waiting {
    shard: ShardId,
    deadline: Instant,
    reply: BarrierReply,
    progress: Progress,
}

/// The driver's barriers in progress, by sequence number.
pub(crate) struct Barriers {
    node_id: NodeId,
    next_seq: u64,
    waiting: BTreeMap<u64, Waiting>,
}

impl Barriers {
    pub(crate) fn new(node_id: NodeId) -> Self {
        Barriers {
            node_id,
            next_seq: 0,
            waiting: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, request: BarrierRequest) {
        self.next_seq += 1;
        self.waiting.insert(
            self.next_seq,
            Waiting {
                shard: request.shard,
                deadline: request.deadline,
                reply: request.reply,
                progress: Progress::Unsent,
            },
        );
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether a barrier of `shard` is waiting.
    pub(crate) fn waits_on(&self, shard: ShardId) -> bool {
        self.waiting.values().any(|waiting| waiting.shard == shard)
    }

    /// Hands the unsent barriers of `shard` to its group if it can take them now. Call between
    /// `Ready`s (at the start of a turn), so the leader's heartbeats go out in the same turn.
    /// `group` is `None` for a failed shard.
    pub(crate) fn send<S: StateMachine>(&mut self, shard: ShardId, group: Option<&mut Group<S>>) {
        let Some(group) = group else {
            return;
        };
        if !group.can_read_index() {
            return;
        }
        for (seq, waiting) in &mut self.waiting {
            if waiting.shard == shard && matches!(waiting.progress, Progress::Unsent) {
                group.read_index(context(self.node_id, *seq));
                waiting.progress = Progress::Sent;
            }
        }
    }

    /// After the turn's apply: records the read indexes `shard`'s group received, answers the
    /// barriers of `shard` whose index is applied, and those past their deadline at `now`.
    /// `group` is `None` for a failed shard, whose barriers answer `Stopped`.
    pub(crate) fn settle<S: StateMachine>(
        &mut self,
        shard: ShardId,
        group: Option<&mut Group<S>>,
        now: Instant,
    ) {
        let applied = match group {
            Some(group) => {
                for state in group.take_read_states() {
                    let Some((node, seq)) = parse_context(&state.request_ctx) else {
                        continue;
                    };
                    if node != self.node_id {
                        continue;
                    }
                    if let Some(waiting) = self.waiting.get_mut(&seq) {
                        if waiting.shard == shard {
                            waiting.progress = Progress::ReadAt(state.index);
                        }
                    }
                }
                Some(group.applied_index())
            }
            None => None,
        };
        let done: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.shard == shard)
            .filter(|(_, waiting)| {
                applied.is_none()
                    || waiting.deadline <= now
                    || matches!((&waiting.progress, applied),
                        (Progress::ReadAt(index), Some(applied)) if *index <= applied)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in done {
            let Some(waiting) = self.waiting.remove(&seq) else {
                continue;
            };
            let result = match (applied, &waiting.progress) {
                (None, _) => Err(ReadBarrierError::Stopped),
                (Some(applied), Progress::ReadAt(index)) if *index <= applied => Ok(()),
                // Never handed over: nobody could be asked in time.
                (Some(_), Progress::Unsent) => Err(ReadBarrierError::NoLeader),
                (Some(_), _) => Err(ReadBarrierError::TimedOut),
            };
            waiting.reply.send(result);
        }
    }
}

fn context(node: NodeId, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.to_be_bytes());
    ctx.extend_from_slice(&seq.to_be_bytes());
    ctx
}

fn parse_context(ctx: &[u8]) -> Option<(NodeId, u64)> {
    let node = u64::from_be_bytes(ctx.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(ctx.get(8..16)?.try_into().ok()?);
    (ctx.len() == 16).then_some((node, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_and_reject_other_lengths() {
        let ctx = context(3, 0x0102_0304_0506_0708);
        assert_eq!(ctx.len(), 16);
        assert_eq!(parse_context(&ctx), Some((3, 0x0102_0304_0506_0708)));
        assert_eq!(parse_context(&ctx[..15]), None);
        let mut longer = ctx.clone();
        longer.push(0);
        assert_eq!(parse_context(&longer), None);
    }

    #[test]
    fn a_dropped_reply_answers_stopped_and_a_disarmed_one_nothing() {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = BarrierReply::new(Box::new(move |result| tx.send(result).unwrap()));
        drop(reply);
        assert_eq!(rx.try_recv(), Ok(Err(ReadBarrierError::Stopped)));

        let (tx, rx) = std::sync::mpsc::channel::<Result<(), ReadBarrierError>>();
        let reply = BarrierReply::new(Box::new(move |result| tx.send(result).unwrap()));
        reply.disarm();
        assert!(rx.try_recv().is_err());
    }
}
