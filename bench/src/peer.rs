//! What the side-by-side peers (`nats`, `etcd`) share: their command-line options, the child
//! processes of their three-node clusters (killed when dropped), free loopback ports, the CPU
//! of the children, the subscribers' delivery counts and the JSON report.
//!
//! The report has the layout of the mimid scenarios' report (`run::Report`): the same
//! `config` (`run::RunConfig`), `machine`, and per phase the same flattened
//! `load::PhaseReport` (throughput, `latency_corrected`, `latency_raw`, errors, intervals),
//! made by the same load engine (`load::run_phase`) and HdrHistogram recorder (`stats`), so
//! `mimid-bench compare` reads all three the same way. Where mimid's report has `node`, a
//! peer's has `system` (binary, version, nodes, durability setting).
//!
//! Running one: [`run_peer`] does what every peer does (find the binary, start its cluster on
//! free ports with retries, connect the senders and subscribers, the timed phase with
//! [`measure`], the servers' own count of what they stored, and the clean-up); each peer
//! implements [`Peer`] for its servers ([`Servers`]) and protocol and writes its report.
//!
//! CPU: a peer's servers are child processes, so `cpu.server_s` is the children's
//! `utime + stime` from `/proc/<pid>/stat` (10 ms ticks) over the phase, and
//! `cpu.generator_s` this process's (the drivers). `other_processes_s` is the machine's busy
//! time minus both.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{LoadArgs, LoadModel, OutputArgs};
use crate::load::{run_phase, PhaseConfig, PhaseReport, Sender};
use crate::run::{RunConfig, CLIENT_THREADS_NAME};
use crate::stats::round_millis;
use crate::system::{machine_cpu_now, own_cpu_now, Machine, MachineCpu, ProcessSample};

/// Most nodes a peer cluster may have.
pub const MAX_PEER_NODES: u64 = 5;
/// Times a cluster start is retried with new ports (a port taken between its release and the
/// child's bind).
pub const START_ATTEMPTS: usize = 3;
/// Time allowed to a subscriber to receive every acknowledged message after the phase.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(15);
/// Interval of the checks while waiting for the subscribers to catch up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Bytes of a child's log shown when it fails.
const LOG_TAIL_BYTES: u64 = 2048;
/// How the peers' reports read the two latencies (as the scenarios' notes do).
const LATENCY_NOTE: &str = "latency_corrected counts from the intended start (open model, \
    coordinated omission corrected); latency_raw from the actual start. They are equal in the \
    closed model.";

/// Options of a side-by-side peer (`mimid-bench nats`, `mimid-bench etcd`): the shape of the
/// `cluster` scenario's workload (rooms, 256-byte messages, subscribers on another node) and
/// the same load options.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Rooms (NATS: subjects `room.<n>.<i>`; etcd: keys `room/<n>/<i>`), each with one sender
    /// and one message in flight at most.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: u32,
    /// Length of each message (opaque bytes), in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub message_bytes: u32,
    /// Nodes (server processes) of the peer's cluster; the data is replicated on each.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=MAX_PEER_NODES))]
    pub nodes: u64,
    /// No subscribers (NATS: no push consumers; etcd: no watchers): the publish/put path alone,
    /// like `cluster --detached-members`.
    #[arg(long)]
    pub no_subscribers: bool,
    /// The server binary (default: `nats-server` or `etcd` on PATH, /usr/sbin, /usr/bin).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Parent of the cluster's temporary directory (data, configuration, logs); removed at the
    /// end. Point it at the disk you want to measure.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Threads of the driver's runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_threads: u32,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl PeerArgs {
    /// The node (index) of room `room`'s sender: `room % nodes`, as in the cluster scenario.
    pub fn sender_node(&self, room: u64) -> usize {
        (room % self.nodes) as usize
    }

    /// The node (index) whose subscriber receives what the senders on `node` send: the next
    /// one, as the cluster scenario's members.
    pub fn subscriber_node(&self, node: usize) -> usize {
        (node + 1) % self.nodes as usize
    }

    /// Whether subscribers are attached.
    pub fn subscribers(&self) -> bool {
        !self.no_subscribers
    }

    /// Checks the load options against the rooms.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(concurrency) = self.load.concurrency {
            if concurrency > self.rooms {
                bail!(
                    "--concurrency {concurrency} exceeds the {} senders (one per room, each \
                     with one request in flight): raise --rooms",
                    self.rooms
                );
            }
        }
        Ok(())
    }

    /// The parent of the cluster's temporary directory, for the report.
    pub fn data_dir_parent(&self) -> String {
        self.data_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .display()
            .to_string()
    }

    /// The `config` section of the report, as the mimid scenarios write it.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            load_model: match self.load.model() {
                LoadModel::Open { .. } => "open",
                LoadModel::Closed { .. } => "closed",
            },
            rate: self.load.rate,
            concurrency: self.load.concurrency,
            duration_s: self.load.duration.as_secs_f64(),
            max_ops: self.load.max_ops,
            timeout_ms: self.load.timeout_ms,
            rooms: self.rooms,
            members: Some(if self.subscribers() { 2 } else { 1 }),
            group_sizes: None,
            message_bytes: Some(self.message_bytes),
            encryption: None,
            nodes: Some(self.nodes),
            attached_members: Some(self.subscribers()),
            split_shards: None,
            split_at_s: None,
            client_threads: self.client_threads,
            setup_concurrency: self.rooms,
        }
    }
}

/// The JSON summary of a peer run; see the module documentation for how it lines up with
/// mimid's.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: &'static str,
    pub started_unix_s: u64,
    pub config: RunConfig,
    pub system: PeerSystem,
    pub machine: Machine,
    pub phases: Vec<PeerPhase>,
    pub notes: Vec<String>,
}

impl PeerReport {
    /// The phases as `--out-dir` writes them.
    pub fn view(&self) -> crate::output::RunView<'_> {
        crate::output::RunView {
            scenario: self.scenario,
            phases: self
                .phases
                .iter()
                .map(|phase| crate::output::PhaseView {
                    name: phase.name.clone(),
                    measured: &phase.measured,
                    windows: &phase.measured.windows,
                })
                .collect(),
        }
    }
}

/// The peer under test.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSystem {
    pub name: &'static str,
    pub binary: String,
    /// First line of `<binary> --version`.
    pub binary_version: String,
    pub nodes: u64,
    /// Copies of every message (stream replicas, etcd members).
    pub replicas: u64,
    /// When an acknowledgement is sent relative to the disk, in words.
    pub durability: String,
    /// The settings that matter for the figures, as given to the servers.
    pub settings: BTreeMap<&'static str, String>,
    pub data_dir_parent: String,
}

/// The timed phase of a peer run.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPhase {
    pub name: String,
    pub rooms: u32,
    /// Subscribers attached (one per node, each for the rooms of the previous node's senders).
    pub subscribers: usize,
    /// Starting the cluster and connecting the senders and subscribers.
    pub setup_s: f64,
    #[serde(flatten)]
    pub measured: PhaseReport,
    pub cpu: PeerCpu,
    /// What the subscribers received (`null` with `--no-subscribers`).
    pub delivery: Option<PeerDelivery>,
    /// The servers' own count of what was stored during the phase (NATS: the stream's
    /// messages; etcd: revisions), to check against `ops_ok`.
    pub stored: Option<u64>,
}

/// CPU seconds over a peer's timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct PeerCpu {
    /// This process (the drivers: senders and subscribers).
    pub generator_s: Option<f64>,
    /// The server processes together.
    pub server_s: Option<f64>,
    /// Each server process, in node order.
    pub server_nodes_s: Vec<Option<f64>>,
    /// Server CPU seconds per 1000 acknowledged operations (as `cpu.server_per_1000_ops_s` in
    /// mimid's report).
    pub server_per_1000_ops_s: Option<f64>,
    /// Servers and drivers per 1000 acknowledged operations.
    pub per_1000_ops_s: Option<f64>,
    /// Busy time of everything else on the machine.
    pub other_processes_s: Option<f64>,
}

/// What the subscribers received, as the cluster scenario's `cluster.delivery`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerDelivery {
    pub receivers: usize,
    pub delivered: u64,
    /// Whether `delivered` reached the acknowledged operations before the deadline.
    pub caught_up: bool,
    pub catch_up_s: Option<f64>,
    /// Subscriber connections that failed during the phase.
    pub streams_lost: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// A child process, killed (SIGKILL) and reaped when dropped, so no server outlives the run,
/// an error or a panic. Its stdout and stderr go to a log file.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with its output appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<ChildGuard> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the child ended, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The end of the child's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails if the child has ended, with its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); end of its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            ),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already gone is fine; nothing else can be done about a failed kill here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if file
        .seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago: all are bound to `:0` at once
/// and released together. Another process may take one before the child binds it; the cluster
/// start is retried with new ports then ([`START_ATTEMPTS`]).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect::<Result<_, _>>()
        .context("binding 127.0.0.1:0 for a free port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<Vec<u16>>>()
        .context("reading a bound port")
}

/// The server binary: `explicit`, or `name` on PATH, or in the system directories Debian
/// installs servers to (`nats-server` is in /usr/sbin, which is not on every user's PATH).
pub fn find_binary(explicit: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("no {name} binary at {}", path.display());
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let system_dirs = [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ]
    .into_iter()
    .map(PathBuf::from);
    path_dirs
        .into_iter()
        .chain(system_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "no {name} binary on PATH or in /usr/sbin, /usr/bin: install it (Debian: \
                 `apt-get install -y nats-server etcd-server`) or pass --binary PATH"
            )
        })
}

/// The first line of `<binary> <arg>` (its version), or `unknown`.
pub fn binary_version(binary: &Path, arg: &str) -> String {
    Command::new(binary)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// A fresh temporary directory for a cluster under `parent` (or the system's).
pub fn cluster_dir(parent: Option<&Path>, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))
}

/// CPU consumed so far by this process, the children and the machine.
#[derive(Debug, Clone)]
pub struct CpuMark {
    own: Option<Duration>,
    children: Vec<Option<Duration>>,
    machine: Option<MachineCpu>,
}

impl CpuMark {
    pub fn take(pids: &[u32]) -> CpuMark {
        CpuMark {
            own: own_cpu_now(),
            children: pids
                .iter()
                .map(|&pid| ProcessSample::take(pid).map(|s| s.cpu))
                .collect(),
            machine: machine_cpu_now(),
        }
    }

    /// CPU between `earlier` and `self`, per 1000 of `ops` where asked.
    pub fn since(&self, earlier: &CpuMark, ops: u64) -> PeerCpu {
        let seconds = |d: Duration| round3(d.as_secs_f64());
        let diff =
            |now: Option<Duration>, before: Option<Duration>| Some(now?.saturating_sub(before?));
        let generator = diff(self.own, earlier.own);
        let nodes: Vec<Option<Duration>> = self
            .children
            .iter()
            .zip(&earlier.children)
            .map(|(now, before)| diff(*now, *before))
            .collect();
        let server: Option<Duration> = nodes.iter().copied().sum();
        let per_1000 = |d: Duration| {
            (ops > 0).then(|| (d.as_secs_f64() * 1000.0 / ops as f64 * 1e4).round() / 1e4)
        };
        let other = match (self.machine, earlier.machine, generator, server) {
            (Some(now), Some(before), Some(generator), Some(server)) => Some(seconds(
                now.busy
                    .saturating_sub(before.busy)
                    .saturating_sub(generator + server),
            )),
            _ => None,
        };
        PeerCpu {
            generator_s: generator.map(seconds),
            server_s: server.map(seconds),
            server_nodes_s: nodes.iter().map(|d| d.map(seconds)).collect(),
            server_per_1000_ops_s: server.and_then(per_1000),
            per_1000_ops_s: match (server, generator) {
                (Some(s), Some(g)) => per_1000(s + g),
                _ => None,
            },
            other_processes_s: other,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Counters shared by the subscriber tasks of a run.
#[derive(Debug, Default)]
pub struct SubscriberCounters {
    pub delivered: AtomicU64,
    pub lost: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl SubscriberCounters {
    /// Records a subscriber that failed.
    pub fn failed(&self, error: impl std::fmt::Display) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .get_or_insert_with(|| error.to_string());
    }
}

/// The subscriber tasks of a run: each counts what it receives in [`SubscriberCounters`] and
/// runs until its connection fails or [`Subscribers::finish`] aborts it (reads are not
/// cancelled on a timer, which could cut a frame in the middle).
pub struct Subscribers {
    tasks: JoinSet<()>,
    count: usize,
    counters: Arc<SubscriberCounters>,
}

impl Subscribers {
    pub fn new(counters: Arc<SubscriberCounters>) -> Subscribers {
        Subscribers {
            tasks: JoinSet::new(),
            count: 0,
            counters,
        }
    }

    /// Runs one subscriber.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.count += 1;
        self.tasks.spawn(task);
    }

    /// Waits (at most [`CATCH_UP_DEADLINE`]) until the subscribers have `expected` messages,
    /// then stops them.
    pub async fn finish(mut self, expected: u64) -> PeerDelivery {
        let start = Instant::now();
        let mut catch_up_s = None;
        // Bounded by CATCH_UP_DEADLINE.
        while start.elapsed() < CATCH_UP_DEADLINE {
            if self.counters.delivered.load(Ordering::Relaxed) >= expected {
                catch_up_s = Some(round_millis(start.elapsed().as_secs_f64()));
                break;
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
        self.tasks.abort_all();
        // Bounded: every task is aborted.
        while self.tasks.join_next().await.is_some() {}
        PeerDelivery {
            receivers: self.count,
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            caught_up: catch_up_s.is_some(),
            catch_up_s,
            streams_lost: self.counters.lost.load(Ordering::Relaxed),
            first_error: self.counters.first_error.lock().clone(),
        }
    }
}

/// How one peer's timed phase is run.
pub struct PeerPhasePlan<'a> {
    pub name: &'static str,
    pub args: &'a PeerArgs,
    /// The server processes, in node order, for the CPU accounting.
    pub pids: Vec<u32>,
    pub setup_start: Instant,
    pub interrupted: Arc<AtomicBool>,
}

/// Runs the timed phase with `senders` under the bench's load engine, with CPU accounting of
/// this process and the servers, then waits for the `subscribers`.
///
/// Cancel safety: not safe (see [`run_phase`]).
pub async fn measure<S: Sender>(
    plan: PeerPhasePlan<'_>,
    senders: Vec<S>,
    subscribers: Option<Subscribers>,
) -> anyhow::Result<(Vec<S>, PeerPhase)> {
    let args = plan.args;
    let setup_s = round_millis(plan.setup_start.elapsed().as_secs_f64());
    progress(
        args,
        &format!(
            "{}: {} for {:?}",
            plan.name,
            match args.load.model() {
                LoadModel::Open { rate } => format!("open model at {rate} ops/s"),
                LoadModel::Closed { concurrency } => format!(
                    "closed model with {} in flight",
                    concurrency.unwrap_or(args.rooms)
                ),
            },
            args.load.duration
        ),
    );
    let config = PhaseConfig {
        model: args.load.model(),
        duration: args.load.duration,
        max_ops: args.load.max_ops,
        op_timeout: Duration::from_millis(args.load.timeout_ms),
        progress: !args.output.no_progress,
        interrupted: plan.interrupted.clone(),
    };
    let before = CpuMark::take(&plan.pids);
    let (senders, measured) = run_phase(senders, config).await?;
    let after = CpuMark::take(&plan.pids);
    let cpu = after.since(&before, measured.totals.ops_ok);
    let delivery = match subscribers {
        Some(subscribers) => Some(subscribers.finish(measured.totals.ops_ok).await),
        None => None,
    };
    Ok((
        senders,
        PeerPhase {
            name: plan.name.to_string(),
            rooms: args.rooms,
            subscribers: delivery.as_ref().map_or(0, |d| d.receivers),
            setup_s,
            measured,
            cpu,
            delivery,
            stored: None,
        },
    ))
}

/// Prints `line` unless `--no-progress`.
pub fn progress(args: &PeerArgs, line: &str) {
    if !args.output.no_progress {
        eprintln!("# {line}");
    }
}

/// Seconds since the epoch, for the report.
pub fn now_unix_s() -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs())
}

/// The first Ctrl-C ends the phase early (the report is still written, the servers killed);
/// a second one aborts.
pub async fn listen_for_interrupt(interrupted: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupted.store(true, Ordering::Relaxed);
    eprintln!("# interrupted: finishing the phase (Ctrl-C again to abort)");
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

/// A peer cluster's server processes, killed when dropped, and the addresses their clients
/// connect to, both in node order.
#[derive(Default)]
pub struct Servers {
    children: Vec<ChildGuard>,
    pub clients: Vec<SocketAddr>,
}

impl Servers {
    /// Starts the next node's server: `command`, named `name` in errors, its output in `log`,
    /// serving clients on 127.0.0.1:`client_port`.
    pub fn spawn(
        &mut self,
        name: &str,
        command: &mut Command,
        log: &Path,
        client_port: u16,
    ) -> anyhow::Result<()> {
        self.children.push(ChildGuard::spawn(name, command, log)?);
        self.clients
            .push(SocketAddr::from(([127, 0, 0, 1], client_port)));
        Ok(())
    }

    /// The server processes' ids, in node order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ChildGuard::pid).collect()
    }

    /// Fails if a server has ended, with its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.children
            .iter_mut()
            .try_for_each(ChildGuard::check_running)
    }
}

/// A side-by-side peer: how [`run_peer`] starts its servers and speaks its protocol.
pub trait Peer {
    /// One room's sender.
    type Sender: Sender;
    /// The server binary looked for on PATH (`find_binary`).
    const BINARY: &'static str;
    /// Prefix of the cluster's temporary directory.
    const DIR_PREFIX: &'static str;
    /// The servers, as the progress line names them (`etcd members`).
    const SERVERS: &'static str;

    /// Starts `nodes` servers from `binary` in `dir`; `ports` holds two free ports per node.
    fn start(binary: &Path, dir: &Path, nodes: u64, ports: &[u16]) -> anyhow::Result<Servers>;
    /// Waits until writes through every node are acknowledged.
    fn ready(
        servers: &mut Servers,
        nodes: u64,
    ) -> impl std::future::Future<Output = anyhow::Result<()>>;
    /// One sender per room, in room order, each with its own connection (`sender_node`).
    fn connect_senders(
        servers: &Servers,
        args: &PeerArgs,
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<Self::Sender>>>;
    /// One subscriber per node for what the previous node's senders send
    /// (`subscriber_node`), running once this returns.
    fn start_subscribers(
        servers: &Servers,
        args: &PeerArgs,
    ) -> impl std::future::Future<Output = anyhow::Result<Subscribers>>;
    /// The servers' own count of what they stored so far.
    fn stored(servers: &Servers) -> impl std::future::Future<Output = anyhow::Result<u64>>;
}

/// What [`run_peer`] found and measured.
pub struct PeerRun {
    /// The peer's name as a scenario (`nats`, `etcd`), also its phase's.
    pub scenario: &'static str,
    pub started_unix_s: u64,
    pub machine: Machine,
    pub binary: PathBuf,
    /// First line of `<binary> --version`.
    pub binary_version: String,
    /// The timed phase, `stored` filled in.
    pub phase: PeerPhase,
}

/// What a peer says of itself in its report, beside what [`run_peer`] found.
pub struct PeerDescription {
    /// `system.name`.
    pub name: &'static str,
    /// Copies of every message.
    pub replicas: u64,
    /// When an acknowledgement is sent relative to the disk, in words.
    pub durability: String,
    /// The settings that matter for the figures.
    pub settings: BTreeMap<&'static str, String>,
    /// What an operation is and what the subscribers get, first in the notes.
    pub notes: Vec<String>,
    /// What `stored` counts, for the notes.
    pub stored: &'static str,
}

impl PeerRun {
    /// The report of this run made with `args`.
    pub fn report(self, args: &PeerArgs, description: PeerDescription) -> PeerReport {
        let mut notes = description.notes;
        notes.push(format!(
            "The driver is this process (cpu.generator_s); the servers are child processes \
             (cpu.server_s, from /proc/<pid>/stat). stored is {}.",
            description.stored
        ));
        notes.push(LATENCY_NOTE.into());
        PeerReport {
            tool: "mimid-bench",
            version: env!("CARGO_PKG_VERSION"),
            scenario: self.scenario,
            started_unix_s: self.started_unix_s,
            config: args.run_config(),
            system: PeerSystem {
                name: description.name,
                binary: self.binary.display().to_string(),
                binary_version: self.binary_version,
                nodes: args.nodes,
                replicas: description.replicas,
                durability: description.durability,
                settings: description.settings,
                data_dir_parent: args.data_dir_parent(),
            },
            machine: self.machine,
            phases: vec![self.phase],
            notes,
        }
    }
}

/// Runs peer `C` (its phase named `name`): starts its cluster in a temporary directory (new
/// ports on a failed start), connects the senders and, unless `--no-subscribers`, the
/// subscribers, runs the timed phase with [`measure`], takes the difference of the servers'
/// stored count over it, and stops the servers and removes the directory, also on an error.
/// Must not be called from inside a tokio runtime.
pub fn run_peer<C: Peer>(args: &PeerArgs, name: &'static str) -> anyhow::Result<PeerRun> {
    args.check()?;
    let started_unix_s = now_unix_s()?;
    let machine = Machine::describe();
    let binary = find_binary(args.binary.as_deref(), C::BINARY)?;
    let binary_version = binary_version(&binary, "--version");
    let setup_start = Instant::now();
    let dir = cluster_dir(args.data_dir.as_deref(), C::DIR_PREFIX)?;
    progress(
        args,
        &format!(
            "starting {} {} ({binary_version}) in {}",
            args.nodes,
            C::SERVERS,
            dir.path().display()
        ),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .thread_name(CLIENT_THREADS_NAME)
        .enable_all()
        .build()
        .context("building the driver's runtime")?;
    let what = format!("{name} cluster");
    let mut servers = with_port_retries(&what, 2 * args.nodes as usize, |attempt, ports| {
        let attempt_dir = dir.path().join(format!("attempt{attempt}"));
        std::fs::create_dir(&attempt_dir)
            .with_context(|| format!("creating {}", attempt_dir.display()))?;
        let mut servers = C::start(&binary, &attempt_dir, args.nodes, ports)?;
        runtime.block_on(C::ready(&mut servers, args.nodes))?;
        Ok(servers)
    })?;
    let interrupted = Arc::new(AtomicBool::new(false));
    runtime.spawn(listen_for_interrupt(interrupted.clone()));
    let phase = runtime.block_on(async {
        let senders = C::connect_senders(&servers, args).await?;
        let subscribers = if args.subscribers() {
            Some(C::start_subscribers(&servers, args).await?)
        } else {
            None
        };
        let stored_before = C::stored(&servers).await?;
        let plan = PeerPhasePlan {
            name,
            args,
            pids: servers.pids(),
            setup_start,
            interrupted: interrupted.clone(),
        };
        let (_senders, mut phase) = measure(plan, senders, subscribers).await?;
        let stored_after = C::stored(&servers).await?;
        phase.stored = Some(stored_after.saturating_sub(stored_before));
        anyhow::Ok(phase)
    });
    let still_running = servers.check_running();
    drop(servers);
    runtime.shutdown_timeout(Duration::from_secs(2));
    let phase = phase?;
    still_running?;
    Ok(PeerRun {
        scenario: name,
        started_unix_s,
        machine,
        binary,
        binary_version,
        phase,
    })
}

/// Starts a cluster with `start` (given the attempt's number and fresh ports) up to
/// [`START_ATTEMPTS`] times: a port may be taken between [`free_ports`] and the child's bind.
pub fn with_port_retries<T>(
    what: &str,
    ports: usize,
    mut start: impl FnMut(usize, &[u16]) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut last = None;
    for attempt in 1..=START_ATTEMPTS {
        let chosen = free_ports(ports)?;
        match start(attempt, &chosen) {
            Ok(started) => return Ok(started),
            Err(error) => {
                eprintln!("# {what}: attempt {attempt} of {START_ATTEMPTS} failed: {error:#}");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{what} did not start")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(6).expect("ports");
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
        assert!(ports.iter().all(|&p| p > 0));
        let listener = TcpListener::bind(("127.0.0.1", ports[0])).expect("released");
        drop(listener);
    }

    #[test]
    fn a_dropped_guard_kills_its_child() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut command = Command::new("sleep");
        command.arg("60");
        let mut guard =
            ChildGuard::spawn("sleep", &mut command, &dir.path().join("sleep.log")).expect("spawn");
        let pid = guard.pid();
        guard.check_running().expect("running");
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(guard);
        // The guard reaped it, so the pid is gone at once (not a zombie).
        assert!(
            !Path::new(&format!("/proc/{pid}/stat")).exists(),
            "pid {pid}"
        );
    }

    #[test]
    fn a_child_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut command = Command::new("sh");
        command.args(["-c", "echo listen failed: address already in use; exit 3"]);
        let mut guard =
            ChildGuard::spawn("failing", &mut command, &dir.path().join("f.log")).expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while guard.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let error = guard.check_running().expect_err("it exited");
        let text = format!("{error:#}");
        assert!(text.contains("address already in use"), "{text}");
    }

    #[test]
    fn cpu_marks_subtract_per_child_and_per_1000() {
        let earlier = CpuMark {
            own: Some(Duration::from_secs(1)),
            children: vec![Some(Duration::from_secs(2)), Some(Duration::from_secs(3))],
            machine: Some(MachineCpu {
                busy: Duration::from_secs(100),
                steal: Duration::ZERO,
            }),
        };
        let later = CpuMark {
            own: Some(Duration::from_secs(2)),
            children: vec![Some(Duration::from_secs(4)), Some(Duration::from_secs(6))],
            machine: Some(MachineCpu {
                busy: Duration::from_secs(107),
                steal: Duration::ZERO,
            }),
        };
        let cpu = later.since(&earlier, 5000);
        assert_eq!(cpu.generator_s, Some(1.0));
        assert_eq!(cpu.server_s, Some(5.0));
        assert_eq!(cpu.server_nodes_s, vec![Some(2.0), Some(3.0)]);
        assert_eq!(cpu.server_per_1000_ops_s, Some(1.0));
        assert_eq!(cpu.per_1000_ops_s, Some(1.2));
        assert_eq!(cpu.other_processes_s, Some(1.0));
        let gone = CpuMark {
            children: vec![None, Some(Duration::from_secs(6))],
            ..later
        };
        assert_eq!(gone.since(&earlier, 5000).server_s, None);
    }
}
