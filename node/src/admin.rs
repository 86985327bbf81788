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
//!
//! The listener is unauthenticated. The probes and metrics carry no user data, but a backup
//! carries everything the provider replicates (room state and logs, the directory with token
//! hashes and KeyPackages): bind `admin_listen` to loopback or a private interface only
//! reachable by operators, never to a public one. It deliberately has no other routes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backup::{BackupRefused, Backups, BACKUP_PATH};
use crate::metrics::{Metrics, CONTENT_TYPE};

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
}

/// Serves the admin routes on `listener` until the returned task is aborted or the listener
/// fails (logged as an error).
pub async fn serve_admin(listener: TcpListener, state: AdminState) -> JoinHandle<()> {
    let app = router(state);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "admin listener failed");
        }
    })
}

/// The admin routes, for serving on a custom listener.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(BACKUP_PATH, post(backup))
        .with_state(state)
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = AdminState {
            ready,
            metrics,
            backups,
        };
        let task = serve_admin(listener, state).await;
        (addr, task)
    }

    /// A minimal HTTP/1.1 request without a body: status and raw body bytes.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<u8>) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head");
        let status = std::str::from_utf8(&response[..head_end])
            .unwrap()
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        (status, response[head_end + 4..].to_vec())
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
