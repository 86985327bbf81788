//! Counters and histograms of the replication layer, shared between the driver thread and
//! handles.
//!
//! Plain relaxed atomics: each counter is monotonic on its own and readers only need a recent
//! value, so no ordering between counters is promised. Exporting them (Prometheus, OpenTelemetry)
//! is `node`'s job (STYLE.md §9).
//!
//! Histograms ([`Histogram`]) have fixed buckets chosen here, in integer units (microseconds,
//! proposals); an exporter converts them. Five are measured by the driver:
//! - proposal latency: from [`crate::ClusterHandle::propose`] queueing a proposal to the
//!   driver answering it with its entry's output (durable on a quorum, committed and applied
//!   here, so only on the shard's leader), read with the driver's clock right after the phase
//!   of the turn that applied it (`driver.rs`);
//! - flush latency: each durable write of a turn's batch (sled `apply_batch`, `flush` and,
//!   with `fsync`, `fdatasync`), the cost every answered proposal waited for once;
//! - inbox depth: the proposals waiting in the driver's inbox at the start of each turn that
//!   steps proposals (the one that woke the driver included);
//! - snapshot serialisation: each state-machine snapshot taken by `snapshot_interval` or by
//!   age, serialised on the driver thread (every shard of the node waits through it);
//! - snapshot writing: the file of each such snapshot hashed, written and synced on the
//!   snapshot writer thread. (A membership change's and the shutdown's snapshots, written on
//!   the driver thread, are in neither.)

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
    /// Bytes of keys and values written to the Raft database in turn batches (log entries,
    /// hard states, conf states, snapshot records; snapshot data files not included).
    pub written_bytes: u64,
    /// Microseconds from `propose` to the answer with the applied output, per proposal
    /// answered `Ok` (leader only; dropped and refused proposals are not observed).
    pub proposal_micros: HistogramSnapshot,
    /// Microseconds of each durable write of the Raft database (batch, flush, `fdatasync`).
    pub flush_micros: HistogramSnapshot,
    /// Proposals waiting in the driver's inbox at the start of each turn that steps some.
    pub inbox_depth: HistogramSnapshot,
    /// Microseconds the driver thread spent serialising each snapshot taken by interval or
    /// age.
    pub snapshot_serialize_micros: HistogramSnapshot,
    /// Microseconds the writer thread took to hash, write and sync each such snapshot's file.
    pub snapshot_write_micros: HistogramSnapshot,
}

/// Bucket bounds of [`ClusterMetrics::proposal_micros`]: 100 µs doubling to about 13 s.
pub const PROPOSAL_MICROS_BOUNDS: [u64; 18] = doubling(100);
/// Bucket bounds of [`ClusterMetrics::flush_micros`]: 25 µs doubling to about 1.6 s.
pub const FLUSH_MICROS_BOUNDS: [u64; 17] = doubling(25);
/// Bucket bounds of [`ClusterMetrics::inbox_depth`]: 1 doubling to 65 536 (the default
/// `inbox_capacity`).
pub const DEPTH_BOUNDS: [u64; 17] = doubling(1);
/// Bucket bounds of [`ClusterMetrics::snapshot_serialize_micros`] and
/// [`ClusterMetrics::snapshot_write_micros`]: 1 ms doubling to about 65 s.
pub const SNAPSHOT_MICROS_BOUNDS: [u64; 17] = doubling(1_000);

/// `first`, `2 * first`, `4 * first`, ...
const fn doubling<const N: usize>(first: u64) -> [u64; N] {
    let mut bounds = [0; N];
    let mut i = 0;
    let mut bound = first;
    while i < N {
        bounds[i] = bound;
        bound = bound.saturating_mul(2);
        i += 1;
    }
    bounds
}

/// A histogram of fixed buckets over `u64` observations, updated lock-free: one relaxed
/// `fetch_add` for the bucket and one for the sum per observation. Shared by reference between
/// the thread that observes and the ones that take snapshots; other crates use it for their
/// own bounded histograms (the room mailboxes of `mimid-actors`).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// `bounds.len() + 1` buckets, the last for everything above the last bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A copy of a [`Histogram`]: per-bucket counts, not cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The inclusive upper bound of each bucket, ascending; one more bucket, unbounded, follows.
    pub bounds: Vec<u64>,
    /// Observations per bucket, `bounds.len() + 1` of them (the last: above every bound).
    pub counts: Vec<u64>,
    /// The sum of every observation (saturating).
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram with these inclusive upper bounds (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value`.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Saturating: a sum that stopped growing is better than one that wrapped.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(value))
            });
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The driver's histograms ([`ClusterMetrics`] has what they measure).
#[derive(Debug)]
pub(crate) struct Histograms {
    pub(crate) proposal_micros: Histogram,
    pub(crate) flush_micros: Histogram,
    pub(crate) inbox_depth: Histogram,
    pub(crate) snapshot_serialize_micros: Histogram,
    pub(crate) snapshot_write_micros: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            proposal_micros: Histogram::new(&PROPOSAL_MICROS_BOUNDS),
            flush_micros: Histogram::new(&FLUSH_MICROS_BOUNDS),
            inbox_depth: Histogram::new(&DEPTH_BOUNDS),
            snapshot_serialize_micros: Histogram::new(&SNAPSHOT_MICROS_BOUNDS),
            snapshot_write_micros: Histogram::new(&SNAPSHOT_MICROS_BOUNDS),
        }
    }
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
    pub(crate) written_bytes: AtomicU64,
    pub(crate) histograms: Histograms,
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
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            proposal_micros: self.histograms.proposal_micros.snapshot(),
            flush_micros: self.histograms.flush_micros.snapshot(),
            inbox_depth: self.histograms.inbox_depth.snapshot(),
            snapshot_serialize_micros: self.histograms.snapshot_serialize_micros.snapshot(),
            snapshot_write_micros: self.histograms.snapshot_write_micros.snapshot(),
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

/// Whole microseconds of `duration`, saturating.
pub(crate) fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [u64; 3] = [10, 20, 40];

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let histogram = Histogram::new(&BOUNDS);
        for value in [0, 10, 11, 20, 40, 41, u64::MAX] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.bounds, vec![10, 20, 40]);
        assert_eq!(snapshot.counts, vec![2, 2, 1, 2]);
        assert_eq!(snapshot.count(), 7);
        assert_eq!(snapshot.sum, u64::MAX, "the sum saturates");
    }

    #[test]
    fn doubling_bounds_start_where_asked() {
        assert_eq!(PROPOSAL_MICROS_BOUNDS[0], 100);
        assert_eq!(PROPOSAL_MICROS_BOUNDS[17], 100 << 17);
        assert_eq!(FLUSH_MICROS_BOUNDS[16], 25 << 16);
        assert_eq!(DEPTH_BOUNDS[16], 65_536);
    }
}
