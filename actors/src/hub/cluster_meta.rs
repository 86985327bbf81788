//! The hub's side of the node registry (`crate::cluster_meta`): changes go through the
//! proposer to shard 0, the metadata shard (forwarded to its leader when another node leads
//! it), and reads come from the local replica of shard 0.

use super::{unexpected, Hub, HubError};
use crate::cluster_meta::{ClusterMeta, MetaChange, MetaRefusal, METADATA_SHARD};
use crate::command::Command;
use crate::shard::ApplyOutput;
use crate::shard_descriptors::{DescriptorRefusal, ShardDescriptor, ShardDescriptors};

impl Hub {
    /// Proposes `change` to the node registry and resolves with its apply's verdict:
    /// `Ok(true)` changed, `Ok(false)` already so, or the refusal (which changed nothing).
    /// `Err` when shard 0 could not take it (no leader, busy, the leader unreachable).
    ///
    /// The verdict comes once the local replica of shard 0 applied the change too (a read
    /// barrier when another node leads shard 0), so [`Hub::cluster_meta`] then shows it; if
    /// the barrier cannot complete, the verdict comes anyway and the local read may lag.
    ///
    /// Cancel safety: safe to drop; the change may still be applied.
    pub async fn change_cluster_meta(
        &self,
        change: MetaChange,
    ) -> Result<Result<bool, MetaRefusal>, HubError> {
        let verdict = match self
            .proposer
            .propose_to(METADATA_SHARD, Command::ClusterMeta(change))
            .await?
        {
            ApplyOutput::ClusterMeta(result) => result,
            other => return Err(unexpected(other)),
        };
        if !self.proposer.leads(METADATA_SHARD) {
            if let Err(e) = self.proposer.read_barrier(METADATA_SHARD).await {
                tracing::debug!(error = %e, "the local registry may lag the change");
            }
        }
        Ok(verdict)
    }

    /// The node registry as this node's replica of shard 0 holds it (at most a heartbeat behind
    /// the leader's; empty on a node that holds no replica of shard 0 yet).
    pub fn cluster_meta(&self) -> ClusterMeta {
        self.shards
            .get(METADATA_SHARD)
            .read()
            .cluster_meta()
            .clone()
    }

    /// Proposes a shard descriptor to shard 0 and resolves with its apply's verdict
    /// (`shard_descriptors` module docs): `Ok(true)` recorded, `Ok(false)` held already, or
    /// the refusal (a stale or malformed record, which changed nothing). Each shard's leader
    /// records its own on its own; this is for tools and tests.
    ///
    /// Cancel safety: safe to drop; the record may still be applied.
    pub async fn record_shard_descriptor(
        &self,
        descriptor: ShardDescriptor,
    ) -> Result<Result<bool, DescriptorRefusal>, HubError> {
        match self
            .proposer
            .propose_to(METADATA_SHARD, Command::RecordShardDescriptor(descriptor))
            .await?
        {
            ApplyOutput::ShardDescriptor(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Where every shard lives as their leaders recorded it in shard 0
    /// (`shard_descriptors` module docs), as this node's replica of shard 0 holds it.
    pub fn shard_descriptors(&self) -> ShardDescriptors {
        self.shards
            .get(METADATA_SHARD)
            .read()
            .shard_descriptors()
            .clone()
    }
}
