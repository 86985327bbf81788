//! Discovery and consent across real providers (issue 7; MIMI.md §5.1, §5.6, §5.7, §6.8, §13):
//! users set handles and preferences through the client API; `identifierQuery`,
//! `requestConsent` and `updateConsent` travel between providers over mutual TLS; the target's
//! provider enforces reachability and consent on `keyMaterial`.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use mimid_actors::command::user_shard_key;
use mimid_actors::directory::consent::{Discoverability, Preferences, Reachability};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::api::PREFIX;
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::client::{Event, MimiClient, UpdateResult};
use mimid_node::federation::S2sEndpoint;
use mimid_node::wire::consent::{ConsentEntry, ConsentOp, ConsentScope};
use mimid_node::wire::discovery::{
    no_extensions, ConsentStateCode, ProfileBody, REQUESTER_COMPONENT_ID,
};
use mimid_node::wire::identifier::{
    IdentifierQueryCode, IdentifierRequest, IdentifierResponse, QueryElement, SearchField,
};
use mimid_node::wire::key_material::{KeyMaterialResponse, KeyMaterialUserCode};
use mimid_node::wire::types::IdentifierUri;
use mimid_node::wire::{Decode, Encode, Limits, Mls};
use mimid_tests::{connect_providers, state_digest, TestNode, WAIT};
use openmls::extensions::AppDataDictionary;
use openmls::prelude::tls_codec::Serialize as _;

fn ca() -> CertAuthority {
    CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA")
}

fn room(domain: &str, name: &str) -> RoomId {
    RoomId::parse(&format!("mimi://{domain}/r/{name}")).expect("valid room")
}

fn limits() -> Limits {
    Limits {
        max_body_len: 1 << 20,
    }
}

async fn two_providers() -> (TestNode, TestNode) {
    let ca = ca();
    let a = TestNode::start_provider("a.example", &ca).await;
    let b = TestNode::start_provider("b.example", &ca).await;
    connect_providers(&[&a, &b]);
    (a, b)
}

/// POSTs `body` to `path` as `client`, asserts 200 and returns the answer's body.
async fn post_ok(client: &MimiClient, path: &str, body: Vec<u8>) -> bytes::Bytes {
    let (status, bytes) = client.post_raw(path, body).await.expect("answered");
    assert_eq!(
        status,
        StatusCode::OK,
        "{path}: {}",
        String::from_utf8_lossy(&bytes)
    );
    bytes
}

/// The user code of a keyMaterial request of `requester` for `target`, to add it to `room`
/// (protocol-06 §5.1), sent through the requester's provider.
async fn key_material(
    requester: &MimiClient,
    target: &UserId,
    room: &RoomId,
) -> KeyMaterialUserCode {
    let body = requester
        .key_material_request(target, room)
        .expect("signed")
        .to_bytes()
        .expect("encodes");
    let bytes = post_ok(requester, &format!("{PREFIX}keyMaterial"), body).await;
    let response = KeyMaterialResponse::from_bytes(&bytes, &limits()).expect("a response");
    if !response.user_status.allows_clients() {
        assert!(response.clients.is_empty(), "protocol-06 §5.1: no clients");
    }
    response.user_status
}

/// Single-use KeyPackages `client` has left at its provider `node`.
fn key_packages_left(node: &TestNode, client: &ClientId) -> usize {
    let hub = node.node().hub();
    let shard = hub.shards().shard_of(&user_shard_key(&client.user()));
    let data = hub.shards().get(shard).read();
    data.directory()
        .available_key_packages(client, hub.now_ms())
}

/// An identifier query of `requester`'s client for users of `domain`, as raw answer bytes.
async fn query_bytes(requester: &MimiClient, domain: &str, element: QueryElement) -> Vec<u8> {
    let body = IdentifierRequest {
        query_elements: vec![element],
        id_request_extensions: no_extensions().expect("empty dictionary"),
    }
    .to_bytes()
    .expect("encodes");
    post_ok(
        requester,
        &format!("{PREFIX}identifierQuery/{domain}"),
        body,
    )
    .await
    .to_vec()
}

fn element(field: SearchField, value: &str) -> QueryElement {
    QueryElement {
        field,
        search_value: value.to_owned(),
    }
}

/// The answer code of `client`'s identifier query (MIMI.md §5.7) for users of a.example
/// matching every one of `elements`.
async fn search_a(client: &MimiClient, elements: &[(SearchField, &str)]) -> IdentifierQueryCode {
    let elements = elements
        .iter()
        .map(|(field, value)| element(field.clone(), value))
        .collect();
    client
        .search("a.example", elements)
        .await
        .expect("answered")
        .response_code
}

const DISCOVERABILITY: [Discoverability; 3] = [
    Discoverability::Everyone,
    Discoverability::Consented,
    Discoverability::Nobody,
];
const REACHABILITY: [Reachability; 3] = [
    Reachability::Anyone,
    Reachability::ConsentRequired,
    Reachability::OwnProvider,
];

/// MIMI.md §5.7 and §5.1/§5.6, every combination: discoverability {everyone, consented,
/// nobody} × reachability {anyone, consent required, only my provider} × requester {granted,
/// not granted} × requester's provider {same, other}. The query finds the target exactly when
/// its discoverability admits the requester, and an undiscoverable target is answered
/// byte-identically to an unknown user (no oracle); keyMaterial succeeds exactly when its
/// reachability and consent admit the requester, refuses with `noConsent` otherwise, and a
/// refusal consumes no KeyPackage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preference_combination_decides_query_and_key_material_mimi_5_6_5_7() {
    let (a, b) = two_providers().await;
    let granted_a = a.client("granted", "phone", 0).await;
    let plain_a = a.client("plain", "phone", 0).await;
    let granted_b = b.client("granted", "phone", 0).await;
    let plain_b = b.client("plain", "phone", 0).await;

    struct Target {
        client: MimiClient,
        discoverability: Discoverability,
        reachability: Reachability,
        query: QueryElement,
    }
    let mut targets = Vec::new();
    for (d, discoverability) in DISCOVERABILITY.into_iter().enumerate() {
        for (r, reachability) in REACHABILITY.into_iter().enumerate() {
            let name = format!("t{d}{r}");
            let client = a.client(&name, "phone", 4).await;
            client
                .set_profile(&ProfileBody {
                    display_name: format!("Target {d}{r}"),
                    nick: Some(name.clone()),
                    emails: vec![format!("{name}@Mail.Example")],
                    phones: vec![format!("+1555000{d}{r}0")],
                })
                .await
                .expect("profile set");
            client
                .set_preferences(Preferences {
                    discoverability,
                    reachability,
                })
                .await
                .expect("preferences set");
            // The granted requesters are granted globally, one of them across providers.
            for requester in [granted_a.user(), granted_b.user()] {
                client
                    .grant_consent(&requester, None, false)
                    .await
                    .expect("grant recorded and sent");
            }
            // Every search type of MIMI.md §5.7 finds someone in the matrix.
            let query = match (d * 3 + r) % 4 {
                0 => element(SearchField::Nick, &name),
                1 => element(SearchField::Email, &format!("{name}@mail.example")),
                2 => element(SearchField::Phone, &format!("+1555000{d}{r}0")),
                _ => element(SearchField::Handle, &format!("im:{name}@a.example")),
            };
            targets.push(Target {
                client,
                discoverability,
                reachability,
                query,
            });
        }
    }
    // b knows that its user was granted (MIMI.md §5.6: both providers keep their side).
    let outgoing = granted_b.consents().await.expect("listed").outgoing;
    assert_eq!(outgoing.len(), targets.len());
    assert!(outgoing
        .iter()
        .all(|consent| consent.state == ConsentStateCode::Granted));

    let requesters = [
        (&granted_a, true, true),
        (&plain_a, false, true),
        (&granted_b, true, false),
        (&plain_b, false, false),
    ];
    let mut checked = 0;
    for (requester, has_grant, same_provider) in requesters {
        let unknown =
            query_bytes(requester, "a.example", element(SearchField::Nick, "nobody")).await;
        let answer = IdentifierResponse::from_bytes(&unknown, &limits()).expect("a response");
        assert_eq!(answer.response_code, IdentifierQueryCode::NotFound);
        let in_room = room(requester.user().domain(), "table");
        for target in &targets {
            let case = format!(
                "{:?}/{:?}, requester {} (grant: {has_grant})",
                target.discoverability,
                target.reachability,
                requester.user()
            );
            let discoverable = match target.discoverability {
                Discoverability::Everyone => true,
                Discoverability::Consented => has_grant,
                Discoverability::Nobody => false,
            };
            let bytes = query_bytes(requester, "a.example", target.query.clone()).await;
            let answer = IdentifierResponse::from_bytes(&bytes, &limits()).expect("a response");
            if discoverable {
                assert_eq!(answer.response_code, IdentifierQueryCode::Success, "{case}");
                assert_eq!(
                    answer.uri,
                    vec![IdentifierUri::from(&target.client.user())],
                    "{case}"
                );
            } else {
                assert_eq!(bytes, unknown, "{case}: answered like an unknown user");
            }

            let reachable = match target.reachability {
                Reachability::Anyone => true,
                Reachability::ConsentRequired => has_grant,
                Reachability::OwnProvider => same_provider,
            };
            let before = key_packages_left(&a, target.client.id());
            let code = key_material(requester, &target.client.user(), &in_room).await;
            let after = key_packages_left(&a, target.client.id());
            if reachable {
                assert_eq!(code, KeyMaterialUserCode::Success, "{case}");
                assert_eq!(after, before - 1, "{case}: one KeyPackage claimed");
            } else {
                assert_eq!(code, KeyMaterialUserCode::NoConsent, "{case}");
                assert_eq!(after, before, "{case}: a refusal consumes nothing");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
    // ANDed elements (MIMI.md §5.7): a nick with another user's phone matches nobody.
    let mixed = search_a(
        &granted_a,
        &[
            (SearchField::Nick, "t00"),
            (SearchField::Phone, "+15550000010"),
        ],
    )
    .await;
    assert_eq!(mixed, IdentifierQueryCode::NotFound);
    let both = search_a(
        &granted_b,
        &[
            (SearchField::Nick, "t00"),
            (SearchField::Email, "t00@MAIL.example"),
        ],
    )
    .await;
    assert_eq!(both, IdentifierQueryCode::Success);
    let unsupported = search_a(&plain_b, &[(SearchField::PartialName, "Target")]).await;
    assert_eq!(unsupported, IdentifierQueryCode::UnsupportedField);
    a.shutdown().await;
    b.shutdown().await;
}

/// MIMI.md §6.8 consent flow across two providers: Alice@a asks Bob@b (consent required);
/// Bob sees the request, grants, and Alice's keyMaterial succeeds; Bob revokes and it is
/// refused again; a room-scoped grant opens only its room (`noConsentForThisRoom` elsewhere);
/// a cancel removes a pending request on both sides; finally a grant carrying Bob's KeyPackage
/// lets Alice add him at once, and the Welcome reaches him through the claim the grant
/// recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_request_grant_revoke_room_scope_and_cancel_mimi_6_8() {
    let (a, b) = two_providers().await;
    let mut alice = a.client("alice", "phone", 0).await;
    let mut bob = b.client("bob", "laptop", 3).await;
    let bob_user = bob.user();
    let alice_user = alice.user();
    bob.set_preferences(Preferences {
        discoverability: Discoverability::Everyone,
        reachability: Reachability::ConsentRequired,
    })
    .await
    .expect("preferences set");
    let mine = bob.profile().await.expect("profile read");
    assert_eq!(
        Preferences::from(mine.preferences).reachability,
        Reachability::ConsentRequired
    );
    assert_eq!(mine.profile, ProfileBody::default(), "no profile set yet");
    let club = room("a.example", "club");
    let den = room("a.example", "den");
    let attic = room("a.example", "attic");

    assert_eq!(
        key_material(&alice, &bob_user, &club).await,
        KeyMaterialUserCode::NoConsent
    );
    assert_eq!(key_packages_left(&b, bob.id()), 3);

    alice
        .request_consent(&bob_user, None)
        .await
        .expect("request delivered");
    let incoming = bob.consents().await.expect("listed").incoming;
    assert_eq!(incoming.len(), 1, "{incoming:?}");
    assert_eq!(incoming[0].requester, alice_user);
    assert_eq!(incoming[0].room, None);
    assert_eq!(incoming[0].state, ConsentStateCode::Requested);
    let outgoing = alice.consents().await.expect("listed").outgoing;
    assert_eq!(outgoing[0].state, ConsentStateCode::Requested);

    alice
        .request_consent(&bob_user, Some(&attic))
        .await
        .expect("request delivered");
    let pending = |consents: &mimid_node::client::Consents| {
        consents
            .incoming
            .iter()
            .filter(|c| c.state == ConsentStateCode::Requested)
            .map(|c| c.room.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pending(&bob.consents().await.expect("listed")),
        vec![None, Some(attic.clone())]
    );
    alice
        .cancel_consent(&bob_user, Some(&attic))
        .await
        .expect("cancel delivered");
    assert_eq!(pending(&bob.consents().await.expect("listed")), vec![None]);
    assert!(!alice
        .consents()
        .await
        .expect("listed")
        .outgoing
        .iter()
        .any(|c| c.room.as_ref() == Some(&attic)));

    bob.grant_consent(&alice_user, None, false)
        .await
        .expect("grant recorded and sent");
    let outgoing = alice.consents().await.expect("listed").outgoing;
    assert_eq!(outgoing.len(), 1);
    assert_eq!(outgoing[0].target, bob_user);
    assert_eq!(outgoing[0].state, ConsentStateCode::Granted);
    let incoming = bob.consents().await.expect("listed").incoming;
    assert_eq!(incoming.len(), 1, "the request was settled by the grant");
    assert_eq!(incoming[0].state, ConsentStateCode::Granted);
    assert_eq!(
        key_material(&alice, &bob_user, &club).await,
        KeyMaterialUserCode::Success
    );
    assert_eq!(key_packages_left(&b, bob.id()), 2);

    bob.revoke_consent(&alice_user, None)
        .await
        .expect("revoke recorded and sent");
    assert_eq!(
        key_material(&alice, &bob_user, &club).await,
        KeyMaterialUserCode::NoConsent
    );
    assert_eq!(
        key_packages_left(&b, bob.id()),
        2,
        "a refusal consumes nothing"
    );
    let outgoing = alice.consents().await.expect("listed").outgoing;
    assert_eq!(outgoing[0].state, ConsentStateCode::Revoked);
    // A revoke is also a pre-emptive deny (MIMI.md §5.6): a new request is not even queued.
    alice
        .request_consent(&bob_user, Some(&attic))
        .await
        .expect("request delivered");
    assert!(pending(&bob.consents().await.expect("listed")).is_empty());

    bob.grant_consent(&alice_user, Some(&club), false)
        .await
        .expect("room-scoped grant");
    assert_eq!(
        key_material(&alice, &bob_user, &den).await,
        KeyMaterialUserCode::NoConsentForThisRoom
    );
    assert_eq!(
        key_material(&alice, &bob_user, &club).await,
        KeyMaterialUserCode::Success
    );
    assert_eq!(key_packages_left(&b, bob.id()), 1);

    // A grant with a KeyPackage: Alice adds Bob to the den without keyMaterial.
    alice.connect_stream().await.expect("stream opens");
    bob.connect_stream().await.expect("stream opens");
    alice.create_room(&den).await.expect("room created");
    bob.grant_consent(&alice_user, Some(&den), true)
        .await
        .expect("grant with a KeyPackage");
    let granted = alice
        .consents()
        .await
        .expect("listed")
        .outgoing
        .into_iter()
        .find(|c| c.room.as_ref() == Some(&den))
        .expect("the den grant arrived");
    assert_eq!(granted.state, ConsentStateCode::Granted);
    assert_eq!(granted.key_packages.len(), 1);
    let added = alice
        .commit_adds(&den, std::slice::from_ref(&bob_user), granted.key_packages)
        .await
        .expect("commit sent");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    match bob.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Joined { room, .. }) => assert_eq!(room, den),
        other => panic!("bob expected the den's Welcome, got {other:?}"),
    }
    assert_eq!(
        key_packages_left(&b, bob.id()),
        1,
        "no published KeyPackage used"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer's request to `node` as provider `from`, answered with status and body.
async fn peer_call(
    caller: &TestNode,
    to: &str,
    endpoint: S2sEndpoint,
    param: &str,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let answer = caller
        .node()
        .peers()
        .request(to, endpoint, param, HeaderMap::new(), Bytes::from(body))
        .await
        .expect("answered");
    (
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

fn consent_body(operation: ConsentOp, requester: &str, target: &str) -> Vec<u8> {
    ConsentEntry {
        operation,
        scope: ConsentScope {
            requester_uri: IdentifierUri::new(requester),
            target_uri: IdentifierUri::new(target),
            room_id: None,
        },
        consent_extensions: no_extensions().expect("empty dictionary"),
    }
    .to_bytes()
    .expect("encodes")
}

fn query_with_requester(requester: &[u8]) -> Vec<u8> {
    let mut extensions = AppDataDictionary::new();
    extensions.insert(REQUESTER_COMPONENT_ID, requester.to_vec());
    IdentifierRequest {
        query_elements: vec![element(SearchField::Nick, "alice")],
        id_request_extensions: Mls::from_value(extensions).expect("encodes"),
    }
    .to_bytes()
    .expect("encodes")
}

/// MIMI.md §3.3, §5.6, §5.7 and §13: every new endpoint, server-to-server and client API,
/// refuses malformed or misattributed bodies with a specific status and reason, and neither
/// provider's replicated state changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_discovery_and_consent_requests_are_refused_and_change_nothing() {
    let (a, b) = two_providers().await;
    let alice = a.client("alice", "phone", 1).await;
    let carol = a.client("carol", "phone", 0).await;
    let bob = b.client("bob", "laptop", 0).await;
    alice
        .set_profile(&ProfileBody {
            nick: Some("alice".into()),
            ..ProfileBody::default()
        })
        .await
        .expect("profile set");
    let profile = alice.profile().await.expect("profile read");
    assert_eq!(profile.profile.nick.as_deref(), Some("alice"));
    assert_eq!(
        Preferences::from(profile.preferences),
        Preferences::default(),
        "MIMI.md §5.6 [IMPL CHOICE] defaults: discoverable by everyone, reachable by anyone"
    );
    let alice_uri = "mimi://a.example/u/alice";
    let bob_uri = "mimi://b.example/u/bob";
    let valid_request = consent_body(ConsentOp::Request, bob_uri, alice_uri);
    let foreign_kp = {
        // A KeyPackage of Carol@a, offered in a grant that b sends as Bob.
        let key_package = carol.key_package(false).expect("KeyPackage");
        Mls::from_bytes(&key_package.tls_serialize_detached().expect("encodes")).expect("decodes")
    };
    let before_a = state_digest(&a);
    let before_b = state_digest(&b);

    // Server to server, b calling a.
    /// (case, endpoint, path parameter, body, status, reason).
    type PeerCase<'a> = (&'a str, S2sEndpoint, &'a str, Vec<u8>, StatusCode, &'a str);
    #[rustfmt::skip]
    let peer_cases: Vec<PeerCase> = vec![
        ("truncated query", S2sEndpoint::IdentifierQuery, "a.example",
         query_with_requester(b"mimi://b.example/u/bob")[..5].to_vec(),
         StatusCode::BAD_REQUEST, "length_beyond_input: IdentifierRequest.query_elements"),
        ("requester not a user URI", S2sEndpoint::IdentifierQuery, "a.example",
         query_with_requester(b"mimi://b.example/d/bob/laptop"),
         StatusCode::BAD_REQUEST, "bad_uri: IdentifierRequest.id_request_extensions[requester]"),
        ("requester of another provider", S2sEndpoint::IdentifierQuery, "a.example",
         query_with_requester(b"mimi://c.example/u/mallory"),
         StatusCode::FORBIDDEN, "provider b.example cannot query as mimi://c.example/u/mallory"),
        ("query for another domain", S2sEndpoint::IdentifierQuery, "c.example",
         query_with_requester(b"mimi://b.example/u/bob"),
         StatusCode::NOT_FOUND, "identifierQuery for c.example is not served by a.example"),
        ("grant sent to requestConsent", S2sEndpoint::RequestConsent, alice_uri,
         consent_body(ConsentOp::Grant { client_key_packages: vec![] }, bob_uri, alice_uri),
         StatusCode::BAD_REQUEST, "requestConsent carries a request or cancel"),
        ("undefined consent operation", S2sEndpoint::RequestConsent, alice_uri,
         [&[4u8][..], &valid_request[1..]].concat(),
         StatusCode::BAD_REQUEST, "bad_enum: ConsentEntry.consentOperation"),
        ("trailing bytes", S2sEndpoint::RequestConsent, alice_uri,
         [valid_request.as_slice(), &[0]].concat(),
         StatusCode::BAD_REQUEST, "trailing_bytes"),
        ("requester of another provider", S2sEndpoint::RequestConsent, alice_uri,
         consent_body(ConsentOp::Request, "mimi://c.example/u/mallory", alice_uri),
         StatusCode::FORBIDDEN, "provider b.example cannot ask consent as mimi://c.example/u/mallory"),
        ("target of another provider", S2sEndpoint::RequestConsent, "a.example",
         consent_body(ConsentOp::Request, bob_uri, "mimi://c.example/u/cathy"),
         StatusCode::NOT_FOUND, "is not served by a.example"),
        ("path contradicts the body", S2sEndpoint::RequestConsent, "mimi://a.example/u/carol",
         valid_request.clone(),
         StatusCode::BAD_REQUEST, "the path names mimi://a.example/u/carol but the body names"),
        ("requester is the target", S2sEndpoint::RequestConsent, "a.example",
         consent_body(ConsentOp::Request, bob_uri, bob_uri),
         StatusCode::BAD_REQUEST, "invalid_value: ConsentEntry.targetUri: the target is the requester"),
        ("room that is not a room", S2sEndpoint::RequestConsent, "a.example",
         ConsentEntry {
             operation: ConsentOp::Request,
             scope: ConsentScope {
                 requester_uri: IdentifierUri::new(bob_uri),
                 target_uri: IdentifierUri::new(alice_uri),
                 room_id: Some(IdentifierUri::new(alice_uri)),
             },
             consent_extensions: no_extensions().expect("empty"),
         }.to_bytes().expect("encodes"),
         StatusCode::BAD_REQUEST, "bad_uri: ConsentEntry.roomId"),
        ("request sent to updateConsent", S2sEndpoint::UpdateConsent, "a.example",
         consent_body(ConsentOp::Request, alice_uri, bob_uri),
         StatusCode::BAD_REQUEST, "updateConsent carries a grant or revoke"),
        ("target of another provider", S2sEndpoint::UpdateConsent, "a.example",
         consent_body(ConsentOp::Revoke, alice_uri, "mimi://c.example/u/cathy"),
         StatusCode::FORBIDDEN, "provider b.example cannot decide consent as mimi://c.example/u/cathy"),
        ("grant KeyPackage of another user", S2sEndpoint::UpdateConsent, "a.example",
         consent_body(ConsentOp::Grant { client_key_packages: vec![foreign_kp.clone()] }, alice_uri, bob_uri),
         StatusCode::BAD_REQUEST, "ConsentEntry.clientKeyPackages[0]: names mimi://a.example/d/carol/phone, which is not a client of mimi://b.example/u/bob"),
    ];
    for (name, endpoint, param, body, status, reason) in peer_cases {
        let (got, text) = peer_call(&b, "a.example", endpoint, param, body).await;
        assert_eq!(got, status, "{name}: {text}");
        assert!(text.contains(reason), "{name}: {text:?} lacks {reason:?}");
    }

    // Client API, Alice calling a.
    let profile = |phone: &str| {
        ProfileBody {
            phones: vec![phone.to_owned()],
            ..ProfileBody::default()
        }
        .to_bytes()
        .expect("encodes")
    };
    let taken = ProfileBody {
        nick: Some("alice".into()),
        ..ProfileBody::default()
    }
    .to_bytes()
    .expect("encodes");
    #[rustfmt::skip]
    let client_cases: Vec<(&MimiClient, &str, Vec<u8>, StatusCode, &str)> = vec![
        (&alice, "profile", profile("555-1234"), StatusCode::BAD_REQUEST,
         "phone number \"555-1234\": must start with '+'"),
        (&alice, "profile", profile("+1555")[..3].to_vec(), StatusCode::BAD_REQUEST, "truncated"),
        (&carol, "profile", taken, StatusCode::CONFLICT, "nick alice belongs to another user"),
        (&alice, "preferences", vec![1, 9], StatusCode::BAD_REQUEST,
         "bad_enum: Preferences.reachability: 9"),
        (&alice, "identifierQuery/not_a_domain", query_with_requester(b"x"),
         StatusCode::BAD_REQUEST, "is not a domain"),
        (&alice, "identifierQuery/a.example", vec![0x40], StatusCode::BAD_REQUEST,
         "IdentifierRequest.query_elements"),
        (&alice, "requestConsent", consent_body(ConsentOp::Request, "mimi://a.example/u/carol", bob_uri),
         StatusCode::FORBIDDEN, "requesterUri mimi://a.example/u/carol is not the authenticated client's user"),
        (&alice, "requestConsent", consent_body(ConsentOp::Revoke, alice_uri, bob_uri),
         StatusCode::BAD_REQUEST, "grant and revoke go to updateConsent"),
        (&alice, "requestConsent", consent_body(ConsentOp::Request, alice_uri, "mimi://b.example/d/bob/laptop"),
         StatusCode::BAD_REQUEST, "bad_uri: ConsentEntry.targetUri"),
        (&alice, "updateConsent", consent_body(ConsentOp::Revoke, bob_uri, "mimi://a.example/u/carol"),
         StatusCode::FORBIDDEN, "targetUri mimi://a.example/u/carol is not the authenticated client's user"),
        (&alice, "updateConsent",
         consent_body(ConsentOp::Grant { client_key_packages: vec![foreign_kp] }, bob_uri, alice_uri),
         StatusCode::BAD_REQUEST, "which is not a client of mimi://a.example/u/alice"),
        (&alice, "consents", Vec::new(), StatusCode::METHOD_NOT_ALLOWED, "client_consents takes GET"),
    ];
    for (client, path, body, status, reason) in client_cases {
        let (got, text) = client
            .post_raw(&format!("{PREFIX}{path}"), body)
            .await
            .expect("answered");
        let text = String::from_utf8_lossy(&text);
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.contains(reason), "{path}: {text:?} lacks {reason:?}");
    }
    assert_eq!(state_digest(&a), before_a, "refusals changed a.example");
    assert_eq!(state_digest(&b), before_b, "refusals changed b.example");

    // The valid request goes through: the cases were refused for their reasons.
    let (status, text) = peer_call(
        &b,
        "a.example",
        S2sEndpoint::RequestConsent,
        alice_uri,
        valid_request,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let incoming = alice.consents().await.expect("listed").incoming;
    assert_eq!(incoming.len(), 1);
    assert_eq!(incoming[0].requester.as_str(), bob_uri);
    // An unknown target is answered like a known one, and nothing is recorded (MIMI.md §13).
    let before_a = state_digest(&a);
    let (status, _) = peer_call(
        &b,
        "a.example",
        S2sEndpoint::RequestConsent,
        "a.example",
        consent_body(ConsentOp::Request, bob_uri, "mimi://a.example/u/nobody"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(state_digest(&a), before_a);
    drop(bob);
    a.shutdown().await;
    b.shutdown().await;
}
