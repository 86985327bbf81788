//! The node-to-node transport (issue 4): Raft frames and RPCs between the nodes of one cluster,
//! over QUIC with mutual TLS on a UDP socket of its own (`cluster.listen`), separate from the
//! client and server-to-server listener.
//!
//! What it owns:
//! - [`ClusterNet`]: the quinn endpoint. [`ClusterNet::bind`] binds (tests bind
//!   `127.0.0.1:0` and read [`ClusterNet::local_addr`]), [`ClusterNet::start`] starts accepting
//!   and dialling the peers on the current tokio runtime and returns the [`NetSender`].
//! - [`NetSender`]: the outgoing handle. [`NetSender::send`] never blocks (it is called by the
//!   Raft driver thread): it puts a frame into the peer's bounded queue or drops it.
//!   [`NetSender::call`] is a request/response to a peer (for forwarding proposals to a shard's
//!   leader). [`NetSender::set_peer`] adds a peer or follows it to a new address.
//! - Forming a cluster with `cluster.join` ([`JoinSettings`], module `join`; ops runbook
//!   bootstrap.md): the transport dials each join address without knowing the node there,
//!   learns its id from the hello and adds it to the peers; it admits nodes it does not know
//!   when they use `cluster.join` too and their certificate names the address they give; and it
//!   keeps the cluster id ([`NetSender::cluster_id`]): set by `mimid init` on this node
//!   ([`NetSender::set_cluster_id`]) or adopted from the first node that has one, never
//!   changed after, carried in every hello and compared there, so a node of another cluster is
//!   refused even with the same `cluster.name` and CA. When the id becomes known every
//!   connection is renewed, so none made before carries frames between two clusters.
//! - Incoming frames go to a [`FrameSink`], incoming calls to an [`RpcHandler`]; neither knows
//!   QUIC, and this module knows nothing of what frames contain (the cluster crate encodes
//!   sender, destination and Raft messages inside).
//!
//! Security (DESIGN.md §6: mutual TLS between nodes): TLS 1.3 on ring, ALPN `mimid-cluster/1`
//! only, no 0-RTT; the listener *requires* a client certificate issued by the cluster CA
//! (`[cluster.tls] ca`), the dialler verifies the listener's certificate against the same CA
//! and the IP address it dialled (`mimid cert create-node` puts IP SANs in node certificates).
//! Then the hello ([`handshake`]) refuses another cluster (`cluster.name`, and the cluster id of
//! a cluster formed by `mimid init`) sharing the CA, an unknown node id (unless this node uses
//! `cluster.join`), our own id, and a certificate that does not name the claimed node's known
//! address; the dialler in turn checks that it reached the node it meant.
//!
//! Connections: each node dials each peer and keeps that one connection (one task per peer,
//! [`peer`]); it carries this node's frames on one long-lived unidirectional stream, as records
//! `u32 BE length | frame`, and this node's RPCs, one bidirectional stream each. The peer's own
//! frames to us come on its connection to us ([`accept`]). So frames from A to B arrive in the
//! order A sent them, except that a reconnect may lose some: the contract is Raft's (STYLE.md
//! P7: messages may be dropped, duplicated, reordered or delayed).
//!
//! Bounds (STYLE.md P9), each counted when hit: a queue of `cluster.peer_queue_frames` per peer
//! (`mimid_cluster_frames_dropped_total{reason="queue_full"}`); frames and RPC bodies of at most
//! `cluster.max_frame_bytes` (`reason="too_large"`; an incoming oversized record closes its
//! connection); frames to an unreachable peer are dropped (`reason="disconnected"`); incoming
//! connections, frame streams and RPC streams are capped ([`accept::MAX_CONNECTIONS`], QUIC
//! stream limits).
//!
//! A peer that is gone: the sink hears [`FrameSink::unreachable`] as soon as a connection to or
//! from it is lost (no packet for `cluster.idle_timeout_ms`, a stateless reset from its
//! restarted process, its close, a failed write; not when it renews the connection), once per
//! failed connect attempt after that, and when a forwarded proposal's call to it fails
//! (`forward`). Keep-alives every `cluster.keep_alive_ms` (default 1 s) keep a quiet connection
//! alive, so a crashed peer is noticed after the idle timeout (default 3 s); hibernating
//! shards it led depend on that signal to elect another leader (ARCHITECTURE.md "Cluster").
//!
//! Fault injection ([`LinkDelays`], module `delay`): a per-destination one-way delay on every
//! frame and RPC this node sends, for WAN tests over the real transport. Empty by default,
//! and then free; never read from the configuration file.
//!
//! The cluster crate's side (module `glue`): [`NetSender`] implements
//! `mimid_cluster::Transport`, and [`ClusterSink`] (or a `ClusterHandle` itself) is the
//! [`FrameSink`] that hands frames to `ClusterHandle::receive` and failed peers to
//! `ClusterHandle::report_unreachable`. Module `forward` carries proposals to their shard's
//! leader over [`NetSender::call`] ([`NetRouter`], [`ForwardedProposals`]). The wiring into a
//! running node is `server.rs`.

mod accept;
mod delay;
mod forward;
mod glue;
mod handshake;
mod join;
mod peer;
mod reset_key;
mod rpc;

pub use delay::LinkDelays;
pub use forward::{ForwardedProposals, NetRouter, FORWARD_TIMEOUT};
pub use glue::ClusterSink;
pub use handshake::Membership;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mimid_actors::cluster_meta::ClusterId;
use mimid_cluster::NodeId;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use self::delay::LinkDelay;
use self::handshake::close;
use self::peer::{Link, Outgoing, PeerTask};
use crate::config::{check_cluster_name, Config};
use crate::metrics::{FrameDrop, Metrics};
use crate::tls::{cluster_client_config, cluster_server_config, TlsError, TlsMaterial};

/// Concurrent RPC streams one peer node may open on its connection to us.
pub const RPC_STREAMS: u32 = 1024;
/// Of [`RPC_STREAMS`], how many push-stream relays' long polls (`NodeRequest::Pull`, up to
/// `MAX_PULL_WAIT` each) a node keeps open to one peer at most: the rest stay free for
/// forwarded proposals and reads, which a wall of idle polls would otherwise hold up to the
/// poll's wait each. A relay past the bound waits its turn (`mimid_limit_hits_total{limit=
/// "relay_streams"}`).
pub const PULL_STREAMS: usize = RPC_STREAMS as usize - 64;

/// Per-stream QUIC receive window: large enough that a multi-megabyte snapshot frame streams
/// at loopback or LAN speed without waiting for window updates every few packets.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// Per-connection QUIC receive and send window.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// Default `cluster.keep_alive_ms`.
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 1_000;
/// Default `cluster.idle_timeout_ms`: three keep-alives in a row lost.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 3_000;

/// Where incoming Raft frames go; implemented for the cluster's handle ([`ClusterSink`]).
/// Called from the transport's tasks, so both methods must return quickly and never block.
pub trait FrameSink: Send + Sync + 'static {
    /// A frame from a peer node, exactly as the peer passed it to [`NetSender::send`].
    fn deliver(&self, frame: &[u8]);
    /// `node` may be gone: a connection to or from it was lost, a connect attempt to it failed
    /// (frames to it are being dropped), or a call to it got no answer. Raft stops optimistic
    /// replication to it until it answers again, and hibernating shards it leads wake up.
    /// Reported again on every such event, so it must be cheap.
    fn unreachable(&self, node: NodeId);
}

/// Answers RPCs from peer nodes ([`NetSender::call`] on their side).
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers `body` from node `from` (authenticated by certificate and hello). An answer
    /// longer than `cluster.max_frame_bytes` is replaced by a refusal.
    fn handle(&self, from: NodeId, body: Vec<u8>) -> BoxFuture<'static, Vec<u8>>;
}

/// Why a [`NetSender::call`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The peer is not configured, or the last attempt to connect to it failed.
    #[error("peer node unreachable")]
    Unreachable,
    /// The caller's timeout passed.
    #[error("peer node did not answer in time")]
    Timeout,
    /// The peer's transport refused the request (e.g. it exceeds the peer's
    /// `cluster.max_frame_bytes`).
    #[error("refused by the peer node: {0}")]
    Refused(String),
    /// The request or the answer exceeds `cluster.max_frame_bytes`.
    #[error("request or answer exceeds cluster.max_frame_bytes")]
    TooLarge,
    /// The connection or the call's stream closed before the answer, or this node is shutting
    /// down.
    #[error("connection closed before the answer")]
    Closed,
}

/// Why the transport cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterNetError {
    /// The TLS material does not make a usable configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rustls offered no cipher suite QUIC can use for its initial packets.
    #[error("the TLS configuration is not usable for QUIC")]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The UDP socket cannot be bound.
    #[error("cannot bind the node-to-node listener on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("node-to-node transport settings: {0}")]
    Settings(String),
    /// A peer cannot be added.
    #[error("peer node {id}: {reason}")]
    Peer {
        /// The node id given.
        id: NodeId,
        /// Why.
        reason: String,
    },
}

/// Why [`NetSender::set_cluster_id`] did not take the id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterIdError {
    /// The node is configured statically (`cluster.peers`): its cluster has no id.
    #[error(
        "this node is configured statically (cluster.peers, cluster.voters): it has no cluster id"
    )]
    Static,
    /// The node knows its cluster id already (set or adopted before); it never changes.
    #[error("this node belongs to cluster {0} already")]
    Known(ClusterId),
}

/// `cluster.join`: the transport forms or joins a cluster by join addresses and cluster id
/// instead of configured peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinSettings {
    /// The join addresses (other nodes' `cluster.listen`; this node's own is skipped).
    pub addresses: Vec<SocketAddr>,
    /// The cluster id, when this node knows it already (kept in its data directory).
    pub cluster_id: Option<ClusterId>,
}

/// The cluster id as the transport knows it, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownClusterId {
    /// The id.
    pub id: ClusterId,
    /// The node it was adopted from (in a hello or through [`NetSender::adopt_cluster_id`]);
    /// `None` when this node set it ([`NetSender::set_cluster_id`], `mimid init`) or it was in
    /// [`JoinSettings::cluster_id`].
    pub learned_from: Option<NodeId>,
}

/// What the transport needs from the configuration, plus timings that are constants in
/// production and shortened in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSettings {
    /// This node's id (`node_id`), sent in the hello.
    pub node_id: NodeId,
    /// `cluster.name`, sent and checked in the hello.
    pub cluster_name: String,
    /// `cluster.listen`.
    pub listen: SocketAddr,
    /// `cluster.peer_queue_frames`.
    pub peer_queue_frames: usize,
    /// `cluster.max_frame_bytes`.
    pub max_frame_bytes: u32,
    /// Time for one connect attempt: QUIC and TLS handshakes and the hello. Default 5 s.
    pub connect_timeout: Duration,
    /// QUIC idle timeout (`cluster.idle_timeout_ms`): a connection without a packet from the
    /// peer for this long is lost, and the peer reported unreachable. Default 3 s.
    pub idle_timeout: Duration,
    /// Interval of QUIC keep-alives (`cluster.keep_alive_ms`), which keep quiet connections
    /// open and make a silent peer's connection time out. Default 1 s.
    pub keep_alive: Duration,
    /// First wait after a failed connect attempt. Default 50 ms.
    pub backoff_initial: Duration,
    /// Longest wait between connect attempts. Default 2 s.
    pub backoff_max: Duration,
    /// `cluster.join`; `None`: the static configuration (`cluster.peers`).
    pub join: Option<JoinSettings>,
    /// Fault injection: delays on what this node sends to each peer (module `delay`). Empty
    /// (no delay) unless a test sets it; never read from the configuration.
    pub link_delays: LinkDelays,
}

/// The bound endpoint, not yet accepting or dialling.
pub struct ClusterNet {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    settings: NetSettings,
    client_config: quinn::ClientConfig,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
}

/// The running transport's outgoing handle. Cheap to clone; the transport stops when the last
/// clone is dropped (or at [`NetSender::shutdown`]).
#[derive(Clone)]
pub struct NetSender {
    inner: Arc<Running>,
}

/// What the tasks share; holds no reference back to [`Running`], so dropping the last
/// [`NetSender`] stops everything.
pub(crate) struct Shared {
    settings: NetSettings,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    metrics: Arc<Metrics>,
    sink: Arc<dyn FrameSink>,
    rpc: Arc<dyn RpcHandler>,
    /// The known peers' addresses, for the acceptor's identity check.
    addresses: parking_lot::RwLock<BTreeMap<NodeId, SocketAddr>>,
    /// The sending side of each peer's task.
    peers: parking_lot::RwLock<BTreeMap<NodeId, PeerHandle>>,
    runtime: tokio::runtime::Handle,
    shutdown: watch::Sender<bool>,
    /// This node's address as others dial it (the bound listener unless it says nothing:
    /// an unspecified IP), sent in the hello.
    advertised: Option<SocketAddr>,
    /// With `cluster.join`: the cluster id once known; set once, never changed.
    cluster_id: watch::Sender<Option<KnownClusterId>>,
    /// Bumped when the cluster id becomes known: every connection made before is renewed, so
    /// each one carries a hello with the id.
    epoch: watch::Sender<u64>,
    /// The link delays peers added from now on get ([`NetSender::set_link_delays`]); locked
    /// after `peers` where both are.
    link_delays: parking_lot::Mutex<LinkDelays>,
    /// Whether any link is delayed: incoming calls look their link up only then.
    any_link_delayed: AtomicBool,
}

struct Running {
    shared: Arc<Shared>,
}

/// The sending side of one peer's task.
struct PeerHandle {
    queue: mpsc::Sender<Outgoing>,
    addr: watch::Sender<SocketAddr>,
    link: watch::Receiver<Link>,
    /// Fault injection: the delay on what is sent to this peer; `None`, the usual case: none.
    delay: Option<Arc<LinkDelay>>,
}

impl NetSettings {
    /// Settings for node `node_id` of cluster `cluster_name` listening on `listen`, with the
    /// configuration's defaults for everything else.
    pub fn new(node_id: NodeId, cluster_name: impl Into<String>, listen: SocketAddr) -> Self {
        NetSettings {
            node_id,
            cluster_name: cluster_name.into(),
            listen,
            peer_queue_frames: 1024,
            max_frame_bytes: mimid_cluster::MAX_FRAME_BYTES as u32,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            keep_alive: Duration::from_millis(DEFAULT_KEEP_ALIVE_MS),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            join: None,
            link_delays: LinkDelays::default(),
        }
    }

    /// The transport's settings from a validated configuration; `None` when `cluster.listen` is
    /// unset (a single node, no transport).
    pub fn from_config(config: &Config) -> Option<Self> {
        let listen = config.cluster.listen?;
        let mut settings = NetSettings::new(config.node_id, config.cluster.name.clone(), listen);
        settings.peer_queue_frames = config.cluster.peer_queue_frames;
        // Validation keeps it below 2^32; saturate rather than wrap if it was skipped.
        settings.max_frame_bytes =
            u32::try_from(config.cluster.max_frame_bytes).unwrap_or(u32::MAX);
        settings.keep_alive = Duration::from_millis(config.cluster.keep_alive_ms);
        settings.idle_timeout = Duration::from_millis(config.cluster.idle_timeout_ms);
        settings.join = config.cluster.uses_join().then(|| JoinSettings {
            addresses: config.cluster.join.clone(),
            cluster_id: None,
        });
        Some(settings)
    }

    fn check(&self) -> Result<(), ClusterNetError> {
        let problem = if self.node_id == 0 {
            Some("node id 0 is reserved by Raft".to_owned())
        } else if let Err(reason) = check_cluster_name(&self.cluster_name) {
            Some(format!("cluster name: {reason}"))
        } else if self.peer_queue_frames == 0 {
            Some("peer_queue_frames must be at least 1".to_owned())
        } else if self.max_frame_bytes == 0 {
            Some("max_frame_bytes must be at least 1".to_owned())
        } else if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            Some("keep_alive must be positive and below idle_timeout".to_owned())
        } else if self.connect_timeout.is_zero() || self.backoff_initial.is_zero() {
            Some("connect_timeout and backoff_initial must be positive".to_owned())
        } else if self.backoff_max < self.backoff_initial {
            Some("backoff_max must be at least backoff_initial".to_owned())
        } else {
            None
        };
        match problem {
            Some(reason) => Err(ClusterNetError::Settings(reason)),
            None => Ok(()),
        }
    }

    /// QUIC transport parameters; `incoming_bidi`/`incoming_uni` are the streams the other side
    /// may open.
    fn transport(
        &self,
        incoming_bidi: u32,
        incoming_uni: u32,
    ) -> Result<quinn::TransportConfig, ClusterNetError> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| ClusterNetError::Settings("idle_timeout is too long".into()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(incoming_bidi.into())
            .max_concurrent_uni_streams(incoming_uni.into())
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .stream_receive_window(STREAM_WINDOW_BYTES.into())
            .receive_window(CONNECTION_WINDOW_BYTES.into())
            .send_window(u64::from(CONNECTION_WINDOW_BYTES));
        Ok(transport)
    }
}

impl ClusterNet {
    /// Binds `settings.listen` with the node certificate and cluster CA of `tls`
    /// ([`TlsMaterial::load`] of `[cluster.tls]`). Must be called within a tokio runtime, which
    /// the transport's tasks will run on.
    pub fn bind(
        settings: NetSettings,
        tls: &TlsMaterial,
        metrics: Arc<Metrics>,
    ) -> Result<ClusterNet, ClusterNetError> {
        settings.check()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClusterNetError::Settings("ClusterNet::bind needs a tokio runtime".into())
        })?;
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(cluster_server_config(tls)?)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        // The dialler's hello plus its RPCs; one frame stream.
        server_config.transport_config(Arc::new(settings.transport(1 + RPC_STREAMS, 1)?));
        server_config.max_incoming(accept::MAX_CONNECTIONS);
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(cluster_client_config(tls)?)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        // The node we dial never opens streams towards us.
        client_config.transport_config(Arc::new(settings.transport(0, 0)?));

        let addr = settings.listen;
        // Keys that survive restarts, so a restarted node closes its peers' stale connections
        // at once (`reset_key`).
        let endpoint_config = reset_key::endpoint_config(tls.key.secret_der());
        let endpoint = std::net::UdpSocket::bind(addr)
            .and_then(|socket| {
                quinn::Endpoint::new(
                    endpoint_config,
                    Some(server_config),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .map_err(|source| ClusterNetError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| ClusterNetError::Bind { addr, source })?;
        Ok(ClusterNet {
            endpoint,
            local_addr,
            settings,
            client_config,
            metrics,
            runtime,
        })
    }

    /// The bound UDP address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts accepting connections from `peers` (delivering their frames to `sink` and their
    /// calls to `rpc`) and dialling each of them; with [`NetSettings::join`], also dialling
    /// each join address to learn the node there (module `join`). Fails, starting nothing, if
    /// a peer id is 0 or this node's own.
    pub fn start(
        self,
        peers: BTreeMap<NodeId, SocketAddr>,
        sink: Arc<dyn FrameSink>,
        rpc: Arc<dyn RpcHandler>,
    ) -> Result<NetSender, ClusterNetError> {
        for &id in peers.keys() {
            check_peer_id(id, self.settings.node_id)?;
        }
        let advertised =
            Some(self.local_addr).filter(|addr| !addr.ip().is_unspecified() && addr.port() != 0);
        let known = self
            .settings
            .join
            .as_ref()
            .and_then(|join| join.cluster_id)
            .map(|id| KnownClusterId {
                id,
                learned_from: None,
            });
        let any_link_delayed = AtomicBool::new(!self.settings.link_delays.is_empty());
        let link_delays = parking_lot::Mutex::new(self.settings.link_delays.clone());
        let shared = Arc::new(Shared {
            settings: self.settings,
            endpoint: self.endpoint,
            client_config: self.client_config,
            metrics: self.metrics,
            sink,
            rpc,
            addresses: parking_lot::RwLock::new(BTreeMap::new()),
            peers: parking_lot::RwLock::new(BTreeMap::new()),
            runtime: self.runtime,
            shutdown: watch::Sender::new(false),
            advertised,
            cluster_id: watch::Sender::new(known),
            epoch: watch::Sender::new(0),
            link_delays,
            any_link_delayed,
        });
        let sender = NetSender {
            inner: Arc::new(Running {
                shared: shared.clone(),
            }),
        };
        // The peers first: a peer that dialled us before we started is judged by its hello as
        // soon as the acceptor runs, and must be known by then (else it is refused as an
        // unknown node, and its frames are dropped until its next attempt).
        for (id, addr) in peers {
            shared.set_peer(id, addr)?;
        }
        let span = tracing::info_span!(
            "cluster_listener",
            addr = %self.local_addr,
            node_id = shared.settings.node_id
        );
        shared
            .runtime
            .spawn(accept::accept_loop(shared.clone()).instrument(span));
        if let Some(join) = &shared.settings.join {
            for &addr in &join.addresses {
                if Some(addr) == advertised || addr == self.local_addr {
                    continue;
                }
                let span = tracing::debug_span!("cluster_join", %addr);
                shared
                    .runtime
                    .spawn(join::discover(shared.clone(), addr).instrument(span));
            }
        }
        Ok(sender)
    }
}

impl NetSender {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.shared.settings.node_id
    }

    /// The bound UDP address of the listener.
    pub fn local_addr(&self) -> SocketAddr {
        // The endpoint was bound and its address read in `bind`; it cannot lose it.
        self.inner
            .shared
            .endpoint
            .local_addr()
            .expect("a bound endpoint knows its address")
    }

    /// Queues `frame` for node `to` without blocking. The frame is dropped, and counted in
    /// `mimid_cluster_frames_dropped_total{reason}`, when it exceeds `cluster.max_frame_bytes`
    /// (`too_large`), `to` is not a peer (`unknown_peer`), the peer is unreachable
    /// (`disconnected`) or its queue is full (`queue_full`). On a delayed link
    /// ([`LinkDelays`]) the frame is stamped with the instant it may leave.
    pub fn send(&self, to: NodeId, frame: Vec<u8>) {
        let metrics = &self.inner.shared.metrics;
        if frame.len() > self.inner.shared.settings.max_frame_bytes as usize {
            metrics.count_cluster_frames_dropped(FrameDrop::TooLarge, 1);
            return;
        }
        let peers = self.inner.shared.peers.read();
        let Some(peer) = peers.get(&to) else {
            metrics.count_cluster_frames_dropped(FrameDrop::UnknownPeer, 1);
            return;
        };
        if matches!(*peer.link.borrow(), Link::Down) {
            metrics.count_cluster_frames_dropped(FrameDrop::Disconnected, 1);
            return;
        }
        // Fault injection only: the clock is read when the link is delayed.
        let due = peer
            .delay
            .as_ref()
            .map(|delay| delay.due(std::time::Instant::now()));
        match peer.queue.try_send(Outgoing { frame, due }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.count_cluster_frames_dropped(FrameDrop::QueueFull, 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics.count_cluster_frames_dropped(FrameDrop::Disconnected, 1);
            }
        }
    }

    /// Sends `body` to node `to` and waits up to `timeout` for its [`RpcHandler`]'s answer.
    /// While a connect attempt to `to` is under way the call waits for it; if the last attempt
    /// failed, the call fails at once with [`CallError::Unreachable`]. Counted in
    /// `mimid_cluster_rpc_calls_total{outcome}`. On a delayed link ([`LinkDelays`]) the
    /// request waits for its delay first, within `timeout`.
    ///
    /// Cancel safety: safe to drop; the call's stream is stopped and its answer discarded,
    /// and the answering node drops its handler then (`rpc::serve_call`): every
    /// [`RpcHandler`] must be safe to drop, its effect possibly taken.
    pub fn call(
        &self,
        to: NodeId,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, CallError>> + Send + 'static {
        let (link, delay) = self
            .inner
            .shared
            .peers
            .read()
            .get(&to)
            .map(|peer| {
                let delay = peer.delay.as_ref().map(|delay| delay.draw());
                (Some(peer.link.clone()), delay)
            })
            .unwrap_or((None, None));
        let metrics = self.inner.shared.metrics.clone();
        let max_bytes = self.inner.shared.settings.max_frame_bytes as usize;
        async move {
            let _in_flight = metrics.cluster_rpc_in_flight(to);
            let result = if body.len() > max_bytes {
                Err(CallError::TooLarge)
            } else if let Some(link) = link {
                let call = async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    call_over(link, body, max_bytes).await
                };
                tokio::time::timeout(timeout, call)
                    .await
                    .unwrap_or(Err(CallError::Timeout))
            } else {
                Err(CallError::Unreachable)
            };
            metrics.count_cluster_rpc_call(rpc::outcome(&result));
            result
        }
    }

    /// Adds peer `id` at `addr`, or moves it there: its connection is replaced and the
    /// acceptor checks its certificate against the new address from now on.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), ClusterNetError> {
        self.inner.shared.set_peer(id, addr)
    }

    /// Adds peer `id` at `addr` unless the transport knows it already (at whatever address):
    /// for addresses heard from other nodes, which must not move a known peer. Returns whether
    /// it was added.
    pub fn learn_peer(&self, id: NodeId, addr: SocketAddr) -> bool {
        let shared = &self.inner.shared;
        if id == shared.settings.node_id || shared.addresses.read().contains_key(&id) {
            return false;
        }
        shared.set_peer(id, addr).is_ok()
    }

    /// Fault injection: from now on, frames and calls to each peer named in `delays` wait
    /// for its one-way delay (module `delay`), and answers to its calls too; an empty value
    /// ends every delay. Frames queued before keep the instant they were stamped with.
    pub fn set_link_delays(&self, delays: LinkDelays) {
        let shared = &self.inner.shared;
        let mut peers = shared.peers.write();
        for (&id, peer) in peers.iter_mut() {
            peer.delay = delays.link(id).map(Arc::new);
        }
        shared
            .any_link_delayed
            .store(!delays.is_empty(), Ordering::Relaxed);
        *shared.link_delays.lock() = delays;
    }

    /// Every peer the transport knows, at the address it dials.
    pub fn peer_addresses(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.inner.shared.addresses.read().clone()
    }

    /// The peers whose connection is up now (their hello passed since the cluster id became
    /// known, if it is), at the address the transport dials.
    pub fn connected_peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        let shared = &self.inner.shared;
        let addresses = shared.addresses.read();
        shared
            .peers
            .read()
            .iter()
            .filter(|(_, peer)| matches!(*peer.link.borrow(), Link::Up(_)))
            .filter_map(|(&id, _)| Some((id, *addresses.get(&id)?)))
            .collect()
    }

    /// This node's node-to-node address as other nodes dial it (`None` when it is bound to an
    /// unspecified IP, which tells them nothing).
    pub fn advertised_addr(&self) -> Option<SocketAddr> {
        self.inner.shared.advertised
    }

    /// Whether the node uses `cluster.join` (see [`JoinSettings`]).
    pub fn uses_join(&self) -> bool {
        self.inner.shared.settings.join.is_some()
    }

    /// The cluster id, once known (always `None` for a statically configured node).
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.inner.shared.cluster_id.borrow().map(|known| known.id)
    }

    /// The cluster id as it becomes known, with where it came from.
    pub fn watch_cluster_id(&self) -> watch::Receiver<Option<KnownClusterId>> {
        self.inner.shared.cluster_id.subscribe()
    }

    /// Sets the cluster id this node just created (`mimid init`): from now on every hello
    /// carries it, and every connection is renewed. Refused on a static node, and when the id
    /// is known already (it never changes).
    pub fn set_cluster_id(&self, id: ClusterId) -> Result<(), ClusterIdError> {
        self.inner.shared.adopt(id, None).map(drop)
    }

    /// Takes the cluster id `id` heard from node `from` (outside a hello: in a gossip answer),
    /// like a hello's would be taken. `Ok(true)` when it is new, `Ok(false)` when it is the
    /// known one.
    pub fn adopt_cluster_id(&self, id: ClusterId, from: NodeId) -> Result<bool, ClusterIdError> {
        self.inner.shared.adopt(id, Some(from))
    }

    /// Tells the sink that `node` did not answer (a forwarded proposal's call failed), as a lost
    /// connection does.
    fn report_unreachable(&self, node: NodeId) {
        self.inner.shared.sink.unreachable(node);
    }

    /// Stops the transport: every task ends, every connection is closed (peers see code 0,
    /// "node shutting down"), and the UDP socket is released once quinn has drained, which
    /// this waits for up to `grace`.
    ///
    /// Cancel safety: safe to drop; the transport is stopped either way.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop();
        if tokio::time::timeout(grace, self.inner.shared.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("node-to-node connections did not drain within the grace period");
        }
    }
}

impl Shared {
    /// [`NetSender::set_peer`], also for the transport's own tasks (join addresses, nodes
    /// admitted by their certificate).
    fn set_peer(self: &Arc<Self>, id: NodeId, addr: SocketAddr) -> Result<(), ClusterNetError> {
        check_peer_id(id, self.settings.node_id)?;
        self.addresses.write().insert(id, addr);
        let mut peers = self.peers.write();
        match peers.get(&id) {
            Some(peer) => {
                peer.addr.send_if_modified(|current| {
                    let changed = *current != addr;
                    *current = addr;
                    changed
                });
            }
            None => {
                peers.insert(id, self.spawn_peer(id, addr));
            }
        }
        Ok(())
    }

    fn spawn_peer(self: &Arc<Self>, id: NodeId, addr: SocketAddr) -> PeerHandle {
        let (queue_tx, queue_rx) = mpsc::channel(self.settings.peer_queue_frames);
        let (addr_tx, addr_rx) = watch::channel(addr);
        let (link_tx, link_rx) = watch::channel(Link::Connecting);
        self.metrics.set_cluster_peer_connected(id, false);
        let task = PeerTask {
            shared: self.clone(),
            peer: id,
            queue: queue_rx,
            addr: addr_rx,
            link: link_tx,
        };
        let span = tracing::debug_span!("cluster_peer", peer = id);
        self.runtime.spawn(task.run().instrument(span));
        PeerHandle {
            queue: queue_tx,
            addr: addr_tx,
            link: link_rx,
            delay: self.link_delays.lock().link(id).map(Arc::new),
        }
    }

    /// Fault injection: how long an answer to a call from `peer` waits before it is sent
    /// (module `delay`); `None` on an undelayed link.
    fn answer_delay(&self, peer: NodeId) -> Option<Duration> {
        if !self.any_link_delayed.load(Ordering::Relaxed) {
            return None;
        }
        let peers = self.peers.read();
        peers.get(&peer)?.delay.as_ref().map(|delay| delay.draw())
    }

    /// How this node forms its cluster, as its hello says.
    fn membership(&self) -> Membership {
        match &self.settings.join {
            None => Membership::Static,
            Some(_) => Membership::Join(self.cluster_id.borrow().map(|known| known.id)),
        }
    }

    /// This node's hello.
    fn hello(&self) -> handshake::Hello {
        handshake::Hello {
            node_id: self.settings.node_id,
            cluster: self.settings.cluster_name.clone(),
            membership: self.membership(),
            listen: self.advertised,
        }
    }

    /// Takes cluster id `id` (from node `from`, or set here when `None`): `Ok(true)` when it is
    /// new, which renews every connection ([`Shared::epoch`]); `Ok(false)` when it is known.
    fn adopt(&self, id: ClusterId, from: Option<NodeId>) -> Result<bool, ClusterIdError> {
        if self.settings.join.is_none() {
            return Err(ClusterIdError::Static);
        }
        let mut outcome = Ok(false);
        self.cluster_id.send_if_modified(|known| match known {
            None => {
                *known = Some(KnownClusterId {
                    id,
                    learned_from: from,
                });
                outcome = Ok(true);
                true
            }
            Some(known) if known.id == id => false,
            Some(known) => {
                outcome = Err(ClusterIdError::Known(known.id));
                false
            }
        });
        if outcome == Ok(true) {
            match from {
                Some(node) => tracing::info!(
                    cluster_id = %id,
                    from = node,
                    "cluster id adopted; renewing node-to-node connections"
                ),
                None => tracing::info!(
                    cluster_id = %id,
                    "cluster id set; renewing node-to-node connections"
                ),
            }
            self.epoch.send_modify(|epoch| *epoch += 1);
        }
        outcome
    }
}

impl Running {
    fn stop(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared
            .endpoint
            .close(close::SHUTDOWN, b"node shutting down");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for the peer's connection (or the end of the attempt under way), then calls on it.
async fn call_over(
    mut link: watch::Receiver<Link>,
    body: Vec<u8>,
    max_bytes: usize,
) -> Result<Vec<u8>, CallError> {
    let conn = loop {
        match &*link.borrow_and_update() {
            Link::Up(conn) => break conn.clone(),
            Link::Down => return Err(CallError::Unreachable),
            Link::Connecting => {}
        }
        // The peer's task ended (peer removed or node shutting down).
        link.changed().await.map_err(|_| CallError::Closed)?;
    };
    rpc::call_on(&conn, body, max_bytes).await
}

fn check_peer_id(id: NodeId, own: NodeId) -> Result<(), ClusterNetError> {
    let reason = if id == 0 {
        "node id 0 is reserved by Raft"
    } else if id == own {
        "this is the node's own id"
    } else {
        return Ok(());
    };
    Err(ClusterNetError::Peer {
        id,
        reason: reason.into(),
    })
}

#[cfg(test)]
mod tests;
