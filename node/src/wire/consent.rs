//! protocol-06 §5.7 (MIMI.md §5.6): `POST /requestConsent/..` and `POST /updateConsent/..`
//! bodies.

use openmls::extensions::AppDataDictionary;
use openmls::prelude::KeyPackageIn;

use super::codec::{wire_enum, Decode, Encode, Mls, Reader, WireError, Writer};
use super::types::IdentifierUri;

wire_enum! {
    /// `enum { cancel(0), request(1), grant(2), revoke(3), (255) } ConsentOperation;`
    ConsentOperation, "ConsentEntry.consentOperation" {
        Cancel = 0,
        Request = 1,
        Grant = 2,
        Revoke = 3,
    }
}

/// The operation of a `ConsentEntry` with its `select` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentOp {
    Cancel,
    Request,
    /// A grant may carry KeyPackages (possibly none) so the requester can add at once.
    Grant {
        client_key_packages: Vec<Mls<KeyPackageIn>>,
    },
    Revoke,
}

impl ConsentOp {
    pub fn operation(&self) -> ConsentOperation {
        match self {
            ConsentOp::Cancel => ConsentOperation::Cancel,
            ConsentOp::Request => ConsentOperation::Request,
            ConsentOp::Grant { .. } => ConsentOperation::Grant,
            ConsentOp::Revoke => ConsentOperation::Revoke,
        }
    }
}

/// `ConsentScope`: whom the consent is between, optionally for one room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsentScope {
    pub requester_uri: IdentifierUri,
    pub target_uri: IdentifierUri,
    pub room_id: Option<IdentifierUri>,
}

impl Encode for ConsentScope {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.requester_uri.encode(w)?;
        self.target_uri.encode(w)?;
        w.optional(self.room_id.as_ref(), |w, room| room.encode(w))
    }
}

impl Decode for ConsentScope {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsentScope {
            requester_uri: IdentifierUri::decode(r)?,
            target_uri: IdentifierUri::decode(r)?,
            room_id: r.optional("ConsentScope.roomId", IdentifierUri::decode)?,
        })
    }
}

/// `ConsentEntry` (the requester, target and room fields are its [`ConsentScope`]). Carries no signature: authenticity rests on mutual TLS between the two
/// providers (MIMI.md §5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEntry {
    pub operation: ConsentOp,
    pub scope: ConsentScope,
    pub consent_extensions: Mls<AppDataDictionary>,
}

impl Encode for ConsentEntry {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.operation.operation().encode(w)?;
        self.scope.encode(w)?;
        if let ConsentOp::Grant {
            client_key_packages,
        } = &self.operation
        {
            w.vector_of("ConsentEntry.clientKeyPackages", client_key_packages)?;
        }
        self.consent_extensions.encode(w)
    }
}

impl Decode for ConsentEntry {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let code = ConsentOperation::decode(r)?;
        let scope = ConsentScope::decode(r)?;
        let operation = match code {
            ConsentOperation::Cancel => ConsentOp::Cancel,
            ConsentOperation::Request => ConsentOp::Request,
            ConsentOperation::Grant => ConsentOp::Grant {
                client_key_packages: r.vector("ConsentEntry.clientKeyPackages", |r| {
                    r.mls("ConsentEntry.clientKeyPackages")
                })?,
            },
            ConsentOperation::Revoke => ConsentOp::Revoke,
        };
        Ok(ConsentEntry {
            operation,
            scope,
            consent_extensions: r.mls("ConsentEntry.consent_extensions")?,
        })
    }
}
