//! Proposals forwarded to a shard's leader (ARCHITECTURE.md "Cluster"): the hub's
//! [`ProposalRouter`] over [`NetSender::call`] on the origin node, and the [`RpcHandler`] that
//! answers them through [`Hub::propose_forwarded`] on the leader.
//!
//! ```text
//! request (postcard):  NodeRequest::Propose { shard, command }   command: unstamped Command
//! answer  (postcard):  NodeAnswer::Proposed(Result<ApplyOutput, ForwardError>)
//! ```
//!
//! The leader stamps the command with its own clock and proposes it locally, never forwarding
//! it again: a node that does not lead the shard answers `ForwardError::NotLeader`, and the
//! origin's proposer asks its replica for the leader again and retries once. An RPC that gets no
//! answer (unreachable leader, connection lost, timeout) is a 503 for the client, who may
//! resend: the request may still have taken effect, and resends are idempotent
//! (ARCHITECTURE.md "Retries"). It also reports the leader unreachable to the cluster
//! ([`super::FrameSink::unreachable`]), like a lost connection: a shard that hibernated under
//! that leader wakes here and elects another one if the leader stays silent, so the client's
//! resend finds a leader.
//!
//! Both sides are set up before the hub and the transport exist (they start in a cycle, see
//! [`super::glue`]) and bound later: until then the router answers 503 and the handler refuses.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use mimid_actors::hub::{ForwardError, Forwarding, Hub, HubError, ProposalRouter};
use mimid_actors::shard::ApplyOutput;
use mimid_cluster::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

use super::{CallError, NetSender, RpcHandler};
use crate::metrics::{ForwardOutcome, Metrics};

/// How long the origin waits for the leader's answer: the leader answers once the entry is
/// durable on a quorum and applied, which takes milliseconds unless leadership is moving.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node asks another.
#[derive(Debug, Serialize, Deserialize)]
enum NodeRequest {
    /// Propose `command` (a postcard-encoded, unstamped `Command`) to `shard`, which the
    /// receiver is believed to lead.
    Propose { shard: ShardId, command: Vec<u8> },
}

/// The answer to a [`NodeRequest`].
#[derive(Debug, Serialize, Deserialize)]
enum NodeAnswer {
    /// The output of the proposal's apply on the leader, or why there is none.
    Proposed(Result<ApplyOutput, ForwardError>),
}

/// The origin side: the hub's [`ProposalRouter`] over the node-to-node transport.
pub struct NetRouter {
    net: OnceLock<NetSender>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl NetRouter {
    /// A router that answers 503 until [`NetRouter::set`].
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(NetRouter {
            net: OnceLock::new(),
            metrics,
            timeout: FORWARD_TIMEOUT,
        })
    }

    /// Starts routing through `net`. A second call changes nothing.
    pub fn set(&self, net: NetSender) {
        let _ = self.net.set(net);
    }

    /// [`NetRouter::new`] waiting `timeout` for the leader's answer instead of
    /// [`FORWARD_TIMEOUT`].
    #[cfg(test)]
    pub(super) fn with_timeout(metrics: Arc<Metrics>, timeout: Duration) -> Arc<Self> {
        Arc::new(NetRouter {
            net: OnceLock::new(),
            metrics,
            timeout,
        })
    }
}

impl ProposalRouter for NetRouter {
    fn forward(&self, leader: NodeId, shard: ShardId, command: Vec<u8>) -> Forwarding {
        let metrics = self.metrics.clone();
        let Some(net) = self.net.get() else {
            metrics.count_forwarded_proposal(ForwardOutcome::Failed);
            let error = HubError::Unavailable("the node-to-node transport is starting".into());
            return Box::pin(async move { Err(error.into()) });
        };
        let request = encode(&NodeRequest::Propose { shard, command });
        let call = net.call(leader, request, self.timeout);
        let timeout = self.timeout;
        let net = net.clone();
        Box::pin(async move {
            let (result, outcome) = match call.await {
                Ok(answer) => match postcard::from_bytes::<NodeAnswer>(&answer) {
                    Ok(NodeAnswer::Proposed(result)) => {
                        let outcome = match &result {
                            Ok(_) => ForwardOutcome::Applied,
                            Err(ForwardError::NotLeader) => ForwardOutcome::NotLeader,
                            Err(ForwardError::Hub(_)) => ForwardOutcome::Refused,
                        };
                        (result, outcome)
                    }
                    Err(e) => (
                        Err(HubError::Unavailable(format!(
                            "node {leader}, leader of shard {shard}, answered something this \
                             node cannot read ({e}); the request may have taken effect"
                        ))
                        .into()),
                        ForwardOutcome::Failed,
                    ),
                },
                Err(e) => {
                    if matches!(
                        e,
                        CallError::Unreachable | CallError::Closed | CallError::Timeout
                    ) {
                        net.report_unreachable(leader);
                    }
                    (
                        Err(HubError::Unavailable(call_failed(leader, shard, &e, timeout)).into()),
                        ForwardOutcome::Failed,
                    )
                }
            };
            metrics.count_forwarded_proposal(outcome);
            result
        })
    }
}

/// The reason a client is given when the leader could not be asked.
fn call_failed(leader: NodeId, shard: ShardId, error: &CallError, timeout: Duration) -> String {
    match error {
        CallError::Unreachable => {
            format!("node {leader}, leader of shard {shard}, is unreachable from this node")
        }
        CallError::Timeout => format!(
            "node {leader}, leader of shard {shard}, did not answer within {timeout:?}; the \
             request may have taken effect"
        ),
        other => format!(
            "forwarding to node {leader}, leader of shard {shard}, failed: {other}; the request \
             may have taken effect"
        ),
    }
}

/// The leader side: answers forwarded proposals with the hub, once it is set. Holds the hub
/// weakly, so a stopping node's hub is not kept alive by the transport.
pub struct ForwardedProposals {
    hub: OnceLock<Weak<Hub>>,
}

impl ForwardedProposals {
    /// A handler that refuses (503) until [`ForwardedProposals::set`].
    pub fn new() -> Arc<Self> {
        Arc::new(ForwardedProposals {
            hub: OnceLock::new(),
        })
    }

    /// Starts answering with `hub`. A second call changes nothing.
    pub fn set(&self, hub: &Arc<Hub>) {
        let _ = self.hub.set(Arc::downgrade(hub));
    }
}

impl RpcHandler for ForwardedProposals {
    fn handle(&self, from: NodeId, body: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let hub = self.hub.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let result = match postcard::from_bytes::<NodeRequest>(&body) {
                Err(e) => Err(HubError::Rejected(format!(
                    "node {from} sent a request this node cannot read: {e}"
                ))
                .into()),
                Ok(NodeRequest::Propose { shard, command }) => match hub {
                    Some(hub) => hub.propose_forwarded(shard, &command).await,
                    None => Err(
                        HubError::Unavailable("this node is starting or stopping".into()).into(),
                    ),
                },
            };
            encode(&NodeAnswer::Proposed(result))
        })
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("serialising into memory cannot fail")
}

#[cfg(test)]
mod tests {
    use mimid_actors::command::UpdateVerdict;
    use mimid_actors::directory::{DirectoryError, KeyPackageError};

    use super::*;

    /// An apply output crosses nodes unchanged, including refusals with static reasons.
    #[test]
    fn answers_round_trip_outputs_and_refusals() {
        let answers = [
            NodeAnswer::Proposed(Ok(ApplyOutput::Updated(UpdateVerdict::Success {
                accepted_ts_ms: 7,
                seq: 3,
            }))),
            NodeAnswer::Proposed(Ok(ApplyOutput::Published(Err(
                DirectoryError::InvalidKeyPackage {
                    index: 1,
                    reason: KeyPackageError::Truncated {
                        field: "init_key".into(),
                    },
                },
            )))),
            NodeAnswer::Proposed(Err(ForwardError::NotLeader)),
            NodeAnswer::Proposed(Err(HubError::Unavailable("x".into()).into())),
        ];
        for answer in answers {
            let decoded: NodeAnswer = postcard::from_bytes(&encode(&answer)).expect("decodes");
            assert_eq!(format!("{decoded:?}"), format!("{answer:?}"));
        }
    }

    #[tokio::test]
    async fn a_request_that_does_not_decode_is_refused_and_a_hubless_node_is_unavailable() {
        let handler = ForwardedProposals::new();
        let answer = handler.handle(2, vec![0xff, 0xff, 0xff]).await;
        match postcard::from_bytes::<NodeAnswer>(&answer) {
            Ok(NodeAnswer::Proposed(Err(ForwardError::Hub(HubError::Rejected(reason))))) => {
                assert!(reason.contains("node 2"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let request = encode(&NodeRequest::Propose {
            shard: 0,
            command: vec![],
        });
        let answer = handler.handle(2, request).await;
        assert!(matches!(
            postcard::from_bytes::<NodeAnswer>(&answer),
            Ok(NodeAnswer::Proposed(Err(ForwardError::Hub(
                HubError::Unavailable(_)
            ))))
        ));
    }
}
