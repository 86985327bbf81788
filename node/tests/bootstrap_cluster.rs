//! CockroachDB-style bootstrap on the real binary (issue 4 item 5; ops/runbooks/bootstrap.md):
//! three `mimid start --join …` processes of one provider, each given one other node's
//! node-to-node address, wait (`/readyz` 503 "cluster not initialized") until `mimid init`
//! runs against one of them; then all three are ready, in one cluster with one cluster id, and
//! a second `mimid init` fails with a non-zero exit status.
//!
//! Certificates and the admin token come from `mimid cert` and `mimid admin-token` as an
//! operator makes them (README "A cluster of nodes"). The node-to-node ports must be known
//! before the processes start (they are each other's join addresses), so three free UDP ports
//! are found by binding `127.0.0.1:0` sockets and releasing them just before the spawns, as
//! `crash_cluster.rs` does. Waits are polls with deadlines.

#[allow(dead_code)]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;

use mimid_node::cluster_ops::{ClusterStatus, STATUS_PATH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use common::{http, wait_ready, WAIT};

const NODES: usize = 3;

/// Runs `mimid ARGS` in `dir`; its exit status, stdout and stderr.
fn mimid(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mimid"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("mimid runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `mimid ARGS` in `dir` and expects it to succeed; its stdout.
fn mimid_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = mimid(dir, args);
    assert!(ok, "mimid {args:?}: {stderr}");
    stdout
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Node `index`'s configuration file: no peers, its node-to-node listener on `port`.
fn config(root: &Path, index: usize, port: u16) -> String {
    let node = root.join(format!("node{}", index + 1));
    format!(
        "domain = \"a.example\"\n\
         node_id = {id}\n\
         data_dir = {data}\n\
         listen = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\n\
         admin_token_file = {token}\n\
         \n\
         [tls]\n\
         cert = {cert}\n\
         key = {key}\n\
         client_ca = {ca}\n\
         \n\
         [log]\n\
         level = \"warn\"\n\
         \n\
         [cluster]\n\
         shards = 4\n\
         tick_ms = 20\n\
         listen = \"127.0.0.1:{port}\"\n\
         \n\
         [cluster.tls]\n\
         cert = {node_cert}\n\
         key = {node_key}\n\
         ca = {cluster_ca}\n",
        id = index + 1,
        data = toml_path(&node.join("data")),
        token = toml_path(&root.join("admin.token")),
        cert = toml_path(&root.join("provider/provider.pem")),
        key = toml_path(&root.join("provider/provider.key.pem")),
        ca = toml_path(&root.join("ca/ca.pem")),
        node_cert = toml_path(&node.join("tls/node.pem")),
        node_key = toml_path(&node.join("tls/node.key.pem")),
        cluster_ca = toml_path(&root.join("cluster-ca/ca.pem")),
    )
}

/// Spawns `command` (a `mimid start --join`; killed when dropped) and reads its stdout until
/// the `mimid waiting for init: admin=http://…` line; the child and the admin address. Stdout
/// is read on afterwards, so the child never blocks on a full pipe.
async fn spawn_waiting(command: &mut Command) -> (Child, SocketAddr) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mimid starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let admin = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("mimid waiting for init: admin=http://") {
                let addr = rest.split_whitespace().next().expect("an address");
                return Some(addr.parse::<SocketAddr>().expect("admin address"));
            }
        }
        None
    })
    .await
    .expect("mimid waits for init within the deadline")
    .expect("mimid printed that it waits for init");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, admin)
}

/// Issue 4 item 5 on real processes: `mimid start --join` x3, `mimid init`, one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mimid_start_join_then_mimid_init_forms_one_cluster() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path();
    mimid_ok(root, &["cert", "create-ca", "--out", "ca"]);
    mimid_ok(
        root,
        &[
            "cert",
            "create-provider",
            "a.example",
            "--ca",
            "ca",
            "--out",
            "provider",
        ],
    );
    mimid_ok(root, &["cert", "create-ca", "--out", "cluster-ca"]);
    for id in 1..=NODES {
        let out = format!("node{id}/tls");
        mimid_ok(
            root,
            &[
                "cert",
                "create-node",
                "127.0.0.1",
                "--ca",
                "cluster-ca",
                "--out",
                &out,
            ],
        );
    }
    mimid_ok(root, &["admin-token", "--out", "admin.token"]);
    let token = std::fs::read_to_string(root.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_owned();

    let sockets: Vec<UdpSocket> = (0..NODES)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket"))
        .collect();
    let ports: Vec<u16> = sockets
        .iter()
        .map(|socket| socket.local_addr().expect("bound").port())
        .collect();
    drop(sockets);
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let path = root.join(format!("node{}.toml", index + 1));
        std::fs::write(&path, config(root, index, ports[index])).expect("configuration");
        // Node 1 knows node 2; nodes 2 and 3 know node 1.
        let join = format!("127.0.0.1:{}", ports[if index == 0 { 1 } else { 0 }]);
        let node = spawn_waiting(
            Command::new(env!("CARGO_BIN_EXE_mimid"))
                .arg("start")
                .arg("--config")
                .arg(&path)
                .arg("--join")
                .arg(&join)
                .stderr(Stdio::null()),
        )
        .await;
        nodes.push(node);
    }
    for (_, admin) in &nodes {
        let (code, body) = http(*admin, "GET", "/readyz", None)
            .await
            .expect("readyz answers");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("cluster not initialized"), "{body}");
    }

    let token_file = root.join("admin.token");
    let token_file = token_file.to_str().expect("a UTF-8 path");
    let first = nodes[0].1.to_string();
    let stdout = mimid_ok(
        root,
        &["init", "--host", &first, "--token-file", token_file],
    );
    assert!(stdout.contains("initialized by node 1"), "{stdout}");
    for (index, (_, admin)) in nodes.iter().enumerate() {
        wait_ready(*admin, &format!("node {}", index + 1)).await;
    }
    // Node 2 lists the registry of its own replica of shard 0 and the nodes that answered
    // it: a node registers through whichever node it reached, and node 2's replica (or its
    // status call to node 3) may be a moment behind node 3's readiness. Ask again until it
    // names all three.
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let (code, body) = http(nodes[1].1, "GET", STATUS_PATH, Some(&token))
            .await
            .expect("status answers");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let status: ClusterStatus = serde_json::from_slice(&body).expect("a cluster status");
        let ids: Vec<u64> = status.nodes.iter().map(|node| node.id).collect();
        if ids == [1, 2, 3] {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 does not list nodes 1 to 3: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let cluster_id = status.cluster_id.clone().expect("a cluster id");
    assert!(stdout.contains(&cluster_id), "{stdout}");

    let second = nodes[2].1.to_string();
    let (ok, _, stderr) = mimid(
        root,
        &["init", "--host", &second, "--token-file", token_file],
    );
    assert!(!ok, "a second init succeeded");
    assert!(
        stderr.contains("409")
            && stderr.contains(&format!(
                "cluster already initialized (cluster id {cluster_id})"
            )),
        "{stderr}"
    );
    for (mut child, _) in nodes {
        child.kill().await.expect("stopped");
    }
}
