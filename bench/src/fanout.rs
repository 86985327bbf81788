//! The large-room-fanout scenario: a few rooms of 1,000+ members spread over two or three
//! providers (a.example, the rooms' hub, and b.example, c.example as followers), every member
//! attached by its push stream. One operation is one message, counted when **every** attached
//! member, at every provider, has been pushed it; the phase reports recipient deliveries per
//! second (the goal: 250,000 per node).
//!
//! The members are [`crate::light`] members: real clients with real KeyPackages, added by a
//! real Commit, reading their real push streams, but without an MLS group: they count the
//! messages they are pushed instead of decrypting them (a 1,000-member room would otherwise
//! measure the generator's openmls, 1,000 decryptions per message, and 1,000 Welcomes with a
//! 1,000-leaf tree to verify at set-up). Each recognises a message by the hash of its MLS
//! ciphertext, which is byte for byte what the sender submitted, at the hub and at followers.
//!
//! Set-up of a room (MIMI.md §6.1, §6.2): the creator (a full client at the hub) creates the
//! room; the members register at their providers (member `j` at provider `j mod P`), publish
//! one KeyPackage each and open their push streams; the creator claims their KeyPackages
//! (through the hub, which proxies keyMaterial to b and c, MIMI.md §6.3) and adds them
//! [`ADD_BATCH`] per Commit; each member's provider routes it its Welcome. With `--senders
//! S > 1`, S - 1 more full clients at the hub are added last, join from their Welcome and
//! detach their streams: they only send. One message per sender is in flight.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use mimid_actors::ids::UserId;
use mimid_node::client::{Endpoint, MimiClient};
use mimid_node::h3::H3ClientError;
use mimid_node::wire::client::{DeliveredBody, FrameDecoder};
use mimid_node::wire::Limits;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::light::{Connection, LightMember};
use crate::load::{Availability, Sender};
use crate::scenario::{
    add_users, pregenerate, wait_for_welcome, Naming, Operation, PhaseSender, RoomSender,
};
use crate::stats::ErrorKind;

/// A push stream's body, as it arrives.
type Chunks = mpsc::Receiver<Result<Bytes, H3ClientError>>;

/// Members added per Commit at set-up.
pub const ADD_BATCH: usize = 100;
/// Time allowed for the members' Welcomes to arrive after the last add.
const WELCOME_DEADLINE: Duration = Duration::from_secs(120);
/// How long a reader waits for its stream before checking whether to stop.
const RECEIVE_POLL: Duration = Duration::from_millis(200);
/// Interval of the checks while waiting for Welcomes.
const POLL: Duration = Duration::from_millis(20);
/// Time allowed to close one connection at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections closed concurrently at the end.
const CLOSE_CONCURRENCY: usize = 64;

/// A provider of the scenario: its domain and how to reach it.
#[derive(Clone)]
pub struct Site {
    pub domain: String,
    pub endpoint: Endpoint,
}

/// Messages in flight, by the hash of their ciphertext: how many recipients have yet to be
/// pushed each, and whom to tell when none is left.
#[derive(Default)]
pub struct Tracker {
    pending: Mutex<HashMap<u64, Pending>>,
}

struct Pending {
    remaining: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Tracker {
    /// Starts waiting for `recipients` deliveries of the message hashed `key`.
    fn expect(&self, key: u64, recipients: u64) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        self.pending.lock().insert(
            key,
            Pending {
                remaining: recipients,
                done: Some(done),
            },
        );
        wait
    }

    /// One recipient was pushed the message hashed `key` (ignored if nobody waits for it).
    fn delivered(&self, key: u64) {
        let mut pending = self.pending.lock();
        let Some(entry) = pending.get_mut(&key) else {
            return;
        };
        entry.remaining = entry.remaining.saturating_sub(1);
        if entry.remaining == 0 {
            if let Some(done) = pending.remove(&key).and_then(|mut e| e.done.take()) {
                // The waiter may have given up (timeout); nothing to tell then.
                let _ = done.send(());
            }
        }
    }

    fn forget(&self, key: u64) {
        self.pending.lock().remove(&key);
    }
}

/// The key of a message: a hash of its MLS ciphertext.
fn message_key(message: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    message.hash(&mut hasher);
    hasher.finish()
}

/// One sender of a large room.
pub struct FanoutSender {
    sender: RoomSender,
    tracker: Arc<Tracker>,
    recipients: u64,
    /// The message of the operation in flight.
    pending: Option<u64>,
}

impl Sender for FanoutSender {
    fn availability(&self) -> Availability {
        self.sender.availability()
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let key = message_key(self.sender.next_pregenerated().ok_or(ErrorKind::Client)?);
        let delivered = self.tracker.expect(key, self.recipients);
        self.pending = Some(key);
        if let Err(error) = self.sender.run().await {
            self.tracker.forget(key);
            self.pending = None;
            return Err(error);
        }
        let outcome = delivered.await.map_err(|_| ErrorKind::Delivery);
        self.pending = None;
        outcome
    }

    fn on_abandoned(&mut self) {
        // The message may still reach everyone; nobody waits for it any more.
        if let Some(key) = self.pending.take() {
            self.tracker.forget(key);
        }
    }

    fn operation(&self, _offered_at: Duration) -> &'static str {
        "message"
    }
}

impl PhaseSender for FanoutSender {
    fn pregenerated(&self) -> usize {
        self.sender.pregenerated()
    }

    async fn pregenerate_all(
        senders: Vec<Self>,
        counts: &[u64],
        text_bytes: usize,
        threads: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let mut inner = Vec::with_capacity(senders.len());
        let mut rest = Vec::with_capacity(senders.len());
        for sender in senders {
            inner.push(sender.sender);
            rest.push((sender.tracker, sender.recipients));
        }
        // Both lists are in sender order: senders come sorted, and so does the result.
        let inner = pregenerate(inner, counts, text_bytes, threads).await?;
        Ok(inner
            .into_iter()
            .zip(rest)
            .map(|(sender, (tracker, recipients))| FanoutSender {
                sender,
                tracker,
                recipients,
                pending: None,
            })
            .collect())
    }

    async fn close_all(senders: Vec<Self>) {
        crate::scenario::close_all(senders.into_iter().map(|s| s.sender).collect()).await;
    }
}

/// What the members were pushed during a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FanoutReport {
    /// Recipients of each message (members attached by their streams, the sender excluded).
    pub recipients_per_message: u64,
    /// Members reading their push streams.
    pub receivers: u64,
    /// Messages pushed to recipients during the timed phase (counted by the recipients, or
    /// `ops_ok × recipients_per_message` where each operation awaits every recipient).
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Per provider, where members are spread over several.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub deliveries_by_provider: BTreeMap<String, u64>,
    /// Members per provider.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub receivers_by_provider: BTreeMap<String, u64>,
    /// Push streams that ended or failed before the end.
    pub streams_lost: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Counters shared by the readers.
struct Counts {
    delivered: Vec<AtomicU64>,
    welcomes: AtomicU64,
    lost: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// One task per light member, reading its push stream until stopped.
pub struct LightReceivers {
    tasks: JoinSet<()>,
    connections: Vec<Connection>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    domains: Vec<String>,
    receivers_by_provider: Vec<u64>,
}

impl LightReceivers {
    fn new(domains: Vec<String>) -> LightReceivers {
        LightReceivers {
            tasks: JoinSet::new(),
            connections: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Counts {
                delivered: domains.iter().map(|_| AtomicU64::new(0)).collect(),
                welcomes: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                first_error: Mutex::new(None),
            }),
            receivers_by_provider: vec![0; domains.len()],
            domains,
        }
    }

    fn start(&mut self, site: usize, id: String, chunks: Chunks, tracker: Arc<Tracker>) {
        self.receivers_by_provider[site] += 1;
        self.tasks.spawn(read_stream(
            id,
            chunks,
            site,
            self.counts.clone(),
            tracker,
            self.stop.clone(),
        ));
    }

    /// Messages pushed to the members so far, per provider.
    pub fn delivered(&self) -> Vec<u64> {
        self.counts
            .delivered
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    fn welcomes(&self) -> u64 {
        self.counts.welcomes.load(Ordering::Relaxed)
    }

    fn lost(&self) -> u64 {
        self.counts.lost.load(Ordering::Relaxed)
    }

    /// Members reading.
    pub fn count(&self) -> u64 {
        self.receivers_by_provider.iter().sum()
    }

    /// The report of a phase from the delivery counts taken before it and its length.
    pub fn report(
        &self,
        before: &[u64],
        recipients_per_message: u64,
        elapsed_s: f64,
    ) -> FanoutReport {
        let after = self.delivered();
        let by_provider: BTreeMap<String, u64> = self
            .domains
            .iter()
            .zip(after.iter().zip(before))
            .map(|(domain, (after, before))| (domain.clone(), after.saturating_sub(*before)))
            .collect();
        let deliveries: u64 = by_provider.values().sum();
        FanoutReport {
            recipients_per_message,
            receivers: self.count(),
            deliveries,
            deliveries_per_s: per_second(deliveries, elapsed_s),
            deliveries_by_provider: by_provider,
            receivers_by_provider: self
                .domains
                .iter()
                .cloned()
                .zip(self.receivers_by_provider.iter().copied())
                .collect(),
            streams_lost: self.lost(),
            first_error: self.counts.first_error.lock().clone(),
        }
    }

    /// Stops the readers and closes the members' connections.
    ///
    /// Cancel safety: not safe; connections not yet closed are dropped.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        stream::iter(self.connections)
            .for_each_concurrent(CLOSE_CONCURRENCY, |connection| async move {
                // A slow close only delays the end of the run.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
            })
            .await;
    }
}

/// Deliveries per second, to one decimal.
pub fn per_second(deliveries: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        (deliveries as f64 / elapsed_s * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Reads one member's push stream: Welcomes and application messages are counted, each
/// message reported to `tracker`; other items are ignored.
async fn read_stream(
    id: String,
    mut chunks: Chunks,
    site: usize,
    counts: Arc<Counts>,
    tracker: Arc<Tracker>,
    stop: Arc<AtomicBool>,
) {
    let limits = Limits::default();
    let mut decoder = FrameDecoder::new(limits.max_body_len.saturating_mul(2));
    let fail = |error: String| {
        counts.lost.fetch_add(1, Ordering::Relaxed);
        counts
            .first_error
            .lock()
            .get_or_insert_with(|| format!("{id}: {error}"));
    };
    // Bounded by `stop`; each wait is at most RECEIVE_POLL.
    while !stop.load(Ordering::Relaxed) {
        let chunk = match tokio::time::timeout(RECEIVE_POLL, chunks.recv()).await {
            Err(_) => continue,
            Ok(None) => return fail("the push stream ended".into()),
            Ok(Some(Err(error))) => return fail(format!("push stream: {error}")),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let items = match decoder.feed_items(&chunk, &limits) {
            Ok(items) => items,
            Err(error) => return fail(format!("push stream framing: {error}")),
        };
        for item in items {
            match item.body {
                DeliveredBody::Welcome { .. } => {
                    counts.welcomes.fetch_add(1, Ordering::Relaxed);
                }
                DeliveredBody::Application { message, .. } => {
                    counts.delivered[site].fetch_add(1, Ordering::Relaxed);
                    tracker.delivered(message_key(message.bytes()));
                }
                DeliveredBody::Commit { .. } | DeliveredBody::Proposals { .. } => {}
            }
        }
    }
}

/// Light members registered over one connection, their streams open.
struct Registered {
    site: usize,
    connection: Connection,
    members: Vec<(LightMember, Chunks)>,
}

/// What [`set_up_large_rooms`] needs.
pub struct LargeRooms<'a> {
    /// The providers, the rooms' hub first.
    pub sites: &'a [Site],
    /// Naming of the phase at the hub; members at other providers get its tag with their
    /// provider's domain.
    pub naming: &'a Naming,
    pub rooms: u32,
    /// Members per room, the senders included.
    pub members: u32,
    /// Senders per room (the creator and `senders - 1` more clients at the hub).
    pub senders: u32,
    /// Light members sharing one QUIC connection.
    pub members_per_connection: u32,
    pub setup_concurrency: usize,
    /// Progress lines.
    pub progress: &'a (dyn Fn(&str) + Sync),
}

/// Sets up the rooms one after another and returns their senders (room by room, the creator
/// first) and the members' readers, already reading.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_large_rooms(
    plan: &LargeRooms<'_>,
) -> anyhow::Result<(Vec<FanoutSender>, LightReceivers)> {
    anyhow::ensure!(!plan.sites.is_empty(), "no provider");
    anyhow::ensure!(
        plan.senders >= 1 && plan.members > plan.senders,
        "a room needs at least one sender and one recipient"
    );
    let tracker = Arc::new(Tracker::default());
    let mut receivers = LightReceivers::new(plan.sites.iter().map(|s| s.domain.clone()).collect());
    let mut senders = Vec::new();
    for room_idx in 0..u64::from(plan.rooms) {
        let room_senders = set_up_large_room(plan, room_idx, &tracker, &mut receivers)
            .await
            .with_context(|| format!("setting up large room {room_idx}"))?;
        senders.extend(room_senders);
    }
    Ok((senders, receivers))
}

async fn set_up_large_room(
    plan: &LargeRooms<'_>,
    room_idx: u64,
    tracker: &Arc<Tracker>,
    receivers: &mut LightReceivers,
) -> anyhow::Result<Vec<FanoutSender>> {
    let hub = &plan.sites[0];
    let room = plan.naming.room(room_idx)?;
    let recipients = u64::from(plan.members - plan.senders);
    let started = Instant::now();
    let mut creator = MimiClient::register(hub.endpoint.clone(), plan.naming.client(room_idx, 0)?)
        .await
        .context("registering the creator")?;
    creator
        .create_room(&room)
        .await
        .context("creating the room")?;

    // The recipients: member j (1-based) at provider j mod P, registered over shared
    // connections, each publishing one KeyPackage and opening its stream.
    let namings: Vec<Naming> = plan
        .sites
        .iter()
        .map(|site| Naming {
            domain: site.domain.clone(),
            ..plan.naming.clone()
        })
        .collect();
    let per_connection = plan.members_per_connection.max(1) as usize;
    let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
    for (site, _) in plan.sites.iter().enumerate() {
        let members: Vec<u32> = (1..=recipients as u32)
            .filter(|j| *j as usize % plan.sites.len() == site)
            .collect();
        for chunk in members.chunks(per_connection) {
            groups.push((site, chunk.to_vec()));
        }
    }
    let welcomes_before = receivers.welcomes();
    let registered: Vec<Registered> = stream::iter(groups)
        .map(|(site, members)| {
            let namings = &namings;
            async move {
                let connection = Connection::open(&plan.sites[site].endpoint).await?;
                let mut ready = Vec::with_capacity(members.len());
                for j in members {
                    let id = namings[site].client(room_idx, j)?;
                    let member = LightMember::register(&connection, id).await?;
                    member.publish_key_packages(1).await?;
                    let chunks = member.open_stream().await?;
                    ready.push((member, chunks));
                }
                Ok::<_, anyhow::Error>(Registered {
                    site,
                    connection,
                    members: ready,
                })
            }
        })
        .buffer_unordered(plan.setup_concurrency)
        .try_collect()
        .await?;
    let mut users: Vec<UserId> = Vec::with_capacity(recipients as usize);
    for Registered {
        site,
        connection,
        members,
    } in registered
    {
        for (member, chunks) in members {
            users.push(member.id().user());
            receivers.start(site, member.id().to_string(), chunks, tracker.clone());
        }
        receivers.connections.push(connection);
    }
    users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    (plan.progress)(&format!(
        "room {room_idx}: {recipients} members registered at {} providers in {:.1} s; adding \
         them {ADD_BATCH} per Commit",
        plan.sites.len(),
        started.elapsed().as_secs_f64()
    ));

    let adding = Instant::now();
    for batch in users.chunks(ADD_BATCH) {
        add_users(&mut creator, &room, batch, "members").await?;
    }
    let deadline = Instant::now() + WELCOME_DEADLINE;
    // Bounded by WELCOME_DEADLINE.
    while receivers.welcomes() - welcomes_before < recipients {
        if Instant::now() >= deadline {
            bail!(
                "only {} of {recipients} members got their Welcome within {WELCOME_DEADLINE:?} \
                 ({} streams lost: {:?})",
                receivers.welcomes() - welcomes_before,
                receivers.lost(),
                receivers.counts.first_error.lock().clone()
            );
        }
        if receivers.lost() > 0 {
            bail!(
                "a member's push stream failed during set-up: {:?}",
                receivers.counts.first_error.lock().clone()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    (plan.progress)(&format!(
        "room {room_idx}: {recipients} members added, every Welcome delivered, in {:.1} s",
        adding.elapsed().as_secs_f64()
    ));

    // More senders at the hub, added last (so they join at the final epoch), then detached.
    let mut extra = Vec::new();
    for s in 1..plan.senders {
        let member = recipients as u32 + s;
        let mut client =
            MimiClient::register(hub.endpoint.clone(), plan.naming.client(room_idx, member)?)
                .await
                .context("registering a sender")?;
        client
            .publish_key_packages(1)
            .await
            .context("publishing a sender's KeyPackage")?;
        client
            .connect_stream()
            .await
            .context("opening a sender's push stream")?;
        extra.push(client);
    }
    if !extra.is_empty() {
        let users: Vec<UserId> = extra.iter().map(|c| c.user()).collect();
        add_users(&mut creator, &room, &users, "the senders").await?;
        for client in &mut extra {
            wait_for_welcome(client, &room).await?;
            client.disconnect_stream();
        }
    }
    let n = u64::from(plan.senders);
    let mut senders = vec![FanoutSender {
        sender: RoomSender::new(
            room_idx * n,
            creator,
            room.clone(),
            Operation::PregeneratedMessage,
        ),
        tracker: tracker.clone(),
        recipients,
        pending: None,
    }];
    for (s, client) in extra.into_iter().enumerate() {
        senders.push(FanoutSender {
            sender: RoomSender::new(
                room_idx * n + 1 + s as u64,
                client,
                room.clone(),
                Operation::PregeneratedMessage,
            ),
            tracker: tracker.clone(),
            recipients,
            pending: None,
        });
    }
    Ok(senders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracker_answers_once_every_recipient_has_the_message() {
        let tracker = Tracker::default();
        let key = message_key(b"ciphertext");
        let mut done = tracker.expect(key, 3);
        tracker.delivered(key);
        tracker.delivered(message_key(b"another"));
        tracker.delivered(key);
        assert!(done.try_recv().is_err(), "one recipient is missing");
        tracker.delivered(key);
        assert!(done.try_recv().is_ok());
        tracker.delivered(key); // late duplicates are ignored
        assert!(tracker.pending.lock().is_empty());
        let _forgotten = tracker.expect(key, 1);
        tracker.forget(key);
        assert!(tracker.pending.lock().is_empty());
    }

    #[test]
    fn deliveries_per_second_are_rounded() {
        assert_eq!(per_second(1000, 3.0), 333.3);
        assert_eq!(per_second(5, 0.0), 0.0);
    }
}
