//! What MIMI's server-to-server endpoints mean (protocol-06 §5), on top of the federation
//! transport ([`crate::federation`]): the hub side (`update`, `submitMessage`, `keyMaterial`
//! and `groupInfo` for the rooms we host, proxying key material for followers), the follower
//! side (`notify`
//! receiver), the hub's outgoing `notify` ([`NotifySender`], the room actors' [`Federation`])
//! and the forwarding of local clients' requests for rooms hosted elsewhere
//! ([`Forwarder`]).
//!
//! Discovery and consent (`identifierQuery`, `requestConsent`, `updateConsent`, MIMI.md §5.6,
//! §5.7) are in [`discovery`]; `keyMaterial` claims decide the target's reachability and
//! consent in the same apply as the claim (`Hub::claim_key_packages_in_room`).
//!
//! Abuse (MIMI.md §5.3.1, §5.8, §13; [`abuse`]): the hub franks accepted messages of franked
//! rooms in its submitMessage answer and in every notify ([`crate::franking`]), a follower
//! keeps the Franks a notify brings for its clients, `reportAbuse` is served with frank
//! validation, and the operator's blocklist is enforced here: a blocked provider is refused
//! on every endpoint right after authentication (403 `provider blocked: <domain>`), and a
//! request acting as, or for, a blocked user with 403 `user blocked: <uri>` (in rooms hosted
//! here the room's apply refuses a blocked sender too).
//!
//! Every decision is the hub's apply (DESIGN.md §2); this layer decodes, checks who may speak
//! for whom (MIMI.md §7.1 step 2) and maps results to statuses.
//!
//! [IMPL CHOICE] `mimi-hub-seqs`: a mimid hub names, in this header of every notify, the room
//! log position of each FanoutMessage in the body (comma-separated, increasing). A follower
//! then deduplicates item by item (MIMI.md §5.4 anticipates a transaction id replacing
//! byte-exact deduplication); without the header it falls back to byte-identical bodies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use mimid_actors::actor::{Federation, NotifyError};
use mimid_actors::command::{self, ReceivedItem, Submitter};
use mimid_actors::franking::{frank_aad_of, ReceivedFrank};
use mimid_actors::hub::Hub;
use mimid_actors::ids::{RoomId, UserId};
use mimid_actors::room::log::{ItemBody, LogItem};
use mimid_actors::shard::welcomes_a_local_client;
use openmls::prelude::MlsMessageBodyIn;
use sha2::{Digest, Sha256};

use crate::api::{key_material_response, ok_body, parse_room_param, Answer, Refusal};
use crate::federation::peers::{PeerResponse, Peers};
use crate::federation::{FederationService, PeerRequest, S2sEndpoint};
use crate::franking::{message_sha256, Franking};
use crate::group_info::{GroupInfoService, Requester};
use crate::h3::Response;
use crate::metrics::{BlockedKind, Metrics, Outcome};
use crate::rate_limit::RateLimits;
use crate::wire::fanout::{decode_fanout_batch, encode_fanout_batch, FanoutBody, FanoutMessage};
use crate::wire::group_info::GroupInfoRequest;
use crate::wire::key_material::KeyMaterialRequest;
use crate::wire::submit::{SubmitMessageRequest, SubmitMessageResponse, SubmitStatus};
use crate::wire::update::{RatchetTreeOption, UpdateRequest, UpdateRoomResponse};
use crate::wire::{Decode, Encode, Limits, Mls, MlsMessage, WireError};

mod abuse;
mod discovery;

pub(crate) use abuse::record_report;
pub(crate) use discovery::{
    answer_identifier_query, count_consent_limit, created, granted_key_packages,
};

/// The header naming the hub log position of every FanoutMessage of a notify.
pub const HUB_SEQS_HEADER: &str = "mimi-hub-seqs";

fn forbidden(reason: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::FORBIDDEN, reason)
}

fn not_found(reason: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, reason)
}

/// 403 for a request acting as, or for, `user` if the operator blocked it (or its provider),
/// counted in `mimid_blocked_requests_total{kind="user"}` (MIMI.md §13).
pub(crate) fn refuse_blocked_user(
    hub: &Hub,
    metrics: &Metrics,
    user: &UserId,
) -> Result<(), Refusal> {
    match hub.user_refusal(user) {
        None => Ok(()),
        Some(reason) => {
            metrics.count_blocked(BlockedKind::User);
            tracing::debug!(%user, %reason, "request of a blocked user refused");
            Err(forbidden(reason))
        }
    }
}

/// An accepted submission's answer with its Frank, when the room and the message are franked
/// (MIMI.md §5.3: "if frank_aad is present and a franking_agent exists").
pub(crate) fn submit_response(
    franking: &Franking,
    room: &RoomId,
    sender: &UserId,
    franking_tag: Option<[u8; 32]>,
    verdict: &command::SubmitVerdict,
) -> SubmitMessageResponse {
    let mut response = SubmitMessageResponse::from(verdict);
    if let (
        command::SubmitVerdict::Accepted { accepted_ts_ms, .. },
        SubmitStatus::Accepted { frank, .. },
    ) = (verdict, &mut response.status)
    {
        *frank = franking.frank_submitted(room, sender, franking_tag, *accepted_ts_ms);
    }
    response
}

/// A peer that gave no usable answer: 502 to our caller, who may retry.
fn bad_gateway(error: impl std::fmt::Display) -> Refusal {
    Refusal::new(StatusCode::BAD_GATEWAY, error.to_string())
}

/// Relays a peer's answer as ours (status, body and content type).
fn relay(response: PeerResponse) -> Response {
    let mut relayed = Response::full(response.status, response.body);
    if let Some(value) = response.headers.get(http::header::CONTENT_TYPE) {
        relayed
            .headers
            .insert(http::header::CONTENT_TYPE, value.clone());
    }
    if let Some(value) = response.headers.get(http::header::RETRY_AFTER) {
        relayed
            .headers
            .insert(http::header::RETRY_AFTER, value.clone());
    }
    relayed
}

/// The server-to-server endpoints of one provider.
pub struct MimiService {
    hub: Arc<Hub>,
    domain: String,
    peers: Arc<Peers>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The hub's answer to groupInfo (MIMI.md §5.5).
    group_info: Arc<GroupInfoService>,
    /// KeyPackage claim limits (`limits.rate.key_material_claims_*`), shared with the client
    /// API.
    rate_limits: Arc<RateLimits>,
    /// The franking keys, for submitMessage answers and abuse reports (MIMI.md §5.3.1, §5.8).
    franking: Arc<Franking>,
}

impl MimiService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Arc<Hub>,
        domain: String,
        peers: Arc<Peers>,
        limits: Limits,
        metrics: Arc<Metrics>,
        group_info: Arc<GroupInfoService>,
        rate_limits: Arc<RateLimits>,
        franking: Arc<Franking>,
    ) -> Self {
        MimiService {
            hub,
            domain,
            peers,
            limits,
            metrics,
            group_info,
            rate_limits,
            franking,
        }
    }

    /// 403 if the operator blocked `user` (see [`refuse_blocked_user`]).
    fn refuse_blocked(&self, user: &UserId) -> Result<(), Refusal> {
        refuse_blocked_user(&self.hub, &self.metrics, user)
    }

    /// MIMI.md §7.1 step 1: a room-scoped request for a room we host.
    async fn hosted_room(&self, param: &str) -> Result<RoomId, Refusal> {
        let room = parse_room_param(param).map_err(Refusal::bad_request)?;
        if room.domain() != self.domain || !self.hub.hosts(&room).await? {
            return Err(not_found(format!(
                "room {room} is not hosted by {}",
                self.domain
            )));
        }
        Ok(room)
    }

    /// protocol-06 §5.2 from a follower: the MLS senders must be its clients (checked in apply).
    async fn update(&self, req: PeerRequest) -> Answer {
        let room = self.hosted_room(&req.param).await?;
        let body = UpdateRequest::from_bytes(&req.body, &self.limits)?;
        let bundle = command::HandshakeBundle::try_from(body)?;
        let is_commit = matches!(bundle, command::HandshakeBundle::Commit { .. });
        let verdict = self
            .hub
            .update(room, Submitter::Provider(req.from), bundle)
            .await?;
        if is_commit {
            self.metrics.count_commit(match verdict {
                command::UpdateVerdict::Success { .. } => Outcome::Accepted,
                _ => Outcome::Rejected,
            });
        }
        ok_body(StatusCode::OK, &UpdateRoomResponse::from(&verdict))
    }

    /// protocol-06 §5.3 from a follower: `sendingUri` must be one of its users.
    async fn submit(&self, req: PeerRequest) -> Answer {
        let room = self.hosted_room(&req.param).await?;
        let body = SubmitMessageRequest::from_bytes(&req.body, &self.limits)?;
        let sending = body.sending_user()?;
        if sending.domain() != req.from {
            return Err(forbidden(format!(
                "provider {} cannot send as {sending}",
                req.from
            )));
        }
        self.refuse_blocked(&sending)?;
        let franking_tag = frank_aad_of(body.app_message.bytes());
        let verdict = self
            .hub
            .submit(
                room.clone(),
                Submitter::Provider(req.from),
                sending.clone(),
                body.app_message.into_bytes(),
            )
            .await?;
        self.metrics.count_app_message(match verdict {
            command::SubmitVerdict::Accepted { .. } => Outcome::Accepted,
            _ => Outcome::Rejected,
        });
        self.franking.learn_room(&self.hub, &room).await;
        let response = submit_response(&self.franking, &room, &sending, franking_tag, &verdict);
        ok_body(StatusCode::OK, &response)
    }

    /// protocol-06 §5.1: KeyPackages of our users for a requester the calling provider
    /// authenticated (directly, or through the room's hub proxying for it); or, as the hub of
    /// the room, proxying a follower's request to the target's provider (MIMI.md §6.3).
    async fn key_material(&self, req: PeerRequest) -> Answer {
        let request = KeyMaterialRequest::from_bytes(&req.body, &self.limits)?;
        let requester = request
            .verify()
            .map_err(|e| Refusal::bad_request(format!("KeyMaterialRequest: {e}")))?;
        let target = request.target_user()?;
        let room = request.room()?;
        let param_target = UserId::parse(&req.param)
            .map_err(|e| Refusal::bad_request(format!("targetUser path parameter: {e}")))?;
        if param_target != target {
            return Err(Refusal::bad_request(format!(
                "the path names {param_target} but the request targets {target}"
            )));
        }
        // MIMI.md §13: a blocked user neither claims nor is claimed.
        self.refuse_blocked(&requester.user())?;
        self.refuse_blocked(&target)?;
        if target.domain() == self.domain {
            // The requester's own provider, or the hub of the room it fetches for.
            if requester.domain() != req.from && room.domain() != req.from {
                return Err(forbidden(format!(
                    "provider {} speaks neither for {} nor as the hub of {room}",
                    req.from,
                    requester.user()
                )));
            }
            self.rate_limits.check_claim(&requester.user(), &target)?;
            let outcome = self
                .hub
                .claim_key_packages_in_room(requester.user(), target.clone(), room)
                .await?;
            return ok_body(StatusCode::OK, &key_material_response(&target, outcome)?);
        }
        if requester.domain() != req.from {
            return Err(forbidden(format!(
                "provider {} cannot fetch key material as {}",
                req.from,
                requester.user()
            )));
        }
        if room.domain() != self.domain || !self.hub.hosts(&room).await? {
            return Err(not_found(format!(
                "{target} is not served by {} and {room} is not hosted here",
                self.domain
            )));
        }
        let answer = self
            .peers
            .request(
                target.domain(),
                S2sEndpoint::KeyMaterial,
                target.as_str(),
                HeaderMap::new(),
                req.body,
            )
            .await
            .map_err(bad_gateway)?;
        Ok(relay(answer))
    }

    /// protocol-06 §5.5 from a follower, for a new client of one of its users that is to join
    /// by external commit (MIMI.md §6.6 steps 1-2). A room of another domain is a 404; a room
    /// of ours that does not exist gets `notAuthorized`, like a requester who may not join
    /// ([`GroupInfoService`]).
    async fn group_info(&self, req: PeerRequest) -> Answer {
        let room = parse_room_param(&req.param).map_err(Refusal::bad_request)?;
        if room.domain() != self.domain {
            return Err(not_found(format!(
                "room {room} is not hosted by {}",
                self.domain
            )));
        }
        let request = GroupInfoRequest::from_bytes(&req.body, &self.limits)?;
        if let Ok(requester) = mimid_actors::room::identity::client_of_credential(
            request.tbs.requesting_credential.value(),
        ) {
            self.refuse_blocked(&requester.user())?;
        }
        self.group_info
            .answer(&room, &request, Requester::Provider(&req.from))
            .await
    }

    /// protocol-06 §5.4, follower side: only the room's hub may notify; what it sends is
    /// recorded durably before the 201.
    async fn notify(&self, req: PeerRequest) -> Answer {
        let room = parse_room_param(&req.param).map_err(Refusal::bad_request)?;
        if room.domain() != req.from {
            return Err(forbidden(format!(
                "provider {} is not the hub of {room}",
                req.from
            )));
        }
        if room.domain() == self.domain {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!("room {room} is hosted here"),
            ));
        }
        let (items, franks) =
            received_items(&self.hub, &req.headers, &req.body, &self.limits).await?;
        // The last hub seq the mirror appended, if we mirror the room (read from the local
        // replica, which holds only applied entries: it may lag, never lead).
        let mirrored_up_to = self.hub.mirror_seq(&room).await?;
        let Some(mirrored_up_to) = mirrored_up_to else {
            if !welcomes_a_local_client(&items) {
                // Decided again in apply; answered here with the specific status.
                return Err(not_found(format!(
                    "no client of {} is in {room}",
                    self.domain
                )));
            }
            return self.record_notify(room, items, franks, &req.body).await;
        };
        // MIMI.md §5.4: a resend of items the mirror has (a lost 201, a restarted hub) is
        // acknowledged as it is, without a Raft write: apply would append nothing and only
        // remember the body.
        if !items.is_empty()
            && items
                .iter()
                .all(|item| item.hub_seq.is_some_and(|seq| seq <= mirrored_up_to))
        {
            tracing::debug!(%room, "notify of items received before");
            return Ok(Response::full(StatusCode::CREATED, Bytes::new()));
        }
        self.record_notify(room, items, franks, &req.body).await
    }

    /// Appends a notify's items to the room's mirror (durably, before the 201).
    async fn record_notify(
        &self,
        room: RoomId,
        items: Vec<ReceivedItem>,
        franks: Vec<ReceivedFrank>,
        body: &[u8],
    ) -> Answer {
        let body_hash: [u8; 32] = Sha256::digest(body).into();
        let appended = if franks.is_empty() {
            self.hub
                .receive_fanout(room.clone(), items, body_hash)
                .await?
        } else {
            self.hub
                .receive_fanout_franked(room.clone(), items, body_hash, franks)
                .await?
        };
        tracing::debug!(%room, appended, "notify received");
        Ok(Response::full(StatusCode::CREATED, Bytes::new()))
    }
}

impl FederationService for MimiService {
    fn handle(&self, req: PeerRequest) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            // MIMI.md §13: the operator's block of a provider covers every endpoint; the
            // transport authenticated `from` just before.
            if let Some(reason) = self.hub.provider_refusal(&req.from) {
                self.metrics.count_blocked(BlockedKind::Provider);
                tracing::debug!(peer = %req.from, endpoint = %req.endpoint, "blocked provider refused");
                return forbidden(reason).into_response(&self.metrics);
            }
            let answer = match req.endpoint {
                S2sEndpoint::Update => self.update(req).await,
                S2sEndpoint::SubmitMessage => self.submit(req).await,
                S2sEndpoint::KeyMaterial => self.key_material(req).await,
                S2sEndpoint::Notify => self.notify(req).await,
                S2sEndpoint::GroupInfo => self.group_info(req).await,
                S2sEndpoint::IdentifierQuery => self.identifier_query(req).await,
                S2sEndpoint::RequestConsent => self.request_consent(req).await,
                S2sEndpoint::UpdateConsent => self.update_consent(req).await,
                S2sEndpoint::ReportAbuse => self.report_abuse(req).await,
                other => Err(Refusal::new(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("{other} is not implemented by this provider yet"),
                )),
            };
            match answer {
                Ok(response) => response,
                Err(refusal) => refusal.into_response(&self.metrics),
            }
        })
    }
}

/// Decodes a notify body into what the follower stores (MIMI.md §5.4), with the Franks of its
/// application messages. Welcomes are routed to the local clients whose claimed KeyPackages
/// they name; `mimi-hub-seqs`, when present, must name one increasing position per message.
async fn received_items(
    hub: &Hub,
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
) -> Result<(Vec<ReceivedItem>, Vec<ReceivedFrank>), Refusal> {
    let messages = decode_fanout_batch(body, limits)?;
    let seqs = match headers.get(HUB_SEQS_HEADER) {
        None => None,
        Some(value) => Some(parse_hub_seqs(value, messages.len()).map_err(Refusal::bad_request)?),
    };
    let mut items = Vec::with_capacity(messages.len());
    let mut franks = Vec::new();
    let mut epoch_after_commit = None;
    for (index, message) in messages.into_iter().enumerate() {
        let hub_seq = seqs.as_ref().map(|seqs| seqs[index]);
        let (epoch, body) = match message.body {
            FanoutBody::Application { message, frank } => {
                if let Some(frank) = frank {
                    franks.push(ReceivedFrank {
                        message_sha256: message_sha256(message.bytes()),
                        frank: frank.to_bytes()?,
                    });
                }
                (
                    message.epoch().unwrap_or(0),
                    ItemBody::Application {
                        message: message.into_bytes(),
                    },
                )
            }
            FanoutBody::Proposal {
                proposal,
                more_proposals,
            } => (
                proposal.epoch().unwrap_or(0),
                ItemBody::Proposals {
                    messages: std::iter::once(proposal)
                        .chain(more_proposals)
                        .map(MlsMessage::into_bytes)
                        .collect(),
                },
            ),
            FanoutBody::Commit {
                commit,
                external_proposals,
            } => {
                if !external_proposals.is_empty() {
                    // Only hubs that re-issue their own proposals after external commits send
                    // these (MIMI.md §6.7); members learn them again from the next fan-out.
                    tracing::warn!(
                        count = external_proposals.len(),
                        "externalProposals on a commit are not delivered yet"
                    );
                }
                let epoch = commit.epoch().unwrap_or(0);
                epoch_after_commit = Some(epoch + 1);
                (
                    epoch,
                    ItemBody::Commit {
                        message: commit.into_bytes(),
                    },
                )
            }
            FanoutBody::Welcome {
                welcome,
                ratchet_tree_option,
            } => {
                let RatchetTreeOption::Full(tree) = ratchet_tree_option else {
                    return Err(Refusal::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "only a full RatchetTreeOption can be delivered with a Welcome",
                    ));
                };
                let to = hub.welcome_recipients(&welcome_refs(&welcome)?).await?;
                (
                    epoch_after_commit.unwrap_or(0),
                    ItemBody::Welcome {
                        welcome: welcome.into_bytes(),
                        ratchet_tree: tree.bytes().to_vec(),
                        to,
                    },
                )
            }
        };
        items.push(ReceivedItem {
            hub_seq,
            ts_ms: message.timestamp,
            epoch,
            body,
        });
    }
    Ok((items, franks))
}

/// The KeyPackageRefs a Welcome is encrypted to (`secrets[].new_member`).
fn welcome_refs(welcome: &MlsMessage) -> Result<Vec<Vec<u8>>, Refusal> {
    match welcome.to_openmls()?.extract() {
        MlsMessageBodyIn::Welcome(welcome) => Ok(welcome
            .secrets()
            .iter()
            .map(|secret| secret.new_member().as_slice().to_vec())
            .collect()),
        _ => Err(Refusal::bad_request(
            "FanoutMessage.message: expected a Welcome",
        )),
    }
}

fn parse_hub_seqs(value: &HeaderValue, count: usize) -> Result<Vec<u64>, String> {
    let text = value
        .to_str()
        .map_err(|_| format!("{HUB_SEQS_HEADER} is not ASCII"))?;
    let seqs = text
        .split(',')
        .map(|part| part.trim().parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| format!("{HUB_SEQS_HEADER} is not a list of numbers"))?;
    if seqs.len() != count {
        return Err(format!(
            "{HUB_SEQS_HEADER} names {} positions for {count} messages",
            seqs.len()
        ));
    }
    if seqs.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(format!("{HUB_SEQS_HEADER} is not increasing"));
    }
    Ok(seqs)
}

/// A log item of `room` as the FanoutMessage that carries it (MIMI.md §5.4), an application
/// message with its Frank when the room is franked (§5.3.1: the fan-out carries the Frank,
/// never the sender).
fn fanout_message(
    franking: &Franking,
    room: &RoomId,
    item: &LogItem,
) -> Result<FanoutMessage, WireError> {
    let body = match &item.body {
        ItemBody::Application { message } => FanoutBody::Application {
            message: MlsMessage::from_bytes(message)?,
            frank: franking.frank_of_item(room, item),
        },
        ItemBody::Proposals { messages } => {
            let mut messages = messages
                .iter()
                .map(|m| MlsMessage::from_bytes(m))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter();
            let proposal = messages.next().ok_or(WireError::Truncated {
                field: "FanoutMessage.message",
            })?;
            FanoutBody::Proposal {
                proposal,
                more_proposals: messages.collect(),
            }
        }
        ItemBody::Commit { message } => FanoutBody::Commit {
            commit: MlsMessage::from_bytes(message)?,
            external_proposals: Vec::new(),
        },
        ItemBody::Welcome {
            welcome,
            ratchet_tree,
            ..
        } => FanoutBody::Welcome {
            welcome: MlsMessage::from_bytes(welcome)?,
            ratchet_tree_option: RatchetTreeOption::Full(Mls::from_bytes(ratchet_tree)?),
        },
    };
    Ok(FanoutMessage {
        timestamp: item.ts_ms,
        body,
    })
}

/// The hub's notify: one POST per batch, with the items' log positions in `mimi-hub-seqs`
/// and the Franks of franked messages.
pub struct NotifySender {
    peers: Arc<Peers>,
    franking: Arc<Franking>,
}

impl NotifySender {
    pub fn new(peers: Arc<Peers>, franking: Arc<Franking>) -> Self {
        NotifySender { peers, franking }
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Federation for NotifySender {
    fn notify(
        &self,
        room: &RoomId,
        provider: &str,
        items: Vec<LogItem>,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send>> {
        let peers = self.peers.clone();
        let franking = self.franking.clone();
        let room = room.clone();
        let provider = provider.to_owned();
        Box::pin(async move {
            let failed = |reason: String| NotifyError {
                reason,
                retry_after: None,
            };
            let messages = items
                .iter()
                .map(|item| fanout_message(&franking, &room, item))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| failed(format!("encoding the fan-out: {e}")))?;
            let body = encode_fanout_batch(&messages)
                .map_err(|e| failed(format!("encoding the fan-out: {e}")))?;
            let seqs = items
                .iter()
                .map(|item| item.seq.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let mut headers = HeaderMap::new();
            headers.insert(
                HUB_SEQS_HEADER,
                HeaderValue::from_str(&seqs).map_err(|e| failed(e.to_string()))?,
            );
            let response = peers
                .request(
                    &provider,
                    S2sEndpoint::Notify,
                    room.as_str(),
                    headers,
                    Bytes::from(body),
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
            if response.status == StatusCode::CREATED {
                return Ok(());
            }
            Err(NotifyError {
                reason: format!(
                    "{} answered {}: {}",
                    provider,
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ),
                retry_after: retry_after(&response.headers),
            })
        })
    }
}

/// Forwards local clients' requests for rooms hosted elsewhere, and for users of other
/// providers, to the provider that decides (MIMI.md §15 "Follower").
pub(crate) struct Forwarder {
    peers: Arc<Peers>,
    domain: String,
}

impl Forwarder {
    pub fn new(peers: Arc<Peers>, domain: String) -> Self {
        Forwarder { peers, domain }
    }

    /// Sends `body` to `endpoint` of `domain` for `param`; a peer that gives no answer is a 502.
    pub async fn forward(
        &self,
        domain: &str,
        endpoint: S2sEndpoint,
        param: &str,
        body: Bytes,
    ) -> Result<PeerResponse, Refusal> {
        debug_assert_ne!(
            domain, self.domain,
            "requests for ourselves are not forwarded"
        );
        self.peers
            .request(domain, endpoint, param, HeaderMap::new(), body)
            .await
            .map_err(bad_gateway)
    }

    /// Relays a peer's answer as is.
    pub fn relay(response: PeerResponse) -> Response {
        relay(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_seqs_must_name_one_increasing_position_per_message() {
        let value = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_hub_seqs(&value("3,4, 9"), 3).unwrap(), vec![3, 4, 9]);
        assert!(parse_hub_seqs(&value("3,4"), 3)
            .unwrap_err()
            .contains("2 positions"));
        assert!(parse_hub_seqs(&value("4,3"), 2)
            .unwrap_err()
            .contains("increasing"));
        assert!(parse_hub_seqs(&value("4,4"), 2)
            .unwrap_err()
            .contains("increasing"));
        assert!(parse_hub_seqs(&value("a"), 1)
            .unwrap_err()
            .contains("numbers"));
    }

    #[test]
    fn retry_after_seconds_are_honoured() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
