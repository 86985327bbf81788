//! Franking, abuse reports and blocking across real providers (issue 7 part 3; protocol-06
//! §5.4.1, §5.9; MIMI.md §5.3, §5.3.1, §5.4, §5.8, §13): the hub franks what it accepts, the
//! Frank reaches a follower's client through notify and is verified there, a report with it
//! is validated and stored, forged reports are refused with nothing stored, and the
//! operator's blocks are enforced on every endpoint until lifted.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use mimid_actors::command::Submitter;
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::admin::{admin_call, ReportsListing, REPORTS_PATH};
use mimid_node::api::{room_path, PREFIX};
use mimid_node::cli::{run_abuse, AbuseCommand};
use mimid_node::client::{Event, FrankCheck, KeptFrank, MimiClient, SubmitResult, UpdateResult};
use mimid_node::config::Config;
use mimid_node::content::MimiContent;
use mimid_node::federation::S2sEndpoint;
use mimid_node::franking::{FRANKING_HUB_KEY_FILE, FRANKING_SIGNING_KEY_FILE};
use mimid_node::wire::abuse::AbuseReport;
use mimid_node::wire::discovery::ProfileBody;
use mimid_node::wire::identifier::SearchField;
use mimid_node::wire::types::CipherSuite;
use mimid_node::wire::Encode;
use mimid_tests::{metric, scrape, state_digest, three_providers_in_a_room, TestNode, Three, WAIT};

fn user(domain: &str, name: &str) -> UserId {
    UserId::parse(&format!("mimi://{domain}/u/{name}")).expect("valid user")
}

fn admin(node: &TestNode) -> String {
    node.node().admin_addr().to_string()
}

/// `mimid abuse block <target>` against `node`'s admin API, with its admin token.
async fn block(node: &TestNode, target: impl Into<String>) -> anyhow::Result<Vec<String>> {
    let command = AbuseCommand::Block {
        admin: admin(node),
        target: target.into(),
    };
    run_abuse(&command, Some(&node.admin_token())).await
}

/// `mimid abuse unblock <target>` against `node`'s admin API, with its admin token.
async fn unblock(node: &TestNode, target: impl Into<String>) -> anyhow::Result<Vec<String>> {
    let command = AbuseCommand::Unblock {
        admin: admin(node),
        target: target.into(),
    };
    run_abuse(&command, Some(&node.admin_token())).await
}

/// `mimid abuse blocks` against `node`'s admin API, with its admin token.
async fn abuse_blocks(node: &TestNode) -> anyhow::Result<Vec<String>> {
    let command = AbuseCommand::Blocks { admin: admin(node) };
    run_abuse(&command, Some(&node.admin_token())).await
}

/// `report` sent by provider `from` straight to a's reportAbuse for `room` (protocol-06
/// §5.9), as a's answer.
async fn report_from_provider(
    from: &TestNode,
    room: &RoomId,
    report: &AbuseReport,
) -> mimid_node::federation::PeerResponse {
    from.node()
        .peers()
        .request(
            "a.example",
            S2sEndpoint::ReportAbuse,
            room.as_str(),
            HeaderMap::new(),
            Bytes::from(report.to_bytes().unwrap()),
        )
        .await
        .expect("a answers")
}

/// Providers whose housekeeping does not run during a test (the tests compare replicated
/// state byte for byte).
fn no_housekeeping(config: &mut Config) {
    config.limits.housekeeping_secs = 3600;
}

/// Sends `text` and returns the hub's Frank from the answer.
async fn send_franked(client: &mut MimiClient, room: &RoomId, text: &str) -> (u64, KeptFrankOf) {
    match client.send_text(room, text).await.expect("submit works") {
        SubmitResult::Accepted {
            timestamp,
            frank: Some(frank),
            ..
        } => (timestamp, frank),
        other => panic!("{} expected a franked acceptance: {other:?}", client.id()),
    }
}

type KeptFrankOf = mimid_node::wire::submit::Frank;

/// Waits for the next application message and returns its text and what the client made of
/// its Frank.
async fn next_message(client: &mut MimiClient) -> (String, u64, FrankCheck) {
    loop {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| panic!("{} waited for a message", client.id()));
        if let Event::Message {
            content,
            frank,
            timestamp,
            ..
        } = event
        {
            return (
                content.text().expect("text/plain").to_owned(),
                timestamp,
                frank,
            );
        }
    }
}

fn verified(check: FrankCheck) -> KeptFrank {
    match check {
        FrankCheck::Verified(kept) => *kept,
        other => panic!("expected a verified Frank, got {other:?}"),
    }
}

/// Waits until the hub recorded every follower's acknowledgement of `room`'s fan-out (the
/// cursor records, MIMI.md §5.4), so that its replicated state changes no more on its own.
async fn wait_fanout_recorded(hub: &TestNode, room: &RoomId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done = {
            let shard = hub.node().hub().shards().for_room(room).read();
            let state = shard.room(room).expect("hosted");
            let done = state.followers().all(|provider| {
                state
                    .fanout_backlog(provider, state.fanout_cursor(provider))
                    .next()
                    .is_none()
            });
            done
        };
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-out of {room} not recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn reports(node: &TestNode) -> ReportsListing {
    let token = node.admin_token();
    let (status, body) = admin_call(&admin(node), Some(&token), "GET", REPORTS_PATH, b"")
        .await
        .expect("admin answers");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("a reports listing")
}

/// protocol-06 §5.4.1, §5.9 (MIMI.md §5.3.1, §5.4, §5.8): Alice's message is franked by the
/// hub in its submitMessage answer; the same Frank reaches Bob@b through notify and b's push
/// stream and Cathy@c through c's, and verifies there; Bob's message reaches Alice (a local
/// client of the hub) franked too. Reports of both, one through the follower's provider and
/// one straight to the hub's client API, are validated and listed by the admin API and by
/// `mimid abuse reports` (with the admin token; without it, 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol06_5_4_1_frank_issued_carried_verified_and_reported() {
    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        mut cathy,
    } = three_providers_in_a_room(2, no_housekeeping).await;
    for key_file in [FRANKING_SIGNING_KEY_FILE, FRANKING_HUB_KEY_FILE] {
        assert!(a.data_dir().join(key_file).exists(), "{key_file} generated");
    }
    let (accepted, issued) = send_franked(&mut alice, &club, "you are all fools").await;
    let (text, timestamp, check) = next_message(&mut bob).await;
    assert_eq!(text, "you are all fools");
    assert_eq!(
        timestamp, accepted,
        "the follower keeps the hub's accepted time"
    );
    let kept = verified(check);
    assert_eq!(
        kept.frank, issued,
        "notify carries the Frank the sender got"
    );
    assert_eq!(kept.context.accepted_timestamp, accepted);
    let (_, _, check) = next_message(&mut cathy).await;
    assert_eq!(verified(check).frank, issued);

    let (bob_accepted, bob_frank) = send_franked(&mut bob, &club, "and you are spam").await;
    let (text, _, check) = next_message(&mut alice).await;
    assert_eq!(text, "and you are spam");
    let from_bob = verified(check);
    assert_eq!(
        from_bob.frank, bob_frank,
        "the hub's own push stream carries it"
    );
    assert_eq!(from_bob.context.accepted_timestamp, bob_accepted);

    let alice_user = user("a.example", "alice");
    bob.report_abuse(&club, &alice_user, 0, "insults", &[&kept])
        .await
        .expect("b forwards the report, a validates and stores it");
    alice
        .report_abuse(&club, &user("b.example", "bob"), 0, "spam", &[&from_bob])
        .await
        .expect("the hub's own client reports directly");

    let listing = reports(&a).await;
    assert_eq!(listing.reports.len(), 2, "{listing:?}");
    let by_bob = listing
        .reports
        .iter()
        .find(|report| report.submitted_by == "provider b.example")
        .expect("the report through b");
    assert_eq!(by_bob.room, club.to_string());
    assert_eq!(by_bob.alleged_abuser, alice_user.to_string());
    assert_eq!(
        by_bob.reporting_user.as_deref(),
        Some("mimi://b.example/u/bob")
    );
    assert_eq!(by_bob.note, "insults");
    assert_eq!(by_bob.messages.len(), 1);
    assert_eq!(by_bob.messages[0].accepted_ms, accepted);
    assert_eq!(
        by_bob.messages[0].text.as_deref(),
        Some("you are all fools")
    );
    assert!(listing.reports.iter().any(|report| report.submitted_by
        == "client mimi://a.example/d/alice/phone"
        && report.messages[0].text.as_deref() == Some("and you are spam")));
    assert!(
        reports(&b).await.reports.is_empty(),
        "stored by the hub only"
    );

    let lines = run_abuse(
        &AbuseCommand::Reports { admin: admin(&a) },
        Some(&a.admin_token()),
    )
    .await
    .expect("mimid abuse reports");
    assert_eq!(lines[0], "2 abuse reports", "{lines:?}");
    assert!(
        lines.iter().any(
            |line| line.contains("mimi://a.example/u/alice reported by mimi://b.example/u/bob")
        ),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("\"you are all fools\"")),
        "{lines:?}"
    );
    // Reports hold message contents: without the admin token they are not read (issue 6).
    let refused = run_abuse(&AbuseCommand::Reports { admin: admin(&a) }, None)
        .await
        .expect_err("reports without the admin token");
    assert!(format!("{refused:#}").contains("401"), "{refused:#}");
    for client in [alice, bob, cathy] {
        client.close().await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// One way to tamper with a reported message, and the reason the hub must give.
struct Mutation {
    name: &'static str,
    /// Which room's reportAbuse the report is sent to (`None`: the club).
    room: Option<&'static str>,
    apply: fn(&mut AbuseReport),
    reason: &'static str,
}

/// Re-encodes the reported content with `edit` applied (same salt): a valid MIMI content that
/// the hub did not frank.
fn edit_content(report: &mut AbuseReport, edit: fn(&mut MimiContent)) {
    let message = &mut report.messages[0];
    let mut content = MimiContent::decode(&message.message_content).expect("MIMI content");
    edit(&mut content);
    message.message_content = content.encode().expect("encodes");
}

/// MIMI.md §5.8: the hub recomputes the franking tag from the revealed content, then
/// server_frank, and verifies the signature; any altered byte of content, timestamp, sender,
/// room or signature is refused with a specific reason, and nothing is stored (every shard of
/// the hub byte-identical, the listing empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mimi_5_8_forged_or_altered_franks_are_refused_and_nothing_is_stored() {
    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        mut cathy,
    } = three_providers_in_a_room(2, no_housekeeping).await;
    // A second room at the hub, to report the club's message in.
    let lounge = RoomId::parse("mimi://a.example/r/lounge").unwrap();
    alice.create_room(&lounge).await.expect("lounge created");
    send_franked(&mut alice, &club, "the original").await;
    let (_, _, check) = next_message(&mut bob).await;
    let kept = verified(check);
    let alice_user = user("a.example", "alice");
    let genuine = bob
        .abuse_report(&alice_user, 0, "insults", &[&kept])
        .expect("report built");

    let mutations = [
        Mutation {
            name: "content text altered",
            room: None,
            apply: |r| {
                edit_content(r, |content| {
                    *content = MimiContent::plain_text(content.salt, "something else")
                        .with_sender_and_room("mimi://a.example/u/alice", "mimi://a.example/r/club")
                })
            },
            reason: "server_frank does not match",
        },
        Mutation {
            name: "content byte flipped",
            room: None,
            apply: |r| {
                let content = &mut r.messages[0].message_content;
                let last = content.len() - 1;
                content[last] ^= 0x01;
            },
            reason: "server_frank does not match",
        },
        Mutation {
            name: "salt altered",
            room: None,
            apply: |r| edit_content(r, |content| content.salt[0] ^= 1),
            reason: "server_frank does not match",
        },
        Mutation {
            name: "accepted_timestamp altered",
            room: None,
            apply: |r| r.messages[0].accepted_timestamp += 1,
            reason: "server_frank does not match",
        },
        Mutation {
            name: "sender in the content altered",
            room: None,
            apply: |r| {
                edit_content(r, |content| {
                    content
                        .extensions
                        .set_sender_uri("mimi://a.example/u/mallory")
                });
                r.alleged_abuser_uri =
                    mimid_node::wire::types::IdentifierUri::new("mimi://a.example/u/mallory");
            },
            reason: "server_frank does not match",
        },
        Mutation {
            name: "alleged abuser is not the sender",
            room: None,
            apply: |r| {
                r.alleged_abuser_uri =
                    mimid_node::wire::types::IdentifierUri::new("mimi://c.example/u/cathy")
            },
            reason: "not by the alleged abuser mimi://c.example/u/cathy",
        },
        Mutation {
            name: "room in the content altered",
            room: None,
            apply: |r| {
                edit_content(r, |content| {
                    content.extensions.set_room_uri("mimi://a.example/r/lounge")
                })
            },
            reason: "was sent in mimi://a.example/r/lounge, not in mimi://a.example/r/club",
        },
        Mutation {
            name: "reported in another room",
            room: Some("mimi://a.example/r/lounge"),
            apply: |_| {},
            reason: "was sent in mimi://a.example/r/club, not in mimi://a.example/r/lounge",
        },
        Mutation {
            name: "room in the content and the report moved together",
            room: Some("mimi://a.example/r/lounge"),
            apply: |r| {
                edit_content(r, |content| {
                    content.extensions.set_room_uri("mimi://a.example/r/lounge")
                })
            },
            reason: "server_frank does not match",
        },
        Mutation {
            name: "server_frank altered",
            room: None,
            apply: |r| r.messages[0].frank.server_frank[31] ^= 0x80,
            reason: "server_frank does not match",
        },
        Mutation {
            name: "signature altered",
            room: None,
            apply: |r| r.messages[0].frank.franking_integrity_signature[10] ^= 0x01,
            reason: "franking_integrity_signature does not verify",
        },
        Mutation {
            name: "signature truncated",
            room: None,
            apply: |r| {
                r.messages[0].frank.franking_integrity_signature.pop();
            },
            reason: "franking_integrity_signature does not verify",
        },
        Mutation {
            name: "suite altered",
            room: None,
            apply: |r| r.messages[0].frank.franking_signature_ciphersuite = CipherSuite(0x0003),
            reason: "is not the room's suite",
        },
        Mutation {
            name: "no message",
            room: None,
            apply: |r| r.messages.clear(),
            reason: "at least one franked message",
        },
    ];
    next_message(&mut cathy).await;
    wait_fanout_recorded(&a, &club).await;
    let before = state_digest(&a);
    for mutation in &mutations {
        let mut report = genuine.clone();
        (mutation.apply)(&mut report);
        let room = mutation
            .room
            .map(|room| RoomId::parse(room).unwrap())
            .unwrap_or_else(|| club.clone());
        let (status, body) = bob
            .post_raw(&room_path("reportAbuse", &room), report.to_bytes().unwrap())
            .await
            .expect("answered");
        let reason = String::from_utf8_lossy(&body);
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}: {reason}",
            mutation.name
        );
        assert!(
            reason.contains(mutation.reason),
            "{}: expected {:?} in {reason:?}",
            mutation.name,
            mutation.reason
        );
        assert_eq!(
            state_digest(&a),
            before,
            "{}: nothing stored",
            mutation.name
        );
    }
    // The same refusal straight from provider b to the hub (protocol-06 §5.9).
    let mut forged = genuine.clone();
    forged.messages[0].accepted_timestamp ^= 1;
    let answer = report_from_provider(&b, &club, &forged).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&answer.body).contains("server_frank does not match"));
    // A provider reports only as its own users (MIMI.md §7.1 step 2).
    let mut as_cathy = genuine.clone();
    as_cathy.reporting_user =
        mimid_node::wire::types::IdentifierUri::new("mimi://c.example/u/cathy");
    let answer = report_from_provider(&b, &club, &as_cathy).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(state_digest(&a), before);
    assert!(reports(&a).await.reports.is_empty());

    // The genuine report is taken.
    let (status, body) = bob
        .post_raw(
            &room_path("reportAbuse", &club),
            genuine.to_bytes().unwrap(),
        )
        .await
        .expect("answered");
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(reports(&a).await.reports.len(), 1);
    for client in [alice, bob, cathy] {
        client.close().await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// Asserts a refusal by the blocklist: 403 naming `reason`.
fn assert_blocked(what: &str, status: StatusCode, body: &[u8], reason: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {text}");
    assert!(
        text.contains(reason),
        "{what}: expected {reason:?} in {text:?}"
    );
}

/// Asserts that a client library call was refused by the blocklist: 403 naming `reason`.
fn assert_refused_blocked(
    what: &str,
    result: Result<impl std::fmt::Debug, mimid_node::client::ClientError>,
    reason: &str,
) {
    match result {
        Err(mimid_node::client::ClientError::Status {
            status,
            reason: got,
        }) => assert_blocked(what, status, got.as_bytes(), reason),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// MIMI.md §13: a user blocked by the hub's operator is refused on every endpoint that acts as
/// it or for it — submitMessage, keyMaterial (claiming and being claimed), identifierQuery,
/// requestConsent, updateConsent, groupInfo and reportAbuse at the edge, a handshake in the
/// room's apply — and is not found by identifierQuery; a blocked local user's client API is
/// closed; unblocking restores all of it. Counted in `mimid_blocked_requests_total{kind}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mimi_13_a_blocked_user_is_refused_everywhere_until_unblocked() {
    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        cathy,
    } = three_providers_in_a_room(2, no_housekeeping).await;
    let bob_user = user("b.example", "bob");
    let blocked = format!("user blocked: {bob_user}");
    let dave = a.client("dave", "phone", 2).await;
    dave.set_profile(&ProfileBody {
        display_name: "Dave".into(),
        nick: Some("dave".into()),
        emails: vec![],
        phones: vec![],
    })
    .await
    .expect("profile set");
    assert_eq!(
        cathy
            .find_user("a.example", SearchField::Nick, "dave")
            .await
            .unwrap(),
        Some(user("a.example", "dave"))
    );

    let lines = block(&a, bob_user.to_string())
        .await
        .expect("mimid abuse block");
    assert_eq!(lines, vec![format!("{bob_user} blocked")]);
    block(&a, "mimi://a.example/u/dave")
        .await
        .expect("mimid abuse block");
    let listed = abuse_blocks(&a).await.expect("mimid abuse blocks");
    assert_eq!(
        listed,
        vec![
            "user mimi://a.example/u/dave".to_string(),
            format!("user {bob_user}")
        ]
    );

    // Bob, through his provider, at the hub's edge.
    assert_refused_blocked(
        "submitMessage",
        bob.send_text(&club, "let me in").await,
        &blocked,
    );
    assert_refused_blocked(
        "keyMaterial as requester",
        bob.claim(&user("c.example", "cathy"), &club).await,
        &blocked,
    );
    assert_refused_blocked(
        "keyMaterial of bob, proxied",
        cathy.claim(&bob_user, &club).await,
        &blocked,
    );
    assert_refused_blocked(
        "keyMaterial of bob, local",
        alice.claim(&bob_user, &club).await,
        &blocked,
    );
    assert_refused_blocked(
        "identifierQuery",
        bob.find_user("a.example", SearchField::Nick, "alice").await,
        &blocked,
    );
    assert_refused_blocked(
        "requestConsent",
        bob.request_consent(&user("a.example", "alice"), None).await,
        &blocked,
    );
    assert_refused_blocked(
        "updateConsent",
        bob.grant_consent(&user("a.example", "alice"), None, false)
            .await,
        &blocked,
    );
    let group_info = bob
        .group_info_request(&[7; 32])
        .expect("signed")
        .to_bytes()
        .unwrap();
    let (status, body) = bob
        .post_raw(&room_path("groupInfo", &club), group_info)
        .await
        .unwrap();
    assert_blocked("groupInfo", status, &body, &blocked);
    let report = bob
        .abuse_report(&user("a.example", "alice"), 0, "", &[])
        .unwrap()
        .to_bytes()
        .unwrap();
    let (status, body) = bob
        .post_raw(&room_path("reportAbuse", &club), report)
        .await
        .unwrap();
    assert_blocked("reportAbuse", status, &body, &blocked);
    // A handshake is refused by the room's apply, from the MLS sender's leaf.
    wait_fanout_recorded(&a, &club).await;
    let before = a.room_digest(&club);
    match bob.self_update(&club).await.expect("answered") {
        UpdateResult::NotAllowed { reason } => {
            assert!(reason.contains("blocked"), "{reason}")
        }
        other => panic!("a blocked user's commit: {other:?}"),
    }
    assert_eq!(a.room_digest(&club), before, "nothing changed in the room");
    // The hub's own path refuses it in apply too (decided there, not only at the edge).
    let message = bob.prepare_text(&club, "straight to the hub").unwrap();
    let verdict = a
        .node()
        .hub()
        .submit(
            club.clone(),
            Submitter::Provider("b.example".into()),
            bob_user.clone(),
            message,
        )
        .await
        .expect("decided");
    assert!(
        matches!(&verdict, mimid_actors::command::SubmitVerdict::NotAllowed { reason } if reason == &blocked),
        "{verdict:?}"
    );

    // Dave, blocked at his own provider: every client API endpoint, and not found.
    assert_eq!(
        cathy
            .find_user("a.example", SearchField::Nick, "dave")
            .await
            .unwrap(),
        None,
        "a blocked user is not found"
    );
    let dave_blocked = "user blocked: mimi://a.example/u/dave";
    let club_path = |endpoint: &str| room_path(endpoint, &club);
    let endpoints: Vec<(Method, String)> = vec![
        (Method::POST, format!("{PREFIX}keyPackages")),
        (Method::POST, format!("{PREFIX}keyMaterial")),
        (Method::POST, format!("{PREFIX}rooms")),
        (Method::POST, club_path("update")),
        (Method::POST, club_path("submitMessage")),
        (Method::POST, club_path("groupInfo")),
        (Method::POST, club_path("reportAbuse")),
        (Method::GET, format!("{PREFIX}stream")),
        (Method::POST, format!("{PREFIX}ack")),
        (Method::GET, format!("{PREFIX}profile")),
        (Method::POST, format!("{PREFIX}profile")),
        (Method::POST, format!("{PREFIX}preferences")),
        (Method::POST, format!("{PREFIX}identifierQuery/a.example")),
        (Method::POST, format!("{PREFIX}requestConsent")),
        (Method::POST, format!("{PREFIX}updateConsent")),
        (Method::GET, format!("{PREFIX}consents")),
        (Method::GET, format!("{PREFIX}frankingAgent")),
    ];
    for (method, path) in &endpoints {
        let (status, body) = dave
            .request_raw(method.clone(), path, Vec::new())
            .await
            .expect("answered");
        assert_blocked(path, status, &body, dave_blocked);
    }
    match dave
        .link(ClientId::parse("mimi://a.example/d/dave/laptop").unwrap())
        .await
    {
        Err(mimid_node::client::ClientError::Status { status, reason }) => {
            assert_blocked("register", status, reason.as_bytes(), dave_blocked)
        }
        Err(e) => panic!("register a linked device: {e}"),
        Ok(_) => panic!("a blocked user registered a device"),
    }
    let scraped = scrape(&a).await;
    // Nine refusals of bob's requests, the table, and the linked device.
    let users = metric(&scraped, "mimid_blocked_requests_total{kind=\"user\"}").unwrap_or(0.0);
    assert_eq!(users, (9 + endpoints.len() + 1) as f64);

    // Unblocking restores everything.
    for target in [bob_user.to_string(), "mimi://a.example/u/dave".to_string()] {
        let lines = unblock(&a, target.clone())
            .await
            .expect("mimid abuse unblock");
        assert_eq!(lines, vec![format!("{target} unblocked")]);
    }
    assert!(abuse_blocks(&a).await.unwrap().is_empty());
    match bob.send_text(&club, "let me in").await.expect("answered") {
        SubmitResult::Accepted { frank: Some(_), .. } => {}
        other => panic!("unblocked bob sends again: {other:?}"),
    }
    let (text, _, _) = next_message(&mut alice).await;
    assert_eq!(text, "let me in");
    assert!(matches!(
        bob.self_update(&club).await.expect("answered"),
        UpdateResult::Accepted { .. }
    ));
    assert!(!alice
        .claim(&bob_user, &club)
        .await
        .expect("claimed")
        .is_empty());
    assert_eq!(
        cathy
            .find_user("a.example", SearchField::Nick, "dave")
            .await
            .unwrap(),
        Some(user("a.example", "dave"))
    );
    dave.profile()
        .await
        .expect("dave's client API is open again");
    for client in [alice, bob, cathy, dave] {
        client.close().await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// MIMI.md §13: a provider blocked by the hub's operator is refused on every server-to-server
/// endpoint right after authentication (403 `provider blocked`), and its users' messages are
/// refused by the room's apply; another provider is unaffected; unblocking restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mimi_13_a_blocked_provider_is_refused_on_every_endpoint_until_unblocked() {
    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        mut cathy,
    } = three_providers_in_a_room(2, no_housekeeping).await;
    let lines = block(&a, "b.example").await.expect("mimid abuse block");
    assert_eq!(lines, vec!["b.example blocked".to_string()]);
    let again = block(&a, "mimi://b.example")
        .await
        .expect("blocking twice is harmless");
    assert_eq!(
        again,
        vec!["b.example blocked (it was already)".to_string()]
    );

    wait_fanout_recorded(&a, &club).await;
    let before = state_digest(&a);
    for endpoint in S2sEndpoint::ALL {
        let param = match endpoint.param_name() {
            "roomId" => club.to_string(),
            "targetUser" => "mimi://a.example/u/alice".to_string(),
            _ => "a.example".to_string(),
        };
        let answer = b
            .node()
            .peers()
            .request(
                "a.example",
                endpoint,
                &param,
                HeaderMap::new(),
                Bytes::from_static(b"whatever the body"),
            )
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_blocked(
            endpoint.name(),
            answer.status,
            &answer.body,
            "provider blocked: b.example",
        );
    }
    assert_eq!(state_digest(&a), before, "nothing changed");
    let scraped = scrape(&a).await;
    assert_eq!(
        metric(&scraped, "mimid_blocked_requests_total{kind=\"provider\"}"),
        Some(S2sEndpoint::ALL.len() as f64)
    );
    // Bob, through his blocked provider.
    assert_refused_blocked(
        "submitMessage",
        bob.send_text(&club, "hello?").await,
        "provider blocked: b.example",
    );
    // Decided in the room's apply as well.
    let message = bob.prepare_text(&club, "straight to the hub").unwrap();
    let verdict = a
        .node()
        .hub()
        .submit(
            club.clone(),
            Submitter::Provider("b.example".into()),
            user("b.example", "bob"),
            message,
        )
        .await
        .expect("decided");
    assert!(
        matches!(&verdict, mimid_actors::command::SubmitVerdict::NotAllowed { reason } if reason == "provider blocked: b.example"),
        "{verdict:?}"
    );
    // Another provider is unaffected.
    send_franked(&mut cathy, &club, "c is fine").await;
    let (text, _, _) = next_message(&mut alice).await;
    assert_eq!(text, "c is fine");

    let lines = unblock(&a, "b.example").await.expect("mimid abuse unblock");
    assert_eq!(lines, vec!["b.example unblocked".to_string()]);
    send_franked(&mut bob, &club, "back again").await;
    let (text, _, _) = next_message(&mut alice).await;
    assert_eq!(text, "back again");
    for client in [alice, bob, cathy] {
        client.close().await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
