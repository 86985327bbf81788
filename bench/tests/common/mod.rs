//! What the CI profiles of the bench (`ci.rs`, `side_by_side.rs`) check in the files
//! `--out-dir` writes.

// Each test crate uses the part it needs.
#![allow(dead_code)]

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use mimid_bench::output::slug;
use serde_json::Value;

/// Checks every file `--out-dir` wrote for `report` (the JSON on stdout or in `--json`) of a
/// run with timed phases: summary.json is that report; intervals.csv has its header and a row
/// per interval of each phase, adding up to the phase's operations; percentiles.csv has each
/// phase's totals; every operation of every phase has a corrected and a raw HdrHistogram
/// interval log with a V2-compressed histogram per interval; both PNGs are PNGs of one
/// 300-pixel panel per phase.
pub fn check_out_dir(dir: &Path, report: &Value) {
    check_out_dir_of(dir, report, report["phases"].as_array().expect("phases"));
}

/// [`check_out_dir`] for a report whose timed phases are `phases` (each with its `name` and
/// the load engine's fields).
pub fn check_out_dir_of(dir: &Path, report: &Value, phases: &[Value]) {
    let summary: Value = serde_json::from_slice(
        &std::fs::read(dir.join("summary.json")).expect("summary.json written"),
    )
    .expect("summary.json is JSON");
    assert_eq!(&summary, report, "summary.json is the report");

    let intervals = std::fs::read_to_string(dir.join("intervals.csv")).expect("intervals.csv");
    let mut lines = intervals.lines();
    assert_eq!(
        lines.next(),
        Some("phase,elapsed_s,ops,ops_per_s,errors,p50_us,p95_us,p99_us,p999_us,max_us")
    );
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert!(!rows.is_empty(), "intervals.csv has rows");
    assert!(rows.iter().all(|row| row.len() == 10), "{intervals}");
    for phase in phases {
        let name = phase["name"].as_str().expect("name");
        let ops: u64 = rows
            .iter()
            .filter(|row| row[0] == name)
            .map(|row| row[2].parse::<u64>().expect("ops is a number"))
            .sum();
        assert_eq!(ops, phase["ops_ok"].as_u64().expect("ops_ok"), "{name}");
        assert_eq!(
            rows.iter().filter(|row| row[0] == name).count(),
            phase["intervals"].as_array().expect("intervals").len(),
            "{name}: a row per interval"
        );
    }

    let percentiles =
        std::fs::read_to_string(dir.join("percentiles.csv")).expect("percentiles.csv");
    assert!(
        percentiles.starts_with("phase,operation,latency,ops_ok,ops_failed,ops_per_s,count,"),
        "{percentiles}"
    );
    for phase in phases {
        let name = phase["name"].as_str().expect("name");
        let all = format!("{name},all,corrected,{},", phase["ops_ok"]);
        assert!(
            percentiles.lines().any(|line| line.starts_with(&all)),
            "{all} in {percentiles}"
        );
    }

    for phase in phases {
        let name = phase["name"].as_str().expect("name");
        let intervals = phase["intervals"].as_array().expect("intervals").len();
        let operations = phase["by_operation"].as_object().expect("by_operation");
        assert!(!operations.is_empty(), "{name}");
        for operation in operations.keys() {
            for kind in ["corrected", "raw"] {
                let path = dir.join(format!("{}.{operation}.{kind}.hlog", slug(name)));
                let log =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let text = String::from_utf8_lossy(&log);
                assert!(text.contains("#[BaseTime: "), "{text}");
                let histograms: Vec<_> = IntervalLogIterator::new(&log)
                    .map(|entry| entry.expect("the interval log parses"))
                    .filter_map(|entry| match entry {
                        LogEntry::Interval(h) => Some(h),
                        _ => None,
                    })
                    .collect();
                // One histogram per second from the operation's first one on (a phase of one
                // operation: from the first second).
                assert!(
                    (1..=intervals).contains(&histograms.len()),
                    "{}: {} histograms, {intervals} intervals",
                    path.display(),
                    histograms.len()
                );
                if operations.len() == 1 {
                    assert_eq!(histograms.len(), intervals, "{}", path.display());
                }
                assert!(
                    histograms
                        .iter()
                        .all(|h| h.encoded_histogram().starts_with("HISTFAAA")),
                    "V2 compressed histograms: {text}"
                );
                let recorded: u64 = histograms
                    .iter()
                    .map(|h| {
                        // Interval logs carry standard base64 (RFC 4648 §4).
                        let bytes = STANDARD
                            .decode(h.encoded_histogram())
                            .expect("the histogram is base64");
                        let histogram: hdrhistogram::Histogram<u64> =
                            hdrhistogram::serialization::Deserializer::new()
                                .deserialize(&mut bytes.as_slice())
                                .expect("the histogram decodes");
                        histogram.len()
                    })
                    .sum();
                assert_eq!(
                    recorded,
                    operations[operation]["ops_ok"],
                    "{}: every success is in one interval",
                    path.display()
                );
            }
        }
    }

    for png in ["throughput.png", "latency.png"] {
        check_png(&dir.join(png), phases.len().max(1));
    }
}

/// Checks that `path` is a PNG of `panels` 1000×300 panels: its signature, its IHDR chunk's
/// size, and some image data.
pub fn check_png(path: &Path, panels: usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 100,
        "{} has {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR", "{}", path.display());
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
    assert_eq!(
        (width, height),
        (1000, 300 * panels as u32),
        "{}: a panel each",
        path.display()
    );
    assert!(
        bytes.windows(4).any(|w| w == b"IDAT"),
        "{}: image data",
        path.display()
    );
}
