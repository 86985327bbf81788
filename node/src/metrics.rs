//! The node's Prometheus metrics, all under the `mimid_` prefix, served by the admin listener
//! at `/metrics` in the OpenMetrics text format.
//!
//! Every label set is a small typed struct or enum, so label cardinality is fixed by the code:
//! endpoints are `&'static str` route names chosen by the API layer, never request paths, and
//! limits are a closed enum. DESIGN.md §8 asks for a metric whenever a bound is hit; those all
//! go to `mimid_limit_hits_total{limit}`.
//!
//! Raft counters live in the cluster driver; rather than double-counting them here, the node
//! copies the driver's cumulative totals in with [`Metrics::set_raft_totals`] (e.g. on every
//! scrape or on a timer) and a collector reports them as counters. The same holds for the
//! histograms measured by other layers (proposal latency, durable-write latency and inbox depth
//! in the cluster driver, room mailbox depth and room move times in the actors):
//! [`Metrics::observe_replication`] and [`Metrics::observe_actors`] copy their snapshots in,
//! and a collector reports them as histograms (and the actors' room move totals as counters).
//!
//! Label sets that depend on the deployment are bounded too: `shard` (at most the configured
//! shard count, only shards this node leads), `peer` of the node-to-node series (the cluster's
//! nodes), `provider` of the fan-out lag (the [`FANOUT_LAG_PROVIDERS`] providers with the most
//! items behind, the rest summed under `other`), and `peer` of the federation series (the
//! first [`FEDERATION_PEER_SERIES`] peer domains that answered this node, any other under
//! `other`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mimid_actors::actor::ActorMetrics;
use mimid_actors::command::CommandScope;
use mimid_cluster::{ClusterMetrics, HistogramSnapshot, NodeId, ShardStatus};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::admin::auth::AdminOutcome;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Follower providers with a series of their own in `mimid_fanout_lag_items` and
/// `mimid_fanout_lag_seconds` (those with the most items behind); the others are summed under
/// `provider="other"`. Which providers have users in rooms hosted here is up to the users, so
/// the label set is capped.
pub const FANOUT_LAG_PROVIDERS: usize = 10;

/// Peer domains with series of their own in the `mimid_federation_peer_*` families: the first
/// ones that answered this node since it started; requests to any other count under
/// `peer="other"` (which has no RTT). Peers are whoever has users in rooms here, so the label
/// set is capped.
pub const FEDERATION_PEER_SERIES: usize = 32;

/// The label value that sums what a capped label set leaves out.
pub const OTHER: &str = "other";

/// All metrics of one node. Cheap to share behind an `Arc`; every update is a lock-free atomic
/// operation except the first use of a new label set.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    commits: Family<ResultLabels, Counter>,
    app_messages: Family<ResultLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    peer_requests: Family<PeerLabels, Counter>,
    notifies: Family<NotifyLabels, Counter>,
    rooms_behind: Gauge,
    backups: Family<BackupLabels, Counter>,
    admin_requests: Family<AdminRequestLabels, Counter>,
    push_streams: Gauge,
    rooms_active: Gauge,
    ready: Gauge,
    shards_led: Gauge,
    hibernating_groups: Gauge,
    forwarded_proposals: Family<ForwardLabels, Counter>,
    remote_reads: Family<RemoteReadLabels, Counter>,
    placement_moves: Family<PlacementLabels, Counter>,
    placement_pending: Gauge,
    shard_splits: Family<SplitLabels, Counter>,
    blocked_requests: Family<BlockedLabels, Counter>,
    raft: Arc<RaftCounters>,
    cluster_net: ClusterNetMetrics,
    layers: Arc<LayerHistograms>,
    log_lag: Family<ShardLabels, Gauge>,
    /// The shards `log_lag` has a series for.
    log_lag_shards: Mutex<BTreeSet<u64>>,
    fanout_lag: FanoutLagMetrics,
    federation: FederationPeerMetrics,
}

/// Labels of `mimid_raft_log_lag_entries`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// The shard.
    pub shard: u64,
}

/// Labels of `mimid_fanout_lag_items` and `mimid_fanout_lag_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The follower provider's domain, or [`OTHER`].
    pub provider: String,
}

/// Labels of the `mimid_federation_peer_*` series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FederationPeerLabels {
    /// The peer provider's domain, or [`OTHER`].
    pub peer: String,
}

/// The fan-out lag series and the providers they have series for.
#[derive(Debug, Default)]
struct FanoutLagMetrics {
    items: Family<ProviderLabels, Gauge>,
    seconds: Family<ProviderLabels, Gauge<f64, AtomicU64>>,
    providers: Mutex<BTreeSet<String>>,
}

/// The QUIC path of this node's connections to peer providers (`crate::federation::Peers`).
#[derive(Debug, Default)]
struct FederationPeerMetrics {
    rtt: Family<FederationPeerLabels, Gauge<f64, AtomicU64>>,
    lost_packets: Family<FederationPeerLabels, Counter>,
    sent_packets: Family<FederationPeerLabels, Counter>,
    in_flight: Family<FederationPeerLabels, Gauge>,
    /// The domains with a label of their own (at most [`FEDERATION_PEER_SERIES`]).
    labelled: Mutex<BTreeSet<String>>,
    /// Per label, the connection last sampled and its totals then.
    path: Mutex<HashMap<String, PathTotals>>,
}

/// A connection's cumulative path counters as last sampled, so each sample adds only what is
/// new to the counters (a new connection starts from zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathTotals {
    connection: usize,
    lost: u64,
    sent: u64,
}

impl PathTotals {
    /// What `stats` of `connection` adds to the counters since `last`: all of it for another
    /// connection, the growth for the same one.
    fn delta(last: Option<PathTotals>, connection: usize, lost: u64, sent: u64) -> (u64, u64) {
        match last {
            Some(last) if last.connection == connection => (
                lost.saturating_sub(last.lost),
                sent.saturating_sub(last.sent),
            ),
            _ => (lost, sent),
        }
    }
}

/// A QUIC connection's path figures as sampled ([`Metrics::sample_cluster_peer`],
/// [`Metrics::sample_federation_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSample {
    /// `quinn::Connection::stable_id`: a new connection's counters start again from zero.
    pub connection: usize,
    /// The RTT estimate.
    pub rtt: Duration,
    /// Packets the connection declared lost so far.
    pub lost_packets: u64,
    /// Packets the connection sent so far.
    pub sent_packets: u64,
}

impl PathSample {
    /// The figures of `connection` now.
    pub fn of(connection: &quinn::Connection) -> PathSample {
        let path = connection.stats().path;
        PathSample {
            connection: connection.stable_id(),
            rtt: path.rtt,
            lost_packets: path.lost_packets,
            sent_packets: path.sent_packets,
        }
    }
}

/// Counts a request or RPC as in flight for as long as it lives.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlightGuard {
    gauge: Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The node-to-node transport's series (`mimid_cluster_*`, [`crate::cluster_net`]). Peer labels
/// are node ids from the configuration, so their number is the cluster's size.
#[derive(Debug)]
struct ClusterNetMetrics {
    frames_sent: Counter,
    frames_received: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
    frames_dropped: Family<FrameDropLabels, Counter>,
    peer_connected: Family<ClusterPeerLabels, Gauge>,
    peer_rtt: Family<ClusterPeerLabels, Gauge<f64, AtomicU64>>,
    peer_lost_packets: Family<ClusterPeerLabels, Counter>,
    peer_sent_packets: Family<ClusterPeerLabels, Counter>,
    peer_rpcs_in_flight: Family<ClusterPeerLabels, Gauge>,
    /// Per peer, the connection last sampled and its totals then.
    peer_path: Mutex<HashMap<NodeId, PathTotals>>,
    handshakes_refused: Family<HandshakeRefusalLabels, Counter>,
    rpc_calls: Family<RpcLabels, Counter>,
}

/// Labels of the per-peer node-to-node series (`mimid_cluster_peer_connected`,
/// `mimid_cluster_peer_rtt_seconds`, `mimid_cluster_peer_lost_packets_total`,
/// `mimid_cluster_peer_sent_packets_total`, `mimid_cluster_peer_rpcs_in_flight`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterPeerLabels {
    /// The peer's node id.
    pub peer: u64,
}

/// Labels of `mimid_cluster_frames_dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameDropLabels {
    /// Why the frame was dropped.
    pub reason: FrameDrop,
}

/// Why the node-to-node transport dropped a Raft frame (Raft retransmits what matters). Every
/// value has a series from the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FrameDrop {
    /// The peer's queue (`cluster.peer_queue_frames`) was full.
    QueueFull,
    /// The peer was unreachable: its connection failed and is being retried.
    Disconnected,
    /// The frame exceeded `cluster.max_frame_bytes` (outgoing: not sent; incoming: the
    /// connection that carried it was closed).
    TooLarge,
    /// The destination is not a configured peer.
    UnknownPeer,
}

impl FrameDrop {
    /// Every reason, in a fixed order.
    pub const ALL: [FrameDrop; 4] = [
        FrameDrop::QueueFull,
        FrameDrop::Disconnected,
        FrameDrop::TooLarge,
        FrameDrop::UnknownPeer,
    ];

    /// The label value, e.g. `queue_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameDrop::QueueFull => "queue_full",
            FrameDrop::Disconnected => "disconnected",
            FrameDrop::TooLarge => "too_large",
            FrameDrop::UnknownPeer => "unknown_peer",
        }
    }
}

impl EncodeLabelValue for FrameDrop {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_cluster_handshakes_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeRefusalLabels {
    /// Why this node refused the connection.
    pub reason: HandshakeRefusal,
}

/// Why this node refused a node-to-node connection, as acceptor or as dialler. Every value has
/// a series from the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// The QUIC/TLS handshake failed: no certificate, one not issued by the cluster CA, a
    /// wrong ALPN, or the peer gave up.
    HandshakeFailed,
    /// More node-to-node connections than the listener serves at once.
    TooManyConnections,
    /// No hello within the deadline, or a hello that does not parse.
    Malformed,
    /// The hello speaks another protocol version.
    Version,
    /// The hello names another `cluster.name`.
    ClusterName,
    /// The hello's node id is not a configured peer.
    UnknownNode,
    /// The hello claims this node's own id.
    OwnNodeId,
    /// The certificate does not name the address configured for the claimed node id.
    Identity,
    /// Dialler side: the node that answered is not the node that was dialled.
    WrongNode,
    /// The hello names another cluster id (a node of another cluster formed by `mimid init`,
    /// even with the same `cluster.name` and CA), or one side uses `cluster.join` and the
    /// other static `cluster.peers`.
    ClusterId,
}

impl HandshakeRefusal {
    /// Every reason, in a fixed order.
    pub const ALL: [HandshakeRefusal; 10] = [
        HandshakeRefusal::HandshakeFailed,
        HandshakeRefusal::TooManyConnections,
        HandshakeRefusal::Malformed,
        HandshakeRefusal::Version,
        HandshakeRefusal::ClusterName,
        HandshakeRefusal::UnknownNode,
        HandshakeRefusal::OwnNodeId,
        HandshakeRefusal::Identity,
        HandshakeRefusal::WrongNode,
        HandshakeRefusal::ClusterId,
    ];

    /// The label value, e.g. `cluster_name`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeRefusal::HandshakeFailed => "handshake_failed",
            HandshakeRefusal::TooManyConnections => "too_many_connections",
            HandshakeRefusal::Malformed => "malformed",
            HandshakeRefusal::Version => "version",
            HandshakeRefusal::ClusterName => "cluster_name",
            HandshakeRefusal::UnknownNode => "unknown_node",
            HandshakeRefusal::OwnNodeId => "own_node_id",
            HandshakeRefusal::Identity => "identity",
            HandshakeRefusal::WrongNode => "wrong_node",
            HandshakeRefusal::ClusterId => "cluster_id",
        }
    }
}

impl EncodeLabelValue for HandshakeRefusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_cluster_rpc_calls_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// How the call ended.
    pub outcome: RpcOutcome,
}

/// How an outgoing node-to-node RPC ended (`crate::cluster_net::NetSender::call`). Every value
/// has a series from the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RpcOutcome {
    /// The peer answered.
    Answered,
    /// No connection to the peer.
    Unreachable,
    /// The caller's timeout passed.
    Timeout,
    /// The peer refused the request.
    Refused,
    /// The request or the answer exceeded `cluster.max_frame_bytes`.
    TooLarge,
    /// The connection or stream closed mid-call.
    Closed,
}

impl RpcOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [RpcOutcome; 6] = [
        RpcOutcome::Answered,
        RpcOutcome::Unreachable,
        RpcOutcome::Timeout,
        RpcOutcome::Refused,
        RpcOutcome::TooLarge,
        RpcOutcome::Closed,
    ];

    /// The label value, e.g. `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcOutcome::Answered => "answered",
            RpcOutcome::Unreachable => "unreachable",
            RpcOutcome::Timeout => "timeout",
            RpcOutcome::Refused => "refused",
            RpcOutcome::TooLarge => "too_large",
            RpcOutcome::Closed => "closed",
        }
    }
}

impl EncodeLabelValue for RpcOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_raft_forwarded_proposals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// Where the command lives: `room`, `key` or `direct` (`mimid_actors::command::CommandScope`).
    pub scope: ScopeLabel,
    /// How the forwarded proposal ended.
    pub outcome: ForwardOutcome,
}

/// A command's scope as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct ScopeLabel(pub CommandScope);

impl EncodeLabelValue for ScopeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

/// How a proposal sent to its shard's leader ended (`crate::cluster_net::forward`). Every
/// value has a series from the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// The leader applied it and answered the apply's output.
    Applied,
    /// The node asked no longer leads the shard (the proposer asks again).
    NotLeader,
    /// The leader could not take or finish it (busy, stopped, undecodable, dropped).
    Refused,
    /// No answer: unreachable, timed out, or an answer this node cannot read. The outcome is
    /// unknown.
    Failed,
}

impl ForwardOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [ForwardOutcome; 4] = [
        ForwardOutcome::Applied,
        ForwardOutcome::NotLeader,
        ForwardOutcome::Refused,
        ForwardOutcome::Failed,
    ];

    /// The label value, e.g. `not_leader`.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardOutcome::Applied => "applied",
            ForwardOutcome::NotLeader => "not_leader",
            ForwardOutcome::Refused => "refused",
            ForwardOutcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for ForwardOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_remote_reads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemoteReadLabels {
    /// `read` (one read of a shard this node does not hold) or `pull` (a push-stream relay's
    /// long poll).
    pub kind: &'static str,
    /// `answered`, `refused` (the node asked answered an error: it does not hold the shard,
    /// or could not confirm a negative read) or `failed` (no answer).
    pub outcome: &'static str,
}

/// Labels of `mimid_placement_moves_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    /// How the placement step ended.
    pub outcome: PlacementOutcome,
}

/// How one step of the placement driver (`crate::cluster_ops`: a membership change, a
/// leadership transfer, marking a node decommissioned) ended. Every value has a series from
/// the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PlacementOutcome {
    /// The shard's leader applied it (or the registry took it).
    Applied,
    /// Refused for now (another change in progress, a learner behind, leadership moving); the
    /// driver tries again later.
    Retried,
    /// No answer, or refused for good; the driver plans again from what the nodes report.
    Failed,
}

impl PlacementOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [PlacementOutcome; 3] = [
        PlacementOutcome::Applied,
        PlacementOutcome::Retried,
        PlacementOutcome::Failed,
    ];

    /// The label value, e.g. `retried`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementOutcome::Applied => "applied",
            PlacementOutcome::Retried => "retried",
            PlacementOutcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for PlacementOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_shard_splits_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SplitLabels {
    /// Who asked for the split.
    pub trigger: SplitTrigger,
    /// How it ended.
    pub outcome: SplitOutcomeLabel,
}

/// Who asked for a shard split (`crate::cluster_ops::split`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SplitTrigger {
    /// The node's split policy (`[cluster.split]` thresholds).
    Automatic,
    /// The operator (`POST /admin/shards/split`, `mimid shard split`).
    Operator,
}

impl SplitTrigger {
    /// Every trigger, in a fixed order.
    pub const ALL: [SplitTrigger; 2] = [SplitTrigger::Automatic, SplitTrigger::Operator];

    /// The label value, e.g. `automatic`.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitTrigger::Automatic => "automatic",
            SplitTrigger::Operator => "operator",
        }
    }
}

impl EncodeLabelValue for SplitTrigger {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// How a shard split ended. Every value has a series from the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SplitOutcomeLabel {
    /// It moved at least one room (some may have failed: the log names them).
    Moved,
    /// Refused before anything moved (no split shard, a residency shard, no room to move).
    Refused,
    /// It moved no room: the cluster could not take the moves (no leader, a timeout).
    Failed,
}

impl SplitOutcomeLabel {
    /// Every outcome, in a fixed order.
    pub const ALL: [SplitOutcomeLabel; 3] = [
        SplitOutcomeLabel::Moved,
        SplitOutcomeLabel::Refused,
        SplitOutcomeLabel::Failed,
    ];

    /// The label value, e.g. `moved`.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitOutcomeLabel::Moved => "moved",
            SplitOutcomeLabel::Refused => "refused",
            SplitOutcomeLabel::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for SplitOutcomeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, e.g. `"update"`; a fixed set chosen by the API layer.
    pub endpoint: &'static str,
    /// HTTP status code of the response.
    pub status: u16,
}

/// Labels of `mimid_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Route name.
    pub endpoint: &'static str,
}

/// Labels of `mimid_commits_total` and `mimid_app_messages_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// How the hub decided.
    pub result: Outcome,
}

/// The verdict on an MLS Commit or application message at the hub (MIMI protocol-06 §5.2,
/// §5.3; decided in apply, DESIGN.md §2).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and ordered into the room log.
    Accepted,
    /// Rejected by a validity or policy check.
    Rejected,
    /// Not decided because of an internal failure (storage, replication).
    Failed,
}

/// Labels of `mimid_limit_hits_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which bound was hit.
    pub limit: Limit,
}

/// A configured bound (DESIGN.md §8) that turned a request or item away.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Limit {
    /// A request body exceeded `limits.max_body_bytes` (answered 413).
    BodySize,
    /// The cluster driver's inbox was full (`cluster.inbox_capacity`).
    InboxFull,
    /// A client push stream's queue was full (`limits.stream_queue`).
    StreamQueueFull,
    /// A room actor's mailbox was full (`limits.room_mailbox`).
    MailboxFull,
    /// A QUIC connection was refused at `limits.max_connections`.
    Connections,
    /// A request was answered 503 at `limits.max_concurrent_requests`.
    ConcurrentRequests,
    /// A request's headers or body did not arrive within `limits.request_timeout_ms`.
    RequestTimeout,
    /// A peer provider exceeded `limits.rate.peer_*` on the server-to-server API (429).
    PeerRate,
    /// A user's clients exceeded `limits.rate.user_*` on the client API (429).
    UserRate,
    /// A KeyPackage claim exceeded `limits.rate.key_material_claims_*` (429).
    KeyMaterialClaims,
    /// A room already held the most abuse reports it keeps (507, MIMI.md §5.8).
    AbuseReports,
    /// A user's consent records (requests, decisions or its own requests) were at their bound
    /// (MIMI.md §5.6); a request is dropped, a decision refused.
    ConsentRecords,
    /// A message's Frank was signed again because `limits.frank_cache_entries` had evicted it
    /// (a delivery further behind than that many franked messages): CPU only, the Frank is the
    /// same bytes (`crate::franking`).
    FrankCache,
    /// A push-stream relay waited for one of the long polls a node may have open to one peer
    /// (`cluster_net::PULL_STREAMS`): the relayed items wait; writes and reads, which have
    /// streams of their own, do not.
    RelayStreams,
}

/// Labels of `mimid_blocked_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    /// What was blocked.
    pub kind: BlockedKind,
}

/// What made a request refused by the operator's blocklist (MIMI.md §13). Every value has a
/// series from the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum BlockedKind {
    /// A blocked provider's server-to-server request.
    Provider,
    /// A request by or about a blocked user (client API or server-to-server).
    User,
}

impl BlockedKind {
    /// Every kind, in a fixed order.
    pub const ALL: [BlockedKind; 2] = [BlockedKind::Provider, BlockedKind::User];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockedKind::Provider => "provider",
            BlockedKind::User => "user",
        }
    }
}

impl EncodeLabelValue for BlockedKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_peer_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// How the request ended.
    pub outcome: PeerOutcome,
}

/// How an outgoing server-to-server request ended (`crate::federation::Peers`). Every value
/// has a series from the start, so dashboards can group by it before the first failure.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PeerOutcome {
    /// The peer answered with an HTTP response (any status).
    Answered,
    /// The peer's domain could not be resolved to an address.
    ResolveFailed,
    /// No connection: QUIC or TLS handshake failed (including the peer refusing our
    /// certificate).
    ConnectFailed,
    /// `federation.request_timeout_ms` passed.
    TimedOut,
    /// The peer's directory could not be fetched as a usable JSON object.
    DirectoryFailed,
    /// The connection or stream failed mid-request, or the response was too large.
    TransportFailed,
}

impl PeerOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [PeerOutcome; 6] = [
        PeerOutcome::Answered,
        PeerOutcome::ResolveFailed,
        PeerOutcome::ConnectFailed,
        PeerOutcome::TimedOut,
        PeerOutcome::DirectoryFailed,
        PeerOutcome::TransportFailed,
    ];

    /// The label value, e.g. `connect_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerOutcome::Answered => "answered",
            PeerOutcome::ResolveFailed => "resolve_failed",
            PeerOutcome::ConnectFailed => "connect_failed",
            PeerOutcome::TimedOut => "timed_out",
            PeerOutcome::DirectoryFailed => "directory_failed",
            PeerOutcome::TransportFailed => "transport_failed",
        }
    }
}

impl EncodeLabelValue for PeerOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_fanout_notifies_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    /// `delivered` (the follower answered 201) or `failed` (to be retried).
    pub outcome: &'static str,
}

/// Labels of `mimid_backups_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupLabels {
    /// How the backup request ended.
    pub result: BackupResult,
}

/// How a `POST /admin/backup` ended (`crate::backup::Backups`). Every value has a series from
/// the start.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum BackupResult {
    /// The backup file was produced.
    Completed,
    /// Refused because another backup was running (409).
    Busy,
    /// Not ready, a shard could not be serialised, or the node is stopping.
    Failed,
}

impl BackupResult {
    /// Every result, in a fixed order.
    pub const ALL: [BackupResult; 3] = [
        BackupResult::Completed,
        BackupResult::Busy,
        BackupResult::Failed,
    ];

    /// The label value, e.g. `completed`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupResult::Completed => "completed",
            BackupResult::Busy => "busy",
            BackupResult::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for BackupResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `mimid_admin_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRequestLabels {
    /// What the admin listener's token gate decided (`crate::admin::auth`).
    pub outcome: AdminOutcome,
}

/// Cumulative Raft counters of the cluster driver, copied in by [`Metrics::set_raft_totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftTotals {
    /// Proposals stepped into Raft.
    pub proposals: u64,
    /// Entries applied to state machines.
    pub applied: u64,
    /// Durable flushes of the Raft log.
    pub flushes: u64,
    /// Proposals dropped by Raft (leader change, overwritten entries) and answered with an
    /// error (floors.md pitfall 13).
    pub proposals_dropped: u64,
    /// Shard snapshots taken (each compacts its log).
    pub snapshots: u64,
    /// Leadership changes seen by local shard groups.
    pub leader_changes: u64,
    /// Proposals refused because the driver inbox or a shard's uncommitted bytes were full.
    pub busy_rejections: u64,
    /// Shard groups stopped by a failure (storage, state machine) since start.
    pub failed_shards: u64,
}

/// Counts a push stream as open for as long as it lives.
#[derive(Debug)]
#[must_use = "the push stream counts as open only while the guard lives"]
pub struct PushStreamGuard {
    gauge: Gauge,
}

impl Metrics {
    /// Creates all metrics, registered under the `mimid_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mimid");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint and HTTP status",
            requests.clone(),
        );
        let request_duration =
            Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "request_duration",
            "Time from request headers to response headers, by endpoint",
            Unit::Seconds,
            request_duration.clone(),
        );
        let commits = Family::<ResultLabels, Counter>::default();
        registry.register(
            "commits",
            "MLS Commits decided by hub rooms, by outcome",
            commits.clone(),
        );
        let app_messages = Family::<ResultLabels, Counter>::default();
        registry.register(
            "app_messages",
            "Application messages decided by hub rooms, by outcome",
            app_messages.clone(),
        );
        let limit_hits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_hits",
            "Requests or items turned away because a configured bound was reached",
            limit_hits.clone(),
        );
        let peer_requests = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peer_requests",
            "Outgoing server-to-server requests to peer providers, by outcome",
            peer_requests.clone(),
        );
        for outcome in PeerOutcome::ALL {
            drop(peer_requests.get_or_create(&PeerLabels { outcome }));
        }
        let notifies = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "fanout_notifies",
            "Notifies sent by hosted rooms to follower providers (MIMI protocol-06 §5.4), by outcome",
            notifies.clone(),
        );
        for outcome in ["delivered", "failed"] {
            drop(notifies.get_or_create(&NotifyLabels { outcome }));
        }
        let rooms_behind = Gauge::default();
        registry.register(
            "fanout_rooms_behind",
            "Pairs of a hosted room and a follower provider whose notifies are failing right now",
            rooms_behind.clone(),
        );
        let backups = Family::<BackupLabels, Counter>::default();
        registry.register(
            "backups",
            "Online backups requested on the admin listener (POST /admin/backup), by result",
            backups.clone(),
        );
        for result in BackupResult::ALL {
            drop(backups.get_or_create(&BackupLabels { result }));
        }
        let admin_requests = Family::<AdminRequestLabels, Counter>::default();
        registry.register(
            "admin_requests",
            "Requests to the admin listener's operator routes (all but /healthz, /readyz and \
             /metrics), by outcome: authorized, open (no admin_token_file), missing_token (401), \
             wrong_token (403)",
            admin_requests.clone(),
        );
        for outcome in AdminOutcome::COUNTED {
            drop(admin_requests.get_or_create(&AdminRequestLabels { outcome }));
        }
        let push_streams = Gauge::default();
        registry.register(
            "push_streams",
            "Client push streams currently open on this node",
            push_streams.clone(),
        );
        let rooms_active = Gauge::default();
        registry.register(
            "rooms_active",
            "Room actors currently running on this node",
            rooms_active.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the node is ready to serve (what /readyz answers 200 for), else 0",
            ready.clone(),
        );
        let shards_led = Gauge::default();
        registry.register(
            "raft_shards_led",
            "Shards whose local replica is the Raft leader (a single node leads every shard)",
            shards_led.clone(),
        );
        let hibernating_groups = Gauge::default();
        registry.register(
            "raft_hibernating_groups",
            "Shard replicas on this node that hibernate: idle, they neither tick nor heartbeat until a write, a Raft message or an unreachable leader wakes them",
            hibernating_groups.clone(),
        );
        let forwarded_proposals = Family::<ForwardLabels, Counter>::default();
        registry.register(
            "raft_forwarded_proposals",
            "Proposals sent to the node leading their shard, by the command's scope (room, key or direct) and outcome",
            forwarded_proposals.clone(),
        );
        for scope in CommandScope::ALL {
            for outcome in ForwardOutcome::ALL {
                drop(forwarded_proposals.get_or_create(&ForwardLabels {
                    scope: ScopeLabel(scope),
                    outcome,
                }));
            }
        }
        let remote_reads = Family::<RemoteReadLabels, Counter>::default();
        registry.register(
            "remote_reads",
            "Reads and push-stream pulls of shards this node holds no replica of, sent to a node that holds one (ARCHITECTURE.md \"Remote reads\"), by kind and outcome",
            remote_reads.clone(),
        );
        for kind in ["read", "pull"] {
            for outcome in ["answered", "refused", "failed"] {
                drop(remote_reads.get_or_create(&RemoteReadLabels { kind, outcome }));
            }
        }
        let blocked_requests = Family::<BlockedLabels, Counter>::default();
        registry.register(
            "blocked_requests",
            "Requests refused because the operator blocked their provider or user (MIMI.md §13), by kind",
            blocked_requests.clone(),
        );
        for kind in BlockedKind::ALL {
            drop(blocked_requests.get_or_create(&BlockedLabels { kind }));
        }
        let placement_moves = Family::<PlacementLabels, Counter>::default();
        registry.register(
            "placement_moves",
            "Steps of the placement driver (membership changes, leadership transfers, nodes marked decommissioned), by outcome",
            placement_moves.clone(),
        );
        for outcome in PlacementOutcome::ALL {
            drop(placement_moves.get_or_create(&PlacementLabels { outcome }));
        }
        let placement_pending = Gauge::default();
        registry.register(
            "placement_pending",
            "Membership changes the placement driver still wants (replicas not where placement wants them); 0 on nodes not leading shard 0",
            placement_pending.clone(),
        );
        let shard_splits = Family::<SplitLabels, Counter>::default();
        registry.register(
            "shard_splits",
            "Shard splits this node ran (about half a shard's rooms handed to a split shard; ops/runbooks/shard-split.md), by trigger and outcome",
            shard_splits.clone(),
        );
        for trigger in SplitTrigger::ALL {
            for outcome in SplitOutcomeLabel::ALL {
                drop(shard_splits.get_or_create(&SplitLabels { trigger, outcome }));
            }
        }
        let raft = Arc::new(RaftCounters::default());
        registry.register_collector(Box::new(raft.clone()));
        let cluster_net = ClusterNetMetrics::register(&mut registry);
        let layers = Arc::new(LayerHistograms::default());
        registry.register_collector(Box::new(layers.clone()));
        let log_lag = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "raft_log_lag_entries",
            "On each shard this node leads: entries between the leader's last persisted log index and the slowest member's matched index (0 when every member has everything)",
            AlwaysDeclared(log_lag.clone()),
        );
        let fanout_lag = FanoutLagMetrics::default();
        registry.register(
            "fanout_lag_items",
            "Items hosted rooms hold for the follower provider that it has not acknowledged, summed over the rooms behind on it (the providers with most items; the rest under provider=\"other\")",
            AlwaysDeclared(fanout_lag.items.clone()),
        );
        registry.register_with_unit(
            "fanout_lag",
            "Age of the oldest item a hosted room holds for the follower provider that it has not acknowledged (hub time of the item to now)",
            Unit::Seconds,
            AlwaysDeclared(fanout_lag.seconds.clone()),
        );
        let federation = FederationPeerMetrics::default();
        registry.register_with_unit(
            "federation_peer_rtt",
            "QUIC round-trip time estimate of the connection to the peer provider, as of this node's last request to it",
            Unit::Seconds,
            AlwaysDeclared(federation.rtt.clone()),
        );
        registry.register(
            "federation_peer_lost_packets",
            "QUIC packets this node's connections to the peer provider declared lost (sampled after each request)",
            AlwaysDeclared(federation.lost_packets.clone()),
        );
        registry.register(
            "federation_peer_sent_packets",
            "QUIC packets this node's connections to the peer provider sent (sampled with the lost ones, for a loss ratio)",
            AlwaysDeclared(federation.sent_packets.clone()),
        );
        registry.register(
            "federation_peer_requests_in_flight",
            "Server-to-server requests to the peer provider waiting for their answer (each is one HTTP/3 request stream once connected)",
            AlwaysDeclared(federation.in_flight.clone()),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            commits,
            app_messages,
            limit_hits,
            peer_requests,
            notifies,
            rooms_behind,
            backups,
            admin_requests,
            push_streams,
            rooms_active,
            ready,
            shards_led,
            hibernating_groups,
            forwarded_proposals,
            remote_reads,
            placement_moves,
            placement_pending,
            shard_splits,
            blocked_requests,
            raft,
            cluster_net,
            layers,
            log_lag,
            log_lag_shards: Mutex::default(),
            fanout_lag,
            federation,
        }
    }

    /// Records one answered request.
    pub fn observe_request(
        &self,
        endpoint: &'static str,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: status.as_u16(),
            })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the hub's verdict on an MLS Commit.
    pub fn count_commit(&self, result: Outcome) {
        self.commits.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records the hub's verdict on an application message.
    pub fn count_app_message(&self, result: Outcome) {
        self.app_messages
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a request refused by the blocklist.
    pub fn count_blocked(&self, kind: BlockedKind) {
        self.blocked_requests
            .get_or_create(&BlockedLabels { kind })
            .inc();
    }

    /// Records that `limit` turned something away.
    pub fn count_limit_hit(&self, limit: Limit) {
        self.count_limit_hits(limit, 1);
    }

    /// Counts `n` hits of `limit` at once (hits counted elsewhere and copied in).
    pub fn count_limit_hits(&self, limit: Limit, n: u64) {
        self.limit_hits
            .get_or_create(&LimitLabels { limit })
            .inc_by(n);
    }

    /// Sets how many (hosted room, follower provider) pairs fail to deliver. Which providers:
    /// the `notify failed; will retry` log lines name them (a label per peer domain would be
    /// driven by whoever has users in rooms here).
    pub fn set_rooms_behind(&self, pairs: u64) {
        self.rooms_behind
            .set(i64::try_from(pairs).unwrap_or(i64::MAX));
    }

    /// Adds notifies that followers acknowledged (`delivered`) and that failed (`failed`).
    pub fn count_notifies(&self, delivered: u64, failed: u64) {
        for (outcome, n) in [("delivered", delivered), ("failed", failed)] {
            self.notifies
                .get_or_create(&NotifyLabels { outcome })
                .inc_by(n);
        }
    }

    /// Records how a backup request ended.
    pub fn count_backup(&self, result: BackupResult) {
        self.backups.get_or_create(&BackupLabels { result }).inc();
    }

    /// Records what the admin listener's gate decided about an operator request (probes and
    /// the scrape are not counted: [`AdminOutcome::Probe`] changes nothing).
    pub fn count_admin_request(&self, outcome: AdminOutcome) {
        if outcome != AdminOutcome::Probe {
            self.admin_requests
                .get_or_create(&AdminRequestLabels { outcome })
                .inc();
        }
    }

    /// Records how an outgoing peer request ended.
    pub fn count_peer_request(&self, outcome: PeerOutcome) {
        self.peer_requests
            .get_or_create(&PeerLabels { outcome })
            .inc();
    }

    /// Counts a push stream as open until the returned guard is dropped.
    pub fn push_stream_opened(&self) -> PushStreamGuard {
        self.push_streams.inc();
        PushStreamGuard {
            gauge: self.push_streams.clone(),
        }
    }

    /// Sets the number of running room actors.
    pub fn set_rooms_active(&self, n_rooms: u64) {
        self.rooms_active
            .set(i64::try_from(n_rooms).unwrap_or(i64::MAX));
    }

    /// Records whether the node is ready (the `/readyz` verdict).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Sets how many shards this node leads.
    pub fn set_shards_led(&self, shards: u64) {
        self.shards_led
            .set(i64::try_from(shards).unwrap_or(i64::MAX));
    }

    /// Sets how many of this node's shard replicas hibernate.
    pub fn set_raft_hibernating_groups(&self, groups: u64) {
        self.hibernating_groups
            .set(i64::try_from(groups).unwrap_or(i64::MAX));
    }

    /// Counts a proposal of `scope` forwarded to its shard's leader by how it ended.
    pub fn count_forwarded_proposal(&self, scope: CommandScope, outcome: ForwardOutcome) {
        self.forwarded_proposals
            .get_or_create(&ForwardLabels {
                scope: ScopeLabel(scope),
                outcome,
            })
            .inc();
    }

    /// Counts one remote read (`kind` `read` or `pull`) by how it ended (`answered`,
    /// `refused`, `failed`).
    pub fn count_remote_read(&self, kind: &'static str, outcome: &'static str) {
        self.remote_reads
            .get_or_create(&RemoteReadLabels { kind, outcome })
            .inc();
    }

    /// Counts one step of the placement driver by how it ended.
    pub fn count_placement_move(&self, outcome: PlacementOutcome) {
        self.placement_moves
            .get_or_create(&PlacementLabels { outcome })
            .inc();
    }

    /// Counts one shard split this node ran, by who asked and how it ended.
    pub fn count_shard_split(&self, trigger: SplitTrigger, outcome: SplitOutcomeLabel) {
        self.shard_splits
            .get_or_create(&SplitLabels { trigger, outcome })
            .inc();
    }

    /// Sets how many membership changes the placement driver still wants.
    pub fn set_placement_pending(&self, changes: u64) {
        self.placement_pending
            .set(i64::try_from(changes).unwrap_or(i64::MAX));
    }

    /// Whether this node's connection to `peer` is up, as `mimid_cluster_peer_connected` says
    /// (false for a node that is not a peer).
    pub fn cluster_peer_connected(&self, peer: u64) -> bool {
        self.cluster_net
            .peer_connected
            .get(&ClusterPeerLabels { peer })
            .is_some_and(|gauge| gauge.get() == 1)
    }

    /// Copies the cluster driver's cumulative Raft counters.
    pub fn set_raft_totals(&self, totals: RaftTotals) {
        self.raft
            .proposals
            .store(totals.proposals, Ordering::Relaxed);
        self.raft.applied.store(totals.applied, Ordering::Relaxed);
        self.raft.flushes.store(totals.flushes, Ordering::Relaxed);
        self.raft
            .proposals_dropped
            .store(totals.proposals_dropped, Ordering::Relaxed);
        self.raft
            .snapshots
            .store(totals.snapshots, Ordering::Relaxed);
        self.raft
            .leader_changes
            .store(totals.leader_changes, Ordering::Relaxed);
        self.raft
            .busy_rejections
            .store(totals.busy_rejections, Ordering::Relaxed);
        self.raft
            .failed_shards
            .store(totals.failed_shards, Ordering::Relaxed);
    }

    /// Counts a Raft frame handed to the node-to-node transport's stream (`bytes` without the
    /// length prefix).
    pub fn count_cluster_frame_sent(&self, bytes: usize) {
        self.cluster_net.frames_sent.inc();
        self.cluster_net.sent_bytes.inc_by(bytes as u64);
    }

    /// Counts a Raft frame received from a peer node and handed to the cluster.
    pub fn count_cluster_frame_received(&self, bytes: usize) {
        self.cluster_net.frames_received.inc();
        self.cluster_net.received_bytes.inc_by(bytes as u64);
    }

    /// Counts `n` Raft frames the node-to-node transport dropped.
    pub fn count_cluster_frames_dropped(&self, reason: FrameDrop, n: u64) {
        self.cluster_net
            .frames_dropped
            .get_or_create(&FrameDropLabels { reason })
            .inc_by(n);
    }

    /// Records whether this node's connection to `peer` is up (handshake and hello done).
    pub fn set_cluster_peer_connected(&self, peer: u64, connected: bool) {
        self.cluster_net
            .peer_connected
            .get_or_create(&ClusterPeerLabels { peer })
            .set(i64::from(connected));
    }

    /// Records the QUIC round-trip estimate of the connection to `peer`; `None` (no
    /// connection) removes the series.
    pub fn set_cluster_peer_rtt(&self, peer: u64, rtt: Option<Duration>) {
        let labels = ClusterPeerLabels { peer };
        match rtt {
            Some(rtt) => {
                self.cluster_net
                    .peer_rtt
                    .get_or_create(&labels)
                    .set(rtt.as_secs_f64());
            }
            None => {
                self.cluster_net.peer_rtt.remove(&labels);
            }
        }
    }

    /// Counts a node-to-node connection this node refused.
    pub fn count_cluster_handshake_refused(&self, reason: HandshakeRefusal) {
        self.cluster_net
            .handshakes_refused
            .get_or_create(&HandshakeRefusalLabels { reason })
            .inc();
    }

    /// Counts how an outgoing node-to-node RPC ended.
    pub fn count_cluster_rpc_call(&self, outcome: RpcOutcome) {
        self.cluster_net
            .rpc_calls
            .get_or_create(&RpcLabels { outcome })
            .inc();
    }

    /// Samples the QUIC path of this node's connection to `peer`: the RTT gauge, and what the
    /// lost and sent packet counters gained since the last sample.
    pub fn sample_cluster_peer(&self, peer: NodeId, sample: PathSample) {
        let net = &self.cluster_net;
        let labels = ClusterPeerLabels { peer };
        net.peer_rtt
            .get_or_create(&labels)
            .set(sample.rtt.as_secs_f64());
        let mut paths = net.peer_path.lock();
        let (lost, sent) = PathTotals::delta(
            paths.get(&peer).copied(),
            sample.connection,
            sample.lost_packets,
            sample.sent_packets,
        );
        paths.insert(
            peer,
            PathTotals {
                connection: sample.connection,
                lost: sample.lost_packets,
                sent: sample.sent_packets,
            },
        );
        drop(paths);
        net.peer_lost_packets.get_or_create(&labels).inc_by(lost);
        net.peer_sent_packets.get_or_create(&labels).inc_by(sent);
    }

    /// Counts an RPC to `peer` as in flight until the returned guard is dropped.
    pub fn cluster_rpc_in_flight(&self, peer: NodeId) -> InFlightGuard {
        let gauge = self
            .cluster_net
            .peer_rpcs_in_flight
            .get_or_create(&ClusterPeerLabels { peer })
            .clone();
        gauge.inc();
        InFlightGuard { gauge }
    }

    /// The label of peer provider `domain`: its own once a request to it was answered (then
    /// `answered`), for the first [`FEDERATION_PEER_SERIES`] such domains; else [`OTHER`]. So
    /// names that never answer (a client may ask for any domain) take no label.
    fn federation_label(&self, domain: &str, answered: bool) -> FederationPeerLabels {
        let mut labelled = self.federation.labelled.lock();
        if labelled.contains(domain) || (answered && labelled.len() < FEDERATION_PEER_SERIES) {
            labelled.insert(domain.to_owned());
            return FederationPeerLabels {
                peer: domain.to_owned(),
            };
        }
        FederationPeerLabels {
            peer: OTHER.to_owned(),
        }
    }

    /// Counts a request to peer provider `domain` as in flight until the returned guard is
    /// dropped (under [`OTHER`] until a request to `domain` was answered).
    pub fn federation_request_in_flight(&self, domain: &str) -> InFlightGuard {
        let labels = self.federation_label(domain, false);
        let gauge = self.federation.in_flight.get_or_create(&labels).clone();
        gauge.inc();
        InFlightGuard { gauge }
    }

    /// Samples the QUIC path of this node's connection to peer provider `domain` (after a
    /// request on it): the RTT gauge, and what the lost and sent packet counters gained.
    pub fn sample_federation_peer(&self, domain: &str, sample: PathSample) {
        let labels = self.federation_label(domain, true);
        let federation = &self.federation;
        if labels.peer != OTHER {
            federation
                .rtt
                .get_or_create(&labels)
                .set(sample.rtt.as_secs_f64());
        }
        // `other` mixes connections: each domain's totals are kept apart under its own key.
        let mut paths = federation.path.lock();
        let (lost, sent) = PathTotals::delta(
            paths.get(domain).copied(),
            sample.connection,
            sample.lost_packets,
            sample.sent_packets,
        );
        if labels.peer != OTHER || paths.len() < 4 * FEDERATION_PEER_SERIES {
            paths.insert(
                domain.to_owned(),
                PathTotals {
                    connection: sample.connection,
                    lost: sample.lost_packets,
                    sent: sample.sent_packets,
                },
            );
        }
        drop(paths);
        federation.lost_packets.get_or_create(&labels).inc_by(lost);
        federation.sent_packets.get_or_create(&labels).inc_by(sent);
    }

    /// Removes the RTT of peer provider `domain`: its connection is gone.
    pub fn forget_federation_peer_rtt(&self, domain: &str) {
        self.federation.rtt.remove(&FederationPeerLabels {
            peer: domain.to_owned(),
        });
    }

    /// Copies what the replication layer measured: its histograms and written bytes from
    /// `cluster` (`ClusterHandle::metrics`), and from `status` (`ClusterHandle::status`) the
    /// log lag of every shard node `node` leads (series of shards it no longer leads go).
    pub fn observe_replication(
        &self,
        cluster: &ClusterMetrics,
        node: NodeId,
        status: &[ShardStatus],
    ) {
        {
            let mut histograms = self.layers.histograms.lock();
            histograms.proposal_micros = cluster.proposal_micros.clone();
            histograms.flush_micros = cluster.flush_micros.clone();
            histograms.inbox_depth = cluster.inbox_depth.clone();
            histograms.snapshot_serialize_micros = cluster.snapshot_serialize_micros.clone();
            histograms.snapshot_write_micros = cluster.snapshot_write_micros.clone();
        }
        self.layers
            .written_bytes
            .store(cluster.written_bytes, Ordering::Relaxed);
        let lags = log_lags(node, status);
        let mut shards = self.log_lag_shards.lock();
        for gone in shards.difference(&lags.keys().copied().collect()) {
            self.log_lag.remove(&ShardLabels { shard: *gone });
        }
        for (&shard, &lag) in &lags {
            self.log_lag
                .get_or_create(&ShardLabels { shard })
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        *shards = lags.into_keys().collect();
    }

    /// Copies what the actor layer measured: the room mailbox depths, the room moves of shard
    /// splits (moved, failed, commands sent again after one, freeze-to-release times), and the
    /// fan-out lag per follower provider (capped at [`FANOUT_LAG_PROVIDERS`] series plus `other`) with the age
    /// of each one's oldest item as of `now`.
    pub fn observe_actors(&self, actors: &ActorMetrics, now: SystemTime) {
        {
            let mut histograms = self.layers.histograms.lock();
            histograms.room_mailbox_depth = actors.room_mailbox_depth.snapshot();
            histograms.room_move_micros = actors.room_move_micros.snapshot();
        }
        for (total, from) in [
            (&self.layers.rooms_moved, &actors.rooms_moved),
            (&self.layers.room_moves_failed, &actors.room_moves_failed),
            (&self.layers.room_move_retries, &actors.move_retries),
        ] {
            total.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
        let capped = cap_providers(actors.fanout_lag.by_provider(), FANOUT_LAG_PROVIDERS);
        let lag = &self.fanout_lag;
        let mut providers = lag.providers.lock();
        for gone in providers.iter().filter(|p| !capped.contains_key(*p)) {
            let labels = ProviderLabels {
                provider: gone.clone(),
            };
            lag.items.remove(&labels);
            lag.seconds.remove(&labels);
        }
        for (provider, (items, oldest_ts_ms)) in &capped {
            let labels = ProviderLabels {
                provider: provider.clone(),
            };
            lag.items
                .get_or_create(&labels)
                .set(i64::try_from(*items).unwrap_or(i64::MAX));
            let age_ms = now_ms.saturating_sub(*oldest_ts_ms);
            lag.seconds
                .get_or_create(&labels)
                .set(age_ms as f64 / 1000.0);
        }
        *providers = capped.into_keys().collect();
    }

    /// All metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String cannot fail: our collectors never return errors");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Drop for PushStreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl Limit {
    /// The label value, e.g. `body_size`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::BodySize => "body_size",
            Limit::InboxFull => "inbox_full",
            Limit::StreamQueueFull => "stream_queue_full",
            Limit::MailboxFull => "mailbox_full",
            Limit::Connections => "connections",
            Limit::ConcurrentRequests => "concurrent_requests",
            Limit::RequestTimeout => "request_timeout",
            Limit::PeerRate => "peer_rate",
            Limit::UserRate => "user_rate",
            Limit::KeyMaterialClaims => "key_material_claims",
            Limit::AbuseReports => "abuse_reports",
            Limit::ConsentRecords => "consent_records",
            Limit::FrankCache => "frank_cache",
            Limit::RelayStreams => "relay_streams",
        }
    }
}

impl EncodeLabelValue for Limit {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl ClusterNetMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ClusterNetMetrics {
            frames_sent: Counter::default(),
            frames_received: Counter::default(),
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            frames_dropped: Family::default(),
            peer_connected: Family::default(),
            peer_rtt: Family::default(),
            peer_lost_packets: Family::default(),
            peer_sent_packets: Family::default(),
            peer_rpcs_in_flight: Family::default(),
            peer_path: Mutex::default(),
            handshakes_refused: Family::default(),
            rpc_calls: Family::default(),
        };
        registry.register(
            "cluster_frames_sent",
            "Raft frames written to peer nodes' streams",
            metrics.frames_sent.clone(),
        );
        registry.register(
            "cluster_frames_received",
            "Raft frames received from peer nodes",
            metrics.frames_received.clone(),
        );
        registry.register_with_unit(
            "cluster_sent",
            "Raft frame bytes written to peer nodes' streams",
            Unit::Bytes,
            metrics.sent_bytes.clone(),
        );
        registry.register_with_unit(
            "cluster_received",
            "Raft frame bytes received from peer nodes",
            Unit::Bytes,
            metrics.received_bytes.clone(),
        );
        registry.register(
            "cluster_frames_dropped",
            "Raft frames the node-to-node transport dropped, by reason",
            metrics.frames_dropped.clone(),
        );
        for reason in FrameDrop::ALL {
            drop(
                metrics
                    .frames_dropped
                    .get_or_create(&FrameDropLabels { reason }),
            );
        }
        registry.register(
            "cluster_peer_connected",
            "1 while this node's connection to the peer node is up, else 0",
            AlwaysDeclared(metrics.peer_connected.clone()),
        );
        registry.register_with_unit(
            "cluster_peer_rtt",
            "QUIC round-trip time estimate of the connection to the peer node",
            Unit::Seconds,
            AlwaysDeclared(metrics.peer_rtt.clone()),
        );
        registry.register(
            "cluster_peer_lost_packets",
            "QUIC packets this node's connections to the peer node declared lost (sampled every few seconds while connected)",
            AlwaysDeclared(metrics.peer_lost_packets.clone()),
        );
        registry.register(
            "cluster_peer_sent_packets",
            "QUIC packets this node's connections to the peer node sent (sampled with the lost ones, for a loss ratio)",
            AlwaysDeclared(metrics.peer_sent_packets.clone()),
        );
        registry.register(
            "cluster_peer_rpcs_in_flight",
            "Node-to-node RPCs to the peer node waiting for their answer (each is one QUIC stream while it runs)",
            AlwaysDeclared(metrics.peer_rpcs_in_flight.clone()),
        );
        registry.register(
            "cluster_handshakes_refused",
            "Node-to-node connections this node refused, by reason",
            metrics.handshakes_refused.clone(),
        );
        for reason in HandshakeRefusal::ALL {
            drop(
                metrics
                    .handshakes_refused
                    .get_or_create(&HandshakeRefusalLabels { reason }),
            );
        }
        registry.register(
            "cluster_rpc_calls",
            "Outgoing node-to-node RPCs, by outcome",
            metrics.rpc_calls.clone(),
        );
        for outcome in RpcOutcome::ALL {
            drop(metrics.rpc_calls.get_or_create(&RpcLabels { outcome }));
        }
        metrics
    }
}

/// A family whose `# TYPE` line is exported even while it has no series (prometheus-client
/// skips empty families), so the per-peer gauges are declared on a single node too and
/// dashboards and the ops checks can rely on their names.
#[derive(Debug)]
struct AlwaysDeclared<M>(M);

impl<M: EncodeMetric> EncodeMetric for AlwaysDeclared<M> {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Per shard `node` leads (per `status`), the entries between its own matched index (its last
/// persisted index) and the lowest matched index of any member.
fn log_lags(node: NodeId, status: &[ShardStatus]) -> BTreeMap<u64, u64> {
    status
        .iter()
        .filter(|shard| shard.leader == Some(node) && !shard.failed)
        .filter_map(|shard| {
            let head = shard.progress.get(&node).copied()?;
            let slowest = shard.progress.values().copied().min()?;
            Some((shard.shard, head.saturating_sub(slowest)))
        })
        .collect()
}

/// The `limit` providers with the most items behind (ties by name) with their items and oldest
/// item's time; the others summed under [`OTHER`] (items added, the oldest time kept).
fn cap_providers(
    lags: BTreeMap<String, mimid_actors::room::fanout::FanoutLag>,
    limit: usize,
) -> BTreeMap<String, (u64, u64)> {
    let mut ranked: Vec<(String, u64, u64)> = lags
        .into_iter()
        .map(|(provider, lag)| (provider, lag.items, lag.oldest_ts_ms))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut capped = BTreeMap::new();
    for (rank, (provider, items, oldest)) in ranked.into_iter().enumerate() {
        let key = if rank < limit {
            provider
        } else {
            OTHER.to_owned()
        };
        let entry = capped.entry(key).or_insert((0u64, u64::MAX));
        entry.0 = entry.0.saturating_add(items);
        entry.1 = entry.1.min(oldest);
    }
    capped
}

/// Histograms measured by other layers, copied in by [`Metrics::observe_replication`] and
/// [`Metrics::observe_actors`], the Raft database's written bytes and the actors' room move
/// totals.
#[derive(Debug)]
struct LayerHistograms {
    histograms: Mutex<LayerSnapshots>,
    written_bytes: AtomicU64,
    rooms_moved: AtomicU64,
    room_moves_failed: AtomicU64,
    room_move_retries: AtomicU64,
}

#[derive(Debug)]
struct LayerSnapshots {
    proposal_micros: HistogramSnapshot,
    flush_micros: HistogramSnapshot,
    inbox_depth: HistogramSnapshot,
    snapshot_serialize_micros: HistogramSnapshot,
    snapshot_write_micros: HistogramSnapshot,
    room_mailbox_depth: HistogramSnapshot,
    room_move_micros: HistogramSnapshot,
}

impl Default for LayerHistograms {
    fn default() -> Self {
        let empty = |bounds: &'static [u64]| mimid_cluster::Histogram::new(bounds).snapshot();
        LayerHistograms {
            histograms: Mutex::new(LayerSnapshots {
                proposal_micros: empty(&mimid_cluster::PROPOSAL_MICROS_BOUNDS),
                flush_micros: empty(&mimid_cluster::FLUSH_MICROS_BOUNDS),
                inbox_depth: empty(&mimid_cluster::DEPTH_BOUNDS),
                snapshot_serialize_micros: empty(&mimid_cluster::SNAPSHOT_MICROS_BOUNDS),
                snapshot_write_micros: empty(&mimid_cluster::SNAPSHOT_MICROS_BOUNDS),
                room_mailbox_depth: empty(&mimid_cluster::DEPTH_BOUNDS),
                room_move_micros: empty(&mimid_cluster::PROPOSAL_MICROS_BOUNDS),
            }),
            written_bytes: AtomicU64::new(0),
            rooms_moved: AtomicU64::new(0),
            room_moves_failed: AtomicU64::new(0),
            room_move_retries: AtomicU64::new(0),
        }
    }
}

/// Encodes `snapshot` as an OpenMetrics histogram, each bound and the sum divided by `divisor`
/// (1e6 turns microseconds into seconds; dividing keeps bounds like 0.0001 exact in the text).
fn encode_snapshot(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    snapshot: &HistogramSnapshot,
    divisor: f64,
) -> Result<(), fmt::Error> {
    let buckets: Vec<(f64, u64)> = snapshot
        .bounds
        .iter()
        .map(|&bound| bound as f64 / divisor)
        .chain(std::iter::once(f64::MAX))
        .zip(snapshot.counts.iter().copied())
        .collect();
    let mut metric = encoder.encode_descriptor(
        name,
        help,
        unit,
        prometheus_client::metrics::MetricType::Histogram,
    )?;
    metric.encode_histogram::<NoLabelSet>(
        snapshot.sum as f64 / divisor,
        snapshot.count(),
        &buckets,
        None,
    )
}

impl Collector for LayerHistograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let histograms = self.histograms.lock();
        encode_snapshot(
            &mut encoder,
            "raft_proposal_duration",
            "Time from a proposal entering the replication layer to its answer with the applied output (committed on a quorum, durable and applied on this node, its shard's leader); 100 us to 13 s buckets",
            Some(&Unit::Seconds),
            &histograms.proposal_micros,
            1e6,
        )?;
        encode_snapshot(
            &mut encoder,
            "storage_flush_duration",
            "Time of each durable write of the Raft database: one sled batch, flush and fdatasync per driver turn at most; 25 us to 1.6 s buckets",
            Some(&Unit::Seconds),
            &histograms.flush_micros,
            1e6,
        )?;
        encode_snapshot(
            &mut encoder,
            "raft_inbox_depth",
            "Proposals waiting in the replication driver's inbox at the start of each turn that steps proposals (cluster.inbox_capacity bounds it)",
            None,
            &histograms.inbox_depth,
            1.0,
        )?;
        encode_snapshot(
            &mut encoder,
            "raft_snapshot_serialize_duration",
            "Time the replication driver thread spent serialising each shard snapshot taken by cluster.snapshot_interval or by age; every shard of the node waits through it (cluster.max_snapshots_per_turn bounds how many per turn); 1 ms to 65 s buckets",
            Some(&Unit::Seconds),
            &histograms.snapshot_serialize_micros,
            1e6,
        )?;
        encode_snapshot(
            &mut encoder,
            "raft_snapshot_write_duration",
            "Time the snapshot writer thread took to hash, write and sync each such snapshot's file; 1 ms to 65 s buckets",
            Some(&Unit::Seconds),
            &histograms.snapshot_write_micros,
            1e6,
        )?;
        encode_snapshot(
            &mut encoder,
            "room_mailbox_depth",
            "Requests queued at a room (in its actor's mailbox or proposed and not answered yet; limits.room_mailbox bounds it), sampled as each is admitted, itself included",
            None,
            &histograms.room_mailbox_depth,
            1.0,
        )?;
        encode_snapshot(
            &mut encoder,
            "room_move_duration",
            "Time from a room's freeze in its source shard to its release there, per room this node moved to a split shard (shard splits, ops/runbooks/shard-split.md); 100 us to 13 s buckets",
            Some(&Unit::Seconds),
            &histograms.room_move_micros,
            1e6,
        )?;
        drop(histograms);
        let written = ConstCounter::new(self.written_bytes.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "storage_written",
            "Bytes of keys and values written to the Raft database (log entries, hard and conf states, snapshot records; not snapshot files)",
            Some(&Unit::Bytes),
            written.metric_type(),
        )?;
        written.encode(metric)?;
        let moves = [
            (
                "rooms_moved",
                "Rooms this node moved to a split shard (its splits' moves and the moves it resumed), each counted at its release from the source shard",
                &self.rooms_moved,
            ),
            (
                "room_moves_failed",
                "Room moves this node started or resumed that ended in an error (a refusal, or a step whose shard stayed unavailable); a room left frozen is finished by its source shard's leader",
                &self.room_moves_failed,
            ),
            (
                "room_move_retries",
                "Room commands sent again because their room was moving (each wait) or had moved (each hop to its new shard)",
                &self.room_move_retries,
            ),
        ];
        for (name, help, value) in moves {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Request latencies from 0.5 ms to about 16 s, doubling per bucket.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug, Default)]
struct RaftCounters {
    proposals: AtomicU64,
    applied: AtomicU64,
    flushes: AtomicU64,
    proposals_dropped: AtomicU64,
    snapshots: AtomicU64,
    leader_changes: AtomicU64,
    busy_rejections: AtomicU64,
    failed_shards: AtomicU64,
}

impl Collector for RaftCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counters = [
            (
                "raft_proposals",
                "Proposals stepped into Raft.",
                &self.proposals,
            ),
            (
                "raft_applied",
                "Raft entries applied to shard state machines.",
                &self.applied,
            ),
            (
                "raft_flushes",
                "Durable flushes of the Raft log.",
                &self.flushes,
            ),
            (
                "raft_proposals_dropped",
                "Proposals Raft dropped and the node answered with an error.",
                &self.proposals_dropped,
            ),
            (
                "raft_snapshots",
                "Shard snapshots taken; each compacts the shard's log.",
                &self.snapshots,
            ),
            (
                "raft_leader_changes",
                "Leadership changes seen by local shard groups.",
                &self.leader_changes,
            ),
            (
                "raft_busy_rejections",
                "Proposals refused because the driver inbox or a shard's uncommitted bytes were full.",
                &self.busy_rejections,
            ),
            (
                "raft_failed_shards",
                "Shard groups stopped by a failure since start; a failed shard serves nothing until restart.",
                &self.failed_shards,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric_encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn request_metrics_are_labelled_by_endpoint_and_status() {
        let metrics = Metrics::new();
        metrics.observe_request("update", http::StatusCode::OK, Duration::from_millis(3));
        metrics.observe_request("update", http::StatusCode::OK, Duration::from_millis(5));
        metrics.observe_request(
            "update",
            http::StatusCode::PAYLOAD_TOO_LARGE,
            Duration::from_millis(1),
        );
        let text = metrics.encode();
        assert_eq!(
            line_value(
                &text,
                "mimid_requests_total{endpoint=\"update\",status=\"200\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "mimid_requests_total{endpoint=\"update\",status=\"413\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                "mimid_request_duration_seconds_count{endpoint=\"update\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn outcomes_and_limits_use_snake_case_label_values() {
        let metrics = Metrics::new();
        metrics.count_commit(Outcome::Accepted);
        metrics.count_commit(Outcome::Rejected);
        metrics.count_commit(Outcome::Rejected);
        metrics.count_app_message(Outcome::Failed);
        metrics.count_limit_hit(Limit::BodySize);
        metrics.count_limit_hit(Limit::StreamQueueFull);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "mimid_commits_total{result=\"rejected\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "mimid_commits_total{result=\"accepted\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "mimid_app_messages_total{result=\"failed\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "mimid_limit_hits_total{limit=\"body_size\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "mimid_limit_hits_total{limit=\"stream_queue_full\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn peer_outcomes_have_series_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for outcome in PeerOutcome::ALL {
            let series = format!(
                "mimid_peer_requests_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            assert_eq!(line_value(&text, &series), Some(0.0), "{text}");
        }
        metrics.count_peer_request(PeerOutcome::ConnectFailed);
        assert_eq!(
            line_value(
                &metrics.encode(),
                "mimid_peer_requests_total{outcome=\"connect_failed\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn backup_results_have_series_from_the_start() {
        let metrics = Metrics::new();
        for result in BackupResult::ALL {
            let series = format!("mimid_backups_total{{result=\"{}\"}}", result.as_str());
            assert_eq!(line_value(&metrics.encode(), &series), Some(0.0));
        }
        metrics.count_backup(BackupResult::Busy);
        assert_eq!(
            line_value(&metrics.encode(), "mimid_backups_total{result=\"busy\"}"),
            Some(1.0)
        );
    }

    /// The admin gate's counter is in the node's one registry: every counted outcome has a
    /// series from the start, probes are not counted.
    #[test]
    fn admin_requests_are_in_the_node_registry() {
        let metrics = Metrics::new();
        for outcome in AdminOutcome::COUNTED {
            let series = format!(
                "mimid_admin_requests_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            assert_eq!(
                line_value(&metrics.encode(), &series),
                Some(0.0),
                "{series}"
            );
        }
        metrics.count_admin_request(AdminOutcome::WrongToken);
        metrics.count_admin_request(AdminOutcome::Probe);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "mimid_admin_requests_total{outcome=\"wrong_token\"}"),
            Some(1.0)
        );
        assert!(!text.contains("outcome=\"probe\""), "{text}");
        assert_eq!(text.matches("# HELP mimid_admin_requests").count(), 1);
    }

    #[test]
    fn gauges_follow_guards_and_setters() {
        let metrics = Metrics::new();
        let first = metrics.push_stream_opened();
        let second = metrics.push_stream_opened();
        assert_eq!(
            line_value(&metrics.encode(), "mimid_push_streams"),
            Some(2.0)
        );
        drop(first);
        assert_eq!(
            line_value(&metrics.encode(), "mimid_push_streams"),
            Some(1.0)
        );
        drop(second);
        assert_eq!(
            line_value(&metrics.encode(), "mimid_push_streams"),
            Some(0.0)
        );

        metrics.set_rooms_active(42);
        assert_eq!(
            line_value(&metrics.encode(), "mimid_rooms_active"),
            Some(42.0)
        );
    }

    #[test]
    fn cluster_transport_series_are_labelled_by_reason_outcome_and_peer() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for reason in FrameDrop::ALL {
            let series = format!(
                "mimid_cluster_frames_dropped_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(line_value(&text, &series), Some(0.0), "{text}");
        }
        for reason in HandshakeRefusal::ALL {
            let series = format!(
                "mimid_cluster_handshakes_refused_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(line_value(&text, &series), Some(0.0), "{text}");
        }
        for outcome in RpcOutcome::ALL {
            let series = format!(
                "mimid_cluster_rpc_calls_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            assert_eq!(line_value(&text, &series), Some(0.0), "{text}");
        }

        metrics.count_cluster_frame_sent(100);
        metrics.count_cluster_frame_sent(20);
        metrics.count_cluster_frame_received(7);
        metrics.count_cluster_frames_dropped(FrameDrop::QueueFull, 3);
        metrics.count_cluster_handshake_refused(HandshakeRefusal::ClusterName);
        metrics.count_cluster_rpc_call(RpcOutcome::Timeout);
        metrics.set_cluster_peer_connected(2, true);
        metrics.set_cluster_peer_connected(3, false);
        metrics.set_cluster_peer_rtt(2, Some(Duration::from_millis(3)));
        let text = metrics.encode();
        for (series, value) in [
            ("mimid_cluster_frames_sent_total", 2.0),
            ("mimid_cluster_sent_bytes_total", 120.0),
            ("mimid_cluster_frames_received_total", 1.0),
            ("mimid_cluster_received_bytes_total", 7.0),
            (
                "mimid_cluster_frames_dropped_total{reason=\"queue_full\"}",
                3.0,
            ),
            (
                "mimid_cluster_handshakes_refused_total{reason=\"cluster_name\"}",
                1.0,
            ),
            ("mimid_cluster_rpc_calls_total{outcome=\"timeout\"}", 1.0),
            ("mimid_cluster_peer_connected{peer=\"2\"}", 1.0),
            ("mimid_cluster_peer_connected{peer=\"3\"}", 0.0),
            ("mimid_cluster_peer_rtt_seconds{peer=\"2\"}", 0.003),
        ] {
            assert_eq!(line_value(&text, series), Some(value), "{series}\n{text}");
        }
        metrics.set_cluster_peer_rtt(2, None);
        let text = metrics.encode();
        assert!(!text.contains("mimid_cluster_peer_rtt_seconds{"), "{text}");
        // Declared without series, so dashboards find the family on a single node too.
        assert!(
            text.contains("# TYPE mimid_cluster_peer_rtt_seconds gauge"),
            "{text}"
        );
        assert!(Metrics::new()
            .encode()
            .contains("# TYPE mimid_cluster_peer_connected gauge"));
    }

    fn sample(connection: usize, rtt_ms: u64, lost: u64, sent: u64) -> PathSample {
        PathSample {
            connection,
            rtt: Duration::from_millis(rtt_ms),
            lost_packets: lost,
            sent_packets: sent,
        }
    }

    #[test]
    fn quic_path_samples_add_only_what_is_new_and_survive_reconnects() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for family in [
            "# TYPE mimid_cluster_peer_lost_packets counter",
            "# TYPE mimid_cluster_peer_sent_packets counter",
            "# TYPE mimid_cluster_peer_rpcs_in_flight gauge",
            "# TYPE mimid_federation_peer_rtt_seconds gauge",
            "# TYPE mimid_federation_peer_lost_packets counter",
            "# TYPE mimid_federation_peer_sent_packets counter",
            "# TYPE mimid_federation_peer_requests_in_flight gauge",
        ] {
            assert!(text.contains(family), "{family} declared:\n{text}");
        }
        metrics.sample_cluster_peer(2, sample(7, 3, 1, 100));
        metrics.sample_cluster_peer(2, sample(7, 4, 3, 150));
        // A new connection counts from zero again; the counters keep growing.
        metrics.sample_cluster_peer(2, sample(8, 5, 1, 20));
        let guard = metrics.cluster_rpc_in_flight(2);
        let second = metrics.cluster_rpc_in_flight(2);
        let text = metrics.encode();
        for (series, value) in [
            ("mimid_cluster_peer_rtt_seconds{peer=\"2\"}", 0.005),
            ("mimid_cluster_peer_lost_packets_total{peer=\"2\"}", 4.0),
            ("mimid_cluster_peer_sent_packets_total{peer=\"2\"}", 170.0),
            ("mimid_cluster_peer_rpcs_in_flight{peer=\"2\"}", 2.0),
        ] {
            assert_eq!(line_value(&text, series), Some(value), "{series}\n{text}");
        }
        drop((guard, second));
        assert_eq!(
            line_value(
                &metrics.encode(),
                "mimid_cluster_peer_rpcs_in_flight{peer=\"2\"}"
            ),
            Some(0.0)
        );

        let waiting = metrics.federation_request_in_flight("b.example");
        assert_eq!(
            line_value(
                &metrics.encode(),
                "mimid_federation_peer_requests_in_flight{peer=\"other\"}"
            ),
            Some(1.0),
            "a domain that never answered has no label of its own"
        );
        drop(waiting);
        metrics.sample_federation_peer("b.example", sample(1, 12, 0, 40));
        metrics.sample_federation_peer("b.example", sample(1, 10, 2, 90));
        let _in_flight = metrics.federation_request_in_flight("b.example");
        let text = metrics.encode();
        for (series, value) in [
            (
                "mimid_federation_peer_rtt_seconds{peer=\"b.example\"}",
                0.01,
            ),
            (
                "mimid_federation_peer_lost_packets_total{peer=\"b.example\"}",
                2.0,
            ),
            (
                "mimid_federation_peer_sent_packets_total{peer=\"b.example\"}",
                90.0,
            ),
            (
                "mimid_federation_peer_requests_in_flight{peer=\"b.example\"}",
                1.0,
            ),
        ] {
            assert_eq!(line_value(&text, series), Some(value), "{series}\n{text}");
        }
        metrics.forget_federation_peer_rtt("b.example");
        assert!(!metrics
            .encode()
            .contains("mimid_federation_peer_rtt_seconds{peer=\"b.example\"}"));
    }

    #[test]
    fn federation_peers_beyond_the_cap_share_the_other_series() {
        let metrics = Metrics::new();
        for n in 0..FEDERATION_PEER_SERIES + 3 {
            metrics.sample_federation_peer(&format!("p{n}.example"), sample(n, 1, 1, 10));
        }
        let text = metrics.encode();
        let labelled = text
            .lines()
            .filter(|line| line.starts_with("mimid_federation_peer_sent_packets_total{"))
            .count();
        assert_eq!(labelled, FEDERATION_PEER_SERIES + 1, "{text}");
        assert_eq!(
            line_value(
                &text,
                "mimid_federation_peer_sent_packets_total{peer=\"other\"}"
            ),
            Some(30.0)
        );
        assert!(!text.contains("mimid_federation_peer_rtt_seconds{peer=\"other\"}"));
    }

    fn status(shard: u64, leader: u64, progress: &[(u64, u64)]) -> ShardStatus {
        ShardStatus {
            shard,
            leader: Some(leader),
            progress: progress.iter().copied().collect(),
            ..ShardStatus::default()
        }
    }

    #[test]
    fn log_lag_is_the_leaders_index_minus_the_slowest_member_on_shards_led_here() {
        let metrics = Metrics::new();
        assert!(metrics
            .encode()
            .contains("# TYPE mimid_raft_log_lag_entries gauge"));
        let statuses = [
            status(0, 1, &[(1, 50), (2, 50), (3, 41)]),
            status(1, 1, &[(1, 7), (2, 7), (3, 7)]),
            // Led elsewhere: this node has no progress to report.
            status(2, 2, &[]),
        ];
        metrics.observe_replication(&ClusterMetrics::default(), 1, &statuses);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "mimid_raft_log_lag_entries{shard=\"0\"}"),
            Some(9.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "mimid_raft_log_lag_entries{shard=\"1\"}"),
            Some(0.0)
        );
        assert!(!text.contains("mimid_raft_log_lag_entries{shard=\"2\"}"));
        // Shard 0's leadership moved away: its series goes.
        metrics.observe_replication(
            &ClusterMetrics::default(),
            1,
            &[status(0, 3, &[]), statuses[1].clone()],
        );
        let text = metrics.encode();
        assert!(!text.contains("mimid_raft_log_lag_entries{shard=\"0\"}"));
        assert_eq!(
            line_value(&text, "mimid_raft_log_lag_entries{shard=\"1\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn replication_histograms_are_exported_in_seconds_and_counts() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for family in [
            "# TYPE mimid_raft_proposal_duration_seconds histogram",
            "# TYPE mimid_storage_flush_duration_seconds histogram",
            "# TYPE mimid_raft_inbox_depth histogram",
            "# TYPE mimid_raft_snapshot_serialize_duration_seconds histogram",
            "# TYPE mimid_raft_snapshot_write_duration_seconds histogram",
            "# TYPE mimid_room_mailbox_depth histogram",
            "# TYPE mimid_storage_written_bytes counter",
        ] {
            assert!(text.contains(family), "{family}:\n{text}");
        }
        let serialised = mimid_cluster::Histogram::new(&mimid_cluster::SNAPSHOT_MICROS_BOUNDS);
        serialised.observe(1_500); // 1 < 1.5 <= 2 ms
        let proposals = mimid_cluster::Histogram::new(&mimid_cluster::PROPOSAL_MICROS_BOUNDS);
        proposals.observe(150); // 100 < 150 <= 200 µs
        proposals.observe(3_000_000); // 3 s
        let cluster = ClusterMetrics {
            proposal_micros: proposals.snapshot(),
            snapshot_serialize_micros: serialised.snapshot(),
            written_bytes: 4096,
            ..ClusterMetrics::default()
        };
        metrics.observe_replication(&cluster, 1, &[]);
        let text = metrics.encode();
        for (series, value) in [
            ("mimid_raft_proposal_duration_seconds_count", 2.0),
            (
                "mimid_raft_proposal_duration_seconds_bucket{le=\"0.0001\"}",
                0.0,
            ),
            (
                "mimid_raft_proposal_duration_seconds_bucket{le=\"0.0002\"}",
                1.0,
            ),
            (
                "mimid_raft_proposal_duration_seconds_bucket{le=\"+Inf\"}",
                2.0,
            ),
            ("mimid_storage_written_bytes_total", 4096.0),
            ("mimid_storage_flush_duration_seconds_count", 0.0),
            (
                "mimid_raft_snapshot_serialize_duration_seconds_bucket{le=\"0.001\"}",
                0.0,
            ),
            (
                "mimid_raft_snapshot_serialize_duration_seconds_bucket{le=\"0.002\"}",
                1.0,
            ),
            ("mimid_raft_snapshot_write_duration_seconds_count", 0.0),
        ] {
            assert_eq!(line_value(&text, series), Some(value), "{series}\n{text}");
        }
        let sum = line_value(&text, "mimid_raft_proposal_duration_seconds_sum").unwrap();
        assert!((sum - 3.000_15).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn fanout_lag_is_capped_to_the_providers_most_behind_and_dated() {
        use mimid_actors::room::fanout::FanoutLag;
        let lags: BTreeMap<String, FanoutLag> = (0..FANOUT_LAG_PROVIDERS as u64 + 2)
            .map(|n| {
                (
                    format!("p{n:02}.example"),
                    FanoutLag {
                        items: n + 1,
                        oldest_ts_ms: 10_000 + n,
                    },
                )
            })
            .collect();
        let capped = cap_providers(lags, FANOUT_LAG_PROVIDERS);
        assert_eq!(capped.len(), FANOUT_LAG_PROVIDERS + 1);
        // p00 (1 item) and p01 (2 items) are the least behind.
        assert_eq!(capped[OTHER], (3, 10_000));
        assert_eq!(capped["p11.example"], (12, 10_011));
        assert!(!capped.contains_key("p00.example"));

        let metrics = Metrics::new();
        assert!(metrics
            .encode()
            .contains("# TYPE mimid_fanout_lag_items gauge"));
        assert!(metrics
            .encode()
            .contains("# TYPE mimid_fanout_lag_seconds gauge"));
        let actors = ActorMetrics::default();
        actors.room_mailbox_depth.observe(3);
        metrics.observe_actors(&actors, UNIX_EPOCH + Duration::from_secs(20));
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "mimid_room_mailbox_depth_count"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "mimid_room_mailbox_depth_bucket{le=\"4.0\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("mimid_fanout_lag_items{"), "nothing behind");
    }

    /// Shard splits: the hub's room move totals and freeze-to-release times are copied in
    /// from the actors and served as counters and a histogram in seconds; the splits this
    /// node ran have a series per trigger and outcome from the start.
    #[test]
    fn room_moves_and_shard_splits_are_counted() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for trigger in ["automatic", "operator"] {
            for outcome in ["moved", "refused", "failed"] {
                let series = format!(
                    "mimid_shard_splits_total{{trigger=\"{trigger}\",outcome=\"{outcome}\"}}"
                );
                assert_eq!(line_value(&text, &series), Some(0.0), "{series}\n{text}");
            }
        }
        assert_eq!(line_value(&text, "mimid_rooms_moved_total"), Some(0.0));
        metrics.count_shard_split(SplitTrigger::Automatic, SplitOutcomeLabel::Moved);
        metrics.count_shard_split(SplitTrigger::Operator, SplitOutcomeLabel::Refused);
        metrics.count_shard_split(SplitTrigger::Operator, SplitOutcomeLabel::Refused);

        let actors = ActorMetrics::default();
        actors.rooms_moved.store(5, Ordering::Relaxed);
        actors.room_moves_failed.store(1, Ordering::Relaxed);
        actors.move_retries.store(7, Ordering::Relaxed);
        actors.room_move_micros.observe(3_000);
        metrics.observe_actors(&actors, UNIX_EPOCH + Duration::from_secs(20));
        let text = metrics.encode();
        for (series, value) in [
            (
                "mimid_shard_splits_total{trigger=\"automatic\",outcome=\"moved\"}",
                1.0,
            ),
            (
                "mimid_shard_splits_total{trigger=\"operator\",outcome=\"refused\"}",
                2.0,
            ),
            ("mimid_rooms_moved_total", 5.0),
            ("mimid_room_moves_failed_total", 1.0),
            ("mimid_room_move_retries_total", 7.0),
            ("mimid_room_move_duration_seconds_count", 1.0),
            ("mimid_room_move_duration_seconds_sum", 0.003),
        ] {
            assert_eq!(line_value(&text, series), Some(value), "{series}\n{text}");
        }
        assert!(text.contains("# TYPE mimid_rooms_moved counter"), "{text}");
        assert!(
            text.contains("# TYPE mimid_room_move_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn raft_totals_are_reported_as_counters() {
        let metrics = Metrics::new();
        metrics.set_raft_totals(RaftTotals {
            proposals: 10,
            applied: 9,
            flushes: 3,
            proposals_dropped: 1,
            snapshots: 2,
            leader_changes: 4,
            busy_rejections: 5,
            failed_shards: 1,
        });
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE mimid_raft_proposals counter"),
            "{text}"
        );
        assert_eq!(line_value(&text, "mimid_raft_proposals_total"), Some(10.0));
        assert_eq!(line_value(&text, "mimid_raft_applied_total"), Some(9.0));
        assert_eq!(line_value(&text, "mimid_raft_flushes_total"), Some(3.0));
        assert_eq!(
            line_value(&text, "mimid_raft_proposals_dropped_total"),
            Some(1.0)
        );
        assert_eq!(line_value(&text, "mimid_raft_snapshots_total"), Some(2.0));
        assert_eq!(
            line_value(&text, "mimid_raft_leader_changes_total"),
            Some(4.0)
        );
        assert_eq!(
            line_value(&text, "mimid_raft_busy_rejections_total"),
            Some(5.0)
        );
        assert_eq!(
            line_value(&text, "mimid_raft_failed_shards_total"),
            Some(1.0)
        );
        metrics.set_ready(true);
        assert_eq!(line_value(&metrics.encode(), "mimid_ready"), Some(1.0));
    }
}
