//! Progress on stderr: the per-second lines, and on a terminal `indicatif` progress bars (a
//! spinner while rooms are set up, a bar over the timed phase). Bars are drawn only when
//! progress is on (no `--no-progress`) and stderr is a terminal; the lines are printed either
//! way (above the bar when there is one), so a redirected stderr keeps its plain lines.
//!
//! One bar at a time for the whole process: a run has one phase at a time, and the load
//! engine's ticker prints through [`line`] without knowing whether a bar is drawn.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

/// Redraws per second of a bar's elapsed time between the ticker's updates.
const STEADY_TICK: Duration = Duration::from_millis(200);

/// The bar currently drawn, if any.
static BAR: Mutex<Option<ProgressBar>> = parking_lot::const_mutex(None);
/// Bumped whenever the bar is replaced, so a spinner removes only itself.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Whether bars are drawn: progress is on and stderr is a terminal.
pub fn bars_enabled(progress: bool) -> bool {
    progress && std::io::stderr().is_terminal()
}

/// Prints `text` on stderr, above the bar if one is drawn.
pub fn line(text: &str) {
    match BAR.lock().as_ref() {
        Some(bar) => bar.println(text),
        None => eprintln!("{text}"),
    }
}

/// Starts the bar of a timed phase of `duration` (when bars are enabled).
pub fn phase_started(duration: Duration, progress: bool) {
    if !bars_enabled(progress) {
        return;
    }
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(STEADY_TICK);
    replace(Some(bar));
}

/// Moves the phase bar to `elapsed` with `message` (the last second's figures).
pub fn phase_tick(elapsed: Duration, message: &str) {
    if let Some(bar) = BAR.lock().as_ref() {
        bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        bar.set_message(message.to_string());
    }
}

/// Removes the phase bar.
pub fn phase_ended() {
    replace(None);
}

/// A spinner with a message while something untimed runs (room set-up), removed when dropped
/// unless a phase bar replaced it already.
pub struct Spinner {
    generation: Option<u64>,
}

impl Spinner {
    /// Shows `message` with a spinner and the elapsed time (when bars are enabled).
    pub fn start(progress: bool, message: &str) -> Spinner {
        if !bars_enabled(progress) {
            return Spinner { generation: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(STEADY_TICK);
        Spinner {
            generation: Some(replace(Some(bar))),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let mut current = BAR.lock();
        if self.generation == Some(GENERATION.load(Ordering::Relaxed)) {
            GENERATION.fetch_add(1, Ordering::Relaxed);
            if let Some(spinner) = current.take() {
                spinner.finish_and_clear();
            }
        }
    }
}

/// Draws `bar` instead of the current one; returns the new generation.
fn replace(bar: Option<ProgressBar>) -> u64 {
    let mut current = BAR.lock();
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(previous) = std::mem::replace(&mut *current, bar) {
        previous.finish_and_clear();
    }
    generation
}
