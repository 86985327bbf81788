//! content-08 tests: the draft's published examples as byte and message-ID vectors,
//! determinism, and every rejection.

use super::*;

/// Hex with whitespace, as printed in the draft.
fn h(text: &str) -> Vec<u8> {
    let compact: String = text.split_whitespace().collect();
    hex::decode(compact).expect("test hex")
}

fn id(text: &str) -> MessageId {
    MessageId(h(text).try_into().expect("32-byte id"))
}

fn salt(text: &str) -> [u8; SALT_LEN] {
    h(text).try_into().expect("16-byte salt")
}

const ALICE: &str = "mimi://example.com/u/alice-smith";
const BOB: &str = "mimi://example.com/u/bob-jones";
const ROOM: &str = "mimi://example.com/r/engineering_team";
const MARKDOWN: &str = "text/markdown;variant=GFM-MIMI";
const ORIGINAL_ID: &str = "017ce54837404c3696e0c747b985cb17 2716d0ed0a3d249ca63ace7d82a096f4";
const REPLY_ID: &str = "015354973c2b65ca937bf1e035ae53a5 ab80e947afa43d46920d4202e5cc0b27";

fn message(salt_hex: &str, sender: &str, body: NestedPart) -> MimiContent {
    MimiContent {
        salt: salt(salt_hex),
        replaces: None,
        topic_id: Vec::new(),
        expires: None,
        in_reply_to: None,
        extensions: Extensions::new(),
        body,
    }
    .with_sender_and_room(sender, ROOM)
}

fn single(disposition: Disposition, content_type: &str, content: &[u8]) -> NestedPart {
    NestedPart {
        disposition,
        language: String::new(),
        part: Part::Single {
            content_type: content_type.to_owned(),
            content: content.to_vec(),
        },
    }
}

/// Encodes, checks the bytes (when given) and the message ID, decodes back to the same value.
fn check_example(content: &MimiContent, bytes: Option<Vec<u8>>, message_id: &str) {
    let encoded = content.encode().unwrap();
    if let Some(expected) = bytes {
        assert_eq!(hex::encode(&encoded), hex::encode(expected));
    }
    assert_eq!(MimiContent::decode(&encoded).unwrap(), *content);
    let sender = content.extensions.sender_uri().unwrap();
    let room = content.extensions.room_uri().unwrap();
    assert_eq!(content.message_id(sender, room).unwrap(), id(message_id));
}

fn original() -> MimiContent {
    message(
        "5eed9406c2545547ab6f09f20a18b003",
        ALICE,
        single(
            Disposition::RENDER,
            MARKDOWN,
            b"Hi everyone, we just shipped release 2.0. __Good  work__!",
        ),
    )
}

#[test]
fn content08_5_1_original_message_is_byte_exact_with_the_published_id() {
    let bytes = h("87 50 5eed9406c2545547ab6f09f20a18b003 f6 40 f6 f6
        a2 01 78 20 6d696d693a2f2f6578616d706c652e636f6d2f752f616c6963652d736d697468
           02 78 25 6d696d693a2f2f6578616d706c652e636f6d2f722f656e67696e656572696e675f7465616d
        85 01 60 01 78 1e 746578742f6d61726b646f776e3b76617269616e743d47464d2d4d494d49
           58 39 48692065766572796f6e652c207765206a75737420736869707065642072656c65617365
                 20322e302e205f5f476f6f642020776f726b5f5f21");
    check_example(&original(), Some(bytes), ORIGINAL_ID);
}

#[test]
fn content08_3_3_message_id_is_sha256_over_length_prefixed_uris_content_and_salt() {
    let content = original();
    let encoded = content.encode().unwrap();
    let mut input = Vec::new();
    input.extend((ALICE.len() as u16).to_be_bytes());
    input.extend(ALICE.as_bytes());
    input.extend((ROOM.len() as u16).to_be_bytes());
    input.extend(ROOM.as_bytes());
    input.extend(&encoded);
    input.extend(content.salt);
    let digest = Sha256::digest(&input);
    let mut expected = [HASH_ALG_SHA256; MESSAGE_ID_LEN];
    expected[1..].copy_from_slice(&digest[..31]);
    let derived = MessageId::derive(ALICE, ROOM, &encoded, &content.salt).unwrap();
    assert_eq!(derived, MessageId(expected));
    assert_eq!(derived, id(ORIGINAL_ID));
    // The URIs are length-prefixed: moving a byte between them changes the ID (-07 had no
    // prefixes, so "ab"+"c" and "a"+"bc" collided).
    assert_ne!(
        MessageId::derive("ab", "c", &encoded, &content.salt).unwrap(),
        MessageId::derive("a", "bc", &encoded, &content.salt).unwrap()
    );
    let long = "x".repeat(65536);
    assert_eq!(
        MessageId::derive(&long, ROOM, &encoded, &content.salt).unwrap_err(),
        ContentError::UriTooLong { field: "senderUri" }
    );
}

#[test]
fn content08_5_2_reply_and_5_6_delete_ids_chain_to_the_original() {
    let mut reply = message(
        "11a458c73b8dd2cf404db4b378b8fe4d",
        BOB,
        single(
            Disposition::RENDER,
            MARKDOWN,
            b"Right on! _Congratulations_ 'all!",
        ),
    );
    reply.in_reply_to = Some(id(ORIGINAL_ID));
    check_example(&reply, None, REPLY_ID);

    let mut delete = message(
        "0a590d73b2c7761c39168be5ebf7f2e6",
        BOB,
        NestedPart {
            disposition: Disposition::RENDER,
            language: String::new(),
            part: Part::Null,
        },
    );
    delete.replaces = Some(id(REPLY_ID));
    delete.in_reply_to = Some(id(ORIGINAL_ID));
    check_example(
        &delete,
        None,
        "011d9efc78d04d4dcf4d82b07d5199bb ef37011c1f0c7e004b6111c6dda504b4",
    );
}

#[test]
fn content08_5_8_expiring_message_is_byte_exact() {
    let mut expiring = message(
        "33be993eb39f418f9295afc2ae160d2d",
        ALICE,
        single(
            Disposition::RENDER,
            MARKDOWN,
            b"__*VPN GOING DOWN*__ I'm rebooting the VPN in ten minutes unless anyone objects.",
        ),
    );
    expiring.expires = Some(Expiration {
        relative: false,
        time: 1_644_390_004,
    });
    let bytes = h(
        "87 50 33be993eb39f418f9295afc2ae160d2d f6 40 82 f4 1a 62036674 f6
        a2 01 78 20 6d696d693a2f2f6578616d706c652e636f6d2f752f616c6963652d736d697468
           02 78 25 6d696d693a2f2f6578616d706c652e636f6d2f722f656e67696e656572696e675f7465616d
        85 01 60 01 78 1e 746578742f6d61726b646f776e3b76617269616e743d47464d2d4d494d49
           58 50 5f5f2a56504e20474f494e4720444f574e2a5f5f2049276d207265626f6f7469
                 6e67207468652056504e20696e2074656e206d696e7574657320756e6c657373
                 20616e796f6e65206f626a656374732e",
    );
    check_example(
        &expiring,
        Some(bytes),
        "01e59db8173939facc2c8a4a0f0ae8d0 c7a11a81239626630c9464a8d6717a03",
    );
}

#[test]
fn content08_5_9_attachment_external_part_is_byte_exact() {
    let attachment = message(
        "18fac6371e4e53f1aeaf8a013155c166",
        BOB,
        NestedPart {
            disposition: Disposition::ATTACHMENT,
            language: "en".into(),
            part: Part::External(ExternalPart {
                content_type: "video/mp4".into(),
                url: "https://example.com/storage/8ksB4bSrrRE.mp4".into(),
                expires: 0,
                size: 708_234_961,
                enc_alg: 1,
                key: h("21399320958a6f4c745dde670d95e0d8"),
                nonce: h("c86cf2c33f21527d1dd76f5b"),
                aad: Vec::new(),
                hash_alg: 1,
                content_hash: h("9ab17a8cf0890baaae7ee016c7312fcc080ba46498389458ee44f0276e783163"),
                description: "2 hours of key signing video".into(),
                filename: "bigfile.mp4".into(),
            }),
        },
    );
    let bytes = h("87 50 18fac6371e4e53f1aeaf8a013155c166 f6 40 f6 f6
        a2 01 78 1e 6d696d693a2f2f6578616d706c652e636f6d2f752f626f622d6a6f6e6573
           02 78 25 6d696d693a2f2f6578616d706c652e636f6d2f722f656e67696e656572696e675f7465616d
        8f 06 62 656e 02 69 766964656f2f6d7034
           78 2b 68747470733a2f2f6578616d706c652e636f6d2f73746f726167652f386b7342346253727252452e6d7034
           00 1a 2a36ced1 01 50 21399320958a6f4c745dde670d95e0d8 4c c86cf2c33f21527d1dd76f5b 40
           01 58 20 9ab17a8cf0890baaae7ee016c7312fcc080ba46498389458ee44f0276e783163
           78 1c 3220686f757273206f66206b6579207369676e696e6720766964656f
           6b 62696766696c652e6d7034");
    check_example(
        &attachment,
        Some(bytes),
        "0176180c7d19a925021fe446d241134d 05c38e0d999cdc0f39c391d2377ed9d1",
    );
}

#[test]
fn content08_5_10_conferencing_session_is_byte_exact() {
    let mut conferencing = message(
        "678ac6cd54de049c3e9665cd212470fa",
        ALICE,
        NestedPart {
            disposition: Disposition::SESSION,
            language: String::new(),
            part: Part::External(ExternalPart {
                content_type: String::new(),
                url: "https://example.com/join/12345".into(),
                expires: 0,
                size: 0,
                enc_alg: 0,
                key: Vec::new(),
                nonce: Vec::new(),
                aad: Vec::new(),
                hash_alg: 0,
                content_hash: Vec::new(),
                description: "Join the Foo 118 conference".into(),
                filename: String::new(),
            }),
        },
    );
    conferencing.topic_id = b"Foo 118".to_vec();
    let bytes = h(
        "87 50 678ac6cd54de049c3e9665cd212470fa f6 47 466f6f20313138 f6 f6
        a2 01 78 20 6d696d693a2f2f6578616d706c652e636f6d2f752f616c6963652d736d697468
           02 78 25 6d696d693a2f2f6578616d706c652e636f6d2f722f656e67696e656572696e675f7465616d
        8f 07 60 02 60 78 1e 68747470733a2f2f6578616d706c652e636f6d2f6a6f696e2f3132333435
           00 00 00 40 40 40 00 40
           78 1b 4a6f696e2074686520466f6f2031313820636f6e666572656e6365 60",
    );
    check_example(
        &conferencing,
        Some(bytes),
        "01496d15a8dba28d7397f9868b70768e 4a67f765d5b5b1ae9e03848c5fdeb0ba",
    );
}

#[test]
fn content08_b_1_multipart_alternatives_have_the_published_id() {
    let multipart = message(
        "261c953e178af653fe3d42641b91d814",
        ALICE,
        NestedPart {
            disposition: Disposition::RENDER,
            language: String::new(),
            part: Part::Multi {
                semantics: PartSemantics::ChooseOne,
                parts: vec![
                    single(Disposition::RENDER, MARKDOWN, b"# Welcome!"),
                    single(
                        Disposition::RENDER,
                        "application/vnd.examplevendor-fancy-im-message",
                        &h("dc861ebaa718fd7c3ca159f71a2001"),
                    ),
                ],
            },
        },
    );
    check_example(
        &multipart,
        None,
        "01da5a515ec5db42cc4dcc19b90c3c31 245d8a1cfcce11318f24eb11dce0990e",
    );
}

#[test]
fn plain_text_constructor_builds_a_render_part_with_the_callers_salt() {
    let content = MimiContent::plain_text([7; SALT_LEN], "hello").with_sender_and_room(ALICE, ROOM);
    let encoded = content.encode().unwrap();
    assert_eq!(MimiContent::decode(&encoded).unwrap(), content);
    assert_eq!(content.salt, [7; SALT_LEN]);
    assert_eq!(
        content.body,
        single(Disposition::RENDER, TEXT_PLAIN_UTF8, b"hello")
    );
    // Same input, same bytes: nothing random or clock-dependent inside.
    assert_eq!(
        MimiContent::plain_text([7; SALT_LEN], "hello")
            .with_sender_and_room(ALICE, ROOM)
            .encode()
            .unwrap(),
        encoded
    );
}

#[test]
fn rfc8949_4_2_1_extension_keys_are_sorted_by_their_encoding() {
    let keys = [
        ExtensionKey::Text("a".into()),
        ExtensionKey::Int(-1),
        ExtensionKey::Int(256),
        ExtensionKey::Int(24),
        ExtensionKey::Int(2),
        ExtensionKey::Int(1),
    ];
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    for key in keys.iter().cloned() {
        let value = match key {
            ExtensionKey::Int(1 | 2) => Value::Text(String::new()),
            _ => Value::Null,
        };
        content.extensions.insert(key, value);
    }
    let encoded = content.encode().unwrap();
    // 7-element array, salt, null, empty topic, null, null, then the map.
    let map_at = 1 + 17 + 1 + 1 + 1 + 1;
    assert_eq!(
        hex::encode(&encoded[map_at..map_at + 17]),
        "a6 0160 0260 1818f6 190100f6 20f6 6161f6".replace(' ', "")
    );
    assert_eq!(MimiContent::decode(&encoded).unwrap(), content);
}

/// A message with the given raw extensions map and body.
fn raw(extensions: &str, body: &str) -> Vec<u8> {
    let mut bytes = h("87 50 00000000000000000000000000000000 f6 40 f6 f6");
    bytes.extend(h(extensions));
    bytes.extend(h(body));
    bytes
}

const NULL_BODY: &str = "83 01 60 00";

#[test]
fn rfc8949_4_2_1_non_shortest_heads_and_indefinite_lengths_are_rejected() {
    assert!(MimiContent::decode(&raw("a0", NULL_BODY)).is_ok());
    // The salt length 16 written as 0x58 0x10.
    let mut long_head = h("87 58 10 00000000000000000000000000000000 f6 40 f6 f6 a0");
    long_head.extend(h(NULL_BODY));
    assert_eq!(
        MimiContent::decode(&long_head).unwrap_err(),
        ContentError::NonShortestHead { offset: 1 }
    );
    // Extension value 5 written as 0x18 0x05.
    assert_eq!(
        MimiContent::decode(&raw("a1 03 1805", NULL_BODY)).unwrap_err(),
        ContentError::NonShortestHead { offset: 24 }
    );
    // Indefinite-length byte string and array as extension values.
    assert_eq!(
        MimiContent::decode(&raw("a1 03 5f 41 00 ff", NULL_BODY)).unwrap_err(),
        ContentError::IndefiniteLength { offset: 24 }
    );
    assert_eq!(
        MimiContent::decode(&raw("a1 03 9f ff", NULL_BODY)).unwrap_err(),
        ContentError::IndefiniteLength { offset: 24 }
    );
    assert_eq!(
        MimiContent::decode(&raw("a1 03 1c", NULL_BODY)).unwrap_err(),
        ContentError::Malformed { offset: 24 }
    );
}

#[test]
fn rfc8949_4_2_1_map_keys_must_be_sorted_and_unique() {
    assert_eq!(
        MimiContent::decode(&raw("a2 04 f6 03 f6", NULL_BODY)).unwrap_err(),
        ContentError::UnsortedMapKeys { offset: 25 }
    );
    assert_eq!(
        MimiContent::decode(&raw("a2 03 f6 03 f6", NULL_BODY)).unwrap_err(),
        ContentError::DuplicateMapKey { offset: 25 }
    );
    // Inside an extension value too; the encoder sorts and refuses duplicates.
    assert_eq!(
        MimiContent::decode(&raw("a1 03 a2 62 6262 f6 61 61 f6", NULL_BODY)).unwrap_err(),
        ContentError::UnsortedMapKeys { offset: 29 }
    );
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content.extensions.insert(
        ExtensionKey::Int(3),
        Value::Map(vec![
            (Value::Text("bb".into()), Value::Null),
            (Value::Text("a".into()), Value::Null),
        ]),
    );
    let encoded = content.encode().unwrap();
    let Value::Map(entries) = MimiContent::decode(&encoded)
        .unwrap()
        .extensions
        .get(&ExtensionKey::Int(3))
        .cloned()
        .unwrap()
    else {
        panic!("extension 3 is a map");
    };
    assert_eq!(entries[0].0, Value::Text("a".into()));
    content.extensions.insert(
        ExtensionKey::Int(3),
        Value::Map(vec![
            (Value::Integer(1), Value::Null),
            (Value::Integer(1), Value::Bool(true)),
        ]),
    );
    assert!(matches!(
        content.encode().unwrap_err(),
        ContentError::DuplicateMapKey { .. }
    ));
    content.extensions.insert(
        ExtensionKey::Int(3),
        Value::Map(vec![(Value::Array(vec![]), Value::Null)]),
    );
    assert_eq!(content.encode().unwrap_err(), ContentError::InvalidMapKey);
    assert_eq!(
        MimiContent::decode(&raw("a1 03 a1 80 f6", NULL_BODY)).unwrap_err(),
        ContentError::InvalidMapKey
    );
}

#[test]
fn content08_6_2_integers_stay_within_2_pow_53_minus_1() {
    // 2^53 - 1 and -(2^53 - 1) are fine; one more either way is not.
    assert!(MimiContent::decode(&raw("a1 03 1b 001fffffffffffff", NULL_BODY)).is_ok());
    assert!(MimiContent::decode(&raw("a1 03 3b 001ffffffffffffe", NULL_BODY)).is_ok());
    for value in ["1b 0020000000000000", "3b 001fffffffffffff", "c2 41 01"] {
        assert_eq!(
            MimiContent::decode(&raw(&format!("a1 03 {value}"), NULL_BODY)).unwrap_err(),
            ContentError::IntegerOutOfRange,
            "{value}"
        );
    }
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content
        .extensions
        .insert(ExtensionKey::Int(3), Value::Integer(1 << 53));
    assert_eq!(
        content.encode().unwrap_err(),
        ContentError::IntegerOutOfRange
    );
    content
        .extensions
        .insert(ExtensionKey::Int(3), Value::Integer(-(1 << 53) + 1));
    assert!(content.encode().is_ok());
}

#[test]
fn content08_6_2_floats_are_shortest_and_nan_is_only_f97e00() {
    for (value, encoding) in [
        (1.5, "f9 3e00"),
        (-0.0, "f9 8000"),
        (f64::INFINITY, "f9 7c00"),
        (5.960_464_477_539_063e-8, "f9 0001"),
        (100_000.0, "fa 47c35000"),
        (1.0e300, "fb 7e37e43c8800759c"),
        (f64::NAN, "f9 7e00"),
    ] {
        let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
        content
            .extensions
            .insert(ExtensionKey::Int(3), Value::Float(Float::new(value)));
        let encoded = content.encode().unwrap();
        assert_eq!(
            encoded,
            raw(
                &format!("a1 03 {encoding}"),
                "85 01 60 01 78 18 746578742f706c61696e3b636861727365743d7574662d38 41 78"
            ),
            "{value}"
        );
        assert_eq!(MimiContent::decode(&encoded).unwrap(), content);
    }
    for (encoding, error) in [
        ("fa 3fc00000", ContentError::NonShortestFloat { offset: 24 }),
        (
            "fb 3ff8000000000000",
            ContentError::NonShortestFloat { offset: 24 },
        ),
        ("f9 7e01", ContentError::ForbiddenNaN { offset: 24 }),
        ("fa 7fc00000", ContentError::ForbiddenNaN { offset: 24 }),
        (
            "f8 10",
            ContentError::InvalidSimpleValue {
                offset: 24,
                value: 16,
            },
        ),
    ] {
        assert_eq!(
            MimiContent::decode(&raw(&format!("a1 03 {encoding}"), NULL_BODY)).unwrap_err(),
            error,
            "{encoding}"
        );
    }
}

#[test]
fn content08_6_3_extension_values_nest_at_most_4_levels() {
    // The draft's own 4-level example: {1: "...", 256: [[h'1234', 32("http://example.com")],
    // [h'3456', 5771]]}.
    let four = raw(
        "a2 01 78 18 6d696d693a2f2f612e6578616d706c652f752f616c696365
            19 0100 82 82 42 1234 d8 20 72 687474703a2f2f6578616d706c652e636f6d
                       82 42 3456 19 168b",
        NULL_BODY,
    );
    let content = MimiContent::decode(&four).unwrap();
    assert_eq!(
        content.extensions.sender_uri(),
        Some("mimi://a.example/u/alice")
    );
    assert_eq!(content.encode().unwrap(), four);
    // One more array level around the tag.
    let five = raw("a1 03 81 81 81 81 00", NULL_BODY);
    assert_eq!(
        MimiContent::decode(&five).unwrap_err(),
        ContentError::ExtensionTooDeep
    );
    let mut too_deep = MimiContent::plain_text([0; SALT_LEN], "x");
    too_deep.extensions.insert(
        ExtensionKey::Int(3),
        Value::Array(vec![Value::Array(vec![Value::Array(vec![Value::Tag(
            32,
            Box::new(Value::Text("x".into())),
        )])])]),
    );
    assert_eq!(
        too_deep.encode().unwrap_err(),
        ContentError::ExtensionTooDeep
    );
}

fn nest(depth: usize) -> NestedPart {
    let leaf = single(Disposition::RENDER, TEXT_PLAIN_UTF8, b"x");
    (1..depth).fold(leaf, |inner, _| NestedPart {
        disposition: Disposition::RENDER,
        language: String::new(),
        part: Part::Multi {
            semantics: PartSemantics::ProcessAll,
            parts: vec![inner, single(Disposition::RENDER, TEXT_PLAIN_UTF8, b"y")],
        },
    })
}

#[test]
fn content08_6_3_nested_parts_are_at_most_4_deep() {
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content.body = nest(4);
    let encoded = content.encode().unwrap();
    assert_eq!(MimiContent::decode(&encoded).unwrap(), content);
    content.body = nest(5);
    assert_eq!(content.encode().unwrap_err(), ContentError::PartTooDeep);
    // The depth-5 encoding, written by hand: four MultiParts around a NullPart.
    let multi = "85 01 60 03 02 82";
    let body = format!("{multi} {multi} {multi} {multi} {NULL_BODY} {NULL_BODY} {NULL_BODY} {NULL_BODY} {NULL_BODY}");
    assert_eq!(
        MimiContent::decode(&raw("a0", &body)).unwrap_err(),
        ContentError::PartTooDeep
    );
}

#[test]
fn mimi_10_more_than_1024_parts_are_rejected() {
    let null = NestedPart {
        disposition: Disposition::RENDER,
        language: String::new(),
        part: Part::Null,
    };
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content.body = NestedPart {
        disposition: Disposition::RENDER,
        language: String::new(),
        part: Part::Multi {
            semantics: PartSemantics::ProcessAll,
            parts: vec![null.clone(); MAX_PARTS - 1],
        },
    };
    let encoded = content.encode().unwrap();
    assert_eq!(MimiContent::decode(&encoded).unwrap(), content);
    let mut body = String::from("85 01 60 03 02 99 0400");
    for _ in 0..MAX_PARTS {
        body.push(' ');
        body.push_str(NULL_BODY);
    }
    assert_eq!(
        MimiContent::decode(&raw("a0", &body)).unwrap_err(),
        ContentError::TooManyParts
    );
    if let Part::Multi { parts, .. } = &mut content.body.part {
        parts.push(null);
    }
    assert_eq!(content.encode().unwrap_err(), ContentError::TooManyParts);
}

#[test]
fn content08_4_4_part_schema_violations_are_rejected() {
    for (body, error) in [
        (
            "85 01 60 03 02 81 83 01 60 00",
            ContentError::MultiPartTooFew,
        ),
        ("83 01 60 04", ContentError::UnknownCardinality(4)),
        (
            "85 01 60 03 03 82 83016000 83016000",
            ContentError::UnknownPartSemantics(3),
        ),
        ("84 01 60 00 00", nested_part_schema()),
        (
            "83 19 0100 60 00",
            ContentError::Schema {
                field: "disposition",
                expected: "an unsigned integer within its size",
            },
        ),
        ("83 01 61 ff 00", ContentError::InvalidUtf8 { offset: 26 }),
    ] {
        assert_eq!(
            MimiContent::decode(&raw("a0", body)).unwrap_err(),
            error,
            "{body}"
        );
    }
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content.body.part = Part::Multi {
        semantics: PartSemantics::ChooseOne,
        parts: vec![single(Disposition::RENDER, TEXT_PLAIN_UTF8, b"only")],
    };
    assert_eq!(content.encode().unwrap_err(), ContentError::MultiPartTooFew);
}

#[test]
fn content08_4_1_top_level_schema_violations_are_rejected() {
    let valid = raw("a0", NULL_BODY);
    let salt_15 = {
        let mut bytes = h("87 4f 000000000000000000000000000000 f6 40 f6 f6 a0");
        bytes.extend(h(NULL_BODY));
        bytes
    };
    assert_eq!(
        MimiContent::decode(&salt_15).unwrap_err(),
        ContentError::Schema {
            field: "salt",
            expected: "a 16-byte string"
        }
    );
    let mut six = valid.clone();
    six[0] = 0x86;
    assert_eq!(
        MimiContent::decode(&six).unwrap_err(),
        ContentError::Schema {
            field: "mimiContent",
            expected: "an array of 7 elements"
        }
    );
    let mut unknown_hash = h("87 50 00000000000000000000000000000000 58 20");
    unknown_hash.extend([0x02; 32]);
    unknown_hash.extend(h("40 f6 f6 a0"));
    unknown_hash.extend(h(NULL_BODY));
    assert_eq!(
        MimiContent::decode(&unknown_hash).unwrap_err(),
        ContentError::UnknownHashAlgorithm(2)
    );
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content.topic_id = vec![1; MAX_TOPIC_ID_LEN + 1];
    assert_eq!(
        content.encode().unwrap_err(),
        ContentError::TopicIdTooLong(MAX_TOPIC_ID_LEN + 1)
    );
    content.topic_id.pop();
    assert!(MimiContent::decode(&content.encode().unwrap()).is_ok());
    // senderUri must be text.
    assert_eq!(
        MimiContent::decode(&raw("a1 01 41 00", NULL_BODY)).unwrap_err(),
        uri_extension_schema()
    );
}

#[test]
fn content08_4_3_extension_keys_are_ints_or_short_text() {
    let key_256 = format!("a1 79 0100 {} f6", "61".repeat(256));
    assert_eq!(
        MimiContent::decode(&raw(&key_256, NULL_BODY)).unwrap_err(),
        ContentError::InvalidExtensionKey
    );
    assert_eq!(
        MimiContent::decode(&raw("a1 60 f6", NULL_BODY)).unwrap_err(),
        ContentError::InvalidExtensionKey
    );
    assert_eq!(
        MimiContent::decode(&raw("a1 41 00 f6", NULL_BODY)).unwrap_err(),
        ContentError::InvalidExtensionKey
    );
    let key_255 = format!("a1 78 ff {} f6", "61".repeat(255));
    assert!(MimiContent::decode(&raw(&key_255, NULL_BODY)).is_ok());
    let mut content = MimiContent::plain_text([0; SALT_LEN], "x");
    content
        .extensions
        .insert(ExtensionKey::Text(String::new()), Value::Null);
    assert_eq!(
        content.encode().unwrap_err(),
        ContentError::InvalidExtensionKey
    );
}

#[test]
fn decode_rejects_every_truncation_and_trailing_bytes() {
    let encoded = original().encode().unwrap();
    for cut in 0..encoded.len() {
        assert!(
            MimiContent::decode(&encoded[..cut]).is_err(),
            "{cut}-byte prefix decoded"
        );
    }
    let mut longer = encoded.clone();
    longer.push(0);
    assert_eq!(
        MimiContent::decode(&longer).unwrap_err(),
        ContentError::TrailingBytes { count: 1 }
    );
    // A byte string claiming far more than is there fails without allocating it.
    let claims_4_gib = raw("a1 03 5a ffffffff", NULL_BODY);
    assert_eq!(
        MimiContent::decode(&claims_4_gib).unwrap_err(),
        ContentError::Truncated {
            offset: claims_4_gib.len()
        }
    );
}

#[test]
fn single_byte_mutations_never_panic() {
    let mut deep = MimiContent::plain_text([1; SALT_LEN], "x").with_sender_and_room(ALICE, ROOM);
    deep.body = nest(4);
    deep.extensions.insert(
        ExtensionKey::Int(-7),
        Value::Array(vec![
            Value::Float(Float::new(1.5)),
            Value::Tag(32, Box::new(Value::Text("https://x".into()))),
            Value::Map(vec![(Value::Bytes(vec![1]), Value::Simple(40))]),
        ]),
    );
    for content in [original(), deep] {
        let bytes = content.encode().unwrap();
        for position in 0..bytes.len() {
            for replacement in [0x00, 0xff, 0x1b, 0x9f, bytes[position] ^ 0x20] {
                let mut mutated = bytes.clone();
                mutated[position] = replacement;
                if let Ok(decoded) = MimiContent::decode(&mutated) {
                    assert_eq!(decoded.encode().unwrap(), mutated);
                }
            }
        }
    }
}
