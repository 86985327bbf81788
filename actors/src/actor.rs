//! The actix shells: `RoomActor` (one per active room) and the `Router` that maps room ids to
//! them (STYLE.md P3, P6).
//!
//! A room actor owns a `RoomCore` and does IO only: it proposes the room's requests to the
//! room's shard and pushes what the core says to the local client streams. Ordering is not
//! decided here: the Raft log orders proposals and apply decides verdicts (STYLE.md P5), so a
//! handler need not block the actor while its proposal is in flight, and several proposals of
//! one room are pipelined. The actor is the single place that reads the room log for
//! fan-out, so each item reaches each attached stream once, in log order.
//!
//! Bounds: each room admits at most `room_mailbox` requests in flight (a semaphore in the
//! router; beyond it the caller gets `HubError::Busy`); each client stream is a bounded
//! channel, and a full stream is closed rather than buffered (the client resumes from its
//! acknowledged cursor). An actor with no attached stream and nothing in flight stops after
//! `idle_room`; its state stays in the shard.
//!
//! The actor of a hosted room also fans the room out to follower providers: its `FanoutCore`
//! says what to send, the shell sends it through the node's [`Federation`] and records each
//! follower's progress through Raft (`Command::FanoutDelivered`). A mirrored room (a room
//! hosted elsewhere) only delivers to local streams.
//!
//! Room moves (`crate::room_move`, `hub::split`): a proposal refused because its room is
//! frozen for a move or has left the shard is proposed again where the room is then
//! (`hub::Proposer::propose_following`). The actor's proposals keep their order across that:
//! each takes a [`MoveTicket`] of the room's [`RoomOrder`] in mailbox order, and a proposal
//! is sent to a shard only when every earlier one still unanswered was sent to that same
//! shard (so it is queued behind them there); a refused one waits to be sent again, and so
//! does every later one, until it is. Without moves every proposal goes to the same shard at
//! once, as before.
//!
//! In a cluster, every node runs actors for the rooms its clients use, and each delivers to
//! the streams connected to its node from the local replica's applied log. Fan-out to follower
//! providers and the cursor records are the duty of the node leading the room's shard alone
//! (so a follower is not sent each item by every node); a node that gains the leadership
//! resumes from the durable cursors (`hub::Hub::start`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mimid_cluster::ShardId;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::command::{Command, HandshakeBundle, Submitter};
use crate::hub::{Busy, HubError, Proposer};
use crate::ids::{ClientId, RoomId, UserId};
use crate::room::core::{Push, RoomCore, RoomRef, RoomView};
use crate::room::fanout::{FanoutCore, FanoutLag, FanoutLimits};
use crate::room::log::LogItem;
use crate::shard::{ApplyOutput, Shards};

/// How long acknowledged fan-out cursors wait before they are recorded through Raft, so that
/// the notifies acknowledged meanwhile share one entry per follower.
const FANOUT_RECORD_DELAY: Duration = Duration::from_millis(50);

/// One item delivered to a client's push stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub room: RoomId,
    pub item: LogItem,
    /// The Frank to deliver with the item when the node that produced the delivery computed
    /// it already (a delivery relayed from a node holding the room's shard, which this node
    /// does not); `None`: the stream computes it from the local replica, if any.
    pub frank: Option<Vec<u8>>,
}

/// Counters of the actor layer that the node exports as metrics.
#[derive(Debug)]
pub struct ActorMetrics {
    /// Push streams closed because their bounded queue was full (`limits.stream_queue`).
    pub stream_overflows: AtomicU64,
    /// Notifies a follower acknowledged (201).
    pub notifies_delivered: AtomicU64,
    /// Notifies that failed and will be retried.
    pub notifies_failed: AtomicU64,
    /// (Hosted room, follower provider) pairs whose last notify failed: they are retrying.
    pub rooms_behind: AtomicU64,
    /// Requests queued at a room (in its actor's mailbox or proposed and not yet answered;
    /// at most `room_mailbox`), sampled as each request is admitted, itself included.
    pub room_mailbox_depth: mimid_cluster::Histogram,
    /// How far behind its follower providers each hosted room is, as its actor last saw it.
    pub fanout_lag: FanoutLags,
    /// Rooms this node moved to a split shard (`hub::split`: the coordinator's moves and the
    /// moves it resumed), each counted once the room was released from its source shard.
    pub rooms_moved: AtomicU64,
    /// Room moves this node started or resumed that ended in an error (a refusal, or a step
    /// that stayed unavailable); a move left frozen is finished by the source shard's leader.
    pub room_moves_failed: AtomicU64,
    /// Room commands refused because their room was moving (`ApplyOutput::RoomMoving`: each
    /// wait) or had moved (`ApplyOutput::RoomMoved`: each hop), and so sent again
    /// (`hub::Proposer::propose_following`).
    pub move_retries: AtomicU64,
    /// Microseconds from a room's freeze to its release, per room moved
    /// ([`mimid_cluster::PROPOSAL_MICROS_BOUNDS`]: 100 µs doubling to about 13 s); its sum is
    /// the total move time.
    pub room_move_micros: mimid_cluster::Histogram,
}

impl Default for ActorMetrics {
    fn default() -> Self {
        ActorMetrics {
            stream_overflows: AtomicU64::new(0),
            notifies_delivered: AtomicU64::new(0),
            notifies_failed: AtomicU64::new(0),
            rooms_behind: AtomicU64::new(0),
            room_mailbox_depth: mimid_cluster::Histogram::new(&mimid_cluster::DEPTH_BOUNDS),
            fanout_lag: FanoutLags::default(),
            rooms_moved: AtomicU64::new(0),
            room_moves_failed: AtomicU64::new(0),
            move_retries: AtomicU64::new(0),
            room_move_micros: mimid_cluster::Histogram::new(&mimid_cluster::PROPOSAL_MICROS_BOUNDS),
        }
    }
}

/// The fan-out lag of hosted rooms ([`FanoutCore::lag`]) by room, as each room's actor last
/// reported it: only rooms with a follower behind, on the node leading the room's shard (the
/// node that does the room's fan-out). An actor reports when it pumps the fan-out (each apply,
/// each notify answered, each retry) and clears its room when it stops or loses the lead.
#[derive(Debug, Default)]
pub struct FanoutLags {
    rooms: Mutex<HashMap<RoomId, BTreeMap<String, FanoutLag>>>,
}

impl FanoutLags {
    /// Replaces what `room` reported; empty clears it.
    fn report(&self, room: &RoomId, lags: BTreeMap<String, FanoutLag>) {
        let mut rooms = self.rooms.lock();
        if lags.is_empty() {
            rooms.remove(room);
        } else {
            rooms.insert(room.clone(), lags);
        }
    }

    /// Per follower provider, over every room behind on it: the items summed and the oldest
    /// item's hub time. Costs one pass over the rooms behind.
    pub fn by_provider(&self) -> BTreeMap<String, FanoutLag> {
        let mut total: BTreeMap<String, FanoutLag> = BTreeMap::new();
        for lags in self.rooms.lock().values() {
            for (provider, lag) in lags {
                total
                    .entry(provider.clone())
                    .and_modify(|sum| {
                        sum.items = sum.items.saturating_add(lag.items);
                        sum.oldest_ts_ms = sum.oldest_ts_ms.min(lag.oldest_ts_ms);
                    })
                    .or_insert(*lag);
            }
        }
        total
    }
}

/// Why a notify did not get its 201.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyError {
    /// What went wrong, for the log.
    pub reason: String,
    /// The follower's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// How the room actors reach follower providers: the node implements it over HTTP/3 (MIMI
/// protocol-06 §5.4 `notify`); the wire format is the node's business (DESIGN.md §6).
pub trait Federation: Send + Sync + 'static {
    /// Sends `items` (in log order) of `room`, hosted here, to follower `provider` as one
    /// notify. Resolves `Ok` once the follower answered 201.
    fn notify(
        &self,
        room: &RoomId,
        provider: &str,
        items: Vec<LogItem>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NotifyError>> + Send>>;
}

/// The push streams connected to this node, one per client (a newer one replaces an older).
#[derive(Default)]
pub struct Streams {
    next_generation: AtomicU64,
    open: Mutex<HashMap<ClientId, (u64, mpsc::Sender<Delivery>)>>,
}

impl Streams {
    /// Registers a new stream for `client`, closing any previous one.
    pub fn open(&self, client: ClientId, capacity: usize) -> (u64, mpsc::Receiver<Delivery>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(capacity);
        self.open.lock().insert(client, (generation, tx));
        (generation, rx)
    }

    /// The open stream of `client`; a stream whose receiver is gone is forgotten here.
    pub(crate) fn sender(&self, client: &ClientId) -> Option<(u64, mpsc::Sender<Delivery>)> {
        let mut open = self.open.lock();
        match open.get(client) {
            Some((_, tx)) if tx.is_closed() => {
                open.remove(client);
                None
            }
            other => other.cloned(),
        }
    }

    /// Closes `client`'s stream if it is still the given generation.
    pub fn close(&self, client: &ClientId, generation: u64) {
        let mut open = self.open.lock();
        if open.get(client).is_some_and(|(g, _)| *g == generation) {
            open.remove(client);
        }
    }

    /// Whether `client`'s stream of this generation is still the open one.
    pub fn is_open(&self, client: &ClientId, generation: u64) -> bool {
        self.sender(client)
            .is_some_and(|(open, _)| open == generation)
    }

    pub fn is_connected(&self, client: &ClientId) -> bool {
        self.sender(client).is_some()
    }
}

/// The order of one room's proposals across moves of the room (module docs): numbered
/// tickets, in the order the room's actor took the requests, each with the shard its proposal
/// was last sent to while it waits for the answer.
#[derive(Default)]
pub(crate) struct RoomOrder {
    state: Mutex<OrderState>,
    /// Woken whenever a ticket is sent, refused (to be sent again) or answered.
    changed: Notify,
}

#[derive(Default)]
struct OrderState {
    next: u64,
    /// Unanswered tickets by number: where each was last sent; `None` while it waits to be
    /// sent (again).
    open: BTreeMap<u64, Option<ShardId>>,
}

impl RoomOrder {
    /// The next ticket, after every ticket taken before.
    pub(crate) fn ticket(self: &Arc<Self>) -> MoveTicket {
        let mut state = self.state.lock();
        let number = state.next;
        state.next += 1;
        state.open.insert(number, None);
        MoveTicket {
            order: self.clone(),
            number,
        }
    }
}

/// One proposal's place in its room's [`RoomOrder`]; answered (and forgotten) when dropped.
pub(crate) struct MoveTicket {
    order: Arc<RoomOrder>,
    number: u64,
}

impl MoveTicket {
    /// Whether the proposal may be sent to `shard` now: every earlier unanswered one was sent
    /// there (so this one queues behind them). If so, it counts as sent there.
    pub(crate) fn try_send(&self, shard: ShardId) -> bool {
        let mut state = self.order.state.lock();
        let due = state
            .open
            .range(..self.number)
            .all(|(_, sent)| *sent == Some(shard));
        if due {
            state.open.insert(self.number, Some(shard));
            drop(state);
            self.order.changed.notify_waiters();
        }
        due
    }

    /// Waits until the proposal may be sent to the shard `target` names (asked again at
    /// every change of the room's order: the room may have moved meanwhile); returns that
    /// shard, the ticket counting as sent there. Nothing may await between this and the
    /// proposal being queued.
    pub(crate) async fn send_when_due(&self, target: impl Fn() -> ShardId) -> ShardId {
        loop {
            // Registered before the look, so a change after it wakes this.
            let changed = self.order.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let shard = target();
            if self.try_send(shard) {
                return shard;
            }
            changed.await;
        }
    }

    /// The proposal was refused because the room moves: it waits to be sent again, and every
    /// later proposal of the room waits for it.
    pub(crate) fn unsent(&self) {
        self.order.state.lock().open.insert(self.number, None);
        self.order.changed.notify_waiters();
    }
}

impl Drop for MoveTicket {
    fn drop(&mut self) {
        self.order.state.lock().open.remove(&self.number);
        self.order.changed.notify_waiters();
    }
}

/// Limits of the actor layer (from the node's configuration).
#[derive(Debug, Clone)]
pub struct ActorLimits {
    /// Requests in flight per room before callers get `Busy`.
    pub room_mailbox: usize,
    /// Items buffered per client stream before it is closed.
    pub stream_queue: usize,
    /// An actor with nothing attached and nothing in flight stops after this long.
    pub idle_room: Duration,
    /// Fan-out to follower providers.
    pub fanout: FanoutLimits,
}

/// Everything a room actor needs from the node, shared by all of them.
pub(crate) struct RoomContext {
    pub(crate) shards: Shards,
    pub(crate) proposer: Proposer,
    pub(crate) streams: Arc<Streams>,
    pub(crate) metrics: Arc<ActorMetrics>,
    pub(crate) limits: ActorLimits,
    pub(crate) federation: Arc<dyn Federation>,
}

pub struct RoomActor {
    room: RoomId,
    core: RoomCore,
    /// Generation of each attached client's stream.
    generations: HashMap<ClientId, u64>,
    ctx: Arc<RoomContext>,
    router: Router,
    last_activity: Instant,
    in_flight: Arc<Semaphore>,
    /// The order of this room's proposals across moves (module docs).
    order: Arc<RoomOrder>,
    fanout: FanoutCore,
    /// A `record_cursors` is scheduled.
    record_scheduled: bool,
    /// The fan-out lag last reported to `ActorMetrics::fanout_lag` (reported again only when
    /// it changes).
    reported_lag: BTreeMap<String, FanoutLag>,
}

impl RoomActor {
    /// Whether this node leads the room's shard, and so does its fan-out.
    fn leads(&self) -> bool {
        self.ctx
            .proposer
            .leads(self.ctx.shards.room_shard(&self.room))
    }

    /// Sends what the fan-out core says is due (hosted rooms only, on the shard's leader only).
    fn pump_fanout(&mut self, ctx: &mut Context<Self>) {
        if !self.leads() {
            self.report_lag(BTreeMap::new());
            return;
        }
        let now_ms = self.ctx.proposer.now_ms();
        let shard = self.ctx.shards.for_room(&self.room).read();
        let Some(state) = shard.room(&self.room) else {
            return;
        };
        let batches = self.fanout.poll(state, now_ms, &self.ctx.limits.fanout);
        let lag = self.fanout.lag(state);
        drop(shard);
        self.report_lag(lag);
        for batch in batches {
            let provider = batch.provider;
            let last = batch.items.last().map_or(0, |item| item.seq);
            // A trace of its own: a batch carries items of many requests (MIMI.md §5.4). The
            // follower's handling and the cursor proposal after the 201 are its children.
            let span = tracing::info_span!(
                parent: None,
                "fanout_notify",
                room = %self.room,
                %provider,
                items = batch.items.len(),
                last,
            );
            tracing::debug!(parent: &span, "notify");
            let send = self
                .ctx
                .federation
                .notify(&self.room, &provider, batch.items)
                .instrument(span.clone());
            ctx.spawn(send.into_actor(self).map(move |result, actor, ctx| {
                span.in_scope(|| actor.notified(provider, result, ctx))
            }));
        }
    }

    /// Reports the room's fan-out lag for the node's metrics if it changed.
    fn report_lag(&mut self, lag: BTreeMap<String, FanoutLag>) {
        if lag != self.reported_lag {
            self.ctx.metrics.fanout_lag.report(&self.room, lag.clone());
            self.reported_lag = lag;
        }
    }

    /// Records the followers' acknowledged cursors through Raft (one entry per follower for
    /// every notify acknowledged since the last time). A lost record only means a resend the
    /// follower deduplicates. Only the shard's leader records: a node that lost the
    /// leadership meanwhile drops its unrecorded cursors, and the new leader resends from the
    /// durable ones.
    fn record_cursors(&mut self, ctx: &mut Context<Self>) {
        self.record_scheduled = false;
        let unrecorded = self.fanout.take_unrecorded();
        if !self.leads() {
            tracing::debug!(room = %self.room, "not the shard's leader: fan-out cursors not recorded");
            return;
        }
        for (provider, seq) in unrecorded {
            let record = self.ctx.proposer.propose(Command::FanoutDelivered {
                room: self.room.clone(),
                provider,
                seq,
            });
            ctx.spawn(
                async move {
                    if let Err(e) = record.await {
                        tracing::info!(error = %e, "fan-out cursor not recorded");
                    }
                }
                .into_actor(self),
            );
        }
    }

    fn notified(
        &mut self,
        provider: String,
        result: Result<(), NotifyError>,
        ctx: &mut Context<Self>,
    ) {
        self.last_activity = Instant::now();
        match result {
            Ok(()) => {
                self.ctx
                    .metrics
                    .notifies_delivered
                    .fetch_add(1, Ordering::Relaxed);
                if self.fanout.failures(&provider) > 0 {
                    self.ctx
                        .metrics
                        .rooms_behind
                        .fetch_sub(1, Ordering::Relaxed);
                }
                if self.fanout.on_delivered(&provider).is_some() && !self.record_scheduled {
                    self.record_scheduled = true;
                    ctx.run_later(FANOUT_RECORD_DELAY, |actor, ctx| actor.record_cursors(ctx));
                }
                self.pump_fanout(ctx);
            }
            Err(error) => {
                self.ctx
                    .metrics
                    .notifies_failed
                    .fetch_add(1, Ordering::Relaxed);
                if self.fanout.failures(&provider) == 0 {
                    self.ctx
                        .metrics
                        .rooms_behind
                        .fetch_add(1, Ordering::Relaxed);
                }
                let retry_after_ms = error
                    .retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let delay = self.fanout.on_failed(
                    &provider,
                    self.ctx.proposer.now_ms(),
                    retry_after_ms,
                    &self.ctx.limits.fanout,
                );
                tracing::info!(
                    room = %self.room, %provider, reason = %error.reason, delay_ms = delay,
                    failures = self.fanout.failures(&provider), "notify failed; will retry"
                );
                ctx.run_later(Duration::from_millis(delay), |actor, ctx| {
                    actor.pump_fanout(ctx)
                });
            }
        }
    }

    fn push(&mut self, pushes: Vec<Push>) {
        for Push { client, items } in pushes {
            let Some((generation, tx)) = self.ctx.streams.sender(&client) else {
                self.detach(&client);
                continue;
            };
            if self.generations.get(&client) != Some(&generation) {
                // The stream was replaced; the new one attaches itself from its cursor.
                self.detach(&client);
                continue;
            }
            for item in items {
                let delivery = Delivery {
                    room: self.room.clone(),
                    item,
                    frank: None,
                };
                match tx.try_send(delivery) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.ctx
                            .metrics
                            .stream_overflows
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(room = %self.room, %client, "push stream full: closing it");
                        self.ctx.streams.close(&client, generation);
                        self.detach(&client);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.detach(&client);
                        break;
                    }
                }
            }
        }
    }

    fn detach(&mut self, client: &ClientId) {
        self.core.detach(client);
        self.generations.remove(client);
    }

    /// Detaches clients whose stream closed or was replaced since they were attached.
    fn prune_streams(&mut self) {
        let gone: Vec<ClientId> = self
            .generations
            .iter()
            .filter(|(client, generation)| {
                self.ctx.streams.sender(client).map(|(g, _)| g) != Some(**generation)
            })
            .map(|(client, _)| client.clone())
            .collect();
        for client in gone {
            self.detach(&client);
        }
    }

    fn is_idle(&self) -> bool {
        self.core.attached() == 0
            && self.fanout.is_quiet()
            && self.in_flight.available_permits() == self.ctx.limits.room_mailbox
            && self.last_activity.elapsed() >= self.ctx.limits.idle_room
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.ctx.limits.room_mailbox);
        let period = (self.ctx.limits.idle_room / 2).max(Duration::from_millis(10));
        ctx.run_interval(period, |actor, ctx| {
            actor.prune_streams();
            if actor.is_idle() {
                actor.router.forget(&actor.room, &ctx.address());
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Whoever runs the room next reports its lag afresh.
        self.report_lag(BTreeMap::new());
    }
}

/// The room log grew.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Applied;

impl Handler<Applied> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Applied, ctx: &mut Self::Context) {
        let _span = tracing::debug_span!("room_applied", room = %self.room).entered();
        self.last_activity = Instant::now();
        let shard = self.ctx.shards.for_room(&self.room).read();
        let Some(view) = shard.view(&self.room) else {
            return;
        };
        let hosted = matches!(view, RoomRef::Hosted(_));
        let streams = &self.ctx.streams;
        let pushes = self
            .core
            .on_applied(&view, |client| streams.is_connected(client));
        drop(shard);
        // Clients the core attached just now (members on the first look, Welcome recipients):
        // remember which stream they were attached on.
        let newcomers: Vec<ClientId> = self
            .core
            .attached_clients()
            .filter(|client| !self.generations.contains_key(*client))
            .cloned()
            .collect();
        for client in newcomers {
            match self.ctx.streams.sender(&client) {
                Some((generation, _)) => {
                    self.generations.insert(client, generation);
                }
                None => self.core.detach(&client),
            }
        }
        self.push(pushes);
        if hosted {
            self.pump_fanout(ctx);
        }
    }
}

/// A client's stream (of the given generation) wants this room from its acknowledged cursor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach {
    pub(crate) client: ClientId,
    pub(crate) generation: u64,
}

impl Handler<Attach> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) {
        let _span =
            tracing::debug_span!("room_attach", room = %self.room, client = %msg.client).entered();
        self.last_activity = Instant::now();
        let shard = self.ctx.shards.for_room(&self.room).read();
        let Some(view) = shard.view(&self.room) else {
            return;
        };
        let cursor = view.acked(&msg.client);
        self.generations.insert(msg.client.clone(), msg.generation);
        let backlog = self.core.attach(msg.client, cursor, &view);
        drop(shard);
        self.push(backlog.into_iter().collect());
    }
}

/// A request for a room hosted here, from a local client or a peer provider, to be proposed.
pub(crate) enum RoomRequest {
    Handshake {
        sender: Submitter,
        bundle: HandshakeBundle,
        permit: OwnedSemaphorePermit,
    },
    AppMessage {
        sender: Submitter,
        sending_user: UserId,
        message: Vec<u8>,
        permit: OwnedSemaphorePermit,
    },
}

/// A [`RoomRequest`] with the caller's span: the actor runs on its own arbiter, where the
/// caller's span is not current, so its `room_request` span names the caller as parent and the
/// proposal joins the caller's trace.
#[derive(Message)]
#[rtype(result = "Result<ApplyOutput, HubError>")]
pub(crate) struct Traced {
    request: RoomRequest,
    caller: tracing::Span,
}

impl Handler<Traced> for RoomActor {
    type Result = ResponseFuture<Result<ApplyOutput, HubError>>;

    fn handle(&mut self, traced: Traced, _: &mut Self::Context) -> Self::Result {
        let Traced { request, caller } = traced;
        self.last_activity = Instant::now();
        let room = self.room.clone();
        let (command, permit) = match request {
            RoomRequest::Handshake {
                sender,
                bundle,
                permit,
            } => (
                Command::Handshake {
                    room,
                    sender,
                    bundle,
                },
                permit,
            ),
            RoomRequest::AppMessage {
                sender,
                sending_user,
                message,
                permit,
            } => (
                Command::AppMessage {
                    room,
                    sender,
                    sending_user,
                    message,
                },
                permit,
            ),
        };
        let span = tracing::info_span!(parent: &caller, "room_request", room = %self.room);
        // Taken here, in mailbox order: a proposal the room's move refused is sent again
        // before any later one of the room (module docs).
        let ticket = self.order.ticket();
        let shard = self.ctx.shards.room_shard(&self.room);
        let proposal = span.in_scope(|| {
            self.ctx
                .proposer
                .propose_following(shard, command, Some(ticket))
        });
        Box::pin(
            async move {
                let output = proposal.await;
                drop(permit);
                output
            }
            .instrument(span),
        )
    }
}

struct RoomHandle {
    addr: Addr<RoomActor>,
    in_flight: Arc<Semaphore>,
}

/// Maps room ids to running room actors, starting them on demand on one of the arbiters.
#[derive(Clone)]
pub struct Router {
    rooms: Arc<Mutex<HashMap<RoomId, RoomHandle>>>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    ctx: Arc<RoomContext>,
}

impl Router {
    pub(crate) fn new(arbiters: Vec<ArbiterHandle>, ctx: Arc<RoomContext>) -> Self {
        assert!(
            !arbiters.is_empty(),
            "the router needs at least one arbiter"
        );
        Router {
            rooms: Arc::default(),
            arbiters: Arc::new(arbiters),
            ctx,
        }
    }

    fn handle(&self, room: &RoomId) -> (Addr<RoomActor>, Arc<Semaphore>) {
        let mut rooms = self.rooms.lock();
        if let Some(handle) = rooms.get(room).filter(|h| h.addr.connected()) {
            return (handle.addr.clone(), handle.in_flight.clone());
        }
        let in_flight = Arc::new(Semaphore::new(self.ctx.limits.room_mailbox));
        let arbiter = &self.arbiters
            [mimid_cluster::shard_for(room.as_bytes(), self.arbiters.len() as u64) as usize];
        let actor = RoomActor {
            room: room.clone(),
            core: RoomCore::default(),
            generations: HashMap::new(),
            ctx: self.ctx.clone(),
            router: self.clone(),
            last_activity: Instant::now(),
            in_flight: in_flight.clone(),
            order: Arc::default(),
            fanout: FanoutCore::default(),
            record_scheduled: false,
            reported_lag: BTreeMap::new(),
        };
        let addr = RoomActor::start_in_arbiter(arbiter, move |_| actor);
        rooms.insert(
            room.clone(),
            RoomHandle {
                addr: addr.clone(),
                in_flight: in_flight.clone(),
            },
        );
        (addr, in_flight)
    }

    fn forget(&self, room: &RoomId, addr: &Addr<RoomActor>) {
        let mut rooms = self.rooms.lock();
        if rooms.get(room).is_some_and(|h| h.addr == *addr) {
            rooms.remove(room);
        }
    }

    /// Running room actors.
    pub fn active(&self) -> usize {
        self.rooms.lock().len()
    }

    pub(crate) fn applied(&self, room: &RoomId) {
        self.handle(room).0.do_send(Applied);
    }

    pub(crate) fn attach(&self, room: &RoomId, client: ClientId, generation: u64) {
        self.handle(room).0.do_send(Attach { client, generation });
    }

    /// Sends a request to the room's actor, bounded by the room's in-flight limit.
    pub(crate) async fn request(
        &self,
        room: &RoomId,
        make: impl Fn(OwnedSemaphorePermit) -> RoomRequest,
    ) -> Result<ApplyOutput, HubError> {
        // An actor may stop between lookup and send (idle); one retry starts a fresh one.
        for _ in 0..2 {
            let (addr, in_flight) = self.handle(room);
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                return Err(HubError::Busy(Busy::Room));
            };
            let depth = self
                .ctx
                .limits
                .room_mailbox
                .saturating_sub(in_flight.available_permits());
            self.ctx.metrics.room_mailbox_depth.observe(depth as u64);
            let traced = Traced {
                request: make(permit),
                caller: tracing::Span::current(),
            };
            match addr.send(traced).await {
                Ok(result) => return result,
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => {
                    return Err(HubError::Unavailable("room actor timed out".into()))
                }
            }
        }
        Err(HubError::Unavailable("room actor stopped".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(items: u64, oldest_ts_ms: u64) -> FanoutLag {
        FanoutLag {
            items,
            oldest_ts_ms,
        }
    }

    /// A room's proposals keep their order across a move (module docs): a later one is sent
    /// only behind earlier ones sent to the same shard, and one the move refused is sent
    /// again before any later one.
    #[test]
    fn a_refused_proposal_is_sent_again_before_any_later_one_of_its_room() {
        let order = Arc::new(RoomOrder::default());
        let (first, second) = (order.ticket(), order.ticket());
        // Pipelined to the same shard: both go at once.
        assert!(first.try_send(1));
        assert!(second.try_send(1));
        // Both refused (the room moves): the second may not go anywhere before the first.
        first.unsent();
        second.unsent();
        assert!(!second.try_send(2));
        assert!(first.try_send(2));
        assert!(second.try_send(2));
        // A third, resolved to another shard while the first two are unanswered there,
        // waits for their answers rather than overtake them.
        let third = order.ticket();
        assert!(!third.try_send(3));
        drop(first);
        assert!(!third.try_send(3));
        drop(second);
        assert!(third.try_send(3));
        // A ticket taken later still queues behind it at the same shard.
        let fourth = order.ticket();
        assert!(!fourth.try_send(2));
        assert!(fourth.try_send(3));
    }

    #[tokio::test]
    async fn a_waiting_proposal_is_sent_once_the_earlier_one_is_answered() {
        let order = Arc::new(RoomOrder::default());
        let first = order.ticket();
        assert!(first.try_send(1));
        first.unsent();
        let second = order.ticket();
        let waiting = tokio::spawn(async move { second.send_when_due(|| 2).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the answer of the earlier proposal wakes the later one")
            .unwrap();
        assert_eq!(sent, 2);
    }

    #[test]
    fn fanout_lags_sum_items_and_keep_the_oldest_per_provider() {
        let lags = FanoutLags::default();
        let club = RoomId::parse("mimi://a.example/r/club").unwrap();
        let den = RoomId::parse("mimi://a.example/r/den").unwrap();
        lags.report(
            &club,
            BTreeMap::from([
                ("b.example".to_owned(), lag(3, 2_000)),
                ("c.example".to_owned(), lag(1, 5_000)),
            ]),
        );
        lags.report(
            &den,
            BTreeMap::from([("b.example".to_owned(), lag(4, 1_000))]),
        );
        assert_eq!(
            lags.by_provider(),
            BTreeMap::from([
                ("b.example".to_owned(), lag(7, 1_000)),
                ("c.example".to_owned(), lag(1, 5_000)),
            ])
        );
        // A room that caught up (or whose actor stopped) reports nothing.
        lags.report(&den, BTreeMap::new());
        lags.report(
            &club,
            BTreeMap::from([("c.example".to_owned(), lag(2, 5_000))]),
        );
        assert_eq!(
            lags.by_provider(),
            BTreeMap::from([("c.example".to_owned(), lag(2, 5_000))])
        );
    }
}
