//! A simulated MIMI client: a real openmls `MlsGroup` with the default room policy, driven
//! the way `mimid-node`'s client library drives it (MIMI.md §6-§7), but without IO and with a
//! seeded provider ([`SimProvider`]).
//!
//! The client's MLS state advances only by processing the room log in order, never on an
//! answer: a commit it sent stays pending until it meets the Commit item of that epoch in the
//! log, and is merged if that item is its own and discarded otherwise (RFC 9420 §14: the hub
//! picks one Commit per epoch). That way an answer lost to a crash or a leader change ("outcome
//! unknown") needs no special handling, and a client never moves past application messages of
//! the epoch it is in.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context};
use mimid_actors::command::HandshakeBundle;
use mimid_actors::ids::{ClientId, UserId};
use mimid_actors::policy::{
    default_room_policy, resolve_app_data_updates, room_group_context_extensions,
    room_leaf_capabilities, RoomPolicy, DEFAULT_ROLE_MEMBER,
};
use mimid_actors::room::identity::{client_of_credential, credential_of_client};
use mimid_actors::room::log::{ItemBody, LogItem};
use mimid_actors::room::state::ROOM_CIPHERSUITE;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    AppDataUpdateProposal, CredentialWithKey, DeserializeBytes as _, KeyPackage, Lifetime,
    MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider,
    ProcessedMessageContent, Proposal, RatchetTreeIn, StagedWelcome,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;

use crate::sim::crypto::SimProvider;

/// What a commit changes.
pub enum Change {
    /// An empty commit with a path (key rotation, RFC 9420 §12.4).
    SelfUpdate,
    /// Adds `users` to the participant list and their clients' KeyPackages to the group
    /// (MIMI.md §6.3).
    Add {
        users: Vec<UserId>,
        key_packages: Vec<KeyPackage>,
    },
    /// Removes `user` from the participant list and all its clients from the group (§6.5).
    Remove { user: UserId },
}

/// What processing one log item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not addressed to this client, or already processed.
    Nothing,
    /// The Welcome that added this client.
    Joined,
    /// A Commit; `own` when it was this client's pending one; `removed` when it removed this
    /// client.
    Committed { own: bool, removed: bool },
    /// An application message; `plaintext` is empty for this client's own (a sender cannot
    /// decrypt what it sent).
    Message { own: bool, plaintext: Vec<u8> },
}

pub struct SimClient {
    id: ClientId,
    provider: SimProvider,
    signer: SignatureKeyPair,
    group: Option<MlsGroup>,
    /// The commit this client sent whose fate it has not yet read in the log.
    pending_commit: Option<Vec<u8>>,
    /// Application messages this client sent and has not yet met in the log.
    own_messages: BTreeSet<Vec<u8>>,
    /// Seq of the last log item processed.
    processed: u64,
    lifetime: Lifetime,
}

impl SimClient {
    /// `lifetime` goes into this client's KeyPackages and leaves (it must hold at the wall
    /// clock: openmls checks leaf lifetimes against `SystemTime::now` when a tree is imported).
    pub fn new(id: ClientId, seed: [u8; 32], lifetime: Lifetime) -> anyhow::Result<Self> {
        let provider = SimProvider::new(seed);
        let signer = provider
            .signature_key_pair()
            .map_err(|err| anyhow!("signature key: {err}"))?;
        Ok(SimClient {
            id,
            provider,
            signer,
            group: None,
            pending_commit: None,
            own_messages: BTreeSet::new(),
            processed: 0,
            lifetime,
        })
    }

    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// The seq up to which this client has read the room log.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// True while this client is an MLS member of the room (joined and not removed).
    pub fn is_member(&self) -> bool {
        self.group.as_ref().is_some_and(MlsGroup::is_active)
    }

    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|group| group.epoch().as_u64())
    }

    pub fn has_pending_commit(&self) -> bool {
        self.pending_commit.is_some()
    }

    /// A fresh KeyPackage for others to add this client with.
    pub fn key_package(&self) -> anyhow::Result<KeyPackage> {
        Ok(KeyPackage::builder()
            .leaf_node_capabilities(room_leaf_capabilities())
            .key_package_lifetime(self.lifetime)
            .build(
                ROOM_CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential(),
            )
            .context("build KeyPackage")?
            .key_package()
            .clone())
    }

    /// MIMI.md §6.1: creates the MLS group with the default room policy; returns the GroupInfo
    /// (without ratchet_tree extension) and the ratchet tree the creator uploads.
    pub fn create_group(&mut self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let extensions = room_group_context_extensions(&default_room_policy(&self.id.user()));
        let group = MlsGroup::builder()
            .ciphersuite(ROOM_CIPHERSUITE)
            .with_capabilities(room_leaf_capabilities())
            .with_group_context_extensions(extensions)
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .lifetime(self.lifetime)
            .build(&self.provider, &self.signer, self.credential())
            .context("create MLS group")?;
        let group_info = group
            .export_group_info(self.provider.crypto(), &self.signer, false)
            .context("export GroupInfo")?
            .tls_serialize_detached()?;
        let tree = group.export_ratchet_tree().tls_serialize_detached()?;
        self.group = Some(group);
        Ok((group_info, tree))
    }

    /// Builds a commit (pending until its fate is read in the log) and its `HandshakeBundle`
    /// (protocol-06 §5.2: Commit, Welcome for added clients, GroupInfo of the new epoch).
    pub fn commit(&mut self, change: Change) -> anyhow::Result<HandshakeBundle> {
        if self.pending_commit.is_some() {
            bail!("a commit is already pending");
        }
        let group = self.group.as_ref().context("not in the room")?;
        let policy = RoomPolicy::from_extensions(group.extensions())?;
        let (adds, removes, proposals) = match change {
            Change::SelfUpdate => (Vec::new(), Vec::new(), Vec::new()),
            Change::Add {
                users,
                key_packages,
            } => {
                let members: Vec<(UserId, u32)> = users
                    .into_iter()
                    .map(|user| (user, DEFAULT_ROLE_MEMBER))
                    .collect();
                let update = policy.add_participants_proposal(&members)?;
                (
                    key_packages,
                    Vec::new(),
                    vec![Proposal::AppDataUpdate(Box::new(update))],
                )
            }
            Change::Remove { user } => {
                let leaves: Vec<_> = group
                    .members()
                    .filter(|member| {
                        client_of_credential(&member.credential)
                            .is_ok_and(|client| client.user() == user)
                    })
                    .map(|member| member.index)
                    .collect();
                let update = policy.remove_participants_proposal(std::slice::from_ref(&user))?;
                (
                    Vec::new(),
                    leaves,
                    vec![Proposal::AppDataUpdate(Box::new(update))],
                )
            }
        };
        let dictionary = group
            .extensions()
            .app_data_dictionary()
            .map(|extension| extension.dictionary().clone());
        let provider = &self.provider;
        let group = self.group.as_mut().context("not in the room")?;
        let mut stage = group
            .commit_builder()
            .force_self_update(adds.is_empty() && removes.is_empty())
            .propose_adds(adds)
            .propose_removals(removes)
            .add_proposals(proposals)
            .load_psks(provider.storage())
            .context("load PSKs")?
            .create_group_info(true);
        let updates: Vec<AppDataUpdateProposal> =
            stage.app_data_update_proposals().cloned().collect();
        if !updates.is_empty() {
            let resolution = resolve_app_data_updates(
                &policy,
                dictionary.as_ref(),
                updates.iter().map(|update| ((), update)),
            )?;
            stage.with_app_data_dictionary_updates(resolution.into_parts().1);
        }
        let (commit, welcome, group_info) = stage
            .build(provider.rand(), provider.crypto(), &self.signer, |_| true)
            .context("build commit")?
            .stage_commit(provider)
            .context("stage commit")?
            .into_messages();
        let commit = commit.tls_serialize_detached()?;
        self.pending_commit = Some(commit.clone());
        Ok(HandshakeBundle::Commit {
            commit,
            welcome: welcome
                .map(|welcome| welcome.tls_serialize_detached())
                .transpose()?,
            group_info: group_info
                .map(|info| info.tls_serialize_detached())
                .transpose()?,
        })
    }

    /// Forgets the pending commit after the hub refused it (its fate is known: not in the log).
    pub fn abandon_commit(&mut self) -> anyhow::Result<()> {
        if self.pending_commit.take().is_some() {
            let provider = &self.provider;
            self.group
                .as_mut()
                .context("not in the room")?
                .clear_pending_commit(provider.storage())
                .context("clear pending commit")?;
        }
        Ok(())
    }

    /// An application message (a PrivateMessage, protocol-06 §5.3) in the current epoch.
    pub fn message(&mut self, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let provider = &self.provider;
        let message = self
            .group
            .as_mut()
            .context("not in the room")?
            .create_message(provider, &self.signer, plaintext)
            .context("create application message")?
            .tls_serialize_detached()?;
        self.own_messages.insert(message.clone());
        Ok(message)
    }

    /// Processes the next log item addressed to this client. An error means the hub accepted
    /// something a correct member cannot process.
    pub fn process(&mut self, item: &LogItem) -> anyhow::Result<Seen> {
        if item.seq <= self.processed {
            return Ok(Seen::Nothing);
        }
        self.processed = item.seq;
        match &item.body {
            ItemBody::Welcome {
                welcome,
                ratchet_tree,
                to,
            } => {
                if self.group.is_some() || !to.contains(&self.id) {
                    return Ok(Seen::Nothing);
                }
                self.join(welcome, ratchet_tree)?;
                Ok(Seen::Joined)
            }
            _ if self.group.is_none() => Ok(Seen::Nothing),
            ItemBody::Commit { message } => self.process_commit(message),
            ItemBody::Application { message } => {
                if self.own_messages.remove(message) {
                    return Ok(Seen::Message {
                        own: true,
                        plaintext: Vec::new(),
                    });
                }
                match self.process_message(message)? {
                    ProcessedMessageContent::ApplicationMessage(message) => Ok(Seen::Message {
                        own: false,
                        plaintext: message.into_bytes(),
                    }),
                    _ => bail!("an Application item holds no application message"),
                }
            }
            ItemBody::Proposals { .. } => {
                bail!("the workload sends no standalone proposals, yet the log holds some")
            }
        }
    }

    fn process_commit(&mut self, message: &[u8]) -> anyhow::Result<Seen> {
        if self.pending_commit.as_deref() == Some(message) {
            self.pending_commit = None;
            let group = self.group.as_mut().context("not in the room")?;
            group
                .merge_pending_commit(&self.provider)
                .context("merge own commit")?;
            return Ok(Seen::Committed {
                own: true,
                removed: !group.is_active(),
            });
        }
        // Another member's commit won this epoch: ours can never be accepted.
        self.abandon_commit()?;
        let policy = RoomPolicy::from_extensions(
            self.group.as_ref().context("not in the room")?.extensions(),
        )?;
        let staged = match self.process_message(message)? {
            ProcessedMessageContent::StagedCommitMessage(staged) => *staged,
            ProcessedMessageContent::UnresolvedAppDataCommit(unresolved) => {
                let provider = &self.provider;
                let group = self.group.as_mut().context("not in the room")?;
                let dictionary = group
                    .extensions()
                    .app_data_dictionary()
                    .map(|extension| extension.dictionary().clone());
                let resolution = resolve_app_data_updates(
                    &policy,
                    dictionary.as_ref(),
                    unresolved
                        .app_data_update_proposals()
                        .map(|update| ((), update)),
                )?;
                group
                    .stage_app_data_commit(provider, *unresolved, resolution.into_parts().1)
                    .context("stage AppDataUpdate commit")?
            }
            _ => bail!("a Commit item holds no commit"),
        };
        let group = self.group.as_mut().context("not in the room")?;
        group
            .merge_staged_commit(&self.provider, staged)
            .context("merge commit")?;
        Ok(Seen::Committed {
            own: false,
            removed: !group.is_active(),
        })
    }

    fn process_message(&mut self, bytes: &[u8]) -> anyhow::Result<ProcessedMessageContent> {
        let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)?
            .try_into_protocol_message()
            .context("not a protocol message")?;
        let provider = &self.provider;
        Ok(self
            .group
            .as_mut()
            .context("not in the room")?
            .process_message(provider, message)
            .context("process message")?
            .into_content())
    }

    fn join(&mut self, welcome: &[u8], ratchet_tree: &[u8]) -> anyhow::Result<()> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact_bytes(welcome)?.extract()
        else {
            bail!("a Welcome item holds no Welcome");
        };
        let tree = RatchetTreeIn::tls_deserialize_exact_bytes(ratchet_tree)?;
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build();
        let group = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, Some(tree))
            .context("stage Welcome")?
            .into_group(&self.provider)
            .context("join from Welcome")?;
        self.group = Some(group);
        Ok(())
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: credential_of_client(&self.id),
            signature_key: self.signer.public().to_vec().into(),
        }
    }
}
