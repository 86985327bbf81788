//! The scenarios' clients: setting up rooms through the client API, encrypting messages in
//! advance, and the [`Sender`] that performs one application message (protocol-06 §5.3) or
//! one self-update Commit (protocol-06 §5.2, RFC 9420 §12.4) per operation.
//!
//! Room set-up, as a client of the provider would do it (MIMI.md §6.1, §6.2): the creator
//! registers and creates the room; the other members register, publish one KeyPackage each and
//! open their push stream; the creator claims their KeyPackages and adds them all in one
//! Commit; each member joins from the Welcome on its stream and then disconnects. Only the
//! creator stays connected, without a push stream, so during the timed phase the provider
//! fans out to nobody and the scenarios measure the accept path alone. (The client library has
//! no way to detach a member's stream and keep the member; see bench/README.md.)
//!
//! Because only the creator commits, the ratchet tree stays "bare": each Commit's UpdatePath
//! encrypts to every other member. That is the state right after a mass add and the case the
//! hub-cost anchors were measured on (anchors.md Part 2d).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::client::{ClientError, Endpoint, Event, MimiClient, SubmitResult, UpdateResult};

use crate::load::{Availability, Sender};
use crate::stats::ErrorKind;

/// Time allowed to set up one room (registrations, KeyPackages, the add, every join).
const ROOM_SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time a member waits for its Welcome before the set-up fails.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// Events a member may skip while waiting for its Welcome (none are expected).
const MAX_EVENTS_BEFORE_WELCOME: usize = 16;
/// Time allowed to close one client's connection at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients closed concurrently at the end.
const CLOSE_CONCURRENCY: usize = 64;
/// Most messages encrypted in advance in one phase (≈0.5 KB each with 256-byte texts).
pub const MAX_PREGENERATED: u64 = 5_000_000;

/// What each operation of a sender does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Submit one of the messages encrypted before the phase.
    PregeneratedMessage,
    /// Encrypt a message of `text_bytes` and submit it.
    LiveMessage { text_bytes: usize },
    /// Build a self-update Commit, submit it, merge it once accepted.
    SelfUpdate,
}

/// The creator of one room, acting in it.
pub struct RoomSender {
    idx: u64,
    client: MimiClient,
    room: RoomId,
    operation: Operation,
    pregenerated: VecDeque<Vec<u8>>,
    sent: u64,
    broken: bool,
    /// The `k` of the message being sent, while its operation runs.
    in_flight: Option<u64>,
    /// The `k`s of the messages whose operation failed or was abandoned (the provider may
    /// still have accepted one it did not answer in time).
    unacknowledged: Vec<u64>,
    /// When the room's move to another shard was answered (the cluster scenario's split,
    /// `split::MovedFlags`): its messages offered from then on are [`MOVED_MESSAGE`]s.
    moved: Option<Arc<AtomicU64>>,
}

/// The operation of a message sent in a room that moved to another shard during the phase
/// (the cluster scenario's split), offered once it had.
pub const MOVED_MESSAGE: &str = "message_moved";

/// Which messages a sender's provider acknowledged: messages `0..attempted` (by their `k`,
/// [`message_text`]) but those in `unacknowledged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// The sender's room index.
    pub idx: u64,
    pub attempted: u64,
    /// Ascending.
    pub unacknowledged: Vec<u64>,
}

impl Acknowledged {
    /// Whether message `k` was acknowledged.
    pub fn contains(&self, k: u64) -> bool {
        k < self.attempted && self.unacknowledged.binary_search(&k).is_err()
    }

    /// How many messages were acknowledged.
    pub fn count(&self) -> u64 {
        self.attempted - self.unacknowledged.len() as u64
    }
}

/// Names of one phase's users and rooms: unique per run (`tag`) and per phase, so runs against
/// a long-lived target never collide with earlier ones.
#[derive(Debug, Clone)]
pub struct Naming {
    pub domain: String,
    pub tag: String,
    pub phase: usize,
}

impl Naming {
    fn stem(&self, room_idx: u64) -> String {
        format!("b{}p{}r{}", self.tag, self.phase, room_idx)
    }

    pub fn room(&self, room_idx: u64) -> anyhow::Result<RoomId> {
        let text = format!("mimi://{}/r/{}", self.domain, self.stem(room_idx));
        RoomId::parse(&text).with_context(|| format!("room id {text}"))
    }

    pub fn client(&self, room_idx: u64, member: u32) -> anyhow::Result<ClientId> {
        self.device(room_idx, member, 0)
    }

    /// Device `device` of member `member` of room `room_idx` (device 0 is
    /// [`Naming::client`]; further devices are linked to it).
    pub fn device(&self, room_idx: u64, member: u32, device: u32) -> anyhow::Result<ClientId> {
        let text = format!(
            "mimi://{}/d/{}m{}/d{}",
            self.domain,
            self.stem(room_idx),
            member,
            device
        );
        ClientId::parse(&text).with_context(|| format!("client id {text}"))
    }
}

impl Sender for RoomSender {
    fn availability(&self) -> Availability {
        if self.broken {
            Availability::Broken
        } else if self.operation == Operation::PregeneratedMessage && self.pregenerated.is_empty() {
            Availability::Exhausted
        } else {
            Availability::Ready
        }
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let outcome = match self.operation {
            Operation::PregeneratedMessage => {
                let k = self.next_message_k();
                let message = self.pregenerated.pop_front().ok_or(ErrorKind::Client)?;
                self.in_flight = Some(k);
                submitted(self.client.submit_raw(&self.room, message).await)
            }
            Operation::LiveMessage { text_bytes } => {
                let text = message_text(self.idx, self.sent, text_bytes);
                self.in_flight = Some(self.sent);
                self.sent += 1;
                submitted(self.client.send_text(&self.room, &text).await)
            }
            Operation::SelfUpdate => committed(self.client.self_update(&self.room).await),
        };
        if let Some(k) = self.in_flight.take() {
            if outcome.is_err() {
                self.unacknowledged.push(k);
            }
        }
        outcome
    }

    fn on_abandoned(&mut self) {
        if let Some(k) = self.in_flight.take() {
            self.unacknowledged.push(k);
        }
        // A dropped Commit may still win its epoch at the hub, while the client discards
        // nothing and keeps it pending: without reading its push stream the client cannot
        // learn the outcome (RFC 9420 §14), so it stops committing. A dropped message leaves
        // the client usable.
        if self.operation == Operation::SelfUpdate {
            self.broken = true;
        }
    }

    fn operation(&self, offered_at: Duration) -> &'static str {
        match self.operation {
            Operation::PregeneratedMessage | Operation::LiveMessage { .. }
                if self.moved.as_ref().is_some_and(|moved| {
                    u128::from(moved.load(Ordering::Relaxed)) <= offered_at.as_micros()
                }) =>
            {
                MOVED_MESSAGE
            }
            Operation::PregeneratedMessage | Operation::LiveMessage { .. } => "message",
            Operation::SelfUpdate => "commit",
        }
    }
}

/// What a phase needs from its senders besides [`Sender`]: messages encrypted in advance, and
/// closing the clients at the end.
pub trait PhaseSender: Sender + Sized {
    /// Messages encrypted in advance and not sent yet.
    fn pregenerated(&self) -> usize;

    /// Encrypts `counts[i]` messages of `text_bytes` for sender `i` (see [`pregenerate`]).
    fn pregenerate_all(
        senders: Vec<Self>,
        counts: &[u64],
        text_bytes: usize,
        threads: usize,
    ) -> impl Future<Output = anyhow::Result<Vec<Self>>> + Send;

    /// Closes every sender's connections.
    fn close_all(senders: Vec<Self>) -> impl Future<Output = ()> + Send;

    /// Members of the sender's room now, for scenarios that change it (commit-churn,
    /// join-storm).
    fn group_size(&self) -> Option<usize> {
        None
    }

    /// Which of its messages the provider acknowledged, for senders of numbered messages
    /// ([`message_text`]).
    fn acknowledged(&self) -> Option<Acknowledged> {
        None
    }
}

impl PhaseSender for RoomSender {
    fn pregenerated(&self) -> usize {
        self.pregenerated.len()
    }

    async fn pregenerate_all(
        senders: Vec<Self>,
        counts: &[u64],
        text_bytes: usize,
        threads: usize,
    ) -> anyhow::Result<Vec<Self>> {
        pregenerate(senders, counts, text_bytes, threads).await
    }

    async fn close_all(senders: Vec<Self>) {
        close_all(senders).await
    }

    fn acknowledged(&self) -> Option<Acknowledged> {
        (self.operation != Operation::SelfUpdate).then(|| RoomSender::acknowledged(self))
    }
}

impl RoomSender {
    /// The creator `client` of `room` (the `idx`-th of its phase), performing `operation`.
    pub fn new(idx: u64, client: MimiClient, room: RoomId, operation: Operation) -> RoomSender {
        RoomSender {
            idx,
            client,
            room,
            operation,
            pregenerated: VecDeque::new(),
            sent: 0,
            broken: false,
            in_flight: None,
            unacknowledged: Vec::new(),
            moved: None,
        }
    }

    /// Counts the sender's messages offered from the time `moved` names on as
    /// [`MOVED_MESSAGE`]s.
    pub fn watch_move(&mut self, moved: Arc<AtomicU64>) {
        self.moved = Some(moved);
    }

    /// Which of its messages the provider acknowledged so far (meaningless for Commits).
    pub fn acknowledged(&self) -> Acknowledged {
        Acknowledged {
            idx: self.idx,
            attempted: self.next_message_k(),
            // Pushed in the order sent, so ascending.
            unacknowledged: self.unacknowledged.clone(),
        }
    }

    /// The sender's place in its phase (its room index).
    pub fn idx(&self) -> u64 {
        self.idx
    }

    /// The `k` of the message the next operation sends ([`message_text`]`(idx, k, len)`).
    pub fn next_message_k(&self) -> u64 {
        self.sent - self.pregenerated.len() as u64
    }

    /// The encrypted message the next operation submits, when messages were encrypted in
    /// advance.
    pub fn next_pregenerated(&self) -> Option<&[u8]> {
        self.pregenerated.front().map(Vec::as_slice)
    }

    /// The room the sender acts in.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The sender's client.
    pub fn client(&self) -> &MimiClient {
        &self.client
    }

    /// The sender's client, e.g. to read its push stream between its operations.
    pub fn client_mut(&mut self) -> &mut MimiClient {
        &mut self.client
    }

    /// Marks the sender unusable for the rest of the phase (a Commit of unknown fate).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }

    /// Closes the client's connection.
    pub(crate) async fn close(self) {
        // A slow close only delays the end of the run; the report is already complete.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.close()).await;
    }
}

fn submitted(result: Result<SubmitResult, ClientError>) -> Result<(), ErrorKind> {
    match result.map_err(|e| error_kind(&e))? {
        SubmitResult::Accepted { .. } => Ok(()),
        SubmitResult::NotAllowed { .. } => Err(ErrorKind::NotAllowed),
        SubmitResult::EpochTooOld { .. } => Err(ErrorKind::EpochTooOld),
    }
}

fn committed(result: Result<UpdateResult, ClientError>) -> Result<(), ErrorKind> {
    match result.map_err(|e| error_kind(&e))? {
        UpdateResult::Accepted { .. } => Ok(()),
        UpdateResult::WrongEpoch { .. } => Err(ErrorKind::WrongEpoch),
        UpdateResult::NotAllowed { .. } => Err(ErrorKind::NotAllowed),
        UpdateResult::InvalidProposal { .. } => Err(ErrorKind::InvalidProposal),
    }
}

pub(crate) fn error_kind(error: &ClientError) -> ErrorKind {
    match error {
        ClientError::Transport(_) => ErrorKind::Transport,
        ClientError::Status { status, .. } => ErrorKind::Status(status.as_u16()),
        ClientError::Wire(_) => ErrorKind::Malformed,
        ClientError::Mls(_) => ErrorKind::Mls,
        ClientError::Policy(_) => ErrorKind::Policy,
        ClientError::NotInRoom(_) => ErrorKind::NotInRoom,
        ClientError::NoStream | ClientError::StreamEnded | ClientError::NoKeyPackages(_) => {
            ErrorKind::Client
        }
    }
}

/// The text of message `k` of sender `idx`: unique, exactly `len` bytes (ASCII).
pub fn message_text(idx: u64, k: u64, len: usize) -> String {
    let mut text = format!("{idx}:{k}:");
    text.truncate(len);
    while text.len() < len {
        text.push('x');
    }
    text
}

/// Sets up `rooms` rooms of `members` members (`setup_concurrency` at a time) and returns
/// their creators as senders performing `operation`, in room order.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_rooms(
    endpoint: &Endpoint,
    naming: &Naming,
    rooms: u32,
    members: u32,
    operation: Operation,
    setup_concurrency: usize,
) -> anyhow::Result<Vec<RoomSender>> {
    set_up_each_room(
        rooms,
        setup_concurrency,
        ROOM_SETUP_TIMEOUT,
        |room_idx| async move {
            let (client, room) = set_up_room(endpoint, naming, room_idx, members).await?;
            Ok(RoomSender::new(room_idx, client, room, operation))
        },
    )
    .await
}

/// Runs `set_up(room)` for the rooms `0..rooms`, `concurrency` at a time, each within
/// `timeout`, and returns what they made in room order; the first failure (or timeout) fails
/// it, naming its room.
///
/// Cancel safety: not safe; what was set up so far is dropped.
pub(crate) async fn set_up_each_room<T, F, Fut>(
    rooms: u32,
    concurrency: usize,
    timeout: Duration,
    set_up: F,
) -> anyhow::Result<Vec<T>>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut done: Vec<(u64, T)> = stream::iter(0..u64::from(rooms))
        .map(|room_idx| {
            let made = tokio::time::timeout(timeout, set_up(room_idx));
            async move {
                let made = made
                    .await
                    .with_context(|| format!("room {room_idx}: set-up timed out"))?
                    .with_context(|| format!("setting up room {room_idx}"))?;
                anyhow::Ok((room_idx, made))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    done.sort_by_key(|(room_idx, _)| *room_idx);
    Ok(done.into_iter().map(|(_, made)| made).collect())
}

async fn set_up_room(
    endpoint: &Endpoint,
    naming: &Naming,
    room_idx: u64,
    members: u32,
) -> anyhow::Result<(MimiClient, RoomId)> {
    let AddedRoom {
        room,
        creator,
        joiners,
    } = create_and_add(endpoint, naming, room_idx, members).await?;
    for mut joiner in joiners {
        wait_for_welcome(&mut joiner, &room).await?;
        joiner.close().await;
    }
    Ok((creator, room))
}

/// A room as [`create_and_add`] leaves it: created by its creator, the other members added by
/// one Commit but not joined yet (their Welcomes wait on their open push streams).
pub(crate) struct AddedRoom {
    pub room: RoomId,
    pub creator: MimiClient,
    /// Members 1.., in member order.
    pub joiners: Vec<MimiClient>,
}

/// Room `room_idx` of `members` members, set up as a client would (MIMI.md §6.1, §6.2): the
/// creator registers; every other member registers, publishes one KeyPackage and opens its
/// push stream; the creator creates the room and adds them all in one Commit.
pub(crate) async fn create_and_add(
    endpoint: &Endpoint,
    naming: &Naming,
    room_idx: u64,
    members: u32,
) -> anyhow::Result<AddedRoom> {
    let room = naming.room(room_idx)?;
    let mut creator = MimiClient::register(endpoint.clone(), naming.client(room_idx, 0)?)
        .await
        .context("registering the creator")?;
    let mut joiners = Vec::new();
    for member in 1..members {
        let mut client = MimiClient::register(endpoint.clone(), naming.client(room_idx, member)?)
            .await
            .with_context(|| format!("registering member {member}"))?;
        client
            .publish_key_packages(1)
            .await
            .with_context(|| format!("publishing member {member}'s KeyPackage"))?;
        client
            .connect_stream()
            .await
            .with_context(|| format!("opening member {member}'s push stream"))?;
        joiners.push(client);
    }
    creator
        .create_room(&room)
        .await
        .context("creating the room")?;
    let users: Vec<UserId> = joiners.iter().map(|c| c.user()).collect();
    add_users(&mut creator, &room, &users, "the members").await?;
    Ok(AddedRoom {
        room,
        creator,
        joiners,
    })
}

/// `creator` adds `users` (`who`, for the error) to `room` in one Commit (protocol-06 §5.1,
/// §5.2: their KeyPackages claimed through keyMaterial); fails unless the hub accepts it.
/// Adding nobody does nothing.
pub(crate) async fn add_users(
    creator: &mut MimiClient,
    room: &RoomId,
    users: &[UserId],
    who: &str,
) -> anyhow::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    match creator
        .add_users(room, users)
        .await
        .with_context(|| format!("adding {who}"))?
    {
        UpdateResult::Accepted { .. } => Ok(()),
        other => bail!("the hub refused to add {who}: {other:?}"),
    }
}

pub(crate) async fn wait_for_welcome(client: &mut MimiClient, room: &RoomId) -> anyhow::Result<()> {
    for _ in 0..MAX_EVENTS_BEFORE_WELCOME {
        match client
            .next_event(JOIN_WAIT)
            .await
            .with_context(|| format!("{} reading its push stream", client.id()))?
        {
            Some(Event::Joined { room: joined, .. }) if joined == *room => return Ok(()),
            Some(_) => continue,
            None => bail!("{} got no Welcome within {JOIN_WAIT:?}", client.id()),
        }
    }
    bail!(
        "{} got {MAX_EVENTS_BEFORE_WELCOME} events and no Welcome",
        client.id()
    )
}

/// Encrypts `counts[i]` messages of `text_bytes` for sender `i` at its room's current epoch,
/// on `threads` blocking threads, before the timed phase.
///
/// Cancel safety: not safe; senders in a blocking task are lost if the future is dropped.
pub async fn pregenerate(
    senders: Vec<RoomSender>,
    counts: &[u64],
    text_bytes: usize,
    threads: usize,
) -> anyhow::Result<Vec<RoomSender>> {
    anyhow::ensure!(
        senders.len() == counts.len(),
        "one count per sender is needed"
    );
    let total: u64 = counts.iter().sum();
    if total > MAX_PREGENERATED {
        bail!(
            "{total} messages to encrypt in advance exceed the bound of {MAX_PREGENERATED}: \
             lower --rate, --duration or --max-ops, or use --encryption live"
        );
    }
    let threads = threads.max(1);
    let mut chunks: Vec<Vec<(RoomSender, u64)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, pair) in senders.into_iter().zip(counts.iter().copied()).enumerate() {
        chunks[i % threads].push(pair);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in chunks {
        tasks.spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(mut sender, count)| {
                    for k in 0..count {
                        let text = message_text(sender.idx, k, text_bytes);
                        let message = sender
                            .client
                            .prepare_text(&sender.room, &text)
                            .with_context(|| {
                                format!("encrypting message {k} of {}", sender.room)
                            })?;
                        sender.pregenerated.push_back(message);
                    }
                    sender.sent = count;
                    Ok(sender)
                })
                .collect::<anyhow::Result<Vec<RoomSender>>>()
        });
    }
    let mut senders = Vec::new();
    while let Some(done) = tasks.join_next().await {
        senders.extend(done.context("an encryption task panicked")??);
    }
    senders.sort_by_key(|s| s.idx);
    Ok(senders)
}

/// Closes every sender's connection, `CLOSE_CONCURRENCY` at a time.
///
/// Cancel safety: safe; unclosed connections are dropped, which the server times out.
pub async fn close_all(senders: Vec<RoomSender>) {
    stream::iter(senders)
        .for_each_concurrent(CLOSE_CONCURRENCY, RoomSender::close)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_texts_are_unique_and_exactly_sized() {
        assert_eq!(message_text(3, 17, 10), "3:17:xxxxx");
        assert_eq!(message_text(3, 17, 2), "3:");
        assert_ne!(message_text(1, 23, 64), message_text(12, 3, 64));
        assert_eq!(message_text(99, 12345, 256).len(), 256);
    }

    #[test]
    fn acknowledged_messages_are_those_attempted_but_the_unanswered() {
        let acked = Acknowledged {
            idx: 4,
            attempted: 6,
            unacknowledged: vec![1, 4],
        };
        let which: Vec<u64> = (0..8).filter(|&k| acked.contains(k)).collect();
        assert_eq!(which, [0, 2, 3, 5]);
        assert_eq!(acked.count(), 4);
    }

    #[test]
    fn names_are_valid_mimi_ids_unique_per_phase() {
        let naming = Naming {
            domain: "localhost".into(),
            tag: "19a2f".into(),
            phase: 1,
        };
        let room = naming.room(7).expect("valid room id");
        assert_eq!(room.as_str(), "mimi://localhost/r/b19a2fp1r7");
        let client = naming.client(7, 3).expect("valid client id");
        assert_eq!(client.as_str(), "mimi://localhost/d/b19a2fp1r7m3/d0");
        assert_eq!(client.user().as_str(), "mimi://localhost/u/b19a2fp1r7m3");
        let other_phase = Naming { phase: 2, ..naming };
        assert_ne!(other_phase.room(7).expect("valid"), room);
    }
}
