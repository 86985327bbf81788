//! Shard splits (issue 9 build item 3, "a shard splits when it grows hot or large";
//! ARCHITECTURE.md "Shard splits") on in-process nodes over loopback (real quinn between
//! nodes, raft-rs in sled per node, openmls clients): a split hands rooms of a hashed shard
//! to a split shard (`cluster.split_shards`) by the move protocol (freeze in the source,
//! adopt in the target, repin in the home shard, release in the source) while clients on
//! every node keep sending; nothing acknowledged is lost or delivered twice, every member
//! sees one order per room (MIMI.md §5.3-§5.4 within one provider), and every node routes to
//! the new shard afterwards, also a node that holds none of the shards involved and routes
//! by a cached pin the move made stale. The automatic policy (`[cluster.split] max_rooms`)
//! splits a shard that holds too many rooms, and the admin route refuses what it cannot do.
//!
//! Waits are polls with a deadline; nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mimid_actors::actor::ActorMetrics;
use mimid_actors::ids::RoomId;
use mimid_node::client::{Event, MimiClient, SubmitResult};
use mimid_tests::{
    add_and_expect_joined, all_send_then_read, create_room_when_led, http_get, metric,
    state_digest, submit_resending, TestCluster, TestNode, Transcript, WAIT,
};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

/// `POST /admin/shards/split` (`{"shard": N, "rooms": M?}`).
const SPLIT_PATH: &str = "/admin/shards/split";

/// The admin route's answer to a split (`SplitOutcome`).
#[derive(Debug, Deserialize)]
struct Outcome {
    from: u64,
    to: u64,
    moved: Vec<String>,
    failed: Vec<(String, String)>,
}

/// Asks node `index` to split `shard` (moving `rooms` of its rooms, default half).
async fn split(
    cluster: &TestCluster,
    index: usize,
    shard: u64,
    rooms: Option<usize>,
) -> (u16, String) {
    let body = match rooms {
        Some(rooms) => serde_json::json!({ "shard": shard, "rooms": rooms }),
        None => serde_json::json!({ "shard": shard }),
    };
    cluster
        .admin_post(index, SPLIT_PATH, &body.to_string())
        .await
}

/// Polls node `index`'s room status of `room` until it exists in `shard`.
async fn wait_room_in(cluster: &TestCluster, index: usize, room: &RoomId, shard: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = cluster.room_status(index, room).await;
        if status.exists && status.shard == shard {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node index {index} places {room} in shard {} (exists: {}), not {shard}",
            status.shard,
            status.exists
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum over the running nodes of `series` in their `/metrics`.
async fn metric_sum(cluster: &TestCluster, series: &str) -> f64 {
    let mut sum = 0.0;
    for member in cluster.running() {
        let url = format!("http://{}/metrics", member.node().admin_addr());
        let (code, body) = http_get(&url).await.expect("metrics answer");
        assert_eq!(code, 200);
        sum += metric(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    }
    sum
}

/// The home (hashed) shard of `room`, as the cluster's layout has it.
fn home(cluster: &TestCluster, room: &RoomId) -> u64 {
    cluster.nodes[0]
        .node()
        .hub()
        .shards()
        .shard_of(room.as_bytes())
}

/// The first `count` rooms named `<prefix>-<n>` whose home shard is `shard`.
fn rooms_homed_in(cluster: &TestCluster, prefix: &str, shard: u64, count: usize) -> Vec<RoomId> {
    (0..)
        .map(|n| cluster.room(&format!("{prefix}-{n}")))
        .filter(|room| home(cluster, room) == shard)
        .take(count)
        .collect()
}

/// Waits until every running node's replicas agree that `room` lives in `shard`: its
/// routing names it, `shard` hosts the room and no other shard of the node does (the
/// source released it).
async fn wait_hosted_only_in(cluster: &TestCluster, room: &RoomId, shard: u64) {
    let deadline = Instant::now() + WAIT;
    for member in cluster.running() {
        let shards = member.node().hub().shards();
        loop {
            let hosting: Vec<u64> = (0..shards.count())
                .filter(|&s| shards.get(s).read().room(room).is_some())
                .collect();
            let routed = shards.room_shard(room);
            if hosting == [shard] && routed == shard {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: {room} hosted in shards {hosting:?}, routed to {routed}, not only {shard}",
                member.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until every running node's replica of `room` holds `count` application messages,
/// the same ones in the same order.
async fn wait_replicas_agree(cluster: &TestCluster, room: &RoomId, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let logs: Vec<Vec<Vec<u8>>> = (0..cluster.nodes.len())
            .map(|index| cluster.application_messages(index, room))
            .collect();
        if logs.iter().all(|log| log.len() == count) && logs.windows(2).all(|p| p[0] == p[1]) {
            return;
        }
        let lengths: Vec<usize> = logs.iter().map(Vec::len).collect();
        assert!(
            Instant::now() < deadline,
            "{room}: replicas hold {lengths:?} messages (same: {}), want {count} each",
            logs.windows(2).all(|p| p[0] == p[1])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alice (node index 0) creates each of `rooms` and adds Bob (node index 1) and Carol (node
/// index 2); all three have their push streams open on their nodes.
async fn three_members_in(cluster: &TestCluster, rooms: &[RoomId]) -> [MimiClient; 3] {
    let mut alice = cluster.client(0, "alice", "phone", 1).await;
    let mut bob = cluster.client(1, "bob", "phone", rooms.len()).await;
    let mut carol = cluster.client(2, "carol", "laptop", rooms.len()).await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.connect_stream().await.expect("stream opens");
    }
    for room in rooms {
        create_room_when_led(&mut alice, room)
            .await
            .expect("room created");
        add_and_expect_joined(&mut alice, room, &mut [&mut bob, &mut carol]).await;
    }
    [alice, bob, carol]
}

/// What one client had acknowledged (or saw), by room.
type Transcripts = BTreeMap<RoomId, Transcript>;

/// Sends one message to each of `rooms` per round, round after round, until `stop` is set
/// (and at least `MIN_ROUNDS` rounds are done); tells `started` after the first round.
/// Every send must be accepted: a move makes the node wait for it, never refuse it (a 503
/// of a shard between leaders, which a loaded machine's election or placement's leader
/// balance may cause, is resent as is: `mimid_tests::is_transient`). Returns the client and
/// its acknowledged sends.
async fn send_rounds(
    mut client: MimiClient,
    rooms: Vec<RoomId>,
    started: mpsc::UnboundedSender<()>,
    stop: watch::Receiver<bool>,
) -> (MimiClient, Transcripts) {
    const MIN_ROUNDS: usize = 2;
    const MAX_ROUNDS: usize = 1_000;
    let name = client.id().to_string();
    let mut sent = Transcripts::new();
    for round in 0..MAX_ROUNDS {
        if round >= MIN_ROUNDS && *stop.borrow() {
            break;
        }
        for room in &rooms {
            let text = format!("{name} {round}");
            let begun = Instant::now();
            let message = client.prepare_text(room, &text).expect("encrypts");
            match submit_resending(&mut client, room, message).await.0 {
                SubmitResult::Accepted { seq, .. } => {
                    let first = sent
                        .entry(room.clone())
                        .or_default()
                        .insert(seq, (name.clone(), text));
                    assert!(
                        first.is_none(),
                        "{name}: {room} acknowledged seq {seq} twice"
                    );
                }
                other => panic!(
                    "{name} could not send to {room} in round {round} (after {:?}): {other:?}",
                    begun.elapsed()
                ),
            }
        }
        if round == 0 {
            let _ = started.send(());
        }
    }
    (client, sent)
}

/// Reads `client`'s push stream until it has every message of `want` (its own acknowledged
/// sends, `own`, count as seen: a client is not sent its own messages back); asserts no seq
/// of a room arrives twice. Returns what it has by room.
async fn read_all(client: &mut MimiClient, own: &Transcripts, want: &Transcripts) -> Transcripts {
    let mut seen = own.clone();
    let missing = |seen: &Transcripts| -> usize {
        want.iter()
            .map(|(room, all)| {
                all.len()
                    .saturating_sub(seen.get(room).map_or(0, |t| t.len()))
            })
            .sum()
    };
    while missing(&seen) > 0 {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| {
                panic!(
                    "{} waited for {} more messages",
                    client.id(),
                    missing(&seen)
                )
            });
        if let Event::Message {
            room,
            seq,
            sender,
            content,
            ..
        } = event
        {
            let text = content.text().expect("a text/plain message").to_string();
            let first = seen
                .entry(room.clone())
                .or_default()
                .insert(seq, (sender.to_string(), text));
            assert!(
                first.is_none(),
                "{}: {room} seq {seq} delivered twice",
                client.id()
            );
        }
    }
    seen
}

/// Issue 9 build item 3, a split under load: three nodes (every shard on all three), two
/// hashed shards and two split shards. Alice (node 1), Bob (node 2) and Carol (node 3) share
/// eight rooms, six of them homed in shard 1, and send to all of them at once while node 1's
/// admin splits shard 1 (`POST /admin/shards/split`, default: half of its rooms), then node
/// 2's admin splits the split shard that took them (one room, into the other split shard).
/// The splits move three rooms, then one of them again; every acknowledged message reaches
/// every member exactly once, every member sees one order per room and every replica holds
/// the same log; every node's room status and routing name each room's new shard and no
/// other shard of any node hosts it; sends through every node work after the splits (nodes
/// that did not run a split follow the repin in the home shard, or a tombstone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_under_load_moves_rooms_and_loses_nothing() {
    const SOURCE: u64 = 1;
    let cluster = TestCluster::start_with(3, |config| {
        config.cluster.shards = 2;
        config.cluster.split_shards = 2;
    })
    .await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let split_shards = 2..4;
    let mut in_source = rooms_homed_in(&cluster, "busy", SOURCE, 6);
    in_source.sort();
    let elsewhere = rooms_homed_in(&cluster, "quiet", 0, 2);
    let rooms: Vec<RoomId> = in_source.iter().chain(&elsewhere).cloned().collect();
    let clients = three_members_in(&cluster, &rooms).await;

    // Load: every client sends to every room, round after round, until the split is done.
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let senders: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(send_rounds(
                client,
                rooms.clone(),
                started_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for _ in 0..senders.len() {
        started.recv().await.expect("a sender started");
    }
    let begun = Instant::now();
    let (code, body) = split(&cluster, 0, SOURCE, None).await;
    let took = begun.elapsed();
    assert_eq!(code, 200, "{body}");
    let outcome: Outcome = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    println!("split in {took:?}: {outcome:?}");
    // The outcome: half of the source's six rooms, to a split shard, none failed.
    assert_eq!(outcome.from, SOURCE, "{body}");
    assert!(split_shards.contains(&outcome.to), "{body}");
    assert!(outcome.failed.is_empty(), "{body}");
    assert_eq!(outcome.moved.len(), 3, "{body}");
    let moved: Vec<RoomId> = outcome
        .moved
        .iter()
        .map(|room| RoomId::parse(room).expect("a room id"))
        .collect();
    assert!(
        moved.iter().all(|room| in_source.contains(room)),
        "moved rooms not of shard {SOURCE}: {body}"
    );
    // Still under load, the split shard splits again, asked through node 2 (which neither
    // ran the first split nor, perhaps, leads either shard): one room moves on to the other
    // split shard, so its home shard's pin changes twice and shard 1's tombstone names a
    // shard it left too. Node 2 plans from its own replica of the split shard, after a read
    // barrier, so it sees the rooms just adopted there even if its replica lagged.
    let begun = Instant::now();
    let (code, body) = split(&cluster, 1, outcome.to, Some(1)).await;
    let took = begun.elapsed();
    assert_eq!(code, 200, "{body}");
    let again: Outcome = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    println!("second split in {took:?}: {again:?}");
    assert_eq!(again.from, outcome.to, "{body}");
    assert!(
        split_shards.contains(&again.to) && again.to != outcome.to,
        "{body}"
    );
    assert!(again.failed.is_empty(), "{body}");
    assert_eq!(again.moved.len(), 1, "{body}");
    let twice = RoomId::parse(&again.moved[0]).expect("a room id");
    assert!(moved.contains(&twice), "{body}");
    assert!(
        senders.iter().all(|sender| !sender.is_finished()),
        "the senders stopped before the splits ended: they ran without load"
    );
    stop_tx.send(true).expect("senders listen");
    let mut clients = Vec::new();
    let mut own = Vec::new();
    for sender in senders {
        let (client, sent) = sender.await.expect("sender finished");
        clients.push(client);
        own.push(sent);
    }
    let shard_of = |room: &RoomId| {
        if *room == twice {
            again.to
        } else if moved.contains(room) {
            outcome.to
        } else {
            home(&cluster, room)
        }
    };

    // Every acknowledged message reaches every member once, in one order per room.
    let mut want = Transcripts::new();
    for sent in &own {
        for (room, transcript) in sent {
            for (seq, message) in transcript {
                let other = want
                    .entry(room.clone())
                    .or_default()
                    .insert(*seq, message.clone());
                assert!(
                    other.is_none(),
                    "{room} seq {seq} acknowledged to two senders"
                );
            }
        }
    }
    let acknowledged: usize = want.values().map(Transcript::len).sum();
    for (client, sent) in clients.iter_mut().zip(&own) {
        let seen = read_all(client, sent, &want).await;
        for room in &rooms {
            assert_eq!(
                seen.get(room),
                want.get(room),
                "{} saw another history of {room} (shard {})",
                client.id(),
                shard_of(room)
            );
        }
    }
    println!("{acknowledged} messages acknowledged during the splits, each seen once by all");
    let counted = |of: fn(&ActorMetrics) -> &AtomicU64| -> u64 {
        cluster
            .running()
            .map(|member| of(member.node().hub().metrics()).load(Ordering::Relaxed))
            .sum()
    };
    let retries = counted(|m| &m.move_retries);
    println!("room commands sent again after a move: {retries}");
    assert!(counted(|m| &m.rooms_moved) >= 4);
    assert_eq!(counted(|m| &m.room_moves_failed), 0);

    // Every node's room status names the new shard for the moved rooms, the home shard for
    // the others; every node's replicas host each moved room in the target shard only.
    for room in &rooms {
        for index in 0..cluster.nodes.len() {
            wait_room_in(&cluster, index, room, shard_of(room)).await;
        }
        wait_hosted_only_in(&cluster, room, shard_of(room)).await;
    }

    // Sends through every node after the split: in the moved rooms, one unmoved room of the
    // source and one room of the other shard.
    let unmoved = in_source
        .iter()
        .find(|room| !moved.contains(room))
        .expect("three rooms stay");
    let after: Vec<RoomId> = moved
        .iter()
        .chain([unmoved, &elsewhere[0]])
        .cloned()
        .collect();
    for room in &after {
        let (next, transcripts) = all_send_then_read(clients, room, 1).await;
        clients = next;
        assert_eq!(transcripts[0].len(), 3, "{room}: {transcripts:?}");
        assert!(
            transcripts.windows(2).all(|pair| pair[0] == pair[1]),
            "{room}: members saw different orders: {transcripts:?}"
        );
    }
    // Every replica holds every room's whole log, the same one.
    for room in &rooms {
        let extra = if after.contains(room) { 3 } else { 0 };
        wait_replicas_agree(&cluster, room, want[room].len() + extra).await;
    }
    cluster.shutdown().await;
}

/// Issue 9 build item 3, "a shard splits when it grows ... large": `[cluster.split]
/// max_rooms = 3` checked every 200 ms. Alice creates four rooms homed in shard 1; the node
/// leading shard 1 splits it by itself, moving half of them to the split shard (shard 2).
/// Then Alice adds Bob (another node) to every room, moved or not (Commits and Welcomes in
/// the split shard), and both exchange messages in each, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_split_by_room_count() {
    const SOURCE: u64 = 1;
    const TARGET: u64 = 2;
    const AUTOMATIC_MOVED: &str =
        "mimid_shard_splits_total{trigger=\"automatic\",outcome=\"moved\"}";
    let cluster = TestCluster::start_with(3, |config| {
        config.cluster.shards = 2;
        config.cluster.split_shards = 1;
        config.cluster.split.max_rooms = 3;
        config.cluster.split.check_interval_ms = 200;
        config.cluster.split.cooldown_secs = 1;
    })
    .await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    cluster.wait_leaders_settled().await;
    let rooms = rooms_homed_in(&cluster, "many", SOURCE, 4);
    let mut alice = cluster.client(0, "alice", "phone", 1).await;
    let mut bob = cluster.client(1, "bob", "phone", rooms.len()).await;
    for client in [&mut alice, &mut bob] {
        client.connect_stream().await.expect("stream opens");
    }
    for room in &rooms {
        create_room_when_led(&mut alice, room)
            .await
            .expect("room created");
    }

    // The policy moves half of the four rooms: two end in the split shard, two stay.
    let deadline = Instant::now() + WAIT;
    let moved = loop {
        let mut placed = Vec::new();
        for room in &rooms {
            placed.push(cluster.room_status(1, room).await.shard);
        }
        let moved: Vec<RoomId> = rooms
            .iter()
            .zip(&placed)
            .filter(|(_, &shard)| shard == TARGET)
            .map(|(room, _)| room.clone())
            .collect();
        assert!(
            placed
                .iter()
                .all(|&shard| shard == SOURCE || shard == TARGET),
            "rooms placed in {placed:?}"
        );
        if moved.len() == 2 {
            break moved;
        }
        assert!(
            Instant::now() < deadline,
            "no automatic split of shard {SOURCE} within {WAIT:?}: rooms in shards {placed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for room in &rooms {
        let shard = if moved.contains(room) { TARGET } else { SOURCE };
        wait_hosted_only_in(&cluster, room, shard).await;
    }
    // One split, counted by the node that ran it.
    let deadline = Instant::now() + WAIT;
    while metric_sum(&cluster, AUTOMATIC_MOVED).await < 1.0 {
        assert!(Instant::now() < deadline, "the split was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Moved and unmoved rooms take Commits, Welcomes and messages alike.
    for room in &rooms {
        add_and_expect_joined(&mut alice, room, &mut [&mut bob]).await;
    }
    let mut clients = vec![alice, bob];
    for room in &rooms {
        let (next, transcripts) = all_send_then_read(clients, room, 3).await;
        clients = next;
        assert_eq!(transcripts[0].len(), 6, "{room}: {transcripts:?}");
        assert_eq!(transcripts[0], transcripts[1], "{room}: two orders");
        wait_replicas_agree(&cluster, room, 6).await;
    }
    // Still where the split put them, after one split (shard 1 is over the threshold no
    // more, and the split shard never splits into itself).
    for room in &rooms {
        let shard = if moved.contains(room) { TARGET } else { SOURCE };
        assert_eq!(cluster.room_status(2, room).await.shard, shard, "{room}");
    }
    assert_eq!(metric_sum(&cluster, AUTOMATIC_MOVED).await, 1.0);
    let others = [
        "mimid_shard_splits_total{trigger=\"automatic\",outcome=\"failed\"}",
        "mimid_shard_splits_total{trigger=\"operator\",outcome=\"moved\"}",
    ];
    for series in others {
        assert_eq!(metric_sum(&cluster, series).await, 0.0, "{series}");
    }
    cluster.shutdown().await;
}

/// The split route refuses what it cannot do with a 400 and the reason, changing nothing:
/// a provider without split shards, a body that is not a split request, an unknown shard,
/// no room asked to move; and the only split shard cannot split (into itself). On one node
/// with a split shard, a split by hand moves the room asked for, which takes messages after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_that_cannot_be_done_are_refused() {
    let refused = |(code, body): (u16, String), what: &str| {
        assert_eq!(code, 400, "{body}");
        assert!(body.contains(what), "{body} should say {what}");
    };
    let room = mimid_tests::room("kept");
    let node = TestNode::start().await;
    let mut alice = node.client("alice", "phone", 0).await;
    alice.create_room(&room).await.expect("room created");
    let shard = node.node().hub().shards().shard_of(room.as_bytes());
    let whole = serde_json::json!({ "shard": shard }).to_string();
    let before = state_digest(&node);
    refused(node.admin_post(SPLIT_PATH, &whole).await, "no split shards");
    refused(
        node.admin_post(SPLIT_PATH, r#"{"shard": "one"}"#).await,
        "shard",
    );
    assert_eq!(state_digest(&node), before, "a refused split changed state");
    node.shutdown().await;

    // Four hashed shards and one split shard, shard 4.
    let node = TestNode::start_with(|config| config.cluster.split_shards = 1).await;
    let mut alice = node.client("alice", "phone", 0).await;
    alice.create_room(&room).await.expect("room created");
    let before = state_digest(&node);
    refused(
        node.admin_post(SPLIT_PATH, r#"{"shard": 99}"#).await,
        "unknown shard 99",
    );
    let none = serde_json::json!({ "shard": shard, "rooms": 0 }).to_string();
    refused(node.admin_post(SPLIT_PATH, &none).await, "rooms");
    assert_eq!(state_digest(&node), before, "a refused split changed state");
    let one = serde_json::json!({ "shard": shard, "rooms": 1 }).to_string();
    let (code, answer) = node.admin_post(SPLIT_PATH, &one).await;
    assert_eq!(code, 200, "{answer}");
    let outcome: Outcome =
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(
        (outcome.from, outcome.to, outcome.moved.clone()),
        (shard, 4, vec![room.to_string()]),
        "{answer}"
    );
    let before = state_digest(&node);
    refused(
        node.admin_post(SPLIT_PATH, r#"{"shard": 4}"#).await,
        "only split shard",
    );
    assert_eq!(state_digest(&node), before, "a refused split changed state");
    let sent = alice
        .send_text(&room, "still here")
        .await
        .expect("the moved room takes messages");
    assert!(matches!(sent, SubmitResult::Accepted { .. }), "{sent:?}");
    let hub = node.node().hub();
    assert!(hub.shards().get(4).read().room(&room).is_some());
    assert!(hub.shards().get(shard).read().room(&room).is_none());
    node.shutdown().await;
}

/// Issue 9 build item 3, stale pins: three nodes, one replica per shard (R = 1, so a node
/// lacks most shards), two hashed and two split shards. The room moves from its home shard
/// (shard 1) to a split shard, then on to the other one. Alice then talks through a node
/// that holds neither the home shard nor the first split shard: it routes the room by what
/// it asks holders and caches (`Shards::remember_pin`), and after the second move its cache
/// names a shard the room has left (whose tombstone sends it on). After each move her sends
/// and Bob's reach both once, in one order, and every node's room status names where the
/// room is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_rooms_shards_follows_a_room_moved_twice() {
    const HOME: u64 = 1;
    let cluster = TestCluster::start_with(3, |config| {
        config.cluster.shards = 2;
        config.cluster.split_shards = 2;
        config.cluster.replication_factor = 1;
    })
    .await;
    cluster.wait_placed(4, 1).await;
    let room = rooms_homed_in(&cluster, "far", HOME, 1).remove(0);
    let mut alice = cluster.client(0, "alice", "phone", 1).await;
    let mut bob = cluster.client(1, "bob", "phone", 1).await;
    for client in [&mut alice, &mut bob] {
        client.connect_stream().await.expect("stream opens");
    }
    create_room_when_led(&mut alice, &room)
        .await
        .expect("room created");
    add_and_expect_joined(&mut alice, &room, &mut [&mut bob]).await;
    let (mut clients, transcripts) = all_send_then_read(vec![alice, bob], &room, 2).await;
    assert_eq!(
        transcripts[0], transcripts[1],
        "before the moves: two orders"
    );

    let mut at = HOME;
    let mut count = 4;
    let mut lacking: Option<usize> = None;
    for asked_through in [2, 0] {
        let body = serde_json::json!({ "shard": at, "rooms": 1 }).to_string();
        let (code, body) = cluster.admin_post(asked_through, SPLIT_PATH, &body).await;
        assert_eq!(code, 200, "{body}");
        let outcome: Outcome =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(outcome.moved, [room.to_string()], "{body}");
        assert!((2..4).contains(&outcome.to) && outcome.to != at, "{body}");
        let left = at;
        at = outcome.to;
        if let Some(index) = lacking {
            println!(
                "after the move to {at}, alice's node routes the room to shard {}",
                cluster.nodes[index].node().hub().shards().room_shard(&room)
            );
        }
        if lacking.is_none() {
            // Alice moves to a node that holds neither the home shard nor this split shard
            // (one of the three holds neither: each shard is on one node).
            let index = (0..cluster.nodes.len())
                .find(|&index| {
                    let hub = cluster.nodes[index].node().hub();
                    !hub.holds(left) && !hub.holds(at)
                })
                .expect("a node without either shard");
            clients[0]
                .reconnect(cluster.endpoint(index))
                .await
                .expect("alice reconnects");
            lacking = Some(index);
        }
        let (next, transcripts) = all_send_then_read(clients, &room, 2).await;
        clients = next;
        assert_eq!(transcripts[0].len(), 4, "{transcripts:?}");
        assert_eq!(
            transcripts[0], transcripts[1],
            "after a move to {at}: two orders"
        );
        count += 4;
        for index in 0..cluster.nodes.len() {
            wait_room_in(&cluster, index, &room, at).await;
        }
    }
    let hub = cluster.nodes[lacking.expect("chosen")].node().hub();
    println!(
        "alice's node holds shards {:?}; its room commands sent again after a move: {}",
        (0..4).filter(|&shard| hub.holds(shard)).collect::<Vec<_>>(),
        hub.metrics().move_retries.load(Ordering::Relaxed)
    );
    let holders = cluster.holders_of(&room);
    assert_eq!(holders.len(), 1, "{holders:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let log = cluster.application_messages(holders[0], &room).len();
        if log == count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the holder's log: {log}, want {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await;
}
