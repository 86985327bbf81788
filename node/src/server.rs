//! Wiring of one node: the cluster (raft-rs groups in sled), the hub (room actors), the
//! HTTP/3 listener with the client API, the directory and the server-to-server API
//! ([`crate::federation::Routes`]), the client for peer providers ([`Peers`]), and the admin
//! HTTP listener (its operator routes behind the admin token: [`crate::admin::auth`]). With
//! `cluster.listen` set, also the node-to-node transport ([`crate::cluster_net`]): this node
//! is then one of the provider's cluster (ARCHITECTURE.md "Cluster"), its shards replicated on
//! every node.
//! The cluster operations ([`crate::cluster_ops`]: node registry, placement driver, drain,
//! the `/admin/cluster/*` routes) run beside them.
//!
//! Start order: the node-to-node transport (bound and dialling, frames dropped until the
//! cluster exists), replication (it recovers every shard from sled before anything is served),
//! then the actors (which forward proposals for shards other nodes lead through the transport,
//! and answer those forwarded here), then the listeners. `/readyz` answers 503 until every
//! local shard has a leader and has applied what was committed before the restart, and again
//! whenever a shard loses its leader (a node cut off from a quorum).
//!
//! With `cluster.join` ([`start_joining`]; ops/runbooks/bootstrap.md) the start has two
//! phases. First the node-to-node transport (dialling the join addresses, gossiping,
//! [`crate::cluster_ops::bootstrap`]) and an admin listener serving the probes and `POST
//! /admin/cluster/init`; `/readyz` answers 503 "cluster not initialized" and no shard group
//! exists. Once the node knows its cluster id (it took `mimid init`, or it adopted the id from
//! another node) and has written it to its data directory, the rest starts as above on the same
//! transport and admin address: the node that took `init` bootstraps every shard alone, every
//! other node starts its groups empty (`join_existing`) and registers itself. A node whose data
//! directory names its cluster id already goes through the first phase at once.
//!
//! The provider keys (hub signing key, franking keys; [`crate::key_file`]) are replicated
//! state and settled once the hub is up: the HTTP/3 listener is bound at once, but the client
//! and federation APIs are served only when the keys are known, and `/readyz` answers 503
//! until then. A node whose replica holds them, or a node running alone (it leads every shard
//! after its own election; at most [`KEYS_WAIT_ALONE`]), settles them before [`start`]
//! returns; a node of a cluster without them waits for their shard's quorum in the background,
//! since its peers may start only after it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mimid_actors::actor::ActorLimits;
use mimid_actors::cluster_meta::ClusterId;
use mimid_actors::hub::{Clock, Hub, HubConfig, ProposalRouter};
use mimid_actors::provider_keys::ProviderKeys;
use mimid_actors::room::fanout::FanoutLimits;
use mimid_actors::shard::{ShardMachine, Shards};
use mimid_cluster::{Cluster, ClusterConfig, ClusterHandle, NodeId};
use tokio::task::JoinHandle;

use crate::admin::{serve_admin, AdminAuth, AdminState};
use crate::api::ClientApi;
use crate::backup::{Backups, SnapshotSource};
use crate::certs::ensure_dev_certs;
use crate::cluster_net::{
    ClusterNet, ClusterSink, ForwardedProposals, LinkDelays, NetRouter, NetSender, NetSettings,
};
use crate::cluster_ops::bootstrap::{has_raft_state, load_role, Bootstrap, Phase, Role};
use crate::cluster_ops::{ClusterOps, OpsRpc, OpsSettings};
use crate::config::{dev_cert_dir, Config};
use crate::federation::{DirectoryDocument, FederationApi, FederationService, Peers, Routes};
use crate::franking::{Franking, FrankingKeys, NotifyWhenKeysKnown};
use crate::group_info::GroupInfoService;
use crate::h3::{H3Limits, H3Server, ShutdownHandle};
use crate::hub_key::HubKey;
use crate::key_file::{local_provider_keys, settle_provider_keys, KeysStatus};
use crate::metrics::{Limit, Metrics, RaftTotals};
use crate::peering::{MimiService, NotifySender};
use crate::rate_limit::RateLimits;
use crate::tls::{server_config, TlsMaterial};
use crate::wire::Limits;

/// How long shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for node-to-node connections to close.
const NET_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How often gauges fed from other layers are refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// How long a node running alone waits for the shard of the provider keys to take its offer
/// before its start fails (its own election takes a few hundred milliseconds).
pub const KEYS_WAIT_ALONE: Duration = Duration::from_secs(30);

pub struct Node {
    quic_addr: SocketAddr,
    admin_addr: SocketAddr,
    h3: ShutdownHandle,
    tasks: Vec<JoinHandle<()>>,
    hub: Arc<Hub>,
    peers: Arc<Peers>,
    cluster: Cluster<ShardMachine>,
    /// The node-to-node transport; `None` for a single node.
    net: Option<NetSender>,
    /// The cluster operations (registry upkeep, placement, drain).
    ops: Arc<ClusterOps>,
    /// Tasks of a node started with `cluster.join` that ran before the rest (gossip, the
    /// waiting admin listener while its last requests finish).
    early: Vec<AbortOnDrop>,
}

impl Node {
    /// Bound UDP address of the HTTP/3 listener.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// Bound TCP address of admin HTTP.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The client for peer providers (server-to-server requests as this provider).
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The replication layer's counters (snapshots, applied entries, flushes, ...).
    pub fn cluster_metrics(&self) -> mimid_cluster::ClusterMetrics {
        self.cluster.handle().metrics()
    }

    /// The replication layer (shard leaders, readiness, read barriers).
    pub fn cluster_handle(&self) -> ClusterHandle<ShardMachine> {
        self.cluster.handle()
    }

    /// Bound UDP address of the node-to-node listener; `None` for a single node.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.net.as_ref().map(NetSender::local_addr)
    }

    /// The cluster id of a cluster formed with `cluster.join` (`None`: static or alone).
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.net.as_ref().and_then(NetSender::cluster_id)
    }

    /// The node-to-node peers the transport knows, at the addresses it dials.
    pub fn cluster_peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.net
            .as_ref()
            .map(NetSender::peer_addresses)
            .unwrap_or_default()
    }

    /// Adds the cluster's node `id` at `addr` (its `cluster.listen`), or moves it there. Nodes
    /// bound on port 0 learn each other's addresses this way.
    pub fn set_cluster_peer(&self, id: NodeId, addr: SocketAddr) -> anyhow::Result<()> {
        let net = self
            .net
            .as_ref()
            .context("this node runs alone: cluster.listen is not set")?;
        net.set_peer(id, addr)?;
        self.ops.note_peer(id, addr);
        Ok(())
    }

    /// Fault injection for tests (WAN delays, `tests/tests/wan_quic.rs`): from now on this
    /// node delays every frame and RPC it sends to the peers `delays` names
    /// ([`LinkDelays`]; empty: none). Not configurable in production.
    pub fn set_link_delays(&self, delays: LinkDelays) -> anyhow::Result<()> {
        let net = self
            .net
            .as_ref()
            .context("this node runs alone: cluster.listen is not set")?;
        net.set_link_delays(delays);
        Ok(())
    }

    /// The cluster operations (`mimid node …`, the placement driver).
    pub fn cluster_ops(&self) -> &Arc<ClusterOps> {
        &self.ops
    }

    /// Stops accepting, lets requests in progress finish (bounded), then stops the actors, the
    /// replication driver (which snapshots and flushes sled) and the node-to-node transport.
    pub async fn shutdown(self) {
        self.h3.shutdown(SHUTDOWN_GRACE).await;
        self.stop(NET_SHUTDOWN_GRACE).await;
    }

    /// Stops at once, as close to a crash as one process can get while the test process goes
    /// on (an in-process stand-in for `kill -9`): the node-to-node transport and the listeners
    /// close first, without waiting for anything in progress, then the actors and the
    /// replication driver stop. Unlike a crash, the driver still writes its final snapshot;
    /// what was acknowledged was durable long before either way.
    pub async fn kill(self) {
        if let Some(net) = &self.net {
            net.shutdown(Duration::ZERO).await;
        }
        self.h3.shutdown(Duration::ZERO).await;
        self.stop(Duration::ZERO).await;
    }

    async fn stop(self, net_grace: Duration) {
        let Node {
            hub,
            cluster,
            net,
            tasks,
            early,
            ..
        } = self;
        for task in tasks
            .into_iter()
            .chain(early.into_iter().map(AbortOnDrop::into_handle))
        {
            task.abort();
            // Dropped once cancelled, with the references to the hub it held.
            let _ = task.await;
        }
        tokio::task::spawn_blocking(move || {
            if let Ok(hub) = Arc::try_unwrap(hub) {
                hub.shutdown();
            }
            cluster.shutdown();
        })
        .await
        .ok();
        if let Some(net) = net {
            net.shutdown(net_grace).await;
        }
    }
}

fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// The replication layer's configuration from the node's (also used by `mimid restore`).
pub(crate) fn cluster_config(config: &Config) -> ClusterConfig {
    let c = &config.cluster;
    let mut cluster = ClusterConfig::new(config.node_id, &config.data_dir);
    cluster.shards = c.shard_count();
    cluster.tick_interval = Duration::from_millis(c.tick_ms);
    cluster.election_tick = c.election_tick;
    cluster.heartbeat_tick = c.heartbeat_tick;
    cluster.hibernate_after_ticks = c.hibernate_after_ticks;
    cluster.snapshot_interval = c.snapshot_interval;
    cluster.snapshot_max_age = Duration::from_secs(c.snapshot_max_age_secs);
    cluster.max_snapshots_per_turn = c.max_snapshots_per_turn;
    cluster.max_proposals_per_turn = c.max_proposals_per_turn;
    cluster.inbox_capacity = c.inbox_capacity;
    cluster.max_size_per_msg = c.max_size_per_msg;
    cluster.max_inflight_msgs = c.max_inflight_msgs;
    cluster.fsync = c.fsync;
    cluster.voters = c.initial_voters(config.node_id);
    cluster.join_existing = c.join_existing;
    if c.replicas == crate::config::Replicas::R {
        // Shards live on some nodes only: ready once shard 0 (on every node) and the shards
        // this node was given are caught up.
        cluster.required_shards = Some(vec![mimid_actors::cluster_meta::METADATA_SHARD]);
    }
    cluster
}

/// Starts a node from a validated configuration. Without configured TLS files the node uses
/// development certificates under `data_dir/certs`, generated on first start. A node with
/// `cluster.join` that is not initialized yet returns only once it is ([`start_joining`]
/// returns at once).
pub async fn start(config: Config) -> anyhow::Result<Node> {
    start_inner(config, None).await
}

/// A node started with `cluster.join` ([`start_joining`]): its transport and admin listener
/// run; the rest starts once it knows its cluster id.
pub struct Joining {
    admin_addr: SocketAddr,
    cluster_addr: SocketAddr,
    bootstrap: Arc<Bootstrap>,
    /// The rest of the start; it owns gossip and the waiting admin listener, so aborting it
    /// (dropping this) stops them.
    start: JoinHandle<anyhow::Result<Node>>,
}

impl Joining {
    /// Bound TCP address of the admin listener (the probes, `POST /admin/cluster/init`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Bound UDP address of the node-to-node listener.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// Where the bootstrap is.
    pub fn phase(&self) -> Phase {
        self.bootstrap.phase()
    }

    /// The cluster id, once known.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.bootstrap.net().cluster_id()
    }

    /// The node-to-node peers the transport knows (from the join addresses, from nodes that
    /// dialled this one, from gossip), at the addresses it dials.
    pub fn cluster_peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.bootstrap.net().peer_addresses()
    }

    /// The peers this node is connected to now: those an `init` here makes initial voters.
    pub fn connected_peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.bootstrap.net().connected_peers()
    }

    /// Waits until the node knows its cluster id and has started; the running node.
    pub async fn running(mut self) -> anyhow::Result<Node> {
        (&mut self.start)
            .await
            .context("the node's start-up task")?
    }

    /// Stops the node, started or not.
    pub async fn shutdown(mut self) {
        self.start.abort();
        if let Ok(Ok(node)) = (&mut self.start).await {
            node.shutdown().await;
        }
        self.bootstrap.net().shutdown(NET_SHUTDOWN_GRACE).await;
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        // Once the node runs, this aborts nothing: the node is the caller's.
        self.start.abort();
    }
}

/// Starts a node with `cluster.join` and returns once its transport dials the join addresses
/// and its admin listener serves `/readyz` (503 "cluster not initialized" until the cluster id
/// is known) and `POST /admin/cluster/init`; the rest of the start follows in the background
/// once the node knows its cluster id ([`Joining::running`]). Fails for a configuration
/// without `cluster.join`, and for a data directory with Raft state but no cluster id (a node
/// of a statically configured cluster).
pub async fn start_joining(config: Config) -> anyhow::Result<Joining> {
    start_joining_with(config, None).await
}

/// [`start`] with `service` answering the server-to-server endpoints (MIMI protocol-06 §5)
/// once the transport has authenticated the peer; tests pass a recording service.
pub async fn start_with_service(
    config: Config,
    service: Arc<dyn FederationService>,
) -> anyhow::Result<Node> {
    start_inner(config, Some(service)).await
}

/// Starts a node; without `service`, the server-to-server endpoints are MIMI's
/// ([`MimiService`]).
async fn start_inner(
    config: Config,
    service: Option<Arc<dyn FederationService>>,
) -> anyhow::Result<Node> {
    if config.cluster.uses_join() {
        return start_joining_with(config, service).await?.running().await;
    }
    start_node(config, service, None).await
}

/// What the first phase of a node with `cluster.join` hands to the rest of its start.
struct Joined {
    metrics: Arc<Metrics>,
    auth: Arc<AdminAuth>,
    net: NetSender,
    sink: Arc<ClusterSink<ShardMachine>>,
    rpc: Arc<OpsRpc>,
    bootstrap: Arc<Bootstrap>,
    role: Role,
    /// The admin socket (a second handle of the one the waiting listener serves).
    admin: std::net::TcpListener,
    /// Stops the waiting admin listener gracefully once the node's own serves.
    stop_waiting_admin: Option<tokio::sync::oneshot::Sender<()>>,
    early: Vec<AbortOnDrop>,
}

/// [`start_joining`] with `service` for the server-to-server endpoints.
async fn start_joining_with(
    config: Config,
    service: Option<Arc<dyn FederationService>>,
) -> anyhow::Result<Joining> {
    anyhow::ensure!(
        config.cluster.uses_join(),
        "start_joining needs cluster.join in the configuration"
    );
    let role = load_role(&config.data_dir)?;
    if role.is_none() && has_raft_state(&config.data_dir) {
        anyhow::bail!(
            "{} holds Raft state but no cluster id ({}): it belongs to a node that was not \
             started with cluster.join (a statically configured cluster, or a restored backup); \
             start it with its former configuration, or use an empty data directory",
            config.data_dir.display(),
            crate::cluster_ops::bootstrap::CLUSTER_ID_FILE
        );
    }
    let auth = Arc::new(AdminAuth::from_config(&config)?);
    let metrics = Arc::new(Metrics::new());
    let mut settings =
        NetSettings::from_config(&config).context("cluster.join needs cluster.listen")?;
    if let Some(join) = settings.join.as_mut() {
        join.cluster_id = role.as_ref().map(|role| role.cluster_id);
    }
    let files = config
        .cluster
        .tls
        .files()
        .context("[cluster.tls] cert, key and ca are required with cluster.listen")?;
    let material = TlsMaterial::load(&files).context("loading the node-to-node TLS material")?;
    let bound = ClusterNet::bind(settings, &material, metrics.clone())
        .context("binding the node-to-node listener")?;
    let cluster_addr = bound.local_addr();
    let sink = ClusterSink::<ShardMachine>::new();
    let rpc = OpsRpc::new(ForwardedProposals::new());
    let net = bound
        .start(BTreeMap::new(), sink.clone(), rpc.clone())
        .context("starting the node-to-node transport")?;
    let waiting = role.is_none();
    let bootstrap = Bootstrap::new(config.node_id, &config.data_dir, net.clone(), role);
    rpc.set_bootstrap(&bootstrap);
    let mut early = vec![AbortOnDrop::new(tokio::spawn(
        bootstrap.clone().gossip_loop(),
    ))];

    let admin = std::net::TcpListener::bind(config.admin_listen)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .with_context(|| format!("binding admin HTTP on {}", config.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    let mut stop_waiting_admin = None;
    if waiting {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::from_std(admin.try_clone()?)?;
        let state = AdminState {
            ready: {
                let bootstrap = bootstrap.clone();
                Arc::new(move || bootstrap.readiness())
            },
            metrics: metrics.clone(),
            backups: Arc::new(Backups::new(
                config.domain.clone(),
                Arc::new(|_| Err(mimid_cluster::SnapshotAllError::NotReady { shard: 0 })),
                metrics.clone(),
            )),
            hub: None,
            auth: auth.clone(),
        };
        let app = crate::admin::router(
            state,
            crate::cluster_ops::bootstrap::routes(bootstrap.clone()),
        )
        .into_make_service_with_connect_info::<SocketAddr>();
        early.push(AbortOnDrop::new(tokio::spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serving.await {
                tracing::error!(%err, "admin listener failed");
            }
        })));
        stop_waiting_admin = Some(stop);
        tracing::info!(
            %admin_addr, %cluster_addr, node_id = config.node_id,
            join = ?config.cluster.join,
            "node waiting for its cluster: run `mimid init` against one node"
        );
    }

    let start = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move {
            let role = match bootstrap.role().await {
                Ok(role) => role,
                Err(e) => {
                    bootstrap.started(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let joined = Joined {
                metrics,
                auth,
                net,
                sink,
                rpc,
                bootstrap: bootstrap.clone(),
                role,
                admin,
                stop_waiting_admin,
                early,
            };
            let started = start_node(config, service, Some(joined)).await;
            bootstrap.started(started.as_ref().map(drop).map_err(|e| format!("{e:#}")));
            started
        }
    });
    Ok(Joining {
        admin_addr,
        cluster_addr,
        bootstrap,
        start,
    })
}

/// Starts the node's replication, actors, listeners and operations; with `joined`, on the
/// transport and admin socket of a node with `cluster.join` in the role it took.
async fn start_node(
    config: Config,
    service: Option<Arc<dyn FederationService>>,
    mut joined: Option<Joined>,
) -> anyhow::Result<Node> {
    let tls_files = match config.tls.files()? {
        Some(files) => files,
        None => ensure_dev_certs(&dev_cert_dir(&config.data_dir), SystemTime::now())
            .context("generating development certificates")?,
    };
    let material = TlsMaterial::load(&tls_files).context("loading TLS material")?;
    let tls = server_config(&material).context("building the TLS configuration")?;
    // Read before anything starts: a missing or malformed token file, or none on a public
    // admin_listen, stops the start (issue 6, crate::admin::auth).
    let admin_auth = match &joined {
        Some(joined) => joined.auth.clone(),
        None => Arc::new(AdminAuth::from_config(&config)?),
    };

    let metrics = match &joined {
        Some(joined) => joined.metrics.clone(),
        None => Arc::new(Metrics::new()),
    };
    let peers = Arc::new(
        Peers::new(
            &config.domain,
            &material,
            &config.federation,
            metrics.clone(),
        )
        .context("building the client for peer providers")?,
    );

    let layout = config
        .cluster
        .layout()
        .map_err(|reason| anyhow::anyhow!("cluster.residency: {reason}"))?;
    let shards = Shards::with_layout(layout);
    // The provider keys as this node's files hold them (MIMI.md §5.3.1, §5.5), generated on
    // first start: what it offers when the provider has none installed (crate::key_file).
    let local_keys =
        local_provider_keys(&config.data_dir).context("loading the provider's key files")?;
    let (cluster, net) = match &joined {
        Some(joined) => start_joined_replication(&config, &shards, joined).await?,
        None => start_replication(&config, &shards, &metrics).await?,
    };
    let router = net.as_ref().map(|(net, _)| {
        let router = NetRouter::new(metrics.clone());
        router.set(net.clone());
        router as Arc<dyn ProposalRouter>
    });
    // Notifies carry Franks: they wait for the provider keys.
    let notify = Arc::new(NotifyWhenKeysKnown::default());
    let hub = Arc::new(
        Hub::start(
            cluster.handle(),
            shards,
            system_clock(),
            HubConfig {
                limits: ActorLimits {
                    room_mailbox: config.limits.room_mailbox,
                    stream_queue: config.limits.stream_queue,
                    idle_room: Duration::from_secs(config.limits.idle_room_secs),
                    fanout: FanoutLimits {
                        batch_items: config.federation.notify_batch_items,
                        retry_initial_ms: config.federation.retry_initial_ms,
                        retry_max_ms: config.federation.retry_max_ms,
                    },
                },
                arbiters: std::thread::available_parallelism().map_or(1, |n| n.get()),
                housekeeping: Duration::from_secs(config.limits.housekeeping_secs),
                log_retention: Duration::from_secs(config.limits.log_retention_secs),
                federation: notify.clone(),
                router,
            },
        )
        .context("starting the room actors")?,
    );
    let (net, ops_rpc) = match net {
        Some((net, rpc)) => {
            rpc.set(&hub);
            (Some(net), Some(rpc))
        }
        None => (None, None),
    };
    let mut ops_settings =
        OpsSettings::from_config(&config, net.as_ref().map(NetSender::local_addr));
    if let Some(joined) = &joined {
        ops_settings = ops_settings.joined(config.node_id, &joined.role);
    }
    let ops = ClusterOps::new(
        ops_settings,
        cluster.handle(),
        &hub,
        net.clone(),
        metrics.clone(),
    );
    if let Some(rpc) = &ops_rpc {
        rpc.set_ops(&ops);
    }
    if let Some(joined) = &joined {
        ops.set_bootstrap(joined.bootstrap.clone());
    }

    // Per node and in memory (ARCHITECTURE.md "Rate limits"); shared by both APIs so a
    // target's claim limit counts local and remote requesters alike.
    let rate_limits = Arc::new(RateLimits::new(&config.limits.rate));
    let h3 = H3Server::bind(
        config.listen,
        tls,
        H3Limits::from_settings(&config.limits),
        metrics.clone(),
    )
    .context("binding the HTTP/3 listener")?;
    let quic_addr = h3.local_addr();
    let h3_shutdown = h3.shutdown_handle();
    let api = Api {
        config: config.clone(),
        hub: hub.clone(),
        peers: peers.clone(),
        metrics: metrics.clone(),
        rate_limits,
        service,
        notify,
        rpc: ops_rpc.clone(),
    };
    let keys_status = KeysStatus::default();
    let serving = if hub.provider_keys().is_some() || net.is_none() {
        let give_up = tokio::time::Instant::now() + KEYS_WAIT_ALONE;
        let keys = settle_provider_keys(&hub, &local_keys, &keys_status, Some(give_up))
            .await
            .context("settling the provider keys")?;
        let serving = api.serve(h3, &keys)?;
        keys_status.known();
        serving
    } else {
        let status = keys_status.clone();
        tokio::spawn(async move {
            let keys = match settle_provider_keys(&api.hub, &local_keys, &status, None).await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::error!(error = %e, "provider keys: not settled; the client and federation APIs are not served");
                    status.waiting(e.to_string());
                    return;
                }
            };
            match api.serve(h3, &keys) {
                Ok(serving) => {
                    status.known();
                    let serving = AbortOnDrop::new(serving);
                    let _ = serving.wait().await;
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    tracing::error!(error = %reason, "provider keys: unusable; the client and federation APIs are not served");
                    status.waiting(reason);
                }
            }
        })
    };
    let mut tasks = vec![serving];

    let admin_listener = match joined.as_mut() {
        // The socket the waiting listener serves too, until it stops below.
        Some(joined) => tokio::net::TcpListener::from_std(joined.admin.try_clone()?)?,
        None => tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin HTTP on {}", config.admin_listen))?,
    };
    let admin_addr = admin_listener.local_addr()?;
    let cluster_handle = cluster.handle();
    let readiness_ops = ops.clone();
    let ready = Arc::new(move || {
        readiness_ops.readiness()?;
        keys_status.check()?;
        if cluster_handle.is_ready() {
            Ok(())
        } else {
            Err(
                "replication is not ready: not every shard has a leader and has caught up \
                 (the node is starting, or cut off from a quorum of its cluster)"
                    .into(),
            )
        }
    });
    let snapshots: SnapshotSource = {
        let cluster = cluster.handle();
        Arc::new(move |done| cluster.snapshot_all(done))
    };
    let backups = Arc::new(
        Backups::new(config.domain.clone(), snapshots, metrics.clone()).with_hub(hub.clone()),
    );
    let admin_token = admin_auth.requires_token();
    tasks.push(
        serve_admin(
            admin_listener,
            AdminState {
                ready,
                metrics: metrics.clone(),
                backups,
                hub: Some(hub.clone()),
                auth: admin_auth,
            },
            crate::cluster_ops::routes(ops.clone()),
        )
        .await,
    );
    let early = match joined {
        Some(mut joined) => {
            if let Some(stop) = joined.stop_waiting_admin.take() {
                // In-flight requests (an `init` waiting for this start) finish first.
                let _ = stop.send(());
            }
            joined.early
        }
        None => Vec::new(),
    };
    tasks.extend(ops.spawn());
    tasks.push(tokio::spawn(refresh_metrics(
        metrics,
        hub.clone(),
        cluster.handle(),
    )));

    let cluster_addr = net.as_ref().map(NetSender::local_addr);
    tracing::info!(
        %quic_addr, %admin_addr, ?cluster_addr, node_id = config.node_id,
        domain = %config.domain, admin_token, "node started"
    );
    Ok(Node {
        quic_addr,
        admin_addr,
        h3: h3_shutdown,
        tasks,
        hub,
        peers,
        cluster,
        net,
        ops,
        early,
    })
}

/// What the client and federation APIs need besides the provider keys.
struct Api {
    config: Config,
    hub: Arc<Hub>,
    peers: Arc<Peers>,
    metrics: Arc<Metrics>,
    rate_limits: Arc<RateLimits>,
    /// The server-to-server service; `None`: MIMI's ([`MimiService`]).
    service: Option<Arc<dyn FederationService>>,
    notify: Arc<NotifyWhenKeysKnown>,
    /// The node-to-node RPC handler, which franks the items other nodes pull from here.
    rpc: Option<Arc<OpsRpc>>,
}

impl Api {
    /// Builds the hub key and the franking keys from the provider's `keys`, lets the waiting
    /// notifies go, and serves the client API, the directory document and the
    /// server-to-server API on `h3`.
    fn serve(&self, h3: H3Server, keys: &ProviderKeys) -> anyhow::Result<JoinHandle<()>> {
        let config = &self.config;
        let hub_key = HubKey::from_replicated(&config.domain, keys)
            .context("the provider's hub signing key")?;
        let franking = Arc::new(Franking::new(
            FrankingKeys::from_replicated(&config.domain, keys)
                .context("the provider's franking keys")?,
            self.hub.shards().clone(),
            config.limits.frank_cache_entries,
            self.metrics.clone(),
        ));
        if let Some(rpc) = &self.rpc {
            rpc.set_franking(&franking);
        }
        self.notify.set(Arc::new(NotifySender::new(
            self.peers.clone(),
            franking.clone(),
        )));
        let group_info = Arc::new(GroupInfoService::new(self.hub.clone(), Arc::new(hub_key)));
        let service = self.service.clone().unwrap_or_else(|| {
            Arc::new(MimiService::new(
                self.hub.clone(),
                config.domain.clone(),
                self.peers.clone(),
                Limits {
                    max_body_len: config.limits.max_body_bytes,
                },
                self.metrics.clone(),
                group_info.clone(),
                self.rate_limits.clone(),
                franking.clone(),
            ))
        });
        let routes = Routes::new(
            ClientApi::new(
                self.hub.clone(),
                config.domain.clone(),
                &config.limits,
                self.metrics.clone(),
                self.peers.clone(),
                group_info,
                self.rate_limits.clone(),
                franking,
            ),
            DirectoryDocument::new(&config.domain, self.metrics.clone()),
            FederationApi::new(
                config.domain.clone(),
                service,
                self.metrics.clone(),
                self.rate_limits.clone(),
            ),
        );
        Ok(h3.serve(Arc::new(routes)))
    }
}

/// A task aborted when this is dropped (the listener a background start-up task serves).
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    fn new(task: JoinHandle<()>) -> Self {
        AbortOnDrop(Some(task))
    }

    async fn wait(mut self) -> Result<(), tokio::task::JoinError> {
        match self.0.as_mut() {
            Some(task) => task.await,
            None => Ok(()),
        }
    }

    /// The task's handle, no longer aborted on drop.
    fn into_handle(mut self) -> JoinHandle<()> {
        self.0.take().expect("taken only here")
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Starts the replication layer: a single node, or with `cluster.listen` one node of a
/// cluster, whose transport is bound and dialling the configured peers first (frames that
/// arrive before the cluster runs are dropped; Raft retransmits). Returns the transport with
/// the handler that will answer forwarded proposals and cluster operations once the hub and
/// the operations exist.
async fn start_replication(
    config: &Config,
    shards: &Shards,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Cluster<ShardMachine>, Option<(NetSender, Arc<OpsRpc>)>)> {
    let cluster_config = cluster_config(config);
    let factory = {
        let shards = shards.clone();
        move |shard| shards.machine(shard)
    };
    let Some(settings) = NetSettings::from_config(config) else {
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(cluster_config, factory))
            .await
            .context("replication start-up task")?
            .context("starting replication")?;
        return Ok((cluster, None));
    };
    let files = config
        .cluster
        .tls
        .files()
        .context("[cluster.tls] cert, key and ca are required with cluster.listen")?;
    let material = TlsMaterial::load(&files).context("loading the node-to-node TLS material")?;
    let peers = config
        .cluster
        .peer_addresses(config.node_id)
        .map_err(|reason| anyhow::anyhow!("cluster.peers: {reason}"))?;
    let bound = ClusterNet::bind(settings, &material, metrics.clone())
        .context("binding the node-to-node listener")?;
    let sink = ClusterSink::<ShardMachine>::new();
    let rpc = OpsRpc::new(ForwardedProposals::new());
    let net = bound
        .start(peers, sink.clone(), rpc.clone())
        .context("starting the node-to-node transport")?;
    let transport = Box::new(net.clone());
    let started = tokio::task::spawn_blocking(move || {
        Cluster::start_with_transport(cluster_config, factory, transport)
    })
    .await
    .context("replication start-up task")?;
    let cluster = match started {
        Ok(cluster) => cluster,
        Err(e) => {
            net.shutdown(Duration::ZERO).await;
            return Err(e).context("starting replication");
        }
    };
    let _ = sink.set(cluster.handle());
    Ok((cluster, Some((net, rpc))))
}

/// Starts the replication layer of a node with `cluster.join` on the transport of its first
/// phase: an initial voter bootstraps every shard it has no state for with the initial voters
/// `init` decided (each of them the same configuration); every other node starts them empty,
/// to be placed by the cluster.
async fn start_joined_replication(
    config: &Config,
    shards: &Shards,
    joined: &Joined,
) -> anyhow::Result<(Cluster<ShardMachine>, Option<(NetSender, Arc<OpsRpc>)>)> {
    let role = &joined.role;
    for &(id, addr) in &role.initial_voters {
        if id != config.node_id {
            joined.net.learn_peer(id, addr);
        }
    }
    let mut cluster_config = cluster_config(config);
    if role.is_initial_voter(config.node_id) {
        cluster_config.voters = role.initial_voters.iter().map(|&(id, _)| id).collect();
        cluster_config.join_existing = false;
    } else {
        cluster_config.voters = vec![config.node_id];
        cluster_config.join_existing = true;
    }
    let factory = {
        let shards = shards.clone();
        move |shard| shards.machine(shard)
    };
    let transport = Box::new(joined.net.clone());
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start_with_transport(cluster_config, factory, transport)
    })
    .await
    .context("replication start-up task")?
    .context("starting replication")?;
    let _ = joined.sink.set(cluster.handle());
    Ok((cluster, Some((joined.net.clone(), joined.rpc.clone()))))
}

/// Copies counters owned by other layers into the Prometheus registry.
async fn refresh_metrics(
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    cluster: mimid_cluster::ClusterHandle<ShardMachine>,
) {
    let mut tick = tokio::time::interval(METRICS_REFRESH);
    let mut stream_overflows = 0;
    let (mut delivered, mut failed) = (0, 0);
    loop {
        tick.tick().await;
        let actors = hub.metrics();
        let overflows = actors.stream_overflows.load(Ordering::Relaxed);
        metrics.count_limit_hits(Limit::StreamQueueFull, overflows - stream_overflows);
        stream_overflows = overflows;
        let (now_delivered, now_failed) = (
            actors.notifies_delivered.load(Ordering::Relaxed),
            actors.notifies_failed.load(Ordering::Relaxed),
        );
        metrics.count_notifies(now_delivered - delivered, now_failed - failed);
        metrics.set_rooms_behind(actors.rooms_behind.load(Ordering::Relaxed));
        (delivered, failed) = (now_delivered, now_failed);
        let raft = cluster.metrics();
        metrics.set_raft_totals(RaftTotals {
            proposals: raft.proposals,
            applied: raft.applied_entries,
            flushes: raft.flushes,
            proposals_dropped: raft.dropped_proposals,
            snapshots: raft.snapshots_taken,
            leader_changes: raft.leader_changes,
            busy_rejections: raft.busy_rejections,
            failed_shards: raft.failed_shards,
        });
        metrics.observe_replication(&raft, cluster.node_id(), &cluster.status());
        metrics.observe_actors(actors, std::time::SystemTime::now());
        metrics.set_rooms_active(hub.active_rooms() as u64);
        metrics.set_ready(cluster.is_ready());
        let node = cluster.node_id();
        let led = (0..cluster.shard_count())
            .filter(|&shard| cluster.leader(shard) == Some(node))
            .count();
        metrics.set_shards_led(led as u64);
        metrics.set_raft_hibernating_groups(cluster.hibernating_groups());
    }
}
