//! Rate limits across providers (issue "Discovery, consent and abuse", item 4; DESIGN.md §8;
//! MIMI.md §11 and §13 on KeyPackage exhaustion): a peer provider that floods is answered 429 with
//! `Retry-After` and counted in `mimid_limit_hits_total{limit="peer_rate"}` while another
//! provider is served; one user cannot drain another user's KeyPackages (protocol-06 §5.1), nor
//! can several together; a user's clients share one request rate on the client API.
//!
//! Every limit here refills so slowly (0.001 requests/s, a few claims per hour) that nothing
//! refills while a test runs: the assertions are on counts, never on timing.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use mimid_actors::command::user_shard_key;
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::client::{ClientError, MimiClient};
use mimid_node::federation::{PeerResponse, S2sEndpoint};
use mimid_node::wire::key_material::{ClientMaterial, KeyMaterialResponse, KeyMaterialUserCode};
use mimid_node::wire::{Decode, Encode, Limits};
use mimid_tests::{connect_providers, metric, scrape, ProviderSetup, TestNode};

fn ca() -> CertAuthority {
    CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA")
}

fn user(domain: &str, name: &str) -> UserId {
    UserId::parse(&format!("mimi://{domain}/u/{name}")).expect("valid user")
}

fn room(domain: &str, name: &str) -> RoomId {
    RoomId::parse(&format!("mimi://{domain}/r/{name}")).expect("valid room")
}

/// Single-use KeyPackages `client` has left at its provider (the hub's local replica).
fn available_key_packages(node: &TestNode, client: &ClientId) -> usize {
    let hub = node.node().hub();
    let shards = hub.shards();
    let shard = shards.shard_of(&user_shard_key(&client.user()));
    let data = shards.get(shard).read();
    data.directory()
        .available_key_packages(client, hub.now_ms())
}

/// `requester`'s signed KeyMaterialRequest for `target`'s KeyPackages, to add it to `room`.
fn key_material_body(requester: &MimiClient, target: &UserId, room: &RoomId) -> Bytes {
    Bytes::from(
        requester
            .key_material_request(target, room)
            .expect("signed")
            .to_bytes()
            .expect("encodes"),
    )
}

/// A server-to-server keyMaterial request from `from` to the provider of `target`.
async fn claim_as_provider(from: &TestNode, target: &UserId, body: Bytes) -> PeerResponse {
    from.node()
        .peers()
        .request(
            target.domain(),
            S2sEndpoint::KeyMaterial,
            target.as_str(),
            HeaderMap::new(),
            body,
        )
        .await
        .expect("the target's provider answers")
}

/// A 200 that carries one KeyPackage for the target's only client.
fn assert_served(answer: &PeerResponse) {
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let response = KeyMaterialResponse::from_bytes(
        &answer.body,
        &Limits {
            max_body_len: 1 << 20,
        },
    )
    .expect("a KeyMaterialResponse");
    assert_eq!(response.user_status, KeyMaterialUserCode::Success);
    assert!(matches!(
        response.clients.as_slice(),
        [client] if matches!(client.material, ClientMaterial::Success { .. })
    ));
}

/// A 429 with a `Retry-After` of whole seconds, at least 1 and at most `max_secs`; returns the
/// reason.
fn assert_limited(answer: &PeerResponse, max_secs: u64) -> String {
    let reason = String::from_utf8_lossy(&answer.body).into_owned();
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{reason}");
    let retry_after: u64 = answer
        .headers
        .get(http::header::RETRY_AFTER)
        .expect("a 429 carries Retry-After")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!(
        (1..=max_secs).contains(&retry_after),
        "Retry-After {retry_after} for {reason}"
    );
    reason
}

/// The status of a client's claim that the provider refused.
fn refused_status(result: Result<Vec<openmls::prelude::KeyPackage>, ClientError>) -> StatusCode {
    match result {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// DESIGN.md §8, protocol-06 §5: a.example admits 5 requests per peer (burst 5, refilling at
/// 0.001/s). b.example floods it with 20 concurrent keyMaterial requests for Alice: exactly 5
/// are served and 15 get 429 with `Retry-After`, before anything is proposed (Alice loses 5
/// KeyPackages, not 20). c.example's 5 requests, sent after the flood, are all served; a's
/// /metrics counts the 15 hits under `limit="peer_rate"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_gets_429_while_another_peer_is_served_protocol06_5_1() {
    const BURST: u64 = 5;
    const FLOOD: usize = 20;
    let ca = ca();
    let a = TestNode::start_provider_with("a.example", &ca, ProviderSetup::default(), |config| {
        config.limits.rate.peer_burst = BURST;
        config.limits.rate.peer_requests_per_sec = 0.001;
    })
    .await;
    let b = TestNode::start_provider("b.example", &ca).await;
    let c = TestNode::start_provider("c.example", &ca).await;
    connect_providers(&[&a, &b, &c]);
    let alice = a.client("alice", "phone", 15).await;
    let bob = b.client("bob", "laptop", 0).await;
    let cathy = c.client("cathy", "tablet", 0).await;
    let alice_user = user("a.example", "alice");
    assert_eq!(available_key_packages(&a, alice.id()), 15);

    let flood_body = key_material_body(&bob, &alice_user, &room("b.example", "plans"));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let peers = b.node().peers().clone();
        let (target, body) = (alice_user.clone(), flood_body.clone());
        flood.spawn(async move {
            peers
                .request(
                    target.domain(),
                    S2sEndpoint::KeyMaterial,
                    target.as_str(),
                    HeaderMap::new(),
                    body,
                )
                .await
                .expect("a answers")
        });
    }
    let mut served = 0;
    let mut limited = 0;
    while let Some(answer) = flood.join_next().await {
        let answer = answer.expect("request task");
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            let reason = assert_limited(&answer, 1000);
            assert!(
                reason.contains("provider b.example exceeded its request rate"),
                "{reason}"
            );
            limited += 1;
        } else {
            assert_served(&answer);
            served += 1;
        }
    }
    assert_eq!((served, limited), (BURST as usize, FLOOD - BURST as usize));
    assert_eq!(
        available_key_packages(&a, alice.id()),
        15 - BURST as usize,
        "a limited request claims nothing"
    );

    // c.example has its own bucket: all of its requests are served.
    let cathys_body = key_material_body(&cathy, &alice_user, &room("c.example", "tea"));
    for _ in 0..BURST {
        assert_served(&claim_as_provider(&c, &alice_user, cathys_body.clone()).await);
    }
    assert_eq!(available_key_packages(&a, alice.id()), 5);

    let metrics = scrape(&a).await;
    assert_eq!(
        metric(&metrics, "mimid_limit_hits_total{limit=\"peer_rate\"}"),
        Some((FLOOD - BURST as usize) as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "mimid_requests_total{endpoint=\"s2s_key_material\",status=\"429\"}"
        ),
        Some((FLOOD - BURST as usize) as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "mimid_requests_total{endpoint=\"s2s_key_material\",status=\"200\"}"
        ),
        Some(2.0 * BURST as f64)
    );
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// protocol-06 §5.1, MIMI.md §11 and §13 (KeyPackage exhaustion): a.example admits 3 claims per hour
/// per (requester, target) and 5 per hour per target. Bob@b claims Alice's KeyPackages over and
/// over through his provider: 3 are served, the rest get 429. Cathy@c then gets the 2 claims
/// left under Alice's cap, after which Cathy and Dave@a (a local requester on the client API)
/// are refused alike. Alice still has 5 of her 10 KeyPackages; another user of a is still
/// served; every refusal counts under `limit="key_material_claims"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_drain_another_users_key_packages_protocol06_5_1() {
    let ca = ca();
    let a = TestNode::start_provider_with("a.example", &ca, ProviderSetup::default(), |config| {
        config.limits.rate.key_material_claims_per_pair_per_hour = 3;
        config.limits.rate.key_material_claims_per_target_per_hour = 5;
    })
    .await;
    let b = TestNode::start_provider("b.example", &ca).await;
    let c = TestNode::start_provider("c.example", &ca).await;
    connect_providers(&[&a, &b, &c]);
    let alice = a.client("alice", "phone", 10).await;
    let erin = a.client("erin", "phone", 1).await;
    let dave = a.client("dave", "phone", 0).await;
    let bob = b.client("bob", "laptop", 0).await;
    let cathy = c.client("cathy", "tablet", 0).await;
    let alice_user = user("a.example", "alice");

    // Bob's client asks b, which forwards each claim to a (the room is b's own).
    let plans = room("b.example", "plans");
    let mut served = 0;
    for attempt in 0..10 {
        match bob.claim(&alice_user, &plans).await {
            Ok(key_packages) => {
                assert_eq!(key_packages.len(), 1);
                served += 1;
            }
            Err(ClientError::Status { status, reason }) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reason}");
                assert!(
                    reason.contains("mimi://b.example/u/bob claimed KeyPackages of"),
                    "{reason}"
                );
                assert!(attempt >= 3, "refused within the limit: {reason}");
            }
            Err(other) => panic!("claim {attempt}: {other}"),
        }
    }
    assert_eq!(served, 3);
    assert_eq!(available_key_packages(&a, alice.id()), 7);

    // Cathy gets what is left under Alice's cap of 5 per hour, then the cap holds for her...
    let cathys_body = key_material_body(&cathy, &alice_user, &room("c.example", "tea"));
    for _ in 0..2 {
        assert_served(&claim_as_provider(&c, &alice_user, cathys_body.clone()).await);
    }
    let answer = claim_as_provider(&c, &alice_user, cathys_body).await;
    let reason = assert_limited(&answer, 3600);
    assert!(reason.contains("across requesters"), "{reason}");
    // ...and for a local requester on the client API, who never claimed before.
    assert_eq!(
        refused_status(dave.claim(&alice_user, &room("a.example", "den")).await),
        StatusCode::TOO_MANY_REQUESTS
    );

    assert_eq!(
        available_key_packages(&a, alice.id()),
        5,
        "Alice keeps KeyPackages however often she is asked for them"
    );
    // The limits are per target: Bob can still add Erin.
    assert_eq!(
        bob.claim(&user("a.example", "erin"), &plans)
            .await
            .expect("erin is claimable")
            .len(),
        1
    );
    assert_eq!(available_key_packages(&a, erin.id()), 0);

    let metrics = scrape(&a).await;
    assert_eq!(
        metric(
            &metrics,
            "mimid_limit_hits_total{limit=\"key_material_claims\"}"
        ),
        Some(7.0 + 1.0 + 1.0)
    );
    assert_eq!(
        metric(&metrics, "mimid_limit_hits_total{limit=\"peer_rate\"}"),
        None,
        "the default peer limits are not in the way"
    );
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// DESIGN.md §8 on the client API: a user's clients share one request bucket (burst 3 here,
/// 0.001/s). Alice's phone and her linked laptop together get 3 authenticated requests, then
/// 429 (registration is not authenticated and not counted); Bob is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_clients_share_one_request_rate_on_the_client_api() {
    let node = TestNode::start_with(|config| {
        config.limits.rate.user_burst = 3;
        config.limits.rate.user_requests_per_sec = 0.001;
    })
    .await;
    // One publish each: the first of Alice's three requests.
    let phone = node.client("alice", "phone", 1).await;
    let laptop = phone
        .link(ClientId::parse("mimi://localhost/d/alice/laptop").expect("valid client"))
        .await
        .expect("a linked device registers");
    phone.publish_key_packages(1).await.expect("second request");
    laptop.publish_key_packages(1).await.expect("third request");
    for client in [&phone, &laptop] {
        match client.publish_key_packages(1).await {
            Err(ClientError::Status { status, reason }) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reason}");
                assert!(
                    reason.contains("user mimi://localhost/u/alice exceeded its request rate"),
                    "{reason}"
                );
            }
            other => panic!("{} expected 429, got {other:?}", client.id()),
        }
    }
    let bob = node.client("bob", "phone", 1).await;
    bob.publish_key_packages(1)
        .await
        .expect("bob has his own rate");
    assert_eq!(available_key_packages(&node, phone.id()), 2);
    assert_eq!(available_key_packages(&node, laptop.id()), 1);

    let metrics = scrape(&node).await;
    assert_eq!(
        metric(&metrics, "mimid_limit_hits_total{limit=\"user_rate\"}"),
        Some(2.0)
    );
    node.shutdown().await;
}
