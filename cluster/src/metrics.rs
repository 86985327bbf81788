//! Counters of the replication layer, shared between the driver thread and handles.
//!
//! Plain relaxed atomics: each counter is monotonic on its own and readers only need a recent
//! value, so no ordering between counters is promised. Exporting them (Prometheus, OpenTelemetry)
//! is `node`'s job (STYLE.md §9).

use std::sync::atomic::{AtomicU64, Ordering};

/// A point-in-time copy of the cluster counters (all monotonic since start, except
/// `failed_shards`, which only grows too because failed groups are never restarted in-process).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// Proposals stepped into a Raft group (accepted by the leader).
    pub proposals: u64,
    /// Committed entries applied to state machines (including leader no-op and conf entries).
    pub applied_entries: u64,
    /// Driver loop turns that handled at least one `Ready`.
    pub ready_turns: u64,
    /// Durable flushes of the Raft database (one at most per turn, plus shutdown).
    pub flushes: u64,
    /// Proposals rejected with `Busy` (inbox full or uncommitted log at its bound).
    pub busy_rejections: u64,
    /// Proposals answered with `Dropped`.
    pub dropped_proposals: u64,
    /// State-machine snapshots taken (each followed by log compaction).
    pub snapshots_taken: u64,
    /// Times a shard group learned of a new leader.
    pub leader_changes: u64,
    /// Shard groups stopped by a storage, state-machine or Raft failure.
    pub failed_shards: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) proposals: AtomicU64,
    pub(crate) applied_entries: AtomicU64,
    pub(crate) ready_turns: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) busy_rejections: AtomicU64,
    pub(crate) dropped_proposals: AtomicU64,
    pub(crate) snapshots_taken: AtomicU64,
    pub(crate) leader_changes: AtomicU64,
    pub(crate) failed_shards: AtomicU64,
}

impl Metrics {
    pub(crate) fn snapshot(&self) -> ClusterMetrics {
        ClusterMetrics {
            proposals: self.proposals.load(Ordering::Relaxed),
            applied_entries: self.applied_entries.load(Ordering::Relaxed),
            ready_turns: self.ready_turns.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            busy_rejections: self.busy_rejections.load(Ordering::Relaxed),
            dropped_proposals: self.dropped_proposals.load(Ordering::Relaxed),
            snapshots_taken: self.snapshots_taken.load(Ordering::Relaxed),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            failed_shards: self.failed_shards.load(Ordering::Relaxed),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
