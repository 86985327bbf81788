//! Proposals waiting for their entries to apply, keyed by `(term, index)`.
//!
//! raft-rs never says that a proposal was lost: a leader that steps down, or whose uncommitted
//! suffix a new leader overwrites (Raft §5.3), just goes on applying other entries
//! (floors pitfall 13). The only reliable signal is the applied entry itself: the proposal made
//! as entry `(term, index)` succeeded iff the entry applied at `index` has that `term`. Entries
//! apply in index order, so any proposal whose index was passed without a match is dropped
//! right there.
//!
//! A leader that steps down keeps its proposals as **orphans** rather than dropping them at
//! once: the next leader usually holds their entries (a leadership transfer waits until the
//! transferee has every entry; an election winner has every committed one and often the rest)
//! and commits them, and this replica, now a follower, applies them and answers each with its
//! real outcome. Only orphans still unresolved when the wait ends
//! (`ClusterConfig::lost_leadership_wait_ticks`, counted by [`PendingProposals::tick`]) are
//! dropped, the answer whose outcome is unknown.
//!
//! The queue is sans-IO and knows nothing of how a proposal is answered: it holds a *waiter*
//! per proposal and hands back those to answer `Dropped` through the caller's `dropped`
//! callback. The shard group's waiter is the caller's reply and the time it was queued (so the
//! driver can measure how long it took to apply, `ClusterMetrics::proposal_micros`); the
//! simulation's replica (`mimid-tests`) uses the same queue with its request ids.

use std::collections::VecDeque;

use crate::metrics::{bump, Metrics};
use crate::reply::Reply;
use crate::ProposeError;

/// The proposals a replica made as leader that have not applied yet (module docs).
pub struct PendingProposals<W> {
    /// Ordered by strictly increasing index.
    queue: VecDeque<Pending<W>>,
    /// Ticks left before the orphans still waiting are dropped; `None` when there are none.
    orphan_ticks_left: Option<usize>,
}

struct Pending<W> {
    term: u64,
    index: u64,
    waiter: W,
    /// Proposed by this replica as a leader it no longer is (module docs).
    orphaned: bool,
}

impl<W> Default for PendingProposals<W> {
    fn default() -> Self {
        PendingProposals {
            queue: VecDeque::new(),
            orphan_ticks_left: None,
        }
    }
}

impl<W> PendingProposals<W> {
    /// Whether no proposal is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Records the proposal the leader just appended as `(term, index)`. Older proposals at or
    /// after `index` can only be left over from an overwritten log suffix: they are dropped.
    pub fn push(&mut self, term: u64, index: u64, waiter: W, mut dropped: impl FnMut(W)) {
        while self.queue.back().is_some_and(|last| last.index >= index) {
            dropped(self.queue.pop_back().expect("back exists").waiter);
        }
        self.queue.push_back(Pending {
            term,
            index,
            waiter,
            orphaned: false,
        });
    }

    /// Returns the waiter of the proposal made as entry `(term, index)`, which is being
    /// applied. Every pending proposal before `index`, and one at `index` from another term,
    /// is dropped.
    pub fn take(&mut self, term: u64, index: u64, mut dropped: impl FnMut(W)) -> Option<W> {
        while self.queue.front().is_some_and(|front| front.index <= index) {
            let pending = self.queue.pop_front().expect("front exists");
            if pending.index == index && pending.term == term {
                return Some(pending.waiter);
            }
            dropped(pending.waiter);
        }
        None
    }

    /// This replica stopped leading: every pending proposal becomes an orphan, still answered
    /// by the entry applied at its index for `wait_ticks` more [`Self::tick`]s (at once
    /// dropped when 0).
    pub fn orphan_all(&mut self, wait_ticks: usize, dropped: impl FnMut(W)) {
        if self.queue.is_empty() {
            return;
        }
        for pending in &mut self.queue {
            pending.orphaned = true;
        }
        self.orphan_ticks_left = Some(wait_ticks);
        if wait_ticks == 0 {
            self.drop_orphans(dropped);
        }
    }

    /// Counts one tick of the wait for the orphans; drops those still waiting when it ends.
    /// Proposals made since, as leader again, keep waiting.
    pub fn tick(&mut self, dropped: impl FnMut(W)) {
        let Some(left) = self.orphan_ticks_left else {
            return;
        };
        if left > 1 && self.queue.iter().any(|pending| pending.orphaned) {
            self.orphan_ticks_left = Some(left - 1);
        } else {
            self.drop_orphans(dropped);
        }
    }

    fn drop_orphans(&mut self, dropped: impl FnMut(W)) {
        let (orphans, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|pending| pending.orphaned);
        self.queue = kept;
        self.orphan_ticks_left = None;
        orphans
            .into_iter()
            .map(|pending| pending.waiter)
            .for_each(dropped);
    }

    /// Drops every pending proposal (the log was replaced by a snapshot, which says nothing
    /// of the entries it covers; or the replica crashed).
    pub fn drain(&mut self, dropped: impl FnMut(W)) {
        self.orphan_ticks_left = None;
        self.queue
            .drain(..)
            .map(|pending| pending.waiter)
            .for_each(dropped);
    }
}

/// Answers `Dropped` and counts it.
pub(crate) fn answer_dropped<O>(reply: Reply<O>, metrics: &Metrics) {
    bump(&metrics.dropped_proposals);
    reply.send(Err(ProposeError::Dropped));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiters are tags; the dropped ones are collected in order.
    fn queue() -> (PendingProposals<u64>, Vec<u64>) {
        (PendingProposals::default(), Vec::new())
    }

    #[test]
    fn matching_term_and_index_returns_the_waiter() {
        let (mut pending, mut dropped) = queue();
        pending.push(2, 10, 10, |w| dropped.push(w));
        pending.push(2, 11, 11, |w| dropped.push(w));
        assert_eq!(pending.take(2, 10, |w| dropped.push(w)), Some(10));
        assert_eq!(pending.take(2, 11, |w| dropped.push(w)), Some(11));
        assert!(dropped.is_empty());
        assert!(pending.is_empty());
    }

    #[test]
    fn raft_5_3_entry_overwritten_by_another_term_is_dropped() {
        let (mut pending, mut dropped) = queue();
        pending.push(2, 10, 10, |w| dropped.push(w));
        // A new leader (term 3) committed its own entry at index 10.
        assert_eq!(pending.take(3, 10, |w| dropped.push(w)), None);
        assert_eq!(dropped, vec![10]);
    }

    #[test]
    fn skipped_indexes_are_dropped_and_later_ones_kept() {
        let (mut pending, mut dropped) = queue();
        for index in [5, 6, 9] {
            pending.push(1, index, index, |w| dropped.push(w));
        }
        // Applying index 7 (someone else's) passes 5 and 6 without a match.
        assert_eq!(pending.take(4, 7, |w| dropped.push(w)), None);
        assert_eq!(dropped, vec![5, 6]);
        assert_eq!(pending.take(1, 9, |w| dropped.push(w)), Some(9));
    }

    #[test]
    fn pushing_at_an_index_already_pending_drops_the_overwritten_suffix() {
        let (mut pending, mut dropped) = queue();
        pending.push(1, 5, 5, |w| dropped.push(w));
        pending.push(1, 6, 6, |w| dropped.push(w));
        // Re-elected in term 2 after losing 6: the new proposal lands at 6 again.
        pending.push(2, 6, 60, |w| dropped.push(w));
        assert_eq!(dropped, vec![6]);
        assert_eq!(pending.take(1, 5, |w| dropped.push(w)), Some(5));
        assert_eq!(pending.take(2, 6, |w| dropped.push(w)), Some(60));
    }

    /// A leader that steps down keeps its proposals: the next leader's log, applied here,
    /// answers each by its entry, an entry it committed with the output, one it overwrote
    /// (another term at the index) `Dropped`.
    #[test]
    fn orphans_are_answered_by_the_entries_the_next_leader_commits() {
        let (mut pending, mut dropped) = queue();
        for index in [5, 6, 7] {
            pending.push(2, index, index, |w| dropped.push(w));
        }
        pending.orphan_all(10, |w| dropped.push(w));
        assert!(dropped.is_empty(), "nothing answered at the step-down");
        // The term-3 leader held 5 and 6 and committed them; it overwrote 7.
        assert_eq!(pending.take(2, 5, |w| dropped.push(w)), Some(5));
        assert_eq!(pending.take(2, 6, |w| dropped.push(w)), Some(6));
        assert_eq!(pending.take(3, 7, |w| dropped.push(w)), None);
        assert_eq!(dropped, vec![7]);
        // Nothing left to wait for: the next tick ends the wait.
        pending.tick(|w| dropped.push(w));
        assert_eq!(pending.orphan_ticks_left, None);
    }

    /// The wait for the orphans ends after its ticks: they are dropped; a proposal made since
    /// (as leader again) keeps waiting for its entry.
    #[test]
    fn orphans_left_when_the_wait_ends_are_dropped_and_later_proposals_kept() {
        let (mut pending, mut dropped) = queue();
        pending.push(2, 5, 5, |w| dropped.push(w));
        pending.push(2, 6, 6, |w| dropped.push(w));
        pending.orphan_all(3, |w| dropped.push(w));
        // Elected again in term 4 (5 and 6 still in its log), it proposes 8.
        pending.push(4, 8, 8, |w| dropped.push(w));
        pending.tick(|w| dropped.push(w));
        pending.tick(|w| dropped.push(w));
        assert!(dropped.is_empty(), "still waiting after two of three ticks");
        pending.tick(|w| dropped.push(w));
        assert_eq!(dropped, vec![5, 6]);
        assert_eq!(pending.take(4, 8, |w| dropped.push(w)), Some(8));
    }

    /// A wait of 0 ticks drops the orphans at the step-down (the behaviour before orphans).
    #[test]
    fn no_wait_drops_at_the_step_down() {
        let (mut pending, mut dropped) = queue();
        pending.push(2, 5, 5, |w| dropped.push(w));
        pending.orphan_all(0, |w| dropped.push(w));
        assert_eq!(dropped, vec![5]);
        assert!(pending.is_empty());
    }

    #[test]
    fn drain_drops_everything() {
        let (mut pending, mut dropped) = queue();
        pending.push(1, 1, 1, |w| dropped.push(w));
        pending.push(1, 2, 2, |w| dropped.push(w));
        pending.drain(|w| dropped.push(w));
        assert_eq!(dropped, vec![1, 2]);
        assert_eq!(pending.take(1, 2, |w| dropped.push(w)), None);
    }
}
