//! `--out-dir DIR`: every file of a run in one directory.
//!
//! - `summary.json`: the JSON report (the same as on stdout or in `--json`).
//! - `intervals.csv`: one row per phase and second: `phase, elapsed_s, ops, ops_per_s, errors,
//!   p50_us, p95_us, p99_us, p999_us, max_us` (corrected latency of the operations answered in
//!   that second).
//! - `percentiles.csv`: the final percentiles per phase, operation (`all` and each kind) and
//!   latency (`corrected`, `raw`); for a phase cut into windows (the cluster scenario's shard
//!   split) also per window, as operation `window:<name>` (`window:before_split`, ...).
//!   `ops_per_s` is over the phase, or over the window's length.
//! - `<phase>.<operation>.corrected.hlog` and `.raw.hlog`: HdrHistogram interval logs, one
//!   histogram per second, V2 compressed, values in microseconds, base time the phase start
//!   (HdrHistogram's `HistogramLogProcessor -i FILE -outputValueUnitRatio 1000` prints them in
//!   milliseconds).
//! - `throughput.png` and `latency.png`: operations per second and the latency percentiles
//!   (p50, p95, p99, p99.9, max, logarithmic) over time, one panel per phase (`plot`); a
//!   phase cut into windows names where each began in its panels' title.
//!
//! idle-density has no timed phase; it writes (`write_density`) `summary.json`, `samples.csv`
//! (the node's memory and CPU once a second through the baseline, the creation of the rooms
//! and the idle window), `rss.png` (memory over the rooms created) and `timeline.png` (memory
//! and CPU over time).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use serde::Serialize;

use crate::density::{DensityReport, DensitySample, STAGE_BASELINE, STAGE_CREATION, STAGE_IDLE};
use crate::load::PhaseReport;
use crate::plot::{write_png, Panel, Series, PALETTE};
use crate::run::Report;
use crate::stats::{LoggedInterval, Percentiles, WindowReport};

pub const SUMMARY_FILE: &str = "summary.json";
pub const INTERVALS_FILE: &str = "intervals.csv";
pub const PERCENTILES_FILE: &str = "percentiles.csv";
pub const THROUGHPUT_FILE: &str = "throughput.png";
pub const LATENCY_FILE: &str = "latency.png";
/// idle-density's files beside `summary.json`.
pub const SAMPLES_FILE: &str = "samples.csv";
pub const RSS_FILE: &str = "rss.png";
pub const TIMELINE_FILE: &str = "timeline.png";
/// Header of `samples.csv`.
pub const SAMPLES_HEADER: &str =
    "stage,elapsed_s,rooms,rss_kib,hwm_kib,node_cpu_s,cpu_percent_of_core";

/// Writes `summary.json` alone into `dir` (created if missing); returns its path.
pub fn write_summary(dir: &Path, report: &impl Serialize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A timed phase as the output files see it: its name and what the load engine measured.
#[derive(Debug, Clone)]
pub struct PhaseView<'a> {
    pub name: String,
    pub measured: &'a PhaseReport,
    /// The windows the phase was cut into (the cluster scenario's split: the report keeps them
    /// in the phase's `split`), or none.
    pub windows: &'a [WindowReport],
}

/// A run with timed phases as the output files see it: the scenarios' [`Report`], and the
/// reports of the commands beside them (`nats`, `etcd`, `commit-floor`), which measure with the
/// same load engine.
#[derive(Debug, Clone)]
pub struct RunView<'a> {
    pub scenario: &'a str,
    pub phases: Vec<PhaseView<'a>>,
}

impl<'a> From<&'a Report> for RunView<'a> {
    fn from(report: &'a Report) -> Self {
        RunView {
            scenario: report.scenario,
            phases: report
                .phases
                .iter()
                .map(|phase| PhaseView {
                    name: phase.name.clone(),
                    measured: &phase.measured,
                    windows: phase
                        .split
                        .as_ref()
                        .map_or(&phase.measured.windows[..], |split| &split.windows[..]),
                })
                .collect(),
        }
    }
}

/// Writes every file of a run with timed phases into `dir` (created if missing): `summary`
/// as summary.json, and the CSVs, interval logs and PNGs of `report`'s phases; returns their
/// paths.
pub fn write_run(
    dir: &Path,
    summary: &impl Serialize,
    report: &RunView,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = vec![write_summary(dir, summary)?];
    let path = dir.join(INTERVALS_FILE);
    write_file(&path, &intervals_csv(report))?;
    written.push(path);
    let path = dir.join(PERCENTILES_FILE);
    write_file(&path, &percentiles_csv(report))?;
    written.push(path);
    written.extend(write_interval_logs(dir, report)?);
    let path = dir.join(THROUGHPUT_FILE);
    write_png(&path, &throughput_panels(report), "ELAPSED S")?;
    written.push(path);
    let path = dir.join(LATENCY_FILE);
    write_png(&path, &latency_panels(report), "ELAPSED S")?;
    written.push(path);
    Ok(written)
}

/// Writes every file of an idle-density run into `dir` (created if missing): `summary.json`,
/// `samples.csv`, `rss.png` and `timeline.png`; returns their paths.
pub fn write_density(dir: &Path, report: &DensityReport) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = vec![write_summary(dir, report)?];
    let path = dir.join(SAMPLES_FILE);
    write_file(&path, &samples_csv(&report.samples))?;
    written.push(path);
    let path = dir.join(RSS_FILE);
    write_png(
        &path,
        &[rss_by_rooms_panel(&report.samples)],
        "ROOMS CREATED",
    )?;
    written.push(path);
    let path = dir.join(TIMELINE_FILE);
    write_png(&path, &timeline_panels(&report.samples), "ELAPSED S")?;
    written.push(path);
    Ok(written)
}

/// One row per sample of the node; an unknown CPU share is an empty field.
pub fn samples_csv(samples: &[DensitySample]) -> String {
    let mut csv = format!("{SAMPLES_HEADER}\n");
    for sample in samples {
        // Writing to a String cannot fail.
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            sample.stage,
            sample.elapsed_s,
            sample.rooms,
            sample.rss_kib,
            sample.hwm_kib,
            sample.node_cpu_s,
            sample
                .cpu_percent_of_core
                .map_or(String::new(), |p| p.to_string())
        );
    }
    csv
}

/// The stages of idle-density in order, each with its colour.
const STAGES: [(&str, usize); 3] = [(STAGE_BASELINE, 4), (STAGE_CREATION, 0), (STAGE_IDLE, 3)];

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The node's VmRSS against the rooms created so far: while creating them, then through the
/// idle window (at the final count).
fn rss_by_rooms_panel(samples: &[DensitySample]) -> Panel {
    Panel {
        title: "idle-density: node RSS over rooms created".into(),
        y_label: "RSS MIB".into(),
        log_y: false,
        series: STAGES[1..]
            .iter()
            .map(|&(stage, color)| Series {
                label: stage.into(),
                color: PALETTE[color],
                points: samples
                    .iter()
                    .filter(|s| s.stage == stage)
                    .map(|s| (s.rooms as f64, mib(s.rss_kib)))
                    .collect(),
            })
            .collect(),
    }
}

/// The node's VmRSS and CPU over the run, a series per stage.
fn timeline_panels(samples: &[DensitySample]) -> Vec<Panel> {
    let by_stage = |value: fn(&DensitySample) -> Option<f64>| -> Vec<Series> {
        STAGES
            .iter()
            .map(|&(stage, color)| Series {
                label: stage.into(),
                color: PALETTE[color],
                points: samples
                    .iter()
                    .filter(|s| s.stage == stage)
                    .filter_map(|s| Some((s.elapsed_s, value(s)?)))
                    .collect(),
            })
            .collect()
    };
    vec![
        Panel {
            title: "idle-density: node RSS".into(),
            y_label: "RSS MIB".into(),
            log_y: false,
            series: by_stage(|s| Some(mib(s.rss_kib))),
        },
        Panel {
            title: "idle-density: node CPU".into(),
            y_label: "% OF A CORE".into(),
            log_y: false,
            series: by_stage(|s| s.cpu_percent_of_core),
        },
    ]
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The per-second rows of every phase.
pub fn intervals_csv(report: &RunView) -> String {
    let mut csv =
        String::from("phase,elapsed_s,ops,ops_per_s,errors,p50_us,p95_us,p99_us,p999_us,max_us\n");
    for phase in &report.phases {
        for interval in &phase.measured.intervals {
            let l = &interval.latency;
            // Writing to a String cannot fail.
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{}",
                csv_field(&phase.name),
                interval.elapsed_s,
                interval.ops_ok,
                interval.ops_per_s,
                interval.errors,
                l.p50_us,
                l.p95_us,
                l.p99_us,
                l.p999_us,
                l.max_us
            );
        }
    }
    csv
}

/// The final percentiles of every phase, for all operations together and per operation.
pub fn percentiles_csv(report: &RunView) -> String {
    let mut csv = String::from(
        "phase,operation,latency,ops_ok,ops_failed,ops_per_s,count,mean_us,p50_us,p95_us,\
         p99_us,p999_us,max_us\n",
    );
    let mut row = |phase: &str,
                   operation: &str,
                   kind: &str,
                   ok: u64,
                   failed: u64,
                   elapsed_s: f64,
                   p: &Percentiles| {
        let rate = if elapsed_s > 0.0 {
            (ok as f64 / elapsed_s * 10.0).round() / 10.0
        } else {
            0.0
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            csv,
            "{},{},{kind},{ok},{failed},{rate},{},{},{},{},{},{},{}",
            csv_field(phase),
            csv_field(operation),
            p.count,
            p.mean_us,
            p.p50_us,
            p.p95_us,
            p.p99_us,
            p.p999_us,
            p.max_us
        );
    };
    for phase in &report.phases {
        let m = &phase.measured;
        let t = &m.totals;
        for (kind, p) in [("corrected", &t.latency_corrected), ("raw", &t.latency_raw)] {
            row(
                &phase.name,
                "all",
                kind,
                t.ops_ok,
                t.ops_failed,
                m.elapsed_s,
                p,
            );
        }
        for (operation, op) in &t.by_operation {
            for (kind, p) in [
                ("corrected", &op.latency_corrected),
                ("raw", &op.latency_raw),
            ] {
                row(
                    &phase.name,
                    operation,
                    kind,
                    op.ops_ok,
                    op.ops_failed,
                    m.elapsed_s,
                    p,
                );
            }
        }
        for window in phase.windows {
            for (kind, p) in [
                ("corrected", &window.latency_corrected),
                ("raw", &window.latency_raw),
            ] {
                row(
                    &phase.name,
                    &format!("window:{}", window.name),
                    kind,
                    window.ops_ok,
                    window.ops_failed,
                    window.end_s - window.start_s,
                    p,
                );
            }
        }
    }
    csv
}

/// A phase name as a file name: letters, digits, `-` and `_` (the stem of its `--out-dir`
/// interval logs).
pub fn slug(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    slug.trim_matches('-').to_string()
}

/// `<phase>.<operation>.{corrected,raw}.hlog` for every phase and operation.
fn write_interval_logs(dir: &Path, report: &RunView) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (index, phase) in report.phases.iter().enumerate() {
        let mut stem = slug(&phase.name);
        if stem.is_empty() || !used.insert(stem.clone()) {
            stem = format!("{stem}-{}", index + 1);
            used.insert(stem.clone());
        }
        let log = &phase.measured.interval_log;
        let mut operations: Vec<&'static str> = log.iter().map(|e| e.operation).collect();
        operations.sort_unstable();
        operations.dedup();
        for operation in operations {
            for corrected in [true, false] {
                let kind = if corrected { "corrected" } else { "raw" };
                let path = dir.join(format!("{stem}.{}.{kind}.hlog", slug(operation)));
                let entries = log.iter().filter(|e| e.operation == operation);
                let comment = format!(
                    "mimid-bench {} phase \"{}\": {kind} latency of {operation}, microseconds",
                    report.scenario, phase.name
                );
                write_interval_log(
                    &path,
                    &comment,
                    phase.measured.started_unix_ms,
                    entries,
                    corrected,
                )?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

fn write_interval_log<'a>(
    path: &Path,
    comment: &str,
    started_unix_ms: u64,
    entries: impl Iterator<Item = &'a LoggedInterval>,
    corrected: bool,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut serializer = V2DeflateSerializer::new();
    let start = UNIX_EPOCH + Duration::from_millis(started_unix_ms);
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(comment)
        .with_start_time(start)
        .with_base_time(start)
        // The max column in milliseconds.
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut serializer)
        .with_context(|| format!("writing {}", path.display()))?;
    for entry in entries {
        let encoded = if corrected {
            &entry.corrected
        } else {
            &entry.raw
        };
        let histogram = LoggedInterval::decode(encoded)?;
        writer
            .write_histogram(&histogram, entry.start, entry.length, None)
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))?;
    }
    drop(writer);
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// A panel's title: the scenario and the phase, or the phase alone when its name starts with
/// the scenario's.
/// A panel's title: [`title`], and where each window began.
fn panel_title(scenario: &str, phase: &PhaseView) -> String {
    let title = title(scenario, &phase.name);
    if phase.windows.len() < 2 {
        return title;
    }
    let starts: Vec<String> = phase.windows[1..]
        .iter()
        .map(|w| {
            format!(
                "{} {:.2} S",
                w.name.to_uppercase().replace('_', " "),
                w.start_s
            )
        })
        .collect();
    format!("{title} ({})", starts.join(", "))
}

fn title(scenario: &str, phase: &str) -> String {
    if phase.starts_with(scenario) {
        phase.to_string()
    } else {
        format!("{scenario}: {phase}")
    }
}

/// One panel per phase: operations per second (and failures per second, if any).
fn throughput_panels(report: &RunView) -> Vec<Panel> {
    report
        .phases
        .iter()
        .map(|phase| {
            let intervals = &phase.measured.intervals;
            let mut series = vec![Series {
                label: "ops/s".into(),
                color: PALETTE[0],
                points: intervals
                    .iter()
                    .map(|i| (i.elapsed_s, i.ops_per_s))
                    .collect(),
            }];
            if intervals.iter().any(|i| i.errors > 0) {
                series.push(Series {
                    label: "errors".into(),
                    color: PALETTE[2],
                    points: intervals
                        .iter()
                        .map(|i| (i.elapsed_s, i.errors as f64))
                        .collect(),
                });
            }
            Panel {
                title: panel_title(report.scenario, phase),
                y_label: "OPS/S".into(),
                log_y: false,
                series,
            }
        })
        .collect()
}

/// One panel per phase: the corrected latency percentiles of each second, in milliseconds.
fn latency_panels(report: &RunView) -> Vec<Panel> {
    report
        .phases
        .iter()
        .map(|phase| {
            let intervals = &phase.measured.intervals;
            let percentile = |label: &str, color, pick: fn(&Percentiles) -> u64| Series {
                label: label.into(),
                color,
                points: intervals
                    .iter()
                    .filter(|i| i.latency.count > 0)
                    .map(|i| (i.elapsed_s, pick(&i.latency) as f64 / 1000.0))
                    .collect(),
            };
            Panel {
                title: panel_title(report.scenario, phase),
                y_label: "LATENCY MS".into(),
                log_y: true,
                series: vec![
                    percentile("p50", PALETTE[0], |p| p.p50_us),
                    percentile("p95", PALETTE[3], |p| p.p95_us),
                    percentile("p99", PALETTE[1], |p| p.p99_us),
                    percentile("p99.9", PALETTE[2], |p| p.p999_us),
                    percentile("max", PALETTE[4], |p| p.max_us),
                ],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("commits group_size=2"), "commits group_size=2");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn titles_name_the_scenario_once() {
        assert_eq!(title("dm", "dm"), "dm");
        assert_eq!(
            title("commit-churn", "commit-churn group_size=2"),
            "commit-churn group_size=2"
        );
        assert_eq!(title("commits", "messages"), "commits: messages");
    }

    #[test]
    fn density_samples_make_a_csv_row_each_and_a_series_per_stage() {
        let sample = |stage, elapsed_s, rooms, rss_kib, cpu| DensitySample {
            stage,
            elapsed_s,
            rooms,
            rss_kib,
            hwm_kib: rss_kib,
            node_cpu_s: rooms as f64 / 1000.0,
            cpu_percent_of_core: cpu,
        };
        let samples = [
            sample(STAGE_BASELINE, 0.0, 0, 20_480, None),
            sample(STAGE_BASELINE, 1.0, 0, 20_480, Some(0.5)),
            sample(STAGE_CREATION, 1.1, 0, 20_480, Some(1.0)),
            sample(STAGE_CREATION, 2.1, 150, 30_720, Some(95.5)),
            sample(STAGE_IDLE, 2.2, 200, 33_792, Some(2.0)),
        ];
        let csv = samples_csv(&samples);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], SAMPLES_HEADER);
        assert_eq!(lines[1], "baseline,0,0,20480,20480,0,");
        assert_eq!(lines[4], "creation,2.1,150,30720,30720,0.15,95.5");
        assert_eq!(lines.len(), 6);

        let rss = rss_by_rooms_panel(&samples);
        let labels: Vec<&str> = rss.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["creation", "idle"]);
        assert_eq!(rss.series[0].points, vec![(0.0, 20.0), (150.0, 30.0)]);
        assert_eq!(rss.series[1].points, vec![(200.0, 33.0)]);

        let timeline = timeline_panels(&samples);
        assert_eq!(timeline.len(), 2);
        assert_eq!(
            timeline[1].series[0].points,
            vec![(1.0, 0.5)],
            "no CPU share at first"
        );
        assert_eq!(timeline[0].series[2].points, vec![(2.2, 33.0)]);
    }

    #[test]
    fn a_phase_cut_into_windows_has_their_percentiles_and_names_them_in_its_title() {
        use crate::load::StopReason;
        use crate::stats::{Recorder, Sample};
        let mut recorder = Recorder::new();
        recorder.open_window("before_split", Duration::ZERO);
        let ms = Duration::from_millis;
        recorder.handle_success(Sample::immediate(ms(100), ms(102)));
        recorder.open_window("during_split", ms(1000));
        recorder.handle_success(Sample::immediate(ms(1100), ms(1140)));
        recorder.open_window("after_split", ms(1500));
        let measured = PhaseReport {
            started_unix_ms: 0,
            senders: 1,
            workers: 1,
            elapsed_s: 2.0,
            throughput_ops_s: 1.0,
            stop_reason: StopReason::Duration,
            exhausted_senders: 0,
            retired_senders: 0,
            totals: recorder.totals(),
            intervals: Vec::new(),
            windows: Vec::new(),
            interval_log: Vec::new(),
        };
        let windows = recorder.windows(ms(2000));
        let run = RunView {
            scenario: "cluster",
            phases: vec![PhaseView {
                name: "cluster".into(),
                measured: &measured,
                windows: &windows,
            }],
        };
        let csv = percentiles_csv(&run);
        let rows: Vec<&str> = csv
            .lines()
            .filter(|line| line.contains(",window:"))
            .collect();
        assert_eq!(rows.len(), 6, "corrected and raw per window: {csv}");
        assert!(
            rows[2].starts_with("cluster,window:during_split,corrected,1,0,2,1,"),
            "one operation over half a second: {csv}"
        );
        assert!(rows[4].starts_with("cluster,window:after_split,corrected,0,0,0,0,"));
        assert_eq!(
            panel_title("cluster", &run.phases[0]),
            "cluster (DURING SPLIT 1.00 S, AFTER SPLIT 1.50 S)"
        );
        let plain = PhaseView {
            windows: &[],
            ..run.phases[0].clone()
        };
        assert_eq!(panel_title("cluster", &plain), "cluster");
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("commits group_size=2"), "commits-group_size-2");
        assert_eq!(slug("small-rooms"), "small-rooms");
        assert_eq!(slug("../x"), "x");
    }
}
