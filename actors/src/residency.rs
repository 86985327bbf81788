//! Data residency (issue 9 build item 2; ARCHITECTURE.md "Data residency"): a room can be
//! pinned at creation to a set of regions, and its data then lives only on nodes of those
//! regions.
//!
//! **Shards.** The operator names residency sets in the configuration
//! (`[[cluster.residency]]`: a name, its regions, how many shards). A [`Layout`] numbers the
//! shards: the `cluster.shards` *hashed* shards first (users, profiles, the provider keys and
//! unpinned rooms hash over these only, as before), then each set's shards in configuration
//! order. The placement core keeps a set's shards on nodes of its regions
//! (`View::residency` in `mimid-node`'s placement: nothing added or promoted elsewhere,
//! members elsewhere removed); a pinned room goes to one of its set's shards by the same hash
//! ([`Layout::residency_shard`]). Like `cluster.shards`, the layout is fixed when the cluster
//! is formed and every node must be configured alike.
//!
//! **The pin.** Which shard a pinned room lives in is recorded in the room's *home* shard
//! (the hashed one, [`Layout::home`]) as a [`RoomPins`] entry, written by
//! `Command::PinRoom` before the room is created in its residency shard. Every router can so
//! find the room from its id alone (the hub's resolver reads the home shard, locally or
//! remotely, and caches the answer: a residency pin never changes), and a create of the same
//! id without a residency serializes with the pin in the home shard's log: whichever applies
//! second is refused "room exists". The pin holds no room data, only the id and the shard
//! number. A room moved out of its shard to a split shard is pinned there the same way, and
//! repinned when it moves again (`crate::room_move`); a residency pin is never repinned.
//!
//! **When a pinned create is taken.** Only while every member of the target shard, as shard
//! 0's descriptor records it, has a locality in one of the set's regions
//! ([`placed_within`]): right after `init` every node votes in every shard, and the create
//! waits (503) until placement has moved the shard into its regions. From then on placement
//! never adds a member elsewhere, so the room's log, its snapshots and its fan-out cursors
//! are only ever written on nodes of its regions. Nodes elsewhere still serve the room's
//! clients: they route its proposals to the shard's leader and read it and relay its
//! streams through the holders (`hub::remote`), persisting nothing of it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use mimid_cluster::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

use crate::cluster_meta::check_locality_value;
use crate::ids::RoomId;
use crate::snapshot_section;

/// Longest name of a residency set (what the `Mimid-Residency` create option names).
pub const MAX_SET_NAME_LEN: usize = 64;
/// The request header of a client's createRoom that pins the room to a residency set.
pub const RESIDENCY_HEADER: &str = "mimid-residency";

/// One residency set: its name, its regions and the shards its rooms live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidencySet {
    pub name: String,
    pub regions: BTreeSet<String>,
    pub shards: Range<ShardId>,
}

/// How a cluster's shards are numbered (module docs): the hashed shards, every residency
/// set's, then the split shards (`crate::room_move` module docs: groups kept for rooms moved
/// out of a hot or large shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    hashed: u64,
    sets: Vec<ResidencySet>,
    split: Range<ShardId>,
}

impl Layout {
    /// `count` hashed shards and no residency set.
    pub fn hashed(count: u64) -> Layout {
        Layout {
            hashed: count,
            sets: Vec::new(),
            split: count..count,
        }
    }

    /// `hashed` shards, then per `(name, regions, shard count)` that many shards, in order,
    /// then `split` split shards. Refused: no hashed shard, a set without a name, regions or
    /// shards, a name twice, a region or name not of the locality value form, more shards
    /// than shard descriptors can name.
    pub fn new(
        hashed: u64,
        sets: impl IntoIterator<Item = (String, BTreeSet<String>, u64)>,
        split: u64,
    ) -> Result<Layout, String> {
        if hashed == 0 {
            return Err("at least one hashed shard is needed".into());
        }
        let mut next = hashed;
        let mut out: Vec<ResidencySet> = Vec::new();
        for (name, regions, count) in sets {
            check_locality_value("residency set", &name)?;
            if name.len() > MAX_SET_NAME_LEN {
                return Err(format!(
                    "residency set name {name:?} is longer than {MAX_SET_NAME_LEN}"
                ));
            }
            if out.iter().any(|set| set.name == name) {
                return Err(format!("residency set {name:?} is named twice"));
            }
            if regions.is_empty() {
                return Err(format!("residency set {name:?} names no region"));
            }
            for region in &regions {
                check_locality_value("region", region)?;
            }
            if count == 0 {
                return Err(format!("residency set {name:?} has no shard"));
            }
            let end = next
                .checked_add(count)
                .filter(|&end| end <= crate::shard_descriptors::MAX_SHARDS)
                .ok_or_else(|| format!("residency set {name:?}: too many shards"))?;
            out.push(ResidencySet {
                name,
                regions,
                shards: next..end,
            });
            next = end;
        }
        let end = next
            .checked_add(split)
            .filter(|&end| end <= crate::shard_descriptors::MAX_SHARDS)
            .ok_or_else(|| format!("{split} split shards are too many"))?;
        Ok(Layout {
            hashed,
            sets: out,
            split: next..end,
        })
    }

    /// Shards keys hash over.
    pub fn hashed_count(&self) -> u64 {
        self.hashed
    }

    /// Every shard: the hashed ones, every set's and the split shards.
    pub fn total(&self) -> u64 {
        self.split.end
    }

    /// The split shards: where rooms moved out of a hot or large shard go
    /// (`crate::room_move`).
    pub fn split_shards(&self) -> Range<ShardId> {
        self.split.clone()
    }

    /// Whether a room may live in a shard other than its home shard, so that routing must
    /// look for a pin: a residency set or a split shard is configured.
    pub fn has_pins(&self) -> bool {
        self.has_residency() || !self.split.is_empty()
    }

    pub fn sets(&self) -> &[ResidencySet] {
        &self.sets
    }

    /// Whether any residency set is configured.
    pub fn has_residency(&self) -> bool {
        !self.sets.is_empty()
    }

    /// The set called `name`.
    pub fn set(&self, name: &str) -> Option<&ResidencySet> {
        self.sets.iter().find(|set| set.name == name)
    }

    /// The set `shard` belongs to; `None` for a hashed shard.
    pub fn set_of_shard(&self, shard: ShardId) -> Option<&ResidencySet> {
        self.sets.iter().find(|set| set.shards.contains(&shard))
    }

    /// The shard a key hashes to (users, profiles, unpinned rooms, pins).
    pub fn home(&self, key: &[u8]) -> ShardId {
        mimid_cluster::shard_for(key, self.hashed)
    }

    /// The shard of `set` a room pinned to it lives in.
    pub fn residency_shard(&self, set: &ResidencySet, room: &RoomId) -> ShardId {
        let count = set.shards.end - set.shards.start;
        set.shards.start + mimid_cluster::shard_for(room.as_bytes(), count)
    }

    /// Per residency shard, the regions its replicas must stay in (the placement core's
    /// `View::residency`).
    pub fn regions_by_shard(&self) -> BTreeMap<ShardId, BTreeSet<String>> {
        self.sets
            .iter()
            .flat_map(|set| set.shards.clone().map(|shard| (shard, set.regions.clone())))
            .collect()
    }
}

/// Whether the members of a residency shard all have a locality in `set`'s regions
/// (`region_of` gives a node's region, `None` for a node without one): `Err` names the first
/// member that does not, or an empty membership (module docs, "When a pinned create is
/// taken").
pub fn placed_within<'a>(
    set: &ResidencySet,
    members: impl IntoIterator<Item = NodeId>,
    region_of: impl Fn(NodeId) -> Option<&'a str>,
) -> Result<(), String> {
    let mut any = false;
    for node in members {
        any = true;
        match region_of(node) {
            Some(region) if set.regions.contains(region) => {}
            Some(region) => {
                return Err(format!(
                    "node {node} (region {region}) still holds a replica; placement is moving \
                     the shard into {:?}",
                    set.regions
                ))
            }
            None => {
                return Err(format!(
                    "node {node} (no region) still holds a replica; placement is moving the \
                     shard into {:?}",
                    set.regions
                ))
            }
        }
    }
    if any {
        Ok(())
    } else {
        Err("its members are not known yet".into())
    }
}

/// The pins recorded in one hashed shard: pinned rooms whose home it is (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPins {
    by_room: BTreeMap<RoomId, ShardId>,
}

/// Why a pin is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinRefusal {
    /// The room exists unpinned in its home shard, or is pinned to another shard.
    RoomExists,
}

impl RoomPins {
    /// The shard `room` is pinned to.
    pub fn get(&self, room: &RoomId) -> Option<ShardId> {
        self.by_room.get(room).copied()
    }

    pub fn len(&self) -> usize {
        self.by_room.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_room.is_empty()
    }

    /// Pins `room` to `shard`; `created_here` says whether the room exists unpinned in this
    /// (its home) shard. The same pin again is `Ok(false)` (a retried create); a room created
    /// here or pinned elsewhere is refused.
    pub fn pin(
        &mut self,
        room: &RoomId,
        shard: ShardId,
        created_here: bool,
    ) -> Result<bool, PinRefusal> {
        if created_here {
            return Err(PinRefusal::RoomExists);
        }
        match self.by_room.get(room) {
            Some(&pinned) if pinned == shard => Ok(false),
            Some(_) => Err(PinRefusal::RoomExists),
            None => {
                self.by_room.insert(room.clone(), shard);
                Ok(true)
            }
        }
    }

    /// Points `room`'s pin at `shard`, whatever it named before: a room move's repin
    /// (`crate::room_move`), whose apply checked where the room was.
    pub(crate) fn repin(&mut self, room: &RoomId, shard: ShardId) {
        self.by_room.insert(room.clone(), shard);
    }

    /// The pins' section of a shard snapshot (empty without pins, so a shard without any has
    /// the bytes it had before pins existed).
    pub fn snapshot_prefix(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        snapshot_section::encode(&SNAPSHOT_MARKER, self)
    }

    /// Splits the rest of a shard snapshot (after the descriptors' prefix) into the pins and
    /// the shard's own bytes.
    pub fn split_snapshot(snapshot: &[u8]) -> Result<(RoomPins, &[u8]), String> {
        let (pins, rest) =
            snapshot_section::split::<RoomPins>(&SNAPSHOT_MARKER, snapshot, "room pins")?;
        Ok((pins.unwrap_or_default(), rest))
    }
}

/// Marks a shard snapshot that carries room pins: like the other sections' markers, ten
/// `0xff` bytes (not a postcard varint) and a name.
pub const SNAPSHOT_MARKER: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'p', b'i', b'n', b's', b'/', 1,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn layout() -> Layout {
        Layout::new(
            4,
            [
                ("eu".to_owned(), regions(&["eu"]), 2),
                ("apac".to_owned(), regions(&["ap", "au"]), 1),
            ],
            2,
        )
        .unwrap()
    }

    fn room(name: &str) -> RoomId {
        RoomId::parse(&format!("mimi://a.example/r/{name}")).unwrap()
    }

    #[test]
    fn residency_shards_follow_the_hashed_ones_in_configuration_order() {
        let layout = layout();
        assert_eq!(layout.hashed_count(), 4);
        assert_eq!(layout.set("eu").unwrap().shards, 4..6);
        assert_eq!(layout.set("apac").unwrap().shards, 6..7);
        assert_eq!(layout.set_of_shard(3), None);
        assert_eq!(layout.set_of_shard(5).unwrap().name, "eu");
        assert_eq!(layout.set_of_shard(6).unwrap().name, "apac");
        assert_eq!(layout.set_of_shard(7), None);
        assert_eq!(layout.split_shards(), 7..9);
        assert_eq!(layout.total(), 9);
        assert!(layout.has_pins());
        assert_eq!(
            layout.regions_by_shard(),
            BTreeMap::from([
                (4, regions(&["eu"])),
                (5, regions(&["eu"])),
                (6, regions(&["ap", "au"]))
            ])
        );
        assert_eq!(Layout::hashed(16).total(), 16);
        assert!(!Layout::hashed(16).has_pins());
        let split_only = Layout::new(4, [], 3).unwrap();
        assert_eq!(split_only.split_shards(), 4..7);
        assert!(split_only.has_pins() && !split_only.has_residency());
    }

    /// Keys hash over the hashed shards only, so adding residency sets moves no unpinned room,
    /// user or profile; pinned rooms spread over their set's shards.
    #[test]
    fn keys_hash_over_the_hashed_shards_only_and_pinned_rooms_over_their_set() {
        let with = layout();
        let without = Layout::hashed(4);
        let eu = with.set("eu").unwrap().clone();
        let mut used = BTreeSet::new();
        for i in 0..200 {
            let room = room(&format!("r{i}"));
            assert_eq!(with.home(room.as_bytes()), without.home(room.as_bytes()));
            assert!(with.home(room.as_bytes()) < 4);
            let shard = with.residency_shard(&eu, &room);
            assert!(eu.shards.contains(&shard), "{shard}");
            used.insert(shard);
        }
        assert_eq!(used, BTreeSet::from([4, 5]));
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        let set = |name: &str, r: &[&str], n: u64| (name.to_owned(), regions(r), n);
        let refused = |hashed, sets: Vec<(String, BTreeSet<String>, u64)>, what: &str| {
            let err = Layout::new(hashed, sets, 0).unwrap_err();
            assert!(err.contains(what), "{err} should mention {what}");
        };
        refused(0, vec![], "hashed shard");
        refused(
            4,
            vec![set("eu", &["eu"], 1), set("eu", &["us"], 1)],
            "twice",
        );
        refused(4, vec![set("eu", &[], 1)], "no region");
        refused(4, vec![set("eu", &["eu"], 0)], "no shard");
        refused(4, vec![set("e u", &["eu"], 1)], "residency set");
        refused(4, vec![set("eu", &["e/u"], 1)], "region");
        refused(4, vec![set("eu", &["eu"], u64::MAX)], "too many shards");
        let err = Layout::new(4, [], u64::MAX).unwrap_err();
        assert!(err.contains("split shards are too many"), "{err}");
    }

    #[test]
    fn a_create_waits_until_every_member_is_in_the_sets_regions() {
        let layout = layout();
        let apac = layout.set("apac").unwrap();
        let region = |node: NodeId| match node {
            1 => Some("ap"),
            2 => Some("au"),
            3 => Some("eu"),
            _ => None,
        };
        assert_eq!(placed_within(apac, [1, 2], region), Ok(()));
        let err = placed_within(apac, [1, 2, 3], region).unwrap_err();
        assert!(err.contains("node 3 (region eu)"), "{err}");
        let err = placed_within(apac, [1, 4], region).unwrap_err();
        assert!(err.contains("node 4 (no region)"), "{err}");
        assert!(placed_within(apac, [], region).is_err());
    }

    #[test]
    fn a_pin_is_taken_once_repeated_idempotently_and_refused_over_a_room() {
        let mut pins = RoomPins::default();
        let r = room("pinned");
        assert_eq!(pins.pin(&r, 5, false), Ok(true));
        assert_eq!(pins.pin(&r, 5, false), Ok(false));
        assert_eq!(pins.pin(&r, 4, false), Err(PinRefusal::RoomExists));
        assert_eq!(pins.get(&r), Some(5));
        let other = room("unpinned");
        assert_eq!(pins.pin(&other, 5, true), Err(PinRefusal::RoomExists));
        assert_eq!(pins.get(&other), None);
        assert_eq!(pins.len(), 1);
    }

    #[test]
    fn pins_ride_in_the_snapshot_and_a_shard_without_pins_keeps_its_bytes() {
        let (empty, rest) = RoomPins::split_snapshot(b"shard bytes").unwrap();
        assert!(empty.is_empty());
        assert_eq!(rest, b"shard bytes");
        assert!(RoomPins::default().snapshot_prefix().is_empty());

        let mut pins = RoomPins::default();
        pins.pin(&room("a"), 4, false).unwrap();
        pins.pin(&room("b"), 6, false).unwrap();
        let mut bytes = pins.snapshot_prefix();
        bytes.extend_from_slice(b"shard bytes");
        let (back, rest) = RoomPins::split_snapshot(&bytes).unwrap();
        assert_eq!(back, pins);
        assert_eq!(rest, b"shard bytes");

        let mut cut = SNAPSHOT_MARKER.to_vec();
        cut.push(0xff);
        assert!(RoomPins::split_snapshot(&cut).is_err());
    }
}
