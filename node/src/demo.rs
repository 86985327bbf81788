//! `mimid demo`: a newcomer's first look at federation. Two providers, `a.example` and
//! `b.example`, run in this process on loopback (HTTP/3 on `127.0.0.1`, ports chosen by the OS),
//! each with its own sled data directory and a certificate from a CA generated for the demo.
//! They reach each other through the addresses set in their `Peers`
//! (`federation.resolve_dns = false`), never through DNS. Alice@a and Bob@b then walk through
//! MIMI.md §6.1 (create a room), §6.2 (add a user of another provider: keyMaterial through b,
//! the Welcome through notify), §6.4 (three messages each way) and §6.5 (removal, after which
//! Bob's provider cannot send for him). Each step prints one line as it happens: what happened,
//! the client API request and the server-to-server request it caused, HTTP statuses and MIMI
//! codes, epochs, and who received what.
//!
//! The server-to-server requests are observed, not narrated: around each step the demo reads
//! `mimid_requests_total` from the receiving provider's `/metrics` and reports the requests
//! (endpoint and status) that arrived there. A step whose request did not arrive fails.
//!
//! Bounds: every step, the start and the shutdown included, has `step_timeout`; the waits inside
//! a step end a little earlier, so a failure names what was missing. A failed step ends the walk;
//! the providers are still shut down, and [`run_demo`] returns the first failure.
//!
//! [`start_providers`] (N providers on loopback with a generated CA, connected to each other) is
//! also what the bench's cross-provider scenario runs, and [`start_cluster`] (one provider as a
//! cluster of N nodes on loopback) what its cluster scenario runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context};
use http::StatusCode;
use mimid_actors::ids::{ClientId, RoomId, UserId};
use openmls::prelude::KeyPackage;
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::certs::{
    CertAuthority, SubjectName, CA_VALIDITY, LEAF_VALIDITY, NODE_STEM, PROVIDER_STEM,
};
use crate::client::{Endpoint, Event, MimiClient, SubmitResult, UpdateResult};
use crate::config::{ClusterTlsSettings, Config, TlsSettings};
use crate::federation::S2sEndpoint;
use crate::server::Node;

/// The provider hosting the demo room: its hub.
pub const HUB_DOMAIN: &str = "a.example";
/// Bob's provider: a follower of the demo room.
pub const FOLLOWER_DOMAIN: &str = "b.example";
/// The demo room, hosted by [`HUB_DOMAIN`].
pub const ROOM: &str = "mimi://a.example/r/demo";
/// How long one step may take by default.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The demo's steps, in order; each printed line starts with `[n/16] <title>:`.
pub const STEPS: [&str; 16] = [
    "start providers a.example and b.example",
    "register alice@a",
    "register bob@b",
    "alice creates the room",
    "alice fetches bob's KeyPackage",
    "alice adds bob",
    "bob joins by the Welcome",
    "alice -> bob message 1",
    "bob -> alice message 1",
    "alice -> bob message 2",
    "bob -> alice message 2",
    "alice -> bob message 3",
    "bob -> alice message 3",
    "alice removes bob",
    "bob's provider cannot send for him",
    "shut the providers down",
];

/// What Alice and Bob say, round by round (steps 8 to 13).
const CONVERSATION: [(&str, &str); 3] = [
    ("hello bob", "hi alice"),
    ("this room lives on a.example", "and I am on b.example"),
    ("one more from a", "one more from b"),
];
/// KeyPackages each demo client publishes.
const KEY_PACKAGES: usize = 2;
/// How long a started provider may take to report ready (every shard has a leader).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of readiness and metrics polls.
const POLL: Duration = Duration::from_millis(20);
/// Time allowed for one admin HTTP request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin HTTP response read (the metrics page).
const MAX_ADMIN_RESPONSE: u64 = 4 << 20;
/// Attempts at a fresh name for a temporary directory.
const TEMP_DIR_ATTEMPTS: usize = 16;

/// Where [`start_providers`] keeps the providers' data.
#[derive(Debug, Clone)]
pub enum DataDir {
    /// A new directory `<prefix><random>` under `parent`, removed by
    /// [`LoopbackProviders::shutdown`].
    Temporary {
        parent: PathBuf,
        prefix: &'static str,
    },
    /// This directory, created if missing; it must be empty, and it is kept afterwards.
    Kept(PathBuf),
}

/// Providers running in this process on loopback, each trusting the others' certificates and
/// pointing its `Peers` at their addresses.
pub struct LoopbackProviders {
    providers: Vec<LoopbackProvider>,
    root: PathBuf,
    temporary: bool,
}

/// One provider of [`LoopbackProviders`].
pub struct LoopbackProvider {
    domain: String,
    node: Node,
    data_dir: PathBuf,
    roots: Arc<RootCertStore>,
}

impl LoopbackProvider {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's data directory (sled).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// How clients reach this provider (its certificate is verified against the generated CA).
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.node.quic_addr(),
            server_name: self.domain.clone(),
            roots: self.roots.clone(),
        }
    }
}

impl LoopbackProviders {
    /// The providers, in the order they were asked for.
    pub fn providers(&self) -> &[LoopbackProvider] {
        &self.providers
    }

    /// The provider of `domain`, if it is one of these.
    pub fn provider(&self, domain: &str) -> Option<&LoopbackProvider> {
        self.providers.iter().find(|p| p.domain == domain)
    }

    /// The directory holding the CA and every provider's data.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether [`LoopbackProviders::shutdown`] removes [`LoopbackProviders::root`].
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Shuts every provider down (requests in progress finish, sled is flushed), then removes
    /// the data of a [`DataDir::Temporary`].
    ///
    /// Cancel safety: not safe; providers not yet shut down are dropped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        shutdown_all(self.providers).await;
        if self.temporary {
            std::fs::remove_dir_all(&self.root)
                .with_context(|| format!("removing {}", self.root.display()))?;
        }
        Ok(())
    }
}

/// Starts one provider per domain in `domains` on `127.0.0.1` (ports chosen by the OS), each
/// from `base` with its own domain, data directory under `data`, loopback listeners, a provider
/// certificate issued by a CA generated now (which every provider and client trusts) and
/// `federation.resolve_dns = false`; waits until each reports ready, then points each provider's
/// `Peers` at every other. On failure, what was started is shut down and a temporary directory
/// removed.
///
/// Cancel safety: not safe; started nodes are dropped without a clean shutdown.
pub async fn start_providers(
    domains: &[&str],
    data: DataDir,
    base: &Config,
) -> anyhow::Result<LoopbackProviders> {
    ensure!(!domains.is_empty(), "no provider to start");
    for (idx, domain) in domains.iter().enumerate() {
        ensure!(
            !domains[..idx].contains(domain),
            "provider {domain} is named twice"
        );
    }
    let (root, temporary) = match data {
        DataDir::Temporary { parent, prefix } => (create_temporary_dir(&parent, prefix)?, true),
        DataDir::Kept(dir) => {
            prepare_empty_dir(&dir)?;
            (dir, false)
        }
    };
    match start_in(&root, domains, base).await {
        Ok(providers) => Ok(LoopbackProviders {
            providers,
            root,
            temporary,
        }),
        Err(error) => {
            if temporary {
                // The start failed already; a leftover directory does not change that error.
                let _ = std::fs::remove_dir_all(&root);
            }
            Err(error)
        }
    }
}

async fn start_in(
    root: &Path,
    domains: &[&str],
    base: &Config,
) -> anyhow::Result<Vec<LoopbackProvider>> {
    let now = SystemTime::now();
    let ca = CertAuthority::generate(now, CA_VALIDITY).context("generating the CA")?;
    let ca_files = ca.save(&root.join("ca")).context("saving the CA")?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .context("trusting the generated CA")?;
    let roots = Arc::new(roots);
    let mut started = Vec::with_capacity(domains.len());
    let outcome = async {
        for domain in domains {
            let dir = root.join(domain);
            let leaf = ca
                .issue(
                    &[SubjectName::Dns((*domain).to_owned())],
                    now,
                    LEAF_VALIDITY,
                )
                .and_then(|cert| cert.save(&dir.join("tls"), PROVIDER_STEM))
                .with_context(|| format!("issuing the certificate of {domain}"))?;
            let mut config = base.clone();
            config.domain = (*domain).to_owned();
            config.data_dir = dir.join("data");
            config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
            config.tls = TlsSettings {
                cert: Some(leaf.cert),
                key: Some(leaf.key),
                client_ca: Some(ca_files.cert.clone()),
            };
            config.federation.resolve_dns = false;
            config
                .validate()
                .with_context(|| format!("configuration of {domain}"))?;
            let node = crate::server::start(config.clone())
                .await
                .with_context(|| format!("starting {domain}"))?;
            started.push(LoopbackProvider {
                domain: (*domain).to_owned(),
                node,
                data_dir: config.data_dir,
                roots: roots.clone(),
            });
        }
        for provider in &started {
            wait_ready(provider.node.admin_addr())
                .await
                .with_context(|| format!("waiting for {} to be ready", provider.domain))?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(error) = outcome {
        shutdown_all(started).await;
        return Err(error);
    }
    for from in &started {
        for to in &started {
            if from.domain != to.domain {
                from.node
                    .peers()
                    .set_address(&to.domain, to.node.quic_addr());
            }
        }
    }
    Ok(started)
}

/// One provider run as a cluster of nodes in this process (ARCHITECTURE.md "Cluster"), as
/// [`start_cluster`] starts it: every node with the same domain and provider certificate, a
/// data directory of its own, a node certificate from a cluster CA, and its node-to-node
/// listener on `127.0.0.1` (port chosen by the OS). Node `i` (0-based) has node id `i + 1`.
pub struct LoopbackCluster {
    domain: String,
    nodes: Vec<Node>,
    roots: Arc<RootCertStore>,
    root: PathBuf,
    temporary: bool,
}

impl LoopbackCluster {
    /// The provider's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The running nodes; node `i` has node id `i + 1`.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// How clients reach node `index` (the provider certificate is verified against the CA
    /// generated for the cluster).
    ///
    /// # Panics
    /// If `index` is not a node's index.
    pub fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint {
            addr: self.nodes[index].quic_addr(),
            server_name: self.domain.clone(),
            roots: self.roots.clone(),
        }
    }

    /// The directory holding the CAs and every node's data.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Shuts every node down (requests in progress finish, sled is flushed), then removes the
    /// data of a [`DataDir::Temporary`].
    ///
    /// Cancel safety: not safe; nodes not yet shut down are dropped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for node in self.nodes {
            node.shutdown().await;
        }
        if self.temporary {
            std::fs::remove_dir_all(&self.root)
                .with_context(|| format!("removing {}", self.root.display()))?;
        }
        Ok(())
    }
}

/// Most nodes [`start_cluster`] starts (every shard has a replica on every node).
pub const MAX_LOOPBACK_NODES: u64 = 9;

/// Starts provider `domain` as a cluster of `count` nodes in this process, each from `base`
/// with node id `1..=count`, data directory `<data>/node<id>/data`, loopback listeners on ports
/// chosen by the OS, the provider certificate for `domain` from a CA generated now (which
/// clients trust), a node certificate for `127.0.0.1` from a cluster CA generated now,
/// `cluster.listen = 127.0.0.1:0`, `cluster.voters = 1..=count` and no configured peers; then
/// introduces every node to every other ([`Node::set_cluster_peer`], the addresses being known
/// only once bound) and waits until each reports ready (every shard has a leader). On failure,
/// what was started is shut down and a temporary directory removed.
///
/// Cancel safety: not safe; started nodes are dropped without a clean shutdown.
pub async fn start_cluster(
    domain: &str,
    count: u64,
    data: DataDir,
    base: &Config,
) -> anyhow::Result<LoopbackCluster> {
    ensure!(
        (1..=MAX_LOOPBACK_NODES).contains(&count),
        "a loopback cluster has 1 to {MAX_LOOPBACK_NODES} nodes, not {count}"
    );
    crate::config::check_domain(domain).map_err(anyhow::Error::msg)?;
    let (root, temporary) = match data {
        DataDir::Temporary { parent, prefix } => (create_temporary_dir(&parent, prefix)?, true),
        DataDir::Kept(dir) => {
            prepare_empty_dir(&dir)?;
            (dir, false)
        }
    };
    let mut nodes = Vec::new();
    let outcome = start_cluster_in(&root, domain, count, base, &mut nodes).await;
    match outcome {
        Ok(roots) => Ok(LoopbackCluster {
            domain: domain.to_owned(),
            nodes,
            roots,
            root,
            temporary,
        }),
        Err(error) => {
            for node in nodes {
                node.shutdown().await;
            }
            if temporary {
                // The start failed already; a leftover directory does not change that error.
                let _ = std::fs::remove_dir_all(&root);
            }
            Err(error)
        }
    }
}

/// The body of [`start_cluster`]: the nodes started so far go into `nodes`, so the caller can
/// stop them on failure.
async fn start_cluster_in(
    root: &Path,
    domain: &str,
    count: u64,
    base: &Config,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<Arc<RootCertStore>> {
    let now = SystemTime::now();
    let provider_ca = CertAuthority::generate(now, CA_VALIDITY).context("generating the CA")?;
    let provider_ca_files = provider_ca
        .save(&root.join("ca"))
        .context("saving the CA")?;
    let provider = provider_ca
        .issue(&[SubjectName::Dns(domain.to_owned())], now, LEAF_VALIDITY)
        .and_then(|cert| cert.save(&root.join("provider"), PROVIDER_STEM))
        .with_context(|| format!("issuing the certificate of {domain}"))?;
    let cluster_ca =
        CertAuthority::generate(now, CA_VALIDITY).context("generating the cluster CA")?;
    let cluster_ca_files = cluster_ca
        .save(&root.join("cluster-ca"))
        .context("saving the cluster CA")?;
    let mut roots = RootCertStore::empty();
    roots
        .add(provider_ca.cert_der().clone())
        .context("trusting the generated CA")?;
    let loopback = SubjectName::Ip(std::net::Ipv4Addr::LOCALHOST.into());
    for id in 1..=count {
        let dir = root.join(format!("node{id}"));
        let node_cert = cluster_ca
            .issue(std::slice::from_ref(&loopback), now, LEAF_VALIDITY)
            .and_then(|cert| cert.save(&dir.join("cluster-tls"), NODE_STEM))
            .with_context(|| format!("issuing the certificate of node {id}"))?;
        let mut config = base.clone();
        config.domain = domain.to_owned();
        config.node_id = id;
        config.data_dir = dir.join("data");
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.tls = TlsSettings {
            cert: Some(provider.cert.clone()),
            key: Some(provider.key.clone()),
            client_ca: Some(provider_ca_files.cert.clone()),
        };
        config.federation.resolve_dns = false;
        config.cluster.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.cluster.peers.clear();
        config.cluster.voters = (1..=count).collect();
        config.cluster.tls = ClusterTlsSettings {
            cert: Some(node_cert.cert),
            key: Some(node_cert.key),
            ca: Some(cluster_ca_files.cert.clone()),
        };
        config
            .validate()
            .with_context(|| format!("configuration of node {id}"))?;
        let node = crate::server::start(config)
            .await
            .with_context(|| format!("starting node {id}"))?;
        nodes.push(node);
    }
    for (from_index, from) in nodes.iter().enumerate() {
        for (to_index, to) in nodes.iter().enumerate() {
            if from_index != to_index {
                let addr = to
                    .cluster_addr()
                    .context("a cluster node has a node-to-node address")?;
                from.set_cluster_peer(to_index as u64 + 1, addr)
                    .with_context(|| {
                        format!(
                            "introducing node {} to node {}",
                            to_index + 1,
                            from_index + 1
                        )
                    })?;
            }
        }
    }
    for (index, node) in nodes.iter().enumerate() {
        wait_ready(node.admin_addr())
            .await
            .with_context(|| format!("waiting for node {} to be ready", index + 1))?;
    }
    Ok(Arc::new(roots))
}

async fn shutdown_all(providers: Vec<LoopbackProvider>) {
    for provider in providers {
        provider.node.shutdown().await;
    }
}

/// Creates `parent/<prefix><random>` (mode 0700), a name nobody else holds.
fn create_temporary_dir(parent: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    for _ in 0..TEMP_DIR_ATTEMPTS {
        let path = parent.join(format!("{prefix}{:016x}", rand::random::<u64>()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("creating a directory under {}", parent.display()))
            }
        }
    }
    bail!(
        "no free directory name under {} after {TEMP_DIR_ATTEMPTS} attempts",
        parent.display()
    )
}

/// Creates `dir` if missing; refuses it if it holds anything (the providers start fresh).
fn prepare_empty_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "{} is not empty: the providers start from nothing (remove it or pick another \
             directory)",
            dir.display()
        );
    }
    Ok(())
}

/// Polls `/readyz` on the admin listener `admin` until it answers 200 (every shard has a
/// leader and caught up), for at most 60 s.
pub async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok((200, _)) = admin_get(admin, "/readyz").await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("/readyz did not answer 200 within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A minimal HTTP/1.1 GET on an admin listener (plain HTTP, `Connection: close`): the status
/// and the body, bounded in size and time.
pub async fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream
            .take(MAX_ADMIN_RESPONSE)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET {path} timed out"))?
        .with_context(|| format!("GET {path}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no HTTP status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// How `mimid demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Keep the providers' data here (it must be empty or missing); `None`: a temporary
    /// directory, removed at the end.
    pub data_dir: Option<PathBuf>,
    /// How long each step may take.
    pub step_timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            data_dir: None,
            step_timeout: DEFAULT_STEP_TIMEOUT,
        }
    }
}

/// The first step that did not do what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("demo failed at step {number} ({title}): {reason}")]
pub struct DemoFailure {
    /// 1-based, as printed.
    pub number: usize,
    pub title: &'static str,
    pub reason: String,
}

/// Runs the demo: starts the two providers, walks Alice and Bob through the steps of [`STEPS`]
/// and shuts the providers down, handing every line of the transcript to `out` as it happens.
/// `Ok` only if every step did what it should.
///
/// Cancel safety: not safe; the providers are dropped without a clean shutdown.
pub async fn run_demo(options: &DemoOptions, out: &mut dyn FnMut(&str)) -> Result<(), DemoFailure> {
    out(&format!(
        "mimid demo: providers {HUB_DOMAIN} and {FOLLOWER_DOMAIN} in this process, MIMI \
         protocol-06 between them over HTTP/3 on loopback"
    ));
    let mut transcript = Transcript {
        out,
        done: 0,
        timeout: options.step_timeout,
    };
    let data = match &options.data_dir {
        Some(dir) => DataDir::Kept(dir.clone()),
        None => DataDir::Temporary {
            parent: std::env::temp_dir(),
            prefix: "mimid-demo-",
        },
    };
    let started = transcript
        .step(|_| async move {
            let providers =
                start_providers(&[HUB_DOMAIN, FOLLOWER_DOMAIN], data, &Config::default()).await?;
            let line = describe_providers(&providers);
            Ok((providers, line))
        })
        .await;
    let providers = match started {
        Ok(providers) => providers,
        Err(failure) => {
            while transcript.done < STEPS.len() {
                transcript.skip();
            }
            (transcript.out)(&failure.to_string());
            return Err(failure);
        }
    };
    let mut people = People::default();
    let walked = walk(&mut transcript, &providers, &mut people).await;
    let kept = (!providers.is_temporary()).then(|| providers.root().to_owned());
    while transcript.done + 1 < STEPS.len() {
        transcript.skip();
    }
    let shut_down = transcript
        .step(|_| async move {
            let closed = people.close().await;
            providers.shutdown().await?;
            let data = match kept {
                Some(dir) => format!("data kept in {}", dir.display()),
                None => "temporary data removed".to_owned(),
            };
            Ok((
                (),
                format!("{closed}; both nodes stopped, sled flushed; {data}"),
            ))
        })
        .await;
    let outcome = walked.and(shut_down);
    match &outcome {
        Ok(()) => (transcript.out)(&format!(
            "demo passed: all {} steps did what they should",
            STEPS.len()
        )),
        Err(failure) => (transcript.out)(&failure.to_string()),
    }
    outcome
}

/// Prints the steps as they end and turns a failed or late step into a [`DemoFailure`].
struct Transcript<'o> {
    out: &'o mut dyn FnMut(&str),
    /// Steps done (or skipped) so far.
    done: usize,
    timeout: Duration,
}

impl Transcript<'_> {
    /// Runs the next step: `work` gets a deadline for its inner waits, a little before the
    /// step's own timeout, so a failure can name what was missing.
    async fn step<T, F>(&mut self, work: impl FnOnce(Instant) -> F) -> Result<T, DemoFailure>
    where
        F: Future<Output = anyhow::Result<(T, String)>>,
    {
        let number = self.done + 1;
        let title = STEPS[self.done];
        self.done += 1;
        let inner_deadline = Instant::now() + self.timeout.mul_f64(0.9);
        let reason = match tokio::time::timeout(self.timeout, work(inner_deadline)).await {
            Ok(Ok((value, line))) => {
                (self.out)(&format!("{} {title}: {line}", label(number)));
                return Ok(value);
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => format!("not done within {:?}", self.timeout),
        };
        (self.out)(&format!("{} {title}: FAILED: {reason}", label(number)));
        Err(DemoFailure {
            number,
            title,
            reason,
        })
    }

    /// Marks the next step as not run because an earlier one failed.
    fn skip(&mut self) {
        let number = self.done + 1;
        let title = STEPS[self.done];
        self.done += 1;
        (self.out)(&format!(
            "{} {title}: skipped after the failure",
            label(number)
        ));
    }
}

/// `[ n/16]`: where a step stands.
fn label(number: usize) -> String {
    format!("[{number:>2}/{}]", STEPS.len())
}

/// The demo's clients; kept outside the steps so they can be closed after any failure.
#[derive(Default)]
struct People {
    alice: Option<MimiClient>,
    bob: Option<MimiClient>,
}

impl People {
    fn alice(&mut self) -> anyhow::Result<&mut MimiClient> {
        self.alice.as_mut().context("alice is not registered")
    }

    fn bob(&mut self) -> anyhow::Result<&mut MimiClient> {
        self.bob.as_mut().context("bob is not registered")
    }

    /// Closes the clients' connections; returns what was closed.
    async fn close(&mut self) -> String {
        let mut closed = Vec::new();
        for (name, client) in [("alice", self.alice.take()), ("bob", self.bob.take())] {
            if let Some(client) = client {
                client.close().await;
                closed.push(name);
            }
        }
        match closed.as_slice() {
            [] => "no client to close".to_owned(),
            names => format!("{} disconnected", names.join(" and ")),
        }
    }
}

/// Steps 2 to 15; stops at the first failure.
async fn walk(
    transcript: &mut Transcript<'_>,
    providers: &LoopbackProviders,
    people: &mut People,
) -> Result<(), DemoFailure> {
    let hub = providers
        .provider(HUB_DOMAIN)
        .expect("started with the hub");
    let follower = providers
        .provider(FOLLOWER_DOMAIN)
        .expect("started with the follower");
    let room = RoomId::parse(ROOM).expect("a valid room id");
    let bob_user = user(FOLLOWER_DOMAIN, "bob");

    people.alice = Some(transcript.step(|_| register(hub, "alice", "phone")).await?);
    people.bob = Some(
        transcript
            .step(|_| register(follower, "bob", "laptop"))
            .await?,
    );
    transcript
        .step(|_| async {
            let alice = people.alice()?;
            alice
                .create_room(&room)
                .await
                .context("creating the room")?;
            let epoch = epoch_of(alice, &room)?;
            Ok((
                (),
                format!(
                    "POST /client/v1/rooms -> {HUB_DOMAIN} 201: {room}, epoch {epoch}; \
                     {HUB_DOMAIN} is its hub"
                ),
            ))
        })
        .await?;
    let key_packages = transcript
        .step(|deadline| fetch_key_packages(people, follower, &bob_user, &room, deadline))
        .await?;
    transcript
        .step(|_| async {
            let alice = people.alice()?;
            let clients = plural(key_packages.len(), "client");
            let result = alice
                .commit_adds(&room, std::slice::from_ref(&bob_user), key_packages)
                .await
                .context("sending the commit")?;
            let UpdateResult::Accepted { seq } = result else {
                bail!("the hub did not accept the commit: {result:?}");
            };
            let epoch = epoch_of(alice, &room)?;
            Ok((
                (),
                format!(
                    "POST /client/v1/update/{{room}} -> {HUB_DOMAIN} 200 success \
                     (seq {seq}), epoch {epoch}: Commit with Add of bob's {clients} and \
                     the participant-list update"
                ),
            ))
        })
        .await?;
    transcript
        .step(|deadline| bob_joins(people, follower, &room, deadline))
        .await?;
    for (from_alice, from_bob) in CONVERSATION {
        transcript
            .step(|deadline| alice_to_bob(people, follower, &room, from_alice, deadline))
            .await?;
        transcript
            .step(|deadline| bob_to_alice(people, (hub, follower), &room, from_bob, deadline))
            .await?;
    }
    let held = transcript
        .step(|deadline| remove_bob(people, follower, &room, &bob_user, deadline))
        .await?;
    transcript
        .step(|deadline| bob_cannot_send(people, hub, &room, held, deadline))
        .await?;
    Ok(())
}

async fn register(
    provider: &LoopbackProvider,
    name: &str,
    device: &str,
) -> anyhow::Result<(MimiClient, String)> {
    let domain = provider.domain();
    let id = ClientId::parse(&format!("mimi://{domain}/d/{name}/{device}"))
        .context("building the client id")?;
    let mut client = MimiClient::register(provider.endpoint(), id.clone())
        .await
        .context("registering")?;
    client
        .publish_key_packages(KEY_PACKAGES)
        .await
        .context("publishing KeyPackages")?;
    client
        .connect_stream()
        .await
        .context("opening the push stream")?;
    Ok((
        client,
        format!(
            "POST /client/v1/register -> {domain} 201 ({id}); POST /client/v1/keyPackages -> \
             {domain} 201 ({KEY_PACKAGES} KeyPackages); GET /client/v1/stream -> {domain} 200 \
             (push stream open)"
        ),
    ))
}

/// Step 5 (MIMI.md §6.2 steps 1-4): the hub proxies Alice's claim to Bob's provider.
async fn fetch_key_packages(
    people: &mut People,
    follower: &LoopbackProvider,
    bob: &UserId,
    room: &RoomId,
    deadline: Instant,
) -> anyhow::Result<(Vec<KeyPackage>, String)> {
    let before = requests(follower).await?;
    let alice = people.alice()?;
    let key_packages = alice
        .claim(bob, room)
        .await
        .context("claiming bob's KeyPackages")?;
    let n = key_packages.len();
    ensure!(n > 0, "{FOLLOWER_DOMAIN} returned no KeyPackage of {bob}");
    let arrived = arrived(
        follower,
        S2sEndpoint::KeyMaterial,
        &before,
        StatusCode::OK,
        deadline,
    )
    .await?;
    Ok((
        key_packages,
        format!(
            "POST /client/v1/keyMaterial -> {HUB_DOMAIN} -> {arrived}: {} of {bob}",
            plural(n, "KeyPackage")
        ),
    ))
}

/// Step 7 (MIMI.md §6.2 steps 7-8): the hub notifies b with the Welcome; b routes it to Bob.
async fn bob_joins(
    people: &mut People,
    follower: &LoopbackProvider,
    room: &RoomId,
    deadline: Instant,
) -> anyhow::Result<((), String)> {
    // Bob's provider may have been notified before this step began: count from zero.
    let arrived = arrived(
        follower,
        S2sEndpoint::Notify,
        &Requests::default(),
        StatusCode::CREATED,
        deadline,
    )
    .await?;
    let alice_epoch = epoch_of(people.alice()?, room)?;
    let bob = people.bob()?;
    let event = next_event(bob, deadline, "the Welcome").await?;
    let Event::Joined { room: joined, seq } = event else {
        bail!("bob expected the Welcome, got {event:?}");
    };
    ensure!(joined == *room, "bob joined {joined}, not {room}");
    let epoch = epoch_of(bob, room)?;
    ensure!(
        epoch == alice_epoch,
        "bob joined at epoch {epoch}, alice is at {alice_epoch}"
    );
    Ok((
        (),
        format!(
            "{HUB_DOMAIN} -> {arrived} (Welcome for bob's KeyPackage); bob@b received the \
             Welcome on GET /client/v1/stream and joined ({FOLLOWER_DOMAIN} seq {seq}, epoch \
             {epoch})"
        ),
    ))
}

/// Steps 8, 10, 12 (MIMI.md §6.4 at the hub): Alice's message reaches Bob through notify.
async fn alice_to_bob(
    people: &mut People,
    follower: &LoopbackProvider,
    room: &RoomId,
    text: &str,
    deadline: Instant,
) -> anyhow::Result<((), String)> {
    let before = requests(follower).await?;
    let alice = people.alice()?;
    let alice_id = alice.id().clone();
    let result = alice.send_text(room, text).await.context("sending")?;
    let SubmitResult::Accepted { seq: hub_seq, .. } = result else {
        bail!("the hub did not accept alice's message: {result:?}");
    };
    let bob = people.bob()?;
    let (seq, epoch) = expect_message(bob, room, &alice_id, text, deadline).await?;
    let arrived = arrived(
        follower,
        S2sEndpoint::Notify,
        &before,
        StatusCode::CREATED,
        deadline,
    )
    .await?;
    Ok((
        (),
        format!(
            "POST /client/v1/submitMessage/{{room}} -> {HUB_DOMAIN} 200 accepted (seq \
             {hub_seq}); {HUB_DOMAIN} -> {arrived}; bob@b received \"{text}\" \
             ({FOLLOWER_DOMAIN} seq {seq}, epoch {epoch})"
        ),
    ))
}

/// Steps 9, 11, 13 (MIMI.md §6.4 from a follower): b forwards Bob's message to the hub, which
/// fans it out to Alice and back to b (MIMI.md §5.4: providers receive their own messages too).
async fn bob_to_alice(
    people: &mut People,
    providers: (&LoopbackProvider, &LoopbackProvider),
    room: &RoomId,
    text: &str,
    deadline: Instant,
) -> anyhow::Result<((), String)> {
    let (hub, follower) = providers;
    let hub_before = requests(hub).await?;
    let follower_before = requests(follower).await?;
    let bob = people.bob()?;
    let bob_id = bob.id().clone();
    let result = bob.send_text(room, text).await.context("sending")?;
    let SubmitResult::Accepted { .. } = result else {
        bail!("the hub did not accept bob's message: {result:?}");
    };
    let forwarded = arrived(
        hub,
        S2sEndpoint::SubmitMessage,
        &hub_before,
        StatusCode::OK,
        deadline,
    )
    .await?;
    let alice = people.alice()?;
    let (seq, epoch) = expect_message(alice, room, &bob_id, text, deadline).await?;
    let echoed = arrived(
        follower,
        S2sEndpoint::Notify,
        &follower_before,
        StatusCode::CREATED,
        deadline,
    )
    .await?;
    Ok((
        (),
        format!(
            "POST /client/v1/submitMessage/{{room}} -> {FOLLOWER_DOMAIN} -> {forwarded} \
             accepted; alice@a received \"{text}\" ({HUB_DOMAIN} seq {seq}, epoch {epoch}); \
             {HUB_DOMAIN} -> {echoed} (bob's own message, which his client skips)"
        ),
    ))
}

/// Step 14 (MIMI.md §6.5): Alice removes Bob; Bob learns it through notify. Returns a message
/// Bob encrypted before his removal, and its epoch, for step 15.
async fn remove_bob(
    people: &mut People,
    follower: &LoopbackProvider,
    room: &RoomId,
    bob_user: &UserId,
    deadline: Instant,
) -> anyhow::Result<(Held, String)> {
    let bob = people.bob()?;
    let held = Held {
        epoch: epoch_of(bob, room)?,
        message: bob
            .prepare_text(room, "bob, after his removal")
            .context("encrypting bob's message before the removal")?,
    };
    let before = requests(follower).await?;
    let alice = people.alice()?;
    let result = alice
        .remove_user(room, bob_user)
        .await
        .context("sending the commit")?;
    let UpdateResult::Accepted { seq: hub_seq } = result else {
        bail!("the hub did not accept the removal: {result:?}");
    };
    let epoch = epoch_of(alice, room)?;
    let bob = people.bob()?;
    let event = next_event(bob, deadline, "his removal").await?;
    let Event::Removed { seq, .. } = event else {
        bail!("bob expected his removal, got {event:?}");
    };
    ensure!(
        bob.epoch(room).is_none(),
        "bob's client still holds the room after its removal"
    );
    let arrived = arrived(
        follower,
        S2sEndpoint::Notify,
        &before,
        StatusCode::CREATED,
        deadline,
    )
    .await?;
    Ok((
        held,
        format!(
            "POST /client/v1/update/{{room}} -> {HUB_DOMAIN} 200 success (seq {hub_seq}), \
             epoch {epoch}: Commit with Remove of bob's clients and the participant-list \
             update; {HUB_DOMAIN} -> {arrived}; bob@b received his removal ({FOLLOWER_DOMAIN} \
             seq {seq}) and left the room"
        ),
    ))
}

/// Step 15 (MIMI.md §7.1 step 2, §7.4): b still forwards for Bob, and the hub refuses.
async fn bob_cannot_send(
    people: &mut People,
    hub: &LoopbackProvider,
    room: &RoomId,
    held: Held,
    deadline: Instant,
) -> anyhow::Result<((), String)> {
    let before = requests(hub).await?;
    let bob = people.bob()?;
    let result = bob
        .submit_raw(room, held.message)
        .await
        .context("submitting bob's message")?;
    let SubmitResult::NotAllowed { reason } = result else {
        bail!("a removed user's message must be refused with notAllowed: {result:?}");
    };
    let arrived = arrived(
        hub,
        S2sEndpoint::SubmitMessage,
        &before,
        StatusCode::OK,
        deadline,
    )
    .await?;
    Ok((
        (),
        format!(
            "POST /client/v1/submitMessage/{{room}} -> {FOLLOWER_DOMAIN} -> {arrived} \
             notAllowed (\"{reason}\"): a message bob encrypted at epoch {} is refused, bob \
             is no longer a participant",
            held.epoch
        ),
    ))
}

/// A message Bob encrypted while still in the room.
struct Held {
    epoch: u64,
    message: Vec<u8>,
}

fn user(domain: &str, name: &str) -> UserId {
    UserId::parse(&format!("mimi://{domain}/u/{name}")).expect("a valid user id")
}

/// `1 KeyPackage`, `2 KeyPackages`.
fn plural(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

fn epoch_of(client: &MimiClient, room: &RoomId) -> anyhow::Result<u64> {
    client
        .epoch(room)
        .with_context(|| format!("{} is not in {room}", client.id()))
}

/// The next event on `client`'s push stream before `deadline`.
async fn next_event(
    client: &mut MimiClient,
    deadline: Instant,
    what: &str,
) -> anyhow::Result<Event> {
    let wait = deadline.saturating_duration_since(Instant::now());
    client
        .next_event(wait)
        .await
        .with_context(|| format!("{} reading its push stream", client.id()))?
        .with_context(|| format!("{} did not receive {what} within {wait:?}", client.id()))
}

/// Waits for the application message `text` from `sender`; returns its seq and the epoch.
async fn expect_message(
    client: &mut MimiClient,
    room: &RoomId,
    sender: &ClientId,
    text: &str,
    deadline: Instant,
) -> anyhow::Result<(u64, u64)> {
    let event = next_event(client, deadline, &format!("\"{text}\"")).await?;
    let Event::Message {
        room: in_room,
        seq,
        sender: from,
        content,
        ..
    } = event
    else {
        bail!("{} expected \"{text}\", got {event:?}", client.id());
    };
    ensure!(in_room == *room, "the message came in {in_room}");
    ensure!(
        from == *sender,
        "the message came from {from}, not {sender}"
    );
    let received = content.text().context("the message is not text/plain")?;
    ensure!(received == text, "received \"{received}\", not \"{text}\"");
    Ok((seq, epoch_of(client, room)?))
}

/// Counts of `mimid_requests_total` of one provider by (endpoint label, status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Requests(BTreeMap<(String, u16), u64>);

impl Requests {
    fn parse(metrics: &str) -> Requests {
        Requests(
            metrics
                .lines()
                .filter_map(|line| {
                    let rest = line.strip_prefix("mimid_requests_total{")?;
                    let (labels, value) = rest.split_once("} ")?;
                    let mut endpoint = None;
                    let mut status = None;
                    for pair in labels.split(',') {
                        let (key, value) = pair.split_once('=')?;
                        let value = value.trim_matches('"');
                        match key {
                            "endpoint" => endpoint = Some(value.to_owned()),
                            "status" => status = value.parse().ok(),
                            _ => {}
                        }
                    }
                    let count = value.split_whitespace().next()?.parse::<f64>().ok()?;
                    Some(((endpoint?, status?), count as u64))
                })
                .collect(),
        )
    }

    /// Requests to `endpoint` counted here and not in `before`, by status.
    fn since(&self, before: &Requests, endpoint: &str) -> BTreeMap<u16, u64> {
        self.0
            .iter()
            .filter(|((label, _), _)| label == endpoint)
            .filter_map(|(key, count)| {
                let new = count.saturating_sub(before.0.get(key).copied().unwrap_or(0));
                (new > 0).then_some((key.1, new))
            })
            .collect()
    }
}

/// The provider's request counters now.
async fn requests(provider: &LoopbackProvider) -> anyhow::Result<Requests> {
    let (status, body) = admin_get(provider.node.admin_addr(), "/metrics")
        .await
        .with_context(|| format!("reading the metrics of {}", provider.domain))?;
    ensure!(
        status == 200,
        "{}: /metrics answered {status}",
        provider.domain
    );
    Ok(Requests::parse(&body))
}

/// Waits until `provider` counted a request to `endpoint` answered `expected` since `before`;
/// returns it as `<domain> POST /v1/<endpoint> <statuses>`.
async fn arrived(
    provider: &LoopbackProvider,
    endpoint: S2sEndpoint,
    before: &Requests,
    expected: StatusCode,
    deadline: Instant,
) -> anyhow::Result<String> {
    loop {
        let new = requests(provider)
            .await?
            .since(before, endpoint.metric_label());
        if new.contains_key(&expected.as_u16()) {
            let statuses: Vec<String> = new
                .iter()
                .map(|(status, n)| match n {
                    1 => status.to_string(),
                    n => format!("{status} ×{n}"),
                })
                .collect();
            return Ok(format!(
                "{} {} /v1/{endpoint} {}",
                provider.domain,
                endpoint.method(),
                statuses.join(", ")
            ));
        }
        if Instant::now() >= deadline {
            bail!(
                "{} received no {} /v1/{endpoint} answered {} (requests since the step began, \
                 by status: {new:?})",
                provider.domain,
                endpoint.method(),
                expected.as_u16()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn describe_providers(providers: &LoopbackProviders) -> String {
    let each: Vec<String> = providers
        .providers()
        .iter()
        .map(|p| {
            format!(
                "{} on quic://{} (admin http://{})",
                p.domain(),
                p.node().quic_addr(),
                p.node().admin_addr()
            )
        })
        .collect();
    format!(
        "{}; certificates from a CA generated for the demo; peers reached by address \
         (resolve_dns = false); data in {}",
        each.join(", "),
        providers.root().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_are_read_by_endpoint_and_status() {
        let before = Requests::parse(
            "# TYPE mimid_requests counter\n\
             mimid_requests_total{endpoint=\"s2s_notify\",status=\"201\"} 2\n\
             mimid_requests_total{endpoint=\"s2s_notify\",status=\"503\"} 1\n",
        );
        let after = Requests::parse(
            "mimid_requests_total{endpoint=\"s2s_notify\",status=\"201\"} 4\n\
             mimid_requests_total{endpoint=\"s2s_notify\",status=\"503\"} 1\n\
             mimid_requests_total{endpoint=\"s2s_key_material\",status=\"200\"} 1\n\
             mimid_requests_total_other{endpoint=\"s2s_notify\",status=\"201\"} 9\n\
             mimid_request_duration_seconds_count{endpoint=\"s2s_notify\"} 5\n",
        );
        assert_eq!(
            after.since(&before, "s2s_notify"),
            BTreeMap::from([(201, 2)])
        );
        assert_eq!(
            after.since(&before, "s2s_key_material"),
            BTreeMap::from([(200, 1)])
        );
        assert!(after.since(&before, "s2s_update").is_empty());
    }

    #[test]
    fn a_kept_data_dir_must_be_empty() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fresh = dir.path().join("fresh");
        prepare_empty_dir(&fresh).expect("a missing directory is created");
        prepare_empty_dir(&fresh).expect("an empty one is fine");
        std::fs::write(fresh.join("leftover"), b"x").expect("write");
        let err = prepare_empty_dir(&fresh).expect_err("a used directory is refused");
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn temporary_dirs_are_fresh_and_private() {
        let parent = tempfile::tempdir().expect("temporary directory");
        let one = create_temporary_dir(parent.path(), "mimid-test-").expect("created");
        let two = create_temporary_dir(parent.path(), "mimid-test-").expect("created");
        assert_ne!(one, two);
        assert!(one.starts_with(parent.path()));
        let name = one
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 name");
        assert!(name.starts_with("mimid-test-"), "{name}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&one)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    /// ARCHITECTURE.md "Cluster": one provider on three in-process nodes; every shard has one
    /// leader all nodes agree on, a client registered through one node is known on another,
    /// and shutdown removes the temporary data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_cluster_runs_one_provider_on_three_nodes_that_agree_on_leaders() {
        let parent = tempfile::tempdir().expect("temporary directory");
        let mut base = Config::default();
        base.cluster.shards = 4;
        base.cluster.tick_ms = 20;
        let cluster = start_cluster(
            "a.example",
            3,
            DataDir::Temporary {
                parent: parent.path().to_path_buf(),
                prefix: "mimid-cluster-test-",
            },
            &base,
        )
        .await
        .expect("cluster starts");
        assert_eq!(cluster.nodes().len(), 3);
        assert_eq!(cluster.domain(), "a.example");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let named: Vec<Vec<Option<u64>>> = cluster
                .nodes()
                .iter()
                .map(|node| {
                    (0..4)
                        .map(|shard| node.cluster_handle().leader(shard))
                        .collect()
                })
                .collect();
            let agreed =
                named.iter().all(|n| *n == named[0]) && named[0].iter().all(Option::is_some);
            // The placement driver moves leaderships until no node leads two more than
            // another; a request meeting such a transfer is answered 503, so the client
            // requests below wait for balanced leaders (nothing left to move).
            let leads: Vec<usize> = (1..=3)
                .map(|node| named[0].iter().filter(|l| **l == Some(node)).count())
                .collect();
            let (most, fewest) = (leads.iter().max(), leads.iter().min());
            let balanced = most
                .zip(fewest)
                .is_some_and(|(most, fewest)| most < &(fewest + 2));
            if agreed && balanced {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed, balanced leaders: {named:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        let alice = ClientId::parse("mimi://a.example/d/alice/phone").expect("valid id");
        let mut client = MimiClient::register(cluster.endpoint(0), alice)
            .await
            .expect("registered through node 1");
        client
            .publish_key_packages(1)
            .await
            .expect("KeyPackage published through node 1");
        client
            .reconnect(cluster.endpoint(2))
            .await
            .expect("the token issued through node 1 opens a push stream on node 3");
        client
            .publish_key_packages(1)
            .await
            .expect("KeyPackage published through node 3");
        client.close().await;
        let root = cluster.root().to_path_buf();
        assert!(root.join("node3").join("data").is_dir());
        cluster.shutdown().await.expect("shut down");
        assert!(!root.exists(), "the temporary data is removed");
    }

    #[tokio::test]
    async fn start_cluster_refuses_no_nodes_and_a_bad_domain() {
        let parent = tempfile::tempdir().expect("temporary directory");
        let data = DataDir::Temporary {
            parent: parent.path().to_path_buf(),
            prefix: "mimid-cluster-test-",
        };
        let zero = start_cluster("a.example", 0, data.clone(), &Config::default()).await;
        assert!(zero.is_err_and(|e| e.to_string().contains("1 to 9 nodes")));
        let bad = start_cluster("not a domain", 3, data, &Config::default()).await;
        assert!(bad.is_err());
        assert_eq!(
            std::fs::read_dir(parent.path()).expect("readable").count(),
            0,
            "nothing is left behind"
        );
    }

    #[test]
    fn step_titles_are_unique() {
        for (idx, title) in STEPS.iter().enumerate() {
            assert!(!STEPS[..idx].contains(title), "{title} twice");
        }
    }
}
