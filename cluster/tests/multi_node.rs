//! Multi-node tests of `mimid-cluster`: three real clusters (sled in a temp dir each) in one
//! process, connected by an in-memory [`Transport`] that hands every frame to the destination's
//! `ClusterHandle::receive`, with switches to cut a node off (partition), to lose a snapshot on the
//! way, and to stop and restart a node from its data dir.
//!
//! Ticks are 10 ms and elections take 200-400 ms, so every fault resolves well within a second
//! or two. No test sleeps to synchronise: conditions are polled with a deadline
//! (`wait_until`), and proposals are awaited on their `done` channels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;

use mimid_cluster::{
    Cluster, ClusterConfig, ClusterHandle, NodeId, ProposeError, ReceiveError, ShardId,
    StateMachine, Transport,
};

/// Guard against hangs; never reached when the code under test works.
const TIMEOUT: Duration = Duration::from_secs(20);
const SHARDS: u64 = 4;
const NODES: [NodeId; 3] = [1, 2, 3];

/// The commands a replica applied, in order; shared with the test, replaced on restore.
type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// Records every applied command; the output is the command's 1-based position in the log, so
/// a test can check an acknowledged command sits at that position on every replica.
struct Recorder {
    log: Log,
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

/// The in-memory network: who is reachable, and the frames in transit (none: delivery is a
/// direct call of the destination's `receive`, which only queues).
#[derive(Default)]
struct Net {
    handles: Mutex<BTreeMap<NodeId, ClusterHandle<Recorder>>>,
    /// Nodes cut off from everyone: frames from or to them are dropped.
    isolated: Mutex<BTreeSet<NodeId>>,
    /// The first frame sent from node 1 to node 2, for the misaddressed-frame test.
    captured: Mutex<Option<Vec<u8>>>,
    /// Why a destination refused a frame a node sent: must stay empty.
    refused: Mutex<Vec<String>>,
    /// Drop the next frame to this node that carries a `MsgSnapshot`.
    lose_snapshot_to: Mutex<Option<NodeId>>,
}

struct NetTransport {
    from: NodeId,
    net: Arc<Net>,
}

impl Transport for NetTransport {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        let net = &self.net;
        if self.from == 1 && to == 2 {
            net.captured
                .lock()
                .expect("capture lock")
                .get_or_insert_with(|| frame.clone());
        }
        {
            let isolated = net.isolated.lock().expect("isolated lock");
            if isolated.contains(&self.from) || isolated.contains(&to) {
                return;
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

struct TestNode {
    dir: tempfile::TempDir,
    cluster: Option<Cluster<Recorder>>,
    logs: Vec<Log>,
}

struct TestCluster {
    net: Arc<Net>,
    nodes: BTreeMap<NodeId, TestNode>,
    tweak: fn(&mut ClusterConfig),
}

type Answer = Result<usize, ProposeError>;

impl TestCluster {
    /// Starts nodes 1, 2 and 3 of a new cluster; `tweak` adjusts every node's configuration.
    fn start(tweak: fn(&mut ClusterConfig)) -> Self {
        let mut cluster = TestCluster {
            net: Arc::new(Net::default()),
            nodes: BTreeMap::new(),
            tweak,
        };
        for id in NODES {
            let node = TestNode {
                dir: tempfile::tempdir().expect("tempdir"),
                cluster: None,
                logs: (0..SHARDS).map(|_| Log::default()).collect(),
            };
            cluster.nodes.insert(id, node);
            cluster.start_node(id);
        }
        cluster
    }

    fn config(&self, id: NodeId, dir: &Path) -> ClusterConfig {
        let mut config = ClusterConfig::new(id, dir);
        config.shards = SHARDS;
        config.voters = NODES.to_vec();
        config.tick_interval = Duration::from_millis(10);
        config.election_tick = 20;
        config.heartbeat_tick = 2;
        (self.tweak)(&mut config);
        config
    }

    /// Starts (or restarts, from its data dir) node `id`.
    fn start_node(&mut self, id: NodeId) {
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
        let transport = NetTransport {
            from: id,
            net: Arc::clone(&self.net),
        };
        let cluster = Cluster::start_with_transport(config, factory, Box::new(transport))
            .expect("cluster starts");
        self.net
            .handles
            .lock()
            .expect("handles lock")
            .insert(id, cluster.handle());
        node.cluster = Some(cluster);
    }

    /// Shuts node `id` down; the network no longer reaches it.
    fn stop_node(&mut self, id: NodeId) {
        self.net.handles.lock().expect("handles lock").remove(&id);
        let cluster = self.nodes.get_mut(&id).expect("node exists").cluster.take();
        cluster.expect("node is running").shutdown();
    }

    fn isolate(&self, id: NodeId) {
        self.net.isolated.lock().expect("isolated lock").insert(id);
    }

    fn heal(&self) {
        self.net.isolated.lock().expect("isolated lock").clear();
    }

    fn handle(&self, id: NodeId) -> ClusterHandle<Recorder> {
        self.nodes[&id]
            .cluster
            .as_ref()
            .expect("node is running")
            .handle()
    }

    fn log(&self, id: NodeId, shard: ShardId) -> Vec<Vec<u8>> {
        self.nodes[&id].logs[shard as usize]
            .lock()
            .expect("log lock")
            .clone()
    }

    /// Waits until every node of `among` names the same leader for every shard, that leader is
    /// one of them and believes it leads; returns the leaders by shard.
    fn wait_for_leaders(&self, among: &[NodeId]) -> Vec<NodeId> {
        let handles: BTreeMap<NodeId, _> = among.iter().map(|&id| (id, self.handle(id))).collect();
        let mut leaders = Vec::new();
        wait_until("every shard to have an agreed leader", || {
            leaders.clear();
            for shard in 0..SHARDS {
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
    fn busiest_leader(leaders: &[NodeId]) -> NodeId {
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
    fn propose_all(&self, among: &[NodeId], tag: &str, count: usize) -> Acked {
        let mut acked = Acked::new();
        let mut todo: Vec<(ShardId, usize)> = (0..SHARDS)
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
    fn wait_converged(&self, among: &[NodeId], acked: &Acked) {
        let refused = self.net.refused.lock().expect("refused lock").clone();
        assert!(
            refused.is_empty(),
            "nodes sent malformed frames: {refused:?}"
        );
        wait_until("replicas to converge", || {
            (0..SHARDS).all(|shard| {
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
type Acked = BTreeMap<ShardId, Vec<(Vec<u8>, usize)>>;

fn merge(into: &mut Acked, more: Acked) {
    for (shard, commands) in more {
        into.entry(shard).or_default().extend(commands);
    }
}

/// Proposes and returns the channel `done` answers on; an immediate refusal is sent there too.
fn propose(handle: &ClusterHandle<Recorder>, shard: ShardId, command: Vec<u8>) -> Receiver<Answer> {
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

fn answer(rx: &Receiver<Answer>) -> Answer {
    rx.recv_timeout(TIMEOUT).expect("proposal answered in time")
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn no_tweak(_: &mut ClusterConfig) {}

/// Whether a frame holds a `MsgSnapshot`, read as its documented format says (version,
/// from, to, count, then shard ‖ length ‖ protobuf per message, big-endian).
fn carries_snapshot(frame: &[u8]) -> bool {
    let mut rest = &frame[21..];
    while !rest.is_empty() {
        let length = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let message = raft::eraftpb::Message::parse_from_bytes(&rest[12..12 + length])
            .expect("a raft message");
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            return true;
        }
        rest = &rest[12 + length..];
    }
    false
}

#[test]
fn three_nodes_replicate_every_acknowledged_entry_in_one_order() {
    let cluster = TestCluster::start(no_tweak);
    let acked = cluster.propose_all(&NODES, "load", 40);
    assert!(acked.values().all(|commands| commands.len() == 40));
    cluster.wait_converged(&NODES, &acked);

    // A follower refuses at once and names the leader.
    let leaders = cluster.wait_for_leaders(&NODES);
    for shard in 0..SHARDS {
        let leader = leaders[shard as usize];
        let follower = *NODES.iter().find(|&&id| id != leader).expect("a follower");
        let handle = cluster.handle(follower);
        assert_eq!(handle.leader(shard), Some(leader));
        let rx = propose(&handle, shard, b"to a follower".to_vec());
        assert_eq!(answer(&rx), Err(ProposeError::NotLeader));
    }
    for id in NODES {
        let handle = cluster.handle(id);
        wait_until("every node to be ready", || handle.is_ready());
        assert_eq!(handle.node_id(), id);
        let metrics = handle.metrics();
        assert!(metrics.frames_received > 0, "node {id}: {metrics:?}");
        // One frame per destination per turn: messages of several shards share frames, and
        // no turn sends more frames than there are peers.
        assert!(
            metrics.messages_sent > metrics.frames_sent,
            "node {id}: {metrics:?}"
        );
        assert!(
            metrics.frames_sent <= 2 * metrics.ready_turns,
            "node {id}: {metrics:?}"
        );
        assert_eq!(metrics.frames_malformed, 0);
        assert_eq!(metrics.failed_shards, 0);
    }
    assert!(
        cluster
            .log(1, 0)
            .iter()
            .all(|command| command != b"to a follower"),
        "a refused proposal was applied"
    );
}

#[test]
fn a_frame_for_another_node_or_garbage_is_refused_as_malformed() {
    let cluster = TestCluster::start(no_tweak);
    cluster.wait_for_leaders(&NODES);
    let frame = cluster
        .net
        .captured
        .lock()
        .expect("capture lock")
        .clone()
        .expect("node 1 sent node 2 a frame");
    let third = cluster.handle(3);
    match third.receive(&frame) {
        Err(ReceiveError::Malformed(reason)) => {
            assert!(reason.contains("for node 2"), "{reason}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(matches!(
        third.receive(b"\x01not a frame"),
        Err(ReceiveError::Malformed(_))
    ));
    assert_eq!(third.metrics().frames_malformed, 2);
    // The same frame is fine for its addressee, even twice (Raft tolerates duplicates).
    let second = cluster.handle(2);
    assert_eq!(second.receive(&frame), Ok(()));
    // Every cut of a real frame is refused, never taken in part.
    for len in 0..frame.len() {
        assert!(
            matches!(
                second.receive(&frame[..len]),
                Err(ReceiveError::Malformed(_))
            ),
            "cut at {len}"
        );
    }
    // And nothing of it broke a group.
    let acked = cluster.propose_all(&NODES, "after", 3);
    cluster.wait_converged(&NODES, &acked);
    assert_eq!(second.metrics().failed_shards, 0);
}

#[test]
fn killing_a_leader_elects_another_and_loses_nothing() {
    let mut cluster = TestCluster::start(no_tweak);
    let mut acked = cluster.propose_all(&NODES, "before", 10);
    let leaders = cluster.wait_for_leaders(&NODES);
    let victim = TestCluster::busiest_leader(&leaders);
    let survivors: Vec<NodeId> = NODES.iter().copied().filter(|&id| id != victim).collect();

    // Mid-load: proposals in flight at the victim when it goes down.
    let handle = cluster.handle(victim);
    let in_flight: Vec<_> = (0..SHARDS)
        .flat_map(|shard| (0..20).map(move |n| (shard, n)))
        .map(|(shard, n)| {
            let command = format!("inflight-{shard}-{n}").into_bytes();
            (shard, command.clone(), propose(&handle, shard, command))
        })
        .collect();
    drop(handle);
    cluster.stop_node(victim);
    for (shard, command, rx) in in_flight {
        // Acknowledged before the shutdown: it must survive. Anything else may or may not.
        if let Ok(position) = answer(&rx) {
            acked.entry(shard).or_default().push((command, position));
        }
    }

    let started = Instant::now();
    let new_leaders = cluster.wait_for_leaders(&survivors);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "re-election took {:?}",
        started.elapsed()
    );
    assert!(new_leaders.iter().all(|leader| *leader != victim));
    merge(&mut acked, cluster.propose_all(&survivors, "after", 10));
    cluster.wait_converged(&survivors, &acked);

    // Back from its data dir, the old leader catches up to the same sequences.
    cluster.start_node(victim);
    merge(&mut acked, cluster.propose_all(&NODES, "rejoined", 5));
    cluster.wait_converged(&NODES, &acked);
    wait_until("the restarted node to be ready", || {
        cluster.handle(victim).is_ready()
    });
}

#[test]
fn a_partitioned_node_refuses_writes_then_catches_up() {
    let cluster = TestCluster::start(no_tweak);
    let mut acked = cluster.propose_all(&NODES, "before", 5);
    let leaders = cluster.wait_for_leaders(&NODES);
    // The node leading the most shards: its leaders must step down by check-quorum.
    let cut = TestCluster::busiest_leader(&leaders);
    let majority: Vec<NodeId> = NODES.iter().copied().filter(|&id| id != cut).collect();
    cluster.isolate(cut);

    // Proposals at the cut-off node, until it has no leader for any shard: none may succeed.
    let handle = cluster.handle(cut);
    let mut answers = Vec::new();
    wait_until("the cut-off node to lose every leader", || {
        for shard in 0..SHARDS {
            answers.push(propose(&handle, shard, b"cut off".to_vec()));
        }
        (0..SHARDS).all(|shard| handle.leader(shard).is_none())
    });
    wait_until("the cut-off node to report not ready", || {
        !handle.is_ready()
    });
    for rx in &answers {
        let answer = answer(rx);
        assert!(
            matches!(answer, Err(ProposeError::NotLeader | ProposeError::Dropped)),
            "a proposal at a node without quorum got {answer:?}"
        );
    }
    // It led shards when it was cut off: those proposals waited for a quorum until
    // check-quorum made it step down, and were then answered `Dropped`.
    assert!(handle.metrics().dropped_proposals > 0);

    // The majority elects leaders and commits meanwhile.
    merge(&mut acked, cluster.propose_all(&majority, "majority", 10));
    cluster.wait_converged(&majority, &acked);
    let majority_leaders = cluster.wait_for_leaders(&majority);
    let leader_changes = |id| cluster.handle(id).metrics().leader_changes;
    let changes_before: Vec<u64> = majority.iter().map(|&id| leader_changes(id)).collect();
    assert!(!handle.is_ready());

    cluster.heal();
    wait_until("the healed node to be ready", || handle.is_ready());
    merge(&mut acked, cluster.propose_all(&NODES, "healed", 5));
    cluster.wait_converged(&NODES, &acked);
    // Pre-vote: the returning node, whose elections failed meanwhile, unseated no one (it did
    // not raise its term, so the leaders had no reason to step down).
    assert_eq!(cluster.wait_for_leaders(&NODES), majority_leaders);
    let changes_after: Vec<u64> = majority.iter().map(|&id| leader_changes(id)).collect();
    assert_eq!(
        changes_after, changes_before,
        "leadership changed after the heal"
    );
    for shard in 0..SHARDS {
        assert!(
            cluster
                .log(cut, shard)
                .iter()
                .all(|command| command != b"cut off"),
            "shard {shard}: a proposal made without quorum was applied"
        );
    }
}

#[test]
fn a_lagging_replica_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(|config| config.snapshot_interval = 16);
    let mut acked = cluster.propose_all(&NODES, "before", 5);
    let lagging = 3;
    let others = [1, 2];
    cluster.stop_node(lagging);
    merge(&mut acked, cluster.propose_all(&others, "while-down", 200));
    cluster.wait_converged(&others, &acked);
    // Snapshots are taken at the end of the turn that applied the entries: poll.
    for id in others {
        let handle = cluster.handle(id);
        wait_until("every shard to snapshot and compact", || {
            handle.metrics().snapshots_taken >= SHARDS
        });
    }

    // The first snapshot sent to it is lost on the way: the leader must send another.
    *cluster.net.lose_snapshot_to.lock().expect("lose lock") = Some(lagging);
    cluster.start_node(lagging);
    cluster.wait_converged(&NODES, &acked);
    assert_eq!(
        *cluster.net.lose_snapshot_to.lock().expect("lose lock"),
        None,
        "no snapshot was sent"
    );
    let handle = cluster.handle(lagging);
    // Counted right after the restore the logs show: poll.
    wait_until("the snapshot to be counted", || {
        handle.metrics().snapshots_received >= 1
    });
    assert_eq!(handle.metrics().failed_shards, 0);
    // And it goes on replicating normally afterwards.
    merge(&mut acked, cluster.propose_all(&NODES, "after", 5));
    cluster.wait_converged(&NODES, &acked);
    wait_until("the caught-up node to be ready", || {
        cluster.handle(lagging).is_ready()
    });
}
