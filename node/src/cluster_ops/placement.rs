//! Where replicas should live, and the next membership step towards it: the placement
//! driver's core. Sans-IO (STYLE.md P1): a [`View`] of the registry and of what each shard's
//! leader reports goes in, a [`Plan`] comes out; the shell (`driver.rs`) gathers the view,
//! runs at most one step at a time and plans again from fresh reports.
//!
//! What placement wants, for every shard (ARCHITECTURE.md "Cluster"):
//! - the shard's **eligible** nodes: the Active nodes, and where the shard is constrained to a
//!   set of regions (data residency, issue 9: [`View::residency`]) only those whose locality's
//!   `region` is one of them. Nothing is ever added outside them, whatever else is missing;
//! - `target = min(R, eligible nodes)` **voters**, all on eligible nodes (R is the registry's
//!   replication factor). A constrained shard whose regions have no Active node keeps what it
//!   has (its voters cannot be removed for nothing) and counts as pending;
//! - with `cluster.replicas = "all"`, every other eligible node a **learner**: learners
//!   receive the log without voting, so commits wait for R nodes however many there are;
//!   with `"r"` ([`View::partial`], "Replicas on R nodes" below) no other member at all,
//!   except in the shards held everywhere ([`View::everywhere`]: the metadata shard);
//! - nothing on Decommissioning or Decommissioned nodes, on nodes the registry does not name,
//!   or outside a shard's regions ("leaving" members);
//! - voters **spread over localities** (issue 9): a node's locality is ordered tiers
//!   (`region=eu,zone=eu-1`); a voter set's [`Spread`] counts the distinct tier prefixes at
//!   every depth (distinct regions, then distinct region+zone pairs, ...), compared
//!   lexicographically, and placement makes it as large as the eligible nodes allow: voters
//!   in as many regions as possible, then never two in one zone while a zone without one has
//!   an eligible node. Nodes without a locality share one (empty) domain;
//! - voters spread evenly over nodes as far as the spread allows: no move that keeps the
//!   spread takes a voter from a node holding two more than another;
//! - **leaders** in the preferred region (`cluster.leader_region`, [`View::leader_region`])
//!   wherever a shard has a voter there, and spread evenly over the nodes that may lead: the
//!   leadership counts are balanced as far as the shards' voters allow (no chain of transfers
//!   would take a leadership from a node leading two more than another).
//!
//! The steps, most urgent first (one rule is tried on every shard before the next rule):
//! 1. a shard with fewer than `target` eligible voters promotes a caught-up eligible learner
//!    (the one that adds the most spread; then not draining; then the least loaded node);
//! 2. a voter on a leaving node is removed once the shard has `target` eligible voters, after
//!    its leadership is transferred if it leads;
//! 3. an eligible node that is no member of a shard is added as a learner (it catches up by
//!    snapshot);
//! 4. a shard with more than `target` eligible voters removes one: the one whose removal
//!    leaves the most spread, then the most loaded (a new cluster of more than R nodes starts
//!    with every node a voter; the other rules promote before this one demotes); rule 3 then
//!    adds the node back as a learner;
//! 5. a learner on a leaving node is removed;
//! 6. a shard whose voters could be spread wider by swapping one voter for one of its learners
//!    promotes that learner; rule 4 then removes the voter the swap replaces;
//! 7. once every shard is as rules 1 to 5 want it, a node holding two voters more than another
//!    hands one over: the less loaded node's learner is promoted in a shard the other votes in
//!    where the swap keeps the spread, and rule 4 removes a voter at least as loaded;
//! 8. a Decommissioning node that is no member of any shard is marked Decommissioned;
//! 9. once nothing else is left, leaderships move, one transfer at a time: to the preferred
//!    region where a shard has a voter there, then from nodes leading more to nodes leading
//!    fewer (along the shortest chain of shards whose voters could lead, the last transfer of
//!    the chain first). Only leaderships of shards that are not [`View::busy`] move: requests
//!    arriving during a hand-over are refused and those in flight wait for the next leader's
//!    log, so balance waits for a quiet moment of each shard.
//!
//! **Replicas on R nodes** (`cluster.replicas = "r"`, issue 4 build item 1): learners are only
//! on their way to vote. Rule 3 adds one only to a shard short of voters with no live learner
//! on its way (on the node adding the most spread, then not draining, then the least loaded);
//! rule 6 adds one on the node a swap would widen the spread with, and rule 7 on the less
//! loaded node of a swap (one shard at a time), then promotes it once caught up, and rule 4
//! removes the voter it replaces, which is then gone from the shard; and
//! 10. once every shard is shaped, a learner that neither rule 6 nor rule 7 wants is removed.
//!
//! A step needs a caught-up target (its matched index within [`CATCH_UP_SLACK`] entries of the
//! leader's commit) to promote it or to make it the leader, and a removed node that is up is
//! removed only once it is caught up too, so that it hears of its removal (the cluster crate's
//! `membership` docs). Nodes that do not answer are never made learners, voters or leaders.
//! Shards whose leader did not report are left alone this round.
//!
//! Every rule moves a measure the others do not undo (rules 1 to 5 the shape of each shard,
//! rule 6 a shard's spread, rule 7 the sum of squared voter counts at an equal spread, rule 9
//! the sum of squared leadership counts or, at an equal sum, the length of the chain), so
//! placement reaches a fixpoint after each change of the cluster; the seeded simulation in
//! `placement_sim.rs` checks that, and the goals above at every fixpoint.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mimid_actors::cluster_meta::{Locality, NodeState};
use mimid_cluster::{NodeId, ShardId};

/// A member whose matched index is at most this many entries behind the leader's commit is
/// caught up.
pub(crate) const CATCH_UP_SLACK: u64 = 64;

/// What the planner knows this round.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// The registry.
    pub nodes: BTreeMap<NodeId, NodeState>,
    /// The registry's localities (nodes absent: none).
    pub localities: BTreeMap<NodeId, Locality>,
    /// The registry's replication factor.
    pub replication_factor: usize,
    /// Number of shards.
    pub shard_count: u64,
    /// Each shard as its leader reported it; shards whose leader did not report are absent.
    pub shards: BTreeMap<ShardId, ShardView>,
    /// Nodes that answered this round (this node included).
    pub live: BTreeSet<NodeId>,
    /// Nodes that said they drain.
    pub draining: BTreeSet<NodeId>,
    /// Shards whose replicas must stay in these regions (data residency); shards absent are
    /// unconstrained.
    pub residency: BTreeMap<ShardId, BTreeSet<String>>,
    /// The region leaders should be in (`cluster.leader_region`).
    pub leader_region: Option<String>,
    /// Shards written to lately (the shell's judgement): rule 9 moves none of their
    /// leaderships, since requests arriving during the hand-over are refused (`NotLeader`,
    /// then a 503 when no leader is known yet), and those in flight on the old leader wait for
    /// the next leader's log. Removals (rules 2 and 4) transfer regardless.
    pub busy: BTreeSet<ShardId>,
    /// `cluster.replicas = "r"`: shards live on their voters only (module docs, "Replicas on
    /// R nodes"); `false` (`"all"`): every eligible node holds every shard.
    pub partial: bool,
    /// Shards every eligible node holds even when `partial` (the metadata shard).
    pub everywhere: BTreeSet<ShardId>,
}

/// One shard as its leader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ShardView {
    pub shard: ShardId,
    pub leader: NodeId,
    pub commit: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Every member's matched index.
    pub progress: BTreeMap<NodeId, u64>,
}

/// One membership step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    AddLearner {
        shard: ShardId,
        node: NodeId,
    },
    Promote {
        shard: ShardId,
        node: NodeId,
    },
    /// Hand the leadership of `shard` from its leader `from` to `to`.
    TransferLeader {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
    Remove {
        shard: ShardId,
        node: NodeId,
    },
    MarkDecommissioned {
        node: NodeId,
    },
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The step to take now; `None` when placement is as wanted or every step waits (a learner
    /// catching up, a leader not reporting).
    pub next: Option<Step>,
    /// What is not yet as placement wants it (`mimid_placement_pending`): missing learners,
    /// members on leaving nodes, voters missing or in excess, shards whose voters could spread
    /// wider, voters above the even share while a move is left or other work is pending,
    /// emptied Decommissioning nodes not yet marked, leaderships outside the preferred region
    /// that could move there, and one more while a balancing transfer is left.
    pub pending: u64,
}

/// How widely a set of nodes spreads over localities: for each tier depth from 1 to the
/// deepest locality in the view, the number of distinct tier prefixes of that depth among the
/// nodes (distinct regions, then distinct region+zone pairs, ...). Compared lexicographically:
/// more regions first, then more zones.
pub(crate) type Spread = Vec<usize>;

/// Voters per Active node over the reported shards (Active nodes without any: 0).
type Loads = BTreeMap<NodeId, usize>;

/// One of the per-shard rules (module docs): the step it wants for a shard, if any.
type Rule = fn(&View, &ShardView, &Loads) -> Option<Step>;

/// The next step towards the placement the module docs describe.
pub(crate) fn plan(view: &View) -> Plan {
    let loads = view.loads();
    let rules: [Rule; 6] = [
        promote_for_missing_voter,
        move_off_leaving_voter,
        add_missing_learner,
        remove_excess_voter,
        remove_leaving_learner,
        widen_spread,
    ];
    let settled = view.settled();
    let rebalanced = settled.then(|| rebalance(view, &loads)).flatten();
    let next = rules
        .iter()
        .find_map(|rule| {
            view.shards
                .values()
                .find_map(|shard| rule(view, shard, &loads))
        })
        .or(rebalanced)
        .or_else(|| {
            settled
                .then(|| {
                    view.shards
                        .values()
                        .find_map(|shard| remove_spare_learner(view, shard, &loads))
                })
                .flatten()
        })
        .or_else(|| mark_decommissioned(view))
        .or_else(|| settled.then(|| move_leadership(view)).flatten());
    let mut pending = view.pending();
    if rebalanced.is_some() {
        pending += view.above_share(&loads).max(1);
    } else if !settled {
        pending += view.above_share(&loads);
    }
    if settled && rebalanced.is_none() && balance_leaders(view).is_some() {
        pending += 1;
    }
    Plan { next, pending }
}

impl View {
    fn is_active(&self, node: NodeId) -> bool {
        self.nodes.get(&node) == Some(&NodeState::Active)
    }

    fn is_live(&self, node: NodeId) -> bool {
        self.live.contains(&node)
    }

    fn active(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, state)| **state == NodeState::Active)
            .map(|(id, _)| *id)
    }

    fn region(&self, node: NodeId) -> Option<&str> {
        self.localities.get(&node).and_then(Locality::region)
    }

    /// Whether `node` may hold a replica of `shard`: Active, and in one of the shard's regions
    /// when it has any.
    fn eligible(&self, shard: ShardId, node: NodeId) -> bool {
        self.is_active(node)
            && self.residency.get(&shard).is_none_or(|regions| {
                self.region(node)
                    .is_some_and(|region| regions.contains(region))
            })
    }

    /// Whether every eligible node holds `shard` (not `partial`, or a shard held everywhere).
    fn full(&self, shard: ShardId) -> bool {
        !self.partial || self.everywhere.contains(&shard)
    }

    fn eligible_nodes(&self, shard: ShardId) -> impl Iterator<Item = NodeId> + '_ {
        self.active()
            .filter(move |&node| self.eligible(shard, node))
    }

    /// Voters `shard` should have on eligible nodes.
    fn target(&self, shard: ShardId) -> usize {
        self.replication_factor
            .min(self.eligible_nodes(shard).count())
    }

    /// The deepest locality's number of tiers.
    fn depth(&self) -> usize {
        self.localities
            .values()
            .map(|locality| locality.tiers().len())
            .max()
            .unwrap_or(0)
    }

    /// The [`Spread`] of `nodes`.
    pub(crate) fn spread(&self, nodes: impl IntoIterator<Item = NodeId>) -> Spread {
        let nodes: Vec<NodeId> = nodes.into_iter().collect();
        let none: &[(String, String)] = &[];
        (1..=self.depth())
            .map(|depth| {
                nodes
                    .iter()
                    .map(|node| {
                        let tiers = self.localities.get(node).map_or(none, |l| l.tiers());
                        &tiers[..depth.min(tiers.len())]
                    })
                    .collect::<BTreeSet<_>>()
                    .len()
            })
            .collect()
    }

    fn loads(&self) -> Loads {
        let mut loads: Loads = self.active().map(|node| (node, 0)).collect();
        for shard in self.shards.values() {
            for voter in &shard.voters {
                if let Some(load) = loads.get_mut(voter) {
                    *load += 1;
                }
            }
        }
        loads
    }

    fn leaderships(&self, node: NodeId) -> usize {
        self.shards
            .values()
            .filter(|shard| shard.leader == node)
            .count()
    }

    /// Whether rules 1 to 5 want nothing of `shard` (a constrained shard without an eligible
    /// node counts as shaped: nothing can be done for it).
    fn shaped(&self, shard: &ShardView) -> bool {
        let target = self.target(shard.shard);
        target == 0
            || (shard.members().all(|node| self.eligible(shard.shard, node))
                && shard.voters.len() == target
                && (!self.full(shard.shard)
                    || self
                        .eligible_nodes(shard.shard)
                        .filter(|&node| self.is_live(node))
                        .all(|node| shard.is_member(node))))
    }

    /// Every shard reported and is as rules 1 to 5 want it.
    fn settled(&self) -> bool {
        let all_reported = (0..self.shard_count).all(|shard| self.shards.contains_key(&shard));
        all_reported && self.shards.values().all(|shard| self.shaped(shard))
    }

    /// The voter of `shard` other than `leaving` to hand its leadership to: live, eligible,
    /// not draining, caught up if one is; in the preferred region if one is; the most
    /// advanced, then the one leading fewest shards.
    fn transfer_target(&self, shard: &ShardView, leaving: NodeId) -> Option<NodeId> {
        shard
            .voters
            .iter()
            .copied()
            .filter(|&node| {
                node != leaving && self.eligible(shard.shard, node) && self.is_live(node)
            })
            .min_by_key(|&node| {
                (
                    self.draining.contains(&node),
                    !shard.is_caught_up(node),
                    !self.preferred(node),
                    std::cmp::Reverse(shard.matched(node)),
                    self.leaderships(node),
                    node,
                )
            })
    }

    /// Whether `node` is in the preferred leader region (every node is when there is none).
    fn preferred(&self, node: NodeId) -> bool {
        self.leader_region
            .as_deref()
            .is_none_or(|region| self.region(node) == Some(region))
    }

    /// The learner of `shard` to promote: eligible, live and caught up; the one adding the
    /// most spread, then one that does not drain, then the least loaded.
    fn promotion_target(&self, shard: &ShardView, loads: &Loads) -> Option<NodeId> {
        let voters: Vec<NodeId> = shard.eligible_voters(self).collect();
        shard
            .learners
            .iter()
            .copied()
            .filter(|&node| self.eligible(shard.shard, node) && self.is_live(node))
            .filter(|&node| shard.is_caught_up(node))
            .min_by_key(|&node| {
                (
                    std::cmp::Reverse(self.spread(voters.iter().copied().chain([node]))),
                    self.draining.contains(&node),
                    loads.get(&node).copied().unwrap_or(0),
                    node,
                )
            })
    }

    /// Of `voters` (one more than the target), the one to remove: the one whose removal leaves
    /// the most spread, then the most loaded, then one that does not lead, then the highest id.
    fn excess_victim(&self, shard: &ShardView, voters: &[NodeId], loads: &Loads) -> NodeId {
        *voters
            .iter()
            .max_by_key(|&&node| {
                let rest = voters.iter().copied().filter(|&other| other != node);
                (
                    self.spread(rest),
                    loads.get(&node).copied().unwrap_or(0),
                    node != shard.leader,
                    node,
                )
            })
            .expect("a shard in excess has voters")
    }

    /// `Remove(node)` once it can hear of it (caught up, or not answering anyway).
    fn removal(&self, shard: &ShardView, node: NodeId) -> Option<Step> {
        (!self.is_live(node) || shard.is_caught_up(node)).then_some(Step::Remove {
            shard: shard.shard,
            node,
        })
    }

    /// The best spread `shard`'s voters reach by swapping one of them for one of the eligible
    /// nodes in `candidates`, with the candidate that reaches it; `None` when no swap widens it.
    fn widening(
        &self,
        shard: &ShardView,
        candidates: impl Iterator<Item = NodeId>,
    ) -> Option<(Spread, NodeId)> {
        let current = self.spread(shard.voters.iter().copied());
        candidates
            .filter(|&node| !shard.voters.contains(&node))
            .filter_map(|node| {
                let best = shard
                    .voters
                    .iter()
                    .map(|&out| {
                        let rest = shard.voters.iter().copied().filter(|&v| v != out);
                        self.spread(rest.chain([node]))
                    })
                    .max()?;
                (best > current).then_some((best, node))
            })
            .max_by(|(a, _), (b, _)| a.cmp(b))
    }

    fn pending(&self) -> u64 {
        let mut pending = 0;
        for shard in self.shards.values() {
            let target = self.target(shard.shard);
            let eligible_voters = shard.eligible_voters(self).count();
            let missing = if self.full(shard.shard) {
                self.eligible_nodes(shard.shard)
                    .filter(|&node| !shard.is_member(node))
                    .count()
            } else if eligible_voters >= target {
                // Learners are transient: each one left is a step to take.
                shard
                    .learners
                    .iter()
                    .filter(|&&node| self.eligible(shard.shard, node))
                    .count()
            } else {
                0
            };
            let leaving = shard
                .members()
                .filter(|&node| !self.eligible(shard.shard, node))
                .count();
            pending += missing + leaving + eligible_voters.abs_diff(target);
            let shaped = shard.voters.len() == target
                && shard.voters.iter().all(|&v| self.eligible(shard.shard, v));
            if shaped
                && self
                    .widening(shard, self.eligible_nodes(shard.shard))
                    .is_some()
            {
                pending += 1;
            }
            let movable_to_preferred = self.leader_candidates(shard).is_some_and(|candidates| {
                !self.preferred(shard.leader) && candidates.iter().any(|&n| self.preferred(n))
            });
            if movable_to_preferred {
                pending += 1;
            }
        }
        pending += self.emptied_decommissioning().count();
        pending as u64
    }

    /// Voters above the even share, summed over nodes.
    fn above_share(&self, loads: &Loads) -> u64 {
        if loads.is_empty() {
            return 0;
        }
        let total: usize = loads.values().sum();
        let share = total.div_ceil(loads.len());
        loads
            .values()
            .map(|&load| load.saturating_sub(share) as u64)
            .sum()
    }

    /// Decommissioning nodes that no reported shard has as a member, once every shard
    /// reported.
    fn emptied_decommissioning(&self) -> impl Iterator<Item = NodeId> + '_ {
        let all_reported = (0..self.shard_count).all(|shard| self.shards.contains_key(&shard));
        self.nodes
            .iter()
            .filter(move |(_, state)| all_reported && **state == NodeState::Decommissioning)
            .map(|(id, _)| *id)
            .filter(|&node| self.shards.values().all(|shard| !shard.is_member(node)))
    }

    /// The voters that may lead `shard`: eligible, live, not draining, caught up; only those
    /// in the preferred region when one of them is. `None` when no voter may.
    fn leader_candidates(&self, shard: &ShardView) -> Option<BTreeSet<NodeId>> {
        let able: BTreeSet<NodeId> = shard
            .voters
            .iter()
            .copied()
            .filter(|&node| {
                self.eligible(shard.shard, node)
                    && self.is_live(node)
                    && !self.draining.contains(&node)
                    && (node == shard.leader || shard.is_caught_up(node))
            })
            .collect();
        let preferred: BTreeSet<NodeId> = able
            .iter()
            .copied()
            .filter(|&node| self.preferred(node))
            .collect();
        let candidates = if preferred.is_empty() {
            able
        } else {
            preferred
        };
        (!candidates.is_empty()).then_some(candidates)
    }
}

impl ShardView {
    fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }

    fn is_member(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    fn matched(&self, node: NodeId) -> u64 {
        self.progress.get(&node).copied().unwrap_or(0)
    }

    fn is_caught_up(&self, node: NodeId) -> bool {
        self.progress
            .get(&node)
            .is_some_and(|&matched| matched.saturating_add(CATCH_UP_SLACK) >= self.commit)
    }

    fn eligible_voters<'a>(&'a self, view: &'a View) -> impl Iterator<Item = NodeId> + 'a {
        self.voters
            .iter()
            .copied()
            .filter(|&node| view.eligible(self.shard, node))
    }
}

/// Rule 1.
fn promote_for_missing_voter(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if shard.eligible_voters(view).count() >= view.target(shard.shard) {
        return None;
    }
    let node = view.promotion_target(shard, loads)?;
    Some(Step::Promote {
        shard: shard.shard,
        node,
    })
}

/// Rule 2.
fn move_off_leaving_voter(view: &View, shard: &ShardView, _: &Loads) -> Option<Step> {
    let leaving = shard
        .voters
        .iter()
        .copied()
        .find(|&node| !view.eligible(shard.shard, node))?;
    let target = view.target(shard.shard);
    if target == 0 || shard.eligible_voters(view).count() < target {
        // Rule 1 promotes a replacement first (or waits for one to catch up); with nowhere to
        // go, the voter stays.
        return None;
    }
    if leaving == shard.leader {
        let to = view.transfer_target(shard, leaving)?;
        return Some(Step::TransferLeader {
            shard: shard.shard,
            from: leaving,
            to,
        });
    }
    view.removal(shard, leaving)
}

/// Rule 3. With `partial`, only a shard short of voters gets a learner (to promote), and
/// only while no live learner of it is on its way: on the node that adds the most spread,
/// then one that does not drain, then the least loaded.
fn add_missing_learner(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if !view.full(shard.shard) {
        let on_the_way = shard
            .learners
            .iter()
            .filter(|&&node| view.eligible(shard.shard, node) && view.is_live(node))
            .count();
        if shard.eligible_voters(view).count() + on_the_way >= view.target(shard.shard) {
            return None;
        }
        let voters: Vec<NodeId> = shard.eligible_voters(view).collect();
        let node = view
            .eligible_nodes(shard.shard)
            .filter(|&node| view.is_live(node) && !shard.is_member(node))
            .min_by_key(|&node| {
                (
                    std::cmp::Reverse(view.spread(voters.iter().copied().chain([node]))),
                    view.draining.contains(&node),
                    loads.get(&node).copied().unwrap_or(0),
                    node,
                )
            })?;
        return Some(Step::AddLearner {
            shard: shard.shard,
            node,
        });
    }
    let node = view
        .eligible_nodes(shard.shard)
        .find(|&node| view.is_live(node) && !shard.is_member(node))?;
    Some(Step::AddLearner {
        shard: shard.shard,
        node,
    })
}

/// Rule 4.
fn remove_excess_voter(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if shard
        .voters
        .iter()
        .any(|&node| !view.eligible(shard.shard, node))
    {
        return None;
    }
    if shard.voters.len() <= view.target(shard.shard) {
        return None;
    }
    let node = view.excess_victim(shard, &shard.voters, loads);
    if node == shard.leader {
        let to = view.transfer_target(shard, node)?;
        return Some(Step::TransferLeader {
            shard: shard.shard,
            from: node,
            to,
        });
    }
    view.removal(shard, node)
}

/// Rule 5.
fn remove_leaving_learner(view: &View, shard: &ShardView, _: &Loads) -> Option<Step> {
    let node = shard
        .learners
        .iter()
        .copied()
        .find(|&node| !view.eligible(shard.shard, node))?;
    Some(Step::Remove {
        shard: shard.shard,
        node,
    })
}

/// Rule 6: promote the learner that lets a swap widen the voters' spread the most (then the
/// least loaded one).
fn widen_spread(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if shard.voters.len() != view.target(shard.shard)
        || shard
            .voters
            .iter()
            .any(|&node| !view.eligible(shard.shard, node))
    {
        return None;
    }
    if !view.full(shard.shard) {
        return widen_spread_partial(view, shard, loads);
    }
    let candidates = shard.learners.iter().copied().filter(|&node| {
        view.eligible(shard.shard, node) && view.is_live(node) && shard.is_caught_up(node)
    });
    let (best, _) = view.widening(shard, candidates.clone())?;
    let node = candidates
        .filter(|&node| {
            view.widening(shard, std::iter::once(node))
                .is_some_and(|(spread, _)| spread == best)
        })
        .min_by_key(|&node| {
            (
                view.draining.contains(&node),
                loads.get(&node).copied().unwrap_or(0),
                node,
            )
        })?;
    Some(Step::Promote {
        shard: shard.shard,
        node,
    })
}

/// Rule 6 with `partial`: the widest swap over the live eligible learners and non-members;
/// promote a caught-up learner that reaches it, wait for one on its way, or add the best
/// non-member as a learner.
fn widen_spread_partial(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    let candidates: Vec<NodeId> = view
        .eligible_nodes(shard.shard)
        .filter(|&node| view.is_live(node) && !shard.voters.contains(&node))
        .collect();
    let (best, _) = view.widening(shard, candidates.iter().copied())?;
    let reaching: Vec<NodeId> = candidates
        .into_iter()
        .filter(|&node| {
            view.widening(shard, std::iter::once(node))
                .is_some_and(|(spread, _)| spread == best)
        })
        .collect();
    let pick = |nodes: &mut dyn Iterator<Item = NodeId>| {
        nodes.min_by_key(|&node| {
            (
                view.draining.contains(&node),
                loads.get(&node).copied().unwrap_or(0),
                node,
            )
        })
    };
    let learners = reaching
        .iter()
        .copied()
        .filter(|&n| shard.learners.contains(&n));
    if let Some(node) = pick(&mut learners.clone().filter(|&n| shard.is_caught_up(n))) {
        return Some(Step::Promote {
            shard: shard.shard,
            node,
        });
    }
    if learners.clone().next().is_some() {
        return None;
    }
    let node = pick(&mut reaching.iter().copied())?;
    Some(Step::AddLearner {
        shard: shard.shard,
        node,
    })
}

/// Whether rule 7 would swap voter `from` of `shard` for node `to` (a learner there, or with
/// `partial` a non-member): `from` holds at least two voters more than `to`, `to` may hold
/// the shard, the swap keeps the shard's spread, and rule 4 would then remove a voter at least
/// as loaded as `from` was above `to`.
fn rebalance_swap(view: &View, loads: &Loads, shard: &ShardView, from: NodeId, to: NodeId) -> bool {
    let from_load = loads.get(&from).copied().unwrap_or(0);
    let to_load = loads.get(&to).copied().unwrap_or(0);
    if from_load < to_load + 2
        || !shard.voters.contains(&from)
        || shard.voters.contains(&to)
        || !view.eligible(shard.shard, to)
        || !view.is_live(to)
        || view.draining.contains(&to)
    {
        return false;
    }
    let before = view.spread(shard.voters.iter().copied());
    let rest = shard.voters.iter().copied().filter(|&v| v != from);
    if view.spread(rest.chain([to])) < before {
        return false;
    }
    let mut grown = shard.voters.clone();
    grown.push(to);
    let mut after = loads.clone();
    *after.entry(to).or_default() += 1;
    let victim = view.excess_victim(shard, &grown, &after);
    victim != to && loads.get(&victim).copied().unwrap_or(0) >= to_load + 2
}

/// Rule 10, with `partial` once every shard is shaped: a learner that no promotion wants
/// (rule 6 would not widen with it, rule 7 would not swap it in) is removed: learners are
/// only on their way to vote.
fn remove_spare_learner(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if view.full(shard.shard) || shard.eligible_voters(view).count() < view.target(shard.shard) {
        return None;
    }
    let node = shard.learners.iter().copied().find(|&node| {
        let widens = view.is_live(node)
            && view.eligible(shard.shard, node)
            && view.widening(shard, std::iter::once(node)).is_some();
        let swaps = shard
            .voters
            .iter()
            .any(|&from| rebalance_swap(view, loads, shard, from, node));
        !widens && !swaps
    })?;
    Some(Step::Remove {
        shard: shard.shard,
        node,
    })
}

/// Rule 7: promote a less loaded node's learner where a node holding two voters more votes,
/// if the swap keeps the shard's spread and rule 4 will then remove a voter that loaded.
fn rebalance(view: &View, loads: &Loads) -> Option<Step> {
    let mut by_load: Vec<(NodeId, usize)> = loads.iter().map(|(&n, &l)| (n, l)).collect();
    by_load.sort_by_key(|&(node, load)| (load, node));
    let receivers: Vec<(NodeId, usize)> = by_load
        .iter()
        .copied()
        .filter(|&(node, _)| view.is_live(node) && !view.draining.contains(&node))
        .collect();
    for &(from, from_load) in by_load.iter().rev() {
        for &(to, to_load) in &receivers {
            if from_load < to_load + 2 {
                break;
            }
            if view.partial {
                // A learner swapped in is added for it (one shard at a time), caught up, then
                // promoted.
                let swaps: Vec<&ShardView> = view
                    .shards
                    .values()
                    .filter(|shard| !view.full(shard.shard))
                    .filter(|shard| rebalance_swap(view, loads, shard, from, to))
                    .collect();
                if let Some(shard) = swaps.iter().find(|shard| shard.learners.contains(&to)) {
                    return shard.is_caught_up(to).then_some(Step::Promote {
                        shard: shard.shard,
                        node: to,
                    });
                }
                let fresh = swaps
                    .iter()
                    .filter(|shard| !shard.is_member(to))
                    .min_by_key(|shard| (shard.leader == from, shard.shard));
                if let Some(shard) = fresh {
                    return Some(Step::AddLearner {
                        shard: shard.shard,
                        node: to,
                    });
                }
            }
            // A caught-up learner of `to` that rule 7 swaps in for `from` (`to` is live, not
            // draining and two voters lighter: `receivers` and the loop's bound say so).
            let step = view
                .shards
                .values()
                .filter(|shard| shard.learners.contains(&to) && shard.is_caught_up(to))
                .filter(|shard| rebalance_swap(view, loads, shard, from, to))
                // Where the loaded node does not lead, no transfer is needed afterwards.
                .min_by_key(|shard| (shard.leader == from, shard.shard))
                .map(|shard| Step::Promote {
                    shard: shard.shard,
                    node: to,
                });
            if step.is_some() {
                return step;
            }
        }
    }
    None
}

/// Rule 8.
fn mark_decommissioned(view: &View) -> Option<Step> {
    let node = view.emptied_decommissioning().next()?;
    Some(Step::MarkDecommissioned { node })
}

/// Rule 9: a leadership to the preferred region, else the next transfer that balances
/// leaderships.
fn move_leadership(view: &View) -> Option<Step> {
    let preferred = view.shards.values().find_map(|shard| {
        if view.busy.contains(&shard.shard) {
            return None;
        }
        let candidates = view.leader_candidates(shard)?;
        if candidates.contains(&shard.leader) || view.preferred(shard.leader) {
            return None;
        }
        let to = candidates
            .iter()
            .copied()
            .filter(|&node| view.preferred(node))
            .min_by_key(|&node| (view.leaderships(node), node))?;
        Some(Step::TransferLeader {
            shard: shard.shard,
            from: shard.leader,
            to,
        })
    });
    preferred.or_else(|| balance_leaders(view))
}

/// The next transfer that balances leaderships (module docs, rule 9): of every pair of nodes
/// `x`, `y` where `y` leads at least two shards fewer than `x` and a chain of transfers leads
/// from `x` to `y` (each link a shard led by one node that the next may lead), the shortest
/// chain, and its last link.
fn balance_leaders(view: &View) -> Option<Step> {
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    // Links: node -> (shard it leads, node that may lead it instead).
    let mut links: BTreeMap<NodeId, Vec<(ShardId, NodeId)>> = BTreeMap::new();
    for shard in view.shards.values() {
        *counts.entry(shard.leader).or_default() += 1;
        let Some(candidates) = view.leader_candidates(shard) else {
            continue;
        };
        if view.busy.contains(&shard.shard) {
            // Its leadership stays for now, but its voters may still take others.
            for &node in &candidates {
                counts.entry(node).or_default();
            }
            continue;
        }
        if !candidates.contains(&shard.leader) {
            // Rule 2, the drain or the preference moves it; it is no link of a chain.
            continue;
        }
        for &to in &candidates {
            counts.entry(to).or_default();
            if to != shard.leader {
                links
                    .entry(shard.leader)
                    .or_default()
                    .push((shard.shard, to));
            }
        }
    }
    let mut best: Option<(usize, Step)> = None;
    for (&start, &start_count) in &counts {
        if start_count < 2 {
            continue;
        }
        // Breadth first from `start`; the first node found leading two fewer ends the chain.
        let mut reached: BTreeMap<NodeId, (NodeId, ShardId)> = BTreeMap::new();
        let mut queue = VecDeque::from([(start, 0usize)]);
        let mut found = None;
        'search: while let Some((node, hops)) = queue.pop_front() {
            for &(shard, next) in links.get(&node).map_or(&[][..], Vec::as_slice) {
                if next == start || reached.contains_key(&next) {
                    continue;
                }
                reached.insert(next, (node, shard));
                if counts[&next] + 2 <= start_count {
                    found = Some((next, hops + 1));
                    break 'search;
                }
                queue.push_back((next, hops + 1));
            }
        }
        let Some((end, length)) = found else {
            continue;
        };
        if best
            .as_ref()
            .is_some_and(|(shortest, _)| *shortest <= length)
        {
            continue;
        }
        let (from, shard) = reached[&end];
        let step = Step::TransferLeader {
            shard,
            from,
            to: end,
        };
        best = Some((length, step));
    }
    best.map(|(_, step)| step)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: u64 = 1000;

    /// A view of `shards` given as (leader, voters, learners), everyone caught up, the nodes'
    /// states in `nodes`, all live.
    fn view(
        nodes: &[(NodeId, NodeState)],
        replication_factor: usize,
        shards: &[(NodeId, &[NodeId], &[NodeId])],
    ) -> View {
        let shards = shards
            .iter()
            .enumerate()
            .map(|(index, (leader, voters, learners))| {
                let shard = index as ShardId;
                let progress = voters
                    .iter()
                    .chain(learners.iter())
                    .map(|&node| (node, COMMIT))
                    .collect();
                let view = ShardView {
                    shard,
                    leader: *leader,
                    commit: COMMIT,
                    voters: voters.to_vec(),
                    learners: learners.to_vec(),
                    progress,
                };
                (shard, view)
            })
            .collect::<BTreeMap<_, _>>();
        View {
            nodes: nodes.iter().copied().collect(),
            replication_factor,
            shard_count: shards.len() as u64,
            shards,
            live: nodes.iter().map(|(id, _)| *id).collect(),
            ..View::default()
        }
    }

    fn active(ids: &[NodeId]) -> Vec<(NodeId, NodeState)> {
        ids.iter().map(|&id| (id, NodeState::Active)).collect()
    }

    /// Applies a step to the view the way the cluster would (promotion, removal, transfer,
    /// a learner caught up at once).
    fn apply(view: &mut View, step: Step) {
        match step {
            Step::AddLearner { shard, node } => {
                let shard = view.shards.get_mut(&shard).unwrap();
                assert!(!shard.is_member(node));
                shard.learners.push(node);
                shard.progress.insert(node, COMMIT);
            }
            Step::Promote { shard, node } => {
                let shard = view.shards.get_mut(&shard).unwrap();
                shard.learners.retain(|&n| n != node);
                shard.voters.push(node);
            }
            Step::TransferLeader { shard, from, to } => {
                let shard = view.shards.get_mut(&shard).unwrap();
                assert_eq!(shard.leader, from);
                assert!(shard.voters.contains(&to));
                shard.leader = to;
            }
            Step::Remove { shard, node } => {
                let shard = view.shards.get_mut(&shard).unwrap();
                assert_ne!(shard.leader, node, "the leader is never removed");
                shard.voters.retain(|&n| n != node);
                shard.learners.retain(|&n| n != node);
                shard.progress.remove(&node);
            }
            Step::MarkDecommissioned { node } => {
                view.nodes.insert(node, NodeState::Decommissioned);
            }
        }
    }

    /// Plans and applies until nothing is left; returns the steps taken. Checks on the way
    /// that no shard ever has fewer voters than the target.
    fn settle(view: &mut View) -> Vec<Step> {
        let mut steps = Vec::new();
        for _ in 0..500 {
            let plan = plan(view);
            let Some(step) = plan.next else {
                return steps;
            };
            assert!(plan.pending > 0, "a step with nothing pending: {step:?}");
            apply(view, step);
            for shard in view.shards.values() {
                assert!(
                    shard.voters.len() >= view.target(shard.shard),
                    "shard {} fell to {:?} after {step:?}",
                    shard.shard,
                    shard.voters
                );
            }
            steps.push(step);
        }
        panic!("placement never settled: {:?}", &steps[steps.len() - 10..]);
    }

    fn voters_per_node(view: &View) -> BTreeMap<NodeId, usize> {
        view.loads()
    }

    #[test]
    fn three_nodes_with_r3_need_nothing() {
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = (0..4)
            .map(|shard| ((shard % 3 + 1) as NodeId, &[1, 2, 3][..], &[][..]))
            .collect();
        let mut v = view(&active(&[1, 2, 3]), 3, &shards);
        assert_eq!(
            plan(&v),
            Plan {
                next: None,
                pending: 0
            }
        );
        assert!(settle(&mut v).is_empty());
    }

    /// `cluster.replicas = "r"` (issue 4 build item 1): a fourth node joins shard 0 as a
    /// learner (it stays on every node) and takes its share of the other shards' voters by
    /// learners added one at a time, caught up, promoted, and the replaced voter removed; no
    /// learner is left, each node holds 3 of the 8 shards' replicas plus shard 0, and no shard
    /// ever has fewer than three voters.
    #[test]
    fn with_replicas_r_a_new_node_takes_its_share_of_shards_and_no_learner_stays() {
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = (0..9)
            .map(|shard| ((shard % 3 + 1) as NodeId, &[1, 2, 3][..], &[][..]))
            .collect();
        let mut v = view(&active(&[1, 2, 3, 4]), 3, &shards);
        v.partial = true;
        v.everywhere = BTreeSet::from([0]);
        let first = plan(&v);
        assert_eq!(first.next, Some(Step::AddLearner { shard: 0, node: 4 }));
        assert_eq!(
            first.pending,
            1 + 6,
            "shard 0's learner, 6 voters above the share"
        );
        let steps = settle(&mut v);
        let mut loads: Vec<usize> = voters_per_node(&v).into_values().collect();
        loads.sort_unstable();
        assert_eq!(loads, [6, 7, 7, 7], "27 voters spread evenly");
        assert_eq!(v.shards[&0].members().count(), 4, "shard 0 is everywhere");
        for shard in v.shards.values().filter(|shard| shard.shard != 0) {
            assert_eq!(shard.voters.len(), 3, "shard {}", shard.shard);
            assert!(shard.learners.is_empty(), "shard {}", shard.shard);
        }
        let held = |node: NodeId| v.shards.values().filter(|s| s.is_member(node)).count();
        assert!(
            (1..=4).all(|node| (6..=7).contains(&held(node))),
            "each node holds 6 or 7 of the 9 shards"
        );
        assert!(steps
            .iter()
            .all(|step| !matches!(step, Step::AddLearner { node, .. } if *node != 4)));
        assert_eq!(plan(&v).pending, 0);

        // Decommissioning node 1 moves its voters to learners added for them; node 1 ends
        // with nothing and no learner stays.
        v.nodes.insert(1, NodeState::Decommissioning);
        settle(&mut v);
        assert_eq!(v.nodes[&1], NodeState::Decommissioned);
        for shard in v.shards.values() {
            assert!(!shard.is_member(1), "shard {}", shard.shard);
            assert_eq!(shard.voters.len(), 3, "shard {}", shard.shard);
            assert!(shard.learners.is_empty(), "shard {}", shard.shard);
        }
    }

    /// With `cluster.replicas = "r"`, a learner nobody wants (left over from a change of
    /// plan) is removed, and one on its way to replace a voter is kept while it catches up,
    /// with no second one added meanwhile.
    #[test]
    fn with_replicas_r_spare_learners_go_and_wanted_ones_stay() {
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = vec![
            (1, &[1, 2, 3][..], &[4][..]),
            (2, &[1, 2, 4][..], &[3][..]),
            (3, &[1, 3, 4][..], &[][..]),
            (4, &[2, 3, 4][..], &[][..]),
        ];
        let mut v = view(&active(&[1, 2, 3, 4]), 3, &shards);
        v.partial = true;
        v.everywhere = BTreeSet::from([0]);
        // Every node votes in three shards; shard 1 does not need node 3: its learner goes,
        // shard 0's stays (shard 0 is on every node).
        let plan_now = plan(&v);
        assert_eq!(plan_now.next, Some(Step::Remove { shard: 1, node: 3 }));
        assert_eq!(plan_now.pending, 1);
        // Node 2 leaves: shard 1's learner on node 3 replaces it; while it catches up it is
        // neither removed nor joined by another learner.
        v.nodes.insert(2, NodeState::Decommissioning);
        v.shards.get_mut(&1).unwrap().progress.insert(3, 0);
        let loads = v.loads();
        let shard = v.shards[&1].clone();
        assert_eq!(remove_spare_learner(&v, &shard, &loads), None);
        assert_eq!(add_missing_learner(&v, &shard, &loads), None);
        assert_eq!(promote_for_missing_voter(&v, &shard, &loads), None);
        v.shards.get_mut(&1).unwrap().progress.insert(3, COMMIT);
        let shard = v.shards[&1].clone();
        assert_eq!(
            promote_for_missing_voter(&v, &shard, &loads),
            Some(Step::Promote { shard: 1, node: 3 })
        );
    }

    /// Issue 4: a fourth node becomes a learner of every shard, then takes its share of voters
    /// one move at a time; no shard ever has fewer than three voters.
    #[test]
    fn a_new_node_gets_learners_everywhere_then_its_share_of_voters() {
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = (0..8)
            .map(|shard| ((shard % 3 + 1) as NodeId, &[1, 2, 3][..], &[][..]))
            .collect();
        let mut v = view(&active(&[1, 2, 3, 4]), 3, &shards);
        let first = plan(&v);
        assert_eq!(first.next, Some(Step::AddLearner { shard: 0, node: 4 }));
        assert_eq!(
            first.pending,
            8 + 6,
            "8 learners missing, 3 nodes 2 voters above the share"
        );
        let steps = settle(&mut v);
        let loads = voters_per_node(&v);
        assert_eq!(loads, BTreeMap::from([(1, 6), (2, 6), (3, 6), (4, 6)]));
        for shard in v.shards.values() {
            assert_eq!(shard.voters.len(), 3);
            assert_eq!(shard.members().count(), 4, "every node holds every shard");
        }
        let promotions = steps
            .iter()
            .filter(|step| matches!(step, Step::Promote { node: 4, .. }))
            .count();
        assert_eq!(promotions, 6);
        assert_eq!(plan(&v).pending, 0);
    }

    /// Issue 4: a decommissioned node's voters move to the others and its learners go; it is
    /// marked Decommissioned once it holds nothing, and it leads nothing before it is removed.
    #[test]
    fn a_decommissioning_node_is_emptied_then_marked() {
        let nodes = [
            (1, NodeState::Decommissioning),
            (2, NodeState::Active),
            (3, NodeState::Active),
            (4, NodeState::Active),
        ];
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = vec![
            (1, &[1, 2, 3], &[4]),
            (2, &[1, 2, 4], &[3]),
            (3, &[1, 3, 4], &[2]),
            (4, &[2, 3, 4], &[1]),
        ];
        let mut v = view(&nodes, 3, &shards);
        let steps = settle(&mut v);
        assert_eq!(
            steps.last(),
            Some(&Step::MarkDecommissioned { node: 1 }),
            "{steps:?}"
        );
        assert!(steps.contains(&Step::TransferLeader {
            shard: 0,
            from: 1,
            to: 2
        }));
        for shard in v.shards.values() {
            assert_eq!(shard.voters.len(), 3);
            assert!(!shard.is_member(1));
            assert_eq!(shard.members().count(), 3);
        }
        assert_eq!(plan(&v).pending, 0);
    }

    /// A new cluster of five nodes with R = 3 starts with five voters per shard and ends with
    /// three, spread evenly, the other two nodes learners.
    #[test]
    fn more_nodes_than_r_trim_voters_and_keep_learners() {
        let all: &[NodeId] = &[1, 2, 3, 4, 5];
        let mut v = view(&active(all), 3, &[(1, all, &[][..]); 5]);
        settle(&mut v);
        assert!(voters_per_node(&v).values().all(|&load| load == 3));
        for shard in v.shards.values() {
            assert_eq!((shard.voters.len(), shard.learners.len()), (3, 2));
        }
    }

    /// What waits: a learner that has not caught up is not promoted, a silent node is not
    /// given anything, a shard without a reporting leader is left alone, and a voter that is
    /// up but behind is not removed before it can hear of it.
    #[test]
    fn steps_wait_for_catch_up_and_answers() {
        let nodes = [
            (1, NodeState::Decommissioning),
            (2, NodeState::Active),
            (3, NodeState::Active),
            (4, NodeState::Active),
        ];
        let mut v = view(&nodes, 3, &[(2, &[1, 2, 3], &[4])]);
        v.shards.get_mut(&0).unwrap().progress.insert(4, 10);
        assert_eq!(plan(&v).next, None, "node 4 is behind");
        v.shards.get_mut(&0).unwrap().progress.insert(4, COMMIT);
        v.live.remove(&4);
        assert_eq!(plan(&v).next, None, "node 4 does not answer");
        v.live.insert(4);
        assert_eq!(plan(&v).next, Some(Step::Promote { shard: 0, node: 4 }));
        apply(&mut v, Step::Promote { shard: 0, node: 4 });
        v.shards.get_mut(&0).unwrap().progress.insert(1, 10);
        assert_eq!(plan(&v).next, None, "node 1 would not hear of its removal");
        v.live.remove(&1);
        assert_eq!(plan(&v).next, Some(Step::Remove { shard: 0, node: 1 }));
        v.shards.clear();
        assert_eq!(plan(&v).next, None, "no leader reported");
    }

    /// A draining node is never made a leader, and receives voters only when nobody else can.
    #[test]
    fn draining_nodes_are_not_transfer_targets() {
        let nodes = [
            (1, NodeState::Decommissioning),
            (2, NodeState::Active),
            (3, NodeState::Active),
            (4, NodeState::Active),
        ];
        let mut v = view(&nodes, 3, &[(1, &[1, 2, 3, 4], &[])]);
        v.draining.insert(2);
        assert_eq!(
            plan(&v).next,
            Some(Step::TransferLeader {
                shard: 0,
                from: 1,
                to: 3
            })
        );
    }

    fn located(view: &mut View, localities: &[(NodeId, &str)]) {
        for &(node, text) in localities {
            view.localities
                .insert(node, text.parse().expect("a valid locality"));
        }
    }

    fn zone_of(view: &View, node: NodeId) -> String {
        view.localities[&node].zone().unwrap_or_default().to_owned()
    }

    fn leaders_per_node(view: &View) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for shard in view.shards.values() {
            *counts.entry(shard.leader).or_insert(0) += 1;
        }
        counts
    }

    /// Issue 9: six nodes in three zones, every shard starting with its three voters in one
    /// zone; placement ends with one voter per zone in every shard, voters even over nodes.
    #[test]
    fn voters_spread_over_zones() {
        let all: &[NodeId] = &[1, 2, 3, 4, 5, 6];
        let mut v = view(&active(all), 3, &[(1, &[1, 2, 3][..], &[4, 5, 6][..]); 6]);
        located(
            &mut v,
            &[
                (1, "region=eu,zone=a"),
                (2, "region=eu,zone=a"),
                (3, "region=eu,zone=a"),
                (4, "region=eu,zone=b"),
                (5, "region=eu,zone=b"),
                (6, "region=eu,zone=c"),
            ],
        );
        let first = plan(&v);
        assert!(first.pending >= 6, "six shards spread too narrowly");
        assert!(
            matches!(first.next, Some(Step::Promote { node: 4 | 6, .. })),
            "{first:?}"
        );
        settle(&mut v);
        for shard in v.shards.values() {
            assert_eq!(shard.members().count(), 6, "every node holds every shard");
            let zones: BTreeSet<String> = shard.voters.iter().map(|&n| zone_of(&v, n)).collect();
            assert_eq!(zones.len(), 3, "shard {} votes in {zones:?}", shard.shard);
        }
        // Zone c has one node: it votes everywhere; the others share the rest evenly.
        let loads = voters_per_node(&v);
        // Zone c has one node: it votes everywhere; zone a's three nodes share six voters, zone
        // b's two nodes six more.
        assert_eq!(
            loads,
            BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 3), (5, 3), (6, 6)])
        );
        assert_eq!(plan(&v).pending, 0);
    }

    /// Issue 9: with two regions, a shard keeps voters in both, then in distinct zones; a
    /// third voter joins the region with more zones only once both regions have one.
    #[test]
    fn voters_spread_over_regions_before_zones() {
        let all: &[NodeId] = &[1, 2, 3, 4, 5];
        let mut v = view(&active(all), 3, &[(1, &[1, 2, 3][..], &[4, 5][..]); 3]);
        located(
            &mut v,
            &[
                (1, "region=eu,zone=eu-1"),
                (2, "region=eu,zone=eu-2"),
                (3, "region=eu,zone=eu-3"),
                (4, "region=us,zone=us-1"),
                (5, "region=us,zone=us-1"),
            ],
        );
        settle(&mut v);
        for shard in v.shards.values() {
            assert_eq!(
                v.spread(shard.voters.iter().copied()),
                vec![2, 3],
                "{shard:?}"
            );
        }
        assert_eq!(plan(&v).pending, 0);
    }

    /// Issue 9: leaderships move to the preferred region where a shard has a voter there (to
    /// that shard's voter there), and a shard without one (kept in us) keeps its leader.
    #[test]
    fn leaders_move_to_the_preferred_region() {
        let all: &[NodeId] = &[1, 2, 3, 4];
        let mut shards: Vec<(NodeId, &[NodeId], &[NodeId])> = (0..6)
            .map(|shard| {
                if shard % 2 == 0 {
                    (3, &[1, 3][..], &[2, 4][..])
                } else {
                    (4, &[2, 4][..], &[1, 3][..])
                }
            })
            .collect();
        shards.push((4, &[3, 4], &[]));
        let mut v = view(&active(all), 2, &shards);
        located(
            &mut v,
            &[
                (1, "region=eu,zone=eu-1"),
                (2, "region=eu,zone=eu-2"),
                (3, "region=us,zone=us-1"),
                (4, "region=us,zone=us-2"),
            ],
        );
        v.residency.insert(6, BTreeSet::from(["us".to_owned()]));
        // Without a preference, the leaderships only balance: seven over four nodes.
        assert_eq!(plan(&v).pending, 1, "a balancing transfer is left");
        let steps = settle(&mut v);
        assert!(
            steps
                .iter()
                .all(|s| matches!(s, Step::TransferLeader { .. })),
            "{steps:?}"
        );
        let mut counts: Vec<usize> = leaders_per_node(&v).into_values().collect();
        counts.sort();
        assert_eq!(counts, [1, 2, 2, 2]);
        v.leader_region = Some("eu".into());
        assert!(plan(&v).pending >= 2, "leaders outside eu could be there");
        let steps = settle(&mut v);
        assert!(
            steps
                .iter()
                .all(|s| matches!(s, Step::TransferLeader { .. })),
            "{steps:?}"
        );
        let counts = leaders_per_node(&v);
        assert_eq!(
            (counts.get(&1), counts.get(&2)),
            (Some(&3), Some(&3)),
            "{counts:?}"
        );
        assert_eq!(
            v.shards[&6].leader, 4,
            "shard 6 has no voter in eu: it stays"
        );
        assert_eq!(plan(&v).pending, 0);
    }

    /// Leaderships balance even when it takes a chain: node 1 leads four shards whose other
    /// voters (2) lead two, and node 3 leads nothing but can take over only from node 2.
    #[test]
    fn leaders_balance_along_a_chain_of_transfers() {
        let all: &[NodeId] = &[1, 2, 3];
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = vec![
            (1, &[1, 2], &[3]),
            (1, &[1, 2], &[3]),
            (1, &[1, 2], &[3]),
            (2, &[2, 3], &[1]),
            (2, &[2, 3], &[1]),
            (1, &[1, 2], &[3]),
        ];
        let mut v = view(&active(all), 2, &shards);
        // Voters are as wanted already (four, four and two are not movable with R = 2
        // within the spread): keep them and look at the leaders only.
        let steps = settle(&mut v);
        let transfers: Vec<&Step> = steps
            .iter()
            .filter(|s| matches!(s, Step::TransferLeader { .. }))
            .collect();
        assert!(!transfers.is_empty(), "{steps:?}");
        let counts = leaders_per_node(&v);
        let (max, min) = (
            counts.values().max().copied().unwrap_or(0),
            [1, 2, 3]
                .iter()
                .map(|n| counts.get(n).copied().unwrap_or(0))
                .min()
                .unwrap_or(0),
        );
        assert!(max - min <= 1, "{counts:?} after {steps:?}");
    }

    /// Issue 9 data residency: a shard kept in eu gets learners and voters on eu nodes only,
    /// loses its members elsewhere once eu holds enough, and with no eu node left keeps what
    /// it has (pending) rather than placing anything outside.
    #[test]
    fn a_constrained_shard_stays_in_its_regions() {
        let all: &[NodeId] = &[1, 2, 3, 4, 5];
        let mut v = view(
            &active(all),
            3,
            &[
                (1, &[1, 2, 3][..], &[4, 5][..]),
                (1, &[1, 2, 3][..], &[4, 5][..]),
            ],
        );
        located(
            &mut v,
            &[
                (1, "region=us,zone=us-1"),
                (2, "region=us,zone=us-2"),
                (3, "region=eu,zone=eu-1"),
                (4, "region=eu,zone=eu-2"),
                (5, "region=eu,zone=eu-3"),
            ],
        );
        v.residency.insert(1, BTreeSet::from(["eu".to_owned()]));
        let steps = settle(&mut v);
        let eu = |n: NodeId| [3, 4, 5].contains(&n);
        for step in &steps {
            if let Step::AddLearner { shard: 1, node } | Step::Promote { shard: 1, node } = *step {
                assert!(eu(node), "{step:?}");
            }
        }
        let pinned = &v.shards[&1];
        assert_eq!(pinned.voters.iter().copied().filter(|&n| eu(n)).count(), 3);
        assert!(pinned.members().all(eu), "{pinned:?}");
        assert_eq!(
            v.shards[&0].members().count(),
            5,
            "the other shard is everywhere"
        );
        assert_eq!(plan(&v).pending, 0);

        // Every eu node decommissioning (the registry allows it: five nodes, R = 3): shard 1
        // has nowhere to go and keeps its members; nothing is placed outside eu.
        for node in [3, 4, 5] {
            v.nodes.insert(node, NodeState::Decommissioning);
        }
        let steps = settle(&mut v);
        assert!(
            steps.iter().all(|step| !matches!(
                step,
                Step::AddLearner { shard: 1, .. }
                    | Step::Promote { shard: 1, .. }
                    | Step::Remove { shard: 1, .. }
            )),
            "{steps:?}"
        );
        assert!(v.shards[&1].members().all(eu));
        assert!(
            plan(&v).pending > 0,
            "a shard with nowhere to go is pending"
        );
    }

    /// Issue 9 item 3: split shards are placed like the hashed shards. The residency map the
    /// driver builds from a layout with a residency set and split shards constrains the set's
    /// shard only; the split shards end spread over both regions and balanced like hashed
    /// shard 0, while the residency shard stays in eu.
    #[test]
    fn split_shards_are_placed_like_hashed_shards() {
        let layout = mimid_actors::residency::Layout::new(
            1,
            [("eu".to_owned(), BTreeSet::from(["eu".to_owned()]), 1)],
            2,
        )
        .unwrap();
        assert_eq!(layout.split_shards(), 2..4);
        let all: &[NodeId] = &[1, 2, 3, 4, 5, 6];
        let us_only: (NodeId, &[NodeId], &[NodeId]) = (1, &[1, 2, 3], &[]);
        let mut v = view(&active(all), 3, &[us_only; 4]);
        v.partial = true;
        v.everywhere = BTreeSet::from([0]);
        located(
            &mut v,
            &[
                (1, "region=us,zone=us-1"),
                (2, "region=us,zone=us-2"),
                (3, "region=us,zone=us-3"),
                (4, "region=eu,zone=eu-1"),
                (5, "region=eu,zone=eu-2"),
                (6, "region=eu,zone=eu-3"),
            ],
        );
        v.residency = layout.regions_by_shard();
        assert_eq!(
            v.residency.keys().copied().collect::<Vec<_>>(),
            vec![1],
            "only the residency shard is constrained"
        );
        settle(&mut v);
        assert_eq!(plan(&v).pending, 0);
        let eu = |n: NodeId| (4..=6).contains(&n);
        assert!(v.shards[&1].members().all(eu), "{:?}", v.shards[&1]);
        for shard in layout.split_shards() {
            let voters = &v.shards[&shard].voters;
            assert_eq!(voters.len(), 3, "shard {shard}: {voters:?}");
            assert!(
                voters.iter().any(|&n| eu(n)) && voters.iter().any(|&n| !eu(n)),
                "split shard {shard} spreads over both regions like a hashed shard: {voters:?}"
            );
            assert_eq!(v.shards[&shard].learners, Vec::<NodeId>::new());
        }
        let hashed = &v.shards[&0].voters;
        assert!(hashed.iter().any(|&n| eu(n)) && hashed.iter().any(|&n| !eu(n)));
    }

    /// Rule 9 leaves the leadership of a busy shard where it is (balance and preference
    /// alike), and moves it once the shard is quiet.
    #[test]
    fn busy_shards_keep_their_leaders_until_quiet() {
        let shards: Vec<(NodeId, &[NodeId], &[NodeId])> = vec![(1, &[1, 2, 3], &[]); 3];
        let mut v = view(&active(&[1, 2, 3]), 3, &shards);
        v.busy = BTreeSet::from([0, 1, 2]);
        assert_eq!(plan(&v).next, None);
        v.busy = BTreeSet::from([0, 1]);
        assert_eq!(
            plan(&v).next,
            Some(Step::TransferLeader {
                shard: 2,
                from: 1,
                to: 2
            })
        );
        located(
            &mut v,
            &[
                (1, "region=us,zone=a"),
                (2, "region=eu,zone=b"),
                (3, "region=us,zone=c"),
            ],
        );
        v.leader_region = Some("eu".into());
        v.busy = BTreeSet::from([0, 2]);
        assert_eq!(
            plan(&v).next,
            Some(Step::TransferLeader {
                shard: 1,
                from: 1,
                to: 2
            })
        );
        v.busy.clear();
        settle(&mut v);
        assert!(v.shards.values().all(|shard| shard.leader == 2));
    }
}
