//! `mimid-bench etcd`: etcd, the side-by-side peer for replicated writes (issue 5 item 4;
//! anchors.md Part 2a, Part 3). A cluster of `etcd` child processes on loopback (each with its
//! own client and peer ports and data directory) and the cluster scenario's workload on it:
//!
//! - room `i`'s sender is connected to member `i % n` and puts 256-byte values to the key
//!   `room/<i % n>/<i>` through etcd's gRPC gateway (`POST /v3/kv/put`, JSON with base64 key
//!   and value) over its own HTTP/1.1 keep-alive connection; an operation ends with the
//!   answer, which etcd sends once the entry is committed on a quorum and applied (a member
//!   that does not lead forwards the proposal to the leader, as mimid's nodes do);
//! - unless `--no-subscribers`, member `k`'s watcher (`POST /v3/watch` on the prefix
//!   `room/<k-1>/`, a chunked stream of JSON results) receives what the senders on the
//!   previous member put.
//!
//! Durability: etcd fsyncs its write-ahead log before a Raft entry counts as persisted (its
//! default; `--unsafe-no-fsync` is not given), on each member, with group commit: an
//! acknowledged put is on the disk of a quorum.
//!
//! The gRPC gateway is used rather than gRPC: the `etcd-client` crate needs `protoc` to build
//! (absent here) and tonic; the HTTP/1.1 client below is a few dozen lines.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
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

/// Time allowed for the cluster to elect a leader and answer on every member.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to one setup request.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the setup retries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Largest header line, header section and body accepted.
const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Runs the etcd side of the side-by-side comparison. Must not be called from inside a tokio
/// runtime.
pub fn run(args: &PeerArgs) -> anyhow::Result<PeerReport> {
    let run = run_peer::<Etcd>(args, "etcd")?;
    Ok(run.report(
        args,
        PeerDescription {
            name: "etcd",
            replicas: args.nodes,
            durability: format!(
                "put answered once committed on a quorum of the {} members and applied; each \
                 member fsyncs its WAL before an entry counts as persisted (etcd's default, \
                 --unsafe-no-fsync not given), with group commit",
                args.nodes
            ),
            settings: [
                (
                    "api",
                    "gRPC gateway, POST /v3/kv/put over HTTP/1.1 keep-alive".into(),
                ),
                ("fsync", "on (default)".into()),
                ("snapshot_count", "100000 (default)".into()),
                (
                    "subscribers",
                    if args.subscribers() {
                        "one watcher per member (POST /v3/watch on a key prefix)".into()
                    } else {
                        "none".into()
                    },
                ),
            ]
            .into_iter()
            .collect(),
            notes: vec![
                format!(
                    "etcd: {} members on loopback. An operation is one put of a {}-byte value \
                     to room i's key from its sender (connected to member i mod {}), counted \
                     when the answer arrives: committed on a quorum (each member's WAL fsynced) \
                     and applied.",
                    args.nodes, args.message_bytes, args.nodes
                ),
                if args.subscribers() {
                    "Each member has one watcher on the key prefix of the rooms whose senders \
                     are on the previous member, so committed puts are delivered to another \
                     node; delivery says what they got (events)."
                        .into()
                } else {
                    "No watchers (--no-subscribers).".into()
                },
            ],
            stored: "the store revision's increase over the phase (one per committed put)",
        },
    ))
}

/// etcd as a side-by-side peer (`peer::run_peer`).
pub struct Etcd;

impl Peer for Etcd {
    type Sender = EtcdSender;
    const BINARY: &'static str = "etcd";
    const DIR_PREFIX: &'static str = "mimid-bench-etcd-";
    const SERVERS: &'static str = "etcd members";

    /// Starts every member: `ports` holds a client port per member, then a peer port per
    /// member.
    fn start(binary: &Path, dir: &Path, nodes: u64, ports: &[u16]) -> anyhow::Result<Servers> {
        let n = nodes as usize;
        let (client_ports, peer_ports) = ports.split_at(n);
        let initial_cluster: Vec<String> = peer_ports
            .iter()
            .enumerate()
            .map(|(node, port)| format!("e{node}=http://127.0.0.1:{port}"))
            .collect();
        let initial_cluster = initial_cluster.join(",");
        let mut servers = Servers::default();
        for node in 0..n {
            let client_url = format!("http://127.0.0.1:{}", client_ports[node]);
            let peer_url = format!("http://127.0.0.1:{}", peer_ports[node]);
            let mut command = Command::new(binary);
            command
                .arg("--name")
                .arg(format!("e{node}"))
                .arg("--data-dir")
                .arg(dir.join(format!("e{node}.data")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "mimid-bench"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            servers.spawn(
                &format!("etcd e{node}"),
                &mut command,
                &dir.join(format!("e{node}.log")),
                client_ports[node],
            )?;
        }
        Ok(servers)
    }

    /// One sender per room, in room order, each with its own connection to its member.
    async fn connect_senders(
        servers: &Servers,
        args: &PeerArgs,
    ) -> anyhow::Result<Vec<EtcdSender>> {
        let mut senders = Vec::with_capacity(args.rooms as usize);
        for room in 0..u64::from(args.rooms) {
            let node = args.sender_node(room);
            let addr = servers.clients[node];
            let conn = HttpConn::connect(addr)
                .await
                .with_context(|| format!("connecting room {room}'s sender to e{node}"))?;
            senders.push(EtcdSender {
                idx: room,
                addr,
                key: format!("room/{node}/{room}"),
                conn: Some(conn),
                message_bytes: args.message_bytes as usize,
                sent: 0,
            });
        }
        Ok(senders)
    }

    /// One watcher per member, on the key prefix of the previous member's senders; returns once
    /// every watch is created (so every later revision reaches it).
    async fn start_subscribers(servers: &Servers, args: &PeerArgs) -> anyhow::Result<Subscribers> {
        let counters = Arc::new(SubscriberCounters::default());
        let mut subscribers = Subscribers::new(counters.clone());
        for sender_node in 0..args.nodes as usize {
            let node = args.subscriber_node(sender_node);
            let prefix = format!("room/{sender_node}/");
            let body = serde_json::json!({
                "create_request": {
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&prefix_range_end(prefix.as_bytes())),
                }
            })
            .to_string();
            let mut conn = HttpConn::connect(servers.clients[node])
                .await
                .with_context(|| format!("connecting the watcher to e{node}"))?;
            let mut watch = tokio::time::timeout(SETUP_TIMEOUT, async {
                conn.send_post("/v3/watch", body.as_bytes()).await?;
                let (status, framing) = conn.read_head().await?;
                if status != 200 || framing != Framing::Chunked {
                    bail!("watch answered HTTP {status} ({framing:?})");
                }
                let mut watch = WatchStream::new(conn);
                // The first result confirms the watch.
                let first = watch.next_result().await?;
                if first["result"]["created"] != Value::Bool(true) {
                    bail!("the first watch result is not `created`: {first}");
                }
                anyhow::Ok(watch)
            })
            .await
            .with_context(|| format!("creating the watch on e{node}: timed out"))?
            .with_context(|| format!("creating the watch on e{node}"))?;
            let counters = counters.clone();
            subscribers.spawn(async move {
                // Bounded: aborted by Subscribers::finish.
                loop {
                    match watch.next_result().await {
                        Ok(result) => {
                            let events = result["result"]["events"]
                                .as_array()
                                .map_or(0, |events| events.len() as u64);
                            counters.delivered.fetch_add(events, Ordering::Relaxed);
                        }
                        Err(error) => {
                            counters.failed(format!("watcher: {error:#}"));
                            return;
                        }
                    }
                }
            });
        }
        Ok(subscribers)
    }

    async fn stored(servers: &Servers) -> anyhow::Result<u64> {
        revision(servers.clients[0]).await
    }

    /// Waits until a put through every member is answered (a leader is elected and known).
    async fn ready(servers: &mut Servers, _nodes: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for (node, addr) in servers.clients.clone().into_iter().enumerate() {
            let body = put_body(&format!("setup/{node}"), b"setup");
            // Bounded by READY_TIMEOUT.
            loop {
                servers.check_running()?;
                let attempt = tokio::time::timeout(SETUP_TIMEOUT, async {
                    let mut conn = HttpConn::connect(addr).await?;
                    conn.post("/v3/kv/put", &body).await
                })
                .await;
                match attempt {
                    Ok(Ok((200, _))) => break,
                    _ if Instant::now() >= deadline => {
                        bail!("etcd member e{node} at {addr} does not accept puts")
                    }
                    _ => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
        }
        Ok(())
    }
}

/// The store's current revision, from an empty range request through `addr`.
async fn revision(addr: SocketAddr) -> anyhow::Result<u64> {
    let mut conn = HttpConn::connect(addr).await?;
    let body = serde_json::json!({ "key": b64(b"revision"), "count_only": true }).to_string();
    let (status, answer) =
        tokio::time::timeout(SETUP_TIMEOUT, conn.post("/v3/kv/range", body.as_bytes()))
            .await
            .context("reading the revision timed out")??;
    if status != 200 {
        bail!("reading the revision: HTTP {status}");
    }
    header_revision(&answer).context("the range answer has no header.revision")
}

/// `header.revision` of an answer (the gateway writes 64-bit integers as strings).
fn header_revision(answer: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(answer).ok()?;
    let revision = &value["header"]["revision"];
    revision
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| revision.as_u64())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn put_body(key: &str, value: &[u8]) -> Vec<u8> {
    serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(value) })
        .to_string()
        .into_bytes()
}

/// The end of the range `[prefix, end)` of every key starting with `prefix`: the prefix with
/// its last byte incremented (etcd's `clientv3.GetPrefixRangeEnd`).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: the range to the end of the keyspace.
    vec![0]
}

/// Room `idx`'s sender: puts to its key and waits for the answer.
pub struct EtcdSender {
    idx: u64,
    addr: SocketAddr,
    key: String,
    /// `None` after an abandoned operation or a failed connection: the next one reconnects.
    conn: Option<HttpConn>,
    message_bytes: usize,
    sent: u64,
}

impl Sender for EtcdSender {
    fn availability(&self) -> Availability {
        Availability::Ready
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let value = message_text(self.idx, self.sent, self.message_bytes);
        self.sent += 1;
        if self.conn.is_none() {
            let conn = HttpConn::connect(self.addr)
                .await
                .map_err(|_| ErrorKind::Transport)?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().ok_or(ErrorKind::Transport)?;
        let body = put_body(&self.key, value.as_bytes());
        let (status, answer) = match conn.post("/v3/kv/put", &body).await {
            Ok(answer) => answer,
            Err(_) => {
                self.conn = None;
                return Err(ErrorKind::Transport);
            }
        };
        if status != 200 {
            return Err(ErrorKind::Status(status));
        }
        header_revision(&answer)
            .map(|_| ())
            .ok_or(ErrorKind::Malformed)
    }

    fn on_abandoned(&mut self) {
        // A request or answer was cut in the middle: the connection's framing is unknown.
        self.conn = None;
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

/// An HTTP/1.1 keep-alive connection to one member, one request at a time.
struct HttpConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    host: String,
    line: Vec<u8>,
    out: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (read, write) = stream.into_split();
        Ok(HttpConn {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer: write,
            host: addr.to_string(),
            line: Vec::new(),
            out: Vec::with_capacity(1024),
        })
    }

    /// Sends `POST path` with a JSON `body` and returns the status and the whole body.
    async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send_post(path, body).await?;
        let (status, framing) = self.read_head().await?;
        let body = match framing {
            Framing::Length(len) => {
                let mut body = vec![0; len];
                self.reader.read_exact(&mut body).await?;
                body
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                // Bounded by MAX_BODY.
                while let Some(chunk) = self.read_chunk().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_BODY {
                        bail!("a response body is larger than {MAX_BODY} bytes");
                    }
                }
                body
            }
        };
        Ok((status, body))
    }

    async fn send_post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        self.out.extend_from_slice(body);
        self.writer.write_all(&self.out).await?;
        Ok(())
    }

    /// Reads the status line and headers; returns the status and how the body is framed.
    async fn read_head(&mut self) -> anyhow::Result<(u16, Framing)> {
        self.read_line().await?;
        let status = parse_status_line(&self.line)?;
        let mut framing = None;
        for _ in 0..MAX_HEADERS {
            self.read_line().await?;
            if self.line.is_empty() {
                return framing
                    .map(|framing| (status, framing))
                    .context("a response has neither Content-Length nor chunked encoding");
            }
            if let Some(found) = parse_framing_header(&self.line)? {
                framing = Some(found);
            }
        }
        bail!("a response has more than {MAX_HEADERS} header lines")
    }

    /// The next chunk of a chunked body, `None` after the last one (and its trailer).
    async fn read_chunk(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.read_line().await?;
        let size_text = self.line.split(|b| *b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .with_context(|| {
                format!(
                    "malformed chunk size {:?}",
                    String::from_utf8_lossy(&self.line)
                )
            })?;
        if size == 0 {
            // Trailer lines until the empty one.
            for _ in 0..MAX_HEADERS {
                self.read_line().await?;
                if self.line.is_empty() {
                    return Ok(None);
                }
            }
            bail!("a chunked body has more than {MAX_HEADERS} trailer lines");
        }
        if size > MAX_BODY {
            bail!("a chunk of {size} bytes is larger than {MAX_BODY}");
        }
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).await?;
        if !chunk.ends_with(b"\r\n") {
            bail!("a chunk is not followed by CRLF");
        }
        chunk.truncate(size);
        Ok(Some(chunk))
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

/// The status code of `HTTP/1.1 200 OK`.
fn parse_status_line(line: &[u8]) -> anyhow::Result<u16> {
    let text = std::str::from_utf8(line).context("a status line is not UTF-8")?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {text:?}");
    }
    parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {text:?}"))
}

/// The body framing a header line sets, if any.
fn parse_framing_header(line: &[u8]) -> anyhow::Result<Option<Framing>> {
    let text = String::from_utf8_lossy(line);
    let Some((name, value)) = text.split_once(':') else {
        bail!("malformed header line {text:?}");
    };
    let (name, value) = (name.trim(), value.trim());
    if name.eq_ignore_ascii_case("content-length") {
        let len: usize = value
            .parse()
            .with_context(|| format!("malformed Content-Length {value:?}"))?;
        if len > MAX_BODY {
            bail!("a response body of {len} bytes is larger than {MAX_BODY}");
        }
        Ok(Some(Framing::Length(len)))
    } else if name.eq_ignore_ascii_case("transfer-encoding")
        && value.to_ascii_lowercase().contains("chunked")
    {
        Ok(Some(Framing::Chunked))
    } else {
        Ok(None)
    }
}

/// The results of a watch: newline-separated JSON objects in a chunked body (chunks need not
/// align with objects).
struct WatchStream {
    conn: HttpConn,
    pending: Vec<u8>,
}

impl WatchStream {
    fn new(conn: HttpConn) -> WatchStream {
        WatchStream {
            conn,
            pending: Vec::new(),
        }
    }

    /// The next JSON object of the stream.
    ///
    /// Cancel safety: not safe (a chunk cut in the middle is lost); the watcher is only ever
    /// aborted for good.
    async fn next_result(&mut self) -> anyhow::Result<Value> {
        // Bounded by the stream: each turn consumes one chunk.
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).context("a watch result is not JSON");
            }
            match self.conn.read_chunk().await? {
                Some(chunk) => {
                    self.pending.extend_from_slice(&chunk);
                    if self.pending.len() > MAX_BODY {
                        bail!("a watch result is larger than {MAX_BODY} bytes");
                    }
                }
                None => bail!("the watch stream ended"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_range_end(b"room/0/"), b"room/00".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn status_lines_and_framing_headers_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK").expect("valid"), 200);
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable").expect("valid"),
            503
        );
        assert!(parse_status_line(b"SSH-2.0 x").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
        assert_eq!(
            parse_framing_header(b"Content-Length: 112").expect("valid"),
            Some(Framing::Length(112))
        );
        assert_eq!(
            parse_framing_header(b"transfer-encoding: chunked").expect("valid"),
            Some(Framing::Chunked)
        );
        assert_eq!(
            parse_framing_header(b"Content-Type: application/json").expect("valid"),
            None
        );
        assert!(parse_framing_header(b"Content-Length: many").is_err());
        assert!(parse_framing_header(b"no colon").is_err());
    }

    #[test]
    fn revisions_are_read_from_strings_or_numbers() {
        let answer =
            br#"{"header":{"cluster_id":"1","member_id":"2","revision":"42","raft_term":"2"}}"#;
        assert_eq!(header_revision(answer), Some(42));
        assert_eq!(header_revision(br#"{"header":{"revision":7}}"#), Some(7));
        assert_eq!(header_revision(br#"{"error":"x"}"#), None);
    }

    #[test]
    fn put_bodies_carry_base64_key_and_value() {
        let body: Value = serde_json::from_slice(&put_body("room/0/1", b"bar")).expect("JSON");
        assert_eq!(body["key"], "cm9vbS8wLzE=");
        assert_eq!(body["value"], "YmFy");
    }
}
