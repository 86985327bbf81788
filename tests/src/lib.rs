//! The shared harness of the integration tests: a real node (quinn on loopback, sled in a
//! temporary directory, openmls clients) started and restarted on demand.

pub mod fuzz_checks;
pub mod sim;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_node::certs::{CertAuthority, SubjectName, LEAF_VALIDITY, PROVIDER_STEM};
use mimid_node::client::{Endpoint, MimiClient};
use mimid_node::config::{dev_cert_dir, Config, TlsFiles, TlsSettings};
use mimid_node::federation::FederationService;
use mimid_node::server::{start, start_with_service, Node};
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
        let mut roots = RootCertStore::empty();
        let pem = std::fs::read(&ca).expect("dev CA exists");
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.expect("valid PEM")).expect("valid CA");
        }
        Endpoint {
            addr: self.node().quic_addr(),
            server_name,
            roots: Arc::new(roots),
        }
    }

    /// Registers a client `mimi://<domain>/d/<user>/<device>` with `key_packages` published.
    pub async fn client(&self, user: &str, device: &str, key_packages: usize) -> MimiClient {
        let domain = &self.config.domain;
        let id = ClientId::parse(&format!("mimi://{domain}/d/{user}/{device}"))
            .expect("valid client id");
        let client = MimiClient::register(self.endpoint(), id)
            .await
            .expect("client registers");
        if key_packages > 0 {
            client
                .publish_key_packages(key_packages)
                .await
                .expect("KeyPackages published");
        }
        client
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

async fn wait_ready(node: &Node) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let url = format!("http://{}/readyz", node.admin_addr());
    loop {
        if http_get_status(&url).await == Some(200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node not ready within {WAIT:?}"
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
