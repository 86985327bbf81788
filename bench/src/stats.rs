//! What a phase measured: HdrHistograms of latency (corrected and raw), counts of successes,
//! errors by kind and late starts, and the per-second intervals. Sans-IO: samples arrive as
//! offsets from the phase start, so the recorder is driven identically by the workers and by
//! the tests.
//!
//! Two latencies per operation, as scylla-bench records them (ecosystem.md):
//! - *raw*: from the actual start to the answer, i.e. the service time of the request alone.
//! - *corrected*: raw plus the time the operation was held back past its intended start on
//!   the open-model timetable because the previous operation of its sender had not been
//!   answered yet. That wait is the server's doing and is what a user sending at that moment
//!   would have experienced (coordinated-omission correction, as in wrk2). Unlike wrk2, a late
//!   wake-up of the generator itself (tokio's timer has a 1 ms resolution; a busy generator
//!   runtime wakes later still) is not charged to the server: on loopback it would add up to a
//!   millisecond to sub-millisecond answers. Such starts still count as late starts.
//!
//! In the closed model operations start when the previous one ends, so the two are equal.
//! Only successful operations are put into the histograms; failures are counted by kind.
//!
//! Each sample also names its operation (`message`, `commit`, `add`, `join`, ...): the recorder
//! keeps both histograms per operation as well, and at the end of every interval it encodes
//! each operation's interval histograms (HdrHistogram V2 encoding) into [`LoggedInterval`]s, from
//! which `output` writes HdrHistogram interval logs, the format of HdrHistogram's own tools.
//!
//! A phase may also be cut into *windows* ([`Recorder::open_window`]: before, during and after
//! a shard split in the cluster scenario). Every sample belongs to the window its *intended
//! start* falls in, whenever it is answered, and each window keeps both histograms and its
//! counts ([`WindowReport`]). A window opens at the phase time it is asked for, and every
//! sample recorded before that was meant to start before it: the windows are exact.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::schedule::late_by;

/// Largest latency the histograms resolve, in microseconds (one hour); longer ones are
/// recorded as this value rather than lost.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histograms (0.1% relative error).
const SIGNIFICANT_DIGITS: u8 = 3;
/// The operation of samples recorded without a name ([`Recorder::handle_success`]).
pub const DEFAULT_OPERATION: &str = "op";

/// When one operation was meant to start, could start, started and was answered, from the
/// phase start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Its slot on the timetable (the actual start in the closed model).
    pub intended: Duration,
    /// When its slot had come and its sender was free: the later of `intended` and the answer
    /// to the sender's previous operation.
    pub ready: Duration,
    pub started: Duration,
    pub finished: Duration,
}

impl Sample {
    /// A sample of the closed model, where an operation is meant to start when it starts.
    pub fn immediate(started: Duration, finished: Duration) -> Sample {
        Sample {
            intended: started,
            ready: started,
            started,
            finished,
        }
    }
}

/// Why an operation failed, as a stable label for the summary (`errors` by kind).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No answer within `--timeout-ms`.
    Timeout,
    /// The QUIC or HTTP/3 layer failed.
    Transport,
    /// The provider answered with an unexpected HTTP status.
    Status(u16),
    /// The response did not decode.
    Malformed,
    /// The client's MLS layer failed (building or merging a commit, encrypting).
    Mls,
    /// The client could not apply the room policy.
    Policy,
    /// The client is not (or no longer) in the room.
    NotInRoom,
    /// Any other client-library failure.
    Client,
    /// protocol-06 §5.3 `notAllowed` or §5.2 `notAllowed`.
    NotAllowed,
    /// protocol-06 §5.3 `epochTooOld`.
    EpochTooOld,
    /// protocol-06 §5.2 `wrongEpoch`: another Commit won the epoch.
    WrongEpoch,
    /// protocol-06 §5.2 `invalidProposal`.
    InvalidProposal,
    /// cross-provider: the receiver's push stream brought another message than the one it was
    /// waiting for (one missing, out of order, or not the bench's).
    Delivery,
}

impl ErrorKind {
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Transport => "transport".into(),
            ErrorKind::Status(code) => format!("http_{code}"),
            ErrorKind::Malformed => "malformed_response".into(),
            ErrorKind::Mls => "client_mls".into(),
            ErrorKind::Policy => "client_policy".into(),
            ErrorKind::NotInRoom => "not_in_room".into(),
            ErrorKind::Client => "client_other".into(),
            ErrorKind::NotAllowed => "not_allowed".into(),
            ErrorKind::EpochTooOld => "epoch_too_old".into(),
            ErrorKind::WrongEpoch => "wrong_epoch".into(),
            ErrorKind::InvalidProposal => "invalid_proposal".into(),
            ErrorKind::Delivery => "delivery".into(),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: histogram.len(),
            mean_us: (histogram.mean() * 10.0).round() / 10.0,
            p50_us: histogram.value_at_quantile(0.50),
            p95_us: histogram.value_at_quantile(0.95),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// One second (or the last, shorter stretch) of a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// End of the interval, seconds from the phase start.
    pub elapsed_s: f64,
    pub ops_ok: u64,
    pub errors: u64,
    pub ops_per_s: f64,
    /// Corrected latency of the operations answered in this interval.
    pub latency: Percentiles,
}

/// Totals of a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Operations that started more than `schedule::LATE_START_SLACK` after their intended time
    /// (k6's `dropped_iterations` counterpart: the generator or the server could not keep up).
    pub late_starts: u64,
    pub max_start_lateness_us: u64,
    pub latency_corrected: Percentiles,
    pub latency_raw: Percentiles,
    /// The same per operation (`message`, `commit`, `add`, `remove`, `update`, `join`, ...),
    /// for scenarios whose senders perform several kinds.
    pub by_operation: BTreeMap<String, OperationTotals>,
}

/// Totals of one kind of operation in a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationTotals {
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub latency_corrected: Percentiles,
    pub latency_raw: Percentiles,
}

/// One interval of one operation, its histograms encoded (HdrHistogram V2, uncompressed) for
/// an interval log: what `output` writes to `<phase>.<operation>.{corrected,raw}.hlog`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedInterval {
    pub operation: &'static str,
    /// Start of the interval, from the phase start.
    pub start: Duration,
    pub length: Duration,
    pub corrected: Vec<u8>,
    pub raw: Vec<u8>,
}

impl LoggedInterval {
    /// Decodes one of the two histograms (`corrected` or `raw`).
    pub fn decode(encoded: &[u8]) -> anyhow::Result<Histogram<u64>> {
        let mut reader = encoded;
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut reader)
            .map_err(|e| anyhow::anyhow!("decoding an interval histogram: {e:?}"))
    }
}

/// The operations meant to start within one window of a phase ([`Recorder::open_window`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    pub name: String,
    /// Start of the window, seconds from the phase start.
    pub start_s: f64,
    /// Its end: the next window's start, or for the last one the end of the phase's timetable
    /// (`--duration`, or when the phase ended if earlier).
    pub end_s: f64,
    /// Operations meant to start in the window that succeeded.
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// `ops_ok` over the window's length.
    pub ops_per_s: f64,
    pub latency_corrected: Percentiles,
    pub latency_raw: Percentiles,
    /// The same per operation (the cluster scenario's split: `message` and `message_moved`,
    /// the messages of the rooms that moved once they had).
    pub by_operation: BTreeMap<String, OperationTotals>,
}

/// The histograms and counts of one window.
struct WindowRecorder {
    name: &'static str,
    start: Duration,
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
    ops_ok: u64,
    errors: BTreeMap<ErrorKind, u64>,
    operations: BTreeMap<&'static str, OperationCounts>,
}

/// One operation's histograms and counts, over a phase or a window.
struct OperationCounts {
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
    ops_ok: u64,
    ops_failed: u64,
}

impl OperationCounts {
    fn new() -> OperationCounts {
        OperationCounts {
            corrected: histogram(),
            raw: histogram(),
            ops_ok: 0,
            ops_failed: 0,
        }
    }

    fn record_ok(&mut self, corrected: u64, raw: u64) {
        self.corrected.saturating_record(corrected);
        self.raw.saturating_record(raw);
        self.ops_ok += 1;
    }

    fn totals(&self) -> OperationTotals {
        OperationTotals {
            ops_ok: self.ops_ok,
            ops_failed: self.ops_failed,
            latency_corrected: Percentiles::of(&self.corrected),
            latency_raw: Percentiles::of(&self.raw),
        }
    }
}

/// Each operation's [`OperationTotals`], by name.
fn totals_by_operation<'a>(
    operations: impl Iterator<Item = (&'a &'static str, &'a OperationCounts)>,
) -> BTreeMap<String, OperationTotals> {
    operations
        .map(|(name, counts)| (name.to_string(), counts.totals()))
        .collect()
}

/// The histograms and counts of one operation.
struct OperationRecorder {
    counts: OperationCounts,
    interval_corrected: Histogram<u64>,
    interval_raw: Histogram<u64>,
}

impl OperationRecorder {
    fn new() -> OperationRecorder {
        OperationRecorder {
            counts: OperationCounts::new(),
            interval_corrected: histogram(),
            interval_raw: histogram(),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid: 1 <= low, high >= 2*low, sigfig <= 5")
}

/// Accumulates samples of one phase.
pub struct Recorder {
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
    interval: Histogram<u64>,
    interval_ok: u64,
    interval_errors: u64,
    interval_start: Duration,
    ops_ok: u64,
    errors: BTreeMap<ErrorKind, u64>,
    late_starts: u64,
    max_lateness: Duration,
    operations: BTreeMap<&'static str, OperationRecorder>,
    log: Vec<LoggedInterval>,
    /// The phase's windows in the order they opened; none unless asked for.
    windows: Vec<WindowRecorder>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            corrected: histogram(),
            raw: histogram(),
            interval: histogram(),
            interval_ok: 0,
            interval_errors: 0,
            interval_start: Duration::ZERO,
            ops_ok: 0,
            errors: BTreeMap::new(),
            late_starts: 0,
            max_lateness: Duration::ZERO,
            operations: BTreeMap::new(),
            log: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// Opens window `name` at `at` (from the phase start): the samples meant to start from
    /// then on, until the next window opens, are counted in it. A window opened before the
    /// previous one's start opens at that start instead (windows never overlap). Samples meant
    /// to start before the first window are in no window.
    pub fn open_window(&mut self, name: &'static str, at: Duration) {
        let at = self.windows.last().map_or(at, |last| at.max(last.start));
        self.windows.push(WindowRecorder {
            name,
            start: at,
            corrected: histogram(),
            raw: histogram(),
            ops_ok: 0,
            errors: BTreeMap::new(),
            operations: BTreeMap::new(),
        });
    }

    /// The window an operation meant to start at `intended` belongs to.
    fn window_of(&mut self, intended: Duration) -> Option<&mut WindowRecorder> {
        self.windows
            .iter_mut()
            .rev()
            .find(|window| window.start <= intended)
    }

    /// Every window opened so far, the last one ending at `end` (from the phase start; at
    /// its start if earlier).
    pub fn windows(&self, end: Duration) -> Vec<WindowReport> {
        self.windows
            .iter()
            .enumerate()
            .map(|(index, window)| {
                let until = self
                    .windows
                    .get(index + 1)
                    .map_or(end, |next| next.start)
                    .max(window.start);
                let length = (until - window.start).as_secs_f64();
                WindowReport {
                    name: window.name.to_string(),
                    start_s: round_millis(window.start.as_secs_f64()),
                    end_s: round_millis(until.as_secs_f64()),
                    ops_ok: window.ops_ok,
                    ops_failed: window.errors.values().sum(),
                    errors: window
                        .errors
                        .iter()
                        .map(|(kind, n)| (kind.label(), *n))
                        .collect(),
                    ops_per_s: if length > 0.0 {
                        (window.ops_ok as f64 / length * 10.0).round() / 10.0
                    } else {
                        0.0
                    },
                    latency_corrected: Percentiles::of(&window.corrected),
                    latency_raw: Percentiles::of(&window.raw),
                    by_operation: totals_by_operation(window.operations.iter()),
                }
            })
            .collect()
    }

    /// Records an operation that succeeded, as [`DEFAULT_OPERATION`].
    pub fn handle_success(&mut self, sample: Sample) {
        self.handle_success_of(sample, DEFAULT_OPERATION);
    }

    /// Records an operation that failed with `kind`, as [`DEFAULT_OPERATION`].
    pub fn handle_failure(&mut self, sample: Sample, kind: ErrorKind) {
        self.handle_failure_of(sample, kind, DEFAULT_OPERATION);
    }

    /// Records a successful `operation`.
    pub fn handle_success_of(&mut self, sample: Sample, operation: &'static str) {
        self.count_start(sample);
        let raw = sample.finished.saturating_sub(sample.started);
        let held_back = sample.ready.saturating_sub(sample.intended);
        let (corrected, raw) = (micros(raw + held_back), micros(raw));
        self.corrected.saturating_record(corrected);
        self.raw.saturating_record(raw);
        self.interval.saturating_record(corrected);
        self.ops_ok += 1;
        self.interval_ok += 1;
        let op = self
            .operations
            .entry(operation)
            .or_insert_with(OperationRecorder::new);
        op.counts.record_ok(corrected, raw);
        op.interval_corrected.saturating_record(corrected);
        op.interval_raw.saturating_record(raw);
        if let Some(window) = self.window_of(sample.intended) {
            window.corrected.saturating_record(corrected);
            window.raw.saturating_record(raw);
            window.ops_ok += 1;
            window
                .operations
                .entry(operation)
                .or_insert_with(OperationCounts::new)
                .record_ok(corrected, raw);
        }
    }

    /// Records an `operation` that failed with `kind`.
    pub fn handle_failure_of(&mut self, sample: Sample, kind: ErrorKind, operation: &'static str) {
        self.count_start(sample);
        if let Some(window) = self.window_of(sample.intended) {
            *window.errors.entry(kind.clone()).or_insert(0) += 1;
            window
                .operations
                .entry(operation)
                .or_insert_with(OperationCounts::new)
                .ops_failed += 1;
        }
        *self.errors.entry(kind).or_insert(0) += 1;
        self.interval_errors += 1;
        self.operations
            .entry(operation)
            .or_insert_with(OperationRecorder::new)
            .counts
            .ops_failed += 1;
    }

    fn count_start(&mut self, sample: Sample) {
        if let Some(lateness) = late_by(sample.intended, sample.started) {
            self.late_starts += 1;
            self.max_lateness = self.max_lateness.max(lateness);
        }
    }

    /// Closes the interval ending at `now` (from the phase start) and starts the next one.
    pub fn take_interval(&mut self, now: Duration) -> Interval {
        let length = now.saturating_sub(self.interval_start).as_secs_f64();
        let interval = Interval {
            elapsed_s: round_millis(now.as_secs_f64()),
            ops_ok: self.interval_ok,
            errors: self.interval_errors,
            ops_per_s: if length > 0.0 {
                (self.interval_ok as f64 / length).round()
            } else {
                0.0
            },
            latency: Percentiles::of(&self.interval),
        };
        let interval_length = now.saturating_sub(self.interval_start);
        for (operation, op) in &mut self.operations {
            self.log.push(LoggedInterval {
                operation,
                start: self.interval_start,
                length: interval_length,
                corrected: encode(&op.interval_corrected),
                raw: encode(&op.interval_raw),
            });
            op.interval_corrected.reset();
            op.interval_raw.reset();
        }
        self.interval.reset();
        self.interval_ok = 0;
        self.interval_errors = 0;
        self.interval_start = now;
        interval
    }

    /// Closes the last interval of a phase, ending at `now`: like [`Recorder::take_interval`],
    /// but an interval in which nothing was answered is left out (of the interval log too).
    pub fn take_final_interval(&mut self, now: Duration) -> Option<Interval> {
        let logged = self.log.len();
        let interval = self.take_interval(now);
        if interval.ops_ok + interval.errors > 0 {
            Some(interval)
        } else {
            self.log.truncate(logged);
            None
        }
    }

    /// Every interval closed so far, per operation, in order (see [`LoggedInterval`]).
    pub fn interval_log(&self) -> &[LoggedInterval] {
        &self.log
    }

    pub fn ops_ok(&self) -> u64 {
        self.ops_ok
    }

    pub fn totals(&self) -> Totals {
        Totals {
            ops_ok: self.ops_ok,
            ops_failed: self.errors.values().sum(),
            errors: self.errors.iter().map(|(k, n)| (k.label(), *n)).collect(),
            late_starts: self.late_starts,
            max_start_lateness_us: micros(self.max_lateness),
            latency_corrected: Percentiles::of(&self.corrected),
            latency_raw: Percentiles::of(&self.raw),
            by_operation: totals_by_operation(
                self.operations.iter().map(|(name, op)| (name, &op.counts)),
            ),
        }
    }
}

/// A histogram in HdrHistogram's V2 encoding.
fn encode(histogram: &Histogram<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .expect("a u64 histogram encodes into memory");
    bytes
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Rounds seconds to whole milliseconds for the report.
pub fn round_millis(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Whole milliseconds of a histogram value (values are kept to 3 significant digits).
    fn whole_ms(us: u64) -> u64 {
        (us + 500) / 1000
    }

    /// A sample whose sender was free at its intended start.
    fn sample(intended: u64, started: u64, finished: u64) -> Sample {
        Sample {
            intended: ms(intended),
            ready: ms(intended),
            started: ms(started),
            finished: ms(finished),
        }
    }

    #[test]
    fn corrected_latency_adds_the_wait_behind_the_senders_previous_operation() {
        let mut recorder = Recorder::new();
        // Meant to start at 0, held up 40 ms behind a slow operation, started 1 ms after that
        // one's answer, served in 10 ms.
        recorder.handle_success(Sample {
            intended: ms(0),
            ready: ms(40),
            started: ms(41),
            finished: ms(51),
        });
        let totals = recorder.totals();
        assert_eq!(whole_ms(totals.latency_corrected.max_us), 50);
        assert_eq!(whole_ms(totals.latency_raw.max_us), 10);
        assert_eq!(totals.late_starts, 1);
        assert_eq!(totals.max_start_lateness_us, 41_000);
    }

    #[test]
    fn a_late_wake_up_of_the_generator_is_not_charged_to_the_server() {
        let mut recorder = Recorder::new();
        // The sender was free; the timer woke it 3 ms late; the answer took 1 ms.
        recorder.handle_success(sample(10, 13, 14));
        let totals = recorder.totals();
        assert_eq!(whole_ms(totals.latency_corrected.max_us), 1);
        assert_eq!(totals.latency_corrected, totals.latency_raw);
        assert_eq!(totals.late_starts, 1, "it still counts as a late start");
    }

    #[test]
    fn failures_are_counted_by_kind_and_kept_out_of_the_histograms() {
        let mut recorder = Recorder::new();
        recorder.handle_success(sample(0, 0, 1));
        recorder.handle_failure(sample(1, 1, 2), ErrorKind::Status(503));
        recorder.handle_failure(sample(2, 2, 3), ErrorKind::Status(503));
        recorder.handle_failure(sample(3, 3, 4), ErrorKind::WrongEpoch);
        let totals = recorder.totals();
        assert_eq!(totals.ops_ok, 1);
        assert_eq!(totals.ops_failed, 3);
        assert_eq!(totals.errors.get("http_503"), Some(&2));
        assert_eq!(totals.errors.get("wrong_epoch"), Some(&1));
        assert_eq!(totals.latency_corrected.count, 1);
        assert_eq!(totals.late_starts, 0);
    }

    #[test]
    fn intervals_reset_while_totals_accumulate() {
        let mut recorder = Recorder::new();
        for i in 0..10 {
            recorder.handle_success(sample(i * 100, i * 100, i * 100 + 5));
        }
        let first = recorder.take_interval(ms(1000));
        assert_eq!(first.ops_ok, 10);
        assert_eq!(first.ops_per_s, 10.0);
        assert_eq!(first.latency.count, 10);
        recorder.handle_failure(sample(1000, 1000, 1001), ErrorKind::Timeout);
        let second = recorder.take_interval(ms(1500));
        assert_eq!((second.ops_ok, second.errors), (0, 1));
        assert_eq!(second.latency.count, 0);
        assert_eq!(second.elapsed_s, 1.5);
        assert_eq!(recorder.totals().ops_ok, 10);
        assert_eq!(recorder.totals().latency_corrected.count, 10);
    }

    #[test]
    fn percentiles_follow_the_distribution() {
        let mut recorder = Recorder::new();
        for i in 1..=1000 {
            recorder.handle_success(sample(0, 0, i));
        }
        let latency = recorder.totals().latency_corrected;
        assert_eq!(latency.count, 1000);
        assert!(latency.p50_us.abs_diff(500_000) <= 500, "{latency:?}");
        assert!(latency.p99_us.abs_diff(990_000) <= 1000, "{latency:?}");
        assert!(latency.max_us.abs_diff(1_000_000) <= 1000, "{latency:?}");
    }

    #[test]
    fn each_operation_has_its_own_histograms_and_the_totals_hold_them_all() {
        let mut recorder = Recorder::new();
        recorder.handle_success_of(sample(0, 0, 2), "add");
        recorder.handle_success_of(sample(10, 10, 30), "remove");
        recorder.handle_success_of(sample(20, 20, 24), "add");
        recorder.handle_failure_of(sample(30, 30, 31), ErrorKind::WrongEpoch, "update");
        let totals = recorder.totals();
        assert_eq!(totals.ops_ok, 3);
        assert_eq!(totals.latency_corrected.count, 3);
        let add = &totals.by_operation["add"];
        assert_eq!((add.ops_ok, add.ops_failed), (2, 0));
        assert_eq!(whole_ms(add.latency_raw.max_us), 4);
        assert_eq!(
            whole_ms(totals.by_operation["remove"].latency_raw.max_us),
            20
        );
        let update = &totals.by_operation["update"];
        assert_eq!((update.ops_ok, update.ops_failed), (0, 1));
        assert_eq!(update.latency_corrected.count, 0);
        recorder.handle_success(sample(40, 40, 41));
        assert!(recorder
            .totals()
            .by_operation
            .contains_key(DEFAULT_OPERATION));
    }

    #[test]
    fn every_interval_is_logged_per_operation_with_its_own_samples() {
        let mut recorder = Recorder::new();
        // The second sample was held back 40 ms behind the first: corrected 50, raw 10.
        recorder.handle_success_of(sample(0, 0, 5), "join");
        recorder.handle_success_of(
            Sample {
                intended: ms(100),
                ready: ms(140),
                started: ms(141),
                finished: ms(151),
            },
            "join",
        );
        recorder.take_interval(ms(1000));
        recorder.handle_success_of(sample(1100, 1100, 1103), "join");
        recorder.take_interval(ms(1500));
        let log = recorder.interval_log();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].start, log[0].length), (ms(0), ms(1000)));
        assert_eq!((log[1].start, log[1].length), (ms(1000), ms(500)));
        let corrected = LoggedInterval::decode(&log[0].corrected).expect("decodes");
        let raw = LoggedInterval::decode(&log[0].raw).expect("decodes");
        assert_eq!((corrected.len(), raw.len()), (2, 2));
        assert_eq!(whole_ms(corrected.max()), 50);
        assert_eq!(whole_ms(raw.max()), 10);
        let second = LoggedInterval::decode(&log[1].raw).expect("decodes");
        assert_eq!(second.len(), 1, "the interval histograms were reset");
        assert!(LoggedInterval::decode(b"not a histogram").is_err());
        assert_eq!(
            recorder.take_final_interval(ms(1600)),
            None,
            "nothing answered"
        );
        assert_eq!(recorder.interval_log().len(), 2, "and nothing logged");
        recorder.handle_success_of(sample(1600, 1600, 1601), "join");
        assert!(recorder.take_final_interval(ms(1700)).is_some());
        assert_eq!(recorder.interval_log().len(), 3);
    }

    #[test]
    fn windows_count_each_sample_by_its_intended_start_whenever_it_is_answered() {
        let mut recorder = Recorder::new();
        recorder.handle_success(sample(0, 0, 1));
        assert!(
            recorder.windows(ms(10)).is_empty(),
            "no window unless asked for"
        );
        recorder.open_window("before", ms(0));
        recorder.handle_success(sample(10, 10, 12));
        // Meant for 90 ms, held up behind its sender's previous operation, answered during the
        // next window: it is the first window's (corrected 40 ms, raw 10 ms).
        recorder.open_window("during", ms(100));
        recorder.handle_success(Sample {
            intended: ms(90),
            ready: ms(120),
            started: ms(120),
            finished: ms(130),
        });
        recorder.handle_success(sample(100, 100, 400));
        recorder.handle_failure(sample(150, 150, 160), ErrorKind::Status(503));
        recorder.open_window("after", ms(500));
        // Asked for at a time before "after" opened: it opens with it, and "after" stays empty.
        recorder.open_window("late", ms(450));
        recorder.handle_success(sample(600, 600, 603));
        recorder.handle_success_of(sample(700, 700, 710), "moved");
        let windows = recorder.windows(ms(1000));
        let names: Vec<&str> = windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["before", "during", "after", "late"]);
        let [before, during, after, late] = &windows[..] else {
            panic!("four windows");
        };
        assert_eq!((before.start_s, before.end_s), (0.0, 0.1));
        assert_eq!((before.ops_ok, before.ops_failed), (2, 0));
        assert_eq!(whole_ms(before.latency_corrected.max_us), 40);
        assert_eq!(whole_ms(before.latency_raw.max_us), 10);
        assert_eq!(before.ops_per_s, 20.0);
        assert_eq!((during.ops_ok, during.ops_failed), (1, 1));
        assert_eq!(during.errors.get("http_503"), Some(&1));
        let op = &during.by_operation[DEFAULT_OPERATION];
        assert_eq!((op.ops_ok, op.ops_failed), (1, 1));
        assert_eq!(op.latency_corrected, during.latency_corrected);
        assert_eq!(whole_ms(during.latency_corrected.p50_us), 300);
        assert_eq!(
            (after.start_s, after.end_s),
            (0.5, 0.5),
            "ends where late opens"
        );
        assert_eq!((after.ops_ok, after.ops_per_s), (0, 0.0));
        assert_eq!((late.start_s, late.end_s, late.ops_ok), (0.5, 1.0, 2));
        let ops: Vec<(&str, u64)> = late
            .by_operation
            .iter()
            .map(|(name, op)| (name.as_str(), op.ops_ok))
            .collect();
        assert_eq!(ops, [("moved", 1), (DEFAULT_OPERATION, 1)]);
        assert_eq!(whole_ms(late.by_operation["moved"].latency_raw.max_us), 10);
        let totals = recorder.totals();
        assert_eq!(
            totals.ops_ok, 6,
            "the totals hold every sample, windows or not"
        );
        assert_eq!(totals.ops_failed, 1);
    }

    #[test]
    fn latencies_beyond_the_histogram_range_saturate() {
        let mut recorder = Recorder::new();
        recorder.handle_success(Sample::immediate(
            Duration::ZERO,
            Duration::from_secs(10 * 3600),
        ));
        let latency = recorder.totals().latency_corrected;
        assert_eq!(latency.count, 1);
        assert!(latency.max_us >= MAX_LATENCY_US, "{latency:?}");
    }
}
