//! CockroachDB-style bootstrap (issue 4; ARCHITECTURE.md "Cluster"; ops/runbooks/bootstrap.md):
//! nodes started with `mimid start --join ADDR,…` (`cluster.join`) find each other, wait
//! uninitialized, and become one cluster when `mimid init` runs on one of them.
//!
//! What it owns:
//! - **The cluster id in the data directory** ([`CLUSTER_ID_FILE`], [`Role`]): written once,
//!   when this node learns its cluster id, before any of its shard groups exists; read at every
//!   start. A node with it starts its groups at once; a node without it (and without Raft
//!   state) waits.
//! - **Waiting** ([`Bootstrap::role`]): until the node-to-node transport knows the cluster id:
//!   set here by `init`, or adopted from another node, in a hello (`crate::cluster_net`) or in
//!   a gossip answer. Meanwhile `/readyz` answers 503 "cluster not initialized" and no shard
//!   group exists.
//! - **Gossip** ([`Bootstrap::gossip_loop`]): every [`GOSSIP_WAITING`] until the node runs
//!   (every [`GOSSIP_MEMBER`] after), each connected peer is sent this node's cluster id (if
//!   any), `init`'s decision (if known) and the peers it is connected to, and answers with its
//!   own; unknown nodes are added to the transport's peers, an unknown cluster id is adopted,
//!   and the decision of this node's cluster is taken. So a node that knows one join address
//!   reaches every node that one knows.
//! - **`init`** ([`Bootstrap::init`], `POST /admin/cluster/init`, `mimid init`): refused (409,
//!   "cluster already initialized (cluster id …)") when this node, or a connected node asked
//!   first, knows a cluster id; otherwise it draws a random 128-bit cluster id and decides the
//!   **initial voters**: itself and every connected node that answered it knows no cluster id.
//!   It sets the id in the transport (which renews every connection, so every hello carries it
//!   from now on) and waits until this node runs.
//!
//! [IMPL CHOICE] Every shard starts with the initial voters, like a statically configured
//! cluster's `cluster.voters`: the decision ([`Role`]: the cluster id and the voters with their
//! node-to-node addresses) travels in the gossip, every node keeps it in its data directory,
//! and a node among the voters bootstraps its shards with exactly these voters, so all of them
//! start with the same configuration; one election later every shard has a leader. The first
//! leader of shard 0 seeds the node registry with the voters and the cluster id
//! (`MetaChange::Bootstrap`), the placement driver trims the voters to R. A node that is not
//! among them (connected after `init`, or started later with `--join`) starts its shards empty
//! (`join_existing`) and registers itself through a connected node (`OpsRequest::Register`,
//! the automatic `mimid node add`); placement gives it learners, then its share of voters,
//! caught up by snapshot. The other choice, the node that takes `init` bootstrapping alone and
//! placement adding every other node, needs no decision to travel, but it makes every new
//! cluster spend its first minutes moving replicas one membership change at a time; `init` on
//! a node that is alone still leaves nodes that join later to that path.
//!
//! A voter that never learns the decision (it stopped before the gossip reached it) is a dead
//! voter like any other: the others keep a quorum when they are a majority, and `mimid node
//! decommission` removes it. A node that adopted the cluster id waits until it also has the
//! decision before it creates any shard group.
//!
//! **A cluster from a backup** (`mimid restore` with a configuration that uses `cluster.join`,
//! `crate::backup::restore`; ops/runbooks/backup-restore.md): the restored data directory is
//! a node whose cluster was just initialized with itself as the only initial voter. Restore
//! writes every shard as a snapshot with the restored node as its only voter, leaves the
//! backed-up cluster's node registry out of shard 0 (the new cluster seeds its own), and then
//! writes [`CLUSTER_ID_FILE`] with a new cluster id and that one voter
//! ([`Role::restored_seed`]). So the restored node, started with `--join`, reads its id and
//! starts at once like any restarted node, the first leader of shard 0 (itself) seeds the
//! registry with it and the new id, and every other node started with `--join` naming it
//! adopts the id at its first hello, takes the decision from the gossip and joins as a
//! non-voter that registers itself and is placed, caught up by snapshot: the path of `init`
//! on a node alone. `mimid init` is not needed and answers 409 (the id exists). The order is
//! the safety argument: the empty nodes never decide anything, because the restored node
//! knows its cluster id before it first connects; had `init` instead been run on an empty node
//! connected to it, that node would have bootstrapped empty shards with voters of its own
//! choosing beside the restored ones.
//!
//! Races: two `init`s on two nodes that have not heard of each other's (within the moment it
//! takes the id to spread) would form two clusters; the nodes of one refuse the other's at
//! every hello from then on. `init` asks the connected nodes first, which closes the window
//! except for truly concurrent calls; run it once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use mimid_actors::cluster_meta::ClusterId;
use mimid_cluster::NodeId;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster_net::{ClusterIdError, NetSender};

/// `POST`: initialize the cluster (`mimid init`).
pub const INIT_PATH: &str = "/admin/cluster/init";

/// The file in the data directory that holds the cluster id ([`Role`], TOML).
pub const CLUSTER_ID_FILE: &str = "cluster_id.toml";

/// Gossip interval until the node runs.
pub const GOSSIP_WAITING: Duration = Duration::from_millis(250);
/// Gossip interval once the node runs (nodes that join later still learn the peers).
pub const GOSSIP_MEMBER: Duration = Duration::from_secs(2);
/// How long one gossip call waits for its answer.
const GOSSIP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `init` waits for this node's groups and services to start before it answers.
const INIT_WAIT: Duration = Duration::from_secs(60);

/// The first bytes of a bootstrap request on the node-to-node RPC (beside the cluster
/// operations' `0xff 'o' 'p' 's'` and forwarded proposals, whose first byte is never `0xff`).
pub(crate) const BOOT_MARKER: [u8; 4] = [0xff, b'b', b'o', b'o'];

/// What a node knows of its cluster once it has an id, as [`CLUSTER_ID_FILE`] keeps it: the
/// decision `init` took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The cluster id.
    pub cluster_id: ClusterId,
    /// The voters every shard started with, at their node-to-node addresses: the node that
    /// took `init` and the nodes connected to it then. A node among them bootstraps every
    /// shard group it has no state for with them (also after a crash between writing this
    /// file and creating the groups); every other node starts them empty and is given
    /// replicas.
    pub initial_voters: Vec<(NodeId, SocketAddr)>,
}

impl Role {
    /// The role of a new cluster with these initial voters and a random 128-bit cluster id
    /// from the operating system's random source.
    pub fn new_cluster(mut initial_voters: Vec<(NodeId, SocketAddr)>) -> Role {
        initial_voters.sort_unstable();
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Role {
            cluster_id: ClusterId::from_bytes(bytes),
            initial_voters,
        }
    }

    /// The role `mimid restore` writes for a node with `cluster.join` (module docs): a new
    /// cluster whose only initial voter is the restored node `node_id`, which other nodes dial
    /// at `listen` (`cluster.listen`; it must name an address and a port).
    pub fn restored_seed(node_id: NodeId, listen: SocketAddr) -> anyhow::Result<Role> {
        anyhow::ensure!(
            !listen.ip().is_unspecified() && listen.port() != 0,
            "cluster.listen is {listen}: a node restored for a cluster formed with cluster.join \
             seeds that cluster, and the other nodes learn its address from it, so \
             cluster.listen must be the address they dial (not 0.0.0.0 or port 0)"
        );
        Ok(Role::new_cluster(vec![(node_id, listen)]))
    }

    /// Whether node `id` is one of the initial voters.
    pub fn is_initial_voter(&self, id: NodeId) -> bool {
        self.initial_voters.iter().any(|&(voter, _)| voter == id)
    }
}

/// [`Role`] on disk.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    cluster_id: String,
    initial_voters: Vec<VoterEntry>,
}

/// One initial voter in [`RoleFile`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoterEntry {
    id: NodeId,
    addr: SocketAddr,
}

/// Where the node is in its bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No cluster id yet: no shard group exists.
    Waiting,
    /// The cluster id is known (and on disk); replication and the services are starting.
    Starting(Role),
    /// The node runs.
    Running(Role),
    /// The start failed after the cluster id became known.
    Failed(String),
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// This node created cluster `cluster_id` with these initial voters; `running`: it runs
    /// (false: still starting when `init` stopped waiting).
    Initialized {
        cluster_id: ClusterId,
        voters: Vec<NodeId>,
        running: bool,
    },
    /// The cluster exists already (this node knows its id, or a connected node did).
    AlreadyInitialized(ClusterId),
    /// This node does not form its cluster with `cluster.join`.
    NotJoining,
    /// This node failed to start after it took the id.
    Failed(String),
}

/// The JSON answer of a successful `POST /admin/cluster/init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitAnswer {
    /// The new cluster's id.
    pub cluster_id: String,
    /// The node that bootstrapped it (the one asked).
    pub node_id: NodeId,
    /// The voters every shard starts with: that node and the nodes connected to it.
    pub voters: Vec<NodeId>,
    /// Whether the node runs already (false: it still starts; watch `/readyz`).
    pub running: bool,
}

/// Reads [`CLUSTER_ID_FILE`] from `data_dir`: `None` when there is none.
pub fn load_role(data_dir: &Path) -> anyhow::Result<Option<Role>> {
    let path = data_dir.join(CLUSTER_ID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: RoleFile =
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let cluster_id = file
        .cluster_id
        .parse()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        !file.initial_voters.is_empty(),
        "{}: no initial voters",
        path.display()
    );
    Ok(Some(Role {
        cluster_id,
        initial_voters: file
            .initial_voters
            .into_iter()
            .map(|voter| (voter.id, voter.addr))
            .collect(),
    }))
}

/// Writes `role` to [`CLUSTER_ID_FILE`] in `data_dir` durably: a temporary file, synced, renamed
/// into place, the directory synced. Never replaces a file with another cluster id.
pub fn store_role(data_dir: &Path, role: &Role) -> anyhow::Result<()> {
    if let Some(existing) = load_role(data_dir)? {
        anyhow::ensure!(
            existing.cluster_id == role.cluster_id,
            "{} names cluster {}, not {}",
            data_dir.join(CLUSTER_ID_FILE).display(),
            existing.cluster_id,
            role.cluster_id
        );
        if existing == *role {
            return Ok(());
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let text = format!(
        "# The cluster this node belongs to (mimid init; ops/runbooks/bootstrap.md). Written once;\n\
         # never edit or copy it: a node refuses nodes of any other cluster id.\n{}",
        toml::to_string(&RoleFile {
            cluster_id: role.cluster_id.to_string(),
            initial_voters: role
                .initial_voters
                .iter()
                .map(|&(id, addr)| VoterEntry { id, addr })
                .collect(),
        })?
    );
    let path = data_dir.join(CLUSTER_ID_FILE);
    let temporary = data_dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Whether `data_dir` holds Raft state (the cluster crate keeps it in `data_dir/raft`).
pub fn has_raft_state(data_dir: &Path) -> bool {
    data_dir.join("raft").exists()
}

/// The bootstrap of one node using `cluster.join` (module docs). Shared by the start-up task,
/// the admin route, the RPC handler ([`crate::cluster_ops::OpsRpc`], weakly) and the gossip
/// task.
pub struct Bootstrap {
    node_id: NodeId,
    data_dir: PathBuf,
    net: NetSender,
    phase: watch::Sender<Phase>,
    /// The decision of `init` (taken here, or heard in the gossip of a node of this cluster).
    decision: watch::Sender<Option<Role>>,
    /// One `init` at a time.
    init: tokio::sync::Mutex<()>,
}

/// One node's view in a gossip exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Gossip {
    /// Its cluster id, once known.
    cluster_id: Option<ClusterId>,
    /// Itself and the peers it is connected to, at their node-to-node addresses.
    nodes: Vec<(NodeId, SocketAddr)>,
    /// The decision of `init`, once it knows it.
    decision: Option<Role>,
}

/// A bootstrap request between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum BootRequest {
    /// The sender's view; the answer is the receiver's.
    Gossip(Gossip),
}

/// The answer to a [`BootRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum BootAnswer {
    Gossip(Gossip),
    /// The request could not be read, or the node cannot answer it.
    Refused(String),
}

impl Bootstrap {
    /// The bootstrap of node `node_id` storing in `data_dir`, over the started transport `net`
    /// (which uses `cluster.join`); `role` when the data directory names the cluster already.
    pub fn new(node_id: NodeId, data_dir: &Path, net: NetSender, role: Option<Role>) -> Arc<Self> {
        Arc::new(Bootstrap {
            node_id,
            data_dir: data_dir.to_owned(),
            net,
            phase: watch::Sender::new(role.clone().map_or(Phase::Waiting, Phase::Starting)),
            decision: watch::Sender::new(role),
            init: tokio::sync::Mutex::new(()),
        })
    }

    /// Where the node is.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// The transport (its peers, its cluster id).
    pub fn net(&self) -> &NetSender {
        &self.net
    }

    /// `/readyz` before the node runs: never ready, with the reason.
    pub fn readiness(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Waiting => {
                let peers: Vec<String> = self
                    .net
                    .connected_peers()
                    .keys()
                    .map(NodeId::to_string)
                    .collect();
                Err(format!(
                    "cluster not initialized: run `mimid init --host ADMIN_ADDR` against one \
                     node (this node is connected to {} other nodes{}{})",
                    peers.len(),
                    if peers.is_empty() { "" } else { ": " },
                    peers.join(", ")
                ))
            }
            Phase::Starting(role) | Phase::Running(role) => Err(format!(
                "cluster {} initialized; replication is starting",
                role.cluster_id
            )),
            Phase::Failed(reason) => Err(format!("the node failed to start: {reason}")),
        }
    }

    /// Waits until the cluster id and the decision of `init` are known (module docs), writes
    /// them to the data directory if they are new there, and returns the node's role; `Err`
    /// when they cannot be written.
    ///
    /// Cancel safety: safe to drop; the role is written at most once.
    pub async fn role(&self) -> anyhow::Result<Role> {
        let mut known = self.net.watch_cluster_id();
        let mut decision = self.decision.subscribe();
        loop {
            if let Phase::Starting(role) | Phase::Running(role) = self.phase() {
                return Ok(role);
            }
            let id = *known.borrow_and_update();
            let decided = decision.borrow_and_update().clone();
            if let (Some(id), Some(role)) = (id, decided) {
                if role.cluster_id == id.id {
                    let data_dir = self.data_dir.clone();
                    let stored = role.clone();
                    tokio::task::spawn_blocking(move || store_role(&data_dir, &stored))
                        .await
                        .context("writing the cluster id")??;
                    let voters: Vec<NodeId> = role
                        .initial_voters
                        .iter()
                        .map(|&(voter, _)| voter)
                        .collect();
                    if role.is_initial_voter(self.node_id) {
                        tracing::info!(
                            cluster_id = %role.cluster_id,
                            ?voters,
                            "cluster initialized; this node bootstraps every shard with the \
                             initial voters"
                        );
                    } else {
                        tracing::info!(
                            cluster_id = %role.cluster_id,
                            ?voters,
                            "joined a running cluster; this node's shards start empty and are \
                             placed by the cluster"
                        );
                    }
                    self.phase.send_replace(Phase::Starting(role.clone()));
                    return Ok(role);
                }
            }
            tokio::select! {
                changed = known.changed() => {
                    changed.context("the node-to-node transport stopped")?;
                }
                changed = decision.changed() => {
                    changed.context("the bootstrap stopped")?;
                }
            }
        }
    }

    /// Records how the start after [`Bootstrap::role`] ended.
    pub fn started(&self, result: Result<(), String>) {
        self.phase.send_modify(|phase| {
            *phase = match (result, &*phase) {
                (Ok(()), Phase::Starting(role) | Phase::Running(role)) => {
                    Phase::Running(role.clone())
                }
                (Ok(()), _) => Phase::Failed("started without a cluster id".into()),
                (Err(reason), _) => Phase::Failed(reason),
            }
        });
    }

    /// `mimid init` (module docs).
    ///
    /// Cancel safety: safe to drop; once the id is set, the node starts whether or not the
    /// caller waits.
    pub async fn init(&self) -> InitOutcome {
        let _one_at_a_time = self.init.lock().await;
        match self.phase() {
            Phase::Starting(role) | Phase::Running(role) => {
                return InitOutcome::AlreadyInitialized(role.cluster_id)
            }
            Phase::Failed(reason) => return InitOutcome::Failed(reason),
            Phase::Waiting => {}
        }
        if let Some(id) = self.net.cluster_id() {
            return InitOutcome::AlreadyInitialized(id);
        }
        // A node that knows the cluster's id would have told us in a hello; one connected
        // before the cluster existed tells us now. The others are the initial voters.
        let answers = self.gossip_round().await;
        if let Some(id) = self.net.cluster_id() {
            return InitOutcome::AlreadyInitialized(id);
        }
        let Some(own) = self.net.advertised_addr() else {
            return InitOutcome::Failed(
                "this node has no node-to-node address others can dial (cluster.listen)".into(),
            );
        };
        let connected = self.net.connected_peers();
        let initial_voters: Vec<(NodeId, SocketAddr)> = answers
            .iter()
            .filter(|(_, gossip)| gossip.cluster_id.is_none() && gossip.decision.is_none())
            .filter_map(|(peer, _)| Some((*peer, *connected.get(peer)?)))
            .chain(std::iter::once((self.node_id, own)))
            .collect();
        let role = Role::new_cluster(initial_voters);
        let cluster_id = role.cluster_id;
        // The id first (another node's may have been adopted meanwhile), then the decision: a
        // node that hears the id asks for the decision in its next gossip.
        match self.net.set_cluster_id(cluster_id) {
            Ok(()) => {}
            Err(ClusterIdError::Known(id)) => return InitOutcome::AlreadyInitialized(id),
            Err(ClusterIdError::Static) => return InitOutcome::NotJoining,
        }
        let voters: Vec<NodeId> = role.initial_voters.iter().map(|&(id, _)| id).collect();
        self.decision.send_replace(Some(role));
        tracing::info!(%cluster_id, node = self.node_id, ?voters, "cluster initialized by the operator");
        let mut phase = self.phase.subscribe();
        let settled = tokio::time::timeout(
            INIT_WAIT,
            phase.wait_for(|phase| matches!(phase, Phase::Running(_) | Phase::Failed(_))),
        )
        .await;
        let running = match settled {
            Ok(Ok(phase)) => match &*phase {
                Phase::Failed(reason) => return InitOutcome::Failed(reason.clone()),
                _ => true,
            },
            Ok(Err(_)) | Err(_) => false,
        };
        InitOutcome::Initialized {
            cluster_id,
            voters,
            running,
        }
    }

    /// What this node tells in a gossip exchange.
    fn gossip(&self) -> Gossip {
        let mut nodes: Vec<(NodeId, SocketAddr)> = self.net.connected_peers().into_iter().collect();
        if let Some(own) = self.net.advertised_addr() {
            nodes.push((self.node_id, own));
        }
        Gossip {
            cluster_id: self.net.cluster_id(),
            nodes,
            decision: self.decision.borrow().clone(),
        }
    }

    /// Takes what node `from` told: its cluster id (adopted when this node has none) and the
    /// nodes it knows (added to the transport's peers when unknown), unless it belongs to
    /// another cluster.
    fn learn(&self, from: NodeId, gossip: &Gossip) {
        if let Some(id) = gossip.cluster_id {
            match self.net.adopt_cluster_id(id, from) {
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(peer = from, cluster_id = %id, %err, "gossip from a node of another cluster ignored");
                    return;
                }
            }
        }
        for &(id, addr) in &gossip.nodes {
            if id != self.node_id && self.net.learn_peer(id, addr) {
                tracing::info!(peer = id, %addr, via = from, "node-to-node peer learned by gossip");
            }
        }
        if let Some(decision) = &gossip.decision {
            if Some(decision.cluster_id) == self.net.cluster_id() {
                self.decision.send_if_modified(|known| {
                    let new = known.is_none();
                    if new {
                        *known = Some(decision.clone());
                    }
                    new
                });
            }
        }
    }

    /// One exchange with every connected peer, at once; the answers.
    ///
    /// Cancel safety: safe to drop.
    async fn gossip_round(&self) -> Vec<(NodeId, Gossip)> {
        let ours = self.gossip();
        let mut body = BOOT_MARKER.to_vec();
        body.extend(
            postcard::to_stdvec(&BootRequest::Gossip(ours))
                .expect("serialising into memory cannot fail"),
        );
        let peers: Vec<NodeId> = self.net.connected_peers().into_keys().collect();
        let calls = peers.into_iter().map(|peer| {
            let call = self.net.call(peer, body.clone(), GOSSIP_TIMEOUT);
            async move { (peer, call.await) }
        });
        let mut answers = Vec::new();
        for (peer, answer) in futures::future::join_all(calls).await {
            let answer = answer
                .map_err(|e| e.to_string())
                .and_then(|bytes| postcard::from_bytes(&bytes).map_err(|e| e.to_string()));
            match answer {
                Ok(BootAnswer::Gossip(gossip)) => {
                    self.learn(peer, &gossip);
                    answers.push((peer, gossip));
                }
                Ok(BootAnswer::Refused(reason)) => {
                    tracing::debug!(peer, %reason, "gossip refused")
                }
                Err(reason) => tracing::debug!(peer, %reason, "no gossip answer"),
            }
        }
        answers
    }

    /// Gossips for as long as the node runs (module docs); abort the task to stop it.
    ///
    /// Cancel safety: safe to abort at any await.
    pub async fn gossip_loop(self: Arc<Self>) {
        loop {
            // Fast until the node runs: one that adopted the id in a hello still needs the
            // decision from the gossip.
            let interval = match self.phase() {
                Phase::Running(_) | Phase::Failed(_) => GOSSIP_MEMBER,
                Phase::Waiting | Phase::Starting(_) => GOSSIP_WAITING,
            };
            tokio::time::sleep(interval).await;
            self.gossip_round().await;
        }
    }

    /// Answers a bootstrap request (after [`BOOT_MARKER`]) from node `from`.
    pub(crate) fn answer(&self, from: NodeId, request: &[u8]) -> BoxFuture<'static, Vec<u8>> {
        let answer = match postcard::from_bytes::<BootRequest>(request) {
            Ok(BootRequest::Gossip(gossip)) => {
                self.learn(from, &gossip);
                BootAnswer::Gossip(self.gossip())
            }
            Err(e) => BootAnswer::Refused(format!(
                "node {from} sent a bootstrap request this node cannot read: {e}"
            )),
        };
        let bytes = postcard::to_stdvec(&answer).expect("serialising into memory cannot fail");
        Box::pin(async move { bytes })
    }
}

/// The answer of `POST /admin/cluster/init` on a node with `bootstrap` (`None`: a node that
/// does not use `cluster.join`).
///
/// Cancel safety: safe to drop (see [`Bootstrap::init`]).
pub async fn init_response(bootstrap: Option<&Bootstrap>) -> Response {
    let outcome = match bootstrap {
        Some(bootstrap) => bootstrap.init().await,
        None => InitOutcome::NotJoining,
    };
    let text = |status, reason: String| (status, format!("{reason}\n")).into_response();
    match outcome {
        InitOutcome::Initialized {
            cluster_id,
            voters,
            running,
        } => {
            let answer = InitAnswer {
                cluster_id: cluster_id.to_string(),
                node_id: bootstrap.map_or(0, |b| b.node_id),
                voters,
                running,
            };
            match serde_json::to_vec_pretty(&answer) {
                Ok(body) => (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response(),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        InitOutcome::AlreadyInitialized(id) => text(
            StatusCode::CONFLICT,
            format!("cluster already initialized (cluster id {id})"),
        ),
        InitOutcome::NotJoining => text(
            StatusCode::CONFLICT,
            "this node does not form its cluster with cluster.join (mimid start --join): it \
             runs alone or with the static cluster.peers, and there is nothing to initialize"
                .into(),
        ),
        InitOutcome::Failed(reason) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the cluster id was taken but the node failed to start: {reason}"),
        ),
    }
}

/// The routes a waiting node serves besides the probes (`crate::admin::router` puts them
/// behind the admin token): `POST` [`INIT_PATH`].
pub fn routes(bootstrap: Arc<Bootstrap>) -> Router {
    Router::new()
        .route(INIT_PATH, post(init))
        .with_state(bootstrap)
}

async fn init(State(bootstrap): State<Arc<Bootstrap>>) -> Response {
    init_response(Some(&bootstrap)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_is_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_role(dir.path()).unwrap(), None);
        assert!(!has_raft_state(dir.path()));
        let role = Role {
            cluster_id: ClusterId::from_bytes([0x5a; 16]),
            initial_voters: vec![
                (1, "127.0.0.1:7001".parse().unwrap()),
                (3, "[fd00::3]:7003".parse().unwrap()),
            ],
        };
        assert!(role.is_initial_voter(3) && !role.is_initial_voter(2));
        store_role(dir.path(), &role).unwrap();
        assert_eq!(load_role(dir.path()).unwrap(), Some(role.clone()));
        let text = std::fs::read_to_string(dir.path().join(CLUSTER_ID_FILE)).unwrap();
        assert!(text.contains(&role.cluster_id.to_string()), "{text}");
        // The same again is a no-op; another id is refused and leaves the file alone.
        store_role(dir.path(), &role).unwrap();
        let other = Role {
            cluster_id: ClusterId::from_bytes([1; 16]),
            ..role.clone()
        };
        let refused = store_role(dir.path(), &other).unwrap_err();
        assert!(refused.to_string().contains("names cluster"), "{refused}");
        assert_eq!(load_role(dir.path()).unwrap(), Some(role));
        assert!(!dir.path().join(format!("{CLUSTER_ID_FILE}.tmp")).exists());
    }

    /// A restored node seeds a new cluster alone, at an address the others can dial; each
    /// restore draws another cluster id.
    #[test]
    fn a_restored_seed_is_the_only_initial_voter_of_a_new_cluster() {
        let addr: SocketAddr = "10.0.0.1:7443".parse().unwrap();
        let seed = Role::restored_seed(4, addr).unwrap();
        assert_eq!(seed.initial_voters, vec![(4, addr)]);
        assert!(seed.is_initial_voter(4) && !seed.is_initial_voter(1));
        assert_ne!(
            Role::restored_seed(4, addr).unwrap().cluster_id,
            seed.cluster_id
        );
        for listen in ["0.0.0.0:7443", "[::]:7443", "10.0.0.1:0"] {
            let err = Role::restored_seed(4, listen.parse().unwrap()).unwrap_err();
            assert!(
                err.to_string().contains("cluster.listen"),
                "{listen}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        store_role(dir.path(), &seed).unwrap();
        assert_eq!(load_role(dir.path()).unwrap(), Some(seed));
    }

    #[test]
    fn a_damaged_role_file_is_an_error_not_a_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let id = "5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a";
        let voter = "[[initial_voters]]\nid = 1\naddr = \"127.0.0.1:7001\"\n";
        let good = format!("cluster_id = \"{id}\"\n{voter}");
        std::fs::write(dir.path().join(CLUSTER_ID_FILE), &good).unwrap();
        assert!(load_role(dir.path()).unwrap().is_some());
        for bad in [
            format!("cluster_id = \"nope\"\n{voter}"),
            voter.to_owned(),
            format!("cluster_id = \"{id}\"\ninitial_voters = []\n"),
            format!("cluster_id = \"{id}\"\n[[initial_voters]]\nid = 1\naddr = \"x\"\n"),
            format!("x = 1\n{good}"),
        ] {
            std::fs::write(dir.path().join(CLUSTER_ID_FILE), &bad).unwrap();
            assert!(load_role(dir.path()).is_err(), "{bad}");
        }
    }

    #[test]
    fn gossip_round_trips_and_unreadable_requests_are_refused() {
        let gossip = Gossip {
            cluster_id: Some(ClusterId::from_bytes([3; 16])),
            nodes: vec![(2, "127.0.0.1:7002".parse().unwrap())],
            decision: Some(Role {
                cluster_id: ClusterId::from_bytes([3; 16]),
                initial_voters: vec![(2, "127.0.0.1:7002".parse().unwrap())],
            }),
        };
        let bytes = postcard::to_stdvec(&BootRequest::Gossip(gossip.clone())).unwrap();
        let BootRequest::Gossip(back) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, gossip);
        assert!(postcard::from_bytes::<BootRequest>(&[9, 9]).is_err());
    }
}
