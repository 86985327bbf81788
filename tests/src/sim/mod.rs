//! Deterministic whole-system simulation, version 2 (STYLE.md §8; research/reliability.md
//! §1.2, §5.1): two providers, each a three-replica shard group, real openmls clients on both,
//! federation between them, an adversarial network and power failures, all in one thread,
//! driven by one seed.
//!
//! What runs for real: raft-rs `RawNode`s (one per replica) driven in the `cluster` crate's
//! Ready order, the production `ShardMachine` from `mimid-actors` (room state around openmls
//! `PublicGroup`, room policy, the log; on the follower, `MirrorRoom`), the production
//! `FanoutCore` (MIMI.md §5.4: one notify in flight per follower, batches, backoff), and
//! openmls `MlsGroup` clients with the default room policy that create a room, add and remove
//! members, send messages and race commits.
//!
//! The two providers: `sim.example` is the room's hub (replicas 1-3); `b.example` is a follower
//! (replicas 4-6) with two of the four clients (Bob, added first, and Dave, added later). The
//! hub replica that leads runs a `FanoutCore` over its applied room state, as the room actor
//! does (poll after apply and on retry timers, `on_delivered`, `on_failed`, cursors recorded
//! through the hub's Raft as `Command::FanoutDelivered` 50 ms after the 201); a new leader
//! starts a fresh core from the durable cursors, as a restarted node does. Each batch travels
//! to the follower as a notify over the same faulty network; the follower proposes it as
//! `Command::FanoutReceived` built as the node edge builds it (hub seqs set, Welcomes routed to
//! the b.example clients they add) and answers 201 only once that entry is committed and
//! applied; the answer travels back over the network too, and a notify without an answer
//! times out. b.example clients read the room from the follower's mirror, never from the hub,
//! and submit to the hub as their provider would forward it (`Submitter::Provider`).
//!
//! Membership changes run on both providers' groups (`world::membership`), interleaved with
//! the faults: each provider's spare replica (raft id 7 for the hub, 8 for the follower) starts
//! empty, as a node started with `join_existing`, is added as a learner, caught up by a
//! snapshot that names it and promoted, and one original voter is removed (in some runs the
//! leader, after a leadership transfer) and its data deleted, in one of three orders. Each
//! change goes to the leader as `ClusterHandle::change_members` would: one at a time, refused
//! by the product's rules (`MembershipChange::plan`, the same code, and the leader's checks of
//! `cluster::group::admin`: leading, no change pending, promoting only a replicating learner),
//! with the placement driver's own rules on top (a learner promoted once caught up, no removal
//! below a quorum of the original voters, the leader never removed, a removed replica stopped
//! once it heard of its removal).
//!
//! What is simulated: time (a manual clock; every delay is an event in one queue), the network
//! between all eight replicas (`network`: drops, duplicates, reordering delays, one-way and
//! two-way partitions inside a provider and between the providers, all healing later), disks
//! (`storage`: writes are lost by a crash until synced; a removed replica's are deleted),
//! crashes and restarts of either provider's replicas, per-replica clock skew (the leader's
//! stamp), and client connections (requests go to the replica a client believes leads; a
//! crash fails its pending requests; a removed replica refuses reads and answers `NotLeader`
//! without a hint, so the client goes elsewhere).
//!
//! What is checked: see `checker` (one log, one Commit per epoch, no acknowledged item lost,
//! nothing from removed members, every request answered, convergence and liveness after the
//! faults heal; for the follower: its mirror is, at every point, a prefix of the hub's log
//! restricted to what b.example is to see, in hub order and without duplicates; nothing it
//! acknowledged is lost by its crashes; the hub's durable cursor never passes what the follower
//! acknowledged; after healing it holds everything up to the hub's last item for it), plus what
//! real members observe (each can process every item it is delivered, from the hub or from the
//! mirror, and decrypts exactly what was sent). For membership: every entry whose apply output
//! was acknowledged (a client's answer, a notify's 201, a recorded cursor) stays durable on
//! enough voters of the group's latest configuration that losing any minority of them would
//! not lose it, checked when acknowledged, at every configuration change, when a removed
//! replica's data is deleted and at the end (a removed replica counts for nothing once its
//! removal applied); a replica that applied its removal takes no proposal; every membership
//! plan finishes after healing, and the final configuration's members converge.
//!
//! Determinism: every choice comes from a ChaCha RNG seeded with the seed, and the clients'
//! openmls providers are seeded from it too (`crypto`), so MLS bytes are reproducible and the
//! trace hash covers them. [`run`] the same seed twice and the hashes match. The one outside
//! input is [`SimConfig::leaf_not_before_s`]: openmls checks leaf lifetimes against the wall
//! clock, so the harness picks a window that covers today.
//!
//! Not covered yet: the `cluster` crate's own driver and sled storage (threaded and
//! sled-bound; this drives raft-rs directly in the same order, and mirrors `group::admin`'s
//! leader checks, transfer retries and step-aside, since `Group` is private to the crate), the
//! placement driver itself (`node/src/cluster_ops`; the operator here follows its rules for one
//! spare per group), re-adding a removed node, more than one membership plan per group and
//! run, hibernation, several shards, the actix room actors and fan-out to push streams, the
//! QUIC edges and the federation wire codecs (notifies carry the command the edge would
//! build), the follower's `Forwarder` (b.example clients submit to the hub replicas directly,
//! with the submitter the forwarder would get), the KeyPackage directory (Welcome recipients
//! are read from the hub's item), external joins, Retry-After from a rate limit, standalone
//! proposals, clock jumps during a run, torn writes and bit flips. The next step is to drive
//! `cluster`'s own group code (its Ready order and membership checks) through storage and
//! transport traits instead of this copy.

mod checker;
mod client;
mod conf_change;
mod crypto;
mod network;
mod replica;
mod storage;
mod trace;
mod world;

pub use checker::{Violation, ViolationKind};

/// The simulated clock's zero in milliseconds since the UNIX epoch (2025-01-01T00:00:00Z).
pub const SIM_EPOCH_MS: u64 = 1_735_689_600_000;

/// A bug planted on purpose, to show that the checker catches what it claims to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// No bug: the production state machine as is.
    None,
    /// The state machine tells the loser of an epoch that its Commit was accepted (a hub that
    /// "accepts" a second Commit for an epoch without logging it).
    AckLosingCommits,
    /// Replica `n` acknowledges application messages without appending them (loses
    /// acknowledged items and diverges from the other replicas).
    SkipMessagesOn(u64),
    /// The follower's replicas ignore the hub seqs of notified items and deduplicate only
    /// byte-identical notify bodies (MIMI.md §5.4 without `mimi-hub-seqs`): a resend batched
    /// differently is appended twice.
    FollowerIgnoresHubSeqs,
    /// A leader that applies the removal of a voter keeps counting the removed voter toward its
    /// quorum: its Raft drops another voter in its place (the configuration it stores and
    /// reports is the right one), so entries are acknowledged with the removed replica, whose
    /// data is then deleted, standing in for a voter that lacks them.
    CountsRemovedVoter,
}

/// How long a simulated client's KeyPackages and leaves are valid, from
/// [`SimConfig::leaf_not_before_s`]: 12 weeks, the most openmls accepts (RFC 9420 §7.2 lifetime,
/// openmls' 3×28 days plus one hour).
pub const LEAF_LIFETIME_S: u64 = 12 * 7 * 24 * 3_600;

/// How much one run does. Per-seed fault rates are drawn from the seed (FoundationDB-style
/// "buggify" knobs), not configured here.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Start of the leaf lifetime (UNIX seconds) of every simulated client. openmls checks
    /// leaf lifetimes against the wall clock when the hub imports a tree, so this must cover
    /// today; it is an input (not read from the clock here) so a run stays a function of
    /// (seed, config): see [`SimConfig::new`].
    pub leaf_not_before_s: u64,
    /// Simulated time during which faults are injected and clients act, in ms.
    pub fault_ms: u64,
    /// Simulated time after the faults heal within which replicas must converge and every
    /// member must get a message accepted, in ms.
    pub settle_ms: u64,
    /// Random actions (messages, self-updates) per client, besides the creator's script.
    pub actions_per_client: u32,
    /// Upper bound on handled events; reaching it is a violation.
    pub max_events: u64,
    pub bug: PlantedBug,
    /// Print every trace event to stderr (for replaying one seed).
    pub echo: bool,
}

impl SimConfig {
    /// The default sizes, with leaves valid from `leaf_not_before_s` for [`LEAF_LIFETIME_S`].
    pub fn new(leaf_not_before_s: u64) -> Self {
        SimConfig {
            leaf_not_before_s,
            fault_ms: 30_000,
            settle_ms: 30_000,
            actions_per_client: 8,
            max_events: 400_000,
            bug: PlantedBug::None,
            echo: false,
        }
    }
}

/// Faults injected during one run, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub messages_delayed: u64,
    /// Messages not delivered because a partition cut their link.
    pub messages_partitioned: u64,
    /// Messages that arrived at a crashed replica (or a full inbox).
    pub messages_undeliverable: u64,
    pub partitions: u64,
    pub crashes: u64,
    /// Crashes (of those) of the follower provider's replicas.
    pub follower_crashes: u64,
    /// Crashes that lost writes not yet synced.
    pub crashes_losing_writes: u64,
    pub restarts: u64,
    /// Partitions (of those) between the two providers.
    pub provider_partitions: u64,
    /// Moments all members were told to commit at once.
    pub commit_storms: u64,
    /// Spare replicas added to a group as learners (`MembershipChange::AddLearner`), applied.
    pub learners_added: u64,
    /// Learners promoted to voters (`MembershipChange::Promote`), applied.
    pub learners_promoted: u64,
    /// Original voters removed (`MembershipChange::Remove`), applied.
    pub voters_removed: u64,
    /// Of those, replicas that led their group when their removal was planned: leadership was
    /// transferred (or the group elected anew) first.
    pub leaders_removed: u64,
    /// Removed replicas stopped and their data deleted.
    pub removed_data_deleted: u64,
}

impl FaultCounts {
    pub fn add(&mut self, other: &FaultCounts) {
        for (sum, (_, value)) in self.values_mut().into_iter().zip(other.fields()) {
            *sum += value;
        }
    }

    /// (name, count) for printing.
    pub fn fields(&self) -> [(&'static str, u64); 17] {
        [
            ("messages dropped", self.messages_dropped),
            ("messages duplicated", self.messages_duplicated),
            ("messages delayed", self.messages_delayed),
            ("messages cut by partitions", self.messages_partitioned),
            ("messages to crashed replicas", self.messages_undeliverable),
            ("partitions", self.partitions),
            ("partitions between the providers", self.provider_partitions),
            ("crashes", self.crashes),
            ("crashes of follower replicas", self.follower_crashes),
            ("crashes losing unsynced writes", self.crashes_losing_writes),
            ("restarts", self.restarts),
            ("commit storms", self.commit_storms),
            ("learners added", self.learners_added),
            ("learners promoted", self.learners_promoted),
            ("voters removed", self.voters_removed),
            ("leaders removed", self.leaders_removed),
            ("removed replicas' data deleted", self.removed_data_deleted),
        ]
    }

    /// The counters in the order of [`FaultCounts::fields`].
    fn values_mut(&mut self) -> [&mut u64; 17] {
        [
            &mut self.messages_dropped,
            &mut self.messages_duplicated,
            &mut self.messages_delayed,
            &mut self.messages_partitioned,
            &mut self.messages_undeliverable,
            &mut self.partitions,
            &mut self.provider_partitions,
            &mut self.crashes,
            &mut self.follower_crashes,
            &mut self.crashes_losing_writes,
            &mut self.restarts,
            &mut self.commit_storms,
            &mut self.learners_added,
            &mut self.learners_promoted,
            &mut self.voters_removed,
            &mut self.leaders_removed,
            &mut self.removed_data_deleted,
        ]
    }
}

/// How client requests ended during one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub sent: u64,
    /// Applied with a positive verdict (room created, update success, message accepted).
    pub acknowledged: u64,
    /// Applied with a negative verdict (wrongEpoch, notAllowed, epochTooOld, ...).
    pub rejected: u64,
    /// Refused before proposing (not leader, busy, unavailable).
    pub refused: u64,
    /// Outcome unknown to the client (dropped on a leader change, or the replica crashed).
    pub indeterminate: u64,
}

impl RequestCounts {
    pub fn add(&mut self, other: &RequestCounts) {
        self.sent += other.sent;
        self.acknowledged += other.acknowledged;
        self.rejected += other.rejected;
        self.refused += other.refused;
        self.indeterminate += other.indeterminate;
    }
}

/// What the paths the invariants are about were exercised (so a quiet run is visible).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Commits acknowledged (room changes and key rotations).
    pub commits_acknowledged: u64,
    /// Commits answered `wrongEpoch`: another Commit won the epoch (RFC 9420 §14).
    pub commits_lost_epoch: u64,
    /// Requests from a removed client answered `notAllowed` (MIMI.md §7.4).
    pub removed_client_refusals: u64,
    /// Snapshots a lagging replica installed from the leader.
    pub snapshots_installed: u64,
    /// Items members decrypted and checked against what was sent.
    pub messages_decrypted: u64,
    /// Of those, decrypted by b.example clients from the follower's mirror.
    pub mirror_messages_decrypted: u64,
    /// Notifies the hub sent (MIMI.md §5.4), counting resends.
    pub notifies_sent: u64,
    /// Notifies answered 201 in time (`FanoutCore::on_delivered`).
    pub notifies_delivered: u64,
    /// Notifies that failed or timed out (`FanoutCore::on_failed`, then a resend).
    pub notifies_failed: u64,
    /// Notified items the follower already had and dropped by hub seq or body hash.
    pub notified_items_deduplicated: u64,
    /// Fan-out cores a hub leader started from the durable cursors.
    pub fanout_cores_started: u64,
    /// `FanoutDelivered` cursors committed through the hub's Raft.
    pub fanout_cursors_recorded: u64,
    /// Membership changes the leader refused by rule (`MembershipError`: not leader, another
    /// change in progress, learner behind, already a member, ...); each changed nothing.
    pub membership_refused: u64,
    /// Of those, promotions refused because the learner had not caught up.
    pub learners_behind_refused: u64,
    /// Of those, changes refused because another was in progress (one at a time).
    pub changes_in_progress_refused: u64,
    /// Membership changes dropped (leadership moved before they applied).
    pub membership_dropped: u64,
    /// Leadership transfers completed (the target led).
    pub leader_transfers: u64,
    /// Client requests and reads that reached a replica removed from its group (answered
    /// `NotLeader` without a hint, or refused, so the client went elsewhere).
    pub removed_replica_redirects: u64,
    /// Acknowledged entries audited for durability on the voters of the configuration.
    pub durability_audits: u64,
    /// Leaders that applied their own removal (leadership moved to them after the removal was
    /// proposed) and stepped down there, as `cluster::membership::step_down_if_removed` makes
    /// them (raft-rs 0.7 panicked at their next commit before).
    pub removed_leaders_stepped_down: u64,
    /// Promotions proposed for a learner raft-rs held in the probe state, accepted because it
    /// matched the leader's last index (`cluster::membership::learner_caught_up`; refused
    /// `LearnerBehind` until a write before).
    pub probed_learners_promoted: u64,
}

impl Coverage {
    pub fn add(&mut self, other: &Coverage) {
        self.commits_acknowledged += other.commits_acknowledged;
        self.commits_lost_epoch += other.commits_lost_epoch;
        self.removed_client_refusals += other.removed_client_refusals;
        self.snapshots_installed += other.snapshots_installed;
        self.messages_decrypted += other.messages_decrypted;
        self.mirror_messages_decrypted += other.mirror_messages_decrypted;
        self.notifies_sent += other.notifies_sent;
        self.notifies_delivered += other.notifies_delivered;
        self.notifies_failed += other.notifies_failed;
        self.notified_items_deduplicated += other.notified_items_deduplicated;
        self.fanout_cores_started += other.fanout_cores_started;
        self.fanout_cursors_recorded += other.fanout_cursors_recorded;
        self.membership_refused += other.membership_refused;
        self.learners_behind_refused += other.learners_behind_refused;
        self.changes_in_progress_refused += other.changes_in_progress_refused;
        self.membership_dropped += other.membership_dropped;
        self.leader_transfers += other.leader_transfers;
        self.removed_replica_redirects += other.removed_replica_redirects;
        self.durability_audits += other.durability_audits;
        self.removed_leaders_stepped_down += other.removed_leaders_stepped_down;
        self.probed_learners_promoted += other.probed_learners_promoted;
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub seed: u64,
    /// SHA-256 over the event trace, hex.
    pub trace_hash: String,
    pub events: u64,
    pub simulated_ms: u64,
    /// Items in the room log at the end.
    pub log_items: u64,
    /// Items in the follower's mirror of the room at the end.
    pub mirror_items: u64,
    pub faults: FaultCounts,
    pub requests: RequestCounts,
    pub coverage: Coverage,
    pub violations: Vec<Violation>,
}

/// Runs one seed. Never panics on a violation: violations are in the report.
pub fn run(seed: u64, config: &SimConfig) -> SimReport {
    world::World::new(seed, config).run()
}
