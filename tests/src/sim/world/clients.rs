//! The clients' side of the simulation: four openmls clients with a simple, adversarial
//! workload. Alice creates the room and runs a script (add Bob and Cathy, later add Dave, later
//! remove Cathy); every member sends messages and rotates keys at random, and all of them
//! commit at once in commit storms (RFC 9420 §14 races); Cathy, once her removal is submitted,
//! stops reading and keeps sending from her stale state (MIMI.md §7.4 must refuse her).
//!
//! Alice and Cathy are clients of the hub (`sim.example`); Bob and Dave of the follower
//! (`b.example`). A follower client reads the room from one of the follower's replicas (its
//! mirror, local seqs), never from the hub, and its requests reach the hub as its provider's
//! `Forwarder` sends them: with `Submitter::Provider("b.example")` (MIMI.md §7.1 step 2).
//!
//! A client has at most one request in flight. It sends to the replica it believes leads,
//! follows `NotLeader` hints, and resends a Commit or the room creation as is when the outcome
//! is unknown (a Commit is accepted at most once per epoch, a room created once); an
//! application message with an unknown outcome is not resent yet (the hub's retry cache,
//! ARCHITECTURE.md "Retries", now makes that safe: exercising it here is the next step).
//! Before acting, a client reads the
//! log from some replica (possibly a stale one) and processes what it is delivered.

use mimid_actors::command::{Command, HandshakeBundle, SubmitVerdict, Submitter, UpdateVerdict};
use mimid_actors::ids::ClientId;
use mimid_actors::room::log::{ItemBody, LogItem};
use mimid_actors::shard::{ApplyOutput, CreateRoomRejection};
use openmls::prelude::Lifetime;
use rand::Rng;

use super::{
    index_of, is_hub, next_in_group, Ev, RequestRecord, World, FOLLOWER_NODES, GROUP_NODES,
    HUB_NODES,
};
use crate::sim::checker::{digest, Attempt, BodyDigest, Submission, ViolationKind};
use crate::sim::client::{Change, Seen, SimClient};
use crate::sim::replica::{outcome_name, Answer, RequestId};
use crate::sim::trace::Event;

/// The creator's scripted room changes (MIMI.md §6.1, §6.3, §6.5), each retried until its
/// Commit is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Create,
    AddFirst,
    AddJoiner,
    RemoveVictim,
}

pub(super) struct Actor {
    pub(super) client: SimClient,
    /// A client of the follower provider: reads the mirror, submits through its provider.
    pub(super) remote: bool,
    pub(super) busy: Busy,
    pub(super) outstanding: Option<Outstanding>,
    /// The script step whose Commit is pending.
    pub(super) commit_step: Option<Step>,
    pub(super) budget: u32,
    pub(super) sent: u32,
    pub(super) leader_guess: usize,
    pub(super) wake_token: u64,
    /// Told to commit at once (a commit storm).
    pub(super) storm: bool,
    /// Removal submitted: stops reading, keeps sending from its stale state.
    pub(super) zombie: bool,
    pub(super) removed: bool,
    /// Stopped after a violation, so one fault is reported once.
    pub(super) broken: bool,
    pub(super) probe: Probe,
    pub(super) created: bool,
    pub(super) create_bundle: Option<(Vec<u8>, Vec<u8>)>,
}

impl Actor {
    pub(super) fn new(
        uri: &str,
        seed: [u8; 32],
        lifetime: Lifetime,
        budget: u32,
        leader_guess: usize,
    ) -> Self {
        let id = ClientId::parse(uri).expect("the simulated client URIs are valid");
        let remote = id.domain() == super::FOLLOWER_DOMAIN;
        Actor {
            remote,
            client: SimClient::new(id, seed, lifetime)
                .expect("seeded Ed25519 key generation cannot fail"),
            busy: Busy::Idle,
            outstanding: None,
            commit_step: None,
            budget,
            sent: 0,
            leader_guess,
            wake_token: 0,
            storm: false,
            zombie: false,
            removed: false,
            broken: false,
            probe: Probe::NotNeeded,
            created: false,
            create_bundle: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Busy {
    Idle,
    Reading,
    Requesting(RequestId),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    NotNeeded,
    Wanted,
    Done,
}

/// A submission the client sends again until it has a definite answer.
pub(super) struct Outstanding {
    pub(super) kind: Kind,
    pub(super) command: Command,
    pub(super) body: Option<BodyDigest>,
    pub(super) attempts: u32,
    /// An earlier attempt's outcome is unknown: the body may already be in the log.
    pub(super) maybe_applied: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Create,
    /// A Commit built in `epoch`.
    Commit {
        epoch: u64,
    },
    Message {
        probe: bool,
    },
}

impl World<'_> {
    // Clients.

    /// A client's turn: resend what is outstanding, or read the log and then decide.
    pub(super) fn act(&mut self, client: usize) {
        let actor = &mut self.actors[client];
        if actor.broken || actor.busy != Busy::Idle {
            return;
        }
        if let Some(outstanding) = &actor.outstanding {
            let resolved = matches!(outstanding.kind, Kind::Commit { .. })
                && !actor.client.has_pending_commit();
            if !resolved {
                return self.send(client);
            }
            // The log already told the commit's fate: no need to ask again.
            actor.outstanding = None;
        }
        if actor.zombie {
            return self.zombie_act(client);
        }
        let node = if self.actors[client].remote {
            // Any follower replica, possibly a stale one.
            FOLLOWER_NODES[self.rng.gen_range(0..GROUP_NODES)]
        } else if self.rng.gen_bool(0.5) {
            self.actors[client].leader_guess
        } else {
            HUB_NODES[self.rng.gen_range(0..GROUP_NODES)]
        };
        let actor = &mut self.actors[client];
        actor.busy = Busy::Reading;
        let after = actor.client.processed();
        let latency = self.client_latency();
        self.schedule(
            latency,
            Ev::ReadArrives {
                node,
                client,
                after,
            },
        );
    }

    pub(super) fn on_read(&mut self, client: usize, node: usize, items: Option<Vec<LogItem>>) {
        self.actors[client].busy = Busy::Idle;
        let Some(items) = items else {
            // The replica is down: try another one soon.
            if is_hub(node) {
                self.actors[client].leader_guess = next_in_group(node);
            }
            let delay = self.rng.gen_range(20..=200);
            return self.schedule_wake(client, delay);
        };
        self.trace.record(
            self.now,
            Event::Read {
                client,
                node: node as u64 + 1,
                items: items.len(),
            },
        );
        let id = self.actors[client].client.id().clone();
        let from_mirror = !is_hub(node);
        let consistent = if from_mirror {
            self.checker.check_mirror_read(&id, &items)
        } else {
            self.checker.check_read(&id, &items)
        };
        if !consistent {
            self.actors[client].broken = true;
            return;
        }
        for item in &items {
            let seen = self.actors[client].client.process(item);
            let actor = &mut self.actors[client];
            match seen {
                Err(err) => {
                    actor.broken = true;
                    self.checker.violation(
                        ViolationKind::ClientCannotProcess,
                        format!("{id} cannot process seq {}: {err:#}", item.seq),
                    );
                    return;
                }
                Ok(Seen::Committed { own, removed }) => {
                    actor.removed |= removed;
                    if actor.commit_step.is_some() && !actor.client.has_pending_commit() {
                        let step = actor.commit_step.take();
                        if own && self.script.front().map(|(step, _)| *step) == step {
                            self.script.pop_front();
                        }
                    }
                }
                Ok(Seen::Message {
                    own: false,
                    plaintext,
                }) => {
                    if let ItemBody::Application { message } = &item.body {
                        self.coverage.messages_decrypted += 1;
                        if from_mirror {
                            self.coverage.mirror_messages_decrypted += 1;
                        }
                        self.checker
                            .check_plaintext(&id, item.seq, &digest(message), &plaintext);
                    }
                }
                Ok(Seen::Joined | Seen::Nothing | Seen::Message { own: true, .. }) => {}
            }
        }
        self.decide(client);
    }

    /// After a read: the next request, or when to look again.
    fn decide(&mut self, client: usize) {
        let actor = &self.actors[client];
        if actor.client.has_pending_commit() {
            // Its fate is in the log, which this replica has not shown yet.
            let delay = self.rng.gen_range(50..=300);
            return self.schedule_wake(client, delay);
        }
        if client == CREATOR {
            if let Some(&(step, not_before)) = self.script.front() {
                if step == Step::Create || actor.client.is_member() {
                    if not_before <= self.now {
                        return self.scripted(step);
                    }
                    let wait = not_before - self.now;
                    return self.schedule_wake(client, wait);
                }
            }
        }
        let actor = &self.actors[client];
        if !actor.client.is_member() {
            if !actor.removed && !self.settling {
                // Waiting for a Welcome.
                let delay = self.rng.gen_range(200..=800);
                self.schedule_wake(client, delay);
            }
            return;
        }
        if actor.probe == Probe::Wanted {
            return self.send_message(client, true);
        }
        if actor.storm {
            self.actors[client].storm = false;
            return self.send_commit(client, Change::SelfUpdate, None);
        }
        if actor.budget == 0 || self.settling {
            return;
        }
        self.actors[client].budget -= 1;
        if self.rng.gen_range(0..100) < 75 {
            self.send_message(client, false);
        } else {
            self.send_commit(client, Change::SelfUpdate, None);
        }
    }

    fn scripted(&mut self, step: Step) {
        match step {
            Step::Create => self.send_create(),
            Step::AddFirst | Step::AddJoiner => {
                let targets: &[usize] = if step == Step::AddFirst {
                    &[1, VICTIM]
                } else {
                    &[JOINER]
                };
                let mut users = Vec::new();
                let mut key_packages = Vec::new();
                for &target in targets {
                    let joiner = &self.actors[target].client;
                    users.push(joiner.id().user());
                    match joiner.key_package() {
                        Ok(key_package) => key_packages.push(key_package),
                        Err(err) => return self.client_failed(target, &err),
                    }
                }
                self.send_commit(
                    CREATOR,
                    Change::Add {
                        users,
                        key_packages,
                    },
                    Some(step),
                );
            }
            Step::RemoveVictim => {
                let victim = &mut self.actors[VICTIM];
                let user = victim.client.id().user();
                if !victim.zombie {
                    // It keeps trying for a while, unaware (MIMI.md §7.4 must refuse it).
                    victim.zombie = true;
                    victim.budget = victim.budget.max(ZOMBIE_ATTEMPTS);
                    if victim.busy == Busy::Idle && victim.outstanding.is_none() {
                        let delay = self.rng.gen_range(0..=500);
                        self.schedule_wake(VICTIM, delay);
                    }
                }
                self.send_commit(CREATOR, Change::Remove { user }, Some(step));
            }
        }
    }

    fn send_create(&mut self) {
        let actor = &mut self.actors[CREATOR];
        let (group_info, ratchet_tree) = match actor.create_bundle.clone() {
            Some(bundle) => bundle,
            None => match actor.client.create_group() {
                Ok(bundle) => {
                    actor.create_bundle = Some(bundle.clone());
                    bundle
                }
                Err(err) => return self.client_failed(CREATOR, &err),
            },
        };
        let command = Command::CreateRoom {
            room: self.room.clone(),
            creator: actor.client.id().clone(),
            group_info,
            ratchet_tree,
        };
        self.actors[CREATOR].outstanding = Some(Outstanding {
            kind: Kind::Create,
            command,
            body: None,
            attempts: 0,
            maybe_applied: false,
        });
        self.send(CREATOR);
    }

    fn send_commit(&mut self, client: usize, change: Change, step: Option<Step>) {
        let removes = match &change {
            Change::Remove { .. } => vec![self.actors[VICTIM].client.id().clone()],
            Change::SelfUpdate | Change::Add { .. } => Vec::new(),
        };
        let actor = &mut self.actors[client];
        let epoch = actor.client.epoch().unwrap_or(0);
        let bundle = match actor.client.commit(change) {
            Ok(bundle) => bundle,
            Err(err) => return self.client_failed(client, &err),
        };
        let HandshakeBundle::Commit {
            commit, welcome, ..
        } = &bundle
        else {
            unreachable!("SimClient::commit builds commit bundles");
        };
        let sender = actor.client.id().clone();
        let submitter = submitter(actor);
        let body = digest(commit);
        self.checker.register(
            body,
            Submission {
                sender: sender.clone(),
                removes,
                plaintext: None,
                welcome_of: None,
            },
        );
        if let Some(welcome) = welcome {
            self.checker.register(
                digest(welcome),
                Submission {
                    sender: sender.clone(),
                    removes: Vec::new(),
                    plaintext: None,
                    welcome_of: Some(body),
                },
            );
        }
        let actor = &mut self.actors[client];
        actor.commit_step = step;
        actor.outstanding = Some(Outstanding {
            kind: Kind::Commit { epoch },
            command: Command::Handshake {
                room: self.room.clone(),
                sender: submitter,
                bundle,
            },
            body: Some(body),
            attempts: 0,
            maybe_applied: false,
        });
        self.send(client);
    }

    fn send_message(&mut self, client: usize, probe: bool) {
        let actor = &mut self.actors[client];
        actor.sent += 1;
        let plaintext = format!("{} #{}", actor.client.id(), actor.sent).into_bytes();
        let message = match actor.client.message(&plaintext) {
            Ok(message) => message,
            Err(err) => return self.client_failed(client, &err),
        };
        let sender = actor.client.id().clone();
        let submitter = submitter(actor);
        let body = digest(&message);
        self.checker.register(
            body,
            Submission {
                sender: sender.clone(),
                removes: Vec::new(),
                plaintext: Some(plaintext),
                welcome_of: None,
            },
        );
        self.actors[client].outstanding = Some(Outstanding {
            kind: Kind::Message { probe },
            command: Command::AppMessage {
                room: self.room.clone(),
                sending_user: sender.user(),
                sender: submitter,
                message,
            },
            body: Some(body),
            attempts: 0,
            maybe_applied: false,
        });
        self.send(client);
    }

    /// The removed client that does not know it: sends from its stale group state.
    fn zombie_act(&mut self, client: usize) {
        let actor = &mut self.actors[client];
        if actor.budget == 0 || self.settling || !actor.client.is_member() {
            return;
        }
        actor.budget -= 1;
        if let Err(err) = actor.client.abandon_commit() {
            return self.client_failed(client, &err);
        }
        self.send_message(client, false);
    }

    /// Sends (or resends) the client's outstanding submission to the replica it believes leads.
    fn send(&mut self, client: usize) {
        let request = self.next_request;
        self.next_request += 1;
        let actor = &mut self.actors[client];
        let Some(outstanding) = actor.outstanding.as_mut() else {
            return;
        };
        outstanding.attempts += 1;
        actor.busy = Busy::Requesting(request);
        let node = actor.leader_guess;
        let kind = match outstanding.kind {
            Kind::Create => "create",
            Kind::Commit { .. } => "commit",
            Kind::Message { .. } => "message",
        };
        self.requests.insert(
            request,
            RequestRecord {
                client,
                command: Some(outstanding.command.clone()),
                answered: false,
            },
        );
        self.counts.sent += 1;
        self.trace.record(
            self.now,
            Event::Request {
                client,
                request,
                kind,
                node: node as u64 + 1,
            },
        );
        let latency = self.client_latency();
        self.schedule(latency, Ev::RequestArrives(node, request));
    }

    pub(super) fn on_answer(&mut self, request: RequestId, answer: Answer) {
        let Some(record) = self.requests.get_mut(&request) else {
            return;
        };
        if record.answered {
            self.checker.violation(
                ViolationKind::UnexpectedVerdict,
                format!("request {request} was answered twice"),
            );
            return;
        }
        record.answered = true;
        let client = record.client;
        let outcome = match &answer {
            Answer::Applied(output) => outcome_name(output),
            Answer::NotLeader { .. } => "not-leader",
            Answer::Busy => "busy",
            Answer::Unavailable => "unavailable",
            Answer::Dropped => "dropped",
            Answer::Crashed => "crashed",
        };
        self.trace
            .record(self.now, Event::Answer { request, outcome });
        let actor = &mut self.actors[client];
        actor.busy = Busy::Idle;
        let Some(mut outstanding) = actor.outstanding.take() else {
            return;
        };
        match answer {
            Answer::NotLeader { leader } => {
                self.counts.refused += 1;
                self.attempt(request, &outstanding, Attempt::Refused);
                self.actors[client].leader_guess = match index_of(leader) {
                    Some(leader) => leader,
                    None => HUB_NODES[self.rng.gen_range(0..GROUP_NODES)],
                };
                self.retry(client, outstanding);
            }
            Answer::Busy | Answer::Unavailable => {
                self.counts.refused += 1;
                self.attempt(request, &outstanding, Attempt::Refused);
                let guess = &mut self.actors[client].leader_guess;
                *guess = next_in_group(*guess);
                self.retry(client, outstanding);
            }
            Answer::Dropped | Answer::Crashed => {
                self.counts.indeterminate += 1;
                self.attempt(request, &outstanding, Attempt::Unknown);
                outstanding.maybe_applied = true;
                match outstanding.kind {
                    // Resent as is: a Commit is accepted at most once per epoch, a room created
                    // once; a second copy of a message would be a second message.
                    Kind::Create | Kind::Commit { .. } => self.retry(client, outstanding),
                    Kind::Message { .. } => self.next_turn(client),
                }
            }
            Answer::Applied(output) => self.on_applied(client, request, outstanding, output),
        }
    }

    fn on_applied(
        &mut self,
        client: usize,
        request: RequestId,
        outstanding: Outstanding,
        output: ApplyOutput,
    ) {
        let expected_refusal = {
            let actor = &self.actors[client];
            actor.zombie || actor.removed
        };
        match (outstanding.kind, output) {
            (Kind::Create, ApplyOutput::RoomCreated(result)) => match result {
                Ok(()) => self.room_created(),
                // Only the creator creates this room: an earlier attempt got through.
                Err(CreateRoomRejection::AlreadyExists) if outstanding.maybe_applied => {
                    self.room_created()
                }
                Err(rejection) => {
                    self.unexpected(client, format!("{rejection:?}"));
                    self.actors[client].broken = true;
                }
            },
            (Kind::Commit { epoch }, ApplyOutput::Updated(verdict)) => match verdict {
                UpdateVerdict::Success { seq, .. } => {
                    self.counts.acknowledged += 1;
                    self.coverage.commits_acknowledged += 1;
                    let body = outstanding.body.expect("commits have a body");
                    self.checker.on_attempt(request, body, Attempt::Acked(seq));
                    self.checker.on_commit_acked(epoch, body);
                }
                // Another Commit won the epoch (or an earlier attempt of this one did): the
                // log says which, so the commit stays pending until read there.
                UpdateVerdict::WrongEpoch { .. } => {
                    self.coverage.commits_lost_epoch += 1;
                    self.rejected(request, &outstanding);
                }
                other => {
                    self.rejected(request, &outstanding);
                    if !outstanding.maybe_applied {
                        if let Err(err) = self.actors[client].client.abandon_commit() {
                            return self.client_failed(client, &err);
                        }
                    }
                    if expected_refusal {
                        self.coverage.removed_client_refusals += 1;
                    } else {
                        self.unexpected(client, format!("{other:?}"));
                    }
                }
            },
            (Kind::Message { probe }, ApplyOutput::Submitted(verdict)) => match verdict {
                SubmitVerdict::Accepted { seq, .. } => {
                    self.counts.acknowledged += 1;
                    let body = outstanding.body.expect("messages have a body");
                    self.checker.on_attempt(request, body, Attempt::Acked(seq));
                    if probe {
                        self.actors[client].probe = Probe::Done;
                    }
                }
                SubmitVerdict::EpochTooOld { .. } => self.rejected(request, &outstanding),
                SubmitVerdict::NotAllowed { reason } => {
                    self.rejected(request, &outstanding);
                    if expected_refusal {
                        self.coverage.removed_client_refusals += 1;
                    } else {
                        self.unexpected(client, reason);
                    }
                }
            },
            (_, output) => {
                self.unexpected(client, format!("{output:?}"));
            }
        }
        self.next_turn(client);
    }

    fn room_created(&mut self) {
        self.counts.acknowledged += 1;
        self.actors[CREATOR].created = true;
        if self.script.front().map(|(step, _)| *step) == Some(Step::Create) {
            self.script.pop_front();
        }
    }

    fn rejected(&mut self, request: RequestId, outstanding: &Outstanding) {
        self.counts.rejected += 1;
        self.attempt(request, outstanding, Attempt::Refused);
    }

    fn attempt(&mut self, request: RequestId, outstanding: &Outstanding, attempt: Attempt) {
        if let Some(body) = outstanding.body {
            self.checker.on_attempt(request, body, attempt);
        }
    }

    fn unexpected(&mut self, client: usize, verdict: String) {
        let id = self.actors[client].client.id().clone();
        self.checker.violation(
            ViolationKind::UnexpectedVerdict,
            format!("{id} got {verdict}"),
        );
    }

    /// Sends the same submission again after a back-off.
    fn retry(&mut self, client: usize, outstanding: Outstanding) {
        let backoff = (20 * u64::from(outstanding.attempts)).min(1_000);
        self.actors[client].outstanding = Some(outstanding);
        let delay = self.rng.gen_range(backoff / 2..=backoff.max(1));
        self.schedule_wake(client, delay);
    }

    fn next_turn(&mut self, client: usize) {
        let delay = if self.settling {
            self.rng.gen_range(10..=100)
        } else {
            self.think_time()
        };
        self.schedule_wake(client, delay);
    }

    fn client_failed(&mut self, client: usize, err: &anyhow::Error) {
        let actor = &mut self.actors[client];
        actor.broken = true;
        actor.outstanding = None;
        let id = actor.client.id().clone();
        self.checker.violation(
            ViolationKind::ClientCannotProcess,
            format!("{id} could not build a request: {err:#}"),
        );
    }
}

/// Who the hub authenticates a client's request as: the client itself, or for a follower's
/// client the follower provider that forwards it (MIMI.md §7.1 step 2).
fn submitter(actor: &Actor) -> Submitter {
    let id = actor.client.id();
    if actor.remote {
        Submitter::Provider(id.domain().to_owned())
    } else {
        Submitter::Client(id.clone())
    }
}

pub(super) const CLIENTS: [&str; 4] = [
    "mimi://sim.example/d/alice/phone",
    "mimi://b.example/d/bob/laptop",
    "mimi://sim.example/d/cathy/tablet",
    "mimi://b.example/d/dave/phone",
];
/// Alice (hub) creates the room and runs the script; Bob (follower) and Cathy (hub) join
/// first; Cathy is removed later; Dave (follower) joins later.
pub(super) const CREATOR: usize = 0;
pub(super) const VICTIM: usize = 2;
const JOINER: usize = 3;
/// Messages the removed client tries after its removal was submitted.
const ZOMBIE_ATTEMPTS: u32 = 3;
