//! What the two halves of the hostile-input corpus share (`malformed_input.rs`: the client API
//! and the admin listener; `malformed_federation.rs`: the server-to-server API): the answers a
//! case may demand ([`Expect`], [`check_answer`]), the generated wire-level damage
//! ([`wire_mutations`]: cuts, trailing bytes, every length prefix our codec reads made
//! non-minimal, reserved, over the limit and beyond the input), the table of hostile `mimi:`
//! URIs ([`hostile_uris`]) and the per-endpoint tally ([`Tally`]) each test function checks
//! against its documented share.
//!
//! Expectations of generated cases are computed with the node's own decoders and URI parsers
//! (the answer must be exactly the reason they give) and then checked against the class of
//! damage the case did (a cut body must be `truncated`, `length_beyond_input` or, inside an
//! openmls structure, `bad_mls_structure`; a widened prefix `non_minimal_length`; a URI with a
//! port `Authority`; ...), so a case pins both the edge's mapping to a status and the codec's
//! classification.

#![allow(dead_code)] // Each test binary uses its part.

use std::collections::BTreeMap;

use http::{HeaderMap, StatusCode};
use mimid_actors::ids::{MimiUri, UriError};
use mimid_node::wire::client::{
    ClientSubmitResponse, ClientUpdateResponse, CreateRoomResponse, CreateRoomStatus,
};
use mimid_node::wire::group_info::{GroupInfoCode, GroupInfoResponse};
use mimid_node::wire::identifier::{IdentifierQueryCode, IdentifierResponse};
use mimid_node::wire::key_material::{ClientMaterial, KeyMaterialResponse, KeyMaterialUserCode};
use mimid_node::wire::submit::{SubmitMessageResponse, SubmitResponseCode};
use mimid_node::wire::update::{UpdateResponseCode, UpdateRoomResponse};
use mimid_node::wire::{Decode, Limits, WireError};

/// The response header of a groupInfo `notAuthorized` answer (`mimid_node::group_info`).
pub const REASON_HEADER: &str = "mimi-reason";

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Expectations.

/// The answer a case must get.
#[derive(Debug, Clone)]
pub enum Expect {
    /// A refusal: this status and a `text/plain` reason containing every fragment.
    Refused(StatusCode, Vec<String>),
    /// 200 with a client API `ClientUpdateResponse` of this code, seq 0, and an
    /// `errorDescription` containing the fragment (protocol-06 §5.2).
    ClientUpdate(UpdateResponseCode, String),
    /// 200 with a client API `ClientSubmitResponse` of this code, seq 0, and a reason
    /// containing the fragment (protocol-06 §5.3).
    ClientSubmit(SubmitResponseCode, String),
    /// This status with a `CreateRoomResponse` of this status and a reason containing the
    /// fragment.
    CreateRoom(StatusCode, CreateRoomStatus, String),
    /// 200 with a protocol-06 `UpdateRoomResponse` of this code whose `errorDescription`
    /// contains the fragment (the server-to-server answer).
    PeerUpdate(UpdateResponseCode, String),
    /// 200 with a protocol-06 `SubmitMessageResponse` of this code (the server-to-server
    /// answer, which carries no text).
    PeerSubmit(SubmitResponseCode),
    /// 200 with a `KeyMaterialResponse` of this user code in which no client's material is a
    /// KeyPackage (protocol-06 §5.1: nothing was handed out).
    KeyMaterial(KeyMaterialUserCode),
    /// 200 with a `GroupInfoResponse` of this code for the room and the `mimi-reason` header
    /// containing the fragment (protocol-06 §5.5, MIMI.md §5.5).
    GroupInfo(GroupInfoCode, String),
    /// 200 with an `IdentifierResponse` of this code naming nobody (protocol-06 §5.8).
    Identifier(IdentifierQueryCode),
    /// 201 with an empty body: accepted and, for these cases, without effect (MIMI.md §13:
    /// consent about unknown users).
    Created,
    /// 204 with an empty body: accepted and, for these cases, without effect.
    NoContent,
    /// 200 and a push stream.
    Stream,
}

pub fn refused(status: StatusCode, fragments: &[&str]) -> Expect {
    Expect::Refused(status, fragments.iter().map(|f| f.to_string()).collect())
}

/// A generous decoding limit for answers (they are produced by the node, not the test).
fn answer_limits() -> Limits {
    Limits::default()
}

/// Checks one answer against `expect`; panics naming the case.
pub fn check_answer(
    name: &str,
    expect: &Expect,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) {
    let limits = answer_limits();
    match expect {
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
        Expect::ClientUpdate(code, fragment) => {
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
        Expect::ClientSubmit(code, fragment) => {
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
        Expect::PeerUpdate(code, fragment) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = UpdateRoomResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not an UpdateRoomResponse: {e}"));
            assert_eq!(response.response_code(), *code, "{name}: {response:?}");
            assert!(
                response.error_description.contains(fragment.as_str()),
                "{name}: {:?} does not contain {fragment:?}",
                response.error_description
            );
        }
        Expect::PeerSubmit(code) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = SubmitMessageResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a SubmitMessageResponse: {e}"));
            assert_eq!(response.status_code(), *code, "{name}: {response:?}");
        }
        Expect::KeyMaterial(user_code) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = KeyMaterialResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a KeyMaterialResponse: {e}"));
            assert_eq!(response.user_status, *user_code, "{name}");
            assert!(
                response
                    .clients
                    .iter()
                    .all(|client| !matches!(client.material, ClientMaterial::Success { .. })),
                "{name}: {response:?}"
            );
        }
        Expect::GroupInfo(code, fragment) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = GroupInfoResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not a GroupInfoResponse: {e}"));
            assert_eq!(response.status(), *code, "{name}");
            let reason = headers
                .get(REASON_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            assert!(
                reason.contains(fragment.as_str()),
                "{name}: {REASON_HEADER} {reason:?} does not contain {fragment:?}"
            );
        }
        Expect::Identifier(code) => {
            assert_eq!(status, StatusCode::OK, "{name}: {}", text(body));
            let response = IdentifierResponse::from_bytes(body, &limits)
                .unwrap_or_else(|e| panic!("{name}: not an IdentifierResponse: {e}"));
            assert_eq!(response.response_code, *code, "{name}");
            assert!(response.uri.is_empty(), "{name}: {response:?}");
        }
        Expect::Created => {
            assert_eq!(status, StatusCode::CREATED, "{name}: {}", text(body));
            assert!(body.is_empty(), "{name}");
        }
        Expect::NoContent => {
            assert_eq!(status, StatusCode::NO_CONTENT, "{name}: {}", text(body));
            assert!(body.is_empty(), "{name}");
        }
        Expect::Stream => unreachable!("{name}: stream cases are checked by the harness"),
    }
}

// ---------------------------------------------------------------------------------------------
// Codec expectations.

/// How the node decodes an operation's body (and converts it, where the conversion refuses
/// with a `WireError` before anything else is looked at), for the exact expected 400.
pub type Decoder = fn(&[u8], &Limits) -> Result<(), WireError>;

pub fn decode_as<T: Decode>(body: &[u8], limits: &Limits) -> Result<(), WireError> {
    T::from_bytes(body, limits).map(drop)
}

/// The 400 the node must give `body`, after checking that the codec classifies it as one of
/// `class` (the kind of damage the case did).
pub fn codec_refusal(
    name: &str,
    decode: Decoder,
    limits: &Limits,
    body: &[u8],
    class: &[&str],
) -> Expect {
    let error = match decode(body, limits) {
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

/// RFC 9420 §2.1.2 variable-length prefix at `at`: (value, width). Only used on valid bodies.
pub fn read_varint(bytes: &[u8], at: usize) -> (usize, usize) {
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
pub fn varint(value: usize, width: usize) -> Vec<u8> {
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

pub fn minimal_width(value: usize) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        _ => 4,
    }
}

pub fn replace_prefix(body: &[u8], at: usize, prefix: &[u8]) -> Vec<u8> {
    let (_, width) = read_varint(body, at);
    [&body[..at], prefix, &body[at + width..]].concat()
}

/// The offsets of the length prefixes our codec reads in `body` (not those inside openmls
/// structures, which tls_codec checks itself): the offsets where setting the reserved 0b11 bits
/// gives `reserved_length_prefix` and the same value in a wider form `non_minimal_length`.
/// Bytes before the offset are untouched, so the reader reaches it in the same state; only a
/// prefix read there can answer both ways.
pub fn prefix_offsets(body: &[u8], decode: Decoder, limits: &Limits) -> Vec<usize> {
    (0..body.len())
        .filter(|&at| {
            if body[at] >> 6 == 3 {
                return false;
            }
            let (_, width) = read_varint_lenient(body, at);
            if at + width > body.len() || width == 4 {
                return false;
            }
            let mut reserved = body.to_vec();
            reserved[at] |= 0xc0;
            let code = |bytes: &[u8]| decode(bytes, limits).err().map(|e| e.code());
            if code(&reserved) != Some("reserved_length_prefix") {
                return false;
            }
            let (value, _) = read_varint(body, at);
            let wider = replace_prefix(body, at, &varint(value, width * 2));
            code(&wider) == Some("non_minimal_length")
        })
        .collect()
}

/// [`read_varint`] that only reads the first byte's width (for scanning arbitrary offsets).
fn read_varint_lenient(bytes: &[u8], at: usize) -> (usize, usize) {
    (0, 1usize << (bytes[at] >> 6))
}

/// A valid body and how to damage it.
pub struct WireBase {
    /// The operation, for case names ("register", "s2s update", ...).
    pub op: String,
    pub body: Vec<u8>,
    pub decode: Decoder,
    pub limits: Limits,
    /// How many length prefixes our codec reads in `body` (asserted, so a changed structure is
    /// noticed and the mutations below keep covering every prefix).
    pub prefixes: usize,
    /// About how many cut points: every `len / cuts`-th offset, plus the first and last.
    pub cuts: usize,
    /// What a cut body is ([`CUT`] for every structure of a fixed shape; an empty batch is
    /// refused as such).
    pub cut: &'static [&'static str],
    /// What one extra byte after the body is: `trailing_bytes` for every structure that knows
    /// its end; a batch read until the input ends sees the start of another element instead.
    pub trailing: &'static [&'static str],
}

/// What a cut body may be classified as (see the module documentation).
pub const CUT: &[&str] = &["truncated", "length_beyond_input", "bad_mls_structure"];
/// What one byte after the end is, for a structure that knows its end.
pub const TRAILING: &[&str] = &["trailing_bytes"];

/// The wire-level damage of MIMI.md §3.3 to `base.body`: cuts at every k-th offset, a trailing
/// zero byte and sixteen trailing 0xff bytes, and at every length prefix our codec reads a
/// non-minimal form (each wider width), the reserved 0b11 form, a length over the body limit
/// and one beyond the input. Each comes with the exact 400 the node must give it.
pub fn wire_mutations(base: &WireBase) -> Vec<(String, Vec<u8>, Expect)> {
    let body = &base.body;
    let len = body.len();
    assert!(
        base.decode(body),
        "{}: the base body must decode (it is the valid request the cases damage)",
        base.op
    );
    let step = (len / base.cuts.max(1)).max(1);
    let mut cuts: Vec<usize> = (0..len).step_by(step).collect();
    cuts.push(len - 1);
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(String, Vec<u8>, &[&str])> = cuts
        .into_iter()
        .map(|cut| {
            (
                format!("cut to {cut} of {len} bytes"),
                body[..cut].to_vec(),
                base.cut,
            )
        })
        .collect();
    out.push((
        "one trailing zero byte".into(),
        [&body[..], &[0]].concat(),
        base.trailing,
    ));
    out.push((
        "sixteen trailing 0xff bytes".into(),
        [&body[..], &[0xff; 16]].concat(),
        base.trailing,
    ));
    let prefixes = prefix_offsets(body, base.decode, &base.limits);
    assert_eq!(
        prefixes.len(),
        base.prefixes,
        "{}: the length prefixes our codec reads are at {prefixes:?}",
        base.op
    );
    for at in prefixes {
        let (value, width) = read_varint(body, at);
        let remaining = len - at - width;
        for wider in [2, 4].into_iter().filter(|w| *w > width) {
            out.push((
                format!("length prefix at {at} ({value}) in {wider} bytes, not minimal"),
                replace_prefix(body, at, &varint(value, wider)),
                &["non_minimal_length"],
            ));
        }
        let mut reserved = body.clone();
        reserved[at] |= 0xc0;
        out.push((
            format!("length prefix at {at} in the reserved 0b11 form"),
            reserved,
            &["reserved_length_prefix"],
        ));
        let over = base.limits.max_body_len + 1;
        out.push((
            format!("length prefix at {at} over the body limit ({over})"),
            replace_prefix(body, at, &varint(over, minimal_width(over))),
            &["length_over_limit"],
        ));
        let beyond = remaining + 1;
        out.push((
            format!("length prefix at {at} one beyond the input ({beyond})"),
            replace_prefix(body, at, &varint(beyond, minimal_width(beyond))),
            &["length_beyond_input"],
        ));
    }
    out.into_iter()
        .map(|(what, bytes, class)| {
            let name = format!("{}: {what}", base.op);
            let expect = codec_refusal(&name, base.decode, &base.limits, &bytes, class);
            (name, bytes, expect)
        })
        .collect()
}

impl WireBase {
    fn decode(&self, body: &[u8]) -> bool {
        (self.decode)(body, &self.limits).is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// MLS byte surgery.

/// Offset of `epoch` in an MLSMessage carrying a PublicMessage or PrivateMessage: after
/// `version` (uint16), `wire_format` (uint16) and `group_id<V>` (RFC 9420 §6, §6.2, §6.3).
pub fn epoch_offset(message: &[u8]) -> usize {
    let (group_id_len, width) = read_varint(message, 4);
    4 + width + group_id_len
}

pub fn epoch_of(message: &[u8]) -> u64 {
    let at = epoch_offset(message);
    u64::from_be_bytes(message[at..at + 8].try_into().expect("8 bytes"))
}

/// `message` (or a body that starts with it) claiming another epoch. The signature no longer
/// verifies, but the hub decides on the epoch and the sender before it verifies anything
/// (MIMI.md §7.3 steps 1-2).
pub fn with_epoch(message: &[u8], epoch: u64) -> Vec<u8> {
    let at = epoch_offset(message);
    let mut out = message.to_vec();
    out[at..at + 8].copy_from_slice(&epoch.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Hostile URIs (MIMI.md §2).

/// The kind of `mimi:` URI a field or path parameter expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriKind {
    User,
    Room,
    Client,
}

/// One hostile value for a URI field, and the class of refusal the node's parser must give.
pub struct HostileUri {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Which `UriError` a table entry is meant to provoke.
fn same_class(error: &UriError, expected: &UriError) -> bool {
    std::mem::discriminant(error) == std::mem::discriminant(expected)
}

/// The URI parser the fields of `kind` go through (the node's own).
pub fn parse_uri(kind: UriKind, bytes: &[u8]) -> Result<(), UriError> {
    use mimid_actors::ids::{ClientId, RoomId, UserId};
    match kind {
        UriKind::User => UserId::from_bytes(bytes).map(drop),
        UriKind::Room => RoomId::from_bytes(bytes).map(drop),
        UriKind::Client => ClientId::from_bytes(bytes).map(drop),
    }
}

/// Hostile values for a URI field of `kind` whose valid values live at `domain` (MIMI.md §2):
/// bad UTF-8 in four ways, over-long, wrong or missing scheme, bad authorities (port, userinfo,
/// empty, underscores, hyphens, empty and over-long labels, non-ASCII), query and fragment,
/// unknown, empty, over-long and extra path segments, forbidden characters, and URIs of the
/// wrong kind. Every entry is checked to be refused by the node's parser for the intended
/// reason.
pub fn hostile_uris(domain: &str, kind: UriKind) -> Vec<HostileUri> {
    let (segment, good): (&str, String) = match kind {
        UriKind::User => ("u", format!("mimi://{domain}/u/eve")),
        UriKind::Room => ("r", format!("mimi://{domain}/r/den")),
        UriKind::Client => ("d", format!("mimi://{domain}/d/eve/phone")),
    };
    let tail = match kind {
        UriKind::Client => "eve/phone",
        _ => "eve",
    };
    let wrong = UriError::WrongKind {
        expected: "",
        found: "",
    };
    let mut table: Vec<(&str, Vec<u8>, UriError)> = vec![
        (
            "not UTF-8",
            format!("mimi://{domain}/{segment}/").into_bytes(),
            UriError::NotUtf8,
        ),
        (
            "a lone continuation byte",
            format!("mimi://{domain}/{segment}/").into_bytes(),
            UriError::NotUtf8,
        ),
        (
            "an overlong UTF-8 '/'",
            format!("mimi://{domain}").into_bytes(),
            UriError::NotUtf8,
        ),
        (
            "a UTF-16 surrogate in UTF-8",
            format!("mimi://{domain}/{segment}/e").into_bytes(),
            UriError::NotUtf8,
        ),
        (
            "1025 bytes",
            format!("mimi://{domain}/{segment}/").into_bytes(),
            UriError::TooLong,
        ),
        (
            "an https scheme",
            format!("https://{domain}/{segment}/{tail}").into_bytes(),
            UriError::Scheme,
        ),
        (
            "no scheme",
            format!("{domain}/{segment}/{tail}").into_bytes(),
            UriError::Scheme,
        ),
        ("empty", Vec::new(), UriError::Scheme),
        (
            "mimi: without //",
            format!("mimi:{domain}/{segment}/{tail}").into_bytes(),
            UriError::Scheme,
        ),
        (
            "a port",
            format!("mimi://{domain}:443/{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "userinfo",
            format!("mimi://eve@{domain}/{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "an empty authority",
            format!("mimi:///{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "an underscore in the host",
            format!("mimi://bad_host.{domain}/{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "a label starting with a hyphen",
            format!("mimi://-x.{domain}/{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "an empty label",
            format!("mimi://x..{domain}/{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "a 64-byte label",
            format!("mimi://{}.{domain}/{segment}/{tail}", "x".repeat(64)).into_bytes(),
            UriError::Authority,
        ),
        (
            "a non-ASCII host",
            format!("mimi://exämple.{domain}/{segment}/{tail}").into_bytes(),
            UriError::Authority,
        ),
        (
            "a query",
            format!("mimi://{domain}/{segment}/{tail}?admin=1").into_bytes(),
            UriError::QueryOrFragment,
        ),
        (
            "a fragment",
            format!("mimi://{domain}/{segment}/{tail}#top").into_bytes(),
            UriError::QueryOrFragment,
        ),
        (
            "an unknown path form",
            format!("mimi://{domain}/x/{tail}").into_bytes(),
            UriError::Path,
        ),
        (
            "an empty last segment",
            format!("mimi://{domain}/{segment}/").into_bytes(),
            UriError::Path,
        ),
        (
            "a space in a segment",
            format!("mimi://{domain}/{segment}/e ve").into_bytes(),
            UriError::Path,
        ),
        (
            "a NUL byte in a segment",
            format!("mimi://{domain}/{segment}/eve\0").into_bytes(),
            UriError::Path,
        ),
        (
            "a 256-byte segment",
            format!("mimi://{domain}/{segment}/{}", "e".repeat(256)).into_bytes(),
            UriError::Path,
        ),
        (
            "an extra segment",
            format!("mimi://{domain}/{segment}/{tail}/extra").into_bytes(),
            UriError::Path,
        ),
    ];
    // The byte-level damage the first entries describe.
    table[0].1.extend_from_slice(b"\xff\xfe");
    table[1].1.extend_from_slice(b"\x80");
    table[2].1.extend_from_slice(b"\xc0\xafu/eve");
    table[3].1.extend_from_slice(b"\xed\xa0\x80");
    let long = 1025 - table[4].1.len();
    table[4].1.extend(std::iter::repeat_n(b'e', long));
    let others: &[(&str, String)] = match kind {
        UriKind::User => &[
            ("a room URI", format!("mimi://{domain}/r/den")),
            ("a client URI", format!("mimi://{domain}/d/eve/phone")),
            ("a provider URI", format!("mimi://{domain}")),
            ("a pseudonym URI", format!("mimi://{domain}/p/eve")),
        ],
        UriKind::Room => &[
            ("a user URI", format!("mimi://{domain}/u/eve")),
            ("a client URI", format!("mimi://{domain}/d/eve/phone")),
            ("a provider URI", format!("mimi://{domain}")),
            ("a group URI", format!("mimi://{domain}/g/den")),
        ],
        UriKind::Client => &[
            ("a user URI", format!("mimi://{domain}/u/eve")),
            ("a room URI", format!("mimi://{domain}/r/den")),
            ("a provider URI", format!("mimi://{domain}")),
            ("a team URI", format!("mimi://{domain}/t/eve")),
        ],
    };
    for (name, uri) in others {
        table.push((name, uri.clone().into_bytes(), wrong.clone()));
    }
    if kind == UriKind::Client {
        table.push((
            "a device URI without the client segment",
            format!("mimi://{domain}/d/eve").into_bytes(),
            UriError::Path,
        ));
    }
    assert!(parse_uri(kind, good.as_bytes()).is_ok(), "{good}");
    table
        .into_iter()
        .map(|(name, bytes, class)| {
            let error = parse_uri(kind, &bytes)
                .expect_err(&format!("{kind:?} {name}: {:?} parses", text(&bytes)));
            assert!(
                same_class(&error, &class),
                "{kind:?} {name}: refused as {error:?}, meant as {class:?}"
            );
            HostileUri {
                name: format!("{} {name}", uri_kind_name(kind)),
                bytes,
            }
        })
        .collect()
}

fn uri_kind_name(kind: UriKind) -> &'static str {
    match kind {
        UriKind::User => "user URI with",
        UriKind::Room => "room URI with",
        UriKind::Client => "client URI with",
    }
}

/// `bytes` percent-encoded as a path parameter (RFC 6570 simple expansion: everything but
/// unreserved characters), bytes that are not UTF-8 included.
pub fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(*byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The node's reading of a `mimi:` URI as any kind (for messages that name the parse error).
pub fn any_uri_error(bytes: &[u8]) -> Option<UriError> {
    MimiUri::from_bytes(bytes).err()
}

// ---------------------------------------------------------------------------------------------
// Counting.

/// How many cases each endpoint got in one test function, checked against its documented
/// share at the end (so that deleting cases is noticed).
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<String, usize>,
}

impl Tally {
    pub fn count(&mut self, endpoint: &str) {
        *self.counts.entry(endpoint.to_owned()).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Asserts every endpoint of `shares` got at least its share, that no endpoint is missing
    /// from `shares`, and that the total is at least `total`; prints the counts.
    pub fn assert_shares(&self, test: &str, shares: &[(&str, usize)], total: usize) {
        eprintln!("{test}: {} cases {:?}", self.total(), self.counts);
        for (endpoint, share) in shares {
            let got = self.counts.get(*endpoint).copied().unwrap_or(0);
            assert!(
                got >= *share,
                "{test}: {endpoint} ran {got} cases, fewer than its documented {share}"
            );
        }
        for endpoint in self.counts.keys() {
            assert!(
                shares.iter().any(|(named, _)| named == endpoint),
                "{test}: {endpoint} is not in the documented breakdown"
            );
        }
        assert!(
            self.total() >= total,
            "{test}: {} cases, fewer than the documented {total}",
            self.total()
        );
    }
}
