//! Cluster operations between nodes, over the node-to-node transport's RPCs
//! ([`NetSender::call`]): a node's report of its replicas (for `mimid node status` and the
//! placement driver), and membership changes and leadership transfers asked of a shard's
//! leader (only the leader takes them, `mimid_cluster::ClusterHandle::change_members`).
//!
//! The transport has one RPC handler per node; [`OpsRpc`] shares it with the forwarded
//! proposals (`crate::cluster_net::ForwardedProposals`) and the bootstrap's gossip
//! ([`super::bootstrap`]): a request that starts with [`OPS_MARKER`] is ours, one that starts
//! with `BOOT_MARKER` the bootstrap's (answered before the node runs, too), anything else is
//! handed on unchanged. A forwarded proposal is a postcard enum, whose first byte is a small
//! variant index, never `0xff`.
//!
//! ```text
//! request (postcard):  OPS_MARKER | OpsRequest::{Status, ChangeMembers, TransferLeader, Register,
//!                                               RegisterWithLocality}
//! answer  (postcard):  OpsAnswer::{Status, Changed, Transferred, Refused, Registered}
//! ```
//!
//! `Register` is the automatic `mimid node add` of a node that joined with `cluster.join`: it
//! asks a connected node of its cluster to put it into the registry (its own replica of shard
//! 0 is empty until the placement driver, which places registered nodes only, gives it one).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use mimid_actors::cluster_meta::{ClusterId, Locality, MetaChange, MetaRefusal, NodeState};
use mimid_actors::hub::Hub;
use mimid_cluster::{
    MembershipChange, MembershipError, NodeId, ShardId, ShardStatus, TransferError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::bootstrap::{Bootstrap, BOOT_MARKER};
use super::ClusterOps;
use crate::cluster_net::{CallError, ForwardedProposals, NetSender, RpcHandler};

/// The first bytes of a cluster-operations request.
pub(crate) const OPS_MARKER: [u8; 4] = [0xff, b'o', b'p', b's'];

/// How long a node waits for another's report.
pub(crate) const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a node waits for a membership change or a leadership transfer on the shard's
/// leader: applied within milliseconds, a transfer gives up after two election timeouts.
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum OpsRequest {
    /// The receiver's [`NodeReport`].
    Status,
    /// Make `change` to `shard`, which the receiver is believed to lead.
    ChangeMembers { shard: ShardId, change: Change },
    /// Hand the leadership of `shard` to voter `to`.
    TransferLeader { shard: ShardId, to: NodeId },
    /// Register the sender (a node that joined cluster `cluster_id` with `cluster.join`) at
    /// `cluster_addr`, or record that it moved there.
    Register {
        cluster_id: ClusterId,
        cluster_addr: SocketAddr,
    },
    /// [`OpsRequest::Register`] with the sender's `locality` (issue 9), recorded with it.
    /// Appended, so a node of the release before reads the other requests as before.
    RegisterWithLocality {
        cluster_id: ClusterId,
        cluster_addr: SocketAddr,
        locality: Locality,
    },
}

/// A membership change on the wire (`MembershipChange` is not serialisable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Change {
    AddLearner(NodeId),
    Promote(NodeId),
    Remove(NodeId),
}

/// The answer to an [`OpsRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum OpsAnswer {
    Status(NodeReport),
    /// The shard's voters and learners after the change, or why it was not made.
    Changed(Result<(Vec<NodeId>, Vec<NodeId>), Refusal>),
    Transferred(Result<(), Refusal>),
    /// The request could not be read.
    Refused(String),
    /// Whether the registry changed, or why the sender was not registered.
    Registered(Result<bool, Refusal>),
}

/// Why the leader did not make a change or a transfer. Every refusal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum Refusal {
    /// Worth asking again shortly: another change in progress, a learner not caught up yet,
    /// leadership moving, a full queue, or a change dropped by a stepping-down leader.
    #[error("{0} (retry)")]
    Retry(String),
    /// The request does not fit the shard's configuration (the asker's view was stale) or the
    /// group stopped.
    #[error("{0}")]
    Invalid(String),
}

/// A node's replicas as its driver last published them, and whether it drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node_id: NodeId,
    pub draining: bool,
    pub shards: Vec<ShardReport>,
}

/// One replica's view of its shard (`mimid_cluster::ShardStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// On the leader, every member's matched index; empty elsewhere.
    pub progress: BTreeMap<NodeId, u64>,
    pub failed: bool,
}

impl From<ShardStatus> for ShardReport {
    fn from(status: ShardStatus) -> Self {
        ShardReport {
            shard: status.shard,
            leader: status.leader,
            term: status.term,
            commit: status.commit,
            applied: status.applied,
            voters: status.voters,
            learners: status.learners,
            progress: status.progress,
            failed: status.failed,
        }
    }
}

impl From<Change> for MembershipChange {
    fn from(change: Change) -> Self {
        match change {
            Change::AddLearner(node) => MembershipChange::AddLearner(node),
            Change::Promote(node) => MembershipChange::Promote(node),
            Change::Remove(node) => MembershipChange::Remove(node),
        }
    }
}

impl From<MembershipError> for Refusal {
    fn from(err: MembershipError) -> Self {
        match err {
            MembershipError::Busy
            | MembershipError::NotLeader
            | MembershipError::Dropped
            | MembershipError::ChangeInProgress
            | MembershipError::LearnerBehind(_) => Refusal::Retry(err.to_string()),
            MembershipError::Stopped
            | MembershipError::UnknownShard
            | MembershipError::InvalidNode
            | MembershipError::AlreadyMember(_)
            | MembershipError::NotALearner(_)
            | MembershipError::NotAMember(_)
            | MembershipError::LastVoter(_)
            | MembershipError::RemovesLeader(_) => Refusal::Invalid(err.to_string()),
        }
    }
}

impl From<TransferError> for Refusal {
    fn from(err: TransferError) -> Self {
        match err {
            TransferError::Busy
            | TransferError::NotLeader
            | TransferError::InProgress(_)
            | TransferError::TimedOut { .. } => Refusal::Retry(err.to_string()),
            TransferError::Stopped | TransferError::UnknownShard | TransferError::NotAVoter(_) => {
                Refusal::Invalid(err.to_string())
            }
        }
    }
}

impl ClusterOps {
    /// Makes `change` to `shard` on this node, which must lead it; resolves once applied.
    ///
    /// Cancel safety: safe to drop; the change may still be applied.
    pub(crate) async fn change_here(
        &self,
        shard: ShardId,
        change: Change,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), Refusal> {
        let (tx, rx) = oneshot::channel();
        let done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.cluster.change_members(shard, change.into(), done)?;
        match rx.await {
            Ok(Ok(membership)) => Ok((membership.voters, membership.learners)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Refusal::Invalid("replication stopped".into())),
        }
    }

    /// Hands the leadership of `shard`, which this node leads, to `to`; resolves once `to`
    /// leads.
    ///
    /// Cancel safety: safe to drop; the transfer goes on.
    pub(crate) async fn transfer_here(&self, shard: ShardId, to: NodeId) -> Result<(), Refusal> {
        let (tx, rx) = oneshot::channel();
        let done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.cluster.transfer_leader(shard, to, done)?;
        match rx.await {
            Ok(result) => result.map_err(Refusal::from),
            Err(_) => Err(Refusal::Invalid("replication stopped".into())),
        }
    }

    /// This node's report.
    pub(crate) fn report(&self) -> NodeReport {
        NodeReport {
            node_id: self.node_id,
            draining: self.is_draining(),
            shards: self
                .cluster
                .status()
                .into_iter()
                .map(ShardReport::from)
                .collect(),
        }
    }

    /// Answers one request from node `from`.
    async fn answer(&self, from: NodeId, request: OpsRequest) -> OpsAnswer {
        match request {
            OpsRequest::Status => OpsAnswer::Status(self.report()),
            OpsRequest::ChangeMembers { shard, change } => {
                OpsAnswer::Changed(self.change_here(shard, change).await)
            }
            OpsRequest::TransferLeader { shard, to } => {
                OpsAnswer::Transferred(self.transfer_here(shard, to).await)
            }
            OpsRequest::Register {
                cluster_id,
                cluster_addr,
            } => OpsAnswer::Registered(
                self.register(from, cluster_id, cluster_addr, Locality::default())
                    .await,
            ),
            OpsRequest::RegisterWithLocality {
                cluster_id,
                cluster_addr,
                locality,
            } => OpsAnswer::Registered(
                self.register(from, cluster_id, cluster_addr, locality)
                    .await,
            ),
        }
    }

    /// Registers node `id` of cluster `cluster_id` at `addr` in the registry (through shard 0's
    /// leader) with its `locality` (none: empty), or records its new address (a registered
    /// node sets its locality itself: `driver.rs`); `Ok(false)` when the registry said so
    /// already.
    ///
    /// Cancel safety: safe to drop; the change may still be applied.
    pub(crate) async fn register(
        &self,
        id: NodeId,
        cluster_id: ClusterId,
        addr: SocketAddr,
        locality: Locality,
    ) -> Result<bool, Refusal> {
        match self.settings.cluster_id {
            Some(own) if own == cluster_id => {}
            Some(own) => {
                return Err(Refusal::Invalid(format!(
                    "cluster id {cluster_id} is not this cluster's {own}"
                )))
            }
            None => {
                return Err(Refusal::Invalid(
                    "this node does not form its cluster with cluster.join".into(),
                ))
            }
        }
        let hub = self
            .hub()
            .ok_or_else(|| Refusal::Retry("the node is stopping".into()))?;
        let change = |change| {
            let hub = hub.clone();
            async move {
                match hub.change_cluster_meta(change).await {
                    Ok(verdict) => Ok(verdict),
                    Err(e) => Err(Refusal::Retry(e.to_string())),
                }
            }
        };
        let add = if locality.is_empty() {
            MetaChange::AddNode {
                id,
                cluster_addr: addr,
            }
        } else {
            MetaChange::AddNodeWithLocality {
                id,
                cluster_addr: addr,
                locality,
            }
        };
        let added = change(add).await?;
        match added {
            Ok(changed) => Ok(changed),
            Err(MetaRefusal::AlreadyRegistered {
                state: NodeState::Decommissioned,
                ..
            }) => Err(Refusal::Invalid(format!(
                "node {id} is decommissioned: a node that comes back needs a new node_id and an \
                 empty data directory"
            ))),
            Err(MetaRefusal::AlreadyRegistered { .. }) => {
                match change(MetaChange::SetAddress {
                    id,
                    cluster_addr: addr,
                })
                .await?
                {
                    Ok(changed) => Ok(changed),
                    Err(refusal) => Err(Refusal::Invalid(refusal.to_string())),
                }
            }
            Err(refusal @ MetaRefusal::NotSeeded) => Err(Refusal::Retry(refusal.to_string())),
            Err(refusal) => Err(Refusal::Invalid(refusal.to_string())),
        }
    }
}

/// Asks node `to` `request` over `net`; the answer, or why there is none.
///
/// Cancel safety: safe to drop; the call's stream is reset.
pub(crate) async fn call(
    net: &NetSender,
    to: NodeId,
    request: &OpsRequest,
    timeout: Duration,
) -> Result<OpsAnswer, String> {
    let mut body = OPS_MARKER.to_vec();
    body.extend(postcard::to_stdvec(request).expect("serialising into memory cannot fail"));
    let answer = net
        .call(to, body, timeout)
        .await
        .map_err(|e: CallError| format!("node {to}: {e}"))?;
    postcard::from_bytes(&answer)
        .map_err(|e| format!("node {to} answered something this node cannot read: {e}"))
}

/// The node's RPC handler: cluster operations here, bootstrap gossip to the [`Bootstrap`],
/// forwarded proposals to [`ForwardedProposals`]. Holds the operations and the bootstrap
/// weakly (the transport, which holds this handler, must not keep them alive) and answers
/// "starting" until [`OpsRpc::set_ops`] / [`OpsRpc::set_bootstrap`], like the forwarded
/// proposals' handler.
pub struct OpsRpc {
    ops: OnceLock<Weak<ClusterOps>>,
    bootstrap: OnceLock<Weak<Bootstrap>>,
    forwarded: Arc<ForwardedProposals>,
}

impl OpsRpc {
    /// A handler passing proposals to `forwarded` and refusing operations until `set`.
    pub fn new(forwarded: Arc<ForwardedProposals>) -> Arc<Self> {
        Arc::new(OpsRpc {
            ops: OnceLock::new(),
            bootstrap: OnceLock::new(),
            forwarded,
        })
    }

    /// Starts answering bootstrap gossip with `bootstrap`. A second call changes nothing.
    pub fn set_bootstrap(&self, bootstrap: &Arc<Bootstrap>) {
        let _ = self.bootstrap.set(Arc::downgrade(bootstrap));
    }

    /// Starts answering forwarded proposals with `hub` ([`ForwardedProposals::set`]).
    pub fn set(&self, hub: &Arc<Hub>) {
        self.forwarded.set(hub);
    }

    /// Franks the items other nodes' relays pull from here with `franking`.
    pub fn set_franking(&self, franking: &Arc<crate::franking::Franking>) {
        self.forwarded.set_franking(franking);
    }

    /// Starts answering cluster operations with `ops`. A second call changes nothing.
    pub fn set_ops(&self, ops: &Arc<ClusterOps>) {
        let _ = self.ops.set(Arc::downgrade(ops));
    }
}

impl RpcHandler for OpsRpc {
    fn handle(&self, from: NodeId, body: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        if let Some(request) = body.strip_prefix(BOOT_MARKER.as_slice()) {
            return match self.bootstrap.get().and_then(Weak::upgrade) {
                Some(bootstrap) => bootstrap.answer(from, request),
                None => {
                    let answer = super::bootstrap::BootAnswer::Refused(
                        "this node does not form its cluster with cluster.join".into(),
                    );
                    let bytes =
                        postcard::to_stdvec(&answer).expect("serialising into memory cannot fail");
                    Box::pin(async move { bytes })
                }
            };
        }
        let Some(request) = body.strip_prefix(OPS_MARKER.as_slice()) else {
            return self.forwarded.handle(from, body);
        };
        let decoded = postcard::from_bytes::<OpsRequest>(request);
        let ops = self.ops.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let answer = match (decoded, ops) {
                (Err(e), _) => OpsAnswer::Refused(format!(
                    "node {from} sent an operation this node cannot read: {e}"
                )),
                (Ok(_), None) => OpsAnswer::Refused("this node is starting or stopping".into()),
                (Ok(request), Some(ops)) => ops.answer(from, request).await,
            };
            postcard::to_stdvec(&answer).expect("serialising into memory cannot fail")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refusals_say_whether_to_retry() {
        for request in [
            OpsRequest::Status,
            OpsRequest::ChangeMembers {
                shard: 3,
                change: Change::Promote(4),
            },
            OpsRequest::TransferLeader { shard: 1, to: 2 },
            OpsRequest::Register {
                cluster_id: ClusterId::from_bytes([7; 16]),
                cluster_addr: "127.0.0.1:7004".parse().unwrap(),
            },
            OpsRequest::RegisterWithLocality {
                cluster_id: ClusterId::from_bytes([7; 16]),
                cluster_addr: "127.0.0.1:7004".parse().unwrap(),
                locality: "region=eu,zone=eu-1".parse().unwrap(),
            },
        ] {
            let encoded = postcard::to_stdvec(&request).unwrap();
            let decoded: OpsRequest = postcard::from_bytes(&encoded).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{request:?}"));
        }
        let refusals = [
            (MembershipError::ChangeInProgress, true),
            (MembershipError::LearnerBehind(4), true),
            (MembershipError::NotLeader, true),
            (MembershipError::AlreadyMember(4), false),
            (MembershipError::RemovesLeader(1), false),
        ];
        for (err, retry) in refusals {
            assert_eq!(
                matches!(Refusal::from(err.clone()), Refusal::Retry(_)),
                retry,
                "{err}"
            );
        }
    }
}
