//! `ClusterHandle::read_barrier` (Raft ReadIndex) on three in-process nodes connected by an
//! in-memory transport that can hold back the frames to one node (a lagging follower) and cut a
//! node off. Ticks are 10 ms; conditions are polled with a deadline, never slept on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mimid_cluster::{
    Cluster, ClusterConfig, ClusterHandle, NodeId, ProposeError, ReadBarrierError, ShardId,
    StateMachine, Transport,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const NODES: [NodeId; 3] = [1, 2, 3];
const SHARD: ShardId = 0;

type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// Records every applied command.
struct Recorder {
    log: Log,
}

impl StateMachine for Recorder {
    type Output = ();

    fn apply(&mut self, _index: u64, command: &[u8]) {
        self.log.lock().unwrap().push(command.to_vec());
    }

    fn snapshot(&self) -> Vec<u8> {
        encode(&self.log.lock().unwrap())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self.log.lock().unwrap() = decode(snapshot)?;
        Ok(())
    }
}

fn encode(log: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for command in log {
        out.extend_from_slice(&(command.len() as u32).to_be_bytes());
        out.extend_from_slice(command);
    }
    out
}

fn decode(mut rest: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut commands = Vec::new();
    while !rest.is_empty() {
        let len: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated")?;
        let len = u32::from_be_bytes(len) as usize;
        commands.push(rest.get(4..4 + len).ok_or("truncated")?.to_vec());
        rest = &rest[4 + len..];
    }
    Ok(commands)
}

#[derive(Default)]
struct Net {
    handles: Mutex<BTreeMap<NodeId, ClusterHandle<Recorder>>>,
    /// Frames to these nodes wait in `held` until released.
    holding: Mutex<BTreeSet<NodeId>>,
    held: Mutex<Vec<(NodeId, Vec<u8>)>>,
    /// Frames from or to these nodes are dropped.
    isolated: Mutex<BTreeSet<NodeId>>,
}

impl Net {
    fn deliver(&self, to: NodeId, frame: &[u8]) {
        let handle = self.handles.lock().unwrap().get(&to).cloned();
        if let Some(handle) = handle {
            // A full inbox or a stopped node drops the frame, like a real network.
            let _ = handle.receive(frame);
        }
    }

    /// Stops holding frames for `node` and delivers those held, in order.
    fn release(&self, node: NodeId) {
        self.holding.lock().unwrap().remove(&node);
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        for (to, frame) in held {
            self.deliver(to, &frame);
        }
    }
}

struct NetTransport {
    from: NodeId,
    net: Arc<Net>,
}

impl Transport for NetTransport {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        {
            let isolated = self.net.isolated.lock().unwrap();
            if isolated.contains(&self.from) || isolated.contains(&to) {
                return;
            }
        }
        if self.net.holding.lock().unwrap().contains(&to) {
            self.net.held.lock().unwrap().push((to, frame));
            return;
        }
        self.net.deliver(to, &frame);
    }
}

struct Nodes {
    net: Arc<Net>,
    clusters: BTreeMap<NodeId, Cluster<Recorder>>,
    logs: BTreeMap<NodeId, Log>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Nodes {
    fn start() -> Nodes {
        let net = Arc::new(Net::default());
        let mut nodes = Nodes {
            net: net.clone(),
            clusters: BTreeMap::new(),
            logs: BTreeMap::new(),
            _dirs: Vec::new(),
        };
        for id in NODES {
            let dir = tempfile::tempdir().unwrap();
            let mut config = ClusterConfig::new(id, dir.path());
            config.shards = 1;
            config.voters = NODES.to_vec();
            config.tick_interval = Duration::from_millis(10);
            config.election_tick = 20;
            config.heartbeat_tick = 2;
            let log = Log::default();
            let factory_log = log.clone();
            let factory = move |_| Recorder {
                log: factory_log.clone(),
            };
            let transport = NetTransport {
                from: id,
                net: net.clone(),
            };
            let cluster = Cluster::start_with_transport(config, factory, Box::new(transport))
                .expect("cluster starts");
            net.handles.lock().unwrap().insert(id, cluster.handle());
            nodes.clusters.insert(id, cluster);
            nodes.logs.insert(id, log);
            nodes._dirs.push(dir);
        }
        nodes
    }

    fn handle(&self, id: NodeId) -> ClusterHandle<Recorder> {
        self.clusters[&id].handle()
    }

    fn log(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.logs[&id].lock().unwrap().clone()
    }

    /// The leader every node agrees on.
    fn leader(&self) -> NodeId {
        let mut leader = 0;
        wait_until("an agreed leader", || {
            let named: BTreeSet<Option<NodeId>> = NODES
                .iter()
                .map(|&id| self.handle(id).leader(SHARD))
                .collect();
            match named.into_iter().collect::<Vec<_>>()[..] {
                [Some(id)] => {
                    leader = id;
                    true
                }
                _ => false,
            }
        });
        leader
    }

    /// Proposes through the leader until acknowledged.
    fn write(&self, command: &[u8]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "write never acknowledged");
            let (tx, rx) = mpsc::channel();
            let handle = self.handle(self.leader());
            let queued = handle.propose(
                SHARD,
                command.to_vec(),
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            match queued.and_then(|()| rx.recv_timeout(TIMEOUT).expect("answered")) {
                Ok(()) => return,
                Err(ProposeError::NotLeader | ProposeError::Dropped | ProposeError::Busy) => {}
                Err(other) => panic!("write failed: {other}"),
            }
        }
    }
}

/// A barrier's answer and the replica's log as its callback saw it.
type Seen = (Result<(), ReadBarrierError>, Vec<Vec<u8>>);

/// Starts a barrier on `handle`; the answer carries the replica's log as the callback saw it.
fn barrier(
    handle: &ClusterHandle<Recorder>,
    log: &Log,
    timeout: Duration,
) -> Result<Receiver<Seen>, ReadBarrierError> {
    let (tx, rx) = mpsc::channel();
    let log = log.clone();
    handle.read_barrier(
        SHARD,
        timeout,
        Box::new(move |result| {
            let seen = log.lock().unwrap().clone();
            let _ = tx.send((result, seen));
        }),
    )?;
    Ok(rx)
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A follower that has not heard of a committed write yet resolves its barrier only after it
/// applied that write, and the leader resolves its own at once.
#[test]
fn a_lagging_follower_resolves_its_barrier_only_after_applying_what_was_acknowledged() {
    let nodes = Nodes::start();
    let leader = nodes.leader();
    nodes.write(b"before");
    let follower = *NODES.iter().find(|&&id| id != leader).expect("a follower");
    wait_until("the follower applied the first write", || {
        nodes.log(follower).contains(&b"before".to_vec())
    });

    // Frames to the follower wait: the write below commits on the leader and the third node.
    nodes.net.holding.lock().unwrap().insert(follower);
    nodes.write(b"acknowledged");
    assert!(
        !nodes.log(follower).contains(&b"acknowledged".to_vec()),
        "the follower lags"
    );
    let rx = barrier(
        &nodes.handle(follower),
        &nodes.logs[&follower],
        Duration::from_secs(10),
    )
    .expect("barrier queued");
    // The leader's answer is held with everything else: no resolution yet.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    nodes.net.release(follower);
    let (result, seen) = rx.recv_timeout(TIMEOUT).expect("barrier answered");
    assert_eq!(result, Ok(()));
    assert!(
        seen.contains(&b"acknowledged".to_vec()),
        "resolved before applying the acknowledged write: {seen:?}"
    );

    let rx = barrier(
        &nodes.handle(leader),
        &nodes.logs[&leader],
        Duration::from_secs(10),
    )
    .expect("barrier queued");
    let (result, seen) = rx.recv_timeout(TIMEOUT).expect("barrier answered");
    assert_eq!(result, Ok(()));
    assert!(seen.contains(&b"acknowledged".to_vec()));
}

/// A node cut off from the others cannot confirm anything: its barrier ends with an error
/// (timed out, or no leader once it forgot the leader), never `Ok`, and within its deadline
/// plus a tick or so.
#[test]
fn a_cut_off_node_answers_no_leader_or_timed_out() {
    let nodes = Nodes::start();
    let leader = nodes.leader();
    nodes.write(b"x");
    let follower = *NODES.iter().find(|&&id| id != leader).expect("a follower");
    nodes.net.isolated.lock().unwrap().insert(follower);
    let handle = nodes.handle(follower);
    let started = Instant::now();
    match barrier(&handle, &nodes.logs[&follower], Duration::from_millis(300)) {
        Err(ReadBarrierError::NoLeader) => {}
        Err(other) => panic!("unexpected refusal {other:?}"),
        Ok(rx) => {
            let (result, _) = rx.recv_timeout(TIMEOUT).expect("barrier answered");
            assert!(
                matches!(
                    result,
                    Err(ReadBarrierError::TimedOut | ReadBarrierError::NoLeader)
                ),
                "{result:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
    // Once the election timeout passed, the node knows no leader and says so at once.
    wait_until("the cut-off node forgot the leader", || {
        handle.leader(SHARD).is_none()
    });
    assert_eq!(
        barrier(&handle, &nodes.logs[&follower], Duration::from_secs(1)).err(),
        Some(ReadBarrierError::NoLeader)
    );

    // Healed, it confirms again.
    nodes.net.isolated.lock().unwrap().clear();
    wait_until("the healed node knows a leader", || {
        handle.leader(SHARD).is_some()
    });
    let rx =
        barrier(&handle, &nodes.logs[&follower], Duration::from_secs(10)).expect("barrier queued");
    let (result, seen) = rx.recv_timeout(TIMEOUT).expect("barrier answered");
    assert_eq!(result, Ok(()));
    assert!(seen.contains(&b"x".to_vec()));
}

#[test]
fn unknown_shards_and_stopped_nodes_are_refused_at_once() {
    let mut nodes = Nodes::start();
    nodes.leader();
    let handle = nodes.handle(1);
    let log = nodes.logs[&1].clone();
    let (tx, _rx) = mpsc::channel::<()>();
    let result = handle.read_barrier(
        7,
        Duration::from_secs(1),
        Box::new(move |_| {
            let _ = tx.send(());
        }),
    );
    assert_eq!(result, Err(ReadBarrierError::UnknownShard));
    nodes.clusters.remove(&1).expect("node 1").shutdown();
    assert_eq!(
        barrier(&handle, &log, Duration::from_secs(1)).err(),
        Some(ReadBarrierError::Stopped)
    );
}
