//! Wiring of one node: the cluster (raft-rs groups in sled), the hub (room actors), the
//! HTTP/3 listener with the client API, the directory and the server-to-server API
//! ([`crate::federation::Routes`]), the client for peer providers ([`Peers`]), and the admin
//! HTTP listener.
//!
//! Start order: replication first (it recovers every shard from sled before anything is
//! served), then the actors, then the listeners. `/readyz` answers 503 until every local
//! shard has a leader and has applied what was committed before the restart.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mimid_actors::actor::ActorLimits;
use mimid_actors::hub::{Clock, Hub, HubConfig};
use mimid_actors::room::fanout::FanoutLimits;
use mimid_actors::shard::{ShardMachine, Shards};
use mimid_cluster::{Cluster, ClusterConfig};
use tokio::task::JoinHandle;

use crate::admin::{serve_admin, AdminState};
use crate::api::ClientApi;
use crate::backup::{Backups, SnapshotSource};
use crate::certs::ensure_dev_certs;
use crate::config::{dev_cert_dir, Config};
use crate::federation::{DirectoryDocument, FederationApi, FederationService, Peers, Routes};
use crate::group_info::GroupInfoService;
use crate::h3::{H3Limits, H3Server, ShutdownHandle};
use crate::hub_key::HubKey;
use crate::metrics::{Limit, Metrics, RaftTotals};
use crate::peering::{MimiService, NotifySender};
use crate::rate_limit::RateLimits;
use crate::tls::{server_config, TlsMaterial};
use crate::wire::Limits;

/// How long shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often gauges fed from other layers are refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

pub struct Node {
    quic_addr: SocketAddr,
    admin_addr: SocketAddr,
    h3: ShutdownHandle,
    tasks: Vec<JoinHandle<()>>,
    hub: Arc<Hub>,
    peers: Arc<Peers>,
    cluster: Cluster<ShardMachine>,
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

    /// Stops accepting, lets requests in progress finish (bounded), then stops the actors and
    /// the replication driver (which flushes sled).
    pub async fn shutdown(self) {
        self.h3.shutdown(SHUTDOWN_GRACE).await;
        for task in &self.tasks {
            task.abort();
        }
        let Node { hub, cluster, .. } = self;
        tokio::task::spawn_blocking(move || {
            if let Ok(hub) = Arc::try_unwrap(hub) {
                hub.shutdown();
            }
            cluster.shutdown();
        })
        .await
        .ok();
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
    cluster.snapshot_interval = c.snapshot_interval;
    cluster.snapshot_max_age = Duration::from_secs(c.snapshot_max_age_secs);
    cluster.max_snapshots_per_turn = c.max_snapshots_per_turn;
    cluster.max_proposals_per_turn = c.max_proposals_per_turn;
    cluster.inbox_capacity = c.inbox_capacity;
    cluster.max_size_per_msg = c.max_size_per_msg;
    cluster.max_inflight_msgs = c.max_inflight_msgs;
    cluster.fsync = c.fsync;
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
    let cluster = {
        let cluster_config = cluster_config(&config);
        let shards = shards.clone();
        tokio::task::spawn_blocking(move || Cluster::start(cluster_config, |s| shards.machine(s)))
            .await
            .context("replication start-up task")?
            .context("starting replication")?
    };
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
                federation: Arc::new(NotifySender::new(peers.clone())),
                router: None,
            },
        )
        .context("starting the room actors")?,
    );

    // The hub's signing key (MIMI.md §5.5): generated on first start, the same after.
    let hub_key = Arc::new(
        HubKey::load_or_generate(&config.data_dir, &config.domain)
            .context("loading the hub signing key")?,
    );
    let group_info = Arc::new(GroupInfoService::new(hub.clone(), hub_key));
    // Per node and in memory (ARCHITECTURE.md "Rate limits"); shared by both APIs so a
    // target's claim limit counts local and remote requesters alike.
    let rate_limits = Arc::new(RateLimits::new(&config.limits.rate));
    let service = service.unwrap_or_else(|| {
        Arc::new(MimiService::new(
            hub.clone(),
            config.domain.clone(),
            peers.clone(),
            Limits {
                max_body_len: config.limits.max_body_bytes,
            },
            metrics.clone(),
            group_info.clone(),
            rate_limits.clone(),
        ))
    });
    let h3 = H3Server::bind(
        config.listen,
        tls,
        H3Limits::from_settings(&config.limits),
        metrics.clone(),
    )
    .context("binding the HTTP/3 listener")?;
    let quic_addr = h3.local_addr();
    let h3_shutdown = h3.shutdown_handle();
    let routes = Routes::new(
        ClientApi::new(
            hub.clone(),
            config.domain.clone(),
            &config.limits,
            metrics.clone(),
            peers.clone(),
            group_info,
            rate_limits.clone(),
        ),
        DirectoryDocument::new(&config.domain, metrics.clone()),
        FederationApi::new(config.domain.clone(), service, metrics.clone(), rate_limits),
    );
    let mut tasks = vec![h3.serve(Arc::new(routes))];

    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin HTTP on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let cluster_handle = cluster.handle();
    let ready = Arc::new(move || {
        if cluster_handle.is_ready() {
            Ok(())
        } else {
            Err("replication is starting: not every shard has a leader and has caught up".into())
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
    tasks.push(
        serve_admin(
            admin_listener,
            AdminState {
                ready,
                metrics: metrics.clone(),
                backups,
            },
        )
        .await,
    );
    tasks.push(tokio::spawn(refresh_metrics(
        metrics,
        hub.clone(),
        cluster.handle(),
    )));

    tracing::info!(%quic_addr, %admin_addr, domain = %config.domain, "node started");
    Ok(Node {
        quic_addr,
        admin_addr,
        h3: h3_shutdown,
        tasks,
        hub,
        peers,
        cluster,
    })
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
    }
}
