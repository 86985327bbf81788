//! `RoomState`: the hub's replicated state of one room, advanced by the shard state machine's
//! apply (DESIGN.md §2). It owns the openmls `PublicGroup` (MIMI.md §12), the room policy view
//! decoded from the GroupContext, the room log, the MLS membership history of every client (for
//! delivery), delivery cursors, and the pending proposals the next commit must include.
//!
//! Determinism: everything here is a function of the inputs (bytes, sender, `ts_ms` stamped by
//! the proposing leader). Verification uses openmls_rust_crypto's `RustCrypto`, whose signature
//! and hash functions are deterministic; the hub never needs randomness. Maps are `BTreeMap`s so
//! iteration order and snapshots are identical on every replica.
//!
//! Atomicity: a request is validated completely (`PublicGroup::process_message` and staging take
//! `&self`) before anything is mutated, so a rejected request changes nothing.
//!
//! What clients must send (the client library in `node/` follows this):
//! * ciphersuite MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, basic credentials whose identity
//!   is the client URI ([`crate::room::identity`]);
//! * `PURE_PLAINTEXT_WIRE_FORMAT_POLICY`: handshakes must be PublicMessage so the hub can
//!   validate them (MIMI.md §11); openmls encrypts application messages regardless of the policy;
//! * GroupInfo and Welcome without the ratchet_tree extension (protocol-06 §5.2): the hub keeps
//!   the tree and ships it next to the Welcome;
//! * every commit bundle carries the committer's GroupInfo for the new epoch.
//!
//! Retries: a resent request that was accepted gets its original verdict back and changes
//! nothing (MIMI.md §7.6 [IMPL CHOICE], [`retry`]).
//!
//! External joins (MIMI.md §6.6, RFC 9420 §12.4.3.2): a commit whose sender is
//! `new_member_commit` adds its committer, a new client of an active participant whose role
//! holds canAddOwnClient; other ways of joining (preauthorization, open rooms, joining codes)
//! are refused with `notAllowed` for now.
//!
//! Not supported yet: external/new-member proposals, PreSharedKey, ReInit,
//! GroupContextExtensions and AppEphemeral proposals (rejected with `notAllowed`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use openmls::prelude::{
    Ciphersuite, ContentType, ExtensionType, GroupId, LeafNodeIndex, MlsMessageBodyIn,
    MlsMessageIn, OpenMlsSignaturePublicKey, ProcessedMessageContent, Proposal, ProposalOrRefType,
    ProposalStore, ProposalType, PublicGroup, PublicMessageIn, QueuedProposal, RatchetTreeIn,
    Sender, StagedCommit, Verifiable,
};
use openmls_rust_crypto::RustCrypto;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tls_codec::{DeserializeBytes, Serialize as _};

use crate::command::{HandshakeBundle, SubmitVerdict, Submitter, UpdateVerdict};
use crate::ids::{ClientId, RoomId, UserId};
use crate::policy::{
    self, capability, AppDataEffect, AppDataResolution, ChangeSet, ClientChange, PolicyError,
    RoomPolicy,
};
use crate::room::identity::{client_of_credential, IdentityError};
use crate::room::log::{ItemBody, LogItem, RoomLog};
use crate::room::storage::{HubStorage, StorageError};

mod retry;

use retry::{Accepted, RetryCache};
pub use retry::{RETRY_CACHE_CAPACITY, RETRY_WINDOW_MS};

/// The only ciphersuite mimid rooms use (MIMI.md §11 MTI suite 0x0001).
pub const ROOM_CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Most proposals accepted in one `HandshakeBundle` (protocol-06 §5.2 `moreProposals`).
pub const MAX_PROPOSALS_PER_BUNDLE: usize = 64;

/// Format 3 added the retry cache.
const SNAPSHOT_FORMAT: u8 = 4;

/// Why a room could not be created from the creator's GroupInfo and tree (MIMI.md §6.1).
#[derive(Debug, Error)]
pub enum CreateRoomError {
    #[error("GroupInfo is not a valid MLSMessage: {0}")]
    MalformedGroupInfo(tls_codec::Error),
    #[error("expected an MLSMessage carrying a GroupInfo")]
    NotGroupInfo,
    #[error("ratchet tree does not decode: {0}")]
    MalformedRatchetTree(tls_codec::Error),
    #[error("GroupInfo must not carry the ratchet_tree extension; send the tree separately")]
    EmbeddedRatchetTree,
    #[error("ciphersuite {0:?} is not supported; rooms use {ROOM_CIPHERSUITE:?}")]
    UnsupportedCiphersuite(Ciphersuite),
    #[error("GroupInfo and ratchet tree are rejected by MLS validation: {0}")]
    InvalidGroup(String),
    #[error("a new room must have exactly one member, found {0}")]
    MemberCount(usize),
    #[error("the member's credential does not name a client: {0}")]
    Identity(#[from] IdentityError),
    #[error("the only member is {found}, not the creator {expected}")]
    CreatorMismatch { expected: ClientId, found: ClientId },
    #[error("required_capabilities must include {0}")]
    MissingRequiredCapability(&'static str),
    #[error("room policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("the creator's user {0} is not an active participant of the room policy")]
    CreatorNotParticipant(UserId),
}

/// Why snapshot bytes could not be restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("unknown snapshot format {0}")]
    Format(u8),
    #[error("public group storage: {0}")]
    Storage(#[from] StorageError),
    #[error("snapshot holds no public group")]
    MissingGroup,
    #[error("room policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("member credential: {0}")]
    Identity(#[from] IdentityError),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// The hub's replicated state of one room.
pub struct RoomState {
    room: RoomId,
    group: PublicGroup,
    storage: HubStorage,
    policy: RoomPolicy,
    /// Current MLS members, by credential identity.
    members: BTreeSet<ClientId>,
    /// Number of current MLS members per user.
    clients_per_user: BTreeMap<UserId, u32>,
    /// The committer-supplied GroupInfo (MLSMessage bytes) of the current epoch.
    group_info: Option<Vec<u8>>,
    /// The log, who receives which items (MLS membership spans) and local clients' cursors.
    log: RoomLog,
    /// Fan-out cursor of every follower provider that ever had a client in the room: the seq up
    /// to which it acknowledged `notify` (MIMI.md §5.4, DESIGN.md §4).
    provider_cursors: BTreeMap<String, u64>,
    /// ProposalRefs of pending proposals the next commit must include (MIMI.md §6.5).
    required: BTreeSet<Vec<u8>>,
    /// ProposalRefs of all pending proposals (the public group's proposal store).
    pending: BTreeSet<Vec<u8>>,
    /// Verdicts of recently accepted requests, replayed to resends (MIMI.md §7.6).
    retries: RetryCache,
}

/// A rejection, before it becomes a protocol verdict.
enum Rejection {
    WrongEpoch(u64),
    NotAllowed(String),
    Invalid { refs: Vec<Vec<u8>>, reason: String },
}

impl Rejection {
    fn invalid(reason: impl fmt::Display) -> Self {
        Rejection::Invalid {
            refs: Vec::new(),
            reason: reason.to_string(),
        }
    }

    fn not_allowed(reason: impl fmt::Display) -> Self {
        Rejection::NotAllowed(reason.to_string())
    }

    fn into_verdict(self) -> UpdateVerdict {
        match self {
            Rejection::WrongEpoch(current_epoch) => UpdateVerdict::WrongEpoch { current_epoch },
            Rejection::NotAllowed(reason) => UpdateVerdict::NotAllowed { reason },
            Rejection::Invalid { refs, reason } => UpdateVerdict::InvalidProposal { refs, reason },
        }
    }
}

/// The proposals of a commit or bundle, sorted by what the policy needs to know.
struct Classified<'p> {
    app_data: Vec<(UserId, &'p openmls::prelude::AppDataUpdateProposal)>,
    added: Vec<ClientChange>,
    removed: Vec<ClientChange>,
    others: Vec<UserId>,
}

impl RoomState {
    /// MIMI.md §6.1 step 3: starts tracking the group the creator built, from its GroupInfo
    /// (MLSMessage bytes, without ratchet_tree extension) and ratchet tree (TLS bytes).
    ///
    /// The creator must be the only member (its credential naming `creator`),
    /// `required_capabilities` must include the `app_data_dictionary` extension and the
    /// AppDataUpdate proposal type, and the dictionary must hold a valid room policy in which the
    /// creator's user is an active participant. The log starts empty; the creator is a member
    /// from seq 0.
    pub fn create(
        room: RoomId,
        creator: &ClientId,
        group_info: &[u8],
        ratchet_tree: &[u8],
        ts_ms: u64,
    ) -> Result<RoomState, CreateRoomError> {
        let message = MlsMessageIn::tls_deserialize_exact_bytes(group_info)
            .map_err(CreateRoomError::MalformedGroupInfo)?;
        let MlsMessageBodyIn::GroupInfo(verifiable) = message.extract() else {
            return Err(CreateRoomError::NotGroupInfo);
        };
        if verifiable.extensions().ratchet_tree().is_some() {
            return Err(CreateRoomError::EmbeddedRatchetTree);
        }
        if verifiable.ciphersuite() != ROOM_CIPHERSUITE {
            return Err(CreateRoomError::UnsupportedCiphersuite(
                verifiable.ciphersuite(),
            ));
        }
        let tree = RatchetTreeIn::tls_deserialize_exact_bytes(ratchet_tree)
            .map_err(CreateRoomError::MalformedRatchetTree)?;
        let storage = HubStorage::default();
        let (group, _) =
            PublicGroup::from_external(crypto(), &storage, tree, verifiable, ProposalStore::new())
                .map_err(|err| CreateRoomError::InvalidGroup(err.to_string()))?;

        let leaves: Vec<_> = group.members().collect();
        let [member] = leaves.as_slice() else {
            return Err(CreateRoomError::MemberCount(leaves.len()));
        };
        let found = client_of_credential(&member.credential)?;
        if found != *creator {
            return Err(CreateRoomError::CreatorMismatch {
                expected: creator.clone(),
                found,
            });
        }
        let required = group
            .required_capabilities()
            .ok_or(CreateRoomError::MissingRequiredCapability("AppDataUpdate"))?;
        if !required
            .proposal_types()
            .contains(&ProposalType::AppDataUpdate)
        {
            return Err(CreateRoomError::MissingRequiredCapability("AppDataUpdate"));
        }
        if !required
            .extension_types()
            .contains(&ExtensionType::AppDataDictionary)
        {
            return Err(CreateRoomError::MissingRequiredCapability(
                "app_data_dictionary",
            ));
        }
        let policy = RoomPolicy::from_group_context(group.group_context())?;
        if !policy.is_active_participant(&creator.user()) {
            return Err(CreateRoomError::CreatorNotParticipant(creator.user()));
        }

        let mut state = RoomState {
            room,
            group,
            storage,
            policy,
            members: BTreeSet::new(),
            clients_per_user: BTreeMap::new(),
            group_info: Some(group_info.to_vec()),
            log: RoomLog::new(ts_ms),
            provider_cursors: BTreeMap::new(),
            required: BTreeSet::new(),
            pending: BTreeSet::new(),
            retries: RetryCache::default(),
        };
        state.add_member(creator.clone(), 0);
        Ok(state)
    }

    /// protocol-06 §5.2, MIMI.md §7.2-§7.3: a proposal bundle (accepted or rejected as one unit)
    /// or a commit with its Welcome and GroupInfo, submitted by the authenticated `sender`, which
    /// must be the MLS sender of every message. On success the items are appended to the log
    /// (for a commit: the Commit at `seq`, then the Welcome at `seq + 1` if any) and the verdict
    /// carries the seq of the Commit/Proposals item. A rejected request changes nothing.
    ///
    /// MIMI.md §7.6: the same bundle from the same sender, accepted within the retry window,
    /// gets its original `Success` again and changes nothing (a resent winning Commit must not
    /// read as `wrongEpoch`).
    pub fn handle_handshake(
        &mut self,
        sender: &Submitter,
        bundle: &HandshakeBundle,
        ts_ms: u64,
    ) -> UpdateVerdict {
        let key = retry::handshake_key(submitter_key(sender), bundle);
        if let Some(original) = self.retries.get(&key, ts_ms) {
            tracing::debug!(room = %self.room, %sender, seq = original.seq, "resent handshake");
            return UpdateVerdict::Success {
                accepted_ts_ms: original.ts_ms,
                seq: original.seq,
            };
        }
        // A client that never was in the group learns nothing about it (not even its epoch):
        // refused before any other check. An external commit (MIMI.md §6.6) comes from a client
        // that is not in the group yet: it is authorised by the room policy for its joiner
        // instead ([`RoomState::handle_external_commit`]).
        // A provider must host a client that is or was in the room (MIMI.md §7.1 step 2).
        let external = is_external_commit(bundle);
        if !external && !self.log.clients().any(|client| sender.speaks_for(client)) {
            return UpdateVerdict::NotAllowed {
                reason: match sender {
                    Submitter::Client(client) => format!("{client} is not a member of this room"),
                    Submitter::Provider(domain) => {
                        format!("provider {domain} has no participant in this room")
                    }
                },
            };
        }
        let result = match bundle {
            HandshakeBundle::Commit {
                commit,
                welcome,
                group_info,
            } if external => self.handle_external_commit(
                sender,
                commit,
                welcome.as_deref(),
                group_info.as_deref(),
                ts_ms,
            ),
            HandshakeBundle::Commit {
                commit,
                welcome,
                group_info,
            } => self.handle_commit(
                sender,
                commit,
                welcome.as_deref(),
                group_info.as_deref(),
                ts_ms,
            ),
            HandshakeBundle::Proposals { proposals } => {
                self.handle_proposals(sender, proposals, ts_ms)
            }
        };
        match result {
            Ok(seq) => {
                let accepted = self.remember(key, seq);
                UpdateVerdict::Success {
                    accepted_ts_ms: accepted.ts_ms,
                    seq,
                }
            }
            Err(rejection) => {
                let verdict = rejection.into_verdict();
                tracing::debug!(room = %self.room, %sender, ?verdict, "handshake rejected");
                verdict
            }
        }
    }

    /// protocol-06 §5.3, MIMI.md §7.4: an application message. It must be a PrivateMessage with
    /// content type application for this group and the current epoch (older:
    /// `EpochTooOld`, newer: `NotAllowed`); `sender` must be a current MLS member whose user is
    /// an active participant holding canSendMessage.
    ///
    /// MIMI.md §7.6: the same bytes from the same sender, accepted within the retry window, get
    /// the original `Accepted` (seq and timestamp) again and are not appended a second time.
    pub fn handle_app_message(
        &mut self,
        sender: &Submitter,
        sending_user: &UserId,
        message: &[u8],
        ts_ms: u64,
    ) -> SubmitVerdict {
        let key = retry::app_message_key(
            match sender {
                Submitter::Client(client) => client.as_bytes(),
                Submitter::Provider(_) => sending_user.as_bytes(),
            },
            message,
        );
        if let Some(original) = self.retries.get(&key, ts_ms) {
            tracing::debug!(room = %self.room, %sender, seq = original.seq, "resent message");
            return SubmitVerdict::Accepted {
                accepted_ts_ms: original.ts_ms,
                seq: original.seq,
            };
        }
        match self.check_app_message(sender, sending_user, message) {
            Ok(()) => {
                let seq = self.append(
                    ts_ms,
                    self.epoch(),
                    ItemBody::Application {
                        message: message.to_vec(),
                    },
                );
                let accepted = self.remember(key, seq);
                SubmitVerdict::Accepted {
                    accepted_ts_ms: accepted.ts_ms,
                    seq,
                }
            }
            Err(verdict) => verdict,
        }
    }

    /// Records that `client` has processed the room up to `seq`. Cursors only move forward, never
    /// past the end of the log, and only for clients that have been members.
    pub fn ack(&mut self, client: &ClientId, seq: u64) {
        self.log.ack(client, seq);
    }

    /// The acknowledged cursor of `client`, 0 if none.
    pub fn acked(&self, client: &ClientId) -> u64 {
        self.log.acked(client)
    }

    /// Records that follower `provider` acknowledged `notify` up to `seq` (MIMI.md §5.4).
    /// Cursors only move forward, never past the log, and only for providers that host or
    /// hosted a client of the room.
    pub fn fanout_delivered(&mut self, provider: &str, seq: u64) {
        let seq = seq.min(self.last_seq());
        if !self.followers().any(|follower| follower == provider)
            || seq <= self.fanout_cursor(provider)
        {
            return;
        }
        self.provider_cursors.insert(provider.to_owned(), seq);
    }

    /// Up to where follower `provider` acknowledged `notify` (0 if never).
    pub fn fanout_cursor(&self, provider: &str) -> u64 {
        self.provider_cursors.get(provider).copied().unwrap_or(0)
    }

    /// Every follower provider: the domains other than the hub's of clients that are or were
    /// in the room, sorted and without repeats.
    pub fn followers(&self) -> impl Iterator<Item = &str> {
        let hub = self.room.domain();
        let mut last: Option<&str> = None;
        self.log.clients().filter_map(move |client| {
            let domain = client.domain();
            (domain != hub && last != Some(domain)).then(|| {
                last = Some(domain);
                domain
            })
        })
    }

    /// Whether follower `provider` is to receive `item`: it hosts a client that is.
    ///
    /// [IMPL CHOICE] MIMI.md §5.4 routes a Welcome by the KeyPackageRefs in it, through a
    /// `KeyPackageRef -> provider` record the hub keeps from `keyMaterial`. Here the Welcome's
    /// recipients are the clients its Commit adds, whose KeyPackage credentials the hub verified
    /// (`check_welcome`: the Welcome's `new_member` refs are exactly the added KeyPackages), so
    /// each goes to the provider of its client's domain: the same providers, including for
    /// KeyPackages that were not fetched through this hub, and no record to keep or expire.
    pub fn visible_to_provider(&self, item: &LogItem, provider: &str) -> bool {
        self.log
            .clients()
            .filter(|client| client.domain() == provider)
            .any(|client| self.log.visible_to(item, client))
    }

    /// The items after `provider`'s fan-out cursor that it is to receive (MIMI.md §5.4:
    /// Welcomes only to the providers of the clients they add).
    pub fn fanout_backlog<'a>(
        &'a self,
        provider: &'a str,
        after: u64,
    ) -> impl Iterator<Item = &'a LogItem> + 'a {
        let after = after.max(self.fanout_cursor(provider));
        self.items_after(after)
            .iter()
            .filter(move |item| self.visible_to_provider(item, provider))
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The current MLS epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The seq of the last log item, 0 if the log is empty.
    pub fn last_seq(&self) -> u64 {
        self.log.last_seq()
    }

    /// Seq of the oldest item still held (items before it were trimmed by retention).
    pub fn first_retained_seq(&self) -> u64 {
        self.log.first_retained_seq()
    }

    /// Retention (DESIGN.md §4): drops the items every current member has acknowledged that
    /// are also older than `window_ms` at `now_ms`. The newest item always stays (it anchors
    /// the non-decreasing hub time). A member that never acknowledged holds everything, so an
    /// offline client still gets all it missed; a removed member no longer holds anything.
    /// Also forgets the accepted requests older than the retry window ([`RETRY_WINDOW_MS`]), so
    /// an idle room sheds its retry cache. Returns how many log items were dropped.
    pub fn trim(&mut self, now_ms: u64, window_ms: u64) -> u64 {
        self.retries.expire(now_ms);
        let hub = self.room.domain();
        let local = self
            .members
            .iter()
            .filter(|client| client.domain() == hub)
            .map(|client| self.acked(client));
        // A follower holds the log only while something is still to be sent to it.
        let remote = self.followers().filter_map(|provider| {
            let cursor = self.fanout_cursor(provider);
            self.fanout_backlog(provider, cursor).next().map(|_| cursor)
        });
        let done = local.chain(remote).min().unwrap_or_else(|| self.last_seq());
        self.log.trim(done, now_ms, window_ms)
    }

    /// How many accepted requests are remembered for resends (MIMI.md §7.6); at most
    /// [`RETRY_CACHE_CAPACITY`].
    pub fn remembered_requests(&self) -> usize {
        self.retries.len()
    }

    /// The hub time the room was created at.
    pub fn created_ts_ms(&self) -> u64 {
        self.log.created_ts_ms()
    }

    /// The room policy of the current epoch.
    pub fn policy(&self) -> &RoomPolicy {
        &self.policy
    }

    /// The log items with seq greater than `after`, in order.
    pub fn items_after(&self, after: u64) -> &[LogItem] {
        self.log.items_after(after)
    }

    /// Whether `client` is to receive `item`: a Welcome goes only to the clients it adds; any
    /// other item to the clients that were MLS members when it was sequenced (from the Welcome
    /// that added them, or seq 0 for the creator, up to and including the Commit that removed
    /// them).
    pub fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool {
        self.log.visible_to(item, client)
    }

    /// Every client that ever was a member (and so was indexed for the room), sorted: what
    /// a shard unindexes when the room leaves it (`room_move` module docs).
    pub fn clients_with_history(&self) -> impl Iterator<Item = &ClientId> {
        self.log.clients()
    }

    /// The current MLS members (credential identities), sorted.
    pub fn members(&self) -> Vec<ClientId> {
        self.members.iter().cloned().collect()
    }

    /// The client at leaf `leaf_index` of the current group, if the leaf is occupied (what
    /// the blocklist check of a handshake's MLS sender needs, `moderation` module docs).
    pub fn member_at(&self, leaf_index: u32) -> Option<ClientId> {
        self.leaf_client(LeafNodeIndex::new(leaf_index)).ok()
    }

    /// The latest GroupInfo a committer (or the creator) supplied, as MLSMessage bytes.
    pub fn group_info(&self) -> Option<&[u8]> {
        self.group_info.as_deref()
    }

    /// Whether `client` may join by an external commit (MIMI.md §5.5, §6.6 step 2): its user
    /// is an active participant whose role holds canAddOwnClient. The groupInfo answer and
    /// the apply of the commit ask the same question. `Err` says why not.
    ///
    /// [IMPL CHOICE] Joining through preauthorization, an open room or a joining code is not
    /// supported yet and is refused like any other unauthorised join.
    pub fn check_external_join(&self, client: &ClientId) -> Result<(), String> {
        let user = client.user();
        if !self.policy.is_active_participant(&user) {
            return Err(format!(
                "{user} is not an active participant of {}; joining by preauthorization, open \
                 join or joining code is not supported by this hub yet",
                self.room
            ));
        }
        if !self.policy.user_has(&user, capability::CAN_ADD_OWN_CLIENT) {
            return Err(format!(
                "{user} lacks canAddOwnClient, which joining with a new client requires"
            ));
        }
        Ok(())
    }

    /// The proposals accepted in the current epoch and not committed yet, as `(hub accepted
    /// time, MLSMessage bytes)` in log order: what an external joiner is told about (protocol-06
    /// §5.5 `pending_proposals`; the SelfRemoves among them it may commit by reference). Read
    /// from the log, so proposals whose items retention already dropped are left out.
    pub fn pending_proposals(&self) -> Vec<(u64, &[u8])> {
        let epoch = self.epoch();
        let mut pending: Vec<(u64, &[u8])> = self
            .log
            .items_after(0)
            .iter()
            .rev()
            .take_while(|item| item.epoch == epoch)
            .filter_map(|item| match &item.body {
                ItemBody::Proposals { messages } => Some((item.ts_ms, messages)),
                _ => None,
            })
            .flat_map(|(ts_ms, messages)| {
                messages
                    .iter()
                    .rev()
                    .map(move |message| (ts_ms, message.as_slice()))
            })
            .collect();
        pending.reverse();
        debug_assert!(pending.len() <= self.pending.len());
        pending
    }

    /// The current ratchet tree, TLS-serialised (for joiners).
    pub fn ratchet_tree(&self) -> Vec<u8> {
        self.group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .expect("a ratchet tree held in memory serialises")
    }

    /// Serialises the whole state (for Raft snapshots). Deterministic: equal states give equal
    /// bytes.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let snapshot = SnapshotRef {
            format: SNAPSHOT_FORMAT,
            room: &self.room,
            group_id: self.group.group_id().as_slice(),
            storage: &self.storage.entries(),
            group_info: self.group_info.as_deref(),
            log: &self.log,
            provider_cursors: &self.provider_cursors,
            required: &self.required,
            retries: &self.retries,
        };
        postcard::to_stdvec(&snapshot).expect("serialising a room snapshot into memory cannot fail")
    }

    /// Restores a state from [`RoomState::to_snapshot`] bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<RoomState, SnapshotError> {
        let snapshot: Snapshot = postcard::from_bytes(bytes)?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format(snapshot.format));
        }
        snapshot.log.check().map_err(SnapshotError::Inconsistent)?;
        let retries = RetryCache::from_entries(snapshot.retries)
            .map_err(|err| SnapshotError::Inconsistent(err.reason()))?;
        let last_seq = snapshot.log.last_seq();
        if retries.last_seq().is_some_and(|seq| seq > last_seq) {
            return Err(SnapshotError::Inconsistent(
                "a remembered request names a seq beyond the log",
            ));
        }
        let storage = HubStorage::from_entries(snapshot.storage);
        let group = PublicGroup::load(&storage, &GroupId::from_slice(&snapshot.group_id))?
            .ok_or(SnapshotError::MissingGroup)?;
        let policy = RoomPolicy::from_group_context(group.group_context())?;
        let pending: BTreeSet<Vec<u8>> = group
            .queued_proposals(&storage)?
            .iter()
            .map(|(reference, _)| reference.as_slice().to_vec())
            .collect();
        if !snapshot.required.is_subset(&pending) {
            return Err(SnapshotError::Inconsistent(
                "a required proposal is not pending",
            ));
        }
        let mut members = BTreeSet::new();
        let mut clients_per_user = BTreeMap::new();
        for member in group.members() {
            let client = client_of_credential(&member.credential)?;
            *clients_per_user.entry(client.user()).or_insert(0) += 1;
            if !members.insert(client) {
                return Err(SnapshotError::Inconsistent(
                    "two leaves carry the same client identity",
                ));
            }
        }
        if !snapshot.log.open_clients().eq(members.iter()) {
            return Err(SnapshotError::Inconsistent(
                "membership history disagrees with the group's members",
            ));
        }
        Ok(RoomState {
            room: snapshot.room,
            group,
            storage,
            policy,
            members,
            clients_per_user,
            group_info: snapshot.group_info,
            log: snapshot.log,
            provider_cursors: snapshot.provider_cursors,
            required: snapshot.required,
            pending,
            retries,
        })
    }
}

// Handshakes.
impl RoomState {
    fn handle_proposals(
        &mut self,
        sender: &Submitter,
        proposals: &[Vec<u8>],
        ts_ms: u64,
    ) -> Result<u64, Rejection> {
        if proposals.is_empty() {
            return Err(Rejection::invalid("the proposal bundle is empty"));
        }
        if proposals.len() > MAX_PROPOSALS_PER_BUNDLE {
            return Err(Rejection::invalid(format!(
                "the proposal bundle has {} proposals, more than {MAX_PROPOSALS_PER_BUNDLE}",
                proposals.len()
            )));
        }
        let mut queued: Vec<QueuedProposal> = Vec::with_capacity(proposals.len());
        for bytes in proposals {
            let message = self.parse_handshake(bytes, ContentType::Proposal)?;
            self.check_member_sender(message.sender(), sender)?;
            let processed = self
                .group
                .process_message(crypto(), message)
                .map_err(|err| mls_rejection(&err))?;
            let ProcessedMessageContent::ProposalMessage(proposal) = processed.into_content()
            else {
                return Err(Rejection::invalid("expected a proposal"));
            };
            let reference = proposal.proposal_reference_ref().as_slice().to_vec();
            let duplicate = self.pending.contains(&reference)
                || queued.iter().any(|earlier| {
                    earlier.proposal_reference_ref() == proposal.proposal_reference_ref()
                });
            if duplicate {
                return Err(Rejection::Invalid {
                    refs: vec![reference],
                    reason: "the proposal is already pending".into(),
                });
            }
            queued.push(*proposal);
        }

        let classified = self.classify(queued.iter())?;
        let resolution = self.resolve(&classified)?;
        let changes = ChangeSet {
            committer: None,
            app_data: resolution.as_ref(),
            added: &classified.added,
            removed: &classified.removed,
            others: &classified.others,
        };
        policy::authorize(&self.policy, &self.clients_per_user, &changes)
            .map_err(Rejection::not_allowed)?;

        // MIMI.md §6.5: a member cannot commit its own removal, so a bundle that removes the
        // proposer's clients or the proposer itself is required in the next commit, as a unit.
        let removes_self = classified
            .removed
            .iter()
            .any(|change| change.client.user() == change.proposer)
            || resolution.iter().any(|resolution| {
                resolution.effects().iter().any(|(proposer, effect)| {
                    matches!(effect, AppDataEffect::Participant { user, to, .. }
                        if user == proposer && *to == policy::ROLE_NONE)
                })
            });
        for proposal in queued {
            let reference = proposal.proposal_reference_ref().as_slice().to_vec();
            if removes_self {
                self.required.insert(reference.clone());
            }
            self.pending.insert(reference);
            if let Err(err) = self.group.add_proposal(&self.storage, proposal) {
                fail_stop("queue a proposal", &err);
            }
        }
        let epoch = self.epoch();
        Ok(self.append(
            ts_ms,
            epoch,
            ItemBody::Proposals {
                messages: proposals.to_vec(),
            },
        ))
    }

    fn handle_commit(
        &mut self,
        sender: &Submitter,
        commit: &[u8],
        welcome: Option<&[u8]>,
        group_info: Option<&[u8]>,
        ts_ms: u64,
    ) -> Result<u64, Rejection> {
        let message = self.parse_handshake(commit, ContentType::Commit)?;
        let (committer_leaf, sender) = self.check_member_sender(message.sender(), sender)?;
        let sender = &sender;
        let processed = self
            .group
            .process_message(crypto(), message)
            .map_err(|err| mls_rejection(&err))?;
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => *staged,
            ProcessedMessageContent::UnresolvedAppDataCommit(unresolved) => {
                let resolution = policy::resolve_app_data_updates(
                    &self.policy,
                    self.dictionary(),
                    unresolved
                        .app_data_update_proposals()
                        .map(|proposal| ((), proposal)),
                )
                .map_err(Rejection::invalid)?;
                let (_, updates) = resolution.into_parts();
                self.group
                    .stage_app_data_commit(crypto(), *unresolved, updates)
                    .map_err(|err| Rejection::invalid(format!("commit does not stage: {err}")))?
            }
            _ => return Err(Rejection::invalid("expected a commit")),
        };

        let committer = sender.user();
        if let Some(leaf) = staged.update_path_leaf_node() {
            self.check_same_identity(sender, leaf.credential())?;
        }
        let classified = self.classify(staged.queued_proposals())?;
        self.check_client_changes(&classified)?;
        let resolution = self.resolve(&classified)?;
        let changes = ChangeSet {
            committer: Some(&committer),
            app_data: resolution.as_ref(),
            added: &classified.added,
            removed: &classified.removed,
            others: &classified.others,
        };
        policy::authorize(&self.policy, &self.clients_per_user, &changes)
            .map_err(Rejection::not_allowed)?;
        self.check_required_included(&staged)?;
        self.check_welcome(&staged, welcome)?;
        let group_info = self.check_group_info(&staged, committer_leaf, group_info)?;

        // Everything is decided: apply.
        let added: Vec<ClientId> = classified
            .added
            .iter()
            .map(|change| change.client.clone())
            .collect();
        let removed: Vec<ClientId> = classified
            .removed
            .iter()
            .map(|change| change.client.clone())
            .collect();
        let old_epoch = self.epoch();
        if let Err(err) = self.group.merge_commit(&self.storage, staged) {
            fail_stop("merge a validated commit", &err);
        }
        if let Some(resolution) = resolution {
            self.policy = resolution.into_parts().0;
        }
        self.group_info = Some(group_info.to_vec());
        self.required.clear();
        self.pending.clear();
        let seq = self.append(
            ts_ms,
            old_epoch,
            ItemBody::Commit {
                message: commit.to_vec(),
            },
        );
        for client in &removed {
            self.remove_member(client, seq);
        }
        if let Some(welcome) = welcome {
            let ratchet_tree = self.ratchet_tree();
            let welcome_seq = self.append(
                ts_ms,
                self.epoch(),
                ItemBody::Welcome {
                    welcome: welcome.to_vec(),
                    ratchet_tree,
                    to: added.clone(),
                },
            );
            for client in added {
                self.add_member(client, welcome_seq);
            }
        }
        Ok(seq)
    }

    /// MIMI.md §6.6 step 4, §7.3 step 2: an external commit (RFC 9420 §12.4.3.2) joins its
    /// committer. openmls' `process_message` enforces the MLS rules (a path, exactly one
    /// ExternalInit, no proposal by reference but SelfRemoves, at most one Remove, the
    /// signature by the new leaf); here: the submitter speaks for the joiner, the joiner may
    /// join by the room policy ([`RoomState::check_external_join`]) and is not a member unless
    /// the commit's one Remove is a resync of its own old leaf, the commit changes nothing else
    /// but SelfRemoves, required pending proposals are included, no Welcome, and a GroupInfo
    /// for the new epoch signed by the joiner. The joiner receives the room from the Commit's
    /// seq on; no Welcome is logged.
    ///
    /// [IMPL CHOICE] The join is not correlated with an earlier groupInfo request (which is
    /// answered from a replica without a Raft write, MIMI.md §5.5): it is authorised again
    /// here by the same policy question, for the credential in the commit's path, which the
    /// commit's signature covers.
    fn handle_external_commit(
        &mut self,
        sender: &Submitter,
        commit: &[u8],
        welcome: Option<&[u8]>,
        group_info: Option<&[u8]>,
        ts_ms: u64,
    ) -> Result<u64, Rejection> {
        // Who cannot join learns nothing about the group, not even its epoch.
        self.check_external_submitter(sender)?;
        let message = self.parse_handshake(commit, ContentType::Commit)?;
        if welcome.is_some() {
            return Err(Rejection::invalid(
                "an external commit adds only its committer: the bundle must carry no Welcome",
            ));
        }
        let processed = self
            .group
            .process_message(crypto(), message)
            .map_err(|err| mls_rejection(&err))?;
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => *staged,
            ProcessedMessageContent::UnresolvedAppDataCommit(_) => {
                return Err(Rejection::not_allowed(
                    "an external commit may not change the room state (AppDataUpdate); join \
                     first, then propose",
                ))
            }
            _ => return Err(Rejection::invalid("expected a commit")),
        };
        let leaf = staged.update_path_leaf_node().ok_or_else(|| {
            Rejection::invalid("an external commit must carry a path (RFC 9420 §12.4.3.2)")
        })?;
        let joiner = client_of_credential(leaf.credential()).map_err(Rejection::invalid)?;
        if !sender.speaks_for(&joiner) {
            return Err(Rejection::not_allowed(format!(
                "the external commit joins {joiner}, for whom {sender} cannot speak"
            )));
        }
        self.check_external_join(&joiner)
            .map_err(Rejection::not_allowed)?;
        let user = joiner.user();
        let classified = Classified {
            app_data: Vec::new(),
            added: vec![ClientChange {
                proposer: user.clone(),
                client: joiner.clone(),
            }],
            removed: self.classify_external(&staged, &joiner)?,
            others: Vec::new(),
        };
        self.check_client_changes(&classified)?;
        let changes = ChangeSet {
            committer: Some(&user),
            app_data: None,
            added: &classified.added,
            removed: &classified.removed,
            others: &classified.others,
        };
        policy::authorize(&self.policy, &self.clients_per_user, &changes)
            .map_err(Rejection::not_allowed)?;
        self.check_required_included(&staged)?;
        // The leaf index is not consulted: the GroupInfo is checked against the key of the
        // path's leaf, which every external commit has (checked above).
        let group_info = self.check_group_info(&staged, LeafNodeIndex::new(0), group_info)?;

        // Everything is decided: apply.
        let old_epoch = self.epoch();
        if let Err(err) = self.group.merge_commit(&self.storage, staged) {
            fail_stop("merge a validated external commit", &err);
        }
        self.group_info = Some(group_info.to_vec());
        self.required.clear();
        self.pending.clear();
        let seq = self.append(
            ts_ms,
            old_epoch,
            ItemBody::Commit {
                message: commit.to_vec(),
            },
        );
        for change in &classified.removed {
            self.remove_member(&change.client, seq);
        }
        // A resync closes the old span at the Commit and opens the new one at it: the joiner
        // receives its Commit (and skips it as its own) either way.
        self.add_member(joiner, seq);
        debug_assert_eq!(
            self.group.members().count(),
            self.members.len(),
            "MLS members and tracked clients agree after an external join"
        );
        Ok(seq)
    }

    /// Before anything else about an external commit: a local client must itself be allowed to
    /// join; a peer provider must have a user among the participants who may join (MIMI.md
    /// §7.1 step 2). Which client the commit joins is checked once it is parsed.
    fn check_external_submitter(&self, sender: &Submitter) -> Result<(), Rejection> {
        match sender {
            Submitter::Client(client) => self
                .check_external_join(client)
                .map_err(Rejection::not_allowed),
            Submitter::Provider(domain) => {
                let may_join = self.policy.participants().iter().any(|participant| {
                    participant.user.domain() == domain
                        && self.policy.is_active_participant(&participant.user)
                        && self
                            .policy
                            .user_has(&participant.user, capability::CAN_ADD_OWN_CLIENT)
                });
                if may_join {
                    Ok(())
                } else {
                    Err(Rejection::not_allowed(format!(
                        "provider {domain} has no participant in this room who may join"
                    )))
                }
            }
        }
    }

    /// RFC 9420 §12.4.3.2 beyond what openmls checks: the one Remove an external commit may
    /// carry is a resync of the joiner's own old leaf (its credential names the same client),
    /// and SelfRemoves are the only proposals by reference (mls-extensions; openmls checks
    /// they are pending). Returns the clients the commit removes.
    fn classify_external(
        &self,
        staged: &StagedCommit,
        joiner: &ClientId,
    ) -> Result<Vec<ClientChange>, Rejection> {
        let mut removed = Vec::new();
        for queued in staged.queued_proposals() {
            match (queued.sender(), queued.proposal()) {
                (Sender::NewMemberCommit, Proposal::ExternalInit(_)) => {}
                (Sender::NewMemberCommit, Proposal::Remove(remove)) => {
                    let old = self.leaf_client(remove.removed())?;
                    if old != *joiner {
                        return Err(Rejection::not_allowed(format!(
                            "an external commit may remove only the joiner's own old leaf \
                             (resync); it removes {old}"
                        )));
                    }
                    removed.push(ClientChange {
                        proposer: joiner.user(),
                        client: old,
                    });
                }
                (Sender::Member(leaf), Proposal::SelfRemove)
                    if queued.proposal_or_ref_type() == ProposalOrRefType::Reference =>
                {
                    let client = self.leaf_client(*leaf)?;
                    removed.push(ClientChange {
                        proposer: client.user(),
                        client,
                    });
                }
                (_, other) => {
                    return Err(Rejection::not_allowed(format!(
                        "an external commit may carry only ExternalInit, a resync Remove and \
                         SelfRemoves by reference, not {:?}",
                        other.proposal_type()
                    )))
                }
            }
        }
        Ok(removed)
    }

    /// Decodes a handshake MLSMessage and checks wire format, group, content type and epoch
    /// (MIMI.md §7.1 step 3, §7.2 steps 1-2, §7.3 step 1).
    fn parse_handshake(
        &self,
        bytes: &[u8],
        content_type: ContentType,
    ) -> Result<PublicMessageIn, Rejection> {
        let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)
            .map_err(|err| Rejection::invalid(format!("malformed MLSMessage: {err}")))?;
        let message =
            match message.extract() {
                MlsMessageBodyIn::PublicMessage(message) => message,
                MlsMessageBodyIn::PrivateMessage(_) => return Err(Rejection::not_allowed(
                    "handshake messages must be PublicMessage so that the hub can validate them",
                )),
                _ => {
                    return Err(Rejection::invalid(
                        "expected a PublicMessage carrying a proposal or commit",
                    ))
                }
            };
        if message.group_id() != self.group.group_id() {
            return Err(Rejection::invalid(
                "the message is for another MLS group than this room's",
            ));
        }
        if message.content_type() != content_type {
            return Err(Rejection::invalid(match content_type {
                ContentType::Commit => "expected a commit",
                _ => "expected a proposal",
            }));
        }
        if message.epoch() != self.group.group_context().epoch() {
            return Err(Rejection::WrongEpoch(self.epoch()));
        }
        Ok(message)
    }

    /// The MLS sender must be a member leaf whose credential names the submitting client, or,
    /// for a peer provider, a client of that provider (MIMI.md §7.1 step 2: a provider cannot
    /// speak for another provider's users). Returns the leaf and its client.
    fn check_member_sender(
        &self,
        mls_sender: &Sender,
        sender: &Submitter,
    ) -> Result<(LeafNodeIndex, ClientId), Rejection> {
        let leaf = match mls_sender {
            Sender::Member(leaf) => *leaf,
            // External commits take their own path (`handle_external_commit`); RFC 9420 §6
            // allows this sender type only on a commit.
            Sender::NewMemberCommit => {
                return Err(Rejection::invalid(
                    "the new_member_commit sender type is only valid on a commit",
                ))
            }
            Sender::External(_) | Sender::NewMemberProposal => {
                return Err(Rejection::not_allowed(
                    "external and new-member proposals are not supported by this hub yet",
                ))
            }
        };
        let signer = self.leaf_client(leaf)?;
        if !sender.speaks_for(&signer) {
            return Err(Rejection::not_allowed(format!(
                "the message is sent by leaf {} of {signer}, not by {}",
                leaf.u32(),
                match sender {
                    Submitter::Client(client) => format!("the submitting client {client}"),
                    Submitter::Provider(domain) => format!("a client of provider {domain}"),
                }
            )));
        }
        Ok((leaf, signer))
    }

    fn leaf_client(&self, leaf: LeafNodeIndex) -> Result<ClientId, Rejection> {
        let node = self
            .group
            .leaf(leaf)
            .ok_or_else(|| Rejection::invalid(format!("leaf {} is blank", leaf.u32())))?;
        client_of_credential(node.credential()).map_err(Rejection::invalid)
    }

    fn check_same_identity(
        &self,
        client: &ClientId,
        credential: &openmls::prelude::Credential,
    ) -> Result<(), Rejection> {
        let named = client_of_credential(credential).map_err(Rejection::invalid)?;
        if named == *client {
            Ok(())
        } else {
            Err(Rejection::not_allowed(format!(
                "{client} may not change its leaf credential to {named}"
            )))
        }
    }

    /// Sorts proposals into what the policy checks, with each proposer's user.
    fn classify<'p>(
        &self,
        proposals: impl Iterator<Item = &'p QueuedProposal>,
    ) -> Result<Classified<'p>, Rejection> {
        let mut classified = Classified {
            app_data: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            others: Vec::new(),
        };
        for queued in proposals {
            let Sender::Member(leaf) = queued.sender() else {
                return Err(Rejection::not_allowed(
                    "proposals from external senders or new members are not supported by this hub yet",
                ));
            };
            let proposer_client = self.leaf_client(*leaf)?;
            let proposer = proposer_client.user();
            match queued.proposal() {
                Proposal::Add(add) => {
                    let client = client_of_credential(add.key_package().leaf_node().credential())
                        .map_err(|err| Rejection::Invalid {
                        refs: vec![queued.proposal_reference_ref().as_slice().to_vec()],
                        reason: format!("added KeyPackage: {err}"),
                    })?;
                    classified.added.push(ClientChange { proposer, client });
                }
                Proposal::Remove(remove) => {
                    let client = self.leaf_client(remove.removed())?;
                    classified.removed.push(ClientChange { proposer, client });
                }
                Proposal::SelfRemove => classified.removed.push(ClientChange {
                    proposer,
                    client: proposer_client,
                }),
                Proposal::Update(update) => {
                    self.check_same_identity(&proposer_client, update.leaf_node().credential())?;
                    classified.others.push(proposer);
                }
                Proposal::AppDataUpdate(update) => classified.app_data.push((proposer, update)),
                other => {
                    return Err(Rejection::not_allowed(format!(
                        "{:?} proposals are not supported by this hub",
                        other.proposal_type()
                    )))
                }
            }
        }
        Ok(classified)
    }

    fn resolve(
        &self,
        classified: &Classified<'_>,
    ) -> Result<Option<AppDataResolution<UserId>>, Rejection> {
        if classified.app_data.is_empty() {
            return Ok(None);
        }
        policy::resolve_app_data_updates(
            &self.policy,
            self.dictionary(),
            classified
                .app_data
                .iter()
                .map(|(proposer, proposal)| (proposer.clone(), *proposal)),
        )
        .map(Some)
        .map_err(Rejection::invalid)
    }

    /// An added client must not already be a member (identities are unique in the group), and
    /// no client may be added or removed twice.
    fn check_client_changes(&self, classified: &Classified<'_>) -> Result<(), Rejection> {
        let mut removed = BTreeSet::new();
        for change in &classified.removed {
            if !removed.insert(&change.client) {
                return Err(Rejection::invalid(format!(
                    "client {} is removed more than once",
                    change.client
                )));
            }
        }
        let mut added = BTreeSet::new();
        for change in &classified.added {
            let already =
                self.members.contains(&change.client) && !removed.contains(&change.client);
            if already || !added.insert(&change.client) {
                return Err(Rejection::invalid(format!(
                    "client {} is already a member",
                    change.client
                )));
            }
        }
        Ok(())
    }

    /// MIMI.md §6.5, §7.3 step 4: every required pending proposal is committed by reference.
    fn check_required_included(&self, staged: &StagedCommit) -> Result<(), Rejection> {
        if self.required.is_empty() {
            return Ok(());
        }
        let included: BTreeSet<&[u8]> = staged
            .queued_proposals()
            .filter(|queued| queued.proposal_or_ref_type() == ProposalOrRefType::Reference)
            .map(|queued| queued.proposal_reference_ref().as_slice())
            .collect();
        let missing: Vec<Vec<u8>> = self
            .required
            .iter()
            .filter(|reference| !included.contains(reference.as_slice()))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Rejection::Invalid {
                reason: format!(
                    "the commit omits {} required pending proposal(s) (leaves must be committed)",
                    missing.len()
                ),
                refs: missing,
            })
        }
    }

    /// MIMI.md §7.3 step 6: a Welcome exactly when clients are added, addressed to exactly the
    /// added KeyPackages.
    fn check_welcome(
        &self,
        staged: &StagedCommit,
        welcome: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        let expected = staged
            .add_proposals()
            .map(|add| {
                add.add_proposal()
                    .key_package()
                    .hash_ref(crypto())
                    .map(|reference| reference.as_slice().to_vec())
                    .map_err(|err| Rejection::invalid(format!("KeyPackage reference: {err}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        let Some(bytes) = welcome else {
            return if expected.is_empty() {
                Ok(())
            } else {
                Err(Rejection::invalid(
                    "the commit adds clients but the bundle carries no Welcome",
                ))
            };
        };
        if expected.is_empty() {
            return Err(Rejection::invalid(
                "the bundle carries a Welcome but the commit adds no clients",
            ));
        }
        let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)
            .map_err(|err| Rejection::invalid(format!("malformed Welcome: {err}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(Rejection::invalid(
                "expected an MLSMessage carrying a Welcome",
            ));
        };
        if welcome.ciphersuite() != self.group.ciphersuite() {
            return Err(Rejection::invalid("the Welcome uses another ciphersuite"));
        }
        let addressed: BTreeSet<Vec<u8>> = welcome
            .secrets()
            .iter()
            .map(|secret| secret.new_member().as_slice().to_vec())
            .collect();
        if addressed.len() != welcome.secrets().len() || addressed != expected {
            return Err(Rejection::invalid(
                "the Welcome's new_member references do not match the added KeyPackages",
            ));
        }
        Ok(())
    }

    /// MIMI.md §7.3 step 7: the committer's GroupInfo describes the new epoch exactly and is
    /// signed by the committer.
    fn check_group_info<'b>(
        &self,
        staged: &StagedCommit,
        committer: LeafNodeIndex,
        group_info: Option<&'b [u8]>,
    ) -> Result<&'b [u8], Rejection> {
        let bytes = group_info.ok_or_else(|| {
            Rejection::invalid("the commit bundle carries no GroupInfo for the new epoch")
        })?;
        let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)
            .map_err(|err| Rejection::invalid(format!("malformed GroupInfo: {err}")))?;
        let MlsMessageBodyIn::GroupInfo(verifiable) = message.extract() else {
            return Err(Rejection::invalid(
                "expected an MLSMessage carrying a GroupInfo",
            ));
        };
        if verifiable.extensions().ratchet_tree().is_some() {
            return Err(Rejection::invalid(
                "the GroupInfo must not carry the ratchet_tree extension",
            ));
        }
        if verifiable.group_context() != staged.group_context() {
            return Err(Rejection::invalid(
                "the GroupInfo does not match the group context after the commit",
            ));
        }
        let signature_key = match staged.update_path_leaf_node() {
            Some(leaf) => leaf.signature_key().clone(),
            None => self
                .group
                .leaf(committer)
                .ok_or_else(|| Rejection::invalid("the committer's leaf is blank"))?
                .signature_key()
                .clone(),
        };
        let key = OpenMlsSignaturePublicKey::from_signature_key(
            signature_key,
            self.group.ciphersuite().signature_algorithm(),
        );
        verifiable.verify(crypto(), &key).map_err(|_| {
            Rejection::invalid("the GroupInfo signature does not verify with the committer's key")
        })?;
        Ok(bytes)
    }

    fn dictionary(&self) -> Option<&openmls::extensions::AppDataDictionary> {
        self.group
            .group_context()
            .extensions()
            .app_data_dictionary()
            .map(|extension| extension.dictionary())
    }
}

// Application messages, log and membership bookkeeping.
impl RoomState {
    fn check_app_message(
        &self,
        sender: &Submitter,
        user: &UserId,
        bytes: &[u8],
    ) -> Result<(), SubmitVerdict> {
        let not_allowed = |reason: String| SubmitVerdict::NotAllowed { reason };
        let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)
            .map_err(|err| not_allowed(format!("malformed MLSMessage: {err}")))?;
        let MlsMessageBodyIn::PrivateMessage(message) = message.extract() else {
            return Err(not_allowed(
                "application messages must be PrivateMessage".into(),
            ));
        };
        if message.content_type() != ContentType::Application {
            return Err(not_allowed(
                "only application content may be submitted as a message; handshakes go to update"
                    .into(),
            ));
        }
        if message.group_id() != self.group.group_id() {
            return Err(not_allowed(
                "the message is for another MLS group than this room's".into(),
            ));
        }
        // Who may send is checked before the epoch: a removed or banned sender is told so,
        // not sent to catch up with commits it can no longer process (MIMI.md §5.2, §7.4).
        // A local client must itself be a member; a peer provider's user must have a client in
        // the group (the sending leaf is encrypted, MIMI.md §7.4 step 3) and be of that domain.
        match sender {
            Submitter::Client(client) => {
                if client.user() != *user {
                    return Err(not_allowed(format!(
                        "sendingUri {user} is not the user of {client}"
                    )));
                }
                if !self.members.contains(client) {
                    return Err(not_allowed(format!(
                        "{client} is not a member of the room's MLS group"
                    )));
                }
            }
            Submitter::Provider(domain) => {
                if user.domain() != domain {
                    return Err(not_allowed(format!(
                        "provider {domain} cannot send as {user}"
                    )));
                }
                if !self.clients_per_user.contains_key(user) {
                    return Err(not_allowed(format!(
                        "{user} has no client in the room's MLS group"
                    )));
                }
            }
        }
        let user = user.clone();
        if !self.policy.is_active_participant(&user) {
            return Err(not_allowed(format!(
                "{user} is not an active participant of the room"
            )));
        }
        if !self.policy.user_has(&user, capability::CAN_SEND_MESSAGE) {
            return Err(not_allowed(format!("{user} lacks canSendMessage")));
        }
        let current = self.epoch();
        let epoch = message.epoch().as_u64();
        if epoch < current {
            return Err(SubmitVerdict::EpochTooOld {
                current_epoch: current,
            });
        }
        if epoch > current {
            return Err(not_allowed(format!(
                "the message is for epoch {epoch}, ahead of the room's epoch {current}"
            )));
        }
        Ok(())
    }

    /// Appends an item; the hub time never goes backwards along the log (a new leader's clock
    /// may lag the old one's).
    fn append(&mut self, ts_ms: u64, epoch: u64, body: ItemBody) -> u64 {
        self.log.append(ts_ms, epoch, body)
    }

    /// Records the verdict of the request accepted as item `seq` for resends (MIMI.md §7.6).
    fn remember(&mut self, key: retry::RequestKey, seq: u64) -> Accepted {
        let accepted = Accepted {
            seq,
            ts_ms: self.item(seq).ts_ms,
        };
        self.retries.insert(key, accepted);
        accepted
    }

    fn item(&self, seq: u64) -> &LogItem {
        self.log
            .item(seq)
            .expect("an item just accepted is retained")
    }

    fn add_member(&mut self, client: ClientId, from: u64) {
        *self.clients_per_user.entry(client.user()).or_insert(0) += 1;
        self.log.open_span(client.clone(), from);
        let inserted = self.members.insert(client);
        assert!(inserted, "a client is added only when it is not a member");
    }

    fn remove_member(&mut self, client: &ClientId, until: u64) {
        let removed = self.members.remove(client);
        assert!(removed, "a client is removed only when it is a member");
        let user = client.user();
        match self.clients_per_user.get_mut(&user) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                self.clients_per_user.remove(&user);
            }
        }
        self.log.close_span(client, until);
    }
}

impl fmt::Debug for RoomState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomState")
            .field("room", &self.room)
            .field("epoch", &self.epoch())
            .field("last_seq", &self.last_seq())
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// openmls errors while processing a handshake: authentication failures are `notAllowed`,
/// everything else is a malformed or inconsistent handshake (`invalidProposal`).
fn mls_rejection(err: &openmls::prelude::PublicProcessMessageError) -> Rejection {
    use openmls::prelude::{PublicProcessMessageError, ValidationError};
    match err {
        PublicProcessMessageError::ValidationError(ValidationError::InvalidSignature) => {
            Rejection::not_allowed("the message signature does not verify")
        }
        PublicProcessMessageError::ValidationError(ValidationError::UnknownMember) => {
            Rejection::not_allowed("the sender is not a member of the group")
        }
        other => Rejection::invalid(format!("MLS validation failed: {other}")),
    }
}

/// Whether `bundle` is a commit whose MLS sender is `new_member_commit` (an external join,
/// RFC 9420 §12.4.3.2). Anything that does not parse is not; the normal path refuses it.
fn is_external_commit(bundle: &HandshakeBundle) -> bool {
    let HandshakeBundle::Commit { commit, .. } = bundle else {
        return false;
    };
    match MlsMessageIn::tls_deserialize_exact_bytes(commit).map(MlsMessageIn::extract) {
        Ok(MlsMessageBodyIn::PublicMessage(message)) => {
            matches!(message.sender(), Sender::NewMemberCommit)
        }
        _ => false,
    }
}

/// Storage of the in-memory public group failed. That cannot come from input (values are
/// openmls types serialised to memory), and continuing could diverge replicas: stop.
fn fail_stop(operation: &str, err: &dyn fmt::Display) -> ! {
    panic!("room state: {operation}: {err}")
}

/// The crypto provider for verification. `RustCrypto` seeds an RNG at construction, which the
/// hub never uses; one shared instance avoids reseeding per room.
/// The identity a retry key binds: the client, or the provider's domain.
fn submitter_key(sender: &Submitter) -> &[u8] {
    match sender {
        Submitter::Client(client) => client.as_bytes(),
        Submitter::Provider(domain) => domain.as_bytes(),
    }
}

fn crypto() -> &'static RustCrypto {
    static CRYPTO: OnceLock<RustCrypto> = OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u8,
    room: &'a RoomId,
    group_id: &'a [u8],
    storage: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    group_info: Option<&'a [u8]>,
    log: &'a RoomLog,
    provider_cursors: &'a BTreeMap<String, u64>,
    required: &'a BTreeSet<Vec<u8>>,
    /// Oldest first, as `(key, verdict)` pairs.
    retries: &'a RetryCache,
}

/// The owned twin of [`SnapshotRef`]; postcard is not self-describing, so the two must list the
/// same fields in the same order.
#[derive(Deserialize)]
struct Snapshot {
    format: u8,
    room: RoomId,
    group_id: Vec<u8>,
    storage: BTreeMap<Vec<u8>, Vec<u8>>,
    group_info: Option<Vec<u8>>,
    log: RoomLog,
    provider_cursors: BTreeMap<String, u64>,
    required: BTreeSet<Vec<u8>>,
    retries: Vec<(retry::RequestKey, Accepted)>,
}
