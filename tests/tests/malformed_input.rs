//! The hostile-input corpus of the client API and the admin listener (issue 8 item 5; node/API.md,
//! MIMI.md §3.3, §13), on a real node: quinn on loopback, raft-rs in sled, openmls clients. The
//! server-to-server half is `malformed_federation.rs`.
//!
//! Each case is a request built from a *valid* one (or the valid one itself where the node must
//! refuse it) and the exact answer it must get: the HTTP status and the reason naming the
//! problem (the codec's `WireError` code and field, the URI parser's complaint, the transport's
//! limit, the hub's verdict of protocol-06 §5 and MIMI.md §7). After every case the harness
//! checks that the replicated state did not move (`state_digest`: every shard's snapshot, rooms,
//! directory, consent, profiles and blocklist alike, compares equal), so a refusal leaves no
//! trace (ARCHITECTURE.md invariants), and that the node still answers `/readyz` with 200.
//! Every operation ends with its valid request succeeding, which shows that the hostile ones
//! consumed nothing (a claim still gets the one KeyPackage there is).
//!
//! Generated cases (`hostile::wire_mutations`, `hostile::hostile_uris`): cuts at every k-th
//! byte, trailing bytes, every length prefix our codec reads made non-minimal, reserved, over
//! the limit and beyond the input, and 29-30 hostile `mimi:` URIs (bad UTF-8, over-long, wrong
//! scheme, bad authority, query, bad paths, wrong kind) in every URI field and room path
//! parameter. Their expectations come from the node's own decoders and parsers, checked against
//! the class of damage done.
//!
//! The corpus, per endpoint, as the four test functions assert it (at least these many cases;
//! a test fails when its count drops below its share):
//!
//! | endpoint | cases |
//! |---|---|
//! | register | 86 |
//! | keyPackages | 62 |
//! | keyMaterial | 206 |
//! | ack | 156 |
//! | rooms | 108 |
//! | update/{room} | 119 |
//! | submitMessage/{room} | 139 |
//! | groupInfo/{room} | 128 |
//! | reportAbuse/{room} | 202 |
//! | stream | 16 |
//! | profile (GET) | 9 |
//! | profile (POST) | 137 |
//! | preferences | 30 |
//! | identifierQuery/{domain} | 92 |
//! | requestConsent | 207 |
//! | updateConsent | 211 |
//! | consents | 13 |
//! | frankingAgent | 13 |
//! | unknown paths | 25 |
//! | server-to-server paths with a bearer token | 10 |
//! | admin listener (14 routes without or with a wrong token, block/unblock bodies) | 184 |
//! | **total** | **2 153** |
//!
//! Per test function: `directory_endpoints_…` 703 (register, keyPackages, keyMaterial, ack,
//! and the authentication / method / body-limit / path matrix of every endpoint),
//! `room_endpoints_…` 656, `discovery_endpoints_…` 588, `admin_routes_and_blocked_users_…` 206.
//! Each test asserts its per-endpoint counts at the end and prints them.

mod hostile;

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mimid_actors::command;
use mimid_actors::directory::profile::ProfileError;
use mimid_actors::ids::{ClientId, RoomId};
use mimid_actors::moderation::BlockTarget;
use mimid_actors::room::log::ItemBody;
use mimid_node::admin::admin_call;
use mimid_node::api::{parse_room_path, room_path, PREFIX};
use mimid_node::client::{Event, FrankCheck, KeptFrank, MimiClient, SubmitResult, UpdateResult};
use mimid_node::content::MimiContent;
use mimid_node::federation::S2sEndpoint;
use mimid_node::h3::{ClientLimits, H3Client};
use mimid_node::wire::abuse::AbuseReport;
use mimid_node::wire::client::{
    AckEntry, AckRequest, ClientSubmitResponse, CreateRoomRequest, CreateRoomStatus,
    PublishKeyPackagesRequest, RegisterClientRequest, RegisterClientResponse,
};
use mimid_node::wire::consent::{ConsentEntry, ConsentOp, ConsentScope};
use mimid_node::wire::discovery::{no_extensions, PreferencesBody, ProfileBody};
use mimid_node::wire::group_info::{GroupInfoCode, GroupInfoRequest, GroupInfoRequestTbs};
use mimid_node::wire::identifier::{
    IdentifierQueryCode, IdentifierRequest, QueryElement, SearchField,
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
use mimid_tests::{http_get_status, room, state_digest, user, TestNode, WAIT};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{BasicCredential, Credential, CredentialType, KeyPackageIn};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

use hostile::{
    check_answer, codec_refusal, decode_as, epoch_of, hostile_uris, parse_uri, percent_encode,
    read_varint, refused, text, varint, wire_mutations, with_epoch, Decoder, Expect, Tally,
    UriKind, WireBase, CUT, TRAILING,
};

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

/// A node whose replicated state changes only through requests (no housekeeping during the
/// test, which compares it byte for byte) and whose rate limits stay out of the way of a
/// thousand requests from one user (`rate_limits.rs` covers them).
async fn start_node() -> TestNode {
    TestNode::start_with(|config| {
        config.limits.max_body_bytes = MAX_BODY;
        config.limits.max_key_packages_per_publish = MAX_KEY_PACKAGES_PER_PUBLISH;
        config.limits.housekeeping_secs = 3600;
        config.limits.rate.user_requests_per_sec = 1e6;
        config.limits.rate.user_burst = 1_000_000;
        config.limits.rate.key_material_claims_per_pair_per_hour = 1_000_000;
        config.limits.rate.key_material_claims_per_target_per_hour = 1_000_000;
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

fn encode(value: &impl Encode) -> Vec<u8> {
    value.to_bytes().expect("a test body encodes")
}

/// The 400 for a URI field `field` of `kind` holding `bytes` (`WireError::Uri`).
fn uri_refusal(kind: UriKind, field: &str, bytes: &[u8]) -> Expect {
    let error = parse_uri(kind, bytes).expect_err("a hostile URI");
    refused(
        StatusCode::BAD_REQUEST,
        &[&format!("bad_uri: {field}: {error}")],
    )
}

/// The 400 for a room path parameter `encoded` (`parse_room_path`, MIMI.md §3.2), or `None`
/// when the parameter names a room after all (one of the short forms).
fn room_path_refusal(encoded: &str) -> Option<Expect> {
    let reason = parse_room_path(encoded).err()?;
    Some(refused(StatusCode::BAD_REQUEST, &[&reason]))
}

// ---------------------------------------------------------------------------------------------
// Who sends a request.

/// The sender of a case: a registered client (its bearer token, through the client library's
/// `request_raw`), or the raw HTTP/3 connection with a chosen `authorization` header or header
/// section.
#[derive(Clone)]
enum Caller {
    Client(&'static str),
    Anonymous,
    Header(HeaderValue),
    Headers(HeaderMap),
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
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        self.http
            .request(method, path, headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("{path}: the node did not answer: {e}"))
    }

    /// Registers `client` without the client library and returns its bearer token.
    async fn register(&self, client: &ClientId) -> String {
        let body = encode(&RegisterClientRequest {
            client: IdentifierUri::new(client.as_bytes()),
        });
        let (status, _, bytes) = self
            .send(
                Method::POST,
                &client_path("register"),
                HeaderMap::new(),
                body,
            )
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

fn auth_headers(value: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    headers
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

/// A well-formed token (`base64url(client URI || 0x00 || 32 bytes)`) of a client that was never
/// registered.
fn ghost_token() -> String {
    let mut raw = b"mimi://localhost/d/ghost/phone".to_vec();
    raw.push(0);
    raw.extend_from_slice(&[7; 32]);
    base64_url_no_pad(&raw)
}

/// base64url without padding (RFC 4648 §5), for hand-made tokens.
fn base64_url_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Cases.

struct Case {
    name: String,
    caller: Caller,
    method: Method,
    path: String,
    body: Vec<u8>,
    expect: Expect,
}

impl Case {
    fn new(
        name: impl Into<String>,
        caller: Caller,
        method: Method,
        path: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> Case {
        Case {
            name: name.into(),
            caller,
            method,
            path: path.to_string(),
            body,
            expect,
        }
    }

    fn post(
        name: impl Into<String>,
        caller: Caller,
        path: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> Case {
        Case::new(name, caller, Method::POST, path, body, expect)
    }
}

/// A valid request of one operation, the base of its generated variants.
struct Base {
    op: &'static str,
    caller: Caller,
    path: String,
    body: Vec<u8>,
    /// How many length prefixes our codec reads in `body` (see [`WireBase::prefixes`]).
    prefixes: usize,
    /// About how many cut points.
    cuts: usize,
    decode: Decoder,
}

/// The generated wire-level cases of `base` (hostile::wire_mutations).
fn wire_cases(base: &Base) -> Vec<Case> {
    wire_mutations(&WireBase {
        op: base.op.to_string(),
        body: base.body.clone(),
        decode: base.decode,
        limits: limits(),
        prefixes: base.prefixes,
        cuts: base.cuts,
        cut: CUT,
        trailing: TRAILING,
    })
    .into_iter()
    .map(|(name, body, expect)| Case::post(name, base.caller.clone(), &base.path, body, expect))
    .collect()
}

/// `ClientApi::update` decodes and then converts to the domain's bundle; both are 400s.
fn decode_update(body: &[u8], limits: &Limits) -> Result<(), WireError> {
    let request = UpdateRequest::from_bytes(body, limits)?;
    command::HandshakeBundle::try_from(request).map(drop)
}

/// The client API endpoint a request reaches, as the router names it (for the tally).
fn endpoint_of(method: &Method, path: &str) -> String {
    const WITH_PARAM: [&str; 5] = [
        "update",
        "submitMessage",
        "groupInfo",
        "identifierQuery",
        "reportAbuse",
    ];
    const WITHOUT_PARAM: [&str; 13] = [
        "register",
        "keyPackages",
        "keyMaterial",
        "rooms",
        "stream",
        "ack",
        "profile",
        "preferences",
        "requestConsent",
        "updateConsent",
        "consents",
        "frankingAgent",
        // Never a route: keeps the list's shape obvious.
        "",
    ];
    if path.starts_with("/v1/") {
        return "server-to-server paths with a bearer token".into();
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return "unknown paths".into();
    };
    let (name, param) = match rest.split_once('/') {
        Some((name, param)) => (name, Some(param)),
        None => (rest, None),
    };
    let known = if param.is_some() {
        WITH_PARAM.contains(&name)
    } else {
        !name.is_empty() && WITHOUT_PARAM.contains(&name)
    };
    match (known, name) {
        (false, _) => "unknown paths".into(),
        (true, "profile") if *method == Method::GET => "profile (GET)".into(),
        (true, "profile") => "profile (POST)".into(),
        (true, name) => name.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Running cases.

struct Harness<'a> {
    node: &'a TestNode,
    raw: &'a Raw,
    clients: BTreeMap<&'static str, &'a MimiClient>,
    tally: Mutex<Tally>,
}

impl<'a> Harness<'a> {
    fn new(node: &'a TestNode, raw: &'a Raw, clients: &[(&'static str, &'a MimiClient)]) -> Self {
        Harness {
            node,
            raw,
            clients: clients.iter().copied().collect(),
            tally: Mutex::new(Tally::default()),
        }
    }

    async fn send(&self, case: &Case) -> (StatusCode, HeaderMap, Bytes) {
        let headers = match &case.caller {
            Caller::Client(name) => {
                let (status, body) = self.clients[name]
                    .request_raw(case.method.clone(), &case.path, case.body.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{}: the node did not answer: {e}", case.name));
                return (status, HeaderMap::new(), body);
            }
            Caller::Anonymous => HeaderMap::new(),
            Caller::Header(value) => auth_headers(value.clone()),
            Caller::Headers(headers) => headers.clone(),
        };
        self.raw
            .send(case.method.clone(), &case.path, headers, case.body.clone())
            .await
    }

    /// Sends one case, checks the answer, that replicated state did not move and that the node
    /// is still ready.
    async fn check(&self, case: &Case) {
        self.tally
            .lock()
            .expect("not poisoned")
            .count(&endpoint_of(&case.method, &case.path));
        let before = state_digest(self.node);
        if matches!(case.expect, Expect::Stream) {
            let Caller::Header(value) = &case.caller else {
                panic!("{}: a stream case needs a token header", case.name);
            };
            let (status, chunks) = self
                .raw
                .http
                .stream(
                    case.method.clone(),
                    &case.path,
                    auth_headers(value.clone()),
                    Bytes::new(),
                )
                .await
                .unwrap_or_else(|e| panic!("{}: the node did not answer: {e}", case.name));
            assert_eq!(status, StatusCode::OK, "{}", case.name);
            drop(chunks);
        } else {
            let (status, headers, body) = self.send(case).await;
            check_answer(&case.name, &case.expect, status, &headers, &body);
        }
        assert!(
            state_digest(self.node) == before,
            "{}: a refused request changed replicated state",
            case.name
        );
        assert_ready(self.node, &case.name).await;
    }

    async fn check_all(&self, cases: &[Case]) {
        for case in cases {
            self.check(case).await;
        }
    }

    fn assert_shares(&self, test: &str, shares: &[(&str, usize)], total: usize) {
        self.tally
            .lock()
            .expect("not poisoned")
            .assert_shares(test, shares, total);
    }
}

/// No request took the node down: it still reports ready.
async fn assert_ready(node: &TestNode, after: &str) {
    let url = format!("http://{}/readyz", node.node().admin_addr());
    assert_eq!(
        http_get_status(&url).await,
        Some(200),
        "the node stopped serving after {after}"
    );
}

// ---------------------------------------------------------------------------------------------
// MLS byte surgery.

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

fn basic(identity: &str) -> Mls<Credential> {
    Mls::from_value(BasicCredential::new(identity.as_bytes().to_vec()).into())
        .expect("a basic credential encodes")
}

// ---------------------------------------------------------------------------------------------
// The matrix every endpoint shares: authentication, methods, paths, body limits.

/// (method, path) of every client API route that needs a bearer token, with room-scoped ones
/// for `room`.
fn authenticated_routes(room: &RoomId) -> Vec<(Method, String)> {
    vec![
        (Method::POST, client_path("keyPackages")),
        (Method::POST, client_path("keyMaterial")),
        (Method::POST, client_path("rooms")),
        (Method::POST, room_path("update", room)),
        (Method::POST, room_path("submitMessage", room)),
        (Method::POST, room_path("groupInfo", room)),
        (Method::GET, client_path("stream")),
        (Method::POST, client_path("ack")),
        (Method::GET, client_path("profile")),
        (Method::POST, client_path("profile")),
        (Method::POST, client_path("preferences")),
        (Method::POST, client_path("identifierQuery/localhost")),
        (Method::POST, client_path("requestConsent")),
        (Method::POST, client_path("updateConsent")),
        (Method::GET, client_path("consents")),
        (Method::GET, client_path("frankingAgent")),
        (Method::POST, room_path("reportAbuse", room)),
    ]
}

/// 401 for missing, malformed and wrong bearer tokens on every authenticated route; 405 for
/// every wrong method of every route; 413 for bodies over `limits.max_body_bytes` (sent or
/// declared) and 400 for a declared length that lies; 404 for unknown paths; 401 for the
/// server-to-server API without a client certificate.
fn shared_matrix(valid_token: &str) -> Vec<Case> {
    let room_param = room("clubhouse");
    let not_utf8_header =
        HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("obs-text is a valid header value");
    let credentials: Vec<(&str, Caller, &str)> = vec![
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
            Caller::Header(HeaderValue::from_str(&format!("Basic {valid_token}")).expect("header")),
            "malformed bearer token",
        ),
        (
            "token too short to hold a secret",
            Caller::Header(HeaderValue::from_static("Bearer bWltaTovL2xvY2FsaG9zdA")),
            "malformed bearer token",
        ),
        (
            "header not UTF-8",
            Caller::Header(not_utf8_header),
            "malformed bearer token",
        ),
        (
            "scheme without a token",
            Caller::Header(HeaderValue::from_static("Bearer")),
            "malformed bearer token",
        ),
        (
            "wrong secret",
            Caller::Header(bearer(&tampered(valid_token))),
            "unknown client or wrong token",
        ),
        (
            "well-formed token of a client never registered",
            Caller::Header(bearer(&ghost_token())),
            "unknown client or wrong token",
        ),
    ];
    let mut cases = Vec::new();
    for (method, path) in authenticated_routes(&room_param) {
        for (what, caller, reason) in &credentials {
            cases.push(Case::new(
                format!("{method} {path}: {what}"),
                caller.clone(),
                method.clone(),
                &path,
                Vec::new(),
                refused(StatusCode::UNAUTHORIZED, &[reason]),
            ));
        }
    }
    let token = Caller::Header(bearer(valid_token));
    let routes: Vec<(&str, String, &[Method], Method)> = vec![
        (
            "client_register",
            client_path("register"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_key_packages",
            client_path("keyPackages"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_key_material",
            client_path("keyMaterial"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_create_room",
            client_path("rooms"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_update",
            room_path("update", &room_param),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_submit_message",
            room_path("submitMessage", &room_param),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_group_info",
            room_path("groupInfo", &room_param),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_stream",
            client_path("stream"),
            &[Method::POST, Method::PUT, Method::DELETE, Method::PATCH],
            Method::GET,
        ),
        (
            "client_ack",
            client_path("ack"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        // GET reads the profile, POST sets it: every other method is a wrong POST.
        (
            "client_profile",
            client_path("profile"),
            &[Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_preferences",
            client_path("preferences"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_identifier_query",
            client_path("identifierQuery/localhost"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_request_consent",
            client_path("requestConsent"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_update_consent",
            client_path("updateConsent"),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
        (
            "client_consents",
            client_path("consents"),
            &[Method::POST, Method::PUT, Method::DELETE, Method::PATCH],
            Method::GET,
        ),
        (
            "client_franking_agent",
            client_path("frankingAgent"),
            &[Method::POST, Method::PUT, Method::DELETE, Method::PATCH],
            Method::GET,
        ),
        (
            "client_report_abuse",
            room_path("reportAbuse", &room_param),
            &[Method::GET, Method::PUT, Method::DELETE, Method::PATCH],
            Method::POST,
        ),
    ];
    for (endpoint, path, wrong, allowed) in &routes {
        for method in *wrong {
            cases.push(Case::new(
                format!("{method} {path}: wrong method"),
                token.clone(),
                method.clone(),
                path,
                Vec::new(),
                refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &[&format!("{endpoint} takes {allowed}")],
                ),
            ));
        }
        if *allowed != Method::POST {
            continue;
        }
        let too_large = refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &[&format!(
                "request body exceeds the limit of {MAX_BODY} bytes"
            )],
        );
        for size in [MAX_BODY + 1, MAX_BODY + 4096, 4 * MAX_BODY] {
            cases.push(Case::post(
                format!("POST {path}: body of {size} bytes, over max_body_bytes"),
                token.clone(),
                path,
                vec![0; size],
                too_large.clone(),
            ));
        }
        let mut declared_over = auth_headers(bearer(valid_token));
        declared_over.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(MAX_BODY + 1),
        );
        cases.push(Case::post(
            format!("POST {path}: content-length over max_body_bytes, small body"),
            Caller::Headers(declared_over),
            path,
            vec![0; 8],
            too_large.clone(),
        ));
        let mut lying = auth_headers(bearer(valid_token));
        lying.insert(http::header::CONTENT_LENGTH, HeaderValue::from(3));
        cases.push(Case::post(
            format!("POST {path}: content-length 3 for 8 bytes"),
            Caller::Headers(lying),
            path,
            vec![0; 8],
            refused(
                StatusCode::BAD_REQUEST,
                &["request body length does not match content-length"],
            ),
        ));
    }
    for path in [
        "/".to_string(),
        "/client/v1/".to_string(),
        "/client/v1//register".to_string(),
        "/client/v1/register/".to_string(),
        "/client/v1/REGISTER".to_string(),
        "/client/v1/%72egister".to_string(),
        "/CLIENT/v1/register".to_string(),
        client_path("registerClient"),
        client_path("register/extra"),
        client_path("update"),
        client_path("submitMessage"),
        client_path("groupInfo"),
        client_path("reportAbuse"),
        client_path("identifierQuery"),
        client_path("stream/extra"),
        client_path("profile/alice"),
        client_path("consents/incoming"),
        client_path("frankingAgent/key"),
        client_path("keyMaterial/mimi%3A%2F%2Flocalhost%2Fu%2Fdave"),
        "/client/v2/register".to_string(),
        "/client/v1/../v1/register".to_string(),
        "/v2/keyMaterial/x".to_string(),
        "/.well-known/mimi-protocol-directory/extra".to_string(),
        "/client".to_string(),
        "/client/v1".to_string(),
    ] {
        cases.push(Case::post(
            format!("POST {path}: unknown path"),
            token.clone(),
            &path,
            Vec::new(),
            refused(StatusCode::NOT_FOUND, &["no such endpoint"]),
        ));
    }
    // The server-to-server API (MIMI.md §3.1) opens only to a provider's client certificate,
    // never to a client's bearer token.
    for endpoint in S2sEndpoint::ALL {
        let path = format!("/v1/{}/mimi%3A%2F%2Flocalhost%2Fu%2Fdave", endpoint.name());
        cases.push(Case::new(
            format!("{} {path} with a bearer token", endpoint.method()),
            token.clone(),
            endpoint.method(),
            &path,
            Vec::new(),
            refused(StatusCode::UNAUTHORIZED, &["client certificate required"]),
        ));
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// Directory endpoints.

/// register, keyPackages, keyMaterial and ack (protocol-06 §5.1 semantics for claims), plus the
/// refusals every endpoint shares ([`shared_matrix`]).
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

    let harness = Harness::new(&node, &raw, &[("alice", &alice), ("dave", &dave)]);
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
        prefixes: 1,
        cuts: 64,
        decode: decode_as::<RegisterClientRequest>,
    };
    let mut cases = wire_cases(&base);
    for hostile in hostile_uris("localhost", UriKind::Client) {
        cases.push(Case::post(
            format!("register: {}", hostile.name),
            Caller::Anonymous,
            &register,
            register_body(IdentifierUri::new(hostile.bytes.clone())),
            uri_refusal(
                UriKind::Client,
                "RegisterClientRequest.client",
                &hostile.bytes,
            ),
        ));
    }
    let linking = |name: &str, caller: Caller, client: &str, expect: Expect| {
        Case::post(
            format!("register: {name}"),
            caller,
            &register,
            register_body(uri(client)),
            expect,
        )
    };
    cases.extend([
        linking(
            "client of another provider",
            Caller::Anonymous,
            "mimi://example.org/d/erin/phone",
            refused(StatusCode::FORBIDDEN, &["does not belong to localhost"]),
        ),
        // An existing client's token is never replaced (alice keeps working below).
        linking(
            "already registered client",
            Caller::Anonymous,
            alice.id().as_str(),
            refused(StatusCode::CONFLICT, &["client is already registered"]),
        ),
        linking(
            "a second client of a user without a link",
            Caller::Anonymous,
            "mimi://localhost/d/alice/tablet",
            refused(
                StatusCode::FORBIDDEN,
                &["the user has clients already: a new client must be linked by one of them"],
            ),
        ),
        linking(
            "linked by a client of another user",
            Caller::Header(bearer(&mallory_token)),
            "mimi://localhost/d/alice/tablet",
            refused(
                StatusCode::FORBIDDEN,
                &["mimi://localhost/d/mallory/laptop cannot link a client of another user"],
            ),
        ),
        linking(
            "linked with a wrong token",
            Caller::Header(bearer(&tampered(&mallory_token))),
            "mimi://localhost/d/mallory/tablet",
            refused(StatusCode::UNAUTHORIZED, &["unknown client or wrong token"]),
        ),
        linking(
            "linked with a malformed token",
            Caller::Header(HeaderValue::from_static("Bearer !!")),
            "mimi://localhost/d/mallory/tablet",
            refused(StatusCode::UNAUTHORIZED, &["malformed bearer token"]),
        ),
        linking(
            "linked with a token of a client never registered",
            Caller::Header(bearer(&ghost_token())),
            "mimi://localhost/d/ghost/tablet",
            refused(StatusCode::UNAUTHORIZED, &["unknown client or wrong token"]),
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
        prefixes: 1,
        cuts: 24,
        decode: decode_as::<PublishKeyPackagesRequest>,
    };
    let mut cases = wire_cases(&base);
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
    // A reused KeyPackage: published again by its client.
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
        prefixes: 6,
        cuts: 40,
        decode: decode_as::<KeyMaterialRequest>,
    };
    let mut cases = wire_cases(&base);
    let key_material_case = |name: &str, caller: Caller, body: Vec<u8>, expect: Expect| {
        Case::post(format!("keyMaterial: {name}"), caller, &claim, body, expect)
    };
    // Every URI field, with every hostile URI: targetUser and roomId are read first, then the
    // signature check reads requestingUser.
    for hostile in hostile_uris("localhost", UriKind::User) {
        let target = IdentifierUri::new(hostile.bytes.clone());
        cases.push(key_material_case(
            &format!("targetUser: {}", hostile.name),
            alice_caller.clone(),
            resigned(&|tbs| tbs.target_user = target.clone()),
            uri_refusal(
                UriKind::User,
                "KeyMaterialRequest.targetUser",
                &hostile.bytes,
            ),
        ));
        let requesting = IdentifierUri::new(hostile.bytes.clone());
        let body = resigned(&|tbs| tbs.requesting_user = requesting.clone());
        let verdict = KeyMaterialRequest::from_bytes(&body, &limits())
            .expect("decodes")
            .verify()
            .expect_err("a hostile requestingUser");
        assert_eq!(verdict.code(), "bad_uri", "{}", hostile.name);
        cases.push(key_material_case(
            &format!("requestingUser: {}", hostile.name),
            alice_caller.clone(),
            body,
            refused(
                StatusCode::BAD_REQUEST,
                &[&format!("{}: {verdict}", verdict.code())],
            ),
        ));
    }
    for hostile in hostile_uris("localhost", UriKind::Room) {
        let room_id = IdentifierUri::new(hostile.bytes.clone());
        cases.push(key_material_case(
            &format!("roomId: {}", hostile.name),
            alice_caller.clone(),
            resigned(&|tbs| tbs.room_id = room_id.clone()),
            uri_refusal(UriKind::Room, "KeyMaterialRequest.roomId", &hostile.bytes),
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
    let mut long_signature = valid.clone();
    long_signature.key_material_request_signature.push(0);
    let mut protocol_0 = encode(&valid);
    protocol_0[0] = 0;
    let mut protocol_2 = encode(&valid);
    protocol_2[0] = 2;
    cases.extend([
        key_material_case(
            "protocol 0 (reserved)",
            alice_caller.clone(),
            protocol_0,
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_enum", "Protocol: 0 is not a defined value"],
            ),
        ),
        key_material_case(
            "protocol 2",
            alice_caller.clone(),
            protocol_2,
            refused(
                StatusCode::BAD_REQUEST,
                &["bad_enum", "Protocol: 2 is not a defined value"],
            ),
        ),
        key_material_case(
            "empty acceptableCiphersuites",
            alice_caller.clone(),
            empty_suites.clone(),
            codec_refusal(
                "keyMaterial: empty acceptableCiphersuites",
                decode_as::<KeyMaterialRequest>,
                &limits(),
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
            "a credential that is not UTF-8",
            alice_caller.clone(),
            resigned(&|tbs| {
                tbs.requester_credential =
                    Mls::from_value(BasicCredential::new(b"mimi://\xff".to_vec()).into())
                        .expect("encodes")
            }),
            refused(StatusCode::BAD_REQUEST, &["bad_credential"]),
        ),
        key_material_case(
            "a public key that is not an Ed25519 key",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requester_signature_key = SignaturePublicKey(vec![7; 31])),
            refused(StatusCode::BAD_REQUEST, &["malformed_signature_key"]),
        ),
        key_material_case(
            "an empty public key",
            alice_caller.clone(),
            resigned(&|tbs| tbs.requester_signature_key = SignaturePublicKey(Vec::new())),
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
            "a signature one byte too long",
            alice_caller.clone(),
            encode(&long_signature),
            refused(
                StatusCode::BAD_REQUEST,
                &["malformed_signature", "(65 bytes)"],
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
            "for a room of another provider",
            alice_caller.clone(),
            resigned(&|tbs| {
                tbs.target_user = uri("mimi://example.org/u/dave");
                tbs.room_id = uri("mimi://example.net/r/den");
            }),
            // Key material for a room is fetched through the room's hub (MIMI.md §6.3).
            refused(
                StatusCode::BAD_GATEWAY,
                &["cannot resolve peer example.net"],
            ),
        ),
        key_material_case(
            "unknown local user",
            alice_caller.clone(),
            resigned(&|tbs| tbs.target_user = uri("mimi://localhost/u/nobody")),
            Expect::KeyMaterial(KeyMaterialUserCode::UserUnknown),
        ),
        key_material_case(
            "a user whose clients published nothing",
            alice_caller.clone(),
            resigned(&|tbs| tbs.target_user = uri("mimi://localhost/u/erin")),
            Expect::KeyMaterial(KeyMaterialUserCode::NoCompatibleMaterial),
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
    // Reused KeyPackages (protocol-06 §5.1): a claimed one is never served again, nor published
    // again by its client.
    let reused = [
        key_material_case(
            "the same claim again: the KeyPackage was served once",
            alice_caller.clone(),
            base.body.clone(),
            Expect::KeyMaterial(KeyMaterialUserCode::NoCompatibleMaterial),
        ),
        Case::post(
            "keyPackages: a KeyPackage that was already claimed",
            Caller::Client("dave"),
            &publish,
            publish_body(vec![dave_key_package.clone()], false),
            refused(
                StatusCode::BAD_REQUEST,
                &["KeyPackage 0 was already claimed"],
            ),
        ),
        Case::post(
            "keyPackages: a claimed KeyPackage next to a fresh one",
            Caller::Client("dave"),
            &publish,
            publish_body(vec![key_package(&dave), dave_key_package.clone()], false),
            refused(
                StatusCode::BAD_REQUEST,
                &["KeyPackage 1 was already claimed"],
            ),
        ),
    ];
    harness.check_all(&reused).await;

    // --- ack (no rooms here: acknowledgements of rooms one is not in change nothing) ---------
    let ack = client_path("ack");
    let ack_body = |acks: Vec<AckEntry>| encode(&AckRequest { acks });
    let ack_of = |room: IdentifierUri, seq| AckEntry { room, seq };
    let base = Base {
        op: "ack",
        caller: alice_caller.clone(),
        path: ack.clone(),
        body: ack_body(vec![
            ack_of(IdentifierUri::new(room("nowhere").as_bytes()), 1),
            ack_of(IdentifierUri::new(room("elsewhere").as_bytes()), 2),
        ]),
        prefixes: 3,
        cuts: 32,
        decode: decode_as::<AckRequest>,
    };
    let mut cases = wire_cases(&base);
    for hostile in hostile_uris("localhost", UriKind::Room) {
        cases.push(Case::post(
            format!("ack: {}", hostile.name),
            alice_caller.clone(),
            &ack,
            ack_body(vec![
                ack_of(IdentifierUri::new(room("nowhere").as_bytes()), 1),
                ack_of(IdentifierUri::new(hostile.bytes.clone()), 1),
            ]),
            uri_refusal(UriKind::Room, "AckEntry.room", &hostile.bytes),
        ));
    }
    cases.extend([
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
            ack_body(vec![ack_of(
                uri("mimi://example.org/r/elsewhere"),
                u64::MAX,
            )]),
            Expect::NoContent,
        ),
        Case::post(
            "ack: empty list",
            alice_caller.clone(),
            &ack,
            ack_body(Vec::new()),
            Expect::NoContent,
        ),
        Case::post(
            "ack: the same room twice",
            alice_caller.clone(),
            &ack,
            ack_body(vec![
                ack_of(IdentifierUri::new(room("nowhere").as_bytes()), 5),
                ack_of(IdentifierUri::new(room("nowhere").as_bytes()), 1),
            ]),
            Expect::NoContent,
        ),
    ]);
    harness.check_all(&cases).await;

    // --- authentication, methods, paths, body limits of every endpoint -----------------------
    harness.check_all(&shared_matrix(&mallory_token)).await;

    // The node still serves, every token registered above works, and alice's was not replaced.
    for token in [&mallory_token, &erin_token] {
        harness
            .check(&Case::new(
                "GET stream with a valid token",
                Caller::Header(bearer(token)),
                Method::GET,
                &client_path("stream"),
                Vec::new(),
                Expect::Stream,
            ))
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
    harness.assert_shares(
        "directory_endpoints",
        &[
            ("register", 84),
            ("keyPackages", 61),
            ("keyMaterial", 203),
            ("ack", 105),
            ("rooms", 17),
            ("update", 17),
            ("submitMessage", 17),
            ("groupInfo", 17),
            ("reportAbuse", 17),
            ("stream", 14),
            ("profile (GET)", 8),
            ("profile (POST)", 16),
            ("preferences", 17),
            ("identifierQuery", 17),
            ("requestConsent", 17),
            ("updateConsent", 17),
            ("consents", 12),
            ("frankingAgent", 12),
            ("unknown paths", 25),
            ("server-to-server paths with a bearer token", 10),
        ],
        703,
    );
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

/// Every hostile room URI as the path parameter of `endpoint`, with the 400 the node's room
/// path parser gives it (entries that still name a room in a short form of MIMI.md §3.2 are
/// left out: they are rooms).
fn room_param_cases(endpoint: &str, caller: &Caller, body: &[u8]) -> Vec<Case> {
    hostile_uris("localhost", UriKind::Room)
        .into_iter()
        .filter_map(|hostile| {
            let encoded = percent_encode(&hostile.bytes);
            let expect = room_path_refusal(&encoded)?;
            Some(Case::post(
                format!("{endpoint}: path parameter {}", hostile.name),
                caller.clone(),
                &format!("{PREFIX}{endpoint}/{encoded}"),
                body.to_vec(),
                expect,
            ))
        })
        .collect()
}

/// Waits for `client`'s next application message and returns its verified Frank.
async fn next_kept_frank(client: &mut MimiClient) -> KeptFrank {
    loop {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| panic!("{} waited for a message", client.id()));
        if let Event::Message { frank, .. } = event {
            match frank {
                FrankCheck::Verified(kept) => return *kept,
                other => panic!("expected a verified Frank, got {other:?}"),
            }
        }
    }
}

/// Re-encodes the reported content with `edit` applied (same salt): a valid MIMI content that
/// the hub did not frank.
fn edit_content(report: &mut AbuseReport, edit: &dyn Fn(&mut MimiContent)) {
    let message = &mut report.messages[0];
    let mut content = MimiContent::decode(&message.message_content).expect("MIMI content");
    edit(&mut content);
    message.message_content = content.encode().expect("encodes");
}

/// rooms, update/{room}, submitMessage/{room}, groupInfo/{room}, reportAbuse/{room} and ack
/// against a room with two members: the codec's refusals, hostile URIs in bodies and paths, the
/// wrong MLS structures, unknown and foreign rooms, stale and future epochs (protocol-06 §5.2
/// `wrongEpoch`, §5.3 `epochTooOld` / `notAllowed`), senders that are not the MLS sender or not
/// members (MIMI.md §7.3 step 2, §7.4 step 3), forged and misdirected groupInfo requests
/// (protocol-06 §5.5) and forged or altered Franks in abuse reports (MIMI.md §5.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_endpoints_refuse_hostile_input_and_change_nothing_protocol06_5_2_5_3() {
    let node = start_node().await;
    let raw = Raw::connect(&node).await;
    let mut alice = node.client("alice", "phone", 0).await;
    let mut bob = node.client("bob", "phone", 1).await;
    let carol = node.client("carol", "phone", 0).await;
    // A new device of a participant (a joiner by external commit, MIMI.md §6.6), and a user
    // registered without the client library, whose token the test holds.
    let alice_laptop = alice
        .link(client_id("alice", "laptop"))
        .await
        .expect("alice links a laptop");
    let gina = client_id("gina", "phone");
    let gina_token = raw.register(&gina).await;
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
    // A franked message bob received, for the abuse reports below.
    let sent = alice
        .send_text(&hostile, "report me")
        .await
        .expect("submit");
    assert!(matches!(sent, SubmitResult::Accepted { .. }), "{sent:?}");
    let kept = next_kept_frank(&mut bob).await;
    let group_info_message = MlsMessage::from_bytes(&group_info).expect("GroupInfo MLSMessage");
    let key_package_message = MlsMessage::wrap(&key_package(&carol)).expect("KeyPackage message");
    let commit_message = MlsMessage::from_bytes(&accepted_commit).expect("commit message");

    let harness = Harness::new(
        &node,
        &raw,
        &[
            ("alice", &alice),
            ("bob", &bob),
            ("carol", &carol),
            ("alice_laptop", &alice_laptop),
        ],
    );
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
        prefixes: 2,
        cuts: 40,
        decode: decode_as::<CreateRoomRequest>,
    };
    let mut cases = wire_cases(&base);
    for uri_case in hostile_uris("localhost", UriKind::Room) {
        cases.push(Case::post(
            format!("rooms: {}", uri_case.name),
            alice_caller.clone(),
            &rooms,
            create_body(
                IdentifierUri::new(uri_case.bytes.clone()),
                &group_info,
                &ratchet_tree,
            ),
            uri_refusal(UriKind::Room, "CreateRoomRequest.room", &uri_case.bytes),
        ));
    }
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
            "an application message where the GroupInfo belongs",
            create_body(uri("mimi://localhost/r/new"), &message, &ratchet_tree),
            &["unexpected_mls_message", "found a PrivateMessage"],
        ),
        create_refused(
            "a ratchet tree that is not one",
            create_body(uri("mimi://localhost/r/new"), &group_info, &[0xff; 16]),
            &["CreateRoomRequest.ratchet_tree"],
        ),
        create_refused(
            "an empty ratchet tree",
            create_body(uri("mimi://localhost/r/new"), &group_info, &[]),
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
        prefixes: 0,
        cuts: 40,
        decode: decode_update,
    };
    let mut cases = wire_cases(&base);
    cases.extend(room_param_cases("update", &alice_caller, &replay));
    let bundle = |commit: &[u8], tail: &[&[u8]]| [&[commit][..], tail].concat().concat();
    let update_codec = |name: &str, body: Vec<u8>, class: &[&str]| {
        let name = format!("update: {name}");
        let expect = codec_refusal(&name, decode_update, &limits(), &body, class);
        Case::post(name, alice_caller.clone(), &update, body, expect)
    };
    let mut group_id_non_minimal = accepted_commit.clone();
    {
        let (len, width) = read_varint(&accepted_commit, 4);
        let longer = varint(len, if width == 1 { 2 } else { 4 });
        group_id_non_minimal.splice(4..4 + width, longer);
    }
    let mut wire_format_7 = accepted_commit.clone();
    wire_format_7[3] = 7;
    let mut version_2 = accepted_commit.clone();
    version_2[1] = 2;
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
            "a GroupInfo",
            group_info.clone(),
            &["unexpected_mls_message"],
        ),
        update_codec(
            "an undefined MLS wire format",
            bundle(&wire_format_7, &[&replay[commit_len..]]),
            &["bad_mls_structure"],
        ),
        update_codec(
            "an undefined MLS protocol version",
            bundle(&version_2, &[&replay[commit_len..]]),
            &["bad_mls_structure"],
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
            Expect::ClientUpdate(code, fragment),
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
            "a commit for the last epoch there is",
            alice_caller.clone(),
            bundle(
                &with_epoch(&accepted_commit, u64::MAX),
                &[&replay[commit_len..]],
            ),
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
        (
            format!("{PREFIX}update/{}", "a".repeat(2000)),
            StatusCode::BAD_REQUEST,
            "is not a room",
        ),
        (
            format!("{PREFIX}update/localhost/r/{}", "a".repeat(1100)),
            StatusCode::BAD_REQUEST,
            "URI is longer than 1024 bytes",
        ),
    ];
    for (path, status, reason) in update_path_cases {
        cases.push(Case::post(
            format!("update: room path {path:.80}"),
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
        format!("{PREFIX}update/LOCALHOST/r/hostile"),
    ] {
        cases.push(Case::post(
            format!("update: room path form {path}"),
            alice_caller.clone(),
            &path,
            replay.clone(),
            Expect::ClientUpdate(
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
        prefixes: 1,
        cuts: 40,
        decode: decode_as::<SubmitMessageRequest>,
    };
    let mut cases = wire_cases(&base);
    cases.extend(room_param_cases(
        "submitMessage",
        &alice_caller,
        &valid_submit,
    ));
    for uri_case in hostile_uris("localhost", UriKind::User) {
        cases.push(Case::post(
            format!("submitMessage: sendingUri {}", uri_case.name),
            alice_caller.clone(),
            &submit,
            submit_body(&message, IdentifierUri::new(uri_case.bytes.clone())),
            uri_refusal(
                UriKind::User,
                "SubmitMessageRequest.sendingUri",
                &uri_case.bytes,
            ),
        ));
    }
    let mut protocol_2 = valid_submit.clone();
    protocol_2[0] = 2;
    let mut protocol_0 = valid_submit.clone();
    protocol_0[0] = 0;
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
            Expect::ClientSubmit(code, fragment),
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
            "protocol 0 (reserved)",
            alice_caller.clone(),
            protocol_0,
            StatusCode::BAD_REQUEST,
            &["bad_enum", "Protocol: 0 is not a defined value"],
        ),
        submit_verdict(
            "a KeyPackage as the message",
            alice_caller.clone(),
            submit_body(key_package_message.bytes(), alice_uri.clone()),
            SubmitResponseCode::NotAllowed,
            "application messages must be PrivateMessage".into(),
        ),
        submit_refused(
            "sendingUri of another user",
            alice_caller.clone(),
            submit_body(&message, IdentifierUri::new(bob.user().as_bytes())),
            StatusCode::FORBIDDEN,
            &["is not the authenticated client's user mimi://localhost/u/alice"],
        ),
        submit_refused(
            "sendingUri of another provider's user",
            alice_caller.clone(),
            submit_body(&message, uri("mimi://example.org/u/alice")),
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
            "a message for the last epoch there is",
            alice_caller.clone(),
            submit_body(&with_epoch(&message, u64::MAX), alice_uri.clone()),
            SubmitResponseCode::NotAllowed,
            format!(
                "the message is for epoch {}, ahead of the room's epoch 1",
                u64::MAX
            ),
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
        submit_refused(
            "unknown room",
            alice_caller.clone(),
            valid_submit.clone(),
            StatusCode::NOT_FOUND,
            &["unknown room"],
        ),
    ]);
    // (the last one goes to another path)
    cases.last_mut().expect("a case").path = room_path("submitMessage", &room("nowhere"));
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

    // --- groupInfo/{room} (protocol-06 §5.5, MIMI.md §6.6) ---------------------------------------
    let group_info_path = room_path("groupInfo", &hostile);
    let laptop_request = alice_laptop
        .group_info_request(&[9; 32])
        .expect("a signed GroupInfoRequest");
    let laptop_caller = Caller::Client("alice_laptop");
    let gina_caller = Caller::Header(bearer(&gina_token));
    let forger = SignatureKeyPair::new(SignatureScheme::ED25519).expect("Ed25519 key pair");
    let signed = |edit: &dyn Fn(&mut GroupInfoRequestTbs)| {
        let mut tbs = laptop_request.tbs.clone();
        tbs.requesting_signature_key = SignaturePublicKey(forger.public().to_vec());
        tbs.requesting_credential = basic(gina.as_str());
        edit(&mut tbs);
        GroupInfoRequest::sign(tbs, &forger).expect("the test signs")
    };
    // The answer the hub gives a request that fails its own checks (group_info.rs): a forgery is
    // `notAuthorized` with the reason in mimi-reason, anything else a 400.
    let verify_refusal = |request: &GroupInfoRequest| {
        let error = request.verify().expect_err("a bad request");
        let reason = format!("{}: {error}", error.code());
        if error.is_forgery() {
            Expect::GroupInfo(GroupInfoCode::NotAuthorized, reason)
        } else {
            refused(StatusCode::BAD_REQUEST, &[&reason])
        }
    };
    let base = Base {
        op: "groupInfo",
        caller: laptop_caller.clone(),
        path: group_info_path.clone(),
        body: encode(&laptop_request),
        prefixes: 4,
        cuts: 40,
        decode: decode_as::<GroupInfoRequest>,
    };
    let mut cases = wire_cases(&base);
    cases.extend(room_param_cases("groupInfo", &laptop_caller, &base.body));
    let not_authorized = Expect::GroupInfo(
        GroupInfoCode::NotAuthorized,
        "not authorized to join this room".into(),
    );
    let gina_request = signed(&|_| {});
    let mut forged = gina_request.clone();
    forged.signature[3] ^= 0x10;
    let mut short = gina_request.clone();
    short.signature.truncate(10);
    let group_info_case = |name: &str, caller: &Caller, path: &str, body: Vec<u8>, expect| {
        Case::post(
            format!("groupInfo: {name}"),
            caller.clone(),
            path,
            body,
            expect,
        )
    };
    let unsupported_suite = signed(&|tbs| tbs.cipher_suite = CipherSuite(2));
    let grease_suite = signed(&|tbs| tbs.cipher_suite = CipherSuite(0x0a0a));
    let x509 = signed(&|tbs| {
        tbs.requesting_credential = Mls::from_value(Credential::new(
            CredentialType::X509,
            gina.as_bytes().to_vec(),
        ))
        .expect("an X.509 credential encodes")
    });
    let user_credential =
        signed(&|tbs| tbs.requesting_credential = basic("mimi://localhost/u/gina"));
    let mut bad_key = gina_request.clone();
    bad_key.tbs.requesting_signature_key = SignaturePublicKey(vec![1; 31]);
    cases.extend([
        group_info_case(
            "a user who is not a participant",
            &gina_caller,
            &group_info_path,
            encode(&gina_request),
            not_authorized.clone(),
        ),
        group_info_case(
            "an unknown room (indistinguishable)",
            &gina_caller,
            &room_path("groupInfo", &room("nowhere")),
            encode(&gina_request),
            not_authorized.clone(),
        ),
        group_info_case(
            "an unknown room, asked by a participant's device",
            &laptop_caller,
            &room_path("groupInfo", &room("nowhere")),
            base.body.clone(),
            // (the client library drops headers: the code is what it sees)
            Expect::GroupInfo(GroupInfoCode::NotAuthorized, String::new()),
        ),
        group_info_case(
            "a signature with one bit flipped",
            &gina_caller,
            &group_info_path,
            encode(&forged),
            verify_refusal(&forged),
        ),
        group_info_case(
            "a signature that is not an Ed25519 signature",
            &gina_caller,
            &group_info_path,
            encode(&short),
            verify_refusal(&short),
        ),
        group_info_case(
            "a public key that is not an Ed25519 key",
            &gina_caller,
            &group_info_path,
            encode(&bad_key),
            verify_refusal(&bad_key),
        ),
        group_info_case(
            "a cipher suite rooms here do not use",
            &gina_caller,
            &group_info_path,
            encode(&unsupported_suite),
            verify_refusal(&unsupported_suite),
        ),
        group_info_case(
            "a GREASE cipher suite",
            &gina_caller,
            &group_info_path,
            encode(&grease_suite),
            verify_refusal(&grease_suite),
        ),
        group_info_case(
            "an X.509 credential",
            &gina_caller,
            &group_info_path,
            encode(&x509),
            verify_refusal(&x509),
        ),
        group_info_case(
            "a credential naming a user, not a client",
            &gina_caller,
            &group_info_path,
            encode(&user_credential),
            verify_refusal(&user_credential),
        ),
        group_info_case(
            "a request for a participant's device, sent with another user's token",
            &gina_caller,
            &group_info_path,
            encode(&signed(&|tbs| {
                tbs.requesting_credential = basic(alice_laptop.id().as_str())
            })),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "the request is for mimi://localhost/d/alice/laptop, but the bearer token \
                   authenticates mimi://localhost/d/gina/phone",
                ],
            ),
        ),
        group_info_case(
            "the device's own request sent by another device of its user",
            &alice_caller,
            &group_info_path,
            base.body.clone(),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "the request is for mimi://localhost/d/alice/laptop, but the bearer token \
                   authenticates mimi://localhost/d/alice/phone",
                ],
            ),
        ),
        group_info_case(
            "an HPKE key the suite's KEM cannot use",
            &laptop_caller,
            &group_info_path,
            encode(
                &alice_laptop
                    .group_info_request(&[9; 5])
                    .expect("a signed GroupInfoRequest"),
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &[
                    "GroupInfoRequest.groupInfoPublicKey",
                    "(5 bytes) is not usable",
                ],
            ),
        ),
        group_info_case(
            "an empty HPKE key",
            &laptop_caller,
            &group_info_path,
            encode(
                &alice_laptop
                    .group_info_request(&[])
                    .expect("a signed GroupInfoRequest"),
            ),
            refused(
                StatusCode::BAD_REQUEST,
                &[
                    "GroupInfoRequest.groupInfoPublicKey",
                    "(0 bytes) is not usable",
                ],
            ),
        ),
        group_info_case(
            "a room of another provider, for the requester",
            &laptop_caller,
            &format!("{PREFIX}groupInfo/example.org/r/hostile"),
            base.body.clone(),
            refused(
                StatusCode::BAD_GATEWAY,
                &["cannot resolve peer example.org"],
            ),
        ),
        group_info_case(
            "a room of another provider, for another client (not forwarded)",
            &alice_caller,
            &format!("{PREFIX}groupInfo/example.org/r/hostile"),
            base.body.clone(),
            refused(
                StatusCode::FORBIDDEN,
                &[
                    "the request is for mimi://localhost/d/alice/laptop, but the bearer token \
                   authenticates mimi://localhost/d/alice/phone",
                ],
            ),
        ),
        group_info_case(
            "a room of another provider, for a user credential (not forwarded)",
            &gina_caller,
            &format!("{PREFIX}groupInfo/example.org/r/hostile"),
            encode(&user_credential),
            refused(
                StatusCode::BAD_REQUEST,
                &["GroupInfoRequest.requestingCredential"],
            ),
        ),
    ]);
    harness.check_all(&cases).await;

    // --- reportAbuse/{room} (protocol-06 §5.9, MIMI.md §5.8) ------------------------------------
    let report_path = room_path("reportAbuse", &hostile);
    let bob_caller = Caller::Client("bob");
    let genuine = bob
        .abuse_report(&user("alice"), 0, "insults", &[&kept])
        .expect("report built");
    let base = Base {
        op: "reportAbuse",
        caller: bob_caller.clone(),
        path: report_path.clone(),
        body: encode(&genuine),
        prefixes: 6,
        cuts: 40,
        decode: decode_as::<AbuseReport>,
    };
    let mut cases = wire_cases(&base);
    cases.extend(room_param_cases("reportAbuse", &bob_caller, &base.body));
    let report_case = |name: &str, report: &AbuseReport, expect: Expect| {
        Case::post(
            format!("reportAbuse: {name}"),
            bob_caller.clone(),
            &report_path,
            encode(report),
            expect,
        )
    };
    for uri_case in hostile_uris("localhost", UriKind::User) {
        let mut report = genuine.clone();
        report.reporting_user = IdentifierUri::new(uri_case.bytes.clone());
        cases.push(report_case(
            &format!("reportingUser {}", uri_case.name),
            &report,
            uri_refusal(UriKind::User, "AbuseReport.reportingUser", &uri_case.bytes),
        ));
        let mut report = genuine.clone();
        report.alleged_abuser_uri = IdentifierUri::new(uri_case.bytes.clone());
        cases.push(report_case(
            &format!("allegedAbuserUri {}", uri_case.name),
            &report,
            uri_refusal(
                UriKind::User,
                "AbuseReport.allegedAbuserUri",
                &uri_case.bytes,
            ),
        ));
    }
    type Forgery = (&'static str, Box<dyn Fn(&mut AbuseReport)>, &'static str);
    let forgeries: Vec<Forgery> = vec![
        (
            "content text altered",
            Box::new(|r| {
                edit_content(r, &|content| {
                    *content = MimiContent::plain_text(content.salt, "something else")
                        .with_sender_and_room(
                            "mimi://localhost/u/alice",
                            "mimi://localhost/r/hostile",
                        )
                })
            }),
            "server_frank does not match",
        ),
        (
            "content byte flipped",
            Box::new(|r| {
                let content = &mut r.messages[0].message_content;
                let last = content.len() - 1;
                content[last] ^= 0x01;
            }),
            "server_frank does not match",
        ),
        (
            "salt altered",
            Box::new(|r| edit_content(r, &|content| content.salt[0] ^= 1)),
            "server_frank does not match",
        ),
        (
            "accepted_timestamp altered",
            Box::new(|r| r.messages[0].accepted_timestamp += 1),
            "server_frank does not match",
        ),
        (
            "accepted_timestamp 0",
            Box::new(|r| r.messages[0].accepted_timestamp = 0),
            "server_frank does not match",
        ),
        (
            "sender in the content and alleged abuser moved together",
            Box::new(|r| {
                edit_content(r, &|content| {
                    content
                        .extensions
                        .set_sender_uri("mimi://localhost/u/carol")
                });
                r.alleged_abuser_uri = uri("mimi://localhost/u/carol");
            }),
            "server_frank does not match",
        ),
        (
            "alleged abuser is not the sender",
            Box::new(|r| r.alleged_abuser_uri = uri("mimi://localhost/u/carol")),
            "not by the alleged abuser mimi://localhost/u/carol",
        ),
        (
            "room in the content altered",
            Box::new(|r| {
                edit_content(r, &|content| {
                    content.extensions.set_room_uri("mimi://localhost/r/side")
                })
            }),
            "was sent in mimi://localhost/r/side, not in mimi://localhost/r/hostile",
        ),
        (
            "content naming no room",
            Box::new(|r| {
                edit_content(r, &|content| {
                    *content = MimiContent::plain_text(content.salt, "report me")
                })
            }),
            "the content names no senderUri",
        ),
        (
            "content with a sender that is not a user URI",
            Box::new(|r| {
                edit_content(r, &|content| {
                    content
                        .extensions
                        .set_sender_uri("mimi://localhost/r/hostile")
                })
            }),
            "the content's senderUri \"mimi://localhost/r/hostile\" is not a user URI",
        ),
        (
            "content that is not MIMI content",
            Box::new(|r| r.messages[0].message_content = vec![0xff; 12]),
            "message_content is not MIMI content",
        ),
        (
            "empty content",
            Box::new(|r| r.messages[0].message_content.clear()),
            "message_content is not MIMI content",
        ),
        (
            "server_frank altered",
            Box::new(|r| r.messages[0].frank.server_frank[31] ^= 0x80),
            "server_frank does not match",
        ),
        (
            "signature altered",
            Box::new(|r| r.messages[0].frank.franking_integrity_signature[10] ^= 0x01),
            "franking_integrity_signature does not verify",
        ),
        (
            "signature truncated",
            Box::new(|r| {
                r.messages[0].frank.franking_integrity_signature.pop();
            }),
            "franking_integrity_signature does not verify",
        ),
        (
            "signature empty",
            Box::new(|r| r.messages[0].frank.franking_integrity_signature.clear()),
            "franking_integrity_signature does not verify",
        ),
        (
            "suite altered",
            Box::new(|r| r.messages[0].frank.franking_signature_ciphersuite = CipherSuite(3)),
            "is not the room's suite",
        ),
        (
            "no message",
            Box::new(|r| r.messages.clear()),
            "at least one franked message",
        ),
        (
            "33 messages",
            Box::new(|r| {
                let message = r.messages[0].clone();
                r.messages = vec![message; 33];
            }),
            "33 messages; a report carries at most 32",
        ),
        (
            "a genuine message, then a forged one",
            Box::new(|r| {
                let mut second = r.messages[0].clone();
                second.accepted_timestamp ^= 1;
                r.messages.push(second);
            }),
            "AbuseReport.messages[1]: server_frank does not match",
        ),
    ];
    for (name, forge, reason) in &forgeries {
        let mut report = genuine.clone();
        forge(&mut report);
        cases.push(report_case(
            name,
            &report,
            refused(StatusCode::BAD_REQUEST, &[reason]),
        ));
    }
    let mut not_utf8_note = encode(&genuine);
    {
        // The note "insults" follows the two URIs and the reason code.
        let at = not_utf8_note
            .windows(7)
            .position(|window| window == b"insults")
            .expect("the note");
        not_utf8_note[at] = 0xff;
    }
    let mut as_alice = genuine.clone();
    as_alice.reporting_user = uri("mimi://localhost/u/alice");
    let mut as_other_provider = genuine.clone();
    as_other_provider.reporting_user = uri("mimi://example.org/u/bob");
    cases.extend([
        Case::post(
            "reportAbuse: a note that is not UTF-8",
            bob_caller.clone(),
            &report_path,
            not_utf8_note.clone(),
            codec_refusal(
                "reportAbuse: a note that is not UTF-8",
                decode_as::<AbuseReport>,
                &limits(),
                &not_utf8_note,
                &["bad_utf8"],
            ),
        ),
        report_case(
            "reportingUser of another user",
            &as_alice,
            refused(
                StatusCode::FORBIDDEN,
                &["reportingUser mimi://localhost/u/alice is not the authenticated client's user \
                   mimi://localhost/u/bob"],
            ),
        ),
        report_case(
            "reportingUser of another provider",
            &as_other_provider,
            refused(
                StatusCode::FORBIDDEN,
                &["reportingUser mimi://example.org/u/bob is not the authenticated client's user"],
            ),
        ),
        Case::post(
            "reportAbuse: an unknown room of this provider",
            bob_caller.clone(),
            &room_path("reportAbuse", &room("nowhere")),
            base.body.clone(),
            refused(
                StatusCode::NOT_FOUND,
                &["room mimi://localhost/r/nowhere is not hosted by localhost"],
            ),
        ),
        Case::post(
            "reportAbuse: the message reported in another room",
            bob_caller.clone(),
            &room_path("reportAbuse", &side),
            base.body.clone(),
            refused(
                StatusCode::BAD_REQUEST,
                &["was sent in mimi://localhost/r/hostile, not in mimi://localhost/r/side"],
            ),
        ),
        Case::post(
            "reportAbuse: a room of another provider",
            bob_caller.clone(),
            &format!("{PREFIX}reportAbuse/example.org/r/hostile"),
            base.body.clone(),
            refused(
                StatusCode::BAD_GATEWAY,
                &["cannot resolve peer example.org"],
            ),
        ),
    ]);
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
        prefixes: 2,
        cuts: 32,
        decode: decode_as::<AckRequest>,
    };
    let mut cases = wire_cases(&base);
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
    harness.assert_shares(
        "room_endpoints",
        &[
            ("rooms", 90),
            ("update", 101),
            ("submitMessage", 121),
            ("groupInfo", 110),
            ("reportAbuse", 184),
            ("ack", 50),
        ],
        656,
    );
    drop(harness);

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
    // The genuine report and the groupInfo request of the device go through: the cases above
    // were refused for their reasons.
    let (status, reply) = bob
        .post_raw(&report_path, encode(&genuine))
        .await
        .expect("report");
    assert_eq!(status, StatusCode::CREATED, "{}", text(&reply));
    let (status, reply) = alice_laptop
        .post_raw(&group_info_path, encode(&laptop_request))
        .await
        .expect("groupInfo");
    assert_eq!(status, StatusCode::OK, "{}", text(&reply));

    let updated = alice.self_update(&hostile).await.expect("update works");
    assert!(
        matches!(updated, UpdateResult::Accepted { .. }),
        "{updated:?}"
    );
    assert_eq!(room_view(&node, &hostile).0, 2);

    // A real stale commit (protocol-06 §5.2, MIMI.md §7.3 step 10): bob built his on epoch 1,
    // after alice's epoch-2 commit was accepted.
    let before = state_digest(&node);
    let stale = bob.self_update(&hostile).await.expect("update answered");
    assert_eq!(stale, UpdateResult::WrongEpoch { current_epoch: 2 });
    assert!(
        state_digest(&node) == before,
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
    assert_ready(&node, "the valid requests").await;
    raw.http.close().await;
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Discovery and consent endpoints.

/// A KeyPackage of a client the test makes up (credential `identity`, its own signature key):
/// well-formed and signed, but of a client the provider may not know.
fn made_up_key_package(identity: &str) -> Mls<KeyPackageIn> {
    use openmls::prelude::{Ciphersuite, CredentialWithKey, KeyPackage};
    use openmls_rust_crypto::OpenMlsRustCrypto;
    let provider = OpenMlsRustCrypto::default();
    let suite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("key pair");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    let bundle = KeyPackage::builder()
        .build(suite, &provider, &signer, credential)
        .expect("KeyPackage");
    Mls::from_bytes(
        &bundle
            .key_package()
            .tls_serialize_detached()
            .expect("serialises"),
    )
    .expect("decodes")
}

/// The reason `identifierQuery/{param}` gets for a path parameter that is not a domain.
fn not_a_domain(param: &str) -> Option<Expect> {
    use mimid_actors::ids::{MimiUri, UriKind as Kind};
    match MimiUri::parse(&format!("mimi://{param}")) {
        Ok(uri) if uri.kind() == Kind::Provider => None,
        _ => Some(refused(
            StatusCode::BAD_REQUEST,
            &[&format!(
                "identifierQuery path parameter {param:?} is not a domain"
            )],
        )),
    }
}

/// profile, preferences, identifierQuery/{domain}, requestConsent and updateConsent (MIMI.md
/// §5.6, §5.7, §6.8): the codec's refusals, every handle form the profile rules refuse, handles
/// of another user (409), hostile URIs in every scope field, domains that are not domains,
/// operations sent to the wrong endpoint, a client speaking for another user (403), grants of
/// KeyPackages that are another user's, made up, already stored or already claimed (reused), and
/// requests for other providers' users that cannot be forwarded (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_endpoints_refuse_hostile_input_and_change_nothing_mimi_5_6_5_7() {
    let node = start_node().await;
    let raw = Raw::connect(&node).await;
    let alice = node.client("alice", "phone", 0).await;
    let bob = node.client("bob", "phone", 0).await;
    let carol = node.client("carol", "phone", 0).await;
    let alice_profile = ProfileBody {
        display_name: "Alice".into(),
        nick: Some("alice".into()),
        emails: vec!["alice@example.org".into()],
        phones: vec!["+15551234567".into()],
    };
    alice
        .set_profile(&alice_profile)
        .await
        .expect("alice's profile");
    // Two KeyPackages of alice the test knows: one stays stored, carol claims the other.
    let first = key_package(&alice);
    let second = key_package(&alice);
    for key_package in [&first, &second] {
        let (status, reply) = alice
            .post_raw(
                &client_path("keyPackages"),
                publish_body(vec![key_package.clone()], false),
            )
            .await
            .expect("publish");
        assert_eq!(status, StatusCode::CREATED, "{}", text(&reply));
    }
    let got = carol
        .claim(&user("alice"), &room("den"))
        .await
        .expect("carol claims alice's KeyPackage");
    assert_eq!(got.len(), 1);
    let served = got[0].tls_serialize_detached().expect("serialises");
    let (claimed, stored) = if served == first.bytes() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(served, claimed.bytes());
    let harness = Harness::new(
        &node,
        &raw,
        &[("alice", &alice), ("bob", &bob), ("carol", &carol)],
    );
    let alice_caller = Caller::Client("alice");

    // --- profile ------------------------------------------------------------------------------
    let profile_path = client_path("profile");
    let profile_case = |name: &str, caller: &Caller, body: Vec<u8>, expect: Expect| {
        Case::post(
            format!("profile: {name}"),
            caller.clone(),
            &profile_path,
            body,
            expect,
        )
    };
    let base = Base {
        op: "profile",
        caller: alice_caller.clone(),
        path: profile_path.clone(),
        body: encode(&alice_profile),
        prefixes: 6,
        cuts: 48,
        decode: decode_as::<ProfileBody>,
    };
    let mut cases = wire_cases(&base);
    // Every handle form MIMI.md §5.7 refuses, with the profile rules' own reason.
    let long_local = format!("{}@example.org", "a".repeat(65));
    let long_email = format!("a@{}.example.org", "b".repeat(250));
    let invalid: Vec<(&str, ProfileBody)> = vec![
        (
            "empty nick",
            ProfileBody {
                nick: Some(String::new()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick of 65 bytes",
            ProfileBody {
                nick: Some("a".repeat(65)),
                ..alice_profile.clone()
            },
        ),
        (
            "nick with capitals",
            ProfileBody {
                nick: Some("Alice".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick with a space",
            ProfileBody {
                nick: Some("al ice".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick with an @",
            ProfileBody {
                nick: Some("al@ice".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick starting with a dot",
            ProfileBody {
                nick: Some(".alice".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick ending with a hyphen",
            ProfileBody {
                nick: Some("alice-".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick of non-ASCII letters",
            ProfileBody {
                nick: Some("älice".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "nick with a NUL",
            ProfileBody {
                nick: Some("ali\0ce".into()),
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail without @",
            ProfileBody {
                emails: vec!["alice.example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with two @",
            ProfileBody {
                emails: vec!["a@b@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with an empty local part",
            ProfileBody {
                emails: vec!["@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with a 65-byte local part",
            ProfileBody {
                emails: vec![long_local.clone()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail of 255 bytes",
            ProfileBody {
                emails: vec![long_email.clone()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with a space",
            ProfileBody {
                emails: vec!["al ice@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with a quote",
            ProfileBody {
                emails: vec!["\"alice\"@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail starting with a dot",
            ProfileBody {
                emails: vec![".alice@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with two dots in a row",
            ProfileBody {
                emails: vec!["al..ice@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with an empty domain",
            ProfileBody {
                emails: vec!["alice@".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with an empty domain label",
            ProfileBody {
                emails: vec!["alice@example..org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with an underscore in the domain",
            ProfileBody {
                emails: vec!["alice@ex_ample.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "e-mail with a non-ASCII local part",
            ProfileBody {
                emails: vec!["älice@example.org".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "five e-mail addresses",
            ProfileBody {
                emails: (1..=5).map(|i| format!("alice{i}@example.org")).collect(),
                ..alice_profile.clone()
            },
        ),
        (
            "phone without +",
            ProfileBody {
                phones: vec!["15551234567".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "phone with a letter",
            ProfileBody {
                phones: vec!["+1555123456a".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "phone with spaces",
            ProfileBody {
                phones: vec!["+1 555 123 4567".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "phone of 7 digits",
            ProfileBody {
                phones: vec!["+1555123".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "phone of 16 digits",
            ProfileBody {
                phones: vec!["+1555123456789012".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "phone starting with 0",
            ProfileBody {
                phones: vec!["+05551234567".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "phone that is only +",
            ProfileBody {
                phones: vec!["+".into()],
                ..alice_profile.clone()
            },
        ),
        (
            "five phone numbers",
            ProfileBody {
                phones: (1..=5).map(|i| format!("+1555123456{i}")).collect(),
                ..alice_profile.clone()
            },
        ),
        (
            "display name of 129 bytes",
            ProfileBody {
                display_name: "A".repeat(129),
                ..alice_profile.clone()
            },
        ),
        (
            "display name with a bell character",
            ProfileBody {
                display_name: "Al\u{7}ice".into(),
                ..alice_profile.clone()
            },
        ),
        (
            "display name with a line break",
            ProfileBody {
                display_name: "Al\nice".into(),
                ..alice_profile.clone()
            },
        ),
    ];
    for (name, profile) in invalid {
        let error = profile
            .to_profile()
            .expect_err("the profile rules refuse it");
        assert!(
            !matches!(error, ProfileError::HandleTaken { .. }),
            "{name}: {error}"
        );
        cases.push(profile_case(
            name,
            &alice_caller,
            encode(&profile),
            refused(StatusCode::BAD_REQUEST, &[&error.to_string()]),
        ));
    }
    // Handles of another user (MIMI.md §5.7: a handle is unique per provider).
    let carol_caller = Caller::Client("carol");
    for (name, profile, handle) in [
        (
            "alice's nick",
            ProfileBody {
                nick: Some("alice".into()),
                ..ProfileBody::default()
            },
            "nick alice",
        ),
        (
            "alice's e-mail with its domain in capitals",
            ProfileBody {
                emails: vec!["alice@EXAMPLE.ORG".into()],
                ..ProfileBody::default()
            },
            "alice@example.org",
        ),
        (
            "alice's phone number",
            ProfileBody {
                phones: vec!["+15551234567".into()],
                ..ProfileBody::default()
            },
            "+15551234567",
        ),
    ] {
        cases.push(profile_case(
            name,
            &carol_caller,
            encode(&profile),
            refused(StatusCode::CONFLICT, &[handle, "belongs to another user"]),
        ));
    }
    // Strings that are not UTF-8 and an optional flag that is neither 0 nor 1.
    let profile_bytes = encode(&alice_profile);
    for (name, needle) in [
        ("display name", &b"Alice"[..]),
        ("nick", &b"alice"[..]),
        ("e-mail", &b"alice@example.org"[..]),
        ("phone", &b"+15551234567"[..]),
    ] {
        let at = profile_bytes
            .windows(needle.len())
            .position(|window| window == needle)
            .expect("the field's bytes");
        let mut body = profile_bytes.clone();
        body[at + 1] = 0xff;
        let case_name = format!("profile: {name} not UTF-8");
        let expect = codec_refusal(
            &case_name,
            decode_as::<ProfileBody>,
            &limits(),
            &body,
            &["bad_utf8"],
        );
        cases.push(profile_case(
            &format!("{name} not UTF-8"),
            &alice_caller,
            body,
            expect,
        ));
    }
    let mut flag_2 = profile_bytes.clone();
    flag_2[1 + b"Alice".len()] = 2;
    let expect = codec_refusal(
        "profile: nick presence flag 2",
        decode_as::<ProfileBody>,
        &limits(),
        &flag_2,
        &["bad_optional"],
    );
    cases.push(profile_case(
        "nick presence flag 2",
        &alice_caller,
        flag_2,
        expect,
    ));
    harness.check_all(&cases).await;

    // --- preferences --------------------------------------------------------------------------
    let preferences_path = client_path("preferences");
    let base = Base {
        op: "preferences",
        caller: alice_caller.clone(),
        path: preferences_path.clone(),
        body: vec![1, 1],
        prefixes: 0,
        cuts: 2,
        decode: decode_as::<PreferencesBody>,
    };
    let mut cases = wire_cases(&base);
    for (discoverability, reachability) in [
        (0, 1),
        (4, 1),
        (255, 1),
        (1, 0),
        (1, 4),
        (1, 255),
        (0, 0),
        (9, 9),
    ] {
        let body = vec![discoverability, reachability];
        let name =
            format!("preferences: discoverability {discoverability}, reachability {reachability}");
        let expect = codec_refusal(
            &name,
            decode_as::<PreferencesBody>,
            &limits(),
            &body,
            &["bad_enum"],
        );
        cases.push(Case::post(
            name,
            alice_caller.clone(),
            &preferences_path,
            body,
            expect,
        ));
    }
    harness.check_all(&cases).await;

    // --- identifierQuery/{domain} ---------------------------------------------------------------
    let element = |field: SearchField, value: &str| QueryElement {
        field,
        search_value: value.to_owned(),
    };
    let query = |elements: Vec<QueryElement>| {
        encode(&IdentifierRequest {
            query_elements: elements,
            id_request_extensions: no_extensions().expect("empty dictionary"),
        })
    };
    let query_path = client_path("identifierQuery/localhost");
    let valid_query = query(vec![
        element(SearchField::Nick, "alice"),
        element(SearchField::Email, "alice@example.org"),
    ]);
    let base = Base {
        op: "identifierQuery",
        caller: alice_caller.clone(),
        path: query_path.clone(),
        body: valid_query.clone(),
        prefixes: 3,
        cuts: 40,
        decode: decode_as::<IdentifierRequest>,
    };
    let mut cases = wire_cases(&base);
    for param in [
        "",
        "a..example",
        "-a.example",
        "a-.example",
        "a_b.example",
        "localhost:443",
        "localhost/u/alice",
        "localhost/r/den",
        "%FF",
        "%6Cocalhost",
        "mimi:%2F%2Flocalhost",
        "@localhost",
        "example.org.",
    ] {
        let expect = not_a_domain(param).unwrap_or_else(|| panic!("{param:?} is a domain"));
        cases.push(Case::post(
            format!("identifierQuery: path parameter {param:?}"),
            alice_caller.clone(),
            &client_path(&format!("identifierQuery/{param}")),
            valid_query.clone(),
            expect,
        ));
    }
    let long_label = format!("{}.example", "x".repeat(64));
    let expect = not_a_domain(&long_label).expect("not a domain");
    cases.push(Case::post(
        "identifierQuery: a 64-byte label",
        alice_caller.clone(),
        &client_path(&format!("identifierQuery/{long_label}")),
        valid_query.clone(),
        expect,
    ));
    let mut search_type_cases = Vec::new();
    for search_type in [0u8, 9, 200, 255] {
        let mut body = valid_query.clone();
        // The first element's searchType follows the vector's one-byte length.
        body[1] = search_type;
        search_type_cases.push((format!("searchType {search_type}"), body, &["bad_enum"][..]));
    }
    let mut not_utf8_value = valid_query.clone();
    let at = not_utf8_value
        .windows(5)
        .position(|window| window == b"alice")
        .expect("the value");
    not_utf8_value[at] = 0xc3;
    search_type_cases.push((
        "searchValue not UTF-8".into(),
        not_utf8_value,
        &["bad_utf8"][..],
    ));
    let mut bad_extensions = query(vec![element(SearchField::Nick, "alice")]);
    *bad_extensions.last_mut().expect("non-empty") = 0x05;
    search_type_cases.push((
        "id_request_extensions that are not a dictionary".into(),
        bad_extensions,
        &["bad_mls_structure", "truncated"][..],
    ));
    for (name, body, class) in search_type_cases {
        let name = format!("identifierQuery: {name}");
        let expect = codec_refusal(
            &name,
            decode_as::<IdentifierRequest>,
            &limits(),
            &body,
            class,
        );
        cases.push(Case::post(
            name,
            alice_caller.clone(),
            &query_path,
            body,
            expect,
        ));
    }
    for (name, elements, code) in [
        (
            "a partial name (unsupported)",
            vec![element(SearchField::PartialName, "Ali")],
            IdentifierQueryCode::UnsupportedField,
        ),
        (
            "the whole profile (unsupported)",
            vec![element(SearchField::WholeProfile, "Alice")],
            IdentifierQueryCode::UnsupportedField,
        ),
        (
            "an OIDC claim (unsupported)",
            vec![element(
                SearchField::OidcStdClaim {
                    claim_name: b"email".to_vec(),
                },
                "alice@example.org",
            )],
            IdentifierQueryCode::UnsupportedField,
        ),
        (
            "a vCard field (unsupported)",
            vec![element(
                SearchField::VcardField {
                    property_name: b"TEL".to_vec(),
                },
                "+15551234567",
            )],
            IdentifierQueryCode::UnsupportedField,
        ),
        (
            "a nick nobody has",
            vec![element(SearchField::Nick, "nobody")],
            IdentifierQueryCode::NotFound,
        ),
        (
            "alice's nick and carol's e-mail",
            vec![
                element(SearchField::Nick, "alice"),
                element(SearchField::Email, "carol@example.org"),
            ],
            IdentifierQueryCode::NotFound,
        ),
        (
            "a nick of 10 000 bytes",
            vec![element(SearchField::Nick, &"a".repeat(10_000))],
            IdentifierQueryCode::NotFound,
        ),
    ] {
        cases.push(Case::post(
            format!("identifierQuery: {name}"),
            alice_caller.clone(),
            &query_path,
            query(elements),
            Expect::Identifier(code),
        ));
    }
    for (name, param) in [
        ("a provider that is not a peer", "example.org"),
        ("an IP address (not a peer)", "127.0.0.1"),
    ] {
        cases.push(Case::post(
            format!("identifierQuery: {name}"),
            alice_caller.clone(),
            &client_path(&format!("identifierQuery/{param}")),
            valid_query.clone(),
            refused(
                StatusCode::BAD_GATEWAY,
                &[&format!("cannot resolve peer {param}")],
            ),
        ));
    }
    harness.check_all(&cases).await;

    // --- requestConsent and updateConsent (MIMI.md §5.6) ---------------------------------------
    let den = uri("mimi://localhost/r/den");
    let entry = |operation: ConsentOp,
                 requester: IdentifierUri,
                 target: IdentifierUri,
                 room: Option<IdentifierUri>| {
        encode(&ConsentEntry {
            operation,
            scope: ConsentScope {
                requester_uri: requester,
                target_uri: target,
                room_id: room,
            },
            consent_extensions: no_extensions().expect("empty dictionary"),
        })
    };
    let alice_uri = uri("mimi://localhost/u/alice");
    let bob_uri = uri("mimi://localhost/u/bob");
    // The oracle for a scope the node must refuse (`scope_ids`): the field's error.
    let scope_refusal = |body: &[u8]| {
        let entry = ConsentEntry::from_bytes(body, &limits()).expect("decodes");
        let error =
            mimid_node::wire::discovery::scope_ids(&entry.scope).expect_err("a hostile scope");
        refused(
            StatusCode::BAD_REQUEST,
            &[&format!("{}: {error}", error.code())],
        )
    };
    for (endpoint, as_requester) in [("requestConsent", true), ("updateConsent", false)] {
        let path = client_path(endpoint);
        let operation = if as_requester {
            ConsentOp::Request
        } else {
            ConsentOp::Revoke
        };
        // alice speaks for herself: as requester of bob's consent, or as bob's target.
        let (me, other) = if as_requester {
            (alice_uri.clone(), bob_uri.clone())
        } else {
            (bob_uri.clone(), alice_uri.clone())
        };
        let valid = entry(
            operation.clone(),
            me.clone(),
            other.clone(),
            Some(den.clone()),
        );
        let base = Base {
            op: endpoint,
            caller: alice_caller.clone(),
            path: path.clone(),
            body: valid.clone(),
            prefixes: 3,
            cuts: 40,
            decode: decode_as::<ConsentEntry>,
        };
        let mut cases = wire_cases(&base);
        let case = |name: &str, body: Vec<u8>, expect: Expect| {
            Case::post(
                format!("{endpoint}: {name}"),
                alice_caller.clone(),
                &path,
                body,
                expect,
            )
        };
        for hostile in hostile_uris("localhost", UriKind::User) {
            let bad = IdentifierUri::new(hostile.bytes.clone());
            // requestConsent: alice asks bob; updateConsent: alice decides bob's request.
            let (requester_kept, target_kept) = if as_requester {
                (alice_uri.clone(), bob_uri.clone())
            } else {
                (bob_uri.clone(), alice_uri.clone())
            };
            let body = entry(
                operation.clone(),
                bad.clone(),
                target_kept,
                Some(den.clone()),
            );
            cases.push(case(
                &format!("requesterUri {}", hostile.name),
                body.clone(),
                scope_refusal(&body),
            ));
            let body = entry(
                operation.clone(),
                requester_kept,
                bad.clone(),
                Some(den.clone()),
            );
            cases.push(case(
                &format!("targetUri {}", hostile.name),
                body.clone(),
                scope_refusal(&body),
            ));
        }
        for hostile in hostile_uris("localhost", UriKind::Room) {
            let body = entry(
                operation.clone(),
                me.clone(),
                other.clone(),
                Some(IdentifierUri::new(hostile.bytes.clone())),
            );
            cases.push(case(
                &format!("roomId {}", hostile.name),
                body.clone(),
                scope_refusal(&body),
            ));
        }
        let self_consent = entry(
            operation.clone(),
            alice_uri.clone(),
            alice_uri.clone(),
            None,
        );
        let mut undefined_op = valid.clone();
        undefined_op[0] = 4;
        let mut op_255 = valid.clone();
        op_255[0] = 255;
        let mut room_flag_2 = entry(operation.clone(), me.clone(), other.clone(), None);
        let flag_at = room_flag_2.len() - 2;
        room_flag_2[flag_at] = 2;
        let mut bad_extensions = valid.clone();
        *bad_extensions.last_mut().expect("non-empty") = 0x07;
        for (name, body, class) in [
            ("undefined operation 4", undefined_op, &["bad_enum"][..]),
            ("operation 255", op_255, &["bad_enum"][..]),
            ("roomId presence flag 2", room_flag_2, &["bad_optional"][..]),
            (
                "consent_extensions that are not a dictionary",
                bad_extensions,
                &["bad_mls_structure", "truncated"][..],
            ),
        ] {
            let case_name = format!("{endpoint}: {name}");
            let expect = codec_refusal(
                &case_name,
                decode_as::<ConsentEntry>,
                &limits(),
                &body,
                class,
            );
            cases.push(case(name, body, expect));
        }
        cases.push(case(
            "requester and target are the same user",
            self_consent,
            refused(
                StatusCode::BAD_REQUEST,
                &["invalid_value: ConsentEntry.targetUri: the target is the requester"],
            ),
        ));
        if as_requester {
            cases.extend([
                case(
                    "a grant",
                    entry(
                        ConsentOp::Grant {
                            client_key_packages: Vec::new(),
                        },
                        me.clone(),
                        other.clone(),
                        None,
                    ),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &[
                            "requestConsent carries a request or cancel; grant and revoke go to \
                           updateConsent",
                        ],
                    ),
                ),
                case(
                    "a revoke",
                    entry(ConsentOp::Revoke, me.clone(), other.clone(), None),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["grant and revoke go to updateConsent"],
                    ),
                ),
                case(
                    "as another user",
                    entry(
                        ConsentOp::Request,
                        uri("mimi://localhost/u/carol"),
                        other.clone(),
                        None,
                    ),
                    refused(
                        StatusCode::FORBIDDEN,
                        &[
                            "requesterUri mimi://localhost/u/carol is not the authenticated \
                           client's user mimi://localhost/u/alice",
                        ],
                    ),
                ),
                case(
                    "as a user of another provider",
                    entry(
                        ConsentOp::Request,
                        uri("mimi://example.org/u/alice"),
                        other.clone(),
                        None,
                    ),
                    refused(
                        StatusCode::FORBIDDEN,
                        &[
                            "requesterUri mimi://example.org/u/alice is not the authenticated \
                           client's user",
                        ],
                    ),
                ),
                case(
                    "a target at a provider that is not a peer (nothing recorded)",
                    entry(
                        ConsentOp::Request,
                        me.clone(),
                        uri("mimi://example.org/u/bob"),
                        None,
                    ),
                    refused(
                        StatusCode::BAD_GATEWAY,
                        &["cannot resolve peer example.org"],
                    ),
                ),
                case(
                    "a cancel for a target at a provider that is not a peer",
                    entry(
                        ConsentOp::Cancel,
                        me.clone(),
                        uri("mimi://example.org/u/bob"),
                        None,
                    ),
                    refused(
                        StatusCode::BAD_GATEWAY,
                        &["cannot resolve peer example.org"],
                    ),
                ),
            ]);
        } else {
            let grant = |key_packages: Vec<Mls<KeyPackageIn>>| {
                entry(
                    ConsentOp::Grant {
                        client_key_packages: key_packages,
                    },
                    bob_uri.clone(),
                    alice_uri.clone(),
                    Some(den.clone()),
                )
            };
            let mut bad_signature = key_package(&alice).bytes().to_vec();
            *bad_signature.last_mut().expect("non-empty") ^= 0x01;
            let bad_signature = Mls::from_bytes(&bad_signature).expect("still a KeyPackage");
            let fresh = key_package(&alice);
            cases.extend([
                case(
                    "a request",
                    entry(ConsentOp::Request, me.clone(), other.clone(), None),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["updateConsent carries a grant or revoke; request and cancel go to \
                           requestConsent"],
                    ),
                ),
                case(
                    "a cancel",
                    entry(ConsentOp::Cancel, me.clone(), other.clone(), None),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["request and cancel go to requestConsent"],
                    ),
                ),
                case(
                    "as another target",
                    entry(ConsentOp::Revoke, bob_uri.clone(), uri("mimi://localhost/u/carol"), None),
                    refused(
                        StatusCode::FORBIDDEN,
                        &["targetUri mimi://localhost/u/carol is not the authenticated client's \
                           user mimi://localhost/u/alice"],
                    ),
                ),
                case(
                    "a grant of another user's KeyPackage",
                    grant(vec![key_package(&carol)]),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["ConsentEntry.clientKeyPackages[0]: names mimi://localhost/d/carol/phone, \
                           which is not a client of mimi://localhost/u/alice"],
                    ),
                ),
                case(
                    "a grant of a KeyPackage whose signature does not verify",
                    grant(vec![bad_signature]),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["ConsentEntry.clientKeyPackages[0]:", "signature is invalid"],
                    ),
                ),
                case(
                    "a grant of a KeyPackage naming a user, not a client",
                    grant(vec![made_up_key_package("mimi://localhost/u/alice")]),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["ConsentEntry.clientKeyPackages[0]:", "not a client URI"],
                    ),
                ),
                case(
                    "a grant of a KeyPackage of a client alice never registered",
                    grant(vec![made_up_key_package("mimi://localhost/d/alice/tablet")]),
                    refused(
                        StatusCode::BAD_REQUEST,
                        &["grant KeyPackage 0: mimi://localhost/d/alice/tablet is not a \
                           registered client of the granting user"],
                    ),
                ),
                case(
                    "a grant of a KeyPackage that is stored for claims (reused)",
                    grant(vec![stored.clone()]),
                    refused(StatusCode::BAD_REQUEST, &["KeyPackage 0 is a duplicate"]),
                ),
                case(
                    "a grant of a KeyPackage that was claimed (reused)",
                    grant(vec![claimed.clone()]),
                    refused(StatusCode::BAD_REQUEST, &["KeyPackage 0 was already claimed"]),
                ),
                case(
                    "a grant of the same fresh KeyPackage twice",
                    grant(vec![fresh.clone(), fresh.clone()]),
                    refused(StatusCode::BAD_REQUEST, &["KeyPackage 1 is a duplicate"]),
                ),
            ]);
        }
        harness.check_all(&cases).await;
    }

    // The valid requests go through: the cases above were refused for their reasons.
    let (status, reply) = alice
        .post_raw(&client_path("preferences"), vec![2, 2])
        .await
        .expect("preferences");
    assert_eq!(status, StatusCode::NO_CONTENT, "{}", text(&reply));
    let (status, reply) = alice
        .post_raw(&query_path, valid_query)
        .await
        .expect("query");
    assert_eq!(status, StatusCode::OK, "{}", text(&reply));
    let (status, reply) = alice
        .post_raw(
            &client_path("requestConsent"),
            entry(
                ConsentOp::Request,
                alice_uri.clone(),
                bob_uri.clone(),
                Some(den.clone()),
            ),
        )
        .await
        .expect("requestConsent");
    assert_eq!(status, StatusCode::CREATED, "{}", text(&reply));
    assert_eq!(bob.consents().await.expect("listed").incoming.len(), 1);
    harness.assert_shares(
        "discovery_endpoints",
        &[
            ("profile (POST)", 120),
            ("preferences", 12),
            ("identifierQuery", 74),
            ("requestConsent", 189),
            ("updateConsent", 193),
        ],
        588,
    );
    raw.http.close().await;
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The admin listener, and blocked users on every endpoint.

/// One plain HTTP/1.1 request to the admin listener with the header lines given (raw bytes, so
/// a header may be anything a hostile operator tool sends): status and body.
async fn admin_raw(
    admin: &str,
    method: &str,
    path: &str,
    headers: &[Vec<u8>],
    body: &[u8],
) -> (StatusCode, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin listener");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for header in headers {
        head.extend_from_slice(header);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await.expect("head sent");
    stream.write_all(body).await.expect("body sent");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("answer read");
    let end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a complete head");
    let status = std::str::from_utf8(&response[..end])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .expect("a status line");
    (status, response[end + 4..].to_vec())
}

/// A request to the admin listener and the answer it must get.
struct AdminCase {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<Vec<u8>>,
    body: Vec<u8>,
    expect: Expect,
}

impl Harness<'_> {
    async fn check_admin(&self, case: &AdminCase) {
        self.tally
            .lock()
            .expect("not poisoned")
            .count("admin listener");
        let before = state_digest(self.node);
        let (status, body) = admin_raw(
            &self.node.admin(),
            case.method,
            &case.path,
            &case.headers,
            &case.body,
        )
        .await;
        check_answer(&case.name, &case.expect, status, &HeaderMap::new(), &body);
        assert!(
            state_digest(self.node) == before,
            "{}: a refused admin request changed replicated state",
            case.name
        );
        assert_ready(self.node, &case.name).await;
    }
}

/// The admin listener's operator routes (issue 6; ops/runbooks): every route, the unknown ones
/// and the probe paths with another method, without the node's admin token or with a wrong one
/// (401 / 403, nothing changed, nothing revealed); block and unblock with bodies that are not
/// `{"target": T}` or whose target is neither a user nor a provider (400). Then MIMI.md §13: a
/// blocked user is refused on every client API endpoint and cannot register a device, a blocked
/// user or provider is not claimed from; unblocking restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_and_blocked_users_refuse_hostile_input_and_change_nothing_mimi_13() {
    let node = start_node().await;
    let raw = Raw::connect(&node).await;
    let alice = node.client("alice", "phone", 0).await;
    let mallory = client_id("mallory", "laptop");
    let mallory_token = raw.register(&mallory).await;
    let harness = Harness::new(&node, &raw, &[("alice", &alice)]);
    let token = node.admin_token();
    let right = format!("Authorization: Bearer {}", token.secret()).into_bytes();

    // --- the token gate ---------------------------------------------------------------------
    let missing = refused(
        StatusCode::UNAUTHORIZED,
        &["this admin route needs the node's admin token"],
    );
    let wrong = refused(StatusCode::FORBIDDEN, &["the admin token is wrong"]);
    let mut changed_char = token.secret().to_owned().into_bytes();
    changed_char[5] = if changed_char[5] == b'A' { b'B' } else { b'A' };
    let credentials: Vec<(&str, Vec<Vec<u8>>, &Expect)> = vec![
        ("no Authorization header", Vec::new(), &missing),
        (
            "the token under another scheme",
            vec![format!("Authorization: Basic {}", token.secret()).into_bytes()],
            &missing,
        ),
        (
            "the scheme without a token",
            vec![b"Authorization: Bearer".to_vec()],
            &missing,
        ),
        (
            "the scheme and blanks",
            vec![b"Authorization: Bearer    ".to_vec()],
            &missing,
        ),
        (
            "the token without a scheme",
            vec![format!("Authorization: {}", token.secret()).into_bytes()],
            &missing,
        ),
        (
            "a wrong token",
            vec![
                b"Authorization: Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_vec(),
            ],
            &wrong,
        ),
        (
            "the token with one character changed",
            vec![[&b"Authorization: Bearer "[..], &changed_char].concat()],
            &wrong,
        ),
        (
            "the token with a character appended",
            vec![format!("Authorization: Bearer {}x", token.secret()).into_bytes()],
            &wrong,
        ),
        (
            "a prefix of the token",
            vec![format!("Authorization: Bearer {}", &token.secret()[..20]).into_bytes()],
            &wrong,
        ),
        (
            "bytes that are not UTF-8",
            vec![b"Authorization: Bearer \xff\xfe\xfd".to_vec()],
            &wrong,
        ),
    ];
    let routes: [(&str, &str); 14] = [
        ("POST", "/admin/backup"),
        ("GET", "/admin/abuse/reports"),
        ("GET", "/admin/abuse/blocks"),
        ("POST", "/admin/abuse/block"),
        ("POST", "/admin/abuse/unblock"),
        ("GET", "/admin/cluster/status"),
        ("POST", "/admin/cluster/drain"),
        ("POST", "/admin/cluster/undrain"),
        ("POST", "/admin/cluster/nodes"),
        ("POST", "/admin/cluster/nodes/1/decommission"),
        ("GET", "/admin/no-such-route"),
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
        ("PUT", "/readyz"),
    ];
    let block_body = br#"{"target": "mimi://localhost/u/alice"}"#.to_vec();
    let mut cases = Vec::new();
    for (method, path) in routes {
        for (what, headers, expect) in &credentials {
            cases.push(AdminCase {
                name: format!("admin {method} {path}: {what}"),
                method,
                path: path.to_owned(),
                headers: headers.clone(),
                // The body a block would need: the gate answers before any route reads it.
                body: block_body.clone(),
                expect: (*expect).clone(),
            });
        }
    }

    // --- block and unblock bodies ---------------------------------------------------------------
    let not_json = |what: &str| {
        refused(
            StatusCode::BAD_REQUEST,
            &[
                "the body must be {\"target\": \"<user URI or domain>\"}",
                what,
            ],
        )
    };
    for path in ["/admin/abuse/block", "/admin/abuse/unblock"] {
        let body_cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            ("an empty body", Vec::new(), not_json("EOF while parsing")),
            (
                "an unfinished object",
                b"{".to_vec(),
                not_json("EOF while parsing"),
            ),
            ("an array", b"[]".to_vec(), not_json("invalid length 0")),
            (
                "a string",
                br#""b.example""#.to_vec(),
                not_json("invalid type"),
            ),
            (
                "a number as the target",
                br#"{"target": 5}"#.to_vec(),
                not_json("invalid type"),
            ),
            (
                "null as the target",
                br#"{"target": null}"#.to_vec(),
                not_json("invalid type"),
            ),
            (
                "no target",
                br#"{"tgt": "b.example"}"#.to_vec(),
                not_json("missing field `target`"),
            ),
            (
                "trailing characters",
                br#"{"target": "b.example"} x"#.to_vec(),
                not_json("trailing characters"),
            ),
            (
                "bytes that are not UTF-8",
                b"{\"target\": \"\xff\"}".to_vec(),
                not_json("invalid unicode"),
            ),
        ];
        for (what, body, expect) in body_cases {
            cases.push(AdminCase {
                name: format!("admin POST {path}: {what}"),
                method: "POST",
                path: path.to_owned(),
                headers: vec![right.clone()],
                body,
                expect,
            });
        }
        for target in [
            "mimi://localhost/r/den",
            "mimi://localhost/d/alice/phone",
            "mimi://localhost/g/team",
            "",
            "mimi://",
            "a..example",
            "https://b.example",
            "b.example:443",
            "mimi://b.example/u/bob?x=1",
            "mimi://b.example/u/",
            "bad_host.example",
            "exämple.org",
        ] {
            let reason = BlockTarget::parse(target).expect_err("not a block target");
            cases.push(AdminCase {
                name: format!("admin POST {path}: target {target:?}"),
                method: "POST",
                path: path.to_owned(),
                headers: vec![right.clone()],
                body: serde_json::to_vec(&serde_json::json!({ "target": target })).expect("JSON"),
                expect: refused(StatusCode::BAD_REQUEST, &[&reason]),
            });
        }
        let long = format!("{}.example", "x".repeat(300));
        let reason = BlockTarget::parse(&long).expect_err("not a block target");
        cases.push(AdminCase {
            name: format!("admin POST {path}: a 308-byte domain"),
            method: "POST",
            path: path.to_owned(),
            headers: vec![right.clone()],
            body: serde_json::to_vec(&serde_json::json!({ "target": long })).expect("JSON"),
            expect: refused(StatusCode::BAD_REQUEST, &[&reason]),
        });
    }
    for case in &cases {
        harness.check_admin(case).await;
    }

    // --- a blocked user and a blocked provider (MIMI.md §13) -------------------------------------
    for target in ["mimi://localhost/u/mallory", "example.org"] {
        let (status, body) = admin_call(
            &node.admin(),
            Some(&token),
            "POST",
            "/admin/abuse/block",
            serde_json::to_vec(&serde_json::json!({ "target": target }))
                .expect("JSON")
                .as_slice(),
        )
        .await
        .expect("admin answers");
        assert_eq!(status, 200, "{}", text(&body));
    }
    let blocked = refused(
        StatusCode::FORBIDDEN,
        &["user blocked: mimi://localhost/u/mallory"],
    );
    let mallory_caller = Caller::Header(bearer(&mallory_token));
    let mut cases = Vec::new();
    for (method, path) in authenticated_routes(&room("den")) {
        cases.push(Case::new(
            format!("{method} {path}: a blocked user"),
            mallory_caller.clone(),
            method.clone(),
            &path,
            Vec::new(),
            blocked.clone(),
        ));
    }
    let register = client_path("register");
    let register_body = |client: &str| {
        encode(&RegisterClientRequest {
            client: uri(client),
        })
    };
    cases.extend([
        Case::post(
            "register: a device of a blocked user, linked by its other device",
            mallory_caller.clone(),
            &register,
            register_body("mimi://localhost/d/mallory/tablet"),
            blocked.clone(),
        ),
        Case::post(
            "register: a device of a blocked user, not linked",
            Caller::Anonymous,
            &register,
            register_body("mimi://localhost/d/mallory/tablet"),
            blocked.clone(),
        ),
    ]);
    let claim = |target: &str| {
        encode(
            &alice
                .key_material_request(
                    &mimid_actors::ids::UserId::parse(target).expect("a user"),
                    &room("den"),
                )
                .expect("signed"),
        )
    };
    cases.extend([
        Case::post(
            "keyMaterial: the KeyPackages of a blocked user",
            Caller::Client("alice"),
            &client_path("keyMaterial"),
            claim("mimi://localhost/u/mallory"),
            blocked.clone(),
        ),
        Case::post(
            "keyMaterial: the KeyPackages of a blocked provider's user",
            Caller::Client("alice"),
            &client_path("keyMaterial"),
            claim("mimi://example.org/u/bob"),
            refused(StatusCode::FORBIDDEN, &["provider blocked: example.org"]),
        ),
    ]);
    harness.check_all(&cases).await;
    for target in ["mimi://localhost/u/mallory", "example.org"] {
        let (status, body) = admin_call(
            &node.admin(),
            Some(&token),
            "POST",
            "/admin/abuse/unblock",
            serde_json::to_vec(&serde_json::json!({ "target": target }))
                .expect("JSON")
                .as_slice(),
        )
        .await
        .expect("admin answers");
        assert_eq!(status, 200, "{}", text(&body));
    }
    // Unblocked, mallory is served again; the right token opens the listing.
    harness
        .check(&Case::new(
            "GET stream after the unblock",
            mallory_caller.clone(),
            Method::GET,
            &client_path("stream"),
            Vec::new(),
            Expect::Stream,
        ))
        .await;
    let (status, body) = admin_call(
        &node.admin(),
        Some(&token),
        "GET",
        "/admin/abuse/blocks",
        b"",
    )
    .await
    .expect("admin answers");
    assert_eq!(status, 200, "{}", text(&body));
    assert!(!text(&body).contains("mallory"), "{}", text(&body));
    harness.assert_shares(
        "admin_routes_and_blocked_users",
        &[
            ("admin listener", 184),
            ("register", 2),
            ("keyPackages", 1),
            ("keyMaterial", 3),
            ("rooms", 1),
            ("update", 1),
            ("submitMessage", 1),
            ("groupInfo", 1),
            ("reportAbuse", 1),
            ("stream", 2),
            ("ack", 1),
            ("profile (GET)", 1),
            ("profile (POST)", 1),
            ("preferences", 1),
            ("identifierQuery", 1),
            ("requestConsent", 1),
            ("updateConsent", 1),
            ("consents", 1),
            ("frankingAgent", 1),
        ],
        206,
    );
    raw.http.close().await;
    node.shutdown().await;
}
