//! `mimid-bench`: see `mimid-bench --help` and bench/README.md.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use mimid_bench::cli::{Invocation, OutputArgs, Scenario};
use mimid_bench::density::DensityReport;
use mimid_bench::load::StopReason;
use mimid_bench::run::{run, Report, FORWARDED_ROOM_APPLIED};

fn main() -> ExitCode {
    // Before anything uses rayon (openmls does): its threads are then told apart from the
    // in-process node's in the CPU accounting.
    if let Err(error) = mimid_bench::system::name_rayon_pool() {
        eprintln!("mimid-bench: rayon's pool keeps unnamed threads: {error}");
    }
    let cli = match mimid_bench::cli::parse_invocation() {
        Invocation::Scenario(cli) => cli,
        Invocation::Extra(command) => return mimid_bench::side_by_side::main(command),
    };
    // The node's logs are off unless asked for: they would interleave with the progress lines.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if let Scenario::IdleDensity(args) = &cli.scenario {
        return match mimid_bench::density::run(args)
            .and_then(|report| output_density(&args.output, &report))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("mimid-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = run(&cli.scenario).and_then(|report| {
        output(&cli.scenario, &report)?;
        Ok(report)
    });
    match result {
        // An interrupted run wrote its report, but it is not the run that was asked for.
        Ok(report)
            if report
                .phases
                .iter()
                .any(|p| p.measured.stop_reason == StopReason::Interrupted) =>
        {
            ExitCode::from(130)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mimid-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `report` as JSON to `--json FILE` or stdout.
fn write_json(output: &OutputArgs, report: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    match &output.json {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{json}").context("writing the report")?;
        }
    }
    Ok(())
}

fn output_density(output: &OutputArgs, report: &DensityReport) -> anyhow::Result<()> {
    write_json(output, report)?;
    if let Some(dir) = &output.out_dir {
        let files = mimid_bench::output::write_density(dir, report)?;
        eprintln!("# wrote {} files into {}", files.len(), dir.display());
    }
    let density = &report.density;
    let creation = &report.creation;
    eprintln!(
        "# idle-density: {} rooms; RSS {:.1} MiB ({:.0} bytes/room, {:.0} marginal); {:.0} rooms/GiB ({:.0} marginal); idle CPU {:.2}% of a core (baseline {:.2}%)",
        density.rooms,
        density.rss_mib,
        density.bytes_per_room,
        density.marginal_bytes_per_room,
        density.rooms_per_gib,
        density.marginal_rooms_per_gib,
        density.idle_cpu_percent_of_core,
        density.baseline_cpu_percent_of_core,
    );
    eprintln!(
        "#   creation: {:.1} rooms/s over {:.1} s; node CPU {:.1} s ({:.2} ms/room), bench CPU {:.1} s; peak RSS {:.1} MiB",
        creation.rooms_per_s,
        creation.elapsed_s,
        creation.node_cpu_s,
        creation.node_cpu_ms_per_room,
        creation.generator_cpu_s,
        creation.hwm_after_kib as f64 / 1024.0,
    );
    Ok(())
}

fn output(scenario: &Scenario, report: &Report) -> anyhow::Result<()> {
    write_json(scenario.output(), report)?;
    if let Some(dir) = &scenario.output().out_dir {
        let files = mimid_bench::output::write_run(dir, report, &report.into())?;
        eprintln!("# wrote {} files into {}", files.len(), dir.display());
    }
    for phase in &report.phases {
        let ms = |us: u64| us as f64 / 1000.0;
        let corrected = &phase.measured.totals.latency_corrected;
        let raw = &phase.measured.totals.latency_raw;
        eprintln!(
            "# {}: {} ops/s ({} ok, {} failed, {} late starts); corrected p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms; raw p50 {:.2} ms p99 {:.2} ms",
            phase.name,
            phase.measured.throughput_ops_s,
            phase.measured.totals.ops_ok,
            phase.measured.totals.ops_failed,
            phase.measured.totals.late_starts,
            ms(corrected.p50_us),
            ms(corrected.p99_us),
            ms(corrected.p999_us),
            ms(raw.p50_us),
            ms(raw.p99_us),
        );
        let threads: Vec<String> = phase
            .cpu
            .usage
            .threads_s
            .iter()
            .map(|(name, seconds)| format!("{name} {seconds:.1}"))
            .collect();
        let seconds = |s: Option<f64>| s.map_or("unknown".to_string(), |s| format!("{s:.1}"));
        eprintln!(
            "#   cpu s over {:.1} s: process {} ({}); other processes {}",
            phase.measured.elapsed_s,
            seconds(phase.cpu.usage.process_s),
            threads.join(", "),
            seconds(phase.cpu.usage.other_processes_s),
        );
        if let Some(cluster) = &phase.cluster {
            let nodes: Vec<String> = cluster
                .nodes
                .iter()
                .map(|node| {
                    format!(
                        "node {}: {} shards led, {} forwarded",
                        node.node_id,
                        node.shards_led,
                        node.forwarded
                            .get(FORWARDED_ROOM_APPLIED)
                            .copied()
                            .unwrap_or(0)
                    )
                })
                .collect();
            let delivery = cluster
                .delivery
                .as_ref()
                .map_or("members detached".to_string(), |d| {
                    format!(
                        "{} delivered to {} attached members ({} streams lost{})",
                        d.delivered,
                        d.receivers,
                        d.streams_lost,
                        match (d.lost, d.duplicated, d.out_of_order) {
                            (Some(lost), Some(duplicated), Some(reordered)) => format!(
                                "; {lost} lost, {duplicated} duplicated, {reordered} out of order"
                            ),
                            _ => String::new(),
                        }
                    )
                });
            eprintln!("#   cluster: {}; {delivery}", nodes.join(", "));
        }
        if let Some(split) = &phase.split {
            let windows: Vec<String> = split
                .windows
                .iter()
                .map(|w| {
                    let moved = w
                        .by_operation
                        .get(mimid_bench::scenario::MOVED_MESSAGE)
                        .map_or(String::new(), |op| {
                            format!(
                                " (moved rooms {} ok p50 {:.2} p99 {:.2} ms)",
                                op.ops_ok,
                                ms(op.latency_corrected.p50_us),
                                ms(op.latency_corrected.p99_us)
                            )
                        });
                    format!(
                        "{} {} ok p50 {:.2} p99 {:.2} p99.9 {:.2} ms{moved}",
                        w.name,
                        w.ops_ok,
                        ms(w.latency_corrected.p50_us),
                        ms(w.latency_corrected.p99_us),
                        ms(w.latency_corrected.p999_us)
                    )
                })
                .collect();
            eprintln!(
                "#   split: shard {} -> {}: {} rooms moved, {} failed, call {} s, mean move {} ms; {}",
                split.shard,
                split.to.map_or("-".to_string(), |to| to.to_string()),
                split.rooms_moved,
                split.rooms_failed,
                split.call_s.map_or("-".to_string(), |s| s.to_string()),
                split
                    .moves
                    .mean_move_ms
                    .map_or("-".to_string(), |ms| ms.to_string()),
                windows.join("; ")
            );
            if let Some(error) = &split.error {
                eprintln!("#   split: {error}");
            }
        }
        if let Some(fanout) = &phase.fanout {
            let by_provider: Vec<String> = fanout
                .deliveries_by_provider
                .iter()
                .map(|(domain, n)| format!("{domain} {n}"))
                .collect();
            eprintln!(
                "#   fanout: {} recipients per message, {} deliveries ({} /s){}{}",
                fanout.recipients_per_message,
                fanout.deliveries,
                fanout.deliveries_per_s,
                if by_provider.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_provider.join(", "))
                },
                if fanout.streams_lost > 0 {
                    format!("; {} streams lost", fanout.streams_lost)
                } else {
                    String::new()
                },
            );
        }
        if phase.measured.totals.by_operation.len() > 1 {
            let kinds: Vec<String> = phase
                .measured
                .totals
                .by_operation
                .iter()
                .map(|(name, op)| {
                    format!(
                        "{name} {} ok, p50 {:.2} ms, p99 {:.2} ms",
                        op.ops_ok,
                        ms(op.latency_corrected.p50_us),
                        ms(op.latency_corrected.p99_us)
                    )
                })
                .collect();
            eprintln!("#   by operation: {}", kinds.join("; "));
        }
        if let Some(sizes) = &phase.group_size {
            eprintln!(
                "#   rooms: {} members at the start, {}-{} (mean {}) at the end",
                sizes.start, sizes.end_min, sizes.end_max, sizes.end_mean
            );
        }
    }
    Ok(())
}
