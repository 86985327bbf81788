//! The HTTP/3 listener and client over real quinn on loopback, with certificates generated per
//! test: request/response, the body limit (RFC 9114 §4.1 early response), streaming
//! responses, the concurrency limit, mutual-TLS identities (MIMI protocol-06 §4.1) and
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use mimid_node::certs::{CertAuthority, SubjectName};
use mimid_node::config::TlsFiles;
use mimid_node::h3::{
    ClientLimits, H3Client, H3Limits, H3Server, Handler, Request, Response, ShutdownHandle,
};
use mimid_node::metrics::Metrics;
use mimid_node::tls::{self, TlsMaterial};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Routes: `/echo` returns the body, `/whoami` the client certificate's DNS names (comma
/// separated), `/stream` sends "one", waits for `release`, then "two" and "three", `/hold`
/// streams nothing until `release`.
struct TestHandler {
    calls: AtomicUsize,
    release: Arc<Notify>,
}

impl Handler for TestHandler {
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match req.uri.path() {
                "/echo" => Response::full(StatusCode::OK, req.body),
                "/whoami" => Response::full(StatusCode::OK, req.peer.dns_names.join(",")),
                "/stream" | "/hold" => {
                    let (chunks, rx) = mpsc::channel(4);
                    let release = self.release.clone();
                    let first = req.uri.path() == "/stream";
                    tokio::spawn(async move {
                        if first && chunks.send(Bytes::from("one")).await.is_err() {
                            return;
                        }
                        release.notified().await;
                        for chunk in ["two", "three"] {
                            if chunks.send(Bytes::from(chunk)).await.is_err() {
                                return;
                            }
                        }
                    });
                    Response::stream(StatusCode::OK, rx)
                }
                _ => Response::text(StatusCode::NOT_FOUND, "no such route"),
            }
        })
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: CertAuthority,
    server_files: TlsFiles,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = CertAuthority::generate(now, DAY).unwrap();
    let ca_files = ca.save(&dir.path().join("ca")).unwrap();
    let server = ca
        .issue(
            &[
                SubjectName::Dns("a.example".into()),
                SubjectName::Ip("127.0.0.1".parse().unwrap()),
            ],
            now,
            DAY,
        )
        .unwrap();
    let server_files = server.save(dir.path(), "server").unwrap();
    Pki {
        ca,
        server_files: TlsFiles {
            cert: server_files.cert,
            key: server_files.key,
            client_ca: ca_files.cert,
        },
        _dir: dir,
    }
}

fn limits() -> H3Limits {
    H3Limits {
        max_body_bytes: 1024,
        max_header_bytes: 16 << 10,
        max_concurrent_streams: 16,
        max_connections: 16,
        max_concurrent_requests: 16,
        request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    }
}

struct Running {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    shutdown: ShutdownHandle,
    serving: JoinHandle<()>,
}

fn start(pki: &Pki, limits: H3Limits) -> Running {
    let material = TlsMaterial::load(&pki.server_files).unwrap();
    let server = H3Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(&material).unwrap(),
        limits,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let handler = Arc::new(TestHandler {
        calls: AtomicUsize::new(0),
        release: Arc::new(Notify::new()),
    });
    Running {
        addr: server.local_addr(),
        shutdown: server.shutdown_handle(),
        serving: server.serve(handler.clone()),
        handler,
    }
}

fn anonymous_client_tls(pki: &Pki) -> rustls::ClientConfig {
    let roots = tls::read_roots(&pki.server_files.client_ca).unwrap();
    tls::client_config(Arc::new(roots)).unwrap()
}

/// A client config presenting a certificate for `name` issued by `issuer`.
fn client_tls_with_cert(
    pki: &Pki,
    issuer: &CertAuthority,
    name: &str,
    dir: &Path,
) -> rustls::ClientConfig {
    let leaf = issuer
        .issue(&[SubjectName::Dns(name.into())], SystemTime::now(), DAY)
        .unwrap();
    let files = leaf.save(dir, name).unwrap();
    let roots = tls::read_roots(&pki.server_files.client_ca).unwrap();
    tls::client_config_with_identity(
        Arc::new(roots),
        tls::read_cert_chain(&files.cert).unwrap(),
        tls::read_private_key(&files.key).unwrap(),
    )
    .unwrap()
}

async fn connect(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<H3Client, mimid_node::h3::H3ClientError> {
    H3Client::connect(addr, "a.example", tls, ClientLimits::default()).await
}

async fn post(client: &H3Client, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
    let (status, _, body) = client
        .request(Method::POST, path, HeaderMap::new(), body.into())
        .await
        .expect("request");
    (status, body)
}

#[tokio::test]
async fn request_and_response_round_trip() {
    let pki = pki();
    let server = start(&pki, limits());
    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();
    let (status, body) = post(&client, "/echo", "hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello");
    let (status, body) = post(&client, "/missing", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "no such route");
    client.close().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_answered_413_without_reaching_the_handler() {
    let pki = pki();
    let server = start(&pki, limits());
    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();

    // Exactly at the limit is fine.
    let (status, body) = post(&client, "/echo", vec![b'x'; 1024]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 1024);
    let calls_before = server.handler.calls.load(Ordering::SeqCst);

    // Without content-length the server stops reading at the limit, even for a body far
    // beyond the QUIC flow-control window.
    let (status, reason) = post(&client, "/echo", vec![b'x'; 4 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        std::str::from_utf8(&reason)
            .unwrap()
            .contains("limit of 1024 bytes"),
        "{reason:?}"
    );

    // With a declared content-length the server refuses before reading.
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_LENGTH, 2048.into());
    let (status, _, _) = client
        .request(
            Method::POST,
            "/echo",
            headers,
            Bytes::from(vec![b'x'; 2048]),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(server.handler.calls.load(Ordering::SeqCst), calls_before);
    // The connection is still usable.
    assert_eq!(post(&client, "/echo", "after").await.1, "after");
    client.close().await;
}

#[tokio::test]
async fn a_streaming_response_delivers_chunks_as_they_are_sent_and_ends() {
    let pki = pki();
    let server = start(&pki, limits());
    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();
    let (status, mut chunks) = client
        .stream(Method::GET, "/stream", HeaderMap::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // "one" arrives while the handler is still holding the rest back.
    let first = chunks.recv().await.expect("first chunk").unwrap();
    assert_eq!(first, "one");
    server.handler.release.notify_one();

    let mut rest = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"twothree");
    client.close().await;
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_get_503() {
    let pki = pki();
    let server = start(
        &pki,
        H3Limits {
            max_concurrent_requests: 1,
            ..limits()
        },
    );
    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();
    let (status, held) = client
        .stream(Method::GET, "/hold", HeaderMap::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let (status, reason) = post(&client, "/echo", "x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(std::str::from_utf8(&reason).unwrap().contains("busy"));

    drop(held);
    server.handler.release.notify_one();
    client.close().await;
}

#[tokio::test]
async fn a_client_certificate_from_the_configured_ca_is_visible_as_dns_names() {
    let pki = pki();
    let server = start(&pki, limits());
    let dir = tempfile::tempdir().unwrap();
    let tls = client_tls_with_cert(&pki, &pki.ca, "b.example", dir.path());
    let client = connect(server.addr, tls).await.unwrap();
    let (status, names) = post(&client, "/whoami", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names, "b.example");
    client.close().await;
}

#[tokio::test]
async fn without_a_client_certificate_the_names_are_empty() {
    let pki = pki();
    let server = start(&pki, limits());
    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();
    let (status, names) = post(&client, "/whoami", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names, "");
    client.close().await;
}

#[tokio::test]
async fn a_client_certificate_from_an_unknown_ca_is_refused_at_the_tls_layer() {
    let pki = pki();
    let server = start(&pki, limits());
    let dir = tempfile::tempdir().unwrap();
    let stranger = CertAuthority::generate(SystemTime::now(), DAY).unwrap();
    let tls = client_tls_with_cert(&pki, &stranger, "evil.example", dir.path());

    // In TLS 1.3 the client may finish its handshake before the server has judged its
    // certificate, so the refusal shows either at connect or at the first request.
    let outcome = async {
        let client = connect(server.addr, tls).await?;
        client
            .request(Method::POST, "/whoami", HeaderMap::new(), Bytes::new())
            .await
    }
    .await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_server_certificate_must_match_the_name_the_client_asks_for() {
    let pki = pki();
    let server = start(&pki, limits());
    let outcome = H3Client::connect(
        server.addr,
        "c.example",
        anonymous_client_tls(&pki),
        ClientLimits::default(),
    )
    .await;
    assert!(outcome.is_err());
}

#[tokio::test]
async fn shutdown_ends_push_streams_cleanly_and_stops_the_server() {
    let pki = pki();
    let server = start(&pki, limits());
    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();
    let (_, mut chunks) = client
        .stream(Method::GET, "/hold", HeaderMap::new(), Bytes::new())
        .await
        .unwrap();

    let shutdown = server.shutdown.clone();
    let stopping = tokio::spawn(async move { shutdown.shutdown(Duration::from_secs(10)).await });
    // The held stream ends without an error: the server finished it.
    assert!(chunks.recv().await.is_none());
    server.serving.await.expect("accept loop ends");
    stopping.await.unwrap();

    // A closed endpoint does not answer, so bound the attempt by a short handshake timeout.
    let late = H3Client::connect(
        server.addr,
        "a.example",
        anonymous_client_tls(&pki),
        ClientLimits {
            idle_timeout: Duration::from_millis(300),
            ..ClientLimits::default()
        },
    )
    .await;
    assert!(late.is_err(), "the endpoint no longer accepts connections");
}

#[tokio::test]
async fn bind_rejects_limits_it_cannot_enforce() {
    let pki = pki();
    let material = TlsMaterial::load(&pki.server_files).unwrap();
    for bad in [
        H3Limits {
            max_concurrent_requests: 0,
            ..limits()
        },
        H3Limits {
            max_connections: usize::MAX,
            ..limits()
        },
        H3Limits {
            max_concurrent_streams: 0,
            ..limits()
        },
    ] {
        let outcome = H3Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls::server_config(&material).unwrap(),
            bad.clone(),
            Arc::new(Metrics::new()),
        );
        assert!(
            matches!(outcome, Err(mimid_node::h3::H3ServerError::Limits(_))),
            "{bad:?}"
        );
    }
}

/// A body that stops arriving gets 408 once `request_timeout` passes (the timed-out read is
/// cancelled mid-flight; answering must not touch the cancelled receive half), and the server
/// keeps serving.
#[tokio::test]
async fn a_stalled_body_gets_408_and_the_server_keeps_serving() {
    let pki = pki();
    let mut short = limits();
    short.request_timeout = Duration::from_millis(300);
    let server = start(&pki, short);

    let mut tls = anonymous_client_tls(&pki);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(server.addr, "a.example")
        .unwrap()
        .await
        .unwrap();
    let (mut driver, mut send_request) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let drive = tokio::spawn(async move {
        let _ = driver.wait_idle().await;
    });
    let request = http::Request::post("https://a.example/echo")
        .header(http::header::CONTENT_LENGTH, "100")
        .body(())
        .unwrap();
    let mut stream = send_request.send_request(request).await.unwrap();
    stream
        .send_data(Bytes::from_static(b"only part"))
        .await
        .unwrap();
    let response = stream
        .recv_response()
        .await
        .expect("an answer, not a reset");
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);

    let client = connect(server.addr, anonymous_client_tls(&pki))
        .await
        .unwrap();
    assert_eq!(post(&client, "/echo", "still here").await.0, StatusCode::OK);
    client.close().await;
    drive.abort();
}
