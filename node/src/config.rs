//! The node's configuration: one typed [`Config`] with documented defaults, layered from
//! defaults, a TOML file, `MIMID_*` environment variables and command-line flags (later layers
//! win), then checked by [`Config::validate`].
//!
//! Every bound a remote party can push against lives here (DESIGN.md §8, STYLE.md P9): body
//! sizes, queues, mailboxes, stream and connection counts, timeouts. Code elsewhere takes its
//! limits from this struct instead of constants so an operator can tune them without a rebuild.
//!
//! This module only describes and checks configuration. It never creates files: generating dev
//! TLS material is [`crate::certs`]'s job, resolving which paths to use is the CLI's.
//!
//! Environment variables are passed in ([`ConfigSources::env`]) rather than read here, so the
//! layering is testable without mutating the process environment.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use mimid_actors::cluster_meta::{check_locality_value, Locality};
use mimid_actors::residency::Layout;
use rustls::pki_types::DnsName;
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MIMID_";
/// Separator between nesting levels in environment variable names
/// (`MIMID_LIMITS__MAX_BODY_BYTES` sets `limits.max_body_bytes`).
pub const ENV_NESTING_SEPARATOR: &str = "__";

/// The complete configuration of one `mimid` node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The provider's DNS domain (MIMI protocol-06 §4.1: the `Host` of server-to-server requests
    /// and the identity in the provider's TLS certificate). Default `localhost`.
    pub domain: String,
    /// This node's id inside the provider's cluster. Raft reserves 0, so it must be at least 1.
    /// Default 1.
    pub node_id: u64,
    /// Directory for Raft logs, room state and generated dev certificates. Relative paths are
    /// resolved against the working directory. Default `./mimid-data`.
    pub data_dir: PathBuf,
    /// UDP address of the HTTP/3 (QUIC) listener for the client and server-to-server APIs.
    /// Default `127.0.0.1:4433`.
    pub listen: SocketAddr,
    /// TCP address of the plain-HTTP admin listener (`/healthz`, `/readyz`, `/metrics`, and the
    /// operator routes: backups, abuse handling, cluster operations). Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// A file holding the admin listener's bearer token (at least 43 base64 or base64url
    /// characters: `mimid admin-token --out FILE`). When set, every admin route but `GET
    /// /healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <token>`
    /// (`crate::admin::auth`). Required unless `admin_listen` is a loopback address. Read at
    /// start. Default unset; `mimid dev` uses `data_dir/admin.token`, generated on first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Where this node runs, as ordered `key=value` tiers, most significant first:
    /// `region=eu,zone=eu-1` (`mimid start --locality`). The placement driver spreads each
    /// shard's voters over regions, then zones (never two in one zone while another zone has
    /// a node); data residency and `cluster.leader_region` name regions (the `region` tier).
    /// Keys: 1 to 32 characters of `a-z`, `0-9`, `-`, `_`, starting with a letter; values: 1 to
    /// 64 characters of `a-z`, `A-Z`, `0-9`, `-`, `_`, `.`; no key twice, at most 8 tiers. The
    /// node records it in the cluster's node registry when it starts (ARCHITECTURE.md
    /// "Cluster"). Default empty (no locality).
    pub locality: String,
    /// TLS material for the QUIC listener.
    pub tls: TlsSettings,
    /// Replication settings.
    pub cluster: ClusterSettings,
    /// Bounds on everything a peer or client can drive.
    pub limits: LimitsSettings,
    /// Server-to-server (federation) transport: peer addresses, directory caching, outgoing
    /// request bounds and fan-out retries.
    pub federation: FederationSettings,
    /// Logging.
    pub log: LogSettings,
    /// OpenTelemetry.
    pub telemetry: TelemetrySettings,
}

/// Paths to PEM files for the QUIC listener's TLS.
///
/// All three are absent by default. `mimid dev` then generates a dev CA and a provider
/// certificate under `data_dir/certs` on first start and reuses them afterwards; `mimid start`
/// requires all three.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The provider certificate chain (leaf first), PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert`, PEM (PKCS#8, SEC1 or PKCS#1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA certificates, PEM, that client certificates are verified against (peer providers and
    /// nodes authenticate with mutual TLS, MIMI protocol-06 §4.1). Also the trust anchors for
    /// outgoing connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// The three TLS files, all present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// CA certificates for client verification, PEM.
    pub client_ca: PathBuf,
}

/// Replication: shards, Raft timing and batching (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Number of shards (Raft groups) rooms and users hash into. Default 16.
    pub shards: u64,
    /// Interval between Raft ticks, in milliseconds. Default 100.
    pub tick_ms: u64,
    /// Ticks without a heartbeat before a follower campaigns. Must exceed `heartbeat_tick`.
    /// Default 10.
    pub election_tick: usize,
    /// Ticks between leader heartbeats. Default 2.
    pub heartbeat_tick: usize,
    /// Ticks a shard's leader waits with every replica caught up and nothing happening before
    /// the shard hibernates: no ticks, heartbeats or elections on any of its replicas until a
    /// write, a read barrier, a membership change, a Raft message or the loss of its leader's
    /// node wakes it (ARCHITECTURE.md "Cluster"). 0 disables hibernation on this node. Default
    /// 30 (three election timeouts at the default `election_tick`).
    pub hibernate_after_ticks: usize,
    /// Applied entries between state-machine snapshots. Default 10000.
    pub snapshot_interval: u64,
    /// Seconds after which a shard with applied entries not covered by a snapshot takes one
    /// anyway, bounding restart replay on quiet shards (ARCHITECTURE.md "Durability").
    /// Default 600.
    pub snapshot_max_age_secs: u64,
    /// Snapshots (by interval or by age) serialised per driver turn, so one turn never stalls
    /// on every shard. Default 2.
    pub max_snapshots_per_turn: usize,
    /// Proposals one driver turn steps into Raft; bounds the work per Ready (floors.md
    /// pitfall 13). Default 1024.
    pub max_proposals_per_turn: usize,
    /// Capacity of the cluster driver's inbox; a full inbox answers "busy". Default 65536.
    pub inbox_capacity: usize,
    /// Largest Raft append message, in bytes (raft-rs defaults to one entry per message,
    /// floors.md pitfall 12). Default 1 MiB.
    pub max_size_per_msg: u64,
    /// In-flight append messages per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// `fdatasync` sled's files before acknowledging, because sled's `flush` alone is not
    /// durable (floors.md pitfall 16). Default true.
    pub fsync: bool,
    /// Name of the cluster this node belongs to. Nodes exchange it when they connect and refuse
    /// a node of another cluster even when its certificate comes from the same CA. 1 to 64
    /// characters of `a-z`, `A-Z`, `0-9`, `-`, `_` and `.`. Default `mimid`.
    pub name: String,
    /// UDP address of the node-to-node QUIC listener ([`crate::cluster_net`]), a socket of its
    /// own beside `listen`. Unset, the node runs alone and opens no node-to-node transport.
    /// Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The other nodes of the cluster: node id -> UDP address of its `cluster.listen`. TOML
    /// table keys are strings (`[cluster.peers]` then `2 = "10.0.0.2:7443"`); each must be a
    /// node id written in decimal without sign or leading zeros, neither 0 nor this node's
    /// `node_id`. Needs `cluster.listen`. Default empty.
    pub peers: BTreeMap<String, SocketAddr>,
    /// The voters every shard of a NEW cluster starts with: the node ids of all its nodes,
    /// this one included, the same list on every node. Used only when the data directory has
    /// no Raft state yet; afterwards the membership lives in each shard's log. Empty: this
    /// node and the keys of `cluster.peers` (the usual case; set it when peers are introduced
    /// after start). More than one voter needs `cluster.listen`. Default empty.
    pub voters: Vec<u64>,
    /// Voting replicas per shard the placement driver keeps on the cluster's Active nodes
    /// (fewer while there are fewer nodes); every other Active node keeps a non-voting copy
    /// (ARCHITECTURE.md "Cluster"). Read when the cluster's node registry is seeded, by the
    /// first leader of shard 0 of a new cluster; the registry's value holds after that. 1 to
    /// 15. A node without `cluster.listen` (`mimid dev`) runs alone: one replica. Default 3.
    pub replication_factor: u32,
    /// Which nodes hold a shard (ARCHITECTURE.md "Cluster", issue 4 build item 1): `"r"`, its
    /// `replication_factor` voters only (a learner only on its way to vote), so storage per
    /// node shrinks as nodes are added and a node serves the shards it lacks through other
    /// nodes; or `"all"`, every Active node (the others as learners). Shard 0, the metadata
    /// shard, is on every node either way. Read by the node leading shard 0 (placement) and by
    /// each node (readiness): set it the same on every node. Default `"r"`.
    pub replicas: Replicas,
    /// The region shard leaderships should be in (a `region` value of the nodes' `locality`):
    /// the placement driver hands each shard that has a voter there to such a voter, so reads
    /// and writes that region's clients make are served without a cross-region round trip to
    /// the leader. Shards without a voter there keep their leaders where they are. Read by the
    /// node leading shard 0 (set it the same on every node). Default unset (leaderships spread
    /// evenly over all nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_region: Option<String>,
    /// Data residency sets (`[[cluster.residency]]`, issue 9; ARCHITECTURE.md "Data
    /// residency"): each adds `shards` shards, numbered after the `cluster.shards` hashed ones
    /// in this order, whose replicas stay on nodes whose `locality` region is one of
    /// `regions`. A client pins a room to a set at creation (the `Mimid-Residency` header of
    /// createRoom). Needs `cluster.replicas = "r"`. Like `cluster.shards`, fixed when the
    /// cluster is formed: configure every node alike. Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub residency: Vec<ResidencySettings>,
    /// Split shards (issue 9 build item 3; ARCHITECTURE.md "Shard splits"): Raft groups,
    /// numbered after the residency sets' shards, that start empty and take the rooms a hot or
    /// large shard hands off when it splits. Placed like the hashed shards; an empty one
    /// hibernates. Like `cluster.shards`, fixed when the cluster is formed: configure every node
    /// alike. Default 0 (no split possible).
    pub split_shards: u64,
    /// When a shard splits on its own (`[cluster.split]`; ops/runbooks/shard-split.md):
    /// thresholds the node checks on every shard it leads. Off by default; `mimid shard split`
    /// splits by hand either way.
    pub split: SplitSettings,
    /// Start as a node added to a running cluster: shards without local state wait empty until
    /// the placement driver adds this node to them and a leader sends it a snapshot (ops
    /// runbook scale-out.md: register the node with `mimid node add` first). Shards with state
    /// are unaffected, so it may stay set after the first start. Needs `cluster.listen`.
    /// Default false.
    pub join_existing: bool,
    /// Form or join a cluster CockroachDB-style (`mimid start --join ADDR,ADDR`; ops runbook
    /// bootstrap.md): the node-to-node addresses (`cluster.listen`) of one or more other nodes,
    /// this node's own allowed (it is skipped). A node with join addresses dials them, learns
    /// the nodes there and, from them, every node they know; with no Raft state and no cluster
    /// id yet it waits uninitialized (`/readyz` 503 "cluster not initialized") until `mimid
    /// init` runs on one node, then joins the cluster that node bootstraps. A node started with
    /// them after the cluster exists registers itself and is given replicas. Needs a
    /// `cluster.listen` that other nodes can dial (not `0.0.0.0`); excludes `cluster.peers`,
    /// `cluster.voters` and `cluster.join_existing` (the static configuration). Default empty.
    pub join: Vec<SocketAddr>,
    /// Frames queued per peer node while its connection is busy or being opened; when full,
    /// further frames to that peer are dropped (Raft retransmits) and counted in
    /// `mimid_cluster_frames_dropped_total{reason="queue_full"}`. Default 1024.
    pub peer_queue_frames: usize,
    /// Largest node-to-node frame or RPC body, in bytes. Raft snapshots travel inside frames,
    /// so it must hold the largest shard snapshot; a peer sending more has its connection
    /// closed. At most 2^32 - 1 (frames are length-prefixed with 32 bits) and at least
    /// `cluster.max_size_per_msg`. The replication layer never sends a frame above
    /// `mimid_cluster::MAX_FRAME_BYTES` (512 MiB), the default, so a larger value changes
    /// nothing; a smaller one drops the frames above it, i.e. the snapshots of shards whose
    /// state outgrew it, and a replica needing one never catches up. Default 512 MiB.
    pub max_frame_bytes: u64,
    /// Interval of QUIC keep-alives on node-to-node connections, in milliseconds: a quiet
    /// connection still carries a packet this often, so a peer that stopped answering is
    /// noticed after `cluster.idle_timeout_ms`. Below `cluster.idle_timeout_ms`. Default 1000.
    pub keep_alive_ms: u64,
    /// Milliseconds without a packet from a peer node after which its connection counts as
    /// lost: the transport reports the node unreachable, which wakes the hibernating shards it
    /// led so they elect another leader, and reconnects (ARCHITECTURE.md "Cluster"). The
    /// smaller value of the two ends applies. Above `cluster.keep_alive_ms`, at most 3600000.
    /// Default 3000.
    pub idle_timeout_ms: u64,
    /// TLS material of the node-to-node transport (`[cluster.tls]`), required when
    /// `cluster.listen` is set.
    pub tls: ClusterTlsSettings,
}

/// `[cluster.split]`: automatic shard splits (issue 9 build item 3; ARCHITECTURE.md "Shard
/// splits"). The node leading a shard checks it every `check_interval_ms` and hands about half
/// of its rooms to the split shard holding the fewest rooms when it holds more than
/// `max_rooms` rooms or its rooms took more than `max_items_per_sec` items a second over each
/// of the last two checks (`crate::cluster_ops::split`). Residency shards never split. Needs
/// `cluster.split_shards` when a threshold is on. Read by every node (each checks the shards
/// it leads): set it the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSettings {
    /// A shard holding more rooms than this splits. 0 turns the room threshold off.
    /// Default 0.
    pub max_rooms: u64,
    /// A shard whose rooms' logs grew by more than this many items a second over each of the
    /// last two checks splits. 0 turns the rate threshold off. Default 0.
    pub max_items_per_sec: u64,
    /// Seconds after a split (or a failed one) before the same shard, and the split shard
    /// that took its rooms, may split again on their own. Default 60.
    pub cooldown_secs: u64,
    /// Milliseconds between two checks of the shards this node leads. 100 to 3600000.
    /// Default 5000.
    pub check_interval_ms: u64,
}

impl Default for SplitSettings {
    fn default() -> Self {
        SplitSettings {
            max_rooms: 0,
            max_items_per_sec: 0,
            cooldown_secs: 60,
            check_interval_ms: 5000,
        }
    }
}

impl SplitSettings {
    /// Least and greatest `check_interval_ms`: a check reads every led shard's rooms, so not
    /// more often than ten times a second; and at least once an hour.
    pub const CHECK_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

    /// Whether a threshold is on, so that shards split on their own.
    pub fn is_automatic(&self) -> bool {
        self.max_rooms != 0 || self.max_items_per_sec != 0
    }

    fn check(&self, split_shards: u64, problems: &mut Vec<ConfigProblem>) {
        if self.is_automatic() && split_shards == 0 {
            let key = if self.max_rooms != 0 {
                "cluster.split.max_rooms"
            } else {
                "cluster.split.max_items_per_sec"
            };
            problems.push(ConfigProblem {
                key,
                reason: "automatic splits need split shards: set cluster.split_shards (fixed \
                         when the cluster is formed), or leave the thresholds at 0"
                    .into(),
            });
        }
        if !Self::CHECK_INTERVAL_MS.contains(&self.check_interval_ms) {
            problems.push(ConfigProblem {
                key: "cluster.split.check_interval_ms",
                reason: format!(
                    "must be {} to {}",
                    Self::CHECK_INTERVAL_MS.start(),
                    Self::CHECK_INTERVAL_MS.end()
                ),
            });
        }
        if self.cooldown_secs > MAX_SPLIT_COOLDOWN_SECS {
            problems.push(ConfigProblem {
                key: "cluster.split.cooldown_secs",
                reason: format!("must be at most {MAX_SPLIT_COOLDOWN_SECS} (a week)"),
            });
        }
    }
}

/// Greatest `cluster.split.cooldown_secs`: a week.
const MAX_SPLIT_COOLDOWN_SECS: u64 = 7 * 24 * 3600;

/// One `[[cluster.residency]]` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencySettings {
    /// What `Mimid-Residency` names, e.g. `"eu"`.
    pub name: String,
    /// The `region` locality values its replicas may be on, e.g. `["eu"]`.
    pub regions: Vec<String>,
    /// How many shards its rooms spread over. Default 1.
    #[serde(default = "one_shard")]
    pub shards: u64,
}

fn one_shard() -> u64 {
    1
}

/// `cluster.replicas`: which nodes hold a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Replicas {
    /// The shard's voters only (`"r"`).
    #[default]
    #[serde(rename = "r")]
    R,
    /// Every Active node (`"all"`).
    #[serde(rename = "all")]
    All,
}

/// Paths to PEM files for the node-to-node transport's mutual TLS (`[cluster.tls]`): a node
/// certificate from `mimid cert create-node` (IP SANs of the addresses peers dial) and the
/// cluster CA that every node's certificate, as server and as client, is verified against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTlsSettings {
    /// This node's certificate chain (leaf first), PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert`, PEM (PKCS#8, SEC1 or PKCS#1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The cluster CA certificate(s), PEM: the only trust anchors of the node-to-node
    /// transport, in both directions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// Bounds on request, queue and connection sizes (DESIGN.md §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// Largest request body accepted; beyond it the request is answered 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// KeyPackages accepted in one publish request. Default 100.
    pub max_key_packages_per_publish: usize,
    /// Items buffered per client push stream before the stream counts as slow. Default 1024.
    pub stream_queue: usize,
    /// Milliseconds between heartbeats on an idle push stream; a client that went away is
    /// noticed at the next heartbeat and its stream released. Default 15000.
    pub stream_heartbeat_ms: u64,
    /// Messages queued per room actor mailbox. Default 1024.
    pub room_mailbox: usize,
    /// Seconds without traffic after which a room actor stops. Default 300.
    pub idle_room_secs: u64,
    /// Seconds between housekeeping rounds over every shard (expired KeyPackages and
    /// Welcome-routing records are dropped, room logs trimmed). Default 60.
    pub housekeeping_secs: u64,
    /// Seconds an item that every member of its room has acknowledged stays in the room log
    /// (for late duplicates and audits). Unacknowledged items are never trimmed. Default 86400.
    pub log_retention_secs: u64,
    /// Concurrent request streams per QUIC connection (QUIC flow control enforces it).
    /// Default 256.
    pub max_concurrent_streams: u32,
    /// Concurrent QUIC connections; further connection attempts are refused. Default 4096.
    pub max_connections: usize,
    /// Requests in progress across all connections, including open push streams; beyond it
    /// requests are answered 503. Default 16384.
    pub max_concurrent_requests: usize,
    /// Largest request header section (HTTP/3 SETTINGS_MAX_FIELD_SECTION_SIZE, RFC 9114
    /// §4.2.2). Default 16 KiB.
    pub max_header_bytes: u64,
    /// Time allowed for a request's headers and body to arrive, in milliseconds; a slower request
    /// is answered 408. Default 10000.
    pub request_timeout_ms: u64,
    /// QUIC idle timeout, in milliseconds: a connection without any packet for this long is
    /// dropped. Clients keep long-lived streams alive with QUIC keep-alives. Default 30000.
    pub idle_timeout_ms: u64,
    /// Franks kept in memory for the messages franked last (protocol-06 §5.4.1): a message's
    /// Frank is signed once and its bytes shared by its submit answer, notifies and every push
    /// stream delivering it. A delivery further behind signs it again (same bytes;
    /// `mimid_limit_hits_total{limit="frank_cache"}`). About 0.5 KiB each. Default 4096.
    pub frank_cache_entries: usize,
    /// Rate limits per peer provider, per user and on KeyPackage claims (`[limits.rate]`).
    pub rate: RateLimitSettings,
}

/// Rate limits (`[limits.rate]`, DESIGN.md §8), enforced by [`crate::rate_limit::RateLimits`]
/// after authentication and before any Raft write; exceeding one answers 429 with
/// `Retry-After`. They are token buckets kept per node in memory: a cluster of N nodes admits
/// up to N times these rates, and a restart starts every bucket full.
///
/// Rates are requests per second and may be fractional; a burst is how many requests are
/// admitted at once after a quiet period. The defaults are sized for production: a large
/// provider peers with others at high rates, a person or bot on the client API stays well
/// below its limit, and the claim limits bound how fast anyone consumes a user's KeyPackages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Server-to-server requests per second admitted from one authenticated peer provider.
    /// Default 10000.
    pub peer_requests_per_sec: f64,
    /// Burst of server-to-server requests from one peer provider. Default 20000.
    pub peer_burst: u64,
    /// Client API requests per second admitted from the clients of one user (all devices
    /// together; push streams and acknowledgements included). Default 100.
    pub user_requests_per_sec: f64,
    /// Burst of client API requests of one user. Default 500.
    pub user_burst: u64,
    /// KeyPackage claims (protocol-06 §5.1) per hour by one requesting user for one target user
    /// of ours, whether the requester is local or behind a peer provider; also the burst.
    /// Default 30.
    pub key_material_claims_per_pair_per_hour: u64,
    /// KeyPackage claims per hour for one target user of ours across all requesters, so that
    /// many requesters together cannot drain the target either; also the burst. Default 300.
    pub key_material_claims_per_target_per_hour: u64,
    /// Keys (peer domains, users, requester-target pairs) tracked per limit; beyond it the
    /// least recently used key is forgotten, and comes back with a full bucket. Default 100000.
    pub max_tracked_keys: usize,
}

/// Rates are checked to be finite ([`RateLimitSettings::check`]), so equality is reflexive.
impl Eq for RateLimitSettings {}

/// The server-to-server transport (MIMI.md §3.1, §3.2): how peer providers are found and how
/// long we wait for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationSettings {
    /// Static resolver: peer domain (lowercase) -> UDP address of its HTTP/3 listener, for
    /// private peering and tests. A domain without an entry resolves through DNS as
    /// `domain:443`. Default empty.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Whether a peer domain without an entry in `peers` is looked up in DNS. Off, only the
    /// listed peers are reachable (a closed federation, or tests that must not touch the
    /// network). Default true.
    pub resolve_dns: bool,
    /// Seconds a peer's fetched `/.well-known/mimi-protocol-directory` is cached before it is
    /// fetched again. Default 300.
    pub directory_ttl_secs: u64,
    /// Milliseconds an outgoing peer request may take, from resolving the peer to the end of the
    /// response (connecting and fetching the directory included). Default 10000.
    pub request_timeout_ms: u64,
    /// Largest response body accepted from a peer. Default 1 MiB (as `limits.max_body_bytes`).
    pub max_response_bytes: usize,
    /// Most FanoutMessages sent in one `/notify` request (MIMI.md §5.4). Default 64.
    pub notify_batch_items: usize,
    /// First delay before a failed fan-out request is retried, in milliseconds; it doubles per
    /// attempt up to `retry_max_ms`. Default 100.
    pub retry_initial_ms: u64,
    /// Longest delay between fan-out retries, in milliseconds. Default 30000.
    pub retry_max_ms: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Output format. Default `json`.
    pub format: LogFormat,
    /// `tracing` filter directives (e.g. `info` or `info,mimid_cluster=debug`); the `RUST_LOG`
    /// environment variable overrides it. Default `info`.
    pub level: String,
}

/// OpenTelemetry settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP collector endpoint (e.g. `http://127.0.0.1:4318`, a local agent or sidecar):
    /// when set, spans are exported as protobuf to `<endpoint>/v1/traces` and every trace is
    /// sampled (`ParentBased(AlwaysOn)`); unset, nothing is exported and only traces a caller
    /// marked sampled are recorded. Plain `http://` only: this build carries no TLS stack for
    /// the collector. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported spans. Default `mimid`.
    pub service_name: String,
}

/// Where configuration comes from, lowest precedence first: defaults, `file`, `env`,
/// `overrides`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// A TOML file (`--config FILE`); it must exist when given.
    pub file: Option<PathBuf>,
    /// Environment variables as (name, value); only names starting with [`ENV_PREFIX`] are used.
    pub env: Vec<(String, String)>,
    /// Values from command-line flags.
    pub overrides: Overrides,
}

/// Configuration values given as command-line flags; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--domain`.
    pub domain: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// Why configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` cannot be read.
    #[error("cannot read config file {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A layer has a value of the wrong type, an unknown key, or bad TOML syntax.
    #[error("cannot load configuration: {0}")]
    Load(String),
    /// The merged configuration breaks one or more rules.
    #[error("invalid configuration:{}", ProblemList(.0))]
    Invalid(Vec<ConfigProblem>),
    /// The configuration cannot be rendered as TOML.
    #[error("cannot render configuration as TOML")]
    Render(#[from] toml::ser::Error),
}

/// One broken rule: the dotted key and why its value is rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `cluster.shards`.
    pub key: &'static str,
    /// What is wrong, as a sentence fragment.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl Config {
    /// Merges the layers of `sources` over the defaults. Does not validate: call
    /// [`Config::validate`] before using the result.
    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &sources.file {
            std::fs::File::open(path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvVars::new(&sources.env));
        figment = merge_overrides(figment, &sources.overrides);
        figment.extract().map_err(|err| {
            let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
            ConfigError::Load(messages.join("; "))
        })
    }

    /// Checks every rule and reports all broken ones at once, so an operator fixes a config
    /// file in one pass.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(reason) = check_domain(&self.domain) {
            problems.push(ConfigProblem {
                key: "domain",
                reason,
            });
        }
        if self.node_id == 0 {
            problems.push(ConfigProblem {
                key: "node_id",
                reason: "must be at least 1 (Raft reserves 0)".into(),
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem {
                key: "data_dir",
                reason: "must not be empty".into(),
            });
        }
        for (key, addr) in [("listen", self.listen), ("admin_listen", self.admin_listen)] {
            // An ephemeral port is only useful to tests, which bind loopback; on a real
            // interface it would leave peers unable to find the node.
            if addr.port() == 0 && !addr.ip().is_loopback() {
                problems.push(ConfigProblem {
                    key,
                    reason: "port 0 is only allowed on a loopback address".into(),
                });
            }
        }

        match &self.admin_token_file {
            Some(path) if path.as_os_str().is_empty() => problems.push(ConfigProblem {
                key: "admin_token_file",
                reason: "must not be empty".into(),
            }),
            None if !self.admin_listen.ip().is_loopback() => problems.push(ConfigProblem {
                key: "admin_token_file",
                reason: admin_token_required(self.admin_listen),
            }),
            _ => {}
        }

        if let Err(reason) = self.locality.parse::<Locality>() {
            problems.push(ConfigProblem {
                key: "locality",
                reason,
            });
        }
        self.tls.check(&mut problems);
        self.cluster.check(&mut problems);
        self.cluster
            .check_transport(self.node_id, self.listen, &mut problems);
        self.limits.check(&mut problems);
        self.federation.check(&mut problems);
        self.log.check(&mut problems);
        self.telemetry.check(&mut problems);

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// This node's `locality`, parsed (empty when it does not parse: [`Config::validate`]
    /// reports that).
    pub fn locality(&self) -> Locality {
        self.locality.parse().unwrap_or_default()
    }

    /// The effective configuration as TOML, as `mimid config` prints it.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            node_id: 1,
            data_dir: PathBuf::from("./mimid-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token_file: None,
            locality: String::new(),
            tls: TlsSettings::default(),
            cluster: ClusterSettings::default(),
            limits: LimitsSettings::default(),
            federation: FederationSettings::default(),
            log: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl TlsSettings {
    /// The three files when all are configured, `None` when none is; a partial set is an error
    /// because a certificate without its key (or without a CA to verify peers) cannot serve.
    pub fn files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.cert, &self.key, &self.client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            })),
            _ => Err(ConfigError::Invalid(vec![partial_tls_problem()])),
        }
    }

    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        let paths = [
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
            ("tls.client_ca", &self.client_ca),
        ];
        let n_set = paths.iter().filter(|(_, path)| path.is_some()).count();
        if n_set != 0 && n_set != paths.len() {
            problems.push(partial_tls_problem());
        }
        for (key, path) in paths {
            if let Some(path) = path {
                if let Err(err) = std::fs::File::open(path) {
                    problems.push(ConfigProblem {
                        key,
                        reason: format!("cannot read {}: {err}", path.display()),
                    });
                }
            }
        }
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            shards: 16,
            tick_ms: 100,
            election_tick: 10,
            heartbeat_tick: 2,
            hibernate_after_ticks: 30,
            snapshot_interval: 10_000,
            snapshot_max_age_secs: 600,
            max_snapshots_per_turn: 2,
            max_proposals_per_turn: 1024,
            inbox_capacity: 65_536,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            fsync: true,
            name: DEFAULT_CLUSTER_NAME.into(),
            listen: None,
            peers: BTreeMap::new(),
            voters: Vec::new(),
            replication_factor: 3,
            replicas: Replicas::default(),
            leader_region: None,
            residency: Vec::new(),
            split_shards: 0,
            split: SplitSettings::default(),
            join_existing: false,
            join: Vec::new(),
            peer_queue_frames: 1024,
            max_frame_bytes: mimid_cluster::MAX_FRAME_BYTES as u64,
            keep_alive_ms: crate::cluster_net::DEFAULT_KEEP_ALIVE_MS,
            idle_timeout_ms: crate::cluster_net::DEFAULT_IDLE_TIMEOUT_MS,
            tls: ClusterTlsSettings::default(),
        }
    }
}

impl ClusterSettings {
    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        at_least_one(problems, "cluster.shards", self.shards);
        at_least_one(problems, "cluster.tick_ms", self.tick_ms);
        at_least_one(
            problems,
            "cluster.heartbeat_tick",
            self.heartbeat_tick as u64,
        );
        if self.election_tick <= self.heartbeat_tick {
            problems.push(ConfigProblem {
                key: "cluster.election_tick",
                reason: format!(
                    "must be greater than cluster.heartbeat_tick ({}), or followers campaign \
                     between heartbeats",
                    self.heartbeat_tick
                ),
            });
        }
        at_least_one(
            problems,
            "cluster.snapshot_interval",
            self.snapshot_interval,
        );
        at_least_one(
            problems,
            "cluster.snapshot_max_age_secs",
            self.snapshot_max_age_secs,
        );
        at_least_one(
            problems,
            "cluster.max_snapshots_per_turn",
            self.max_snapshots_per_turn as u64,
        );
        at_least_one(
            problems,
            "cluster.max_proposals_per_turn",
            self.max_proposals_per_turn as u64,
        );
        at_least_one(
            problems,
            "cluster.inbox_capacity",
            self.inbox_capacity as u64,
        );
        at_least_one(problems, "cluster.max_size_per_msg", self.max_size_per_msg);
        at_least_one(
            problems,
            "cluster.max_inflight_msgs",
            self.max_inflight_msgs as u64,
        );
        if !(1..=mimid_actors::cluster_meta::MAX_REPLICATION_FACTOR)
            .contains(&self.replication_factor)
        {
            problems.push(ConfigProblem {
                key: "cluster.replication_factor",
                reason: format!(
                    "must be 1 to {}",
                    mimid_actors::cluster_meta::MAX_REPLICATION_FACTOR
                ),
            });
        }
        if let Some(region) = &self.leader_region {
            if let Err(reason) = check_locality_value("region", region) {
                problems.push(ConfigProblem {
                    key: "cluster.leader_region",
                    reason,
                });
            }
        }
        // Without a hashed shard the layout fails too; `cluster.shards` said so already.
        if let (Err(reason), true) = (self.layout(), self.shards != 0) {
            problems.push(ConfigProblem {
                key: if self.residency.is_empty() {
                    "cluster.split_shards"
                } else {
                    "cluster.residency"
                },
                reason,
            });
        }
        self.split.check(self.split_shards, problems);
        if !self.residency.is_empty() && self.replicas != Replicas::R {
            problems.push(ConfigProblem {
                key: "cluster.residency",
                reason: "needs cluster.replicas = \"r\": with \"all\" every node holds every shard"
                    .into(),
            });
        }
    }

    /// How the shards are numbered: `cluster.shards` hashed ones, then every residency set's,
    /// then the split shards (`mimid_actors::residency`).
    pub fn layout(&self) -> Result<Layout, String> {
        Layout::new(
            self.shards,
            self.residency.iter().map(|set| {
                (
                    set.name.clone(),
                    set.regions.iter().cloned().collect(),
                    set.shards,
                )
            }),
            self.split_shards,
        )
    }

    /// Every shard: `cluster.shards` plus the residency sets' and the split shards.
    pub fn shard_count(&self) -> u64 {
        self.residency
            .iter()
            .fold(self.shards, |count, set| count.saturating_add(set.shards))
            .saturating_add(self.split_shards)
    }

    /// The voters a new cluster's shards start with (`cluster.voters`, or else `own` and the
    /// peers' ids), sorted; for a valid configuration.
    pub fn initial_voters(&self, own: u64) -> Vec<u64> {
        let mut voters: Vec<u64> = if self.voters.is_empty() {
            std::iter::once(own)
                .chain(self.peers.keys().filter_map(|key| parse_node_id(key).ok()))
                .collect()
        } else {
            self.voters.clone()
        };
        voters.sort_unstable();
        voters.dedup();
        voters
    }

    /// The peers of `cluster.peers` by node id, or why a key is not a usable node id of a peer
    /// of `own` (the node's `node_id`).
    pub fn peer_addresses(&self, own: u64) -> Result<BTreeMap<u64, SocketAddr>, String> {
        let mut peers = BTreeMap::new();
        for (key, addr) in &self.peers {
            let id = parse_node_id(key)?;
            if id == own {
                return Err(format!(
                    "{key} is this node's own node_id; list only the other nodes"
                ));
            }
            peers.insert(id, *addr);
        }
        Ok(peers)
    }

    /// The checks of the node-to-node transport keys (name, listen, peers, queue, frame size,
    /// keep-alive and idle timeout, `[cluster.tls]`). `own` and `client_listen` are `node_id`
    /// and `listen`.
    fn check_transport(
        &self,
        own: u64,
        client_listen: SocketAddr,
        problems: &mut Vec<ConfigProblem>,
    ) {
        if let Err(reason) = check_cluster_name(&self.name) {
            problems.push(ConfigProblem {
                key: "cluster.name",
                reason,
            });
        }
        at_least_one(
            problems,
            "cluster.peer_queue_frames",
            self.peer_queue_frames as u64,
        );
        if self.max_frame_bytes > u64::from(u32::MAX) {
            problems.push(ConfigProblem {
                key: "cluster.max_frame_bytes",
                reason: "must be below 2^32 (frames carry a 32-bit length)".into(),
            });
        } else if self.max_frame_bytes < self.max_size_per_msg.max(1) {
            problems.push(ConfigProblem {
                key: "cluster.max_frame_bytes",
                reason: format!(
                    "must be at least cluster.max_size_per_msg ({}), or a full Raft append \
                     message cannot be sent",
                    self.max_size_per_msg
                ),
            });
        }
        at_least_one(problems, "cluster.keep_alive_ms", self.keep_alive_ms);
        if self.idle_timeout_ms <= self.keep_alive_ms || self.idle_timeout_ms > MAX_IDLE_TIMEOUT_MS
        {
            problems.push(ConfigProblem {
                key: "cluster.idle_timeout_ms",
                reason: format!(
                    "must be above cluster.keep_alive_ms ({}) and at most {MAX_IDLE_TIMEOUT_MS}",
                    self.keep_alive_ms
                ),
            });
        }
        if !self.voters.is_empty() {
            let reason = if !self.voters.contains(&own) {
                Some(format!("must list this node's own node_id ({own})"))
            } else if self.voters.contains(&0) {
                Some("node id 0 is reserved by Raft".to_owned())
            } else if self.voters.iter().collect::<BTreeSet<_>>().len() != self.voters.len() {
                Some("lists a node twice".to_owned())
            } else if self.voters.len() > 1 && self.listen.is_none() {
                Some("more than one voter needs cluster.listen".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                problems.push(ConfigProblem {
                    key: "cluster.voters",
                    reason,
                });
            }
        }
        if self.join_existing && self.listen.is_none() {
            problems.push(ConfigProblem {
                key: "cluster.join_existing",
                reason: "joining a cluster needs cluster.listen".into(),
            });
        }
        self.check_join(problems);
        let Some(listen) = self.listen else {
            if !self.peers.is_empty() {
                problems.push(ConfigProblem {
                    key: "cluster.peers",
                    reason: "peers need cluster.listen: without it the node runs alone".into(),
                });
            }
            return;
        };
        if listen.port() == 0 && !listen.ip().is_loopback() {
            problems.push(ConfigProblem {
                key: "cluster.listen",
                reason: "port 0 is only allowed on a loopback address".into(),
            });
        } else if listen == client_listen && listen.port() != 0 {
            problems.push(ConfigProblem {
                key: "cluster.listen",
                reason: format!("{listen} is already the client listener (listen)"),
            });
        }
        let mut seen = BTreeMap::new();
        for (key, addr) in &self.peers {
            let reason = match parse_node_id(key) {
                Err(reason) => Some(reason),
                Ok(id) if id == own => Some(format!(
                    "{key} is this node's own node_id; list only the other nodes"
                )),
                Ok(_) if addr.port() == 0 => Some(format!("{key}: port 0 cannot be reached")),
                Ok(_) => seen
                    .insert(*addr, key)
                    .map(|other| format!("{key} and {other} share the address {addr}")),
            };
            if let Some(reason) = reason {
                problems.push(ConfigProblem {
                    key: "cluster.peers",
                    reason,
                });
            }
        }
        self.tls.check(problems);
    }
}

impl ClusterSettings {
    /// Whether the node forms or joins its cluster with `cluster.join` (and `mimid init`)
    /// rather than the static `cluster.peers` and `cluster.voters`.
    pub fn uses_join(&self) -> bool {
        !self.join.is_empty()
    }

    /// The checks of `cluster.join` (see its documentation).
    fn check_join(&self, problems: &mut Vec<ConfigProblem>) {
        if !self.uses_join() {
            return;
        }
        let mut problem = |key, reason: String| problems.push(ConfigProblem { key, reason });
        match self.listen {
            None => problem(
                "cluster.join",
                "joining a cluster needs cluster.listen".into(),
            ),
            Some(listen) if listen.ip().is_unspecified() => problem(
                "cluster.listen",
                format!(
                    "{listen}: with cluster.join it must be the address other nodes dial (they \
                     learn it from this node), not an unspecified address"
                ),
            ),
            Some(_) => {}
        }
        if !self.peers.is_empty() || !self.voters.is_empty() || self.join_existing {
            problem(
                "cluster.join",
                "cannot be combined with cluster.peers, cluster.voters or \
                 cluster.join_existing (the static configuration): use one or the other"
                    .into(),
            );
        }
        for addr in &self.join {
            if addr.port() == 0 || addr.ip().is_unspecified() {
                problem("cluster.join", format!("{addr} cannot be dialled"));
            }
        }
    }
}

impl ClusterTlsSettings {
    /// The three files when all are configured (`ca` as [`TlsFiles::client_ca`]), `None`
    /// otherwise; [`Config::validate`] reports a missing one when `cluster.listen` is set.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            client_ca: self.ca.clone()?,
        })
    }

    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        let paths = [
            ("cluster.tls.cert", &self.cert),
            ("cluster.tls.key", &self.key),
            ("cluster.tls.ca", &self.ca),
        ];
        for (key, path) in paths {
            let reason = match path {
                None => Some(
                    "must be set when cluster.listen is set (node certificate and cluster CA \
                     from `mimid cert create-node` and `mimid cert create-ca`)"
                        .to_owned(),
                ),
                Some(path) => std::fs::File::open(path)
                    .err()
                    .map(|err| format!("cannot read {}: {err}", path.display())),
            };
            if let Some(reason) = reason {
                problems.push(ConfigProblem { key, reason });
            }
        }
    }
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            max_body_bytes: 1 << 20,
            max_key_packages_per_publish: 100,
            stream_queue: 1024,
            stream_heartbeat_ms: 15_000,
            room_mailbox: 1024,
            idle_room_secs: 300,
            housekeeping_secs: 60,
            log_retention_secs: 86_400,
            max_concurrent_streams: 256,
            max_connections: 4096,
            max_concurrent_requests: 16_384,
            max_header_bytes: 16 << 10,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            frank_cache_entries: 4096,
            rate: RateLimitSettings::default(),
        }
    }
}

impl LimitsSettings {
    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        let all: [(&'static str, u64); 15] = [
            ("limits.max_body_bytes", self.max_body_bytes as u64),
            (
                "limits.max_key_packages_per_publish",
                self.max_key_packages_per_publish as u64,
            ),
            ("limits.stream_queue", self.stream_queue as u64),
            ("limits.stream_heartbeat_ms", self.stream_heartbeat_ms),
            ("limits.room_mailbox", self.room_mailbox as u64),
            ("limits.idle_room_secs", self.idle_room_secs),
            ("limits.housekeeping_secs", self.housekeeping_secs),
            ("limits.log_retention_secs", self.log_retention_secs),
            (
                "limits.max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            ("limits.max_connections", self.max_connections as u64),
            (
                "limits.max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
            ("limits.max_header_bytes", self.max_header_bytes),
            ("limits.request_timeout_ms", self.request_timeout_ms),
            ("limits.idle_timeout_ms", self.idle_timeout_ms),
            (
                "limits.frank_cache_entries",
                self.frank_cache_entries as u64,
            ),
        ];
        for (key, value) in all {
            at_least_one(problems, key, value);
        }
        for (key, value) in [
            ("limits.max_connections", self.max_connections),
            (
                "limits.max_concurrent_requests",
                self.max_concurrent_requests,
            ),
        ] {
            if u32::try_from(value).is_err() {
                problems.push(ConfigProblem {
                    key,
                    reason: "must be below 2^32".into(),
                });
            }
        }
        // QUIC encodes the idle timeout as a variable-length integer of milliseconds
        // (RFC 9000 §18.2); quinn refuses values of 2^62 or more.
        if self.idle_timeout_ms >= 1 << 62 {
            problems.push(ConfigProblem {
                key: "limits.idle_timeout_ms",
                reason: "must be below 2^62".into(),
            });
        }
        self.rate.check(problems);
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            peer_requests_per_sec: 10_000.0,
            peer_burst: 20_000,
            user_requests_per_sec: 100.0,
            user_burst: 500,
            key_material_claims_per_pair_per_hour: 30,
            key_material_claims_per_target_per_hour: 300,
            max_tracked_keys: 100_000,
        }
    }
}

impl RateLimitSettings {
    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        for (key, rate) in [
            (
                "limits.rate.peer_requests_per_sec",
                self.peer_requests_per_sec,
            ),
            (
                "limits.rate.user_requests_per_sec",
                self.user_requests_per_sec,
            ),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                problems.push(ConfigProblem {
                    key,
                    reason: format!("must be a positive number of requests per second, not {rate}"),
                });
            }
        }
        for (key, value) in [
            ("limits.rate.peer_burst", self.peer_burst),
            ("limits.rate.user_burst", self.user_burst),
            (
                "limits.rate.key_material_claims_per_pair_per_hour",
                self.key_material_claims_per_pair_per_hour,
            ),
            (
                "limits.rate.key_material_claims_per_target_per_hour",
                self.key_material_claims_per_target_per_hour,
            ),
            ("limits.rate.max_tracked_keys", self.max_tracked_keys as u64),
        ] {
            at_least_one(problems, key, value);
        }
    }
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings {
            peers: BTreeMap::new(),
            resolve_dns: true,
            directory_ttl_secs: 300,
            request_timeout_ms: 10_000,
            max_response_bytes: LimitsSettings::default().max_body_bytes,
            notify_batch_items: 64,
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
        }
    }
}

impl FederationSettings {
    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        for (domain, addr) in &self.peers {
            let reason = match check_domain(domain) {
                Err(reason) => Some(reason),
                Ok(()) if domain.to_ascii_lowercase() != *domain => {
                    Some(format!("{domain:?} must be written in lowercase"))
                }
                Ok(()) if addr.port() == 0 => Some(format!("{domain}: port 0 cannot be reached")),
                Ok(()) => None,
            };
            if let Some(reason) = reason {
                problems.push(ConfigProblem {
                    key: "federation.peers",
                    reason,
                });
            }
        }
        at_least_one(
            problems,
            "federation.directory_ttl_secs",
            self.directory_ttl_secs,
        );
        // A peer that moves its endpoints is noticed within a day at the latest.
        if self.directory_ttl_secs > MAX_DIRECTORY_TTL_SECS {
            problems.push(ConfigProblem {
                key: "federation.directory_ttl_secs",
                reason: format!("must be at most {MAX_DIRECTORY_TTL_SECS} (one day)"),
            });
        }
        at_least_one(
            problems,
            "federation.request_timeout_ms",
            self.request_timeout_ms,
        );
        at_least_one(
            problems,
            "federation.max_response_bytes",
            self.max_response_bytes as u64,
        );
        at_least_one(
            problems,
            "federation.notify_batch_items",
            self.notify_batch_items as u64,
        );
        at_least_one(
            problems,
            "federation.retry_initial_ms",
            self.retry_initial_ms,
        );
        if self.retry_max_ms < self.retry_initial_ms {
            problems.push(ConfigProblem {
                key: "federation.retry_max_ms",
                reason: format!(
                    "must be at least federation.retry_initial_ms ({})",
                    self.retry_initial_ms
                ),
            });
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

impl LogSettings {
    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            problems.push(ConfigProblem {
                key: "log.level",
                reason: format!("not a valid tracing filter ({err})"),
            });
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: "mimid".into(),
        }
    }
}

impl TelemetrySettings {
    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        if self.service_name.trim().is_empty() {
            problems.push(ConfigProblem {
                key: "telemetry.service_name",
                reason: "must not be empty".into(),
            });
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri = endpoint.parse::<http::Uri>().ok();
            let reason = match uri.as_ref().and_then(|uri| uri.scheme_str()) {
                Some("http") if uri.as_ref().and_then(http::Uri::host).is_some() => None,
                Some("http") => Some(format!("{endpoint:?} names no host")),
                Some("https") => Some(format!(
                    "{endpoint:?}: https is not supported; export to a local collector over \
                     http:// (it may forward over TLS)"
                )),
                _ => Some(format!("{endpoint:?} is not an http:// URL")),
            };
            if let Some(reason) = reason {
                problems.push(ConfigProblem {
                    key: "telemetry.otlp_endpoint",
                    reason,
                });
            }
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        })
    }
}

/// Checks that `domain` can name a provider: a DNS name (RFC 6125 identities are DNS names,
/// MIMI protocol-06 §4.1), not an IP address, without a trailing dot.
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{domain:?} is an IP address, not a DNS name"));
    }
    if domain.ends_with('.') {
        return Err(format!("{domain:?} must not end with a dot"));
    }
    DnsName::try_from(domain)
        .map(|_| ())
        .map_err(|_| format!("{domain:?} is not a valid DNS name"))
}

/// Parses a node id written as a TOML key (`cluster.peers`): decimal digits only, no sign, no
/// leading zero, at least 1 (Raft reserves 0) and within 64 bits.
pub fn parse_node_id(key: &str) -> Result<u64, String> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{key:?} is not a node id (decimal digits only)"));
    }
    if key.len() > 1 && key.starts_with('0') {
        return Err(format!("{key:?}: write node ids without leading zeros"));
    }
    match key.parse::<u64>() {
        Ok(0) => Err("node id 0 is reserved by Raft".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("{key:?} does not fit in 64 bits")),
    }
}

/// Checks a `cluster.name`: 1 to [`MAX_CLUSTER_NAME_LEN`] characters of ASCII letters, digits,
/// `-`, `_` and `.`, so it travels in the node-to-node hello and in logs unchanged.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(format!(
            "must be 1 to {MAX_CLUSTER_NAME_LEN} characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{name:?} may contain only ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Default `cluster.name`.
pub const DEFAULT_CLUSTER_NAME: &str = "mimid";
/// Longest `cluster.name`, in bytes.
pub const MAX_CLUSTER_NAME_LEN: usize = 64;

/// A figment provider over an explicit list of environment variables, so tests can layer
/// variables without touching the process environment. Names are matched case-insensitively
/// against [`ENV_PREFIX`]; the rest is lowercased and split on [`ENV_NESTING_SEPARATOR`].
struct EnvVars {
    dict: Dict,
}

impl EnvVars {
    fn new(vars: &[(String, String)]) -> Self {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest
                .split(ENV_NESTING_SEPARATOR)
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                continue;
            }
            // Parsing turns "42" into a number and "true" into a boolean, the way figment's own
            // `Env` provider does; anything else stays a string.
            let parsed: Value = value.parse().unwrap_or_else(|never| match never {});
            insert_nested(&mut dict, &path, parsed);
        }
        EnvVars { dict }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("{ENV_PREFIX}* environment variable(s)"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

fn insert_nested(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [leaf] => {
            dict.insert(leaf.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                // A scalar and a nested key for the same name: the nested one wins, as the more
                // specific variable.
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

fn merge_overrides(mut figment: Figment, overrides: &Overrides) -> Figment {
    if let Some(data_dir) = &overrides.data_dir {
        figment = figment.merge(Serialized::default("data_dir", data_dir));
    }
    if let Some(listen) = overrides.listen {
        figment = figment.merge(Serialized::default("listen", listen));
    }
    if let Some(admin_listen) = overrides.admin_listen {
        figment = figment.merge(Serialized::default("admin_listen", admin_listen));
    }
    if let Some(domain) = &overrides.domain {
        figment = figment.merge(Serialized::default("domain", domain));
    }
    if let Some(format) = overrides.log_format {
        figment = figment.merge(Serialized::default("log.format", format));
    }
    figment
}

/// Upper bound of `cluster.idle_timeout_ms` (an hour).
const MAX_IDLE_TIMEOUT_MS: u64 = 3_600_000;

/// Upper bound of `federation.directory_ttl_secs`.
const MAX_DIRECTORY_TTL_SECS: u64 = 86_400;

fn at_least_one(problems: &mut Vec<ConfigProblem>, key: &'static str, value: u64) {
    if value == 0 {
        problems.push(ConfigProblem {
            key,
            reason: "must be at least 1".into(),
        });
    }
}

fn partial_tls_problem() -> ConfigProblem {
    ConfigProblem {
        key: "tls",
        reason: "cert, key and client_ca must be set together (or all left unset in dev mode)"
            .into(),
    }
}

struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// Reads the `MIMID_*` variables of the process environment, for [`ConfigSources::env`].
/// Variables whose name or value is not UTF-8 are passed on lossily so that validation, not a
/// silent skip, reports them.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .filter(|(name, _)| strip_prefix_ignore_case(name, ENV_PREFIX).is_some())
        .collect()
}

/// The certificate directory under `data_dir` that `mimid dev` fills.
pub fn dev_cert_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

/// The admin token file under `data_dir` that `mimid dev` creates, and that the admin commands
/// read with `--data-dir`.
pub fn dev_admin_token_file(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::admin::auth::ADMIN_TOKEN_FILE_NAME)
}

/// Why a node listening for admin requests on `admin_listen` needs `admin_token_file`.
pub fn admin_token_required(admin_listen: SocketAddr) -> String {
    format!(
        "required because admin_listen ({admin_listen}) is not a loopback address: the admin \
         routes take backups (with the provider's private keys), read abuse reports and drain \
         or decommission nodes; create a token with `mimid admin-token --out FILE`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write_file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    fn problems(config: &Config) -> Vec<&'static str> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems.iter().map(|p| p.key).collect(),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let config = Config::load(&ConfigSources::default()).expect("defaults load");
        assert_eq!(config, Config::default());
        assert_eq!(config.domain, "localhost");
        assert_eq!(config.node_id, 1);
        assert_eq!(config.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(config.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(config.cluster.shards, 16);
        assert_eq!(config.limits.max_body_bytes, 1 << 20);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.telemetry.otlp_endpoint, None);
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "mimid.toml",
            "domain = \"a.example\"\n[cluster]\nshards = 4\n[limits]\nmax_body_bytes = 2048\n",
        );
        let config = Config::load(&ConfigSources {
            file: Some(file),
            ..ConfigSources::default()
        })
        .expect("load");
        assert_eq!(config.domain, "a.example");
        assert_eq!(config.cluster.shards, 4);
        assert_eq!(config.cluster.tick_ms, 100, "untouched keys keep defaults");
        assert_eq!(config.limits.max_body_bytes, 2048);
    }

    #[test]
    fn env_overrides_file_with_nested_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "mimid.toml",
            "domain = \"a.example\"\n[limits]\nmax_body_bytes = 2048\n",
        );
        let config = Config::load(&ConfigSources {
            file: Some(file),
            env: env(&[
                ("MIMID_LIMITS__MAX_BODY_BYTES", "4096"),
                ("mimid_cluster__fsync", "false"),
                ("MIMID_LISTEN", "127.0.0.1:5000"),
                ("OTHER_DOMAIN", "ignored.example"),
            ]),
            ..ConfigSources::default()
        })
        .expect("load");
        assert_eq!(config.limits.max_body_bytes, 4096);
        assert!(!config.cluster.fsync);
        assert_eq!(config.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            config.domain, "a.example",
            "unprefixed variables are ignored"
        );
    }

    #[test]
    fn flags_override_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "mimid.toml", "domain = \"file.example\"\n");
        let config = Config::load(&ConfigSources {
            file: Some(file),
            env: env(&[
                ("MIMID_DOMAIN", "env.example"),
                ("MIMID_LOG__FORMAT", "json"),
                ("MIMID_DATA_DIR", "/env/data"),
            ]),
            overrides: Overrides {
                domain: Some("flag.example".into()),
                log_format: Some(LogFormat::Text),
                ..Overrides::default()
            },
        })
        .expect("load");
        assert_eq!(config.domain, "flag.example");
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(
            config.data_dir,
            PathBuf::from("/env/data"),
            "no flag: env wins"
        );
    }

    #[test]
    fn missing_config_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = Config::load(&ConfigSources {
            file: Some(path.clone()),
            ..ConfigSources::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let typo = write_file(&dir, "typo.toml", "[limits]\nmax_body_byte = 10\n");
        let err = Config::load(&ConfigSources {
            file: Some(typo),
            ..ConfigSources::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");

        let err = Config::load(&ConfigSources {
            env: env(&[("MIMID_CLUSTER__SHARDS", "many")]),
            ..ConfigSources::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Load(_)), "{err}");
        assert!(err.to_string().contains("shards"), "{err}");
    }

    #[test]
    fn validation_reports_every_broken_rule() {
        let mut config = Config::default();
        config.cluster.shards = 0;
        config.cluster.election_tick = 2;
        config.node_id = 0;
        config.limits.stream_queue = 0;
        config.limits.frank_cache_entries = 0;
        config.limits.max_connections = usize::MAX;
        config.log.level = "info,mimid=loud".into();
        let keys = problems(&config);
        assert_eq!(
            keys,
            vec![
                "node_id",
                "cluster.shards",
                "cluster.election_tick",
                "limits.stream_queue",
                "limits.frank_cache_entries",
                "limits.max_connections",
                "log.level"
            ]
        );
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("cluster.shards: must be at least 1"),
            "{message}"
        );
    }

    #[test]
    fn rate_limits_default_generously_and_reject_unusable_rates() {
        let rate = RateLimitSettings::default();
        assert_eq!(
            (rate.peer_requests_per_sec, rate.peer_burst),
            (10_000.0, 20_000)
        );
        assert_eq!((rate.user_requests_per_sec, rate.user_burst), (100.0, 500));
        assert_eq!(
            (
                rate.key_material_claims_per_pair_per_hour,
                rate.key_material_claims_per_target_per_hour
            ),
            (30, 300)
        );

        // Fractional rates load from a file and from the environment (an integer there too).
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "mimid.toml",
            "[limits.rate]\npeer_requests_per_sec = 0.001\npeer_burst = 5\n",
        );
        let config = Config::load(&ConfigSources {
            file: Some(file),
            env: env(&[("MIMID_LIMITS__RATE__USER_REQUESTS_PER_SEC", "7")]),
            ..ConfigSources::default()
        })
        .expect("load");
        assert_eq!(config.limits.rate.peer_requests_per_sec, 0.001);
        assert_eq!(config.limits.rate.peer_burst, 5);
        assert_eq!(config.limits.rate.user_requests_per_sec, 7.0);
        assert_eq!(
            config.limits.rate.user_burst, 500,
            "untouched keys keep defaults"
        );
        config.validate().expect("valid");

        let mut config = Config::default();
        config.limits.rate.peer_requests_per_sec = 0.0;
        config.limits.rate.user_requests_per_sec = f64::NAN;
        config.limits.rate.peer_burst = 0;
        config.limits.rate.key_material_claims_per_target_per_hour = 0;
        config.limits.rate.max_tracked_keys = 0;
        assert_eq!(
            problems(&config),
            vec![
                "limits.rate.peer_requests_per_sec",
                "limits.rate.user_requests_per_sec",
                "limits.rate.peer_burst",
                "limits.rate.key_material_claims_per_target_per_hour",
                "limits.rate.max_tracked_keys",
            ]
        );
    }

    #[test]
    fn domain_must_be_a_dns_name() {
        for bad in [
            "",
            "127.0.0.1",
            "::1",
            "a..example",
            "a.example.",
            "under_score!",
        ] {
            let config = Config {
                domain: bad.into(),
                ..Config::default()
            };
            assert_eq!(problems(&config), vec!["domain"], "{bad:?}");
        }
        for good in ["localhost", "a.example", "mimi.provider-1.example"] {
            assert_eq!(check_domain(good), Ok(()), "{good}");
        }
    }

    /// Issue 6: the operator routes of an admin listener off loopback need a token.
    #[test]
    fn admin_listen_off_loopback_needs_a_token_file() {
        for public in ["0.0.0.0:9090", "10.0.0.10:9090", "[::]:9090"] {
            let config = Config {
                admin_listen: public.parse().unwrap(),
                ..Config::default()
            };
            assert_eq!(problems(&config), vec!["admin_token_file"], "{public}");
            let message = config.validate().unwrap_err().to_string();
            assert!(
                message.contains("admin_token_file") && message.contains(public),
                "{message}"
            );
            let with_token = Config {
                admin_token_file: Some("/etc/mimid/admin.token".into()),
                ..config
            };
            assert_eq!(problems(&with_token), Vec::<&str>::new(), "{public}");
        }
        for loopback in ["127.0.0.1:9090", "[::1]:9090"] {
            let config = Config {
                admin_listen: loopback.parse().unwrap(),
                ..Config::default()
            };
            assert_eq!(problems(&config), Vec::<&str>::new(), "{loopback}");
        }
        let empty = Config {
            admin_token_file: Some(PathBuf::new()),
            ..Config::default()
        };
        assert_eq!(problems(&empty), vec!["admin_token_file"]);

        // The environment form is the one the admin commands read too.
        let loaded = Config::load(&ConfigSources {
            env: env(&[("MIMID_ADMIN_TOKEN_FILE", "/run/secrets/admin.token")]),
            ..ConfigSources::default()
        })
        .unwrap();
        assert_eq!(
            loaded.admin_token_file,
            Some(PathBuf::from("/run/secrets/admin.token"))
        );
    }

    #[test]
    fn port_zero_only_on_loopback() {
        let config = Config {
            listen: "0.0.0.0:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(problems(&config), vec!["listen"]);
    }

    #[test]
    fn tls_paths_must_be_complete_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write_file(&dir, "cert.pem", "x");
        let partial = Config {
            tls: TlsSettings {
                cert: Some(cert.clone()),
                ..TlsSettings::default()
            },
            ..Config::default()
        };
        assert_eq!(problems(&partial), vec!["tls"]);
        assert!(partial.tls.files().is_err());

        let unreadable = Config {
            tls: TlsSettings {
                cert: Some(cert.clone()),
                key: Some(dir.path().join("missing.key")),
                client_ca: Some(cert.clone()),
            },
            ..Config::default()
        };
        assert_eq!(problems(&unreadable), vec!["tls.key"]);
        let message = unreadable.validate().unwrap_err().to_string();
        assert!(message.contains("missing.key"), "{message}");

        assert_eq!(Config::default().tls.files().unwrap(), None);
    }

    #[test]
    fn federation_defaults_and_ranges() {
        let defaults = FederationSettings::default();
        assert_eq!(defaults.directory_ttl_secs, 300);
        assert_eq!(defaults.request_timeout_ms, 10_000);
        assert_eq!(
            defaults.max_response_bytes,
            LimitsSettings::default().max_body_bytes
        );
        assert_eq!(defaults.notify_batch_items, 64);
        assert_eq!(
            (defaults.retry_initial_ms, defaults.retry_max_ms),
            (100, 30_000)
        );

        let mut config = Config::default();
        config.federation.directory_ttl_secs = 0;
        config.federation.request_timeout_ms = 0;
        config.federation.max_response_bytes = 0;
        config.federation.notify_batch_items = 0;
        config.federation.retry_initial_ms = 500;
        config.federation.retry_max_ms = 400;
        assert_eq!(
            problems(&config),
            vec![
                "federation.directory_ttl_secs",
                "federation.request_timeout_ms",
                "federation.max_response_bytes",
                "federation.notify_batch_items",
                "federation.retry_max_ms",
            ]
        );
        config.federation = FederationSettings {
            directory_ttl_secs: MAX_DIRECTORY_TTL_SECS + 1,
            ..FederationSettings::default()
        };
        assert_eq!(problems(&config), vec!["federation.directory_ttl_secs"]);
    }

    #[test]
    fn federation_peers_are_lowercase_domains_with_a_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "mimid.toml",
            "[federation.peers]\n\"b.example\" = \"127.0.0.1:4434\"\n",
        );
        let config = Config::load(&ConfigSources {
            file: Some(file),
            ..ConfigSources::default()
        })
        .expect("load");
        assert_eq!(
            config.federation.peers.get("b.example"),
            Some(&"127.0.0.1:4434".parse().unwrap())
        );
        config.validate().expect("valid");

        for (domain, addr) in [
            ("B.example", "127.0.0.1:4434"),
            ("127.0.0.1", "127.0.0.1:4434"),
            ("c.example", "127.0.0.1:0"),
        ] {
            let mut config = Config::default();
            config
                .federation
                .peers
                .insert(domain.into(), addr.parse().unwrap());
            assert_eq!(problems(&config), vec!["federation.peers"], "{domain}");
        }
    }

    #[test]
    fn otlp_endpoint_must_be_http() {
        let with_endpoint = |endpoint: &str| Config {
            telemetry: TelemetrySettings {
                otlp_endpoint: Some(endpoint.into()),
                service_name: "mimid".into(),
            },
            ..Config::default()
        };
        for bad in [
            "collector:4318",
            "https://collector:4318",
            "grpc://collector:4317",
            "http://",
        ] {
            assert_eq!(
                problems(&with_endpoint(bad)),
                vec!["telemetry.otlp_endpoint"],
                "{bad}"
            );
        }
        let err = with_endpoint("https://collector:4318")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("https is not supported"), "{err}");
        for good in ["http://127.0.0.1:4318", "http://collector:4318/"] {
            with_endpoint(good).validate().expect(good);
        }
    }

    #[test]
    fn cluster_transport_is_off_by_default() {
        let cluster = ClusterSettings::default();
        assert_eq!(cluster.name, "mimid");
        assert_eq!(cluster.listen, None);
        assert!(cluster.peers.is_empty());
        assert_eq!(cluster.peer_queue_frames, 1024);
        assert_eq!(cluster.max_frame_bytes, 512 << 20);
        assert!(cluster.voters.is_empty());
        assert_eq!(cluster.tls.files(), None);
        assert_eq!(cluster.peer_addresses(1), Ok(BTreeMap::new()));
    }

    /// Node-to-node keep-alives (1 s) and idle timeout (3 s) by default, so a crashed peer is
    /// noticed within seconds; the keep-alive must be positive and below the bounded idle
    /// timeout.
    #[test]
    fn keep_alive_and_idle_timeout_default_to_seconds_and_are_checked() {
        let defaults = ClusterSettings::default();
        assert_eq!(
            (defaults.keep_alive_ms, defaults.idle_timeout_ms),
            (1_000, 3_000)
        );
        let cases: [(u64, u64, &[&str]); 5] = [
            (0, 3_000, &["cluster.keep_alive_ms"]),
            (1_000, 1_000, &["cluster.idle_timeout_ms"]),
            (2_000, 1_000, &["cluster.idle_timeout_ms"]),
            (1_000, 3_600_001, &["cluster.idle_timeout_ms"]),
            (250, 750, &[]),
        ];
        for (keep_alive_ms, idle_timeout_ms, expected) in cases {
            let mut config = Config::default();
            config.cluster.keep_alive_ms = keep_alive_ms;
            config.cluster.idle_timeout_ms = idle_timeout_ms;
            assert_eq!(
                problems(&config),
                expected,
                "{keep_alive_ms} ms, {idle_timeout_ms} ms"
            );
        }
    }

    /// Issue 4: R voting replicas per shard (3 by default), and a node that joins a running
    /// cluster instead of bootstrapping its own.
    #[test]
    fn replication_factor_and_join_existing_load_and_are_checked() {
        let cluster = ClusterSettings::default();
        assert_eq!(cluster.replication_factor, 3);
        assert_eq!(
            cluster.replicas,
            Replicas::R,
            "replicas on R nodes by default"
        );
        assert!(!cluster.join_existing);
        let loaded = Config::load(&ConfigSources {
            env: env(&[
                ("MIMID_CLUSTER__REPLICATION_FACTOR", "5"),
                ("MIMID_CLUSTER__JOIN_EXISTING", "true"),
                ("MIMID_CLUSTER__REPLICAS", "all"),
            ]),
            ..ConfigSources::default()
        })
        .expect("load");
        assert_eq!(loaded.cluster.replication_factor, 5);
        assert_eq!(loaded.cluster.replicas, Replicas::All);
        assert!(loaded.cluster.join_existing);
        let unknown = Config::load(&ConfigSources {
            env: env(&[("MIMID_CLUSTER__REPLICAS", "some")]),
            ..ConfigSources::default()
        });
        assert!(unknown.is_err(), "cluster.replicas is \"r\" or \"all\"");
        // Joining needs the node-to-node transport; 0 or 16 voters per shard is refused.
        assert_eq!(problems(&loaded), vec!["cluster.join_existing"]);
        let mut config = Config::default();
        for factor in [0, 16] {
            config.cluster.replication_factor = factor;
            assert_eq!(problems(&config), vec!["cluster.replication_factor"]);
        }
    }

    /// Issue 4 bootstrap: `cluster.join` loads from the environment and is refused without a
    /// dialable `cluster.listen`, beside the static keys, or with addresses nobody can dial.
    #[test]
    fn cluster_join_loads_and_excludes_the_static_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let pem = write_file(&dir, "node.pem", "x");
        assert!(!ClusterSettings::default().uses_join());
        let loaded = Config::load(&ConfigSources {
            env: env(&[(
                "MIMID_CLUSTER__JOIN",
                "[\"127.0.0.1:7444\", \"127.0.0.1:7445\"]",
            )]),
            ..ConfigSources::default()
        })
        .expect("load");
        assert_eq!(
            loaded.cluster.join,
            vec![
                "127.0.0.1:7444".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:7445".parse().unwrap()
            ]
        );
        assert!(loaded.cluster.uses_join());
        assert_eq!(problems(&loaded), vec!["cluster.join"]);

        let mut config = loaded.clone();
        config.cluster.listen = Some("127.0.0.1:7443".parse().unwrap());
        config.cluster.tls = ClusterTlsSettings {
            cert: Some(pem.clone()),
            key: Some(pem.clone()),
            ca: Some(pem),
        };
        // Its own address among them is fine.
        config.cluster.join.push("127.0.0.1:7443".parse().unwrap());
        config.validate().expect("valid");
        let refused = |edit: &dyn Fn(&mut Config)| {
            let mut changed = config.clone();
            edit(&mut changed);
            problems(&changed)
        };
        assert_eq!(
            refused(&|c| c.cluster.listen = Some("0.0.0.0:7443".parse().unwrap())),
            vec!["cluster.listen"]
        );
        assert_eq!(
            refused(&|c| {
                c.cluster
                    .peers
                    .insert("2".into(), "127.0.0.1:7444".parse().unwrap());
            }),
            vec!["cluster.join"]
        );
        assert_eq!(
            refused(&|c| c.cluster.voters = vec![1, 2]),
            vec!["cluster.join"]
        );
        assert_eq!(
            refused(&|c| c.cluster.join_existing = true),
            vec!["cluster.join"]
        );
        for bad in ["127.0.0.1:0", "0.0.0.0:7444"] {
            assert_eq!(
                refused(&|c| c.cluster.join.push(bad.parse().unwrap())),
                vec!["cluster.join"],
                "{bad}"
            );
        }
    }

    #[test]
    fn cluster_transport_keys_load_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let pem = write_file(&dir, "node.pem", "x");
        let file = write_file(
            &dir,
            "mimid.toml",
            &format!(
                "node_id = 1\n[cluster]\nname = \"prod-eu\"\nlisten = \"127.0.0.1:7443\"\n\
                 [cluster.peers]\n2 = \"127.0.0.1:7444\"\n\
                 [cluster.tls]\ncert = {0:?}\nkey = {0:?}\nca = {0:?}\n",
                pem.display().to_string()
            ),
        );
        let config = Config::load(&ConfigSources {
            file: Some(file),
            env: env(&[("MIMID_CLUSTER__PEERS__3", "127.0.0.1:7445")]),
            ..ConfigSources::default()
        })
        .expect("load");
        config.validate().expect("valid");
        assert_eq!(config.cluster.name, "prod-eu");
        assert_eq!(
            config.cluster.listen,
            Some("127.0.0.1:7443".parse().unwrap())
        );
        assert_eq!(
            config.cluster.peer_addresses(config.node_id),
            Ok(BTreeMap::from([
                (2, "127.0.0.1:7444".parse().unwrap()),
                (3, "127.0.0.1:7445".parse().unwrap()),
            ]))
        );
        let files = config.cluster.tls.files().expect("complete");
        assert_eq!((files.cert, files.client_ca), (pem.clone(), pem));

        // The rendered configuration loads back to the same values.
        let rendered = write_file(&dir, "rendered.toml", &config.to_toml().unwrap());
        let reloaded = Config::load(&ConfigSources {
            file: Some(rendered),
            ..ConfigSources::default()
        })
        .expect("reload");
        assert_eq!(reloaded, config);
    }

    #[test]
    fn cluster_peer_ids_parse_strictly_and_exclude_zero_and_self() {
        assert_eq!(parse_node_id("2"), Ok(2));
        assert_eq!(parse_node_id("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "0",
            "02",
            "+2",
            "-2",
            " 2",
            "2 ",
            "2.0",
            "0x2",
            "18446744073709551616",
        ] {
            assert!(parse_node_id(bad).is_err(), "{bad:?}");
        }
        for key in ["0", "02", "+2", "two", "1"] {
            let mut config = Config::default();
            config.cluster.listen = Some("127.0.0.1:7443".parse().unwrap());
            config.cluster.tls = ClusterTlsSettings {
                cert: Some("Cargo.toml".into()),
                key: Some("Cargo.toml".into()),
                ca: Some("Cargo.toml".into()),
            };
            config
                .cluster
                .peers
                .insert(key.into(), "127.0.0.1:7444".parse().unwrap());
            assert_eq!(problems(&config), vec!["cluster.peers"], "{key:?}");
            assert!(config.cluster.peer_addresses(1).is_err(), "{key:?}");
        }
    }

    #[test]
    fn cluster_transport_validation_names_each_broken_key() {
        // Peers without a listener, an unusable name, an empty queue, a frame size beyond the
        // 32-bit length prefix.
        let mut config = Config::default();
        config.cluster.name = "our cluster".into();
        config.cluster.peer_queue_frames = 0;
        config.cluster.max_frame_bytes = 1 << 32;
        config
            .cluster
            .peers
            .insert("2".into(), "127.0.0.1:7444".parse().unwrap());
        assert_eq!(
            problems(&config),
            vec![
                "cluster.name",
                "cluster.peer_queue_frames",
                "cluster.max_frame_bytes",
                "cluster.peers"
            ]
        );

        // A listener needs [cluster.tls], on an address of its own; peers need distinct,
        // reachable addresses; frames must hold a full Raft append message.
        let mut config = Config::default();
        config.cluster.listen = Some(config.listen);
        config.cluster.max_frame_bytes = config.cluster.max_size_per_msg - 1;
        config
            .cluster
            .peers
            .insert("2".into(), "127.0.0.1:7444".parse().unwrap());
        config
            .cluster
            .peers
            .insert("3".into(), "127.0.0.1:7444".parse().unwrap());
        config
            .cluster
            .peers
            .insert("4".into(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            problems(&config),
            vec![
                "cluster.max_frame_bytes",
                "cluster.listen",
                "cluster.peers",
                "cluster.peers",
                "cluster.tls.cert",
                "cluster.tls.key",
                "cluster.tls.ca",
            ]
        );
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("mimid cert create-node"), "{message}");
        assert!(message.contains("share the address"), "{message}");

        let mut config = Config::default();
        config.cluster.listen = Some("0.0.0.0:0".parse().unwrap());
        config.cluster.tls.cert = Some("Cargo.toml".into());
        config.cluster.tls.key = Some("Cargo.toml".into());
        config.cluster.tls.ca = Some("/nonexistent/ca.pem".into());
        assert_eq!(problems(&config), vec!["cluster.listen", "cluster.tls.ca"]);

        for good in ["mimid", "prod-eu.1", "A_b"] {
            assert_eq!(check_cluster_name(good), Ok(()), "{good}");
        }
        assert!(check_cluster_name(&"x".repeat(MAX_CLUSTER_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn cluster_voters_default_to_the_peers_and_are_validated() {
        let mut config = Config {
            node_id: 2,
            ..Config::default()
        };
        assert_eq!(config.cluster.initial_voters(2), vec![2], "a single node");
        config.cluster.listen = Some("127.0.0.1:7443".parse().unwrap());
        config.cluster.tls = ClusterTlsSettings {
            cert: Some("Cargo.toml".into()),
            key: Some("Cargo.toml".into()),
            ca: Some("Cargo.toml".into()),
        };
        for (id, port) in [("3", 7445), ("1", 7444)] {
            config
                .cluster
                .peers
                .insert(id.into(), SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(problems(&config), Vec::<&str>::new());
        assert_eq!(config.cluster.initial_voters(2), vec![1, 2, 3]);
        // Given explicitly (peers introduced later), the list is taken as is, sorted.
        config.cluster.peers.clear();
        config.cluster.voters = vec![3, 2, 1];
        assert_eq!(problems(&config), Vec::<&str>::new());
        assert_eq!(config.cluster.initial_voters(2), vec![1, 2, 3]);

        for bad in [vec![1, 3], vec![0, 2], vec![2, 2, 3]] {
            config.cluster.voters = bad.clone();
            assert_eq!(problems(&config), vec!["cluster.voters"], "{bad:?}");
        }
        config.cluster.listen = None;
        config.cluster.voters = vec![1, 2];
        assert_eq!(problems(&config), vec!["cluster.voters"]);
        config.cluster.voters = vec![2];
        assert_eq!(problems(&config), Vec::<&str>::new());
    }

    #[test]
    fn toml_rendering_round_trips() {
        let config = Config {
            domain: "a.example".into(),
            tls: TlsSettings {
                cert: Some("/etc/mimid/cert.pem".into()),
                key: Some("/etc/mimid/key.pem".into()),
                client_ca: Some("/etc/mimid/ca.pem".into()),
            },
            ..Config::default()
        };
        let rendered = config.to_toml().expect("render");
        assert!(rendered.contains("[limits]"), "{rendered}");
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "rendered.toml", &rendered);
        let loaded = Config::load(&ConfigSources {
            file: Some(file),
            ..ConfigSources::default()
        })
        .expect("reload");
        assert_eq!(loaded, config);
    }

    /// Issue 9 data residency: `[[cluster.residency]]` parses, numbers its shards after the
    /// hashed ones (and the split shards after them), and is refused with the reason when
    /// malformed or with replicas = "all".
    #[test]
    fn residency_sets_parse_count_their_shards_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mimid.toml");
        std::fs::write(
            &path,
            r#"
[cluster]
shards = 4
split_shards = 3

[[cluster.residency]]
name = "eu"
regions = ["eu"]
shards = 2

[[cluster.residency]]
name = "apac"
regions = ["ap", "au"]
"#,
        )
        .unwrap();
        let config = Config::load(&ConfigSources {
            file: Some(path),
            ..ConfigSources::default()
        })
        .unwrap();
        assert_eq!(config.cluster.shard_count(), 10);
        let layout = config.cluster.layout().unwrap();
        assert_eq!(layout.set("eu").unwrap().shards, 4..6);
        assert_eq!(layout.set("apac").unwrap().shards, 6..7);
        assert_eq!(layout.split_shards(), 7..10);

        let mut config = Config::default();
        config.cluster.split_shards = u64::MAX;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("refused");
        };
        assert!(
            problems
                .iter()
                .any(|problem| problem.key == "cluster.split_shards"
                    && problem.reason.contains("too many")),
            "{problems:?}"
        );

        let mut config = Config::default();
        config.cluster.residency = vec![ResidencySettings {
            name: "eu".into(),
            regions: vec![],
            shards: 1,
        }];
        config.cluster.replicas = Replicas::All;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("refused");
        };
        let reasons: Vec<String> = problems
            .into_iter()
            .filter(|problem| problem.key == "cluster.residency")
            .map(|problem| problem.reason)
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains("names no region")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("replicas = \"r\"")),
            "{reasons:?}"
        );
    }

    /// Issue 9 build item 3: `[cluster.split]` parses from a file and the environment, is off
    /// by default, and is refused with the key and the reason when a threshold is on without
    /// split shards or the check interval or cooldown is out of range.
    #[test]
    fn split_thresholds_parse_default_off_and_need_split_shards() {
        let defaults = Config::default().cluster.split;
        assert!(!defaults.is_automatic());
        assert_eq!(
            (defaults.cooldown_secs, defaults.check_interval_ms),
            (60, 5000)
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mimid.toml");
        std::fs::write(
            &path,
            r#"
[cluster]
split_shards = 2

[cluster.split]
max_rooms = 500
cooldown_secs = 5
"#,
        )
        .unwrap();
        let loaded = Config::load(&ConfigSources {
            file: Some(path.clone()),
            env: vec![(
                "MIMID_CLUSTER__SPLIT__MAX_ITEMS_PER_SEC".into(),
                "2000".into(),
            )],
            ..ConfigSources::default()
        })
        .expect("loads");
        let split = &loaded.cluster.split;
        assert_eq!(
            (
                split.max_rooms,
                split.max_items_per_sec,
                split.cooldown_secs,
                split.check_interval_ms
            ),
            (500, 2000, 5, 5000)
        );
        assert!(split.is_automatic());
        assert_eq!(problems(&loaded), Vec::<&str>::new());

        let reasons = |config: &Config| -> Vec<(&'static str, String)> {
            match config.validate() {
                Ok(()) => Vec::new(),
                Err(ConfigError::Invalid(problems)) => problems
                    .into_iter()
                    .map(|problem| (problem.key, problem.reason))
                    .collect(),
                Err(other) => panic!("unexpected error {other}"),
            }
        };
        let mut config = loaded.clone();
        config.cluster.split_shards = 0;
        let found = reasons(&config);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "cluster.split.max_rooms");
        assert!(
            found[0]
                .1
                .contains("automatic splits need split shards: set cluster.split_shards"),
            "{found:?}"
        );
        config.cluster.split.max_rooms = 0;
        assert_eq!(problems(&config), vec!["cluster.split.max_items_per_sec"]);
        config.cluster.split.max_items_per_sec = 0;
        assert_eq!(
            problems(&config),
            Vec::<&str>::new(),
            "thresholds off need no split shard"
        );

        config.cluster.split.check_interval_ms = 99;
        config.cluster.split.cooldown_secs = 7 * 24 * 3600 + 1;
        let found = reasons(&config);
        assert_eq!(
            found.iter().map(|(key, _)| *key).collect::<Vec<_>>(),
            vec![
                "cluster.split.check_interval_ms",
                "cluster.split.cooldown_secs"
            ]
        );
        assert!(found[0].1.contains("100 to 3600000"), "{found:?}");

        std::fs::write(&path, "[cluster.split]\nmax_room = 5\n").unwrap();
        let error = Config::load(&ConfigSources {
            file: Some(path),
            ..ConfigSources::default()
        })
        .expect_err("a misspelt key is refused");
        assert!(error.to_string().contains("max_room"), "{error}");
    }

    /// Issue 9: `locality` and `cluster.leader_region` are checked like the registry checks
    /// them; the environment sets them too.
    #[test]
    fn locality_and_leader_region_are_validated() {
        let mut config = Config::default();
        assert_eq!(config.locality(), Locality::default());
        config.locality = "region=eu,zone=eu-1".into();
        config.cluster.leader_region = Some("eu".into());
        assert_eq!(problems(&config), Vec::<&str>::new());
        assert_eq!(config.locality().zone(), Some("eu-1"));
        config.locality = "region eu".into();
        config.cluster.leader_region = Some("e u".into());
        assert_eq!(problems(&config), vec!["locality", "cluster.leader_region"]);
        let loaded = Config::load(&ConfigSources {
            env: vec![
                ("MIMID_LOCALITY".into(), "region=us,zone=us-2".into()),
                ("MIMID_CLUSTER__LEADER_REGION".into(), "us".into()),
            ],
            ..ConfigSources::default()
        })
        .expect("loads");
        assert_eq!(loaded.locality, "region=us,zone=us-2");
        assert_eq!(loaded.cluster.leader_region.as_deref(), Some("us"));
    }
}
