//! One trace across providers and across the nodes of one provider (issue "Observability and
//! operations"): W3C Trace Context (`traceparent`) on every server-to-server request (MIMI.md
//! §3.1) and on proposals forwarded to their shard's leader, spans collected in memory.
//!
//! The tracing subscriber is global to the test process, so this file installs it once
//! ([`exporter`]), with an in-memory exporter that every test reads; the tests run in this
//! process side by side, so each finds its own spans by its own room and never resets the
//! exporter.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::SystemTime;

use mimid_actors::ids::{RoomId, UserId};
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::client::{Event, SubmitResult, UpdateResult};
use mimid_node::config::{LogFormat, LogSettings, TelemetrySettings};
use mimid_node::telemetry::{self, Installed, TelemetryGuard};
use mimid_tests::{
    connect_providers, create_room_when_led, submit_resending, TestCluster, TestNode, WAIT,
};
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

/// The process's exporter, installed with the global subscriber by the first test that asks.
fn exporter() -> &'static InMemorySpanExporter {
    static INSTALLED: OnceLock<(TelemetryGuard, InMemorySpanExporter)> = OnceLock::new();
    let (_, exporter) = INSTALLED.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let log = LogSettings {
            format: LogFormat::Text,
            // Request spans are INFO; other crates' chatter stays out of the test output.
            level: "warn,mimid_node=info,mimid_actors=info".into(),
        };
        let (guard, installed) =
            telemetry::init_with_exporter(&log, &TelemetrySettings::default(), exporter.clone())
                .expect("telemetry installs");
        assert_eq!(installed, Installed::Now, "nothing else set a subscriber");
        (guard, exporter)
    });
    exporter
}

/// The value of attribute `key` of `span`, as text.
fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// One line per span: ids, name and our own fields (not the code location and thread).
fn describe(span: &SpanData) -> String {
    let fields = span
        .attributes
        .iter()
        .filter(|kv| !kv.key.as_str().contains('.') && kv.key.as_str() != "target")
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} {} <- {} {} {fields}",
        span.span_context.trace_id(),
        span.span_context.span_id(),
        span.parent_span_id,
        span.name
    )
}

/// Finished spans named `name` with every attribute in `attrs`.
fn spans<'a>(all: &'a [SpanData], name: &str, attrs: &[(&str, &str)]) -> Vec<&'a SpanData> {
    all.iter()
        .filter(|span| span.name == name)
        .filter(|span| {
            attrs
                .iter()
                .all(|(key, value)| attr(span, key).as_deref() == Some(*value))
        })
        .collect()
}

fn children<'a>(all: &'a [SpanData], parent: &SpanData, name: &str) -> Vec<&'a SpanData> {
    all.iter()
        .filter(|span| span.name == name && span.parent_span_id == parent.span_context.span_id())
        .collect()
}

/// Polls the exporter until `found` finds what it looks for (spans end as requests finish,
/// fan-out follows the answer), panicking with `what` at the deadline.
async fn wait_for<T>(
    exporter: &InMemorySpanExporter,
    what: &str,
    found: impl Fn(&[SpanData]) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = exporter.get_finished_spans().expect("exporter works");
        if let Some(result) = found(&all) {
            return result;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} among {} spans:\n{}",
            all.len(),
            all.iter().map(describe).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Bob@b submits a message to a room hosted at a (protocol-06 §5.3): b forwards
/// `/v1/submitMessage` to a. b's client request, b's outgoing call, a's handling of it, a's
/// room actor and Raft proposal are one trace, and a's incoming span is the child of b's
/// outgoing one (remote parent). The fan-out that follows (§5.4) is a trace of its own that
/// crosses back: a's notify, a's call to b and b's handling of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_message_is_one_trace_across_providers_protocol06_5_3() {
    let exporter = exporter();

    let ca = CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA");
    let a = TestNode::start_provider("a.example", &ca).await;
    let b = TestNode::start_provider("b.example", &ca).await;
    connect_providers(&[&a, &b]);
    let club = RoomId::parse("mimi://a.example/r/club").unwrap();
    let mut alice = a.client("alice", "phone", 1).await;
    let mut bob = b.client("bob", "laptop", 1).await;
    bob.connect_stream().await.expect("stream opens");
    alice.create_room(&club).await.expect("room created");
    let bob_user = UserId::parse("mimi://b.example/u/bob").unwrap();
    let added = alice
        .add_users(&club, &[bob_user])
        .await
        .expect("bob added");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    match bob.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Joined { .. }) => {}
        other => panic!("bob expected a Welcome, got {other:?}"),
    }

    let sent = bob.send_text(&club, "traced").await.expect("submit works");
    assert!(matches!(sent, SubmitResult::Accepted { .. }), "{sent:?}");

    // b: the client's request and its forwarding to a.
    let (b_client, b_call) = wait_for(exporter, "client_api -> peer_call at b", |all| {
        let client = spans(all, "client_api", &[("room", club.as_str())])
            .into_iter()
            .find(|span| attr(span, "path").is_some_and(|p| p.contains("submitMessage")))?
            .clone();
        let call = children(all, &client, "peer_call")
            .into_iter()
            .find(|span| {
                attr(span, "peer").as_deref() == Some("a.example")
                    && attr(span, "endpoint").as_deref() == Some("submitMessage")
            })?
            .clone();
        Some((client, call))
    })
    .await;
    let trace = b_client.span_context.trace_id();
    assert_eq!(b_call.span_context.trace_id(), trace);
    assert_eq!(b_call.span_kind, SpanKind::Client);
    assert_eq!(attr(&b_call, "status").as_deref(), Some("200"));

    // a: the incoming request is the child of b's call, then the room actor and Raft.
    let (a_incoming, a_room, a_proposal) =
        wait_for(exporter, "federation_api -> raft_proposal at a", |all| {
            let incoming = children(all, &b_call, "federation_api")
                .into_iter()
                .next()?
                .clone();
            let request = children(all, &incoming, "peer_request")
                .into_iter()
                .next()?
                .clone();
            let room = children(all, &request, "room_request")
                .into_iter()
                .next()?
                .clone();
            let proposal = children(all, &room, "raft_proposal")
                .into_iter()
                .next()?
                .clone();
            Some((incoming, room, proposal))
        })
        .await;
    assert_eq!(a_incoming.span_context.trace_id(), trace, "one trace id");
    assert!(a_incoming.parent_span_is_remote, "its parent is b's span");
    assert_eq!(a_incoming.span_kind, SpanKind::Server);
    assert_eq!(attr(&a_incoming, "peer").as_deref(), Some("b.example"));
    assert!(attr(&a_incoming, "path").is_some_and(|p| p.starts_with("/v1/submitMessage/")));
    assert_eq!(attr(&a_room, "room").as_deref(), Some(club.as_str()));
    assert_eq!(a_room.span_context.trace_id(), trace);
    assert_eq!(a_proposal.span_context.trace_id(), trace);
    assert!(
        attr(&a_proposal, "shard").is_some(),
        "the proposal names its shard"
    );
    assert_eq!(
        attr(&a_proposal, "error"),
        None,
        "the proposal got its verdict"
    );
    assert_ne!(a_proposal.parent_span_id, SpanId::INVALID);

    // The fan-out back to b: a's notify, a's call to b, b's handling and b's proposal.
    let (notify, b_incoming) = wait_for(exporter, "fanout_notify -> federation_api at b", |all| {
        spans(
            all,
            "fanout_notify",
            &[("room", club.as_str()), ("provider", "b.example")],
        )
        .into_iter()
        .find_map(|notify| {
            let call = children(all, notify, "peer_call")
                .into_iter()
                .find(|span| attr(span, "endpoint").as_deref() == Some("notify"))?;
            let incoming = children(all, call, "federation_api").into_iter().next()?;
            let request = children(all, incoming, "peer_request").into_iter().next()?;
            children(all, request, "raft_proposal").into_iter().next()?;
            Some((notify.clone(), incoming.clone()))
        })
    })
    .await;
    assert_eq!(notify.parent_span_id, SpanId::INVALID, "a trace of its own");
    assert_ne!(notify.span_context.trace_id(), trace);
    assert!(attr(&notify, "items").is_some_and(|n| n != "0"));
    assert_eq!(
        b_incoming.span_context.trace_id(),
        notify.span_context.trace_id()
    );
    assert!(b_incoming.parent_span_is_remote);
    assert_eq!(attr(&b_incoming, "peer").as_deref(), Some("a.example"));

    a.shutdown().await;
    b.shutdown().await;
}

/// The spans of one client request whose proposal went to another node: the origin's request
/// and proposal, the call to the leader, and the leader's handling and proposal.
struct ForwardedChain {
    client: SpanData,
    proposal: SpanData,
    call: SpanData,
    handled: SpanData,
    leader_proposal: SpanData,
}

/// One provider on three nodes (ARCHITECTURE.md "Cluster", "Forwarding"; protocol-06 §5.3):
/// alice's client on a node that does not lead the room's shard sends a message, so the
/// origin's room actor forwards the unstamped proposal to the leader over the node-to-node RPC.
/// The origin's `client_api` → `room_request` → `raft_proposal` (`forwarded_to` the leader)
/// → `forward_call`, and the leader's `forwarded_proposal` (whose remote parent is that
/// call) → `raft_proposal` (forwarded, from proposal to the apply's verdict) are one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_forwarded_to_the_shard_leader_stays_in_the_request_trace_protocol06_5_3() {
    let exporter = exporter();
    let cluster = TestCluster::start(3).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let room = cluster.room("forwarded-trace");
    let leader = cluster.leader_of(&room).await;
    let origin = (leader + 1) % cluster.nodes.len();
    let origin_id = cluster.nodes[origin].id();
    let mut alice = cluster.client(origin, "alice", "phone", 1).await;
    create_room_when_led(&mut alice, &room)
        .await
        .expect("room created");

    // Leaderships may still move for balance right after the start: a message whose proposal
    // happened to be local (the origin leads the shard by then) is followed by another.
    let mut seen = HashSet::new();
    let mut chain = None;
    for attempt in 0..5 {
        // A 503 of a shard between leaders is resent as is (the refused try's spans record
        // its error and are passed over below).
        let message = alice
            .prepare_text(&room, &format!("forwarded {attempt}"))
            .expect("encrypts");
        let (sent, _) = submit_resending(&mut alice, &room, message).await;
        assert!(matches!(sent, SubmitResult::Accepted { .. }), "{sent:?}");
        let (client, proposal) = wait_for(
            exporter,
            "client_api -> raft_proposal at the origin",
            |all| {
                spans(all, "client_api", &[("room", room.as_str())])
                    .into_iter()
                    .filter(|span| attr(span, "path").is_some_and(|p| p.contains("submitMessage")))
                    .filter(|span| !seen.contains(&span.span_context.span_id()))
                    .find_map(|client| {
                        let request = children(all, client, "room_request").into_iter().next()?;
                        let proposal = children(all, request, "raft_proposal")
                            .into_iter()
                            .find(|span| attr(span, "error").is_none())?;
                        Some((client.clone(), proposal.clone()))
                    })
            },
        )
        .await;
        seen.insert(client.span_context.span_id());
        if attr(&proposal, "forwarded_to").is_none() {
            continue;
        }
        let found = wait_for(
            exporter,
            "forward_call -> forwarded_proposal -> raft_proposal",
            |all| {
                // The call that reached the leader: a first try may have gone to a node that
                // had just stopped leading, whose proposal records its refusal (the proposer
                // then tries the leader it names).
                let (call, handled, leader_proposal) = children(all, &proposal, "forward_call")
                    .into_iter()
                    .find_map(|call| {
                        children(all, call, "forwarded_proposal")
                            .into_iter()
                            .find_map(|handled| {
                                let leader_proposal = children(all, handled, "raft_proposal")
                                    .into_iter()
                                    .find(|span| attr(span, "error").is_none())?;
                                Some((call, handled, leader_proposal))
                            })
                    })?;
                Some(ForwardedChain {
                    client: client.clone(),
                    proposal: proposal.clone(),
                    call: call.clone(),
                    handled: handled.clone(),
                    leader_proposal: leader_proposal.clone(),
                })
            },
        )
        .await;
        chain = Some(found);
        break;
    }
    let chain = chain.expect("one of five messages was proposed through another node");

    let trace = chain.client.span_context.trace_id();
    let leader_id = attr(&chain.proposal, "forwarded_to").expect("forwarded");
    assert_ne!(
        leader_id,
        origin_id.to_string(),
        "another node leads the shard"
    );
    for span in [
        &chain.proposal,
        &chain.call,
        &chain.handled,
        &chain.leader_proposal,
    ] {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "one trace: {}",
            describe(span)
        );
    }
    assert_eq!(chain.call.span_kind, SpanKind::Client);
    assert_eq!(attr(&chain.call, "leader"), Some(leader_id.clone()));
    assert_eq!(attr(&chain.call, "outcome").as_deref(), Some("applied"));
    assert!(
        chain.handled.parent_span_is_remote,
        "its parent is the origin's call"
    );
    assert_eq!(chain.handled.span_kind, SpanKind::Server);
    assert_eq!(attr(&chain.handled, "from"), Some(origin_id.to_string()));
    assert_eq!(
        attr(&chain.handled, "shard"),
        attr(&chain.proposal, "shard")
    );
    assert_eq!(
        attr(&chain.leader_proposal, "forwarded").as_deref(),
        Some("true")
    );
    assert_eq!(
        attr(&chain.leader_proposal, "shard"),
        attr(&chain.proposal, "shard")
    );
    assert_eq!(
        attr(&chain.leader_proposal, "error"),
        None,
        "the leader's proposal got its verdict"
    );
    // The leader's proposal lies within the origin's: proposed after the call went out,
    // decided before the origin heard the answer.
    assert!(chain.leader_proposal.start_time >= chain.call.start_time);
    assert!(chain.leader_proposal.end_time <= chain.proposal.end_time);

    alice.close().await;
    cluster.shutdown().await;
}
