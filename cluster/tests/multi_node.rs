//! Multi-node tests of `mimid-cluster` over the in-memory harness (`common`): replication
//! order, leader kill and restart, partition with check-quorum and pre-vote, catch-up by a
//! (once lost) snapshot, misaddressed frames.

mod common;

use std::time::{Duration, Instant};

use mimid_cluster::{NodeId, ProposeError, ReceiveError};

use common::*;

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
        // A copy reads `ready_turns` before `frames_sent`, and the driver goes on meanwhile
        // (it counts a turn before sending its frames): turns counted in a later copy bound
        // the frames of this one.
        let later = handle.metrics();
        assert!(metrics.frames_received > 0, "node {id}: {metrics:?}");
        // One frame per destination per turn: messages of several shards share frames, and
        // no turn sends more frames than there are peers.
        assert!(
            metrics.messages_sent > metrics.frames_sent,
            "node {id}: {metrics:?}"
        );
        assert!(
            metrics.frames_sent <= 2 * later.ready_turns,
            "node {id}: {metrics:?}, then {} turns",
            later.ready_turns
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
    // A frame of a link that surely carried one: shard 0's leader to a follower, which names
    // that leader only once it heard from it. (Any fixed pair may never have talked: node 3
    // leading every shard, node 1 only ever answers node 3.)
    let leader = cluster.wait_for_leaders(&NODES)[0];
    let mut others = NODES.iter().copied().filter(|&id| id != leader);
    let (addressee, bystander) = (others.next().expect("two"), others.next().expect("two"));
    let frame = cluster
        .net
        .captured
        .lock()
        .expect("capture lock")
        .get(&(leader, addressee))
        .cloned()
        .expect("the leader sent its follower a frame");
    let stranger = cluster.handle(bystander);
    match stranger.receive(&frame) {
        Err(ReceiveError::Malformed(reason)) => {
            assert!(
                reason.contains(&format!("for node {addressee}")),
                "{reason}"
            )
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(matches!(
        stranger.receive(b"\x01not a frame"),
        Err(ReceiveError::Malformed(_))
    ));
    assert_eq!(stranger.metrics().frames_malformed, 2);
    // The same frame is fine for its addressee, even twice (Raft tolerates duplicates).
    let target = cluster.handle(addressee);
    assert_eq!(target.receive(&frame), Ok(()));
    // Every cut of a real frame is refused, never taken in part.
    for len in 0..frame.len() {
        assert!(
            matches!(
                target.receive(&frame[..len]),
                Err(ReceiveError::Malformed(_))
            ),
            "cut at {len}"
        );
    }
    // And nothing of it broke a group.
    let acked = cluster.propose_all(&NODES, "after", 3);
    cluster.wait_converged(&NODES, &acked);
    assert_eq!(target.metrics().failed_shards, 0);
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
    // What the real transport reports once its connections to the victim close. Without it,
    // shards that fell asleep (a stalled test thread leaves them quiet for 300 ms) before the
    // victim stepped the proposals above would keep naming it and never elect.
    for &id in &survivors {
        cluster.handle(id).report_unreachable(victim);
    }
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
    // What the real transport reports once the connections fail. Without it, shards that fell
    // asleep before the cut (a stalled test thread leaves them quiet for 300 ms) would keep
    // naming the cut-off leader in the majority and never elect there.
    for &id in &majority {
        cluster.handle(id).report_unreachable(cut);
        cluster.handle(cut).report_unreachable(id);
    }

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

/// A leader that steps down answers the proposals it had not seen commit by the next
/// leader's log, not `Dropped` (`pending.rs`, "orphans"): it sends its entries to both
/// followers but hears no acknowledgement, is cut off, and steps down by check-quorum; a
/// follower is elected with the entries and commits them; once the old leader hears again,
/// it applies them and answers each proposal with its position, which holds on every replica.
#[test]
fn a_leader_that_steps_down_answers_its_proposals_from_the_next_leaders_log() {
    let cluster = TestCluster::start(|config| {
        config.shards = 1;
        // Long enough that the answer cannot come from the wait running out.
        config.lost_leadership_wait_ticks = 3_000;
    });
    let mut acked = cluster.propose_all(&NODES, "before", 1);
    cluster.wait_converged(&NODES, &acked);
    let old = cluster.wait_for_leaders(&NODES)[0];
    let others: Vec<NodeId> = NODES.iter().copied().filter(|&id| id != old).collect();

    cluster.record_appends_from(old);
    cluster.deafen(old);
    let commands: Vec<Vec<u8>> = (0..3).map(|n| format!("orphan {n}").into_bytes()).collect();
    let handle = cluster.handle(old);
    let answers: Vec<_> = commands
        .iter()
        .map(|command| propose(&handle, 0, command.clone()))
        .collect();
    wait_until("both followers to hold the entries", || {
        others.iter().all(|&id| {
            let appended = cluster.appended(id);
            commands.iter().all(|command| appended.contains(command))
        })
    });
    cluster.isolate(old);
    for &id in &others {
        cluster.handle(id).report_unreachable(old);
    }
    wait_until("the old leader to step down", || handle.leader(0).is_none());
    wait_until("a follower to be elected", || {
        others
            .iter()
            .any(|&id| cluster.handle(id).leader(0) == Some(id))
    });
    for rx in &answers {
        let early = rx.try_recv();
        assert!(
            early.is_err(),
            "answered before the old leader heard from the new one: {early:?}"
        );
    }
    assert_eq!(handle.metrics().dropped_proposals, 0);

    cluster.heal();
    let positions: Vec<usize> = answers
        .iter()
        .map(|rx| answer(rx).expect("committed by the next leader"))
        .collect();
    merge(
        &mut acked,
        [(0, commands.into_iter().zip(positions).collect())].into(),
    );
    cluster.wait_converged(&NODES, &acked);
    assert_eq!(handle.metrics().dropped_proposals, 0);
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
