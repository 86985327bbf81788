//! Reads of shards this node holds no replica of (issue 4 build item 1, "replicated on R
//! nodes"; ARCHITECTURE.md "Cluster", "Remote reads"; DESIGN.md §3).
//!
//! With `cluster.replicas = "r"` a node holds only some shards, yet serves clients whose
//! users and rooms live anywhere. Every read the hub does for its clients goes through one
//! place that asks "does this node hold the shard?" ([`Proposer::holds`]: a voter or learner of
//! its applied configuration). If it does, the read is local as before (with the read barrier
//! for negative reads). If it does not, the read ([`RemoteRead`], postcard) goes over the
//! node-to-node transport ([`ProposalRouter::read`]) to a node that does, chosen from shard
//! 0's descriptor of the shard ([`crate::shard_descriptors`]): the leader first, then the
//! other members. That node serves it with [`Hub::serve_read`] exactly as it would for its own
//! client (a negative read passes a read barrier there), or answers
//! [`HubError::Unavailable`] when it does not hold the shard (any more), and the next member
//! is asked. The answer is the same value a local read returns.
//!
//! Push streams get the same treatment per shard: [`Hub::pull`] answers, on a node holding
//! the shard, what a client's rooms of that shard hold after the cursors the asking node
//! gives (a long poll, bounded in items and time); the asking node relays that into the
//! client's stream (`mimid-node`'s `cluster_net::relay`).
//!
//! A stale replica (this node was removed from the shard and its data stopped moving) is
//! never read: removal makes [`Proposer::holds`] false.

use std::collections::BTreeMap;
use std::time::Duration;

use mimid_cluster::{NodeId, ShardId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{Hub, HubError, StreamFeed};
use crate::actor::Delivery;
use crate::cluster_meta::METADATA_SHARD;
use crate::command::user_shard_key;
use crate::directory::profile::{SearchTerm, PROFILES_SHARD_KEY};
use crate::ids::{ClientId, RoomId, UserId};
use crate::room::log::LogItem;
use crate::shard::ShardData;

/// Most items one [`Hub::pull`] answers with.
pub const MAX_PULL_ITEMS: usize = 256;
/// Longest a [`Hub::pull`] waits for something to deliver.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(10);
/// Members of a shard a read is tried on before it fails.
const READ_ATTEMPTS: usize = 3;

/// A read of one shard that a node without a replica of it asks another node to do
/// (module docs). Appended variants only: nodes of two releases may talk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteRead {
    /// [`Hub::authenticate`] → `bool`.
    Authenticate {
        client: ClientId,
        token_hash: [u8; 32],
    },
    /// Whether the room is hosted (a barrier before "no") → `bool`.
    HostsRoom { room: RoomId },
    /// Welcome routing within the shard → `Vec<Option<ClientId>>`, one per reference.
    WelcomeRefs { refs: Vec<Vec<u8>> },
    /// → `Option<Profile>`.
    Profile { user: UserId },
    /// → `Preferences`.
    Preferences { user: UserId },
    /// → `(Preferences, ConsentListing)`.
    Consents { user: UserId },
    /// The handle index's answer, before discoverability → `QueryOutcome`.
    FindUser {
        terms: Vec<SearchTerm>,
        own_domain: String,
    },
    /// → `bool`.
    Discoverable {
        user: UserId,
        requester: Option<UserId>,
    },
    /// What a groupInfo answer needs ([`GroupInfoParts`]) → `Option<Result<GroupInfoParts,
    /// String>>`: `None` for an unknown room, the refusal of an external join otherwise.
    GroupInfoParts { room: RoomId, joiner: ClientId },
    /// The room's latest GroupInfo (`MLSMessage` bytes) → `Option<Vec<u8>>`.
    RoomGroupInfo { room: RoomId },
    /// The last hub seq a mirrored room appended → `Option<u64>` (`None`: not mirrored).
    MirrorSeq { room: RoomId },
    /// → `Option<FrankRecord>`.
    FrankRecord { room: RoomId, seq: u64 },
    /// The shard's state machine at its applied index, for a backup taken on a node without a
    /// replica → `(applied_index, applied_term, data)`.
    SnapshotPart,
    /// The shard a room lives in, asked of a holder of its home shard (`Hub::room_shard`) →
    /// `ShardId`.
    RoomShard { room: RoomId },
    /// The abuse reports of the shard's hosted rooms → `Vec<(RoomId, StoredReport)>`.
    AbuseReports,
    /// How many rooms the shard hosts and their items (`Hub::shard_load`) →
    /// `super::split::ShardLoad`: a split picks the split shard with the fewest rooms.
    ShardLoad,
    /// The shard's hosted rooms that may move, each with its last seq (`Hub::split_shard`
    /// picks which) → `Vec<(RoomId, u64)>`.
    MovableRooms,
}

/// What a groupInfo answer (protocol-06 §5.5) takes from a hosted room: its latest GroupInfo
/// (`MLSMessage`), its ratchet tree (TLS-serialised) and its pending proposals with their
/// accepted times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfoParts {
    pub group_info: Option<Vec<u8>>,
    pub ratchet_tree: Vec<u8>,
    pub pending_proposals: Vec<(u64, Vec<u8>)>,
}

/// What [`Hub::pull`] found for a client in one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// Items to deliver, in log order per room (rooms in id order).
    pub items: Vec<PulledItem>,
    /// Per room of the client in the shard, the cursor to pull after next time.
    pub cursors: Vec<(RoomId, u64)>,
}

/// One item of [`Pulled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledItem {
    pub room: RoomId,
    pub item: LogItem,
    /// The Frank to deliver with it, computed by the node that holds the room (filled in by
    /// `mimid-node`'s RPC handler; `None` from [`Hub::pull`] itself).
    pub frank: Option<Vec<u8>>,
}

/// A relay's request of [`Hub::pull`] on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub client: ClientId,
    pub cursors: Vec<(RoomId, u64)>,
    pub wait_ms: u64,
}

/// How long a relay's pull waits on the node it asks (short enough that a relay notices a
/// closed stream or a shard that came here soon).
const RELAY_WAIT: Duration = Duration::from_secs(2);
/// How often a stream's relay checks that its stream is still open (a change of the shards
/// this node holds wakes it at once).
const RELAY_CHECK: Duration = Duration::from_secs(2);
/// How long a relay of a shard waits before asking again when it knows no holder.
const RELAY_RETRY: Duration = Duration::from_millis(250);
/// Longest pause between a relay's failed pulls.
const RELAY_MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Hub {
    /// Whether this node holds a replica of `shard` (module docs).
    pub fn holds(&self, shard: ShardId) -> bool {
        self.proposer.holds(shard)
    }

    /// The nodes to ask for reads of `shard`, best first: the leader shard 0's descriptor
    /// names, then its other voters and learners; never this node.
    pub fn read_targets(&self, shard: ShardId) -> Vec<NodeId> {
        let me = self.proposer.cluster.node_id();
        let data = self.shards.get(METADATA_SHARD).read();
        let Some(descriptor) = data.shard_descriptors().get(shard) else {
            return Vec::new();
        };
        let mut targets = vec![descriptor.leader];
        targets.extend(
            descriptor
                .members()
                .filter(|&node| node != descriptor.leader),
        );
        targets.retain(|&node| node != me);
        targets
    }

    /// Reads `shard` with `local` on this node's replica when it holds one, else asks a
    /// holder to do `read` (module docs): a read that needs no barrier.
    pub(crate) async fn read_shard<T: DeserializeOwned>(
        &self,
        shard: ShardId,
        read: impl FnOnce() -> RemoteRead,
        local: impl FnOnce(&ShardData) -> T,
    ) -> Result<T, HubError> {
        if !self.holds(shard) {
            return self.remote(shard, read()).await;
        }
        Ok(local(&self.shards.get(shard).read()))
    }

    /// Asks a node holding `shard` to do `read` and decodes its answer as `T` (module docs).
    pub(crate) async fn remote<T: DeserializeOwned>(
        &self,
        shard: ShardId,
        read: RemoteRead,
    ) -> Result<T, HubError> {
        let Some(router) = &self.proposer.router else {
            return Err(HubError::Unavailable(format!(
                "shard {shard} is not held by this node, which has no node-to-node transport"
            )));
        };
        let targets = self.read_targets(shard);
        if targets.is_empty() {
            return Err(HubError::Unavailable(format!(
                "shard {shard} is not held by this node and no holder is known yet"
            )));
        }
        let bytes = postcard::to_stdvec(&read).expect("serialising a read into memory cannot fail");
        let mut last = None;
        for node in targets.into_iter().take(READ_ATTEMPTS) {
            match router.read(node, shard, bytes.clone()).await {
                Ok(answer) => {
                    return postcard::from_bytes(&answer).map_err(|e| {
                        HubError::Unavailable(format!(
                            "node {node} answered a read of shard {shard} with something this \
                             node cannot read: {e}"
                        ))
                    });
                }
                Err(e @ HubError::Unavailable(_)) | Err(e @ HubError::Busy(_)) => {
                    tracing::debug!(shard, node, error = %e, "remote read failed; next member");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HubError::Unavailable(format!("shard {shard}: no holder"))))
    }

    /// Serves `read` (a postcard [`RemoteRead`]) of `shard` for another node that holds no
    /// replica of it (module docs): the answer is the postcard of what the read returns.
    /// `Unavailable` when this node does not hold the shard either (the asker tries another
    /// member); `Rejected` for a read that does not decode or names another shard's key.
    pub async fn serve_read(&self, shard: ShardId, read: &[u8]) -> Result<Vec<u8>, HubError> {
        if shard >= self.shards.count() {
            return Err(HubError::Rejected(format!(
                "read of shard {shard}; there are {}",
                self.shards.count()
            )));
        }
        if !self.holds(shard) {
            return Err(HubError::Unavailable(format!(
                "node {} holds no replica of shard {shard}",
                self.proposer.cluster.node_id()
            )));
        }
        let read: RemoteRead = postcard::from_bytes(read)
            .map_err(|e| HubError::Rejected(format!("a read that does not decode: {e}")))?;
        let home = |key: &[u8]| self.shards.shard_of(key);
        let belongs = match &read {
            RemoteRead::Authenticate { client, .. } => {
                home(&user_shard_key(&client.user())) == shard
            }
            // A pinned room lives in a residency shard (`crate::residency`), a moved one in a
            // split shard (`crate::room_move`).
            RemoteRead::HostsRoom { room }
            | RemoteRead::GroupInfoParts { room, .. }
            | RemoteRead::RoomGroupInfo { room }
            | RemoteRead::FrankRecord { room, .. } => {
                home(room.as_bytes()) == shard || self.may_host_pinned(shard)
            }
            RemoteRead::MirrorSeq { room } | RemoteRead::RoomShard { room } => {
                home(room.as_bytes()) == shard
            }
            RemoteRead::Preferences { user }
            | RemoteRead::Consents { user }
            | RemoteRead::Discoverable { user, .. } => home(&user_shard_key(user)) == shard,
            RemoteRead::Profile { .. } | RemoteRead::FindUser { .. } => {
                home(PROFILES_SHARD_KEY) == shard
            }
            RemoteRead::WelcomeRefs { .. }
            | RemoteRead::SnapshotPart
            | RemoteRead::AbuseReports
            | RemoteRead::ShardLoad
            | RemoteRead::MovableRooms => true,
        };
        if !belongs {
            return Err(HubError::Rejected(format!(
                "the read {read:?} does not belong to shard {shard}"
            )));
        }
        let encode = |value: &dyn erased::Encode| value.encode();
        Ok(match read {
            RemoteRead::Authenticate { client, token_hash } => {
                encode(&self.authenticate(&client, &token_hash).await?)
            }
            // Room reads are answered for the shard asked, never routed on from here.
            RemoteRead::HostsRoom { room } => encode(&self.hosts_in(shard, &room).await?),
            RemoteRead::WelcomeRefs { refs } => encode(&self.welcome_refs_in(shard, &refs).await?),
            RemoteRead::Profile { user } => encode(&self.profile(&user).await?),
            RemoteRead::Preferences { user } => encode(&self.preferences(&user).await?),
            RemoteRead::Consents { user } => encode(&self.consents(&user).await?),
            RemoteRead::FindUser { terms, own_domain } => {
                encode(&self.find_user(&terms, &own_domain).await?)
            }
            RemoteRead::Discoverable { user, requester } => {
                encode(&self.discoverable(&user, requester.as_ref()).await?)
            }
            RemoteRead::GroupInfoParts { room, joiner } => {
                encode(&self.group_info_parts_in(shard, &room, &joiner).await?)
            }
            RemoteRead::RoomGroupInfo { room } => {
                encode(&self.room_group_info_in(shard, &room).await?)
            }
            RemoteRead::MirrorSeq { room } => encode(&self.mirror_seq(&room).await?),
            RemoteRead::FrankRecord { room, seq } => {
                encode(&self.frank_record_in(shard, &room, seq).await?)
            }
            RemoteRead::RoomShard { room } => encode(&self.room_shard(&room).await?),
            RemoteRead::AbuseReports => encode(&self.abuse_reports_in(shard).await?),
            RemoteRead::SnapshotPart => encode(&self.snapshot_part(shard).await?),
            RemoteRead::ShardLoad => encode(&self.read_shard_load(shard).await?),
            RemoteRead::MovableRooms => encode(&self.movable_rooms(shard).await?),
        })
    }

    /// This node's replica of `shard` serialised at its applied index, `(applied_index,
    /// applied_term, data)`: from a node that holds it when this one does not (for a backup,
    /// which needs every shard). Serialises every local shard to get the one part
    /// (`ClusterHandle::snapshot_all`), so it is an operator's tool, not a data path.
    pub async fn snapshot_part(&self, shard: ShardId) -> Result<(u64, u64, Vec<u8>), HubError> {
        if !self.holds(shard) {
            return self.remote(shard, RemoteRead::SnapshotPart).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.proposer
            .cluster
            .snapshot_all(Box::new(move |result| {
                let _ = tx.send(result);
            }))
            .map_err(|e| HubError::Unavailable(format!("shard {shard}'s snapshot: {e}")))?;
        let parts = rx
            .await
            .map_err(|_| HubError::Unavailable("replication stopped".into()))?
            .map_err(|e| HubError::Unavailable(format!("shard {shard}'s snapshot: {e}")))?;
        match parts.into_iter().find(|part| part.shard == shard) {
            Some(part) if part.applied_index > 0 => {
                Ok((part.applied_index, part.applied_term, part.data))
            }
            _ => Err(HubError::Unavailable(format!(
                "shard {shard} has nothing applied on this node"
            ))),
        }
    }

    /// What `client`'s rooms in `shard`, held here, hold for it after `cursors` (rooms absent
    /// start after the client's acknowledged cursor), at most [`MAX_PULL_ITEMS`] items; waits
    /// up to `wait` (at most [`MAX_PULL_WAIT`]) for something new when there is nothing yet
    /// (module docs). Items are those the client may see, as its push stream would carry them.
    /// `Unavailable` when this node does not hold the shard.
    pub async fn pull(
        &self,
        shard: ShardId,
        client: &ClientId,
        cursors: &[(RoomId, u64)],
        wait: Duration,
    ) -> Result<Pulled, HubError> {
        if shard >= self.shards.count() {
            return Err(HubError::Rejected(format!(
                "pull of shard {shard}; there are {}",
                self.shards.count()
            )));
        }
        let deadline = tokio::time::Instant::now() + wait.min(MAX_PULL_WAIT);
        let given: BTreeMap<&RoomId, u64> =
            cursors.iter().map(|(room, seq)| (room, *seq)).collect();
        loop {
            // Registered before the read, so an apply between the read and the wait wakes it.
            let changed = self.shards.changed(shard).notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.holds(shard) {
                return Err(HubError::Unavailable(format!(
                    "node {} holds no replica of shard {shard}",
                    self.proposer.cluster.node_id()
                )));
            }
            let pulled = self.collect_pull(shard, client, &given);
            if !pulled.items.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(pulled);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(self.collect_pull(shard, client, &given));
            }
        }
    }

    /// Asks node `node` for [`Hub::pull`] of `shard` (module docs).
    pub async fn pull_from(
        &self,
        node: NodeId,
        shard: ShardId,
        request: &PullRequest,
    ) -> Result<Pulled, HubError> {
        let Some(router) = &self.proposer.router else {
            return Err(HubError::Unavailable("no node-to-node transport".into()));
        };
        let bytes =
            postcard::to_stdvec(request).expect("serialising a pull into memory cannot fail");
        let answer = router.pull(node, shard, bytes).await?;
        postcard::from_bytes(&answer).map_err(|e| {
            HubError::Unavailable(format!(
                "node {node} answered a pull of shard {shard} with something this node cannot \
                 read: {e}"
            ))
        })
    }

    /// Feeds `feed`'s stream with the client's rooms of every shard this node does not hold,
    /// pulled from nodes that do (module docs), until the stream is gone. One relay per such
    /// shard, started when this node stops holding it and ended when it holds it again (the
    /// local room actors then deliver; the stream drops what it already had by room and
    /// seq).
    pub async fn relay(self: Arc<Self>, feed: StreamFeed) {
        if self.proposer.router.is_none() {
            // A node alone holds every shard.
            return;
        }
        let mut running: BTreeMap<ShardId, tokio::task::JoinHandle<()>> = BTreeMap::new();
        let mut held = self.held.clone();
        while !feed.is_closed() {
            running.retain(|_, task| !task.is_finished());
            let holding = held.borrow_and_update().clone();
            for (shard, holds) in (0..).zip(holding) {
                if !running.contains_key(&shard) && !holds {
                    let relay = self.clone().relay_shard(shard, feed.clone());
                    running.insert(shard, tokio::spawn(relay));
                }
            }
            // A shard this node stopped or started holding, or a look at the stream.
            if let Ok(Err(_)) = tokio::time::timeout(RELAY_CHECK, held.changed()).await {
                // The hub is stopping: no more changes come.
                tokio::time::sleep(RELAY_CHECK).await;
            }
        }
        for task in running.into_values() {
            task.abort();
        }
    }

    /// One shard's relay into `feed` (see [`Hub::relay`]).
    async fn relay_shard(self: Arc<Self>, shard: ShardId, feed: StreamFeed) {
        let mut cursors: BTreeMap<RoomId, u64> = BTreeMap::new();
        let mut failures: usize = 0;
        let wait_ms = u64::try_from(RELAY_WAIT.as_millis()).unwrap_or(u64::MAX);
        loop {
            if feed.is_closed() || self.holds(shard) {
                return;
            }
            let targets = self.read_targets(shard);
            let Some(&node) = targets.get(failures % targets.len().max(1)) else {
                tokio::time::sleep(RELAY_RETRY).await;
                continue;
            };
            let request = PullRequest {
                client: feed.client().clone(),
                cursors: cursors
                    .iter()
                    .map(|(room, seq)| (room.clone(), *seq))
                    .collect(),
                wait_ms,
            };
            match self.pull_from(node, shard, &request).await {
                Ok(pulled) => {
                    failures = 0;
                    for PulledItem { room, item, frank } in pulled.items {
                        if !feed.push(Delivery { room, item, frank }) {
                            return;
                        }
                    }
                    cursors.extend(pulled.cursors);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(shard, node, error = %e, "relay pull failed");
                    let pause = RELAY_RETRY.saturating_mul(failures.min(4) as u32);
                    tokio::time::sleep(pause.min(RELAY_MAX_BACKOFF)).await;
                }
            }
        }
    }

    fn collect_pull(
        &self,
        shard: ShardId,
        client: &ClientId,
        given: &BTreeMap<&RoomId, u64>,
    ) -> Pulled {
        use crate::room::core::RoomView;
        let data = self.shards.get(shard).read();
        let mut pulled = Pulled::default();
        let rooms: Vec<RoomId> = data.rooms_of(client).cloned().collect();
        for room in rooms {
            let Some(view) = data.view(&room) else {
                continue;
            };
            let after = given
                .get(&room)
                .copied()
                .unwrap_or_else(|| view.acked(client))
                .min(view.last_seq());
            // Past every item looked at, visible or not; only as far as the bound allows.
            let mut cursor = after;
            let mut complete = true;
            for item in view.items_after(after) {
                if pulled.items.len() >= MAX_PULL_ITEMS {
                    complete = false;
                    break;
                }
                cursor = item.seq;
                if view.visible_to(item, client) {
                    pulled.items.push(PulledItem {
                        room: room.clone(),
                        item: item.clone(),
                        frank: None,
                    });
                }
            }
            if complete {
                cursor = cursor.max(view.last_seq());
            }
            pulled.cursors.push((room, cursor));
        }
        pulled
    }
}

/// Postcard encoding behind one object-safe call, so [`Hub::serve_read`]'s arms stay short.
mod erased {
    pub(super) trait Encode {
        fn encode(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("serialising an answer into memory cannot fail")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads cross nodes as postcard; a read of one release decodes in the same release.
    #[test]
    fn reads_round_trip() {
        let client = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        let room = RoomId::parse("mimi://a.example/r/lobby").unwrap();
        for read in [
            RemoteRead::Authenticate {
                client: client.clone(),
                token_hash: [7; 32],
            },
            RemoteRead::HostsRoom { room: room.clone() },
            RemoteRead::WelcomeRefs {
                refs: vec![vec![1, 2], vec![]],
            },
            RemoteRead::FindUser {
                terms: vec![SearchTerm::Nick("alice".into()), SearchTerm::Unsupported],
                own_domain: "a.example".into(),
            },
            RemoteRead::GroupInfoParts {
                room: room.clone(),
                joiner: client,
            },
            RemoteRead::FrankRecord { room, seq: 9 },
            RemoteRead::ShardLoad,
            RemoteRead::MovableRooms,
        ] {
            let bytes = postcard::to_stdvec(&read).unwrap();
            assert_eq!(postcard::from_bytes::<RemoteRead>(&bytes).unwrap(), read);
        }
        let pulled = Pulled {
            items: Vec::new(),
            cursors: vec![(RoomId::parse("mimi://a.example/r/x").unwrap(), 4)],
        };
        let bytes = postcard::to_stdvec(&pulled).unwrap();
        assert_eq!(postcard::from_bytes::<Pulled>(&bytes).unwrap(), pulled);
    }
}
