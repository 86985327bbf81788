//! Franking and abuse reports for the client library (protocol-06 §5.4.1, §5.9; MIMI.md
//! §5.3.1, §5.8; node/API.md §4.14, §4.15).
//!
//! - Rooms this client creates are franked by their hub: the GroupContext names the provider's
//!   franking agent (component 0x0021, fetched from `GET frankingAgent`) and requires SafeAAD
//!   listing `frank_aad` (component 0x0002 with 0x0020), so that every member frames its
//!   messages' `authenticated_data` with SafeAAD (draft-ietf-mls-extensions §4.9).
//! - In a franked room every application message carries `frank_aad` with
//!   `franking_tag = HMAC-SHA256(content salt, content bytes)` (openmls `set_safe_aad`).
//! - A received message of a franked room is checked as MIMI.md §5.3.1 says
//!   ([`FrankCheck`]): the content's sender is the MLS sender's user and its room the room,
//!   the tag matches the content, the agent is credentialed for the room's hub, and the Frank's
//!   signature verifies for the sender, room and the accepted time the delivery carried. A
//!   message whose Frank fails is still delivered, marked `Invalid` with the reason: the user
//!   can read it but cannot report it.
//! - [`MimiClient::report_abuse`] sends the kept Franks with the revealed contents.

use http::StatusCode;
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::policy::component;
use openmls::component::{ComponentType, ComponentsList};
use openmls::framing::SafeAadItem;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{AppDataDictionaryExtension, Extension, Extensions, GroupContext, MlsGroup};

use super::{check, mls, ClientError, MimiClient};
use crate::api::{room_path, PREFIX};
use crate::content::MimiContent;
use crate::franking::{
    check_received, content_parties, franking_tag, room_franking_agent, ReceivedMessage,
};
use crate::wire::abuse::{AbuseReport, AbuseType, AbusiveMessage};
use crate::wire::discovery::no_extensions;
use crate::wire::submit::{Frank, FrankingAgentData, ServerFrankingContext};
use crate::wire::types::IdentifierUri;
use crate::wire::{Decode, Encode};

/// What a client made of the Frank of a received message (MIMI.md §5.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrankCheck {
    /// The room is not franked, or the sender put no `frank_aad` in the message.
    NotFranked,
    /// The Frank verified; kept for a report.
    Verified(Box<KeptFrank>),
    /// The message is franked but its Frank is missing or does not verify (the reason).
    Invalid(String),
}

/// A verified Frank with what a report needs (protocol-06 §5.9 `AbusiveMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptFrank {
    pub frank: Frank,
    /// The context the Frank was verified for (sender, room, accepted time).
    pub context: ServerFrankingContext,
    /// The MIMI content bytes as received (`application_data`).
    pub message_content: Vec<u8>,
}

impl KeptFrank {
    /// The `AbusiveMessage` revealing this message.
    pub fn abusive_message(&self) -> AbusiveMessage {
        AbusiveMessage {
            message_content: self.message_content.clone(),
            frank: self.frank.clone(),
            accepted_timestamp: self.context.accepted_timestamp,
        }
    }
}

/// GroupContext extensions `base` with the franking components added: `franking_agent`
/// (0x0021) = `agent` and `safe_aad` (0x0002) listing `frank_aad` (0x0020).
pub(super) fn franked_extensions(
    base: Extensions<GroupContext>,
    agent: &FrankingAgentData,
) -> Result<Extensions<GroupContext>, ClientError> {
    let mut dictionary = base
        .app_data_dictionary()
        .map(|extension| extension.dictionary().clone())
        .ok_or_else(|| ClientError::Policy("the room's GroupContext has no dictionary".into()))?;
    dictionary.insert(
        ComponentType::SafeAad.into(),
        ComponentsList::new(vec![component::FRANK_AAD])
            .tls_serialize_detached()
            .map_err(mls)?,
    );
    dictionary.insert(component::FRANKING_AGENT, agent.to_bytes()?);
    let mut extensions: Vec<Extension> = base
        .iter()
        .filter(|extension| !matches!(extension, Extension::AppDataDictionary(_)))
        .cloned()
        .collect();
    extensions.push(Extension::AppDataDictionary(
        AppDataDictionaryExtension::new(dictionary),
    ));
    Extensions::from_vec(extensions).map_err(mls)
}

/// Stages `frank_aad` for the next message of `group` when the room is franked (a no-op
/// otherwise).
pub(super) fn stage_frank_aad(
    group: &mut MlsGroup,
    content: &MimiContent,
    content_bytes: &[u8],
) -> Result<(), ClientError> {
    if room_franking_agent(group.extensions()).is_none() {
        return Ok(());
    }
    let tag = franking_tag(&content.salt, content_bytes);
    group
        .set_safe_aad(vec![SafeAadItem::new(component::FRANK_AAD, tag.to_vec())])
        .map_err(mls)
}

/// The receiver's check of a delivered application message (module docs).
pub(super) struct Delivered<'a> {
    pub group: &'a MlsGroup,
    pub room: &'a RoomId,
    pub sender: &'a ClientId,
    pub content: &'a MimiContent,
    pub content_bytes: &'a [u8],
    /// `frank_aad` of the message's SafeAAD, if any.
    pub aad_tag: Option<[u8; 32]>,
    pub frank: Option<Frank>,
    pub accepted_ts_ms: u64,
}

impl Delivered<'_> {
    pub(super) fn check(self) -> FrankCheck {
        let Some(agent) = room_franking_agent(self.group.extensions()) else {
            return FrankCheck::NotFranked;
        };
        let Some(aad_tag) = self.aad_tag else {
            return FrankCheck::NotFranked;
        };
        let Some(frank) = self.frank else {
            return FrankCheck::Invalid(
                "the message carries frank_aad but was delivered without a Frank".into(),
            );
        };
        let (named_sender, named_room) = match content_parties(self.content) {
            Ok(parties) => parties,
            Err(e) => return FrankCheck::Invalid(e.to_string()),
        };
        if named_sender != self.sender.user() {
            return FrankCheck::Invalid(format!(
                "the content names sender {named_sender}, but the MLS sender is {}",
                self.sender
            ));
        }
        if named_room != *self.room {
            return FrankCheck::Invalid(format!(
                "the content names room {named_room}, but it came in {}",
                self.room
            ));
        }
        let received = ReceivedMessage {
            content: self.content_bytes,
            salt: &self.content.salt,
            aad_tag: &aad_tag,
            sender: &named_sender,
            room: self.room,
            accepted_ts_ms: self.accepted_ts_ms,
        };
        match check_received(&agent, &frank, &received) {
            Ok(()) => FrankCheck::Verified(Box::new(KeptFrank {
                frank,
                context: crate::franking::context(&named_sender, self.room, self.accepted_ts_ms),
                message_content: self.content_bytes.to_vec(),
            })),
            Err(e) => FrankCheck::Invalid(e.to_string()),
        }
    }
}

impl MimiClient {
    /// The franking agent of this client's provider (`GET frankingAgent`), which rooms it
    /// creates name in their GroupContext.
    pub async fn franking_agent(&self) -> Result<FrankingAgentData, ClientError> {
        let bytes = self.get(&format!("{PREFIX}frankingAgent")).await?;
        Ok(FrankingAgentData::from_bytes(&bytes, &self.limits)?)
    }

    /// The abuse report (protocol-06 §5.9) of this client's user about `alleged_abuser` in
    /// `room`, revealing `messages`.
    pub fn abuse_report(
        &self,
        alleged_abuser: &UserId,
        reason_code: u8,
        note: &str,
        messages: &[&KeptFrank],
    ) -> Result<AbuseReport, ClientError> {
        Ok(AbuseReport {
            reporting_user: IdentifierUri::from(&self.user()),
            alleged_abuser_uri: IdentifierUri::from(alleged_abuser),
            reason_code: AbuseType(reason_code),
            note: note.to_owned(),
            messages: messages.iter().map(|kept| kept.abusive_message()).collect(),
            abuse_extensions: no_extensions()?,
        })
    }

    /// Reports `alleged_abuser` in `room` through this client's provider, which forwards the
    /// report to the room's hub; the hub validates every message's Frank (MIMI.md §5.8).
    /// `Ok` once the hub took it (201).
    pub async fn report_abuse(
        &self,
        room: &RoomId,
        alleged_abuser: &UserId,
        reason_code: u8,
        note: &str,
        messages: &[&KeptFrank],
    ) -> Result<(), ClientError> {
        let body = self
            .abuse_report(alleged_abuser, reason_code, note, messages)?
            .to_bytes()?;
        let (status, bytes) = self.post(&room_path("reportAbuse", room), body).await?;
        check(status, StatusCode::CREATED, &bytes)
    }
}
