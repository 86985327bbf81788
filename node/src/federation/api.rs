//! [`FederationApi`]: the listener's handler for the server-to-server endpoints, `/v1/<name>/
//! <param>` (protocol-06 §5, paths as our directory declares them, MIMI.md §3.2).
//!
//! Order of checks, each answered with a status and a specific reason in the style of the
//! client API ([`crate::api`]): unknown endpoint 404; wrong method 405 with `Allow`; missing
//! path parameter 404; authentication ([`super::auth`]) 401/400/403/421; the peer's request
//! rate (`limits.rate.peer_*`, keyed by the authenticated domain, [`crate::rate_limit`]) 429
//! with `Retry-After`; a path parameter that is not UTF-8 after percent-decoding 400. Only then does the [`FederationService`] see the
//! request, as a [`PeerRequest`] naming the authenticated peer domain. Routing before
//! authentication reveals nothing: the endpoint list is public in the directory.
//!
//! Every request is counted in `mimid_requests_total` under its endpoint's label
//! ([`S2sEndpoint::metric_label`], `unknown` for unknown paths); refused authentications show
//! there as 400/401/403/421 of their endpoint.
//!
//! Tracing: each request is a `federation_api` span, the child of the calling provider's
//! `peer_call` span when the request carries a W3C `traceparent`
//! ([`crate::telemetry::set_remote_parent`]); it names the authenticated `peer` once known.
//! Inside it, `peer_request` names the endpoint and, for room-scoped endpoints
//! (`roomId` path parameter, protocol-06 §5), the `room`.

use std::sync::Arc;

use http::StatusCode;
use tracing::Instrument;

use super::{auth, FederationService, PeerRequest, S2sEndpoint};
use crate::api::{Answer, Refusal};
use crate::h3::{Handler, Request, Response};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimits;

/// Path prefix of the server-to-server API.
pub const PREFIX: &str = "/v1/";

/// The server-to-server API of one provider.
pub struct FederationApi {
    domain: String,
    service: Arc<dyn FederationService>,
    metrics: Arc<Metrics>,
    rate_limits: Arc<RateLimits>,
}

impl FederationApi {
    /// The API of provider `domain` (our domain: requests must be addressed to it), passing
    /// authenticated requests within `rate_limits` to `service`.
    pub fn new(
        domain: String,
        service: Arc<dyn FederationService>,
        metrics: Arc<Metrics>,
        rate_limits: Arc<RateLimits>,
    ) -> Self {
        FederationApi {
            domain,
            service,
            metrics,
            rate_limits,
        }
    }

    async fn route(&self, req: Request) -> (&'static str, Answer) {
        let not_found =
            |reason: String| ("unknown", Err(Refusal::new(StatusCode::NOT_FOUND, reason)));
        let path = req.uri.path().to_owned();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return not_found("no such endpoint".into());
        };
        let (name, param) = match rest.split_once('/') {
            Some((name, param)) => (name, param),
            None => (rest, ""),
        };
        let Some(endpoint) = S2sEndpoint::from_name(name) else {
            return not_found(format!("no such endpoint {name:?}"));
        };
        let label = endpoint.metric_label();
        if req.method != endpoint.method() {
            return (
                label,
                Err(Refusal::method_not_allowed(
                    endpoint.name(),
                    endpoint.method(),
                )),
            );
        }
        if param.is_empty() {
            let reason = format!(
                "{endpoint} takes a path parameter: {PREFIX}{endpoint}/{{{}}}",
                endpoint.param_name()
            );
            return (label, Err(Refusal::new(StatusCode::NOT_FOUND, reason)));
        }
        let from = match auth::authenticate(&req, &self.domain) {
            Ok(from) => {
                tracing::Span::current().record("peer", from.as_str());
                from
            }
            Err(refusal) => {
                tracing::debug!(remote = %req.peer.remote, status = %refusal.status, reason = %refusal.reason, "peer request refused");
                return (label, Err(refusal));
            }
        };
        if let Err(refusal) = self.rate_limits.check_peer(&from) {
            tracing::debug!(peer = %from, reason = %refusal.reason, "peer request rate-limited");
            return (label, Err(refusal));
        }
        let param = match percent_encoding::percent_decode_str(param).decode_utf8() {
            Ok(param) => param.into_owned(),
            Err(_) => {
                return (
                    label,
                    Err(Refusal::bad_request(
                        "path parameter is not UTF-8 after percent-decoding",
                    )),
                )
            }
        };
        let span =
            tracing::info_span!("peer_request", %from, %endpoint, room = tracing::field::Empty);
        if endpoint.param_name() == "roomId" {
            span.record("room", param.as_str());
        }
        let response = self
            .service
            .handle(PeerRequest {
                from,
                endpoint,
                param,
                headers: req.headers,
                body: req.body,
            })
            .instrument(span)
            .await;
        (label, Ok(response))
    }
}

impl Handler for FederationApi {
    fn handle(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            let span = tracing::info_span!(
                "federation_api",
                otel.kind = "server",
                method = %req.method,
                path = %req.uri.path(),
                peer = tracing::field::Empty,
            );
            crate::api::serve(span, req, &self.metrics, |req| self.route(req)).await
        })
    }
}
