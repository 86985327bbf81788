//! The hub's side of the provider keys (`crate::provider_keys`): an install goes through the
//! proposer to the shard of `PROVIDER_KEYS_SHARD_KEY` (forwarded to its leader when another
//! node leads it); the keys in place are read from the local replica of that shard.

use mimid_cluster::ShardId;

use super::{unexpected, Hub, HubError};
use crate::command::Command;
use crate::provider_keys::{InstalledKeys, ProviderKeys, PROVIDER_KEYS_SHARD_KEY};
use crate::shard::ApplyOutput;

impl Hub {
    /// The shard that holds the provider keys.
    pub fn provider_keys_shard(&self) -> ShardId {
        self.shards.shard_of(PROVIDER_KEYS_SHARD_KEY)
    }

    /// The provider keys as this node's replica holds them (local read, no quorum needed);
    /// `None` before they are installed or before the replica has caught up.
    pub fn provider_keys(&self) -> Option<ProviderKeys> {
        self.shards
            .get(self.provider_keys_shard())
            .read()
            .provider_keys()
            .cloned()
    }

    /// Offers `keys` as the provider's keys and resolves with the keys in place after the
    /// apply: `keys` if none were installed, the first install's otherwise (first writer
    /// wins). `Err` when the shard could not take it (no leader, busy, the leader
    /// unreachable: retry), or `HubError::Rejected` for malformed keys.
    ///
    /// Cancel safety: safe to drop; the keys may still be installed, and offering them again
    /// answers with whichever keys won.
    pub async fn install_provider_keys(
        &self,
        keys: ProviderKeys,
    ) -> Result<InstalledKeys, HubError> {
        match self
            .proposer
            .propose_to(
                self.provider_keys_shard(),
                Command::InstallProviderKeys { keys },
            )
            .await?
        {
            ApplyOutput::ProviderKeys { keys, installed } => Ok(InstalledKeys { keys, installed }),
            other => Err(unexpected(other)),
        }
    }
}
