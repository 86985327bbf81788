//! The in-memory multi-node harness shared by the cluster's integration tests: real clusters
//! (sled in a temp dir each) in one process, connected by an in-memory [`Transport`] that hands
//! every frame to the destination's `ClusterHandle::receive`, with switches to cut a node off
//! (partition), to make it deaf (its frames go out, none come in), to lose a snapshot on the
//! way, and to stop and restart a node from its data
//! dir. Nodes 1-3 are the first voters (or those given to
//! `TestCluster::start_nodes`); more can join a running cluster.
//!
//! Ticks are 10 ms and elections take 200-400 ms, so every fault resolves well within a second
//! or two. Nothing sleeps to synchronise: conditions are polled with a deadline
//! (`wait_until`), and proposals are awaited on their `done` channels. Shards hibernate after
//! the default `hibernate_after_ticks` (300 ms of quiet); the network counts what it is handed
//! ([`Net::frames`], [`Net::messages`]). Isolating a node reports nothing to anyone: a test
//! that wants the transport's peer-down signal calls `report_unreachable` itself.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

pub mod delay;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;

use mimid_cluster::{
    Cluster, ClusterConfig, ClusterHandle, NodeId, ProposeError, ReceiveError, ShardId,
    ShardStatus, StateMachine, Transport,
};

/// Guard against hangs; never reached when the code under test works. Generous: waits poll,
/// so it costs nothing when all is well, and a loaded machine slows elections, snapshot
/// transfers and fsyncs many times over.
pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const SHARDS: u64 = 4;
pub const NODES: [NodeId; 3] = [1, 2, 3];

/// The commands a replica applied, in order; shared with the test, replaced on restore.
pub type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// Records every applied command; the output is the command's 1-based position in the log, so
/// a test can check an acknowledged command sits at that position on every replica.
pub struct Recorder {
    pub log: Log,
}

impl StateMachine for Recorder {
    type Output = usize;

    fn apply(&mut self, _index: u64, command: &[u8]) -> usize {
        let mut log = self.log.lock().expect("log lock");
        log.push(command.to_vec());
        log.len()
    }

    fn snapshot(&self) -> Vec<u8> {
        let log = self.log.lock().expect("log lock");
        let mut out = Vec::new();
        for command in log.iter() {
            out.extend_from_slice(&(command.len() as u32).to_be_bytes());
            out.extend_from_slice(command);
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut commands = Vec::new();
        let mut rest = snapshot;
        while !rest.is_empty() {
            let len: [u8; 4] = rest
                .get(..4)
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or("truncated length")?;
            let len = u32::from_be_bytes(len) as usize;
            let command = rest.get(4..4 + len).ok_or("truncated command")?;
            commands.push(command.to_vec());
            rest = &rest[4 + len..];
        }
        *self.log.lock().expect("log lock") = commands;
        Ok(())
    }
}

/// Entries (their data) delivered in `MsgAppend`s, by destination.
pub type Appends = BTreeMap<NodeId, BTreeSet<Vec<u8>>>;

/// The in-memory network: who is reachable, and the frames in transit (none: delivery is a
/// direct call of the destination's `receive`, which only queues).
#[derive(Default)]
pub struct Net {
    pub handles: Mutex<BTreeMap<NodeId, ClusterHandle<Recorder>>>,
    /// Nodes cut off from everyone: frames from or to them are dropped.
    pub isolated: Mutex<BTreeSet<NodeId>>,
    /// The first frame sent on each link `(from, to)`, for the misaddressed-frame test.
    pub captured: Mutex<BTreeMap<(NodeId, NodeId), Vec<u8>>>,
    /// Why a destination refused a frame a node sent: must stay empty.
    pub refused: Mutex<Vec<String>>,
    /// Drop the next frame to this node that carries a `MsgSnapshot`.
    pub lose_snapshot_to: Mutex<Option<NodeId>>,
    /// Nodes that hear nothing: frames to them are dropped, theirs still go out.
    pub deaf: Mutex<BTreeSet<NodeId>>,
    /// The entries (their data) of the `MsgAppend`s delivered from this node, by destination:
    /// recorded only for the node named here.
    pub appends_from: Mutex<Option<(NodeId, Appends)>>,
    /// Frames every node handed to its transport, delivered or not.
    pub frames: AtomicU64,
    /// Raft messages in those frames.
    pub messages: AtomicU64,
}

impl Net {
    /// (frames, messages) handed to the transports so far.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
        )
    }
}

pub struct NetTransport {
    from: NodeId,
    net: Arc<Net>,
}

impl Transport for NetTransport {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        let net = &self.net;
        net.frames.fetch_add(1, Ordering::Relaxed);
        net.messages
            .fetch_add(u64::from(message_count(&frame)), Ordering::Relaxed);
        net.captured
            .lock()
            .expect("capture lock")
            .entry((self.from, to))
            .or_insert_with(|| frame.clone());
        {
            let isolated = net.isolated.lock().expect("isolated lock");
            if isolated.contains(&self.from) || isolated.contains(&to) {
                return;
            }
        }
        if net.deaf.lock().expect("deaf lock").contains(&to) {
            return;
        }
        if let Some((from, delivered)) = net.appends_from.lock().expect("appends lock").as_mut() {
            if *from == self.from {
                delivered
                    .entry(to)
                    .or_default()
                    .extend(appended_entries(&frame));
            }
        }
        {
            let mut lose = net.lose_snapshot_to.lock().expect("lose lock");
            if *lose == Some(to) && carries_snapshot(&frame) {
                *lose = None;
                return;
            }
        }
        let handle = net.handles.lock().expect("handles lock").get(&to).cloned();
        if let Some(handle) = handle {
            // A full inbox or a stopping node drops the frame, like a real network.
            match handle.receive(&frame) {
                Ok(()) | Err(ReceiveError::Busy | ReceiveError::Stopped) => {}
                // Recorded rather than panicking: the driver would contain the panic.
                Err(ReceiveError::Malformed(reason)) => {
                    net.refused.lock().expect("refused lock").push(reason)
                }
            }
        }
    }
}

pub struct TestNode {
    dir: tempfile::TempDir,
    cluster: Option<Cluster<Recorder>>,
    logs: Vec<Log>,
    /// Started with `join_existing`: added to a running cluster, not one of its first voters.
    joins: bool,
}

pub struct TestCluster {
    pub net: Arc<Net>,
    nodes: BTreeMap<NodeId, TestNode>,
    tweak: fn(&mut ClusterConfig),
    /// Shards of every node: [`SHARDS`] unless `tweak` sets another count.
    shards: u64,
    /// The first voters of every shard: [`NODES`] unless started with [`Self::start_nodes`].
    voters: Vec<NodeId>,
    /// Wraps each node's transport when it starts (e.g. in a `delay::DelayTransport`).
    wrap: Option<Wrap>,
}

/// Wraps node `id`'s in-memory transport in another [`Transport`] (delays, say).
pub type Wrap = Arc<dyn Fn(NodeId, Box<dyn Transport>) -> Box<dyn Transport> + Send + Sync>;

pub type Answer = Result<usize, ProposeError>;

impl TestCluster {
    /// Starts nodes 1, 2 and 3 of a new cluster; `tweak` adjusts every node's configuration.
    pub fn start(tweak: fn(&mut ClusterConfig)) -> Self {
        Self::start_nodes(&NODES, tweak)
    }

    /// Starts a new cluster whose first voters are `voters` (one node alone, say).
    pub fn start_nodes(voters: &[NodeId], tweak: fn(&mut ClusterConfig)) -> Self {
        Self::start_wrapped(voters, tweak, None)
    }

    /// Like [`Self::start_nodes`], with every node's transport (also after a restart, and of
    /// nodes started later) wrapped by `wrap`.
    pub fn start_wrapped(
        voters: &[NodeId],
        tweak: fn(&mut ClusterConfig),
        wrap: Option<Wrap>,
    ) -> Self {
        let mut probe = ClusterConfig::new(1, "/unused");
        probe.shards = SHARDS;
        tweak(&mut probe);
        let mut cluster = TestCluster {
            net: Arc::new(Net::default()),
            nodes: BTreeMap::new(),
            tweak,
            shards: probe.shards,
            voters: voters.to_vec(),
            wrap,
        };
        for &id in voters {
            cluster
                .nodes
                .insert(id, TestNode::new(false, cluster.shards));
            cluster.start_node(id);
        }
        cluster
    }

    /// Starts node `id` with a fresh data dir and `join_existing`: its groups stay empty until
    /// a leader adds it and sends it a snapshot.
    pub fn start_joining_node(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        self.nodes.insert(id, TestNode::new(true, self.shards));
        self.start_node(id);
    }

    pub fn config(&self, id: NodeId, dir: &Path) -> ClusterConfig {
        let mut config = ClusterConfig::new(id, dir);
        config.shards = SHARDS;
        config.voters = self.voters.clone();
        config.join_existing = self.nodes[&id].joins;
        config.tick_interval = Duration::from_millis(10);
        config.election_tick = 20;
        config.heartbeat_tick = 2;
        (self.tweak)(&mut config);
        config
    }

    /// Starts (or restarts, from its data dir) node `id`.
    pub fn start_node(&mut self, id: NodeId) {
        let config = self.config(id, self.nodes[&id].dir.path());
        let node = self.nodes.get_mut(&id).expect("node exists");
        assert!(node.cluster.is_none(), "node {id} is running");
        let logs = node.logs.clone();
        let factory = move |shard: ShardId| {
            let log = Arc::clone(&logs[shard as usize]);
            // A fresh state machine: the snapshot and the log rebuild it.
            log.lock().expect("log lock").clear();
            Recorder { log }
        };
        let mut transport: Box<dyn Transport> = Box::new(NetTransport {
            from: id,
            net: Arc::clone(&self.net),
        });
        if let Some(wrap) = &self.wrap {
            transport = wrap(id, transport);
        }
        let cluster =
            Cluster::start_with_transport(config, factory, transport).expect("cluster starts");
        self.net
            .handles
            .lock()
            .expect("handles lock")
            .insert(id, cluster.handle());
        node.cluster = Some(cluster);
    }

    /// Shuts node `id` down; the network no longer reaches it.
    pub fn stop_node(&mut self, id: NodeId) {
        self.net.handles.lock().expect("handles lock").remove(&id);
        let cluster = self.nodes.get_mut(&id).expect("node exists").cluster.take();
        cluster.expect("node is running").shutdown();
    }

    pub fn isolate(&self, id: NodeId) {
        self.net.isolated.lock().expect("isolated lock").insert(id);
    }

    /// Ends every isolation and deafness.
    pub fn heal(&self) {
        self.net.isolated.lock().expect("isolated lock").clear();
        self.net.deaf.lock().expect("deaf lock").clear();
    }

    /// Drops every frame to node `id` from now on (its own frames still go out), until
    /// [`Self::heal`].
    pub fn deafen(&self, id: NodeId) {
        self.net.deaf.lock().expect("deaf lock").insert(id);
    }

    /// Starts recording the entries node `id` delivers in `MsgAppend`s ([`Self::appended`]).
    pub fn record_appends_from(&self, id: NodeId) {
        *self.net.appends_from.lock().expect("appends lock") = Some((id, BTreeMap::new()));
    }

    /// The entries (data) delivered in `MsgAppend`s from the recorded node to `to`.
    pub fn appended(&self, to: NodeId) -> BTreeSet<Vec<u8>> {
        self.net
            .appends_from
            .lock()
            .expect("appends lock")
            .as_ref()
            .and_then(|(_, delivered)| delivered.get(&to).cloned())
            .unwrap_or_default()
    }

    /// Node `id`'s data dir (`raft/` holds its Raft database and snapshot files).
    pub fn data_dir(&self, id: NodeId) -> &Path {
        self.nodes[&id].dir.path()
    }

    /// The number of shards.
    pub fn shards(&self) -> u64 {
        self.shards
    }

    /// Every running node's status of every shard, by node.
    pub fn statuses(&self) -> BTreeMap<NodeId, Vec<ShardStatus>> {
        self.running()
            .map(|id| (id, self.handle(id).status()))
            .collect()
    }

    /// The ids of the running nodes.
    pub fn running(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, node)| node.cluster.is_some())
            .map(|(id, _)| *id)
    }

    pub fn handle(&self, id: NodeId) -> ClusterHandle<Recorder> {
        self.nodes[&id]
            .cluster
            .as_ref()
            .expect("node is running")
            .handle()
    }

    pub fn log(&self, id: NodeId, shard: ShardId) -> Vec<Vec<u8>> {
        self.nodes[&id].logs[shard as usize]
            .lock()
            .expect("log lock")
            .clone()
    }

    /// Waits until every node of `among` names the same leader for every shard, that leader is
    /// one of them and believes it leads; returns the leaders by shard.
    pub fn wait_for_leaders(&self, among: &[NodeId]) -> Vec<NodeId> {
        let handles: BTreeMap<NodeId, _> = among.iter().map(|&id| (id, self.handle(id))).collect();
        let mut leaders = Vec::new();
        wait_until("every shard to have an agreed leader", || {
            leaders.clear();
            for shard in 0..self.shards {
                let named: BTreeSet<Option<NodeId>> = handles
                    .values()
                    .map(|handle| handle.leader(shard))
                    .collect();
                let [Some(leader)] = named.into_iter().collect::<Vec<_>>()[..] else {
                    return false;
                };
                if !handles.contains_key(&leader) {
                    return false;
                }
                leaders.push(leader);
            }
            true
        });
        leaders
    }

    /// The node leading the most shards (ties: the lowest id).
    pub fn busiest_leader(leaders: &[NodeId]) -> NodeId {
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for &leader in leaders {
            *counts.entry(leader).or_default() += 1;
        }
        let most = counts.values().copied().max().expect("some leader");
        counts
            .into_iter()
            .find(|&(_, count)| count == most)
            .map(|(id, _)| id)
            .expect("some leader")
    }

    /// Proposes `count` distinct commands to each shard through its current leader among
    /// `among`, all in flight at once, and retries those not acknowledged (a leader may change
    /// under load) with a new, distinct command until each is. Returns the acknowledged
    /// commands with their log positions, by shard.
    pub fn propose_all(&self, among: &[NodeId], tag: &str, count: usize) -> Acked {
        let mut acked = Acked::new();
        let mut todo: Vec<(ShardId, usize)> = (0..self.shards)
            .flat_map(|shard| (0..count).map(move |n| (shard, n)))
            .collect();
        let deadline = Instant::now() + TIMEOUT;
        for attempt in 0.. {
            assert!(
                Instant::now() < deadline,
                "proposals never all acknowledged"
            );
            let leaders = self.wait_for_leaders(among);
            let in_flight: Vec<_> = todo
                .iter()
                .map(|&(shard, n)| {
                    let command = format!("{tag}-{shard}-{n}-{attempt}").into_bytes();
                    let handle = self.handle(leaders[shard as usize]);
                    let rx = propose(&handle, shard, command.clone());
                    (shard, n, command, rx)
                })
                .collect();
            todo.clear();
            for (shard, n, command, rx) in in_flight {
                match answer(&rx) {
                    Ok(position) => acked.entry(shard).or_default().push((command, position)),
                    Err(ProposeError::NotLeader | ProposeError::Dropped | ProposeError::Busy) => {
                        todo.push((shard, n))
                    }
                    Err(other) => panic!("proposal failed: {other:?}"),
                }
            }
            if todo.is_empty() {
                break;
            }
        }
        acked
    }

    /// Waits until every node of `among` holds the same log per shard, with every acknowledged
    /// command at its acknowledged position.
    pub fn wait_converged(&self, among: &[NodeId], acked: &Acked) {
        let refused = self.net.refused.lock().expect("refused lock").clone();
        assert!(
            refused.is_empty(),
            "nodes sent malformed frames: {refused:?}"
        );
        wait_until("replicas to converge", || {
            (0..self.shards).all(|shard| {
                let logs: Vec<_> = among.iter().map(|&id| self.log(id, shard)).collect();
                let same = logs.windows(2).all(|pair| pair[0] == pair[1]);
                same && acked
                    .get(&shard)
                    .into_iter()
                    .flatten()
                    .all(|(command, position)| logs[0].get(position - 1) == Some(command))
            })
        });
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Stop every node before the temp dirs go.
        self.net.handles.lock().expect("handles lock").clear();
        for node in self.nodes.values_mut() {
            drop(node.cluster.take());
        }
    }
}

/// Acknowledged commands and their log positions, by shard.
impl TestNode {
    fn new(joins: bool, shards: u64) -> Self {
        TestNode {
            dir: tempfile::tempdir().expect("tempdir"),
            cluster: None,
            logs: (0..shards).map(|_| Log::default()).collect(),
            joins,
        }
    }
}

pub type Acked = BTreeMap<ShardId, Vec<(Vec<u8>, usize)>>;

pub fn merge(into: &mut Acked, more: Acked) {
    for (shard, commands) in more {
        into.entry(shard).or_default().extend(commands);
    }
}

/// Proposes and returns the channel `done` answers on; an immediate refusal is sent there too.
pub fn propose(
    handle: &ClusterHandle<Recorder>,
    shard: ShardId,
    command: Vec<u8>,
) -> Receiver<Answer> {
    let (tx, rx) = mpsc::channel();
    let done_tx = tx.clone();
    let done = Box::new(move |result| {
        let _ = done_tx.send(result);
    });
    if let Err(refused) = handle.propose(shard, command, done) {
        tx.send(Err(refused)).expect("receiver alive");
    }
    rx
}

pub fn answer(rx: &Receiver<Answer>) -> Answer {
    rx.recv_timeout(TIMEOUT).expect("proposal answered in time")
}

pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn no_tweak(_: &mut ClusterConfig) {}

/// The message count of a frame, read as its documented format says (version, from, to, then
/// the count, big-endian).
pub fn message_count(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[17..21].try_into().expect("4 bytes"))
}

/// The Raft messages of a frame, read as its documented format says (version, from, to,
/// count, then shard ‖ length ‖ protobuf per message, big-endian).
pub fn frame_messages(frame: &[u8]) -> Vec<raft::eraftpb::Message> {
    let mut messages = Vec::new();
    let mut rest = &frame[21..];
    while !rest.is_empty() {
        let length = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        messages.push(
            raft::eraftpb::Message::parse_from_bytes(&rest[12..12 + length])
                .expect("a raft message"),
        );
        rest = &rest[12 + length..];
    }
    messages
}

/// Whether a frame holds a `MsgSnapshot`.
pub fn carries_snapshot(frame: &[u8]) -> bool {
    frame_messages(frame)
        .iter()
        .any(|message| message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
}

/// The data of the entries a frame's `MsgAppend`s carry.
pub fn appended_entries(frame: &[u8]) -> Vec<Vec<u8>> {
    frame_messages(frame)
        .iter()
        .filter(|message| message.get_msg_type() == raft::eraftpb::MessageType::MsgAppend)
        .flat_map(|message| {
            message
                .get_entries()
                .iter()
                .map(|entry| entry.data.to_vec())
        })
        .collect()
}
