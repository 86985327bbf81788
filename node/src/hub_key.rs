//! The provider's hub signing key (MIMI.md §5.5, §6.6 step 2, §6.7): an Ed25519 key with which
//! the hub signs what it says as the hub of its rooms — today the `GroupInfoResponse` of
//! protocol-06 §5.5, whose `hub_sender` carries the public key and a basic credential whose
//! identity is the provider's domain.
//!
//! The key is replicated state (`mimid_actors::provider_keys`), so every node of a provider
//! signs with the same key and a backup carries it; the node builds its [`HubKey`] from the
//! replicated bytes ([`HubKey::from_replicated`]; [`crate::key_file::settle_provider_keys`]
//! decides which). What a node offers when the provider has no key yet is its key file
//! ([`HUB_KEY_FILE`] in the data directory, mode 0600: the 32-byte private seed followed by
//! the 32-byte public key; [`crate::key_file`]), generated on first start, so a provider that
//! ran before keeps its key. A file that is not such a pair, or whose halves do not belong
//! together, stops the node rather than being replaced: replacing it would silently change
//! the hub's identity.
//!
//! Not done here: rotation, and listing the key in rooms' `external_senders` (the hub does not
//! send external proposals yet).

use std::path::Path;

use mimid_actors::provider_keys::ProviderKeys;
use openmls::prelude::{BasicCredential, ExternalSender};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

use crate::key_file::{load_or_generate_signing_key_bytes, signing_key_from_bytes, KeyFileError};
use crate::wire::{Mls, WireError};

/// The key file, relative to the data directory.
pub const HUB_KEY_FILE: &str = "hub_signing_key";

/// The hub key's scheme: the signature scheme of the only room cipher suite (MIMI.md §11).
pub const HUB_KEY_SCHEME: SignatureScheme = SignatureScheme::ED25519;

/// Why the hub key could not be loaded or made ([`crate::key_file`]).
pub type HubKeyError = KeyFileError;

/// What the key is called in messages.
const WHAT: &str = "the hub signing key";

/// The bytes of this node's key file (seed then public key), generated and stored on first
/// start: what the node offers as the provider's hub key.
pub fn load_or_generate_file(data_dir: &Path) -> Result<Vec<u8>, HubKeyError> {
    load_or_generate_signing_key_bytes(data_dir, HUB_KEY_FILE, WHAT)
}

/// The hub signing key of one provider.
pub struct HubKey {
    domain: String,
    signer: SignatureKeyPair,
}

impl HubKey {
    /// Loads the key of `domain` from this node's key file in `data_dir`, generating and
    /// storing it on first start.
    pub fn load_or_generate(data_dir: &Path, domain: &str) -> Result<HubKey, HubKeyError> {
        let bytes = load_or_generate_file(data_dir)?;
        Ok(HubKey {
            domain: domain.to_owned(),
            signer: signing_key_from_bytes(&bytes, WHAT)?,
        })
    }

    /// The key of `domain` from the provider's replicated keys; an error if the bytes are not
    /// an Ed25519 pair whose halves belong together.
    pub fn from_replicated(domain: &str, keys: &ProviderKeys) -> Result<HubKey, HubKeyError> {
        Ok(HubKey {
            domain: domain.to_owned(),
            signer: signing_key_from_bytes(&keys.hub_signing_key, WHAT)?,
        })
    }

    /// The key pair, to sign with.
    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    /// The public key.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// RFC 9420 §12.1.8.1 `ExternalSender { signature_key, credential }` of this hub: its public
    /// key and a basic credential whose identity is the provider's domain.
    pub fn external_sender(&self) -> Result<Mls<ExternalSender>, WireError> {
        Mls::from_value(ExternalSender::new(
            self.signer.public().to_vec().into(),
            BasicCredential::new(self.domain.as_bytes().to_vec()).into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_file::ED25519_KEY_LEN;
    use crate::wire::sign::{sign_with_label, verify_with_label};
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::crypto::OpenMlsCrypto;
    use std::os::unix::fs::PermissionsExt as _;

    fn generate() -> Result<(Vec<u8>, Vec<u8>), HubKeyError> {
        let (private, public) = RustCrypto::default()
            .signature_key_gen(HUB_KEY_SCHEME)
            .expect("key generation");
        assert_eq!(private.len(), ED25519_KEY_LEN);
        Ok((private, public))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// MIMI.md §5.5: the hub signs with the same key across restarts; the file is private.
    #[test]
    fn generated_once_then_loaded_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = HubKey::load_or_generate(&data, "a.example").unwrap();
        let path = data.join(HUB_KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 64);
        let again = HubKey::load_or_generate(&data, "a.example").unwrap();
        assert_eq!(first.public_key(), again.public_key());
        let signature = sign_with_label(again.signer(), "L", b"c").unwrap();
        verify_with_label(HUB_KEY_SCHEME, first.public_key(), "L", b"c", &signature).unwrap();
        assert!(!data.join(format!("{HUB_KEY_FILE}.tmp")).exists());
        let other = HubKey::load_or_generate(&dir.path().join("other"), "a.example").unwrap();
        assert_ne!(other.public_key(), first.public_key());
    }

    /// The replicated bytes are the file's bytes: a key built from them signs as the file's
    /// key; bytes whose halves do not belong together are refused.
    #[test]
    fn the_replicated_key_is_the_file_key_and_a_mismatched_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = HubKey::load_or_generate(dir.path(), "a.example").unwrap();
        let other = load_or_generate_file(&dir.path().join("other")).unwrap();
        let keys = |hub_signing_key: Vec<u8>| ProviderKeys {
            hub_signing_key,
            franking_signing_key: other.clone(),
            franking_hub_key: vec![0; 32],
        };
        let bytes = std::fs::read(dir.path().join(HUB_KEY_FILE)).unwrap();
        let replicated = HubKey::from_replicated("a.example", &keys(bytes.clone())).unwrap();
        assert_eq!(replicated.public_key(), file.public_key());
        let signature = sign_with_label(replicated.signer(), "L", b"c").unwrap();
        verify_with_label(HUB_KEY_SCHEME, file.public_key(), "L", b"c", &signature).unwrap();
        let mixed = [&bytes[..ED25519_KEY_LEN], &other[ED25519_KEY_LEN..]].concat();
        assert!(matches!(
            HubKey::from_replicated("a.example", &keys(mixed)),
            Err(HubKeyError::Replicated { .. })
        ));
        assert!(matches!(
            HubKey::from_replicated("a.example", &keys(bytes[..63].to_vec())),
            Err(HubKeyError::Replicated { .. })
        ));
    }

    #[test]
    fn external_sender_names_the_domain_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = HubKey::load_or_generate(dir.path(), "a.example").unwrap();
        let sender = key.external_sender().unwrap();
        let (public, credential) = crate::wire::group_info::hub_sender_parts(&sender).unwrap();
        assert_eq!(public.as_bytes(), key.public_key());
        assert_eq!(
            BasicCredential::try_from(credential).unwrap().identity(),
            b"a.example"
        );
    }

    /// A damaged key file stops the node instead of being replaced by a new identity.
    #[test]
    fn a_truncated_or_mismatched_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HUB_KEY_FILE);
        std::fs::write(&path, [7u8; 63]).unwrap();
        assert!(matches!(
            HubKey::load_or_generate(dir.path(), "a.example"),
            Err(HubKeyError::Length { found: 63, .. })
        ));
        let mut mismatched = generate().unwrap().0;
        mismatched.extend_from_slice(&generate().unwrap().1);
        std::fs::write(&path, mismatched).unwrap();
        assert!(matches!(
            HubKey::load_or_generate(dir.path(), "a.example"),
            Err(HubKeyError::Mismatch { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap().len(), 64, "left as it was");
    }
}
