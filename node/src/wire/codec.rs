//! The MLS flavour of the TLS presentation language (RFC 9420 §2.1), as protocol-06 uses it for
//! every MIMI body (MIMI.md §3.3).
//!
//! Why our own reader and writer rather than `tls_codec` derives for the MIMI structs: the edge
//! must turn every malformed body into a *specific* 400 reason, decoding must never allocate a
//! claimed length before the bytes are there, and several MIMI `select`s branch on fields
//! inside an embedded `MLSMessage` (protocol-06 §5.2, §5.4), which derives cannot express.
//! Embedded MLS structures (KeyPackage, GroupInfo, Credential, ...) are still decoded by
//! openmls through `tls_codec` (`Mls<T>`, `MlsMessage`), and their raw bytes are kept so that
//! the hub stores and forwards them byte-exact.
//!
//! Invariants the reader keeps:
//! * vector lengths use the RFC 9420 §2.1.2 variable-length prefix (1, 2 or 4 bytes), and a
//!   prefix that is longer than necessary, or uses the reserved `0b11` form, is rejected;
//! * a length is checked against the configured body limit and against the bytes that are
//!   actually left *before* anything is sliced or allocated;
//! * `optional<T>` presence flags and booleans are exactly 0 or 1, enum values are known;
//! * [`Decode::from_bytes`] rejects trailing bytes.
//!
//! `tls_codec` 0.5 with the `mls` feature (enabled in the workspace) also rejects non-minimal
//! and over-30-bit lengths inside the openmls structures, so the whole body is held to the same
//! rule.

use std::fmt;

use mimid_actors::ids::UriError;
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{ContentType, KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, Welcome};
use thiserror::Error;

/// Largest length an MLS variable-length prefix can express (RFC 9420 §2.1.2: 30 bits).
pub const MAX_VECTOR_LEN: usize = (1 << 30) - 1;

/// Default upper bound on a decoded body. Large enough for a Welcome item carrying the ratchet
/// tree of a ~10 000-member room (≈179 bytes per member, research/floors.md §1).
pub const DEFAULT_MAX_BODY_LEN: usize = 4 * 1024 * 1024;

/// Bounds applied while decoding untrusted bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest body accepted, and therefore the longest length prefix that can be honoured.
    pub max_body_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_len: DEFAULT_MAX_BODY_LEN,
        }
    }
}

/// Why a body could not be decoded or encoded. `field` names the protocol-06 field (as
/// `Struct.field`) where the problem was found, so the edge can answer with a precise 400
/// reason; [`WireError::code`] gives a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { len: usize, max: usize },
    #[error("{field}: input ends early")]
    Truncated { field: &'static str },
    #[error("{field}: length {len} exceeds the {remaining} bytes left")]
    LengthBeyondInput {
        field: &'static str,
        len: u64,
        remaining: usize,
    },
    #[error("{field}: length {len} exceeds the limit of {max} bytes")]
    LengthOverLimit {
        field: &'static str,
        len: u64,
        max: usize,
    },
    #[error("{field}: length prefix is not minimally encoded (RFC 9420 §2.1.2)")]
    NonMinimalLength { field: &'static str },
    #[error("{field}: length prefix uses the reserved 0b11 form (RFC 9420 §2.1.2)")]
    ReservedLengthPrefix { field: &'static str },
    #[error("{count} trailing bytes after the end of the structure")]
    TrailingBytes { count: usize },
    #[error("{field}: {value} is not a defined value")]
    BadEnum { field: &'static str, value: u8 },
    #[error("{field}: optional presence flag {value} is neither 0 nor 1")]
    BadOptional { field: &'static str, value: u8 },
    #[error("{field}: boolean {value} is neither 0 nor 1")]
    BadBool { field: &'static str, value: u8 },
    #[error("{field}: text is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("{field}: invalid MLS structure: {reason}")]
    Mls { field: &'static str, reason: String },
    #[error("{field}: expected {expected}, found {found}")]
    UnexpectedMessage {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{field}: {len} bytes cannot be encoded (the maximum is 2^30-1)")]
    EncodeTooLong { field: &'static str, len: usize },
    #[error("{field}: {source}")]
    Uri {
        field: &'static str,
        #[source]
        source: UriError,
    },
    #[error("{what} is not supported: {reason}")]
    Unsupported {
        what: &'static str,
        reason: &'static str,
    },
}

impl WireError {
    /// A stable, machine-readable code for the kind of error (for HTTP 400 bodies and metrics
    /// labels); the `Display` text adds the field and values.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::BodyTooLarge { .. } => "body_too_large",
            WireError::Truncated { .. } => "truncated",
            WireError::LengthBeyondInput { .. } => "length_beyond_input",
            WireError::LengthOverLimit { .. } => "length_over_limit",
            WireError::NonMinimalLength { .. } => "non_minimal_length",
            WireError::ReservedLengthPrefix { .. } => "reserved_length_prefix",
            WireError::TrailingBytes { .. } => "trailing_bytes",
            WireError::BadEnum { .. } => "bad_enum",
            WireError::BadOptional { .. } => "bad_optional",
            WireError::BadBool { .. } => "bad_bool",
            WireError::BadUtf8 { .. } => "bad_utf8",
            WireError::Mls { .. } => "bad_mls_structure",
            WireError::UnexpectedMessage { .. } => "unexpected_mls_message",
            WireError::Invalid { .. } => "invalid_value",
            WireError::EncodeTooLong { .. } => "encode_too_long",
            WireError::Uri { .. } => "bad_uri",
            WireError::Unsupported { .. } => "unsupported",
        }
    }

    /// Wraps a URI validation error with the field it came from.
    pub fn uri(field: &'static str) -> impl FnOnce(UriError) -> WireError {
        move |source| WireError::Uri { field, source }
    }

    fn from_tls(field: &'static str, error: tls_codec::Error) -> WireError {
        match error {
            tls_codec::Error::EndOfStream => WireError::Truncated { field },
            other => WireError::Mls {
                field,
                reason: other.to_string(),
            },
        }
    }
}

/// A MIMI structure that can be written in TLS presentation language.
pub trait Encode {
    /// Appends the encoding of `self`. Fails only if a vector is longer than 2^30-1 bytes or
    /// the value breaks a protocol-06 constraint that decoding would reject.
    fn encode(&self, w: &mut Writer) -> Result<(), WireError>;

    /// The encoding of `self` as a new buffer.
    fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::new();
        self.encode(&mut w)?;
        Ok(w.into_bytes())
    }
}

/// A MIMI structure that can be read from TLS presentation language.
pub trait Decode: Sized {
    /// Reads one value from the front of `r`.
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError>;

    /// Decodes a whole body: rejects bodies over `limits.max_body_len` and trailing bytes.
    fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes, limits)?;
        let value = Self::decode(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

/// A cursor over an untrusted body. Every read checks the bytes are there first.
pub struct Reader<'a> {
    rest: &'a [u8],
    max_len: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`, refusing bodies longer than the limit.
    pub fn new(bytes: &'a [u8], limits: &Limits) -> Result<Self, WireError> {
        if bytes.len() > limits.max_body_len {
            return Err(WireError::BodyTooLarge {
                len: bytes.len(),
                max: limits.max_body_len,
            });
        }
        Ok(Reader {
            rest: bytes,
            max_len: limits.max_body_len,
        })
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Succeeds only if everything was read.
    pub fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                count: self.rest.len(),
            })
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.fixed::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.fixed(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.fixed(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.fixed(field)?))
    }

    /// A `uint8` boolean (MIMI.md §9.3 `enum { false(0), true(1) } bool`).
    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::BadBool { field, value }),
        }
    }

    /// An RFC 9420 §2.1.2 vector length prefix, minimal form enforced.
    fn varint(&mut self, field: &'static str) -> Result<u64, WireError> {
        let first = self.u8(field)?;
        let (value, width) = match first >> 6 {
            0 => (u64::from(first & 0x3f), 1),
            1 => {
                let next = self.u8(field)?;
                (u64::from(first & 0x3f) << 8 | u64::from(next), 2)
            }
            2 => {
                let rest: [u8; 3] = self.fixed(field)?;
                let value = u64::from(first & 0x3f) << 24
                    | u64::from(rest[0]) << 16
                    | u64::from(rest[1]) << 8
                    | u64::from(rest[2]);
                (value, 4)
            }
            _ => return Err(WireError::ReservedLengthPrefix { field }),
        };
        if varint_width(value) != width {
            return Err(WireError::NonMinimalLength { field });
        }
        Ok(value)
    }

    /// Reads a vector length and checks it against the limit and the bytes left, in that
    /// order, before anything is sliced.
    fn length(&mut self, field: &'static str) -> Result<usize, WireError> {
        let len = self.varint(field)?;
        let as_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if as_usize > self.max_len {
            return Err(WireError::LengthOverLimit {
                field,
                len,
                max: self.max_len,
            });
        }
        if as_usize > self.rest.len() {
            return Err(WireError::LengthBeyondInput {
                field,
                len,
                remaining: self.rest.len(),
            });
        }
        Ok(as_usize)
    }

    /// `opaque x<V>`, borrowed.
    pub fn opaque(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.length(field)?;
        self.take(len, field)
    }

    /// `opaque x<V>`, owned.
    pub fn opaque_vec(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        Ok(self.opaque(field)?.to_vec())
    }

    /// `string` ([IMPL CHOICE] MIMI.md §3.3: `opaque<V>` holding UTF-8).
    pub fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let bytes = self.opaque(field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::BadUtf8 { field })
    }

    /// `optional<T>`: a presence byte (0 or 1), then `T` when present.
    pub fn optional<T>(
        &mut self,
        field: &'static str,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => read(self).map(Some),
            value => Err(WireError::BadOptional { field, value }),
        }
    }

    /// `T x<V>`: a length prefix, then elements that must fill exactly that many bytes.
    pub fn vector<T>(
        &mut self,
        field: &'static str,
        mut read: impl FnMut(&mut Reader<'a>) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let body = self.opaque(field)?;
        let mut sub = Reader {
            rest: body,
            max_len: self.max_len,
        };
        let mut out = Vec::new();
        while !sub.is_empty() {
            let before = sub.remaining();
            out.push(read(&mut sub)?);
            if sub.remaining() == before {
                return Err(WireError::Invalid {
                    field,
                    reason: "vector element consumed no bytes",
                });
            }
        }
        Ok(out)
    }

    /// Reads `T::decode` elements of a vector.
    pub fn vector_of<T: Decode>(&mut self, field: &'static str) -> Result<Vec<T>, WireError> {
        self.vector(field, T::decode)
    }

    /// An embedded MLS structure, parsed by openmls and kept byte-exact.
    pub fn mls<T: tls_codec::Deserialize>(
        &mut self,
        field: &'static str,
    ) -> Result<Mls<T>, WireError> {
        let start = self.rest;
        let mut cursor = start;
        let value = T::tls_deserialize(&mut cursor).map_err(|e| WireError::from_tls(field, e))?;
        let consumed = start.len() - cursor.len();
        if consumed == 0 {
            return Err(WireError::Invalid {
                field,
                reason: "empty MLS structure",
            });
        }
        let bytes = self.take(consumed, field)?.to_vec();
        Ok(Mls {
            value: Box::new(value),
            bytes,
        })
    }

    /// An embedded `MLSMessage` (RFC 9420 §6), classified and kept byte-exact.
    pub fn mls_message(&mut self, field: &'static str) -> Result<MlsMessage, WireError> {
        let parsed: Mls<MlsMessageIn> = self.mls(field)?;
        let kind = MlsMessageKind::of(*parsed.value, field)?;
        Ok(MlsMessage {
            bytes: parsed.bytes,
            kind,
        })
    }
}

/// An output buffer for TLS presentation language.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Appends bytes verbatim (fixed-size arrays, already-encoded MLS structures).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub fn u16(&mut self, value: u16) {
        self.raw(&value.to_be_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.raw(&value.to_be_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.raw(&value.to_be_bytes());
    }

    pub fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    fn length(&mut self, field: &'static str, len: usize) -> Result<(), WireError> {
        if len > MAX_VECTOR_LEN {
            return Err(WireError::EncodeTooLong { field, len });
        }
        // Narrowing is exact: `len` fits in 30 bits.
        let value = len as u32;
        match varint_width(u64::from(value)) {
            1 => self.u8(value as u8),
            2 => self.u16(0x4000 | value as u16),
            _ => self.u32(0x8000_0000 | value),
        }
        Ok(())
    }

    /// `opaque x<V>`.
    pub fn opaque(&mut self, field: &'static str, bytes: &[u8]) -> Result<(), WireError> {
        self.length(field, bytes.len())?;
        self.raw(bytes);
        Ok(())
    }

    /// `string` as `opaque<V>` of UTF-8 (MIMI.md §3.3).
    pub fn string(&mut self, field: &'static str, text: &str) -> Result<(), WireError> {
        self.opaque(field, text.as_bytes())
    }

    /// `optional<T>`.
    pub fn optional<T>(
        &mut self,
        value: Option<&T>,
        write: impl FnOnce(&mut Writer, &T) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        match value {
            None => {
                self.u8(0);
                Ok(())
            }
            Some(inner) => {
                self.u8(1);
                write(self, inner)
            }
        }
    }

    /// `T x<V>`: the elements are written to a scratch buffer first because the minimal
    /// length prefix depends on their total size.
    pub fn vector(
        &mut self,
        field: &'static str,
        write: impl FnOnce(&mut Writer) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let mut inner = Writer::new();
        write(&mut inner)?;
        self.opaque(field, &inner.buf)
    }

    /// A vector of encodable elements.
    pub fn vector_of<T: Encode>(
        &mut self,
        field: &'static str,
        items: &[T],
    ) -> Result<(), WireError> {
        self.vector(field, |w| items.iter().try_for_each(|item| item.encode(w)))
    }
}

fn varint_width(value: u64) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        _ => 4,
    }
}

/// An embedded MLS structure of openmls type `T` (RFC 9420 types such as `KeyPackage`,
/// `Credential`, `GroupInfo`): the parsed value plus the exact bytes it was parsed from.
/// Equality is byte equality, and encoding writes the original bytes, so a hub forwards what it
/// received unchanged.
///
/// The parsed value is boxed: openmls structures are large and many wire enums hold one in a
/// variant.
#[derive(Clone)]
pub struct Mls<T> {
    value: Box<T>,
    bytes: Vec<u8>,
}

impl<T: tls_codec::Deserialize> Mls<T> {
    /// Parses a complete TLS encoding of `T`; trailing bytes are an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        let limits = Limits {
            max_body_len: bytes.len(),
        };
        let mut r = Reader::new(bytes, &limits)?;
        let parsed = r.mls(std::any::type_name::<T>())?;
        r.finish()?;
        Ok(parsed)
    }
}

impl<T: tls_codec::Serialize> Mls<T> {
    /// Serialises an openmls value (for structures this provider builds itself).
    pub fn from_value(value: T) -> Result<Self, WireError> {
        let field = std::any::type_name::<T>();
        let bytes = value
            .tls_serialize_detached()
            .map_err(|e| WireError::from_tls(field, e))?;
        Ok(Mls {
            value: Box::new(value),
            bytes,
        })
    }
}

impl<T> Mls<T> {
    pub fn value(&self) -> &T {
        &self.value
    }

    pub fn into_value(self) -> T {
        *self.value
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl<T> Encode for Mls<T> {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.raw(&self.bytes);
        Ok(())
    }
}

impl<T> PartialEq for Mls<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> Eq for Mls<T> {}

impl<T> fmt::Debug for Mls<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::any::type_name::<T>();
        let short = name.rsplit("::").next().unwrap_or(name);
        write!(f, "Mls<{short}>({} bytes)", self.bytes.len())
    }
}

/// What an `MLSMessage` carries, as far as MIMI `select`s need to know (RFC 9420 §6:
/// wire_format; for Public and Private messages also the cleartext content_type and epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlsMessageKind {
    PublicMessage {
        content_type: ContentType,
        epoch: u64,
    },
    PrivateMessage {
        content_type: ContentType,
        epoch: u64,
    },
    Welcome,
    GroupInfo,
    KeyPackage,
}

impl MlsMessageKind {
    fn of(message: MlsMessageIn, field: &'static str) -> Result<Self, WireError> {
        // A catch-all arm keeps this compiling if another crate turns on an openmls draft
        // feature that adds wire formats (feature unification, research/floors.md pitfall 8).
        #[allow(unreachable_patterns)]
        match message.extract() {
            MlsMessageBodyIn::PublicMessage(m) => Ok(MlsMessageKind::PublicMessage {
                content_type: m.content_type(),
                epoch: m.epoch().as_u64(),
            }),
            MlsMessageBodyIn::PrivateMessage(m) => Ok(MlsMessageKind::PrivateMessage {
                content_type: m.content_type(),
                epoch: m.epoch().as_u64(),
            }),
            MlsMessageBodyIn::Welcome(_) => Ok(MlsMessageKind::Welcome),
            MlsMessageBodyIn::GroupInfo(_) => Ok(MlsMessageKind::GroupInfo),
            MlsMessageBodyIn::KeyPackage(_) => Ok(MlsMessageKind::KeyPackage),
            _ => Err(WireError::Unsupported {
                what: field,
                reason: "MLS wire format outside RFC 9420",
            }),
        }
    }

    /// RFC 9420 §17.2 wire format code point.
    pub fn wire_format(self) -> u16 {
        match self {
            MlsMessageKind::PublicMessage { .. } => 1,
            MlsMessageKind::PrivateMessage { .. } => 2,
            MlsMessageKind::Welcome => 3,
            MlsMessageKind::GroupInfo => 4,
            MlsMessageKind::KeyPackage => 5,
        }
    }

    /// A short name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            MlsMessageKind::PublicMessage { content_type, .. } => match content_type {
                ContentType::Application => "a PublicMessage with application content",
                ContentType::Proposal => "a PublicMessage proposal",
                ContentType::Commit => "a PublicMessage commit",
            },
            MlsMessageKind::PrivateMessage { content_type, .. } => match content_type {
                ContentType::Application => "a PrivateMessage with application content",
                ContentType::Proposal => "a PrivateMessage proposal",
                ContentType::Commit => "a PrivateMessage commit",
            },
            MlsMessageKind::Welcome => "a Welcome",
            MlsMessageKind::GroupInfo => "a GroupInfo",
            MlsMessageKind::KeyPackage => "a KeyPackage",
        }
    }

    /// The cleartext content type of a Public or Private message.
    pub fn content_type(self) -> Option<ContentType> {
        match self {
            MlsMessageKind::PublicMessage { content_type, .. }
            | MlsMessageKind::PrivateMessage { content_type, .. } => Some(content_type),
            _ => None,
        }
    }

    /// The epoch of a Public or Private message.
    pub fn epoch(self) -> Option<u64> {
        match self {
            MlsMessageKind::PublicMessage { epoch, .. }
            | MlsMessageKind::PrivateMessage { epoch, .. } => Some(epoch),
            _ => None,
        }
    }
}

/// An `MLSMessage` validated by openmls and kept as its exact bytes. The domain (room log,
/// fan-out) stores and forwards these bytes; [`MlsMessage::to_openmls`] parses them again for
/// code that needs the structure.
#[derive(Clone, PartialEq, Eq)]
pub struct MlsMessage {
    bytes: Vec<u8>,
    kind: MlsMessageKind,
}

impl MlsMessage {
    /// Parses a complete `MLSMessage`; trailing bytes are an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        let limits = Limits {
            max_body_len: bytes.len(),
        };
        let mut r = Reader::new(bytes, &limits)?;
        let message = r.mls_message("MLSMessage")?;
        r.finish()?;
        Ok(message)
    }

    /// Wraps an RFC 9420 structure that protocol-06 carries bare (`Welcome`, `GroupInfo`,
    /// `KeyPackage`) into an `MLSMessage`, the form the domain stores.
    pub fn wrap<T: BareMlsBody>(bare: &Mls<T>) -> Result<Self, WireError> {
        let mut bytes = Vec::with_capacity(4 + bare.bytes().len());
        bytes.extend_from_slice(&MLS10.to_be_bytes());
        bytes.extend_from_slice(&T::KIND.wire_format().to_be_bytes());
        bytes.extend_from_slice(bare.bytes());
        MlsMessage::from_bytes(&bytes)
    }

    /// The bare body of a Welcome, GroupInfo or KeyPackage message; fails with
    /// `UnexpectedMessage` when this message has another wire format.
    pub fn unwrap_body<T: BareMlsBody>(&self, field: &'static str) -> Result<Mls<T>, WireError> {
        self.expect(field, T::KIND)?;
        // version (uint16) and wire_format (uint16) precede the body (RFC 9420 §6).
        Mls::from_bytes(&self.bytes[4..])
    }

    pub fn kind(&self) -> MlsMessageKind {
        self.kind
    }

    pub fn content_type(&self) -> Option<ContentType> {
        self.kind.content_type()
    }

    pub fn epoch(&self) -> Option<u64> {
        self.kind.epoch()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Parses the bytes again into openmls' input type.
    pub fn to_openmls(&self) -> Result<MlsMessageIn, WireError> {
        Mls::<MlsMessageIn>::from_bytes(&self.bytes).map(Mls::into_value)
    }

    /// Fails with `UnexpectedMessage` unless this message is of the `expected` wire format.
    pub fn expect(&self, field: &'static str, expected: MlsMessageKind) -> Result<(), WireError> {
        if std::mem::discriminant(&self.kind) == std::mem::discriminant(&expected) {
            Ok(())
        } else {
            Err(WireError::UnexpectedMessage {
                field,
                expected: expected.name(),
                found: self.kind.name(),
            })
        }
    }
}

impl Encode for MlsMessage {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.raw(&self.bytes);
        Ok(())
    }
}

impl fmt::Debug for MlsMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MlsMessage({}, {} bytes)",
            self.kind.name(),
            self.bytes.len()
        )
    }
}

/// RFC 9420 §6 `ProtocolVersion mls10`.
const MLS10: u16 = 1;

/// RFC 9420 structures that can travel either bare or inside an `MLSMessage`.
pub trait BareMlsBody: tls_codec::Deserialize {
    /// The `MLSMessage` wire format that wraps this structure.
    const KIND: MlsMessageKind;
}

impl BareMlsBody for Welcome {
    const KIND: MlsMessageKind = MlsMessageKind::Welcome;
}

impl BareMlsBody for VerifiableGroupInfo {
    const KIND: MlsMessageKind = MlsMessageKind::GroupInfo;
}

impl BareMlsBody for KeyPackageIn {
    const KIND: MlsMessageKind = MlsMessageKind::KeyPackage;
}

/// Declares a `uint8` enum of protocol-06 with its code points. Values not listed (including
/// the `reserved(0)` ones) are rejected with [`WireError::BadEnum`].
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// The enum for a code point, if it is defined.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl $crate::wire::codec::Encode for $name {
            fn encode(
                &self,
                w: &mut $crate::wire::codec::Writer,
            ) -> Result<(), $crate::wire::codec::WireError> {
                w.u8(*self as u8);
                Ok(())
            }
        }

        impl $crate::wire::codec::Decode for $name {
            fn decode(
                r: &mut $crate::wire::codec::Reader<'_>,
            ) -> Result<Self, $crate::wire::codec::WireError> {
                let value = r.u8($field)?;
                $name::from_u8(value)
                    .ok_or($crate::wire::codec::WireError::BadEnum { field: $field, value })
            }
        }
    };
}

pub(crate) use wire_enum;
