//! Proposals forwarded to a shard's leader (ARCHITECTURE.md "Cluster"): the hub's
//! [`ProposalRouter`] over [`NetSender::call`] on the origin node, and the [`RpcHandler`] that
//! answers them through [`Hub::propose_forwarded`] on the leader.
//!
//! ```text
//! request (postcard):  NodeRequest::Propose { shard, command }   command: unstamped Command
//!                      [RequestContext { trace }]                 optional, appended
//! answer  (postcard):  NodeAnswer::Proposed(Result<ApplyOutput, ForwardError>)
//! request (postcard):  NodeRequest::Read { shard, read }         read: RemoteRead
//! answer  (postcard):  NodeAnswer::Read(Result<Vec<u8>, HubError>)
//! request (postcard):  NodeRequest::Pull { shard, request }      request: PullRequest
//! answer  (postcard):  NodeAnswer::Pulled(Result<Vec<u8>, HubError>)   Pulled, Franks filled
//! ```
//!
//! Tracing (ARCHITECTURE.md "Tracing"): the origin's `forward_call` span (a child of the
//! proposal's `raft_proposal` span) sends its W3C trace context (`traceparent`, `tracestate`,
//! [`crate::telemetry::trace_fields`]) in a [`RequestContext`] after the request; the leader's
//! `forwarded_proposal` span takes it as its remote parent, and the leader's own
//! `raft_proposal` span (proposal to verdict, apply included) is that span's child, so a
//! client request whose proposal went to another node is still one trace. The context is
//! appended, not a field of the request: postcard reads a value from the front of the bytes
//! and ignores what follows, so a leader of the release before reads the request as before
//! and ignores the context, and a request without one (from such an origin) or with one this
//! node cannot read starts a trace of its own on the leader. A request is never refused over
//! its context.
//!
//! Reads and pulls serve a node that holds no replica of the shard (`mimid_actors::hub::remote`
//! module docs): the answering node reads its own replica ([`Hub::serve_read`],
//! [`Hub::pull`]; a pull's items get the Franks this node computes for its own streams) or
//! answers `Unavailable` when it holds none either.
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

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use mimid_actors::command::CommandScope;
use mimid_actors::hub::remote::{PullRequest, MAX_PULL_WAIT};
use mimid_actors::hub::{ForwardError, Forwarding, Hub, HubError, ProposalRouter, ReadForwarding};
use mimid_actors::shard::ApplyOutput;
use mimid_cluster::{NodeId, ShardId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use super::{CallError, NetSender, RpcHandler};
use crate::franking::Franking;
use crate::metrics::{ForwardOutcome, Limit, Metrics};
use crate::wire::Encode as _;

/// How long the origin waits for the leader's answer: the leader answers once the entry is
/// durable on a quorum and applied, which takes milliseconds unless leadership is moving.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node asks another.
#[derive(Debug, Serialize, Deserialize)]
enum NodeRequest {
    /// Propose `command` (a postcard-encoded, unstamped `Command`) to `shard`, which the
    /// receiver is believed to lead.
    Propose { shard: ShardId, command: Vec<u8> },
    /// Read `shard` for a node that holds no replica of it (`read`: a postcard `RemoteRead`).
    Read { shard: ShardId, read: Vec<u8> },
    /// Pull a client's items of `shard` (`request`: a postcard `PullRequest`).
    Pull { shard: ShardId, request: Vec<u8> },
}

/// What travels after a [`NodeRequest`] in the same request body (module docs). Fields are
/// only ever appended, for the same reason.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RequestContext {
    /// The W3C trace context of the origin's `forward_call` span, as name-value pairs.
    trace: Vec<(String, String)>,
}

/// Longest [`RequestContext`] a leader reads; a longer one is ignored. A `traceparent` is 55
/// bytes and W3C Trace Context §3.3.1.5 lets a `tracestate` be cut at 512 characters, so
/// this is ample.
const MAX_CONTEXT_BYTES: usize = 2048;

/// The answer to a [`NodeRequest`].
#[derive(Debug, Serialize, Deserialize)]
enum NodeAnswer {
    /// The output of the proposal's apply on the leader, or why there is none.
    Proposed(Result<ApplyOutput, ForwardError>),
    /// A read's answer (postcard), or why there is none.
    Read(Result<Vec<u8>, HubError>),
    /// A pull's answer (postcard `Pulled`), or why there is none.
    Pulled(Result<Vec<u8>, HubError>),
}

/// The origin side: the hub's [`ProposalRouter`] over the node-to-node transport.
pub struct NetRouter {
    net: OnceLock<NetSender>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Per peer, the long polls relays may have open to it ([`super::PULL_STREAMS`]).
    pull_slots: Mutex<BTreeMap<NodeId, Arc<Semaphore>>>,
    slots_per_peer: usize,
}

impl NetRouter {
    /// A router that answers 503 until [`NetRouter::set`].
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(NetRouter {
            net: OnceLock::new(),
            metrics,
            timeout: FORWARD_TIMEOUT,
            pull_slots: Mutex::default(),
            slots_per_peer: super::PULL_STREAMS,
        })
    }

    /// Starts routing through `net`. A second call changes nothing.
    pub fn set(&self, net: NetSender) {
        let _ = self.net.set(net);
    }

    /// [`NetRouter::new`] waiting `timeout` for the leader's answer instead of
    /// [`FORWARD_TIMEOUT`], with `slots` long polls per peer instead of
    /// [`super::PULL_STREAMS`].
    #[cfg(test)]
    pub(super) fn with_pull_slots(
        metrics: Arc<Metrics>,
        timeout: Duration,
        slots: usize,
    ) -> Arc<Self> {
        Arc::new(NetRouter {
            net: OnceLock::new(),
            metrics,
            timeout,
            pull_slots: Mutex::default(),
            slots_per_peer: slots,
        })
    }
}

impl NetRouter {
    /// Sends `request` to `node` and hands back the bytes of a read or pull answer.
    fn ask(
        &self,
        node: NodeId,
        shard: ShardId,
        request: NodeRequest,
        wait: Duration,
    ) -> ReadForwarding {
        let Some(net) = self.net.get() else {
            let error = HubError::Unavailable("the node-to-node transport is starting".into());
            return Box::pin(async move { Err(error) });
        };
        let kind = match request {
            NodeRequest::Pull { .. } => "pull",
            _ => "read",
        };
        let call = net.call(node, encode(&request), wait);
        let net = net.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let (result, outcome) = match call.await {
                Ok(answer) => match postcard::from_bytes::<NodeAnswer>(&answer) {
                    Ok(NodeAnswer::Read(result) | NodeAnswer::Pulled(result)) => {
                        let outcome = if result.is_ok() {
                            "answered"
                        } else {
                            "refused"
                        };
                        (result, outcome)
                    }
                    Ok(NodeAnswer::Proposed(_)) | Err(_) => (
                        Err(HubError::Unavailable(format!(
                            "node {node} answered a read of shard {shard} with something this \
                             node cannot read"
                        ))),
                        "failed",
                    ),
                },
                Err(e) => {
                    if matches!(
                        e,
                        CallError::Unreachable | CallError::Closed | CallError::Timeout
                    ) {
                        net.report_unreachable(node);
                    }
                    (
                        Err(HubError::Unavailable(format!(
                            "reading shard {shard} on node {node} failed: {e}"
                        ))),
                        "failed",
                    )
                }
            };
            metrics.count_remote_read(kind, outcome);
            result
        })
    }
}

impl ProposalRouter for NetRouter {
    fn read(&self, node: NodeId, shard: ShardId, read: Vec<u8>) -> ReadForwarding {
        self.ask(node, shard, NodeRequest::Read { shard, read }, self.timeout)
    }

    fn pull(&self, node: NodeId, shard: ShardId, request: Vec<u8>) -> ReadForwarding {
        // The answer may wait up to the pull's own wait (at most MAX_PULL_WAIT) on the node.
        let wait = self.timeout + MAX_PULL_WAIT;
        let slots = self
            .pull_slots
            .lock()
            .entry(node)
            .or_insert_with(|| Arc::new(Semaphore::new(self.slots_per_peer)))
            .clone();
        let metrics = self.metrics.clone();
        let ask = self.ask(node, shard, NodeRequest::Pull { shard, request }, wait);
        Box::pin(async move {
            let _slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics.count_limit_hit(Limit::RelayStreams);
                    slots
                        .acquire_owned()
                        .await
                        .map_err(|_| HubError::Unavailable("the relay slots closed".into()))?
                }
            };
            ask.await
        })
    }

    fn forward(
        &self,
        leader: NodeId,
        shard: ShardId,
        scope: CommandScope,
        command: Vec<u8>,
    ) -> Forwarding {
        let metrics = self.metrics.clone();
        let Some(net) = self.net.get() else {
            metrics.count_forwarded_proposal(scope, ForwardOutcome::Failed);
            let error = HubError::Unavailable("the node-to-node transport is starting".into());
            return Box::pin(async move { Err(error.into()) });
        };
        // A child of the current span, which the hub's proposer makes the proposal's
        // `raft_proposal` (`mimid_actors::hub::ProposalRouter::forward`).
        let span = tracing::info_span!(
            "forward_call",
            otel.kind = "client",
            leader,
            shard,
            outcome = tracing::field::Empty,
        );
        let context = RequestContext {
            trace: crate::telemetry::trace_fields(&span),
        };
        let request = encode_request(&NodeRequest::Propose { shard, command }, &context);
        let call = net.call(leader, request, self.timeout);
        let timeout = self.timeout;
        let net = net.clone();
        let call_span = span.clone();
        let forwarded = async move {
            let (result, outcome) = match call.await {
                Ok(answer) => match postcard::from_bytes::<NodeAnswer>(&answer) {
                    Ok(NodeAnswer::Proposed(result)) => {
                        let outcome = match &result {
                            Ok(_) => ForwardOutcome::Applied,
                            Err(ForwardError::NotLeader | ForwardError::NotLeaderNaming(_)) => {
                                ForwardOutcome::NotLeader
                            }
                            Err(ForwardError::Hub(_)) => ForwardOutcome::Refused,
                        };
                        (result, outcome)
                    }
                    Ok(NodeAnswer::Read(_) | NodeAnswer::Pulled(_)) => (
                        Err(HubError::Unavailable(format!(
                            "node {leader}, leader of shard {shard}, answered a proposal with a \
                             read's answer; the request may have taken effect"
                        ))
                        .into()),
                        ForwardOutcome::Failed,
                    ),
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
            metrics.count_forwarded_proposal(scope, outcome);
            call_span.record("outcome", outcome.as_str());
            result
        };
        Box::pin(forwarded.instrument(span))
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
    franking: OnceLock<Weak<Franking>>,
}

impl ForwardedProposals {
    /// A handler that refuses (503) until [`ForwardedProposals::set`].
    pub fn new() -> Arc<Self> {
        Arc::new(ForwardedProposals {
            hub: OnceLock::new(),
            franking: OnceLock::new(),
        })
    }

    /// Starts answering with `hub`. A second call changes nothing.
    pub fn set(&self, hub: &Arc<Hub>) {
        let _ = self.hub.set(Arc::downgrade(hub));
    }

    /// Franks pulled items with `franking` (until then they go without: a relay that asks
    /// before it is set delivers them unfranked, as a stream would before the keys are known).
    pub fn set_franking(&self, franking: &Arc<Franking>) {
        let _ = self.franking.set(Arc::downgrade(franking));
    }
}

impl RpcHandler for ForwardedProposals {
    fn handle(&self, from: NodeId, body: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let hub = self.hub.get().and_then(Weak::upgrade);
        let franking = self.franking.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let starting = || HubError::Unavailable("this node is starting or stopping".into());
            match decode_request(&body) {
                Err(e) => encode(&NodeAnswer::Proposed(Err(HubError::Rejected(format!(
                    "node {from} sent a request this node cannot read: {e}"
                ))
                .into()))),
                Ok((NodeRequest::Propose { shard, command }, context)) => {
                    // The origin's trace continues here (module docs), whatever span the
                    // transport's connection task runs in.
                    let span = tracing::info_span!(
                        parent: None,
                        "forwarded_proposal",
                        otel.kind = "server",
                        from,
                        shard,
                    );
                    crate::telemetry::set_remote_parent_from_fields(&span, &context.trace);
                    let result = match hub {
                        Some(hub) => {
                            hub.propose_forwarded(shard, &command)
                                .instrument(span)
                                .await
                        }
                        None => Err(starting().into()),
                    };
                    encode(&NodeAnswer::Proposed(result))
                }
                Ok((NodeRequest::Read { shard, read }, _)) => {
                    let result = match hub {
                        Some(hub) => hub.serve_read(shard, &read).await,
                        None => Err(starting()),
                    };
                    encode(&NodeAnswer::Read(result))
                }
                Ok((NodeRequest::Pull { shard, request }, _)) => {
                    let result = match hub {
                        Some(hub) => serve_pull(&hub, franking.as_deref(), shard, &request).await,
                        None => Err(starting()),
                    };
                    encode(&NodeAnswer::Pulled(result))
                }
            }
        })
    }
}

/// [`Hub::pull`] for another node's relay, with the Franks this node computes for its own
/// streams.
async fn serve_pull(
    hub: &Hub,
    franking: Option<&Franking>,
    shard: ShardId,
    request: &[u8],
) -> Result<Vec<u8>, HubError> {
    let request: PullRequest = postcard::from_bytes(request)
        .map_err(|e| HubError::Rejected(format!("a pull that does not decode: {e}")))?;
    let wait = Duration::from_millis(request.wait_ms);
    let mut pulled = hub
        .pull(shard, &request.client, &request.cursors, wait)
        .await?;
    if let Some(franking) = franking {
        for pulled in &mut pulled.items {
            pulled.frank = franking
                .frank_of_item(&pulled.room, &pulled.item)
                .and_then(|frank| frank.to_bytes().ok());
        }
    }
    Ok(encode(&pulled))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("serialising into memory cannot fail")
}

/// `request`, then `context` unless it is empty (module docs).
fn encode_request(request: &NodeRequest, context: &RequestContext) -> Vec<u8> {
    let mut bytes = encode(request);
    if *context != RequestContext::default() {
        bytes.extend(encode(context));
    }
    bytes
}

/// The request at the front of `body` and the context after it: an empty, oversized or
/// unreadable context is the default one (module docs). Only the request can fail.
fn decode_request(body: &[u8]) -> Result<(NodeRequest, RequestContext), postcard::Error> {
    let (request, rest) = postcard::take_from_bytes::<NodeRequest>(body)?;
    let context = if rest.is_empty() || rest.len() > MAX_CONTEXT_BYTES {
        RequestContext::default()
    } else {
        postcard::from_bytes(rest).unwrap_or_default()
    };
    Ok((request, context))
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
            NodeAnswer::Proposed(Err(ForwardError::NotLeaderNaming(3))),
            NodeAnswer::Proposed(Err(HubError::Unavailable("x".into()).into())),
        ];
        for answer in answers {
            let decoded: NodeAnswer = postcard::from_bytes(&encode(&answer)).expect("decodes");
            assert_eq!(format!("{decoded:?}"), format!("{answer:?}"));
        }
    }

    /// The trace context is appended to the request: a node of the release before (which
    /// reads a `NodeRequest` with `postcard::from_bytes`) reads the request unchanged, a
    /// request without a context or with one this node cannot read still decodes, and only a
    /// request that does not decode is an error.
    #[test]
    fn the_trace_context_rides_after_the_request_and_never_refuses_it() {
        let request = || NodeRequest::Propose {
            shard: 3,
            command: vec![1, 2, 3],
        };
        let context = RequestContext {
            trace: vec![(
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            )],
        };
        let bytes = encode_request(&request(), &context);
        let plain = encode(&request());
        assert!(bytes.len() > plain.len() && bytes.starts_with(&plain));
        let shape = |r: &NodeRequest| format!("{r:?}");
        // The release before: the request as before, the context ignored.
        let old: NodeRequest = postcard::from_bytes(&bytes).expect("an older node reads it");
        assert_eq!(shape(&old), shape(&request()));
        let (new, read) = decode_request(&bytes).expect("decodes");
        assert_eq!((shape(&new), read), (shape(&request()), context));
        // No context (an older origin, or tracing off): nothing is appended.
        assert_eq!(
            encode_request(&request(), &RequestContext::default()),
            plain
        );
        let (_, read) = decode_request(&plain).expect("decodes");
        assert_eq!(read, RequestContext::default());
        // A context this node cannot read, or an oversized one, is ignored.
        for tail in [vec![0xff; 7], vec![1; MAX_CONTEXT_BYTES + 1]] {
            let mut odd = plain.clone();
            odd.extend(tail);
            let (new, read) = decode_request(&odd).expect("the request still decodes");
            assert_eq!(shape(&new), shape(&request()));
            assert_eq!(read, RequestContext::default());
        }
        assert!(decode_request(&[0xff, 0xff]).is_err());
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
        // Reads and pulls of a node without a hub are unavailable too: the asker tries
        // another member of the shard.
        let read = encode(&NodeRequest::Read {
            shard: 1,
            read: vec![],
        });
        assert!(matches!(
            postcard::from_bytes::<NodeAnswer>(&handler.handle(2, read).await),
            Ok(NodeAnswer::Read(Err(HubError::Unavailable(_))))
        ));
        let pull = encode(&NodeRequest::Pull {
            shard: 1,
            request: vec![],
        });
        assert!(matches!(
            postcard::from_bytes::<NodeAnswer>(&handler.handle(2, pull).await),
            Ok(NodeAnswer::Pulled(Err(HubError::Unavailable(_))))
        ));
    }
}
