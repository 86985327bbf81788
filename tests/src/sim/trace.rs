//! The event trace of one run and its hash: the determinism witness (STYLE.md §8, madsim's
//! `check_determinism`). Every scheduling decision, fault, Raft message, apply, client request,
//! answer and log item the simulation handles is encoded (postcard) into a SHA-256; two runs of
//! a seed must produce the same hash. With `echo` on, events are also printed, for replaying a
//! failing seed.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One thing that happened, as recorded in the trace.
#[derive(Debug, Serialize)]
pub enum Event<'a> {
    Tick {
        node: u64,
    },
    Deliver {
        from: u64,
        to: u64,
        kind: i32,
        term: u64,
        index: u64,
        entries: usize,
        commit: u64,
    },
    Fault {
        kind: &'a str,
        detail: u64,
    },
    Ready {
        node: u64,
        entries: usize,
        committed: usize,
        messages: usize,
        commit: u64,
        term: u64,
    },
    Synced {
        node: u64,
        last_index: u64,
    },
    Applied {
        node: u64,
        index: u64,
        term: u64,
        outcome: &'a str,
    },
    Role {
        node: u64,
        leader: u64,
        role: &'a str,
    },
    Request {
        client: usize,
        request: u64,
        kind: &'a str,
        node: u64,
    },
    Answer {
        request: u64,
        outcome: &'a str,
    },
    Read {
        client: usize,
        node: u64,
        items: usize,
    },
    Item {
        seq: u64,
        epoch: u64,
        body: [u8; 32],
    },
    Phase {
        name: &'a str,
    },
    /// Hub replica `hub` sent notify `notify` (items up to hub seq `last`) to follower replica
    /// `to`.
    Notify {
        hub: u64,
        to: u64,
        notify: u64,
        items: usize,
        last: u64,
    },
    /// The outcome of a notify as the hub saw it (an answer, or a timeout).
    NotifyOutcome {
        notify: u64,
        outcome: &'a str,
    },
    /// Hub replica `node` started leading and a fresh fan-out core.
    FanoutCore {
        node: u64,
        generation: u64,
    },
    /// The follower's mirror grew to local seq `seq`, which is hub seq `hub_seq`.
    MirrorItem {
        seq: u64,
        hub_seq: u64,
    },
    /// The operator sent membership request `id` (a change of `target`, or a leadership
    /// transfer to it) to replica `node`.
    Admin {
        id: u64,
        node: u64,
        action: &'a str,
        target: u64,
    },
    /// How membership request `id` ended.
    AdminOutcome {
        id: u64,
        outcome: &'a str,
    },
    /// A group's configuration moved on: the latest one applied, at the conf change `index`
    /// (provider 0 is the hub's group, 1 the follower's).
    Configuration {
        provider: u64,
        index: u64,
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
}

pub struct Trace {
    hasher: Sha256,
    buffer: Vec<u8>,
    events: u64,
    echo: bool,
}

impl Trace {
    pub fn new(echo: bool) -> Self {
        Trace {
            hasher: Sha256::new(),
            buffer: Vec::with_capacity(128),
            events: 0,
            echo,
        }
    }

    /// Records `event` at simulated time `now_ms`.
    pub fn record(&mut self, now_ms: u64, event: Event<'_>) {
        self.buffer.clear();
        self.buffer.extend_from_slice(&now_ms.to_be_bytes());
        // Serialising plain enums of integers and strings into memory cannot fail.
        self.buffer = postcard::to_extend(&event, std::mem::take(&mut self.buffer))
            .expect("trace events serialise");
        self.hasher.update((self.buffer.len() as u32).to_be_bytes());
        self.hasher.update(&self.buffer);
        self.events += 1;
        if self.echo {
            eprintln!("[{now_ms:>9} ms] {event:?}");
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The hash over every event so far, hex-encoded.
    pub fn hash(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}
