//! Node-level operations of a provider's cluster (issue 4 part 5, issue 6 part 3): the node
//! registry kept current, the placement driver, drain, and what `mimid node …` and the admin
//! listener expose of them (ARCHITECTURE.md "Cluster").
//!
//! What it owns:
//! - **The node registry's upkeep** ([`driver`]'s watcher, on every node). The registry is
//!   replicated state of shard 0 (`mimid_actors::cluster_meta`); this node seeds it when it is
//!   the first leader of shard 0 of a new cluster (`cluster.voters`, `cluster.peers`,
//!   `cluster.replication_factor`), records its own node-to-node address in it when that
//!   moved, and dials every registered node its transport does not know yet
//!   ([`crate::cluster_net::NetSender::set_peer`], which also makes the acceptor admit it). So
//!   a node added with `mimid node add` becomes reachable from every node without a
//!   configuration change.
//! - **The placement driver** ([`driver`], the core in [`placement`]): on the node leading
//!   shard 0 only, one membership step per [`PLACEMENT_STEP`] at most, each awaited before the
//!   next: learners on every Active node, `replication_factor` voters per shard spread over
//!   the nodes' localities (regions, then zones; issue 9) and evenly over nodes, nothing on
//!   Decommissioning nodes, which it marks Decommissioned once empty, and leaderships moved to
//!   `cluster.leader_region` and balanced while their shards are quiet. Steps
//!   are asked of each shard's leader (only a leader changes its shard's members) over the
//!   node-to-node RPCs of [`rpc`]. `mimid_placement_moves_total{outcome}` counts the steps,
//!   `mimid_placement_pending` what is left.
//! - **Drain** (in memory, not replicated): while draining, every shard this node leads is
//!   handed to another voter, again whenever it leads one, and `/readyz` answers 503
//!   "draining" until `undrain` or a restart.
//! - **Shard splits** ([`split`]; issue 9 build item 3): on every node of a cluster with split
//!   shards and a `[cluster.split]` threshold on, a sans-IO policy watches the shards the node
//!   leads and has the hub hand about half the rooms of a large or hot one to a split shard;
//!   `POST /admin/shards/split` and `mimid shard split` do it by hand. One split at a time per
//!   node. `mimid_shard_splits_total{trigger, outcome}` counts them.
//! - **The admin routes** ([`http`]) and **the CLI** ([`cli`]: `mimid node status | drain |
//!   undrain | add | decommission`, `mimid shard split`, `mimid init`).
//! - **Bootstrap with `cluster.join`** ([`bootstrap`]): the cluster id, waiting for `mimid
//!   init`, gossip of the known nodes, the init itself; once the node runs, the node that took
//!   `init` seeds the registry with the cluster id ([`driver`]), and every other node registers
//!   itself through a connected node (`OpsRequest::Register`) so the placement driver gives it
//!   replicas.
//!
//! What it does not do: decide anything about rooms (that is the shards' apply), change a
//! shard's members on a node that does not lead it (the cluster crate refuses; we ask the
//! leader), or move replicas faster than one step at a time.

pub mod bootstrap;
mod cli;
mod driver;
mod http;
mod placement;
#[cfg(test)]
mod placement_sim;
mod rpc;
pub mod split;

pub use bootstrap::{Bootstrap, InitAnswer, Role, INIT_PATH};
pub use cli::{
    render_split, render_status, run_init, run_node_command, run_shard_command, NodeCommand,
    ShardCommand,
};
pub use http::{
    routes, AddNodeRequest, ClusterStatus, DrainAnswer, NodeAnswer, NodeEntry, RecordedPlacement,
    ShardEntry, SplitRequest, ADD_NODE_PATH, DRAIN_PATH, SPLIT_PATH, STATUS_PATH, UNDRAIN_PATH,
};
pub use rpc::{NodeReport, OpsRpc, ShardReport};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use mimid_actors::cluster_meta::{ClusterId, ClusterMeta, Locality, NodeState};
use mimid_actors::hub::Hub;
use mimid_actors::shard::ShardMachine;
use mimid_cluster::{ClusterHandle, NodeId, ShardId};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::cluster_net::NetSender;
use crate::config::{Config, SplitSettings};
use crate::metrics::Metrics;

/// The readiness reason of a node that holds no replica any more.
const DECOMMISSIONED: &str = "decommissioned: this node holds no replica any more; stop it";

/// At most one placement step per this interval (a step also waits for its answer).
pub const PLACEMENT_STEP: Duration = Duration::from_millis(200);

/// What the operations read from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsSettings {
    /// `cluster.replication_factor`, for seeding the registry.
    pub replication_factor: u32,
    /// `cluster.join_existing`: such a node never seeds a registry.
    pub join_existing: bool,
    /// The voters a new cluster's shards start with (`cluster.voters` or node_id and peers).
    pub initial_voters: Vec<NodeId>,
    /// `cluster.peers`.
    pub configured_peers: BTreeMap<NodeId, SocketAddr>,
    /// This node's node-to-node address as others dial it: the bound listener, unless it is
    /// an unspecified address (`0.0.0.0`), which tells nothing.
    pub advertised: Option<SocketAddr>,
    /// [`PLACEMENT_STEP`]; tests may shorten it.
    pub placement_step: Duration,
    /// The cluster id of a cluster formed with `cluster.join` (`None`: static or alone). With
    /// `join_existing` false, this node is an initial voter and may seed the registry with it.
    pub cluster_id: Option<ClusterId>,
    /// Register this node through a connected node until the registry names it (a node that
    /// joined with `cluster.join`, the automatic `mimid node add`).
    pub register: bool,
    /// This node's `locality`, which it records in the registry (issue 9).
    pub locality: Locality,
    /// `cluster.leader_region`: the placement driver moves leaderships there.
    pub leader_region: Option<String>,
    /// `cluster.replicas = "r"`: the placement driver keeps each shard on its voters only
    /// (shard 0 stays on every node).
    pub partial: bool,
    /// The regions each residency shard's replicas must stay in (`[[cluster.residency]]`).
    /// Split shards are not in it: placement treats them like the hashed shards.
    pub residency: BTreeMap<ShardId, BTreeSet<String>>,
    /// `[cluster.split]`: when shards split on their own ([`split`]).
    pub split: SplitSettings,
}

impl OpsSettings {
    /// The settings of a validated `config` whose node-to-node listener is bound at `bound`
    /// (`None`: the node runs alone).
    pub fn from_config(config: &Config, bound: Option<SocketAddr>) -> Self {
        let cluster = &config.cluster;
        OpsSettings {
            replication_factor: cluster.replication_factor,
            join_existing: cluster.join_existing,
            initial_voters: cluster.initial_voters(config.node_id),
            configured_peers: cluster.peer_addresses(config.node_id).unwrap_or_default(),
            advertised: bound.filter(|addr| !addr.ip().is_unspecified() && addr.port() != 0),
            placement_step: PLACEMENT_STEP,
            cluster_id: None,
            register: false,
            locality: config.locality(),
            leader_region: cluster.leader_region.clone(),
            partial: cluster.replicas == crate::config::Replicas::R,
            residency: cluster
                .layout()
                .map(|layout| layout.regions_by_shard())
                .unwrap_or_default(),
            split: cluster.split.clone(),
        }
    }

    /// These settings for node `own` that formed or joined its cluster with `cluster.join` in
    /// `role`: an initial voter may seed the registry with the initial voters and the cluster
    /// id; every other node joins the existing shards and registers itself.
    pub fn joined(mut self, own: NodeId, role: &Role) -> Self {
        let member = role.is_initial_voter(own);
        self.cluster_id = Some(role.cluster_id);
        self.initial_voters = role.initial_voters.iter().map(|&(id, _)| id).collect();
        self.configured_peers = role
            .initial_voters
            .iter()
            .filter(|&&(id, _)| id != own)
            .copied()
            .collect();
        self.join_existing = !member;
        self.register = !member;
        self
    }
}

/// The cluster operations of one node. Shared by the admin routes, the node-to-node RPC
/// handler ([`OpsRpc`]) and the background tasks ([`ClusterOps::spawn`]).
pub struct ClusterOps {
    node_id: NodeId,
    cluster: ClusterHandle<ShardMachine>,
    /// Weak: the transport (which holds the RPC handler, which holds this) outlives the hub
    /// when a node stops.
    hub: Weak<Hub>,
    net: Option<NetSender>,
    metrics: Arc<Metrics>,
    settings: OpsSettings,
    draining: AtomicBool,
    /// Peers the transport knows and at which address: configured, introduced
    /// ([`ClusterOps::note_peer`]) or taken from the registry.
    known_peers: Mutex<BTreeMap<NodeId, SocketAddr>>,
    /// Shards whose leadership transfer for draining is under way.
    draining_transfers: Arc<Mutex<BTreeSet<ShardId>>>,
    /// The bootstrap of a node using `cluster.join` (for `POST /admin/cluster/init`).
    bootstrap: OnceLock<Arc<Bootstrap>>,
    /// The shard whose split runs on this node ([`ClusterOps::begin_split`]).
    splitting: Mutex<Option<ShardId>>,
}

impl ClusterOps {
    /// The operations of this node; `net` is `None` for a node running alone.
    pub fn new(
        settings: OpsSettings,
        cluster: ClusterHandle<ShardMachine>,
        hub: &Arc<Hub>,
        net: Option<NetSender>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let known_peers = if net.is_some() {
            settings.configured_peers.clone()
        } else {
            BTreeMap::new()
        };
        Arc::new(ClusterOps {
            node_id: cluster.node_id(),
            cluster,
            hub: Arc::downgrade(hub),
            net,
            metrics,
            settings,
            draining: AtomicBool::new(false),
            known_peers: Mutex::new(known_peers),
            draining_transfers: Arc::default(),
            bootstrap: OnceLock::new(),
            splitting: Mutex::new(None),
        })
    }

    /// Makes `POST /admin/cluster/init` answer from `bootstrap` (a node using `cluster.join`;
    /// without it the route answers 409). A second call changes nothing.
    pub fn set_bootstrap(&self, bootstrap: Arc<Bootstrap>) {
        let _ = self.bootstrap.set(bootstrap);
    }

    /// The bootstrap of a node using `cluster.join`.
    pub fn bootstrap(&self) -> Option<&Arc<Bootstrap>> {
        self.bootstrap.get()
    }

    /// The cluster id (a cluster formed with `cluster.join`): the registry's, else this
    /// node's.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.registry()
            .and_then(|meta| meta.cluster_id())
            .or(self.settings.cluster_id)
    }

    /// Starts the registry watcher, the placement driver, the drain loop and, with split
    /// shards and a `[cluster.split]` threshold on, the automatic splits on the current tokio
    /// runtime; abort the tasks to stop them.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(driver::watch_registry(self.clone())),
            tokio::spawn(driver::run_placement(self.clone())),
            tokio::spawn(driver::drain_leaderships(self.clone())),
        ];
        if self.settings.split.is_automatic() {
            tasks.push(tokio::spawn(split::run_splits(self.clone())));
        }
        tasks
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether the node drains (`POST /admin/cluster/drain`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts (`true`) or stops draining. Returns whether it drained before.
    pub fn set_draining(&self, draining: bool) -> bool {
        let before = self.draining.swap(draining, Ordering::Relaxed);
        if before != draining {
            tracing::info!(draining, "drain set by the operator");
        }
        before
    }

    /// The shards this node leads now.
    pub fn led_shards(&self) -> Vec<ShardId> {
        (0..self.cluster.shard_count())
            .filter(|&shard| self.cluster.leader(shard) == Some(self.node_id))
            .collect()
    }

    /// The operations' part of `/readyz`: not ready while draining, nor once the node is
    /// being decommissioned (its clients should move before its replicas do). A node removed
    /// from shard 0 no longer sees the registry change, so "decommissioned" is also what a
    /// Decommissioning node that is a member of no shard says.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err(
                "draining: this node hands its shard leaderships to other nodes \
                        (`mimid node undrain` or a restart ends it)"
                    .into(),
            );
        }
        let state = self
            .registry()
            .and_then(|meta| meta.node(self.node_id).map(|record| record.state));
        match state {
            Some(NodeState::Decommissioned) => Err(DECOMMISSIONED.into()),
            Some(NodeState::Decommissioning) if self.holds_no_replica() => {
                Err(DECOMMISSIONED.into())
            }
            Some(NodeState::Decommissioning) => Err("decommissioning: this node's replicas \
                                                      move to other nodes"
                .into()),
            Some(NodeState::Active) | None => Ok(()),
        }
    }

    /// Whether no local replica counts this node as a member (all removed, or none placed
    /// yet).
    fn holds_no_replica(&self) -> bool {
        self.cluster.status().iter().all(|status| {
            !status.voters.contains(&self.node_id) && !status.learners.contains(&self.node_id)
        })
    }

    /// Records that the transport was told peer `id` is at `addr` (by whoever introduced it),
    /// so the registry watcher does not replace the address with an older one.
    pub fn note_peer(&self, id: NodeId, addr: SocketAddr) {
        self.known_peers.lock().insert(id, addr);
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    /// The registry as the local replica of shard 0 holds it; `None` while the hub stops.
    fn registry(&self) -> Option<ClusterMeta> {
        self.hub().map(|hub| hub.cluster_meta())
    }

    /// Every report this node can get now: its own, and those of the registered nodes and
    /// known peers that answer within [`rpc::STATUS_TIMEOUT`].
    ///
    /// Cancel safety: safe to drop.
    async fn gather(&self, meta: &ClusterMeta) -> BTreeMap<NodeId, NodeReport> {
        let mut reports = BTreeMap::from([(self.node_id, self.report())]);
        let Some(net) = &self.net else {
            return reports;
        };
        let others: BTreeSet<NodeId> = meta
            .nodes()
            .keys()
            .copied()
            .chain(self.known_peers.lock().keys().copied())
            .filter(|&id| id != self.node_id)
            .collect();
        let calls = others.into_iter().map(|id| async move {
            let answer = rpc::call(net, id, &rpc::OpsRequest::Status, rpc::STATUS_TIMEOUT).await;
            (id, answer)
        });
        for (id, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(rpc::OpsAnswer::Status(report)) if report.node_id == id => {
                    reports.insert(id, report);
                }
                Ok(other) => tracing::debug!(node = id, ?other, "unexpected status answer"),
                Err(reason) => tracing::debug!(node = id, %reason, "no status"),
            }
        }
        reports
    }
}

/// For every shard, the report of the node that leads it (the highest term if two claim it),
/// or `None` where no reporting node leads the shard.
fn leader_reports(
    reports: &BTreeMap<NodeId, NodeReport>,
    shard_count: u64,
) -> BTreeMap<ShardId, (NodeId, &ShardReport)> {
    let mut leaders: BTreeMap<ShardId, (NodeId, &ShardReport)> = BTreeMap::new();
    for (&node, report) in reports {
        for shard in &report.shards {
            if shard.shard >= shard_count || shard.failed || shard.leader != Some(node) {
                continue;
            }
            let newer = leaders
                .get(&shard.shard)
                .is_none_or(|(_, known)| shard.term > known.term);
            if newer {
                leaders.insert(shard.shard, (node, shard));
            }
        }
    }
    leaders
}
