//! HTTP/3 (RFC 9114) on quinn: the listener that carries the client and server-to-server APIs
//! ([`server`]) and a client for calling peers and for tests ([`client`]).
//!
//! This layer moves bytes and enforces transport bounds (streams, connections, body size,
//! request time); it knows nothing about MIMI routes. The API layer plugs in as a [`Handler`]
//! and sees fully read, size-checked requests together with the verified TLS identity of the
//! peer ([`PeerInfo`]), which it needs for MIMI protocol-06 §4.1's `From`/`Host` checks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub mod client;
pub mod server;

pub use client::{ClientLimits, H3Client, H3ClientError};
pub use server::{H3Limits, H3Server, H3ServerError, ShutdownHandle};

/// A request whose body has been read completely (and within `limits.max_body_bytes`).
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub method: http::Method,
    /// The request target, with authority and scheme as the client sent them.
    pub uri: http::Uri,
    /// The header fields.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Who sent it.
    pub peer: PeerInfo,
}

/// The transport-level identity of the sender of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// UDP address of the peer.
    pub remote: SocketAddr,
    /// dNSNames of the client certificate, verified against the configured CA during the
    /// handshake; empty when the client presented no certificate (a client authenticating with
    /// a bearer token).
    pub dns_names: Arc<[String]>,
}

/// A response body.
#[derive(Debug)]
pub enum ResponseBody {
    /// The whole body at once.
    Full(Bytes),
    /// A long-lived stream: each chunk is sent as it arrives; the response ends when the sender
    /// is dropped (or the server shuts down). The channel is bounded by whoever creates it,
    /// which is where a slow reader becomes visible (`limits.stream_queue`).
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status.
    pub status: http::StatusCode,
    /// The header fields. `content-length` is set by the server for full bodies.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: ResponseBody,
}

/// The API layer's entry point. Called once per request, on its own task.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`. Must not panic on bad input: a malformed request gets a 4xx response.
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}

impl Response {
    /// A response with a complete body and no extra headers.
    pub fn full(status: http::StatusCode, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            headers: http::HeaderMap::new(),
            body: ResponseBody::Full(body.into()),
        }
    }

    /// An error or status response with a short human-readable reason as `text/plain`.
    pub fn text(status: http::StatusCode, reason: impl Into<String>) -> Self {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Response {
            status,
            headers,
            body: ResponseBody::Full(Bytes::from(reason.into())),
        }
    }

    /// A long-lived streaming response fed by `chunks`.
    pub fn stream(status: http::StatusCode, chunks: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Response {
            status,
            headers: http::HeaderMap::new(),
            body: ResponseBody::Stream(chunks),
        }
    }
}
