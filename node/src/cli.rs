//! The `mimid` command line: parsing (clap derive) and what each command does. `main.rs` only
//! parses and reports the final error, so every command is testable from here.
//!
//! - `mimid dev [flags]`: one node on the embedded defaults (domain `localhost`, data in
//!   `./mimid-data`), with a dev CA and provider certificate generated under `data_dir/certs`
//!   and an admin token in `data_dir/admin.token` on first start, reused afterwards.
//! - `mimid start --config FILE [flags]`: the same, but TLS material must come from the
//!   configuration: production never runs on generated certificates by accident. Without
//!   `admin_token_file` it starts only on a loopback `admin_listen`, with a warning.
//! - `mimid config [--config FILE] [flags]`: prints the effective configuration as TOML.
//! - `mimid cert create-ca | create-provider | create-node`: PEM files an operator deploys.
//! - `mimid admin-token --out FILE`: a new admin token (mode 0600) for `admin_token_file`.
//! - `mimid demo [--data-dir DIR]`: two providers in this process and a federated room walked
//!   through step by step ([`crate::demo`]); exit status 0 only if every step did what it should.
//! - `mimid backup --admin ADDR --out FILE`: an online backup from a running node's admin
//!   listener, verified and written atomically ([`crate::backup`]).
//! - `mimid restore --from FILE --data-dir DIR [--config FILE]`: a new data directory from a
//!   backup, for a node started with the same configuration.
//! - `mimid abuse reports | blocks | block TARGET | unblock TARGET --admin ADDR`: the abuse
//!   reports and the blocklist of a running node, through its admin listener
//!   ([`crate::admin`]; ops/runbooks/abuse.md).
//! - `mimid room status ROOM --admin ADDR`: where a room lives (data residency, issue 9): its
//!   shard, the residency set it is pinned to and the shard's leader, voters and learners with
//!   their regions ([`crate::admin`] `POST /admin/rooms/status`; ops/topology/multi-region.md).
//! - `mimid node status | drain | undrain | add | decommission --host ADDR`: the nodes and
//!   shards of a running cluster, and its node-level operations ([`crate::cluster_ops`];
//!   ops/runbooks/scale-out.md, ops/runbooks/drain-decommission.md).
//! - `mimid shard split N [--rooms M] --admin ADDR`: hands about half (or `M`) of shard `N`'s
//!   rooms to a split shard and prints which moved (`POST /admin/shards/split`,
//!   [`crate::cluster_ops::split`]; ops/runbooks/shard-split.md).
//! - `mimid start --join ADDR,ADDR --config FILE` and `mimid init --host ADDR`: a cluster
//!   formed CockroachDB-style (`cluster.join`, [`crate::cluster_ops::bootstrap`];
//!   ops/runbooks/bootstrap.md): every node started with the node-to-node addresses of one or
//!   more others waits, printing `mimid waiting for init: admin=http://…`, until `mimid init`
//!   runs once against one of them.
//!
//! `mimid backup`, `mimid abuse …`, `mimid room …`, `mimid node …`, `mimid shard …` and
//! `mimid init` send the
//! node's admin token ([`AdminAuthFlags`], [`crate::admin::auth`]) from `--token-file FILE`,
//! else from `--data-dir DIR` (the `DIR/admin.token` of a `mimid dev` node), else from the file
//! named by `$MIMID_ADMIN_TOKEN_FILE`; with none of them they send no token, which only a node
//! without `admin_token_file` (loopback) accepts.
//!
//! Configuration layering (defaults, file, `MIMID_*` environment, flags) is
//! [`crate::config`]'s; this module maps flags onto it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::admin::auth::{token_file_for, ADMIN_TOKEN_FILE_ENV};
use crate::admin::AdminToken;
use crate::certs::{
    ensure_dev_certs, CertAuthority, SubjectName, CA_VALIDITY, LEAF_VALIDITY, NODE_STEM,
    PROVIDER_STEM,
};
use crate::config::{self, Config, ConfigSources, LogFormat, Overrides, TlsSettings};

/// `--days` is converted with this; certificate lifetimes are whole days.
const SECONDS_PER_DAY: u64 = 24 * 3600;

/// mimid: a MIMI (More Instant Messaging Interoperability) provider server.
#[derive(Debug, Parser)]
#[command(name = "mimid", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a single development node with generated TLS certificates.
    Dev(DevArgs),
    /// Run a node from a configuration file with operator-provided TLS material.
    Start(StartArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(ConfigArgs),
    /// Create certificates for mutual TLS between providers and nodes.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Create an admin token file (mode 0600) for the configuration key admin_token_file.
    AdminToken(AdminTokenArgs),
    /// Start two providers (a.example, b.example) in this process and walk Alice@a and Bob@b
    /// through a federated room, printing each step: a first look at MIMI federation.
    Demo(DemoArgs),
    /// Take an online backup of a running node through its admin listener.
    Backup(BackupArgs),
    /// Create a new data directory from a backup made by `mimid backup`.
    Restore(RestoreArgs),
    /// Show a running cluster's nodes and shards, drain a node, add or decommission one.
    Node(NodeArgs),
    /// Create the cluster the nodes started with `mimid start --join` form, on one of them
    /// (once; a second init is refused).
    Init(InitArgs),
    /// Read abuse reports and block or unblock users and providers on a running node.
    Abuse(AbuseArgs),
    /// Show where a room lives: its shard, its residency set and the shard's replicas.
    Room(RoomArgs),
    /// Split a shard: hand about half its rooms to a split shard (cluster.split_shards).
    Shard(ShardArgs),
}

/// Where the admin commands (`mimid backup`, `mimid abuse …`, `mimid room …`, `mimid node …`,
/// `mimid shard …`) find the node's admin token, first given first: `--token-file`,
/// `--data-dir`, `$MIMID_ADMIN_TOKEN_FILE`.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminAuthFlags {
    /// The file holding the node's admin token [config: admin_token_file]; default: the file
    /// named by $MIMID_ADMIN_TOKEN_FILE.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The data directory of a `mimid dev` node: use its admin token, DIR/admin.token.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl AdminAuthFlags {
    /// The token to send, read from the file the flags or `env` name; `None` when none is
    /// named.
    pub fn token(&self, env: &[(String, String)]) -> anyhow::Result<Option<AdminToken>> {
        token_file_for(self.token_file.as_deref(), self.data_dir.as_deref(), env)
            .map(|path| AdminToken::load(&path))
            .transpose()
    }
}

/// `mimid node …`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The operation.
    #[command(subcommand)]
    pub command: crate::cluster_ops::NodeCommand,
    /// The admin token.
    #[command(flatten)]
    pub auth: AdminAuthFlags,
}

/// `mimid shard …`.
#[derive(Debug, Args)]
pub struct ShardArgs {
    /// The operation.
    #[command(subcommand)]
    pub command: crate::cluster_ops::ShardCommand,
    /// The admin token.
    #[command(flatten)]
    pub auth: AdminAuthFlags,
}

/// `mimid init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The admin listener of one node started with --join, `HOST:PORT` [config:
    /// admin_listen]; it bootstraps the cluster.
    #[arg(long, value_name = "ADDR")]
    pub host: String,
    /// The admin token.
    #[command(flatten)]
    pub auth: AdminAuthFlags,
}

/// `mimid abuse …`.
#[derive(Debug, Args)]
pub struct AbuseArgs {
    /// The operation.
    #[command(subcommand)]
    pub command: AbuseCommand,
    /// The admin token.
    #[command(flatten)]
    pub auth: AdminAuthFlags,
}

/// `mimid room …`.
#[derive(Debug, Args)]
pub struct RoomArgs {
    /// The operation.
    #[command(subcommand)]
    pub command: RoomCommand,
    /// The admin token.
    #[command(flatten)]
    pub auth: AdminAuthFlags,
}

/// `mimid room …`: through a running node's admin listener.
#[derive(Debug, Clone, Subcommand)]
pub enum RoomCommand {
    /// Where a room lives: whether it exists, its shard, the residency set it is pinned to
    /// and the shard's leader, voters and learners with their regions.
    Status {
        /// The node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// The room, `mimi://<domain>/r/<name>`.
        room: String,
    },
}

/// Arguments of `mimid admin-token`.
#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    /// The file to create (mode 0600); an existing file is left alone and is an error.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `mimid abuse …`: through a running node's admin listener.
#[derive(Debug, Clone, Subcommand)]
pub enum AbuseCommand {
    /// List the abuse reports the rooms hosted by the node's provider received.
    Reports {
        /// The node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        admin: String,
    },
    /// List the blocked users and providers.
    Blocks {
        /// The node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        admin: String,
    },
    /// Block a user (mimi://domain/u/name) or a whole provider (domain).
    Block {
        /// The node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// A user URI or a provider domain.
        target: String,
    },
    /// Unblock a user or a provider.
    Unblock {
        /// The node's admin listener, `HOST:PORT` [config: admin_listen].
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// A user URI or a provider domain.
        target: String,
    },
}

/// Flags that override configuration keys (highest precedence).
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigFlags {
    /// Directory for replicated state and generated certificates [config: data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address of the HTTP/3 listener [config: listen].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// TCP address of the admin HTTP listener [config: admin_listen].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// The provider's DNS domain [config: domain].
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Log format [config: log.format].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Arguments of `mimid dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Optional TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides.
    #[command(flatten)]
    pub flags: ConfigFlags,
}

/// Arguments of `mimid start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// TOML configuration file; it must name the TLS files.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Form or join a cluster: the node-to-node addresses (cluster.listen) of other nodes,
    /// comma-separated; this node's own may be among them. A new node waits for `mimid init`
    /// [config: cluster.join].
    #[arg(long, value_name = "ADDR,ADDR", value_delimiter = ',')]
    pub join: Vec<SocketAddr>,
    /// Where this node runs: ordered key=value tiers, most significant first, e.g.
    /// `region=eu,zone=eu-1`; placement spreads each shard's voters over regions and zones
    /// [config: locality].
    #[arg(long, value_name = "KEY=VALUE,…")]
    pub locality: Option<String>,
    /// Overrides.
    #[command(flatten)]
    pub flags: ConfigFlags,
}

/// Arguments of `mimid config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Optional TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides.
    #[command(flatten)]
    pub flags: ConfigFlags,
}

/// Arguments of `mimid demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the providers' data (sled, certificates) in DIR, which must be empty or missing;
    /// default: a temporary directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seconds each step may take before the demo fails.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::demo::DEFAULT_STEP_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub step_timeout_secs: u64,
}

/// Arguments of `mimid backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The node's admin listener, `HOST:PORT` [config: admin_listen].
    #[arg(long, value_name = "ADDR")]
    pub admin: String,
    /// Where to write the backup (replaced atomically, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Seconds to wait for the node to produce the backup.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::backup::DEFAULT_FETCH_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
    /// The admin token.
    #[command(flatten)]
    pub auth: AdminAuthFlags,
}

/// Arguments of `mimid restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The new data directory; must be missing or empty [config: data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The configuration the restored node will run with (domain, cluster.shards, node_id).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `mimid cert …`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a private CA: DIR/ca.pem and DIR/ca.key.pem (mode 0600).
    CreateCa {
        /// Output directory (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = CA_VALIDITY.as_secs() / SECONDS_PER_DAY)]
        days: u64,
    },
    /// Create a provider certificate (DOMAIN as DNS SAN, server and client auth):
    /// OUT/provider.pem and OUT/provider.key.pem.
    CreateProvider {
        /// The provider's domain.
        domain: String,
        /// Directory of the CA made by `create-ca`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = LEAF_VALIDITY.as_secs() / SECONDS_PER_DAY)]
        days: u64,
    },
    /// Create a node certificate (each ADDR as IP or DNS SAN, server and client auth):
    /// OUT/node.pem and OUT/node.key.pem.
    CreateNode {
        /// IP addresses and DNS names the node is reached at.
        #[arg(required = true, value_name = "ADDR")]
        addrs: Vec<String>,
        /// Directory of the CA made by `create-ca`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = LEAF_VALIDITY.as_secs() / SECONDS_PER_DAY)]
        days: u64,
    },
}

/// Runs a parsed command line to completion. Human-readable results go to stdout, logs to
/// stderr.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => {
            let config = dev_config(args.config, &args.flags, config::process_env())?;
            run_node(config)
        }
        Command::Start(args) => {
            let mut config = start_config(&args.config, &args.flags, config::process_env())?;
            if !args.join.is_empty() {
                config.cluster.join = args.join;
            }
            if let Some(locality) = args.locality {
                config.locality = locality;
            }
            config.validate()?;
            run_node(config)
        }
        Command::Config(args) => {
            let config = load(args.config, &args.flags, config::process_env())?;
            print!("{}", config.to_toml()?);
            config.validate()?;
            Ok(())
        }
        Command::Cert(command) => {
            for line in run_cert(command, SystemTime::now())? {
                println!("{line}");
            }
            Ok(())
        }
        Command::AdminToken(args) => {
            println!("{}", run_admin_token(&args)?);
            Ok(())
        }
        Command::Demo(args) => run_demo(args),
        Command::Backup(args) => {
            let token = args.auth.token(&config::process_env())?;
            println!("{}", run_backup(&args, token.as_ref())?);
            Ok(())
        }
        Command::Node(args) => {
            let token = args.auth.token(&config::process_env())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let command = crate::cluster_ops::run_node_command(&args.command, token.as_ref());
            for line in runtime.block_on(command)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Shard(args) => {
            let token = args.auth.token(&config::process_env())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let command = crate::cluster_ops::run_shard_command(&args.command, token.as_ref());
            for line in runtime.block_on(command)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Init(args) => {
            let token = args.auth.token(&config::process_env())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            for line in
                runtime.block_on(crate::cluster_ops::run_init(&args.host, token.as_ref()))?
            {
                println!("{line}");
            }
            Ok(())
        }
        Command::Restore(args) => {
            println!("{}", run_restore(args, config::process_env())?);
            Ok(())
        }
        Command::Abuse(args) => {
            let token = args.auth.token(&config::process_env())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            for line in runtime.block_on(run_abuse(&args.command, token.as_ref()))? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Room(args) => {
            let token = args.auth.token(&config::process_env())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            for line in runtime.block_on(run_room(&args.command, token.as_ref()))? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// Runs `mimid admin-token`: a new token in `args.out`; returns the line to print.
pub fn run_admin_token(args: &AdminTokenArgs) -> anyhow::Result<String> {
    AdminToken::create(&args.out)?;
    Ok(format!(
        "admin token (keep private): {}; name it in admin_token_file of every node and pass it \
         to the admin commands with --token-file or {ADMIN_TOKEN_FILE_ENV}",
        args.out.display()
    ))
}

/// Runs `mimid abuse …` against the node's admin listener with the admin `token` (when the
/// node has one); returns the lines to print.
///
/// Cancel safety: a cancelled block or unblock may have reached only some shards; running it
/// again completes it.
pub async fn run_abuse(
    command: &AbuseCommand,
    token: Option<&AdminToken>,
) -> anyhow::Result<Vec<String>> {
    use crate::admin::auth::node_answered;
    use crate::admin::{
        admin_call, BlockAnswer, BlockRequest, BlocklistListing, ReportsListing, BLOCKS_PATH,
        BLOCK_PATH, REPORTS_PATH, UNBLOCK_PATH,
    };
    let call = |admin: &str, method: &'static str, path: &'static str, body: Vec<u8>| {
        let admin = admin.to_owned();
        async move {
            let (status, answer) = admin_call(&admin, token, method, path, &body).await?;
            if status != 200 {
                return Err(node_answered(status, &answer));
            }
            anyhow::Ok(answer)
        }
    };
    match command {
        AbuseCommand::Reports { admin } => {
            let answer = call(admin, "GET", REPORTS_PATH, Vec::new()).await?;
            let listing: ReportsListing =
                serde_json::from_slice(&answer).context("reading the reports")?;
            let mut lines = vec![format!("{} abuse reports", listing.reports.len())];
            for report in listing.reports {
                lines.push(format!(
                    "{} in {}: {} reported by {} ({}), reason {}, note {:?}",
                    report.received_ms,
                    report.room,
                    report.alleged_abuser,
                    report
                        .reporting_user
                        .as_deref()
                        .unwrap_or("an unnamed user"),
                    report.submitted_by,
                    report.reason_code,
                    report.note
                ));
                for message in report.messages {
                    lines.push(format!(
                        "  {} at {}: {}",
                        message.sender,
                        message.accepted_ms,
                        match &message.text {
                            Some(text) => format!("{text:?}"),
                            None =>
                                format!("<{} content bytes>", message.content_base64.len() * 3 / 4),
                        }
                    ));
                }
            }
            for missing in listing.missing_shards {
                lines.push(format!(
                    "shard {} could not be read, its reports are missing (repeat): {}",
                    missing.shard, missing.reason
                ));
            }
            Ok(lines)
        }
        AbuseCommand::Blocks { admin } => {
            let answer = call(admin, "GET", BLOCKS_PATH, Vec::new()).await?;
            let listing: BlocklistListing =
                serde_json::from_slice(&answer).context("reading the blocklist")?;
            Ok(listing
                .providers
                .iter()
                .map(|domain| format!("provider {domain}"))
                .chain(listing.users.iter().map(|user| format!("user {user}")))
                .collect())
        }
        AbuseCommand::Block { admin, target } | AbuseCommand::Unblock { admin, target } => {
            let path = if matches!(command, AbuseCommand::Block { .. }) {
                BLOCK_PATH
            } else {
                UNBLOCK_PATH
            };
            let body = serde_json::to_vec(&BlockRequest {
                target: target.clone(),
            })?;
            let answer = call(admin, "POST", path, body).await?;
            let answer: BlockAnswer =
                serde_json::from_slice(&answer).context("reading the answer")?;
            Ok(vec![format!(
                "{} {}{}",
                answer.target,
                if answer.blocked {
                    "blocked"
                } else {
                    "unblocked"
                },
                if answer.changed {
                    ""
                } else {
                    " (it was already)"
                }
            )])
        }
    }
}

/// Runs `mimid room …` against the node's admin listener with the admin `token` (when the
/// node has one); returns the lines to print ([`room_status_lines`]).
///
/// Cancel safety: cancel safe (it only reads).
pub async fn run_room(
    command: &RoomCommand,
    token: Option<&AdminToken>,
) -> anyhow::Result<Vec<String>> {
    use crate::admin::auth::node_answered;
    use crate::admin::{admin_call, RoomStatusRequest, ROOM_STATUS_PATH};
    match command {
        RoomCommand::Status { admin, room } => {
            let body = serde_json::to_vec(&RoomStatusRequest { room: room.clone() })?;
            let (status, answer) =
                admin_call(admin, token, "POST", ROOM_STATUS_PATH, &body).await?;
            if status != 200 {
                return Err(node_answered(status, &answer));
            }
            let status: mimid_actors::hub::residency::RoomStatus =
                serde_json::from_slice(&answer).context("reading the room status")?;
            Ok(room_status_lines(&status))
        }
    }
}

/// What `mimid room status` prints: `room <id>`, `exists yes|no`, `shard N`, `residency <set>
/// (regions eu, …)` or `residency none`, `leader N` (or `none`: no descriptor recorded, as on
/// a node running alone), `voters 1 (eu), 2 (eu), 3 (eu)` and `learners …` (`none` when
/// empty; a node without a region shows `(no region)`).
pub fn room_status_lines(status: &mimid_actors::hub::residency::RoomStatus) -> Vec<String> {
    let members = |nodes: &[(u64, Option<String>)]| {
        if nodes.is_empty() {
            return "none".to_owned();
        }
        nodes
            .iter()
            .map(|(node, region)| match region {
                Some(region) => format!("{node} ({region})"),
                None => format!("{node} (no region)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        format!("room {}", status.room),
        format!("exists {}", if status.exists { "yes" } else { "no" }),
        format!("shard {}", status.shard),
        match &status.residency {
            Some(set) => format!("residency {set} (regions {})", status.regions.join(", ")),
            None => "residency none".to_owned(),
        },
        match status.leader {
            Some(leader) => format!("leader {leader}"),
            None => "leader none".to_owned(),
        },
        format!("voters {}", members(&status.voters)),
        format!("learners {}", members(&status.learners)),
    ]
}

/// Runs `mimid backup` with the admin `token` (when the node has one); returns the line to
/// print.
pub fn run_backup(args: &BackupArgs, token: Option<&AdminToken>) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let saved = runtime.block_on(crate::backup::backup_to_file(
        &args.admin,
        token,
        &args.out,
        timeout,
    ))?;
    Ok(format!(
        "backup of {}: {} shards, {} bytes, sha256 {} -> {}",
        saved.domain,
        saved.shards,
        saved.bytes,
        saved.sha256,
        args.out.display()
    ))
}

/// Runs `mimid restore` with the configuration from `--config`, `env` and `--data-dir`;
/// returns the line to print.
pub fn run_restore(args: RestoreArgs, env: Vec<(String, String)>) -> anyhow::Result<String> {
    let flags = ConfigFlags {
        data_dir: Some(args.data_dir),
        ..ConfigFlags::default()
    };
    let config = load(args.config, &flags, env)?;
    config.validate()?;
    let restored = crate::backup::restore(&args.from, &config)?;
    Ok(format!(
        "restored {} into {}: {} shards ({}), {} rooms hosted, backup taken at {} ms since the \
         Unix epoch; start the node with this configuration",
        restored.domain,
        config.data_dir.display(),
        restored.shards,
        restored.positions,
        restored.rooms,
        restored.taken_at_ms
    ))
}

/// Runs `mimid demo`, printing the transcript on stdout as it happens; node logs go to stderr
/// from level `warn` (or as `RUST_LOG` says) so they do not drown the transcript.
fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let log = config::LogSettings {
        format: LogFormat::Text,
        level: "warn".into(),
    };
    let (_telemetry, _) = crate::telemetry::init(&log, &config::TelemetrySettings::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mimid-worker")
        .build()
        .context("starting the async runtime")?;
    let options = crate::demo::DemoOptions {
        data_dir: args.data_dir,
        step_timeout: Duration::from_secs(args.step_timeout_secs),
    };
    // A closed stdout (`mimid demo | head`) must not stop the demo: lines that cannot be
    // written are dropped, and the exit status still tells whether every step passed.
    let mut print = |line: &str| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    };
    runtime.block_on(crate::demo::run_demo(&options, &mut print))?;
    Ok(())
}

/// The configuration of `mimid dev`: validated, with dev TLS files filled in unless the
/// configuration names its own, and an admin token: `admin_token_file` when configured, else
/// `data_dir/admin.token`, created on first start and reused afterwards.
pub fn dev_config(
    file: Option<PathBuf>,
    flags: &ConfigFlags,
    env: Vec<(String, String)>,
) -> anyhow::Result<Config> {
    let mut config = load(file, flags, env)?;
    let dev_token = config.admin_token_file.is_none();
    if dev_token {
        config.admin_token_file = Some(config::dev_admin_token_file(&config.data_dir));
    }
    config.validate()?;
    if let (true, Some(path)) = (dev_token, &config.admin_token_file) {
        AdminToken::load_or_create(path)
            .with_context(|| format!("preparing the dev admin token {}", path.display()))?;
    }
    if config.tls.files()?.is_none() {
        let dir = config::dev_cert_dir(&config.data_dir);
        let files = ensure_dev_certs(&dir, SystemTime::now())
            .with_context(|| format!("preparing dev certificates in {}", dir.display()))?;
        config.tls = TlsSettings {
            cert: Some(files.cert),
            key: Some(files.key),
            client_ca: Some(files.client_ca),
        };
    }
    Ok(config)
}

/// The configuration of `mimid start`: validated, and it must name all TLS files.
pub fn start_config(
    file: &Path,
    flags: &ConfigFlags,
    env: Vec<(String, String)>,
) -> anyhow::Result<Config> {
    let config = load(Some(file.to_owned()), flags, env)?;
    config.validate()?;
    if let Some(path) = &config.admin_token_file {
        AdminToken::load(path).context("admin_token_file")?;
    }
    if config.tls.files()?.is_none() {
        bail!(
            "`mimid start` needs tls.cert, tls.key and tls.client_ca in the configuration \
             (create them with `mimid cert`); `mimid dev` generates development certificates"
        );
    }
    Ok(config)
}

/// Executes a `mimid cert` command and returns the lines to print.
pub fn run_cert(command: CertCommand, now: SystemTime) -> anyhow::Result<Vec<String>> {
    match command {
        CertCommand::CreateCa { out, days } => {
            let files = CertAuthority::generate(now, validity(days)?)?.save(&out)?;
            Ok(vec![
                format!("CA certificate: {}", files.cert.display()),
                format!("CA key (keep private): {}", files.key.display()),
            ])
        }
        CertCommand::CreateProvider {
            domain,
            ca,
            out,
            days,
        } => {
            config::check_domain(&domain).map_err(anyhow::Error::msg)?;
            issue(
                &ca,
                &out,
                &[SubjectName::Dns(domain)],
                days,
                PROVIDER_STEM,
                now,
            )
        }
        CertCommand::CreateNode {
            addrs,
            ca,
            out,
            days,
        } => {
            let names = addrs
                .iter()
                .map(|addr| addr.parse::<SubjectName>())
                .collect::<Result<Vec<_>, _>>()?;
            issue(&ca, &out, &names, days, NODE_STEM, now)
        }
    }
}

fn issue(
    ca_dir: &Path,
    out: &Path,
    names: &[SubjectName],
    days: u64,
    stem: &str,
    now: SystemTime,
) -> anyhow::Result<Vec<String>> {
    let ca = CertAuthority::load(ca_dir)
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
    let files = ca.issue(names, now, validity(days)?)?.save(out, stem)?;
    Ok(vec![
        format!("certificate: {}", files.cert.display()),
        format!("key (keep private): {}", files.key.display()),
    ])
}

fn validity(days: u64) -> anyhow::Result<Duration> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    days.checked_mul(SECONDS_PER_DAY)
        .map(Duration::from_secs)
        .context("--days is too large")
}

fn load(
    file: Option<PathBuf>,
    flags: &ConfigFlags,
    env: Vec<(String, String)>,
) -> anyhow::Result<Config> {
    let sources = ConfigSources {
        file,
        env,
        overrides: Overrides {
            data_dir: flags.data_dir.clone(),
            listen: flags.listen,
            admin_listen: flags.admin_listen,
            domain: flags.domain.clone(),
            log_format: flags.log_format,
        },
    };
    Ok(Config::load(&sources)?)
}

/// Starts the node, prints where it listens, runs until Ctrl-C or SIGTERM, then shuts it down.
fn run_node(config: Config) -> anyhow::Result<()> {
    let (_telemetry, _) = crate::telemetry::init(&config.log, &config.telemetry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mimid-worker")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        if let Some(ca) = &config.tls.client_ca {
            println!("mimid CA: {}", ca.display());
        }
        match &config.admin_token_file {
            Some(path) => println!(
                "mimid admin token: {} (mimid backup | abuse | node … --token-file {0})",
                path.display()
            ),
            None => tracing::warn!(
                admin_listen = %config.admin_listen,
                "admin_token_file is not set: anyone who reaches the admin listener on this \
                 machine may take backups (with the provider's private keys), read abuse \
                 reports and drain the node; set it (mimid admin-token --out FILE)"
            ),
        }
        let node = if config.cluster.uses_join() {
            let joining = crate::server::start_joining(config)
                .await
                .context("starting the node")?;
            if matches!(
                joining.phase(),
                crate::cluster_ops::bootstrap::Phase::Waiting
            ) {
                println!(
                    "mimid waiting for init: admin=http://{} cluster={} (run `mimid init --host \
                     {0}` against one node, once)",
                    joining.admin_addr(),
                    joining.cluster_addr()
                );
            }
            tokio::select! {
                node = joining.running() => node.context("starting the node")?,
                signal = shutdown_signal() => {
                    tracing::info!("shutting down before the cluster was initialized");
                    return signal.context("waiting for a shutdown signal");
                }
            }
        } else {
            crate::server::start(config)
                .await
                .context("starting the node")?
        };
        println!(
            "mimid listening: quic={} admin=http://{}",
            node.quic_addr(),
            node.admin_addr()
        );
        let signal = shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        signal.context("waiting for a shutdown signal")
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("mimid").chain(args.iter().copied()))
            .unwrap_or_else(|err| panic!("{args:?}: {err}"))
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_map_onto_configuration_keys() {
        let Command::Dev(args) = parse(&[
            "dev",
            "--data-dir",
            "/tmp/x",
            "--listen",
            "127.0.0.1:5000",
            "--admin-listen",
            "127.0.0.1:5001",
            "--domain",
            "a.example",
            "--log-format",
            "text",
        ])
        .command
        else {
            panic!("not dev");
        };
        let config = load(args.config, &args.flags, Vec::new()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(config.admin_listen, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(config.domain, "a.example");
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn demo_takes_a_data_dir_and_a_bounded_step_timeout() {
        let Command::Demo(args) = parse(&["demo"]).command else {
            panic!("not demo");
        };
        assert_eq!(args.data_dir, None);
        assert_eq!(args.step_timeout_secs, 20);
        let Command::Demo(args) =
            parse(&["demo", "--data-dir", "/tmp/d", "--step-timeout-secs", "5"]).command
        else {
            panic!("not demo");
        };
        assert_eq!(args.data_dir, Some(PathBuf::from("/tmp/d")));
        assert_eq!(args.step_timeout_secs, 5);
        assert!(Cli::try_parse_from(["mimid", "demo", "--step-timeout-secs", "0"]).is_err());
    }

    #[test]
    fn backup_and_restore_take_their_paths() {
        let Command::Backup(args) =
            parse(&["backup", "--admin", "127.0.0.1:9090", "--out", "/tmp/b"]).command
        else {
            panic!("not backup");
        };
        assert_eq!(args.admin, "127.0.0.1:9090");
        assert_eq!(args.out, PathBuf::from("/tmp/b"));
        assert_eq!(args.timeout_secs, 600);
        assert_eq!(args.auth.token_file, None);
        let Command::Backup(args) = parse(&[
            "backup",
            "--admin",
            "127.0.0.1:9090",
            "--out",
            "/tmp/b",
            "--token-file",
            "/etc/mimid/admin.token",
        ])
        .command
        else {
            panic!("not backup");
        };
        assert_eq!(
            args.auth.token_file,
            Some(PathBuf::from("/etc/mimid/admin.token"))
        );
        assert!(Cli::try_parse_from(["mimid", "backup", "--out", "/tmp/b"]).is_err());
        let Command::Restore(args) = parse(&[
            "restore",
            "--from",
            "/tmp/b",
            "--data-dir",
            "/tmp/d",
            "--config",
            "/tmp/c.toml",
        ])
        .command
        else {
            panic!("not restore");
        };
        assert_eq!(args.from, PathBuf::from("/tmp/b"));
        assert_eq!(args.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(args.config, Some(PathBuf::from("/tmp/c.toml")));
        assert!(Cli::try_parse_from(["mimid", "restore", "--from", "/tmp/b"]).is_err());
    }

    #[test]
    fn abuse_commands_take_the_admin_listener_and_a_target() {
        let Command::Abuse(AbuseArgs {
            command: AbuseCommand::Block { admin, target },
            auth,
        }) = parse(&["abuse", "block", "--admin", "127.0.0.1:9090", "b.example"]).command
        else {
            panic!("not abuse block");
        };
        assert_eq!(admin, "127.0.0.1:9090");
        assert_eq!(target, "b.example");
        assert_eq!((auth.token_file, auth.data_dir), (None, None));
        assert!(matches!(
            parse(&["abuse", "reports", "--admin", "127.0.0.1:9090"]).command,
            Command::Abuse(AbuseArgs {
                command: AbuseCommand::Reports { .. },
                ..
            })
        ));
        assert!(Cli::try_parse_from(["mimid", "abuse", "unblock", "--admin", "x:1"]).is_err());
        assert!(Cli::try_parse_from(["mimid", "abuse", "reports"]).is_err());
    }

    #[test]
    fn room_status_takes_the_admin_listener_and_a_room() {
        let Command::Room(RoomArgs {
            command: RoomCommand::Status { admin, room },
            auth,
        }) = parse(&[
            "room",
            "status",
            "mimi://a.example/r/club",
            "--admin",
            "127.0.0.1:9090",
        ])
        .command
        else {
            panic!("not room status");
        };
        assert_eq!(admin, "127.0.0.1:9090");
        assert_eq!(room, "mimi://a.example/r/club");
        assert_eq!((auth.token_file, auth.data_dir), (None, None));
        assert!(Cli::try_parse_from(["mimid", "room", "status", "--admin", "x:1"]).is_err());
        assert!(Cli::try_parse_from(["mimid", "room", "status", "mimi://a.example/r/c"]).is_err());
        assert!(Cli::try_parse_from(["mimid", "room", "--admin", "x:1"]).is_err());
    }

    /// `mimid shard split N [--rooms M] --admin ADDR`: the shard is positional, `--rooms`
    /// optional and at least 1, the admin listener required; the token flags apply.
    #[test]
    fn shard_split_takes_a_shard_the_admin_listener_and_optionally_rooms() {
        use crate::cluster_ops::ShardCommand;
        let Command::Shard(ShardArgs {
            command:
                ShardCommand::Split {
                    admin,
                    shard,
                    rooms,
                },
            auth,
        }) = parse(&[
            "shard",
            "split",
            "3",
            "--rooms",
            "10",
            "--admin",
            "127.0.0.1:9090",
            "--token-file",
            "/etc/mimid/admin.token",
        ])
        .command
        else {
            panic!("not shard split");
        };
        assert_eq!(
            (admin.as_str(), shard, rooms),
            ("127.0.0.1:9090", 3, Some(10))
        );
        assert_eq!(
            auth.token_file.as_deref(),
            Some(Path::new("/etc/mimid/admin.token"))
        );
        let Command::Shard(ShardArgs {
            command: ShardCommand::Split { rooms, .. },
            ..
        }) = parse(&["shard", "split", "0", "--admin", "x:1"]).command
        else {
            panic!("not shard split");
        };
        assert_eq!(rooms, None);
        for refused in [
            &["mimid", "shard", "split", "--admin", "x:1"][..],
            &["mimid", "shard", "split", "3"],
            &["mimid", "shard", "split", "three", "--admin", "x:1"],
            &[
                "mimid", "shard", "split", "3", "--rooms", "0", "--admin", "x:1",
            ],
        ] {
            assert!(Cli::try_parse_from(refused).is_err(), "{refused:?}");
        }
    }

    /// What `mimid shard split` prints: the summary, each moved room, each failed one with
    /// its reason and what to do about it.
    #[test]
    fn shard_split_lines_name_every_room() {
        use mimid_actors::hub::SplitOutcome;
        use mimid_actors::ids::RoomId;
        let room = |name: &str| RoomId::parse(&format!("mimi://a.example/r/{name}")).unwrap();
        let outcome = SplitOutcome {
            from: 1,
            to: 17,
            moved: vec![room("a"), room("b")],
            failed: vec![(room("c"), "unavailable: shard 17 has no leader".into())],
        };
        let lines = crate::cluster_ops::render_split(&outcome);
        assert_eq!(
            lines[..4],
            [
                "shard 1 split into shard 17: 2 rooms moved, 1 failed",
                "moved mimi://a.example/r/a",
                "moved mimi://a.example/r/b",
                "failed mimi://a.example/r/c: unavailable: shard 17 has no leader",
            ]
        );
        assert!(lines[4].contains("mimid room status"), "{lines:?}");
        let clean = SplitOutcome {
            failed: Vec::new(),
            ..outcome
        };
        assert_eq!(crate::cluster_ops::render_split(&clean).len(), 3);
    }

    /// The lines `mimid room status` prints for a pinned room with a learner on its way out
    /// (no region) and for a room in a hashed shard of a node running alone (no descriptor).
    #[test]
    fn room_status_lines_show_the_residency_and_the_replicas_with_their_regions() {
        use mimid_actors::hub::residency::RoomStatus;
        let pinned = RoomStatus {
            room: "mimi://a.example/r/club".into(),
            exists: true,
            shard: 17,
            residency: Some("eu".into()),
            regions: vec!["eu".into(), "eu-west".into()],
            leader: Some(2),
            voters: vec![
                (1, Some("eu".into())),
                (2, Some("eu".into())),
                (3, Some("eu-west".into())),
            ],
            learners: vec![(4, None)],
        };
        assert_eq!(
            room_status_lines(&pinned),
            [
                "room mimi://a.example/r/club",
                "exists yes",
                "shard 17",
                "residency eu (regions eu, eu-west)",
                "leader 2",
                "voters 1 (eu), 2 (eu), 3 (eu-west)",
                "learners 4 (no region)",
            ]
        );
        let hashed = RoomStatus {
            room: "mimi://a.example/r/new".into(),
            exists: false,
            shard: 3,
            residency: None,
            regions: Vec::new(),
            leader: None,
            voters: Vec::new(),
            learners: Vec::new(),
        };
        assert_eq!(
            room_status_lines(&hashed),
            [
                "room mimi://a.example/r/new",
                "exists no",
                "shard 3",
                "residency none",
                "leader none",
                "voters none",
                "learners none",
            ]
        );
    }

    /// `mimid room status` against a real admin listener: the route's refusals come back as
    /// errors with the node's status and reason (a bad room id, no hub, a missing token).
    #[tokio::test]
    async fn room_status_reports_what_the_node_answered() {
        use crate::admin::{serve_admin, AdminAuth, AdminState};
        use crate::backup::{Backups, SnapshotSource};
        use crate::metrics::Metrics;
        use std::sync::Arc;
        let metrics = Arc::new(Metrics::new());
        let source: SnapshotSource = Arc::new(|_| Err(mimid_cluster::SnapshotAllError::Stopped));
        let token = AdminToken::generate();
        let state = AdminState {
            ready: Arc::new(|| Ok(())),
            metrics: metrics.clone(),
            backups: Arc::new(Backups::new("a.example".into(), source, metrics)),
            hub: None,
            auth: Arc::new(AdminAuth::new(Some(&token))),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap().to_string();
        let task = serve_admin(listener, state, axum::Router::new()).await;
        let status = |room: &str| RoomCommand::Status {
            admin: admin.clone(),
            room: room.to_owned(),
        };

        let error = run_room(&status("mimi://a.example/u/alice"), Some(&token))
            .await
            .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("the node answered 400"), "{error}");
        assert!(error.contains("expected a room URI"), "{error}");
        let error = run_room(&status("mimi://a.example/r/club"), Some(&token))
            .await
            .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("the node answered 503"), "{error}");
        let error = run_room(&status("mimi://a.example/r/club"), None)
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("--token-file"), "{error:#}");
        task.abort();
    }

    /// A node that does not answer is an error naming the listener, not a hang.
    #[tokio::test]
    async fn abuse_commands_report_an_unreachable_admin_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = run_abuse(
            &AbuseCommand::Blocks {
                admin: admin.clone(),
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(format!("{error:#}").contains(&admin), "{error:#}");
    }

    /// Issue 6: every admin command takes the token file, before or after its subcommand, or a
    /// `mimid dev` data directory; the token is read from there.
    #[test]
    fn admin_commands_take_a_token_file_or_a_dev_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        let token = AdminToken::create(&file).unwrap();
        for args in [
            &[
                "node",
                "status",
                "--host",
                "x:1",
                "--token-file",
                path(&file),
            ][..],
            &[
                "node",
                "--token-file",
                path(&file),
                "drain",
                "--host",
                "x:1",
            ],
            &[
                "abuse",
                "blocks",
                "--admin",
                "x:1",
                "--token-file",
                path(&file),
            ],
            &[
                "node",
                "status",
                "--host",
                "x:1",
                "--data-dir",
                path(dir.path()),
            ],
            &[
                "abuse",
                "reports",
                "--admin",
                "x:1",
                "--data-dir",
                path(dir.path()),
            ],
            &[
                "backup",
                "--admin",
                "x:1",
                "--out",
                "/tmp/b",
                "--data-dir",
                path(dir.path()),
            ],
            &["init", "--host", "x:1", "--data-dir", path(dir.path())],
            &[
                "room",
                "status",
                "mimi://a.example/r/club",
                "--admin",
                "x:1",
                "--token-file",
                path(&file),
            ],
        ] {
            let auth = match parse(args).command {
                Command::Node(args) => args.auth,
                Command::Init(args) => args.auth,
                Command::Abuse(args) => args.auth,
                Command::Room(args) => args.auth,
                Command::Backup(args) => args.auth,
                _ => panic!("{args:?}"),
            };
            assert_eq!(auth.token(&[]).unwrap(), Some(token.clone()), "{args:?}");
        }
        let Command::Node(args) = parse(&["node", "status", "--host", "x:1"]).command else {
            panic!("not node");
        };
        assert_eq!(args.auth.token(&[]).unwrap(), None);
        let env = vec![(ADMIN_TOKEN_FILE_ENV.to_owned(), path(&file).to_owned())];
        assert_eq!(args.auth.token(&env).unwrap(), Some(token));
        let missing = AdminAuthFlags {
            token_file: Some(dir.path().join("absent")),
            data_dir: None,
        };
        let err = missing.token(&[]).unwrap_err();
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
    }

    /// Issue 4 bootstrap: `mimid start --join` takes comma-separated node-to-node addresses
    /// (cluster.join), `mimid init` a node's admin listener.
    #[test]
    fn start_takes_join_addresses_and_init_a_host() {
        let Command::Start(args) = parse(&[
            "start",
            "--config",
            "/etc/mimid.toml",
            "--join",
            "10.0.0.1:7443,10.0.0.2:7443",
        ])
        .command
        else {
            panic!("not start");
        };
        assert_eq!(
            args.join,
            vec![
                "10.0.0.1:7443".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:7443".parse().unwrap()
            ]
        );
        let Command::Start(args) = parse(&["start", "--config", "/etc/mimid.toml"]).command else {
            panic!("not start");
        };
        assert!(args.join.is_empty());
        assert!(
            Cli::try_parse_from(["mimid", "start", "--config", "x", "--join", "nope"]).is_err()
        );
        let Command::Init(args) = parse(&["init", "--host", "127.0.0.1:9090"]).command else {
            panic!("not init");
        };
        assert_eq!(args.host, "127.0.0.1:9090");
        assert_eq!(args_locality(&[]), None);
        assert!(Cli::try_parse_from(["mimid", "init"]).is_err());
    }

    #[test]
    fn admin_token_command_writes_an_owner_only_token_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("admin.token");
        let Command::AdminToken(args) = parse(&["admin-token", "--out", path(&out)]).command else {
            panic!("not admin-token");
        };
        let line = run_admin_token(&args).expect("created");
        assert!(line.contains("admin_token_file"), "{line}");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = AdminToken::load(&out).expect("a token");
        let err = run_admin_token(&args).expect_err("never replaced");
        assert!(format!("{err:#}").contains("exists already"), "{err:#}");
        assert_eq!(AdminToken::load(&out).unwrap(), token);
        assert!(Cli::try_parse_from(["mimid", "admin-token"]).is_err());
    }

    /// Issue 6: `mimid start` refuses an admin listener off loopback without a token file,
    /// naming the key, and a token file that is not a token.
    #[test]
    fn start_refuses_a_public_admin_listener_without_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "x").unwrap();
        let file = dir.path().join("mimid.toml");
        let tls = format!("[tls]\ncert = {pem:?}\nkey = {pem:?}\nclient_ca = {pem:?}\n");
        std::fs::write(
            &file,
            format!("domain = \"a.example\"\nadmin_listen = \"0.0.0.0:9090\"\n{tls}"),
        )
        .unwrap();
        let err = start_config(&file, &ConfigFlags::default(), Vec::new()).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("admin_token_file") && message.contains("loopback"),
            "{message}"
        );

        let token = dir.path().join("admin.token");
        std::fs::write(&token, "too short\n").unwrap();
        let env = vec![("MIMID_ADMIN_TOKEN_FILE".to_owned(), path(&token).to_owned())];
        let err = start_config(&file, &ConfigFlags::default(), env.clone()).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("admin_token_file") && message.contains("fewer than"),
            "{message}"
        );
        std::fs::remove_file(&token).unwrap();
        AdminToken::create(&token).unwrap();
        let config = start_config(&file, &ConfigFlags::default(), env).expect("with a token");
        assert_eq!(config.admin_token_file, Some(token));

        // On loopback the token is optional.
        std::fs::write(&file, format!("domain = \"a.example\"\n{tls}")).unwrap();
        let config = start_config(&file, &ConfigFlags::default(), Vec::new()).expect("loopback");
        assert_eq!(config.admin_token_file, None);
    }

    #[test]
    fn restore_reports_a_missing_backup_file_and_a_bad_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let args = |from: &str| RestoreArgs {
            from: dir.path().join(from),
            data_dir: dir.path().join("data"),
            config: None,
        };
        let err = run_restore(args("absent"), Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
        let env = vec![("MIMID_CLUSTER__SHARDS".into(), "0".into())];
        let err = run_restore(args("absent"), env).unwrap_err();
        assert!(format!("{err:#}").contains("cluster.shards"), "{err:#}");
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn start_requires_a_config_file_and_tls_files() {
        assert!(Cli::try_parse_from(["mimid", "start"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mimid.toml");
        std::fs::write(&file, "domain = \"a.example\"\n").unwrap();
        let err = start_config(&file, &ConfigFlags::default(), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("tls.cert"), "{err}");
    }

    #[test]
    fn invalid_configuration_is_reported_before_anything_starts() {
        let err = dev_config(
            None,
            &ConfigFlags {
                domain: Some("not a domain".into()),
                ..ConfigFlags::default()
            },
            vec![("MIMID_CLUSTER__SHARDS".into(), "0".into())],
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("domain"), "{message}");
        assert!(message.contains("cluster.shards"), "{message}");
    }

    #[test]
    fn dev_config_generates_certificates_once_under_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConfigFlags {
            data_dir: Some(dir.path().to_owned()),
            ..ConfigFlags::default()
        };
        let config = dev_config(None, &flags, Vec::new()).expect("dev config");
        let files = config.tls.files().unwrap().expect("tls files set");
        assert!(files.cert.starts_with(dir.path().join("certs")));
        config.validate().expect("resolved config is valid");
        let cert_before = std::fs::read(&files.cert).unwrap();
        let token_file = dir.path().join("admin.token");
        assert_eq!(config.admin_token_file, Some(token_file.clone()));
        let token = AdminToken::load(&token_file).expect("dev admin token");

        let again = dev_config(None, &flags, Vec::new()).expect("dev config again");
        assert_eq!(again.tls, config.tls);
        assert_eq!(std::fs::read(&files.cert).unwrap(), cert_before);
        assert_eq!(AdminToken::load(&token_file).unwrap(), token, "reused");
    }

    /// `mimid dev` may listen for admin requests off loopback: it always has a token.
    #[test]
    fn dev_config_always_has_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConfigFlags {
            data_dir: Some(dir.path().to_owned()),
            admin_listen: Some("0.0.0.0:9090".parse().unwrap()),
            ..ConfigFlags::default()
        };
        let config = dev_config(None, &flags, Vec::new()).expect("dev config");
        assert_eq!(
            config.admin_token_file,
            Some(config::dev_admin_token_file(dir.path()))
        );
        // A configured file is used as it is, never created.
        let own = dir.path().join("own.token");
        let env = vec![("MIMID_ADMIN_TOKEN_FILE".to_owned(), path(&own).to_owned())];
        let config = dev_config(None, &flags, env).expect("dev config");
        assert_eq!(config.admin_token_file, Some(own.clone()));
        assert!(!own.exists());
    }

    #[test]
    fn cert_commands_write_a_deployable_set() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = SystemTime::now();
        let Command::Cert(create_ca) =
            parse(&["cert", "create-ca", "--out", path(&ca_dir)]).command
        else {
            panic!("not cert");
        };
        run_cert(create_ca, now).expect("create-ca");

        let provider_dir = dir.path().join("provider");
        let Command::Cert(create_provider) = parse(&[
            "cert",
            "create-provider",
            "a.example",
            "--ca",
            path(&ca_dir),
            "--out",
            path(&provider_dir),
        ])
        .command
        else {
            panic!("not cert");
        };
        let lines = run_cert(create_provider, now).expect("create-provider");
        assert!(lines[0].contains("provider.pem"), "{lines:?}");

        let node_dir = dir.path().join("node");
        let Command::Cert(create_node) = parse(&[
            "cert",
            "create-node",
            "10.0.0.1",
            "node1.a.example",
            "--ca",
            path(&ca_dir),
            "--out",
            path(&node_dir),
            "--days",
            "30",
        ])
        .command
        else {
            panic!("not cert");
        };
        run_cert(create_node, now).expect("create-node");

        // The set works as a node configuration for `mimid start`.
        let file = dir.path().join("mimid.toml");
        let toml = format!(
            "domain = \"a.example\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            provider_dir.join("provider.pem"),
            provider_dir.join("provider.key.pem"),
            ca_dir.join("ca.pem"),
        );
        std::fs::write(&file, toml).unwrap();
        let config = start_config(&file, &ConfigFlags::default(), Vec::new()).expect("start");
        let files = config.tls.files().unwrap().unwrap();
        let material = crate::tls::TlsMaterial::load(&files).expect("material");
        crate::tls::server_config(&material).expect("usable for the listener");
        assert_eq!(
            crate::tls::cert_dns_names(&material.cert_chain[0]),
            vec!["a.example"]
        );
    }

    #[test]
    fn cert_commands_reject_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let bad_domain = CertCommand::CreateProvider {
            domain: "not a domain".into(),
            ca: dir.path().into(),
            out: dir.path().into(),
            days: 1,
        };
        assert!(run_cert(bad_domain, now).is_err());
        let no_ca = CertCommand::CreateNode {
            addrs: vec!["10.0.0.1".into()],
            ca: dir.path().join("absent"),
            out: dir.path().into(),
            days: 1,
        };
        let err = run_cert(no_ca, now).unwrap_err();
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
        let zero_days = CertCommand::CreateCa {
            out: dir.path().into(),
            days: 0,
        };
        assert!(run_cert(zero_days, now).is_err());
    }

    fn path(path: &Path) -> &str {
        path.to_str().expect("temp paths are UTF-8")
    }

    fn args_locality(extra: &[&str]) -> Option<String> {
        let mut args = vec!["start", "--config", "/etc/mimid.toml"];
        args.extend_from_slice(extra);
        let Command::Start(args) = parse(&args).command else {
            panic!("not start");
        };
        args.locality
    }

    /// Issue 9: `mimid start --locality region=eu,zone=eu-1` sets `locality` over the file's,
    /// and a malformed one stops the start with the rule it breaks; `mimid node add` takes one.
    #[test]
    fn start_takes_a_locality_and_validates_it() {
        assert_eq!(
            args_locality(&["--locality", "region=eu,zone=eu-1"]).as_deref(),
            Some("region=eu,zone=eu-1")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mimid.toml");
        std::fs::write(&file, "locality = \"region=us,zone=us-1\"\n").unwrap();
        let config = load(Some(file.clone()), &ConfigFlags::default(), Vec::new()).unwrap();
        assert_eq!(config.locality().to_string(), "region=us,zone=us-1");
        std::fs::write(&file, "locality = \"region=us,region=eu\"\n").unwrap();
        let config = load(Some(file), &ConfigFlags::default(), Vec::new()).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("locality: locality key \"region\" appears twice"),
            "{err}"
        );
        let Command::Node(args) = parse(&[
            "node",
            "add",
            "--host",
            "127.0.0.1:9090",
            "--id",
            "4",
            "--addr",
            "10.0.0.4:7443",
            "--locality",
            "region=eu,zone=eu-2",
        ])
        .command
        else {
            panic!("not node");
        };
        let crate::cluster_ops::NodeCommand::Add { locality, .. } = args.command else {
            panic!("not add");
        };
        assert_eq!(locality.as_deref(), Some("region=eu,zone=eu-2"));
    }
}
