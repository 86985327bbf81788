//! Providers talking MIMI protocol-06 to each other on loopback: separate nodes with their own
//! certificates from one test CA, HTTP/3 with mutual TLS (issue: federation).

use std::time::SystemTime;

use mimid_actors::ids::{RoomId, UserId};
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::client::{Event, MimiClient, SubmitResult, UpdateResult};
use mimid_tests::{connect_providers, TestNode, WAIT};

fn ca() -> CertAuthority {
    CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA")
}

fn user(domain: &str, name: &str) -> UserId {
    UserId::parse(&format!("mimi://{domain}/u/{name}")).expect("valid user")
}

async fn expect_joined(client: &mut MimiClient) {
    match client.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("{} expected a Welcome, got {other:?}", client.id()),
    }
}

/// Reads events until `count` application messages arrived; returns their texts in order.
async fn read_messages(client: &mut MimiClient, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let mut last_seq = 0;
    while texts.len() < count {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| {
                panic!("{} waited for message {}/{count}", client.id(), texts.len())
            });
        assert!(event.seq() > last_seq, "events arrive in room order");
        last_seq = event.seq();
        if let Event::Message { content, .. } = event {
            texts.push(content.text().expect("text/plain").to_string());
        }
    }
    client.ack().await.expect("ack works");
    texts
}

async fn send(client: &mut MimiClient, room: &RoomId, text: &str) {
    match client.send_text(room, text).await.expect("submit works") {
        SubmitResult::Accepted { .. } => {}
        other => panic!("{} could not send: {other:?}", client.id()),
    }
}

/// Waits until every provider holds `count` application messages of `room`, then asserts they
/// hold them in one identical order (MIMI.md §7.5: per-room total order, identical for all
/// followers).
async fn assert_one_order(providers: &[&TestNode], room: &RoomId, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let logs: Vec<Vec<Vec<u8>>> = providers
            .iter()
            .map(|p| p.application_messages(room))
            .collect();
        if logs.iter().all(|log| log.len() == count) {
            for (provider, log) in providers.iter().zip(&logs).skip(1) {
                assert_eq!(
                    log, &logs[0],
                    "{} holds the room in the hub's order",
                    provider.config.domain
                );
            }
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "providers hold {:?} messages, expected {count}",
            logs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// MIMI.md §6.2-§6.5 across three providers: Alice@a (hub) creates a room and adds Bob@b and
/// Cathy@c with KeyPackages fetched through their providers' keyMaterial; Welcomes reach them
/// through notify; all three exchange messages that every provider holds in one order; Alice
/// removes Cathy, whose provider then cannot send for her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_create_add_message_remove_protocol06_5() {
    let ca = ca();
    let a = TestNode::start_provider("a.example", &ca).await;
    let b = TestNode::start_provider("b.example", &ca).await;
    let c = TestNode::start_provider("c.example", &ca).await;
    connect_providers(&[&a, &b, &c]);
    let club = RoomId::parse("mimi://a.example/r/club").unwrap();

    let mut alice = a.client("alice", "phone", 2).await;
    let mut bob = b.client("bob", "laptop", 2).await;
    let mut cathy = c.client("cathy", "tablet", 2).await;
    for client in [&mut alice, &mut bob, &mut cathy] {
        client.connect_stream().await.expect("stream opens");
    }
    alice.create_room(&club).await.expect("room created");
    let added = alice
        .add_users(
            &club,
            &[user("b.example", "bob"), user("c.example", "cathy")],
        )
        .await
        .expect("KeyPackages fetched from b and c, commit accepted");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    expect_joined(&mut bob).await;
    expect_joined(&mut cathy).await;
    assert_eq!(bob.epoch(&club), alice.epoch(&club));
    assert_eq!(cathy.members(&club).len(), 3);
    for round in 0..3 {
        send(&mut alice, &club, &format!("alice {round}")).await;
        send(&mut bob, &club, &format!("bob {round}")).await;
        send(&mut cathy, &club, &format!("cathy {round}")).await;
    }
    let from_others = |me: &str| -> Vec<String> {
        (0..3)
            .flat_map(|round| {
                ["alice", "bob", "cathy"]
                    .into_iter()
                    .filter(move |name| *name != me)
                    .map(move |name| format!("{name} {round}"))
            })
            .collect()
    };
    assert_eq!(read_messages(&mut alice, 6).await, from_others("alice"));
    assert_eq!(read_messages(&mut bob, 6).await, from_others("bob"));
    assert_eq!(read_messages(&mut cathy, 6).await, from_others("cathy"));
    assert_one_order(&[&a, &b, &c], &club, 9).await;

    let held = cathy
        .prepare_text(&club, "after removal")
        .expect("cathy can still encrypt at this epoch");
    let removed = alice
        .remove_user(&club, &user("c.example", "cathy"))
        .await
        .expect("remove works");
    assert!(
        matches!(removed, UpdateResult::Accepted { .. }),
        "{removed:?}"
    );
    match cathy.next_event(WAIT).await.expect("stream works") {
        Some(Event::Removed { .. }) => {}
        other => panic!("cathy expected her removal, got {other:?}"),
    }
    match cathy.submit_raw(&club, held).await.expect("answered") {
        SubmitResult::NotAllowed { .. } => {}
        other => panic!("a removed user's message must be refused: {other:?}"),
    }
    match bob.next_event(WAIT).await.expect("stream works") {
        Some(Event::Committed { .. }) => {}
        other => panic!("bob expected the removal commit, got {other:?}"),
    }
    send(&mut bob, &club, "bob after").await;
    assert_eq!(read_messages(&mut alice, 1).await, vec!["bob after"]);

    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// MIMI.md §5.4, §7.6: a follower that is down while the room moves on receives every missed
/// item once it is back, exactly once and in order (the hub retries from its durable cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_during_traffic_gets_every_missed_item_once_in_order() {
    let ca = ca();
    let a = TestNode::start_provider_with(
        "a.example",
        &ca,
        mimid_tests::ProviderSetup::default(),
        |config| {
            config.federation.retry_initial_ms = 20;
            config.federation.retry_max_ms = 200;
        },
    )
    .await;
    let mut b = TestNode::start_provider("b.example", &ca).await;
    connect_providers(&[&a, &b]);
    let club = RoomId::parse("mimi://a.example/r/club").unwrap();
    let mut alice = a.client("alice", "phone", 1).await;
    let mut bob = b.client("bob", "laptop", 1).await;
    bob.connect_stream().await.expect("stream opens");
    alice.create_room(&club).await.expect("room created");
    alice
        .add_users(&club, &[user("b.example", "bob")])
        .await
        .expect("bob added");
    expect_joined(&mut bob).await;
    send(&mut alice, &club, "before").await;
    assert_eq!(read_messages(&mut bob, 1).await, vec!["before"]);

    bob.disconnect_stream();
    let b_port = b.node().quic_addr();
    b.stop().await;
    for n in 0..5 {
        send(&mut alice, &club, &format!("while down {n}")).await;
    }
    b.restart().await;
    assert_ne!(
        b.node().quic_addr(),
        b_port,
        "the follower came back elsewhere"
    );
    connect_providers(&[&a, &b]);
    bob.reconnect(b.endpoint()).await.expect("bob reconnects");
    let missed: Vec<String> = (0..5).map(|n| format!("while down {n}")).collect();
    assert_eq!(read_messages(&mut bob, 5).await, missed);
    send(&mut alice, &club, "after").await;
    assert_eq!(
        read_messages(&mut bob, 1).await,
        vec!["after"],
        "nothing missed was delivered twice"
    );
    assert_one_order(&[&a, &b], &club, 7).await;

    a.shutdown().await;
    b.shutdown().await;
}
