//! The shared harness of the integration tests: a real node (quinn on loopback, sled in a
//! temporary directory, openmls clients) started and restarted on demand, and a provider run
//! as a cluster of such nodes ([`TestCluster`]). Nodes run as in production with an admin token
//! (`admin_token_file`, issue 6): tests that call the admin listener's operator routes send
//! [`TestNode::admin_token`] or [`TestCluster::admin_token`].

pub mod fuzz_checks;
pub mod sim;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mimid_actors::hub::residency::RoomStatus;
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::admin::AdminToken;
use mimid_node::certs::{
    CertAuthority, SubjectName, CA_VALIDITY, LEAF_VALIDITY, NODE_STEM, PROVIDER_STEM,
};
use mimid_node::client::{Endpoint, Event, MimiClient, UpdateResult};
use mimid_node::cluster_net::LinkDelays;
use mimid_node::config::{dev_cert_dir, ClusterTlsSettings, Config, TlsFiles, TlsSettings};
use mimid_node::federation::FederationService;
use mimid_node::server::{start, start_joining, start_with_service, Joining, Node};
use rustls::RootCertStore;

/// How long a test waits for something that should happen promptly before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A single-node provider (`localhost` with dev certificates, or a named provider with
/// certificates from a test CA) in its own temporary data directory.
pub struct TestNode {
    pub node: Option<Node>,
    pub config: Config,
    /// The server-to-server service; `None` runs the node's own.
    service: Option<Arc<dyn FederationService>>,
    _dir: Option<tempfile::TempDir>,
}

/// How [`TestNode::start_provider_with`] sets a provider up.
#[derive(Default)]
pub struct ProviderSetup {
    /// dNSNames of the provider certificate besides the domain (a certificate that also
    /// covers other names lets tests send requests that are not addressed to the provider).
    pub alt_names: Vec<String>,
    /// The server-to-server service, e.g. one that records what it is handed; `None` runs
    /// the node's own.
    pub service: Option<Arc<dyn FederationService>>,
}

/// The configuration tests use: loopback ports chosen by the OS, small limits so edge paths
/// are reachable, fast ticks.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("valid address"),
        admin_listen: "127.0.0.1:0".parse().expect("valid address"),
        ..Config::default()
    };
    config.cluster.shards = 4;
    config.cluster.tick_ms = 20;
    config.limits.idle_room_secs = 1;
    config.limits.stream_heartbeat_ms = 100;
    // Tests reach only the providers they start (on loopback), never DNS.
    config.federation.resolve_dns = false;
    // A stopped peer's old port may be taken by another test's client socket, which drops
    // packets silently: a request to it then waits for this timeout before the retry that uses
    // the peer's new address.
    config.federation.request_timeout_ms = 3_000;
    config
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    /// Starts with a configuration changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = test_config(dir.path());
        config.admin_token_file = Some(admin_token_file(dir.path()));
        edit(&mut config);
        let mut node = TestNode {
            node: None,
            config,
            service: None,
            _dir: Some(dir),
        };
        node.restart().await;
        node
    }

    /// Starts provider `domain` with a certificate for it issued by `ca`, trusting `ca` for
    /// peers' certificates (MIMI protocol-06 §4.1 mutual TLS).
    pub async fn start_provider(domain: &str, ca: &CertAuthority) -> TestNode {
        Self::start_provider_with(domain, ca, ProviderSetup::default(), |_| {}).await
    }

    /// [`TestNode::start_provider`] with `setup`, and the configuration changed by `edit`.
    pub async fn start_provider_with(
        domain: &str,
        ca: &CertAuthority,
        setup: ProviderSetup,
        edit: impl FnOnce(&mut Config),
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut names = vec![domain];
        names.extend(setup.alt_names.iter().map(String::as_str));
        let tls = provider_tls_files(&dir.path().join("tls"), &names, ca, ca);
        let mut config = test_config(dir.path());
        config.admin_token_file = Some(admin_token_file(dir.path()));
        config.domain = domain.to_owned();
        config.tls = TlsSettings {
            cert: Some(tls.cert),
            key: Some(tls.key),
            client_ca: Some(tls.client_ca),
        };
        edit(&mut config);
        let mut node = TestNode {
            node: None,
            config,
            service: setup.service,
            _dir: Some(dir),
        };
        node.restart().await;
        node
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// The node's admin token (`admin_token_file`), for its operator routes.
    pub fn admin_token(&self) -> AdminToken {
        let path = self
            .config
            .admin_token_file
            .as_ref()
            .expect("the node has an admin token file");
        AdminToken::load(path).expect("the admin token file holds a token")
    }

    /// The node's admin listener, `HOST:PORT`.
    pub fn admin(&self) -> String {
        self.node().admin_addr().to_string()
    }

    /// `POST path` with the JSON `body` on the node's admin listener, with its admin token:
    /// the status and the body.
    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        let token = self.admin_token();
        let (code, answer) = mimid_node::admin::admin_call(
            &self.admin(),
            Some(&token),
            "POST",
            path,
            body.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (code, String::from_utf8_lossy(&answer).into_owned())
    }

    /// Stops the node (if running) and starts it again on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        let node = match self.service.clone() {
            Some(service) => start_with_service(self.config.clone(), service).await,
            None => start(self.config.clone()).await,
        }
        .expect("node starts");
        wait_ready(&node).await;
        self.node = Some(node);
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node is running")
    }

    /// How clients reach the node now (its port changes with every restart).
    pub fn endpoint(&self) -> Endpoint {
        let (ca, server_name) = match &self.config.tls.client_ca {
            Some(ca) => (ca.clone(), self.config.domain.clone()),
            None => (
                dev_cert_dir(&self.config.data_dir).join(mimid_node::certs::CA_CERT_FILE),
                "localhost".to_owned(),
            ),
        };
        Endpoint {
            addr: self.node().quic_addr(),
            server_name,
            roots: read_roots(&ca),
        }
    }

    /// Registers a client `mimi://<domain>/d/<user>/<device>` with `key_packages` published.
    pub async fn client(&self, user: &str, device: &str, key_packages: usize) -> MimiClient {
        register_client(
            self.endpoint(),
            &self.config.domain,
            user,
            device,
            key_packages,
        )
        .await
    }

    /// The replicated bytes of a room (its snapshot): equal bytes mean nothing changed.
    pub fn room_digest(&self, room: &RoomId) -> Vec<u8> {
        let hub = self.node().hub();
        let shard = hub.shards().for_room(room).read();
        shard
            .room(room)
            .map(|state| state.to_snapshot())
            .unwrap_or_default()
    }

    /// Stops the node, keeping its data directory for a later [`TestNode::restart`].
    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// Creates a new admin token in `dir/admin.token` (where `mimid dev` keeps it); its path.
pub fn admin_token_file(dir: &Path) -> PathBuf {
    let path = dir.join("admin.token");
    AdminToken::create(&path).expect("admin token created");
    path
}

/// Writes into `dir` (which must not hold them yet) a certificate for `names` issued by
/// `issuer`, its key, and `trusted`'s CA certificate as the trust anchor for peers.
pub fn provider_tls_files(
    dir: &Path,
    names: &[&str],
    issuer: &CertAuthority,
    trusted: &CertAuthority,
) -> TlsFiles {
    let names: Vec<SubjectName> = names
        .iter()
        .map(|name| SubjectName::Dns((*name).to_owned()))
        .collect();
    let leaf = issuer
        .issue(&names, std::time::SystemTime::now(), LEAF_VALIDITY)
        .expect("certificate issued")
        .save(dir, PROVIDER_STEM)
        .expect("certificate saved");
    let ca = trusted.save(&dir.join("ca")).expect("CA saved");
    TlsFiles {
        cert: leaf.cert,
        key: leaf.key,
        client_ca: ca.cert,
    }
}

/// How long a node may take to be ready: elections, and for a node joining a cluster the
/// placement steps and snapshots that give it its replicas, take long on a loaded machine.
const READY_WAIT: Duration = Duration::from_secs(60);

async fn wait_ready(node: &Node) {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    let url = format!("http://{}/readyz", node.admin_addr());
    loop {
        let last = match http_get(&url).await {
            Some((200, _)) => return,
            answer => answer,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} not ready within {READY_WAIT:?}: {last:?}",
            node.admin_addr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET on loopback, returning the status code.
pub async fn http_get_status(url: &str) -> Option<u16> {
    http_get(url).await.map(|(status, _)| status)
}

/// A minimal HTTP/1.1 GET on loopback, returning the status code and body.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn user(name: &str) -> UserId {
    UserId::parse(&format!("mimi://localhost/u/{name}")).expect("valid user id")
}

pub fn room(name: &str) -> RoomId {
    RoomId::parse(&format!("mimi://localhost/r/{name}")).expect("valid room id")
}

/// Points every provider's peer resolver at every other provider's current address (tests
/// start providers on port 0; call again after a restart).
pub fn connect_providers(providers: &[&TestNode]) {
    for from in providers {
        for to in providers {
            if from.config.domain != to.config.domain {
                from.node()
                    .peers()
                    .set_address(&to.config.domain, to.node().quic_addr());
            }
        }
    }
}

impl TestNode {
    /// The application messages (MLSMessage bytes) of `room` in the order this provider holds
    /// them: the hub's log for a hosted room, the follower's mirror otherwise.
    pub fn application_messages(&self, room: &RoomId) -> Vec<Vec<u8>> {
        let hub = self.node().hub();
        let shard = hub.shards().for_room(room).read();
        let items = match (shard.room(room), shard.mirror(room)) {
            (Some(state), _) => state.items_after(0).to_vec(),
            (None, Some(mirror)) => mirror.items_after(0).to_vec(),
            (None, None) => Vec::new(),
        };
        items
            .into_iter()
            .filter_map(|item| match item.body {
                mimid_actors::room::log::ItemBody::Application { message } => Some(message),
                _ => None,
            })
            .collect()
    }
}

/// The value of `series` (name with labels, as exported) in a Prometheus text scrape.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes the node's `/metrics`.
pub async fn scrape(node: &TestNode) -> String {
    let (status, body) = http_get(&format!("http://{}/metrics", node.node().admin_addr()))
        .await
        .expect("metrics scrape");
    assert_eq!(status, 200);
    body
}

/// One provider run as a cluster of in-process nodes (ARCHITECTURE.md "Cluster"): the same
/// domain and provider certificate on every node, each node with its own data directory, a
/// node certificate from a cluster CA, and its node-to-node listener on `127.0.0.1:0`. Nodes
/// learn each other's (changing) addresses through [`Node::set_cluster_peer`].
pub struct TestCluster {
    /// The nodes; node id = index + 1. A stopped node keeps its configuration and data.
    pub nodes: Vec<ClusterNode>,
    /// The provider's domain.
    pub domain: String,
    /// The CA of the provider certificate, trusted for peers' certificates too: other
    /// providers started with it ([`TestNode::start_provider`]) federate with this one.
    pub provider_ca: CertAuthority,
    provider_ca_cert: PathBuf,
    /// The provider certificate every node serves.
    provider: TlsFiles,
    /// The cluster CA, which issues node certificates ([`TestCluster::add_node`]).
    cluster_ca: CertAuthority,
    cluster_ca_cert: PathBuf,
    /// The admin token file every node is configured with (one per provider, like its
    /// configuration).
    admin_token_file: PathBuf,
    /// Nodes started with `cluster.join` that wait for their cluster
    /// ([`TestCluster::start_joining`]), by index; `None` once running (or never waiting).
    waiting: Vec<Option<Joining>>,
    /// Fault injection: what each node (by index) delays on its links, set again at every
    /// start ([`TestCluster::set_link_delays`]).
    link_delays: std::collections::BTreeMap<usize, LinkDelays>,
    _dir: tempfile::TempDir,
}

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    /// Its configuration (data directory, node id, certificates).
    pub config: Config,
    /// The running node; `None` while stopped.
    pub node: Option<Node>,
}

impl ClusterNode {
    pub fn node(&self) -> &Node {
        self.node
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is running", self.config.node_id))
    }

    pub fn id(&self) -> mimid_cluster::NodeId {
        self.config.node_id
    }
}

impl TestCluster {
    /// Starts `count` nodes of provider `a.example` (voters `1..=count`), introduces them to
    /// each other and waits until every node is ready.
    pub async fn start(count: u64) -> TestCluster {
        Self::start_with(count, |_| {}).await
    }

    /// [`TestCluster::start`] with every node's configuration changed by `edit`.
    pub async fn start_with(count: u64, edit: impl Fn(&mut Config)) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let domain = "a.example".to_owned();
        let now = std::time::SystemTime::now();
        let provider_ca = CertAuthority::generate(now, LEAF_VALIDITY).expect("provider CA");
        let provider = provider_tls_files(
            &dir.path().join("provider"),
            &[&domain],
            &provider_ca,
            &provider_ca,
        );
        let cluster_ca = CertAuthority::generate(now, LEAF_VALIDITY).expect("cluster CA");
        let cluster_ca_cert = cluster_ca
            .save(&dir.path().join("cluster-ca"))
            .expect("cluster CA saved")
            .cert;
        let admin_token_file = admin_token_file(dir.path());
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            domain,
            provider_ca,
            provider_ca_cert: provider.client_ca.clone(),
            provider,
            cluster_ca,
            cluster_ca_cert,
            admin_token_file,
            waiting: Vec::new(),
            link_delays: Default::default(),
            _dir: dir,
        };
        for id in 1..=count {
            let mut config = cluster.node_config(id);
            config.cluster.voters = (1..=count).collect();
            edit(&mut config);
            cluster.nodes.push(ClusterNode { config, node: None });
        }
        for index in 0..cluster.nodes.len() {
            cluster.launch(index).await;
        }
        cluster.introduce();
        cluster.wait_ready().await;
        cluster
    }

    /// The configuration of node `id`: its own data directory and a node certificate for
    /// 127.0.0.1 from the cluster CA, the provider's certificate, the node-to-node listener on
    /// `127.0.0.1:0`, no peers (they are introduced once their ports are known).
    fn node_config(&self, id: u64) -> Config {
        let data = self._dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&data).expect("data directory");
        let loopback = SubjectName::Ip(std::net::Ipv4Addr::LOCALHOST.into());
        let node_cert = self
            .cluster_ca
            .issue(
                std::slice::from_ref(&loopback),
                std::time::SystemTime::now(),
                LEAF_VALIDITY,
            )
            .expect("node certificate")
            .save(&data.join("cluster-tls"), NODE_STEM)
            .expect("node certificate saved");
        let mut config = test_config(&data);
        config.admin_token_file = Some(self.admin_token_file.clone());
        config.domain = self.domain.clone();
        config.node_id = id;
        config.tls = TlsSettings {
            cert: Some(self.provider.cert.clone()),
            key: Some(self.provider.key.clone()),
            client_ca: Some(self.provider.client_ca.clone()),
        };
        config.cluster.listen = Some("127.0.0.1:0".parse().expect("valid address"));
        config.cluster.tls = ClusterTlsSettings {
            cert: Some(node_cert.cert),
            key: Some(node_cert.key),
            ca: Some(self.cluster_ca_cert.clone()),
        };
        config
    }

    /// Starts a new node (the next id) that joins the running cluster
    /// (`cluster.join_existing`), configured with the running nodes' current node-to-node
    /// addresses as `cluster.peers` and changed by `edit`; returns its index. It is not
    /// introduced to the others, and it is not ready until the cluster placed it on every
    /// shard: register it (`mimid node add`) and wait.
    pub async fn add_node(&mut self, edit: impl Fn(&mut Config)) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let mut config = self.node_config(id);
        config.cluster.join_existing = true;
        for member in self.running() {
            let addr = member.node().cluster_addr().expect("clustered");
            config.cluster.peers.insert(member.id().to_string(), addr);
        }
        edit(&mut config);
        self.nodes.push(ClusterNode { config, node: None });
        let index = self.nodes.len() - 1;
        self.launch(index).await;
        index
    }

    /// The admin listener of node `index`, `HOST:PORT`.
    pub fn admin(&self, index: usize) -> String {
        self.nodes[index].node().admin_addr().to_string()
    }

    /// The provider's admin token (every node's `admin_token_file`).
    pub fn admin_token(&self) -> AdminToken {
        AdminToken::load(&self.admin_token_file).expect("the admin token file holds a token")
    }

    /// `POST path` with the JSON `body` on node `index`'s admin listener, with the admin
    /// token (e.g. `/admin/rooms/status`, `/admin/shards/split`): the status and the body.
    pub async fn admin_post(&self, index: usize, path: &str, body: &str) -> (u16, String) {
        let token = self.admin_token();
        let (code, answer) = mimid_node::admin::admin_call(
            &self.admin(index),
            Some(&token),
            "POST",
            path,
            body.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path} on node index {index}: {e}"));
        (code, String::from_utf8_lossy(&answer).into_owned())
    }

    /// `POST /admin/rooms/status` of `room` on node `index`. A 503 (the status reads shard 0
    /// after a read barrier, which answers so while shard 0 elects a leader) is asked again
    /// until [`WAIT`] has passed; any other answer than 200 fails the test.
    pub async fn room_status(&self, index: usize, room: &RoomId) -> RoomStatus {
        let body = serde_json::json!({ "room": room.to_string() }).to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (code, answer) = self
                .admin_post(index, mimid_node::admin::ROOM_STATUS_PATH, &body)
                .await;
            if code == 503 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert_eq!(
                code, 200,
                "room status of {room} on node index {index}: {answer}"
            );
            return serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        }
    }

    /// Starts node `index` (stopped) from its data directory, without waiting; its link
    /// delays apply before it is introduced to the others.
    async fn launch(&mut self, index: usize) {
        let member = &mut self.nodes[index];
        assert!(member.node.is_none(), "node {} is running", member.id());
        let node = start(member.config.clone()).await.expect("node starts");
        if let Some(delays) = self.link_delays.get(&index) {
            node.set_link_delays(delays.clone()).expect("clustered");
        }
        member.node = Some(node);
    }

    /// Fault injection (a WAN in one process, `tests/tests/wan_quic.rs`): node `index` delays
    /// every frame and RPC it sends to the nodes `delays` names, now if it runs and again
    /// whenever it starts.
    pub fn set_link_delays(&mut self, index: usize, delays: LinkDelays) {
        if let Some(node) = &self.nodes[index].node {
            node.set_link_delays(delays.clone()).expect("clustered");
        }
        self.link_delays.insert(index, delays);
    }

    /// Tells every running node every other running node's current node-to-node address.
    pub fn introduce(&self) {
        for from in self.running() {
            for to in self.running() {
                if from.id() != to.id() {
                    let addr = to.node().cluster_addr().expect("clustered");
                    from.node()
                        .set_cluster_peer(to.id(), addr)
                        .expect("peer accepted");
                }
            }
        }
    }

    /// The running nodes.
    pub fn running(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|member| member.node.is_some())
    }

    /// The shard layout, as the first running node has it (every node has the same).
    pub fn shards(&self) -> &mimid_actors::shard::Shards {
        self.running()
            .next()
            .expect("a running node")
            .node()
            .hub()
            .shards()
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        for member in self.running() {
            wait_ready(member.node()).await;
        }
    }

    /// Starts node `index` again from its data directory (on new ports), introduces it and
    /// waits until every running node is ready.
    pub async fn restart(&mut self, index: usize) {
        self.launch(index).await;
        self.introduce();
        self.wait_ready().await;
    }

    /// Starts every stopped node again from its data directory (on new ports), introduces
    /// them and waits until every node is ready (a quorum must be back before any is).
    pub async fn restart_stopped(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].node.is_none() {
                self.launch(index).await;
            }
        }
        self.introduce();
        self.wait_ready().await;
    }

    /// Stops node `index` gracefully, keeping its data directory.
    pub async fn stop(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].node.take() {
            node.shutdown().await;
        }
    }

    /// Stops node `index` at once ([`Node::kill`], the in-process stand-in for `kill -9`).
    pub async fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].node.take() {
            node.kill().await;
        }
    }

    /// The index of the node that leads `room`'s shard, as the running nodes agree on it.
    pub async fn leader_of(&self, room: &RoomId) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let named: std::collections::BTreeSet<Option<u64>> = self
                .running()
                .map(|member| {
                    let hub = member.node().hub();
                    let shard = hub.shards().room_shard(room);
                    member.node().cluster_handle().leader(shard)
                })
                .collect();
            if let [Some(leader)] = named.into_iter().collect::<Vec<_>>()[..] {
                if let Some(index) = self.nodes.iter().position(|m| m.id() == leader) {
                    if self.nodes[index].node.is_some() {
                        return index;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader for {room} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (60 s at the most) until every shard has a leader the running nodes agree on, no
    /// running node leads two shards more than another, and no leadership moved for a second.
    /// The placement driver moves a shard's leadership for balance once the shard was quiet for
    /// seconds, so a cluster just started may move some while a test begins, and a request that
    /// meets the hand-over is answered 503: for a Commit, with an outcome the client cannot
    /// tell (the entry may still be applied), so it cannot simply be made again. For clusters
    /// whose every running node may lead every shard (no `cluster.leader_region`, each node a
    /// voter of each shard).
    pub async fn wait_leaders_settled(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = None;
        let mut since = tokio::time::Instant::now();
        loop {
            let shards = self.shards().count();
            let leaders: Vec<Option<u64>> = (0..shards)
                .map(|shard| {
                    let named: std::collections::BTreeSet<Option<u64>> = self
                        .running()
                        .map(|member| member.node().cluster_handle().leader(shard))
                        .collect();
                    match named.into_iter().collect::<Vec<_>>()[..] {
                        [Some(leader)] => Some(leader),
                        _ => None,
                    }
                })
                .collect();
            let leads: Vec<usize> = self
                .running()
                .map(|member| leaders.iter().filter(|&&l| l == Some(member.id())).count())
                .collect();
            let balanced = leaders.iter().all(Option::is_some)
                && leads
                    .iter()
                    .max()
                    .zip(leads.iter().min())
                    .is_some_and(|(most, fewest)| *most < fewest + 2);
            if !balanced || last.as_ref() != Some(&leaders) {
                since = tokio::time::Instant::now();
            }
            if balanced && since.elapsed() >= Duration::from_secs(1) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "leaderships never settled: leaders by shard {leaders:?}"
            );
            last = Some(leaders);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`TestCluster::leader_of`] `room`'s shard and the term it leads in, as its own replica
    /// has them. The same pair asked again later means that node led the shard all along (a
    /// node elected again leads in a higher term), so a test can tell whether leadership moved
    /// in between (placement moves quiet shards' leaders for balance; a loaded machine may
    /// hold an election).
    pub async fn leader_and_term(&self, room: &RoomId) -> (usize, u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let index = self.leader_of(room).await;
            let member = &self.nodes[index];
            let node = member.node();
            let shard = node.hub().shards().room_shard(room);
            if let Some(status) = node.cluster_handle().shard_status(shard) {
                if status.leader == Some(member.id()) {
                    return (index, status.term);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader of {room} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How clients reach node `index` now.
    pub fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint {
            addr: self.nodes[index].node().quic_addr(),
            server_name: self.domain.clone(),
            roots: read_roots(&self.provider_ca_cert),
        }
    }

    /// Alice (node `a`) creates `room` and adds Bob (node `b`) and Carol (node `c`), each
    /// registered with two KeyPackages; all three have their push streams open on their
    /// nodes, and Bob and Carol have taken their Welcome.
    pub async fn three_members(&self, room: &RoomId, [a, b, c]: [usize; 3]) -> [MimiClient; 3] {
        let mut alice = self.client(a, "alice", "phone", 2).await;
        let mut bob = self.client(b, "bob", "phone", 2).await;
        let mut carol = self.client(c, "carol", "laptop", 2).await;
        for client in [&mut alice, &mut bob, &mut carol] {
            client.connect_stream().await.expect("stream opens");
        }
        create_room_when_led(&mut alice, room)
            .await
            .expect("room created");
        add_and_expect_joined(&mut alice, room, &mut [&mut bob, &mut carol]).await;
        [alice, bob, carol]
    }

    /// Registers `mimi://a.example/d/<user>/<device>` through node `index`, with
    /// `key_packages` published.
    pub async fn client(
        &self,
        index: usize,
        user: &str,
        device: &str,
        key_packages: usize,
    ) -> MimiClient {
        register_client(
            self.endpoint(index),
            &self.domain,
            user,
            device,
            key_packages,
        )
        .await
    }

    /// A user of this provider.
    pub fn user(&self, name: &str) -> UserId {
        UserId::parse(&format!("mimi://{}/u/{name}", self.domain)).expect("valid user id")
    }

    /// A room hosted by this provider.
    pub fn room(&self, name: &str) -> RoomId {
        RoomId::parse(&format!("mimi://{}/r/{name}", self.domain)).expect("valid room id")
    }

    /// The indexes of the running nodes that hold a replica of `room`'s shard (with
    /// `cluster.replicas = "r"`, three of them; a node that does not serves it through
    /// them).
    pub fn holders_of(&self, room: &RoomId) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, member)| {
                member.node.as_ref().is_some_and(|node| {
                    let hub = node.hub();
                    hub.holds(hub.shards().room_shard(room))
                })
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// With `cluster.replicas = "r"`: waits (60 s at the most) until shard 0 is on every
    /// running node and each of the other `shards` on `replicas` voters only, every node's hub
    /// agrees which shards it holds, and every node's copy of shard 0 names every shard's
    /// leader and members as its leader has them. Returns each shard's members (sorted), by
    /// shard.
    pub async fn wait_placed(&self, shards: u64, replicas: usize) -> Vec<Vec<u64>> {
        let nodes = self.running().count();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Each shard's leader and its voters and learners, as the leader's replica has them.
            let views: Vec<_> = (0..shards)
                .map(|shard| {
                    self.running().find_map(|member| {
                        let status = member.node().cluster_handle().shard_status(shard)?;
                        (status.leader == Some(member.id()))
                            .then(|| (member.id(), status.voters, status.learners))
                    })
                })
                .collect();
            let settled = views.iter().enumerate().all(|(shard, view)| {
                view.as_ref().is_some_and(|(_, voters, learners)| {
                    let members = voters.len() + learners.len();
                    voters.len() == replicas && members == if shard == 0 { nodes } else { replicas }
                })
            });
            if settled {
                let members: Vec<Vec<u64>> = views
                    .iter()
                    .map(|view| {
                        let (_, voters, learners) = view.as_ref().expect("settled");
                        let mut all: Vec<u64> = voters.iter().chain(learners).copied().collect();
                        all.sort_unstable();
                        all
                    })
                    .collect();
                let agreed = self.running().all(|member| {
                    let hub = member.node().hub();
                    let descriptors = hub.shard_descriptors();
                    (0..shards).all(|shard| {
                        let (leader, voters, learners) =
                            views[shard as usize].clone().expect("settled");
                        let recorded = descriptors.get(shard).is_some_and(|d| {
                            d.leader == leader && d.voters == voters && d.learners == learners
                        });
                        recorded
                            && hub.holds(shard) == members[shard as usize].contains(&member.id())
                    })
                });
                if agreed {
                    return members;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "placement on {replicas} nodes per shard never settled: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The application messages of `room` in node `index`'s replica, in log order.
    pub fn application_messages(&self, index: usize, room: &RoomId) -> Vec<Vec<u8>> {
        replica_messages(self.nodes[index].node(), room)
    }

    /// The replicated bytes of `room` in node `index`'s replica.
    pub fn room_digest(&self, index: usize, room: &RoomId) -> Vec<u8> {
        let hub = self.nodes[index].node().hub();
        let shard = hub.shards().for_room(room).read();
        shard
            .room(room)
            .map(|state| state.to_snapshot())
            .unwrap_or_default()
    }

    /// Stops every running node gracefully.
    pub async fn shutdown(mut self) {
        for index in 0..self.nodes.len() {
            self.stop(index).await;
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, then released): for a node whose
/// node-to-node address other nodes must know before it starts (`cluster.join`).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A cluster formed with `cluster.join` and `mimid init` (issue 4 bootstrap).
impl TestCluster {
    /// Starts `count` nodes of provider `a.example` with `cluster.join` and without any Raft
    /// state: node index `i` joins the nodes `join_of(i)` (indexes; its own is allowed), each
    /// node's node-to-node listener on a port that was free a moment ago. None is initialized:
    /// each waits ([`TestCluster::waiting`]) until `POST /admin/cluster/init` reaches one of
    /// them; then [`TestCluster::await_running`].
    pub async fn start_joining(
        count: u64,
        join_of: impl Fn(usize) -> Vec<usize>,
        edit: impl Fn(&mut Config),
    ) -> TestCluster {
        let mut cluster = Self::start_with(0, |_| {}).await;
        let ports: Vec<u16> = (0..count).map(|_| free_udp_port()).collect();
        let addr = |index: usize| std::net::SocketAddr::from(([127, 0, 0, 1], ports[index]));
        for index in 0..count as usize {
            let join: Vec<_> = join_of(index).into_iter().map(addr).collect();
            let mut config = cluster.join_config(index as u64 + 1, &join);
            config.cluster.listen = Some(addr(index));
            edit(&mut config);
            cluster.nodes.push(ClusterNode { config, node: None });
        }
        for index in 0..count as usize {
            cluster.start_waiting(index).await;
        }
        cluster
    }

    /// The configuration of a new node `id` of this provider (its data directory, a node
    /// certificate from the cluster CA) joining the nodes at `join`, its node-to-node
    /// listener on `127.0.0.1:0`.
    pub fn join_config(&self, id: u64, join: &[std::net::SocketAddr]) -> Config {
        let mut config = self.node_config(id);
        config.cluster.join = join.to_vec();
        config
    }

    /// Starts a node with `config` (`cluster.join`) without waiting for its cluster: it is
    /// [`TestCluster::waiting`] until it runs. Returns its index.
    pub async fn add_joining(&mut self, config: Config) -> usize {
        self.nodes.push(ClusterNode { config, node: None });
        let index = self.nodes.len() - 1;
        self.start_waiting(index).await;
        index
    }

    async fn start_waiting(&mut self, index: usize) {
        let joining = start_joining(self.nodes[index].config.clone())
            .await
            .expect("node starts");
        self.waiting.resize_with(self.nodes.len(), || None);
        self.waiting[index] = Some(joining);
    }

    /// Node `index` while it waits for its cluster (started by [`TestCluster::start_joining`]
    /// or [`TestCluster::add_joining`]).
    pub fn waiting(&self, index: usize) -> &Joining {
        self.waiting
            .get(index)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("node index {index} is not waiting"))
    }

    /// Waits until every waiting node runs (each knows its cluster id and started).
    pub async fn await_running(&mut self) {
        for index in 0..self.waiting.len() {
            if let Some(joining) = self.waiting[index].take() {
                let node = tokio::time::timeout(READY_WAIT, joining.running())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("node index {index} not running within {READY_WAIT:?}")
                    })
                    .expect("node starts");
                self.nodes[index].node = Some(node);
            }
        }
    }
}

/// The application messages of a hosted `room` in `node`'s replica, in log order.
fn replica_messages(node: &Node, room: &RoomId) -> Vec<Vec<u8>> {
    let hub = node.hub();
    let shard = hub.shards().for_room(room).read();
    shard
        .room(room)
        .map(|state| state.items_after(0).to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| match item.body {
            mimid_actors::room::log::ItemBody::Application { message } => Some(message),
            _ => None,
        })
        .collect()
}

/// The trust roots in the PEM file `ca`.
fn read_roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("CA {} readable: {e}", ca.display()));
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("valid PEM")).expect("valid CA");
    }
    Arc::new(roots)
}

/// Registers `mimi://<domain>/d/<user>/<device>` at `endpoint`, with `key_packages` published.
async fn register_client(
    endpoint: Endpoint,
    domain: &str,
    user: &str,
    device: &str,
    key_packages: usize,
) -> MimiClient {
    let id =
        ClientId::parse(&format!("mimi://{domain}/d/{user}/{device}")).expect("valid client id");
    // Both are asked again while the user's shard has no leader to take them.
    let deadline = tokio::time::Instant::now() + WAIT;
    let client = loop {
        match MimiClient::register(endpoint.clone(), id.clone()).await {
            Err(e) if again_after(&e, deadline).await => continue,
            other => break other.expect("client registers"),
        }
    };
    if key_packages > 0 {
        loop {
            match client.publish_key_packages(key_packages).await {
                Err(e) if again_after(&e, deadline).await => continue,
                other => break other.expect("KeyPackages published"),
            }
        }
    }
    client
}

/// (seq, sender client, text) of every application message a client has seen or sent.
pub type Transcript = std::collections::BTreeMap<u64, (String, String)>;

/// Whether `error` is a refusal to resend the same request after (MIMI.md §7.6: a resend of
/// one that took effect gets the original answer): a 503 while a shard elects a leader, its
/// leadership moves (the placement driver balances quiet shards' leaders, an election on a
/// loaded machine) or its replication is busy. A room move that did not finish in time is not
/// one: tests assert that a move makes requests wait, never refuses them.
pub fn is_transient(error: &mimid_node::client::ClientError) -> bool {
    match error {
        mimid_node::client::ClientError::Status { status, reason } => {
            *status == 503
                && !reason.contains("is moving from shard")
                && !reason.contains("keeps moving")
        }
        _ => false,
    }
}

/// Whether `error` is a 503 for a request refused before anything was proposed, because its
/// shard had no leader to take it: an election, or a leadership being handed over (placement
/// moves a quiet shard's leader for balance, and the first request after the quiet may meet
/// the hand-over). Repeating such a request is safe even when it is not idempotent (a
/// commit, a createRoom, a registration, a KeyPackage claim).
pub fn is_leaderless(error: &mimid_node::client::ClientError) -> bool {
    match error {
        mimid_node::client::ClientError::Status { status, reason } => {
            *status == 503
                && (reason.contains("has no leader") || reason.contains("leadership is moving"))
        }
        _ => false,
    }
}

/// Whether to ask again after `error`: a leaderless refusal ([`is_leaderless`]) before
/// `deadline`.
async fn again_after(
    error: &mimid_node::client::ClientError,
    deadline: tokio::time::Instant,
) -> bool {
    if is_leaderless(error) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        return true;
    }
    false
}

/// `client` creates `room` ([`MimiClient::create_room`]), again while the room's shard has no
/// leader to take it ([`is_leaderless`]: a refused create leaves no group behind), for
/// [`WAIT`] at most.
pub async fn create_room_when_led(
    client: &mut MimiClient,
    room: &RoomId,
) -> Result<(), mimid_node::client::ClientError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.create_room(room).await {
            Err(e) if again_after(&e, deadline).await => continue,
            other => return other,
        }
    }
}

/// `client` adds `users` to `room` ([`MimiClient::add_users`]: one KeyPackage claimed per
/// client of each, one Commit), each claim and the Commit asked again while their shard has
/// no leader to take them ([`is_leaderless`]: a refused Commit is cleared, and the KeyPackages
/// claimed go into the next one), for [`WAIT`] at most.
pub async fn add_users_when_led(
    client: &mut MimiClient,
    room: &RoomId,
    users: &[UserId],
) -> Result<UpdateResult, mimid_node::client::ClientError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut key_packages = Vec::new();
    for user in users {
        let claimed = loop {
            match client.claim(user, room).await {
                Err(e) if again_after(&e, deadline).await => continue,
                other => break other?,
            }
        };
        if claimed.is_empty() {
            return Err(mimid_node::client::ClientError::NoKeyPackages(user.clone()));
        }
        key_packages.extend(claimed);
    }
    loop {
        match client.commit_adds(room, users, key_packages.clone()).await {
            Err(e) if again_after(&e, deadline).await => continue,
            other => return other,
        }
    }
}

/// Submits the encrypted `message` to `room` until it is answered, resending it as is after
/// a transient refusal ([`is_transient`]) for [`WAIT`] at most; the answer and the number of
/// resends.
pub async fn submit_resending(
    client: &mut MimiClient,
    room: &RoomId,
    message: Vec<u8>,
) -> (mimid_node::client::SubmitResult, usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut resent = 0;
    loop {
        match client.submit_raw(room, message.clone()).await {
            Ok(answer) => return (answer, resent),
            Err(e) if is_transient(&e) && tokio::time::Instant::now() < deadline => {
                resent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{}: submit to {room}: {e}", client.id()),
        }
    }
}

/// Sends `count` messages (`"<client> <n>"`), each resent as is while it is refused
/// transiently ([`submit_resending`]); returns the client and its transcript of accepted
/// sends.
pub async fn send_many(
    mut client: MimiClient,
    room: RoomId,
    count: usize,
) -> (MimiClient, Transcript) {
    let mut sent = Transcript::new();
    let name = client.id().to_string();
    for n in 0..count {
        let text = format!("{name} {n}");
        let message = client.prepare_text(&room, &text).expect("encrypts");
        match submit_resending(&mut client, &room, message).await.0 {
            mimid_node::client::SubmitResult::Accepted { seq, .. } => {
                sent.insert(seq, (name.clone(), text));
            }
            other => panic!("{name} could not send: {other:?}"),
        }
    }
    (client, sent)
}

/// Every client sends `each` messages to `room` at once ([`send_many`]), then each reads
/// until it has seen everyone's ([`read_until`]): the clients and their transcripts, in the
/// order given.
pub async fn all_send_then_read(
    clients: Vec<MimiClient>,
    room: &RoomId,
    each: usize,
) -> (Vec<MimiClient>, Vec<Transcript>) {
    let total = clients.len() * each;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(send_many(client, room.clone(), each)))
        .collect();
    let mut transcripts = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (client, sent) = task.await.expect("sender finished");
        clients.push(client);
        transcripts.push(sent);
    }
    for (client, transcript) in clients.iter_mut().zip(&mut transcripts) {
        read_until(client, total, transcript).await;
    }
    (clients, transcripts)
}

/// Reads `client`'s events until `transcript` holds `total` messages, asserting that seqs only
/// grow on the stream (no item twice, none out of order) and that no seq is delivered twice.
pub async fn read_until(client: &mut MimiClient, total: usize, transcript: &mut Transcript) {
    let mut last_seq = 0;
    while transcript.len() < total {
        let event = client
            .next_event(WAIT)
            .await
            .expect("push stream works")
            .unwrap_or_else(|| {
                panic!(
                    "{} waited for message {}/{total}",
                    client.id(),
                    transcript.len()
                )
            });
        assert!(
            event.seq() > last_seq,
            "{}: seq {} after {last_seq}: an item twice or out of order",
            client.id(),
            event.seq()
        );
        last_seq = event.seq();
        if let Event::Message {
            seq,
            sender,
            content,
            ..
        } = event
        {
            let text = content.text().expect("a text/plain message").to_string();
            let first = transcript.insert(seq, (sender.to_string(), text));
            assert!(
                first.is_none(),
                "{}: seq {seq} delivered twice",
                client.id()
            );
        }
    }
}

/// Three providers on loopback (certificates from one CA) and a room hosted by a with Alice@a,
/// Bob@b and Cathy@c, who joined by the Welcomes the hub routed (KeyPackages fetched through
/// b's and c's keyMaterial, protocol-06 §5; MIMI.md §6.2-§6.4).
pub struct Three {
    pub a: TestNode,
    pub b: TestNode,
    pub c: TestNode,
    pub club: RoomId,
    pub alice: MimiClient,
    pub bob: MimiClient,
    pub cathy: MimiClient,
}

/// Sets [`Three`] up: each provider's configuration changed by `edit`, each client with
/// `key_packages` published and its push stream open.
pub async fn three_providers_in_a_room(key_packages: usize, edit: fn(&mut Config)) -> Three {
    three_providers_in_a_room_with(key_packages, edit, &[]).await
}

/// [`three_providers_in_a_room`] with a's certificate also naming `a_alt_names` (so a peer can
/// address a request to another name a's certificate covers, MIMI.md §3.1 421).
pub async fn three_providers_in_a_room_with(
    key_packages: usize,
    edit: fn(&mut Config),
    a_alt_names: &[&str],
) -> Three {
    let ca = CertAuthority::generate(std::time::SystemTime::now(), CA_VALIDITY).expect("test CA");
    let provider = |domain: &'static str, alt_names: &[&str]| {
        let setup = ProviderSetup {
            alt_names: alt_names.iter().map(|name| (*name).to_owned()).collect(),
            ..ProviderSetup::default()
        };
        TestNode::start_provider_with(domain, &ca, setup, edit)
    };
    let a = provider("a.example", a_alt_names).await;
    let b = provider("b.example", &[]).await;
    let c = provider("c.example", &[]).await;
    connect_providers(&[&a, &b, &c]);
    let club = RoomId::parse("mimi://a.example/r/club").expect("valid room id");
    let mut alice = a.client("alice", "phone", key_packages).await;
    let mut bob = b.client("bob", "laptop", key_packages).await;
    let mut cathy = c.client("cathy", "tablet", key_packages).await;
    for client in [&mut alice, &mut bob, &mut cathy] {
        client.connect_stream().await.expect("stream opens");
    }
    alice.create_room(&club).await.expect("room created");
    let added = alice
        .add_users(
            &club,
            &[
                UserId::parse("mimi://b.example/u/bob").expect("valid user id"),
                UserId::parse("mimi://c.example/u/cathy").expect("valid user id"),
            ],
        )
        .await
        .expect("KeyPackages fetched from b and c, commit accepted");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    for client in [&mut bob, &mut cathy] {
        match client.next_event(WAIT).await.expect("push stream works") {
            Some(Event::Joined { .. }) => {}
            other => panic!("{} expected a Welcome, got {other:?}", client.id()),
        }
    }
    Three {
        a,
        b,
        c,
        club,
        alice,
        bob,
        cathy,
    }
}

/// `adder` adds the users of `joiners` to `room` (the Commit accepted), and each joiner, its
/// push stream open, receives the Welcome to `room` next.
pub async fn add_and_expect_joined(
    adder: &mut MimiClient,
    room: &RoomId,
    joiners: &mut [&mut MimiClient],
) {
    let users: Vec<UserId> = joiners.iter().map(|client| client.id().user()).collect();
    let added = add_users_when_led(adder, room, &users)
        .await
        .expect("add answered");
    assert!(matches!(added, UpdateResult::Accepted { .. }), "{added:?}");
    for client in joiners.iter_mut() {
        match client.next_event(WAIT).await.expect("push stream works") {
            Some(Event::Joined { room: joined, .. }) if joined == *room => {}
            other => panic!(
                "{} expected a Welcome to {room}, got {other:?}",
                client.id()
            ),
        }
    }
}

/// The hub key a groupInfo answer (protocol-06 §5.5) for `room` through `client`'s node was
/// signed with, after checking the signature under it.
pub async fn group_info_hub_key(client: &MimiClient, room: &RoomId) -> Vec<u8> {
    use mimid_node::wire::group_info::{hub_sender_parts, GroupInfoResponse};
    use mimid_node::wire::{Decode, Encode, Limits};

    let request = client
        .group_info_request(&[9; 32])
        .expect("signed")
        .to_bytes()
        .expect("encodes");
    let (status, body) = client
        .post_raw(&mimid_node::api::room_path("groupInfo", room), request)
        .await
        .expect("answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let limits = Limits {
        max_body_len: body.len(),
    };
    let answer = GroupInfoResponse::from_bytes(&body, &limits).expect("a GroupInfoResponse");
    let success = answer
        .verify_success(room.as_bytes(), room.domain())
        .unwrap_or_else(|e| panic!("{}: groupInfo answer does not verify: {e}", client.id()));
    let (key, _) = hub_sender_parts(&success.hub_sender).expect("hub_sender");
    key.as_bytes().to_vec()
}

/// [`mimid_node::backup::backup_to_file`] from the admin listener `admin`, asked again while
/// the node answers 503 for [`WAIT`] at most: a backup needs every shard to have a leader, and
/// a shard may be between two (the admin route says to repeat the request then).
pub async fn backup_when_ready(
    admin: &str,
    token: &AdminToken,
    file: &Path,
) -> mimid_node::backup::SavedBackup {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match mimid_node::backup::backup_to_file(
            admin,
            Some(token),
            file,
            mimid_node::backup::DEFAULT_FETCH_TIMEOUT,
        )
        .await
        {
            Ok(saved) => return saved,
            Err(e)
                if format!("{e:#}").contains("answered 503")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("backup from {admin}: {e:#}"),
        }
    }
}

/// Every shard's replicated state, as a snapshot holds it: equal bytes, nothing changed.
pub fn state_digest(node: &TestNode) -> Vec<Vec<u8>> {
    let shards = node.node().hub().shards();
    (0..shards.count())
        .map(|shard| {
            use mimid_cluster::StateMachine;
            shards.machine(shard).snapshot()
        })
        .collect()
}

/// Waits until the hub recorded every follower's acknowledgement of `room`'s fan-out (the
/// cursor records, MIMI.md §5.4), so that its replicated state changes no more on its own.
pub async fn wait_fanout_recorded(hub: &TestNode, room: &RoomId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done = {
            let shard = hub.node().hub().shards().for_room(room).read();
            let state = shard.room(room).expect("hosted");
            let done = state.followers().all(|provider| {
                state
                    .fanout_backlog(provider, state.fanout_cursor(provider))
                    .next()
                    .is_none()
            });
            done
        };
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-out of {room} not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
