//! `MirrorRoom`: a follower's replicated copy of a room hosted by another provider (DESIGN.md
//! §1). The hub orders everything; the follower appends what `notify` brings (MIMI.md §5.4),
//! once, in hub order, and delivers it to its local clients from their cursors like a hosted
//! room does (the log and its delivery bookkeeping are the shared [`RoomLog`]).
//!
//! Deduplication (MIMI.md §5.4, §7.6): an item the hub numbered (`ReceivedItem::hub_seq`, sent
//! by a mimid hub) is appended only if its number is past the last one received, so a resend
//! after a hub restart or a lost 201 changes nothing, however the hub batched it. Items without
//! a number fall back to the draft's rule: a body byte-identical to one of the last
//! [`RECENT_BODIES`] received is ignored.
//!
//! Local sequence numbers are the follower's own (contiguous), because a hub leaves out of a
//! follower's fan-out what none of its clients is to see.
//!
//! Who receives what: a local client is in the room from the Welcome the hub routed to it
//! (the edge resolves the Welcome's KeyPackageRefs to the clients that published them), or,
//! when it joined by an external commit (MIMI.md §6.6, no Welcome), from that Commit
//! ([`MirrorRoom::join`], recorded by the edge that forwarded the accepted commit). A
//! follower cannot see removals in encrypted groups' plaintext Commits without tracking the
//! tree, so a local client keeps receiving (ciphertext it cannot read) until it leaves the
//! room on its own; the hub stops fanning out to a provider once none of its clients is in the
//! group.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::ReceivedItem;
use crate::ids::{ClientId, RoomId};
use crate::room::log::{ItemBody, LogItem, RoomLog};

/// How many notify bodies are remembered for byte-identical deduplication.
pub const RECENT_BODIES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRoom {
    room: RoomId,
    log: RoomLog,
    /// The hub seq of the last numbered item appended (0 before the first).
    hub_seq: u64,
    /// SHA-256 of the last notify bodies, oldest first.
    recent_bodies: VecDeque<[u8; 32]>,
}

impl MirrorRoom {
    /// An empty mirror. It has no clock of its own: items keep the hub's accepted times (the
    /// log's floor is 0, so the follower's time of the first notify raises none of them).
    pub fn new(room: RoomId) -> Self {
        MirrorRoom {
            room,
            log: RoomLog::new(0),
            hub_seq: 0,
            recent_bodies: VecDeque::new(),
        }
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The hub seq of the last numbered item received.
    pub fn hub_seq(&self) -> u64 {
        self.hub_seq
    }

    /// Appends what one notify body brought, skipping what was received before; Welcome
    /// recipients enter the room at their Welcome. Returns how many items were appended.
    pub fn receive(&mut self, items: Vec<ReceivedItem>, body_hash: [u8; 32]) -> usize {
        if self.recent_bodies.contains(&body_hash) {
            return 0;
        }
        if self.recent_bodies.len() == RECENT_BODIES {
            self.recent_bodies.pop_front();
        }
        self.recent_bodies.push_back(body_hash);
        let mut appended = 0;
        for item in items {
            if let Some(hub_seq) = item.hub_seq {
                if hub_seq <= self.hub_seq {
                    continue;
                }
                self.hub_seq = hub_seq;
            }
            let newcomers: Vec<ClientId> = match &item.body {
                ItemBody::Welcome { to, .. } => to
                    .iter()
                    .filter(|client| !self.log.open_clients().any(|open| open == *client))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            let seq = self.log.append(item.ts_ms, item.epoch, item.body);
            for client in newcomers {
                self.log.open_span(client, seq);
            }
            appended += 1;
        }
        appended
    }

    /// Local client `client` joined by an external commit the hub accepted (MIMI.md §6.6):
    /// it receives the room from that Commit on. The hub's notify and the edge's `MirrorJoin`
    /// race, so the Commit may already be here — found by SHA-256 of its `MLSMessage` bytes
    /// among the retained items, and the span opens at it — or still to come, and the span
    /// opens at the next item. In the second case items of the old epoch that the hub fans
    /// out before the Commit reach the client too; it cannot read them and drops them (the
    /// client library skips items of epochs before its own). A client already receiving the
    /// room keeps its span (a resync join, RFC 9420 §12.4.3.2). Returns whether a span opened.
    pub fn join(&mut self, client: ClientId, commit_sha256: &[u8; 32]) -> bool {
        if self.log.open_clients().any(|open| *open == client) {
            return false;
        }
        let at_commit = self
            .log
            .items_after(0)
            .iter()
            .rev()
            .find(|item| match &item.body {
                ItemBody::Commit { message } => {
                    <[u8; 32]>::from(Sha256::digest(message)) == *commit_sha256
                }
                _ => false,
            })
            .map(|item| item.seq);
        let from = at_commit.unwrap_or_else(|| self.log.last_seq() + 1);
        self.log.open_span(client, from);
        true
    }

    /// Local clients that receive this room's items now.
    pub fn members(&self) -> Vec<ClientId> {
        self.log.open_clients().cloned().collect()
    }

    pub fn ack(&mut self, client: &ClientId, seq: u64) {
        self.log.ack(client, seq);
    }

    pub fn acked(&self, client: &ClientId) -> u64 {
        self.log.acked(client)
    }

    pub fn last_seq(&self) -> u64 {
        self.log.last_seq()
    }

    pub fn items_after(&self, after: u64) -> &[LogItem] {
        self.log.items_after(after)
    }

    pub fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool {
        self.log.visible_to(item, client)
    }

    /// Retention as for hosted rooms: items every local member acknowledged and older than
    /// `window_ms` go. Returns how many were dropped.
    pub fn trim(&mut self, now_ms: u64, window_ms: u64) -> u64 {
        let done = self
            .log
            .open_clients()
            .map(|client| self.log.acked(client))
            .min()
            .unwrap_or_else(|| self.log.last_seq());
        self.log.trim(done, now_ms, window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> ClientId {
        ClientId::parse(&format!("mimi://b.example/d/{name}/phone")).unwrap()
    }

    fn app(hub_seq: Option<u64>, byte: u8) -> ReceivedItem {
        ReceivedItem {
            hub_seq,
            ts_ms: 10,
            epoch: 1,
            body: ItemBody::Application {
                message: vec![byte],
            },
        }
    }

    fn welcome(hub_seq: u64, to: Vec<ClientId>) -> ReceivedItem {
        ReceivedItem {
            hub_seq: Some(hub_seq),
            ts_ms: 10,
            epoch: 1,
            body: ItemBody::Welcome {
                welcome: vec![0],
                ratchet_tree: vec![1],
                to,
            },
        }
    }

    fn mirror() -> MirrorRoom {
        MirrorRoom::new(RoomId::parse("mimi://a.example/r/clubhouse").unwrap())
    }

    /// MIMI.md §5.4: a hub that resends (after a restart or a lost 201) with different batching
    /// must not make the follower deliver anything twice.
    #[test]
    fn numbered_items_are_appended_once_whatever_the_batching() {
        let mut room = mirror();
        let bob = client("bob");
        assert_eq!(
            room.receive(
                vec![welcome(2, vec![bob.clone()]), app(Some(3), 3)],
                [1; 32]
            ),
            2
        );
        assert_eq!(
            room.receive(vec![app(Some(3), 3), app(Some(5), 5)], [2; 32]),
            1
        );
        assert_eq!(room.receive(vec![app(Some(5), 5)], [3; 32]), 0);
        let seqs: Vec<u64> = room.items_after(0).iter().map(|item| item.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "local seqs are contiguous");
        assert_eq!(room.hub_seq(), 5);
        assert_eq!(room.members(), vec![bob.clone()]);
        let items = room.items_after(0);
        assert!(items.iter().all(|item| room.visible_to(item, &bob)));
        assert!(!room.visible_to(&items[1], &client("carol")));
    }

    /// MIMI.md §5.4: without numbers, a byte-identical body is ignored after the first.
    #[test]
    fn byte_identical_bodies_are_ignored() {
        let mut room = mirror();
        assert_eq!(room.receive(vec![app(None, 1)], [7; 32]), 1);
        assert_eq!(room.receive(vec![app(None, 1)], [7; 32]), 0);
        assert_eq!(room.receive(vec![app(None, 1)], [8; 32]), 1);
        for n in 0..RECENT_BODIES {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(n as u64 + 1000).to_be_bytes());
            room.receive(vec![], hash);
        }
        assert_eq!(
            room.receive(vec![app(None, 1)], [7; 32]),
            1,
            "only the last {RECENT_BODIES} bodies are remembered"
        );
    }

    fn commit(hub_seq: u64, message: &[u8]) -> ReceivedItem {
        ReceivedItem {
            hub_seq: Some(hub_seq),
            ts_ms: 10,
            epoch: 1,
            body: ItemBody::Commit {
                message: message.to_vec(),
            },
        }
    }

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// MIMI.md §6.6: the hub's notify brought the joiner's external Commit before the edge
    /// recorded the join: the client receives from that Commit on (its own echo and whatever
    /// followed), nothing before it.
    #[test]
    fn mimi_6_6_external_joiner_receives_from_its_commit_when_it_came_first() {
        let mut room = mirror();
        let cathy = client("cathy");
        room.receive(
            vec![app(Some(1), 1), commit(2, b"join"), app(Some(3), 3)],
            [1; 32],
        );
        assert!(room.join(cathy.clone(), &sha256(b"join")));
        let items = room.items_after(0).to_vec();
        assert!(!room.visible_to(&items[0], &cathy), "before its Commit");
        assert!(room.visible_to(&items[1], &cathy), "its own Commit");
        assert!(room.visible_to(&items[2], &cathy));
        assert_eq!(room.members(), vec![cathy.clone()]);
        assert!(!room.join(cathy, &sha256(b"join")), "joins once");
    }

    /// MIMI.md §6.6: the join was recorded before the notify with the Commit arrived: the client
    /// receives from the next item on, and nothing already held.
    #[test]
    fn mimi_6_6_external_joiner_receives_from_the_next_item_when_its_commit_is_to_come() {
        let mut room = mirror();
        let cathy = client("cathy");
        room.receive(vec![app(Some(1), 1)], [1; 32]);
        assert!(room.join(cathy.clone(), &sha256(b"join")));
        room.receive(vec![commit(2, b"join"), app(Some(3), 3)], [2; 32]);
        let items = room.items_after(0).to_vec();
        assert!(!room.visible_to(&items[0], &cathy));
        assert!(room.visible_to(&items[1], &cathy));
        assert!(room.visible_to(&items[2], &cathy));
        let snapshot = postcard::to_stdvec(&room).unwrap();
        let restored: MirrorRoom = postcard::from_bytes(&snapshot).unwrap();
        assert_eq!(restored, room);
    }

    /// Found by the simulator: a mirror created at the follower's (later) time of the first
    /// notify used to raise the first items' times above the hub's.
    #[test]
    fn mirrored_items_keep_the_hubs_times() {
        let mut room = mirror();
        let mut early = welcome(1, vec![client("bob")]);
        early.ts_ms = 3;
        room.receive(vec![early], [1; 32]);
        assert_eq!(room.items_after(0)[0].ts_ms, 3);
    }

    #[test]
    fn a_welcome_opens_delivery_and_acks_trim() {
        let mut room = mirror();
        let bob = client("bob");
        room.receive(vec![app(Some(1), 1)], [1; 32]);
        room.receive(
            vec![welcome(2, vec![bob.clone()]), app(Some(3), 3)],
            [2; 32],
        );
        let items = room.items_after(0).to_vec();
        assert!(!room.visible_to(&items[0], &bob), "before its Welcome");
        assert!(room.visible_to(&items[1], &bob));
        room.ack(&bob, 2);
        assert_eq!(room.acked(&bob), 2);
        assert_eq!(room.trim(100, 0), 2);
        assert_eq!(room.items_after(0).len(), 1);
        let snapshot = postcard::to_stdvec(&room).unwrap();
        let restored: MirrorRoom = postcard::from_bytes(&snapshot).unwrap();
        assert_eq!(restored, room);
    }
}
