//! The machine a run happened on, and where the CPU time of this process went, from Linux's
//! `/proc`. Parsing is split from reading so it is tested on fixed text.
//!
//! CPU per thread group is the bench's tool for "what limited the figure": with the node in
//! process, its threads (`mimid-node-rt` for QUIC and the API, `mimid-raft-*` for the Raft
//! driver with sled and fsync, `mimid-actors` and actix arbiters for the rooms, sled's own
//! threads) and the generator's (`bench-client`, where openmls builds the clients' messages
//! and commits) are told apart by thread name. A group near 1 s of CPU per wall-clock second
//! is a saturated single thread.
//!
//! In process, every thread of the generator carries a `bench-` name, so that everything else
//! is the node's: the clients' runtime `bench-client` (its workers and blocking pool), rayon's
//! global pool `bench-rayon` (named by [`name_rayon_pool`] before anything uses it: openmls
//! encrypts and derives a Commit's UpdatePath there, which only clients do, as a hub's
//! `PublicGroup` holds no path secrets) and the main thread `bench-main` (told by its thread id,
//! since the threads it starts inherit its name), which drives the phases. [`CpuUsage::split`]
//! divides a phase's CPU that way.
//!
//! The whole machine's busy time is sampled too, so a run that shared the CPUs with other
//! processes (a build, another benchmark) shows it in `other_processes_s` instead of passing
//! for a slow server.
//!
//! On a system without `/proc` every reading is reported as unknown rather than failing the run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Thread group of the clients' runtime (its workers and blocking threads).
pub const CLIENT_GROUP: &str = "bench-client";
/// Thread group of rayon's global pool, once [`name_rayon_pool`] named it.
pub const RAYON_GROUP: &str = "bench-rayon";
/// Thread group of the process's main thread, whatever its name.
pub const MAIN_GROUP: &str = "bench-main";
/// The generator's thread groups; every other thread of the process is the in-process node's.
pub const GENERATOR_GROUPS: [&str; 3] = [CLIENT_GROUP, RAYON_GROUP, MAIN_GROUP];

/// Names rayon's global pool's threads `bench-rayon-<i>`. Call it first thing in `main`:
/// rayon builds the pool on first use, and its unnamed threads would carry the name of
/// whichever thread first used it (a client's, or the main thread's, which node threads
/// share). Fails if the pool already exists.
pub fn name_rayon_pool() -> Result<(), rayon::ThreadPoolBuildError> {
    rayon_pool_builder().build_global()
}

fn rayon_pool_builder() -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().thread_name(|index| format!("{RAYON_GROUP}-{index}"))
}

/// Linux reports `utime`/`stime` in `/proc/*/stat` in USER_HZ, a fixed ABI constant of 100 on
/// every mainstream architecture (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: u64 = 100;

/// The machine, for the report (no host names, no git state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: Option<u64>,
    pub kernel: String,
    pub os: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
            mem_total_kib: mem_total_kib(&read("/proc/meminfo")),
            kernel: non_empty(read("/proc/sys/kernel/osrelease")),
            os: os_name(&read("/etc/os-release")).unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// CPU time consumed so far, per live thread and for the whole process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// All threads, including those that already exited.
    pub process: Option<Duration>,
    /// The machine: every CPU's busy and stolen time.
    pub machine: Option<MachineCpu>,
    /// Live threads by thread id: their group (thread name without its numeric suffix) and
    /// time on CPU.
    pub threads: BTreeMap<u64, (String, Duration)>,
}

impl CpuSample {
    pub fn take() -> CpuSample {
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| process_cpu(&stat));
        // The main thread's id is the process id.
        let main_tid = u64::from(std::process::id());
        let mut threads = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let path = task.path();
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                let Some(on_cpu) = std::fs::read_to_string(path.join("schedstat"))
                    .ok()
                    .and_then(|s| schedstat_on_cpu(&s))
                else {
                    continue;
                };
                let group = if tid == main_tid {
                    MAIN_GROUP.to_string()
                } else {
                    thread_group(comm.trim())
                };
                threads.insert(tid, (group, on_cpu));
            }
        }
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| machine_cpu(&stat));
        CpuSample {
            process,
            machine,
            threads,
        }
    }

    /// CPU used between `earlier` and `self`, by thread group. Differences are taken per
    /// thread, so threads that exited in between (e.g. idle blocking-pool threads) do not
    /// subtract from their group; threads that started in between count from zero; the time of
    /// threads that exited in between is only in the process total.
    pub fn since(&self, earlier: &CpuSample) -> CpuUsage {
        let mut by_group: BTreeMap<String, Duration> = BTreeMap::new();
        for (tid, (group, now)) in &self.threads {
            let before = earlier
                .threads
                .get(tid)
                .filter(|(earlier_group, _)| earlier_group == group)
                .map_or(Duration::ZERO, |(_, on_cpu)| *on_cpu);
            *by_group.entry(group.clone()).or_default() += now.saturating_sub(before);
        }
        let groups = by_group
            .into_iter()
            .map(|(name, on_cpu)| (name, round3(on_cpu.as_secs_f64())))
            .filter(|(_, seconds)| *seconds > 0.0)
            .collect();
        CpuUsage {
            process_s: seconds_between(self.process, earlier.process),
            other_processes_s: match (self.machine, earlier.machine, self.process, earlier.process)
            {
                (Some(now), Some(before), Some(process_now), Some(process_before)) => {
                    let busy = now.busy.saturating_sub(before.busy);
                    let ours = process_now.saturating_sub(process_before);
                    Some(round3(busy.saturating_sub(ours).as_secs_f64()))
                }
                _ => None,
            },
            steal_s: seconds_between(
                self.machine.map(|m| m.steal),
                earlier.machine.map(|m| m.steal),
            ),
            threads_s: groups,
        }
    }
}

/// CPU seconds used during a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuUsage {
    pub process_s: Option<f64>,
    /// Busy CPU time of everything else on the machine (other processes, the kernel on their
    /// behalf): near zero on a quiet machine.
    pub other_processes_s: Option<f64>,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    pub steal_s: Option<f64>,
    pub threads_s: BTreeMap<String, f64>,
}

impl CpuUsage {
    /// The phase's CPU split between the generator ([`GENERATOR_GROUPS`]) and everything else
    /// in the process (the in-process node's threads), by thread group. Threads that exited
    /// during the phase are in neither (only in `process_s`).
    pub fn split(&self) -> CpuSplit {
        let mut split = CpuSplit::default();
        for (group, seconds) in &self.threads_s {
            if GENERATOR_GROUPS.contains(&group.as_str()) {
                split.generator_s += seconds;
                split.generator_threads.push(group.clone());
            } else {
                split.server_s += seconds;
                split.server_threads.push(group.clone());
            }
        }
        split.generator_s = round3(split.generator_s);
        split.server_s = round3(split.server_s);
        split
    }
}

/// [`CpuUsage::split`]: CPU seconds of the generator and of the rest, and which thread groups
/// each one sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuSplit {
    pub generator_s: f64,
    pub server_s: f64,
    pub generator_threads: Vec<String>,
    pub server_threads: Vec<String>,
}

/// Memory and CPU time of one process (the idle-density scenario's child node), from
/// `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// `utime + stime` so far, in USER_HZ ticks (10 ms).
    pub cpu: Duration,
}

impl ProcessSample {
    /// Reads process `pid`; `None` if it is gone or `/proc` is not there.
    pub fn take(pid: u32) -> Option<ProcessSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(ProcessSample {
            rss_kib: status_kib(&status, "VmRSS")?,
            hwm_kib: status_kib(&status, "VmHWM")?,
            cpu: process_cpu(&stat)?,
        })
    }
}

/// The machine's cumulative busy and stolen CPU time now, from `/proc/stat`.
pub fn machine_cpu_now() -> Option<MachineCpu> {
    machine_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// CPU time of this process so far (`/proc/self/stat`).
pub fn own_cpu_now() -> Option<Duration> {
    process_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:    123456 kB`).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut fields = rest.split_whitespace();
        let value = fields.next()?.parse().ok()?;
        (fields.next() == Some("kB")).then_some(value)
    })
}

/// Cumulative CPU time of the machine, all CPUs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq.
    pub busy: Duration,
    pub steal: Duration,
}

fn seconds_between(now: Option<Duration>, before: Option<Duration>) -> Option<f64> {
    Some(round3(now?.saturating_sub(before?).as_secs_f64()))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn non_empty(text: String) -> String {
    let text = text.trim();
    if text.is_empty() {
        "unknown".into()
    } else {
        text.to_string()
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn os_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim_matches('"').to_string())
    })
}

/// `utime + stime` of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn process_cpu(stat: &str) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After the name: state (3) ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(ticks.checked_mul(1000 / USER_HZ)?))
}

/// The machine's busy and stolen time from the aggregate `cpu` line of `/proc/stat`:
/// `cpu user nice system idle iowait irq softirq steal ...` in USER_HZ.
fn machine_cpu(stat: &str) -> Option<MachineCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied();
    let busy = [0, 1, 2, 5, 6]
        .into_iter()
        .map(field)
        .sum::<Option<u64>>()?;
    let ticks = |t: u64| Duration::from_millis(t.saturating_mul(1000 / USER_HZ));
    Some(MachineCpu {
        busy: ticks(busy),
        steal: ticks(field(7).unwrap_or(0)),
    })
}

/// Time on CPU, the first field of `/proc/<pid>/task/<tid>/schedstat`, in nanoseconds.
fn schedstat_on_cpu(schedstat: &str) -> Option<Duration> {
    let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Groups threads by name: `mimid-raft-1` and `sled-io-3` become `mimid-raft` and `sled-io`,
/// so numbered pool threads add up.
fn thread_group(comm: &str) -> String {
    let trimmed = comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#');
    if trimmed.is_empty() {
        comm.to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_meminfo_and_os_release_are_read() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        let meminfo = "MemTotal:       24592016 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(24_592_016));
        let os_release =
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_name(os_release).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn process_cpu_skips_a_command_name_with_spaces_and_parentheses() {
        let stat = "2707 (a (weird) name) S 2706 2707 2707 0 -1 4194560 6926 60519 0 12 150 250 39 6 20 0 1 0";
        assert_eq!(process_cpu(stat), Some(Duration::from_secs(4)));
        assert_eq!(process_cpu("garbage"), None);
        assert_eq!(process_cpu("1 (x) S 1 2"), None);
    }

    #[test]
    fn proc_stat_gives_the_machines_busy_and_stolen_time() {
        let stat = "cpu  225920 10 59223 277745 8320 5 1715 523 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            machine_cpu(stat),
            Some(MachineCpu {
                busy: Duration::from_millis((225_920 + 10 + 59_223 + 5 + 1_715) * 10),
                steal: Duration::from_millis(5_230),
            })
        );
        assert_eq!(machine_cpu("cpu0 1 2 3\n"), None);
        assert_eq!(machine_cpu("cpu  1 x 3 4 5 6 7 8\n"), None);
    }

    #[test]
    fn status_gives_resident_and_peak_memory_in_kib() {
        let status = "Name:\tmimid\nVmPeak:\t 2000000 kB\nVmHWM:\t  812345 kB\n\
                      VmRSS:\t  654321 kB\nVmRSSX:\t 1 kB\nThreads:\t12\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(654_321));
        assert_eq!(status_kib(status, "VmHWM"), Some(812_345));
        assert_eq!(status_kib(status, "Threads"), None, "not a kB field");
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib("VmRSS:\tmany kB\n", "VmRSS"), None);
    }

    #[test]
    fn our_own_process_can_be_sampled_like_a_child() {
        let sample = ProcessSample::take(std::process::id()).expect("/proc/<pid> is readable");
        assert!(
            sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib,
            "{sample:?}"
        );
        assert!(ProcessSample::take(u32::MAX).is_none(), "no such process");
    }

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(
            schedstat_on_cpu("55315126 77615860 224\n"),
            Some(Duration::from_nanos(55_315_126))
        );
        assert_eq!(schedstat_on_cpu(""), None);
    }

    #[test]
    fn numbered_threads_share_a_group() {
        assert_eq!(thread_group("mimid-raft-1"), "mimid-raft");
        assert_eq!(thread_group("sled-io-12"), "sled-io");
        assert_eq!(thread_group("bench-client"), "bench-client");
        assert_eq!(thread_group("42"), "42");
    }

    #[test]
    fn usage_is_the_difference_of_two_samples() {
        let thread = |group: &str, ms: u64| (group.to_string(), Duration::from_millis(ms));
        let earlier = CpuSample {
            process: Some(Duration::from_secs(1)),
            machine: Some(MachineCpu {
                busy: Duration::from_secs(100),
                steal: Duration::from_secs(1),
            }),
            threads: [
                (1, thread("a", 500)),
                (2, thread("a", 9000)), // exits before the later sample
                (3, thread("idle", 40)),
            ]
            .into(),
        };
        let later = CpuSample {
            process: Some(Duration::from_millis(2500)),
            machine: Some(MachineCpu {
                busy: Duration::from_millis(102_000),
                steal: Duration::from_millis(1_250),
            }),
            threads: [
                (1, thread("a", 700)),
                (3, thread("idle", 40)),
                (4, thread("b", 300)),
                (5, thread("a", 100)),
            ]
            .into(),
        };
        let usage = later.since(&earlier);
        assert_eq!(usage.process_s, Some(1.5));
        assert_eq!(usage.other_processes_s, Some(0.5));
        assert_eq!(usage.steal_s, Some(0.25));
        assert_eq!(usage.threads_s.get("a"), Some(&0.3));
        assert_eq!(usage.threads_s.get("b"), Some(&0.3));
        assert!(!usage.threads_s.contains_key("idle"));
    }

    #[test]
    fn the_generator_is_its_named_threads_and_the_node_everything_else() {
        let usage = CpuUsage {
            process_s: Some(10.0),
            other_processes_s: None,
            steal_s: None,
            threads_s: [
                ("bench-client", 2.0),
                ("bench-rayon", 1.5),
                ("bench-main", 0.25),
                ("mimid-raft", 3.0),
                ("mimid-node-rt", 2.0),
                // An unnamed thread the main thread started (the node's).
                ("mimid-bench", 0.125),
            ]
            .into_iter()
            .map(|(name, seconds)| (name.to_string(), seconds))
            .collect(),
        };
        let split = usage.split();
        assert_eq!(split.generator_s, 3.75);
        assert_eq!(split.server_s, 5.125);
        assert_eq!(
            split.generator_threads,
            ["bench-client", "bench-main", "bench-rayon"]
        );
        assert_eq!(
            split.server_threads,
            ["mimid-bench", "mimid-node-rt", "mimid-raft"]
        );
    }

    #[test]
    fn rayon_threads_are_sampled_as_bench_rayon() {
        let pool = rayon_pool_builder().num_threads(2).build().expect("a pool");
        let tids = pool.broadcast(|_| {
            std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|path| path.file_name()?.to_str()?.parse::<u64>().ok())
        });
        let sample = CpuSample::take();
        for tid in tids {
            let tid = tid.expect("/proc/thread-self names the thread");
            assert_eq!(
                sample.threads.get(&tid).map(|(group, _)| group.as_str()),
                Some(RAYON_GROUP)
            );
        }
    }

    #[test]
    fn the_main_thread_is_its_own_group() {
        let sample = CpuSample::take();
        let main = sample
            .threads
            .get(&u64::from(std::process::id()))
            .expect("the main thread is sampled");
        assert_eq!(main.0, MAIN_GROUP);
    }
}
