//! One invocation of the bench: start (or reach) the provider, set up each phase's rooms, run
//! the timed phase, and assemble the JSON report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time::Instant;

use crate::churn::{set_up_churn, Mix};
use crate::cli::{ClusterReplicas, CommonArgs, Encryption, LoadModel, Scenario};
use crate::cluster::{sender_node, set_up_cluster_rooms, Delivery, Receivers};
use crate::cross::{set_up_pairs, Pairs};
use crate::fanout::{
    per_second, set_up_large_rooms, FanoutReport, LargeRooms, LightReceivers, Site,
};
use crate::group::set_up_groups;
use crate::join::link_joiners;
use crate::load::{run_phase, run_phase_with, PhaseConfig, PhaseReport};
use crate::provider::{
    node_sample, raft_counters, NodeDescription, NodeSample, Provider, RaftCounters,
};
use crate::scenario::{set_up_rooms, Acknowledged, Naming, Operation, PhaseSender};
use crate::schedule::OpenSchedule;
use crate::split::{run_split, MoveReport, MovedFlags, SplitPlan, SplitReport};
use crate::stats::round_millis;
use crate::system::{CpuSample, CpuUsage, Machine};

/// The key of a node's forwarded room commands that were applied, in
/// [`ClusterNodeReport::forwarded`] (`scope/outcome`).
pub const FORWARDED_ROOM_APPLIED: &str = "room/applied";

/// Messages encrypted in advance for a closed-model phase without `--max-ops`.
pub const DEFAULT_CLOSED_PREGENERATED: u64 = 200_000;
/// commit-churn: Commits per room the users' KeyPackages are published for, in a closed-model
/// phase without `--max-ops` (adds beyond them fall back to removes and updates).
pub const DEFAULT_CLOSED_CHURN_PER_ROOM: u64 = 2_000;
/// large-room-fanout: messages encrypted in advance per sender for a closed-model phase without
/// `--max-ops`.
pub const DEFAULT_CLOSED_FANOUT_PER_SENDER: u64 = 5_000;
/// join-storm: joiners linked per room for a closed-model phase without `--max-ops`.
pub const DEFAULT_CLOSED_JOINS_PER_ROOM: u64 = 20;
/// The large-room-fanout scenario's providers, the rooms' hub first.
pub const FANOUT_DOMAINS: [&str; 3] = ["a.example", "b.example", "c.example"];
/// Name of the generator's runtime threads (see `system`).
pub(crate) const CLIENT_THREADS_NAME: &str = crate::system::CLIENT_GROUP;
/// Cluster scenario: how long the attached members may take after the phase to have every
/// accepted message.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(15);
/// Cluster scenario: how long the nodes' leadership gauges may take to add up to the shard
/// count (a leadership moving between two nodes' scrapes) before they are reported as they are.
const LEADERS_SETTLE: Duration = Duration::from_secs(3);

/// The JSON summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: &'static str,
    pub started_unix_s: u64,
    pub config: RunConfig,
    /// Options of the scenario beyond `config` (large-room-fanout, commit-churn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<ScenarioOptions>,
    pub node: NodeDescription,
    pub machine: Machine,
    pub phases: Vec<PhaseSummary>,
    /// How to read the figures (what is and is not inside the measurement).
    pub notes: Vec<String>,
}

/// The options the run was made with.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `open` (`--rate`) or `closed` (`--concurrency`).
    pub load_model: &'static str,
    pub rate: Option<f64>,
    pub concurrency: Option<u32>,
    pub duration_s: f64,
    pub max_ops: Option<u64>,
    pub timeout_ms: u64,
    pub rooms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_sizes: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<&'static str>,
    /// Cluster scenario: nodes of the provider's cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    /// Cluster scenario: whether the members stay attached by their push streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached_members: Option<bool>,
    /// Cluster scenario: `--split-shards`, when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_shards: Option<u64>,
    /// Cluster scenario: `--split-at`, seconds into the timed phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_at_s: Option<f64>,
    pub client_threads: u32,
    pub setup_concurrency: u32,
}

/// The options of the newer scenarios that `RunConfig` has no field for (`options` in the
/// report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioOptions {
    /// large-room-fanout: providers the members are spread over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<u32>,
    /// large-room-fanout: senders per room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub senders_per_room: Option<u32>,
    /// large-room-fanout: receiving members per QUIC connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members_per_connection: Option<u32>,
    /// commit-churn: weights of adds, removes and updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
}

/// One phase: its set-up and what the timed part measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub name: String,
    pub rooms: u32,
    pub members: u32,
    pub setup_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pregenerated_messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pregenerate_s: Option<f64>,
    #[serde(flatten)]
    pub measured: PhaseReport,
    pub cpu: CpuReport,
    /// The node's Raft counters over the phase (the rooms' hub in the cross-provider
    /// scenario, every node together in the cluster scenario); `null` without an admin
    /// address.
    pub raft: Option<RaftReport>,
    /// Cross-provider: the follower provider's Raft counters over the phase (its mirror of
    /// each room: every notified item is appended durably there too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_follower: Option<RaftReport>,
    /// Cluster scenario: each node's share (leaderships, forwarding, Raft counters) and what
    /// the attached members received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
    /// dm, small-rooms, large-room-fanout: recipient deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutReport>,
    /// commit-churn, join-storm: the rooms' sizes after the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_size: Option<GroupSizeReport>,
    /// Cluster scenario with `--split-at`: the shard split during the phase, and the
    /// operations before, during and after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitReport>,
}

/// The sizes of a phase's rooms after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSizeReport {
    /// Members per room at the start of the phase.
    pub start: u32,
    pub end_min: usize,
    pub end_max: usize,
    pub end_mean: f64,
}

/// The cluster scenario's view of its nodes over a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub nodes: Vec<ClusterNodeReport>,
    /// Shards led by the nodes together, read after the phase: the shard count when every
    /// shard has exactly one leader.
    pub shards_led_total: u64,
    /// Room commands (the messages) the nodes forwarded to a shard leader on another node
    /// and got applied during the phase
    /// (`mimid_raft_forwarded_proposals_total{scope="room",outcome="applied"}`; the nodes'
    /// own background proposals, such as shard descriptors, are `direct`).
    pub forwarded_applied: u64,
    /// `forwarded_applied` over the phase's accepted operations.
    pub forwarded_share: Option<f64>,
    /// What the members attached by their push streams received (`null` with
    /// `--detached-members`).
    pub delivery: Option<Delivery>,
}

/// One node of the cluster scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterNodeReport {
    pub node_id: u64,
    /// Rooms whose sender is connected to this node.
    pub senders: usize,
    /// Shards this node leads, after the phase.
    pub shards_led: u64,
    /// Push streams open on this node, after the phase (before the members left).
    pub push_streams: u64,
    /// Room actors running on this node, after the phase.
    pub rooms_active: u64,
    /// This node's Raft counters over the phase: `proposals` are those it stepped into Raft
    /// as a leader (its own and forwarded ones), `applied` every entry it applied.
    pub raft: RaftReport,
    /// Proposals this node forwarded to the leader of their shard during the phase, by
    /// `scope/outcome` (e.g. [`FORWARDED_ROOM_APPLIED`]).
    pub forwarded: BTreeMap<String, u64>,
    /// The same since the node started (room set-up included).
    pub forwarded_since_start: BTreeMap<String, u64>,
    /// Reads (`read/…`) and push-stream relay pulls (`pull/…`) this node sent during the phase
    /// to a node holding a shard it lacks, by kind and outcome
    /// (`mimid_remote_reads_total{kind,outcome}`); none when it holds every shard.
    pub remote_reads: BTreeMap<String, u64>,
}

/// CPU time of this process during the timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    #[serde(flatten)]
    pub usage: CpuUsage,
    /// Process CPU seconds per 1000 successful operations (anchors.md: fair when server and
    /// generator share the machine).
    pub per_1000_ops_s: Option<f64>,
    /// The generator's threads (`generator_threads`): the clients' runtime `bench-client`
    /// (the clients, their QUIC and openmls work), rayon's pool `bench-rayon` (where openmls
    /// encrypts and derives the clients' UpdatePaths) and the main thread `bench-main`.
    pub generator_s: f64,
    /// The thread groups in `generator_s`.
    pub generator_threads: Vec<String>,
    /// In-process node only: every other thread of the process (`server_threads`: the
    /// node's runtime, Raft driver, sled, actors; every node's in a multi-node run).
    pub server_s: Option<f64>,
    /// In-process node only: the thread groups in `server_s`.
    pub server_threads: Option<Vec<String>>,
    /// In-process node only: the node's CPU seconds per 1000 successful operations, what the
    /// server would need on its own.
    pub server_per_1000_ops_s: Option<f64>,
}

/// Differences of the node's Raft counters over the phase. The node refreshes them once a
/// second, so the window is the phase shifted by up to a second; the ratio is what to read.
#[derive(Debug, Clone, Serialize)]
pub struct RaftReport {
    pub proposals: u64,
    pub applied: u64,
    pub flushes: u64,
    /// Entries made durable per sled flush + fdatasync: the group-commit batch size.
    pub entries_per_flush: Option<f64>,
}

/// Runs `scenario` (one with timed phases; idle-density is `density::run`) and returns its
/// report. Must not be called from inside a tokio runtime.
pub fn run(scenario: &Scenario) -> anyhow::Result<Report> {
    let common = common(scenario)?;
    if let Scenario::Cluster(args) = scenario {
        args.split_at().map_err(anyhow::Error::msg)?;
    }
    let senders_per_phase = match scenario {
        Scenario::Messages(args) => args.rooms,
        Scenario::Commits(args) => args.rooms,
        Scenario::CrossProvider(args) => args.rooms,
        Scenario::Cluster(args) => args.rooms,
        Scenario::IdleDensity(args) => args.rooms,
        Scenario::Dm(args) => args.rooms,
        Scenario::SmallRooms(args) => args.rooms,
        Scenario::LargeRoomFanout(args) => args.rooms * args.senders,
        Scenario::CommitChurn(args) => args.rooms,
        Scenario::JoinStorm(args) => args.rooms,
    };
    if let Some(concurrency) = common.load.concurrency {
        if concurrency > senders_per_phase {
            bail!(
                "--concurrency {concurrency} exceeds the {senders_per_phase} senders (one per \
                 room, each with one request in flight): raise --rooms"
            );
        }
    }
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let machine = Machine::describe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.client_threads as usize)
        .thread_name(CLIENT_THREADS_NAME)
        .enable_all()
        .build()
        .context("building the generator's runtime")?;
    let provider = match scenario {
        Scenario::CrossProvider(_) => {
            progress(common, "starting the providers a.example and b.example");
            Provider::start_federation(&common.node)?
        }
        Scenario::Cluster(args) => {
            progress(
                common,
                &format!(
                    "starting provider {} on {} nodes (replicas {}{}), waiting for placement",
                    crate::provider::CLUSTER_DOMAIN,
                    args.nodes,
                    replicas_name(args.replicas),
                    if args.split_shards > 0 {
                        format!(", {} split shards", args.split_shards)
                    } else {
                        String::new()
                    }
                ),
            );
            Provider::start_cluster(
                &common.node,
                args.nodes,
                args.replicas.into(),
                args.split_shards,
            )?
        }
        Scenario::LargeRoomFanout(args) => {
            let domains = &FANOUT_DOMAINS[..args.providers as usize];
            progress(
                common,
                &format!("starting the providers {}", domains.join(", ")),
            );
            Provider::start_providers(&common.node, domains)?
        }
        _ => {
            progress(common, "starting the provider");
            Provider::start(&common.node)?
        }
    };
    let naming_tag = format!("{:x}{:x}", started_unix_s.as_millis(), std::process::id());
    let interrupted = Arc::new(AtomicBool::new(false));
    runtime.spawn(listen_for_interrupt(interrupted.clone()));
    let phases = runtime.block_on(run_phases(
        scenario,
        common,
        &provider,
        &naming_tag,
        &interrupted,
    ));
    let node = provider.description.clone();
    let shut_down = provider.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(5));
    let phases = phases?;
    shut_down.context("shutting the in-process providers down")?;
    Ok(Report {
        tool: "mimid-bench",
        version: env!("CARGO_PKG_VERSION"),
        scenario: scenario.name(),
        started_unix_s: started_unix_s.as_secs(),
        config: run_config(scenario, common),
        options: scenario_options(scenario),
        notes: notes(scenario, &node),
        node,
        machine,
        phases,
    })
}

fn common(scenario: &Scenario) -> anyhow::Result<&CommonArgs> {
    scenario
        .common()
        .with_context(|| format!("{} has no timed phase", scenario.name()))
}

/// The first Ctrl-C ends the current phase early (the report is still written and the
/// in-process node's data directory removed); a second one aborts.
async fn listen_for_interrupt(interrupted: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return; // No signal handling here: Ctrl-C keeps its default effect.
    }
    interrupted.store(true, Ordering::Relaxed);
    eprintln!("# interrupted: finishing the phase (Ctrl-C again to abort)");
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

fn progress(common: &CommonArgs, line: &str) {
    if !common.output.no_progress {
        crate::progress::line(&format!("# {line}"));
    }
}

async fn run_phases(
    scenario: &Scenario,
    common: &CommonArgs,
    provider: &Provider,
    tag: &str,
    interrupted: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<PhaseSummary>> {
    let plans = phase_plans(scenario, &provider.domain, tag)?;
    let mut phases = Vec::with_capacity(plans.len());
    for plan in plans {
        phases.push(run_one(provider, common, plan, interrupted).await?);
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(phases)
}

/// The phases of `scenario`, in the order they run: one per group size (commits,
/// commit-churn), one otherwise. Phase `i`'s users and rooms are named with `i`.
fn phase_plans(scenario: &Scenario, domain: &str, tag: &str) -> anyhow::Result<Vec<PhasePlan>> {
    let naming = |phase| Naming {
        domain: domain.to_string(),
        tag: tag.to_string(),
        phase,
    };
    // One phase of application messages.
    let messages = |name: &str, rooms, members, encryption, message_bytes: u32, kind| {
        vec![PhasePlan {
            name: name.into(),
            naming: naming(0),
            rooms,
            members,
            operation: message_operation(encryption, message_bytes),
            text_bytes: message_bytes as usize,
            kind,
        }]
    };
    // A phase of Commits per group size.
    let by_size = |name: &str, rooms, sizes: &[u32], kind| -> Vec<PhasePlan> {
        sizes
            .iter()
            .enumerate()
            .map(|(idx, &size)| PhasePlan {
                name: format!("{name} group_size={size}"),
                naming: naming(idx),
                rooms,
                members: size,
                operation: Operation::SelfUpdate,
                text_bytes: 0,
                kind,
            })
            .collect()
    };
    Ok(match scenario {
        Scenario::Messages(args) => messages(
            "messages",
            args.rooms,
            args.members,
            args.encryption,
            args.message_bytes,
            PhaseKind::Rooms,
        ),
        Scenario::Commits(args) => {
            by_size("commits", args.rooms, &args.group_size, PhaseKind::Rooms)
        }
        Scenario::CrossProvider(args) => messages(
            "cross-provider",
            args.rooms,
            2,
            args.encryption,
            args.message_bytes,
            PhaseKind::CrossProvider,
        ),
        Scenario::Cluster(args) => messages(
            "cluster",
            args.rooms,
            2,
            args.encryption,
            args.message_bytes,
            PhaseKind::Cluster {
                attached: !args.detached_members,
                split: args
                    .split_at()
                    .map_err(anyhow::Error::msg)?
                    .map(|at| SplitAsk {
                        at,
                        split_shards: args.split_shards,
                    }),
            },
        ),
        Scenario::Dm(args) => messages(
            "dm",
            args.rooms,
            2,
            args.encryption,
            args.message_bytes,
            PhaseKind::Group,
        ),
        Scenario::SmallRooms(args) => messages(
            "small-rooms",
            args.rooms,
            args.members,
            args.encryption,
            args.message_bytes,
            PhaseKind::Group,
        ),
        Scenario::LargeRoomFanout(args) => messages(
            "large-room-fanout",
            args.rooms,
            args.members,
            // The senders' messages are always encrypted in advance.
            Encryption::Pregenerated,
            args.message_bytes,
            PhaseKind::LargeRoom {
                senders: args.senders,
                members_per_connection: args.members_per_connection,
            },
        ),
        Scenario::CommitChurn(args) => by_size(
            "commit-churn",
            args.rooms,
            &args.group_size,
            PhaseKind::Churn { mix: args.mix },
        ),
        Scenario::JoinStorm(args) => vec![PhasePlan {
            name: "join-storm".into(),
            naming: naming(0),
            rooms: args.rooms,
            members: args.members,
            operation: Operation::SelfUpdate,
            text_bytes: 0,
            kind: PhaseKind::Join,
        }],
        Scenario::IdleDensity(_) => bail!("idle-density has no timed phase"),
    })
}

fn message_operation(encryption: Encryption, message_bytes: u32) -> Operation {
    match encryption {
        Encryption::Pregenerated => Operation::PregeneratedMessage,
        Encryption::Live => Operation::LiveMessage {
            text_bytes: message_bytes as usize,
        },
    }
}

struct PhasePlan {
    name: String,
    naming: Naming,
    rooms: u32,
    members: u32,
    operation: Operation,
    text_bytes: usize,
    kind: PhaseKind,
}

/// Who acts in a phase's rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhaseKind {
    /// Each room's creator, on the one provider (members joined and disconnected).
    Rooms,
    /// Alice at the hub sends, Bob at the follower receives (`cross`).
    CrossProvider,
    /// Each room's creator on one node of the cluster, its member on the next, attached by its
    /// push stream or not (`cluster`); a shard split during the phase, if asked.
    Cluster {
        attached: bool,
        split: Option<SplitAsk>,
    },
    /// Every member attached, taking turns; an operation ends when all others have it (`group`:
    /// dm, small-rooms).
    Group,
    /// Light members at every provider, `senders` full clients per room at the hub (`fanout`).
    LargeRoom {
        senders: u32,
        members_per_connection: u32,
    },
    /// The creator adds, removes and updates (`churn`).
    Churn { mix: Mix },
    /// New devices of the creator join by external commit (`join`).
    Join,
}

/// A shard split asked for during the cluster scenario's phase (`--split-at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SplitAsk {
    /// When, from the phase start.
    at: Duration,
    /// `cluster.split_shards` of the nodes.
    split_shards: u64,
}

/// What besides the senders a phase keeps running and reports on.
enum Attached {
    None,
    /// The cluster scenario's attached members.
    Cluster(Receivers),
    /// Every operation awaited this many recipients (dm, small-rooms).
    Recipients(u64),
    /// The large rooms' light members, each message awaited at `recipients` of them.
    Light {
        receivers: LightReceivers,
        recipients: u64,
    },
}

async fn run_one(
    provider: &Provider,
    common: &CommonArgs,
    plan: PhasePlan,
    interrupted: &Arc<AtomicBool>,
) -> anyhow::Result<PhaseSummary> {
    progress(
        common,
        &format!(
            "{}: setting up {} rooms of {} members",
            plan.name, plan.rooms, plan.members
        ),
    );
    // Replaced by the phase's bar once the timed phase starts.
    let _spinner = crate::progress::Spinner::start(
        !common.output.no_progress,
        &format!("{}: setting up", plan.name),
    );
    let mut run = PhaseRun {
        provider,
        common,
        plan,
        setup_start: Instant::now(),
        interrupted,
        split: None,
    };
    let plan = &run.plan;
    let setup_concurrency = common.setup_concurrency as usize;
    let timeout = Duration::from_millis(common.load.timeout_ms);
    match plan.kind {
        PhaseKind::Rooms => {
            let senders = set_up_rooms(
                &provider.endpoint,
                &plan.naming,
                plan.rooms,
                plan.members,
                plan.operation,
                setup_concurrency,
            )
            .await?;
            run.measure(senders, Attached::None).await
        }
        PhaseKind::Cluster { attached, split } => {
            let nodes: Vec<_> = provider
                .cluster
                .iter()
                .map(|member| member.endpoint.clone())
                .collect();
            let (senders, members) = set_up_cluster_rooms(
                &nodes,
                &plan.naming,
                plan.rooms,
                plan.operation,
                setup_concurrency,
                attached,
            )
            .await?;
            let mut senders = senders;
            if let Some(ask) = split {
                let plan = split_plan(provider, ask, &senders)?;
                let flags = plan.flags();
                for sender in &mut senders {
                    if let Some(flag) = flags.get(sender.room()) {
                        sender.watch_move(flag.clone());
                    }
                }
                run.split = Some((plan, flags));
            }
            let receivers = if attached {
                Attached::Cluster(Receivers::start(members))
            } else {
                Attached::None
            };
            run.measure(senders, receivers).await
        }
        PhaseKind::Group => {
            let senders = set_up_groups(
                &provider.endpoint,
                &plan.naming,
                plan.rooms,
                plan.members,
                plan.operation,
                setup_concurrency,
                timeout,
            )
            .await?;
            let recipients = u64::from(plan.members) - 1;
            run.measure(senders, Attached::Recipients(recipients)).await
        }
        PhaseKind::LargeRoom {
            senders,
            members_per_connection,
        } => {
            let mut sites = vec![Site {
                domain: provider.domain.clone(),
                endpoint: provider.endpoint.clone(),
            }];
            sites.extend(provider.followers.iter().map(|f| Site {
                domain: f.domain.clone(),
                endpoint: f.endpoint.clone(),
            }));
            let print = |line: &str| progress(common, line);
            let large = LargeRooms {
                sites: &sites,
                naming: &plan.naming,
                rooms: plan.rooms,
                members: plan.members,
                senders,
                members_per_connection,
                setup_concurrency,
                progress: &print,
            };
            let (senders, receivers) = set_up_large_rooms(&large).await?;
            let recipients = u64::from(plan.members - large.senders);
            let attached = Attached::Light {
                receivers,
                recipients,
            };
            run.measure(senders, attached).await
        }
        PhaseKind::Churn { mix } => {
            let budget = ops_budget(
                common.load.model(),
                common,
                plan.rooms as usize,
                u64::from(plan.rooms) * DEFAULT_CLOSED_CHURN_PER_ROOM,
            )?;
            let adds = budget
                .iter()
                .map(|ops| mix.adds_in(*ops))
                .max()
                .unwrap_or(0);
            let senders = set_up_churn(
                &provider.endpoint,
                &plan.naming,
                plan.rooms,
                plan.members,
                mix,
                adds,
                setup_concurrency,
            )
            .await?;
            run.measure(senders, Attached::None).await
        }
        PhaseKind::Join => {
            let joins = ops_budget(
                common.load.model(),
                common,
                plan.rooms as usize,
                u64::from(plan.rooms) * DEFAULT_CLOSED_JOINS_PER_ROOM,
            )?;
            let creators = set_up_rooms(
                &provider.endpoint,
                &plan.naming,
                plan.rooms,
                plan.members,
                plan.operation,
                setup_concurrency,
            )
            .await?;
            let senders = link_joiners(
                creators,
                &plan.naming,
                &joins,
                plan.members as usize,
                setup_concurrency,
            )
            .await?;
            run.measure(senders, Attached::None).await
        }
        PhaseKind::CrossProvider => {
            let follower = provider
                .follower
                .as_ref()
                .context("the cross-provider scenario needs a second provider")?;
            let follower_naming = Naming {
                domain: follower.domain.clone(),
                ..plan.naming.clone()
            };
            let pairs = Pairs {
                hub: &provider.endpoint,
                hub_naming: &plan.naming,
                follower: &follower.endpoint,
                follower_naming: &follower_naming,
            };
            let senders = set_up_pairs(
                &pairs,
                plan.rooms,
                plan.operation,
                setup_concurrency,
                timeout,
            )
            .await?;
            run.measure(senders, Attached::None).await
        }
    }
}

/// The plan of the split `ask` asks for: the hashed shard holding the most of the rooms of
/// `senders`, split through node 1.
fn split_plan(
    provider: &Provider,
    ask: SplitAsk,
    senders: &[crate::scenario::RoomSender],
) -> anyhow::Result<SplitPlan> {
    let NodeDescription::InProcess { shards, .. } = provider.description else {
        bail!("a split needs the in-process cluster");
    };
    let layout = mimid_actors::residency::Layout::new(shards, [], ask.split_shards)
        .map_err(anyhow::Error::msg)
        .context("the cluster's shard layout")?;
    let node = provider
        .cluster
        .first()
        .context("a split needs the cluster's nodes")?;
    let rooms: Vec<_> = senders.iter().map(|s| s.room().clone()).collect();
    SplitPlan::new(ask.at, &layout, &rooms, node.node_id, node.admin)
        .context("a split needs rooms to move")
}

/// One phase of a run: what [`PhaseRun::measure`] needs once the phase's senders are set up.
struct PhaseRun<'a> {
    provider: &'a Provider,
    common: &'a CommonArgs,
    plan: PhasePlan,
    /// When the phase's set-up began.
    setup_start: Instant,
    interrupted: &'a Arc<AtomicBool>,
    /// The shard split to run during the phase (cluster scenario, `--split-at`), and the
    /// flags its rooms' senders watch.
    split: Option<(SplitPlan, MovedFlags)>,
}

impl PhaseRun<'_> {
    /// The rest of a phase once its `senders` (and what else it keeps running, `attached`)
    /// are set up: encryption in advance, the timed phase, and the CPU and Raft accounting.
    async fn measure<S: PhaseSender>(
        self,
        mut senders: Vec<S>,
        attached: Attached,
    ) -> anyhow::Result<PhaseSummary> {
        let PhaseRun {
            provider,
            common,
            plan,
            setup_start,
            interrupted,
            split,
        } = self;
        let model = common.load.model();
        let setup_s = round_millis(setup_start.elapsed().as_secs_f64());

        let mut pregenerated = None;
        let mut pregenerate_s = None;
        if plan.operation == Operation::PregeneratedMessage {
            // A large room's sender manages tens of messages a second, not thousands.
            let closed_default = match plan.kind {
                PhaseKind::LargeRoom { .. } => {
                    senders.len() as u64 * DEFAULT_CLOSED_FANOUT_PER_SENDER
                }
                _ => DEFAULT_CLOSED_PREGENERATED,
            };
            let counts = ops_budget(model, common, senders.len(), closed_default)?;
            let total: u64 = counts.iter().sum();
            progress(
                common,
                &format!("{}: encrypting {total} messages in advance", plan.name),
            );
            let started = Instant::now();
            senders = S::pregenerate_all(
                senders,
                &counts,
                plan.text_bytes,
                common.client_threads as usize,
            )
            .await?;
            pregenerate_s = Some(round_millis(started.elapsed().as_secs_f64()));
            pregenerated = Some(senders.iter().map(|s| s.pregenerated() as u64).sum());
        }

        progress(
            common,
            &format!(
                "{}: {} for {:?}",
                plan.name,
                match model {
                    LoadModel::Open { rate } => format!("open model at {rate} ops/s"),
                    LoadModel::Closed { concurrency } => format!(
                        "closed model with {} in flight",
                        concurrency.unwrap_or(plan.rooms)
                    ),
                },
                common.load.duration
            ),
        );
        let follower_admin = provider.follower.as_ref().map(|f| f.admin);
        let raft_before = read_raft(provider.admin).await;
        let follower_before = read_raft(follower_admin).await;
        let cluster_before = read_cluster(provider).await;
        let light_before = match &attached {
            Attached::Light { receivers, .. } => receivers.delivered(),
            _ => Vec::new(),
        };
        let cpu_before = CpuSample::take();
        let config = PhaseConfig {
            model,
            duration: common.load.duration,
            max_ops: common.load.max_ops,
            op_timeout: Duration::from_millis(common.load.timeout_ms),
            progress: !common.output.no_progress,
            interrupted: interrupted.clone(),
        };
        let (senders, mut measured, split_run) = match &split {
            Some((split, flags)) => {
                let (task_plan, flags) = (split.clone(), flags.clone());
                let shown = !common.output.no_progress;
                let (senders, measured, run) =
                    run_phase_with(senders, config, Some(crate::split::BEFORE), move |clock| {
                        run_split(clock, task_plan, flags, shown)
                    })
                    .await?;
                (senders, measured, Some(run))
            }
            None => {
                let (senders, measured) = run_phase(senders, config).await?;
                (senders, measured, None)
            }
        };
        let cpu = CpuSample::take().since(&cpu_before);
        let raft_after = read_raft(provider.admin).await;
        let follower_after = read_raft(follower_admin).await;
        let cluster_after = settled_cluster(provider).await;
        let group_size = group_sizes(&senders, plan.members);
        // The receivers check each message by the number in its text when it has room for it.
        let acknowledged: Option<Vec<Acknowledged>> = (plan.text_bytes
            >= crate::cross::MIN_TEXT_BYTES as usize)
            .then(|| senders.iter().map(PhaseSender::acknowledged).collect())
            .flatten();
        S::close_all(senders).await;
        let elapsed_s = measured.elapsed_s;
        let (delivery, fanout) = match attached {
            Attached::None => (None, None),
            Attached::Cluster(receivers) => (
                Some(
                    receivers
                        .finish(measured.totals.ops_ok, acknowledged, CATCH_UP_DEADLINE)
                        .await,
                ),
                None,
            ),
            Attached::Recipients(recipients) => {
                let deliveries = measured.totals.ops_ok * recipients;
                let fanout = FanoutReport {
                    recipients_per_message: recipients,
                    receivers: u64::from(plan.rooms) * (recipients + 1),
                    deliveries,
                    deliveries_per_s: per_second(deliveries, elapsed_s),
                    ..FanoutReport::default()
                };
                (None, Some(fanout))
            }
            Attached::Light {
                receivers,
                recipients,
            } => {
                let fanout = receivers.report(&light_before, recipients, elapsed_s);
                receivers.finish().await;
                (None, Some(fanout))
            }
        };
        let split = match (&split, &split_run) {
            (Some((plan, _)), Some(run)) => {
                let moves = match (&cluster_before, &cluster_after) {
                    (Some(before), Some(after)) => {
                        let counters = |samples: &[NodeSample]| -> Vec<_> {
                            samples.iter().map(|s| s.moves.clone()).collect()
                        };
                        MoveReport::over(&counters(before), &counters(after))
                    }
                    _ => MoveReport::default(),
                };
                let windows = std::mem::take(&mut measured.windows);
                Some(SplitReport::new(plan, run, windows, moves))
            }
            _ => None,
        };
        let (cluster, cluster_raft) = match (&cluster_before, &cluster_after) {
            (Some(before), Some(after)) => (
                Some(cluster_report(
                    provider,
                    plan.rooms,
                    measured.totals.ops_ok,
                    before,
                    after,
                    delivery,
                )),
                Some(raft_report(raft_sum(before), raft_sum(after))),
            ),
            _ => (None, None),
        };

        let per_1000_ops = |seconds: f64| {
            (measured.totals.ops_ok > 0)
                .then(|| (seconds * 1000.0 / measured.totals.ops_ok as f64 * 1e4).round() / 1e4)
        };
        let cpu_split = cpu.split();
        let in_process = provider.is_in_process();
        let server_s = in_process.then_some(cpu_split.server_s);
        let cpu = CpuReport {
            per_1000_ops_s: cpu.process_s.and_then(per_1000_ops),
            generator_s: cpu_split.generator_s,
            generator_threads: cpu_split.generator_threads,
            server_s,
            server_threads: in_process.then_some(cpu_split.server_threads),
            server_per_1000_ops_s: server_s.and_then(per_1000_ops),
            usage: cpu,
        };
        Ok(PhaseSummary {
            name: plan.name,
            rooms: plan.rooms,
            members: plan.members,
            setup_s,
            pregenerated_messages: pregenerated,
            pregenerate_s,
            measured,
            cpu,
            raft: match (raft_before, raft_after) {
                (Some(before), Some(after)) => Some(raft_report(before, after)),
                _ => cluster_raft,
            },
            raft_follower: match (follower_before, follower_after) {
                (Some(before), Some(after)) => Some(raft_report(before, after)),
                _ => None,
            },
            cluster,
            fanout,
            group_size,
            split,
        })
    }
}

/// The sizes of the senders' rooms (for senders that change them), or `None`.
fn group_sizes<S: PhaseSender>(senders: &[S], start: u32) -> Option<GroupSizeReport> {
    let sizes: Vec<usize> = senders.iter().filter_map(PhaseSender::group_size).collect();
    let (min, max) = (sizes.iter().min()?, sizes.iter().max()?);
    Some(GroupSizeReport {
        start,
        end_min: *min,
        end_max: *max,
        end_mean: (sizes.iter().sum::<usize>() as f64 / sizes.len() as f64 * 10.0).round() / 10.0,
    })
}

/// How many operations each sender may perform: its open-model timetable over the phase, or
/// an equal share of `--max-ops` (default `closed_default` in all) in the closed model.
fn ops_budget(
    model: LoadModel,
    common: &CommonArgs,
    n_senders: usize,
    closed_default: u64,
) -> anyhow::Result<Vec<u64>> {
    let n = n_senders as u64;
    Ok(match model {
        LoadModel::Open { rate } => {
            let schedule = OpenSchedule::new(rate, n)?;
            let cap = common.load.max_ops.unwrap_or(u64::MAX);
            (0..n)
                .map(|i| schedule.ops_within(i, common.load.duration).min(cap))
                .collect()
        }
        LoadModel::Closed { .. } => {
            let total = common.load.max_ops.unwrap_or(closed_default);
            (0..n)
                .map(|i| total / n + u64::from(i < total % n))
                .collect()
        }
    })
}

async fn read_raft(admin: Option<SocketAddr>) -> Option<RaftCounters> {
    let admin = admin?;
    match raft_counters(admin).await {
        Ok(counters) => Some(counters),
        Err(error) => {
            eprintln!("# cannot read the node's Raft counters: {error:#}");
            None
        }
    }
}

/// Every cluster node's `/metrics`, in node order; `None` outside the cluster scenario or if a
/// node cannot be read.
async fn read_cluster(provider: &Provider) -> Option<Vec<NodeSample>> {
    if provider.cluster.is_empty() {
        return None;
    }
    let mut samples = Vec::with_capacity(provider.cluster.len());
    for member in &provider.cluster {
        match node_sample(member.admin).await {
            Ok(sample) => samples.push(sample),
            Err(error) => {
                eprintln!("# cannot read node {}'s metrics: {error:#}", member.node_id);
                return None;
            }
        }
    }
    Some(samples)
}

/// [`read_cluster`], read again (for at most [`LEADERS_SETTLE`]) while the nodes' leadership
/// gauges do not add up to the shard count (split shards included): each node updates its
/// gauge on its own, so a leadership that just moved may be counted twice or not at all.
async fn settled_cluster(provider: &Provider) -> Option<Vec<NodeSample>> {
    let shards = match provider.description {
        NodeDescription::InProcess {
            shards,
            split_shards,
            ..
        } => shards + split_shards.unwrap_or(0),
        NodeDescription::Target { .. } => return None,
    };
    let deadline = Instant::now() + LEADERS_SETTLE;
    // Bounded by LEADERS_SETTLE.
    loop {
        let samples = read_cluster(provider).await?;
        let led: u64 = samples.iter().map(|s| s.shards_led).sum();
        if led == shards || Instant::now() >= deadline {
            return Some(samples);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn raft_sum(samples: &[NodeSample]) -> RaftCounters {
    samples
        .iter()
        .fold(RaftCounters::default(), |sum, s| RaftCounters {
            proposals: sum.proposals + s.raft.proposals,
            applied: sum.applied + s.raft.applied,
            flushes: sum.flushes + s.raft.flushes,
        })
}

fn cluster_report(
    provider: &Provider,
    rooms: u32,
    accepted: u64,
    before: &[NodeSample],
    after: &[NodeSample],
    delivery: Option<Delivery>,
) -> ClusterReport {
    let nodes: Vec<ClusterNodeReport> = provider
        .cluster
        .iter()
        .zip(before.iter().zip(after))
        .enumerate()
        .map(|(index, (member, (before, after)))| ClusterNodeReport {
            node_id: member.node_id,
            senders: (0..u64::from(rooms))
                .filter(|&room| sender_node(room, provider.cluster.len()) == index)
                .count(),
            shards_led: after.shards_led,
            push_streams: after.push_streams,
            rooms_active: after.rooms_active,
            raft: raft_report(before.raft, after.raft),
            forwarded: after
                .forwarded
                .iter()
                .map(|(outcome, n)| {
                    let earlier = before.forwarded.get(outcome).copied().unwrap_or(0);
                    (outcome.clone(), n.saturating_sub(earlier))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            forwarded_since_start: after
                .forwarded
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(outcome, n)| (outcome.clone(), *n))
                .collect(),
            remote_reads: after
                .remote_reads
                .iter()
                .map(|(key, n)| {
                    let earlier = before.remote_reads.get(key).copied().unwrap_or(0);
                    (key.clone(), n.saturating_sub(earlier))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        })
        .collect();
    let forwarded_applied: u64 = nodes
        .iter()
        .map(|node| {
            node.forwarded
                .get(FORWARDED_ROOM_APPLIED)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    ClusterReport {
        shards_led_total: nodes.iter().map(|node| node.shards_led).sum(),
        forwarded_applied,
        forwarded_share: (accepted > 0)
            .then(|| (forwarded_applied as f64 / accepted as f64 * 1000.0).round() / 1000.0),
        nodes,
        delivery,
    }
}

fn raft_report(before: RaftCounters, after: RaftCounters) -> RaftReport {
    let applied = after.applied.saturating_sub(before.applied);
    let flushes = after.flushes.saturating_sub(before.flushes);
    RaftReport {
        proposals: after.proposals.saturating_sub(before.proposals),
        applied,
        flushes,
        entries_per_flush: (flushes > 0)
            .then(|| (applied as f64 / flushes as f64 * 10.0).round() / 10.0),
    }
}

fn run_config(scenario: &Scenario, common: &CommonArgs) -> RunConfig {
    let load = &common.load;
    let mut config = RunConfig {
        load_model: match load.model() {
            LoadModel::Open { .. } => "open",
            LoadModel::Closed { .. } => "closed",
        },
        rate: load.rate,
        concurrency: load.concurrency,
        duration_s: load.duration.as_secs_f64(),
        max_ops: load.max_ops,
        timeout_ms: load.timeout_ms,
        rooms: 0,
        members: None,
        group_sizes: None,
        message_bytes: None,
        encryption: None,
        nodes: None,
        attached_members: None,
        split_shards: None,
        split_at_s: None,
        client_threads: common.client_threads,
        setup_concurrency: common.setup_concurrency,
    };
    match scenario {
        Scenario::Messages(args) => {
            config.rooms = args.rooms;
            config.members = Some(args.members);
            config.message_bytes = Some(args.message_bytes);
            config.encryption = Some(encryption_name(args.encryption));
        }
        Scenario::Commits(args) => {
            config.rooms = args.rooms;
            config.group_sizes = Some(args.group_size.clone());
        }
        Scenario::CrossProvider(args) => {
            config.rooms = args.rooms;
            config.members = Some(2);
            config.message_bytes = Some(args.message_bytes);
            config.encryption = Some(encryption_name(args.encryption));
        }
        Scenario::Cluster(args) => {
            config.rooms = args.rooms;
            config.members = Some(2);
            config.message_bytes = Some(args.message_bytes);
            config.encryption = Some(encryption_name(args.encryption));
            config.nodes = Some(args.nodes);
            config.attached_members = Some(!args.detached_members);
            config.split_shards = (args.split_shards > 0).then_some(args.split_shards);
            config.split_at_s = args.split_at.map(|at| round_millis(at.as_secs_f64()));
        }
        Scenario::IdleDensity(args) => config.rooms = args.rooms,
        Scenario::Dm(args) => {
            config.rooms = args.rooms;
            config.members = Some(2);
            config.message_bytes = Some(args.message_bytes);
            config.encryption = Some(encryption_name(args.encryption));
        }
        Scenario::SmallRooms(args) => {
            config.rooms = args.rooms;
            config.members = Some(args.members);
            config.message_bytes = Some(args.message_bytes);
            config.encryption = Some(encryption_name(args.encryption));
        }
        Scenario::LargeRoomFanout(args) => {
            config.rooms = args.rooms;
            config.members = Some(args.members);
            config.message_bytes = Some(args.message_bytes);
            config.encryption = Some(encryption_name(Encryption::Pregenerated));
        }
        Scenario::CommitChurn(args) => {
            config.rooms = args.rooms;
            config.group_sizes = Some(args.group_size.clone());
        }
        Scenario::JoinStorm(args) => {
            config.rooms = args.rooms;
            config.members = Some(args.members);
        }
    }
    config
}

fn scenario_options(scenario: &Scenario) -> Option<ScenarioOptions> {
    match scenario {
        Scenario::LargeRoomFanout(args) => Some(ScenarioOptions {
            providers: Some(args.providers),
            senders_per_room: Some(args.senders),
            members_per_connection: Some(args.members_per_connection),
            ..ScenarioOptions::default()
        }),
        Scenario::CommitChurn(args) => Some(ScenarioOptions {
            mix: Some(args.mix),
            ..ScenarioOptions::default()
        }),
        _ => None,
    }
}

fn replicas_name(replicas: ClusterReplicas) -> &'static str {
    match replicas {
        ClusterReplicas::R => "r",
        ClusterReplicas::All => "all",
    }
}

fn encryption_name(encryption: Encryption) -> &'static str {
    match encryption {
        Encryption::Pregenerated => "pregenerated",
        Encryption::Live => "live",
    }
}

/// What an operation is in the scenarios of `group`, `fanout`, `churn` and `join`.
fn more_notes(scenario: &Scenario) -> Option<Vec<String>> {
    let corrected = "latency_corrected counts from the intended start (open model, coordinated \
        omission corrected); latency_raw from the actual start. They are equal in the closed \
        model."
        .to_string();
    let encryption = |encryption: Encryption| match encryption {
        Encryption::Pregenerated => "Messages were encrypted (MimiClient::prepare_text) \
            before the timed phase; the recipients' decryption is inside the measured path."
            .to_string(),
        Encryption::Live => "Messages were encrypted one by one inside the timed phase \
            (--encryption live), and every recipient decrypts each: both compete for the CPU."
            .to_string(),
    };
    Some(match scenario {
        Scenario::Dm(args) => vec![
            "Rooms of 2 members, both attached by their push streams and sending in turn. An \
             operation is one message, counted when the other member has it: accepted by the \
             provider (durable in its Raft log, applied), pushed on the other member's stream \
             and decrypted by its client. One message in flight per room."
                .to_string(),
            encryption(args.encryption),
            corrected,
        ],
        Scenario::SmallRooms(args) => vec![
            format!(
                "Rooms of {} members, every one attached by its push stream and sending in \
                 turn. An operation is one message, counted when all {} other members have \
                 it (pushed and decrypted): the latency is that of the last recipient. One \
                 message in flight per room; fanout.deliveries counts every recipient.",
                args.members,
                args.members - 1
            ),
            encryption(args.encryption),
            corrected,
        ],
        Scenario::LargeRoomFanout(args) => vec![
            format!(
                "Rooms of {} members over {} provider(s) in this process (member j at provider \
                 j mod {}; a.example hosts the rooms and notifies the others, protocol-06 \
                 §5.4). {} sender(s) per room at the hub, the other members attached by their \
                 push streams. An operation is one message, counted when every attached \
                 member has been pushed it.",
                args.members, args.providers, args.providers, args.senders
            ),
            "The receiving members are light clients: real KeyPackages, added by real \
             Commits, reading their real push streams, but without an MLS group of their own: \
             they count the messages pushed to them (matched by the hash of the ciphertext) \
             instead of decrypting them, so the generator's openmls does not bound the figure. \
             fanout.deliveries is what they counted during the phase."
                .to_string(),
            "The senders' messages were encrypted before the timed phase.".to_string(),
            corrected,
        ],
        Scenario::CommitChurn(args) => vec![
            format!(
                "Each room's creator commits, one Commit at a time, adds, removes and updates \
                 in the ratio {}:{}:{} (by_operation: add, remove, update). An add claims one \
                 KeyPackage of a user outside the room (protocol-06 §5.1) and commits the Add \
                 with the participant-list update; a remove commits the Remove of a member's \
                 client with the participant-list update; an update is an empty Commit with a \
                 path (RFC 9420 §12.4). Counted when the hub accepted the Commit (durable, \
                 applied) and the creator merged it.",
                args.mix.add, args.mix.remove, args.mix.update
            ),
            "The other members are light clients that never come online (registered with \
             enough KeyPackages before the phase); nobody but the hub processes the Commits, \
             and building each Commit (openmls, client side) is inside the timed phase: see \
             cpu.generator_threads."
                .to_string(),
            corrected,
        ],
        Scenario::JoinStorm(_) => vec![
            "An operation is one join by external commit (MIMI.md §6.6): a new device of the \
             room creator's user fetches the room's GroupInfo, ratchet tree and pending \
             proposals from the hub (protocol-06 §5.5, HPKE-encrypted to it and signed with \
             the hub's key), builds the external commit and submits it; counted when the hub \
             accepted it (durable, applied). Joins into one room are sequential; rooms run in \
             parallel. The devices were registered before the phase."
                .to_string(),
            corrected,
        ],
        _ => return None,
    })
}

fn notes(scenario: &Scenario, node: &NodeDescription) -> Vec<String> {
    let mut notes = Vec::new();
    if let Scenario::CrossProvider(args) = scenario {
        notes.push(
            "An operation is one message from Alice@a.example to Bob@b.example, counted when \
             Bob has it: accepted by the hub a.example (durable in its Raft log, applied), \
             notified to b.example (protocol-06 §5.4), appended durably to b's mirror of the \
             room, pushed on Bob's stream and decrypted by his client. Each room has one \
             message in flight."
                .to_string(),
        );
        notes.push(
            "latency_corrected counts from Alice's intended send time (open model, coordinated \
             omission corrected) to Bob's receipt; latency_raw from the actual send. They are \
             equal in the closed model."
                .to_string(),
        );
        notes.push(match args.encryption {
            Encryption::Pregenerated => "Alice's messages were encrypted before the timed \
                phase; Bob's decryption is inside the measured path."
                .to_string(),
            Encryption::Live => "Alice's messages were encrypted one by one inside the timed \
                phase (--encryption live), and Bob decrypts each: both compete for the CPU."
                .to_string(),
        });
    } else if let Scenario::Cluster(args) = scenario {
        let layout = match args.replicas {
            ClusterReplicas::All => "every shard has R voters (cluster.replication_factor, \
                all nodes when fewer) and a learner on every other node (--replicas all), so \
                every node persists and applies every entry"
                .to_string(),
            ClusterReplicas::R => "every shard lives on its R voters only \
                (cluster.replication_factor, all nodes when fewer; --replicas r), so with more \
                nodes than R a node serves the rooms of shards it lacks through remote reads \
                and its push streams through one relay per such shard pulling from a holder \
                (ARCHITECTURE.md \"Remote reads\"; cluster.nodes[].remote_reads)"
                .to_string(),
        };
        notes.push(format!(
            "One provider ({}) runs as a cluster of {} nodes in this process; {layout} (sled \
             flush + fdatasync on each when fsync is on). The timed phase started after \
             placement had brought every shard to that layout. An operation is one \
             application message, counted when its sender has the answer: committed by a \
             quorum of the shard's voters and applied at the leader. Room i's sender is \
             connected to node i mod {}: a message reaching a node that does not lead its \
             room's shard is forwarded to the leader (cluster.forwarded_applied).",
            crate::provider::CLUSTER_DOMAIN,
            args.nodes,
            args.nodes
        ));
        notes.push(if args.detached_members {
            "The members joined through their Welcome and disconnected before the timed phase \
             (--detached-members): no push stream is attached, as in the messages scenario."
                .to_string()
        } else {
            "Each room's other member is connected to the next node with its push stream \
             open and reads and decrypts every message during the phase (bench-client CPU), \
             so each node's room actors push to the streams connected there; \
             cluster.delivery says what they got."
                .to_string()
        });
        notes.push(
            "latency_corrected counts from the intended start (open model, coordinated \
             omission corrected); latency_raw from the actual start. They are equal in the \
             closed model."
                .to_string(),
        );
        if !args.detached_members {
            notes.push(
                "cluster.delivery checks every message by the number in its text: lost \
                 (acknowledged, never delivered), duplicated (delivered more than once) and \
                 out_of_order (after a later message of its sender) must be 0; \
                 unacknowledged_delivered are messages whose send failed or timed out but \
                 which the provider had accepted (null without numbers: --message-bytes below \
                 48)."
                    .to_string(),
            );
        }
        if let Some(at) = args.split_at {
            notes.push(format!(
                "At {:.3} s into the phase the hashed shard holding the most of the bench's \
                 rooms split ({} split shards, cluster.split_shards), through POST \
                 /admin/shards/split on node 1, as an operator would ask: about half its \
                 rooms moved to a split shard one by one (freeze, adopt, repin, release; \
                 ARCHITECTURE.md \"Shard splits\") while the senders went on. split.windows \
                 has the operations meant to start before the request, between the request \
                 and its answer, and after, by their intended start (latency_corrected \
                 includes a send's wait for its room's move); split.moves what the nodes' \
                 room-move metrics counted over the phase. Every node runs in this process on \
                 the same CPUs: a split adds no CPU, so this shows the cost of the moves, not a \
                 gain in throughput.",
                at.as_secs_f64(),
                args.split_shards
            ));
        }
    } else if let Some(scenario_notes) = more_notes(scenario) {
        notes.extend(scenario_notes);
    } else {
        notes.extend([
            "Operations are counted when the provider accepted them: durable in the Raft log \
             (sled flush + fdatasync when fsync is on), applied, and answered."
                .to_string(),
            "Only each room's creator acts; the other members joined through their Welcome \
             and disconnected before the timed phase, so no push stream is attached and \
             fan-out is not part of these figures."
                .to_string(),
            "latency_corrected counts from the intended start (open model, coordinated \
             omission corrected); latency_raw from the actual start. They are equal in the \
             closed model."
                .to_string(),
        ]);
    }
    match scenario {
        Scenario::Messages(args) if args.encryption == Encryption::Pregenerated => notes.push(
            "Application messages were encrypted (MimiClient::prepare_text) before the timed \
             phase, so the generator's MLS encryption is not in the measured path."
                .into(),
        ),
        Scenario::Messages(_) => notes.push(
            "Application messages were encrypted one by one inside the timed phase \
             (--encryption live): the generator's MLS encryption competes for the CPU."
                .into(),
        ),
        Scenario::Commits(_) => notes.push(
            "Self-update Commits (RFC 9420 §12.4) by each room's creator on a bare tree: each \
             UpdatePath encrypts to every other member. Building each Commit (openmls, client \
             side) happens inside the timed phase: see cpu.generator_s."
                .into(),
        ),
        Scenario::Cluster(args) if args.encryption == Encryption::Pregenerated => notes.push(
            "Application messages were encrypted (MimiClient::prepare_text) before the timed \
             phase, so the generator's MLS encryption is not in the measured path."
                .into(),
        ),
        Scenario::Cluster(_) => notes.push(
            "Application messages were encrypted one by one inside the timed phase \
             (--encryption live): the generator's MLS encryption competes for the CPU."
                .into(),
        ),
        Scenario::CrossProvider(_)
        | Scenario::IdleDensity(_)
        | Scenario::Dm(_)
        | Scenario::SmallRooms(_)
        | Scenario::LargeRoomFanout(_)
        | Scenario::CommitChurn(_)
        | Scenario::JoinStorm(_) => {}
    }
    if matches!(node, NodeDescription::InProcess { .. }) {
        notes.push(
            "The node runs in this process on the same CPUs as the generator: \
             cpu.threads_s separates mimid-node-rt (QUIC, API), mimid-raft (Raft driver, sled, \
             fsync, apply with openmls PublicGroup), actix (rooms), sled-io from the \
             generator's threads: bench-client (the clients, their QUIC and openmls), \
             bench-rayon (rayon's pool, where openmls encrypts and derives the clients' \
             UpdatePaths) and bench-main (the main thread, which drives the phase). \
             cpu.generator_s sums cpu.generator_threads, cpu.server_s every other thread \
             (cpu.server_threads); threads that ended during the phase are only in \
             cpu.process_s."
                .into(),
        );
    }
    if matches!(scenario, Scenario::LargeRoomFanout(_)) {
        notes.push(
            "Every provider runs in this process (one runtime, threads mimid-node-rt; each has \
             its own Raft driver mimid-raft and sled): cpu.server_s is all providers together, \
             raft is a.example's and raft_follower b.example's; \
             fanout.deliveries_by_provider gives each provider's share of the pushes."
                .into(),
        );
    }
    if matches!(scenario, Scenario::CrossProvider(_)) {
        notes.push(
            "Both providers run in this process (one runtime, threads mimid-node-rt; each has \
             its own Raft driver mimid-raft and sled): cpu.server_s is the two providers \
             together, raft is a.example's and raft_follower b.example's."
                .into(),
        );
    }
    if matches!(scenario, Scenario::Cluster(_)) {
        notes.push(
            "Every node runs in this process (one runtime, threads mimid-node-rt; each node has \
             its own Raft driver mimid-raft, sled and node-to-node QUIC transport): \
             cpu.server_s is all nodes together; raft sums every node's counters (applied \
             counts each entry once per node), cluster.nodes has each node's."
                .into(),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn common_of(args: &[&str]) -> CommonArgs {
        match Cli::try_parse_from(args).expect("valid").scenario {
            Scenario::Messages(m) => m.common,
            Scenario::Commits(c) => c.common,
            Scenario::CrossProvider(x) => x.common,
            Scenario::Cluster(c) => c.common,
            Scenario::Dm(d) => d.common,
            Scenario::SmallRooms(s) => s.common,
            Scenario::LargeRoomFanout(l) => l.common,
            Scenario::CommitChurn(c) => c.common,
            Scenario::JoinStorm(j) => j.common,
            Scenario::IdleDensity(_) => panic!("idle-density has no common options"),
        }
    }

    #[test]
    fn closed_model_shares_the_pregeneration_budget_evenly() {
        let common = common_of(&["b", "messages", "--max-ops", "10"]);
        let counts = ops_budget(common.load.model(), &common, 4, DEFAULT_CLOSED_PREGENERATED)
            .expect("counts");
        assert_eq!(counts, vec![3, 3, 2, 2]);
    }

    #[test]
    fn open_model_pregenerates_each_senders_timetable() {
        let common = common_of(&["b", "messages", "--rate", "100", "--duration", "2s"]);
        let counts = ops_budget(common.load.model(), &common, 3, DEFAULT_CLOSED_PREGENERATED)
            .expect("counts");
        assert_eq!(counts.iter().sum::<u64>(), 200);
        assert_eq!(counts, vec![67, 67, 66]);
    }

    #[test]
    fn phases_are_one_per_group_size_or_one() {
        let plans = |args: &[&str]| {
            let scenario = Cli::try_parse_from(args).expect("valid").scenario;
            phase_plans(&scenario, "localhost", "t").expect("plans")
        };
        let churn = plans(&["b", "commit-churn", "--group-size", "2,8"]);
        let names: Vec<&str> = churn.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["commit-churn group_size=2", "commit-churn group_size=8"]
        );
        assert_eq!(
            churn
                .iter()
                .map(|p| (p.members, p.naming.phase))
                .collect::<Vec<_>>(),
            [(2, 0), (8, 1)],
            "each size has its own members and names"
        );
        assert!(churn.iter().all(|p| p.operation == Operation::SelfUpdate));
        let dm = plans(&["b", "dm", "--message-bytes", "64", "--encryption", "live"]);
        assert_eq!(dm.len(), 1);
        assert_eq!((dm[0].name.as_str(), dm[0].members), ("dm", 2));
        assert_eq!(dm[0].operation, Operation::LiveMessage { text_bytes: 64 });
        assert_eq!(dm[0].kind, PhaseKind::Group);
        let large = plans(&["b", "large-room-fanout", "--senders", "3"]);
        assert_eq!(large[0].operation, Operation::PregeneratedMessage);
        assert_eq!(
            large[0].kind,
            PhaseKind::LargeRoom {
                senders: 3,
                members_per_connection: 1
            }
        );
        let density = Cli::try_parse_from(["b", "idle-density"]).expect("valid");
        assert!(phase_plans(&density.scenario, "localhost", "t").is_err());
    }

    #[test]
    fn raft_report_gives_the_group_commit_batch() {
        let before = RaftCounters {
            proposals: 10,
            applied: 10,
            flushes: 5,
        };
        let after = RaftCounters {
            proposals: 1010,
            applied: 1010,
            flushes: 105,
        };
        let report = raft_report(before, after);
        assert_eq!(report.applied, 1000);
        assert_eq!(report.entries_per_flush, Some(10.0));
        assert_eq!(raft_report(after, after).entries_per_flush, None);
    }
}
