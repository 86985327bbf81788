//! The hub's answer to `groupInfo` (protocol-06 §5.5, MIMI.md §5.5, §6.6 steps 1-2): the
//! GroupInfo, ratchet tree and pending proposals of a room hosted here, encrypted to the
//! requester's `groupInfoPublicKey` and signed with the hub key ([`HubKey`]), for a client
//! that is to join by external commit.
//!
//! Both edges use it: the server-to-server endpoint (a follower forwarding its client's
//! request, [`crate::peering::MimiService`]) and the client API for rooms hosted here
//! ([`crate::api::ClientApi`]). The edge says who asks ([`Requester`]); this module checks the
//! request (signature, credential) and asks the room whether the credential's client may join
//! (`RoomState::check_external_join`, the same question the apply of the external commit
//! asks).
//!
//! The answer is read from the local replica of the room's shard without a Raft write: it
//! changes nothing, and a GroupInfo one commit old only makes the join fail with `wrongEpoch`,
//! after which the joiner asks again.
//!
//! [IMPL CHOICE] MIMI.md §5.5 allows `notAuthorized` in place of `noSuchRoom`: an unknown room
//! and a requester who may not join get the same answer, so that a room's existence is not
//! revealed. A request whose signature does not verify gets `notAuthorized` too. The HTTP status
//! of these answers is 200 (the code is in the body); [`REASON_HEADER`] says why, without
//! telling an unknown room from an unauthorised requester.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use mimid_actors::hub::remote::GroupInfoParts;
use mimid_actors::hub::Hub;
use mimid_actors::ids::{ClientId, RoomId};
use mimid_actors::room::state::ROOM_CIPHERSUITE;
use openmls::messages::group_info::VerifiableGroupInfo;

use crate::api::{ok_body, Answer, Refusal};
use crate::h3::Response;
use crate::hub_key::HubKey;
use crate::wire::group_info::{
    encrypt_with_label, GroupInfoRatchetTreeTbe, GroupInfoRequest, GroupInfoResponse,
    PendingProposal, GROUP_INFO_ENCRYPTION_LABEL,
};
use crate::wire::update::RatchetTreeOption;
use crate::wire::{Encode, Mls, MlsMessage};

/// The response header that says why a groupInfo request got `notAuthorized`.
pub const REASON_HEADER: &str = "mimi-reason";

/// What a requester who may not have the GroupInfo, or asks about an unknown room, is told.
const NOT_AUTHORIZED: &str =
    "not authorized to join this room (no such room, or the requesting client's user is not an \
     active participant whose role holds canAddOwnClient)";

/// Who asks, as the edge authenticated it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Requester<'a> {
    /// A peer provider (mutual TLS): the requesting client must be one of its clients
    /// (MIMI.md §7.1 step 2).
    Provider(&'a str),
    /// A local client (bearer token): the request must be its own.
    Client(&'a ClientId),
}

/// Answers groupInfo requests for the rooms hosted here.
pub struct GroupInfoService {
    hub: Arc<Hub>,
    key: Arc<HubKey>,
}

impl GroupInfoService {
    pub fn new(hub: Arc<Hub>, key: Arc<HubKey>) -> Self {
        GroupInfoService { hub, key }
    }

    /// protocol-06 §5.5 for `room`, which the caller checked is in this provider's domain.
    /// Malformed input is a 400, a client that is not the requester's a 403; everything else
    /// is a `GroupInfoResponse`.
    pub(crate) async fn answer(
        &self,
        room: &RoomId,
        request: &GroupInfoRequest,
        requester: Requester<'_>,
    ) -> Answer {
        let joiner = match request.verify() {
            Ok(client) => client,
            Err(e) if e.is_forgery() => {
                return not_authorized(room, &format!("{}: {e}", e.code()));
            }
            Err(e) => return Err(Refusal::bad_request(format!("{}: {e}", e.code()))),
        };
        check_requester(&joiner, requester)?;
        // From the replica of the room's shard, here or on a node that holds it.
        let parts = match self.hub.group_info_parts(room, &joiner).await? {
            None => {
                tracing::debug!(%room, %joiner, "groupInfo for an unknown room");
                return not_authorized(room, NOT_AUTHORIZED);
            }
            Some(Err(reason)) => {
                tracing::debug!(%room, %joiner, %reason, "groupInfo refused");
                return not_authorized(room, NOT_AUTHORIZED);
            }
            Some(Ok(parts)) => parts,
        };
        let plaintext = group_info_tbe(&parts)?;
        let encrypted = encrypt_with_label(
            ROOM_CIPHERSUITE,
            request.tbs.group_info_public_key.as_bytes(),
            GROUP_INFO_ENCRYPTION_LABEL,
            room.as_bytes(),
            &plaintext,
        )
        .map_err(|e| Refusal::bad_request(format!("GroupInfoRequest.groupInfoPublicKey: {e}")))?;
        let response = GroupInfoResponse::signed_success(
            room.as_bytes().to_vec(),
            ROOM_CIPHERSUITE.into(),
            self.key.external_sender().map_err(internal)?,
            Mls::from_value(encrypted).map_err(internal)?,
            self.key.signer(),
        )
        .map_err(internal)?;
        tracing::debug!(%room, %joiner, "groupInfo answered");
        ok_body(StatusCode::OK, &response)
    }
}

/// MIMI.md §7.1 step 2: a provider asks only for its own clients; a local client only for
/// itself.
fn check_requester(joiner: &ClientId, requester: Requester<'_>) -> Result<(), Refusal> {
    let refusal = match requester {
        Requester::Provider(domain) if joiner.domain() != domain => format!(
            "provider {domain} cannot request the GroupInfo for {joiner}, a client of {}",
            joiner.domain()
        ),
        Requester::Client(client) if joiner != client => {
            format!("the request is for {joiner}, but the bearer token authenticates {client}")
        }
        _ => return Ok(()),
    };
    Err(Refusal::new(StatusCode::FORBIDDEN, refusal))
}

/// `GroupInfoRatchetTreeTBE` of the room's current epoch: the latest GroupInfo the committer
/// supplied (the hub keeps it as an `MLSMessage`; the TBE carries the bare GroupInfo), the
/// full ratchet tree, and the pending proposals with their accepted times.
fn group_info_tbe(parts: &GroupInfoParts) -> Result<Vec<u8>, Refusal> {
    let group_info = parts
        .group_info
        .as_deref()
        .ok_or_else(|| internal("the room holds no GroupInfo"))?;
    let group_info = MlsMessage::from_bytes(group_info)
        .and_then(|message| {
            message.unwrap_body::<VerifiableGroupInfo>("GroupInfoRatchetTreeTBE.groupInfo")
        })
        .map_err(internal)?;
    let ratchet_tree = Mls::from_bytes(&parts.ratchet_tree).map_err(internal)?;
    let pending_proposals = parts
        .pending_proposals
        .iter()
        .map(|(hub_accepted_time, bytes)| {
            Ok(PendingProposal {
                proposal: MlsMessage::from_bytes(bytes)?,
                hub_accepted_time: *hub_accepted_time,
            })
        })
        .collect::<Result<Vec<_>, crate::wire::WireError>>()
        .map_err(internal)?;
    GroupInfoRatchetTreeTbe {
        group_info,
        ratchet_tree_option: RatchetTreeOption::Full(ratchet_tree),
        pending_proposals,
    }
    .to_bytes()
    .map_err(internal)
}

/// `notAuthorized` with `reason` in [`REASON_HEADER`].
fn not_authorized(room: &RoomId, reason: &str) -> Answer {
    let mut response: Response = ok_body(
        StatusCode::OK,
        &GroupInfoResponse::not_authorized(room.as_bytes().to_vec()),
    )?;
    if let Ok(value) = HeaderValue::from_str(reason) {
        response.headers.insert(REASON_HEADER, value);
    }
    Ok(response)
}

/// Room data the hub itself stored does not encode: not the requester's fault.
fn internal(error: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("building the groupInfo answer: {error}"),
    )
}
