//! `mimid node status | drain | undrain | add | decommission --host ADDR`, `mimid shard split
//! N --admin ADDR` and `mimid init --host ADDR`: the cluster routes of a node's admin listener
//! ([`super::http`], [`super::bootstrap`]) over plain HTTP/1.1, like `mimid backup`, with the
//! admin token (`--token-file`, `--data-dir` or `MIMID_ADMIN_TOKEN_FILE`:
//! [`crate::admin::auth`]). Any node's admin listener will do; registry changes reach shard 0's
//! leader from there, and a split's moves each shard's leader.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use mimid_actors::hub::SplitOutcome;
use mimid_cluster::ShardId;
use serde::de::DeserializeOwned;

use super::bootstrap::{InitAnswer, INIT_PATH};
use super::http::{
    AddNodeRequest, ClusterStatus, DrainAnswer, NodeAnswer, SplitRequest, ADD_NODE_PATH,
    DRAIN_PATH, SPLIT_PATH, STATUS_PATH, UNDRAIN_PATH,
};
use crate::admin::auth::node_answered;
use crate::admin::{admin_call, AdminToken};

/// How often `decommission --wait` looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `mimid node …`: through a running node's admin listener.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Every node (live or dead, active, decommissioning or decommissioned) and every shard
    /// (leader, voters, learners, lag).
    Status {
        /// A node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        host: String,
    },
    /// Hand every shard leadership of the node away, and keep doing so (its data stays;
    /// /readyz answers 503 "draining") until `undrain` or a restart.
    Drain {
        /// The admin listener of the node to drain, `HOST:PORT`.
        #[arg(long, value_name = "ADDR")]
        host: String,
    },
    /// Stop draining the node.
    Undrain {
        /// The admin listener of the node, `HOST:PORT`.
        #[arg(long, value_name = "ADDR")]
        host: String,
    },
    /// Register a new node; start it with cluster.join_existing = true and it receives
    /// replicas (ops/runbooks/scale-out.md). A node started with --join registers itself.
    Add {
        /// A node's admin listener, `HOST:PORT`.
        #[arg(long, value_name = "ADDR")]
        host: String,
        /// The new node's node_id (never used before in this cluster).
        #[arg(long, value_name = "N")]
        id: u64,
        /// The new node's cluster.listen as the other nodes dial it, `IP:PORT`.
        #[arg(long, value_name = "IP:PORT")]
        addr: String,
        /// Where the new node runs, `region=eu,zone=eu-1`; the node records its own
        /// configured locality when it starts, which wins [config of the new node: locality].
        #[arg(long, value_name = "KEY=VALUE,…")]
        locality: Option<String>,
    },
    /// Move every replica off a node; refused when the other active nodes are fewer than the
    /// replication factor (ops/runbooks/drain-decommission.md).
    Decommission {
        /// A node's admin listener, `HOST:PORT`.
        #[arg(long, value_name = "ADDR")]
        host: String,
        /// The node to decommission.
        #[arg(long, value_name = "N")]
        id: u64,
        /// Wait until the node holds no replica (state decommissioned).
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600,
              value_parser = clap::value_parser!(u64).range(1..))]
        wait_timeout_secs: u64,
    },
}

/// `mimid shard …`: through a running node's admin listener.
#[derive(Debug, Clone, Subcommand)]
pub enum ShardCommand {
    /// Hand rooms of a shard (a hashed shard or a split shard) to the split shard holding the
    /// fewest rooms (cluster.split_shards; ops/runbooks/shard-split.md). Rooms pinned to a
    /// residency set never move.
    Split {
        /// A node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// The shard to split.
        #[arg(value_name = "SHARD")]
        shard: ShardId,
        /// How many of its rooms move; default about half (the two halves carrying about the
        /// same number of log items).
        #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
        rooms: Option<u64>,
    },
}

/// Runs `mimid shard …` with the admin `token` (when the node has one); returns the lines to
/// print ([`render_split`]).
///
/// Cancel safety: safe to drop; the node finishes a split it started.
pub async fn run_shard_command(
    command: &ShardCommand,
    token: Option<&AdminToken>,
) -> anyhow::Result<Vec<String>> {
    match command {
        ShardCommand::Split {
            admin,
            shard,
            rooms,
        } => {
            let rooms = rooms
                .map(usize::try_from)
                .transpose()
                .context("--rooms is too large")?;
            let body = serde_json::to_vec(&SplitRequest {
                shard: *shard,
                rooms,
            })?;
            let answer: SplitOutcome =
                call_json(admin, token, "POST", SPLIT_PATH, &body, 200).await?;
            Ok(render_split(&answer))
        }
    }
}

/// What `mimid shard split` prints: `shard N split into shard T: K rooms moved, F failed`,
/// then `moved <room>` and `failed <room>: <reason>` per room.
pub fn render_split(answer: &SplitOutcome) -> Vec<String> {
    let mut lines = vec![format!(
        "shard {} split into shard {}: {} rooms moved, {} failed",
        answer.from,
        answer.to,
        answer.moved.len(),
        answer.failed.len()
    )];
    lines.extend(answer.moved.iter().map(|room| format!("moved {room}")));
    lines.extend(
        answer
            .failed
            .iter()
            .map(|(room, reason)| format!("failed {room}: {reason}")),
    );
    if !answer.failed.is_empty() {
        lines.push(
            "`mimid room status ROOM` shows where a failed room lives now; repeating the split \
             moves more rooms"
                .to_owned(),
        );
    }
    lines
}

/// Runs `mimid node …` with the admin `token` (when the node has one); returns the lines to
/// print.
///
/// Cancel safety: cancel safe (each request stands alone; a cancelled change may still be
/// applied, and repeating it is harmless).
pub async fn run_node_command(
    command: &NodeCommand,
    token: Option<&AdminToken>,
) -> anyhow::Result<Vec<String>> {
    match command {
        NodeCommand::Status { host } => {
            let status: ClusterStatus =
                call_json(host, token, "GET", STATUS_PATH, b"", 200).await?;
            Ok(render_status(&status))
        }
        NodeCommand::Drain { host } | NodeCommand::Undrain { host } => {
            let path = match command {
                NodeCommand::Drain { .. } => DRAIN_PATH,
                _ => UNDRAIN_PATH,
            };
            let answer: DrainAnswer = call_json(host, token, "POST", path, b"", 200).await?;
            let leads = if answer.leads.is_empty() {
                "none".to_owned()
            } else {
                join(&answer.leads)
            };
            Ok(vec![format!(
                "node {}: {}; shards it leads now: {leads}",
                answer.node_id,
                if answer.draining {
                    "draining (its leaderships move to other nodes; /readyz answers 503)"
                } else {
                    "not draining"
                }
            )])
        }
        NodeCommand::Add {
            host,
            id,
            addr,
            locality,
        } => {
            let body = serde_json::to_vec(&AddNodeRequest {
                id: *id,
                cluster_addr: addr.clone(),
                locality: locality.clone(),
            })?;
            let answer: NodeAnswer =
                call_json(host, token, "POST", ADD_NODE_PATH, &body, 201).await?;
            Ok(vec![format!(
                "node {} registered at {}{}; start it with cluster.join_existing = true and it \
                 receives replicas",
                answer.id,
                answer.cluster_addr.as_deref().unwrap_or("?"),
                if answer.locality.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", answer.locality)
                }
            )])
        }
        NodeCommand::Decommission {
            host,
            id,
            wait,
            wait_timeout_secs,
        } => {
            let path = format!("/admin/cluster/nodes/{id}/decommission");
            let answer: NodeAnswer = call_json(host, token, "POST", &path, b"", 200).await?;
            let mut lines = vec![format!(
                "node {}: {}{}",
                answer.id,
                answer.state,
                if answer.changed {
                    ""
                } else {
                    " (it was already)"
                }
            )];
            if *wait {
                let started = Instant::now();
                let deadline = started + Duration::from_secs(*wait_timeout_secs);
                loop {
                    let status: ClusterStatus =
                        call_json(host, token, "GET", STATUS_PATH, b"", 200).await?;
                    let node = status.nodes.iter().find(|node| node.id == *id);
                    if node.is_some_and(|node| node.state == "decommissioned") {
                        lines.push(format!(
                            "node {id} holds no replica (decommissioned after {:.1?}); stop it",
                            started.elapsed()
                        ));
                        break;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "node {id} still holds replicas after {wait_timeout_secs} s: {}",
                            node.map_or("not registered".to_owned(), |node| format!(
                                "voter of {} shards, learner of {}",
                                node.voter_of, node.learner_of
                            ))
                        );
                    }
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
            Ok(lines)
        }
    }
}

/// Runs `mimid init --host ADDR` with the admin `token`: the cluster the nodes started with
/// `--join` form, created on the node at `host` (ops/runbooks/bootstrap.md). Fails, with the
/// node's reason, when the cluster exists already (409) or the node does not use
/// `cluster.join`.
///
/// Cancel safety: a cancelled init may still have created the cluster; `mimid node status`
/// shows its id, and a repeated init answers 409 with it.
pub async fn run_init(host: &str, token: Option<&AdminToken>) -> anyhow::Result<Vec<String>> {
    let answer: InitAnswer = call_json(host, token, "POST", INIT_PATH, b"", 200).await?;
    Ok(vec![format!(
        "cluster {} initialized by node {}{}; the nodes started with --join adopt it, register \
         themselves and are given replicas (mimid node status --host {host})",
        answer.cluster_id,
        answer.node_id,
        if answer.running {
            ""
        } else {
            " (still starting: watch its /readyz)"
        }
    )])
}

/// The table `mimid node status` prints.
pub fn render_status(status: &ClusterStatus) -> Vec<String> {
    let mut lines = vec![format!(
        "asked node {}{}; {}replication factor {}{}",
        status.node_id,
        if status.draining { " (draining)" } else { "" },
        status
            .cluster_id
            .as_ref()
            .map(|id| format!("cluster id {id}; "))
            .unwrap_or_default(),
        status.replication_factor,
        status
            .leader_region
            .as_ref()
            .map(|region| format!("; leaders preferred in region {region}"))
            .unwrap_or_default(),
    )];
    lines.push(format!(
        "{:>5}  {:<5} {:<16} {:<22} {:>6} {:>8} {:>5} {:>8}  {}",
        "NODE", "LIVE", "STATE", "ADDRESS", "VOTER", "LEARNER", "LEADS", "DRAINING", "LOCALITY"
    ));
    for node in &status.nodes {
        lines.push(format!(
            "{:>5}  {:<5} {:<16} {:<22} {:>6} {:>8} {:>5} {:>8}  {}",
            node.id,
            if node.live { "live" } else { "dead" },
            node.state,
            node.cluster_addr.as_deref().unwrap_or("-"),
            node.voter_of,
            node.learner_of,
            node.leads,
            match node.draining {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            if node.locality.is_empty() {
                "-"
            } else {
                &node.locality
            }
        ));
    }
    lines.push(format!(
        "{:>5}  {:<6} {:>6} {:>9} {:<16} {:<12} {:<6} {:<24} {}",
        "SHARD", "LEADER", "TERM", "COMMIT", "VOTERS", "LEARNERS", "ASLEEP", "RECORDED", "LAG"
    ));
    for shard in &status.shards {
        let lag = if shard.lag.is_empty() {
            format!("? (as node {} sees it)", shard.reported_by)
        } else {
            shard
                .lag
                .iter()
                .map(|(node, lag)| format!("{node}:{lag}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        // The descriptor in shard 0: leader, then voters / learners.
        let recorded = shard.recorded.as_ref().map_or("-".to_owned(), |recorded| {
            format!(
                "{}:{}/{}",
                recorded.leader,
                join(&recorded.voters),
                if recorded.learners.is_empty() {
                    "-".to_owned()
                } else {
                    join(&recorded.learners)
                }
            )
        });
        lines.push(format!(
            "{:>5}  {:<6} {:>6} {:>9} {:<16} {:<12} {:<6} {:<24} {}",
            shard.shard,
            shard
                .leader
                .map_or("-".to_owned(), |leader| leader.to_string()),
            shard.term,
            shard.commit,
            join(&shard.voters),
            if shard.learners.is_empty() {
                "-".to_owned()
            } else {
                join(&shard.learners)
            },
            if shard.hibernating { "yes" } else { "no" },
            recorded,
            lag
        ));
    }
    lines
}

fn join(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// One request to the admin listener at `host`; the JSON body of a `want` answer, or the
/// node's reason for any other status.
async fn call_json<T: DeserializeOwned>(
    host: &str,
    token: Option<&AdminToken>,
    method: &str,
    path: &str,
    body: &[u8],
    want: u16,
) -> anyhow::Result<T> {
    let (status, answer) = admin_call(host, token, method, path, body).await?;
    if status != want {
        return Err(node_answered(status, &answer));
    }
    serde_json::from_slice(&answer)
        .with_context(|| format!("reading the answer to {method} {path}"))
}
