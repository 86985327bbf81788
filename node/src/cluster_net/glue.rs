//! The adapters between this transport and the cluster crate's multi-node API: [`NetSender`]
//! is the cluster's [`mimid_cluster::Transport`], and [`ClusterSink`] hands incoming frames and
//! unreachable peers to a [`ClusterHandle`].
//!
//! The two start in a cycle: `Cluster::start_with_transport` needs the [`NetSender`], which
//! [`ClusterNet::start`] returns only given a sink. [`ClusterSink`] breaks it: start the
//! transport with an empty sink, start the cluster with the sender, then [`ClusterSink::set`]
//! the cluster's handle. Frames arriving before that are dropped, as they would be by a node
//! that is still starting; Raft retransmits.

use std::sync::{Arc, OnceLock};

use mimid_cluster::{ClusterHandle, NodeId, ReceiveError, StateMachine, Transport};

use super::{FrameSink, NetSender};

/// The driver thread calls this once per destination per turn; [`NetSender::send`] only queues.
impl Transport for NetSender {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        NetSender::send(self, to, frame);
    }
}

/// A [`FrameSink`] over a [`ClusterHandle`] that is set after the transport started.
pub struct ClusterSink<S: StateMachine> {
    handle: OnceLock<ClusterHandle<S>>,
}

impl<S: StateMachine> ClusterSink<S> {
    /// A sink that drops everything until [`ClusterSink::set`].
    pub fn new() -> Arc<Self> {
        Arc::new(ClusterSink {
            handle: OnceLock::new(),
        })
    }

    /// Starts delivering to `handle`. A second call changes nothing and returns its handle.
    pub fn set(&self, handle: ClusterHandle<S>) -> Result<(), ClusterHandle<S>> {
        self.handle.set(handle)
    }
}

impl<S: StateMachine> FrameSink for ClusterSink<S>
where
    ClusterHandle<S>: Send + Sync,
{
    fn deliver(&self, frame: &[u8]) {
        if let Some(handle) = self.handle.get() {
            FrameSink::deliver(handle, frame);
        }
    }

    fn unreachable(&self, node: NodeId) {
        if let Some(handle) = self.handle.get() {
            FrameSink::unreachable(handle, node);
        }
    }
}

impl<S: StateMachine> FrameSink for ClusterHandle<S>
where
    ClusterHandle<S>: Send + Sync,
{
    fn deliver(&self, frame: &[u8]) {
        match self.receive(frame) {
            // A full network inbox or a stopping driver drops the frame (the cluster counts
            // it); Raft retransmits.
            Ok(()) | Err(ReceiveError::Busy | ReceiveError::Stopped) => {}
            // An authenticated peer of our cluster sent a frame the cluster cannot use
            // (another release, or one misaddressed); the cluster counts and logs it.
            Err(ReceiveError::Malformed(_)) => {}
        }
    }

    fn unreachable(&self, node: NodeId) {
        self.report_unreachable(node);
    }
}
