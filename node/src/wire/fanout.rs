//! protocol-06 §5.4 (MIMI.md §5.4): `POST /notify/{roomId}` bodies.
//!
//! The draft's `FanoutMessage` selects on `message.wire_format` but names content types, and
//! has no `protocol` field to select on (MIMI.md §14 bug 4). [IMPL CHOICE] (MIMI.md §5.4) the
//! selector is: PrivateMessage → `optional<Frank>`; Welcome → `RatchetTreeOption`;
//! PublicMessage with a proposal → `moreProposals`; PublicMessage with a commit →
//! `externalProposals`. Anything else (a PublicMessage with application content, a GroupInfo or
//! KeyPackage) has no case and is rejected.

use openmls::prelude::ContentType;

use super::codec::{Decode, Encode, Limits, MlsMessage, MlsMessageKind, Reader, WireError, Writer};
use super::submit::Frank;
use super::update::RatchetTreeOption;

const MESSAGE: &str = "FanoutMessage.message";

/// The message and its `select (message.wire_format)` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutBody {
    /// A PrivateMessage (an application message; the hub cannot see more).
    Application {
        message: MlsMessage,
        frank: Option<Frank>,
    },
    /// A Welcome for clients of the receiving provider, with the tree they need.
    Welcome {
        welcome: MlsMessage,
        ratchet_tree_option: RatchetTreeOption,
    },
    /// A proposal and the `moreProposals` it was submitted with (MIMI.md §5.4: the list MUST
    /// equal the one of the originating HandshakeBundle).
    Proposal {
        proposal: MlsMessage,
        more_proposals: Vec<MlsMessage>,
    },
    /// A commit, with hub proposals re-issued for the new epoch (MIMI.md §6.7).
    Commit {
        commit: MlsMessage,
        external_proposals: Vec<MlsMessage>,
    },
}

/// `FanoutMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutMessage {
    /// Hub acceptance time, milliseconds since the UNIX epoch.
    pub timestamp: u64,
    pub body: FanoutBody,
}

/// Which `select` case a message takes, or why it has none.
fn case_of(message: &MlsMessage) -> Result<FanoutCase, WireError> {
    match message.kind() {
        MlsMessageKind::PrivateMessage { .. } => Ok(FanoutCase::Application),
        MlsMessageKind::Welcome => Ok(FanoutCase::Welcome),
        MlsMessageKind::PublicMessage {
            content_type: ContentType::Proposal,
            ..
        } => Ok(FanoutCase::Proposal),
        MlsMessageKind::PublicMessage {
            content_type: ContentType::Commit,
            ..
        } => Ok(FanoutCase::Commit),
        other => Err(WireError::UnexpectedMessage {
            field: MESSAGE,
            expected: "a PrivateMessage, a Welcome, or a PublicMessage proposal or commit",
            found: other.name(),
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FanoutCase {
    Application,
    Welcome,
    Proposal,
    Commit,
}

impl FanoutBody {
    fn message(&self) -> (&MlsMessage, FanoutCase) {
        match self {
            FanoutBody::Application { message, .. } => (message, FanoutCase::Application),
            FanoutBody::Welcome { welcome, .. } => (welcome, FanoutCase::Welcome),
            FanoutBody::Proposal { proposal, .. } => (proposal, FanoutCase::Proposal),
            FanoutBody::Commit { commit, .. } => (commit, FanoutCase::Commit),
        }
    }
}

impl Encode for FanoutMessage {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        let (message, case) = self.body.message();
        if case_of(message)? != case {
            return Err(WireError::UnexpectedMessage {
                field: MESSAGE,
                expected: match case {
                    FanoutCase::Application => "a PrivateMessage",
                    FanoutCase::Welcome => "a Welcome",
                    FanoutCase::Proposal => "a PublicMessage proposal",
                    FanoutCase::Commit => "a PublicMessage commit",
                },
                found: message.kind().name(),
            });
        }
        w.u64(self.timestamp);
        message.encode(w)?;
        match &self.body {
            FanoutBody::Application { frank, .. } => {
                w.optional(frank.as_ref(), |w, frank| frank.encode(w))
            }
            FanoutBody::Welcome {
                ratchet_tree_option,
                ..
            } => ratchet_tree_option.encode(w),
            FanoutBody::Proposal { more_proposals, .. } => {
                w.vector_of("FanoutMessage.moreProposals", more_proposals)
            }
            FanoutBody::Commit {
                external_proposals, ..
            } => w.vector_of("FanoutMessage.externalProposals", external_proposals),
        }
    }
}

impl Decode for FanoutMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let timestamp = r.u64("FanoutMessage.timestamp")?;
        let message = r.mls_message(MESSAGE)?;
        let body = match case_of(&message)? {
            FanoutCase::Application => FanoutBody::Application {
                message,
                frank: r.optional("FanoutMessage.frank", Frank::decode)?,
            },
            FanoutCase::Welcome => FanoutBody::Welcome {
                welcome: message,
                ratchet_tree_option: RatchetTreeOption::decode(r)?,
            },
            FanoutCase::Proposal => FanoutBody::Proposal {
                proposal: message,
                more_proposals: r.vector("FanoutMessage.moreProposals", |r| {
                    r.mls_message("FanoutMessage.moreProposals")
                })?,
            },
            FanoutCase::Commit => FanoutBody::Commit {
                commit: message,
                external_proposals: r.vector("FanoutMessage.externalProposals", |r| {
                    r.mls_message("FanoutMessage.externalProposals")
                })?,
            },
        };
        Ok(FanoutMessage { timestamp, body })
    }
}

/// MIMI.md §5.4: one `/notify` body may hold several `FanoutMessage`s for the same room,
/// concatenated in hub order. An empty body is rejected (there is nothing to acknowledge).
pub fn decode_fanout_batch(bytes: &[u8], limits: &Limits) -> Result<Vec<FanoutMessage>, WireError> {
    let mut r = Reader::new(bytes, limits)?;
    if r.is_empty() {
        return Err(WireError::Invalid {
            field: "FanoutMessage",
            reason: "a notify body holds at least one FanoutMessage",
        });
    }
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(FanoutMessage::decode(&mut r)?);
    }
    Ok(out)
}

/// The concatenation of `messages`, in order.
pub fn encode_fanout_batch(messages: &[FanoutMessage]) -> Result<Vec<u8>, WireError> {
    let mut w = Writer::new();
    for message in messages {
        message.encode(&mut w)?;
    }
    Ok(w.into_bytes())
}
