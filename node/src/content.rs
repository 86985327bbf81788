//! MIMI content format (draft-ietf-mimi-content-08; MIMI.md §10): the CBOR body of an MLS
//! application message, as Rust types with a deterministic encoder and a strict decoder, and
//! the -08 message ID derivation.
//!
//! The hub never sees content (it is end-to-end encrypted); this module serves test clients,
//! bots, and abuse-report validation (protocol-06 §5.9 re-derives the franking tag from the
//! content bytes, so those bytes must be reproduced exactly).
//!
//! Invariants:
//! * encoding is RFC 8949 §4.2.1 deterministic: shortest heads, definite lengths, map keys in
//!   bytewise order of their encodings, shortest exact floats, NaN only as `0xf97e00`;
//! * decoding accepts exactly the encodings the encoder produces: every deviation is a specific
//!   [`ContentError`], and as a final guard the decoded value is re-encoded and compared;
//! * content-08 §6.2/§6.3 limits hold in both directions: integers within ±(2^53−1),
//!   NestedPart depth ≤ 4, extension container depth ≤ 4, at most 1024 parts, topicId at most
//!   4096 bytes, UTF-8 text, map keys of the allowed types;
//! * nothing is allocated from a claimed length before the bytes are there.
//!
//! No randomness inside: the caller supplies the 16-byte salt (content-08 §9.2 suggests
//! `HMAC-SHA256(exported salt_base_secret, nonce)[0..15]`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Bytes of the per-message salt.
pub const SALT_LEN: usize = 16;
/// Bytes of a message ID.
pub const MESSAGE_ID_LEN: usize = 32;
/// content-08 §3.3: hash algorithm ID of SHA-256 (IANA Named Information registry).
pub const HASH_ALG_SHA256: u8 = 0x01;
/// content-08 §6.3.
pub const MAX_PART_DEPTH: usize = 4;
/// content-08 §6.3: the extensions map is level 1.
pub const MAX_EXTENSION_DEPTH: usize = 4;
/// MIMI.md §10: more parts than this is suspicious and dropped.
pub const MAX_PARTS: usize = 1024;
/// MIMI.md §10: a longer topicId is suspicious and dropped.
pub const MAX_TOPIC_ID_LEN: usize = 4096;
/// content-08 §6.2: integers must be exact as IEEE doubles.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;
/// content-08 §4.3: longest text extension key.
pub const MAX_TEXT_KEY_LEN: usize = 255;
/// The media type every receiver supports (content-08 §7.1).
pub const TEXT_PLAIN_UTF8: &str = "text/plain;charset=utf-8";

/// Why content could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentError {
    #[error("input ends early at offset {offset}")]
    Truncated { offset: usize },
    #[error("{count} trailing bytes after the content")]
    TrailingBytes { count: usize },
    #[error("offset {offset}: integer, length or tag not in its shortest form (RFC 8949 §4.2.1)")]
    NonShortestHead { offset: usize },
    #[error("offset {offset}: indefinite length (RFC 8949 §4.2.1 requires definite lengths)")]
    IndefiniteLength { offset: usize },
    #[error("offset {offset}: reserved or malformed initial byte")]
    Malformed { offset: usize },
    #[error("offset {offset}: float not in its shortest exact width (RFC 8949 §4.2.1)")]
    NonShortestFloat { offset: usize },
    #[error("offset {offset}: NaN other than the half-width quiet NaN 0xf97e00 (content-08 §6.2)")]
    ForbiddenNaN { offset: usize },
    #[error("offset {offset}: simple value {value} is reserved or has a dedicated form")]
    InvalidSimpleValue { offset: usize, value: u8 },
    #[error("offset {offset}: text is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("offset {offset}: map keys are not in bytewise order of their encodings")]
    UnsortedMapKeys { offset: usize },
    #[error("offset {offset}: duplicate map key")]
    DuplicateMapKey { offset: usize },
    #[error("map key is not an integer, text string or byte string (content-08 §6.2)")]
    InvalidMapKey,
    #[error(
        "extension key is not an integer or a text string of 1 to 255 bytes (content-08 §4.3)"
    )]
    InvalidExtensionKey,
    #[error("integer outside ±(2^53-1) (content-08 §6.2)")]
    IntegerOutOfRange,
    #[error(
        "extension value nests maps, arrays or tags more than 4 levels deep (content-08 §6.3)"
    )]
    ExtensionTooDeep,
    #[error("NestedPart nested more than 4 levels deep (content-08 §6.3)")]
    PartTooDeep,
    #[error("more than {MAX_PARTS} parts")]
    TooManyParts,
    #[error("MultiPart with fewer than 2 parts (content-08 §4.4)")]
    MultiPartTooFew,
    #[error("unknown cardinality {0}")]
    UnknownCardinality(u64),
    #[error("unknown partSemantics {0}")]
    UnknownPartSemantics(u64),
    #[error("topicId of {0} bytes exceeds {MAX_TOPIC_ID_LEN}")]
    TopicIdTooLong(usize),
    #[error("message ID uses unknown hash algorithm {0:#04x}")]
    UnknownHashAlgorithm(u8),
    #[error("{field}: expected {expected}")]
    Schema {
        field: &'static str,
        expected: &'static str,
    },
    #[error("{field} is longer than 65535 bytes")]
    UriTooLong { field: &'static str },
    #[error("valid CBOR, but not the deterministic encoding")]
    NonDeterministic,
}

/// A 32-byte message ID (content-08 §3.3): hash algorithm ID, then 31 bytes of the hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// content-08 §3.3 (the -08 form, with length prefixes):
    /// `0x01 || SHA-256(u16be(len sender) || sender || u16be(len room) || room || content ||
    /// salt)[0..31]`, where `content` is the deterministic encoding of the whole message.
    pub fn derive(
        sender_uri: &str,
        room_uri: &str,
        encoded_content: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Result<MessageId, ContentError> {
        let sender_len = u16::try_from(sender_uri.len())
            .map_err(|_| ContentError::UriTooLong { field: "senderUri" })?;
        let room_len = u16::try_from(room_uri.len())
            .map_err(|_| ContentError::UriTooLong { field: "roomUri" })?;
        let mut hash = Sha256::new();
        hash.update(sender_len.to_be_bytes());
        hash.update(sender_uri.as_bytes());
        hash.update(room_len.to_be_bytes());
        hash.update(room_uri.as_bytes());
        hash.update(encoded_content);
        hash.update(salt);
        let digest = hash.finalize();
        let mut id = [0u8; MESSAGE_ID_LEN];
        id[0] = HASH_ALG_SHA256;
        id[1..].copy_from_slice(&digest[..MESSAGE_ID_LEN - 1]);
        Ok(MessageId(id))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", hex::encode(self.0))
    }
}

/// `Expiration = [relative: bool, time: uint .size 4]`: seconds after reading (relative) or
/// seconds since the UNIX epoch (absolute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiration {
    pub relative: bool,
    pub time: u32,
}

/// A disposition (content-08 §4.4, §8.2.2). Values 9..=255 are unknown ones, which a receiver
/// treats as `render`; they are carried unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Disposition(pub u8);

impl Disposition {
    pub const UNSPECIFIED: Disposition = Disposition(0);
    pub const RENDER: Disposition = Disposition(1);
    pub const REACTION: Disposition = Disposition(2);
    pub const PROFILE: Disposition = Disposition(3);
    pub const INLINE: Disposition = Disposition(4);
    pub const ICON: Disposition = Disposition(5);
    pub const ATTACHMENT: Disposition = Disposition(6);
    pub const SESSION: Disposition = Disposition(7);
    pub const PREVIEW: Disposition = Disposition(8);
}

/// `partSemantics` of a MultiPart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartSemantics {
    /// The receiver picks exactly one part.
    ChooseOne = 0,
    /// All parts form one unit.
    SingleUnit = 1,
    /// Each part is processed on its own.
    ProcessAll = 2,
}

/// `ExternalPart` (content-08 §4.5): content fetched from a URL, usually AEAD-encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPart {
    pub content_type: String,
    pub url: String,
    /// Seconds since the UNIX epoch, 0 = does not expire.
    pub expires: u32,
    /// Bytes, 0 = unknown.
    pub size: u64,
    /// IANA AEAD algorithm, 0 = not encrypted.
    pub enc_alg: u16,
    pub key: Vec<u8>,
    pub nonce: Vec<u8>,
    pub aad: Vec<u8>,
    /// IANA Named Information hash algorithm, 0 = none.
    pub hash_alg: u8,
    pub content_hash: Vec<u8>,
    pub description: String,
    pub filename: String,
}

/// The cardinality-dependent part of a `NestedPart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// No content (deletes, unlikes).
    Null,
    Single {
        content_type: String,
        content: Vec<u8>,
    },
    External(ExternalPart),
    /// At least two nested parts.
    Multi {
        semantics: PartSemantics,
        parts: Vec<NestedPart>,
    },
}

/// `NestedPart = [disposition, language, (NullPart // SinglePart // ExternalPart // MultiPart)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedPart {
    pub disposition: Disposition,
    /// Empty, or a comma-separated list of RFC 5646 language tags.
    pub language: String,
    pub part: Part,
}

/// A half, single or double precision float, held as the bits of an `f64`. Any NaN is held
/// as the one NaN content-08 §6.2 permits (encoded `0xf97e00`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Float(u64);

impl Float {
    const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

    pub fn new(value: f64) -> Float {
        if value.is_nan() {
            Float(Float::CANONICAL_NAN)
        } else {
            Float(value.to_bits())
        }
    }

    pub fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value())
    }
}

/// A CBOR data item inside an extension value (content-08 §4.3: any CBOR within the §6
/// restrictions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Within ±(2^53−1).
    Integer(i64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    /// Keys are integers, text or byte strings; the encoder sorts them.
    Map(Vec<(Value, Value)>),
    /// Bignum tags 2 and 3 are not allowed (the integer range excludes them).
    Tag(u64, Box<Value>),
    Bool(bool),
    Null,
    Undefined,
    /// Simple values 0..=19 and 32..=255.
    Simple(u8),
    Float(Float),
}

/// An extension map key (content-08 §4.3): an integer, or a text string of 1 to 255 bytes.
/// Ordered like the deterministic encoding orders map keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtensionKey {
    Int(i64),
    Text(String),
}

impl ExtensionKey {
    /// `senderUri` (content-08 §8.2.1).
    pub const SENDER_URI: ExtensionKey = ExtensionKey::Int(1);
    /// `roomUri`.
    pub const ROOM_URI: ExtensionKey = ExtensionKey::Int(2);

    fn encoded(&self) -> Vec<u8> {
        cbor::encode_extension_key(self)
    }

    fn validate(&self) -> Result<(), ContentError> {
        match self {
            ExtensionKey::Int(value) if value.unsigned_abs() <= MAX_SAFE_INTEGER as u64 => Ok(()),
            ExtensionKey::Text(text) if (1..=MAX_TEXT_KEY_LEN).contains(&text.len()) => Ok(()),
            _ => Err(ContentError::InvalidExtensionKey),
        }
    }
}

impl Ord for ExtensionKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.encoded().cmp(&other.encoded())
    }
}

impl PartialOrd for ExtensionKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `mimiExtensions` map, kept in deterministic key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    entries: BTreeMap<ExtensionKey, Value>,
}

impl Extensions {
    pub fn new() -> Self {
        Extensions::default()
    }

    /// Extension 1, the sender's user URI (used for franking, MIMI.md §5.3.1).
    pub fn sender_uri(&self) -> Option<&str> {
        self.text(&ExtensionKey::SENDER_URI)
    }

    /// Extension 2, the room URI.
    pub fn room_uri(&self) -> Option<&str> {
        self.text(&ExtensionKey::ROOM_URI)
    }

    pub fn set_sender_uri(&mut self, uri: &str) {
        self.entries
            .insert(ExtensionKey::SENDER_URI, Value::Text(uri.to_owned()));
    }

    pub fn set_room_uri(&mut self, uri: &str) {
        self.entries
            .insert(ExtensionKey::ROOM_URI, Value::Text(uri.to_owned()));
    }

    /// Adds or replaces an extension; limits are checked when encoding.
    pub fn insert(&mut self, key: ExtensionKey, value: Value) -> Option<Value> {
        self.entries.insert(key, value)
    }

    pub fn get(&self, key: &ExtensionKey) -> Option<&Value> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ExtensionKey, &Value)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn text(&self, key: &ExtensionKey) -> Option<&str> {
        match self.entries.get(key) {
            Some(Value::Text(text)) => Some(text),
            _ => None,
        }
    }
}

/// `mimiContent` (content-08 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimiContent {
    pub salt: [u8; SALT_LEN],
    /// The ID of the *first* version of the message this one edits or deletes.
    pub replaces: Option<MessageId>,
    /// Empty = no topic.
    pub topic_id: Vec<u8>,
    pub expires: Option<Expiration>,
    pub in_reply_to: Option<MessageId>,
    pub extensions: Extensions,
    pub body: NestedPart,
}

impl MimiContent {
    /// A plain text message: one `text/plain;charset=utf-8` part with `render` disposition.
    pub fn plain_text(salt: [u8; SALT_LEN], text: &str) -> MimiContent {
        MimiContent {
            salt,
            replaces: None,
            topic_id: Vec::new(),
            expires: None,
            in_reply_to: None,
            extensions: Extensions::new(),
            body: NestedPart {
                disposition: Disposition::RENDER,
                language: String::new(),
                part: Part::Single {
                    content_type: TEXT_PLAIN_UTF8.to_owned(),
                    content: text.as_bytes().to_vec(),
                },
            },
        }
    }

    /// The text of a message whose body is a single `text/plain` part in UTF-8.
    pub fn text(&self) -> Option<&str> {
        match &self.body.part {
            Part::Single {
                content_type,
                content,
            } if content_type.starts_with("text/plain") => std::str::from_utf8(content).ok(),
            _ => None,
        }
    }

    /// Sets extensions 1 and 2, which franking requires (protocol-06 §5.4.1).
    pub fn with_sender_and_room(mut self, sender_uri: &str, room_uri: &str) -> MimiContent {
        self.extensions.set_sender_uri(sender_uri);
        self.extensions.set_room_uri(room_uri);
        self
    }

    /// The deterministic CBOR encoding (media type `application/mimi-content`).
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        cbor::encode_content(self)
    }

    /// Decodes deterministic CBOR, rejecting anything the encoder would not have produced.
    pub fn decode(bytes: &[u8]) -> Result<MimiContent, ContentError> {
        let content = cbor::decode_content(bytes)?;
        if content.encode()? != bytes {
            return Err(ContentError::NonDeterministic);
        }
        Ok(content)
    }

    /// This message's ID as sent by `sender_uri` in `room_uri` (content-08 §3.3).
    pub fn message_id(&self, sender_uri: &str, room_uri: &str) -> Result<MessageId, ContentError> {
        MessageId::derive(sender_uri, room_uri, &self.encode()?, &self.salt)
    }
}

fn uri_extension_schema() -> ContentError {
    ContentError::Schema {
        field: "mimiExtensions",
        expected: "a text string for senderUri (1) and roomUri (2)",
    }
}

fn nested_part_schema() -> ContentError {
    ContentError::Schema {
        field: "NestedPart",
        expected: "3 (null), 5 (single, multi) or 15 (external) elements",
    }
}

mod cbor;

#[cfg(test)]
mod tests;
