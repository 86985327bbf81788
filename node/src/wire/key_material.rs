//! protocol-06 §5.1 (MIMI.md §5.1): `POST /keyMaterial/{targetUser}` bodies, and the
//! requester's signature over `KeyMaterialRequestTBS` (MIMI.md §3.3 `SignWithLabel`).
//!
//! A `KeyMaterialRequest` is signed by the requesting *client*, so the same bytes can travel
//! from the client to its provider and on, unchanged, to the hub and the target provider
//! (protocol-06 §5.1). [`KeyMaterialRequest::verify`] checks what the bytes alone can prove:
//! the signature under `requesterSignatureKey`, and that `requesterCredential` names a client of
//! `requestingUser`. It cannot check that the signature key belongs to that credential: outside
//! a group there is no leaf binding the two (RFC 9420 §5.3). Whoever relies on the request
//! therefore relies on the requesting provider having authenticated its client (our client API
//! does, with the bearer token; MIMI.md §5.1 "`requestingUser` domain is plausible for the
//! calling chain").

use mimid_actors::ids::{ClientId, RoomId, UserId};
use mimid_actors::room::identity::{client_of_credential, IdentityError};
use mimid_actors::room::state::ROOM_CIPHERSUITE;
use openmls::prelude::{
    Capabilities, Ciphersuite, Credential, KeyPackageIn, RequiredCapabilitiesExtension,
};
use openmls_traits::signatures::Signer;
use thiserror::Error;

use super::codec::{wire_enum, Decode, Encode, Mls, Reader, WireError, Writer};
use super::sign::{sign_with_label, verify_with_label, SignatureError};
use super::types::{CipherSuite, IdentifierUri, Protocol, SignaturePublicKey};

/// The `SignWithLabel` label of the requester's signature (protocol-06 §5.1).
pub const KEY_MATERIAL_REQUEST_LABEL: &str = "KeyMaterialRequestTBS";

/// The cipher suites whose signature scheme this provider verifies requester signatures with:
/// the one suite its rooms use (MIMI.md §11 MTI suite 0x0001, Ed25519).
pub const SUPPORTED_CIPHERSUITES: [Ciphersuite; 1] = [ROOM_CIPHERSUITE];

/// `KeyMaterialRequestTBS`: every field of the request except the signature; the requester
/// signs its TLS encoding with `SignWithLabel(.., "KeyMaterialRequestTBS", ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialRequestTbs {
    pub protocol: Protocol,
    pub requesting_user: IdentifierUri,
    pub target_user: IdentifierUri,
    pub room_id: IdentifierUri,
    /// Non-empty (MIMI.md §5.1).
    pub acceptable_ciphersuites: Vec<CipherSuite>,
    pub required_capabilities: Mls<RequiredCapabilitiesExtension>,
    pub requester_signature_key: SignaturePublicKey,
    pub requester_credential: Mls<Credential>,
}

impl KeyMaterialRequestTbs {
    /// The cipher suite whose signature scheme `requesterSignatureKey` is read with: the first
    /// acceptable suite this provider supports.
    ///
    /// [IMPL CHOICE] protocol-06 §5.1 does not say which scheme the requester's key uses. The
    /// key is the requester's leaf key in the room the material is fetched for, so its scheme
    /// is the room's cipher suite's, and a requester that can use the material accepts that
    /// suite. Unknown and GREASE suites (RFC 9420 §13.5) are skipped.
    pub fn signature_ciphersuite(&self) -> Result<Ciphersuite, KeyMaterialAuthError> {
        self.acceptable_ciphersuites
            .iter()
            .filter_map(|suite| suite.to_openmls().ok())
            .find(|suite| SUPPORTED_CIPHERSUITES.contains(suite))
            .ok_or_else(|| KeyMaterialAuthError::NoSupportedCiphersuite {
                offered: self.acceptable_ciphersuites.clone(),
            })
    }
}

/// `KeyMaterialRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialRequest {
    pub tbs: KeyMaterialRequestTbs,
    pub key_material_request_signature: Vec<u8>,
}

/// Why a `KeyMaterialRequest` does not authenticate its requester. Each kind has a stable
/// [`code`](KeyMaterialAuthError::code); [`is_forgery`](KeyMaterialAuthError::is_forgery) tells a
/// well-formed request that claims what it may not from one that is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyMaterialAuthError {
    #[error(
        "KeyMaterialRequest.acceptableCiphersuites: none of {} is supported (this provider \
         verifies requester signatures for {})",
        suite_list(offered),
        suite_list(&SUPPORTED_CIPHERSUITES.map(CipherSuite::from))
    )]
    NoSupportedCiphersuite { offered: Vec<CipherSuite> },
    /// `requestingUser` is not a user URI, or the TBS cannot be encoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("KeyMaterialRequest.requesterCredential: {0}")]
    Credential(IdentityError),
    #[error(
        "KeyMaterialRequest.requesterCredential names {client}, which is not a client of \
         requestingUser {requesting_user}"
    )]
    CredentialOfAnotherUser {
        client: ClientId,
        requesting_user: UserId,
    },
    #[error("KeyMaterialRequest.key_material_request_signature: {0}")]
    Signature(SignatureError),
}

impl KeyMaterialAuthError {
    /// A stable, machine-readable code, like [`WireError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            KeyMaterialAuthError::NoSupportedCiphersuite { .. } => "unsupported_ciphersuite",
            KeyMaterialAuthError::Wire(e) => e.code(),
            KeyMaterialAuthError::Credential(_) => "bad_credential",
            KeyMaterialAuthError::CredentialOfAnotherUser { .. } => "credential_user_mismatch",
            KeyMaterialAuthError::Signature(e) => e.code(),
        }
    }

    /// A well-formed request that does not prove what it claims: a signature that does not
    /// verify, or a credential of another user than `requestingUser`. Everything else is
    /// malformed or unsupported input.
    pub fn is_forgery(&self) -> bool {
        matches!(
            self,
            KeyMaterialAuthError::CredentialOfAnotherUser { .. }
                | KeyMaterialAuthError::Signature(SignatureError::Invalid)
        )
    }
}

fn suite_list(suites: &[CipherSuite]) -> String {
    let names: Vec<String> = suites.iter().map(|s| format!("0x{:04x}", s.0)).collect();
    format!("[{}]", names.join(", "))
}

impl KeyMaterialRequest {
    /// Signs `tbs` as the requester: `SignWithLabel(signer, "KeyMaterialRequestTBS", tbs)`
    /// (protocol-06 §5.1, RFC 9420 §5.1.2). `signer` must hold the private half of
    /// `tbs.requester_signature_key`.
    pub fn sign(
        tbs: KeyMaterialRequestTbs,
        signer: &impl Signer,
    ) -> Result<KeyMaterialRequest, SignatureError> {
        let content = tbs.to_bytes()?;
        let key_material_request_signature =
            sign_with_label(signer, KEY_MATERIAL_REQUEST_LABEL, &content)?;
        Ok(KeyMaterialRequest {
            tbs,
            key_material_request_signature,
        })
    }

    /// Authenticates the requester as far as the request itself can (see the module docs):
    /// a supported cipher suite among `acceptableCiphersuites`, `requesterCredential` a basic
    /// credential naming a client of `requestingUser`, and the signature over the TBS verifying
    /// under `requesterSignatureKey`. Returns the requesting client.
    ///
    /// The checks run cheapest first; the signature is verified last, over the re-encoded TBS
    /// (decoding is strict and `Mls<T>` keeps bytes, so that is the received encoding).
    pub fn verify(&self) -> Result<ClientId, KeyMaterialAuthError> {
        let suite = self.tbs.signature_ciphersuite()?;
        let requesting_user = self.requesting_user()?;
        let client = client_of_credential(self.tbs.requester_credential.value())
            .map_err(KeyMaterialAuthError::Credential)?;
        if client.user() != requesting_user {
            return Err(KeyMaterialAuthError::CredentialOfAnotherUser {
                client,
                requesting_user,
            });
        }
        let content = self.tbs.to_bytes()?;
        verify_with_label(
            suite.signature_algorithm(),
            self.tbs.requester_signature_key.as_bytes(),
            KEY_MATERIAL_REQUEST_LABEL,
            &content,
            &self.key_material_request_signature,
        )
        .map_err(KeyMaterialAuthError::Signature)?;
        Ok(client)
    }

    pub fn requesting_user(&self) -> Result<UserId, WireError> {
        self.tbs
            .requesting_user
            .user("KeyMaterialRequest.requestingUser")
    }

    pub fn target_user(&self) -> Result<UserId, WireError> {
        self.tbs.target_user.user("KeyMaterialRequest.targetUser")
    }

    pub fn room(&self) -> Result<RoomId, WireError> {
        self.tbs.room_id.room("KeyMaterialRequest.roomId")
    }
}

impl Encode for KeyMaterialRequestTbs {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        if self.acceptable_ciphersuites.is_empty() {
            return Err(empty_suites());
        }
        self.protocol.encode(w)?;
        self.requesting_user.encode(w)?;
        self.target_user.encode(w)?;
        self.room_id.encode(w)?;
        w.vector_of(
            "KeyMaterialRequest.acceptableCiphersuites",
            &self.acceptable_ciphersuites,
        )?;
        self.required_capabilities.encode(w)?;
        self.requester_signature_key.encode(w)?;
        self.requester_credential.encode(w)
    }
}

impl Decode for KeyMaterialRequestTbs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let protocol = Protocol::decode(r)?;
        let requesting_user = IdentifierUri::decode(r)?;
        let target_user = IdentifierUri::decode(r)?;
        let room_id = IdentifierUri::decode(r)?;
        let acceptable_ciphersuites = r.vector_of("KeyMaterialRequest.acceptableCiphersuites")?;
        if acceptable_ciphersuites.is_empty() {
            return Err(empty_suites());
        }
        Ok(KeyMaterialRequestTbs {
            protocol,
            requesting_user,
            target_user,
            room_id,
            acceptable_ciphersuites,
            required_capabilities: r.mls("KeyMaterialRequest.requiredCapabilities")?,
            requester_signature_key: SignaturePublicKey::decode(r)?,
            requester_credential: r.mls("KeyMaterialRequest.requesterCredential")?,
        })
    }
}

fn empty_suites() -> WireError {
    WireError::Invalid {
        field: "KeyMaterialRequest.acceptableCiphersuites",
        reason: "must name at least one cipher suite",
    }
}

impl Encode for KeyMaterialRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.tbs.encode(w)?;
        w.opaque(
            "KeyMaterialRequest.key_material_request_signature",
            &self.key_material_request_signature,
        )
    }
}

impl Decode for KeyMaterialRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(KeyMaterialRequest {
            tbs: KeyMaterialRequestTbs::decode(r)?,
            key_material_request_signature: r
                .opaque_vec("KeyMaterialRequest.key_material_request_signature")?,
        })
    }
}

wire_enum! {
    /// `KeyMaterialUserCode` (the draft's `;` separators read as `,`, MIMI.md §14 bug 6).
    KeyMaterialUserCode, "KeyMaterialResponse.userStatus" {
        Success = 0,
        PartialSuccess = 1,
        IncompatibleProtocol = 2,
        NoCompatibleMaterial = 3,
        UserUnknown = 4,
        NoConsent = 5,
        NoConsentForThisRoom = 6,
        UserDeleted = 7,
    }
}

impl KeyMaterialUserCode {
    /// MIMI.md §5.1: for any other user code the clients list MUST be empty.
    pub fn allows_clients(self) -> bool {
        matches!(
            self,
            KeyMaterialUserCode::Success
                | KeyMaterialUserCode::PartialSuccess
                | KeyMaterialUserCode::NoCompatibleMaterial
        )
    }
}

wire_enum! {
    /// `KeyMaterialClientCode`.
    KeyMaterialClientCode, "ClientKeyMaterial.clientStatus" {
        Success = 0,
        KeyMaterialExhausted = 1,
        NothingCompatible = 2,
    }
}

/// The `select (clientStatus)` part of `ClientKeyMaterial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMaterial {
    Success {
        key_package: Mls<KeyPackageIn>,
    },
    KeyMaterialExhausted,
    /// The capabilities may be withheld for privacy.
    NothingCompatible {
        client_capabilities: Option<Mls<Capabilities>>,
    },
}

/// `ClientKeyMaterial` (inside a response whose protocol is mls10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeyMaterial {
    pub client_uri: IdentifierUri,
    pub material: ClientMaterial,
}

impl ClientKeyMaterial {
    pub fn client_status(&self) -> KeyMaterialClientCode {
        match self.material {
            ClientMaterial::Success { .. } => KeyMaterialClientCode::Success,
            ClientMaterial::KeyMaterialExhausted => KeyMaterialClientCode::KeyMaterialExhausted,
            ClientMaterial::NothingCompatible { .. } => KeyMaterialClientCode::NothingCompatible,
        }
    }
}

impl Encode for ClientKeyMaterial {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.client_status().encode(w)?;
        self.client_uri.encode(w)?;
        match &self.material {
            ClientMaterial::Success { key_package } => key_package.encode(w),
            ClientMaterial::KeyMaterialExhausted => Ok(()),
            ClientMaterial::NothingCompatible {
                client_capabilities,
            } => w.optional(client_capabilities.as_ref(), |w, c| c.encode(w)),
        }
    }
}

impl Decode for ClientKeyMaterial {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let status = KeyMaterialClientCode::decode(r)?;
        let client_uri = IdentifierUri::decode(r)?;
        let material = match status {
            KeyMaterialClientCode::Success => ClientMaterial::Success {
                key_package: r.mls("ClientKeyMaterial.keyPackage")?,
            },
            KeyMaterialClientCode::KeyMaterialExhausted => ClientMaterial::KeyMaterialExhausted,
            KeyMaterialClientCode::NothingCompatible => ClientMaterial::NothingCompatible {
                client_capabilities: r.optional("ClientKeyMaterial.clientCapabilities", |r| {
                    r.mls("ClientKeyMaterial.clientCapabilities")
                })?,
            },
        };
        Ok(ClientKeyMaterial {
            client_uri,
            material,
        })
    }
}

/// `KeyMaterialResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialResponse {
    pub protocol: Protocol,
    pub user_status: KeyMaterialUserCode,
    pub user_uri: IdentifierUri,
    pub clients: Vec<ClientKeyMaterial>,
}

fn clients_not_allowed() -> WireError {
    WireError::Invalid {
        field: "KeyMaterialResponse.clients",
        reason: "must be empty for this userStatus",
    }
}

impl Encode for KeyMaterialResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        if !self.user_status.allows_clients() && !self.clients.is_empty() {
            return Err(clients_not_allowed());
        }
        self.protocol.encode(w)?;
        self.user_status.encode(w)?;
        self.user_uri.encode(w)?;
        w.vector_of("KeyMaterialResponse.clients", &self.clients)
    }
}

impl Decode for KeyMaterialResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let response = KeyMaterialResponse {
            protocol: Protocol::decode(r)?,
            user_status: KeyMaterialUserCode::decode(r)?,
            user_uri: IdentifierUri::decode(r)?,
            clients: r.vector_of("KeyMaterialResponse.clients")?,
        };
        if !response.user_status.allows_clients() && !response.clients.is_empty() {
            return Err(clients_not_allowed());
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use openmls::prelude::{BasicCredential, CredentialType, ExtensionType, ProposalType};
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_traits::types::SignatureScheme;

    use super::*;
    use crate::wire::codec::Limits;

    fn key_pair() -> SignatureKeyPair {
        SignatureKeyPair::new(SignatureScheme::ED25519).expect("Ed25519 key pair")
    }

    fn basic(identity: &str) -> Mls<Credential> {
        Mls::from_value(BasicCredential::new(identity.as_bytes().to_vec()).into())
            .expect("a basic credential encodes")
    }

    /// What alice's phone sends to add bob to a room (MIMI.md §6.2).
    fn tbs(signer: &SignatureKeyPair) -> KeyMaterialRequestTbs {
        KeyMaterialRequestTbs {
            protocol: Protocol::Mls10,
            requesting_user: IdentifierUri::new("mimi://a.example/u/alice"),
            target_user: IdentifierUri::new("mimi://b.example/u/bob"),
            room_id: IdentifierUri::new("mimi://a.example/r/clubhouse"),
            acceptable_ciphersuites: vec![CipherSuite::from(ROOM_CIPHERSUITE)],
            required_capabilities: Mls::from_value(RequiredCapabilitiesExtension::new(
                &[ExtensionType::AppDataDictionary],
                &[ProposalType::AppDataUpdate],
                &[CredentialType::Basic],
            ))
            .expect("required capabilities encode"),
            requester_signature_key: SignaturePublicKey(signer.public().to_vec()),
            requester_credential: basic("mimi://a.example/d/alice/phone"),
        }
    }

    fn signed(tbs: KeyMaterialRequestTbs, signer: &SignatureKeyPair) -> KeyMaterialRequest {
        KeyMaterialRequest::sign(tbs, signer).expect("signing succeeds")
    }

    fn alice_phone() -> ClientId {
        ClientId::parse("mimi://a.example/d/alice/phone").unwrap()
    }

    #[test]
    fn protocol06_5_1_signed_request_verifies_after_a_round_trip() {
        let signer = key_pair();
        let request = signed(tbs(&signer), &signer);
        assert_eq!(request.key_material_request_signature.len(), 64);
        assert_eq!(request.verify(), Ok(alice_phone()));
        let bytes = request.to_bytes().unwrap();
        let decoded = KeyMaterialRequest::from_bytes(&bytes, &Limits::default()).unwrap();
        assert_eq!(decoded.verify(), Ok(alice_phone()));
    }

    /// The signature covers every TBS field: changing any one after signing breaks it.
    #[test]
    fn protocol06_5_1_signature_covers_every_tbs_field() {
        let signer = key_pair();
        let request = signed(tbs(&signer), &signer);
        type Edit = fn(&mut KeyMaterialRequestTbs);
        let edits: Vec<(&str, Edit)> = vec![
            ("targetUser", |t| {
                t.target_user = IdentifierUri::new("mimi://b.example/u/carol")
            }),
            ("roomId", |t| {
                t.room_id = IdentifierUri::new("mimi://a.example/r/elsewhere")
            }),
            ("acceptableCiphersuites", |t| {
                t.acceptable_ciphersuites.push(CipherSuite(0x0a0a))
            }),
            ("requiredCapabilities", |t| {
                t.required_capabilities =
                    Mls::from_value(RequiredCapabilitiesExtension::new(&[], &[], &[])).unwrap()
            }),
            ("requesterCredential", |t| {
                t.requester_credential = basic("mimi://a.example/d/alice/laptop")
            }),
        ];
        for (field, edit) in edits {
            let mut forged = request.clone();
            edit(&mut forged.tbs);
            let error = forged.verify().unwrap_err();
            assert_eq!(
                error,
                KeyMaterialAuthError::Signature(SignatureError::Invalid),
                "{field}"
            );
            assert!(error.is_forgery());
            assert_eq!(error.code(), "bad_signature");
        }
        // Signed by another key than the one the request names.
        let mallory = key_pair();
        let forged = signed(tbs(&signer), &mallory);
        assert_eq!(
            forged.verify(),
            Err(KeyMaterialAuthError::Signature(SignatureError::Invalid))
        );
    }

    #[test]
    fn protocol06_5_1_credential_must_name_a_client_of_the_requesting_user() {
        let signer = key_pair();
        let mut other_user = tbs(&signer);
        other_user.requester_credential = basic("mimi://a.example/d/bob/phone");
        let error = signed(other_user, &signer).verify().unwrap_err();
        assert_eq!(
            error,
            KeyMaterialAuthError::CredentialOfAnotherUser {
                client: ClientId::parse("mimi://a.example/d/bob/phone").unwrap(),
                requesting_user: UserId::parse("mimi://a.example/u/alice").unwrap(),
            }
        );
        assert!(error.is_forgery());
        assert_eq!(error.code(), "credential_user_mismatch");

        // A user of the same name at another provider is another user.
        let mut other_domain = tbs(&signer);
        other_domain.requester_credential = basic("mimi://b.example/d/alice/phone");
        assert_eq!(
            signed(other_domain, &signer).verify().unwrap_err().code(),
            "credential_user_mismatch"
        );

        let mut user_uri = tbs(&signer);
        user_uri.requester_credential = basic("mimi://a.example/u/alice");
        let error = signed(user_uri, &signer).verify().unwrap_err();
        assert!(
            matches!(
                error,
                KeyMaterialAuthError::Credential(IdentityError::NotAClientUri(_))
            ),
            "{error:?}"
        );
        assert!(!error.is_forgery());
        assert_eq!(error.code(), "bad_credential");

        let mut x509 = tbs(&signer);
        x509.requester_credential = Mls::from_value(Credential::new(
            CredentialType::X509,
            b"mimi://a.example/d/alice/phone".to_vec(),
        ))
        .unwrap();
        assert_eq!(
            signed(x509, &signer).verify(),
            Err(KeyMaterialAuthError::Credential(
                IdentityError::UnsupportedCredential(2)
            ))
        );

        let mut requesting_client = tbs(&signer);
        requesting_client.requesting_user = IdentifierUri::new("mimi://a.example/d/alice/phone");
        let error = signed(requesting_client, &signer).verify().unwrap_err();
        assert_eq!(error.code(), "bad_uri");
        assert!(
            error
                .to_string()
                .contains("KeyMaterialRequest.requestingUser"),
            "{error}"
        );
    }

    /// [IMPL CHOICE] the signature scheme is that of the first acceptable suite we support;
    /// unknown and GREASE suites are skipped, and a request naming none is refused.
    #[test]
    fn protocol06_5_1_signature_scheme_comes_from_an_acceptable_supported_suite() {
        let signer = key_pair();
        let mut grease_first = tbs(&signer);
        grease_first.acceptable_ciphersuites = vec![CipherSuite(0x0a0a), CipherSuite(1)];
        assert_eq!(signed(grease_first, &signer).verify(), Ok(alice_phone()));

        let mut unsupported = tbs(&signer);
        // 0x0002 (P-256) is a real suite openmls implements, but not one our rooms use.
        unsupported.acceptable_ciphersuites = vec![CipherSuite(2), CipherSuite(0x0a0a)];
        let error = signed(unsupported, &signer).verify().unwrap_err();
        assert_eq!(
            error,
            KeyMaterialAuthError::NoSupportedCiphersuite {
                offered: vec![CipherSuite(2), CipherSuite(0x0a0a)]
            }
        );
        assert_eq!(
            error.to_string(),
            "KeyMaterialRequest.acceptableCiphersuites: none of [0x0002, 0x0a0a] is supported \
             (this provider verifies requester signatures for [0x0001])"
        );
        assert!(!error.is_forgery());
    }

    #[test]
    fn protocol06_5_1_malformed_key_or_signature_is_not_a_forgery() {
        let signer = key_pair();
        let mut short_key = tbs(&signer);
        short_key.requester_signature_key = SignaturePublicKey(vec![7; 31]);
        let error = signed(short_key, &signer).verify().unwrap_err();
        assert_eq!(error.code(), "malformed_signature_key");
        assert!(!error.is_forgery());

        let mut request = signed(tbs(&signer), &signer);
        request.key_material_request_signature.pop();
        let error = request.verify().unwrap_err();
        assert_eq!(error.code(), "malformed_signature");
        assert!(!error.is_forgery());
    }
}
