//! The metrics issue 6 item 2 asks for, scraped from `/metrics` of real nodes while traffic
//! moves them: Raft proposal latency, inbox and room mailbox depths, durable-write latency and
//! bytes written (one node); the log lag of shards a leader leads, node-to-node QUIC paths and
//! RPCs in flight, and hibernating shards in `mimid node status` (a provider on three nodes);
//! the fan-out lag per follower provider and the QUIC paths of federation peers (three
//! providers, one of them stopped and restarted).
//!
//! Metrics copied from other layers refresh every second and QUIC paths of node-to-node
//! connections are sampled every few seconds, so every check polls with a deadline.

use std::time::{Duration, Instant};

use mimid_actors::ids::RoomId;
use mimid_node::admin::admin_call;
use mimid_node::client::{MimiClient, SubmitResult, UpdateResult};
use mimid_node::cluster_ops::{render_status, ClusterStatus, STATUS_PATH};
use mimid_tests::{
    connect_providers, create_room_when_led, http_get, metric, room, scrape, submit_resending,
    three_providers_in_a_room, user, TestCluster, TestNode, Three, WAIT,
};

/// A family's series: every sample line of `family` (name and labels) with its value.
fn series<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|line| line.starts_with(family) && !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name, value.parse().ok()?))
        })
        .collect()
}

/// Polls `fetch` (a scrape) until `ok` holds for `series`'s value (`None`: no such series);
/// returns the last value.
async fn wait_for<F, Fut>(what: &str, mut fetch: F, series: &str, ok: impl Fn(Option<f64>) -> bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fetch().await;
        let value = metric(&text, series);
        if ok(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {series} stayed at {value:?} for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `text`, resent as is while refused transiently (a shard between leaders).
async fn send(client: &mut MimiClient, room: &RoomId, text: &str) {
    let message = client.prepare_text(room, text).expect("encrypts");
    match submit_resending(client, room, message).await.0 {
        SubmitResult::Accepted { .. } => {}
        other => panic!("{} could not send: {other:?}", client.id()),
    }
}

/// The single-node series: each histogram copied from the replication and actor layers counts
/// the traffic (protocol-06 §5.2 Commits, §5.3 messages), and the Raft database's written
/// bytes grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_room_histograms_count_the_traffic() {
    let node = TestNode::start().await;
    let before = scrape(&node).await;
    for family in [
        "# TYPE mimid_raft_proposal_duration_seconds histogram",
        "# TYPE mimid_storage_flush_duration_seconds histogram",
        "# TYPE mimid_raft_inbox_depth histogram",
        "# TYPE mimid_raft_snapshot_serialize_duration_seconds histogram",
        "# TYPE mimid_raft_snapshot_write_duration_seconds histogram",
        "# TYPE mimid_room_mailbox_depth histogram",
        "# TYPE mimid_storage_written_bytes counter",
        "# TYPE mimid_raft_log_lag_entries gauge",
        "# TYPE mimid_fanout_lag_items gauge",
        "# TYPE mimid_fanout_lag_seconds gauge",
        "# TYPE mimid_federation_peer_rtt_seconds gauge",
        "# TYPE mimid_federation_peer_lost_packets counter",
        "# TYPE mimid_federation_peer_sent_packets counter",
        "# TYPE mimid_federation_peer_requests_in_flight gauge",
        "# TYPE mimid_cluster_peer_lost_packets counter",
        "# TYPE mimid_cluster_peer_sent_packets counter",
        "# TYPE mimid_cluster_peer_rpcs_in_flight gauge",
    ] {
        assert!(before.contains(family), "{family} is declared:\n{before}");
    }
    let count = |text: &str, series: &str| metric(text, series).unwrap_or(0.0);
    let proposals = count(&before, "mimid_raft_proposal_duration_seconds_count");
    let mailbox = count(&before, "mimid_room_mailbox_depth_count");

    let club = room("metrics-club");
    let mut alice = node.client("alice", "phone", 1).await;
    let _bob = node.client("bob", "phone", 1).await;
    alice.create_room(&club).await.expect("room created");
    let added = alice
        .add_users(&club, &[user("bob")])
        .await
        .expect("add answered");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    for n in 0..5 {
        send(&mut alice, &club, &format!("message {n}")).await;
    }

    // The add's Commit and the five messages went through the room's actor (creating the room
    // is proposed by the hub directly): six admitted requests.
    wait_for(
        "room requests",
        || scrape(&node),
        "mimid_room_mailbox_depth_count",
        |v| v.unwrap_or(0.0) >= mailbox + 6.0,
    )
    .await;
    // With the room's creation, seven proposals; registrations and KeyPackages are more.
    wait_for(
        "proposals",
        || scrape(&node),
        "mimid_raft_proposal_duration_seconds_count",
        |v| v.unwrap_or(0.0) >= proposals + 7.0,
    )
    .await;
    let after = scrape(&node).await;
    for (series, at_least) in [
        (
            "mimid_raft_proposal_duration_seconds_bucket{le=\"+Inf\"}",
            proposals + 7.0,
        ),
        (
            "mimid_room_mailbox_depth_bucket{le=\"+Inf\"}",
            mailbox + 6.0,
        ),
    ] {
        assert!(
            count(&after, series) >= at_least,
            "{series} below {at_least}:\n{after}"
        );
    }
    let latency_sum = count(&after, "mimid_raft_proposal_duration_seconds_sum")
        - count(&before, "mimid_raft_proposal_duration_seconds_sum");
    assert!(latency_sum > 0.0, "proposals took time: {latency_sum}");
    for (series, what) in [
        (
            "mimid_storage_flush_duration_seconds_count",
            "durable writes",
        ),
        ("mimid_storage_flush_duration_seconds_sum", "flush time"),
        ("mimid_raft_inbox_depth_count", "turns that took proposals"),
        ("mimid_storage_written_bytes_total", "bytes written"),
    ] {
        assert!(
            count(&after, series) > count(&before, series),
            "{what}: {series} did not move:\n{after}"
        );
    }
    // The depth histograms count requests, so their sums are at least their counts.
    assert!(
        count(&after, "mimid_room_mailbox_depth_sum")
            >= count(&after, "mimid_room_mailbox_depth_count")
    );
    // A node alone leads every shard and has no member behind.
    let lags = series(&after, "mimid_raft_log_lag_entries{");
    assert_eq!(lags.len(), 4, "one series per shard led:\n{after}");
    assert!(lags.iter().all(|(_, lag)| *lag == 0.0), "{lags:?}");
    node.shutdown().await;
}

/// `GET /admin/cluster/status` of node `index`.
async fn cluster_status(cluster: &TestCluster, index: usize) -> ClusterStatus {
    let token = cluster.admin_token();
    let (code, body) = admin_call(&cluster.admin(index), Some(&token), "GET", STATUS_PATH, b"")
        .await
        .expect("status answers");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn scrape_index(cluster: &TestCluster, index: usize) -> String {
    let (status, body) = http_get(&format!("http://{}/metrics", cluster.admin(index)))
        .await
        .expect("metrics answer");
    assert_eq!(status, 200);
    body
}

/// A provider on three nodes: idle shards show as hibernating in `mimid node status`; the
/// node-to-node QUIC paths report RTT and packets; the leader of a room's shard reports the
/// shard's log lag, which grows while a member is stopped and returns to 0 once it is back;
/// RPCs to the stopped member show as in flight while its connection is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_series_follow_a_stopped_member_and_its_return() {
    let mut cluster = TestCluster::start(3).await;
    let ids: Vec<u64> = cluster.running().map(|member| member.id()).collect();

    // Nothing is written yet: shards fall asleep, and the status says so.
    let deadline = Instant::now() + WAIT;
    let asleep = loop {
        let status = cluster_status(&cluster, 0).await;
        if status.shards.iter().any(|shard| shard.hibernating) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no shard hibernated:\n{}",
            render_status(&status).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let table = render_status(&asleep);
    assert!(
        table.iter().any(|line| line.contains("ASLEEP")),
        "{table:#?}"
    );
    assert!(
        table
            .iter()
            .any(|line| line.split_whitespace().nth(6) == Some("yes")),
        "{table:#?}"
    );

    // QUIC paths to the two peers of node 0, sampled at connect and every few seconds after.
    let peer = ids[1];
    let sent = format!("mimid_cluster_peer_sent_packets_total{{peer=\"{peer}\"}}");
    let text = scrape_index(&cluster, 0).await;
    let first_sent = metric(&text, &sent).expect("sampled at connect");
    assert!(first_sent > 0.0);
    assert!(
        metric(
            &text,
            &format!("mimid_cluster_peer_lost_packets_total{{peer=\"{peer}\"}}")
        )
        .is_some(),
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!("mimid_cluster_peer_rtt_seconds{{peer=\"{peer}\"}}")
        )
        .is_some_and(|rtt| rtt > 0.0),
        "{text}"
    );
    wait_for(
        "heartbeats and RPCs",
        || scrape_index(&cluster, 0),
        &sent,
        |v| v.unwrap_or(0.0) > first_sent,
    )
    .await;

    // Writes to a room's shard, through its leader. Only the shard's leader reports its lag,
    // and placement may move a quiet shard's leadership for balance (or a loaded machine hold
    // an election), so each look asks whoever leads the shard then.
    let club = cluster.room("lagging");
    let leader = cluster.leader_of(&club).await;
    let shard = cluster.shards().shard_of(club.as_bytes());
    let lag = format!("mimid_raft_log_lag_entries{{shard=\"{shard}\"}}");
    let mut alice = cluster.client(leader, "alice", "phone", 1).await;
    create_room_when_led(&mut alice, &club)
        .await
        .expect("room created");
    send(&mut alice, &club, "with everyone").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = cluster.leader_of(&club).await;
        let mut reported = Vec::new();
        for index in 0..3 {
            reported.push(metric(&scrape_index(&cluster, index).await, &lag));
        }
        let only_the_leader = reported
            .iter()
            .enumerate()
            .all(|(index, value)| (index == now) == value.is_some());
        if reported[now] == Some(0.0) && only_the_leader {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's lag with every member up (node {} leads shard {shard}; only the \
             leader reports its lag): {lag} by node {reported:?}",
            now + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        "proposal latency on the leader",
        || scrape_leader(&cluster, &club),
        "mimid_raft_proposal_duration_seconds_count",
        |v| v.unwrap_or(0.0) >= 2.0,
    )
    .await;

    // One follower stops: the shard's log runs ahead of it.
    let others: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    let stopped = others[0];
    let stopped_id = ids[stopped];
    cluster.stop(stopped).await;
    for n in 0..5 {
        send(
            &mut alice,
            &club,
            &format!("while {stopped_id} is down {n}"),
        )
        .await;
    }
    wait_for(
        "the leader's lag while a member is down",
        || scrape_leader(&cluster, &club),
        &lag,
        |v| v.unwrap_or(0.0) >= 5.0,
    )
    .await;

    // `mimid node status` asks every node over RPC; the call to the stopped one waits while
    // its connection is being retried. Asked of Alice's node, which runs.
    let in_flight = format!("mimid_cluster_peer_rpcs_in_flight{{peer=\"{stopped_id}\"}}");
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while !seen {
        assert!(
            Instant::now() < deadline,
            "no RPC to node {stopped_id} seen in flight"
        );
        let admin = cluster.admin(leader);
        let token = cluster.admin_token();
        let status =
            tokio::spawn(
                async move { admin_call(&admin, Some(&token), "GET", STATUS_PATH, b"").await },
            );
        while !status.is_finished() && !seen {
            let text = scrape_index(&cluster, leader).await;
            seen = metric(&text, &in_flight).is_some_and(|n| n >= 1.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        status.await.expect("status task").expect("status answers");
    }

    cluster.restart(stopped).await;
    wait_for(
        "the leader's lag once the member is back",
        || scrape_leader(&cluster, &club),
        &lag,
        |v| v == Some(0.0),
    )
    .await;
    wait_for(
        "no RPC left in flight",
        || scrape_index(&cluster, leader),
        &in_flight,
        |v| v == Some(0.0),
    )
    .await;
    cluster.shutdown().await;
}

/// The `/metrics` of the node leading `room`'s shard now.
async fn scrape_leader(cluster: &TestCluster, room: &RoomId) -> String {
    let leader = cluster.leader_of(room).await;
    scrape_index(cluster, leader).await
}

fn fast_retries(config: &mut mimid_node::config::Config) {
    config.federation.retry_initial_ms = 20;
    config.federation.retry_max_ms = 200;
}

/// Three providers, a room hosted by a (MIMI.md §5.4): a's calls to b report the QUIC path of
/// their connection; while b is stopped, a's fan-out lag for b grows (items and age) and its
/// notify waits in flight, c is not behind; once b is back, the lag is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_lag_and_federation_paths_follow_a_stopped_follower() {
    let Three {
        a,
        mut b,
        c,
        club,
        mut alice,
        mut bob,
        cathy,
    } = three_providers_in_a_room(2, fast_retries).await;
    send(&mut alice, &club, "hello").await;

    let sent = "mimid_federation_peer_sent_packets_total{peer=\"b.example\"}";
    let text = scrape(&a).await;
    let first_sent = metric(&text, sent).expect("a called b");
    assert!(first_sent > 0.0, "{text}");
    assert!(
        metric(
            &text,
            "mimid_federation_peer_lost_packets_total{peer=\"b.example\"}"
        )
        .is_some(),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "mimid_federation_peer_rtt_seconds{peer=\"b.example\"}"
        )
        .is_some_and(|rtt| rtt > 0.0),
        "{text}"
    );
    send(&mut alice, &club, "again").await;
    wait_for(
        "a's notifies to b",
        || scrape(&a),
        sent,
        |v| v.unwrap_or(0.0) > first_sent,
    )
    .await;

    bob.disconnect_stream();
    b.stop().await;
    for n in 0..4 {
        send(&mut alice, &club, &format!("while b is down {n}")).await;
    }
    let items = "mimid_fanout_lag_items{provider=\"b.example\"}";
    wait_for(
        "a's lag for b",
        || scrape(&a),
        items,
        |v| v.unwrap_or(0.0) >= 4.0,
    )
    .await;
    wait_for(
        "the age of b's oldest item",
        || scrape(&a),
        "mimid_fanout_lag_seconds{provider=\"b.example\"}",
        |v| v.unwrap_or(0.0) >= 0.5,
    )
    .await;
    wait_for(
        "c keeps up",
        || scrape(&a),
        "mimid_fanout_lag_items{provider=\"c.example\"}",
        |v| v.is_none(),
    )
    .await;
    wait_for(
        "a's notify to b waiting",
        || scrape(&a),
        "mimid_federation_peer_requests_in_flight{peer=\"b.example\"}",
        |v| v.unwrap_or(0.0) >= 1.0,
    )
    .await;

    b.restart().await;
    connect_providers(&[&a, &b, &c]);
    wait_for(
        "a's lag for b once b is back",
        || scrape(&a),
        items,
        |v| v.is_none(),
    )
    .await;
    let text = scrape(&a).await;
    assert!(
        series(&text, "mimid_fanout_lag_seconds{").is_empty(),
        "{text}"
    );
    drop((bob, cathy));
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
