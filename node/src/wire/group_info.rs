//! protocol-06 §5.5 (MIMI.md §5.5): `POST /groupInfo/{roomId}` bodies for external joins.

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{Credential, ExternalSender};
use openmls_traits::types::HpkeCiphertext;

use super::codec::{wire_enum, Decode, Encode, Mls, MlsMessage, Reader, WireError, Writer};
use super::types::{CipherSuite, HpkePublicKey, Protocol, SignaturePublicKey};
use super::update::RatchetTreeOption;

/// `GroupInfoRequestTBS`, which the requester signs with
/// `SignWithLabel(requestingSignatureKey, "GroupInfoRequestTBS", ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRequestTbs {
    pub protocol: Protocol,
    pub cipher_suite: CipherSuite,
    pub requesting_signature_key: SignaturePublicKey,
    pub requesting_credential: Mls<Credential>,
    pub group_info_public_key: HpkePublicKey,
    /// Never `Some` of an empty code (see [`GroupInfoRequest`]).
    pub joining_code: Option<Vec<u8>>,
}

impl GroupInfoRequestTbs {
    fn encode_common(&self, w: &mut Writer) -> Result<(), WireError> {
        if self.joining_code.as_deref() == Some(&[]) {
            return Err(WireError::Invalid {
                field: "GroupInfoRequest.joiningCode",
                reason: "an empty joining code is written as absent",
            });
        }
        self.protocol.encode(w)?;
        self.cipher_suite.encode(w)?;
        self.requesting_signature_key.encode(w)?;
        self.requesting_credential.encode(w)?;
        self.group_info_public_key.encode(w)
    }

    /// Reads the fields shared by the request and the TBS; the joining code is left absent.
    fn decode_common(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GroupInfoRequestTbs {
            protocol: Protocol::decode(r)?,
            cipher_suite: CipherSuite::decode(r)?,
            requesting_signature_key: SignaturePublicKey::decode(r)?,
            requesting_credential: r.mls("GroupInfoRequest.requestingCredential")?,
            group_info_public_key: HpkePublicKey::decode(r)?,
            joining_code: None,
        })
    }
}

impl Encode for GroupInfoRequestTbs {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.encode_common(w)?;
        w.optional(self.joining_code.as_ref(), |w, code| {
            w.opaque("GroupInfoRequestTBS.joiningCode", code)
        })
    }
}

impl Decode for GroupInfoRequestTbs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut tbs = GroupInfoRequestTbs::decode_common(r)?;
        tbs.joining_code = r.optional("GroupInfoRequestTBS.joiningCode", |r| {
            r.opaque_vec("GroupInfoRequestTBS.joiningCode")
        })?;
        if tbs.joining_code.as_deref() == Some(&[]) {
            return Err(WireError::Invalid {
                field: "GroupInfoRequestTBS.joiningCode",
                reason: "a present joining code must not be empty",
            });
        }
        Ok(tbs)
    }
}

/// `GroupInfoRequest`.
///
/// [IMPL CHOICE] (MIMI.md §14 bug 5) the request carries `opaque joiningCode<V>` while the
/// TBS has `optional opaque joiningCode<V>`: an empty code in the request means "no code", and
/// the TBS then encodes the code as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRequest {
    pub tbs: GroupInfoRequestTbs,
    pub signature: Vec<u8>,
}

impl Encode for GroupInfoRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.tbs.encode_common(w)?;
        w.opaque(
            "GroupInfoRequest.joiningCode",
            self.tbs.joining_code.as_deref().unwrap_or_default(),
        )?;
        w.opaque("GroupInfoRequest.signature", &self.signature)
    }
}

impl Decode for GroupInfoRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut tbs = GroupInfoRequestTbs::decode_common(r)?;
        let code = r.opaque_vec("GroupInfoRequest.joiningCode")?;
        tbs.joining_code = (!code.is_empty()).then_some(code);
        Ok(GroupInfoRequest {
            tbs,
            signature: r.opaque_vec("GroupInfoRequest.signature")?,
        })
    }
}

wire_enum! {
    /// `enum { reserved(0), success(1), notAuthorized(2), noSuchRoom(3), (255) } GroupInfoCode;`
    GroupInfoCode, "GroupInfoResponse.status" {
        Success = 1,
        NotAuthorized = 2,
        NoSuchRoom = 3,
    }
}

/// `struct { MLSMessage proposal; uint64 hub_accepted_time; } PendingProposal;`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingProposal {
    pub proposal: MlsMessage,
    pub hub_accepted_time: u64,
}

impl Encode for PendingProposal {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.proposal.encode(w)?;
        w.u64(self.hub_accepted_time);
        Ok(())
    }
}

impl Decode for PendingProposal {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(PendingProposal {
            proposal: r.mls_message("PendingProposal.proposal")?,
            hub_accepted_time: r.u64("PendingProposal.hub_accepted_time")?,
        })
    }
}

/// `GroupInfoRatchetTreeTBE`: the plaintext the hub encrypts to `groupInfoPublicKey` with
/// `EncryptWithLabel(.., "GroupInfo and ratchet_tree encryption", room_id, ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRatchetTreeTbe {
    /// Without embedded `ratchet_tree` (bare `GroupInfo`).
    pub group_info: Mls<VerifiableGroupInfo>,
    pub ratchet_tree_option: RatchetTreeOption,
    /// Accepted but uncommitted proposals of the current epoch.
    pub pending_proposals: Vec<PendingProposal>,
}

impl Encode for GroupInfoRatchetTreeTbe {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.group_info.encode(w)?;
        self.ratchet_tree_option.encode(w)?;
        w.vector_of(
            "GroupInfoRatchetTreeTBE.pending_proposals",
            &self.pending_proposals,
        )
    }
}

impl Decode for GroupInfoRatchetTreeTbe {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GroupInfoRatchetTreeTbe {
            group_info: r.mls("GroupInfoRatchetTreeTBE.groupInfo")?,
            ratchet_tree_option: RatchetTreeOption::decode(r)?,
            pending_proposals: r.vector_of("GroupInfoRatchetTreeTBE.pending_proposals")?,
        })
    }
}

/// The mls10 fields of a successful `GroupInfoResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoSuccess {
    pub cipher_suite: CipherSuite,
    pub hub_sender: Mls<ExternalSender>,
    pub encrypted_groupinfo_and_tree: Mls<HpkeCiphertext>,
    /// `SignWithLabel(hub_sender.signature_key, "GroupInfoResponseTBS", ..)`.
    pub signature: Vec<u8>,
}

/// The `select (status)` part of `GroupInfoResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupInfoResult {
    Success(GroupInfoSuccess),
    NotAuthorized,
    NoSuchRoom,
}

/// `GroupInfoResponse`. The draft names the first field `version` but selects on `protocol`
/// (MIMI.md §14 bug 5); it is the `Protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoResponse {
    pub version: Protocol,
    /// The room URI bytes, also the HPKE context.
    pub room_id: Vec<u8>,
    pub result: GroupInfoResult,
}

impl GroupInfoResponse {
    pub fn status(&self) -> GroupInfoCode {
        match self.result {
            GroupInfoResult::Success(_) => GroupInfoCode::Success,
            GroupInfoResult::NotAuthorized => GroupInfoCode::NotAuthorized,
            GroupInfoResult::NoSuchRoom => GroupInfoCode::NoSuchRoom,
        }
    }

    /// What the hub signs (only a success carries a signature).
    pub fn tbs(&self) -> Option<GroupInfoResponseTbs> {
        match &self.result {
            GroupInfoResult::Success(success) => Some(GroupInfoResponseTbs {
                version: self.version,
                room_id: self.room_id.clone(),
                status: GroupInfoCode::Success,
                cipher_suite: success.cipher_suite,
                hub_sender: success.hub_sender.clone(),
                encrypted_groupinfo_and_tree: success.encrypted_groupinfo_and_tree.clone(),
            }),
            _ => None,
        }
    }
}

impl Encode for GroupInfoResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.version.encode(w)?;
        w.opaque("GroupInfoResponse.room_id", &self.room_id)?;
        self.status().encode(w)?;
        if let GroupInfoResult::Success(success) = &self.result {
            success.cipher_suite.encode(w)?;
            success.hub_sender.encode(w)?;
            success.encrypted_groupinfo_and_tree.encode(w)?;
            w.opaque("GroupInfoResponse.signature", &success.signature)?;
        }
        Ok(())
    }
}

impl Decode for GroupInfoResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let version = Protocol::decode(r)?;
        let room_id = r.opaque_vec("GroupInfoResponse.room_id")?;
        let result = match GroupInfoCode::decode(r)? {
            GroupInfoCode::Success => GroupInfoResult::Success(GroupInfoSuccess {
                cipher_suite: CipherSuite::decode(r)?,
                hub_sender: r.mls("GroupInfoResponse.hub_sender")?,
                encrypted_groupinfo_and_tree: r
                    .mls("GroupInfoResponse.encrypted_groupinfo_and_tree")?,
                signature: r.opaque_vec("GroupInfoResponse.signature")?,
            }),
            GroupInfoCode::NotAuthorized => GroupInfoResult::NotAuthorized,
            GroupInfoCode::NoSuchRoom => GroupInfoResult::NoSuchRoom,
        };
        Ok(GroupInfoResponse {
            version,
            room_id,
            result,
        })
    }
}

/// `GroupInfoResponseTBS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoResponseTbs {
    pub version: Protocol,
    pub room_id: Vec<u8>,
    pub status: GroupInfoCode,
    pub cipher_suite: CipherSuite,
    pub hub_sender: Mls<ExternalSender>,
    pub encrypted_groupinfo_and_tree: Mls<HpkeCiphertext>,
}

impl Encode for GroupInfoResponseTbs {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.version.encode(w)?;
        w.opaque("GroupInfoResponseTBS.room_id", &self.room_id)?;
        self.status.encode(w)?;
        self.cipher_suite.encode(w)?;
        self.hub_sender.encode(w)?;
        self.encrypted_groupinfo_and_tree.encode(w)
    }
}

impl Decode for GroupInfoResponseTbs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GroupInfoResponseTbs {
            version: Protocol::decode(r)?,
            room_id: r.opaque_vec("GroupInfoResponseTBS.room_id")?,
            status: GroupInfoCode::decode(r)?,
            cipher_suite: CipherSuite::decode(r)?,
            hub_sender: r.mls("GroupInfoResponseTBS.hub_sender")?,
            encrypted_groupinfo_and_tree: r
                .mls("GroupInfoResponseTBS.encrypted_groupinfo_and_tree")?,
        })
    }
}
