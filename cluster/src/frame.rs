//! The frame: what one node sends another per driver turn, every shard's Raft messages for that
//! node in one byte string (STYLE.md P6: batching per destination).
//!
//! # Format, version 1
//!
//! All integers are fixed-width big-endian.
//!
//! ```text
//! frame   = version:u8 (= 1) ‖ from:u64 ‖ to:u64 ‖ count:u32 ‖ message{count}
//! message = shard:u64 ‖ length:u32 ‖ raft eraftpb.Message, protobuf-encoded, `length` bytes
//! ```
//!
//! Decoding is strict, and never panics or allocates more than the input justifies, whatever
//! the bytes:
//!
//! - a frame is at most [`MAX_FRAME_BYTES`] and its version is 1;
//! - `from` and `to` are node ids (not 0) and differ;
//! - `count` is at least 1 and no larger than the rest of the frame can hold (every message
//!   takes at least its 12-byte header);
//! - every `length` fits in what remains; nothing follows the last message;
//! - every message decodes as protobuf, names the frame's `from` and `to` as its own, and is of
//!   a type nodes exchange (not a node-local type such as `MsgHup` or `MsgUnreachable`, and not
//!   `MsgPropose`: proposals are never forwarded between nodes, since the proposer could not
//!   learn their outcome).
//!
//! Whether `to` is the receiving node and the shards exist is checked by
//! `ClusterHandle::receive`, which knows both.
//!
//! Hibernation (`group/hibernate.rs`) adds no message kind and no version: its notice is a
//! `MsgHeartbeat` and its acknowledgement a `MsgHeartbeatResponse`, told apart by their raft
//! `context` (`mimid.hibernate.v1`, `mimid.hibernate.ack.v1`; the context names its own
//! version). A node of an older release steps them as plain heartbeats, echoing the notice's
//! context, which no leader counts as an acknowledgement: it keeps ticking and so does the
//! shard's leader.
//!
//! # Size
//!
//! Most frames are small (heartbeats, a few appended entries), but a `MsgSnapshot` carries the
//! shard's whole serialised state machine inside the message, so a frame holding one is as large
//! as that state. A frame never exceeds [`MAX_FRAME_BYTES`]: the encoder leaves out any message
//! that would take it over the bound (counted in `ClusterMetrics::messages_too_large`; Raft
//! sends it again later, which does not help a snapshot that is itself too large, so shard
//! states must stay below the bound), and the decoder refuses larger input.

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};

use crate::{NodeId, ShardId};

/// The largest frame encoded or accepted, in bytes (512 MiB). A snapshot travels inside a
/// frame, so this also bounds the size of a shard's serialised state that can be sent to a
/// lagging replica.
pub const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// The only version this build writes and reads.
pub(crate) const FRAME_VERSION: u8 = 1;

/// version ‖ from ‖ to ‖ count.
const FRAME_HEADER_LEN: usize = 1 + 8 + 8 + 4;
/// shard ‖ length.
const MESSAGE_HEADER_LEN: usize = 8 + 4;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) messages: Vec<(ShardId, Message)>,
}

/// An encoded frame and what did not fit in it.
pub(crate) struct Encoded {
    /// `None` when no message could be encoded (nothing to send).
    pub(crate) bytes: Option<Vec<u8>>,
    /// Messages in `bytes`.
    pub(crate) messages: usize,
    /// Messages left out because they would have taken the frame over [`MAX_FRAME_BYTES`] (or
    /// could not be encoded at all).
    pub(crate) left_out: usize,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported frame version {0} (expected {FRAME_VERSION})")]
    Version(u8),
    #[error("invalid node ids: from {from}, to {to}")]
    NodeIds { from: NodeId, to: NodeId },
    #[error("message count {count} does not fit a frame of {len} bytes")]
    Count { count: u32, len: usize },
    #[error("message {position} declares {length} bytes but {remaining} remain")]
    Length {
        position: usize,
        length: u32,
        remaining: usize,
    },
    #[error("message {position} is not a raft message: {reason}")]
    Protobuf { position: usize, reason: String },
    #[error("message {position} is addressed from {from} to {to}, not as its frame")]
    Addressing {
        position: usize,
        from: NodeId,
        to: NodeId,
    },
    #[error("message {position} is of type {kind:?}, which nodes do not exchange")]
    MessageType { position: usize, kind: MessageType },
    #[error("{0} trailing bytes after the last message")]
    Trailing(usize),
}

/// Encodes `messages` (all from `from` to `to`) as one frame, leaving out those that would
/// exceed [`MAX_FRAME_BYTES`].
pub(crate) fn encode(from: NodeId, to: NodeId, messages: &[(ShardId, Message)]) -> Encoded {
    let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + 64 * messages.len());
    bytes.push(FRAME_VERSION);
    bytes.extend_from_slice(&from.to_be_bytes());
    bytes.extend_from_slice(&to.to_be_bytes());
    let count_at = bytes.len();
    bytes.extend_from_slice(&0u32.to_be_bytes());
    let mut count: u32 = 0;
    let mut left_out = 0;
    for (shard, message) in messages {
        // Refuse the hopeless before encoding: protobuf sizes are u32 and would wrap on a
        // multi-GiB snapshot.
        if payload_len(message) > MAX_FRAME_BYTES || count == u32::MAX {
            left_out += 1;
            continue;
        }
        let start = bytes.len();
        bytes.extend_from_slice(&shard.to_be_bytes());
        let length_at = bytes.len();
        bytes.extend_from_slice(&0u32.to_be_bytes());
        let encoded = message.write_to_vec(&mut bytes);
        let length = bytes.len() - length_at - 4;
        match (encoded, u32::try_from(length)) {
            (Ok(()), Ok(length)) if bytes.len() <= MAX_FRAME_BYTES => {
                bytes[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
                count += 1;
            }
            _ => {
                bytes.truncate(start);
                left_out += 1;
            }
        }
    }
    bytes[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
    Encoded {
        bytes: (count > 0).then_some(bytes),
        messages: count as usize,
        left_out,
    }
}

/// Decodes and checks a frame (see the module docs for every rule).
pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let mut reader = Reader { rest: bytes };
    let version = reader.u8("version")?;
    if version != FRAME_VERSION {
        return Err(FrameError::Version(version));
    }
    let from = reader.u64("from")?;
    let to = reader.u64("to")?;
    if from == 0 || to == 0 || from == to {
        return Err(FrameError::NodeIds { from, to });
    }
    let count = reader.u32("message count")?;
    let max_count = reader.rest.len() / MESSAGE_HEADER_LEN;
    if count == 0 || count as usize > max_count {
        return Err(FrameError::Count {
            count,
            len: bytes.len(),
        });
    }
    let mut messages = Vec::with_capacity(count as usize);
    for position in 0..count as usize {
        let shard = reader.u64("message shard")?;
        let length = reader.u32("message length")?;
        let remaining = reader.rest.len();
        let Some(body) = reader.take(length as usize) else {
            return Err(FrameError::Length {
                position,
                length,
                remaining,
            });
        };
        let message = Message::parse_from_bytes(body).map_err(|err| FrameError::Protobuf {
            position,
            reason: err.to_string(),
        })?;
        if message.from != from || message.to != to {
            return Err(FrameError::Addressing {
                position,
                from: message.from,
                to: message.to,
            });
        }
        let kind = message.get_msg_type();
        if !exchanged_between_nodes(kind) {
            return Err(FrameError::MessageType { position, kind });
        }
        messages.push((shard, message));
    }
    if !reader.rest.is_empty() {
        return Err(FrameError::Trailing(reader.rest.len()));
    }
    Ok(Frame { from, to, messages })
}

/// The message types one node's Raft sends another's. The rest are node-local (`MsgHup`,
/// `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`) or proposals (`MsgPropose`),
/// which this crate never forwards; stepping one from the network could make a leader append
/// an entry no local proposer tracks.
fn exchanged_between_nodes(kind: MessageType) -> bool {
    match kind {
        MessageType::MsgAppend
        | MessageType::MsgAppendResponse
        | MessageType::MsgRequestVote
        | MessageType::MsgRequestVoteResponse
        | MessageType::MsgRequestPreVote
        | MessageType::MsgRequestPreVoteResponse
        | MessageType::MsgSnapshot
        | MessageType::MsgHeartbeat
        | MessageType::MsgHeartbeatResponse
        | MessageType::MsgTransferLeader
        | MessageType::MsgTimeoutNow
        | MessageType::MsgReadIndex
        | MessageType::MsgReadIndexResp => true,
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgPropose
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => false,
    }
}

/// A lower bound of the encoded size of `message`: the bytes it carries.
fn payload_len(message: &Message) -> usize {
    let entries = message
        .get_entries()
        .iter()
        .map(|entry| entry.data.len().saturating_add(entry.context.len()))
        .fold(0usize, usize::saturating_add);
    let snapshot = message.get_snapshot().data.len();
    entries
        .saturating_add(snapshot)
        .saturating_add(message.context.len())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.rest.len() < len {
            return None;
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        self.take(N)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(FrameError::Truncated(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        self.array::<1>(what).map(|[byte]| byte)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.array(what).map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{Entry, Snapshot, SnapshotMetadata};

    use super::*;

    fn message(kind: MessageType, from: NodeId, to: NodeId) -> Message {
        let mut message = Message {
            from,
            to,
            term: 7,
            index: 41,
            log_term: 6,
            commit: 40,
            ..Message::default()
        };
        message.set_msg_type(kind);
        message
    }

    fn append(from: NodeId, to: NodeId, data: &[&[u8]]) -> Message {
        let mut message = message(MessageType::MsgAppend, from, to);
        for (offset, bytes) in data.iter().enumerate() {
            message.mut_entries().push(Entry {
                index: 42 + offset as u64,
                term: 7,
                data: bytes.to_vec().into(),
                context: vec![1].into(),
                ..Entry::default()
            });
        }
        message
    }

    fn snapshot_message(from: NodeId, to: NodeId, data: Vec<u8>) -> Message {
        let mut message = message(MessageType::MsgSnapshot, from, to);
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        snapshot.set_metadata(SnapshotMetadata {
            index: 40,
            term: 6,
            ..SnapshotMetadata::default()
        });
        message.set_snapshot(snapshot);
        message
    }

    fn sample() -> Vec<(ShardId, Message)> {
        vec![
            (0, append(1, 2, &[b"first", b"", b"third"])),
            (3, message(MessageType::MsgHeartbeat, 1, 2)),
            (u64::MAX, snapshot_message(1, 2, vec![9; 300])),
            (3, message(MessageType::MsgRequestPreVote, 1, 2)),
        ]
    }

    fn encoded(from: NodeId, to: NodeId, messages: &[(ShardId, Message)]) -> Vec<u8> {
        let encoded = encode(from, to, messages);
        assert_eq!(encoded.messages, messages.len());
        assert_eq!(encoded.left_out, 0);
        encoded.bytes.expect("a frame")
    }

    #[test]
    fn a_frame_round_trips_every_message_in_order() {
        let messages = sample();
        let bytes = encoded(1, 2, &messages);
        assert_eq!(bytes[0], FRAME_VERSION);
        let frame = decode(&bytes).expect("decodes");
        assert_eq!(
            frame,
            Frame {
                from: 1,
                to: 2,
                messages
            }
        );
    }

    #[test]
    fn the_header_is_fixed_width_big_endian() {
        let bytes = encoded(
            0x0102,
            0x0304,
            &[(5, message(MessageType::MsgHeartbeat, 0x0102, 0x0304))],
        );
        assert_eq!(
            &bytes[..FRAME_HEADER_LEN],
            &[1, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4, 0, 0, 0, 1]
        );
        assert_eq!(
            &bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 8],
            &5u64.to_be_bytes()
        );
        let length = u32::from_be_bytes(
            bytes[FRAME_HEADER_LEN + 8..FRAME_HEADER_LEN + 12]
                .try_into()
                .expect("4 bytes"),
        );
        assert_eq!(
            length as usize,
            bytes.len() - FRAME_HEADER_LEN - MESSAGE_HEADER_LEN
        );
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_rejected() {
        let bytes = encoded(1, 2, &sample());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "a frame cut to {len} of {} bytes decoded",
                bytes.len()
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encoded(1, 2, &sample());
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(FrameError::Trailing(1)));
    }

    #[test]
    fn a_count_larger_than_the_frame_can_hold_is_rejected_before_allocating() {
        let mut bytes = encoded(1, 2, &sample());
        bytes[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&bytes), Err(FrameError::Count { .. })));
        bytes[17..21].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(FrameError::Count { count: 0, .. })
        ));
        // One more than encoded: the last message's header is read from nothing.
        bytes[17..21].copy_from_slice(&5u32.to_be_bytes());
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn an_overlong_message_length_is_rejected() {
        let mut bytes = encoded(1, 2, &sample());
        let at = FRAME_HEADER_LEN + 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(FrameError::Length {
                position: 0,
                length: u32::MAX,
                ..
            })
        ));
    }

    #[test]
    fn other_versions_and_bad_node_ids_are_rejected() {
        let bytes = encoded(1, 2, &sample());
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(decode(&other), Err(FrameError::Version(2)));
        for (from, to) in [(0, 2), (1, 0), (2, 2)] {
            let mut ids = bytes.clone();
            ids[1..9].copy_from_slice(&u64::to_be_bytes(from));
            ids[9..17].copy_from_slice(&u64::to_be_bytes(to));
            assert_eq!(decode(&ids), Err(FrameError::NodeIds { from, to }));
        }
    }

    #[test]
    fn messages_addressed_unlike_their_frame_are_rejected() {
        // A frame from 1 to 2 carrying a message from 3.
        let bytes = encoded(1, 2, &[(0, message(MessageType::MsgHeartbeat, 3, 2))]);
        assert!(matches!(
            decode(&bytes),
            Err(FrameError::Addressing {
                position: 0,
                from: 3,
                to: 2
            })
        ));
    }

    #[test]
    fn local_message_types_and_proposals_are_rejected() {
        for kind in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgPropose,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            let bytes = encoded(1, 2, &[(0, message(kind, 1, 2))]);
            assert_eq!(
                decode(&bytes),
                Err(FrameError::MessageType { position: 0, kind }),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn oversized_input_is_refused_without_reading_it() {
        // Only the length is looked at; the content does not matter.
        let huge = vec![0u8; MAX_FRAME_BYTES + 1];
        assert_eq!(
            decode(&huge),
            Err(FrameError::TooLarge(MAX_FRAME_BYTES + 1))
        );
    }

    #[test]
    fn a_message_too_large_for_any_frame_is_left_out_and_the_rest_sent() {
        // Entries adding up to more than a frame may carry; they share one buffer (entry data
        // is reference-counted), so the test needs 64 MiB, not 576.
        let mut oversized = append(1, 2, &[]);
        let template = Entry {
            data: vec![0u8; 64 * 1024 * 1024].into(),
            ..Entry::default()
        };
        for index in 0..9 {
            let mut entry = template.clone();
            entry.index = 42 + index;
            oversized.mut_entries().push(entry);
        }
        let heartbeat = message(MessageType::MsgHeartbeat, 1, 2);
        let encoded = encode(1, 2, &[(0, oversized), (1, heartbeat.clone())]);
        assert_eq!((encoded.messages, encoded.left_out), (1, 1));
        let frame = decode(&encoded.bytes.expect("the heartbeat is sent")).expect("decodes");
        assert_eq!(frame.messages, vec![(1, heartbeat)]);
    }

    #[test]
    fn nothing_to_send_gives_no_frame() {
        let encoded = encode(1, 2, &[]);
        assert!(encoded.bytes.is_none());
        assert_eq!((encoded.messages, encoded.left_out), (0, 0));
    }

    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn garbage_and_mutated_frames_never_panic() {
        for seed in 0..2_000u64 {
            let len = (seed as usize * 7) % 300;
            let _ = decode(&noise(seed, len));
            // Garbage after a plausible header reaches the message decoder.
            let mut headed = vec![FRAME_VERSION];
            headed.extend_from_slice(&1u64.to_be_bytes());
            headed.extend_from_slice(&2u64.to_be_bytes());
            headed.extend_from_slice(&1u32.to_be_bytes());
            headed.extend_from_slice(&(seed % 4).to_be_bytes());
            headed.extend_from_slice(&(len as u32).to_be_bytes());
            headed.extend_from_slice(&noise(seed, len));
            let _ = decode(&headed);
        }
        // Every single-byte change of a valid frame either decodes to something valid or is
        // refused; none panics.
        let bytes = encoded(1, 2, &sample());
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[at] ^= flip;
                if let Ok(frame) = decode(&mutated) {
                    assert_eq!((frame.from, frame.to), (1, 2));
                }
            }
        }
    }
}
