//! The server-to-server (federation) transport of MIMI protocol-06 (MIMI.md §3.1, §3.2, §13,
//! §15 "Transport & discovery"): HTTP/3 between providers, mutually authenticated with TLS.
//!
//! What lives here:
//! - [`directory`]: the `/.well-known/mimi-protocol-directory` document we serve, and the parser
//!   and RFC 6570 template expansion for the documents peers serve (MIMI.md §3.2);
//! - [`auth`]: the checks every incoming peer request passes before anything else (MIMI.md
//!   §3.1, §7.1 step 1): a client certificate, `From: mimi@<domain>`, the certificate naming
//!   that domain, and the request being addressed to us;
//! - [`api`]: [`FederationApi`], the listener's `/v1/...` handler, which authenticates, routes
//!   by endpoint and hands a [`PeerRequest`] to a [`FederationService`];
//! - [`routes`]: [`Routes`], the listener's top-level handler (client API, directory,
//!   server-to-server API);
//! - [`peers`]: [`Peers`], the outgoing side: resolving peer domains, one cached connection and
//!   one cached directory per peer, requests bounded by `federation.request_timeout_ms`.
//!
//! What does not: the meaning of the endpoints. A [`FederationService`] implements
//! keyMaterial, update, notify and the rest on top of this transport: the node runs
//! [`crate::peering::MimiService`].

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::Method;

use crate::h3::Response;

pub mod api;
pub mod auth;
pub mod directory;
pub mod peers;
pub mod routes;

pub use api::FederationApi;
pub use directory::{Directory, DirectoryDocument, DirectoryError, DIRECTORY_PATH};
pub use peers::{PeerError, PeerResponse, PeerStats, Peers, PeersError};
pub use routes::Routes;

/// The endpoints of protocol-06 §5 as named in the directory (MIMI.md §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum S2sEndpoint {
    /// `keyMaterial/{targetUser}` (MIMI.md §5.1).
    KeyMaterial,
    /// `update/{roomId}` (MIMI.md §5.2).
    Update,
    /// `notify/{roomId}` (MIMI.md §5.4).
    Notify,
    /// `submitMessage/{roomId}` (MIMI.md §5.3).
    SubmitMessage,
    /// `groupInfo/{roomId}` (MIMI.md §5.5).
    GroupInfo,
    /// `requestConsent/{targetUser}` (MIMI.md §5.6).
    RequestConsent,
    /// `updateConsent/{requesterUser}` (MIMI.md §5.6).
    UpdateConsent,
    /// `identifierQuery/{domain}` (MIMI.md §5.7).
    IdentifierQuery,
    /// `reportAbuse/{roomId}` (MIMI.md §5.8).
    ReportAbuse,
    /// `proxyDownload/{downloadUrl}` (MIMI.md §5.9), the only GET.
    ProxyDownload,
}

impl S2sEndpoint {
    /// Every endpoint, in the directory's order.
    pub const ALL: [S2sEndpoint; 10] = [
        S2sEndpoint::KeyMaterial,
        S2sEndpoint::Update,
        S2sEndpoint::Notify,
        S2sEndpoint::SubmitMessage,
        S2sEndpoint::GroupInfo,
        S2sEndpoint::RequestConsent,
        S2sEndpoint::UpdateConsent,
        S2sEndpoint::IdentifierQuery,
        S2sEndpoint::ReportAbuse,
        S2sEndpoint::ProxyDownload,
    ];

    /// The directory key, which is also our path segment (`/v1/<name>/...`).
    pub fn name(self) -> &'static str {
        match self {
            S2sEndpoint::KeyMaterial => "keyMaterial",
            S2sEndpoint::Update => "update",
            S2sEndpoint::Notify => "notify",
            S2sEndpoint::SubmitMessage => "submitMessage",
            S2sEndpoint::GroupInfo => "groupInfo",
            S2sEndpoint::RequestConsent => "requestConsent",
            S2sEndpoint::UpdateConsent => "updateConsent",
            S2sEndpoint::IdentifierQuery => "identifierQuery",
            S2sEndpoint::ReportAbuse => "reportAbuse",
            S2sEndpoint::ProxyDownload => "proxyDownload",
        }
    }

    /// The endpoint named `name` (exact, case-sensitive, as in the directory).
    pub fn from_name(name: &str) -> Option<S2sEndpoint> {
        S2sEndpoint::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The variable of the URL template, as the draft's directory example names it.
    pub fn param_name(self) -> &'static str {
        match self {
            S2sEndpoint::KeyMaterial | S2sEndpoint::RequestConsent => "targetUser",
            S2sEndpoint::UpdateConsent => "requesterUser",
            S2sEndpoint::IdentifierQuery => "domain",
            S2sEndpoint::ProxyDownload => "downloadUrl",
            S2sEndpoint::Update
            | S2sEndpoint::Notify
            | S2sEndpoint::SubmitMessage
            | S2sEndpoint::GroupInfo
            | S2sEndpoint::ReportAbuse => "roomId",
        }
    }

    /// The HTTP method: POST for all but proxyDownload (MIMI.md §5.9).
    pub fn method(self) -> Method {
        match self {
            S2sEndpoint::ProxyDownload => Method::GET,
            _ => Method::POST,
        }
    }

    /// The `endpoint` label of the request metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            S2sEndpoint::KeyMaterial => "s2s_key_material",
            S2sEndpoint::Update => "s2s_update",
            S2sEndpoint::Notify => "s2s_notify",
            S2sEndpoint::SubmitMessage => "s2s_submit_message",
            S2sEndpoint::GroupInfo => "s2s_group_info",
            S2sEndpoint::RequestConsent => "s2s_request_consent",
            S2sEndpoint::UpdateConsent => "s2s_update_consent",
            S2sEndpoint::IdentifierQuery => "s2s_identifier_query",
            S2sEndpoint::ReportAbuse => "s2s_report_abuse",
            S2sEndpoint::ProxyDownload => "s2s_proxy_download",
        }
    }
}

impl std::fmt::Display for S2sEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An authenticated request from a peer provider, routed to its endpoint.
#[derive(Debug)]
pub struct PeerRequest {
    /// The authenticated peer domain: the `From` domain, lowercase, which the peer's client
    /// certificate names (MIMI.md §3.1).
    pub from: String,
    /// The endpoint.
    pub endpoint: S2sEndpoint,
    /// The percent-decoded path parameter (a room or user URI in one of the forms MIMI.md §3.2
    /// accepts, a domain, or a download URL); never empty.
    pub param: String,
    /// The request's header fields.
    pub headers: http::HeaderMap,
    /// The whole body, within `limits.max_body_bytes`.
    pub body: Bytes,
}

/// The meaning of the server-to-server endpoints, implemented on top of this transport.
pub trait FederationService: Send + Sync + 'static {
    /// Answers an authenticated peer request. Must not panic on bad input: a malformed body
    /// gets a 4xx response with a specific reason; an endpoint the service does not implement
    /// answers 501.
    fn handle(&self, req: PeerRequest) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_round_trip_and_only_proxy_download_is_a_get() {
        for endpoint in S2sEndpoint::ALL {
            assert_eq!(S2sEndpoint::from_name(endpoint.name()), Some(endpoint));
            assert!(endpoint.metric_label().starts_with("s2s_"));
            let expected = if endpoint == S2sEndpoint::ProxyDownload {
                Method::GET
            } else {
                Method::POST
            };
            assert_eq!(endpoint.method(), expected, "{endpoint}");
        }
        assert_eq!(S2sEndpoint::from_name("KeyMaterial"), None);
        assert_eq!(S2sEndpoint::from_name("submit"), None);
    }
}
