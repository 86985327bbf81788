//! Discovery and consent for the client library (node/API.md §4.9-§4.13; MIMI.md §5.6, §5.7,
//! §6.8): set the user's profile and preferences, search users at any provider, ask for
//! consent and decide the requests the user receives.

use bytes::Bytes;
use http::{Method, StatusCode};
use mimid_actors::directory::consent::Preferences;
use mimid_actors::ids::{RoomId, UserId};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{KeyPackage, OpenMlsProvider, ProtocolVersion};

use super::{check, mls, ClientError, MimiClient};
use crate::api::PREFIX;
use crate::wire::consent::{ConsentEntry, ConsentOp, ConsentScope};
use crate::wire::discovery::{
    no_extensions, ConsentList, ConsentStateCode, PreferencesBody, ProfileBody, ProfileResponse,
};
use crate::wire::identifier::{
    IdentifierQueryCode, IdentifierRequest, IdentifierResponse, QueryElement, SearchField,
};
use crate::wire::types::IdentifierUri;
use crate::wire::{Decode, Encode, Mls};

/// One consent scope as the provider lists it to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    /// Who asks (or may fetch KeyPackages).
    pub requester: UserId,
    /// Whose consent it is.
    pub target: UserId,
    /// The room of a room-scoped consent.
    pub room: Option<RoomId>,
    /// Requested, granted or revoked.
    pub state: ConsentStateCode,
    /// Hub time of the last change (ms since the UNIX epoch).
    pub timestamp: u64,
    /// KeyPackages that came with a grant, verified, ready for `commit_adds`.
    pub key_packages: Vec<KeyPackage>,
}

/// The user's consent records: requests to it and its decisions (`incoming`), its own requests
/// and their answers (`outgoing`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consents {
    pub incoming: Vec<Consent>,
    pub outgoing: Vec<Consent>,
}

impl MimiClient {
    /// Replaces the user's profile: display name and handles (MIMI.md §5.7). A handle of
    /// another user of the provider is refused with 409.
    pub async fn set_profile(&self, profile: &ProfileBody) -> Result<(), ClientError> {
        let (status, bytes) = self
            .post(&format!("{PREFIX}profile"), profile.to_bytes()?)
            .await?;
        check(status, StatusCode::NO_CONTENT, &bytes)
    }

    /// The user's profile and preferences.
    pub async fn profile(&self) -> Result<ProfileResponse, ClientError> {
        let bytes = self.get(&format!("{PREFIX}profile")).await?;
        Ok(ProfileResponse::from_bytes(&bytes, &self.limits)?)
    }

    /// Sets the user's discoverability and reachability (MIMI.md §5.6, §5.7).
    pub async fn set_preferences(&self, preferences: Preferences) -> Result<(), ClientError> {
        let body = PreferencesBody::from(preferences).to_bytes()?;
        let (status, bytes) = self.post(&format!("{PREFIX}preferences"), body).await?;
        check(status, StatusCode::NO_CONTENT, &bytes)
    }

    /// Sends an identifier query for users of `domain` (protocol-06 §5.8; elements ANDed)
    /// through this client's provider, which names this client's user as the requester.
    pub async fn search(
        &self,
        domain: &str,
        query_elements: Vec<QueryElement>,
    ) -> Result<IdentifierResponse, ClientError> {
        let body = IdentifierRequest {
            query_elements,
            id_request_extensions: no_extensions()?,
        }
        .to_bytes()?;
        let (status, bytes) = self
            .post(&format!("{PREFIX}identifierQuery/{domain}"), body)
            .await?;
        check(status, StatusCode::OK, &bytes)?;
        Ok(IdentifierResponse::from_bytes(&bytes, &self.limits)?)
    }

    /// The user of `domain` whose handle of kind `field` is `value`, if this client's user may
    /// find it (MIMI.md §5.7); `None` for `notFound`.
    pub async fn find_user(
        &self,
        domain: &str,
        field: SearchField,
        value: &str,
    ) -> Result<Option<UserId>, ClientError> {
        let response = self
            .search(
                domain,
                vec![QueryElement {
                    field,
                    search_value: value.to_owned(),
                }],
            )
            .await?;
        match response.response_code {
            IdentifierQueryCode::Success => {
                let uri = response.uri.first().ok_or_else(|| ClientError::Status {
                    status: StatusCode::OK,
                    reason: "success without a URI".into(),
                })?;
                Ok(Some(uri.user("IdentifierResponse.uri")?))
            }
            IdentifierQueryCode::NotFound => Ok(None),
            other => Err(ClientError::Status {
                status: StatusCode::OK,
                reason: format!("identifierQuery answered {other:?}"),
            }),
        }
    }

    /// Asks `target` for consent to add this client's user to rooms (`room`: only that one),
    /// MIMI.md §5.6.
    pub async fn request_consent(
        &self,
        target: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ClientError> {
        self.request_consent_op(ConsentOp::Request, target, room)
            .await
    }

    /// Withdraws an earlier request with the same scope.
    pub async fn cancel_consent(
        &self,
        target: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ClientError> {
        self.request_consent_op(ConsentOp::Cancel, target, room)
            .await
    }

    /// Grants `requester` consent to add this client's user (to `room` only, if given). With
    /// `with_key_package`, the grant carries a fresh KeyPackage of this client, which the
    /// requester finds in its outgoing consents and may use for an Add at once.
    pub async fn grant_consent(
        &self,
        requester: &UserId,
        room: Option<&RoomId>,
        with_key_package: bool,
    ) -> Result<(), ClientError> {
        let client_key_packages = if with_key_package {
            let key_package = self.key_package(false)?;
            vec![Mls::from_bytes(
                &key_package.tls_serialize_detached().map_err(mls)?,
            )?]
        } else {
            Vec::new()
        };
        let operation = ConsentOp::Grant {
            client_key_packages,
        };
        self.update_consent_op(operation, requester, room).await
    }

    /// Revokes (or denies in advance) `requester`'s consent (for `room` only, if given).
    pub async fn revoke_consent(
        &self,
        requester: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ClientError> {
        self.update_consent_op(ConsentOp::Revoke, requester, room)
            .await
    }

    /// The user's consent records.
    pub async fn consents(&self) -> Result<Consents, ClientError> {
        let bytes = self.get(&format!("{PREFIX}consents")).await?;
        let list = ConsentList::from_bytes(&bytes, &self.limits)?;
        let convert = |records: Vec<crate::wire::discovery::ConsentRecordBody>| {
            records
                .into_iter()
                .map(|record| {
                    Ok(Consent {
                        requester: record
                            .scope
                            .requester_uri
                            .user("ConsentScope.requesterUri")?,
                        target: record.scope.target_uri.user("ConsentScope.targetUri")?,
                        room: record
                            .scope
                            .room_id
                            .as_ref()
                            .map(|room| room.room("ConsentScope.roomId"))
                            .transpose()?,
                        state: record.state,
                        timestamp: record.timestamp,
                        key_packages: record
                            .key_packages
                            .into_iter()
                            .map(|kp| {
                                kp.into_value()
                                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                                    .map_err(mls)
                            })
                            .collect::<Result<_, ClientError>>()?,
                    })
                })
                .collect::<Result<Vec<_>, ClientError>>()
        };
        Ok(Consents {
            incoming: convert(list.incoming)?,
            outgoing: convert(list.outgoing)?,
        })
    }

    /// `requestConsent` from this client's user (the requester) to `target`.
    async fn request_consent_op(
        &self,
        operation: ConsentOp,
        target: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ClientError> {
        let requester = self.user();
        self.consent("requestConsent", operation, &requester, target, room)
            .await
    }

    /// `updateConsent` by this client's user (the target) for `requester`'s request.
    async fn update_consent_op(
        &self,
        operation: ConsentOp,
        requester: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ClientError> {
        let target = self.user();
        self.consent("updateConsent", operation, requester, &target, room)
            .await
    }

    async fn consent(
        &self,
        endpoint: &str,
        operation: ConsentOp,
        requester: &UserId,
        target: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ClientError> {
        let body = ConsentEntry {
            operation,
            scope: ConsentScope {
                requester_uri: IdentifierUri::from(requester),
                target_uri: IdentifierUri::from(target),
                room_id: room.map(IdentifierUri::from),
            },
            consent_extensions: no_extensions()?,
        }
        .to_bytes()?;
        let (status, bytes) = self.post(&format!("{PREFIX}{endpoint}"), body).await?;
        check(status, StatusCode::CREATED, &bytes)
    }

    pub(super) async fn get(&self, path: &str) -> Result<Bytes, ClientError> {
        let (status, _, bytes) = self
            .http
            .request(Method::GET, path, self.auth_headers(), Bytes::new())
            .await?;
        check(status, StatusCode::OK, &bytes)?;
        Ok(bytes)
    }
}
