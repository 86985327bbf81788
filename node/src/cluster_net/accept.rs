//! The incoming side: accepts connections from peer nodes, judges their hello, then reads
//! their frame stream into the sink and serves their RPCs.
//!
//! A connection is served only after TLS proved a certificate of the cluster CA (rustls aborts
//! the handshake otherwise) and the hello named our cluster (name and, with `cluster.join`,
//! cluster id) and a known peer whose address the certificate names, or, with `cluster.join`,
//! a node joining too whose given address the certificate names: that node is added to the
//! peers. A hello with the cluster id this node does not know yet makes it adopt the id. When
//! the cluster id becomes known, every connection served before is closed
//! ([`close::REPLACED`]), so its dialler reconnects with a hello that carries the id. A
//! connection that ends otherwise (idle timeout, reset, the peer's close) reports the peer
//! unreachable to the sink, like the dialling side (`peer`). Frames arrive on unidirectional
//! streams as records `u32 BE length | bytes`; a record longer than `max_frame_bytes` closes
//! the connection with [`close::FRAME_TOO_LARGE`] before any of it is buffered. Bounds: [`MAX_CONNECTIONS`]
//! connections at once (further attempts are refused before their handshake), one frame
//! stream and [`super::RPC_STREAMS`] RPC streams per connection (QUIC stream limits).

use std::sync::Arc;
use std::time::Duration;

use mimid_cluster::NodeId;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::handshake::{close, Expectation, Hello, Refusal, MAX_HELLO_BYTES};
use super::peer::peer_may_be_gone;
use super::{rpc, Shared};
use crate::metrics::{FrameDrop, HandshakeRefusal};

/// Node-to-node connections served at once. A cluster has a handful of nodes, each with one
/// connection to us (two briefly while one replaces another); the rest of the room is for
/// handshakes of whoever else reaches the port.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// Time a dialler has to send its hello once the TLS handshake is done.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A large frame is read in chunks of this size, so a peer announcing a large record and then
/// stalling holds at most this much memory beyond what it sent.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Accepts connections until the endpoint closes or the node shuts down.
///
/// Cancel safety: safe to drop; connections already accepted keep being served by their tasks
/// until the endpoint closes.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared
                .metrics
                .count_cluster_handshake_refused(HandshakeRefusal::TooManyConnections);
            incoming.refuse();
            continue;
        };
        let span = tracing::debug_span!("cluster_connection", remote = %incoming.remote_address());
        let shared = shared.clone();
        tokio::spawn(
            async move {
                serve_incoming(incoming, shared).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Completes the handshake and the hello of one incoming connection, then serves it.
async fn serve_incoming(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(err) => {
            // Most often a certificate not issued by the cluster CA or a client speaking
            // another ALPN; the dialling node logs the reason on its side.
            shared
                .metrics
                .count_cluster_handshake_refused(HandshakeRefusal::HandshakeFailed);
            tracing::debug!(%remote, %err, "node-to-node handshake failed");
            return;
        }
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_hello(&conn)).await;
    let (mut answer_stream, hello) = match hello {
        Ok(Ok(Ok((send, hello)))) => (send, hello),
        Ok(Ok(Err(refusal))) => return refuse(&shared, &conn, None, refusal),
        Ok(Err(err)) => {
            tracing::debug!(%remote, %err, "connection ended before its hello");
            return;
        }
        Err(_) => {
            let refusal = Refusal {
                reason: HandshakeRefusal::Malformed,
                detail: format!("no hello within {HELLO_TIMEOUT:?}"),
            };
            return refuse(&shared, &conn, None, refusal);
        }
    };
    let verdict = {
        let peers = shared.addresses.read();
        let certificate = crate::tls::peer_leaf_certificate(&conn);
        Expectation {
            own_id: shared.settings.node_id,
            cluster: &shared.settings.cluster_name,
            membership: shared.membership(),
            peers: &peers,
            certificate: certificate.as_ref(),
        }
        .judge(&hello)
    };
    let admitted = match verdict {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&shared, &conn, Some(hello.node_id), refusal),
    };
    if let Some(id) = admitted.adopt {
        if let Err(err) = shared.adopt(id, Some(hello.node_id)) {
            // Another hello gave this node an id in between.
            let refusal = Refusal {
                reason: HandshakeRefusal::ClusterId,
                detail: format!("node {}: {err}", hello.node_id),
            };
            return refuse(&shared, &conn, Some(hello.node_id), refusal);
        }
    }
    // Subscribed after the adoption above: this connection already carries the id.
    let epoch = shared.epoch.subscribe();
    if let Some(addr) = admitted.address {
        match shared.set_peer(hello.node_id, addr) {
            Ok(()) => {
                tracing::info!(peer = hello.node_id, %addr, "node-to-node peer admitted by its hello")
            }
            Err(err) => tracing::warn!(peer = hello.node_id, %addr, %err, "peer not added"),
        }
    }
    let ours = shared.hello();
    if answer_stream.write_all(&ours.encode()).await.is_err() || answer_stream.finish().is_err() {
        tracing::debug!(%remote, "connection ended before the hello answer");
        return;
    }
    tracing::debug!(%remote, peer = hello.node_id, "peer node connected");
    serve(conn, hello.node_id, shared, epoch).await;
}

/// Reads the dialler's hello from the first bidirectional stream. The outer error is the
/// connection ending; the inner one a hello that must be refused.
async fn read_hello(
    conn: &quinn::Connection,
) -> Result<Result<(quinn::SendStream, Hello), Refusal>, quinn::ConnectionError> {
    let (send, mut recv) = conn.accept_bi().await?;
    let bytes = match recv.read_to_end(MAX_HELLO_BYTES).await {
        Ok(bytes) => bytes,
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(err))) => return Err(err),
        Err(err) => {
            return Ok(Err(Refusal {
                reason: HandshakeRefusal::Malformed,
                detail: format!("unreadable hello: {err}"),
            }))
        }
    };
    Ok(Hello::decode(&bytes)
        .map(|hello| (send, hello))
        .map_err(|err| Refusal::undecodable(&err)))
}

fn refuse(shared: &Shared, conn: &quinn::Connection, claimed: Option<NodeId>, refusal: Refusal) {
    shared
        .metrics
        .count_cluster_handshake_refused(refusal.reason);
    tracing::warn!(
        remote = %conn.remote_address(),
        claimed_node = claimed,
        reason = refusal.reason.as_str(),
        detail = %refusal.detail,
        "refused a node-to-node connection"
    );
    conn.close(close::REFUSED, refusal.detail.as_bytes());
}

/// Serves an accepted connection from `from` until it ends, or until the cluster id becomes
/// known (`epoch` changes): every unidirectional stream is a frame stream, every further
/// bidirectional stream an RPC.
async fn serve(
    conn: quinn::Connection,
    from: NodeId,
    shared: Arc<Shared>,
    mut epoch: tokio::sync::watch::Receiver<u64>,
) {
    // Dropping the set aborts its tasks, so nothing outlives the connection.
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = epoch.changed() => {
                tracing::debug!(peer = from, "cluster id now known; renewing the connection");
                conn.close(close::REPLACED, b"cluster id now known; reconnect");
                break;
            }
            uni = conn.accept_uni() => match uni {
                Ok(stream) => {
                    tasks.spawn(read_frames(stream, conn.clone(), from, shared.clone()));
                }
                Err(err) => {
                    connection_ended(&shared, from, &err);
                    break;
                }
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tasks.spawn(rpc::serve_call(
                        send,
                        recv,
                        from,
                        shared.rpc.clone(),
                        shared.settings.max_frame_bytes as usize,
                        shared.answer_delay(from),
                    ));
                }
                Err(err) => {
                    connection_ended(&shared, from, &err);
                    break;
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(err) = joined {
                    if err.is_panic() {
                        tracing::error!(peer = from, %err, "node-to-node stream task panicked");
                    }
                }
            }
        }
    }
}

/// The peer's connection to us ended with `err`: the sink hears that the peer is unreachable
/// when that may mean it is gone (`peer::peer_may_be_gone`), as this node's own connection to
/// it would say about the same time; whichever notices first wakes the shards it led.
fn connection_ended(shared: &Shared, from: NodeId, err: &quinn::ConnectionError) {
    tracing::debug!(peer = from, %err, "peer node connection ended");
    if peer_may_be_gone(err) {
        shared.sink.unreachable(from);
    }
}

/// Reads records from a frame stream and hands each frame to the sink, in order.
async fn read_frames(
    mut stream: quinn::RecvStream,
    conn: quinn::Connection,
    from: NodeId,
    shared: Arc<Shared>,
) {
    let max_frame_bytes = shared.settings.max_frame_bytes as usize;
    loop {
        let mut prefix = [0u8; 4];
        match stream.read_exact(&mut prefix).await {
            Ok(()) => {}
            // The stream ended cleanly between two records.
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return protocol_error(&conn, from, "frame stream ended inside a length prefix")
            }
            Err(quinn::ReadExactError::ReadError(err)) => {
                tracing::debug!(peer = from, %err, "frame stream ended");
                return;
            }
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > max_frame_bytes {
            shared
                .metrics
                .count_cluster_frames_dropped(FrameDrop::TooLarge, 1);
            tracing::warn!(
                peer = from,
                bytes = len,
                max_frame_bytes,
                "peer node sent a frame over cluster.max_frame_bytes; closing its connection"
            );
            let reason =
                format!("frame of {len} bytes exceeds cluster.max_frame_bytes ({max_frame_bytes})");
            conn.close(close::FRAME_TOO_LARGE, reason.as_bytes());
            return;
        }
        let mut frame = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
        while frame.len() < len {
            let start = frame.len();
            frame.resize(start + (len - start).min(READ_CHUNK_BYTES), 0);
            match stream.read_exact(&mut frame[start..]).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(_)) => {
                    return protocol_error(&conn, from, "frame stream ended inside a frame")
                }
                Err(quinn::ReadExactError::ReadError(err)) => {
                    tracing::debug!(peer = from, %err, "frame stream ended inside a frame");
                    return;
                }
            }
        }
        shared.metrics.count_cluster_frame_received(len);
        shared.sink.deliver(&frame);
    }
}

fn protocol_error(conn: &quinn::Connection, from: NodeId, reason: &'static str) {
    tracing::warn!(
        peer = from,
        reason,
        "peer node broke the frame stream protocol"
    );
    conn.close(close::PROTOCOL, reason.as_bytes());
}
