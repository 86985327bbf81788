//! A [`Transport`] decorator that delays every frame by its link's one-way delay, as a WAN
//! would, for the WAN tests (`cluster/tests/wan.rs`). Test code, not part of the crate.
//!
//! [`DelayTransport`] wraps one node's transport. `send` (on the driver thread) only stamps
//! the frame with the instant it is due, `now + one_way(from, to) + jitter`, and queues it;
//! the decorator's own timer thread hands it to the wrapped transport at that instant, never
//! earlier. Jitter is drawn from a seeded generator (SplitMix64), uniform in `0..=jitter`, and
//! cannot reorder a link: a frame is never due before the previous frame of the same link, so
//! delivery per (from, to) stays in send order, as over the real transport's one QUIC
//! connection per node pair. Different links are independent.
//!
//! Wrapping the harness's in-memory `NetTransport` keeps its partition switches: it checks them
//! when the frame is delivered, so a frame in flight when a node is cut off is lost, as it
//! would be on a real network. Nothing here sleeps to synchronise: the delays are deadlines of
//! a channel receive (`recv_deadline`) on the timer thread.
//!
//! [`Wan`] describes the topology: which region each node is in and the round-trip time
//! between regions (one-way delay = RTT / 2; nodes of one region are `intra_rtt` apart).

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use mimid_cluster::splitmix::SplitMix64;
use mimid_cluster::{NodeId, Transport};

/// A region's name ("A", "B", "C").
pub type Region = &'static str;

/// Where the nodes are and how far apart the regions are.
#[derive(Debug, Clone)]
pub struct Wan {
    /// The region of every node.
    pub region_of: BTreeMap<NodeId, Region>,
    /// Round-trip time between two different regions, either order.
    pub rtt: BTreeMap<(Region, Region), Duration>,
    /// Round-trip time between two nodes of one region.
    pub intra_rtt: Duration,
    /// Largest extra one-way delay drawn per frame (uniform in `0..=jitter`).
    pub jitter: Duration,
    /// Seed of each node's jitter generator (mixed with the sending node's id).
    pub seed: u64,
}

impl Wan {
    /// Round-trip time between the regions of nodes `a` and `b`, jitter aside.
    ///
    /// Panics on a node or region pair the topology does not name (a mistake in the test).
    pub fn rtt(&self, a: NodeId, b: NodeId) -> Duration {
        let (ra, rb) = (self.region(a), self.region(b));
        if ra == rb {
            return self.intra_rtt;
        }
        *self
            .rtt
            .get(&(ra, rb))
            .or_else(|| self.rtt.get(&(rb, ra)))
            .unwrap_or_else(|| panic!("no RTT between regions {ra} and {rb}"))
    }

    /// One-way delay from `from` to `to`: half the round trip.
    pub fn one_way(&self, from: NodeId, to: NodeId) -> Duration {
        self.rtt(from, to) / 2
    }

    /// The region of node `id`.
    pub fn region(&self, id: NodeId) -> Region {
        self.region_of
            .get(&id)
            .copied()
            .unwrap_or_else(|| panic!("node {id} has no region"))
    }

    /// The commit latency floor of a leader on `leader` with `voters`: the round trip to the
    /// nearest other voter, whose acknowledgement completes a majority of three (quorum 2).
    /// For other group sizes, the round trip to the (quorum - 1)-th nearest other voter.
    pub fn quorum_rtt(&self, leader: NodeId, voters: &[NodeId]) -> Duration {
        let mut others: Vec<Duration> = voters
            .iter()
            .filter(|&&id| id != leader)
            .map(|&id| self.rtt(leader, id))
            .collect();
        others.sort_unstable();
        let quorum = voters.len() / 2 + 1;
        // The leader counts itself; it waits for quorum - 1 others.
        others
            .get(quorum.saturating_sub(2))
            .copied()
            .unwrap_or(Duration::ZERO)
    }
}

/// One frame waiting for its instant.
struct Delayed {
    due: Instant,
    /// Send order on this transport: breaks ties between frames due at the same instant.
    seq: u64,
    to: NodeId,
    frame: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that [`BinaryHeap`] (a max-heap) pops the earliest frame first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// A jitter draw: uniform in `0..=max` at microsecond resolution.
fn jitter_below(rng: &mut SplitMix64, max: Duration) -> Duration {
    let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.below(micros.saturating_add(1)))
}

/// Node `from`'s transport behind the WAN's delays (module docs).
pub struct DelayTransport {
    from: NodeId,
    wan: Arc<Wan>,
    rng: SplitMix64,
    /// When the last frame of each link is due: the next one is never due earlier.
    last_due: BTreeMap<NodeId, Instant>,
    seq: u64,
    queue: Option<Sender<Delayed>>,
    timer: Option<JoinHandle<()>>,
}

impl DelayTransport {
    /// Delays node `from`'s frames by `wan`'s links before `inner` gets them; starts the timer
    /// thread that owns `inner` until this transport is dropped.
    pub fn new(from: NodeId, wan: Arc<Wan>, inner: Box<dyn Transport>) -> Self {
        let (queue, due) = crossbeam_channel::unbounded();
        let timer = std::thread::Builder::new()
            .name(format!("wan-delay-{from}"))
            .spawn(move || deliver_when_due(inner, due))
            .expect("spawn the delay timer thread");
        let seed = wan.seed ^ from.wrapping_mul(0xA24B_AED4_963E_E407);
        DelayTransport {
            from,
            wan,
            rng: SplitMix64::new(seed),
            last_due: BTreeMap::new(),
            seq: 0,
            queue: Some(queue),
            timer: Some(timer),
        }
    }
}

impl Transport for DelayTransport {
    fn send(&mut self, to: NodeId, frame: Vec<u8>) {
        let delay = self.wan.one_way(self.from, to) + jitter_below(&mut self.rng, self.wan.jitter);
        let mut due = Instant::now() + delay;
        if let Some(&last) = self.last_due.get(&to) {
            // Jitter must not let a frame overtake the previous one on its link.
            due = due.max(last);
        }
        self.last_due.insert(to, due);
        self.seq += 1;
        let delayed = Delayed {
            due,
            seq: self.seq,
            to,
            frame,
        };
        if let Some(queue) = &self.queue {
            // The timer thread lives as long as the sender; a send cannot fail before drop.
            let _ = queue.send(delayed);
        }
    }
}

impl Drop for DelayTransport {
    fn drop(&mut self) {
        // Closing the queue ends the timer thread; frames still in flight are lost, as they
        // would be with a node that stopped.
        drop(self.queue.take());
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
    }
}

/// The timer thread: hands each frame to `inner` once due, earliest first.
fn deliver_when_due(mut inner: Box<dyn Transport>, queue: Receiver<Delayed>) {
    let mut pending: BinaryHeap<Delayed> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while pending.peek().is_some_and(|next| next.due <= now) {
            let next = pending.pop().expect("peeked");
            inner.send(next.to, next.frame);
        }
        let received = match pending.peek() {
            Some(next) => queue.recv_deadline(next.due),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(delayed) => pending.push(delayed),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
