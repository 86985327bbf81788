//! What a provider keeps about franked application messages (protocol-06 §5.4.1, MIMI.md
//! §5.3.1, §5.4), so that every delivery of a message carries its `Frank`.
//!
//! A Frank is `server_frank = HMAC(hub_key, franking_tag || ServerFrankingContext)` and the
//! franking key's signature over it. Both keys are the provider's files, not replicated state,
//! so apply cannot compute a Frank (nor should it: the key would be in every snapshot). What
//! apply can do deterministically is remember the inputs the edge lacks:
//!
//! - as the **hub**, for an accepted message whose SafeAAD carries `frank_aad` (component
//!   0x0020), the sending user (`sendingUri`, which the ciphertext does not reveal) and the
//!   franking tag, by the message's log position ([`FrankRecord::Hub`]). The edge computes the
//!   Frank from them, the room URI and the item's accepted time whenever it delivers the item:
//!   in the submitMessage answer, in every notify to a follower and on local push streams.
//!   HMAC and Ed25519 are deterministic, so each computation gives the same bytes;
//! - as a **follower**, the Frank the hub's notify brought with the message
//!   ([`FrankRecord::Received`], opaque bytes: only `node` knows wire formats), by the local
//!   position the mirror gave it, for its own clients' push streams.
//!
//! Whether a room is franked at all (its GroupContext names this provider's franking key as
//! `franking_agent`) is the edge's question too: the key is the edge's.
//!
//! Records live as long as their log items: housekeeping drops those before the room's first
//! retained item.

use std::collections::BTreeMap;

use openmls::framing::SafeAad;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn};
use serde::{Deserialize, Serialize};
use tls_codec::DeserializeBytes;

use crate::ids::{RoomId, UserId};
use crate::policy::component;

/// Bytes of a franking tag (`FrankAAD.franking_tag`, HMAC-SHA256).
pub const FRANKING_TAG_LEN: usize = 32;

/// The `frank_aad` franking tag of an `MLSMessage` carrying a PrivateMessage, if its
/// `authenticated_data` starts with a SafeAAD (draft-ietf-mls-extensions §4.9) that has a
/// `frank_aad` item of exactly 32 bytes. The AAD is sent in the clear, so the hub can read it.
///
/// ```
/// assert_eq!(mimid_actors::franking::frank_aad_of(b"not an MLSMessage"), None);
/// ```
pub fn frank_aad_of(message: &[u8]) -> Option<[u8; FRANKING_TAG_LEN]> {
    let message = MlsMessageIn::tls_deserialize_exact_bytes(message).ok()?;
    let MlsMessageBodyIn::PrivateMessage(private) = message.extract() else {
        return None;
    };
    frank_aad_in(private.aad())
}

/// The `frank_aad` franking tag in `authenticated_data` bytes (see [`frank_aad_of`]).
pub fn frank_aad_in(authenticated_data: &[u8]) -> Option<[u8; FRANKING_TAG_LEN]> {
    let (safe_aad, _rest) = SafeAad::tls_deserialize_bytes(authenticated_data).ok()?;
    safe_aad.get(component::FRANK_AAD)?.try_into().ok()
}

/// What is kept about one franked message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrankRecord {
    /// Hub side: the message's `sendingUri` and the franking tag its SafeAAD carried.
    Hub {
        sender: UserId,
        franking_tag: [u8; FRANKING_TAG_LEN],
    },
    /// Follower side: the `Frank` the hub's notify carried (protocol-06 §5.4 wire bytes).
    Received { frank: Vec<u8> },
}

/// A Frank a notify carried with an application message (follower side), matched to the
/// message by SHA-256 of its `MLSMessage` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedFrank {
    pub message_sha256: [u8; 32],
    /// protocol-06 §5.4 `Frank` wire bytes, decoded (so well-formed) by the edge.
    pub frank: Vec<u8>,
}

/// The frank records of the rooms of one shard, by room and log position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrankRecords {
    rooms: BTreeMap<RoomId, BTreeMap<u64, FrankRecord>>,
}

impl FrankRecords {
    /// The record of the item at `seq` of `room`.
    pub fn get(&self, room: &RoomId, seq: u64) -> Option<&FrankRecord> {
        self.rooms.get(room)?.get(&seq)
    }

    pub(crate) fn insert(&mut self, room: &RoomId, seq: u64, record: FrankRecord) {
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(seq, record);
    }

    /// Every record of `room`, by log position (empty when it has none).
    pub fn of_room(&self, room: &RoomId) -> BTreeMap<u64, FrankRecord> {
        self.rooms.get(room).cloned().unwrap_or_default()
    }

    /// Takes out every record of `room` (the room leaves the shard, `room_move` module docs).
    pub(crate) fn take_room(&mut self, room: &RoomId) -> BTreeMap<u64, FrankRecord> {
        self.rooms.remove(room).unwrap_or_default()
    }

    /// Puts in `records` as the records of `room` (the room came to the shard), replacing any;
    /// none leaves no entry.
    pub(crate) fn put_room(&mut self, room: &RoomId, records: BTreeMap<u64, FrankRecord>) {
        if records.is_empty() {
            self.rooms.remove(room);
        } else {
            self.rooms.insert(room.clone(), records);
        }
    }

    /// Drops the records of `room` before `first_retained` (the log dropped those items).
    pub(crate) fn trim(&mut self, room: &RoomId, first_retained: u64) {
        if let Some(records) = self.rooms.get_mut(room) {
            *records = records.split_off(&first_retained);
            if records.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// How many records the shard holds.
    pub fn len(&self) -> usize {
        self.rooms.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls::framing::SafeAadItem;
    use tls_codec::Serialize as _;

    /// draft-ietf-mls-extensions §4.9: SafeAAD is a sorted list of (component, data) items at
    /// the start of `authenticated_data`; frank_aad (0x0020) carries the 32-byte tag.
    #[test]
    fn the_franking_tag_is_read_from_a_safe_aad_prefix() {
        let tag = [7u8; FRANKING_TAG_LEN];
        let safe_aad = SafeAad::from_items(vec![
            SafeAadItem::new(0x0010, b"other".to_vec()),
            SafeAadItem::new(component::FRANK_AAD, tag.to_vec()),
        ])
        .unwrap();
        let mut aad = safe_aad.tls_serialize_detached().unwrap();
        aad.extend_from_slice(b"application tail");
        assert_eq!(frank_aad_in(&aad), Some(tag));
        let short = SafeAad::from_items(vec![SafeAadItem::new(component::FRANK_AAD, vec![1; 31])])
            .unwrap()
            .tls_serialize_detached()
            .unwrap();
        assert_eq!(frank_aad_in(&short), None, "a tag is exactly 32 bytes");
        assert_eq!(
            frank_aad_in(&SafeAad::empty().tls_serialize_detached().unwrap()),
            None
        );
        assert_eq!(frank_aad_in(b""), None);
        assert_eq!(frank_aad_in(&[0x05, 0xff]), None, "not a SafeAAD");
    }

    #[test]
    fn records_are_trimmed_with_their_log() {
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let mut records = FrankRecords::default();
        for seq in 1..=5 {
            records.insert(
                &room,
                seq,
                FrankRecord::Received {
                    frank: vec![seq as u8],
                },
            );
        }
        records.trim(&room, 4);
        assert_eq!(records.len(), 2);
        assert_eq!(records.get(&room, 3), None);
        assert!(records.get(&room, 4).is_some());
        records.trim(&room, 6);
        assert!(records.is_empty());
    }
}
