//! KeyPackage inspection for the directory: a strict, allocation-free decoder for the fields
//! the directory decides on, the policy checks shared by the edge and the Raft apply, and the
//! full (signature-verifying) edge validator.
//!
//! Why two paths: verifying a KeyPackage costs two Ed25519 verifications (~83 µs, floors.md
//! §1). The edge pays that once before proposing; every replica's apply only re-runs
//! [`inspect`], which walks the encoding (RFC 9420 §10) and checks identity, suite and lifetime
//! against the stamped `now_ms`, so all replicas reach the same verdict without repeating the
//! cryptography. The decoder never panics and never allocates beyond the returned slices.
//!
//! What this module deliberately does not do: capability matching against a requester's
//! `RequiredCapabilities` (protocol-06 §5.1) and credential types other than `basic`.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use openmls::prelude::{
    Ciphersuite, ExtensionType, KeyPackageIn, KeyPackageVerifyError, ProtocolVersion,
};
use openmls_rust_crypto::RustCrypto;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tls_codec::Deserialize as TlsDeserialize;

use crate::ids::ClientId;

/// Longest encoded KeyPackage (bare or wrapped in an `MLSMessage`) the directory accepts.
/// A KeyPackage with a basic credential is ~275 bytes (floors.md §1); the margin leaves room for
/// capabilities and application extensions while bounding what one client can store
/// (`MAX_KEY_PACKAGES_PER_CLIENT` × this).
pub const MAX_KEY_PACKAGE_LEN: usize = 8 * 1024;

/// Longest `not_after - not_before` we accept. RFC 9420 §7.2 requires applications to define a
/// maximum total LeafNode lifetime and to reject longer ones; 90 days covers openmls' default
/// (84 days plus a one-hour back-dating margin).
pub const MAX_KEY_PACKAGE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// Cipher suites we store KeyPackages for: the ones our MLS crypto provider implements
/// (RFC 9420 §17.1 code points 0x0001–0x0003). All three hash with SHA-256, which is why a
/// [`KeyPackageRef`] is always 32 bytes.
pub const SUPPORTED_CIPHERSUITES: [Ciphersuite; 3] = [
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
    Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
];

/// `ProtocolVersion.mls10` (RFC 9420 §6).
const MLS10: u16 = 1;
/// `WireFormat.mls_key_package` (RFC 9420 §6).
const WIRE_FORMAT_KEY_PACKAGE: u16 = 5;
/// `CredentialType.basic` (RFC 9420 §5.3).
const CREDENTIAL_BASIC: u16 = 1;
/// `LeafNodeSource.key_package` (RFC 9420 §7.2).
const LEAF_NODE_SOURCE_KEY_PACKAGE: u8 = 1;
/// RFC 9420 §5.2 `MakeKeyPackageRef` label.
const KEY_PACKAGE_REF_LABEL: &[u8] = b"MLS 1.0 KeyPackage Reference";

/// `KeyPackageRef` (RFC 9420 §5.2): `RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)`,
/// SHA-256 for every suite in [`SUPPORTED_CIPHERSUITES`]. It names a KeyPackage in Add
/// proposals and Welcome messages, so it is also the key for Welcome routing (MIMI.md §4).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyPackageRef([u8; 32]);

impl KeyPackageRef {
    /// Computes the reference of a bare TLS-encoded KeyPackage that [`inspect`] accepted
    /// (so it is at most [`MAX_KEY_PACKAGE_LEN`] bytes long).
    pub(super) fn of_key_package(key_package: &[u8]) -> Self {
        // RefHashInput { opaque label<V>; opaque value<V>; } hashed with the suite's hash.
        let mut hasher = Sha256::new();
        hasher.update(varint_prefix(KEY_PACKAGE_REF_LABEL.len()));
        hasher.update(KEY_PACKAGE_REF_LABEL);
        hasher.update(varint_prefix(key_package.len()));
        hasher.update(key_package);
        KeyPackageRef(hasher.finalize().into())
    }

    /// Wraps reference bytes received on the wire; `None` unless they are 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(KeyPackageRef)
    }

    /// The reference bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyPackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPackageRef(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

/// `Lifetime` of a KeyPackage's leaf node (RFC 9420 §7.2), in seconds since the UNIX epoch.
/// Comparisons take milliseconds because that is the unit of the hub time stamped into Raft
/// entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageLifetime {
    /// First second at which the KeyPackage may be used.
    pub not_before_s: u64,
    /// Second from which on the KeyPackage is expired.
    pub not_after_s: u64,
}

impl KeyPackageLifetime {
    /// True once `now_ms` has reached `not_after` (openmls treats `not_after == now` as
    /// expired too, so we never hand out a KeyPackage a client would reject).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.not_after_s.saturating_mul(1000)
    }

    /// True once `now_ms` has reached `not_before`.
    pub fn has_started_at(&self, now_ms: u64) -> bool {
        now_ms >= self.not_before_s.saturating_mul(1000)
    }

    /// Usable right now: started and not expired.
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        self.has_started_at(now_ms) && !self.is_expired_at(now_ms)
    }
}

/// Why a KeyPackage was refused. Every variant names one specific defect so that the client
/// API can tell a publishing client what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum KeyPackageError {
    /// The encoding is longer than [`MAX_KEY_PACKAGE_LEN`].
    #[error("KeyPackage is {len} bytes, the limit is {MAX_KEY_PACKAGE_LEN}")]
    TooLarge {
        /// Length of the offered bytes.
        len: usize,
    },
    /// The bytes end inside `field`.
    #[error("KeyPackage is truncated in {field}")]
    Truncated {
        /// The RFC 9420 field being read.
        field: Cow<'static, str>,
    },
    /// The length prefix of `field` is not a valid minimal MLS varint (RFC 9420 §2.1.2).
    #[error("KeyPackage has an invalid length prefix in {field}")]
    InvalidLength {
        /// The RFC 9420 field being read.
        field: Cow<'static, str>,
    },
    /// Bytes follow the KeyPackage.
    #[error("{count} bytes follow the KeyPackage")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The leaf node was not created for a KeyPackage (RFC 9420 §7.2 requires `key_package`).
    #[error("leaf node source is {source_code}, not key_package(1)")]
    NotKeyPackageLeaf {
        /// The `LeafNodeSource` found.
        source_code: u8,
    },
    /// openmls refused the structure our decoder accepted (e.g. an element list inside a
    /// vector, or an extension not allowed in KeyPackages).
    #[error("KeyPackage does not decode: {reason}")]
    Undecodable {
        /// The decoder's message.
        reason: String,
    },
    /// Only MLS 1.0 exists (RFC 9420 §6).
    #[error("protocol version {version} is not mls10")]
    UnsupportedProtocolVersion {
        /// The version found.
        version: u16,
    },
    /// Not one of [`SUPPORTED_CIPHERSUITES`].
    #[error("cipher suite 0x{ciphersuite:04x} is not supported")]
    UnsupportedCiphersuite {
        /// The suite code point found.
        ciphersuite: u16,
    },
    /// Only `basic` credentials carry the client URI we bind to (MIMI.md §2).
    #[error("credential type {credential_type} is not basic(1)")]
    UnsupportedCredential {
        /// The credential type found.
        credential_type: u16,
    },
    /// The credential identity is not the publishing client's URI.
    #[error("credential identity is not the publishing client's URI")]
    IdentityMismatch,
    /// `not_after` precedes `not_before`.
    #[error("lifetime ends ({not_after_s}) before it starts ({not_before_s})")]
    InvertedLifetime {
        /// `not_before` in seconds.
        not_before_s: u64,
        /// `not_after` in seconds.
        not_after_s: u64,
    },
    /// `not_before` is in the future.
    #[error("KeyPackage is not valid before {not_before_s} s (now {now_ms} ms)")]
    NotYetValid {
        /// `not_before` in seconds.
        not_before_s: u64,
        /// The time of the check.
        now_ms: u64,
    },
    /// `not_after` has passed.
    #[error("KeyPackage expired at {not_after_s} s (now {now_ms} ms)")]
    Expired {
        /// `not_after` in seconds.
        not_after_s: u64,
        /// The time of the check.
        now_ms: u64,
    },
    /// `not_after - not_before` exceeds [`MAX_KEY_PACKAGE_LIFETIME`] (RFC 9420 §7.2).
    #[error("lifetime of {lifetime_s} s exceeds the {max_s} s maximum")]
    LifetimeTooLong {
        /// The offered total lifetime.
        lifetime_s: u64,
        /// [`MAX_KEY_PACKAGE_LIFETIME`] in seconds.
        max_s: u64,
    },
    /// The KeyPackage signature does not verify (RFC 9420 §10.1).
    #[error("KeyPackage signature is invalid")]
    InvalidSignature,
    /// The leaf node signature does not verify (RFC 9420 §7.3).
    #[error("leaf node signature is invalid")]
    InvalidLeafNodeSignature,
    /// Another RFC 9420 §10.1 check failed (init key equals encryption key, extension not in
    /// capabilities, ...).
    #[error("KeyPackage is invalid: {reason}")]
    Invalid {
        /// openmls' message.
        reason: String,
    },
}

/// A KeyPackage that passed full validation at the edge, ready to be put in a
/// `Command::PublishKeyPackages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedKeyPackage {
    bytes: Vec<u8>,
    key_package_ref: KeyPackageRef,
    lifetime: KeyPackageLifetime,
    last_resort: bool,
}

impl ValidatedKeyPackage {
    /// The canonical bare TLS `KeyPackage` (an `MLSMessage` wrapper is removed).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The canonical bytes, for the command.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Its `KeyPackageRef` (RFC 9420 §5.2).
    pub fn key_package_ref(&self) -> KeyPackageRef {
        self.key_package_ref
    }

    /// Its leaf node lifetime.
    pub fn lifetime(&self) -> KeyPackageLifetime {
        self.lifetime
    }

    /// Whether it carries the `last_resort` KeyPackage extension (draft-ietf-mls-extensions;
    /// openmls `ExtensionType::LastResort`, code point 10).
    pub fn is_last_resort(&self) -> bool {
        self.last_resort
    }
}

/// Full validation at the edge, before proposing: decode (a TLS `KeyPackage` or an
/// `MLSMessage` wrapping one), check version, suite, that the leaf credential is a basic
/// credential naming `client`, the lifetime against `now_ms` and [`MAX_KEY_PACKAGE_LIFETIME`],
/// then verify both signatures with `KeyPackageIn::validate` (RFC 9420 §10.1). Cheap checks run
/// first so that junk is refused before any signature work.
///
/// openmls additionally checks the lifetime against the system clock; with a sane `now_ms`
/// that check never disagrees, and if it does the result is [`KeyPackageError::Invalid`].
pub fn validate_key_package(
    bytes: &[u8],
    client: &ClientId,
    now_ms: u64,
) -> Result<ValidatedKeyPackage, KeyPackageError> {
    let inspected = inspect(bytes, client, now_ms)?;
    let key_package_in = KeyPackageIn::tls_deserialize_exact(inspected.bytes).map_err(|err| {
        KeyPackageError::Undecodable {
            reason: err.to_string(),
        }
    })?;
    key_package_in
        .validate(edge_crypto(), ProtocolVersion::Mls10)
        .map_err(verify_error)?;
    Ok(ValidatedKeyPackage {
        bytes: inspected.bytes.to_vec(),
        key_package_ref: inspected.key_package_ref(),
        lifetime: inspected.lifetime,
        last_resort: inspected.last_resort,
    })
}

/// What the directory needs from one KeyPackage, borrowed from the offered bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct InspectedKeyPackage<'a> {
    /// The bare TLS `KeyPackage` (wrapper removed).
    pub(super) bytes: &'a [u8],
    pub(super) lifetime: KeyPackageLifetime,
    pub(super) last_resort: bool,
}

impl InspectedKeyPackage<'_> {
    pub(super) fn key_package_ref(&self) -> KeyPackageRef {
        KeyPackageRef::of_key_package(self.bytes)
    }
}

/// The cheap, deterministic part of validation, run by the edge and again by every replica's
/// apply: decode strictly, then check version, suite, credential, identity and lifetime.
/// Signatures are not checked here (the edge did that before proposing).
pub(super) fn inspect<'a>(
    bytes: &'a [u8],
    client: &ClientId,
    now_ms: u64,
) -> Result<InspectedKeyPackage<'a>, KeyPackageError> {
    if bytes.len() > MAX_KEY_PACKAGE_LEN {
        return Err(KeyPackageError::TooLarge { len: bytes.len() });
    }
    let decoded = decode(bytes)?;
    if decoded.version != MLS10 {
        return Err(KeyPackageError::UnsupportedProtocolVersion {
            version: decoded.version,
        });
    }
    if !SUPPORTED_CIPHERSUITES
        .iter()
        .any(|suite| *suite as u16 == decoded.ciphersuite)
    {
        return Err(KeyPackageError::UnsupportedCiphersuite {
            ciphersuite: decoded.ciphersuite,
        });
    }
    if decoded.credential_type != CREDENTIAL_BASIC {
        return Err(KeyPackageError::UnsupportedCredential {
            credential_type: decoded.credential_type,
        });
    }
    if decoded.identity != client.as_bytes() {
        return Err(KeyPackageError::IdentityMismatch);
    }
    check_lifetime(decoded.lifetime, now_ms)?;
    Ok(InspectedKeyPackage {
        bytes: decoded.key_package,
        lifetime: decoded.lifetime,
        last_resort: decoded.last_resort,
    })
}

fn check_lifetime(lifetime: KeyPackageLifetime, now_ms: u64) -> Result<(), KeyPackageError> {
    let KeyPackageLifetime {
        not_before_s,
        not_after_s,
    } = lifetime;
    let Some(lifetime_s) = not_after_s.checked_sub(not_before_s) else {
        return Err(KeyPackageError::InvertedLifetime {
            not_before_s,
            not_after_s,
        });
    };
    let max_s = MAX_KEY_PACKAGE_LIFETIME.as_secs();
    if lifetime_s > max_s {
        return Err(KeyPackageError::LifetimeTooLong { lifetime_s, max_s });
    }
    if !lifetime.has_started_at(now_ms) {
        return Err(KeyPackageError::NotYetValid {
            not_before_s,
            now_ms,
        });
    }
    if lifetime.is_expired_at(now_ms) {
        return Err(KeyPackageError::Expired {
            not_after_s,
            now_ms,
        });
    }
    Ok(())
}

fn verify_error(err: KeyPackageVerifyError) -> KeyPackageError {
    match err {
        KeyPackageVerifyError::InvalidSignature => KeyPackageError::InvalidSignature,
        KeyPackageVerifyError::InvalidLeafNodeSignature => {
            KeyPackageError::InvalidLeafNodeSignature
        }
        other => KeyPackageError::Invalid {
            reason: other.to_string(),
        },
    }
}

/// Signature verification only reads public keys; one provider instance serves every call so
/// that its RNG (unused here) is seeded once per process, not once per KeyPackage.
fn edge_crypto() -> &'static RustCrypto {
    static CRYPTO: OnceLock<RustCrypto> = OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

/// The fields of a KeyPackage the directory decides on.
#[derive(Debug, Clone, Copy)]
struct DecodedKeyPackage<'a> {
    key_package: &'a [u8],
    version: u16,
    ciphersuite: u16,
    credential_type: u16,
    identity: &'a [u8],
    lifetime: KeyPackageLifetime,
    last_resort: bool,
}

/// Decodes a bare `KeyPackage`, or an `MLSMessage` with `wire_format = mls_key_package`.
///
/// The two forms share their first two bytes (`version`), and the next two are
/// `cipher_suite` in one and `wire_format` in the other. We read `0x0005` there as the
/// key-package wire format: suite 0x0005 (P-521) is not in [`SUPPORTED_CIPHERSUITES`], so no
/// acceptable bare KeyPackage is misread. Other wire formats are not unwrapped; such messages
/// fail to decode as a KeyPackage.
fn decode(bytes: &[u8]) -> Result<DecodedKeyPackage<'_>, KeyPackageError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u16("version")?;
    let second = reader.u16("cipher_suite")?;
    let key_package = if second == WIRE_FORMAT_KEY_PACKAGE {
        if version != MLS10 {
            return Err(KeyPackageError::UnsupportedProtocolVersion { version });
        }
        reader.rest()
    } else {
        bytes
    };
    decode_bare(key_package)
}

/// RFC 9420 §10 `KeyPackage` with its §7.2 `LeafNode`; every vector is length-checked and the
/// whole input must be consumed.
fn decode_bare(key_package: &[u8]) -> Result<DecodedKeyPackage<'_>, KeyPackageError> {
    let mut reader = Reader::new(key_package);
    let version = reader.u16("version")?;
    let ciphersuite = reader.u16("cipher_suite")?;
    reader.opaque("init_key")?;
    reader.opaque("leaf_node.encryption_key")?;
    reader.opaque("leaf_node.signature_key")?;
    let credential_type = reader.u16("leaf_node.credential.credential_type")?;
    // Basic: `opaque identity<V>`; x509 and private types are also one vector in openmls.
    let identity = reader.opaque("leaf_node.credential")?;
    for field in [
        "leaf_node.capabilities.versions",
        "leaf_node.capabilities.cipher_suites",
        "leaf_node.capabilities.extensions",
        "leaf_node.capabilities.proposals",
        "leaf_node.capabilities.credentials",
    ] {
        reader.opaque(field)?;
    }
    let source = reader.u8("leaf_node.leaf_node_source")?;
    if source != LEAF_NODE_SOURCE_KEY_PACKAGE {
        return Err(KeyPackageError::NotKeyPackageLeaf {
            source_code: source,
        });
    }
    let lifetime = KeyPackageLifetime {
        not_before_s: reader.u64("leaf_node.lifetime.not_before")?,
        not_after_s: reader.u64("leaf_node.lifetime.not_after")?,
    };
    reader.opaque("leaf_node.extensions")?;
    reader.opaque("leaf_node.signature")?;
    let extensions = reader.opaque("extensions")?;
    reader.opaque("signature")?;
    if !reader.is_empty() {
        return Err(KeyPackageError::TrailingBytes {
            count: reader.rest().len(),
        });
    }
    Ok(DecodedKeyPackage {
        key_package,
        version,
        ciphersuite,
        credential_type,
        identity,
        lifetime,
        last_resort: has_last_resort(extensions)?,
    })
}

/// Scans `Extension extensions<V>` (`uint16 extension_type; opaque extension_data<V>`).
fn has_last_resort(extensions: &[u8]) -> Result<bool, KeyPackageError> {
    let last_resort = u16::from(ExtensionType::LastResort);
    let mut reader = Reader::new(extensions);
    let mut found = false;
    while !reader.is_empty() {
        let extension_type = reader.u16("extensions.extension_type")?;
        reader.opaque("extensions.extension_data")?;
        found |= extension_type == last_resort;
    }
    Ok(found)
}

/// The MLS variable-length prefix (RFC 9420 §2.1.2) of a length below 2^30.
fn varint_prefix(len: usize) -> Vec<u8> {
    // Callers hash inputs bounded by MAX_KEY_PACKAGE_LEN, far below 2^30, so the casts below
    // lose nothing.
    assert!(
        len <= MAX_KEY_PACKAGE_LEN,
        "KeyPackage length was checked by inspect"
    );
    match len {
        0..=0x3f => vec![len as u8],
        0x40..=0x3fff => (0x4000 | len as u16).to_be_bytes().to_vec(),
        _ => (0x8000_0000 | len as u32).to_be_bytes().to_vec(),
    }
}

/// A bounds-checked cursor over TLS presentation language with MLS vectors.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], KeyPackageError> {
        if self.bytes.len() < len {
            return Err(KeyPackageError::Truncated {
                field: field.into(),
            });
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], KeyPackageError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, KeyPackageError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, KeyPackageError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, KeyPackageError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// `opaque data<V>`: a 1, 2 or 4-byte length with top bits 00, 01, 10; the prefix 11 is
    /// invalid and the shortest encoding is mandatory (RFC 9420 §2.1.2).
    fn opaque(&mut self, field: &'static str) -> Result<&'a [u8], KeyPackageError> {
        let first = self.u8(field)?;
        let (len, min) = match first >> 6 {
            0 => (usize::from(first), 0),
            1 => {
                let low = self.u8(field)?;
                ((usize::from(first & 0x3f) << 8) | usize::from(low), 0x40)
            }
            2 => {
                let low: [u8; 3] = self.array(field)?;
                let len = u32::from_be_bytes([first & 0x3f, low[0], low[1], low[2]]);
                (len as usize, 0x4000)
            }
            _ => {
                return Err(KeyPackageError::InvalidLength {
                    field: field.into(),
                })
            }
        };
        if len < min {
            return Err(KeyPackageError::InvalidLength {
                field: field.into(),
            });
        }
        self.take(len, field)
    }
}
