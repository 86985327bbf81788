//! The plain-HTTP admin listener (DESIGN.md §6): liveness, readiness and Prometheus metrics for
//! orchestrators and scrapers.
//!
//! - `GET /healthz`: 200 while the process runs and the admin task is scheduled; a hung runtime
//!   fails it by timing out, which is the point.
//! - `GET /readyz`: 200 when the readiness check passes, 503 with the check's reason otherwise
//!   (e.g. "shard 3 has no leader"), so a load balancer stops sending traffic without killing
//!   the process.
//! - `GET /metrics`: the [`Metrics`] registry in the OpenMetrics text format.
//!
//! The listener is unauthenticated and carries no user data; bind `admin_listen` to a private
//! interface. It deliberately has no other routes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Limit;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let task = serve_admin(listener, AdminState { ready, metrics }).await;
        (addr, task)
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
