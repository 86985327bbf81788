//! The deterministic CBOR (RFC 8949 §4.2.1) encoder and the strict decoder behind
//! [`MimiContent::encode`] and [`MimiContent::decode`]. The schema (content-08 §4, §6) is
//! checked while reading, so no intermediate generic tree is built for the fixed fields.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::{
    nested_part_schema, uri_extension_schema, ContentError, Disposition, Expiration, ExtensionKey,
    Extensions, ExternalPart, Float, MessageId, MimiContent, NestedPart, Part, PartSemantics,
    Value, HASH_ALG_SHA256, MAX_EXTENSION_DEPTH, MAX_PARTS, MAX_PART_DEPTH, MAX_SAFE_INTEGER,
    MAX_TOPIC_ID_LEN, MESSAGE_ID_LEN,
};

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;

const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
const UNDEFINED: u8 = 0xf7;
const HALF_QUIET_NAN: [u8; 3] = [0xf9, 0x7e, 0x00];

/// The deterministic encoding of `content`.
pub(super) fn encode_content(content: &MimiContent) -> Result<Vec<u8>, ContentError> {
    let mut enc = Encoder::default();
    enc.content(content)?;
    Ok(enc.out)
}

/// The encoding of an extension map key (also its sort key).
pub(super) fn encode_extension_key(key: &ExtensionKey) -> Vec<u8> {
    let mut enc = Encoder::default();
    match key {
        ExtensionKey::Int(value) => enc.int_unchecked(*value),
        ExtensionKey::Text(text) => enc.text(text),
    }
    enc.out
}

/// Decodes a whole message with every content-08 check; trailing bytes are an error.
pub(super) fn decode_content(bytes: &[u8]) -> Result<MimiContent, ContentError> {
    let mut dec = Decoder {
        input: bytes,
        pos: 0,
        parts: 0,
    };
    let content = dec.content()?;
    if dec.pos != bytes.len() {
        return Err(ContentError::TrailingBytes {
            count: bytes.len() - dec.pos,
        });
    }
    Ok(content)
}

#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
}

impl Encoder {
    /// The shortest head for `value` (RFC 8949 §4.2.1).
    fn head(&mut self, major: u8, value: u64) {
        let m = major << 5;
        match value {
            0..=23 => self.out.push(m | value as u8),
            24..=0xff => self.out.extend([m | 24, value as u8]),
            0x100..=0xffff => {
                self.out.push(m | 25);
                self.out.extend((value as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.out.push(m | 26);
                self.out.extend((value as u32).to_be_bytes());
            }
            _ => {
                self.out.push(m | 27);
                self.out.extend(value.to_be_bytes());
            }
        }
    }

    fn int_unchecked(&mut self, value: i64) {
        if value >= 0 {
            self.head(MAJOR_UNSIGNED, value as u64);
        } else {
            self.head(MAJOR_NEGATIVE, (-1 - value) as u64);
        }
    }

    fn int(&mut self, value: i64) -> Result<(), ContentError> {
        if value.unsigned_abs() > MAX_SAFE_INTEGER as u64 {
            return Err(ContentError::IntegerOutOfRange);
        }
        self.int_unchecked(value);
        Ok(())
    }

    fn uint(&mut self, value: u64) -> Result<(), ContentError> {
        if value > MAX_SAFE_INTEGER as u64 {
            return Err(ContentError::IntegerOutOfRange);
        }
        self.head(MAJOR_UNSIGNED, value);
        Ok(())
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.head(MAJOR_BYTES, bytes.len() as u64);
        self.out.extend_from_slice(bytes);
    }

    fn text(&mut self, text: &str) {
        self.head(MAJOR_TEXT, text.len() as u64);
        self.out.extend_from_slice(text.as_bytes());
    }

    fn array(&mut self, len: usize) {
        self.head(MAJOR_ARRAY, len as u64);
    }

    fn message_id(&mut self, id: Option<&MessageId>) {
        match id {
            Some(id) => self.bytes(&id.0),
            None => self.out.push(NULL),
        }
    }

    fn content(&mut self, content: &MimiContent) -> Result<(), ContentError> {
        if content.topic_id.len() > MAX_TOPIC_ID_LEN {
            return Err(ContentError::TopicIdTooLong(content.topic_id.len()));
        }
        self.array(7);
        self.bytes(&content.salt);
        self.message_id(content.replaces.as_ref());
        self.bytes(&content.topic_id);
        match content.expires {
            Some(expiration) => {
                self.array(2);
                self.out
                    .push(if expiration.relative { TRUE } else { FALSE });
                self.head(MAJOR_UNSIGNED, u64::from(expiration.time));
            }
            None => self.out.push(NULL),
        }
        self.message_id(content.in_reply_to.as_ref());
        self.extensions(&content.extensions)?;
        let mut parts = 0;
        self.nested_part(&content.body, 1, &mut parts)
    }

    fn extensions(&mut self, extensions: &Extensions) -> Result<(), ContentError> {
        self.head(MAJOR_MAP, extensions.len() as u64);
        for (key, value) in extensions.iter() {
            key.validate()?;
            if (*key == ExtensionKey::SENDER_URI || *key == ExtensionKey::ROOM_URI)
                && !matches!(value, Value::Text(_))
            {
                return Err(uri_extension_schema());
            }
            self.out.extend(key.encoded());
            self.value(value, 2)?;
        }
        Ok(())
    }

    /// `level` is the depth a map, array or tag at this position would have.
    fn value(&mut self, value: &Value, level: usize) -> Result<(), ContentError> {
        let container = matches!(value, Value::Array(_) | Value::Map(_) | Value::Tag(..));
        if container && level > MAX_EXTENSION_DEPTH {
            return Err(ContentError::ExtensionTooDeep);
        }
        match value {
            Value::Integer(v) => self.int(*v)?,
            Value::Bytes(b) => self.bytes(b),
            Value::Text(t) => self.text(t),
            Value::Array(items) => {
                self.array(items.len());
                for item in items {
                    self.value(item, level + 1)?;
                }
            }
            Value::Map(entries) => self.map(entries, level)?,
            Value::Tag(tag, inner) => {
                if *tag == 2 || *tag == 3 {
                    return Err(ContentError::IntegerOutOfRange);
                }
                self.head(MAJOR_TAG, *tag);
                self.value(inner, level + 1)?;
            }
            Value::Bool(b) => self.out.push(if *b { TRUE } else { FALSE }),
            Value::Null => self.out.push(NULL),
            Value::Undefined => self.out.push(UNDEFINED),
            Value::Simple(v) => {
                if (20..=31).contains(v) {
                    return Err(ContentError::InvalidSimpleValue {
                        offset: self.out.len(),
                        value: *v,
                    });
                }
                self.head(MAJOR_SIMPLE, u64::from(*v));
            }
            Value::Float(float) => self.float(*float),
        }
        Ok(())
    }

    /// Entries in bytewise order of their encoded keys; duplicate keys are an error.
    fn map(&mut self, entries: &[(Value, Value)], level: usize) -> Result<(), ContentError> {
        let mut encoded = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            if !matches!(key, Value::Integer(_) | Value::Text(_) | Value::Bytes(_)) {
                return Err(ContentError::InvalidMapKey);
            }
            let mut key_enc = Encoder::default();
            key_enc.value(key, level + 1)?;
            encoded.push((key_enc.out, value));
        }
        encoded.sort_by(|a, b| a.0.cmp(&b.0));
        if encoded.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err(ContentError::DuplicateMapKey {
                offset: self.out.len(),
            });
        }
        self.head(MAJOR_MAP, encoded.len() as u64);
        for (key, value) in encoded {
            self.out.extend(key);
            self.value(value, level + 1)?;
        }
        Ok(())
    }

    /// The shortest of half, single and double precision that holds the value exactly.
    fn float(&mut self, float: Float) {
        let value = float.value();
        if value.is_nan() {
            self.out.extend(HALF_QUIET_NAN);
        } else if let Some(half) = f16_bits_exact(value) {
            self.out.push(0xf9);
            self.out.extend(half.to_be_bytes());
        } else if f64::from(value as f32) == value {
            self.out.push(0xfa);
            self.out.extend((value as f32).to_bits().to_be_bytes());
        } else {
            self.out.push(0xfb);
            self.out.extend(value.to_bits().to_be_bytes());
        }
    }

    fn nested_part(
        &mut self,
        part: &NestedPart,
        depth: usize,
        parts: &mut usize,
    ) -> Result<(), ContentError> {
        count_part(depth, parts)?;
        let fields = match &part.part {
            Part::Null => 3,
            Part::Single { .. } | Part::Multi { .. } => 5,
            Part::External(_) => 15,
        };
        self.array(fields);
        self.head(MAJOR_UNSIGNED, u64::from(part.disposition.0));
        self.text(&part.language);
        match &part.part {
            Part::Null => self.head(MAJOR_UNSIGNED, 0),
            Part::Single {
                content_type,
                content,
            } => {
                self.head(MAJOR_UNSIGNED, 1);
                self.text(content_type);
                self.bytes(content);
            }
            Part::External(external) => {
                self.head(MAJOR_UNSIGNED, 2);
                self.text(&external.content_type);
                self.text(&external.url);
                self.head(MAJOR_UNSIGNED, u64::from(external.expires));
                self.uint(external.size)?;
                self.head(MAJOR_UNSIGNED, u64::from(external.enc_alg));
                self.bytes(&external.key);
                self.bytes(&external.nonce);
                self.bytes(&external.aad);
                self.head(MAJOR_UNSIGNED, u64::from(external.hash_alg));
                self.bytes(&external.content_hash);
                self.text(&external.description);
                self.text(&external.filename);
            }
            Part::Multi {
                semantics,
                parts: children,
            } => {
                if children.len() < 2 {
                    return Err(ContentError::MultiPartTooFew);
                }
                self.head(MAJOR_UNSIGNED, 3);
                self.head(MAJOR_UNSIGNED, *semantics as u64);
                self.array(children.len());
                for child in children {
                    self.nested_part(child, depth + 1, parts)?;
                }
            }
        }
        Ok(())
    }
}

fn count_part(depth: usize, parts: &mut usize) -> Result<(), ContentError> {
    if depth > MAX_PART_DEPTH {
        return Err(ContentError::PartTooDeep);
    }
    *parts += 1;
    if *parts > MAX_PARTS {
        return Err(ContentError::TooManyParts);
    }
    Ok(())
}

/// The IEEE half-precision bits of `value` if it converts exactly (not for NaN).
fn f16_bits_exact(value: f64) -> Option<u16> {
    let sign: u16 = if value.is_sign_negative() { 0x8000 } else { 0 };
    let magnitude = value.abs();
    if magnitude == 0.0 {
        return Some(sign);
    }
    if magnitude.is_infinite() {
        return Some(sign | 0x7c00);
    }
    // Subnormal halves are multiples of 2^-24 below 2^-14; scaling by a power of two is exact.
    let scaled = magnitude * f64::from(1u32 << 24);
    if magnitude < 2f64.powi(-14) {
        return (scaled.fract() == 0.0).then_some(sign | scaled as u16);
    }
    let bits = magnitude.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mantissa = bits & ((1 << 52) - 1);
    if !(-14..=15).contains(&exponent) || mantissa & ((1 << 42) - 1) != 0 {
        return None;
    }
    Some(sign | (((exponent + 15) as u16) << 10) | (mantissa >> 42) as u16)
}

/// IEEE half-precision bits as an `f64` (RFC 8949 Appendix D).
fn f16_to_f64(half: u16) -> f64 {
    let exponent = i32::from((half >> 10) & 0x1f);
    let mantissa = f64::from(half & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + mantissa / 1024.0) * 2f64.powi(exponent - 15),
    };
    if half & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// What follows an initial byte.
enum Argument {
    Value(u64),
    Float(f64),
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    parts: usize,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ContentError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.input.len())
            .ok_or(ContentError::Truncated {
                offset: self.input.len(),
            })?;
        let slice = &self.input[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn peek(&self) -> Result<u8, ContentError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(ContentError::Truncated { offset: self.pos })
    }

    /// Reads an initial byte and its argument, enforcing the shortest form.
    fn head(&mut self) -> Result<(u8, Argument), ContentError> {
        let offset = self.pos;
        let initial = self.take(1)?[0];
        let major = initial >> 5;
        let info = initial & 0x1f;
        let value = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            31 if (MAJOR_BYTES..=MAJOR_MAP).contains(&major) => {
                return Err(ContentError::IndefiniteLength { offset })
            }
            _ => return Err(ContentError::Malformed { offset }),
        };
        if major == MAJOR_SIMPLE {
            return self.simple_or_float(offset, info, value);
        }
        let shortest = match info {
            24 => value >= 24,
            25 => value > 0xff,
            26 => value > 0xffff,
            27 => value > 0xffff_ffff,
            _ => true,
        };
        if !shortest {
            return Err(ContentError::NonShortestHead { offset });
        }
        Ok((major, Argument::Value(value)))
    }

    fn simple_or_float(
        &mut self,
        offset: usize,
        info: u8,
        value: u64,
    ) -> Result<(u8, Argument), ContentError> {
        let float = match info {
            24 if value < 32 => {
                return Err(ContentError::InvalidSimpleValue {
                    offset,
                    value: value as u8,
                })
            }
            0..=24 => return Ok((MAJOR_SIMPLE, Argument::Value(value))),
            25 => {
                let half = value as u16;
                let float = f16_to_f64(half);
                if float.is_nan() && half != 0x7e00 {
                    return Err(ContentError::ForbiddenNaN { offset });
                }
                float
            }
            26 => {
                let float = f64::from(f32::from_bits(value as u32));
                if float.is_nan() {
                    return Err(ContentError::ForbiddenNaN { offset });
                }
                if f16_bits_exact(float).is_some() {
                    return Err(ContentError::NonShortestFloat { offset });
                }
                float
            }
            _ => {
                let float = f64::from_bits(value);
                if float.is_nan() {
                    return Err(ContentError::ForbiddenNaN { offset });
                }
                if f64::from(float as f32) == float {
                    return Err(ContentError::NonShortestFloat { offset });
                }
                float
            }
        };
        Ok((MAJOR_SIMPLE, Argument::Float(float)))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ContentError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A head of the given major type, returning its argument.
    fn expect(
        &mut self,
        major: u8,
        field: &'static str,
        expected: &'static str,
    ) -> Result<u64, ContentError> {
        match self.head()? {
            (m, Argument::Value(value)) if m == major => Ok(value),
            _ => Err(ContentError::Schema { field, expected }),
        }
    }

    /// A length that must fit in the bytes left (each element or byte takes at least one).
    fn length(&mut self, value: u64) -> Result<usize, ContentError> {
        usize::try_from(value)
            .ok()
            .filter(|len| *len <= self.input.len() - self.pos)
            .ok_or(ContentError::Truncated {
                offset: self.input.len(),
            })
    }

    fn array(&mut self, field: &'static str) -> Result<usize, ContentError> {
        let len = self.expect(MAJOR_ARRAY, field, "an array")?;
        self.length(len)
    }

    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, ContentError> {
        let len = self.expect(MAJOR_BYTES, field, "a byte string")?;
        let len = self.length(len)?;
        Ok(self.take(len)?.to_vec())
    }

    fn text(&mut self, field: &'static str) -> Result<String, ContentError> {
        let len = self.expect(MAJOR_TEXT, field, "a text string")?;
        self.text_body(len)
    }

    fn text_body(&mut self, len: u64) -> Result<String, ContentError> {
        let offset = self.pos;
        let len = self.length(len)?;
        std::str::from_utf8(self.take(len)?)
            .map(str::to_owned)
            .map_err(|_| ContentError::InvalidUtf8 { offset })
    }

    /// An unsigned integer no larger than `max` (content-08 `uint .size n`) and 2^53−1.
    fn uint(&mut self, field: &'static str, max: u64) -> Result<u64, ContentError> {
        let value = self.expect(MAJOR_UNSIGNED, field, "an unsigned integer")?;
        if value > MAX_SAFE_INTEGER as u64 {
            return Err(ContentError::IntegerOutOfRange);
        }
        if value > max {
            return Err(ContentError::Schema {
                field,
                expected: "an unsigned integer within its size",
            });
        }
        Ok(value)
    }

    fn null(&mut self) -> Result<bool, ContentError> {
        if self.peek()? == NULL {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn message_id(&mut self, field: &'static str) -> Result<Option<MessageId>, ContentError> {
        if self.null()? {
            return Ok(None);
        }
        let bytes = self.bytes(field)?;
        let id: [u8; MESSAGE_ID_LEN] = bytes.try_into().map_err(|_| ContentError::Schema {
            field,
            expected: "null or a 32-byte message ID",
        })?;
        if id[0] != HASH_ALG_SHA256 {
            return Err(ContentError::UnknownHashAlgorithm(id[0]));
        }
        Ok(Some(MessageId(id)))
    }

    fn content(&mut self) -> Result<MimiContent, ContentError> {
        if self.array("mimiContent")? != 7 {
            return Err(ContentError::Schema {
                field: "mimiContent",
                expected: "an array of 7 elements",
            });
        }
        let salt = self
            .bytes("salt")?
            .try_into()
            .map_err(|_| ContentError::Schema {
                field: "salt",
                expected: "a 16-byte string",
            })?;
        let replaces = self.message_id("replaces")?;
        let topic_id = self.bytes("topicId")?;
        if topic_id.len() > MAX_TOPIC_ID_LEN {
            return Err(ContentError::TopicIdTooLong(topic_id.len()));
        }
        let expires = self.expiration()?;
        let in_reply_to = self.message_id("inReplyTo")?;
        let extensions = self.extensions()?;
        let body = self.nested_part(1)?;
        Ok(MimiContent {
            salt,
            replaces,
            topic_id,
            expires,
            in_reply_to,
            extensions,
            body,
        })
    }

    fn expiration(&mut self) -> Result<Option<Expiration>, ContentError> {
        if self.null()? {
            return Ok(None);
        }
        if self.array("expires")? != 2 {
            return Err(ContentError::Schema {
                field: "expires",
                expected: "null or [relative: bool, time: uint]",
            });
        }
        let relative = match self.take(1)?[0] {
            FALSE => false,
            TRUE => true,
            _ => {
                return Err(ContentError::Schema {
                    field: "expires.relative",
                    expected: "a boolean",
                })
            }
        };
        let time = self.uint("expires.time", u64::from(u32::MAX))? as u32;
        Ok(Some(Expiration { relative, time }))
    }

    fn extensions(&mut self) -> Result<Extensions, ContentError> {
        let len = self.expect(MAJOR_MAP, "mimiExtensions", "a map")?;
        let len = self.length(len)?;
        let mut entries = BTreeMap::new();
        let mut previous: Option<&'a [u8]> = None;
        for _ in 0..len {
            let key_start = self.pos;
            let key = match self.head()? {
                (MAJOR_UNSIGNED, Argument::Value(v)) => ExtensionKey::Int(safe_unsigned(v)?),
                (MAJOR_NEGATIVE, Argument::Value(v)) => ExtensionKey::Int(safe_negative(v)?),
                (MAJOR_TEXT, Argument::Value(len)) => ExtensionKey::Text(self.text_body(len)?),
                _ => return Err(ContentError::InvalidExtensionKey),
            };
            key.validate()?;
            previous = Some(self.check_key_order(previous, key_start)?);
            let value = self.value(2)?;
            if (key == ExtensionKey::SENDER_URI || key == ExtensionKey::ROOM_URI)
                && !matches!(value, Value::Text(_))
            {
                return Err(uri_extension_schema());
            }
            entries.insert(key, value);
        }
        Ok(Extensions { entries })
    }

    /// Checks the key just read (from `start`) sorts strictly after the previous one.
    fn check_key_order(
        &self,
        previous: Option<&'a [u8]>,
        start: usize,
    ) -> Result<&'a [u8], ContentError> {
        let key = &self.input[start..self.pos];
        match previous.map(|p| p.cmp(key)) {
            Some(Ordering::Equal) => Err(ContentError::DuplicateMapKey { offset: start }),
            Some(Ordering::Greater) => Err(ContentError::UnsortedMapKeys { offset: start }),
            _ => Ok(key),
        }
    }

    /// Any data item; `level` is the depth a container here would have (content-08 §6.3).
    fn value(&mut self, level: usize) -> Result<Value, ContentError> {
        let (major, argument) = self.head()?;
        let value = match argument {
            Argument::Float(float) => return Ok(Value::Float(Float::new(float))),
            Argument::Value(value) => value,
        };
        if matches!(major, MAJOR_ARRAY | MAJOR_MAP | MAJOR_TAG) && level > MAX_EXTENSION_DEPTH {
            return Err(ContentError::ExtensionTooDeep);
        }
        Ok(match major {
            MAJOR_UNSIGNED => Value::Integer(safe_unsigned(value)?),
            MAJOR_NEGATIVE => Value::Integer(safe_negative(value)?),
            MAJOR_BYTES => {
                let len = self.length(value)?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            MAJOR_TEXT => Value::Text(self.text_body(value)?),
            MAJOR_ARRAY => {
                let len = self.length(value)?;
                let mut items = Vec::new();
                for _ in 0..len {
                    items.push(self.value(level + 1)?);
                }
                Value::Array(items)
            }
            MAJOR_MAP => self.map(value, level)?,
            MAJOR_TAG => {
                if value == 2 || value == 3 {
                    return Err(ContentError::IntegerOutOfRange);
                }
                Value::Tag(value, Box::new(self.value(level + 1)?))
            }
            _ => match value as u8 {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                23 => Value::Undefined,
                other => Value::Simple(other),
            },
        })
    }

    fn map(&mut self, len: u64, level: usize) -> Result<Value, ContentError> {
        let len = self.length(len)?;
        let mut entries = Vec::new();
        let mut previous: Option<&'a [u8]> = None;
        for _ in 0..len {
            let key_start = self.pos;
            let key = self.value(level + 1)?;
            if !matches!(key, Value::Integer(_) | Value::Text(_) | Value::Bytes(_)) {
                return Err(ContentError::InvalidMapKey);
            }
            previous = Some(self.check_key_order(previous, key_start)?);
            entries.push((key, self.value(level + 1)?));
        }
        Ok(Value::Map(entries))
    }

    fn nested_part(&mut self, depth: usize) -> Result<NestedPart, ContentError> {
        count_part(depth, &mut self.parts)?;
        let fields = self.array("NestedPart")?;
        if fields < 3 {
            return Err(nested_part_schema());
        }
        let disposition = Disposition(self.uint("disposition", 255)? as u8);
        let language = self.text("language")?;
        let cardinality = self.uint("cardinality", u64::MAX)?;
        let part = match (cardinality, fields) {
            (0, 3) => Part::Null,
            (1, 5) => Part::Single {
                content_type: self.text("contentType")?,
                content: self.bytes("content")?,
            },
            (2, 15) => Part::External(self.external_part()?),
            (3, 5) => {
                let semantics = match self.uint("partSemantics", u64::MAX)? {
                    0 => PartSemantics::ChooseOne,
                    1 => PartSemantics::SingleUnit,
                    2 => PartSemantics::ProcessAll,
                    other => return Err(ContentError::UnknownPartSemantics(other)),
                };
                let count = self.array("parts")?;
                if count < 2 {
                    return Err(ContentError::MultiPartTooFew);
                }
                let mut parts = Vec::new();
                for _ in 0..count {
                    parts.push(self.nested_part(depth + 1)?);
                }
                Part::Multi { semantics, parts }
            }
            (0..=3, _) => return Err(nested_part_schema()),
            (other, _) => return Err(ContentError::UnknownCardinality(other)),
        };
        Ok(NestedPart {
            disposition,
            language,
            part,
        })
    }

    fn external_part(&mut self) -> Result<ExternalPart, ContentError> {
        Ok(ExternalPart {
            content_type: self.text("contentType")?,
            url: self.text("url")?,
            expires: self.uint("expires", u64::from(u32::MAX))? as u32,
            size: self.uint("size", u64::MAX)?,
            enc_alg: self.uint("encAlg", u64::from(u16::MAX))? as u16,
            key: self.bytes("key")?,
            nonce: self.bytes("nonce")?,
            aad: self.bytes("aad")?,
            hash_alg: self.uint("hashAlg", u64::from(u8::MAX))? as u8,
            content_hash: self.bytes("contentHash")?,
            description: self.text("description")?,
            filename: self.text("filename")?,
        })
    }
}

fn safe_unsigned(value: u64) -> Result<i64, ContentError> {
    if value <= MAX_SAFE_INTEGER as u64 {
        Ok(value as i64)
    } else {
        Err(ContentError::IntegerOutOfRange)
    }
}

/// CBOR major type 1 holds `-1 - value`.
fn safe_negative(value: u64) -> Result<i64, ContentError> {
    if value < MAX_SAFE_INTEGER as u64 {
        Ok(-1 - value as i64)
    } else {
        Err(ContentError::IntegerOutOfRange)
    }
}
