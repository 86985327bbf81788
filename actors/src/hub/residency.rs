//! The hub's side of data residency (`crate::residency` module docs): finding the shard a
//! room lives in, creating a pinned room, and a room's placement status. Rooms moved to a
//! split shard (`crate::room_move`) are found the same way, by their home shard's pin, and
//! a router whose cached pin went stale follows the move ([`Hub::follow_move`]).

use mimid_cluster::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

use super::remote::RemoteRead;
use super::{unexpected, Hub, HubError};
use crate::cluster_meta::METADATA_SHARD;
use crate::command::Command;
use crate::ids::RoomId;
use crate::residency::placed_within;
use crate::shard::{ApplyOutput, CreateRoomRejection, MAX_MOVE_HOPS};

/// Where a room lives and under which constraint (`mimid room status`,
/// `POST /admin/rooms/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatus {
    pub room: String,
    /// Whether the room exists (hosted by this provider).
    pub exists: bool,
    /// The shard it lives in.
    pub shard: ShardId,
    /// The residency set it is pinned to; `None` for a room in a hashed shard.
    pub residency: Option<String>,
    /// The regions its replicas must stay in (empty without a residency).
    pub regions: Vec<String>,
    /// The shard's leader, voters and learners as shard 0's descriptor records them, each
    /// with its region (`None`: the node has none).
    pub leader: Option<NodeId>,
    pub voters: Vec<(NodeId, Option<String>)>,
    pub learners: Vec<(NodeId, Option<String>)>,
}

impl Hub {
    /// The shard `room` lives in: its home shard, or the residency or split shard its home
    /// shard's pin names. Without residency sets or split shards this is the hash. Otherwise
    /// what this node knows without asking (`Shards::room_shard`: the local home replica's
    /// pin, the pin cache, a local replica hosting it) when that is not the home shard; else
    /// a node holding the home shard reads the pin locally (after a read barrier when it
    /// finds neither the room nor a pin: its replica may lag the create); a node that does
    /// not asks a holder ([`RemoteRead::RoomShard`]) and caches a pin it learns. A room that
    /// moved since the pin was cached is found in the old shard's stead by the callers
    /// ([`Self::follow_move`]), and its commands follow it (`Proposer::propose_following`).
    pub async fn room_shard(&self, room: &RoomId) -> Result<ShardId, HubError> {
        let home = self.shards.shard_of(room.as_bytes());
        let known = self.shards.room_shard(room);
        if known != home || !self.shards.layout().has_pins() {
            return Ok(known);
        }
        if !self.holds(home) {
            return self.remote_room_shard(room, home).await;
        }
        if self.shards.get(home).read().room(room).is_some() {
            return Ok(home);
        }
        self.proposer.read_barrier(home).await?;
        Ok(self.shards.room_shard(room))
    }

    /// Whether a room may live in `shard` though its id hashes to another: a residency
    /// set's shard or a split shard.
    pub(super) fn may_host_pinned(&self, shard: ShardId) -> bool {
        let layout = self.shards.layout();
        layout.set_of_shard(shard).is_some() || layout.split_shards().contains(&shard)
    }

    /// The shard the holder of `room`'s home shard `home` (not held here) has it in; a pin
    /// learned is cached.
    async fn remote_room_shard(&self, room: &RoomId, home: ShardId) -> Result<ShardId, HubError> {
        let read = RemoteRead::RoomShard { room: room.clone() };
        let shard: ShardId = self.remote(home, read).await?;
        if shard != home {
            if !self.may_host_pinned(shard) {
                return Err(HubError::Unavailable(format!(
                    "the holder of shard {home} pins {room} to shard {shard}, which is neither \
                     a residency nor a split shard here (are the nodes configured alike?)"
                )));
            }
            self.shards.remember_pin(room, shard);
        }
        Ok(shard)
    }

    /// Where `room` is now, when `missed` (the shard it resolved to) does not host it: a
    /// room moved to a split shard since this node cached its pin, or moved out of its home
    /// shard since it was resolved (`crate::room_move`). Follows its tombstone in `missed`
    /// when this node holds that shard, else its home shard's pin (read after a read barrier,
    /// or from a holder of the home shard: the pin moves before the room leaves its source,
    /// so it is never behind a tombstone), at most [`MAX_MOVE_HOPS`] times; caches the pin
    /// and answers the shard that hosts the room, or `None` when none does. Without
    /// residency sets or split shards, `None` at once.
    pub(super) async fn follow_move(
        &self,
        room: &RoomId,
        missed: ShardId,
    ) -> Result<Option<ShardId>, HubError> {
        if !self.shards.layout().has_pins() {
            return Ok(None);
        }
        let home = self.shards.shard_of(room.as_bytes());
        let mut missed = missed;
        for _ in 0..MAX_MOVE_HOPS {
            let Some(shard) = self
                .moved_from(room, missed, home)
                .await?
                .filter(|&shard| shard != missed)
            else {
                return Ok(None);
            };
            if shard != home {
                self.shards.remember_pin(room, shard);
            }
            if self.hosts_in(shard, room).await? {
                return Ok(Some(shard));
            }
            missed = shard;
        }
        Err(HubError::Unavailable(format!(
            "room {room} keeps moving (followed {MAX_MOVE_HOPS} moves); try again"
        )))
    }

    /// Where `room` went from `shard`, which does not host it (after a read barrier): its
    /// tombstone there when this node holds `shard`, else where its home shard `home` has it
    /// (its pin, or `home` itself).
    async fn moved_from(
        &self,
        room: &RoomId,
        shard: ShardId,
        home: ShardId,
    ) -> Result<Option<ShardId>, HubError> {
        if self.holds(shard) {
            if let Some(to) = self.shards.get(shard).read().moved_to(room) {
                return Ok(Some(to));
            }
        }
        if !self.holds(home) {
            return self.remote_room_shard(room, home).await.map(Some);
        }
        if shard != home {
            self.proposer.read_barrier(home).await?;
        }
        Ok(Some(self.shards.get(home).read().pin(room).unwrap_or(home)))
    }

    /// Creates `room` pinned to the residency set `set` (`crate::residency` module docs):
    /// pins it in its home shard, then creates it in its set's shard. Refused without a
    /// change: an unknown set (`Rejected`), a shard with members outside the set's regions
    /// (`Unavailable`: placement is still moving it), a room that exists unpinned or pinned
    /// to another set (`AlreadyExists`). A pin whose create then fails stays, and a retry
    /// of the same create (same set) completes it.
    pub(super) async fn create_pinned_room(
        &self,
        set: &str,
        command: Command,
    ) -> Result<Result<(), CreateRoomRejection>, HubError> {
        let Command::CreateRoom { room, .. } = &command else {
            return Err(HubError::Rejected("not a room creation".into()));
        };
        let layout = self.shards.layout();
        let set = layout.set(set).ok_or_else(|| {
            let known: Vec<&str> = layout.sets().iter().map(|set| set.name.as_str()).collect();
            HubError::Rejected(format!(
                "unknown residency set {set:?}; this provider has {known:?}"
            ))
        })?;
        let shard = layout.residency_shard(set, room);
        {
            let meta = self.shards.get(METADATA_SHARD).read();
            let members: Vec<NodeId> = match meta.shard_descriptors().get(shard) {
                Some(descriptor) => descriptor.members().collect(),
                // A node alone holds every shard and records no descriptor.
                None if self.proposer.router.is_none() => vec![self.proposer.cluster.node_id()],
                None => Vec::new(),
            };
            let region_of = |node: NodeId| {
                meta.cluster_meta()
                    .node(node)
                    .and_then(|record| record.locality.region())
            };
            placed_within(set, members, region_of).map_err(|reason| {
                HubError::Unavailable(format!(
                    "residency set {:?} (shard {shard}) cannot take rooms yet: {reason}",
                    set.name
                ))
            })?;
        }
        let home = layout.home(room.as_bytes());
        let pin = Command::PinRoom {
            room: room.clone(),
            shard,
        };
        match self.proposer.propose_to(home, pin).await? {
            ApplyOutput::RoomPinned(Ok(())) => {}
            ApplyOutput::RoomPinned(Err(rejection)) => return Ok(Err(rejection)),
            other => return Err(unexpected(other)),
        }
        self.shards.remember_pin(room, shard);
        match self.proposer.propose_to(shard, command).await? {
            ApplyOutput::RoomCreated(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Where `room` lives (the shard and its members as shard 0 records them) and the
    /// residency it is pinned to. Shard 0 is read after a read barrier: a replica of a quiet
    /// shard 0 may not have applied the latest descriptors yet, and an operator asking two
    /// nodes should not get an older answer from one.
    pub async fn room_status(&self, room: &RoomId) -> Result<RoomStatus, HubError> {
        let mut shard = self.room_shard(room).await?;
        let mut exists = self.hosts_in(shard, room).await?;
        if !exists {
            if let Some(moved) = self.follow_move(room, shard).await? {
                (shard, exists) = (moved, true);
            }
        }
        self.proposer.read_barrier(METADATA_SHARD).await?;
        let layout = self.shards.layout();
        let set = layout.set_of_shard(shard);
        let meta = self.shards.get(METADATA_SHARD).read();
        let region = |node: NodeId| {
            let region = meta
                .cluster_meta()
                .node(node)
                .and_then(|record| record.locality.region());
            (node, region.map(str::to_owned))
        };
        let descriptor = meta.shard_descriptors().get(shard);
        Ok(RoomStatus {
            room: room.to_string(),
            exists,
            shard,
            residency: set.map(|set| set.name.clone()),
            regions: set
                .map(|set| set.regions.iter().cloned().collect())
                .unwrap_or_default(),
            leader: descriptor.map(|descriptor| descriptor.leader),
            voters: descriptor
                .map(|descriptor| descriptor.voters.iter().map(|&node| region(node)).collect())
                .unwrap_or_default(),
            learners: descriptor
                .map(|descriptor| {
                    descriptor
                        .learners
                        .iter()
                        .map(|&node| region(node))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}
