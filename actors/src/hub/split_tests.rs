//! Hub-level tests of room moves and shard splits on a single-node cluster (a real
//! `mimid_cluster::Cluster` in a temporary directory, the real hub and room actors), with real
//! openmls clients: a room with members moves while its members keep sending, and every
//! member sees every item once, in order (MIMI.md §5.3, protocol-06 §5.3 submitMessage:
//! the hub orders a room's messages; issue 9 build item 3: a shard splits).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mimid_cluster::{Cluster, ClusterConfig};
use tokio::sync::mpsc;

use super::*;
use crate::actor::{ActorLimits, Delivery, Federation, NotifyError};
use crate::command::{SubmitVerdict, Submitter, UpdateVerdict};
use crate::hub::HubConfig;
use crate::ids::ClientId;
use crate::residency::Layout;
use crate::room::fanout::FanoutLimits;
use crate::room::log::LogItem;
use crate::room::tests::TestClient as Client;
use crate::shard::{ShardMachine, Shards};

const ALICE: &str = "mimi://a.example/d/alice/phone";
const BOB: &str = "mimi://a.example/d/bob/laptop";
/// How long a test waits for something asynchronous (polled, never slept on).
const DEADLINE: Duration = Duration::from_secs(20);

/// Every client of these tests is local: nothing is ever sent to a follower provider.
struct NoFollowers;

impl Federation for NoFollowers {
    fn notify(
        &self,
        _: &RoomId,
        provider: &str,
        _: Vec<LogItem>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NotifyError>> + Send>> {
        let reason = format!("no follower provider in these tests ({provider})");
        Box::pin(async move {
            Err(NotifyError {
                reason,
                retry_after: None,
            })
        })
    }
}

/// A one-node cluster with `layout`'s shards and a hub over it.
struct Node {
    hub: Option<Hub>,
    cluster: Option<Cluster<ShardMachine>>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(layout: Layout) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let shards = Shards::with_layout(layout);
        let mut config = ClusterConfig::new(1, dir.path());
        config.shards = shards.count();
        config.tick_interval = Duration::from_millis(20);
        let factory = {
            let shards = shards.clone();
            move |shard| shards.machine(shard)
        };
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(config, factory))
            .await
            .unwrap()
            .unwrap();
        let clock: crate::hub::Clock = Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        });
        let hub = Hub::start(
            cluster.handle(),
            shards,
            clock,
            HubConfig {
                limits: ActorLimits {
                    room_mailbox: 64,
                    stream_queue: 4096,
                    idle_room: Duration::from_secs(60),
                    fanout: FanoutLimits {
                        batch_items: 64,
                        retry_initial_ms: 100,
                        retry_max_ms: 1000,
                    },
                },
                arbiters: 2,
                housekeeping: Duration::from_secs(3600),
                log_retention: Duration::from_secs(3600),
                federation: Arc::new(NoFollowers),
                router: None,
            },
        )
        .unwrap();
        let node = Node {
            hub: Some(hub),
            cluster: Some(cluster),
            _dir: dir,
        };
        let hub = node.hub();
        poll(|| (0..hub.shards().count()).all(|shard| hub.leads(shard))).await;
        node
    }

    fn hub(&self) -> &Hub {
        self.hub.as_ref().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown();
        }
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown();
        }
    }
}

/// Polls `done` until it holds, failing the test after [`DEADLINE`].
async fn poll(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 2 hashed shards (0, 1) and 2 split shards (2, 3).
fn split_layout() -> Layout {
    Layout::new(2, [], 2).unwrap()
}

/// A room id whose home is `shard` (of 2 hashed shards), `n`-th of them.
fn room_in(shard: ShardId, n: usize) -> RoomId {
    let layout = split_layout();
    (0..)
        .map(|i| RoomId::parse(&format!("mimi://a.example/r/room-{i}")).unwrap())
        .filter(|room| layout.home(room.as_bytes()) == shard)
        .nth(n)
        .unwrap()
}

/// Alice's room `room` with Bob as a member, Bob joined from the Welcome his push stream
/// brought; Bob's stream is returned for more, with the Welcome's seq.
async fn room_with_bob(
    hub: &Hub,
    room: &RoomId,
    alice: &mut Client,
    bob: &mut Client,
) -> (mpsc::Receiver<Delivery>, u64) {
    let mut stream = hub.open_stream(&bob.id);
    create(hub, room, alice).await;
    let add = alice.add(&[&*bob]);
    let verdict = hub
        .update(room.clone(), Submitter::Client(alice.id.clone()), add)
        .await
        .unwrap();
    assert!(
        matches!(verdict, UpdateVerdict::Success { .. }),
        "{verdict:?}"
    );
    alice.accepted();
    let welcome = next(&mut stream).await;
    bob.join(&welcome.item);
    (stream, welcome.item.seq)
}

async fn create(hub: &Hub, room: &RoomId, alice: &mut Client) {
    let (group_info, tree) = alice.create_group();
    hub.create_room(room.clone(), alice.id.clone(), group_info, tree, None)
        .await
        .unwrap()
        .unwrap();
}

/// Alice sends `text` in `room`: the seq the hub gave it.
async fn send(hub: &Hub, room: &RoomId, alice: &mut Client, text: &str) -> u64 {
    let message = alice.send(text.as_bytes());
    match submit(hub, room, &alice.id, message).await {
        SubmitVerdict::Accepted { seq, .. } => seq,
        other => panic!("{text:?} not accepted: {other:?}"),
    }
}

async fn submit(hub: &Hub, room: &RoomId, sender: &ClientId, message: Vec<u8>) -> SubmitVerdict {
    hub.submit(
        room.clone(),
        Submitter::Client(sender.clone()),
        sender.user(),
        message,
    )
    .await
    .unwrap()
}

/// The next delivery of a push stream, within [`DEADLINE`].
async fn next(stream: &mut mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(DEADLINE, stream.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("the stream stays open")
}

/// Reads Bob's stream up to `last` (a seq), checking it brings every item once, in order,
/// right after `after`; returns the texts of the application messages.
async fn read_up_to(
    stream: &mut mpsc::Receiver<Delivery>,
    bob: &mut Client,
    room: &RoomId,
    mut after: u64,
    last: u64,
) -> Vec<String> {
    let mut texts = Vec::new();
    while after < last {
        let delivery = next(stream).await;
        assert_eq!(&delivery.room, room);
        assert_eq!(
            delivery.item.seq,
            after + 1,
            "every item once, in order (got {} after {after})",
            delivery.item.seq
        );
        after = delivery.item.seq;
        texts.push(bob.read(&delivery.item));
    }
    texts
}

/// Issue 9 build item 3: a room with messages moves to a split shard and on to another one;
/// after each move a send lands in the room's new shard with the next seq, and Bob's stream
/// brings every item once, in order (protocol-06 §5.3: one order per room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_room_keeps_its_log_and_takes_the_next_message_in_its_new_shard() {
    let node = Node::start(split_layout()).await;
    let hub = node.hub();
    let room = room_in(0, 0);
    let (mut alice, mut bob) = (Client::new(ALICE), Client::new(BOB));
    let (mut stream, welcome_seq) = room_with_bob(hub, &room, &mut alice, &mut bob).await;
    let mut last = 0;
    for text in ["one", "two", "three"] {
        last = send(hub, &room, &mut alice, text).await;
    }
    assert_eq!(last, welcome_seq + 3);
    let texts = read_up_to(&mut stream, &mut bob, &room, welcome_seq, last).await;
    assert_eq!(texts, ["one", "two", "three"]);

    hub.move_room(&room, 2).await.unwrap();
    {
        let shards = hub.shards();
        assert_eq!(
            shards.get(0).read().pin(&room),
            Some(2),
            "the home shard pins it"
        );
        assert_eq!(
            shards.get(0).read().moved_to(&room),
            Some(2),
            "a tombstone in 0"
        );
        assert!(shards.get(0).read().room(&room).is_none());
        let data = shards.get(2).read();
        let state = data.room(&room).expect("the split shard hosts it");
        assert_eq!(state.last_seq(), last, "with its whole log");
    }
    assert_eq!(hub.room_status(&room).await.unwrap().shard, 2);
    assert_eq!(hub.room_shard(&room).await.unwrap(), 2);
    let metrics = hub.metrics();
    assert_eq!(metrics.rooms_moved.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.room_moves_failed.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.room_move_micros.snapshot().count(), 1);

    let four = send(hub, &room, &mut alice, "four").await;
    assert_eq!(four, last + 1, "the next seq, in the new shard");
    assert_eq!(
        hub.shards().get(2).read().room(&room).unwrap().last_seq(),
        four
    );
    let texts = read_up_to(&mut stream, &mut bob, &room, last, four).await;
    assert_eq!(texts, ["four"]);

    // A split shard splits again into another one; the room follows.
    hub.move_room(&room, 3).await.unwrap();
    assert_eq!(hub.shards().get(0).read().pin(&room), Some(3));
    assert_eq!(hub.shards().get(2).read().moved_to(&room), Some(3));
    let five = send(hub, &room, &mut alice, "five").await;
    assert_eq!(five, four + 1);
    let texts = read_up_to(&mut stream, &mut bob, &room, four, five).await;
    assert_eq!(texts, ["five"]);
    // Bob's acknowledgement reaches the room where it is now.
    hub.ack(bob.id.clone(), vec![(room.clone(), five)])
        .await
        .unwrap();
    assert_eq!(
        hub.shards()
            .get(3)
            .read()
            .room(&room)
            .unwrap()
            .acked(&bob.id),
        five
    );

    // Moving it where it is is done already; anywhere but a split shard is refused.
    hub.move_room(&room, 3).await.unwrap();
    let refused = hub.move_room(&room, 1).await.unwrap_err();
    assert!(
        matches!(&refused, HubError::Rejected(reason) if reason.contains("not a split shard")),
        "{refused:?}"
    );
    let unknown = RoomId::parse("mimi://a.example/r/nowhere").unwrap();
    assert_eq!(
        hub.move_room(&unknown, 2).await.unwrap_err(),
        HubError::UnknownRoom
    );
    assert_eq!(hub.metrics().rooms_moved.load(Ordering::Relaxed), 2);
}

/// A split moves about half of a shard's rooms to the split shard with the fewest, picked so
/// that both halves carry about the same load; the next split of the same shard goes to the
/// other split shard. Refusals name their reason and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_moves_about_half_the_rooms_to_the_emptiest_split_shard() {
    let node = Node::start(split_layout()).await;
    let hub = node.hub();
    // Six rooms in shard 0 with 6, 5, 4, 3, 2 and 1 messages.
    let mut creators = std::collections::BTreeMap::new();
    let mut load = std::collections::BTreeMap::new();
    for n in 0..6 {
        let room = room_in(0, n);
        let mut creator = Client::new(ALICE);
        create(hub, &room, &mut creator).await;
        let mut last = 0;
        for i in 0..(6 - n) {
            last = send(hub, &room, &mut creator, &format!("m{i}")).await;
        }
        load.insert(room.clone(), last);
        creators.insert(room, creator);
    }
    let total: u64 = load.values().sum();
    assert_eq!(
        hub.shard_load(0),
        Some(ShardLoad {
            rooms: 6,
            items: total
        })
    );

    let outcome = hub.split_shard(0, None).await.unwrap();
    assert_eq!((outcome.from, outcome.to), (0, 2));
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(outcome.moved.len(), 3);
    let moved: BTreeSet<&RoomId> = outcome.moved.iter().collect();
    let moved_load: u64 = outcome.moved.iter().map(|room| load[room]).sum();
    assert!(
        moved_load.abs_diff(total - moved_load) <= 1,
        "halves of about the same load: {moved_load} moved of {total}"
    );
    for room in load.keys() {
        let at = if moved.contains(room) { 2 } else { 0 };
        assert_eq!(hub.room_shard(room).await.unwrap(), at, "{room}");
        assert!(hub.shards().get(at).read().room(room).is_some(), "{room}");
    }
    assert_eq!(hub.shard_load(0).unwrap().rooms, 3);
    assert_eq!(hub.shard_load(2).unwrap().rooms, 3);
    assert_eq!(hub.metrics().rooms_moved.load(Ordering::Relaxed), 3);
    // Moved and kept rooms take their next message where they are.
    for (room, creator) in creators.iter_mut() {
        let seq = send(hub, room, creator, "after the split").await;
        assert_eq!(seq, load[room] + 1, "{room}");
    }

    // The next split of shard 0 goes to shard 3, now the emptiest; one room of the three.
    let again = hub.split_shard(0, None).await.unwrap();
    assert_eq!((again.to, again.moved.len()), (3, 1));
    // A split shard splits into the other; an explicit count moves at most every room.
    let all = hub.split_shard(2, Some(10)).await.unwrap();
    assert_eq!((all.to, all.moved.len()), (3, 3));
    assert_eq!(hub.shard_load(2).unwrap().rooms, 0);
    let one = hub.split_shard(0, Some(1)).await.unwrap();
    assert_eq!((one.to, one.moved.len()), (2, 1));

    let refused = |result: Result<SplitOutcome, HubError>, what: &str| match result {
        Err(HubError::Rejected(reason)) => assert!(reason.contains(what), "{reason}"),
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };
    refused(hub.split_shard(9, None).await, "unknown shard 9");
    refused(hub.split_shard(0, Some(0)).await, "at least 1");
    refused(hub.split_shard(1, None).await, "no room that can move");
    refused(hub.split_shard(0, None).await, "half of it is none");
    assert_eq!(hub.shard_load(0).unwrap().rooms, 1, "refusals move nothing");
    assert_eq!(hub.metrics().room_moves_failed.load(Ordering::Relaxed), 0);
}

/// Without split shards nothing splits; a residency set's shard never splits, and the only
/// split shard has no other to split into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_are_refused_without_split_shards_and_for_residency_shards() {
    let refused = |result: Result<SplitOutcome, HubError>, what: &str| match result {
        Err(HubError::Rejected(reason)) => assert!(reason.contains(what), "{reason}"),
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };
    {
        let node = Node::start(Layout::hashed(2)).await;
        let hub = node.hub();
        let mut alice = Client::new(ALICE);
        let room = room_in(0, 0);
        create(hub, &room, &mut alice).await;
        let no_split = "no split shards: set cluster.split_shards";
        refused(hub.split_shard(0, None).await, no_split);
        let moved = hub.move_room(&room, 1).await;
        assert_eq!(moved, Err(HubError::Rejected(no_split.into())));
        assert!(hub.shards().get(0).read().room(&room).is_some());
        send(hub, &room, &mut alice, "still here").await;
    }
    let eu = ("eu".to_owned(), BTreeSet::from(["eu".to_owned()]), 1);
    let node = Node::start(Layout::new(2, [eu], 1).unwrap()).await;
    let hub = node.hub();
    refused(hub.split_shard(2, None).await, "residency set \"eu\"");
    refused(hub.split_shard(3, None).await, "the only split shard");
}

/// A coordinator that dies after the freeze leaves its room frozen: the resume task of the
/// source shard's leader finishes the move (adopt, repin, release) within a few seconds, and
/// the room then takes messages in its new shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_left_frozen_is_finished_by_the_resume_task() {
    let node = Node::start(split_layout()).await;
    let hub = node.hub();
    let room = room_in(1, 0);
    let mut alice = Client::new(ALICE);
    create(hub, &room, &mut alice).await;
    let last = send(hub, &room, &mut alice, "before").await;
    let freeze = Command::FreezeRoom {
        room: room.clone(),
        to: 3,
    };
    let frozen = hub.proposer.propose_to(1, freeze).await.unwrap();
    assert!(
        matches!(frozen, ApplyOutput::RoomFrozen(Ok(_))),
        "{frozen:?}"
    );
    assert_eq!(hub.shards().get(1).read().moving_to(&room), Some(3));

    // The coordinator counts the move after the release's answer, so the histogram (observed
    // last) is what says the resume task is done, not the shard's state.
    poll(|| hub.metrics().room_move_micros.snapshot().count() == 1).await;
    assert_eq!(hub.shards().get(1).read().moved_to(&room), Some(3));
    assert!(hub.shards().get(3).read().room(&room).is_some());
    assert_eq!(hub.shards().get(1).read().pin(&room), Some(3));
    assert_eq!(hub.shards().get(1).read().frozen_rooms().count(), 0);
    assert_eq!(hub.metrics().rooms_moved.load(Ordering::Relaxed), 1);
    let micros = hub.metrics().room_move_micros.snapshot();
    assert_eq!(micros.count(), 1);
    assert!(
        micros.sum >= 1_000_000,
        "a resumed move counts from its freeze, at least {MOVE_RESUME_AFTER:?} before"
    );
    let after = send(hub, &room, &mut alice, "after").await;
    assert_eq!(after, last + 1);
    assert_eq!(
        hub.shards().get(3).read().room(&room).unwrap().last_seq(),
        after
    );
}

/// Commands sent while their room is frozen wait (`RoomMoving`), and land in the new shard
/// after the move, once each and in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_room_is_frozen_wait_and_land_after_the_move() {
    let node = Node::start(split_layout()).await;
    let hub = node.hub();
    let room = room_in(0, 1);
    let (mut alice, mut bob) = (Client::new(ALICE), Client::new(BOB));
    let (mut stream, welcome_seq) = room_with_bob(hub, &room, &mut alice, &mut bob).await;
    let first = send(hub, &room, &mut alice, "first").await;
    assert_eq!(first, welcome_seq + 1);
    let freeze = Command::FreezeRoom {
        room: room.clone(),
        to: 2,
    };
    let frozen = hub.proposer.propose_to(0, freeze).await.unwrap();
    assert!(
        matches!(frozen, ApplyOutput::RoomFrozen(Ok(_))),
        "{frozen:?}"
    );

    // Three messages sent while frozen, pipelined through the room's actor in this order.
    let messages: Vec<Vec<u8>> = ["a", "b", "c"]
        .into_iter()
        .map(|text| alice.send(text.as_bytes()))
        .collect();
    let sender = alice.id.clone();
    let waiting = {
        let submits: Vec<_> = messages
            .into_iter()
            .map(|message| submit(hub, &room, &sender, message))
            .collect();
        let moved = async {
            // Once each of them was refused at least once, the move completes.
            poll(|| hub.metrics().move_retries.load(Ordering::Relaxed) >= 3).await;
            assert_eq!(
                hub.shards().get(0).read().room(&room).unwrap().last_seq(),
                first,
                "nothing landed in the frozen room"
            );
            // The resume task may have taken the move on (it waits MOVE_RESUME_AFTER): then
            // this one is refused as running, and the resumed one finishes.
            match hub.move_room(&room, 2).await {
                Ok(()) => {}
                Err(HubError::Unavailable(reason)) if reason.contains("already") => {}
                Err(e) => panic!("the move failed: {e}"),
            }
            poll(|| hub.shards().get(0).read().moved_to(&room) == Some(2)).await;
        };
        let mut submits = submits.into_iter();
        let (a, b, c) = (
            submits.next().unwrap(),
            submits.next().unwrap(),
            submits.next().unwrap(),
        );
        let (a, b, c, ()) = tokio::join!(a, b, c, moved);
        [a, b, c]
    };
    let seqs: Vec<u64> = waiting
        .iter()
        .map(|verdict| match verdict {
            SubmitVerdict::Accepted { seq, .. } => *seq,
            other => panic!("not accepted: {other:?}"),
        })
        .collect();
    assert_eq!(seqs, [first + 1, first + 2, first + 3], "in the order sent");
    assert_eq!(
        hub.shards().get(2).read().room(&room).unwrap().last_seq(),
        first + 3,
        "each once"
    );
    let texts = read_up_to(&mut stream, &mut bob, &room, first - 1, first + 3).await;
    assert_eq!(texts, ["first", "a", "b", "c"]);
}

/// The rooms a split picks carry about half of the load, largest first; a smaller count
/// takes the largest rooms; ties go by room id, so every node picks the same.
#[test]
fn a_split_picks_rooms_so_both_halves_carry_about_the_same_load() {
    let room = |name: &str| RoomId::parse(&format!("mimi://a.example/r/{name}")).unwrap();
    let loads = |rooms: &[(&str, u64)]| -> Vec<(RoomId, u64)> {
        rooms
            .iter()
            .map(|&(name, load)| (room(name), load))
            .collect()
    };
    // Three and three of 10, 9, 8, 1, 1, 1: 10 with two 1s (12 against 18) is as even as it
    // gets (alternating alone would take 10, 8, 1: 19 against 11).
    let picked = pick_rooms(
        loads(&[("a", 1), ("b", 9), ("c", 1), ("d", 10), ("e", 8), ("f", 1)]),
        3,
    );
    assert_eq!(picked, vec![room("d"), room("a"), room("c")]);
    let picked = pick_rooms(loads(&[("d", 5), ("c", 5), ("b", 5), ("a", 5)]), 2);
    assert_eq!(picked, vec![room("a"), room("c")], "ties by room id");
    let picked = pick_rooms(loads(&[("a", 1), ("b", 100), ("c", 50)]), 1);
    assert_eq!(picked, vec![room("b")], "one room: the largest");
    assert_eq!(
        pick_rooms(loads(&[("a", 1)]), 5),
        vec![room("a")],
        "at most all"
    );
    assert!(pick_rooms(Vec::new(), 3).is_empty());
}
