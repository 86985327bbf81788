//! WAN behaviour over the real node-to-node transport (issue 9 item 4): three in-process
//! nodes of one provider (real quinn with mutual TLS between them, raft-rs in sled with fsync
//! per node, openmls clients on the client API), one per region, with every frame and RPC a
//! node sends delayed by its link's one-way delay (`cluster_net::LinkDelays`, set through
//! `TestCluster::set_link_delays`). The regions and round trips are those of the in-memory
//! harness (`cluster/tests/wan.rs`): A-B 30 ms, B-C 80 ms, A-C 150 ms, up to 1 ms of seeded
//! jitter per frame one way, per-link order kept. Localities `region=A,zone=A-1` etc., R = 3:
//! every shard has one voter per region.
//!
//! - Commit latency per placement: clients on each node send text messages (MIMI
//!   submitMessage, protocol-06 §5.3) to one room per shard, the shards' leaders spread one
//!   per region by placement; each acknowledged send is timed and filed under the region of
//!   the shard's leader and the client's node. Printed as a table
//!   (`cargo test -p mimid-tests --test wan_quic -- --nocapture`); asserted only are facts no
//!   scheduling can break: every send is acknowledged, and none sooner than the round trip
//!   from its leader to the nearest other voter (a majority of three needs one other fsync),
//!   plus, for a client on another node, the round trip between that node and the leader (the
//!   forwarded proposal and its answer).
//! - Losing a region: region C's node is killed; every room (one per shard) accepts writes
//!   through A and B once the shard C led elected there; C restarts from its data directory
//!   and every replica holds every acknowledged message, in one order.
//!
//! Timing: ticks of 20 ms (the test configuration's), heartbeats every 2 ticks, elections
//! after 25 to 50 ticks (0.5 to 1 s, several of the longest round trip, as the in-memory
//! test's), hibernation after 75. Waits are polls with a deadline; nothing sleeps to
//! synchronise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mimid_actors::ids::RoomId;
use mimid_node::client::{ClientError, Event, MimiClient, SubmitResult, UpdateResult};
use mimid_node::cluster_net::LinkDelays;
use mimid_tests::{add_users_when_led, create_room_when_led, TestCluster, WAIT};

/// The regions, by node index (node id = index + 1).
const REGIONS: [&str; 3] = ["A", "B", "C"];
const RTT_AB: Duration = Duration::from_millis(30);
const RTT_BC: Duration = Duration::from_millis(80);
const RTT_AC: Duration = Duration::from_millis(150);
const JITTER: Duration = Duration::from_millis(1);

/// Sends per (leader region, client region) cell that are not timed (the first after a
/// wake-up), then timed.
const WARM_UP: usize = 1;
const TIMED: usize = 7;

/// Longest the shards' leaderships may take to spread one per node, and a region's loss to
/// heal by election.
const SETTLE: Duration = Duration::from_secs(30);

/// Round trip between the regions of nodes `a` and `b` (indexes), jitter aside.
fn rtt(a: usize, b: usize) -> Duration {
    match (REGIONS[a.min(b)], REGIONS[a.max(b)]) {
        (x, y) if x == y => Duration::ZERO,
        ("A", "B") => RTT_AB,
        ("B", "C") => RTT_BC,
        ("A", "C") => RTT_AC,
        other => unreachable!("no RTT for {other:?}"),
    }
}

/// The commit floor of a leader on node `leader` with one voter on every node: the round trip
/// to its nearest other voter (quorum 2 of 3).
fn quorum_rtt(leader: usize) -> Duration {
    (0..REGIONS.len())
        .filter(|&other| other != leader)
        .map(|other| rtt(leader, other))
        .min()
        .expect("other voters")
}

/// What node `index` delays on its links: half the round trip to each other node.
fn delays_of(index: usize) -> LinkDelays {
    LinkDelays {
        one_way: (0..REGIONS.len())
            .filter(|&other| other != index)
            .map(|other| (other as u64 + 1, rtt(index, other) / 2))
            .collect(),
        jitter: JITTER,
        seed: 0x5EED_0009,
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The shard of `room`.
fn shard_of(cluster: &TestCluster, room: &RoomId) -> u64 {
    let member = cluster.running().next().expect("a running node");
    member.node().hub().shards().room_shard(room)
}

/// Waits until each node leads exactly one of the three shards (placement balances
/// leaderships, module docs of `cluster_ops::placement`); the leader's index by shard.
async fn leaders_spread(cluster: &TestCluster, rooms: &[RoomId]) -> Vec<usize> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut leaders = Vec::new();
        for room in rooms {
            leaders.push(cluster.leader_of(room).await);
        }
        let mut distinct = leaders.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() == REGIONS.len() {
            return leaders;
        }
        assert!(
            Instant::now() < deadline,
            "leaderships never spread one per node: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `client`'s push stream until it joined `room` (a Welcome, MIMI.md §6.4).
async fn expect_joined(client: &mut MimiClient, room: &RoomId) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "{} never joined {room}",
            client.id()
        );
        match client.next_event(WAIT).await.expect("push stream works") {
            Some(Event::Joined { room: joined, .. }) if &joined == room => return,
            Some(_) => {}
            None => panic!("{} got no Welcome for {room}", client.id()),
        }
    }
}

/// Submits `message` until it is accepted: a 503 (no leader during an election, a leader gone
/// mid-request) is resent as is, which is idempotent (MIMI.md §7.6). Returns the time from
/// the last attempt to its acknowledgement, and how many 503s came before.
async fn submit_until_accepted(
    client: &mut MimiClient,
    room: &RoomId,
    message: &[u8],
    deadline: Instant,
) -> (Duration, usize) {
    let mut refused = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: {room} not writable in time",
            client.id()
        );
        let started = Instant::now();
        match client.submit_raw(room, message.to_vec()).await {
            Ok(SubmitResult::Accepted { .. }) => return (started.elapsed(), refused),
            Ok(other) => panic!("{}: refused by the hub: {other:?}", client.id()),
            Err(ClientError::Status { status, reason }) => {
                assert_eq!(status, 503, "{}: {reason}", client.id());
                refused += 1;
            }
            Err(other) => panic!("{}: {other}", client.id()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message in `acked` is in every running replica of its room, and the replicas agree
/// on one order.
async fn every_replica_holds(cluster: &TestCluster, acked: &BTreeMap<RoomId, Vec<Vec<u8>>>) {
    let deadline = Instant::now() + WAIT;
    for (room, messages) in acked {
        loop {
            let logs: Vec<Vec<Vec<u8>>> = (0..REGIONS.len())
                .map(|index| cluster.application_messages(index, room))
                .collect();
            let complete = logs
                .iter()
                .all(|log| messages.iter().all(|message| log.contains(message)));
            if complete && logs.windows(2).all(|pair| pair[0] == pair[1]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{room}: a replica misses an acknowledged message or the replicas disagree \
                 (log lengths {:?}, {} acknowledged)",
                logs.iter().map(Vec::len).collect::<Vec<_>>(),
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Issue 9 item 4 over QUIC: commit latency per placement of the leader and the client, then
/// the loss of region C (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_latency_per_placement_and_a_lost_region_over_the_quic_transport() {
    let mut cluster = TestCluster::start_with(3, |config| {
        let region = REGIONS[config.node_id as usize - 1];
        config.locality = format!("region={region},zone={region}-1");
        config.cluster.shards = 3;
        config.cluster.replication_factor = 3;
        config.cluster.heartbeat_tick = 2;
        config.cluster.election_tick = 25;
        config.cluster.hibernate_after_ticks = 75;
    })
    .await;
    for index in 0..REGIONS.len() {
        cluster.set_link_delays(index, delays_of(index));
    }

    // One room per shard.
    let mut rooms: Vec<Option<RoomId>> = vec![None; REGIONS.len()];
    for n in 0.. {
        let room = cluster.room(&format!("wan-{n}"));
        let shard = shard_of(&cluster, &room) as usize;
        rooms[shard].get_or_insert(room);
        if rooms.iter().all(Option::is_some) {
            break;
        }
    }
    let rooms: Vec<RoomId> = rooms.into_iter().map(Option::unwrap).collect();
    let leaders = leaders_spread(&cluster, &rooms).await;

    // A client on every node, every client in every room.
    let mut clients = Vec::new();
    for (index, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let mut client = cluster.client(index, name, "phone", 3).await;
        client.connect_stream().await.expect("stream opens");
        clients.push(client);
    }
    for room in &rooms {
        let (creator, others) = clients.split_first_mut().expect("three clients");
        create_room_when_led(creator, room)
            .await
            .expect("room created");
        let added =
            add_users_when_led(creator, room, &[cluster.user("bob"), cluster.user("carol")])
                .await
                .expect("add works");
        assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
        for client in others {
            expect_joined(client, room).await;
        }
    }
    // Only the acknowledgements are measured; nobody reads pushes from now on.
    for client in &mut clients {
        client.disconnect_stream();
    }

    // Latency per (leader node, client node); rooms whose leadership moved during a send are
    // sent to again.
    let mut acked: BTreeMap<RoomId, Vec<Vec<u8>>> = BTreeMap::new();
    let mut samples: BTreeMap<(usize, usize), Vec<Duration>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0..WARM_UP + TIMED {
        for room in &rooms {
            for (index, client) in clients.iter_mut().enumerate() {
                loop {
                    let leader = cluster.leader_of(room).await;
                    let text = format!("{} round {round}", client.id());
                    let message = client.prepare_text(room, &text).expect("encrypts");
                    let (took, refused) =
                        submit_until_accepted(client, room, &message, deadline).await;
                    acked.entry(room.clone()).or_default().push(message);
                    if refused > 0 || cluster.leader_of(room).await != leader {
                        continue;
                    }
                    let floor = quorum_rtt(leader) + rtt(index, leader);
                    assert!(
                        took >= floor,
                        "a send from {} to {room} (leader in {}) was acknowledged after \
                         {took:?}, sooner than the round trips it needs ({floor:?})",
                        REGIONS[index],
                        REGIONS[leader]
                    );
                    if round >= WARM_UP {
                        samples.entry((leader, index)).or_default().push(took);
                    }
                    break;
                }
            }
        }
    }

    println!(
        "commit latency over QUIC, client send to acknowledgement (ms; RTT A-B {}, B-C {}, \
         A-C {}, jitter up to {} one way; one voter per region, fsync on; {} build, \
         three nodes in one process): p50 / max of {TIMED} sequential sends, [floor]",
        millis(RTT_AB),
        millis(RTT_BC),
        millis(RTT_AC),
        millis(JITTER),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("| leader | client in A | client in B | client in C |");
    println!("|---|---|---|---|");
    for (leader, region) in REGIONS.iter().enumerate() {
        let mut row = format!("| {region} |");
        for client in 0..REGIONS.len() {
            let cell = match samples.get_mut(&(leader, client)) {
                Some(latencies) => {
                    latencies.sort_unstable();
                    format!(
                        " {:.1} / {:.1} [{:.0}] |",
                        millis(latencies[latencies.len() / 2]),
                        millis(latencies[latencies.len() - 1]),
                        millis(quorum_rtt(leader) + rtt(client, leader))
                    )
                }
                None => " (leadership moved) |".to_owned(),
            };
            row.push_str(&cell);
        }
        println!("{row}");
    }
    // The placements the table is about: a shard led from A and one led from C, timed.
    for leader in [0, 2] {
        assert!(
            samples.contains_key(&(leader, leader)),
            "no timed send to a shard led from {}",
            REGIONS[leader]
        );
    }
    assert_eq!(leaders.len(), REGIONS.len());

    // Region C is lost: its node stops at once, its connections close. The room of the shard
    // C led is written first: its write waits for an election in A and B.
    const C: usize = 2;
    let mut order: Vec<usize> = (0..rooms.len()).collect();
    order.sort_by_key(|&shard| leaders[shard] != C);
    let cut = Instant::now();
    cluster.kill(C).await;
    let mut writable = Vec::new();
    let deadline = cut + SETTLE;
    for &shard in &order {
        let room = &rooms[shard];
        for index in [0, 1] {
            let client = &mut clients[index];
            let message = client
                .prepare_text(room, &format!("{} without C", client.id()))
                .expect("encrypts");
            let tried = cut.elapsed();
            let (_, refused) = submit_until_accepted(client, room, &message, deadline).await;
            acked.entry(room.clone()).or_default().push(message);
            writable.push((shard, REGIONS[index], tried, cut.elapsed(), refused));
        }
    }
    for room in &rooms {
        let leader = cluster.leader_of(room).await;
        assert_ne!(leader, C, "{room} led from the killed node");
    }
    println!("region C killed; one write to each shard's room from A, then B (ms since the kill):");
    println!("| shard | led from before | client in | first try | acknowledged | 503s first |");
    println!("|---|---|---|---|---|---|");
    for (shard, client, tried, acknowledged, refused) in &writable {
        println!(
            "| {shard} | {} | {client} | {:.0} | {:.0} | {refused} |",
            REGIONS[leaders[*shard]],
            millis(*tried),
            millis(*acknowledged)
        );
    }

    // C comes back from its data directory: nothing acknowledged is lost anywhere, and its
    // client writes again.
    cluster.restart(C).await;
    clients[C]
        .reconnect(cluster.endpoint(C))
        .await
        .expect("reconnects to its restarted node");
    let deadline = Instant::now() + SETTLE;
    for room in &rooms {
        let client = &mut clients[C];
        let message = client
            .prepare_text(room, &format!("{} back", client.id()))
            .expect("encrypts");
        submit_until_accepted(client, room, &message, deadline).await;
        acked.entry(room.clone()).or_default().push(message);
    }
    every_replica_holds(&cluster, &acked).await;
    cluster.shutdown().await;
}
