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
//! The provider keys (hub signing key, franking keys; [`crate::key_file`]) are replicated
//! state and settled once the hub is up: the HTTP/3 listener is bound at once, but the client
//! and federation APIs are served only when the keys are known, and `/readyz` answers 503
//! until then. A node whose replica holds them, or a node running alone (it leads every shard
//! after its own election; at most [`KEYS_WAIT_ALONE`]), settles them before [`start`]
//! returns; a node of a cluster without them waits for their shard's quorum in the background,
//! since its peers may start only after it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mimid_actors::actor::ActorLimits;
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
    ClusterNet, ClusterSink, ForwardedProposals, NetRouter, NetSender, NetSettings,
};
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
            ..
        } = self;
        for task in tasks {
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
    cluster.shards = c.shards;
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
    cluster
}

/// Starts a node from a validated configuration. Without configured TLS files the node uses
/// development certificates under `data_dir/certs`, generated on first start.
pub async fn start(config: Config) -> anyhow::Result<Node> {
    start_inner(config, None).await
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
    let tls_files = match config.tls.files()? {
        Some(files) => files,
        None => ensure_dev_certs(&dev_cert_dir(&config.data_dir), SystemTime::now())
            .context("generating development certificates")?,
    };
    let material = TlsMaterial::load(&tls_files).context("loading TLS material")?;
    let tls = server_config(&material).context("building the TLS configuration")?;
    // Read before anything starts: a missing or malformed token file, or none on a public
    // admin_listen, stops the start (issue 6, crate::admin::auth).
    let admin_auth = Arc::new(AdminAuth::from_config(&config)?);

    let metrics = Arc::new(Metrics::new());
    let peers = Arc::new(
        Peers::new(
            &config.domain,
            &material,
            &config.federation,
            metrics.clone(),
        )
        .context("building the client for peer providers")?,
    );

    let shards = Shards::new(config.cluster.shards);
    // The provider keys as this node's files hold them (MIMI.md §5.3.1, §5.5), generated on
    // first start: what it offers when the provider has none installed (crate::key_file).
    let local_keys =
        local_provider_keys(&config.data_dir).context("loading the provider's key files")?;
    let (cluster, net) = start_replication(&config, &shards, &metrics).await?;
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
    let ops = ClusterOps::new(
        OpsSettings::from_config(&config, net.as_ref().map(NetSender::local_addr)),
        cluster.handle(),
        &hub,
        net.clone(),
        metrics.clone(),
    );
    if let Some(rpc) = &ops_rpc {
        rpc.set_ops(&ops);
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
                    let serving = AbortOnDrop(serving);
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

    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin HTTP on {}", config.admin_listen))?;
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
    let backups = Arc::new(Backups::new(
        config.domain.clone(),
        snapshots,
        metrics.clone(),
    ));
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
        ));
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
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    async fn wait(mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
