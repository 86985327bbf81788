//! The provider under test: a single-node provider started in this process, an already
//! running node given by address and CA, (cross-provider scenario) two providers started in
//! this process by `mimid_node::demo::start_providers`, as `mimid demo` runs them: a.example,
//! the hub of the bench's rooms, and b.example, the follower, on loopback with certificates from
//! a generated CA and each other's addresses set, or (cluster scenario) one provider as a
//! cluster of nodes in this process (`mimid_node::demo::start_cluster`: a data directory per
//! node, node certificates from a cluster CA, node-to-node listeners on loopback introduced to
//! each other after start, then given the time placement needs to trim every shard to the
//! layout `--replicas` asks for).
//!
//! The in-process node runs on its own tokio runtime with threads named `mimid-node-rt`,
//! separate from the generator's `bench-client` runtime, so the CPU report can tell server
//! work from client work (see `system`). Its data directory is a fresh temporary directory
//! (removed at the end), under `--data-dir` or the system's temporary directory; everything
//! else is the node's default configuration (fsync on, 16 shards) except loopback listeners
//! on ports chosen by the OS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use mimid_node::client::Endpoint;
use mimid_node::config::{dev_cert_dir, Config, Replicas};
use mimid_node::demo::{
    admin_get, start_cluster, start_providers, wait_ready, DataDir, LoopbackCluster,
    LoopbackProviders,
};
use mimid_node::server::Node;
use serde::Serialize;

use crate::cli::NodeArgs;

/// Name of the in-process node's runtime threads (tokio's default count: one per CPU, as
/// `mimid` itself runs).
const NODE_THREADS_NAME: &str = "mimid-node-rt";
/// The cross-provider scenario's providers: the hub of its rooms, and the follower.
pub const FEDERATION_DOMAINS: [&str; 2] = ["a.example", "b.example"];
/// The cluster scenario's provider.
pub const CLUSTER_DOMAIN: &str = "a.example";
/// Prefix of the in-process providers' temporary data directory.
const DATA_DIR_PREFIX: &str = "mimid-bench-";
/// Time allowed for placement to bring a new cluster's shards to their layout (it takes a
/// step at most every 200 ms: with 16 shards on 4 nodes, 16 removals and the leaderships'
/// balancing).
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval of the checks while waiting for placement.
const PLACEMENT_POLL: Duration = Duration::from_millis(100);

/// Where the clients connect and how the node is described in the report.
pub struct Provider {
    pub endpoint: Endpoint,
    /// Domain of the bench's ids (the provider's domain).
    pub domain: String,
    /// Admin HTTP address, for the Raft counters.
    pub admin: Option<SocketAddr>,
    /// The second provider (cross-provider scenario), whose users are added to the rooms of
    /// the first.
    pub follower: Option<Follower>,
    /// Every provider but the first, in order, when several run (the second is `follower`).
    pub followers: Vec<Follower>,
    /// The nodes of the provider's cluster (cluster scenario), in node id order; empty
    /// otherwise. `endpoint` is then the first node's.
    pub cluster: Vec<ClusterMember>,
    pub description: NodeDescription,
    in_process: Option<InProcess>,
}

/// The follower provider of the cross-provider scenario.
#[derive(Clone)]
pub struct Follower {
    pub endpoint: Endpoint,
    pub domain: String,
    pub admin: SocketAddr,
}

/// One node of the cluster scenario's provider.
pub struct ClusterMember {
    pub node_id: u64,
    pub endpoint: Endpoint,
    pub admin: SocketAddr,
}

struct InProcess {
    runtime: tokio::runtime::Runtime,
    nodes: Nodes,
}

enum Nodes {
    Single {
        node: Box<Node>,
        _dir: tempfile::TempDir,
    },
    Federation(LoopbackProviders),
    Cluster(LoopbackCluster),
}

/// The node's side of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum NodeDescription {
    InProcess {
        fsync: bool,
        shards: u64,
        tick_ms: u64,
        snapshot_interval: u64,
        max_proposals_per_turn: usize,
        /// Where the temporary data directory was created.
        data_dir_parent: String,
        /// The providers' domains when several run (cross-provider), the rooms' hub first.
        #[serde(skip_serializing_if = "Option::is_none")]
        providers: Option<Vec<String>>,
        /// Nodes of the provider's cluster (cluster scenario).
        #[serde(skip_serializing_if = "Option::is_none")]
        nodes: Option<u64>,
        /// `cluster.replicas` of those nodes (cluster scenario): `"r"` or `"all"`.
        #[serde(skip_serializing_if = "Option::is_none")]
        replicas: Option<Replicas>,
        /// `cluster.replication_factor` (R) of those nodes (cluster scenario).
        #[serde(skip_serializing_if = "Option::is_none")]
        replication_factor: Option<u32>,
        /// `cluster.split_shards` of those nodes, when any (cluster scenario, `--split-shards`):
        /// shards numbered after the `shards` hashed ones.
        #[serde(skip_serializing_if = "Option::is_none")]
        split_shards: Option<u64>,
    },
    Target {
        addr: SocketAddr,
        domain: String,
    },
}

/// Cumulative Raft counters of a node, read from its `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaftCounters {
    pub proposals: u64,
    pub applied: u64,
    pub flushes: u64,
}

impl Provider {
    /// Starts the in-process node or resolves the target. Must not be called from inside a
    /// tokio runtime: the in-process node gets its own.
    pub fn start(args: &NodeArgs) -> anyhow::Result<Provider> {
        match (&args.target, &args.ca) {
            (Some(addr), Some(ca)) => Provider::remote(*addr, ca, args),
            (None, None) => Provider::in_process(args),
            _ => bail!("--target and --ca go together"),
        }
    }

    fn remote(addr: SocketAddr, ca: &Path, args: &NodeArgs) -> anyhow::Result<Provider> {
        let roots = mimid_node::tls::read_roots(ca)
            .with_context(|| format!("reading CA certificates from {}", ca.display()))?;
        Ok(Provider {
            endpoint: Endpoint {
                addr,
                server_name: args.domain.clone(),
                roots: Arc::new(roots),
            },
            domain: args.domain.clone(),
            admin: args.admin,
            description: NodeDescription::Target {
                addr,
                domain: args.domain.clone(),
            },
            follower: None,
            followers: Vec::new(),
            cluster: Vec::new(),
            in_process: None,
        })
    }

    /// Starts the cross-provider scenario's two providers ([`FEDERATION_DOMAINS`]) in this
    /// process, each with the in-process node options of `args`. Must not be called from inside
    /// a tokio runtime.
    pub fn start_federation(args: &NodeArgs) -> anyhow::Result<Provider> {
        let provider = Provider::start_providers(args, &FEDERATION_DOMAINS)?;
        if provider.followers.len() != 1 {
            bail!(
                "start_providers started {} providers, not 2",
                provider.followers.len() + 1
            );
        }
        Ok(provider)
    }

    /// Starts one provider per domain of `domains` in this process
    /// (`mimid_node::demo::start_providers`), each with the in-process node options of `args`:
    /// the first is the provider the clients' rooms are hosted by, the others are
    /// `followers`. Must not be called from inside a tokio runtime.
    pub fn start_providers(args: &NodeArgs, domains: &[&str]) -> anyhow::Result<Provider> {
        if args.target.is_some() {
            bail!("this scenario runs its providers in this process: --target is not supported");
        }
        let parent = data_dir_parent(args);
        let config = node_config(args);
        let runtime = node_runtime()?;
        let providers = runtime
            .block_on(start_providers(
                domains,
                DataDir::Temporary {
                    parent: parent.clone(),
                    prefix: DATA_DIR_PREFIX,
                },
                &config,
            ))
            .context("starting the in-process providers")?;
        let Some((hub, others)) = providers.providers().split_first() else {
            bail!("start_providers started no provider");
        };
        let (endpoint, domain, admin) = (
            hub.endpoint(),
            hub.domain().to_owned(),
            hub.node().admin_addr(),
        );
        let followers: Vec<Follower> = others
            .iter()
            .map(|follower| Follower {
                endpoint: follower.endpoint(),
                domain: follower.domain().to_owned(),
                admin: follower.node().admin_addr(),
            })
            .collect();
        Ok(Provider {
            endpoint,
            domain,
            admin: Some(admin),
            follower: followers.first().cloned(),
            followers,
            cluster: Vec::new(),
            description: in_process_description(&config, &parent, Some(domains), None),
            in_process: Some(InProcess {
                runtime,
                nodes: Nodes::Federation(providers),
            }),
        })
    }

    /// Starts the cluster scenario's provider, [`CLUSTER_DOMAIN`], as `nodes` nodes in this
    /// process (`mimid_node::demo::start_cluster`), each with the in-process node options of
    /// `args`, `cluster.replicas = replicas` and `cluster.split_shards = split_shards`, and
    /// waits until placement has brought every shard to that layout ([`placement_settled`]).
    /// Must not be called from inside a tokio runtime.
    pub fn start_cluster(
        args: &NodeArgs,
        nodes: u64,
        replicas: Replicas,
        split_shards: u64,
    ) -> anyhow::Result<Provider> {
        if args.target.is_some() {
            bail!("cluster runs its nodes in this process: --target is not supported");
        }
        let parent = data_dir_parent(args);
        let mut config = node_config(args);
        config.cluster.replicas = replicas;
        config.cluster.split_shards = split_shards;
        let runtime = node_runtime()?;
        let cluster = runtime
            .block_on(start_cluster(
                CLUSTER_DOMAIN,
                nodes,
                DataDir::Temporary {
                    parent: parent.clone(),
                    prefix: DATA_DIR_PREFIX,
                },
                &config,
            ))
            .context("starting the in-process cluster")?;
        if let Err(error) = runtime.block_on(wait_for_placement(
            &cluster,
            replicas,
            config.cluster.replication_factor,
        )) {
            // The wait's failure is the error to report; a failed shutdown adds nothing to it.
            let _ = runtime.block_on(cluster.shutdown());
            runtime.shutdown_timeout(Duration::from_secs(5));
            return Err(error);
        }
        let members: Vec<ClusterMember> = cluster
            .nodes()
            .iter()
            .enumerate()
            .map(|(index, node)| ClusterMember {
                node_id: index as u64 + 1,
                endpoint: cluster.endpoint(index),
                admin: node.admin_addr(),
            })
            .collect();
        Ok(Provider {
            endpoint: cluster.endpoint(0),
            domain: cluster.domain().to_owned(),
            // Each node's counters are read through `cluster`.
            admin: None,
            follower: None,
            followers: Vec::new(),
            cluster: members,
            description: in_process_description(&config, &parent, None, Some(nodes)),
            in_process: Some(InProcess {
                runtime,
                nodes: Nodes::Cluster(cluster),
            }),
        })
    }

    fn in_process(args: &NodeArgs) -> anyhow::Result<Provider> {
        let parent = data_dir_parent(args);
        let dir = tempfile::Builder::new()
            .prefix(DATA_DIR_PREFIX)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a data directory under {}", parent.display()))?;
        let mut config = node_config(args);
        config.data_dir = dir.path().to_path_buf();
        config.validate().context("in-process node configuration")?;
        let runtime = node_runtime()?;
        let node = runtime
            .block_on(mimid_node::server::start(config.clone()))
            .context("starting the in-process node")?;
        runtime
            .block_on(wait_ready(node.admin_addr()))
            .context("waiting for the in-process node")?;
        let ca = dev_cert_dir(&config.data_dir).join(mimid_node::certs::CA_CERT_FILE);
        let roots = mimid_node::tls::read_roots(&ca).context("reading the dev CA")?;
        Ok(Provider {
            endpoint: Endpoint {
                addr: node.quic_addr(),
                server_name: config.domain.clone(),
                roots: Arc::new(roots),
            },
            domain: config.domain.clone(),
            admin: Some(node.admin_addr()),
            follower: None,
            followers: Vec::new(),
            cluster: Vec::new(),
            description: in_process_description(&config, &parent, None, None),
            in_process: Some(InProcess {
                runtime,
                nodes: Nodes::Single {
                    node: Box::new(node),
                    _dir: dir,
                },
            }),
        })
    }

    pub fn is_in_process(&self) -> bool {
        self.in_process.is_some()
    }

    /// Stops the in-process node or nodes (requests in progress finish, sled is flushed) and
    /// removes their data directory. Must not be called from inside a tokio runtime.
    pub fn shutdown(self) -> anyhow::Result<()> {
        let Some(InProcess { runtime, nodes }) = self.in_process else {
            return Ok(());
        };
        let result = match nodes {
            Nodes::Single { node, _dir } => {
                runtime.block_on(node.shutdown());
                Ok(())
            }
            Nodes::Federation(providers) => runtime.block_on(providers.shutdown()),
            Nodes::Cluster(cluster) => runtime.block_on(cluster.shutdown()),
        };
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    }
}

/// Where the in-process node's temporary data directory goes.
fn data_dir_parent(args: &NodeArgs) -> PathBuf {
    args.data_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// The in-process node's configuration: the node's defaults, loopback listeners on ports chosen
/// by the OS, and the in-process options of `args`. The data directory is the caller's.
pub fn node_config(args: &NodeArgs) -> Config {
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    config.cluster.fsync = !args.no_fsync;
    // A bench user sends far beyond what a person does (a room's one sender at thousands of
    // messages per second): the per-user and per-peer rate limits, sized for people and
    // peers, would measure themselves instead of the node.
    config.limits.rate.user_requests_per_sec = 1e9;
    config.limits.rate.user_burst = 1_000_000_000;
    config.limits.rate.peer_requests_per_sec = 1e9;
    config.limits.rate.peer_burst = 1_000_000_000;
    // commit-churn adds the same users again and again, large-room-fanout claims a thousand
    // KeyPackages in a minute: the hourly claim limits would refuse them.
    config.limits.rate.key_material_claims_per_pair_per_hour = 1_000_000_000;
    config.limits.rate.key_material_claims_per_target_per_hour = 1_000_000_000;
    if let Some(shards) = args.shards {
        config.cluster.shards = shards;
    }
    if let Some(interval) = args.snapshot_interval {
        config.cluster.snapshot_interval = interval;
    }
    config
}

/// The in-process nodes' own runtime, so their CPU is told apart from the generator's.
fn node_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(NODE_THREADS_NAME)
        .enable_all()
        .build()
        .context("building the node's runtime")
}

fn in_process_description(
    config: &Config,
    parent: &Path,
    providers: Option<&[&str]>,
    nodes: Option<u64>,
) -> NodeDescription {
    NodeDescription::InProcess {
        fsync: config.cluster.fsync,
        shards: config.cluster.shards,
        tick_ms: config.cluster.tick_ms,
        snapshot_interval: config.cluster.snapshot_interval,
        max_proposals_per_turn: config.cluster.max_proposals_per_turn,
        data_dir_parent: parent.display().to_string(),
        providers: providers.map(|domains| domains.iter().map(|d| d.to_string()).collect()),
        nodes,
        replicas: nodes.map(|_| config.cluster.replicas),
        replication_factor: nodes.map(|_| config.cluster.replication_factor),
        split_shards: (config.cluster.split_shards > 0).then_some(config.cluster.split_shards),
    }
}

/// One shard as one node's replica last saw it (from `ClusterHandle::status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ShardView {
    leader: Option<u64>,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// Polls the nodes of `cluster` until [`placement_settled`] holds, for at most
/// [`PLACEMENT_TIMEOUT`].
///
/// Cancel safety: safe; it only reads.
async fn wait_for_placement(
    cluster: &LoopbackCluster,
    replicas: Replicas,
    replication_factor: u32,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PLACEMENT_TIMEOUT;
    // Bounded by PLACEMENT_TIMEOUT.
    loop {
        let views: Vec<Vec<ShardView>> = cluster
            .nodes()
            .iter()
            .map(|node| {
                node.cluster_handle()
                    .status()
                    .into_iter()
                    .map(|status| ShardView {
                        leader: status.leader,
                        voters: status.voters,
                        learners: status.learners,
                    })
                    .collect()
            })
            .collect();
        if placement_settled(&views, replicas, replication_factor) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "placement did not bring every shard to {} voters{} within {PLACEMENT_TIMEOUT:?}",
                replication_factor.min(views.len() as u32),
                match replicas {
                    Replicas::R => " and no other replica",
                    Replicas::All => " and a learner on every other node",
                }
            );
        }
        tokio::time::sleep(PLACEMENT_POLL).await;
    }
}

/// Whether every shard is laid out as `cluster.replicas` wants (ARCHITECTURE.md "Cluster",
/// "Shards on R nodes"), from `views[i][shard]`, node `i + 1`'s replica of each shard: a node
/// that says it leads the shard has `min(R, nodes)` voters and, as learners, every other node
/// (shard 0, the metadata shard, always; every shard with `Replicas::All`) or none, and every
/// member's own replica has applied a configuration that includes it.
fn placement_settled(
    views: &[Vec<ShardView>],
    replicas: Replicas,
    replication_factor: u32,
) -> bool {
    let nodes = views.len();
    let Some(shards) = views.first().map(Vec::len) else {
        return false;
    };
    let voters = (replication_factor as usize).min(nodes);
    (0..shards).all(|shard| {
        let leading = views.iter().enumerate().find_map(|(index, node)| {
            let view = node.get(shard)?;
            (view.leader == Some(index as u64 + 1)).then_some(view)
        });
        let Some(leader) = leading else {
            return false;
        };
        let learners = if shard == 0 || replicas == Replicas::All {
            nodes - voters
        } else {
            0
        };
        leader.voters.len() == voters
            && leader.learners.len() == learners
            && leader.voters.iter().chain(&leader.learners).all(|&member| {
                let own = usize::try_from(member)
                    .ok()
                    .and_then(|id| views.get(id.checked_sub(1)?)?.get(shard));
                own.is_some_and(|view| {
                    view.voters.contains(&member) || view.learners.contains(&member)
                })
            })
    })
}

/// Reads the node's cumulative Raft counters from its `/metrics` (OpenMetrics text).
///
/// Cancel safety: safe; nothing is left behind but a closed TCP connection.
pub async fn raft_counters(admin: SocketAddr) -> anyhow::Result<RaftCounters> {
    let (status, body) = admin_get(admin, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let counter =
        |name: &str| metric_value(&body, name).with_context(|| format!("/metrics has no {name}"));
    Ok(RaftCounters {
        proposals: counter("mimid_raft_proposals_total")?,
        applied: counter("mimid_raft_applied_total")?,
        flushes: counter("mimid_raft_flushes_total")?,
    })
}

/// What the cluster scenario reads from one node's `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSample {
    pub raft: RaftCounters,
    /// Shards whose leader this node is (`mimid_raft_shards_led`).
    pub shards_led: u64,
    /// Proposals this node forwarded to another node leading their shard, by
    /// `scope/outcome` (`mimid_raft_forwarded_proposals_total{scope,outcome}`), cumulative.
    pub forwarded: BTreeMap<String, u64>,
    /// Remote reads and relay pulls this node sent, by `kind/outcome`
    /// (`mimid_remote_reads_total{kind,outcome}`), cumulative.
    pub remote_reads: BTreeMap<String, u64>,
    /// Client push streams open on this node.
    pub push_streams: u64,
    /// Room actors running on this node.
    pub rooms_active: u64,
    /// This node's room moves (shard splits), cumulative.
    pub moves: MoveCounters,
}

/// A node's room-move counters (ARCHITECTURE.md "Shard splits"), cumulative; zero on a node
/// without them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MoveCounters {
    /// Rooms this node moved (`mimid_rooms_moved_total`).
    pub moved: u64,
    /// Moves it started or resumed that failed (`mimid_room_moves_failed_total`).
    pub failed: u64,
    /// Room commands sent again because their room was moving or had moved
    /// (`mimid_room_move_retries_total`).
    pub retries: u64,
    /// Moves timed, freeze to release (`mimid_room_move_duration_seconds_count`).
    pub timed: u64,
    /// Their total time in microseconds (`mimid_room_move_duration_seconds_sum`).
    pub total_us: u64,
    /// The histogram's cumulative buckets: upper bound in microseconds (`u64::MAX` for
    /// `+Inf`) and moves at or below it, ascending.
    pub buckets: Vec<(u64, u64)>,
}

impl MoveCounters {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &MoveCounters) -> MoveCounters {
        MoveCounters {
            moved: self.moved.saturating_sub(before.moved),
            failed: self.failed.saturating_sub(before.failed),
            retries: self.retries.saturating_sub(before.retries),
            timed: self.timed.saturating_sub(before.timed),
            total_us: self.total_us.saturating_sub(before.total_us),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| {
                    let earlier = before
                        .buckets
                        .iter()
                        .find(|(other, _)| *other == le)
                        .map_or(0, |(_, n)| *n);
                    (le, n.saturating_sub(earlier))
                })
                .collect(),
        }
    }

    /// The sum of two nodes' counters (buckets by bound).
    pub fn plus(&self, other: &MoveCounters) -> MoveCounters {
        let mut buckets: BTreeMap<u64, u64> = self.buckets.iter().copied().collect();
        for &(le, n) in &other.buckets {
            *buckets.entry(le).or_insert(0) += n;
        }
        MoveCounters {
            moved: self.moved + other.moved,
            failed: self.failed + other.failed,
            retries: self.retries + other.retries,
            timed: self.timed + other.timed,
            total_us: self.total_us + other.total_us,
            buckets: buckets.into_iter().collect(),
        }
    }

    /// The bound of the lowest bucket holding every timed move: the slowest move took at most
    /// this long (microseconds); `None` without moves or when it is only in `+Inf`.
    pub fn slowest_at_most_us(&self) -> Option<u64> {
        if self.timed == 0 {
            return None;
        }
        self.buckets
            .iter()
            .find(|(_, n)| *n >= self.timed)
            .map(|(le, _)| *le)
            .filter(|le| *le != u64::MAX)
    }
}

/// Reads one cluster node's counters and gauges from its `/metrics`.
///
/// Cancel safety: safe; nothing is left behind but a closed TCP connection.
pub async fn node_sample(admin: SocketAddr) -> anyhow::Result<NodeSample> {
    let (status, body) = admin_get(admin, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    parse_node_sample(&body)
}

fn parse_node_sample(body: &str) -> anyhow::Result<NodeSample> {
    let value =
        |name: &str| metric_value(body, name).with_context(|| format!("/metrics has no {name}"));
    Ok(NodeSample {
        raft: RaftCounters {
            proposals: value("mimid_raft_proposals_total")?,
            applied: value("mimid_raft_applied_total")?,
            flushes: value("mimid_raft_flushes_total")?,
        },
        shards_led: value("mimid_raft_shards_led")?,
        forwarded: labelled_values(
            body,
            "mimid_raft_forwarded_proposals_total",
            &["scope", "outcome"],
        ),
        remote_reads: labelled_values(body, "mimid_remote_reads_total", &["kind", "outcome"]),
        push_streams: value("mimid_push_streams")?,
        rooms_active: value("mimid_rooms_active")?,
        moves: move_counters(body),
    })
}

/// The room-move counters in a node's `/metrics` (zero when missing).
fn move_counters(body: &str) -> MoveCounters {
    let counter = |name: &str| metric_value(body, name).unwrap_or(0);
    let micros = |seconds: f64| (seconds * 1e6).round() as u64;
    let bucket = "mimid_room_move_duration_seconds_bucket";
    let mut buckets: Vec<(u64, u64)> = body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(bucket)?.strip_prefix('{')?;
            let (set, value) = rest.split_once('}')?;
            let le = match label_value(set, "le")? {
                "+Inf" => u64::MAX,
                bound => micros(bound.parse::<f64>().ok()?),
            };
            Some((
                le,
                value.split_whitespace().next()?.parse::<f64>().ok()? as u64,
            ))
        })
        .collect();
    buckets.sort_unstable();
    MoveCounters {
        moved: counter("mimid_rooms_moved_total"),
        failed: counter("mimid_room_moves_failed_total"),
        retries: counter("mimid_room_move_retries_total"),
        timed: counter("mimid_room_move_duration_seconds_count"),
        total_us: metric_f64(body, "mimid_room_move_duration_seconds_sum").map_or(0, micros),
        buckets,
    }
}

/// The samples of `name` with the labels `labels`, by those labels' values joined with `/`,
/// in OpenMetrics text.
fn labelled_values(text: &str, name: &str, labels: &[&str]) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once('}')?;
            let values = labels
                .iter()
                .map(|label| label_value(set, label))
                .collect::<Option<Vec<&str>>>()?;
            let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((values.join("/"), value as u64))
        })
        .collect()
}

/// The value of `label` in a sample's label set `set` (`a="x",b="y"`).
fn label_value<'a>(set: &'a str, label: &str) -> Option<&'a str> {
    set.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == label).then(|| value.trim().trim_matches('"'))
    })
}

/// The value of an unlabelled sample `name` in OpenMetrics text.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<u64> {
    metric_f64(text, name).map(|v| v as u64)
}

/// [`metric_value`] unrounded (a histogram's `_sum` in seconds).
fn metric_f64(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse::<f64>().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_exact_name() {
        let text = "# TYPE mimid_raft_flushes counter\n\
                    mimid_raft_flushes_total 42\n\
                    mimid_raft_flushes_total_other 7\n\
                    mimid_raft_applied_total 1.5e3\n";
        assert_eq!(metric_value(text, "mimid_raft_flushes_total"), Some(42));
        assert_eq!(metric_value(text, "mimid_raft_applied_total"), Some(1500));
        assert_eq!(metric_value(text, "mimid_raft_proposals_total"), None);
    }

    #[test]
    fn a_cluster_nodes_sample_has_its_leaderships_and_forwarded_proposals() {
        let text = "mimid_raft_proposals_total 10\n\
                    mimid_raft_applied_total 30\n\
                    mimid_raft_flushes_total 3\n\
                    mimid_raft_shards_led 5\n\
                    mimid_push_streams 2\n\
                    mimid_rooms_active 7\n\
                    mimid_raft_forwarded_proposals_total{scope=\"room\",outcome=\"applied\"} 20\n\
                    mimid_raft_forwarded_proposals_total{scope=\"room\",outcome=\"not_leader\"} 1\n\
                    mimid_raft_forwarded_proposals_total{scope=\"direct\",outcome=\"applied\"} 3\n\
                    mimid_raft_forwarded_proposals_total_other{scope=\"room\",outcome=\"applied\"} 9\n\
                    mimid_remote_reads_total{kind=\"read\",outcome=\"answered\"} 4\n\
                    mimid_remote_reads_total{kind=\"pull\",outcome=\"answered\"} 6\n\
                    mimid_remote_reads_total{kind=\"pull\",outcome=\"failed\"} 0\n";
        let sample = parse_node_sample(text).expect("complete");
        assert_eq!(sample.shards_led, 5);
        assert_eq!(sample.raft.applied, 30);
        assert_eq!((sample.push_streams, sample.rooms_active), (2, 7));
        assert_eq!(
            sample.forwarded,
            BTreeMap::from([
                ("direct/applied".to_string(), 3),
                ("room/applied".to_string(), 20),
                ("room/not_leader".to_string(), 1)
            ])
        );
        assert_eq!(
            sample.remote_reads,
            BTreeMap::from([
                ("pull/answered".to_string(), 6),
                ("pull/failed".to_string(), 0),
                ("read/answered".to_string(), 4)
            ])
        );
        assert!(parse_node_sample("mimid_raft_proposals_total 1\n").is_err());
        assert_eq!(sample.moves, MoveCounters::default(), "no moves: zero");
    }

    #[test]
    fn room_move_counters_give_the_moves_their_time_and_the_slowest_bucket() {
        let at = |moved: u64, timed: u64, sum: f64, buckets: [u64; 3]| {
            format!(
                "mimid_rooms_moved_total {moved}\n\
                 mimid_room_moves_failed_total 1\n\
                 mimid_room_move_retries_total {}\n\
                 mimid_room_move_duration_seconds_sum {sum}\n\
                 mimid_room_move_duration_seconds_count {timed}\n\
                 mimid_room_move_duration_seconds_bucket{{le=\"0.01\"}} {}\n\
                 mimid_room_move_duration_seconds_bucket{{le=\"0.1\"}} {}\n\
                 mimid_room_move_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
                moved * 3,
                buckets[0],
                buckets[1],
                buckets[2]
            )
        };
        let before = move_counters(&at(2, 2, 0.004, [2, 2, 2]));
        let after = move_counters(&at(12, 12, 0.3245, [8, 12, 12]));
        assert_eq!(after.total_us, 324_500);
        let moves = after.since(&before);
        assert_eq!((moves.moved, moves.failed, moves.retries), (10, 0, 30));
        assert_eq!((moves.timed, moves.total_us), (10, 320_500));
        assert_eq!(moves.buckets, [(10_000, 6), (100_000, 10), (u64::MAX, 10)]);
        assert_eq!(moves.slowest_at_most_us(), Some(100_000));
        let both = moves.plus(&moves);
        assert_eq!((both.moved, both.timed), (20, 20));
        assert_eq!(both.slowest_at_most_us(), Some(100_000));
        assert_eq!(MoveCounters::default().slowest_at_most_us(), None);
        let slow = move_counters(&at(1, 1, 20.0, [0, 0, 1]));
        assert_eq!(slow.slowest_at_most_us(), None, "only +Inf bounds it");
    }

    fn view(leader: u64, voters: &[u64], learners: &[u64]) -> ShardView {
        ShardView {
            leader: Some(leader),
            voters: voters.to_vec(),
            learners: learners.to_vec(),
        }
    }

    /// Four nodes, R = 3, two shards (0, the metadata shard, and 1), each led by node 1.
    fn four_nodes(shard0: ShardView, shard1: [ShardView; 4]) -> Vec<Vec<ShardView>> {
        shard1
            .into_iter()
            .map(|one| vec![shard0.clone(), one])
            .collect()
    }

    #[test]
    fn placement_is_settled_when_each_shard_has_r_voters_and_the_learners_replicas_asks_for() {
        let meta = view(1, &[1, 2, 3], &[4]);
        let trimmed = view(1, &[1, 2, 3], &[]);
        let r = four_nodes(
            meta.clone(),
            [
                trimmed.clone(),
                trimmed.clone(),
                trimmed.clone(),
                // Node 4's replica was removed before it applied its removal.
                view(1, &[1, 2, 3, 4], &[]),
            ],
        );
        assert!(placement_settled(&r, Replicas::R, 3));
        assert!(
            !placement_settled(&r, Replicas::All, 3),
            "with all, node 4 keeps a learner"
        );
        let initial = view(1, &[1, 2, 3, 4], &[]);
        let untrimmed = four_nodes(meta.clone(), std::array::from_fn(|_| initial.clone()));
        assert!(!placement_settled(&untrimmed, Replicas::R, 3));
        let all = view(1, &[1, 2, 3], &[4]);
        let mut catching_up = four_nodes(meta.clone(), std::array::from_fn(|_| all.clone()));
        catching_up[3][1] = ShardView::default();
        assert!(
            !placement_settled(&catching_up, Replicas::All, 3),
            "node 4's learner has not applied a configuration yet"
        );
        catching_up[3][1] = all.clone();
        assert!(placement_settled(&catching_up, Replicas::All, 3));
        let mut leaderless = catching_up.clone();
        for node in &mut leaderless {
            node[1].leader = None;
        }
        assert!(!placement_settled(&leaderless, Replicas::All, 3));
        let meta_without_learner = four_nodes(
            view(1, &[1, 2, 3], &[]),
            std::array::from_fn(|_| trimmed.clone()),
        );
        assert!(
            !placement_settled(&meta_without_learner, Replicas::R, 3),
            "shard 0 is on every node either way"
        );
        let one = vec![vec![view(1, &[1], &[]), view(1, &[1], &[])]];
        assert!(
            placement_settled(&one, Replicas::R, 3),
            "R capped by the nodes"
        );
        assert!(!placement_settled(&[], Replicas::R, 3));
    }

    #[test]
    fn a_clusters_description_names_its_replicas_and_replication_factor() {
        let mut config = Config::default();
        config.cluster.replicas = Replicas::All;
        let described = serde_json::to_value(in_process_description(
            &config,
            Path::new("/tmp"),
            None,
            Some(4),
        ))
        .expect("serialisable");
        assert_eq!(described["nodes"], 4);
        assert_eq!(described["replicas"], "all");
        assert_eq!(described["replication_factor"], 3);
        let single = serde_json::to_value(in_process_description(
            &config,
            Path::new("/tmp"),
            None,
            None,
        ))
        .expect("serialisable");
        assert!(single.get("replicas").is_none(), "{single}");
    }
}
