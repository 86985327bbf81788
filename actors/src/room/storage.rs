//! The in-memory `PublicStorageProvider` behind a room's openmls `PublicGroup`.
//!
//! openmls writes the whole public group state (tree, GroupContext, interim transcript hash,
//! confirmation tag) through its storage trait on `from_external` and on every `merge_commit`,
//! and reads it back only in `PublicGroup::load` (floors.md pitfall 4). The room keeps that state
//! in memory and serialises it into Raft snapshots; this store is the bridge: an ordered map of
//! byte keys to serde_json values (the encoding openmls_memory_storage uses for the same types),
//! so that `PublicGroup::load` can restore a group from snapshot bytes.
//!
//! Keys are a one-byte label followed by the serde_json form of the group id. The proposal queue
//! is one value (the ordered list of `(reference, proposal)` pairs), so that insertion order
//! survives a snapshot. The map is a `BTreeMap`, so [`HubStorage::entries`] is deterministic.
//!
//! Interior mutability is a `parking_lot::Mutex` because openmls writes through `&self`; the room
//! is driven by one thread, so the lock is never contended.

use std::collections::BTreeMap;

use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{traits, Entity, Key, CURRENT_VERSION};
use parking_lot::Mutex;
use serde::Serialize;
use thiserror::Error;

const TREE: u8 = 1;
const CONTEXT: u8 = 2;
const INTERIM_TRANSCRIPT_HASH: u8 = 3;
const CONFIRMATION_TAG: u8 = 4;
const PROPOSAL_QUEUE: u8 = 5;

/// A value could not be encoded or decoded.
#[derive(Debug, Error)]
#[error("public group storage: {0}")]
pub struct StorageError(#[from] serde_json::Error);

/// The byte-map store of one room's public group.
#[derive(Debug, Default)]
pub struct HubStorage {
    entries: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl HubStorage {
    /// Restores a store from [`HubStorage::entries`].
    pub fn from_entries(entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        HubStorage {
            entries: Mutex::new(entries),
        }
    }

    /// A copy of all entries, in key order.
    pub fn entries(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.entries.lock().clone()
    }

    fn write<G: Key<CURRENT_VERSION>, V: Serialize>(
        &self,
        label: u8,
        group_id: &G,
        value: &V,
    ) -> Result<(), StorageError> {
        let key = key(label, group_id)?;
        let value = serde_json::to_vec(value)?;
        self.entries.lock().insert(key, value);
        Ok(())
    }

    fn read<G: Key<CURRENT_VERSION>, V: Entity<CURRENT_VERSION>>(
        &self,
        label: u8,
        group_id: &G,
    ) -> Result<Option<V>, StorageError> {
        let key = key(label, group_id)?;
        let entries = self.entries.lock();
        entries
            .get(&key)
            .map(|bytes| serde_json::from_slice(bytes))
            .transpose()
            .map_err(StorageError::from)
    }

    fn delete<G: Key<CURRENT_VERSION>>(&self, label: u8, group_id: &G) -> Result<(), StorageError> {
        let key = key(label, group_id)?;
        self.entries.lock().remove(&key);
        Ok(())
    }

    fn proposal_queue<G: Key<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Vec<(serde_json::Value, serde_json::Value)>, StorageError> {
        let key = key(PROPOSAL_QUEUE, group_id)?;
        let entries = self.entries.lock();
        match entries.get(&key) {
            Some(bytes) => Ok(serde_json::from_slice(bytes)?),
            None => Ok(Vec::new()),
        }
    }
}

fn key<G: Key<CURRENT_VERSION>>(label: u8, group_id: &G) -> Result<Vec<u8>, StorageError> {
    let mut key = vec![label];
    serde_json::to_writer(&mut key, group_id)?;
    Ok(key)
}

impl PublicStorageProvider<CURRENT_VERSION> for HubStorage {
    type PublicError = StorageError;

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::PublicError> {
        self.write(TREE, group_id, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::PublicError> {
        self.write(INTERIM_TRANSCRIPT_HASH, group_id, interim_transcript_hash)
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::PublicError> {
        self.write(CONTEXT, group_id, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::PublicError> {
        self.write(CONFIRMATION_TAG, group_id, confirmation_tag)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::PublicError> {
        let mut queue = self.proposal_queue(group_id)?;
        let reference = serde_json::to_value(proposal_ref)?;
        queue.retain(|(queued, _)| *queued != reference);
        queue.push((reference, serde_json::to_value(proposal)?));
        self.write(PROPOSAL_QUEUE, group_id, &queue)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::PublicError> {
        self.proposal_queue(group_id)?
            .into_iter()
            .map(|(reference, proposal)| {
                Ok((
                    serde_json::from_value(reference)?,
                    serde_json::from_value(proposal)?,
                ))
            })
            .collect()
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::PublicError> {
        self.read(TREE, group_id)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::PublicError> {
        self.read(CONTEXT, group_id)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::PublicError> {
        self.read(INTERIM_TRANSCRIPT_HASH, group_id)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::PublicError> {
        self.read(CONFIRMATION_TAG, group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::PublicError> {
        self.delete(TREE, group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::PublicError> {
        self.delete(CONFIRMATION_TAG, group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::PublicError> {
        self.delete(CONTEXT, group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::PublicError> {
        self.delete(INTERIM_TRANSCRIPT_HASH, group_id)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::PublicError> {
        let reference = serde_json::to_value(proposal_ref)?;
        let mut queue = self.proposal_queue(group_id)?;
        queue.retain(|(queued, _)| *queued != reference);
        if queue.is_empty() {
            self.delete(PROPOSAL_QUEUE, group_id)
        } else {
            self.write(PROPOSAL_QUEUE, group_id, &queue)
        }
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::PublicError> {
        self.delete(PROPOSAL_QUEUE, group_id)
    }
}
