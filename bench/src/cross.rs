//! The cross-provider scenario's clients: in each room, Alice@a.example (the hub) sends and
//! Bob@b.example (a follower) receives through his own provider's push stream (MIMI.md §6.2,
//! §6.4; protocol-06 §5.3 submitMessage at the hub, §5.4 notify to the follower).
//!
//! Room set-up, as the clients would do it: Alice registers at a and creates the room; Bob
//! registers at b, publishes one KeyPackage and opens his push stream; Alice claims it through
//! a, which proxies keyMaterial to b (MIMI.md §6.3), and adds Bob in one Commit; Bob joins from
//! the Welcome that a notified to b. Both stay connected for the timed phase.
//!
//! One operation is one message from Alice to Bob: Alice submits it (a makes it durable and
//! applies it), a notifies b, b appends it durably to its mirror of the room and pushes it, and
//! Bob decrypts it. The operation ends when Bob has it, so the load engine's latency runs from
//! Alice's intended send time to Bob's receipt (coordinated-omission corrected in the open
//! model). Each room has one message in flight at a time; rooms run in parallel.

use std::time::Duration;

use anyhow::Context;
use futures::stream::{self, StreamExt};
use mimid_node::client::{Endpoint, Event, MimiClient};

use crate::load::{Availability, Sender};
use crate::scenario::{
    add_users, error_kind, pregenerate, set_up_each_room, wait_for_welcome, Naming, Operation,
    PhaseSender, RoomSender,
};
use crate::stats::ErrorKind;

/// Time allowed to set up one pair (registrations, KeyPackage, the add, the join).
const PAIR_SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to close one client's connection at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pairs closed concurrently at the end.
const CLOSE_CONCURRENCY: usize = 32;
/// Shortest message text: the room index and the message number must fit in it, whatever
/// they are ([`crate::scenario::message_text`]).
pub const MIN_TEXT_BYTES: u32 = 48;

/// Alice and Bob of one room: Alice sends, Bob receives.
pub struct CrossSender {
    alice: RoomSender,
    bob: MimiClient,
    /// How long Bob waits for each message (the phase's operation timeout bounds it as well).
    receive_wait: Duration,
}

impl Sender for CrossSender {
    fn availability(&self) -> Availability {
        self.alice.availability()
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let k = self.alice.next_message_k();
        self.alice.run().await?;
        self.receive(k).await
    }

    fn on_abandoned(&mut self) {
        // A message dropped at its timeout may still reach Bob later: `receive` skips it.
        self.alice.on_abandoned();
    }

    fn operation(&self, offered_at: Duration) -> &'static str {
        self.alice.operation(offered_at)
    }
}

impl CrossSender {
    /// Reads Bob's push stream until message `k` of this room arrives. Earlier messages (whose
    /// operation timed out before they arrived) are skipped; anything else is a delivery error.
    ///
    /// Cancel safety: safe; an item read but not yet matched stays processed by Bob's client,
    /// and the next call skips what it no longer waits for.
    async fn receive(&mut self, k: u64) -> Result<(), ErrorKind> {
        receive_message(&mut self.bob, self.alice.idx(), k, self.receive_wait, false).await
    }

    /// Closes both clients' connections.
    async fn close(self) {
        // A slow close only delays the end of the run; the report is already complete.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.alice.close().await;
            self.bob.close().await;
        })
        .await;
    }
}

impl PhaseSender for CrossSender {
    fn pregenerated(&self) -> usize {
        self.alice.pregenerated()
    }

    /// Encrypts Alice's messages in advance ([`pregenerate`]); Bob's clients wait meanwhile.
    async fn pregenerate_all(
        senders: Vec<Self>,
        counts: &[u64],
        text_bytes: usize,
        threads: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let mut alices = Vec::with_capacity(senders.len());
        let mut rest = Vec::with_capacity(senders.len());
        for sender in senders {
            alices.push(sender.alice);
            rest.push((sender.bob, sender.receive_wait));
        }
        // Both lists are in room order: senders come sorted by room, and so does the result.
        let alices = pregenerate(alices, counts, text_bytes, threads).await?;
        Ok(alices
            .into_iter()
            .zip(rest)
            .map(|(alice, (bob, receive_wait))| CrossSender {
                alice,
                bob,
                receive_wait,
            })
            .collect())
    }

    async fn close_all(senders: Vec<Self>) {
        stream::iter(senders)
            .for_each_concurrent(CLOSE_CONCURRENCY, CrossSender::close)
            .await;
    }
}

/// Where the two sides of the scenario connect, and how its ids are named.
pub struct Pairs<'a> {
    /// Alice's provider, the rooms' hub.
    pub hub: &'a Endpoint,
    pub hub_naming: &'a Naming,
    /// Bob's provider.
    pub follower: &'a Endpoint,
    pub follower_naming: &'a Naming,
}

/// Sets up `rooms` rooms of Alice@hub and Bob@follower (`setup_concurrency` at a time) and
/// returns them as senders in room order; Alice's operation is `operation`, Bob waits up to
/// `receive_wait` for each message.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_pairs(
    pairs: &Pairs<'_>,
    rooms: u32,
    operation: Operation,
    setup_concurrency: usize,
    receive_wait: Duration,
) -> anyhow::Result<Vec<CrossSender>> {
    set_up_each_room(
        rooms,
        setup_concurrency,
        PAIR_SETUP_TIMEOUT,
        |room_idx| async move {
            let (alice, bob) = set_up_pair(pairs, room_idx, operation).await?;
            Ok(CrossSender {
                alice,
                bob,
                receive_wait,
            })
        },
    )
    .await
}

async fn set_up_pair(
    pairs: &Pairs<'_>,
    room_idx: u64,
    operation: Operation,
) -> anyhow::Result<(RoomSender, MimiClient)> {
    let room = pairs.hub_naming.room(room_idx)?;
    let mut alice = MimiClient::register(pairs.hub.clone(), pairs.hub_naming.client(room_idx, 0)?)
        .await
        .context("registering alice at the hub")?;
    let mut bob = MimiClient::register(
        pairs.follower.clone(),
        pairs.follower_naming.client(room_idx, 1)?,
    )
    .await
    .context("registering bob at the follower")?;
    bob.publish_key_packages(1)
        .await
        .context("publishing bob's KeyPackage")?;
    bob.connect_stream()
        .await
        .context("opening bob's push stream")?;
    alice
        .create_room(&room)
        .await
        .context("creating the room")?;
    add_users(
        &mut alice,
        &room,
        &[bob.user()],
        "bob (keyMaterial through the follower)",
    )
    .await?;
    wait_for_welcome(&mut bob, &room).await?;
    Ok((RoomSender::new(room_idx, alice, room, operation), bob))
}

/// Reads `client`'s push stream until message `k` of sender `idx` (its text made by
/// [`crate::scenario::message_text`]) arrives, waiting at most `wait` for each event. Earlier
/// messages of that sender (whose operation timed out before they arrived) are skipped; so are
/// other senders' messages when `other_senders` (rooms where several members send in turn);
/// anything else is a delivery error.
///
/// Cancel safety: safe; an item read but not yet matched stays processed by the client, and
/// the next call skips what it no longer waits for.
pub(crate) async fn receive_message(
    client: &mut MimiClient,
    idx: u64,
    k: u64,
    wait: Duration,
    other_senders: bool,
) -> Result<(), ErrorKind> {
    loop {
        let event = client
            .next_event(wait)
            .await
            .map_err(|e| error_kind(&e))?
            .ok_or(ErrorKind::Timeout)?;
        let Event::Message { content, .. } = event else {
            continue; // Nothing but messages is expected; a Commit would not be ours.
        };
        let text = content.text().ok_or(ErrorKind::Delivery)?;
        match message_number(text, idx) {
            Some(got) if got == k => return Ok(()),
            Some(got) if got < k => continue,
            None if other_senders => continue,
            _ => return Err(ErrorKind::Delivery),
        }
    }
}

/// The `k` of a text made by [`crate::scenario::message_text`] for room `idx`, if it is one.
pub(crate) fn message_number(text: &str, idx: u64) -> Option<u64> {
    let mut parts = text.splitn(3, ':');
    let room: u64 = parts.next()?.parse().ok()?;
    let k = parts.next()?.parse().ok()?;
    parts.next()?;
    (room == idx).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::message_text;

    #[test]
    fn message_numbers_are_read_back_from_the_texts_of_their_room() {
        let text = message_text(7, 1234, MIN_TEXT_BYTES as usize);
        assert_eq!(message_number(&text, 7), Some(1234));
        assert_eq!(message_number(&text, 8), None, "another room's message");
        assert_eq!(
            message_number(
                &message_text(u64::MAX, u64::MAX, MIN_TEXT_BYTES as usize),
                u64::MAX
            ),
            Some(u64::MAX),
            "the largest numbers fit in the shortest text"
        );
        assert_eq!(message_number("7:12", 7), None, "truncated");
        assert_eq!(message_number("hello", 7), None);
    }
}
