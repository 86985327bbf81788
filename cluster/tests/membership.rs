//! Membership changes and leadership transfer (`ClusterHandle::change_members`,
//! `transfer_leader`, `shard_status`) on the in-memory harness (`common`): a fourth node joins
//! a loaded cluster as a learner, catches up by snapshot, is promoted, and an original node is
//! removed; leadership is drained from a node; refused changes leave the membership as it was;
//! every node reports the same membership and leader; a removed node is added back with the
//! replica it kept (`removed_node_added_back`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mimid_cluster::{
    ClusterConfig, ClusterHandle, Membership, MembershipChange, MembershipError, NodeId,
    ProposeError, ShardId, ShardStatus, TransferError, Transport,
};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use common::*;

fn change(
    handle: &ClusterHandle<Recorder>,
    shard: ShardId,
    change: MembershipChange,
) -> Result<Membership, MembershipError> {
    let (tx, rx) = mpsc::channel();
    let done = Box::new(move |result| {
        let _ = tx.send(result);
    });
    handle.change_members(shard, change, done)?;
    rx.recv_timeout(TIMEOUT).expect("change answered in time")
}

fn transfer(
    handle: &ClusterHandle<Recorder>,
    shard: ShardId,
    to: NodeId,
) -> Result<(), TransferError> {
    let (tx, rx) = mpsc::channel();
    let done = Box::new(move |result| {
        let _ = tx.send(result);
    });
    handle.transfer_leader(shard, to, done)?;
    rx.recv_timeout(TIMEOUT).expect("transfer answered in time")
}

/// Elections after 500-1000 ms (50 ticks) rather than the harness' 200-400 ms, for tests
/// whose subject is not an election: a loaded machine stalls a driver for a few hundred ms at
/// times, and an election then drops a pending change, moves the lead between two steps, or
/// commits a removal through a leader still probing the removed node, which then never
/// hears of it (`membership` module docs, "Removing a node").
fn patient(config: &mut ClusterConfig) {
    config.election_tick = 50;
}

fn membership(voters: &[NodeId], learners: &[NodeId]) -> Membership {
    Membership {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
    }
}

/// Waits until a node of `among` leads `shard` by its own account and every other node of
/// `among` that knows a leader names it.
fn leader_of(cluster: &TestCluster, among: &[NodeId], shard: ShardId) -> NodeId {
    let mut found = 0;
    wait_until("the shard to have a leader", || {
        let named: Vec<NodeId> = among
            .iter()
            .filter_map(|&id| cluster.handle(id).leader(shard))
            .collect();
        let Some(&leader) = named.first() else {
            return false;
        };
        found = leader;
        named.iter().all(|&id| id == leader)
            && among.contains(&leader)
            && cluster.handle(leader).leader(shard) == Some(leader)
    });
    found
}

/// The status of `shard` on the node of `among` that leads it by its own account, at the
/// highest term should a deposed leader not know it yet; `None` while none does. For waits
/// on a leader's view: leadership may move while they wait (a stalled driver, under load),
/// and a node that no longer leads reports no progress at all.
fn leading_status(cluster: &TestCluster, among: &[NodeId], shard: ShardId) -> Option<ShardStatus> {
    among
        .iter()
        .map(|&id| cluster.handle(id).shard_status(shard).expect("shard"))
        .zip(among)
        .filter(|(status, &id)| status.leader == Some(id))
        .map(|(status, _)| status)
        .max_by_key(|status| status.term)
}

/// Waits until the leader of `shard` among `among` matched on `node` everything the leader
/// had committed when asked: it then replicates to `node` normally, so `node` hears of a
/// change that removes it (`membership` module docs, "Removing a node").
fn wait_replicating(cluster: &TestCluster, among: &[NodeId], shard: ShardId, node: NodeId) {
    let leader = cluster.handle(leader_of(cluster, among, shard));
    let commit = leader.shard_status(shard).expect("shard").commit;
    wait_until("the leader to replicate to the node", || {
        leading_status(cluster, among, shard).is_some_and(|status| {
            status
                .progress
                .get(&node)
                .is_some_and(|&matched| matched >= commit)
        })
    });
}

/// Applies `wanted` through the shard's leader among `among`, retrying while leadership is
/// settling (`NotLeader`; `ChangeInProgress` while a new leader has not applied its log yet)
/// or the learner is still catching up (`LearnerBehind`), and after `Dropped`: its leader
/// lost the lead before the change committed (a driver stalled past an election timeout, as
/// on a loaded machine). The next leader may commit it all the same; then the next try is
/// refused as done already, and the membership it made is the answer.
fn change_on_leader(
    cluster: &TestCluster,
    among: &[NodeId],
    shard: ShardId,
    wanted: MembershipChange,
) -> Membership {
    let deadline = Instant::now() + TIMEOUT;
    let mut dropped = false;
    loop {
        let leader = leader_of(cluster, among, shard);
        match change(&cluster.handle(leader), shard, wanted) {
            Ok(membership) => return membership,
            Err(
                MembershipError::NotLeader
                | MembershipError::ChangeInProgress
                | MembershipError::LearnerBehind(_),
            ) if Instant::now() < deadline => {}
            Err(MembershipError::Dropped) if Instant::now() < deadline => dropped = true,
            Err(other) => {
                // The refusing leader applied the configuration it checked, and published it
                // at the end of that turn, before the refusal.
                let status = cluster.handle(leader).shard_status(shard).expect("shard");
                if dropped && in_effect(wanted, &status) {
                    return membership(&status.voters, &status.learners);
                }
                panic!("shard {shard}: {wanted:?} failed: {other:?}")
            }
        }
    }
}

/// Whether the applied configuration `status` shows has what `change` makes.
fn in_effect(change: MembershipChange, status: &ShardStatus) -> bool {
    match change {
        MembershipChange::AddLearner(node) => status.learners.contains(&node),
        MembershipChange::Promote(node) => status.voters.contains(&node),
        MembershipChange::Remove(node) => {
            !status.voters.contains(&node) && !status.learners.contains(&node)
        }
    }
}

/// Makes `target` lead `shard`, with every node of `among` naming it, by leadership transfer:
/// the set-up of a later step, not what a test checks. A transfer that times out, or meets a
/// leader that just lost the lead (a stalled driver, under load), is asked again of the
/// leader of the moment.
fn lead(cluster: &TestCluster, among: &[NodeId], shard: ShardId, target: NodeId) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let leader = leader_of(cluster, among, shard);
        if leader == target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {target} never led shard {shard}"
        );
        match transfer(&cluster.handle(leader), shard, target) {
            Ok(())
            | Err(
                TransferError::NotLeader
                | TransferError::TimedOut { .. }
                | TransferError::InProgress(_)
                | TransferError::Busy,
            ) => {}
            Err(other) => panic!("shard {shard}: transfer to {target} failed: {other:?}"),
        }
    }
}

/// Proposals flowing on every shard from a thread of their own, each to the leader the
/// running nodes name; acknowledged ones are kept with their log positions.
struct Load {
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicU64>,
    thread: JoinHandle<Acked>,
}

impl Load {
    fn start(net: Arc<Net>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_count = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let acked_count = Arc::clone(&acked_count);
            std::thread::spawn(move || {
                let mut acked = Acked::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let handles = net.handles.lock().expect("handles lock").clone();
                    let mut in_flight = Vec::new();
                    for shard in 0..SHARDS {
                        let leader = handles
                            .values()
                            .filter_map(|handle| handle.leader(shard))
                            .find(|leader| handles.contains_key(leader));
                        let Some(leader) = leader else { continue };
                        for _ in 0..4 {
                            n += 1;
                            let command = format!("load-{shard}-{n}").into_bytes();
                            let rx = propose(&handles[&leader], shard, command.clone());
                            in_flight.push((shard, command, rx));
                        }
                    }
                    drop(handles);
                    if in_flight.is_empty() {
                        // No leader known anywhere right now: pace the retry, nothing waits on it.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    for (shard, command, rx) in in_flight {
                        // Refusals and drops are expected while leadership moves; only
                        // acknowledged commands must survive.
                        if let Ok(position) = answer(&rx) {
                            acked.entry(shard).or_default().push((command, position));
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                acked
            })
        };
        Load {
            stop,
            acked_count,
            thread,
        }
    }

    /// Waits until at least `more` further commands were acknowledged.
    fn wait_for_more(&self, what: &str, more: u64) {
        let target = self.acked_count.load(Ordering::Relaxed) + more;
        wait_until(what, || self.acked_count.load(Ordering::Relaxed) >= target);
    }

    fn stop(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

#[test]
fn add_a_fourth_node_as_learner_then_promote_then_remove_an_original_under_load() {
    let mut cluster = TestCluster::start(|config| {
        patient(config);
        config.snapshot_interval = 16
    });
    // Past the snapshot interval: every shard's log is compacted before node 4 exists.
    let mut acked = cluster.propose_all(&NODES, "before", 20);
    cluster.wait_converged(&NODES, &acked);
    for id in NODES {
        let handle = cluster.handle(id);
        wait_until("every shard to snapshot and compact", || {
            handle.metrics().snapshots_taken >= SHARDS
        });
    }
    // Node 1, to be removed, leads shard 0 at least: it must hand leadership over first.
    lead(&cluster, &NODES, 0, 1);
    let load = Load::start(Arc::clone(&cluster.net));
    load.wait_for_more("the load to run", 20);

    cluster.start_joining_node(4);
    let fourth = cluster.handle(4);
    // Uninitialised: no configuration, no leader, never campaigns, not ready.
    for status in fourth.status() {
        assert_eq!((status.voters.len(), status.learners.len()), (0, 0));
    }
    assert!(!fourth.is_ready());

    let all = [1, 2, 3, 4];
    for shard in 0..SHARDS {
        let added = change_on_leader(&cluster, &NODES, shard, MembershipChange::AddLearner(4));
        assert_eq!(added, membership(&[1, 2, 3], &[4]), "shard {shard}");

        // Caught up: the leader has replicated to it what was committed after the change
        // (the leader of the moment: under the load, leadership may move meanwhile).
        let leader = leader_of(&cluster, &NODES, shard);
        let commit = cluster
            .handle(leader)
            .shard_status(shard)
            .expect("shard")
            .commit;
        wait_until("the learner to catch up", || {
            let leader_view = leading_status(&cluster, &NODES, shard);
            let own_view = fourth.shard_status(shard).expect("shard");
            leader_view.is_some_and(|view| view.progress.get(&4).is_some_and(|&m| m >= commit))
                && own_view.applied >= commit
                && own_view.learners == [4]
        });
        assert!(
            !fourth.shard_status(shard).expect("shard").voters.is_empty(),
            "the learner knows the voters from the snapshot"
        );
        // A learner takes no proposals.
        let rx = propose(&fourth, shard, b"at a learner".to_vec());
        assert_eq!(answer(&rx), Err(ProposeError::NotLeader));

        let promoted = change_on_leader(&cluster, &all, shard, MembershipChange::Promote(4));
        assert_eq!(promoted, membership(&[1, 2, 3, 4], &[]), "shard {shard}");

        // The leader never removes itself: node 1 hands leadership over first (to the new
        // node, which may not have applied its promotion yet: the transfer waits for it).
        if leader_of(&cluster, &all, shard) == 1 {
            assert_eq!(
                change(&cluster.handle(1), shard, MembershipChange::Remove(1)),
                Err(MembershipError::RemovesLeader(1))
            );
            lead(&cluster, &all, shard, 4);
        }
        // A node the leader is not replicating to normally when it is removed (a new leader
        // still probing it, say) may never hear of its removal (`membership` module docs).
        // Node 1 is healthy: wait until the leader replicates to it, so it does.
        wait_replicating(&cluster, &all, shard, 1);
        let removed = change_on_leader(&cluster, &all, shard, MembershipChange::Remove(1));
        assert_eq!(removed, membership(&[2, 3, 4], &[]), "shard {shard}");
        load.wait_for_more("writes to continue after the change", 8);
    }
    // Node 4 started empty and got every shard from a snapshot, not from the log.
    assert!(
        fourth.metrics().snapshots_received >= SHARDS,
        "{:?}",
        fourth.metrics()
    );

    // Node 1 applied its removal everywhere: no leader, no proposals, no readiness.
    let first = cluster.handle(1);
    wait_until("node 1 to apply its removal from every shard", || {
        first
            .status()
            .iter()
            .all(|status| status.voters == [2, 3, 4] && status.leader.is_none())
    });
    for shard in 0..SHARDS {
        assert_eq!(first.leader(shard), None);
        let rx = propose(&first, shard, b"at a removed node".to_vec());
        assert_eq!(answer(&rx), Err(ProposeError::NotLeader));
    }
    wait_until("node 1 to report not ready", || !first.is_ready());
    drop(first);
    cluster.stop_node(1);
    let rest = [2, 3, 4];
    load.wait_for_more("writes to continue without node 1", 20);
    merge(&mut acked, load.stop());

    merge(&mut acked, cluster.propose_all(&rest, "after", 10));
    cluster.wait_converged(&rest, &acked);
    wait_until("node 4 to be ready", || cluster.handle(4).is_ready());
    assert_eq!(fourth.metrics().failed_shards, 0);

    // Restarted, node 4 recovers its membership from its own storage.
    drop(fourth);
    cluster.stop_node(4);
    cluster.start_node(4);
    merge(&mut acked, cluster.propose_all(&rest, "restarted", 5));
    cluster.wait_converged(&rest, &acked);
    for status in cluster.handle(4).status() {
        assert_eq!(status.voters, [2, 3, 4]);
    }
}

/// A shard whose only voter is the leader commits its own entries in the second half of a
/// driver turn (`Group::handle_persisted`: raft-rs commits them once they are persisted), with
/// the new commit index still staged. A conf change applied there makes raft-rs read the log
/// for the new member at once (`post_conf_change` probes it). That read used to meet the
/// staged write and, in debug builds, the storage's check stopped the shard group (`init` on a
/// node alone, then `mimid node add`, takes this path for every shard).
#[test]
fn a_second_node_joins_shards_with_a_single_voter_and_is_promoted() {
    let mut cluster = TestCluster::start_nodes(&[1], no_tweak);
    let mut acked = cluster.propose_all(&[1], "alone", 10);
    cluster.wait_converged(&[1], &acked);

    cluster.start_joining_node(2);
    let pair = [1, 2];
    for shard in 0..SHARDS {
        let added = change_on_leader(&cluster, &[1], shard, MembershipChange::AddLearner(2));
        assert_eq!(added, membership(&[1], &[2]), "shard {shard}");
        // Entries committed by node 1 alone while node 2 learns, read back for node 2.
        let rx = propose(
            &cluster.handle(1),
            shard,
            format!("learning-{shard}").into_bytes(),
        );
        let position = answer(&rx).expect("the single voter commits alone");
        acked
            .entry(shard)
            .or_default()
            .push((format!("learning-{shard}").into_bytes(), position));
        let promoted = change_on_leader(&cluster, &[1], shard, MembershipChange::Promote(2));
        assert_eq!(promoted, membership(&[1, 2], &[]), "shard {shard}");
    }
    for id in pair {
        let handle = cluster.handle(id);
        wait_until("both nodes to apply both changes", || {
            handle
                .status()
                .iter()
                .all(|status| status.voters == pair && status.learners.is_empty())
        });
        assert_eq!(handle.metrics().failed_shards, 0, "node {id}");
    }
    // Two voters: every write now needs node 2 too, and both replicas hold every one.
    merge(&mut acked, cluster.propose_all(&pair, "pair", 10));
    cluster.wait_converged(&pair, &acked);
    wait_until("node 2 to be ready", || cluster.handle(2).is_ready());
    // Both vote: the leader cut off from the other commits nothing (check-quorum deposes it
    // within an election timeout, which drops the proposal).
    let shard = 0;
    let leader = leader_of(&cluster, &pair, shard);
    let other = if leader == 1 { 2 } else { 1 };
    cluster.isolate(other);
    let rx = propose(&cluster.handle(leader), shard, b"without a quorum".to_vec());
    assert_eq!(answer(&rx), Err(ProposeError::Dropped));
    cluster.heal();
    merge(&mut acked, cluster.propose_all(&pair, "healed", 2));
    cluster.wait_converged(&pair, &acked);
    for id in pair {
        assert_eq!(cluster.handle(id).metrics().failed_shards, 0, "node {id}");
    }
}

#[test]
fn transfer_leader_moves_leadership() {
    let cluster = TestCluster::start(no_tweak);
    let mut acked = cluster.propose_all(&NODES, "before", 5);
    let leaders = cluster.wait_for_leaders(&NODES);
    let drained = TestCluster::busiest_leader(&leaders);
    let others: Vec<NodeId> = NODES.iter().copied().filter(|&id| id != drained).collect();
    let handle = cluster.handle(drained);

    // Refusals: on a follower, to a non-voter; to itself it is done at once.
    let (led, _) = leaders
        .iter()
        .enumerate()
        .find(|(_, &leader)| leader == drained)
        .expect("it leads a shard");
    let led = led as ShardId;
    assert_eq!(
        transfer(&cluster.handle(others[0]), led, others[1]),
        Err(TransferError::NotLeader)
    );
    assert_eq!(transfer(&handle, led, 9), Err(TransferError::NotAVoter(9)));
    assert_eq!(transfer(&handle, led, drained), Ok(()));
    assert_eq!(
        handle.transfer_leader(SHARDS, others[0], Box::new(|_| {})),
        Err(TransferError::UnknownShard)
    );

    // Drain: every shard it leads goes to another node.
    for (shard, &leader) in leaders.iter().enumerate() {
        if leader != drained {
            continue;
        }
        let shard = shard as ShardId;
        let to = others[shard as usize % others.len()];
        assert_eq!(transfer(&handle, shard, to), Ok(()), "shard {shard}");
        // Published at the end of the driver turns that saw it.
        wait_until("both nodes to publish the new leader", || {
            handle.leader(shard) == Some(to) && cluster.handle(to).leader(shard) == Some(to)
        });
    }
    let after = cluster.wait_for_leaders(&NODES);
    assert!(
        after.iter().all(|&leader| leader != drained),
        "still leads: {after:?}"
    );
    merge(&mut acked, cluster.propose_all(&NODES, "drained", 10));
    cluster.wait_converged(&NODES, &acked);
    assert_eq!(
        cluster.wait_for_leaders(&NODES),
        after,
        "leadership moved back"
    );

    // A target that cannot be reached: proposals are refused while the transfer runs, then
    // the transfer times out (twice the 200 ms election timeout) and the leader carries on.
    let shard = 0;
    let leader = after[0];
    let target = *NODES
        .iter()
        .find(|&&id| id != leader)
        .expect("another node");
    cluster.isolate(target);
    let leader_handle = cluster.handle(leader);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    leader_handle
        .transfer_leader(
            shard,
            target,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .expect("queued");
    wait_until("a proposal refused during the transfer", || {
        answer(&propose(&leader_handle, shard, b"during".to_vec())) == Err(ProposeError::NotLeader)
    });
    let outcome = rx.recv_timeout(TIMEOUT).expect("answered");
    assert_eq!(
        outcome,
        Err(TransferError::TimedOut {
            leader: Some(leader)
        })
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    cluster.heal();
    let rx = propose(&leader_handle, shard, b"after the timeout".to_vec());
    assert!(answer(&rx).is_ok(), "the leader takes proposals again");
}

#[test]
fn refused_changes_leave_the_membership_unchanged() {
    // Each refusal below is asked of the leader of the moment: a spurious election would
    // answer `NotLeader` instead.
    let cluster = TestCluster::start(patient);
    cluster.wait_for_leaders(&NODES);
    let three = membership(&[1, 2, 3], &[]);
    let members = |shard: ShardId| -> Vec<Membership> {
        NODES
            .iter()
            .map(|&id| {
                let status = cluster.handle(id).shard_status(shard).expect("shard");
                membership(&status.voters, &status.learners)
            })
            .collect()
    };

    // A second change while the first is pending: the leader is cut off from its followers,
    // so the first cannot commit, and the second, queued right behind it, is refused.
    let shard = 1;
    let leader = leader_of(&cluster, &NODES, shard);
    let followers: Vec<NodeId> = NODES.iter().copied().filter(|&id| id != leader).collect();
    followers.iter().for_each(|&id| cluster.isolate(id));
    let handle = cluster.handle(leader);
    let (first_tx, first) = mpsc::channel();
    handle
        .change_members(
            shard,
            MembershipChange::AddLearner(4),
            Box::new(move |result| {
                let _ = first_tx.send(result);
            }),
        )
        .expect("queued");
    assert_eq!(
        change(&handle, shard, MembershipChange::AddLearner(5)),
        Err(MembershipError::ChangeInProgress)
    );
    cluster.heal();
    // Healed in time the first commits; had check-quorum deposed the leader first, it was
    // dropped (and may still commit under the next leader). Either way the refused one left
    // no trace. An entry through the current leader settles what the log holds before it.
    let first = first.recv_timeout(TIMEOUT).expect("answered");
    match &first {
        Ok(applied) => assert_eq!(*applied, membership(&[1, 2, 3], &[4])),
        Err(MembershipError::Dropped) => {}
        Err(other) => panic!("the first change failed: {other:?}"),
    }
    cluster.propose_all(&NODES, "settle", 1);
    wait_until("every node to apply the same membership", || {
        let seen = members(shard);
        seen.windows(2).all(|pair| pair[0] == pair[1])
            && seen[0].voters == [1, 2, 3]
            && seen[0].learners.iter().all(|&id| id == 4)
            && (first.is_err() || seen[0].learners == [4])
    });
    // Remove the never-started learner again, if it was added.
    if members(shard)[0].learners == [4] {
        assert_eq!(
            change_on_leader(&cluster, &NODES, shard, MembershipChange::Remove(4)),
            three
        );
    }

    // Refusals by rule, on shard 0's leader.
    let shard = 0;
    let leader = leader_of(&cluster, &NODES, shard);
    let handle = cluster.handle(leader);
    let follower = *NODES.iter().find(|&&id| id != leader).expect("a follower");
    let cases = [
        (
            MembershipChange::AddLearner(0),
            MembershipError::InvalidNode,
        ),
        (
            MembershipChange::AddLearner(follower),
            MembershipError::AlreadyMember(follower),
        ),
        (
            MembershipChange::Promote(follower),
            MembershipError::NotALearner(follower),
        ),
        (
            MembershipChange::Promote(7),
            MembershipError::NotALearner(7),
        ),
        (MembershipChange::Remove(7), MembershipError::NotAMember(7)),
        (
            MembershipChange::Remove(leader),
            MembershipError::RemovesLeader(leader),
        ),
    ];
    for (wanted, refusal) in cases {
        assert_eq!(change(&handle, shard, wanted), Err(refusal), "{wanted:?}");
    }
    assert_eq!(
        change(
            &cluster.handle(follower),
            shard,
            MembershipChange::AddLearner(4)
        ),
        Err(MembershipError::NotLeader)
    );
    assert_eq!(
        handle.change_members(SHARDS, MembershipChange::AddLearner(4), Box::new(|_| {})),
        Err(MembershipError::UnknownShard)
    );
    // A learner that never answered cannot be promoted (it would weaken the quorum).
    assert_eq!(
        change(&handle, shard, MembershipChange::AddLearner(9)),
        Ok(membership(&[1, 2, 3], &[9]))
    );
    assert_eq!(
        change(&handle, shard, MembershipChange::Promote(9)),
        Err(MembershipError::LearnerBehind(9))
    );
    assert_eq!(
        change(&handle, shard, MembershipChange::Remove(9)),
        Ok(three.clone())
    );
    wait_until("every node to agree", || {
        members(shard).iter().all(|seen| *seen == three)
    });

    // Down to the leader alone, which cannot remove itself as the last voter.
    let mut voters = vec![1, 2, 3];
    for id in NODES.iter().copied().filter(|&id| id != leader) {
        voters.retain(|&voter| voter != id);
        assert_eq!(
            change(&handle, shard, MembershipChange::Remove(id)),
            Ok(membership(&voters, &[]))
        );
    }
    assert_eq!(
        change(&handle, shard, MembershipChange::Remove(leader)),
        Err(MembershipError::LastVoter(leader))
    );
    let alone = handle.shard_status(shard).expect("shard");
    assert_eq!((alone.voters, alone.learners), (vec![leader], vec![]));
    // The single voter still commits alone.
    let rx = propose(&handle, shard, b"alone".to_vec());
    assert!(answer(&rx).is_ok());
    // The other shards kept all three voters.
    for other in 1..SHARDS {
        let seen = members(other);
        assert!(
            seen.iter().all(|seen| *seen == three),
            "shard {other}: {seen:?}"
        );
    }
}

#[test]
fn status_reports_voters_learners_and_leader_consistently_across_nodes() {
    let mut cluster = TestCluster::start(no_tweak);
    let acked = cluster.propose_all(&NODES, "load", 5);
    cluster.wait_converged(&NODES, &acked);
    let leaders = cluster.wait_for_leaders(&NODES);
    let handles: BTreeMap<NodeId, _> = NODES.iter().map(|&id| (id, cluster.handle(id))).collect();
    for handle in handles.values() {
        let all = handle.status();
        assert_eq!(
            all.iter().map(|status| status.shard).collect::<Vec<_>>(),
            (0..SHARDS).collect::<Vec<_>>()
        );
        assert_eq!(handle.shard_status(SHARDS), None);
    }
    for shard in 0..SHARDS {
        let leader = leaders[shard as usize];
        wait_until("every node to publish the same view", || {
            let seen: Vec<_> = handles
                .values()
                .map(|handle| handle.shard_status(shard).expect("shard"))
                .collect();
            seen.iter().all(|status| {
                status.leader == Some(leader)
                    && status.voters == [1, 2, 3]
                    && status.learners.is_empty()
                    && status.term == seen[0].term
                    && status.applied <= status.commit
                    && !status.failed
            })
        });
        for (&id, handle) in &handles {
            let status = handle.shard_status(shard).expect("shard");
            if id == leader {
                assert_eq!(
                    status.progress.keys().copied().collect::<Vec<_>>(),
                    [1, 2, 3]
                );
                assert!(status.progress.values().all(|&matched| matched > 0));
            } else {
                assert!(status.progress.is_empty(), "a follower reports progress");
            }
        }
    }

    // A joining node: empty until added, then the same membership everywhere.
    cluster.start_joining_node(4);
    let fourth = cluster.handle(4);
    assert!(fourth
        .status()
        .iter()
        .all(|status| status.voters.is_empty() && status.leader.is_none()));
    let shard = 0;
    change_on_leader(&cluster, &NODES, shard, MembershipChange::AddLearner(4));
    let all = [1, 2, 3, 4];
    wait_until("every node to report the learner", || {
        all.iter().all(|&id| {
            let status = cluster.handle(id).shard_status(shard).expect("shard");
            status.voters == [1, 2, 3]
                && status.learners == [4]
                && status.leader == Some(leaders[0])
        })
    });
    let leader_view = cluster
        .handle(leaders[0])
        .shard_status(shard)
        .expect("shard");
    assert!(leader_view.progress.contains_key(&4));
    // Its other shards are still waiting to be added: not ready.
    assert!(fourth.shard_status(1).expect("shard").voters.is_empty());
    assert!(!fourth.is_ready());
}

/// Which Raft messages the network drops: `(from, to, message)`, true to drop.
type DropRule = Box<dyn Fn(NodeId, NodeId, &Message) -> bool + Send>;

/// A rule every node's [`Filtered`] transport applies, replaced by the test as it goes.
#[derive(Clone, Default)]
struct Filter(Arc<Mutex<Option<DropRule>>>);

impl Filter {
    fn set(&self, rule: impl Fn(NodeId, NodeId, &Message) -> bool + Send + 'static) {
        *self.0.lock().expect("filter lock") = Some(Box::new(rule));
    }

    fn clear(&self) {
        *self.0.lock().expect("filter lock") = None;
    }

    /// Wraps every node's transport in a [`Filtered`] one applying this rule.
    fn wrap(&self) -> Wrap {
        let filter = self.clone();
        Arc::new(move |from, inner| {
            Box::new(Filtered {
                from,
                inner,
                filter: filter.clone(),
            })
        })
    }
}

/// Drops single messages out of frames, as the frame format documents them (`frame.rs`:
/// version ‖ from ‖ to ‖ count ‖ (shard ‖ length ‖ protobuf message)*, big-endian).
struct Filtered {
    from: NodeId,
    inner: Box<dyn Transport>,
    filter: Filter,
}

impl Transport for Filtered {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        let kept = {
            let rule = self.filter.0.lock().expect("filter lock");
            let Some(rule) = rule.as_ref() else {
                return self.inner.send(to, frame);
            };
            let mut kept = Vec::new();
            let mut rest = &frame[21..];
            while !rest.is_empty() {
                let length = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
                let message =
                    Message::parse_from_bytes(&rest[12..12 + length]).expect("a raft message");
                if !rule(self.from, to, &message) {
                    kept.push(&rest[..12 + length]);
                }
                rest = &rest[12 + length..];
            }
            if kept.is_empty() {
                return;
            }
            let mut out = frame[..17].to_vec();
            out.extend_from_slice(&(kept.len() as u32).to_be_bytes());
            for message in kept {
                out.extend_from_slice(message);
            }
            out
        };
        self.inner.send(to, kept);
    }
}

fn is(message: &Message, kind: MessageType) -> bool {
    message.get_msg_type() == kind
}

/// One shard, one entry per append message (so a follower can be sent part of the log), no
/// hibernation, and a 1 s election timeout (the hand-off below has that long).
fn one_shard_one_entry_per_append(config: &mut ClusterConfig) {
    config.shards = 1;
    config.max_size_per_msg = 1;
    config.hibernate_after_ticks = 0;
    config.election_tick = 100;
}

/// Leadership moves to a voter whose removal is proposed but not committed (raft-rs lets it
/// campaign: only a committed, unapplied conf change stops a campaign); as leader it commits
/// the removal with its first entry and applies it while entries it took after that are still
/// uncommitted. raft-rs 0.7 keeps such a leader leading without its own progress, and the next
/// commit panicked (`raft.rs` `maybe_commit`: `get_mut(self_id).unwrap()`), which stopped the
/// shard group on that node. Now it steps down as it applies its removal and tells the most
/// up-to-date voter to campaign (`membership` module docs, "Removing a node").
///
/// Five voters, one shard; the network is steered message by message, so every step waits for
/// a state, not for time: node 1 leads and proposes `Remove(3)`, which reaches node 3 only;
/// node 1 hands leadership to node 3 (whose log is then the longest, so every voter elects
/// it); node 3 takes four proposals that reach node 1 only; node 2 gets node 3's log up to its
/// first entry, which commits the removal there; then nodes 4 and 5 catch up, which commits
/// the four proposals in the new configuration (the panic), and pre-votes stay dropped so that
/// only node 3's hand-off can elect a leader.
#[test]
fn a_leader_that_applies_its_own_removal_steps_down_and_hands_leadership_over() {
    const FIVE: [NodeId; 5] = [1, 2, 3, 4, 5];
    let rest = [1, 2, 4, 5];
    let filter = Filter::default();
    let cluster =
        TestCluster::start_wrapped(&FIVE, one_shard_one_entry_per_append, Some(filter.wrap()));
    let shard = 0;
    let acked = cluster.propose_all(&FIVE, "before", 3);
    cluster.wait_converged(&FIVE, &acked);
    lead(&cluster, &FIVE, shard, 1);
    let first = cluster.handle(1);
    let third = cluster.handle(3);
    let status = |handle: &ClusterHandle<Recorder>| handle.shard_status(shard).expect("shard");
    let last = |handle: &ClusterHandle<Recorder>, node: NodeId| {
        status(handle).progress.get(&node).copied().unwrap_or(0)
    };
    let mut end = 0;
    wait_until("node 1 to lead with every voter caught up", || {
        let view = status(&first);
        end = view.progress.get(&1).copied().unwrap_or(0);
        view.leader == Some(1)
            && view.commit == end
            && view.progress.len() == FIVE.len()
            && view.progress.values().all(|&matched| matched == end)
    });
    let removal = end + 1;

    // The removal reaches node 3 only: two of five voters hold it, uncommitted.
    filter.set(|from, to, message| from == 1 && to != 3 && is(message, MessageType::MsgAppend));
    let (tx, removal_answer) = mpsc::channel();
    first
        .change_members(
            shard,
            MembershipChange::Remove(3),
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .expect("queued");
    wait_until("node 3 to hold the removal", || {
        last(&first, 1) >= removal && last(&first, 3) >= removal
    });
    assert!(status(&first).commit < removal);

    // Node 3 leads; its appends reach node 1 only, and its hand-off is held back for now.
    filter.set(|from, to, message| match from {
        1 | 3 => {
            (is(message, MessageType::MsgAppend) && to != 1 && to != 3)
                || (from == 3 && is(message, MessageType::MsgTimeoutNow))
        }
        _ => false,
    });
    assert_eq!(transfer(&first, shard, 3), Ok(()));
    let behind: Vec<(Vec<u8>, _)> = (0..4)
        .map(|n| {
            let command = format!("behind the removal {n}").into_bytes();
            let rx = propose(&third, shard, command.clone());
            (command, rx)
        })
        .collect();
    // Node 3's first entry is at `removal + 1`, the four proposals after it.
    let tail = removal + 1 + 4;
    wait_until("nodes 3 and 1 to hold the proposals", || {
        last(&third, 3) >= tail && last(&third, 1) >= tail
    });
    assert!(status(&third).commit < removal, "committed too early");

    // Node 2 gets node 3's log up to its first entry: the removal commits and applies.
    filter.set(move |from, to, message| {
        from == 3
            && match message.get_msg_type() {
                MessageType::MsgAppend if to == 2 => message
                    .entries
                    .iter()
                    .any(|entry| entry.index > removal + 1),
                MessageType::MsgAppend => to == 4 || to == 5,
                MessageType::MsgTimeoutNow => true,
                _ => false,
            }
    });
    wait_until("node 3 to apply its removal", || {
        status(&third).applied > removal || third.metrics().failed_shards > 0
    });

    // Nodes 4 and 5 may catch up, and node 3 may hand leadership over; nobody else campaigns.
    filter.set(|_, _, message| is(message, MessageType::MsgRequestPreVote));
    wait_until("a leader of the rest, or node 3 failing", || {
        status(&first).leader == Some(1) || third.metrics().failed_shards > 0
    });
    assert_eq!(
        third.metrics().failed_shards,
        0,
        "node 3's shard group stopped (raft-rs panicked in a leader that removed itself)"
    );
    assert_eq!(
        leader_of(&cluster, &rest, shard),
        1,
        "node 3 handed leadership to the most up-to-date voter"
    );
    filter.clear();

    // Node 3 dropped the proposals it took as it stepped down; node 1 then committed them.
    assert_eq!(
        removal_answer.recv_timeout(TIMEOUT).expect("answered"),
        Err(MembershipError::Dropped)
    );
    for (_, rx) in &behind {
        assert_eq!(answer(rx), Err(ProposeError::Dropped));
    }
    let mut acked = acked;
    merge(&mut acked, cluster.propose_all(&rest, "after", 3));
    cluster.wait_converged(&rest, &acked);
    let log = cluster.log(1, shard);
    for (command, _) in &behind {
        assert_eq!(log.iter().filter(|applied| *applied == command).count(), 1);
    }
    let view = status(&third);
    assert_eq!(
        (view.leader, view.voters, view.failed),
        (None, rest.to_vec(), false)
    );
    assert_eq!(
        answer(&propose(&third, shard, b"at the removed node".to_vec())),
        Err(ProposeError::NotLeader)
    );
    for id in rest {
        assert_eq!(cluster.handle(id).metrics().failed_shards, 0, "node {id}");
    }
}

/// A learner that has the leader's whole log but sits in raft-rs' probe state (here: the
/// transport reported it unreachable) gets no append on an idle shard, since the leader has
/// nothing new for it, so raft-rs never moves it back to replicating. Its promotion was refused
/// with `LearnerBehind` until a write reached the shard; matched at the leader's last index, it
/// is caught up (`mimid_cluster::learner_caught_up`).
#[test]
fn a_caught_up_learner_left_in_the_probe_state_of_an_idle_shard_is_promoted() {
    let mut cluster = TestCluster::start(|config| config.shards = 1);
    let shard = 0;
    let acked = cluster.propose_all(&NODES, "before", 5);
    cluster.wait_converged(&NODES, &acked);
    cluster.start_joining_node(4);
    let added = change_on_leader(&cluster, &NODES, shard, MembershipChange::AddLearner(4));
    assert_eq!(added, membership(&[1, 2, 3], &[4]));
    let leader = leader_of(&cluster, &NODES, shard);
    let handle = cluster.handle(leader);
    // Idle and caught up: every member matched the leader's last index, and the shard sleeps.
    wait_until("the learner to catch up and the shard to hibernate", || {
        let status = handle.shard_status(shard).expect("shard");
        let end = status.progress.get(&leader).copied().unwrap_or(0);
        status.progress.get(&4) == Some(&end) && status.hibernating
    });

    let writes = handle.metrics().proposals;
    handle.report_unreachable(4);
    // The driver applies unreachable reports at the start of a turn, and may take an admin
    // request before that in the turn it wakes for: three answered round trips make sure a
    // turn started after the report (a transfer to the leader itself is answered at once).
    for _ in 0..3 {
        assert_eq!(transfer(&handle, shard, leader), Ok(()));
    }
    assert_eq!(
        change(&handle, shard, MembershipChange::Promote(4)),
        Ok(membership(&[1, 2, 3, 4], &[]))
    );
    assert_eq!(
        handle.metrics().proposals,
        writes,
        "a write reached the shard"
    );
}

/// How node 4 leaves the shards before it is added back ([`removed_node_added_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// Removed while the leader replicates to it: it applies its own removal and stops
    /// counting itself a member.
    Heard,
    /// As `Heard`, then restarted from its data dir while away: the stale replica it is
    /// added back with comes from disk, not from memory.
    HeardThenRestarted,
    /// Removed while cut off: it never hears of it and still believes it is a voter, at the
    /// term it was cut off in, while the others elect new leaders in later terms.
    CutOff,
}

/// Node 4 held every shard and left; added back, it starts from the replica it kept (its log,
/// hard state and configuration on disk, its state machine in memory: "Removing a node" in
/// the `membership` module docs). With `compact`, every shard snapshots every 16 entries, so
/// the leaders compact past node 4's last index while it is away and it must catch up by
/// snapshot; without, the leaders keep their logs and append after node 4's stale entries.
/// Either way it ends with exactly the leader's applied state, every command once, in order;
/// no shard group fails, and node 4 then leads every shard and commits.
fn removed_node_added_back(departure: Departure, compact: bool) {
    let tweak: fn(&mut ClusterConfig) = if compact {
        |config| {
            patient(config);
            config.snapshot_interval = 16
        }
    } else {
        patient
    };
    let mut cluster = TestCluster::start(tweak);
    let all = [1, 2, 3, 4];
    let mut acked = cluster.propose_all(&NODES, "before", 5);
    cluster.wait_converged(&NODES, &acked);

    // Node 4 joins every shard, votes and gets data.
    cluster.start_joining_node(4);
    let mut fourth = cluster.handle(4);
    for shard in 0..SHARDS {
        change_on_leader(&cluster, &NODES, shard, MembershipChange::AddLearner(4));
        let promoted = change_on_leader(&cluster, &NODES, shard, MembershipChange::Promote(4));
        assert_eq!(promoted, membership(&all, &[]), "shard {shard}");
    }
    merge(&mut acked, cluster.propose_all(&all, "with-4", 5));
    cluster.wait_converged(&all, &acked);
    wait_until("node 4 to apply its promotion everywhere", || {
        fourth.status().iter().all(|status| status.voters == all)
    });
    // The leader never removes itself: node 4 hands over what it leads.
    for shard in 0..SHARDS {
        if leader_of(&cluster, &all, shard) == 4 {
            lead(&cluster, &all, shard, 1);
        }
    }
    // Nothing on its way to node 4 any more: what it holds now is what it keeps.
    for shard in 0..SHARDS {
        let leader = cluster.handle(leader_of(&cluster, &all, shard));
        wait_until("node 4 to apply all the leader applied", || {
            let leading = leader.shard_status(shard).expect("shard");
            let own = fourth.shard_status(shard).expect("shard");
            leading.commit == leading.applied && own.applied == leading.applied
        });
    }

    // Node 4 is removed from every shard.
    if departure == Departure::CutOff {
        cluster.isolate(4);
    }
    for shard in 0..SHARDS {
        if departure != Departure::CutOff {
            // An election since the hand-over (a stalled driver, under load) may have given
            // it the lead again: the leader never removes itself.
            if leader_of(&cluster, &all, shard) == 4 {
                lead(&cluster, &all, shard, 1);
            }
            // It hears of its removal only from a leader that replicates to it normally.
            wait_replicating(&cluster, &NODES, shard, 4);
        }
        let removed = change_on_leader(&cluster, &NODES, shard, MembershipChange::Remove(4));
        assert_eq!(removed, membership(&NODES, &[]), "shard {shard}");
    }
    match departure {
        Departure::Heard | Departure::HeardThenRestarted => {
            wait_until("node 4 to apply its removal everywhere", || {
                fourth
                    .status()
                    .iter()
                    .all(|status| status.voters == NODES && status.leader.is_none())
            })
        }
        Departure::CutOff => {
            // New leaders in later terms, which node 4 does not see either.
            for shard in 0..SHARDS {
                let leader = leader_of(&cluster, &NODES, shard);
                let to = NODES
                    .iter()
                    .copied()
                    .find(|&id| id != leader)
                    .expect("a node");
                lead(&cluster, &NODES, shard, to);
            }
        }
    }
    let stale: Vec<Vec<Vec<u8>>> = (0..SHARDS).map(|shard| cluster.log(4, shard)).collect();
    if departure == Departure::HeardThenRestarted {
        drop(fourth);
        cluster.stop_node(4);
        cluster.start_node(4);
        fourth = cluster.handle(4);
        wait_until("node 4 to recover its stale replicas", || {
            (0..SHARDS).all(|shard| cluster.log(4, shard) == stale[shard as usize])
                && fourth
                    .status()
                    .iter()
                    .all(|status| status.voters == NODES && status.leader.is_none())
        });
    }
    let snapshots_before = fourth.metrics().snapshots_received;

    // Enough entries without node 4 that, with `compact`, every leader snapshots (every 16
    // applied entries) and compacts its log past node 4's last index more than once.
    merge(&mut acked, cluster.propose_all(&NODES, "without-4", 40));
    cluster.wait_converged(&NODES, &acked);
    for shard in 0..SHARDS {
        assert_eq!(
            cluster.log(4, shard),
            stale[shard as usize],
            "shard {shard}: node 4 got entries while it was no member"
        );
        let own = fourth.shard_status(shard).expect("shard");
        let leader = leader_of(&cluster, &NODES, shard);
        // A status is published at the end of the driver turn that applied what the logs
        // show, and a turn that also writes a snapshot file may take long on a loaded
        // machine: poll (node 4 is no member, nothing changes its status).
        let mut leading = cluster.handle(leader).shard_status(shard).expect("shard");
        wait_until(
            "the leader's status to show the entries node 4 missed",
            || {
                leading = cluster.handle(leader).shard_status(shard).expect("shard");
                own.applied < leading.applied
            },
        );
        if compact {
            // Snapshots are written on a writer thread and compact the log a turn or more
            // later: every replica that may lead drops its log up to node 4's end first
            // (every snapshot file of the shard is past it: the older files, named for node
            // 4 when it joined, go once a newer compaction is durable).
            for id in NODES {
                wait_until("the replicas to compact past node 4's log", || {
                    let indexes = snapshot_indexes(&cluster, id, shard);
                    !indexes.is_empty() && indexes.iter().all(|&index| index > own.commit)
                });
            }
        }
        if departure == Departure::CutOff {
            assert_eq!(own.voters, all, "shard {shard}: it still believes it votes");
            assert!(
                own.term < leading.term,
                "shard {shard}: node 4 at term {}, the leader at {}",
                own.term,
                leading.term
            );
        }
    }

    // Added back: a learner again, then a voter.
    cluster.heal();
    for shard in 0..SHARDS {
        let added = change_on_leader(&cluster, &NODES, shard, MembershipChange::AddLearner(4));
        assert_eq!(added, membership(&NODES, &[4]), "shard {shard}");
        let promoted = change_on_leader(&cluster, &NODES, shard, MembershipChange::Promote(4));
        assert_eq!(promoted, membership(&all, &[]), "shard {shard}");
    }
    merge(&mut acked, cluster.propose_all(&all, "re-added", 5));
    cluster.wait_converged(&all, &acked);
    let received = fourth.metrics().snapshots_received - snapshots_before;
    if compact {
        assert!(
            received >= SHARDS,
            "node 4 caught up without a snapshot after the leaders compacted: {received}"
        );
    } else {
        assert_eq!(
            received, 0,
            "the leaders still held the entries node 4 lacked"
        );
    }
    for shard in 0..SHARDS {
        // The same applied state as the leader: the same commands in the same order
        // (`wait_converged`), each once, every acknowledged one at its position.
        let log = cluster.log(4, shard);
        let distinct: BTreeSet<&Vec<u8>> = log.iter().collect();
        assert_eq!(distinct.len(), log.len(), "shard {shard}: a command twice");
        let leader = leader_of(&cluster, &all, shard);
        wait_until("node 4 to apply as far as the leader", || {
            let leading = cluster.handle(leader).shard_status(shard).expect("shard");
            let own = fourth.shard_status(shard).expect("shard");
            own.applied == leading.applied && own.voters == all && own.learners.is_empty()
        });
    }

    // Node 4 leads every shard and commits.
    for shard in 0..SHARDS {
        let deadline = Instant::now() + TIMEOUT;
        for attempt in 0.. {
            lead(&cluster, &all, shard, 4);
            let command = format!("led-by-4-{shard}-{attempt}").into_bytes();
            match answer(&propose(&fourth, shard, command.clone())) {
                Ok(position) => {
                    acked.entry(shard).or_default().push((command, position));
                    break;
                }
                // The lead moved on before it committed (a stalled driver): lead again.
                Err(ProposeError::NotLeader | ProposeError::Dropped)
                    if Instant::now() < deadline => {}
                Err(other) => panic!("shard {shard}: node 4 did not commit: {other:?}"),
            }
        }
    }
    cluster.wait_converged(&all, &acked);
    for id in all {
        let handle = cluster.handle(id);
        assert_eq!(handle.metrics().failed_shards, 0, "node {id}");
        assert!(
            handle.status().iter().all(|status| !status.failed),
            "node {id}"
        );
    }
    let refused = cluster.net.refused.lock().expect("refused lock").clone();
    assert!(refused.is_empty(), "{refused:?}");
}

/// The indexes of `shard`'s snapshot files in node `id`'s data dir, named as `snapshot_file.rs`
/// documents them: `raft/snapshots/<shard>-<term>-<index>.snap`, 16 hex digits each.
fn snapshot_indexes(cluster: &TestCluster, id: NodeId, shard: ShardId) -> Vec<u64> {
    let dir = cluster.data_dir(id).join("raft").join("snapshots");
    let prefix = format!("{shard:016x}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let index = name
                .strip_prefix(&prefix)?
                .strip_suffix(".snap")?
                .get(17..)?;
            u64::from_str_radix(index, 16).ok()
        })
        .collect()
}

/// One test per way node 4 leaves and way it catches up when added back.
macro_rules! added_back_tests {
    ($($name:ident: $departure:ident, compact: $compact:expr;)*) => {$(
        #[test]
        fn $name() {
            removed_node_added_back(Departure::$departure, $compact);
        }
    )*};
}

added_back_tests! {
    a_removed_node_added_back_catches_up_by_snapshot_past_its_stale_log:
        Heard, compact: true;
    a_removed_node_added_back_catches_up_from_the_log_after_its_stale_entries:
        Heard, compact: false;
    a_removed_node_restarted_and_added_back_catches_up_by_snapshot:
        HeardThenRestarted, compact: true;
    a_removed_node_restarted_and_added_back_catches_up_from_the_log:
        HeardThenRestarted, compact: false;
    a_node_removed_while_cut_off_and_added_back_catches_up_by_snapshot:
        CutOff, compact: true;
    a_node_removed_while_cut_off_and_added_back_catches_up_from_the_log:
        CutOff, compact: false;
}
