//! Join addresses (`cluster.join`): the transport dials each one without knowing the node
//! there, learns the node's id (and its address as it gives it) from the hello answer, and
//! adds it to the peers; from then on the node is dialled like any peer. A join address that
//! is a known peer's address already needs no dial.
//!
//! A failed attempt is retried with the peers' backoff (`backoff_initial` doubling up to
//! `backoff_max`), so nodes may start in any order; a node of another cluster at the address
//! is given up on (logged), as is the node's own address.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::handshake::close;
use super::peer::{dial, DialError};
use super::Shared;

/// Learns the node at join address `addr` and adds it to the peers; returns once it is known
/// (or at shutdown).
///
/// Cancel safety: safe to drop; a half-open connection is closed when dropped.
pub(crate) async fn discover(shared: Arc<Shared>, addr: SocketAddr) {
    let settings = shared.settings.clone();
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = settings.backoff_initial;
    let mut failures: u32 = 0;
    loop {
        if shared.addresses.read().values().any(|known| *known == addr) {
            tracing::debug!(%addr, "join address is a known peer");
            return;
        }
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(settings.connect_timeout, dial(&shared, None, addr)) =>
                attempt.unwrap_or(Err(DialError::Timeout(settings.connect_timeout))),
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match attempt {
            Ok((conn, answer)) => {
                // The node is dialled as a peer from now on; this connection only asked.
                conn.close(close::SHUTDOWN, b"join address learned");
                let peer_addr = answer.listen.unwrap_or(addr);
                match shared.set_peer(answer.node_id, peer_addr) {
                    Ok(()) => tracing::info!(
                        %addr,
                        peer = answer.node_id,
                        %peer_addr,
                        "join address reached: node-to-node peer added"
                    ),
                    Err(err) => tracing::warn!(%addr, %err, "join address: peer not added"),
                }
                return;
            }
            Err(err @ (DialError::ForeignCluster { .. } | DialError::WrongNode { .. })) => {
                tracing::warn!(
                    %addr,
                    %err,
                    "join address is a node this node cannot join; not dialled again"
                );
                return;
            }
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    tracing::info!(%addr, %err, "join address not reachable yet; retrying");
                } else {
                    tracing::debug!(%addr, %err, failures, "join address not reachable");
                }
            }
        }
        let deadline = Instant::now() + backoff;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}
