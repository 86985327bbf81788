//! The plain-HTTP admin listener (DESIGN.md §6): liveness, readiness and Prometheus metrics for
//! orchestrators and scrapers.
//!
//! - `GET /healthz`: 200 while the process runs and the admin task is scheduled; a hung runtime
//!   fails it by timing out, which is the point.
//! - `GET /readyz`: 200 when the readiness check passes, 503 with the check's reason otherwise
//!   (e.g. "shard 3 has no leader"), so a load balancer stops sending traffic without killing
//!   the process.
//! - `GET /metrics`: the [`Metrics`] registry in the OpenMetrics text format.
//! - `POST /admin/backup`: an online backup of every shard as the response body
//!   ([`crate::backup`] has the format and the consistency argument): 200 with the file, 409
//!   while another backup runs, 503 when the node is not ready, 500 when a shard cannot be
//!   serialised. Counted in `mimid_backups_total{result}`.
//! - Abuse handling (MIMI.md §5.8, §13; ops/runbooks/abuse.md), JSON bodies:
//!   - `GET /admin/abuse/reports`: every abuse report the rooms hosted here received, with
//!     the messages the reporters revealed ([`ReportsListing`]);
//!   - `GET /admin/abuse/blocks`: the blocklist ([`BlocklistListing`]);
//!   - `POST /admin/abuse/block` and `POST /admin/abuse/unblock` with `{"target": T}`, `T` a
//!     user URI (`mimi://b.example/u/bob`) or a provider domain (`b.example`): 200 with
//!     [`BlockAnswer`] once every shard applied it; 400 for a target that is neither, 507
//!     when the blocklist is full, 503 when a shard has no leader (repeat it).
//! - `POST /admin/rooms/status` with `{"room": "mimi://<domain>/r/<name>"}` (data residency,
//!   issue 9; `mimid room status`): where the room lives, as
//!   [`RoomStatus`](mimid_actors::hub::residency::RoomStatus): whether it exists, its shard,
//!   the residency set it is pinned to and that set's regions, and the shard's leader, voters
//!   and learners with their regions as shard 0's descriptor records them. 400 for a body or
//!   room id that does not parse, 503 while the shard the room lives in (or its home shard,
//!   holding the pin) cannot be read (repeat it).
//! - `/admin/cluster/*` (status, drain, undrain, add and decommission nodes): served on the same
//!   listener by [`crate::cluster_ops::routes`], merged in by `server.rs`; the cluster
//!   operations add their part to the readiness check (draining, decommissioning).
//!
//! The probes and metrics carry no user data and are open. Everything else is an operator
//! route behind a bearer token ([`auth`], issue 6): a backup carries everything the provider
//! replicates (room state and logs, the directory with token hashes and KeyPackages, the
//! provider's private keys), abuse reports carry message contents, the block routes change who
//! may use the provider, a room status tells which rooms exist and where their data is, and
//! the cluster routes change which nodes hold its data. With `admin_token_file` set they
//! answer 401 without `Authorization: Bearer <token>` and 403 with another token; without it
//! they are open, which the configuration allows only on a loopback `admin_listen`. The token
//! crosses the listener in clear text: keep `admin_listen` on loopback or a private interface
//! only reachable by operators and scrapers, never on a public one. The listener deliberately
//! has no other routes.

pub mod auth;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mimid_actors::command::Submitter;
use mimid_actors::hub::{Hub, HubError};
use mimid_actors::ids::RoomId;
use mimid_actors::moderation::BlockTarget;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use self::auth::{AdminAuth, AdminToken};
use crate::backup::{BackupRefused, Backups, BACKUP_PATH};
use crate::content::MimiContent;
use crate::metrics::{Metrics, CONTENT_TYPE};

/// `GET`: the abuse reports of the rooms hosted here.
pub const REPORTS_PATH: &str = "/admin/abuse/reports";
/// `GET`: the blocklist.
pub const BLOCKS_PATH: &str = "/admin/abuse/blocks";
/// `POST {"target": T}`: blocks a user or a provider.
pub const BLOCK_PATH: &str = "/admin/abuse/block";
/// `POST {"target": T}`: unblocks a user or a provider.
pub const UNBLOCK_PATH: &str = "/admin/abuse/unblock";
/// `POST {"room": R}`: where room `R` lives
/// ([`RoomStatus`](mimid_actors::hub::residency::RoomStatus)).
pub const ROOM_STATUS_PATH: &str = "/admin/rooms/status";
/// Longest admin answer [`admin_call`] reads.
const MAX_ADMIN_ANSWER: u64 = 64 << 20;
/// How long [`admin_call`] waits for an answer.
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A readiness check: `Ok` when the node can serve traffic, otherwise why not. It runs on the
/// admin listener's task for every `/readyz` request, so it must be cheap and non-blocking
/// (read a flag or an atomic, do not wait for the cluster).
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    /// The readiness check behind `/readyz`.
    pub ready: ReadinessCheck,
    /// The metrics behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The backups behind `POST /admin/backup`.
    pub backups: Arc<Backups>,
    /// The hub behind the abuse and room status routes; `None` answers them 503.
    pub hub: Option<Arc<Hub>>,
    /// The gate in front of the operator routes ([`auth`]).
    pub auth: Arc<AdminAuth>,
}

/// `GET /admin/abuse/reports`: the reports of every shard, read where each is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportsListing {
    pub reports: Vec<ReportEntry>,
    /// Shards no node could answer for just now, with the reason: their reports are missing
    /// from `reports` (repeat the request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<MissingShard>,
}

/// A shard whose reports a listing lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingShard {
    pub shard: u64,
    pub reason: String,
}

/// One stored abuse report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    /// The reported room (hosted here).
    pub room: String,
    /// Hub time the report was recorded (ms since the UNIX epoch).
    pub received_ms: u64,
    /// Who handed it in: `provider <domain>` or `client <uri>`.
    pub submitted_by: String,
    pub reporting_user: Option<String>,
    pub alleged_abuser: String,
    /// protocol-06 `AbuseType` (no taxonomy is defined yet).
    pub reason_code: u8,
    pub note: String,
    pub messages: Vec<ReportedMessageEntry>,
}

/// One message of a report, whose frank the hub validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedMessageEntry {
    pub sender: String,
    /// The hub's accepted time of the message (ms since the UNIX epoch).
    pub accepted_ms: u64,
    /// The text, when the content is a single `text/plain` part.
    pub text: Option<String>,
    /// The MIMI content bytes, base64 (standard alphabet).
    pub content_base64: String,
}

/// `GET /admin/abuse/blocks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocklistListing {
    pub users: Vec<String>,
    pub providers: Vec<String>,
}

/// The body of `POST /admin/abuse/block` and `/unblock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// A user URI or a provider domain.
    pub target: String,
}

/// The answer to `POST /admin/abuse/block` and `/unblock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAnswer {
    /// The target as the node understood it.
    pub target: String,
    /// Whether it is blocked now.
    pub blocked: bool,
    /// Whether this request changed the blocklist.
    pub changed: bool,
}

/// The body of `POST /admin/rooms/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatusRequest {
    /// The room's URI, `mimi://<domain>/r/<name>`.
    pub room: String,
}

/// Serves the admin routes and `operator_routes` (the cluster routes, in `server.rs`) on
/// `listener` until the returned task is aborted or the listener fails (logged as an error).
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    operator_routes: Router,
) -> JoinHandle<()> {
    let app = router(state, operator_routes)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "admin listener failed");
        }
    })
}

/// The admin routes with `operator_routes` merged in, every one of them behind
/// `state.auth` ([`auth::require_token`]): the gate wraps the whole router, the fallback
/// included, so no route added here or merged in can skip it.
pub fn router(state: AdminState, operator_routes: Router) -> Router {
    let gate = auth::Gate {
        auth: state.auth.clone(),
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(BACKUP_PATH, post(backup))
        .route(REPORTS_PATH, get(reports))
        .route(BLOCKS_PATH, get(blocks))
        .route(BLOCK_PATH, post(block))
        .route(UNBLOCK_PATH, post(unblock))
        .route(ROOM_STATUS_PATH, post(room_status))
        .with_state(state)
        .merge(operator_routes)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            auth::require_token,
        ))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match (state.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

/// Cancel safety: a client that goes away drops the request and frees the backup slot.
async fn backup(State(state): State<AdminState>) -> Response {
    // A shard without a leader has nothing consistent to give; say why instead of waiting.
    if let Err(reason) = (state.ready)() {
        state.backups.count_refused();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response();
    }
    match state.backups.take().await {
        Ok(file) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"mimid.backup\"",
                ),
            ],
            file,
        )
            .into_response(),
        Err(refused) => {
            let status = match refused {
                BackupRefused::InProgress => StatusCode::CONFLICT,
                BackupRefused::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
                BackupRefused::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if refused == BackupRefused::InProgress {
                tracing::info!(%refused, "backup refused");
            } else {
                tracing::warn!(%refused, "backup refused");
            }
            (status, format!("{refused}\n")).into_response()
        }
    }
}

fn no_hub() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "abuse handling is not available on this listener\n",
    )
        .into_response()
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}\n"),
        )
            .into_response(),
    }
}

async fn reports(State(state): State<AdminState>) -> Response {
    let Some(hub) = &state.hub else {
        return no_hub();
    };
    let (reports, missing) = hub.abuse_reports().await;
    let reports = reports
        .into_iter()
        .map(|(room, stored)| {
            let report = stored.report;
            ReportEntry {
                room: room.to_string(),
                received_ms: stored.received_ts_ms,
                submitted_by: match &report.submitter {
                    Submitter::Client(client) => format!("client {client}"),
                    Submitter::Provider(domain) => format!("provider {domain}"),
                },
                reporting_user: report.reporting_user.map(|user| user.to_string()),
                alleged_abuser: report.alleged_abuser.to_string(),
                reason_code: report.reason_code,
                note: report.note,
                messages: report
                    .messages
                    .into_iter()
                    .map(|message| ReportedMessageEntry {
                        sender: message.sender.to_string(),
                        accepted_ms: message.accepted_ts_ms,
                        text: MimiContent::decode(&message.content)
                            .ok()
                            .and_then(|content| content.text().map(str::to_owned)),
                        content_base64: STANDARD.encode(&message.content),
                    })
                    .collect(),
            }
        })
        .collect();
    json(&ReportsListing {
        reports,
        missing_shards: missing
            .into_iter()
            .map(|(shard, reason)| MissingShard { shard, reason })
            .collect(),
    })
}

async fn blocks(State(state): State<AdminState>) -> Response {
    let Some(hub) = &state.hub else {
        return no_hub();
    };
    let list = hub.blocklist();
    json(&BlocklistListing {
        users: list.users().map(|user| user.to_string()).collect(),
        providers: list.providers().map(str::to_owned).collect(),
    })
}

async fn block(State(state): State<AdminState>, body: Bytes) -> Response {
    set_block(state, body, true).await
}

async fn unblock(State(state): State<AdminState>, body: Bytes) -> Response {
    set_block(state, body, false).await
}

/// Cancel safety: a client that goes away may leave the block applied to some shards only;
/// repeating the request completes it.
async fn set_block(state: AdminState, body: Bytes, blocked: bool) -> Response {
    let Some(hub) = &state.hub else {
        return no_hub();
    };
    let request: BlockRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"target\": \"<user URI or domain>\"}}: {e}\n"),
            )
                .into_response()
        }
    };
    let target = match BlockTarget::parse(&request.target) {
        Ok(target) => target,
        Err(reason) => return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
    };
    match hub.set_block(target.clone(), blocked).await {
        Ok(Ok(changed)) => {
            tracing::info!(%target, blocked, changed, "blocklist set by the operator");
            json(&BlockAnswer {
                target: target.to_string(),
                blocked,
                changed,
            })
        }
        Ok(Err(full)) => (StatusCode::INSUFFICIENT_STORAGE, format!("{full}\n")).into_response(),
        Err(e) => {
            tracing::warn!(%target, blocked, error = %e, "blocklist change not applied everywhere");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not applied on every shard, repeat it: {e}\n"),
            )
                .into_response()
        }
    }
}

/// `POST /admin/rooms/status`. The body is checked before anything is read, so a bad one is
/// a 400 on any listener.
///
/// Cancel safety: cancel safe (it only reads).
async fn room_status(State(state): State<AdminState>, body: Bytes) -> Response {
    let request: RoomStatusRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"room\": \"mimi://<domain>/r/<name>\"}}: {e}\n"),
            )
                .into_response()
        }
    };
    let room = match RoomId::parse(&request.room) {
        Ok(room) => room,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "room {:?} is not a room id (mimi://<domain>/r/<name>): {e}\n",
                    request.room
                ),
            )
                .into_response()
        }
    };
    let Some(hub) = &state.hub else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "room status is not available on this listener\n",
        )
            .into_response();
    };
    match hub.room_status(&room).await {
        Ok(status) => json(&status),
        Err(HubError::Rejected(reason)) => {
            (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
        }
        Err(e @ (HubError::Unavailable(_) | HubError::Busy(_))) => {
            tracing::info!(%room, error = %e, "room status not available");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; repeat the request\n"),
            )
                .into_response()
        }
        Err(HubError::UnknownRoom) => {
            (StatusCode::NOT_FOUND, format!("unknown room {room}\n")).into_response()
        }
    }
}

/// One request to a node's admin listener at `admin` (`host:port`, optionally with
/// `http://`) over plain HTTP/1.1, with `token` as `Authorization: Bearer` when given: its
/// status and body. For `mimid abuse`, `mimid room`, `mimid node` and tests.
///
/// Cancel safety: cancel safe (nothing is kept between calls).
pub async fn admin_call(
    admin: &str,
    token: Option<&AdminToken>,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let host = admin.strip_prefix("http://").unwrap_or(admin);
    let host = host.strip_suffix('/').unwrap_or(host).to_owned();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&host)
            .await
            .with_context(|| format!("connecting to the admin listener {host}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             {}Content-Length: {}\r\nConnection: close\r\n\r\n",
            token.map(AdminToken::header_line).unwrap_or_default(),
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream
            .take(MAX_ADMIN_ANSWER)
            .read_to_end(&mut response)
            .await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(ADMIN_CALL_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} {path}: no answer within {ADMIN_CALL_TIMEOUT:?}"))??;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("the answer has no complete HTTP head")?;
    let status = std::str::from_utf8(&response[..head_end])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("the answer has no HTTP status")?;
    Ok((status, response[head_end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupFile, SnapshotSource};
    use crate::metrics::Limit;
    use mimid_cluster::{Cluster, ClusterConfig, SnapshotAllError, StateMachine};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 GET: returns the status code, the raw head and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        (status, head.to_owned(), body.to_owned())
    }

    async fn start(ready: ReadinessCheck, metrics: Arc<Metrics>) -> (SocketAddr, JoinHandle<()>) {
        let source: SnapshotSource = Arc::new(|_| Err(SnapshotAllError::Stopped));
        let backups = Arc::new(Backups::new("a.example".into(), source, metrics.clone()));
        start_with(ready, metrics, backups).await
    }

    async fn start_with(
        ready: ReadinessCheck,
        metrics: Arc<Metrics>,
        backups: Arc<Backups>,
    ) -> (SocketAddr, JoinHandle<()>) {
        start_gated(ready, metrics, backups, None, Router::new()).await
    }

    async fn start_gated(
        ready: ReadinessCheck,
        metrics: Arc<Metrics>,
        backups: Arc<Backups>,
        token: Option<&AdminToken>,
        operator_routes: Router,
    ) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = AdminState {
            ready,
            metrics,
            backups,
            hub: None,
            auth: Arc::new(AdminAuth::new(token)),
        };
        let task = serve_admin(listener, state, operator_routes).await;
        (addr, task)
    }

    /// A minimal HTTP/1.1 request with extra header lines: status, raw head and body.
    async fn request_with(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
    ) -> (u16, String, Vec<u8>) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head");
        let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        (status, head, response[head_end + 4..].to_vec())
    }

    /// A minimal HTTP/1.1 request without a body: status and raw body bytes.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<u8>) {
        let (status, _, body) = request_with(addr, method, path, "").await;
        (status, body)
    }

    /// Counts applied commands; `apply` of [`BLOCK`] waits for the test to open the gate, which
    /// holds the real cluster driver (and so any backup it is asked for).
    struct Gated {
        applied: u64,
        entered: std::sync::mpsc::Sender<()>,
        release: Arc<parking_lot::Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    const BLOCK: &[u8] = b"block";

    impl StateMachine for Gated {
        type Output = u64;
        fn apply(&mut self, _index: u64, command: &[u8]) -> u64 {
            if command == BLOCK {
                self.entered.send(()).expect("test waits");
                let release = self.release.lock();
                release.recv_timeout(WAIT).expect("test opens the gate");
            }
            self.applied += 1;
            self.applied
        }
        fn snapshot(&self) -> Vec<u8> {
            self.applied.to_be_bytes().to_vec()
        }
        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            let bytes = snapshot.try_into().map_err(|_| "not 8 bytes".to_owned())?;
            self.applied = u64::from_be_bytes(bytes);
            Ok(())
        }
    }

    const WAIT: Duration = Duration::from_secs(20);

    async fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `POST /admin/backup` over a real cluster: the file is a decodable backup of every shard;
    /// a second request while one waits for the driver is refused with 409 and changes
    /// nothing; a node that is not ready answers 503; every outcome is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backups_are_served_one_at_a_time_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ClusterConfig::new(1, dir.path());
        config.shards = 2;
        config.tick_interval = Duration::from_millis(10);
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let release_rx = Arc::new(parking_lot::Mutex::new(release_rx));
        let cluster = Cluster::start(config, |_| Gated {
            applied: 0,
            entered: entered_tx.clone(),
            release: release_rx.clone(),
        })
        .expect("cluster starts");
        let handle = cluster.handle();
        wait_until("cluster ready", || handle.is_ready()).await;

        let metrics = Arc::new(Metrics::new());
        let source: SnapshotSource = {
            let handle = handle.clone();
            Arc::new(move |done| handle.snapshot_all(done))
        };
        let backups = Arc::new(Backups::new("a.example".into(), source, metrics.clone()));
        let is_ready = Arc::new(AtomicBool::new(true));
        let flag = is_ready.clone();
        let ready: ReadinessCheck = Arc::new(move || {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("shard 1 has no leader".into())
            }
        });
        let (addr, task) = start_with(ready, metrics.clone(), backups.clone()).await;

        // Hold the driver inside an apply, so the first backup waits for it.
        let (tx, blocked) = std::sync::mpsc::channel();
        handle
            .propose(1, BLOCK.to_vec(), Box::new(move |r| tx.send(r).unwrap()))
            .unwrap();
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("driver entered apply");
        let first = tokio::spawn(request(addr, "POST", BACKUP_PATH));
        wait_until("first backup running", || backups.is_running()).await;
        let (status, body) = request(addr, "POST", BACKUP_PATH).await;
        assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("already running"));

        release_tx.send(()).unwrap();
        blocked.recv_timeout(WAIT).unwrap().unwrap();
        let (status, body) = first.await.unwrap();
        assert_eq!(status, 200);
        let file = BackupFile::decode(&body).expect("a backup file");
        assert_eq!(file.domain, "a.example");
        assert_eq!(file.shards.len(), 2);
        // Shard 1's part is its state after the gated command.
        assert_eq!(file.shards[1].data, 1u64.to_be_bytes());
        assert!(!backups.is_running());
        assert_eq!(request(addr, "POST", BACKUP_PATH).await.0, 200);

        is_ready.store(false, Ordering::SeqCst);
        let (status, body) = request(addr, "POST", BACKUP_PATH).await;
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("shard 1 has no leader"));
        assert_eq!(request(addr, "GET", BACKUP_PATH).await.0, 405);

        let text = metrics.encode();
        for (result, count) in [("completed", 2), ("busy", 1), ("failed", 1)] {
            let series = format!("mimid_backups_total{{result=\"{result}\"}} {count}");
            assert!(text.contains(&series), "{series}\n{text}");
        }
        task.abort();
        drop(cluster);
    }

    #[tokio::test]
    async fn healthz_and_readyz_follow_the_readiness_check() {
        let is_ready = Arc::new(AtomicBool::new(false));
        let flag = is_ready.clone();
        let ready: ReadinessCheck = Arc::new(move || {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("shard 3 has no leader".into())
            }
        });
        let (addr, task) = start(ready, Arc::new(Metrics::new())).await;

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("shard 3 has no leader"), "{body}");

        is_ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/other").await.0, 404);
        task.abort();
    }

    /// Without a hub (a listener serving probes only) the abuse routes say so.
    #[tokio::test]
    async fn abuse_routes_without_a_hub_are_unavailable() {
        let (addr, task) = start(Arc::new(|| Ok(())), Arc::new(Metrics::new())).await;
        let admin = addr.to_string();
        let (status, body) = admin_call(&admin, None, "GET", REPORTS_PATH, b"")
            .await
            .unwrap();
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        let body = br#"{"target":"b.example"}"#;
        let (status, _) = admin_call(&admin, None, "POST", BLOCK_PATH, body)
            .await
            .unwrap();
        assert_eq!(status, 503);
        assert_eq!(
            admin_call(&admin, None, "GET", BLOCK_PATH, b"")
                .await
                .unwrap()
                .0,
            405
        );
        task.abort();
    }

    /// `POST /admin/rooms/status` (issue 9, `mimid room status`) is an operator route: 401
    /// without the token and 403 with another, before the body is looked at. With the token, a
    /// body that is not `{"room": R}` and an `R` that is not a room id are 400s naming what is
    /// wrong; a well-formed request on a listener without a hub is 503; other methods 405.
    #[tokio::test]
    async fn room_status_needs_the_token_and_refuses_bad_bodies() {
        let metrics = Arc::new(Metrics::new());
        let source: SnapshotSource = Arc::new(|_| Err(SnapshotAllError::Stopped));
        let backups = Arc::new(Backups::new("a.example".into(), source, metrics.clone()));
        let token = AdminToken::generate();
        let (addr, task) = start_gated(
            Arc::new(|| Ok(())),
            metrics,
            backups,
            Some(&token),
            Router::new(),
        )
        .await;
        let admin = addr.to_string();
        let good = br#"{"room":"mimi://a.example/r/club"}"#;
        let call = |token: Option<AdminToken>, method: &'static str, body: &'static [u8]| {
            let admin = admin.clone();
            async move {
                let (status, body) =
                    admin_call(&admin, token.as_ref(), method, ROOM_STATUS_PATH, body)
                        .await
                        .expect("the listener answers");
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };

        let (status, body) = call(None, "POST", good).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("admin_token_file"), "{body}");
        let (status, body) = call(Some(AdminToken::generate()), "POST", good).await;
        assert_eq!(status, 403, "{body}");

        let refused: [(&'static [u8], &str); 6] = [
            (b"mimi://a.example/r/club", "the body must be {\"room\""),
            (
                br#"{"target":"mimi://a.example/r/club"}"#,
                "missing field `room`",
            ),
            (br#"{"room":7}"#, "the body must be"),
            (
                br#"{"room":"mimi://a.example/u/alice"}"#,
                "is not a room id (mimi://<domain>/r/<name>): URI is a user URI, expected a room",
            ),
            (
                br#"{"room":"https://a.example/r/club"}"#,
                "URI scheme is not mimi://",
            ),
            (br#"{"room":""}"#, "is not a room id"),
        ];
        for (request, reason) in refused {
            let (status, body) = call(Some(token.clone()), "POST", request).await;
            let shown = String::from_utf8_lossy(request);
            assert_eq!(status, 400, "{shown}: {body}");
            assert!(body.contains(reason), "{shown}: {body}");
        }

        let (status, body) = call(Some(token.clone()), "POST", good).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("room status is not available"), "{body}");
        assert_eq!(call(Some(token.clone()), "GET", b"").await.0, 405);
        task.abort();
    }

    /// Issue 6 over a real listener (RFC 6750 §2.1, §3): with a token configured, a backup and
    /// the merged-in cluster routes answer 401 with `WWW-Authenticate: Bearer` without it, 403
    /// with another, 200 with it; unknown paths are gated too; the probes and the scrape stay
    /// open; refusals take no backup and are counted on `/metrics`.
    #[tokio::test]
    async fn operator_routes_need_the_token_and_probes_stay_open() {
        let metrics = Arc::new(Metrics::new());
        let source: SnapshotSource = Arc::new(|done| {
            done(Ok(vec![mimid_cluster::ShardSnapshot {
                shard: 0,
                applied_index: 7,
                applied_term: 1,
                data: b"shard 0".to_vec(),
            }]));
            Ok(())
        });
        let backups = Arc::new(Backups::new("a.example".into(), source, metrics.clone()));
        let token = AdminToken::generate();
        let cluster_routes = Router::new().route(
            "/admin/cluster/status",
            axum::routing::get(|| async { "cluster status\n" }),
        );
        let (addr, task) = start_gated(
            Arc::new(|| Ok(())),
            metrics.clone(),
            backups,
            Some(&token),
            cluster_routes,
        )
        .await;
        let right = format!("Authorization: Bearer {}\r\n", token.secret());
        let wrong = format!(
            "Authorization: Bearer {}\r\n",
            AdminToken::generate().secret()
        );

        for (method, path) in [
            ("POST", BACKUP_PATH),
            ("GET", "/admin/cluster/status"),
            ("GET", "/nowhere"),
        ] {
            let (status, head, body) = request_with(addr, method, path, "").await;
            assert_eq!(status, 401, "{method} {path}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{head}"
            );
            assert!(String::from_utf8_lossy(&body).contains("admin_token_file"));
            let (status, _, body) = request_with(addr, method, path, &wrong).await;
            assert_eq!(status, 403, "{method} {path}");
            assert!(String::from_utf8_lossy(&body).contains("wrong"));
            let basic = "Authorization: Basic b3BlcmF0b3I6c2VjcmV0\r\n";
            assert_eq!(request_with(addr, method, path, basic).await.0, 401);
        }
        let text = metrics.encode();
        assert!(
            text.contains("mimid_backups_total{result=\"completed\"} 0"),
            "refused requests take no backup:\n{text}"
        );

        let (status, _, body) = request_with(addr, "POST", BACKUP_PATH, &right).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            BackupFile::decode(&body).expect("a backup").domain,
            "a.example"
        );
        let (status, _, body) = request_with(addr, "GET", "/admin/cluster/status", &right).await;
        assert_eq!((status, body.as_slice()), (200, &b"cluster status\n"[..]));
        assert_eq!(request_with(addr, "GET", "/nowhere", &right).await.0, 404);
        let (status, _) = admin_call(&addr.to_string(), Some(&token), "POST", BACKUP_PATH, b"")
            .await
            .unwrap();
        assert_eq!(status, 200);

        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(request_with(addr, "GET", path, "").await.0, 200, "{path}");
            assert_eq!(
                request_with(addr, "GET", path, &wrong).await.0,
                200,
                "{path}"
            );
        }
        let (_, _, scrape) = request_with(addr, "GET", "/metrics", "").await;
        let scrape = String::from_utf8(scrape).unwrap();
        for (outcome, count) in [
            ("authorized", 4),
            ("open", 0),
            ("missing_token", 6),
            ("wrong_token", 3),
        ] {
            let series = format!("mimid_admin_requests_total{{outcome=\"{outcome}\"}} {count}");
            assert!(scrape.contains(&series), "{series}\n{scrape}");
        }
        assert!(scrape.contains("mimid_backups_total{result=\"completed\"} 2"));
        assert_eq!(scrape.matches("# EOF").count(), 1);
        task.abort();
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let metrics = Arc::new(Metrics::new());
        metrics.count_limit_hit(Limit::MailboxFull);
        let (addr, task) = start(Arc::new(|| Ok(())), metrics).await;
        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            body.contains("mimid_limit_hits_total{limit=\"mailbox_full\"} 1"),
            "{body}"
        );
        task.abort();
    }
}
