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
    /// Snapshots received from a leader and restored (a replica too far behind to catch up
    /// from the leader's log).
    pub snapshots_received: u64,
    /// Frames handed to the transport (at most one per destination node per driver turn).
    pub frames_sent: u64,
    /// Raft messages in those frames.
    pub messages_sent: u64,
    /// Raft messages left out of a frame because they would have taken it over
    /// `MAX_FRAME_BYTES` (Raft sends them again; see the `frame` module).
    pub messages_too_large: u64,
    /// Frames from other nodes accepted into the driver's network inbox.
    pub frames_received: u64,
    /// Frames from other nodes dropped because the network inbox was full.
    pub frames_dropped_inbox_full: u64,
    /// Frames from other nodes refused as malformed (including: not for this node, unknown
    /// shard).
    pub frames_malformed: u64,
    /// Received Raft messages the driver dropped: for a stopped shard group, or refused by
    /// raft-rs (for example a response from a node outside the group).
    pub messages_refused: u64,
    /// Driver ticks (each ticks every awake shard group; hibernating ones are skipped).
    pub ticks: u64,
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
    pub(crate) snapshots_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_too_large: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) frames_dropped_inbox_full: AtomicU64,
    pub(crate) frames_malformed: AtomicU64,
    pub(crate) messages_refused: AtomicU64,
    pub(crate) ticks: AtomicU64,
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
            snapshots_received: self.snapshots_received.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_too_large: self.messages_too_large.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            frames_dropped_inbox_full: self.frames_dropped_inbox_full.load(Ordering::Relaxed),
            frames_malformed: self.frames_malformed.load(Ordering::Relaxed),
            messages_refused: self.messages_refused.load(Ordering::Relaxed),
            ticks: self.ticks.load(Ordering::Relaxed),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
