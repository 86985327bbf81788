//! The idle-density scenario: resident memory and idle CPU of one node holding N mostly idle
//! rooms (issue 4, "a run with 100k rooms (mostly idle)"; anchors.md G5: at least 100 000 idle
//! small rooms per GiB and under 5% of a core).
//!
//! The node is a real `mimid start` in a CHILD process, so its memory is measured alone:
//! the bench writes a configuration (the node's defaults, loopback listeners on ports chosen by
//! the OS, a provider certificate for `localhost` from a CA generated for the run, the
//! per-user and KeyPackage-claim rate limits lifted as for the in-process nodes, log level
//! `warn`) and certificates into a temporary directory, starts the binary, reads its listening
//! addresses from its first lines on stdout and waits for `/readyz`. The node's log goes to
//! `mimid.log` in that directory. At the end the child is killed (SIGKILL: its data is thrown
//! away) and the directory removed.
//!
//! Steps, all measured from `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat`
//! (utime + stime):
//! 1. baseline: the fresh node idles for `--baseline`;
//! 2. creation: N rooms of 2 members through the client API (MIMI.md §6.1, §6.2), in blocks of
//!    `--rooms-per-user` rooms, `--setup-concurrency` blocks at a time. Each block has one
//!    creator and one member (two registered users); the member publishes exactly one
//!    KeyPackage per room of the block in one request, and the creator creates each room and
//!    adds the member (KeyPackage claim, then a Commit with the Add; the hub stores the
//!    Welcome). The member never connects a push stream: it is a member of the MLS group and
//!    the participant list, offline since it was added. Both clients close after their block,
//!    so the bench's own memory stays bounded;
//! 3. idle: no client is connected; the node idles for `--idle` and its CPU time and memory
//!    over that window are the result.
//!
//! Through all three the node is also sampled once a second (and at the start and end of
//! each), for `--out-dir`: memory and CPU against the rooms created and over time
//! ([`DensitySample`], `output::write_density`).

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use mimid_node::certs::{CertAuthority, SubjectName, CA_VALIDITY, LEAF_VALIDITY, PROVIDER_STEM};
use mimid_node::client::{Endpoint, MimiClient};
use mimid_node::config::{Config, TlsSettings};
use mimid_node::demo::{admin_get, wait_ready};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{IdleDensityArgs, NodeArgs};
use crate::provider::{metric_value, node_config};
use crate::run::CLIENT_THREADS_NAME;
use crate::scenario::{add_users, Naming};
use crate::stats::round_millis;
use crate::system::{machine_cpu_now, own_cpu_now, Machine, ProcessSample};

/// The node's domain (its certificate's name; clients verify it).
pub const DOMAIN: &str = "localhost";
/// Name of the node binary looked for next to the bench binary.
pub const MIMID_BINARY: &str = "mimid";
/// Members per room.
const MEMBERS: u32 = 2;
/// Prefix of the temporary directory.
const DIR_PREFIX: &str = "mimid-bench-density-";
/// The child's log file in the temporary directory.
const LOG_FILE: &str = "mimid.log";
/// How long the child may take to print its listening addresses.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What `mimid start` prints once it listens (`cli::run_node`).
const LISTENING_PREFIX: &str = "mimid listening: ";
/// Interval of the progress lines and of the memory samples in the idle windows.
const TICK: Duration = Duration::from_secs(1);
/// Log lines shown when the child fails.
const LOG_TAIL_BYTES: u64 = 4096;
/// Time allowed for closing one client after its block.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest interval a sample's CPU share is computed over (the next sample's share counts
/// from the last one that had one).
const MIN_CPU_INTERVAL: Duration = Duration::from_millis(500);
/// Bytes in a MiB and in a GiB.
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// The JSON summary of an idle-density run.
#[derive(Debug, Clone, Serialize)]
pub struct DensityReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: &'static str,
    pub started_unix_s: u64,
    pub config: DensityConfig,
    pub node: ChildNode,
    pub machine: Machine,
    /// The fresh node, before any room exists.
    pub baseline: IdleWindow,
    pub creation: Creation,
    /// The node holding every room, no client connected.
    pub idle: IdleWindow,
    /// The figures: memory per room and idle CPU with every room in place.
    pub density: Density,
    /// The node's own counters at the end of the idle window.
    pub node_metrics: NodeMetrics,
    pub notes: Vec<String>,
    /// The node sampled through the run, in order (`--out-dir`: samples.csv and the plots).
    #[serde(skip)]
    pub samples: Vec<DensitySample>,
}

/// One sample of the child node: a row of `samples.csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DensitySample {
    /// The stretch it belongs to: [`STAGE_BASELINE`], [`STAGE_CREATION`] or [`STAGE_IDLE`].
    pub stage: &'static str,
    /// Seconds since the baseline window began.
    pub elapsed_s: f64,
    /// Rooms created so far.
    pub rooms: u64,
    /// VmRSS and VmHWM.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The node's CPU time (user + system) since the baseline window began.
    pub node_cpu_s: f64,
    /// The node's CPU since the previous sample at least [`MIN_CPU_INTERVAL`] earlier, in
    /// percent of one core (`None` for the first sample and those closer to the previous
    /// one: CPU time comes in 10 ms ticks).
    pub cpu_percent_of_core: Option<f64>,
}

/// The stages of a [`DensitySample`].
pub const STAGE_BASELINE: &str = "baseline";
pub const STAGE_CREATION: &str = "creation";
pub const STAGE_IDLE: &str = "idle";

/// Collects [`DensitySample`]s of the node `pid`, shared by the windows and the creation
/// ticker.
#[derive(Debug)]
struct Sampler {
    pid: u32,
    /// When the first sample was taken, and the node's CPU time then.
    origin: Option<(Instant, Duration)>,
    /// The previous sample's time and CPU time.
    previous: Option<(Instant, Duration)>,
    samples: Vec<DensitySample>,
}

impl Sampler {
    fn new(pid: u32) -> Sampler {
        Sampler {
            pid,
            origin: None,
            previous: None,
            samples: Vec::new(),
        }
    }

    /// Records `sample`, taken now, in `stage` with `rooms` created.
    fn record(&mut self, stage: &'static str, rooms: u64, sample: &ProcessSample) {
        let now = Instant::now();
        let (origin, cpu_origin) = *self.origin.get_or_insert((now, sample.cpu));
        let previous = self
            .previous
            .filter(|(at, _)| now.duration_since(*at) >= MIN_CPU_INTERVAL);
        let cpu_percent_of_core = previous.map(|(at, cpu)| {
            let seconds = now.duration_since(at).as_secs_f64();
            round2(sample.cpu.saturating_sub(cpu).as_secs_f64() / seconds * 100.0)
        });
        if self.previous.is_none() || previous.is_some() {
            self.previous = Some((now, sample.cpu));
        }
        self.samples.push(DensitySample {
            stage,
            elapsed_s: round_millis(now.duration_since(origin).as_secs_f64()),
            rooms,
            rss_kib: sample.rss_kib,
            hwm_kib: sample.hwm_kib,
            node_cpu_s: round_millis(sample.cpu.saturating_sub(cpu_origin).as_secs_f64()),
            cpu_percent_of_core,
        });
    }

    /// Takes a sample of the node now and records it; `None` if the node is gone.
    fn take(&mut self, stage: &'static str, rooms: u64) -> Option<ProcessSample> {
        let sample = ProcessSample::take(self.pid)?;
        self.record(stage, rooms, &sample);
        Some(sample)
    }
}

/// A [`Sampler`] shared between tasks.
type SharedSampler = Arc<Mutex<Sampler>>;

/// The options the run was made with.
#[derive(Debug, Clone, Serialize)]
pub struct DensityConfig {
    pub rooms: u32,
    pub members: u32,
    pub rooms_per_user: u32,
    /// Users registered: a creator and a member per block of rooms.
    pub users: u64,
    pub setup_concurrency: u32,
    pub client_threads: u32,
    pub baseline_s: f64,
    pub idle_s: f64,
    pub timeout_ms: u64,
}

/// The child node.
#[derive(Debug, Clone, Serialize)]
pub struct ChildNode {
    pub mode: &'static str,
    pub binary: String,
    pub fsync: bool,
    pub shards: u64,
    pub tick_ms: u64,
    pub snapshot_interval: u64,
    pub idle_room_secs: u64,
    pub log_level: String,
    pub data_dir_parent: String,
}

/// One measured window of the node, no client connected.
#[derive(Debug, Clone, Serialize)]
pub struct IdleWindow {
    pub window_s: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Highest VmRSS seen in the once-a-second samples of the window.
    pub rss_max_kib: u64,
    /// VmHWM at the end of the window: the peak since the node started.
    pub hwm_kib: u64,
    /// The node's CPU time (user + system) in the window.
    pub cpu_s: f64,
    /// `cpu_s` over the window's length, in percent of one core.
    pub cpu_percent_of_core: f64,
    /// Busy time of everything but the node and the bench on the machine in the window.
    pub other_processes_s: Option<f64>,
}

/// Creating the rooms.
#[derive(Debug, Clone, Serialize)]
pub struct Creation {
    pub rooms: u64,
    pub elapsed_s: f64,
    pub rooms_per_s: f64,
    /// The node's CPU time while creating.
    pub node_cpu_s: f64,
    /// The bench's CPU time while creating (the clients' openmls work, QUIC).
    pub generator_cpu_s: f64,
    /// The node's CPU time per room, in milliseconds.
    pub node_cpu_ms_per_room: f64,
    pub other_processes_s: Option<f64>,
    /// VmRSS and VmHWM right after the last room.
    pub rss_after_kib: u64,
    pub hwm_after_kib: u64,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct Density {
    pub rooms: u64,
    /// VmRSS at the end of the idle window.
    pub rss_mib: f64,
    /// VmRSS at the end of the idle window per room, the node's baseline included.
    pub bytes_per_room: f64,
    /// (VmRSS at the end of the idle window − VmRSS at the end of the baseline) per room.
    pub marginal_bytes_per_room: f64,
    /// Rooms per GiB of the whole node's VmRSS.
    pub rooms_per_gib: f64,
    /// Rooms per GiB of memory above the baseline.
    pub marginal_rooms_per_gib: f64,
    /// Idle CPU with every room in place, percent of one core.
    pub idle_cpu_percent_of_core: f64,
    /// The same before any room existed.
    pub baseline_cpu_percent_of_core: f64,
}

/// From the node's `/metrics` at the end.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMetrics {
    /// Room actors still running (they stop after `limits.idle_room_secs` without activity).
    pub rooms_active: Option<u64>,
    pub push_streams: Option<u64>,
    pub raft_applied: Option<u64>,
    pub raft_snapshots: Option<u64>,
}

/// Runs the idle-density scenario. Must not be called from inside a tokio runtime.
pub fn run(args: &IdleDensityArgs) -> anyhow::Result<DensityReport> {
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let machine = Machine::describe();
    let binary = mimid_binary(args.mimid.as_deref())?;
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory under {}", parent.display()))?;
    let prepared = prepare_node(dir.path(), args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .thread_name(CLIENT_THREADS_NAME)
        .enable_all()
        .build()
        .context("building the generator's runtime")?;
    let tag = format!("{:x}{:x}", started_unix_s.as_millis(), std::process::id());
    let measured = runtime.block_on(measure(args, &binary, dir.path(), &prepared, &tag));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let measured = measured?;
    let config = &prepared.config;
    let rooms = u64::from(args.rooms);
    let bytes = |kib: u64| kib as f64 * 1024.0;
    let rss_end = bytes(measured.idle.rss_end_kib);
    let marginal = (rss_end - bytes(measured.baseline.rss_end_kib)).max(0.0);
    let density = Density {
        rooms,
        rss_mib: round2(rss_end / MIB),
        bytes_per_room: round2(rss_end / rooms as f64),
        marginal_bytes_per_room: round2(marginal / rooms as f64),
        rooms_per_gib: (rooms as f64 * GIB / rss_end).round(),
        marginal_rooms_per_gib: if marginal > 0.0 {
            (rooms as f64 * GIB / marginal).round()
        } else {
            0.0
        },
        idle_cpu_percent_of_core: measured.idle.cpu_percent_of_core,
        baseline_cpu_percent_of_core: measured.baseline.cpu_percent_of_core,
    };
    Ok(DensityReport {
        tool: "mimid-bench",
        version: env!("CARGO_PKG_VERSION"),
        scenario: "idle-density",
        started_unix_s: started_unix_s.as_secs(),
        config: DensityConfig {
            rooms: args.rooms,
            members: MEMBERS,
            rooms_per_user: args.rooms_per_user,
            users: 2 * blocks(args.rooms, args.rooms_per_user),
            setup_concurrency: args.setup_concurrency,
            client_threads: args.client_threads,
            baseline_s: args.baseline.as_secs_f64(),
            idle_s: args.idle.as_secs_f64(),
            timeout_ms: args.timeout_ms,
        },
        node: ChildNode {
            mode: "child-process",
            binary: binary.display().to_string(),
            fsync: config.cluster.fsync,
            shards: config.cluster.shards,
            tick_ms: config.cluster.tick_ms,
            snapshot_interval: config.cluster.snapshot_interval,
            idle_room_secs: config.limits.idle_room_secs,
            log_level: config.log.level.clone(),
            data_dir_parent: parent.display().to_string(),
        },
        machine,
        baseline: measured.baseline,
        creation: measured.creation,
        idle: measured.idle,
        density,
        node_metrics: measured.metrics,
        notes: notes(args, config),
        samples: measured.samples,
    })
}

/// The `mimid` binary: `explicit`, or `mimid` in the directory of the running bench binary.
pub fn mimid_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let exe = std::env::current_exe().context("locating the bench binary")?;
            exe.parent()
                .context("the bench binary has no directory")?
                .join(MIMID_BINARY)
        }
    };
    if !path.is_file() {
        bail!(
            "no mimid binary at {}: build it with `cargo build --release -p mimid-node --bin \
             mimid` (it lands next to mimid-bench in target/release) or pass --mimid PATH",
            path.display()
        );
    }
    Ok(path)
}

/// The child's configuration, written to a file, and how clients reach it.
struct PreparedNode {
    config: Config,
    config_file: PathBuf,
    /// The CA the provider certificate comes from, which the clients trust.
    ca_file: PathBuf,
}

/// Writes a CA, the provider certificate for [`DOMAIN`] and the node's configuration into
/// `dir`.
fn prepare_node(dir: &Path, args: &IdleDensityArgs) -> anyhow::Result<PreparedNode> {
    let now = SystemTime::now();
    let ca = CertAuthority::generate(now, CA_VALIDITY).context("generating the CA")?;
    let ca_files = ca.save(&dir.join("ca")).context("saving the CA")?;
    let leaf = ca
        .issue(&[SubjectName::Dns(DOMAIN.to_owned())], now, LEAF_VALIDITY)
        .and_then(|cert| cert.save(&dir.join("tls"), PROVIDER_STEM))
        .context("issuing the provider certificate")?;
    let mut config = node_config(&NodeArgs {
        target: None,
        ca: None,
        domain: DOMAIN.to_owned(),
        admin: None,
        no_fsync: args.no_fsync,
        shards: args.shards,
        snapshot_interval: args.snapshot_interval,
        data_dir: None,
    });
    config.domain = DOMAIN.to_owned();
    config.data_dir = dir.join("data");
    config.tls = TlsSettings {
        cert: Some(leaf.cert),
        key: Some(leaf.key),
        client_ca: Some(ca_files.cert.clone()),
    };
    // Each block's creator claims every KeyPackage of its member (one pair, up to 100 claims
    // within seconds), far beyond the per-pair and per-target hourly limits sized for people.
    config.limits.rate.key_material_claims_per_pair_per_hour = 1_000_000_000;
    config.limits.rate.key_material_claims_per_target_per_hour = 1_000_000_000;
    // Logging would be measured with the node: warnings and errors only (the in-process nodes
    // of the other scenarios log nothing).
    config.log.level = "warn".into();
    config.federation.resolve_dns = false;
    config
        .validate()
        .context("the child node's configuration")?;
    let config_file = dir.join("mimid.toml");
    std::fs::write(&config_file, config.to_toml()?)
        .with_context(|| format!("writing {}", config_file.display()))?;
    Ok(PreparedNode {
        config,
        config_file,
        ca_file: ca_files.cert,
    })
}

/// What [`measure`] measured.
struct Measured {
    baseline: IdleWindow,
    creation: Creation,
    idle: IdleWindow,
    metrics: NodeMetrics,
    samples: Vec<DensitySample>,
}

async fn measure(
    args: &IdleDensityArgs,
    binary: &Path,
    dir: &Path,
    prepared: &PreparedNode,
    tag: &str,
) -> anyhow::Result<Measured> {
    let progress = !args.output.no_progress;
    let say = |line: &str| {
        if progress {
            eprintln!("# {line}");
        }
    };
    say(&format!(
        "starting {} (log: {})",
        binary.display(),
        dir.join(LOG_FILE).display()
    ));
    let mut child = Child::start(binary, &prepared.config_file, dir).await?;
    let outcome = async {
        wait_ready(child.admin)
            .await
            .context("waiting for the node to be ready")?;
        let sampler: SharedSampler = Arc::new(Mutex::new(Sampler::new(child.pid)));
        say(&format!("baseline: idle for {:?}", args.baseline));
        let baseline = idle_window(&sampler, STAGE_BASELINE, 0, args.baseline, progress).await?;
        let roots =
            mimid_node::tls::read_roots(&prepared.ca_file).context("reading the generated CA")?;
        let endpoint = Endpoint {
            addr: child.quic,
            server_name: DOMAIN.to_owned(),
            roots: Arc::new(roots),
        };
        say(&format!(
            "creating {} rooms of {MEMBERS} members ({} per user, {} blocks at a time)",
            args.rooms, args.rooms_per_user, args.setup_concurrency
        ));
        let creation = create_rooms(&endpoint, args, &sampler, tag, progress).await?;
        say(&format!(
            "idle: {} rooms, no client, for {:?}",
            args.rooms, args.idle
        ));
        let idle = idle_window(&sampler, STAGE_IDLE, creation.rooms, args.idle, progress).await?;
        let metrics = node_metrics(child.admin).await;
        let samples = std::mem::take(&mut sampler.lock().samples);
        Ok::<_, anyhow::Error>(Measured {
            baseline,
            creation,
            idle,
            metrics,
            samples,
        })
    }
    .await;
    let exited = child.exited();
    child.kill().await;
    match (outcome, exited) {
        (Ok(measured), None) => Ok(measured),
        (Ok(_), Some(status)) => bail!(
            "the node exited ({status}) before the end of the run; {}",
            log_tail(dir)
        ),
        (Err(error), _) => Err(error.context(log_tail(dir))),
    }
}

/// The running `mimid start` child.
struct Child {
    process: tokio::process::Child,
    pid: u32,
    quic: SocketAddr,
    admin: SocketAddr,
}

impl Child {
    /// Starts `binary start --config <config_file>` with its stderr in `dir/mimid.log`, and
    /// reads its listening addresses from its stdout.
    async fn start(binary: &Path, config_file: &Path, dir: &Path) -> anyhow::Result<Child> {
        let log = std::fs::File::create(dir.join(LOG_FILE)).context("creating the node's log")?;
        let mut process = tokio::process::Command::new(binary)
            .arg("start")
            .arg("--config")
            .arg(config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = process.id().context("the child has no process id")?;
        let stdout = process.stdout.take().context("the child's stdout")?;
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            // Bounded by START_TIMEOUT and by the child's output.
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(LISTENING_PREFIX) {
                    // The child prints nothing more; the rest of its stdout is drained so a
                    // late line never meets a closed pipe.
                    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    return Ok(Some(rest.to_owned()));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let line = match listening {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => bail!(
                "the node ended its output without listening; {}",
                log_tail(dir)
            ),
            Ok(Err(error)) => return Err(error).context("reading the node's output"),
            Err(_) => bail!(
                "the node did not listen within {START_TIMEOUT:?}; {}",
                log_tail(dir)
            ),
        };
        let (quic, admin) = parse_listening(&line)
            .with_context(|| format!("unexpected listening line `{line}`"))?;
        Ok(Child {
            process,
            pid,
            quic,
            admin,
        })
    }

    /// The child's exit status if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// Kills the child (its data is thrown away with the directory) and reaps it.
    async fn kill(mut self) {
        // An already exited child cannot be killed; it is reaped below either way.
        let _ = self.process.start_kill();
        let _ = self.process.wait().await;
    }
}

/// `quic=ADDR admin=http://ADDR`, as `mimid start` prints after `mimid listening: `.
fn parse_listening(rest: &str) -> Option<(SocketAddr, SocketAddr)> {
    let mut quic = None;
    let mut admin = None;
    for field in rest.split_whitespace() {
        if let Some(addr) = field.strip_prefix("quic=") {
            quic = addr.parse().ok();
        } else if let Some(addr) = field.strip_prefix("admin=http://") {
            admin = addr.trim_end_matches('/').parse().ok();
        }
    }
    Some((quic?, admin?))
}

/// The last lines of the child's log, for an error message.
fn log_tail(dir: &Path) -> String {
    let path = dir.join(LOG_FILE);
    let tail = std::fs::File::open(&path).and_then(|mut file| {
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut text = String::new();
        BufReader::new(file)
            .take(LOG_TAIL_BYTES)
            .read_to_string(&mut text)?;
        Ok(text)
    });
    match tail {
        Ok(text) if text.trim().is_empty() => format!("{} is empty", path.display()),
        Ok(text) => format!("end of {}:\n{}", path.display(), text.trim_end()),
        Err(error) => format!("{} unreadable: {error}", path.display()),
    }
}

/// Samples the node over `window` (memory once a second, CPU at both ends), recording every
/// sample in `sampler` as `stage` with `rooms` rooms.
async fn idle_window(
    sampler: &SharedSampler,
    stage: &'static str,
    rooms: u64,
    window: Duration,
    progress: bool,
) -> anyhow::Result<IdleWindow> {
    let pid = sampler.lock().pid;
    let gone = || anyhow::anyhow!("the node (pid {pid}) is gone");
    let take = || sampler.lock().take(stage, rooms).ok_or_else(gone);
    let start = take()?;
    let machine_start = machine_cpu_now();
    let own_start = own_cpu_now();
    let started = Instant::now();
    let mut rss_max = start.rss_kib;
    let mut previous = start;
    let mut next = started + TICK;
    if progress {
        eprintln!("{:>8} {:>10} {:>10}", "elapsed", "rss MiB", "cpu %");
    }
    // Bounded by `window`.
    while next < started + window {
        tokio::time::sleep_until(next).await;
        let sample = take()?;
        rss_max = rss_max.max(sample.rss_kib);
        if progress {
            let cpu = sample.cpu.saturating_sub(previous.cpu).as_secs_f64() / TICK.as_secs_f64();
            eprintln!(
                "{:>7.1}s {:>10.1} {:>10.1}",
                started.elapsed().as_secs_f64(),
                sample.rss_kib as f64 / 1024.0,
                cpu * 100.0
            );
        }
        previous = sample;
        next += TICK;
    }
    tokio::time::sleep_until(started + window).await;
    let end = take()?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = end.cpu.saturating_sub(start.cpu);
    Ok(IdleWindow {
        window_s: round_millis(elapsed),
        rss_start_kib: start.rss_kib,
        rss_end_kib: end.rss_kib,
        rss_max_kib: rss_max.max(end.rss_kib),
        hwm_kib: end.hwm_kib,
        cpu_s: round_millis(cpu.as_secs_f64()),
        cpu_percent_of_core: round2(cpu.as_secs_f64() / elapsed * 100.0),
        other_processes_s: other_busy(machine_start, own_start, cpu),
    })
}

/// Busy time of the machine since `machine_start` that was neither this process's (since
/// `own_start`) nor the node's (`node_cpu`).
fn other_busy(
    machine_start: Option<crate::system::MachineCpu>,
    own_start: Option<Duration>,
    node_cpu: Duration,
) -> Option<f64> {
    let busy = machine_cpu_now()?.busy.saturating_sub(machine_start?.busy);
    let own = own_cpu_now()?.saturating_sub(own_start?);
    Some(round_millis(
        busy.saturating_sub(own)
            .saturating_sub(node_cpu)
            .as_secs_f64(),
    ))
}

/// Blocks of `per_user` rooms for `rooms` rooms.
fn blocks(rooms: u32, per_user: u32) -> u64 {
    u64::from(rooms).div_ceil(u64::from(per_user.max(1)))
}

/// The rooms of block `block`: `first..first + count`.
fn block_rooms(block: u64, rooms: u32, per_user: u32) -> std::ops::Range<u64> {
    let per_user = u64::from(per_user.max(1));
    let first = block * per_user;
    first..(first + per_user).min(u64::from(rooms))
}

/// Creates every room, `setup_concurrency` blocks at a time, printing one line per second.
async fn create_rooms(
    endpoint: &Endpoint,
    args: &IdleDensityArgs,
    sampler: &SharedSampler,
    tag: &str,
    progress: bool,
) -> anyhow::Result<Creation> {
    let naming = Naming {
        domain: DOMAIN.to_owned(),
        tag: tag.to_owned(),
        phase: 0,
    };
    let created = Arc::new(AtomicU64::new(0));
    let (stop_ticker, stopped) = tokio::sync::oneshot::channel();
    let node_start = sampler
        .lock()
        .take(STAGE_CREATION, 0)
        .context("the node is gone")?;
    let machine_start = machine_cpu_now();
    let own_start = own_cpu_now();
    let started = Instant::now();
    let ticker = tokio::spawn(creation_ticker(
        created.clone(),
        stopped,
        sampler.clone(),
        args.rooms,
        progress,
    ));
    let timeout = Duration::from_millis(args.timeout_ms);
    let result = stream::iter(0..blocks(args.rooms, args.rooms_per_user))
        .map(|block| {
            let rooms = block_rooms(block, args.rooms, args.rooms_per_user);
            create_block(endpoint, &naming, rooms, timeout, &created)
        })
        .buffer_unordered(args.setup_concurrency as usize)
        .try_for_each(|()| async { Ok(()) })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    // The ticker only prints and samples; if it is gone, nothing in the report changes.
    let _ = stop_ticker.send(());
    let _ = ticker.await;
    let node_end = sampler
        .lock()
        .take(STAGE_CREATION, created.load(Ordering::Relaxed))
        .context("the node is gone");
    result?;
    let node_end = node_end?;
    let node_cpu = node_end.cpu.saturating_sub(node_start.cpu);
    let generator_cpu = match (own_cpu_now(), own_start) {
        (Some(now), Some(start)) => now.saturating_sub(start),
        _ => Duration::ZERO,
    };
    let rooms = created.load(Ordering::Relaxed);
    Ok(Creation {
        rooms,
        elapsed_s: round_millis(elapsed),
        rooms_per_s: (rooms as f64 / elapsed.max(1e-9) * 10.0).round() / 10.0,
        node_cpu_s: round_millis(node_cpu.as_secs_f64()),
        generator_cpu_s: round_millis(generator_cpu.as_secs_f64()),
        node_cpu_ms_per_room: round_millis(node_cpu.as_secs_f64() * 1000.0 / rooms.max(1) as f64),
        other_processes_s: other_busy(machine_start, own_start, node_cpu),
        rss_after_kib: node_end.rss_kib,
        hwm_after_kib: node_end.hwm_kib,
    })
}

/// Once a second while rooms are created: samples the node (rooms so far, memory, CPU) and,
/// with `progress`, prints a line.
async fn creation_ticker(
    created: Arc<AtomicU64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    sampler: SharedSampler,
    rooms: u32,
    progress: bool,
) {
    let started = Instant::now();
    let mut previous = 0;
    if progress {
        eprintln!(
            "{:>8} {:>10} {:>9} {:>10}",
            "elapsed", "rooms", "rooms/s", "rss MiB"
        );
    }
    let mut tick = tokio::time::interval_at(started + TICK, TICK);
    // Bounded by `stop`, which create_rooms sends (or drops) when the last block ended.
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let now = created.load(Ordering::Relaxed);
        let sample = sampler.lock().take(STAGE_CREATION, now);
        if progress {
            let rss = sample.map_or(0.0, |s| s.rss_kib as f64 / 1024.0);
            eprintln!(
                "{:>7.1}s {:>10} {:>9} {:>10.1}",
                started.elapsed().as_secs_f64(),
                format!("{now}/{rooms}"),
                now - previous,
                rss
            );
        }
        previous = now;
    }
}

/// Creates the rooms `rooms` with one creator and one member: the member publishes one
/// KeyPackage per room, the creator creates each room and adds the member.
async fn create_block(
    endpoint: &Endpoint,
    naming: &Naming,
    rooms: std::ops::Range<u64>,
    timeout: Duration,
    created: &AtomicU64,
) -> anyhow::Result<()> {
    let first = rooms.start;
    let count = usize::try_from(rooms.end - rooms.start).context("block size")?;
    let users = async {
        let creator = MimiClient::register(endpoint.clone(), naming.client(first, 0)?)
            .await
            .context("registering the creator")?;
        let member = MimiClient::register(endpoint.clone(), naming.client(first, 1)?)
            .await
            .context("registering the member")?;
        member
            .publish_key_packages(count)
            .await
            .context("publishing the member's KeyPackages")?;
        Ok::<_, anyhow::Error>((creator, member))
    };
    let (mut creator, member) = tokio::time::timeout(timeout, users)
        .await
        .with_context(|| format!("block of room {first}: registration timed out"))?
        .with_context(|| format!("block of room {first}"))?;
    let outcome = async {
        for room_idx in rooms {
            let room = naming.room(room_idx)?;
            tokio::time::timeout(timeout, async {
                creator
                    .create_room(&room)
                    .await
                    .context("creating the room")?;
                add_users(&mut creator, &room, &[member.user()], "the member").await
            })
            .await
            .with_context(|| format!("room {room_idx}: creation timed out"))?
            .with_context(|| format!("room {room_idx}"))?;
            created.fetch_add(1, Ordering::Relaxed);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Closing releases the clients' connections on both sides; a slow close changes nothing
    // that is measured.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, creator.close()).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, member.close()).await;
    outcome
}

/// The node's gauges and counters from `/metrics`; unknown if it cannot be read.
async fn node_metrics(admin: SocketAddr) -> NodeMetrics {
    let body = match admin_get(admin, "/metrics").await {
        Ok((200, body)) => body,
        _ => String::new(),
    };
    NodeMetrics {
        rooms_active: metric_value(&body, "mimid_rooms_active"),
        push_streams: metric_value(&body, "mimid_push_streams"),
        raft_applied: metric_value(&body, "mimid_raft_applied_total"),
        raft_snapshots: metric_value(&body, "mimid_raft_snapshots_total"),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn notes(args: &IdleDensityArgs, config: &Config) -> Vec<String> {
    vec![
        format!(
            "The node is a `mimid start` child process; its memory (VmRSS, VmHWM of \
             /proc/PID/status) and CPU (utime + stime of /proc/PID/stat) are its own. \
             Configuration: the node's defaults (fsync {}, {} shards, tick {} ms, snapshot \
             every {} entries per shard) with loopback listeners, log level warn, and the \
             per-user and KeyPackage-claim rate limits lifted for the bench's users.",
            if config.cluster.fsync { "on" } else { "off" },
            config.cluster.shards,
            config.cluster.tick_ms,
            config.cluster.snapshot_interval
        ),
        format!(
            "Each room has 2 members: its creator and a member added by a Commit (KeyPackage \
             claimed through keyMaterial, Welcome stored at the hub). Users come in pairs, one \
             pair per {} rooms; the member never connected a push stream (offline since it \
             was added), and no client is connected during the idle windows.",
            args.rooms_per_user
        ),
        format!(
            "Room actors stay running for limits.idle_room_secs ({} s) after their last \
             request, so an idle window shorter than that measures them too \
             (node_metrics.rooms_active). Log items are kept for limits.log_retention_secs \
             ({} s) whether acknowledged or not.",
            config.limits.idle_room_secs, config.limits.log_retention_secs
        ),
        "Memory is VmRSS at the end of the idle window; marginal figures subtract the fresh \
         node's VmRSS at the end of the baseline window. The allocator keeps freed memory, so \
         VmRSS includes what creating the rooms left behind (compare creation.hwm_after_kib)."
            .into(),
        "Idle CPU is the node's CPU time over the idle window in percent of one core: every \
         shard's Raft group ticks and its leader heartbeats (no hibernation yet), plus \
         housekeeping every limits.housekeeping_secs."
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_both_addresses() {
        assert_eq!(
            parse_listening("quic=127.0.0.1:4433 admin=http://127.0.0.1:9090"),
            Some((
                "127.0.0.1:4433".parse().expect("valid"),
                "127.0.0.1:9090".parse().expect("valid")
            ))
        );
        assert_eq!(parse_listening("quic=127.0.0.1:4433"), None);
        assert_eq!(
            parse_listening("quic=nowhere admin=http://127.0.0.1:9090"),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn samples_count_from_the_first_and_give_cpu_since_the_previous() {
        let at = |cpu_ms: u64, rss_kib: u64| ProcessSample {
            rss_kib,
            hwm_kib: rss_kib + 1,
            cpu: Duration::from_millis(cpu_ms),
        };
        let mut sampler = Sampler::new(1);
        sampler.record(STAGE_BASELINE, 0, &at(1000, 100));
        tokio::time::advance(Duration::from_secs(2)).await;
        sampler.record(STAGE_CREATION, 5, &at(1500, 200));
        sampler.record(STAGE_CREATION, 6, &at(1510, 200));
        tokio::time::advance(Duration::from_millis(500)).await;
        sampler.record(STAGE_IDLE, 6, &at(1600, 200));
        assert_eq!(sampler.samples[0].elapsed_s, 0.0);
        assert_eq!(sampler.samples[0].cpu_percent_of_core, None);
        assert_eq!(
            sampler.samples[1],
            DensitySample {
                stage: STAGE_CREATION,
                elapsed_s: 2.0,
                rooms: 5,
                rss_kib: 200,
                hwm_kib: 201,
                node_cpu_s: 0.5,
                cpu_percent_of_core: Some(25.0),
            }
        );
        assert_eq!(
            sampler.samples[2].cpu_percent_of_core, None,
            "too close to the previous sample"
        );
        assert_eq!(
            sampler.samples[3].cpu_percent_of_core,
            Some(20.0),
            "since the last sample with a share"
        );
    }

    #[test]
    fn blocks_cover_every_room_once() {
        assert_eq!(blocks(200, 50), 4);
        assert_eq!(blocks(201, 50), 5);
        assert_eq!(blocks(1, 100), 1);
        let rooms: Vec<u64> = (0..blocks(201, 50))
            .flat_map(|b| block_rooms(b, 201, 50))
            .collect();
        assert_eq!(rooms, (0..201).collect::<Vec<u64>>());
        assert_eq!(block_rooms(4, 201, 50), 200..201);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let err = mimid_binary(Some(&dir.path().join("mimid"))).expect_err("missing");
        assert!(
            err.to_string()
                .contains("cargo build --release -p mimid-node"),
            "{err}"
        );
        let file = dir.path().join("mimid");
        std::fs::write(&file, b"").expect("write");
        assert_eq!(mimid_binary(Some(&file)).expect("present"), file);
    }

    #[test]
    fn the_child_configuration_round_trips_through_toml() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "b",
            "idle-density",
            "--no-fsync",
            "--shards",
            "4",
        ])
        .expect("valid");
        let crate::cli::Scenario::IdleDensity(args) = cli.scenario else {
            panic!("idle-density expected");
        };
        let prepared = prepare_node(dir.path(), &args).expect("prepared");
        let read = Config::load(&mimid_node::config::ConfigSources {
            file: Some(prepared.config_file.clone()),
            env: Vec::new(),
            overrides: Default::default(),
        })
        .expect("the node reads it back");
        assert_eq!(read, prepared.config);
        assert_eq!(read.domain, DOMAIN);
        assert!(!read.cluster.fsync);
        assert_eq!(read.cluster.shards, 4);
        assert_eq!(read.log.level, "warn");
        assert!(
            read.tls.files().expect("complete").is_some(),
            "mimid start needs TLS files"
        );
        assert!(read.listen.port() == 0 && read.admin_listen.port() == 0);
    }
}
