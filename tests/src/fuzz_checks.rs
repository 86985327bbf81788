//! The properties the fuzz targets in `tests/fuzz` check, shared with the regression test
//! `tests/tests/fuzz_regressions.rs` so that every input a fuzzer ever found interesting is
//! re-checked by the normal `cargo test --workspace`, without cargo-fuzz or nightly.
//!
//! Every check takes arbitrary bytes and panics only when a property is broken:
//! - decoders never panic on untrusted input (protocol-06 §5 bodies, content-08 §4 CBOR, the
//!   replicated command log, MIMI URIs);
//! - a value that decoded re-encodes, and the re-encoding decodes to the same value
//!   (round trip), so what the hub stores or forwards is what it accepted;
//! - the hub's MLS validation (MIMI.md §6, protocol-06 §5.2/§5.3) rejects garbage with a
//!   verdict and a rejection leaves the replicated room state byte-for-byte unchanged.

use std::fmt::Debug;
use std::sync::{Mutex, OnceLock};

use mimid_actors::command::{self, Stamped, SubmitVerdict, UpdateVerdict};
use mimid_actors::ids::{ClientId, MimiUri, RoomId, UserId};
use mimid_actors::policy::{
    default_room_policy, room_group_context_extensions, room_leaf_capabilities,
};
use mimid_actors::room::identity::credential_of_client;
use mimid_actors::room::state::{RoomState, ROOM_CIPHERSUITE};
use mimid_node::content::MimiContent;
use mimid_node::wire::client::{
    encode_frame, AckEntry, AckRequest, ClientSubmitResponse, ClientUpdateResponse,
    CreateRoomRequest, CreateRoomResponse, DeliveredBody, DeliveredItem, FrameDecoder,
    PublishKeyPackagesRequest, RegisterClientRequest, RegisterClientResponse, FRAME_HEADER_LEN,
    HEARTBEAT_FRAME,
};
use mimid_node::wire::{
    abuse, consent, fanout, group_info, identifier, key_material, submit, update, Decode, Encode,
    Limits, Mls, MlsMessage,
};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    CredentialWithKey, KeyPackage, MlsGroup, MlsMessageOut, OpenMlsProvider,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

/// The fuzz targets, by the name of their directory under `tests/fuzz/regressions/`.
pub const TARGETS: &[&str] = &[
    "wire_requests",
    "wire_frames",
    "mimi_content",
    "command_log",
    "mimi_uri",
    "hub_validation",
];

/// Runs the check of `target` on `data`. Panics on an unknown target name.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "wire_requests" => wire_requests(data),
        "wire_frames" => wire_frames(data),
        "mimi_content" => mimi_content(data),
        "command_log" => command_log(data),
        "mimi_uri" => mimi_uri(data),
        "hub_validation" => hub_validation(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// Limits smaller than the default so that the body-size checks are reachable by fuzzing.
fn fuzz_limits() -> Limits {
    Limits {
        max_body_len: 64 * 1024,
    }
}

/// Decodes `body` as `T`; if that succeeds, the value must re-encode, and the re-encoding
/// must decode to an equal value and encode to the same bytes.
fn round_trip<T: Decode + Encode + PartialEq + Debug>(body: &[u8]) {
    let limits = fuzz_limits();
    let Ok(value) = T::from_bytes(body, &limits) else {
        return;
    };
    let encoded = value
        .to_bytes()
        .unwrap_or_else(|error| panic!("decoded {value:?} does not re-encode: {error}"));
    let again = T::from_bytes(&encoded, &Limits::default())
        .unwrap_or_else(|error| panic!("re-encoding of {value:?} does not decode: {error}"));
    assert_eq!(again, value, "decode(encode(value)) != value");
    assert_eq!(
        again.to_bytes().expect("an equal value encodes"),
        encoded,
        "encoding is not stable"
    );
}

/// Every protocol-06 §5 request/response body and every client API body: the first byte
/// picks the type, the rest is the body.
pub fn wire_requests(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    const DECODERS: &[fn(&[u8])] = &[
        round_trip::<key_material::KeyMaterialRequest>,
        round_trip::<key_material::KeyMaterialRequestTbs>,
        round_trip::<key_material::KeyMaterialResponse>,
        round_trip::<update::UpdateRequest>,
        round_trip::<update::UpdateRoomResponse>,
        round_trip::<submit::SubmitMessageRequest>,
        round_trip::<submit::SubmitMessageResponse>,
        round_trip::<submit::FrankingIntegrityTbs>,
        round_trip::<submit::ServerFrankingContext>,
        round_trip::<fanout::FanoutMessage>,
        round_trip::<group_info::GroupInfoRequest>,
        round_trip::<group_info::GroupInfoRequestTbs>,
        round_trip::<group_info::GroupInfoResponse>,
        round_trip::<group_info::GroupInfoResponseTbs>,
        round_trip::<group_info::GroupInfoRatchetTreeTbe>,
        round_trip::<consent::ConsentEntry>,
        round_trip::<identifier::IdentifierRequest>,
        round_trip::<identifier::IdentifierResponse>,
        round_trip::<abuse::AbuseReport>,
        round_trip::<RegisterClientRequest>,
        round_trip::<RegisterClientResponse>,
        round_trip::<PublishKeyPackagesRequest>,
        // The client API's keyMaterial body: the signed protocol-06 request again, kept at the
        // index of the request it replaced so that stored inputs keep their meaning.
        round_trip::<key_material::KeyMaterialRequest>,
        round_trip::<CreateRoomRequest>,
        round_trip::<CreateRoomResponse>,
        round_trip::<ClientUpdateResponse>,
        round_trip::<ClientSubmitResponse>,
        round_trip::<DeliveredItem>,
        round_trip::<AckRequest>,
    ];
    DECODERS[usize::from(selector) % DECODERS.len()](body);
}

/// Largest push-stream frame the `wire_frames` check accepts.
const MAX_FRAME_LEN: usize = 4096;

/// The push-stream deframer (our client API, `wire::client`): the first byte picks the chunk
/// size, the rest is the stream. Feeding it in chunks must give exactly what feeding it at
/// once gives, the buffer stays bounded, and every decoded item re-frames and decodes again.
pub fn wire_frames(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 16) + 1;
    let limits = fuzz_limits();

    let mut whole = FrameDecoder::new(MAX_FRAME_LEN);
    let at_once = whole
        .feed_items(stream, &limits)
        .and_then(|items| whole.finish().map(|()| items));

    let mut chunked = FrameDecoder::new(MAX_FRAME_LEN);
    let mut items = Vec::new();
    let mut failure = None;
    for piece in stream.chunks(chunk) {
        match chunked.feed_items(piece, &limits) {
            Ok(more) => items.extend(more),
            Err(error) => {
                // Once failed, the decoder keeps failing with the same error.
                assert_eq!(chunked.feed_items(&[], &limits), Err(error.clone()));
                failure = Some(error);
                break;
            }
        }
        assert!(
            chunked.buffered_len() < FRAME_HEADER_LEN + MAX_FRAME_LEN,
            "deframer buffers {} bytes",
            chunked.buffered_len()
        );
    }
    let in_chunks = match failure {
        Some(error) => Err(error),
        None => chunked.finish().map(|()| items),
    };

    match (&at_once, &in_chunks) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunking changed the decoded items"),
        (Err(_), Err(_)) => {}
        _ => panic!("chunking changed the outcome: {at_once:?} vs {in_chunks:?}"),
    }
    for item in at_once.into_iter().flatten() {
        let frame = encode_frame(&item, MAX_FRAME_LEN)
            .unwrap_or_else(|error| panic!("decoded {item:?} does not re-frame: {error}"));
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let again = decoder
            .feed_items(&frame, &limits)
            .expect("a re-framed item decodes");
        assert_eq!(again, vec![item]);
        decoder.finish().expect("nothing left over");
    }
}

/// `mimiContent` (content-08 §4.1, deterministic CBOR): decoding accepts only what the
/// encoder produces, so a decoded value encodes back to exactly the input.
pub fn mimi_content(data: &[u8]) {
    let Ok(content) = MimiContent::decode(data) else {
        return;
    };
    let encoded = content
        .encode()
        .unwrap_or_else(|error| panic!("decoded {content:?} does not re-encode: {error}"));
    assert_eq!(encoded, data, "decoding accepted a non-canonical encoding");
    assert_eq!(MimiContent::decode(&encoded).as_ref(), Ok(&content));
}

/// The replicated command log (postcard `Stamped`): replicas decode entries written by other
/// replicas and from disk, so a decoded entry must round-trip.
pub fn command_log(data: &[u8]) {
    let Ok(stamped) = Stamped::decode(data) else {
        return;
    };
    let encoded = stamped.encode();
    let again = Stamped::decode(&encoded).expect("an encoded command decodes");
    assert_eq!(again, stamped);
    assert_eq!(again.encode(), encoded, "encoding is not stable");
}

/// MIMI URIs (MIMI.md §2, protocol-06 `IdentifierUri`): parsing normalises, so parsing the
/// normal form again gives the same URI; the typed IDs agree with the untyped parse.
pub fn mimi_uri(data: &[u8]) {
    let parsed = MimiUri::from_bytes(data);
    if let Ok(uri) = &parsed {
        let again = MimiUri::from_bytes(uri.as_bytes()).expect("a normal form parses");
        assert_eq!(&again, uri, "normalisation is not idempotent");
        assert_eq!(again.as_str().as_bytes(), uri.as_bytes());
    }
    let typed = [
        UserId::from_bytes(data).map(|id| id.as_bytes().to_vec()),
        RoomId::from_bytes(data).map(|id| id.as_bytes().to_vec()),
        ClientId::from_bytes(data).map(|id| id.as_bytes().to_vec()),
    ];
    for bytes in typed.into_iter().flatten() {
        let uri = parsed.as_ref().expect("a typed ID is a URI");
        assert_eq!(bytes, uri.as_bytes(), "typed ID differs from the URI");
    }
}

/// Hub time of every fuzzed request (after the room's creation at 1 000).
const HUB_TS_MS: u64 = 2_000;
const CREATOR: &str = "mimi://a.example/d/alice/phone";
const STRANGER: &str = "mimi://b.example/d/mallory/phone";

/// One room per process: building a group costs key generation, far more than one check.
struct HubRoom {
    state: RoomState,
    /// The snapshot right after creation, to start over after an accepted input.
    initial: Vec<u8>,
}

fn hub_room() -> &'static Mutex<HubRoom> {
    static ROOM: OnceLock<Mutex<HubRoom>> = OnceLock::new();
    ROOM.get_or_init(|| {
        let creator = CreatorGroup::new();
        let (group_info, tree) = creator.upload();
        let room = RoomId::parse("mimi://a.example/r/fuzz").expect("valid room ID");
        let state = RoomState::create(room, &creator.id, &group_info, &tree, 1_000)
            .expect("the hub creates the room");
        let initial = state.to_snapshot();
        Mutex::new(HubRoom { state, initial })
    })
}

/// The hub's validation of MLS messages (MIMI.md §6; protocol-06 §5.2 handshakes, §5.3
/// application messages) on a real room. Byte 0 picks the sender (the creator, who may do
/// everything, or a stranger), byte 1 the entry point:
/// 0: `handle_app_message` with the rest as the `MLSMessage`;
/// 1: `handle_handshake` with the rest decoded as a protocol-06 `UpdateRequest` at the edge;
/// 2: `handle_handshake` with the rest as a postcard `HandshakeBundle`, i.e. parts the edge
///    would not have produced.
///
/// A rejection must leave the room's snapshot unchanged.
pub fn hub_validation(data: &[u8]) {
    let [sender, entry, rest @ ..] = data else {
        return;
    };
    let sender =
        ClientId::parse(if sender % 2 == 0 { CREATOR } else { STRANGER }).expect("valid client ID");
    let mut room = hub_room()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = room.state.to_snapshot();
    let accepted = match entry % 3 {
        0 => matches!(
            room.state.handle_app_message(
                &command::Submitter::Client(sender.clone()),
                &sender.user(),
                rest,
                HUB_TS_MS
            ),
            SubmitVerdict::Accepted { .. }
        ),
        1 => {
            let Ok(request) = update::UpdateRequest::from_bytes(rest, &fuzz_limits()) else {
                return;
            };
            let Ok(bundle) = command::HandshakeBundle::try_from(request) else {
                return;
            };
            handshake(&mut room.state, &sender, &bundle)
        }
        _ => {
            let Ok(bundle) = postcard::from_bytes::<command::HandshakeBundle>(rest) else {
                return;
            };
            handshake(&mut room.state, &sender, &bundle)
        }
    };
    if accepted {
        let initial = room.initial.clone();
        room.state = RoomState::from_snapshot(&initial).expect("the initial snapshot restores");
    } else {
        assert!(
            room.state.to_snapshot() == before,
            "a rejected message changed the room state"
        );
    }
}

fn handshake(state: &mut RoomState, sender: &ClientId, bundle: &command::HandshakeBundle) -> bool {
    matches!(
        state.handle_handshake(
            &command::Submitter::Client(sender.clone()),
            bundle,
            HUB_TS_MS
        ),
        UpdateVerdict::Success { .. }
    )
}

/// A room creator's client and MLS group with the default room policy (MIMI.md §6.1), as a
/// client builds it before uploading GroupInfo and ratchet tree.
struct CreatorGroup {
    id: ClientId,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    group: MlsGroup,
}

impl CreatorGroup {
    fn new() -> Self {
        let id = ClientId::parse(CREATOR).expect("valid client ID");
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(ROOM_CIPHERSUITE.signature_algorithm())
            .expect("signature key generation");
        signer
            .store(provider.storage())
            .expect("in-memory storage accepts the key");
        let extensions = room_group_context_extensions(&default_room_policy(&id.user()));
        let group = MlsGroup::builder()
            .ciphersuite(ROOM_CIPHERSUITE)
            .with_capabilities(room_leaf_capabilities())
            .with_group_context_extensions(extensions)
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build(&provider, &signer, Self::credential(&id, &signer))
            .expect("the room group builds");
        CreatorGroup {
            id,
            provider,
            signer,
            group,
        }
    }

    fn credential(id: &ClientId, signer: &SignatureKeyPair) -> CredentialWithKey {
        CredentialWithKey {
            credential: credential_of_client(id),
            signature_key: signer.public().to_vec().into(),
        }
    }

    /// The `MLSMessage` with the GroupInfo (without ratchet tree) and the TLS ratchet tree.
    fn upload(&self) -> (Vec<u8>, Vec<u8>) {
        let group_info = self
            .group
            .export_group_info(self.provider.crypto(), &self.signer, false)
            .expect("GroupInfo exports")
            .tls_serialize_detached()
            .expect("GroupInfo serialises");
        let tree = self
            .group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .expect("ratchet tree serialises");
        (group_info, tree)
    }

    /// A self-update Commit with the new epoch's GroupInfo, as a protocol-06 §5.2 bundle,
    /// and the Commit's `MLSMessage` alone.
    fn self_update(&mut self) -> (command::HandshakeBundle, Vec<u8>) {
        let (commit, welcome, group_info) = self
            .group
            .commit_builder()
            .force_self_update(true)
            .load_psks(self.provider.storage())
            .expect("no PSKs to load")
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .expect("self-update commit builds")
            .stage_commit(&self.provider)
            .expect("self-update commit stages")
            .into_messages();
        let serialise = |message: MlsMessageOut| {
            message
                .tls_serialize_detached()
                .expect("MLSMessage serialises")
        };
        let commit = serialise(commit);
        let bundle = command::HandshakeBundle::Commit {
            commit: commit.clone(),
            welcome: welcome.map(serialise),
            group_info: group_info.map(serialise),
        };
        (bundle, commit)
    }

    /// A KeyPackage of another client of the creator's user, TLS-serialised.
    fn key_package(&self) -> Vec<u8> {
        let other = ClientId::parse("mimi://a.example/d/alice/laptop").expect("valid client ID");
        KeyPackage::builder()
            .leaf_node_capabilities(room_leaf_capabilities())
            .build(
                ROOM_CIPHERSUITE,
                &self.provider,
                &self.signer,
                Self::credential(&other, &self.signer),
            )
            .expect("KeyPackage builds")
            .key_package()
            .tls_serialize_detached()
            .expect("KeyPackage serialises")
    }
}

/// One seed input: the target it belongs to, a file name, the bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Seed inputs for every target: valid encodings built with the real encoders and openmls,
/// plus malformed variants of each (truncated by one byte, one trailing byte, empty).
/// `tests/fuzz/examples/write_seeds.rs` writes them under `tests/fuzz/regressions/`.
pub fn seed_inputs() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut push = |target: &'static str, name: &str, bytes: Vec<u8>| {
        if bytes.len() > 1 {
            seeds.push(Seed {
                target,
                name: format!("{name}-truncated"),
                bytes: bytes[..bytes.len() - 1].to_vec(),
            });
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        seeds.push(Seed {
            target,
            name: format!("{name}-trailing"),
            bytes: trailing,
        });
        seeds.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
        });
    };

    let mut creator = CreatorGroup::new();
    let (group_info, tree) = creator.upload();
    let key_package = creator.key_package();
    let (bundle, commit) = creator.self_update();
    let room = RoomId::parse("mimi://a.example/r/seed").expect("valid room ID");
    let encode = |value: &dyn Encode| value.to_bytes().expect("seed value encodes");

    // wire_requests: the selector byte is the index in `wire_requests`' table.
    let wire = |index: u8, body: Vec<u8>| [vec![index], body].concat();
    let update_request =
        update::UpdateRequest::try_from(&bundle).expect("a commit bundle is an UpdateRequest");
    push(
        "wire_requests",
        "update-request-commit",
        wire(3, encode(&update_request)),
    );
    push(
        "wire_requests",
        "update-room-response-success",
        wire(
            4,
            encode(&{
                update::UpdateRoomResponse::from(&UpdateVerdict::Success {
                    accepted_ts_ms: 7,
                    seq: 3,
                })
            }),
        ),
    );
    push(
        "wire_requests",
        "submit-response-epoch-too-old",
        wire(
            6,
            encode(&{
                submit::SubmitMessageResponse::from(&SubmitVerdict::EpochTooOld {
                    current_epoch: 4,
                })
            }),
        ),
    );
    let client = RegisterClientRequest {
        client: (&creator.id).into(),
    };
    push(
        "wire_requests",
        "register-client",
        wire(19, encode(&client)),
    );
    let publish = PublishKeyPackagesRequest {
        key_packages: vec![Mls::from_bytes(&key_package).expect("valid KeyPackage")],
        last_resort: true,
    };
    push(
        "wire_requests",
        "publish-key-packages",
        wire(21, encode(&publish)),
    );
    let key_material_tbs = key_material::KeyMaterialRequestTbs {
        protocol: mimid_node::wire::Protocol::Mls10,
        requesting_user: (&creator.id.user()).into(),
        target_user: (&UserId::parse("mimi://a.example/u/bob").expect("valid user ID")).into(),
        room_id: (&room).into(),
        acceptable_ciphersuites: vec![ROOM_CIPHERSUITE.into()],
        required_capabilities: Mls::from_value(
            room_group_context_extensions(&default_room_policy(&creator.id.user()))
                .required_capabilities()
                .expect("rooms require capabilities")
                .clone(),
        )
        .expect("required capabilities encode"),
        requester_signature_key: mimid_node::wire::SignaturePublicKey(
            creator.signer.public().to_vec(),
        ),
        requester_credential: Mls::from_value(credential_of_client(&creator.id))
            .expect("credential encodes"),
    };
    let key_material_request =
        key_material::KeyMaterialRequest::sign(key_material_tbs, &creator.signer)
            .expect("the request signs");
    push(
        "wire_requests",
        "key-material-request",
        wire(22, encode(&key_material_request)),
    );
    let create = CreateRoomRequest {
        room: (&room).into(),
        group_info: MlsMessage::from_bytes(&group_info).expect("valid GroupInfo message"),
        ratchet_tree: Mls::from_bytes(&tree).expect("valid ratchet tree"),
    };
    push("wire_requests", "create-room", wire(23, encode(&create)));
    let delivered = DeliveredItem {
        room: (&room).into(),
        seq: 1,
        timestamp: 2_000,
        epoch: 0,
        body: DeliveredBody::Commit {
            message: MlsMessage::from_bytes(&commit).expect("valid commit message"),
        },
    };
    push(
        "wire_requests",
        "delivered-commit",
        wire(27, encode(&delivered)),
    );
    let ack = AckRequest {
        acks: vec![AckEntry {
            room: (&room).into(),
            seq: 9,
        }],
    };
    push("wire_requests", "ack", wire(28, encode(&ack)));
    push(
        "wire_requests",
        "huge-length-prefix",
        vec![28, 0xbf, 0xff, 0xff, 0xff],
    );

    // wire_frames: the first byte picks the chunk size.
    let frame = encode_frame(&delivered, MAX_FRAME_LEN).expect("the seed item frames");
    push(
        "wire_frames",
        "two-frames-and-heartbeat",
        [
            vec![2],
            frame.clone(),
            HEARTBEAT_FRAME.to_vec(),
            frame.clone(),
        ]
        .concat(),
    );
    push("wire_frames", "one-frame-whole", [vec![15], frame].concat());
    push(
        "wire_frames",
        "frame-too-large",
        vec![0, 0xff, 0xff, 0xff, 0xff],
    );

    // mimi_content
    let text = MimiContent::plain_text([7; 16], "hello, room");
    push(
        "mimi_content",
        "plain-text",
        text.encode().expect("content encodes"),
    );
    let franked = text.with_sender_and_room(CREATOR, room.as_str());
    push(
        "mimi_content",
        "with-sender-and-room",
        franked.encode().expect("content encodes"),
    );

    // command_log
    let stamped = |command: command::Command| {
        Stamped {
            ts_ms: 1_234,
            command,
        }
        .encode()
    };
    push(
        "command_log",
        "handshake",
        stamped(command::Command::Handshake {
            room: room.clone(),
            sender: command::Submitter::Client(creator.id.clone()),
            bundle: bundle.clone(),
        }),
    );
    push(
        "command_log",
        "create-room",
        stamped(command::Command::CreateRoom {
            room: room.clone(),
            creator: creator.id.clone(),
            group_info: group_info.clone(),
            ratchet_tree: tree.clone(),
        }),
    );
    push(
        "command_log",
        "ack",
        stamped(command::Command::Ack {
            room: room.clone(),
            client: creator.id.clone(),
            seq: 5,
        }),
    );

    // mimi_uri
    for (name, uri) in [
        ("user", "mimi://a.example/u/alice"),
        ("client-mixed-case-host", "mimi://A.Example/d/bob/phone"),
        ("room", "mimi://a.example/r/clubhouse"),
        ("other-scheme", "https://a.example/u/alice"),
        ("percent-encoded", "mimi://a.example/u/al%69ce"),
    ] {
        push("mimi_uri", name, uri.as_bytes().to_vec());
    }
    push("mimi_uri", "not-utf8", vec![b'm', 0xff, 0xfe]);

    // hub_validation: byte 0 sender (even: creator), byte 1 entry point.
    let hub = |sender: u8, entry: u8, rest: &[u8]| [&[sender, entry][..], rest].concat();
    push(
        "hub_validation",
        "app-message-is-a-commit",
        hub(0, 0, &commit),
    );
    push(
        "hub_validation",
        "foreign-commit-via-edge",
        hub(0, 1, &encode(&update_request)),
    );
    push(
        "hub_validation",
        "foreign-commit-postcard",
        hub(
            0,
            2,
            &postcard::to_stdvec(&bundle).expect("bundle serialises"),
        ),
    );
    push(
        "hub_validation",
        "stranger-proposals-garbage",
        hub(
            1,
            2,
            &postcard::to_stdvec(&command::HandshakeBundle::Proposals {
                proposals: vec![vec![0, 1, 0, 1], group_info.clone()],
            })
            .expect("bundle serialises"),
        ),
    );
    seeds
}
