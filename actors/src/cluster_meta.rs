//! The node registry of a provider's cluster (issue 4, "a metadata shard holds cluster
//! membership"; DESIGN.md §3): which nodes belong to the cluster, where their node-to-node
//! listeners are, which are leaving, and the replication factor.
//!
//! **Shard 0 is the metadata shard** ([`METADATA_SHARD`]): the registry is part of shard 0's
//! replicated state (`ShardData::cluster_meta`) and changes only through
//! `Command::ClusterMeta`, whose [`MetaChange`] is decided here, in apply, on the ordered log
//! (STYLE.md P5): every replica of shard 0 computes the same registry, a refusal
//! ([`MetaRefusal`]) changes nothing, and a repeated change that already holds answers
//! `Ok(false)`. Shard 0 also holds rooms and users like every other shard; the registry is a
//! few hundred bytes beside them.
//!
//! What the registry decides, and what it does not:
//! - It names the nodes and their state. [`NodeState::Active`] nodes are where replicas may
//!   live; [`NodeState::Decommissioning`] ones are being emptied by the placement driver (in
//!   `mimid-node`), which marks them [`NodeState::Decommissioned`] once no shard has them as a
//!   member. A decommissioned node stays in the registry (so its id is never reused by
//!   accident) and is never placed on again.
//! - It refuses to start decommissioning a node when the Active nodes other than it are fewer
//!   than the replication factor ([`MetaRefusal::TooFewNodes`]): the rest could not hold every
//!   shard's replicas. Deciding it in apply means two concurrent decommissions cannot both pass.
//! - It does not hold shard membership: each shard's voters and learners live in that shard's
//!   own Raft log (conf changes), which is what the placement driver reads and changes.
//! - It does not hold anything a node keeps in memory only (draining).
//!
//! A registry is *seeded* once, by the first leader of shard 0 in a new cluster
//! ([`MetaChange::Seed`], from `cluster.voters`, `cluster.peers` and
//! `cluster.replication_factor`); an unseeded registry refuses every other change
//! ([`MetaRefusal::NotSeeded`]), and a second seed changes nothing.
//!
//! A cluster formed with `mimid start --join` and `mimid init` (CockroachDB-style bootstrap,
//! issue 4) is seeded with [`MetaChange::Bootstrap`] instead, which also records the
//! **cluster id** ([`ClusterId`]): 128 random bits the node that took `mimid init` drew, which
//! every node of the cluster keeps in its data directory and presents when it connects, so a
//! node of another cluster (even one with the same `cluster.name` and CA) is refused. Once a
//! registry holds a cluster id, no change replaces it ([`MetaRefusal::ClusterIdMismatch`]).
//! A statically configured cluster's registry has none.
//!
//! Each node also has a **locality** ([`Locality`], issue 9): ordered `key=value` tiers, most
//! significant first (`region=eu,zone=eu-1`), which the placement driver reads to spread a
//! shard's voters over regions and zones. A node's own configuration (`locality`, `mimid start
//! --locality`) is the authority: a node whose configured locality differs from its record
//! tells the registry ([`MetaChange::SetLocality`]); `mimid node add --locality` and the
//! registration of a node that joined with `cluster.join` record it with the node
//! ([`MetaChange::AddNodeWithLocality`]). A seed names no localities (the seeding node knows
//! only its own): every seeded node sets its own right after.
//!
//! Bounds (STYLE.md P9): at most [`MAX_NODES`] nodes, decommissioned ones included; at most
//! [`MAX_LOCALITY_TIERS`] tiers per locality, keys of at most [`MAX_LOCALITY_KEY_LEN`] and values
//! of at most [`MAX_LOCALITY_VALUE_LEN`] bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mimid_cluster::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

/// The shard whose state holds the node registry.
pub const METADATA_SHARD: ShardId = 0;

/// Most nodes the registry holds, decommissioned ones included.
pub const MAX_NODES: usize = 1024;

/// Largest replication factor a registry accepts (a Raft group of more voters than this only
/// slows every commit down).
pub const MAX_REPLICATION_FACTOR: u32 = 15;

/// Most tiers a [`Locality`] has.
pub const MAX_LOCALITY_TIERS: usize = 8;
/// Longest key of a locality tier, in bytes.
pub const MAX_LOCALITY_KEY_LEN: usize = 32;
/// Longest value of a locality tier, in bytes.
pub const MAX_LOCALITY_VALUE_LEN: usize = 64;

/// The replicated node registry (module docs). Serialised only into shard 0's snapshot
/// ([`Self::snapshot_prefix`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMeta {
    nodes: BTreeMap<NodeId, NodeRecord>,
    /// Voters per shard the placement driver keeps on Active nodes; 0 while unseeded.
    replication_factor: u32,
    /// The cluster id of a cluster bootstrapped with `mimid init`; `None` for a statically
    /// configured one.
    cluster_id: Option<ClusterId>,
}

/// Where a node runs (module docs): ordered `key=value` tiers, most significant first, e.g.
/// `region=eu,zone=eu-1`. Written and parsed in that form ([`std::fmt::Display`],
/// [`std::str::FromStr`]); the empty string is the empty locality (a node that said nothing).
///
/// Keys are 1 to [`MAX_LOCALITY_KEY_LEN`] bytes of `a-z`, `0-9`, `-` and `_`, starting with a
/// letter; values 1 to [`MAX_LOCALITY_VALUE_LEN`] bytes of `a-z`, `A-Z`, `0-9`, `-`, `_` and
/// `.`; no key twice; at most [`MAX_LOCALITY_TIERS`] tiers. The tiers named `region` and `zone`
/// have a meaning of their own: data residency and the leader preference name regions
/// ([`Locality::region`]); placement compares whole tier prefixes, so a zone is told apart
/// within its region.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Locality {
    tiers: Vec<(String, String)>,
}

impl Locality {
    /// The locality of these tiers, most significant first, once checked (type docs).
    pub fn new(tiers: Vec<(String, String)>) -> Result<Self, String> {
        let locality = Locality { tiers };
        locality.check()?;
        Ok(locality)
    }

    /// The tiers, most significant first.
    pub fn tiers(&self) -> &[(String, String)] {
        &self.tiers
    }

    /// Whether the node said nothing about where it runs.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The value of tier `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.tiers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }

    /// The value of the `region` tier.
    pub fn region(&self) -> Option<&str> {
        self.get("region")
    }

    /// The value of the `zone` tier.
    pub fn zone(&self) -> Option<&str> {
        self.get("zone")
    }

    /// Whether the tiers keep the rules of the type docs (a locality read from a snapshot or
    /// a command was never checked by [`Locality::new`]).
    pub fn check(&self) -> Result<(), String> {
        if self.tiers.len() > MAX_LOCALITY_TIERS {
            return Err(format!(
                "a locality has at most {MAX_LOCALITY_TIERS} tiers, not {}",
                self.tiers.len()
            ));
        }
        for (at, (key, value)) in self.tiers.iter().enumerate() {
            check_locality_key(key)?;
            check_locality_value(key, value)?;
            if self.tiers[..at].iter().any(|(earlier, _)| earlier == key) {
                return Err(format!("locality key {key:?} appears twice"));
            }
        }
        Ok(())
    }
}

/// Checks a locality tier's key (the [`Locality`] docs).
fn check_locality_key(key: &str) -> Result<(), String> {
    let starts_with_letter = key.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let charset = key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if key.len() > MAX_LOCALITY_KEY_LEN || !starts_with_letter || !charset {
        return Err(format!(
            "locality key {key:?} must be 1 to {MAX_LOCALITY_KEY_LEN} characters of a-z, 0-9, \
             '-' and '_', starting with a letter"
        ));
    }
    Ok(())
}

/// Checks the value of locality tier `key` (the [`Locality`] docs); also the form of a region
/// named alone (data residency, the leader preference).
pub fn check_locality_value(key: &str, value: &str) -> Result<(), String> {
    let charset = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if value.is_empty() || value.len() > MAX_LOCALITY_VALUE_LEN || !charset {
        return Err(format!(
            "locality value {value:?} of {key:?} must be 1 to {MAX_LOCALITY_VALUE_LEN} \
             characters of a-z, A-Z, 0-9, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (at, (key, value)) in self.tiers.iter().enumerate() {
            if at > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Locality {
    type Err = String;

    /// Parses `key=value,key=value` (the [`std::fmt::Display`] form; blanks around the tiers
    /// are not allowed); the empty string is the empty locality.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Ok(Locality::default());
        }
        let tiers = text
            .split(',')
            .map(|tier| match tier.split_once('=') {
                Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
                None => Err(format!(
                    "locality tier {tier:?} is not key=value (e.g. region=eu,zone=eu-1)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Locality::new(tiers)
    }
}

/// The id of a cluster formed by `mimid init`: 128 random bits, drawn once by the node that
/// took the init (module docs). Written as 32 lowercase hex digits in groups of 8-4-4-4-12.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId([u8; 16]);

impl ClusterId {
    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ClusterId(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl std::str::FromStr for ClusterId {
    type Err = String;

    /// Parses the [`std::fmt::Display`] form (hex digits in either case; the dashes, where
    /// they are, are optional).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a cluster id (32 hex digits, 8-4-4-4-12)");
        let digits: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
        let grouped = text.len() == 36
            && [8, 13, 18, 23]
                .iter()
                .all(|&at| text.as_bytes()[at] == b'-');
        let hex = digits.iter().all(u8::is_ascii_hexdigit);
        if !hex || digits.len() != 32 || !(text.len() == 32 || grouped) {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        let nibble = |digit: u8| (digit as char).to_digit(16).unwrap_or(0) as u8;
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            *byte = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        Ok(ClusterId(bytes))
    }
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The UDP address of its node-to-node listener (`cluster.listen`), as other nodes dial
    /// it; `None` until the node or an operator tells (a node seeded from `cluster.voters`
    /// without an entry in the seeding node's `cluster.peers`).
    pub cluster_addr: Option<SocketAddr>,
    /// Where it is in its life.
    pub state: NodeState,
    /// Where it runs (empty until it or an operator tells).
    pub locality: Locality,
}

/// A registered node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds replicas and may be given more.
    Active,
    /// Being emptied: the placement driver moves its replicas to Active nodes.
    Decommissioning,
    /// Holds no replica any more and is never given one again; it can be stopped.
    Decommissioned,
}

/// A change of the registry, decided in apply (`Command::ClusterMeta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaChange {
    /// Seeds an empty registry with the nodes of a new cluster, all Active. A seeded registry
    /// ignores it (`Ok(false)`).
    Seed {
        nodes: Vec<(NodeId, Option<SocketAddr>)>,
        replication_factor: u32,
    },
    /// Registers a new node, Active (`mimid node add`).
    AddNode {
        id: NodeId,
        cluster_addr: SocketAddr,
    },
    /// A registered node tells where it listens now (it restarted on another address).
    SetAddress {
        id: NodeId,
        cluster_addr: SocketAddr,
    },
    /// Starts emptying an Active node (`mimid node decommission`).
    Decommission { id: NodeId },
    /// The placement driver found no replica left on a Decommissioning node.
    MarkDecommissioned { id: NodeId },
    /// Seeds an empty registry like [`MetaChange::Seed`] and records the cluster id (the node
    /// that took `mimid init` seeds its cluster's registry with it). On a registry with this
    /// cluster id it changes nothing (`Ok(false)`); a registry without one, or with another,
    /// refuses it ([`MetaRefusal::ClusterIdMismatch`]).
    Bootstrap {
        cluster_id: ClusterId,
        nodes: Vec<(NodeId, Option<SocketAddr>)>,
        replication_factor: u32,
    },
    /// A registered node tells where it runs (its configured `locality`). Appended after the
    /// older variants so logs written before localities existed decode unchanged.
    SetLocality { id: NodeId, locality: Locality },
    /// Registers a new node, Active, with its locality (`mimid node add --locality`, the
    /// registration of a node that joined with `cluster.join`).
    AddNodeWithLocality {
        id: NodeId,
        cluster_addr: SocketAddr,
        locality: Locality,
    },
}

/// Why a [`MetaChange`] was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaRefusal {
    /// The registry was never seeded (the cluster's first shard-0 leader does it).
    #[error("the node registry is not seeded yet (shard {METADATA_SHARD} has had no leader)")]
    NotSeeded,
    /// A seed without nodes, with a node id 0 or twice, or an out-of-range factor.
    #[error("invalid seed: {0}")]
    InvalidSeed(String),
    /// Node id 0 is not a node (Raft reserves it).
    #[error("node id 0 is reserved by Raft")]
    InvalidNode,
    /// Port 0, or an unspecified IP address (`0.0.0.0`, `::`), cannot be dialled.
    #[error("{0} cannot be dialled by other nodes")]
    UndiallableAddress(SocketAddr),
    /// `AddNode` of an id the registry has (in any state: ids are never reused).
    #[error("node {id} is already registered ({state:?})")]
    AlreadyRegistered { id: NodeId, state: NodeState },
    /// Another node that is not decommissioned has this address.
    #[error("node {other} is registered at {addr}")]
    AddressInUse { addr: SocketAddr, other: NodeId },
    /// The node is not registered.
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    /// The node is decommissioned: nothing about it changes any more.
    #[error("node {0} is decommissioned")]
    Decommissioned(NodeId),
    /// Decommissioning `node` would leave fewer Active nodes than the replication factor.
    #[error(
        "decommissioning node {node} would leave {active_others} active nodes, fewer than the \
         replication factor {replication_factor}; add a node first"
    )]
    TooFewNodes {
        node: NodeId,
        active_others: usize,
        replication_factor: u32,
    },
    /// `MarkDecommissioned` of a node that is not Decommissioning.
    #[error("node {0} is not being decommissioned")]
    NotDecommissioning(NodeId),
    /// The registry holds [`MAX_NODES`] nodes.
    #[error("the registry holds {MAX_NODES} nodes, its limit")]
    Full,
    /// A bootstrap seed for a registry that has another cluster id, or none (a statically
    /// configured cluster).
    #[error("the registry belongs to {}, not to cluster {offered}", describe(.registry))]
    ClusterIdMismatch {
        registry: Option<ClusterId>,
        offered: ClusterId,
    },
    /// A locality that breaks the [`Locality`] rules.
    #[error("invalid locality: {0}")]
    InvalidLocality(String),
}

fn describe(id: &Option<ClusterId>) -> String {
    match id {
        Some(id) => format!("cluster {id}"),
        None => "a cluster without a cluster id (statically configured)".to_owned(),
    }
}

impl ClusterMeta {
    /// Whether the registry was seeded.
    pub fn is_seeded(&self) -> bool {
        self.replication_factor > 0
    }

    /// Voters per shard the placement driver keeps on Active nodes (0 while unseeded).
    pub fn replication_factor(&self) -> u32 {
        self.replication_factor
    }

    /// Every registered node, by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeRecord> {
        &self.nodes
    }

    /// The record of node `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// The cluster id the registry was bootstrapped with (`None`: unseeded, or seeded by a
    /// statically configured cluster).
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.cluster_id
    }

    /// The Active nodes, ascending.
    pub fn active(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, record)| record.state == NodeState::Active)
            .map(|(id, _)| *id)
    }

    /// Applies `change` (module docs): `Ok(true)` when the registry changed, `Ok(false)` when
    /// it already said so, or why it was refused (the registry is then unchanged).
    pub fn apply(&mut self, change: MetaChange) -> Result<bool, MetaRefusal> {
        if let MetaChange::Seed {
            nodes,
            replication_factor,
        } = change
        {
            return self.seed(nodes, replication_factor);
        }
        if let MetaChange::Bootstrap {
            cluster_id,
            nodes,
            replication_factor,
        } = change
        {
            return self.bootstrap(cluster_id, nodes, replication_factor);
        }
        if !self.is_seeded() {
            return Err(MetaRefusal::NotSeeded);
        }
        match change {
            MetaChange::Seed { .. } | MetaChange::Bootstrap { .. } => {
                unreachable!("handled above")
            }
            MetaChange::AddNode { id, cluster_addr } => {
                self.add(id, cluster_addr, Locality::default())
            }
            MetaChange::AddNodeWithLocality {
                id,
                cluster_addr,
                locality,
            } => {
                locality.check().map_err(MetaRefusal::InvalidLocality)?;
                self.add(id, cluster_addr, locality)
            }
            MetaChange::SetLocality { id, locality } => self.set_locality(id, locality),
            MetaChange::SetAddress { id, cluster_addr } => self.set_address(id, cluster_addr),
            MetaChange::Decommission { id } => self.decommission(id),
            MetaChange::MarkDecommissioned { id } => self.mark_decommissioned(id),
        }
    }

    fn seed(
        &mut self,
        nodes: Vec<(NodeId, Option<SocketAddr>)>,
        replication_factor: u32,
    ) -> Result<bool, MetaRefusal> {
        if self.is_seeded() {
            return Ok(false);
        }
        let invalid = |reason: &str| Err(MetaRefusal::InvalidSeed(reason.to_owned()));
        if replication_factor == 0 || replication_factor > MAX_REPLICATION_FACTOR {
            return invalid("the replication factor must be 1 to 15");
        }
        if nodes.is_empty() || nodes.len() > MAX_NODES {
            return invalid("a cluster has 1 to 1024 nodes");
        }
        let mut records = BTreeMap::new();
        for (id, addr) in nodes {
            if id == 0 {
                return invalid("node id 0 is reserved by Raft");
            }
            if addr.is_some_and(|addr| !diallable(addr)) {
                return invalid("an address cannot be dialled");
            }
            let record = NodeRecord {
                cluster_addr: addr,
                state: NodeState::Active,
                locality: Locality::default(),
            };
            if records.insert(id, record).is_some() {
                return invalid("a node is listed twice");
            }
        }
        assert!(!records.is_empty());
        self.nodes = records;
        self.replication_factor = replication_factor;
        assert!(self.is_seeded());
        Ok(true)
    }

    fn bootstrap(
        &mut self,
        cluster_id: ClusterId,
        nodes: Vec<(NodeId, Option<SocketAddr>)>,
        replication_factor: u32,
    ) -> Result<bool, MetaRefusal> {
        if self.is_seeded() {
            return match self.cluster_id {
                Some(id) if id == cluster_id => Ok(false),
                registry => Err(MetaRefusal::ClusterIdMismatch {
                    registry,
                    offered: cluster_id,
                }),
            };
        }
        let seeded = self.seed(nodes, replication_factor)?;
        assert!(seeded, "an unseeded registry takes a valid seed");
        self.cluster_id = Some(cluster_id);
        Ok(true)
    }

    fn add(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        locality: Locality,
    ) -> Result<bool, MetaRefusal> {
        if id == 0 {
            return Err(MetaRefusal::InvalidNode);
        }
        if let Some(record) = self.nodes.get(&id) {
            return Err(MetaRefusal::AlreadyRegistered {
                id,
                state: record.state,
            });
        }
        self.check_address(id, addr)?;
        if self.nodes.len() >= MAX_NODES {
            return Err(MetaRefusal::Full);
        }
        let record = NodeRecord {
            cluster_addr: Some(addr),
            state: NodeState::Active,
            locality,
        };
        self.nodes.insert(id, record);
        Ok(true)
    }

    fn set_locality(&mut self, id: NodeId, locality: Locality) -> Result<bool, MetaRefusal> {
        locality.check().map_err(MetaRefusal::InvalidLocality)?;
        let record = self
            .nodes
            .get_mut(&id)
            .ok_or(MetaRefusal::UnknownNode(id))?;
        if record.state == NodeState::Decommissioned {
            return Err(MetaRefusal::Decommissioned(id));
        }
        if record.locality == locality {
            return Ok(false);
        }
        record.locality = locality;
        Ok(true)
    }

    fn set_address(&mut self, id: NodeId, addr: SocketAddr) -> Result<bool, MetaRefusal> {
        let record = self.nodes.get(&id).ok_or(MetaRefusal::UnknownNode(id))?;
        if record.state == NodeState::Decommissioned {
            return Err(MetaRefusal::Decommissioned(id));
        }
        if record.cluster_addr == Some(addr) {
            return Ok(false);
        }
        self.check_address(id, addr)?;
        let record = self.nodes.get_mut(&id).expect("looked up above");
        record.cluster_addr = Some(addr);
        Ok(true)
    }

    fn decommission(&mut self, id: NodeId) -> Result<bool, MetaRefusal> {
        let record = self.nodes.get(&id).ok_or(MetaRefusal::UnknownNode(id))?;
        match record.state {
            NodeState::Decommissioning => return Ok(false),
            NodeState::Decommissioned => return Err(MetaRefusal::Decommissioned(id)),
            NodeState::Active => {}
        }
        let active_others = self.active().filter(|&other| other != id).count();
        if active_others < self.replication_factor as usize {
            return Err(MetaRefusal::TooFewNodes {
                node: id,
                active_others,
                replication_factor: self.replication_factor,
            });
        }
        let record = self.nodes.get_mut(&id).expect("looked up above");
        record.state = NodeState::Decommissioning;
        assert!(self.active().count() >= self.replication_factor as usize);
        Ok(true)
    }

    fn mark_decommissioned(&mut self, id: NodeId) -> Result<bool, MetaRefusal> {
        let record = self
            .nodes
            .get_mut(&id)
            .ok_or(MetaRefusal::UnknownNode(id))?;
        match record.state {
            NodeState::Decommissioning => {
                record.state = NodeState::Decommissioned;
                Ok(true)
            }
            NodeState::Decommissioned => Ok(false),
            NodeState::Active => Err(MetaRefusal::NotDecommissioning(id)),
        }
    }

    /// `addr` must be diallable and not be another live node's.
    fn check_address(&self, id: NodeId, addr: SocketAddr) -> Result<(), MetaRefusal> {
        if !diallable(addr) {
            return Err(MetaRefusal::UndiallableAddress(addr));
        }
        let taken = self.nodes.iter().find(|(other, record)| {
            **other != id
                && record.state != NodeState::Decommissioned
                && record.cluster_addr == Some(addr)
        });
        match taken {
            Some((other, _)) => Err(MetaRefusal::AddressInUse {
                addr,
                other: *other,
            }),
            None => Ok(()),
        }
    }

    /// The registry's part of shard 0's snapshot: nothing while unseeded (so every other
    /// shard's snapshot is byte for byte what it was before the registry existed), otherwise a
    /// marker and the registry, ahead of the shard's own snapshot bytes:
    /// - a registry in which no node has a locality keeps the bytes it had before localities
    ///   existed (so an older node reads it): [`SNAPSHOT_MARKER`] and the registry, or
    ///   [`SNAPSHOT_MARKER_WITH_ID`], the registry and the cluster id's 16 bytes;
    /// - any other starts with [`SNAPSHOT_MARKER_WITH_LOCALITIES`], followed by the registry
    ///   with every node's locality and the cluster id in one postcard value.
    pub fn snapshot_prefix(&self) -> Vec<u8> {
        if !self.is_seeded() {
            return Vec::new();
        }
        if self
            .nodes
            .values()
            .any(|record| !record.locality.is_empty())
        {
            let wire = WireMeta {
                nodes: self.nodes.clone(),
                replication_factor: self.replication_factor,
                cluster_id: self.cluster_id,
            };
            let mut bytes = SNAPSHOT_MARKER_WITH_LOCALITIES.to_vec();
            bytes.extend(
                postcard::to_stdvec(&wire)
                    .expect("serialising the registry into memory cannot fail"),
            );
            return bytes;
        }
        let marker = match self.cluster_id {
            Some(_) => SNAPSHOT_MARKER_WITH_ID,
            None => SNAPSHOT_MARKER,
        };
        let legacy = LegacyMeta {
            nodes: self
                .nodes
                .iter()
                .map(|(&id, record)| {
                    let legacy = LegacyRecord {
                        cluster_addr: record.cluster_addr,
                        state: record.state,
                    };
                    (id, legacy)
                })
                .collect(),
            replication_factor: self.replication_factor,
        };
        let mut bytes = marker.to_vec();
        bytes.extend(
            postcard::to_stdvec(&legacy).expect("serialising the registry into memory cannot fail"),
        );
        if let Some(id) = self.cluster_id {
            bytes.extend_from_slice(id.as_bytes());
        }
        bytes
    }

    /// Splits a shard snapshot into the registry ([`Self::snapshot_prefix`]; empty when there
    /// is none) and the rest, the shard's own snapshot. Reads every form a release wrote.
    pub fn split_snapshot(snapshot: &[u8]) -> Result<(ClusterMeta, &[u8]), String> {
        let unreadable = |e: postcard::Error| format!("node registry in the shard snapshot: {e}");
        let (meta, rest) =
            if let Some(rest) = snapshot.strip_prefix(SNAPSHOT_MARKER_WITH_LOCALITIES.as_slice()) {
                let (wire, rest): (WireMeta, &[u8]) =
                    postcard::take_from_bytes(rest).map_err(unreadable)?;
                for (id, record) in &wire.nodes {
                    record.locality.check().map_err(|e| {
                        format!("node registry in the shard snapshot: node {id}: {e}")
                    })?;
                }
                let meta = ClusterMeta {
                    nodes: wire.nodes,
                    replication_factor: wire.replication_factor,
                    cluster_id: wire.cluster_id,
                };
                (meta, rest)
            } else {
                let (rest, with_id) = if let Some(rest) =
                    snapshot.strip_prefix(SNAPSHOT_MARKER.as_slice())
                {
                    (rest, false)
                } else if let Some(rest) = snapshot.strip_prefix(SNAPSHOT_MARKER_WITH_ID.as_slice())
                {
                    (rest, true)
                } else {
                    return Ok((ClusterMeta::default(), snapshot));
                };
                let (legacy, mut rest): (LegacyMeta, &[u8]) =
                    postcard::take_from_bytes(rest).map_err(unreadable)?;
                let mut cluster_id = None;
                if with_id {
                    let (id, after) = rest
                        .split_first_chunk::<16>()
                        .ok_or("node registry in the shard snapshot: truncated cluster id")?;
                    cluster_id = Some(ClusterId(*id));
                    rest = after;
                }
                let nodes = legacy
                    .nodes
                    .into_iter()
                    .map(|(id, record)| {
                        let record = NodeRecord {
                            cluster_addr: record.cluster_addr,
                            state: record.state,
                            locality: Locality::default(),
                        };
                        (id, record)
                    })
                    .collect();
                let meta = ClusterMeta {
                    nodes,
                    replication_factor: legacy.replication_factor,
                    cluster_id,
                };
                (meta, rest)
            };
        if !meta.is_seeded() {
            return Err("node registry in the shard snapshot is not seeded".into());
        }
        Ok((meta, rest))
    }
}

/// The registry in a snapshot that starts with [`SNAPSHOT_MARKER_WITH_LOCALITIES`].
#[derive(Serialize, Deserialize)]
struct WireMeta {
    nodes: BTreeMap<NodeId, NodeRecord>,
    replication_factor: u32,
    cluster_id: Option<ClusterId>,
}

/// The registry as releases before localities wrote it ([`SNAPSHOT_MARKER`],
/// [`SNAPSHOT_MARKER_WITH_ID`]); the cluster id, if any, follows it.
#[derive(Serialize, Deserialize)]
struct LegacyMeta {
    nodes: BTreeMap<NodeId, LegacyRecord>,
    replication_factor: u32,
}

/// A [`NodeRecord`] without its locality ([`LegacyMeta`]).
#[derive(Serialize, Deserialize)]
struct LegacyRecord {
    cluster_addr: Option<SocketAddr>,
    state: NodeState,
}

/// Marks a shard snapshot that starts with the node registry. Ten `0xff` bytes are not a
/// postcard varint (at most ten bytes, the last without its continuation bit), so no shard
/// snapshot without a registry, of this release or an older one, starts with them.
pub const SNAPSHOT_MARKER: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'm', b'e', b't', b'a', b'/', 1,
];

/// [`SNAPSHOT_MARKER`] of a registry with a cluster id (16 bytes after the registry).
pub const SNAPSHOT_MARKER_WITH_ID: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'm', b'e', b't', b'a', b'/', 2,
];

/// [`SNAPSHOT_MARKER`] of a registry in which a node has a locality: the registry, localities
/// and cluster id included, in one postcard value ([`ClusterMeta::snapshot_prefix`]).
pub const SNAPSHOT_MARKER_WITH_LOCALITIES: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'm', b'e', b't', b'a', b'/', 3,
];

/// Whether other nodes can dial `addr`.
fn diallable(addr: SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn seeded(ids: &[NodeId], replication_factor: u32) -> ClusterMeta {
        let mut meta = ClusterMeta::default();
        let nodes = ids.iter().map(|&id| (id, Some(addr(7000 + id as u16))));
        let seed = MetaChange::Seed {
            nodes: nodes.collect(),
            replication_factor,
        };
        assert_eq!(meta.apply(seed), Ok(true));
        meta
    }

    /// Applies `change` to a copy of `meta` and checks the rule every refusal keeps: the
    /// registry is unchanged. Returns the outcome and the registry after it.
    fn check(meta: &ClusterMeta, change: MetaChange) -> (Result<bool, MetaRefusal>, ClusterMeta) {
        let mut after = meta.clone();
        let outcome = after.apply(change.clone());
        match &outcome {
            Err(_) | Ok(false) => assert_eq!(&after, meta, "{change:?} left a trace"),
            Ok(true) => assert_ne!(&after, meta, "{change:?} changed nothing"),
        }
        (outcome, after)
    }

    #[test]
    fn an_unseeded_registry_refuses_everything_but_a_seed() {
        let empty = ClusterMeta::default();
        for change in [
            MetaChange::AddNode {
                id: 4,
                cluster_addr: addr(7004),
            },
            MetaChange::SetAddress {
                id: 1,
                cluster_addr: addr(7001),
            },
            MetaChange::Decommission { id: 1 },
            MetaChange::MarkDecommissioned { id: 1 },
        ] {
            assert_eq!(check(&empty, change).0, Err(MetaRefusal::NotSeeded));
        }
        assert!(empty.snapshot_prefix().is_empty());
    }

    #[test]
    fn a_seed_is_validated_and_taken_once() {
        let empty = ClusterMeta::default();
        let bad = [
            (vec![], 3),
            (vec![(1, None)], 0),
            (vec![(1, None)], 16),
            (vec![(0, None)], 3),
            (vec![(1, None), (1, None)], 3),
            (vec![(1, Some(SocketAddr::from(([0, 0, 0, 0], 7000))))], 3),
        ];
        for (nodes, replication_factor) in bad {
            let seed = MetaChange::Seed {
                nodes,
                replication_factor,
            };
            assert!(matches!(
                check(&empty, seed).0,
                Err(MetaRefusal::InvalidSeed(_))
            ));
        }
        let meta = seeded(&[1, 2, 3], 3);
        assert_eq!(meta.active().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(meta.replication_factor(), 3);
        let again = MetaChange::Seed {
            nodes: vec![(9, None)],
            replication_factor: 1,
        };
        assert_eq!(check(&meta, again).0, Ok(false));
    }

    #[test]
    fn nodes_are_added_once_at_an_address_of_their_own() {
        let meta = seeded(&[1, 2, 3], 3);
        let add = |id, port| MetaChange::AddNode {
            id,
            cluster_addr: addr(port),
        };
        let (outcome, meta) = check(&meta, add(4, 7004));
        assert_eq!(outcome, Ok(true));
        assert_eq!(
            meta.node(4),
            Some(&NodeRecord {
                cluster_addr: Some(addr(7004)),
                state: NodeState::Active,
                locality: Locality::default(),
            })
        );
        let refusals = [
            (add(4, 7009), "already registered"),
            (add(5, 7001), "registered at"),
            (add(0, 7009), "reserved"),
            (add(5, 0), "cannot be dialled"),
        ];
        for (change, reason) in refusals {
            let refusal = check(&meta, change).0.expect_err("refused");
            assert!(refusal.to_string().contains(reason), "{refusal}");
        }
    }

    #[test]
    fn a_node_moves_its_address_but_not_onto_another_nodes() {
        let meta = seeded(&[1, 2], 1);
        let set = |id, port| MetaChange::SetAddress {
            id,
            cluster_addr: addr(port),
        };
        assert_eq!(check(&meta, set(1, 7001)).0, Ok(false));
        let (outcome, moved) = check(&meta, set(1, 7101));
        assert_eq!(outcome, Ok(true));
        assert_eq!(moved.node(1).unwrap().cluster_addr, Some(addr(7101)));
        assert_eq!(
            check(&meta, set(1, 7002)).0,
            Err(MetaRefusal::AddressInUse {
                addr: addr(7002),
                other: 2
            })
        );
        assert_eq!(
            check(&meta, set(9, 7009)).0,
            Err(MetaRefusal::UnknownNode(9))
        );
    }

    /// Issue 4: decommissioning is refused when the rest cannot hold the replication factor,
    /// and the decision is the apply's, so two decommissions cannot both pass.
    #[test]
    fn decommission_is_refused_when_the_rest_cannot_hold_the_replication_factor() {
        let three = seeded(&[1, 2, 3], 3);
        assert_eq!(
            check(&three, MetaChange::Decommission { id: 1 }).0,
            Err(MetaRefusal::TooFewNodes {
                node: 1,
                active_others: 2,
                replication_factor: 3
            })
        );
        let four = seeded(&[1, 2, 3, 4], 3);
        let (outcome, one_leaving) = check(&four, MetaChange::Decommission { id: 1 });
        assert_eq!(outcome, Ok(true));
        assert_eq!(
            one_leaving.node(1).unwrap().state,
            NodeState::Decommissioning
        );
        assert_eq!(
            check(&one_leaving, MetaChange::Decommission { id: 1 }).0,
            Ok(false)
        );
        // The second one would leave two Active nodes.
        assert!(matches!(
            check(&one_leaving, MetaChange::Decommission { id: 2 }).0,
            Err(MetaRefusal::TooFewNodes {
                active_others: 2,
                ..
            })
        ));
        assert_eq!(
            check(&one_leaving, MetaChange::MarkDecommissioned { id: 2 }).0,
            Err(MetaRefusal::NotDecommissioning(2))
        );
        let (outcome, gone) = check(&one_leaving, MetaChange::MarkDecommissioned { id: 1 });
        assert_eq!(outcome, Ok(true));
        assert_eq!(gone.node(1).unwrap().state, NodeState::Decommissioned);
        assert_eq!(
            check(&gone, MetaChange::MarkDecommissioned { id: 1 }).0,
            Ok(false)
        );
        for change in [
            MetaChange::Decommission { id: 1 },
            MetaChange::SetAddress {
                id: 1,
                cluster_addr: addr(7301),
            },
        ] {
            assert_eq!(check(&gone, change).0, Err(MetaRefusal::Decommissioned(1)));
        }
        // A decommissioned node's id is never reused, its address may be.
        assert!(matches!(
            check(
                &gone,
                MetaChange::AddNode {
                    id: 1,
                    cluster_addr: addr(7301)
                }
            )
            .0,
            Err(MetaRefusal::AlreadyRegistered { id: 1, .. })
        ));
        assert_eq!(
            check(
                &gone,
                MetaChange::AddNode {
                    id: 5,
                    cluster_addr: addr(7001)
                }
            )
            .0,
            Ok(true)
        );
    }

    #[test]
    fn the_snapshot_prefix_round_trips_and_is_absent_without_a_registry() {
        let meta = seeded(&[1, 2, 3], 3);
        let mut snapshot = meta.snapshot_prefix();
        assert!(snapshot.starts_with(&SNAPSHOT_MARKER));
        snapshot.extend_from_slice(b"shard");
        let (restored, rest) = ClusterMeta::split_snapshot(&snapshot).expect("splits");
        assert_eq!(restored, meta);
        assert_eq!(rest, b"shard");
        let (none, rest) = ClusterMeta::split_snapshot(b"\x00shard").expect("splits");
        assert_eq!(none, ClusterMeta::default());
        assert_eq!(rest, b"\x00shard");
        let mut truncated = SNAPSHOT_MARKER.to_vec();
        truncated.push(0x80);
        assert!(ClusterMeta::split_snapshot(&truncated).is_err());
    }

    #[test]
    fn cluster_ids_print_as_grouped_hex_and_parse_back() {
        let id = ClusterId::from_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x66, 0x77,
        ]);
        let text = id.to_string();
        assert_eq!(text, "01234567-89ab-cdef-0011-223344556677");
        assert_eq!(text.parse::<ClusterId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<ClusterId>(), Ok(id));
        assert_eq!(text.replace('-', "").parse::<ClusterId>(), Ok(id));
        for bad in [
            "",
            "01234567-89ab-cdef-0011-2233445566",
            "01234567-89ab-cdef-0011-22334455667788",
            "0123456789ab-cdef-0011-2233-44556677",
            "01234567-89ab-cdef-0011-22334455667g",
            "+1234567-89ab-cdef-0011-223344556677",
        ] {
            assert!(bad.parse::<ClusterId>().is_err(), "{bad:?}");
        }
    }

    /// Issue 4 bootstrap (`mimid init`): the seed records the cluster id, once; no later seed
    /// replaces it, and a statically seeded registry takes none.
    #[test]
    fn a_bootstrap_seed_records_the_cluster_id_once() {
        let a = ClusterId::from_bytes([0xaa; 16]);
        let b = ClusterId::from_bytes([0xbb; 16]);
        let bootstrap = |cluster_id, replication_factor| MetaChange::Bootstrap {
            cluster_id,
            nodes: vec![(1, Some(addr(7001)))],
            replication_factor,
        };
        let empty = ClusterMeta::default();
        assert_eq!(empty.cluster_id(), None);
        // An invalid seed is refused like a plain one, and records no id.
        assert!(matches!(
            check(&empty, bootstrap(a, 0)).0,
            Err(MetaRefusal::InvalidSeed(_))
        ));
        let (outcome, meta) = check(&empty, bootstrap(a, 3));
        assert_eq!(outcome, Ok(true));
        assert_eq!(meta.cluster_id(), Some(a));
        assert_eq!(meta.active().collect::<Vec<_>>(), [1]);
        assert_eq!(check(&meta, bootstrap(a, 3)).0, Ok(false));
        assert_eq!(
            check(&meta, bootstrap(b, 3)).0,
            Err(MetaRefusal::ClusterIdMismatch {
                registry: Some(a),
                offered: b
            })
        );
        // A plain seed does not touch it either, and the registry works as before.
        let seed = MetaChange::Seed {
            nodes: vec![(9, None)],
            replication_factor: 1,
        };
        assert_eq!(check(&meta, seed).0, Ok(false));
        let (outcome, grown) = check(
            &meta,
            MetaChange::AddNode {
                id: 2,
                cluster_addr: addr(7002),
            },
        );
        assert_eq!(outcome, Ok(true));
        assert_eq!(grown.cluster_id(), Some(a));
        let refusal = check(&seeded(&[1, 2], 3), bootstrap(a, 3)).0.unwrap_err();
        assert_eq!(
            refusal,
            MetaRefusal::ClusterIdMismatch {
                registry: None,
                offered: a
            }
        );
        assert!(refusal.to_string().contains("statically"), "{refusal}");
    }

    #[test]
    fn the_cluster_id_rides_behind_the_registry_in_the_snapshot() {
        let id = ClusterId::from_bytes([7; 16]);
        let mut meta = ClusterMeta::default();
        let seed = MetaChange::Bootstrap {
            cluster_id: id,
            nodes: vec![(1, Some(addr(7001))), (2, None)],
            replication_factor: 3,
        };
        assert_eq!(meta.apply(seed), Ok(true));
        let prefix = meta.snapshot_prefix();
        assert!(prefix.starts_with(&SNAPSHOT_MARKER_WITH_ID));
        assert!(prefix.ends_with(id.as_bytes()));
        // The registry's own bytes are those of a registry without an id.
        let mut without = meta.clone();
        without.cluster_id = None;
        assert_eq!(
            &prefix[16..prefix.len() - 16],
            &without.snapshot_prefix()[16..]
        );
        let mut snapshot = prefix.clone();
        snapshot.extend_from_slice(b"shard");
        let (restored, rest) = ClusterMeta::split_snapshot(&snapshot).expect("splits");
        assert_eq!(restored, meta);
        assert_eq!(restored.cluster_id(), Some(id));
        assert_eq!(rest, b"shard");
        let truncated = &prefix[..prefix.len() - 1];
        assert!(ClusterMeta::split_snapshot(truncated).is_err());
    }

    /// Through the shard state machine: the registry is shard 0's alone, and it survives
    /// shard 0's snapshot byte for byte; other shards' snapshots carry nothing of it.
    #[test]
    fn the_registry_lives_in_shard_0_and_survives_its_snapshot() {
        use mimid_cluster::StateMachine;

        use crate::command::{Command, Stamped};
        use crate::shard::{ApplyOutput, Shards};

        let shards = Shards::new(2);
        let (mut zero, mut one) = (shards.machine(0), shards.machine(1));
        let seed = Stamped {
            ts_ms: 1,
            command: Command::ClusterMeta(MetaChange::Seed {
                nodes: vec![(1, Some(addr(7001))), (2, None)],
                replication_factor: 3,
            }),
        }
        .encode();
        let one_before = one.snapshot();
        assert!(matches!(one.apply(1, &seed), ApplyOutput::Rejected(_)));
        assert_eq!(one.snapshot(), one_before, "a refusal leaves no trace");
        assert!(!one_before.starts_with(&SNAPSHOT_MARKER));
        assert!(matches!(
            zero.apply(1, &seed),
            ApplyOutput::ClusterMeta(Ok(true))
        ));
        assert!(shards.get(0).read().cluster_meta().is_seeded());

        let snapshot = zero.snapshot();
        let elsewhere = Shards::new(2);
        let mut restored = elsewhere.machine(0);
        restored.restore(&snapshot).expect("restores");
        assert_eq!(
            elsewhere.get(0).read().cluster_meta(),
            shards.get(0).read().cluster_meta()
        );
        assert_eq!(restored.snapshot(), snapshot);
    }

    fn locality(text: &str) -> Locality {
        text.parse().expect("a valid locality")
    }

    /// Issue 9: `--locality region=eu,zone=eu-1` keeps its order and prints as it was given;
    /// broken ones are refused with the rule they break.
    #[test]
    fn localities_parse_in_order_and_refuse_what_breaks_the_rules() {
        let eu = locality("region=eu,zone=eu-1");
        assert_eq!(
            eu.tiers(),
            [
                ("region".to_owned(), "eu".to_owned()),
                ("zone".to_owned(), "eu-1".to_owned())
            ]
        );
        assert_eq!((eu.region(), eu.zone()), (Some("eu"), Some("eu-1")));
        assert_eq!(eu.to_string(), "region=eu,zone=eu-1");
        assert_eq!(locality("zone=b,region=a").to_string(), "zone=b,region=a");
        assert_eq!(locality(""), Locality::default());
        assert!(locality("").is_empty());
        assert_eq!(locality("cloud=aws").region(), None);
        let nine = (0..9)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let long_key = format!("{}=v", "k".repeat(MAX_LOCALITY_KEY_LEN + 1));
        let long_value = format!("k={}", "v".repeat(MAX_LOCALITY_VALUE_LEN + 1));
        for (bad, reason) in [
            ("region", "not key=value"),
            ("region=eu,", "not key=value"),
            (",region=eu", "not key=value"),
            ("region=eu,region=us", "twice"),
            ("Region=eu", "locality key"),
            ("1region=eu", "locality key"),
            ("=eu", "locality key"),
            ("re gion=eu", "locality key"),
            ("region=", "locality value"),
            ("region=e u", "locality value"),
            ("region=eu=1", "locality value"),
            ("region=\u{e9}u", "locality value"),
            (nine.as_str(), "at most 8 tiers"),
            (long_key.as_str(), "locality key"),
            (long_value.as_str(), "locality value"),
        ] {
            let refusal = bad.parse::<Locality>().expect_err(bad);
            assert!(refusal.contains(reason), "{bad:?}: {refusal}");
        }
    }

    /// Issue 9: a node's locality is recorded with it or set afterwards, validated in apply;
    /// setting the same one again changes nothing, and a decommissioned node's stays.
    #[test]
    fn localities_are_recorded_and_changed_in_apply() {
        let meta = seeded(&[1, 2, 3], 3);
        assert!(meta.nodes().values().all(|r| r.locality.is_empty()));
        let set = |id, text: &str| MetaChange::SetLocality {
            id,
            locality: locality(text),
        };
        let (outcome, meta) = check(&meta, set(1, "region=eu,zone=eu-1"));
        assert_eq!(outcome, Ok(true));
        assert_eq!(
            meta.node(1).unwrap().locality,
            locality("region=eu,zone=eu-1")
        );
        assert_eq!(check(&meta, set(1, "region=eu,zone=eu-1")).0, Ok(false));
        assert_eq!(
            check(&meta, set(9, "region=eu")).0,
            Err(MetaRefusal::UnknownNode(9))
        );
        let unchecked = Locality {
            tiers: vec![("Region".into(), "eu".into())],
        };
        for change in [
            MetaChange::SetLocality {
                id: 2,
                locality: unchecked.clone(),
            },
            MetaChange::AddNodeWithLocality {
                id: 4,
                cluster_addr: addr(7004),
                locality: unchecked,
            },
        ] {
            assert!(matches!(
                check(&meta, change).0,
                Err(MetaRefusal::InvalidLocality(_))
            ));
        }
        let (outcome, meta) = check(
            &meta,
            MetaChange::AddNodeWithLocality {
                id: 4,
                cluster_addr: addr(7004),
                locality: locality("region=us,zone=us-1"),
            },
        );
        assert_eq!(outcome, Ok(true));
        let four = meta.node(4).unwrap();
        assert_eq!(four.state, NodeState::Active);
        assert_eq!(four.locality, locality("region=us,zone=us-1"));
        assert!(matches!(
            check(
                &meta,
                MetaChange::AddNodeWithLocality {
                    id: 4,
                    cluster_addr: addr(7009),
                    locality: Locality::default(),
                }
            )
            .0,
            Err(MetaRefusal::AlreadyRegistered { id: 4, .. })
        ));
        let (_, leaving) = check(&meta, MetaChange::Decommission { id: 4 });
        let (_, gone) = check(&leaving, MetaChange::MarkDecommissioned { id: 4 });
        assert_eq!(
            check(&gone, set(4, "region=eu")).0,
            Err(MetaRefusal::Decommissioned(4))
        );
    }

    /// Issue 9: a registry with localities travels in shard 0's snapshot behind a marker of its
    /// own (cluster id included); one without keeps the bytes older releases wrote, and those
    /// bytes still decode.
    #[test]
    fn localities_ride_in_the_snapshot_and_older_snapshots_still_decode() {
        // Written by the release before localities: node 1 at 10.0.0.1:7001, Active, R = 3.
        let mut older = SNAPSHOT_MARKER.to_vec();
        older.extend_from_slice(&[1, 1, 1, 0, 10, 0, 0, 1, 0xd9, 0x36, 0, 3]);
        older.extend_from_slice(b"shard");
        let (meta, rest) = ClusterMeta::split_snapshot(&older).expect("an older snapshot");
        assert_eq!(rest, b"shard");
        assert_eq!(meta, seeded(&[1], 3));
        assert_eq!(meta.snapshot_prefix(), older[..older.len() - 5]);

        let id = ClusterId::from_bytes([9; 16]);
        let mut meta = ClusterMeta::default();
        let seed = MetaChange::Bootstrap {
            cluster_id: id,
            nodes: vec![(1, Some(addr(7001))), (2, None)],
            replication_factor: 3,
        };
        assert_eq!(meta.apply(seed), Ok(true));
        assert!(meta.snapshot_prefix().starts_with(&SNAPSHOT_MARKER_WITH_ID));
        let located = MetaChange::SetLocality {
            id: 2,
            locality: locality("region=eu,zone=eu-2"),
        };
        assert_eq!(meta.apply(located), Ok(true));
        let mut snapshot = meta.snapshot_prefix();
        assert!(snapshot.starts_with(&SNAPSHOT_MARKER_WITH_LOCALITIES));
        snapshot.extend_from_slice(b"shard");
        let (restored, rest) = ClusterMeta::split_snapshot(&snapshot).expect("splits");
        assert_eq!(restored, meta);
        assert_eq!(restored.cluster_id(), Some(id));
        assert_eq!(rest, b"shard");
        let truncated = &snapshot[..SNAPSHOT_MARKER_WITH_LOCALITIES.len() + 3];
        assert!(ClusterMeta::split_snapshot(truncated).is_err());
    }
}
