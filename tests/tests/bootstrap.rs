//! A cluster formed CockroachDB-style (issue 4 item 5; ARCHITECTURE.md "Cluster";
//! ops/runbooks/bootstrap.md): in-process nodes of one provider started with nothing but
//! `cluster.join` addresses find each other, wait uninitialized, and become one cluster when
//! `POST /admin/cluster/init` reaches one of them; the cluster id then keeps every other
//! cluster's nodes out.
//!
//! Waits are polls with a deadline.

use std::time::{Duration, Instant};

use mimid_actors::ids::RoomId;
use mimid_node::admin::admin_call;
use mimid_node::client::{MimiClient, SubmitResult};
use mimid_node::cluster_ops::{run_init, ClusterStatus, InitAnswer, Role, INIT_PATH, STATUS_PATH};
use mimid_node::server::start_joining;
use mimid_tests::{http_get, metric, read_until, submit_resending, TestCluster, Transcript, WAIT};

/// `POST /admin/cluster/init` on the admin listener `admin`, with the provider's token.
async fn init(cluster: &TestCluster, admin: &str) -> (u16, String) {
    let token = cluster.admin_token();
    let (status, body) = admin_call(admin, Some(&token), "POST", INIT_PATH, b"")
        .await
        .expect("the admin listener answers");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET /admin/cluster/status` of node `index`.
async fn status(cluster: &TestCluster, index: usize) -> ClusterStatus {
    let token = cluster.admin_token();
    let (code, body) = admin_call(&cluster.admin(index), Some(&token), "GET", STATUS_PATH, b"")
        .await
        .expect("the admin listener answers");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("a cluster status")
}

/// Polls node `index`'s status until `done` holds for it; returns it.
async fn status_until(
    cluster: &TestCluster,
    index: usize,
    what: &str,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status(cluster, index).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Alice on node `a` creates `room` with Bob on node `b` and Carol on node `c`; each sends
/// `each` messages; every client reads them all. Returns the three transcripts.
async fn one_room_three_nodes(
    cluster: &TestCluster,
    room: &RoomId,
    [a, b, c]: [usize; 3],
    each: usize,
) -> Vec<Transcript> {
    let mut clients: Vec<MimiClient> = cluster.three_members(room, [a, b, c]).await.into();
    let mut transcripts = vec![Transcript::new(); 3];
    for n in 0..each {
        for (client, transcript) in clients.iter_mut().zip(&mut transcripts) {
            let name = client.id().to_string();
            let text = format!("{name} {n}");
            let message = client.prepare_text(room, &text).expect("encrypts");
            match submit_resending(client, room, message).await.0 {
                SubmitResult::Accepted { seq, .. } => {
                    transcript.insert(seq, (name, text));
                }
                other => panic!("{name} could not send: {other:?}"),
            }
        }
    }
    for (client, transcript) in clients.iter_mut().zip(&mut transcripts) {
        read_until(client, 3 * each, transcript).await;
    }
    transcripts
}

/// Issue 4 item 5: three nodes that each know one other node's address (nodes 2 and 3 only
/// node 1's, node 1 node 2's) find all the others by gossip, wait uninitialized (no shard
/// group, `/readyz` 503 "cluster not initialized") until `init` on one of them, then run as one
/// cluster: one cluster id everywhere, every shard replicated on all three, clients on every
/// node see one order. A second `init` anywhere is a 409 that changes nothing, and a node
/// started with `--join` afterwards registers itself and is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_with_join_addresses_form_one_cluster_at_init() {
    let mut cluster = TestCluster::start_joining(
        3,
        |index| if index == 0 { vec![1] } else { vec![0] },
        |_| {},
    )
    .await;

    // Waiting: alive, not ready, and no shard group exists.
    for index in 0..3 {
        let waiting = cluster.waiting(index);
        let admin = waiting.admin_addr();
        let (code, _) = http_get(&format!("http://{admin}/healthz"))
            .await
            .expect("healthz answers");
        assert_eq!(code, 200);
        let (code, body) = http_get(&format!("http://{admin}/readyz"))
            .await
            .expect("readyz answers");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("cluster not initialized"), "{body}");
        assert_eq!(waiting.cluster_id(), None);
        assert!(!cluster.nodes[index].config.data_dir.join("raft").exists());
    }
    // Gossip: nodes 2 and 3 learn each other from node 1, and every node connects to both
    // others (so all three are the initial voters).
    let deadline = Instant::now() + WAIT;
    for index in 0..3 {
        let others: Vec<u64> = (1..=3).filter(|&id| id != index as u64 + 1).collect();
        while !cluster
            .waiting(index)
            .connected_peers()
            .keys()
            .eq(others.iter())
        {
            assert!(
                Instant::now() < deadline,
                "node {} is connected to {:?}",
                index + 1,
                cluster.waiting(index).connected_peers()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The init route is an operator route: no token, no init.
    let second_admin = cluster.waiting(1).admin_addr().to_string();
    let (code, _) = admin_call(&second_admin, None, "POST", INIT_PATH, b"")
        .await
        .expect("answers");
    assert_eq!(code, 401);
    assert_eq!(cluster.waiting(1).cluster_id(), None);

    // Init on node 2.
    let (code, body) = init(&cluster, &second_admin).await;
    assert_eq!(code, 200, "{body}");
    let answer: InitAnswer = serde_json::from_str(&body).expect("an init answer");
    assert_eq!(answer.node_id, 2);
    cluster.await_running().await;
    cluster.wait_ready().await;
    assert_eq!(answer.voters, [1, 2, 3], "the nodes connected at init vote");
    let id = answer.cluster_id.parse().expect("a cluster id");
    let decided = Role {
        cluster_id: id,
        initial_voters: (0..3)
            .map(|index| {
                let addr = cluster.nodes[index]
                    .config
                    .cluster
                    .listen
                    .expect("a fixed port");
                (index as u64 + 1, addr)
            })
            .collect(),
    };
    for member in cluster.running() {
        assert_eq!(member.node().cluster_id(), Some(id), "node {}", member.id());
        let role = mimid_node::cluster_ops::bootstrap::load_role(&member.config.data_dir)
            .expect("readable")
            .expect("written");
        assert_eq!(role, decided, "node {}", member.id());
    }
    // The registry names all three with the cluster id, and every shard has them as voters.
    let placed = status_until(&cluster, 0, "three voters on every shard", |status| {
        status.nodes.len() == 3
            && status.nodes.iter().all(|node| node.state == "active")
            && status
                .shards
                .iter()
                .all(|shard| shard.voters == [1, 2, 3] && shard.leader.is_some())
    })
    .await;
    assert_eq!(
        placed.cluster_id.as_deref(),
        Some(answer.cluster_id.as_str())
    );

    // One order for clients on every node.
    let room = cluster.room("founders");
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let transcripts = one_room_three_nodes(&cluster, &room, [0, 1, 2], 4).await;
    assert_eq!(transcripts[0].len(), 12);
    assert_eq!(transcripts[0], transcripts[1], "alice@1 and bob@2 differ");
    assert_eq!(transcripts[0], transcripts[2], "alice@1 and carol@3 differ");
    // A sender's last message is acknowledged once the leader applied it; its own node's
    // replica may apply it a moment later.
    let deadline = Instant::now() + WAIT;
    let logs = loop {
        let logs: Vec<_> = (0..3)
            .map(|index| cluster.application_messages(index, &room))
            .collect();
        if logs.iter().all(|log| log.len() == 12) {
            break logs;
        }
        let lengths: Vec<usize> = logs.iter().map(Vec::len).collect();
        assert!(
            Instant::now() < deadline,
            "replicas hold {lengths:?} messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (index, log) in logs.iter().enumerate() {
        assert!(
            *log == logs[0],
            "node {}'s log differs from node 1's",
            index + 1
        );
    }

    // A second init, on any node, through the route or `mimid init`: 409, nothing changes.
    let before = status(&cluster, 0).await;
    for index in [1, 0, 2] {
        let (code, body) = init(&cluster, &cluster.admin(index)).await;
        assert_eq!(code, 409, "{body}");
        assert!(
            body.contains(&format!(
                "cluster already initialized (cluster id {})",
                answer.cluster_id
            )),
            "{body}"
        );
    }
    let token = cluster.admin_token();
    let refused = run_init(&cluster.admin(2), Some(&token))
        .await
        .expect_err("a second mimid init fails");
    assert!(format!("{refused:#}").contains("409"), "{refused:#}");
    let after = status(&cluster, 0).await;
    assert_eq!(after.cluster_id, before.cluster_id);
    assert_eq!(after.nodes.len(), 3);
    for member in cluster.running() {
        assert_eq!(member.node().cluster_id(), Some(id));
    }

    // A node started with --join after init adopts the id, registers itself, and is placed.
    let join = [cluster.nodes[2].node().cluster_addr().expect("clustered")];
    let config = cluster.join_config(4, &join);
    let fourth = cluster.add_joining(config).await;
    cluster.await_running().await;
    cluster.wait_ready().await;
    assert_eq!(cluster.nodes[fourth].node().cluster_id(), Some(id));
    // With `cluster.replicas = "r"` (the default) it gets its share of voters (12 over four
    // nodes) and shard 0, which is on every node.
    let grown = status_until(&cluster, 0, "node 4 registered and placed", |status| {
        status
            .nodes
            .iter()
            .any(|node| node.id == 4 && node.state == "active" && node.voter_of == 3)
            && status.shards.iter().all(|shard| {
                let members = shard.voters.len() + shard.learners.len();
                members == if shard.shard == 0 { 4 } else { 3 }
            })
    })
    .await;
    assert_eq!(
        grown.cluster_id.as_deref(),
        Some(answer.cluster_id.as_str())
    );
    let shard = cluster.nodes[0]
        .node()
        .hub()
        .shards()
        .shard_of(room.as_bytes());
    // Shard 0 is on every node, every other shard on three. Each node tells from its own
    // replica, and one removed from the shard learns it a moment after the leader reported it.
    let expected = if shard == 0 { 4 } else { 3 };
    let deadline = Instant::now() + WAIT;
    let holders = loop {
        let holders = cluster.holders_of(&room);
        if holders.len() == expected {
            break holders;
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard}'s holders {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for index in holders {
        let deadline = Instant::now() + WAIT;
        while cluster.application_messages(index, &room) != logs[0] {
            assert!(
                Instant::now() < deadline,
                "node {}'s replica holds the room's log",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A restart needs no init: the node reads its cluster id and starts its shards at once,
    // here on another port of its certified address, which the others follow.
    cluster.stop(0).await;
    cluster.nodes[0].config.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
    cluster.restart(0).await;
    assert_eq!(cluster.nodes[0].node().cluster_id(), Some(id));
    let (code, body) = init(&cluster, &cluster.admin(0)).await;
    assert_eq!(code, 409, "{body}");
    cluster.shutdown().await;
}

/// Issue 4 item 5: a node of another cluster, initialized on its own with the same
/// `cluster.name`, CA and provider, is refused at the hello when it dials in (counted as
/// `reason="cluster_id"`) and joins nothing; both clusters keep their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_at_the_hello() {
    // Cluster A: one node, its own address as its join address.
    let mut a = TestCluster::start_joining(1, |_| vec![0], |_| {}).await;
    let (code, body) = init(&a, &a.waiting(0).admin_addr().to_string()).await;
    assert_eq!(code, 200, "{body}");
    a.await_running().await;
    a.wait_ready().await;
    let a_id = a.nodes[0].node().cluster_id().expect("initialized");
    let a_addr = a.nodes[0].node().cluster_addr().expect("clustered");

    // Node 9: same provider, CA and cluster name, initialized alone.
    let own = std::net::SocketAddr::from(([127, 0, 0, 1], mimid_tests::free_udp_port()));
    let mut config = a.join_config(9, &[own]);
    config.cluster.listen = Some(own);
    let x = start_joining(config.clone()).await.expect("node 9 starts");
    let (code, body) = init(&a, &x.admin_addr().to_string()).await;
    assert_eq!(code, 200, "{body}");
    let x = x.running().await.expect("node 9 runs");
    let x_id = x.cluster_id().expect("initialized");
    assert_ne!(x_id, a_id);
    x.shutdown().await;

    // Restarted with A's node as its join address: refused.
    config.cluster.join = vec![a_addr];
    config.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
    let x = mimid_node::server::start(config)
        .await
        .expect("node 9 restarts");
    assert_eq!(
        x.cluster_id(),
        Some(x_id),
        "its id came from its data directory"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let url = format!("http://{}/metrics", a.nodes[0].node().admin_addr());
        let (_, scrape) = http_get(&url).await.expect("metrics");
        let refused = metric(
            &scrape,
            "mimid_cluster_handshakes_refused_total{reason=\"cluster_id\"}",
        );
        if refused.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no cluster_id refusal counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.nodes[0].node().cluster_peers().is_empty(),
        "A added no peer"
    );
    assert!(x.cluster_peers().is_empty(), "node 9 added no peer");
    let status = status(&a, 0).await;
    assert!(
        status.nodes.iter().all(|node| node.id != 9),
        "{:?}",
        status.nodes
    );
    assert_eq!(status.cluster_id, Some(a_id.to_string()));
    assert_eq!(a.nodes[0].node().cluster_id(), Some(a_id));
    assert_eq!(x.cluster_id(), Some(x_id));
    x.shutdown().await;
    a.shutdown().await;
}
