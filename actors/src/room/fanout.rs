//! `FanoutCore`: the sans-IO core of a hub room's fan-out to follower providers (MIMI.md §5.4,
//! DESIGN.md §4, STYLE.md P1).
//!
//! Inputs: the replicated room state (which followers exist, their durable cursors, the log),
//! the time, and the outcome of each notify. Output: batches to send. Per follower there is at
//! most one notify in flight, so each follower receives the room's items in hub order, and each
//! item is sent once per follower provider, not once per recipient. A batch holds at most
//! `batch_items` items; while one is in flight, new items wait and go out together in the next
//! one, so a busy room sends fewer, larger notifies.
//!
//! Progress: after a 201 the core sends the next batch at once, and remembers the follower's
//! new cursor as unrecorded; the shell records unrecorded cursors through Raft
//! (`Command::FanoutDelivered`) a little later, one entry per follower for however many
//! notifies were acknowledged meanwhile, so a busy room does not write a Raft entry per notify.
//! If the hub restarts before a cursor is durable, it resends from the durable cursor and the
//! follower drops what it already has by hub seq (`MirrorRoom`).
//!
//! Failures: a failed notify is retried after an exponential backoff from `retry_initial_ms` up
//! to `retry_max_ms`, or after the follower's `Retry-After` if that is longer, forever: a
//! `success` verdict is a promise of distribution (MIMI.md §7.3 step 8).
//!
//! Lag ([`FanoutCore::lag`]): per follower, how far the room's log is ahead of what the follower
//! acknowledged, for the node's metrics (`mimid_fanout_lag_items`, `mimid_fanout_lag_seconds`).

use std::collections::BTreeMap;

use crate::room::log::LogItem;
use crate::room::state::RoomState;

/// Bounds of fan-out, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutLimits {
    /// Most items in one notify.
    pub batch_items: usize,
    /// First retry delay after a failed notify, in milliseconds.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

/// How far a hosted room's log is ahead of a follower provider ([`FanoutCore::lag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutLag {
    /// Items from the oldest item the follower is to receive and has not acknowledged to the
    /// end of the log: exact, except that Welcomes for other providers' clients after that
    /// item count too (finding them would mean a scan of the whole backlog).
    pub items: u64,
    /// The hub time (ms since the UNIX epoch) at which that oldest item was accepted.
    pub oldest_ts_ms: u64,
}

/// One notify to send: `items` (in log order) of the room to follower `provider`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub provider: String,
    pub items: Vec<LogItem>,
}

#[derive(Debug, Default)]
struct Destination {
    /// Everything up to here was acknowledged (or is not for this follower).
    sent_up_to: u64,
    /// Last seq of the batch in flight.
    in_flight: Option<u64>,
    /// Consecutive failures.
    failures: u32,
    /// No new attempt before this hub time (ms).
    retry_at_ms: Option<u64>,
    /// Acknowledged up to here, not yet recorded through Raft.
    unrecorded: Option<u64>,
}

#[derive(Debug, Default)]
pub struct FanoutCore {
    destinations: BTreeMap<String, Destination>,
}

impl FanoutCore {
    /// The batches to send now: for every follower with items after its cursor, nothing in
    /// flight and no backoff pending at `now_ms`.
    pub fn poll(&mut self, room: &RoomState, now_ms: u64, limits: &FanoutLimits) -> Vec<Batch> {
        let mut batches = Vec::new();
        for provider in room.followers() {
            let destination = self.destinations.entry(provider.to_owned()).or_default();
            destination.sent_up_to = destination.sent_up_to.max(room.fanout_cursor(provider));
            if destination.in_flight.is_some()
                || destination.retry_at_ms.is_some_and(|at| at > now_ms)
            {
                continue;
            }
            destination.retry_at_ms = None;
            let items: Vec<LogItem> = room
                .fanout_backlog(provider, destination.sent_up_to)
                .take(limits.batch_items.max(1))
                .cloned()
                .collect();
            let Some(last) = items.last() else { continue };
            destination.in_flight = Some(last.seq);
            batches.push(Batch {
                provider: provider.to_owned(),
                items,
            });
        }
        batches
    }

    /// `provider` answered 201 to its batch in flight. Returns the seq its cursor may move to,
    /// which is now unrecorded until [`FanoutCore::take_unrecorded`].
    pub fn on_delivered(&mut self, provider: &str) -> Option<u64> {
        let destination = self.destinations.get_mut(provider)?;
        let seq = destination.in_flight.take()?;
        destination.sent_up_to = destination.sent_up_to.max(seq);
        destination.failures = 0;
        destination.unrecorded = Some(destination.unrecorded.map_or(seq, |old| old.max(seq)));
        Some(seq)
    }

    /// The cursors acknowledged since the last call, one per follower (the furthest), to be
    /// recorded through Raft.
    pub fn take_unrecorded(&mut self) -> Vec<(String, u64)> {
        self.destinations
            .iter_mut()
            .filter_map(|(provider, d)| d.unrecorded.take().map(|seq| (provider.clone(), seq)))
            .collect()
    }

    /// `provider`'s batch in flight failed at `now_ms`; `retry_after_ms` is what the follower
    /// asked for, if anything. Returns the delay before the next attempt.
    pub fn on_failed(
        &mut self,
        provider: &str,
        now_ms: u64,
        retry_after_ms: Option<u64>,
        limits: &FanoutLimits,
    ) -> u64 {
        let destination = self.destinations.entry(provider.to_owned()).or_default();
        destination.in_flight = None;
        destination.failures = destination.failures.saturating_add(1);
        let exponent = destination.failures.saturating_sub(1).min(32);
        let backoff = limits
            .retry_initial_ms
            .saturating_mul(1u64 << exponent)
            .min(limits.retry_max_ms);
        let delay = backoff.max(retry_after_ms.unwrap_or(0));
        destination.retry_at_ms = Some(now_ms.saturating_add(delay));
        delay
    }

    /// Whether nothing is in flight, waiting for a retry or waiting to be recorded.
    pub fn is_quiet(&self) -> bool {
        self.destinations
            .values()
            .all(|d| d.in_flight.is_none() && d.retry_at_ms.is_none() && d.unrecorded.is_none())
    }

    /// Every follower with something to receive that it has not acknowledged (in flight,
    /// waiting for a retry, or not sent yet), and how far behind it is. Followers with nothing
    /// due are left out. Costs what [`FanoutCore::poll`] does: per follower, a look at the log
    /// after its cursor until the first item for it.
    pub fn lag(&self, room: &RoomState) -> BTreeMap<String, FanoutLag> {
        let last = room.last_seq();
        room.followers()
            .filter_map(|provider| {
                let acknowledged = self
                    .destinations
                    .get(provider)
                    .map_or(0, |d| d.sent_up_to)
                    .max(room.fanout_cursor(provider));
                let oldest = room.fanout_backlog(provider, acknowledged).next()?;
                Some((
                    provider.to_owned(),
                    FanoutLag {
                        items: last.saturating_sub(oldest.seq) + 1,
                        oldest_ts_ms: oldest.ts_ms,
                    },
                ))
            })
            .collect()
    }

    /// Consecutive failures of `provider`'s notifies (0 when the last one succeeded).
    pub fn failures(&self, provider: &str) -> u32 {
        self.destinations.get(provider).map_or(0, |d| d.failures)
    }
}
