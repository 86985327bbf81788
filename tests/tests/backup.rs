//! Online backup and restore (issue: observability and operations, item 5) on the real parts:
//! a provider keeps serving while `POST /admin/backup` takes every shard's state machine
//! through the Raft driver, `mimid restore` turns the file into a new data directory, and a new
//! node started on it holds every room (members, epoch, log order), the directory (users,
//! clients, tokens, KeyPackages) and a follower's mirror rooms as they were at backup time. A
//! cluster's backup restored for `cluster.join` seeds a fresh cluster that other `--join` nodes
//! join, every node of it holding every room as backed up.
//!
//! Housekeeping is pushed out of the tests' reach, so the only writes are the ones the tests
//! make and shard states can be compared byte for byte.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::room::log::LogItem;
use mimid_cluster::{ShardId, StateMachine as _};
use mimid_node::admin::admin_call;
use mimid_node::admin::AdminToken;
use mimid_node::backup::{backup_to_file, restore, BackupFile, DEFAULT_FETCH_TIMEOUT};
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::client::{Event, MimiClient, SubmitResult, UpdateResult};
use mimid_node::cluster_ops::bootstrap::load_role;
use mimid_node::cluster_ops::INIT_PATH;
use mimid_node::config::Config;
use mimid_node::hub_key::HUB_KEY_FILE;
use mimid_node::server::Node;
use mimid_tests::{
    add_users_when_led, backup_when_ready, connect_providers, create_room_when_led,
    group_info_hub_key, is_leaderless, metric, room, scrape, submit_resending, test_config, user,
    TestCluster, TestNode, WAIT,
};

/// Longer than any test: no housekeeping entry changes a shard behind the tests' back.
const NO_HOUSEKEEPING_SECS: u64 = 24 * 3600;

fn quiet(config: &mut Config) {
    config.limits.housekeeping_secs = NO_HOUSEKEEPING_SECS;
}

/// What one provider holds of a hosted room.
#[derive(Debug, Clone, PartialEq)]
struct Hosted {
    snapshot: Vec<u8>,
    epoch: u64,
    members: Vec<ClientId>,
    items: Vec<LogItem>,
}

fn hosted(node: &TestNode, room: &RoomId) -> Hosted {
    hosted_at(node.node(), room).expect("the room is hosted here")
}

/// What `node`'s replica holds of `room`, if it holds the room.
fn hosted_at(node: &Node, room: &RoomId) -> Option<Hosted> {
    let hub = node.hub();
    let shard = hub.shards().for_room(room).read();
    let state = shard.room(room)?;
    Some(Hosted {
        snapshot: state.to_snapshot(),
        epoch: state.epoch(),
        members: state.members(),
        items: state.items_after(0).to_vec(),
    })
}

/// Polls `check` until it answers `Ok`, failing with its last `Err` after `within`.
async fn eventually<T>(within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => assert!(Instant::now() < deadline, "after {within:?}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node of `cluster` holds `room` exactly as `expected` (a learner
/// catches up by snapshot, a replica applies a moment after the leader answered).
async fn every_replica_holds(cluster: &TestCluster, room: &RoomId, expected: &Hosted) {
    eventually(3 * WAIT, || {
        for member in cluster.running() {
            match hosted_at(member.node(), room) {
                Some(held) if held == *expected => {}
                Some(held) => {
                    return Err(format!(
                        "node {} holds {room} at epoch {} with {} items, not epoch {} with {}",
                        member.id(),
                        held.epoch,
                        held.items.len(),
                        expected.epoch,
                        expected.items.len()
                    ))
                }
                None => return Err(format!("node {} does not hold {room}", member.id())),
            }
        }
        Ok(())
    })
    .await
}

/// What every running node of `cluster` holds of `room`, once they all hold the same (a
/// learner catches up by snapshot, a replica applies a moment after the leader answered).
async fn replicas_agree(cluster: &TestCluster, room: &RoomId) -> Hosted {
    eventually(3 * WAIT, || {
        let held: Vec<Option<Hosted>> = cluster
            .running()
            .map(|member| hosted_at(member.node(), room))
            .collect();
        match &held[..] {
            [Some(first), rest @ ..] if rest.iter().all(|other| other.as_ref() == Some(first)) => {
                Ok(first.clone())
            }
            _ => Err(format!(
                "the replicas of {room} differ (epochs, items): {:?}",
                held.iter()
                    .map(|held| held.as_ref().map(|h| (h.epoch, h.items.len())))
                    .collect::<Vec<_>>()
            )),
        }
    })
    .await
}

/// Every shard's state machine serialised, as a backup or a snapshot would hold it.
fn shard_states(node: &TestNode) -> Vec<Vec<u8>> {
    let shards = node.node().hub().shards();
    (0..shards.count())
        .map(|shard| shards.machine(shard).snapshot())
        .collect()
}

fn shard_of(node: &TestNode, room: &RoomId) -> ShardId {
    node.node().hub().shards().shard_of(room.as_bytes())
}

async fn expect_event(client: &mut MimiClient, what: &str, matches: impl Fn(&Event) -> bool) {
    match client.next_event(WAIT).await.expect("push stream works") {
        Some(event) if matches(&event) => {}
        other => panic!("{} expected {what}, got {other:?}", client.id()),
    }
}

fn is_joined(event: &Event) -> bool {
    matches!(event, Event::Joined { .. })
}

fn is_committed(event: &Event) -> bool {
    matches!(event, Event::Committed { .. })
}

async fn expect_message(client: &mut MimiClient, text: &str) {
    match client.next_event(WAIT).await.expect("push stream works") {
        Some(Event::Message { content, .. }) => {
            assert_eq!(content.text(), Some(text), "{}", client.id())
        }
        other => panic!("{} expected {text:?}, got {other:?}", client.id()),
    }
}

/// Sends `text`, resent as is while refused transiently (in a cluster, a shard between
/// leaders).
async fn send(client: &mut MimiClient, room: &RoomId, text: &str) {
    let message = client.prepare_text(room, text).expect("encrypts");
    match submit_resending(client, room, message).await.0 {
        SubmitResult::Accepted { .. } => {}
        other => panic!("{} could not send {text:?}: {other:?}", client.id()),
    }
}

async fn add(client: &mut MimiClient, room: &RoomId, users: &[UserId]) {
    let added = add_users_when_led(client, room, users)
        .await
        .expect("add answered");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
}

/// A self-update Commit, made again while the room's shard has no leader to take it (in a
/// cluster; a refused Commit is cleared).
async fn self_update(client: &mut MimiClient, room: &RoomId) {
    let deadline = Instant::now() + WAIT;
    let updated = loop {
        match client.self_update(room).await {
            Err(e) if is_leaderless(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.expect("update answered"),
        }
    };
    assert!(
        matches!(updated, UpdateResult::Accepted { .. }),
        "{updated:?}"
    );
}

/// The provider's public keys as `client`'s node answers them: the hub key that signed a
/// groupInfo answer (protocol-06 §5.5) for `room`, checked, and the franking agent's key
/// (`GET frankingAgent`, MIMI.md §5.3.1).
async fn served_public_keys(client: &MimiClient, room: &RoomId) -> (Vec<u8>, Vec<u8>) {
    let hub_key = group_info_hub_key(client, room).await;
    let agent = client
        .franking_agent()
        .await
        .expect("frankingAgent answers");
    (hub_key, agent.franking_signature_key.as_bytes().to_vec())
}

/// Restores `backup` into `data_dir` with `config`'s domain and shard count, then starts a node
/// on it with the rest of `edit`'s configuration.
async fn restore_and_start(
    backup: &Path,
    data_dir: &Path,
    edit: impl Fn(&mut Config) + Copy,
) -> TestNode {
    let mut config = test_config(data_dir);
    edit(&mut config);
    let restored = restore(backup, &config).expect("restore works");
    assert_eq!(restored.domain, config.domain);
    TestNode::start_with(|config| {
        edit(config);
        config.data_dir = data_dir.to_owned();
    })
    .await
}

/// protocol-06 §5.1-§5.3 state across a backup: two rooms with several epochs, messages and a
/// removed member are backed up over the admin API while a message is being sent; a new node
/// restored from the file holds every shard exactly as the backup does (rooms, directory), the
/// untouched room byte for byte as at backup time, the touched one as before or after the
/// concurrent message, the same epochs, members and log order; tokens still authenticate,
/// KeyPackages published before the backup can still be claimed, and messages flow. A backup
/// with one flipped byte is refused by restore. The admin listener refuses the backup without
/// the node's admin token (401) or with another one (403), writing nothing (issue 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_restores_rooms_epochs_log_order_and_directory() {
    let node = TestNode::start_with(quiet).await;
    let garden = room("garden");
    let attic = room("attic");
    let mut alice = node.client("alice", "phone", 1).await;
    let mut bob = node.client("bob", "phone", 2).await;
    let mut carol = node.client("carol", "laptop", 2).await;
    let mut dave = node.client("dave", "phone", 1).await;
    let mut erin = node.client("erin", "tablet", 2).await;
    // Frank's KeyPackages are only claimed after the restore.
    let mut frank = node.client("frank", "phone", 2).await;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave, &mut erin] {
        client.connect_stream().await.expect("stream opens");
    }

    // garden: alice adds bob and carol, everyone talks, alice removes carol, bob updates.
    // Each client processes the others' Commits before it commits or sends in a new epoch.
    alice.create_room(&garden).await.expect("room created");
    add(&mut alice, &garden, &[user("bob"), user("carol")]).await;
    expect_event(&mut bob, "a Welcome", is_joined).await;
    expect_event(&mut carol, "a Welcome", is_joined).await;
    send(&mut alice, &garden, "garden 1").await;
    send(&mut bob, &garden, "garden 2").await;
    send(&mut carol, &garden, "garden 3").await;
    expect_message(&mut alice, "garden 2").await;
    expect_message(&mut alice, "garden 3").await;
    expect_message(&mut bob, "garden 1").await;
    expect_message(&mut bob, "garden 3").await;
    let removed = alice
        .remove_user(&garden, &user("carol"))
        .await
        .expect("remove answered");
    assert!(
        matches!(removed, UpdateResult::Accepted { .. }),
        "{removed:?}"
    );
    expect_event(&mut bob, "carol's removal", is_committed).await;
    self_update(&mut bob, &garden).await;
    expect_event(&mut alice, "bob's update", is_committed).await;
    send(&mut alice, &garden, "garden 4").await;

    // attic: dave adds erin, both update, both talk.
    dave.create_room(&attic).await.expect("room created");
    add(&mut dave, &attic, &[user("erin")]).await;
    expect_event(&mut erin, "a Welcome", is_joined).await;
    self_update(&mut erin, &attic).await;
    expect_event(&mut dave, "erin's update", is_committed).await;
    self_update(&mut dave, &attic).await;
    send(&mut dave, &attic, "attic 1").await;
    expect_event(&mut erin, "dave's update", is_committed).await;
    expect_message(&mut erin, "attic 1").await;
    send(&mut erin, &attic, "attic 2").await;

    let keys_before = served_public_keys(&dave, &attic).await;
    let garden_before = hosted(&node, &garden);
    let attic_before = hosted(&node, &attic);
    assert_eq!(garden_before.epoch, 3, "create, add, remove, update");
    assert_eq!(attic_before.epoch, 3, "create, add, two updates");
    assert!(!garden_before.members.contains(carol.id()));

    // Issue 6: a backup holds the provider's private keys, so the admin listener hands it out
    // only for the node's admin token: none is 401, another 403, and nothing is written.
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("localhost.backup");
    let admin = node.node().admin_addr().to_string();
    let refused = backup_to_file(&admin, None, &file, DEFAULT_FETCH_TIMEOUT)
        .await
        .expect_err("a backup without the admin token");
    let message = format!("{refused:#}");
    assert!(
        message.contains("401") && message.contains("--token-file"),
        "{message}"
    );
    let someone_else = AdminToken::generate();
    let refused = backup_to_file(&admin, Some(&someone_else), &file, DEFAULT_FETCH_TIMEOUT)
        .await
        .expect_err("a backup with another token");
    assert!(format!("{refused:#}").contains("403"), "{refused:#}");
    assert!(!file.exists(), "a refused backup writes nothing");
    let scraped = scrape(&node).await;
    for (outcome, count) in [
        ("missing_token", 1.0),
        ("wrong_token", 1.0),
        ("authorized", 0.0),
    ] {
        let series = format!("mimid_admin_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&scraped, &series), Some(count), "{series}");
    }

    // With it, the backup is taken while the provider serves a message in garden.
    let token = node.admin_token();
    let (saved, sent) = tokio::join!(
        backup_to_file(&admin, Some(&token), &file, DEFAULT_FETCH_TIMEOUT),
        alice.send_text(&garden, "during the backup"),
    );
    let saved = saved.expect("backup taken");
    assert!(
        matches!(sent, Ok(SubmitResult::Accepted { .. })),
        "the provider kept serving: {sent:?}"
    );
    let garden_after = hosted(&node, &garden);
    assert_eq!(
        garden_after.items.len(),
        garden_before.items.len() + 1,
        "the concurrent message was ordered"
    );
    assert_eq!(hosted(&node, &attic), attic_before, "attic untouched");
    assert_eq!((saved.domain.as_str(), saved.shards), ("localhost", 4));
    let scraped = scrape(&node).await;
    assert_eq!(
        metric(&scraped, "mimid_backups_total{result=\"completed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scraped,
            "mimid_admin_requests_total{outcome=\"authorized\"}"
        ),
        Some(1.0)
    );

    let bytes = std::fs::read(&file).expect("backup written");
    assert_eq!(bytes.len(), saved.bytes);
    let backup = BackupFile::decode(&bytes).expect("a valid backup");
    // Every shard but garden's saw no write since the backup: its part is its state now.
    let now = shard_states(&node);
    let garden_shard = shard_of(&node, &garden);
    for part in &backup.shards {
        assert!(part.applied_index > 0);
        if part.shard != garden_shard {
            assert_eq!(
                part.data, now[part.shard as usize],
                "shard {} differs from the running provider's",
                part.shard
            );
        }
    }

    // One flipped byte: refused, and nothing is created.
    let damaged = dir.path().join("damaged.backup");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let damaged_dir = dir.path().join("damaged-data");
    let err = restore(&damaged, &test_config(&damaged_dir)).expect_err("damaged backup restored");
    assert!(format!("{err:#}").contains("checksum"), "{err:#}");
    assert!(!damaged_dir.exists());

    let restored_dir = dir.path().join("restored-data");
    let restored = restore_and_start(&file, &restored_dir, quiet).await;

    // Every shard starts exactly from its part: rooms, mirrors and the directory.
    assert_eq!(
        shard_states(&restored),
        backup
            .shards
            .iter()
            .map(|part| part.data.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(hosted(&restored, &attic), attic_before);
    let garden_restored = hosted(&restored, &garden);
    assert!(
        garden_restored == garden_before || garden_restored == garden_after,
        "garden is restored as before or after the concurrent message"
    );
    assert_eq!(garden_restored.epoch, garden_before.epoch);
    assert_eq!(garden_restored.members, garden_before.members);
    assert!(garden_restored.items.starts_with(&garden_before.items));

    // Clients carry on against the restored node: their tokens open push streams, Frank's
    // KeyPackages published before the backup are claimed, the log continues in order.
    for client in [&mut dave, &mut erin, &mut frank] {
        client
            .reconnect(restored.endpoint())
            .await
            .expect("token authenticates on the restored node");
    }
    // The provider keys are in the backup: the restored node signs groupInfo answers and
    // publishes the franking agent with the keys of before, not with the key files it
    // generated in its new data directory.
    assert_eq!(
        served_public_keys(&dave, &attic).await,
        keys_before,
        "the restored provider answers with other keys"
    );
    let restored_file = std::fs::read(restored_dir.join(HUB_KEY_FILE)).expect("key file");
    assert_ne!(restored_file[32..], keys_before.0[..]);
    add(&mut dave, &attic, &[user("frank")]).await;
    expect_event(&mut frank, "a Welcome", is_joined).await;
    expect_event(&mut erin, "the commit adding frank", is_committed).await;
    send(&mut dave, &attic, "after the restore").await;
    expect_message(&mut erin, "after the restore").await;
    expect_message(&mut frank, "after the restore").await;
    let attic_now = hosted(&restored, &attic);
    assert_eq!(attic_now.epoch, attic_before.epoch + 1);
    assert!(attic_now.items.starts_with(&attic_before.items));
    assert_eq!(attic_now.items.len(), attic_before.items.len() + 3);

    for client in [alice, bob, carol, dave, erin, frank] {
        client.close().await;
    }
    restored.shutdown().await;
    node.shutdown().await;
}

/// MIMI.md §5.4, follower side: a follower's mirror of a room hosted elsewhere is part of its
/// backup; the restored follower holds the mirror as it was, the hub delivers to it, and its
/// client receives what is sent after the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_follower_keeps_its_mirror_rooms() {
    let ca = CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA");
    let a = TestNode::start_provider_with("a.example", &ca, Default::default(), quiet).await;
    let b = TestNode::start_provider_with("b.example", &ca, Default::default(), quiet).await;
    connect_providers(&[&a, &b]);
    let club = RoomId::parse("mimi://a.example/r/club").unwrap();
    let mut alice = a.client("alice", "phone", 1).await;
    let mut bob = b.client("bob", "laptop", 1).await;
    for client in [&mut alice, &mut bob] {
        client.connect_stream().await.expect("stream opens");
    }
    alice.create_room(&club).await.expect("room created");
    let bob_user = UserId::parse("mimi://b.example/u/bob").unwrap();
    add(&mut alice, &club, &[bob_user]).await;
    expect_event(&mut bob, "a Welcome", is_joined).await;
    send(&mut alice, &club, "before the backup").await;
    expect_message(&mut bob, "before the backup").await;
    bob.ack().await.expect("ack works");

    let mirror_before = {
        let hub = b.node().hub();
        let shard = hub.shards().for_room(&club).read();
        shard.mirror(&club).expect("b mirrors the room").clone()
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("b.backup");
    let admin = b.node().admin_addr().to_string();
    backup_to_file(&admin, Some(&b.admin_token()), &file, DEFAULT_FETCH_TIMEOUT)
        .await
        .expect("backup taken");
    let b_states = shard_states(&b);

    let tls = b.config.tls.clone();
    let restored_dir = dir.path().join("restored-b");
    let b2 = restore_and_start(&file, &restored_dir, |config| {
        quiet(config);
        config.domain = "b.example".into();
        config.tls = tls.clone();
    })
    .await;
    assert_eq!(shard_states(&b2), b_states);
    {
        let hub = b2.node().hub();
        let shard = hub.shards().for_room(&club).read();
        assert_eq!(shard.mirror(&club), Some(&mirror_before));
    }

    // The restored follower takes b's place (b's directory, with the TLS files, stays).
    let mut b = b;
    b.stop().await;
    connect_providers(&[&a, &b2]);
    bob.reconnect(b2.endpoint())
        .await
        .expect("bob's token authenticates on the restored follower");
    send(&mut alice, &club, "after the restore").await;
    expect_message(&mut bob, "after the restore").await;
    assert_eq!(
        b2.application_messages(&club),
        a.application_messages(&club),
        "the restored mirror holds the room in the hub's order"
    );

    alice.close().await;
    bob.close().await;
    b2.shutdown().await;
    a.shutdown().await;
    drop(b);
}

/// Issue 6 "backup, then restore into a new cluster" for a cluster formed with `--join`
/// (ARCHITECTURE.md "Cluster", "Bootstrap"; protocol-06 §5.1-§5.3 state): a backup of a
/// three-node cluster (two rooms with members on different nodes, several epochs, messages, a
/// removed member) is restored with a `cluster.join` configuration into the first node of a
/// new cluster, which writes a new cluster id naming that node alone; it starts at once, two
/// empty nodes started with `--join` naming it adopt the id and are placed on every shard, and
/// every node then holds every room exactly as backed up: snapshot bytes, epoch, member list
/// and log order. The registry is the new cluster's (its id, the new nodes at their new
/// addresses), `mimid init` answers 409 with that id, and clients carry on through the new
/// nodes with their tokens and the KeyPackages they published before the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_backup_restores_into_a_fresh_cluster_formed_with_join() {
    let old = TestCluster::start_with(3, quiet).await;
    // Leaderships balanced first: a Commit that meets a hand-over gets a 503 it cannot repeat.
    old.wait_leaders_settled().await;
    let garden = old.room("garden");
    let attic = old.room("attic");
    let mut alice = old.client(0, "alice", "phone", 1).await;
    let mut bob = old.client(1, "bob", "phone", 2).await;
    let mut carol = old.client(2, "carol", "laptop", 2).await;
    let mut dave = old.client(1, "dave", "phone", 1).await;
    let mut erin = old.client(2, "erin", "tablet", 2).await;
    // Frank's KeyPackages are only claimed in the restored cluster.
    let mut frank = old.client(0, "frank", "phone", 2).await;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave, &mut erin] {
        client.connect_stream().await.expect("stream opens");
    }

    // garden: alice adds bob and carol, they talk, alice removes carol, bob updates.
    create_room_when_led(&mut alice, &garden)
        .await
        .expect("room created");
    add(&mut alice, &garden, &[old.user("bob"), old.user("carol")]).await;
    expect_event(&mut bob, "a Welcome", is_joined).await;
    expect_event(&mut carol, "a Welcome", is_joined).await;
    send(&mut alice, &garden, "garden 1").await;
    send(&mut bob, &garden, "garden 2").await;
    expect_message(&mut alice, "garden 2").await;
    expect_message(&mut bob, "garden 1").await;
    let deadline = Instant::now() + WAIT;
    let removed = loop {
        match alice.remove_user(&garden, &old.user("carol")).await {
            Err(e) if is_leaderless(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.expect("remove answered"),
        }
    };
    assert!(
        matches!(removed, UpdateResult::Accepted { .. }),
        "{removed:?}"
    );
    expect_event(&mut bob, "carol's removal", is_committed).await;
    self_update(&mut bob, &garden).await;
    expect_event(&mut alice, "bob's update", is_committed).await;
    send(&mut alice, &garden, "garden 3").await;

    // attic: dave adds erin, both update, both talk.
    create_room_when_led(&mut dave, &attic)
        .await
        .expect("room created");
    add(&mut dave, &attic, &[old.user("erin")]).await;
    expect_event(&mut erin, "a Welcome", is_joined).await;
    self_update(&mut erin, &attic).await;
    expect_event(&mut dave, "erin's update", is_committed).await;
    send(&mut dave, &attic, "attic 1").await;
    expect_message(&mut erin, "attic 1").await;
    send(&mut erin, &attic, "attic 2").await;

    // Every replica of the old cluster agrees; that is the state to restore. Taken once all
    // three are equal: the node that answered a write had applied it, so equal replicas hold
    // everything acknowledged (a leader elected meanwhile may not have applied it yet).
    let garden_before = replicas_agree(&old, &garden).await;
    let attic_before = replicas_agree(&old, &attic).await;
    assert_eq!(garden_before.epoch, 3, "create, add, remove, update");
    assert_eq!(attic_before.epoch, 2, "create, add, update");
    assert_eq!(garden_before.members.len(), 2);
    assert!(garden_before.members.contains(alice.id()));
    assert!(garden_before.members.contains(bob.id()));
    assert!(!garden_before.members.contains(carol.id()));

    // Shard 0's leader seeds the registry within a placement step or so of the start, which
    // a quick run of the above may beat: the backup is to carry a seeded registry.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !old.nodes[0]
        .node()
        .hub()
        .shards()
        .get(0)
        .read()
        .cluster_meta()
        .is_seeded()
    {
        assert!(
            Instant::now() < deadline,
            "the old cluster's registry is never seeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("cluster.backup");
    let saved = backup_when_ready(&old.admin(2), &old.admin_token(), &file).await;
    assert_eq!(saved.domain, old.domain);
    let old_registry: Vec<_> = {
        let hub = old.nodes[0].node().hub();
        let shard = hub.shards().get(0).read();
        let meta = shard.cluster_meta();
        assert!(
            meta.is_seeded() && meta.cluster_id().is_none(),
            "a static cluster"
        );
        meta.nodes()
            .iter()
            .map(|(&id, record)| (id, record.cluster_addr))
            .collect()
    };
    old.shutdown().await;

    // The new cluster: node 1 restored for cluster.join, nodes 2 and 3 empty, all three
    // started with --join naming node 1.
    let mut new = TestCluster::start_joining(
        3,
        |_| vec![0],
        |config| {
            quiet(config);
            if config.node_id == 1 {
                // The harness keeps the node's certificate in its directory; restore wants
                // an empty one.
                config.data_dir = config.data_dir.join("restored");
                let restored = restore(&file, config).expect("restore works");
                assert!(restored.cluster_id.is_some(), "a seed of a new cluster");
                assert_eq!(restored.rooms, 2);
            }
        },
    )
    .await;
    let role = load_role(&new.nodes[0].config.data_dir)
        .expect("readable")
        .expect("restore wrote the cluster id");
    let seed_addr = new.nodes[0].config.cluster.listen.expect("a fixed port");
    assert_eq!(role.initial_voters, vec![(1, seed_addr)]);
    new.await_running().await;
    new.wait_ready().await;
    for member in new.running() {
        assert_eq!(
            member.node().cluster_id(),
            Some(role.cluster_id),
            "node {}",
            member.id()
        );
    }

    // Every node holds every room as it was backed up.
    every_replica_holds(&new, &garden, &garden_before).await;
    every_replica_holds(&new, &attic, &attic_before).await;
    // The new nodes took leaderships over from the restored one (placement balances them):
    // the Commit below waits for that.
    new.wait_leaders_settled().await;

    // The registry is the new cluster's: its id, the three new nodes at their addresses; the
    // backed-up one (a static cluster's, other addresses) is gone.
    let addresses: Vec<_> = new
        .nodes
        .iter()
        .map(|member| (member.id(), member.config.cluster.listen))
        .collect();
    eventually(3 * WAIT, || {
        let hub = new.nodes[0].node().hub();
        let shard = hub.shards().get(0).read();
        let meta = shard.cluster_meta();
        let nodes: Vec<_> = meta
            .nodes()
            .iter()
            .map(|(&id, record)| (id, record.cluster_addr))
            .collect();
        if meta.cluster_id() == Some(role.cluster_id) && nodes == addresses {
            Ok(())
        } else {
            Err(format!(
                "registry {:?} {nodes:?}, expected {} {addresses:?}",
                meta.cluster_id(),
                role.cluster_id
            ))
        }
    })
    .await;
    assert_ne!(old_registry, addresses);

    // Nothing to initialize: init on any node is a 409 naming the restored cluster's id.
    let token = new.admin_token();
    for index in [1, 0] {
        let (code, body) = admin_call(&new.admin(index), Some(&token), "POST", INIT_PATH, b"")
            .await
            .expect("the admin listener answers");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 409, "{body}");
        assert!(body.contains(&role.cluster_id.to_string()), "{body}");
    }

    // Clients carry on through the new nodes: tokens authenticate, Frank's KeyPackages from
    // before the backup are claimed, the logs continue in order on every replica.
    dave.reconnect(new.endpoint(2))
        .await
        .expect("dave's token authenticates on the new cluster");
    erin.reconnect(new.endpoint(1))
        .await
        .expect("erin's token authenticates on the new cluster");
    frank
        .reconnect(new.endpoint(0))
        .await
        .expect("frank's token authenticates on the new cluster");
    add(&mut dave, &attic, &[new.user("frank")]).await;
    expect_event(&mut frank, "a Welcome", is_joined).await;
    expect_event(&mut erin, "the commit adding frank", is_committed).await;
    send(&mut dave, &attic, "after the restore").await;
    expect_message(&mut erin, "after the restore").await;
    expect_message(&mut frank, "after the restore").await;
    let attic_now = replicas_agree(&new, &attic).await;
    assert_eq!(attic_now.epoch, attic_before.epoch + 1);
    assert!(attic_now.items.starts_with(&attic_before.items));

    for client in [alice, bob, carol, dave, erin, frank] {
        client.close().await;
    }
    new.shutdown().await;
}
