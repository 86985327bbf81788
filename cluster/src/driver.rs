//! The node's Raft driver: one thread runs every local shard group (TiKV-style multi-raft,
//! STYLE.md P6), so one loop turn can persist all groups' writes with one durable flush.
//!
//! # One turn
//!
//! 1. Wait for a proposal, the stop signal, or the next tick, then take at most
//!    `max_proposals_per_turn` proposals from the bounded inbox and step them into their groups.
//!    Bounding the work per turn keeps ticks and `Ready` handling flowing under load; stepping
//!    100 000 proposals at once stalled a leader past its election timeout (floors pitfall 13).
//! 2. Tick every group if the tick is due.
//! 3. Phase one, every group with a `Ready` ([`Group::handle_ready`]): send `messages`, apply
//!    a received snapshot, apply `committed_entries`, stage `entries` and the hard state.
//! 4. One atomic sled batch with every group's staged writes, one `flush`, one `fdatasync`
//!    ([`RaftDb::write`]).
//! 5. Phase two, the same groups ([`Group::handle_persisted`]): `persisted_messages`, `advance`,
//!    the `LightReady`, `advance_apply`, snapshot + compaction when due.
//! 6. Apply phase two's writes (commit index, conf states, compactions). They need no flush of
//!    their own: the commit index is recoverable, and a compaction is atomic with its snapshot
//!    record, whose data file was synced when it was staged. Only a compaction that replaces an
//!    older snapshot is flushed, because the older file may be deleted only once the new record
//!    is durable (`snapshot_file.rs`).
//!
//! # Durability and ordering
//!
//! A proposal's `done` runs only when its entry is applied, and an entry is applied only once it
//! is committed, which raft-rs reports only for entries this node persisted (`committed_entries`
//! are bounded by the persisted index) and, with peers, a quorum persisted. Persisted here means
//! step 4 completed, so an answered proposal survives a crash or power loss (with `fsync` on).
//! Messages that promise persistence (votes, append responses) are only sent in step 5.
//!
//! # Failures
//!
//! A group whose storage, state machine or Raft node fails (or panics) is stopped alone: its
//! pending proposals are answered `Stopped` and it receives no more work (STYLE.md P3). A failed
//! turn write means the database itself is failing; the driver then stops everything rather than
//! retry (STYLE.md P4).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use raft::eraftpb::Message;

use crate::group::{catch, error_chain, Group, GroupError, Proposed, Transport};
use crate::metrics::bump;
use crate::reply::Reply;
use crate::storage::{RaftDb, StoreError, WriteBatch};
use crate::{NodeId, ProposeError, ShardId, Shared, StateMachine};

/// A proposal on its way from a handle to the driver.
pub(crate) struct Proposal<O> {
    pub(crate) shard: ShardId,
    pub(crate) command: Vec<u8>,
    pub(crate) reply: Reply<O>,
}

/// Limits of the loop, from `ClusterConfig`.
pub(crate) struct DriverSettings {
    pub(crate) tick_interval: Duration,
    pub(crate) max_proposals_per_turn: usize,
}

pub(crate) struct Driver<S: StateMachine> {
    db: RaftDb,
    groups: Vec<Slot<S>>,
    inbox: Receiver<Proposal<S::Output>>,
    stop: Receiver<()>,
    shared: Arc<Shared>,
    transport: Box<dyn Transport>,
    settings: DriverSettings,
}

enum Slot<S: StateMachine> {
    Running(Box<Group<S>>),
    Failed,
}

/// What woke the loop up.
enum Wake<O> {
    Proposal(Proposal<O>),
    TickDue,
    Stop,
}

impl<S: StateMachine> Driver<S> {
    /// `groups[i]` must be the group of shard `i`.
    pub(crate) fn new(
        db: RaftDb,
        groups: Vec<Group<S>>,
        inbox: Receiver<Proposal<S::Output>>,
        stop: Receiver<()>,
        shared: Arc<Shared>,
        settings: DriverSettings,
    ) -> Self {
        Driver {
            db,
            groups: groups
                .into_iter()
                .map(|group| Slot::Running(Box::new(group)))
                .collect(),
            inbox,
            stop,
            shared,
            transport: Box::new(LocalOnly),
            settings,
        }
    }

    /// Runs turns until told to stop (or until the database fails), then shuts down.
    pub(crate) fn run(mut self) {
        // The first turn runs at once, so the elections started by `Cluster::start` are handled
        // (and readiness published) without waiting a tick.
        let mut next_tick = Instant::now();
        loop {
            let first = match self.wait(next_tick) {
                Wake::Stop => break,
                Wake::Proposal(proposal) => Some(proposal),
                Wake::TickDue => None,
            };
            if let Err(err) = self.turn(first, &mut next_tick) {
                tracing::error!(
                    error = %error_chain(&err),
                    "raft database write failed; stopping all shard groups"
                );
                break;
            }
        }
        self.shut_down();
    }

    fn wait(&self, next_tick: Instant) -> Wake<S::Output> {
        // `select!` picks randomly among ready channels; a requested stop goes first so that
        // shutdown does not wait for a busy inbox to drain.
        if !matches!(self.stop.try_recv(), Err(TryRecvError::Empty)) {
            return Wake::Stop;
        }
        let timeout = next_tick.saturating_duration_since(Instant::now());
        crossbeam_channel::select! {
            // A message or a disconnect (the `Cluster` was dropped) both mean stop.
            recv(self.stop) -> _ => Wake::Stop,
            recv(self.inbox) -> proposal => match proposal {
                Ok(proposal) => Wake::Proposal(proposal),
                Err(_) => Wake::Stop,
            },
            default(timeout) => Wake::TickDue,
        }
    }

    /// One loop turn; the order of the steps is the durability argument in the module docs.
    fn turn(
        &mut self,
        first: Option<Proposal<S::Output>>,
        next_tick: &mut Instant,
    ) -> Result<(), StoreError> {
        self.step_proposals(first);
        let now = Instant::now();
        if now >= *next_tick {
            self.tick_all();
            *next_tick = now + self.settings.tick_interval;
        }
        let readied = self.handle_readies();
        if !readied.is_empty() {
            bump(&self.shared.metrics.ready_turns);
        }
        self.write_staged()?;
        self.handle_persisted(&readied);
        self.write_staged()?;
        self.publish_readiness();
        Ok(())
    }

    fn step_proposals(&mut self, first: Option<Proposal<S::Output>>) {
        let Some(first) = first else {
            return;
        };
        self.step_proposal(first);
        for _ in 1..self.settings.max_proposals_per_turn {
            match self.inbox.try_recv() {
                Ok(proposal) => self.step_proposal(proposal),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }

    fn step_proposal(&mut self, proposal: Proposal<S::Output>) {
        let Proposal {
            shard,
            command,
            reply,
        } = proposal;
        // Handles check the shard range, so a missing slot would be a bug; answer anyway.
        let Some(Slot::Running(group)) = self.groups.get_mut(shard_slot(shard)) else {
            let error = match self.groups.get(shard_slot(shard)) {
                Some(Slot::Failed) => ProposeError::Stopped,
                _ => ProposeError::UnknownShard,
            };
            reply.send(Err(error));
            return;
        };
        let metrics = &self.shared.metrics;
        match catch(|| group.propose(command, reply, metrics)).and_then(|result| result) {
            Ok(Proposed::Accepted) => {}
            Ok(Proposed::Refused(reply, error)) => reply.send(Err(error)),
            Err(err) => self.fail_group(shard, &err),
        }
    }

    fn tick_all(&mut self) {
        for shard in 0..self.groups.len() {
            if let Slot::Running(group) = &mut self.groups[shard] {
                if let Err(err) = catch(|| group.tick()) {
                    self.fail_group(shard as ShardId, &err);
                }
            }
        }
    }

    /// Phase one for every group with a `Ready`; returns the shards that took one.
    fn handle_readies(&mut self) -> Vec<ShardId> {
        let mut readied = Vec::new();
        for shard in 0..self.groups.len() {
            let Slot::Running(group) = &mut self.groups[shard] else {
                continue;
            };
            if !group.has_ready() {
                continue;
            }
            let transport = &mut *self.transport;
            let metrics = &self.shared.metrics;
            match catch(|| group.handle_ready(transport, metrics)).and_then(|result| result) {
                Ok(()) => readied.push(shard as ShardId),
                Err(err) => self.fail_group(shard as ShardId, &err),
            }
        }
        readied
    }

    /// Phase two for the groups that handled a `Ready` this turn.
    fn handle_persisted(&mut self, readied: &[ShardId]) {
        for &shard in readied {
            let Slot::Running(group) = &mut self.groups[shard_slot(shard)] else {
                continue;
            };
            let transport = &mut *self.transport;
            let metrics = &self.shared.metrics;
            if let Err(err) =
                catch(|| group.handle_persisted(transport, metrics)).and_then(|result| result)
            {
                self.fail_group(shard, &err);
            }
        }
    }

    /// Writes every running group's staged writes as one atomic batch.
    fn write_staged(&mut self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for slot in &mut self.groups {
            if let Slot::Running(group) = slot {
                group.take_staged(&mut batch);
            }
        }
        if self.db.write(batch)? {
            bump(&self.shared.metrics.flushes);
        }
        Ok(())
    }

    fn publish_readiness(&self) {
        let ready = self.groups.iter().all(|slot| match slot {
            Slot::Running(group) => group.is_caught_up(),
            Slot::Failed => false,
        });
        self.shared.ready.store(ready, Ordering::Relaxed);
    }

    /// Stops one group for good; dropping it answers its pending proposals `Stopped`.
    fn fail_group(&mut self, shard: ShardId, err: &GroupError) {
        tracing::error!(shard, error = %error_chain(err), "stopping shard group");
        self.groups[shard_slot(shard)] = Slot::Failed;
        bump(&self.shared.metrics.failed_shards);
        self.shared.ready.store(false, Ordering::Relaxed);
    }

    /// Refuses new proposals, answers queued and pending ones `Stopped`, and makes everything
    /// written so far durable.
    fn shut_down(mut self) {
        self.close_inbox();
        let mut batch = WriteBatch::default();
        for slot in &mut self.groups {
            if let Slot::Running(group) = slot {
                group.take_staged(&mut batch);
            }
        }
        let result = self.db.write(batch).and_then(|_| self.db.sync());
        match result {
            Ok(()) => bump(&self.shared.metrics.flushes),
            Err(err) => {
                tracing::error!(error = %error_chain(&err), "final raft database flush failed")
            }
        }
        // Dropping the groups answers their pending proposals `Stopped`.
        self.groups.clear();
    }

    /// Closes the gate handles check before queueing, then drains what is queued. Once the write
    /// lock was held, no `propose` can add to the inbox any more, so nothing is left behind.
    fn close_inbox(&self) {
        *self.shared.open.write() = false;
        self.shared.ready.store(false, Ordering::Relaxed);
        while let Ok(proposal) = self.inbox.try_recv() {
            proposal.reply.send(Err(ProposeError::Stopped));
        }
    }
}

impl<S: StateMachine> Drop for Driver<S> {
    /// Also runs if the driver thread panics, so queued proposals are still answered.
    fn drop(&mut self) {
        self.close_inbox();
    }
}

/// The only transport until node-to-node QUIC exists: a single-node cluster never addresses
/// another node, so a message for one means a misconfigured group.
struct LocalOnly;

impl Transport for LocalOnly {
    fn send(&mut self, shard: ShardId, to: NodeId, messages: Vec<Message>) {
        tracing::error!(
            shard,
            to,
            count = messages.len(),
            "no transport to other nodes; dropping raft messages"
        );
    }
}

fn shard_slot(shard: ShardId) -> usize {
    usize::try_from(shard).unwrap_or(usize::MAX)
}
