//! mimid-bench: the load generator for mimid. It drives a provider with real openmls clients
//! through the real HTTP/3 client API (`mimid_node::client::MimiClient`) and reports
//! throughput and latency the way load testers expect (ecosystem.md): an open model with
//! coordinated-omission-corrected latency or a closed model, HdrHistograms, one line per
//! second, a JSON summary.
//!
//! Module map: `cli` (options), `run` (one invocation: provider, phases, report), `provider`
//! (in-process node or target, two in-process providers, or one provider on several
//! in-process nodes), `scenario` (room set-up and the clients' operations), `cross` (the
//! cross-provider scenario's pairs of clients), `cluster` (the cluster scenario's senders and
//! attached members), `split` (the cluster scenario's shard split under load), `density` (the
//! idle-density scenario: a `mimid` child process, rooms created, memory and idle CPU from
//! `/proc`), `load`
//! (the timed phase: workers, ticker), `schedule` and `stats` (sans-IO timetable and
//! recorder), `system` (machine and CPU accounting from `/proc`). The other scenarios: `group`
//! (dm and small-rooms: every member attached, taking turns), `fanout` (large-room-fanout:
//! 1,000+ members over several providers), `churn` (commit-churn: adds, removes, updates),
//! `join` (join-storm: external commits), with `light` (members without an MLS group, for
//! large rooms and pregenerated KeyPackages). Output: `progress` (per-second lines and bars on
//! stderr), `output` (`--out-dir`: JSON, CSV, HdrHistogram interval logs, PNG) with `plot`.
//! Beside the scenarios (`side_by_side`): the peers `nats` and `etcd` run as child processes
//! under the same load engine (`peer`: their options, processes and report), `compare` (the
//! ratio table) and `floor` (commit-floor: mimid's Commits against the hub's openmls floor).

pub mod churn;
pub mod cli;
pub mod cluster;
pub mod cross;
pub mod density;
pub mod etcd;
pub mod fanout;
pub mod floor;
pub mod group;
pub mod join;
pub mod light;
pub mod load;
pub mod nats;
pub mod output;
pub mod peer;
pub mod plot;
pub mod progress;
pub mod provider;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod side_by_side;
pub mod split;
pub mod stats;
pub mod system;
