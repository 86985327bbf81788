//! `RoomCore`: the sans-IO core of a room actor (STYLE.md P1, P3): which local client push
//! streams are attached to the room and how far each has been sent.
//!
//! Inputs: `attach` (a client's stream wants the room from its acknowledged cursor), `detach`,
//! and `on_applied` (the room log grew). Output: `Push` batches, in log order per client, which
//! the actor shell hands to the streams. The core never skips an item and never sends one twice
//! on the same attachment: `sent_up_to` only moves forward, past items that were pushed or that
//! the client is not to see. A client whose stream is full is detached by the shell; it
//! reattaches from its acknowledged cursor, and the client library drops the duplicates by
//! (room, seq) (DESIGN.md §4).

use std::collections::BTreeMap;

use crate::ids::ClientId;
use crate::room::log::{ItemBody, LogItem};
use crate::room::mirror::MirrorRoom;
use crate::room::state::RoomState;

/// What the core needs to read from the replicated room state.
pub trait RoomView {
    fn last_seq(&self) -> u64;
    fn items_after(&self, after: u64) -> &[LogItem];
    fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool;
    /// The client's acknowledged cursor (0 if none).
    fn acked(&self, client: &ClientId) -> u64;
    /// Clients that are MLS members now.
    fn members(&self) -> Vec<ClientId>;
}

/// Items to push to one client's stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub client: ClientId,
    pub items: Vec<LogItem>,
}

#[derive(Debug, Default)]
pub struct RoomCore {
    /// Attached client -> highest seq already considered for it.
    sent_up_to: BTreeMap<ClientId, u64>,
    /// Highest seq `on_applied` has looked at (for Welcomes to clients not attached yet);
    /// `None` until the first look.
    seen_up_to: Option<u64>,
}

impl RoomCore {
    pub fn is_attached(&self, client: &ClientId) -> bool {
        self.sent_up_to.contains_key(client)
    }

    pub fn attached(&self) -> usize {
        self.sent_up_to.len()
    }

    pub fn attached_clients(&self) -> impl Iterator<Item = &ClientId> {
        self.sent_up_to.keys()
    }

    /// Attaches (or re-attaches) `client` from `cursor` (everything up to it was processed)
    /// and returns its backlog. `cursor` is clamped to the log, so a cursor from the future
    /// cannot make the client miss items that will get those sequence numbers.
    pub fn attach(&mut self, client: ClientId, cursor: u64, view: &impl RoomView) -> Option<Push> {
        let from = cursor.min(view.last_seq());
        self.sent_up_to.insert(client.clone(), from);
        self.collect(&client, view)
    }

    pub fn detach(&mut self, client: &ClientId) {
        self.sent_up_to.remove(client);
    }

    /// The log grew: everything new that each attached client is to see.
    ///
    /// Clients with a stream on this node (`connected`) that are not attached yet are attached
    /// when they enter the room: on the actor's first look, every current member (the creator
    /// of a new room, or members of a room whose actor restarted after idling); later, the
    /// clients a new Welcome addresses, from just before their Welcome. Either resumes from the
    /// client's acknowledged cursor if that is further along.
    pub fn on_applied(
        &mut self,
        view: &impl RoomView,
        connected: impl Fn(&ClientId) -> bool,
    ) -> Vec<Push> {
        let mut newcomers: Vec<(ClientId, u64)> = Vec::new();
        if self.seen_up_to.is_none() {
            newcomers.extend(view.members().into_iter().map(|client| {
                let from = view.acked(&client);
                (client, from)
            }));
        }
        newcomers.extend(
            view.items_after(self.seen_up_to.unwrap_or(0))
                .iter()
                .filter_map(|item| match &item.body {
                    ItemBody::Welcome { to, .. } => Some((to, item.seq)),
                    _ => None,
                })
                .flat_map(|(to, seq)| {
                    to.iter()
                        .map(move |client| (client.clone(), (seq - 1).max(view.acked(client))))
                }),
        );
        for (client, from) in newcomers {
            if connected(&client) {
                self.sent_up_to.entry(client).or_insert(from);
            }
        }
        self.seen_up_to = Some(view.last_seq());
        let clients: Vec<ClientId> = self.sent_up_to.keys().cloned().collect();
        clients
            .into_iter()
            .filter_map(|client| self.collect(&client, view))
            .collect()
    }

    fn collect(&mut self, client: &ClientId, view: &impl RoomView) -> Option<Push> {
        let sent = self.sent_up_to.get_mut(client)?;
        let items: Vec<LogItem> = view
            .items_after(*sent)
            .iter()
            .filter(|item| view.visible_to(item, client))
            .cloned()
            .collect();
        *sent = view.last_seq();
        (!items.is_empty()).then(|| Push {
            client: client.clone(),
            items,
        })
    }
}

impl RoomView for RoomState {
    fn last_seq(&self) -> u64 {
        RoomState::last_seq(self)
    }
    fn items_after(&self, after: u64) -> &[LogItem] {
        RoomState::items_after(self, after)
    }
    fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool {
        RoomState::visible_to(self, item, client)
    }
    fn acked(&self, client: &ClientId) -> u64 {
        RoomState::acked(self, client)
    }
    fn members(&self) -> Vec<ClientId> {
        RoomState::members(self)
    }
}

/// A room as its actor sees it: hosted here (hub) or mirrored from its hub (follower).
#[derive(Clone, Copy)]
pub enum RoomRef<'a> {
    Hosted(&'a RoomState),
    Mirrored(&'a MirrorRoom),
}

impl RoomView for RoomRef<'_> {
    fn last_seq(&self) -> u64 {
        match self {
            RoomRef::Hosted(room) => room.last_seq(),
            RoomRef::Mirrored(room) => room.last_seq(),
        }
    }
    fn items_after(&self, after: u64) -> &[LogItem] {
        match self {
            RoomRef::Hosted(room) => room.items_after(after),
            RoomRef::Mirrored(room) => room.items_after(after),
        }
    }
    fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool {
        match self {
            RoomRef::Hosted(room) => room.visible_to(item, client),
            RoomRef::Mirrored(room) => room.visible_to(item, client),
        }
    }
    fn acked(&self, client: &ClientId) -> u64 {
        match self {
            RoomRef::Hosted(room) => room.acked(client),
            RoomRef::Mirrored(room) => room.acked(client),
        }
    }
    fn members(&self) -> Vec<ClientId> {
        match self {
            RoomRef::Hosted(room) => room.members(),
            RoomRef::Mirrored(room) => room.members(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log where every client sees every item except those listed as hidden.
    struct FakeLog {
        items: Vec<LogItem>,
        hidden: Vec<(ClientId, u64)>,
        members: Vec<ClientId>,
    }

    impl FakeLog {
        fn push(&mut self) {
            let seq = self.items.len() as u64 + 1;
            self.items.push(LogItem {
                seq,
                ts_ms: seq,
                epoch: 1,
                body: ItemBody::Application {
                    message: vec![seq as u8],
                },
            });
        }
    }

    impl RoomView for FakeLog {
        fn last_seq(&self) -> u64 {
            self.items.len() as u64
        }
        fn items_after(&self, after: u64) -> &[LogItem] {
            &self.items[(after as usize).min(self.items.len())..]
        }
        fn visible_to(&self, item: &LogItem, client: &ClientId) -> bool {
            !self.hidden.contains(&(client.clone(), item.seq))
        }
        fn acked(&self, _client: &ClientId) -> u64 {
            0
        }
        fn members(&self) -> Vec<ClientId> {
            self.members.clone()
        }
    }

    fn client(name: &str) -> ClientId {
        ClientId::parse(&format!("mimi://localhost/d/{name}/phone")).unwrap()
    }

    fn seqs(push: &Push) -> Vec<u64> {
        push.items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn attach_sends_backlog_after_cursor_then_only_new_items() {
        let mut log = FakeLog {
            items: vec![],
            hidden: vec![],
            members: vec![],
        };
        for _ in 0..5 {
            log.push();
        }
        let mut core = RoomCore::default();
        let backlog = core.attach(client("alice"), 2, &log).unwrap();
        assert_eq!(seqs(&backlog), vec![3, 4, 5]);
        assert!(
            core.on_applied(&log, |_| false).is_empty(),
            "nothing new, nothing sent"
        );
        log.push();
        log.push();
        let pushes = core.on_applied(&log, |_| false);
        assert_eq!(pushes.len(), 1);
        assert_eq!(seqs(&pushes[0]), vec![6, 7]);
    }

    #[test]
    fn invisible_items_are_skipped_not_held_back() {
        let mut log = FakeLog {
            items: vec![],
            hidden: vec![(client("bob"), 2)],
            members: vec![],
        };
        for _ in 0..3 {
            log.push();
        }
        let mut core = RoomCore::default();
        assert_eq!(
            seqs(&core.attach(client("bob"), 0, &log).unwrap()),
            vec![1, 3]
        );
        assert_eq!(
            seqs(&core.attach(client("alice"), 0, &log).unwrap()),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn future_cursor_is_clamped_so_nothing_is_missed() {
        let mut log = FakeLog {
            items: vec![],
            hidden: vec![],
            members: vec![],
        };
        log.push();
        let mut core = RoomCore::default();
        assert!(core.attach(client("alice"), 99, &log).is_none());
        log.push();
        assert_eq!(seqs(&core.on_applied(&log, |_| false)[0]), vec![2]);
    }

    #[test]
    fn detached_clients_get_nothing_and_reattach_from_their_cursor() {
        let mut log = FakeLog {
            items: vec![],
            hidden: vec![],
            members: vec![],
        };
        log.push();
        let mut core = RoomCore::default();
        core.attach(client("alice"), 0, &log);
        core.detach(&client("alice"));
        log.push();
        assert!(core.on_applied(&log, |_| false).is_empty());
        assert_eq!(
            seqs(&core.attach(client("alice"), 1, &log).unwrap()),
            vec![2]
        );
        assert_eq!(core.attached(), 1);
    }

    #[test]
    fn connected_client_named_by_a_new_welcome_is_attached_from_the_welcome() {
        let mut log = FakeLog {
            items: vec![],
            hidden: vec![],
            members: vec![],
        };
        log.push();
        let mut core = RoomCore::default();
        assert!(core.on_applied(&log, |_| true).is_empty());
        log.push(); // the Commit that adds bob (seq 2)
        log.items.push(LogItem {
            seq: 3,
            ts_ms: 3,
            epoch: 2,
            body: ItemBody::Welcome {
                welcome: vec![],
                ratchet_tree: vec![],
                to: vec![client("bob"), client("carol")],
            },
        });
        let bob = client("bob");
        let pushes = core.on_applied(&log, |c| *c == bob);
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].client, bob);
        assert_eq!(seqs(&pushes[0]), vec![3]);
        assert!(
            !core.is_attached(&client("carol")),
            "carol has no stream here"
        );
    }

    #[test]
    fn first_look_attaches_connected_members_such_as_the_creator() {
        let mut log = FakeLog {
            items: vec![],
            hidden: vec![],
            members: vec![client("alice"), client("bob")],
        };
        let mut core = RoomCore::default();
        let alice = client("alice");
        assert!(core.on_applied(&log, |c| *c == alice).is_empty());
        assert!(core.is_attached(&alice));
        assert!(!core.is_attached(&client("bob")), "bob has no stream here");
        log.push();
        let pushes = core.on_applied(&log, |_| true);
        assert_eq!(pushes.len(), 1, "only the first look attaches members");
        assert_eq!(seqs(&pushes[0]), vec![1]);
    }
}
