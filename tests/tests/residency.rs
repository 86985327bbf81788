//! Locality-aware placement and data residency (issue 9) on in-process nodes over loopback
//! (real quinn between nodes, raft-rs in sled per node): nodes started with a `locality`
//! record it in the node registry, `mimid node status` shows it, and the placement driver
//! spreads every shard's voters over regions and zones and moves its leaders to
//! `cluster.leader_region`; a room pinned to a residency set lives only on nodes of its
//! regions and is served from every node.
//!
//! Waits are polls with a deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::StatusCode;
use mimid_actors::hub::residency::RoomStatus;
use mimid_actors::ids::RoomId;
use mimid_node::admin::{admin_call, ReportsListing, REPORTS_PATH};
use mimid_node::client::{ClientError, Event, FrankCheck, MimiClient, SubmitResult, UpdateResult};
use mimid_node::cluster_ops::{
    render_status, run_node_command, ClusterStatus, NodeCommand, STATUS_PATH,
};
use mimid_node::config::ResidencySettings;
use mimid_tests::{
    add_users_when_led, create_room_when_led, is_leaderless, read_until, send_many,
    submit_resending, TestCluster, Transcript,
};

/// Longest placement may take to settle here.
const SETTLE: Duration = Duration::from_secs(60);

/// `GET /admin/cluster/status` of node `index`, with the admin token.
async fn status(cluster: &TestCluster, index: usize) -> ClusterStatus {
    let token = cluster.admin_token();
    let (code, body) = admin_call(&cluster.admin(index), Some(&token), "GET", STATUS_PATH, b"")
        .await
        .expect("status answers");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls node `index`'s status until `done` holds; returns it.
async fn wait_for_status(
    cluster: &TestCluster,
    index: usize,
    what: &str,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = status(cluster, index).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {SETTLE:?}:\n{}",
            render_status(&status).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 9 item 1: four nodes, two in zone eu-1, one in eu-2, one in us-1, R = 3, leaders
/// preferred in eu. Every node's locality reaches the registry and `mimid node status`; every
/// shard ends with one voter in each of the three zones (both regions), and every leader in
/// eu.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localities_reach_the_registry_and_placement_spreads_voters_over_zones() {
    const LOCALITIES: [&str; 4] = [
        "region=eu,zone=eu-1",
        "region=eu,zone=eu-1",
        "region=eu,zone=eu-2",
        "region=us,zone=us-1",
    ];
    let cluster = TestCluster::start_with(4, |config| {
        config.cluster.shards = 4;
        config.cluster.replication_factor = 3;
        config.locality = LOCALITIES[config.node_id as usize - 1].into();
        config.cluster.leader_region = Some("eu".into());
    })
    .await;
    let zone = |id: u64| LOCALITIES[id as usize - 1];
    let spread = |status: &ClusterStatus| {
        let located = status
            .nodes
            .iter()
            .all(|node| node.locality == zone(node.id));
        located
            && status.shards.iter().all(|shard| {
                let zones: BTreeSet<&str> = shard.voters.iter().map(|&v| zone(v)).collect();
                shard.voters.len() == 3
                    && zones.len() == 3
                    && shard
                        .leader
                        .is_some_and(|l| zone(l).starts_with("region=eu"))
                    // With `cluster.replicas = "r"` (the default) a shard lives on its
                    // voters only, but shard 0 on every node.
                    && shard.voters.len() + shard.learners.len()
                        == if shard.shard == 0 { 4 } else { 3 }
            })
    };
    // Ask the node in us: any node's status shows the registry and every shard.
    let settled =
        wait_for_status(&cluster, 3, "voters in three zones, leaders in eu", spread).await;
    assert_eq!(settled.leader_region.as_deref(), Some("eu"));
    let table = render_status(&settled).join("\n");
    for (index, locality) in LOCALITIES.iter().enumerate() {
        let line = table
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{} ", index + 1)))
            .unwrap_or_else(|| panic!("node {} in\n{table}", index + 1));
        assert!(line.ends_with(locality), "{line}");
    }
    assert!(table.contains("leaders preferred in region eu"), "{table}");
    // Nodes 1 and 2 share a zone: together they hold one voter per shard.
    let in_eu_1 = settled
        .nodes
        .iter()
        .filter(|node| node.id <= 2)
        .map(|node| node.voter_of)
        .sum::<usize>();
    assert_eq!(in_eu_1, settled.shards.len(), "{table}");
    cluster.shutdown().await;
}

/// Creates `room` pinned to `set`, again while the set's shard is still being placed (503).
async fn create_pinned(client: &mut MimiClient, room: &RoomId, set: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        match client.create_room_in(room, Some(set)).await {
            Ok(()) => return,
            Err(ClientError::Status { status, reason })
                if status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline =>
            {
                println!("pinned create waits: {reason}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("pinned create of {room}: {e}"),
        }
    }
}

/// `client` creates `room` (pinned to `set` when given), which must be refused with `want`
/// and a reason saying `what`; asked again while the shard deciding it has no leader to take
/// it (`is_leaderless`: a 503 that is no verdict on the create).
async fn create_refused(
    client: &mut MimiClient,
    room: &RoomId,
    set: Option<&str>,
    want: StatusCode,
    what: &str,
) {
    let deadline = Instant::now() + SETTLE;
    loop {
        match client.create_room_in(room, set).await {
            Err(e) if is_leaderless(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(ClientError::Status { status, reason }) => {
                assert_eq!(status, want, "{reason}");
                assert!(reason.contains(what), "{reason} should say {what}");
                return;
            }
            other => panic!("expected {want}, got {other:?}"),
        }
    }
}

/// Issue 9 build item 2, must show "a room pinned to region eu never has a replica
/// elsewhere": four nodes (three in eu, one in us), R = 3, a residency set `eu` of one shard
/// (shard 4, after the four hashed ones). Placement keeps shard 4 on the eu nodes only;
/// Alice, on the us node, creates a room pinned to `eu` (`Mimid-Residency`), adds Bob and
/// Carol on eu nodes, and all three see one order exactly once, the us node holding nothing
/// of the room while it routes her writes, reads and push stream through the eu nodes.
/// `mimid room status` shows the constraint. The pin refuses an unpinned create of the same
/// id; an unknown set and a pinned create of an existing room are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_pinned_to_eu_has_replicas_only_in_eu_and_is_served_from_every_node() {
    const LOCALITIES: [&str; 4] = [
        "region=eu,zone=eu-1",
        "region=eu,zone=eu-1",
        "region=eu,zone=eu-2",
        "region=us,zone=us-1",
    ];
    const EU_SHARD: u64 = 4;
    const US: usize = 3;
    let mut cluster = TestCluster::start_with(4, |config| {
        config.cluster.shards = 4;
        config.cluster.replication_factor = 3;
        config.locality = LOCALITIES[config.node_id as usize - 1].into();
        config.cluster.residency = vec![ResidencySettings {
            name: "eu".into(),
            regions: vec!["eu".into()],
            shards: 1,
        }];
    })
    .await;
    let in_eu = |status: &ClusterStatus| {
        status.shards.len() == 5
            && status.shards.iter().any(|shard| {
                shard.shard == EU_SHARD
                    && shard.voters == [1, 2, 3]
                    && shard.learners.is_empty()
                    && shard.leader.is_some_and(|leader| leader <= 3)
            })
    };
    wait_for_status(&cluster, US, "the eu shard on the eu nodes only", in_eu).await;

    let room = cluster.room("pinned");
    let mut alice = cluster.client(US, "alice", "phone", 2).await;
    let mut bob = cluster.client(0, "bob", "phone", 2).await;
    let mut carol = cluster.client(2, "carol", "laptop", 2).await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.connect_stream().await.expect("stream opens");
    }
    create_pinned(&mut alice, &room, "eu").await;
    let added = add_users_when_led(
        &mut alice,
        &room,
        &[cluster.user("bob"), cluster.user("carol")],
    )
    .await
    .expect("add works");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    for client in [&mut bob, &mut carol] {
        match client.next_event(SETTLE).await.expect("push stream works") {
            Some(Event::Joined { .. }) => {}
            other => panic!("{} expected a Welcome, got {other:?}", client.id()),
        }
    }
    const EACH: usize = 5;
    let (mut alice, alice_sent) = send_many(alice, room.clone(), EACH).await;
    let (mut bob, bob_sent) = send_many(bob, room.clone(), EACH).await;
    let mut transcripts = vec![alice_sent, bob_sent];
    let sent: Transcript = transcripts
        .iter()
        .flatten()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    transcripts.push(Transcript::new());
    for (client, transcript) in [&mut alice, &mut bob, &mut carol]
        .into_iter()
        .zip(&mut transcripts)
    {
        read_until(client, 2 * EACH, transcript).await;
        assert_eq!(*transcript, sent, "{} saw another order", client.id());
    }

    // An abuse report of Alice's franked message, handed in by Carol on an eu node, is stored
    // in the room's shard and listed by the us node, which reads it from a holder.
    let message = alice.prepare_text(&room, "report me").expect("encrypts");
    let accepted = match submit_resending(&mut alice, &room, message).await.0 {
        SubmitResult::Accepted { timestamp, .. } => timestamp,
        other => panic!("alice could not send: {other:?}"),
    };
    let kept = loop {
        match carol.next_event(SETTLE).await.expect("push stream works") {
            Some(Event::Message {
                frank: FrankCheck::Verified(frank),
                timestamp,
                ..
            }) if timestamp == accepted => break *frank,
            Some(Event::Message { frank, .. }) => panic!("carol's Frank: {frank:?}"),
            Some(_) => continue,
            None => panic!("carol waited for alice's message"),
        }
    };
    carol
        .report_abuse(&room, &cluster.user("alice"), 0, "spam", &[&kept])
        .await
        .expect("the report is validated and stored");
    let token = cluster.admin_token();
    let (code, body) = admin_call(&cluster.admin(US), Some(&token), "GET", REPORTS_PATH, b"")
        .await
        .expect("reports answer");
    let listing: ReportsListing = serde_json::from_slice(&body).expect("a listing");
    assert_eq!(code, 200);
    assert!(listing.missing_shards.is_empty(), "{listing:?}");
    assert_eq!(listing.reports.len(), 1, "{listing:?}");
    assert_eq!(listing.reports[0].room, room.to_string());
    assert_eq!(
        listing.reports[0].alleged_abuser,
        cluster.user("alice").to_string()
    );

    // Where the room lives: shard 4, on the three eu nodes, never on the us node.
    let pinned = cluster.room_status(US, &room).await;
    assert!(pinned.exists, "{pinned:?}");
    assert_eq!(pinned.shard, EU_SHARD, "{pinned:?}");
    assert_eq!(pinned.residency.as_deref(), Some("eu"));
    assert_eq!(pinned.regions, ["eu"]);
    let regions: BTreeSet<Option<&str>> = pinned
        .voters
        .iter()
        .chain(&pinned.learners)
        .map(|(_, region)| region.as_deref())
        .collect();
    assert_eq!(regions, BTreeSet::from([Some("eu")]), "{pinned:?}");
    let same_place = |status: &RoomStatus| {
        let members_in_eu = status
            .voters
            .iter()
            .chain(&status.learners)
            .all(|(_, region)| region.as_deref() == Some("eu"));
        status.exists
            && status.shard == pinned.shard
            && status.residency == pinned.residency
            && status.regions == pinned.regions
            && members_in_eu
    };
    // Another node says the same (the members as its copy of shard 0 has them).
    let from_eu = cluster.room_status(0, &room).await;
    assert!(same_place(&from_eu), "{from_eu:?}");
    assert_eq!(cluster.holders_of(&room), vec![0, 1, 2]);
    // Every holder's replica holds the messages (a follower applies the last a moment after
    // the leader acknowledged it; no client reads from node 2's).
    let deadline = Instant::now() + SETTLE;
    for index in 0..3 {
        loop {
            let held = cluster.application_messages(index, &room).len();
            if held == 2 * EACH + 1 {
                break;
            }
            assert!(
                held < 2 * EACH + 1 && Instant::now() < deadline,
                "node {} holds {held} messages",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let us_hub = cluster.nodes[US].node().hub();
    assert!(!us_hub.holds(EU_SHARD));
    assert!(us_hub.shards().get(EU_SHARD).read().room(&room).is_none());
    assert_eq!(us_hub.shards().get(EU_SHARD).read().room_count(), 0);
    // A room that is not pinned lives in its home shard and says so.
    let plain = cluster.room("plain");
    create_room_when_led(&mut bob, &plain)
        .await
        .expect("unpinned room created");
    let plain_status = cluster.room_status(US, &plain).await;
    assert!(plain_status.shard < EU_SHARD && plain_status.residency.is_none());

    // The pin in the room's home shard refuses the same id unpinned, from any node; a pinned
    // create of an existing room and an unknown set are refused too.
    let mut dave = cluster.client(1, "dave", "phone", 1).await;
    create_refused(&mut dave, &room, None, StatusCode::CONFLICT, "exists").await;
    create_refused(
        &mut dave,
        &plain,
        Some("eu"),
        StatusCode::CONFLICT,
        "exists",
    )
    .await;
    create_refused(
        &mut dave,
        &cluster.room("elsewhere"),
        Some("mars"),
        StatusCode::BAD_REQUEST,
        "unknown residency set",
    )
    .await;
    // Scale-out by a second us node: placement rebalances the hashed shards onto it and
    // never gives it (or the other us node) a replica of the eu shard, at any step seen.
    let fifth = cluster
        .add_node(|config| {
            config.cluster.shards = 4;
            config.cluster.replication_factor = 3;
            config.locality = "region=us,zone=us-2".into();
            config.cluster.residency = vec![ResidencySettings {
                name: "eu".into(),
                regions: vec!["eu".into()],
                shards: 1,
            }];
        })
        .await;
    let fifth_addr = cluster.nodes[fifth]
        .node()
        .cluster_addr()
        .expect("clustered");
    run_node_command(
        &NodeCommand::Add {
            host: cluster.admin(0),
            id: 5,
            addr: fifth_addr.to_string(),
            locality: Some("region=us,zone=us-2".into()),
        },
        Some(&cluster.admin_token()),
    )
    .await
    .expect("mimid node add");
    // Checked at every status seen: no member of the eu shard outside eu.
    let eu_only = |status: &ClusterStatus| {
        let eu = status.shards.iter().find(|shard| shard.shard == EU_SHARD);
        if let Some(eu) = eu {
            assert!(
                eu.voters.iter().chain(&eu.learners).all(|&node| node <= 3),
                "a replica of the eu shard outside eu:\n{}",
                render_status(status).join("\n")
            );
        }
    };
    let rebalanced = wait_for_status(&cluster, 0, "node 5 placed, eu kept", |status| {
        eu_only(status);
        let trimmed = status
            .shards
            .iter()
            .filter(|shard| shard.shard != 0)
            .all(|shard| shard.voters.len() == 3 && shard.learners.is_empty());
        in_eu(status)
            && trimmed
            && status
                .nodes
                .iter()
                .any(|node| node.id == 5 && node.live && node.voter_of >= 1)
    })
    .await;
    println!("{}", render_status(&rebalanced).join("\n"));
    let from_fifth = cluster.room_status(fifth, &room).await;
    assert!(same_place(&from_fifth), "{from_fifth:?}");
    // After all of it, the eu shard still has no member outside eu (and a leader in eu, once
    // any move of its leadership for balance is over).
    wait_for_status(
        &cluster,
        US,
        "the eu shard on the eu nodes only",
        |status| {
            eu_only(status);
            in_eu(status)
        },
    )
    .await;
    cluster.shutdown().await;
}
