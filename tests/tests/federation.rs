//! Providers talking MIMI protocol-06 to each other on loopback: separate nodes with their own
//! certificates from one test CA, HTTP/3 with mutual TLS (issue: federation).

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::policy::DEFAULT_ROLE_ADMIN;
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::client::{Event, MimiClient, SubmitResult, UpdateResult};
use mimid_node::federation::S2sEndpoint;
use mimid_node::wire::fanout::{encode_fanout_batch, FanoutBody, FanoutMessage};
use mimid_node::wire::submit::{SubmitMessageRequest, SubmitMessageResponse, SubmitStatus};
use mimid_node::wire::types::{IdentifierUri, Protocol};
use mimid_node::wire::update::{UpdateOutcome, UpdateRequest, UpdateRoomResponse};
use mimid_node::wire::{Decode, Encode, Limits, MlsMessage};
use mimid_tests::{
    connect_providers, metric, scrape, three_providers_in_a_room, TestNode, Three, WAIT,
};

fn ca() -> CertAuthority {
    CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA")
}

fn user(domain: &str, name: &str) -> UserId {
    UserId::parse(&format!("mimi://{domain}/u/{name}")).expect("valid user")
}

/// Waits for `client`'s next event and checks that it is `what` (`is` decides).
async fn expect_event(client: &mut MimiClient, what: &str, is: fn(&Event) -> bool) {
    match client.next_event(WAIT).await.expect("push stream works") {
        Some(event) if is(&event) => {}
        other => panic!("{} expected {what}, got {other:?}", client.id()),
    }
}

async fn expect_committed(client: &mut MimiClient) {
    expect_event(client, "a commit", |e| matches!(e, Event::Committed { .. })).await;
}

async fn expect_proposed(client: &mut MimiClient) {
    expect_event(client, "proposals", |e| matches!(e, Event::Proposed { .. })).await;
}

async fn expect_removed(client: &mut MimiClient) {
    expect_event(client, "its removal", |e| {
        matches!(e, Event::Removed { .. })
    })
    .await;
}

async fn expect_joined(client: &mut MimiClient) {
    expect_event(client, "a Welcome", |e| matches!(e, Event::Joined { .. })).await;
}

/// Scrapes `node`'s /metrics until `series` satisfies `ok` (metrics refresh every second).
async fn wait_for_metric(node: &TestNode, series: &str, ok: fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric(&scrape(node).await, series);
        if value.is_some_and(ok) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed at {value:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
/// through notify; all three exchange messages that every provider holds in one order; Cathy's
/// second device is added with a KeyPackage fetched through the hub's keyMaterial proxy (Bob may
/// not add it); Bob leaves; Alice removes Cathy; removed users cannot send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_create_add_message_remove_protocol06_5() {
    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        mut cathy,
    } = three_providers_in_a_room(2, |_| {}).await;
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

    // Alice makes Bob an admin. Cathy's second device is added by her first one, with a
    // KeyPackage fetched through the hub, which proxies to c (MIMI.md §6.3). Bob may fetch it
    // the same way but not add it: room-policy-03 (MIMI.md §9.5) lets a user's new client be
    // added only by that user's clients or together with the user.
    let promoted = alice
        .change_role(&club, &user("b.example", "bob"), DEFAULT_ROLE_ADMIN)
        .await
        .expect("role change works");
    assert!(
        matches!(promoted, UpdateResult::Accepted { .. }),
        "{promoted:?}"
    );
    expect_committed(&mut bob).await;
    expect_committed(&mut cathy).await;
    let phone = ClientId::parse("mimi://c.example/d/cathy/phone").unwrap();
    let mut cathy_phone = cathy
        .link(phone.clone())
        .await
        .expect("second device linked");
    cathy_phone
        .publish_key_packages(2)
        .await
        .expect("KeyPackage published");
    cathy_phone.connect_stream().await.expect("stream opens");
    let claimed = bob
        .claim(&user("c.example", "cathy"), &club)
        .await
        .expect("b -> a -> c keyMaterial");
    let for_phone: Vec<_> = claimed
        .into_iter()
        .filter(|kp| kp.leaf_node().credential().serialized_content() == phone.as_bytes())
        .collect();
    assert_eq!(for_phone.len(), 1, "one KeyPackage of the new device");
    let refused = bob
        .commit_adds(&club, &[], for_phone)
        .await
        .expect("bob's commit goes through b to the hub");
    match refused {
        UpdateResult::NotAllowed { .. } => {}
        other => panic!("another user's client is added only by that user: {other:?}"),
    }
    let claimed = cathy
        .claim(&user("c.example", "cathy"), &club)
        .await
        .expect("c -> a -> c keyMaterial");
    let for_phone: Vec<_> = claimed
        .into_iter()
        .filter(|kp| kp.leaf_node().credential().serialized_content() == phone.as_bytes())
        .collect();
    let added = cathy
        .commit_adds(&club, &[], for_phone)
        .await
        .expect("cathy's commit goes through c to the hub");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    expect_joined(&mut cathy_phone).await;
    expect_committed(&mut alice).await;
    expect_committed(&mut bob).await;
    assert_eq!(alice.members(&club).len(), 4);
    send(&mut cathy_phone, &club, "from cathy's phone").await;
    assert_eq!(
        read_messages(&mut alice, 1).await,
        vec!["from cathy's phone"]
    );
    assert_eq!(read_messages(&mut bob, 1).await, vec!["from cathy's phone"]);
    assert_eq!(
        read_messages(&mut cathy, 1).await,
        vec!["from cathy's phone"]
    );

    // Bob leaves: his SelfRemove bundle is required in the next commit (MIMI.md §6.5).
    let held_by_bob = bob
        .prepare_text(&club, "bob after leaving")
        .expect("bob can still encrypt at this epoch");
    let left = bob.leave(&club).await.expect("leave goes through b");
    assert!(matches!(left, UpdateResult::Accepted { .. }), "{left:?}");
    expect_proposed(&mut alice).await;
    for client in [&mut cathy, &mut cathy_phone] {
        expect_proposed(client).await;
    }
    let committed = alice.self_update(&club).await.expect("commit works");
    assert!(
        matches!(committed, UpdateResult::Accepted { .. }),
        "{committed:?}"
    );
    expect_removed(&mut bob).await;
    for client in [&mut cathy, &mut cathy_phone] {
        expect_committed(client).await;
    }
    assert_eq!(alice.members(&club).len(), 3);

    // Alice removes Cathy with both her devices; removed users cannot send.
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
    expect_removed(&mut cathy).await;
    expect_removed(&mut cathy_phone).await;
    for (client, message) in [(&mut cathy, held), (&mut bob, held_by_bob)] {
        match client.submit_raw(&club, message).await.expect("answered") {
            SubmitResult::NotAllowed { .. } => {}
            other => panic!(
                "{}: a removed user's message must be refused: {other:?}",
                client.id()
            ),
        }
    }
    assert_one_order(&[&a, &b, &c], &club, 10).await;
    // Neither b nor c has a participant left: the hub sends them nothing more (MIMI.md §5.4).
    send(&mut alice, &club, "alice alone").await;
    assert_one_order(&[&a], &club, 11).await;
    {
        let hub = a.node().hub();
        let shard = hub.shards().for_room(&club).read();
        let state = shard.room(&club).expect("a hosts the room");
        let last = state.items_after(state.last_seq() - 1)[0].clone();
        for follower in ["b.example", "c.example"] {
            assert!(!state.visible_to_provider(&last, follower), "{follower}");
        }
    }
    assert_eq!(b.application_messages(&club).len(), 10);
    assert_eq!(c.application_messages(&club).len(), 10);

    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// Alice@a creates `mimi://a.example/r/club` and adds Bob@b, who joins by the Welcome the hub
/// routes to b; Bob's push stream stays open.
async fn room_with_bob(a: &TestNode, b: &TestNode) -> (RoomId, MimiClient, MimiClient) {
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
    (club, alice, bob)
}

/// Two providers on loopback and a room hosted by a with Alice@a and Bob@b (joined by the
/// routed Welcome, push stream open); a retries notifies quickly.
struct Two {
    a: TestNode,
    b: TestNode,
    club: RoomId,
    alice: MimiClient,
    bob: MimiClient,
}

async fn two_providers_in_a_room() -> Two {
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
    let b = TestNode::start_provider("b.example", &ca).await;
    connect_providers(&[&a, &b]);
    let (club, alice, bob) = room_with_bob(&a, &b).await;
    Two {
        a,
        b,
        club,
        alice,
        bob,
    }
}

/// MIMI.md §5.4, §7.6: a follower that is down while the room moves on receives every missed
/// item once it is back, exactly once and in order (the hub retries from its durable cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_during_traffic_gets_every_missed_item_once_in_order() {
    let Two {
        a,
        mut b,
        club,
        mut alice,
        mut bob,
    } = two_providers_in_a_room().await;
    send(&mut alice, &club, "before").await;
    assert_eq!(read_messages(&mut bob, 1).await, vec!["before"]);

    bob.disconnect_stream();
    let b_port = b.node().quic_addr();
    b.stop().await;
    for n in 0..5 {
        send(&mut alice, &club, &format!("while down {n}")).await;
    }
    // The hub's /metrics show the room behind on b.example while b is down.
    wait_for_metric(&a, "mimid_fanout_rooms_behind", |v| v == 1.0).await;
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

    // The hub's /metrics show the failed attempts, the deliveries, and no room behind any more
    // (refreshed every second).
    wait_for_metric(&a, "mimid_fanout_notifies_total{outcome=\"failed\"}", |v| {
        v >= 1.0
    })
    .await;
    wait_for_metric(
        &a,
        "mimid_fanout_notifies_total{outcome=\"delivered\"}",
        |v| v >= 3.0,
    )
    .await;
    wait_for_metric(&a, "mimid_fanout_rooms_behind", |v| v == 0.0).await;

    a.shutdown().await;
    b.shutdown().await;
}

/// MIMI.md §5.4, §7.3 step 8: a hub that restarts in the middle of fan-out resumes from its
/// durable per-follower cursor; the follower ends up with every item exactly once, in order
/// (what was delivered but not yet recorded is resent and dropped by hub seq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restart_in_the_middle_of_fanout_loses_and_duplicates_nothing() {
    let Two {
        mut a,
        mut b,
        club,
        mut alice,
        mut bob,
    } = two_providers_in_a_room().await;

    // Phase 1: the hub stops right after accepting, while notifies are in flight.
    for n in 0..10 {
        send(&mut alice, &club, &format!("burst {n}")).await;
    }
    a.restart().await;
    connect_providers(&[&a, &b]);
    alice
        .reconnect(a.endpoint())
        .await
        .expect("alice reconnects");
    let burst: Vec<String> = (0..10).map(|n| format!("burst {n}")).collect();
    assert_eq!(read_messages(&mut bob, 10).await, burst);

    // Phase 2: the follower is down, so fan-out is pending when the hub restarts.
    bob.disconnect_stream();
    b.stop().await;
    for n in 0..5 {
        send(&mut alice, &club, &format!("pending {n}")).await;
    }
    a.restart().await;
    b.restart().await;
    connect_providers(&[&a, &b]);
    alice
        .reconnect(a.endpoint())
        .await
        .expect("alice reconnects");
    bob.reconnect(b.endpoint()).await.expect("bob reconnects");
    let pending: Vec<String> = (0..5).map(|n| format!("pending {n}")).collect();
    assert_eq!(read_messages(&mut bob, 5).await, pending);
    send(&mut alice, &club, "last").await;
    assert_eq!(
        read_messages(&mut bob, 1).await,
        vec!["last"],
        "nothing was delivered twice"
    );
    assert_one_order(&[&a, &b], &club, 16).await;

    a.shutdown().await;
    b.shutdown().await;
}

/// Waits until the hub of `room` has every follower's fan-out acknowledged and recorded, so
/// that its replicated state only changes with new requests.
async fn wait_fanout_settled(hub: &TestNode, room: &RoomId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let settled = {
            let node_hub = hub.node().hub();
            let shard = node_hub.shards().for_room(room).read();
            let state = shard.room(room).expect("hosted here");
            let pending = state.followers().any(|follower| {
                state
                    .fanout_backlog(follower, state.fanout_cursor(follower))
                    .next()
                    .is_some()
            });
            !pending
        };
        if settled {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-out did not settle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// One server-to-server request of the negative matrix and what it must get.
struct PeerCase {
    name: &'static str,
    from: &'static str,
    endpoint: S2sEndpoint,
    param: String,
    body: Vec<u8>,
    status: StatusCode,
    /// Checks the answer's body (a TLS-PL response or a text reason).
    check: fn(&[u8]) -> Result<(), String>,
}

fn reason(expected: &'static str) -> impl Fn(&[u8]) -> Result<(), String> {
    move |body| {
        let text = String::from_utf8_lossy(body);
        if text.contains(expected) {
            Ok(())
        } else {
            Err(format!("expected {expected:?} in {text:?}"))
        }
    }
}

fn update_answer(body: &[u8]) -> UpdateRoomResponse {
    UpdateRoomResponse::from_bytes(
        body,
        &Limits {
            max_body_len: 1 << 20,
        },
    )
    .expect("an UpdateRoomResponse")
}

/// MIMI.md §7.1-§7.4 and §3.3, from peer providers: each request is refused with the draft's
/// status or code and a specific reason, and the room's replicated state is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_that_break_the_rules_are_refused_and_change_nothing() {
    let ca = ca();
    let a = TestNode::start_provider("a.example", &ca).await;
    let b = TestNode::start_provider("b.example", &ca).await;
    let c = TestNode::start_provider("c.example", &ca).await;
    connect_providers(&[&a, &b, &c]);
    let (club, mut alice, mut bob) = room_with_bob(&a, &b).await;

    // Real handshakes to misroute: a Bob commit made stale by a commit of Alice, then Alice's
    // self-update and Bob's message at the current epoch.
    let stale_bobs_commit = bob.prepare_self_update(&club).expect("bob builds a commit");
    alice
        .self_update(&club)
        .await
        .expect("alice moves the epoch");
    expect_committed(&mut bob).await;
    let alices_commit = alice
        .prepare_self_update(&club)
        .expect("alice builds a commit");
    let bobs_message = bob.prepare_text(&club, "hi").expect("bob encrypts");
    let epoch = alice.epoch(&club).expect("alice is in the room");
    let submit = |sending: &str, message: &[u8]| {
        SubmitMessageRequest {
            protocol: Protocol::Mls10,
            app_message: MlsMessage::from_bytes(message).expect("an MLSMessage"),
            sending_uri: IdentifierUri::new(sending.as_bytes()),
        }
        .to_bytes()
        .expect("encodes")
    };
    let valid_submit = submit("mimi://b.example/u/bob", &bobs_message);
    let uri_len = "mimi://b.example/u/bob".len();
    let uri_at = valid_submit.len() - uri_len - 1;
    let mut non_minimal = valid_submit[..uri_at].to_vec();
    non_minimal.extend_from_slice(&[0x40, uri_len as u8]);
    non_minimal.extend_from_slice(&valid_submit[uri_at + 1..]);
    let public_as_application = {
        let request = UpdateRequest::from_bytes(
            &stale_bobs_commit,
            &Limits {
                max_body_len: 1 << 20,
            },
        )
        .expect("an UpdateRequest");
        let mimid_node::wire::update::HandshakeBundle::Commit { commit, .. } = request.bundle
        else {
            panic!("a commit bundle")
        };
        submit("mimi://b.example/u/bob", commit.bytes())
    };
    let key_material = alice
        .key_material_request(&user("a.example", "alice"), &club)
        .expect("signed")
        .to_bytes()
        .expect("encodes");
    let room = club.as_str().to_owned();

    let cases = vec![
        PeerCase {
            name: "sender credential of another domain",
            from: "b.example",
            endpoint: S2sEndpoint::Update,
            param: room.clone(),
            body: alices_commit.clone(),
            status: StatusCode::OK,
            check: |body| {
                let answer = update_answer(body);
                (answer.outcome == UpdateOutcome::NotAllowed
                    && answer
                        .error_description
                        .contains("not by a client of provider b.example"))
                .then_some(())
                .ok_or(format!("{answer:?}"))
            },
        },
        PeerCase {
            name: "follower with no participant in the room",
            from: "c.example",
            endpoint: S2sEndpoint::Update,
            param: room.clone(),
            body: stale_bobs_commit.clone(),
            status: StatusCode::OK,
            check: |body| {
                let answer = update_answer(body);
                (answer.outcome == UpdateOutcome::NotAllowed
                    && answer.error_description
                        == "provider c.example has no participant in this room")
                    .then_some(())
                    .ok_or(format!("{answer:?}"))
            },
        },
        PeerCase {
            name: "stale epoch",
            from: "b.example",
            endpoint: S2sEndpoint::Update,
            param: room.clone(),
            body: stale_bobs_commit.clone(),
            status: StatusCode::OK,
            check: |body| {
                let answer = update_answer(body);
                matches!(
                    answer.outcome,
                    UpdateOutcome::WrongEpoch { current_epoch: 2 }
                )
                .then_some(())
                .ok_or(format!("{answer:?}"))
            },
        },
        PeerCase {
            name: "application data as PublicMessage",
            from: "b.example",
            endpoint: S2sEndpoint::SubmitMessage,
            param: room.clone(),
            body: public_as_application,
            status: StatusCode::OK,
            check: |body| {
                let answer = SubmitMessageResponse::from_bytes(
                    body,
                    &Limits {
                        max_body_len: 1 << 20,
                    },
                )
                .map_err(|e| e.to_string())?;
                (answer.status == SubmitStatus::NotAllowed)
                    .then_some(())
                    .ok_or(format!("{answer:?}"))
            },
        },
        PeerCase {
            name: "sendingUri of another provider",
            from: "b.example",
            endpoint: S2sEndpoint::SubmitMessage,
            param: room.clone(),
            body: submit("mimi://a.example/u/alice", &bobs_message),
            status: StatusCode::FORBIDDEN,
            check: |body| {
                reason("provider b.example cannot send as mimi://a.example/u/alice")(body)
            },
        },
        PeerCase {
            name: "notify from a provider that is not the room's hub",
            from: "b.example",
            endpoint: S2sEndpoint::Notify,
            param: room.clone(),
            body: Vec::new(),
            status: StatusCode::FORBIDDEN,
            check: |body| {
                reason("provider b.example is not the hub of mimi://a.example/r/club")(body)
            },
        },
        PeerCase {
            name: "keyMaterial for a user the caller does not speak for",
            from: "b.example",
            endpoint: S2sEndpoint::KeyMaterial,
            param: "mimi://a.example/u/alice".into(),
            body: key_material,
            status: StatusCode::FORBIDDEN,
            check: |body| {
                reason("provider b.example speaks neither for mimi://a.example/u/alice")(body)
            },
        },
        PeerCase {
            name: "room not hosted here",
            from: "b.example",
            endpoint: S2sEndpoint::Update,
            param: "mimi://c.example/r/elsewhere".into(),
            body: stale_bobs_commit.clone(),
            status: StatusCode::NOT_FOUND,
            check: |body| reason("is not hosted by a.example")(body),
        },
        PeerCase {
            name: "oversized body",
            from: "b.example",
            endpoint: S2sEndpoint::SubmitMessage,
            param: room.clone(),
            body: vec![0; (1 << 20) + 1],
            status: StatusCode::PAYLOAD_TOO_LARGE,
            check: |_| Ok(()),
        },
        PeerCase {
            name: "truncated TLS-PL",
            from: "b.example",
            endpoint: S2sEndpoint::SubmitMessage,
            param: room.clone(),
            body: valid_submit[..valid_submit.len() - 1].to_vec(),
            status: StatusCode::BAD_REQUEST,
            check: |body| reason("length_beyond_input: IdentifierUri.uri")(body),
        },
        PeerCase {
            name: "non-minimal varint",
            from: "b.example",
            endpoint: S2sEndpoint::SubmitMessage,
            param: room.clone(),
            body: non_minimal,
            status: StatusCode::BAD_REQUEST,
            check: |body| reason("non_minimal")(body),
        },
        PeerCase {
            name: "trailing bytes",
            from: "b.example",
            endpoint: S2sEndpoint::SubmitMessage,
            param: room.clone(),
            body: [valid_submit.as_slice(), &[0]].concat(),
            status: StatusCode::BAD_REQUEST,
            check: |body| reason("trailing")(body),
        },
    ];
    let providers = [("b.example", &b), ("c.example", &c)];
    wait_fanout_settled(&a, &club).await;
    let before = a.room_digest(&club);
    for case in &cases {
        let (_, caller) = providers
            .iter()
            .find(|(domain, _)| *domain == case.from)
            .expect("a calling provider");
        let answer = caller
            .node()
            .peers()
            .request(
                "a.example",
                case.endpoint,
                &case.param,
                HeaderMap::new(),
                Bytes::from(case.body.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", case.name));
        assert_eq!(
            answer.status,
            case.status,
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&answer.body)
        );
        if let Err(why) = (case.check)(&answer.body) {
            panic!("{}: {why}", case.name);
        }
        assert_eq!(
            a.room_digest(&club),
            before,
            "{} changed the room",
            case.name
        );
    }
    assert_eq!(epoch, 2);
    // A hub cannot make a provider keep a room none of its users is in (MIMI.md §5.4): c gets
    // a notify for the club without a Welcome for one of its clients.
    let stray = encode_fanout_batch(&[FanoutMessage {
        timestamp: 1,
        body: FanoutBody::Application {
            message: MlsMessage::from_bytes(&bobs_message).expect("an MLSMessage"),
            frank: None,
        },
    }])
    .expect("encodes");
    let answer = a
        .node()
        .peers()
        .request(
            "c.example",
            S2sEndpoint::Notify,
            &room,
            HeaderMap::new(),
            Bytes::from(stray),
        )
        .await
        .expect("c answers");
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("no client of c.example is in"),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(c.application_messages(&club).is_empty());
    // The valid request still goes through: the matrix refused for its reasons, not by accident.
    let answer = b
        .node()
        .peers()
        .request(
            "a.example",
            S2sEndpoint::SubmitMessage,
            &room,
            HeaderMap::new(),
            Bytes::from(valid_submit),
        )
        .await
        .expect("answered");
    assert_eq!(answer.status, StatusCode::OK);

    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// MIMI.md §6.6 (protocol-06 §5.5, §5.2; RFC 9420 §12.4.3.2) across three providers: a new
/// device of Cathy@c, linked by her first one, joins a room hosted by a through c's client API —
/// c forwards its groupInfo request and its external commit to a, and records the join in its
/// mirror. Alice, Bob and Cathy's first device see the Commit; the new device's message reaches
/// Alice and Bob, and later items reach the new device. Before that, a groupInfo request whose
/// signature does not match its key, and one for a user who is not a participant, get
/// `notAuthorized`, and a request for another client is refused by c; none changes the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_device_joins_by_external_commit_through_its_provider_mimi_6_6() {
    use mimid_node::api::room_path;
    use mimid_node::wire::group_info::{GroupInfoCode, GroupInfoResponse};

    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        mut cathy,
    } = three_providers_in_a_room(1, |_| {}).await;
    let laptop_id = ClientId::parse("mimi://c.example/d/cathy/laptop").unwrap();
    let mut laptop = cathy
        .link(laptop_id.clone())
        .await
        .expect("third device linked");
    laptop.connect_stream().await.expect("stream opens");

    // Refusals first; none changes the room.
    wait_fanout_settled(&a, &club).await;
    let before = a.room_digest(&club);
    let limits = Limits {
        max_body_len: 1 << 20,
    };
    let group_info_path = room_path("groupInfo", &club);
    let mut forged = laptop.group_info_request(&[9; 32]).expect("signed");
    forged.tbs.requesting_signature_key = cathy
        .group_info_request(&[9; 32])
        .expect("signed")
        .tbs
        .requesting_signature_key;
    let (status, body) = laptop
        .post_raw(&group_info_path, forged.to_bytes().expect("encodes"))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer = GroupInfoResponse::from_bytes(&body, &limits).expect("a GroupInfoResponse");
    assert_eq!(answer.status(), GroupInfoCode::NotAuthorized);
    assert_eq!(answer.room_id, club.as_bytes());

    let mut dave = c.client("dave", "phone", 0).await;
    match dave
        .join_by_external_commit(&club)
        .await
        .expect("c forwards to a")
    {
        UpdateResult::NotAllowed { reason } => assert!(
            reason.contains("NotAuthorized") && reason.contains("not authorized to join"),
            "{reason}"
        ),
        other => panic!("a non-participant may not join: {other:?}"),
    }
    assert_eq!(dave.epoch(&club), None);

    let cathys_request = cathy
        .group_info_request(&[9; 32])
        .expect("signed")
        .to_bytes()
        .expect("encodes");
    let (status, body) = laptop
        .post_raw(&group_info_path, cathys_request)
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        String::from_utf8_lossy(&body).contains("the bearer token authenticates"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(a.room_digest(&club), before, "refusals change nothing");

    // The join: groupInfo and update both go c -> a.
    let joined = laptop
        .join_by_external_commit(&club)
        .await
        .expect("groupInfo and update through c");
    assert!(
        matches!(joined, UpdateResult::Accepted { .. }),
        "{joined:?}"
    );
    for client in [&mut alice, &mut bob, &mut cathy] {
        expect_committed(client).await;
    }
    assert_eq!(alice.members(&club).len(), 4);
    assert!(alice.members(&club).contains(&laptop_id));
    assert_eq!(laptop.epoch(&club), alice.epoch(&club));
    assert_eq!(laptop.members(&club), alice.members(&club));
    {
        let hub = c.node().hub();
        let shard = hub.shards().for_room(&club).read();
        let mirror = shard.mirror(&club).expect("c mirrors the room");
        assert!(mirror.members().contains(&laptop_id), "c delivers to it");
    }

    send(&mut laptop, &club, "from cathy's laptop").await;
    assert_eq!(
        read_messages(&mut alice, 1).await,
        vec!["from cathy's laptop"]
    );
    assert_eq!(
        read_messages(&mut bob, 1).await,
        vec!["from cathy's laptop"]
    );
    assert_eq!(
        read_messages(&mut cathy, 1).await,
        vec!["from cathy's laptop"]
    );
    send(&mut alice, &club, "welcome, laptop").await;
    assert_eq!(read_messages(&mut laptop, 1).await, vec!["welcome, laptop"]);
    assert_one_order(&[&a, &b, &c], &club, 2).await;

    for node in [a, b, c] {
        node.shutdown().await;
    }
}
