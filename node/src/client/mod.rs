//! The client library: one MLS client (openmls `MlsGroup` per room) talking to its own
//! provider's client API (node/API.md) over HTTP/3, with MIMI content (content-08) as message
//! bodies. Tests and the bench drive the provider through it, as a real client would.
//!
//! Handshakes are PublicMessages so the hub can validate them (MIMI.md §1, floors.md pitfall
//! 2); application messages are PrivateMessages. Room state changes (participant list) ride in
//! AppDataUpdate proposals in the same commit as the MLS Adds and Removes (MIMI.md §5.2, §8).
//!
//! Discovery and consent (profile, preferences, search, consent requests and decisions) are in
//! `discovery.rs`; franking (rooms created franked, `frank_aad` on every message, Franks
//! checked on receipt and kept for abuse reports) in `franking.rs`.
//!
//! Delivery: `next_event` reads the push stream, drops items already processed by
//! (room, seq) — duplicates after a reconnect are expected (DESIGN.md §4) — and skips the echoes
//! of this client's own accepted commits and messages (MIMI.md §5.4: "providers and clients
//! must tolerate receiving their own message").

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::policy::{
    component, default_room_policy, resolve_app_data_updates, room_group_context_extensions,
    room_leaf_capabilities, RoomPolicy, DEFAULT_ROLE_MEMBER, REQUIRED_PROPOSAL_TYPES,
};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand::RngCore;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::api::{room_path, PREFIX};
use crate::content::MimiContent;
use crate::group_info::REASON_HEADER;
use crate::h3::{ClientLimits, H3Client, H3ClientError};
use crate::wire::client::{
    AckEntry, AckRequest, ClientSubmitResponse, ClientUpdateResponse, CreateRoomRequest,
    CreateRoomResponse, CreateRoomStatus, DeliveredBody, DeliveredItem, FrameDecoder,
    PublishKeyPackagesRequest, RegisterClientRequest, RegisterClientResponse,
};
use crate::wire::group_info::{
    decrypt_with_label, GroupInfoRatchetTreeTbe, GroupInfoRequest, GroupInfoRequestTbs,
    GroupInfoResponse, GroupInfoResult, GROUP_INFO_ENCRYPTION_LABEL,
};
use crate::wire::key_material::{
    ClientMaterial, KeyMaterialRequest, KeyMaterialRequestTbs, KeyMaterialResponse,
};
use crate::wire::submit::{Frank, SubmitMessageRequest, SubmitStatus};
use crate::wire::types::{HpkePublicKey, IdentifierUri, Protocol, SignaturePublicKey};
use crate::wire::update::{
    GroupInfoOption, HandshakeBundle, RatchetTreeOption, UpdateOutcome, UpdateRequest,
};
use crate::wire::{Decode, Encode, Limits, Mls, MlsMessage, WireError};

mod discovery;
mod franking;

pub use discovery::{Consent, Consents};
pub use franking::{FrankCheck, KeptFrank};

/// The MTI ciphersuite (RFC 9420 §17.1), used for every room and KeyPackage.
/// How many own accepted items a client remembers to skip their echoes.
const OWN_REMEMBERED: usize = 1024;

pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] H3ClientError),
    #[error("the provider answered {status}: {reason}")]
    Status { status: StatusCode, reason: String },
    #[error("malformed response: {0}")]
    Wire(#[from] WireError),
    #[error("MLS: {0}")]
    Mls(String),
    #[error("room policy: {0}")]
    Policy(String),
    #[error("not in room {0}")]
    NotInRoom(RoomId),
    #[error("the push stream is not open")]
    NoStream,
    #[error("the push stream ended")]
    StreamEnded,
    #[error("user {0} has no KeyPackage available")]
    NoKeyPackages(UserId),
}

fn mls(e: impl std::fmt::Display) -> ClientError {
    ClientError::Mls(e.to_string())
}

/// The hub's answer to a handshake (protocol-06 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateResult {
    /// Accepted at `seq`; the commit is merged locally.
    Accepted {
        seq: u64,
    },
    /// Another commit won this epoch; the local pending commit was discarded.
    WrongEpoch {
        current_epoch: u64,
    },
    NotAllowed {
        reason: String,
    },
    InvalidProposal {
        reason: String,
    },
}

/// The hub's answer to an application message (protocol-06 §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitResult {
    /// Accepted at `seq` and `timestamp`; `frank` is the hub's Frank when the room is franked
    /// (MIMI.md §5.3.1).
    Accepted {
        seq: u64,
        timestamp: u64,
        frank: Option<Frank>,
    },
    NotAllowed {
        reason: String,
    },
    EpochTooOld {
        current_epoch: u64,
    },
}

/// What the push stream brought, after MLS processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This client joined `room` through a Welcome.
    Joined { room: RoomId, seq: u64 },
    /// A Commit of another member was merged; the group is at `epoch`.
    Committed { room: RoomId, seq: u64, epoch: u64 },
    /// A Commit removed this client from `room`; nothing more will come from it.
    Removed { room: RoomId, seq: u64 },
    /// Proposals were stored for the next commit.
    Proposed { room: RoomId, seq: u64 },
    /// An application message, decrypted; `content` is its MIMI content, `frank` what the
    /// client made of its Frank (MIMI.md §5.3.1).
    Message {
        room: RoomId,
        seq: u64,
        timestamp: u64,
        sender: ClientId,
        content: Box<MimiContent>,
        frank: FrankCheck,
    },
}

impl Event {
    pub fn room(&self) -> &RoomId {
        match self {
            Event::Joined { room, .. }
            | Event::Committed { room, .. }
            | Event::Removed { room, .. }
            | Event::Proposed { room, .. }
            | Event::Message { room, .. } => room,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Event::Joined { seq, .. }
            | Event::Committed { seq, .. }
            | Event::Removed { seq, .. }
            | Event::Proposed { seq, .. }
            | Event::Message { seq, .. } => *seq,
        }
    }
}

/// Where and how to reach the provider.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The name the provider's certificate is verified for.
    pub server_name: String,
    pub roots: Arc<RootCertStore>,
}

impl Endpoint {
    async fn connect(&self) -> Result<H3Client, ClientError> {
        let tls = crate::tls::client_config(self.roots.clone())
            .map_err(|e| ClientError::Mls(format!("TLS configuration: {e}")))?;
        Ok(H3Client::connect(self.addr, &self.server_name, tls, ClientLimits::default()).await?)
    }
}

struct Room {
    group: MlsGroup,
    /// Highest seq processed (or skipped as own) in this room.
    processed: u64,
    /// The epoch this client joined at: items of earlier epochs are not for it. A follower
    /// may deliver such items to a client that joined by external commit (`MirrorRoom::join`).
    first_epoch: u64,
}

struct Stream {
    chunks: mpsc::Receiver<Result<Bytes, H3ClientError>>,
    decoder: FrameDecoder,
    ready: std::collections::VecDeque<DeliveredItem>,
}

/// One MLS client of a user of the provider.
pub struct MimiClient {
    id: ClientId,
    token: String,
    endpoint: Endpoint,
    http: H3Client,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    rooms: BTreeMap<RoomId, Room>,
    /// (room, SHA-256 of the first MLS message) of this client's own accepted items, skipped
    /// when echoed; oldest first, at most [`OWN_REMEMBERED`]. The hash, not the seq, because a
    /// room hosted by another provider reaches us with our provider's own numbering.
    own: VecDeque<(RoomId, [u8; 32])>,
    stream: Option<Stream>,
    limits: Limits,
}

/// What a joiner needs from the hub (protocol-06 §5.5 `GroupInfoRatchetTreeTBE`): the GroupInfo,
/// the ratchet tree and the pending proposals.
type GroupInfoMaterial = (
    openmls::messages::group_info::VerifiableGroupInfo,
    RatchetTreeIn,
    Vec<PublicMessageIn>,
);

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .build()
}

fn credential_client(credential: &Credential) -> Option<ClientId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    ClientId::from_bytes(basic.identity()).ok()
}

impl MimiClient {
    /// Registers the first client `id` of a user with its provider and returns it, holding
    /// the bearer token.
    pub async fn register(endpoint: Endpoint, id: ClientId) -> Result<MimiClient, ClientError> {
        Self::register_with(endpoint, id, HeaderMap::new()).await
    }

    /// Registers another client `id` of this client's user, linked by this client.
    pub async fn link(&self, id: ClientId) -> Result<MimiClient, ClientError> {
        Self::register_with(self.endpoint.clone(), id, self.auth_headers()).await
    }

    async fn register_with(
        endpoint: Endpoint,
        id: ClientId,
        headers: HeaderMap,
    ) -> Result<MimiClient, ClientError> {
        let http = endpoint.connect().await?;
        let body = RegisterClientRequest {
            client: IdentifierUri::new(id.as_bytes()),
        }
        .to_bytes()?;
        let (status, _, bytes) = http
            .request(
                Method::POST,
                &format!("{PREFIX}register"),
                headers,
                body.into(),
            )
            .await?;
        check(status, StatusCode::CREATED, &bytes)?;
        let limits = Limits::default();
        let response = RegisterClientResponse::from_bytes(&bytes, &limits)?;
        let token = String::from_utf8(response.token).map_err(|_| ClientError::Status {
            status,
            reason: "token is not UTF-8".into(),
        })?;
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(mls)?;
        signer.store(provider.storage()).map_err(mls)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(id.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok(MimiClient {
            id,
            token,
            endpoint,
            http,
            provider,
            signer,
            credential,
            rooms: BTreeMap::new(),
            own: VecDeque::new(),
            stream: None,
            limits,
        })
    }

    pub fn id(&self) -> &ClientId {
        &self.id
    }

    pub fn user(&self) -> UserId {
        self.id.user()
    }

    /// The current epoch of `room`, if this client is in it.
    pub fn epoch(&self, room: &RoomId) -> Option<u64> {
        self.rooms.get(room).map(|r| r.group.epoch().as_u64())
    }

    /// Clients in `room` as this client's group sees them.
    pub fn members(&self, room: &RoomId) -> Vec<ClientId> {
        self.rooms
            .get(room)
            .map(|r| {
                r.group
                    .members()
                    .filter_map(|m| credential_client(&m.credential))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn auth_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .expect("a base64url token is a valid header value");
        headers.insert(http::header::AUTHORIZATION, value);
        headers
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, bytes) = self
            .http
            .request(Method::POST, path, self.auth_headers(), body.into())
            .await?;
        Ok((status, bytes))
    }

    /// Sends a request with this client's token and raw `body` to a client API path (for
    /// tests of refusals); the status and the body of the answer.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, bytes) = self
            .http
            .request(method, path, self.auth_headers(), body.into())
            .await?;
        Ok((status, bytes))
    }

    /// Sends raw bytes to a client API path (for tests of malformed input).
    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.post(path, body).await
    }

    /// A fresh KeyPackage of this client (not published).
    pub fn key_package(&self, last_resort: bool) -> Result<KeyPackage, ClientError> {
        let mut builder = KeyPackage::builder().leaf_node_capabilities(room_leaf_capabilities());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        Ok(builder
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(mls)?
            .key_package()
            .clone())
    }

    /// Generates and publishes `count` single-use KeyPackages (and, if asked, one last-resort
    /// KeyPackage in a separate upload).
    pub async fn publish_key_packages(&self, count: usize) -> Result<(), ClientError> {
        let key_packages = (0..count)
            .map(|_| {
                let kp = self.key_package(false)?;
                Ok(Mls::from_bytes(&kp.tls_serialize_detached().map_err(mls)?)?)
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let body = PublishKeyPackagesRequest {
            key_packages,
            last_resort: false,
        }
        .to_bytes()?;
        let (status, bytes) = self.post(&format!("{PREFIX}keyPackages"), body).await?;
        check(status, StatusCode::CREATED, &bytes)
    }

    /// Claims one KeyPackage per client of `user` to add it to `room` (protocol-06 §5.1), with
    /// a `KeyMaterialRequest` signed by this client ([`MimiClient::key_material_request`]).
    pub async fn claim(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<Vec<KeyPackage>, ClientError> {
        let body = self.key_material_request(user, room)?.to_bytes()?;
        let (status, bytes) = self.post(&format!("{PREFIX}keyMaterial"), body).await?;
        check(status, StatusCode::OK, &bytes)?;
        let response = KeyMaterialResponse::from_bytes(&bytes, &self.limits)?;
        response
            .clients
            .into_iter()
            .filter_map(|client| match client.material {
                ClientMaterial::Success { key_package } => Some(key_package),
                _ => None,
            })
            .map(|kp| {
                kp.into_value()
                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(mls)
            })
            .collect()
    }

    /// The signed `KeyMaterialRequest` (protocol-06 §5.1) for `user`'s KeyPackages, to add
    /// `user` to `room`: our one cipher suite, the capabilities the room requires of its
    /// members (its `required_capabilities` when this client is in it, else those every room
    /// of ours requires, MIMI.md §6.1 step 2), and this client's credential and signature key.
    pub fn key_material_request(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<KeyMaterialRequest, ClientError> {
        let required = self
            .rooms
            .get(room)
            .and_then(|entry| entry.group.extensions().required_capabilities().cloned())
            .unwrap_or_else(|| {
                RequiredCapabilitiesExtension::new(
                    &[ExtensionType::AppDataDictionary],
                    &REQUIRED_PROPOSAL_TYPES,
                    &[CredentialType::Basic],
                )
            });
        let tbs = KeyMaterialRequestTbs {
            protocol: Protocol::Mls10,
            requesting_user: IdentifierUri::from(&self.user()),
            target_user: IdentifierUri::from(user),
            room_id: IdentifierUri::from(room),
            acceptable_ciphersuites: vec![CIPHERSUITE.into()],
            required_capabilities: Mls::from_value(required)?,
            requester_signature_key: SignaturePublicKey(self.signer.public().to_vec()),
            requester_credential: Mls::from_value(self.credential.credential.clone())?,
        };
        KeyMaterialRequest::sign(tbs, &self.signer).map_err(mls)
    }

    /// Creates `room` hosted by this client's provider, with the default room policy
    /// (this client's user as admin; MIMI.md §6.1), franked by the provider (its franking
    /// agent in the GroupContext, SafeAAD with `frank_aad` required; MIMI.md §5.3.1).
    pub async fn create_room(&mut self, room: &RoomId) -> Result<(), ClientError> {
        self.create_room_in(room, None).await
    }

    /// [`Self::create_room`], pinned to the provider's residency set `residency` when given
    /// (the `Mimid-Residency` header; ARCHITECTURE.md "Data residency").
    pub async fn create_room_in(
        &mut self,
        room: &RoomId,
        residency: Option<&str>,
    ) -> Result<(), ClientError> {
        let policy = default_room_policy(&self.user());
        let agent = self.franking_agent().await?;
        let extensions =
            franking::franked_extensions(room_group_context_extensions(&policy), &agent)?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .capabilities(room_leaf_capabilities())
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .with_group_context_extensions(extensions)
            .build();
        let mut group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(room.as_bytes()),
            self.credential.clone(),
        )
        .map_err(mls)?;
        let group_info = group
            .export_group_info(self.provider.crypto(), &self.signer, false)
            .map_err(mls)?;
        let tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(mls)?;
        let body = CreateRoomRequest {
            room: IdentifierUri::new(room.as_bytes()),
            group_info: MlsMessage::from_bytes(&group_info.tls_serialize_detached().map_err(mls)?)?,
            ratchet_tree: Mls::from_bytes(&tree)?,
        }
        .to_bytes()?;
        // A refused create leaves no group behind, so the same room can be created again.
        if let Err(e) = self.send_create(body, residency).await {
            group.delete(self.provider.storage()).map_err(mls)?;
            return Err(e);
        }
        self.rooms.insert(
            room.clone(),
            Room {
                group,
                processed: 0,
                first_epoch: 0,
            },
        );
        Ok(())
    }

    /// Sends a createRoom `body`, pinned to `residency` when given; `Ok` on 201.
    async fn send_create(&self, body: Vec<u8>, residency: Option<&str>) -> Result<(), ClientError> {
        let mut headers = self.auth_headers();
        if let Some(set) = residency {
            let value = HeaderValue::from_str(set).map_err(|_| ClientError::Status {
                status: StatusCode::BAD_REQUEST,
                reason: format!("residency set {set:?} is not a header value"),
            })?;
            headers.insert(mimid_actors::residency::RESIDENCY_HEADER, value);
        }
        let (status, _, bytes) = self
            .http
            .request(
                Method::POST,
                &format!("{PREFIX}rooms"),
                headers,
                body.into(),
            )
            .await?;
        if status != StatusCode::CREATED {
            let reason = CreateRoomResponse::from_bytes(&bytes, &self.limits)
                .map(|r| match r.status {
                    CreateRoomStatus::Exists => "room exists".to_string(),
                    _ => r.reason,
                })
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status { status, reason });
        }
        Ok(())
    }

    /// Joins `room` by external commit (MIMI.md §6.6, RFC 9420 §12.4.3.2), as a new client of
    /// a user who is a participant with canAddOwnClient: fetches the room's GroupInfo, ratchet
    /// tree and pending proposals through its own provider (protocol-06 §5.5, encrypted to a
    /// fresh HPKE key and signed by the hub), builds the external commit (committing pending
    /// SelfRemoves by reference) and sends it with its GroupInfo for the new epoch. On
    /// `Accepted` the client is in the room; an open push stream is reopened, because a
    /// provider attaches a client's rooms to its stream when the stream opens and no Welcome
    /// announces this one. A `notAuthorized` answer to the groupInfo request is
    /// `NotAllowed` with the provider's reason.
    pub async fn join_by_external_commit(
        &mut self,
        room: &RoomId,
    ) -> Result<UpdateResult, ClientError> {
        if self.rooms.contains_key(room) {
            return Err(ClientError::Mls(format!("already in room {room}")));
        }
        let (group_info, tree, pending) = match self.fetch_group_info(room).await? {
            Ok(material) => material,
            Err(reason) => return Ok(UpdateResult::NotAllowed { reason }),
        };
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(join_config())
            .with_proposals(pending)
            .build_group(&self.provider, group_info, self.credential.clone())
            .map_err(mls)?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(room_leaf_capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .map_err(mls)?
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(mls)?
            .finalize(&self.provider)
            .map_err(mls)?;
        let (commit, _, group_info) = bundle.into_contents();
        let group_info = group_info
            .ok_or_else(|| ClientError::Mls("external commit produced no GroupInfo".into()))?;
        let request = UpdateRequest {
            bundle: HandshakeBundle::Commit {
                commit: MlsMessage::from_bytes(&commit.tls_serialize_detached().map_err(mls)?)?,
                welcome: None,
                group_info_option: GroupInfoOption::Full(Mls::from_bytes(
                    &group_info.tls_serialize_detached().map_err(mls)?,
                )?),
                ratchet_tree_option: RatchetTreeOption::DistributionService,
            },
        };
        let result = self.send_update(room, request).await?;
        if matches!(result, UpdateResult::Accepted { .. }) {
            self.rooms.insert(
                room.clone(),
                Room {
                    first_epoch: group.epoch().as_u64(),
                    group,
                    processed: 0,
                },
            );
            if self.stream.is_some() {
                self.connect_stream().await?;
            }
        }
        Ok(result)
    }

    /// This client's signed `GroupInfoRequest` (protocol-06 §5.5) asking for a room's GroupInfo
    /// encrypted to `group_info_public_key`, without a joining code.
    pub fn group_info_request(
        &self,
        group_info_public_key: &[u8],
    ) -> Result<GroupInfoRequest, ClientError> {
        let tbs = GroupInfoRequestTbs {
            protocol: Protocol::Mls10,
            cipher_suite: CIPHERSUITE.into(),
            requesting_signature_key: SignaturePublicKey(self.signer.public().to_vec()),
            requesting_credential: Mls::from_value(self.credential.credential.clone())?,
            group_info_public_key: HpkePublicKey(group_info_public_key.to_vec()),
            joining_code: None,
        };
        GroupInfoRequest::sign(tbs, &self.signer).map_err(mls)
    }

    /// protocol-06 §5.5 through this client's provider: the room's GroupInfo, ratchet tree and
    /// pending proposals (the PublicMessages among them), after checking the hub's signature
    /// and decrypting with a fresh HPKE key; `Err(reason)` when the hub answers
    /// `notAuthorized` or `noSuchRoom`.
    async fn fetch_group_info(
        &self,
        room: &RoomId,
    ) -> Result<Result<GroupInfoMaterial, String>, ClientError> {
        let mut ikm = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut ikm);
        let keys = self
            .provider
            .crypto()
            .derive_hpke_keypair(CIPHERSUITE.hpke_config(), &ikm)
            .map_err(mls)?;
        let body = self.group_info_request(&keys.public)?.to_bytes()?;
        let (status, headers, bytes) = self
            .http
            .request(
                Method::POST,
                &room_path("groupInfo", room),
                self.auth_headers(),
                body.into(),
            )
            .await?;
        check(status, StatusCode::OK, &bytes)?;
        let response = GroupInfoResponse::from_bytes(&bytes, &self.limits)?;
        if !matches!(response.result, GroupInfoResult::Success(_)) {
            let reason = headers
                .get(REASON_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("no reason given");
            return Ok(Err(format!("groupInfo: {:?}: {reason}", response.status())));
        }
        let success = response
            .verify_success(room.as_bytes(), room.domain())
            .map_err(|e| ClientError::Mls(format!("groupInfo response: {e}")))?;
        let plaintext = decrypt_with_label(
            CIPHERSUITE,
            &keys.private,
            GROUP_INFO_ENCRYPTION_LABEL,
            room.as_bytes(),
            success.encrypted_groupinfo_and_tree.value(),
        )
        .map_err(|e| ClientError::Mls(format!("groupInfo response: {e}")))?;
        let tbe = GroupInfoRatchetTreeTbe::from_bytes(&plaintext, &self.limits)?;
        let RatchetTreeOption::Full(tree) = tbe.ratchet_tree_option else {
            return Err(ClientError::Mls(
                "groupInfo response: only a full ratchet tree can be used".into(),
            ));
        };
        let pending = tbe
            .pending_proposals
            .iter()
            .filter_map(|pending| match pending.proposal.to_openmls() {
                Ok(message) => match message.extract() {
                    MlsMessageBodyIn::PublicMessage(message) => Some(Ok(message)),
                    _ => None,
                },
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        Ok(Ok((
            tbe.group_info.into_value(),
            tree.into_value(),
            pending,
        )))
    }

    fn room_mut(&mut self, room: &RoomId) -> Result<&mut Room, ClientError> {
        self.rooms
            .get_mut(room)
            .ok_or_else(|| ClientError::NotInRoom(room.clone()))
    }

    fn policy(group: &MlsGroup) -> Result<RoomPolicy, ClientError> {
        RoomPolicy::from_extensions(group.extensions())
            .map_err(|e| ClientError::Policy(e.to_string()))
    }

    /// Adds `users` (claiming one KeyPackage per client of each) as members (MIMI.md §6.2).
    pub async fn add_users(
        &mut self,
        room: &RoomId,
        users: &[UserId],
    ) -> Result<UpdateResult, ClientError> {
        let mut key_packages = Vec::new();
        for user in users {
            let claimed = self.claim(user, room).await?;
            if claimed.is_empty() {
                return Err(ClientError::NoKeyPackages(user.clone()));
            }
            key_packages.extend(claimed);
        }
        self.commit_adds(room, users, key_packages).await
    }

    /// Adds the given clients' KeyPackages; `new_users` are added to the participant list as
    /// members in the same commit (empty when adding more clients of existing participants).
    pub async fn commit_adds(
        &mut self,
        room: &RoomId,
        new_users: &[UserId],
        key_packages: Vec<KeyPackage>,
    ) -> Result<UpdateResult, ClientError> {
        let members: Vec<(UserId, u32)> = new_users
            .iter()
            .map(|u| (u.clone(), DEFAULT_ROLE_MEMBER))
            .collect();
        let group = &self.room_mut(room)?.group;
        let participants = if members.is_empty() {
            None
        } else {
            Some(
                Self::policy(group)?
                    .add_participants_proposal(&members)
                    .map_err(|e| ClientError::Policy(e.to_string()))?,
            )
        };
        self.commit(room, |builder| {
            let builder = builder.propose_adds(key_packages);
            match participants {
                Some(p) => builder.add_proposal(Proposal::AppDataUpdate(Box::new(p))),
                None => builder,
            }
        })
        .await
    }

    /// Removes `user` and all its clients from the room (MIMI.md §6.5).
    pub async fn remove_user(
        &mut self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<UpdateResult, ClientError> {
        let participants = Self::policy(&self.room_mut(room)?.group)?
            .remove_participants_proposal(std::slice::from_ref(user))
            .map_err(|e| ClientError::Policy(e.to_string()))?;
        self.remove_clients_of(room, user, Some(participants)).await
    }

    /// Kicks `user`: removes all its clients but keeps it in the participant list
    /// (room-policy-03 canKick; MIMI.md §6.5).
    pub async fn kick(
        &mut self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<UpdateResult, ClientError> {
        self.remove_clients_of(room, user, None).await
    }

    /// Commits the removal of every client of `user`, with `participants` (a participant list
    /// update) in the same commit when the user leaves the list too.
    async fn remove_clients_of(
        &mut self,
        room: &RoomId,
        user: &UserId,
        participants: Option<AppDataUpdateProposal>,
    ) -> Result<UpdateResult, ClientError> {
        let leaves = self.leaves_of(room, user)?;
        self.commit(room, |builder| {
            let builder = builder.propose_removals(leaves);
            match participants {
                Some(p) => builder.add_proposal(Proposal::AppDataUpdate(Box::new(p))),
                None => builder,
            }
        })
        .await
    }

    fn leaves_of(&self, room: &RoomId, user: &UserId) -> Result<Vec<LeafNodeIndex>, ClientError> {
        let entry = self
            .rooms
            .get(room)
            .ok_or_else(|| ClientError::NotInRoom(room.clone()))?;
        Ok(entry
            .group
            .members()
            .filter(|m| credential_client(&m.credential).is_some_and(|c| c.user() == *user))
            .map(|m| m.index)
            .collect())
    }

    /// Gives `user` the role `role` (room-policy-03 canChangeUserRole).
    pub async fn change_role(
        &mut self,
        room: &RoomId,
        user: &UserId,
        role: u32,
    ) -> Result<UpdateResult, ClientError> {
        let proposal = Self::policy(&self.room_mut(room)?.group)?
            .change_roles_proposal(&[(user.clone(), role)])
            .map_err(|e| ClientError::Policy(e.to_string()))?;
        self.commit(room, |builder| {
            builder.add_proposal(Proposal::AppDataUpdate(Box::new(proposal)))
        })
        .await
    }

    /// Leaves `room` (MIMI.md §6.5): a member cannot commit its own removal, so it proposes a
    /// SelfRemove together with the participant-list update that removes its user, as one
    /// bundle; the hub requires the next commit of another member to include both.
    pub async fn leave(&mut self, room: &RoomId) -> Result<UpdateResult, ClientError> {
        let user = self.user();
        let (self_remove, list_update) = {
            let provider = &self.provider;
            let signer = &self.signer;
            let entry = self
                .rooms
                .get_mut(room)
                .ok_or_else(|| ClientError::NotInRoom(room.clone()))?;
            let leave = Self::policy(&entry.group)?
                .remove_participants_proposal(&[user])
                .map_err(|e| ClientError::Policy(e.to_string()))?;
            let (list_update, _) = entry
                .group
                .propose_app_data_update(
                    provider,
                    signer,
                    component::PARTICIPANT_LIST,
                    leave.operation().clone(),
                )
                .map_err(mls)?;
            let self_remove = entry
                .group
                .leave_group_via_self_remove(provider, signer)
                .map_err(mls)?;
            (self_remove, list_update)
        };
        let request = UpdateRequest {
            bundle: HandshakeBundle::Proposals {
                proposal: MlsMessage::from_bytes(
                    &self_remove.tls_serialize_detached().map_err(mls)?,
                )?,
                more_proposals: vec![MlsMessage::from_bytes(
                    &list_update.tls_serialize_detached().map_err(mls)?,
                )?],
            },
        };
        self.send_update(room, request).await
    }

    /// An empty commit with a path (key rotation, RFC 9420 §12.4).
    pub async fn self_update(&mut self, room: &RoomId) -> Result<UpdateResult, ClientError> {
        self.commit(room, |builder| builder.force_self_update(true))
            .await
    }

    /// Builds a commit with `shape`, resolving its AppDataUpdates against the room policy,
    /// sends it with its Welcome and GroupInfo, and merges it only if the hub accepted it.
    async fn commit(
        &mut self,
        room: &RoomId,
        shape: impl FnOnce(CommitBuilder<'_, Initial>) -> CommitBuilder<'_, Initial>,
    ) -> Result<UpdateResult, ClientError> {
        let request = self.build_commit(room, shape)?;
        let result = self.send_update(room, request).await;
        let provider = &self.provider;
        let entry = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| ClientError::NotInRoom(room.clone()))?;
        match &result {
            Ok(UpdateResult::Accepted { .. }) => {
                entry.group.merge_pending_commit(provider).map_err(mls)?;
            }
            _ => {
                entry
                    .group
                    .clear_pending_commit(provider.storage())
                    .map_err(mls)?;
            }
        }
        result
    }

    /// The UpdateRequest of an empty commit with a path, without sending it: the client's
    /// group is left as it was (for tests that replay or misroute real handshakes).
    pub fn prepare_self_update(&mut self, room: &RoomId) -> Result<Vec<u8>, ClientError> {
        let request = self.build_commit(room, |builder| builder.force_self_update(true))?;
        let entry = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| ClientError::NotInRoom(room.clone()))?;
        entry
            .group
            .clear_pending_commit(self.provider.storage())
            .map_err(mls)?;
        Ok(request.to_bytes()?)
    }

    /// Stages a commit shaped by `shape` (pending in the group until merged or cleared) and
    /// returns the UpdateRequest that carries it.
    fn build_commit(
        &mut self,
        room: &RoomId,
        shape: impl FnOnce(CommitBuilder<'_, Initial>) -> CommitBuilder<'_, Initial>,
    ) -> Result<UpdateRequest, ClientError> {
        let (commit, welcome, group_info) = {
            let provider = &self.provider;
            let signer = &self.signer;
            let entry = self
                .rooms
                .get_mut(room)
                .ok_or_else(|| ClientError::NotInRoom(room.clone()))?;
            let policy = Self::policy(&entry.group)?;
            let dictionary = entry.group.extensions().app_data_dictionary().cloned();
            let mut stage = shape(entry.group.commit_builder())
                .load_psks(provider.storage())
                .map_err(mls)?
                .create_group_info(true);
            let proposals: Vec<AppDataUpdateProposal> =
                stage.app_data_update_proposals().cloned().collect();
            if !proposals.is_empty() {
                let resolution = resolve_app_data_updates(
                    &policy,
                    dictionary.as_ref().map(|d| d.dictionary()),
                    proposals.iter().map(|p| ((), p)),
                )
                .map_err(|e| ClientError::Policy(e.to_string()))?;
                stage.with_app_data_dictionary_updates(resolution.into_parts().1);
            }
            let bundle = stage
                .build(provider.rand(), provider.crypto(), signer, |_| true)
                .map_err(mls)?
                .stage_commit(provider)
                .map_err(mls)?;
            bundle.into_contents()
        };
        let commit_bytes = commit.tls_serialize_detached().map_err(mls)?;
        let welcome = welcome
            .map(|w| {
                Ok::<_, ClientError>(Mls::from_bytes(&w.tls_serialize_detached().map_err(mls)?)?)
            })
            .transpose()?;
        let group_info =
            group_info.ok_or_else(|| ClientError::Mls("commit produced no GroupInfo".into()))?;
        Ok(UpdateRequest {
            bundle: HandshakeBundle::Commit {
                commit: MlsMessage::from_bytes(&commit_bytes)?,
                welcome,
                group_info_option: GroupInfoOption::Full(Mls::from_bytes(
                    &group_info.tls_serialize_detached().map_err(mls)?,
                )?),
                ratchet_tree_option: RatchetTreeOption::DistributionService,
            },
        })
    }

    async fn send_update(
        &mut self,
        room: &RoomId,
        request: UpdateRequest,
    ) -> Result<UpdateResult, ClientError> {
        let (status, bytes) = self
            .post(&room_path("update", room), request.to_bytes()?)
            .await?;
        check(status, StatusCode::OK, &bytes)?;
        let response = ClientUpdateResponse::from_bytes(&bytes, &self.limits)?;
        let reason = response.response.error_description.clone();
        Ok(match response.response.outcome {
            UpdateOutcome::Success { .. } => {
                let first = match &request.bundle {
                    HandshakeBundle::Commit { commit, .. } => commit,
                    HandshakeBundle::Proposals { proposal, .. } => proposal,
                };
                self.note_own(room, first.bytes());
                UpdateResult::Accepted { seq: response.seq }
            }
            UpdateOutcome::WrongEpoch { current_epoch } => {
                UpdateResult::WrongEpoch { current_epoch }
            }
            UpdateOutcome::NotAllowed => UpdateResult::NotAllowed { reason },
            UpdateOutcome::InvalidProposal { .. } => UpdateResult::InvalidProposal { reason },
        })
    }

    /// Encrypts `text` as MIMI content (text/plain) and submits it (protocol-06 §5.3).
    pub async fn send_text(
        &mut self,
        room: &RoomId,
        text: &str,
    ) -> Result<SubmitResult, ClientError> {
        let message = self.prepare_text(room, text)?;
        self.submit_raw(room, message).await
    }

    /// Encrypts `text` as MIMI content (text/plain) into an `MLSMessage` for `room` at its
    /// current epoch, without sending it.
    pub fn prepare_text(&mut self, room: &RoomId, text: &str) -> Result<Vec<u8>, ClientError> {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let content = MimiContent::plain_text(salt, text)
            .with_sender_and_room(self.user().as_str(), room.as_str());
        let plaintext = content
            .encode()
            .map_err(|e| ClientError::Mls(format!("MIMI content: {e}")))?;
        let provider = &self.provider;
        let signer = &self.signer;
        let entry = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| ClientError::NotInRoom(room.clone()))?;
        franking::stage_frank_aad(&mut entry.group, &content, &plaintext)?;
        let message = entry
            .group
            .create_message(provider, signer, &plaintext)
            .map_err(mls)?;
        message.tls_serialize_detached().map_err(mls)
    }

    /// Submits an already encoded `MLSMessage` as this client's application message.
    pub async fn submit_raw(
        &mut self,
        room: &RoomId,
        message: Vec<u8>,
    ) -> Result<SubmitResult, ClientError> {
        let body = SubmitMessageRequest {
            protocol: Protocol::Mls10,
            app_message: MlsMessage::from_bytes(&message)?,
            sending_uri: IdentifierUri::new(self.user().as_bytes()),
        }
        .to_bytes()?;
        let (status, bytes) = self.post(&room_path("submitMessage", room), body).await?;
        check(status, StatusCode::OK, &bytes)?;
        let response = ClientSubmitResponse::from_bytes(&bytes, &self.limits)?;
        Ok(match response.response.status {
            SubmitStatus::Accepted {
                accepted_timestamp,
                frank,
            } => {
                self.note_own(room, &message);
                SubmitResult::Accepted {
                    seq: response.seq,
                    timestamp: accepted_timestamp,
                    frank,
                }
            }
            SubmitStatus::NotAllowed => SubmitResult::NotAllowed {
                reason: response.reason,
            },
            SubmitStatus::EpochTooOld { current_epoch } => {
                SubmitResult::EpochTooOld { current_epoch }
            }
        })
    }

    /// Remembers an accepted item of this client (by its first MLS message) so its echo is
    /// skipped (MIMI.md §5.4: clients tolerate their own messages). Bounded: an echo that never
    /// comes (a resend whose echo was already processed) is forgotten eventually.
    fn note_own(&mut self, room: &RoomId, first_message: &[u8]) {
        if self.own.len() == OWN_REMEMBERED {
            self.own.pop_front();
        }
        self.own
            .push_back((room.clone(), Sha256::digest(first_message).into()));
    }

    /// Whether `item` is the echo of one of this client's accepted items (forgotten once seen).
    fn take_own(&mut self, room: &RoomId, body: &DeliveredBody) -> bool {
        let first = match body {
            DeliveredBody::Proposals { messages } => messages.first(),
            DeliveredBody::Commit { message } | DeliveredBody::Application { message, .. } => {
                Some(message)
            }
            DeliveredBody::Welcome { .. } => None,
        };
        let Some(first) = first else { return false };
        let hash: [u8; 32] = Sha256::digest(first.bytes()).into();
        match self.own.iter().position(|(r, h)| r == room && *h == hash) {
            Some(index) => {
                self.own.remove(index);
                true
            }
            None => false,
        }
    }

    /// Opens (or reopens) the push stream; the provider resumes after the acknowledged cursors.
    pub async fn connect_stream(&mut self) -> Result<(), ClientError> {
        let (status, chunks) = self
            .http
            .stream(
                Method::GET,
                &format!("{PREFIX}stream"),
                self.auth_headers(),
                Bytes::new(),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status {
                status,
                reason: "push stream refused".into(),
            });
        }
        self.stream = Some(Stream {
            chunks,
            decoder: FrameDecoder::new(self.limits.max_body_len.saturating_mul(2)),
            ready: Default::default(),
        });
        Ok(())
    }

    /// Closes the push stream (the client goes offline); items accepted meanwhile wait for
    /// it after its acknowledged cursors.
    pub fn disconnect_stream(&mut self) {
        self.stream = None;
    }

    /// Reconnects to the provider at `endpoint` (a new QUIC connection, e.g. after a provider
    /// restart) and reopens the push stream.
    pub async fn reconnect(&mut self, endpoint: Endpoint) -> Result<(), ClientError> {
        self.stream = None;
        self.endpoint = endpoint;
        self.http = self.endpoint.connect().await?;
        self.connect_stream().await
    }

    async fn next_item(&mut self, wait: Duration) -> Result<Option<DeliveredItem>, ClientError> {
        let stream = self.stream.as_mut().ok_or(ClientError::NoStream)?;
        // One deadline for the whole call: heartbeats arrive on an idle stream and must not
        // extend the wait.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(item) = stream.ready.pop_front() {
                return Ok(Some(item));
            }
            let chunk = match tokio::time::timeout_at(deadline, stream.chunks.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(ClientError::StreamEnded),
                Ok(Some(chunk)) => chunk?,
            };
            let frames = stream
                .decoder
                .feed(&chunk)
                .map_err(|e| ClientError::Mls(format!("push stream framing: {e}")))?;
            for frame in frames {
                stream
                    .ready
                    .push_back(DeliveredItem::from_bytes(&frame, &self.limits)?);
            }
        }
    }

    /// The next event from the push stream, or `None` if nothing arrives within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>, ClientError> {
        loop {
            let Some(item) = self.next_item(wait).await? else {
                return Ok(None);
            };
            if let Some(event) = self.process(item)? {
                return Ok(Some(event));
            }
        }
    }

    /// Collects events until `count` arrived (or fails after `wait` without progress).
    pub async fn events(
        &mut self,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            match self.next_event(wait).await? {
                Some(event) => events.push(event),
                None => break,
            }
        }
        Ok(events)
    }

    fn process(&mut self, item: DeliveredItem) -> Result<Option<Event>, ClientError> {
        let room = item.room_id()?;
        let seq = item.seq;
        if let DeliveredBody::Welcome {
            welcome,
            ratchet_tree,
        } = item.body
        {
            if self.rooms.contains_key(&room) {
                return Ok(None);
            }
            let welcome = match welcome.to_openmls()?.extract() {
                MlsMessageBodyIn::Welcome(welcome) => welcome,
                _ => return Err(ClientError::Mls("Welcome item without a Welcome".into())),
            };
            let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree.bytes()).map_err(mls)?;
            let group = StagedWelcome::new_from_welcome(
                &self.provider,
                &join_config(),
                welcome,
                Some(tree),
            )
            .map_err(mls)?
            .into_group(&self.provider)
            .map_err(mls)?;
            self.rooms.insert(
                room.clone(),
                Room {
                    first_epoch: group.epoch().as_u64(),
                    group,
                    processed: seq,
                },
            );
            return Ok(Some(Event::Joined { room, seq }));
        }
        match self.rooms.get(&room) {
            None => return Ok(None), // not (or no longer) in this room
            Some(entry) if seq <= entry.processed => return Ok(None), // a duplicate
            Some(_) => {}
        }
        let own = self.take_own(&room, &item.body);
        let Some(entry) = self.rooms.get_mut(&room) else {
            return Ok(None);
        };
        entry.processed = seq;
        // A removed client may still be sent what follows its removal (a follower cannot tell,
        // `MirrorRoom` docs); it can read none of it.
        if own || !entry.group.is_active() {
            return Ok(None);
        }
        let (messages, mut delivered_frank) = match item.body {
            DeliveredBody::Proposals { messages } => (messages, None),
            DeliveredBody::Commit { message } => (vec![message], None),
            DeliveredBody::Application { message, frank } => (vec![message], frank),
            DeliveredBody::Welcome { .. } => unreachable!("handled above"),
        };
        // Items from before this client joined: it cannot read them (a follower may deliver
        // them to a client that joined by external commit, `MirrorRoom::join`).
        if messages
            .first()
            .and_then(MlsMessage::epoch)
            .is_some_and(|epoch| epoch < entry.first_epoch)
        {
            return Ok(None);
        }
        let mut event = None;
        for message in messages {
            let protocol = message
                .to_openmls()?
                .try_into_protocol_message()
                .map_err(mls)?;
            let processed = entry
                .group
                .process_message(&self.provider, protocol)
                .map_err(mls)?;
            let sender = credential_client(processed.credential());
            let aad_tag = processed
                .safe_aad_item(component::FRANK_AAD)
                .and_then(|tag| <[u8; 32]>::try_from(tag).ok());
            let processed = match processed.into_content() {
                ProcessedMessageContent::UnresolvedAppDataCommit(unresolved) => {
                    let policy = Self::policy(&entry.group)?;
                    let dictionary = entry.group.extensions().app_data_dictionary().cloned();
                    let proposals: Vec<AppDataUpdateProposal> =
                        unresolved.app_data_update_proposals().cloned().collect();
                    let resolution = resolve_app_data_updates(
                        &policy,
                        dictionary.as_ref().map(|d| d.dictionary()),
                        proposals.iter().map(|p| ((), p)),
                    )
                    .map_err(|e| ClientError::Policy(e.to_string()))?;
                    let staged = entry
                        .group
                        .stage_app_data_commit(
                            &self.provider,
                            *unresolved,
                            resolution.into_parts().1,
                        )
                        .map_err(mls)?;
                    ProcessedMessageContent::StagedCommitMessage(Box::new(staged))
                }
                other => other,
            };
            event = Some(match processed {
                ProcessedMessageContent::ApplicationMessage(message) => {
                    let bytes = message.into_bytes();
                    let content = MimiContent::decode(&bytes)
                        .map_err(|e| ClientError::Mls(format!("MIMI content: {e}")))?;
                    let sender = sender.ok_or_else(|| {
                        ClientError::Mls("message sender has no MIMI client identity".into())
                    })?;
                    let frank = franking::Delivered {
                        group: &entry.group,
                        room: &room,
                        sender: &sender,
                        content: &content,
                        content_bytes: &bytes,
                        aad_tag,
                        frank: delivered_frank.take(),
                        accepted_ts_ms: item.timestamp,
                    }
                    .check();
                    Event::Message {
                        room: room.clone(),
                        seq,
                        timestamp: item.timestamp,
                        sender,
                        content: Box::new(content),
                        frank,
                    }
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    entry
                        .group
                        .merge_staged_commit(&self.provider, *staged)
                        .map_err(mls)?;
                    if entry.group.is_active() {
                        Event::Committed {
                            room: room.clone(),
                            seq,
                            epoch: entry.group.epoch().as_u64(),
                        }
                    } else {
                        Event::Removed {
                            room: room.clone(),
                            seq,
                        }
                    }
                }
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    entry
                        .group
                        .store_pending_proposal(self.provider.storage(), *proposal)
                        .map_err(mls)?;
                    Event::Proposed {
                        room: room.clone(),
                        seq,
                    }
                }
                other => {
                    return Err(ClientError::Mls(format!(
                        "unexpected content {:?}",
                        std::mem::discriminant(&other)
                    )))
                }
            });
        }
        if matches!(event, Some(Event::Removed { .. })) {
            self.rooms.remove(&room);
        }
        Ok(event)
    }

    /// Acknowledges everything processed so far in every room (the provider resumes the push
    /// stream after these cursors).
    pub async fn ack(&self) -> Result<(), ClientError> {
        let acks = self
            .rooms
            .iter()
            .filter(|(_, r)| r.processed > 0)
            .map(|(room, r)| AckEntry {
                room: IdentifierUri::new(room.as_bytes()),
                seq: r.processed,
            })
            .collect();
        let (status, bytes) = self
            .post(&format!("{PREFIX}ack"), AckRequest { acks }.to_bytes()?)
            .await?;
        check(status, StatusCode::NO_CONTENT, &bytes)
    }

    /// Closes the connection cleanly.
    pub async fn close(self) {
        drop(self.stream);
        self.http.close().await;
    }
}

fn check(status: StatusCode, expected: StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status == expected {
        Ok(())
    } else {
        Err(ClientError::Status {
            status,
            reason: String::from_utf8_lossy(body).into_owned(),
        })
    }
}
