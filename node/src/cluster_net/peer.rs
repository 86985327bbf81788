//! The outgoing side: one task per peer node that owns this node's connection to it.
//!
//! The task connects (QUIC + mutual TLS + hello, within `connect_timeout`), then writes the
//! peer's queued frames as length-prefixed records on one unidirectional stream until the
//! connection ends, the peer's address changes, the peer is removed or the node shuts down.
//! It publishes the connection's state in a [`Link`] so RPCs ride the same connection.
//!
//! With `cluster.join`, the dial also reconciles cluster ids (`handshake::reconcile`): a node
//! of another cluster is refused, and a node not initialized yet adopts the id of the node it
//! reached. When the cluster id becomes known, the connection is renewed (its hello had none).
//!
//! Failure handling, in order: a failed connect attempt marks the link down, tells the sink
//! (`FrameSink::unreachable`, once per attempt), drops what is queued and what arrives during
//! the backoff (`reason="disconnected"`), and retries after the backoff, which doubles from
//! `backoff_initial` up to `backoff_max`. A connection that ends after being up tells the sink
//! at once ([`peer_may_be_gone`]: the idle timeout passed without a packet from the peer, a
//! stateless reset came from a restarted process, the peer closed it, a write failed), before
//! any reconnect: hibernating shards the peer led learn of a crash within
//! `cluster.idle_timeout_ms` instead of that plus a failed connect attempt
//! (ARCHITECTURE.md "Cluster"). Only this node's own close and the peer renewing the
//! connection ([`close::REPLACED`]) say nothing. It then reconnects at once if it lasted at
//! least `backoff_max`, else after the backoff, so a peer that accepts and then drops every
//! connection does not make this task spin.
//!
//! Fault injection (module `delay`): a frame stamped with the instant it is due is held until
//! then before it is written; the frames behind it wait in the queue, so the link's order
//! holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mimid_cluster::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::handshake::{close, reconcile, Hello, HelloError, MAX_HELLO_BYTES};
use super::Shared;
use crate::metrics::{FrameDrop, HandshakeRefusal, PathSample};

/// How often the RTT gauge of an idle connection is refreshed.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The state of this node's connection to a peer, as RPC callers see it.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    /// A connect attempt is under way (also the state before the first one).
    Connecting,
    /// The connection is up: handshake and hello done.
    Up(quinn::Connection),
    /// The last connect attempt failed (or the task ended); the next one follows the backoff.
    Down,
}

/// One frame in a peer's queue.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) frame: Vec<u8>,
    /// Fault injection: not written before this instant (module `delay`); `None`: at once.
    pub(crate) due: Option<std::time::Instant>,
}

/// The per-peer task's inputs and outputs.
pub(crate) struct PeerTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: NodeId,
    pub(crate) queue: mpsc::Receiver<Outgoing>,
    pub(crate) addr: watch::Receiver<SocketAddr>,
    pub(crate) link: watch::Sender<Link>,
}

/// Why a connect attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// quinn refused to start (e.g. an address it cannot send to).
    #[error("cannot start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC or TLS handshake failed or the connection closed during the hello, e.g.
    /// because a certificate was refused.
    #[error("{0}")]
    Connection(quinn::ConnectionError),
    /// The peer refused our hello.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The hello stream failed without the connection failing.
    #[error("the hello stream failed: {0}")]
    Stream(String),
    /// The peer's hello answer does not decode.
    #[error("the peer's hello answer is unusable: {0}")]
    Answer(HelloError),
    /// The node that answered is not the one dialled (addresses mixed up in the configuration,
    /// or another cluster's node).
    #[error(
        "the node at this address is node {node_id} of cluster {cluster:?}, not the peer dialled"
    )]
    WrongNode {
        /// The id it gave.
        node_id: NodeId,
        /// The cluster it named.
        cluster: String,
    },
    /// The node that answered belongs to another cluster by its cluster id (or one of the two
    /// uses `cluster.join` and the other the static `cluster.peers`).
    #[error("node {node_id} belongs to another cluster: {reason}")]
    ForeignCluster {
        /// The id it gave.
        node_id: NodeId,
        /// Why, from this node's side.
        reason: String,
    },
    /// `connect_timeout` passed.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

/// Why a connection that was up stopped being used.
enum PumpEnd {
    Shutdown,
    Removed,
    Replaced,
    /// The connection or its frame stream failed; `peer_gone` when that may mean the peer is
    /// gone ([`peer_may_be_gone`]).
    Lost {
        reason: String,
        peer_gone: bool,
    },
}

impl PumpEnd {
    fn lost(err: &quinn::ConnectionError) -> PumpEnd {
        PumpEnd::Lost {
            reason: err.to_string(),
            peer_gone: peer_may_be_gone(err),
        }
    }

    fn write_failed(err: &quinn::WriteError) -> PumpEnd {
        PumpEnd::Lost {
            reason: err.to_string(),
            peer_gone: match err {
                quinn::WriteError::ConnectionLost(err) => peer_may_be_gone(err),
                // The peer stopped reading our frame stream (its reader failed).
                _ => true,
            },
        }
    }
}

/// Whether a connection that ended with `err` may have ended because the peer is gone
/// (crashed, restarted, shutting down, cut off): everything but this node's own close and the
/// peer renewing the connection ([`close::REPLACED`]: its address changed, or it learned the
/// cluster id). A peer that is still there costs a Raft probe and, for the hibernating shards
/// it leads, one round trip (`mimid_cluster` crate docs, "Hibernation").
pub(crate) fn peer_may_be_gone(err: &quinn::ConnectionError) -> bool {
    match err {
        quinn::ConnectionError::LocallyClosed => false,
        quinn::ConnectionError::ApplicationClosed(closed) => closed.error_code != close::REPLACED,
        _ => true,
    }
}

impl PeerTask {
    /// Runs until the node shuts down or the peer is removed.
    ///
    /// Cancel safety: safe to drop (the connection closes when its last handle goes).
    pub(crate) async fn run(mut self) {
        let settings = self.shared.settings.clone();
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut backoff = settings.backoff_initial;
        let mut failures: u32 = 0;
        loop {
            let addr = *self.addr.borrow_and_update();
            self.link.send_replace(Link::Connecting);
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(
                    settings.connect_timeout,
                    dial(&self.shared, Some(self.peer), addr),
                ) => attempt.unwrap_or(Err(DialError::Timeout(settings.connect_timeout))),
                changed = self.addr.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let conn = match attempt {
                Ok((conn, _)) => conn,
                Err(err) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            peer = self.peer,
                            %addr,
                            %err,
                            "cannot reach peer node; retrying"
                        );
                    } else {
                        tracing::debug!(
                            peer = self.peer,
                            %addr,
                            %err,
                            failures,
                            "cannot reach peer node"
                        );
                    }
                    self.link.send_replace(Link::Down);
                    self.shared.sink.unreachable(self.peer);
                    if !self.drop_frames_for(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(settings.backoff_max);
                    continue;
                }
            };

            tracing::info!(
                peer = self.peer,
                %addr,
                after_failures = failures,
                "connected to peer node"
            );
            failures = 0;
            let since = Instant::now();
            let end = self.pump(&conn, &mut shutdown).await;
            self.link.send_replace(Link::Connecting);
            self.shared
                .metrics
                .set_cluster_peer_connected(self.peer, false);
            self.shared.metrics.set_cluster_peer_rtt(self.peer, None);
            let stable = since.elapsed() >= settings.backoff_max;
            match end {
                PumpEnd::Shutdown => {
                    conn.close(close::SHUTDOWN, b"node shutting down");
                    break;
                }
                PumpEnd::Removed => {
                    conn.close(close::SHUTDOWN, b"peer removed");
                    break;
                }
                PumpEnd::Replaced => {
                    conn.close(close::REPLACED, b"peer address changed");
                    backoff = settings.backoff_initial;
                }
                PumpEnd::Lost { reason, peer_gone } => {
                    tracing::info!(
                        peer = self.peer,
                        %addr,
                        %reason,
                        "connection to peer node lost"
                    );
                    if peer_gone {
                        self.shared.sink.unreachable(self.peer);
                    }
                    if stable {
                        backoff = settings.backoff_initial;
                    } else {
                        if !self.pause(backoff, &mut shutdown).await {
                            break;
                        }
                        backoff = (backoff * 2).min(settings.backoff_max);
                    }
                }
            }
        }
        self.link.send_replace(Link::Down);
        self.shared
            .metrics
            .set_cluster_peer_connected(self.peer, false);
        self.shared.metrics.set_cluster_peer_rtt(self.peer, None);
    }

    /// Writes queued frames to `conn` until it ends or must be given up.
    async fn pump(
        &mut self,
        conn: &quinn::Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> PumpEnd {
        let metrics = self.shared.metrics.clone();
        let max_frame_bytes = self.shared.settings.max_frame_bytes as usize;
        // Subscribed after the dial (which may have adopted the id): only a later change, the
        // id becoming known while this connection is up, renews it.
        let mut epoch = self.shared.epoch.subscribe();
        self.link.send_replace(Link::Up(conn.clone()));
        metrics.set_cluster_peer_connected(self.peer, true);
        metrics.sample_cluster_peer(self.peer, PathSample::of(conn));
        let mut stream = match conn.open_uni().await {
            Ok(stream) => stream,
            Err(err) => return PumpEnd::lost(&err),
        };
        let mut rtt_tick = tokio::time::interval(RTT_SAMPLE_INTERVAL);
        rtt_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let Outgoing { frame, due } = tokio::select! {
                biased;
                end = pump_ended(shutdown, &mut self.addr, &mut epoch, conn) => return end,
                _ = rtt_tick.tick() => {
                    metrics.sample_cluster_peer(self.peer, PathSample::of(conn));
                    continue;
                }
                frame = self.queue.recv() => match frame {
                    Some(frame) => frame,
                    None => return PumpEnd::Removed,
                },
            };
            if let Some(due) = due {
                // Fault injection: the link's delay. A frame held here is lost like any
                // frame in flight if the connection ends meanwhile.
                tokio::select! {
                    biased;
                    end = pump_ended(shutdown, &mut self.addr, &mut epoch, conn) => return end,
                    () = tokio::time::sleep_until(Instant::from_std(due)) => {}
                }
            }
            let len = frame.len();
            let Ok(prefix) = u32::try_from(len) else {
                metrics.count_cluster_frames_dropped(FrameDrop::TooLarge, 1);
                continue;
            };
            if len > max_frame_bytes {
                metrics.count_cluster_frames_dropped(FrameDrop::TooLarge, 1);
                continue;
            }
            let mut chunks = [
                Bytes::copy_from_slice(&prefix.to_be_bytes()),
                Bytes::from(frame),
            ];
            let written = tokio::select! {
                written = stream.write_all_chunks(&mut chunks) => written,
                _ = shutdown.wait_for(|stop| *stop) => return PumpEnd::Shutdown,
                err = conn.closed() => {
                    metrics.count_cluster_frames_dropped(FrameDrop::Disconnected, 1);
                    return PumpEnd::lost(&err);
                }
            };
            match written {
                Ok(()) => metrics.count_cluster_frame_sent(len),
                Err(err) => {
                    metrics.count_cluster_frames_dropped(FrameDrop::Disconnected, 1);
                    return PumpEnd::write_failed(&err);
                }
            }
        }
    }

    /// Drops every queued frame and every frame that arrives for `backoff`, counted as
    /// `disconnected`. Returns early when the peer's address changes (retry now); false when
    /// the task must end.
    async fn drop_frames_for(
        &mut self,
        backoff: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let metrics = self.shared.metrics.clone();
        let mut dropped = 0;
        while self.queue.try_recv().is_ok() {
            dropped += 1;
        }
        metrics.count_cluster_frames_dropped(FrameDrop::Disconnected, dropped);
        let deadline = Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                frame = self.queue.recv() => match frame {
                    Some(_) => metrics.count_cluster_frames_dropped(FrameDrop::Disconnected, 1),
                    None => return false,
                },
                changed = self.addr.changed() => return changed.is_ok(),
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
        }
    }

    /// Waits `backoff` (frames keep queueing, within the queue's bound). Returns early when the
    /// peer's address changes; false when the task must end.
    async fn pause(&mut self, backoff: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => true,
            changed = self.addr.changed() => changed.is_ok(),
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }
}

/// Opens a connection to `addr` and exchanges hellos; the connection and the answer are
/// returned only if the node there is `peer` (any other node when `None`: a join address) of
/// our cluster and accepted us. A node not initialized yet adopts the cluster id of the answer.
///
/// Cancel safety: safe to drop; the half-open connection is closed when dropped.
pub(crate) async fn dial(
    shared: &Shared,
    peer: Option<NodeId>,
    addr: SocketAddr,
) -> Result<(quinn::Connection, Hello), DialError> {
    // The server certificate must name the IP address we dial (node certificates carry IP
    // SANs; rustls treats an IP string as an IP server name and sends no SNI for it).
    let server_name = addr.ip().to_string();
    let conn = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &server_name)?
        .await
        .map_err(DialError::lost)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(DialError::lost)?;
    let hello = shared.hello();
    send.write_all(&hello.encode())
        .await
        .map_err(|err| match err {
            quinn::WriteError::ConnectionLost(err) => DialError::lost(err),
            other => DialError::Stream(other.to_string()),
        })?;
    send.finish()
        .map_err(|err| DialError::Stream(err.to_string()))?;
    let answer = recv
        .read_to_end(MAX_HELLO_BYTES)
        .await
        .map_err(|err| match err {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(err)) => {
                DialError::lost(err)
            }
            quinn::ReadToEndError::TooLong => {
                DialError::Answer(HelloError::Malformed("longer than a hello"))
            }
            other => DialError::Stream(other.to_string()),
        });
    let answer = match answer.and_then(|bytes| Hello::decode(&bytes).map_err(DialError::Answer)) {
        Ok(answer) => answer,
        Err(err) => {
            conn.close(close::PROTOCOL, b"unusable hello answer");
            return Err(err);
        }
    };
    let wrong_node = peer.is_some_and(|peer| answer.node_id != peer)
        || answer.node_id == shared.settings.node_id;
    if wrong_node || answer.cluster != shared.settings.cluster_name {
        shared
            .metrics
            .count_cluster_handshake_refused(HandshakeRefusal::WrongNode);
        conn.close(close::REFUSED, b"not the node dialled");
        return Err(DialError::WrongNode {
            node_id: answer.node_id,
            cluster: answer.cluster,
        });
    }
    let adopt = reconcile(shared.membership(), answer.membership).and_then(|adopt| match adopt {
        Some(id) => shared
            .adopt(id, Some(answer.node_id))
            .map_err(|err| err.to_string()),
        None => Ok(false),
    });
    if let Err(reason) = adopt {
        shared
            .metrics
            .count_cluster_handshake_refused(HandshakeRefusal::ClusterId);
        conn.close(close::REFUSED, b"another cluster");
        return Err(DialError::ForeignCluster {
            node_id: answer.node_id,
            reason,
        });
    }
    Ok((conn, answer))
}

impl DialError {
    /// A connection error, recognising the peer's refusal of our hello.
    fn lost(err: quinn::ConnectionError) -> DialError {
        match err {
            quinn::ConnectionError::ApplicationClosed(app_close)
                if app_close.error_code == close::REFUSED =>
            {
                DialError::Refused(String::from_utf8_lossy(&app_close.reason).into_owned())
            }
            other => DialError::Connection(other),
        }
    }
}

/// What ends a pump while it waits for a frame or a link delay: this node's shutdown, the
/// peer's new address (or its removal), a new cluster-id epoch, or the connection's loss.
/// Cancel safety: every branch is, so it may lose a `select!`.
async fn pump_ended(
    shutdown: &mut watch::Receiver<bool>,
    addr: &mut watch::Receiver<SocketAddr>,
    epoch: &mut watch::Receiver<u64>,
    conn: &quinn::Connection,
) -> PumpEnd {
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => PumpEnd::Shutdown,
        changed = addr.changed() => match changed {
            Ok(()) => PumpEnd::Replaced,
            Err(_) => PumpEnd::Removed,
        },
        _ = epoch.changed() => PumpEnd::Replaced,
        err = conn.closed() => PumpEnd::lost(&err),
    }
}
