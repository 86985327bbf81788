//! The timed phase: workers drive senders under the open or the closed model, every sample
//! goes into one [`Recorder`], and a ticker prints one line per second.
//!
//! - Open model (`--rate`): one worker per sender, each on its own timetable from
//!   [`OpenSchedule`]; an operation waits for its intended start, and if its sender is still
//!   busy it starts late and its latency still counts from the intended start.
//! - Closed model (`--concurrency C`): C workers, the senders dealt out round-robin; each
//!   worker starts its next operation (on its next sender) as soon as the previous one ended.
//!
//! A sender has at most one operation in flight: the client library's calls take the client
//! by `&mut`, and a room's commits must be sequential anyway.
//!
//! Bounds: every worker stops at the end of `--duration` (no new starts), after `--max-ops`
//! starts in total, when its senders have nothing left to send, or when a sender failed
//! [`MAX_CONSECUTIVE_FAILURES`] times in a row (it is retired rather than hammered); each
//! operation is bounded by `--timeout-ms`. An interruption (Ctrl-C, see [`PhaseConfig`]) ends
//! the phase like the end of `--duration`. Workers are joined before the report is made, so
//! the phase ends once the last operation in flight has been answered or timed out.
//!
//! [`run_phase_with`] also runs a task beside the workers (the cluster scenario's shard split)
//! with a [`PhaseClock`]: the phase's time, a wait for a moment of it, and the windows of the
//! recorder (`stats`), which count each operation by its intended start.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::LoadModel;
use crate::schedule::OpenSchedule;
use crate::stats::{
    round_millis, ErrorKind, Interval, LoggedInterval, Recorder, Sample, Totals, WindowReport,
};

/// Failures in a row after which a sender is retired for the rest of the phase.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 16;
/// Interval of the progress lines.
const TICK: Duration = Duration::from_secs(1);

/// Whether a sender can start another operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Nothing left to send (its pregenerated messages are used up).
    Exhausted,
    /// Its client state is no longer usable (e.g. an abandoned commit of unknown fate).
    Broken,
}

/// One client acting in one room.
pub trait Sender: Send + 'static {
    fn availability(&self) -> Availability;

    /// Performs one operation.
    fn run(&mut self) -> impl Future<Output = Result<(), ErrorKind>> + Send;

    /// Called when an operation was dropped at its timeout, mid-flight.
    fn on_abandoned(&mut self);

    /// The operation the last [`Sender::run`] performed (asked once it returned or was
    /// abandoned), for the per-operation histograms: `message`, `commit`, `add`, ... A sender
    /// that chooses among several kinds decides inside `run`. `offered_at` is when the
    /// operation was offered, from the phase start: its intended start (coordinated-omission
    /// corrected), the clock its window is chosen by, else its start.
    fn operation(&self, _offered_at: Duration) -> &'static str {
        crate::stats::DEFAULT_OPERATION
    }
}

/// How a phase is run.
#[derive(Debug, Clone)]
pub struct PhaseConfig {
    pub model: LoadModel,
    pub duration: Duration,
    pub max_ops: Option<u64>,
    pub op_timeout: Duration,
    pub progress: bool,
    /// Set (by a Ctrl-C handler) to end the phase early; no new operation starts once set.
    pub interrupted: Arc<AtomicBool>,
}

/// Why a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// `--max-ops` operations were started.
    MaxOps,
    /// Every sender ran out of work or was retired before the end of `--duration`.
    NoSenderLeft,
    /// Interrupted (Ctrl-C) before the end of `--duration`.
    Interrupted,
}

/// What a phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// When the timed phase started (Unix time, milliseconds): the base time of the interval
    /// logs.
    pub started_unix_ms: u64,
    pub senders: usize,
    pub workers: usize,
    /// From the start until the last operation was answered (or timed out).
    pub elapsed_s: f64,
    pub throughput_ops_s: f64,
    pub stop_reason: StopReason,
    pub exhausted_senders: usize,
    pub retired_senders: usize,
    #[serde(flatten)]
    pub totals: Totals,
    pub intervals: Vec<Interval>,
    /// The windows the task beside the workers cut the phase into ([`run_phase_with`]), by
    /// the operations' intended start; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowReport>,
    /// Each interval's histograms per operation, for the interval logs (`--out-dir`); not in
    /// the JSON summary.
    #[serde(skip)]
    pub interval_log: Vec<LoggedInterval>,
}

/// When an operation was meant to start.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At `intended` on the open-model timetable; its sender was free from `ready` on (the
    /// later of `intended` and the answer to its previous operation).
    Scheduled { intended: Duration, ready: Duration },
    /// Whenever it actually starts (closed model).
    Immediate,
}

struct Shared {
    start: Instant,
    config: PhaseConfig,
    recorder: Mutex<Recorder>,
    started_ops: AtomicU64,
    max_ops_reached: AtomicBool,
    exhausted: AtomicUsize,
    retired: AtomicUsize,
    /// Set once every worker has ended ([`PhaseClock::wait_until`] gives up then).
    ended: AtomicBool,
    end: Notify,
}

impl Shared {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn interrupted(&self) -> bool {
        self.config.interrupted.load(Ordering::Relaxed)
    }

    /// Claims one start from the `--max-ops` budget.
    fn claim(&self) -> bool {
        let Some(max) = self.config.max_ops else {
            return true;
        };
        if self.started_ops.fetch_add(1, Ordering::Relaxed) < max {
            true
        } else {
            self.max_ops_reached.store(true, Ordering::Relaxed);
            false
        }
    }

    /// Runs one operation of `sender`; returns when it was answered and whether it failed.
    async fn perform<S: Sender>(&self, sender: &mut S, start: Start) -> (Duration, bool) {
        let started = self.elapsed();
        let outcome = match tokio::time::timeout(self.config.op_timeout, sender.run()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                sender.on_abandoned();
                Err(ErrorKind::Timeout)
            }
        };
        let finished = self.elapsed();
        let sample = match start {
            Start::Scheduled { intended, ready } => Sample {
                intended,
                ready,
                started,
                finished,
            },
            Start::Immediate => Sample::immediate(started, finished),
        };
        let operation = sender.operation(sample.intended);
        let mut recorder = self.recorder.lock();
        match outcome {
            Ok(()) => {
                recorder.handle_success_of(sample, operation);
                (finished, false)
            }
            Err(kind) => {
                recorder.handle_failure_of(sample, kind, operation);
                (finished, true)
            }
        }
    }

    /// Counts a sender leaving the phase early; returns whether it did.
    fn leaves(&self, availability: Availability, failures_in_a_row: u32) -> bool {
        if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES || availability == Availability::Broken {
            self.retired.fetch_add(1, Ordering::Relaxed);
            true
        } else if availability == Availability::Exhausted {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// The time of a running phase, for a task beside its workers ([`run_phase_with`]).
#[derive(Clone)]
pub struct PhaseClock {
    shared: Arc<Shared>,
}

impl PhaseClock {
    /// Time since the phase started.
    pub fn elapsed(&self) -> Duration {
        self.shared.elapsed()
    }

    /// Waits until `at` into the phase; `false` if the phase ended first (every worker done,
    /// e.g. interrupted, or `at` beyond its end).
    ///
    /// Cancel safety: safe.
    pub async fn wait_until(&self, at: Duration) -> bool {
        let ended = self.shared.end.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if self.shared.ended.load(Ordering::Acquire) {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep_until(self.shared.start + at) => {
                !self.shared.ended.load(Ordering::Acquire)
            }
            () = ended => false,
        }
    }

    /// Opens window `name` of the recorder now; returns when, from the phase start. Every
    /// operation meant to start from then on is counted in it, until the next window opens.
    pub fn open_window(&self, name: &'static str) -> Duration {
        let mut recorder = self.shared.recorder.lock();
        // Read under the lock: every sample recorded before was meant to start before `now`.
        let now = self.shared.elapsed();
        recorder.open_window(name, now);
        now
    }
}

/// Runs one timed phase with `senders` and gives them back with the report.
///
/// Cancel safety: not safe; dropping the future aborts the workers and loses the senders.
pub async fn run_phase<S: Sender>(
    senders: Vec<S>,
    config: PhaseConfig,
) -> anyhow::Result<(Vec<S>, PhaseReport)> {
    let (senders, report, ()) = run_phase_with(senders, config, None, |_| async {}).await?;
    Ok((senders, report))
}

/// [`run_phase`] with `beside(clock)` running as a task of its own from the phase start, the
/// phase's samples counted in windows from `first_window` on (opened at the start) and those
/// the task opens ([`PhaseClock::open_window`]). The phase's elapsed time is when its last
/// operation was answered; the report is made once the task has ended too (it is awaited,
/// so it must end on its own: [`PhaseClock::wait_until`] gives up when the workers are done).
///
/// Cancel safety: not safe; dropping the future aborts the workers and loses the senders.
pub async fn run_phase_with<S, F, Fut, T>(
    senders: Vec<S>,
    config: PhaseConfig,
    first_window: Option<&'static str>,
    beside: F,
) -> anyhow::Result<(Vec<S>, PhaseReport, T)>
where
    S: Sender,
    F: FnOnce(PhaseClock) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let n_senders = senders.len();
    anyhow::ensure!(n_senders > 0, "a phase needs at least one sender");
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    crate::progress::phase_started(config.duration, config.progress);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        config: config.clone(),
        recorder: Mutex::new(Recorder::new()),
        started_ops: AtomicU64::new(0),
        max_ops_reached: AtomicBool::new(false),
        exhausted: AtomicUsize::new(0),
        retired: AtomicUsize::new(0),
        ended: AtomicBool::new(false),
        end: Notify::new(),
    });
    if let Some(name) = first_window {
        shared.recorder.lock().open_window(name, Duration::ZERO);
    }
    let beside = tokio::spawn(beside(PhaseClock {
        shared: shared.clone(),
    }));
    let (stop_ticker, stopped) = oneshot::channel();
    let ticker = tokio::spawn(ticker(shared.clone(), stopped));

    let mut workers = JoinSet::new();
    let n_workers = match config.model {
        LoadModel::Open { rate } => {
            let schedule = OpenSchedule::new(rate, n_senders as u64)?;
            for (idx, sender) in senders.into_iter().enumerate() {
                let shared = shared.clone();
                workers.spawn(async move {
                    vec![open_worker(sender, idx as u64, schedule, &shared).await]
                });
            }
            n_senders
        }
        LoadModel::Closed { concurrency } => {
            let n_workers = concurrency.map_or(n_senders, |c| (c as usize).min(n_senders));
            let mut dealt: Vec<Vec<S>> = (0..n_workers).map(|_| Vec::new()).collect();
            for (idx, sender) in senders.into_iter().enumerate() {
                dealt[idx % n_workers].push(sender);
            }
            for own in dealt {
                let shared = shared.clone();
                workers.spawn(async move { closed_worker(own, &shared).await });
            }
            n_workers
        }
    };
    let mut senders = Vec::with_capacity(n_senders);
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(own) => senders.extend(own),
            Err(error) => {
                beside.abort();
                return Err(error).context("a load worker panicked");
            }
        }
    }
    let elapsed = shared.elapsed();
    shared.ended.store(true, Ordering::Release);
    shared.end.notify_waiters();
    // The ticker only prints; if it is gone, the report is still complete.
    let _ = stop_ticker.send(elapsed);
    let intervals = ticker.await.unwrap_or_default();
    let beside = beside.await.context("the task beside the phase panicked")?;

    let exhausted = shared.exhausted.load(Ordering::Relaxed);
    let retired = shared.retired.load(Ordering::Relaxed);
    let stop_reason = if shared.interrupted() {
        StopReason::Interrupted
    } else if shared.max_ops_reached.load(Ordering::Relaxed) {
        StopReason::MaxOps
    } else if exhausted + retired >= n_senders && elapsed < config.duration {
        StopReason::NoSenderLeft
    } else {
        StopReason::Duration
    };
    let recorder = shared.recorder.lock();
    crate::progress::phase_ended();
    let report = PhaseReport {
        started_unix_ms,
        senders: n_senders,
        workers: n_workers,
        elapsed_s: round_millis(elapsed.as_secs_f64()),
        throughput_ops_s: (recorder.ops_ok() as f64 / elapsed.as_secs_f64().max(1e-9) * 10.0)
            .round()
            / 10.0,
        stop_reason,
        exhausted_senders: exhausted,
        retired_senders: retired,
        totals: recorder.totals(),
        intervals,
        // Operations were meant to start until the end of the timetable, or until the phase
        // ended if earlier.
        windows: recorder.windows(if stop_reason == StopReason::Duration {
            config.duration
        } else {
            elapsed.min(config.duration)
        }),
        interval_log: recorder.interval_log().to_vec(),
    };
    Ok((senders, report, beside))
}

async fn open_worker<S: Sender>(
    mut sender: S,
    idx: u64,
    schedule: OpenSchedule,
    shared: &Shared,
) -> S {
    let mut failures_in_a_row = 0;
    let mut previous_answer = Duration::ZERO;
    // Bounded by time: offsets grow with k and the loop ends at the end of the phase.
    for k in 0..u64::MAX {
        let intended = schedule.offset(idx, k);
        if intended >= shared.config.duration
            || shared.leaves(sender.availability(), failures_in_a_row)
            || !shared.claim()
        {
            break;
        }
        tokio::time::sleep_until(shared.start + intended).await;
        if shared.interrupted() {
            break;
        }
        let start = Start::Scheduled {
            intended,
            ready: intended.max(previous_answer),
        };
        let (answered, failed) = shared.perform(&mut sender, start).await;
        previous_answer = answered;
        if failed {
            failures_in_a_row += 1;
        } else {
            failures_in_a_row = 0;
        }
    }
    sender
}

async fn closed_worker<S: Sender>(mut senders: Vec<S>, shared: &Shared) -> Vec<S> {
    let mut active: Vec<(S, u32)> = senders.drain(..).map(|s| (s, 0)).collect();
    let mut done = Vec::with_capacity(active.len());
    let mut turn = 0;
    while !active.is_empty() && shared.elapsed() < shared.config.duration && !shared.interrupted() {
        let idx = turn % active.len();
        let (sender, failures_in_a_row) = &mut active[idx];
        if shared.leaves(sender.availability(), *failures_in_a_row) {
            done.push(active.swap_remove(idx).0);
            continue;
        }
        if !shared.claim() {
            break;
        }
        if shared.perform(sender, Start::Immediate).await.1 {
            *failures_in_a_row += 1;
        } else {
            *failures_in_a_row = 0;
        }
        turn = turn.wrapping_add(1);
    }
    done.extend(active.into_iter().map(|(s, _)| s));
    done
}

/// Prints one line per second until stopped with the phase's elapsed time, then closes the
/// last (shorter) interval; returns all intervals.
async fn ticker(shared: Arc<Shared>, mut stop: oneshot::Receiver<Duration>) -> Vec<Interval> {
    let mut intervals = Vec::new();
    let mut tick = tokio::time::interval_at(shared.start + TICK, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if shared.config.progress {
        crate::progress::line(&format!(
            "{:>8} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "elapsed", "ops/s", "errors", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"
        ));
    }
    // Bounded: the phase always sends the stop signal (or drops it) when its workers end.
    loop {
        let now = tokio::select! {
            _ = tick.tick() => shared.elapsed(),
            end = &mut stop => {
                let end = end.unwrap_or_else(|_| shared.elapsed());
                let last = shared.recorder.lock().take_final_interval(end);
                if let Some(last) = last {
                    print_interval(&shared, &last);
                    intervals.push(last);
                }
                return intervals;
            }
        };
        let interval = shared.recorder.lock().take_interval(now);
        print_interval(&shared, &interval);
        intervals.push(interval);
    }
}

fn print_interval(shared: &Shared, interval: &Interval) {
    if !shared.config.progress {
        return;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let latency = &interval.latency;
    crate::progress::line(&format!(
        "{:>7.1}s {:>9} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        interval.elapsed_s,
        interval.ops_per_s,
        interval.errors,
        ms(latency.p50_us),
        ms(latency.p95_us),
        ms(latency.p99_us),
        ms(latency.p999_us),
        ms(latency.max_us),
    ));
    crate::progress::phase_tick(
        Duration::from_secs_f64(interval.elapsed_s),
        &format!(
            "{} ops/s, p99 {:.2} ms, {} errors",
            interval.ops_per_s,
            ms(latency.p99_us),
            interval.errors
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender whose every operation takes `service` (of paused tokio time) and that can do
    /// `budget` of them.
    struct Fake {
        service: Duration,
        budget: u64,
        done: u64,
        fail: bool,
    }

    impl Fake {
        fn new(service_ms: u64, budget: u64) -> Fake {
            Fake {
                service: Duration::from_millis(service_ms),
                budget,
                done: 0,
                fail: false,
            }
        }
    }

    impl Sender for Fake {
        fn availability(&self) -> Availability {
            if self.done < self.budget {
                Availability::Ready
            } else {
                Availability::Exhausted
            }
        }

        async fn run(&mut self) -> Result<(), ErrorKind> {
            self.done += 1;
            tokio::time::sleep(self.service).await;
            if self.fail {
                Err(ErrorKind::NotAllowed)
            } else {
                Ok(())
            }
        }

        fn on_abandoned(&mut self) {
            self.budget = 0;
        }
    }

    /// Whole milliseconds of a histogram value (values are kept to 3 significant digits).
    fn whole_ms(us: u64) -> u64 {
        (us + 500) / 1000
    }

    fn config(model: LoadModel, duration_ms: u64) -> PhaseConfig {
        PhaseConfig {
            model,
            duration: Duration::from_millis(duration_ms),
            max_ops: None,
            op_timeout: Duration::from_secs(10),
            progress: false,
            interrupted: Arc::new(AtomicBool::new(false)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_model_offers_the_rate_and_counts_from_the_intended_start() {
        // 2 senders at 100 ops/s in total: each is scheduled every 20 ms and serves in 5 ms.
        let senders = vec![Fake::new(5, u64::MAX), Fake::new(5, u64::MAX)];
        let (senders, report) = run_phase(senders, config(LoadModel::Open { rate: 100.0 }, 1000))
            .await
            .expect("phase runs");
        assert_eq!(senders.len(), 2);
        assert_eq!(report.totals.ops_ok, 100);
        assert_eq!(report.totals.late_starts, 0);
        assert_eq!(report.stop_reason, StopReason::Duration);
        assert_eq!(whole_ms(report.totals.latency_corrected.max_us), 5);
        assert_eq!(report.intervals.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_sender_starts_late_and_its_wait_is_in_the_corrected_latency() {
        // One sender at 100 ops/s (every 10 ms) whose operations take 25 ms: it falls further
        // behind with each operation, and the corrected latency grows with the backlog.
        let (_, report) = run_phase(
            vec![Fake::new(25, u64::MAX)],
            config(LoadModel::Open { rate: 100.0 }, 200),
        )
        .await
        .expect("phase runs");
        let totals = &report.totals;
        assert_eq!(totals.ops_ok, 20, "every scheduled operation is still made");
        assert_eq!(totals.late_starts, 19);
        assert_eq!(whole_ms(totals.latency_raw.max_us), 25);
        // The last one was meant for 190 ms, started at 19 × 25 = 475 ms, ended at 500 ms.
        assert_eq!(whole_ms(totals.latency_corrected.max_us), 310);
        assert!(report.elapsed_s >= 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_model_keeps_the_concurrency_busy() {
        let senders: Vec<Fake> = (0..4).map(|_| Fake::new(10, u64::MAX)).collect();
        let (senders, report) = run_phase(
            senders,
            config(
                LoadModel::Closed {
                    concurrency: Some(2),
                },
                1000,
            ),
        )
        .await
        .expect("phase runs");
        assert_eq!(senders.len(), 4);
        assert_eq!(report.workers, 2);
        assert_eq!(report.totals.ops_ok, 200);
        assert!(
            senders.iter().all(|s| s.done == 50),
            "round-robin per worker"
        );
        assert_eq!(report.totals.late_starts, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ops_and_exhausted_senders_end_the_phase_early() {
        let mut limited = config(LoadModel::Closed { concurrency: None }, 10_000);
        limited.max_ops = Some(7);
        let (_, report) = run_phase(vec![Fake::new(1, 100), Fake::new(1, 100)], limited)
            .await
            .expect("phase runs");
        assert_eq!(report.totals.ops_ok, 7);
        assert_eq!(report.stop_reason, StopReason::MaxOps);

        let (_, report) = run_phase(
            vec![Fake::new(1, 3), Fake::new(1, 5)],
            config(LoadModel::Closed { concurrency: None }, 10_000),
        )
        .await
        .expect("phase runs");
        assert_eq!(report.totals.ops_ok, 8);
        assert_eq!(report.exhausted_senders, 2);
        assert_eq!(report.stop_reason, StopReason::NoSenderLeft);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_senders_are_retired_and_timeouts_abandon_the_operation() {
        let mut failing = Fake::new(1, u64::MAX);
        failing.fail = true;
        let (_, report) = run_phase(
            vec![failing],
            config(LoadModel::Closed { concurrency: None }, 10_000),
        )
        .await
        .expect("phase runs");
        assert_eq!(
            report.totals.errors.get("not_allowed"),
            Some(&u64::from(MAX_CONSECUTIVE_FAILURES))
        );
        assert_eq!(report.retired_senders, 1);

        let mut slow = config(LoadModel::Closed { concurrency: None }, 10_000);
        slow.op_timeout = Duration::from_millis(50);
        let (senders, report) = run_phase(vec![Fake::new(100, u64::MAX)], slow)
            .await
            .expect("phase runs");
        assert_eq!(report.totals.errors.get("timeout"), Some(&1));
        assert_eq!(senders[0].budget, 0, "on_abandoned was called");
        assert_eq!(report.exhausted_senders, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_beside_the_phase_cuts_it_into_windows_by_intended_start() {
        // One sender at 100 ops/s (every 10 ms), 5 ms each, for 1 s; the task opens "during"
        // at 400 ms and "after" 100 ms later.
        let (_, report, opened) = run_phase_with(
            vec![Fake::new(5, u64::MAX)],
            config(LoadModel::Open { rate: 100.0 }, 1000),
            Some("before"),
            |clock| async move {
                assert!(clock.wait_until(Duration::from_millis(400)).await);
                let during = clock.open_window("during");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let after = clock.open_window("after");
                (during, after)
            },
        )
        .await
        .expect("phase runs");
        assert_eq!(opened.0, Duration::from_millis(400));
        assert_eq!(opened.1, Duration::from_millis(500));
        let counts: Vec<(&str, u64, f64, f64)> = report
            .windows
            .iter()
            .map(|w| (w.name.as_str(), w.ops_ok, w.start_s, w.end_s))
            .collect();
        // Slots 0..390 ms, 400..490 ms and 500..990 ms; the operation meant for 490 ms is
        // answered at 495 ms, the one meant for 500 ms at 505 ms, after "after" opened.
        assert_eq!(
            counts,
            [
                ("before", 40, 0.0, 0.4),
                ("during", 10, 0.4, 0.5),
                ("after", 50, 0.5, 1.0)
            ]
        );
        assert_eq!(report.totals.ops_ok, 100);

        // A moment past the phase's end is never reached: the task learns it when the
        // workers are done.
        let (_, report, reached) = run_phase_with(
            vec![Fake::new(1, u64::MAX)],
            config(LoadModel::Open { rate: 10.0 }, 500),
            None,
            |clock| async move { clock.wait_until(Duration::from_secs(60)).await },
        )
        .await
        .expect("phase runs");
        assert!(!reached);
        assert!(report.windows.is_empty());
        assert!(report.elapsed_s < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interruption_ends_the_phase_without_new_operations() {
        let interrupted = config(LoadModel::Open { rate: 10.0 }, 10_000);
        interrupted.interrupted.store(true, Ordering::Relaxed);
        let (senders, report) = run_phase(vec![Fake::new(1, u64::MAX)], interrupted)
            .await
            .expect("phase runs");
        assert_eq!(senders[0].done, 0);
        assert_eq!(report.stop_reason, StopReason::Interrupted);
        assert!(report.elapsed_s < 1.0);
    }
}
