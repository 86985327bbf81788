//! An HTTP/3 client over one QUIC connection: for calling peer providers and nodes, and for
//! tests and the client library.
//!
//! One [`H3Client`] keeps one connection (RFC 9114 §3.3 asks clients not to open more than one
//! per server) and runs requests concurrently on it, one stream each. The h3 connection driver
//! runs on its own task for the client's lifetime. Responses are read up to
//! [`ClientLimits::max_response_bytes`]; streaming responses arrive through a bounded channel,
//! so a slow consumer slows the server down through QUIC flow control instead of growing memory.
//!
//! Closing follows floors.md pitfall 18: [`H3Client::close`] is for the side that received last
//! (a client that has read all its responses); it then waits for the endpoint to be idle so the
//! close reaches the server.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// H3_NO_ERROR (RFC 9114 §8.1), the application close code of a graceful close.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// Bounds of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest response body [`H3Client::request`] accepts. Default 1 MiB.
    pub max_response_bytes: usize,
    /// Chunks buffered per streaming response before reading pauses. Default 64.
    pub stream_queue: usize,
    /// Largest response header section (RFC 9114 §4.2.2). Default 16 KiB.
    pub max_header_bytes: u64,
    /// Interval of QUIC keep-alive packets, which keep long-lived streams open through the
    /// server's idle timeout and NAT bindings. Default 10 s.
    pub keep_alive: Duration,
    /// QUIC idle timeout. Default 30 s.
    pub idle_timeout: Duration,
}

/// Why a connection or request failed.
#[derive(Debug, thiserror::Error)]
pub enum H3ClientError {
    /// No UDP socket could be bound.
    #[error("cannot bind a UDP socket")]
    Bind(#[source] std::io::Error),
    /// The rustls config is not usable for QUIC.
    #[error("TLS configuration cannot be used for QUIC")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A limit is out of range.
    #[error("invalid client limits: {0}")]
    Limits(&'static str),
    /// The connection attempt was rejected locally (e.g. an invalid server name).
    #[error("cannot connect")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed (including TLS handshake failures).
    #[error("QUIC connection failed")]
    Connection(#[from] quinn::ConnectionError),
    /// The HTTP/3 connection failed.
    #[error("HTTP/3 connection failed")]
    H3Connection(#[from] ::h3::error::ConnectionError),
    /// The request stream failed (reset, connection lost, malformed response).
    #[error("HTTP/3 request failed")]
    Stream(#[from] ::h3::error::StreamError),
    /// The request could not be built (bad path or header).
    #[error("invalid request")]
    InvalidRequest(#[from] http::Error),
    /// The response body is larger than [`ClientLimits::max_response_bytes`].
    #[error("response body exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The limit.
        limit: usize,
    },
}

/// An HTTP/3 connection to one server.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send_request: ::h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: JoinHandle<()>,
    authority: String,
    limits: ClientLimits,
}

type ClientStream = ::h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_response_bytes: 1 << 20,
            stream_queue: 64,
            max_header_bytes: 16 << 10,
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl H3Client {
    /// Connects to `server`, verifying its certificate for `server_name` (a DNS name or an IP
    /// address). `tls` should come from [`crate::tls::client_config`] or
    /// [`crate::tls::client_config_with_identity`]. Must be called within a tokio runtime.
    ///
    /// Cancel safety: safe; a dropped attempt leaves nothing running.
    pub async fn connect(
        server: SocketAddr,
        server_name: &str,
        tls: rustls::ClientConfig,
        limits: ClientLimits,
    ) -> Result<Self, H3ClientError> {
        if limits.stream_queue == 0 {
            return Err(H3ClientError::Limits("stream_queue must be at least 1"));
        }
        let idle_timeout = quinn::IdleTimeout::try_from(limits.idle_timeout)
            .map_err(|_| H3ClientError::Limits("idle_timeout is too large for QUIC"))?;
        let bind_addr: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind_addr).map_err(H3ClientError::Bind)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(limits.keep_alive));
        transport.max_idle_timeout(Some(idle_timeout));
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        client_config.transport_config(Arc::new(transport));

        let conn = endpoint
            .connect_with(client_config, server, server_name)?
            .await?;
        let (mut driver, send_request) = ::h3::client::builder()
            .max_field_section_size(limits.max_header_bytes)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await?;
        let driver = tokio::spawn(async move {
            let err = driver.wait_idle().await;
            if !err.is_h3_no_error() {
                tracing::debug!(%err, "HTTP/3 client connection ended");
            }
        });
        Ok(H3Client {
            endpoint,
            conn,
            send_request,
            driver,
            authority: authority(server_name, server.port()),
            limits,
        })
    }

    /// Sends one request and reads the complete response.
    ///
    /// If the server answers before reading the whole body (e.g. 413, RFC 9114 §4.1), that
    /// response is returned even though sending the body failed.
    ///
    /// Cancel safety: safe; a dropped request resets its stream.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), H3ClientError> {
        let mut stream = self.send(method, path_and_query, headers, body).await?;
        let head = stream.recv_response().await?;
        let limit = self.limits.max_response_bytes;
        let mut received = BytesMut::new();
        while let Some(chunk) = stream.recv_data().await? {
            if received.len() + chunk.remaining() > limit {
                // Dropping the stream stops the server's sending (quinn sends STOP_SENDING for
                // an unfinished receive stream); `stop_sending` itself is unsafe here, see
                // `forward_chunks`.
                return Err(H3ClientError::ResponseTooLarge { limit });
            }
            received.put(chunk);
        }
        let (parts, ()) = head.into_parts();
        Ok((parts.status, parts.headers, received.freeze()))
    }

    /// Sends one request whose response is long-lived (a push stream) and returns its status
    /// and a bounded channel of body chunks as they arrive. Chunk boundaries are transport
    /// pieces, not messages: frame messages inside the body. The channel ends after the last
    /// chunk, or with an error if the stream fails; dropping the receiver cancels the stream.
    ///
    /// Cancel safety: safe; a dropped call resets its stream.
    pub async fn stream(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, mpsc::Receiver<Result<Bytes, H3ClientError>>), H3ClientError> {
        let mut stream = self.send(method, path_and_query, headers, body).await?;
        let head = stream.recv_response().await?;
        let (chunks_tx, chunks_rx) = mpsc::channel(self.limits.stream_queue);
        tokio::spawn(forward_chunks(stream, chunks_tx));
        Ok((head.status(), chunks_rx))
    }

    /// The QUIC connection, for its statistics (RTT, lost and sent packets).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection and waits until the server has been told. Call it after every
    /// response was received (floors.md pitfall 18: closing loses data the peer has not yet
    /// read).
    ///
    /// Cancel safety: safe; the connection is closed before the first await.
    pub async fn close(&self) {
        self.conn.close(H3_NO_ERROR, b"client done");
        self.endpoint.wait_idle().await;
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<ClientStream, H3ClientError> {
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(self.authority.as_str())
            .path_and_query(path_and_query)
            .build()?;
        let mut request = http::Request::builder().method(method).uri(uri).body(())?;
        // No content-length is added: HTTP/3 delimits bodies with DATA frames (RFC 9114 §4.1).
        *request.headers_mut() = headers;

        let mut send_request = self.send_request.clone();
        let mut stream = send_request.send_request(request).await?;
        let sent = async {
            if !body.is_empty() {
                stream.send_data(body).await?;
            }
            stream.finish().await
        };
        if let Err(err) = sent.await {
            // The server may have answered early and stopped reading; the response (or the
            // real error) comes from reading it.
            tracing::debug!(%err, "request body not completely sent");
        }
        Ok(stream)
    }
}

impl Drop for H3Client {
    fn drop(&mut self) {
        // The driver holds the connection; without this it would live until the idle timeout.
        self.driver.abort();
    }
}

/// Moves a streaming response's chunks into `chunks` until it ends, fails, or the receiver is
/// dropped.
///
/// Never `stop_sending` on a client stream: h3 0.0.8 may leave a read of h3-quinn 0.0.10 pending
/// inside the stream after returning a frame, and h3-quinn then holds no receive half and
/// panics on `stop_sending`. Dropping the stream is enough: quinn sends STOP_SENDING for an
/// unfinished receive stream.
async fn forward_chunks(
    mut stream: ClientStream,
    chunks: mpsc::Sender<Result<Bytes, H3ClientError>>,
) {
    loop {
        let received = tokio::select! {
            received = stream.recv_data() => received,
            _ = chunks.closed() => return,
        };
        let item = match received {
            Ok(Some(mut chunk)) => Ok(chunk.copy_to_bytes(chunk.remaining())),
            Ok(None) => return,
            Err(err) => Err(H3ClientError::from(err)),
        };
        let failed = item.is_err();
        if chunks.send(item).await.is_err() {
            return;
        }
        if failed {
            return;
        }
    }
}

/// The `:authority` for `server_name`: IPv6 literals in brackets, the port only when it is not
/// HTTPS's default.
fn authority(server_name: &str, port: u16) -> String {
    let host = if server_name.parse::<Ipv6Addr>().is_ok() {
        format!("[{server_name}]")
    } else {
        server_name.to_owned()
    };
    if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn authority_brackets_ipv6_and_omits_the_default_port() {
        assert_eq!(authority("a.example", 443), "a.example");
        assert_eq!(authority("a.example", 4433), "a.example:4433");
        assert_eq!(authority("::1", 4433), "[::1]:4433");
        assert_eq!(authority("127.0.0.1", 443), "127.0.0.1");
    }
}
