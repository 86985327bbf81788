//! protocol-06 §5.1 (MIMI.md §5.1): `POST /keyMaterial/{targetUser}` bodies.

use mimid_actors::ids::{RoomId, UserId};
use openmls::prelude::{Capabilities, Credential, KeyPackageIn, RequiredCapabilitiesExtension};

use super::codec::{wire_enum, Decode, Encode, Mls, Reader, WireError, Writer};
use super::types::{CipherSuite, IdentifierUri, Protocol, SignaturePublicKey};

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

/// `KeyMaterialRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialRequest {
    pub tbs: KeyMaterialRequestTbs,
    pub key_material_request_signature: Vec<u8>,
}

impl KeyMaterialRequest {
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
