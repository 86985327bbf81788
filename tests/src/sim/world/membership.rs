//! Membership changes in the simulation (`cluster::membership`; ARCHITECTURE.md "Cluster"), on
//! both providers' groups, and the durability audit that goes with them.
//!
//! Each provider has a spare replica (raft id 7 for the hub, 8 for the follower provider). Once
//! per run, at a random time of the fault phase, an operator starts it empty (`join_existing`)
//! and takes the group, one step at a time and between the faults, to "the spare is a voter and
//! one original voter is gone", in one of three orders: add the spare as a learner, promote it,
//! remove an original voter; add, remove, promote; or remove, add, promote. The operator acts
//! as the placement driver does (`node/src/cluster_ops/placement.rs`), with the product's rules
//! deciding on the leader:
//!
//! * every change goes to the replica that leads as a voter (the highest term if two think
//!   so), which checks its own state and the product's rules (`Replica::change_members`,
//!   `MembershipChange::plan`) and answers once the entry applied there, or drops or refuses
//!   it; the operator has one request in flight and plans again from fresh state after each
//!   answer (one change at a time);
//! * a learner is promoted once caught up as placement sees it (matched within
//!   [`CATCH_UP_SLACK`] of the commit index); the leader's rule has the last word (it refuses
//!   a learner it neither replicates to normally nor knows to hold its whole log:
//!   `LearnerBehind`, and the operator asks again later); now and then the operator asks early,
//!   and now and then a request goes twice, as a retrying operator's would (refused:
//!   `ChangeInProgress`, `AlreadyMember`, ...). A learner that has everything but sits in
//!   raft-rs' probe state on an idle group is promoted as it is (`learner_caught_up`; the
//!   operator used to propose a write for it, found at seed 52437);
//! * no removal below quorum: a voter is removed only if the voters left still form a quorum
//!   of the original three; a removed voter that is up is removed once caught up, so it hears
//!   of its removal;
//! * the leader is never removed (the product refuses it): when the voter to remove leads,
//!   which the operator picks on purpose in some runs, leadership is transferred first to the
//!   most caught-up voter, and the group elects the target (or anew, if faults intervene);
//! * once the removal applied and the removed replica heard of it (or is down, or did not
//!   within [`DECOMMISSION_WAIT_MS`]), the operator stops it and deletes its data, after a lag
//!   of its own; it never comes back.
//!
//! The audit: every entry whose apply output was acknowledged (a client's answer, a notify's
//! 201, a recorded cursor) is checked, when acknowledged, whenever the group's configuration
//! changes, when a removed replica's data is deleted and at the end, to be durable (synced) on
//! enough voters of the latest configuration any replica applied that losing any minority of
//! them would not lose it (`checker::survives_minority_loss`). A removed replica counts for
//! nothing from its removal on.

use std::collections::{BTreeSet, VecDeque};

use mimid_cluster::{MembershipChange, MembershipError, TransferError};
use raft::eraftpb::ConfState;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{group_nodes, index_of, tick_ms, Ev, World, PROVIDERS};
use crate::sim::checker::{survives_minority_loss, ViolationKind};
use crate::sim::replica::{is_member, AdminId, LeaderView, Outbox};
use crate::sim::trace::Event;

/// One step of the operator's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    AddSpare,
    PromoteSpare,
    RemoveOriginal,
}

/// A provider's membership plan for the run.
pub(super) struct Plan {
    spare: usize,
    goals: VecDeque<Goal>,
    start_at: u64,
    started: bool,
    /// Remove the replica that leads when the removal comes (if it is an original voter).
    remove_leader: bool,
    victim: Option<usize>,
    victim_led: bool,
    /// The victim's removal applied; it is stopped and its data deleted from then on, once it
    /// heard of it: (seen at, not before).
    removed: Option<(u64, u64)>,
    /// The request in flight and when the operator stops waiting for its answer.
    in_flight: Option<(AdminId, u64)>,
    done: bool,
}

impl Plan {
    /// The plan of `provider`, drawn from the seed: an order of the three steps, a start in the
    /// fault phase, and whether the leader is the voter to remove.
    pub(super) fn draw(rng: &mut ChaCha8Rng, provider: usize, fault_ms: u64) -> Self {
        let orders = [
            [Goal::AddSpare, Goal::PromoteSpare, Goal::RemoveOriginal],
            [Goal::AddSpare, Goal::PromoteSpare, Goal::RemoveOriginal],
            [Goal::AddSpare, Goal::RemoveOriginal, Goal::PromoteSpare],
            [Goal::RemoveOriginal, Goal::AddSpare, Goal::PromoteSpare],
        ];
        let goals = orders[rng.gen_range(0..orders.len())].into_iter().collect();
        Plan {
            spare: group_nodes(provider)[ORIGINAL_VOTERS],
            goals,
            start_at: rng.gen_range(fault_ms / 10..=fault_ms * 3 / 5),
            started: false,
            remove_leader: rng.gen_bool(0.4),
            victim: None,
            victim_led: false,
            removed: None,
            in_flight: None,
            done: false,
        }
    }

    pub(super) fn start_at(&self) -> u64 {
        self.start_at
    }

    /// Nothing left to do (or nothing started).
    pub(super) fn is_idle(&self) -> bool {
        self.done || !self.started
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "goals left {:?}, victim {:?}, data deletion pending {}",
            self.goals,
            self.victim.map(|node| node + 1),
            self.removed.is_some()
        )
    }
}

/// A request from the operator to one replica.
#[derive(Clone, Copy, Debug)]
pub(super) enum AdminRequest {
    Change(MembershipChange),
    Transfer(u64),
}

/// Who a request in flight belongs to.
pub(super) struct AdminRecord {
    provider: usize,
    /// The operator waits for this one; a repeated request is only counted.
    primary: bool,
}

impl World<'_> {
    /// The operator's turn for `provider`'s group: start the spare, delete a removed replica's
    /// data once due, and take the next step of the plan if no request is in flight.
    pub(super) fn operate(&mut self, provider: usize) {
        if self.plans[provider].done {
            return;
        }
        if !self.plans[provider].started {
            self.plans[provider].started = true;
            let spare = self.plans[provider].spare;
            self.start_spare(spare);
        }
        self.decommission_when_due(provider);
        let waiting = self.plans[provider]
            .in_flight
            .is_some_and(|(_, deadline)| self.now < deadline);
        if !waiting {
            self.plans[provider].in_flight = None;
            self.next_step(provider);
        }
        let plan = &mut self.plans[provider];
        if plan.goals.is_empty() && plan.removed.is_none() && plan.in_flight.is_none() {
            plan.done = true;
            self.trace.record(
                self.now,
                Event::Fault {
                    kind: "membership-done",
                    detail: provider as u64,
                },
            );
            return;
        }
        let delay = self.rng.gen_range(100..=400);
        self.schedule(delay, Ev::Operator(provider));
    }

    fn start_spare(&mut self, spare: usize) {
        self.dormant[spare] = false;
        self.trace.record(
            self.now,
            Event::Fault {
                kind: "start-spare",
                detail: spare as u64 + 1,
            },
        );
        self.restart(spare);
        let first_tick = self.rng.gen_range(0..tick_ms(spare));
        self.schedule(first_tick, Ev::Tick(spare));
    }

    /// The replica that leads `provider`'s group as a voter (the highest term if several
    /// believe so), with what it reports.
    fn operator_leader(&self, provider: usize) -> Option<(usize, LeaderView)> {
        group_nodes(provider)
            .iter()
            .filter(|&&node| !self.dormant[node])
            .filter_map(|&node| self.replicas[node].leader_view().map(|view| (node, view)))
            .max_by_key(|(node, view)| (view.term, *node))
    }

    fn next_step(&mut self, provider: usize) {
        let Some((leader, view)) = self.operator_leader(provider) else {
            return;
        };
        let Some(conf) = self.replicas[leader].conf_state().cloned() else {
            return;
        };
        while let Some(&goal) = self.plans[provider].goals.front() {
            let request = match goal {
                Goal::AddSpare => self.add_spare(provider, &conf),
                Goal::PromoteSpare => self.promote_spare(provider, &conf, &view),
                Goal::RemoveOriginal => self.remove_original(provider, leader, &conf, &view),
            };
            match request {
                Step::Done => {
                    self.plans[provider].goals.pop_front();
                }
                Step::Wait => return,
                Step::Send(request) => return self.send_admin(provider, leader, request),
            }
        }
    }

    fn add_spare(&mut self, provider: usize, conf: &ConfState) -> Step {
        let spare = self.plans[provider].spare as u64 + 1;
        if is_member(conf, spare) {
            self.faults.learners_added += 1;
            return Step::Done;
        }
        Step::Send(AdminRequest::Change(MembershipChange::AddLearner(spare)))
    }

    fn promote_spare(&mut self, provider: usize, conf: &ConfState, view: &LeaderView) -> Step {
        let spare = self.plans[provider].spare as u64 + 1;
        if conf.voters.contains(&spare) {
            self.faults.learners_promoted += 1;
            return Step::Done;
        }
        if !conf.learners.contains(&spare) {
            return Step::Wait;
        }
        // Placement's test (`caught_up` in `node/src/cluster_ops/placement.rs`).
        let caught_up = view
            .progress
            .get(&spare)
            .is_some_and(|&matched| matched + CATCH_UP_SLACK >= view.commit);
        // An impatient operator: the leader's rule refuses a learner that has not caught up.
        if caught_up || self.rng.gen_range(0..4) == 0 {
            return Step::Send(AdminRequest::Change(MembershipChange::Promote(spare)));
        }
        Step::Wait
    }

    fn remove_original(
        &mut self,
        provider: usize,
        leader: usize,
        conf: &ConfState,
        view: &LeaderView,
    ) -> Step {
        let originals: Vec<usize> = group_nodes(provider)[..ORIGINAL_VOTERS]
            .iter()
            .copied()
            .filter(|&node| conf.voters.contains(&(node as u64 + 1)))
            .collect();
        let victim = match self.plans[provider].victim {
            Some(victim) => victim,
            None => {
                let plan = &self.plans[provider];
                let others: Vec<usize> = originals
                    .iter()
                    .copied()
                    .filter(|&node| node != leader)
                    .collect();
                let victim =
                    if (plan.remove_leader && originals.contains(&leader)) || others.is_empty() {
                        leader
                    } else {
                        others[self.rng.gen_range(0..others.len())]
                    };
                let plan = &mut self.plans[provider];
                plan.victim = Some(victim);
                plan.victim_led = victim == leader;
                self.trace.record(
                    self.now,
                    Event::Fault {
                        kind: "victim",
                        detail: victim as u64 + 1,
                    },
                );
                victim
            }
        };
        let id = victim as u64 + 1;
        if !is_member(conf, id) {
            self.faults.voters_removed += 1;
            if self.plans[provider].victim_led {
                self.faults.leaders_removed += 1;
            }
            let lag = self.rng.gen_range(1_000..=5_000);
            self.plans[provider].removed = Some((self.now, self.now + lag));
            return Step::Done;
        }
        // No removal below quorum: the voters left still form a quorum of the original group.
        if conf.voters.len() <= ORIGINAL_VOTERS / 2 + 1 && conf.voters.contains(&id) {
            return Step::Wait;
        }
        if victim == leader {
            // The product refuses to remove the leader: hand leadership over first.
            let target = conf
                .voters
                .iter()
                .filter(|&&voter| voter != id)
                .filter_map(|voter| view.progress.get(voter).map(|matched| (*matched, *voter)))
                .max();
            return match target {
                Some((_, to)) => Step::Send(AdminRequest::Transfer(to)),
                None => Step::Wait,
            };
        }
        let caught_up = view
            .progress
            .get(&id)
            .is_some_and(|&matched| matched + CATCH_UP_SLACK >= view.commit);
        if self.replicas[victim].is_up() && !caught_up {
            return Step::Wait;
        }
        Step::Send(AdminRequest::Change(MembershipChange::Remove(id)))
    }

    fn send_admin(&mut self, provider: usize, node: usize, request: AdminRequest) {
        let copies = match request {
            // A retrying operator now and then sends a change twice.
            AdminRequest::Change(_) if self.rng.gen_range(0..6) == 0 => 2,
            _ => 1,
        };
        for copy in 0..copies {
            let id = self.next_admin;
            self.next_admin += 1;
            let primary = copy == 0;
            self.admin_requests
                .insert(id, AdminRecord { provider, primary });
            if primary {
                self.plans[provider].in_flight = Some((id, self.now + ADMIN_TIMEOUT_MS));
            }
            let (action, target) = match request {
                AdminRequest::Change(MembershipChange::AddLearner(node)) => ("add-learner", node),
                AdminRequest::Change(MembershipChange::Promote(node)) => ("promote", node),
                AdminRequest::Change(MembershipChange::Remove(node)) => ("remove", node),
                AdminRequest::Transfer(to) => ("transfer-leader", to),
            };
            self.trace.record(
                self.now,
                Event::Admin {
                    id,
                    node: node as u64 + 1,
                    action,
                    target,
                },
            );
            let latency = self.client_latency() + copy * self.rng.gen_range(1..=20);
            self.schedule(latency, Ev::AdminArrives { node, id, request });
        }
    }

    pub(super) fn admin_arrives(&mut self, node: usize, id: AdminId, request: AdminRequest) {
        let mut out = Outbox::default();
        match request {
            AdminRequest::Change(change) => {
                self.replicas[node].change_members(id, change, &mut self.trace, self.now, &mut out)
            }
            AdminRequest::Transfer(to) => {
                self.replicas[node].transfer_leader(id, to, &mut self.trace, self.now, &mut out)
            }
        }
        self.dispatch(node, out);
    }

    pub(super) fn on_change_answer(
        &mut self,
        id: AdminId,
        result: Result<ConfState, MembershipError>,
    ) {
        let outcome = match &result {
            Ok(_) => "applied",
            Err(MembershipError::Dropped) => {
                self.coverage.membership_dropped += 1;
                "dropped"
            }
            Err(MembershipError::Stopped | MembershipError::Busy) => "unavailable",
            Err(refused) => {
                self.coverage.membership_refused += 1;
                match refused {
                    MembershipError::LearnerBehind(_) => {
                        self.coverage.learners_behind_refused += 1;
                        "refused: learner behind"
                    }
                    MembershipError::ChangeInProgress => {
                        self.coverage.changes_in_progress_refused += 1;
                        "refused: change in progress"
                    }
                    MembershipError::NotLeader => "refused: not leader",
                    _ => "refused",
                }
            }
        };
        self.admin_answered(id, outcome);
    }

    pub(super) fn on_transfer_answer(&mut self, id: AdminId, result: Result<(), TransferError>) {
        let outcome = match result {
            Ok(()) => {
                self.coverage.leader_transfers += 1;
                "transferred"
            }
            Err(TransferError::TimedOut { .. }) => "timed-out",
            Err(_) => "refused",
        };
        self.admin_answered(id, outcome);
    }

    fn admin_answered(&mut self, id: AdminId, outcome: &'static str) {
        self.trace
            .record(self.now, Event::AdminOutcome { id, outcome });
        let Some(record) = self.admin_requests.remove(&id) else {
            return;
        };
        let plan = &mut self.plans[record.provider];
        if record.primary && plan.in_flight.is_some_and(|(waiting, _)| waiting == id) {
            plan.in_flight = None;
        }
    }

    /// Stops the removed replica and deletes its data once it heard of its removal (or is
    /// down, or waited long enough) and the operator's lag passed.
    fn decommission_when_due(&mut self, provider: usize) {
        let plan = &self.plans[provider];
        let (Some((seen_at, not_before)), Some(victim)) = (plan.removed, plan.victim) else {
            return;
        };
        let replica = &self.replicas[victim];
        let heard = !replica.is_up() || replica.is_removed();
        if self.now < not_before || !(heard || self.now >= seen_at + DECOMMISSION_WAIT_MS) {
            return;
        }
        self.plans[provider].removed = None;
        let mut out = Outbox::default();
        self.replicas[victim].crash(&mut out);
        self.replicas[victim].wipe();
        self.dormant[victim] = true;
        self.incarnations[victim] += 1;
        self.crash_on_sync[victim] = false;
        self.checked[victim] = 0;
        self.faults.removed_data_deleted += 1;
        self.trace.record(
            self.now,
            Event::Fault {
                kind: "delete-removed",
                detail: victim as u64 + 1,
            },
        );
        self.dispatch(victim, out);
        self.audit_all(provider);
    }

    /// A replica of `provider`'s group applied a conf change at `index`: the latest one any
    /// replica applied is the group's configuration, and everything acknowledged is audited
    /// against it.
    pub(super) fn observe_configuration(&mut self, provider: usize, index: u64, conf: ConfState) {
        if index <= self.configs[provider].0 {
            return;
        }
        self.trace.record(
            self.now,
            Event::Configuration {
                provider: provider as u64,
                index,
                voters: conf.voters.clone(),
                learners: conf.learners.clone(),
            },
        );
        self.configs[provider] = (index, conf);
        self.audit_all(provider);
    }

    /// Entries acknowledged by a replica of `provider`'s group, audited at once.
    pub(super) fn on_acknowledged(&mut self, provider: usize, entries: &[(u64, u64)]) {
        for &(index, term) in entries {
            self.acked_entries[provider].push((index, term));
            self.audit(provider, index, term);
        }
    }

    pub(super) fn audit_all(&mut self, provider: usize) {
        for position in 0..self.acked_entries[provider].len() {
            let (index, term) = self.acked_entries[provider][position];
            self.audit(provider, index, term);
        }
    }

    fn audit(&mut self, provider: usize, index: u64, term: u64) {
        self.coverage.durability_audits += 1;
        if self.lost_entries.contains(&(provider, index)) {
            return;
        }
        let voters = &self.configs[provider].1.voters;
        let holders: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|&id| index_of(id).is_some_and(|node| self.replicas[node].holds(index, term)))
            .collect();
        if survives_minority_loss(voters.len(), holders.len()) {
            return;
        }
        let detail = format!(
            "entry {index} (term {term}) of the {} group, acknowledged, is durable on {holders:?} of voters {voters:?}",
            if provider == 0 { "hub" } else { "follower" },
        );
        self.lost_entries.insert((provider, index));
        self.checker.violation(ViolationKind::QuorumLost, detail);
    }

    /// The nodes of `provider`'s configuration (voters and learners).
    pub(super) fn members(&self, provider: usize) -> Vec<usize> {
        let conf = &self.configs[provider].1;
        conf.voters
            .iter()
            .chain(&conf.learners)
            .filter_map(|&id| index_of(id))
            .collect()
    }

    /// End of run: every plan finished, everything acknowledged durable enough.
    pub(super) fn finish_membership(&mut self) {
        for provider in 0..PROVIDERS {
            self.audit_all(provider);
            let plan = &self.plans[provider];
            if plan.started && !plan.done {
                let detail = format!(
                    "the {} group's membership plan did not finish: {}",
                    if provider == 0 { "hub" } else { "follower" },
                    plan.describe()
                );
                self.checker
                    .violation(ViolationKind::MembershipStuck, detail);
            }
        }
    }

    /// Counts a request or read that reached a replica removed from its group.
    pub(super) fn reached_removed(&mut self, node: usize) -> bool {
        let removed = self.replicas[node].is_removed();
        if removed {
            self.coverage.removed_replica_redirects += 1;
        }
        removed
    }
}

/// What a plan step wants now.
enum Step {
    /// The goal is reached.
    Done,
    /// Not yet possible (a learner catching up, a voter to remove behind).
    Wait,
    Send(AdminRequest),
}

/// The keys of entries already reported lost, so each is reported once.
pub(super) type LostEntries = BTreeSet<(usize, u64)>;

/// Per provider: the original voters are its first three nodes, the spare the fourth.
pub(super) const ORIGINAL_VOTERS: usize = 3;
/// A member whose matched index is at most this many entries behind the leader's commit is
/// caught up (`CATCH_UP_SLACK` in `node/src/cluster_ops/placement.rs`).
const CATCH_UP_SLACK: u64 = 64;
/// How long the operator waits for a removed replica to hear of its removal.
const DECOMMISSION_WAIT_MS: u64 = 3_000;
/// How long the operator waits for an answer before planning again.
const ADMIN_TIMEOUT_MS: u64 = 5_000;
