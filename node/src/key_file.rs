//! The provider's secret keys: the key files in a node's data directory (generated on first
//! start, loaded on every later one, never replaced), and the start-up step that settles which
//! keys the node uses, the provider's replicated ones ([`settle_provider_keys`];
//! `mimid_actors::provider_keys`). Shared by the hub signing key ([`crate::hub_key`]) and the
//! franking keys ([`crate::franking`]).
//!
//! A key file is written to a temporary file (mode 0600), synced, renamed into place and the
//! directory synced, so a crash leaves either no key or the whole key. A file that is not a
//! well-formed key stops the node rather than being replaced: replacing it would silently
//! change the provider's identity (signatures made before would no longer verify). A file
//! readable by others than its owner is used, with a warning.
//!
//! Which keys a node uses (ARCHITECTURE.md "Franking, abuse reports and blocking", "Cluster"):
//! the keys are replicated state, in the shard of `PROVIDER_KEYS_SHARD_KEY`, installed first
//! writer wins. At start, after the hub is up, a node uses the keys its replica of that shard
//! holds (no quorum needed, so a restarting node whose quorum is down still signs); otherwise
//! it offers its own key files ([`local_provider_keys`]) and uses whatever the apply answers,
//! the first install's keys. A single provider that ran before keeps its keys that way, and
//! the nodes of a cluster converge on one node's. Files that differ from the replicated keys
//! are reported once, with a warning, and left as they are: they are only ever read again to
//! be offered, which changes nothing once keys are installed. Nothing rotates keys.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mimid_actors::hub::{Hub, HubError};
use mimid_actors::provider_keys::{Hex, InstalledKeys, ProviderKeys};
use mimid_cluster::ShardId;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::SignatureScheme;
use parking_lot::Mutex;
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
    #[error("{what} of the provider's replicated keys: {reason}")]
    Replicated { what: &'static str, reason: String },
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
    signing_key_from_bytes(
        &load_or_generate_signing_key_bytes(data_dir, name, what)?,
        what,
    )
}

/// The bytes of the Ed25519 key file `name` (seed then public key, checked to belong
/// together), generated and stored on first start.
pub fn load_or_generate_signing_key_bytes(
    data_dir: &Path,
    name: &str,
    what: &'static str,
) -> Result<Vec<u8>, KeyFileError> {
    load_or_generate(
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
    )
}

/// The signer of Ed25519 key bytes in the key file format (seed then public key); an error
/// ([`KeyFileError::Replicated`]) if they are not 64 bytes whose halves belong together.
pub fn signing_key_from_bytes(
    bytes: &[u8],
    what: &'static str,
) -> Result<SignatureKeyPair, KeyFileError> {
    if bytes.len() != 2 * ED25519_KEY_LEN {
        return Err(KeyFileError::Replicated {
            what,
            reason: format!(
                "{} bytes, not {} (seed and public key)",
                bytes.len(),
                2 * ED25519_KEY_LEN
            ),
        });
    }
    let (private, public) = bytes.split_at(ED25519_KEY_LEN);
    if !key_pair_matches(private, public) {
        return Err(KeyFileError::Replicated {
            what,
            reason: "the public key does not belong to the private key".into(),
        });
    }
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

/// How often the start-up step offers the keys again while their shard cannot take them.
const SETTLE_RETRY: Duration = Duration::from_millis(100);
/// How often a node still waiting for its keys says so.
const SETTLE_REPORT: Duration = Duration::from_secs(10);

/// The provider's keys as this node's key files hold them, each generated and stored on first
/// start: what the node offers when the provider has none installed yet.
pub fn local_provider_keys(data_dir: &Path) -> Result<ProviderKeys, KeyFileError> {
    let (franking_signing_key, franking_hub_key) =
        crate::franking::load_or_generate_files(data_dir)?;
    Ok(ProviderKeys {
        hub_signing_key: crate::hub_key::load_or_generate_file(data_dir)?,
        franking_signing_key,
        franking_hub_key,
    })
}

/// Whether this node knows the provider keys yet, and if not, what it waits for (its
/// `/readyz` says so). Shared between the start-up step and the readiness check.
#[derive(Clone)]
pub struct KeysStatus(Arc<Mutex<Option<String>>>);

impl Default for KeysStatus {
    fn default() -> Self {
        KeysStatus(Arc::new(Mutex::new(Some(
            "the node has not looked for them yet".into(),
        ))))
    }
}

impl KeysStatus {
    /// `Err` with the reason while the keys are not known.
    pub fn check(&self) -> Result<(), String> {
        match &*self.0.lock() {
            None => Ok(()),
            Some(reason) => Err(format!(
                "the provider keys are not known yet (groupInfo and franking wait for them): \
                 {reason}"
            )),
        }
    }

    /// The keys are not known; `reason` says why.
    pub fn waiting(&self, reason: String) {
        *self.0.lock() = Some(reason);
    }

    /// The keys are known and in use.
    pub fn known(&self) {
        *self.0.lock() = None;
    }
}

/// Why the start-up step gave up on the provider keys.
#[derive(Debug, Error)]
pub enum SettleError {
    #[error(
        "the provider keys are not known after {waited:?}: shard {shard} could not take them: \
         {reason}"
    )]
    Unavailable {
        shard: ShardId,
        waited: Duration,
        reason: HubError,
    },
}

/// Settles which keys this node uses (module docs): the keys the local replica of their
/// shard holds, or else `local` offered to the shard (first writer wins) and the keys its
/// apply answers. While the shard cannot take them (no leader yet, the leader unreachable or
/// busy, or a leader of an older release that does not know the command and refuses it) the
/// offer is repeated every 100 ms, with a log line at once and then every 10 s, until
/// `give_up` passes (`None`: until the keys are known; the caller stops the task).
///
/// Logs which keys won and warns once when they differ from `local` (the files are left
/// as they are). `status` holds the latest reason for `/readyz`; the caller marks the keys
/// known once it serves with them.
pub async fn settle_provider_keys(
    hub: &Hub,
    local: &ProviderKeys,
    status: &KeysStatus,
    give_up: Option<tokio::time::Instant>,
) -> Result<ProviderKeys, SettleError> {
    let shard = hub.provider_keys_shard();
    let started = tokio::time::Instant::now();
    let mut next_report = started;
    loop {
        if let Some(keys) = hub.provider_keys() {
            report_settled(local, &keys, false);
            return Ok(keys);
        }
        match hub.install_provider_keys(local.clone()).await {
            Ok(InstalledKeys { keys, installed }) => {
                report_settled(local, &keys, installed);
                return Ok(keys);
            }
            Err(reason) => {
                let waited = started.elapsed();
                status.waiting(format!(
                    "shard {shard} could not take this node's offer yet ({reason}), waited \
                     {waited:?}"
                ));
                let now = tokio::time::Instant::now();
                if give_up.is_some_and(|at| now >= at) {
                    return Err(SettleError::Unavailable {
                        shard,
                        waited,
                        reason,
                    });
                }
                if now >= next_report {
                    if next_report == started {
                        tracing::info!(shard, %reason, "provider keys: waiting for their shard to take this node's offer");
                    } else {
                        tracing::warn!(shard, ?waited, %reason, "provider keys: still waiting for their shard; groupInfo, franking and the client and federation APIs are not served until then");
                    }
                    next_report = now + SETTLE_REPORT;
                }
                tokio::time::sleep(SETTLE_RETRY).await;
            }
        }
    }
}

/// Logs which keys this node uses, and warns when they are not its key files'.
fn report_settled(local: &ProviderKeys, keys: &ProviderKeys, installed: bool) {
    let hub_key = Hex(keys.hub_public_key());
    let franking_key = Hex(keys.franking_public_key());
    if installed {
        tracing::info!(%hub_key, %franking_key, "provider keys: this node's key files are now the provider's replicated keys");
        return;
    }
    let differ: Vec<&str> = [
        (
            "hub_signing_key",
            keys.hub_signing_key == local.hub_signing_key,
        ),
        (
            "franking_signing_key",
            keys.franking_signing_key == local.franking_signing_key,
        ),
        (
            "franking_hub_key",
            keys.franking_hub_key == local.franking_hub_key,
        ),
    ]
    .into_iter()
    .filter_map(|(file, same)| (!same).then_some(file))
    .collect();
    if differ.is_empty() {
        tracing::info!(%hub_key, %franking_key, "provider keys: using the replicated keys, the same as this node's key files");
    } else {
        tracing::warn!(
            %hub_key, %franking_key, files = differ.join(", "),
            "provider keys: this node's key files differ from the provider's replicated keys; \
             using the replicated keys (the files are left as they are and no longer used)"
        );
    }
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
