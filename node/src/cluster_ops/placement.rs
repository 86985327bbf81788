//! Where replicas should live, and the next membership step towards it: the placement
//! driver's core. Sans-IO (STYLE.md P1): a [`View`] of the registry and of what each shard's
//! leader reports goes in, a [`Plan`] comes out; the shell (`driver.rs`) gathers the view,
//! runs at most one step at a time and plans again from fresh reports.
//!
//! What placement wants, for every shard (ARCHITECTURE.md "Cluster"):
//! - `target = min(R, Active nodes)` **voters**, all on Active nodes (R is the registry's
//!   replication factor);
//! - every other Active node a **learner**: the node serves every shard's reads and push
//!   streams from its own replica (every node applies every shard), so a node without a
//!   replica of a shard could not serve its clients' rooms there. Learners receive the log
//!   without voting, so commits wait for R nodes however many there are;
//! - nothing on Decommissioning or Decommissioned nodes, or on nodes the registry does not
//!   name ("leaving" nodes);
//! - voters spread evenly: no Active node holds two voters more than another.
//!
//! The steps, most urgent first (one rule is tried on every shard before the next rule):
//! 1. a shard with fewer than `target` voters on Active nodes promotes a caught-up learner
//!    (on the Active node with the fewest voters);
//! 2. a voter on a leaving node is removed once the shard has `target` Active voters, after
//!    its leadership is transferred if it leads;
//! 3. an Active node that is no member of a shard is added as a learner (it catches up by
//!    snapshot);
//! 4. a shard with more than `target` Active voters removes one, the most loaded (a new
//!    cluster of more than R nodes starts with every node a voter; rebalancing promotes
//!    before it demotes); rule 3 then adds the node back as a learner;
//! 5. a learner on a leaving node is removed;
//! 6. once every shard is as wanted, the most loaded node hands one voter to the least
//!    loaded while they differ by more than one: the least loaded node's learner is
//!    promoted in a shard the most loaded node votes in, and rule 4 removes a most loaded
//!    voter;
//! 7. a Decommissioning node that is no member of any shard is marked Decommissioned.
//!
//! A step needs a caught-up target (its matched index within [`CATCH_UP_SLACK`] entries of the
//! leader's commit) to promote it or to make it the leader, and a removed node that is up is
//! removed only once it is caught up too, so that it hears of its removal (the cluster crate's
//! `membership` docs). Nodes that do not answer are never made learners, voters or leaders.
//! Shards whose leader did not report are left alone this round.

use std::collections::{BTreeMap, BTreeSet};

use mimid_actors::cluster_meta::NodeState;
use mimid_cluster::{NodeId, ShardId};

/// A member whose matched index is at most this many entries behind the leader's commit is
/// caught up.
pub(crate) const CATCH_UP_SLACK: u64 = 64;

/// What the planner knows this round.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// The registry.
    pub nodes: BTreeMap<NodeId, NodeState>,
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
    /// Replicas not where placement wants them (`mimid_placement_pending`): missing learners,
    /// members on leaving nodes, voters missing or in excess, voters above the even share, and
    /// emptied Decommissioning nodes not yet marked.
    pub pending: u64,
}

/// Voters per Active node over the reported shards (Active nodes without any: 0).
type Loads = BTreeMap<NodeId, usize>;

/// One of the per-shard rules (module docs): the step it wants for a shard, if any.
type Rule = fn(&View, &ShardView, &Loads) -> Option<Step>;

/// The next step towards the placement the module docs describe.
pub(crate) fn plan(view: &View) -> Plan {
    let loads = view.loads();
    let rules: [Rule; 5] = [
        promote_for_missing_voter,
        move_off_leaving_voter,
        add_missing_learner,
        remove_excess_voter,
        remove_leaving_learner,
    ];
    let next = rules
        .iter()
        .find_map(|rule| {
            view.shards
                .values()
                .find_map(|shard| rule(view, shard, &loads))
        })
        .or_else(|| view.settled().then(|| rebalance(view, &loads)).flatten())
        .or_else(|| mark_decommissioned(view));
    Plan {
        next,
        pending: view.pending(&loads),
    }
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

    /// Voters a shard should have on Active nodes.
    fn target(&self) -> usize {
        self.replication_factor.min(self.active().count())
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

    /// Every shard reported and is as rules 1 to 5 want it.
    fn settled(&self) -> bool {
        let all_reported = (0..self.shard_count).all(|shard| self.shards.contains_key(&shard));
        all_reported
            && self.shards.values().all(|shard| {
                shard.members().all(|node| self.is_active(node))
                    && shard.voters.len() == self.target()
                    && self
                        .active()
                        .filter(|&node| self.is_live(node))
                        .all(|node| shard.is_member(node))
            })
    }

    /// The voter of `shard` other than `leaving` to hand its leadership to: live, Active, not
    /// draining, caught up if one is; the most advanced, then the one leading fewest shards.
    fn transfer_target(&self, shard: &ShardView, leaving: NodeId) -> Option<NodeId> {
        shard
            .voters
            .iter()
            .copied()
            .filter(|&node| node != leaving && self.is_active(node) && self.is_live(node))
            .min_by_key(|&node| {
                (
                    self.draining.contains(&node),
                    !shard.is_caught_up(node),
                    std::cmp::Reverse(shard.matched(node)),
                    self.leaderships(node),
                    node,
                )
            })
    }

    /// The learner of `shard` to promote: Active, live and caught up; the least loaded,
    /// preferring nodes that do not drain.
    fn promotion_target(&self, shard: &ShardView, loads: &Loads) -> Option<NodeId> {
        shard
            .learners
            .iter()
            .copied()
            .filter(|&node| self.is_active(node) && self.is_live(node))
            .filter(|&node| shard.is_caught_up(node))
            .min_by_key(|&node| {
                (
                    self.draining.contains(&node),
                    loads.get(&node).copied().unwrap_or(0),
                    node,
                )
            })
    }

    /// `Remove(node)` once it can hear of it (caught up, or not answering anyway).
    fn removal(&self, shard: &ShardView, node: NodeId) -> Option<Step> {
        (!self.is_live(node) || shard.is_caught_up(node)).then_some(Step::Remove {
            shard: shard.shard,
            node,
        })
    }

    fn pending(&self, loads: &Loads) -> u64 {
        let target = self.target();
        let mut pending = 0;
        for shard in self.shards.values() {
            let active_voters = shard.active_voters(self).count();
            let missing = self.active().filter(|&node| !shard.is_member(node)).count();
            let leaving = shard
                .members()
                .filter(|&node| !self.is_active(node))
                .count();
            pending += missing + leaving + active_voters.abs_diff(target);
        }
        let total: usize = loads.values().sum();
        if !loads.is_empty() {
            let share = total.div_ceil(loads.len());
            pending += loads
                .values()
                .map(|&load| load.saturating_sub(share))
                .sum::<usize>();
        }
        pending += self.emptied_decommissioning().count();
        pending as u64
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

    fn active_voters<'a>(&'a self, view: &'a View) -> impl Iterator<Item = NodeId> + 'a {
        self.voters
            .iter()
            .copied()
            .filter(|&node| view.is_active(node))
    }
}

/// Rule 1.
fn promote_for_missing_voter(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if shard.active_voters(view).count() >= view.target() {
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
        .find(|&node| !view.is_active(node))?;
    if shard.active_voters(view).count() < view.target() {
        // Rule 1 promotes a replacement first (or waits for one to catch up).
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

/// Rule 3.
fn add_missing_learner(view: &View, shard: &ShardView, _: &Loads) -> Option<Step> {
    let node = view
        .active()
        .find(|&node| view.is_live(node) && !shard.is_member(node))?;
    Some(Step::AddLearner {
        shard: shard.shard,
        node,
    })
}

/// Rule 4.
fn remove_excess_voter(view: &View, shard: &ShardView, loads: &Loads) -> Option<Step> {
    if shard.voters.iter().any(|&node| !view.is_active(node)) {
        return None;
    }
    if shard.voters.len() <= view.target() {
        return None;
    }
    // The most loaded voter; on a tie one that does not lead, then the highest id.
    let node = shard.voters.iter().copied().max_by_key(|&node| {
        (
            loads.get(&node).copied().unwrap_or(0),
            node != shard.leader,
            node,
        )
    })?;
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
        .find(|&node| !view.is_active(node))?;
    Some(Step::Remove {
        shard: shard.shard,
        node,
    })
}

/// Rule 6: promote the least loaded node's learner where the most loaded node votes.
fn rebalance(view: &View, loads: &Loads) -> Option<Step> {
    let (&most, &most_load) = loads.iter().max_by_key(|(node, load)| (**load, **node))?;
    let (&least, &least_load) = loads
        .iter()
        .filter(|(node, _)| view.is_live(**node) && !view.draining.contains(*node))
        .min_by_key(|(node, load)| (**load, **node))?;
    if most_load <= least_load + 1 {
        return None;
    }
    view.shards
        .values()
        .filter(|shard| shard.voters.contains(&most) && shard.learners.contains(&least))
        .filter(|shard| shard.is_caught_up(least))
        // Where the most loaded node does not lead, no transfer is needed afterwards.
        .min_by_key(|shard| (shard.leader == most, shard.shard))
        .map(|shard| Step::Promote {
            shard: shard.shard,
            node: least,
        })
}

/// Rule 7.
fn mark_decommissioned(view: &View) -> Option<Step> {
    let node = view.emptied_decommissioning().next()?;
    Some(Step::MarkDecommissioned { node })
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
            draining: BTreeSet::new(),
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
                    shard.voters.len() >= view.target(),
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
        let mut v = view(&active(&[1, 2, 3]), 3, &[(1, &[1, 2, 3][..], &[][..]); 4]);
        assert_eq!(
            plan(&v),
            Plan {
                next: None,
                pending: 0
            }
        );
        assert!(settle(&mut v).is_empty());
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
}
