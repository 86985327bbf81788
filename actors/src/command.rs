//! Commands replicated through a shard's Raft log, and the verdicts their apply produces.
//!
//! A command is what the leader proposes; the verdict is decided only when the committed entry
//! is applied (DESIGN.md §2, STYLE.md P5), so every replica reaches the same one. The leader
//! stamps the hub time (`Stamped::ts_ms`) into the entry; apply never reads a clock.
//!
//! Encoding: postcard (serde), a compact, stable binary format. Commands are the one place
//! where domain types are serialised on purpose: they are the replicated log.

use serde::{Deserialize, Serialize};

use crate::cluster_meta::MetaChange;
use crate::directory::consent::{Preferences, RequesterAction};
use crate::directory::profile::{Profile, PROFILES_SHARD_KEY};
use crate::directory::TargetAction;
use crate::franking::ReceivedFrank;
use crate::ids::{ClientId, RoomId, UserId};
use crate::moderation::{AbuseReport, BlockTarget};
use crate::provider_keys::{ProviderKeys, PROVIDER_KEYS_SHARD_KEY};
use crate::shard_descriptors::ShardDescriptor;
use mimid_cluster::ShardId;

/// A command with the hub timestamp the leader assigned when proposing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    /// Milliseconds since the UNIX epoch, from the proposing leader's clock.
    pub ts_ms: u64,
    pub command: Command,
}

impl Stamped {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serialising a command into memory cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Registers a client of a local user; `token_hash` is SHA-256 of its bearer secret.
    /// Lives in the shard of the client's user.
    RegisterClient {
        client: ClientId,
        token_hash: [u8; 32],
        /// The existing client of the same user that authorised this one (required unless
        /// it is the user's first client).
        linked_by: Option<ClientId>,
    },
    /// Publishes KeyPackages (TLS-serialised `KeyPackage`s, or `MLSMessage`s wrapping them).
    /// Lives in the shard of the client's user.
    PublishKeyPackages {
        client: ClientId,
        key_packages: Vec<Vec<u8>>,
        last_resort: bool,
    },
    /// Claims one KeyPackage for every client of `target` (single use; last resort only when
    /// nothing else is left; expired ones never served), if `target`'s reachability and global
    /// consent admit `requester`. Lives in the shard of `target`.
    ///
    /// Nothing proposes it any more (every claim names its room: `ClaimKeyPackagesInRoom`); it
    /// stays because postcard encodes variants by position, so removing it would change how
    /// every later variant of logs already written decodes. An old entry is applied through the
    /// consent-checked claim, without a room scope.
    ClaimKeyPackages { requester: UserId, target: UserId },
    /// Creates a room hosted here from the creator's GroupInfo and ratchet tree (MIMI.md §6.1).
    CreateRoom {
        room: RoomId,
        creator: ClientId,
        /// `MLSMessage` carrying the creator's GroupInfo (without ratchet_tree extension).
        group_info: Vec<u8>,
        /// TLS-serialised ratchet tree (`RatchetTree`).
        ratchet_tree: Vec<u8>,
    },
    /// A handshake bundle (protocol-06 §5.2 `HandshakeBundle`) for a room hosted here.
    Handshake {
        room: RoomId,
        sender: Submitter,
        bundle: HandshakeBundle,
    },
    /// An application message (protocol-06 §5.3) for a room hosted here.
    AppMessage {
        room: RoomId,
        sender: Submitter,
        /// `sendingUri`: the user the message is sent as.
        sending_user: UserId,
        /// `MLSMessage` carrying a PrivateMessage.
        message: Vec<u8>,
    },
    /// Hub side: follower provider `provider` answered 201 to `notify` for every item of a
    /// room hosted here up to `seq` (MIMI.md §5.4); its fan-out cursor moves there.
    FanoutDelivered {
        room: RoomId,
        provider: String,
        seq: u64,
    },
    /// Follower side: a `notify` from the hub of a room hosted elsewhere (MIMI.md §5.4),
    /// decoded at the edge. Appended to the room's mirror log unless already received.
    FanoutReceived {
        room: RoomId,
        items: Vec<ReceivedItem>,
        /// SHA-256 of the notify body: byte-identical duplicates are ignored (MIMI.md §7.6).
        body_hash: [u8; 32],
    },
    /// A client's delivery cursor moved: it has processed everything in `room` up to `seq`.
    Ack {
        room: RoomId,
        client: ClientId,
        seq: u64,
    },
    /// Periodic upkeep of one shard at the stamped time: drops expired KeyPackages and
    /// Welcome-routing records (MIMI.md §4) and trims room logs past every member's cursor and
    /// older than `log_retention_ms` (DESIGN.md §4). Proposed to each shard directly.
    Housekeeping { log_retention_ms: u64 },
    /// Follower side: local client `client` joined `room` (hosted elsewhere) by an external
    /// commit the hub accepted (MIMI.md §6.6), so no Welcome will announce it; it receives the
    /// room's mirror from that Commit on. `commit_sha256` is SHA-256 of the Commit's
    /// `MLSMessage` bytes, which finds it in the mirror if the hub's notify brought it first.
    /// Last, so that the postcard indexes of the variants before it (in logs already written)
    /// do not move.
    MirrorJoin {
        room: RoomId,
        client: ClientId,
        commit_sha256: [u8; 32],
    },
    /// Replaces a local user's profile (display name and handles) in the provider's handle
    /// index (MIMI.md §5.7). Lives in the shard of `PROFILES_SHARD_KEY`, so that a handle is
    /// unique per provider by one apply.
    SetProfile { user: UserId, profile: Profile },
    /// Sets a local user's discoverability and reachability preferences (MIMI.md §5.6, §5.7).
    /// Lives in the shard of the user.
    SetPreferences {
        user: UserId,
        preferences: Preferences,
    },
    /// A consent step of the scope (`requester`, `room`) whose target is the local user
    /// `target` (MIMI.md §5.6: a request or cancel received, a grant or revoke decided). Lives
    /// in the shard of `target`, with its KeyPackages.
    ConsentAsTarget {
        target: UserId,
        requester: UserId,
        room: Option<RoomId>,
        action: TargetAction,
    },
    /// What happened to the scope (`target`, `room`) whose requester is the local user
    /// `requester` (MIMI.md §5.6: the requester's provider keeps its side). Lives in the
    /// shard of `requester`.
    ConsentAsRequester {
        requester: UserId,
        target: UserId,
        room: Option<RoomId>,
        action: RequesterAction,
    },
    /// Claims one KeyPackage for every client of `target` to add it to `room`, if `target`'s
    /// reachability and consent admit `requester` (MIMI.md §5.1); a refusal claims nothing.
    /// Lives in the shard of `target`.
    ClaimKeyPackagesInRoom {
        requester: UserId,
        target: UserId,
        room: RoomId,
    },
    /// Blocks (`blocked`) or unblocks a user or a whole provider (MIMI.md §13; the operator's
    /// decision). Proposed to every shard, each keeping a copy for its rooms' applies
    /// (`moderation` module docs); no shard key.
    SetBlock { target: BlockTarget, blocked: bool },
    /// Records an abuse report for `room`, hosted here, whose franks the edge validated
    /// (protocol-06 §5.9, MIMI.md §5.8). Lives in the shard of `room`.
    RecordAbuseReport { room: RoomId, report: AbuseReport },
    /// Follower side: like `FanoutReceived`, with the Franks the notify carried with its
    /// application messages (protocol-06 §5.4 `optional<Frank>`), kept for local delivery.
    FanoutReceivedFranked {
        room: RoomId,
        items: Vec<ReceivedItem>,
        body_hash: [u8; 32],
        franks: Vec<ReceivedFrank>,
    },
    /// Changes the node registry (`cluster_meta` module docs; issue 4 "metadata shard").
    /// Proposed to shard 0, the metadata shard, directly: no shard key.
    ClusterMeta(MetaChange),
    /// Offers the provider's secret keys (MIMI.md §5.3.1, §5.5); first writer wins: a shard
    /// that holds keys keeps them (`provider_keys` module docs). Lives in the shard of
    /// `PROVIDER_KEYS_SHARD_KEY`.
    InstallProviderKeys { keys: ProviderKeys },
    /// Records where a shard lives, as its leader sees it (`shard_descriptors` module docs;
    /// issue 4 build item 1). Proposed to shard 0, the metadata shard, directly: no shard key.
    /// Appended after the older variants so older logs decode unchanged.
    RecordShardDescriptor(ShardDescriptor),
    /// Pins `room` to residency shard `shard` (`residency` module docs): lives in the room's
    /// home shard, the one its id hashes to, and is proposed there before the room is
    /// created in `shard`. Appended after the older variants so older logs decode unchanged.
    PinRoom { room: RoomId, shard: ShardId },
    /// Step 1 of a room move (`room_move` module docs): freezes `room`, hosted in the shard
    /// this is proposed to, for a move to the split shard `to`; the output carries the room's
    /// export. Proposed to the room's current shard directly: no shard key.
    FreezeRoom { room: RoomId, to: ShardId },
    /// Step 2 of a room move: installs `room` from `export` (a `room_move::RoomExport` from
    /// the freeze in `from`). Proposed to the target split shard directly: no shard key.
    AdoptRoom {
        room: RoomId,
        from: ShardId,
        export: Vec<u8>,
    },
    /// Step 3 of a room move: the room's home shard pins it to `to`, where it was in `from`
    /// at `generation` (the generation of the copy the move froze in `from`: its export's
    /// minus one; `room_move` module docs, "Generations"). A pin never goes back to an older
    /// generation. Lives in the room's home shard, like [`Command::PinRoom`].
    RepinRoom {
        room: RoomId,
        from: ShardId,
        to: ShardId,
        generation: u64,
    },
    /// Step 4 of a room move: `room`, frozen for `to` at `generation` (the generation of the
    /// copy the move froze, as for [`Command::RepinRoom`]), leaves the shard this is proposed
    /// to, which keeps a tombstone; a release of another generation is a stale repeat and
    /// changes nothing. Proposed to the room's source shard directly: no shard key.
    ReleaseRoom {
        room: RoomId,
        to: ShardId,
        generation: u64,
    },
}

/// Where a command lives ([`Command::placement`]).
enum Placement<'a> {
    /// In its room's shard (`Shards::room_shard`).
    Room(&'a RoomId),
    /// In the shard this key hashes to.
    Key(Vec<u8>),
    /// In the shard it is proposed to directly.
    Direct,
}

/// Where a command lives, without its key ([`Command::scope`]): a room command, a command
/// keyed by a user or a shared key (a pin included), or one proposed to a named shard
/// (metadata, housekeeping, a move's steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandScope {
    Room,
    Key,
    Direct,
}

impl CommandScope {
    /// Every scope, in a fixed order.
    pub const ALL: [CommandScope; 3] =
        [CommandScope::Room, CommandScope::Key, CommandScope::Direct];

    /// The label value, e.g. `room`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandScope::Room => "room",
            CommandScope::Key => "key",
            CommandScope::Direct => "direct",
        }
    }
}

impl Command {
    /// The one place that says where each command lives.
    fn placement(&self) -> Placement<'_> {
        match self {
            Command::CreateRoom { room, .. }
            | Command::RecordAbuseReport { room, .. }
            | Command::FanoutReceivedFranked { room, .. }
            | Command::Handshake { room, .. }
            | Command::AppMessage { room, .. }
            | Command::FanoutDelivered { room, .. }
            | Command::FanoutReceived { room, .. }
            | Command::MirrorJoin { room, .. }
            | Command::Ack { room, .. } => Placement::Room(room),
            Command::RegisterClient { client, .. } | Command::PublishKeyPackages { client, .. } => {
                Placement::Key(user_shard_key(&client.user()))
            }
            Command::ClaimKeyPackages { target, .. }
            | Command::ClaimKeyPackagesInRoom { target, .. }
            | Command::ConsentAsTarget { target, .. } => Placement::Key(user_shard_key(target)),
            Command::SetPreferences { user, .. } => Placement::Key(user_shard_key(user)),
            Command::ConsentAsRequester { requester, .. } => {
                Placement::Key(user_shard_key(requester))
            }
            Command::SetProfile { .. } => Placement::Key(PROFILES_SHARD_KEY.to_vec()),
            // A pin lives in the room's home shard, whatever shard the room is pinned to.
            Command::PinRoom { room, .. } | Command::RepinRoom { room, .. } => {
                Placement::Key(room.as_bytes().to_vec())
            }
            Command::InstallProviderKeys { .. } => Placement::Key(PROVIDER_KEYS_SHARD_KEY.to_vec()),
            Command::Housekeeping { .. }
            | Command::SetBlock { .. }
            | Command::ClusterMeta(_)
            | Command::RecordShardDescriptor(_)
            // A move's other steps go to the room's source or target shard, named by the
            // coordinator; neither need be the shard the room's id hashes to.
            | Command::FreezeRoom { .. }
            | Command::AdoptRoom { .. }
            | Command::ReleaseRoom { .. } => Placement::Direct,
        }
    }

    /// The key whose hash picks the shard this command belongs to: the room for room
    /// commands, the user for everything a user owns (`user_shard_key`). `None` for commands
    /// addressed to a shard directly.
    pub fn shard_key(&self) -> Option<Vec<u8>> {
        match self.placement() {
            Placement::Room(room) => Some(room.as_bytes().to_vec()),
            Placement::Key(key) => Some(key),
            Placement::Direct => None,
        }
    }

    /// Where the command lives, as a label for the metrics of proposals
    /// (`mimid_raft_forwarded_proposals_total{scope}`).
    pub fn scope(&self) -> CommandScope {
        match self.placement() {
            Placement::Room(_) => CommandScope::Room,
            Placement::Key(_) => CommandScope::Key,
            Placement::Direct => CommandScope::Direct,
        }
    }

    /// The room a room command is about: it lives in that room's shard, the home shard its
    /// id hashes to or, for a pinned room, the residency shard it is pinned to
    /// (`Shards::room_shard`). `None` for every other command (a [`Command::PinRoom`] and a
    /// [`Command::RepinRoom`] included: they live in the home shard; and a move's other steps:
    /// they are proposed to a named shard).
    pub fn room(&self) -> Option<&RoomId> {
        match self.placement() {
            Placement::Room(room) => Some(room),
            Placement::Key(_) | Placement::Direct => None,
        }
    }
}

/// The shard key of a user and of everything it owns (clients, tokens, KeyPackages).
pub fn user_shard_key(user: &UserId) -> Vec<u8> {
    user.as_bytes().to_vec()
}

/// Who submitted a room request, as the edge authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Submitter {
    /// A local client (bearer token).
    Client(ClientId),
    /// A peer provider (mutual TLS, MIMI.md §3.1) forwarding a request of one of its users:
    /// every MLS sender and the `sendingUri` must belong to this domain (MIMI.md §7.1 step 2).
    Provider(String),
}

impl Submitter {
    /// Whether `client` may be the MLS sender of a request from this submitter.
    pub fn speaks_for(&self, client: &ClientId) -> bool {
        match self {
            Submitter::Client(own) => own == client,
            Submitter::Provider(domain) => client.domain() == domain,
        }
    }
}

impl std::fmt::Display for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Submitter::Client(client) => write!(f, "{client}"),
            Submitter::Provider(domain) => write!(f, "provider {domain}"),
        }
    }
}

/// One FanoutMessage as a follower stores it: the hub's time, the MLS epoch it belongs to and
/// what it carries. `hub_seq` is the hub's log position when the hub told it (a mimid hub sends
/// it with every notify), which deduplicates resends item by item; without it, only
/// byte-identical bodies are recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedItem {
    pub hub_seq: Option<u64>,
    pub ts_ms: u64,
    pub epoch: u64,
    pub body: crate::room::log::ItemBody,
}

/// protocol-06 §5.2 `HandshakeBundle`, decoded at the edge into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeBundle {
    /// A Commit (`MLSMessage` with a PublicMessage), with the Welcome for added members and
    /// the committer's GroupInfo for the new epoch (both without ratchet_tree extension).
    Commit {
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        group_info: Option<Vec<u8>>,
    },
    /// A proposal plus `moreProposals`, accepted or rejected as one unit.
    Proposals { proposals: Vec<Vec<u8>> },
}

/// protocol-06 §5.2 `UpdateResponseCode` with its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateVerdict {
    /// Accepted; `seq` is the room log position of the (first) item it produced.
    Success {
        accepted_ts_ms: u64,
        seq: u64,
    },
    WrongEpoch {
        current_epoch: u64,
    },
    NotAllowed {
        reason: String,
    },
    /// `refs` are the ProposalRefs (bytes) of the offending proposals; may be empty when the
    /// bundle as a whole is malformed, with `reason` saying why.
    InvalidProposal {
        refs: Vec<Vec<u8>>,
        reason: String,
    },
}

/// protocol-06 §5.3 `SubmitResponseCode` with its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitVerdict {
    Accepted { accepted_ts_ms: u64, seq: u64 },
    NotAllowed { reason: String },
    EpochTooOld { current_epoch: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN.md §5: everything a user owns lives in one shard, so a claim sees what the
    /// user's clients registered and published.
    #[test]
    fn user_commands_share_a_shard_key_and_rooms_use_their_own() {
        let client = ClientId::parse("mimi://a.example/d/bob/phone").unwrap();
        let other_device = ClientId::parse("mimi://a.example/d/bob/laptop").unwrap();
        let bob = client.user();
        let register = Command::RegisterClient {
            client: client.clone(),
            token_hash: [0; 32],
            linked_by: None,
        };
        let publish = Command::PublishKeyPackages {
            client: other_device,
            key_packages: vec![],
            last_resort: false,
        };
        let claim = Command::ClaimKeyPackages {
            requester: UserId::parse("mimi://a.example/u/alice").unwrap(),
            target: bob.clone(),
        };
        assert_eq!(register.shard_key(), claim.shard_key());
        assert_eq!(publish.shard_key(), claim.shard_key());
        assert_eq!(claim.shard_key(), Some(user_shard_key(&bob)));
        let room = RoomId::parse("mimi://a.example/r/clubhouse").unwrap();
        let ack = Command::Ack {
            room: room.clone(),
            client,
            seq: 1,
        };
        assert_eq!(ack.shard_key().as_deref(), Some(room.as_bytes()));
        assert_eq!(ack.room(), Some(&room));
        // A pin lives in the room's home shard: keyed by the room, but not a room command
        // (which would follow the pin to the residency shard).
        let pin = Command::PinRoom {
            room: room.clone(),
            shard: 7,
        };
        assert_eq!(pin.shard_key().as_deref(), Some(room.as_bytes()));
        assert_eq!(pin.room(), None);
        assert_eq!(
            Command::Housekeeping {
                log_retention_ms: 0
            }
            .shard_key(),
            None
        );
    }

    /// Raft logs written before a variant was added must decode the same afterwards: postcard
    /// encodes the variant index, so new variants go last (MIMI.md §6.6 added `MirrorJoin`).
    #[test]
    fn command_variant_indexes_are_stable_and_mirror_join_lives_with_its_room() {
        let housekeeping = Stamped {
            ts_ms: 1,
            command: Command::Housekeeping {
                log_retention_ms: 5,
            },
        };
        assert_eq!(housekeeping.encode(), vec![1, 9, 5]);
        let room = RoomId::parse("mimi://a.example/r/clubhouse").unwrap();
        let join = Stamped {
            ts_ms: 1,
            command: Command::MirrorJoin {
                room: room.clone(),
                client: ClientId::parse("mimi://c.example/d/cathy/laptop").unwrap(),
                commit_sha256: [7; 32],
            },
        };
        assert_eq!(join.encode()[1], 10);
        assert_eq!(Stamped::decode(&join.encode()).unwrap(), join);
        assert_eq!(join.command.shard_key().as_deref(), Some(room.as_bytes()));
    }

    /// DESIGN.md §5, MIMI.md §5.1/§5.6: consent and preferences live with the user's
    /// KeyPackages (one apply decides consent and claims), the requester's side with the
    /// requester, every profile in the one shard of the handle index; the new variants come
    /// after `MirrorJoin`, so older logs decode unchanged.
    #[test]
    fn consent_commands_live_with_their_user_and_profiles_share_one_shard() {
        let alice = UserId::parse("mimi://a.example/u/alice").unwrap();
        let bob = UserId::parse("mimi://b.example/u/bob").unwrap();
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let as_target = Command::ConsentAsTarget {
            target: alice.clone(),
            requester: bob.clone(),
            room: Some(room.clone()),
            action: TargetAction::Revoke,
        };
        let claim = Command::ClaimKeyPackagesInRoom {
            requester: bob.clone(),
            target: alice.clone(),
            room,
        };
        let preferences = Command::SetPreferences {
            user: alice.clone(),
            preferences: Preferences::default(),
        };
        assert_eq!(as_target.shard_key(), Some(user_shard_key(&alice)));
        assert_eq!(claim.shard_key(), Some(user_shard_key(&alice)));
        assert_eq!(preferences.shard_key(), Some(user_shard_key(&alice)));
        let as_requester = Command::ConsentAsRequester {
            requester: bob.clone(),
            target: alice.clone(),
            room: None,
            action: RequesterAction::Revoked,
        };
        assert_eq!(as_requester.shard_key(), Some(user_shard_key(&bob)));
        let profile = |user: &UserId| Command::SetProfile {
            user: user.clone(),
            profile: Profile::default(),
        };
        assert_eq!(profile(&alice).shard_key(), profile(&bob).shard_key());
        assert_eq!(
            profile(&alice).shard_key().as_deref(),
            Some(PROFILES_SHARD_KEY)
        );
        for (command, index) in [(profile(&alice), 11), (claim, 15)] {
            let stamped = Stamped { ts_ms: 1, command };
            assert_eq!(stamped.encode()[1], index);
            assert_eq!(Stamped::decode(&stamped.encode()).unwrap(), stamped);
        }
    }

    /// MIMI.md §5.8, §13: abuse reports and franks live with their room, blocks in every shard;
    /// the variants come after `ClaimKeyPackagesInRoom` and `ClaimKeyPackages` keeps its
    /// index, so older logs decode unchanged.
    #[test]
    fn moderation_commands_are_appended_and_live_with_their_room_or_every_shard() {
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let block = Command::SetBlock {
            target: BlockTarget::Provider("b.example".into()),
            blocked: true,
        };
        assert_eq!(block.shard_key(), None);
        let report = Command::RecordAbuseReport {
            room: room.clone(),
            report: AbuseReport {
                submitter: Submitter::Provider("b.example".into()),
                reporting_user: None,
                alleged_abuser: UserId::parse("mimi://a.example/u/mallory").unwrap(),
                reason_code: 0,
                note: "spam".into(),
                messages: Vec::new(),
            },
        };
        assert_eq!(report.shard_key().as_deref(), Some(room.as_bytes()));
        let franked = Command::FanoutReceivedFranked {
            room: room.clone(),
            items: Vec::new(),
            body_hash: [1; 32],
            franks: vec![ReceivedFrank {
                message_sha256: [2; 32],
                frank: vec![3],
            }],
        };
        assert_eq!(franked.shard_key().as_deref(), Some(room.as_bytes()));
        let old_claim = Command::ClaimKeyPackages {
            requester: UserId::parse("mimi://a.example/u/alice").unwrap(),
            target: UserId::parse("mimi://a.example/u/bob").unwrap(),
        };
        for (command, index) in [(old_claim, 2), (block, 16), (report, 17), (franked, 18)] {
            let stamped = Stamped { ts_ms: 1, command };
            assert_eq!(stamped.encode()[1], index);
            assert_eq!(Stamped::decode(&stamped.encode()).unwrap(), stamped);
        }
    }

    /// Issue 9 build item 3: a move's freeze, adopt and release are proposed to the shard the
    /// coordinator names (no key, no room route), the repin to the room's home shard like a
    /// pin; the variants come after `PinRoom`, so older logs decode unchanged.
    #[test]
    fn room_move_commands_are_appended_and_placed_where_the_coordinator_names() {
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let freeze = Command::FreezeRoom {
            room: room.clone(),
            to: 5,
        };
        let adopt = Command::AdoptRoom {
            room: room.clone(),
            from: 1,
            export: vec![1, 2],
        };
        let repin = Command::RepinRoom {
            room: room.clone(),
            from: 1,
            to: 5,
            generation: 2,
        };
        let release = Command::ReleaseRoom {
            room: room.clone(),
            to: 5,
            generation: 2,
        };
        for direct in [&freeze, &adopt, &release] {
            assert_eq!(direct.shard_key(), None, "{direct:?}");
            assert_eq!(direct.room(), None, "{direct:?}");
        }
        assert_eq!(repin.shard_key().as_deref(), Some(room.as_bytes()));
        assert_eq!(repin.room(), None);
        let pin = Command::PinRoom { room, shard: 5 };
        for (command, index) in [
            (pin, 22),
            (freeze, 23),
            (adopt, 24),
            (repin, 25),
            (release, 26),
        ] {
            let stamped = Stamped { ts_ms: 1, command };
            assert_eq!(stamped.encode()[1], index);
            assert_eq!(Stamped::decode(&stamped.encode()).unwrap(), stamped);
        }
    }

    #[test]
    fn stamped_commands_round_trip_and_garbage_is_an_error() {
        let stamped = Stamped {
            ts_ms: 42,
            command: Command::Ack {
                room: RoomId::parse("mimi://a.example/r/x").unwrap(),
                client: ClientId::parse("mimi://a.example/d/bob/phone").unwrap(),
                seq: 7,
            },
        };
        assert_eq!(Stamped::decode(&stamped.encode()).unwrap(), stamped);
        assert!(Stamped::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Stamped::decode(&stamped.encode()[..5]).is_err());
    }
}
