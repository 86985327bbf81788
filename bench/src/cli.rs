//! The command line: one subcommand per scenario, with shared load, node and output options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and benchmarks for mimid: real openmls clients through the real HTTP/3
/// client API, against a single-node provider started in process (default) or an already
/// running one (`--target`).
#[derive(Debug, Clone, Parser)]
#[command(name = "mimid-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Accepted application messages per second into N rooms of M members (protocol-06 §5.3).
    /// Each room's creator sends; the other members join through their Welcome and then
    /// disconnect, so no push stream is attached and the figure is the accept path: decode,
    /// authenticate, replicate durably, apply, answer.
    Messages(MessagesArgs),
    /// Accepted Commits per second (self-update commits with a path, RFC 9420 §12.4) at the
    /// given group sizes. Each room's commits are sequential (the next is built after the
    /// previous one is merged); rooms run in parallel.
    Commits(CommitsArgs),
    /// Application messages from a user of one provider to a user of another (protocol-06
    /// §5.3, §5.4): providers a.example (the rooms' hub) and b.example start in this process;
    /// in each room Alice@a sends and Bob@b receives on his push stream at b. An operation ends
    /// when Bob has the message, so latency runs from Alice's intended send time to Bob's
    /// receipt.
    CrossProvider(CrossProviderArgs),
    /// Replicated application messages per second and their acknowledgement latency on one
    /// provider run as a cluster of nodes in this process (3 by default; ARCHITECTURE.md
    /// "Cluster"): each room's sender is connected to node `room % nodes` and its other member
    /// to the next node, attached by its push stream, so with 3 nodes two thirds of the
    /// messages are forwarded to their shard's leader and every node pushes to its own streams
    /// (`--replicas`, `--nodes` above R: from its own replicas or through relays).
    Cluster(ClusterArgs),
    /// Resident memory and idle CPU of a node holding N mostly idle rooms of 2 members: a real
    /// `mimid start` child process (so its memory is measured alone), N rooms created through
    /// the client API, then an idle window measured from /proc/PID.
    IdleDensity(IdleDensityArgs),
    /// 1:1 rooms with both members attached by their push streams, taking turns: an
    /// operation is one message, counted when the other member has decrypted it.
    Dm(DmArgs),
    /// Rooms of 8 members (`--members`), every one attached and taking turns: an operation is
    /// one message, counted when all 7 others have decrypted it; recipient deliveries/s too.
    SmallRooms(SmallRoomsArgs),
    /// A few rooms of 1,000+ members spread over up to three providers (a.example hosts the
    /// rooms, b.example and c.example follow), every member attached by its push stream: an
    /// operation is one message, counted when every member has been pushed it; recipient
    /// deliveries/s per provider.
    LargeRoomFanout(LargeRoomFanoutArgs),
    /// Membership Commits at given group sizes (2 to 2,048): a mix of adds, removes and
    /// updates by each room's creator, one Commit at a time per room; commits/s and latency
    /// per kind.
    CommitChurn(CommitChurnArgs),
    /// Joins by external commit (MIMI.md §6.6): new devices of each room's creator fetch the
    /// room's GroupInfo (protocol-06 §5.5) and commit themselves in, at a target rate.
    JoinStorm(JoinStormArgs),
}

impl Scenario {
    /// The scenario's name, as on the command line and in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Messages(_) => "messages",
            Scenario::Commits(_) => "commits",
            Scenario::CrossProvider(_) => "cross-provider",
            Scenario::Cluster(_) => "cluster",
            Scenario::IdleDensity(_) => "idle-density",
            Scenario::Dm(_) => "dm",
            Scenario::SmallRooms(_) => "small-rooms",
            Scenario::LargeRoomFanout(_) => "large-room-fanout",
            Scenario::CommitChurn(_) => "commit-churn",
            Scenario::JoinStorm(_) => "join-storm",
        }
    }

    /// The load, node and output options of a scenario with timed phases; `None` for
    /// idle-density, which has no load phase.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Scenario::Messages(args) => Some(&args.common),
            Scenario::Commits(args) => Some(&args.common),
            Scenario::CrossProvider(args) => Some(&args.common),
            Scenario::Cluster(args) => Some(&args.common),
            Scenario::IdleDensity(_) => None,
            Scenario::Dm(args) => Some(&args.common),
            Scenario::SmallRooms(args) => Some(&args.common),
            Scenario::LargeRoomFanout(args) => Some(&args.common),
            Scenario::CommitChurn(args) => Some(&args.common),
            Scenario::JoinStorm(args) => Some(&args.common),
        }
    }

    /// Where the report goes.
    pub fn output(&self) -> &OutputArgs {
        match self {
            Scenario::Messages(args) => &args.common.output,
            Scenario::Commits(args) => &args.common.output,
            Scenario::CrossProvider(args) => &args.common.output,
            Scenario::Cluster(args) => &args.common.output,
            Scenario::IdleDensity(args) => &args.output,
            Scenario::Dm(args) => &args.common.output,
            Scenario::SmallRooms(args) => &args.common.output,
            Scenario::LargeRoomFanout(args) => &args.common.output,
            Scenario::CommitChurn(args) => &args.common.output,
            Scenario::JoinStorm(args) => &args.common.output,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MessagesArgs {
    /// Rooms, each with one sender.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: u32,
    /// Members per room, the sender included.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub members: u32,
    /// Length of each message's text (MIMI content text/plain), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub message_bytes: u32,
    /// When messages are encrypted: all before the timed phase (`pregenerated`, so the
    /// generator's openmls cost is outside the measurement), or one by one in it (`live`).
    #[arg(long, value_enum, default_value_t = Encryption::Pregenerated)]
    pub encryption: Encryption,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CommitsArgs {
    /// Rooms committing in parallel, each with one committer.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: u32,
    /// Members per room; several sizes (`2,16`) run one after another as separate phases.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2",
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub group_size: Vec<u32>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CrossProviderArgs {
    /// Rooms, each with Alice@a.example sending and Bob@b.example receiving; one message in
    /// flight per room.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,
    /// Length of each message's text (MIMI content text/plain), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(i64::from(crate::cross::MIN_TEXT_BYTES)..=65_536))]
    pub message_bytes: u32,
    /// When Alice's messages are encrypted: all before the timed phase (`pregenerated`) or one
    /// by one in it (`live`). Bob decrypts inside the timed phase either way.
    #[arg(long, value_enum, default_value_t = Encryption::Pregenerated)]
    pub encryption: Encryption,
    /// In-process providers only: `--target` is refused.
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Rooms, each with one sender; rooms hash onto the shards, whose leaders spread over the
    /// nodes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: u32,
    /// Nodes of the provider's cluster. Every shard has R voters (`cluster.replication_factor`,
    /// 3; all nodes when fewer) and, with `--replicas r`, lives on those R nodes only: a node
    /// serves the rooms of shards it lacks through remote reads and push-stream relays.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=mimid_node::demo::MAX_LOOPBACK_NODES))]
    pub nodes: u64,
    /// `cluster.replicas` of the nodes: `r`, each shard on its R voters only (the node's
    /// default), or `all`, a learner of every shard on every other node as well. The timed
    /// phase starts once placement has trimmed the shards to that layout.
    #[arg(long, value_enum, default_value_t = ClusterReplicas::R)]
    pub replicas: ClusterReplicas,
    /// Length of each message's text (MIMI content text/plain), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub message_bytes: u32,
    /// When messages are encrypted: all before the timed phase (`pregenerated`) or one by one
    /// in it (`live`).
    #[arg(long, value_enum, default_value_t = Encryption::Pregenerated)]
    pub encryption: Encryption,
    /// Members leave after joining instead of staying attached by their push streams (no
    /// fan-out, like the messages scenario: for a like-for-like ratio).
    #[arg(long)]
    pub detached_members: bool,
    /// `cluster.split_shards` of the nodes: Raft groups kept empty for the rooms of a shard
    /// that splits (ARCHITECTURE.md "Shard splits"). 0: none (the node's default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub split_shards: u64,
    /// Split a shard this far into the timed phase (`10`, `10s`, `1500ms`; needs
    /// `--split-shards`): the hashed shard holding the most of the bench's rooms, through the
    /// admin route `POST /admin/shards/split` of node 1. The report's `split` has the call, the
    /// rooms moved, and the latency of the operations meant to start before, during and after
    /// it.
    #[arg(long, value_name = "SECS", requires = "split_shards", value_parser = parse_duration)]
    pub split_at: Option<Duration>,
    /// In-process nodes only: `--target` is refused.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl ClusterArgs {
    /// When to split a shard (`--split-at`), refused when the options do not go together:
    /// no split shard to move rooms to, or a moment outside the timed phase.
    pub fn split_at(&self) -> Result<Option<Duration>, String> {
        let Some(at) = self.split_at else {
            return Ok(None);
        };
        if self.split_shards == 0 {
            return Err(
                "--split-at needs --split-shards 1 or more: a split moves rooms to a \
                        split shard"
                    .into(),
            );
        }
        if at >= self.common.load.duration {
            return Err(format!(
                "--split-at {:?} is not within the timed phase (--duration {:?})",
                at, self.common.load.duration
            ));
        }
        Ok(Some(at))
    }
}

#[derive(Debug, Clone, Args)]
pub struct IdleDensityArgs {
    /// Rooms to create, each with 2 members.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rooms: u32,
    /// Rooms each bench user creates or is added to (one creator and one member per block of
    /// rooms; each member publishes exactly the KeyPackages its rooms claim).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rooms_per_user: u32,
    /// Blocks of rooms created concurrently (each block's rooms one after another).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub setup_concurrency: u32,
    /// Threads of the generator's runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_threads: u32,
    /// Length of the measured idle window after the rooms are created: `30s`, `2s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Length of the idle window measured before any room exists (the node's own baseline).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub baseline: Duration,
    /// The `mimid` binary to run; default: `mimid` next to this bench binary (built by
    /// `cargo build --release -p mimid-node --bin mimid`).
    #[arg(long, value_name = "PATH")]
    pub mimid: Option<PathBuf>,
    /// Time allowed to create one room (create, claim, add), in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// Do not fdatasync before acknowledging (to compare with the default).
    #[arg(long)]
    pub no_fsync: bool,
    /// Number of shards (Raft groups). Default: the node's default.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub shards: Option<u64>,
    /// Applied entries between a shard's snapshots. Default: the node's default.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_interval: Option<u64>,
    /// Parent of the node's temporary directory (configuration, certificates, data, log).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DmArgs {
    /// 1:1 rooms; one message in flight per room.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,
    /// Length of each message's text (MIMI content text/plain), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(i64::from(crate::cross::MIN_TEXT_BYTES)..=65_536))]
    pub message_bytes: u32,
    /// When messages are encrypted: all before the timed phase (`pregenerated`) or one by one
    /// in it (`live`). Recipients decrypt inside the timed phase either way.
    #[arg(long, value_enum, default_value_t = Encryption::Pregenerated)]
    pub encryption: Encryption,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SmallRoomsArgs {
    /// Rooms; one message in flight per room.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,
    /// Members per room, every one attached and sending in turn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub members: u32,
    /// Length of each message's text (MIMI content text/plain), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(i64::from(crate::cross::MIN_TEXT_BYTES)..=65_536))]
    pub message_bytes: u32,
    /// When messages are encrypted: all before the timed phase (`pregenerated`) or one by one
    /// in it (`live`). Recipients decrypt inside the timed phase either way.
    #[arg(long, value_enum, default_value_t = Encryption::Pregenerated)]
    pub encryption: Encryption,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LargeRoomFanoutArgs {
    /// Rooms, set up one after another.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rooms: u32,
    /// Members per room, the senders included; member j is at provider j mod --providers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=20_000))]
    pub members: u32,
    /// Providers in this process: a.example (the rooms' hub), then b.example and c.example.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub providers: u32,
    /// Senders per room, at the hub (the creator and more members); one message in flight
    /// each. The other members only receive.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub senders: u32,
    /// Receiving members sharing one QUIC connection (1: a connection each, as separate
    /// devices would have).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub members_per_connection: u32,
    /// Length of each message's text (MIMI content text/plain), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub message_bytes: u32,
    /// In-process providers only: `--target` is refused.
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CommitChurnArgs {
    /// Rooms committing in parallel, each with one committer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,
    /// Members per room at the start; several sizes (`2,128,2048`) run one after another as
    /// separate phases.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2",
        value_parser = clap::value_parser!(u32).range(2..=2048)
    )]
    pub group_size: Vec<u32>,
    /// Relative weights of the Commits: `add=1,remove=1,update=1`; a kind left out weighs 0.
    #[arg(long, default_value = "add=1,remove=1,update=1", value_parser = crate::churn::parse_mix)]
    pub mix: crate::churn::Mix,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct JoinStormArgs {
    /// Rooms; joins into one room are sequential, at most 63 per room.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,
    /// Members per room before the joins (the creator included).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub members: u32,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encryption {
    Pregenerated,
    Live,
}

/// `--replicas`: which nodes hold a shard (`mimid_node::config::Replicas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterReplicas {
    /// The shard's R voters only.
    #[value(name = "r")]
    R,
    /// Every node (learners beside the R voters).
    All,
}

impl From<ClusterReplicas> for mimid_node::config::Replicas {
    fn from(replicas: ClusterReplicas) -> Self {
        match replicas {
            ClusterReplicas::R => mimid_node::config::Replicas::R,
            ClusterReplicas::All => mimid_node::config::Replicas::All,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Threads of the generator's runtime (the clients, their QUIC and openmls work).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_threads: u32,
    /// Rooms set up concurrently before the timed phase.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub setup_concurrency: u32,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Open model: operations per second over all senders, on a fixed timetable; latency is
    /// measured from the intended start (coordinated-omission corrected).
    #[arg(long, conflicts_with = "concurrency", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Closed model: operations in flight, each starting when the previous one ended (at most
    /// one per sender). Default when neither is given: one per sender.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,
    /// Length of the timed phase: `10`, `10s`, `1500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Upper bound on operations started in a phase. With pregenerated messages in the closed
    /// model it is also how many are encrypted in advance (default 200000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_ops: Option<u64>,
    /// Time allowed for one operation before it counts as a `timeout` error, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Address of an already running node's HTTP/3 listener; without it a single-node provider
    /// is started in process.
    #[arg(long, requires = "ca")]
    pub target: Option<SocketAddr>,
    /// PEM file with the CA certificates that the target's certificate is verified against.
    #[arg(long, requires = "target")]
    pub ca: Option<PathBuf>,
    /// The target provider's domain: the name its certificate is verified for and the domain
    /// of the bench's user, client and room ids.
    #[arg(long, default_value = "localhost", requires = "target")]
    pub domain: String,
    /// The target's admin HTTP address, to report its Raft counters (optional).
    #[arg(long, requires = "target")]
    pub admin: Option<SocketAddr>,
    /// In-process node: do not fdatasync before acknowledging (to compare with the default).
    #[arg(long, conflicts_with = "target")]
    pub no_fsync: bool,
    /// In-process node: number of shards (Raft groups). Default: the node's default.
    #[arg(long, conflicts_with = "target", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub shards: Option<u64>,
    /// In-process node: applied entries between a shard's snapshots. Default: the node's
    /// default.
    #[arg(long, conflicts_with = "target", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_interval: Option<u64>,
    /// In-process node: parent of its temporary data directory (default: the system's
    /// temporary directory). Point it at the disk you want to measure.
    #[arg(long, conflicts_with = "target")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Write the JSON summary to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Do not print the per-second lines and progress bars (stderr). Bars are drawn only on
    /// a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Also write every output file into DIR (created if missing): summary.json,
    /// intervals.csv, percentiles.csv, HdrHistogram interval logs (*.hlog), throughput.png
    /// and latency.png; for idle-density summary.json, samples.csv, rss.png and
    /// timeline.png.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// How load is offered in a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadModel {
    Open { rate: f64 },
    Closed { concurrency: Option<u32> },
}

impl LoadArgs {
    pub fn model(&self) -> LoadModel {
        match (self.rate, self.concurrency) {
            (Some(rate), _) => LoadModel::Open { rate },
            (None, concurrency) => LoadModel::Closed { concurrency },
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 {
        Ok(rate)
    } else {
        Err("the rate must be above 0 and at most 10000000 operations per second".into())
    }
}

/// `N`, `Ns` (seconds) or `Nms`; between 100 ms and one day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, millis_per_unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s or 1500ms"))?;
    let millis = value * millis_per_unit;
    if !(100.0..=86_400_000.0).contains(&millis) {
        return Err("the duration must be between 100ms and 86400s".into());
    }
    Ok(Duration::from_millis(millis.round() as u64))
}

/// What the command line asks for: a scenario of [`Cli`], or one of the commands beside them
/// ([`crate::side_by_side::ExtraCommand`]: `nats`, `etcd`, `compare`, `commit-floor`), which
/// `mimid-bench --help` lists with the scenarios.
#[derive(Debug, Clone)]
pub enum Invocation {
    Scenario(Cli),
    Extra(crate::side_by_side::ExtraCommand),
}

/// Parses the process's arguments into an [`Invocation`]; exits with clap's message on an
/// error or for `--help`/`--version`.
pub fn parse_invocation() -> Invocation {
    parse_invocation_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
}

/// Parses `args` (the program name first) into an [`Invocation`].
pub fn parse_invocation_from<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use crate::side_by_side::ExtraCommand;
    use clap::{CommandFactory, FromArgMatches};
    let command = ExtraCommand::augment_subcommands(Cli::command());
    let matches = command.try_get_matches_from(args)?;
    match matches.subcommand_name() {
        Some(name) if ExtraCommand::has_subcommand(name) => {
            Ok(Invocation::Extra(ExtraCommand::from_arg_matches(&matches)?))
        }
        _ => Ok(Invocation::Scenario(Cli::from_arg_matches(&matches)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_seconds_and_milliseconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("50ms").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn rate_and_concurrency_are_exclusive() {
        let both = Cli::try_parse_from(["b", "messages", "--rate", "10", "--concurrency", "2"]);
        assert!(both.is_err());
        let Cli {
            scenario: Scenario::Messages(args),
        } = Cli::try_parse_from(["b", "messages", "--rate", "10"]).expect("valid")
        else {
            panic!("messages expected");
        };
        assert_eq!(args.common.load.model(), LoadModel::Open { rate: 10.0 });
        assert!(Cli::try_parse_from(["b", "messages", "--rate", "0"]).is_err());
    }

    #[test]
    fn target_options_exclude_in_process_options() {
        assert!(Cli::try_parse_from(["b", "commits", "--target", "127.0.0.1:4433"]).is_err());
        assert!(Cli::try_parse_from([
            "b",
            "commits",
            "--target",
            "127.0.0.1:4433",
            "--ca",
            "ca.pem",
            "--no-fsync"
        ])
        .is_err());
        let Cli {
            scenario: Scenario::Commits(args),
        } = Cli::try_parse_from(["b", "commits", "--group-size", "2,16"]).expect("valid")
        else {
            panic!("commits expected");
        };
        assert_eq!(args.group_size, vec![2, 16]);
        assert_eq!(
            args.common.load.model(),
            LoadModel::Closed { concurrency: None }
        );
    }

    #[test]
    fn cross_provider_takes_the_message_options() {
        let Cli {
            scenario: Scenario::CrossProvider(args),
        } = Cli::try_parse_from(["b", "cross-provider", "--rooms", "4", "--rate", "100"])
            .expect("valid")
        else {
            panic!("cross-provider expected");
        };
        assert_eq!(args.rooms, 4);
        assert_eq!(args.message_bytes, 256);
        assert_eq!(args.encryption, Encryption::Pregenerated);
        assert_eq!(args.common.load.model(), LoadModel::Open { rate: 100.0 });
        assert!(
            Cli::try_parse_from(["b", "cross-provider", "--message-bytes", "8"]).is_err(),
            "texts must hold the room index and message number"
        );
    }

    #[test]
    fn cluster_takes_nodes_and_the_load_options() {
        let Cli {
            scenario: Scenario::Cluster(args),
        } = Cli::try_parse_from(["b", "cluster", "--rooms", "6", "--concurrency", "3"])
            .expect("valid")
        else {
            panic!("cluster expected");
        };
        assert_eq!(args.nodes, 3);
        assert!(!args.detached_members);
        assert_eq!(args.replicas, ClusterReplicas::R, "the node's default");
        assert_eq!(
            args.common.load.model(),
            LoadModel::Closed {
                concurrency: Some(3)
            }
        );
        assert!(Cli::try_parse_from(["b", "cluster", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["b", "cluster", "--nodes", "10"]).is_err());
        let Cli {
            scenario: Scenario::Cluster(all),
        } = Cli::try_parse_from(["b", "cluster", "--nodes", "4", "--replicas", "all"])
            .expect("valid")
        else {
            panic!("cluster expected");
        };
        assert_eq!((all.nodes, all.replicas), (4, ClusterReplicas::All));
        assert_eq!(
            mimid_node::config::Replicas::from(all.replicas),
            mimid_node::config::Replicas::All
        );
        assert_eq!(
            mimid_node::config::Replicas::from(ClusterReplicas::R),
            mimid_node::config::Replicas::R
        );
        assert!(
            Cli::try_parse_from(["b", "cluster", "--replicas", "3"]).is_err(),
            "r or all"
        );
    }

    #[test]
    fn cluster_takes_split_shards_and_a_split_moment_that_need_each_other() {
        let cluster = |args: &[&str]| -> Result<ClusterArgs, clap::Error> {
            let mut argv = vec!["b", "cluster"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv)?.scenario {
                Scenario::Cluster(args) => Ok(args),
                other => panic!("cluster expected, not {}", other.name()),
            }
        };
        let plain = cluster(&[]).expect("valid");
        assert_eq!((plain.split_shards, plain.split_at), (0, None), "unchanged");
        assert_eq!(plain.split_at(), Ok(None));
        let split = cluster(&[
            "--split-shards",
            "2",
            "--split-at",
            "10",
            "--duration",
            "30s",
            "--shards",
            "4",
        ])
        .expect("valid");
        assert_eq!(split.split_shards, 2);
        assert_eq!(split.common.node.shards, Some(4));
        assert_eq!(split.split_at(), Ok(Some(Duration::from_secs(10))));
        assert_eq!(
            cluster(&["--split-shards", "1", "--split-at", "1500ms"])
                .expect("valid")
                .split_at(),
            Ok(Some(Duration::from_millis(1500)))
        );
        let shards_only = cluster(&["--split-shards", "3"]).expect("valid");
        assert_eq!(shards_only.split_at(), Ok(None), "split shards, no split");

        let refused = cluster(&["--split-at", "5"]).expect_err("no split shard");
        assert!(refused.to_string().contains("--split-shards"), "{refused}");
        let mut unchecked = plain.clone();
        unchecked.split_at = Some(Duration::from_secs(5));
        let refused = unchecked.split_at().expect_err("no split shard");
        assert!(refused.contains("--split-shards"), "{refused}");
        let zero = cluster(&["--split-shards", "0", "--split-at", "5"]).expect("parses");
        assert!(zero.split_at().is_err(), "0 split shards are none");
        let late = cluster(&[
            "--split-shards",
            "2",
            "--split-at",
            "10",
            "--duration",
            "10s",
        ])
        .expect("parses");
        let refused = late.split_at().expect_err("at the end of the phase");
        assert!(refused.contains("--duration"), "{refused}");
        assert!(cluster(&["--split-shards", "65"]).is_err());
        assert!(cluster(&["--split-shards", "2", "--split-at", "soon"]).is_err());
        assert!(cluster(&["--split-shards", "2", "--split-at", "0"]).is_err());
    }

    #[test]
    fn idle_density_defaults_and_bounds() {
        let Cli {
            scenario: Scenario::IdleDensity(args),
        } = Cli::try_parse_from(["b", "idle-density"]).expect("valid")
        else {
            panic!("idle-density expected");
        };
        assert_eq!(args.rooms, 10_000);
        assert_eq!(args.idle, Duration::from_secs(30));
        assert_eq!(args.rooms_per_user, 50);
        assert!(args.mimid.is_none());
        assert!(
            Cli::try_parse_from(["b", "idle-density", "--rooms-per-user", "101"]).is_err(),
            "one publish holds at most 100 KeyPackages"
        );
        assert!(Cli::try_parse_from(["b", "idle-density", "--rooms", "0"]).is_err());
        assert!(Cli::try_parse_from(["b", "idle-density", "--rate", "10"]).is_err());
    }

    #[test]
    fn the_extra_commands_parse_beside_the_scenarios() {
        use crate::side_by_side::ExtraCommand;
        let Ok(Invocation::Extra(ExtraCommand::Nats(args))) = parse_invocation_from([
            "b",
            "nats",
            "--rooms",
            "6",
            "--concurrency",
            "6",
            "--duration",
            "2s",
        ]) else {
            panic!("nats expected");
        };
        assert_eq!((args.rooms, args.nodes, args.message_bytes), (6, 3, 256));
        assert_eq!(
            args.load.model(),
            LoadModel::Closed {
                concurrency: Some(6)
            }
        );
        assert!(matches!(
            parse_invocation_from(["b", "etcd", "--no-subscribers"]),
            Ok(Invocation::Extra(ExtraCommand::Etcd(_)))
        ));
        assert!(matches!(
            parse_invocation_from(["b", "commit-floor", "--group-size", "2,16"]),
            Ok(Invocation::Extra(ExtraCommand::CommitFloor(_)))
        ));
        assert!(matches!(
            parse_invocation_from(["b", "messages", "--rooms", "4"]),
            Ok(Invocation::Scenario(_))
        ));
        assert!(
            parse_invocation_from(["b", "compare"]).is_err(),
            "--mimid is required"
        );
        assert!(parse_invocation_from(["b", "nats", "--rate", "1", "--concurrency", "1"]).is_err());
        use clap::CommandFactory;
        ExtraCommand::augment_subcommands(Cli::command()).debug_assert();
    }

    #[test]
    fn the_fanout_churn_and_join_scenarios_parse_with_their_defaults() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.scenario);
        let Ok(Scenario::LargeRoomFanout(large)) = parse(&["b", "large-room-fanout"]) else {
            panic!("large-room-fanout expected");
        };
        assert_eq!((large.rooms, large.members, large.providers), (1, 1000, 3));
        assert_eq!((large.senders, large.members_per_connection), (1, 1));
        assert!(parse(&["b", "large-room-fanout", "--providers", "4"]).is_err());
        let Ok(Scenario::CommitChurn(churn)) = parse(&[
            "b",
            "commit-churn",
            "--group-size",
            "2,2048",
            "--mix",
            "add=2,update=1",
        ]) else {
            panic!("commit-churn expected");
        };
        assert_eq!(churn.group_size, vec![2, 2048]);
        assert_eq!(
            churn.mix,
            crate::churn::Mix {
                add: 2,
                remove: 0,
                update: 1
            }
        );
        assert!(parse(&["b", "commit-churn", "--group-size", "2049"]).is_err());
        assert!(parse(&["b", "commit-churn", "--mix", "add=0"]).is_err());
        let Ok(Scenario::SmallRooms(small)) = parse(&["b", "small-rooms"]) else {
            panic!("small-rooms expected");
        };
        assert_eq!(small.members, 8);
        let Ok(Scenario::Dm(dm)) = parse(&["b", "dm", "--out-dir", "out"]) else {
            panic!("dm expected");
        };
        assert_eq!(dm.common.output.out_dir, Some(PathBuf::from("out")));
        assert!(
            parse(&["b", "dm", "--message-bytes", "8"]).is_err(),
            "texts must hold the sender index and message number"
        );
        let Ok(Scenario::JoinStorm(join)) = parse(&["b", "join-storm", "--rate", "50"]) else {
            panic!("join-storm expected");
        };
        assert_eq!((join.rooms, join.members), (20, 2));
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
