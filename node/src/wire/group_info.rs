//! protocol-06 §5.5 (MIMI.md §5.5): `POST /groupInfo/{roomId}` bodies for external joins, and
//! the cryptography around them:
//!
//! * the requester's `SignWithLabel(.., "GroupInfoRequestTBS", ..)` ([`GroupInfoRequest::sign`],
//!   [`GroupInfoRequest::verify`]);
//! * RFC 9420 §5.1.3 `EncryptWithLabel` of the `GroupInfoRatchetTreeTBE` to
//!   `groupInfoPublicKey` ([`encrypt_with_label`], [`decrypt_with_label`]), HPKE base mode
//!   with the cipher suite's KEM, KDF and AEAD through openmls_rust_crypto;
//! * the hub's `SignWithLabel(hub_sender.signature_key, "GroupInfoResponseTBS", ..)`
//!   ([`GroupInfoResponse::signed_success`], [`GroupInfoResponse::verify_success`]);
//! * reading which client an external commit joins ([`external_commit_joiner`]), for the
//!   joiner's provider, which forwards it.
//!
//! As for `KeyMaterialRequest`, a verified request proves only that its signer holds
//! `requestingSignatureKey`; nothing binds that key to `requestingCredential` outside a group.
//! The requester's provider vouches for the credential (our client API checks it against the
//! bearer token), and the hub authorises the credential's user by the room policy.

use mimid_actors::ids::ClientId;
use mimid_actors::room::identity::{client_of_credential, IdentityError};
use mimid_actors::room::state::ROOM_CIPHERSUITE;
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{BasicCredential, Ciphersuite, Credential, ExternalSender};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::signatures::Signer;
use openmls_traits::types::HpkeCiphertext;
use thiserror::Error;

use super::codec::{wire_enum, Decode, Encode, Limits, Mls, MlsMessage, Reader, WireError, Writer};
use super::sign::{sign_content, sign_with_label, verify_with_label, SignatureError};
use super::types::{CipherSuite, HpkePublicKey, Protocol, SignaturePublicKey};
use super::update::RatchetTreeOption;

/// The `SignWithLabel` label of the requester's signature (protocol-06 §5.5).
pub const GROUP_INFO_REQUEST_LABEL: &str = "GroupInfoRequestTBS";
/// The `SignWithLabel` label of the hub's signature over a successful response.
pub const GROUP_INFO_RESPONSE_LABEL: &str = "GroupInfoResponseTBS";
/// The `EncryptWithLabel` label of `encrypted_groupinfo_and_tree` (the room id is the
/// context).
pub const GROUP_INFO_ENCRYPTION_LABEL: &str = "GroupInfo and ratchet_tree encryption";

/// `GroupInfoRequestTBS`, which the requester signs with
/// `SignWithLabel(requestingSignatureKey, "GroupInfoRequestTBS", ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRequestTbs {
    pub protocol: Protocol,
    pub cipher_suite: CipherSuite,
    pub requesting_signature_key: SignaturePublicKey,
    pub requesting_credential: Mls<Credential>,
    pub group_info_public_key: HpkePublicKey,
    /// Never `Some` of an empty code (see [`GroupInfoRequest`]).
    pub joining_code: Option<Vec<u8>>,
}

impl GroupInfoRequestTbs {
    fn encode_common(&self, w: &mut Writer) -> Result<(), WireError> {
        if self.joining_code.as_deref() == Some(&[]) {
            return Err(WireError::Invalid {
                field: "GroupInfoRequest.joiningCode",
                reason: "an empty joining code is written as absent",
            });
        }
        self.protocol.encode(w)?;
        self.cipher_suite.encode(w)?;
        self.requesting_signature_key.encode(w)?;
        self.requesting_credential.encode(w)?;
        self.group_info_public_key.encode(w)
    }

    /// Reads the fields shared by the request and the TBS; the joining code is left absent.
    fn decode_common(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GroupInfoRequestTbs {
            protocol: Protocol::decode(r)?,
            cipher_suite: CipherSuite::decode(r)?,
            requesting_signature_key: SignaturePublicKey::decode(r)?,
            requesting_credential: r.mls("GroupInfoRequest.requestingCredential")?,
            group_info_public_key: HpkePublicKey::decode(r)?,
            joining_code: None,
        })
    }
}

impl Encode for GroupInfoRequestTbs {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.encode_common(w)?;
        w.optional(self.joining_code.as_ref(), |w, code| {
            w.opaque("GroupInfoRequestTBS.joiningCode", code)
        })
    }
}

impl Decode for GroupInfoRequestTbs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut tbs = GroupInfoRequestTbs::decode_common(r)?;
        tbs.joining_code = r.optional("GroupInfoRequestTBS.joiningCode", |r| {
            r.opaque_vec("GroupInfoRequestTBS.joiningCode")
        })?;
        if tbs.joining_code.as_deref() == Some(&[]) {
            return Err(WireError::Invalid {
                field: "GroupInfoRequestTBS.joiningCode",
                reason: "a present joining code must not be empty",
            });
        }
        Ok(tbs)
    }
}

/// `GroupInfoRequest`.
///
/// [IMPL CHOICE] (MIMI.md §14 bug 5) the request carries `opaque joiningCode<V>` while the
/// TBS has `optional opaque joiningCode<V>`: an empty code in the request means "no code", and
/// the TBS then encodes the code as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRequest {
    pub tbs: GroupInfoRequestTbs,
    pub signature: Vec<u8>,
}

impl Encode for GroupInfoRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.tbs.encode_common(w)?;
        w.opaque(
            "GroupInfoRequest.joiningCode",
            self.tbs.joining_code.as_deref().unwrap_or_default(),
        )?;
        w.opaque("GroupInfoRequest.signature", &self.signature)
    }
}

impl Decode for GroupInfoRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut tbs = GroupInfoRequestTbs::decode_common(r)?;
        let code = r.opaque_vec("GroupInfoRequest.joiningCode")?;
        tbs.joining_code = (!code.is_empty()).then_some(code);
        Ok(GroupInfoRequest {
            tbs,
            signature: r.opaque_vec("GroupInfoRequest.signature")?,
        })
    }
}

wire_enum! {
    /// `enum { reserved(0), success(1), notAuthorized(2), noSuchRoom(3), (255) } GroupInfoCode;`
    GroupInfoCode, "GroupInfoResponse.status" {
        Success = 1,
        NotAuthorized = 2,
        NoSuchRoom = 3,
    }
}

/// `struct { MLSMessage proposal; uint64 hub_accepted_time; } PendingProposal;`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingProposal {
    pub proposal: MlsMessage,
    pub hub_accepted_time: u64,
}

impl Encode for PendingProposal {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.proposal.encode(w)?;
        w.u64(self.hub_accepted_time);
        Ok(())
    }
}

impl Decode for PendingProposal {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(PendingProposal {
            proposal: r.mls_message("PendingProposal.proposal")?,
            hub_accepted_time: r.u64("PendingProposal.hub_accepted_time")?,
        })
    }
}

/// `GroupInfoRatchetTreeTBE`: the plaintext the hub encrypts to `groupInfoPublicKey` with
/// `EncryptWithLabel(.., "GroupInfo and ratchet_tree encryption", room_id, ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRatchetTreeTbe {
    /// Without embedded `ratchet_tree` (bare `GroupInfo`).
    pub group_info: Mls<VerifiableGroupInfo>,
    pub ratchet_tree_option: RatchetTreeOption,
    /// Accepted but uncommitted proposals of the current epoch.
    pub pending_proposals: Vec<PendingProposal>,
}

impl Encode for GroupInfoRatchetTreeTbe {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.group_info.encode(w)?;
        self.ratchet_tree_option.encode(w)?;
        w.vector_of(
            "GroupInfoRatchetTreeTBE.pending_proposals",
            &self.pending_proposals,
        )
    }
}

impl Decode for GroupInfoRatchetTreeTbe {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GroupInfoRatchetTreeTbe {
            group_info: r.mls("GroupInfoRatchetTreeTBE.groupInfo")?,
            ratchet_tree_option: RatchetTreeOption::decode(r)?,
            pending_proposals: r.vector_of("GroupInfoRatchetTreeTBE.pending_proposals")?,
        })
    }
}

/// The mls10 fields of a successful `GroupInfoResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoSuccess {
    pub cipher_suite: CipherSuite,
    pub hub_sender: Mls<ExternalSender>,
    pub encrypted_groupinfo_and_tree: Mls<HpkeCiphertext>,
    /// `SignWithLabel(hub_sender.signature_key, "GroupInfoResponseTBS", ..)`.
    pub signature: Vec<u8>,
}

/// The `select (status)` part of `GroupInfoResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupInfoResult {
    Success(GroupInfoSuccess),
    NotAuthorized,
    NoSuchRoom,
}

/// `GroupInfoResponse`. The draft names the first field `version` but selects on `protocol`
/// (MIMI.md §14 bug 5); it is the `Protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoResponse {
    pub version: Protocol,
    /// The room URI bytes, also the HPKE context.
    pub room_id: Vec<u8>,
    pub result: GroupInfoResult,
}

impl GroupInfoResponse {
    pub fn status(&self) -> GroupInfoCode {
        match self.result {
            GroupInfoResult::Success(_) => GroupInfoCode::Success,
            GroupInfoResult::NotAuthorized => GroupInfoCode::NotAuthorized,
            GroupInfoResult::NoSuchRoom => GroupInfoCode::NoSuchRoom,
        }
    }

    /// What the hub signs (only a success carries a signature).
    pub fn tbs(&self) -> Option<GroupInfoResponseTbs> {
        match &self.result {
            GroupInfoResult::Success(success) => Some(GroupInfoResponseTbs {
                version: self.version,
                room_id: self.room_id.clone(),
                status: GroupInfoCode::Success,
                cipher_suite: success.cipher_suite,
                hub_sender: success.hub_sender.clone(),
                encrypted_groupinfo_and_tree: success.encrypted_groupinfo_and_tree.clone(),
            }),
            _ => None,
        }
    }
}

impl Encode for GroupInfoResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.version.encode(w)?;
        w.opaque("GroupInfoResponse.room_id", &self.room_id)?;
        self.status().encode(w)?;
        if let GroupInfoResult::Success(success) = &self.result {
            success.cipher_suite.encode(w)?;
            success.hub_sender.encode(w)?;
            success.encrypted_groupinfo_and_tree.encode(w)?;
            w.opaque("GroupInfoResponse.signature", &success.signature)?;
        }
        Ok(())
    }
}

impl Decode for GroupInfoResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let version = Protocol::decode(r)?;
        let room_id = r.opaque_vec("GroupInfoResponse.room_id")?;
        let result = match GroupInfoCode::decode(r)? {
            GroupInfoCode::Success => GroupInfoResult::Success(GroupInfoSuccess {
                cipher_suite: CipherSuite::decode(r)?,
                hub_sender: r.mls("GroupInfoResponse.hub_sender")?,
                encrypted_groupinfo_and_tree: r
                    .mls("GroupInfoResponse.encrypted_groupinfo_and_tree")?,
                signature: r.opaque_vec("GroupInfoResponse.signature")?,
            }),
            GroupInfoCode::NotAuthorized => GroupInfoResult::NotAuthorized,
            GroupInfoCode::NoSuchRoom => GroupInfoResult::NoSuchRoom,
        };
        Ok(GroupInfoResponse {
            version,
            room_id,
            result,
        })
    }
}

/// `GroupInfoResponseTBS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoResponseTbs {
    pub version: Protocol,
    pub room_id: Vec<u8>,
    pub status: GroupInfoCode,
    pub cipher_suite: CipherSuite,
    pub hub_sender: Mls<ExternalSender>,
    pub encrypted_groupinfo_and_tree: Mls<HpkeCiphertext>,
}

impl Encode for GroupInfoResponseTbs {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.version.encode(w)?;
        w.opaque("GroupInfoResponseTBS.room_id", &self.room_id)?;
        self.status.encode(w)?;
        self.cipher_suite.encode(w)?;
        self.hub_sender.encode(w)?;
        self.encrypted_groupinfo_and_tree.encode(w)
    }
}

impl Decode for GroupInfoResponseTbs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(GroupInfoResponseTbs {
            version: Protocol::decode(r)?,
            room_id: r.opaque_vec("GroupInfoResponseTBS.room_id")?,
            status: GroupInfoCode::decode(r)?,
            cipher_suite: CipherSuite::decode(r)?,
            hub_sender: r.mls("GroupInfoResponseTBS.hub_sender")?,
            encrypted_groupinfo_and_tree: r
                .mls("GroupInfoResponseTBS.encrypted_groupinfo_and_tree")?,
        })
    }
}

/// Why a `GroupInfoRequest` does not authenticate its requester. [`is_forgery`] tells a
/// well-formed request whose signature does not verify from malformed or unsupported input.
///
/// [`is_forgery`]: GroupInfoAuthError::is_forgery
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupInfoAuthError {
    #[error(
        "GroupInfoRequest.cipher_suite 0x{:04x} is not supported (rooms here use 0x{:04x})",
        .0.0,
        u16::from(ROOM_CIPHERSUITE)
    )]
    UnsupportedCiphersuite(CipherSuite),
    #[error("GroupInfoRequest.requestingCredential: {0}")]
    Credential(IdentityError),
    #[error("GroupInfoRequest.signature: {0}")]
    Signature(SignatureError),
}

impl GroupInfoAuthError {
    /// A stable, machine-readable code, like [`WireError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            GroupInfoAuthError::UnsupportedCiphersuite(_) => "unsupported_ciphersuite",
            GroupInfoAuthError::Credential(_) => "bad_credential",
            GroupInfoAuthError::Signature(e) => e.code(),
        }
    }

    /// A well-formed request whose signature does not verify under `requestingSignatureKey`.
    pub fn is_forgery(&self) -> bool {
        matches!(self, GroupInfoAuthError::Signature(SignatureError::Invalid))
    }
}

impl GroupInfoRequest {
    /// Signs `tbs` as the requester: `SignWithLabel(signer, "GroupInfoRequestTBS", tbs)`.
    pub fn sign(tbs: GroupInfoRequestTbs, signer: &impl Signer) -> Result<Self, SignatureError> {
        let content = tbs.to_bytes()?;
        let signature = sign_with_label(signer, GROUP_INFO_REQUEST_LABEL, &content)?;
        Ok(GroupInfoRequest { tbs, signature })
    }

    /// Checks what a hub can check of the request on its own: the cipher suite is the one
    /// rooms here use, `requestingCredential` is a basic credential naming a client, and the
    /// signature over the TBS verifies under `requestingSignatureKey`. Returns the client.
    /// Whether that client may have the GroupInfo is the room's policy (MIMI.md §6.6 step 2).
    pub fn verify(&self) -> Result<ClientId, GroupInfoAuthError> {
        if self.tbs.cipher_suite.to_openmls().ok() != Some(ROOM_CIPHERSUITE) {
            return Err(GroupInfoAuthError::UnsupportedCiphersuite(
                self.tbs.cipher_suite,
            ));
        }
        let client = client_of_credential(self.tbs.requesting_credential.value())
            .map_err(GroupInfoAuthError::Credential)?;
        let content = self
            .tbs
            .to_bytes()
            .map_err(|e| GroupInfoAuthError::Signature(e.into()))?;
        verify_with_label(
            ROOM_CIPHERSUITE.signature_algorithm(),
            self.tbs.requesting_signature_key.as_bytes(),
            GROUP_INFO_REQUEST_LABEL,
            &content,
            &self.signature,
        )
        .map_err(GroupInfoAuthError::Signature)?;
        Ok(client)
    }
}

/// Why `EncryptWithLabel` or `DecryptWithLabel` failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncryptionError {
    /// `EncryptContext` cannot be encoded (a label or context over 2^30-1 bytes).
    #[error("EncryptContext: {0}")]
    Encode(#[from] WireError),
    /// The recipient's public key is not a key of the suite's KEM.
    #[error("the HPKE public key ({0} bytes) is not usable with the cipher suite's KEM")]
    BadPublicKey(usize),
    /// The ciphertext does not open with this key, label and context.
    #[error("the HPKE ciphertext does not decrypt")]
    Decrypt,
}

/// RFC 9420 §5.1.3 `EncryptWithLabel(PublicKey, Label, Context, Plaintext)` =
/// `SealBase(PublicKey, EncryptContext, "", Plaintext)` with `EncryptContext { opaque
/// label<V> = "MLS 1.0 " + Label; opaque context<V> = Context; }` (the same encoding as
/// `SignContent`), in HPKE base mode with `suite`'s KEM, KDF and AEAD.
pub fn encrypt_with_label(
    suite: Ciphersuite,
    public_key: &[u8],
    label: &str,
    context: &[u8],
    plaintext: &[u8],
) -> Result<HpkeCiphertext, EncryptionError> {
    let info = sign_content(label, context)?;
    crypto()
        .hpke_seal(suite.hpke_config(), public_key, &info, &[], plaintext)
        .map_err(|_| EncryptionError::BadPublicKey(public_key.len()))
}

/// RFC 9420 §5.1.3 `DecryptWithLabel`: the inverse of [`encrypt_with_label`].
pub fn decrypt_with_label(
    suite: Ciphersuite,
    private_key: &[u8],
    label: &str,
    context: &[u8],
    ciphertext: &HpkeCiphertext,
) -> Result<Vec<u8>, EncryptionError> {
    let info = sign_content(label, context)?;
    crypto()
        .hpke_open(suite.hpke_config(), ciphertext, private_key, &info, &[])
        .map_err(|_| EncryptionError::Decrypt)
}

/// Why a `GroupInfoResponse` cannot be relied on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupInfoResponseError {
    #[error("the hub answered {0:?}")]
    Refused(GroupInfoCode),
    #[error("the response is for room {found:?}, not {expected:?}")]
    OtherRoom { expected: String, found: String },
    #[error("GroupInfoResponse.cipher_suite 0x{:04x} is not the room's", .0.0)]
    UnsupportedCiphersuite(CipherSuite),
    #[error("GroupInfoResponse.hub_sender: {0}")]
    HubSender(WireError),
    #[error("GroupInfoResponse.hub_sender names {found:?}, not the room's hub {expected}")]
    OtherHub { expected: String, found: String },
    #[error("GroupInfoResponse.signature: {0}")]
    Signature(SignatureError),
}

impl GroupInfoResponse {
    /// The hub's refusal (protocol-06 §5.5 `notAuthorized`; MIMI.md §5.5 allows it in place of
    /// `noSuchRoom`, so that a room's existence is not revealed).
    pub fn not_authorized(room_id: Vec<u8>) -> Self {
        GroupInfoResponse {
            version: Protocol::Mls10,
            room_id,
            result: GroupInfoResult::NotAuthorized,
        }
    }

    /// A success, signed by the hub: `SignWithLabel(hub_sender.signature_key,
    /// "GroupInfoResponseTBS", GroupInfoResponseTBS)`. `signer` must hold the key `hub_sender`
    /// names.
    pub fn signed_success(
        room_id: Vec<u8>,
        cipher_suite: CipherSuite,
        hub_sender: Mls<ExternalSender>,
        encrypted_groupinfo_and_tree: Mls<HpkeCiphertext>,
        signer: &impl Signer,
    ) -> Result<Self, SignatureError> {
        let mut response = GroupInfoResponse {
            version: Protocol::Mls10,
            room_id,
            result: GroupInfoResult::Success(GroupInfoSuccess {
                cipher_suite,
                hub_sender,
                encrypted_groupinfo_and_tree,
                signature: Vec::new(),
            }),
        };
        let content = response.tbs().expect("a success has a TBS").to_bytes()?;
        let signature = sign_with_label(signer, GROUP_INFO_RESPONSE_LABEL, &content)?;
        if let GroupInfoResult::Success(success) = &mut response.result {
            success.signature = signature;
        }
        Ok(response)
    }

    /// What a joiner checks before decrypting (MIMI.md §6.6): a success for `room_id`, in the
    /// room cipher suite, whose `hub_sender` is a basic credential naming `hub_domain` and whose
    /// signature verifies under `hub_sender`'s key.
    ///
    /// [IMPL CHOICE] Rooms do not list the hub in `external_senders` yet, so the key is taken
    /// from the response itself: the joiner relies on its own provider (reached over TLS) for
    /// having talked to the hub, and on the GroupInfo's own signature, which the joiner's MLS
    /// library verifies against the ratchet tree.
    pub fn verify_success(
        &self,
        room_id: &[u8],
        hub_domain: &str,
    ) -> Result<&GroupInfoSuccess, GroupInfoResponseError> {
        let GroupInfoResult::Success(success) = &self.result else {
            return Err(GroupInfoResponseError::Refused(self.status()));
        };
        if self.room_id != room_id {
            return Err(GroupInfoResponseError::OtherRoom {
                expected: String::from_utf8_lossy(room_id).into_owned(),
                found: String::from_utf8_lossy(&self.room_id).into_owned(),
            });
        }
        if success.cipher_suite.to_openmls().ok() != Some(ROOM_CIPHERSUITE) {
            return Err(GroupInfoResponseError::UnsupportedCiphersuite(
                success.cipher_suite,
            ));
        }
        let (key, credential) =
            hub_sender_parts(&success.hub_sender).map_err(GroupInfoResponseError::HubSender)?;
        let named = BasicCredential::try_from(credential)
            .map(|basic| basic.identity().to_vec())
            .unwrap_or_default();
        if named != hub_domain.as_bytes() {
            return Err(GroupInfoResponseError::OtherHub {
                expected: hub_domain.to_owned(),
                found: String::from_utf8_lossy(&named).into_owned(),
            });
        }
        let content = self
            .tbs()
            .expect("a success has a TBS")
            .to_bytes()
            .map_err(|e| GroupInfoResponseError::Signature(e.into()))?;
        verify_with_label(
            ROOM_CIPHERSUITE.signature_algorithm(),
            key.as_bytes(),
            GROUP_INFO_RESPONSE_LABEL,
            &content,
            &success.signature,
        )
        .map_err(GroupInfoResponseError::Signature)?;
        Ok(success)
    }
}

/// The parts of an `ExternalSender { SignaturePublicKey signature_key; Credential credential; }`
/// (openmls keeps its accessors crate-private).
pub fn hub_sender_parts(
    hub_sender: &Mls<ExternalSender>,
) -> Result<(SignaturePublicKey, Credential), WireError> {
    let limits = Limits {
        max_body_len: hub_sender.bytes().len(),
    };
    let mut r = Reader::new(hub_sender.bytes(), &limits)?;
    let key = SignaturePublicKey::decode(&mut r)?;
    let credential: Mls<Credential> = r.mls("ExternalSender.credential")?;
    r.finish()?;
    Ok((key, credential.into_value()))
}

/// The client an external commit joins: for an `MLSMessage` carrying a PublicMessage commit
/// whose sender is `new_member_commit` (RFC 9420 §12.4.3.2), the client named by the basic
/// credential of the path's leaf node; `None` for any other message. openmls does not expose
/// a commit's path outside a group, so the fields before it are read here (RFC 9420 §6
/// `FramedContent`, §12.4 `Commit`, §7.6 `UpdatePath`, §7.2 `LeafNode`).
///
/// The credential is not verified here: the commit's signature, which covers it, is checked
/// by the hub. Whoever acts on the result must do so only once the hub has accepted the
/// commit.
pub fn external_commit_joiner(commit: &MlsMessage) -> Result<Option<ClientId>, WireError> {
    const FIELD: &str = "external commit";
    const PUBLIC_MESSAGE: u16 = 1;
    const NEW_MEMBER_COMMIT: u8 = 4;
    const COMMIT: u8 = 3;
    let bytes = commit.bytes();
    let limits = Limits {
        max_body_len: bytes.len(),
    };
    let mut r = Reader::new(bytes, &limits)?;
    let _version = r.u16("MLSMessage.version")?;
    if r.u16("MLSMessage.wire_format")? != PUBLIC_MESSAGE {
        return Ok(None);
    }
    r.opaque("FramedContent.group_id")?;
    r.u64("FramedContent.epoch")?;
    if r.u8("FramedContent.sender")? != NEW_MEMBER_COMMIT {
        return Ok(None);
    }
    r.opaque("FramedContent.authenticated_data")?;
    if r.u8("FramedContent.content_type")? != COMMIT {
        return Ok(None);
    }
    r.opaque("Commit.proposals")?;
    if !r.bool("Commit.path")? {
        return Err(WireError::Invalid {
            field: FIELD,
            reason: "an external commit must carry a path",
        });
    }
    r.opaque("LeafNode.encryption_key")?;
    r.opaque("LeafNode.signature_key")?;
    let credential: Mls<Credential> = r.mls("LeafNode.credential")?;
    client_of_credential(credential.value())
        .map(Some)
        .map_err(|_| WireError::Invalid {
            field: "LeafNode.credential",
            reason: "the joiner's credential does not name a client",
        })
}

/// The crypto provider for HPKE. `RustCrypto` seeds an RNG at construction; HPKE sealing draws
/// its ephemeral key from it.
fn crypto() -> &'static RustCrypto {
    static CRYPTO: std::sync::OnceLock<RustCrypto> = std::sync::OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

#[cfg(test)]
mod tests {
    use mimid_actors::policy::{
        default_room_policy, room_group_context_extensions, room_leaf_capabilities,
    };
    use mimid_actors::room::identity::credential_of_client;
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::{
        CredentialWithKey, LeafNodeParameters, MlsGroup, MlsGroupJoinConfig, OpenMlsProvider,
        PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    use super::*;

    const ROOM: &[u8] = b"mimi://a.example/r/clubhouse";

    fn key_pair() -> SignatureKeyPair {
        SignatureKeyPair::new(ROOM_CIPHERSUITE.signature_algorithm()).unwrap()
    }

    fn hpke_keys() -> openmls_traits::types::HpkeKeyPair {
        crypto()
            .derive_hpke_keypair(ROOM_CIPHERSUITE.hpke_config(), &[7; 32])
            .unwrap()
    }

    fn request(signer: &SignatureKeyPair, client: &str) -> GroupInfoRequest {
        let tbs = GroupInfoRequestTbs {
            protocol: Protocol::Mls10,
            cipher_suite: ROOM_CIPHERSUITE.into(),
            requesting_signature_key: SignaturePublicKey(signer.public().to_vec()),
            requesting_credential: Mls::from_value(
                BasicCredential::new(client.as_bytes().to_vec()).into(),
            )
            .unwrap(),
            group_info_public_key: HpkePublicKey(hpke_keys().public),
            joining_code: None,
        };
        GroupInfoRequest::sign(tbs, signer).unwrap()
    }

    fn hub_sender(signer: &SignatureKeyPair, domain: &str) -> Mls<ExternalSender> {
        Mls::from_value(ExternalSender::new(
            signer.public().to_vec().into(),
            BasicCredential::new(domain.as_bytes().to_vec()).into(),
        ))
        .unwrap()
    }

    /// protocol-06 §5.5: the request is signed over its TBS with `requestingSignatureKey`; a
    /// request whose key is not the signer's is a forgery; a credential that names no client
    /// and a foreign cipher suite are malformed.
    #[test]
    fn protocol06_5_5_request_signature_and_credential_are_checked() {
        let signer = key_pair();
        let signed = request(&signer, "mimi://c.example/d/cathy/phone");
        let limits = Limits::default();
        let decoded = GroupInfoRequest::from_bytes(&signed.to_bytes().unwrap(), &limits).unwrap();
        assert_eq!(
            decoded.verify().unwrap().as_str(),
            "mimi://c.example/d/cathy/phone"
        );

        let mut other_key = decoded.clone();
        other_key.tbs.requesting_signature_key = SignaturePublicKey(key_pair().public().to_vec());
        let err = other_key.verify().unwrap_err();
        assert!(err.is_forgery(), "{err}");
        assert_eq!(err.code(), "bad_signature");

        let not_a_client = request(&signer, "mimi://c.example/u/cathy");
        let err = not_a_client.verify().unwrap_err();
        assert!(!err.is_forgery());
        assert_eq!(err.code(), "bad_credential");

        let mut other_suite = decoded;
        other_suite.tbs.cipher_suite = CipherSuite(0x0003);
        assert_eq!(
            other_suite.verify().unwrap_err().code(),
            "unsupported_ciphersuite"
        );
    }

    /// RFC 9420 §5.1.3: what is sealed to a key opens with its private key under the same label
    /// and context only.
    #[test]
    fn rfc9420_5_1_3_encrypt_with_label_round_trips_only_with_label_and_context() {
        let keys = hpke_keys();
        let sealed = encrypt_with_label(
            ROOM_CIPHERSUITE,
            &keys.public,
            GROUP_INFO_ENCRYPTION_LABEL,
            ROOM,
            b"tbe",
        )
        .unwrap();
        let open = |label: &str, context: &[u8]| {
            decrypt_with_label(ROOM_CIPHERSUITE, &keys.private, label, context, &sealed)
        };
        assert_eq!(
            open(GROUP_INFO_ENCRYPTION_LABEL, ROOM).unwrap(),
            b"tbe".to_vec()
        );
        assert_eq!(
            open(GROUP_INFO_ENCRYPTION_LABEL, b"mimi://a.example/r/other"),
            Err(EncryptionError::Decrypt)
        );
        assert_eq!(open("Welcome", ROOM), Err(EncryptionError::Decrypt));
        assert_eq!(
            encrypt_with_label(ROOM_CIPHERSUITE, &[1, 2, 3], "L", ROOM, b"x"),
            Err(EncryptionError::BadPublicKey(3))
        );
    }

    /// protocol-06 §5.5: the joiner accepts a success only for its room, from the room's hub,
    /// signed with `hub_sender`'s key over `GroupInfoResponseTBS`.
    #[test]
    fn protocol06_5_5_response_signature_binds_room_hub_and_ciphertext() {
        let hub = key_pair();
        let keys = hpke_keys();
        let sealed = encrypt_with_label(ROOM_CIPHERSUITE, &keys.public, "L", ROOM, b"x").unwrap();
        let response = GroupInfoResponse::signed_success(
            ROOM.to_vec(),
            ROOM_CIPHERSUITE.into(),
            hub_sender(&hub, "a.example"),
            Mls::from_value(sealed.clone()).unwrap(),
            &hub,
        )
        .unwrap();
        let decoded =
            GroupInfoResponse::from_bytes(&response.to_bytes().unwrap(), &Limits::default())
                .unwrap();
        assert!(decoded.verify_success(ROOM, "a.example").is_ok());
        assert!(matches!(
            decoded.verify_success(b"mimi://a.example/r/other", "a.example"),
            Err(GroupInfoResponseError::OtherRoom { .. })
        ));
        assert!(matches!(
            decoded.verify_success(ROOM, "b.example"),
            Err(GroupInfoResponseError::OtherHub { .. })
        ));
        // Signed by another key than the one hub_sender names.
        let forged = GroupInfoResponse::signed_success(
            ROOM.to_vec(),
            ROOM_CIPHERSUITE.into(),
            hub_sender(&hub, "a.example"),
            Mls::from_value(sealed).unwrap(),
            &key_pair(),
        )
        .unwrap();
        assert_eq!(
            forged.verify_success(ROOM, "a.example").unwrap_err(),
            GroupInfoResponseError::Signature(SignatureError::Invalid)
        );
        assert_eq!(
            GroupInfoResponse::not_authorized(ROOM.to_vec())
                .verify_success(ROOM, "a.example")
                .unwrap_err(),
            GroupInfoResponseError::Refused(GroupInfoCode::NotAuthorized)
        );
    }

    /// RFC 9420 §12.4.3.2: the joiner of an external commit is read from its path's leaf; other
    /// messages join no one.
    #[test]
    fn rfc9420_12_4_3_2_external_commit_joiner_is_read_from_the_path() {
        let alice_id = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        let cathy_id = ClientId::parse("mimi://c.example/d/cathy/phone").unwrap();
        let member = |id: &ClientId| {
            let provider = OpenMlsRustCrypto::default();
            let signer = key_pair();
            signer.store(provider.storage()).unwrap();
            let credential = CredentialWithKey {
                credential: credential_of_client(id),
                signature_key: signer.public().to_vec().into(),
            };
            (provider, signer, credential)
        };
        let (alice_provider, alice_signer, alice_credential) = member(&alice_id);
        let mut alice = MlsGroup::builder()
            .ciphersuite(ROOM_CIPHERSUITE)
            .with_capabilities(room_leaf_capabilities())
            .with_group_context_extensions(room_group_context_extensions(&default_room_policy(
                &alice_id.user(),
            )))
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build(&alice_provider, &alice_signer, alice_credential)
            .unwrap();
        let group_info = MlsMessage::from_bytes(
            &alice
                .export_group_info(alice_provider.crypto(), &alice_signer, false)
                .unwrap()
                .tls_serialize_detached()
                .unwrap(),
        )
        .unwrap()
        .unwrap_body::<VerifiableGroupInfo>("GroupInfo")
        .unwrap()
        .into_value();
        let (cathy_provider, cathy_signer, cathy_credential) = member(&cathy_id);
        let (_, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(alice.export_ratchet_tree().into())
            .with_config(MlsGroupJoinConfig::default())
            .build_group(&cathy_provider, group_info, cathy_credential)
            .unwrap()
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(room_leaf_capabilities())
                    .build(),
            )
            .load_psks(cathy_provider.storage())
            .unwrap()
            .build(
                cathy_provider.rand(),
                cathy_provider.crypto(),
                &cathy_signer,
                |_| true,
            )
            .unwrap()
            .finalize(&cathy_provider)
            .unwrap();
        let commit =
            MlsMessage::from_bytes(&bundle.into_messages().0.tls_serialize_detached().unwrap())
                .unwrap();
        assert_eq!(external_commit_joiner(&commit).unwrap(), Some(cathy_id));

        let (own_commit, _, _) = alice
            .self_update(
                &alice_provider,
                &alice_signer,
                LeafNodeParameters::default(),
            )
            .unwrap()
            .into_messages();
        let own_commit =
            MlsMessage::from_bytes(&own_commit.tls_serialize_detached().unwrap()).unwrap();
        assert_eq!(external_commit_joiner(&own_commit).unwrap(), None);
        alice.merge_pending_commit(&alice_provider).unwrap();
        let message = alice
            .create_message(&alice_provider, &alice_signer, b"hi")
            .unwrap();
        let message = MlsMessage::from_bytes(&message.tls_serialize_detached().unwrap()).unwrap();
        assert_eq!(external_commit_joiner(&message).unwrap(), None);
    }
}
