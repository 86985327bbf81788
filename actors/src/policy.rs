//! Room policy: the participant list, roles and base policy that a room keeps in its MLS
//! GroupContext (`app_data_dictionary`), and the hub's authorization of changes to them.
//!
//! Sources: protocol-06 §7.5 (participant list, component 0x0022), room-policy-03 §3 (roles,
//! 0x0025), §5 (base policy, 0x0027), §8 (capabilities), protocol-06 §7.6 (room metadata,
//! 0x0023); digest in MIMI.md §8.2-§8.4 and §9.
//!
//! The module has three layers, all pure (no IO, no clock):
//! * wire structs (`UserRolePair`, `ParticipantListUpdate`, `Role`, ...) in TLS presentation
//!   language with MLS variable-length vectors (tls_codec with the `mls` feature rejects
//!   non-minimal length prefixes);
//! * [`RoomPolicy`], the validated domain view decoded from a GroupContext dictionary, and
//!   [`resolve_app_data_updates`], which turns the AppDataUpdate proposals of a commit into the
//!   new dictionary entries. Clients and the hub run the same resolution, so they agree on the
//!   next GroupContext byte for byte;
//! * [`authorize`], the room-policy-03 §8 / MIMI.md §9.5 checks: every change is authorized for
//!   *its* proposer, and role constraints are checked on the counts after the whole commit.
//!
//! **[IMPL CHOICE] participant list indices (MIMI.md §8.3, §14 item 8):** every
//! `ParticipantListUpdate` of one commit refers to the participant list as it was before the
//! commit. Role changes and removals are resolved against that list, removed entries are then
//! compacted out (order kept), and additions are appended in commit order. This lets pending
//! proposals from several proposers, each computed against the current list, be committed
//! together. A user touched more than once by one commit makes the commit invalid.
//!
//! Not handled here (the hub rejects them as unmanaged): preauth_list, join links, the other
//! room-policy-03 §6 components, and external joins (canOpenJoin, preauthorization, join codes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openmls::component::{ComponentData, ComponentId};
use openmls::credentials::CredentialType;
use openmls::extensions::{
    AppDataDictionary, AppDataDictionaryExtension, Extension, ExtensionType, Extensions,
    RequiredCapabilitiesExtension,
};
use openmls::group::{AppDataDictionaryUpdater, AppDataUpdates, GroupContext};
use openmls::messages::proposals::{AppDataUpdateOperation, AppDataUpdateProposal, ProposalType};
use openmls::prelude::Capabilities;
use thiserror::Error;
use tls_codec::{
    DeserializeBytes, Serialize as TlsSerializeTrait, TlsDeserializeBytes, TlsSerialize, TlsSize,
    VLBytes,
};

use crate::ids::{ClientId, UserId};

/// Component ids of the MIMI components (MIMI.md §8.2; protocol-06 §7, room-policy-03 §10.1,
/// "suggested" values until IANA assigns them).
pub mod component {
    use openmls::component::ComponentId;

    /// SafeAAD franking tag (protocol-06 §5.4.1).
    pub const FRANK_AAD: ComponentId = 0x0020;
    /// Franking agent signature key (protocol-06 §5.4.1).
    pub const FRANKING_AGENT: ComponentId = 0x0021;
    /// Participant list (protocol-06 §7.5).
    pub const PARTICIPANT_LIST: ComponentId = 0x0022;
    /// Room metadata (protocol-06 §7.6).
    pub const ROOM_METADATA: ComponentId = 0x0023;
    /// MLS operational policy (room-policy-03 §7).
    pub const MLS_OPERATIONAL_POLICY: ComponentId = 0x0024;
    /// Role definitions (room-policy-03 §3).
    pub const ROLES_LIST: ComponentId = 0x0025;
    /// Preauthorized users (room-policy-03 §4).
    pub const PREAUTH_LIST: ComponentId = 0x0026;
    /// Base room policy (room-policy-03 §5).
    pub const BASE_ROOM_POLICY: ComponentId = 0x0027;
}

/// A capability code point (room-policy-03 §10.2, "MIMI Role Capabilities").
pub type CapabilityType = u16;

/// A role index (room-policy-03 §3). 0 means "not in the participant list".
pub type RoleIndex = u32;

/// Role index 0: not (or no longer) in the participant list.
pub const ROLE_NONE: RoleIndex = 0;
/// Role index 1: if it exists and is named [`BANNED_ROLE_NAME`], the banned role
/// (room-policy-03 §8.1.3).
pub const ROLE_BANNED: RoleIndex = 1;
/// The name role 1 must carry to act as the banned role.
pub const BANNED_ROLE_NAME: &[u8] = b"banned";

macro_rules! capabilities {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal;)*) => {
        /// Capability code points (room-policy-03 §8, §10.2; MIMI.md §9.4).
        pub mod capability {
            use super::CapabilityType;
            $( $(#[$doc])* pub const $name: CapabilityType = $value; )*
        }
        const CAPABILITY_NAMES: &[(CapabilityType, &str)] = &[$(($value, $text)),*];
    };
}

capabilities! {
    /// Add another user to the participant list (§8.1.1).
    CAN_ADD_PARTICIPANT = 0x0000, "canAddParticipant";
    /// Remove another user and all its clients (§8.1.2).
    CAN_REMOVE_PARTICIPANT = 0x0001, "canRemoveParticipant";
    /// Add one's own clients (§8.1.1).
    CAN_ADD_OWN_CLIENT = 0x0002, "canAddOwnClient";
    /// Remove one's own clients without leaving (§8.1.2).
    CAN_REMOVE_OWN_CLIENT = 0x0003, "canRemoveOwnClient";
    /// On role 0 only: anyone may join (§8.1.1).
    CAN_OPEN_JOIN = 0x0004, "canOpenJoin";
    /// Join when preauthorized for the role (§8.1.1).
    CAN_JOIN_IF_PREAUTHORIZED = 0x0005, "canJoinIfPreauthorized";
    /// Leave the participant list (§8.1.2).
    CAN_REMOVE_SELF = 0x0006, "canRemoveSelf";
    /// Reserved.
    CAN_CREATE_JOIN_CODE = 0x0007, "canCreateJoinCode";
    /// Reserved.
    CAN_DELETE_JOIN_CODE = 0x0008, "canDeleteJoinCode";
    /// Join with a join code (§8.1.1).
    CAN_USE_JOIN_CODE = 0x0009, "canUseJoinCode";
    /// Move another user to the banned role and remove its clients (§8.1.3).
    CAN_BAN = 0x000a, "canBan";
    /// Move a banned user to another role (§8.1.3).
    CAN_UNBAN = 0x000b, "canUnBan";
    /// Remove another participant's clients, keeping it in the list (§8.1.2).
    CAN_KICK = 0x000c, "canKick";
    /// Reserved.
    CAN_KNOCK = 0x000d, "canKnock";
    /// Reserved.
    CAN_ACCEPT_KNOCK = 0x000e, "canAcceptKnock";
    /// Change another participant's role (§8.1.3).
    CAN_CHANGE_USER_ROLE = 0x000f, "canChangeUserRole";
    /// Change one's own role to a preauthorized one (§8.1.3).
    CAN_CHANGE_OWN_ROLE = 0x0010, "canChangeOwnRole";
    /// Reserved.
    CAN_CREATE_SUBGROUP = 0x0011, "canCreateSubgroup";
    /// Send application messages (§8.3); enforced by the hub.
    CAN_SEND_MESSAGE = 0x0100, "canSendMessage";
    /// Receive application messages (§8.3).
    CAN_RECEIVE_MESSAGE = 0x0101, "canReceiveMessage";
    /// Client-enforced (§8.3).
    CAN_COPY_MESSAGE = 0x0102, "canCopyMessage";
    /// Client-enforced (§8.3).
    CAN_REPORT_ABUSE = 0x0103, "canReportAbuse";
    /// Client-enforced (§8.3).
    CAN_REPLY_TO_MESSAGE = 0x0104, "canReplyToMessage";
    /// Client-enforced (§8.3).
    CAN_REACT_TO_MESSAGE = 0x0105, "canReactToMessage";
    /// Client-enforced (§8.3).
    CAN_EDIT_REACTION = 0x0106, "canEditReaction";
    /// Client-enforced (§8.3).
    CAN_DELETE_OWN_REACTION = 0x0107, "canDeleteOwnReaction";
    /// Client-enforced (§8.3).
    CAN_DELETE_OTHER_REACTION = 0x0108, "canDeleteOtherReaction";
    /// Client-enforced (§8.3).
    CAN_EDIT_OWN_MESSAGE = 0x0109, "canEditOwnMessage";
    /// Client-enforced (§8.3).
    CAN_DELETE_OWN_MESSAGE = 0x010a, "canDeleteOwnMessage";
    /// Client-enforced (§8.3).
    CAN_DELETE_OTHER_MESSAGE = 0x010b, "canDeleteOtherMessage";
    /// Client-enforced (§8.3).
    CAN_START_TOPIC = 0x010c, "canStartTopic";
    /// Client-enforced (§8.3).
    CAN_REPLY_IN_TOPIC = 0x010d, "canReplyInTopic";
    /// Client-enforced (§8.3).
    CAN_EDIT_OWN_TOPIC = 0x010e, "canEditOwnTopic";
    /// Client-enforced (§8.3).
    CAN_EDIT_OTHER_TOPIC = 0x010f, "canEditOtherTopic";
    /// Reserved.
    CAN_SEND_DIRECT_MESSAGE = 0x0110, "canSendDirectMessage";
    /// Reserved.
    CAN_TARGET_MESSAGE = 0x0111, "canTargetMessage";
    /// Change `room_name` in the room metadata (§8.2).
    CAN_CHANGE_ROOM_NAME = 0x0300, "canChangeRoomName";
    /// Change `room_descriptions` (§8.2).
    CAN_CHANGE_ROOM_DESCRIPTION = 0x0301, "canChangeRoomDescription";
    /// Change `room_avatar` (§8.2).
    CAN_CHANGE_ROOM_AVATAR = 0x0302, "canChangeRoomAvatar";
    /// Change `room_subject` (§8.2).
    CAN_CHANGE_ROOM_SUBJECT = 0x0303, "canChangeRoomSubject";
    /// Change `room_mood` (§8.2).
    CAN_CHANGE_ROOM_MOOD = 0x0304, "canChangeRoomMood";
    /// Destroy the room (§8.6).
    CAN_DESTROY_ROOM = 0x0501, "canDestroyRoom";
    /// Change the base room policy (§8.6).
    CAN_CHANGE_ROOM_MEMBERSHIP_STYLE = 0x0502, "canChangeRoomMembershipStyle";
    /// Change the roles list (§8.6).
    CAN_CHANGE_ROLE_DEFINITIONS = 0x0503, "canChangeRoleDefinitions";
    /// Change the preauth list (§8.6).
    CAN_CHANGE_PREAUTHORIZED_USER_LIST = 0x0504, "canChangePreauthorizedUserList";
    /// Send an MLS ReInit proposal (§8.6).
    CAN_SEND_MLS_REINIT_PROPOSAL = 0x0601, "canSendMLSReinitProposal";
}

/// The registered name of a capability, for user-facing reasons.
pub fn capability_name(capability: CapabilityType) -> Option<&'static str> {
    CAPABILITY_NAMES
        .iter()
        .find(|(value, _)| *value == capability)
        .map(|(_, name)| *name)
}

struct CapabilityDisplay(CapabilityType);

impl fmt::Display for CapabilityDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match capability_name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "capability 0x{:04x}", self.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire structs (TLS presentation language with MLS varint vectors).
// ---------------------------------------------------------------------------------------------

/// `struct { opaque user<V>; uint32 role_index; } UserRolePair;` (protocol-06 §7.5).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct UserRolePair {
    /// The user URI bytes.
    pub user: VLBytes,
    pub role_index: RoleIndex,
}

/// Component 0x0022 data: `struct { UserRolePair participants<V>; } ParticipantListData;`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct ParticipantListData {
    pub participants: Vec<UserRolePair>,
}

/// `struct { uint32 user_index; uint32 role_index; } UserindexRolePair;` (protocol-06 §7.5).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct UserindexRolePair {
    pub user_index: u32,
    pub role_index: RoleIndex,
}

/// The AppDataUpdate payload for component 0x0022 (protocol-06 §7.5). Indices refer to the
/// participant list before the commit (see the module's IMPL CHOICE).
#[derive(Debug, Clone, Default, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct ParticipantListUpdate {
    pub changed_role_participants: Vec<UserindexRolePair>,
    pub removed_indices: Vec<u32>,
    pub added_participants: Vec<UserRolePair>,
}

/// `struct { uint32 from_role_index; uint32 target_role_indexes<V>; }` (room-policy-03 §3).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct SingleSourceRoleChangeTargets {
    pub from_role_index: RoleIndex,
    pub target_role_indexes: Vec<RoleIndex>,
}

/// A role definition (room-policy-03 §3).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct Role {
    pub role_index: RoleIndex,
    pub role_name: VLBytes,
    pub role_description: VLBytes,
    pub role_capabilities: Vec<CapabilityType>,
    pub minimum_participants_constraint: u32,
    pub maximum_participants_constraint: Option<u32>,
    pub minimum_active_participants_constraint: u32,
    pub maximum_active_participants_constraint: Option<u32>,
    pub authorized_role_changes: Vec<SingleSourceRoleChangeTargets>,
}

impl Role {
    /// Whether the role lists `capability`.
    pub fn has(&self, capability: CapabilityType) -> bool {
        self.role_capabilities.contains(&capability)
    }

    /// Whether `authorized_role_changes` lets the holder move a user from `from` to `to`.
    pub fn allows_change(&self, from: RoleIndex, to: RoleIndex) -> bool {
        self.authorized_role_changes
            .iter()
            .any(|entry| entry.from_role_index == from && entry.target_role_indexes.contains(&to))
    }

    fn is_banned_role(&self) -> bool {
        self.role_index == ROLE_BANNED && self.role_name.as_slice() == BANNED_ROLE_NAME
    }
}

/// Component 0x0025 data and update: `struct { Role roles<V>; } RoleData;`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct RoleData {
    pub roles: Vec<Role>,
}

/// `enum { false(0), true(1) } bool;` as used by room-policy-03.
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
#[repr(u8)]
pub enum TlsBool {
    False = 0,
    True = 1,
}

impl From<bool> for TlsBool {
    fn from(value: bool) -> Self {
        if value {
            TlsBool::True
        } else {
            TlsBool::False
        }
    }
}

impl From<TlsBool> for bool {
    fn from(value: TlsBool) -> Self {
        value == TlsBool::True
    }
}

/// `struct { opaque uri<V>; } Uri;` (protocol-06 §7.6).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct Uri {
    pub uri: VLBytes,
}

impl Default for Uri {
    fn default() -> Self {
        Uri {
            uri: VLBytes::new(Vec::new()),
        }
    }
}

/// Component 0x0027 (room-policy-03 §5). `parent_room` is `Uri parent_room<V>` in the draft:
/// empty unless `parent_dependant`; `policy_component_ids` uses the undefined `Component` type,
/// read as `ComponentID` (uint16).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct BaseRoomPolicy {
    pub fixed_membership: TlsBool,
    pub parent_dependant: TlsBool,
    pub parent_room: Vec<Uri>,
    pub multi_device: TlsBool,
    pub max_clients: Option<u32>,
    pub max_users: Option<u32>,
    pub pseudonyms_allowed: TlsBool,
    pub persistent_room: TlsBool,
    pub discoverable: TlsBool,
    pub policy_component_ids: Vec<ComponentId>,
}

/// `struct { opaque string<V>; } UTF8String;` (protocol-06 §7.6).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct Utf8String {
    pub string: VLBytes,
}

impl Default for Utf8String {
    fn default() -> Self {
        Utf8String {
            string: VLBytes::new(Vec::new()),
        }
    }
}

/// `RichDescription` (protocol-06 §7.6).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct RichDescription {
    pub media_type: VLBytes,
    pub language_tag: VLBytes,
    pub description_content: VLBytes,
}

/// Component 0x0023 (protocol-06 §7.6); an update replaces the whole value.
#[derive(Debug, Clone, Default, PartialEq, Eq, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct RoomMetaData {
    pub room_uri: Uri,
    pub room_name: Utf8String,
    pub room_descriptions: Vec<RichDescription>,
    pub room_avatar: Uri,
    pub room_subject: Utf8String,
    pub room_mood: Utf8String,
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// Malformed or inconsistent room state or updates: a commit carrying these is invalid
/// (protocol-06 `invalidProposal`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("the GroupContext has no app_data_dictionary")]
    MissingDictionary,
    #[error("the app_data_dictionary has no {0} component")]
    MissingComponent(&'static str),
    #[error("component 0x{component:04x} does not decode: {reason}")]
    Malformed {
        component: ComponentId,
        reason: String,
    },
    #[error("participant entry {0:?} is not a user URI")]
    BadUser(String),
    #[error("user {0} appears more than once in the participant list")]
    DuplicateParticipant(UserId),
    #[error("role index {0} is defined more than once")]
    DuplicateRole(RoleIndex),
    #[error("user {user} has role {role}, which is not defined")]
    UndefinedRole { user: UserId, role: RoleIndex },
    #[error("user {0} has role 0, which means not in the participant list")]
    ZeroRole(UserId),
    #[error("participant index {index} is out of range (list has {len} entries)")]
    IndexOutOfRange { index: u32, len: usize },
    #[error("user {0} is affected more than once in one commit")]
    TouchedTwice(UserId),
    #[error("user {0} is already in the participant list")]
    AlreadyParticipant(UserId),
    #[error("user {0} is not in the participant list")]
    NotParticipant(UserId),
    #[error("role change for user {user} keeps role {role}")]
    RoleUnchanged { user: UserId, role: RoleIndex },
    #[error("component 0x{0:04x} cannot be removed")]
    ComponentRemoval(ComponentId),
    #[error("component 0x{0:04x} is updated more than once in one commit")]
    RepeatedUpdate(ComponentId),
    #[error("roles_list changes cannot share a commit with participant list changes")]
    RolesWithParticipantChanges,
    #[error("the room_uri of the room metadata cannot change")]
    RoomUriChanged,
    #[error("component 0x{0:04x} is not managed by this hub's room policy")]
    UnmanagedComponent(ComponentId),
}

/// A change that the room policy does not allow (protocol-06 `notAllowed`). `Display` is the
/// user-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyViolation {
    #[error("{actor} lacks {}", CapabilityDisplay(*capability))]
    MissingCapability {
        actor: UserId,
        capability: CapabilityType,
    },
    #[error("{actor} may not move {target} from role {from} to role {to}")]
    RoleChangeNotAuthorized {
        actor: UserId,
        target: UserId,
        from: RoleIndex,
        to: RoleIndex,
    },
    #[error("{actor} is not an active participant of the room")]
    NotActiveParticipant { actor: UserId },
    #[error("{actor} is not an active participant and may only remove its own clients")]
    OnlyOwnClientRemoval { actor: UserId },
    #[error(
        "{actor} cannot add itself to the participant list (external joins are not supported)"
    )]
    SelfAddition { actor: UserId },
    #[error("{actor} cannot change its own role (canChangeOwnRole needs a preauth_list, which this hub does not support)")]
    OwnRoleChange { actor: UserId },
    #[error("{actor} cannot ban itself")]
    SelfBan { actor: UserId },
    #[error(
        "client {client} cannot be a member: {user} is not an active participant after the commit"
    )]
    ClientOfNonParticipant { client: ClientId, user: UserId },
    #[error("{actor} may not add client {client} of another participant")]
    ForeignClientAddition { actor: UserId, client: ClientId },
    #[error("{user} is removed or banned but would keep {count} client(s) in the group")]
    ClientsRemain { user: UserId, count: u32 },
    #[error("role {role} would have {count} participants, below its minimum of {minimum}")]
    BelowMinimumParticipants {
        role: RoleIndex,
        count: u32,
        minimum: u32,
    },
    #[error("role {role} would have {count} participants, above its maximum of {maximum}")]
    AboveMaximumParticipants {
        role: RoleIndex,
        count: u32,
        maximum: u32,
    },
    #[error("role {role} would have {count} active participants, below its minimum of {minimum}")]
    BelowMinimumActive {
        role: RoleIndex,
        count: u32,
        minimum: u32,
    },
    #[error("role {role} would have {count} active participants, above its maximum of {maximum}")]
    AboveMaximumActive {
        role: RoleIndex,
        count: u32,
        maximum: u32,
    },
    #[error("the room would have {count} users, above max_users {maximum}")]
    TooManyUsers { count: u32, maximum: u32 },
    #[error("the group would have {count} clients, above max_clients {maximum}")]
    TooManyClients { count: u32, maximum: u32 },
    #[error("{user} would have {count} clients, but the room is single-device")]
    SingleDevice { user: UserId, count: u32 },
    #[error("{committer} is not an active participant and may not commit")]
    CommitterNotActive { committer: UserId },
}

// ---------------------------------------------------------------------------------------------
// Domain view.
// ---------------------------------------------------------------------------------------------

/// One entry of the participant list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub user: UserId,
    pub role_index: RoleIndex,
}

/// The room policy view of one GroupContext: participant list, role definitions and (if present)
/// the base room policy. Invariants: users are unique, no participant has role 0, every
/// participant's role is defined, role indexes are unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPolicy {
    participants: Vec<Participant>,
    positions: BTreeMap<UserId, usize>,
    roles: Vec<Role>,
    base: Option<BaseRoomPolicy>,
}

impl RoomPolicy {
    /// Builds a policy from its parts, checking the invariants.
    pub fn new(
        participants: Vec<Participant>,
        roles: Vec<Role>,
        base: Option<BaseRoomPolicy>,
    ) -> Result<Self, PolicyError> {
        let mut seen_roles = BTreeSet::new();
        for role in &roles {
            if !seen_roles.insert(role.role_index) {
                return Err(PolicyError::DuplicateRole(role.role_index));
            }
        }
        let mut positions = BTreeMap::new();
        for (position, participant) in participants.iter().enumerate() {
            if participant.role_index == ROLE_NONE {
                return Err(PolicyError::ZeroRole(participant.user.clone()));
            }
            if !seen_roles.contains(&participant.role_index) {
                return Err(PolicyError::UndefinedRole {
                    user: participant.user.clone(),
                    role: participant.role_index,
                });
            }
            if positions
                .insert(participant.user.clone(), position)
                .is_some()
            {
                return Err(PolicyError::DuplicateParticipant(participant.user.clone()));
            }
        }
        Ok(RoomPolicy {
            participants,
            positions,
            roles,
            base,
        })
    }

    /// Decodes the policy from a GroupContext's `app_data_dictionary` (MIMI.md §8.1-§8.3). The
    /// participant list and roles list are mandatory; the base policy is optional.
    pub fn from_dictionary(dictionary: Option<&AppDataDictionary>) -> Result<Self, PolicyError> {
        let dictionary = dictionary.ok_or(PolicyError::MissingDictionary)?;
        let list: ParticipantListData = decode_component(
            component::PARTICIPANT_LIST,
            dictionary
                .get(&component::PARTICIPANT_LIST)
                .ok_or(PolicyError::MissingComponent("participant_list"))?,
        )?;
        let roles: RoleData = decode_component(
            component::ROLES_LIST,
            dictionary
                .get(&component::ROLES_LIST)
                .ok_or(PolicyError::MissingComponent("roles_list"))?,
        )?;
        let base = dictionary
            .get(&component::BASE_ROOM_POLICY)
            .map(|bytes| decode_component(component::BASE_ROOM_POLICY, bytes))
            .transpose()?;
        let participants = list
            .participants
            .into_iter()
            .map(|pair| {
                Ok(Participant {
                    user: parse_user(pair.user.as_slice())?,
                    role_index: pair.role_index,
                })
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        RoomPolicy::new(participants, roles.roles, base)
    }

    /// Decodes the policy of a GroupContext.
    pub fn from_group_context(context: &GroupContext) -> Result<Self, PolicyError> {
        RoomPolicy::from_extensions(context.extensions())
    }

    /// Decodes the policy from GroupContext extensions (what a client's `MlsGroup::extensions()`
    /// returns).
    pub fn from_extensions(extensions: &Extensions<GroupContext>) -> Result<Self, PolicyError> {
        RoomPolicy::from_dictionary(
            extensions
                .app_data_dictionary()
                .map(AppDataDictionaryExtension::dictionary),
        )
    }

    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn base(&self) -> Option<&BaseRoomPolicy> {
        self.base.as_ref()
    }

    /// The role of `user`, [`ROLE_NONE`] if it is not in the participant list.
    pub fn role_of(&self, user: &UserId) -> RoleIndex {
        self.positions.get(user).map_or(ROLE_NONE, |&position| {
            self.participants[position].role_index
        })
    }

    /// The role definition with `role_index`.
    pub fn role(&self, role_index: RoleIndex) -> Option<&Role> {
        self.roles.iter().find(|role| role.role_index == role_index)
    }

    /// Whether role 1 exists and is named `banned` (room-policy-03 §8.1.3).
    pub fn has_banned_role(&self) -> bool {
        self.role(ROLE_BANNED).is_some_and(Role::is_banned_role)
    }

    /// Whether `role_index` is the banned role.
    pub fn is_banned(&self, role_index: RoleIndex) -> bool {
        role_index == ROLE_BANNED && self.has_banned_role()
    }

    /// Whether `user` is in the participant list with a role other than banned: the users whose
    /// clients may be MLS members (MIMI.md §1).
    pub fn is_active_participant(&self, user: &UserId) -> bool {
        let role = self.role_of(user);
        role != ROLE_NONE && !self.is_banned(role)
    }

    /// Whether `user`'s role holds `capability`. Users outside the list are judged by role 0, if
    /// the room defines it.
    pub fn user_has(&self, user: &UserId, capability: CapabilityType) -> bool {
        self.role(self.role_of(user))
            .is_some_and(|role| role.has(capability))
    }

    /// The participant list as its wire struct.
    pub fn participant_list_data(&self) -> ParticipantListData {
        ParticipantListData {
            participants: self
                .participants
                .iter()
                .map(|participant| UserRolePair {
                    user: participant.user.as_bytes().to_vec().into(),
                    role_index: participant.role_index,
                })
                .collect(),
        }
    }

    /// The roles list as its wire struct.
    pub fn role_data(&self) -> RoleData {
        RoleData {
            roles: self.roles.clone(),
        }
    }

    /// The dictionary entries of this policy (participant list, roles list, base policy).
    pub fn to_dictionary(&self) -> AppDataDictionary {
        let mut dictionary = AppDataDictionary::new();
        dictionary.insert(
            component::PARTICIPANT_LIST,
            encode(&self.participant_list_data()),
        );
        dictionary.insert(component::ROLES_LIST, encode(&self.role_data()));
        if let Some(base) = &self.base {
            dictionary.insert(component::BASE_ROOM_POLICY, encode(base));
        }
        dictionary
    }

    /// The AppDataUpdate proposal adding `users` with the given roles (MIMI.md §6.2 step 5).
    /// The client puts it into the same commit as the Adds of the users' clients.
    pub fn add_participants_proposal(
        &self,
        users: &[(UserId, RoleIndex)],
    ) -> Result<AppDataUpdateProposal, PolicyError> {
        for (user, role) in users {
            if self.positions.contains_key(user) {
                return Err(PolicyError::AlreadyParticipant(user.clone()));
            }
            self.check_defined(user, *role)?;
        }
        Ok(participant_list_proposal(&ParticipantListUpdate {
            added_participants: users
                .iter()
                .map(|(user, role)| UserRolePair {
                    user: user.as_bytes().to_vec().into(),
                    role_index: *role,
                })
                .collect(),
            ..ParticipantListUpdate::default()
        }))
    }

    /// The AppDataUpdate proposal removing `users` from the participant list (MIMI.md §6.5).
    /// The commit (or proposal bundle, for a leave) must also remove all their clients.
    pub fn remove_participants_proposal(
        &self,
        users: &[UserId],
    ) -> Result<AppDataUpdateProposal, PolicyError> {
        let removed_indices = users
            .iter()
            .map(|user| self.index_of(user))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(participant_list_proposal(&ParticipantListUpdate {
            removed_indices,
            ..ParticipantListUpdate::default()
        }))
    }

    /// The AppDataUpdate proposal changing the roles of participants (role changes, bans with
    /// [`ROLE_BANNED`], unbans).
    pub fn change_roles_proposal(
        &self,
        changes: &[(UserId, RoleIndex)],
    ) -> Result<AppDataUpdateProposal, PolicyError> {
        let changed_role_participants = changes
            .iter()
            .map(|(user, role)| {
                self.check_defined(user, *role)?;
                Ok(UserindexRolePair {
                    user_index: self.index_of(user)?,
                    role_index: *role,
                })
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        Ok(participant_list_proposal(&ParticipantListUpdate {
            changed_role_participants,
            ..ParticipantListUpdate::default()
        }))
    }

    fn index_of(&self, user: &UserId) -> Result<u32, PolicyError> {
        let position = self
            .positions
            .get(user)
            .ok_or_else(|| PolicyError::NotParticipant(user.clone()))?;
        Ok(u32::try_from(*position).expect("participant lists are decoded from < 4 GiB vectors"))
    }

    fn check_defined(&self, user: &UserId, role: RoleIndex) -> Result<(), PolicyError> {
        if role == ROLE_NONE {
            return Err(PolicyError::ZeroRole(user.clone()));
        }
        if self.role(role).is_none() {
            return Err(PolicyError::UndefinedRole {
                user: user.clone(),
                role,
            });
        }
        Ok(())
    }
}

/// Wraps a participant list update into its AppDataUpdate proposal (component 0x0022).
pub fn participant_list_proposal(update: &ParticipantListUpdate) -> AppDataUpdateProposal {
    AppDataUpdateProposal::update(component::PARTICIPANT_LIST, encode(update))
}

// ---------------------------------------------------------------------------------------------
// Default policy for new rooms and the GroupContext it travels in.
// ---------------------------------------------------------------------------------------------

/// Role index of the default "member" role.
pub const DEFAULT_ROLE_MEMBER: RoleIndex = 2;
/// Role index of the default "admin" role.
pub const DEFAULT_ROLE_ADMIN: RoleIndex = 3;

/// The policy of a new room (MIMI.md §6.1 step 2): `creator` is its only participant, with the
/// "admin" role.
///
/// * admin (3): every registered membership and message capability except `canOpenJoin` (which
///   must not appear on a non-zero role) and the reserved ones; it may add users as member,
///   remove members and admins, ban and unban members, promote members to admin.
/// * member (2): canSendMessage, canReceiveMessage, canAddOwnClient, canRemoveSelf,
///   canRemoveOwnClient; it may remove itself (leave).
/// * banned (1): no capabilities, no active participants.
///
/// The base policy allows multiple devices and sets no size limits.
pub fn default_room_policy(creator: &UserId) -> RoomPolicy {
    use capability::*;
    let admin_capabilities = vec![
        CAN_ADD_PARTICIPANT,
        CAN_REMOVE_PARTICIPANT,
        CAN_ADD_OWN_CLIENT,
        CAN_REMOVE_OWN_CLIENT,
        CAN_REMOVE_SELF,
        CAN_BAN,
        CAN_UNBAN,
        CAN_KICK,
        CAN_CHANGE_USER_ROLE,
        CAN_SEND_MESSAGE,
        CAN_RECEIVE_MESSAGE,
        CAN_COPY_MESSAGE,
        CAN_REPORT_ABUSE,
        CAN_REPLY_TO_MESSAGE,
        CAN_REACT_TO_MESSAGE,
        CAN_EDIT_REACTION,
        CAN_DELETE_OWN_REACTION,
        CAN_DELETE_OTHER_REACTION,
        CAN_EDIT_OWN_MESSAGE,
        CAN_DELETE_OWN_MESSAGE,
        CAN_DELETE_OTHER_MESSAGE,
        CAN_START_TOPIC,
        CAN_REPLY_IN_TOPIC,
        CAN_EDIT_OWN_TOPIC,
        CAN_EDIT_OTHER_TOPIC,
    ];
    let member_capabilities = vec![
        CAN_SEND_MESSAGE,
        CAN_RECEIVE_MESSAGE,
        CAN_ADD_OWN_CLIENT,
        CAN_REMOVE_SELF,
        CAN_REMOVE_OWN_CLIENT,
    ];
    let change = |from_role_index: RoleIndex, target_role_indexes: &[RoleIndex]| {
        SingleSourceRoleChangeTargets {
            from_role_index,
            target_role_indexes: target_role_indexes.to_vec(),
        }
    };
    let role = |index: RoleIndex,
                name: &str,
                capabilities: Vec<CapabilityType>,
                max_active: Option<u32>,
                changes: Vec<SingleSourceRoleChangeTargets>| Role {
        role_index: index,
        role_name: name.as_bytes().to_vec().into(),
        role_description: VLBytes::new(Vec::new()),
        role_capabilities: capabilities,
        minimum_participants_constraint: 0,
        maximum_participants_constraint: None,
        minimum_active_participants_constraint: 0,
        maximum_active_participants_constraint: max_active,
        authorized_role_changes: changes,
    };
    let roles = vec![
        role(ROLE_BANNED, "banned", Vec::new(), Some(0), Vec::new()),
        role(
            DEFAULT_ROLE_MEMBER,
            "member",
            member_capabilities,
            None,
            vec![change(DEFAULT_ROLE_MEMBER, &[ROLE_NONE])],
        ),
        role(
            DEFAULT_ROLE_ADMIN,
            "admin",
            admin_capabilities,
            None,
            vec![
                change(ROLE_NONE, &[DEFAULT_ROLE_MEMBER]),
                change(
                    DEFAULT_ROLE_MEMBER,
                    &[ROLE_NONE, ROLE_BANNED, DEFAULT_ROLE_ADMIN],
                ),
                change(ROLE_BANNED, &[ROLE_NONE, DEFAULT_ROLE_MEMBER]),
                change(DEFAULT_ROLE_ADMIN, &[ROLE_NONE]),
            ],
        ),
    ];
    let base = BaseRoomPolicy {
        fixed_membership: TlsBool::False,
        parent_dependant: TlsBool::False,
        parent_room: Vec::new(),
        multi_device: TlsBool::True,
        max_clients: None,
        max_users: None,
        pseudonyms_allowed: TlsBool::False,
        persistent_room: TlsBool::False,
        discoverable: TlsBool::False,
        policy_component_ids: vec![component::ROLES_LIST],
    };
    let participants = vec![Participant {
        user: creator.clone(),
        role_index: DEFAULT_ROLE_ADMIN,
    }];
    RoomPolicy::new(participants, roles, Some(base))
        .expect("the default policy satisfies the RoomPolicy invariants")
}

/// The proposal types every member must support (MIMI.md §6.1 step 2): AppDataUpdate for room
/// state, SelfRemove for leaving.
pub const REQUIRED_PROPOSAL_TYPES: [ProposalType; 2] =
    [ProposalType::AppDataUpdate, ProposalType::SelfRemove];

/// The GroupContext extensions a client passes to `MlsGroupCreateConfig::builder()
/// .with_group_context_extensions(..)` when creating a room: `required_capabilities` (the
/// `app_data_dictionary` extension, [`REQUIRED_PROPOSAL_TYPES`], basic credentials) and the
/// `app_data_dictionary` holding `policy` (MIMI.md §6.1 step 2).
pub fn room_group_context_extensions(policy: &RoomPolicy) -> Extensions<GroupContext> {
    let required = RequiredCapabilitiesExtension::new(
        &[ExtensionType::AppDataDictionary],
        &REQUIRED_PROPOSAL_TYPES,
        &[CredentialType::Basic],
    );
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::AppDataDictionary(AppDataDictionaryExtension::new(policy.to_dictionary())),
    ])
    .expect("two distinct GroupContext extensions form a valid extension list")
}

/// The leaf capabilities every client of a room advertises, in its KeyPackages
/// (`KeyPackage::builder().leaf_node_capabilities(..)`) and when creating a group
/// (`MlsGroupCreateConfig::builder().capabilities(..)`), so that it meets
/// [`room_group_context_extensions`]' required capabilities.
pub fn room_leaf_capabilities() -> Capabilities {
    Capabilities::new(
        None,
        None,
        Some(&[ExtensionType::AppDataDictionary]),
        Some(&REQUIRED_PROPOSAL_TYPES),
        Some(&[CredentialType::Basic]),
    )
}

// ---------------------------------------------------------------------------------------------
// AppDataUpdate resolution.
// ---------------------------------------------------------------------------------------------

/// What an AppDataUpdate proposal did, for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppDataEffect {
    /// A participant list entry changed: added (`from == 0`), removed (`to == 0`), or moved
    /// between roles.
    Participant {
        user: UserId,
        from: RoleIndex,
        to: RoleIndex,
    },
    /// The roles list was replaced.
    RolesReplaced,
    /// The base room policy was replaced or removed.
    BasePolicyChanged,
    /// A room metadata field changed; holding `capability` authorizes it.
    MetadataChanged { capability: CapabilityType },
}

/// The outcome of resolving a commit's AppDataUpdate proposals.
#[derive(Debug)]
pub struct AppDataResolution<P> {
    policy: RoomPolicy,
    updates: Option<AppDataUpdates>,
    effects: Vec<(P, AppDataEffect)>,
}

impl<P> AppDataResolution<P> {
    /// The policy after the commit.
    pub fn policy(&self) -> &RoomPolicy {
        &self.policy
    }

    /// Every effect with the proposer it came from, in component order, then commit order.
    pub fn effects(&self) -> &[(P, AppDataEffect)] {
        &self.effects
    }

    /// Splits the resolution into the policy after the commit and the dictionary changes that
    /// `CommitBuilder::with_app_data_dictionary_updates` (client) or
    /// `PublicGroup::stage_app_data_commit` (hub) take.
    pub fn into_parts(self) -> (RoomPolicy, Option<AppDataUpdates>) {
        (self.policy, self.updates)
    }
}

/// Applies the AppDataUpdate proposals of one commit, in commit order, to `policy` (which must
/// be the view of `dictionary`), each tagged with its proposer `P` (anything cloneable; the hub
/// uses the proposer's user, a client building a commit may use `()`).
///
/// Per component (draft-ietf-mls-extensions §4.7): participant_list takes one or more updates,
/// indices against the list before the commit (module IMPL CHOICE) and never a remove;
/// roles_list, base_room_policy and room_metadata take at most one operation (an update replaces
/// the value); a roles_list change cannot share a commit with participant list changes
/// (room-policy-03 §3). Every other component is unmanaged and rejected.
///
/// A client adding Bob (MIMI.md §6.2 step 5) puts the proposal into its commit and passes the
/// resolved updates to `CommitBuilder::with_app_data_dictionary_updates`:
///
/// ```
/// use mimid_actors::ids::UserId;
/// use mimid_actors::policy::{default_room_policy, resolve_app_data_updates, DEFAULT_ROLE_MEMBER};
///
/// let alice = UserId::parse("mimi://a.example/u/alice").unwrap();
/// let bob = UserId::parse("mimi://b.example/u/bob").unwrap();
/// let policy = default_room_policy(&alice);
/// let proposal = policy
///     .add_participants_proposal(&[(bob.clone(), DEFAULT_ROLE_MEMBER)])
///     .unwrap();
/// let dictionary = policy.to_dictionary();
/// let resolution = resolve_app_data_updates(&policy, Some(&dictionary), [((), &proposal)]).unwrap();
/// assert_eq!(resolution.policy().role_of(&bob), DEFAULT_ROLE_MEMBER);
/// let (_policy_after, updates) = resolution.into_parts();
/// assert!(updates.is_some());
/// ```
pub fn resolve_app_data_updates<'a, P: Clone>(
    policy: &RoomPolicy,
    dictionary: Option<&'a AppDataDictionary>,
    proposals: impl IntoIterator<Item = (P, &'a AppDataUpdateProposal)>,
) -> Result<AppDataResolution<P>, PolicyError> {
    let mut by_component: BTreeMap<ComponentId, Vec<(P, &AppDataUpdateOperation)>> =
        BTreeMap::new();
    for (proposer, proposal) in proposals {
        by_component
            .entry(proposal.component_id())
            .or_default()
            .push((proposer, proposal.operation()));
    }

    let mut updater = AppDataDictionaryUpdater::new(dictionary);
    let mut effects = Vec::new();
    let mut participants = policy.participants.clone();
    let mut roles = policy.roles.clone();
    let mut base = policy.base.clone();
    let mut participants_changed = false;
    let mut roles_changed = false;

    for (component_id, operations) in &by_component {
        match *component_id {
            component::PARTICIPANT_LIST => {
                participants =
                    apply_participant_updates(policy, *component_id, operations, &mut effects)?;
                participants_changed = true;
            }
            component::ROLES_LIST => {
                let (proposer, bytes) = single_update(*component_id, operations)?;
                roles = decode_component::<RoleData>(*component_id, bytes)?.roles;
                effects.push((proposer.clone(), AppDataEffect::RolesReplaced));
                roles_changed = true;
            }
            component::BASE_ROOM_POLICY => {
                let (proposer, operation) = single_operation(*component_id, operations)?;
                base = match operation {
                    AppDataUpdateOperation::Update(bytes) => {
                        Some(decode_component(*component_id, bytes.as_slice())?)
                    }
                    AppDataUpdateOperation::Remove => None,
                };
                effects.push((proposer.clone(), AppDataEffect::BasePolicyChanged));
            }
            component::ROOM_METADATA => {
                let (proposer, operation) = single_operation(*component_id, operations)?;
                for capability in metadata_changes(dictionary, operation)? {
                    effects.push((
                        proposer.clone(),
                        AppDataEffect::MetadataChanged { capability },
                    ));
                }
            }
            other => return Err(PolicyError::UnmanagedComponent(other)),
        }
    }
    if participants_changed && roles_changed {
        return Err(PolicyError::RolesWithParticipantChanges);
    }

    let policy_after = RoomPolicy::new(participants, roles, base)?;
    for (component_id, operations) in &by_component {
        let data = match *component_id {
            component::PARTICIPANT_LIST => Some(encode(&policy_after.participant_list_data())),
            component::ROLES_LIST => Some(encode(&policy_after.role_data())),
            component::BASE_ROOM_POLICY => policy_after.base.as_ref().map(encode),
            _ => match operations.last() {
                Some((_, AppDataUpdateOperation::Update(bytes))) => Some(bytes.as_slice().to_vec()),
                _ => None,
            },
        };
        match data {
            Some(data) => updater.set(ComponentData::from_parts(*component_id, data.into())),
            None => updater.remove(component_id),
        }
    }
    Ok(AppDataResolution {
        policy: policy_after,
        updates: updater.changes(),
        effects,
    })
}

fn apply_participant_updates<P: Clone>(
    policy: &RoomPolicy,
    component_id: ComponentId,
    operations: &[(P, &AppDataUpdateOperation)],
    effects: &mut Vec<(P, AppDataEffect)>,
) -> Result<Vec<Participant>, PolicyError> {
    let before = &policy.participants;
    let mut touched = BTreeSet::new();
    let mut new_roles: BTreeMap<usize, RoleIndex> = BTreeMap::new();
    let mut removed: BTreeSet<usize> = BTreeSet::new();
    let mut added = Vec::new();
    let position = |index: u32| {
        usize::try_from(index)
            .ok()
            .filter(|&position| position < before.len())
            .ok_or(PolicyError::IndexOutOfRange {
                index,
                len: before.len(),
            })
    };
    for (proposer, operation) in operations {
        let AppDataUpdateOperation::Update(bytes) = operation else {
            return Err(PolicyError::ComponentRemoval(component_id));
        };
        let update: ParticipantListUpdate = decode_component(component_id, bytes.as_slice())?;
        for change in &update.changed_role_participants {
            let at = position(change.user_index)?;
            let entry = &before[at];
            touch(&mut touched, &entry.user)?;
            policy.check_defined(&entry.user, change.role_index)?;
            if change.role_index == entry.role_index {
                return Err(PolicyError::RoleUnchanged {
                    user: entry.user.clone(),
                    role: entry.role_index,
                });
            }
            new_roles.insert(at, change.role_index);
            effects.push((
                proposer.clone(),
                AppDataEffect::Participant {
                    user: entry.user.clone(),
                    from: entry.role_index,
                    to: change.role_index,
                },
            ));
        }
        for &index in &update.removed_indices {
            let at = position(index)?;
            let entry = &before[at];
            touch(&mut touched, &entry.user)?;
            removed.insert(at);
            effects.push((
                proposer.clone(),
                AppDataEffect::Participant {
                    user: entry.user.clone(),
                    from: entry.role_index,
                    to: ROLE_NONE,
                },
            ));
        }
        for pair in &update.added_participants {
            let user = parse_user(pair.user.as_slice())?;
            touch(&mut touched, &user)?;
            if policy.positions.contains_key(&user) {
                return Err(PolicyError::AlreadyParticipant(user));
            }
            policy.check_defined(&user, pair.role_index)?;
            effects.push((
                proposer.clone(),
                AppDataEffect::Participant {
                    user: user.clone(),
                    from: ROLE_NONE,
                    to: pair.role_index,
                },
            ));
            added.push(Participant {
                user,
                role_index: pair.role_index,
            });
        }
    }
    let mut after: Vec<Participant> = before
        .iter()
        .enumerate()
        .filter(|(at, _)| !removed.contains(at))
        .map(|(at, entry)| Participant {
            user: entry.user.clone(),
            role_index: new_roles.get(&at).copied().unwrap_or(entry.role_index),
        })
        .collect();
    after.extend(added);
    Ok(after)
}

fn touch(touched: &mut BTreeSet<UserId>, user: &UserId) -> Result<(), PolicyError> {
    if touched.insert(user.clone()) {
        Ok(())
    } else {
        Err(PolicyError::TouchedTwice(user.clone()))
    }
}

fn single_operation<'o, P>(
    component_id: ComponentId,
    operations: &'o [(P, &'o AppDataUpdateOperation)],
) -> Result<(&'o P, &'o AppDataUpdateOperation), PolicyError> {
    match operations {
        [(proposer, operation)] => Ok((proposer, operation)),
        _ => Err(PolicyError::RepeatedUpdate(component_id)),
    }
}

fn single_update<'o, P>(
    component_id: ComponentId,
    operations: &'o [(P, &'o AppDataUpdateOperation)],
) -> Result<(&'o P, &'o [u8]), PolicyError> {
    match single_operation(component_id, operations)? {
        (proposer, AppDataUpdateOperation::Update(bytes)) => Ok((proposer, bytes.as_slice())),
        (_, AppDataUpdateOperation::Remove) => Err(PolicyError::ComponentRemoval(component_id)),
    }
}

/// The capabilities needed for a room metadata change, one per changed field (protocol-06
/// §7.6, room-policy-03 §8.2). The room_uri may be set once but never changed.
fn metadata_changes(
    dictionary: Option<&AppDataDictionary>,
    operation: &AppDataUpdateOperation,
) -> Result<Vec<CapabilityType>, PolicyError> {
    let id = component::ROOM_METADATA;
    let old: Option<RoomMetaData> = dictionary
        .and_then(|dictionary| dictionary.get(&id))
        .map(|bytes| decode_component(id, bytes))
        .transpose()?;
    let new: RoomMetaData = match operation {
        AppDataUpdateOperation::Update(bytes) => decode_component(id, bytes.as_slice())?,
        AppDataUpdateOperation::Remove => RoomMetaData::default(),
    };
    let old_or_empty = old.clone().unwrap_or_default();
    if old.is_some() && old_or_empty.room_uri != new.room_uri {
        return Err(PolicyError::RoomUriChanged);
    }
    let mut needed = Vec::new();
    if old_or_empty.room_name != new.room_name {
        needed.push(capability::CAN_CHANGE_ROOM_NAME);
    }
    if old_or_empty.room_descriptions != new.room_descriptions {
        needed.push(capability::CAN_CHANGE_ROOM_DESCRIPTION);
    }
    if old_or_empty.room_avatar != new.room_avatar {
        needed.push(capability::CAN_CHANGE_ROOM_AVATAR);
    }
    if old_or_empty.room_subject != new.room_subject {
        needed.push(capability::CAN_CHANGE_ROOM_SUBJECT);
    }
    if old_or_empty.room_mood != new.room_mood {
        needed.push(capability::CAN_CHANGE_ROOM_MOOD);
    }
    Ok(needed)
}

// ---------------------------------------------------------------------------------------------
// Authorization (room-policy-03 §8, MIMI.md §9.5).
// ---------------------------------------------------------------------------------------------

/// An MLS membership change and who proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientChange {
    /// The user of the client that sent the proposal (the committer for inline proposals).
    pub proposer: UserId,
    pub client: ClientId,
}

/// Everything one commit (or one proposal bundle) does, with the proposer of each change.
#[derive(Debug)]
pub struct ChangeSet<'a> {
    /// The committing user; `None` for a proposal bundle, which is not committed yet.
    pub committer: Option<&'a UserId>,
    /// The resolved AppDataUpdate proposals, tagged with their proposers (`None`: there are
    /// none, the policy does not change).
    pub app_data: Option<&'a AppDataResolution<UserId>>,
    /// Add proposals.
    pub added: &'a [ClientChange],
    /// Remove and SelfRemove proposals.
    pub removed: &'a [ClientChange],
    /// Proposers of proposals that only need an active participant (Update of one's own leaf).
    pub others: &'a [UserId],
}

/// Decides whether `changes`, applied to a room with policy `before` and `clients` (number of
/// MLS clients per user before the change), is allowed (MIMI.md §9.5). Each change is authorized
/// for its proposer against the policy before the commit; role and room constraints are checked
/// on the counts after the whole commit, for the roles whose counts change.
pub fn authorize(
    before: &RoomPolicy,
    clients: &BTreeMap<UserId, u32>,
    changes: &ChangeSet<'_>,
) -> Result<(), PolicyViolation> {
    let after = changes.app_data.map_or(before, AppDataResolution::policy);
    let effects = changes
        .app_data
        .map_or(&[][..], |resolution| resolution.effects());
    if let Some(committer) = changes.committer {
        if !before.is_active_participant(committer) {
            return Err(PolicyViolation::CommitterNotActive {
                committer: committer.clone(),
            });
        }
    }

    // protocol-06 §5.2: a removed or banned user may only propose removing its own clients.
    for (proposer, effect) in effects {
        if !before.is_active_participant(proposer) {
            let joins = matches!(effect, AppDataEffect::Participant { user, from, .. }
                if user == proposer && *from == ROLE_NONE);
            return Err(if joins {
                PolicyViolation::SelfAddition {
                    actor: proposer.clone(),
                }
            } else {
                PolicyViolation::OnlyOwnClientRemoval {
                    actor: proposer.clone(),
                }
            });
        }
    }
    let proposers = changes
        .added
        .iter()
        .map(|change| &change.proposer)
        .chain(changes.others.iter());
    for proposer in proposers {
        if !before.is_active_participant(proposer) {
            return Err(PolicyViolation::OnlyOwnClientRemoval {
                actor: proposer.clone(),
            });
        }
    }
    for change in changes.removed {
        if !before.is_active_participant(&change.proposer)
            && change.client.user() != change.proposer
        {
            return Err(PolicyViolation::OnlyOwnClientRemoval {
                actor: change.proposer.clone(),
            });
        }
    }

    let mut list_added = BTreeSet::new();
    let mut leaving = BTreeSet::new();
    let mut departed = BTreeSet::new();
    for (actor, effect) in effects {
        authorize_effect(before, actor, effect)?;
        if let AppDataEffect::Participant { user, from, to } = effect {
            if *from == ROLE_NONE {
                list_added.insert(user.clone());
            }
            if *to == ROLE_NONE || before.is_banned(*to) {
                departed.insert(user.clone());
                if user == actor && *to == ROLE_NONE {
                    leaving.insert(user.clone());
                }
            }
        }
    }

    for change in changes.added {
        let user = change.client.user();
        if !after.is_active_participant(&user) {
            return Err(PolicyViolation::ClientOfNonParticipant {
                client: change.client.clone(),
                user,
            });
        }
        let own = user == change.proposer;
        if !list_added.contains(&user) {
            if !own {
                return Err(PolicyViolation::ForeignClientAddition {
                    actor: change.proposer.clone(),
                    client: change.client.clone(),
                });
            }
            require(before, &change.proposer, capability::CAN_ADD_OWN_CLIENT)?;
        }
    }
    for change in changes.removed {
        let user = change.client.user();
        if user == change.proposer {
            // Leaving covers the removal of one's clients; a removed user needs nothing.
            if !leaving.contains(&user) && before.is_active_participant(&user) {
                require(before, &user, capability::CAN_REMOVE_OWN_CLIENT)?;
            }
        } else if !departed.contains(&user) {
            require(before, &change.proposer, capability::CAN_KICK)?;
        }
    }

    let counts_after = client_counts_after(clients, effects, changes);
    for user in &departed {
        let count = counts_after.get(user).copied().unwrap_or(0);
        if count > 0 {
            return Err(PolicyViolation::ClientsRemain {
                user: user.clone(),
                count,
            });
        }
    }
    check_constraints(before, after, clients, &counts_after, changes)
}

fn authorize_effect(
    before: &RoomPolicy,
    actor: &UserId,
    effect: &AppDataEffect,
) -> Result<(), PolicyViolation> {
    match effect {
        AppDataEffect::Participant { user, from, to } => {
            authorize_participant_change(before, actor, user, *from, *to)
        }
        AppDataEffect::RolesReplaced => {
            require(before, actor, capability::CAN_CHANGE_ROLE_DEFINITIONS)
        }
        AppDataEffect::BasePolicyChanged => {
            require(before, actor, capability::CAN_CHANGE_ROOM_MEMBERSHIP_STYLE)
        }
        AppDataEffect::MetadataChanged { capability } => require(before, actor, *capability),
    }
}

/// room-policy-03 §8.1: add, remove, leave, ban, unban and role change of one list entry.
fn authorize_participant_change(
    before: &RoomPolicy,
    actor: &UserId,
    target: &UserId,
    from: RoleIndex,
    to: RoleIndex,
) -> Result<(), PolicyViolation> {
    let own = actor == target;
    let (capability, via) = if from == ROLE_NONE {
        // A self-addition never gets here: its proposer is not an active participant.
        (capability::CAN_ADD_PARTICIPANT, ROLE_NONE)
    } else if to == ROLE_NONE {
        let capability = if own {
            capability::CAN_REMOVE_SELF
        } else {
            capability::CAN_REMOVE_PARTICIPANT
        };
        (capability, from)
    } else if before.is_banned(to) {
        if own {
            return Err(PolicyViolation::SelfBan {
                actor: actor.clone(),
            });
        }
        (capability::CAN_BAN, from)
    } else if before.is_banned(from) {
        (capability::CAN_UNBAN, from)
    } else {
        if own {
            return Err(PolicyViolation::OwnRoleChange {
                actor: actor.clone(),
            });
        }
        (capability::CAN_CHANGE_USER_ROLE, from)
    };
    require(before, actor, capability)?;
    let allowed = before
        .role(before.role_of(actor))
        .is_some_and(|role| role.allows_change(via, to));
    if allowed {
        Ok(())
    } else {
        Err(PolicyViolation::RoleChangeNotAuthorized {
            actor: actor.clone(),
            target: target.clone(),
            from,
            to,
        })
    }
}

fn require(
    policy: &RoomPolicy,
    actor: &UserId,
    capability: CapabilityType,
) -> Result<(), PolicyViolation> {
    if policy.user_has(actor, capability) {
        Ok(())
    } else {
        Err(PolicyViolation::MissingCapability {
            actor: actor.clone(),
            capability,
        })
    }
}

/// Client counts after the change, for the users it touches only.
fn client_counts_after(
    clients: &BTreeMap<UserId, u32>,
    effects: &[(UserId, AppDataEffect)],
    changes: &ChangeSet<'_>,
) -> BTreeMap<UserId, u32> {
    let mut counts: BTreeMap<UserId, i64> = BTreeMap::new();
    let touched = changes
        .added
        .iter()
        .chain(changes.removed.iter())
        .map(|change| change.client.user())
        .chain(effects.iter().filter_map(|(_, effect)| match effect {
            AppDataEffect::Participant { user, .. } => Some(user.clone()),
            _ => None,
        }));
    for user in touched {
        let current = i64::from(clients.get(&user).copied().unwrap_or(0));
        counts.entry(user).or_insert(current);
    }
    for change in changes.added {
        *counts.entry(change.client.user()).or_default() += 1;
    }
    for change in changes.removed {
        *counts.entry(change.client.user()).or_default() -= 1;
    }
    counts
        .into_iter()
        .map(|(user, count)| (user, u32::try_from(count.max(0)).unwrap_or(u32::MAX)))
        .collect()
}

/// Role min/max constraints (room-policy-03 §3) and base policy limits (§5), on the counts after
/// the whole change, for what the change moves: a role is checked against its minimums when it
/// loses (active) participants and against its maximums when it gains some.
fn check_constraints(
    before: &RoomPolicy,
    after: &RoomPolicy,
    clients_before: &BTreeMap<UserId, u32>,
    clients_after: &BTreeMap<UserId, u32>,
    changes: &ChangeSet<'_>,
) -> Result<(), PolicyViolation> {
    let active_before = |user: &UserId| clients_before.get(user).copied().unwrap_or(0) > 0;
    let active_after = |user: &UserId| {
        clients_after
            .get(user)
            .copied()
            .unwrap_or_else(|| clients_before.get(user).copied().unwrap_or(0))
            > 0
    };

    // Per-role deltas over the touched users.
    let mut delta: BTreeMap<RoleIndex, (i64, i64)> = BTreeMap::new();
    for user in clients_after.keys() {
        let (role_before, role_after) = (before.role_of(user), after.role_of(user));
        let (was_active, is_active) = (
            role_before != ROLE_NONE && active_before(user),
            role_after != ROLE_NONE && active_after(user),
        );
        if role_before != ROLE_NONE {
            let entry = delta.entry(role_before).or_default();
            entry.0 -= 1;
            entry.1 -= i64::from(was_active);
        }
        if role_after != ROLE_NONE {
            let entry = delta.entry(role_after).or_default();
            entry.0 += 1;
            entry.1 += i64::from(is_active);
        }
    }

    for (&role_index, &(participants_delta, active_delta)) in &delta {
        let Some(role) = after.role(role_index) else {
            continue;
        };
        let constrained = (participants_delta < 0 && role.minimum_participants_constraint > 0)
            || (active_delta < 0 && role.minimum_active_participants_constraint > 0)
            || (participants_delta > 0 && role.maximum_participants_constraint.is_some())
            || (active_delta > 0 && role.maximum_active_participants_constraint.is_some());
        if !constrained {
            continue;
        }
        let (count, active) = role_counts(after, role_index, &active_after);
        if participants_delta < 0 && count < role.minimum_participants_constraint {
            return Err(PolicyViolation::BelowMinimumParticipants {
                role: role_index,
                count,
                minimum: role.minimum_participants_constraint,
            });
        }
        if active_delta < 0 && active < role.minimum_active_participants_constraint {
            return Err(PolicyViolation::BelowMinimumActive {
                role: role_index,
                count: active,
                minimum: role.minimum_active_participants_constraint,
            });
        }
        if let Some(maximum) = role.maximum_participants_constraint {
            if participants_delta > 0 && count > maximum {
                return Err(PolicyViolation::AboveMaximumParticipants {
                    role: role_index,
                    count,
                    maximum,
                });
            }
        }
        if let Some(maximum) = role.maximum_active_participants_constraint {
            if active_delta > 0 && active > maximum {
                return Err(PolicyViolation::AboveMaximumActive {
                    role: role_index,
                    count: active,
                    maximum,
                });
            }
        }
    }
    check_base_limits(before, after, clients_before, clients_after, changes)
}

fn role_counts(
    policy: &RoomPolicy,
    role_index: RoleIndex,
    active: &impl Fn(&UserId) -> bool,
) -> (u32, u32) {
    let mut count = 0u32;
    let mut active_count = 0u32;
    for participant in policy
        .participants
        .iter()
        .filter(|participant| participant.role_index == role_index)
    {
        count = count.saturating_add(1);
        if active(&participant.user) {
            active_count = active_count.saturating_add(1);
        }
    }
    (count, active_count)
}

/// room-policy-03 §5: `max_users` (non-banned list entries), `max_clients`, `multi_device`.
fn check_base_limits(
    before: &RoomPolicy,
    after: &RoomPolicy,
    clients_before: &BTreeMap<UserId, u32>,
    clients_after: &BTreeMap<UserId, u32>,
    changes: &ChangeSet<'_>,
) -> Result<(), PolicyViolation> {
    let Some(base) = after.base() else {
        return Ok(());
    };
    if let Some(maximum) = base.max_users {
        let users = |policy: &RoomPolicy| {
            policy
                .participants
                .iter()
                .filter(|participant| !policy.is_banned(participant.role_index))
                .count()
        };
        let count = users(after);
        if count > users(before) && count > maximum as usize {
            return Err(PolicyViolation::TooManyUsers {
                count: u32::try_from(count).unwrap_or(u32::MAX),
                maximum,
            });
        }
    }
    if let Some(maximum) = base.max_clients {
        let total_before: u64 = clients_before.values().map(|&count| u64::from(count)).sum();
        let total_after = total_before + changes.added.len() as u64;
        let total_after = total_after.saturating_sub(changes.removed.len() as u64);
        if !changes.added.is_empty() && total_after > u64::from(maximum) {
            return Err(PolicyViolation::TooManyClients {
                count: u32::try_from(total_after).unwrap_or(u32::MAX),
                maximum,
            });
        }
    }
    if !bool::from(base.multi_device) {
        for change in changes.added {
            let user = change.client.user();
            let count = clients_after.get(&user).copied().unwrap_or(0);
            if count > 1 {
                return Err(PolicyViolation::SingleDevice { user, count });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn parse_user(bytes: &[u8]) -> Result<UserId, PolicyError> {
    UserId::from_bytes(bytes)
        .map_err(|_| PolicyError::BadUser(String::from_utf8_lossy(bytes).into()))
}

fn decode_component<T: DeserializeBytes>(
    component: ComponentId,
    bytes: &[u8],
) -> Result<T, PolicyError> {
    T::tls_deserialize_exact_bytes(bytes).map_err(|err| PolicyError::Malformed {
        component,
        reason: err.to_string(),
    })
}

/// TLS-encodes a wire struct.
pub fn encode<T: TlsSerializeTrait>(value: &T) -> Vec<u8> {
    value
        .tls_serialize_detached()
        .expect("policy structs built in memory stay below the TLS vector limits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(&format!("mimi://a.example/u/{name}")).unwrap()
    }

    fn client(name: &str, device: &str) -> ClientId {
        ClientId::new(&user(name), device).unwrap()
    }

    const MEMBER: RoleIndex = DEFAULT_ROLE_MEMBER;
    const ADMIN: RoleIndex = DEFAULT_ROLE_ADMIN;

    /// The default policy with alice (admin) and the given extra participants; `tweak` edits
    /// roles and base policy.
    fn room(
        extra: &[(&str, RoleIndex)],
        tweak: impl FnOnce(&mut Vec<Role>, &mut BaseRoomPolicy),
    ) -> RoomPolicy {
        let default = default_room_policy(&user("alice"));
        let mut roles = default.roles().to_vec();
        let mut base = default.base().unwrap().clone();
        tweak(&mut roles, &mut base);
        let mut participants = default.participants().to_vec();
        participants.extend(extra.iter().map(|(name, role)| Participant {
            user: user(name),
            role_index: *role,
        }));
        RoomPolicy::new(participants, roles, Some(base)).unwrap()
    }

    fn role_mut(roles: &mut [Role], index: RoleIndex) -> &mut Role {
        roles
            .iter_mut()
            .find(|role| role.role_index == index)
            .unwrap()
    }

    /// One client per active participant.
    fn one_client_each(policy: &RoomPolicy) -> BTreeMap<UserId, u32> {
        policy
            .participants()
            .iter()
            .filter(|participant| !policy.is_banned(participant.role_index))
            .map(|participant| (participant.user.clone(), 1))
            .collect()
    }

    #[derive(Default)]
    struct Case {
        committer: Option<&'static str>,
        updates: Vec<(&'static str, AppDataUpdateProposal)>,
        added: Vec<(&'static str, ClientId)>,
        removed: Vec<(&'static str, ClientId)>,
    }

    fn check(
        policy: &RoomPolicy,
        clients: &BTreeMap<UserId, u32>,
        case: Case,
    ) -> Result<(), PolicyViolation> {
        let dictionary = policy.to_dictionary();
        let resolution = resolve_app_data_updates(
            policy,
            Some(&dictionary),
            case.updates
                .iter()
                .map(|(proposer, proposal)| (user(proposer), proposal)),
        )
        .unwrap();
        let changes = |list: Vec<(&str, ClientId)>| -> Vec<ClientChange> {
            list.into_iter()
                .map(|(proposer, client)| ClientChange {
                    proposer: user(proposer),
                    client,
                })
                .collect()
        };
        let committer = case.committer.map(user);
        let added = changes(case.added);
        let removed = changes(case.removed);
        authorize(
            policy,
            clients,
            &ChangeSet {
                committer: committer.as_ref(),
                app_data: (!case.updates.is_empty()).then_some(&resolution),
                added: &added,
                removed: &removed,
                others: &[],
            },
        )
    }

    fn missing(actor: &str, capability: CapabilityType) -> Result<(), PolicyViolation> {
        Err(PolicyViolation::MissingCapability {
            actor: user(actor),
            capability,
        })
    }

    #[test]
    fn protocol06_7_5_participant_list_round_trips_and_rejects_non_minimal_lengths() {
        let policy = room(&[("bob", MEMBER)], |_, _| {});
        let bytes = encode(&policy.participant_list_data());
        let decoded = ParticipantListData::tls_deserialize_exact_bytes(&bytes).unwrap();
        assert_eq!(decoded, policy.participant_list_data());
        assert_eq!(
            RoomPolicy::from_dictionary(Some(&policy.to_dictionary())).unwrap(),
            policy
        );

        // One empty participant list with a 2-byte length prefix for 0: not minimal.
        assert!(ParticipantListData::tls_deserialize_exact_bytes(&[0x40, 0x00]).is_err());
        assert!(ParticipantListData::tls_deserialize_exact_bytes(&[0x00]).is_ok());
        assert!(ParticipantListData::tls_deserialize_exact_bytes(&[0x00, 0x00]).is_err());
    }

    #[test]
    fn room_policy_3_decoding_enforces_the_policy_invariants() {
        let policy = room(&[], |_, _| {});
        let mut dictionary = policy.to_dictionary();
        assert_eq!(
            RoomPolicy::from_dictionary(None),
            Err(PolicyError::MissingDictionary)
        );
        let duplicate = ParticipantListData {
            participants: vec![
                UserRolePair {
                    user: user("bob").as_bytes().to_vec().into(),
                    role_index: MEMBER,
                },
                UserRolePair {
                    user: user("bob").as_bytes().to_vec().into(),
                    role_index: ADMIN,
                },
            ],
        };
        dictionary.insert(component::PARTICIPANT_LIST, encode(&duplicate));
        assert_eq!(
            RoomPolicy::from_dictionary(Some(&dictionary)),
            Err(PolicyError::DuplicateParticipant(user("bob")))
        );
        let undefined = ParticipantListData {
            participants: vec![UserRolePair {
                user: user("bob").as_bytes().to_vec().into(),
                role_index: 9,
            }],
        };
        dictionary.insert(component::PARTICIPANT_LIST, encode(&undefined));
        assert_eq!(
            RoomPolicy::from_dictionary(Some(&dictionary)),
            Err(PolicyError::UndefinedRole {
                user: user("bob"),
                role: 9
            })
        );
        let not_a_user = ParticipantListData {
            participants: vec![UserRolePair {
                user: b"mimi://a.example/d/bob/x".to_vec().into(),
                role_index: MEMBER,
            }],
        };
        dictionary.insert(component::PARTICIPANT_LIST, encode(&not_a_user));
        assert!(matches!(
            RoomPolicy::from_dictionary(Some(&dictionary)),
            Err(PolicyError::BadUser(_))
        ));
    }

    #[test]
    fn mimi_8_3_indices_refer_to_the_list_before_the_commit() {
        let policy = room(
            &[("bob", MEMBER), ("cathy", MEMBER), ("dave", MEMBER)],
            |_, _| {},
        );
        let remove_bob = policy.remove_participants_proposal(&[user("bob")]).unwrap();
        let promote_dave = policy
            .change_roles_proposal(&[(user("dave"), ADMIN)])
            .unwrap();
        let add_erin = policy
            .add_participants_proposal(&[(user("erin"), MEMBER)])
            .unwrap();
        let dictionary = policy.to_dictionary();
        let resolution = resolve_app_data_updates(
            &policy,
            Some(&dictionary),
            [("x", &remove_bob), ("y", &promote_dave), ("z", &add_erin)],
        )
        .unwrap();
        let after: Vec<(UserId, RoleIndex)> = resolution
            .policy()
            .participants()
            .iter()
            .map(|participant| (participant.user.clone(), participant.role_index))
            .collect();
        assert_eq!(
            after,
            vec![
                (user("alice"), ADMIN),
                (user("cathy"), MEMBER),
                (user("dave"), ADMIN),
                (user("erin"), MEMBER),
            ]
        );
        assert_eq!(
            resolution.effects(),
            &[
                (
                    "x",
                    AppDataEffect::Participant {
                        user: user("bob"),
                        from: MEMBER,
                        to: ROLE_NONE
                    }
                ),
                (
                    "y",
                    AppDataEffect::Participant {
                        user: user("dave"),
                        from: MEMBER,
                        to: ADMIN
                    }
                ),
                (
                    "z",
                    AppDataEffect::Participant {
                        user: user("erin"),
                        from: ROLE_NONE,
                        to: MEMBER
                    }
                ),
            ]
        );
        let (policy_after, updates) = resolution.into_parts();
        assert_eq!(updates.map(|updates| updates.len()), Some(1));
        assert_eq!(
            RoomPolicy::from_dictionary(Some(&policy_after.to_dictionary())).unwrap(),
            policy_after
        );
    }

    #[test]
    fn mimi_8_3_a_user_touched_twice_or_a_bad_index_is_invalid() {
        let policy = room(&[("bob", MEMBER)], |_, _| {});
        let dictionary = policy.to_dictionary();
        let resolve = |proposals: Vec<ParticipantListUpdate>| {
            let proposals: Vec<_> = proposals.iter().map(participant_list_proposal).collect();
            resolve_app_data_updates(
                &policy,
                Some(&dictionary),
                proposals.iter().map(|p| ((), p)),
            )
            .map(|_| ())
        };
        let remove = |index| ParticipantListUpdate {
            removed_indices: vec![index],
            ..Default::default()
        };
        let change = |index, role| ParticipantListUpdate {
            changed_role_participants: vec![UserindexRolePair {
                user_index: index,
                role_index: role,
            }],
            ..Default::default()
        };
        let add = |name: &str, role| ParticipantListUpdate {
            added_participants: vec![UserRolePair {
                user: user(name).as_bytes().to_vec().into(),
                role_index: role,
            }],
            ..Default::default()
        };
        assert_eq!(
            resolve(vec![remove(1), change(1, ADMIN)]),
            Err(PolicyError::TouchedTwice(user("bob")))
        );
        assert_eq!(
            resolve(vec![remove(1), remove(1)]),
            Err(PolicyError::TouchedTwice(user("bob")))
        );
        assert_eq!(
            resolve(vec![add("erin", MEMBER), add("erin", MEMBER)]),
            Err(PolicyError::TouchedTwice(user("erin")))
        );
        assert_eq!(
            resolve(vec![add("bob", MEMBER)]),
            Err(PolicyError::AlreadyParticipant(user("bob")))
        );
        assert_eq!(
            resolve(vec![remove(2)]),
            Err(PolicyError::IndexOutOfRange { index: 2, len: 2 })
        );
        assert_eq!(
            resolve(vec![change(1, MEMBER)]),
            Err(PolicyError::RoleUnchanged {
                user: user("bob"),
                role: MEMBER
            })
        );
        assert_eq!(
            resolve(vec![change(1, ROLE_NONE)]),
            Err(PolicyError::ZeroRole(user("bob")))
        );
        assert_eq!(
            resolve(vec![add("erin", 7)]),
            Err(PolicyError::UndefinedRole {
                user: user("erin"),
                role: 7
            })
        );
        let removal = AppDataUpdateProposal::remove(component::PARTICIPANT_LIST);
        assert_eq!(
            resolve_app_data_updates(&policy, Some(&dictionary), [((), &removal)]).map(|_| ()),
            Err(PolicyError::ComponentRemoval(component::PARTICIPANT_LIST))
        );
    }

    #[test]
    fn room_policy_3_roles_changes_are_alone_and_keep_held_roles() {
        let policy = room(&[("bob", MEMBER)], |_, _| {});
        let dictionary = policy.to_dictionary();
        let mut roles = policy.role_data();
        roles.roles.retain(|role| role.role_index != MEMBER);
        let drop_member = AppDataUpdateProposal::update(component::ROLES_LIST, encode(&roles));
        assert_eq!(
            resolve_app_data_updates(&policy, Some(&dictionary), [((), &drop_member)]).map(|_| ()),
            Err(PolicyError::UndefinedRole {
                user: user("bob"),
                role: MEMBER
            })
        );
        let same_roles =
            AppDataUpdateProposal::update(component::ROLES_LIST, encode(&policy.role_data()));
        let add = policy
            .add_participants_proposal(&[(user("erin"), MEMBER)])
            .unwrap();
        assert_eq!(
            resolve_app_data_updates(&policy, Some(&dictionary), [((), &same_roles), ((), &add)])
                .map(|_| ()),
            Err(PolicyError::RolesWithParticipantChanges)
        );
        // Alone, it needs canChangeRoleDefinitions, which the default admin does not hold.
        let clients = one_client_each(&policy);
        let case = Case {
            updates: vec![("alice", same_roles)],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, case),
            missing("alice", capability::CAN_CHANGE_ROLE_DEFINITIONS)
        );
    }

    #[test]
    fn room_policy_8_1_adding_participants_and_their_clients() {
        let policy = room(&[("bob", MEMBER)], |_, _| {});
        let clients = one_client_each(&policy);
        let add = |role| {
            policy
                .add_participants_proposal(&[(user("erin"), role)])
                .unwrap()
        };
        let erin = client("erin", "phone");

        let ok = Case {
            committer: Some("alice"),
            updates: vec![("alice", add(MEMBER))],
            added: vec![("alice", erin.clone())],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, ok), Ok(()));
        let as_admin = Case {
            updates: vec![("alice", add(ADMIN))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, as_admin),
            Err(PolicyViolation::RoleChangeNotAuthorized {
                actor: user("alice"),
                target: user("erin"),
                from: 0,
                to: ADMIN
            })
        );
        let by_member = Case {
            updates: vec![("bob", add(MEMBER))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, by_member),
            missing("bob", capability::CAN_ADD_PARTICIPANT)
        );
        let self_add = Case {
            updates: vec![("erin", add(MEMBER))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, self_add),
            Err(PolicyViolation::SelfAddition {
                actor: user("erin")
            })
        );
        // Own second device: canAddOwnClient.
        let own = Case {
            added: vec![("bob", client("bob", "tablet"))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, own), Ok(()));
        let foreign = Case {
            added: vec![("alice", client("bob", "tablet"))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, foreign),
            Err(PolicyViolation::ForeignClientAddition {
                actor: user("alice"),
                client: client("bob", "tablet")
            })
        );
        let stranger = Case {
            added: vec![("alice", erin)],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, stranger),
            Err(PolicyViolation::ClientOfNonParticipant {
                client: client("erin", "phone"),
                user: user("erin")
            })
        );
    }

    #[test]
    fn room_policy_8_1_2_removal_leave_and_kick() {
        let policy = room(&[("bob", MEMBER), ("cathy", MEMBER)], |_, _| {});
        let clients = one_client_each(&policy);
        let remove = |name: &str| policy.remove_participants_proposal(&[user(name)]).unwrap();
        let bob = client("bob", "laptop");

        let leave = Case {
            updates: vec![("bob", remove("bob"))],
            removed: vec![("bob", bob.clone())],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, leave), Ok(()));
        let leave_keeping_client = Case {
            updates: vec![("bob", remove("bob"))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, leave_keeping_client),
            Err(PolicyViolation::ClientsRemain {
                user: user("bob"),
                count: 1
            })
        );
        let by_member = Case {
            updates: vec![("cathy", remove("bob"))],
            removed: vec![("cathy", bob.clone())],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, by_member),
            missing("cathy", capability::CAN_REMOVE_PARTICIPANT)
        );
        let by_admin = Case {
            updates: vec![("alice", remove("bob"))],
            removed: vec![("alice", bob.clone())],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, by_admin), Ok(()));
        let kick = Case {
            removed: vec![("alice", bob.clone())],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, kick), Ok(()));
        let kick_by_member = Case {
            removed: vec![("cathy", bob.clone())],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, kick_by_member),
            missing("cathy", capability::CAN_KICK)
        );
        let own_client = Case {
            removed: vec![("bob", bob.clone())],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, own_client), Ok(()));
        // A removed user may still remove its leftover clients, but nothing else.
        let gone = room(&[("cathy", MEMBER)], |_, _| {});
        let mut leftover = one_client_each(&gone);
        leftover.insert(user("bob"), 1);
        let cleanup = Case {
            removed: vec![("bob", bob.clone())],
            ..Case::default()
        };
        assert_eq!(check(&gone, &leftover, cleanup), Ok(()));
        let meddling = Case {
            removed: vec![("bob", client("cathy", "x"))],
            ..Case::default()
        };
        assert_eq!(
            check(&gone, &leftover, meddling),
            Err(PolicyViolation::OnlyOwnClientRemoval { actor: user("bob") })
        );
        let commit = Case {
            committer: Some("bob"),
            ..Case::default()
        };
        assert_eq!(
            check(&gone, &leftover, commit),
            Err(PolicyViolation::CommitterNotActive {
                committer: user("bob")
            })
        );
    }

    #[test]
    fn room_policy_8_1_3_role_changes_ban_and_unban() {
        let policy = room(&[("bob", MEMBER), ("cathy", ROLE_BANNED)], |_, _| {});
        let clients = one_client_each(&policy);
        let change =
            |name: &str, role| policy.change_roles_proposal(&[(user(name), role)]).unwrap();

        let promote = Case {
            updates: vec![("alice", change("bob", ADMIN))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, promote), Ok(()));
        let own = Case {
            updates: vec![("bob", change("bob", ADMIN))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, own),
            Err(PolicyViolation::OwnRoleChange { actor: user("bob") })
        );
        let ban = Case {
            updates: vec![("alice", change("bob", ROLE_BANNED))],
            removed: vec![("alice", client("bob", "laptop"))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, ban), Ok(()));
        let ban_keeping_client = Case {
            updates: vec![("alice", change("bob", ROLE_BANNED))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, ban_keeping_client),
            Err(PolicyViolation::ClientsRemain {
                user: user("bob"),
                count: 1
            })
        );
        let self_ban = Case {
            updates: vec![("alice", change("alice", ROLE_BANNED))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, self_ban),
            Err(PolicyViolation::SelfBan {
                actor: user("alice")
            })
        );
        let unban = Case {
            updates: vec![("alice", change("cathy", MEMBER))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, unban), Ok(()));
        let unban_by_member = Case {
            updates: vec![("bob", change("cathy", MEMBER))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, unban_by_member),
            missing("bob", capability::CAN_UNBAN)
        );
        let banned_proposer = Case {
            updates: vec![("cathy", change("bob", ADMIN))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, banned_proposer),
            Err(PolicyViolation::OnlyOwnClientRemoval {
                actor: user("cathy")
            })
        );
    }

    #[test]
    fn room_policy_3_constraints_are_checked_after_the_whole_commit() {
        let policy = room(&[("bob", MEMBER)], |roles, _| {
            role_mut(roles, ADMIN).minimum_participants_constraint = 1;
            role_mut(roles, MEMBER).maximum_participants_constraint = Some(2);
            role_mut(roles, MEMBER).maximum_active_participants_constraint = Some(1);
        });
        let clients = one_client_each(&policy);
        // The only admin cannot leave...
        let leave = Case {
            updates: vec![(
                "alice",
                policy
                    .remove_participants_proposal(&[user("alice")])
                    .unwrap(),
            )],
            removed: vec![("alice", client("alice", "phone"))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, leave),
            Err(PolicyViolation::BelowMinimumParticipants {
                role: ADMIN,
                count: 0,
                minimum: 1
            })
        );
        // ...unless the same commit promotes another admin.
        let swap = Case {
            updates: vec![
                (
                    "alice",
                    policy
                        .remove_participants_proposal(&[user("alice")])
                        .unwrap(),
                ),
                (
                    "alice",
                    policy
                        .change_roles_proposal(&[(user("bob"), ADMIN)])
                        .unwrap(),
                ),
            ],
            removed: vec![("alice", client("alice", "phone"))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, swap), Ok(()));
        // Member: at most 2 listed, at most 1 active.
        let add = |names: &[&str]| {
            let users: Vec<_> = names.iter().map(|name| (user(name), MEMBER)).collect();
            policy.add_participants_proposal(&users).unwrap()
        };
        let inactive_add = Case {
            updates: vec![("alice", add(&["erin"]))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, inactive_add), Ok(()));
        let active_add = Case {
            updates: vec![("alice", add(&["erin"]))],
            added: vec![("alice", client("erin", "phone"))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, active_add),
            Err(PolicyViolation::AboveMaximumActive {
                role: MEMBER,
                count: 2,
                maximum: 1
            })
        );
        let too_many = Case {
            updates: vec![("alice", add(&["erin", "fred"]))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, too_many),
            Err(PolicyViolation::AboveMaximumParticipants {
                role: MEMBER,
                count: 3,
                maximum: 2
            })
        );
    }

    #[test]
    fn room_policy_5_base_policy_limits() {
        let policy = room(&[("bob", MEMBER)], |_, base| {
            base.max_users = Some(2);
            base.max_clients = Some(3);
            base.multi_device = TlsBool::False;
        });
        let clients = one_client_each(&policy);
        let add_user = Case {
            updates: vec![(
                "alice",
                policy
                    .add_participants_proposal(&[(user("erin"), MEMBER)])
                    .unwrap(),
            )],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, add_user),
            Err(PolicyViolation::TooManyUsers {
                count: 3,
                maximum: 2
            })
        );
        let second_device = Case {
            added: vec![("bob", client("bob", "tablet"))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, second_device),
            Err(PolicyViolation::SingleDevice {
                user: user("bob"),
                count: 2
            })
        );
        let mut crowded = clients.clone();
        crowded.insert(user("alice"), 2);
        let replace = Case {
            added: vec![("bob", client("bob", "tablet"))],
            removed: vec![("bob", client("bob", "laptop"))],
            ..Case::default()
        };
        assert_eq!(check(&policy, &crowded, replace), Ok(()));
        let more = Case {
            added: vec![("bob", client("bob", "tablet"))],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &crowded, more),
            Err(PolicyViolation::TooManyClients {
                count: 4,
                maximum: 3
            })
        );
    }

    #[test]
    fn protocol06_7_6_metadata_changes_need_the_field_capability() {
        let policy = room(&[("bob", MEMBER)], |roles, _| {
            role_mut(roles, ADMIN)
                .role_capabilities
                .push(capability::CAN_CHANGE_ROOM_NAME);
        });
        let clients = one_client_each(&policy);
        let named = |name: &str| RoomMetaData {
            room_uri: Uri {
                uri: b"mimi://a.example/r/clubhouse".to_vec().into(),
            },
            room_name: Utf8String {
                string: name.as_bytes().to_vec().into(),
            },
            ..RoomMetaData::default()
        };
        let rename =
            || AppDataUpdateProposal::update(component::ROOM_METADATA, encode(&named("Clubhouse")));
        let by_admin = Case {
            updates: vec![("alice", rename())],
            ..Case::default()
        };
        assert_eq!(check(&policy, &clients, by_admin), Ok(()));
        let by_member = Case {
            updates: vec![("bob", rename())],
            ..Case::default()
        };
        assert_eq!(
            check(&policy, &clients, by_member),
            missing("bob", capability::CAN_CHANGE_ROOM_NAME)
        );

        let mut dictionary = policy.to_dictionary();
        dictionary.insert(component::ROOM_METADATA, encode(&named("Old")));
        let moved = RoomMetaData {
            room_uri: Uri {
                uri: b"mimi://a.example/r/elsewhere".to_vec().into(),
            },
            ..named("Old")
        };
        let proposal = AppDataUpdateProposal::update(component::ROOM_METADATA, encode(&moved));
        assert_eq!(
            resolve_app_data_updates(&policy, Some(&dictionary), [((), &proposal)]).map(|_| ()),
            Err(PolicyError::RoomUriChanged)
        );
    }

    #[test]
    fn default_policy_and_group_context_extensions() {
        let policy = default_room_policy(&user("alice"));
        assert!(policy.has_banned_role());
        assert_eq!(policy.role_of(&user("alice")), ADMIN);
        assert!(policy.user_has(&user("alice"), capability::CAN_ADD_PARTICIPANT));
        assert!(!policy.role(ADMIN).unwrap().has(capability::CAN_OPEN_JOIN));
        let member = policy.role(MEMBER).unwrap();
        for capability in [
            capability::CAN_SEND_MESSAGE,
            capability::CAN_RECEIVE_MESSAGE,
            capability::CAN_ADD_OWN_CLIENT,
            capability::CAN_REMOVE_SELF,
            capability::CAN_REMOVE_OWN_CLIENT,
        ] {
            assert!(member.has(capability), "{}", CapabilityDisplay(capability));
        }
        let extensions = room_group_context_extensions(&policy);
        assert_eq!(RoomPolicy::from_extensions(&extensions).unwrap(), policy);
        let required = extensions.required_capabilities().unwrap();
        assert!(required
            .proposal_types()
            .contains(&ProposalType::AppDataUpdate));
        assert!(room_leaf_capabilities()
            .proposals()
            .contains(&ProposalType::SelfRemove));
        assert_eq!(capability_name(capability::CAN_UNBAN), Some("canUnBan"));
        assert_eq!(capability_name(0xf000), None);
    }
}
