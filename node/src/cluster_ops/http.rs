//! The cluster routes of the admin listener (issue 6 part 3), JSON bodies:
//!
//! - `GET /admin/cluster/status`: this node, every registered node (state, `live`: connected
//!   to this node's transport, or this node itself; whether it drains and its replica counts
//!   when it answered), and every shard (leader, term, commit, applied, voters, learners and,
//!   when the leader answered, each member's lag behind it in entries) ([`ClusterStatus`]).
//! - `POST /admin/cluster/drain` and `/undrain`: starts or stops handing this node's
//!   leaderships away ([`DrainAnswer`]); in memory only, a restart ends it.
//! - `POST /admin/cluster/nodes` with `{"id": N, "cluster_addr": "IP:PORT"}` and optionally
//!   `"locality": "region=eu,zone=eu-1"`: registers a new node (201 with [`NodeAnswer`]; 409
//!   when the id or the address is taken; 400 for id 0, an address other nodes cannot dial or
//!   a malformed locality).
//! - `POST /admin/cluster/nodes/{id}/decommission`: starts moving node `id`'s replicas away
//!   (200 with [`NodeAnswer`]; 409 when the Active nodes other than it are fewer than the
//!   replication factor, or it is decommissioned already; 404 for an unknown node).
//! - `POST /admin/cluster/init` ([`super::bootstrap`]): on a node started with `cluster.join`
//!   and not initialized yet, creates the cluster (200 with [`super::InitAnswer`]); 409
//!   "cluster already initialized (cluster id …)" once the cluster exists, and on a node that
//!   does not use `cluster.join`. A node waiting for `init` serves this route (and the probes)
//!   only.
//!
//! - `POST /admin/shards/split` with `{"shard": N}` and optionally `"rooms": M` (issue 9 build
//!   item 3; [`super::split`], ops/runbooks/shard-split.md): hands `M` rooms of shard `N`
//!   (default about half) to the split shard holding the fewest rooms, and answers 200 with
//!   what moved ([`SplitOutcome`](super::split::SplitOutcome): `{"from", "to", "moved":
//!   [room], "failed": [[room, reason]]}`). 400 with the reason for a body that does not parse, `rooms` 0, a shard the
//!   cluster does not have, a residency shard, no split shards (`cluster.split_shards`), a
//!   split shard with no other split shard to go to, or a shard with no room that can move;
//!   409 while another split runs on this node; 503 with `Retry-After` when the cluster cannot
//!   take the moves now (repeat it: moves are idempotent). The split runs to its end even if
//!   the caller goes away.
//!
//! Registry changes are proposed to shard 0 through the hub (its leader may be another node);
//! a shard 0 without a leader is a 503 with the reason. A node running alone (no
//! `cluster.listen`) answers the registry routes 409: there is no cluster to change.
//!
//! Every route here changes or reveals the cluster's layout, so none is open: [`routes`] is
//! merged into the admin router ([`crate::admin::router`]), whose token gate
//! ([`crate::admin::auth`]) wraps it; a request without the node's admin token is answered 401
//! (403 with another token) before it reaches a handler here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mimid_actors::cluster_meta::{Locality, MetaChange, MetaRefusal, NodeState};
use mimid_actors::hub::HubError;
use mimid_actors::shard_descriptors::ShardDescriptor;
use mimid_cluster::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

use super::bootstrap::{init_response, INIT_PATH};
use super::split::split;
use super::{leader_reports, ClusterOps, ShardReport};
use crate::metrics::SplitTrigger;

/// `GET`: the cluster's nodes and shards.
pub const STATUS_PATH: &str = "/admin/cluster/status";
/// `POST`: start draining this node.
pub const DRAIN_PATH: &str = "/admin/cluster/drain";
/// `POST`: stop draining this node.
pub const UNDRAIN_PATH: &str = "/admin/cluster/undrain";
/// `POST {"id", "cluster_addr"}`: register a node.
pub const ADD_NODE_PATH: &str = "/admin/cluster/nodes";
/// `POST {"shard": N, "rooms": M}`: split shard `N` ([`SplitRequest`]).
pub const SPLIT_PATH: &str = "/admin/shards/split";
/// What a 503 of the split route asks the caller to wait, in seconds.
const SPLIT_RETRY_AFTER_SECS: u64 = 5;

/// `GET /admin/cluster/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    /// Whether it drains.
    pub draining: bool,
    /// The registry's replication factor (0: the registry is not seeded, or the node runs
    /// alone).
    pub replication_factor: u32,
    /// The cluster id of a cluster formed with `cluster.join` and `mimid init`; `None` for a
    /// statically configured cluster or a node alone.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// `cluster.leader_region` of the answering node (the placement driver's, where it runs).
    #[serde(default)]
    pub leader_region: Option<String>,
    /// Registered nodes, and nodes that answered without being registered, by id.
    pub nodes: Vec<NodeEntry>,
    /// Every shard, by id.
    pub shards: Vec<ShardEntry>,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: NodeId,
    /// `active`, `decommissioning`, `decommissioned`, or `unregistered`.
    pub state: String,
    /// Its node-to-node address in the registry.
    pub cluster_addr: Option<String>,
    /// Its locality in the registry (`region=eu,zone=eu-1`; empty: none).
    #[serde(default)]
    pub locality: String,
    /// Connected to the answering node's transport (always true for the answering node).
    pub live: bool,
    /// Whether it drains, when it answered.
    pub draining: Option<bool>,
    /// Shards it votes in, is a learner of, and leads (per the shards' reports).
    pub voter_of: usize,
    pub learner_of: usize,
    pub leads: usize,
}

/// One shard in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Entries each member is behind the leader's log, from the leader's report; empty when
    /// the leader did not answer (the other fields are then the answering node's replica).
    pub lag: BTreeMap<NodeId, u64>,
    /// The node whose replica this entry describes.
    pub reported_by: NodeId,
    /// The answering node's replica hibernates (idle: it neither ticks nor heartbeats until a
    /// write, a message or an unreachable leader wakes it).
    #[serde(default)]
    pub hibernating: bool,
    /// Where the shard lives as its leader recorded it in shard 0 (the shard descriptor,
    /// `mimid_actors::shard_descriptors`), as the answering node's replica of shard 0 holds
    /// it; `None` before the first record.
    #[serde(default)]
    pub recorded: Option<RecordedPlacement>,
}

/// A shard's descriptor in [`ShardEntry::recorded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedPlacement {
    pub leader: NodeId,
    pub term: u64,
    /// The index the leader had applied when it recorded it.
    pub as_of: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl From<&ShardDescriptor> for RecordedPlacement {
    fn from(descriptor: &ShardDescriptor) -> Self {
        RecordedPlacement {
            leader: descriptor.leader,
            term: descriptor.term,
            as_of: descriptor.as_of,
            voters: descriptor.voters.clone(),
            learners: descriptor.learners.clone(),
        }
    }
}

impl ShardEntry {
    /// The entry for `report`, the replica of node `reported_by`; `lag` as in
    /// [`ShardEntry::lag`].
    fn from_report(report: &ShardReport, reported_by: NodeId, lag: BTreeMap<NodeId, u64>) -> Self {
        ShardEntry {
            shard: report.shard,
            leader: report.leader,
            term: report.term,
            commit: report.commit,
            applied: report.applied,
            voters: report.voters.clone(),
            learners: report.learners.clone(),
            lag,
            reported_by,
            hibernating: false,
            recorded: None,
        }
    }
}

/// The answer to drain and undrain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAnswer {
    pub node_id: NodeId,
    pub draining: bool,
    /// Shards the node still leads (they are handed away while it drains).
    pub leads: Vec<ShardId>,
}

/// The body of `POST /admin/cluster/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddNodeRequest {
    pub id: NodeId,
    /// `IP:PORT` of its `cluster.listen`, as the other nodes dial it.
    pub cluster_addr: String,
    /// Its locality, `region=eu,zone=eu-1` (optional; the node records its configured one
    /// when it starts, which wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
}

/// The body of `POST /admin/shards/split`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    /// The shard to split: a hashed shard or a split shard.
    pub shard: ShardId,
    /// How many of its rooms move; default about half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<usize>,
}

/// A registry change's answer: the node as the registry holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    pub id: NodeId,
    pub state: String,
    pub cluster_addr: Option<String>,
    /// Its locality in the registry (empty: none).
    #[serde(default)]
    pub locality: String,
    /// Whether this request changed the registry.
    pub changed: bool,
}

/// The cluster routes over `ops`, to merge into the admin router behind its token gate
/// ([`crate::admin::router`]); served on their own they would be unauthenticated.
pub fn routes(ops: Arc<ClusterOps>) -> Router {
    Router::new()
        .route(STATUS_PATH, get(status))
        .route(DRAIN_PATH, post(drain))
        .route(UNDRAIN_PATH, post(undrain))
        .route(ADD_NODE_PATH, post(add_node))
        .route("/admin/cluster/nodes/{id}/decommission", post(decommission))
        .route(INIT_PATH, post(init))
        .route(SPLIT_PATH, post(split_shard))
        .with_state(ops)
}

/// The label of a registry state in JSON and on the command line.
pub(super) fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Active => "active",
        NodeState::Decommissioning => "decommissioning",
        NodeState::Decommissioned => "decommissioned",
    }
}

impl ClusterOps {
    /// [`ClusterStatus`] from the registry and every report this node can get now.
    ///
    /// Cancel safety: safe to drop.
    pub async fn status(&self) -> ClusterStatus {
        let meta = self.registry().unwrap_or_default();
        let reports = self.gather(&meta).await;
        let shard_count = self.cluster.shard_count();
        let leaders = leader_reports(&reports, shard_count);
        let own = &reports[&self.node_id];
        let asleep = self.cluster.status();
        let descriptors = self
            .hub()
            .map(|hub| hub.shard_descriptors())
            .unwrap_or_default();
        let shards: Vec<ShardEntry> = own
            .shards
            .iter()
            .map(|local| match leaders.get(&local.shard) {
                Some((leader, report)) => {
                    let head = report
                        .progress
                        .get(leader)
                        .copied()
                        .unwrap_or(report.commit);
                    let lag = report
                        .progress
                        .iter()
                        .map(|(&node, &matched)| (node, head.saturating_sub(matched)))
                        .collect();
                    ShardEntry::from_report(report, *leader, lag)
                }
                None => ShardEntry::from_report(local, self.node_id, BTreeMap::new()),
            })
            .map(|mut entry| {
                entry.hibernating = asleep
                    .iter()
                    .any(|status| status.shard == entry.shard && status.hibernating);
                entry.recorded = descriptors.get(entry.shard).map(RecordedPlacement::from);
                entry
            })
            .collect();
        let ids: std::collections::BTreeSet<NodeId> =
            meta.nodes().keys().chain(reports.keys()).copied().collect();
        let nodes = ids
            .into_iter()
            .map(|id| {
                let record = meta.node(id);
                let count = |pick: fn(&ShardEntry) -> &Vec<NodeId>| {
                    shards
                        .iter()
                        .filter(|shard| pick(shard).contains(&id))
                        .count()
                };
                NodeEntry {
                    id,
                    state: record
                        .map_or("unregistered", |r| state_name(r.state))
                        .into(),
                    cluster_addr: record.and_then(|r| r.cluster_addr).map(|a| a.to_string()),
                    locality: record.map(|r| r.locality.to_string()).unwrap_or_default(),
                    live: id == self.node_id || self.metrics.cluster_peer_connected(id),
                    draining: reports.get(&id).map(|report| report.draining),
                    voter_of: count(|shard| &shard.voters),
                    learner_of: count(|shard| &shard.learners),
                    leads: shards.iter().filter(|s| s.leader == Some(id)).count(),
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.node_id,
            draining: self.is_draining(),
            replication_factor: meta.replication_factor(),
            cluster_id: meta
                .cluster_id()
                .or(self.settings.cluster_id)
                .map(|id| id.to_string()),
            leader_region: self.settings.leader_region.clone(),
            nodes,
            shards,
        }
    }

    /// Proposes `change` to the registry; the answer for the admin route.
    ///
    /// Cancel safety: safe to drop; the change may still be applied.
    async fn change_registry(
        &self,
        change: MetaChange,
        id: NodeId,
        created: StatusCode,
    ) -> Response {
        if self.net.is_none() {
            return text(
                StatusCode::CONFLICT,
                "this node runs alone (cluster.listen is not set): there is no cluster to change",
            );
        }
        let Some(hub) = self.hub() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
        };
        match hub.change_cluster_meta(change.clone()).await {
            Ok(Ok(changed)) => {
                tracing::info!(?change, changed, "node registry changed by the operator");
                let meta = hub.cluster_meta();
                let record = meta.node(id);
                let answer = NodeAnswer {
                    id,
                    state: record
                        .map_or("unregistered", |r| state_name(r.state))
                        .into(),
                    cluster_addr: record.and_then(|r| r.cluster_addr).map(|a| a.to_string()),
                    locality: record.map(|r| r.locality.to_string()).unwrap_or_default(),
                    changed,
                };
                let status = if changed { created } else { StatusCode::OK };
                (status, json(&answer)).into_response()
            }
            Ok(Err(refusal)) => {
                tracing::info!(?change, %refusal, "node registry change refused");
                text(refusal_status(&refusal), &refusal.to_string())
            }
            Err(HubError::Busy(busy)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("busy: {busy}; repeat the request"),
            ),
            Err(HubError::Unavailable(reason)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{reason}; repeat the request"),
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}

fn refusal_status(refusal: &MetaRefusal) -> StatusCode {
    match refusal {
        MetaRefusal::UnknownNode(_) => StatusCode::NOT_FOUND,
        MetaRefusal::InvalidNode
        | MetaRefusal::UndiallableAddress(_)
        | MetaRefusal::InvalidSeed(_)
        | MetaRefusal::InvalidLocality(_) => StatusCode::BAD_REQUEST,
        MetaRefusal::NotSeeded => StatusCode::SERVICE_UNAVAILABLE,
        MetaRefusal::AlreadyRegistered { .. }
        | MetaRefusal::AddressInUse { .. }
        | MetaRefusal::Decommissioned(_)
        | MetaRefusal::TooFewNodes { .. }
        | MetaRefusal::NotDecommissioning(_)
        | MetaRefusal::ClusterIdMismatch { .. }
        | MetaRefusal::Full => StatusCode::CONFLICT,
    }
}

async fn status(State(ops): State<Arc<ClusterOps>>) -> Response {
    json(&ops.status().await).into_response()
}

async fn drain(State(ops): State<Arc<ClusterOps>>) -> Response {
    ops.set_draining(true);
    json(&DrainAnswer {
        node_id: ops.node_id(),
        draining: true,
        leads: ops.led_shards(),
    })
    .into_response()
}

async fn undrain(State(ops): State<Arc<ClusterOps>>) -> Response {
    ops.set_draining(false);
    json(&DrainAnswer {
        node_id: ops.node_id(),
        draining: false,
        leads: ops.led_shards(),
    })
    .into_response()
}

async fn add_node(State(ops): State<Arc<ClusterOps>>, body: Bytes) -> Response {
    let request: AddNodeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be {{\"id\": N, \"cluster_addr\": \"IP:PORT\"}} (and \
                     optionally \"locality\": \"region=…,zone=…\"): {e}"
                ),
            )
        }
    };
    let cluster_addr: SocketAddr = match request.cluster_addr.parse() {
        Ok(addr) => addr,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "cluster_addr {:?} is not IP:PORT: {e}",
                    request.cluster_addr
                ),
            )
        }
    };
    let locality = match request.locality.as_deref().map(str::parse::<Locality>) {
        None => Locality::default(),
        Some(Ok(locality)) => locality,
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, &format!("locality: {e}")),
    };
    let change = if locality.is_empty() {
        MetaChange::AddNode {
            id: request.id,
            cluster_addr,
        }
    } else {
        MetaChange::AddNodeWithLocality {
            id: request.id,
            cluster_addr,
            locality,
        }
    };
    ops.change_registry(change, request.id, StatusCode::CREATED)
        .await
}

/// Cancel safety: safe to drop (`Bootstrap::init`).
async fn init(State(ops): State<Arc<ClusterOps>>) -> Response {
    init_response(ops.bootstrap().map(Arc::as_ref)).await
}

async fn decommission(State(ops): State<Arc<ClusterOps>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<NodeId>() else {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("{id:?} is not a node id (a decimal number)"),
        );
    };
    ops.change_registry(MetaChange::Decommission { id }, id, StatusCode::OK)
        .await
}

/// `POST /admin/shards/split` (module docs): `Hub::split_shard`, whose refusals (decided
/// before anything moves) are the 400s.
///
/// Cancel safety: safe to drop; the split runs to its end in a task of its own.
async fn split_shard(State(ops): State<Arc<ClusterOps>>, body: Bytes) -> Response {
    let request: SplitRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be {{\"shard\": N}} (and optionally \"rooms\": M, how many \
                     rooms move): {e}"
                ),
            )
        }
    };
    let Some(hub) = ops.hub() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    };
    let Some(running) = ops.begin_split(request.shard) else {
        let running = ops
            .split_running()
            .map_or("another shard".to_owned(), |shard| format!("shard {shard}"));
        return text(
            StatusCode::CONFLICT,
            &format!("a split of {running} runs on this node; repeat when it is done"),
        );
    };
    tracing::info!(shard = request.shard, rooms = ?request.rooms, "shard split asked by the operator");
    match split(running, hub, request.rooms, SplitTrigger::Operator).await {
        Ok(outcome) => json(&outcome),
        Err(HubError::Rejected(reason)) => text(StatusCode::BAD_REQUEST, &reason),
        Err(HubError::UnknownRoom) => text(
            StatusCode::BAD_REQUEST,
            &format!("shard {}: a room to move is unknown", request.shard),
        ),
        Err(e @ (HubError::Unavailable(_) | HubError::Busy(_))) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, SPLIT_RETRY_AFTER_SECS.to_string())],
            format!("{e}; repeat the request (rooms already moved stay moved)\n"),
        )
            .into_response(),
    }
}

fn text(status: StatusCode, reason: &str) -> Response {
    (status, format!("{reason}\n")).into_response()
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the answer: {e}"),
        ),
    }
}
