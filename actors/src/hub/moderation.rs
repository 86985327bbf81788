//! The hub's side of abuse handling (MIMI.md §5.3.1, §5.8, §13): the operator's blocklist,
//! abuse reports of hosted rooms, and the frank records delivery reads. See the
//! `crate::moderation` and `crate::franking` module docs for what is replicated where.

use mimid_cluster::ShardId;

use super::{unexpected, Hub, HubError};
use crate::command::{Command, ReceivedItem};
use crate::franking::{FrankRecord, ReceivedFrank};
use crate::ids::RoomId;
use crate::moderation::{
    AbuseReport, BlockTarget, Blocklist, BlocklistFull, ReportsFull, StoredReport,
    BLOCKLIST_SHARD_KEY,
};
use crate::shard::ApplyOutput;

impl Hub {
    /// The shard whose copy of the blocklist the edges and the operator read.
    fn blocklist_shard(&self) -> ShardId {
        self.shards.shard_of(BLOCKLIST_SHARD_KEY)
    }

    /// The shard whose copy of the blocklist this node reads: the authoritative one when it
    /// holds it, else shard 0's, which every node holds (every shard keeps a copy, set right
    /// after the authoritative one; a `set_block` that failed half way is repeated by the
    /// operator).
    fn readable_blocklist_shard(&self) -> ShardId {
        let home = self.blocklist_shard();
        if self.holds(home) {
            home
        } else {
            crate::cluster_meta::METADATA_SHARD
        }
    }

    /// Blocks (`blocked`) or unblocks `target` (MIMI.md §13): proposed to every shard in
    /// turn, the shard of [`BLOCKLIST_SHARD_KEY`] first, and answered once every shard applied
    /// it. Returns whether the authoritative copy changed. A shard that cannot take it (no
    /// leader) is an `Err` naming it; the shards before it changed, and repeating the
    /// operation is harmless.
    pub async fn set_block(
        &self,
        target: BlockTarget,
        blocked: bool,
    ) -> Result<Result<bool, BlocklistFull>, HubError> {
        let home = self.blocklist_shard();
        let order = std::iter::once(home).chain((0..self.shards.count()).filter(|&s| s != home));
        let mut changed = None;
        for shard in order {
            let command = Command::SetBlock {
                target: target.clone(),
                blocked,
            };
            match self.proposer.propose_to(shard, command).await? {
                ApplyOutput::BlockSet(Ok(shard_changed)) => {
                    changed.get_or_insert(shard_changed);
                }
                // Every copy holds the same entries, so a full list is full everywhere.
                ApplyOutput::BlockSet(Err(full)) => return Ok(Err(full)),
                other => return Err(unexpected(other)),
            }
        }
        Ok(Ok(changed.unwrap_or(false)))
    }

    /// The operator's blocklist (local read of the authoritative copy).
    pub fn blocklist(&self) -> Blocklist {
        self.shards
            .get(self.readable_blocklist_shard())
            .read()
            .blocklist()
            .clone()
    }

    /// Why provider `domain`'s requests are refused, if it is blocked (local read).
    pub fn provider_refusal(&self, domain: &str) -> Option<String> {
        let data = self.shards.get(self.readable_blocklist_shard()).read();
        data.blocklist()
            .blocks_provider(domain)
            .then(|| format!("provider blocked: {domain}"))
    }

    /// Why `user` may not act here, if it (or its provider) is blocked (local read).
    pub fn user_refusal(&self, user: &crate::ids::UserId) -> Option<String> {
        self.shards
            .get(self.readable_blocklist_shard())
            .read()
            .blocklist()
            .refusal_of_user(user)
    }

    /// Stores an abuse report for `room`, hosted here, whose franks the caller validated
    /// (protocol-06 §5.9). `Ok(Err(ReportsFull))` when the room holds the maximum.
    pub async fn record_abuse_report(
        &self,
        room: RoomId,
        report: AbuseReport,
    ) -> Result<Result<usize, ReportsFull>, HubError> {
        self.check_room(&room).await?;
        match self
            .proposer
            .propose(Command::RecordAbuseReport { room, report })
            .await?
        {
            ApplyOutput::AbuseReported(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Every abuse report of the rooms this provider hosts, by room: read locally from the
    /// shards this node holds and from a holder for each other shard (`hub::remote`). A shard
    /// no node could answer for is listed with the reason instead of failing the whole
    /// listing.
    pub async fn abuse_reports(&self) -> (Vec<(RoomId, StoredReport)>, Vec<(ShardId, String)>) {
        let mut reports = Vec::new();
        let mut missing = Vec::new();
        for shard in 0..self.shards.count() {
            match self.abuse_reports_in(shard).await {
                Ok(found) => reports.extend(found),
                Err(e) => missing.push((shard, e.to_string())),
            }
        }
        (reports, missing)
    }

    /// The abuse reports `shard` holds, read where it is held.
    pub(super) async fn abuse_reports_in(
        &self,
        shard: ShardId,
    ) -> Result<Vec<(RoomId, StoredReport)>, HubError> {
        let read = || super::remote::RemoteRead::AbuseReports;
        self.read_shard(shard, read, |data| {
            data.abuse_reports()
                .iter()
                .map(|(room, report)| (room.clone(), report.clone()))
                .collect()
        })
        .await
    }

    /// Follower side of protocol-06 §5.4 with the Franks the notify carried (see
    /// [`Hub::receive_fanout`]). Returns how many items were new.
    pub async fn receive_fanout_franked(
        &self,
        room: RoomId,
        items: Vec<ReceivedItem>,
        body_hash: [u8; 32],
        franks: Vec<ReceivedFrank>,
    ) -> Result<usize, HubError> {
        match self
            .proposer
            .propose(Command::FanoutReceivedFranked {
                room,
                items,
                body_hash,
                franks,
            })
            .await?
        {
            ApplyOutput::FanoutReceived { appended } => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    /// What the replicas keep about the franked item at `seq` of `room` (a remote read when
    /// this node does not hold the room's shard), following the room when it moved away from
    /// the shard this node resolved it to (`Hub::follow_move`).
    pub async fn frank_record(
        &self,
        room: &RoomId,
        seq: u64,
    ) -> Result<Option<FrankRecord>, HubError> {
        let shard = self.room_shard(room).await?;
        match self.frank_record_in(shard, room, seq).await? {
            // The room may have moved on since this node resolved it: its records moved too.
            None if self.shards.layout().has_pins() => match self.follow_move(room, shard).await? {
                Some(moved) => self.frank_record_in(moved, room, seq).await,
                None => Ok(None),
            },
            found => Ok(found),
        }
    }

    /// [`Self::frank_record`] of `room` in `shard`.
    pub(super) async fn frank_record_in(
        &self,
        shard: ShardId,
        room: &RoomId,
        seq: u64,
    ) -> Result<Option<FrankRecord>, HubError> {
        let read = || super::remote::RemoteRead::FrankRecord {
            room: room.clone(),
            seq,
        };
        self.read_shard(shard, read, |data| data.franks().get(room, seq).cloned())
            .await
    }
}
