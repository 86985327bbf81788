//! The commands beside the mimid scenarios (issue 5 items 4 and 5): the side-by-side peers
//! `nats` (NATS JetStream) and `etcd`, `compare` (the ratio table of a side-by-side run) and
//! `commit-floor` (mimid's Commits against the openmls floor). They are listed in the same
//! `mimid-bench --help` as the scenarios (`cli::parse_invocation`).
//!
//! `bench/side-by-side/run.sh` runs mimid's `cluster` scenario, `nats` and `etcd` with the
//! same load and then `compare`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;

use crate::cli::OutputArgs;
use crate::floor::{FloorArgs, FloorReport};
use crate::peer::{PeerArgs, PeerReport};

/// Throughput goals of issue 5 against the peers, in the same run.
pub const GOAL_OVER_JETSTREAM: f64 = 1.5;
pub const GOAL_OVER_ETCD: f64 = 5.0;
/// The systems' labels in the comparison.
pub const LABEL_MIMID: &str = "mimid";
pub const LABEL_MIMID_NO_FSYNC: &str = "mimid (no fsync)";
pub const LABEL_NATS: &str = "NATS JetStream";
pub const LABEL_ETCD: &str = "etcd";

#[derive(Debug, Clone, Subcommand)]
pub enum ExtraCommand {
    /// Side by side: NATS JetStream (nats-server child processes on loopback, one R3 file
    /// stream) under the cluster scenario's workload: 256-byte publishes to 100 room subjects,
    /// each acknowledged by its PubAck, and a push consumer per node delivering to another
    /// node. Same load engine and report as the scenarios.
    Nats(PeerArgs),
    /// Side by side: etcd (member child processes on loopback) under the cluster scenario's
    /// workload: 256-byte puts to 100 room keys through the gRPC gateway, and a watcher per
    /// member on another member's keys. Same load engine and report as the scenarios.
    Etcd(PeerArgs),
    /// The ratio table of a side-by-side run from its JSON reports (mimid's `cluster`, `nats`,
    /// `etcd`).
    Compare(CompareArgs),
    /// Commits per second through mimid (the commits scenario) against the hub's openmls floor
    /// (PublicGroup process + merge of pregenerated self-update Commits, one thread, no
    /// network, Raft or disk) at several group sizes.
    CommitFloor(FloorArgs),
}

/// Options of `mimid-bench compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// mimid's `cluster` report (fsync on).
    #[arg(long, value_name = "FILE")]
    pub mimid: PathBuf,
    /// mimid's `cluster --no-fsync` report, the like-for-like row against JetStream 2.9
    /// (which does not fsync before its PubAck).
    #[arg(long, value_name = "FILE")]
    pub mimid_no_fsync: Option<PathBuf>,
    /// The `nats` report.
    #[arg(long, value_name = "FILE")]
    pub nats: Option<PathBuf>,
    /// The `etcd` report.
    #[arg(long, value_name = "FILE")]
    pub etcd: Option<PathBuf>,
    /// Write the comparison JSON to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs one of the extra commands (after `cli::parse_invocation`). Must not be called from
/// inside a tokio runtime.
pub fn main(command: ExtraCommand) -> ExitCode {
    let result = match &command {
        ExtraCommand::Nats(args) => crate::nats::run(args).and_then(|report| {
            write_json(args.output.json.as_deref(), &report)?;
            write_out_dir(&args.output, &report, &report.view())?;
            print_peer(&report);
            Ok(())
        }),
        ExtraCommand::Etcd(args) => crate::etcd::run(args).and_then(|report| {
            write_json(args.output.json.as_deref(), &report)?;
            write_out_dir(&args.output, &report, &report.view())?;
            print_peer(&report);
            Ok(())
        }),
        ExtraCommand::Compare(args) => compare_files(args).and_then(|comparison| {
            write_json(args.json.as_deref(), &comparison)?;
            eprint!("{}", comparison.table());
            Ok(())
        }),
        ExtraCommand::CommitFloor(args) => crate::floor::run(args).and_then(|report| {
            write_json(args.common.output.json.as_deref(), &report)?;
            write_out_dir(&args.common.output, &report, &report.view())?;
            eprint!("{}", floor_table(&report));
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mimid-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_json(path: Option<&Path>, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value).context("encoding the report")?;
    match path {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{json}").context("writing the report")?;
        }
    }
    Ok(())
}

/// With `--out-dir`, the report's files as the scenarios write them (`output::write_run`).
fn write_out_dir(
    output: &OutputArgs,
    summary: &impl Serialize,
    view: &crate::output::RunView,
) -> anyhow::Result<()> {
    if let Some(dir) = &output.out_dir {
        let files = crate::output::write_run(dir, summary, view)?;
        eprintln!("# wrote {} files into {}", files.len(), dir.display());
    }
    Ok(())
}

fn print_peer(report: &PeerReport) {
    for phase in &report.phases {
        let ms = |us: u64| us as f64 / 1000.0;
        let latency = &phase.measured.totals.latency_corrected;
        eprintln!(
            "# {}: {} ops/s ({} ok, {} failed); corrected p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms",
            phase.name,
            phase.measured.throughput_ops_s,
            phase.measured.totals.ops_ok,
            phase.measured.totals.ops_failed,
            ms(latency.p50_us),
            ms(latency.p99_us),
            ms(latency.p999_us),
        );
        let seconds = |s: Option<f64>| s.map_or("unknown".to_string(), |s| format!("{s:.1}"));
        eprintln!(
            "#   cpu s over {:.1} s: servers {}, driver {}, other processes {}; stored {}",
            phase.measured.elapsed_s,
            seconds(phase.cpu.server_s),
            seconds(phase.cpu.generator_s),
            seconds(phase.cpu.other_processes_s),
            phase.stored.map_or("unknown".into(), |n| n.to_string()),
        );
        if let Some(delivery) = &phase.delivery {
            eprintln!(
                "#   delivery: {} to {} subscribers ({} lost){}",
                delivery.delivered,
                delivery.receivers,
                delivery.streams_lost,
                if delivery.caught_up {
                    ""
                } else {
                    "; NOT caught up"
                }
            );
        }
    }
}

/// The figures of one system in a side-by-side run.
#[derive(Debug, Clone, Serialize)]
pub struct SystemFigures {
    pub label: String,
    pub file: String,
    pub scenario: String,
    /// When an acknowledgement is sent relative to the disk.
    pub durability: String,
    pub load_model: String,
    pub concurrency: Option<u64>,
    pub rate: Option<f64>,
    pub rooms: Option<u64>,
    pub message_bytes: Option<u64>,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub throughput_ops_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Server CPU milliseconds per acknowledged message.
    pub server_cpu_ms_per_op: Option<f64>,
    pub other_processes_s: Option<f64>,
    /// Messages the subscribers (mimid's attached members) received.
    pub delivered: Option<u64>,
}

/// One row of the ratio table: `numerator` over `denominator`.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub numerator: String,
    pub denominator: String,
    /// Acknowledged messages per second, numerator over denominator (higher is better).
    pub throughput: f64,
    /// Latency p50 and p99, numerator over denominator (lower is better).
    pub p50: f64,
    pub p99: f64,
    /// issue 5's goal for the throughput ratio, if there is one.
    pub goal: Option<f64>,
    pub meets_goal: Option<bool>,
}

/// The comparison of a side-by-side run.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub systems: Vec<SystemFigures>,
    pub ratios: Vec<Ratio>,
    /// Differences in the load or shape between the reports, which make a ratio unfair.
    pub warnings: Vec<String>,
}

fn compare_files(args: &CompareArgs) -> anyhow::Result<Comparison> {
    let read = |path: &Path| -> anyhow::Result<Value> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("decoding {}", path.display()))
    };
    let mut inputs = vec![(LABEL_MIMID, args.mimid.clone(), read(&args.mimid)?)];
    if let Some(path) = &args.mimid_no_fsync {
        inputs.push((LABEL_MIMID_NO_FSYNC, path.clone(), read(path)?));
    }
    if let Some(path) = &args.nats {
        inputs.push((LABEL_NATS, path.clone(), read(path)?));
    }
    if let Some(path) = &args.etcd {
        inputs.push((LABEL_ETCD, path.clone(), read(path)?));
    }
    let systems = inputs
        .iter()
        .map(|(label, path, value)| figures(label, path, value))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(compare(systems))
}

/// The ratio table of `systems` (mimid first), found by their labels ([`LABEL_MIMID`], ...):
/// mimid over each peer, and mimid without fsync over JetStream.
pub fn compare(systems: Vec<SystemFigures>) -> Comparison {
    let find = |label: &str| systems.iter().find(|s| s.label == label);
    let mimid = find(LABEL_MIMID);
    let mimid_no_fsync = find(LABEL_MIMID_NO_FSYNC);
    let nats = find(LABEL_NATS);
    let etcd = find(LABEL_ETCD);
    let ratio = |a: &SystemFigures, b: &SystemFigures, goal: Option<f64>| {
        let div = |x: f64, y: f64| {
            if y > 0.0 {
                (x / y * 1000.0).round() / 1000.0
            } else {
                0.0
            }
        };
        let throughput = div(a.throughput_ops_s, b.throughput_ops_s);
        // Under the open model both were offered the same rate: the throughput goals are about
        // saturation (closed model), so they do not apply.
        let goal = goal.filter(|_| !(a.load_model == "open" && b.load_model == "open"));
        Ratio {
            numerator: a.label.clone(),
            denominator: b.label.clone(),
            throughput,
            p50: div(a.p50_ms, b.p50_ms),
            p99: div(a.p99_ms, b.p99_ms),
            goal,
            meets_goal: goal.map(|g| throughput >= g),
        }
    };
    let mut ratios = Vec::new();
    if let Some(mimid) = mimid {
        if let Some(nats) = nats {
            ratios.push(ratio(mimid, nats, Some(GOAL_OVER_JETSTREAM)));
        }
        if let Some(etcd) = etcd {
            ratios.push(ratio(mimid, etcd, Some(GOAL_OVER_ETCD)));
        }
    }
    if let (Some(no_fsync), Some(nats)) = (mimid_no_fsync, nats) {
        ratios.push(ratio(no_fsync, nats, Some(GOAL_OVER_JETSTREAM)));
    }
    let mut warnings = Vec::new();
    if let Some(first) = systems.first() {
        for other in &systems[1..] {
            let shape = |s: &SystemFigures| {
                (
                    s.load_model.clone(),
                    s.concurrency,
                    s.rate.map(f64::to_bits),
                    s.rooms,
                    s.message_bytes,
                )
            };
            if shape(first) != shape(other) {
                warnings.push(format!(
                    "{} ran another load than {}: {} model, concurrency {:?}, rate {:?}, rooms \
                     {:?}, {:?}-byte messages against {} model, concurrency {:?}, rate {:?}, \
                     rooms {:?}, {:?}-byte messages",
                    other.label,
                    first.label,
                    other.load_model,
                    other.concurrency,
                    other.rate,
                    other.rooms,
                    other.message_bytes,
                    first.load_model,
                    first.concurrency,
                    first.rate,
                    first.rooms,
                    first.message_bytes,
                ));
            }
        }
    }
    if !systems.is_empty() && systems.iter().all(|s| s.load_model == "open") {
        warnings.push(
            "open model: every system was offered the same rate, so msg/s match and the \
             throughput goals (about saturation, closed model) do not apply; compare latency \
             and CPU per message"
                .to_string(),
        );
    }
    for system in &systems {
        if system.ops_failed > 0 {
            warnings.push(format!(
                "{}: {} operations failed",
                system.label, system.ops_failed
            ));
        }
        if system.other_processes_s.is_some_and(|s| s > 1.5) {
            warnings.push(format!(
                "{}: other processes used {:.1} CPU-s during the phase: the machine was shared",
                system.label,
                system.other_processes_s.unwrap_or_default()
            ));
        }
    }
    Comparison {
        systems,
        ratios,
        warnings,
    }
}

/// Reads the figures of one report (mimid's scenario report or a peer report).
pub fn figures(label: &str, path: &Path, report: &Value) -> anyhow::Result<SystemFigures> {
    let scenario = report["scenario"]
        .as_str()
        .with_context(|| format!("{}: no scenario", path.display()))?
        .to_string();
    let phase = &report["phases"][0];
    let totals_u64 = |key: &str| {
        phase[key]
            .as_u64()
            .with_context(|| format!("{}: phases[0].{key} missing", path.display()))
    };
    let ms = |key: &str| {
        phase["latency_corrected"][key]
            .as_u64()
            .map(|us| us as f64 / 1000.0)
            .with_context(|| format!("{}: latency_corrected.{key} missing", path.display()))
    };
    let durability = match scenario.as_str() {
        "nats" | "etcd" => report["system"]["durability"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        _ => match report["node"]["fsync"].as_bool() {
            Some(true) => "answer after a quorum commit; each node's Raft log flushed with \
                           sled flush + fdatasync (group commit)"
                .to_string(),
            Some(false) => "answer after a quorum commit, without fsync (--no-fsync)".to_string(),
            None => "unknown".to_string(),
        },
    };
    let delivered = match scenario.as_str() {
        "nats" | "etcd" => phase["delivery"]["delivered"].as_u64(),
        _ => phase["cluster"]["delivery"]["delivered"].as_u64(),
    };
    let config = &report["config"];
    Ok(SystemFigures {
        label: label.to_string(),
        file: path.display().to_string(),
        scenario,
        durability,
        load_model: config["load_model"].as_str().unwrap_or("unknown").into(),
        concurrency: config["concurrency"].as_u64(),
        rate: config["rate"].as_f64(),
        rooms: config["rooms"].as_u64(),
        message_bytes: config["message_bytes"].as_u64(),
        ops_ok: totals_u64("ops_ok")?,
        ops_failed: totals_u64("ops_failed")?,
        throughput_ops_s: phase["throughput_ops_s"]
            .as_f64()
            .with_context(|| format!("{}: throughput_ops_s missing", path.display()))?,
        p50_ms: ms("p50_us")?,
        p99_ms: ms("p99_us")?,
        p999_ms: ms("p999_us")?,
        server_cpu_ms_per_op: phase["cpu"]["server_per_1000_ops_s"].as_f64(),
        other_processes_s: phase["cpu"]["other_processes_s"].as_f64(),
        delivered,
    })
}

impl Comparison {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<18} {:>10} {:>9} {:>9} {:>9} {:>13} {:>10} {:>8}\n",
            "system",
            "msg/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "srv CPU ms/msg",
            "delivered",
            "failed"
        ));
        for s in &self.systems {
            out.push_str(&format!(
                "{:<18} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>13} {:>10} {:>8}\n",
                s.label,
                s.throughput_ops_s,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.server_cpu_ms_per_op
                    .map_or("-".into(), |v| format!("{v:.3}")),
                s.delivered.map_or("-".into(), |d| d.to_string()),
                s.ops_failed,
            ));
        }
        out.push('\n');
        for r in &self.ratios {
            out.push_str(&format!(
                "{} / {}: msg/s {:.2}x{}; p50 {:.2}x, p99 {:.2}x (latency: lower is better)\n",
                r.numerator,
                r.denominator,
                r.throughput,
                match (r.goal, r.meets_goal) {
                    (Some(goal), Some(true)) => format!(" (goal >= {goal}x: met)"),
                    (Some(goal), _) => format!(" (goal >= {goal}x: NOT met)"),
                    _ => String::new(),
                },
                r.p50,
                r.p99,
            ));
        }
        for s in &self.systems {
            out.push_str(&format!("durability, {}: {}\n", s.label, s.durability));
        }
        for warning in &self.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }
}

/// The human-readable table of a commit-floor run.
pub fn floor_table(report: &FloorReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:>6} {:>11} {:>10} {:>10} {:>11} {:>11} {:>12} {:>12} {:>9}\n",
        "size",
        "floor c/s",
        "floor us",
        "merge us",
        "no-store us",
        "mimid c/s",
        "node us/c",
        "raft us/c",
        "mimid/fl"
    ));
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for size in &report.sizes {
        let floor = &size.floor.hub_storage;
        out.push_str(&format!(
            "{:>6} {:>11.0} {:>10.1} {:>10.1} {:>11.1} {:>11} {:>12} {:>12} {:>9}\n",
            size.group_size,
            floor.commits_per_s,
            floor.mean_us,
            floor.merge_us,
            size.floor.no_storage.mean_us,
            size.mimid
                .as_ref()
                .map_or("-".into(), |m| format!("{:.0}", m.commits_per_s)),
            opt(size.mimid.as_ref().and_then(|m| m.server_cpu_us_per_commit)),
            opt(size
                .mimid
                .as_ref()
                .and_then(|m| m.raft_thread_cpu_us_per_commit)),
            size.ratios
                .as_ref()
                .map_or("-".into(), |r| format!("{:.3}", r.throughput)),
        ));
    }
    let fit = &report.scaling.hub_storage;
    out.push_str(&format!(
        "floor cost per Commit ~ {:.1} us + {:.3} us x members (r2 {:.3}); log-log slopes {}; {}\n",
        fit.a_us,
        fit.b_us_per_member,
        fit.r2,
        fit.log_log_slopes
            .iter()
            .map(|s| format!("{}->{}: {:.2}", s.from, s.to, s.slope))
            .collect::<Vec<_>>()
            .join(", "),
        if fit.at_most_linear {
            "at most linear"
        } else {
            "FASTER than linear"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str, throughput: f64, p50_us: u64, p99_us: u64, extra: Value) -> Value {
        let mut report = serde_json::json!({
            "scenario": scenario,
            "config": {"load_model": "closed", "concurrency": 100, "rate": null, "rooms": 100,
                       "message_bytes": 256},
            "phases": [{
                "ops_ok": 1000, "ops_failed": 0, "throughput_ops_s": throughput,
                "latency_corrected": {"p50_us": p50_us, "p99_us": p99_us, "p999_us": p99_us * 2},
                "cpu": {"server_per_1000_ops_s": 0.25, "other_processes_s": 0.1}
            }]
        });
        if let (Some(target), Some(extra)) = (report.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                target.insert(k.clone(), v.clone());
            }
        }
        report
    }

    #[test]
    fn the_table_has_mimid_over_each_peer_with_the_goals() {
        let mimid = report(
            "cluster",
            6000.0,
            10_000,
            20_000,
            serde_json::json!({"node": {"fsync": true}}),
        );
        let nats = report(
            "nats",
            12000.0,
            5_000,
            10_000,
            serde_json::json!({"system": {"durability": "no fsync"}}),
        );
        let etcd = report(
            "etcd",
            1000.0,
            40_000,
            80_000,
            serde_json::json!({"system": {"durability": "fsync"}}),
        );
        let path = Path::new("x.json");
        let systems = vec![
            figures("mimid", path, &mimid).expect("mimid"),
            figures("NATS JetStream", path, &nats).expect("nats"),
            figures("etcd", path, &etcd).expect("etcd"),
        ];
        let comparison = compare(systems);
        assert_eq!(comparison.ratios.len(), 2);
        let over_nats = &comparison.ratios[0];
        assert_eq!(over_nats.throughput, 0.5);
        assert_eq!(over_nats.p50, 2.0);
        assert_eq!(over_nats.meets_goal, Some(false));
        let over_etcd = &comparison.ratios[1];
        assert_eq!(over_etcd.throughput, 6.0);
        assert_eq!(over_etcd.p99, 0.25);
        assert_eq!(over_etcd.meets_goal, Some(true));
        assert!(comparison.warnings.is_empty(), "{:?}", comparison.warnings);
        let table = comparison.table();
        assert!(table.contains("goal >= 1.5x: NOT met"), "{table}");
        assert!(table.contains("goal >= 5x: met"), "{table}");
        assert!(
            table.contains("durability, NATS JetStream: no fsync"),
            "{table}"
        );
    }

    #[test]
    fn a_different_load_or_failures_are_warned_about() {
        let mimid = report("cluster", 6000.0, 10_000, 20_000, serde_json::json!({}));
        let mut etcd = report("etcd", 1000.0, 40_000, 80_000, serde_json::json!({}));
        etcd["config"]["concurrency"] = serde_json::json!(10);
        etcd["phases"][0]["ops_failed"] = serde_json::json!(3);
        let path = Path::new("x.json");
        let comparison = compare(vec![
            figures("mimid", path, &mimid).expect("mimid"),
            figures("etcd", path, &etcd).expect("etcd"),
        ]);
        assert_eq!(comparison.warnings.len(), 2, "{:?}", comparison.warnings);
        assert!(comparison.warnings[0].contains("another load"));
        assert!(comparison.warnings[1].contains("3 operations failed"));
        assert!(figures("x", path, &serde_json::json!({"scenario": "etcd"})).is_err());
    }

    #[test]
    fn under_the_open_model_the_throughput_goals_do_not_apply() {
        let open = |scenario: &str| {
            let mut report = report(scenario, 2000.0, 1_000, 2_000, serde_json::json!({}));
            report["config"]["load_model"] = serde_json::json!("open");
            report["config"]["rate"] = serde_json::json!(2000.0);
            report
        };
        let path = Path::new("x.json");
        let comparison = compare(vec![
            figures(LABEL_MIMID, path, &open("cluster")).expect("mimid"),
            figures(LABEL_NATS, path, &open("nats")).expect("nats"),
        ]);
        assert_eq!(comparison.ratios.len(), 1);
        assert_eq!(comparison.ratios[0].goal, None);
        assert_eq!(comparison.ratios[0].meets_goal, None);
        assert!(
            comparison.warnings[0].contains("open model"),
            "{:?}",
            comparison.warnings
        );
        assert!(!comparison.table().contains("NOT met"));
    }
}
