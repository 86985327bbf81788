//! WAN behaviour of the replication layer (issue 9, item 4), on the in-memory harness
//! (`common`: real clusters, sled with fsync in a temp dir each) with every frame delayed by
//! its link's one-way delay (`common::delay::DelayTransport`): three regions A, B and C with
//! round trips of 30 ms (A-B), 80 ms (B-C) and 150 ms (A-C), 1 ms inside a region, and up to
//! 1 ms of seeded jitter per frame, per-link order kept.
//!
//! - Commit latency per placement: where a shard's three voters sit and which one leads it,
//!   one commit at a time, and a burst of commands proposed at once (pipelined: one round trip
//!   per batch). Printed as tables (`cargo test -p mimid-cluster --test wan -- --nocapture`);
//!   asserted only are facts no scheduling can break: every commit succeeds, and none is
//!   acknowledged sooner than the round trip to the leader's nearest other voter (a majority
//!   of three needs one other fsync; no frame is ever delivered before its due time).
//! - Losing a region: with one voter per region, cutting region C off leaves every shard a
//!   quorum in A and B; the shards C led elect there and every shard accepts writes; after the
//!   heal nothing acknowledged is lost and C converges.
//! - The idle cost of shards awake and hibernating over the WAN, for ops/capacity.md (CPU
//!   printed; asserted: hibernating shards send no frame, awake ones do).
//!
//! Timing is WAN-like: ticks of 10 ms (the node's are 100 ms, kept short for the test's wall
//! time), heartbeats every 50 ms, elections after 500-1000 ms (several of the longest round
//! trips, as the node's 1-2 s are), hibernation after 1.5 s. Nothing sleeps to synchronise:
//! proposals are awaited on their channels, conditions are polled with a deadline; the one
//! sleep is the idle test's measurement window.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mimid_cluster::{ClusterConfig, ClusterHandle, NodeId, ProposeError, ShardId, Transport};

use common::delay::{DelayTransport, Region, Wan};
use common::*;

/// The round trips between the three regions.
const RTT_AB: Duration = Duration::from_millis(30);
const RTT_BC: Duration = Duration::from_millis(80);
const RTT_AC: Duration = Duration::from_millis(150);
const INTRA_RTT: Duration = Duration::from_millis(1);
const JITTER: Duration = Duration::from_millis(1);

/// Commits timed per shard, after a few that are not (the first after a transfer or a wake-up).
const WARM_UP: usize = 3;
const TIMED: usize = 15;

/// A topology of the three regions with the given node placement.
fn wan(placement: &[(NodeId, Region)]) -> Wan {
    Wan {
        region_of: placement.iter().copied().collect(),
        rtt: BTreeMap::from([
            (("A", "B"), RTT_AB),
            (("B", "C"), RTT_BC),
            (("A", "C"), RTT_AC),
        ]),
        intra_rtt: INTRA_RTT,
        jitter: JITTER,
        seed: 0x5EED_0009,
    }
}

/// Every node's transport behind `wan`'s delays.
fn delayed(wan: &Wan) -> Option<Wrap> {
    let wan = Arc::new(wan.clone());
    Some(Arc::new(move |id, inner| {
        Box::new(DelayTransport::new(id, Arc::clone(&wan), inner)) as Box<dyn Transport>
    }))
}

/// WAN timing (module docs); `shards` shards.
fn wan_timing(config: &mut ClusterConfig, shards: u64) {
    config.shards = shards;
    config.tick_interval = Duration::from_millis(10);
    config.heartbeat_tick = 5;
    config.election_tick = 50;
    // Three election timeouts, as the node's default is.
    config.hibernate_after_ticks = 150;
}

fn three_shards(config: &mut ClusterConfig) {
    wan_timing(config, 3);
}

fn six_shards(config: &mut ClusterConfig) {
    wan_timing(config, 6);
}

/// Makes `target` lead `shard` with every node of `all` agreeing, by leadership transfer.
fn lead(cluster: &TestCluster, all: &[NodeId], shard: ShardId, target: NodeId) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "node {target} never led shard {shard}"
        );
        let leader = cluster.wait_for_leaders(all)[shard as usize];
        if leader == target {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        // Refusals (a leader that just lost the lead, a transfer in progress, a timeout) are
        // retried with the leader of the moment.
        if cluster
            .handle(leader)
            .transfer_leader(shard, target, done)
            .is_ok()
        {
            let _ = rx.recv_timeout(TIMEOUT).expect("transfer answered in time");
        }
    }
}

/// Commits `count` commands one after another on `shard` through `leader`, returning each
/// commit's latency (propose to the applied answer). A proposal refused because leadership
/// moved is retried (not timed) once `leader` leads again.
fn commit_latencies(
    cluster: &TestCluster,
    all: &[NodeId],
    shard: ShardId,
    leader: NodeId,
    tag: &str,
    count: usize,
) -> Vec<Duration> {
    let handle: ClusterHandle<Recorder> = cluster.handle(leader);
    let mut latencies = Vec::with_capacity(count);
    let mut attempt = 0;
    while latencies.len() < count {
        attempt += 1;
        assert!(attempt < count + 20, "shard {shard} kept losing its leader");
        let command = format!("{tag}-{shard}-{attempt}").into_bytes();
        let start = Instant::now();
        match answer(&propose(&handle, shard, command)) {
            Ok(_) => latencies.push(start.elapsed()),
            Err(ProposeError::NotLeader | ProposeError::Dropped) => {
                lead(cluster, all, shard, leader)
            }
            Err(other) => panic!("commit on shard {shard} failed: {other:?}"),
        }
    }
    latencies
}

/// Proposes `count` commands to `shard` through `leader` all at once and returns each one's
/// latency and the time until the last answer. Refusals (leadership moved) fail the test: the
/// burst is short and nothing disturbs the leader.
fn burst(
    cluster: &TestCluster,
    shard: ShardId,
    leader: NodeId,
    count: usize,
) -> (Vec<Duration>, Duration) {
    let handle: ClusterHandle<Recorder> = cluster.handle(leader);
    let start = Instant::now();
    let in_flight: Vec<_> = (0..count)
        .map(|n| propose(&handle, shard, format!("burst-{shard}-{n}").into_bytes()))
        .collect();
    let mut latencies: Vec<Duration> = in_flight
        .iter()
        .map(|rx| {
            let answer = answer(rx);
            assert!(answer.is_ok(), "burst commit refused: {answer:?}");
            start.elapsed()
        })
        .collect();
    latencies.sort_unstable();
    let total = latencies[count - 1];
    (latencies, total)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One row of the latency table.
struct Row {
    placement: &'static str,
    voters: String,
    leader: String,
    floor: Duration,
    latencies: Vec<Duration>,
}

/// Commands in flight at once in the burst on shard 0 of each placement.
const BURST: usize = 200;

/// One row of the burst table: latencies of [`BURST`] commands proposed at once, and the time
/// until the last was answered.
struct BurstRow {
    placement: &'static str,
    leader: Region,
    floor: Duration,
    latencies: Vec<Duration>,
    total: Duration,
}

/// Starts a cluster of `placement`'s three nodes (all voters), gives shard *i* to leader
/// `leaders[i]`, times commits on each shard and checks each against its quorum floor.
fn measure(
    name: &'static str,
    placement: &[(NodeId, Region)],
    leaders: &[NodeId],
) -> (Vec<Row>, BurstRow) {
    let wan = wan(placement);
    let all: Vec<NodeId> = placement.iter().map(|&(id, _)| id).collect();
    let cluster = TestCluster::start_wrapped(&all, three_shards, delayed(&wan));
    assert_eq!(cluster.shards(), leaders.len() as u64);
    for (shard, &leader) in leaders.iter().enumerate() {
        lead(&cluster, &all, shard as ShardId, leader);
    }
    let voters: Vec<Region> = all.iter().map(|&id| wan.region(id)).collect();
    let mut rows = Vec::new();
    for (shard, &leader) in leaders.iter().enumerate() {
        let shard = shard as ShardId;
        commit_latencies(&cluster, &all, shard, leader, "warm", WARM_UP);
        let mut latencies = commit_latencies(&cluster, &all, shard, leader, "timed", TIMED);
        latencies.sort_unstable();
        let floor = wan.quorum_rtt(leader, &all);
        assert!(
            latencies[0] >= floor,
            "{name}, leader in {}: a commit took {:?}, less than the quorum round trip {floor:?}",
            wan.region(leader),
            latencies[0]
        );
        rows.push(Row {
            placement: name,
            voters: voters.join(","),
            leader: format!("{} (node {leader})", wan.region(leader)),
            floor,
            latencies,
        });
    }
    // Pipelining: a round trip is paid per batch, not per command.
    let (latencies, total) = burst(&cluster, 0, leaders[0], BURST);
    let floor = wan.quorum_rtt(leaders[0], &all);
    assert!(
        latencies[0] >= floor,
        "a burst commit beat the quorum round trip"
    );
    let burst = BurstRow {
        placement: name,
        leader: wan.region(leaders[0]),
        floor,
        latencies,
        total,
    };
    // Every commit reached every replica, in one order.
    cluster.wait_converged(&all, &Acked::new());
    (rows, burst)
}

/// (a) Commit latency per placement: voters one per region with the leader in each region,
/// and two voters in A with one in B (the closest pair) led from A.
#[test]
fn commit_latency_per_placement() {
    let (mut rows, spread) = measure(
        "one voter per region",
        &[(1, "A"), (2, "B"), (3, "C")],
        &[1, 2, 3],
    );
    let (pair_rows, pair) = measure(
        "two in A, one in B",
        &[(1, "A"), (2, "A"), (3, "B")],
        &[1, 2, 3],
    );
    rows.extend(pair_rows);
    println!(
        "commit latency, {TIMED} sequential commits per row (ms; RTT A-B {}, B-C {}, A-C {}, \
         intra-region {}, jitter up to {} one way; fsync on)",
        millis(RTT_AB),
        millis(RTT_BC),
        millis(RTT_AC),
        millis(INTRA_RTT),
        millis(JITTER)
    );
    println!("| placement | voters | leader | quorum RTT | min | p50 | max |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let n = row.latencies.len();
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            row.placement,
            row.voters,
            row.leader,
            millis(row.floor),
            millis(row.latencies[0]),
            millis(row.latencies[n / 2]),
            millis(row.latencies[n - 1]),
        );
    }
    println!("{BURST} commands proposed at once to the leader of one shard (ms):");
    println!("| placement | leader | quorum RTT | first answer | p50 | last answer | commits/s |");
    println!("|---|---|---|---|---|---|---|");
    for row in [&spread, &pair] {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} |",
            row.placement,
            row.leader,
            millis(row.floor),
            millis(row.latencies[0]),
            millis(row.latencies[BURST / 2]),
            millis(row.total),
            BURST as f64 / row.total.as_secs_f64(),
        );
    }
    // The floors themselves, so a topology edit that breaks the table's premise shows here.
    let floors: Vec<Duration> = rows.iter().map(|row| row.floor).collect();
    assert_eq!(
        floors,
        [RTT_AB, RTT_AB, RTT_BC, INTRA_RTT, INTRA_RTT, RTT_AB]
    );
}

/// (b) One voter per region; region C is cut off while writes are in flight. Every shard keeps
/// a quorum in A and B: those C led elect a leader there, all accept writes; C's node stops
/// being ready. After the heal every acknowledged command is on every node at its position.
#[test]
fn losing_a_region_leaves_shards_with_a_quorum_elsewhere_writable() {
    const A: NodeId = 1;
    const B: NodeId = 2;
    const C: NodeId = 3;
    let all = [A, B, C];
    let wan = wan(&[(A, "A"), (B, "B"), (C, "C")]);
    let cluster = TestCluster::start_wrapped(&all, six_shards, delayed(&wan));
    // Two shards led from each region.
    for shard in 0..cluster.shards() {
        lead(&cluster, &all, shard, all[shard as usize % 3]);
    }
    let mut acked = cluster.propose_all(&all, "before", 3);

    // Writes to every shard's leader, then the cut before their frames arrive.
    let leaders = cluster.wait_for_leaders(&all);
    let in_flight: Vec<_> = (0..cluster.shards())
        .map(|shard| {
            let command = format!("across-{shard}").into_bytes();
            let leader = leaders[shard as usize];
            let rx = propose(&cluster.handle(leader), shard, command.clone());
            (shard, leader, command, rx)
        })
        .collect();
    let cut = Instant::now();
    cluster.isolate(C);
    // What the real transport reports once its connections fail.
    for survivor in [A, B] {
        cluster.handle(survivor).report_unreachable(C);
        cluster.handle(C).report_unreachable(survivor);
    }
    for (shard, leader, command, rx) in in_flight {
        match answer(&rx) {
            Ok(position) => acked.entry(shard).or_default().push((command, position)),
            // Only C's leaders may fail to commit: A and B are a quorum.
            Err(ProposeError::Dropped | ProposeError::NotLeader) if leader == C => {}
            Err(other) => panic!("shard {shard} led by {leader} refused a write: {other:?}"),
        }
    }

    // Every shard elects in A and B if it must, and accepts writes there.
    let during = cluster.propose_all(&[A, B], "cut", 3);
    let writable_after = cut.elapsed();
    let leaders = cluster.wait_for_leaders(&[A, B]);
    assert!(leaders.iter().all(|&leader| leader != C));
    assert_eq!(during.len() as u64, cluster.shards());
    merge(&mut acked, during);
    wait_until("the cut-off node to stop being ready", || {
        !cluster.handle(C).is_ready()
    });
    // Nothing of the cut reached C.
    for shard in 0..cluster.shards() {
        assert!(cluster
            .log(C, shard)
            .iter()
            .all(|command| !command.starts_with(b"cut-")));
    }
    println!(
        "region C cut off: every shard writable in A and B {:.0} ms after the cut \
         (election timeout 500-1000 ms)",
        millis(writable_after)
    );

    cluster.heal();
    let after = cluster.propose_all(&all, "after", 3);
    merge(&mut acked, after);
    cluster.wait_converged(&all, &acked);
    wait_until("the healed node to be ready", || {
        cluster.handle(C).is_ready()
    });
}

/// The decorator itself: frames of a link arrive in send order, none before its link's one-way
/// delay, and the seeded jitter does spread them.
#[test]
fn delay_transport_keeps_link_order_and_never_delivers_early() {
    type Delivered = Arc<Mutex<Vec<(NodeId, u32, Instant)>>>;
    struct Record(Delivered);
    impl Transport for Record {
        fn send(&mut self, to: NodeId, frame: Vec<u8>) {
            let n = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
            self.0.lock().expect("lock").push((to, n, Instant::now()));
        }
    }
    let mut wan = wan(&[(1, "A"), (2, "A"), (3, "B")]);
    wan.jitter = Duration::from_millis(20);
    let wan = Arc::new(wan);
    let delivered = Delivered::default();
    let mut transport =
        DelayTransport::new(1, Arc::clone(&wan), Box::new(Record(delivered.clone())));
    const FRAMES: u32 = 200;
    let mut sent = Vec::new();
    for n in 0..FRAMES {
        let to = if n % 2 == 0 { 2 } else { 3 };
        sent.push(Instant::now());
        transport.send(to, n.to_be_bytes().to_vec());
    }
    wait_until("every frame delivered", || {
        delivered.lock().expect("lock").len() == FRAMES as usize
    });
    let delivered = delivered.lock().expect("lock").clone();
    let mut last: BTreeMap<NodeId, u32> = BTreeMap::new();
    let mut most: BTreeMap<NodeId, Duration> = BTreeMap::new();
    for &(to, n, at) in &delivered {
        if let Some(&previous) = last.get(&to) {
            assert!(previous < n, "frame {n} to {to} overtook frame {previous}");
        }
        last.insert(to, n);
        let delay = at - sent[n as usize];
        let one_way = wan.one_way(1, to);
        assert!(
            delay >= one_way,
            "frame {n} to {to} after {delay:?} < {one_way:?}"
        );
        let most = most.entry(to).or_default();
        *most = (*most).max(delay);
    }
    for to in [2, 3] {
        assert!(
            most[&to] >= wan.one_way(1, to) + wan.jitter / 2,
            "no jitter on the link to {to}: at most {:?}",
            most[&to]
        );
    }
    drop(transport);
}

/// CPU time of this process so far (user + system), from `/proc/self/stat` in clock ticks of
/// 10 ms (USER_HZ is 100 on Linux); `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The idle cost of shards, for the capacity model (ops/capacity.md): three nodes over the WAN
/// with many shards and no traffic, at the node's default timing (ticks of 100 ms, heartbeats
/// every 2 ticks, elections after 10, hibernation after 30), once awake (hibernation off) and
/// once hibernating. Prints the process CPU and the frames per second over each window; asserts
/// that hibernating shards send nothing while awake ones keep heartbeating. The CPU figures are
/// meaningful only alone and in release:
/// `cargo test --release -p mimid-cluster --test wan idle_shards -- --nocapture`.
#[test]
fn idle_shards_cost_awake_and_hibernating() {
    const IDLE_SHARDS: u64 = 256;
    const WINDOW: Duration = Duration::from_secs(3);
    fn awake(config: &mut ClusterConfig) {
        config.shards = IDLE_SHARDS;
        config.tick_interval = Duration::from_millis(100);
        config.heartbeat_tick = 2;
        config.election_tick = 10;
        config.hibernate_after_ticks = 0;
    }
    fn hibernating(config: &mut ClusterConfig) {
        awake(config);
        config.hibernate_after_ticks = 30;
    }
    let all = [1, 2, 3];
    let wan = wan(&[(1, "A"), (2, "B"), (3, "C")]);
    let mut figures = Vec::new();
    for (name, tweak) in [
        ("awake", awake as fn(&mut ClusterConfig)),
        ("hibernating", hibernating),
    ] {
        let cluster = TestCluster::start_wrapped(&all, tweak, delayed(&wan));
        // One write per shard, so every shard has a leader and a log, then quiet.
        let acked = cluster.propose_all(&all, "idle", 1);
        cluster.wait_converged(&all, &acked);
        if name == "hibernating" {
            wait_until("every replica to hibernate", || {
                all.iter()
                    .all(|&id| cluster.handle(id).hibernating_groups() == IDLE_SHARDS)
            });
            // Heartbeats sent just before the leaders slept are still crossing the WAN, and
            // their answers follow: wait until the network has been quiet for a long round trip.
            let mut last = (cluster.net.sent().0, Instant::now());
            wait_until("the network to fall quiet", || {
                let frames = cluster.net.sent().0;
                if frames != last.0 {
                    last = (frames, Instant::now());
                }
                last.1.elapsed() >= 2 * RTT_AC
            });
        }
        let (frames_before, _) = cluster.net.sent();
        let cpu_before = process_cpu();
        let start = Instant::now();
        // A measurement window, not a synchronisation: nothing is waited for but the time.
        std::thread::sleep(WINDOW);
        let elapsed = start.elapsed();
        let cpu = process_cpu()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        let (frames_after, _) = cluster.net.sent();
        let frames = frames_after - frames_before;
        if name == "hibernating" {
            assert_eq!(frames, 0, "hibernating shards sent {frames} frames");
        } else {
            assert!(frames > 0, "awake shards sent no heartbeats");
        }
        figures.push((name, elapsed, cpu, frames));
    }
    println!(
        "idle cost of {IDLE_SHARDS} shards on 3 nodes in one process (tick 100 ms), per second:"
    );
    for (name, elapsed, cpu, frames) in figures {
        let secs = elapsed.as_secs_f64();
        let cpu = cpu.map_or("n/a".to_owned(), |cpu| {
            format!("{:.2}% of a core", cpu.as_secs_f64() / secs * 100.0)
        });
        println!("  {name}: CPU {cpu}, {:.0} frames/s", frames as f64 / secs);
    }
}
