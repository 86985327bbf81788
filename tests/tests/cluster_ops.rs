//! Node-level operations of a provider's cluster (issue 4 part 5, issue 6 part 3;
//! ARCHITECTURE.md "Cluster"), on in-process nodes over loopback (real quinn between nodes
//! and for clients, raft-rs in sled per node): `mimid node status`, drain, adding a node that
//! receives its replicas by snapshot, decommissioning one under load, and the refusal to
//! decommission below the replication factor.
//!
//! Waits are polls with a deadline; the pauses in the senders' loops pace the load and
//! synchronise nothing.

use std::time::{Duration, Instant};

use mimid_actors::ids::RoomId;
use mimid_actors::shard_descriptors::DescriptorRefusal;
use mimid_node::admin::{admin_call, AdminToken};
use mimid_node::client::{ClientError, Event, MimiClient, SubmitResult, UpdateResult};
use mimid_node::cluster_ops::{
    render_status, run_node_command, ClusterStatus, NodeCommand, ADD_NODE_PATH, STATUS_PATH,
};
use mimid_tests::{
    add_users_when_led, create_room_when_led, http_get, http_get_status, metric, read_until,
    TestCluster, TestNode, Transcript, WAIT,
};

/// Longest a whole add or decommission, or the re-election and records after a kill, may take
/// here.
const MOVES: Duration = Duration::from_secs(60);

/// `GET /admin/cluster/status` of node `index`, with the admin token.
async fn status(cluster: &TestCluster, index: usize) -> ClusterStatus {
    let token = cluster.admin_token();
    let (code, body) = admin_call(&cluster.admin(index), Some(&token), "GET", STATUS_PATH, b"")
        .await
        .expect("status answers");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls node `index`'s status until `done` holds; returns it.
async fn wait_for_status(
    cluster: &TestCluster,
    index: usize,
    what: &str,
    within: Duration,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = status(cluster, index).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}:\n{}",
            render_status(&status).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every shard's descriptor in shard 0 (`ShardEntry::recorded`, as the asked node's
/// replica holds it) names the leader, voters and learners its leader reported.
fn descriptors_current(status: &ClusterStatus) -> bool {
    status.shards.iter().all(|shard| {
        !shard.lag.is_empty()
            && shard.recorded.as_ref().is_some_and(|recorded| {
                Some(recorded.leader) == shard.leader
                    && recorded.voters == shard.voters
                    && recorded.learners == shard.learners
            })
    })
}

/// A POST to an admin route with `token`: status and body. Asked again while the answer is a
/// 503 of shard 0 between two leaders ("repeat the request": nothing was proposed), for
/// [`WAIT`] at most.
async fn post(admin: &str, token: &AdminToken, path: &str, body: &str) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, answer) = admin_call(admin, Some(token), "POST", path, body.as_bytes())
            .await
            .expect("the admin listener answers");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if !(code == 503 && leaderless(&answer) && Instant::now() < deadline) {
            return (code, answer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a 503's reason is a shard without a leader to take the request (an election, or a
/// leadership being handed over).
fn leaderless(reason: &str) -> bool {
    reason.contains("has no leader") || reason.contains("leadership is moving")
}

async fn readyz(cluster: &TestCluster, index: usize) -> (u16, String) {
    http_get(&format!("http://{}/readyz", cluster.admin(index)))
        .await
        .expect("readyz answers")
}

/// The node ids with their registry state, as `status` lists them.
fn states(status: &ClusterStatus) -> Vec<(u64, String)> {
    status
        .nodes
        .iter()
        .map(|node| (node.id, node.state.clone()))
        .collect()
}

/// Issue 4 / issue 6: `mimid node status` names every node (live, active, where it listens)
/// and every shard (leader, term, commit, voters, learners, lag), through the admin route and
/// through the command-line function, from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_node_and_shard() {
    let cluster = TestCluster::start(3).await;
    // The registry is seeded by shard 0's first leader and each node records its address.
    let seen = wait_for_status(&cluster, 0, "registry seeded", WAIT, |status| {
        status.nodes.len() == 3
            && status
                .nodes
                .iter()
                .all(|node| node.live && node.cluster_addr.is_some())
            && status.shards.iter().all(|shard| !shard.lag.is_empty())
    })
    .await;
    assert_eq!(seen.node_id, 1);
    assert_eq!(seen.replication_factor, 3);
    assert!(!seen.draining);
    for (node, member) in seen.nodes.iter().zip(&cluster.nodes) {
        assert_eq!(node.id, member.id());
        assert_eq!(node.state, "active");
        assert_eq!(
            node.cluster_addr.as_deref(),
            Some(member.node().cluster_addr().unwrap().to_string().as_str())
        );
        assert_eq!((node.voter_of, node.learner_of), (4, 0));
        assert_eq!(node.draining, Some(false));
    }
    assert_eq!(seen.nodes.iter().map(|node| node.leads).sum::<usize>(), 4);
    assert_eq!(seen.shards.len(), 4);
    for shard in &seen.shards {
        let leader = shard.leader.expect("every shard has a leader");
        assert_eq!(
            shard.reported_by, leader,
            "the leader answered for its shard"
        );
        assert_eq!(shard.voters, [1, 2, 3]);
        assert!(shard.learners.is_empty());
        assert!(shard.commit >= 1 && shard.applied <= shard.commit);
        assert_eq!(shard.lag.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(shard.lag[&leader], 0);
    }
    // Another node tells the same registry, once its replica of shard 0 applied what node 1's
    // did (a follower applies a moment after the leader).
    let other = wait_for_status(
        &cluster,
        2,
        "node 3's registry as node 1's",
        WAIT,
        |other| states(other) == states(&seen),
    )
    .await;
    assert_eq!(other.node_id, 3);
    // The command line prints one row per node and per shard.
    let lines = run_node_command(
        &NodeCommand::Status {
            host: cluster.admin(1),
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect("mimid node status");
    println!("{}", lines.join("\n"));
    assert!(lines[0].contains("replication factor 3"), "{lines:?}");
    for id in 1..=3 {
        let row = lines
            .iter()
            .find(|line| {
                line.trim_start()
                    .starts_with(&format!("{id}  live  active"))
            })
            .unwrap_or_else(|| panic!("no row for node {id}: {lines:?}"));
        assert!(row.contains("127.0.0.1:"), "{row}");
    }
    for shard in 0..4 {
        assert!(
            lines
                .iter()
                .any(|line| line.trim_start().starts_with(&format!("{shard}  "))
                    && line.contains("1,2,3")),
            "no row for shard {shard}: {lines:?}"
        );
    }
    // A node that cannot be reached is an error that names the address.
    let refused = run_node_command(
        &NodeCommand::Status {
            host: "127.0.0.1:1".into(),
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect_err("nothing listens there");
    assert!(
        format!("{refused:#}").contains("127.0.0.1:1"),
        "{refused:#}"
    );

    // Issue 6: the cluster routes need the provider's admin token; without it (401) or with
    // another (403) they answer nothing and change nothing.
    let refused = run_node_command(
        &NodeCommand::Status {
            host: cluster.admin(1),
        },
        None,
    )
    .await
    .expect_err("no admin token");
    let message = format!("{refused:#}");
    assert!(
        message.contains("401") && message.contains("--token-file"),
        "{message}"
    );
    let refused = run_node_command(
        &NodeCommand::Drain {
            host: cluster.admin(1),
        },
        Some(&AdminToken::generate()),
    )
    .await
    .expect_err("another admin token");
    assert!(format!("{refused:#}").contains("403"), "{refused:#}");
    assert!(
        !status(&cluster, 1).await.draining,
        "a refused drain drains nothing"
    );
    let scraped = scrape_node(&cluster, 1).await;
    for (outcome, at_least) in [
        ("missing_token", 1.0),
        ("wrong_token", 1.0),
        ("authorized", 1.0),
    ] {
        let series = format!("mimid_admin_requests_total{{outcome=\"{outcome}\"}}");
        let value = metric(&scraped, &series).unwrap_or(0.0);
        assert!(value >= at_least, "{series} {value}");
    }
    cluster.shutdown().await;
}

/// Node `index`'s `/metrics` (open without a token).
async fn scrape_node(cluster: &TestCluster, index: usize) -> String {
    let url = format!("http://{}/metrics", cluster.admin(index));
    let (code, body) = http_get(&url).await.expect("metrics answer");
    assert_eq!(code, 200);
    body
}

/// Issue 6, must show: `/readyz` flips to 503 during drain and back. Draining hands every
/// leadership away (and takes it away again if an election gives one back); undrain makes
/// the node ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_leadership_away_and_readyz_turns_503() {
    let cluster = TestCluster::start(3).await;
    // The node that leads most shards (at least one: four shards, three nodes).
    let leads = |index: usize| {
        let node = cluster.nodes[index].node();
        let handle = node.cluster_handle();
        (0..4)
            .filter(|&shard| handle.leader(shard) == Some(node.cluster_handle().node_id()))
            .count()
    };
    let drained = (0..3)
        .max_by_key(|&index| leads(index))
        .expect("three nodes");
    let drained_id = cluster.nodes[drained].id();
    assert!(leads(drained) >= 1);
    assert_eq!(readyz(&cluster, drained).await.0, 200);

    let lines = run_node_command(
        &NodeCommand::Drain {
            host: cluster.admin(drained),
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect("mimid node drain");
    assert!(lines[0].contains("draining"), "{lines:?}");
    let started = Instant::now();
    let deadline = started + WAIT;
    let all_moved = |cluster: &TestCluster| {
        cluster.running().all(|member| {
            let handle = member.node().cluster_handle();
            (0..4).all(|shard| handle.leader(shard).is_some_and(|l| l != drained_id))
        })
    };
    while !all_moved(&cluster) {
        assert!(
            Instant::now() < deadline,
            "leaderships stayed on the drained node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "node {drained_id} drained of {} leaderships in {:?}",
        leads(drained),
        started.elapsed()
    );
    let (code, reason) = readyz(&cluster, drained).await;
    assert_eq!(code, 503);
    assert!(reason.contains("draining"), "{reason}");
    let seen = status(&cluster, drained).await;
    assert!(seen.draining);
    assert_eq!(seen.nodes[drained].leads, 0);
    assert_eq!(seen.nodes[drained].draining, Some(true));
    // The others stay ready, and the cluster takes writes through the drained node.
    let other = (drained + 1) % 3;
    assert_eq!(readyz(&cluster, other).await.0, 200);
    let mut alice = cluster.client(drained, "alice", "phone", 1).await;
    let room = cluster.room("drained");
    create_room_when_led(&mut alice, &room)
        .await
        .expect("room created");

    // Leadership given back to the draining node (as an election could) is handed away
    // again: two more terms, and the shard is led elsewhere.
    let shard = 0;
    let term = |cluster: &TestCluster| {
        cluster.nodes[other]
            .node()
            .cluster_handle()
            .shard_status(shard)
            .expect("shard 0")
            .term
    };
    let term_before = term(&cluster);
    let leader = cluster.nodes[other]
        .node()
        .cluster_handle()
        .leader(shard)
        .expect("a leader");
    let leader_index = (0..3).find(|&i| cluster.nodes[i].id() == leader).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    cluster.nodes[leader_index]
        .node()
        .cluster_handle()
        .transfer_leader(
            shard,
            drained_id,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .expect("transfer queued");
    // The old leader may not see the drained node lead before the drain loop hands the
    // shard on, in which case its transfer reports a timeout; the terms tell.
    let given_back = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
        .await
        .unwrap();
    assert!(
        matches!(
            given_back,
            Ok(Ok(()) | Err(mimid_cluster::TransferError::TimedOut { .. }))
        ),
        "{given_back:?}"
    );
    let deadline = Instant::now() + WAIT;
    while !(all_moved(&cluster) && term(&cluster) >= term_before + 2) {
        assert!(
            Instant::now() < deadline,
            "shard 0 stayed on the draining node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let lines = run_node_command(
        &NodeCommand::Undrain {
            host: cluster.admin(drained),
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect("mimid node undrain");
    assert!(lines[0].contains("not draining"), "{lines:?}");
    let deadline = Instant::now() + WAIT;
    while readyz(&cluster, drained).await.0 != 200 {
        assert!(Instant::now() < deadline, "undrained node never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!status(&cluster, drained).await.draining);
    cluster.shutdown().await;
}

/// What one sender got.
struct Load {
    client: MimiClient,
    acked: Transcript,
    /// Attempts answered 503 (a shard between leaders or between members), each resent.
    refused: usize,
}

/// Sends one message after another until `stop` is set, each until accepted: a 503 is
/// resent as is (MIMI.md §7.6: a resend of a request that took effect gets the original
/// answer), so no message is left with an unknown outcome.
async fn steady_load(
    mut client: MimiClient,
    room: RoomId,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Load {
    let name = client.id().to_string();
    let (mut acked, mut refused) = (Transcript::new(), 0);
    let deadline = Instant::now() + 3 * MOVES;
    for n in 0.. {
        if *stop.borrow() {
            break;
        }
        let text = format!("{name} {n}");
        let message = client.prepare_text(&room, &text).expect("encrypts");
        loop {
            assert!(Instant::now() < deadline, "{name}: writes never resumed");
            match client.submit_raw(&room, message.clone()).await {
                Ok(SubmitResult::Accepted { seq, .. }) => {
                    acked.insert(seq, (name.clone(), text));
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Load {
        client,
        acked,
        refused,
    }
}

/// The messages of `room` in the replica of the first running node that holds its shard.
fn held_messages(cluster: &TestCluster, room: &RoomId) -> usize {
    cluster
        .holders_of(room)
        .first()
        .map_or(0, |&index| cluster.application_messages(index, room).len())
}

/// Waits until a replica of `room` holds `more` messages more than now.
async fn wait_for_messages(cluster: &TestCluster, room: &RoomId, more: usize) {
    let at_least = held_messages(cluster, room) + more;
    let deadline = Instant::now() + WAIT;
    while held_messages(cluster, room) < at_least {
        assert!(Instant::now() < deadline, "the load stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sums `series` over the running nodes' scrapes.
async fn sum_metric(cluster: &TestCluster, series: &str) -> f64 {
    let mut total = 0.0;
    for index in 0..cluster.nodes.len() {
        if cluster.nodes[index].node.is_none() {
            continue;
        }
        let url = format!("http://{}/metrics", cluster.admin(index));
        let (_, body) = http_get(&url).await.expect("metrics answer");
        total += metric(&body, series).unwrap_or(0.0);
    }
    total
}

/// Issue 4, must show: add a 4th node, then decommission an original one, under load:
/// replicas move, nothing is lost. Clients keep writing through nodes 2 and 3 while node 4
/// joins (with `cluster.replicas = "r"`, the default: a learner of shard 0 and of its share of
/// the other shards by snapshot, each promoted and the voter it replaces removed, so each node
/// ends holding fewer shards) and node 1 is decommissioned (its voters move to the others, it
/// ends with no replica and is stopped). Every acknowledged message is in the history every
/// client and replica holds, in one order (MIMI.md §7.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_fourth_node_then_decommission_an_original_under_load() {
    let mut cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    wait_for_status(&cluster, 1, "registry seeded", WAIT, |status| {
        status.nodes.iter().all(|node| node.cluster_addr.is_some()) && status.nodes.len() == 3
    })
    .await;
    let room = cluster.room("moving");
    let mut alice = cluster.client(1, "alice", "phone", 1).await;
    let mut bob = cluster.client(2, "bob", "phone", 1).await;
    for client in [&mut alice, &mut bob] {
        client.connect_stream().await.expect("stream opens");
    }
    create_room_when_led(&mut alice, &room)
        .await
        .expect("room created");
    let added = add_users_when_led(&mut alice, &room, &[cluster.user("bob")])
        .await
        .expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    match bob.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("bob expected a Welcome, got {other:?}"),
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let senders: Vec<_> = [alice, bob]
        .into_iter()
        .map(|client| tokio::spawn(steady_load(client, room.clone(), stop.clone())))
        .collect();
    wait_for_messages(&cluster, &room, 10).await;

    // Node 4 starts with join_existing and the others' addresses; they learn its address
    // from the registry only.
    let fourth = cluster.add_node(|_| {}).await;
    let fourth_addr = cluster.nodes[fourth]
        .node()
        .cluster_addr()
        .expect("clustered");
    let add_started = Instant::now();
    let lines = run_node_command(
        &NodeCommand::Add {
            host: cluster.admin(1),
            id: 4,
            addr: fourth_addr.to_string(),
            locality: None,
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect("mimid node add");
    assert!(lines[0].contains("node 4 registered"), "{lines:?}");
    let placed = wait_for_status(
        &cluster,
        1,
        "node 4 placed and voters rebalanced",
        MOVES,
        |s| {
            s.nodes.len() == 4
                && s.nodes.iter().all(|node| node.live && node.voter_of == 3)
                && s.shards.iter().all(|shard| {
                    // Shard 0 stays on every node; the others on their voters only.
                    let members = shard.voters.len() + shard.learners.len();
                    !shard.lag.is_empty() && members == if shard.shard == 0 { 4 } else { 3 }
                })
                && descriptors_current(s)
        },
    )
    .await;
    let add_took = add_started.elapsed();
    println!(
        "after adding node 4:\n{}",
        render_status(&placed).join("\n")
    );
    let deadline = Instant::now() + WAIT;
    while readyz(&cluster, fourth).await.0 != 200 {
        assert!(Instant::now() < deadline, "node 4 never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshots = cluster.nodes[fourth]
        .node()
        .cluster_metrics()
        .snapshots_received;
    assert!(snapshots >= 3, "node 4 caught up by snapshots: {snapshots}");
    // Storage per node shrinks: 4 + 3 x 3 replicas over four nodes (shard 0 on every node,
    // the others on three each), so not every node holds every shard.
    // Each node tells from its own replicas (and its copy of shard 0's descriptors), which
    // learn of a removal a moment after the leader that reported it.
    let held_by_each = || -> Vec<usize> {
        (0..4)
            .map(|index| {
                let hub = cluster.nodes[index].node().hub();
                (0..4).filter(|&shard| hub.holds(shard)).count()
            })
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let held = loop {
        let held = held_by_each();
        if held.iter().sum::<usize>() == 4 + 3 * 3 {
            break held;
        }
        assert!(Instant::now() < deadline, "replicas held: {held:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(held.iter().any(|&count| count < 4), "{held:?}");
    let moves_after_add =
        sum_metric(&cluster, "mimid_placement_moves_total{outcome=\"applied\"}").await;
    wait_for_messages(&cluster, &room, 5).await;

    // Decommission node 1 and wait until it holds nothing.
    let decommission_started = Instant::now();
    let lines = run_node_command(
        &NodeCommand::Decommission {
            host: cluster.admin(1),
            id: 1,
            wait: true,
            wait_timeout_secs: MOVES.as_secs(),
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect("mimid node decommission --wait");
    let decommission_took = decommission_started.elapsed();
    println!("{}", lines.join("\n"));
    assert!(lines[0].contains("node 1: decommissioning"), "{lines:?}");
    assert!(lines[1].contains("holds no replica"), "{lines:?}");
    // The descriptors in shard 0 follow the membership changes (issue 4 build item 1).
    let after = wait_for_status(&cluster, 1, "node 1 gone from every shard", WAIT, |s| {
        s.shards.iter().all(|shard| !shard.lag.is_empty()) && descriptors_current(s)
    })
    .await;
    println!(
        "after decommissioning node 1:\n{}",
        render_status(&after).join("\n")
    );
    assert_eq!(
        states(&after),
        [
            (1, "decommissioned".to_owned()),
            (2, "active".to_owned()),
            (3, "active".to_owned()),
            (4, "active".to_owned())
        ]
    );
    for shard in &after.shards {
        assert_eq!(shard.voters, [2, 3, 4], "shard {}", shard.shard);
        assert!(shard.learners.is_empty(), "shard {}", shard.shard);
        let recorded = shard.recorded.as_ref().expect("recorded");
        assert_eq!(recorded.voters, [2, 3, 4], "shard {}", shard.shard);
    }
    // Node 1 learns of its last removal when the leader's broadcast of that commit reaches
    // it, which may be after the registry marked it decommissioned.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, reason) = readyz(&cluster, 0).await;
        if code == 503 && reason.contains("decommissioned") {
            break;
        }
        assert_eq!(code, 503, "{reason}");
        assert!(
            Instant::now() < deadline,
            "node 1 does not say it is decommissioned: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moves = sum_metric(&cluster, "mimid_placement_moves_total{outcome=\"applied\"}").await;

    // Node 1 can be stopped; the rest goes on.
    cluster.stop(0).await;
    wait_for_messages(&cluster, &room, 5).await;
    stop_tx.send_replace(true);
    let mut loads = Vec::new();
    for sender in senders {
        loads.push(sender.await.expect("sender finished"));
    }
    let all: Transcript = loads.iter().flat_map(|load| load.acked.clone()).collect();
    println!(
        "node 4 added and rebalanced in {add_took:?}, node 1 decommissioned in \
         {decommission_took:?}; {moves} placement steps ({moves_after_add} for the add); {} \
         messages acknowledged, {} sends answered 503 and resent",
        all.len(),
        loads.iter().map(|load| load.refused).sum::<usize>()
    );
    for load in &mut loads {
        let mut transcript = load.acked.clone();
        read_until(&mut load.client, all.len(), &mut transcript).await;
        assert_eq!(
            transcript,
            all,
            "{}: a message is missing or moved",
            load.client.id()
        );
    }
    // The remaining replicas (nodes 2 to 4 hold every shard after the decommission) hold
    // exactly these messages, in this order.
    let expected: Vec<String> = all.values().map(|(_, text)| text.clone()).collect();
    assert_eq!(cluster.holders_of(&room), [1, 2, 3]);
    let deadline = Instant::now() + WAIT;
    for index in 1..4 {
        while cluster.application_messages(index, &room).len() < expected.len() {
            assert!(
                Instant::now() < deadline,
                "node {} never caught up",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(cluster.application_messages(1, &room).len(), expected.len());
    assert_eq!(
        cluster.application_messages(1, &room),
        cluster.application_messages(2, &room)
    );
    assert_eq!(
        cluster.application_messages(1, &room),
        cluster.application_messages(3, &room)
    );
    cluster.shutdown().await;
}

/// Issue 4 build item 1 (CockroachDB's meta ranges): every shard's leader records in shard 0
/// where its shard lives, and the records follow the leaderships on every node: after a drain
/// moves a node's leaderships away and after the node leading most shards is killed. A record
/// older than the held one (a deposed leader's) is refused and changes nothing; the held one
/// again is taken as already held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_descriptors_follow_elections_and_refuse_stale_records() {
    let mut cluster = TestCluster::start(3).await;
    for index in 0..3 {
        wait_for_status(&cluster, index, "descriptors recorded", MOVES, |s| {
            descriptors_current(s)
        })
        .await;
    }
    let (code, body) = post(
        &cluster.admin(0),
        &cluster.admin_token(),
        "/admin/cluster/drain",
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    for index in 0..3 {
        let seen = wait_for_status(
            &cluster,
            index,
            "node 1's leaderships recorded away",
            MOVES,
            |s| {
                descriptors_current(s)
                    && s.shards
                        .iter()
                        .all(|shard| shard.recorded.as_ref().is_some_and(|r| r.leader != 1))
            },
        )
        .await;
        let table = render_status(&seen).join("\n");
        assert!(table.contains("RECORDED"), "{table}");
    }

    // A stale record: the held one's term minus one, even one that claims to have applied
    // further, is refused through any node; the held one again changes nothing. Tried again if
    // shard 0 answered 503 (between leaders) or the shard's leader recorded anew meanwhile
    // (an election), which the refusal of the held one names.
    let hub = cluster.nodes[2].node().hub().clone();
    let deadline = Instant::now() + WAIT;
    let (held, shard) = loop {
        let held = hub
            .shard_descriptors()
            .iter()
            .max_by_key(|descriptor| descriptor.term)
            .cloned()
            .expect("recorded");
        let shard = held.shard;
        assert!(held.term >= 1, "{held:?}");
        let mut stale = held.clone();
        stale.term -= 1;
        stale.as_of += 1_000;
        let verdict = hub.record_shard_descriptor(stale).await;
        let again = match &verdict {
            Ok(verdict) => {
                assert!(
                    matches!(verdict, Err(DescriptorRefusal::Stale { shard: refused, .. }) if *refused == shard),
                    "{verdict:?}"
                );
                hub.record_shard_descriptor(held.clone()).await
            }
            Err(e) => Err(e.clone()),
        };
        let moved_on = match &again {
            Ok(Ok(false)) => break (held, shard),
            Ok(Err(DescriptorRefusal::Stale {
                held_term,
                held_as_of,
                ..
            })) => (*held_term, *held_as_of) != (held.term, held.as_of),
            Err(_) => true,
            Ok(_) => false,
        };
        assert!(
            moved_on && Instant::now() < deadline,
            "the held record {held:?} again: {again:?} (the stale one: {verdict:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let now = hub
        .shard_descriptors()
        .get(shard)
        .cloned()
        .expect("recorded");
    assert!(
        now.term >= held.term && now.as_of >= held.as_of,
        "a refused record changed the held one: {held:?} -> {now:?}"
    );

    // Kill the node leading most shards: the survivors re-elect and record the new leaders.
    let leads = |status: &ClusterStatus, id: u64| {
        status
            .shards
            .iter()
            .filter(|shard| shard.leader == Some(id))
            .count()
    };
    let before = status(&cluster, 2).await;
    let victim = (1..3)
        .max_by_key(|&index| leads(&before, cluster.nodes[index].id()))
        .expect("two candidates");
    let victim_id = cluster.nodes[victim].id();
    let survivor = if victim == 1 { 2 } else { 1 };
    cluster.kill(victim).await;
    // The survivors notice the killed node (hibernating shards it led by their connections'
    // idle timeout), elect, and each new leader records its shard: seconds each on a loaded
    // machine.
    let seen = wait_for_status(&cluster, survivor, "the new leaders recorded", MOVES, |s| {
        descriptors_current(s)
            && s.shards.iter().all(|shard| {
                shard
                    .recorded
                    .as_ref()
                    .is_some_and(|r| r.leader != victim_id)
            })
    })
    .await;
    println!(
        "after killing node {victim_id}:\n{}",
        render_status(&seen).join("\n")
    );
    cluster.shutdown().await;
}

/// Issue 4: decommissioning is refused when the rest cannot hold the replication factor:
/// three nodes with R = 3 answer 409 with the reason, and nothing changes (registry, shard
/// members). Malformed requests are refused with their reason too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_is_refused_when_the_rest_cannot_hold_the_replication_factor() {
    let cluster = TestCluster::start(3).await;
    let before = wait_for_status(&cluster, 0, "registry seeded", WAIT, |status| {
        status.nodes.len() == 3 && status.nodes.iter().all(|node| node.cluster_addr.is_some())
    })
    .await;
    let registries = |cluster: &TestCluster| {
        cluster
            .running()
            .map(|member| member.node().hub().cluster_meta())
            .collect::<Vec<_>>()
    };
    // The reference is taken once every node's replica holds the whole registry: a follower
    // applies a moment after the leader (CI once caught node 3's without node 1's address).
    let deadline = Instant::now() + WAIT;
    let registry = loop {
        let now = registries(&cluster);
        let complete = now.iter().all(|meta| {
            meta == &now[0]
                && meta
                    .nodes()
                    .values()
                    .all(|node| node.cluster_addr.is_some())
        });
        if complete {
            break now;
        }
        assert!(Instant::now() < deadline, "the registries differ: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let admin = cluster.admin(1);
    let token = cluster.admin_token();
    let (code, reason) = post(&admin, &token, "/admin/cluster/nodes/1/decommission", "").await;
    assert_eq!(code, 409, "{reason}");
    assert!(
        reason.contains("would leave 2 active nodes, fewer than the replication factor 3"),
        "{reason}"
    );
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let refused = run_node_command(
            &NodeCommand::Decommission {
                host: admin.clone(),
                id: 2,
                wait: true,
                wait_timeout_secs: 5,
            },
            Some(&cluster.admin_token()),
        )
        .await
        .expect_err("refused");
        let text = format!("{refused:#}");
        if !(text.contains("503") && leaderless(&text) && Instant::now() < deadline) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.contains("409"), "{refused}");

    let bad = [
        (
            "/admin/cluster/nodes/9/decommission",
            "",
            404,
            "not registered",
        ),
        (
            "/admin/cluster/nodes/x/decommission",
            "",
            400,
            "not a node id",
        ),
        (
            ADD_NODE_PATH,
            "{\"id\": 0, \"cluster_addr\": \"127.0.0.1:9\"}",
            400,
            "reserved",
        ),
        (
            ADD_NODE_PATH,
            "{\"id\": 5, \"cluster_addr\": \"nowhere\"}",
            400,
            "not IP:PORT",
        ),
        (
            ADD_NODE_PATH,
            "{\"id\": 5, \"cluster_addr\": \"0.0.0.0:9\"}",
            400,
            "cannot be dialled",
        ),
        (
            ADD_NODE_PATH,
            "{\"id\": 2, \"cluster_addr\": \"127.0.0.1:9\"}",
            409,
            "already registered",
        ),
        (ADD_NODE_PATH, "[]", 400, "the body must be"),
    ];
    for (path, body, expected, words) in bad {
        let (code, reason) = post(&admin, &token, path, body).await;
        assert_eq!(code, expected, "{path} {body}: {reason}");
        assert!(reason.contains(words), "{path} {body}: {reason}");
    }
    let taken = before.nodes[0].cluster_addr.clone().expect("address");
    let (code, reason) = post(
        &admin,
        &token,
        ADD_NODE_PATH,
        &format!("{{\"id\": 5, \"cluster_addr\": \"{taken}\"}}"),
    )
    .await;
    assert_eq!(code, 409, "{reason}");
    assert!(reason.contains("node 1 is registered at"), "{reason}");

    // Nothing changed: the registry on every node, every shard's members, readiness.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(registries(&cluster), registry);
    }
    let after = status(&cluster, 0).await;
    assert_eq!(states(&after), states(&before));
    for (shard, was) in after.shards.iter().zip(&before.shards) {
        assert_eq!(
            (&shard.voters, &shard.learners),
            (&was.voters, &was.learners)
        );
    }
    // Ready, every node (a moment of 503 is a shard between two leaders, not a change).
    for index in 0..3 {
        let url = format!("http://{}/readyz", cluster.admin(index));
        let deadline = Instant::now() + WAIT;
        while http_get_status(&url).await != Some(200) {
            assert!(Instant::now() < deadline, "node index {index} not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster.shutdown().await;
}

/// A node without `cluster.listen` (`mimid dev`, a single `mimid start`) reports itself and its
/// shards, drains without anyone to hand leaderships to, and has no registry to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_running_alone_reports_itself_and_has_no_registry_to_change() {
    let node = TestNode::start().await;
    let admin = node.node().admin_addr().to_string();
    let token = node.admin_token();
    let (code, body) = admin_call(&admin, Some(&token), "GET", STATUS_PATH, b"")
        .await
        .expect("status answers");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{body}");
    let alone: ClusterStatus = serde_json::from_str(&body).expect("JSON");
    assert_eq!(alone.replication_factor, 0);
    assert_eq!(states(&alone), [(1, "unregistered".to_owned())]);
    assert!(alone.nodes[0].live);
    assert_eq!(alone.nodes[0].leads, 4);
    assert!(alone.shards.iter().all(|shard| shard.voters == [1]));
    for (path, body) in [
        (
            ADD_NODE_PATH,
            "{\"id\": 2, \"cluster_addr\": \"127.0.0.1:9\"}",
        ),
        ("/admin/cluster/nodes/1/decommission", ""),
    ] {
        let (code, reason) = post(&admin, &token, path, body).await;
        assert_eq!(code, 409, "{path}: {reason}");
        assert!(reason.contains("runs alone"), "{reason}");
    }
    let (code, _) = post(&admin, &token, "/admin/cluster/drain", "").await;
    assert_eq!(code, 200);
    let (code, reason) = http_get(&format!("http://{admin}/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(code, 503);
    assert!(reason.contains("draining"), "{reason}");
    let (code, _) = post(&admin, &token, "/admin/cluster/undrain", "").await;
    assert_eq!(code, 200);
    assert_eq!(
        http_get_status(&format!("http://{admin}/readyz")).await,
        Some(200)
    );
    node.shutdown().await;
}
