//! Hibernation of idle shards (issue 4 item 1: "idle shards hibernate: no heartbeats while
//! nothing happens"; issue 6: the hibernating groups) over the in-memory harness (`common`):
//! quiet shards send nothing at all, a proposal and a read barrier wake them, a leader killed
//! while its shards sleep is replaced once the transport reports it, a follower cut off before
//! the notice catches up after the heal, and with hibernation off heartbeats keep flowing.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use mimid_cluster::{ClusterConfig, ClusterHandle, NodeId, ReadBarrierError};

use common::*;

/// Issue 4 asks for many shards per node.
const MANY_SHARDS: u64 = 16;
/// Driver ticks a test watches a cluster for: five election timeouts of the harness
/// (`election_tick` 20).
const WATCH_TICKS: u64 = 100;
/// The harness' `election_tick`.
const ELECTION_TICKS: u64 = 20;

fn many_shards(config: &mut ClusterConfig) {
    config.shards = MANY_SHARDS;
}

fn never_hibernate(config: &mut ClusterConfig) {
    config.shards = MANY_SHARDS;
    config.hibernate_after_ticks = 0;
}

/// Waits until every shard hibernates on every node of `among`, as the status and the count
/// both say.
fn wait_all_hibernating(cluster: &TestCluster, among: &[NodeId]) {
    wait_until("every shard to hibernate on every node", || {
        among.iter().all(|&id| {
            let handle = cluster.handle(id);
            handle.hibernating_groups() == cluster.shards()
                && handle.status().iter().all(|status| status.hibernating)
        })
    });
}

/// Waits until the driver of every node of `among` ticked `ticks` more times.
fn wait_ticks(cluster: &TestCluster, among: &[NodeId], ticks: u64) {
    let start: Vec<u64> = among
        .iter()
        .map(|&id| cluster.handle(id).metrics().ticks)
        .collect();
    wait_until("the drivers to tick", || {
        among
            .iter()
            .zip(&start)
            .all(|(&id, &start)| cluster.handle(id).metrics().ticks >= start + ticks)
    });
}

fn leader_changes(cluster: &TestCluster, among: &[NodeId]) -> BTreeMap<NodeId, u64> {
    among
        .iter()
        .map(|&id| (id, cluster.handle(id).metrics().leader_changes))
        .collect()
}

fn read_barrier(handle: &ClusterHandle<Recorder>, shard: u64) -> Result<(), ReadBarrierError> {
    let (tx, rx) = mpsc::channel();
    let done = Box::new(move |result| {
        let _ = tx.send(result);
    });
    handle.read_barrier(shard, TIMEOUT, done)?;
    rx.recv_timeout(TIMEOUT).expect("barrier answered in time")
}

/// Writes, then quiet: every shard on every node hibernates, after which the transports are
/// handed nothing, not a frame, for five election timeouts, and nobody campaigns or steps down
/// meanwhile (asleep, followers do not time out and leaders do not check their quorum).
#[test]
fn quiet_shards_hibernate_and_send_nothing() {
    let cluster = TestCluster::start(many_shards);
    let acked = cluster.propose_all(&NODES, "load", 5);
    cluster.wait_converged(&NODES, &acked);
    let leaders = cluster.wait_for_leaders(&NODES);
    wait_all_hibernating(&cluster, &NODES);
    // Responses to heartbeats a leader sent in the tick it fell asleep may still be on their
    // way; they wake nothing.
    wait_ticks(&cluster, &NODES, 5);
    wait_all_hibernating(&cluster, &NODES);
    let changes = leader_changes(&cluster, &NODES);
    let sent = cluster.net.sent();
    let metrics_sent: Vec<u64> = NODES
        .iter()
        .map(|&id| cluster.handle(id).metrics().messages_sent)
        .collect();

    wait_ticks(&cluster, &NODES, WATCH_TICKS);
    assert_eq!(
        cluster.net.sent(),
        sent,
        "(frames, messages) handed to the transports by hibernating shards"
    );
    let metrics_after: Vec<u64> = NODES
        .iter()
        .map(|&id| cluster.handle(id).metrics().messages_sent)
        .collect();
    assert_eq!(metrics_after, metrics_sent);
    wait_all_hibernating(&cluster, &NODES);
    assert_eq!(cluster.wait_for_leaders(&NODES), leaders);
    assert_eq!(leader_changes(&cluster, &NODES), changes);
    for (id, statuses) in cluster.statuses() {
        assert!(
            cluster.handle(id).is_ready(),
            "node {id} ready while asleep"
        );
        for status in statuses {
            assert_eq!(status.leader, Some(leaders[status.shard as usize]));
            if status.leader == Some(id) {
                // The leader saw every member caught up before it slept.
                let last = status.commit;
                assert_eq!(status.applied, last);
                assert!(status.progress.values().all(|&matched| matched == last));
            }
        }
    }
}

/// A proposal to a hibernating shard wakes its leader, commits on every replica and is applied
/// everywhere; the woken leaders keep their leadership (check-quorum does not count the silence
/// they slept through) and the shards fall asleep again. A read barrier on a follower of a
/// sleeping shard wakes the leader through its read-index request and succeeds.
#[test]
fn a_proposal_to_a_hibernating_shard_commits_on_every_replica() {
    let cluster = TestCluster::start(many_shards);
    let mut acked = cluster.propose_all(&NODES, "before", 3);
    cluster.wait_converged(&NODES, &acked);
    let leaders = cluster.wait_for_leaders(&NODES);
    wait_all_hibernating(&cluster, &NODES);
    // Asleep for longer than an election timeout.
    wait_ticks(&cluster, &NODES, 2 * ELECTION_TICKS);
    let changes = leader_changes(&cluster, &NODES);

    let woken = cluster.propose_all(&NODES, "woken", 1);
    for shard in 0..MANY_SHARDS {
        assert_eq!(woken[&shard].len(), 1);
        assert_eq!(
            woken[&shard][0].1, 4,
            "shard {shard}: applied after the first 3"
        );
    }
    merge(&mut acked, woken);
    cluster.wait_converged(&NODES, &acked);
    // Awake again for more than an election timeout before they sleep: check-quorum ran and
    // kept every leader.
    wait_all_hibernating(&cluster, &NODES);
    assert_eq!(cluster.wait_for_leaders(&NODES), leaders);
    assert_eq!(leader_changes(&cluster, &NODES), changes);

    for shard in 0..MANY_SHARDS {
        let leader = leaders[shard as usize];
        let follower = NODES
            .into_iter()
            .find(|&id| id != leader)
            .expect("a follower");
        assert_eq!(read_barrier(&cluster.handle(follower), shard), Ok(()));
    }
    wait_all_hibernating(&cluster, &NODES);
    assert_eq!(leader_changes(&cluster, &NODES), changes);
}

/// The node leading the most shards dies while every shard sleeps. Until the transport says
/// so, nothing happens: the survivors' replicas do not tick, so none times out, and they still
/// name the dead leader. Once they hear it is unreachable they wake and elect new leaders within
/// the usual election timeout, which take writes; the restarted node catches up and the shards
/// fall asleep again.
#[test]
fn a_leader_killed_while_its_shards_sleep_is_replaced_once_reported_unreachable() {
    let mut cluster = TestCluster::start(many_shards);
    let mut acked = cluster.propose_all(&NODES, "before", 3);
    cluster.wait_converged(&NODES, &acked);
    let leaders = cluster.wait_for_leaders(&NODES);
    wait_all_hibernating(&cluster, &NODES);
    let victim = TestCluster::busiest_leader(&leaders);
    let survivors: Vec<NodeId> = NODES.into_iter().filter(|&id| id != victim).collect();
    let orphaned: Vec<u64> = (0..MANY_SHARDS)
        .filter(|&shard| leaders[shard as usize] == victim)
        .collect();
    cluster.stop_node(victim);

    wait_ticks(&cluster, &survivors, WATCH_TICKS);
    for &id in &survivors {
        let handle = cluster.handle(id);
        for &shard in &orphaned {
            assert_eq!(
                handle.leader(shard),
                Some(victim),
                "node {id} shard {shard}"
            );
            assert!(handle.shard_status(shard).expect("shard").hibernating);
        }
    }

    // The transport's peer-down signal.
    let ticks_before: Vec<u64> = survivors
        .iter()
        .map(|&id| cluster.handle(id).metrics().ticks)
        .collect();
    let reported = Instant::now();
    for &id in &survivors {
        cluster.handle(id).report_unreachable(victim);
    }
    let new_leaders = cluster.wait_for_leaders(&survivors);
    let elapsed = reported.elapsed();
    let ticks = survivors
        .iter()
        .zip(&ticks_before)
        .map(|(&id, &before)| cluster.handle(id).metrics().ticks - before)
        .max()
        .expect("survivors");
    println!(
        "{} shards of node {victim} re-elected {elapsed:?} ({ticks} ticks) after it was \
         reported unreachable",
        orphaned.len()
    );
    assert!(new_leaders.iter().all(|&leader| leader != victim));
    // A randomised election timeout is 20 to 40 ticks, then a pre-vote and a vote round.
    assert!(
        ticks <= 3 * ELECTION_TICKS,
        "re-election took {ticks} ticks ({elapsed:?})"
    );
    merge(&mut acked, cluster.propose_all(&survivors, "after", 3));
    cluster.wait_converged(&survivors, &acked);

    cluster.start_node(victim);
    cluster.wait_converged(&NODES, &acked);
    wait_all_hibernating(&cluster, &NODES);
}

/// A follower cut off before the leaders' notices (and before further writes) misses both:
/// the leaders cannot hibernate without its acknowledgement, so they keep ticking (their own
/// followers may sleep) while it, awake, loses its leaders. Healed, it catches up with
/// everything, unseats nobody (pre-vote), and then every shard hibernates.
#[test]
fn a_follower_that_missed_the_notice_converges_after_the_heal() {
    let cluster = TestCluster::start(many_shards);
    let mut acked = cluster.propose_all(&NODES, "before", 3);
    let cut: NodeId = 3;
    let others = [1, 2];
    cluster.isolate(cut);
    merge(&mut acked, cluster.propose_all(&others, "while-cut", 3));
    cluster.wait_converged(&others, &acked);
    let leaders = cluster.wait_for_leaders(&others);

    wait_ticks(&cluster, &others, WATCH_TICKS);
    let cut_handle = cluster.handle(cut);
    assert_eq!(cut_handle.hibernating_groups(), 0, "the cut-off node slept");
    for (id, statuses) in cluster.statuses() {
        if id == cut {
            continue;
        }
        for status in statuses {
            if status.leader == Some(id) {
                assert!(
                    !status.hibernating,
                    "shard {} hibernated without node {cut}",
                    status.shard
                );
            }
        }
    }
    let changes = leader_changes(&cluster, &others);

    cluster.heal();
    cluster.wait_converged(&NODES, &acked);
    wait_all_hibernating(&cluster, &NODES);
    assert_eq!(cluster.wait_for_leaders(&NODES), leaders);
    assert_eq!(leader_changes(&cluster, &others), changes);
    wait_until("the healed node to be ready", || cut_handle.is_ready());
}

/// A hibernating leader whose node is cut off wakes when its transport reports a member
/// unreachable, and steps down by check-quorum one election timeout later: waking reset its
/// election clock and the answers it had before it slept, which prove nothing now. The
/// majority, told the same about it, elects leaders of its own.
#[test]
fn a_leader_woken_into_a_partition_steps_down_within_an_election_timeout() {
    let cluster = TestCluster::start(many_shards);
    let mut acked = cluster.propose_all(&NODES, "before", 3);
    cluster.wait_converged(&NODES, &acked);
    let leaders = cluster.wait_for_leaders(&NODES);
    wait_all_hibernating(&cluster, &NODES);
    let cut = TestCluster::busiest_leader(&leaders);
    let others: Vec<NodeId> = NODES.into_iter().filter(|&id| id != cut).collect();
    let led: Vec<u64> = (0..MANY_SHARDS)
        .filter(|&shard| leaders[shard as usize] == cut)
        .collect();
    cluster.isolate(cut);
    let handle = cluster.handle(cut);
    let ticks_before = handle.metrics().ticks;
    handle.report_unreachable(others[0]);
    // The tick count read before each look that still found one of them leading: they
    // stepped down at that count or later. (A count read once the step-down is seen adds the
    // time this thread took to look again, as the awake driver ticks on: a loaded machine's
    // scheduler alone could push that past the bound.)
    let mut leading_at = ticks_before;
    wait_until("the cut-off leaders to step down", || {
        let ticks = handle.metrics().ticks;
        let down = led.iter().all(|&shard| handle.leader(shard) != Some(cut));
        if !down {
            leading_at = ticks;
        }
        down
    });
    let ticks = leading_at - ticks_before;
    let seen = handle.metrics().ticks - ticks_before;
    println!(
        "{} leaders of node {cut} stepped down {ticks} ticks after waking (seen at {seen})",
        led.len()
    );
    assert!(
        ticks <= ELECTION_TICKS + 5,
        "still led {ticks} ticks after waking, more than an election timeout"
    );

    for &id in &others {
        cluster.handle(id).report_unreachable(cut);
    }
    merge(&mut acked, cluster.propose_all(&others, "majority", 3));
    cluster.heal();
    cluster.wait_converged(&NODES, &acked);
    wait_all_hibernating(&cluster, &NODES);
}

/// `hibernate_after_ticks = 0`: quiet shards keep ticking and heartbeating.
#[test]
fn with_hibernation_off_heartbeats_keep_flowing() {
    let cluster = TestCluster::start(never_hibernate);
    let acked = cluster.propose_all(&NODES, "load", 3);
    cluster.wait_converged(&NODES, &acked);
    let leaders = cluster.wait_for_leaders(&NODES);
    // Longer than the default `hibernate_after_ticks` (30) would take.
    wait_ticks(&cluster, &NODES, 2 * 30);
    let (_, messages) = cluster.net.sent();
    let started = Instant::now();
    wait_ticks(&cluster, &NODES, WATCH_TICKS);
    let (_, after) = cluster.net.sent();
    // Every leader heartbeats its two followers every two ticks and each answers: about
    // 16 x 2 x 2 x 50 = 3200 messages; ask for a quarter, so slow ticks do not fail the test.
    let expected = MANY_SHARDS * 2 * 2 * (WATCH_TICKS / 2) / 4;
    assert!(
        after - messages >= expected,
        "{} messages in {WATCH_TICKS} ticks ({:?}), expected at least {expected}",
        after - messages,
        started.elapsed()
    );
    for (id, statuses) in cluster.statuses() {
        assert_eq!(cluster.handle(id).hibernating_groups(), 0);
        assert!(statuses.iter().all(|status| !status.hibernating));
    }
    assert_eq!(cluster.wait_for_leaders(&NODES), leaders);
}
