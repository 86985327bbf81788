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
//! 3. `Command::RepinRoom { room, from: S, to: T, generation }` in H: H's pin of R
//!    (`RoomPins`) names T. A pin in H takes precedence over H's own data, so routers find R
//!    in T from then on.
//! 4. `Command::ReleaseRoom { room, to: T, generation }` in S: R, its reports and its frank
//!    records leave S, which keeps a *tombstone* ([`RoomMoves::moved_to`]): commands for R
//!    reaching S later answer `ApplyOutput::RoomMoved { to }`, and the proposer retries at T.
//!
//! The `generation` of steps 3 and 4 is the generation of the copy the freeze took (the
//! export's [`RoomExport::generation`] minus one): the coordinator reads it from the export.
//!
//! **Generations.** Moves of one room may overlap: a coordinator dies between steps and the
//! resume task finishes its move later, while the room, changeable in T since the adopt,
//! moves on (a split of T, another node's move); Raft may apply a step twice. So a copy of a
//! room counts the moves that brought it where it is: its *generation* (0 where it was
//! created, the export's [`RoomExport::generation`] where it was adopted), kept in
//! [`RoomMoves`] with a tombstone's too. An adopt of an export no newer than the copy T
//! hosts or released answers `Ok` and installs nothing (it is a repeat, or the room moved on
//! since: the source's copy is stale and its move may finish); an export newer than a copy
//! T holds frozen (T's own move out was overtaken by the room coming back) replaces it. So no
//! stale export ever overwrites or resurrects a room, and no newer one is dropped.
//!
//! The later steps name the generation their move froze, so a late one (a slow coordinator's,
//! a step Raft applied twice) cannot act on a newer copy: a release takes the copy of its
//! generation only (a newer copy of R may be frozen in S for the same T, its own move not yet
//! adopted: releasing it would leave R in that move's export alone), and answers `Ok` without
//! changing anything for any other generation (a stale repeat: the copy it froze left or was
//! replaced already). H keeps the generation of the copy its pin names
//! ([`RoomMoves::pin_generation`]) and a repin moves the pin to a newer copy only, so a stale
//! repin never takes the pin back to a shard the room left, and a pin that fell behind
//! (repins of overlapping moves landing out of order) catches up with the next newer repin.
//!
//! Frozen rooms, tombstones and generations ride in the shard's snapshot, in a section of
//! their own ([`RoomMoves::snapshot_prefix`]) that a shard without moves leaves out, so its
//! snapshot keeps the bytes it had before moves existed. Determinism: the maps are
//! `BTreeMap`s, and the only time recorded is the freeze's `Stamped::ts_ms`.

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
    /// The generation of the room's copy once adopted (module docs, "Generations"): the
    /// source's generation plus one.
    pub generation: u64,
    /// `RoomState::to_snapshot` bytes.
    pub state: Vec<u8>,
    /// The room's abuse reports, oldest first.
    pub reports: Vec<StoredReport>,
    /// The room's frank records, by log position.
    pub franks: BTreeMap<u64, FrankRecord>,
}

/// The [`RoomExport`] format this build writes and reads.
pub const EXPORT_FORMAT: u32 = 2;

impl RoomExport {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serialising a room export into memory cannot fail")
    }

    /// Decodes an export, refusing trailing bytes and other formats (the format is read
    /// first: another format's fields are not this one's).
    pub fn decode(bytes: &[u8]) -> Result<RoomExport, MoveRefusal> {
        let (format, _): (u32, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| MoveRefusal::BadExport(e.to_string()))?;
        if format != EXPORT_FORMAT {
            return Err(MoveRefusal::BadExport(format!(
                "format {format} (this build reads {EXPORT_FORMAT})"
            )));
        }
        let (export, rest): (RoomExport, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| MoveRefusal::BadExport(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MoveRefusal::BadExport(format!(
                "{} bytes after the export",
                rest.len()
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

/// A room that left a shard (its tombstone there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// The shard it moved to.
    pub to: ShardId,
    /// The generation of the copy that left (module docs, "Generations").
    pub generation: u64,
}

/// The moves of one shard: its rooms frozen for a move, the tombstones of the rooms that
/// left it, the generations of the rooms that came to it and, in a home shard, of the copies
/// its pins name (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMoves {
    frozen: BTreeMap<RoomId, Frozen>,
    moved: BTreeMap<RoomId, Moved>,
    /// Hosted rooms that came by a move, with their generation (a room created here is of
    /// generation 0 and not listed).
    generations: BTreeMap<RoomId, u64>,
    /// Rooms this home shard repinned, with the generation of the copy the pin names.
    pinned: BTreeMap<RoomId, u64>,
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
        self.moved.get(room).map(|moved| moved.to)
    }

    /// The tombstone of `room`, when it left this shard.
    pub fn moved(&self, room: &RoomId) -> Option<&Moved> {
        self.moved.get(room)
    }

    /// The generation of `room` as hosted here (module docs, "Generations"): 0 unless it came
    /// by a move.
    pub fn generation(&self, room: &RoomId) -> u64 {
        self.generations.get(room).copied().unwrap_or(0)
    }

    /// The generation of the copy this home shard's pin of `room` names (module docs,
    /// "Generations"): 0 unless a move repinned it.
    pub fn pin_generation(&self, room: &RoomId) -> u64 {
        self.pinned.get(room).copied().unwrap_or(0)
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
        self.frozen.is_empty()
            && self.moved.is_empty()
            && self.generations.is_empty()
            && self.pinned.is_empty()
    }

    pub(crate) fn freeze(&mut self, room: &RoomId, to: ShardId, since_ms: u64) {
        self.frozen
            .entry(room.clone())
            .or_insert(Frozen { to, since_ms });
    }

    /// `room` left for `to`: no longer frozen, a tombstone (of its generation) instead.
    pub(crate) fn release(&mut self, room: &RoomId, to: ShardId) {
        self.frozen.remove(room);
        let generation = self.generations.remove(room).unwrap_or(0);
        self.moved.insert(room.clone(), Moved { to, generation });
    }

    /// `room` came (back) to this shard at `generation`: a tombstone of an earlier move out
    /// goes, and so does the freeze of a stale copy it replaces.
    pub(crate) fn adopted(&mut self, room: &RoomId, generation: u64) {
        self.moved.remove(room);
        self.frozen.remove(room);
        self.generations.insert(room.clone(), generation);
    }

    /// This home shard's pin of `room` names a copy of `generation` now.
    pub(crate) fn repinned(&mut self, room: &RoomId, generation: u64) {
        self.pinned.insert(room.clone(), generation);
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
/// `0xff` bytes (not a postcard varint) and a name, then the section's version. Version 3
/// (the pins' generations); versions 1 and 2 were written on main for a few hours, never by a
/// release, and are not read.
pub const SNAPSHOT_MARKER: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'm', b'o', b'v', b'e', b's', 3,
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
            generation: 1,
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
            "the room's export is unusable: format 3 (this build reads 2)"
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

        moves.adopted(&room("b"), 2);
        assert_eq!(moves.moved_to(&room("b")), None);
        assert_eq!(moves.generation(&room("b")), 2);
        let mut cut = SNAPSHOT_MARKER.to_vec();
        cut.push(0xff);
        assert!(RoomMoves::split_snapshot(&cut).is_err());
        assert_ne!(SNAPSHOT_MARKER, crate::residency::SNAPSHOT_MARKER);
    }

    /// Module docs, "Generations": a copy counts the moves that brought it; a tombstone keeps
    /// the generation that left; an adopt over a stale frozen copy drops its freeze.
    #[test]
    fn generations_go_with_hosted_copies_and_tombstones() {
        let mut moves = RoomMoves::default();
        assert_eq!(moves.generation(&room("a")), 0);
        moves.freeze(&room("a"), 4, 10);
        moves.release(&room("a"), 4);
        assert_eq!(
            moves.moved(&room("a")),
            Some(&Moved {
                to: 4,
                generation: 0
            })
        );
        moves.adopted(&room("a"), 3);
        moves.freeze(&room("a"), 5, 20);
        moves.adopted(&room("a"), 5);
        assert_eq!(moves.moving_to(&room("a")), None, "the stale freeze went");
        assert_eq!(moves.moved(&room("a")), None);
        moves.freeze(&room("a"), 4, 30);
        moves.release(&room("a"), 4);
        assert_eq!(moves.generation(&room("a")), 0);
        assert_eq!(
            moves.moved(&room("a")).map(|moved| moved.generation),
            Some(5)
        );
        assert!(moves.generations.is_empty());
        // A target's section holds the generation of what it adopted.
        let mut target = RoomMoves::default();
        target.adopted(&room("b"), 1);
        assert!(!target.is_empty());
        let (back, _) = RoomMoves::split_snapshot(&target.snapshot_prefix()).unwrap();
        assert_eq!(back.generation(&room("b")), 1);
        // A home shard's section holds the generation its pin names.
        let mut home = RoomMoves::default();
        assert_eq!(home.pin_generation(&room("c")), 0);
        home.repinned(&room("c"), 2);
        assert!(!home.is_empty());
        let (back, _) = RoomMoves::split_snapshot(&home.snapshot_prefix()).unwrap();
        assert_eq!(back.pin_generation(&room("c")), 2);
        assert_eq!(back, home);
    }

    /// The sections of the builds before pins had generations (versions 1 and 2, never
    /// released) are not read as moves: their bytes are left to the shard's own decoding,
    /// which refuses them.
    #[test]
    fn only_the_current_section_version_is_read() {
        let mut bytes = SNAPSHOT_MARKER.to_vec();
        *bytes.last_mut().unwrap() = 2;
        bytes.extend_from_slice(b"older section");
        let (moves, rest) = RoomMoves::split_snapshot(&bytes).unwrap();
        assert!(moves.is_empty());
        assert_eq!(rest, &bytes[..]);
        assert_eq!(SNAPSHOT_MARKER[15], 3);
    }
}
