//! The provider's own client API over HTTP/3 (documented in node/API.md).
//!
//! MIMI leaves client <-> own-provider traffic to each provider (MIMI.md §1); we use the same
//! TLS-PL codec as protocol-06 so there is one decoder to harden. This layer only decodes,
//! authenticates and maps results to statuses: every decision is taken by `mimid_actors::hub`
//! (DESIGN.md §6). A request that fails to decode gets 400 with the codec's specific reason
//! and changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use mimid_actors::command::{self, SubmitVerdict, UpdateVerdict};
use mimid_actors::directory::{ClaimOutcome, ClientClaimResult, DirectoryError};
use mimid_actors::hub::{Busy, Hub, HubError, PublishError};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::residency::RESIDENCY_HEADER;
use mimid_actors::room::identity::client_of_credential;
use mimid_actors::shard::CreateRoomRejection;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::config::LimitsSettings;
use crate::federation::{Peers, S2sEndpoint};
use crate::franking::Franking;
use crate::group_info::{GroupInfoService, Requester, REASON_HEADER};
use crate::h3::{Handler, Request, Response};
use crate::metrics::{Limit, Metrics, Outcome};
use crate::peering::{refuse_blocked_user, submit_response, Forwarder};
use crate::rate_limit::RateLimits;
use crate::wire::client::{
    encode_frame, AckRequest, ClientSubmitResponse, ClientUpdateResponse, CreateRoomRequest,
    CreateRoomResponse, CreateRoomStatus, DeliveredBody, DeliveredItem, PublishKeyPackagesRequest,
    RegisterClientRequest, RegisterClientResponse, HEARTBEAT_FRAME,
};
use crate::wire::group_info::{external_commit_joiner, GroupInfoRequest};
use crate::wire::key_material::{
    ClientKeyMaterial, ClientMaterial, KeyMaterialClientCode, KeyMaterialRequest,
    KeyMaterialResponse, KeyMaterialUserCode,
};
use crate::wire::submit::{Frank, SubmitMessageRequest, SubmitMessageResponse};
use crate::wire::types::{IdentifierUri, Protocol};
use crate::wire::update::{
    HandshakeBundle as WireBundle, UpdateOutcome, UpdateRequest, UpdateRoomResponse,
};
use crate::wire::{Decode, Encode, Limits, Mls};

mod abuse;
mod discovery;

/// Path prefix of the client API.
pub const PREFIX: &str = "/client/v1/";
/// The authentication scheme of `authorization: Bearer <token>` (RFC 6750).
const BEARER_SCHEME: &str = "Bearer";
/// Bytes of the random secret inside a token.
const SECRET_LEN: usize = 32;

/// A client's bearer token: `base64url(client URI || 0x00 || 32 random bytes)`. The provider
/// stores only SHA-256 of the secret, in the shard of the client's user.
pub struct Token {
    pub client: ClientId,
    secret: [u8; SECRET_LEN],
}

impl Token {
    fn generate(client: ClientId) -> Token {
        let mut secret = [0u8; SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Token { client, secret }
    }

    pub fn encode(&self) -> String {
        let mut raw = self.client.as_bytes().to_vec();
        raw.push(0);
        raw.extend_from_slice(&self.secret);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn parse(text: &str) -> Option<Token> {
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        let split = raw.len().checked_sub(SECRET_LEN + 1)?;
        if raw[split] != 0 {
            return None;
        }
        let client = ClientId::from_bytes(&raw[..split]).ok()?;
        let secret = raw[split + 1..].try_into().ok()?;
        Some(Token { client, secret })
    }

    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }
}

/// An answer that is not a success, with its status and specific reason. Shared by the client
/// API and the server-to-server API ([`crate::federation`]), so both refuse alike.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
    /// The method to name in `Allow` on a 405 (RFC 9110 §15.5.6).
    pub(crate) allow: Option<Method>,
    /// The bound whose hit this refusal reports (counted in `limit_hits_total`).
    pub(crate) limit: Option<Limit>,
    /// `Retry-After` (whole seconds) of a 429 ([`crate::rate_limit`]).
    pub(crate) retry_after: Option<Duration>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            allow: None,
            limit: None,
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(reason: impl std::fmt::Display) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, reason.to_string())
    }

    /// 405 naming `expected` in `Allow` (RFC 9110 §15.5.6).
    pub(crate) fn method_not_allowed(endpoint: &str, expected: Method) -> Self {
        let mut refusal = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{endpoint} takes {expected}"),
        );
        refusal.allow = Some(expected);
        refusal
    }

    /// The response: the reason as `text/plain`, `Allow` on a 405, `Retry-After` on a 503 and
    /// a 429; a limit hit is counted in `metrics`.
    pub(crate) fn into_response(self, metrics: &Metrics) -> Response {
        let mut response = Response::text(self.status, self.reason);
        if let Some(allow) = self.allow {
            if let Ok(value) = HeaderValue::from_str(allow.as_str()) {
                response.headers.insert(http::header::ALLOW, value);
            }
        }
        if let Some(limit) = self.limit {
            metrics.count_limit_hit(limit);
        }
        if let Some(retry_after) = self.retry_after {
            response.headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<HubError> for Refusal {
    fn from(e: HubError) -> Self {
        let (status, limit) = match e {
            HubError::Busy(Busy::Room) => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(Limit::MailboxFull))
            }
            HubError::Busy(Busy::Replication) => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(Limit::InboxFull))
            }
            HubError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
            HubError::UnknownRoom => (StatusCode::NOT_FOUND, None),
            HubError::Rejected(_) => (StatusCode::BAD_REQUEST, None),
        };
        let mut refusal = Refusal::new(status, e.to_string());
        refusal.limit = limit;
        refusal
    }
}

impl From<crate::wire::WireError> for Refusal {
    fn from(e: crate::wire::WireError) -> Self {
        Refusal::bad_request(format!("{}: {e}", e.code()))
    }
}

pub(crate) type Answer = Result<Response, Refusal>;

/// Refuses with 403 a request whose `field` names `named`, a user other than the authenticated
/// `client`'s (a client speaks only for its own user).
pub(crate) fn require_own_user(
    field: &str,
    named: &UserId,
    client: &ClientId,
) -> Result<(), Refusal> {
    if *named != client.user() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "{field} {named} is not the authenticated client's user {}",
                client.user()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn ok_body(status: StatusCode, body: &impl Encode) -> Answer {
    let bytes = body.to_bytes().map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response: {e}"),
        )
    })?;
    let mut response = Response::full(status, bytes);
    response.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

pub struct ClientApi {
    hub: Arc<Hub>,
    domain: String,
    limits: Limits,
    max_key_packages_per_publish: usize,
    stream_heartbeat: Duration,
    metrics: Arc<Metrics>,
    /// Longest push-stream frame.
    max_frame: usize,
    /// Requests for rooms and users of other providers go there (MIMI.md §15 "Follower").
    forwarder: Forwarder,
    /// The hub's answer to groupInfo for rooms hosted here (MIMI.md §5.5).
    group_info: Arc<GroupInfoService>,
    /// Per-user request rate and KeyPackage claim limits (`limits.rate`).
    rate_limits: Arc<RateLimits>,
    /// Franks for messages of franked rooms, the franking agent rooms are created with, and
    /// the validation of abuse reports (MIMI.md §5.3.1, §5.8).
    franking: Arc<Franking>,
}

impl ClientApi {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Arc<Hub>,
        domain: String,
        settings: &LimitsSettings,
        metrics: Arc<Metrics>,
        peers: Arc<Peers>,
        group_info: Arc<GroupInfoService>,
        rate_limits: Arc<RateLimits>,
        franking: Arc<Franking>,
    ) -> Self {
        ClientApi {
            hub,
            group_info,
            rate_limits,
            franking,
            forwarder: Forwarder::new(peers, domain.clone()),
            domain,
            limits: Limits {
                max_body_len: settings.max_body_bytes,
            },
            max_key_packages_per_publish: settings.max_key_packages_per_publish,
            stream_heartbeat: Duration::from_millis(settings.stream_heartbeat_ms),
            metrics,
            max_frame: settings.max_body_bytes.saturating_mul(2),
        }
    }

    async fn authenticate(&self, req: &Request) -> Result<ClientId, Refusal> {
        let unauthorized = |reason| Refusal::new(StatusCode::UNAUTHORIZED, reason);
        let header = req
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing bearer token"))?;
        // RFC 9110 §11.1: the scheme is case-insensitive.
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(BEARER_SCHEME))
            .and_then(|(_, token)| Token::parse(token.trim()))
            .ok_or_else(|| unauthorized("malformed bearer token"))?;
        if self.hub.authenticate(&token.client, &token.hash()).await? {
            Ok(token.client)
        } else {
            Err(unauthorized("unknown client or wrong token"))
        }
    }

    /// A room path parameter: a room hosted here is handled here, any other is forwarded to
    /// its hub.
    fn room(&self, encoded: &str) -> Result<RoomId, Refusal> {
        let room = parse_room_path(encoded).map_err(Refusal::bad_request)?;
        tracing::Span::current().record("room", room.as_str());
        Ok(room)
    }

    fn is_local(&self, room: &RoomId) -> bool {
        room.domain() == self.domain
    }

    async fn register(&self, req: Request) -> Answer {
        let body = RegisterClientRequest::from_bytes(&req.body, &self.limits)?;
        let client = body.client_id()?;
        if client.domain() != self.domain {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("client {client} does not belong to {}", self.domain),
            ));
        }
        refuse_blocked_user(&self.hub, &self.metrics, &client.user())?;
        // A further device of a user is linked by one of its existing devices: the request
        // then carries that device's bearer token.
        let linked_by = if req.headers.contains_key(http::header::AUTHORIZATION) {
            let linker = self.authenticate(&req).await?;
            if linker.user() != client.user() {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("{linker} cannot link a client of another user"),
                ));
            }
            Some(linker)
        } else {
            None
        };
        let token = Token::generate(client.clone());
        match self
            .hub
            .register_client(client, token.hash(), linked_by)
            .await?
        {
            Ok(()) => ok_body(
                StatusCode::CREATED,
                &RegisterClientResponse {
                    token: token.encode().into_bytes(),
                },
            ),
            Err(DirectoryError::AlreadyRegistered) => Err(Refusal::new(
                StatusCode::CONFLICT,
                "client is already registered",
            )),
            Err(e @ DirectoryError::LinkRequired) => {
                Err(Refusal::new(StatusCode::FORBIDDEN, e.to_string()))
            }
            Err(e) => Err(Refusal::bad_request(e)),
        }
    }

    async fn publish(&self, req: Request, client: ClientId) -> Answer {
        let body = PublishKeyPackagesRequest::from_bytes(&req.body, &self.limits)?;
        if body.key_packages.len() > self.max_key_packages_per_publish {
            let mut refusal = Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} KeyPackages in one request; the limit is {}",
                    body.key_packages.len(),
                    self.max_key_packages_per_publish
                ),
            );
            refusal.limit = Some(Limit::BodySize);
            return Err(refusal);
        }
        match self
            .hub
            .publish_key_packages(client, body.key_package_bytes(), body.last_resort)
            .await
        {
            Ok(count) => Ok(Response::text(
                StatusCode::CREATED,
                format!("{count} KeyPackages published"),
            )),
            Err(PublishError::Hub(e)) => Err(e.into()),
            Err(e) => Err(Refusal::bad_request(e)),
        }
    }

    /// protocol-06 §5.1 (MIMI.md §5.1): the client's own signed `KeyMaterialRequest`, checked
    /// as a target provider checks it (`KeyMaterialRequest::verify`), plus what only the
    /// requester's provider can check: that the signing client is the one the bearer token
    /// authenticates. The request's bytes are therefore fit to be forwarded to the provider of
    /// a remote target unchanged.
    async fn claim(&self, req: Request, client: ClientId) -> Answer {
        let body = KeyMaterialRequest::from_bytes(&req.body, &self.limits)?;
        let target = body.target_user()?;
        // MIMI.md §5.1: roomId MUST be present when the material is for adding the target to a
        // room, which is the only reason a client fetches it.
        body.room()?;
        let requester = body.verify().map_err(|e| {
            let status = if e.is_forgery() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            Refusal::new(status, format!("{}: {e}", e.code()))
        })?;
        if requester != client {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the request is signed as {requester}, but the bearer token authenticates \
                     {client}"
                ),
            ));
        }
        // MIMI.md §13: a blocked user is not claimed (nor claims: checked with the token).
        refuse_blocked_user(&self.hub, &self.metrics, &target)?;
        match target.domain() {
            local if local == self.domain => {
                self.rate_limits.check_claim(&client.user(), &target)?;
                // MIMI.md §5.1: the target's reachability and consent are decided in the
                // claim's apply; a refusal claims nothing.
                let outcome = self
                    .hub
                    .claim_key_packages_in_room(client.user(), target.clone(), body.room()?)
                    .await?;
                ok_body(StatusCode::OK, &key_material_response(&target, outcome)?)
            }
            // MIMI.md §5.1: key material for a room is fetched through the room's hub, which
            // can then route the Welcome; as the hub we ask the target's provider ourselves.
            remote => {
                let room = body.room()?;
                let via = if self.is_local(&room) {
                    remote
                } else {
                    room.domain()
                };
                let answer = self
                    .forwarder
                    .forward(via, S2sEndpoint::KeyMaterial, target.as_str(), req.body)
                    .await?;
                Ok(Forwarder::relay(answer))
            }
        }
    }

    async fn create_room(&self, req: Request, client: ClientId) -> Answer {
        let body = CreateRoomRequest::from_bytes(&req.body, &self.limits)?;
        let room = body.room_id()?;
        if room.domain() != self.domain {
            return Err(Refusal::bad_request(format!(
                "room {room} must be in this provider's domain {}",
                self.domain
            )));
        }
        // Data residency (issue 9): `Mimid-Residency: <set>` pins the room to a configured
        // residency set (ARCHITECTURE.md "Data residency").
        let residency = match req.headers.get(RESIDENCY_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                Refusal::bad_request(format!("{RESIDENCY_HEADER} must be a residency set name"))
            })?),
        };
        let result = self
            .hub
            .create_room(
                room,
                client,
                body.group_info.into_bytes(),
                body.ratchet_tree.into_bytes(),
                residency,
            )
            .await?;
        let (status, response) = match result {
            Ok(()) => (
                StatusCode::CREATED,
                CreateRoomResponse {
                    status: CreateRoomStatus::Created,
                    reason: String::new(),
                },
            ),
            Err(CreateRoomRejection::AlreadyExists) => (
                StatusCode::CONFLICT,
                CreateRoomResponse {
                    status: CreateRoomStatus::Exists,
                    reason: "room exists".into(),
                },
            ),
            Err(CreateRoomRejection::Invalid(reason)) => (
                StatusCode::BAD_REQUEST,
                CreateRoomResponse {
                    status: CreateRoomStatus::Invalid,
                    reason,
                },
            ),
        };
        ok_body(status, &response)
    }

    async fn update(&self, req: Request, client: ClientId, room: RoomId) -> Answer {
        if !self.is_local(&room) {
            // The hub checks that the MLS sender is a client of ours (MIMI.md §7.1 step 2); a
            // local client can at most replay another local client's signed handshake, which
            // the hub deduplicates.
            let request = UpdateRequest::from_bytes(&req.body, &self.limits)?;
            let joining = external_join_of(&request, &client)?;
            let answer = self
                .forwarder
                .forward(room.domain(), S2sEndpoint::Update, room.as_str(), req.body)
                .await?;
            if answer.status != StatusCode::OK {
                return Ok(Forwarder::relay(answer));
            }
            let response = UpdateRoomResponse::from_bytes(&answer.body, &self.limits)
                .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("hub answer: {e}")))?;
            // MIMI.md §6.6: no Welcome will tell our mirror that the client joined; record it
            // (durably) before the client hears of its success.
            if let Some(commit_sha256) = joining {
                if matches!(response.outcome, UpdateOutcome::Success { .. }) {
                    self.hub
                        .mirror_join(room.clone(), client.clone(), commit_sha256)
                        .await?;
                }
            }
            // The hub's log position means nothing here: our mirror numbers items itself.
            return ok_body(StatusCode::OK, &ClientUpdateResponse { response, seq: 0 });
        }
        let body = UpdateRequest::from_bytes(&req.body, &self.limits)?;
        let bundle = command::HandshakeBundle::try_from(body)?;
        let is_commit = matches!(bundle, command::HandshakeBundle::Commit { .. });
        let verdict = self
            .hub
            .update(room, command::Submitter::Client(client), bundle)
            .await?;
        let outcome = match verdict {
            UpdateVerdict::Success { .. } => Outcome::Accepted,
            _ => Outcome::Rejected,
        };
        if is_commit {
            self.metrics.count_commit(outcome);
        }
        ok_body(StatusCode::OK, &ClientUpdateResponse::from(&verdict))
    }

    /// protocol-06 §5.5 (MIMI.md §6.6 step 1) for the authenticated client's own
    /// `GroupInfoRequest`, for a room it is to join by external commit: answered here for a
    /// room we host, forwarded to the room's hub otherwise. The hub trusts us to ask only for
    /// our own clients (MIMI.md §7.1 step 2), so a request for another client is a 403 before
    /// it leaves. The hub's `notAuthorized` reason travels in `mimi-reason`.
    async fn group_info(&self, req: Request, client: ClientId, room: RoomId) -> Answer {
        let request = GroupInfoRequest::from_bytes(&req.body, &self.limits)?;
        if self.is_local(&room) {
            return self
                .group_info
                .answer(&room, &request, Requester::Client(&client))
                .await;
        }
        let requester =
            client_of_credential(request.tbs.requesting_credential.value()).map_err(|e| {
                Refusal::bad_request(format!("GroupInfoRequest.requestingCredential: {e}"))
            })?;
        if requester != client {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the request is for {requester}, but the bearer token authenticates {client}"
                ),
            ));
        }
        let answer = self
            .forwarder
            .forward(
                room.domain(),
                S2sEndpoint::GroupInfo,
                room.as_str(),
                req.body,
            )
            .await?;
        let reason = answer.headers.get(REASON_HEADER).cloned();
        let mut response = Forwarder::relay(answer);
        if let Some(reason) = reason {
            response.headers.insert(REASON_HEADER, reason);
        }
        Ok(response)
    }

    async fn submit(&self, req: Request, client: ClientId, room: RoomId) -> Answer {
        let body = SubmitMessageRequest::from_bytes(&req.body, &self.limits)?;
        require_own_user("sendingUri", &body.sending_user()?, &client)?;
        if !self.is_local(&room) {
            let answer = self
                .forwarder
                .forward(
                    room.domain(),
                    S2sEndpoint::SubmitMessage,
                    room.as_str(),
                    req.body,
                )
                .await?;
            if answer.status != StatusCode::OK {
                return Ok(Forwarder::relay(answer));
            }
            let response = SubmitMessageResponse::from_bytes(&answer.body, &self.limits)
                .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("hub answer: {e}")))?;
            let reason = match response.status {
                crate::wire::submit::SubmitStatus::NotAllowed => {
                    format!("refused by the hub {}", room.domain())
                }
                _ => String::new(),
            };
            return ok_body(
                StatusCode::OK,
                &ClientSubmitResponse {
                    response,
                    seq: 0,
                    reason,
                },
            );
        }
        let franking_tag = mimid_actors::franking::frank_aad_of(body.app_message.bytes());
        let verdict = self
            .hub
            .submit(
                room.clone(),
                command::Submitter::Client(client.clone()),
                client.user(),
                body.app_message.into_bytes(),
            )
            .await?;
        self.metrics.count_app_message(match verdict {
            SubmitVerdict::Accepted { .. } => Outcome::Accepted,
            _ => Outcome::Rejected,
        });
        let mut response = ClientSubmitResponse::from(&verdict);
        self.franking.learn_room(&self.hub, &room).await;
        response.response = submit_response(
            &self.franking,
            &room,
            &client.user(),
            franking_tag,
            &verdict,
        );
        ok_body(StatusCode::OK, &response)
    }

    async fn ack(&self, req: Request, client: ClientId) -> Answer {
        let body = AckRequest::from_bytes(&req.body, &self.limits)?;
        let acks = body
            .acks
            .iter()
            .map(|entry| Ok((entry.room_id()?, entry.seq)))
            .collect::<Result<Vec<_>, crate::wire::WireError>>()?;
        self.hub.ack(client, acks).await?;
        Ok(Response::full(StatusCode::NO_CONTENT, Bytes::new()))
    }

    fn stream(&self, client: ClientId) -> Answer {
        let (mut deliveries, feed) = self.hub.open_stream_with_feed(&client);
        // Rooms of shards this node does not hold come from nodes that do (the hub's relay;
        // ARCHITECTURE.md "Cluster", "Remote reads"): the same stream, deduplicated below.
        tokio::spawn(self.hub.clone().relay(feed));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let guard = self.metrics.push_stream_opened();
        let max_frame = self.max_frame;
        let mut heartbeat = tokio::time::interval(self.stream_heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let franking = self.franking.clone();
        let span = tracing::info_span!("push_stream", client = %client);
        tokio::spawn(
            async move {
                let _guard = guard;
                // The last seq delivered per room: the local room actors and the relay of a
                // shard this node stopped or started holding may both deliver an item; the
                // client gets each (room, seq) once, in order.
                let mut delivered: std::collections::HashMap<RoomId, u64> =
                    std::collections::HashMap::new();
                loop {
                    let delivery = tokio::select! {
                        delivery = deliveries.recv() => delivery,
                        _ = heartbeat.tick() => {
                            if tx.send(Bytes::from_static(&HEARTBEAT_FRAME)).await.is_err() {
                                break; // the client went away
                            }
                            continue;
                        }
                    };
                    let Some(delivery) = delivery else { break };
                    let last = delivered.entry(delivery.room.clone()).or_insert(0);
                    if delivery.item.seq <= *last {
                        continue;
                    }
                    *last = delivery.item.seq;
                    heartbeat.reset();
                    let frame = DeliveredItem::from_log(&delivery.room, &delivery.item)
                        .map(|mut item| {
                            // MIMI.md §5.3.1: the receiver keeps the Frank with the message.
                            // Signed once per message on this node, not per stream: the
                            // streams of its other recipients get the cached bytes.
                            if let DeliveredBody::Application { frank, .. } = &mut item.body {
                                *frank = match &delivery.frank {
                                    // Computed by the node holding the room (a relayed item).
                                    Some(bytes) => Frank::from_bytes(
                                        bytes,
                                        &Limits {
                                            max_body_len: bytes.len(),
                                        },
                                    )
                                    .ok(),
                                    None => franking.frank_of_item(&delivery.room, &delivery.item),
                                };
                            }
                            item
                        })
                        .map_err(|e| e.to_string())
                        .and_then(|item| encode_frame(&item, max_frame).map_err(|e| e.to_string()));
                    match frame {
                        Ok(frame) => {
                            if tx.send(Bytes::from(frame)).await.is_err() {
                                break; // the client went away
                            }
                        }
                        Err(reason) => {
                            // The item is in the log and stays there; end the stream rather
                            // than skip it silently (the client resumes from its cursor).
                            tracing::error!(room = %delivery.room, seq = delivery.item.seq, %reason, "cannot frame a delivered item");
                            break;
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::stream(StatusCode::OK, rx))
    }

    async fn route(&self, req: Request) -> (&'static str, Answer) {
        let path = req.uri.path().to_owned();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return (
                "unknown",
                Err(Refusal::new(StatusCode::NOT_FOUND, "no such endpoint")),
            );
        };
        let (name, param) = match rest.split_once('/') {
            Some((name, param)) => (name, Some(param)),
            None => (rest, None),
        };
        let endpoint: &'static str = match (name, param.is_some()) {
            ("register", false) => "client_register",
            ("keyPackages", false) => "client_key_packages",
            ("keyMaterial", false) => "client_key_material",
            ("rooms", false) => "client_create_room",
            ("update", true) => "client_update",
            ("submitMessage", true) => "client_submit_message",
            ("groupInfo", true) => "client_group_info",
            ("stream", false) => "client_stream",
            ("ack", false) => "client_ack",
            ("profile", false) if req.method == Method::GET => "client_get_profile",
            ("profile", false) => "client_profile",
            ("preferences", false) => "client_preferences",
            ("identifierQuery", true) => "client_identifier_query",
            ("requestConsent", false) => "client_request_consent",
            ("updateConsent", false) => "client_update_consent",
            ("consents", false) => "client_consents",
            ("frankingAgent", false) => "client_franking_agent",
            ("reportAbuse", true) => "client_report_abuse",
            _ => {
                return (
                    "unknown",
                    Err(Refusal::new(StatusCode::NOT_FOUND, "no such endpoint")),
                )
            }
        };
        let expected = if matches!(
            endpoint,
            "client_stream" | "client_get_profile" | "client_consents" | "client_franking_agent"
        ) {
            Method::GET
        } else {
            Method::POST
        };
        if req.method != expected {
            return (
                endpoint,
                Err(Refusal::method_not_allowed(endpoint, expected)),
            );
        }
        let answer = async {
            if endpoint == "client_register" {
                return self.register(req).await;
            }
            let client = self.authenticate(&req).await?;
            // MIMI.md §13: a local user the operator blocked is refused everything.
            refuse_blocked_user(&self.hub, &self.metrics, &client.user())?;
            self.rate_limits.check_user(&client.user())?;
            match endpoint {
                "client_key_packages" => self.publish(req, client).await,
                "client_key_material" => self.claim(req, client).await,
                "client_create_room" => self.create_room(req, client).await,
                "client_update" => {
                    let room = self.room(param.unwrap_or_default())?;
                    self.update(req, client, room).await
                }
                "client_submit_message" => {
                    let room = self.room(param.unwrap_or_default())?;
                    self.submit(req, client, room).await
                }
                "client_group_info" => {
                    let room = self.room(param.unwrap_or_default())?;
                    self.group_info(req, client, room).await
                }
                "client_stream" => self.stream(client),
                "client_get_profile" => self.get_profile(client).await,
                "client_profile" => self.set_profile(req, client).await,
                "client_preferences" => self.set_preferences(req, client).await,
                "client_identifier_query" => {
                    self.identifier_query(req, client, param.unwrap_or_default())
                        .await
                }
                "client_request_consent" => self.request_consent(req, client).await,
                "client_update_consent" => self.update_consent(req, client).await,
                "client_consents" => self.consents(client).await,
                "client_franking_agent" => self.franking_agent(),
                "client_report_abuse" => {
                    let room = self.room(param.unwrap_or_default())?;
                    self.report_abuse(req, client, room).await
                }
                _ => self.ack(req, client).await,
            }
        }
        .await;
        (endpoint, answer)
    }
}

impl Handler for ClientApi {
    fn handle(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            // A client may send its own W3C traceparent; the request then joins its trace.
            let span = tracing::info_span!(
                "client_api",
                otel.kind = "server",
                method = %req.method,
                path = %req.uri.path(),
                room = tracing::field::Empty,
            );
            serve(span, req, &self.metrics, |req| self.route(req)).await
        })
    }
}

/// Answers `req` with `route` inside `span`, which continues the caller's W3C trace when it
/// sent one; a refusal becomes its status and reason; the endpoint, status and duration are
/// recorded. Shared by the client API and the server-to-server API.
pub(crate) async fn serve<F>(
    span: tracing::Span,
    req: Request,
    metrics: &Metrics,
    route: impl FnOnce(Request) -> F,
) -> Response
where
    F: std::future::Future<Output = (&'static str, Answer)>,
{
    let started = Instant::now();
    crate::telemetry::set_remote_parent(&span, &req.headers);
    let (endpoint, answer) = route(req).instrument(span).await;
    let response = answer.unwrap_or_else(|refusal| refusal.into_response(metrics));
    metrics.observe_request(endpoint, response.status, started.elapsed());
    response
}

/// MIMI.md §6.6: for an external commit (the new client joins itself), SHA-256 of its bytes,
/// which the follower's mirror records the join by; `None` for any other handshake. The commit
/// must join the client that sends it: a follower records the join for the authenticated
/// client, so it must not forward another client's join.
fn external_join_of(
    request: &UpdateRequest,
    client: &ClientId,
) -> Result<Option<[u8; 32]>, Refusal> {
    let WireBundle::Commit { commit, .. } = &request.bundle else {
        return Ok(None);
    };
    match external_commit_joiner(commit)? {
        None => Ok(None),
        Some(joiner) if joiner == *client => Ok(Some(Sha256::digest(commit.bytes()).into())),
        Some(joiner) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("the external commit joins {joiner}, not the authenticated client {client}"),
        )),
    }
}

/// [IMPL CHOICE] MIMI.md §3.2: a room path parameter is accepted as a percent-encoded full URI
/// (`mimi%3A%2F%2Fa.example%2Fr%2Fclubhouse`), `host/r/name`, or `host/name`.
pub fn parse_room_path(encoded: &str) -> Result<RoomId, String> {
    let decoded = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| "room path parameter is not UTF-8 after percent-decoding".to_string())?;
    parse_room_param(&decoded)
}

/// [`parse_room_path`] of a parameter that was percent-decoded already (the server-to-server
/// API's [`crate::federation::PeerRequest::param`]). Decoding it again would turn the escapes a
/// room URI may hold (`mimi://a.example/r/caf%C3%A9`) into another room or no room at all.
pub fn parse_room_param(decoded: &str) -> Result<RoomId, String> {
    let text = if decoded.starts_with("mimi://") {
        decoded.to_owned()
    } else {
        match decoded.split('/').collect::<Vec<_>>().as_slice() {
            [host, "r", name] | [host, name] => format!("mimi://{host}/r/{name}"),
            _ => return Err(format!("room path parameter {decoded:?} is not a room")),
        }
    };
    RoomId::parse(&text).map_err(|e| format!("room path parameter: {e}"))
}

/// The path of a room-scoped client endpoint (RFC 6570 simple expansion of the room URI).
pub fn room_path(endpoint: &str, room: &RoomId) -> String {
    let encoded =
        percent_encoding::utf8_percent_encode(room.as_str(), percent_encoding::NON_ALPHANUMERIC);
    format!("{PREFIX}{endpoint}/{encoded}")
}

/// protocol-06 §5.1 `KeyMaterialResponse` for a claim's outcome.
pub(crate) fn key_material_response(
    target: &UserId,
    outcome: ClaimOutcome,
) -> Result<KeyMaterialResponse, Refusal> {
    let user_status = match outcome.user_code() {
        mimid_actors::directory::KeyMaterialUserCode::Success => KeyMaterialUserCode::Success,
        mimid_actors::directory::KeyMaterialUserCode::PartialSuccess => {
            KeyMaterialUserCode::PartialSuccess
        }
        mimid_actors::directory::KeyMaterialUserCode::NoCompatibleMaterial => {
            KeyMaterialUserCode::NoCompatibleMaterial
        }
        mimid_actors::directory::KeyMaterialUserCode::UserUnknown => {
            KeyMaterialUserCode::UserUnknown
        }
        mimid_actors::directory::KeyMaterialUserCode::NoConsent => KeyMaterialUserCode::NoConsent,
        mimid_actors::directory::KeyMaterialUserCode::NoConsentForThisRoom => {
            KeyMaterialUserCode::NoConsentForThisRoom
        }
    };
    // protocol-06 §5.1: for any code but success, partialSuccess and noCompatibleMaterial the
    // clients list is empty.
    let clients = match outcome {
        ClaimOutcome::UserUnknown | ClaimOutcome::Refused(_) => Vec::new(),
        ClaimOutcome::Claimed(claims) => claims
            .into_iter()
            .map(|claim| {
                let material = match claim.result {
                    ClientClaimResult::KeyPackage(bytes) => ClientMaterial::Success {
                        key_package: Mls::from_bytes(&bytes)?,
                    },
                    ClientClaimResult::Exhausted => ClientMaterial::KeyMaterialExhausted,
                };
                Ok(ClientKeyMaterial {
                    client_uri: IdentifierUri::new(claim.client.as_bytes()),
                    material,
                })
            })
            .collect::<Result<Vec<_>, crate::wire::WireError>>()?,
    };
    debug_assert!(clients
        .iter()
        .all(|c| c.client_status() != KeyMaterialClientCode::NothingCompatible));
    Ok(KeyMaterialResponse {
        protocol: Protocol::Mls10,
        user_status,
        user_uri: IdentifierUri::new(target.as_bytes()),
        clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_tampering() {
        let client = ClientId::parse("mimi://localhost/d/alice/phone").unwrap();
        let token = Token::generate(client.clone());
        let parsed = Token::parse(&token.encode()).unwrap();
        assert_eq!(parsed.client, client);
        assert_eq!(parsed.hash(), token.hash());
        assert!(Token::parse("not base64 !").is_none());
        assert!(Token::parse(&URL_SAFE_NO_PAD.encode(b"short")).is_none());
        let mut raw = URL_SAFE_NO_PAD.decode(token.encode()).unwrap();
        let split = raw.len() - SECRET_LEN - 1;
        raw[split] = b'x';
        assert!(Token::parse(&URL_SAFE_NO_PAD.encode(raw)).is_none());
    }

    #[test]
    fn room_path_forms_of_mimi_md_3_2_are_accepted() {
        let expected = RoomId::parse("mimi://a.example/r/clubhouse").unwrap();
        for form in [
            "mimi%3A%2F%2Fa.example%2Fr%2Fclubhouse",
            "a.example/r/clubhouse",
            "a.example/clubhouse",
        ] {
            assert_eq!(parse_room_path(form).unwrap(), expected, "{form}");
        }
        assert!(parse_room_path("%FF").is_err());
        // A room URI may hold escapes: decoded once, they stay in the room's name.
        let escaped = RoomId::parse("mimi://a.example/r/50%25off").unwrap();
        assert_eq!(
            parse_room_path(room_path("update", &escaped).rsplit('/').next().unwrap()).unwrap(),
            escaped
        );
        assert_eq!(parse_room_param(escaped.as_str()).unwrap(), escaped);
        assert!(parse_room_path("a.example/u/alice/x").is_err());
        assert_eq!(
            parse_room_path(room_path("update", &expected).rsplit('/').next().unwrap()).unwrap(),
            expected
        );
    }
}
