//! Span export over OTLP/HTTP (issue "Observability and operations"): with
//! `telemetry.otlp_endpoint` set, the node's spans reach a collector as protobuf POSTs to
//! `<endpoint>/v1/traces`.
//!
//! One test only: the tracing subscriber is global to the test process. The collector is a
//! tiny HTTP/1.1 server on a loopback port of its own threads, independent of any runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use mimid_node::config::{LogFormat, LogSettings, TelemetrySettings};
use mimid_node::telemetry::{self, Installed, OTLP_TRACES_PATH};
use mimid_tests::{TestNode, WAIT};

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Starts the collector on `127.0.0.1:0`; returns its base URL and what it receives. Every
/// request gets `200` with an empty body (an empty `ExportTraceServiceResponse`).
fn start_collector() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("collector binds");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Log::default();
    let accepted = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = accepted.clone();
            std::thread::spawn(move || serve(stream, &log));
        }
    });
    (url, log)
}

/// Serves one keep-alive connection until the client closes it.
fn serve(stream: TcpStream, log: &Log) {
    let mut writer = stream.try_clone().expect("stream clones");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let (mut length, mut content_type) = (0usize, None);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        log.lock().unwrap().push(Received {
            method,
            path,
            content_type,
            body,
        });
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Client traffic at a node whose telemetry exports to the collector: within the deadline,
/// protobuf POSTs to `/v1/traces` arrive carrying the node's `service.name` and its request
/// spans, sent by the batch processor on its own (no flush asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_collector() {
    let (collector, received) = start_collector();
    // The batch processor's period (default 5 s), shortened so the test does not wait for it.
    // Safe: this is the only test of this process, and nothing runs concurrently yet.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let log = LogSettings {
        format: LogFormat::Text,
        level: "warn,mimid_node=info,mimid_actors=info".into(),
    };
    let settings = TelemetrySettings {
        // A trailing slash must not double the one of `/v1/traces`.
        otlp_endpoint: Some(format!("{collector}/")),
        service_name: "mimid-otlp-test".into(),
    };
    let (guard, installed) = telemetry::init(&log, &settings).expect("telemetry installs");
    assert_eq!(installed, Installed::Now, "nothing else set a subscriber");

    let node = TestNode::start().await;
    let _alice = node.client("alice", "phone", 1).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let export = loop {
        let found = received
            .lock()
            .unwrap()
            .iter()
            .find(|request| contains(&request.body, b"client_api"))
            .cloned();
        if let Some(export) = found {
            break export;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no export with a client_api span; the collector got {:?}",
            received
                .lock()
                .unwrap()
                .iter()
                .map(|r| (&r.method, &r.path, r.body.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(export.method, "POST");
    assert_eq!(export.path, OTLP_TRACES_PATH);
    assert_eq!(
        export.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert!(
        contains(&export.body, b"mimid-otlp-test"),
        "the resource names the configured service"
    );
    for request in received.lock().unwrap().iter() {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", OTLP_TRACES_PATH)
        );
    }

    node.shutdown().await;
    // Shutting telemetry down exports what is still queued and does not hang, even when
    // dropped next to a runtime.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .expect("telemetry shuts down");
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .any(|request| contains(&request.body, b"raft_proposal")),
        "Raft proposal spans are exported too"
    );
}
