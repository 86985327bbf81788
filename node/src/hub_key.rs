//! The provider's hub signing key (MIMI.md §5.5, §6.6 step 2, §6.7): an Ed25519 key with which
//! the hub signs what it says as the hub of its rooms — today the `GroupInfoResponse` of
//! protocol-06 §5.5, whose `hub_sender` carries the public key and a basic credential whose
//! identity is the provider's domain.
//!
//! The key is generated on first start and kept in the data directory ([`HUB_KEY_FILE`], mode
//! 0600: the 32-byte private seed followed by the 32-byte public key), so that answers signed
//! before and after a restart verify under the same key. A file that is not such a pair, or
//! whose halves do not belong together, stops the node rather than being replaced: replacing
//! it would silently change the hub's identity.
//!
//! Not done here: rotation, and listing the key in rooms' `external_senders` (the hub does not
//! send external proposals yet).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use openmls::prelude::{BasicCredential, ExternalSender};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::SignatureScheme;
use thiserror::Error;

use crate::wire::sign::{sign_with_label, verify_with_label};
use crate::wire::{Mls, WireError};

/// The key file, relative to the data directory.
pub const HUB_KEY_FILE: &str = "hub_signing_key";

/// The hub key's scheme: the signature scheme of the only room cipher suite (MIMI.md §11).
pub const HUB_KEY_SCHEME: SignatureScheme = SignatureScheme::ED25519;

/// Bytes of an Ed25519 private seed and of a public key (RFC 8032 §5.1.5).
const ED25519_KEY_LEN: usize = 32;
const KEY_FILE_MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum HubKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected {expected} bytes (Ed25519 seed and public key), found {found}")]
    Length {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{path}: the public key does not belong to the private key")]
    Mismatch { path: PathBuf },
    #[error("generating the hub key: {0:?}")]
    Generate(openmls_traits::types::CryptoError),
}

/// The hub signing key of one provider.
pub struct HubKey {
    domain: String,
    signer: SignatureKeyPair,
}

impl HubKey {
    /// Loads the key of `domain` from `data_dir`, generating and storing it on first start.
    pub fn load_or_generate(data_dir: &Path, domain: &str) -> Result<HubKey, HubKeyError> {
        let path = data_dir.join(HUB_KEY_FILE);
        let io = |source| HubKeyError::Io {
            path: path.clone(),
            source,
        };
        let signer = match std::fs::read(&path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the hub signing key is readable by others than its owner");
                }
                parse(&path, &bytes)?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let (private, public) = generate()?;
                store(data_dir, &path, &private, &public)?;
                tracing::info!(path = %path.display(), "generated the hub signing key");
                SignatureKeyPair::from_raw(HUB_KEY_SCHEME, private, public)
            }
            Err(err) => return Err(io(err)),
        };
        Ok(HubKey {
            domain: domain.to_owned(),
            signer,
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

/// A fresh Ed25519 key: (private seed, public key).
fn generate() -> Result<(Vec<u8>, Vec<u8>), HubKeyError> {
    let (private, public) = RustCrypto::default()
        .signature_key_gen(HUB_KEY_SCHEME)
        .map_err(HubKeyError::Generate)?;
    debug_assert_eq!(
        (private.len(), public.len()),
        (ED25519_KEY_LEN, ED25519_KEY_LEN)
    );
    Ok((private, public))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<SignatureKeyPair, HubKeyError> {
    if bytes.len() != 2 * ED25519_KEY_LEN {
        return Err(HubKeyError::Length {
            path: path.to_owned(),
            expected: 2 * ED25519_KEY_LEN,
            found: bytes.len(),
        });
    }
    let (private, public) = bytes.split_at(ED25519_KEY_LEN);
    let signer = SignatureKeyPair::from_raw(HUB_KEY_SCHEME, private.to_vec(), public.to_vec());
    // The halves belong together if what the private key signs verifies under the public one.
    let probe = b"mimid hub key check";
    let matches = sign_with_label(&signer, "HubKeyCheck", probe)
        .and_then(|signature| {
            verify_with_label(HUB_KEY_SCHEME, public, "HubKeyCheck", probe, &signature)
        })
        .is_ok();
    if !matches {
        return Err(HubKeyError::Mismatch {
            path: path.to_owned(),
        });
    }
    Ok(signer)
}

/// Writes the key to a temporary file (0600), syncs it, renames it into place and syncs the
/// directory, so a crash leaves either no key or the whole key.
fn store(data_dir: &Path, path: &Path, private: &[u8], public: &[u8]) -> Result<(), HubKeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| HubKeyError::Io { path, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(data_dir))?;
    let temporary = data_dir.join(format!("{HUB_KEY_FILE}.tmp"));
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(&temporary)(err)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_FILE_MODE)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(&[private, public].concat())
        .map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))?;
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

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
