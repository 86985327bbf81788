//! Automatic shard splits (issue 9 build item 3, "a shard splits when it grows hot or large";
//! ARCHITECTURE.md "Shard splits"; ops/runbooks/shard-split.md): when a shard this node leads
//! holds more rooms than `cluster.split.max_rooms`, or its rooms' logs grow faster than
//! `cluster.split.max_items_per_sec`, about half its rooms move to a split shard
//! (`Hub::split_shard`, which picks the split shard holding the fewest rooms and moves each
//! room with the replicated freeze / adopt / repin / release steps).
//!
//! [`SplitPolicy`] is the sans-IO core: it is fed what the shards this node leads look like at
//! a time the caller gives ([`SplitPolicy::observe_round`]) and says which shard to split, if
//! any ([`SplitPolicy::decide`]); it reads no clock and performs no IO, so its tests feed it
//! times. Its rules:
//! - **Large**: a shard holding more than `max_rooms` rooms (the latest observation).
//! - **Hot**: a shard whose items a second exceeded `max_items_per_sec` over *each* of the last
//!   two check intervals (three consecutive observations; the rate of an interval is the
//!   growth of the sum of its rooms' last log positions over the time between the two
//!   observations). Two intervals, not one: a shard that has just adopted rooms from a split
//!   sees their whole logs arrive at once, which would read as one interval of enormous rate
//!   on whichever node leads it, and would split it again at once; a burst shorter than an
//!   interval is not worth a split either.
//! - **Which shards**: hashed shards, and split shards when there are at least two (a split
//!   shard splits into another one, never into itself). Residency shards never split (their
//!   rooms must stay in their regions), and a shard holding fewer than two rooms neither (one
//!   room moved whole moves its load along).
//! - **One at a time** per node ([`SplitPolicy::started`], [`SplitPolicy::finished`]), the
//!   most loaded candidate first (the largest ratio of load to threshold; the lowest shard id
//!   on a tie), and a **cooldown** per shard after a split or a failed one, for the shard and
//!   for the split shard that took its rooms. A finished split also forgets both shards'
//!   observations: their loads just changed by the move.
//! - A shard missing from a round (no longer led here) is forgotten: another leader may have
//!   split it meanwhile, so its history restarts when this node leads it again.
//!
//! [`run_splits`] is the shell: every `check_interval_ms`, on every node of a cluster with
//! split shards and a threshold on, it feeds the policy `Hub::shard_load` of each shard this
//! node leads (`Hub::leads`), runs `Hub::split_shard` for what the policy decides, logs the
//! outcome and counts it in `mimid_shard_splits_total{trigger="automatic", outcome}`. A split
//! asked by the operator (`POST /admin/shards/split`, [`super::http`]) and an automatic one
//! never run at once on a node: both take [`ClusterOps::begin_split`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mimid_actors::hub::{Hub, HubError};
use mimid_actors::residency::Layout;
use mimid_cluster::ShardId;
use tokio::time::MissedTickBehavior;

use super::ClusterOps;
use crate::config::SplitSettings;
use crate::metrics::{SplitOutcomeLabel, SplitTrigger};

/// What one shard looks like as of an observation (`Hub::shard_load`).
pub use mimid_actors::hub::ShardLoad;
/// What a split did (`Hub::split_shard`): the JSON of `POST /admin/shards/split`.
pub use mimid_actors::hub::SplitOutcome;

/// Observations kept per shard: three make the two intervals a hot shard must be hot over.
const OBSERVATIONS: usize = 3;

/// What the policy reads from `[cluster.split]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitThresholds {
    /// More rooms than this is large; 0: off.
    pub max_rooms: u64,
    /// More items a second than this over each of two intervals is hot; 0: off.
    pub max_items_per_sec: u64,
    /// How long a shard waits after a split (or a failed one) before it may split again.
    pub cooldown: Duration,
}

impl From<&SplitSettings> for SplitThresholds {
    fn from(settings: &SplitSettings) -> Self {
        SplitThresholds {
            max_rooms: settings.max_rooms,
            max_items_per_sec: settings.max_items_per_sec,
            cooldown: Duration::from_secs(settings.cooldown_secs),
        }
    }
}

/// Why the policy picked a shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitReason {
    /// It holds more rooms than `max_rooms`.
    Large { rooms: u64, max_rooms: u64 },
    /// Its items a second over the last two intervals (the lower of the two) exceed
    /// `max_items_per_sec`.
    Hot {
        items_per_sec: f64,
        max_items_per_sec: u64,
    },
}

impl std::fmt::Display for SplitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitReason::Large { rooms, max_rooms } => {
                write!(
                    f,
                    "{rooms} rooms, above cluster.split.max_rooms = {max_rooms}"
                )
            }
            SplitReason::Hot {
                items_per_sec,
                max_items_per_sec,
            } => write!(
                f,
                "{items_per_sec:.0} items/s over the last two checks, above \
                 cluster.split.max_items_per_sec = {max_items_per_sec}"
            ),
        }
    }
}

/// The policy's answer: split `shard`, because of `reason`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitDecision {
    pub shard: ShardId,
    pub reason: SplitReason,
}

/// The sans-IO split policy (module docs).
#[derive(Debug)]
pub struct SplitPolicy {
    thresholds: SplitThresholds,
    hashed: Range<ShardId>,
    split: Range<ShardId>,
    /// The latest observations of each shard this node led in the last round, oldest first,
    /// at most [`OBSERVATIONS`].
    seen: BTreeMap<ShardId, Vec<(Instant, ShardLoad)>>,
    /// Shards that may not split before the time given.
    cooling: BTreeMap<ShardId, Instant>,
    /// The shard whose split runs.
    running: Option<ShardId>,
}

impl SplitPolicy {
    /// The policy of a cluster laid out as `layout` (which shards are hashed and which are
    /// split shards; residency shards are neither and never split).
    pub fn new(thresholds: SplitThresholds, layout: &Layout) -> Self {
        SplitPolicy {
            thresholds,
            hashed: 0..layout.hashed_count(),
            split: layout.split_shards(),
            seen: BTreeMap::new(),
            cooling: BTreeMap::new(),
            running: None,
        }
    }

    /// Whether any threshold is on and a shard could split into a split shard at all.
    pub fn is_active(&self) -> bool {
        (self.thresholds.max_rooms != 0 || self.thresholds.max_items_per_sec != 0)
            && !self.split.is_empty()
    }

    /// Records one round of observations at `now`: the load of every shard this node leads.
    /// Shards absent from `loads` are forgotten (module docs); their cooldowns stay.
    pub fn observe_round(
        &mut self,
        now: Instant,
        loads: impl IntoIterator<Item = (ShardId, ShardLoad)>,
    ) {
        let mut seen = BTreeMap::new();
        for (shard, load) in loads {
            let mut history = self.seen.remove(&shard).unwrap_or_default();
            // A round at the same time or earlier than the last one tells no rate.
            if history.last().is_some_and(|(at, _)| *at >= now) {
                history.clear();
            }
            history.push((now, load));
            if history.len() > OBSERVATIONS {
                history.remove(0);
            }
            seen.insert(shard, history);
        }
        self.seen = seen;
        self.cooling.retain(|_, until| *until > now);
    }

    /// The shard to split now, if any: none while a split runs; otherwise the most loaded
    /// candidate (module docs).
    pub fn decide(&self, now: Instant) -> Option<SplitDecision> {
        if self.running.is_some() || !self.is_active() {
            return None;
        }
        let mut best: Option<(f64, SplitDecision)> = None;
        for (&shard, history) in &self.seen {
            if !self.may_split(shard) || self.cooling.get(&shard).is_some_and(|t| *t > now) {
                continue;
            }
            let Some((_, latest)) = history.last() else {
                continue;
            };
            if latest.rooms < 2 {
                continue;
            }
            for (load, reason) in self.over_thresholds(history) {
                // Strictly greater: on a tie the lower shard, seen first, stays.
                if best.as_ref().is_none_or(|(top, _)| load > *top) {
                    best = Some((load, SplitDecision { shard, reason }));
                }
            }
        }
        best.map(|(_, decision)| decision)
    }

    /// A split of `shard` started (the caller runs it).
    pub fn started(&mut self, shard: ShardId) {
        debug_assert!(self.running.is_none(), "one split at a time");
        self.running = Some(shard);
    }

    /// The split of `shard` ended at `now`; `to` is the split shard that took its rooms, when
    /// it got that far. Both cool down and their observations restart.
    pub fn finished(&mut self, now: Instant, shard: ShardId, to: Option<ShardId>) {
        if self.running == Some(shard) {
            self.running = None;
        }
        let until = now + self.thresholds.cooldown;
        for cooled in std::iter::once(shard).chain(to) {
            self.cooling.insert(cooled, until);
            self.seen.remove(&cooled);
        }
    }

    /// The items a second of `shard` over the interval ending at its latest observation;
    /// `None` before two observations, or when the sum fell (rooms left the shard).
    pub fn rate(&self, shard: ShardId) -> Option<f64> {
        let history = self.seen.get(&shard)?;
        let [.., before, after] = history.as_slice() else {
            return None;
        };
        interval_rate(before, after)
    }

    /// Hashed shards, and split shards when another split shard can take their rooms.
    fn may_split(&self, shard: ShardId) -> bool {
        self.hashed.contains(&shard)
            || (self.split.contains(&shard) && self.split.end - self.split.start >= 2)
    }

    /// Each threshold `history` is over, with its load relative to the threshold.
    fn over_thresholds(&self, history: &[(Instant, ShardLoad)]) -> Vec<(f64, SplitReason)> {
        let mut over = Vec::new();
        let thresholds = &self.thresholds;
        if let Some((_, latest)) = history.last() {
            let rooms = latest.rooms as u64;
            if thresholds.max_rooms != 0 && rooms > thresholds.max_rooms {
                over.push((
                    rooms as f64 / thresholds.max_rooms as f64,
                    SplitReason::Large {
                        rooms,
                        max_rooms: thresholds.max_rooms,
                    },
                ));
            }
        }
        if thresholds.max_items_per_sec != 0 && history.len() >= OBSERVATIONS {
            let rates: Option<Vec<f64>> = history
                .windows(2)
                .map(|pair| interval_rate(&pair[0], &pair[1]))
                .collect();
            let slowest = rates.and_then(|rates| rates.into_iter().reduce(f64::min));
            if let Some(slowest) = slowest {
                let max = thresholds.max_items_per_sec as f64;
                if slowest > max {
                    over.push((
                        slowest / max,
                        SplitReason::Hot {
                            items_per_sec: slowest,
                            max_items_per_sec: thresholds.max_items_per_sec,
                        },
                    ));
                }
            }
        }
        over
    }
}

/// Items a second between two observations; `None` when no time passed or the sum fell.
fn interval_rate(before: &(Instant, ShardLoad), after: &(Instant, ShardLoad)) -> Option<f64> {
    let elapsed = after.0.checked_duration_since(before.0)?.as_secs_f64();
    if elapsed <= 0.0 {
        return None;
    }
    let grown = after.1.items.checked_sub(before.1.items)?;
    Some(grown as f64 / elapsed)
}

/// The automatic splits of one node (module docs): until aborted.
///
/// Cancel safety: safe to abort at any await; a split aborted half-way leaves its current
/// rooms frozen until the hub's resume task finishes their moves.
pub(super) async fn run_splits(ops: Arc<ClusterOps>) {
    let settings = ops.settings.split.clone();
    let Some(layout) = ops.hub().map(|hub| hub.shards().layout().clone()) else {
        return;
    };
    let mut policy = SplitPolicy::new(SplitThresholds::from(&settings), &layout);
    if !policy.is_active() {
        return;
    }
    tracing::info!(
        max_rooms = settings.max_rooms,
        max_items_per_sec = settings.max_items_per_sec,
        cooldown_secs = settings.cooldown_secs,
        check_interval_ms = settings.check_interval_ms,
        split_shards = ?layout.split_shards(),
        "automatic shard splits on"
    );
    let mut tick = tokio::time::interval(Duration::from_millis(settings.check_interval_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = ops.hub() else {
            continue;
        };
        let now = Instant::now();
        let loads: Vec<(ShardId, ShardLoad)> = (0..layout.total())
            .filter(|&shard| hub.leads(shard))
            .filter_map(|shard| hub.shard_load(shard).map(|load| (shard, load)))
            .collect();
        policy.observe_round(now, loads);
        let Some(decision) = policy.decide(now) else {
            continue;
        };
        // An operator's split runs: this one waits for a later check.
        let Some(running) = ops.begin_split(decision.shard) else {
            continue;
        };
        policy.started(decision.shard);
        tracing::info!(shard = decision.shard, reason = %decision.reason, "shard splits");
        let result = split(running, hub, None, SplitTrigger::Automatic).await;
        let to = result.as_ref().ok().map(|outcome| outcome.to);
        policy.finished(Instant::now(), decision.shard, to);
    }
}

impl ClusterOps {
    /// Marks a split of `shard` as running on this node, or `None` when one runs already; the
    /// mark goes with the returned guard ([`split`] keeps it until the split ends).
    pub(super) fn begin_split(self: &Arc<Self>, shard: ShardId) -> Option<SplitRunning> {
        let mut running = self.splitting.lock();
        if running.is_some() {
            return None;
        }
        *running = Some(shard);
        Some(SplitRunning {
            ops: self.clone(),
            shard,
        })
    }

    /// The shard whose split runs on this node.
    pub(super) fn split_running(&self) -> Option<ShardId> {
        *self.splitting.lock()
    }
}

/// A split running on this node ([`ClusterOps::begin_split`]); dropping it ends the mark.
pub(super) struct SplitRunning {
    ops: Arc<ClusterOps>,
    shard: ShardId,
}

impl Drop for SplitRunning {
    fn drop(&mut self) {
        *self.ops.splitting.lock() = None;
    }
}

/// Runs `Hub::split_shard` of the shard `running` marks, moving `rooms` of its rooms, to its
/// end in a task of its own that keeps the mark, logs and counts the outcome: a caller that
/// goes away cuts no room's move in the middle and lets no second split start meanwhile.
///
/// Cancel safety: safe to drop; the split goes on.
pub(super) async fn split(
    running: SplitRunning,
    hub: Arc<Hub>,
    rooms: Option<usize>,
    trigger: SplitTrigger,
) -> Result<SplitOutcome, HubError> {
    let shard = running.shard;
    let task = tokio::spawn(async move {
        let result = hub.split_shard(shard, rooms).await;
        let outcome = report(shard, trigger, &result);
        running.ops.metrics.count_shard_split(trigger, outcome);
        drop(running);
        result
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(HubError::Unavailable(format!(
            "the split of shard {shard} stopped: {e}"
        ))),
    }
}

/// Logs how the split of `shard` ended; its label for `mimid_shard_splits_total`.
fn report(
    shard: ShardId,
    trigger: SplitTrigger,
    result: &Result<SplitOutcome, HubError>,
) -> SplitOutcomeLabel {
    match result {
        Ok(outcome) if !outcome.moved.is_empty() => {
            tracing::info!(
                shard,
                to = outcome.to,
                moved = outcome.moved.len(),
                failed = outcome.failed.len(),
                trigger = trigger.as_str(),
                "shard split"
            );
            for (room, reason) in &outcome.failed {
                tracing::warn!(shard, to = outcome.to, %room, %reason, "room not moved by the split");
            }
            SplitOutcomeLabel::Moved
        }
        Ok(outcome) => {
            tracing::warn!(
                shard,
                to = outcome.to,
                failed = outcome.failed.len(),
                trigger = trigger.as_str(),
                "shard split moved no room"
            );
            SplitOutcomeLabel::Failed
        }
        Err(HubError::Rejected(reason)) => {
            tracing::info!(shard, %reason, trigger = trigger.as_str(), "shard split refused");
            SplitOutcomeLabel::Refused
        }
        Err(e) => {
            tracing::warn!(shard, error = %e, trigger = trigger.as_str(), "shard split failed");
            SplitOutcomeLabel::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{MimiClient, SubmitResult};
    use mimid_actors::ids::{ClientId, RoomId};
    use std::collections::BTreeSet;

    const SEC: Duration = Duration::from_secs(1);

    /// 4 hashed shards (0-3), a residency set of one shard (4), split shards 5 and 6.
    fn layout() -> Layout {
        Layout::new(
            4,
            [("eu".to_owned(), BTreeSet::from(["eu".to_owned()]), 1)],
            2,
        )
        .unwrap()
    }

    fn policy(max_rooms: u64, max_items_per_sec: u64) -> SplitPolicy {
        SplitPolicy::new(
            SplitThresholds {
                max_rooms,
                max_items_per_sec,
                cooldown: Duration::from_secs(60),
            },
            &layout(),
        )
    }

    fn load(rooms: usize, items: u64) -> ShardLoad {
        ShardLoad { rooms, items }
    }

    fn decided(policy: &SplitPolicy, now: Instant) -> Option<ShardId> {
        policy.decide(now).map(|decision| decision.shard)
    }

    /// One provider `domain` on loopback, configured by `config`, its data in a temporary
    /// directory `<prefix>…` under `parent`.
    async fn start_provider(
        parent: &tempfile::TempDir,
        domain: &str,
        prefix: &'static str,
        config: &crate::config::Config,
    ) -> crate::demo::LoopbackProviders {
        crate::demo::start_providers(
            &[domain],
            crate::demo::DataDir::Temporary {
                parent: parent.path().to_path_buf(),
                prefix,
            },
            config,
        )
        .await
        .expect("provider starts")
    }

    /// Alice of the one provider of `providers`, registered, and `count` rooms she created
    /// whose ids (`mimi://a.example/r/<name>-<n>`) hash to shard 1.
    async fn alice_with_rooms_in_shard_1(
        providers: &crate::demo::LoopbackProviders,
        name: &str,
        count: usize,
    ) -> (MimiClient, Vec<RoomId>) {
        let provider = &providers.providers()[0];
        let layout = provider.node().hub().shards().layout().clone();
        let rooms: Vec<RoomId> = (0..)
            .map(|n| RoomId::parse(&format!("mimi://a.example/r/{name}-{n}")).unwrap())
            .filter(|room| layout.home(room.as_bytes()) == 1)
            .take(count)
            .collect();
        let alice = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        let mut client = MimiClient::register(provider.endpoint(), alice)
            .await
            .expect("registered");
        for room in &rooms {
            client.create_room(room).await.expect("room created");
        }
        (client, rooms)
    }

    /// Issue 9 item 3: a shard above `max_rooms` is large and splits; at the threshold it
    /// does not; the most loaded of two candidates goes first.
    #[test]
    fn a_shard_above_max_rooms_splits_and_the_largest_goes_first() {
        let mut policy = policy(100, 0);
        let t0 = Instant::now();
        policy.observe_round(t0, [(1, load(100, 0)), (2, load(50, 0))]);
        assert_eq!(
            decided(&policy, t0),
            None,
            "at the threshold is not above it"
        );
        policy.observe_round(t0 + SEC, [(1, load(101, 0)), (2, load(150, 0))]);
        let decision = policy.decide(t0 + SEC).expect("two large shards");
        assert_eq!(decision.shard, 2, "150 / 100 before 101 / 100");
        assert_eq!(
            decision.reason,
            SplitReason::Large {
                rooms: 150,
                max_rooms: 100
            }
        );
        assert!(decision
            .reason
            .to_string()
            .contains("cluster.split.max_rooms"));
    }

    /// With both thresholds at 0 (or no split shard) nothing ever splits, however loaded.
    #[test]
    fn nothing_splits_when_off() {
        let t0 = Instant::now();
        let mut off = policy(0, 0);
        assert!(!off.is_active());
        let mut no_split_shards = SplitPolicy::new(
            SplitThresholds {
                max_rooms: 1,
                max_items_per_sec: 1,
                cooldown: SEC,
            },
            &Layout::hashed(4),
        );
        assert!(!no_split_shards.is_active());
        for step in 0..5u32 {
            let items = u64::from(step) * 1_000_000;
            let round = [(0, load(10_000, items)), (1, load(10_000, items))];
            off.observe_round(t0 + SEC * step, round);
            no_split_shards.observe_round(t0 + SEC * step, round);
            assert_eq!(decided(&off, t0 + SEC * step), None);
            assert_eq!(decided(&no_split_shards, t0 + SEC * step), None);
        }
    }

    /// The rate of an interval is the growth of the items between two consecutive
    /// observations over the time between them; one observation gives none, a sum that fell
    /// (rooms left) gives none. A shard is hot only when each of the last two intervals is
    /// above `max_items_per_sec`: one burst interval (a shard that just adopted rooms) is
    /// not enough.
    #[test]
    fn the_rate_comes_from_two_observations_and_hot_holds_over_two_intervals() {
        let mut policy = policy(0, 100);
        let t0 = Instant::now();
        policy.observe_round(t0, [(1, load(10, 1_000))]);
        assert_eq!(policy.rate(1), None, "one observation tells no rate");
        policy.observe_round(t0 + 2 * SEC, [(1, load(10, 1_500))]);
        assert_eq!(policy.rate(1), Some(250.0), "500 items in 2 s");
        assert_eq!(
            decided(&policy, t0 + 2 * SEC),
            None,
            "one hot interval is not enough"
        );
        policy.observe_round(t0 + 4 * SEC, [(1, load(10, 1_700))]);
        assert_eq!(policy.rate(1), Some(100.0));
        assert_eq!(
            decided(&policy, t0 + 4 * SEC),
            None,
            "100 items/s is not above 100"
        );
        policy.observe_round(t0 + 6 * SEC, [(1, load(10, 2_000))]);
        assert_eq!(
            decided(&policy, t0 + 6 * SEC),
            None,
            "the 100 interval is in the pair"
        );
        policy.observe_round(t0 + 8 * SEC, [(1, load(10, 2_300))]);
        let decision = policy.decide(t0 + 8 * SEC).expect("150 and 150 items/s");
        assert_eq!(decision.shard, 1);
        assert_eq!(
            decision.reason,
            SplitReason::Hot {
                items_per_sec: 150.0,
                max_items_per_sec: 100
            }
        );

        // Rooms adopted at once: one interval of huge growth, then a quiet one.
        policy.observe_round(t0 + 10 * SEC, [(2, load(10, 0))]);
        policy.observe_round(t0 + 12 * SEC, [(2, load(20, 1_000_000))]);
        policy.observe_round(t0 + 14 * SEC, [(2, load(20, 1_000_010))]);
        assert_eq!(
            decided(&policy, t0 + 14 * SEC),
            None,
            "the burst was one interval"
        );
        // A sum that fell tells no rate.
        policy.observe_round(t0 + 16 * SEC, [(2, load(10, 5))]);
        assert_eq!(policy.rate(2), None);
    }

    /// A shard missing from a round is no longer led here: its history restarts.
    #[test]
    fn a_shard_no_longer_led_starts_its_history_again() {
        let mut policy = policy(0, 100);
        let t0 = Instant::now();
        policy.observe_round(t0, [(1, load(10, 0))]);
        policy.observe_round(t0 + SEC, [(1, load(10, 1_000))]);
        policy.observe_round(t0 + 2 * SEC, [(0, load(10, 0))]);
        policy.observe_round(t0 + 3 * SEC, [(1, load(10, 5_000))]);
        assert_eq!(policy.rate(1), None, "the old observations are gone");
        policy.observe_round(t0 + 4 * SEC, [(1, load(10, 6_000))]);
        policy.observe_round(t0 + 5 * SEC, [(1, load(10, 7_000))]);
        assert_eq!(decided(&policy, t0 + 5 * SEC), Some(1));
    }

    /// One split at a time per node: nothing is decided while one runs; after it the shard
    /// and the split shard that took its rooms cool down for `cooldown`, others do not.
    #[test]
    fn one_split_at_a_time_and_a_cooldown_per_shard() {
        let mut policy = policy(10, 0);
        let t0 = Instant::now();
        let large = [(1, load(40, 0)), (2, load(30, 0)), (5, load(20, 0))];
        policy.observe_round(t0, large);
        assert_eq!(decided(&policy, t0), Some(1));
        policy.started(1);
        assert_eq!(decided(&policy, t0), None, "a split runs");
        policy.observe_round(t0 + SEC, large);
        assert_eq!(decided(&policy, t0 + SEC), None, "a split still runs");

        let done = t0 + 2 * SEC;
        policy.finished(done, 1, Some(5));
        policy.observe_round(done, large);
        assert_eq!(
            decided(&policy, done),
            Some(2),
            "1 and 5 cool down, 2 may split"
        );
        policy.started(2);
        policy.finished(done, 2, None);
        policy.observe_round(done + 59 * SEC, large);
        assert_eq!(
            decided(&policy, done + 59 * SEC),
            None,
            "all three cool down"
        );
        policy.observe_round(done + 60 * SEC, large);
        assert_eq!(decided(&policy, done + 60 * SEC), Some(1), "cooled down");
    }

    /// Residency shards never split, and a shard of fewer than two rooms neither; a split
    /// shard splits (into another one) only when there are two or more.
    #[test]
    fn residency_shards_single_rooms_and_a_lone_split_shard_never_split() {
        let mut policy = policy(0, 10);
        let t0 = Instant::now();
        let round = |step: u32| {
            let items = u64::from(step) * 1_000;
            [
                (4, load(50, items)),
                (3, load(1, items)),
                (6, load(50, items)),
            ]
        };
        for step in 0..3 {
            policy.observe_round(t0 + SEC * step, round(step));
        }
        let decision = policy.decide(t0 + 2 * SEC).expect("split shard 6 is hot");
        assert_eq!(
            decision.shard, 6,
            "not residency shard 4, not one-room shard 3"
        );

        let mut lone = SplitPolicy::new(
            SplitThresholds {
                max_rooms: 1,
                max_items_per_sec: 0,
                cooldown: SEC,
            },
            &Layout::new(2, [], 1).unwrap(),
        );
        lone.observe_round(t0, [(2, load(50, 0))]);
        assert_eq!(decided(&lone, t0), None, "split shard 2 has nowhere to go");
        lone.observe_round(t0 + SEC, [(2, load(50, 0)), (1, load(50, 0))]);
        assert_eq!(decided(&lone, t0 + SEC), Some(1));
    }

    /// End to end on one node (a `mimid dev`-like provider with `cluster.shards = 2` and
    /// `cluster.split_shards = 2`, so shards 2 and 3 are split shards): rooms created through
    /// the client library move by `POST /admin/shards/split` and `mimid shard split`, behind the
    /// admin token; the outcome names them, room status shows their new shard, sends go on in
    /// them; bad requests (a bad body, an unknown shard, `rooms` 0, a shard without rooms, and
    /// on a provider formed without split shards any split) are 400s naming the reason and
    /// change nothing; each split is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn splits_by_hand_move_rooms_through_the_admin_route_and_the_cli() {
        use crate::admin::{admin_call, AdminToken, RoomStatusRequest, ROOM_STATUS_PATH};
        use crate::cluster_ops::{run_shard_command, ShardCommand, SplitRequest, SPLIT_PATH};
        use mimid_actors::hub::residency::RoomStatus;

        let parent = tempfile::tempdir().unwrap();
        let token_file = parent.path().join("admin.token");
        let token = AdminToken::create(&token_file).unwrap();
        let mut base = crate::config::Config::default();
        base.cluster.shards = 2;
        base.cluster.split_shards = 2;
        base.admin_token_file = Some(token_file);
        let providers = start_provider(&parent, "a.example", "split-", &base).await;
        let provider = &providers.providers()[0];
        let admin = provider.node().admin_addr().to_string();
        let hub = provider.node().hub().clone();
        let layout = hub.shards().layout().clone();
        assert_eq!(layout.split_shards(), 2..4);

        // Six rooms whose ids hash to shard 1, each with a message; shard 0 gets none.
        let (mut client, rooms) = alice_with_rooms_in_shard_1(&providers, "split", 6).await;
        let mut seqs = BTreeMap::new();
        for room in &rooms {
            match client.send_text(room, "before").await.expect("sent") {
                SubmitResult::Accepted { seq, .. } => seqs.insert(room.clone(), seq),
                other => panic!("{other:?}"),
            };
        }

        let call = |body: Vec<u8>, with_token: bool| {
            let (admin, token) = (admin.clone(), token.clone());
            async move {
                let token = with_token.then_some(&token);
                let (status, answer) = admin_call(&admin, token, "POST", SPLIT_PATH, &body)
                    .await
                    .expect("the admin listener answers");
                (status, String::from_utf8_lossy(&answer).into_owned())
            }
        };
        let split_body = |shard: ShardId, rooms: Option<usize>| {
            serde_json::to_vec(&SplitRequest { shard, rooms }).unwrap()
        };
        let shard_of = |room: RoomId| {
            let (admin, token) = (admin.clone(), token.clone());
            async move {
                let body = serde_json::to_vec(&RoomStatusRequest {
                    room: room.to_string(),
                })
                .unwrap();
                let (status, answer) =
                    admin_call(&admin, Some(&token), "POST", ROOM_STATUS_PATH, &body)
                        .await
                        .unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                let status: RoomStatus = serde_json::from_slice(&answer).unwrap();
                assert!(status.exists, "{status:?}");
                status.shard
            }
        };

        // Refusals: the token first, then the body, then what the hub refuses.
        let (status, _) = call(split_body(1, None), false).await;
        assert_eq!(status, 401);
        // Each refusal with the fragments its reason must name.
        let refused: [(Vec<u8>, &[&str]); 6] = [
            (
                b"{\"shard\": \"one\"}".to_vec(),
                &["the body must be {\"shard\": N}"],
            ),
            (
                b"{\"shard\": 1, \"room\": 2}".to_vec(),
                &["unknown field `room`"],
            ),
            (split_body(4, None), &["shard 4", "0..4"]),
            (split_body(1, Some(0)), &["rooms must be at least 1"]),
            (
                split_body(0, None),
                &["shard 0 hosts no room that can move"],
            ),
            (
                split_body(2, None),
                &["shard 2 hosts no room that can move"],
            ),
        ];
        for (body, fragments) in refused {
            let shown = String::from_utf8_lossy(&body).into_owned();
            let (status, answer) = call(body, true).await;
            assert_eq!(status, 400, "{shown}: {answer}");
            for fragment in fragments {
                assert!(answer.contains(fragment), "{shown}: {answer}");
            }
        }
        for room in &rooms {
            assert_eq!(shard_of(room.clone()).await, 1, "refusals moved nothing");
        }

        // Two rooms through the route: to the split shard with the fewest rooms.
        let (status, answer) = call(split_body(1, Some(2)), true).await;
        assert_eq!(status, 200, "{answer}");
        let first: SplitOutcome = serde_json::from_str(&answer).unwrap();
        assert_eq!((first.from, first.moved.len()), (1, 2), "{first:?}");
        assert!(first.failed.is_empty(), "{first:?}");
        assert!(layout.split_shards().contains(&first.to), "{first:?}");
        assert!(first.moved.iter().all(|room| rooms.contains(room)));

        // Half of the four left through the CLI: into the other, emptier split shard.
        let lines = run_shard_command(
            &ShardCommand::Split {
                admin: admin.clone(),
                shard: 1,
                rooms: None,
            },
            Some(&token),
        )
        .await
        .expect("the split runs");
        let other = if first.to == 2 { 3 } else { 2 };
        assert_eq!(
            lines[0],
            format!("shard 1 split into shard {other}: 2 rooms moved, 0 failed"),
            "{lines:?}"
        );
        let second: Vec<RoomId> = lines[1..]
            .iter()
            .map(|line| RoomId::parse(line.strip_prefix("moved ").expect(line)).unwrap())
            .collect();
        assert_eq!(second.len(), 2, "{lines:?}");

        for room in &rooms {
            let want = if first.moved.contains(room) {
                first.to
            } else if second.contains(room) {
                other
            } else {
                1
            };
            assert_eq!(shard_of(room.clone()).await, want, "{room}");
            let sent = client.send_text(room, "after").await.expect("sent");
            let next = seqs[room] + 1;
            assert!(
                matches!(sent, SubmitResult::Accepted { seq, .. } if seq == next),
                "{room}: the log goes on where it was: {sent:?}"
            );
        }

        let (status, text) = crate::demo::admin_get(provider.node().admin_addr(), "/metrics")
            .await
            .unwrap();
        assert_eq!(status, 200);
        for (outcome, count) in [("moved", 2), ("refused", 4), ("failed", 0)] {
            let series = format!(
                "mimid_shard_splits_total{{trigger=\"operator\",outcome=\"{outcome}\"}} {count}"
            );
            assert!(text.contains(&series), "{series}\n{text}");
        }
        client.close().await;
        providers.shutdown().await.unwrap();

        // A provider formed without split shards refuses every split, saying how to get them.
        let mut plain = crate::config::Config::default();
        plain.cluster.shards = 2;
        let providers = start_provider(&parent, "b.example", "no-split-", &plain).await;
        let admin = providers.providers()[0].node().admin_addr().to_string();
        let (status, answer) = admin_call(&admin, None, "POST", SPLIT_PATH, &split_body(1, None))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer.contains("no split shards: set cluster.split_shards"),
            "{answer}"
        );
        providers.shutdown().await.unwrap();
    }

    /// The driver on one node: with `cluster.split.max_rooms = 3`, rooms created in one
    /// hashed shard are handed to the split shards on their own until no shard holds more
    /// than three; none is lost, every one takes sends where it lives, and the splits are
    /// counted as automatic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_driver_splits_a_large_shard_on_its_own() {
        let parent = tempfile::tempdir().unwrap();
        let mut base = crate::config::Config::default();
        base.cluster.shards = 2;
        base.cluster.split_shards = 2;
        base.cluster.split = SplitSettings {
            max_rooms: 3,
            max_items_per_sec: 0,
            cooldown_secs: 1,
            check_interval_ms: 100,
        };
        let providers = start_provider(&parent, "a.example", "split-", &base).await;
        let provider = &providers.providers()[0];
        let hub = provider.node().hub().clone();
        let layout = hub.shards().layout().clone();
        let (mut client, rooms) = alice_with_rooms_in_shard_1(&providers, "auto", 7).await;

        let loads = || -> Vec<usize> {
            (0..layout.total())
                .map(|shard| hub.shard_load(shard).expect("held").rooms)
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A room on its way is hosted by both shards until its release: wait for a
            // count without one.
            let rooms_per_shard = loads();
            let settled = rooms_per_shard.iter().sum::<usize>() == rooms.len();
            if settled && rooms_per_shard.iter().all(|&n| n <= 3) {
                assert_eq!(rooms_per_shard[0], 0, "{rooms_per_shard:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still large: {rooms_per_shard:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for room in &rooms {
            let status = hub.room_status(room).await.expect("status");
            assert!(status.exists, "{status:?}");
            let sent = client.send_text(room, "hello").await.expect("sent");
            assert!(
                matches!(sent, SubmitResult::Accepted { .. }),
                "{room}: {sent:?}"
            );
        }
        let (_, text) = crate::demo::admin_get(provider.node().admin_addr(), "/metrics")
            .await
            .unwrap();
        let series = "mimid_shard_splits_total{trigger=\"automatic\",outcome=\"moved\"} ";
        let moved: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("{series}\n{text}"));
        assert!(moved >= 1, "{text}");
        client.close().await;
        providers.shutdown().await.unwrap();
    }
}
