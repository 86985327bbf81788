//! RFC 9420 §5.1.2 `SignWithLabel` / `VerifyWithLabel`, as protocol-06 uses them for its
//! signed bodies (MIMI.md §3.3; `KeyMaterialRequest` of §5.1, `GroupInfoRequest` of §5.5, the
//! franking signatures of §5.3.1):
//!
//! ```text
//! SignWithLabel(SignatureKey, Label, Content) =
//!     Signature.Sign(SignatureKey, SignContent)
//! VerifyWithLabel(VerificationKey, Label, Content, SignatureValue) =
//!     Signature.Verify(VerificationKey, SignContent, SignatureValue)
//! struct {
//!     opaque label<V> = "MLS 1.0 " + Label;
//!     opaque content<V> = Content;
//! } SignContent;
//! ```
//!
//! `SignContent` is written with our own TLS-PL writer (minimal RFC 9420 §2.1.2 varints), so the
//! signed bytes do not depend on openmls internals; the tests check them against RFC 9420 and
//! against signatures openmls makes itself. Signing goes through the caller's openmls
//! [`Signer`] (a client's `SignatureKeyPair`); verification through `openmls_rust_crypto`'s
//! [`OpenMlsCrypto::verify_signature`], the crate the hub already verifies MLS messages with.
//!
//! This module checks signatures only. Which key and scheme a structure must be verified with
//! (and what the signer's credential proves) is decided by the structure's own module.

use std::sync::OnceLock;

use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::{CryptoError, SignatureScheme};
use thiserror::Error;

use super::codec::{WireError, Writer};

/// RFC 9420 §5.1.2: every label is prefixed with the protocol version string.
pub const LABEL_PREFIX: &str = "MLS 1.0 ";

/// Why a labeled signature could not be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// `SignContent` cannot be encoded (a label or content over 2^30-1 bytes).
    #[error("SignContent: {0}")]
    Encode(#[from] WireError),
    #[error("the signer failed: {0:?}")]
    Signer(SignerError),
    #[error("signature scheme {0:?} is not supported")]
    UnsupportedScheme(SignatureScheme),
    #[error("the public key ({len} bytes) is not a valid {scheme:?} key")]
    MalformedPublicKey { scheme: SignatureScheme, len: usize },
    #[error("the signature ({len} bytes) is not a well-formed {scheme:?} signature")]
    MalformedSignature { scheme: SignatureScheme, len: usize },
    #[error("the signature does not verify")]
    Invalid,
    #[error("signature verification failed: {0:?}")]
    Crypto(CryptoError),
}

impl SignatureError {
    /// A stable, machine-readable code (for HTTP reasons and metrics labels), like
    /// [`WireError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Encode(e) => e.code(),
            SignatureError::Signer(_) => "signer_failed",
            SignatureError::UnsupportedScheme(_) => "unsupported_signature_scheme",
            SignatureError::MalformedPublicKey { .. } => "malformed_signature_key",
            SignatureError::MalformedSignature { .. } => "malformed_signature",
            SignatureError::Invalid => "bad_signature",
            SignatureError::Crypto(_) => "signature_verification_failed",
        }
    }
}

/// The TLS encoding of `SignContent { "MLS 1.0 " + label, content }`: the bytes that are
/// actually signed.
pub fn sign_content(label: &str, content: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut full_label = Vec::with_capacity(LABEL_PREFIX.len() + label.len());
    full_label.extend_from_slice(LABEL_PREFIX.as_bytes());
    full_label.extend_from_slice(label.as_bytes());
    let mut w = Writer::new();
    w.opaque("SignContent.label", &full_label)?;
    w.opaque("SignContent.content", content)?;
    Ok(w.into_bytes())
}

/// `SignWithLabel(signer, label, content)` (RFC 9420 §5.1.2), with the signer's own scheme.
pub fn sign_with_label(
    signer: &impl Signer,
    label: &str,
    content: &[u8],
) -> Result<Vec<u8>, SignatureError> {
    let signed = sign_content(label, content)?;
    signer.sign(&signed).map_err(SignatureError::Signer)
}

/// `VerifyWithLabel(public_key, label, content, signature)` (RFC 9420 §5.1.2) under `scheme`.
///
/// Malformed keys and signatures are told apart from signatures that do not verify, so the
/// edge can answer "bad input" and "forged" differently.
pub fn verify_with_label(
    scheme: SignatureScheme,
    public_key: &[u8],
    label: &str,
    content: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    // openmls_rust_crypto reports both a bad Ed25519 key and a signature of the wrong length
    // as `CryptoLibraryError`; the signature length is checked here so the two stay apart.
    if scheme == SignatureScheme::ED25519 && signature.len() != ED25519_SIGNATURE_LEN {
        return Err(SignatureError::MalformedSignature {
            scheme,
            len: signature.len(),
        });
    }
    let signed = sign_content(label, content)?;
    crypto()
        .verify_signature(scheme, &signed, public_key, signature)
        .map_err(|error| match error {
            CryptoError::InvalidSignature => SignatureError::Invalid,
            CryptoError::UnsupportedSignatureScheme => SignatureError::UnsupportedScheme(scheme),
            CryptoError::CryptoLibraryError
            | CryptoError::InvalidLength
            | CryptoError::InvalidPublicKey => SignatureError::MalformedPublicKey {
                scheme,
                len: public_key.len(),
            },
            other => SignatureError::Crypto(other),
        })
}

/// The crypto provider for verification. `RustCrypto` seeds an RNG at construction, which
/// verification never uses; one instance serves every call.
fn crypto() -> &'static RustCrypto {
    static CRYPTO: OnceLock<RustCrypto> = OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

/// RFC 8032 §5.1.6: an Ed25519 signature is 64 bytes.
const ED25519_SIGNATURE_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use openmls::ciphersuite::signature::SignContent;
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::{BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage};
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    use super::*;

    const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    fn key_pair() -> SignatureKeyPair {
        SignatureKeyPair::new(SignatureScheme::ED25519).expect("Ed25519 key pair")
    }

    /// RFC 9420 §5.1.2 and §2.1.2: the label gets the "MLS 1.0 " prefix, and both fields are
    /// `opaque<V>` with minimal variable-length prefixes (1 byte up to 63, 2 bytes from 64).
    #[test]
    fn rfc9420_5_1_2_sign_content_encoding_is_known() {
        let short = sign_content("KeyMaterialRequestTBS", b"abc").unwrap();
        let mut expected = vec![29];
        expected.extend_from_slice(b"MLS 1.0 KeyMaterialRequestTBS");
        expected.push(3);
        expected.extend_from_slice(b"abc");
        assert_eq!(short, expected);

        let content = [0x5a; 300];
        let long = sign_content("X", &content).unwrap();
        let mut expected = vec![9];
        expected.extend_from_slice(b"MLS 1.0 X");
        expected.extend_from_slice(&[0x41, 0x2c]); // 0x4000 | 300
        expected.extend_from_slice(&content);
        assert_eq!(long, expected);

        let empty = sign_content("", b"").unwrap();
        assert_eq!(empty, [&[8u8][..], b"MLS 1.0 ", &[0]].concat());
    }

    /// The same bytes as openmls' own `SignContent`, across the 1-, 2- and 4-byte prefixes.
    #[test]
    fn rfc9420_5_1_2_sign_content_matches_openmls() {
        for len in [0usize, 63, 64, 16_383, 16_384] {
            let content = vec![0xa5; len];
            let ours = sign_content("KeyMaterialRequestTBS", &content).unwrap();
            let theirs = SignContent::new("KeyMaterialRequestTBS", content.into())
                .tls_serialize_detached()
                .unwrap();
            assert_eq!(ours, theirs, "content of {len} bytes");
        }
    }

    /// RFC 9420 §10: a KeyPackage is signed with `SignWithLabel(.., "KeyPackageTBS",
    /// KeyPackageTBS)`. openmls' signature over a KeyPackage it built verifies here, and ours
    /// over the same TBS is byte-identical (Ed25519 is deterministic, RFC 8032 §5.1.6).
    #[test]
    fn rfc9420_5_1_2_interoperates_with_openmls_key_package_signatures() {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(b"mimi://a.example/d/alice/phone".to_vec()).into(),
            signature_key: signer.public().into(),
        };
        let key_package = KeyPackage::builder()
            .build(SUITE, &provider, &signer, credential)
            .unwrap()
            .key_package()
            .clone();
        let bytes = key_package.tls_serialize_detached().unwrap();
        // KeyPackage = KeyPackageTBS || opaque signature<V>; a 64-byte signature has the
        // two-byte prefix 0x40 0x40.
        let (tbs, signature_field) = bytes.split_at(bytes.len() - 2 - ED25519_SIGNATURE_LEN);
        assert_eq!(signature_field[..2], [0x40, 0x40]);
        let signature = &signature_field[2..];
        let public_key = key_package.leaf_node().signature_key().as_slice();

        verify_with_label(
            SignatureScheme::ED25519,
            public_key,
            "KeyPackageTBS",
            tbs,
            signature,
        )
        .unwrap();
        assert_eq!(
            sign_with_label(&signer, "KeyPackageTBS", tbs).unwrap(),
            signature
        );
        assert_eq!(
            verify_with_label(
                SignatureScheme::ED25519,
                public_key,
                "LeafNodeTBS",
                tbs,
                signature,
            ),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn rfc9420_5_1_2_verify_rejects_tampered_content_label_and_key() {
        let signer = key_pair();
        let content = b"KeyMaterialRequestTBS bytes";
        let signature = sign_with_label(&signer, "KeyMaterialRequestTBS", content).unwrap();
        let verify = |key: &[u8], label: &str, content: &[u8], signature: &[u8]| {
            verify_with_label(SignatureScheme::ED25519, key, label, content, signature)
        };
        assert_eq!(
            verify(
                signer.public(),
                "KeyMaterialRequestTBS",
                content,
                &signature
            ),
            Ok(())
        );

        let mut tampered = content.to_vec();
        tampered[0] ^= 1;
        assert_eq!(
            verify(
                signer.public(),
                "KeyMaterialRequestTBS",
                &tampered,
                &signature
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(signer.public(), "GroupInfoRequestTBS", content, &signature),
            Err(SignatureError::Invalid)
        );
        // The label is part of what is signed, not just a prefix of the content: moving bytes
        // between the two fields changes the SignContent encoding.
        assert_eq!(
            verify(signer.public(), "KeyMaterialRequest", b"TBS", &signature),
            Err(SignatureError::Invalid)
        );
        let other = key_pair();
        assert_eq!(
            verify(other.public(), "KeyMaterialRequestTBS", content, &signature),
            Err(SignatureError::Invalid)
        );
        let mut flipped = signature.clone();
        flipped[10] ^= 0x80;
        assert_eq!(
            verify(signer.public(), "KeyMaterialRequestTBS", content, &flipped),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn rfc9420_5_1_2_verify_tells_malformed_keys_and_signatures_apart() {
        let signer = key_pair();
        let signature = sign_with_label(&signer, "L", b"c").unwrap();
        assert_eq!(
            verify_with_label(
                SignatureScheme::ED25519,
                &signer.public()[..31],
                "L",
                b"c",
                &signature
            ),
            Err(SignatureError::MalformedPublicKey {
                scheme: SignatureScheme::ED25519,
                len: 31
            })
        );
        assert_eq!(
            verify_with_label(
                SignatureScheme::ED25519,
                signer.public(),
                "L",
                b"c",
                &signature[..63]
            ),
            Err(SignatureError::MalformedSignature {
                scheme: SignatureScheme::ED25519,
                len: 63
            })
        );
        assert_eq!(
            verify_with_label(
                SignatureScheme::ED448,
                signer.public(),
                "L",
                b"c",
                &signature
            ),
            Err(SignatureError::UnsupportedScheme(SignatureScheme::ED448))
        );
        assert_eq!(SignatureError::Invalid.code(), "bad_signature");
    }
}
