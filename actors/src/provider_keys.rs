//! The provider's secret keys as replicated state: the hub signing key of groupInfo answers
//! (MIMI.md §5.5, protocol-06 §5.5) and the two franking keys (MIMI.md §5.3.1, protocol-06
//! §5.4.1), so that every node of a multi-node provider signs and franks with the same keys and
//! a backup carries them.
//!
//! What is replicated: [`ProviderKeys`], the private key bytes in the formats of their key
//! files in a node's data directory (`mimid-node`'s `key_file.rs`): each Ed25519 key as its
//! 32-byte seed followed by its 32-byte public key, the franking `hub_key` as 32 bytes.
//!
//! Where: in the one shard of [`PROVIDER_KEYS_SHARD_KEY`] (like the profiles and the
//! blocklist), through `Command::InstallProviderKeys`, decided in apply as **first writer
//! wins**: a shard that holds keys keeps them and answers with them, whatever the command
//! offered; a shard without keys stores the offered ones. Each node offers its own key files
//! at start (load-or-generate, so a single node that existed before keeps its keys) and uses
//! whatever the apply answers, so every node converges on the keys of the first install.
//! Offering keys is therefore idempotent: a resend after a lost answer gets the winner.
//!
//! The keys travel ahead of the shard's own snapshot bytes behind [`SNAPSHOT_MARKER`] (after
//! the node registry's prefix, `cluster_meta`), so snapshots written before this existed
//! restore unchanged, and a snapshot of a shard without keys is the same bytes as before.
//!
//! Consequences: the secrets are in the shard's Raft log, its snapshots (on disk and sent to
//! other nodes over the node-to-node transport) and every backup; those must be protected
//! like the key files (ops/runbooks/backup-restore.md). There is no rotation: an install
//! never replaces keys (MIMI.md §5.3.1: a new franking key means new rooms).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The key whose shard holds the provider keys. It cannot collide with a user's or a room's
/// key, which are `mimi://` URIs.
pub const PROVIDER_KEYS_SHARD_KEY: &[u8] = b"mimid:provider-keys";

/// Bytes of an Ed25519 key as a key file holds it: the private seed, then the public key
/// (RFC 8032 §5.1.5).
pub const SIGNING_KEY_LEN: usize = 64;

/// Bytes of the franking HMAC `hub_key` (protocol-06 §5.4.1).
pub const FRANKING_HUB_KEY_LEN: usize = 32;

/// Marks a shard snapshot that carries the provider keys. Ten `0xff` bytes are not a postcard
/// varint, so no shard snapshot without them starts with it; it differs from the node
/// registry's marker after the tenth byte.
pub const SNAPSHOT_MARKER: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'k', b'e', b'y', b's', b'/', 1,
];

/// The provider's secret keys (module docs). `Debug` shows the public halves only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderKeys {
    /// The hub signing key (file `hub_signing_key`): seed then public key.
    pub hub_signing_key: Vec<u8>,
    /// The franking signing key (file `franking_signing_key`): seed then public key.
    pub franking_signing_key: Vec<u8>,
    /// The franking HMAC `hub_key` (file `franking_hub_key`).
    pub franking_hub_key: Vec<u8>,
}

impl ProviderKeys {
    /// Whether every key has its length; the reason names the first that does not. Whether
    /// the halves of a signing key belong together is the proposer's check (it loaded them
    /// from checked files) and the user's (it builds signers from them).
    pub fn check(&self) -> Result<(), String> {
        for (what, key, expected) in [
            ("hub signing key", &self.hub_signing_key, SIGNING_KEY_LEN),
            (
                "franking signing key",
                &self.franking_signing_key,
                SIGNING_KEY_LEN,
            ),
            (
                "franking hub_key",
                &self.franking_hub_key,
                FRANKING_HUB_KEY_LEN,
            ),
        ] {
            if key.len() != expected {
                return Err(format!(
                    "provider keys: the {what} is {} bytes, not {expected}",
                    key.len()
                ));
            }
        }
        Ok(())
    }

    /// The hub signing key's public half (empty if the key is malformed).
    pub fn hub_public_key(&self) -> &[u8] {
        self.hub_signing_key
            .get(SIGNING_KEY_LEN / 2..)
            .unwrap_or(&[])
    }

    /// The franking signing key's public half, the rooms' `franking_agent` (empty if the key
    /// is malformed).
    pub fn franking_public_key(&self) -> &[u8] {
        self.franking_signing_key
            .get(SIGNING_KEY_LEN / 2..)
            .unwrap_or(&[])
    }

    /// [`SNAPSHOT_MARKER`] and `keys`, ahead of a shard's own snapshot bytes; nothing when the
    /// shard holds none.
    pub fn snapshot_prefix(keys: Option<&ProviderKeys>) -> Vec<u8> {
        let Some(keys) = keys else {
            return Vec::new();
        };
        crate::snapshot_section::encode(&SNAPSHOT_MARKER, keys)
    }

    /// Splits a shard snapshot (without the node registry's prefix) into the keys
    /// ([`Self::snapshot_prefix`]; `None` when there are none) and the rest.
    pub fn split_snapshot(snapshot: &[u8]) -> Result<(Option<ProviderKeys>, &[u8]), String> {
        let (keys, rest) = crate::snapshot_section::split::<ProviderKeys>(
            &SNAPSHOT_MARKER,
            snapshot,
            "provider keys",
        )?;
        let Some(keys) = keys else {
            return Ok((None, rest));
        };
        keys.check()
            .map_err(|reason| format!("shard snapshot: {reason}"))?;
        Ok((Some(keys), rest))
    }
}

impl fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKeys")
            .field("hub_public_key", &Hex(self.hub_public_key()))
            .field("franking_public_key", &Hex(self.franking_public_key()))
            .field("secrets", &"<redacted>")
            .finish()
    }
}

/// What an install decided (`Hub::install_provider_keys`): the provider's keys, and whether
/// they are the ones offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledKeys {
    pub keys: ProviderKeys,
    /// The offered keys were stored by this install (no keys were in place before).
    pub installed: bool,
}

/// Lower-case hex of public bytes, for logs.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// The apply of `Command::InstallProviderKeys` (first writer wins, module docs) on the keys
/// `held` by the shard: the keys in place afterwards and whether `offered` became them.
/// Malformed keys are refused, with nothing changed.
pub(crate) fn install(
    held: &mut Option<ProviderKeys>,
    offered: ProviderKeys,
) -> Result<(ProviderKeys, bool), String> {
    offered.check()?;
    match held {
        Some(keys) => Ok((keys.clone(), false)),
        None => {
            *held = Some(offered.clone());
            Ok((offered, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use mimid_cluster::StateMachine;

    use super::*;
    use crate::cluster_meta::{MetaChange, METADATA_SHARD};
    use crate::command::{Command, Stamped};
    use crate::shard::{ApplyOutput, Shards};

    /// Keys whose every private byte is `n`, `n + 1` or `n + 2` and whose public halves are
    /// those plus 0x40.
    fn keys(n: u8) -> ProviderKeys {
        let pair = |n: u8| [vec![n; 32], vec![n + 0x40; 32]].concat();
        ProviderKeys {
            hub_signing_key: pair(n),
            franking_signing_key: pair(n + 1),
            franking_hub_key: vec![n + 2; FRANKING_HUB_KEY_LEN],
        }
    }

    fn install_entry(keys: ProviderKeys) -> Vec<u8> {
        Stamped {
            ts_ms: 1,
            command: Command::InstallProviderKeys { keys },
        }
        .encode()
    }

    /// MIMI.md §5.3.1, §5.5 across nodes: the first install wins; a second one, with other
    /// keys, changes nothing and answers with the first keys; the keys survive the shard's
    /// snapshot byte for byte, and the restored shard still refuses to replace them.
    #[test]
    fn the_first_install_wins_and_survives_a_snapshot() {
        let shards = Shards::new(4);
        let shard = shards.shard_of(PROVIDER_KEYS_SHARD_KEY);
        let mut machine = shards.machine(shard);
        let empty = machine.snapshot();
        assert!(!empty.windows(16).any(|w| w == SNAPSHOT_MARKER));

        match machine.apply(1, &install_entry(keys(1))) {
            ApplyOutput::ProviderKeys {
                keys: held,
                installed,
            } => {
                assert!(installed);
                assert_eq!(held, keys(1));
            }
            other => panic!("{other:?}"),
        }
        let after_first = machine.snapshot();
        match machine.apply(2, &install_entry(keys(7))) {
            ApplyOutput::ProviderKeys {
                keys: held,
                installed,
            } => {
                assert!(!installed, "a second install changes nothing");
                assert_eq!(held, keys(1), "and answers with the keys in place");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(machine.snapshot(), after_first);
        assert_eq!(shards.get(shard).read().provider_keys(), Some(&keys(1)));

        let restored_shards = Shards::new(4);
        let mut restored = restored_shards.machine(shard);
        restored.restore(&after_first).expect("restores");
        assert_eq!(restored.snapshot(), after_first);
        assert_eq!(
            restored_shards.get(shard).read().provider_keys(),
            Some(&keys(1))
        );
        assert!(matches!(
            restored.apply(3, &install_entry(keys(9))),
            ApplyOutput::ProviderKeys { installed: false, keys: held } if held == keys(1)
        ));
        // A snapshot from before the keys existed restores as a shard without them.
        let mut old = Shards::new(4).machine(shard);
        old.restore(&empty).expect("restores");
        assert_eq!(old.snapshot(), empty);
    }

    /// Bad input never leaves partial state: malformed keys are refused by apply with the
    /// reason, and nothing changes, before or after an install.
    #[test]
    fn malformed_keys_are_refused_and_change_nothing() {
        let shards = Shards::new(4);
        let mut machine = shards.machine(shards.shard_of(PROVIDER_KEYS_SHARD_KEY));
        let before = machine.snapshot();
        let mut short = keys(1);
        short.franking_hub_key.pop();
        assert!(matches!(
            machine.apply(1, &install_entry(short.clone())),
            ApplyOutput::Rejected(reason) if reason.contains("franking hub_key is 31 bytes")
        ));
        assert_eq!(machine.snapshot(), before);
        assert!(matches!(
            machine.apply(2, &install_entry(keys(1))),
            ApplyOutput::ProviderKeys {
                installed: true,
                ..
            }
        ));
        let installed = machine.snapshot();
        let mut long = keys(3);
        long.hub_signing_key.push(0);
        assert!(matches!(
            machine.apply(3, &install_entry(long)),
            ApplyOutput::Rejected(reason) if reason.contains("hub signing key is 65 bytes")
        ));
        assert_eq!(machine.snapshot(), installed);
    }

    /// The keys' prefix comes after the node registry's when a shard holds both, and a
    /// damaged prefix is an error, not a shard without keys.
    #[test]
    fn the_keys_ride_behind_the_registry_and_a_damaged_prefix_is_refused() {
        let shards = Shards::new(1);
        let mut machine = shards.machine(METADATA_SHARD);
        let seed = MetaChange::Seed {
            nodes: vec![(1, None)],
            replication_factor: 1,
        };
        let entry = Stamped {
            ts_ms: 1,
            command: Command::ClusterMeta(seed),
        };
        assert!(matches!(
            machine.apply(1, &entry.encode()),
            ApplyOutput::ClusterMeta(Ok(true))
        ));
        machine.apply(2, &install_entry(keys(4)));
        let snapshot = machine.snapshot();
        let restored_shards = Shards::new(1);
        restored_shards
            .machine(METADATA_SHARD)
            .restore(&snapshot)
            .expect("restores");
        let data = restored_shards.get(METADATA_SHARD).read();
        assert_eq!(data.provider_keys(), Some(&keys(4)));
        assert!(data.cluster_meta().is_seeded());

        let mut truncated = SNAPSHOT_MARKER.to_vec();
        truncated.extend_from_slice(&[1, 2]);
        assert!(ProviderKeys::split_snapshot(&truncated).is_err());
        let mut malformed = ProviderKeys::snapshot_prefix(Some(&ProviderKeys {
            franking_hub_key: vec![1],
            ..keys(1)
        }));
        malformed.push(0);
        assert!(ProviderKeys::split_snapshot(&malformed)
            .unwrap_err()
            .contains("franking hub_key is 1 bytes"));
    }

    /// The command comes after `ClusterMeta`, so logs written before it decode unchanged, and
    /// it lives in the shard of the keys' documented key.
    #[test]
    fn the_install_command_is_appended_and_lives_in_the_keys_shard() {
        let command = Command::InstallProviderKeys { keys: keys(1) };
        assert_eq!(
            command.shard_key().as_deref(),
            Some(PROVIDER_KEYS_SHARD_KEY)
        );
        let stamped = Stamped { ts_ms: 1, command };
        assert_eq!(stamped.encode()[1], 20);
        assert_eq!(Stamped::decode(&stamped.encode()).unwrap(), stamped);
    }

    #[test]
    fn debug_shows_public_halves_only() {
        let shown = format!("{:?}", keys(0x10));
        assert!(shown.contains(&"50".repeat(32)), "{shown}");
        assert!(shown.contains(&"51".repeat(32)), "{shown}");
        for secret in ["10", "11", "12"] {
            assert!(!shown.contains(secret), "a private byte is shown: {shown}");
        }
        assert!(shown.contains("<redacted>"));
    }
}
