//! Fault injection: a one-way delay on everything this node sends to a peer node, as a WAN
//! would add (issue 9 item 4; `tests/tests/wan_quic.rs`). A test and chaos hook, never
//! configured from TOML: set through [`super::NetSettings::link_delays`] when the transport is
//! built, or [`super::NetSender::set_link_delays`] (`server::Node::set_link_delays`) while it
//! runs. Empty (the default), it costs nothing: no clock is read, no timer is armed.
//!
//! What is delayed, each by the link's one-way delay plus a seeded jitter:
//! - Raft frames: [`super::NetSender::send`] stamps each frame with the instant it is due
//!   ([`LinkDelay::due`]); the peer's task ([`super::peer`]), the one writer of the link's
//!   frame stream, holds the frame until then before writing it. It takes the frames in send
//!   order and waits for each in turn, so per-link order is kept whatever the jitter (a frame
//!   whose draw is shorter than the one before waits behind it), and none is written before
//!   its instant. Frames waiting count against `cluster.peer_queue_frames`, as a real link's
//!   bytes in flight would.
//! - RPCs ([`super::NetSender::call`]: forwarded proposals, remote reads, pulls, gossip,
//!   cluster operations): the request waits for its delay before it is sent, within the
//!   call's timeout; the answering node delays its answer by its own delay to the caller
//!   ([`super::rpc::serve_call`]). A call's round trip is then both one-way delays, as a
//!   frame and its answer's are.
//!
//! Not delayed: QUIC's own packets (handshakes, acknowledgements, keep-alives), so the idle
//! timeout and connection losses behave as on loopback; only what the transport carries for
//! the cluster waits. The hello of a new connection is not delayed either.
//!
//! Sans-IO: [`LinkDelay`] takes `now` and answers an instant; the shells sleep.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mimid_cluster::{splitmix, NodeId};

/// Per-destination one-way delays for what this node sends (module docs). Empty: no delay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkDelays {
    /// One-way delay to each peer node; a peer absent here is not delayed.
    pub one_way: BTreeMap<NodeId, Duration>,
    /// Largest extra delay drawn per frame or call, uniform in `0..=jitter` at microsecond
    /// resolution. Zero: none.
    pub jitter: Duration,
    /// Seed of the jitter draws (mixed with the destination, so each link draws its own
    /// sequence).
    pub seed: u64,
}

impl LinkDelays {
    /// No link delayed.
    pub fn is_empty(&self) -> bool {
        self.one_way.is_empty()
    }

    /// The link to `to`, when it is delayed.
    pub(crate) fn link(&self, to: NodeId) -> Option<LinkDelay> {
        let one_way = *self.one_way.get(&to)?;
        Some(LinkDelay {
            one_way,
            jitter: self.jitter,
            state: AtomicU64::new(self.seed ^ to.wrapping_mul(0xA24B_AED4_963E_E407)),
        })
    }
}

/// One delayed link: its delay and its jitter generator (SplitMix64, whose state only moves
/// by a constant, so a draw is one atomic add and needs no lock on the sending path).
#[derive(Debug)]
pub(crate) struct LinkDelay {
    one_way: Duration,
    jitter: Duration,
    state: AtomicU64,
}

impl LinkDelay {
    /// The delay of one frame or call: the one-way delay plus a jitter draw.
    pub(crate) fn draw(&self) -> Duration {
        self.one_way + self.jitter_draw()
    }

    /// When something sent at `now` may leave: `now` plus [`LinkDelay::draw`].
    pub(crate) fn due(&self, now: Instant) -> Instant {
        now + self.draw()
    }

    fn jitter_draw(&self) -> Duration {
        let micros = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        if micros == 0 {
            return Duration::ZERO;
        }
        let state = self
            .state
            .fetch_add(splitmix::GAMMA, Ordering::Relaxed)
            .wrapping_add(splitmix::GAMMA);
        Duration::from_micros(splitmix::mix(state) % micros.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_links_are_delayed_and_jitter_stays_within_its_bound() {
        let delays = LinkDelays {
            one_way: BTreeMap::from([(2, Duration::from_millis(15)), (3, Duration::ZERO)]),
            jitter: Duration::from_millis(2),
            seed: 7,
        };
        assert!(!delays.is_empty());
        assert!(LinkDelays::default().is_empty());
        assert!(delays.link(4).is_none());
        let link = delays.link(2).expect("delayed");
        let now = Instant::now();
        let draws: Vec<Duration> = (0..1000).map(|_| link.due(now) - now).collect();
        assert!(draws
            .iter()
            .all(|d| *d >= Duration::from_millis(15) && *d <= Duration::from_millis(17)));
        // The jitter does spread the draws, and the same seed draws the same sequence.
        assert!(draws.iter().any(|d| *d >= Duration::from_micros(16_500)));
        assert!(draws.iter().any(|d| *d <= Duration::from_micros(15_500)));
        let again = delays.link(2).expect("delayed");
        assert_eq!(again.draw(), draws[0]);
        // Without jitter a link's delay is exact.
        let exact = LinkDelays {
            jitter: Duration::ZERO,
            ..delays.clone()
        };
        assert_eq!(
            exact.link(2).expect("delayed").draw(),
            Duration::from_millis(15)
        );
        assert_eq!(exact.link(3).expect("named").draw(), Duration::ZERO);
    }
}
