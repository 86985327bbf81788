//! When each operation is *meant* to start: the open-model arrival schedule and the test for a
//! late start. Sans-IO: offsets are durations from the phase start, nothing here reads a clock.
//!
//! The open model follows wrk2's constant-throughput design (ecosystem.md, "How the shipped
//! load tools report results"): every sender has its own fixed timetable and latency is
//! measured from the intended start on that timetable, so a server stall shows up as latency
//! of every operation that should have started during the stall instead of silently lowering
//! the offered load (coordinated omission). Sender `i` of `n` starts its `k`-th operation at
//! `(k·n + i) / rate` seconds: the union of all timetables is one evenly spaced arrival
//! stream at `rate` ops/s, and no two senders are scheduled at the same instant.

use std::time::Duration;

/// A start this much after its intended time counts as late. tokio's timer wheel has a
/// resolution of 1 ms, so anything below 2 ms is timer noise rather than a generator that
/// could not keep up.
pub const LATE_START_SLACK: Duration = Duration::from_millis(2);

/// Why a schedule cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the rate must be a positive, finite number of operations per second, got {0}")]
    Rate(f64),
    #[error("an open schedule needs at least one sender")]
    NoSenders,
}

/// The open-model timetable of `n_senders` senders sharing `rate` operations per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenSchedule {
    rate: f64,
    n_senders: u64,
}

impl OpenSchedule {
    pub fn new(rate: f64, n_senders: u64) -> Result<Self, ScheduleError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ScheduleError::Rate(rate));
        }
        if n_senders == 0 {
            return Err(ScheduleError::NoSenders);
        }
        Ok(OpenSchedule { rate, n_senders })
    }

    /// Intended start of operation `k` of sender `sender_idx`, from the phase start.
    pub fn offset(&self, sender_idx: u64, k: u64) -> Duration {
        debug_assert!(sender_idx < self.n_senders);
        let slot = k as f64 * self.n_senders as f64 + sender_idx as f64;
        Duration::from_secs_f64(slot / self.rate)
    }

    /// How many operations sender `sender_idx` is scheduled to start strictly before `window`:
    /// the number of messages it must have ready when they are encrypted in advance.
    pub fn ops_within(&self, sender_idx: u64, window: Duration) -> u64 {
        let slots = window.as_secs_f64() * self.rate;
        // Operation k is inside iff k·n + i < slots; f64 rounding is settled against `offset`
        // itself so the count always agrees with the timetable the workers follow.
        let mut k = ((slots - sender_idx as f64) / self.n_senders as f64)
            .ceil()
            .max(0.0) as u64;
        while k > 0 && self.offset(sender_idx, k - 1) >= window {
            k -= 1;
        }
        while self.offset(sender_idx, k) < window {
            k += 1;
        }
        k
    }
}

/// How late an operation started, if it started later than [`LATE_START_SLACK`] after its
/// intended time.
pub fn late_by(intended: Duration, started: Duration) -> Option<Duration> {
    started
        .checked_sub(intended)
        .filter(|lateness| *lateness > LATE_START_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_interleave_into_one_evenly_spaced_stream() {
        let schedule = OpenSchedule::new(1000.0, 4).expect("valid");
        let mut starts: Vec<Duration> = (0..4)
            .flat_map(|i| (0..3).map(move |k| (i, k)))
            .map(|(i, k)| schedule.offset(i, k))
            .collect();
        starts.sort();
        let expected: Vec<Duration> = (0..12).map(Duration::from_millis).collect();
        assert_eq!(starts, expected);
    }

    #[test]
    fn ops_within_agrees_with_the_timetable() {
        for (rate, n, window_ms) in [
            (1000.0, 4, 10),
            (333.3, 7, 1000),
            (10.0, 100, 1000),
            (0.5, 1, 5000),
            (12_345.0, 3, 2500),
        ] {
            let schedule = OpenSchedule::new(rate, n).expect("valid");
            let window = Duration::from_millis(window_ms);
            let mut total = 0;
            for i in 0..n {
                let k = schedule.ops_within(i, window);
                total += k;
                if k > 0 {
                    assert!(schedule.offset(i, k - 1) < window, "{rate} {n} {i}");
                }
                assert!(schedule.offset(i, k) >= window, "{rate} {n} {i}");
            }
            let expected = (window.as_secs_f64() * rate).ceil() as u64;
            assert!(
                total.abs_diff(expected) <= 1,
                "{rate} {n}: {total} vs {expected}"
            );
        }
    }

    #[test]
    fn a_sender_beyond_the_window_has_nothing_to_send() {
        let schedule = OpenSchedule::new(1.0, 10).expect("valid");
        assert_eq!(schedule.ops_within(3, Duration::from_secs(3)), 0);
        assert_eq!(schedule.ops_within(2, Duration::from_secs(3)), 1);
    }

    #[test]
    fn invalid_rates_and_empty_schedules_are_refused() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                OpenSchedule::new(rate, 1),
                Err(ScheduleError::Rate(_))
            ));
        }
        assert_eq!(OpenSchedule::new(1.0, 0), Err(ScheduleError::NoSenders));
    }

    #[test]
    fn only_starts_beyond_the_timer_slack_are_late() {
        let intended = Duration::from_millis(100);
        assert_eq!(late_by(intended, Duration::from_millis(99)), None);
        assert_eq!(late_by(intended, intended + LATE_START_SLACK), None);
        assert_eq!(
            late_by(intended, Duration::from_millis(150)),
            Some(Duration::from_millis(50))
        );
    }
}
