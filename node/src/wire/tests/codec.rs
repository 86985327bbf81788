//! RFC 9420 §2.1 conventions as the codec enforces them (MIMI.md §3.3).

use mimid_actors::ids::{UriError, UserId};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{ContentType, Credential, KeyPackageIn, Welcome};

use super::fixture::fixture;
use super::{check, decode_err, round_trip};
use crate::wire::client::AckRequest;
use crate::wire::codec::{Decode, Limits, Mls, MlsMessage, MlsMessageKind, WireError};
use crate::wire::consent::ConsentScope;
use crate::wire::types::{IdentifierUri, Protocol};
use crate::wire::update::UpdateRoomResponse;

fn uri_of_len(len: usize) -> IdentifierUri {
    IdentifierUri::new(vec![b'a'; len])
}

#[test]
fn rfc9420_2_1_2_length_prefix_is_minimal_at_every_width_boundary() {
    for (len, prefix) in [
        (0usize, vec![0x00]),
        (63, vec![0x3f]),
        (64, vec![0x40, 0x40]),
        (16383, vec![0x7f, 0xff]),
        (16384, vec![0x80, 0x00, 0x40, 0x00]),
    ] {
        let bytes = round_trip(&uri_of_len(len));
        assert_eq!(bytes[..prefix.len()], prefix[..], "length {len}");
        assert_eq!(bytes.len(), prefix.len() + len);
    }
}

#[test]
fn rfc9420_2_1_2_non_minimal_length_is_rejected() {
    let field = "IdentifierUri.uri";
    // 5 in two bytes, 5 in four bytes, 16383 in four bytes.
    let mut two = vec![0x40, 0x05];
    two.extend_from_slice(b"mimi:");
    assert_eq!(
        decode_err::<IdentifierUri>(&two),
        WireError::NonMinimalLength { field }
    );
    let mut four = vec![0x80, 0x00, 0x00, 0x05];
    four.extend_from_slice(b"mimi:");
    assert_eq!(
        decode_err::<IdentifierUri>(&four),
        WireError::NonMinimalLength { field }
    );
    let mut wide = vec![0x80, 0x00, 0x3f, 0xff];
    wide.extend(vec![b'a'; 16383]);
    assert_eq!(
        decode_err::<IdentifierUri>(&wide),
        WireError::NonMinimalLength { field }
    );
}

#[test]
fn rfc9420_2_1_2_reserved_0b11_prefix_is_rejected() {
    let bytes = [0xc0, 0, 0, 0, 0, 0, 0, 1, b'a'];
    assert_eq!(
        decode_err::<IdentifierUri>(&bytes),
        WireError::ReservedLengthPrefix {
            field: "IdentifierUri.uri"
        }
    );
}

#[test]
fn rfc9420_2_1_2_non_minimal_length_inside_an_embedded_mls_structure_is_rejected() {
    // A BasicCredential (type 1) whose identity length 3 is written in two bytes.
    let good = [0x00, 0x01, 0x03, b'a', b'b', b'c'];
    assert!(Mls::<Credential>::from_bytes(&good).is_ok());
    let bad = [0x00, 0x01, 0x40, 0x03, b'a', b'b', b'c'];
    let error = Mls::<Credential>::from_bytes(&bad).unwrap_err();
    assert_eq!(error.code(), "bad_mls_structure", "{error}");
}

#[test]
fn oversized_length_prefix_is_rejected_before_allocating() {
    // Claims 1 GiB - 1: over the default body limit, refused before looking for the bytes.
    let bytes = [0xbf, 0xff, 0xff, 0xff];
    assert_eq!(
        decode_err::<IdentifierUri>(&bytes),
        WireError::LengthOverLimit {
            field: "IdentifierUri.uri",
            len: (1 << 30) - 1,
            max: Limits::default().max_body_len
        }
    );
    // Claims 1000 bytes with 3 behind it.
    let bytes = [0x43, 0xe8, b'a', b'b', b'c'];
    assert_eq!(
        decode_err::<IdentifierUri>(&bytes),
        WireError::LengthBeyondInput {
            field: "IdentifierUri.uri",
            len: 1000,
            remaining: 3
        }
    );
    let small = Limits { max_body_len: 64 };
    let claims_100 = [0x40, 100, b'a'];
    assert_eq!(
        IdentifierUri::from_bytes(&claims_100, &small).unwrap_err(),
        WireError::LengthOverLimit {
            field: "IdentifierUri.uri",
            len: 100,
            max: 64
        }
    );
    let mut body = vec![0x3f];
    body.extend(vec![b'a'; 64]);
    assert_eq!(
        IdentifierUri::from_bytes(&body, &small).unwrap_err(),
        WireError::BodyTooLarge { len: 65, max: 64 }
    );
}

#[test]
fn every_truncation_and_a_trailing_byte_are_rejected() {
    check(&IdentifierUri::new("mimi://a.example/u/alice"));
    assert_eq!(
        decode_err::<IdentifierUri>(&[]),
        WireError::Truncated {
            field: "IdentifierUri.uri"
        }
    );
}

#[test]
fn vector_elements_must_fit_inside_the_vector_length() {
    // acks<V> of 3 bytes: an IdentifierUri of one byte, then a uint64 seq that does not fit.
    let bytes = [0x03, 0x01, b'x', 0x00];
    assert_eq!(
        decode_err::<AckRequest>(&bytes),
        WireError::Truncated {
            field: "AckEntry.seq"
        }
    );
}

#[test]
fn rfc9420_2_1_optional_presence_flag_must_be_0_or_1() {
    let scope = ConsentScope {
        requester_uri: IdentifierUri::new("mimi://a.example/u/alice"),
        target_uri: IdentifierUri::new("mimi://b.example/u/bob"),
        room_id: None,
    };
    let mut bytes = check(&scope);
    *bytes.last_mut().unwrap() = 2;
    assert_eq!(
        decode_err::<ConsentScope>(&bytes),
        WireError::BadOptional {
            field: "ConsentScope.roomId",
            value: 2
        }
    );
    check(&ConsentScope {
        room_id: Some(IdentifierUri::new("mimi://a.example/r/clubhouse")),
        ..scope
    });
}

#[test]
fn protocol06_5_undefined_enum_values_are_rejected() {
    assert_eq!(round_trip(&Protocol::Mls10), vec![1]);
    for value in [0u8, 2, 255] {
        assert_eq!(
            decode_err::<Protocol>(&[value]),
            WireError::BadEnum {
                field: "Protocol",
                value
            }
        );
    }
}

#[test]
fn mimi_3_3_string_must_be_utf8() {
    // responseCode notAllowed(2), errorDescription = 0xff.
    let bytes = [0x02, 0x01, 0xff];
    assert_eq!(
        decode_err::<UpdateRoomResponse>(&bytes),
        WireError::BadUtf8 {
            field: "UpdateRoomResponse.errorDescription"
        }
    );
}

#[test]
fn mimi_2_identifier_uri_converts_to_domain_ids_with_typed_errors() {
    let user = UserId::parse("mimi://a.example/u/alice").unwrap();
    let wire = IdentifierUri::from(&user);
    assert_eq!(wire.to_user().unwrap(), user);
    assert_eq!(wire.user("X.user").unwrap(), user);

    let bad_utf8 = IdentifierUri::new(b"mimi://a.example/u/\xffalice".to_vec());
    assert_eq!(bad_utf8.to_uri().unwrap_err(), UriError::NotUtf8);
    let error = bad_utf8
        .user("SubmitMessageRequest.sendingUri")
        .unwrap_err();
    assert_eq!(
        error,
        WireError::Uri {
            field: "SubmitMessageRequest.sendingUri",
            source: UriError::NotUtf8
        }
    );
    assert_eq!(error.code(), "bad_uri");

    assert!(matches!(
        wire.to_room().unwrap_err(),
        UriError::WrongKind {
            expected: "room",
            found: "user"
        }
    ));
    assert_eq!(
        IdentifierUri::new("mimi://a.example/d/alice/phone")
            .to_client()
            .unwrap()
            .user(),
        user
    );
    assert_eq!(
        IdentifierUri::new("https://a.example/u/alice")
            .to_uri()
            .unwrap_err(),
        UriError::Scheme
    );
}

#[test]
fn rfc9420_6_mls_messages_are_classified_from_their_cleartext_header() {
    let f = fixture();
    assert_eq!(
        f.commit().kind(),
        MlsMessageKind::PublicMessage {
            content_type: ContentType::Commit,
            epoch: 0
        }
    );
    assert_eq!(
        f.application().kind(),
        MlsMessageKind::PrivateMessage {
            content_type: ContentType::Application,
            epoch: 1
        }
    );
    assert_eq!(f.proposal(0).content_type(), Some(ContentType::Proposal));
    assert_eq!(f.proposal(0).epoch(), Some(1));
    assert_eq!(f.welcome().kind(), MlsMessageKind::Welcome);
    assert_eq!(f.group_info().kind(), MlsMessageKind::GroupInfo);
    assert_eq!(f.welcome().content_type(), None);
    assert_eq!(f.commit().bytes(), &f.commit[..]);
    assert!(f.application().to_openmls().is_ok());

    let mut trailing = f.commit.clone();
    trailing.push(0);
    assert_eq!(
        MlsMessage::from_bytes(&trailing).unwrap_err(),
        WireError::TrailingBytes { count: 1 }
    );
    assert!(MlsMessage::from_bytes(b"not an mls message").is_err());
}

#[test]
fn rfc9420_6_bare_welcome_and_group_info_wrap_and_unwrap_byte_exact() {
    let f = fixture();
    let welcome: Mls<Welcome> = f.welcome().unwrap_body("test").unwrap();
    assert_eq!(welcome.bytes(), &f.welcome[4..]);
    assert_eq!(MlsMessage::wrap(&welcome).unwrap(), f.welcome());

    let group_info: Mls<VerifiableGroupInfo> = f.group_info().unwrap_body("test").unwrap();
    assert_eq!(MlsMessage::wrap(&group_info).unwrap(), f.group_info());

    let key_package = f.key_package(0);
    let wrapped = MlsMessage::wrap(&key_package).unwrap();
    assert_eq!(wrapped.kind(), MlsMessageKind::KeyPackage);
    let unwrapped: Mls<KeyPackageIn> = wrapped.unwrap_body("test").unwrap();
    assert_eq!(unwrapped, key_package);

    assert_eq!(
        f.commit().unwrap_body::<Welcome>("X.welcome").unwrap_err(),
        WireError::UnexpectedMessage {
            field: "X.welcome",
            expected: "a Welcome",
            found: "a PublicMessage commit"
        }
    );
}

#[test]
fn mls_structures_keep_their_exact_bytes_and_compare_by_them() {
    let f = fixture();
    let first = f.key_package(0);
    assert_eq!(first.bytes(), &f.key_packages[0][..]);
    assert_ne!(first, f.key_package(1));
    assert_eq!(
        format!("{first:?}"),
        format!("Mls<KeyPackageIn>({} bytes)", f.key_packages[0].len())
    );
    let credential = Mls::<Credential>::from_bytes(&f.credential).unwrap();
    assert_eq!(
        Mls::from_value(credential.value().clone()).unwrap(),
        credential
    );
    let mut trailing = f.credential.clone();
    trailing.push(9);
    assert_eq!(
        Mls::<Credential>::from_bytes(&trailing).unwrap_err(),
        WireError::TrailingBytes { count: 1 }
    );
}
