//! A deterministic simulation of room moves at the apply level (ARCHITECTURE.md "Shard
//! splits", `room_move` module docs; STYLE.md §8: seeded, in one thread, faults, invariants
//! checked after every step, after TigerBeetle's VOPR).
//!
//! The world: the four shards of one [`Shards`] (hashed shards 0 and 1, split shards 2 and
//! 3), each driven through its `ShardMachine` with its own log index, and a few rooms (real
//! openmls groups: the creates and application messages are made once per process, so a run
//! is fast). A seeded RNG picks each step:
//!
//! - a client sends its room's next message, by the proposer's rule
//!   (`Proposer::propose_following`): to the shard its router resolves the room to, again at
//!   `to` on `RoomMoved` (caching the pin), kept queued on `RoomMoving`. The router is either
//!   a node holding every shard or a node holding none (its pin cache only); sometimes the
//!   answer of an accepted message is lost and the client sends it again later;
//! - a client acknowledges, or files an abuse report, by the same rule; a shard housekeeps
//!   with no log retention (a frozen room must not be trimmed);
//! - a move coordinator takes one step (freeze → adopt → repin → release) of a move in
//!   flight; a coordinator crashes (its move is forgotten); a resume starts again from the
//!   freeze for a room found frozen (like the hub's resume task, `hub::split`); a new move
//!   starts, of a room to a split shard, from where one of the hub's resolutions puts it (the
//!   router, the shard a split would take it from, the home shard's pin): on another node
//!   than a move of that room already in flight, possibly;
//! - a recent proposal is applied again (Raft retried it after an unknown outcome);
//! - a shard's snapshot is restored into a fresh replica and into this one.
//!
//! Invariants, checked after every step (a failure names the seed and the last steps):
//! every room exists; at most one shard would accept a change of it (hosts it unfrozen); every
//! copy's log is a prefix of the room's history and the changeable copy holds all of it; a
//! frozen copy is what its freeze exported; reports, frank records and the client index go
//! with the room and leave nothing behind; routing (a node holding every shard, and one
//! following tombstones from its cache) reaches a copy; every accepted message took the next
//! seq in the order sent, a resend answers its first seq, and a refused command changed
//! nothing; nor did a release or repin taken already or outrun by the room (a stale one
//! answers Ok), and the home shard's pin never goes back to an older copy. At the end every
//! move is drained (the frozen rooms resumed until none is left, which also finds a move that
//! can never finish), every queued message delivered; then each room is hosted once,
//! unfrozen, with every message once in order, and each shard's snapshot restores to the same
//! bytes and routes every room there. The first seeds run twice and compare a hash of their
//! trace (hidden nondeterminism).
//!
//! What it found: overlapping moves of one room lost it or let two shards change it (an
//! adopt answered Ok over a stale frozen copy, or brought a stale export back over a
//! tombstone) or left it frozen for good (a repin refused once the room had moved on): the
//! generations of `room_move` (module docs, "Generations") fix those. And a late release
//! (a slow coordinator's, a duplicate) took a newer copy frozen for the same target before
//! that target adopted it, losing the room (seeds 842 and 950 of 1000): a release names the
//! generation its move froze now, and so does a repin. Stale releases and repins are
//! proposed like any other step; each must answer Ok and change nothing, and the home
//! shard's pin never goes back to an older copy.
//!
//! `MIMID_MOVE_SIM_SEEDS=N` runs seeds 0..N (default [`DEFAULT_SEEDS`], split over a few
//! threads); `MIMID_MOVE_SIM_SEED=S` replays seed S alone; `MIMID_MOVE_SIM_KEEP_GOING=1` runs
//! every seed and lists the failing ones. The openmls messages are made anew in each process,
//! but no step depends on their bytes: a seed takes the same path in any run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use mimid_cluster::splitmix::SplitMix64;
use mimid_cluster::{ShardId, StateMachine};
use sha2::{Digest, Sha256};

use super::tests::moves::{report, Creator};
use super::{ApplyOutput, Shards, MAX_MOVE_HOPS};
use crate::command::{Command, Stamped, SubmitVerdict};
use crate::ids::{ClientId, RoomId};
use crate::residency::Layout;
use crate::room::log::ItemBody;
use crate::room_move::RoomExport;

const HASHED: u64 = 2;
const SPLIT: u64 = 2;
const SHARDS: u64 = HASHED + SPLIT;
const ROOMS_PER_HOME: usize = 2;
const MESSAGES_PER_ROOM: usize = 24;
const REPORTS_PER_ROOM: usize = 6;
const STEPS: usize = 200;
const DEFAULT_SEEDS: u64 = 200;
/// Seeds run twice to compare their trace hashes (hidden nondeterminism).
const TWICE: u64 = 3;
const MOVES_IN_FLIGHT: usize = 4;
/// Proposals a duplicate is picked from.
const RECENT: usize = 8;
/// Steps shown with a failure.
const TRACE_TAIL: usize = 80;

/// Hashed shards 0 and 1, split shards 2 and 3.
fn layout() -> Layout {
    Layout::new(HASHED, std::iter::empty(), SPLIT).unwrap()
}

/// The simulation's seeded generator (`mimid_cluster::splitmix`: a seed replays forever).
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.0.below(100) < p
    }
}

/// A room's creator's commands, made once per process.
struct RoomFixture {
    room: RoomId,
    client: ClientId,
    home: ShardId,
    create: Command,
    messages: Vec<Command>,
    /// Each message's MLS bytes, and their hashes.
    bytes: Vec<Vec<u8>>,
    hashes: Vec<[u8; 32]>,
}

fn fixtures() -> &'static [RoomFixture] {
    static FIXTURES: OnceLock<Vec<RoomFixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let layout = layout();
        let mut fixtures = Vec::new();
        for home in 0..HASHED {
            let rooms = (0..)
                .map(|n| RoomId::parse(&format!("mimi://a.example/r/sim{n}")).unwrap())
                .filter(|room| layout.home(room.as_bytes()) == home)
                .take(ROOMS_PER_HOME);
            for room in rooms {
                let mut creator = Creator::new(&format!("user{}", fixtures.len()));
                let create = creator.create(&room);
                let messages: Vec<Command> = (0..MESSAGES_PER_ROOM)
                    .map(|n| creator.message(&room, format!("message {n}").as_bytes(), n as u8))
                    .collect();
                let bytes: Vec<Vec<u8>> = messages
                    .iter()
                    .map(|command| match command {
                        Command::AppMessage { message, .. } => message.clone(),
                        _ => unreachable!("messages are application messages"),
                    })
                    .collect();
                let hashes = bytes
                    .iter()
                    .map(|bytes| Sha256::digest(bytes).into())
                    .collect();
                fixtures.push(RoomFixture {
                    room,
                    client: creator.id.clone(),
                    home,
                    create,
                    messages,
                    bytes,
                    hashes,
                });
            }
        }
        fixtures
    })
}

fn message_hash(command: &Command) -> [u8; 32] {
    match command {
        Command::AppMessage { message, .. } => Sha256::digest(message).into(),
        _ => unreachable!("only application messages are hashed"),
    }
}

/// The room a command is about, when it is one the simulation proposes.
fn room_of(command: &Command) -> Option<&RoomId> {
    match command {
        Command::AppMessage { room, .. }
        | Command::Ack { room, .. }
        | Command::RecordAbuseReport { room, .. }
        | Command::FreezeRoom { room, .. }
        | Command::AdoptRoom { room, .. }
        | Command::RepinRoom { room, .. }
        | Command::ReleaseRoom { room, .. } => Some(room),
        _ => None,
    }
}

/// Whether an output says the command was not applied.
fn refused(output: &ApplyOutput) -> bool {
    matches!(
        output,
        ApplyOutput::RoomMoving { .. }
            | ApplyOutput::RoomMoved { .. }
            | ApplyOutput::Rejected(_)
            | ApplyOutput::Submitted(SubmitVerdict::NotAllowed { .. })
            | ApplyOutput::Submitted(SubmitVerdict::EpochTooOld { .. })
            | ApplyOutput::RoomFrozen(Err(_))
            | ApplyOutput::RoomAdopted(Err(_))
            | ApplyOutput::RoomRepinned(Err(_))
            | ApplyOutput::RoomReleased(Err(_))
            | ApplyOutput::AbuseReported(Err(_))
    )
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..4]
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An output for the trace (an export by its size and hash).
fn brief(output: &ApplyOutput) -> String {
    match output {
        ApplyOutput::RoomFrozen(Ok(export)) => {
            format!(
                "RoomFrozen(Ok({} bytes {}))",
                export.len(),
                short_hash(export)
            )
        }
        ApplyOutput::Submitted(SubmitVerdict::Accepted { seq, .. }) => {
            format!("Accepted(seq {seq})")
        }
        other => format!("{other:?}"),
    }
}

/// One room's client and what the simulation knows of the room's history.
struct RoomSim {
    fx: &'static RoomFixture,
    /// The client's next message to send (its queue's head).
    next: usize,
    /// How many of its messages the room's log took (seqs 1..=logged): `next`, or `next + 1`
    /// when the head was taken but its answer lost (or a duplicate of it was taken).
    logged: usize,
    /// Reports the room holds (every `AbuseReported(Ok)`, duplicates included).
    reports: usize,
    reports_sent: usize,
}

#[derive(Debug, Clone)]
enum Step {
    Freeze,
    Adopt(Vec<u8>),
    Repin,
    Release,
}

/// A coordinator's move in flight (`hub::split::Mover::steps`).
struct Move {
    id: u64,
    room: usize,
    from: ShardId,
    to: ShardId,
    step: Step,
    /// The generation of the copy its freeze took (its export's minus one), named by its
    /// repin and release.
    generation: u64,
}

/// A release or repin that can change nothing ([`World::outdated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outdated {
    /// Taken already: answered as the first time, or refused.
    Repeat,
    /// For a copy older than the one the shard has (hosted, left or pinned): answered Ok.
    Stale,
}

/// Counts over all seeds, for the report.
#[derive(Debug, Default)]
struct Stats {
    steps: u64,
    accepted: u64,
    moving_answers: u64,
    moved_answers: u64,
    lost_answers: u64,
    moves_started: u64,
    moves_done: u64,
    moves_refused: BTreeMap<String, u64>,
    crashes: u64,
    resumes: u64,
    duplicates: u64,
    restores: u64,
    /// Releases proposed for a copy the source no longer has (answered Ok, changing nothing).
    stale_releases: u64,
    /// Repins of a copy older than the one the home shard pins (likewise).
    stale_repins: u64,
}

impl Stats {
    fn add(&mut self, other: Stats) {
        self.steps += other.steps;
        self.accepted += other.accepted;
        self.moving_answers += other.moving_answers;
        self.moved_answers += other.moved_answers;
        self.lost_answers += other.lost_answers;
        self.moves_started += other.moves_started;
        self.moves_done += other.moves_done;
        for (reason, count) in other.moves_refused {
            *self.moves_refused.entry(reason).or_default() += count;
        }
        self.crashes += other.crashes;
        self.resumes += other.resumes;
        self.duplicates += other.duplicates;
        self.restores += other.restores;
        self.stale_releases += other.stale_releases;
        self.stale_repins += other.stale_repins;
    }
}

struct World<'s> {
    seed: u64,
    rng: Rng,
    /// Every shard's replica (a node holding them all).
    shards: Shards,
    /// A node holding no shard: it routes by its pin cache alone.
    bare: Shards,
    index: Vec<u64>,
    ts_ms: u64,
    rooms: Vec<RoomSim>,
    moves: Vec<Move>,
    next_move: u64,
    /// Recent proposals.
    recent: VecDeque<(ShardId, Command)>,
    /// The generation of the copy each room's home shard pins, as last checked: it never
    /// goes down.
    pin_generations: Vec<u64>,
    /// Each frozen copy's export, as its freeze answered it.
    exports: BTreeMap<(ShardId, usize), RoomExport>,
    /// What changed since the last check: (shard, room) for a command naming the room, (shard,
    /// None) for a housekeeping or a restore; only copies touched are read in full again.
    touched: BTreeSet<(ShardId, Option<usize>)>,
    /// Message hash → (room, message index).
    by_hash: BTreeMap<[u8; 32], (usize, usize)>,
    trace: VecDeque<String>,
    trace_hash: Sha256,
    stats: &'s mut Stats,
}

impl<'s> World<'s> {
    fn new(seed: u64, stats: &'s mut Stats) -> World<'s> {
        let fixtures = fixtures();
        let shards = Shards::with_layout(layout());
        let mut world = World {
            seed,
            rng: Rng(SplitMix64::new(seed)),
            bare: Shards::with_layout(layout()),
            index: vec![0; SHARDS as usize],
            ts_ms: 1_000_000,
            rooms: fixtures
                .iter()
                .map(|fx| RoomSim {
                    fx,
                    next: 0,
                    logged: 0,
                    reports: 0,
                    reports_sent: 0,
                })
                .collect(),
            moves: Vec::new(),
            next_move: 0,
            recent: VecDeque::new(),
            pin_generations: vec![0; fixtures.len()],
            exports: BTreeMap::new(),
            touched: (0..SHARDS).map(|shard| (shard, None)).collect(),
            by_hash: fixtures
                .iter()
                .enumerate()
                .flat_map(|(r, fx)| {
                    fx.hashes
                        .iter()
                        .enumerate()
                        .map(move |(n, hash)| (*hash, (r, n)))
                })
                .collect(),
            trace: VecDeque::new(),
            trace_hash: Sha256::new(),
            stats,
            shards,
        };
        for fx in fixtures {
            let output = world.apply(fx.home, fx.create.clone());
            if !matches!(output, ApplyOutput::RoomCreated(Ok(()))) {
                world.fail(format!("create of {}: {output:?}", fx.room));
            }
        }
        world
    }

    fn event(&mut self, line: String) {
        self.trace_hash.update(line.as_bytes());
        self.trace_hash.update(b"\n");
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "move_sim seed {seed}: {what}\nreplay: MIMID_MOVE_SIM_SEED={seed} cargo test -p \
             mimid-actors --lib move_sim\nlast steps:\n  {}",
            trace.join("\n  "),
            seed = self.seed,
        );
    }

    fn apply(&mut self, shard: ShardId, command: Command) -> ApplyOutput {
        let r = room_of(&command).map(|room| self.room_index(room));
        self.touched.insert((shard, r));
        self.index[shard as usize] += 1;
        self.ts_ms += 1 + self.rng.below(40) as u64;
        let entry = Stamped {
            ts_ms: self.ts_ms,
            command,
        };
        self.shards
            .machine(shard)
            .apply(self.index[shard as usize], &entry.encode())
    }

    fn room_index(&self, room: &RoomId) -> usize {
        self.rooms
            .iter()
            .position(|sim| &sim.fx.room == room)
            .unwrap_or_else(|| self.fail(format!("unknown room {room}")))
    }

    /// What `shard` keeps of `room` that the simulation's commands may change (its log and
    /// retry cache, its client's cursor, reports, franks, index entry, freeze, tombstone, pin):
    /// a command refused must leave it as it was.
    fn fingerprint(&self, shard: ShardId, r: usize) -> String {
        let fx = self.rooms[r].fx;
        let data = self.shards.get(shard).read();
        let room = &fx.room;
        let state = data.room(room).map(|state| {
            (
                state.last_seq(),
                state.first_retained_seq(),
                state.acked(&fx.client),
                state.remembered_requests(),
                state.epoch(),
            )
        });
        format!(
            "{state:?} {:?} {:?} {:?} {:?} {:?} {} {}",
            data.moving_to(room),
            data.room_moves().moved(room),
            data.room_moves().generation(room),
            data.pin(room),
            data.room_moves().pin_generation(room),
            data.abuse_reports().of_room(room).len(),
            data.rooms_of(&fx.client).any(|indexed| indexed == room),
        ) + &format!("{:?}", data.franks().of_room(room))
    }

    /// Whether `command` is a release or repin that `shard` took already or that its move's
    /// room outran (`room_move` module docs, "Generations"): either changes nothing.
    fn outdated(&self, shard: ShardId, command: &Command) -> Option<Outdated> {
        let data = self.shards.get(shard).read();
        let moves = data.room_moves();
        match command {
            Command::ReleaseRoom {
                room, generation, ..
            } => match moves.moved(room) {
                Some(moved) if moved.generation == *generation => Some(Outdated::Repeat),
                Some(_) => Some(Outdated::Stale),
                None if data.room(room).is_some() && moves.generation(room) != *generation => {
                    Some(Outdated::Stale)
                }
                None => None,
            },
            // The copy the move brought to `to` is of the next generation.
            Command::RepinRoom {
                room, generation, ..
            } if data.pin(room).is_some() => {
                match moves.pin_generation(room).checked_sub(*generation + 1) {
                    Some(0) => Some(Outdated::Repeat),
                    Some(_) => Some(Outdated::Stale),
                    None => None,
                }
            }
            _ => None,
        }
    }

    /// Applies `command` in `shard`: checks that a refusal, a stale release or a stale repin
    /// changed nothing there, and accounts for what was accepted (whoever proposed it: a
    /// duplicate's answer reaches no one).
    fn propose(&mut self, shard: ShardId, command: Command, what: &str) -> ApplyOutput {
        let r = room_of(&command).map(|room| self.room_index(room));
        let before = r.map(|r| self.fingerprint(shard, r));
        let outdated = self.outdated(shard, &command);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((shard, command.clone()));
        let output = self.apply(shard, command.clone());
        self.event(format!(
            "{what} @{shard} -> {}{}",
            brief(&output),
            match outdated {
                Some(Outdated::Stale) => " (stale)",
                Some(Outdated::Repeat) => " (repeat)",
                None => "",
            }
        ));
        match &output {
            ApplyOutput::RoomMoving { .. } => self.stats.moving_answers += 1,
            ApplyOutput::RoomMoved { .. } => self.stats.moved_answers += 1,
            _ => {}
        }
        if outdated == Some(Outdated::Stale) {
            match &output {
                ApplyOutput::RoomReleased(Ok(false)) => self.stats.stale_releases += 1,
                ApplyOutput::RoomRepinned(Ok(())) => self.stats.stale_repins += 1,
                other => self.fail(format!(
                    "{what}: a stale step answered {} (not Ok)",
                    brief(other)
                )),
            }
        }
        if let (Some(r), Some(before)) = (r, before) {
            if (outdated.is_some() || refused(&output)) && self.fingerprint(shard, r) != before {
                self.fail(format!(
                    "{what}: {} ({}) but changed shard {shard}",
                    match outdated {
                        Some(Outdated::Stale) => "stale",
                        Some(Outdated::Repeat) => "a repeat",
                        None => "refused",
                    },
                    brief(&output)
                ));
            }
        }
        match (&command, &output) {
            (
                Command::AppMessage { .. },
                ApplyOutput::Submitted(SubmitVerdict::Accepted { seq, .. }),
            ) => {
                let (r, n) = self.by_hash[&message_hash(&command)];
                let sim = &self.rooms[r];
                if *seq != n as u64 + 1 {
                    self.fail(format!(
                        "{what}: message {n} of room {r} accepted at seq {seq}, not {}: a message \
                         was lost, reordered or taken twice",
                        n + 1
                    ));
                }
                if n == sim.logged && n == sim.next {
                    self.rooms[r].logged += 1;
                    self.stats.accepted += 1;
                } else if n >= sim.logged {
                    self.fail(format!(
                        "{what}: message {n} of room {r} accepted while the client sends {} and \
                         the log holds {}",
                        sim.next, sim.logged
                    ));
                }
            }
            (Command::RecordAbuseReport { .. }, ApplyOutput::AbuseReported(Ok(count))) => {
                let r = r.expect("a report names its room");
                if *count != self.rooms[r].reports + 1 {
                    self.fail(format!(
                        "{what}: the room holds {count} reports, the simulation counted {}",
                        self.rooms[r].reports
                    ));
                }
                self.rooms[r].reports = *count;
            }
            (Command::FreezeRoom { .. }, ApplyOutput::RoomFrozen(Ok(bytes))) => {
                let r = r.expect("a freeze names its room");
                let export = RoomExport::decode(bytes)
                    .unwrap_or_else(|e| self.fail(format!("{what}: its export: {e}")));
                if let Some(earlier) = self.exports.get(&(shard, r)) {
                    if earlier != &export {
                        self.fail(format!(
                            "{what}: a repeated freeze exported another state than the first"
                        ));
                    }
                }
                self.exports.insert((shard, r), export);
            }
            _ => {}
        }
        output
    }

    fn router(&self, bare: bool) -> &Shards {
        if bare {
            &self.bare
        } else {
            &self.shards
        }
    }

    /// The proposer's rule (`Proposer::propose_following`): where the router resolves the
    /// room, then at `to` on each `RoomMoved` (caching the pin). Any other answer is returned.
    fn propose_following(
        &mut self,
        r: usize,
        bare: bool,
        command: Command,
        what: &str,
    ) -> ApplyOutput {
        let room = self.rooms[r].fx.room.clone();
        let mut shard = self.router(bare).room_shard(&room);
        let what = format!("{what} via {}", if bare { "bare" } else { "local" });
        for _ in 0..=MAX_MOVE_HOPS {
            match self.propose(shard, command.clone(), &what) {
                ApplyOutput::RoomMoved { to } => {
                    self.router(bare).remember_pin(&room, to);
                    shard = to;
                }
                ApplyOutput::Rejected(reason) => self.fail(format!(
                    "{what}: shard {shard} knows nothing of room {r} ({reason}): routing led \
                     nowhere"
                )),
                other => return other,
            }
        }
        self.fail(format!(
            "{what}: still moved on after {} hops",
            MAX_MOVE_HOPS + 1
        ))
    }

    /// The client of room `r` sends its next message; its answer is lost with `lose`.
    fn send(&mut self, r: usize, bare: bool, lose: bool) -> ApplyOutput {
        let sim = &self.rooms[r];
        let n = sim.next;
        let command = sim.fx.messages[n].clone();
        let what = format!("room{r} message {n}");
        let output = self.propose_following(r, bare, command, &what);
        match &output {
            ApplyOutput::Submitted(SubmitVerdict::Accepted { .. }) => {
                if lose {
                    self.stats.lost_answers += 1;
                    self.event(format!("room{r} message {n}: its answer is lost"));
                } else {
                    self.rooms[r].next += 1;
                }
            }
            ApplyOutput::RoomMoving { .. } => {}
            other => self.fail(format!("{what}: unexpected answer {}", brief(other))),
        }
        output
    }

    fn client_step(&mut self) {
        let r = self.rng.below(self.rooms.len());
        let bare = self.rng.percent(40);
        match self.rng.below(10) {
            0 => {
                let sim = &self.rooms[r];
                let ack = Command::Ack {
                    room: sim.fx.room.clone(),
                    client: sim.fx.client.clone(),
                    seq: self.rng.below(sim.logged + 1) as u64,
                };
                let output = self.propose_following(r, bare, ack, &format!("room{r} ack"));
                if !matches!(output, ApplyOutput::Acked | ApplyOutput::RoomMoving { .. }) {
                    self.fail(format!("room{r} ack: unexpected answer {}", brief(&output)));
                }
            }
            1 if self.rooms[r].reports_sent < REPORTS_PER_ROOM => {
                self.rooms[r].reports_sent += 1;
                let command = report(&self.rooms[r].fx.room);
                let output = self.propose_following(r, bare, command, &format!("room{r} report"));
                if !matches!(
                    output,
                    ApplyOutput::AbuseReported(Ok(_)) | ApplyOutput::RoomMoving { .. }
                ) {
                    self.fail(format!(
                        "room{r} report: unexpected answer {}",
                        brief(&output)
                    ));
                }
            }
            _ if self.rooms[r].next < MESSAGES_PER_ROOM => {
                let lose = self.rng.percent(10);
                self.send(r, bare, lose);
            }
            _ => {}
        }
    }

    fn housekeep(&mut self) {
        let shard = self.rng.below(SHARDS as usize) as ShardId;
        let command = Command::Housekeeping {
            log_retention_ms: 0,
        };
        let output = self.propose(shard, command, "housekeeping");
        if !matches!(output, ApplyOutput::Housekept) {
            self.fail(format!("housekeeping: {}", brief(&output)));
        }
    }

    /// Where a coordinator on some node would move room `r` from (`Hub::move_room`,
    /// `Hub::split_shard`).
    fn resolve_source(&mut self, r: usize) -> Option<(ShardId, &'static str)> {
        let fx = self.rooms[r].fx;
        match self.rng.below(3) {
            0 => Some((self.shards.room_shard(&fx.room), "router")),
            // A split of the shard that hosts it unfrozen (`Hub::movable_rooms`).
            1 => (0..SHARDS)
                .find(|&shard| {
                    let data = self.shards.get(shard).read();
                    data.room(&fx.room).is_some() && data.moving_to(&fx.room).is_none()
                })
                .map(|shard| (shard, "split")),
            // A node reading the home shard's pin, then following tombstones.
            _ => {
                let pinned = self.shards.get(fx.home).read().pin(&fx.room);
                let mut shard = pinned.unwrap_or(fx.home);
                for _ in 0..MAX_MOVE_HOPS {
                    match self.shards.get(shard).read().moved_to(&fx.room) {
                        Some(to) => shard = to,
                        None => break,
                    }
                }
                Some((shard, "home pin"))
            }
        }
    }

    fn start_move(&mut self) {
        if self.moves.len() >= MOVES_IN_FLIGHT {
            return;
        }
        let r = self.rng.below(self.rooms.len());
        let to = HASHED + self.rng.below(SPLIT as usize) as ShardId;
        let Some((from, how)) = self.resolve_source(r) else {
            return;
        };
        if from == to {
            self.event(format!("no move of room{r}: in shard {to} already ({how})"));
            return;
        }
        self.begin(r, from, to, how);
    }

    fn begin(&mut self, r: usize, from: ShardId, to: ShardId, how: &str) {
        let id = self.next_move;
        self.next_move += 1;
        self.stats.moves_started += 1;
        let others: Vec<u64> = self
            .moves
            .iter()
            .filter(|m| m.room == r)
            .map(|m| m.id)
            .collect();
        self.event(format!(
            "move#{id} of room{r} {from}->{to} begins ({how}; other moves of it in flight: {others:?})"
        ));
        self.moves.push(Move {
            id,
            room: r,
            from,
            to,
            step: Step::Freeze,
            generation: 0,
        });
    }

    fn end_move(&mut self, i: usize, refusal: Option<String>) {
        let mv = self.moves.remove(i);
        match refusal {
            None => {
                self.stats.moves_done += 1;
                self.event(format!("move#{} done", mv.id));
            }
            Some(reason) => {
                *self.stats.moves_refused.entry(reason.clone()).or_default() += 1;
                self.event(format!("move#{} ends: {reason}", mv.id));
            }
        }
    }

    /// One step of move `i` (`hub::split::Mover::steps`); a refusal ends the move.
    fn advance(&mut self, i: usize) {
        let Move {
            id,
            room: r,
            from,
            to,
            ref step,
            generation,
        } = self.moves[i];
        let step = step.clone();
        let fx = self.rooms[r].fx;
        let room = fx.room.clone();
        let label = |name: &str| format!("move#{id} {name} room{r} {from}->{to}");
        match step {
            Step::Freeze => {
                let what = label("freeze");
                match self.propose(from, Command::FreezeRoom { room, to }, &what) {
                    ApplyOutput::RoomFrozen(Ok(export)) => {
                        // Like the hub: the generation of the copy frozen, from the export.
                        self.moves[i].generation = self.exports[&(from, r)].generation - 1;
                        self.moves[i].step = Step::Adopt(export);
                    }
                    ApplyOutput::RoomFrozen(Err(refusal)) => {
                        self.end_move(i, Some(format!("freeze: {refusal:?}")))
                    }
                    other => self.fail(format!("{what}: {}", brief(&other))),
                }
            }
            Step::Adopt(export) => {
                let what = label("adopt");
                let adopt = Command::AdoptRoom { room, from, export };
                match self.propose(to, adopt, &what) {
                    ApplyOutput::RoomAdopted(Ok(())) => self.moves[i].step = Step::Repin,
                    ApplyOutput::RoomAdopted(Err(refusal)) => {
                        self.end_move(i, Some(format!("adopt: {refusal:?}")))
                    }
                    other => self.fail(format!("{what}: {}", brief(&other))),
                }
            }
            Step::Repin => {
                let what = label("repin");
                let repin = Command::RepinRoom {
                    room: room.clone(),
                    from,
                    to,
                    generation,
                };
                match self.propose(fx.home, repin, &what) {
                    ApplyOutput::RoomRepinned(Ok(())) => {
                        // Like the hub: routers on the coordinator's node go to the target.
                        self.shards.remember_pin(&room, to);
                        self.moves[i].step = Step::Release;
                    }
                    ApplyOutput::RoomRepinned(Err(refusal)) => {
                        self.end_move(i, Some(format!("repin: {refusal:?}")))
                    }
                    other => self.fail(format!("{what}: {}", brief(&other))),
                }
            }
            Step::Release => {
                let what = label("release");
                let release = Command::ReleaseRoom {
                    room,
                    to,
                    generation,
                };
                match self.propose(from, release, &what) {
                    ApplyOutput::RoomReleased(Ok(_)) => self.end_move(i, None),
                    ApplyOutput::RoomReleased(Err(refusal)) => {
                        self.end_move(i, Some(format!("release: {refusal:?}")))
                    }
                    other => self.fail(format!("{what}: {}", brief(&other))),
                }
            }
        }
    }

    /// Every frozen room: (shard, room, target).
    fn frozen(&self) -> Vec<(ShardId, usize, ShardId)> {
        let mut frozen = Vec::new();
        for shard in 0..SHARDS {
            let data = self.shards.get(shard).read();
            for (room, to) in data.frozen_rooms() {
                frozen.push((shard, self.room_index(room), to));
            }
        }
        frozen
    }

    /// The hub's resume task: a move frozen in a shard starts again from its freeze.
    fn resume(&mut self) {
        let frozen = self.frozen();
        if frozen.is_empty() || self.moves.len() >= MOVES_IN_FLIGHT {
            return;
        }
        let (shard, r, to) = frozen[self.rng.below(frozen.len())];
        self.stats.resumes += 1;
        self.begin(r, shard, to, "resume");
    }

    fn crash(&mut self) {
        if self.moves.is_empty() {
            return;
        }
        let i = self.rng.below(self.moves.len());
        let mv = self.moves.remove(i);
        self.stats.crashes += 1;
        self.event(format!("move#{} forgotten: its coordinator crashed", mv.id));
    }

    fn duplicate(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let (shard, command) = self.recent[self.rng.below(self.recent.len())].clone();
        self.stats.duplicates += 1;
        self.propose(shard, command, "duplicate");
    }

    /// A replica restarts from a snapshot: a fresh one reproduces the bytes and the client
    /// index, then this one is restored from it.
    fn restore(&mut self) {
        let shard = self.rng.below(SHARDS as usize) as ShardId;
        let bytes = self.shards.machine(shard).snapshot();
        let index = self.shards.get(shard).read().client_rooms.clone();
        let fresh = Shards::with_layout(layout());
        let mut machine = fresh.machine(shard);
        if let Err(e) = machine.restore(&bytes) {
            self.fail(format!("restore of shard {shard}: {e}"));
        }
        if machine.snapshot() != bytes {
            self.fail(format!(
                "shard {shard}: a restored replica snapshots other bytes"
            ));
        }
        if fresh.get(shard).read().client_rooms != index {
            self.fail(format!(
                "shard {shard}: a restored replica indexes other rooms"
            ));
        }
        if let Err(e) = self.shards.machine(shard).restore(&bytes) {
            self.fail(format!("restore of shard {shard} in place: {e}"));
        }
        self.touched.insert((shard, None));
        self.stats.restores += 1;
        self.event(format!(
            "shard {shard} restored from its snapshot ({} bytes)",
            bytes.len()
        ));
    }

    fn step(&mut self) {
        self.stats.steps += 1;
        match self.rng.below(100) {
            0..=39 => self.client_step(),
            40..=42 => self.housekeep(),
            43..=67 => {
                if !self.moves.is_empty() {
                    let i = self.rng.below(self.moves.len());
                    self.advance(i);
                }
            }
            68..=71 => self.crash(),
            72..=76 => self.resume(),
            77..=84 => self.duplicate(),
            85..=87 => self.restore(),
            _ => self.start_move(),
        }
        self.check();
    }

    /// The invariants (module docs), after every step.
    fn check(&mut self) {
        self.exports.retain(|&(shard, r), _| {
            let room = &fixtures()[r].room;
            self.shards.get(shard).read().moving_to(room).is_some()
        });
        for r in 0..self.rooms.len() {
            self.check_room(r);
            let fx = self.rooms[r].fx;
            let pinned = self
                .shards
                .get(fx.home)
                .read()
                .room_moves()
                .pin_generation(&fx.room);
            if pinned < self.pin_generations[r] {
                self.fail(format!(
                    "room{r}'s pin went back from generation {} to {pinned}",
                    self.pin_generations[r]
                ));
            }
            self.pin_generations[r] = pinned;
        }
        self.touched.clear();
    }

    fn check_room(&self, r: usize) {
        let sim = &self.rooms[r];
        let fx = sim.fx;
        let room = &fx.room;
        // (shard, frozen for, last seq, reports)
        let mut copies: Vec<(ShardId, Option<ShardId>, u64, usize)> = Vec::new();
        for shard in 0..SHARDS {
            let touched =
                self.touched.contains(&(shard, None)) || self.touched.contains(&(shard, Some(r)));
            let data = self.shards.get(shard).read();
            let indexed = data.rooms_of(&fx.client).any(|indexed| indexed == room);
            let franks = data.franks().of_room(room);
            let reports = data.abuse_reports().of_room(room);
            let Some(state) = data.room(room) else {
                if indexed || !franks.is_empty() || !reports.is_empty() {
                    self.fail(format!(
                        "shard {shard} does not host room{r} but keeps its client index ({indexed}), \
                         {} frank records, {} reports",
                        franks.len(),
                        reports.len()
                    ));
                }
                continue;
            };
            if let Some(to) = data.moved_to(room) {
                self.fail(format!(
                    "shard {shard} hosts room{r} and keeps a tombstone to {to}"
                ));
            }
            if !indexed {
                self.fail(format!(
                    "shard {shard} hosts room{r} but does not index its client"
                ));
            }
            let last = state.last_seq();
            if last > sim.logged as u64 {
                self.fail(format!(
                    "shard {shard}'s room{r} holds seq {last}, the room took {} messages",
                    sim.logged
                ));
            }
            for item in state.items_after(0).iter().filter(|_| touched) {
                let ItemBody::Application { message } = &item.body else {
                    self.fail(format!(
                        "shard {shard}'s room{r}: seq {} is no message",
                        item.seq
                    ));
                };
                let n = item.seq as usize - 1;
                if message != &fx.bytes[n] {
                    self.fail(format!(
                        "shard {shard}'s room{r}: seq {} holds another message than message {n}",
                        item.seq
                    ));
                }
                if !franks.contains_key(&item.seq) {
                    self.fail(format!(
                        "shard {shard}'s room{r}: no frank record of seq {}",
                        item.seq
                    ));
                }
            }
            let first = state.first_retained_seq();
            if let Some(stray) = franks.keys().find(|&&seq| seq < first || seq > last) {
                self.fail(format!(
                    "shard {shard}'s room{r}: a frank record of seq {stray} outside {first}..={last}"
                ));
            }
            let frozen = data.moving_to(room);
            match frozen {
                None => {
                    if last != sim.logged as u64 || reports.len() != sim.reports {
                        self.fail(format!(
                            "shard {shard} would change room{r}, but holds {last} of its {} messages \
                             and {} of its {} reports",
                            sim.logged,
                            reports.len(),
                            sim.reports
                        ));
                    }
                }
                Some(to) => {
                    let Some(export) = self.exports.get(&(shard, r)) else {
                        self.fail(format!("shard {shard} froze room{r} for {to} unseen"));
                    };
                    let changed = export.reports != reports
                        || export.franks != franks
                        || touched && export.state != state.to_snapshot();
                    if changed {
                        self.fail(format!(
                            "shard {shard} changed room{r} while frozen for {to}: it is no longer \
                             what its freeze exported"
                        ));
                    }
                }
            }
            copies.push((shard, frozen, last, reports.len()));
        }
        if copies.is_empty() {
            self.fail(format!("room{r} is hosted nowhere: lost"));
        }
        let changeable: Vec<ShardId> = copies
            .iter()
            .filter(|copy| copy.1.is_none())
            .map(|copy| copy.0)
            .collect();
        if changeable.len() > 1 {
            self.fail(format!(
                "room{r} may change in shards {changeable:?} at once"
            ));
        }
        let newest = copies.iter().map(|copy| copy.2).max().unwrap_or(0);
        let most_reports = copies.iter().map(|copy| copy.3).max().unwrap_or(0);
        if newest != sim.logged as u64 || most_reports != sim.reports {
            self.fail(format!(
                "no copy of room{r} holds all it took: {newest} of {} messages, {most_reports} of \
                 {} reports (copies: {copies:?})",
                sim.logged, sim.reports
            ));
        }
        let hosts = |shard: ShardId| copies.iter().any(|copy| copy.0 == shard);
        let routed = self.shards.room_shard(room);
        if !hosts(routed) {
            self.fail(format!(
                "a node holding every shard routes room{r} to shard {routed}, which does not host \
                 it (copies: {copies:?})"
            ));
        }
        let mut shard = self.bare.room_shard(room);
        let start = shard;
        for _ in 0..=SHARDS {
            if hosts(shard) {
                break;
            }
            match self.shards.get(shard).read().moved_to(room) {
                Some(to) => shard = to,
                None => self.fail(format!(
                    "a node routing room{r} by its cache to shard {start} finds no tombstone in \
                     shard {shard} (copies: {copies:?})"
                )),
            }
        }
        if !hosts(shard) {
            self.fail(format!(
                "room{r}'s tombstones from shard {start} go round in a loop"
            ));
        }
    }

    /// No more faults: the coordinators in flight finish, every frozen move is resumed until
    /// none is left, every queued message is sent.
    fn drain(&mut self) {
        self.event("drain".into());
        while !self.moves.is_empty() {
            self.advance(0);
            self.check();
        }
        for _round in 0..2 * SHARDS * self.rooms.len() as u64 {
            let Some(&(shard, r, to)) = self.frozen().first() else {
                break;
            };
            self.begin(r, shard, to, "drain");
            while !self.moves.is_empty() {
                self.advance(0);
                self.check();
            }
        }
        let frozen = self.frozen();
        if !frozen.is_empty() {
            self.fail(format!(
                "moves stuck frozen after draining: {frozen:?} (shard, room, to)"
            ));
        }
        for r in 0..self.rooms.len() {
            while self.rooms[r].next < MESSAGES_PER_ROOM {
                let bare = self.rng.percent(40);
                if let ApplyOutput::RoomMoving { to } = self.send(r, bare, false) {
                    self.fail(format!("room{r} is moving to {to} with no move left"));
                }
            }
        }
        self.check();
    }

    /// After the drain: each room hosted once, unfrozen, with all its messages in order; each
    /// shard's snapshot restores to the same bytes and routes every room to its host.
    fn check_end(&mut self) {
        let fresh = Shards::with_layout(layout());
        for shard in 0..SHARDS {
            let bytes = self.shards.machine(shard).snapshot();
            let mut machine = fresh.machine(shard);
            if let Err(e) = machine.restore(&bytes) {
                self.fail(format!("restore of shard {shard}: {e}"));
            }
            if machine.snapshot() != bytes {
                self.fail(format!("shard {shard}: its restored snapshot differs"));
            }
            self.event(format!(
                "end: shard {shard} snapshot {}",
                short_hash(&bytes)
            ));
        }
        for (r, sim) in self.rooms.iter().enumerate() {
            let fx = sim.fx;
            let hosts: Vec<ShardId> = (0..SHARDS)
                .filter(|&shard| self.shards.get(shard).read().room(&fx.room).is_some())
                .collect();
            let [host] = hosts[..] else {
                self.fail(format!("room{r} ends hosted in shards {hosts:?}"));
            };
            if sim.logged != MESSAGES_PER_ROOM || sim.next != MESSAGES_PER_ROOM {
                self.fail(format!("room{r} took {} of its messages", sim.logged));
            }
            let routed = [self.shards.room_shard(&fx.room), fresh.room_shard(&fx.room)];
            if routed != [host, host] {
                self.fail(format!(
                    "room{r} is in shard {host}; routing (this node, a restored one): {routed:?}"
                ));
            }
            if fresh.rooms_of(&fx.client) != vec![fx.room.clone()] {
                self.fail(format!(
                    "room{r}'s client is indexed {:?}",
                    fresh.rooms_of(&fx.client)
                ));
            }
        }
    }
}

/// Runs `seed`; returns its trace hash.
fn run(seed: u64, stats: &mut Stats) -> [u8; 32] {
    let mut world = World::new(seed, stats);
    world.check();
    for _ in 0..STEPS {
        world.step();
    }
    world.drain();
    world.check_end();
    world.trace_hash.finalize().into()
}

fn seeds() -> std::ops::Range<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|value| {
            value
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"))
        })
    };
    if let Some(seed) = var("MIMID_MOVE_SIM_SEED") {
        return seed..seed + 1;
    }
    0..var("MIMID_MOVE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)
}

/// Runs `seeds` on a few threads (each seed alone is deterministic); with `keep_going`, a
/// failing seed is listed (its first line) and the others still run.
fn run_all(seeds: std::ops::Range<u64>, keep_going: bool) -> (Stats, Vec<(u64, String)>) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let results: Vec<(Stats, Vec<(u64, String)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    let mut stats = Stats::default();
                    let mut failed = Vec::new();
                    for seed in seeds
                        .clone()
                        .skip(worker as usize)
                        .step_by(workers as usize)
                    {
                        let run_seed = |stats: &mut Stats| {
                            let hash = run(seed, stats);
                            if seed < seeds.start + TWICE {
                                let again = run(seed, &mut Stats::default());
                                assert_eq!(
                                    hash, again,
                                    "move_sim seed {seed}: a second run took another path"
                                );
                            }
                        };
                        if !keep_going {
                            run_seed(&mut stats);
                            continue;
                        }
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                run_seed(&mut stats)
                            }));
                        if let Err(panic) = outcome {
                            let message = panic
                                .downcast_ref::<String>()
                                .map_or("(no message)", String::as_str);
                            failed.push((seed, message.lines().next().unwrap_or("").to_owned()));
                        }
                    }
                    (stats, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut stats = Stats::default();
    let mut failed = Vec::new();
    for (part, part_failed) in results {
        stats.add(part);
        failed.extend(part_failed);
    }
    failed.sort();
    (stats, failed)
}

/// ARCHITECTURE.md "Shard splits": under coordinator crashes, resumes, concurrent moves of a
/// room, duplicated proposals, lost answers and snapshot restores, no room is lost or
/// changeable in two shards, no accepted message is lost, reordered or taken twice, and every
/// move can be finished. `MIMID_MOVE_SIM_KEEP_GOING=1` runs every seed and lists the failing
/// ones.
#[test]
fn room_moves_keep_every_room_whole_under_faults() {
    let seeds = seeds();
    println!("move_sim: seeds {seeds:?}");
    let started = Instant::now();
    fixtures();
    let keep_going = std::env::var_os("MIMID_MOVE_SIM_KEEP_GOING").is_some();
    if keep_going {
        // Each failure is listed below, without its backtrace.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let (stats, failed) = run_all(seeds.clone(), keep_going);
    if keep_going {
        let _ = std::panic::take_hook();
    }
    println!(
        "move_sim: {} seeds in {:?}: {stats:#?}",
        seeds.end - seeds.start,
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|(_, line)| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stats.moves_done > 0 && stats.moving_answers > 0 && stats.moved_answers > 0);
}
