//! The hostile-input corpus of the server-to-server API (issue 8 item 5; protocol-06 §4-§5,
//! MIMI.md §3.1-§3.3, §7, §13), received from peer providers over real HTTP/3 with mutual TLS:
//! three providers on loopback (certificates from one test CA), a room hosted by a with members
//! at b and c (`three_providers_in_a_room`). The client API half is `malformed_input.rs`.

mod hostile;

use mimid_actors::ids::{RoomId, UserId};
use mimid_node::client::{Event, SubmitResult, UpdateResult};
use mimid_tests::{three_providers_in_a_room, Three, WAIT};

/// Providers whose replicated state changes only through requests (the corpus compares it byte
/// for byte) and whose rate limits stay out of the way of a thousand requests.
fn quiet(config: &mut mimid_node::config::Config) {
    config.limits.housekeeping_secs = 3600;
    config.limits.max_body_bytes = MAX_BODY;
    config.limits.rate.user_requests_per_sec = 1e6;
    config.limits.rate.user_burst = 1_000_000;
    config.limits.rate.key_material_claims_per_pair_per_hour = 1_000_000;
    config.limits.rate.key_material_claims_per_target_per_hour = 1_000_000;
}

/// Every provider's `limits.max_body_bytes` here.
const MAX_BODY: usize = 64 * 1024;

/// MIMI.md §2, §3.2: a room URI may hold percent escapes (`%` is a valid path character), and
/// the path parameter of a server-to-server request is percent-decoded exactly once. Rooms
/// named `caf%C3%A9` and `50%25off` federate like any other: bob@b is added (the hub's notify
/// names the room), receives the Welcome for the right room, sends a message through b, and
/// alice receives it. Before the fix the receiving side decoded the parameter a second time,
/// so the follower refused the notify (`café` is not a room URI) or mirrored another room
/// (`50%off`), and the hub refused b's submitMessage as a room it does not host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_whose_names_hold_percent_escapes_federate_mimi_3_2() {
    let Three {
        a,
        b,
        c,
        mut alice,
        mut bob,
        cathy,
        ..
    } = three_providers_in_a_room(3, quiet).await;
    for name in ["caf%C3%A9", "50%25off"] {
        let room = RoomId::parse(&format!("mimi://a.example/r/{name}")).expect("a room URI");
        alice.create_room(&room).await.expect("room created");
        let added = alice
            .add_users(
                &room,
                &[UserId::parse("mimi://b.example/u/bob").expect("a user")],
            )
            .await
            .expect("bob's KeyPackage claimed through b");
        assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
        match bob.next_event(WAIT).await.expect("push stream works") {
            Some(Event::Joined { room: joined, .. }) => assert_eq!(joined, room),
            other => panic!("{name}: bob expected the Welcome, got {other:?}"),
        }
        let sent = bob
            .send_text(&room, "through b")
            .await
            .expect("submit answered");
        assert!(
            matches!(sent, SubmitResult::Accepted { .. }),
            "{name}: {sent:?}"
        );
        loop {
            match alice.next_event(WAIT).await.expect("push stream works") {
                Some(Event::Message {
                    room: got, content, ..
                }) => {
                    assert_eq!(got, room);
                    assert_eq!(content.text(), Some("through b"));
                    break;
                }
                Some(_) => continue,
                None => panic!("{name}: alice waited for bob's message"),
            }
        }
        let mirrored = b
            .node()
            .hub()
            .shards()
            .for_room(&room)
            .read()
            .mirror(&room)
            .is_some();
        assert!(mirrored, "{name}: b mirrors the room under its own name");
    }
    for client in [alice, bob, cathy] {
        client.close().await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
