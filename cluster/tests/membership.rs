//! Membership changes and leadership transfer (`ClusterHandle::change_members`,
//! `transfer_leader`, `shard_status`) on the in-memory harness (`common`): a fourth node joins
//! a loaded cluster as a learner, catches up by snapshot, is promoted, and an original node is
//! removed; leadership is drained from a node; refused changes leave the membership as it was;
//! every node reports the same membership and leader.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mimid_cluster::{
    ClusterHandle, Membership, MembershipChange, MembershipError, NodeId, ProposeError, ShardId,
    TransferError,
};

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

/// Applies `wanted` through the shard's leader among `among`, retrying while leadership is
/// settling (`NotLeader`; `ChangeInProgress` while a new leader has not applied its log yet)
/// or the learner is still catching up (`LearnerBehind`).
fn change_on_leader(
    cluster: &TestCluster,
    among: &[NodeId],
    shard: ShardId,
    wanted: MembershipChange,
) -> Membership {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let leader = leader_of(cluster, among, shard);
        match change(&cluster.handle(leader), shard, wanted) {
            Ok(membership) => return membership,
            Err(
                MembershipError::NotLeader
                | MembershipError::ChangeInProgress
                | MembershipError::LearnerBehind(_),
            ) if Instant::now() < deadline => {}
            Err(other) => panic!("shard {shard}: {wanted:?} failed: {other:?}"),
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
    let mut cluster = TestCluster::start(|config| config.snapshot_interval = 16);
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
    let leader = leader_of(&cluster, &NODES, 0);
    if leader != 1 {
        assert_eq!(transfer(&cluster.handle(leader), 0, 1), Ok(()));
    }
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

        // Caught up: the leader has replicated to it what was committed after the change.
        let leader = leader_of(&cluster, &NODES, shard);
        let commit = cluster
            .handle(leader)
            .shard_status(shard)
            .expect("shard")
            .commit;
        wait_until("the learner to catch up", || {
            let leader_view = cluster.handle(leader).shard_status(shard).expect("shard");
            let own_view = fourth.shard_status(shard).expect("shard");
            leader_view.progress.get(&4).is_some_and(|&m| m >= commit)
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
            assert_eq!(transfer(&cluster.handle(1), shard, 4), Ok(()));
        }
        // A node the leader is not replicating to normally when it is removed (a new leader
        // still probing it, say) may never hear of its removal (`membership` module docs).
        // Node 1 is healthy: wait until the leader replicates to it, so it does.
        let leader = leader_of(&cluster, &all, shard);
        let commit = cluster
            .handle(leader)
            .shard_status(shard)
            .expect("shard")
            .commit;
        wait_until("the leader to replicate to node 1", || {
            let status = cluster.handle(leader).shard_status(shard).expect("shard");
            status
                .progress
                .get(&1)
                .is_some_and(|&matched| matched >= commit)
        });
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
    let cluster = TestCluster::start(no_tweak);
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
