//! [`Peers`]: the outgoing side of the server-to-server transport (MIMI.md §3.1, §3.2).
//!
//! A request to a peer provider goes through four steps, all inside one
//! `federation.request_timeout_ms` deadline:
//! 1. resolve the peer's domain: a runtime-updatable map seeded from `federation.peers`
//!    ([`Peers::set_address`]), else DNS as `domain:443`;
//! 2. take the peer's cached HTTP/3 connection or open one (mutual TLS: our provider
//!    certificate as client identity; SNI and server-certificate verification for the peer's
//!    domain; trust anchors from `tls.client_ca`);
//! 3. take the peer's cached directory or fetch `/.well-known/mimi-protocol-directory`
//!    (cached for `federation.directory_ttl_secs`);
//! 4. expand the endpoint's template from the directory and send the request with
//!    `From: mimi@<our domain>`, `:authority` = the peer's domain and, for POSTs,
//!    `Content-Type: application/octet-stream`.
//!
//! Sharing: one connection per peer (RFC 9114 §3.3), shared by concurrent callers; callers that
//! arrive while it is being opened wait for that attempt instead of opening their own, and the
//! same holds for the directory fetch. A connection that fails (the connection itself, not a
//! single stream) is dropped and the next request opens a new one; so is a connection to an
//! address the map no longer names. Nothing is retried here: every [`PeerError`] tells the
//! caller what failed, and fan-out retries with its own backoff.
//!
//! Metrics: every request is counted by outcome, in flight per peer while it runs, and the
//! connection's QUIC path (RTT, lost and sent packets) is sampled after each answer
//! (`mimid_federation_peer_*`, [`Metrics::sample_federation_peer`]).
//!
//! Bounds: responses up to `federation.max_response_bytes`; one connection and one directory
//! per peer; a peer not used for a directory TTL is forgotten (its connection closed) the next
//! time another peer is added, so the table holds the peers used within one TTL plus the ones
//! with requests in flight.
//!
//! TLS 1.3 client authentication completes at the server after the client has finished its
//! handshake (RFC 8446 §4.4.2), so a peer that refuses our certificate closes the connection
//! only after [`H3Client::connect`] returned. A connection that fails before its first response
//! therefore counts as a failed connect ([`PeerError::Connect`]), not as a transport failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tracing::Instrument;

use super::directory::{Directory, DIRECTORY_PATH};
use super::S2sEndpoint;
use crate::config::{check_domain, FederationSettings};
use crate::h3::{ClientLimits, H3Client, H3ClientError};
use crate::metrics::{Metrics, PathSample, PeerOutcome};
use crate::tls::{client_config_with_identity, TlsError, TlsMaterial};

/// The default port of HTTPS, where a peer found through DNS listens (MIMI.md §3.1).
const HTTPS_PORT: u16 = 443;

/// The outgoing server-to-server client of one provider. Share it behind an `Arc`.
pub struct Peers {
    from: HeaderValue,
    tls: rustls::ClientConfig,
    client_limits: ClientLimits,
    directory_ttl: Duration,
    request_timeout: Duration,
    addresses: parking_lot::RwLock<HashMap<String, SocketAddr>>,
    resolve_dns: bool,
    slots: parking_lot::Mutex<HashMap<String, Arc<PeerSlot>>>,
    metrics: Arc<Metrics>,
    directory_fetches: AtomicU64,
    connects: AtomicU64,
}

/// A peer's answer: any HTTP status (non-2xx answers are the caller's to interpret).
#[derive(Debug, Clone)]
pub struct PeerResponse {
    /// The status.
    pub status: StatusCode,
    /// The header fields.
    pub headers: HeaderMap,
    /// The whole body, within `federation.max_response_bytes`.
    pub body: Bytes,
}

/// Why a peer request got no answer. Every variant but [`PeerError::Directory`] is usually
/// transient; all of them may be retried (a failed directory is not cached, so a retry fetches
/// it again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The domain is not a DNS name, or resolving it failed.
    #[error("cannot resolve peer {domain}: {reason}")]
    Resolve {
        /// The peer domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// No working connection: the QUIC or TLS handshake failed, or the peer closed a new
    /// connection before its first response (e.g. it refused our certificate).
    #[error("cannot connect to peer {domain} at {addr}: {reason}")]
    Connect {
        /// The peer domain.
        domain: String,
        /// The address tried.
        addr: SocketAddr,
        /// Why, as QUIC/TLS reported it.
        reason: String,
    },
    /// The deadline (`federation.request_timeout_ms`) passed.
    #[error("peer {domain} did not answer within {after:?}")]
    Timeout {
        /// The peer domain.
        domain: String,
        /// The deadline.
        after: Duration,
    },
    /// The peer's directory could not be fetched, is not a JSON object of strings, lacks the
    /// endpoint, or has an unusable template.
    #[error("directory of peer {domain}: {reason}")]
    Directory {
        /// The peer domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// An established connection or the request's stream failed, or the response exceeded
    /// `federation.max_response_bytes`.
    #[error("request to peer {domain} failed: {reason}")]
    Transport {
        /// The peer domain.
        domain: String,
        /// Why.
        reason: String,
    },
}

/// Why [`Peers`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// Our own domain cannot appear in `From`.
    #[error("our domain {domain:?} cannot name a provider: {reason}")]
    Domain {
        /// The domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// The TLS client configuration cannot be built from our certificate and key.
    #[error("cannot build the TLS client configuration")]
    Tls(#[from] TlsError),
}

/// Counters for tests and debugging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Directory requests sent to peers.
    pub directory_fetches: u64,
    /// Connection attempts to peers.
    pub connects: u64,
}

/// What we keep per peer domain.
struct PeerSlot {
    connection: tokio::sync::Mutex<Option<Arc<PeerConnection>>>,
    directory: tokio::sync::Mutex<Option<CachedDirectory>>,
    last_used: parking_lot::Mutex<Instant>,
}

struct PeerConnection {
    client: H3Client,
    addr: SocketAddr,
    /// Whether any response arrived on it (see the module documentation on TLS 1.3).
    answered: AtomicBool,
}

struct CachedDirectory {
    directory: Arc<Directory>,
    fetched_at: Instant,
}

/// One peer as a request sees it: its domain, its slot and the connection taken from the slot.
struct Link<'a> {
    domain: &'a str,
    slot: &'a PeerSlot,
    connection: Arc<PeerConnection>,
}

impl Peers {
    /// The client of provider `domain`, authenticating with `material`'s certificate chain and
    /// key and trusting `material.roots`.
    pub fn new(
        domain: &str,
        material: &TlsMaterial,
        settings: &FederationSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Peers, PeersError> {
        let domain_error = |reason: String| PeersError::Domain {
            domain: domain.to_owned(),
            reason,
        };
        check_domain(domain).map_err(domain_error)?;
        let from = HeaderValue::from_str(&format!("mimi@{}", domain.to_ascii_lowercase()))
            .map_err(|e| domain_error(e.to_string()))?;
        let tls = client_config_with_identity(
            material.roots.clone(),
            material.cert_chain.clone(),
            material.key.clone_key(),
        )?;
        let addresses = settings
            .peers
            .iter()
            .map(|(domain, addr)| (domain.to_ascii_lowercase(), *addr))
            .collect();
        Ok(Peers {
            from,
            tls,
            client_limits: ClientLimits {
                max_response_bytes: settings.max_response_bytes,
                ..ClientLimits::default()
            },
            directory_ttl: Duration::from_secs(settings.directory_ttl_secs),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            addresses: parking_lot::RwLock::new(addresses),
            resolve_dns: settings.resolve_dns,
            slots: parking_lot::Mutex::new(HashMap::new()),
            metrics,
            directory_fetches: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        })
    }

    /// Points `domain` at `addr` from now on (tests start peers on port 0; private peering may
    /// move). A cached connection to another address is replaced at the next request.
    pub fn set_address(&self, domain: &str, addr: SocketAddr) {
        self.addresses
            .write()
            .insert(domain.to_ascii_lowercase(), addr);
    }

    /// Counters of directory fetches and connection attempts so far.
    pub fn stats(&self) -> PeerStats {
        PeerStats {
            directory_fetches: self.directory_fetches.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }

    /// Sends `body` to `endpoint` of peer `domain` with path parameter `param` (expanded into
    /// the peer's template, RFC 6570 simple expansion) and returns the peer's answer, whatever
    /// its status. `extra_headers` are sent too, except `host`; `from` is always ours and
    /// `content-type` defaults to `application/octet-stream` on POSTs.
    ///
    /// Tracing: the call is a `peer_call` span (fields `peer`, `endpoint`, and `status` once
    /// answered) whose context goes to the peer as W3C `traceparent`/`tracestate`
    /// ([`crate::telemetry::inject_context`]), so the peer's handling joins the caller's trace.
    ///
    /// Cancel safety: safe; a dropped call resets its stream and leaves the cached connection
    /// and directory usable.
    pub async fn request(
        &self,
        domain: &str,
        endpoint: S2sEndpoint,
        param: &str,
        mut extra_headers: HeaderMap,
        body: Bytes,
    ) -> Result<PeerResponse, PeerError> {
        let span = tracing::info_span!(
            "peer_call",
            otel.kind = "client",
            peer = %domain,
            %endpoint,
            status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        crate::telemetry::inject_context(&span, &mut extra_headers);
        let sent = self.request_within_deadline(domain, endpoint, param, extra_headers, body);
        let result = match tokio::time::timeout(self.request_timeout, sent)
            .instrument(span.clone())
            .await
        {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                domain: domain.to_owned(),
                after: self.request_timeout,
            }),
        };
        match &result {
            Ok(response) => span.record("status", response.status.as_u16()),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        self.metrics.count_peer_request(match &result {
            Ok(_) => PeerOutcome::Answered,
            Err(PeerError::Resolve { .. }) => PeerOutcome::ResolveFailed,
            Err(PeerError::Connect { .. }) => PeerOutcome::ConnectFailed,
            Err(PeerError::Timeout { .. }) => PeerOutcome::TimedOut,
            Err(PeerError::Directory { .. }) => PeerOutcome::DirectoryFailed,
            Err(PeerError::Transport { .. }) => PeerOutcome::TransportFailed,
        });
        if let Err(err) = &result {
            tracing::debug!(parent: &span, %err, %endpoint, "peer request failed");
        }
        result
    }

    async fn request_within_deadline(
        &self,
        domain: &str,
        endpoint: S2sEndpoint,
        param: &str,
        extra_headers: HeaderMap,
        body: Bytes,
    ) -> Result<PeerResponse, PeerError> {
        let domain = domain.to_ascii_lowercase();
        check_domain(&domain).map_err(|reason| PeerError::Resolve {
            domain: domain.clone(),
            reason,
        })?;
        let _in_flight = self.metrics.federation_request_in_flight(&domain);
        let slot = self.slot(&domain);
        let link = Link {
            domain: &domain,
            slot: &slot,
            connection: self.connection(&domain, &slot).await?,
        };
        let directory = self.directory(&link).await?;
        let path =
            directory
                .path_for(endpoint, param, &domain)
                .map_err(|e| PeerError::Directory {
                    domain: domain.clone(),
                    reason: e.to_string(),
                })?;
        let method = endpoint.method();
        let headers = self.headers(extra_headers, &method);
        self.send(&link, method, &path, headers, body).await
    }

    /// The slot of `domain`, created if needed; forgets idle peers when it creates one.
    fn slot(&self, domain: &str) -> Arc<PeerSlot> {
        let now = Instant::now();
        let mut slots = self.slots.lock();
        if !slots.contains_key(domain) {
            let ttl = self.directory_ttl;
            slots.retain(|domain, slot| {
                let keep =
                    Arc::strong_count(slot) > 1 || now.duration_since(*slot.last_used.lock()) < ttl;
                if !keep {
                    self.metrics.forget_federation_peer_rtt(domain);
                }
                keep
            });
        }
        let slot = slots
            .entry(domain.to_owned())
            .or_insert_with(|| {
                Arc::new(PeerSlot {
                    connection: tokio::sync::Mutex::new(None),
                    directory: tokio::sync::Mutex::new(None),
                    last_used: parking_lot::Mutex::new(now),
                })
            })
            .clone();
        *slot.last_used.lock() = now;
        slot
    }

    /// The peer's connection: the cached one unless the map now names another address, else a
    /// new one (concurrent callers wait for one attempt).
    async fn connection(
        &self,
        domain: &str,
        slot: &PeerSlot,
    ) -> Result<Arc<PeerConnection>, PeerError> {
        let mut cached = slot.connection.lock().await;
        let mapped = self.addresses.read().get(domain).copied();
        if let Some(connection) = cached.as_ref() {
            if mapped.is_none_or(|addr| addr == connection.addr) {
                return Ok(connection.clone());
            }
        }
        *cached = None;
        let addr = match mapped {
            Some(addr) => addr,
            None if self.resolve_dns => resolve(domain).await?,
            None => {
                return Err(PeerError::Resolve {
                    domain: domain.to_owned(),
                    reason: "not a configured peer (federation.peers), and DNS lookups are off"
                        .into(),
                })
            }
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        // quinn instruments its endpoint and connection drivers with the span current when it
        // creates them; connecting here would keep the span of the request that happened to
        // open the connection (and, through it, its whole trace) open for the connection's
        // life. A task of its own connects outside any span; dropping the call aborts it.
        let (name, tls, limits) = (
            domain.to_owned(),
            self.tls.clone(),
            self.client_limits.clone(),
        );
        let connecting = AbortOnDrop(tokio::spawn(async move {
            H3Client::connect(addr, &name, tls, limits).await
        }));
        let connect_error = |reason: String| PeerError::Connect {
            domain: domain.to_owned(),
            addr,
            reason,
        };
        let client = connecting
            .await
            .map_err(|e| connect_error(format!("connect task failed: {e}")))?
            .map_err(|e| connect_error(error_chain(&e)))?;
        let connection = Arc::new(PeerConnection {
            client,
            addr,
            answered: AtomicBool::new(false),
        });
        *cached = Some(connection.clone());
        Ok(connection)
    }

    /// The peer's directory: the cached one within its TTL, else fetched (concurrent callers
    /// wait for one fetch). A failed fetch caches nothing.
    async fn directory(&self, link: &Link<'_>) -> Result<Arc<Directory>, PeerError> {
        let mut cached = link.slot.directory.lock().await;
        if let Some(entry) = cached.as_ref() {
            if is_fresh(entry.fetched_at, Instant::now(), self.directory_ttl) {
                return Ok(entry.directory.clone());
            }
        }
        self.directory_fetches.fetch_add(1, Ordering::Relaxed);
        let headers = self.headers(HeaderMap::new(), &Method::GET);
        let response = self
            .send(link, Method::GET, DIRECTORY_PATH, headers, Bytes::new())
            .await?;
        let directory_error = |reason: String| PeerError::Directory {
            domain: link.domain.to_owned(),
            reason,
        };
        if response.status != StatusCode::OK {
            let reason = String::from_utf8_lossy(&response.body);
            return Err(directory_error(format!(
                "{DIRECTORY_PATH} answered {}: {}",
                response.status,
                reason.chars().take(200).collect::<String>()
            )));
        }
        let directory =
            Arc::new(Directory::parse(&response.body).map_err(|e| directory_error(e.to_string()))?);
        *cached = Some(CachedDirectory {
            directory: directory.clone(),
            fetched_at: Instant::now(),
        });
        Ok(directory)
    }

    /// Sends one request on the link's connection; a failure of the connection itself drops it
    /// from the slot.
    async fn send(
        &self,
        link: &Link<'_>,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<PeerResponse, PeerError> {
        let (domain, slot, connection) = (link.domain, link.slot, &link.connection);
        match connection.client.request(method, path, headers, body).await {
            Ok((status, headers, body)) => {
                connection.answered.store(true, Ordering::Relaxed);
                self.metrics
                    .sample_federation_peer(domain, PathSample::of(connection.client.connection()));
                Ok(PeerResponse {
                    status,
                    headers,
                    body,
                })
            }
            Err(err) => {
                let reason = error_chain(&err);
                if !is_connection_failure(&err) {
                    return Err(PeerError::Transport {
                        domain: domain.to_owned(),
                        reason,
                    });
                }
                {
                    let mut cached = slot.connection.lock().await;
                    if cached
                        .as_ref()
                        .is_some_and(|current| Arc::ptr_eq(current, connection))
                    {
                        *cached = None;
                        self.metrics.forget_federation_peer_rtt(domain);
                    }
                }
                if connection.answered.load(Ordering::Relaxed) {
                    Err(PeerError::Transport {
                        domain: domain.to_owned(),
                        reason,
                    })
                } else {
                    Err(PeerError::Connect {
                        domain: domain.to_owned(),
                        addr: connection.addr,
                        reason,
                    })
                }
            }
        }
    }

    fn headers(&self, mut headers: HeaderMap, method: &Method) -> HeaderMap {
        // The authority is the peer's domain, set by the connection; a second one would make
        // the request malformed (RFC 9114 §4.3.1).
        headers.remove(http::header::HOST);
        headers.insert(http::header::FROM, self.from.clone());
        if *method == Method::POST && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        headers
    }
}

/// A spawned task that is aborted when its handle is dropped (cancel safety of the caller).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a directory fetched at `fetched_at` may still be used at `now`.
fn is_fresh(fetched_at: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(fetched_at) < ttl
}

/// `domain:443` through the system resolver (MIMI.md §3.1: peers are reached on HTTPS).
async fn resolve(domain: &str) -> Result<SocketAddr, PeerError> {
    let resolve_error = |reason: String| PeerError::Resolve {
        domain: domain.to_owned(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host((domain, HTTPS_PORT))
        .await
        .map_err(|e| resolve_error(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| resolve_error("no address".into()))
}

/// Whether `err` means the connection as a whole is gone (not just one stream).
fn is_connection_failure(err: &H3ClientError) -> bool {
    match err {
        H3ClientError::Connection(_) | H3ClientError::H3Connection(_) => true,
        H3ClientError::Stream(stream) => matches!(
            stream,
            ::h3::error::StreamError::ConnectionError { .. }
                | ::h3::error::StreamError::RemoteClosing { .. }
        ),
        _ => false,
    }
}

/// `err` and its sources, joined with ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_fresh_for_its_ttl_only() {
        let fetched = Instant::now();
        let ttl = Duration::from_secs(300);
        assert!(is_fresh(fetched, fetched, ttl));
        assert!(is_fresh(
            fetched,
            fetched + ttl - Duration::from_millis(1),
            ttl
        ));
        assert!(!is_fresh(fetched, fetched + ttl, ttl));
        assert!(!is_fresh(fetched, fetched + 2 * ttl, ttl));
    }
}
