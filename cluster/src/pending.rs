//! Proposals waiting for their entries to apply, keyed by `(term, index)`.
//!
//! raft-rs never says that a proposal was lost: a leader that steps down, or whose uncommitted
//! suffix a new leader overwrites (Raft §5.3), just goes on applying other entries
//! (floors pitfall 13). The only reliable signal is the applied entry itself: the proposal made
//! as entry `(term, index)` succeeded iff the entry applied at `index` has that `term`. Entries
//! apply in index order, so any proposal whose index was passed without a match is answered
//! `Dropped` right there.
//!
//! A leader that steps down keeps its proposals as **orphans** rather than answering them
//! `Dropped` at once: the next leader usually holds their entries (a leadership transfer
//! waits until the transferee has every entry; an election winner has every committed one
//! and often the rest) and commits them, and this replica, now a follower, applies them and
//! answers each with its real outcome. Only orphans still unresolved when the wait ends
//! (`ClusterConfig::lost_leadership_wait_ticks`, counted by the group) are answered
//! `Dropped`, the answer whose outcome is unknown.
//!
//! Each proposal keeps the time it was queued by its handle, so the driver can measure how long
//! it took to apply (`ClusterMetrics::proposal_micros`).

use std::collections::VecDeque;
use std::time::Instant;

use crate::metrics::{bump, Metrics};
use crate::reply::Reply;
use crate::ProposeError;

pub(crate) struct PendingProposals<O> {
    /// Ordered by strictly increasing index.
    queue: VecDeque<Pending<O>>,
}

struct Pending<O> {
    term: u64,
    index: u64,
    reply: Reply<O>,
    /// When `ClusterHandle::propose` queued it.
    queued: Instant,
    /// Proposed by this node as a leader it no longer is (module docs).
    orphaned: bool,
}

impl<O> PendingProposals<O> {
    pub(crate) fn new() -> Self {
        PendingProposals {
            queue: VecDeque::new(),
        }
    }

    /// Whether no proposal is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Records the proposal the leader just appended as `(term, index)`, queued at `queued`.
    /// Older proposals at or after `index` can only be left over from an overwritten log
    /// suffix: they are dropped.
    pub(crate) fn push(
        &mut self,
        term: u64,
        index: u64,
        reply: Reply<O>,
        queued: Instant,
        metrics: &Metrics,
    ) {
        while self.queue.back().is_some_and(|last| last.index >= index) {
            let stale = self.queue.pop_back().expect("back exists");
            answer_dropped(stale.reply, metrics);
        }
        self.queue.push_back(Pending {
            term,
            index,
            reply,
            queued,
            orphaned: false,
        });
    }

    /// Marks every pending proposal an orphan (this node stopped leading): each is still
    /// answered by the entry applied at its index, until [`Self::drop_orphans`].
    pub(crate) fn orphan_all(&mut self) {
        for pending in &mut self.queue {
            pending.orphaned = true;
        }
    }

    /// Whether any orphan waits for its entry.
    pub(crate) fn has_orphans(&self) -> bool {
        self.queue.iter().any(|pending| pending.orphaned)
    }

    /// Answers every orphan `Dropped` (the wait for its entry ended); proposals made since,
    /// as leader again, keep waiting.
    pub(crate) fn drop_orphans(&mut self, metrics: &Metrics) {
        let (orphans, kept) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|pending| pending.orphaned);
        self.queue = kept;
        for pending in orphans {
            answer_dropped(pending.reply, metrics);
        }
    }

    /// Returns the reply of the proposal made as entry `(term, index)`, which is being applied,
    /// with the time it was queued. Every pending proposal before `index`, and one at `index`
    /// from another term, is answered `Dropped`.
    pub(crate) fn take(
        &mut self,
        term: u64,
        index: u64,
        metrics: &Metrics,
    ) -> Option<(Reply<O>, Instant)> {
        while self.queue.front().is_some_and(|front| front.index <= index) {
            let pending = self.queue.pop_front().expect("front exists");
            if pending.index == index && pending.term == term {
                return Some((pending.reply, pending.queued));
            }
            answer_dropped(pending.reply, metrics);
        }
        None
    }

    /// Answers every pending proposal `Dropped` (the log was replaced by a snapshot, which
    /// says nothing of the entries it covers).
    pub(crate) fn drop_all(&mut self, metrics: &Metrics) {
        for pending in self.queue.drain(..) {
            answer_dropped(pending.reply, metrics);
        }
    }
}

/// Answers `Dropped` and counts it.
pub(crate) fn answer_dropped<O>(reply: Reply<O>, metrics: &Metrics) {
    bump(&metrics.dropped_proposals);
    reply.send(Err(ProposeError::Dropped));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    use super::*;

    type Answers = mpsc::Receiver<(u64, Result<(), ProposeError>)>;

    /// A reply that reports `(tag, result)` on the shared channel.
    fn reply(tag: u64, tx: &mpsc::Sender<(u64, Result<(), ProposeError>)>) -> Reply<()> {
        let tx = tx.clone();
        Reply::new(Box::new(move |result| {
            tx.send((tag, result)).expect("test receiver alive")
        }))
    }

    fn answers(rx: &Answers) -> Vec<(u64, Result<(), ProposeError>)> {
        rx.try_iter().collect()
    }

    #[test]
    fn matching_term_and_index_returns_the_reply() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        pending.push(2, 10, reply(10, &tx), Instant::now(), &metrics);
        pending.push(2, 11, reply(11, &tx), Instant::now(), &metrics);
        pending
            .take(2, 10, &metrics)
            .expect("entry (2, 10) is ours")
            .0
            .send(Ok(()));
        assert_eq!(answers(&rx), vec![(10, Ok(()))]);
        assert!(pending.take(2, 11, &metrics).is_some());
        assert_eq!(metrics.dropped_proposals.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_reply_comes_back_with_the_time_it_was_queued() {
        let (tx, _rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        let queued = Instant::now();
        pending.push(3, 4, reply(4, &tx), queued, &metrics);
        let (_, at) = pending.take(3, 4, &metrics).expect("entry (3, 4) is ours");
        assert_eq!(at, queued);
    }

    #[test]
    fn raft_5_3_entry_overwritten_by_another_term_is_dropped() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        pending.push(2, 10, reply(10, &tx), Instant::now(), &metrics);
        // A new leader (term 3) committed its own entry at index 10.
        assert!(pending.take(3, 10, &metrics).is_none());
        assert_eq!(answers(&rx), vec![(10, Err(ProposeError::Dropped))]);
        assert_eq!(metrics.dropped_proposals.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn skipped_indexes_are_dropped_and_later_ones_kept() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        for index in [5, 6, 9] {
            pending.push(1, index, reply(index, &tx), Instant::now(), &metrics);
        }
        // Applying index 7 (someone else's) passes 5 and 6 without a match.
        assert!(pending.take(4, 7, &metrics).is_none());
        assert_eq!(
            answers(&rx),
            vec![
                (5, Err(ProposeError::Dropped)),
                (6, Err(ProposeError::Dropped))
            ]
        );
        assert!(pending.take(1, 9, &metrics).is_some());
    }

    #[test]
    fn pushing_at_an_index_already_pending_drops_the_overwritten_suffix() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        pending.push(1, 5, reply(5, &tx), Instant::now(), &metrics);
        pending.push(1, 6, reply(6, &tx), Instant::now(), &metrics);
        // Re-elected in term 2 after losing 6: the new proposal lands at 6 again.
        pending.push(2, 6, reply(60, &tx), Instant::now(), &metrics);
        assert_eq!(answers(&rx), vec![(6, Err(ProposeError::Dropped))]);
        assert!(pending.take(1, 5, &metrics).is_some());
        assert!(pending.take(2, 6, &metrics).is_some());
    }

    /// A leader that steps down keeps its proposals: the next leader's log, applied here,
    /// answers each by its entry, an entry it committed with the output, one it overwrote
    /// (another term at the index) `Dropped`.
    #[test]
    fn orphans_are_answered_by_the_entries_the_next_leader_commits() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        for index in [5, 6, 7] {
            pending.push(2, index, reply(index, &tx), Instant::now(), &metrics);
        }
        pending.orphan_all();
        assert!(pending.has_orphans());
        assert!(answers(&rx).is_empty(), "nothing answered at the step-down");
        // The term-3 leader held 5 and 6 and committed them; it overwrote 7.
        for index in [5, 6] {
            let (reply, _) = pending.take(2, index, &metrics).expect("an orphan of ours");
            reply.send(Ok(()));
        }
        assert!(pending.take(3, 7, &metrics).is_none());
        assert_eq!(
            answers(&rx),
            vec![(5, Ok(())), (6, Ok(())), (7, Err(ProposeError::Dropped))]
        );
        assert!(!pending.has_orphans());
        assert_eq!(metrics.dropped_proposals.load(Ordering::Relaxed), 1);
    }

    /// The wait for the orphans ends: they are answered `Dropped`; a proposal made since (as
    /// leader again) keeps waiting for its entry.
    #[test]
    fn dropping_orphans_keeps_later_proposals() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        pending.push(2, 5, reply(5, &tx), Instant::now(), &metrics);
        pending.push(2, 6, reply(6, &tx), Instant::now(), &metrics);
        pending.orphan_all();
        // Elected again in term 4 (5 and 6 still in its log), it proposes 8.
        pending.push(4, 8, reply(8, &tx), Instant::now(), &metrics);
        pending.drop_orphans(&metrics);
        assert_eq!(
            answers(&rx),
            vec![
                (5, Err(ProposeError::Dropped)),
                (6, Err(ProposeError::Dropped))
            ]
        );
        assert!(!pending.has_orphans());
        assert!(pending.take(4, 8, &metrics).is_some());
    }

    #[test]
    fn drop_all_answers_everything_dropped() {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut pending = PendingProposals::new();
        pending.push(1, 1, reply(1, &tx), Instant::now(), &metrics);
        pending.push(1, 2, reply(2, &tx), Instant::now(), &metrics);
        pending.drop_all(&metrics);
        assert_eq!(
            answers(&rx),
            vec![
                (1, Err(ProposeError::Dropped)),
                (2, Err(ProposeError::Dropped))
            ]
        );
        assert!(pending.take(1, 2, &metrics).is_none());
    }
}
