//! The client API's discovery and consent endpoints (node/API.md §4.9-§4.13; MIMI.md §5.6,
//! §5.7, §6.8): a user sets its profile and preferences, searches users here and at other
//! providers, asks for consent, and decides the requests it receives.
//!
//! A client speaks only for its own user: it asks consent as the requester and decides as the
//! target, never the other way round (403). Requests about users of other providers go to
//! their provider as protocol-06 `identifierQuery`, `requestConsent` and `updateConsent`
//! ([`crate::peering`] answers them there). Both providers keep their side of a consent
//! (MIMI.md §5.6): the requester's provider records a request once the target's provider took
//! it (201), and learns of grants and revocations through `updateConsent`. A decision is
//! recorded here first, because it is what `keyMaterial` enforces; telling the requester's
//! provider may then fail (502), and resending the decision is harmless.

use bytes::Bytes;
use http::StatusCode;
use mimid_actors::directory::consent::RequesterAction;
use mimid_actors::directory::profile::ProfileError;
use mimid_actors::directory::{DirectoryError, TargetAction};
use mimid_actors::ids::{ClientId, MimiUri, UriKind};

use super::{ok_body, Answer, ClientApi, Refusal};
use crate::federation::S2sEndpoint;
use crate::h3::{Request, Response};
use crate::metrics::Limit;
use crate::peering::{
    answer_identifier_query, count_consent_limit, created, granted_key_packages, Forwarder,
};
use crate::wire::consent::{ConsentEntry, ConsentOp};
use crate::wire::discovery::{
    scope_ids, with_requester, ConsentList, ConsentRecordBody, PreferencesBody, ProfileBody,
    ProfileResponse,
};
use crate::wire::identifier::IdentifierRequest;
use crate::wire::{Decode, Encode};

impl ClientApi {
    /// `GET profile`: the user's profile (empty if it set none) and preferences.
    pub(super) async fn get_profile(&self, client: ClientId) -> Answer {
        let user = client.user();
        let profile = self
            .hub
            .profile(&user)
            .await?
            .map(|profile| ProfileBody::from(&profile))
            .unwrap_or_default();
        let preferences = self.hub.preferences(&user).await?;
        ok_body(
            StatusCode::OK,
            &ProfileResponse {
                profile,
                preferences: preferences.into(),
            },
        )
    }

    /// `POST profile`: replaces the user's display name and handles (MIMI.md §5.7); a handle
    /// of another user is a 409.
    pub(super) async fn set_profile(&self, req: Request, client: ClientId) -> Answer {
        let body = ProfileBody::from_bytes(&req.body, &self.limits)?;
        let profile = body.to_profile().map_err(Refusal::bad_request)?;
        directory_result(self.hub.set_profile(client.user(), profile).await?)?;
        Ok(no_content())
    }

    /// `POST preferences`: the user's discoverability and reachability (MIMI.md §5.6, §5.7).
    pub(super) async fn set_preferences(&self, req: Request, client: ClientId) -> Answer {
        let body = PreferencesBody::from_bytes(&req.body, &self.limits)?;
        directory_result(self.hub.set_preferences(client.user(), body.into()).await?)?;
        Ok(no_content())
    }

    /// `POST identifierQuery/{domain}` (protocol-06 §5.8): the query, with the authenticated
    /// client's user as its requester, answered here for our users and by the provider of
    /// `domain` otherwise.
    pub(super) async fn identifier_query(
        &self,
        req: Request,
        client: ClientId,
        param: &str,
    ) -> Answer {
        let domain = parse_domain(param)?;
        let request = IdentifierRequest::from_bytes(&req.body, &self.limits)?;
        let user = client.user();
        let request = with_requester(&request, &user)?;
        if domain == self.domain {
            return answer_identifier_query(&self.hub, &self.domain, &request, Some(&user)).await;
        }
        let answer = self
            .forwarder
            .forward(
                &domain,
                S2sEndpoint::IdentifierQuery,
                &domain,
                Bytes::from(request.to_bytes()?),
            )
            .await?;
        Ok(Forwarder::relay(answer))
    }

    /// `POST requestConsent` (MIMI.md §5.6): the user, as requester, asks a target (or
    /// withdraws its request). 201 once the target's provider took it; an unknown target is
    /// not revealed.
    pub(super) async fn request_consent(&self, req: Request, client: ClientId) -> Answer {
        let entry = ConsentEntry::from_bytes(&req.body, &self.limits)?;
        let (requester, target, room) = scope_ids(&entry.scope)?;
        let user = client.user();
        if requester != user {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("requesterUri {requester} is not the authenticated client's user {user}"),
            ));
        }
        let (as_target, as_requester) =
            match entry.operation {
                ConsentOp::Request => (TargetAction::Request, RequesterAction::Requested),
                ConsentOp::Cancel => (TargetAction::Cancel, RequesterAction::Cancelled),
                ConsentOp::Grant { .. } | ConsentOp::Revoke => return Err(Refusal::bad_request(
                    "ConsentEntry.consentOperation: requestConsent carries a request or cancel; \
                     grant and revoke go to updateConsent",
                )),
            };
        if target.domain() == self.domain {
            if let Err(e) = self
                .hub
                .consent_as_target(target.clone(), requester.clone(), room.clone(), as_target)
                .await?
            {
                count_consent_limit(&self.metrics, &e);
                tracing::debug!(error = %e, "consent request not recorded");
            }
        } else {
            let answer = self
                .forwarder
                .forward(
                    target.domain(),
                    S2sEndpoint::RequestConsent,
                    target.as_str(),
                    req.body,
                )
                .await?;
            if answer.status != StatusCode::CREATED {
                return Ok(Forwarder::relay(answer));
            }
        }
        directory_result(
            self.hub
                .consent_as_requester(requester, target, room, as_requester)
                .await?,
        )?;
        Ok(created())
    }

    /// `POST updateConsent` (MIMI.md §5.6): the user, as target, grants (optionally with
    /// KeyPackages of its clients, for an immediate Add) or revokes; the requester's provider
    /// is told.
    pub(super) async fn update_consent(&self, req: Request, client: ClientId) -> Answer {
        let entry = ConsentEntry::from_bytes(&req.body, &self.limits)?;
        let (requester, target, room) = scope_ids(&entry.scope)?;
        let user = client.user();
        if target != user {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("targetUri {target} is not the authenticated client's user {user}"),
            ));
        }
        let (as_target, as_requester) = match &entry.operation {
            ConsentOp::Grant {
                client_key_packages,
            } => {
                let granted =
                    granted_key_packages(client_key_packages, &target, self.hub.now_ms())?;
                let key_packages = granted
                    .iter()
                    .map(|granted| granted.key_package.clone())
                    .collect();
                (
                    TargetAction::Grant {
                        key_packages: granted,
                    },
                    RequesterAction::Granted { key_packages },
                )
            }
            ConsentOp::Revoke => (TargetAction::Revoke, RequesterAction::Revoked),
            ConsentOp::Request | ConsentOp::Cancel => {
                return Err(Refusal::bad_request(
                    "ConsentEntry.consentOperation: updateConsent carries a grant or revoke; \
                     request and cancel go to requestConsent",
                ))
            }
        };
        directory_result(
            self.hub
                .consent_as_target(target.clone(), requester.clone(), room.clone(), as_target)
                .await?,
        )?;
        if requester.domain() == self.domain {
            // An unknown local requester has nothing to learn.
            if let Err(e) = self
                .hub
                .consent_as_requester(requester, target, room, as_requester)
                .await?
            {
                count_consent_limit(&self.metrics, &e);
                tracing::debug!(error = %e, "consent update not recorded for the requester");
            }
            return Ok(created());
        }
        let answer = self
            .forwarder
            .forward(
                requester.domain(),
                S2sEndpoint::UpdateConsent,
                requester.as_str(),
                req.body,
            )
            .await
            .map_err(|mut refusal| {
                refusal.reason = format!(
                    "the decision is recorded here; telling {} failed: {}",
                    requester.domain(),
                    refusal.reason
                );
                refusal
            })?;
        if answer.status != StatusCode::CREATED {
            return Ok(Forwarder::relay(answer));
        }
        Ok(created())
    }

    /// `GET consents`: the requests to the user and its decisions, its own requests and their
    /// answers.
    pub(super) async fn consents(&self, client: ClientId) -> Answer {
        let (_, listing) = self.hub.consents(&client.user()).await?;
        let records = |records: &[mimid_actors::directory::consent::ConsentRecord]| {
            records
                .iter()
                .map(ConsentRecordBody::from_record)
                .collect::<Result<Vec<_>, _>>()
        };
        ok_body(
            StatusCode::OK,
            &ConsentList {
                incoming: records(&listing.incoming)?,
                outgoing: records(&listing.outgoing)?,
            },
        )
    }
}

fn no_content() -> Response {
    Response::full(StatusCode::NO_CONTENT, Bytes::new())
}

/// The `{domain}` path parameter of a client's identifier query: a plain DNS name.
fn parse_domain(param: &str) -> Result<String, Refusal> {
    match MimiUri::parse(&format!("mimi://{param}")) {
        Ok(uri) if uri.kind() == UriKind::Provider => Ok(uri.domain().to_owned()),
        _ => Err(Refusal::bad_request(format!(
            "identifierQuery path parameter {param:?} is not a domain"
        ))),
    }
}

/// A refused directory change as its status: a handle of another user and a full consent
/// store are conflicts (409; the full store counts as a limit hit), everything else is a bad
/// request.
fn directory_result(result: Result<(), DirectoryError>) -> Result<(), Refusal> {
    result.map_err(|e| {
        let status = match e {
            DirectoryError::Profile(ProfileError::HandleTaken { .. })
            | DirectoryError::TooManyConsentEntries => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut refusal = Refusal::new(status, e.to_string());
        if e == DirectoryError::TooManyConsentEntries {
            refusal.limit = Some(Limit::ConsentRecords);
        }
        refusal
    })
}
