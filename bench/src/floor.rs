//! `mimid-bench commit-floor`: Commits per second through mimid against what the hub must do
//! per Commit at the least (issue 5 item 5; anchors.md G3 and its scaling guard).
//!
//! For each group size:
//! - **mimid**: the commits scenario's operation (`scenario::RoomSender` with
//!   `Operation::SelfUpdate`) under the bench's load engine, against a fresh in-process node
//!   (`provider::Provider::start`, the node's defaults, fsync on): each room's creator builds a
//!   self-update Commit with a path (RFC 9420 §12.4), submits it with its GroupInfo through
//!   the client API, the node commits it durably in Raft and applies it (`RoomState::
//!   handle_handshake`: openmls `PublicGroup::process_message`, room policy, GroupInfo check,
//!   merge, log) and answers, and the creator merges. The rooms are set up here rather than by
//!   the commits scenario: the members register and publish a KeyPackage concurrently and are
//!   added in one Commit, but never join from their Welcome (the hub's work per Commit does
//!   not depend on it), so 1 024-member rooms take seconds instead of minutes of Welcome
//!   processing in the generator.
//! - **floor**: only the hub's openmls work on the same kind of Commit, without network, Raft
//!   or disk: a creator (openmls `MlsGroup` shaped as mimid's rooms: its ciphersuite, group
//!   context extensions, leaf capabilities and credentials, PublicMessage handshakes) adds
//!   `n - 1` members in one Commit and then makes a chain of self-update Commits in advance
//!   (bare tree: each UpdatePath encrypts to every other member, as in the commits scenario);
//!   a hub `PublicGroup` built from the GroupInfo and ratchet tree (`from_external`) then
//!   decodes, processes (`process_message`) and merges (`merge_commit`) each, one after the
//!   other on one thread. Twice: with the store mimid's rooms use (`HubStorage`, which keeps a
//!   serde_json copy of the public state) and with a store that keeps nothing (openmls alone).
//!
//! The floor's latencies go through the bench's recorder (`stats::Recorder`, the same
//! HdrHistograms). The report gives per size mimid's commits/s and CPU per commit (the whole
//! node, and its Raft driver thread alone, where apply runs), the floor's commits/s and cost
//! per commit, their ratios, and a least-squares fit of the floor's cost against the group
//! size (is it linear?).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures::stream::{self, StreamExt, TryStreamExt};
use openmls::prelude::{
    tls_codec::Serialize as _, CredentialWithKey, KeyPackage, MlsGroup, MlsMessageBodyIn,
    MlsMessageIn, OpenMlsProvider, ProcessedMessageContent, ProposalStore, PublicGroup,
    RatchetTreeIn, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{traits, CURRENT_VERSION};
use serde::Serialize;
use tls_codec::DeserializeBytes as _;
use tokio::time::Instant;

use mimid_actors::ids::{ClientId, UserId};
use mimid_actors::policy::{
    default_room_policy, room_group_context_extensions, room_leaf_capabilities,
};
use mimid_actors::room::identity::credential_of_client;
use mimid_actors::room::state::ROOM_CIPHERSUITE;
use mimid_actors::room::storage::HubStorage;
use mimid_node::client::{Endpoint, MimiClient};

use crate::cli::{parse_duration, CommonArgs, LoadModel};
use crate::load::{run_phase, PhaseConfig, PhaseReport};
use crate::provider::Provider;
use crate::run::CLIENT_THREADS_NAME;
use crate::scenario::{add_users, close_all, set_up_each_room, Naming, Operation, RoomSender};
use crate::stats::{round_millis, Percentiles, Recorder, Sample};
use crate::system::{own_cpu_now, CpuSample, CpuUsage, Machine};

/// The Raft driver thread's group in `cpu.threads_s` (`mimid-raft-<node>`): where apply, and
/// so the hub's openmls work, runs.
const RAFT_THREAD: &str = "mimid-raft";
/// Fewest Commits the floor measures per size, whatever the budget.
const MIN_FLOOR_COMMITS: u32 = 5;
/// mimid side: members of one room registered concurrently.
const MEMBER_SETUP_CONCURRENCY: usize = 32;
/// mimid side: time allowed to set up one room (registrations, KeyPackages, the add).
const ROOM_SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Options of `mimid-bench commit-floor`.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Group sizes, one mimid phase (a fresh node) and one floor measurement each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,16,128,1024",
        value_parser = clap::value_parser!(u32).range(2..=4096)
    )]
    pub group_size: Vec<u32>,
    /// mimid: rooms committing in parallel, one value for every size or one per size.
    /// Default: 2048 / size, between 2 and 100 (100, 100, 16, 2 for the default sizes): every
    /// member of every room registers and joins before the phase.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: Option<Vec<u32>>,
    /// Floor: most Commits made in advance and measured per size.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub floor_commits: u32,
    /// Floor: time allowed to make the Commits in advance per size (at least 5 are made).
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub floor_budget: Duration,
    /// Measure the floor only (no mimid node).
    #[arg(long)]
    pub floor_only: bool,
    /// mimid's load, node and output options (as for `commits`); --concurrency is capped at
    /// each size's rooms.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl FloorArgs {
    /// The mimid side's rooms for `size` (the `idx`-th size).
    pub fn rooms_for(&self, idx: usize, size: u32) -> anyhow::Result<u32> {
        match &self.rooms {
            None => Ok((2048 / size).clamp(2, 100)),
            Some(list) if list.len() == 1 => Ok(list[0]),
            Some(list) if list.len() == self.group_size.len() => Ok(list[idx]),
            Some(list) => bail!(
                "--rooms has {} values for {} group sizes: give one, or one per size",
                list.len(),
                self.group_size.len()
            ),
        }
    }
}

/// The JSON summary of a commit-floor run.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: &'static str,
    pub started_unix_s: u64,
    pub machine: Machine,
    pub config: FloorConfig,
    pub sizes: Vec<FloorSize>,
    /// The floor's cost per Commit against the group size.
    pub scaling: Scaling,
    pub notes: Vec<String>,
}

impl FloorReport {
    /// mimid's phases (one per group size) as `--out-dir` writes them; the floor has no
    /// timed phase.
    pub fn view(&self) -> crate::output::RunView<'_> {
        crate::output::RunView {
            scenario: self.scenario,
            phases: self
                .sizes
                .iter()
                .filter_map(|size| {
                    let mimid = size.mimid.as_ref()?;
                    Some(crate::output::PhaseView {
                        name: format!("{} group_size={}", self.scenario, size.group_size),
                        measured: &mimid.measured,
                        windows: &mimid.measured.windows,
                    })
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorConfig {
    pub group_sizes: Vec<u32>,
    pub rooms: Vec<u32>,
    pub floor_commits: u32,
    pub floor_budget_s: f64,
    pub floor_only: bool,
    pub load_model: &'static str,
    pub rate: Option<f64>,
    pub concurrency: Option<u32>,
    pub duration_s: f64,
    pub fsync: bool,
}

/// One group size.
#[derive(Debug, Clone, Serialize)]
pub struct FloorSize {
    pub group_size: u32,
    pub floor: Floor,
    pub mimid: Option<MimidCommits>,
    pub ratios: Option<Ratios>,
}

/// The floor at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Commits made in advance and measured.
    pub commits: u64,
    pub commit_bytes_mean: f64,
    /// Time the creator took to make them (openmls client side, not part of the floor).
    pub pregenerate_s: f64,
    /// The creator's CPU per Commit made, in microseconds (what the generator pays in the
    /// commits scenario).
    pub client_cpu_us_per_commit: Option<f64>,
    /// With mimid's room store (`HubStorage`): the hub's per-Commit work as apply does it.
    pub hub_storage: FloorRun,
    /// With a store that keeps nothing: openmls alone.
    pub no_storage: FloorRun,
}

/// One pass of a hub `PublicGroup` over the Commits.
#[derive(Debug, Clone, Serialize)]
pub struct FloorRun {
    /// Commits per second on one thread.
    pub commits_per_s: f64,
    /// Mean time per Commit: decode + process + merge.
    pub mean_us: f64,
    /// Mean of decode + `process_message`.
    pub process_us: f64,
    /// Mean of `merge_commit`.
    pub merge_us: f64,
    /// This process's CPU over the pass per Commit (above `mean_us` if openmls ran anything
    /// in parallel).
    pub cpu_us_per_commit: Option<f64>,
    /// Per-Commit latency (decode + process + merge).
    pub latency: Percentiles,
}

/// mimid's commits scenario at one size.
#[derive(Debug, Clone, Serialize)]
pub struct MimidCommits {
    pub rooms: u32,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub commits_per_s: f64,
    pub latency_corrected: Percentiles,
    /// The node's CPU per accepted Commit (all its threads: `server_threads`), in
    /// microseconds, as the scenarios' `cpu.server_s`.
    pub server_cpu_us_per_commit: Option<f64>,
    /// The Raft driver thread's CPU per accepted Commit: durable write and apply, where the
    /// openmls validation runs.
    pub raft_thread_cpu_us_per_commit: Option<f64>,
    /// The generator's CPU per accepted Commit (building and merging them:
    /// `generator_threads`, i.e. `bench-client`, rayon's pool `bench-rayon` and the main
    /// thread `bench-main`).
    pub generator_cpu_us_per_commit: Option<f64>,
    /// The thread groups in `generator_cpu_us_per_commit`.
    pub generator_threads: Vec<String>,
    /// The thread groups in `server_cpu_us_per_commit`: every other thread of the process.
    pub server_threads: Vec<String>,
    pub other_processes_s: Option<f64>,
    /// Setting up the rooms (registrations, KeyPackages, the Commit adding the members).
    pub setup_s: f64,
    /// The timed phase, as the scenarios report it.
    #[serde(flatten)]
    pub measured: PhaseReport,
    /// CPU of this process by thread group over the phase.
    pub cpu: CpuUsage,
}

/// mimid against the floor at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// mimid's commits/s over the floor's (with mimid's store).
    pub throughput: f64,
    /// mimid's node CPU per Commit over the floor's time per Commit (with mimid's store):
    /// what the whole server spends per Commit in multiples of the openmls minimum.
    pub server_cpu_over_floor: Option<f64>,
    /// The same for the Raft driver thread alone.
    pub raft_thread_cpu_over_floor: Option<f64>,
}

/// A fit of the floor's cost per Commit (with mimid's store and without) to `a + b·n`.
#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    pub hub_storage: Fit,
    pub no_storage: Fit,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fit {
    /// Fixed cost per Commit, microseconds.
    pub a_us: f64,
    /// Cost per member, microseconds.
    pub b_us_per_member: f64,
    /// Coefficient of determination of the linear fit (1 = a straight line).
    pub r2: f64,
    /// Between consecutive sizes: how the cost grew against the size, ln(c2/c1) / ln(n2/n1)
    /// (1 = proportional, 2 = quadratic; below 1 while the fixed cost dominates).
    pub log_log_slopes: Vec<Slope>,
    /// Whether the cost grows no faster than linearly: every log-log slope at most 1.15.
    pub at_most_linear: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slope {
    pub from: u32,
    pub to: u32,
    pub slope: f64,
}

/// Runs commit-floor. Must not be called from inside a tokio runtime (the mimid side starts
/// its own node and runtime per size).
pub fn run(args: &FloorArgs) -> anyhow::Result<FloorReport> {
    let started_unix_s = crate::peer::now_unix_s()?;
    let machine = Machine::describe();
    let progress = !args.common.output.no_progress;
    let mut rooms = Vec::with_capacity(args.group_size.len());
    for (idx, &size) in args.group_size.iter().enumerate() {
        rooms.push(args.rooms_for(idx, size)?);
    }
    let mut sizes = Vec::with_capacity(args.group_size.len());
    for (idx, &size) in args.group_size.iter().enumerate() {
        if progress {
            eprintln!("# commit-floor: group size {size}: floor (openmls PublicGroup, one thread)");
        }
        let floor = measure_floor(size, args.floor_commits, args.floor_budget)
            .with_context(|| format!("measuring the floor at group size {size}"))?;
        if progress {
            eprintln!(
                "#   floor: {} commits, {:.0} commits/s ({:.1} us each: process {:.1}, merge \
                 {:.1}); without storage {:.0} commits/s",
                floor.commits,
                floor.hub_storage.commits_per_s,
                floor.hub_storage.mean_us,
                floor.hub_storage.process_us,
                floor.hub_storage.merge_us,
                floor.no_storage.commits_per_s,
            );
        }
        let mimid = if args.floor_only {
            None
        } else {
            if progress {
                eprintln!(
                    "# commit-floor: group size {size}: mimid, {} rooms",
                    rooms[idx]
                );
            }
            Some(
                run_mimid(args, size, rooms[idx])
                    .with_context(|| format!("running mimid's Commits at group size {size}"))?,
            )
        };
        let ratios = mimid.as_ref().map(|m| ratios(m, &floor.hub_storage));
        if let (true, Some(m), Some(r)) = (progress, &mimid, &ratios) {
            eprintln!(
                "#   mimid: {:.0} commits/s; node CPU {} us/commit, Raft thread {} us/commit; \
                 mimid/floor throughput {:.3}",
                m.commits_per_s,
                fmt_opt(m.server_cpu_us_per_commit),
                fmt_opt(m.raft_thread_cpu_us_per_commit),
                r.throughput
            );
        }
        sizes.push(FloorSize {
            group_size: size,
            floor,
            mimid,
            ratios,
        });
    }
    let fit_of = |pick: fn(&Floor) -> &FloorRun| {
        let points: Vec<(f64, f64)> = sizes
            .iter()
            .map(|s| (f64::from(s.group_size), pick(&s.floor).mean_us))
            .collect();
        fit(&points)
    };
    let scaling = Scaling {
        hub_storage: fit_of(|f| &f.hub_storage),
        no_storage: fit_of(|f| &f.no_storage),
    };
    let load = &args.common.load;
    Ok(FloorReport {
        tool: "mimid-bench",
        version: env!("CARGO_PKG_VERSION"),
        scenario: "commit-floor",
        started_unix_s,
        machine,
        config: FloorConfig {
            group_sizes: args.group_size.clone(),
            rooms,
            floor_commits: args.floor_commits,
            floor_budget_s: args.floor_budget.as_secs_f64(),
            floor_only: args.floor_only,
            load_model: if load.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate: load.rate,
            concurrency: load.concurrency,
            duration_s: load.duration.as_secs_f64(),
            fsync: !args.common.node.no_fsync,
        },
        sizes,
        scaling,
        notes: vec![
            "floor: a hub PublicGroup (openmls 0.9, mimid's room ciphersuite, extensions and \
             credentials) decodes, processes (process_message) and merges (merge_commit) \
             self-update Commits with a path made in advance by the group's creator on a bare \
             tree (each UpdatePath encrypts to every other member), one after the other on one \
             thread, without network, Raft or disk. hub_storage uses mimid's room store \
             (HubStorage, a serde_json copy of the public state on every merge); no_storage a \
             store that keeps nothing."
                .into(),
            "mimid: the commits scenario's operation (fresh in-process node per size, fsync as \
             configured): client API over HTTP/3, Raft commit (sled + fdatasync), apply \
             (openmls PublicGroup, room policy, GroupInfo signature check, merge, room log), \
             answer. The members were added in one Commit and never joined (the hub's work \
             does not depend on it). The generator builds each Commit inside the timed phase on \
             the same CPUs, so at larger sizes mimid's commits/s is bounded by the clients, not \
             the hub: compare the CPU per Commit (ratios.server_cpu_over_floor, \
             raft_thread_cpu_over_floor). The node's CPU is every thread but the generator's \
             (bench-client, rayon's pool bench-rayon where openmls encrypts the clients' \
             UpdatePaths, and the main thread bench-main): see generator_threads and \
             server_threads."
                .into(),
            "scaling: least-squares fit of the floor's mean time per Commit to a + b*n, and the \
             log-log slope between consecutive sizes (1 = linear, 2 = quadratic)."
                .into(),
        ],
    })
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or("unknown".into(), |v| format!("{v:.0}"))
}

/// mimid's side at one group size: a fresh node, `rooms` rooms of `size` members, one timed
/// phase of self-update Commits by each room's creator.
fn run_mimid(args: &FloorArgs, size: u32, rooms: u32) -> anyhow::Result<MimidCommits> {
    let common = &args.common;
    let mut load = common.load.clone();
    load.concurrency = load.concurrency.map(|c| c.min(rooms));
    let progress = !common.output.no_progress;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.client_threads as usize)
        .thread_name(CLIENT_THREADS_NAME)
        .enable_all()
        .build()
        .context("building the generator's runtime")?;
    let provider = Provider::start(&common.node)?;
    let naming = Naming {
        domain: provider.domain.clone(),
        tag: format!(
            "f{:x}{:x}s{size}",
            crate::peer::now_unix_s()?,
            std::process::id()
        ),
        phase: 0,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let measured = runtime.block_on(async {
        if progress {
            eprintln!("# commit-floor: setting up {rooms} rooms of {size} members");
        }
        let setup_start = Instant::now();
        let (endpoint, naming) = (&provider.endpoint, &naming);
        let senders = set_up_each_room(
            rooms,
            common.setup_concurrency as usize,
            ROOM_SETUP_TIMEOUT,
            |room_idx| set_up_room(endpoint, naming, room_idx, size),
        )
        .await?;
        let setup_s = round_millis(setup_start.elapsed().as_secs_f64());
        let config = PhaseConfig {
            model: load.model(),
            duration: load.duration,
            max_ops: load.max_ops,
            op_timeout: Duration::from_millis(load.timeout_ms),
            progress,
            interrupted: interrupted.clone(),
        };
        if progress {
            eprintln!(
                "# commit-floor: {} for {:?}",
                match config.model {
                    LoadModel::Open { rate } => format!("open model at {rate} commits/s"),
                    LoadModel::Closed { concurrency } => format!(
                        "closed model with {} in flight",
                        concurrency.unwrap_or(rooms)
                    ),
                },
                config.duration
            );
        }
        let cpu_before = CpuSample::take();
        let (senders, measured) = run_phase(senders, config).await?;
        let cpu = CpuSample::take().since(&cpu_before);
        close_all(senders).await;
        anyhow::Ok((setup_s, measured, cpu))
    });
    let shut_down = provider.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(5));
    let (setup_s, measured, cpu) = measured?;
    shut_down.context("shutting the node down")?;
    Ok(mimid_figures(rooms, setup_s, measured, cpu))
}

/// One room: the creator registers and creates it, the other members register and publish a
/// KeyPackage (`MEMBER_SETUP_CONCURRENCY` at a time) and are added in one Commit (MIMI.md
/// §6.1, §6.2); they never join. Returns the creator as the room's sender of self-updates.
async fn set_up_room(
    endpoint: &Endpoint,
    naming: &Naming,
    room_idx: u64,
    size: u32,
) -> anyhow::Result<RoomSender> {
    let room = naming.room(room_idx)?;
    let mut creator = MimiClient::register(endpoint.clone(), naming.client(room_idx, 0)?)
        .await
        .context("registering the creator")?;
    creator
        .create_room(&room)
        .await
        .context("creating the room")?;
    let users: Vec<UserId> = stream::iter(1..size)
        .map(|member| async move {
            let client = MimiClient::register(endpoint.clone(), naming.client(room_idx, member)?)
                .await
                .with_context(|| format!("registering member {member}"))?;
            client
                .publish_key_packages(1)
                .await
                .with_context(|| format!("publishing member {member}'s KeyPackage"))?;
            let user = client.user();
            client.close().await;
            anyhow::Ok(user)
        })
        .buffer_unordered(MEMBER_SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    add_users(&mut creator, &room, &users, "the members").await?;
    Ok(RoomSender::new(
        room_idx,
        creator,
        room,
        Operation::SelfUpdate,
    ))
}

fn mimid_figures(rooms: u32, setup_s: f64, measured: PhaseReport, cpu: CpuUsage) -> MimidCommits {
    let ops_ok = measured.totals.ops_ok;
    let per_commit_us =
        |seconds: f64| (ops_ok > 0).then(|| (seconds * 1e6 / ops_ok as f64 * 10.0).round() / 10.0);
    let split = cpu.split();
    MimidCommits {
        rooms,
        ops_ok,
        ops_failed: measured.totals.ops_failed,
        commits_per_s: measured.throughput_ops_s,
        latency_corrected: measured.totals.latency_corrected,
        server_cpu_us_per_commit: per_commit_us(split.server_s),
        raft_thread_cpu_us_per_commit: cpu
            .threads_s
            .get(RAFT_THREAD)
            .copied()
            .and_then(per_commit_us),
        generator_cpu_us_per_commit: per_commit_us(split.generator_s),
        generator_threads: split.generator_threads,
        server_threads: split.server_threads,
        other_processes_s: cpu.other_processes_s,
        setup_s,
        measured,
        cpu,
    }
}

fn ratios(mimid: &MimidCommits, floor: &FloorRun) -> Ratios {
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let over_floor = |us: Option<f64>| {
        us.filter(|_| floor.mean_us > 0.0)
            .map(|us| round3(us / floor.mean_us))
    };
    Ratios {
        throughput: if floor.commits_per_s > 0.0 {
            round3(mimid.commits_per_s / floor.commits_per_s)
        } else {
            0.0
        },
        server_cpu_over_floor: over_floor(mimid.server_cpu_us_per_commit),
        raft_thread_cpu_over_floor: over_floor(mimid.raft_thread_cpu_us_per_commit),
    }
}

/// A member of the floor's group: its own crypto provider and signature key.
struct Member {
    id: ClientId,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
}

impl Member {
    fn new(index: u32) -> anyhow::Result<Member> {
        let id = ClientId::parse(&format!("mimi://floor.example/d/m{index}/d0"))
            .context("a floor client id")?;
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(ROOM_CIPHERSUITE.signature_algorithm())
            .context("a signature key")?;
        signer
            .store(provider.storage())
            .context("storing the signature key")?;
        Ok(Member {
            id,
            provider,
            signer,
        })
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: credential_of_client(&self.id),
            signature_key: self.signer.public().to_vec().into(),
        }
    }

    fn key_package(&self) -> anyhow::Result<KeyPackage> {
        Ok(KeyPackage::builder()
            .leaf_node_capabilities(room_leaf_capabilities())
            .build(
                ROOM_CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential(),
            )
            .context("building a KeyPackage")?
            .key_package()
            .clone())
    }
}

/// A group of `size` built by its creator, with the GroupInfo (no tree) and ratchet tree the
/// hub starts from, and a chain of self-update Commits made in advance.
struct Prepared {
    group_info: Vec<u8>,
    ratchet_tree: Vec<u8>,
    commits: Vec<Vec<u8>>,
    pregenerate_s: f64,
    client_cpu_us_per_commit: Option<f64>,
}

fn prepare(size: u32, max_commits: u32, budget: Duration) -> anyhow::Result<Prepared> {
    let creator = Member::new(0)?;
    let extensions = room_group_context_extensions(&default_room_policy(&creator.id.user()));
    let mut group = MlsGroup::builder()
        .ciphersuite(ROOM_CIPHERSUITE)
        .with_capabilities(room_leaf_capabilities())
        .with_group_context_extensions(extensions)
        .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .build(&creator.provider, &creator.signer, creator.credential())
        .context("creating the group")?;
    let mut key_packages = Vec::with_capacity(size as usize - 1);
    for index in 1..size {
        key_packages.push(Member::new(index)?.key_package()?);
    }
    let provider = &creator.provider;
    if !key_packages.is_empty() {
        let _ = group
            .commit_builder()
            .propose_adds(key_packages)
            .load_psks(provider.storage())
            .context("loading PSKs")?
            .build(provider.rand(), provider.crypto(), &creator.signer, |_| {
                true
            })
            .context("building the add Commit")?
            .stage_commit(provider)
            .context("staging the add Commit")?;
        group
            .merge_pending_commit(provider)
            .context("merging the add Commit")?;
    }
    let group_info = group
        .export_group_info(provider.crypto(), &creator.signer, false)
        .context("exporting the GroupInfo")?
        .tls_serialize_detached()
        .context("encoding the GroupInfo")?;
    let ratchet_tree = group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .context("encoding the ratchet tree")?;

    let started = std::time::Instant::now();
    let cpu_before = own_cpu_now();
    let mut commits = Vec::new();
    // Bounded by max_commits.
    while (commits.len() as u32) < max_commits
        && (commits.len() < MIN_FLOOR_COMMITS as usize || started.elapsed() < budget)
    {
        let (commit, _, _) = group
            .commit_builder()
            .force_self_update(true)
            .load_psks(provider.storage())
            .context("loading PSKs")?
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), &creator.signer, |_| {
                true
            })
            .context("building a self-update Commit")?
            .stage_commit(provider)
            .context("staging a self-update Commit")?
            .into_messages();
        group
            .merge_pending_commit(provider)
            .context("merging a self-update Commit")?;
        commits.push(
            commit
                .tls_serialize_detached()
                .context("encoding a Commit")?,
        );
    }
    let pregenerate = started.elapsed();
    let client_cpu_us_per_commit = match (own_cpu_now(), cpu_before) {
        (Some(after), Some(before)) if !commits.is_empty() => {
            Some((after.saturating_sub(before).as_secs_f64() * 1e6 / commits.len() as f64).round())
        }
        _ => None,
    };
    Ok(Prepared {
        group_info,
        ratchet_tree,
        commits,
        pregenerate_s: round3(pregenerate.as_secs_f64()),
        client_cpu_us_per_commit,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Makes the Commits and measures both hub passes over them.
fn measure_floor(size: u32, max_commits: u32, budget: Duration) -> anyhow::Result<Floor> {
    let prepared = prepare(size, max_commits, budget)?;
    let hub_storage = hub_pass(&prepared, &HubStorage::default())?;
    let no_storage = hub_pass(&prepared, &NoStorage)?;
    let bytes: usize = prepared.commits.iter().map(Vec::len).sum();
    Ok(Floor {
        commits: prepared.commits.len() as u64,
        commit_bytes_mean: (bytes as f64 / prepared.commits.len().max(1) as f64).round(),
        pregenerate_s: prepared.pregenerate_s,
        client_cpu_us_per_commit: prepared.client_cpu_us_per_commit,
        hub_storage,
        no_storage,
    })
}

/// One hub `PublicGroup` over `storage`, built from the prepared GroupInfo and tree, decoding,
/// processing and merging every prepared Commit in order.
fn hub_pass<S: PublicStorageProvider<CURRENT_VERSION>>(
    prepared: &Prepared,
    storage: &S,
) -> anyhow::Result<FloorRun> {
    let crypto = OpenMlsRustCrypto::default();
    let message = MlsMessageIn::tls_deserialize_exact_bytes(&prepared.group_info)
        .context("decoding the GroupInfo")?;
    let MlsMessageBodyIn::GroupInfo(verifiable) = message.extract() else {
        bail!("the exported GroupInfo is not a GroupInfo");
    };
    let tree = RatchetTreeIn::tls_deserialize_exact_bytes(&prepared.ratchet_tree)
        .context("decoding the ratchet tree")?;
    let (mut group, _) = PublicGroup::from_external(
        crypto.crypto(),
        storage,
        tree,
        verifiable,
        ProposalStore::new(),
    )
    .map_err(|error| anyhow::anyhow!("PublicGroup::from_external: {error}"))?;

    let mut recorder = Recorder::new();
    let mut process_total = Duration::ZERO;
    let mut merge_total = Duration::ZERO;
    let start = Instant::now();
    let cpu_before = own_cpu_now();
    for (k, bytes) in prepared.commits.iter().enumerate() {
        let began = start.elapsed();
        let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)
            .with_context(|| format!("decoding Commit {k}"))?;
        let MlsMessageBodyIn::PublicMessage(public) = message.extract() else {
            bail!("Commit {k} is not a PublicMessage");
        };
        let processed = group
            .process_message(crypto.crypto(), public)
            .map_err(|error| anyhow::anyhow!("processing Commit {k}: {error}"))?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            bail!("Commit {k} did not stage as a plain Commit");
        };
        let processed_at = start.elapsed();
        group
            .merge_commit(storage, *staged)
            .map_err(|error| anyhow::anyhow!("merging Commit {k}: {error:?}"))?;
        let finished = start.elapsed();
        process_total += processed_at - began;
        merge_total += finished - processed_at;
        recorder.handle_success(Sample::immediate(began, finished));
    }
    let elapsed = start.elapsed();
    let n = prepared.commits.len().max(1) as f64;
    let cpu_us_per_commit = match (own_cpu_now(), cpu_before) {
        (Some(after), Some(before)) => {
            Some((after.saturating_sub(before).as_secs_f64() * 1e6 / n).round())
        }
        _ => None,
    };
    let us = |d: Duration| (d.as_secs_f64() * 1e6 / n * 10.0).round() / 10.0;
    Ok(FloorRun {
        commits_per_s: (n / elapsed.as_secs_f64().max(1e-9)).round(),
        mean_us: us(process_total + merge_total),
        process_us: us(process_total),
        merge_us: us(merge_total),
        cpu_us_per_commit,
        latency: recorder.totals().latency_raw,
    })
}

/// Least-squares fit of `points` (size, µs) to `a + b·n`, with the log-log slopes.
fn fit(points: &[(f64, f64)]) -> Fit {
    let n = points.len() as f64;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let slopes: Vec<Slope> = points
        .windows(2)
        .filter(|w| w[0].0 > 0.0 && w[1].0 > w[0].0 && w[0].1 > 0.0 && w[1].1 > 0.0)
        .map(|w| Slope {
            from: w[0].0 as u32,
            to: w[1].0 as u32,
            slope: round((w[1].1 / w[0].1).ln() / (w[1].0 / w[0].0).ln()),
        })
        .collect();
    let at_most_linear = slopes.iter().all(|s| s.slope <= 1.15);
    if points.len() < 2 {
        return Fit {
            a_us: points.first().map_or(0.0, |p| round(p.1)),
            b_us_per_member: 0.0,
            r2: 1.0,
            log_log_slopes: slopes,
            at_most_linear,
        };
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let a = mean_y - b * mean_x;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    let ss_res: f64 = points.iter().map(|p| (p.1 - (a + b * p.0)).powi(2)).sum();
    Fit {
        a_us: round(a),
        b_us_per_member: round(b),
        r2: if ss_tot > 0.0 {
            round(1.0 - ss_res / ss_tot)
        } else {
            1.0
        },
        log_log_slopes: slopes,
        at_most_linear,
    }
}

/// A `PublicStorageProvider` that keeps nothing: the floor of openmls alone. `PublicGroup`
/// reads its store only in `load`, which the floor does not call.
struct NoStorage;

/// [`NoStorage`] never fails.
#[derive(Debug, thiserror::Error)]
#[error("no storage")]
struct NoStorageError;

impl PublicStorageProvider<CURRENT_VERSION> for NoStorage {
    type PublicError = NoStorageError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        _: &T,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &H,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &C,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &T,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &R,
        _: &P,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Vec<(R, P)>, NoStorageError> {
        Ok(Vec::new())
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, NoStorageError> {
        Ok(None)
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<C>, NoStorageError> {
        Ok(None)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<H>, NoStorageError> {
        Ok(None)
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<T>, NoStorageError> {
        Ok(None)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &R,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<(), NoStorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Scenario;
    use clap::Parser as _;

    #[test]
    fn a_straight_line_fits_exactly_and_is_linear() {
        let points: Vec<(f64, f64)> = [2.0, 16.0, 128.0, 1024.0]
            .iter()
            .map(|&n| (n, 100.0 + 2.0 * n))
            .collect();
        let fit = fit(&points);
        assert!((fit.a_us - 100.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.b_us_per_member - 2.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.r2 - 1.0).abs() < 1e-9, "{fit:?}");
        assert!(fit.at_most_linear);
        assert_eq!(fit.log_log_slopes.len(), 3);
        assert!(fit.log_log_slopes.iter().all(|s| s.slope <= 1.0));
    }

    #[test]
    fn quadratic_growth_is_not_linear() {
        let points: Vec<(f64, f64)> = [2.0, 16.0, 128.0]
            .iter()
            .map(|&n| (n, 10.0 + 0.5 * n * n))
            .collect();
        let fit = fit(&points);
        assert!(!fit.at_most_linear, "{fit:?}");
        assert!(fit.log_log_slopes.last().is_some_and(|s| s.slope > 1.9));
        assert!(fit.r2 < 1.0);
    }

    #[test]
    fn rooms_default_to_2048_over_the_size_within_bounds() {
        let args = FloorArgs {
            group_size: vec![2, 16, 128, 1024, 4096],
            rooms: None,
            floor_commits: 10,
            floor_budget: Duration::from_secs(1),
            floor_only: true,
            common: crate::cli::Cli::try_parse_from(["b", "commits"])
                .map(|cli| match cli.scenario {
                    Scenario::Commits(c) => c.common,
                    _ => unreachable!("commits parsed"),
                })
                .expect("valid"),
        };
        let rooms: Vec<u32> = args
            .group_size
            .iter()
            .enumerate()
            .map(|(i, &s)| args.rooms_for(i, s).expect("rooms"))
            .collect();
        assert_eq!(rooms, vec![100, 100, 16, 2, 2]);
        let two = FloorArgs {
            rooms: Some(vec![1, 2]),
            ..args.clone()
        };
        assert!(two.rooms_for(0, 2).is_err(), "two values for five sizes");
        let one = FloorArgs {
            rooms: Some(vec![7]),
            ..args
        };
        assert_eq!(one.rooms_for(3, 1024).expect("rooms"), 7);
    }

    /// The floor's hub accepts every prepared Commit, in both passes, and the store mimid
    /// uses costs something on top of openmls (RFC 9420 §12.4 self-updates).
    #[test]
    fn the_floor_processes_a_chain_of_self_updates_rfc9420_12_4() {
        let floor = measure_floor(4, 8, Duration::from_millis(1)).expect("floor");
        assert_eq!(floor.commits, u64::from(MIN_FLOOR_COMMITS));
        assert_eq!(floor.hub_storage.latency.count, floor.commits);
        assert_eq!(floor.no_storage.latency.count, floor.commits);
        assert!(floor.hub_storage.commits_per_s > 0.0);
        assert!(floor.commit_bytes_mean > 0.0);
        assert!(
            floor.hub_storage.process_us > 0.0 && floor.hub_storage.merge_us > 0.0,
            "{floor:?}"
        );
    }
}
