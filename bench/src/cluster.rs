//! The cluster scenario's clients: one provider run as a cluster of nodes in this process
//! (ARCHITECTURE.md "Cluster"), its rooms' senders and members spread over the nodes.
//!
//! Room `i` (of `n` nodes): the creator registers at node `i % n` and sends; the other member
//! registers at node `(i + 1) % n`, publishes one KeyPackage, opens its push stream, is added by
//! the creator and joins from its Welcome (MIMI.md §6.1, §6.2). Rooms hash onto the shards,
//! whose leaders spread over the nodes by election, so with three nodes about two thirds of the
//! messages reach a node that does not lead their shard and are forwarded to the leader
//! (`cluster_net/forward.rs`). Every message is replicated (fsync on each) and applied on the
//! nodes holding its shard: its R voters, and with `--replicas all` every other node as a
//! learner. A node holding the shard pushes it to the streams connected there from its room
//! actors; a node that lacks it (`--replicas r`, more nodes than R) feeds them through a relay
//! pulling from a holder, and reads for its clients' requests from a holder too.
//!
//! The members stay attached (unless `--detached-members`): a [`Receivers`] task per member
//! reads its push stream and decrypts each message, so stream fan-out runs on the node of each
//! member and no stream is closed for being slow. The operation itself ends with the sender's
//! acknowledgement (durable on a quorum and applied at the leader); what the members got is
//! counted and checked after the phase.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::{self, StreamExt};
use mimid_node::client::{Endpoint, Event, MimiClient};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::scenario::{
    add_users, set_up_each_room, wait_for_welcome, Naming, Operation, RoomSender,
};

/// Time allowed to set up one room (registrations, KeyPackage, the add, the join).
const ROOM_SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a receiver waits for its stream before checking whether to stop.
const RECEIVE_POLL: Duration = Duration::from_millis(200);
/// Interval of the checks while waiting for the receivers to catch up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Time allowed to close one receiver's connection at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Receivers closed concurrently at the end.
const CLOSE_CONCURRENCY: usize = 64;

/// The node (index) of room `room_idx`'s sender, of `nodes` nodes.
pub fn sender_node(room_idx: u64, nodes: usize) -> usize {
    (room_idx % nodes as u64) as usize
}

/// The node (index) of room `room_idx`'s receiving member: the one after the sender's.
pub fn receiver_node(room_idx: u64, nodes: usize) -> usize {
    ((room_idx + 1) % nodes as u64) as usize
}

/// Sets up `rooms` rooms over the cluster's `nodes` (`setup_concurrency` at a time) and returns
/// their creators as senders performing `operation`, in room order, and the members still
/// connected with their push streams (none if not `attached`), in room order.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_cluster_rooms(
    nodes: &[Endpoint],
    naming: &Naming,
    rooms: u32,
    operation: Operation,
    setup_concurrency: usize,
    attached: bool,
) -> anyhow::Result<(Vec<RoomSender>, Vec<MimiClient>)> {
    anyhow::ensure!(!nodes.is_empty(), "the cluster has no node");
    let set_up = set_up_each_room(
        rooms,
        setup_concurrency,
        ROOM_SETUP_TIMEOUT,
        |room_idx| async move {
            let (creator, member, room) = set_up_room(nodes, naming, room_idx, attached).await?;
            Ok((RoomSender::new(room_idx, creator, room, operation), member))
        },
    )
    .await?;
    let mut senders = Vec::with_capacity(set_up.len());
    let mut members = Vec::new();
    for (sender, member) in set_up {
        senders.push(sender);
        members.extend(member);
    }
    Ok((senders, members))
}

async fn set_up_room(
    nodes: &[Endpoint],
    naming: &Naming,
    room_idx: u64,
    attached: bool,
) -> anyhow::Result<(MimiClient, Option<MimiClient>, mimid_actors::ids::RoomId)> {
    let room = naming.room(room_idx)?;
    let sender_at = sender_node(room_idx, nodes.len());
    let receiver_at = receiver_node(room_idx, nodes.len());
    let mut creator = MimiClient::register(nodes[sender_at].clone(), naming.client(room_idx, 0)?)
        .await
        .with_context(|| format!("registering the creator at node {}", sender_at + 1))?;
    let mut member = MimiClient::register(nodes[receiver_at].clone(), naming.client(room_idx, 1)?)
        .await
        .with_context(|| format!("registering the member at node {}", receiver_at + 1))?;
    member
        .publish_key_packages(1)
        .await
        .context("publishing the member's KeyPackage")?;
    member
        .connect_stream()
        .await
        .context("opening the member's push stream")?;
    creator
        .create_room(&room)
        .await
        .context("creating the room")?;
    add_users(&mut creator, &room, &[member.user()], "the member").await?;
    wait_for_welcome(&mut member, &room).await?;
    if attached {
        Ok((creator, Some(member), room))
    } else {
        member.close().await;
        Ok((creator, None, room))
    }
}

/// What the receivers got during the phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delivery {
    /// Members reading their push stream during the phase.
    pub receivers: usize,
    /// Application messages decrypted by the members.
    pub delivered: u64,
    /// Whether `delivered` reached the accepted messages before the catch-up deadline.
    pub caught_up: bool,
    /// Time from the end of the phase until the members had every accepted message.
    pub catch_up_s: Option<f64>,
    /// Push streams that ended or failed during the phase (a slow stream is closed by the node).
    pub streams_lost: u64,
    /// The first such failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// One task per attached member, reading its push stream until stopped.
pub struct Receivers {
    tasks: JoinSet<MimiClient>,
    count: usize,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Receivers {
    /// Starts reading every member's push stream (on the current runtime).
    pub fn start(members: Vec<MimiClient>) -> Receivers {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(None));
        let count = members.len();
        let mut tasks = JoinSet::new();
        for member in members {
            tasks.spawn(receive(
                member,
                stop.clone(),
                delivered.clone(),
                lost.clone(),
                first_error.clone(),
            ));
        }
        Receivers {
            tasks,
            count,
            stop,
            delivered,
            lost,
            first_error,
        }
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits (polling) until `accepted` messages were delivered or every stream was lost, for
    /// at most `deadline`; then stops the receivers, closes the members' connections and says
    /// what they got.
    ///
    /// Cancel safety: not safe; the receivers are dropped without a clean close.
    pub async fn finish(mut self, accepted: u64, deadline: Duration) -> Delivery {
        let started = Instant::now();
        let mut caught_up = false;
        // Bounded by `deadline`.
        loop {
            if self.delivered() >= accepted {
                caught_up = true;
                break;
            }
            if self.lost.load(Ordering::Relaxed) >= self.count as u64
                || started.elapsed() >= deadline
            {
                break;
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
        let catch_up_s =
            caught_up.then(|| crate::stats::round_millis(started.elapsed().as_secs_f64()));
        self.stop.store(true, Ordering::Relaxed);
        let mut members = Vec::with_capacity(self.count);
        while let Some(joined) = self.tasks.join_next().await {
            // A panicked receiver has lost its client; the others are still closed.
            if let Ok(member) = joined {
                members.push(member);
            } else {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        stream::iter(members)
            .for_each_concurrent(CLOSE_CONCURRENCY, |member| async move {
                // A slow close only delays the end of the run; the report is complete.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, member.close()).await;
            })
            .await;
        Delivery {
            receivers: self.count,
            delivered: self.delivered(),
            caught_up,
            catch_up_s,
            streams_lost: self.lost.load(Ordering::Relaxed),
            first_error: self.first_error.lock().clone(),
        }
    }
}

/// Reads `member`'s push stream, counting application messages, until `stop` is set or the
/// stream fails; returns the client for a clean close.
async fn receive(
    mut member: MimiClient,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
) -> MimiClient {
    // Bounded by `stop`, which `Receivers::finish` sets; each wait is at most RECEIVE_POLL.
    while !stop.load(Ordering::Relaxed) {
        match member.next_event(RECEIVE_POLL).await {
            Ok(Some(Event::Message { .. })) => {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(error) => {
                lost.fetch_add(1, Ordering::Relaxed);
                first_error
                    .lock()
                    .get_or_insert_with(|| format!("{}: {error}", member.id()));
                break;
            }
        }
    }
    member
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_go_round_robin_and_receivers_to_the_next_node() {
        let senders: Vec<usize> = (0..6).map(|i| sender_node(i, 3)).collect();
        assert_eq!(senders, vec![0, 1, 2, 0, 1, 2]);
        let receivers: Vec<usize> = (0..6).map(|i| receiver_node(i, 3)).collect();
        assert_eq!(receivers, vec![1, 2, 0, 1, 2, 0]);
        assert!((0..100).all(|i| sender_node(i, 3) != receiver_node(i, 3)));
        assert_eq!(receiver_node(5, 1), 0, "one node holds both");
    }
}
