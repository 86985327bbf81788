//! A seeded openmls provider, so a simulated client produces the same MLS bytes for the same
//! seed (STYLE.md P2: randomness is an input).
//!
//! `openmls_rust_crypto::OpenMlsRustCrypto` cannot be seeded: its RNG is seeded from the OS,
//! its Ed25519 key generation draws from that RNG, and HPKE encapsulation (RFC 9180 §4.1
//! `Encap`) builds a fresh `hpke-rs` context whose PRNG is seeded from the OS as well (the only
//! seeding hook is a test feature of `hpke-rs-rust-crypto` that would be unified into the
//! production build). [`SimProvider`] therefore:
//!
//! * draws `OpenMlsRand` randomness from a ChaCha20 stream seeded by the caller;
//! * generates Ed25519 signature keys from that stream ([`SimProvider::signature_key_pair`]);
//! * implements the sender side of HPKE base mode (RFC 9180 §5.1, DHKEM(X25519, HKDF-SHA256),
//!   HKDF-SHA256, AES-128-GCM, the only ciphersuite mimid rooms use) with an ephemeral key
//!   *derived* from the seed and the call's inputs rather than drawn from a stream. openmls
//!   encrypts an UpdatePath's path secrets on rayon worker threads, so a shared stream would be
//!   consumed in a scheduling-dependent order; a derivation from the inputs is not.
//!
//! Everything else (hashing, HKDF, AEAD, signatures, HPKE decryption) is delegated to
//! `RustCrypto`, whose own RNG is never consulted. Receivers decrypt with the real `hpke-rs`
//! implementation, so a mistake here shows up as a failed Welcome or commit, and the unit test
//! below checks the round trip directly.
//!
//! Test use only: deriving HPKE ephemeral keys from the plaintext is not what a deployed client
//! may do.

use std::sync::Mutex;

use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_crypto::HpkeCrypto;
use hpke_rs_rust_crypto::HpkeRustCrypto;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{MemoryStorage, RandError, RustCrypto};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext,
    HpkeConfig, HpkeKdfType, HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};
use openmls_traits::OpenMlsProvider;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use tls_codec::SecretVLBytes;

/// An `OpenMlsProvider` whose every random choice follows from its seed.
pub struct SimProvider {
    crypto: SimCrypto,
    storage: MemoryStorage,
}

impl SimProvider {
    pub fn new(seed: [u8; 32]) -> Self {
        SimProvider {
            crypto: SimCrypto {
                inner: RustCrypto::default(),
                stream: Mutex::new(ChaCha20Rng::from_seed(seed)),
                hpke_secret: Sha256::new()
                    .chain_update(HPKE_SECRET_LABEL)
                    .chain_update(seed)
                    .finalize()
                    .into(),
            },
            storage: MemoryStorage::default(),
        }
    }

    /// An Ed25519 signature key pair drawn from the seeded stream.
    pub fn signature_key_pair(&self) -> Result<SignatureKeyPair, CryptoError> {
        let (private, public) = self.crypto.signature_key_gen(SignatureScheme::ED25519)?;
        Ok(SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            private,
            public,
        ))
    }
}

impl OpenMlsProvider for SimProvider {
    type CryptoProvider = SimCrypto;
    type RandProvider = SimCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    fn crypto(&self) -> &SimCrypto {
        &self.crypto
    }

    fn rand(&self) -> &SimCrypto {
        &self.crypto
    }
}

/// The crypto and randomness half of [`SimProvider`].
pub struct SimCrypto {
    inner: RustCrypto,
    stream: Mutex<ChaCha20Rng>,
    /// Keys the derivation of HPKE ephemeral keys, so two providers never derive the same one.
    hpke_secret: [u8; 32],
}

impl SimCrypto {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandError> {
        let mut stream = self.stream.lock().map_err(|_| RandError::LockPoisoned)?;
        stream.fill_bytes(out);
        Ok(())
    }

    /// RFC 9180 §4.1 `Encap` with an ephemeral key derived (`DeriveKeyPair`, §7.1.3) from
    /// `context`, followed by the base-mode key schedule (§5.1). Returns `enc` and the context.
    fn setup_sender(
        &self,
        config: &HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        context: &[&[u8]],
    ) -> Result<(KemOutput, SenderContext), CryptoError> {
        check_config(config)?;
        let mut ikm = Sha256::new().chain_update(self.hpke_secret);
        for part in context {
            ikm.update((part.len() as u64).to_be_bytes());
            ikm.update(part);
        }
        let ephemeral = self
            .inner
            .derive_hpke_keypair(HpkeConfig(config.0, config.1, config.2), &ikm.finalize())?;
        let dh = HpkeRustCrypto::dh(KEM, pk_r, &ephemeral.private)
            .map_err(|_| CryptoError::InvalidPublicKey)?;
        let enc = ephemeral.public;
        let kem_context = [enc.as_slice(), pk_r].concat();
        let kem_suite = [b"KEM".as_slice(), &KEM_ID].concat();
        let eae_prk = labeled_extract(&kem_suite, b"", b"eae_prk", &dh)?;
        let shared_secret =
            labeled_expand(&kem_suite, &eae_prk, b"shared_secret", &kem_context, NH)?;

        let suite = [b"HPKE".as_slice(), &KEM_ID, &KDF_ID, &AEAD_ID].concat();
        let psk_id_hash = labeled_extract(&suite, b"", b"psk_id_hash", b"")?;
        let info_hash = labeled_extract(&suite, b"", b"info_hash", info)?;
        let key_schedule_context = [&[MODE_BASE][..], &psk_id_hash, &info_hash].concat();
        let secret = labeled_extract(&suite, &shared_secret, b"secret", b"")?;
        Ok((
            enc,
            SenderContext {
                key: labeled_expand(&suite, &secret, b"key", &key_schedule_context, NK)?,
                base_nonce: labeled_expand(
                    &suite,
                    &secret,
                    b"base_nonce",
                    &key_schedule_context,
                    NN,
                )?,
                exporter_secret: labeled_expand(
                    &suite,
                    &secret,
                    b"exp",
                    &key_schedule_context,
                    NH,
                )?,
                suite,
            },
        ))
    }
}

/// The secrets of an HPKE sender context (RFC 9180 §5.1) right after setup.
struct SenderContext {
    key: Vec<u8>,
    base_nonce: Vec<u8>,
    exporter_secret: Vec<u8>,
    suite: Vec<u8>,
}

impl OpenMlsRand for SimCrypto {
    type Error = RandError;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], RandError> {
        let mut out = [0; N];
        self.fill(&mut out)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, RandError> {
        let mut out = vec![0; len];
        self.fill(&mut out)?;
        Ok(out)
    }
}

impl OpenMlsCrypto for SimCrypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if ciphersuite == SUPPORTED {
            Ok(())
        } else {
            Err(CryptoError::UnsupportedCiphersuite)
        }
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        vec![SUPPORTED]
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    /// Ed25519 only: the private key is 32 bytes from the seeded stream (RFC 8032 §5.1.5).
    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let mut private = [0; 32];
        self.fill(&mut private)
            .map_err(|_| CryptoError::InsufficientRandomness)?;
        let public = ed25519_dalek::SigningKey::from_bytes(&private)
            .verifying_key()
            .to_bytes();
        Ok((private.to_vec(), public.to_vec()))
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner.verify_signature(alg, data, pk, signature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sign(alg, data, key)
    }

    /// RFC 9180 §6.1 `SealBase`: one message, so the nonce is the base nonce (sequence 0).
    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        let (enc, context) = self.setup_sender(&config, pk_r, info, &[pk_r, info, aad, ptxt])?;
        let ciphertext =
            HpkeRustCrypto::aead_seal(AEAD, &context.key, &context.base_nonce, aad, ptxt)
                .map_err(|_| CryptoError::HpkeEncryptionError)?;
        Ok(HpkeCiphertext {
            kem_output: enc.into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.hpke_open(config, input, sk_r, info, aad)
    }

    /// RFC 9180 §6.2 single-shot export on the sender side (MLS external init, RFC 9420 §8.3).
    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        let length = (exporter_length as u64).to_be_bytes();
        let (enc, context) = self.setup_sender(
            &config,
            pk_r,
            info,
            &[pk_r, info, exporter_context, &length],
        )?;
        let exported = labeled_expand(
            &context.suite,
            &context.exporter_secret,
            b"sec",
            exporter_context,
            exporter_length,
        )
        .map_err(|_| CryptoError::ExporterError)?;
        Ok((enc, exported.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.inner.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.inner.derive_hpke_keypair(config, ikm)
    }
}

fn check_config(config: &HpkeConfig) -> Result<(), CryptoError> {
    match config {
        HpkeConfig(HpkeKemType::DhKem25519, HpkeKdfType::HkdfSha256, HpkeAeadType::AesGcm128) => {
            Ok(())
        }
        _ => Err(CryptoError::UnsupportedCiphersuite),
    }
}

/// RFC 9180 §4 `LabeledExtract`.
fn labeled_extract(
    suite: &[u8],
    salt: &[u8],
    label: &[u8],
    ikm: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let labeled_ikm = [HPKE_VERSION, suite, label, ikm].concat();
    HpkeRustCrypto::kdf_extract(KDF, salt, &labeled_ikm)
        .map_err(|_| CryptoError::CryptoLibraryError)
}

/// RFC 9180 §4 `LabeledExpand`.
fn labeled_expand(
    suite: &[u8],
    prk: &[u8],
    label: &[u8],
    info: &[u8],
    length: usize,
) -> Result<Vec<u8>, CryptoError> {
    let encoded_length = u16::try_from(length).map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
    let labeled_info = [
        &encoded_length.to_be_bytes()[..],
        HPKE_VERSION,
        suite,
        label,
        info,
    ]
    .concat();
    HpkeRustCrypto::kdf_expand(KDF, prk, &labeled_info, length)
        .map_err(|_| CryptoError::HkdfOutputLengthInvalid)
}

/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (RFC 9420 §17.1), mimid's room ciphersuite.
const SUPPORTED: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const KEM: KemAlgorithm = KemAlgorithm::DhKem25519;
const KDF: KdfAlgorithm = KdfAlgorithm::HkdfSha256;
const AEAD: AeadAlgorithm = AeadAlgorithm::Aes128Gcm;
/// RFC 9180 §7.1, §7.2, §7.3 identifiers of the three algorithms above.
const KEM_ID: [u8; 2] = [0x00, 0x20];
const KDF_ID: [u8; 2] = [0x00, 0x01];
const AEAD_ID: [u8; 2] = [0x00, 0x01];
/// RFC 9180 §5: `mode_base`.
const MODE_BASE: u8 = 0x00;
/// Output sizes of HKDF-SHA256 (`Nh`, also DHKEM's `Nsecret`), AES-128-GCM key and nonce.
const NH: usize = 32;
const NK: usize = 16;
const NN: usize = 12;
const HPKE_VERSION: &[u8] = b"HPKE-v1";
const HPKE_SECRET_LABEL: &[u8] = b"mimid simulation HPKE ephemeral keys";

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HpkeConfig {
        HpkeConfig(
            HpkeKemType::DhKem25519,
            HpkeKdfType::HkdfSha256,
            HpkeAeadType::AesGcm128,
        )
    }

    /// RFC 9180 §5.1: what the seeded sender seals, the real `hpke-rs` receiver opens, and
    /// both sides export the same secret.
    #[test]
    fn rfc9180_seal_and_export_interoperate_with_hpke_rs() {
        let sender = SimProvider::new([7; 32]);
        let real = RustCrypto::default();
        let receiver = real.derive_hpke_keypair(config(), &[9; 32]).unwrap();

        let sealed = sender
            .crypto()
            .hpke_seal(config(), &receiver.public, b"info", b"aad", b"secret")
            .unwrap();
        let opened = real
            .hpke_open(config(), &sealed, &receiver.private, b"info", b"aad")
            .unwrap();
        assert_eq!(opened, b"secret");
        assert!(real
            .hpke_open(config(), &sealed, &receiver.private, b"other", b"aad")
            .is_err());

        let (enc, exported) = sender
            .crypto()
            .hpke_setup_sender_and_export(config(), &receiver.public, b"info", b"ctx", 32)
            .unwrap();
        let received = real
            .hpke_setup_receiver_and_export(config(), &enc, &receiver.private, b"info", b"ctx", 32)
            .unwrap();
        assert_eq!(&exported[..], &received[..]);
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let bytes = |seed: u8| {
            let provider = SimProvider::new([seed; 32]);
            let receiver = provider
                .crypto()
                .derive_hpke_keypair(config(), &[1; 32])
                .unwrap();
            let sealed = provider
                .crypto()
                .hpke_seal(config(), &receiver.public, b"i", b"a", b"p")
                .unwrap();
            let random: [u8; 16] = provider.rand().random_array().unwrap();
            let key = provider.signature_key_pair().unwrap();
            (
                sealed.kem_output.as_slice().to_vec(),
                random,
                key.public().to_vec(),
            )
        };
        assert_eq!(bytes(1), bytes(1));
        assert_ne!(bytes(1), bytes(2));
    }

    #[test]
    fn other_ciphersuites_are_refused_not_served_nondeterministically() {
        let provider = SimProvider::new([0; 32]);
        let p256 = HpkeConfig(
            HpkeKemType::DhKemP256,
            HpkeKdfType::HkdfSha256,
            HpkeAeadType::AesGcm128,
        );
        assert_eq!(
            provider
                .crypto()
                .hpke_seal(p256, &[4; 65], b"", b"", b"x")
                .unwrap_err(),
            CryptoError::UnsupportedCiphersuite
        );
        assert_eq!(
            provider
                .crypto()
                .signature_key_gen(SignatureScheme::ECDSA_SECP256R1_SHA256)
                .unwrap_err(),
            CryptoError::UnsupportedSignatureScheme
        );
    }
}
