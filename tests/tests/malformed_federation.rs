//! The hostile-input corpus of the server-to-server API (issue 8 item 5; protocol-06 §4-§5,
//! MIMI.md §3.1-§3.3, §5, §7, §13), received from peer providers over real HTTP/3 with mutual
//! TLS: three providers on loopback (certificates from one test CA; a's also names
//! `alias.a.example`), a room hosted by a with members at b and c
//! (`three_providers_in_a_room_with`), a room without c's users and one whose log holds c's
//! pending proposals. The client API half is `malformed_input.rs`; the machinery both share is
//! `hostile/mod.rs`.
//!
//! Each case is sent on a connection that presents a provider's certificate (b's, c's, a's, or
//! none) with a chosen `From` and must get its exact status and reason (or protocol-06 answer
//! code and text); after every case the replicated state of all three providers is unchanged
//! (`state_digest`) and all three answer `/readyz` with 200.
//!
//! | endpoint | cases |
//! |---|---|
//! | update/{roomId} (commits and proposals) | 118 |
//! | submitMessage/{roomId} | 145 |
//! | keyMaterial/{targetUser} | 227 |
//! | groupInfo/{roomId} | 123 |
//! | notify/{roomId} (a notifying b, c pretending) | 116 |
//! | requestConsent/{targetUser} | 241 |
//! | updateConsent/{requesterUser} | 240 |
//! | identifierQuery/{domain} | 113 |
//! | reportAbuse/{roomId} | 190 |
//! | proxyDownload/{downloadUrl} | 25 |
//! | unknown endpoints | 6 |
//! | **total** (`peer_requests_refuse_hostile_input_and_change_nothing_protocol06_5`) | **1 544** |
//!
//! Per endpoint: the transport's refusals (no client certificate; b's certificate claiming to be
//! c or the hub; c's claiming b; no, two or malformed `From`; a misdirected request; wrong
//! methods; no or undecodable path parameter; bodies over the limit, sent or declared, and a
//! lying content-length), the codec's (generated from the endpoint's valid body), hostile URIs
//! in every path parameter and URI field, and what the endpoint decides. The test asserts these
//! counts at the end and prints them.

mod hostile;

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::room::log::{ItemBody, LogItem};
use mimid_node::admin::admin_call;
use mimid_node::api::parse_room_param;
use mimid_node::client::{Event, FrankCheck, MimiClient, SubmitResult, UpdateResult};
use mimid_node::config::TlsFiles;
use mimid_node::federation::S2sEndpoint;
use mimid_node::h3::{ClientLimits, H3Client};
use mimid_node::peering::HUB_SEQS_HEADER;
use mimid_node::tls::{client_config, client_config_with_identity, TlsMaterial};
use mimid_node::wire::abuse::AbuseReport;
use mimid_node::wire::consent::{ConsentEntry, ConsentOp, ConsentScope};
use mimid_node::wire::discovery::{no_extensions, scope_ids, REQUESTER_COMPONENT_ID};
use mimid_node::wire::fanout::{
    decode_fanout_batch, encode_fanout_batch, FanoutBody, FanoutMessage,
};
use mimid_node::wire::group_info::{GroupInfoCode, GroupInfoRequest, GroupInfoRequestTbs};
use mimid_node::wire::identifier::{
    IdentifierQueryCode, IdentifierRequest, QueryElement, SearchField,
};
use mimid_node::wire::key_material::{
    KeyMaterialRequest, KeyMaterialRequestTbs, KeyMaterialResponse, KeyMaterialUserCode,
};
use mimid_node::wire::submit::{SubmitMessageRequest, SubmitResponseCode};
use mimid_node::wire::update::{
    HandshakeBundle, RatchetTreeOption, UpdateRequest, UpdateResponseCode, UpdateRoomResponse,
};
use mimid_node::wire::{
    CipherSuite, Decode, Encode, IdentifierUri, Limits, Mls, MlsMessage, Protocol,
    SignaturePublicKey, WireError,
};
use mimid_tests::{
    http_get_status, state_digest, three_providers_in_a_room, three_providers_in_a_room_with,
    wait_fanout_recorded, TestNode, Three, WAIT,
};
use openmls::extensions::AppDataDictionary;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{BasicCredential, Credential, CredentialType};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

use hostile::{
    check_answer, decode_as, hostile_uris, parse_uri, percent_encode, refused, wire_mutations,
    with_epoch, Decoder, Expect, Tally, UriKind, WireBase, CUT, TRAILING,
};

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

// ---------------------------------------------------------------------------------------------
// The peers' connections.

/// The TLS material `node` presents as a peer (its provider certificate and key; the test CA).
fn identity_of(node: &TestNode) -> TlsMaterial {
    let tls = &node.config.tls;
    TlsMaterial::load(&TlsFiles {
        cert: tls.cert.clone().expect("a provider certificate"),
        key: tls.key.clone().expect("a provider key"),
        client_ca: tls.client_ca.clone().expect("the test CA"),
    })
    .expect("TLS material")
}

/// An HTTP/3 connection to `to`, verifying it as `server_name`, presenting `from`'s certificate
/// (or none).
async fn connect(to: &TestNode, server_name: &str, from: Option<&TestNode>) -> H3Client {
    let roots = identity_of(to).roots;
    let tls = match from {
        Some(from) => {
            let identity = identity_of(from);
            client_config_with_identity(roots, identity.cert_chain, identity.key)
        }
        None => client_config(roots),
    }
    .expect("client TLS config");
    H3Client::connect(
        to.node().quic_addr(),
        server_name,
        tls,
        ClientLimits::default(),
    )
    .await
    .expect("connects")
}

/// Which connection a case goes through: `b→a` is b's certificate calling a.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Conn {
    BToA,
    CToA,
    AToB,
    CToB,
    /// No client certificate.
    AnonymousToA,
    /// b's certificate, addressed to another name a's certificate covers.
    BToAlias,
}

impl Conn {
    /// The `From` a case sends by default: the certificate's own domain.
    fn from(self) -> Option<&'static str> {
        match self {
            Conn::BToA | Conn::BToAlias | Conn::AnonymousToA => Some("mimi@b.example"),
            Conn::CToA | Conn::CToB => Some("mimi@c.example"),
            Conn::AToB => Some("mimi@a.example"),
        }
    }
}

/// The name a's certificate also covers (MIMI.md §3.1: a request for it is misdirected).
const ALIAS: &str = "alias.a.example";

/// One server-to-server request and the answer it must get.
struct PeerCase {
    name: String,
    conn: Conn,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    expect: Expect,
}

fn from_header(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::FROM,
        HeaderValue::from_str(value).expect("a header value"),
    );
    headers
}

/// `/v1/<endpoint>/<param>` with the parameter percent-encoded as a peer's directory template
/// expands it (RFC 6570).
fn s2s_path(endpoint: S2sEndpoint, param: &str) -> String {
    format!(
        "/v1/{}/{}",
        endpoint.name(),
        percent_encode(param.as_bytes())
    )
}

impl PeerCase {
    fn new(
        name: impl Into<String>,
        conn: Conn,
        endpoint: S2sEndpoint,
        param: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> PeerCase {
        PeerCase::raw(
            name,
            conn,
            endpoint.method(),
            &s2s_path(endpoint, param),
            body,
            expect,
        )
    }

    /// A case with a path as given (already encoded).
    fn raw(
        name: impl Into<String>,
        conn: Conn,
        method: Method,
        path: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> PeerCase {
        PeerCase {
            name: name.into(),
            conn,
            method,
            path: path.to_owned(),
            headers: conn.from().map(from_header).unwrap_or_default(),
            body,
            expect,
        }
    }

    fn with_headers(mut self, headers: HeaderMap) -> PeerCase {
        self.headers = headers;
        self
    }
}

/// The server-to-server endpoint a path reaches (for the tally).
fn endpoint_label(path: &str) -> String {
    let name = path
        .strip_prefix("/v1/")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    match S2sEndpoint::from_name(name) {
        Some(endpoint) => endpoint.name().to_owned(),
        None => "unknown paths".to_owned(),
    }
}

/// The three providers, the connections between them, and the tally.
struct Federation<'a> {
    nodes: [&'a TestNode; 3],
    conns: BTreeMap<Conn, H3Client>,
    tally: Mutex<Tally>,
}

impl<'a> Federation<'a> {
    async fn new(a: &'a TestNode, b: &'a TestNode, c: &'a TestNode) -> Federation<'a> {
        let conns = BTreeMap::from([
            (Conn::BToA, connect(a, "a.example", Some(b)).await),
            (Conn::CToA, connect(a, "a.example", Some(c)).await),
            (Conn::AToB, connect(b, "b.example", Some(a)).await),
            (Conn::CToB, connect(b, "b.example", Some(c)).await),
            (Conn::AnonymousToA, connect(a, "a.example", None).await),
            (Conn::BToAlias, connect(a, ALIAS, Some(b)).await),
        ]);
        Federation {
            nodes: [a, b, c],
            conns,
            tally: Mutex::new(Tally::default()),
        }
    }

    fn digests(&self) -> Vec<Vec<Vec<u8>>> {
        self.nodes.iter().map(|node| state_digest(node)).collect()
    }

    /// Sends one case, checks the answer, that no provider's replicated state moved and that
    /// every provider is still ready.
    async fn check(&self, case: &PeerCase) {
        self.tally
            .lock()
            .expect("not poisoned")
            .count(&endpoint_label(&case.path));
        let before = self.digests();
        let (status, headers, body) = self.conns[&case.conn]
            .request(
                case.method.clone(),
                &case.path,
                case.headers.clone(),
                Bytes::from(case.body.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", case.name));
        check_answer(&case.name, &case.expect, status, &headers, &body);
        assert!(
            self.digests() == before,
            "{}: a refused request changed replicated state",
            case.name
        );
        for node in self.nodes {
            let url = format!("http://{}/readyz", node.node().admin_addr());
            assert_eq!(
                http_get_status(&url).await,
                Some(200),
                "{} stopped serving after {}",
                node.config.domain,
                case.name
            );
        }
    }

    async fn check_all(&self, cases: &[PeerCase]) {
        for case in cases {
            self.check(case).await;
        }
    }

    async fn close(self) {
        for conn in self.conns.values() {
            conn.close().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies.

fn encode(value: &impl Encode) -> Vec<u8> {
    value.to_bytes().expect("a test body encodes")
}

fn uri(text: &str) -> IdentifierUri {
    IdentifierUri::new(text.as_bytes())
}

fn user(domain: &str, name: &str) -> UserId {
    UserId::parse(&format!("mimi://{domain}/u/{name}")).expect("a user URI")
}

fn limits() -> Limits {
    Limits {
        max_body_len: MAX_BODY,
    }
}

fn basic(identity: &str) -> Mls<Credential> {
    Mls::from_value(BasicCredential::new(identity.as_bytes().to_vec()).into())
        .expect("a basic credential encodes")
}

/// A hub decodes an update and converts it to the domain's bundle; both are 400s.
fn decode_update(body: &[u8], limits: &Limits) -> Result<(), WireError> {
    let request = UpdateRequest::from_bytes(body, limits)?;
    mimid_actors::command::HandshakeBundle::try_from(request).map(drop)
}

fn decode_notify(body: &[u8], limits: &Limits) -> Result<(), WireError> {
    decode_fanout_batch(body, limits).map(drop)
}

fn submit_body(message: &[u8], sending: &str) -> Vec<u8> {
    encode(&SubmitMessageRequest {
        protocol: Protocol::Mls10,
        app_message: MlsMessage::from_bytes(message).expect("an MLSMessage"),
        sending_uri: uri(sending),
    })
}

fn consent_body(
    operation: ConsentOp,
    requester: &[u8],
    target: &[u8],
    room: Option<&[u8]>,
) -> Vec<u8> {
    encode(&ConsentEntry {
        operation,
        scope: ConsentScope {
            requester_uri: IdentifierUri::new(requester),
            target_uri: IdentifierUri::new(target),
            room_id: room.map(IdentifierUri::new),
        },
        consent_extensions: no_extensions().expect("empty dictionary"),
    })
}

fn query_body(elements: Vec<QueryElement>, requester: Option<&[u8]>) -> Vec<u8> {
    let mut extensions = AppDataDictionary::new();
    if let Some(requester) = requester {
        extensions.insert(REQUESTER_COMPONENT_ID, requester.to_vec());
    }
    encode(&IdentifierRequest {
        query_elements: elements,
        id_request_extensions: Mls::from_value(extensions).expect("encodes"),
    })
}

fn nick(value: &str) -> QueryElement {
    QueryElement {
        field: SearchField::Nick,
        search_value: value.to_owned(),
    }
}

/// The 400 a URI field of `kind` holding `bytes` gets (`WireError::Uri`).
fn uri_refusal(kind: UriKind, field: &str, bytes: &[u8]) -> Expect {
    let error = parse_uri(kind, bytes).expect_err("a hostile URI");
    refused(
        StatusCode::BAD_REQUEST,
        &[&format!("bad_uri: {field}: {error}")],
    )
}

/// What a room path parameter holding `raw` (sent percent-encoded, decoded once by the
/// server-to-server API) gets: 400 when it is not UTF-8 or not a room; `None` when it names a
/// room in a short form of MIMI.md §3.2 or is empty (no parameter: routing, below).
fn room_param_refusal(raw: &[u8]) -> Option<Expect> {
    if raw.is_empty() {
        return None;
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Some(refused(
            StatusCode::BAD_REQUEST,
            &["path parameter is not UTF-8 after percent-decoding"],
        ));
    };
    let reason = parse_room_param(text).err()?;
    Some(refused(StatusCode::BAD_REQUEST, &[&reason]))
}

/// The `FanoutMessage` batch that carries `item` of the hub's log (MIMI.md §5.4), without its
/// Frank.
fn fanout_of(item: &LogItem) -> Vec<u8> {
    let body = match &item.body {
        ItemBody::Application { message } => FanoutBody::Application {
            message: MlsMessage::from_bytes(message).expect("an MLSMessage"),
            frank: None,
        },
        ItemBody::Commit { message } => FanoutBody::Commit {
            commit: MlsMessage::from_bytes(message).expect("an MLSMessage"),
            external_proposals: Vec::new(),
        },
        ItemBody::Welcome {
            welcome,
            ratchet_tree,
            ..
        } => FanoutBody::Welcome {
            welcome: MlsMessage::from_bytes(welcome).expect("an MLSMessage"),
            ratchet_tree_option: RatchetTreeOption::Full(
                Mls::from_bytes(ratchet_tree).expect("a tree"),
            ),
        },
        ItemBody::Proposals { .. } => panic!("no proposals in these rooms"),
    };
    encode_fanout_batch(&[FanoutMessage {
        timestamp: item.ts_ms,
        body,
    }])
    .expect("encodes")
}

fn hub_seqs(value: &[u8]) -> HeaderMap {
    let mut headers = from_header("mimi@a.example");
    headers.insert(
        HUB_SEQS_HEADER,
        HeaderValue::from_bytes(value).expect("a header value"),
    );
    headers
}

/// The items of `room` in the hub's log.
fn log_items(hub: &TestNode, room: &RoomId) -> Vec<LogItem> {
    let shard = hub.node().hub().shards().for_room(room).read();
    shard.room(room).expect("hosted").items_after(0).to_vec()
}

fn room_epoch(hub: &TestNode, room: &RoomId) -> u64 {
    let shard = hub.node().hub().shards().for_room(room).read();
    shard.room(room).expect("hosted").epoch()
}

/// Waits for `client`'s next event of the kind `is` accepts (skipping others) and returns it.
async fn next_event_where(client: &mut MimiClient, is: fn(&Event) -> bool) -> Event {
    loop {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| panic!("{} waited for an event", client.id()));
        if is(&event) {
            return event;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus.

/// Every server-to-server endpoint (MIMI.md §3.1, §5, §7, §13), received from peer providers
/// over HTTP/3 with mutual TLS: the transport's refusals on every endpoint (no client
/// certificate, a certificate that does not name the `From` domain — b authenticated, claiming
/// to be c or the hub itself —, malformed `From`, a misdirected request, wrong methods, missing
/// and undecodable parameters, bodies over the limit or lying about their length); the codec's
/// refusals generated from every endpoint's valid body; hostile URIs in every URI field and
/// path parameter; and what each endpoint decides: stale, future and replayed commits, a
/// provider speaking for another provider's users or for a room it has no participant in,
/// reused KeyPackages, forged signatures and Franks, notifies from a provider that is not the
/// room's hub or with bad `mimi-hub-seqs`, consent about unknown users (201, nothing recorded,
/// MIMI.md §13), and a blocked user and a blocked provider on every endpoint. After every case
/// the three providers' replicated state is unchanged and all three are ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_refuse_hostile_input_and_change_nothing_protocol06_5() {
    let Three {
        a,
        b,
        c,
        club,
        mut alice,
        mut bob,
        mut cathy,
    } = three_providers_in_a_room_with(3, quiet, &[ALIAS]).await;
    // The setup: a second room without c's users, a user of a with one KeyPackage, a new device
    // of bob (for groupInfo), a franked message bob received (for reports), a stale commit of
    // bob and messages of several epochs and rooms.
    let side = RoomId::parse("mimi://a.example/r/side").expect("a room");
    alice.create_room(&side).await.expect("side room");
    let added = alice
        .add_users(&side, &[user("b.example", "bob")])
        .await
        .expect("bob added to the side room");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    next_event_where(&mut bob, |e| matches!(e, Event::Joined { .. })).await;
    // A room whose log holds proposals: cathy leaves it by SelfRemove and a participant-list
    // update (MIMI.md §6.5), pending until the next commit.
    let lobby = RoomId::parse("mimi://a.example/r/lobby").expect("a room");
    alice.create_room(&lobby).await.expect("lobby");
    let added = alice
        .add_users(&lobby, &[user("c.example", "cathy")])
        .await
        .expect("cathy added to the lobby");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    next_event_where(&mut cathy, |e| matches!(e, Event::Joined { .. })).await;
    let left = cathy.leave(&lobby).await.expect("cathy proposes to leave");
    assert!(matches!(left, UpdateResult::Accepted { .. }), "{left:?}");
    let lobby_proposals = log_items(&a, &lobby)
        .into_iter()
        .find_map(|item| match item.body {
            ItemBody::Proposals { messages } => Some(messages),
            _ => None,
        })
        .expect("cathy's proposals in the lobby's log");
    assert_eq!(lobby_proposals.len(), 2);
    let dave = a.client("dave", "phone", 1).await;
    let carol = a.client("carol", "phone", 1).await;
    let bob_tablet = bob
        .link(ClientId::parse("mimi://b.example/d/bob/tablet").expect("a client"))
        .await
        .expect("bob links a tablet");
    let sent = alice
        .send_text(&club, "report me")
        .await
        .expect("submit works");
    assert!(matches!(sent, SubmitResult::Accepted { .. }), "{sent:?}");
    let kept = match next_event_where(&mut bob, |e| matches!(e, Event::Message { .. })).await {
        Event::Message {
            frank: FrankCheck::Verified(kept),
            ..
        } => *kept,
        other => panic!("bob expected a verified Frank, got {other:?}"),
    };
    next_event_where(&mut cathy, |e| matches!(e, Event::Message { .. })).await;
    let bob_stale = bob.prepare_self_update(&club).expect("bob builds a commit");
    let bob_old_message = bob.prepare_text(&club, "old").expect("bob encrypts");
    let alice_old_commit = log_items(&a, &club)
        .into_iter()
        .filter_map(|item| match item.body {
            ItemBody::Commit { message } => Some(message),
            _ => None,
        })
        .next_back()
        .expect("the club's add commit");
    alice
        .self_update(&club)
        .await
        .expect("alice moves the epoch");
    next_event_where(&mut bob, |e| matches!(e, Event::Committed { .. })).await;
    next_event_where(&mut cathy, |e| matches!(e, Event::Committed { .. })).await;
    let epoch = room_epoch(&a, &club);
    let bob_commit = bob.prepare_self_update(&club).expect("bob builds a commit");
    let alice_commit = alice
        .prepare_self_update(&club)
        .expect("alice builds a commit");
    let cathy_commit = cathy
        .prepare_self_update(&club)
        .expect("cathy builds a commit");
    let bob_message = bob.prepare_text(&club, "hi").expect("bob encrypts");
    let bob_side_message = bob.prepare_text(&side, "side").expect("bob encrypts");
    let cathy_message = cathy.prepare_text(&club, "hi").expect("cathy encrypts");
    // alice's commit of the epoch before, in a bundle (the GroupInfo does not matter: the hub
    // decides on the epoch and the sender first).
    let alice_old_bundle = {
        let request = UpdateRequest::from_bytes(&bob_stale, &limits()).expect("an UpdateRequest");
        let HandshakeBundle::Commit {
            welcome,
            group_info_option,
            ratchet_tree_option,
            ..
        } = request.bundle
        else {
            panic!("a commit bundle")
        };
        encode(&UpdateRequest {
            bundle: HandshakeBundle::Commit {
                commit: MlsMessage::from_bytes(&alice_old_commit).expect("an MLSMessage"),
                welcome,
                group_info_option,
                ratchet_tree_option,
            },
        })
    };
    for room in [&club, &side, &lobby] {
        wait_fanout_recorded(&a, room).await;
    }
    let federation = Federation::new(&a, &b, &c).await;
    let club_uri = club.as_str();
    let alice_uri = "mimi://a.example/u/alice";
    let bob_uri = "mimi://b.example/u/bob";
    let cathy_uri = "mimi://c.example/u/cathy";
    let dave_uri = "mimi://a.example/u/dave";

    // The valid request of every endpoint: what the generated cases damage, and what the
    // transport matrix sends.
    let valid_key_material = encode(
        &bob.key_material_request(&user("a.example", "dave"), &club)
            .expect("signed"),
    );
    let valid_group_info = encode(&bob_tablet.group_info_request(&[9; 32]).expect("signed"));
    let report = bob
        .abuse_report(&user("a.example", "alice"), 0, "insults", &[&kept])
        .expect("report built");
    let valid_report = encode(&report);
    let valid_query = query_body(vec![nick("alice")], Some(bob_uri.as_bytes()));
    let valid_request_consent = consent_body(
        ConsentOp::Request,
        bob_uri.as_bytes(),
        alice_uri.as_bytes(),
        Some(club_uri.as_bytes()),
    );
    let valid_update_consent = consent_body(
        ConsentOp::Revoke,
        alice_uri.as_bytes(),
        bob_uri.as_bytes(),
        Some(club_uri.as_bytes()),
    );
    let report_me = log_items(&a, &club)
        .into_iter()
        .find(|item| matches!(item.body, ItemBody::Application { .. }))
        .expect("alice's message in the log");
    let valid_notify = fanout_of(&report_me);
    let report_me_seq = report_me.seq.to_string();
    let valid_submit = submit_body(&bob_message, bob_uri);
    struct Endpoint {
        endpoint: S2sEndpoint,
        conn: Conn,
        param: String,
        body: Vec<u8>,
        headers: HeaderMap,
        prefixes: usize,
        decode: Decoder,
        cut: &'static [&'static str],
        trailing: &'static [&'static str],
    }
    let endpoint =
        |endpoint, conn: Conn, param: &str, body: &[u8], prefixes, decode: Decoder| Endpoint {
            endpoint,
            conn,
            param: param.to_owned(),
            body: body.to_vec(),
            headers: conn.from().map(from_header).unwrap_or_default(),
            prefixes,
            decode,
            cut: CUT,
            trailing: TRAILING,
        };
    let endpoints = vec![
        endpoint(
            S2sEndpoint::Update,
            Conn::BToA,
            club_uri,
            &bob_commit,
            0,
            decode_update,
        ),
        endpoint(
            S2sEndpoint::SubmitMessage,
            Conn::BToA,
            club_uri,
            &valid_submit,
            1,
            decode_as::<SubmitMessageRequest>,
        ),
        endpoint(
            S2sEndpoint::KeyMaterial,
            Conn::BToA,
            dave_uri,
            &valid_key_material,
            6,
            decode_as::<KeyMaterialRequest>,
        ),
        endpoint(
            S2sEndpoint::GroupInfo,
            Conn::BToA,
            club_uri,
            &valid_group_info,
            4,
            decode_as::<GroupInfoRequest>,
        ),
        endpoint(
            S2sEndpoint::RequestConsent,
            Conn::BToA,
            alice_uri,
            &valid_request_consent,
            3,
            decode_as::<ConsentEntry>,
        ),
        endpoint(
            S2sEndpoint::UpdateConsent,
            Conn::BToA,
            "a.example",
            &valid_update_consent,
            3,
            decode_as::<ConsentEntry>,
        ),
        endpoint(
            S2sEndpoint::IdentifierQuery,
            Conn::BToA,
            "a.example",
            &valid_query,
            2,
            decode_as::<IdentifierRequest>,
        ),
        endpoint(
            S2sEndpoint::ReportAbuse,
            Conn::BToA,
            club_uri,
            &valid_report,
            6,
            decode_as::<AbuseReport>,
        ),
        Endpoint {
            headers: hub_seqs(report_me_seq.as_bytes()),
            cut: &[
                "truncated",
                "length_beyond_input",
                "bad_mls_structure",
                "invalid_value",
            ],
            trailing: &["truncated", "bad_mls_structure"],
            ..endpoint(
                S2sEndpoint::Notify,
                Conn::AToB,
                club_uri,
                &valid_notify,
                0,
                decode_notify,
            )
        },
    ];

    // --- transport: every endpoint (MIMI.md §3.1; federation/api.rs order of checks) ----------
    let mut cases = Vec::new();
    for endpoint in S2sEndpoint::ALL {
        let param = match endpoint.param_name() {
            "roomId" => club_uri.to_owned(),
            "targetUser" => alice_uri.to_owned(),
            "requesterUser" => alice_uri.to_owned(),
            "downloadUrl" => "https://assets.a.example/x".to_owned(),
            _ => "a.example".to_owned(),
        };
        let body = endpoints
            .iter()
            .find(|e| e.endpoint == endpoint)
            .map(|e| e.body.clone())
            .unwrap_or_default();
        let name = endpoint.name();
        let case = |what: &str, conn: Conn, expect: Expect| {
            PeerCase::new(
                format!("{name}: {what}"),
                conn,
                endpoint,
                &param,
                body.clone(),
                expect,
            )
        };
        let from_b = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::FROM,
                HeaderValue::from_bytes(value).expect("a header value"),
            );
            headers
        };
        let mut two_from = from_header("mimi@b.example");
        two_from.append(
            http::header::FROM,
            HeaderValue::from_static("mimi@c.example"),
        );
        cases.extend([
            case(
                "no client certificate",
                Conn::AnonymousToA,
                refused(StatusCode::UNAUTHORIZED, &["client certificate required"]),
            ),
            case(
                "b's certificate claiming to be c",
                Conn::BToA,
                refused(
                    StatusCode::FORBIDDEN,
                    &["certificate does not authenticate From domain c.example"],
                ),
            )
            .with_headers(from_header("mimi@c.example")),
            case(
                "b's certificate claiming to be the hub itself",
                Conn::BToA,
                refused(
                    StatusCode::FORBIDDEN,
                    &["certificate does not authenticate From domain a.example"],
                ),
            )
            .with_headers(from_header("mimi@a.example")),
            case(
                "c's certificate claiming to be b",
                Conn::CToA,
                refused(
                    StatusCode::FORBIDDEN,
                    &["certificate does not authenticate From domain b.example"],
                ),
            )
            .with_headers(from_header("mimi@b.example")),
            case(
                "no From",
                Conn::BToA,
                refused(StatusCode::BAD_REQUEST, &["missing From header"]),
            )
            .with_headers(HeaderMap::new()),
            case(
                "two From headers",
                Conn::BToA,
                refused(StatusCode::BAD_REQUEST, &["more than one From header"]),
            )
            .with_headers(two_from),
            case(
                "From with another local part",
                Conn::BToA,
                refused(StatusCode::BAD_REQUEST, &["must have the local part mimi"]),
            )
            .with_headers(from_header("bob@b.example")),
            case(
                "From without a local part",
                Conn::BToA,
                refused(
                    StatusCode::BAD_REQUEST,
                    &["is not an addr-spec mimi@<domain>"],
                ),
            )
            .with_headers(from_header("b.example")),
            case(
                "From with an empty label",
                Conn::BToA,
                refused(StatusCode::BAD_REQUEST, &["is not a valid DNS name"]),
            )
            .with_headers(from_header("mimi@b..example")),
            case(
                "From with an IP address",
                Conn::BToA,
                refused(StatusCode::BAD_REQUEST, &["is an IP address"]),
            )
            .with_headers(from_header("mimi@127.0.0.1")),
            case(
                "From that is not visible ASCII",
                Conn::BToA,
                refused(
                    StatusCode::BAD_REQUEST,
                    &["From header is not visible ASCII"],
                ),
            )
            .with_headers(from_b(b"mimi@b.\xe9xample")),
            case(
                "addressed to another name of the hub's certificate",
                Conn::BToAlias,
                refused(
                    StatusCode::MISDIRECTED_REQUEST,
                    &["request is addressed to alias.a.example; this provider is a.example"],
                ),
            ),
        ]);
        let wrong = if endpoint.method() == Method::GET {
            [Method::POST, Method::PUT]
        } else {
            [Method::GET, Method::PUT]
        };
        for method in wrong {
            cases.push(PeerCase::raw(
                format!("{name}: {method}"),
                Conn::BToA,
                method.clone(),
                &s2s_path(endpoint, &param),
                Vec::new(),
                refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &[&format!("{name} takes {}", endpoint.method())],
                ),
            ));
        }
        let missing = format!(
            "{name} takes a path parameter: /v1/{name}/{{{}}}",
            endpoint.param_name()
        );
        for path in [format!("/v1/{name}"), format!("/v1/{name}/")] {
            cases.push(PeerCase::raw(
                format!("{name}: no path parameter ({path})"),
                Conn::BToA,
                endpoint.method(),
                &path,
                body.clone(),
                refused(StatusCode::NOT_FOUND, &[&missing]),
            ));
        }
        for encoded in ["%FF", "%C3%28", "mimi%3A%2F%2Fa.example%2Fr%2F%E0%80%80"] {
            cases.push(PeerCase::raw(
                format!("{name}: path parameter {encoded} not UTF-8"),
                Conn::BToA,
                endpoint.method(),
                &format!("/v1/{name}/{encoded}"),
                body.clone(),
                refused(
                    StatusCode::BAD_REQUEST,
                    &["path parameter is not UTF-8 after percent-decoding"],
                ),
            ));
        }
        let too_large = refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &[&format!(
                "request body exceeds the limit of {MAX_BODY} bytes"
            )],
        );
        for size in [MAX_BODY + 1, 4 * MAX_BODY] {
            cases.push(case(
                &format!("a body of {size} bytes"),
                Conn::BToA,
                too_large.clone(),
            ));
            cases.last_mut().expect("a case").body = vec![0; size];
        }
        let mut declared_over = from_header("mimi@b.example");
        declared_over.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(MAX_BODY + 1),
        );
        cases.push(
            case(
                "content-length over the limit",
                Conn::BToA,
                too_large.clone(),
            )
            .with_headers(declared_over),
        );
        let mut lying = from_header("mimi@b.example");
        lying.insert(http::header::CONTENT_LENGTH, HeaderValue::from(1));
        cases.push(
            case(
                "content-length 1 for a longer body",
                Conn::BToA,
                refused(
                    StatusCode::BAD_REQUEST,
                    &["request body length does not match content-length"],
                ),
            )
            .with_headers(lying),
        );
        cases.last_mut().expect("a case").body = vec![0; 8];
    }
    for path in [
        "/v1/noSuchEndpoint/x",
        "/v1/KeyMaterial/x",
        "/v1/submit/x",
        "/v1//x",
        "/v1/",
        "/v1/proxydownload/x",
    ] {
        cases.push(PeerCase::raw(
            format!("unknown endpoint {path}"),
            Conn::BToA,
            Method::POST,
            path,
            Vec::new(),
            refused(StatusCode::NOT_FOUND, &["no such endpoint"]),
        ));
    }
    cases.push(PeerCase::new(
        "proxyDownload: not implemented",
        Conn::BToA,
        S2sEndpoint::ProxyDownload,
        "https://assets.a.example/x",
        Vec::new(),
        refused(
            StatusCode::NOT_IMPLEMENTED,
            &["proxyDownload is not implemented by this provider yet"],
        ),
    ));
    federation.check_all(&cases).await;

    // --- the codec: every endpoint's valid body, damaged ----------------------------------------
    let mut cases = Vec::new();
    for e in &endpoints {
        for (name, body, expect) in wire_mutations(&WireBase {
            op: e.endpoint.name().to_owned(),
            body: e.body.clone(),
            decode: e.decode,
            limits: limits(),
            prefixes: e.prefixes,
            cuts: 40,
            cut: e.cut,
            trailing: e.trailing,
        }) {
            cases.push(
                PeerCase::new(name, e.conn, e.endpoint, &e.param, body, expect)
                    .with_headers(e.headers.clone()),
            );
        }
    }
    federation.check_all(&cases).await;
    // --- hostile URIs in every path parameter ------------------------------------------------
    let mut cases = Vec::new();
    for e in endpoints
        .iter()
        .filter(|e| e.endpoint.param_name() == "roomId")
    {
        for hostile in hostile_uris("a.example", UriKind::Room) {
            let Some(expect) = room_param_refusal(&hostile.bytes) else {
                continue;
            };
            cases.push(
                PeerCase::raw(
                    format!("{}: path parameter {}", e.endpoint, hostile.name),
                    e.conn,
                    Method::POST,
                    &format!("/v1/{}/{}", e.endpoint, percent_encode(&hostile.bytes)),
                    e.body.clone(),
                    expect,
                )
                .with_headers(e.headers.clone()),
            );
        }
    }
    for hostile in hostile_uris("a.example", UriKind::User) {
        if hostile.bytes.is_empty() {
            continue;
        }
        let path =
            |endpoint: S2sEndpoint| format!("/v1/{endpoint}/{}", percent_encode(&hostile.bytes));
        let (key_material, request_consent, update_consent) =
            match std::str::from_utf8(&hostile.bytes) {
                Err(_) => {
                    let not_utf8 = refused(
                        StatusCode::BAD_REQUEST,
                        &["path parameter is not UTF-8 after percent-decoding"],
                    );
                    (not_utf8.clone(), not_utf8.clone(), not_utf8)
                }
                Ok(text) => {
                    let error = UserId::parse(text).expect_err("a hostile user URI");
                    (
                        refused(
                            StatusCode::BAD_REQUEST,
                            &[&format!("targetUser path parameter: {error}")],
                        ),
                        refused(
                            StatusCode::BAD_REQUEST,
                            &[&format!(
                                "targetUser path parameter is neither a.example nor a user URI: \
                                 {error}"
                            )],
                        ),
                        refused(
                            StatusCode::BAD_REQUEST,
                            &[&format!(
                                "requesterUser path parameter is neither a.example nor a user \
                                 URI: {error}"
                            )],
                        ),
                    )
                }
            };
        cases.extend([
            PeerCase::raw(
                format!("keyMaterial: path parameter {}", hostile.name),
                Conn::BToA,
                Method::POST,
                &path(S2sEndpoint::KeyMaterial),
                valid_key_material.clone(),
                key_material,
            ),
            PeerCase::raw(
                format!("requestConsent: path parameter {}", hostile.name),
                Conn::BToA,
                Method::POST,
                &path(S2sEndpoint::RequestConsent),
                valid_request_consent.clone(),
                request_consent,
            ),
            PeerCase::raw(
                format!("updateConsent: path parameter {}", hostile.name),
                Conn::BToA,
                Method::POST,
                &path(S2sEndpoint::UpdateConsent),
                valid_update_consent.clone(),
                update_consent,
            ),
        ]);
    }
    for domain in [
        "c.example",
        "b.example",
        "A.EXAMPLE.",
        "a.example:443",
        "mimi://a.example",
        "a..example",
        "a.example/u/alice",
        "localhost",
    ] {
        cases.push(PeerCase::new(
            format!("identifierQuery: for {domain:?}"),
            Conn::BToA,
            S2sEndpoint::IdentifierQuery,
            domain,
            valid_query.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &[&format!(
                    "identifierQuery for {domain} is not served by a.example"
                )],
            ),
        ));
    }
    federation.check_all(&cases).await;

    // --- hostile URIs in every URI field ----------------------------------------------------
    let forger = SignatureKeyPair::new(SignatureScheme::ED25519).expect("Ed25519 key pair");
    let bob_request = KeyMaterialRequest::from_bytes(&valid_key_material, &limits())
        .expect("a KeyMaterialRequest");
    let resigned = |edit: &dyn Fn(&mut KeyMaterialRequestTbs)| {
        let mut tbs = bob_request.tbs.clone();
        tbs.requester_signature_key = SignaturePublicKey(forger.public().to_vec());
        edit(&mut tbs);
        encode(&KeyMaterialRequest::sign(tbs, &forger).expect("the test signs"))
    };
    let key_material_case = |name: &str, conn: Conn, param: &str, body: Vec<u8>, expect| {
        PeerCase::new(
            format!("keyMaterial: {name}"),
            conn,
            S2sEndpoint::KeyMaterial,
            param,
            body,
            expect,
        )
    };
    let s2s_verify_refusal = |body: &[u8]| {
        let error = KeyMaterialRequest::from_bytes(body, &limits())
            .expect("decodes")
            .verify()
            .expect_err("a refused request");
        refused(
            StatusCode::BAD_REQUEST,
            &[&format!("KeyMaterialRequest: {error}")],
        )
    };
    let mut cases = Vec::new();
    for hostile in hostile_uris("a.example", UriKind::User) {
        let bad = IdentifierUri::new(hostile.bytes.clone());
        cases.push(PeerCase::new(
            format!("submitMessage: sendingUri {}", hostile.name),
            Conn::BToA,
            S2sEndpoint::SubmitMessage,
            club_uri,
            encode(&SubmitMessageRequest {
                protocol: Protocol::Mls10,
                app_message: MlsMessage::from_bytes(&bob_message).expect("an MLSMessage"),
                sending_uri: bad.clone(),
            }),
            uri_refusal(
                UriKind::User,
                "SubmitMessageRequest.sendingUri",
                &hostile.bytes,
            ),
        ));
        cases.push(key_material_case(
            &format!("targetUser {}", hostile.name),
            Conn::BToA,
            dave_uri,
            resigned(&|tbs| tbs.target_user = bad.clone()),
            uri_refusal(
                UriKind::User,
                "KeyMaterialRequest.targetUser",
                &hostile.bytes,
            ),
        ));
        let body = resigned(&|tbs| tbs.requesting_user = bad.clone());
        cases.push(key_material_case(
            &format!("requestingUser {}", hostile.name),
            Conn::BToA,
            dave_uri,
            body.clone(),
            s2s_verify_refusal(&body),
        ));
        let scope_refusal = |body: &[u8]| {
            let entry = ConsentEntry::from_bytes(body, &limits()).expect("decodes");
            let error = scope_ids(&entry.scope).expect_err("a hostile scope");
            refused(
                StatusCode::BAD_REQUEST,
                &[&format!("{}: {error}", error.code())],
            )
        };
        for (field, body) in [
            (
                "requesterUri",
                consent_body(
                    ConsentOp::Request,
                    &hostile.bytes,
                    alice_uri.as_bytes(),
                    None,
                ),
            ),
            (
                "targetUri",
                consent_body(ConsentOp::Request, bob_uri.as_bytes(), &hostile.bytes, None),
            ),
        ] {
            cases.push(PeerCase::new(
                format!("requestConsent: {field} {}", hostile.name),
                Conn::BToA,
                S2sEndpoint::RequestConsent,
                "a.example",
                body.clone(),
                scope_refusal(&body),
            ));
        }
        for (field, body) in [
            (
                "requesterUri",
                consent_body(ConsentOp::Revoke, &hostile.bytes, bob_uri.as_bytes(), None),
            ),
            (
                "targetUri",
                consent_body(
                    ConsentOp::Revoke,
                    alice_uri.as_bytes(),
                    &hostile.bytes,
                    None,
                ),
            ),
        ] {
            cases.push(PeerCase::new(
                format!("updateConsent: {field} {}", hostile.name),
                Conn::BToA,
                S2sEndpoint::UpdateConsent,
                "a.example",
                body.clone(),
                scope_refusal(&body),
            ));
        }
        cases.push(PeerCase::new(
            format!("identifierQuery: requester {}", hostile.name),
            Conn::BToA,
            S2sEndpoint::IdentifierQuery,
            "a.example",
            query_body(vec![nick("alice")], Some(&hostile.bytes)),
            uri_refusal(
                UriKind::User,
                "IdentifierRequest.id_request_extensions[requester]",
                &hostile.bytes,
            ),
        ));
        // An empty reportingUser is an anonymous report (protocol-06 §5.9), not a bad URI.
        if !hostile.bytes.is_empty() {
            let mut bad_reporter = report.clone();
            bad_reporter.reporting_user = bad.clone();
            cases.push(PeerCase::new(
                format!("reportAbuse: reportingUser {}", hostile.name),
                Conn::BToA,
                S2sEndpoint::ReportAbuse,
                club_uri,
                encode(&bad_reporter),
                uri_refusal(UriKind::User, "AbuseReport.reportingUser", &hostile.bytes),
            ));
        }
        let mut bad_alleged = report.clone();
        bad_alleged.alleged_abuser_uri = bad.clone();
        cases.push(PeerCase::new(
            format!("reportAbuse: allegedAbuserUri {}", hostile.name),
            Conn::BToA,
            S2sEndpoint::ReportAbuse,
            club_uri,
            encode(&bad_alleged),
            uri_refusal(
                UriKind::User,
                "AbuseReport.allegedAbuserUri",
                &hostile.bytes,
            ),
        ));
    }
    for hostile in hostile_uris("a.example", UriKind::Room) {
        let bad = IdentifierUri::new(hostile.bytes.clone());
        cases.push(key_material_case(
            &format!("roomId {}", hostile.name),
            Conn::BToA,
            dave_uri,
            resigned(&|tbs| tbs.room_id = bad.clone()),
            uri_refusal(UriKind::Room, "KeyMaterialRequest.roomId", &hostile.bytes),
        ));
        for (endpoint, operation, requester, target) in [
            (
                S2sEndpoint::RequestConsent,
                ConsentOp::Request,
                bob_uri,
                alice_uri,
            ),
            (
                S2sEndpoint::UpdateConsent,
                ConsentOp::Revoke,
                alice_uri,
                bob_uri,
            ),
        ] {
            let body = consent_body(
                operation,
                requester.as_bytes(),
                target.as_bytes(),
                Some(&hostile.bytes),
            );
            let entry = ConsentEntry::from_bytes(&body, &limits()).expect("decodes");
            let error = scope_ids(&entry.scope).expect_err("a hostile room");
            cases.push(PeerCase::new(
                format!("{endpoint}: roomId {}", hostile.name),
                Conn::BToA,
                endpoint,
                "a.example",
                body,
                refused(
                    StatusCode::BAD_REQUEST,
                    &[&format!("{}: {error}", error.code())],
                ),
            ));
        }
    }
    federation.check_all(&cases).await;

    // --- what each endpoint decides ----------------------------------------------------------
    let room_is_at = format!("the room is at epoch {epoch}");
    let update_case = |name: &str, conn: Conn, param: &str, body: Vec<u8>, expect| {
        PeerCase::new(
            format!("update: {name}"),
            conn,
            S2sEndpoint::Update,
            param,
            body,
            expect,
        )
    };
    let mut cases = vec![
        update_case(
            "a stale commit (protocol-06 §5.2 wrongEpoch)",
            Conn::BToA,
            club_uri,
            bob_stale.clone(),
            Expect::PeerUpdate(UpdateResponseCode::WrongEpoch, room_is_at.clone()),
        ),
        update_case(
            "a commit for a future epoch",
            Conn::BToA,
            club_uri,
            with_epoch(&bob_commit, epoch + 5),
            Expect::PeerUpdate(UpdateResponseCode::WrongEpoch, room_is_at.clone()),
        ),
        update_case(
            "a commit for the last epoch there is",
            Conn::BToA,
            club_uri,
            with_epoch(&bob_commit, u64::MAX),
            Expect::PeerUpdate(UpdateResponseCode::WrongEpoch, room_is_at.clone()),
        ),
        update_case(
            "a stale commit in the short room form",
            Conn::BToA,
            "a.example/r/club",
            bob_stale.clone(),
            Expect::PeerUpdate(UpdateResponseCode::WrongEpoch, room_is_at.clone()),
        ),
        update_case(
            "a commit whose signed content was altered",
            Conn::BToA,
            club_uri,
            with_epoch(&bob_stale, epoch),
            Expect::PeerUpdate(
                UpdateResponseCode::NotAllowed,
                "the message signature does not verify".into(),
            ),
        ),
        update_case(
            "the hub's own user's commit, relayed by b",
            Conn::BToA,
            club_uri,
            alice_commit.clone(),
            Expect::PeerUpdate(
                UpdateResponseCode::NotAllowed,
                "not by a client of provider b.example".into(),
            ),
        ),
        update_case(
            "the hub's own user's accepted commit, replayed by b",
            Conn::BToA,
            club_uri,
            alice_old_bundle.clone(),
            Expect::PeerUpdate(UpdateResponseCode::WrongEpoch, room_is_at.clone()),
        ),
        update_case(
            "c's user's commit, relayed by b",
            Conn::BToA,
            club_uri,
            cathy_commit.clone(),
            Expect::PeerUpdate(
                UpdateResponseCode::NotAllowed,
                "not by a client of provider b.example".into(),
            ),
        ),
        update_case(
            "b's user's commit, relayed by c",
            Conn::CToA,
            club_uri,
            bob_commit.clone(),
            Expect::PeerUpdate(
                UpdateResponseCode::NotAllowed,
                "not by a client of provider c.example".into(),
            ),
        ),
        update_case(
            "a provider with no participant in the room",
            Conn::CToA,
            side.as_str(),
            cathy_commit.clone(),
            Expect::PeerUpdate(
                UpdateResponseCode::NotAllowed,
                "provider c.example has no participant in this room".into(),
            ),
        ),
        update_case(
            "an unknown room of the hub",
            Conn::BToA,
            "mimi://a.example/r/nowhere",
            bob_commit.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://a.example/r/nowhere is not hosted by a.example"],
            ),
        ),
        update_case(
            "a room of another provider",
            Conn::BToA,
            "mimi://c.example/r/elsewhere",
            bob_commit.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://c.example/r/elsewhere is not hosted by a.example"],
            ),
        ),
        update_case(
            "an application message",
            Conn::BToA,
            club_uri,
            bob_message.clone(),
            hostile::codec_refusal(
                "update: an application message",
                decode_update,
                &limits(),
                &bob_message,
                &["unexpected_mls_message"],
            ),
        ),
    ];
    // Proposals (protocol-06 §5.2 HandshakeBundle.proposals).
    let proposals = |first: &[u8], more: &[&[u8]]| {
        encode(&UpdateRequest {
            bundle: HandshakeBundle::Proposals {
                proposal: MlsMessage::from_bytes(first).expect("an MLSMessage"),
                more_proposals: more
                    .iter()
                    .map(|m| MlsMessage::from_bytes(m).expect("an MLSMessage"))
                    .collect(),
            },
        })
    };
    let (self_remove, list_update) = (&lobby_proposals[0], &lobby_proposals[1]);
    let lobby_epoch = room_epoch(&a, &lobby);
    cases.extend([
        update_case(
            "accepted proposals resent as they are (their original verdict)",
            Conn::CToA,
            lobby.as_str(),
            proposals(self_remove, &[list_update]),
            Expect::PeerUpdate(UpdateResponseCode::Success, String::new()),
        ),
        update_case(
            "c's user's proposals, relayed by b, which has no participant there",
            Conn::BToA,
            lobby.as_str(),
            proposals(self_remove, &[list_update]),
            Expect::PeerUpdate(
                UpdateResponseCode::NotAllowed,
                "provider b.example has no participant in this room".into(),
            ),
        ),
        update_case(
            "a pending proposal again",
            Conn::CToA,
            lobby.as_str(),
            proposals(self_remove, &[]),
            Expect::PeerUpdate(
                UpdateResponseCode::InvalidProposal,
                "the proposal is already pending".into(),
            ),
        ),
        update_case(
            "the pending proposals in the other order",
            Conn::CToA,
            lobby.as_str(),
            proposals(list_update, &[self_remove]),
            Expect::PeerUpdate(
                UpdateResponseCode::InvalidProposal,
                "the proposal is already pending".into(),
            ),
        ),
        update_case(
            "proposals for a future epoch",
            Conn::CToA,
            lobby.as_str(),
            proposals(&with_epoch(self_remove, lobby_epoch + 3), &[list_update]),
            Expect::PeerUpdate(
                UpdateResponseCode::WrongEpoch,
                format!("the room is at epoch {lobby_epoch}"),
            ),
        ),
        update_case(
            "another room's proposals",
            Conn::CToA,
            club_uri,
            proposals(self_remove, &[list_update]),
            Expect::PeerUpdate(
                UpdateResponseCode::InvalidProposal,
                "the message is for another MLS group than this room's".into(),
            ),
        ),
    ]);
    let submit_case = |name: &str, conn: Conn, param: &str, body: Vec<u8>, expect| {
        PeerCase::new(
            format!("submitMessage: {name}"),
            conn,
            S2sEndpoint::SubmitMessage,
            param,
            body,
            expect,
        )
    };
    let public_as_application = {
        let request = UpdateRequest::from_bytes(&bob_commit, &limits()).expect("an UpdateRequest");
        let HandshakeBundle::Commit { commit, .. } = request.bundle else {
            panic!("a commit bundle")
        };
        submit_body(commit.bytes(), bob_uri)
    };
    cases.extend([
        submit_case(
            "as the hub's own user",
            Conn::BToA,
            club_uri,
            submit_body(&bob_message, alice_uri),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot send as mimi://a.example/u/alice"],
            ),
        ),
        submit_case(
            "as c's user",
            Conn::BToA,
            club_uri,
            submit_body(&bob_message, cathy_uri),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot send as mimi://c.example/u/cathy"],
            ),
        ),
        submit_case(
            "a message of a past epoch (epochTooOld)",
            Conn::BToA,
            club_uri,
            submit_body(&bob_old_message, bob_uri),
            Expect::PeerSubmit(SubmitResponseCode::EpochTooOld),
        ),
        submit_case(
            "a message for a future epoch",
            Conn::BToA,
            club_uri,
            submit_body(&with_epoch(&bob_message, epoch + 1), bob_uri),
            Expect::PeerSubmit(SubmitResponseCode::NotAllowed),
        ),
        submit_case(
            "a message of another room's group",
            Conn::BToA,
            club_uri,
            submit_body(&bob_side_message, bob_uri),
            Expect::PeerSubmit(SubmitResponseCode::NotAllowed),
        ),
        submit_case(
            "a PublicMessage commit",
            Conn::BToA,
            club_uri,
            public_as_application,
            Expect::PeerSubmit(SubmitResponseCode::NotAllowed),
        ),
        submit_case(
            "a provider with no participant in the room",
            Conn::CToA,
            side.as_str(),
            submit_body(&cathy_message, cathy_uri),
            Expect::PeerSubmit(SubmitResponseCode::NotAllowed),
        ),
        submit_case(
            "an unknown room of the hub",
            Conn::BToA,
            "mimi://a.example/r/nowhere",
            valid_submit.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://a.example/r/nowhere is not hosted by a.example"],
            ),
        ),
        submit_case(
            "a room of another provider",
            Conn::BToA,
            "mimi://b.example/r/club",
            valid_submit.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://b.example/r/club is not hosted by a.example"],
            ),
        ),
    ]);
    let mut forged_key_material =
        KeyMaterialRequest::from_bytes(&valid_key_material, &limits()).expect("decodes");
    forged_key_material.key_material_request_signature[7] ^= 0x04;
    let forged_key_material = encode(&forged_key_material);
    let cathy_request = encode(
        &cathy
            .key_material_request(&user("a.example", "dave"), &club)
            .expect("signed"),
    );
    let cathy_for_c = encode(
        &cathy
            .key_material_request(&user("b.example", "bob"), &club)
            .expect("signed"),
    );
    let unsupported_suites = resigned(&|tbs| tbs.acceptable_ciphersuites = vec![CipherSuite(7)]);
    cases.extend([
        key_material_case(
            "the path names another user than the body",
            Conn::BToA,
            alice_uri,
            valid_key_material.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["the path names mimi://a.example/u/alice but the request targets \
                   mimi://a.example/u/dave"],
            ),
        ),
        key_material_case(
            "a signature with one bit flipped",
            Conn::BToA,
            dave_uri,
            forged_key_material.clone(),
            s2s_verify_refusal(&forged_key_material),
        ),
        key_material_case(
            "no cipher suite the hub verifies",
            Conn::BToA,
            dave_uri,
            unsupported_suites.clone(),
            s2s_verify_refusal(&unsupported_suites),
        ),
        key_material_case(
            "c's user's request, relayed by b",
            Conn::BToA,
            dave_uri,
            cathy_request.clone(),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example speaks neither for mimi://c.example/u/cathy nor as the hub \
                   of mimi://a.example/r/club"],
            ),
        ),
        key_material_case(
            "c's user's request for b's user, relayed by b through the hub",
            Conn::BToA,
            bob_uri,
            cathy_for_c,
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot fetch key material as mimi://c.example/u/cathy"],
            ),
        ),
        key_material_case(
            "a user of c for a room the hub does not host",
            Conn::BToA,
            cathy_uri,
            resigned(&|tbs| {
                tbs.target_user = uri(cathy_uri);
                tbs.room_id = uri("mimi://b.example/r/den");
            }),
            refused(
                StatusCode::NOT_FOUND,
                &["mimi://c.example/u/cathy is not served by a.example and \
                   mimi://b.example/r/den is not hosted here"],
            ),
        ),
        key_material_case(
            "an unknown user",
            Conn::BToA,
            "mimi://a.example/u/nobody",
            resigned(&|tbs| tbs.target_user = uri("mimi://a.example/u/nobody")),
            Expect::KeyMaterial(KeyMaterialUserCode::UserUnknown),
        ),
    ]);
    let group_info_case = |name: &str, conn: Conn, param: &str, body: Vec<u8>, expect| {
        PeerCase::new(
            format!("groupInfo: {name}"),
            conn,
            S2sEndpoint::GroupInfo,
            param,
            body,
            expect,
        )
    };
    let tablet_request =
        GroupInfoRequest::from_bytes(&valid_group_info, &limits()).expect("decodes");
    let signed_group_info = |edit: &dyn Fn(&mut GroupInfoRequestTbs)| {
        let mut tbs = tablet_request.tbs.clone();
        tbs.requesting_signature_key = SignaturePublicKey(forger.public().to_vec());
        edit(&mut tbs);
        GroupInfoRequest::sign(tbs, &forger).expect("the test signs")
    };
    let mut forged_group_info = tablet_request.clone();
    forged_group_info.signature[2] ^= 0x40;
    let forged_reason = {
        let error = forged_group_info.verify().expect_err("forged");
        format!("{}: {error}", error.code())
    };
    let not_authorized = Expect::GroupInfo(
        GroupInfoCode::NotAuthorized,
        "not authorized to join this room".into(),
    );
    let x509 = signed_group_info(&|tbs| {
        tbs.requesting_credential = Mls::from_value(Credential::new(
            CredentialType::X509,
            b"mimi://b.example/d/bob/tablet".to_vec(),
        ))
        .expect("encodes")
    });
    let x509_reason = {
        let error = x509.verify().expect_err("X.509");
        format!("{}: {error}", error.code())
    };
    cases.extend([
        group_info_case(
            "an unknown room of the hub (indistinguishable)",
            Conn::BToA,
            "mimi://a.example/r/nowhere",
            valid_group_info.clone(),
            not_authorized.clone(),
        ),
        group_info_case(
            "a room of another provider",
            Conn::BToA,
            "mimi://c.example/r/club",
            valid_group_info.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://c.example/r/club is not hosted by a.example"],
            ),
        ),
        group_info_case(
            "a signature with one bit flipped",
            Conn::BToA,
            club_uri,
            encode(&forged_group_info),
            Expect::GroupInfo(GroupInfoCode::NotAuthorized, forged_reason),
        ),
        group_info_case(
            "an X.509 credential",
            Conn::BToA,
            club_uri,
            encode(&x509),
            refused(StatusCode::BAD_REQUEST, &[&x509_reason]),
        ),
        group_info_case(
            "for a client of c, relayed by b",
            Conn::BToA,
            club_uri,
            encode(&signed_group_info(&|tbs| {
                tbs.requesting_credential = basic("mimi://c.example/d/cathy/phone")
            })),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot request the GroupInfo for \
                   mimi://c.example/d/cathy/phone, a client of c.example"],
            ),
        ),
        group_info_case(
            "for a client of a user who is not a participant",
            Conn::BToA,
            club_uri,
            encode(&signed_group_info(&|tbs| {
                tbs.requesting_credential = basic("mimi://b.example/d/zed/phone")
            })),
            not_authorized.clone(),
        ),
    ]);
    let query_case = |name: &str, conn: Conn, body: Vec<u8>, expect| {
        PeerCase::new(
            format!("identifierQuery: {name}"),
            conn,
            S2sEndpoint::IdentifierQuery,
            "a.example",
            body,
            expect,
        )
    };
    cases.extend([
        query_case(
            "as a user of c",
            Conn::BToA,
            query_body(vec![nick("alice")], Some(cathy_uri.as_bytes())),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot query as mimi://c.example/u/cathy"],
            ),
        ),
        query_case(
            "as a user of the hub",
            Conn::BToA,
            query_body(vec![nick("alice")], Some(alice_uri.as_bytes())),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot query as mimi://a.example/u/alice"],
            ),
        ),
        query_case(
            "a nick nobody has",
            Conn::BToA,
            query_body(vec![nick("nobody")], Some(bob_uri.as_bytes())),
            Expect::Identifier(IdentifierQueryCode::NotFound),
        ),
        query_case(
            "a partial name (unsupported)",
            Conn::BToA,
            query_body(
                vec![QueryElement {
                    field: SearchField::PartialName,
                    search_value: "Ali".into(),
                }],
                Some(bob_uri.as_bytes()),
            ),
            Expect::Identifier(IdentifierQueryCode::UnsupportedField),
        ),
    ]);
    let consent_case =
        |name: &str, endpoint: S2sEndpoint, conn: Conn, param: &str, body, expect| {
            PeerCase::new(
                format!("{endpoint}: {name}"),
                conn,
                endpoint,
                param,
                body,
                expect,
            )
        };
    use S2sEndpoint::{RequestConsent, UpdateConsent};
    cases.extend([
        consent_case(
            "a grant",
            RequestConsent,
            Conn::BToA,
            alice_uri,
            consent_body(
                ConsentOp::Grant {
                    client_key_packages: Vec::new(),
                },
                bob_uri.as_bytes(),
                alice_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &["ConsentEntry.consentOperation: requestConsent carries a request or cancel"],
            ),
        ),
        consent_case(
            "a revoke",
            RequestConsent,
            Conn::BToA,
            alice_uri,
            consent_body(
                ConsentOp::Revoke,
                bob_uri.as_bytes(),
                alice_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &["requestConsent carries a request or cancel"],
            ),
        ),
        consent_case(
            "as a user of c",
            RequestConsent,
            Conn::BToA,
            alice_uri,
            consent_body(
                ConsentOp::Request,
                cathy_uri.as_bytes(),
                alice_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot ask consent as mimi://c.example/u/cathy"],
            ),
        ),
        consent_case(
            "for a user of c",
            RequestConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Request,
                bob_uri.as_bytes(),
                cathy_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::NOT_FOUND,
                &["mimi://c.example/u/cathy is not served by a.example"],
            ),
        ),
        consent_case(
            "the path names another user than the body",
            RequestConsent,
            Conn::BToA,
            "mimi://a.example/u/carol",
            consent_body(
                ConsentOp::Request,
                bob_uri.as_bytes(),
                alice_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &[
                    "the path names mimi://a.example/u/carol but the body names \
                   mimi://a.example/u/alice",
                ],
            ),
        ),
        consent_case(
            "requester and target are the same user",
            RequestConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Request,
                bob_uri.as_bytes(),
                bob_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &["invalid_value: ConsentEntry.targetUri: the target is the requester"],
            ),
        ),
        // MIMI.md §13: an unknown target is answered like a known one, and nothing is recorded.
        consent_case(
            "a request for an unknown user (201, nothing recorded)",
            RequestConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Request,
                bob_uri.as_bytes(),
                b"mimi://a.example/u/nobody",
                None,
            ),
            Expect::Created,
        ),
        consent_case(
            "a cancel for an unknown user (201, nothing recorded)",
            RequestConsent,
            Conn::BToA,
            "mimi://a.example/u/nobody",
            consent_body(
                ConsentOp::Cancel,
                bob_uri.as_bytes(),
                b"mimi://a.example/u/nobody",
                Some(club_uri.as_bytes()),
            ),
            Expect::Created,
        ),
        consent_case(
            "a request",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Request,
                alice_uri.as_bytes(),
                bob_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &["ConsentEntry.consentOperation: updateConsent carries a grant or revoke"],
            ),
        ),
        consent_case(
            "a cancel",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Cancel,
                alice_uri.as_bytes(),
                bob_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &["updateConsent carries a grant or revoke"],
            ),
        ),
        consent_case(
            "decided as a user of c",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Revoke,
                alice_uri.as_bytes(),
                cathy_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot decide consent as mimi://c.example/u/cathy"],
            ),
        ),
        consent_case(
            "for a requester of c",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Revoke,
                cathy_uri.as_bytes(),
                bob_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::NOT_FOUND,
                &["mimi://c.example/u/cathy is not served by a.example"],
            ),
        ),
        consent_case(
            "the path names another user than the body",
            UpdateConsent,
            Conn::BToA,
            "mimi://a.example/u/carol",
            consent_body(
                ConsentOp::Revoke,
                alice_uri.as_bytes(),
                bob_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &[
                    "the path names mimi://a.example/u/carol but the body names \
                   mimi://a.example/u/alice",
                ],
            ),
        ),
        consent_case(
            "a grant of a KeyPackage of the hub's user",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Grant {
                    client_key_packages: vec![Mls::from_bytes(
                        &carol
                            .key_package(false)
                            .expect("KeyPackage")
                            .tls_serialize_detached()
                            .expect("serialises"),
                    )
                    .expect("decodes")],
                },
                alice_uri.as_bytes(),
                bob_uri.as_bytes(),
                None,
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &[
                    "ConsentEntry.clientKeyPackages[0]: names mimi://a.example/d/carol/phone, \
                   which is not a client of mimi://b.example/u/bob",
                ],
            ),
        ),
        consent_case(
            "a revoke for an unknown requester (201, nothing recorded)",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            consent_body(
                ConsentOp::Revoke,
                b"mimi://a.example/u/nobody",
                bob_uri.as_bytes(),
                None,
            ),
            Expect::Created,
        ),
    ]);
    let report_case = |name: &str, conn: Conn, param: &str, report: &AbuseReport, expect| {
        PeerCase::new(
            format!("reportAbuse: {name}"),
            conn,
            S2sEndpoint::ReportAbuse,
            param,
            encode(report),
            expect,
        )
    };
    let forged = |edit: &dyn Fn(&mut AbuseReport)| {
        let mut forged = report.clone();
        edit(&mut forged);
        forged
    };
    cases.extend([
        report_case(
            "as a user of c",
            Conn::BToA,
            club_uri,
            &forged(&|r| r.reporting_user = uri(cathy_uri)),
            refused(
                StatusCode::FORBIDDEN,
                &["provider b.example cannot report as mimi://c.example/u/cathy"],
            ),
        ),
        report_case(
            "accepted_timestamp altered",
            Conn::BToA,
            club_uri,
            &forged(&|r| r.messages[0].accepted_timestamp ^= 1),
            refused(StatusCode::BAD_REQUEST, &["server_frank does not match"]),
        ),
        report_case(
            "content byte flipped",
            Conn::BToA,
            club_uri,
            &forged(&|r| r.messages[0].message_content[3] ^= 0x01),
            refused(StatusCode::BAD_REQUEST, &["AbuseReport.messages[0]"]),
        ),
        report_case(
            "signature altered",
            Conn::BToA,
            club_uri,
            &forged(&|r| r.messages[0].frank.franking_integrity_signature[1] ^= 0x01),
            refused(
                StatusCode::BAD_REQUEST,
                &["franking_integrity_signature does not verify"],
            ),
        ),
        report_case(
            "alleged abuser is not the sender",
            Conn::BToA,
            club_uri,
            &forged(&|r| r.alleged_abuser_uri = uri(cathy_uri)),
            refused(
                StatusCode::BAD_REQUEST,
                &["not by the alleged abuser mimi://c.example/u/cathy"],
            ),
        ),
        report_case(
            "no message",
            Conn::BToA,
            club_uri,
            &forged(&|r| r.messages.clear()),
            refused(StatusCode::BAD_REQUEST, &["at least one franked message"]),
        ),
        report_case(
            "reported in another room",
            Conn::BToA,
            side.as_str(),
            &report,
            refused(
                StatusCode::BAD_REQUEST,
                &["was sent in mimi://a.example/r/club, not in mimi://a.example/r/side"],
            ),
        ),
        report_case(
            "an unknown room of the hub",
            Conn::BToA,
            "mimi://a.example/r/nowhere",
            &report,
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://a.example/r/nowhere is not hosted by a.example"],
            ),
        ),
        report_case(
            "a room of another provider",
            Conn::BToA,
            "mimi://b.example/r/club",
            &report,
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://b.example/r/club is not hosted by a.example"],
            ),
        ),
    ]);
    // The follower side of notify (protocol-06 §5.4): b is notified about the club.
    let notify_case = |name: &str, conn: Conn, param: &str, headers: HeaderMap, body, expect| {
        PeerCase::new(
            format!("notify: {name}"),
            conn,
            S2sEndpoint::Notify,
            param,
            body,
            expect,
        )
        .with_headers(headers)
    };
    let welcome = log_items(&a, &club)
        .into_iter()
        .find(|item| matches!(item.body, ItemBody::Welcome { .. }))
        .expect("the club's Welcome");
    let welcome_without_tree = {
        let ItemBody::Welcome { welcome: bytes, .. } = &welcome.body else {
            unreachable!("a Welcome")
        };
        encode_fanout_batch(&[FanoutMessage {
            timestamp: welcome.ts_ms,
            body: FanoutBody::Welcome {
                welcome: MlsMessage::from_bytes(bytes).expect("a Welcome"),
                ratchet_tree_option: RatchetTreeOption::DistributionService,
            },
        }])
        .expect("encodes")
    };
    let two = [valid_notify.clone(), valid_notify.clone()].concat();
    // FanoutMessages whose MLSMessage has a wire format a notify does not carry (MIMI.md §5.4).
    let wrong_formats: Vec<(&str, Vec<u8>)> = {
        let key_package = MlsMessage::wrap(
            &Mls::<openmls::prelude::KeyPackageIn>::from_bytes(
                &carol
                    .key_package(false)
                    .expect("KeyPackage")
                    .tls_serialize_detached()
                    .expect("serialises"),
            )
            .expect("decodes"),
        )
        .expect("wrapped");
        let group_info = {
            let shard = a.node().hub().shards().for_room(&club).read();
            shard
                .room(&club)
                .expect("hosted")
                .group_info()
                .expect("a GroupInfo")
                .to_vec()
        };
        let timestamp = report_me.ts_ms.to_be_bytes();
        vec![
            (
                "a KeyPackage",
                [&timestamp[..], key_package.bytes()].concat(),
            ),
            ("a GroupInfo", [&timestamp[..], &group_info].concat()),
        ]
    };
    let c_from = from_header("mimi@c.example");
    cases.extend([
        notify_case(
            "from a provider that is not the room's hub",
            Conn::CToB,
            club_uri,
            c_from.clone(),
            valid_notify.clone(),
            refused(
                StatusCode::FORBIDDEN,
                &["provider c.example is not the hub of mimi://a.example/r/club"],
            ),
        ),
        notify_case(
            "about a room of the receiver, from another provider",
            Conn::AToB,
            "mimi://b.example/r/club",
            hub_seqs(b"1"),
            valid_notify.clone(),
            refused(
                StatusCode::FORBIDDEN,
                &["provider a.example is not the hub of mimi://b.example/r/club"],
            ),
        ),
        notify_case(
            "about a room none of the receiver's clients is in",
            Conn::AToB,
            "mimi://a.example/r/nowhere",
            hub_seqs(report_me_seq.as_bytes()),
            valid_notify.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["no client of b.example is in mimi://a.example/r/nowhere"],
            ),
        ),
        notify_case(
            "about a room of c none of b's clients is in",
            Conn::CToB,
            "mimi://c.example/r/den",
            c_from.clone(),
            valid_notify.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["no client of b.example is in mimi://c.example/r/den"],
            ),
        ),
        notify_case(
            "mimi-hub-seqs that are not numbers",
            Conn::AToB,
            club_uri,
            hub_seqs(b"seven"),
            valid_notify.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs is not a list of numbers"],
            ),
        ),
        notify_case(
            "a negative mimi-hub-seqs",
            Conn::AToB,
            club_uri,
            hub_seqs(b"-1"),
            valid_notify.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs is not a list of numbers"],
            ),
        ),
        notify_case(
            "a mimi-hub-seqs over 64 bits",
            Conn::AToB,
            club_uri,
            hub_seqs(b"18446744073709551616"),
            valid_notify.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs is not a list of numbers"],
            ),
        ),
        notify_case(
            "an empty mimi-hub-seqs",
            Conn::AToB,
            club_uri,
            hub_seqs(b""),
            valid_notify.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs is not a list of numbers"],
            ),
        ),
        notify_case(
            "mimi-hub-seqs that are not ASCII",
            Conn::AToB,
            club_uri,
            hub_seqs(b"\xe9"),
            valid_notify.clone(),
            refused(StatusCode::BAD_REQUEST, &["mimi-hub-seqs is not ASCII"]),
        ),
        notify_case(
            "two positions for one message",
            Conn::AToB,
            club_uri,
            hub_seqs(b"4,5"),
            valid_notify.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs names 2 positions for 1 messages"],
            ),
        ),
        notify_case(
            "positions that go back",
            Conn::AToB,
            club_uri,
            hub_seqs(b"9,8"),
            two.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs is not increasing"],
            ),
        ),
        notify_case(
            "a position twice",
            Conn::AToB,
            club_uri,
            hub_seqs(b"9,9"),
            two,
            refused(
                StatusCode::BAD_REQUEST,
                &["mimi-hub-seqs is not increasing"],
            ),
        ),
        notify_case(
            "a KeyPackage as a FanoutMessage",
            Conn::AToB,
            club_uri,
            hub_seqs(report_me_seq.as_bytes()),
            wrong_formats[0].1.clone(),
            hostile::codec_refusal(
                "notify: a KeyPackage",
                decode_notify,
                &limits(),
                &wrong_formats[0].1,
                &["unexpected_mls_message"],
            ),
        ),
        notify_case(
            "a GroupInfo as a FanoutMessage",
            Conn::AToB,
            club_uri,
            hub_seqs(report_me_seq.as_bytes()),
            wrong_formats[1].1.clone(),
            hostile::codec_refusal(
                "notify: a GroupInfo",
                decode_notify,
                &limits(),
                &wrong_formats[1].1,
                &["unexpected_mls_message"],
            ),
        ),
        notify_case(
            "a Welcome without its ratchet tree",
            Conn::AToB,
            club_uri,
            hub_seqs(welcome.seq.to_string().as_bytes()),
            welcome_without_tree,
            refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                &["only a full RatchetTreeOption can be delivered with a Welcome"],
            ),
        ),
        // MIMI.md §5.4: a notify the follower has (its hub seq) is acknowledged again and
        // appends nothing.
        notify_case(
            "a replayed notify (201, nothing appended)",
            Conn::AToB,
            club_uri,
            hub_seqs(report_me_seq.as_bytes()),
            valid_notify.clone(),
            Expect::Created,
        ),
    ]);
    federation.check_all(&cases).await;

    // --- reused KeyPackages and replayed commits -------------------------------------------------
    // b claims dave's only KeyPackage for bob (protocol-06 §5.1); the same claim again finds
    // nothing, whoever asks.
    let (status, _, body) = federation.conns[&Conn::BToA]
        .request(
            Method::POST,
            &s2s_path(S2sEndpoint::KeyMaterial, dave_uri),
            from_header("mimi@b.example"),
            Bytes::from(valid_key_material.clone()),
        )
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK, "{}", hostile::text(&body));
    let claimed = KeyMaterialResponse::from_bytes(&body, &limits()).expect("a response");
    assert_eq!(claimed.user_status, KeyMaterialUserCode::Success);
    // bob's commit is accepted; resent as is, it gets the original verdict and changes nothing
    // (the retry cache, MIMI.md §7.6); sent by another provider, it is not bob's provider's.
    let (status, _, body) = federation.conns[&Conn::BToA]
        .request(
            Method::POST,
            &s2s_path(S2sEndpoint::Update, club_uri),
            from_header("mimi@b.example"),
            Bytes::from(bob_commit.clone()),
        )
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK, "{}", hostile::text(&body));
    let accepted = UpdateRoomResponse::from_bytes(&body, &limits()).expect("a response");
    assert_eq!(
        accepted.response_code(),
        UpdateResponseCode::Success,
        "{accepted:?}"
    );
    wait_fanout_recorded(&a, &club).await;
    federation
        .check_all(&[
            key_material_case(
                "the same claim again (the KeyPackage was served once)",
                Conn::BToA,
                dave_uri,
                valid_key_material.clone(),
                Expect::KeyMaterial(KeyMaterialUserCode::NoCompatibleMaterial),
            ),
            key_material_case(
                "the claimed KeyPackage, for another requester",
                Conn::BToA,
                dave_uri,
                resigned(&|_| {}),
                Expect::KeyMaterial(KeyMaterialUserCode::NoCompatibleMaterial),
            ),
            update_case(
                "an accepted commit resent as is (its original verdict)",
                Conn::BToA,
                club_uri,
                bob_commit.clone(),
                Expect::PeerUpdate(UpdateResponseCode::Success, String::new()),
            ),
            update_case(
                "an accepted commit replayed by another provider",
                Conn::CToA,
                club_uri,
                bob_commit.clone(),
                Expect::PeerUpdate(
                    UpdateResponseCode::WrongEpoch,
                    format!("the room is at epoch {}", epoch + 1),
                ),
            ),
        ])
        .await;

    // --- a blocked user and a blocked provider (MIMI.md §13) ----------------------------------------
    for target in [
        "mimi://b.example/u/bob",
        "c.example",
        "mimi://a.example/u/carol",
    ] {
        let (status, body) = admin_call(
            &a.admin(),
            Some(&a.admin_token()),
            "POST",
            "/admin/abuse/block",
            serde_json::to_vec(&serde_json::json!({ "target": target }))
                .expect("JSON")
                .as_slice(),
        )
        .await
        .expect("admin answers");
        assert_eq!(status, 200, "{}", hostile::text(&body));
    }
    let bob_blocked = refused(
        StatusCode::FORBIDDEN,
        &["user blocked: mimi://b.example/u/bob"],
    );
    let c_blocked = refused(StatusCode::FORBIDDEN, &["provider blocked: c.example"]);
    let mut cases = Vec::new();
    for e in &endpoints {
        let param = if e.endpoint == S2sEndpoint::Notify {
            "mimi://c.example/r/den".to_owned()
        } else {
            e.param.clone()
        };
        for (what, body) in [("its valid body", e.body.clone()), ("no body", Vec::new())] {
            cases.push(PeerCase::new(
                format!("{}: a blocked provider, {what}", e.endpoint),
                Conn::CToA,
                e.endpoint,
                &param,
                body,
                c_blocked.clone(),
            ));
        }
    }
    cases.push(PeerCase::new(
        "proxyDownload: a blocked provider",
        Conn::CToA,
        S2sEndpoint::ProxyDownload,
        "https://assets.c.example/x",
        Vec::new(),
        c_blocked.clone(),
    ));
    cases.extend([
        submit_case(
            "a blocked user",
            Conn::BToA,
            club_uri,
            valid_submit.clone(),
            bob_blocked.clone(),
        ),
        key_material_case(
            "a blocked requester",
            Conn::BToA,
            dave_uri,
            valid_key_material.clone(),
            bob_blocked.clone(),
        ),
        key_material_case(
            "a blocked target",
            Conn::BToA,
            "mimi://a.example/u/carol",
            resigned(&|tbs| {
                tbs.requesting_user = uri("mimi://b.example/u/zed");
                tbs.requester_credential = basic("mimi://b.example/d/zed/phone");
                tbs.target_user = uri("mimi://a.example/u/carol");
            }),
            refused(
                StatusCode::FORBIDDEN,
                &["user blocked: mimi://a.example/u/carol"],
            ),
        ),
        group_info_case(
            "for a device of a blocked user",
            Conn::BToA,
            club_uri,
            valid_group_info.clone(),
            bob_blocked.clone(),
        ),
        query_case(
            "as a blocked user",
            Conn::BToA,
            valid_query.clone(),
            bob_blocked.clone(),
        ),
        consent_case(
            "asked by a blocked user",
            RequestConsent,
            Conn::BToA,
            alice_uri,
            valid_request_consent.clone(),
            bob_blocked.clone(),
        ),
        consent_case(
            "decided by a blocked user",
            UpdateConsent,
            Conn::BToA,
            "a.example",
            valid_update_consent.clone(),
            bob_blocked.clone(),
        ),
        report_case(
            "by a blocked user",
            Conn::BToA,
            club_uri,
            &report,
            bob_blocked.clone(),
        ),
        // A handshake is refused by the room's apply, from the MLS sender's leaf.
        update_case(
            "a blocked user's commit (refused in apply)",
            Conn::BToA,
            club_uri,
            with_epoch(&bob_commit, epoch + 1),
            Expect::PeerUpdate(UpdateResponseCode::NotAllowed, "blocked".into()),
        ),
    ]);
    federation.check_all(&cases).await;
    for target in [
        "mimi://b.example/u/bob",
        "c.example",
        "mimi://a.example/u/carol",
    ] {
        let (status, body) = admin_call(
            &a.admin(),
            Some(&a.admin_token()),
            "POST",
            "/admin/abuse/unblock",
            serde_json::to_vec(&serde_json::json!({ "target": target }))
                .expect("JSON")
                .as_slice(),
        )
        .await
        .expect("admin answers");
        assert_eq!(status, 200, "{}", hostile::text(&body));
    }
    // Unblocked, the valid query is answered: the refusals above were the blocklist's.
    let (status, _, body) = federation.conns[&Conn::BToA]
        .request(
            Method::POST,
            &s2s_path(S2sEndpoint::IdentifierQuery, "a.example"),
            from_header("mimi@b.example"),
            Bytes::from(valid_query.clone()),
        )
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK, "{}", hostile::text(&body));

    federation
        .tally
        .lock()
        .expect("not poisoned")
        .assert_shares(
            "peer_requests",
            &[
                ("update", 118),
                ("submitMessage", 145),
                ("keyMaterial", 227),
                ("groupInfo", 123),
                ("notify", 116),
                ("requestConsent", 241),
                ("updateConsent", 240),
                ("identifierQuery", 113),
                ("reportAbuse", 190),
                ("proxyDownload", 25),
                ("unknown paths", 6),
            ],
            1544,
        );
    federation.close().await;
    for client in [alice, bob, cathy, dave, carol, bob_tablet] {
        client.close().await;
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
