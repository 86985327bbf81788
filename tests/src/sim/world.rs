//! The simulation loop: one queue of timed events, handled one at a time in (time, order)
//! order, so the seed alone decides what happens (STYLE.md P2, §8).
//!
//! Nodes 0-2 are the hub's original replicas (raft ids 1-3), nodes 3-5 the follower provider's
//! (raft ids 4-6, a group of their own); node 6 (raft id 7) is the hub's spare and node 7 (raft
//! id 8) the follower's, started empty when the operator adds them (`membership`). One network
//! joins all eight.
//!
//! Two phases. During the fault phase (`SimConfig::fault_ms`) clients act and faults are
//! injected at random: crashes of either provider's replicas (restarted later), partitions
//! inside a provider and between the providers (healed later), commit storms, per-message
//! drops, duplicates and delays at rates drawn per seed, and in each group one membership plan
//! (a spare added and promoted, an original voter removed and its data deleted). Then
//! everything heals: partitions go, crashed replicas restart, the network stops losing
//! messages, clients and the operator finish what they started, and every member probes
//! liveness with one more message. The run ends when both providers' replicas converged, the
//! follower mirrors everything the hub has for it, the membership plans finished and the
//! probes succeeded, or at the settle deadline (a violation).

mod clients;
mod fanout;
mod membership;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use mimid_actors::command::Command;
use mimid_actors::ids::RoomId;
use mimid_actors::room::fanout::FanoutLimits;
use mimid_actors::room::log::LogItem;
use mimid_actors::shard::ApplyOutput;
use openmls::prelude::Lifetime;
use raft::eraftpb::{ConfState, Message, MessageType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sim::checker::{Checker, ViolationKind};
use crate::sim::network::{Network, Rates, Route};
use crate::sim::replica::{AdminId, Answer, Outbox, RaftSettings, Replica, RequestId};
use crate::sim::trace::{Event, Trace};
use crate::sim::{
    Coverage, FaultCounts, RequestCounts, SimConfig, SimReport, LEAF_LIFETIME_S, SIM_EPOCH_MS,
};

use self::clients::{Actor, Busy, Probe, Step, CLIENTS, CREATOR};
use self::fanout::{HubFanout, NotifyArrival, NotifyId, NotifySent, NotifyStatus};
use self::membership::{AdminRecord, AdminRequest, LostEntries, Plan, ORIGINAL_VOTERS};

pub struct World<'c> {
    config: &'c SimConfig,
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    /// Every node: the hub's replicas, then the follower's.
    replicas: Vec<Replica>,
    /// Bumped by every crash, so a sync scheduled before it is ignored.
    incarnations: Vec<u64>,
    failed: Vec<bool>,
    /// Crash instead of completing the next sync (power loss with a write in flight).
    crash_on_sync: Vec<bool>,
    /// Per replica: seq up to which its room log (on the follower: its mirror, local seqs) was
    /// compared with the reference.
    checked: Vec<u64>,
    diverged: Vec<bool>,
    /// Per replica: offset of its clock from the simulated clock, stamped into entries.
    skew_ms: Vec<i64>,
    network: Network,
    partitions: BTreeMap<u64, Vec<(usize, usize)>>,
    next_partition: u64,
    fault_interval_ms: u64,
    actors: Vec<Actor>,
    script: VecDeque<(Step, u64)>,
    requests: BTreeMap<RequestId, RequestRecord>,
    next_request: RequestId,
    checker: Checker,
    trace: Trace,
    faults: FaultCounts,
    counts: RequestCounts,
    coverage: Coverage,
    settling: bool,
    done: bool,
    room: RoomId,
    /// Per hub replica: its fan-out while it leads.
    fanouts: Vec<Option<HubFanout>>,
    next_generation: u64,
    limits: FanoutLimits,
    notifies: BTreeMap<NotifyId, NotifySent>,
    next_notify: NotifyId,
    /// Follower-side requests made of notify arrivals.
    notify_requests: BTreeMap<RequestId, NotifyArrival>,
    /// Hub-side requests recording fan-out cursors.
    cursor_records: BTreeSet<RequestId>,
    /// The follower replica the hub believes leads (node index).
    follower_guess: usize,
    /// Not running on purpose, never restarted: a spare before the operator starts it, a
    /// removed replica once its data is deleted.
    dormant: Vec<bool>,
    /// Per provider (0: the hub's group, 1: the follower's): the latest configuration any
    /// replica applied, with the index of its conf change (0: the bootstrap one).
    configs: Vec<(u64, ConfState)>,
    /// Per provider: entries whose apply output was acknowledged, (index, term), audited.
    acked_entries: Vec<Vec<(u64, u64)>>,
    lost_entries: LostEntries,
    /// Per provider: the operator's membership plan.
    plans: Vec<Plan>,
    admin_requests: BTreeMap<AdminId, AdminRecord>,
    next_admin: AdminId,
}

struct Scheduled {
    at: u64,
    order: u64,
    event: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

enum Ev {
    Tick(usize),
    /// Boxed: events are moved around the queue's heap, and a Raft message is most of one.
    Deliver(usize, Box<Message>),
    Synced(usize, u64),
    RequestArrives(usize, RequestId),
    ReadArrives {
        node: usize,
        client: usize,
        after: u64,
    },
    AnswerArrives(RequestId, Answer),
    ReadReturns(usize, usize, Option<Vec<LogItem>>),
    Wake(usize, u64),
    /// The transport tells replica `.0` whether its snapshot reached replica `.1`.
    SnapshotReport(usize, usize, bool),
    /// A notify reaches follower replica `.0`.
    NotifyArrives(usize, NotifyId),
    /// The follower's answer to a notify reaches the hub replica that sent it.
    NotifyAnswer(NotifyId, NotifyStatus),
    /// The hub gives up waiting for a notify's answer.
    NotifyTimeout(NotifyId),
    /// The backoff after a failed notify of hub replica `.0`'s fan-out `.1` ended.
    FanoutRetry(usize, u64),
    /// Hub replica `.0`'s fan-out `.1` records acknowledged cursors through Raft.
    RecordCursors(usize, u64),
    /// The operator's turn for provider `.0`'s group (`membership`).
    Operator(usize),
    /// A membership request reaches a replica.
    AdminArrives {
        node: usize,
        id: AdminId,
        request: AdminRequest,
    },
    Fault,
    Restart(usize),
    HealPartition(u64),
    EndFaults,
    Deadline,
}

struct RequestRecord {
    client: usize,
    /// In flight to the replica until it arrives there.
    command: Option<Command>,
    answered: bool,
}

impl<'c> World<'c> {
    pub fn new(seed: u64, config: &'c SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // FoundationDB-style knobs: each seed gets its own weather.
        let rates = Rates {
            drop_per_mille: pick(&mut rng, &[0, 10, 50, 150]),
            duplicate_per_mille: pick(&mut rng, &[0, 10, 50]),
            slow_per_mille: pick(&mut rng, &[0, 20, 100]),
        };
        let settings = RaftSettings {
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_interval: pick(&mut rng, &[4, 16, 64]),
            inbox_capacity: 256,
        };
        let fault_interval_ms = pick(&mut rng, &[1_000, 3_000, 8_000]);
        let limits = FanoutLimits {
            batch_items: pick(&mut rng, &[1, 3, 16]),
            retry_initial_ms: pick(&mut rng, &[50, 200]),
            retry_max_ms: pick(&mut rng, &[1_000, 4_000]),
        };
        let replicas = (0..NODES)
            .map(|node| {
                let group = group_of(node);
                let id = node as u64 + 1;
                if is_spare(node) {
                    return Replica::joining(id, settings.clone(), config.bug);
                }
                let voters: Vec<u64> = group[..ORIGINAL_VOTERS]
                    .iter()
                    .map(|&other| other as u64 + 1)
                    .collect();
                Replica::new(id, &voters, settings.clone(), config.bug)
            })
            .collect();
        let skew_ms = (0..NODES).map(|_| rng.gen_range(-1_500..=1_500)).collect();
        let lifetime = Lifetime::init(
            config.leaf_not_before_s,
            config.leaf_not_before_s + LEAF_LIFETIME_S,
        );
        let actors = CLIENTS
            .iter()
            .map(|uri| {
                let mut client_seed = [0; 32];
                rng.fill(&mut client_seed);
                let leader_guess = HUB_NODES[rng.gen_range(0..REPLICAS)];
                Actor::new(
                    uri,
                    client_seed,
                    lifetime,
                    config.actions_per_client,
                    leader_guess,
                )
            })
            .collect();
        let fault_ms = config.fault_ms;
        let mut later = [
            (
                Step::AddJoiner,
                rng.gen_range(fault_ms / 5..=fault_ms * 3 / 5),
            ),
            (
                Step::RemoveVictim,
                rng.gen_range(fault_ms / 4..=fault_ms * 4 / 5),
            ),
        ];
        later.sort_by_key(|(_, at)| *at);
        let script = [(Step::Create, 0), (Step::AddFirst, 0)]
            .into_iter()
            .chain(later)
            .collect();
        let plans: Vec<Plan> = (0..PROVIDERS)
            .map(|provider| Plan::draw(&mut rng, provider, fault_ms))
            .collect();
        let configs = (0..PROVIDERS)
            .map(|provider| {
                let voters = group_nodes(provider)[..ORIGINAL_VOTERS]
                    .iter()
                    .map(|&node| node as u64 + 1)
                    .collect::<Vec<u64>>();
                (0, ConfState::from((voters, vec![])))
            })
            .collect();
        let mut world = World {
            config,
            seed,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            next_order: 0,
            replicas,
            incarnations: vec![0; NODES],
            failed: vec![false; NODES],
            crash_on_sync: vec![false; NODES],
            checked: vec![0; NODES],
            diverged: vec![false; NODES],
            skew_ms,
            network: Network::new(NODES, rates),
            partitions: BTreeMap::new(),
            next_partition: 0,
            fault_interval_ms,
            actors,
            script,
            requests: BTreeMap::new(),
            next_request: 1,
            checker: Checker::default(),
            trace: Trace::new(config.echo),
            faults: FaultCounts::default(),
            counts: RequestCounts::default(),
            coverage: Coverage::default(),
            settling: false,
            done: false,
            room: RoomId::parse(ROOM).expect("valid room URI"),
            fanouts: (0..NODES).map(|_| None).collect(),
            next_generation: 1,
            limits,
            notifies: BTreeMap::new(),
            next_notify: 1,
            notify_requests: BTreeMap::new(),
            cursor_records: BTreeSet::new(),
            follower_guess: FOLLOWER,
            dormant: (0..NODES).map(is_spare).collect(),
            configs,
            acked_entries: vec![Vec::new(); PROVIDERS],
            lost_entries: LostEntries::new(),
            plans,
            admin_requests: BTreeMap::new(),
            next_admin: 1,
        };
        for node in 0..NODES {
            if world.dormant[node] {
                continue;
            }
            world.restart(node);
            let first_tick = world.rng.gen_range(0..tick_ms(node));
            world.schedule(first_tick, Ev::Tick(node));
        }
        for provider in 0..PROVIDERS {
            let start_at = world.plans[provider].start_at();
            world.schedule(start_at, Ev::Operator(provider));
        }
        for client in 0..world.actors.len() {
            let delay = world.rng.gen_range(0..500);
            world.schedule_wake(client, delay);
        }
        let first_fault = world.rng.gen_range(500..=fault_interval_ms);
        world.schedule(first_fault, Ev::Fault);
        world.schedule(fault_ms, Ev::EndFaults);
        world
    }

    pub fn run(mut self) -> SimReport {
        let mut events = 0;
        while !self.done {
            if events >= self.config.max_events {
                self.checker.violation(
                    ViolationKind::EventBound,
                    format!("{events} events without settling"),
                );
                break;
            }
            let Some(Reverse(next)) = self.queue.pop() else {
                break;
            };
            events += 1;
            self.now = next.at;
            self.handle(next.event);
            if self.settling && self.settled() {
                break;
            }
        }
        self.finish();
        SimReport {
            seed: self.seed,
            trace_hash: self.trace.hash(),
            events: self.trace.events(),
            simulated_ms: self.now,
            log_items: self.checker.reference().len() as u64,
            mirror_items: self.checker.mirror().len() as u64,
            faults: self.faults,
            requests: self.counts,
            coverage: self.coverage,
            violations: self.checker.into_violations(),
        }
    }

    fn handle(&mut self, event: Ev) {
        match event {
            Ev::Tick(node) => {
                if self.dormant[node] {
                    return;
                }
                let mut out = Outbox::default();
                self.replicas[node].on_tick(&mut self.trace, self.now, &mut out);
                self.dispatch(node, out);
                let (tick, jitter) = (tick_ms(node), tick_ms(node) * 3 / 20);
                let next = self.rng.gen_range(tick - jitter..=tick + jitter);
                self.schedule(next, Ev::Tick(node));
            }
            Ev::Deliver(node, message) => self.deliver(node, *message),
            Ev::Synced(node, incarnation) => {
                if incarnation == self.incarnations[node]
                    && std::mem::take(&mut self.crash_on_sync[node])
                {
                    self.crash(node);
                } else if incarnation == self.incarnations[node] {
                    let mut out = Outbox::default();
                    self.replicas[node].on_synced(&mut self.trace, self.now, &mut out);
                    self.dispatch(node, out);
                }
            }
            Ev::RequestArrives(node, request) => self.request_arrives(node, request),
            Ev::ReadArrives {
                node,
                client,
                after,
            } => {
                let id = self.actors[client].client.id().clone();
                // A removed replica's node is not ready: its reads are refused.
                let items = if self.reached_removed(node) {
                    None
                } else {
                    self.replicas[node].deliver(&self.room, &id, after)
                };
                let latency = self.client_latency();
                self.schedule(latency, Ev::ReadReturns(client, node, items));
            }
            Ev::AnswerArrives(request, answer) => self.on_answer(request, answer),
            Ev::ReadReturns(client, node, items) => self.on_read(client, node, items),
            Ev::Wake(client, token) => {
                if token == self.actors[client].wake_token {
                    self.act(client);
                }
            }
            Ev::SnapshotReport(node, to, delivered) => {
                let mut out = Outbox::default();
                self.replicas[node].on_snapshot_report(
                    to as u64 + 1,
                    delivered,
                    &mut self.trace,
                    self.now,
                    &mut out,
                );
                self.dispatch(node, out);
            }
            Ev::NotifyArrives(node, notify) => self.notify_arrives(node, notify),
            Ev::NotifyAnswer(notify, status) => self.notify_answer(notify, status),
            Ev::NotifyTimeout(notify) => self.notify_timeout(notify),
            Ev::FanoutRetry(node, generation) => {
                if self.fanout_generation(node) == Some(generation) {
                    self.pump(node);
                }
            }
            Ev::RecordCursors(node, generation) => self.record_cursors(node, generation),
            Ev::Operator(provider) => self.operate(provider),
            Ev::AdminArrives { node, id, request } => self.admin_arrives(node, id, request),
            Ev::Fault => self.inject_fault(),
            Ev::Restart(node) => self.restart(node),
            Ev::HealPartition(id) => self.heal_partition(id),
            Ev::EndFaults => self.end_faults(),
            Ev::Deadline => self.done = true,
        }
    }

    fn schedule(&mut self, delay: u64, event: Ev) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            order,
            event,
        }));
    }

    fn schedule_wake(&mut self, client: usize, delay: u64) {
        let actor = &mut self.actors[client];
        actor.wake_token += 1;
        let token = actor.wake_token;
        self.schedule(delay, Ev::Wake(client, token));
    }

    fn client_latency(&mut self) -> u64 {
        self.rng.gen_range(1..=8)
    }

    fn think_time(&mut self) -> u64 {
        let spread = 2 * self.config.fault_ms / u64::from(self.config.actions_per_client + 1);
        self.rng.gen_range(50..=spread.max(51))
    }

    // Replicas and the network.

    fn deliver(&mut self, node: usize, message: Message) {
        self.trace.record(
            self.now,
            Event::Deliver {
                from: message.from,
                to: message.to,
                kind: message.get_msg_type() as i32,
                term: message.term,
                index: message.index,
                entries: message.entries.len(),
                commit: message.commit,
            },
        );
        let snapshot_from = (message.get_msg_type() == MessageType::MsgSnapshot)
            .then(|| index_of(message.from))
            .flatten();
        let mut out = Outbox::default();
        let delivered =
            self.replicas[node].on_message(message, &mut self.trace, self.now, &mut out);
        if !delivered {
            self.faults.messages_undeliverable += 1;
        }
        if let Some(from) = snapshot_from {
            self.report_snapshot(from, node, delivered);
        }
        self.dispatch(node, out);
    }

    /// A snapshot travels on a stream whose sender learns whether it arrived.
    fn report_snapshot(&mut self, from: usize, to: usize, delivered: bool) {
        let latency = self.rng.gen_range(1..=5);
        self.schedule(latency, Ev::SnapshotReport(from, to, delivered));
    }

    fn request_arrives(&mut self, node: usize, request: RequestId) {
        let Some(command) = self
            .requests
            .get_mut(&request)
            .and_then(|record| record.command.take())
        else {
            return;
        };
        self.reached_removed(node);
        let stamp_ms = (SIM_EPOCH_MS + self.now).saturating_add_signed(self.skew_ms[node]);
        let mut out = Outbox::default();
        self.replicas[node].on_request(
            request,
            command,
            stamp_ms,
            &mut self.trace,
            self.now,
            &mut out,
        );
        self.dispatch(node, out);
    }

    /// Delivers what a replica produced: messages through the network, answers to clients
    /// (or, for a notify, to the hub through the network), its sync to the disk; then compares
    /// its room log with the reference, and keeps a hub replica's fan-out in step with its
    /// role.
    fn dispatch(&mut self, node: usize, out: Outbox) {
        for message in out.messages {
            self.route(message);
        }
        for (request, answer) in out.answers {
            if self.notify_requests.contains_key(&request) {
                self.notify_answered(node, request, answer);
            } else if self.cursor_records.remove(&request) {
                if matches!(answer, Answer::Applied(ApplyOutput::FanoutDelivered)) {
                    self.coverage.fanout_cursors_recorded += 1;
                }
            } else {
                let latency = self.client_latency();
                self.schedule(latency, Ev::AnswerArrives(request, answer));
            }
        }
        if out.sync_needed {
            let latency = if self.rng.gen_range(0..100) == 0 {
                self.rng.gen_range(20..=100)
            } else {
                self.rng.gen_range(1..=3)
            };
            let incarnation = self.incarnations[node];
            self.schedule(latency, Ev::Synced(node, incarnation));
        }
        if out.restored {
            self.checked[node] = 0;
            self.coverage.snapshots_installed += 1;
        }
        if out.applied || out.restored {
            self.compare(node);
        }
        if let Some(reason) = out.failure {
            self.failed[node] = true;
            self.incarnations[node] += 1;
            self.checker.violation(
                ViolationKind::ReplicaFailed,
                format!("replica {} stopped: {reason}", node + 1),
            );
        }
        if out.stepped_down {
            self.coverage.removed_leaders_stepped_down += 1;
            self.trace.record(
                self.now,
                Event::Fault {
                    kind: "removed-leader-stepped-down",
                    detail: node as u64 + 1,
                },
            );
        }
        if out.promoted_while_probed {
            self.coverage.probed_learners_promoted += 1;
        }
        if out.proposed_as_non_voter {
            self.checker.violation(
                ViolationKind::RemovedReplicaServed,
                format!(
                    "replica {} took a proposal while no voter of its configuration",
                    node + 1
                ),
            );
        }
        let provider = provider_of(node);
        for (index, conf) in out.configurations {
            self.observe_configuration(provider, index, conf);
        }
        self.on_acknowledged(provider, &out.acknowledged);
        for (id, result) in out.changes {
            self.on_change_answer(id, result);
        }
        for (id, result) in out.transfers {
            self.on_transfer_answer(id, result);
        }
        if is_hub(node) {
            self.fanout_after(node, out.applied || out.restored);
        }
    }

    fn route(&mut self, message: Message) {
        let (Some(from), Some(to)) = (index_of(message.from), index_of(message.to)) else {
            return;
        };
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let sent = self.transmit(from, to, || Ev::Deliver(to, Box::new(message.clone())));
        if snapshot && !sent {
            self.report_snapshot(from, to, false);
        }
    }

    /// Sends one message from node `from` to node `to` through the network; `delivery` makes
    /// the event of each copy that arrives. Returns false when the message is lost.
    fn transmit(&mut self, from: usize, to: usize, delivery: impl Fn() -> Ev) -> bool {
        match self.network.route(&mut self.rng, from, to) {
            Route::Partitioned => {
                self.faults.messages_partitioned += 1;
                false
            }
            Route::Lost => {
                self.faults.messages_dropped += 1;
                false
            }
            Route::Deliver { delays } => {
                if delays.len() > 1 {
                    self.faults.messages_duplicated += 1;
                }
                for delay in delays {
                    if delay > 5 {
                        self.faults.messages_delayed += 1;
                    }
                    self.schedule(delay, delivery());
                }
                true
            }
        }
    }

    /// Compares what is new in `node`'s room log (a follower's: its mirror) with the
    /// reference.
    fn compare(&mut self, node: usize) {
        if self.diverged[node] {
            return;
        }
        let Some(items) = self.replicas[node].room_log(&self.room, self.checked[node]) else {
            return;
        };
        let before = self.checker.violations().len();
        let id = node as u64 + 1;
        if is_hub(node) {
            self.checker
                .observe_log(id, &items, &mut self.trace, self.now);
            self.classify(node, &items);
            let cursor = self.replicas[node]
                .with_room(&self.room, |state| state.fanout_cursor(FOLLOWER_DOMAIN));
            if let Some(cursor) = cursor {
                self.checker.check_cursor(id, cursor);
            }
        } else {
            self.checker
                .observe_mirror(id, &items, FOLLOWER_DOMAIN, &mut self.trace, self.now);
        }
        if self.checker.violations()[before..].iter().any(|violation| {
            matches!(
                violation.kind,
                ViolationKind::LogDivergence
                    | ViolationKind::MirrorDivergence
                    | ViolationKind::MirrorDuplicate
            )
        }) {
            self.diverged[node] = true;
        }
        if let Some(last) = items.last() {
            self.checked[node] = last.seq;
        }
    }

    /// Records, for the reference items among hub replica `node`'s `items` not classified yet,
    /// whether the follower is to see them, as this replica's room state decides.
    fn classify(&mut self, node: usize, items: &[LogItem]) {
        let from = self.checker.unclassified();
        let Some(first) = items.iter().map(|item| item.seq).find(|&seq| seq >= from) else {
            return;
        };
        let visible = self.replicas[node].with_room(&self.room, |state| {
            items
                .iter()
                .filter(|item| item.seq >= from)
                .map(|item| state.visible_to_provider(item, FOLLOWER_DOMAIN))
                .collect::<Vec<bool>>()
        });
        if let Some(visible) = visible {
            self.checker.classify(first, &visible);
        }
    }

    // Faults.

    fn inject_fault(&mut self) {
        if self.settling {
            return;
        }
        match self.rng.gen_range(0..100) {
            0..=21 => self.crash_one(0),
            22..=31 => self.crash_one(1),
            32..=43 => {
                let node = self.rng.gen_range(0..NODES);
                self.isolate(node);
            }
            44..=51 => {
                if let Some(leader) = self.leader_of(0) {
                    self.isolate(leader);
                }
            }
            52..=55 => {
                if let Some(leader) = self.leader_of(1) {
                    self.isolate(leader);
                }
            }
            56..=69 => {
                let provider = if self.rng.gen_bool(0.6) { 0 } else { 1 };
                let group: Vec<usize> = group_nodes(provider)
                    .iter()
                    .copied()
                    .filter(|&node| !self.dormant[node])
                    .collect();
                let size = group.len();
                let from = self.rng.gen_range(0..size);
                let to = (from + self.rng.gen_range(1..size)) % size;
                let (from, to) = (group[from], group[to]);
                let mut links = vec![(from, to)];
                if self.rng.gen_bool(0.5) {
                    links.push((to, from));
                }
                self.partition(links);
            }
            70..=79 => self.partition_providers(),
            _ => self.commit_storm(),
        }
        let next = self.rng.gen_range(200..=self.fault_interval_ms * 2);
        self.schedule(next, Ev::Fault);
    }

    fn leader_of(&self, provider: usize) -> Option<usize> {
        group_nodes(provider)
            .iter()
            .copied()
            .find(|&node| self.replicas[node].is_leader())
    }

    /// Crashes one replica of `provider`'s group (the hub's or the follower's).
    fn crash_one(&mut self, provider: usize) {
        let running: Vec<usize> = group_nodes(provider)
            .iter()
            .copied()
            .filter(|&node| !self.dormant[node])
            .collect();
        let up: Vec<usize> = running
            .iter()
            .copied()
            .filter(|&node| self.replicas[node].is_up())
            .collect();
        if up.len() + 1 < running.len() || up.is_empty() {
            return; // at most one down per group, so a partition heals into a quorum sooner
        }
        let node = up[self.rng.gen_range(0..up.len())];
        if self.rng.gen_bool(0.5) {
            // Power fails while the replica's next write is on its way to the disk.
            self.crash_on_sync[node] = true;
            return;
        }
        self.crash(node);
    }

    fn crash(&mut self, node: usize) {
        let mut out = Outbox::default();
        let lost_writes = self.replicas[node].crash(&mut out);
        self.incarnations[node] += 1;
        self.checked[node] = 0;
        self.faults.crashes += 1;
        if !is_hub(node) {
            self.faults.follower_crashes += 1;
        }
        if lost_writes {
            self.faults.crashes_losing_writes += 1;
        }
        self.trace.record(
            self.now,
            Event::Fault {
                kind: "crash",
                detail: node as u64 + 1,
            },
        );
        self.dispatch(node, out);
        let downtime = self.rng.gen_range(100..=5_000);
        self.schedule(downtime, Ev::Restart(node));
    }

    fn restart(&mut self, node: usize) {
        if self.replicas[node].is_up() || self.failed[node] || self.dormant[node] {
            return;
        }
        if let Err(reason) = self.replicas[node].start(&mut self.trace, self.now) {
            self.failed[node] = true;
            self.checker.violation(
                ViolationKind::ReplicaFailed,
                format!("replica {} did not restart: {reason}", node + 1),
            );
            return;
        }
        // A first start (at time 0, or a spare's) is no restart.
        if self.incarnations[node] > 0 {
            self.faults.restarts += 1;
        }
        self.checked[node] = 0;
        self.compare(node);
        let mut out = Outbox::default();
        self.replicas[node].resume(&mut self.trace, self.now, &mut out);
        self.dispatch(node, out);
    }

    /// Cuts `node` off from every other node, of both providers.
    fn isolate(&mut self, node: usize) {
        let links = (0..NODES)
            .filter(|&other| other != node)
            .flat_map(|other| [(node, other), (other, node)])
            .collect();
        self.partition(links);
    }

    /// Cuts the providers apart: notifies, their answers, or both.
    fn partition_providers(&mut self) {
        let direction = self.rng.gen_range(0..3);
        let mut links = Vec::new();
        for &hub in &HUB_NODES {
            for &follower in &FOLLOWER_NODES {
                if direction != 1 {
                    links.push((hub, follower));
                }
                if direction != 0 {
                    links.push((follower, hub));
                }
            }
        }
        self.faults.provider_partitions += 1;
        self.partition(links);
    }

    fn partition(&mut self, links: Vec<(usize, usize)>) {
        for &(from, to) in &links {
            self.network.cut(from, to);
        }
        let id = self.next_partition;
        self.next_partition += 1;
        self.trace.record(
            self.now,
            Event::Fault {
                kind: "partition",
                detail: links.len() as u64,
            },
        );
        self.partitions.insert(id, links);
        self.faults.partitions += 1;
        let duration = self.rng.gen_range(200..=8_000);
        self.schedule(duration, Ev::HealPartition(id));
    }

    fn heal_partition(&mut self, id: u64) {
        if let Some(links) = self.partitions.remove(&id) {
            for (from, to) in links {
                self.network.uncut(from, to);
            }
            self.trace.record(
                self.now,
                Event::Fault {
                    kind: "heal",
                    detail: id,
                },
            );
        }
    }

    /// Every idle member commits at (almost) the same moment: RFC 9420 §14 races.
    fn commit_storm(&mut self) {
        self.faults.commit_storms += 1;
        self.trace.record(
            self.now,
            Event::Fault {
                kind: "storm",
                detail: 0,
            },
        );
        for client in 0..self.actors.len() {
            let actor = &mut self.actors[client];
            if actor.client.is_member()
                && !actor.zombie
                && !actor.broken
                && actor.busy == Busy::Idle
                && actor.outstanding.is_none()
            {
                actor.storm = true;
                let delay = self.rng.gen_range(0..=3);
                self.schedule_wake(client, delay);
            }
        }
    }

    fn end_faults(&mut self) {
        self.settling = true;
        self.trace.record(self.now, Event::Phase { name: "heal" });
        self.network.calm();
        self.crash_on_sync = vec![false; NODES];
        for id in self.partitions.keys().copied().collect::<Vec<_>>() {
            self.heal_partition(id);
        }
        for node in 0..NODES {
            self.restart(node);
        }
        // Only what is under way finishes; the room must exist, though.
        self.script.retain(|(step, _)| {
            *step == Step::Create || Some(*step) == self.actors[CREATOR].commit_step
        });
        for client in 0..self.actors.len() {
            let actor = &mut self.actors[client];
            actor.budget = 0;
            actor.storm = false;
            if actor.client.is_member() && !actor.zombie && !actor.broken {
                actor.probe = Probe::Wanted;
            }
            if actor.busy == Busy::Idle {
                let delay = self.rng.gen_range(0..100);
                self.schedule_wake(client, delay);
            }
        }
        self.schedule(self.config.settle_ms, Ev::Deadline);
    }

    /// Each provider's replicas agree on everything committed, the follower mirrors all the hub
    /// has for it, and no client has anything left to do.
    fn settled(&self) -> bool {
        let clients_done = self.actors.iter().all(|actor| {
            actor.broken
                || (actor.busy == Busy::Idle
                    && actor.outstanding.is_none()
                    && (actor.zombie || !actor.client.has_pending_commit())
                    && actor.probe != Probe::Wanted)
        }) && self.script.is_empty();
        if !clients_done {
            return false;
        }
        if !self.plans.iter().all(Plan::is_idle) {
            return false;
        }
        let reference = self.checker.reference().len() as u64;
        let mirror = self.checker.mirror().len();
        if self.checker.unclassified() != reference + 1 || mirror != self.checker.projection_len() {
            return false;
        }
        // A notify copy that arrived late is a proposal still waiting for its answer (found at
        // seed 31291: the run ended between its append and its commit).
        self.group_settled(0, reference)
            && self.group_settled(1, mirror as u64)
            && self
                .notify_requests
                .values()
                .all(|arrival| arrival.answered)
    }

    /// Every member of `provider`'s configuration is up, applied all it committed, the same
    /// as the others, and was compared up to `seq`.
    fn group_settled(&self, provider: usize, seq: u64) -> bool {
        let mut applied = None;
        for node in self.members(provider) {
            let Some((index, commit)) = self.replicas[node].progress() else {
                return false;
            };
            if index != commit
                || *applied.get_or_insert(index) != index
                || self.replicas[node].is_busy()
                || self.checked[node] != seq
            {
                return false;
            }
        }
        true
    }

    fn finish(&mut self) {
        self.trace.record(self.now, Event::Phase { name: "end" });
        self.finish_membership();
        let hub_members = self.members(0);
        let logs: Vec<(u64, Vec<LogItem>)> = hub_members
            .iter()
            .filter_map(|&node| {
                self.replicas[node]
                    .room_log(&self.room, 0)
                    .map(|log| (node as u64 + 1, log))
            })
            .collect();
        if logs.len() < hub_members.len() {
            self.checker.violation(
                ViolationKind::NotConverged,
                format!(
                    "only {} of the hub's {} members are up at the end",
                    logs.len(),
                    hub_members.len()
                ),
            );
        }
        self.checker.recheck_acks();
        self.checker.finish(&logs, &mut self.trace, self.now);
        for (id, log) in &logs {
            self.classify(*id as usize - 1, log);
        }
        let follower_members = self.members(1);
        let mirrors: Vec<(u64, Vec<LogItem>)> = follower_members
            .iter()
            .filter_map(|&node| {
                self.replicas[node]
                    .room_log(&self.room, 0)
                    .map(|log| (node as u64 + 1, log))
            })
            .collect();
        if mirrors.len() < follower_members.len() {
            self.checker.violation(
                ViolationKind::NotConverged,
                format!(
                    "only {} of the follower's {} members are up at the end",
                    mirrors.len(),
                    follower_members.len()
                ),
            );
        }
        self.checker
            .finish_mirror(&mirrors, FOLLOWER_DOMAIN, &mut self.trace, self.now);
        let unanswered_notifies = self
            .notify_requests
            .values()
            .filter(|arrival| !arrival.answered)
            .count();
        if unanswered_notifies > 0 {
            self.checker.violation(
                ViolationKind::UnansweredRequest,
                format!("{unanswered_notifies} notifies were never answered by the follower"),
            );
        }
        let unanswered: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, record)| !record.answered)
            .map(|(id, _)| *id)
            .collect();
        for request in unanswered {
            self.checker.violation(
                ViolationKind::UnansweredRequest,
                format!("request {request} was never answered"),
            );
        }
        if !self.actors[CREATOR].created {
            self.checker.violation(
                ViolationKind::Liveness,
                "the room was never created".to_string(),
            );
        }
        let unprobed: Vec<String> = self
            .actors
            .iter()
            .filter(|actor| actor.probe == Probe::Wanted && !actor.broken)
            .map(|actor| actor.client.id().to_string())
            .collect();
        if !unprobed.is_empty() {
            self.checker.violation(
                ViolationKind::Liveness,
                format!(
                    "no message accepted within {} ms after healing from {}",
                    self.config.settle_ms,
                    unprobed.join(", ")
                ),
            );
        }
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, choices: &[T]) -> T {
    choices[rng.gen_range(0..choices.len())]
}

/// Raft id (1-based) to node index.
fn index_of(id: u64) -> Option<usize> {
    let index = usize::try_from(id.checked_sub(1)?).ok()?;
    (index < NODES).then_some(index)
}

fn is_hub(node: usize) -> bool {
    HUB_NODES.contains(&node)
}

fn is_spare(node: usize) -> bool {
    node == HUB_SPARE || node == FOLLOWER_SPARE
}

/// 0 for the hub's group, 1 for the follower provider's.
fn provider_of(node: usize) -> usize {
    usize::from(!is_hub(node))
}

/// The nodes of `provider`'s group: its original replicas, then its spare.
fn group_nodes(provider: usize) -> &'static [usize; GROUP_NODES] {
    if provider == 0 {
        &HUB_NODES
    } else {
        &FOLLOWER_NODES
    }
}

/// The next node of `node`'s group after it, cyclically.
fn next_in_group(node: usize) -> usize {
    let group = group_of(node);
    let position = group.iter().position(|&other| other == node).unwrap_or(0);
    group[(position + 1) % group.len()]
}

fn tick_ms(node: usize) -> u64 {
    if is_hub(node) {
        TICK_MS
    } else {
        FOLLOWER_TICK_MS
    }
}

/// The nodes of `node`'s provider.
fn group_of(node: usize) -> &'static [usize; GROUP_NODES] {
    group_nodes(provider_of(node))
}

/// The hub's original replicas: nodes `0..REPLICAS`.
const REPLICAS: usize = 3;
/// The follower's original replicas: nodes `FOLLOWER..FOLLOWER + FOLLOWER_REPLICAS`.
const FOLLOWER_REPLICAS: usize = 3;
const FOLLOWER: usize = REPLICAS;
/// The spares (raft ids 7 and 8), started empty when the operator adds them.
const HUB_SPARE: usize = REPLICAS + FOLLOWER_REPLICAS;
const FOLLOWER_SPARE: usize = HUB_SPARE + 1;
const NODES: usize = FOLLOWER_SPARE + 1;
const GROUP_NODES: usize = 4;
const HUB_NODES: [usize; GROUP_NODES] = [0, 1, 2, HUB_SPARE];
const FOLLOWER_NODES: [usize; GROUP_NODES] = [FOLLOWER, FOLLOWER + 1, FOLLOWER + 2, FOLLOWER_SPARE];
/// Providers, each one group: the hub (0) and the follower (1).
const PROVIDERS: usize = 2;
/// Raft tick of the hub's replicas (±15%).
const TICK_MS: u64 = 100;
/// Raft tick of the follower's replicas: another provider, configured otherwise (elections
/// after about 2 s); it also halves the idle Raft traffic the simulation handles.
const FOLLOWER_TICK_MS: u64 = 200;
const ROOM: &str = "mimi://sim.example/r/clubhouse";
/// The follower provider: the domain of the b.example clients.
const FOLLOWER_DOMAIN: &str = "b.example";
