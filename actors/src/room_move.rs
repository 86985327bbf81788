//! Room moves (issue 9 build item 3, "a shard splits when it grows hot or large";
//! ARCHITECTURE.md "Shard splits"): a hosted room leaves a hot or large shard for a *split
//! shard* (`Layout::split_shards`), a Raft group kept for this, since the cluster cannot
//! create groups at runtime.
//!
//! The unit that moves is a hosted room: its `RoomState`, its abuse reports and its frank
//! records ([`RoomExport`]). Mirrors, users and rooms pinned to a residency set never move.
//! A move of room R from its source shard S to a split shard T, whose home shard
//! (`Layout::home`) is H, is four replicated commands, each decided in apply and idempotent,
//! so any node can resume a move left half done:
//!
//! 1. `Command::FreezeRoom { room, to: T }` in S: R is *frozen* ([`RoomMoves::moving_to`]) and
//!    the apply's output is R's [`RoomExport`]. While frozen, nothing changes R in S: every
//!    command that would answers `ApplyOutput::RoomMoving { to }` without being applied (the
//!    proposer waits and retries where R is then), and housekeeping skips it, so a second
//!    freeze gives the same export.
//! 2. `Command::AdoptRoom { room, from: S, export }` in T: R is installed from the export.
//! 3. `Command::RepinRoom { room, from: S, to: T }` in H: H's pin of R (`RoomPins`) names T.
//!    A pin in H takes precedence over H's own data, so routers find R in T from then on.
//! 4. `Command::ReleaseRoom { room, to: T }` in S: R, its reports and its frank records
//!    leave S, which keeps a *tombstone* ([`RoomMoves::moved_to`]): commands for R reaching S
//!    later answer `ApplyOutput::RoomMoved { to }`, and the proposer retries at T.
//!
//! Frozen rooms and tombstones ride in S's snapshot, in a section of their own
//! ([`RoomMoves::snapshot_prefix`]) that a shard without moves leaves out, so its snapshot
//! keeps the bytes it had before moves existed. Determinism: the maps are `BTreeMap`s, and
//! the only time recorded is the freeze's `Stamped::ts_ms`.

use std::collections::BTreeMap;

use mimid_cluster::ShardId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::franking::FrankRecord;
use crate::ids::RoomId;
use crate::moderation::StoredReport;
use crate::snapshot_section;

/// Why a step of a move was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum MoveRefusal {
    /// The room is not hosted in the shard the step was proposed to.
    #[error("the room is not hosted in shard {shard}")]
    UnknownRoom { shard: ShardId },
    /// The room lives in a residency set's shard (or its home shard pins it there): it stays
    /// in its set's regions and never moves.
    #[error("the room is pinned to residency shard {shard} and never moves")]
    Residency { shard: ShardId },
    /// A room moves only into a split shard.
    #[error("shard {shard} is not a split shard")]
    NotASplitShard { shard: ShardId },
    /// A room moves out of the hashed or split shard it is in, to another one.
    #[error("the room is in shard {shard} already")]
    SameShard { shard: ShardId },
    /// The room is frozen for a move to another shard.
    #[error("the room is moving to shard {to} already")]
    MovingElsewhere { to: ShardId },
    /// The room left this shard for `to` (a tombstone).
    #[error("the room moved to shard {to}")]
    Moved { to: ShardId },
    /// A release needs the room frozen first.
    #[error("the room is not frozen for a move")]
    NotFrozen,
    /// The export of an adopt does not decode, names another room, or holds a room state that
    /// does not restore.
    #[error("the room's export is unusable: {0}")]
    BadExport(String),
    /// A repin names a source that is not where the room's home shard has it (`actual`:
    /// `None` when the home shard neither pins nor hosts it).
    #[error("the room's home shard has it in {}, not in shard {expected}", shard_or_nowhere(*actual))]
    WrongSource {
        expected: ShardId,
        actual: Option<ShardId>,
    },
    /// A repin goes to the room's home shard only.
    #[error("shard {shard} is not the room's home shard (shard {home})")]
    NotHome { shard: ShardId, home: ShardId },
}

fn shard_or_nowhere(shard: Option<ShardId>) -> String {
    match shard {
        Some(shard) => format!("shard {shard}"),
        None => "no shard".to_owned(),
    }
}

/// A hosted room as it leaves its shard (the output of a freeze, the input of an adopt):
/// everything of the room a shard keeps. Encoded with postcard
/// ([`RoomExport::encode`]); `format` is [`EXPORT_FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomExport {
    pub format: u32,
    pub room: RoomId,
    /// `RoomState::to_snapshot` bytes.
    pub state: Vec<u8>,
    /// The room's abuse reports, oldest first.
    pub reports: Vec<StoredReport>,
    /// The room's frank records, by log position.
    pub franks: BTreeMap<u64, FrankRecord>,
}

/// The [`RoomExport`] format this build writes and reads.
pub const EXPORT_FORMAT: u32 = 1;

impl RoomExport {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serialising a room export into memory cannot fail")
    }

    /// Decodes an export, refusing trailing bytes and other formats.
    pub fn decode(bytes: &[u8]) -> Result<RoomExport, MoveRefusal> {
        let (export, rest): (RoomExport, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| MoveRefusal::BadExport(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MoveRefusal::BadExport(format!(
                "{} bytes after the export",
                rest.len()
            )));
        }
        if export.format != EXPORT_FORMAT {
            return Err(MoveRefusal::BadExport(format!(
                "format {} (this build reads {EXPORT_FORMAT})",
                export.format
            )));
        }
        Ok(export)
    }
}

/// A room frozen for a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    /// The split shard it moves to.
    pub to: ShardId,
    /// Hub time of the freeze (`Stamped::ts_ms`).
    pub since_ms: u64,
}

/// The moves of one shard: its rooms frozen for a move and the tombstones of the rooms that
/// left it (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMoves {
    frozen: BTreeMap<RoomId, Frozen>,
    moved: BTreeMap<RoomId, ShardId>,
}

impl RoomMoves {
    /// The shard `room` is frozen for a move to.
    pub fn moving_to(&self, room: &RoomId) -> Option<ShardId> {
        self.frozen.get(room).map(|frozen| frozen.to)
    }

    /// The freeze of `room`.
    pub fn frozen(&self, room: &RoomId) -> Option<&Frozen> {
        self.frozen.get(room)
    }

    /// The shard `room` moved to, when it left this shard.
    pub fn moved_to(&self, room: &RoomId) -> Option<ShardId> {
        self.moved.get(room).copied()
    }

    /// Every frozen room with the shard it moves to, by room id.
    pub fn frozen_rooms(&self) -> impl Iterator<Item = (&RoomId, ShardId)> {
        self.frozen.iter().map(|(room, frozen)| (room, frozen.to))
    }

    /// How many tombstones the shard keeps.
    pub fn tombstones(&self) -> usize {
        self.moved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frozen.is_empty() && self.moved.is_empty()
    }

    pub(crate) fn freeze(&mut self, room: &RoomId, to: ShardId, since_ms: u64) {
        self.frozen
            .entry(room.clone())
            .or_insert(Frozen { to, since_ms });
    }

    /// `room` left for `to`: no longer frozen, a tombstone instead.
    pub(crate) fn release(&mut self, room: &RoomId, to: ShardId) {
        self.frozen.remove(room);
        self.moved.insert(room.clone(), to);
    }

    /// `room` came (back) to this shard: a tombstone of an earlier move out goes.
    pub(crate) fn adopted(&mut self, room: &RoomId) {
        self.moved.remove(room);
    }

    /// The moves' section of a shard snapshot (empty without moves, so a shard without any
    /// keeps the bytes it had before moves existed).
    pub fn snapshot_prefix(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        snapshot_section::encode(&SNAPSHOT_MARKER, self)
    }

    /// Splits the rest of a shard snapshot (after the pins' section) into the moves and the
    /// shard's own bytes.
    pub fn split_snapshot(snapshot: &[u8]) -> Result<(RoomMoves, &[u8]), String> {
        let (moves, rest) =
            snapshot_section::split::<RoomMoves>(&SNAPSHOT_MARKER, snapshot, "room moves")?;
        Ok((moves.unwrap_or_default(), rest))
    }
}

/// Marks a shard snapshot that carries room moves: like the other sections' markers, ten
/// `0xff` bytes (not a postcard varint) and a name.
pub const SNAPSHOT_MARKER: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'm', b'o', b'v', b'e', b's', 1,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Submitter;
    use crate::ids::UserId;
    use crate::moderation::AbuseReport;

    fn room(name: &str) -> RoomId {
        RoomId::parse(&format!("mimi://a.example/r/{name}")).unwrap()
    }

    #[test]
    fn an_export_round_trips_and_refuses_other_formats_and_trailing_bytes() {
        let export = RoomExport {
            format: EXPORT_FORMAT,
            room: room("club"),
            state: vec![1, 2, 3],
            reports: vec![StoredReport {
                received_ts_ms: 5,
                report: AbuseReport {
                    submitter: Submitter::Provider("b.example".into()),
                    reporting_user: None,
                    alleged_abuser: UserId::parse("mimi://a.example/u/m").unwrap(),
                    reason_code: 0,
                    note: String::new(),
                    messages: Vec::new(),
                },
            }],
            franks: BTreeMap::from([(4, FrankRecord::Received { frank: vec![9; 3] })]),
        };
        let bytes = export.encode();
        assert_eq!(RoomExport::decode(&bytes), Ok(export.clone()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            RoomExport::decode(&longer),
            Err(MoveRefusal::BadExport("1 bytes after the export".into()))
        );
        assert!(matches!(
            RoomExport::decode(&bytes[..bytes.len() - 1]),
            Err(MoveRefusal::BadExport(_))
        ));
        let other = RoomExport {
            format: EXPORT_FORMAT + 1,
            ..export
        };
        let refusal = RoomExport::decode(&other.encode()).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the room's export is unusable: format 2 (this build reads 1)"
        );
    }

    #[test]
    fn moves_ride_in_their_own_snapshot_section_only_when_there_are_any() {
        let (empty, rest) = RoomMoves::split_snapshot(b"shard bytes").unwrap();
        assert!(empty.is_empty());
        assert_eq!(rest, b"shard bytes");
        assert!(RoomMoves::default().snapshot_prefix().is_empty());

        let mut moves = RoomMoves::default();
        moves.freeze(&room("a"), 4, 10);
        moves.freeze(&room("a"), 4, 20);
        assert_eq!(
            moves.frozen(&room("a")),
            Some(&Frozen {
                to: 4,
                since_ms: 10
            })
        );
        moves.freeze(&room("b"), 5, 30);
        moves.release(&room("b"), 5);
        assert_eq!(moves.moving_to(&room("b")), None);
        assert_eq!(moves.moved_to(&room("b")), Some(5));
        assert_eq!(moves.tombstones(), 1);
        let mut bytes = moves.snapshot_prefix();
        bytes.extend_from_slice(b"shard bytes");
        let (back, rest) = RoomMoves::split_snapshot(&bytes).unwrap();
        assert_eq!(back, moves);
        assert_eq!(rest, b"shard bytes");

        moves.adopted(&room("b"));
        assert_eq!(moves.moved_to(&room("b")), None);
        let mut cut = SNAPSHOT_MARKER.to_vec();
        cut.push(0xff);
        assert!(RoomMoves::split_snapshot(&cut).is_err());
        assert_ne!(SNAPSHOT_MARKER, crate::residency::SNAPSHOT_MARKER);
    }
}
