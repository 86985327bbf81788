//! Shard splits (issue 9 build item 3: "a shard splits when it grows hot or large";
//! ARCHITECTURE.md "Shard splits"): the hub's move coordinator.
//!
//! The cluster cannot create Raft groups at runtime, so a split hands rooms of a hot or large
//! shard to a *split shard* (`Layout::split_shards`), one room at a time. A room's move is the
//! four replicated steps of `crate::room_move` (freeze in its source shard S, adopt in the
//! target T, repin in its home shard H, release in S; the repin and the release name the
//! generation of the copy the freeze took, read from its export), each decided in apply and
//! idempotent; [`Hub::move_room`] runs them in order, each retried while its shard is
//! unavailable ([`STEP_DEADLINE`]), and a refusal ends the move with its reason.
//! [`Hub::split_shard`] picks the target (the split shard with the fewest rooms) and which
//! rooms of the shard move (about half of its load, [`pick_rooms`]), and moves them
//! [`MOVES_IN_FLIGHT`] at a time.
//!
//! **Resume.** A coordinator may die between steps, leaving its room frozen in S: every
//! [`MOVE_RESUME_PERIOD`], and when it gains a shard's leadership, the hub looks at the
//! shards this node leads and finishes every move frozen there for at least
//! [`MOVE_RESUME_AFTER`] (a freeze again answers the same export; adopt, repin and release
//! are idempotent), so a room stays frozen for a few seconds at most.
//!
//! **What clients see.** Commands of a frozen room wait and are retried where it is once it
//! moved (`Proposer::propose_following`); commands that reach S after the release are
//! retried in T; a router whose cached pin went stale follows the move (`Hub::follow_move`).
//! None is lost or applied twice: a refused command changed nothing.
//!
//! **Metrics** (`ActorMetrics`): `rooms_moved`, `room_moves_failed`, `room_move_micros`
//! (freeze to release per room). A move is counted once, by the coordinator whose release
//! took the room out of its source (the release answers whether it did): one finished by both
//! its coordinator and the resume task is not counted twice, and one whose release answer
//! was lost on a leader change is not counted.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mimid_cluster::ShardId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::remote::RemoteRead;
use super::{unexpected, Hub, HubError, Proposer};
use crate::actor::ActorMetrics;
use crate::command::Command;
use crate::ids::RoomId;
use crate::room_move::RoomExport;
use crate::shard::{ApplyOutput, ShardData, Shards};

/// Room moves a node runs at once (a split's, `Hub::move_room`'s and the resume task's
/// together), and rooms one split has in flight.
pub const MOVES_IN_FLIGHT: usize = 8;
/// How often the hub looks for moves left frozen in the shards it leads.
pub const MOVE_RESUME_PERIOD: Duration = Duration::from_secs(2);
/// How long a room must have been frozen before the resume task finishes its move (a
/// coordinator's own move takes four proposals; this leaves it to finish undisturbed).
pub const MOVE_RESUME_AFTER: Duration = Duration::from_secs(1);
/// How long one step of a move is retried while its shard is unavailable (no leader, busy).
pub const STEP_DEADLINE: Duration = Duration::from_secs(10);
/// First pause between two tries of a step; it doubles up to [`STEP_RETRY_MAX`].
const STEP_RETRY: Duration = Duration::from_millis(50);
/// Longest pause between two tries of a step.
const STEP_RETRY_MAX: Duration = Duration::from_secs(1);

/// What a shard holds, for the split policy (`mimid-node`'s `cluster_ops::split`) and for
/// picking a split's target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoad {
    /// Hosted rooms (frozen ones included).
    pub rooms: usize,
    /// The sum of every hosted room's last seq: a monotone count of the items the shard's
    /// rooms ever appended (the policy takes differences over time for a rate). It drops when
    /// rooms leave the shard.
    pub items: u64,
}

impl ShardLoad {
    fn of(data: &ShardData) -> ShardLoad {
        ShardLoad {
            rooms: data.room_count(),
            items: data.hosted().map(|state| state.last_seq()).sum(),
        }
    }
}

/// What [`Hub::split_shard`] did (the admin route's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOutcome {
    /// The shard split.
    pub from: ShardId,
    /// The split shard its rooms moved to.
    pub to: ShardId,
    /// The rooms that moved, in the order they were picked (largest first).
    pub moved: Vec<RoomId>,
    /// The rooms whose move failed, with the reason (a room left frozen by a failure is
    /// finished by the resume task).
    pub failed: Vec<(RoomId, String)>,
}

/// Picks `count` of `rooms` (each with its load) so that the rooms picked and the rooms left
/// carry about the same load: largest first (ties by room id), each into the half that
/// carries less so far while both have room for it. Returns the picked rooms, largest first.
pub fn pick_rooms(mut rooms: Vec<(RoomId, u64)>, count: usize) -> Vec<RoomId> {
    rooms.sort_by(|(a, load_a), (b, load_b)| load_b.cmp(load_a).then_with(|| a.cmp(b)));
    let count = count.min(rooms.len());
    let mut keep_slots = rooms.len() - count;
    let (mut picked_load, mut kept_load) = (0u64, 0u64);
    let mut picked = Vec::with_capacity(count);
    for (room, load) in rooms {
        let pick = picked.len() < count && (keep_slots == 0 || picked_load <= kept_load);
        if pick {
            picked_load = picked_load.saturating_add(load);
            picked.push(room);
        } else {
            kept_load = kept_load.saturating_add(load);
            keep_slots -= 1;
        }
    }
    picked
}

/// When a move started, for its duration (`ActorMetrics::room_move_micros`).
#[derive(Debug, Clone, Copy)]
enum Started {
    /// This node freezes the room now (once it has a permit).
    Here,
    /// The room was frozen at this hub time (ms since the UNIX epoch; a resumed move).
    Frozen(u64),
}

/// Runs room moves: the coordinator's and the resume task's (module docs). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Mover {
    proposer: Proposer,
    shards: Shards,
    metrics: Arc<ActorMetrics>,
    /// Rooms whose move this node runs now: the resume task leaves them alone, and a second
    /// move of one of them waits for none.
    running: Arc<Mutex<BTreeSet<RoomId>>>,
    /// Woken when this node gains a shard's leadership: the resume task looks at once.
    gained: Arc<Notify>,
    /// [`MOVES_IN_FLIGHT`] permits, one per move running.
    permits: Arc<Semaphore>,
}

/// A room in [`Mover::running`] until dropped.
struct Running {
    running: Arc<Mutex<BTreeSet<RoomId>>>,
    room: RoomId,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.lock().remove(&self.room);
    }
}

impl Mover {
    pub(crate) fn new(proposer: Proposer, shards: Shards, metrics: Arc<ActorMetrics>) -> Mover {
        Mover {
            proposer,
            shards,
            metrics,
            running: Arc::default(),
            gained: Arc::default(),
            permits: Arc::new(Semaphore::new(MOVES_IN_FLIGHT)),
        }
    }

    /// Tells the resume task that this node leads another shard now.
    pub(crate) fn leadership_gained(&self) {
        self.gained.notify_one();
    }

    /// Moves `room` from `from` to `to`: freeze, adopt, repin, release (module docs), counted
    /// in the metrics; waits for one of the node's [`MOVES_IN_FLIGHT`] permits first.
    async fn run(
        &self,
        room: &RoomId,
        from: ShardId,
        to: ShardId,
        started: Started,
    ) -> Result<(), HubError> {
        let running = {
            let mut running = self.running.lock();
            if !running.insert(room.clone()) {
                return Err(HubError::Unavailable(format!(
                    "room {room} is being moved by this node already"
                )));
            }
            Running {
                running: self.running.clone(),
                room: room.clone(),
            }
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(HubError::Unavailable("room moves stopped".into()));
        };
        let began = Instant::now();
        let span = tracing::info_span!(
            "room_move",
            %room,
            from,
            to,
            error = tracing::field::Empty,
        );
        let result = self.steps(room, from, to).instrument(span.clone()).await;
        drop(running);
        match &result {
            // Finished by another coordinator: that one counted it.
            Ok(false) => span.in_scope(|| tracing::info!("room moved (released by another try)")),
            Ok(true) => {
                let micros = match started {
                    Started::Here => u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Started::Frozen(since_ms) => self
                        .proposer
                        .now_ms()
                        .saturating_sub(since_ms)
                        .saturating_mul(1000),
                };
                self.metrics
                    .rooms_moved
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.metrics.room_move_micros.observe(micros);
                span.in_scope(|| tracing::info!(micros, "room moved"));
            }
            Err(e) => {
                self.metrics
                    .room_moves_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                span.record("error", tracing::field::display(e));
                span.in_scope(|| tracing::warn!(error = %e, "room move failed"));
            }
        }
        result.map(|_| ())
    }

    /// The four steps; a refusal is `HubError::Rejected` naming the step and its reason.
    /// `Ok(true)` when this release took the room out of `from`, `Ok(false)` when another
    /// coordinator's (the resume task's, or this one's own try whose answer was lost) did.
    async fn steps(&self, room: &RoomId, from: ShardId, to: ShardId) -> Result<bool, HubError> {
        let refused = |step: &str, shard: ShardId, reason: &dyn std::fmt::Display| {
            HubError::Rejected(format!("{step} of room {room} in shard {shard}: {reason}"))
        };
        let freeze = Command::FreezeRoom {
            room: room.clone(),
            to,
        };
        let export = match self.step(from, freeze).await? {
            ApplyOutput::RoomFrozen(Ok(export)) => export,
            ApplyOutput::RoomFrozen(Err(refusal)) => return Err(refused("freeze", from, &refusal)),
            other => return Err(unexpected(other)),
        };
        // The generation of the copy frozen (the export's minus one), named by the repin and
        // the release so that neither acts on a newer copy if this move was overtaken
        // (`room_move` module docs, "Generations").
        let generation = RoomExport::decode(&export)
            .map_err(|refusal| refused("freeze", from, &refusal))?
            .generation
            .saturating_sub(1);
        let adopt = Command::AdoptRoom {
            room: room.clone(),
            from,
            export,
        };
        match self.step(to, adopt).await? {
            ApplyOutput::RoomAdopted(Ok(())) => {}
            ApplyOutput::RoomAdopted(Err(refusal)) => return Err(refused("adopt", to, &refusal)),
            other => return Err(unexpected(other)),
        }
        let home = self.shards.shard_of(room.as_bytes());
        let repin = Command::RepinRoom {
            room: room.clone(),
            from,
            to,
            generation,
        };
        match self.step(home, repin).await? {
            ApplyOutput::RoomRepinned(Ok(())) => {}
            ApplyOutput::RoomRepinned(Err(refusal)) => {
                return Err(refused("repin", home, &refusal))
            }
            other => return Err(unexpected(other)),
        }
        // Routers on this node go to the target at once, not by a stale cached pin.
        self.shards.remember_pin(room, to);
        let release = Command::ReleaseRoom {
            room: room.clone(),
            to,
            generation,
        };
        match self.step(from, release).await? {
            ApplyOutput::RoomReleased(Ok(released)) => Ok(released),
            ApplyOutput::RoomReleased(Err(refusal)) => Err(refused("release", from, &refusal)),
            other => Err(unexpected(other)),
        }
    }

    /// Proposes one step to `shard`, again while the shard is unavailable or busy, for at most
    /// [`STEP_DEADLINE`] (every step is idempotent: a try that took effect unseen is answered
    /// the same again).
    async fn step(&self, shard: ShardId, command: Command) -> Result<ApplyOutput, HubError> {
        let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
        let mut pause = STEP_RETRY;
        loop {
            match self.proposer.propose_to(shard, command.clone()).await {
                Err(e @ (HubError::Unavailable(_) | HubError::Busy(_))) => {
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(shard, error = %e, "move step not taken; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STEP_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// Finishes the moves frozen for at least [`MOVE_RESUME_AFTER`] in the shards this node
    /// leads (module docs, "Resume").
    async fn resume_frozen(&self) {
        let after_ms = u64::try_from(MOVE_RESUME_AFTER.as_millis()).unwrap_or(u64::MAX);
        for shard in (0..self.shards.count()).filter(|&shard| self.proposer.leads(shard)) {
            let now_ms = self.proposer.now_ms();
            let due: Vec<(RoomId, ShardId, u64)> = {
                let data = self.shards.get(shard).read();
                let moves = data.room_moves();
                moves
                    .frozen_rooms()
                    .filter_map(|(room, to)| {
                        let since_ms = moves.frozen(room)?.since_ms;
                        (now_ms.saturating_sub(since_ms) >= after_ms)
                            .then(|| (room.clone(), to, since_ms))
                    })
                    .collect()
            };
            for (room, to, since_ms) in due {
                if self.running.lock().contains(&room) {
                    continue;
                }
                tracing::info!(%room, from = shard, to, "finishing a move left frozen");
                // Counted and logged by `run`; the next round tries again if it failed.
                let _ = self.run(&room, shard, to, Started::Frozen(since_ms)).await;
            }
        }
    }
}

/// The hub's resume task (module docs, "Resume"): every [`MOVE_RESUME_PERIOD`] and whenever
/// this node gains a shard's leadership.
pub(crate) async fn resume_moves(mover: Mover) {
    let mut tick = tokio::time::interval(MOVE_RESUME_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let gained = mover.gained.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gained.notified() => {}
        }
        mover.resume_frozen().await;
    }
}

impl Hub {
    /// The load of `shard` when this node holds it (`None` otherwise, or for a shard that
    /// does not exist): its hosted rooms and their items ([`ShardLoad`]). A local read.
    pub fn shard_load(&self, shard: ShardId) -> Option<ShardLoad> {
        (shard < self.shards.count() && self.holds(shard))
            .then(|| ShardLoad::of(&self.shards.get(shard).read()))
    }

    /// [`Self::shard_load`] of any shard: read locally when held, else from a holder
    /// ([`RemoteRead::ShardLoad`]).
    pub async fn read_shard_load(&self, shard: ShardId) -> Result<ShardLoad, HubError> {
        self.check_shard(shard)?;
        self.read_shard(shard, || RemoteRead::ShardLoad, ShardLoad::of)
            .await
    }

    /// The rooms of `shard` that may move (hosted, not frozen for a move), each with its last
    /// seq; read locally when held, else from a holder ([`RemoteRead::MovableRooms`]). A
    /// held replica is read after a read barrier: a split asked through a follower whose
    /// replica had not yet applied the rooms a previous split adopted would otherwise plan
    /// without them, or refuse as if the shard hosted none.
    pub async fn movable_rooms(&self, shard: ShardId) -> Result<Vec<(RoomId, u64)>, HubError> {
        self.check_shard(shard)?;
        if self.holds(shard) {
            self.proposer.read_barrier(shard).await?;
        }
        self.read_shard(
            shard,
            || RemoteRead::MovableRooms,
            |data| {
                data.hosted()
                    .filter(|state| data.moving_to(state.room()).is_none())
                    .map(|state| (state.room().clone(), state.last_seq()))
                    .collect()
            },
        )
        .await
    }

    fn check_shard(&self, shard: ShardId) -> Result<(), HubError> {
        if shard >= self.shards.count() {
            return Err(HubError::Rejected(format!(
                "unknown shard {shard}: this provider has shards 0..{}",
                self.shards.count()
            )));
        }
        Ok(())
    }

    /// Moves `room` to the split shard `to` (module docs): resolves where it is, then
    /// freezes, adopts, repins and releases it, each step retried while its shard is
    /// unavailable. `Ok` when it is in `to` already. Refused (`Rejected`, nothing changed):
    /// `to` is not a split shard, the room lives in a residency set, it is moving elsewhere;
    /// `UnknownRoom` when no shard hosts it. A failure after the freeze leaves the room frozen
    /// until the resume task finishes the move.
    pub async fn move_room(&self, room: &RoomId, to: ShardId) -> Result<(), HubError> {
        let split = self.shards.layout().split_shards();
        if !split.contains(&to) {
            return Err(if split.is_empty() {
                no_split_shards()
            } else {
                HubError::Rejected(format!(
                    "shard {to} is not a split shard (they are {}..{})",
                    split.start, split.end
                ))
            });
        }
        let mut from = self.room_shard(room).await?;
        if !self.hosts_in(from, room).await? {
            from = self
                .follow_move(room, from)
                .await?
                .ok_or(HubError::UnknownRoom)?;
        }
        if from == to {
            return Ok(());
        }
        self.mover.run(room, from, to, Started::Here).await
    }

    /// Splits `from`, a hashed or split shard: moves `rooms` of its rooms (default: half,
    /// rounded down; at most all) to the split shard holding the fewest rooms (not `from`),
    /// picked so that the rooms moved and the rooms left carry about the same load
    /// ([`pick_rooms`], by each room's last seq), [`MOVES_IN_FLIGHT`] at a time. Rooms frozen
    /// for another move stay. Refused (`Rejected`, nothing changed): no split shards, an
    /// unknown shard, a residency shard, no other split shard, no room to move, `rooms` 0.
    /// `Unavailable` when no split shard could tell its load. A room whose move failed is
    /// listed with the reason in [`SplitOutcome::failed`].
    pub async fn split_shard(
        &self,
        from: ShardId,
        rooms: Option<usize>,
    ) -> Result<SplitOutcome, HubError> {
        let layout = self.shards.layout();
        let split = layout.split_shards();
        if split.is_empty() {
            return Err(no_split_shards());
        }
        self.check_shard(from)?;
        if let Some(set) = layout.set_of_shard(from) {
            return Err(HubError::Rejected(format!(
                "shard {from} belongs to residency set {:?}: its rooms stay in its regions and \
                 never move",
                set.name
            )));
        }
        if rooms == Some(0) {
            return Err(HubError::Rejected("rooms must be at least 1".into()));
        }
        let mut target: Option<(ShardId, ShardLoad)> = None;
        let mut unreadable = Vec::new();
        for shard in split.clone().filter(|&shard| shard != from) {
            match self.read_shard_load(shard).await {
                Ok(load) => {
                    let better = target.is_none_or(|(_, best)| {
                        (load.rooms, load.items) < (best.rooms, best.items)
                    });
                    if better {
                        target = Some((shard, load));
                    }
                }
                Err(e) => unreadable.push(format!("shard {shard}: {e}")),
            }
        }
        let Some((to, _)) = target else {
            return Err(if unreadable.is_empty() {
                HubError::Rejected(format!(
                    "shard {from} is the only split shard: there is no other to split it into \
                     (cluster.split_shards)"
                ))
            } else {
                HubError::Unavailable(format!(
                    "no split shard could tell its load: {}",
                    unreadable.join("; ")
                ))
            });
        };
        let movable = self.movable_rooms(from).await?;
        if movable.is_empty() {
            return Err(HubError::Rejected(format!(
                "shard {from} hosts no room that can move"
            )));
        }
        let count = rooms.unwrap_or(movable.len() / 2).min(movable.len());
        if count == 0 {
            return Err(HubError::Rejected(format!(
                "shard {from} hosts one room: half of it is none (name how many rooms move)"
            )));
        }
        let picked = pick_rooms(movable, count);
        let span = tracing::info_span!("split_shard", from, to, rooms = picked.len());
        async move {
            tracing::info!("splitting the shard");
            let mut outcome = SplitOutcome {
                from,
                to,
                moved: Vec::new(),
                failed: Vec::new(),
            };
            // Each move a task of its own, so a caller that goes away (an admin request cut
            // off) leaves no move half done; at most MOVES_IN_FLIGHT of them at a time,
            // answered in the order picked.
            let mut moves: VecDeque<(RoomId, JoinHandle<Result<(), HubError>>)> =
                VecDeque::with_capacity(MOVES_IN_FLIGHT);
            let mut picked = picked.into_iter();
            loop {
                while moves.len() < MOVES_IN_FLIGHT {
                    let Some(room) = picked.next() else {
                        break;
                    };
                    let mover = self.mover.clone();
                    let moving = room.clone();
                    let task = tokio::spawn(
                        async move { mover.run(&moving, from, to, Started::Here).await }
                            .in_current_span(),
                    );
                    moves.push_back((room, task));
                }
                let Some((room, task)) = moves.pop_front() else {
                    break;
                };
                match task.await {
                    Ok(Ok(())) => outcome.moved.push(room),
                    Ok(Err(e)) => outcome.failed.push((room, e.to_string())),
                    Err(e) => outcome
                        .failed
                        .push((room, format!("move task failed: {e}"))),
                }
            }
            tracing::info!(
                moved = outcome.moved.len(),
                failed = outcome.failed.len(),
                "shard split"
            );
            Ok(outcome)
        }
        .instrument(span)
        .await
    }
}

fn no_split_shards() -> HubError {
    HubError::Rejected("no split shards: set cluster.split_shards".into())
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
