//! `mimid-bench nats`: NATS JetStream, the side-by-side peer for replicated messages (issue 5
//! item 4; anchors.md Part 3). A cluster of `nats-server` child processes on loopback (each
//! with its own client and route ports and store directory), one file-storage stream `ROOMS`
//! on `room.>` with as many replicas as nodes, and the cluster scenario's workload on it:
//!
//! - room `i`'s sender is connected to server `i % n` and publishes 256-byte messages to
//!   `room.<i % n>.<i>` with a reply inbox; an operation ends with the JetStream PubAck, which
//!   the stream leader sends once a quorum of the replicas stored the message;
//! - unless `--no-subscribers`, server `k`'s subscriber gets, through an ephemeral push
//!   consumer of the stream (no acks, new messages only, filter `room.<k-1>.*`), what the
//!   senders on the previous server published: delivery of stored messages to another node,
//!   as the cluster scenario's members get pushes of applied messages.
//!
//! Durability: nats-server 2.9.10 (Debian bookworm) writes every stored message to its block
//! file before the PubAck but does not fsync it: its file store syncs blocks every two minutes
//! (`defaultSyncInterval`), and the `jetstream { sync_interval }` option (`always` = fsync
//! before the ack) only exists from 2.10 on; 2.9.10 refuses the configuration with `unknown
//! field "sync_interval"`. The report says so in `system.durability`.
//!
//! The client is the NATS text protocol over TCP, written here (no `async-nats`: it would add
//! a second TLS stack and a dozen crates): `CONNECT`, `PING`/`PONG`, `SUB`, `PUB subject reply
//! len`, `MSG subject sid [reply] len`, `-ERR`. Each sender has its own connection with one
//! request in flight, so an answer is matched by its inbox token and anything else is skipped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::load::{Availability, Sender};
use crate::peer::{
    run_peer, Peer, PeerArgs, PeerDescription, PeerReport, Servers, SubscriberCounters, Subscribers,
};
use crate::scenario::message_text;
use crate::stats::ErrorKind;

/// The stream every room's subject is stored in.
pub const STREAM: &str = "ROOMS";
/// Time allowed for the cluster to form and the stream to get a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to one JetStream API request before it is retried.
const API_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of a sender's wait for its PubAck inside the request (the load engine's
/// `--timeout-ms` ends it first).
const SENDER_WAIT: Duration = Duration::from_secs(600);
/// How often the setup retries a request that got no answer yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Subscription id of a subscriber's deliver subject (1 is the inbox).
const DELIVER_SID: u32 = 2;
/// Largest control line accepted from the server.
const MAX_LINE: usize = 64 * 1024;
/// Largest message payload accepted from the server.
const MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// Runs the NATS JetStream side of the side-by-side comparison. Must not be called from inside
/// a tokio runtime.
pub fn run(args: &PeerArgs) -> anyhow::Result<PeerReport> {
    let run = run_peer::<Nats>(args, "nats")?;
    let replicas = args.nodes;
    Ok(run.report(
        args,
        PeerDescription {
            name: "nats-jetstream",
            replicas,
            durability: format!(
                "PubAck after a quorum of the {replicas} stream replicas wrote the message to \
                 its file store, without fsync: nats-server 2.9.10 syncs message blocks every \
                 2 minutes and has no `jetstream.sync_interval` (added in 2.10; 2.9.10 refuses \
                 it as an unknown field), so `always` cannot be set"
            ),
            settings: [
                ("stream", format!("{STREAM} on room.>")),
                ("storage", "file".into()),
                ("num_replicas", replicas.to_string()),
                ("retention", "limits (no limits)".into()),
                (
                    "sync_interval",
                    "2m (2.9.10 built-in default, not configurable)".into(),
                ),
                (
                    "subscribers",
                    if args.subscribers() {
                        "one ephemeral push consumer per node (ack none, deliver new)".into()
                    } else {
                        "none".into()
                    },
                ),
            ]
            .into_iter()
            .collect(),
            notes: vec![
                format!(
                    "NATS JetStream: {} nats-server processes on loopback, one file-storage \
                     stream with {replicas} replicas. An operation is one publish of a {}-byte \
                     message to room i's subject from its sender (connected to server i mod \
                     {}), counted when the PubAck arrives: the stream leader stored it on a \
                     quorum (see system.durability: no fsync).",
                    args.nodes, args.message_bytes, args.nodes
                ),
                if args.subscribers() {
                    "Each server has one subscriber: an ephemeral push consumer of the stream \
                     (ack none, deliver new) filtered to the rooms whose senders are on the \
                     previous server, so stored messages are delivered to another node; \
                     delivery says what they got."
                        .into()
                } else {
                    "No subscribers (--no-subscribers).".into()
                },
            ],
            stored: "the stream's message count difference over the phase",
        },
    ))
}

/// NATS JetStream as a side-by-side peer (`peer::run_peer`).
pub struct Nats;

impl Peer for Nats {
    type Sender = NatsSender;
    const BINARY: &'static str = "nats-server";
    const DIR_PREFIX: &'static str = "mimid-bench-nats-";
    const SERVERS: &'static str = "nats-server nodes";

    /// Writes each node's configuration and starts it: `ports` holds a client port per node,
    /// then a route port per node.
    fn start(binary: &Path, dir: &Path, nodes: u64, ports: &[u16]) -> anyhow::Result<Servers> {
        let n = nodes as usize;
        let (client_ports, route_ports) = ports.split_at(n);
        let mut servers = Servers::default();
        for node in 0..n {
            let store = dir.join(format!("n{node}-store"));
            let mut config = format!(
                "server_name: n{node}\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  \
                 max_memory_store: 256MB\n  max_file_store: 16GB\n}}\n",
                client_ports[node],
                store.display().to_string()
            );
            if n > 1 {
                let routes: Vec<String> = route_ports
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                // Infallible: writing to a String.
                let _ = write!(
                    config,
                    "cluster {{\n  name: mimid-bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    route_ports[node],
                    routes.join(", ")
                );
            }
            let config_file = dir.join(format!("n{node}.conf"));
            std::fs::write(&config_file, config)
                .with_context(|| format!("writing {}", config_file.display()))?;
            let mut command = Command::new(binary);
            command.arg("-c").arg(&config_file);
            servers.spawn(
                &format!("nats-server n{node}"),
                &mut command,
                &dir.join(format!("n{node}.log")),
                client_ports[node],
            )?;
        }
        Ok(servers)
    }

    /// One sender per room, in room order, each with its own connection to its node.
    async fn connect_senders(
        servers: &Servers,
        args: &PeerArgs,
    ) -> anyhow::Result<Vec<NatsSender>> {
        let mut senders = Vec::with_capacity(args.rooms as usize);
        for room in 0..u64::from(args.rooms) {
            let node = args.sender_node(room);
            let addr = servers.clients[node];
            let conn = NatsConn::connect(addr, &format!("sender-{room}"))
                .await
                .with_context(|| format!("connecting room {room}'s sender to n{node}"))?;
            senders.push(NatsSender {
                idx: room,
                addr,
                subject: format!("room.{node}.{room}"),
                conn: Some(conn),
                message_bytes: args.message_bytes as usize,
                sent: 0,
            });
        }
        Ok(senders)
    }

    /// One subscriber per node: a connection to it subscribed to a deliver subject, and an
    /// ephemeral push consumer of the stream that delivers there the messages of the previous
    /// node's senders.
    async fn start_subscribers(servers: &Servers, args: &PeerArgs) -> anyhow::Result<Subscribers> {
        let counters = Arc::new(SubscriberCounters::default());
        let mut subscribers = Subscribers::new(counters.clone());
        let nodes = args.nodes as usize;
        for sender_node in 0..nodes {
            let node = args.subscriber_node(sender_node);
            let mut conn = NatsConn::connect(servers.clients[node], &format!("subscriber-{node}"))
                .await
                .with_context(|| format!("connecting the subscriber to n{node}"))?;
            let deliver = format!("deliver.n{node}.{}", conn.token);
            conn.subscribe(&deliver, DELIVER_SID).await?;
            let consumer = serde_json::json!({
                "stream_name": STREAM,
                "config": {
                    "deliver_subject": deliver,
                    "filter_subject": format!("room.{sender_node}.*"),
                    "deliver_policy": "new",
                    "ack_policy": "none",
                    "replay_policy": "instant",
                }
            });
            let answer = conn
                .request(
                    &format!("$JS.API.CONSUMER.CREATE.{STREAM}"),
                    consumer.to_string().as_bytes(),
                    API_TIMEOUT,
                )
                .await
                .with_context(|| format!("creating the push consumer for n{node}"))?;
            if let Some(error) = api_error(&answer) {
                bail!("creating the push consumer for n{node}: {error}");
            }
            let counters = counters.clone();
            subscribers.spawn(async move { subscriber(conn, counters).await });
        }
        Ok(subscribers)
    }

    async fn stored(servers: &Servers) -> anyhow::Result<u64> {
        stream_messages(servers.clients[0]).await
    }

    /// Waits until every server answers, the stream exists and every server's publishes are
    /// acknowledged (the stream has a leader the whole cluster knows).
    async fn ready(servers: &mut Servers, nodes: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut conns = Vec::with_capacity(servers.clients.len());
        for (node, addr) in servers.clients.clone().into_iter().enumerate() {
            // Bounded by READY_TIMEOUT.
            let conn = loop {
                servers.check_running()?;
                match NatsConn::connect(addr, &format!("ready-{node}")).await {
                    Ok(conn) => break conn,
                    Err(error) if Instant::now() >= deadline => {
                        bail!("nats-server n{node} at {addr} did not accept clients: {error:#}")
                    }
                    Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                }
            };
            conns.push(conn);
        }
        let config = serde_json::json!({
            "name": STREAM,
            "subjects": ["room.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": nodes,
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
        });
        let create = format!("$JS.API.STREAM.CREATE.{STREAM}");
        // Bounded by READY_TIMEOUT: the meta leader is elected within seconds.
        loop {
            servers.check_running()?;
            match conns[0]
                .request(&create, config.to_string().as_bytes(), API_TIMEOUT)
                .await
            {
                Ok(answer) => match api_error(&answer) {
                    None => break,
                    Some(error) if error.contains("already in use") => break,
                    Some(error) if Instant::now() >= deadline => {
                        bail!("creating the stream: {error}")
                    }
                    Some(_) => tokio::time::sleep(RETRY_PAUSE).await,
                },
                Err(error) if Instant::now() >= deadline => {
                    bail!("creating the stream: {error:#}")
                }
                Err(_) => {
                    // No answer in time: the connection may hold a late one; start afresh.
                    conns[0] = NatsConn::connect(servers.clients[0], "ready-0").await?;
                }
            }
        }
        for (node, conn) in conns.iter_mut().enumerate() {
            let subject = format!("room.setup.n{node}");
            // Bounded by READY_TIMEOUT.
            loop {
                servers.check_running()?;
                match conn.request(&subject, b"setup", API_TIMEOUT).await {
                    Ok(answer) if api_error(&answer).is_none() => break,
                    _ if Instant::now() >= deadline => {
                        bail!("publishes through nats-server n{node} are not acknowledged")
                    }
                    Ok(_) => tokio::time::sleep(RETRY_PAUSE).await,
                    Err(_) => {
                        *conn = NatsConn::connect(servers.clients[node], "ready").await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The stream's message count.
async fn stream_messages(addr: SocketAddr) -> anyhow::Result<u64> {
    let mut conn = NatsConn::connect(addr, "info").await?;
    let answer = conn
        .request(&format!("$JS.API.STREAM.INFO.{STREAM}"), b"", API_TIMEOUT)
        .await
        .context("reading the stream's state")?;
    if let Some(error) = api_error(&answer) {
        bail!("reading the stream's state: {error}");
    }
    let info: Value = serde_json::from_slice(&answer).context("decoding the stream info")?;
    info["state"]["messages"]
        .as_u64()
        .context("the stream info has no state.messages")
}

/// The error of a JetStream API answer (or PubAck), if it is one.
fn api_error(answer: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(answer) {
        Ok(value) => value.get("error").map(|e| e.to_string()),
        Err(error) => Some(format!("not JSON ({error})")),
    }
}

/// Counts the messages delivered to the consumer's subscription until its connection fails
/// (or [`Subscribers::finish`] aborts it). A push consumer's MSG carries the message's own
/// subject; the subscription id tells them apart.
async fn subscriber(mut conn: NatsConn, counters: Arc<SubscriberCounters>) {
    let deliver_sid = DELIVER_SID.to_string();
    // Bounded: aborted by Subscribers::finish.
    loop {
        match conn.next_msg().await {
            Ok(msg) => {
                if msg.sid == deliver_sid.as_bytes() {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                counters.failed(format!("subscriber: {error:#}"));
                return;
            }
        }
    }
}

/// Room `idx`'s sender: publishes to its subject and waits for the PubAck.
pub struct NatsSender {
    idx: u64,
    addr: SocketAddr,
    subject: String,
    /// `None` after an abandoned operation: the next one reconnects.
    conn: Option<NatsConn>,
    message_bytes: usize,
    sent: u64,
}

impl Sender for NatsSender {
    fn availability(&self) -> Availability {
        Availability::Ready
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let payload = message_text(self.idx, self.sent, self.message_bytes);
        self.sent += 1;
        if self.conn.is_none() {
            let conn = NatsConn::connect(self.addr, &format!("sender-{}", self.idx))
                .await
                .map_err(|_| ErrorKind::Transport)?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().ok_or(ErrorKind::Transport)?;
        let answer = match conn
            .request(&self.subject, payload.as_bytes(), SENDER_WAIT)
            .await
        {
            Ok(answer) => answer,
            Err(_) => {
                self.conn = None;
                return Err(ErrorKind::Transport);
            }
        };
        let ack: Value = serde_json::from_slice(&answer).map_err(|_| ErrorKind::Malformed)?;
        if let Some(error) = ack.get("error") {
            let code = error["code"].as_u64().unwrap_or(500);
            return Err(ErrorKind::Status(u16::try_from(code).unwrap_or(500)));
        }
        if ack.get("seq").and_then(Value::as_u64).is_none() {
            return Err(ErrorKind::Malformed);
        }
        Ok(())
    }

    fn on_abandoned(&mut self) {
        // A write or read was cut in the middle: the connection's framing is unknown.
        self.conn = None;
    }
}

/// One message from the server.
struct Msg {
    subject: Vec<u8>,
    sid: Vec<u8>,
    payload: Vec<u8>,
}

/// A client connection speaking the NATS text protocol, with one wildcard inbox subscription
/// (`_INBOX.<token>.*`, sid 1) for the answers to its requests.
struct NatsConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    token: String,
    next_request: u64,
    line: Vec<u8>,
    out: Vec<u8>,
}

impl NatsConn {
    /// Connects, reads the server's INFO, sends CONNECT and waits for the PONG to a PING (so
    /// the server accepted the connection), and subscribes to the inbox.
    async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<NatsConn> {
        let stream = tokio::time::timeout(API_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (read, write) = stream.into_split();
        let token = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut conn = NatsConn {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer: write,
            token: format!("{token}{}", name.replace(['.', '*', '>', ' '], "-")),
            next_request: 0,
            line: Vec::new(),
            out: Vec::with_capacity(1024),
        };
        tokio::time::timeout(API_TIMEOUT, conn.handshake())
            .await
            .context("the server did not complete the handshake in time")??;
        Ok(conn)
    }

    async fn handshake(&mut self) -> anyhow::Result<()> {
        self.read_line().await?;
        if !self.line.starts_with(b"INFO ") {
            bail!(
                "expected INFO, got {:?}",
                String::from_utf8_lossy(&self.line)
            );
        }
        let connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "headers": false,
            "echo": false,
            "protocol": 1,
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "name": "mimid-bench",
        });
        let inbox = format!("SUB _INBOX.{}.* 1\r\n", self.token);
        self.writer
            .write_all(format!("CONNECT {connect}\r\n{inbox}PING\r\n").as_bytes())
            .await?;
        // Bounded by the caller's timeout.
        loop {
            self.read_line().await?;
            match control(&self.line) {
                Control::Pong => return Ok(()),
                Control::Ping => self.writer.write_all(b"PONG\r\n").await?,
                Control::Err => bail!("{}", String::from_utf8_lossy(&self.line)),
                _ => {}
            }
        }
    }

    /// Subscribes to `subject` with `sid` and waits until the server confirmed it (PONG).
    async fn subscribe(&mut self, subject: &str, sid: u32) -> anyhow::Result<()> {
        self.writer
            .write_all(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
            .await?;
        // Bounded by API_TIMEOUT.
        tokio::time::timeout(API_TIMEOUT, async {
            loop {
                self.read_line().await?;
                match control(&self.line) {
                    Control::Pong => return anyhow::Ok(()),
                    Control::Ping => self.writer.write_all(b"PONG\r\n").await?,
                    Control::Err => bail!("{}", String::from_utf8_lossy(&self.line)),
                    _ => {}
                }
            }
        })
        .await
        .context("no PONG after SUB")?
    }

    /// Publishes `payload` to `subject` with a fresh inbox as reply subject and returns the
    /// payload of the answer (a PubAck, or a JetStream API answer) within `wait`. Answers to
    /// earlier, abandoned requests are skipped. After a timeout the connection may still get
    /// the late answer, which a later request skips.
    async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        wait: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        self.next_request += 1;
        let inbox = format!("_INBOX.{}.{}", self.token, self.next_request);
        self.out.clear();
        self.out
            .extend_from_slice(format!("PUB {subject} {inbox} {}\r\n", payload.len()).as_bytes());
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
        self.writer.write_all(&self.out).await?;
        let answer = async {
            // Bounded by the timeout around it.
            loop {
                let msg = self.next_msg().await?;
                if msg.subject == inbox.as_bytes() {
                    return anyhow::Ok(msg.payload);
                }
            }
        };
        tokio::time::timeout(wait, answer)
            .await
            .with_context(|| format!("no answer on {subject} within {wait:?}"))?
    }

    /// The next MSG, answering PINGs and skipping other control lines.
    async fn next_msg(&mut self) -> anyhow::Result<Msg> {
        // Bounded by the caller's timeout; each turn consumes one line from the server.
        loop {
            self.read_line().await?;
            match control(&self.line) {
                Control::Msg => {
                    let (subject, sid, size) = parse_msg(&self.line)?;
                    let mut payload = vec![0; size + 2];
                    self.reader.read_exact(&mut payload).await?;
                    if !payload.ends_with(b"\r\n") {
                        bail!("a message payload is not followed by CRLF");
                    }
                    payload.truncate(size);
                    return Ok(Msg {
                        subject,
                        sid,
                        payload,
                    });
                }
                Control::Ping => self.writer.write_all(b"PONG\r\n").await?,
                Control::Err => bail!("{}", String::from_utf8_lossy(&self.line)),
                Control::Pong | Control::Ok | Control::Info | Control::Other => {}
            }
        }
    }

    /// Reads one CRLF-terminated line into `self.line` (without the CRLF).
    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .await?;
        if read == 0 {
            bail!("the server closed the connection");
        }
        if !self.line.ends_with(b"\r\n") {
            bail!("a line from the server is longer than {MAX_LINE} bytes or cut");
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Control {
    Msg,
    Ping,
    Pong,
    Ok,
    Err,
    Info,
    Other,
}

fn control(line: &[u8]) -> Control {
    let upper = |prefix: &[u8]| {
        line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if upper(b"MSG ") {
        Control::Msg
    } else if upper(b"PING") {
        Control::Ping
    } else if upper(b"PONG") {
        Control::Pong
    } else if upper(b"+OK") {
        Control::Ok
    } else if upper(b"-ERR") {
        Control::Err
    } else if upper(b"INFO") {
        Control::Info
    } else {
        Control::Other
    }
}

/// `MSG <subject> <sid> [reply-to] <#bytes>`: the subject, the subscription id and the
/// payload size.
fn parse_msg(line: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>, usize)> {
    let fields: Vec<&[u8]> = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty())
        .collect();
    if !(fields.len() == 4 || fields.len() == 5) {
        bail!("malformed MSG line {:?}", String::from_utf8_lossy(line));
    }
    let size: usize = std::str::from_utf8(fields[fields.len() - 1])
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed MSG size in {:?}", String::from_utf8_lossy(line)))?;
    if size > MAX_PAYLOAD {
        bail!("a message of {size} bytes is larger than {MAX_PAYLOAD}");
    }
    Ok((fields[1].to_vec(), fields[2].to_vec(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_lines_with_and_without_reply_subject_parse() {
        assert_eq!(
            parse_msg(b"MSG _INBOX.x.1 1 27").expect("valid"),
            (b"_INBOX.x.1".to_vec(), b"1".to_vec(), 27)
        );
        assert_eq!(
            parse_msg(b"MSG room.0.5 2 $JS.ACK.ROOMS.x.1.2.3.4.5 256").expect("valid"),
            (b"room.0.5".to_vec(), b"2".to_vec(), 256)
        );
        assert!(parse_msg(b"MSG a 1").is_err());
        assert!(parse_msg(b"MSG a 1 b c d").is_err());
        assert!(parse_msg(b"MSG a 1 x").is_err());
        assert!(parse_msg(b"MSG a 1 999999999999").is_err());
    }

    #[test]
    fn control_lines_are_told_apart_case_insensitively() {
        assert_eq!(control(b"MSG a 1 2"), Control::Msg);
        assert_eq!(control(b"ping"), Control::Ping);
        assert_eq!(control(b"PONG"), Control::Pong);
        assert_eq!(control(b"+OK"), Control::Ok);
        assert_eq!(control(b"-ERR 'Authorization Violation'"), Control::Err);
        assert_eq!(control(b"INFO {}"), Control::Info);
        assert_eq!(control(b"HMSG a 1 2 3"), Control::Other);
    }

    #[test]
    fn api_errors_are_found_in_answers() {
        assert_eq!(api_error(br#"{"stream":"ROOMS","seq":7}"#), None);
        let error = api_error(br#"{"error":{"code":503,"description":"unavailable"}}"#);
        assert!(error.is_some_and(|e| e.contains("503")));
        assert!(api_error(b"not json").is_some());
    }
}
