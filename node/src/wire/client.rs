//! Our provider's own client API bodies (client ↔ own provider is private to each provider,
//! MIMI.md §1), in the same TLS-PL codec as protocol-06 so there is one decoder to harden.
//! Fetching key material uses protocol-06's own signed `KeyMaterialRequest` and
//! `KeyMaterialResponse` ([`super::key_material`]), so a client's request can be forwarded to
//! other providers unchanged.
//!
//! ```text
//! struct { IdentifierUri client; } RegisterClientRequest;
//! struct { opaque token<V>; } RegisterClientResponse;
//! struct { KeyPackage key_packages<V>; uint8 last_resort; } PublishKeyPackagesRequest;
//! struct { IdentifierUri room; MLSMessage group_info; opaque ratchet_tree<V>; } CreateRoomRequest;
//! enum { created(0), exists(1), invalid(2), (255) } CreateRoomStatus;
//! struct { CreateRoomStatus status; string reason; } CreateRoomResponse;
//! struct { UpdateRoomResponse response; uint64 seq; } ClientUpdateResponse;
//! struct { SubmitMessageResponse response; uint64 seq; string reason; } ClientSubmitResponse;
//! enum { proposals(1), commit(2), welcome(3), application(4), (255) } DeliveredKind;
//! struct {
//!   IdentifierUri room; uint64 seq; uint64 timestamp; uint64 epoch; DeliveredKind kind;
//!   select (kind) {
//!     case proposals:   MLSMessage messages<V>;
//!     case commit:      MLSMessage message;
//!     case welcome:     MLSMessage welcome; opaque ratchet_tree<V>;
//!     case application: MLSMessage message; optional<Frank> frank;
//!   };
//! } DeliveredItem;
//! struct { IdentifierUri room; uint64 seq; } AckEntry;
//! struct { AckEntry acks<V>; } AckRequest;
//! ```
//!
//! An application message of a franked room carries its hub's `Frank` (protocol-06 §5.4.1,
//! [`super::submit::Frank`]), as a notify does (MIMI.md §5.4).
//!
//! The push stream carries `DeliveredItem`s framed as a big-endian `uint32` length followed by
//! that many bytes ([`encode_frame`], [`FrameDecoder`]).

use mimid_actors::command::{SubmitVerdict, UpdateVerdict};
use mimid_actors::ids::{ClientId, RoomId};
use mimid_actors::room::log::{ItemBody, LogItem};
use openmls::prelude::{KeyPackageIn, RatchetTreeIn};
use thiserror::Error;

use super::codec::{
    wire_enum, Decode, Encode, Limits, Mls, MlsMessage, MlsMessageKind, Reader, WireError, Writer,
};
use super::submit::{Frank, SubmitMessageResponse};
use super::types::IdentifierUri;
use super::update::UpdateRoomResponse;

/// Registers a client of an authenticated local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterClientRequest {
    pub client: IdentifierUri,
}

impl RegisterClientRequest {
    pub fn client_id(&self) -> Result<ClientId, WireError> {
        self.client.client("RegisterClientRequest.client")
    }
}

impl Encode for RegisterClientRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.client.encode(w)
    }
}

impl Decode for RegisterClientRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(RegisterClientRequest {
            client: IdentifierUri::decode(r)?,
        })
    }
}

/// The bearer token of a newly registered client (shown once; the provider keeps its hash).
#[derive(Clone, PartialEq, Eq)]
pub struct RegisterClientResponse {
    pub token: Vec<u8>,
}

impl std::fmt::Debug for RegisterClientResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bearer secret never goes to logs.
        write!(
            f,
            "RegisterClientResponse {{ token: <{} bytes> }}",
            self.token.len()
        )
    }
}

impl Encode for RegisterClientResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.opaque("RegisterClientResponse.token", &self.token)
    }
}

impl Decode for RegisterClientResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(RegisterClientResponse {
            token: r.opaque_vec("RegisterClientResponse.token")?,
        })
    }
}

/// Publishes bare KeyPackages, each validated by openmls and kept byte-exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishKeyPackagesRequest {
    pub key_packages: Vec<Mls<KeyPackageIn>>,
    pub last_resort: bool,
}

impl PublishKeyPackagesRequest {
    /// The KeyPackages as the bytes the directory stores.
    pub fn key_package_bytes(&self) -> Vec<Vec<u8>> {
        self.key_packages
            .iter()
            .map(|kp| kp.bytes().to_vec())
            .collect()
    }
}

impl Encode for PublishKeyPackagesRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.vector_of("PublishKeyPackagesRequest.key_packages", &self.key_packages)?;
        w.bool(self.last_resort);
        Ok(())
    }
}

impl Decode for PublishKeyPackagesRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(PublishKeyPackagesRequest {
            key_packages: r.vector("PublishKeyPackagesRequest.key_packages", |r| {
                r.mls("PublishKeyPackagesRequest.key_packages")
            })?,
            last_resort: r.bool("PublishKeyPackagesRequest.last_resort")?,
        })
    }
}

/// Creates a room hosted here (MIMI.md §6.1 step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRoomRequest {
    pub room: IdentifierUri,
    /// An `MLSMessage` with a GroupInfo (checked at decode).
    pub group_info: MlsMessage,
    /// The TLS-serialised ratchet tree, inside `opaque<V>`, validated by openmls.
    pub ratchet_tree: Mls<RatchetTreeIn>,
}

impl CreateRoomRequest {
    pub fn room_id(&self) -> Result<RoomId, WireError> {
        self.room.room("CreateRoomRequest.room")
    }
}

impl Encode for CreateRoomRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.group_info
            .expect("CreateRoomRequest.group_info", MlsMessageKind::GroupInfo)?;
        self.room.encode(w)?;
        self.group_info.encode(w)?;
        w.opaque("CreateRoomRequest.ratchet_tree", self.ratchet_tree.bytes())
    }
}

impl Decode for CreateRoomRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let room = IdentifierUri::decode(r)?;
        let group_info = r.mls_message("CreateRoomRequest.group_info")?;
        group_info.expect("CreateRoomRequest.group_info", MlsMessageKind::GroupInfo)?;
        let ratchet_tree = ratchet_tree_in_opaque(r, "CreateRoomRequest.ratchet_tree")?;
        Ok(CreateRoomRequest {
            room,
            group_info,
            ratchet_tree,
        })
    }
}

/// `opaque x<V>` whose content must be exactly one TLS-serialised ratchet tree.
fn ratchet_tree_in_opaque(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Mls<RatchetTreeIn>, WireError> {
    let bytes = r.opaque(field)?;
    let limits = Limits {
        max_body_len: bytes.len(),
    };
    let mut inner = Reader::new(bytes, &limits)?;
    let tree = inner.mls(field)?;
    inner.finish()?;
    Ok(tree)
}

wire_enum! {
    /// `enum { created(0), exists(1), invalid(2), (255) } CreateRoomStatus;`
    CreateRoomStatus, "CreateRoomResponse.status" {
        Created = 0,
        Exists = 1,
        Invalid = 2,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRoomResponse {
    pub status: CreateRoomStatus,
    pub reason: String,
}

impl Encode for CreateRoomResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.status.encode(w)?;
        w.string("CreateRoomResponse.reason", &self.reason)
    }
}

impl Decode for CreateRoomResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(CreateRoomResponse {
            status: CreateRoomStatus::decode(r)?,
            reason: r.string("CreateRoomResponse.reason")?,
        })
    }
}

/// `UpdateRoomResponse` plus the room log position of the accepted item (0 when rejected), so
/// the client can match it with what its push stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUpdateResponse {
    pub response: UpdateRoomResponse,
    pub seq: u64,
}

impl From<&UpdateVerdict> for ClientUpdateResponse {
    fn from(verdict: &UpdateVerdict) -> Self {
        let seq = match verdict {
            UpdateVerdict::Success { seq, .. } => *seq,
            _ => 0,
        };
        ClientUpdateResponse {
            response: UpdateRoomResponse::from(verdict),
            seq,
        }
    }
}

impl Encode for ClientUpdateResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.response.encode(w)?;
        w.u64(self.seq);
        Ok(())
    }
}

impl Decode for ClientUpdateResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ClientUpdateResponse {
            response: UpdateRoomResponse::decode(r)?,
            seq: r.u64("ClientUpdateResponse.seq")?,
        })
    }
}

/// `SubmitMessageResponse` plus the room log position (0 when not accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSubmitResponse {
    pub response: SubmitMessageResponse,
    pub seq: u64,
    /// Why a message was not accepted (protocol-06's SubmitMessageResponse has no text; our
    /// client API adds it so a refused sender learns the specific reason). Empty on success.
    pub reason: String,
}

impl From<&SubmitVerdict> for ClientSubmitResponse {
    fn from(verdict: &SubmitVerdict) -> Self {
        let (seq, reason) = match verdict {
            SubmitVerdict::Accepted { seq, .. } => (*seq, String::new()),
            SubmitVerdict::NotAllowed { reason } => (0, reason.clone()),
            SubmitVerdict::EpochTooOld { current_epoch } => (
                0,
                format!("the room is at epoch {current_epoch}: process its commits and resend"),
            ),
        };
        ClientSubmitResponse {
            response: SubmitMessageResponse::from(verdict),
            seq,
            reason,
        }
    }
}

impl Encode for ClientSubmitResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.response.encode(w)?;
        w.u64(self.seq);
        w.string("ClientSubmitResponse.reason", &self.reason)
    }
}

impl Decode for ClientSubmitResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ClientSubmitResponse {
            response: SubmitMessageResponse::decode(r)?,
            seq: r.u64("ClientSubmitResponse.seq")?,
            reason: r.string("ClientSubmitResponse.reason")?,
        })
    }
}

wire_enum! {
    /// `enum { proposals(1), commit(2), welcome(3), application(4), (255) } DeliveredKind;`
    DeliveredKind, "DeliveredItem.kind" {
        Proposals = 1,
        Commit = 2,
        Welcome = 3,
        Application = 4,
    }
}

/// The `select (kind)` part of a `DeliveredItem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveredBody {
    Proposals {
        messages: Vec<MlsMessage>,
    },
    Commit {
        message: MlsMessage,
    },
    Welcome {
        welcome: MlsMessage,
        /// The ratchet tree of the new epoch, inside `opaque<V>`.
        ratchet_tree: Mls<RatchetTreeIn>,
    },
    Application {
        message: MlsMessage,
        /// The hub's Frank, for a message of a franked room (MIMI.md §5.3.1).
        frank: Option<Frank>,
    },
}

impl DeliveredBody {
    pub fn kind(&self) -> DeliveredKind {
        match self {
            DeliveredBody::Proposals { .. } => DeliveredKind::Proposals,
            DeliveredBody::Commit { .. } => DeliveredKind::Commit,
            DeliveredBody::Welcome { .. } => DeliveredKind::Welcome,
            DeliveredBody::Application { .. } => DeliveredKind::Application,
        }
    }
}

/// One room log item pushed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredItem {
    pub room: IdentifierUri,
    pub seq: u64,
    /// Hub accepted timestamp, milliseconds since the UNIX epoch.
    pub timestamp: u64,
    pub epoch: u64,
    pub body: DeliveredBody,
}

impl DeliveredItem {
    /// The push form of a room log item, without a Frank (the caller adds it). The MLS
    /// messages are validated on the way (a log item that does not parse is reported, not
    /// delivered); a Welcome's recipient list stays behind because the push stream only
    /// carries it to those clients.
    pub fn from_log(room: &RoomId, item: &LogItem) -> Result<Self, WireError> {
        let body = match &item.body {
            ItemBody::Proposals { messages } => DeliveredBody::Proposals {
                messages: messages
                    .iter()
                    .map(|m| MlsMessage::from_bytes(m))
                    .collect::<Result<_, _>>()?,
            },
            ItemBody::Commit { message } => DeliveredBody::Commit {
                message: MlsMessage::from_bytes(message)?,
            },
            ItemBody::Welcome {
                welcome,
                ratchet_tree,
                to: _,
            } => DeliveredBody::Welcome {
                welcome: MlsMessage::from_bytes(welcome)?,
                ratchet_tree: Mls::from_bytes(ratchet_tree)?,
            },
            ItemBody::Application { message } => DeliveredBody::Application {
                message: MlsMessage::from_bytes(message)?,
                frank: None,
            },
        };
        Ok(DeliveredItem {
            room: IdentifierUri::from(room),
            seq: item.seq,
            timestamp: item.ts_ms,
            epoch: item.epoch,
            body,
        })
    }

    pub fn room_id(&self) -> Result<RoomId, WireError> {
        self.room.room("DeliveredItem.room")
    }
}

impl Encode for DeliveredItem {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.room.encode(w)?;
        w.u64(self.seq);
        w.u64(self.timestamp);
        w.u64(self.epoch);
        self.body.kind().encode(w)?;
        match &self.body {
            DeliveredBody::Proposals { messages } => {
                w.vector_of("DeliveredItem.messages", messages)
            }
            DeliveredBody::Commit { message } => message.encode(w),
            DeliveredBody::Application { message, frank } => {
                message.encode(w)?;
                w.optional(frank.as_ref(), |w, frank| frank.encode(w))
            }
            DeliveredBody::Welcome {
                welcome,
                ratchet_tree,
            } => {
                welcome.encode(w)?;
                w.opaque("DeliveredItem.ratchet_tree", ratchet_tree.bytes())
            }
        }
    }
}

impl Decode for DeliveredItem {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let room = IdentifierUri::decode(r)?;
        let seq = r.u64("DeliveredItem.seq")?;
        let timestamp = r.u64("DeliveredItem.timestamp")?;
        let epoch = r.u64("DeliveredItem.epoch")?;
        let body = match DeliveredKind::decode(r)? {
            DeliveredKind::Proposals => DeliveredBody::Proposals {
                messages: r.vector("DeliveredItem.messages", |r| {
                    r.mls_message("DeliveredItem.messages")
                })?,
            },
            DeliveredKind::Commit => DeliveredBody::Commit {
                message: r.mls_message("DeliveredItem.message")?,
            },
            DeliveredKind::Welcome => DeliveredBody::Welcome {
                welcome: r.mls_message("DeliveredItem.welcome")?,
                ratchet_tree: ratchet_tree_in_opaque(r, "DeliveredItem.ratchet_tree")?,
            },
            DeliveredKind::Application => DeliveredBody::Application {
                message: r.mls_message("DeliveredItem.message")?,
                frank: r.optional("DeliveredItem.frank", Frank::decode)?,
            },
        };
        Ok(DeliveredItem {
            room,
            seq,
            timestamp,
            epoch,
            body,
        })
    }
}

/// A client's acknowledgement: it has processed `room` up to and including `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEntry {
    pub room: IdentifierUri,
    pub seq: u64,
}

impl AckEntry {
    pub fn room_id(&self) -> Result<RoomId, WireError> {
        self.room.room("AckEntry.room")
    }
}

impl Encode for AckEntry {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.room.encode(w)?;
        w.u64(self.seq);
        Ok(())
    }
}

impl Decode for AckEntry {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(AckEntry {
            room: IdentifierUri::decode(r)?,
            seq: r.u64("AckEntry.seq")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    pub acks: Vec<AckEntry>,
}

impl Encode for AckRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.vector_of("AckRequest.acks", &self.acks)
    }
}

impl Decode for AckRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(AckRequest {
            acks: r.vector_of("AckRequest.acks")?,
        })
    }
}

/// Bytes of the push-stream frame header (a big-endian `uint32` length).
pub const FRAME_HEADER_LEN: usize = 4;

/// A frame of length zero: a heartbeat the provider sends on an idle push stream, so that a
/// client that went away is noticed (the write fails) and its stream released. Decoders skip
/// it.
pub const HEARTBEAT_FRAME: [u8; FRAME_HEADER_LEN] = [0; FRAME_HEADER_LEN];

/// Why a push stream could not be framed or deframed. After an error the stream is out of
/// sync and must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    TruncatedStream { buffered: usize },
    #[error("frame body: {0}")]
    Body(#[from] WireError),
}

/// One frame: the length of `item`'s encoding as `uint32` big-endian, then the encoding.
pub fn encode_frame(item: &DeliveredItem, max_frame_len: usize) -> Result<Vec<u8>, FrameError> {
    let body = item.to_bytes()?;
    if body.len() > max_frame_len || u32::try_from(body.len()).is_err() {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: max_frame_len,
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Incremental deframer for a push stream read in arbitrary chunks.
///
/// Memory is bounded: a header announcing more than `max_frame_len` bytes is rejected as soon
/// as its four bytes are in, and between calls at most one incomplete frame
/// (≤ `FRAME_HEADER_LEN + max_frame_len` bytes) is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    max_frame_len: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            max_frame_len,
            failed: None,
        }
    }

    /// Consumes `chunk` and returns the bodies of the frames it completed, in order. Once an
    /// error was returned, every later call returns it again.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.buffer.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        let result = loop {
            let rest = &self.buffer[start..];
            let Some(header) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
                break Ok(());
            };
            let len = u32::from_be_bytes(*header) as usize;
            if len > self.max_frame_len {
                break Err(FrameError::TooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
            if len == 0 {
                start += FRAME_HEADER_LEN; // a heartbeat
                continue;
            }
            let Some(body) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
                break Ok(());
            };
            frames.push(body.to_vec());
            start += FRAME_HEADER_LEN + len;
        };
        self.buffer.drain(..start);
        match result {
            Ok(()) => Ok(frames),
            Err(error) => {
                self.buffer = Vec::new();
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Like [`FrameDecoder::feed`], decoding each frame as a `DeliveredItem`.
    pub fn feed_items(
        &mut self,
        chunk: &[u8],
        limits: &Limits,
    ) -> Result<Vec<DeliveredItem>, FrameError> {
        let frames = self.feed(chunk)?;
        frames
            .iter()
            .map(|frame| DeliveredItem::from_bytes(frame, limits).map_err(FrameError::from))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|error| self.failed = Some(error.clone()))
    }

    /// Bytes of an incomplete frame held back.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Call at end of stream: fails if the stream stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TruncatedStream {
                buffered: self.buffer.len(),
            })
        }
    }
}
