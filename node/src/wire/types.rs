//! Types shared by many protocol-06 bodies (MIMI.md §3.3): `Protocol`, `IdentifierUri`, and
//! the RFC 9420 types that are plain byte strings or integers on the wire.
//!
//! `SignaturePublicKey`, `HPKEPublicKey` and `ProposalRef` are `opaque<V>` with no inner
//! structure to validate (RFC 9420 §5.1.1, §5.1.2, §5.2), and `CipherSuite` is a `uint16`
//! that must not fail to decode for values openmls does not know (GREASE, RFC 9420 §13.5), so
//! these are small newtypes here with conversions to the openmls types.

use std::fmt;

use mimid_actors::ids::{ClientId, MimiUri, RoomId, UriError, UserId};
use openmls::ciphersuite::hash_ref::ProposalRef as OpenMlsProposalRef;
use openmls::prelude::{
    Ciphersuite, HpkePublicKey as OpenMlsHpkePublicKey,
    SignaturePublicKey as OpenMlsSignaturePublicKey,
};
use openmls_traits::types::VerifiableCiphersuite;

use super::codec::{wire_enum, Decode, Encode, Reader, WireError, Writer};

wire_enum! {
    /// `enum { reserved(0), mls10(1), (255) } Protocol;` (protocol-06 §5; MIMI.md §3.3).
    Protocol, "Protocol" {
        Mls10 = 1,
    }
}

/// `struct { opaque uri<V>; } IdentifierUri;` — the UTF-8 bytes of a `mimi:` URI (MIMI.md §2).
///
/// Decoding keeps the bytes as they came; the `to_*` conversions validate them into the
/// domain newtypes (normalised host, known path form, UTF-8), so that a structurally valid body
/// with a bad URI gets a `bad_uri` error naming the field rather than a generic parse error.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentifierUri {
    uri: Vec<u8>,
}

impl IdentifierUri {
    pub fn new(uri: impl Into<Vec<u8>>) -> Self {
        IdentifierUri { uri: uri.into() }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.uri
    }

    pub fn to_uri(&self) -> Result<MimiUri, UriError> {
        MimiUri::from_bytes(&self.uri)
    }

    pub fn to_user(&self) -> Result<UserId, UriError> {
        UserId::from_bytes(&self.uri)
    }

    pub fn to_room(&self) -> Result<RoomId, UriError> {
        RoomId::from_bytes(&self.uri)
    }

    pub fn to_client(&self) -> Result<ClientId, UriError> {
        ClientId::from_bytes(&self.uri)
    }

    /// `to_user`, with the error attributed to `field`.
    pub fn user(&self, field: &'static str) -> Result<UserId, WireError> {
        self.to_user().map_err(WireError::uri(field))
    }

    /// `to_room`, with the error attributed to `field`.
    pub fn room(&self, field: &'static str) -> Result<RoomId, WireError> {
        self.to_room().map_err(WireError::uri(field))
    }

    /// `to_client`, with the error attributed to `field`.
    pub fn client(&self, field: &'static str) -> Result<ClientId, WireError> {
        self.to_client().map_err(WireError::uri(field))
    }

    /// `to_uri`, with the error attributed to `field`.
    pub fn any_uri(&self, field: &'static str) -> Result<MimiUri, WireError> {
        self.to_uri().map_err(WireError::uri(field))
    }
}

impl fmt::Debug for IdentifierUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentifierUri({:?})", String::from_utf8_lossy(&self.uri))
    }
}

impl From<&MimiUri> for IdentifierUri {
    fn from(uri: &MimiUri) -> Self {
        IdentifierUri::new(uri.as_bytes())
    }
}

impl From<&UserId> for IdentifierUri {
    fn from(user: &UserId) -> Self {
        IdentifierUri::new(user.as_bytes())
    }
}

impl From<&RoomId> for IdentifierUri {
    fn from(room: &RoomId) -> Self {
        IdentifierUri::new(room.as_bytes())
    }
}

impl From<&ClientId> for IdentifierUri {
    fn from(client: &ClientId) -> Self {
        IdentifierUri::new(client.as_bytes())
    }
}

impl Encode for IdentifierUri {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.opaque("IdentifierUri.uri", &self.uri)
    }
}

impl Decode for IdentifierUri {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(IdentifierUri::new(r.opaque_vec("IdentifierUri.uri")?))
    }
}

/// RFC 9420 §5.1 `uint16 CipherSuite`, any value (unknown and GREASE suites decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CipherSuite(pub u16);

impl CipherSuite {
    /// The openmls ciphersuite, if openmls implements this code point.
    pub fn to_openmls(self) -> Result<Ciphersuite, WireError> {
        Ciphersuite::try_from(self.0).map_err(|_| WireError::Unsupported {
            what: "CipherSuite",
            reason: "cipher suite not implemented",
        })
    }
}

impl From<Ciphersuite> for CipherSuite {
    fn from(suite: Ciphersuite) -> Self {
        CipherSuite(u16::from(suite))
    }
}

impl From<CipherSuite> for VerifiableCiphersuite {
    fn from(suite: CipherSuite) -> Self {
        VerifiableCiphersuite::new(suite.0)
    }
}

impl Encode for CipherSuite {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.u16(self.0);
        Ok(())
    }
}

impl Decode for CipherSuite {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.u16("CipherSuite").map(CipherSuite)
    }
}

macro_rules! opaque_newtype {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Vec<u8>);

        impl $name {
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({} bytes)"), self.0.len())
            }
        }

        impl Encode for $name {
            fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
                w.opaque($field, &self.0)
            }
        }

        impl Decode for $name {
            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                r.opaque_vec($field).map($name)
            }
        }
    };
}

opaque_newtype!(
    /// RFC 9420 §5.1.2 `opaque SignaturePublicKey<V>`.
    SignaturePublicKey,
    "SignaturePublicKey"
);
opaque_newtype!(
    /// RFC 9420 §5.1.1 `opaque HPKEPublicKey<V>`.
    HpkePublicKey,
    "HPKEPublicKey"
);
opaque_newtype!(
    /// RFC 9420 §5.2 `opaque HashReference<V>; HashReference ProposalRef;`.
    ProposalRef,
    "ProposalRef"
);

impl SignaturePublicKey {
    pub fn to_openmls(&self) -> OpenMlsSignaturePublicKey {
        OpenMlsSignaturePublicKey::from(self.0.clone())
    }
}

impl From<&OpenMlsSignaturePublicKey> for SignaturePublicKey {
    fn from(key: &OpenMlsSignaturePublicKey) -> Self {
        SignaturePublicKey(key.as_slice().to_vec())
    }
}

impl HpkePublicKey {
    pub fn to_openmls(&self) -> OpenMlsHpkePublicKey {
        OpenMlsHpkePublicKey::from(self.0.clone())
    }
}

impl From<&OpenMlsHpkePublicKey> for HpkePublicKey {
    fn from(key: &OpenMlsHpkePublicKey) -> Self {
        HpkePublicKey(key.as_slice().to_vec())
    }
}

impl From<&OpenMlsProposalRef> for ProposalRef {
    fn from(reference: &OpenMlsProposalRef) -> Self {
        ProposalRef(reference.as_slice().to_vec())
    }
}
