//! The operations' background tasks: the registry watcher (every node; with `cluster.join`
//! it also seeds the registry of the node that took `init`, and registers every other node),
//! the placement driver (the node leading shard 0) and the drain loop (a draining node).
//! Shells only: what placement wants is [`super::placement`]'s.

use std::collections::BTreeMap;
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
        let request = OpsRequest::Register {
            cluster_id,
            cluster_addr,
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
    /// `mimid init`), or its own address when it moved.
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
        let advertised = self.settings.advertised?;
        let moved =
            record.state != NodeState::Decommissioned && record.cluster_addr != Some(advertised);
        moved.then_some(MetaChange::SetAddress {
            id: self.node_id,
            cluster_addr: advertised,
        })
    }

    /// The planner's view from the registry and this round's reports.
    fn placement_view(&self, meta: &ClusterMeta, reports: &BTreeMap<NodeId, NodeReport>) -> View {
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
            replication_factor: meta.replication_factor() as usize,
            shard_count,
            shards,
            live: reports.keys().copied().collect(),
            draining: reports
                .values()
                .filter(|report| report.draining)
                .map(|report| report.node_id)
                .collect(),
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
    loop {
        tick.tick().await;
        let leads = ops.cluster.leader(METADATA_SHARD) == Some(ops.node_id);
        let meta = match ops.registry() {
            Some(meta) if leads && ops.net.is_some() && meta.is_seeded() => meta,
            _ => {
                ops.metrics.set_placement_pending(0);
                continue;
            }
        };
        let reports = ops.gather(&meta).await;
        let view = ops.placement_view(&meta, &reports);
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
