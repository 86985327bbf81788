//! The HTTP/3 listener: an accept loop on a quinn endpoint, one task per connection, one task
//! per request, each bounded.
//!
//! Bounds (DESIGN.md §8), each with a metric when hit:
//! - connections: at most `max_connections` at once; further attempts are refused at the QUIC
//!   layer before any handshake work;
//! - streams: at most `max_concurrent_streams` request streams per connection, enforced by QUIC
//!   flow control (the client cannot even open more);
//! - requests: at most `max_concurrent_requests` in progress across all connections (push
//!   streams included); beyond it requests get 503 with a reason;
//! - header section: `max_header_bytes` (RFC 9114 §4.2.2, answered 431 by h3);
//! - body: `max_body_bytes`; a larger body is answered 413 and the rest is not read
//!   (RFC 9114 §4.1 allows answering before the request is complete; the stream is dropped after
//!   the answer, and quinn sends STOP_SENDING for the unread rest);
//! - time: headers and body must arrive within `request_timeout` (408 otherwise).
//!
//! Errors on a request are answered with a status and a short text reason; a client that goes
//! away ends its request's task. Nothing here panics on network input.
//!
//! Shutdown ([`ShutdownHandle::shutdown`]) stops accepting connections, sends GOAWAY
//! (RFC 9114 §5.2) on every connection, ends push streams cleanly, waits up to a grace period
//! for requests in progress, then closes the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::h3::error::Code;
use ::h3::server::RequestStream;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::{Handler, PeerInfo, Request, Response, ResponseBody};
use crate::config::LimitsSettings;
use crate::metrics::{Limit, Metrics};

/// Unidirectional streams a client may open: HTTP/3 needs three (control, QPACK encoder and
/// decoder, RFC 9114 §6.2); the rest is slack for reserved stream types peers may send
/// (RFC 9114 §6.2.3).
const MAX_UNI_STREAMS: u32 = 16;

/// H3_NO_ERROR (RFC 9114 §8.1), the application close code of a graceful shutdown.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// Transport bounds of the listener; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H3Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest request header section.
    pub max_header_bytes: u64,
    /// Request streams per connection.
    pub max_concurrent_streams: u32,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Requests in progress across all connections.
    pub max_concurrent_requests: usize,
    /// Time for a request's headers and body to arrive.
    pub request_timeout: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum H3ServerError {
    /// The rustls config is not usable for QUIC (no TLS 1.3 AES-128-GCM suite).
    #[error("TLS configuration cannot be used for QUIC")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A limit is out of range.
    #[error("invalid listener limits: {0}")]
    Limits(&'static str),
    /// The idle timeout does not fit a QUIC varint.
    #[error("idle timeout {0:?} is too large for QUIC")]
    IdleTimeout(Duration),
    /// The UDP socket cannot be bound.
    #[error("cannot bind UDP {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A bound, not yet serving, HTTP/3 listener.
pub struct H3Server {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Stops a running [`H3Server`]; cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

struct Shared {
    limits: H3Limits,
    metrics: Arc<Metrics>,
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
}

impl H3Limits {
    /// The listener's share of the node's configured limits.
    pub fn from_settings(settings: &LimitsSettings) -> Self {
        H3Limits {
            max_body_bytes: settings.max_body_bytes,
            max_header_bytes: settings.max_header_bytes,
            max_concurrent_streams: settings.max_concurrent_streams,
            max_connections: settings.max_connections,
            max_concurrent_requests: settings.max_concurrent_requests,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
        }
    }

    fn check(&self) -> Result<(), H3ServerError> {
        let counts = [
            (
                self.max_connections,
                "max_connections must be in 1..=2^32-1",
            ),
            (
                self.max_concurrent_requests,
                "max_concurrent_requests must be in 1..=2^32-1",
            ),
        ];
        for (count, reason) in counts {
            // Semaphores panic above their maximum, and shutdown drains by acquiring every
            // request permit at once, which takes a u32.
            if count == 0 || u32::try_from(count).is_err() {
                return Err(H3ServerError::Limits(reason));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err(H3ServerError::Limits(
                "max_concurrent_streams must be at least 1",
            ));
        }
        Ok(())
    }
}

impl H3Server {
    /// Binds the UDP socket. `tls` should come from [`crate::tls::server_config`]. Must be
    /// called within a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        limits: H3Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, H3ServerError> {
        limits.check()?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(limits.max_concurrent_streams.into());
        transport.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.idle_timeout)
                .map_err(|_| H3ServerError::IdleTimeout(limits.idle_timeout))?,
        ));
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport));
        // Connection attempts beyond the limit are refused by quinn before we see them.
        server_config.max_incoming(limits.max_connections);
        let endpoint = quinn::Endpoint::server(server_config, addr)
            .map_err(|source| H3ServerError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| H3ServerError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            limits,
            metrics,
            shutdown: watch::Sender::new(false),
        });
        Ok(H3Server {
            endpoint,
            local_addr,
            shared,
        })
    }

    /// The bound UDP address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the server once it is serving.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            endpoint: self.endpoint.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Starts accepting connections and passing their requests to `handler`. The returned task
    /// ends when the server shuts down.
    pub fn serve(self, handler: Arc<dyn Handler>) -> JoinHandle<()> {
        let span = tracing::info_span!("h3_listener", addr = %self.local_addr);
        tokio::spawn(accept_loop(self.endpoint, self.shared, handler).instrument(span))
    }
}

impl ShutdownHandle {
    /// Stops accepting connections, sends GOAWAY on every connection and ends push streams, waits
    /// up to `grace` for requests in progress, then closes the endpoint and waits (again up to
    /// `grace`) for the close to reach peers.
    ///
    /// Cancel safety: safe to drop; the server is then left draining and a second call resumes.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.send_replace(true);
        self.endpoint.set_server_config(None);
        let all_requests = u32::try_from(self.shared.limits.max_concurrent_requests)
            .expect("bind checked that max_concurrent_requests fits a u32");
        if tokio::time::timeout(grace, self.shared.requests.acquire_many(all_requests))
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "requests still in progress at the end of the grace period"
            );
        }
        self.endpoint.close(H3_NO_ERROR, b"server shutting down");
        if tokio::time::timeout(grace, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("connections did not drain before the endpoint was dropped");
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, handler: Arc<dyn Handler>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = stopping(&mut shutdown) => break,
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared.metrics.count_limit_hit(Limit::Connections);
            incoming.refuse();
            continue;
        };
        let remote = incoming.remote_address();
        let span = tracing::debug_span!("h3_connection", %remote);
        tokio::spawn(
            serve_connection(incoming, shared.clone(), handler.clone(), permit).instrument(span),
        );
    }
}

/// Serves one connection until the peer closes it, it idles out, or the server shuts down.
async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    handler: Arc<dyn Handler>,
    _permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(err) => {
            tracing::debug!(%err, "handshake failed");
            return;
        }
    };
    let peer = PeerInfo {
        remote,
        dns_names: crate::tls::peer_dns_names(&conn).into(),
    };
    let mut h3_conn = match ::h3::server::builder()
        .max_field_section_size(shared.limits.max_header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3_conn) => h3_conn,
        Err(err) => {
            tracing::debug!(%err, "HTTP/3 setup failed");
            return;
        }
    };

    // Dropping a JoinSet aborts its tasks, so requests never outlive their connection.
    let mut requests = JoinSet::new();
    let mut shutdown = shared.shutdown.subscribe();
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h3_conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let permit = shared.requests.clone().try_acquire_owned().ok();
                    requests.spawn(serve_request(
                        resolver,
                        peer.clone(),
                        shared.clone(),
                        handler.clone(),
                        permit,
                        conn.clone(),
                    ));
                }
                Ok(None) => break,
                Err(err) => {
                    if !err.is_h3_no_error() {
                        tracing::debug!(%err, "connection ended");
                    }
                    break;
                }
            },
            Some(joined) = requests.join_next(), if !requests.is_empty() => {
                if let Err(err) = joined {
                    if err.is_panic() {
                        tracing::error!(%err, "request task panicked");
                    }
                }
            }
            _ = stopping(&mut shutdown), if !draining => {
                draining = true;
                // GOAWAY with the last accepted request: requests in progress finish, new ones
                // are rejected with H3_REQUEST_REJECTED so clients retry elsewhere.
                if let Err(err) = h3_conn.shutdown(0).await {
                    tracing::debug!(%err, "sending GOAWAY failed");
                }
            }
        }
    }
}

/// Reads one request within the limits, passes it to the handler and sends the response.
async fn serve_request(
    resolver: ::h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    peer: PeerInfo,
    shared: Arc<Shared>,
    handler: Arc<dyn Handler>,
    permit: Option<OwnedSemaphorePermit>,
    conn: quinn::Connection,
) {
    let limits = &shared.limits;
    let deadline = Instant::now() + limits.request_timeout;
    let (head, mut stream) =
        match tokio::time::timeout_at(deadline, resolver.resolve_request()).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(err)) => {
                tracing::debug!(%err, "bad request headers");
                return;
            }
            Err(_) => {
                // Nothing to answer on: the headers never arrived.
                shared.metrics.count_limit_hit(Limit::RequestTimeout);
                return;
            }
        };
    let Some(_permit) = permit else {
        shared.metrics.count_limit_hit(Limit::ConcurrentRequests);
        stream.stop_sending(Code::H3_NO_ERROR);
        let reason = "server busy: too many requests in progress, retry later";
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        send_full(
            &mut stream,
            StatusCode::SERVICE_UNAVAILABLE,
            headers,
            reason.into(),
        )
        .await;
        return;
    };

    let (parts, ()) = head.into_parts();
    let body = match read_body(&mut stream, &parts.headers, limits.max_body_bytes, deadline).await {
        Ok(body) => body,
        Err(err) => {
            reject_body(&mut stream, err, &shared).await;
            return;
        }
    };

    let request = Request {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        peer,
    };
    let Response {
        status,
        headers,
        body,
    } = handler.handle(request).await;
    match body {
        ResponseBody::Full(body) => send_full(&mut stream, status, headers, body).await,
        ResponseBody::Stream(chunks) => {
            let shutdown = shared.shutdown.subscribe();
            send_stream(&mut stream, (status, headers), chunks, &conn, shutdown).await;
        }
    }
}

/// Answers a request whose body was refused, with a status and reason specific to `err`.
async fn reject_body(stream: &mut ServerStream, err: BodyError, shared: &Shared) {
    let limits = &shared.limits;
    match err {
        BodyError::TooLarge => {
            shared.metrics.count_limit_hit(Limit::BodySize);
            // No `stop_sending`: after a read h3 0.0.8 may leave one of h3-quinn 0.0.10
            // pending inside the stream, which then holds no receive half and would panic.
            // Dropping the stream after the answer stops the rest (quinn sends STOP_SENDING
            // for an unfinished receive stream).
            let reason = format!(
                "request body exceeds the limit of {} bytes",
                limits.max_body_bytes
            );
            send_text(stream, StatusCode::PAYLOAD_TOO_LARGE, reason).await;
        }
        BodyError::LengthMismatch => {
            let reason = "request body length does not match content-length";
            send_text(stream, StatusCode::BAD_REQUEST, reason.into()).await;
        }
        BodyError::Timeout => {
            // No `stop_sending` here: the timed-out `recv_data` was cancelled mid-read, which
            // leaves h3-quinn 0.0.10 without its receive half (stop_sending would panic).
            // The answer below still ends the request; dropping the stream stops the rest.
            shared.metrics.count_limit_hit(Limit::RequestTimeout);
            let reason = format!(
                "request body did not arrive within {} ms",
                limits.request_timeout.as_millis()
            );
            send_text(stream, StatusCode::REQUEST_TIMEOUT, reason).await;
        }
        BodyError::Stream(err) => {
            tracing::debug!(%err, "client went away while sending the body");
        }
    }
}

/// Resolves once shutdown has begun (or the server is gone). The watch guard is dropped here
/// so callers never hold it across an await.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

enum BodyError {
    TooLarge,
    LengthMismatch,
    Timeout,
    Stream(::h3::error::StreamError),
}

type ServerStream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Reads the whole body, refusing more than `max_body_bytes`: by the declared content-length
/// before reading anything, otherwise as soon as the running total passes the limit.
async fn read_body(
    stream: &mut ServerStream,
    headers: &http::HeaderMap,
    max_body_bytes: usize,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body_bytes as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.recv_data()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(err)) => return Err(BodyError::Stream(err)),
            Err(_) => return Err(BodyError::Timeout),
        };
        if body.len() + chunk.remaining() > max_body_bytes {
            return Err(BodyError::TooLarge);
        }
        body.put(chunk);
    }
    // RFC 9114 §4.1.2: a content-length that disagrees with the DATA frames is malformed.
    if declared.is_some_and(|length| length != body.len() as u64) {
        return Err(BodyError::LengthMismatch);
    }
    Ok(body.freeze())
}

/// Sends a short `text/plain` reason with `status`.
async fn send_text(stream: &mut ServerStream, status: StatusCode, reason: String) {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    send_full(stream, status, headers, Bytes::from(reason)).await;
}

/// Sends a complete response; failures mean the client went away and are only logged.
async fn send_full(
    stream: &mut ServerStream,
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
) {
    let mut head = http::Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = headers;
    head.headers_mut()
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    let sent = async {
        stream.send_response(head).await?;
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await
    };
    if let Err(err) = sent.await {
        tracing::debug!(%err, "client went away before the response was sent");
    }
}

/// Sends a streaming response chunk by chunk until the handler drops its sender, the server
/// shuts down (the stream then ends cleanly so the client reconnects elsewhere), or the client
/// goes away.
async fn send_stream(
    stream: &mut ServerStream,
    (status, headers): (StatusCode, http::HeaderMap),
    mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
    conn: &quinn::Connection,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut head = http::Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = headers;
    let pumped = async {
        stream.send_response(head).await?;
        loop {
            let chunk = tokio::select! {
                chunk = chunks.recv() => chunk,
                _ = stopping(&mut shutdown) => None,
            };
            let Some(chunk) = chunk else { break };
            stream.send_data(chunk).await?;
        }
        stream.finish().await
    };
    // Sending blocks on flow control while the client does not read; the connection closing
    // is the only other way out, so watch for it alongside.
    tokio::select! {
        sent = pumped => if let Err(err) = sent {
            tracing::debug!(%err, "client went away during a streaming response");
        },
        _ = conn.closed() => {}
    }
}
