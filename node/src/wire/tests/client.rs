//! Our client API bodies, the push-stream framing, and the room-log conversion.

use mimid_actors::command::{SubmitVerdict, UpdateVerdict};
use mimid_actors::ids::{ClientId, RoomId};
use mimid_actors::room::log::{ItemBody, LogItem};

use super::fixture::fixture;
use super::{check, decode_err, round_trip};
use crate::wire::client::{
    encode_frame, AckEntry, AckRequest, ClientSubmitResponse, ClientUpdateResponse,
    CreateRoomRequest, CreateRoomResponse, CreateRoomStatus, DeliveredBody, DeliveredItem,
    DeliveredKind, FrameDecoder, FrameError, PublishKeyPackagesRequest, RegisterClientRequest,
    RegisterClientResponse, FRAME_HEADER_LEN, HEARTBEAT_FRAME,
};
use crate::wire::codec::{Encode, Limits, WireError};
use crate::wire::submit::{Frank, SubmitStatus};
use crate::wire::types::{CipherSuite, IdentifierUri};
use crate::wire::update::UpdateOutcome;

fn room() -> RoomId {
    RoomId::parse("mimi://a.example/r/clubhouse").unwrap()
}

#[test]
fn register_client_round_trips_and_hides_the_token() {
    let request = RegisterClientRequest {
        client: IdentifierUri::new("mimi://a.example/d/alice/phone"),
    };
    check(&request);
    assert_eq!(
        request.client_id().unwrap(),
        ClientId::parse("mimi://a.example/d/alice/phone").unwrap()
    );
    let not_a_client = RegisterClientRequest {
        client: IdentifierUri::new("mimi://a.example/u/alice"),
    };
    assert_eq!(not_a_client.client_id().unwrap_err().code(), "bad_uri");
    let response = RegisterClientResponse {
        token: b"secret-token".to_vec(),
    };
    check(&response);
    assert!(!format!("{response:?}").contains("secret"));
}

#[test]
fn publish_key_packages_keeps_each_key_package_byte_exact() {
    let f = fixture();
    let request = PublishKeyPackagesRequest {
        key_packages: vec![f.key_package(0), f.key_package(1)],
        last_resort: true,
    };
    let mut bytes = check(&request);
    assert_eq!(request.key_package_bytes(), f.key_packages);
    *bytes.last_mut().unwrap() = 2;
    assert_eq!(
        decode_err::<PublishKeyPackagesRequest>(&bytes),
        WireError::BadBool {
            field: "PublishKeyPackagesRequest.last_resort",
            value: 2
        }
    );
    // A vector holding something that is not a KeyPackage.
    let mut garbage = vec![0x0a];
    garbage.extend([0xff; 10]);
    garbage.push(0x00);
    assert_eq!(
        decode_err::<PublishKeyPackagesRequest>(&garbage).code(),
        "bad_mls_structure"
    );
    round_trip(&PublishKeyPackagesRequest {
        key_packages: vec![],
        last_resort: false,
    });
}

#[test]
fn create_room_requires_a_group_info_message_and_a_ratchet_tree() {
    let f = fixture();
    let request = CreateRoomRequest {
        room: IdentifierUri::from(&room()),
        group_info: f.group_info(),
        ratchet_tree: f.ratchet_tree(),
    };
    check(&request);
    assert_eq!(request.room_id().unwrap(), room());

    let with_welcome = CreateRoomRequest {
        group_info: f.welcome(),
        ..request.clone()
    };
    let expected = WireError::UnexpectedMessage {
        field: "CreateRoomRequest.group_info",
        expected: "a GroupInfo",
        found: "a Welcome",
    };
    assert_eq!(with_welcome.to_bytes().unwrap_err(), expected);
    let mut bytes = IdentifierUri::from(&room()).to_bytes().unwrap();
    bytes.extend_from_slice(&f.welcome);
    bytes.push(0);
    assert_eq!(decode_err::<CreateRoomRequest>(&bytes), expected);

    // A ratchet tree with a stray byte inside its opaque<V>.
    let mut bytes = IdentifierUri::from(&room()).to_bytes().unwrap();
    bytes.extend_from_slice(&f.group_info);
    let mut tree = f.ratchet_tree.clone();
    tree.push(0);
    let mut w = crate::wire::codec::Writer::new();
    w.opaque("tree", &tree).unwrap();
    bytes.extend(w.into_bytes());
    assert_eq!(
        decode_err::<CreateRoomRequest>(&bytes),
        WireError::TrailingBytes { count: 1 }
    );

    for status in [
        CreateRoomStatus::Created,
        CreateRoomStatus::Exists,
        CreateRoomStatus::Invalid,
    ] {
        check(&CreateRoomResponse {
            status,
            reason: "creator is not the only member".into(),
        });
    }
    assert_eq!(
        decode_err::<CreateRoomResponse>(&[3, 0]),
        WireError::BadEnum {
            field: "CreateRoomResponse.status",
            value: 3
        }
    );
}

#[test]
fn client_responses_carry_the_log_seq_of_accepted_items_only() {
    let accepted = ClientUpdateResponse::from(&UpdateVerdict::Success {
        accepted_ts_ms: 1000,
        seq: 17,
    });
    assert_eq!(accepted.seq, 17);
    check(&accepted);
    let rejected = ClientUpdateResponse::from(&UpdateVerdict::WrongEpoch { current_epoch: 2 });
    assert_eq!(rejected.seq, 0);
    assert_eq!(
        rejected.response.outcome,
        UpdateOutcome::WrongEpoch { current_epoch: 2 }
    );
    check(&rejected);

    let sent = ClientSubmitResponse::from(&SubmitVerdict::Accepted {
        accepted_ts_ms: 5,
        seq: 18,
    });
    assert_eq!(sent.seq, 18);
    check(&sent);
    let refused = ClientSubmitResponse::from(&SubmitVerdict::NotAllowed {
        reason: "banned".into(),
    });
    assert_eq!(
        (refused.seq, refused.response.status.clone()),
        (0, SubmitStatus::NotAllowed)
    );
    assert_eq!(
        refused.reason, "banned",
        "the specific reason reaches the client"
    );
    check(&refused);
}

fn log_items() -> Vec<LogItem> {
    let f = fixture();
    let to = vec![ClientId::parse("mimi://b.example/d/bob/laptop").unwrap()];
    vec![
        LogItem {
            seq: 1,
            ts_ms: 100,
            epoch: 1,
            body: ItemBody::Proposals {
                messages: f.proposals.clone(),
            },
        },
        LogItem {
            seq: 2,
            ts_ms: 101,
            epoch: 0,
            body: ItemBody::Commit {
                message: f.commit.clone(),
            },
        },
        LogItem {
            seq: 3,
            ts_ms: 101,
            epoch: 1,
            body: ItemBody::Welcome {
                welcome: f.welcome.clone(),
                ratchet_tree: f.ratchet_tree.clone(),
                to,
            },
        },
        LogItem {
            seq: 4,
            ts_ms: 102,
            epoch: 1,
            body: ItemBody::Application {
                message: f.application.clone(),
            },
        },
    ]
}

#[test]
fn delivered_items_come_from_the_room_log_and_round_trip() {
    let items: Vec<DeliveredItem> = log_items()
        .iter()
        .map(|item| DeliveredItem::from_log(&room(), item).unwrap())
        .collect();
    let kinds: Vec<_> = items.iter().map(|i| i.body.kind()).collect();
    assert_eq!(
        kinds,
        [
            DeliveredKind::Proposals,
            DeliveredKind::Commit,
            DeliveredKind::Welcome,
            DeliveredKind::Application
        ]
    );
    for item in &items {
        check(item);
        assert_eq!(item.room_id().unwrap(), room());
    }
    assert_eq!(
        (items[2].seq, items[2].timestamp, items[2].epoch),
        (3, 101, 1)
    );
    let DeliveredBody::Welcome { welcome, .. } = &items[2].body else {
        panic!("third item is the Welcome");
    };
    assert_eq!(welcome.bytes(), &fixture().welcome[..]);
}

/// MIMI.md §5.3.1, §5.4: an application message carries the hub's Frank on the push stream as
/// in a notify (`optional<Frank>` after the message); other kinds have no such field.
#[test]
fn delivered_application_messages_carry_an_optional_frank() {
    let mut item = DeliveredItem::from_log(&room(), &log_items()[3]).unwrap();
    let without = check(&item);
    let DeliveredBody::Application { frank, .. } = &mut item.body else {
        panic!("fourth item is the application message");
    };
    assert_eq!(*frank, None, "from_log leaves the Frank to the caller");
    *frank = Some(Frank {
        server_frank: [5; 32],
        franking_signature_ciphersuite: CipherSuite(1),
        franking_integrity_signature: vec![6; 64],
    });
    let with = check(&item);
    // server_frank, suite, a 2-byte length (64 > 63, RFC 9420 §2.1.2) and the signature.
    assert_eq!(with.len(), without.len() + 32 + 2 + 2 + 64);
    assert_eq!(without.last(), Some(&0), "absent: the presence flag 0");
}

#[test]
fn delivered_item_rejects_unknown_kinds_and_bad_log_bytes() {
    let item = DeliveredItem::from_log(&room(), &log_items()[1]).unwrap();
    let mut bytes = item.to_bytes().unwrap();
    let kind_at = IdentifierUri::from(&room()).to_bytes().unwrap().len() + 24;
    for kind in [0u8, 5] {
        bytes[kind_at] = kind;
        assert_eq!(
            decode_err::<DeliveredItem>(&bytes),
            WireError::BadEnum {
                field: "DeliveredItem.kind",
                value: kind
            }
        );
    }
    let broken = LogItem {
        seq: 9,
        ts_ms: 1,
        epoch: 1,
        body: ItemBody::Application {
            message: vec![0, 1, 0, 2, 0xff],
        },
    };
    assert!(DeliveredItem::from_log(&room(), &broken).is_err());
}

#[test]
fn ack_request_round_trips() {
    check(&AckRequest {
        acks: vec![
            AckEntry {
                room: IdentifierUri::from(&room()),
                seq: 4,
            },
            AckEntry {
                room: IdentifierUri::new("mimi://b.example/r/other"),
                seq: 1,
            },
        ],
    });
    check(&AckRequest { acks: vec![] });
    let entry = AckEntry {
        room: IdentifierUri::new(b"\xff".to_vec()),
        seq: 1,
    };
    assert_eq!(entry.room_id().unwrap_err().code(), "bad_uri");
}

fn frames() -> (Vec<DeliveredItem>, Vec<u8>) {
    let items: Vec<DeliveredItem> = log_items()
        .iter()
        .map(|item| DeliveredItem::from_log(&room(), item).unwrap())
        .collect();
    let stream = items
        .iter()
        .flat_map(|item| encode_frame(item, 1 << 20).unwrap())
        .collect();
    (items, stream)
}

#[test]
fn push_stream_frames_decode_from_any_chunking() {
    let (items, stream) = frames();
    let limits = Limits::default();
    for chunk_len in [1, 3, 7, 100, stream.len()] {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut decoded = Vec::new();
        for chunk in stream.chunks(chunk_len) {
            decoded.extend(decoder.feed_items(chunk, &limits).unwrap());
            assert!(decoder.buffered_len() <= FRAME_HEADER_LEN + (1 << 20));
        }
        decoder.finish().unwrap();
        assert_eq!(decoded, items, "chunks of {chunk_len}");
    }
    let first = encode_frame(&items[0], 1 << 20).unwrap();
    assert_eq!(
        u32::from_be_bytes(first[..4].try_into().unwrap()) as usize,
        first.len() - FRAME_HEADER_LEN
    );
}

#[test]
fn push_stream_rejects_oversized_and_empty_frames_and_stays_failed() {
    let mut decoder = FrameDecoder::new(1000);
    // The header alone is enough to refuse: no body bytes are buffered or awaited.
    let error = decoder.feed(&1001u32.to_be_bytes()).unwrap_err();
    assert_eq!(
        error,
        FrameError::TooLarge {
            len: 1001,
            max: 1000
        }
    );
    assert_eq!(decoder.buffered_len(), 0);
    assert_eq!(decoder.feed(&[0, 0, 0, 1, 9]).unwrap_err(), error);
    assert_eq!(decoder.finish().unwrap_err(), error);

    // Heartbeats (zero-length frames) are skipped, also between and inside other frames' bytes.
    let mut decoder = FrameDecoder::new(1000);
    assert!(decoder.feed(&HEARTBEAT_FRAME).unwrap().is_empty());
    assert!(decoder.feed(&[0, 0]).unwrap().is_empty());
    assert_eq!(
        decoder.feed(&[0, 0, 0, 0, 0, 2, 7, 8, 0, 0, 0, 0]).unwrap(),
        vec![vec![7, 8]]
    );
    assert_eq!(decoder.buffered_len(), 0);

    let (items, _) = frames();
    assert!(matches!(
        encode_frame(&items[2], 10).unwrap_err(),
        FrameError::TooLarge { max: 10, .. }
    ));
}

#[test]
fn push_stream_reports_a_stream_cut_inside_a_frame_and_bad_frame_bodies() {
    let (_, stream) = frames();
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.feed(&stream[..stream.len() - 1]).unwrap();
    assert!(matches!(
        decoder.finish().unwrap_err(),
        FrameError::TruncatedStream { .. }
    ));

    let mut decoder = FrameDecoder::new(1 << 20);
    let error = decoder
        .feed_items(&[0, 0, 0, 2, 0x01, b'x'], &Limits::default())
        .unwrap_err();
    assert_eq!(
        error,
        FrameError::Body(WireError::Truncated {
            field: "DeliveredItem.seq"
        })
    );
    assert_eq!(decoder.feed(&stream).unwrap_err(), error);
}
