//! `Hub`: the provider's room and directory service as the edges see it.
//!
//! Every write becomes a `Stamped` command proposed to the shard that owns its key; the caller
//! is answered with the verdict of the apply, i.e. only once the entry is durable on the shard's
//! quorum and applied (DESIGN.md §2). Room-scoped requests go through the room's actor
//! (`actor::Router`); directory requests go straight to their shard. Reads (authentication,
//! room existence, the directory) use the local shard data of the shards this node holds, and
//! ask a node that holds the shard otherwise ([`remote`]; push streams too).
//!
//! In a cluster (ARCHITECTURE.md "Cluster"), only a shard's leader takes proposals: the
//! [`Proposer`] proposes locally on the leader and otherwise hands the unstamped command to the
//! node's [`ProposalRouter`], which sends it to the leader; there [`Hub::propose_forwarded`]
//! stamps it with the leader's clock and proposes it. A negative local read (unknown room,
//! token or client) may only mean that this replica lags, so it is checked again after a read
//! barrier (`ClusterHandle::read_barrier`) before it is answered. Fan-out to follower
//! providers, cursor records and housekeeping run only on the node leading the shard; a node
//! that gains a shard's leadership wakes that shard's rooms with a follower behind.
//!
//! With split shards, rooms move between shards ([`split`], `crate::room_move`): a room
//! command refused because its room is frozen for a move or has left the shard is proposed
//! again where the room is (`Proposer::propose_following`), in the room's order, and a
//! router whose cached pin went stale follows the move (`Hub::follow_move`).
//!
//! The hub runs its actors on its own actix system (a thread with `arbiters` arbiters), so it
//! can be driven from any async runtime: every method is a plain future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mimid_cluster::{ClusterHandle, NodeId, ProposeError, ReadBarrierError, ShardId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::actor::{
    ActorLimits, ActorMetrics, Delivery, Federation, MoveTicket, RoomContext, RoomRequest, Router,
    Streams,
};
use crate::cluster_meta::METADATA_SHARD;
use crate::command::{
    user_shard_key, Command, CommandScope, HandshakeBundle, ReceivedItem, Stamped, SubmitVerdict,
    Submitter, UpdateVerdict,
};
use crate::directory::consent::{ConsentListing, Preferences, RequesterAction};
use crate::directory::profile::{Profile, QueryOutcome, SearchTerm, PROFILES_SHARD_KEY};
use crate::directory::{
    validate_key_package, ClaimOutcome, DirectoryError, KeyPackageError, TargetAction,
};
use crate::ids::{ClientId, RoomId, UserId};
use crate::shard::{ApplyOutput, CreateRoomRejection, ShardMachine, Shards, MAX_MOVE_HOPS};
use crate::shard_descriptors::{Reporter, ShardDescriptor, REPORT_POLL};

mod cluster_meta;
mod moderation;
mod provider_keys;
pub mod remote;
pub mod residency;
pub mod split;

pub use split::{ShardLoad, SplitOutcome};

/// Milliseconds since the UNIX epoch. Injected so tests and the simulator control time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum HubError {
    /// A bounded queue is full; retry later (HTTP 503 with Retry-After).
    #[error("busy: {0}")]
    Busy(Busy),
    /// The replication layer could not take or finish the request (HTTP 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("unknown room")]
    UnknownRoom,
    /// The apply refused the entry as a whole (HTTP 400).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Which bound was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Busy {
    /// The room's in-flight request limit (`limits.room_mailbox`).
    Room,
    /// The replication inbox or its uncommitted-bytes bound.
    Replication,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Busy::Room => "room has too many requests in flight",
            Busy::Replication => "replication is at its queue or uncommitted-bytes bound",
        })
    }
}

impl From<ProposeError> for HubError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Busy => HubError::Busy(Busy::Replication),
            other => HubError::Unavailable(other.to_string()),
        }
    }
}

/// Why a KeyPackage upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("KeyPackage {index}: {source}")]
    Invalid {
        index: usize,
        source: KeyPackageError,
    },
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Longest a room command waits while its room is frozen for a move
/// (`ApplyOutput::RoomMoving`) before it is answered `HubError::Unavailable` (HTTP 503 with
/// Retry-After at the edges); a move takes four proposals, well within it.
pub const MOVE_WAIT: Duration = Duration::from_secs(5);
/// First pause before a command of a frozen room is tried again; it doubles up to
/// [`MOVE_BACKOFF_MAX`].
pub const MOVE_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between two tries of a command of a frozen room.
pub const MOVE_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// How long a read barrier on a negative local read waits for the leader's confirmation.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the hub looks for shards whose leadership this node gained.
const LEADERSHIP_POLL: Duration = Duration::from_millis(50);
/// How long a forwarded proposal still waits for the node it went to once that node no
/// longer leads the shard: a leader that stepped down learns its entries' outcome from the
/// next leader's log, usually within a heartbeat or two; a dead one never answers.
const STEPPED_DOWN_GRACE: Duration = Duration::from_secs(1);

/// A future of a forwarded proposal's outcome.
pub type Forwarding = Pin<Box<dyn Future<Output = Result<ApplyOutput, ForwardError>> + Send>>;

/// Carries proposals for shards another node leads to that node. The node implements it over
/// its node-to-node transport; the leader answers through [`Hub::propose_forwarded`].
pub trait ProposalRouter: Send + Sync + 'static {
    /// Sends `command` (a postcard-encoded, unstamped [`Command`] of `scope`) for `shard` to
    /// node `leader` and resolves with the output of its apply there, or why there is none.
    ///
    /// Called with the proposal's `raft_proposal` span current (`Proposer::propose_to`), so
    /// the router can carry that span's trace context to the leader, whose handling of it
    /// ([`Hub::propose_forwarded`] in a span with that remote parent) continues the trace.
    fn forward(
        &self,
        leader: NodeId,
        shard: ShardId,
        scope: CommandScope,
        command: Vec<u8>,
    ) -> Forwarding;

    /// Sends `read` (a postcard-encoded [`remote::RemoteRead`]) of `shard`, which this node
    /// does not hold, to node `node`, which answers with [`Hub::serve_read`].
    fn read(&self, node: NodeId, shard: ShardId, read: Vec<u8>) -> ReadForwarding;

    /// Sends `request` (a postcard-encoded [`remote::PullRequest`]) for `shard` to node
    /// `node`, which answers with [`Hub::pull`] (postcard [`remote::Pulled`], Franks filled
    /// in).
    fn pull(&self, node: NodeId, shard: ShardId, request: Vec<u8>) -> ReadForwarding;
}

/// A future of a remote read's answer (postcard bytes).
pub type ReadForwarding = Pin<Box<dyn Future<Output = Result<Vec<u8>, HubError>> + Send>>;

/// Why a forwarded proposal has no apply output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ForwardError {
    /// The node it was sent to does not lead the shard (any more); the origin asks its
    /// replica for the leader again and retries once.
    #[error("the node does not lead the shard")]
    NotLeader,
    /// The leader could not take or finish it, or it could not be delivered; answered to the
    /// client as is.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Like [`ForwardError::NotLeader`], naming the node this one's replica knows as the
    /// shard's leader: the origin retries there (the way a node without a replica of the shard
    /// learns of a new leader before shard 0's descriptor says so). Appended after the older
    /// variants: an older origin reads it as an answer it cannot read (a 503).
    #[error("the node does not lead the shard; node {0} does")]
    NotLeaderNaming(NodeId),
}

/// How one attempt of a proposal missed its verdict.
enum Missed {
    /// The node asked does not lead the shard; the proposal may be retried, at the node named
    /// if any.
    Elsewhere(Option<NodeId>),
    /// No verdict, answered to the caller as is.
    Failed(HubError),
}

impl From<ForwardError> for Missed {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader => Missed::Elsewhere(None),
            ForwardError::NotLeaderNaming(node) => Missed::Elsewhere(Some(node)),
            ForwardError::Hub(e) => Missed::Failed(e),
        }
    }
}

/// Stamps commands with the hub time and proposes them to their shard: locally when this node
/// leads it, otherwise through the [`ProposalRouter`] to the leader, which stamps it.
#[derive(Clone)]
pub(crate) struct Proposer {
    cluster: ClusterHandle<ShardMachine>,
    shards: Shards,
    clock: Clock,
    router: Option<Arc<dyn ProposalRouter>>,
    /// Counts room commands sent again after a move ([`ActorMetrics::move_retries`]).
    metrics: Arc<ActorMetrics>,
}

/// One attempt of a proposal.
type Attempt = Pin<Box<dyn Future<Output = Result<ApplyOutput, Missed>> + Send>>;

impl Proposer {
    /// Proposes `command` to its shard: a room command to its room's shard
    /// (`Shards::room_shard`: the callers resolved the room first), anything else to the
    /// shard its key hashes to (or, for commands without a key, shard 0; use `propose_to`
    /// for those).
    ///
    /// A room command follows its room's moves ([`Self::propose_following`]).
    pub(crate) fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<ApplyOutput, HubError>> + Send + 'static {
        let shard = match command.room() {
            Some(room) => self.shards.room_shard(room),
            None => command
                .shard_key()
                .map_or(0, |key| self.shards.shard_of(&key)),
        };
        self.propose_following(shard, command, None)
    }

    /// Proposes `command` to `shard` ([`Self::propose_to`]); a room command refused because
    /// its room moves is proposed again where the room is (`crate::room_move`; a refused
    /// command changed nothing, so this is safe):
    ///
    /// - `ApplyOutput::RoomMoved { to }` (the room left `shard`): the pin is cached
    ///   (`Shards::remember_pin`) and the command goes to `to`, following at most
    ///   [`MAX_MOVE_HOPS`] moves (as many as `Shards::room_shard` follows tombstones);
    /// - `ApplyOutput::RoomMoving { to }` (the room is frozen in `shard` for a move): it waits
    ///   ([`MOVE_BACKOFF`] doubling to [`MOVE_BACKOFF_MAX`]), resolves the room's shard again
    ///   (`Shards::room_shard`) and retries, for at most [`MOVE_WAIT`] from the first such
    ///   answer, then answers `HubError::Unavailable` naming the move.
    ///
    /// `ticket` keeps the order of a room actor's proposals (`actor` module docs): the first
    /// try is queued before this returns if the ticket allows it, and every try waits its
    /// turn. Without residency sets or split shards nothing moves, and nothing is kept for a
    /// retry.
    pub(crate) fn propose_following(
        &self,
        shard: ShardId,
        command: Command,
        ticket: Option<MoveTicket>,
    ) -> impl Future<Output = Result<ApplyOutput, HubError>> + Send + 'static {
        let follow = command
            .room()
            .filter(|_| self.shards.layout().has_pins())
            .cloned()
            .map(|room| (room, command.clone()));
        let ticket = ticket.filter(|_| follow.is_some());
        let first = match &ticket {
            Some(ticket) if !ticket.try_send(shard) => None,
            _ => Some(self.propose_to(shard, command)),
        };
        let proposer = self.clone();
        async move {
            let Some((room, command)) = follow else {
                let proposal = first.expect("without a ticket the first try is sent at once");
                return proposal.await;
            };
            // Where the next try goes: a shard a tombstone named, or `None`: wherever the
            // room resolves to then (also for a first try that waits its turn: the room may
            // move meanwhile).
            let mut target = first.is_some().then_some(shard);
            let mut pending = first;
            let mut sent_to = shard;
            let mut hops = 0;
            let mut waited_since: Option<tokio::time::Instant> = None;
            let mut backoff = MOVE_BACKOFF;
            loop {
                let proposal = match pending.take() {
                    Some(proposal) => proposal,
                    None => {
                        let resolve =
                            || target.unwrap_or_else(|| proposer.shards.room_shard(&room));
                        sent_to = match &ticket {
                            Some(ticket) => ticket.send_when_due(resolve).await,
                            None => resolve(),
                        };
                        proposer.propose_to(sent_to, command.clone())
                    }
                };
                match proposal.await? {
                    ApplyOutput::RoomMoved { to } => {
                        hops += 1;
                        if hops > MAX_MOVE_HOPS || to == sent_to {
                            return Err(HubError::Unavailable(format!(
                                "room {room} keeps moving (followed {MAX_MOVE_HOPS} moves, the \
                                 last from shard {sent_to} to shard {to}); try again"
                            )));
                        }
                        tracing::debug!(%room, from = sent_to, to, "room moved: following it");
                        proposer
                            .metrics
                            .move_retries
                            .fetch_add(1, Ordering::Relaxed);
                        proposer.shards.remember_pin(&room, to);
                        if let Some(ticket) = &ticket {
                            ticket.unsent();
                        }
                        target = Some(to);
                    }
                    ApplyOutput::RoomMoving { to } => {
                        let now = tokio::time::Instant::now();
                        let since = *waited_since.get_or_insert(now);
                        let left = MOVE_WAIT.saturating_sub(now - since);
                        if left.is_zero() {
                            return Err(HubError::Unavailable(format!(
                                "room {room} is moving from shard {sent_to} to shard {to} and \
                                 the move did not finish within {} s; try again shortly",
                                MOVE_WAIT.as_secs()
                            )));
                        }
                        tracing::debug!(%room, from = sent_to, to, "room moving: waiting for it");
                        proposer
                            .metrics
                            .move_retries
                            .fetch_add(1, Ordering::Relaxed);
                        if let Some(ticket) = &ticket {
                            ticket.unsent();
                        }
                        tokio::time::sleep(backoff.min(left)).await;
                        backoff = (backoff * 2).min(MOVE_BACKOFF_MAX);
                        target = None;
                    }
                    output => return Ok(output),
                }
            }
        }
    }

    /// The hub time now (ms since the UNIX epoch).
    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Proposes `command` to `shard`; resolves with the verdict of its apply.
    ///
    /// When this node leads the shard, the command is stamped and queued before this returns
    /// (so a caller's proposals keep its order); otherwise it goes unstamped to the leader
    /// through the [`ProposalRouter`]. A node that turns out not to lead the shard (leadership
    /// just moved) makes it retry once with the leader the local replica names then, or, when
    /// it names none (a shard this node does not hold), the one the refusing node named
    /// ([`ForwardError::NotLeaderNaming`]) or shard 0's descriptor names. No known
    /// leader is `HubError::Unavailable` (HTTP 503 with Retry-After at the edges).
    ///
    /// Tracing: one `raft_proposal` span (fields `shard`, `bytes`, and `forwarded_to` when it
    /// went to another node) per proposal, a child of the current span, from the proposal
    /// until its verdict; it records `error` when the proposal got no verdict. Nothing is
    /// traced per entry in the cluster driver.
    pub(crate) fn propose_to(
        &self,
        shard: ShardId,
        command: Command,
    ) -> impl Future<Output = Result<ApplyOutput, HubError>> + Send + 'static {
        let span = tracing::info_span!(
            "raft_proposal",
            shard,
            bytes = tracing::field::Empty,
            forwarded_to = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let first = span.in_scope(|| self.attempt(shard, &command, None));
        let proposer = self.clone();
        async move {
            let verdict = match first.await {
                Err(Missed::Elsewhere(hint)) => match proposer.attempt(shard, &command, hint).await
                {
                    Err(Missed::Elsewhere(_)) => Err(HubError::Unavailable(format!(
                        "shard {shard}: leadership is moving (the named leader refused twice)"
                    ))),
                    Err(Missed::Failed(e)) => Err(e),
                    Ok(output) => Ok(output),
                },
                Err(Missed::Failed(e)) => Err(e),
                Ok(output) => Ok(output),
            };
            if let Err(e) = &verdict {
                tracing::Span::current().record("error", tracing::field::display(e));
            }
            verdict
        }
        .instrument(span)
    }

    /// Whether this node holds a replica of `shard`: a voter or learner of its applied
    /// configuration (a replica waiting for its first snapshot holds nothing yet).
    pub(crate) fn holds(&self, shard: ShardId) -> bool {
        if self.router.is_none() {
            // A node alone holds every shard.
            return true;
        }
        let me = self.cluster.node_id();
        let Some(status) = self.cluster.shard_status(shard) else {
            return false;
        };
        if !status.voters.contains(&me) && !status.learners.contains(&me) {
            return false;
        }
        // A replica removed while it was not hearing from the leader still counts itself a
        // member (the cluster crate's "Removing a node"); shard 0's descriptor, recorded by
        // the shard's leader at a later index without this node, says otherwise.
        let data = self.shards.get(METADATA_SHARD).read();
        data.shard_descriptors()
            .get(shard)
            .is_none_or(|recorded| recorded.as_of <= status.applied || recorded.has_member(me))
    }

    /// The node to send `shard`'s proposals to: the leader the local replica names when this
    /// node holds one, else the leader shard 0's descriptor of the shard names
    /// (`shard_descriptors` module docs); `None` while neither knows one.
    pub(crate) fn route(&self, shard: ShardId) -> Option<NodeId> {
        if let Some(leader) = self.cluster.leader(shard) {
            return Some(leader);
        }
        if self.holds(shard) {
            return None;
        }
        let me = self.cluster.node_id();
        self.shards
            .get(METADATA_SHARD)
            .read()
            .shard_descriptors()
            .get(shard)
            .map(|descriptor| descriptor.leader)
            .filter(|&leader| leader != me)
    }

    /// One try of `command` on the node [`Self::route`] names as `shard`'s leader, or, when
    /// the local replica names none, on `hint` (the leader a node that refused named).
    fn attempt(&self, shard: ShardId, command: &Command, hint: Option<NodeId>) -> Attempt {
        let span = tracing::Span::current();
        let route = self.route(shard);
        let target = match self.cluster.leader(shard) {
            Some(leader) => Some(leader),
            None => hint.or(route),
        };
        match target {
            None => {
                let error = no_leader(shard);
                Box::pin(async move { Err(Missed::Failed(error)) })
            }
            Some(leader) if leader == self.cluster.node_id() => {
                let queued = self.propose_local(shard, command.clone(), &span);
                Box::pin(async move { queued.await.map_err(Missed::from) })
            }
            Some(leader) => {
                let Some(router) = &self.router else {
                    let error = HubError::Unavailable(format!(
                        "shard {shard} is led by node {leader}, and this node has no \
                         node-to-node transport"
                    ));
                    return Box::pin(async move { Err(Missed::Failed(error)) });
                };
                let bytes = postcard::to_stdvec(command)
                    .expect("serialising a command into memory cannot fail");
                span.record("bytes", bytes.len());
                span.record("forwarded_to", leader);
                let forwarded = router.forward(leader, shard, command.scope(), bytes);
                let proposer = self.clone();
                Box::pin(async move {
                    // A leader that dies with the request leaves the call waiting for its
                    // connection; once the route names another leader (or none), the client
                    // hears it within STEPPED_DOWN_GRACE rather than after the call's
                    // timeout. A leader that merely stepped down answers within the grace
                    // as a rule: the next leader's log tells it the entry's outcome
                    // (`mimid_cluster`'s pending proposals, "orphans").
                    let mut forwarded = std::pin::pin!(forwarded);
                    let mut poll = tokio::time::interval(LEADERSHIP_POLL);
                    let mut moved_at: Option<tokio::time::Instant> = None;
                    loop {
                        tokio::select! {
                            result = &mut forwarded => {
                                return result.map_err(Missed::from);
                            }
                            _ = poll.tick() => {
                                // The route changed since the request left (a hinted target
                                // is not the route; only a change of the route counts).
                                let now = proposer.route(shard);
                                if now == route || now == Some(leader) {
                                    continue;
                                }
                                let since = *moved_at.get_or_insert_with(tokio::time::Instant::now);
                                if since.elapsed() >= STEPPED_DOWN_GRACE {
                                    return Err(Missed::Failed(HubError::Unavailable(format!(
                                        "shard {shard}: node {leader} stopped leading it while \
                                         the request was with it and did not answer within \
                                         {STEPPED_DOWN_GRACE:?}; it may have taken effect"
                                    ))));
                                }
                            }
                        }
                    }
                })
            }
        }
    }

    /// Stamps `command` with this node's clock and queues it on the local replica of `shard`
    /// (which must lead it, or the answer is `ForwardError::NotLeader`).
    fn propose_local(
        &self,
        shard: ShardId,
        command: Command,
        span: &tracing::Span,
    ) -> impl Future<Output = Result<ApplyOutput, ForwardError>> + Send + 'static {
        let entry = Stamped {
            ts_ms: (self.clock)(),
            command,
        }
        .encode();
        span.record("bytes", entry.len());
        let (tx, rx) = oneshot::channel();
        let queued = self.cluster.propose(
            shard,
            entry,
            Box::new(move |result| {
                // The requester may have gone away; the entry is applied regardless.
                let _ = tx.send(result);
            }),
        );
        async move {
            match queued {
                Err(ProposeError::NotLeader) => Err(ForwardError::NotLeader),
                Err(e) => Err(HubError::from(e).into()),
                Ok(()) => match rx.await {
                    Ok(Err(ProposeError::NotLeader)) => Err(ForwardError::NotLeader),
                    Ok(result) => result.map_err(|e| HubError::from(e).into()),
                    Err(_) => Err(HubError::Unavailable("replication stopped".into()).into()),
                },
            }
        }
    }

    /// Whether this node leads `shard` (as of the replication driver's last turn).
    pub(crate) fn leads(&self, shard: ShardId) -> bool {
        self.cluster.leader(shard) == Some(self.cluster.node_id())
    }

    /// Resolves once the local replica of `shard` has applied everything acknowledged before
    /// this call (a read barrier, queued before this returns), so a negative local read after
    /// it is final.
    pub(crate) fn read_barrier(
        &self,
        shard: ShardId,
    ) -> impl Future<Output = Result<(), HubError>> + Send + 'static {
        let unconfirmed = move |e: ReadBarrierError| match e {
            ReadBarrierError::NoLeader => no_leader(shard),
            ReadBarrierError::Busy => HubError::Busy(Busy::Replication),
            other => HubError::Unavailable(format!(
                "shard {shard}: cannot confirm the local replica is current: {other}"
            )),
        };
        let (tx, rx) = oneshot::channel();
        let queued = self.cluster.read_barrier(
            shard,
            READ_BARRIER_TIMEOUT,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        async move {
            queued.map_err(unconfirmed)?;
            match rx.await {
                Ok(result) => result.map_err(unconfirmed),
                Err(_) => Err(HubError::Unavailable("replication stopped".into())),
            }
        }
    }
}

/// Another source of a client's push stream (the node's relay of shards it does not hold):
/// pushes into the stream's bounded queue; a full queue closes the stream, as the room actors
/// do (`ActorMetrics::stream_overflows`), and the client resumes from its cursor.
#[derive(Clone)]
pub struct StreamFeed {
    client: ClientId,
    generation: u64,
    sender: mpsc::Sender<Delivery>,
    streams: Arc<Streams>,
    metrics: Arc<ActorMetrics>,
}

impl StreamFeed {
    /// The client whose stream this feeds.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// Whether the stream is gone (closed, or replaced by a newer one).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || !self.streams.is_open(&self.client, self.generation)
    }

    /// Pushes `delivery`; `false` when the stream is gone or was full (then it is closed).
    pub fn push(&self, delivery: Delivery) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.sender.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .stream_overflows
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(client = %self.client, "push stream full: closing it");
                self.streams.close(&self.client, self.generation);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The answer while a shard has no known leader.
fn no_leader(shard: ShardId) -> HubError {
    HubError::Unavailable(format!(
        "shard {shard} has no leader (election in progress)"
    ))
}

#[derive(Clone)]
pub struct HubConfig {
    pub limits: ActorLimits,
    /// Arbiters (threads) the room actors are spread over.
    pub arbiters: usize,
    /// How often every shard gets a `Housekeeping` command (expiry of KeyPackages and
    /// Welcome-routing records, room log retention).
    pub housekeeping: std::time::Duration,
    /// How long an item every member acknowledged stays in its room log.
    pub log_retention: std::time::Duration,
    /// How hosted rooms reach follower providers.
    pub federation: Arc<dyn Federation>,
    /// How proposals for shards another node leads reach it; `None` for a single node.
    pub router: Option<Arc<dyn ProposalRouter>>,
}

pub struct Hub {
    proposer: Proposer,
    shards: Shards,
    router: Router,
    streams: Arc<Streams>,
    metrics: Arc<ActorMetrics>,
    limits: ActorLimits,
    clock: Clock,
    system: Option<(actix::System, JoinHandle<()>)>,
    /// Which shards this node holds ([`Proposer::holds`]), as of the last look (every
    /// `LEADERSHIP_POLL`): push-stream relays wait on it instead of asking each shard.
    held: tokio::sync::watch::Receiver<Vec<bool>>,
    /// Runs room moves: shard splits and the resume of moves left frozen ([`split`]).
    mover: split::Mover,
}

/// Wakes every hosted room of `shard` with a follower provider behind its durable fan-out
/// cursor, so its actor resumes the notifies (MIMI.md §5.4: retried until acknowledged).
fn wake_pending_fanout(shards: &Shards, router: &Router, shard: ShardId) {
    let pending: Vec<RoomId> = shards
        .get(shard)
        .read()
        .hosted()
        .filter(|state| {
            state.followers().any(|provider| {
                state
                    .fanout_backlog(provider, state.fanout_cursor(provider))
                    .next()
                    .is_some()
            })
        })
        .map(|state| state.room().clone())
        .collect();
    for room in pending {
        router.applied(&room);
    }
}

/// Records in shard 0 where the shards this node leads live, whenever that changed
/// (`shard_descriptors` module docs, "Who writes them"): every [`REPORT_POLL`], the shards the
/// [`Reporter`] finds due are proposed one after the other.
async fn report_descriptors(proposer: Proposer) {
    let mut reporter = Reporter::default();
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(REPORT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let me = proposer.cluster.node_id();
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due: Vec<ShardDescriptor> = (0..proposer.shards.count())
            .filter(|&shard| proposer.leads(shard))
            .filter_map(|shard| {
                let status = proposer.cluster.shard_status(shard)?;
                let held = proposer
                    .shards
                    .get(METADATA_SHARD)
                    .read()
                    .shard_descriptors()
                    .get(shard)
                    .cloned();
                reporter.due(now_ms, me, &status, held.as_ref())
            })
            .collect();
        for descriptor in due {
            let shard = descriptor.shard;
            let command = Command::RecordShardDescriptor(descriptor);
            match proposer.propose_to(METADATA_SHARD, command).await {
                Ok(ApplyOutput::ShardDescriptor(Ok(_))) => {}
                // A newer record is held, or this replica has not applied as far as the
                // previous leader had: the reporter tries again later.
                Ok(ApplyOutput::ShardDescriptor(Err(refusal))) => {
                    tracing::debug!(shard, %refusal, "shard descriptor not recorded");
                }
                Ok(other) => tracing::warn!(shard, ?other, "unexpected descriptor answer"),
                Err(e) => tracing::debug!(shard, error = %e, "shard descriptor not recorded"),
            }
        }
    }
}

fn unexpected(output: ApplyOutput) -> HubError {
    match output {
        ApplyOutput::Rejected(reason) => HubError::Rejected(reason),
        other => HubError::Rejected(format!("unexpected apply output {other:?}")),
    }
}

impl Hub {
    /// Starts the actor system and the fan-out dispatcher over an already started cluster.
    pub fn start(
        cluster: ClusterHandle<ShardMachine>,
        shards: Shards,
        clock: Clock,
        config: HubConfig,
    ) -> std::io::Result<Hub> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let arbiter_count = config.arbiters.max(1);
        let thread = std::thread::Builder::new()
            .name("mimid-actors".into())
            .spawn(move || {
                let system = actix::System::new();
                let arbiters: Vec<actix::Arbiter> =
                    (0..arbiter_count).map(|_| actix::Arbiter::new()).collect();
                let handles = arbiters.iter().map(|a| a.handle()).collect::<Vec<_>>();
                let _ = ready_tx.send((actix::System::current(), handles));
                let _ = system.run();
                drop(arbiters);
            })?;
        let (system, arbiters) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("actor system failed to start"))?;
        let metrics = Arc::new(ActorMetrics::default());
        let proposer = Proposer {
            cluster,
            shards: shards.clone(),
            clock: clock.clone(),
            router: config.router.clone(),
            metrics: metrics.clone(),
        };
        let streams = Arc::new(Streams::default());
        let ctx = Arc::new(RoomContext {
            shards: shards.clone(),
            proposer: proposer.clone(),
            streams: streams.clone(),
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            federation: config.federation.clone(),
        });
        let router = Router::new(arbiters.clone(), ctx);
        let mover = split::Mover::new(proposer.clone(), shards.clone(), metrics.clone());
        // Fan-out is the shard leader's duty (MIMI.md §5.4: retried until acknowledged): when
        // this node becomes a shard's leader (at start, or later when leadership moves here),
        // every hosted room of that shard with a follower behind resumes from the durable
        // cursors.
        let watcher = router.clone();
        let watched = proposer.clone();
        let resumer = mover.clone();
        let holding: Vec<bool> = (0..shards.count())
            .map(|shard| proposer.holds(shard))
            .collect();
        let (held_tx, held) = tokio::sync::watch::channel(holding);
        arbiters[0].spawn(async move {
            let mut led = vec![false; usize::try_from(watched.shards.count()).unwrap_or(0)];
            let mut tick = tokio::time::interval(LEADERSHIP_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for (shard, was_leader) in (0..).zip(led.iter_mut()) {
                    let leads = watched.leads(shard);
                    if leads && !*was_leader {
                        tracing::info!(shard, "this node leads the shard now");
                        wake_pending_fanout(&watched.shards, &watcher, shard);
                        // Moves a coordinator left frozen there are this node's to finish.
                        resumer.leadership_gained();
                    }
                    *was_leader = leads;
                }
                let holding: Vec<bool> = (0..watched.shards.count())
                    .map(|shard| watched.holds(shard))
                    .collect();
                held_tx.send_if_modified(|held| {
                    let changed = *held != holding;
                    *held = holding;
                    changed
                });
            }
        });
        let dispatcher = router.clone();
        let applied = shards.applied().clone();
        arbiters[0].spawn(async move {
            loop {
                for room in applied.next_batch().await {
                    dispatcher.applied(&room);
                }
            }
        });
        let housekeeper = proposer.clone();
        let period = config.housekeeping;
        let log_retention_ms = u64::try_from(config.log_retention.as_millis()).unwrap_or(u64::MAX);
        arbiters[0].spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await; // the first tick is immediate: nothing has expired yet
            loop {
                tick.tick().await;
                // Only the leader proposes a shard's housekeeping, so each round is one entry.
                for shard in (0..housekeeper.shards.count()).filter(|&s| housekeeper.leads(s)) {
                    // Busy or stopped: the next round does it; nothing waits on this.
                    let command = Command::Housekeeping { log_retention_ms };
                    if let Err(e) = housekeeper.propose_to(shard, command).await {
                        tracing::info!(shard, error = %e, "housekeeping skipped");
                    }
                }
            }
        });
        if config.router.is_some() {
            // Only a node of a cluster records where its shards live: nobody else asks.
            arbiters[0].spawn(report_descriptors(proposer.clone()));
        }
        if !shards.layout().split_shards().is_empty() {
            // Without split shards no room ever moves, so nothing is ever left frozen.
            arbiters[0].spawn(split::resume_moves(mover.clone()));
        }
        Ok(Hub {
            proposer,
            shards,
            router,
            streams,
            metrics,
            limits: config.limits,
            clock,
            system: Some((system, thread)),
            held,
            mover,
        })
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    pub fn metrics(&self) -> &ActorMetrics {
        &self.metrics
    }

    pub fn active_rooms(&self) -> usize {
        self.router.active()
    }

    /// Registers `client`; `linked_by` is the authenticated existing client of the same user
    /// that links it (required unless it is the user's first client).
    pub async fn register_client(
        &self,
        client: ClientId,
        token_hash: [u8; 32],
        linked_by: Option<ClientId>,
    ) -> Result<Result<(), DirectoryError>, HubError> {
        match self
            .proposer
            .propose(Command::RegisterClient {
                client,
                token_hash,
                linked_by,
            })
            .await?
        {
            ApplyOutput::Registered(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Whether `token_hash` is the registered token of `client` (local read). A token the
    /// local replica does not know is checked again after a read barrier, since the replica
    /// may lag the shard's leader (a client that just registered through another node); `Err`
    /// when that cannot be confirmed.
    pub async fn authenticate(
        &self,
        client: &ClientId,
        token_hash: &[u8; 32],
    ) -> Result<bool, HubError> {
        let shard = self.shards.shard_of(&user_shard_key(&client.user()));
        if !self.holds(shard) {
            let read = remote::RemoteRead::Authenticate {
                client: client.clone(),
                token_hash: *token_hash,
            };
            return self.remote(shard, read).await;
        }
        let known = || {
            self.shards
                .get(shard)
                .read()
                .directory()
                .authenticate(client, token_hash)
        };
        if known() {
            return Ok(true);
        }
        self.proposer.read_barrier(shard).await?;
        Ok(known())
    }

    /// Validates every KeyPackage here (signatures: the expensive part, done once, before
    /// proposing), then publishes them all or none.
    pub async fn publish_key_packages(
        &self,
        client: ClientId,
        key_packages: Vec<Vec<u8>>,
        last_resort: bool,
    ) -> Result<usize, PublishError> {
        let now = (self.clock)();
        let key_packages = key_packages
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                validate_key_package(bytes, &client, now)
                    .map(|kp| kp.into_bytes())
                    .map_err(|source| PublishError::Invalid { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self
            .proposer
            .propose(Command::PublishKeyPackages {
                client,
                key_packages,
                last_resort,
            })
            .await?
        {
            ApplyOutput::Published(result) => Ok(result?),
            other => Err(unexpected(other).into()),
        }
    }

    /// Claims one KeyPackage per client of `target` for `requester` to add it to `room`, if
    /// `target`'s reachability and consent admit `requester` (MIMI.md §5.1, §5.6): a refusal
    /// (`ClaimOutcome::Refused`) is decided in the same apply and claims nothing. Every claim
    /// goes through here.
    pub async fn claim_key_packages_in_room(
        &self,
        requester: UserId,
        target: UserId,
        room: RoomId,
    ) -> Result<ClaimOutcome, HubError> {
        match self
            .proposer
            .propose(Command::ClaimKeyPackagesInRoom {
                requester,
                target,
                room,
            })
            .await?
        {
            ApplyOutput::Claimed(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces `user`'s profile (display name and handles) in the provider's handle index
    /// (MIMI.md §5.7); a handle another user owns refuses it (`ProfileError::HandleTaken`).
    pub async fn set_profile(
        &self,
        user: UserId,
        profile: Profile,
    ) -> Result<Result<(), DirectoryError>, HubError> {
        match self
            .proposer
            .propose(Command::SetProfile { user, profile })
            .await?
        {
            ApplyOutput::ProfileSet(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Sets `user`'s discoverability and reachability (MIMI.md §5.6, §5.7).
    pub async fn set_preferences(
        &self,
        user: UserId,
        preferences: Preferences,
    ) -> Result<Result<(), DirectoryError>, HubError> {
        match self
            .proposer
            .propose(Command::SetPreferences { user, preferences })
            .await?
        {
            ApplyOutput::PreferencesSet(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Records a consent step for the local user `target` (MIMI.md §5.6): a request or cancel
    /// from `requester`, or `target`'s own grant or revoke. `DirectoryError::UnknownUser` when
    /// `target` is not a user here (nothing recorded).
    pub async fn consent_as_target(
        &self,
        target: UserId,
        requester: UserId,
        room: Option<RoomId>,
        action: TargetAction,
    ) -> Result<Result<(), DirectoryError>, HubError> {
        self.consent_change(Command::ConsentAsTarget {
            target,
            requester,
            room,
            action,
        })
        .await
    }

    /// Records, for the local user `requester`, its own request or cancel, or the target's
    /// grant or revoke (MIMI.md §5.6: the requester's provider keeps its side).
    pub async fn consent_as_requester(
        &self,
        requester: UserId,
        target: UserId,
        room: Option<RoomId>,
        action: RequesterAction,
    ) -> Result<Result<(), DirectoryError>, HubError> {
        self.consent_change(Command::ConsentAsRequester {
            requester,
            target,
            room,
            action,
        })
        .await
    }

    /// Answers an identifier query (MIMI.md §5.7) from the replicas (no Raft write): which
    /// user the ANDed `terms` name at `own_domain`, if `requester` (`None`: the query names
    /// none) may find it. A user the requester may not find is `NotFound`, exactly like an
    /// unknown one. Shards this node does not hold are read remotely (`remote` module docs).
    pub async fn identifier_query(
        &self,
        terms: &[SearchTerm],
        requester: Option<&UserId>,
        own_domain: &str,
    ) -> Result<QueryOutcome, HubError> {
        match self.find_user(terms, own_domain).await? {
            QueryOutcome::Found(user) => {
                if self.discoverable(&user, requester).await? {
                    Ok(QueryOutcome::Found(user))
                } else {
                    Ok(QueryOutcome::NotFound)
                }
            }
            other => Ok(other),
        }
    }

    /// The handle index's answer to `terms`, before discoverability.
    async fn find_user(
        &self,
        terms: &[SearchTerm],
        own_domain: &str,
    ) -> Result<QueryOutcome, HubError> {
        let shard = self.shards.shard_of(PROFILES_SHARD_KEY);
        if !self.holds(shard) {
            let read = remote::RemoteRead::FindUser {
                terms: terms.to_vec(),
                own_domain: own_domain.to_owned(),
            };
            return self.remote(shard, read).await;
        }
        Ok(self
            .shards
            .get(shard)
            .read()
            .directory()
            .find(terms, own_domain))
    }

    /// Whether `requester` may find `user` (its discoverability).
    async fn discoverable(
        &self,
        user: &UserId,
        requester: Option<&UserId>,
    ) -> Result<bool, HubError> {
        let shard = self.shards.shard_of(&user_shard_key(user));
        if !self.holds(shard) {
            let read = remote::RemoteRead::Discoverable {
                user: user.clone(),
                requester: requester.cloned(),
            };
            return self.remote(shard, read).await;
        }
        Ok(self
            .shards
            .get(shard)
            .read()
            .directory()
            .discoverable_by(user, requester))
    }

    /// `user`'s profile, if it set one.
    pub async fn profile(&self, user: &UserId) -> Result<Option<Profile>, HubError> {
        let shard = self.shards.shard_of(PROFILES_SHARD_KEY);
        let read = || remote::RemoteRead::Profile { user: user.clone() };
        self.read_shard(shard, read, |data| {
            data.directory().profiles().profile(user).cloned()
        })
        .await
    }

    /// `user`'s preferences; the defaults for a user without clients.
    pub async fn preferences(&self, user: &UserId) -> Result<Preferences, HubError> {
        let shard = self.shards.shard_of(&user_shard_key(user));
        let read = || remote::RemoteRead::Preferences { user: user.clone() };
        self.read_shard(shard, read, |data| {
            data.directory().preferences(user).unwrap_or_default()
        })
        .await
    }

    /// `user`'s preferences (defaults for a user without clients) and consent records.
    pub async fn consents(&self, user: &UserId) -> Result<(Preferences, ConsentListing), HubError> {
        let shard = self.shards.shard_of(&user_shard_key(user));
        let read = || remote::RemoteRead::Consents { user: user.clone() };
        self.read_shard(shard, read, |data| {
            let directory = data.directory();
            (
                directory.preferences(user).unwrap_or_default(),
                directory.consents(user),
            )
        })
        .await
    }

    /// What a groupInfo answer (protocol-06 §5.5) for `joiner` takes from `room`, hosted
    /// here: `None` for an unknown room (after a read barrier), the reason an external join of
    /// `joiner` is refused, or the parts.
    pub async fn group_info_parts(
        &self,
        room: &RoomId,
        joiner: &ClientId,
    ) -> Result<Option<Result<remote::GroupInfoParts, String>>, HubError> {
        let shard = self.room_shard(room).await?;
        match self.group_info_parts_in(shard, room, joiner).await? {
            None => match self.follow_move(room, shard).await? {
                Some(moved) => self.group_info_parts_in(moved, room, joiner).await,
                None => Ok(None),
            },
            found => Ok(found),
        }
    }

    /// [`Self::group_info_parts`] of `room` in `shard`.
    async fn group_info_parts_in(
        &self,
        shard: ShardId,
        room: &RoomId,
        joiner: &ClientId,
    ) -> Result<Option<Result<remote::GroupInfoParts, String>>, HubError> {
        if !self.holds(shard) {
            let read = remote::RemoteRead::GroupInfoParts {
                room: room.clone(),
                joiner: joiner.clone(),
            };
            return self.remote(shard, read).await;
        }
        if !self.hosts_in(shard, room).await? {
            return Ok(None);
        }
        let data = self.shards.get(shard).read();
        let Some(state) = data.room(room) else {
            return Ok(None);
        };
        if let Err(reason) = state.check_external_join(joiner) {
            return Ok(Some(Err(reason)));
        }
        Ok(Some(Ok(remote::GroupInfoParts {
            group_info: state.group_info().map(<[u8]>::to_vec),
            ratchet_tree: state.ratchet_tree(),
            pending_proposals: state
                .pending_proposals()
                .into_iter()
                .map(|(at, bytes)| (at, bytes.to_vec()))
                .collect(),
        })))
    }

    /// The latest GroupInfo (`MLSMessage` bytes) of `room`, hosted here; `None` for a room
    /// the replica does not know (no barrier: a caller that needs it comes after a write that
    /// made the room known).
    pub async fn room_group_info(&self, room: &RoomId) -> Result<Option<Vec<u8>>, HubError> {
        let shard = self.room_shard(room).await?;
        match self.room_group_info_in(shard, room).await? {
            None if self.shards.layout().has_pins() => match self.follow_move(room, shard).await? {
                Some(moved) => self.room_group_info_in(moved, room).await,
                None => Ok(None),
            },
            found => Ok(found),
        }
    }

    /// [`Self::room_group_info`] of `room` in `shard`.
    async fn room_group_info_in(
        &self,
        shard: ShardId,
        room: &RoomId,
    ) -> Result<Option<Vec<u8>>, HubError> {
        let read = || remote::RemoteRead::RoomGroupInfo { room: room.clone() };
        self.read_shard(shard, read, |data| {
            data.room(room)
                .and_then(|state| state.group_info().map(<[u8]>::to_vec))
        })
        .await
    }

    /// The last hub seq the mirror of `room` (hosted elsewhere) appended; `None` when this
    /// provider does not mirror it. The replica holds only applied entries: it may lag, never
    /// lead.
    pub async fn mirror_seq(&self, room: &RoomId) -> Result<Option<u64>, HubError> {
        let shard = self.shards.shard_of(room.as_bytes());
        let read = || remote::RemoteRead::MirrorSeq { room: room.clone() };
        self.read_shard(shard, read, |data| {
            data.mirror(room).map(|mirror| mirror.hub_seq())
        })
        .await
    }

    /// Proposes a consent step (`ConsentAsTarget`, `ConsentAsRequester`); its apply answers
    /// `ConsentRecorded`.
    async fn consent_change(
        &self,
        command: Command,
    ) -> Result<Result<(), DirectoryError>, HubError> {
        match self.proposer.propose(command).await? {
            ApplyOutput::ConsentRecorded(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Creates `room` (protocol-06 §5.1 is out of band: the client API's createRoom). With
    /// `residency`, the room is pinned to that residency set (`crate::residency` module
    /// docs); without, it lives in its home shard.
    pub async fn create_room(
        &self,
        room: RoomId,
        creator: ClientId,
        group_info: Vec<u8>,
        ratchet_tree: Vec<u8>,
        residency: Option<&str>,
    ) -> Result<Result<(), CreateRoomRejection>, HubError> {
        let command = Command::CreateRoom {
            room: room.clone(),
            creator,
            group_info,
            ratchet_tree,
        };
        if let Some(set) = residency {
            return self.create_pinned_room(set, command).await;
        }
        // Unpinned: its home shard, whose apply refuses it over a pin.
        let home = self.shards.shard_of(room.as_bytes());
        match self.proposer.propose_to(home, command).await? {
            ApplyOutput::RoomCreated(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Whether `room` is hosted here; an unknown room is checked again after a read barrier,
    /// since this node's replica may lag the shard's leader. A room that moved away from the
    /// shard this node resolved it to is followed ([`Self::follow_move`]).
    async fn check_room(&self, room: &RoomId) -> Result<(), HubError> {
        let shard = self.room_shard(room).await?;
        if self.hosts_in(shard, room).await? {
            return Ok(());
        }
        match self.follow_move(room, shard).await? {
            Some(_) => Ok(()),
            None => Err(HubError::UnknownRoom),
        }
    }

    /// Whether `shard` hosts `room`: read where it is held, after a read barrier before
    /// "no".
    async fn hosts_in(&self, shard: ShardId, room: &RoomId) -> Result<bool, HubError> {
        if !self.holds(shard) {
            let read = remote::RemoteRead::HostsRoom { room: room.clone() };
            return self.remote::<bool>(shard, read).await;
        }
        let known = || self.shards.get(shard).read().room(room).is_some();
        if known() {
            return Ok(true);
        }
        self.proposer.read_barrier(shard).await?;
        Ok(known())
    }

    /// protocol-06 §5.2 for a room hosted here, from a local client or a peer provider.
    pub async fn update(
        &self,
        room: RoomId,
        sender: Submitter,
        bundle: HandshakeBundle,
    ) -> Result<UpdateVerdict, HubError> {
        self.check_room(&room).await?;
        let output = self
            .router
            .request(&room, |permit| RoomRequest::Handshake {
                sender: sender.clone(),
                bundle: bundle.clone(),
                permit,
            })
            .await?;
        match output {
            ApplyOutput::Updated(verdict) => Ok(verdict),
            other => Err(unexpected(other)),
        }
    }

    /// protocol-06 §5.3 for a room hosted here, from a local client or a peer provider, sent
    /// as `sending_user` (`sendingUri`).
    pub async fn submit(
        &self,
        room: RoomId,
        sender: Submitter,
        sending_user: UserId,
        message: Vec<u8>,
    ) -> Result<SubmitVerdict, HubError> {
        self.check_room(&room).await?;
        let output = self
            .router
            .request(&room, |permit| RoomRequest::AppMessage {
                sender: sender.clone(),
                sending_user: sending_user.clone(),
                message: message.clone(),
                permit,
            })
            .await?;
        match output {
            ApplyOutput::Submitted(verdict) => Ok(verdict),
            other => Err(unexpected(other)),
        }
    }

    /// Follower side of protocol-06 §5.4: records what a `notify` from the room's hub brought
    /// (durably, before the caller answers 201). Returns how many items were new.
    pub async fn receive_fanout(
        &self,
        room: RoomId,
        items: Vec<ReceivedItem>,
        body_hash: [u8; 32],
    ) -> Result<usize, HubError> {
        match self
            .proposer
            .propose(Command::FanoutReceived {
                room,
                items,
                body_hash,
            })
            .await?
        {
            ApplyOutput::FanoutReceived { appended } => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    /// Follower side of MIMI.md §6.6: local `client` joined `room` (hosted elsewhere) by the
    /// external commit whose `MLSMessage` bytes hash to `commit_sha256`, which the room's hub
    /// accepted; from now on the mirror delivers the room to it (`MirrorRoom::join`). Returns
    /// whether it was newly recorded.
    pub async fn mirror_join(
        &self,
        room: RoomId,
        client: ClientId,
        commit_sha256: [u8; 32],
    ) -> Result<bool, HubError> {
        match self
            .proposer
            .propose(Command::MirrorJoin {
                room,
                client,
                commit_sha256,
            })
            .await?
        {
            ApplyOutput::MirrorJoined { opened } => Ok(opened),
            other => Err(unexpected(other)),
        }
    }

    /// Welcome routing (MIMI.md §4): the local clients whose claimed KeyPackages these
    /// `KeyPackageRef`s name, in the order given; unknown references are skipped. The claim
    /// records live in the claimed user's shard, which a reference does not name, so every
    /// hashed shard is asked: those this node holds from the local replica (read again after a read
    /// barrier when some reference is unknown there: the claim may have gone through another
    /// node), the others remotely (`remote` module docs); `Err` when a shard cannot answer.
    pub async fn welcome_recipients(&self, refs: &[Vec<u8>]) -> Result<Vec<ClientId>, HubError> {
        let mut found: Vec<Option<ClientId>> = vec![None; refs.len()];
        // Claims live in users' shards, which are hashed ones: a residency shard holds rooms
        // only.
        for shard in 0..self.shards.layout().hashed_count() {
            if found.iter().all(Option::is_some) {
                break;
            }
            let in_shard = if self.holds(shard) {
                self.welcome_refs_in(shard, refs).await?
            } else {
                let read = remote::RemoteRead::WelcomeRefs {
                    refs: refs.to_vec(),
                };
                self.remote(shard, read).await?
            };
            for (slot, client) in found.iter_mut().zip(in_shard) {
                if slot.is_none() {
                    *slot = client;
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// The clients these references name in `shard`'s claim records, held here (one per
    /// reference); when one is unknown, read again after a read barrier.
    async fn welcome_refs_in(
        &self,
        shard: ShardId,
        refs: &[Vec<u8>],
    ) -> Result<Vec<Option<ClientId>>, HubError> {
        let local = || -> Vec<Option<ClientId>> {
            let data = self.shards.get(shard).read();
            refs.iter()
                .map(|reference| data.directory().client_for_ref(reference).cloned())
                .collect()
        };
        let found = local();
        if found.iter().all(Option::is_some) {
            return Ok(found);
        }
        self.proposer.read_barrier(shard).await?;
        Ok(local())
    }

    /// Whether `room` is hosted here. A room this node's replica does not know is looked for
    /// again after a read barrier (the replica may lag); `Err` when that cannot be confirmed.
    pub async fn hosts(&self, room: &RoomId) -> Result<bool, HubError> {
        match self.check_room(room).await {
            Ok(()) => Ok(true),
            Err(HubError::UnknownRoom) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether this node leads `shard` now (as of the replication driver's last turn).
    pub fn leads(&self, shard: ShardId) -> bool {
        self.proposer.leads(shard)
    }

    /// A proposal another node forwarded because the local replica leads `shard`
    /// ([`ProposalRouter`]): `command` is a postcard-encoded, unstamped [`Command`]; it is
    /// stamped with this node's clock and proposed here, never forwarded again. A node that
    /// does not lead the shard (any more) answers [`ForwardError::NotLeader`], and the origin
    /// asks again. A command that does not decode, or whose key is not in `shard`, is refused
    /// (`HubError::Rejected`) without a proposal.
    ///
    /// Tracing: its `raft_proposal` span (field `forwarded`) is a child of the current span;
    /// the node makes that one the child of the origin's (W3C trace context carried with the
    /// forwarded proposal), so the origin's request and this proposal are one trace.
    pub async fn propose_forwarded(
        &self,
        shard: ShardId,
        command: &[u8],
    ) -> Result<ApplyOutput, ForwardError> {
        if shard >= self.shards.count() {
            return Err(HubError::Rejected(format!(
                "forwarded proposal for shard {shard}; there are {}",
                self.shards.count()
            ))
            .into());
        }
        let command: Command = postcard::from_bytes(command)
            .map_err(|e| HubError::Rejected(format!("forwarded command does not decode: {e}")))?;
        // A pinned room's commands go to a residency shard, a moved room's to a split shard,
        // whose leader need not know the pin: a room command may come for its home shard or
        // any residency or split shard.
        let pinned = command.room().is_some() && self.may_host_pinned(shard);
        if let Some(key) = command.shard_key().filter(|_| !pinned) {
            let home = self.shards.shard_of(&key);
            if home != shard {
                return Err(HubError::Rejected(format!(
                    "forwarded command belongs to shard {home}, not {shard}"
                ))
                .into());
            }
        }
        let span = tracing::info_span!(
            "raft_proposal",
            shard,
            forwarded = true,
            bytes = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let proposal = self.proposer.propose_local(shard, command, &span);
        let outcome = proposal.instrument(span.clone()).await;
        if let Err(e) = &outcome {
            span.record("error", tracing::field::display(e));
        }
        // Name the leader this replica knows, so an origin without a replica of the shard need
        // not wait for shard 0's descriptor to learn of it.
        let me = self.proposer.cluster.node_id();
        match (outcome, self.proposer.cluster.leader(shard)) {
            (Err(ForwardError::NotLeader), Some(leader)) if leader != me => {
                Err(ForwardError::NotLeaderNaming(leader))
            }
            (outcome, _) => outcome,
        }
    }

    /// Moves `client`'s delivery cursors. Cursors only move forward (apply ignores
    /// regressions), so a repeated or reordered acknowledgement is harmless.
    pub async fn ack(&self, client: ClientId, acks: Vec<(RoomId, u64)>) -> Result<(), HubError> {
        let mut proposals = Vec::with_capacity(acks.len());
        for (room, seq) in acks {
            let shard = self.room_shard(&room).await?;
            // An ack of a room that moves follows it (cursors only move forward, so an ack
            // overtaking another of the same room on the way is harmless).
            proposals.push(self.proposer.propose_following(
                shard,
                Command::Ack {
                    room,
                    client: client.clone(),
                    seq,
                },
                None,
            ));
        }
        for proposal in proposals {
            match proposal.await? {
                ApplyOutput::Acked => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// Opens `client`'s push stream (replacing an older one): every room it is in sends what
    /// follows its acknowledged cursor, then everything new, in per-room order.
    ///
    /// Only the rooms of shards this node holds are attached here; the node relays the others
    /// from nodes that hold them into [`StreamFeed`] (`remote` module docs).
    pub fn open_stream(&self, client: &ClientId) -> mpsc::Receiver<Delivery> {
        self.open_stream_with_feed(client).0
    }

    /// [`Hub::open_stream`], with the feed other sources push into the same stream.
    pub fn open_stream_with_feed(
        &self,
        client: &ClientId,
    ) -> (mpsc::Receiver<Delivery>, StreamFeed) {
        let (generation, rx) = self.streams.open(client.clone(), self.limits.stream_queue);
        let sender = self
            .streams
            .sender(client)
            .map(|(_, tx)| tx)
            .expect("a stream just opened is open");
        // A room moving between two shards held here is indexed in both for a moment
        // (adopted, not yet released): attached once.
        let mut rooms = std::collections::BTreeSet::new();
        for shard in (0..self.shards.count()).filter(|&shard| self.holds(shard)) {
            rooms.extend(self.shards.get(shard).read().rooms_of(client).cloned());
        }
        for room in rooms {
            self.router.attach(&room, client.clone(), generation);
        }
        let feed = StreamFeed {
            client: client.clone(),
            generation,
            sender,
            streams: self.streams.clone(),
            metrics: self.metrics.clone(),
        };
        (rx, feed)
    }

    /// The hub time now (ms since the UNIX epoch).
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Stops the actor system. Requests still in flight are answered by the cluster.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some((system, thread)) = self.system.take() {
            system.stop();
            let _ = thread.join();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}
