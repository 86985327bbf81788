//! The join-storm scenario: clients joining rooms by external commit (MIMI.md §6.6, RFC 9420
//! §12.4.3.2) at a target rate. One operation is one join by a new device of the room
//! creator's user (a participant with canAddOwnClient): fetch the room's GroupInfo, ratchet
//! tree and pending proposals (protocol-06 §5.5 groupInfo, HPKE-encrypted to the joiner and
//! signed with the hub's key), build the external commit, submit it (§5.2 update) and be
//! accepted. Joins into one room are sequential (each moves the room to a new epoch, and a
//! concurrent one would lose with wrongEpoch); rooms run in parallel, so the room count bounds
//! the joins in flight.
//!
//! Set-up: the rooms as in the messages scenario (`scenario::set_up_rooms`: the creator and
//! `--members - 1` members who joined from their Welcome and disconnected), then the creator
//! links one new device per join of the phase (registration is not part of the join). A user
//! has at most `MAX_CLIENTS_PER_USER` (64) clients, so a room takes at most
//! [`MAX_JOINS_PER_ROOM`] joins: more rooms for more joins.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use mimid_node::client::{MimiClient, UpdateResult};

use crate::load::{Availability, Sender};
use crate::scenario::{error_kind, Naming, PhaseSender, RoomSender};
use crate::stats::ErrorKind;

/// Joins one room can take: the creator's user has the creator's client and at most 63 more
/// (`mimid_actors::directory::MAX_CLIENTS_PER_USER`).
pub const MAX_JOINS_PER_ROOM: u64 = mimid_actors::directory::MAX_CLIENTS_PER_USER as u64 - 1;
/// Time allowed to link one room's joiners.
const LINK_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to close one room's clients at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms closed concurrently at the end.
const CLOSE_CONCURRENCY: usize = 16;

/// One room: its creator and the devices waiting to join it.
pub struct JoinSender {
    creator: RoomSender,
    waiting: VecDeque<MimiClient>,
    /// Devices that tried to join (closed at the end).
    done: Vec<MimiClient>,
    joined: usize,
    /// Members at the start of the phase.
    members: usize,
}

impl JoinSender {
    /// Members of the room after the joins so far.
    pub fn group_size(&self) -> usize {
        self.members + self.joined
    }

    async fn close(self) {
        // A slow close only delays the end of the run; the report is already complete.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            for client in self.waiting.into_iter().chain(self.done) {
                client.close().await;
            }
            self.creator.close().await;
        })
        .await;
    }
}

impl Sender for JoinSender {
    fn availability(&self) -> Availability {
        if self.waiting.is_empty() {
            Availability::Exhausted
        } else {
            Availability::Ready
        }
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let mut joiner = self.waiting.pop_front().ok_or(ErrorKind::Client)?;
        let room = self.creator.room().clone();
        let result = joiner.join_by_external_commit(&room).await;
        // Joined or not, this device is spent: closed at the end with the rest.
        self.done.push(joiner);
        match result.map_err(|e| error_kind(&e))? {
            UpdateResult::Accepted { .. } => {
                self.joined += 1;
                Ok(())
            }
            UpdateResult::WrongEpoch { .. } => Err(ErrorKind::WrongEpoch),
            UpdateResult::NotAllowed { .. } => Err(ErrorKind::NotAllowed),
            UpdateResult::InvalidProposal { .. } => Err(ErrorKind::InvalidProposal),
        }
    }

    fn on_abandoned(&mut self) {
        // The abandoned joiner's client is dropped with the operation's future; its commit
        // may still have been accepted. The next joiner fetches the room's current GroupInfo,
        // so the room stays joinable.
    }

    fn operation(&self, _offered_at: Duration) -> &'static str {
        "join"
    }
}

impl PhaseSender for JoinSender {
    fn pregenerated(&self) -> usize {
        0
    }

    async fn pregenerate_all(
        senders: Vec<Self>,
        _counts: &[u64],
        _text_bytes: usize,
        _threads: usize,
    ) -> anyhow::Result<Vec<Self>> {
        Ok(senders)
    }

    fn group_size(&self) -> Option<usize> {
        Some(self.group_size())
    }

    async fn close_all(senders: Vec<Self>) {
        stream::iter(senders)
            .for_each_concurrent(CLOSE_CONCURRENCY, JoinSender::close)
            .await;
    }
}

/// Links `joins[i]` new devices of room `i`'s creator (`setup_concurrency` rooms at a time),
/// each to join room `i` by external commit, and returns the rooms in order. `members` is the
/// rooms' size before the phase.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn link_joiners(
    creators: Vec<RoomSender>,
    naming: &Naming,
    joins: &[u64],
    members: usize,
    setup_concurrency: usize,
) -> anyhow::Result<Vec<JoinSender>> {
    anyhow::ensure!(
        creators.len() == joins.len(),
        "one count per room is needed"
    );
    if let Some(most) = joins.iter().max().filter(|n| **n > MAX_JOINS_PER_ROOM) {
        bail!(
            "{most} joins into one room exceed the {MAX_JOINS_PER_ROOM} devices a user can \
             link (64 clients per user): raise --rooms, or lower --rate, --duration or \
             --max-ops"
        );
    }
    let mut senders: Vec<JoinSender> =
        stream::iter(creators.into_iter().zip(joins.iter().copied()))
            .map(|(creator, count)| async move {
                let room_idx = creator.idx();
                let waiting = tokio::time::timeout(LINK_TIMEOUT, async {
                    let mut waiting = VecDeque::with_capacity(count as usize);
                    for device in 1..=count as u32 {
                        let id = naming.device(room_idx, 0, device)?;
                        let client = creator
                            .client()
                            .link(id)
                            .await
                            .with_context(|| format!("linking device {device}"))?;
                        waiting.push_back(client);
                    }
                    Ok::<_, anyhow::Error>(waiting)
                })
                .await
                .with_context(|| format!("room {room_idx}: linking the joiners timed out"))??;
                Ok::<_, anyhow::Error>(JoinSender {
                    creator,
                    waiting,
                    done: Vec::new(),
                    joined: 0,
                    members,
                })
            })
            .buffer_unordered(setup_concurrency)
            .try_collect()
            .await?;
    senders.sort_by_key(|s| s.creator.idx());
    Ok(senders)
}
