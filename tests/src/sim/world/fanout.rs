//! Federation in the simulation (MIMI.md §5.4; ARCHITECTURE.md "Federation"): the hub's
//! fan-out to the follower provider and the follower's side of notify.
//!
//! Hub side, as the room actor does it: the hub replica that leads owns a production
//! `FanoutCore` (started fresh, from the durable cursors of its applied room state, whenever it
//! becomes leader; dropped when it stops leading or crashes). It polls the core after every
//! apply, after each 201 and when a backoff ends; each batch goes out as one notify through the
//! simulated network to the follower replica the hub believes leads. A notify is settled once:
//! by the first answer that arrives (201, 503 from a replica that does not lead or is busy, or
//! a failure such as a crash or a leadership change), or by a timeout. A 201 calls
//! `on_delivered` and, 50 ms later (as `FANOUT_RECORD_DELAY` in `actors/src/actor.rs`), the
//! cursors `take_unrecorded` gives are proposed as `Command::FanoutDelivered` through the hub's
//! own Raft; anything else calls `on_failed` and retries after the delay it returns.
//!
//! Follower side, as the node edge does it (`node/src/peering.rs` `received_items`): the
//! notify becomes `Command::FanoutReceived` with every item's hub seq, the hub's time, the
//! epoch the wire tells (a Welcome takes the epoch after a Commit in the same batch, else 0),
//! Welcomes addressed to the follower's clients they add (the edge resolves KeyPackageRefs
//! through its directory; the simulation reads them from the hub's item) and the body hash of
//! the wire body (hub seqs travel in a header, so they are not hashed). Each arrival of a
//! notify, duplicates included, is a request of its own to the follower replica it reached,
//! answered 201 only when its entry is committed and applied there.

use std::collections::BTreeMap;

use mimid_actors::command::{Command, ReceivedItem};
use mimid_actors::room::fanout::{Batch, FanoutCore};
use mimid_actors::room::log::{ItemBody, LogItem};
use mimid_actors::shard::ApplyOutput;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{index_of, is_hub, next_in_group, Ev, World, NODES};
use crate::sim::checker::ViolationKind;
use crate::sim::replica::{Answer, Outbox, RequestId};
use crate::sim::trace::Event;
use crate::sim::SIM_EPOCH_MS;

pub(super) type NotifyId = u64;

/// The fan-out of one hub replica while it leads.
pub(super) struct HubFanout {
    core: FanoutCore,
    /// Tells this core's timers and notifies from those of an earlier one.
    generation: u64,
    record_scheduled: bool,
    /// The notify in flight per follower provider.
    in_flight: BTreeMap<String, NotifyId>,
}

/// A notify the hub sent.
pub(super) struct NotifySent {
    hub: usize,
    generation: u64,
    provider: String,
    command: Command,
    items: usize,
    /// Hub seq of its last item.
    last: u64,
    /// Settled by an answer or a timeout; later answers are ignored.
    settled: bool,
}

/// One arrival of a notify at a follower replica, proposed there as a request.
pub(super) struct NotifyArrival {
    notify: NotifyId,
    pub(super) answered: bool,
}

/// What the hub learns about a notify.
#[derive(Clone, Copy, Debug)]
pub(super) enum NotifyStatus {
    /// 201: the items are durable and applied at the follower.
    Created,
    /// 503 from a follower replica that does not lead; `leader` is its hint (0 if none).
    NotLeader { leader: u64 },
    /// 503 with `Retry-After`: the replica's inbox is full.
    Busy { retry_after_ms: u64 },
    /// The outcome is unknown (the replica crashed or stopped leading first) or the notify
    /// was refused.
    Failed,
}

impl World<'_> {
    /// Keeps hub replica `node`'s fan-out in step with its role: a fresh core when it starts
    /// leading, none when it stops; polls the core when something was applied.
    pub(super) fn fanout_after(&mut self, node: usize, applied: bool) {
        let leads = self.replicas[node].is_leader();
        match (leads, self.fanouts[node].is_some()) {
            (true, false) => {
                let generation = self.next_generation;
                self.next_generation += 1;
                self.fanouts[node] = Some(HubFanout {
                    core: FanoutCore::default(),
                    generation,
                    record_scheduled: false,
                    in_flight: BTreeMap::new(),
                });
                self.coverage.fanout_cores_started += 1;
                self.trace.record(
                    self.now,
                    Event::FanoutCore {
                        node: node as u64 + 1,
                        generation,
                    },
                );
                self.pump(node);
            }
            (false, true) => self.fanouts[node] = None,
            (true, true) if applied => self.pump(node),
            _ => {}
        }
    }

    pub(super) fn fanout_generation(&self, node: usize) -> Option<u64> {
        self.fanouts
            .get(node)
            .and_then(|fanout| fanout.as_ref())
            .map(|fanout| fanout.generation)
    }

    /// Sends what hub replica `node`'s fan-out core says is due.
    pub(super) fn pump(&mut self, node: usize) {
        let now_ms = self.clock_ms(node);
        let Some(fanout) = self.fanouts[node].as_mut() else {
            return;
        };
        let limits = &self.limits;
        let batches = self.replicas[node]
            .with_room(&self.room, |state| fanout.core.poll(state, now_ms, limits))
            .unwrap_or_default();
        let generation = fanout.generation;
        for batch in batches {
            self.send_notify(node, generation, batch);
        }
    }

    fn send_notify(&mut self, hub: usize, generation: u64, batch: Batch) {
        let Some(last) = batch.items.last().map(|item| item.seq) else {
            return;
        };
        let notify = self.next_notify;
        self.next_notify += 1;
        let to = self.follower_guess;
        self.trace.record(
            self.now,
            Event::Notify {
                hub: hub as u64 + 1,
                to: to as u64 + 1,
                notify,
                items: batch.items.len(),
                last,
            },
        );
        self.coverage.notifies_sent += 1;
        let command = Command::FanoutReceived {
            room: self.room.clone(),
            items: received_items(&batch.items, &batch.provider),
            body_hash: notify_body_hash(&batch.items),
        };
        if let Some(fanout) = self.fanouts[hub].as_mut() {
            fanout.in_flight.insert(batch.provider.clone(), notify);
        }
        self.notifies.insert(
            notify,
            NotifySent {
                hub,
                generation,
                provider: batch.provider,
                command,
                items: batch.items.len(),
                last,
                settled: false,
            },
        );
        self.transmit(hub, to, || Ev::NotifyArrives(to, notify));
        self.schedule(NOTIFY_TIMEOUT_MS, Ev::NotifyTimeout(notify));
    }

    /// A notify reached follower replica `node`: proposed there like any request.
    pub(super) fn notify_arrives(&mut self, node: usize, notify: NotifyId) {
        let Some(sent) = self.notifies.get(&notify) else {
            return;
        };
        let command = sent.command.clone();
        self.reached_removed(node);
        let request = self.next_request;
        self.next_request += 1;
        self.notify_requests.insert(
            request,
            NotifyArrival {
                notify,
                answered: false,
            },
        );
        let stamp_ms = self.clock_ms(node);
        let mut out = Outbox::default();
        self.replicas[node].on_request(
            request,
            command,
            stamp_ms,
            &mut self.trace,
            self.now,
            &mut out,
        );
        self.dispatch(node, out);
    }

    /// Follower replica `node` answered a notify arrival: the answer goes back to the hub
    /// replica that sent the notify, through the network.
    pub(super) fn notify_answered(&mut self, node: usize, request: RequestId, answer: Answer) {
        let Some(arrival) = self.notify_requests.get_mut(&request) else {
            return;
        };
        if arrival.answered {
            self.checker.violation(
                ViolationKind::UnexpectedVerdict,
                format!("notify request {request} was answered twice"),
            );
            return;
        }
        arrival.answered = true;
        let notify = arrival.notify;
        let Some(sent) = self.notifies.get(&notify) else {
            return;
        };
        let (hub, items) = (sent.hub, sent.items);
        let status = match answer {
            Answer::Applied(ApplyOutput::FanoutReceived { appended }) => {
                self.coverage.notified_items_deduplicated += items.saturating_sub(appended) as u64;
                NotifyStatus::Created
            }
            Answer::Applied(other) => {
                self.checker.violation(
                    ViolationKind::UnexpectedVerdict,
                    format!("the follower refused notify {notify}: {other:?}"),
                );
                NotifyStatus::Failed
            }
            Answer::NotLeader { leader } => NotifyStatus::NotLeader { leader },
            Answer::Busy => NotifyStatus::Busy {
                retry_after_ms: self.rng.gen_range(100..=1_000),
            },
            Answer::Unavailable | Answer::Dropped | Answer::Crashed => NotifyStatus::Failed,
        };
        self.transmit(node, hub, || Ev::NotifyAnswer(notify, status));
    }

    /// An answer to a notify reached the hub.
    pub(super) fn notify_answer(&mut self, notify: NotifyId, status: NotifyStatus) {
        let Some(sent) = self.notifies.get(&notify) else {
            return;
        };
        let (last, settled) = (sent.last, sent.settled);
        let outcome = match status {
            NotifyStatus::Created => "created",
            NotifyStatus::NotLeader { .. } => "not-leader",
            NotifyStatus::Busy { .. } => "busy",
            NotifyStatus::Failed => "failed",
        };
        self.trace
            .record(self.now, Event::NotifyOutcome { notify, outcome });
        if let NotifyStatus::Created = status {
            // Every 201 is the follower's promise, however late it arrives.
            self.checker.on_notify_acked(last);
        }
        if let NotifyStatus::NotLeader { leader } = status {
            if let Some(node) = index_of(leader).filter(|&node| !is_hub(node)) {
                self.follower_guess = node;
            } else if !settled {
                self.next_follower_guess();
            }
        } else if !settled && !matches!(status, NotifyStatus::Created) {
            self.next_follower_guess();
        }
        if !settled {
            self.settle_notify(notify, status);
        }
    }

    pub(super) fn notify_timeout(&mut self, notify: NotifyId) {
        if self.notifies.get(&notify).is_none_or(|sent| sent.settled) {
            return;
        }
        self.trace.record(
            self.now,
            Event::NotifyOutcome {
                notify,
                outcome: "timeout",
            },
        );
        self.next_follower_guess();
        self.settle_notify(notify, NotifyStatus::Failed);
    }

    fn next_follower_guess(&mut self) {
        self.follower_guess = next_in_group(self.follower_guess);
    }

    /// The notify's outcome, for the fan-out core that sent it if it still runs.
    fn settle_notify(&mut self, notify: NotifyId, status: NotifyStatus) {
        let Some(sent) = self.notifies.get_mut(&notify) else {
            return;
        };
        sent.settled = true;
        let (hub, generation, provider) = (sent.hub, sent.generation, sent.provider.clone());
        let now_ms = self.clock_ms(hub);
        let Some(fanout) = self.fanouts[hub]
            .as_mut()
            .filter(|fanout| fanout.generation == generation)
        else {
            return;
        };
        if fanout.in_flight.get(&provider) != Some(&notify) {
            return;
        }
        fanout.in_flight.remove(&provider);
        match status {
            NotifyStatus::Created => {
                self.coverage.notifies_delivered += 1;
                let record = fanout.core.on_delivered(&provider).is_some()
                    && !std::mem::replace(&mut fanout.record_scheduled, true);
                if record {
                    self.schedule(RECORD_DELAY_MS, Ev::RecordCursors(hub, generation));
                }
                self.pump(hub);
            }
            NotifyStatus::NotLeader { .. } | NotifyStatus::Busy { .. } | NotifyStatus::Failed => {
                self.coverage.notifies_failed += 1;
                let retry_after_ms = match status {
                    NotifyStatus::Busy { retry_after_ms } => Some(retry_after_ms),
                    _ => None,
                };
                let delay = fanout
                    .core
                    .on_failed(&provider, now_ms, retry_after_ms, &self.limits);
                self.schedule(delay, Ev::FanoutRetry(hub, generation));
            }
        }
    }

    /// Proposes the cursors acknowledged since the last time through the hub's Raft, one entry
    /// per follower. A record lost to a leadership change only means a resend later.
    pub(super) fn record_cursors(&mut self, node: usize, generation: u64) {
        let Some(fanout) = self.fanouts[node]
            .as_mut()
            .filter(|fanout| fanout.generation == generation)
        else {
            return;
        };
        fanout.record_scheduled = false;
        for (provider, seq) in fanout.core.take_unrecorded() {
            let request = self.next_request;
            self.next_request += 1;
            self.cursor_records.insert(request);
            let stamp_ms = self.clock_ms(node);
            let mut out = Outbox::default();
            self.replicas[node].on_request(
                request,
                Command::FanoutDelivered {
                    room: self.room.clone(),
                    provider,
                    seq,
                },
                stamp_ms,
                &mut self.trace,
                self.now,
                &mut out,
            );
            self.dispatch(node, out);
        }
    }

    /// Node `node`'s clock (with its skew), in ms since the UNIX epoch.
    fn clock_ms(&self, node: usize) -> u64 {
        debug_assert!(node < NODES);
        (SIM_EPOCH_MS + self.now).saturating_add_signed(self.skew_ms[node])
    }
}

/// The items of a batch as the follower's edge decodes them from the notify (MIMI.md §5.4,
/// `node/src/peering.rs` `received_items`): numbered by hub seq, Welcomes routed to the clients
/// of `provider` they add.
fn received_items(items: &[LogItem], provider: &str) -> Vec<ReceivedItem> {
    let mut epoch_after_commit = None;
    items
        .iter()
        .map(|item| {
            let (epoch, body) = match &item.body {
                ItemBody::Commit { .. } => {
                    epoch_after_commit = Some(item.epoch + 1);
                    (item.epoch, item.body.clone())
                }
                ItemBody::Welcome {
                    welcome,
                    ratchet_tree,
                    to,
                } => (
                    epoch_after_commit.unwrap_or(0),
                    ItemBody::Welcome {
                        welcome: welcome.clone(),
                        ratchet_tree: ratchet_tree.clone(),
                        to: to
                            .iter()
                            .filter(|client| client.domain() == provider)
                            .cloned()
                            .collect(),
                    },
                ),
                ItemBody::Application { .. } | ItemBody::Proposals { .. } => {
                    (item.epoch, item.body.clone())
                }
            };
            ReceivedItem {
                hub_seq: Some(item.seq),
                ts_ms: item.ts_ms,
                epoch,
                body,
            }
        })
        .collect()
}

/// SHA-256 over what the notify body carries (hub time and MLS bytes of each item; not the
/// hub seqs, which travel in `mimi-hub-seqs`, nor a Welcome's recipients, which the follower
/// works out itself).
fn notify_body_hash(items: &[LogItem]) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    for item in items {
        part(&item.ts_ms.to_be_bytes());
        match &item.body {
            ItemBody::Commit { message } | ItemBody::Application { message } => part(message),
            ItemBody::Welcome {
                welcome,
                ratchet_tree,
                ..
            } => {
                part(welcome);
                part(ratchet_tree);
            }
            ItemBody::Proposals { messages } => {
                for message in messages {
                    part(message);
                }
            }
        }
    }
    hash.finalize().into()
}

/// How long the hub waits for a notify's answer before it counts as failed.
const NOTIFY_TIMEOUT_MS: u64 = 1_500;
/// Delay between a 201 and recording the cursor through Raft (`FANOUT_RECORD_DELAY`).
const RECORD_DELAY_MS: u64 = 50;

#[cfg(test)]
mod tests {
    use mimid_actors::ids::ClientId;

    use super::*;

    fn item(seq: u64, epoch: u64, body: ItemBody) -> LogItem {
        LogItem {
            seq,
            ts_ms: 100 + seq,
            epoch,
            body,
        }
    }

    fn client(uri: &str) -> ClientId {
        ClientId::parse(uri).unwrap()
    }

    fn welcome(to: Vec<ClientId>) -> ItemBody {
        ItemBody::Welcome {
            welcome: vec![2],
            ratchet_tree: vec![3],
            to,
        }
    }

    /// As `node/src/peering.rs` decodes a notify: every item numbered by hub seq, a Welcome
    /// routed to the follower's own clients and given the epoch after the batch's Commit.
    #[test]
    fn mimi_5_4_items_are_numbered_and_welcomes_routed_to_the_followers_clients() {
        let bob = client("mimi://b.example/d/bob/laptop");
        let cathy = client("mimi://sim.example/d/cathy/tablet");
        let batch = [
            item(4, 2, ItemBody::Commit { message: vec![1] }),
            item(5, 3, welcome(vec![cathy.clone(), bob.clone()])),
        ];
        let items = received_items(&batch, "b.example");
        assert_eq!(
            items.iter().map(|item| item.hub_seq).collect::<Vec<_>>(),
            vec![Some(4), Some(5)]
        );
        assert_eq!(items[1].epoch, 3);
        assert_eq!(items[1].body, welcome(vec![bob.clone()]));
        assert_eq!(items[0].ts_ms, 104);
        let alone = received_items(&batch[1..], "b.example");
        assert_eq!(
            alone[0].epoch, 0,
            "no Commit in the batch: the wire has no epoch"
        );
    }

    /// The body hash covers what the notify body carries: not hub seqs (a header), not a
    /// Welcome's recipients (the follower works them out); a different batching differs.
    #[test]
    fn notify_body_hash_covers_the_wire_body_only() {
        let a = item(4, 2, ItemBody::Application { message: vec![1] });
        let mut renumbered = a.clone();
        renumbered.seq = 9;
        assert_eq!(
            notify_body_hash(std::slice::from_ref(&a)),
            notify_body_hash(&[renumbered])
        );
        let w = item(5, 3, welcome(vec![]));
        let routed = item(5, 3, welcome(vec![client("mimi://b.example/d/bob/laptop")]));
        assert_eq!(
            notify_body_hash(std::slice::from_ref(&w)),
            notify_body_hash(&[routed])
        );
        assert_ne!(
            notify_body_hash(std::slice::from_ref(&a)),
            notify_body_hash(&[a, w]),
            "another batching is another body"
        );
    }
}
