//! One provider end to end on the real parts: quinn/HTTP/3 on loopback, raft-rs groups in
//! sled, openmls clients and the hub's openmls PublicGroup (issue: single-node provider).

use mimid_node::client::{Event, MimiClient, SubmitResult, UpdateResult};
use mimid_tests::{read_until, room, user, TestNode, Transcript, WAIT};

/// Reads events until `count` more messages arrived (see [`read_until`] for the order checks).
async fn read_messages(client: &mut MimiClient, count: usize, transcript: &mut Transcript) {
    read_until(client, transcript.len() + count, transcript).await;
}

async fn send(
    client: &mut MimiClient,
    room: &mimid_actors::ids::RoomId,
    text: &str,
    transcript: &mut Transcript,
) {
    match client.send_text(room, text).await.expect("submit works") {
        SubmitResult::Accepted { seq, .. } => {
            transcript.insert(seq, (client.id().to_string(), text.to_string()));
        }
        other => panic!("{} could not send: {other:?}", client.id()),
    }
}

async fn expect_joined(client: &mut MimiClient) {
    match client.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("{} expected a Welcome, got {other:?}", client.id()),
    }
}

/// protocol-06 §5.1-§5.4 on one provider: create, add two members by KeyPackage claims
/// (Welcome reaches them), everyone sends, everyone decrypts everything in one order; a
/// removed member is refused and receives nothing after the Commit that removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_create_add_message_remove_protocol06_5() {
    let node = TestNode::start().await;
    let clubhouse = room("clubhouse");
    let mut alice = node.client("alice", "phone", 2).await;
    let mut bob = node.client("bob", "phone", 2).await;
    let mut carol = node.client("carol", "laptop", 2).await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.connect_stream().await.expect("stream opens");
    }

    alice.create_room(&clubhouse).await.expect("room created");
    let added = alice
        .add_users(&clubhouse, &[user("bob"), user("carol")])
        .await
        .expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    expect_joined(&mut bob).await;
    expect_joined(&mut carol).await;
    assert_eq!(bob.epoch(&clubhouse), alice.epoch(&clubhouse));
    assert_eq!(carol.members(&clubhouse).len(), 3);

    let (mut ta, mut tb, mut tc) = (Transcript::new(), Transcript::new(), Transcript::new());
    for round in 0..3 {
        send(&mut alice, &clubhouse, &format!("alice {round}"), &mut ta).await;
        send(&mut bob, &clubhouse, &format!("bob {round}"), &mut tb).await;
        send(&mut carol, &clubhouse, &format!("carol {round}"), &mut tc).await;
    }
    read_messages(&mut alice, 6, &mut ta).await;
    read_messages(&mut bob, 6, &mut tb).await;
    read_messages(&mut carol, 6, &mut tc).await;
    assert_eq!(ta.len(), 9);
    assert_eq!(
        ta, tb,
        "alice and bob saw the same messages in the same order"
    );
    assert_eq!(
        ta, tc,
        "alice and carol saw the same messages in the same order"
    );

    // Carol builds a message now and submits it after her removal.
    let held = carol
        .prepare_text(&clubhouse, "sent after removal")
        .expect("carol can still encrypt at this epoch");
    let removed = alice
        .remove_user(&clubhouse, &user("carol"))
        .await
        .expect("remove works");
    assert!(
        matches!(removed, UpdateResult::Accepted { .. }),
        "{removed:?}"
    );
    match carol.next_event(WAIT).await.expect("stream works") {
        Some(Event::Removed { .. }) => {}
        other => panic!("carol expected her removal, got {other:?}"),
    }
    match bob.next_event(WAIT).await.expect("stream works") {
        Some(Event::Committed { .. }) => {}
        other => panic!("bob expected the removal commit, got {other:?}"),
    }

    // Carol's client no longer has the group; the message she built before her removal is
    // refused by the hub with the specific reason.
    assert_eq!(carol.epoch(&clubhouse), None);
    match carol
        .submit_raw(&clubhouse, held)
        .await
        .expect("submit answers")
    {
        SubmitResult::NotAllowed { reason } => {
            assert!(reason.contains("not a member"), "{reason}")
        }
        other => panic!("a removed member's message was not refused: {other:?}"),
    }
    send(&mut alice, &clubhouse, "after carol left", &mut ta).await;
    read_messages(&mut bob, 1, &mut tb).await;
    assert_eq!(ta, tb);
    assert!(
        carol
            .next_event(std::time::Duration::from_millis(300))
            .await
            .expect("stream works")
            .is_none(),
        "a removed member receives nothing after the Commit that removes it"
    );
    node.shutdown().await;
}

/// Sets up `room` with alice (admin) and the given members joined through their Welcome.
async fn room_with(
    node: &TestNode,
    name: &str,
    members: &[&str],
) -> (mimid_actors::ids::RoomId, MimiClient, Vec<MimiClient>) {
    let room = room(name);
    let mut alice = node.client(&format!("alice-{name}"), "phone", 1).await;
    alice.connect_stream().await.expect("stream opens");
    let mut clients = Vec::new();
    for member in members {
        let mut client = node.client(&format!("{member}-{name}"), "phone", 2).await;
        client.connect_stream().await.expect("stream opens");
        clients.push(client);
    }
    alice.create_room(&room).await.expect("room created");
    let users: Vec<_> = members
        .iter()
        .map(|m| user(&format!("{m}-{name}")))
        .collect();
    let added = alice.add_users(&room, &users).await.expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    for client in &mut clients {
        expect_joined(client).await;
    }
    (room, alice, clients)
}

/// RFC 9420 §14 / MIMI.md §7.3 step 10: two Commits for one epoch, sent concurrently: exactly
/// one is accepted, the other gets wrongEpoch with the current epoch; the loser processes the
/// winner and then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_for_one_epoch_one_wins_rfc9420_14() {
    let node = TestNode::start().await;
    let (room, mut alice, mut members) = room_with(&node, "race", &["bob"]).await;
    let mut bob = members.pop().expect("bob");
    let epoch = alice.epoch(&room).expect("alice is in the room");
    assert_eq!(bob.epoch(&room), Some(epoch));

    let (a, b) = tokio::join!(alice.self_update(&room), bob.self_update(&room));
    let (a, b) = (
        a.expect("alice's commit answered"),
        b.expect("bob's commit answered"),
    );
    let (mut winner, mut loser, loss) = match (&a, &b) {
        (UpdateResult::Accepted { .. }, UpdateResult::WrongEpoch { .. }) => (alice, bob, b),
        (UpdateResult::WrongEpoch { .. }, UpdateResult::Accepted { .. }) => (bob, alice, a),
        other => panic!("exactly one commit must win the epoch: {other:?}"),
    };
    assert_eq!(
        loss,
        UpdateResult::WrongEpoch {
            current_epoch: epoch + 1
        }
    );
    assert_eq!(winner.epoch(&room), Some(epoch + 1));
    assert_eq!(
        loser.epoch(&room),
        Some(epoch),
        "the loser's commit was not merged"
    );

    match loser.next_event(WAIT).await.expect("stream works") {
        Some(Event::Committed { epoch: e, .. }) => assert_eq!(e, epoch + 1),
        other => panic!("the loser expected the winning commit, got {other:?}"),
    }
    let retry = loser.self_update(&room).await.expect("retry answered");
    assert!(matches!(retry, UpdateResult::Accepted { .. }), "{retry:?}");
    match winner.next_event(WAIT).await.expect("stream works") {
        Some(Event::Committed { epoch: e, .. }) => assert_eq!(e, epoch + 2),
        other => panic!("the winner expected the retried commit, got {other:?}"),
    }
    let mut transcript = Transcript::new();
    send(
        &mut winner,
        &room,
        "both at the same epoch",
        &mut transcript,
    )
    .await;
    let mut seen = Transcript::new();
    read_messages(&mut loser, 1, &mut seen).await;
    assert_eq!(seen, transcript);
    node.shutdown().await;
}

/// room-policy-03 §9.5 (MIMI.md §9.5): a member without canAddParticipant cannot add, without
/// canRemoveParticipant cannot remove, without canKick cannot kick; the room is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_capability_cannot_add_remove_or_kick_room_policy_9_5() {
    let node = TestNode::start().await;
    let (room, mut alice, mut members) = room_with(&node, "policy", &["bob", "carol"]).await;
    let mut carol = members.pop().expect("carol");
    let mut bob = members.pop().expect("bob");
    let _dave = node.client("dave-policy", "phone", 2).await;
    let before = node.room_digest(&room);
    let epoch = alice.epoch(&room);

    let add = bob
        .add_users(&room, &[user("dave-policy")])
        .await
        .expect("answered");
    match add {
        UpdateResult::NotAllowed { reason } => {
            assert!(reason.contains("canAddParticipant"), "{reason}")
        }
        other => panic!("a member added someone: {other:?}"),
    }
    let remove = bob
        .remove_user(&room, &user("alice-policy"))
        .await
        .expect("answered");
    assert!(
        matches!(remove, UpdateResult::NotAllowed { .. }),
        "a member removed the admin: {remove:?}"
    );
    let kick = bob
        .kick(&room, &user("carol-policy"))
        .await
        .expect("answered");
    match kick {
        UpdateResult::NotAllowed { reason } => assert!(reason.contains("canKick"), "{reason}"),
        other => panic!("a member kicked someone: {other:?}"),
    }
    assert_eq!(node.room_digest(&room), before, "refusals change nothing");
    assert_eq!(bob.epoch(&room), epoch, "refused commits are not merged");

    // The room still works: the admin may do what the member may not.
    let kick = alice
        .kick(&room, &user("carol-policy"))
        .await
        .expect("answered");
    assert!(matches!(kick, UpdateResult::Accepted { .. }), "{kick:?}");
    match carol.next_event(WAIT).await.expect("stream works") {
        Some(Event::Removed { .. }) => {}
        other => panic!("carol expected to be kicked, got {other:?}"),
    }
    node.shutdown().await;
}

/// Everything survives a restart: rooms, KeyPackages, delivery cursors and order; a client
/// that was offline receives everything it missed, once (DESIGN.md §2, §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_rooms_key_packages_and_offline_queues() {
    restart_scenario(TestNode::start().await).await;
}

/// The same with a snapshot every few entries, so the restart restores rooms (openmls
/// PublicGroup state, logs, cursors) and KeyPackages from shard snapshots and replays only the
/// log after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_shard_snapshots_recovers_everything() {
    restart_scenario(TestNode::start_with(|config| config.cluster.snapshot_interval = 3).await)
        .await;
}

async fn restart_scenario(mut node: TestNode) {
    let (room, mut alice, mut members) = room_with(&node, "durable", &["bob"]).await;
    let mut bob = members.pop().expect("bob");
    let mut sent = Transcript::new();
    send(&mut alice, &room, "before", &mut sent).await;
    let mut seen = Transcript::new();
    read_messages(&mut bob, 1, &mut seen).await;
    bob.ack().await.expect("ack accepted");
    bob.disconnect_stream();

    // Bob is offline: these wait for him.
    let mut missed = Transcript::new();
    for i in 0..3 {
        send(&mut alice, &room, &format!("missed {i}"), &mut missed).await;
    }
    let _carol = node.client("carol-durable", "phone", 3).await;

    // The room's shard alone applied more entries than a small interval: it was snapshotted
    // and compacted, so the restart below restores from a snapshot. A snapshot counts once the
    // writer thread wrote its file and the driver staged it, after the apply that answered.
    if node.config.cluster.snapshot_interval <= 3 {
        eventually("a shard snapshot taken", || {
            node.node().cluster_metrics().snapshots_taken > 0
        })
        .await;
    }
    node.restart().await;
    let endpoint = node.endpoint();
    bob.reconnect(endpoint.clone())
        .await
        .expect("bob reconnects");
    let mut after = Transcript::new();
    read_messages(&mut bob, 3, &mut after).await;
    assert_eq!(after, missed, "bob gets exactly what he missed, in order");
    assert!(
        bob.next_event(std::time::Duration::from_millis(300))
            .await
            .expect("stream works")
            .is_none(),
        "nothing acknowledged before the restart is delivered again"
    );

    // The room and its epoch survived; KeyPackages published before the restart are claimable.
    alice.reconnect(endpoint).await.expect("alice reconnects");
    let added = alice
        .add_users(&room, &[user("carol-durable")])
        .await
        .expect("add works after restart");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    match bob.next_event(WAIT).await.expect("stream works") {
        Some(Event::Committed { .. }) => {}
        other => panic!("bob expected the add commit, got {other:?}"),
    }
    let mut more = Transcript::new();
    send(&mut alice, &room, "after restart", &mut more).await;
    let mut bob_more = Transcript::new();
    read_messages(&mut bob, 1, &mut bob_more).await;
    assert_eq!(bob_more, more);
    node.shutdown().await;
}

/// Waits (bounded) until `condition` holds; for effects driven by the node's own timers.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Idle room actors stop (their state stays in the shard) and start again on demand; the
/// metrics endpoint shows the traffic (issue: observability from day one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_room_actors_stop_and_restart_on_demand_and_metrics_move() {
    let node = TestNode::start().await;
    let (room, mut alice, mut members) = room_with(&node, "idle", &["bob"]).await;
    let mut bob = members.pop().expect("bob");
    let mut sent = Transcript::new();
    send(&mut alice, &room, "first", &mut sent).await;
    let mut seen = Transcript::new();
    read_messages(&mut bob, 1, &mut seen).await;
    assert!(node.node().hub().active_rooms() >= 1);

    // Streams stay attached while clients are connected; disconnect both to let it idle.
    alice.disconnect_stream();
    bob.disconnect_stream();
    eventually("the idle room actor stopped", || {
        node.node().hub().active_rooms() == 0
    })
    .await;

    bob.connect_stream().await.expect("stream reopens");
    send(&mut alice, &room, "second", &mut sent).await;
    read_messages(&mut bob, 1, &mut seen).await;
    assert_eq!(
        seen, sent,
        "the restarted actor resumes from the replicated log"
    );

    let metrics = mimid_tests::http_get(&format!("http://{}/metrics", node.node().admin_addr()))
        .await
        .expect("metrics answer")
        .1;
    for series in [
        "mimid_requests_total{endpoint=\"client_submit_message\",status=\"200\"} 2",
        "mimid_app_messages_total{result=\"accepted\"} 2",
        "mimid_commits_total{result=\"accepted\"} 1",
        "mimid_push_streams 1",
    ] {
        assert!(
            metrics.contains(series),
            "missing `{series}` in:\n{metrics}"
        );
    }
    node.shutdown().await;
}

/// A user's further devices are linked by an existing device: nobody can register a client
/// under someone else's account and receive the Welcomes meant for them (DESIGN.md §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_must_be_linked_by_an_existing_one() {
    let node = TestNode::start().await;
    let phone = node.client("erin", "phone", 0).await;
    let laptop = mimid_actors::ids::ClientId::parse("mimi://localhost/d/erin/laptop").unwrap();
    match MimiClient::register(node.endpoint(), laptop.clone()).await {
        Err(mimid_node::client::ClientError::Status { status, reason }) => {
            assert_eq!(status, http::StatusCode::FORBIDDEN);
            assert!(reason.contains("linked"), "{reason}");
        }
        other => panic!(
            "an unlinked second device was registered: {:?}",
            other.map(|c| c.id().clone())
        ),
    }
    let mallory = node.client("mallory", "phone", 0).await;
    assert!(
        mallory.link(laptop.clone()).await.is_err(),
        "a client of another user cannot link erin's device"
    );
    let linked = phone
        .link(laptop.clone())
        .await
        .expect("linked by erin's phone");
    linked
        .publish_key_packages(1)
        .await
        .expect("the linked device works");
    assert_eq!(linked.id(), &laptop);
    node.shutdown().await;
}

/// MIMI.md §7.6 [IMPL CHOICE]: a client that resends an application message it is unsure
/// about (identical MLSMessage bytes) gets the original seq and timestamp, the room does not
/// change, and the other member receives the message once, followed directly by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_message_is_accepted_once_with_its_original_seq_mimi_7_6() {
    let node = TestNode::start().await;
    let (room, mut alice, mut members) = room_with(&node, "retry", &["bob"]).await;
    let mut bob = members.pop().expect("bob");

    let message = alice
        .prepare_text(&room, "only once")
        .expect("alice can encrypt");
    let first = alice
        .submit_raw(&room, message.clone())
        .await
        .expect("submit answers");
    let SubmitResult::Accepted { seq, .. } = first else {
        panic!("the message was not accepted: {first:?}");
    };
    let before = node.room_digest(&room);
    let resent = alice
        .submit_raw(&room, message)
        .await
        .expect("resubmit answers");
    assert_eq!(resent, first, "a resend gets the original verdict");
    assert_eq!(node.room_digest(&room), before, "a resend changes nothing");

    let mut sent = Transcript::new();
    sent.insert(seq, (alice.id().to_string(), "only once".to_string()));
    send(&mut alice, &room, "next", &mut sent).await;
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        vec![seq, seq + 1],
        "no item was appended for the resend"
    );
    let mut seen = Transcript::new();
    read_messages(&mut bob, 2, &mut seen).await;
    assert_eq!(seen, sent, "bob receives the message once, then the next");
    node.shutdown().await;
}
