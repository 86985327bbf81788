//! The operations' background tasks: the registry watcher (every node; with `cluster.join`
//! it also seeds the registry of the node that took `init`, and registers every other node),
//! the placement driver (the node leading shard 0) and the drain loop (a draining node).
//! Shells only: what placement wants is [`super::placement`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mimid_actors::cluster_meta::{ClusterMeta, MetaChange, NodeState, METADATA_SHARD};
use mimid_cluster::{NodeId, ShardId};
use tokio::time::MissedTickBehavior;

use super::placement::{self, ShardView, Step, View};
use super::rpc::{self, Change, OpsAnswer, OpsRequest, Refusal};
use super::{leader_reports, ClusterOps, NodeReport};
use crate::metrics::PlacementOutcome;

/// How often every node looks at its replica of the registry.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Least time between two registry changes a node proposes for itself (seed, own address).
const REGISTRY_RETRY: Duration = Duration::from_secs(1);
/// How often a draining node looks for shards it leads.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a shard's commit index must stay where it is before the placement driver moves
/// its leadership for balance or the leader preference (`placement::View::busy`): a transfer
/// answers the requests in flight on the old leader 503. Elections commit an entry, so a
/// shard also waits this long after its leader changed.
const LEADER_QUIET: Duration = Duration::from_secs(5);

/// Keeps the transport's peers in line with the registry, seeds the registry of a new
/// cluster, records this node's address in it when it moved, and registers a node that joined
/// with `cluster.join` until the registry names it (module docs of [`super`]).
///
/// Cancel safety: runs until aborted; safe to abort at any await.
pub(super) async fn watch_registry(ops: Arc<ClusterOps>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The registry's addresses as last seen: a change there is a node that moved.
    let mut seen: BTreeMap<NodeId, Option<SocketAddr>> = BTreeMap::new();
    let mut last_proposal: Option<Instant> = None;
    let mut registered = !ops.settings.register;
    let mut last_registration: Option<Instant> = None;
    loop {
        tick.tick().await;
        let (Some(hub), Some(net)) = (ops.hub(), &ops.net) else {
            continue;
        };
        let meta = hub.cluster_meta();
        if !registered && meta.node(ops.node_id).is_some() {
            registered = true;
        }
        if !registered && last_registration.is_none_or(|at| at.elapsed() >= REGISTRY_RETRY) {
            last_registration = Some(Instant::now());
            registered = ops.register_self().await;
        }
        for (&id, record) in meta.nodes() {
            let Some(addr) = record.cluster_addr else {
                continue;
            };
            if id == ops.node_id || record.state == NodeState::Decommissioned {
                continue;
            }
            let moved = seen.get(&id).is_some_and(|before| *before != Some(addr));
            let unknown = !ops.known_peers.lock().contains_key(&id);
            if !(moved || unknown) {
                continue;
            }
            match net.set_peer(id, addr) {
                Ok(()) => {
                    ops.note_peer(id, addr);
                    tracing::info!(peer = id, %addr, "node-to-node peer taken from the node registry");
                }
                Err(e) => {
                    tracing::warn!(peer = id, %addr, error = %e, "registered node not dialled")
                }
            }
        }
        seen = meta
            .nodes()
            .iter()
            .map(|(&id, record)| (id, record.cluster_addr))
            .collect();

        if last_proposal.is_some_and(|at| at.elapsed() < REGISTRY_RETRY) {
            continue;
        }
        let Some(change) = ops.own_registry_change(&meta) else {
            continue;
        };
        last_proposal = Some(Instant::now());
        match hub.change_cluster_meta(change.clone()).await {
            Ok(Ok(true)) => tracing::info!(?change, "node registry changed"),
            Ok(Ok(false)) => {}
            Ok(Err(refusal)) => tracing::warn!(?change, %refusal, "node registry refused"),
            Err(e) => tracing::debug!(?change, error = %e, "node registry change not applied"),
        }
    }
}

impl ClusterOps {
    /// Asks the connected nodes, one after the other, to register this node (a node that
    /// joined with `cluster.join`, `OpsRequest::Register`); true once one did, or once one
    /// said it never will (the refusal is logged).
    ///
    /// Cancel safety: safe to drop; a registration may still be applied.
    async fn register_self(&self) -> bool {
        let (Some(net), Some(cluster_id), Some(cluster_addr)) = (
            &self.net,
            self.settings.cluster_id,
            self.settings.advertised,
        ) else {
            tracing::warn!("cannot register this node: no cluster id or no dialable address");
            return true;
        };
        let request = OpsRequest::RegisterWithLocality {
            cluster_id,
            cluster_addr,
            locality: self.settings.locality.clone(),
        };
        for peer in net.connected_peers().into_keys() {
            match rpc::call(net, peer, &request, rpc::CHANGE_TIMEOUT).await {
                Ok(OpsAnswer::Registered(Ok(changed))) => {
                    tracing::info!(via = peer, %cluster_addr, changed, "this node is registered in the cluster");
                    return true;
                }
                Ok(OpsAnswer::Registered(Err(Refusal::Invalid(reason)))) => {
                    tracing::warn!(via = peer, %reason, "this node cannot be registered; not asking again");
                    return true;
                }
                Ok(OpsAnswer::Registered(Err(Refusal::Retry(reason)))) => {
                    tracing::debug!(via = peer, %reason, "registration postponed");
                }
                Ok(other) => tracing::debug!(via = peer, ?other, "no registration"),
                Err(reason) => tracing::debug!(via = peer, %reason, "no registration"),
            }
        }
        false
    }

    /// What this node wants of the registry for itself: the seed of a new cluster (only the
    /// leader of shard 0, and never a joining node; with the cluster id of a cluster formed by
    /// `mimid init`), its configured locality when the record says otherwise (a configured
    /// one wins; an empty one leaves the record alone), or its own address when it moved.
    fn own_registry_change(&self, meta: &ClusterMeta) -> Option<MetaChange> {
        if !meta.is_seeded() {
            let leads = self.cluster.leader(METADATA_SHARD) == Some(self.node_id);
            if !leads || self.settings.join_existing {
                return None;
            }
            let nodes = self
                .settings
                .initial_voters
                .iter()
                .map(|&id| {
                    let addr = if id == self.node_id {
                        self.settings.advertised
                    } else {
                        self.settings.configured_peers.get(&id).copied()
                    };
                    (id, addr)
                })
                .collect();
            let replication_factor = self.settings.replication_factor;
            return Some(match self.settings.cluster_id {
                Some(cluster_id) => MetaChange::Bootstrap {
                    cluster_id,
                    nodes,
                    replication_factor,
                },
                None => MetaChange::Seed {
                    nodes,
                    replication_factor,
                },
            });
        }
        let record = meta.node(self.node_id)?;
        if record.state == NodeState::Decommissioned {
            return None;
        }
        let locality = &self.settings.locality;
        if !locality.is_empty() && record.locality != *locality {
            return Some(MetaChange::SetLocality {
                id: self.node_id,
                locality: locality.clone(),
            });
        }
        let advertised = self.settings.advertised?;
        (record.cluster_addr != Some(advertised)).then_some(MetaChange::SetAddress {
            id: self.node_id,
            cluster_addr: advertised,
        })
    }

    /// The planner's view from the registry, this round's reports and the shards written to
    /// lately (`busy`).
    fn placement_view(
        &self,
        meta: &ClusterMeta,
        reports: &BTreeMap<NodeId, NodeReport>,
        busy: BTreeSet<ShardId>,
    ) -> View {
        let shard_count = self.cluster.shard_count();
        let shards = leader_reports(reports, shard_count)
            .into_iter()
            .map(|(shard, (leader, report))| {
                let view = ShardView {
                    shard,
                    leader,
                    commit: report.commit,
                    voters: report.voters.clone(),
                    learners: report.learners.clone(),
                    progress: report.progress.clone(),
                };
                (shard, view)
            })
            .collect();
        View {
            nodes: meta
                .nodes()
                .iter()
                .map(|(&id, record)| (id, record.state))
                .collect(),
            localities: meta
                .nodes()
                .iter()
                .filter(|(_, record)| !record.locality.is_empty())
                .map(|(&id, record)| (id, record.locality.clone()))
                .collect(),
            replication_factor: meta.replication_factor() as usize,
            shard_count,
            shards,
            live: reports.keys().copied().collect(),
            draining: reports
                .values()
                .filter(|report| report.draining)
                .map(|report| report.node_id)
                .collect(),
            residency: self.settings.residency.clone(),
            leader_region: self.settings.leader_region.clone(),
            busy,
            partial: self.settings.partial,
            everywhere: BTreeSet::from([METADATA_SHARD]),
        }
    }

    /// Takes `step`, asking the shard's leader (named in `view`) for membership changes and
    /// transfers; resolves once it is applied or refused.
    ///
    /// Cancel safety: safe to drop; the step may still be taken.
    async fn take_step(&self, step: Step, view: &View) -> Result<(), Refusal> {
        let leader_of = |shard: ShardId| {
            view.shards
                .get(&shard)
                .map(|shard| shard.leader)
                .ok_or_else(|| Refusal::Retry(format!("shard {shard} has no reported leader")))
        };
        match step {
            Step::AddLearner { shard, node } => {
                self.change_on(leader_of(shard)?, shard, Change::AddLearner(node))
                    .await
            }
            Step::Promote { shard, node } => {
                self.change_on(leader_of(shard)?, shard, Change::Promote(node))
                    .await
            }
            Step::Remove { shard, node } => {
                self.change_on(leader_of(shard)?, shard, Change::Remove(node))
                    .await
            }
            Step::TransferLeader { shard, from, to } => {
                if from == self.node_id {
                    return self.transfer_here(shard, to).await;
                }
                let request = OpsRequest::TransferLeader { shard, to };
                match self.call(from, &request).await? {
                    OpsAnswer::Transferred(result) => result,
                    other => Err(unexpected(from, other)),
                }
            }
            Step::MarkDecommissioned { node } => {
                let hub = self
                    .hub()
                    .ok_or_else(|| Refusal::Invalid("the node is stopping".into()))?;
                match hub
                    .change_cluster_meta(MetaChange::MarkDecommissioned { id: node })
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(refusal)) => Err(Refusal::Invalid(refusal.to_string())),
                    Err(e) => Err(Refusal::Retry(e.to_string())),
                }
            }
        }
    }

    async fn change_on(
        &self,
        leader: NodeId,
        shard: ShardId,
        change: Change,
    ) -> Result<(), Refusal> {
        if leader == self.node_id {
            return self.change_here(shard, change).await.map(drop);
        }
        let request = OpsRequest::ChangeMembers { shard, change };
        match self.call(leader, &request).await? {
            OpsAnswer::Changed(result) => result.map(drop),
            other => Err(unexpected(leader, other)),
        }
    }

    async fn call(&self, to: NodeId, request: &OpsRequest) -> Result<OpsAnswer, Refusal> {
        let net = self
            .net
            .as_ref()
            .ok_or_else(|| Refusal::Invalid("this node runs alone".into()))?;
        rpc::call(net, to, request, rpc::CHANGE_TIMEOUT)
            .await
            .map_err(Refusal::Invalid)
    }
}

fn unexpected(node: NodeId, answer: OpsAnswer) -> Refusal {
    match answer {
        OpsAnswer::Refused(reason) => Refusal::Invalid(format!("node {node}: {reason}")),
        other => Refusal::Invalid(format!("node {node} answered {other:?}")),
    }
}

/// The placement driver: while this node leads shard 0, plans from fresh reports and takes
/// at most one step per `placement_step`, each awaited (module docs of [`super`] and
/// [`placement`]).
///
/// Cancel safety: runs until aborted; safe to abort at any await (a step under way may still
/// be taken, and the next leader of shard 0 plans from what it finds).
pub(super) async fn run_placement(ops: Arc<ClusterOps>) {
    let mut tick = tokio::time::interval(ops.settings.placement_step);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut commits = CommitWatch::default();
    loop {
        tick.tick().await;
        let leads = ops.cluster.leader(METADATA_SHARD) == Some(ops.node_id);
        let meta = match ops.registry() {
            Some(meta) if leads && ops.net.is_some() && meta.is_seeded() => meta,
            _ => {
                ops.metrics.set_placement_pending(0);
                commits = CommitWatch::default();
                continue;
            }
        };
        let reports = ops.gather(&meta).await;
        let leaders = leader_reports(&reports, ops.cluster.shard_count());
        let busy = commits.busy(
            leaders
                .iter()
                .map(|(&shard, (_, report))| (shard, report.commit)),
            Instant::now(),
        );
        let view = ops.placement_view(&meta, &reports, busy);
        let plan = placement::plan(&view);
        ops.metrics.set_placement_pending(plan.pending);
        let Some(step) = plan.next else {
            continue;
        };
        let started = Instant::now();
        let outcome = match ops.take_step(step, &view).await {
            Ok(()) => {
                tracing::info!(?step, took = ?started.elapsed(), pending = plan.pending, "placement step taken");
                PlacementOutcome::Applied
            }
            Err(Refusal::Retry(reason)) => {
                tracing::debug!(?step, %reason, "placement step postponed");
                PlacementOutcome::Retried
            }
            Err(Refusal::Invalid(reason)) => {
                tracing::warn!(?step, %reason, "placement step failed; planning again");
                PlacementOutcome::Failed
            }
        };
        ops.metrics.count_placement_move(outcome);
    }
}

/// When each shard's commit index last moved, as the placement driver saw it: a shard is busy
/// until its commit index stayed put for [`LEADER_QUIET`] (a shard seen for the first time,
/// e.g. by a new leader of shard 0, counts as just written).
#[derive(Debug, Default)]
struct CommitWatch {
    seen: BTreeMap<ShardId, (u64, Instant)>,
}

impl CommitWatch {
    /// Records this round's commit indexes (by shard, from the shards' leaders) at `now`; the
    /// shards that are busy. Shards not reported keep their record.
    fn busy(
        &mut self,
        commits: impl Iterator<Item = (ShardId, u64)>,
        now: Instant,
    ) -> BTreeSet<ShardId> {
        for (shard, commit) in commits {
            match self.seen.get_mut(&shard) {
                Some((known, _)) if *known == commit => {}
                Some(entry) => *entry = (commit, now),
                None => {
                    self.seen.insert(shard, (commit, now));
                }
            }
        }
        self.seen
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) < LEADER_QUIET)
            .map(|(&shard, _)| shard)
            .collect()
    }
}

/// While the node drains, hands every shard it leads to another voter: the most advanced
/// one connected to this node. One transfer per shard at a time.
///
/// Cancel safety: runs until aborted; safe to abort (transfers under way complete).
pub(super) async fn drain_leaderships(ops: Arc<ClusterOps>) {
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !ops.is_draining() {
            continue;
        }
        for shard in ops.led_shards() {
            if !ops.draining_transfers.lock().insert(shard) {
                continue;
            }
            let Some(to) = ops.drain_target(shard) else {
                ops.draining_transfers.lock().remove(&shard);
                continue;
            };
            let transfers = ops.draining_transfers.clone();
            let done = Box::new(move |result: Result<(), mimid_cluster::TransferError>| {
                transfers.lock().remove(&shard);
                match result {
                    Ok(()) => tracing::info!(shard, to, "leadership handed over for draining"),
                    Err(e) => tracing::info!(shard, to, error = %e, "draining transfer not done"),
                }
            });
            if let Err(e) = ops.cluster.transfer_leader(shard, to, done) {
                ops.draining_transfers.lock().remove(&shard);
                tracing::debug!(shard, error = %e, "draining transfer not queued");
            }
        }
    }
}

impl ClusterOps {
    /// The voter of `shard` (led here) to hand it to while draining: connected, the most
    /// advanced, then the lowest id.
    fn drain_target(&self, shard: ShardId) -> Option<NodeId> {
        let status = self.cluster.shard_status(shard)?;
        status
            .voters
            .iter()
            .copied()
            .filter(|&node| node != self.node_id && self.metrics.cluster_peer_connected(node))
            .max_by_key(|node| {
                (
                    status.progress.get(node).copied().unwrap_or(0),
                    std::cmp::Reverse(*node),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard is busy until its commit index stood still for LEADER_QUIET, and again after
    /// it moves; a shard seen for the first time counts as just written.
    #[test]
    fn shards_are_busy_until_their_commit_index_stands_still() {
        let start = Instant::now();
        let mut watch = CommitWatch::default();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(
            watch.busy([(0, 10), (1, 20)].into_iter(), at(0)),
            BTreeSet::from([0, 1])
        );
        assert_eq!(
            watch.busy([(0, 10), (1, 21)].into_iter(), at(3)),
            BTreeSet::from([0, 1])
        );
        assert_eq!(
            watch.busy([(0, 10), (1, 21)].into_iter(), at(6)),
            BTreeSet::from([1])
        );
        assert_eq!(watch.busy([(0, 10)].into_iter(), at(9)), BTreeSet::new());
        assert_eq!(
            watch.busy([(0, 11)].into_iter(), at(10)),
            BTreeSet::from([0])
        );
    }
}
