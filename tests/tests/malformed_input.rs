//! Hostile input against every client API operation (node/API.md), on a real node: quinn on
//! loopback, raft-rs in sled, openmls clients.
//!
//! Each case is a request built from a *valid* one (or the valid one itself where the hub must
//! refuse it) and the exact answer it must get: the HTTP status, and the reason naming the problem
//! (the codec's `WireError` code and field, the transport's limit, or the hub's verdict of
//! protocol-06 §5.2 / §5.3 and MIMI.md §7). After every case the test checks that the replicated
//! state did not move: the room snapshots (`room_digest`) and the KeyPackage directory of every
//! shard compare equal, so a refusal leaves no trace (ARCHITECTURE.md invariants). Every operation
//! ends with its valid request succeeding, which shows the node is still serving and that the
//! hostile requests consumed nothing (a claim still gets the one KeyPackage there is).
//!
//! Codec expectations are computed with the node's own decoders and then checked against the
//! class of mutation (a cut body must be `truncated` or `length_beyond_input`, a padded one
//! `trailing_bytes`, ...), so a case pins both the server's mapping to 400 and the codec's
//! classification.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mimid_actors::command;
use mimid_actors::directory::Directory;
use mimid_actors::ids::{ClientId, RoomId};
use mimid_actors::room::log::ItemBody;
use mimid_node::api::{room_path, PREFIX};
use mimid_node::client::{Event, MimiClient, SubmitResult, UpdateResult};
use mimid_node::h3::{ClientLimits, H3Client};
use mimid_node::wire::client::{
    AckEntry, AckRequest, ClientSubmitResponse, ClientUpdateResponse, CreateRoomRequest,
    CreateRoomResponse, CreateRoomStatus, PublishKeyPackagesRequest, RegisterClientRequest,
    RegisterClientResponse,
};
use mimid_node::wire::key_material::{
    ClientMaterial, KeyMaterialRequest, KeyMaterialRequestTbs, KeyMaterialResponse,
    KeyMaterialUserCode,
};
use mimid_node::wire::submit::{SubmitMessageRequest, SubmitResponseCode};
use mimid_node::wire::update::{
    GroupInfoOption, HandshakeBundle, RatchetTreeOption, UpdateRequest, UpdateResponseCode,
};
use mimid_node::wire::{
    CipherSuite, Decode, Encode, IdentifierUri, Limits, Mls, MlsMessage, Protocol,
    SignaturePublicKey, WireError, Writer,
};
use mimid_tests::{http_get_status, room, user, TestNode, WAIT};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{BasicCredential, Credential, CredentialType, KeyPackageIn};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

/// The node's `limits.max_body_bytes` in these tests: small, so the 413 path is cheap to reach,
/// and still far above every valid body here (a few KiB at most).
const MAX_BODY: usize = 16 * 1024;

/// The node's `limits.max_key_packages_per_publish` in these tests.
const MAX_KEY_PACKAGES_PER_PUBLISH: usize = 3;

fn limits() -> Limits {
    Limits {
        max_body_len: MAX_BODY,
    }
}

async fn start_node() -> TestNode {
    TestNode::start_with(|config| {
        config.limits.max_body_bytes = MAX_BODY;
        config.limits.max_key_packages_per_publish = MAX_KEY_PACKAGES_PER_PUBLISH;
    })
    .await
}

fn client_path(endpoint: &str) -> String {
    format!("{PREFIX}{endpoint}")
}

fn client_id(user: &str, device: &str) -> ClientId {
    ClientId::parse(&format!("mimi://localhost/d/{user}/{device}")).expect("valid client id")
}

fn uri(text: &str) -> IdentifierUri {
    IdentifierUri::new(text.as_bytes())
}

/// Bytes that are not UTF-8, where a `mimi:` URI is expected (MIMI.md §2).
fn not_utf8() -> IdentifierUri {
    IdentifierUri::new(b"mimi://localhost/\xff\xfe".to_vec())
}

fn encode(value: &impl Encode) -> Vec<u8> {
    value.to_bytes().expect("a test body encodes")
}

// ---------------------------------------------------------------------------------------------
// Who sends a request.

/// The sender of a case: a registered client (its bearer token, `POST` only, through the client
/// library's `post_raw`), or the raw HTTP/3 connection with a chosen `authorization` header.
#[derive(Clone)]
enum Caller {
    Client(&'static str),
    Anonymous,
    Header(HeaderValue),
}

/// A raw HTTP/3 connection to the node, for requests the client library never sends.
struct Raw {
    http: H3Client,
}

impl Raw {
    async fn connect(node: &TestNode) -> Raw {
        let endpoint = node.endpoint();
        let tls =
            mimid_node::tls::client_config(endpoint.roots.clone()).expect("TLS client config");
        let http = H3Client::connect(
            endpoint.addr,
            &endpoint.server_name,
            tls,
            ClientLimits::default(),
        )
        .await
        .expect("raw HTTP/3 connection");
        Raw { http }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<HeaderValue>,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let (status, _, body) = self
            .http
            .request(method, path, headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("{path}: the node did not answer: {e}"));
        (status, body)
    }

    /// Registers `client` without the client library and returns its bearer token.
    async fn register(&self, client: &ClientId) -> String {
        let body = encode(&RegisterClientRequest {
            client: IdentifierUri::new(client.as_bytes()),
        });
        let (status, bytes) = self
            .send(Method::POST, &client_path("register"), None, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{}", text(&bytes));
        let response =
            RegisterClientResponse::from_bytes(&bytes, &limits()).expect("RegisterClientResponse");
        String::from_utf8(response.token).expect("a token is base64url text")
    }
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is a header value")
}

/// `token` with one character of its secret part changed: well-formed, but not the secret the
/// provider stored a hash of. (The last 43 characters encode the 32-byte secret; the final one is
/// avoided because base64url without padding rejects non-zero trailing bits.)
fn tampered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let at = chars.len() - 10;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Cases and their expectations.

/// The answer a case must get.
enum Expect {
    /// A refusal: this status and a `text/plain` reason containing every fragment.
    Refused(StatusCode, Vec<String>),
    /// 200 with a `ClientUpdateResponse` of this code, seq 0, and an `errorDescription`
    /// containing the fragment (protocol-06 §5.2).
    Update(UpdateResponseCode, String),
    /// 200 with a `ClientSubmitResponse` of this code, seq 0, and a reason containing the
    /// fragment (protocol-06 §5.3).
    Submit(SubmitResponseCode, String),
    /// This status with a `CreateRoomResponse` of this status and a reason containing the fragment.
    CreateRoom(StatusCode, CreateRoomStatus, String),
    /// 200 with a `KeyMaterialResponse` of this user code and no clients (protocol-06 §5.1).
    KeyMaterial(KeyMaterialUserCode),
    /// 204 with an empty body: accepted, and (for these cases) without effect.
    NoContent,
    /// 200 and a push stream.
    Stream,
}

fn refused(status: StatusCode, fragments: &[&str]) -> Expect {
    Expect::Refused(status, fragments.iter().map(|f| f.to_string()).collect())
}

struct Case {
    name: String,
    caller: Caller,
    method: Method,
    path: String,
    body: Vec<u8>,
    expect: Expect,
}

impl Case {
    fn post(
        name: impl Into<String>,
        caller: Caller,
        path: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> Case {
        Case {
            name: name.into(),
            caller,
            method: Method::POST,
            path: path.to_string(),
            body,
            expect,
        }
    }
}

/// How the node decodes an operation's body, for computing the exact expected 400 reason.
type Decoder = fn(&[u8], &Limits) -> Result<(), WireError>;

fn decode_as<T: Decode>(body: &[u8], limits: &Limits) -> Result<(), WireError> {
    T::from_bytes(body, limits).map(drop)
}

/// `ClientApi::update` decodes and then converts to the domain's bundle; both are 400s.
fn decode_update(body: &[u8], limits: &Limits) -> Result<(), WireError> {
    let request = UpdateRequest::from_bytes(body, limits)?;
    command::HandshakeBundle::try_from(request).map(drop)
}

/// The 400 the node must give `body`, after checking that the codec classifies it as one of
/// `class` (the kind of damage the case did).
fn codec_refusal(name: &str, decode: Decoder, body: &[u8], class: &[&str]) -> Expect {
    let error = match decode(body, &limits()) {
        Err(error) => error,
        Ok(()) => panic!("{name}: the mutated body still decodes"),
    };
    assert!(
        class.contains(&error.code()),
        "{name}: the codec classifies the damage as {} ({error}), expected one of {class:?}",
        error.code()
    );
    Expect::Refused(
        StatusCode::BAD_REQUEST,
        vec![format!("{}: {error}", error.code())],
    )
}

/// A valid request of one operation, the base of its malformed variants.
struct Base {
    op: &'static str,
    caller: Caller,
    path: String,
    body: Vec<u8>,
    /// Offset of a length prefix read by our codec (not one inside an openmls structure).
    prefix_at: Option<usize>,
    decode: Decoder,
}

/// RFC 9420 §2.1.2 variable-length prefix at `at`: (value, width). Only used on valid bodies.
fn read_varint(bytes: &[u8], at: usize) -> (usize, usize) {
    let first = bytes[at];
    assert!(first >> 6 != 3, "a valid body has no reserved prefix");
    let width = 1usize << (first >> 6);
    let value = bytes[at + 1..at + width]
        .iter()
        .fold(usize::from(first & 0x3f), |value, byte| {
            value << 8 | usize::from(*byte)
        });
    (value, width)
}

/// `value` as a prefix of exactly `width` bytes (possibly not minimal).
fn varint(value: usize, width: usize) -> Vec<u8> {
    match width {
        1 => vec![u8::try_from(value).expect("fits 6 bits")],
        2 => (0x4000 | u16::try_from(value).expect("fits 14 bits"))
            .to_be_bytes()
            .to_vec(),
        _ => (0x8000_0000 | u32::try_from(value).expect("fits 30 bits"))
            .to_be_bytes()
            .to_vec(),
    }
}

fn minimal_width(value: usize) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        _ => 4,
    }
}

fn replace_prefix(body: &[u8], at: usize, prefix: &[u8]) -> Vec<u8> {
    let (_, width) = read_varint(body, at);
    [&body[..at], prefix, &body[at + width..]].concat()
}

/// The wire-level mutations every body gets (MIMI.md §3.3): cuts at several points, a trailing
/// byte, and, where our codec reads a length prefix, a non-minimal, a reserved, an over-limit and
/// a beyond-the-input length.
fn malformed(base: &Base) -> Vec<Case> {
    let len = base.body.len();
    let mut cuts = vec![0, 1, len / 4, len / 2, 3 * len / 4, len - 1];
    cuts.sort_unstable();
    cuts.dedup();
    let mut bodies: Vec<(String, Vec<u8>, &[&str])> = cuts
        .into_iter()
        .map(|cut| {
            (
                format!("cut to {cut} of {len} bytes"),
                base.body[..cut].to_vec(),
                &["truncated", "length_beyond_input"][..],
            )
        })
        .collect();
    bodies.push((
        "one trailing byte".into(),
        [&base.body[..], &[0]].concat(),
        &["trailing_bytes"],
    ));
    if let Some(at) = base.prefix_at {
        let (value, width) = read_varint(&base.body, at);
        let remaining = len - at - width;
        bodies.push((
            format!("non-minimal length prefix at {at}"),
            replace_prefix(
                &base.body,
                at,
                &varint(value, if width == 1 { 2 } else { 4 }),
            ),
            &["non_minimal_length"],
        ));
        let mut reserved = base.body.clone();
        reserved[at] |= 0xc0;
        bodies.push((
            format!("reserved 0b11 length prefix at {at}"),
            reserved,
            &["reserved_length_prefix"],
        ));
        bodies.push((
            format!("length prefix at {at} over the body limit"),
            replace_prefix(&base.body, at, &varint(MAX_BODY + 1, 4)),
            &["length_over_limit"],
        ));
        let beyond = remaining + 1;
        bodies.push((
            format!("length prefix at {at} beyond the input"),
            replace_prefix(&base.body, at, &varint(beyond, minimal_width(beyond))),
            &["length_beyond_input"],
        ));
    }
    bodies
        .into_iter()
        .map(|(what, body, class)| {
            let name = format!("{}: {what}", base.op);
            let expect = codec_refusal(&name, base.decode, &body, class);
            Case {
                name,
                caller: base.caller.clone(),
                method: Method::POST,
                path: base.path.clone(),
                body,
                expect,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running cases.

/// Everything a refused request must leave untouched: the snapshots of the watched rooms and
/// the directory (clients, tokens, KeyPackages, claims) of every shard.
#[derive(PartialEq)]
struct Observed {
    rooms: Vec<Vec<u8>>,
    directories: Vec<Directory>,
}

struct Harness<'a> {
    node: &'a TestNode,
    raw: &'a Raw,
    clients: BTreeMap<&'static str, &'a MimiClient>,
    watched: Vec<RoomId>,
}

fn observe(node: &TestNode, watched: &[RoomId]) -> Observed {
    let shards = node.node().hub().shards();
    Observed {
        rooms: watched.iter().map(|room| node.room_digest(room)).collect(),
        directories: (0..shards.count())
            .map(|shard| shards.get(shard).read().directory().clone())
            .collect(),
    }
}

impl Harness<'_> {
    fn observe(&self) -> Observed {
        observe(self.node, &self.watched)
    }

    async fn send(&self, case: &Case) -> (StatusCode, Bytes) {
        match &case.caller {
            Caller::Client(name) => {
                assert_eq!(
                    case.method,
                    Method::POST,
                    "{}: clients only POST",
                    case.name
                );
                self.clients[name]
                    .post_raw(&case.path, case.body.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{}: the node did not answer: {e}", case.name))
            }
            Caller::Anonymous => {
                self.raw
                    .send(case.method.clone(), &case.path, None, case.body.clone())
                    .await
            }
            Caller::Header(value) => {
                self.raw
                    .send(
                        case.method.clone(),
                        &case.path,
                        Some(value.clone()),
                        case.body.clone(),
                    )
                    .await
            }
        }
    }

    /// Sends one case, checks the answer, and checks that replicated state did not move.
    async fn check(&self, case: &Case) {
        let before = self.observe();
        if matches!(case.expect, Expect::Stream) {
            let Caller::Header(value) = &case.caller else {
                panic!("{}: a stream case needs a token header", case.name);
            };
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value.clone());
            let (status, chunks) = self
                .raw
                .http
                .stream(case.method.clone(), &case.path, headers, Bytes::new())
                .await
                .unwrap_or_else(|e| panic!("{}: the node did not answer: {e}", case.name));
            assert_eq!(status, StatusCode::OK, "{}", case.name);
            drop(chunks);
        } else {
            let (status, body) = self.send(case).await;
            check_answer(case, status, &body);
        }
        assert!(
            self.observe() == before,
            "{}: a refused request changed replicated state",
            case.name
        );
    }

    async fn check_all(&self, cases: &[Case]) {
        for case in cases {
            self.check(case).await;
        }
    }
}

fn check_answer(case: &Case, status: StatusCode, body: &[u8]) {
    let name = &case.name;
    let limits = Limits::default();
    match &case.expect {
        Expect::Refused(expected, fragments) => {
            let reason = text(body);
            assert_eq!(status, *expected, "{name}: answered {status} {reason:?}");
            for fragment in fragments {
                assert!(
                    reason.contains(fragment.as_str()),
                    "{name}: reason {reason:?} does not contain {fragment:?}"
                );
            }
        }
        Expect::Update(code, fragment) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = ClientUpdateResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a ClientUpdateResponse: {e}"));
            assert_eq!(
                response.response.response_code(),
                *code,
                "{name}: {response:?}"
            );
            assert_eq!(response.seq, 0, "{name}: a refusal has no log position");
            assert!(
                response
                    .response
                    .error_description
                    .contains(fragment.as_str()),
                "{name}: {:?} does not contain {fragment:?}",
                response.response.error_description
            );
        }
        Expect::Submit(code, fragment) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = ClientSubmitResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a ClientSubmitResponse: {e}"));
            assert_eq!(
                response.response.status_code(),
                *code,
                "{name}: {response:?}"
            );
            assert_eq!(response.seq, 0, "{name}: a refusal has no log position");
            assert!(
                response.reason.contains(fragment.as_str()),
                "{name}: {:?} does not contain {fragment:?}",
                response.reason
            );
        }
        Expect::CreateRoom(expected, create_status, fragment) => {
            assert_eq!(status, *expected, "{name}: {}", text(body));
            let response = CreateRoomResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a CreateRoomResponse: {e}"));
            assert_eq!(response.status, *create_status, "{name}");
            assert!(
                response.reason.contains(fragment.as_str()),
                "{name}: {:?} does not contain {fragment:?}",
                response.reason
            );
        }
        Expect::KeyMaterial(user_code) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = KeyMaterialResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a KeyMaterialResponse: {e}"));
            assert_eq!(response.user_status, *user_code, "{name}");
            assert!(response.clients.is_empty(), "{name}: {response:?}");
        }
        Expect::NoContent => {
            assert_eq!(status, StatusCode::NO_CONTENT, "{name}: {}", text(body));
            assert!(body.is_empty(), "{name}");
        }
        Expect::Stream => unreachable!("stream cases are checked in Harness::check"),
    }
}

/// No request above took the node down: it still reports ready.
async fn assert_ready(node: &TestNode) {
    let url = format!("http://{}/readyz", node.node().admin_addr());
    assert_eq!(
        http_get_status(&url).await,
        Some(200),
        "the node stopped serving"
    );
}

// ---------------------------------------------------------------------------------------------
// MLS byte surgery.

/// Offset of `epoch` in an MLSMessage carrying a PublicMessage or PrivateMessage: after
/// `version` (uint16), `wire_format` (uint16) and `group_id<V>` (RFC 9420 §6, §6.2, §6.3).
fn epoch_offset(message: &[u8]) -> usize {
    let (group_id_len, width) = read_varint(message, 4);
    4 + width + group_id_len
}

fn epoch_of(message: &[u8]) -> u64 {
    let at = epoch_offset(message);
    u64::from_be_bytes(message[at..at + 8].try_into().expect("8 bytes"))
}

/// `message` claiming another epoch. The signature no longer verifies, but the hub decides on
/// the epoch and the sender before it verifies anything (MIMI.md §7.3 steps 1-2).
fn with_epoch(message: &[u8], epoch: u64) -> Vec<u8> {
    let at = epoch_offset(message);
    let mut out = message.to_vec();
    out[at..at + 8].copy_from_slice(&epoch.to_be_bytes());
    out
}

/// A fresh KeyPackage of `client`, bare (as `PublishKeyPackagesRequest` carries it).
fn key_package(client: &MimiClient) -> Mls<KeyPackageIn> {
    let bytes = client
        .key_package(false)
        .expect("KeyPackage")
        .tls_serialize_detached()
        .expect("KeyPackage serialises");
    Mls::from_bytes(&bytes).expect("a fresh KeyPackage decodes")
}

fn publish_body(key_packages: Vec<Mls<KeyPackageIn>>, last_resort: bool) -> Vec<u8> {
    encode(&PublishKeyPackagesRequest {
        key_packages,
        last_resort,
    })
}

// ---------------------------------------------------------------------------------------------
// Directory endpoints, authentication, methods, paths and the transport's body limit.

/// register, keyPackages, claim, ack, stream (protocol-06 §5.1 semantics for claims), plus the
/// refusals every endpoint shares: 401 for missing, malformed and wrong bearer tokens, 405 for
/// the wrong method, 404 for unknown paths and 413 over `limits.max_body_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_endpoints_refuse_hostile_input_and_change_nothing_protocol06_5_1() {
    let node = start_node().await;
    let raw = Raw::connect(&node).await;
    let alice = node.client("alice", "phone", 0).await;
    let dave = node.client("dave", "phone", 0).await;
    let mallory = client_id("mallory", "laptop");
    let mallory_token = raw.register(&mallory).await;

    // dave's only KeyPackage, published through the raw path so the test knows its bytes.
    let dave_key_package = key_package(&dave);
    let (status, reply) = dave
        .post_raw(
            &client_path("keyPackages"),
            publish_body(vec![dave_key_package.clone()], false),
        )
        .await
        .expect("publish");
    assert_eq!(status, StatusCode::CREATED, "{}", text(&reply));

    let harness = Harness {
        node: &node,
        raw: &raw,
        clients: BTreeMap::from([("alice", &alice), ("dave", &dave)]),
        watched: Vec::new(),
    };
    let alice_caller = Caller::Client("alice");

    // --- register -------------------------------------------------------------------------
    let register = client_path("register");
    let erin = client_id("erin", "phone");
    let register_body = |client: IdentifierUri| encode(&RegisterClientRequest { client });
    let base = Base {
        op: "register",
        caller: Caller::Anonymous,
        path: register.clone(),
        body: register_body(IdentifierUri::new(erin.as_bytes())),
        prefix_at: Some(0),
        decode: decode_as::<RegisterClientRequest>,
    };
    let mut cases = malformed(&base);
    let bad_uri = |name: &str, client: IdentifierUri, reason: &str| {
        Case::post(
            format!("register: {name}"),
            Caller::Anonymous,
            &register,
            register_body(client),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_uri", "RegisterClientRequest.client", reason],
            ),
        )
    };
    cases.extend([
        bad_uri("client URI not UTF-8", not_utf8(), "not valid UTF-8"),
        bad_uri(
            "https scheme",
            uri("https://localhost/d/erin/phone"),
            "scheme is not mimi://",
        ),
        bad_uri(
            "a user URI where a client URI belongs",
            uri("mimi://localhost/u/erin"),
            "expected a device URI",
        ),
        bad_uri(
            "query in the URI",
            uri("mimi://localhost/d/erin/phone?admin=1"),
            "query or fragment",
        ),
        Case::post(
            "register: client of another provider",
            Caller::Anonymous,
            &register,
            register_body(uri("mimi://example.org/d/erin/phone")),
            refused(StatusCode::FORBIDDEN, &["does not belong to localhost"]),
        ),
        // An existing client's token is never replaced (alice keeps working below).
        Case::post(
            "register: already registered client",
            Caller::Anonymous,
            &register,
            register_body(IdentifierUri::new(alice.id().as_bytes())),
            refused(StatusCode::CONFLICT, &["client is already registered"]),
        ),
        Case::post(
            "register: a body of exactly max_body_bytes reaches the codec",
            Caller::Anonymous,
            &register,
            [
                varint(MAX_BODY - 2, 2),
                b"mimi://localhost/d/erin/".to_vec(),
                vec![b'x'; MAX_BODY - 2 - 24],
            ]
            .concat(),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_uri", "RegisterClientRequest.client", "longer than"],
            ),
        ),
    ]);
    harness.check_all(&cases).await;
    let erin_token = raw.register(&erin).await;

    // --- keyPackages ------------------------------------------------------------------------
    let publish = client_path("keyPackages");
    let fresh = [key_package(&alice), key_package(&alice)];
    let base = Base {
        op: "keyPackages",
        caller: alice_caller.clone(),
        path: publish.clone(),
        body: publish_body(fresh.to_vec(), false),
        prefix_at: Some(0),
        decode: decode_as::<PublishKeyPackagesRequest>,
    };
    let mut cases = malformed(&base);
    let mut bad_bool = base.body.clone();
    *bad_bool.last_mut().expect("non-empty") = 2;
    let mut bad_signature = fresh[0].bytes().to_vec();
    *bad_signature.last_mut().expect("non-empty") ^= 0x01;
    let publish_case = |name: &str, body: Vec<u8>, fragments: &[&str]| {
        Case::post(
            format!("keyPackages: {name}"),
            alice_caller.clone(),
            &publish,
            body,
            refused(StatusCode::BAD_REQUEST, fragments),
        )
    };
    cases.extend([
        publish_case(
            "last_resort is neither 0 nor 1",
            bad_bool,
            &[
                "bad_bool",
                "PublishKeyPackagesRequest.last_resort: boolean 2",
            ],
        ),
        publish_case(
            "empty batch",
            publish_body(Vec::new(), false),
            &["no KeyPackage to publish"],
        ),
        publish_case(
            "a KeyPackage that is not one",
            [varint(12, 1), vec![0xff; 12], vec![0]].concat(),
            &[
                "bad_mls_structure",
                "PublishKeyPackagesRequest.key_packages",
            ],
        ),
        publish_case(
            "another client's KeyPackage",
            publish_body(vec![key_package(&dave)], false),
            &[
                "KeyPackage 0",
                "credential identity is not the publishing client's URI",
            ],
        ),
        publish_case(
            "a signature that does not verify",
            publish_body(
                vec![Mls::from_bytes(&bad_signature).expect("still a KeyPackage structurally")],
                false,
            ),
            &["KeyPackage 0", "signature is invalid"],
        ),
        publish_case(
            "the same KeyPackage twice in one batch",
            publish_body(vec![fresh[0].clone(), fresh[0].clone()], false),
            &["KeyPackage 1 is a duplicate"],
        ),
        publish_case(
            "a single-use KeyPackage offered as last resort",
            publish_body(vec![fresh[0].clone()], true),
            &["KeyPackage 0: last_resort extension present = false"],
        ),
        Case::post(
            "keyPackages: more KeyPackages than max_key_packages_per_publish",
            alice_caller.clone(),
            &publish,
            publish_body(
                (0..=MAX_KEY_PACKAGES_PER_PUBLISH)
                    .map(|_| key_package(&alice))
                    .collect(),
                false,
            ),
            refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                &[&format!(
                    "{} KeyPackages in one request; the limit is {MAX_KEY_PACKAGES_PER_PUBLISH}",
                    MAX_KEY_PACKAGES_PER_PUBLISH + 1
                )],
            ),
        ),
        publish_case(
            "two KeyPackages offered as last resort",
            publish_body(fresh.to_vec(), true),
            &["exactly one KeyPackage, not 2"],
        ),
    ]);
    harness.check_all(&cases).await;
    let (status, reply) = alice
        .post_raw(&publish, base.body.clone())
        .await
        .expect("publish");
    assert_eq!(
        (status, text(&reply).as_str()),
        (StatusCode::CREATED, "2 KeyPackages published")
    );
    harness
        .check(&publish_case(
            "KeyPackages already stored",
            base.body.clone(),
            &["KeyPackage 0 is a duplicate"],
        ))
        .await;

    // --- keyMaterial (protocol-06 §5.1, signed by the client) ---------------------------------
    let claim = client_path("keyMaterial");
    let clubhouse = room("clubhouse");
    let valid = alice
        .key_material_request(&user("dave"), &clubhouse)
        .expect("alice signs a KeyMaterialRequest");
    // Requests the test signs itself. Any key will do: nothing outside a group binds a
    // signature key to a credential, which is why the node also checks the bearer token.
    let forger = SignatureKeyPair::new(SignatureScheme::ED25519).expect("Ed25519 key pair");
    let resigned = |edit: &dyn Fn(&mut KeyMaterialRequestTbs)| {
        let mut tbs = valid.tbs.clone();
        tbs.requester_signature_key = SignaturePublicKey(forger.public().to_vec());
        edit(&mut tbs);
        encode(&KeyMaterialRequest::sign(tbs, &forger).expect("the test signs"))
    };
    let base = Base {
        op: "keyMaterial",
        caller: alice_caller.clone(),
        path: claim.clone(),
        body: encode(&valid),
        // `requestingUser`'s length, after the one-byte `protocol`.
        prefix_at: Some(1),
        decode: decode_as::<KeyMaterialRequest>,
    };
    let mut cases = malformed(&base);
    let key_material_case = |name: &str, caller: Caller, body: Vec<u8>, expect: Expect| {
        Case::post(format!("keyMaterial: {name}"), caller, &claim, body, expect)
    };
    let bad_target = |name: &str, target: IdentifierUri, reason: &str| {
        key_material_case(
            name,
            alice_caller.clone(),
            resigned(&|tbs| tbs.target_user = target.clone()),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_uri", "KeyMaterialRequest.targetUser", reason],
            ),
        )
    };
    cases.extend([
        bad_target("target not UTF-8", not_utf8(), "not valid UTF-8"),
        bad_target(
            "https scheme",
            uri("https://localhost/u/dave"),
            "scheme is not mimi://",
        ),
        bad_target(
            "a client URI where a user URI belongs",
            IdentifierUri::new(dave.id().as_bytes()),
            "expected a user URI",
        ),
        bad_target(
            "a room URI where a user URI belongs",
            uri("mimi://localhost/r/clubhouse"),
            "expected a user URI",
        ),
    ]);
    // MIMI.md §5.1: roomId MUST be present when fetching for a room, and a client only ever
    // fetches for one.
    for (name, room_id) in [
        ("roomId empty", uri("")),
        (
            "a user URI where the room URI belongs",
            uri("mimi://localhost/u/alice"),
        ),
    ] {
        let reason = room_id
            .room("KeyMaterialRequest.roomId")
            .expect_err("not a room URI")
            .to_string();
        cases.push(key_material_case(
            name,
            alice_caller.clone(),
            resigned(&|tbs| tbs.room_id = room_id.clone()),
            refused(StatusCode::BAD_REQUEST, &["bad_uri", &reason]),
        ));
    }
    // protocol-06 §5.1 requires a non-empty list; our encoder refuses to write one, so the
    // body is put together by hand.
    let empty_suites = {
        let tbs = &valid.tbs;
        let mut w = Writer::new();
        let encoded: [&dyn Encode; 4] = [
            &tbs.protocol,
            &tbs.requesting_user,
            &tbs.target_user,
            &tbs.room_id,
        ];
        for field in encoded {
            field.encode(&mut w).expect("encodes");
        }
        w.vector_of::<CipherSuite>("acceptableCiphersuites", &[])
            .expect("encodes");
        let encoded: [&dyn Encode; 3] = [
            &tbs.required_capabilities,
            &tbs.requester_signature_key,
            &tbs.requester_credential,
        ];
        for field in encoded {
            field.encode(&mut w).expect("encodes");
        }
        w.opaque("signature", &valid.key_material_request_signature)
            .expect("encodes");
        w.into_bytes()
    };
    let mut bad_signature = valid.clone();
    bad_signature.key_material_request_signature[5] ^= 0x01;
    let mut other_key = valid.clone();
    other_key.tbs.requester_signature_key = SignaturePublicKey(forger.public().to_vec());
    let mut short_signature = valid.clone();
    short_signature.key_material_request_signature.truncate(63);
    let basic = |identity: &str| -> Mls<Credential> {
        Mls::from_value(BasicCredential::new(identity.as_bytes().to_vec()).into())
            .expect("a basic credential encodes")
    };
    cases.extend([
        key_material_case(
            "empty acceptableCiphersuites",
            alice_caller.clone(),
            empty_suites.clone(),
            codec_refusal(
                "keyMaterial: empty acceptableCiphersuites",
                decode_as::<KeyMaterialRequest>,
                &empty_suites,
                &["invalid_value"],
            ),
        ),
        key_material_case(
            "only cipher suites this provider does not verify",
            alice_caller.clone(),
            resigned(&|tbs| {
                tbs.acceptable_ciphersuites = vec![CipherSuite(2), CipherSuite(0x0a0a)]
            }),
            refused(
                StatusCode::BAD_REQUEST,
                &[
                    "unsupported_ciphersuite",
                    "none of [0x0002, 0x0a0a] is supported",
                ],
            ),
        ),
        key_material_case(
            "requestingUser is a client URI",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requesting_user = IdentifierUri::new(alice.id().as_bytes())),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_uri", "KeyMaterialRequest.requestingUser"],
            ),
        ),
        key_material_case(
            "an X.509 credential",
            alice_caller.clone(),
            resigned(&|tbs| {
                tbs.requester_credential = Mls::from_value(Credential::new(
                    CredentialType::X509,
                    alice.id().as_bytes().to_vec(),
                ))
                .expect("an X.509 credential encodes")
            }),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_credential", "credential type 2 is not supported"],
            ),
        ),
        key_material_case(
            "a credential naming a user, not a client",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requester_credential = basic("mimi://localhost/u/alice")),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_credential", "credential identity is not a client URI"],
            ),
        ),
        key_material_case(
            "a public key that is not an Ed25519 key",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requester_signature_key = SignaturePublicKey(vec![7; 31])),
            refused(StatusCode::BAD_REQUEST, &["malformed_signature_key"]),
        ),
        key_material_case(
            "a signature that is not an Ed25519 signature",
            alice_caller.clone(),
            encode(&short_signature),
            refused(
                StatusCode::BAD_REQUEST,
                &["malformed_signature", "(63 bytes)"],
            ),
        ),
        key_material_case(
            "a signature with one bit flipped",
            alice_caller.clone(),
            encode(&bad_signature),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "bad_signature",
                    "KeyMaterialRequest.key_material_request_signature",
                    "does not verify",
                ],
            ),
        ),
        key_material_case(
            "signed by another key than requesterSignatureKey",
            alice_caller.clone(),
            encode(&other_key),
            refused(StatusCode::FORBIDDEN, &["bad_signature"]),
        ),
        key_material_case(
            "a credential of another user than requestingUser",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requester_credential = basic(dave.id().as_str())),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "credential_user_mismatch",
                    "names mimi://localhost/d/dave/phone, which is not a client of \
                     requestingUser mimi://localhost/u/alice",
                ],
            ),
        ),
        key_material_case(
            "a credential of another client of the token's user",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requester_credential = basic("mimi://localhost/d/alice/laptop")),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "the request is signed as mimi://localhost/d/alice/laptop, but the bearer \
                   token authenticates mimi://localhost/d/alice/phone",
                ],
            ),
        ),
        key_material_case(
            "signed consistently as another user",
            alice_caller.clone(),
            resigned(&|tbs| {
                tbs.requesting_user = IdentifierUri::new(user("dave").as_bytes());
                tbs.requester_credential = basic(dave.id().as_str());
            }),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "signed as mimi://localhost/d/dave/phone, but the bearer token \
                   authenticates mimi://localhost/d/alice/phone",
                ],
            ),
        ),
        // A signed request is not a bearer credential: replayed by another client it is refused.
        key_material_case(
            "alice's valid request sent with dave's token",
            Caller::Client("dave"),
            encode(&valid),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "signed as mimi://localhost/d/alice/phone, but the bearer token \
                   authenticates mimi://localhost/d/dave/phone",
                ],
            ),
        ),
        key_material_case(
            "user of another provider",
            alice_caller.clone(),
            resigned(&|tbs| tbs.target_user = uri("mimi://example.org/u/dave")),
            // Forwarded to the user's provider (MIMI.md §5.1), which is not a peer.
            refused(
                StatusCode::BAD_GATEWAY,
                &["cannot resolve peer example.org", "not a configured peer"],
            ),
        ),
        key_material_case(
            "unknown local user",
            alice_caller.clone(),
            resigned(&|tbs| tbs.target_user = uri("mimi://localhost/u/nobody")),
            Expect::KeyMaterial(KeyMaterialUserCode::UserUnknown),
        ),
    ]);
    harness.check_all(&cases).await;
    // None of the above consumed dave's only KeyPackage: the valid claim gets exactly it, and
    // the next one finds nothing (protocol-06 §5.1: a KeyPackage is served once).
    let (status, reply) = alice
        .post_raw(&claim, base.body.clone())
        .await
        .expect("claim");
    assert_eq!(status, StatusCode::OK, "{}", text(&reply));
    let response = KeyMaterialResponse::from_bytes(&reply, &limits()).expect("KeyMaterialResponse");
    assert_eq!(response.user_status, KeyMaterialUserCode::Success);
    assert_eq!(response.clients.len(), 1);
    match &response.clients[0].material {
        ClientMaterial::Success { key_package } => assert_eq!(key_package, &dave_key_package),
        other => panic!("dave's KeyPackage was consumed by a refused claim: {other:?}"),
    }
    let (status, reply) = alice
        .post_raw(&claim, base.body.clone())
        .await
        .expect("claim");
    assert_eq!(status, StatusCode::OK, "{}", text(&reply));
    let response = KeyMaterialResponse::from_bytes(&reply, &limits()).expect("KeyMaterialResponse");
    assert_eq!(
        response.user_status,
        KeyMaterialUserCode::NoCompatibleMaterial
    );
    harness
        .check(&Case::post(
            "keyPackages: a KeyPackage that was already claimed",
            Caller::Client("dave"),
            &publish,
            publish_body(vec![dave_key_package.clone()], false),
            refused(
                StatusCode::BAD_REQUEST,
                &["KeyPackage 0 was already claimed"],
            ),
        ))
        .await;

    // --- ack (no rooms here: acknowledgements of rooms one is not in change nothing) ---------
    let ack = client_path("ack");
    let ack_body = |acks: Vec<AckEntry>| encode(&AckRequest { acks });
    let base = Base {
        op: "ack",
        caller: alice_caller.clone(),
        path: ack.clone(),
        body: ack_body(vec![AckEntry {
            room: IdentifierUri::new(room("nowhere").as_bytes()),
            seq: 1,
        }]),
        prefix_at: Some(0),
        decode: decode_as::<AckRequest>,
    };
    let mut cases = malformed(&base);
    cases.extend([
        Case::post(
            "ack: a user URI where a room URI belongs",
            alice_caller.clone(),
            &ack,
            ack_body(vec![AckEntry {
                room: uri("mimi://localhost/u/alice"),
                seq: 1,
            }]),
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_uri", "AckEntry.room", "expected a room URI"],
            ),
        ),
        Case::post(
            "ack: unknown room",
            alice_caller.clone(),
            &ack,
            base.body.clone(),
            Expect::NoContent,
        ),
        Case::post(
            "ack: room of another provider",
            alice_caller.clone(),
            &ack,
            ack_body(vec![AckEntry {
                room: uri("mimi://example.org/r/elsewhere"),
                seq: u64::MAX,
            }]),
            Expect::NoContent,
        ),
        Case::post(
            "ack: empty list",
            alice_caller.clone(),
            &ack,
            ack_body(Vec::new()),
            Expect::NoContent,
        ),
    ]);
    harness.check_all(&cases).await;

    // --- authentication, methods, paths, body limit ------------------------------------------
    let room_param = room("clubhouse");
    let authenticated: Vec<(Method, String, Vec<u8>)> = vec![
        (
            Method::POST,
            publish.clone(),
            publish_body(vec![key_package(&alice)], false),
        ),
        (Method::POST, claim.clone(), encode(&valid)),
        (Method::POST, client_path("rooms"), Vec::new()),
        (Method::POST, room_path("update", &room_param), Vec::new()),
        (
            Method::POST,
            room_path("submitMessage", &room_param),
            Vec::new(),
        ),
        (Method::GET, client_path("stream"), Vec::new()),
        (Method::POST, ack.clone(), ack_body(Vec::new())),
    ];
    let not_utf8_header =
        HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("obs-text is a valid header value");
    let mut cases = Vec::new();
    for (method, path, body) in &authenticated {
        let credentials: [(&str, Caller, &str); 6] = [
            (
                "no authorization header",
                Caller::Anonymous,
                "missing bearer token",
            ),
            (
                "token not base64url",
                Caller::Header(HeaderValue::from_static("Bearer not*base64")),
                "malformed bearer token",
            ),
            (
                "another scheme",
                Caller::Header(
                    HeaderValue::from_str(&format!("Basic {mallory_token}")).expect("header"),
                ),
                "malformed bearer token",
            ),
            (
                "token too short to hold a secret",
                Caller::Header(HeaderValue::from_static("Bearer bWltaTovL2xvY2FsaG9zdA")),
                "malformed bearer token",
            ),
            (
                "header not UTF-8",
                Caller::Header(not_utf8_header.clone()),
                "malformed bearer token",
            ),
            (
                "wrong secret",
                Caller::Header(bearer(&tampered(&mallory_token))),
                "unknown client or wrong token",
            ),
        ];
        for (what, caller, reason) in credentials {
            cases.push(Case {
                name: format!("{method} {path}: {what}"),
                caller,
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
                expect: refused(StatusCode::UNAUTHORIZED, &[reason]),
            });
        }
    }
    let endpoints: [(&str, String, Method); 8] = [
        ("client_register", register.clone(), Method::POST),
        ("client_key_packages", publish.clone(), Method::POST),
        ("client_key_material", claim.clone(), Method::POST),
        ("client_create_room", client_path("rooms"), Method::POST),
        (
            "client_update",
            room_path("update", &room_param),
            Method::POST,
        ),
        (
            "client_submit_message",
            room_path("submitMessage", &room_param),
            Method::POST,
        ),
        ("client_stream", client_path("stream"), Method::GET),
        ("client_ack", ack.clone(), Method::POST),
    ];
    for (endpoint, path, allowed) in &endpoints {
        let wrong = if *allowed == Method::GET {
            [Method::POST, Method::PUT, Method::DELETE]
        } else {
            [Method::GET, Method::PUT, Method::DELETE]
        };
        for method in wrong {
            cases.push(Case {
                name: format!("{method} {path}: wrong method"),
                caller: Caller::Header(bearer(&mallory_token)),
                method,
                path: path.clone(),
                body: Vec::new(),
                expect: refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &[&format!("{endpoint} takes {allowed}")],
                ),
            });
        }
        if *allowed == Method::POST {
            cases.push(Case {
                name: format!("POST {path}: body over max_body_bytes"),
                caller: Caller::Header(bearer(&mallory_token)),
                method: Method::POST,
                path: path.clone(),
                body: vec![0; MAX_BODY + 1],
                expect: refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &[&format!(
                        "request body exceeds the limit of {MAX_BODY} bytes"
                    )],
                ),
            });
        }
    }
    for path in [
        "/".to_string(),
        "/client/v1/".to_string(),
        client_path("registerClient"),
        client_path("register/extra"),
        client_path("update"),
        client_path("submitMessage"),
        client_path("stream/extra"),
        "/client/v2/register".to_string(),
        "/v1/noSuchEndpoint/x".to_string(),
    ] {
        cases.push(Case {
            name: format!("POST {path}: unknown path"),
            caller: Caller::Header(bearer(&mallory_token)),
            method: Method::POST,
            path,
            body: Vec::new(),
            expect: refused(StatusCode::NOT_FOUND, &["no such endpoint"]),
        });
    }
    // The server-to-server API (MIMI.md §3.1) opens only to a provider's client certificate,
    // never to a client's bearer token.
    cases.push(Case {
        name: "POST /v1/keyMaterial with a bearer token: server-to-server API".into(),
        caller: Caller::Header(bearer(&mallory_token)),
        method: Method::POST,
        path: "/v1/keyMaterial/mimi%3A%2F%2Flocalhost%2Fu%2Fdave".to_string(),
        body: Vec::new(),
        expect: refused(StatusCode::UNAUTHORIZED, &["client certificate required"]),
    });
    harness.check_all(&cases).await;

    // The node still serves, every token registered above works, and alice's was not replaced.
    for token in [&mallory_token, &erin_token] {
        harness
            .check(&Case {
                name: "GET stream with a valid token".into(),
                caller: Caller::Header(bearer(token)),
                method: Method::GET,
                path: client_path("stream"),
                body: Vec::new(),
                expect: Expect::Stream,
            })
            .await;
    }
    harness
        .check(&Case::post(
            "ack: valid",
            alice_caller.clone(),
            &ack,
            base.body.clone(),
            Expect::NoContent,
        ))
        .await;
    assert_ready(&node).await;
    raw.http.close().await;
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Room endpoints.

/// The log's Commit items of `room`, as MLSMessage bytes, oldest first.
fn commits(node: &TestNode, room: &RoomId) -> Vec<Vec<u8>> {
    let hub = node.node().hub();
    let shard = hub.shards().for_room(room).read();
    let state = shard.room(room).expect("the room exists");
    state
        .items_after(0)
        .iter()
        .filter_map(|item| match &item.body {
            ItemBody::Commit { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// (epoch, GroupInfo MLSMessage, ratchet tree, last seq) of `room` as the hub holds them.
fn room_view(node: &TestNode, room: &RoomId) -> (u64, Vec<u8>, Vec<u8>, u64) {
    let hub = node.node().hub();
    let shard = hub.shards().for_room(room).read();
    let state = shard.room(room).expect("the room exists");
    (
        state.epoch(),
        state.group_info().expect("a room has a GroupInfo").to_vec(),
        state.ratchet_tree(),
        state.last_seq(),
    )
}

fn acked(node: &TestNode, room: &RoomId, client: &ClientId) -> u64 {
    let hub = node.node().hub();
    let shard = hub.shards().for_room(room).read();
    shard.room(room).expect("the room exists").acked(client)
}

/// rooms, update/{room}, submitMessage/{room} and ack against a room with two members: the
/// codec's refusals, the wrong MLS structures, unknown and foreign rooms, stale and future
/// epochs (protocol-06 §5.2 `wrongEpoch`, §5.3 `epochTooOld` / `notAllowed`), senders that are
/// not the MLS sender or not members (MIMI.md §7.3 step 2, §7.4 step 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_endpoints_refuse_hostile_input_and_change_nothing_protocol06_5_2_5_3() {
    let node = start_node().await;
    let raw = Raw::connect(&node).await;
    let mut alice = node.client("alice", "phone", 0).await;
    let mut bob = node.client("bob", "phone", 1).await;
    let carol = node.client("carol", "phone", 0).await;
    let hostile = room("hostile");
    let side = room("side");

    alice.create_room(&hostile).await.expect("room created");
    alice.create_room(&side).await.expect("side room created");
    // Built at epoch 0, submitted after the room moved on: epochTooOld.
    let epoch0_message = alice
        .prepare_text(&hostile, "from epoch 0")
        .expect("message");
    let other_group_message = alice
        .prepare_text(&side, "for the side room")
        .expect("message");
    bob.connect_stream().await.expect("stream opens");
    let added = alice
        .add_users(&hostile, &[user("bob")])
        .await
        .expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    match bob.next_event(WAIT).await.expect("stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("bob expected a Welcome, got {other:?}"),
    }

    let (epoch, group_info, ratchet_tree, _) = room_view(&node, &hostile);
    assert_eq!(epoch, 1);
    let accepted_commit = commits(&node, &hostile).pop().expect("the add commit");
    assert_eq!(epoch_of(&accepted_commit), 0);
    let message = alice.prepare_text(&hostile, "hello").expect("message");
    assert_eq!(epoch_of(&message), 1);
    let group_info_message = MlsMessage::from_bytes(&group_info).expect("GroupInfo MLSMessage");
    let key_package_message = MlsMessage::wrap(&key_package(&carol)).expect("KeyPackage message");
    let commit_message = MlsMessage::from_bytes(&accepted_commit).expect("commit message");

    let harness = Harness {
        node: &node,
        raw: &raw,
        clients: BTreeMap::from([("alice", &alice), ("bob", &bob), ("carol", &carol)]),
        watched: vec![hostile.clone(), side.clone()],
    };
    let alice_caller = Caller::Client("alice");

    // --- rooms --------------------------------------------------------------------------------
    let rooms = client_path("rooms");
    let create_body = |room_uri: IdentifierUri, group_info: &[u8], tree: &[u8]| {
        let mut w = Writer::new();
        room_uri.encode(&mut w).expect("room");
        w.raw(group_info);
        w.opaque("ratchet_tree", tree).expect("tree");
        w.into_bytes()
    };
    let hostile_uri = IdentifierUri::new(hostile.as_bytes());
    let base = Base {
        op: "rooms",
        caller: alice_caller.clone(),
        path: rooms.clone(),
        body: encode(&CreateRoomRequest {
            room: hostile_uri.clone(),
            group_info: group_info_message.clone(),
            ratchet_tree: Mls::from_bytes(&ratchet_tree).expect("tree"),
        }),
        prefix_at: Some(0),
        decode: decode_as::<CreateRoomRequest>,
    };
    let mut cases = malformed(&base);
    let mut tree_with_trailing = ratchet_tree.clone();
    tree_with_trailing.push(0);
    let create_refused = |name: &str, body: Vec<u8>, fragments: &[&str]| {
        Case::post(
            format!("rooms: {name}"),
            alice_caller.clone(),
            &rooms,
            body,
            refused(StatusCode::BAD_REQUEST, fragments),
        )
    };
    cases.extend([
        Case::post(
            "rooms: the room exists",
            alice_caller.clone(),
            &rooms,
            base.body.clone(),
            Expect::CreateRoom(
                StatusCode::CONFLICT,
                CreateRoomStatus::Exists,
                "room exists".into(),
            ),
        ),
        Case::post(
            "rooms: a GroupInfo with two members for a new room",
            alice_caller.clone(),
            &rooms,
            create_body(uri("mimi://localhost/r/copy"), &group_info, &ratchet_tree),
            Expect::CreateRoom(
                StatusCode::BAD_REQUEST,
                CreateRoomStatus::Invalid,
                "exactly one member, found 2".into(),
            ),
        ),
        create_refused(
            "a KeyPackage where the GroupInfo belongs",
            create_body(
                uri("mimi://localhost/r/new"),
                key_package_message.bytes(),
                &ratchet_tree,
            ),
            &[
                "unexpected_mls_message",
                "CreateRoomRequest.group_info: expected a GroupInfo, found a KeyPackage",
            ],
        ),
        create_refused(
            "a commit where the GroupInfo belongs",
            create_body(
                uri("mimi://localhost/r/new"),
                &accepted_commit,
                &ratchet_tree,
            ),
            &["unexpected_mls_message", "found a PublicMessage commit"],
        ),
        create_refused(
            "a ratchet tree that is not one",
            create_body(uri("mimi://localhost/r/new"), &group_info, &[0xff; 16]),
            &["CreateRoomRequest.ratchet_tree"],
        ),
        create_refused(
            "bytes after the ratchet tree inside its vector",
            create_body(
                uri("mimi://localhost/r/new"),
                &group_info,
                &tree_with_trailing,
            ),
            &["trailing_bytes", "1 trailing bytes"],
        ),
        create_refused(
            "room of another provider",
            create_body(uri("mimi://example.org/r/new"), &group_info, &ratchet_tree),
            &["must be in this provider's domain localhost"],
        ),
        create_refused(
            "room URI not UTF-8",
            create_body(not_utf8(), &group_info, &ratchet_tree),
            &["bad_uri", "CreateRoomRequest.room", "not valid UTF-8"],
        ),
        create_refused(
            "a user URI where a room URI belongs",
            create_body(uri("mimi://localhost/u/alice"), &group_info, &ratchet_tree),
            &["bad_uri", "CreateRoomRequest.room", "expected a room URI"],
        ),
    ]);
    harness.check_all(&cases).await;

    // --- update/{room} ------------------------------------------------------------------------
    let update = room_path("update", &hostile);
    // The accepted add commit (epoch 0) with the room's current GroupInfo: well-formed, but the
    // room is at epoch 1, so the hub answers wrongEpoch (MIMI.md §7.3 step 1, §7.6: a replayed
    // commit).
    let replay = encode(&UpdateRequest {
        bundle: HandshakeBundle::Commit {
            commit: commit_message.clone(),
            welcome: None,
            group_info_option: GroupInfoOption::Full(
                group_info_message
                    .unwrap_body("groupInfo")
                    .expect("bare GroupInfo"),
            ),
            ratchet_tree_option: RatchetTreeOption::DistributionService,
        },
    });
    let commit_len = accepted_commit.len();
    let bare_group_info = &group_info[4..];
    let base = Base {
        op: "update",
        caller: alice_caller.clone(),
        path: update.clone(),
        body: replay.clone(),
        prefix_at: None,
        decode: decode_update,
    };
    let mut cases = malformed(&base);
    let bundle = |commit: &[u8], tail: &[&[u8]]| [&[commit][..], tail].concat().concat();
    let update_codec = |name: &str, body: Vec<u8>, class: &[&str]| {
        let name = format!("update: {name}");
        let expect = codec_refusal(&name, decode_update, &body, class);
        Case::post(name, alice_caller.clone(), &update, body, expect)
    };
    let mut group_id_non_minimal = accepted_commit.clone();
    {
        let (len, width) = read_varint(&accepted_commit, 4);
        let longer = varint(len, if width == 1 { 2 } else { 4 });
        group_id_non_minimal.splice(4..4 + width, longer);
    }
    cases.extend([
        update_codec(
            "an application PrivateMessage",
            message.clone(),
            &["unexpected_mls_message"],
        ),
        update_codec(
            "a KeyPackage",
            key_package_message.bytes().to_vec(),
            &["unexpected_mls_message"],
        ),
        update_codec(
            "welcome presence flag 2",
            bundle(&accepted_commit, &[&[2]]),
            &["bad_optional"],
        ),
        update_codec(
            "groupInfoOption representation 0",
            bundle(&accepted_commit, &[&[0, 0], bare_group_info, &[4]]),
            &["bad_enum"],
        ),
        update_codec(
            "partial GroupInfo",
            bundle(
                &accepted_commit,
                &[&[0, 2, 1, 0], &varint(1, 1), &[0xaa], &[4]],
            ),
            &["unsupported"],
        ),
        update_codec(
            "ratchetTreeOption representation 0",
            bundle(&accepted_commit, &[&[0, 1], bare_group_info, &[0]]),
            &["bad_enum"],
        ),
        // openmls reads the KeyPackage's fields as GroupInfo fields, so which one fails first
        // depends on the KeyPackage's random keys; any of these is a precise answer.
        update_codec(
            "a KeyPackage where the GroupInfo belongs",
            bundle(
                &accepted_commit,
                &[&[0, 1], key_package_message.bytes(), &[4]],
            ),
            &[
                "bad_mls_structure",
                "truncated",
                "trailing_bytes",
                "bad_enum",
            ],
        ),
        update_codec(
            "non-minimal group_id prefix inside the MLSMessage",
            bundle(&group_id_non_minimal, &[&replay[commit_len..]]),
            &["bad_mls_structure"],
        ),
    ]);
    let update_verdict = |name: &str, caller: Caller, body: Vec<u8>, code, fragment: String| {
        Case::post(
            format!("update: {name}"),
            caller,
            &update,
            body,
            Expect::Update(code, fragment),
        )
    };
    let current_epoch_commit = bundle(&with_epoch(&accepted_commit, 1), &[&replay[commit_len..]]);
    cases.extend([
        update_verdict(
            "a replayed commit (stale epoch)",
            alice_caller.clone(),
            replay.clone(),
            UpdateResponseCode::WrongEpoch,
            "the room is at epoch 1".into(),
        ),
        update_verdict(
            "a commit for a future epoch",
            alice_caller.clone(),
            bundle(&with_epoch(&accepted_commit, 7), &[&replay[commit_len..]]),
            UpdateResponseCode::WrongEpoch,
            "the room is at epoch 1".into(),
        ),
        update_verdict(
            "a member posting another member's commit",
            Caller::Client("bob"),
            current_epoch_commit.clone(),
            UpdateResponseCode::NotAllowed,
            format!("not by the submitting client {}", bob.id()),
        ),
        update_verdict(
            "a non-member replaying a stale commit learns no epoch",
            Caller::Client("carol"),
            replay.clone(),
            UpdateResponseCode::NotAllowed,
            format!("{} is not a member of this room", carol.id()),
        ),
        update_verdict(
            "a non-member posting a member's commit",
            Caller::Client("carol"),
            current_epoch_commit.clone(),
            UpdateResponseCode::NotAllowed,
            format!("{} is not a member of this room", carol.id()),
        ),
        update_verdict(
            "a commit whose signed content was altered",
            alice_caller.clone(),
            current_epoch_commit.clone(),
            UpdateResponseCode::NotAllowed,
            "the message signature does not verify".into(),
        ),
    ]);
    let update_path_cases = [
        (
            room_path("update", &room("nowhere")),
            StatusCode::NOT_FOUND,
            "unknown room",
        ),
        (
            // Forwarded to the room's hub, which is not a peer.
            format!("{PREFIX}update/mimi%3A%2F%2Fexample.org%2Fr%2Fhostile"),
            StatusCode::BAD_GATEWAY,
            "cannot resolve peer example.org",
        ),
        (
            format!("{PREFIX}update/%FF"),
            StatusCode::BAD_REQUEST,
            "not UTF-8 after percent-decoding",
        ),
        (
            format!("{PREFIX}update/localhost/u/alice/x"),
            StatusCode::BAD_REQUEST,
            "is not a room",
        ),
        (
            format!("{PREFIX}update/"),
            StatusCode::BAD_REQUEST,
            "is not a room",
        ),
        (
            format!("{PREFIX}update/localhost/d/alice"),
            StatusCode::BAD_REQUEST,
            "room path parameter",
        ),
    ];
    for (path, status, reason) in update_path_cases {
        cases.push(Case::post(
            format!("update: room path {path}"),
            alice_caller.clone(),
            &path,
            replay.clone(),
            refused(status, &[reason]),
        ));
    }
    // MIMI.md §3.2 [IMPL CHOICE]: the other path forms name the same room.
    for path in [
        format!("{PREFIX}update/localhost/r/hostile"),
        format!("{PREFIX}update/localhost/hostile"),
    ] {
        cases.push(Case::post(
            format!("update: room path form {path}"),
            alice_caller.clone(),
            &path,
            replay.clone(),
            Expect::Update(
                UpdateResponseCode::WrongEpoch,
                "the room is at epoch 1".into(),
            ),
        ));
    }
    harness.check_all(&cases).await;

    // --- submitMessage/{room} ------------------------------------------------------------------
    let submit = room_path("submitMessage", &hostile);
    let submit_body = |app_message: &[u8], sending: IdentifierUri| {
        let mut w = Writer::new();
        Protocol::Mls10.encode(&mut w).expect("protocol");
        w.raw(app_message);
        sending.encode(&mut w).expect("sendingUri");
        w.into_bytes()
    };
    let alice_uri = IdentifierUri::new(alice.user().as_bytes());
    let valid_submit = encode(&SubmitMessageRequest {
        protocol: Protocol::Mls10,
        app_message: MlsMessage::from_bytes(&message).expect("message"),
        sending_uri: alice_uri.clone(),
    });
    let base = Base {
        op: "submitMessage",
        caller: alice_caller.clone(),
        path: submit.clone(),
        body: valid_submit.clone(),
        prefix_at: Some(1 + message.len()),
        decode: decode_as::<SubmitMessageRequest>,
    };
    let mut cases = malformed(&base);
    let mut protocol_2 = valid_submit.clone();
    protocol_2[0] = 2;
    let submit_refused = |name: &str, caller: Caller, body: Vec<u8>, status, fragments: &[&str]| {
        Case::post(
            format!("submitMessage: {name}"),
            caller,
            &submit,
            body,
            refused(status, fragments),
        )
    };
    let submit_verdict = |name: &str, caller: Caller, body: Vec<u8>, code, fragment: String| {
        Case::post(
            format!("submitMessage: {name}"),
            caller,
            &submit,
            body,
            Expect::Submit(code, fragment),
        )
    };
    cases.extend([
        submit_refused(
            "protocol 2",
            alice_caller.clone(),
            protocol_2,
            StatusCode::BAD_REQUEST,
            &["bad_enum", "Protocol: 2 is not a defined value"],
        ),
        submit_refused(
            "sendingUri not UTF-8",
            alice_caller.clone(),
            submit_body(&message, not_utf8()),
            StatusCode::BAD_REQUEST,
            &[
                "bad_uri",
                "SubmitMessageRequest.sendingUri",
                "not valid UTF-8",
            ],
        ),
        submit_refused(
            "sendingUri with an https scheme",
            alice_caller.clone(),
            submit_body(&message, uri("https://localhost/u/alice")),
            StatusCode::BAD_REQUEST,
            &["bad_uri", "scheme is not mimi://"],
        ),
        submit_refused(
            "sendingUri of another user",
            alice_caller.clone(),
            submit_body(&message, IdentifierUri::new(bob.user().as_bytes())),
            StatusCode::FORBIDDEN,
            &["is not the authenticated client's user mimi://localhost/u/alice"],
        ),
        submit_verdict(
            "a PublicMessage commit",
            alice_caller.clone(),
            submit_body(&accepted_commit, alice_uri.clone()),
            SubmitResponseCode::NotAllowed,
            "application messages must be PrivateMessage".into(),
        ),
        submit_verdict(
            "a GroupInfo",
            alice_caller.clone(),
            submit_body(&group_info, alice_uri.clone()),
            SubmitResponseCode::NotAllowed,
            "application messages must be PrivateMessage".into(),
        ),
        submit_verdict(
            "a message of another room's group",
            alice_caller.clone(),
            submit_body(&other_group_message, alice_uri.clone()),
            SubmitResponseCode::NotAllowed,
            "for another MLS group than this room's".into(),
        ),
        submit_verdict(
            "a message for a future epoch",
            alice_caller.clone(),
            submit_body(&with_epoch(&message, 2), alice_uri.clone()),
            SubmitResponseCode::NotAllowed,
            "the message is for epoch 2, ahead of the room's epoch 1".into(),
        ),
        submit_verdict(
            "a message of a past epoch",
            alice_caller.clone(),
            submit_body(&epoch0_message, alice_uri.clone()),
            SubmitResponseCode::EpochTooOld,
            "the room is at epoch 1".into(),
        ),
        submit_verdict(
            "a non-member sending",
            Caller::Client("carol"),
            submit_body(&message, IdentifierUri::new(carol.user().as_bytes())),
            SubmitResponseCode::NotAllowed,
            format!("{} is not a member of the room's MLS group", carol.id()),
        ),
    ]);
    cases.push(Case::post(
        "submitMessage: unknown room",
        alice_caller.clone(),
        &room_path("submitMessage", &room("nowhere")),
        valid_submit.clone(),
        refused(StatusCode::NOT_FOUND, &["unknown room"]),
    ));
    cases.push(Case::post(
        "submitMessage: room of another provider",
        alice_caller.clone(),
        &format!("{PREFIX}submitMessage/example.org/r/hostile"),
        valid_submit.clone(),
        refused(
            StatusCode::BAD_GATEWAY,
            &["cannot resolve peer example.org"],
        ),
    ));
    harness.check_all(&cases).await;

    // --- ack -----------------------------------------------------------------------------------
    let ack = client_path("ack");
    let ack_body = |acks: Vec<AckEntry>| encode(&AckRequest { acks });
    let ack_of = |seq| AckEntry {
        room: hostile_uri.clone(),
        seq,
    };
    let base = Base {
        op: "ack",
        caller: alice_caller.clone(),
        path: ack.clone(),
        body: ack_body(vec![ack_of(1)]),
        prefix_at: Some(0),
        decode: decode_as::<AckRequest>,
    };
    let mut cases = malformed(&base);
    cases.extend([Case::post(
        "ack: by a client that was never a member",
        Caller::Client("carol"),
        &ack,
        ack_body(vec![ack_of(1)]),
        Expect::NoContent,
    )]);
    harness.check_all(&cases).await;

    // --- valid requests after all of the above ----------------------------------------------------
    let (status, reply) = alice.post_raw(&ack, base.body.clone()).await.expect("ack");
    assert_eq!(status, StatusCode::NO_CONTENT, "{}", text(&reply));
    assert_eq!(acked(&node, &hostile, alice.id()), 1);
    // A cursor never passes the end of the log.
    let (status, reply) = alice
        .post_raw(&ack, ack_body(vec![ack_of(u64::MAX)]))
        .await
        .expect("ack");
    assert_eq!(status, StatusCode::NO_CONTENT, "{}", text(&reply));
    let (_, _, _, last_seq) = room_view(&node, &hostile);
    assert_eq!(acked(&node, &hostile, alice.id()), last_seq);
    // ... and never moves back.
    harness
        .check(&Case::post(
            "ack: an older seq",
            alice_caller.clone(),
            &ack,
            ack_body(vec![ack_of(1)]),
            Expect::NoContent,
        ))
        .await;

    let (status, reply) = alice
        .post_raw(&submit, valid_submit.clone())
        .await
        .expect("submit");
    assert_eq!(status, StatusCode::OK, "{}", text(&reply));
    let response = ClientSubmitResponse::from_bytes(&reply, &limits()).expect("response");
    assert_eq!(
        response.response.status_code(),
        SubmitResponseCode::Accepted
    );
    assert_eq!(response.seq, last_seq + 1);

    let updated = alice.self_update(&hostile).await.expect("update works");
    assert!(
        matches!(updated, UpdateResult::Accepted { .. }),
        "{updated:?}"
    );
    assert_eq!(room_view(&node, &hostile).0, 2);

    // A real stale commit (protocol-06 §5.2, MIMI.md §7.3 step 10): bob built his on epoch 1,
    // after alice's epoch-2 commit was accepted.
    let watched = [hostile.clone(), side.clone()];
    let before = observe(&node, &watched);
    let stale = bob.self_update(&hostile).await.expect("update answered");
    assert_eq!(stale, UpdateResult::WrongEpoch { current_epoch: 2 });
    assert!(
        observe(&node, &watched) == before,
        "a wrongEpoch commit changed the room"
    );

    let sent = alice
        .send_text(&hostile, "still serving")
        .await
        .expect("submit");
    assert!(matches!(sent, SubmitResult::Accepted { .. }), "{sent:?}");
    alice
        .create_room(&room("after"))
        .await
        .expect("a valid room creation after the hostile ones");
    assert_ready(&node).await;
    raw.http.close().await;
    node.shutdown().await;
}
