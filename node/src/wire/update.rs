//! protocol-06 §5.2 (MIMI.md §5.2): `POST /update/{roomId}` bodies, with the GroupInfo and
//! ratchet-tree conveyance types of draft-mahy-mls-ratchet-tree-options (MIMI.md §11), and the
//! conversions to and from the domain's `HandshakeBundle` and `UpdateVerdict`.

use mimid_actors::command::{self, UpdateVerdict};
use openmls::extensions::Extensions;
use openmls::messages::group_info::{GroupInfo, VerifiableGroupInfo};
use openmls::prelude::{ContentType, RatchetTreeIn, Welcome};

use super::codec::{wire_enum, Decode, Encode, Mls, MlsMessage, Reader, WireError, Writer};
use super::types::ProposalRef;

wire_enum! {
    /// `enum { reserved(0), full(1), httpsUri(2), outOfBand(3), distributionService(4), (255) }
    /// RatchetTreeRepresentation;`
    RatchetTreeRepresentation, "RatchetTreeOption.representation" {
        Full = 1,
        HttpsUri = 2,
        OutOfBand = 3,
        DistributionService = 4,
    }
}

/// `RatchetTreeOption`: how a joiner obtains the ratchet tree.
///
/// [IMPL CHOICE] `full` carries `Node ratchet_tree<V>` in the draft, which cannot express
/// blank nodes; we read it as the RFC 9420 §12.4.3.3 `ratchet_tree` extension encoding
/// (`optional<Node> ratchet_tree<V>`, openmls `RatchetTreeIn`), the same bytes a client gets
/// from `export_ratchet_tree`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RatchetTreeOption {
    Full(Mls<RatchetTreeIn>),
    HttpsUri {
        ratchet_tree_url: Vec<u8>,
        tree_signature: Vec<u8>,
    },
    OutOfBand {
        tree_signature: Vec<u8>,
    },
    /// The hub rebuilds the tree from the handshakes it has seen (it tracks the public tree
    /// with openmls `PublicGroup` anyway).
    DistributionService,
}

impl RatchetTreeOption {
    pub fn representation(&self) -> RatchetTreeRepresentation {
        match self {
            RatchetTreeOption::Full(_) => RatchetTreeRepresentation::Full,
            RatchetTreeOption::HttpsUri { .. } => RatchetTreeRepresentation::HttpsUri,
            RatchetTreeOption::OutOfBand { .. } => RatchetTreeRepresentation::OutOfBand,
            RatchetTreeOption::DistributionService => {
                RatchetTreeRepresentation::DistributionService
            }
        }
    }
}

impl Encode for RatchetTreeOption {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.representation().encode(w)?;
        match self {
            RatchetTreeOption::Full(tree) => tree.encode(w),
            RatchetTreeOption::HttpsUri {
                ratchet_tree_url,
                tree_signature,
            } => {
                w.opaque("RatchetTreeOption.ratchet_tree_url", ratchet_tree_url)?;
                w.opaque("RatchetTreeOption.tree_signature", tree_signature)
            }
            RatchetTreeOption::OutOfBand { tree_signature } => {
                w.opaque("RatchetTreeOption.tree_signature", tree_signature)
            }
            RatchetTreeOption::DistributionService => Ok(()),
        }
    }
}

impl Decode for RatchetTreeOption {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match RatchetTreeRepresentation::decode(r)? {
            RatchetTreeRepresentation::Full => {
                RatchetTreeOption::Full(r.mls("RatchetTreeOption.ratchet_tree")?)
            }
            RatchetTreeRepresentation::HttpsUri => RatchetTreeOption::HttpsUri {
                ratchet_tree_url: r.opaque_vec("RatchetTreeOption.ratchet_tree_url")?,
                tree_signature: r.opaque_vec("RatchetTreeOption.tree_signature")?,
            },
            RatchetTreeRepresentation::OutOfBand => RatchetTreeOption::OutOfBand {
                tree_signature: r.opaque_vec("RatchetTreeOption.tree_signature")?,
            },
            RatchetTreeRepresentation::DistributionService => {
                RatchetTreeOption::DistributionService
            }
        })
    }
}

wire_enum! {
    /// `enum { no_ratchet_tree(0), present(1), removed(2), added(3), (255) }
    /// RatchetTreePresence;`
    RatchetTreePresence, "PartialGroupInfo.ratchet_tree_presence" {
        NoRatchetTree = 0,
        Present = 1,
        Removed = 2,
        Added = 3,
    }
}

/// `PartialGroupInfo`: what the hub needs to rebuild the committer's GroupInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialGroupInfo {
    pub ratchet_tree_presence: RatchetTreePresence,
    /// GroupInfo extensions minus `ratchet_tree`, validated as GroupInfo extensions by openmls.
    pub group_info_extensions: Mls<Extensions<GroupInfo>>,
    pub signature: Vec<u8>,
}

impl Encode for PartialGroupInfo {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.ratchet_tree_presence.encode(w)?;
        self.group_info_extensions.encode(w)?;
        w.opaque("PartialGroupInfo.signature", &self.signature)
    }
}

impl Decode for PartialGroupInfo {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(PartialGroupInfo {
            ratchet_tree_presence: RatchetTreePresence::decode(r)?,
            group_info_extensions: r.mls("PartialGroupInfo.group_info_extensions")?,
            signature: r.opaque_vec("PartialGroupInfo.signature")?,
        })
    }
}

wire_enum! {
    /// `enum { reserved(0), full(1), partial(2), (255) } GroupInfoRepresentation;`
    GroupInfoRepresentation, "GroupInfoOption.representation" {
        Full = 1,
        Partial = 2,
    }
}

/// `GroupInfoOption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupInfoOption {
    /// The committer's GroupInfo for the new epoch (bare `GroupInfo`, not an `MLSMessage`).
    Full(Mls<VerifiableGroupInfo>),
    Partial(PartialGroupInfo),
}

impl GroupInfoOption {
    pub fn representation(&self) -> GroupInfoRepresentation {
        match self {
            GroupInfoOption::Full(_) => GroupInfoRepresentation::Full,
            GroupInfoOption::Partial(_) => GroupInfoRepresentation::Partial,
        }
    }
}

impl Encode for GroupInfoOption {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.representation().encode(w)?;
        match self {
            GroupInfoOption::Full(group_info) => group_info.encode(w),
            GroupInfoOption::Partial(partial) => partial.encode(w),
        }
    }
}

impl Decode for GroupInfoOption {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match GroupInfoRepresentation::decode(r)? {
            GroupInfoRepresentation::Full => {
                GroupInfoOption::Full(r.mls("GroupInfoOption.groupInfo")?)
            }
            GroupInfoRepresentation::Partial => {
                GroupInfoOption::Partial(PartialGroupInfo::decode(r)?)
            }
        })
    }
}

/// `HandshakeBundle`, whose `select` depends on the content type of `proposalOrCommit`.
///
/// The codec accepts any `MLSMessage` whose cleartext content type is commit or proposal
/// (PublicMessage, or PrivateMessage which also shows its content type); whether a
/// PrivateMessage handshake is acceptable is the hub's decision (MIMI.md §7.2, §7.3), not the
/// codec's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeBundle {
    Commit {
        commit: MlsMessage,
        /// Without `ratchet_tree` extension (bare `Welcome`, not an `MLSMessage`).
        welcome: Option<Mls<Welcome>>,
        group_info_option: GroupInfoOption,
        ratchet_tree_option: RatchetTreeOption,
    },
    /// A proposal and the `moreProposals` that travel with it as one unit.
    Proposals {
        proposal: MlsMessage,
        more_proposals: Vec<MlsMessage>,
    },
}

const PROPOSAL_OR_COMMIT: &str = "HandshakeBundle.proposalOrCommit";

impl Encode for HandshakeBundle {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        match self {
            HandshakeBundle::Commit {
                commit,
                welcome,
                group_info_option,
                ratchet_tree_option,
            } => {
                expect_content(commit, ContentType::Commit, PROPOSAL_OR_COMMIT)?;
                commit.encode(w)?;
                w.optional(welcome.as_ref(), |w, welcome| welcome.encode(w))?;
                group_info_option.encode(w)?;
                ratchet_tree_option.encode(w)
            }
            HandshakeBundle::Proposals {
                proposal,
                more_proposals,
            } => {
                expect_content(proposal, ContentType::Proposal, PROPOSAL_OR_COMMIT)?;
                proposal.encode(w)?;
                w.vector_of("HandshakeBundle.moreProposals", more_proposals)
            }
        }
    }
}

impl Decode for HandshakeBundle {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let first = r.mls_message(PROPOSAL_OR_COMMIT)?;
        match first.content_type() {
            Some(ContentType::Commit) => Ok(HandshakeBundle::Commit {
                commit: first,
                welcome: r.optional("HandshakeBundle.welcome", |r| {
                    r.mls("HandshakeBundle.welcome")
                })?,
                group_info_option: GroupInfoOption::decode(r)?,
                ratchet_tree_option: RatchetTreeOption::decode(r)?,
            }),
            Some(ContentType::Proposal) => Ok(HandshakeBundle::Proposals {
                proposal: first,
                more_proposals: r.vector("HandshakeBundle.moreProposals", |r| {
                    r.mls_message("HandshakeBundle.moreProposals")
                })?,
            }),
            _ => Err(WireError::UnexpectedMessage {
                field: PROPOSAL_OR_COMMIT,
                expected: "a proposal or commit",
                found: first.kind().name(),
            }),
        }
    }
}

fn expect_content(
    message: &MlsMessage,
    expected: ContentType,
    field: &'static str,
) -> Result<(), WireError> {
    if message.content_type() == Some(expected) {
        Ok(())
    } else {
        Err(WireError::UnexpectedMessage {
            field,
            expected: match expected {
                ContentType::Application => "application content",
                ContentType::Proposal => "a proposal",
                ContentType::Commit => "a commit",
            },
            found: message.kind().name(),
        })
    }
}

/// `UpdateRequest`: `select (room.protocol) { case mls10: HandshakeBundle bundle; }` — the
/// protocol comes from the room, so nothing but the bundle is on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    pub bundle: HandshakeBundle,
}

impl Encode for UpdateRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.bundle.encode(w)
    }
}

impl Decode for UpdateRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(UpdateRequest {
            bundle: HandshakeBundle::decode(r)?,
        })
    }
}

/// Wire to domain. The domain stores every MLS object as `MLSMessage` bytes, so the bare
/// Welcome and GroupInfo are wrapped.
///
/// [IMPL CHOICE] The `RatchetTreeOption` of a commit is not carried into the domain: the hub
/// tracks the public ratchet tree itself (openmls `PublicGroup`) and serves it from there, so a
/// `full` tree from the committer would be redundant and a URL or out-of-band tree is not
/// needed. A `partial` GroupInfo is rejected: rebuilding a GroupInfo from a PartialGroupInfo
/// is not available in openmls (MIMI.md §12).
impl TryFrom<UpdateRequest> for command::HandshakeBundle {
    type Error = WireError;

    fn try_from(request: UpdateRequest) -> Result<Self, WireError> {
        match request.bundle {
            HandshakeBundle::Commit {
                commit,
                welcome,
                group_info_option,
                ratchet_tree_option: _,
            } => {
                let group_info = match group_info_option {
                    GroupInfoOption::Full(group_info) => MlsMessage::wrap(&group_info)?,
                    GroupInfoOption::Partial(_) => {
                        return Err(WireError::Unsupported {
                            what: "HandshakeBundle.groupInfoOption",
                            reason: "partial GroupInfo; send the full GroupInfo",
                        })
                    }
                };
                let welcome = welcome.map(|w| MlsMessage::wrap(&w)).transpose()?;
                Ok(command::HandshakeBundle::Commit {
                    commit: commit.into_bytes(),
                    welcome: welcome.map(MlsMessage::into_bytes),
                    group_info: Some(group_info.into_bytes()),
                })
            }
            HandshakeBundle::Proposals {
                proposal,
                more_proposals,
            } => {
                let mut proposals = Vec::with_capacity(1 + more_proposals.len());
                proposals.push(proposal.into_bytes());
                proposals.extend(more_proposals.into_iter().map(MlsMessage::into_bytes));
                Ok(command::HandshakeBundle::Proposals { proposals })
            }
        }
    }
}

/// Domain to wire (what a client library sends). The domain's Welcome and GroupInfo are
/// `MLSMessage`s and are unwrapped to the bare structures protocol-06 carries; the tree option
/// is `distributionService` because the hub maintains the tree (see the wire-to-domain note).
impl TryFrom<&command::HandshakeBundle> for UpdateRequest {
    type Error = WireError;

    fn try_from(bundle: &command::HandshakeBundle) -> Result<Self, WireError> {
        let bundle = match bundle {
            command::HandshakeBundle::Commit {
                commit,
                welcome,
                group_info,
            } => {
                let group_info = group_info.as_deref().ok_or(WireError::Invalid {
                    field: "HandshakeBundle.groupInfoOption",
                    reason: "a commit must carry the committer's GroupInfo",
                })?;
                let welcome = welcome
                    .as_deref()
                    .map(|bytes| {
                        MlsMessage::from_bytes(bytes)?.unwrap_body("HandshakeBundle.welcome")
                    })
                    .transpose()?;
                let group_info = MlsMessage::from_bytes(group_info)?
                    .unwrap_body("HandshakeBundle.groupInfoOption")?;
                let commit = MlsMessage::from_bytes(commit)?;
                expect_content(&commit, ContentType::Commit, PROPOSAL_OR_COMMIT)?;
                HandshakeBundle::Commit {
                    commit,
                    welcome,
                    group_info_option: GroupInfoOption::Full(group_info),
                    ratchet_tree_option: RatchetTreeOption::DistributionService,
                }
            }
            command::HandshakeBundle::Proposals { proposals } => {
                let (first, rest) = proposals.split_first().ok_or(WireError::Invalid {
                    field: PROPOSAL_OR_COMMIT,
                    reason: "a proposal bundle needs at least one proposal",
                })?;
                let proposal = MlsMessage::from_bytes(first)?;
                expect_content(&proposal, ContentType::Proposal, PROPOSAL_OR_COMMIT)?;
                HandshakeBundle::Proposals {
                    proposal,
                    more_proposals: rest
                        .iter()
                        .map(|bytes| MlsMessage::from_bytes(bytes))
                        .collect::<Result<_, _>>()?,
                }
            }
        };
        Ok(UpdateRequest { bundle })
    }
}

wire_enum! {
    /// `enum { success(0), wrongEpoch(1), notAllowed(2), invalidProposal(3), (255) }
    /// UpdateResponseCode;`
    UpdateResponseCode, "UpdateRoomResponse.responseCode" {
        Success = 0,
        WrongEpoch = 1,
        NotAllowed = 2,
        InvalidProposal = 3,
    }
}

/// The `select (responseCode)` part of `UpdateRoomResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Milliseconds since the UNIX epoch.
    Success {
        accepted_timestamp: u64,
    },
    WrongEpoch {
        current_epoch: u64,
    },
    NotAllowed,
    InvalidProposal {
        invalid_proposals: Vec<ProposalRef>,
    },
}

/// `UpdateRoomResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRoomResponse {
    pub error_description: String,
    pub outcome: UpdateOutcome,
}

impl UpdateRoomResponse {
    pub fn response_code(&self) -> UpdateResponseCode {
        match self.outcome {
            UpdateOutcome::Success { .. } => UpdateResponseCode::Success,
            UpdateOutcome::WrongEpoch { .. } => UpdateResponseCode::WrongEpoch,
            UpdateOutcome::NotAllowed => UpdateResponseCode::NotAllowed,
            UpdateOutcome::InvalidProposal { .. } => UpdateResponseCode::InvalidProposal,
        }
    }
}

impl Encode for UpdateRoomResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.response_code().encode(w)?;
        w.string(
            "UpdateRoomResponse.errorDescription",
            &self.error_description,
        )?;
        match &self.outcome {
            UpdateOutcome::Success { accepted_timestamp } => w.u64(*accepted_timestamp),
            UpdateOutcome::WrongEpoch { current_epoch } => w.u64(*current_epoch),
            UpdateOutcome::NotAllowed => {}
            UpdateOutcome::InvalidProposal { invalid_proposals } => {
                w.vector_of("UpdateRoomResponse.invalidProposals", invalid_proposals)?
            }
        }
        Ok(())
    }
}

impl Decode for UpdateRoomResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let code = UpdateResponseCode::decode(r)?;
        let error_description = r.string("UpdateRoomResponse.errorDescription")?;
        let outcome = match code {
            UpdateResponseCode::Success => UpdateOutcome::Success {
                accepted_timestamp: r.u64("UpdateRoomResponse.accepted_timestamp")?,
            },
            UpdateResponseCode::WrongEpoch => UpdateOutcome::WrongEpoch {
                current_epoch: r.u64("UpdateRoomResponse.currentEpoch")?,
            },
            UpdateResponseCode::NotAllowed => UpdateOutcome::NotAllowed,
            UpdateResponseCode::InvalidProposal => UpdateOutcome::InvalidProposal {
                invalid_proposals: r.vector_of("UpdateRoomResponse.invalidProposals")?,
            },
        };
        Ok(UpdateRoomResponse {
            error_description,
            outcome,
        })
    }
}

/// The verdict the hub's apply produced, as the protocol-06 response (the room log sequence
/// number of a success is not part of it; see `client::ClientUpdateResponse`).
impl From<&UpdateVerdict> for UpdateRoomResponse {
    fn from(verdict: &UpdateVerdict) -> Self {
        match verdict {
            UpdateVerdict::Success { accepted_ts_ms, .. } => UpdateRoomResponse {
                error_description: String::new(),
                outcome: UpdateOutcome::Success {
                    accepted_timestamp: *accepted_ts_ms,
                },
            },
            UpdateVerdict::WrongEpoch { current_epoch } => UpdateRoomResponse {
                error_description: format!("the room is at epoch {current_epoch}"),
                outcome: UpdateOutcome::WrongEpoch {
                    current_epoch: *current_epoch,
                },
            },
            UpdateVerdict::NotAllowed { reason } => UpdateRoomResponse {
                error_description: reason.clone(),
                outcome: UpdateOutcome::NotAllowed,
            },
            UpdateVerdict::InvalidProposal { refs, reason } => UpdateRoomResponse {
                error_description: reason.clone(),
                outcome: UpdateOutcome::InvalidProposal {
                    invalid_proposals: refs.iter().cloned().map(ProposalRef).collect(),
                },
            },
        }
    }
}
