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
//! counted and checked after the phase: each member counts how many times it got each message
//! of its room's sender (by the number in its text, `scenario::message_text`), and
//! [`Receivers::finish`] holds that against what the sender's provider acknowledged, so a
//! message lost, delivered twice or out of order shows (with a shard split during the phase,
//! across the moves of the rooms).

use std::collections::BTreeMap;
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

use crate::cross::message_number;
use crate::scenario::{
    add_users, set_up_each_room, wait_for_welcome, Acknowledged, Naming, Operation, RoomSender,
};

/// Time allowed to set up one room (registrations, KeyPackage, the add, the join).
const ROOM_SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a receiver waits for its stream before checking whether to stop.
const RECEIVE_POLL: Duration = Duration::from_millis(200);
/// Interval of the checks while waiting for the receivers to catch up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Interval of the message-by-message checks while waiting for the receivers to catch up,
/// once they have as many messages as were acknowledged.
const EXACT_CHECK_POLL: Duration = Duration::from_millis(100);
/// Message numbers above this are not the bench's (its senders send at most
/// `scenario::MAX_PREGENERATED` in a phase, live ones fewer).
const MAX_MESSAGE_NUMBER: u64 = 100_000_000;
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
/// connected with their push streams with their room index (none if not `attached`), in room
/// order.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_cluster_rooms(
    nodes: &[Endpoint],
    naming: &Naming,
    rooms: u32,
    operation: Operation,
    setup_concurrency: usize,
    attached: bool,
) -> anyhow::Result<(Vec<RoomSender>, Vec<(u64, MimiClient)>)> {
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
        members.extend(member.map(|member| (sender.idx(), member)));
        senders.push(sender);
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
    /// Whether every acknowledged message had reached its member before the catch-up
    /// deadline (without message numbers: whether `delivered` reached the accepted count).
    pub caught_up: bool,
    /// Acknowledged messages their member never got, by the number in each text; `null` when
    /// the texts are too short to carry it (`--message-bytes` below 48).
    pub lost: Option<u64>,
    /// Deliveries of a message beyond its first.
    pub duplicated: Option<u64>,
    /// Messages that reached their member after a later message of the same sender.
    pub out_of_order: Option<u64>,
    /// Messages whose operation failed or timed out that reached the member all the same
    /// (the provider accepted them but did not answer in time): not an error.
    pub unacknowledged_delivered: Option<u64>,
    /// Messages whose text is not one of the room's numbered messages.
    pub unrecognised: Option<u64>,
    /// Time from the end of the phase until the members had every accepted message.
    pub catch_up_s: Option<f64>,
    /// Push streams that ended or failed during the phase (a slow stream is closed by the node).
    pub streams_lost: u64,
    /// The first such failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// How many times one member got each message of its room's sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries of message `k`, at index `k`.
    times: Vec<u32>,
    /// The highest `k` got so far.
    highest: Option<u64>,
    out_of_order: u64,
    unrecognised: u64,
}

impl Tally {
    /// Counts a message of room `idx` whose text is `text`.
    pub fn count(&mut self, idx: u64, text: Option<&str>) {
        let Some(k) = text
            .and_then(|text| message_number(text, idx))
            .filter(|&k| k <= MAX_MESSAGE_NUMBER)
        else {
            self.unrecognised += 1;
            return;
        };
        let at = k as usize;
        if self.times.len() <= at {
            self.times.resize(at + 1, 0);
        }
        self.times[at] += 1;
        if self.highest.is_some_and(|highest| k < highest) {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(Some(k));
    }

    /// This member's messages held against what its sender's provider acknowledged.
    pub fn check(&self, acknowledged: &Acknowledged) -> Check {
        let times = |k: u64| self.times.get(k as usize).copied().unwrap_or(0);
        Check {
            lost: (0..acknowledged.attempted)
                .filter(|&k| acknowledged.contains(k) && times(k) == 0)
                .count() as u64,
            duplicated: self
                .times
                .iter()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            out_of_order: self.out_of_order,
            unacknowledged_delivered: (0..self.times.len() as u64)
                .filter(|&k| times(k) > 0 && !acknowledged.contains(k))
                .count() as u64,
            unrecognised: self.unrecognised,
        }
    }
}

/// [`Tally::check`]: the exactly-once check of one member's messages, or of all together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Check {
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unacknowledged_delivered: u64,
    pub unrecognised: u64,
}

impl std::ops::Add for Check {
    type Output = Check;

    fn add(self, other: Check) -> Check {
        Check {
            lost: self.lost + other.lost,
            duplicated: self.duplicated + other.duplicated,
            out_of_order: self.out_of_order + other.out_of_order,
            unacknowledged_delivered: self.unacknowledged_delivered
                + other.unacknowledged_delivered,
            unrecognised: self.unrecognised + other.unrecognised,
        }
    }
}

/// One task per attached member, reading its push stream until stopped.
pub struct Receivers {
    tasks: JoinSet<MimiClient>,
    count: usize,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
    /// Each member's room index and tally.
    tallies: Vec<(u64, Arc<Mutex<Tally>>)>,
}

impl Receivers {
    /// Starts reading every member's push stream (on the current runtime); each member is
    /// given with its room's index.
    pub fn start(members: Vec<(u64, MimiClient)>) -> Receivers {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(None));
        let count = members.len();
        let mut tasks = JoinSet::new();
        let mut tallies = Vec::with_capacity(count);
        for (idx, member) in members {
            let tally = Arc::new(Mutex::new(Tally::default()));
            tallies.push((idx, tally.clone()));
            tasks.spawn(receive(
                member,
                Member {
                    idx,
                    tally,
                    stop: stop.clone(),
                    delivered: delivered.clone(),
                    lost: lost.clone(),
                    first_error: first_error.clone(),
                },
            ));
        }
        Receivers {
            tasks,
            count,
            stop,
            delivered,
            lost,
            first_error,
            tallies,
        }
    }

    /// Every member's messages held against `acknowledged` (by room index; a member whose
    /// sender is missing from it is held against nothing acknowledged).
    fn check(&self, acknowledged: &BTreeMap<u64, Acknowledged>) -> Check {
        self.tallies
            .iter()
            .map(|(idx, tally)| {
                let none = Acknowledged {
                    idx: *idx,
                    attempted: 0,
                    unacknowledged: Vec::new(),
                };
                tally.lock().check(acknowledged.get(idx).unwrap_or(&none))
            })
            .fold(Check::default(), |sum, check| sum + check)
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits (polling) until every acknowledged message was delivered or every stream was
    /// lost, for at most `deadline`; then stops the receivers, closes the members' connections
    /// and says what they got. `acknowledged` holds each sender's acknowledged messages when
    /// the texts carry their numbers (each member's are then checked one by one); without it,
    /// only the count of `accepted` messages is awaited.
    ///
    /// Cancel safety: not safe; the receivers are dropped without a clean close.
    pub async fn finish(
        mut self,
        accepted: u64,
        acknowledged: Option<Vec<Acknowledged>>,
        deadline: Duration,
    ) -> Delivery {
        let acknowledged: Option<BTreeMap<u64, Acknowledged>> = acknowledged.map(|senders| {
            senders
                .into_iter()
                .map(|acked| (acked.idx, acked))
                .collect()
        });
        let started = Instant::now();
        let mut caught_up = false;
        let mut next_exact_check = started;
        // Bounded by `deadline`.
        loop {
            if self.delivered() >= accepted {
                match &acknowledged {
                    None => {
                        caught_up = true;
                        break;
                    }
                    Some(acknowledged) if Instant::now() >= next_exact_check => {
                        if self.check(acknowledged).lost == 0 {
                            caught_up = true;
                            break;
                        }
                        next_exact_check = Instant::now() + EXACT_CHECK_POLL;
                    }
                    Some(_) => {}
                }
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
        let check = acknowledged
            .as_ref()
            .map(|acknowledged| self.check(acknowledged));
        Delivery {
            receivers: self.count,
            delivered: self.delivered(),
            caught_up,
            lost: check.map(|c| c.lost),
            duplicated: check.map(|c| c.duplicated),
            out_of_order: check.map(|c| c.out_of_order),
            unacknowledged_delivered: check.map(|c| c.unacknowledged_delivered),
            unrecognised: check.map(|c| c.unrecognised),
            catch_up_s,
            streams_lost: self.lost.load(Ordering::Relaxed),
            first_error: self.first_error.lock().clone(),
        }
    }
}

/// What one receiver task shares with [`Receivers`].
struct Member {
    /// Its room's index.
    idx: u64,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
}

/// Reads `client`'s push stream, counting application messages in its tally, until `stop` is
/// set or the stream fails; returns the client for a clean close.
async fn receive(mut client: MimiClient, member: Member) -> MimiClient {
    // Bounded by `stop`, which `Receivers::finish` sets; each wait is at most RECEIVE_POLL.
    while !member.stop.load(Ordering::Relaxed) {
        match client.next_event(RECEIVE_POLL).await {
            Ok(Some(Event::Message { content, .. })) => {
                member.tally.lock().count(member.idx, content.text());
                member.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(error) => {
                member.lost.fetch_add(1, Ordering::Relaxed);
                member
                    .first_error
                    .lock()
                    .get_or_insert_with(|| format!("{}: {error}", client.id()));
                break;
            }
        }
    }
    client
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

    #[test]
    fn a_tally_finds_lost_duplicated_and_reordered_messages() {
        use crate::scenario::message_text;
        let text = |k| message_text(3, k, 64);
        let acked = Acknowledged {
            idx: 3,
            attempted: 6,
            unacknowledged: vec![4],
        };
        let mut exact = Tally::default();
        for k in [0, 1, 2, 3, 5] {
            exact.count(3, Some(&text(k)));
        }
        assert_eq!(exact.check(&acked), Check::default(), "each once, in order");

        let mut bad = Tally::default();
        // 1 twice, 3 before 2, 5 never; 4 (unanswered) arrived; one message of room 7 and one
        // without text.
        for k in [0, 1, 1, 3, 2, 4] {
            bad.count(3, Some(&text(k)));
        }
        bad.count(3, Some(&message_text(7, 0, 64)));
        bad.count(3, None);
        let check = bad.check(&acked);
        assert_eq!(
            check,
            Check {
                lost: 1,
                duplicated: 1,
                out_of_order: 1,
                unacknowledged_delivered: 1,
                unrecognised: 2,
            }
        );
        assert_eq!((check + check).lost, 2);
        let mut huge = Tally::default();
        huge.count(3, Some(&format!("3:{}:", u64::MAX)));
        assert_eq!(
            huge.check(&acked).unrecognised,
            1,
            "not a number the bench sends"
        );
    }
}
