//! The provider's secret key files in the data directory: generated on first start, loaded on
//! every later one, never replaced. Shared by the hub signing key ([`crate::hub_key`]) and the
//! franking keys ([`crate::franking`]).
//!
//! A key file is written to a temporary file (mode 0600), synced, renamed into place and the
//! directory synced, so a crash leaves either no key or the whole key. A file that is not a
//! well-formed key stops the node rather than being replaced: replacing it would silently
//! change the provider's identity (signatures made before would no longer verify). A file
//! readable by others than its owner is used, with a warning.
//!
//! Every node of a multi-node provider must be given the same key files (copy them before
//! the other nodes first start); a backup does not contain them (ops/runbooks/backup-restore.md).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::SignatureScheme;
use thiserror::Error;

use crate::wire::sign::{sign_with_label, verify_with_label};

/// Bytes of an Ed25519 private seed and of a public key (RFC 8032 §5.1.5).
pub const ED25519_KEY_LEN: usize = 32;
const KEY_FILE_MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected {expected} bytes ({what}), found {found}")]
    Length {
        path: PathBuf,
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{path}: the public key does not belong to the private key")]
    Mismatch { path: PathBuf },
    #[error("generating {what}: {reason}")]
    Generate { what: &'static str, reason: String },
}

/// Loads the key file `name` in `data_dir`, or, when there is none, stores what `generate`
/// makes and returns that. `what` names the key in messages; a file must be exactly
/// `expected_len` bytes, and `check` may refuse its content further.
pub fn load_or_generate(
    data_dir: &Path,
    name: &str,
    what: &'static str,
    expected_len: usize,
    generate: impl FnOnce() -> Result<Vec<u8>, KeyFileError>,
    check: impl FnOnce(&Path, &[u8]) -> Result<(), KeyFileError>,
) -> Result<Vec<u8>, KeyFileError> {
    let path = data_dir.join(name);
    let io = |source| KeyFileError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "{what} is readable by others than its owner");
            }
            if bytes.len() != expected_len {
                return Err(KeyFileError::Length {
                    path,
                    what,
                    expected: expected_len,
                    found: bytes.len(),
                });
            }
            check(&path, &bytes)?;
            Ok(bytes)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let bytes = generate()?;
            debug_assert_eq!(bytes.len(), expected_len);
            store(data_dir, name, &bytes)?;
            tracing::info!(path = %path.display(), "generated {what}");
            Ok(bytes)
        }
        Err(err) => Err(io(err)),
    }
}

/// An Ed25519 signing key kept as file `name` (the 32-byte private seed followed by the
/// 32-byte public key), generated on first start.
pub fn load_or_generate_signing_key(
    data_dir: &Path,
    name: &str,
    what: &'static str,
) -> Result<SignatureKeyPair, KeyFileError> {
    let bytes = load_or_generate(
        data_dir,
        name,
        what,
        2 * ED25519_KEY_LEN,
        || {
            let (private, public) = RustCrypto::default()
                .signature_key_gen(SignatureScheme::ED25519)
                .map_err(|e| KeyFileError::Generate {
                    what,
                    reason: format!("{e:?}"),
                })?;
            Ok([private, public].concat())
        },
        |path, bytes| {
            let (private, public) = bytes.split_at(ED25519_KEY_LEN);
            if key_pair_matches(private, public) {
                Ok(())
            } else {
                Err(KeyFileError::Mismatch {
                    path: path.to_owned(),
                })
            }
        },
    )?;
    let (private, public) = bytes.split_at(ED25519_KEY_LEN);
    Ok(SignatureKeyPair::from_raw(
        SignatureScheme::ED25519,
        private.to_vec(),
        public.to_vec(),
    ))
}

/// Whether what the private Ed25519 key signs verifies under the public one.
fn key_pair_matches(private: &[u8], public: &[u8]) -> bool {
    let signer =
        SignatureKeyPair::from_raw(SignatureScheme::ED25519, private.to_vec(), public.to_vec());
    let probe = b"mimid key check";
    sign_with_label(&signer, "KeyCheck", probe)
        .and_then(|signature| {
            verify_with_label(
                SignatureScheme::ED25519,
                public,
                "KeyCheck",
                probe,
                &signature,
            )
        })
        .is_ok()
}

/// Writes the key to a temporary file (0600), syncs it, renames it into place and syncs the
/// directory.
fn store(data_dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyFileError::Io { path, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(data_dir))?;
    let path = data_dir.join(name);
    let temporary = data_dir.join(format!("{name}.tmp"));
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
    file.write_all(bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
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

    #[test]
    fn a_key_file_is_generated_once_private_and_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut calls = 0;
        let mut make = || {
            calls += 1;
            Ok(vec![9; 16])
        };
        let first =
            load_or_generate(&data, "k", "a test key", 16, &mut make, |_, _| Ok(())).unwrap();
        let again =
            load_or_generate(&data, "k", "a test key", 16, &mut make, |_, _| Ok(())).unwrap();
        assert_eq!(first, again);
        assert_eq!(calls, 1, "generated once");
        assert_eq!(mode(&data.join("k")), 0o600);
        assert!(!data.join("k.tmp").exists());
        assert!(matches!(
            load_or_generate(
                &data,
                "k",
                "a test key",
                17,
                || unreachable!(),
                |_, _| Ok(())
            ),
            Err(KeyFileError::Length {
                expected: 17,
                found: 16,
                ..
            })
        ));
    }

    #[test]
    fn a_signing_key_with_mismatched_halves_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_generate_signing_key(dir.path(), "sig", "a signing key").unwrap();
        let reloaded = load_or_generate_signing_key(dir.path(), "sig", "a signing key").unwrap();
        assert_eq!(key.public(), reloaded.public());
        let other = load_or_generate_signing_key(&dir.path().join("o"), "sig", "x").unwrap();
        let mut mixed = std::fs::read(dir.path().join("sig")).unwrap();
        mixed[ED25519_KEY_LEN..].copy_from_slice(other.public());
        std::fs::write(dir.path().join("sig"), &mixed).unwrap();
        assert!(matches!(
            load_or_generate_signing_key(dir.path(), "sig", "a signing key"),
            Err(KeyFileError::Mismatch { .. })
        ));
        assert_eq!(std::fs::read(dir.path().join("sig")).unwrap(), mixed);
    }
}
