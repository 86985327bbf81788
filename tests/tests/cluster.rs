//! One provider as a cluster of three in-process nodes (issue 4; ARCHITECTURE.md "Cluster"):
//! real quinn for clients and between nodes (mutual TLS with a cluster CA), raft-rs groups in
//! sled per node, openmls clients connected to different nodes. Every shard is replicated on
//! all three nodes; writes reach the shard's leader from any node; each node's push streams
//! deliver from its own replica.
//!
//! Waits are polls with a deadline; the 20 ms pauses in the senders' loops pace the load and
//! synchronise nothing.

use std::time::{Duration, Instant};

use mimid_actors::command::Command;
use mimid_actors::hub::{ForwardError, HubError};
use mimid_actors::ids::RoomId;
use mimid_actors::shard::Shards;
use mimid_cluster::StateMachine as _;
use mimid_node::backup::BackupFile;
use mimid_node::client::{ClientError, Event, FrankCheck, MimiClient, SubmitResult, UpdateResult};
use mimid_node::franking::FRANKING_SIGNING_KEY_FILE;
use mimid_node::hub_key::HUB_KEY_FILE;
use mimid_tests::{
    add_users_when_led, all_send_then_read, backup_when_ready, create_room_when_led,
    group_info_hub_key, http_get, http_get_status, metric, read_until, send_many, ClusterNode,
    TestCluster, TestNode, Transcript, WAIT,
};

/// `node`'s /metrics.
async fn scrape(node: &ClusterNode) -> String {
    let url = format!("http://{}/metrics", node.node().admin_addr());
    let (status, body) = http_get(&url).await.expect("metrics answer");
    assert_eq!(status, 200);
    body
}

/// Polls every running node's `series` (refreshed every second) until `ok` holds for the
/// values by node index; returns them.
async fn wait_for_metrics(
    cluster: &TestCluster,
    series: &str,
    ok: impl Fn(&[f64]) -> bool,
) -> Vec<f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut values = Vec::new();
        for member in cluster.running() {
            values.push(metric(&scrape(member).await, series).unwrap_or(f64::NAN));
        }
        if ok(&values) {
            return values;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {values:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expect_joined(client: &mut MimiClient) {
    match client.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("{} expected a Welcome, got {other:?}", client.id()),
    }
}

/// Issue 4, must show: clients connected to any node see per-room order and exactly-once
/// delivery (MIMI.md §5.3-§5.4 within one provider: one hub, three replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_every_node_see_one_order_exactly_once() {
    let cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let room = cluster.room("clubhouse");
    let members = cluster.three_members(&room, [0, 1, 2]).await;
    // Who leads the room's shard, just written to (placement moves only a quiet shard's
    // leader), and again after the sends: an election on a loaded machine may move it.
    let leading = cluster.leader_and_term(&room).await;
    const EACH: usize = 10;
    let (_clients, transcripts) = all_send_then_read(members.into(), &room, EACH).await;
    let kept_leader = cluster.leader_and_term(&room).await == leading;
    assert_eq!(transcripts[0].len(), 3 * EACH);
    assert_eq!(transcripts[0], transcripts[1], "alice@1 and bob@2 differ");
    assert_eq!(transcripts[0], transcripts[2], "alice@1 and carol@3 differ");
    // Every replica holds the same log.
    let logs: Vec<_> = (0..3)
        .map(|index| cluster.application_messages(index, &room))
        .collect();
    assert_eq!(logs[0].len(), 3 * EACH);
    assert!(logs.windows(2).all(|pair| pair[0] == pair[1]));
    // Each shard has exactly one leader, and two of the three clients' writes went through
    // another node than the one leading the room's shard (if leadership moved meanwhile, which
    // clients' nodes led when is unknown: some writes were forwarded).
    let led = wait_for_metrics(&cluster, "mimid_raft_shards_led", |led| {
        led.iter().sum::<f64>() == 4.0
    })
    .await;
    let at_least = if kept_leader {
        2.0 * EACH as f64
    } else {
        println!("the room's shard changed leaders during the sends");
        1.0
    };
    let forwarded = wait_for_metrics(
        &cluster,
        "mimid_raft_forwarded_proposals_total{scope=\"room\",outcome=\"applied\"}",
        |n| n.iter().sum::<f64>() >= at_least,
    )
    .await;
    println!("shards led by node: {led:?}; proposals forwarded by node: {forwarded:?}");
    cluster.shutdown().await;
}

/// The leader of `shard` and its voters and learners, as the leader's replica has them.
fn leader_view(cluster: &TestCluster, shard: u64) -> Option<(u64, Vec<u64>, Vec<u64>)> {
    cluster.running().find_map(|member| {
        let status = member.node().cluster_handle().shard_status(shard)?;
        (status.leader == Some(member.id())).then(|| (member.id(), status.voters, status.learners))
    })
}

/// Issue 4 build item 1 ("each shard is a raft-rs group replicated on R nodes"): four nodes,
/// R = 3, `cluster.replicas = "r"`. Each shard but the metadata shard lives on three nodes,
/// so each node lacks some. Alice's node holds no replica of the room's shard: her writes go
/// to its leader by shard 0's descriptor, her reads (authentication, the room's existence,
/// Welcome routing) to a node that holds it, and her push stream is relayed from one. Clients
/// on all four nodes see one order, each message exactly once (MIMI.md §5.3-§5.4 within one
/// provider), and storage per node shrinks: 13 replicas of 4 shards over 4 nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_r_clients_on_a_node_without_the_rooms_shard_see_one_order_exactly_once() {
    let cluster = TestCluster::start(4).await;
    let shards = cluster.nodes[0].config.cluster.shards;
    let placed = cluster.wait_placed(shards, 3).await;
    let shard_of = |room: &RoomId| {
        cluster.nodes[0]
            .node()
            .hub()
            .shards()
            .shard_of(room.as_bytes())
    };
    let room = (0..)
        .map(|n| cluster.room(&format!("relayed-{n}")))
        .find(|room| shard_of(room) != 0)
        .expect("a room outside shard 0");
    let shard = shard_of(&room);
    let lacking = (0..4)
        .find(|&index| !placed[shard as usize].contains(&(index as u64 + 1)))
        .expect("three of four nodes hold the shard");
    let holders: Vec<usize> = (0..4).filter(|&index| index != lacking).collect();
    assert_eq!(cluster.holders_of(&room), holders);

    let mut alice = cluster.client(lacking, "alice", "phone", 2).await;
    let mut others = Vec::new();
    for (&index, name) in holders.iter().zip(["bob", "carol", "dave"]) {
        others.push(cluster.client(index, name, "phone", 2).await);
    }
    for client in std::iter::once(&mut alice).chain(others.iter_mut()) {
        client.connect_stream().await.expect("stream opens");
    }
    create_room_when_led(&mut alice, &room)
        .await
        .expect("room created");
    let added = add_users_when_led(
        &mut alice,
        &room,
        &[
            cluster.user("bob"),
            cluster.user("carol"),
            cluster.user("dave"),
        ],
    )
    .await
    .expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    for client in &mut others {
        expect_joined(client).await;
    }
    const EACH: usize = 8;
    let senders = std::iter::once(alice).chain(others).collect();
    let (mut clients, transcripts) = all_send_then_read(senders, &room, EACH).await;
    assert_eq!(transcripts[0].len(), 4 * EACH);
    for (other, transcript) in transcripts.iter().enumerate().skip(1) {
        assert_eq!(
            &transcripts[0], transcript,
            "alice and client {other} differ"
        );
    }
    // Nothing more arrives: each message came once, relayed or not.
    for client in &mut clients {
        match client.next_event(Duration::from_millis(300)).await {
            Ok(None) | Err(_) => {}
            Ok(Some(event)) => panic!("{} got one more event: {event:?}", client.id()),
        }
    }
    // The three holders' replicas have the log; the fourth node holds none of it.
    let logs: Vec<_> = holders
        .iter()
        .map(|&index| cluster.application_messages(index, &room))
        .collect();
    assert_eq!(logs[0].len(), 4 * EACH);
    assert!(logs.windows(2).all(|pair| pair[0] == pair[1]));
    assert!(cluster.application_messages(lacking, &room).is_empty());
    // Storage per node: shard 0 everywhere, every other shard on three nodes.
    let held: Vec<usize> = cluster
        .running()
        .map(|member| {
            let hub = member.node().hub();
            (0..shards).filter(|&shard| hub.holds(shard)).count()
        })
        .collect();
    assert_eq!(
        held.iter().sum::<usize>(),
        4 + 3 * (shards as usize - 1),
        "{held:?}"
    );
    assert!(
        held.iter().all(|&count| count < shards as usize + 1),
        "{held:?}"
    );
    assert!(held[lacking] < shards as usize, "{held:?}");
    println!("shards held per node: {held:?}");
    // What the relay asks of a holder (`Hub::pull`): Alice's items of the shard after a
    // cursor, in order; nothing after the last; and a node without the shard refuses.
    let alice_id = clients[0].id().clone();
    let holder = cluster.nodes[holders[0]].node().hub();
    let all = holder
        .pull(shard, &alice_id, &[], Duration::ZERO)
        .await
        .expect("the holder answers");
    let seqs: Vec<u64> = all.items.iter().map(|pulled| pulled.item.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    assert!(all.items.len() >= 4 * EACH, "{}", all.items.len());
    let last = *seqs.last().expect("items");
    let after = holder
        .pull(
            shard,
            &alice_id,
            &[(room.clone(), last)],
            Duration::from_millis(50),
        )
        .await
        .expect("the holder answers");
    assert!(after.items.is_empty(), "{:?}", after.items);
    assert_eq!(after.cursors, [(room.clone(), last)]);
    let refused = cluster.nodes[lacking]
        .node()
        .hub()
        .pull(shard, &alice_id, &[], Duration::ZERO)
        .await;
    assert!(
        matches!(refused, Err(HubError::Unavailable(_))),
        "{refused:?}"
    );
    // A holder that does not lead the shard refuses a forwarded proposal naming the leader,
    // so an origin without a replica retries there without waiting for the descriptor. Asked
    // again if leadership moved between the look at it and the proposal (or the follower
    // did not know the new leader yet).
    let housekeeping = postcard::to_stdvec(&Command::Housekeeping {
        log_retention_ms: u64::MAX,
    })
    .expect("encodes");
    let deadline = Instant::now() + WAIT;
    let mut answered = String::from("no leader");
    loop {
        if let Some((leader, _, _)) = leader_view(&cluster, shard) {
            let follower = holders
                .iter()
                .copied()
                .find(|&index| cluster.nodes[index].id() != leader)
                .expect("a holder that follows");
            let refused = cluster.nodes[follower]
                .node()
                .hub()
                .propose_forwarded(shard, &housekeeping)
                .await;
            if matches!(refused, Err(ForwardError::NotLeaderNaming(named)) if named == leader) {
                break;
            }
            answered = format!(
                "node {} answered {refused:?}, node {leader} leading",
                cluster.nodes[follower].id()
            );
        }
        assert!(Instant::now() < deadline, "{answered}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Alice's node read and relayed from the holders.
    let scraped = scrape(&cluster.nodes[lacking]).await;
    for kind in ["read", "pull"] {
        let series = format!("mimid_remote_reads_total{{kind=\"{kind}\",outcome=\"answered\"}}");
        let answered = metric(&scraped, &series).unwrap_or(0.0);
        assert!(answered >= 1.0, "{series} {answered}");
    }

    // A backup taken on the node without the room's shard holds every shard: the parts it
    // does not hold come from nodes that do, the room's among them.
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("replicas-r.backup");
    backup_when_ready(&cluster.admin(lacking), &cluster.admin_token(), &file).await;
    let backup = BackupFile::decode(&std::fs::read(&file).expect("backup file")).expect("valid");
    assert_eq!(backup.shards.len() as u64, shards);
    assert!(
        backup.shards.iter().all(|part| part.applied_index > 0),
        "every shard has its part"
    );
    let restored = Shards::new(shards);
    restored
        .machine(shard)
        .restore(&backup.shards[shard as usize].data)
        .expect("the part restores");
    let messages = restored
        .get(shard)
        .read()
        .room(&room)
        .map(|state| state.last_seq())
        .expect("the room is in the backup");
    assert!(messages >= 4 * EACH as u64, "{messages}");
    cluster.shutdown().await;
}

/// Fan-out to a follower provider (MIMI.md §5.4) is the duty of the node leading the room's
/// shard alone: a follower is sent each item once, not once per node of the hub's cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_a_follower_provider_runs_on_the_shard_leader_only() {
    let cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let b = TestNode::start_provider("b.example", &cluster.provider_ca).await;
    for member in cluster.running() {
        member
            .node()
            .peers()
            .set_address("b.example", b.node().quic_addr());
    }
    let a_node = cluster.nodes[0].node().quic_addr();
    b.node().peers().set_address(&cluster.domain, a_node);

    let room = cluster.room("club");
    let leading_now = cluster.leader_of(&room).await;
    // Alice's requests go through a node that does not lead the room's shard.
    let mut alice = cluster
        .client((leading_now + 1) % 3, "alice", "phone", 1)
        .await;
    let mut bob = b.client("bob", "laptop", 1).await;
    bob.connect_stream().await.expect("stream opens");
    create_room_when_led(&mut alice, &room)
        .await
        .expect("room created");
    // The leader that sends the notifies: the shard was just written to, so placement leaves
    // its leader where it is for a while; asked again below, the same leader and term mean it
    // led throughout (an election on a loaded machine could move it).
    let (leader, term) = cluster.leader_and_term(&room).await;
    let bob_user = mimid_actors::ids::UserId::parse("mimi://b.example/u/bob").expect("user");
    let added = add_users_when_led(&mut alice, &room, &[bob_user])
        .await
        .expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    expect_joined(&mut bob).await;
    let (_alice, sent) = send_many(alice, room.clone(), 5).await;
    let mut transcript = Transcript::new();
    read_until(&mut bob, 5, &mut transcript).await;
    // Bob's provider numbers the items of its mirror itself: compare in order, not by seq.
    assert_eq!(
        transcript.into_values().collect::<Vec<_>>(),
        sent.into_values().collect::<Vec<_>>()
    );
    let (last_leader, last_term) = cluster.leader_and_term(&room).await;

    // Only the nodes that led the shard sent notifies (just one, unless leadership moved),
    // counted by their refresh of the metrics, every second.
    let leaders = if (last_leader, last_term) == (leader, term) {
        vec![leader]
    } else {
        println!(
            "the room's shard changed leaders: node {} (term {term}), then node {} (term \
             {last_term})",
            leader + 1,
            last_leader + 1
        );
        vec![leader, last_leader]
    };
    let delivered = "mimid_fanout_notifies_total{outcome=\"delivered\"}";
    let by_node = wait_for_metrics(&cluster, delivered, |n| {
        leaders.iter().map(|&index| n[index]).sum::<f64>() >= 1.0
    })
    .await;
    for (index, count) in by_node.iter().enumerate() {
        if !leaders.contains(&index) {
            assert_eq!(*count, 0.0, "node {} sent notifies: {by_node:?}", index + 1);
        }
    }
    b.shutdown().await;
    cluster.shutdown().await;
}

/// What one sender got while the leader was killed.
struct Load {
    client: MimiClient,
    /// Accepted sends.
    acked: Transcript,
    /// When the first send attempted after the kill was accepted.
    first_after_kill: Option<Instant>,
    /// Attempts answered 503 (no leader during the election, a leader gone mid-request).
    refused: usize,
}

/// Sends one message after another until `after_kill` of them were accepted after `killed`
/// was set. A message refused with 503 is resent as is until accepted (MIMI.md §7.6: a
/// resend of a request that took effect gets the original answer), so no message is left
/// with an unknown outcome.
async fn steady_load(
    mut client: MimiClient,
    room: RoomId,
    killed: tokio::sync::watch::Receiver<Option<Instant>>,
    after_kill: usize,
) -> Load {
    let name = client.id().to_string();
    let mut acked = Transcript::new();
    let (mut first_after_kill, mut refused, mut accepted_after) = (None, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        let text = format!("{name} {n}");
        let message = client.prepare_text(&room, &text).expect("encrypts");
        loop {
            assert!(Instant::now() < deadline, "{name}: writes never resumed");
            let killed_at = *killed.borrow();
            match client.submit_raw(&room, message.clone()).await {
                Ok(SubmitResult::Accepted { seq, .. }) => {
                    acked.insert(seq, (name.clone(), text));
                    if killed_at.is_some() {
                        first_after_kill.get_or_insert_with(Instant::now);
                        accepted_after += 1;
                    }
                    break;
                }
                Ok(other) => panic!("{name}: refused by the hub: {other:?}"),
                Err(ClientError::Status { status, reason }) => {
                    assert_eq!(status, 503, "{name}: {reason}");
                    refused += 1;
                }
                Err(other) => panic!("{name}: {other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if accepted_after >= after_kill {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Load {
        client,
        acked,
        first_after_kill,
        refused,
    }
}

/// Issue 4, must show: the node leading the room's shard dies under a steady load from
/// clients on the other two nodes; the survivors elect a leader, writes resume, and every
/// acknowledged message is in the history both surviving clients see, in one order.
///
/// [`mimid_node::server::Node::kill`] is the in-process stand-in for `kill -9`: transport and
/// listeners close at once, nothing in progress is waited for (the real-process SIGKILL
/// harness is `node/tests/crash.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_message() {
    let mut cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let room = cluster.room("busy");
    let leader = cluster.leader_of(&room).await;
    let others: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    let [alice, bob, _carol] = cluster
        .three_members(&room, [others[0], others[1], leader])
        .await;

    let (killed_tx, killed) = tokio::sync::watch::channel(None);
    const AFTER_KILL: usize = 5;
    let senders: Vec<_> = [alice, bob]
        .into_iter()
        .map(|client| {
            tokio::spawn(steady_load(
                client,
                room.clone(),
                killed.clone(),
                AFTER_KILL,
            ))
        })
        .collect();
    // Let the load run through the leader for a while.
    let deadline = Instant::now() + WAIT;
    while cluster.application_messages(others[0], &room).len() < 10 {
        assert!(Instant::now() < deadline, "no load before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped_at = Instant::now();
    killed_tx.send_replace(Some(stopped_at));
    cluster.kill(leader).await;

    let mut loads = Vec::new();
    for sender in senders {
        loads.push(sender.await.expect("sender finished"));
    }
    let resumed = loads
        .iter()
        .filter_map(|load| load.first_after_kill)
        .min()
        .expect("writes resumed");
    let new_leader = cluster.leader_of(&room).await;
    println!(
        "leader node {} killed: first accepted write {:?} after the stop (new leader node {}; \
         {} sends answered 503 meanwhile)",
        leader + 1,
        resumed - stopped_at,
        new_leader + 1,
        loads.iter().map(|load| load.refused).sum::<usize>()
    );

    // Each surviving client sees its own acknowledged sends and everything the other sent.
    let all: Transcript = loads.iter().flat_map(|load| load.acked.clone()).collect();
    let mut seen = Vec::new();
    for load in &mut loads {
        let mut transcript = load.acked.clone();
        let before = transcript.len();
        read_until(&mut load.client, all.len(), &mut transcript).await;
        assert!(
            transcript.len() > before,
            "{} saw nothing",
            load.client.id()
        );
        seen.push(transcript);
    }
    assert_eq!(seen[0], all, "an acknowledged message is missing or moved");
    assert_eq!(seen[1], all, "an acknowledged message is missing or moved");
    // Both surviving replicas hold exactly these messages, in this order. A client's own
    // sends are in its transcript from their acknowledgements, which the leader gives once it
    // applied them: a follower may apply the last of them a moment later.
    let expected: Vec<String> = all.values().map(|(_, text)| text.clone()).collect();
    for &index in &others {
        let deadline = Instant::now() + WAIT;
        while cluster.application_messages(index, &room).len() < expected.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            cluster.application_messages(index, &room).len(),
            expected.len(),
            "node {} holds another number of messages",
            index + 1
        );
    }
    assert_eq!(
        cluster.application_messages(others[0], &room),
        cluster.application_messages(others[1], &room)
    );
    cluster.shutdown().await;
}

/// Issue 4, must show: every node stops, all start again from their data directories (on new
/// ports): the room's history and membership are as before, and it accepts writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_recovers_everything() {
    let mut cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let room = cluster.room("durable");
    let [alice, bob, mut carol] = cluster.three_members(&room, [0, 1, 2]).await;
    let (mut alice, alice_sent) = send_many(alice, room.clone(), 3).await;
    let (mut bob, bob_sent) = send_many(bob, room.clone(), 3).await;
    let mut before_restart: Transcript = alice_sent
        .clone()
        .into_iter()
        .chain(bob_sent.clone())
        .collect();
    read_until(&mut carol, 6, &mut before_restart).await;
    // Every replica applied everything (the followers may lag the leader by a heartbeat).
    let deadline = Instant::now() + WAIT;
    let before = loop {
        let digests: Vec<Vec<u8>> = (0..3)
            .map(|index| cluster.room_digest(index, &room))
            .collect();
        if digests.windows(2).all(|pair| pair[0] == pair[1]) {
            break digests;
        }
        assert!(Instant::now() < deadline, "replicas never converged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!before[0].is_empty());

    for index in 0..3 {
        cluster.stop(index).await;
    }
    cluster.restart_stopped().await;
    for (index, digest) in before.iter().enumerate() {
        assert_eq!(
            &cluster.room_digest(index, &room),
            digest,
            "node {}: room state changed across the restart",
            index + 1
        );
        assert_eq!(cluster.application_messages(index, &room).len(), 6);
    }

    for (client, index) in [(&mut alice, 0), (&mut bob, 1), (&mut carol, 2)] {
        client
            .reconnect(cluster.endpoint(index))
            .await
            .expect("reconnects to its restarted node");
    }
    let (_carol, carol_sent) = send_many(carol, room.clone(), 2).await;
    let everything: Transcript = before_restart.into_iter().chain(carol_sent).collect();
    // Alice and Bob read nothing before the restart: their streams resume at their
    // acknowledged cursors (none), so they get the whole history, then Carol's new messages.
    for (client, own) in [(&mut alice, alice_sent), (&mut bob, bob_sent)] {
        let mut transcript = own;
        read_until(client, everything.len(), &mut transcript).await;
        assert_eq!(transcript, everything, "{} after the restart", client.id());
    }
    cluster.shutdown().await;
}

/// Issue 4, must show: a node cut off from the other two loses its shards' leaders, reports
/// not ready, and refuses writes with 503 and the reason; the other two go on. Healed, it is
/// ready again and holds what was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_quorum_is_not_ready() {
    let cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let room = cluster.room("partitioned");
    let [mut alice, mut bob, _carol] = cluster.three_members(&room, [0, 1, 2]).await;
    let (cut, cut_id) = (0, cluster.nodes[0].id());
    let admin = cluster.nodes[cut].node().admin_addr();
    let shard = cluster.nodes[cut]
        .node()
        .hub()
        .shards()
        .shard_of(room.as_bytes());

    // Each node's registry watcher points the transport at a peer's registered address when
    // it sees that address appear or change: the registry must name every node's address in
    // every replica, and the watchers (every 250 ms) must have taken them, before the cut, or
    // one re-points a cut peer at its real address (CI once caught the cut-off node still
    // leading, its followers' answers arriving).
    let deadline = Instant::now() + WAIT;
    let mut complete_since = None;
    loop {
        let complete = cluster.running().all(|member| {
            let meta = member.node().hub().cluster_meta();
            meta.nodes().len() == 3
                && meta
                    .nodes()
                    .values()
                    .all(|node| node.cluster_addr.is_some())
        });
        let since = complete_since.get_or_insert_with(Instant::now);
        if !complete {
            complete_since = None;
        } else if since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registry never named every node's address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every address the cut-off node and the others have of each other leads nowhere: a bound
    // UDP socket that never answers.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let nowhere = black_hole.local_addr().expect("address");
    for other in cluster.running() {
        if other.id() == cut_id {
            continue;
        }
        cluster.nodes[cut]
            .node()
            .set_cluster_peer(other.id(), nowhere)
            .expect("peer moved");
        other
            .node()
            .set_cluster_peer(cut_id, nowhere)
            .expect("peer moved");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let not_ready = http_get_status(&format!("http://{admin}/readyz")).await == Some(503);
        let leaderless = cluster.nodes[cut]
            .node()
            .cluster_handle()
            .leader(shard)
            .is_none();
        if not_ready && leaderless {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off node stays ready (not ready: {not_ready}, shard {shard} leaderless: \
             {leaderless}): {:?}",
            cluster.nodes[cut].node().cluster_handle().status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, reason) = http_get(&format!("http://{admin}/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(status, 503);
    assert!(reason.contains("cut off from a quorum"), "{reason}");
    match alice.send_text(&room, "from the minority").await {
        Err(ClientError::Status { status, reason }) => {
            assert_eq!(status, 503);
            assert!(
                reason.contains(&format!("shard {shard} has no leader")),
                "{reason}"
            );
        }
        other => panic!("a write through the cut-off node was not refused: {other:?}"),
    }

    // The majority goes on, once it has elected a leader of its own for the room's shard
    // (the cut-off node may have led it).
    let deadline = Instant::now() + WAIT;
    while cluster.nodes[1]
        .node()
        .cluster_handle()
        .leader(shard)
        .is_none_or(|leader| leader == cut_id)
    {
        assert!(Instant::now() < deadline, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (bob_again, during) = send_many(bob, room.clone(), 3).await;
    bob = bob_again;

    cluster.introduce();
    cluster.wait_ready().await;
    // Both replicas hold the three messages (node 2's may apply the last a moment after the
    // leader acknowledged it), the same ones.
    let deadline = Instant::now() + WAIT;
    while cluster.application_messages(cut, &room).len() < during.len()
        || cluster.application_messages(1, &room).len() < during.len()
    {
        assert!(Instant::now() < deadline, "the healed node never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.application_messages(cut, &room).len(), 3);
    assert_eq!(
        cluster.application_messages(cut, &room),
        cluster.application_messages(1, &room)
    );
    // Alice, connected to the healed node, receives what was written meanwhile and writes.
    let mut transcript = Transcript::new();
    read_until(&mut alice, 3, &mut transcript).await;
    assert_eq!(transcript, during);
    let (_alice, sent) = send_many(alice, room.clone(), 1).await;
    let mut transcript = Transcript::new();
    read_until(&mut bob, 1, &mut transcript).await;
    assert_eq!(transcript, sent);
    drop(black_hole);
    cluster.shutdown().await;
}

/// The public halves of node `index`'s own key files (the hub signing key, the franking
/// signing key), which it offered at start.
fn file_public_keys(cluster: &TestCluster, index: usize) -> (Vec<u8>, Vec<u8>) {
    let dir = &cluster.nodes[index].config.data_dir;
    let public = |file: &str| std::fs::read(dir.join(file)).expect("key file")[32..].to_vec();
    (public(HUB_KEY_FILE), public(FRANKING_SIGNING_KEY_FILE))
}

/// MIMI.md §5.3.1, §5.5 on one provider of three nodes: the provider keys are replicated
/// state, so every node publishes the same franking agent and signs groupInfo answers with
/// the same hub key, although each node generated key files of its own (exactly one node's
/// files won the install). A message submitted through node 2 is franked there, its Frank
/// computed again by nodes 1 and 3 for their push streams verifies for their clients, and a
/// report of it through node 3 is validated there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_franks_and_signs_with_the_provider_keys_mimi_5_3_1_and_5_5() {
    let cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let room = cluster.room("keys");
    let [mut alice, mut bob, mut carol] = cluster.three_members(&room, [0, 1, 2]).await;

    let mut agents = Vec::new();
    for client in [&alice, &bob, &carol] {
        let agent = client
            .franking_agent()
            .await
            .expect("frankingAgent answers");
        agents.push(agent.franking_signature_key.as_bytes().to_vec());
    }
    assert_eq!(
        agents[0], agents[1],
        "node 1 and node 2 publish different agents"
    );
    assert_eq!(
        agents[0], agents[2],
        "node 1 and node 3 publish different agents"
    );
    let hub_keys = [
        group_info_hub_key(&bob, &room).await,
        group_info_hub_key(&carol, &room).await,
    ];
    assert_eq!(
        hub_keys[0], hub_keys[1],
        "groupInfo answers of node 2 and node 3 are signed by different hub keys"
    );
    let replicated: Vec<_> = cluster
        .running()
        .map(|member| member.node().hub().provider_keys().expect("installed"))
        .collect();
    assert!(replicated.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(replicated[0].hub_public_key(), hub_keys[0]);
    assert_eq!(replicated[0].franking_public_key(), agents[0]);
    let winners: Vec<usize> = (0..3)
        .filter(|&index| {
            file_public_keys(&cluster, index) == (hub_keys[0].clone(), agents[0].clone())
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one node's key files are the provider's keys: {winners:?}"
    );

    let (accepted, issued) = match bob.send_text(&room, "franked on node 2").await {
        Ok(SubmitResult::Accepted {
            timestamp,
            frank: Some(frank),
            ..
        }) => (timestamp, frank),
        other => panic!("bob expected a franked acceptance: {other:?}"),
    };
    let mut kept = Vec::new();
    for client in [&mut carol, &mut alice] {
        let event = loop {
            match client.next_event(WAIT).await.expect("push stream works") {
                Some(event @ Event::Message { .. }) => break event,
                Some(_) => continue,
                None => panic!("{} waited for bob's message", client.id()),
            }
        };
        let Event::Message {
            frank, timestamp, ..
        } = event
        else {
            unreachable!()
        };
        assert_eq!(timestamp, accepted);
        match frank {
            FrankCheck::Verified(frank) => {
                assert_eq!(frank.frank, issued, "{}: another Frank", client.id());
                kept.push(*frank);
            }
            other => panic!("{}: the Frank does not verify: {other:?}", client.id()),
        }
    }
    carol
        .report_abuse(&room, &cluster.user("bob"), 0, "spam", &[&kept[0]])
        .await
        .expect("node 3 validates the Frank node 2 made");
    cluster.shutdown().await;
}
