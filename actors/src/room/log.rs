//! The room log: every accepted item with its per-room sequence number and hub timestamp
//! (DESIGN.md §2). Delivery is "each destination reads the log from its cursor".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ClientId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogItem {
    /// Per-room sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// Hub accepted timestamp (ms since the UNIX epoch), non-decreasing along the log.
    pub ts_ms: u64,
    /// MLS epoch of the group when the item was accepted (for a Commit: the epoch it ends).
    pub epoch: u64,
    pub body: ItemBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemBody {
    /// An accepted proposal bundle (`proposalOrCommit` followed by `moreProposals`).
    Proposals { messages: Vec<Vec<u8>> },
    /// An accepted Commit (`MLSMessage`).
    Commit { message: Vec<u8> },
    /// A Welcome for the clients added by the Commit just before it, with the ratchet tree of
    /// the new epoch (RatchetTreeOption `full`), addressed only to those clients.
    Welcome {
        welcome: Vec<u8>,
        ratchet_tree: Vec<u8>,
        to: Vec<ClientId>,
    },
    /// An accepted application message (`MLSMessage` with a PrivateMessage).
    Application { message: Vec<u8> },
}

/// A span of the log during which a client was to receive the room's items: from the seq of the
/// Welcome that added it (0 for the creator) to the seq of the Commit that removed it,
/// inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Membership {
    from: u64,
    until: Option<u64>,
}

/// The retained log of one room with who receives what and how far each local client has
/// acknowledged: the delivery half of a room, shared by the hub's `RoomState` and the
/// follower's `MirrorRoom`. Maps are `BTreeMap`s so snapshots are byte-identical on every
/// replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomLog {
    /// Hub time of the room's start; no item is stamped earlier.
    created_ts_ms: u64,
    /// The retained items: `items[i].seq == trimmed + i + 1`.
    items: Vec<LogItem>,
    /// Items dropped from the front by retention.
    trimmed: u64,
    memberships: BTreeMap<ClientId, Vec<Membership>>,
    cursors: BTreeMap<ClientId, u64>,
}

impl RoomLog {
    pub fn new(created_ts_ms: u64) -> Self {
        RoomLog {
            created_ts_ms,
            items: Vec::new(),
            trimmed: 0,
            memberships: BTreeMap::new(),
            cursors: BTreeMap::new(),
        }
    }

    /// Checks what a snapshot cannot guarantee by construction: contiguous sequence numbers.
    pub fn check(&self) -> Result<(), &'static str> {
        if self
            .items
            .iter()
            .zip(self.trimmed + 1..)
            .all(|(item, seq)| item.seq == seq)
        {
            Ok(())
        } else {
            Err("log sequence numbers are not contiguous after the trimmed prefix")
        }
    }

    pub fn created_ts_ms(&self) -> u64 {
        self.created_ts_ms
    }

    /// The seq of the last item, 0 if the log is empty.
    pub fn last_seq(&self) -> u64 {
        self.trimmed + self.items.len() as u64
    }

    /// Seq of the oldest item still held (items before it were trimmed by retention).
    pub fn first_retained_seq(&self) -> u64 {
        self.trimmed + 1
    }

    /// The items with seq greater than `after`, in order.
    pub fn items_after(&self, after: u64) -> &[LogItem] {
        let start = usize::try_from(after.saturating_sub(self.trimmed))
            .unwrap_or(usize::MAX)
            .min(self.items.len());
        &self.items[start..]
    }

    /// The retained item `seq`.
    pub fn item(&self, seq: u64) -> Option<&LogItem> {
        let index = usize::try_from(seq.checked_sub(self.trimmed + 1)?).ok()?;
        self.items.get(index)
    }

    /// Appends an item and returns its seq. The hub time never goes backwards along the log (a
    /// new leader's clock may lag the old one's).
    pub fn append(&mut self, ts_ms: u64, epoch: u64, body: ItemBody) -> u64 {
        let floor = self
            .items
            .last()
            .map_or(self.created_ts_ms, |item| item.ts_ms);
        let seq = self.last_seq() + 1;
        self.items.push(LogItem {
            seq,
            ts_ms: ts_ms.max(floor),
            epoch,
            body,
        });
        seq
    }

    /// Whether `client` is to receive `item`: a Welcome goes only to the clients it addresses;
    /// any other item to the clients whose membership span covers it.
    pub fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool {
        match &item.body {
            ItemBody::Welcome { to, .. } => to.contains(client),
            _ => self.memberships.get(client).is_some_and(|spans| {
                spans.iter().any(|span| {
                    span.from <= item.seq && span.until.is_none_or(|until| item.seq <= until)
                })
            }),
        }
    }

    /// Whether `client` ever was to receive items of this room.
    pub fn has_history(&self, client: &ClientId) -> bool {
        self.memberships.contains_key(client)
    }

    /// Every client that ever was to receive items, sorted.
    pub fn clients(&self) -> impl Iterator<Item = &ClientId> {
        self.memberships.keys()
    }

    /// Clients whose current span is open, sorted.
    pub fn open_clients(&self) -> impl Iterator<Item = &ClientId> {
        self.memberships
            .iter()
            .filter(|(_, spans)| spans.last().is_some_and(|span| span.until.is_none()))
            .map(|(client, _)| client)
    }

    /// `client` receives items from `from` on. Panics if its span is already open: callers
    /// open spans only for clients that are not members.
    pub fn open_span(&mut self, client: ClientId, from: u64) {
        let spans = self.memberships.entry(client).or_default();
        assert!(
            spans.last().is_none_or(|span| span.until.is_some()),
            "a membership span is opened only for a non-member"
        );
        spans.push(Membership { from, until: None });
    }

    /// `client` receives nothing after `until`. Panics if it has no open span.
    pub fn close_span(&mut self, client: &ClientId, until: u64) {
        let span = self
            .memberships
            .get_mut(client)
            .and_then(|spans| spans.last_mut())
            .filter(|span| span.until.is_none())
            .expect("a membership span is closed only for a member");
        span.until = Some(until);
    }

    /// Records that `client` has processed the room up to `seq`. Cursors only move forward,
    /// never past the end of the log, and only for clients with a membership history.
    pub fn ack(&mut self, client: &ClientId, seq: u64) {
        let seq = seq.min(self.last_seq());
        if !self.memberships.contains_key(client) || seq <= self.acked(client) {
            return; // a no-op leaves no trace in the replicated state
        }
        self.cursors.insert(client.clone(), seq);
    }

    /// The acknowledged cursor of `client`, 0 if none.
    pub fn acked(&self, client: &ClientId) -> u64 {
        self.cursors.get(client).copied().unwrap_or(0)
    }

    /// Retention (DESIGN.md §4): drops the items up to `done` (the seq every destination has
    /// passed) that are also older than `window_ms` at `now_ms`. The newest item always stays (it
    /// anchors the non-decreasing hub time). Returns how many items were dropped.
    pub fn trim(&mut self, done: u64, now_ms: u64, window_ms: u64) -> u64 {
        let droppable = self
            .items
            .iter()
            .take(self.items.len().saturating_sub(1))
            .take_while(|item| item.seq <= done && item.ts_ms.saturating_add(window_ms) <= now_ms)
            .count();
        self.items.drain(..droppable);
        self.trimmed += droppable as u64;
        droppable as u64
    }
}
