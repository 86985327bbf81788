//! The server-to-server transport on the real parts (quinn/h3/rustls on loopback, certificates
//! from a test CA): MIMI.md §3.1 (mutual TLS, `From`, `Host`), §3.2 (the directory), §15
//! "Transport & discovery". The endpoints' semantics are not under test here: a recording
//! [`FederationService`] stands in for them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mimid_node::certs::{CertAuthority, CA_VALIDITY};
use mimid_node::config::{FederationSettings, LimitsSettings};
use mimid_node::federation::{
    Directory, FederationService, PeerError, PeerRequest, PeerStats, Peers, S2sEndpoint,
    DIRECTORY_PATH,
};
use mimid_node::h3::{ClientLimits, H3Client, H3Limits, H3Server, Handler, Request, Response};
use mimid_node::metrics::Metrics;
use mimid_node::tls::{client_config, client_config_with_identity, server_config, TlsMaterial};
use mimid_tests::{metric, provider_tls_files, scrape, ProviderSetup, TestNode, WAIT};

const ROOM: &str = "mimi://b.example/r/clubhouse";

fn test_ca() -> CertAuthority {
    CertAuthority::generate(SystemTime::now(), CA_VALIDITY).expect("test CA")
}

/// What the recording service was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    from: String,
    endpoint: S2sEndpoint,
    param: String,
    content_type: Option<String>,
    body: Bytes,
}

/// A [`FederationService`] that records every request and answers 201 "recorded".
#[derive(Default)]
struct Recording {
    seen: std::sync::Mutex<Vec<Seen>>,
}

impl FederationService for Recording {
    fn handle(
        &self,
        req: PeerRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            self.seen.lock().expect("not poisoned").push(Seen {
                from: req.from,
                endpoint: req.endpoint,
                param: req.param,
                content_type: req
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: req.body,
            });
            Response::text(StatusCode::CREATED, "recorded")
        })
    }
}

impl Recording {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

/// A provider identity (certificate for `names` from `issuer`, trusting `trusted`) in `dir`.
fn identity(
    dir: &Path,
    names: &[&str],
    issuer: &CertAuthority,
    trusted: &CertAuthority,
) -> TlsMaterial {
    TlsMaterial::load(&provider_tls_files(dir, names, issuer, trusted)).expect("TLS material")
}

/// A `Peers` outside any node, as provider `domain`.
fn standalone_peers(
    domain: &str,
    material: &TlsMaterial,
    edit: impl FnOnce(&mut FederationSettings),
) -> Peers {
    let mut settings = FederationSettings::default();
    edit(&mut settings);
    Peers::new(domain, material, &settings, Arc::new(Metrics::new())).expect("peers")
}

/// An HTTP/3 connection to `addr` verifying the server as `server_name`, presenting
/// `identity` as client certificate if given.
async fn raw_client(
    addr: SocketAddr,
    server_name: &str,
    roots_of: &TlsMaterial,
    identity: Option<&TlsMaterial>,
) -> Result<H3Client, mimid_node::h3::H3ClientError> {
    let tls = match identity {
        Some(identity) => client_config_with_identity(
            roots_of.roots.clone(),
            identity.cert_chain.clone(),
            identity.key.clone_key(),
        ),
        None => client_config(roots_of.roots.clone()),
    }
    .expect("client TLS config");
    H3Client::connect(addr, server_name, tls, ClientLimits::default()).await
}

/// Sends one request with body "x" and returns status, headers and body text.
async fn check(
    client: &H3Client,
    method: Method,
    path: &str,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, String) {
    let (status, headers, body) = client
        .request(method, path, headers, Bytes::from_static(b"x"))
        .await
        .expect("answered");
    (status, headers, text(&body))
}

fn from(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::FROM, HeaderValue::from_str(value).unwrap());
    headers
}

fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// protocol-06 §4.1 / MIMI.md §3.1: a.example calls b.example over mutual TLS; b's service
/// sees the authenticated peer domain, the decoded parameter and the body; the directory
/// (§3.2) is fetched once and the connection shared while the TTL lasts. The other direction
/// reaches a's default service, which answers 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_reach_each_others_service_over_mutual_tls_mimi_md_3_1() {
    let ca = test_ca();
    let recording = Arc::new(Recording::default());
    let b = TestNode::start_provider_with(
        "b.example",
        &ca,
        ProviderSetup {
            service: Some(recording.clone()),
            ..ProviderSetup::default()
        },
        |_| {},
    )
    .await;
    let a = TestNode::start_provider("a.example", &ca).await;
    let peers = a.node().peers();
    peers.set_address("b.example", b.node().quic_addr());

    let response = peers
        .request(
            "b.example",
            S2sEndpoint::Update,
            ROOM,
            HeaderMap::new(),
            Bytes::from_static(b"commit bytes"),
        )
        .await
        .expect("b answers");
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(text(&response.body), "recorded");
    assert_eq!(
        recording.seen(),
        vec![Seen {
            from: "a.example".into(),
            endpoint: S2sEndpoint::Update,
            param: ROOM.into(),
            content_type: Some("application/octet-stream".into()),
            body: Bytes::from_static(b"commit bytes"),
        }]
    );
    assert_eq!(
        peers.stats(),
        PeerStats {
            directory_fetches: 1,
            connects: 1
        }
    );

    // Within the TTL: no second directory fetch, no second connection.
    let response = peers
        .request(
            "B.Example",
            S2sEndpoint::KeyMaterial,
            "mimi://b.example/u/bob",
            HeaderMap::new(),
            Bytes::from_static(b"signed request"),
        )
        .await
        .expect("b answers again");
    assert_eq!(response.status, StatusCode::CREATED);
    let seen = recording.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (
            seen[1].from.as_str(),
            seen[1].endpoint,
            seen[1].param.as_str()
        ),
        (
            "a.example",
            S2sEndpoint::KeyMaterial,
            "mimi://b.example/u/bob"
        )
    );
    assert_eq!(
        peers.stats(),
        PeerStats {
            directory_fetches: 1,
            connects: 1
        }
    );

    // b counted the requests under their endpoints; a counted its answered peer requests.
    let b_metrics = scrape(&b).await;
    for series in [
        "mimid_requests_total{endpoint=\"s2s_update\",status=\"201\"}",
        "mimid_requests_total{endpoint=\"s2s_key_material\",status=\"201\"}",
        "mimid_requests_total{endpoint=\"s2s_directory\",status=\"200\"}",
    ] {
        assert_eq!(
            metric(&b_metrics, series),
            Some(1.0),
            "{series}\n{b_metrics}"
        );
    }
    assert_eq!(
        metric(
            &scrape(&a).await,
            "mimid_peer_requests_total{outcome=\"answered\"}"
        ),
        Some(2.0)
    );

    // b -> a: a runs MIMI's service, which decodes the body after authentication.
    b.node()
        .peers()
        .set_address("a.example", a.node().quic_addr());
    let response = b
        .node()
        .peers()
        .request(
            "a.example",
            S2sEndpoint::Notify,
            "mimi://b.example/r/clubhouse",
            HeaderMap::new(),
            Bytes::from_static(b"fanout"),
        )
        .await
        .expect("a answers");
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        text(&response.body).contains("FanoutMessage"),
        "{}",
        text(&response.body)
    );

    a.shutdown().await;
    b.shutdown().await;
}

/// MIMI.md §3.2: the directory is served without a client certificate, is a JSON object of the
/// ten endpoints with `update`'s slash (§14 item 1), and takes only GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_served_without_client_auth_mimi_md_3_2() {
    let ca = test_ca();
    let b = TestNode::start_provider("b.example", &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let trust = identity(dir.path(), &["a.example"], &ca, &ca);
    let client = raw_client(b.node().quic_addr(), "b.example", &trust, None)
        .await
        .expect("connects without a client certificate");

    let (status, headers, body) = client
        .request(Method::GET, DIRECTORY_PATH, HeaderMap::new(), Bytes::new())
        .await
        .expect("directory answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
    let object = json.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected: Vec<&str> = S2sEndpoint::ALL.iter().map(|e| e.name()).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(object["update"], "https://b.example/v1/update/{roomId}");
    assert_eq!(
        object["identifierQuery"],
        "https://b.example/v1/identifierQuery/{domain}"
    );
    let directory = Directory::parse(&body).expect("parses");
    assert_eq!(
        directory.path_for(S2sEndpoint::SubmitMessage, ROOM, "b.example"),
        Ok("/v1/submitMessage/mimi%3A%2F%2Fb.example%2Fr%2Fclubhouse".into())
    );

    let (status, headers, _) = client
        .request(Method::POST, DIRECTORY_PATH, HeaderMap::new(), Bytes::new())
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[http::header::ALLOW], "GET");

    client.close().await;
    b.shutdown().await;
}

/// MIMI.md §3.1 and §7.1 step 1: every refused request gets its own status and reason, and
/// none reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_peer_requests_name_their_reason_mimi_md_3_1() {
    let ca = test_ca();
    let recording = Arc::new(Recording::default());
    let b = TestNode::start_provider_with(
        "b.example",
        &ca,
        ProviderSetup {
            alt_names: vec!["alias.example".into()],
            service: Some(recording.clone()),
        },
        |_| {},
    )
    .await;
    let addr = b.node().quic_addr();
    let dir = tempfile::tempdir().unwrap();
    let a_identity = identity(&dir.path().join("a"), &["a.example"], &ca, &ca);
    let c_identity = identity(&dir.path().join("c"), &["c.example"], &ca, &ca);
    let update = "/v1/update/mimi%3A%2F%2Fb.example%2Fr%2Fclubhouse";

    // No client certificate: 401.
    let anonymous = raw_client(addr, "b.example", &a_identity, None)
        .await
        .expect("connects");
    let (status, _, reason) = check(&anonymous, Method::POST, update, from("mimi@a.example")).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::UNAUTHORIZED, "client certificate required")
    );

    // A certificate for c.example speaking as a.example: 403.
    let c_client = raw_client(addr, "b.example", &c_identity, Some(&c_identity))
        .await
        .expect("connects");
    let (status, _, reason) = check(&c_client, Method::POST, update, from("mimi@a.example")).await;
    assert_eq!(
        (status, reason.as_str()),
        (
            StatusCode::FORBIDDEN,
            "certificate does not authenticate From domain a.example"
        )
    );

    // Malformed or missing From: 400.
    let a_client = raw_client(addr, "b.example", &a_identity, Some(&a_identity))
        .await
        .expect("connects");
    for (headers, expected) in [
        (from("alice@a.example"), "must have the local part mimi"),
        (from("a.example"), "is not an addr-spec mimi@<domain>"),
        (from("mimi@a..example"), "is not a valid DNS name"),
        (HeaderMap::new(), "missing From header"),
    ] {
        let (status, _, reason) = check(&a_client, Method::POST, update, headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}");
        assert!(reason.contains(expected), "{reason}");
    }

    // Addressed to another name b's certificate covers: 421 Misdirected Request.
    let misdirected = raw_client(addr, "alias.example", &a_identity, Some(&a_identity))
        .await
        .expect("b's certificate covers alias.example");
    let (status, _, reason) =
        check(&misdirected, Method::POST, update, from("mimi@a.example")).await;
    assert_eq!(
        (status, reason.as_str()),
        (
            StatusCode::MISDIRECTED_REQUEST,
            "request is addressed to alias.example; this provider is b.example"
        )
    );

    // Routing: unknown endpoint and missing parameter 404, wrong method 405 with Allow.
    let (status, _, reason) = check(
        &a_client,
        Method::POST,
        "/v1/noSuchEndpoint/x",
        from("mimi@a.example"),
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::NOT_FOUND, "no such endpoint \"noSuchEndpoint\"")
    );
    let (status, _, reason) = check(
        &a_client,
        Method::POST,
        "/v1/update",
        from("mimi@a.example"),
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (
            StatusCode::NOT_FOUND,
            "update takes a path parameter: /v1/update/{roomId}"
        )
    );
    let (status, headers, reason) =
        check(&a_client, Method::GET, update, from("mimi@a.example")).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "update takes POST")
    );
    assert_eq!(headers[http::header::ALLOW], "POST");
    let (status, headers, _) = check(
        &a_client,
        Method::POST,
        "/v1/proxyDownload/https%3A%2F%2Fassets.a.example%2Fx",
        from("mimi@a.example"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[http::header::ALLOW], "GET");

    // A parameter that is not UTF-8 once decoded: 400.
    let (status, _, reason) = check(
        &a_client,
        Method::POST,
        "/v1/update/%FF",
        from("mimi@a.example"),
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "path parameter is not UTF-8 after percent-decoding"
        )
    );

    assert!(recording.seen().is_empty(), "{:?}", recording.seen());
    // The same connection still carries an authenticated request.
    let (status, _, _) = check(&a_client, Method::POST, update, from("mimi@a.example")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(recording.seen().len(), 1);

    let scrape = scrape(&b).await;
    for (series, count) in [
        (
            "mimid_requests_total{endpoint=\"s2s_update\",status=\"401\"}",
            1.0,
        ),
        (
            "mimid_requests_total{endpoint=\"s2s_update\",status=\"403\"}",
            1.0,
        ),
        (
            "mimid_requests_total{endpoint=\"s2s_update\",status=\"421\"}",
            1.0,
        ),
        (
            "mimid_requests_total{endpoint=\"s2s_update\",status=\"400\"}",
            5.0,
        ),
        (
            "mimid_requests_total{endpoint=\"unknown\",status=\"404\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&scrape, series), Some(count), "{series}\n{scrape}");
    }

    for client in [anonymous, c_client, a_client, misdirected] {
        client.close().await;
    }
    b.shutdown().await;
}

/// MIMI.md §3.1: a client certificate from a CA the peer does not trust never reaches the API:
/// the TLS handshake fails, and `Peers` reports a connect error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_fails_the_handshake_mimi_md_3_1() {
    let ca = test_ca();
    let rogue_ca = test_ca();
    let recording = Arc::new(Recording::default());
    let b = TestNode::start_provider_with(
        "b.example",
        &ca,
        ProviderSetup {
            service: Some(recording.clone()),
            ..ProviderSetup::default()
        },
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Claims to be a.example and trusts b's CA, but its certificate comes from another CA.
    let impostor = identity(dir.path(), &["a.example"], &rogue_ca, &ca);
    let peers = standalone_peers("a.example", &impostor, |_| {});
    peers.set_address("b.example", b.node().quic_addr());
    let err = peers
        .request(
            "b.example",
            S2sEndpoint::Update,
            ROOM,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("b.example"), "{err}");
    // Trying again fails the same way: nothing broken was cached.
    let err = peers
        .request(
            "b.example",
            S2sEndpoint::Update,
            ROOM,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::Connect { .. }), "{err}");
    assert_eq!(peers.stats().connects, 2);
    assert!(recording.seen().is_empty());

    // A genuine a.example still gets through.
    let genuine = identity(&dir.path().join("genuine"), &["a.example"], &ca, &ca);
    let peers = standalone_peers("a.example", &genuine, |_| {});
    peers.set_address("b.example", b.node().quic_addr());
    let response = peers
        .request(
            "b.example",
            S2sEndpoint::Update,
            ROOM,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
        )
        .await
        .expect("answered");
    assert_eq!(response.status, StatusCode::CREATED);
    b.shutdown().await;
}

/// MIMI.md §3.2 "cache it with a TTL": after `directory_ttl_secs` the directory is fetched again,
/// never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_fetched_again_after_its_ttl_mimi_md_3_2() {
    let ca = test_ca();
    let b = TestNode::start_provider("b.example", &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let a_identity = identity(dir.path(), &["a.example"], &ca, &ca);
    let ttl = Duration::from_secs(1);
    let peers = standalone_peers("a.example", &a_identity, |settings| {
        settings.directory_ttl_secs = ttl.as_secs();
    });
    peers.set_address("b.example", b.node().quic_addr());
    let first_fetch = Instant::now();
    let call = || {
        peers.request(
            "b.example",
            S2sEndpoint::Update,
            ROOM,
            HeaderMap::new(),
            Bytes::new(),
        )
    };
    call().await.expect("answered");
    assert_eq!(peers.stats().directory_fetches, 1);
    let deadline = Instant::now() + WAIT;
    loop {
        call().await.expect("answered");
        if peers.stats().directory_fetches == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "directory never fetched again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        first_fetch.elapsed() >= ttl,
        "refetched after {:?}, before the TTL",
        first_fetch.elapsed()
    );
    assert_eq!(peers.stats().connects, 1, "the connection outlives the TTL");
    b.shutdown().await;
}

/// A peer that restarts on another port: the dead connection fails as a transport error (the
/// caller retries), and once re-pointed the peer is reached on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reached_at_its_new_address() {
    let ca = test_ca();
    let mut b = TestNode::start_provider("b.example", &ca).await;
    let a = TestNode::start_provider("a.example", &ca).await;
    let peers = a.node().peers();
    peers.set_address("b.example", b.node().quic_addr());
    let call = || {
        peers.request(
            "b.example",
            S2sEndpoint::GroupInfo,
            ROOM,
            HeaderMap::new(),
            Bytes::new(),
        )
    };
    // An empty GroupInfoRequest: b answers 400 (any answer shows the connection works).
    assert_eq!(
        call().await.expect("answered").status,
        StatusCode::BAD_REQUEST
    );

    b.restart().await;
    let err = call().await.unwrap_err();
    assert!(matches!(err, PeerError::Transport { .. }), "{err}");
    peers.set_address("b.example", b.node().quic_addr());
    assert_eq!(
        call().await.expect("answered after re-pointing").status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(peers.stats().connects, 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// A scripted peer: serves `directory` at the well-known path and `response_bytes` zero bytes
/// with 200 on every other path.
struct ScriptedPeer {
    directory: (StatusCode, &'static str),
    response_bytes: usize,
}

impl Handler for ScriptedPeer {
    fn handle(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            if req.uri.path() == DIRECTORY_PATH {
                Response::text(self.directory.0, self.directory.1)
            } else {
                Response::full(StatusCode::OK, vec![0; self.response_bytes])
            }
        })
    }
}

/// Starts a scripted peer as `domain` with a certificate from `ca`.
fn scripted_peer(dir: &Path, domain: &str, ca: &CertAuthority, script: ScriptedPeer) -> SocketAddr {
    let material = identity(dir, &[domain], ca, ca);
    let server = H3Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        server_config(&material).expect("server TLS config"),
        H3Limits::from_settings(&LimitsSettings::default()),
        Arc::new(Metrics::new()),
    )
    .expect("binds");
    let addr = server.local_addr();
    server.serve(Arc::new(script));
    addr
}

/// `PeerError` says which step failed: resolving, the deadline, the directory (status, JSON,
/// missing endpoint, foreign host) or the transport (oversized response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_errors_say_which_step_failed() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let a_identity = identity(&dir.path().join("a"), &["a.example"], &ca, &ca);
    let peers = standalone_peers("a.example", &a_identity, |settings| {
        settings.request_timeout_ms = 500;
        settings.max_response_bytes = 1024;
    });
    let call = |domain: &'static str, endpoint| {
        peers.request(domain, endpoint, ROOM, HeaderMap::new(), Bytes::new())
    };

    let err = call("not a domain", S2sEndpoint::Update).await.unwrap_err();
    assert!(matches!(err, PeerError::Resolve { .. }), "{err}");

    // A UDP socket that never answers: the deadline passes.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    peers.set_address("silent.example", silent.local_addr().unwrap());
    let started = Instant::now();
    let err = call("silent.example", S2sEndpoint::Update)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PeerError::Timeout {
            domain: "silent.example".into(),
            after: Duration::from_millis(500)
        }
    );
    assert!(started.elapsed() < WAIT);

    let good = r#"{"update": "https://d.example/v1/update/{roomId}",
                   "notify": "https://elsewhere.example/v1/notify/{roomId}"}"#;
    let cases: [(&'static str, (StatusCode, &'static str), S2sEndpoint, &str); 5] = [
        (
            "d1.example",
            (StatusCode::NOT_FOUND, "nothing here"),
            S2sEndpoint::Update,
            "answered 404 Not Found: nothing here",
        ),
        (
            "d2.example",
            (StatusCode::OK, "[1, 2]"),
            S2sEndpoint::Update,
            "not a JSON object",
        ),
        (
            "d3.example",
            (StatusCode::OK, r#"{"update": 7}"#),
            S2sEndpoint::Update,
            "entry \"update\" is not a string",
        ),
        (
            "d4.example",
            (StatusCode::OK, good),
            S2sEndpoint::KeyMaterial,
            "no keyMaterial endpoint",
        ),
        (
            "d5.example",
            (StatusCode::OK, good),
            S2sEndpoint::Notify,
            "names host \"elsewhere.example\"",
        ),
    ];
    for (domain, directory, endpoint, expected) in cases {
        let addr = scripted_peer(
            &dir.path().join(domain),
            domain,
            &ca,
            ScriptedPeer {
                directory,
                response_bytes: 0,
            },
        );
        peers.set_address(domain, addr);
        let err = call(domain, endpoint).await.unwrap_err();
        assert!(
            matches!(err, PeerError::Directory { .. }),
            "{domain}: {err}"
        );
        assert!(err.to_string().contains(expected), "{domain}: {err}");
    }

    // The directory of d.example names d.example; its answer is larger than allowed.
    let addr = scripted_peer(
        &dir.path().join("d"),
        "d.example",
        &ca,
        ScriptedPeer {
            directory: (StatusCode::OK, good),
            response_bytes: 4096,
        },
    );
    peers.set_address("d.example", addr);
    let err = call("d.example", S2sEndpoint::Update).await.unwrap_err();
    assert!(matches!(err, PeerError::Transport { .. }), "{err}");
    assert!(
        err.to_string().contains("exceeds the limit of 1024 bytes"),
        "{err}"
    );
}

/// RFC 9114 §3.3: concurrent callers share one connection and one directory fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection_and_directory() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let addr = scripted_peer(
        &dir.path().join("d"),
        "d.example",
        &ca,
        ScriptedPeer {
            directory: (
                StatusCode::OK,
                r#"{"update": "https://d.example/v1/update/{roomId}"}"#,
            ),
            response_bytes: 16,
        },
    );
    let a_identity = identity(&dir.path().join("a"), &["a.example"], &ca, &ca);
    let peers = Arc::new(standalone_peers("a.example", &a_identity, |_| {}));
    peers.set_address("d.example", addr);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let peers = peers.clone();
        calls.spawn(async move {
            peers
                .request(
                    "d.example",
                    S2sEndpoint::Update,
                    ROOM,
                    HeaderMap::new(),
                    Bytes::new(),
                )
                .await
        });
    }
    while let Some(result) = calls.join_next().await {
        let response = result.expect("task").expect("answered");
        assert_eq!((response.status, response.body.len()), (StatusCode::OK, 16));
    }
    assert_eq!(
        peers.stats(),
        PeerStats {
            directory_fetches: 1,
            connects: 1
        }
    );
}
