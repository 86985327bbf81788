//! protocol-06 §5.3 and §5.4.1 (MIMI.md §5.3, §5.3.1): `POST /submitMessage/{roomId}` bodies
//! and the franking structures, with the conversion from the domain's `SubmitVerdict`.

use mimid_actors::command::SubmitVerdict;
use mimid_actors::ids::UserId;
use openmls::prelude::Credential;

use super::codec::{wire_enum, Decode, Encode, Mls, MlsMessage, Reader, WireError, Writer};
use super::types::{CipherSuite, IdentifierUri, Protocol, SignaturePublicKey};

/// `SubmitMessageRequest`.
///
/// The codec accepts any `MLSMessage` as `appMessage`; that it must be a PrivateMessage with
/// application content is checked by the hub (MIMI.md §7.4), which answers `notAllowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitMessageRequest {
    pub protocol: Protocol,
    pub app_message: MlsMessage,
    /// The sender's user URI (or a pseudonym it may assert).
    pub sending_uri: IdentifierUri,
}

impl SubmitMessageRequest {
    pub fn sending_user(&self) -> Result<UserId, WireError> {
        self.sending_uri.user("SubmitMessageRequest.sendingUri")
    }
}

impl Encode for SubmitMessageRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.protocol.encode(w)?;
        self.app_message.encode(w)?;
        self.sending_uri.encode(w)
    }
}

impl Decode for SubmitMessageRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(SubmitMessageRequest {
            protocol: Protocol::decode(r)?,
            app_message: r.mls_message("SubmitMessageRequest.appMessage")?,
            sending_uri: IdentifierUri::decode(r)?,
        })
    }
}

wire_enum! {
    /// `enum { accepted(0), notAllowed(1), epochTooOld(2), (255) } SubmitResponseCode;`
    SubmitResponseCode, "SubmitMessageResponse.statusCode" {
        Accepted = 0,
        NotAllowed = 1,
        EpochTooOld = 2,
    }
}

/// `Frank`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frank {
    pub server_frank: [u8; 32],
    pub franking_signature_ciphersuite: CipherSuite,
    pub franking_integrity_signature: Vec<u8>,
}

impl Encode for Frank {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.raw(&self.server_frank);
        self.franking_signature_ciphersuite.encode(w)?;
        w.opaque(
            "Frank.franking_integrity_signature",
            &self.franking_integrity_signature,
        )
    }
}

impl Decode for Frank {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Frank {
            server_frank: r.fixed("Frank.server_frank")?,
            franking_signature_ciphersuite: CipherSuite::decode(r)?,
            franking_integrity_signature: r.opaque_vec("Frank.franking_integrity_signature")?,
        })
    }
}

/// The `select (statusCode)` part of `SubmitMessageResponse`.
///
/// MIMI.md §14 bug 3: the draft selects on `success`, which is the value `accepted(0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitStatus {
    Accepted {
        /// Milliseconds since the UNIX epoch.
        accepted_timestamp: u64,
        frank: Option<Frank>,
    },
    NotAllowed,
    EpochTooOld {
        current_epoch: u64,
    },
}

/// `SubmitMessageResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitMessageResponse {
    pub protocol: Protocol,
    pub status: SubmitStatus,
}

impl SubmitMessageResponse {
    pub fn status_code(&self) -> SubmitResponseCode {
        match self.status {
            SubmitStatus::Accepted { .. } => SubmitResponseCode::Accepted,
            SubmitStatus::NotAllowed => SubmitResponseCode::NotAllowed,
            SubmitStatus::EpochTooOld { .. } => SubmitResponseCode::EpochTooOld,
        }
    }
}

impl Encode for SubmitMessageResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.protocol.encode(w)?;
        self.status_code().encode(w)?;
        match &self.status {
            SubmitStatus::Accepted {
                accepted_timestamp,
                frank,
            } => {
                w.u64(*accepted_timestamp);
                w.optional(frank.as_ref(), |w, frank| frank.encode(w))
            }
            SubmitStatus::NotAllowed => Ok(()),
            SubmitStatus::EpochTooOld { current_epoch } => {
                w.u64(*current_epoch);
                Ok(())
            }
        }
    }
}

impl Decode for SubmitMessageResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let protocol = Protocol::decode(r)?;
        let status = match SubmitResponseCode::decode(r)? {
            SubmitResponseCode::Accepted => SubmitStatus::Accepted {
                accepted_timestamp: r.u64("SubmitMessageResponse.accepted_timestamp")?,
                frank: r.optional("SubmitMessageResponse.frank", Frank::decode)?,
            },
            SubmitResponseCode::NotAllowed => SubmitStatus::NotAllowed,
            SubmitResponseCode::EpochTooOld => SubmitStatus::EpochTooOld {
                current_epoch: r.u64("SubmitMessageResponse.currentEpoch")?,
            },
        };
        Ok(SubmitMessageResponse { protocol, status })
    }
}

/// The verdict the hub's apply produced, as the protocol-06 response. Franking is added by the
/// caller when it franked the message (MIMI.md §5.3.1); `notAllowed` has no description field
/// on the wire, so the domain's reason is not sent.
impl From<&SubmitVerdict> for SubmitMessageResponse {
    fn from(verdict: &SubmitVerdict) -> Self {
        let status = match verdict {
            SubmitVerdict::Accepted { accepted_ts_ms, .. } => SubmitStatus::Accepted {
                accepted_timestamp: *accepted_ts_ms,
                frank: None,
            },
            SubmitVerdict::NotAllowed { .. } => SubmitStatus::NotAllowed,
            SubmitVerdict::EpochTooOld { current_epoch } => SubmitStatus::EpochTooOld {
                current_epoch: *current_epoch,
            },
        };
        SubmitMessageResponse {
            protocol: Protocol::Mls10,
            status,
        }
    }
}

/// `struct { uint8 franking_tag[32]; } FrankAAD;` (SafeAAD component 0x0020).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrankAad {
    pub franking_tag: [u8; 32],
}

impl Encode for FrankAad {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.raw(&self.franking_tag);
        Ok(())
    }
}

impl Decode for FrankAad {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(FrankAad {
            franking_tag: r.fixed("FrankAAD.franking_tag")?,
        })
    }
}

/// `FrankingAgentData` (GroupContext component 0x0021, also the `FrankingAgentUpdate`
/// AppDataUpdate payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrankingAgentData {
    pub franking_signature_key: SignaturePublicKey,
    pub credential: Mls<Credential>,
}

impl Encode for FrankingAgentData {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.franking_signature_key.encode(w)?;
        self.credential.encode(w)
    }
}

impl Decode for FrankingAgentData {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(FrankingAgentData {
            franking_signature_key: SignaturePublicKey::decode(r)?,
            credential: r.mls("FrankingAgentData.credential")?,
        })
    }
}

/// `ServerFrankingContext`: bound into `server_frank` and the integrity signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrankingContext {
    pub sender_uri: IdentifierUri,
    pub room_uri: IdentifierUri,
    pub accepted_timestamp: u64,
}

impl Encode for ServerFrankingContext {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.sender_uri.encode(w)?;
        self.room_uri.encode(w)?;
        w.u64(self.accepted_timestamp);
        Ok(())
    }
}

impl Decode for ServerFrankingContext {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ServerFrankingContext {
            sender_uri: IdentifierUri::decode(r)?,
            room_uri: IdentifierUri::decode(r)?,
            accepted_timestamp: r.u64("ServerFrankingContext.accepted_timestamp")?,
        })
    }
}

/// `FrankingIntegrityTBS`: signed with `SignWithLabel(.., "FrankingIntegrityTBS", ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrankingIntegrityTbs {
    pub server_frank: [u8; 32],
    pub franking_signature_ciphersuite: CipherSuite,
    pub context: ServerFrankingContext,
}

impl Encode for FrankingIntegrityTbs {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.raw(&self.server_frank);
        self.franking_signature_ciphersuite.encode(w)?;
        self.context.encode(w)
    }
}

impl Decode for FrankingIntegrityTbs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(FrankingIntegrityTbs {
            server_frank: r.fixed("FrankingIntegrityTBS.server_frank")?,
            franking_signature_ciphersuite: CipherSuite::decode(r)?,
            context: ServerFrankingContext::decode(r)?,
        })
    }
}
