//! The dm and small-rooms scenarios: rooms whose members all stay attached by their push
//! streams and take turns sending (MIMI.md §6.2, §6.4; protocol-06 §5.3). One operation is
//! one message, counted when **every other member** of its room has decrypted it: the latency
//! runs from the intended send time to the last recipient's receipt.
//!
//! Room set-up, as clients would do it: the creator registers and creates the room; the other
//! members register, publish one KeyPackage each and open their push streams; the creator adds
//! them all in one Commit (MIMI.md §6.2) and opens its own stream; each member joins from its
//! Welcome. Everyone stays connected.
//!
//! In room `i` of `n` members, member `m` sends the room's operations `m, m + n, m + 2n, ...`
//! with the texts of sender `i·n + m` ([`crate::scenario::message_text`]), so every recipient
//! can tell whose message it reads and which one. One message is in flight per room (rooms run
//! in parallel); the recipients read their streams concurrently inside the operation, and each
//! decrypts (openmls) on the generator's threads: `n - 1` decryptions per operation.

use std::time::Duration;

use anyhow::Context;
use futures::stream::{self, StreamExt};
use mimid_node::client::{Endpoint, MimiClient};

use crate::cross::receive_message;
use crate::load::{Availability, Sender};
use crate::scenario::{
    create_and_add, pregenerate, set_up_each_room, wait_for_welcome, AddedRoom, Naming, Operation,
    PhaseSender, RoomSender,
};
use crate::stats::ErrorKind;

/// Time allowed to set up one room (registrations, KeyPackages, the add, every join).
const ROOM_SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to close one room's clients at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Rooms closed concurrently at the end.
const CLOSE_CONCURRENCY: usize = 32;

/// The members of one room, taking turns.
pub struct GroupSender {
    /// The room's index in its phase.
    idx: u64,
    /// Member 0 is the creator; member `m` sends with sender index `idx·n + m`.
    members: Vec<RoomSender>,
    turn: u64,
    /// How long a recipient waits for each event (the operation timeout bounds it as well).
    receive_wait: Duration,
}

impl GroupSender {
    /// Members of the room, the sender of each message included.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Closes every member's connection.
    async fn close(self) {
        // A slow close only delays the end of the run; the report is already complete.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            for member in self.members {
                member.close().await;
            }
        })
        .await;
    }
}

impl Sender for GroupSender {
    fn availability(&self) -> Availability {
        let next = (self.turn % self.members.len() as u64) as usize;
        self.members[next].availability()
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let from = (self.turn % self.members.len() as u64) as usize;
        self.turn += 1;
        let k = self.members[from].next_message_k();
        let text_idx = self.members[from].idx();
        self.members[from].run().await?;
        let wait = self.receive_wait;
        let recipients = self
            .members
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| *index != from)
            .map(|(_, member)| receive_message(member.client_mut(), text_idx, k, wait, true));
        futures::future::try_join_all(recipients).await?;
        Ok(())
    }

    fn on_abandoned(&mut self) {
        // A message dropped at its timeout may still arrive later: the recipients skip it.
    }

    fn operation(&self, _offered_at: Duration) -> &'static str {
        "message"
    }
}

impl PhaseSender for GroupSender {
    fn pregenerated(&self) -> usize {
        self.members.iter().map(|m| m.pregenerated()).sum()
    }

    /// Encrypts each room's `counts[i]` messages in advance, shared among its members by turn
    /// ([`pregenerate`] for every member of every room at once).
    async fn pregenerate_all(
        senders: Vec<Self>,
        counts: &[u64],
        text_bytes: usize,
        threads: usize,
    ) -> anyhow::Result<Vec<Self>> {
        anyhow::ensure!(
            senders.len() == counts.len(),
            "one count per room is needed"
        );
        let mut shells = Vec::with_capacity(senders.len());
        let mut members = Vec::new();
        let mut member_counts = Vec::new();
        for (sender, count) in senders.into_iter().zip(counts.iter().copied()) {
            let n = sender.members.len() as u64;
            for (m, member) in sender.members.into_iter().enumerate() {
                // Operations m, m + n, ... of the room are this member's.
                member_counts.push((count + n - 1 - m as u64) / n);
                members.push(member);
            }
            shells.push((sender.idx, n as usize, sender.receive_wait));
        }
        // `pregenerate` returns the members sorted by sender index, i.e. room by room.
        let mut members = pregenerate(members, &member_counts, text_bytes, threads)
            .await?
            .into_iter();
        Ok(shells
            .into_iter()
            .map(|(idx, n, receive_wait)| GroupSender {
                idx,
                members: members.by_ref().take(n).collect(),
                turn: 0,
                receive_wait,
            })
            .collect())
    }

    async fn close_all(senders: Vec<Self>) {
        stream::iter(senders)
            .for_each_concurrent(CLOSE_CONCURRENCY, GroupSender::close)
            .await;
    }
}

/// Sets up `rooms` rooms of `members` members on `endpoint` (`setup_concurrency` at a time),
/// every member attached, and returns them in room order; each member's operation is
/// `operation`, and recipients wait up to `receive_wait` for each message.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_groups(
    endpoint: &Endpoint,
    naming: &Naming,
    rooms: u32,
    members: u32,
    operation: Operation,
    setup_concurrency: usize,
    receive_wait: Duration,
) -> anyhow::Result<Vec<GroupSender>> {
    anyhow::ensure!(members >= 2, "a room needs a sender and a recipient");
    set_up_each_room(
        rooms,
        setup_concurrency,
        ROOM_SETUP_TIMEOUT,
        |room_idx| async move {
            let clients = set_up_group(endpoint, naming, room_idx, members).await?;
            let room = naming.room(room_idx)?;
            let n = u64::from(members);
            Ok(GroupSender {
                idx: room_idx,
                members: clients
                    .into_iter()
                    .enumerate()
                    .map(|(m, client)| {
                        RoomSender::new(room_idx * n + m as u64, client, room.clone(), operation)
                    })
                    .collect(),
                turn: 0,
                receive_wait,
            })
        },
    )
    .await
}

/// One room: its members in member order (the creator first), every one with its push stream
/// open and the room joined.
async fn set_up_group(
    endpoint: &Endpoint,
    naming: &Naming,
    room_idx: u64,
    members: u32,
) -> anyhow::Result<Vec<MimiClient>> {
    let AddedRoom {
        room,
        mut creator,
        joiners,
    } = create_and_add(endpoint, naming, room_idx, members).await?;
    // The stream resumes after the creator's cursor: its own Commit comes back as an echo,
    // which its client skips.
    creator
        .connect_stream()
        .await
        .context("opening the creator's push stream")?;
    let mut clients = vec![creator];
    for mut joiner in joiners {
        wait_for_welcome(&mut joiner, &room).await?;
        clients.push(joiner);
    }
    Ok(clients)
}
