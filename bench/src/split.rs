//! The cluster scenario's shard split under load (`--split-shards K --split-at SECS`;
//! ARCHITECTURE.md "Shard splits", ops/runbooks/shard-split.md): at `SECS` into the timed phase
//! the hashed shard holding the most of the bench's rooms splits, as an operator would split
//! it, through `POST /admin/shards/split` on node 1's admin listener, while the senders go on
//! at the offered load.
//!
//! The split cuts the phase into three windows of the load engine's recorder
//! (`load::PhaseClock::open_window`): `before_split` from the phase start, `during_split` from
//! the request to its answer, `after_split` from then on. An operation belongs to the window
//! its intended start falls in (coordinated-omission corrected in the open model), so a send
//! scheduled just before the request that waited for its room's move counts before it, with
//! its wait. The messages of the rooms that moved count as `message_moved` when they were
//! offered after the split's answer (`scenario::MOVED_MESSAGE`, [`MovedFlags`]): by the same
//! clock as the windows, so `after_split` alone has them, told apart from the rooms that
//! stayed. The report ([`SplitReport`]) has the call (when, how long, the answer), the rooms
//! moved and failed, the three windows, and what the nodes' room-move metrics counted over the
//! phase (every node's together: the moves run on the node asked, a move resumed on the
//! source shard's leader).
//!
//! The in-process nodes run without `admin_token_file`, so their operator routes are open on
//! loopback (`admin::auth`): the call carries no token, as the bench's other admin calls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mimid_actors::hub::SplitOutcome;
use mimid_actors::ids::RoomId;
use mimid_actors::residency::Layout;
use mimid_node::admin::admin_call;
use mimid_node::cluster_ops::{SplitRequest, SPLIT_PATH};
use serde::Serialize;
use tokio::time::Instant;

use crate::load::PhaseClock;
use crate::provider::MoveCounters;
use crate::stats::{round_millis, WindowReport};

/// The shard the split moves rooms from (`mimid_cluster::ShardId`).
pub type ShardId = u64;

/// The window from the phase start to the split's request.
pub const BEFORE: &str = "before_split";
/// The window from the split's request to its answer.
pub const DURING: &str = "during_split";
/// The window from the split's answer to the end of the phase.
pub const AFTER: &str = "after_split";
/// Rooms that failed to move listed in the report (the count has them all).
const FAILED_LISTED: usize = 10;
/// Characters of a refusal's text kept in the report.
const ERROR_CHARS: usize = 500;

/// One flag per room of the shard to split: [`NOT_MOVED`], or when the split's answer saying it
/// moved came, in microseconds from the phase start (the room's sender counts its messages
/// offered from then on as `scenario::MOVED_MESSAGE`).
pub type MovedFlags = BTreeMap<RoomId, Arc<AtomicU64>>;

/// A [`MovedFlags`] value: the room did not move (yet).
pub const NOT_MOVED: u64 = u64::MAX;

/// What to split and when, decided once the rooms are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    /// When, from the phase start.
    pub at: Duration,
    /// The shard to split.
    pub shard: ShardId,
    /// The bench's rooms per hashed shard (the shard each room's id hashes to, where it was
    /// created).
    pub rooms_by_shard: BTreeMap<ShardId, usize>,
    /// The bench's rooms on `shard`.
    pub rooms: BTreeSet<RoomId>,
    /// The node asked (its id) and its admin listener.
    pub node_id: u64,
    pub admin: SocketAddr,
}

impl SplitPlan {
    /// The plan for splitting, at `at`, the hashed shard of `layout` holding the most of
    /// `rooms` (the lowest id on a tie), through node `node_id`'s admin listener `admin`;
    /// `None` without rooms.
    pub fn new(
        at: Duration,
        layout: &Layout,
        rooms: &[RoomId],
        node_id: u64,
        admin: SocketAddr,
    ) -> Option<SplitPlan> {
        let mut by_shard: BTreeMap<ShardId, BTreeSet<RoomId>> = BTreeMap::new();
        for room in rooms {
            by_shard
                .entry(layout.home(room.as_bytes()))
                .or_default()
                .insert(room.clone());
        }
        // max_by_key keeps the last of equals: go from the highest id down.
        let (&shard, _) = by_shard.iter().rev().max_by_key(|(_, rooms)| rooms.len())?;
        Some(SplitPlan {
            at,
            shard,
            rooms_by_shard: by_shard.iter().map(|(s, r)| (*s, r.len())).collect(),
            rooms: by_shard.remove(&shard).unwrap_or_default(),
            node_id,
            admin,
        })
    }

    /// A flag, [`NOT_MOVED`], for each of the bench's rooms on the shard.
    pub fn flags(&self) -> MovedFlags {
        self.rooms
            .iter()
            .map(|room| (room.clone(), Arc::new(AtomicU64::new(NOT_MOVED))))
            .collect()
    }
}

/// What the split task did during the phase.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitRun {
    /// When the request went, from the phase start; `None` if the phase ended first.
    pub asked: Option<Duration>,
    /// When its answer came.
    pub answered: Option<Duration>,
    /// How long the admin call took (request to answer).
    pub call: Option<Duration>,
    /// The admin route's status and body, or why the call failed.
    pub answer: Result<(u16, Vec<u8>), String>,
}

/// Splits `plan.shard` at `plan.at` into the phase of `clock`, opening the windows
/// [`DURING`] at the request and [`AFTER`] at its answer, and sets the `moved` flag of each
/// room the answer says moved; prints a line for each when `progress`.
///
/// Cancel safety: not safe; a split asked for runs to its end on the node anyway.
pub async fn run_split(
    clock: PhaseClock,
    plan: SplitPlan,
    moved: MovedFlags,
    progress: bool,
) -> SplitRun {
    if !clock.wait_until(plan.at).await {
        return SplitRun {
            asked: None,
            answered: None,
            call: None,
            answer: Err("the phase ended before --split-at".into()),
        };
    }
    let say = |line: String| {
        if progress {
            crate::progress::line(&line);
        }
    };
    say(format!(
        "# splitting shard {} ({} of the bench's rooms) through node {}",
        plan.shard,
        plan.rooms.len(),
        plan.node_id
    ));
    let request = SplitRequest {
        shard: plan.shard,
        rooms: None,
    };
    let body = serde_json::to_vec(&request).expect("a split request encodes");
    let asked = clock.open_window(DURING);
    let started = Instant::now();
    let answer = admin_call(&plan.admin.to_string(), None, "POST", SPLIT_PATH, &body)
        .await
        .map_err(|error| format!("{error:#}"));
    let call = started.elapsed();
    let answered = clock.open_window(AFTER);
    let outcome = match &answer {
        Ok((200, body)) => serde_json::from_slice::<SplitOutcome>(body).ok(),
        _ => None,
    };
    let answered_us = u64::try_from(answered.as_micros()).unwrap_or(NOT_MOVED - 1);
    for room in outcome.iter().flat_map(|outcome| &outcome.moved) {
        if let Some(flag) = moved.get(room) {
            flag.store(answered_us, Ordering::Relaxed);
        }
    }
    say(format!(
        "# split answered in {:.3} s: {}",
        call.as_secs_f64(),
        match (&outcome, &answer) {
            (Some(outcome), _) => format!(
                "shard {} into {}, {} rooms moved, {} failed",
                outcome.from,
                outcome.to,
                outcome.moved.len(),
                outcome.failed.len()
            ),
            (None, Ok((status, body))) => {
                format!("{status} {}", String::from_utf8_lossy(body).trim())
            }
            (None, Err(error)) => error.clone(),
        }
    ));
    SplitRun {
        asked: Some(asked),
        answered: Some(answered),
        call: Some(call),
        answer,
    }
}

/// The report's `split`: what was split, when, how it went, and the operations before, during
/// and after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitReport {
    /// The shard asked to split: the hashed shard holding the most of the bench's rooms.
    pub shard: ShardId,
    /// The bench's rooms per hashed shard before the split.
    pub bench_rooms_by_shard: BTreeMap<ShardId, usize>,
    /// The node whose admin listener was asked (it coordinates the moves).
    pub node_id: u64,
    /// `--split-at`, seconds from the phase start.
    pub split_at_s: f64,
    /// When the request went and its answer came, seconds from the phase start (`null` if the
    /// phase ended first).
    pub asked_at_s: Option<f64>,
    pub answered_at_s: Option<f64>,
    /// How long `POST /admin/shards/split` took, request to answer.
    pub call_s: Option<f64>,
    /// Its HTTP status (`null` if the call failed).
    pub status: Option<u16>,
    /// The answer when it is not an outcome (a refusal's text), or why the call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The outcome: the shard split and the split shard its rooms moved to.
    pub from: Option<ShardId>,
    pub to: Option<ShardId>,
    pub rooms_moved: usize,
    pub rooms_failed: usize,
    /// How many of the rooms moved are the bench's (all of them in a fresh cluster).
    pub bench_rooms_moved: usize,
    /// The first rooms that failed to move, with the reason.
    pub failed: Vec<(String, String)>,
    /// What the nodes' room-move metrics counted over the phase, every node together.
    pub moves: MoveReport,
    /// The operations meant to start before the request, between the request and its
    /// answer, and after it: [`BEFORE`], [`DURING`], [`AFTER`].
    pub windows: Vec<WindowReport>,
}

/// The nodes' room-move metrics over the phase (`mimid_rooms_moved_total`,
/// `mimid_room_moves_failed_total`, `mimid_room_move_retries_total`,
/// `mimid_room_move_duration_seconds`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MoveReport {
    pub moved: u64,
    pub failed: u64,
    /// Room commands sent again because their room was moving (each wait) or had moved (each
    /// hop to its new shard).
    pub retries: u64,
    /// Moves timed, freeze to release: the longest a room's sends wait.
    pub timed: u64,
    /// Their mean time (`_sum` over `_count`), in milliseconds.
    pub mean_move_ms: Option<f64>,
    /// The slowest took at most this long: the bound of the lowest histogram bucket holding
    /// every move, in milliseconds.
    pub slowest_move_at_most_ms: Option<f64>,
}

impl MoveReport {
    /// From the nodes' counters before and after the phase (in node order).
    pub fn over(before: &[MoveCounters], after: &[MoveCounters]) -> MoveReport {
        let moves = after
            .iter()
            .zip(before)
            .map(|(after, before)| after.since(before))
            .fold(MoveCounters::default(), |sum, node| sum.plus(&node));
        // Milliseconds to the microsecond.
        let ms = |us: f64| (us).round() / 1000.0;
        MoveReport {
            moved: moves.moved,
            failed: moves.failed,
            retries: moves.retries,
            timed: moves.timed,
            mean_move_ms: (moves.timed > 0).then(|| ms(moves.total_us as f64 / moves.timed as f64)),
            slowest_move_at_most_ms: moves.slowest_at_most_us().map(|us| ms(us as f64)),
        }
    }
}

impl SplitReport {
    /// The report of `run` for `plan`, with the phase's `windows` and the nodes' `moves`.
    pub fn new(
        plan: &SplitPlan,
        run: &SplitRun,
        windows: Vec<WindowReport>,
        moves: MoveReport,
    ) -> SplitReport {
        let seconds = |d: Option<Duration>| d.map(|d| round_millis(d.as_secs_f64()));
        let mut report = SplitReport {
            shard: plan.shard,
            bench_rooms_by_shard: plan.rooms_by_shard.clone(),
            node_id: plan.node_id,
            split_at_s: round_millis(plan.at.as_secs_f64()),
            asked_at_s: seconds(run.asked),
            answered_at_s: seconds(run.answered),
            call_s: seconds(run.call),
            status: None,
            error: None,
            from: None,
            to: None,
            rooms_moved: 0,
            rooms_failed: 0,
            bench_rooms_moved: 0,
            failed: Vec::new(),
            moves,
            windows,
        };
        match &run.answer {
            Err(error) => report.error = Some(error.clone()),
            Ok((status, body)) => {
                report.status = Some(*status);
                match serde_json::from_slice::<SplitOutcome>(body) {
                    Ok(outcome) if *status == 200 => {
                        report.from = Some(outcome.from);
                        report.to = Some(outcome.to);
                        report.rooms_moved = outcome.moved.len();
                        report.rooms_failed = outcome.failed.len();
                        report.bench_rooms_moved = outcome
                            .moved
                            .iter()
                            .filter(|room| plan.rooms.contains(*room))
                            .count();
                        report.failed = outcome
                            .failed
                            .iter()
                            .take(FAILED_LISTED)
                            .map(|(room, reason)| (room.to_string(), reason.clone()))
                            .collect();
                    }
                    _ => {
                        let text = String::from_utf8_lossy(body);
                        report.error = Some(text.trim().chars().take(ERROR_CHARS).collect());
                    }
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(n: u64) -> RoomId {
        RoomId::parse(&format!("mimi://a.example/r/split-bench-{n}")).expect("a room id")
    }

    fn admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn the_plan_splits_the_hashed_shard_holding_the_most_of_the_rooms() {
        let layout = Layout::new(4, [], 2).expect("a layout");
        let rooms: Vec<RoomId> = (0..100).map(room).collect();
        let plan =
            SplitPlan::new(Duration::from_secs(10), &layout, &rooms, 1, admin()).expect("a plan");
        let counts = &plan.rooms_by_shard;
        assert_eq!(counts.values().sum::<usize>(), 100);
        assert!(counts.keys().all(|shard| *shard < 4), "hashed shards only");
        let most = *counts.values().max().expect("counts");
        assert_eq!(counts[&plan.shard], most);
        assert!(
            counts.iter().all(|(s, n)| *n < most || *s >= plan.shard),
            "the lowest of the largest"
        );
        assert_eq!(plan.rooms.len(), most);
        let flags = plan.flags();
        assert!(flags.keys().eq(plan.rooms.iter()));
        assert!(flags
            .values()
            .all(|flag| flag.load(Ordering::Relaxed) == NOT_MOVED));
        assert!(plan
            .rooms
            .iter()
            .all(|r| layout.home(r.as_bytes()) == plan.shard));

        // Two rooms on different shards: a tie, the lower shard.
        let first = room(0);
        let other = (1..)
            .map(room)
            .find(|r| layout.home(r.as_bytes()) != layout.home(first.as_bytes()))
            .expect("rooms hash over 4 shards");
        let lower = layout
            .home(first.as_bytes())
            .min(layout.home(other.as_bytes()));
        let tie =
            SplitPlan::new(Duration::ZERO, &layout, &[other, first], 1, admin()).expect("a plan");
        assert_eq!((tie.shard, tie.rooms.len()), (lower, 1));
        assert!(SplitPlan::new(Duration::ZERO, &layout, &[], 1, admin()).is_none());
    }

    fn run(answer: Result<(u16, Vec<u8>), String>) -> SplitRun {
        SplitRun {
            asked: Some(Duration::from_millis(10_002)),
            answered: Some(Duration::from_millis(10_456)),
            call: Some(Duration::from_millis(454)),
            answer,
        }
    }

    #[test]
    fn the_report_names_the_outcome_or_the_refusal() {
        let layout = Layout::new(1, [], 1).expect("a layout");
        let rooms: Vec<RoomId> = (0..4).map(room).collect();
        let plan =
            SplitPlan::new(Duration::from_secs(10), &layout, &rooms, 2, admin()).expect("a plan");
        assert_eq!((plan.shard, plan.rooms.len()), (0, 4), "one hashed shard");
        let outcome = SplitOutcome {
            from: 0,
            to: 1,
            moved: vec![room(1), room(3), room(99)],
            failed: vec![(room(2), "shard 1 has no leader".into())],
        };
        let answer = Ok((200, serde_json::to_vec(&outcome).expect("encodes")));
        let report = SplitReport::new(&plan, &run(answer), Vec::new(), MoveReport::default());
        assert_eq!((report.from, report.to), (Some(0), Some(1)));
        assert_eq!((report.rooms_moved, report.rooms_failed), (3, 1));
        assert_eq!(report.bench_rooms_moved, 2, "room 99 is not the bench's");
        assert_eq!(report.failed[0].1, "shard 1 has no leader");
        assert_eq!(
            (report.asked_at_s, report.answered_at_s, report.call_s),
            (Some(10.002), Some(10.456), Some(0.454))
        );
        assert_eq!((report.status, report.error.as_deref()), (Some(200), None));

        let refused = run(Ok((
            400,
            b"no split shards: set cluster.split_shards\n".to_vec(),
        )));
        let report = SplitReport::new(&plan, &refused, Vec::new(), MoveReport::default());
        assert_eq!(report.status, Some(400));
        assert_eq!(
            report.error.as_deref(),
            Some("no split shards: set cluster.split_shards")
        );
        assert_eq!(report.rooms_moved, 0);
        let failed = SplitReport::new(
            &plan,
            &run(Err("connecting to the admin listener".into())),
            Vec::new(),
            MoveReport::default(),
        );
        assert_eq!(failed.status, None);
        assert!(failed.error.is_some_and(|e| e.contains("connecting")));
    }

    #[test]
    fn the_move_report_adds_the_nodes_counters_over_the_phase() {
        let node = |moved, timed, total_us| MoveCounters {
            moved,
            failed: 0,
            retries: moved * 2,
            timed,
            total_us,
            buckets: vec![(10_000, timed), (u64::MAX, timed)],
        };
        let before = [node(0, 0, 0), node(1, 1, 5_000)];
        let after = [node(40, 40, 800_000), node(3, 3, 9_000)];
        let report = MoveReport::over(&before, &after);
        assert_eq!((report.moved, report.retries, report.timed), (42, 84, 42));
        // (800 ms + 4 ms) / 42 moves.
        assert_eq!(report.mean_move_ms, Some(19.143));
        assert_eq!(report.slowest_move_at_most_ms, Some(10.0));
        assert_eq!(MoveReport::over(&before, &before), MoveReport::default());
    }
}
