//! Locality-aware placement (issue 9) on in-process nodes over loopback (real quinn between
//! nodes, raft-rs in sled per node): nodes started with a `locality` record it in the node
//! registry, `mimid node status` shows it, and the placement driver spreads every shard's
//! voters over regions and zones and moves its leaders to `cluster.leader_region`.
//!
//! Waits are polls with a deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mimid_node::admin::admin_call;
use mimid_node::cluster_ops::{render_status, ClusterStatus, STATUS_PATH};
use mimid_tests::TestCluster;

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
