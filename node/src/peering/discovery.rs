//! The server-to-server side of discovery and consent (MIMI.md §5.6, §5.7, §6.8; protocol-06
//! §5.7, §5.8): `identifierQuery`, `requestConsent` and `updateConsent` as the target's or the
//! requester's provider receives them, and what the client API shares with them (the answer to
//! a query for our users, the checks of a grant's KeyPackages).
//!
//! Who may speak for whom (MIMI.md §5.6): in `requestConsent` the requester is a user of the
//! calling provider and the target one of ours; in `updateConsent` the other way round. A
//! request about a user we do not have is answered 201 like any other, and changes nothing
//! (MIMI.md §13: 201 for unknown consent targets, so existence does not leak). Every decision
//! is the apply's; this layer decodes, checks domains and maps results to statuses.
//!
//! [IMPL CHOICE] MIMI.md §3.2: the consent endpoints' path parameter may be the user URI the
//! body names (our directory's `{targetUser}` / `{requesterUser}`) or our domain (protocol-06
//! §5.7's `{targetDomain}` / `{requesterDomain}`); the body is authoritative, and a user URI
//! that contradicts it is refused.

use bytes::Bytes;
use http::StatusCode;
use mimid_actors::directory::consent::RequesterAction;
use mimid_actors::directory::profile::QueryOutcome;
use mimid_actors::directory::{
    validate_key_package, DirectoryError, GrantedKeyPackage, TargetAction, MAX_CLIENTS_PER_USER,
};
use mimid_actors::hub::Hub;
use mimid_actors::ids::UserId;
use mimid_actors::room::identity::client_of_credential;
use openmls::prelude::KeyPackageIn;

use super::{forbidden, not_found, MimiService};
use crate::api::{ok_body, Answer, Refusal};
use crate::federation::PeerRequest;
use crate::h3::Response;
use crate::metrics::{Limit, Metrics};
use crate::wire::consent::{ConsentEntry, ConsentOp};
use crate::wire::discovery::{identifier_response, requester_of, scope_ids, search_terms};
use crate::wire::identifier::{IdentifierQueryCode, IdentifierRequest};
use crate::wire::{Decode, Mls};

impl MimiService {
    /// protocol-06 §5.8 (MIMI.md §5.7): which of our users the query names, if the requester
    /// (named in `id_request_extensions`, [`crate::wire::discovery`]) may find it.
    pub(super) async fn identifier_query(&self, req: PeerRequest) -> Answer {
        if !req.param.eq_ignore_ascii_case(&self.domain) {
            return Err(not_found(format!(
                "identifierQuery for {} is not served by {}",
                req.param, self.domain
            )));
        }
        let request = IdentifierRequest::from_bytes(&req.body, &self.limits)?;
        let requester = requester_of(&request)?;
        if let Some(requester) = &requester {
            if requester.domain() != req.from {
                return Err(forbidden(format!(
                    "provider {} cannot query as {requester}",
                    req.from
                )));
            }
            self.refuse_blocked(requester)?;
        }
        answer_identifier_query(&self.hub, &self.domain, &request, requester.as_ref()).await
    }

    /// protocol-06 §5.7 `requestConsent` (MIMI.md §5.6): a `request` or `cancel` of a user of
    /// the calling provider, for one of ours.
    pub(super) async fn request_consent(&self, req: PeerRequest) -> Answer {
        let entry = ConsentEntry::from_bytes(&req.body, &self.limits)?;
        let action = match entry.operation {
            ConsentOp::Request => TargetAction::Request,
            ConsentOp::Cancel => TargetAction::Cancel,
            ConsentOp::Grant { .. } | ConsentOp::Revoke => {
                return Err(wrong_operation("requestConsent", "request or cancel"))
            }
        };
        let (requester, target, room) = scope_ids(&entry.scope)?;
        if requester.domain() != req.from {
            return Err(forbidden(format!(
                "provider {} cannot ask consent as {requester}",
                req.from
            )));
        }
        // MIMI.md §13: a blocked user cannot ask for consent.
        self.refuse_blocked(&requester)?;
        if target.domain() != self.domain {
            return Err(not_found(format!(
                "{target} is not served by {}",
                self.domain
            )));
        }
        check_consent_param(&req.param, &self.domain, &target, "targetUser")?;
        // An unknown target is answered like a known one (MIMI.md §5.6, §13).
        if let Err(e) = self
            .hub
            .consent_as_target(target, requester, room, action)
            .await?
        {
            count_consent_limit(&self.metrics, &e);
            tracing::debug!(error = %e, "consent request not recorded");
        }
        Ok(created())
    }

    /// protocol-06 §5.7 `updateConsent` (MIMI.md §5.6): a `grant` or `revoke` of a user of the
    /// calling provider, for a requester of ours, who learns of it here.
    pub(super) async fn update_consent(&self, req: PeerRequest) -> Answer {
        let entry = ConsentEntry::from_bytes(&req.body, &self.limits)?;
        let (requester, target, room) = scope_ids(&entry.scope)?;
        if target.domain() != req.from {
            return Err(forbidden(format!(
                "provider {} cannot decide consent as {target}",
                req.from
            )));
        }
        self.refuse_blocked(&target)?;
        if requester.domain() != self.domain {
            return Err(not_found(format!(
                "{requester} is not served by {}",
                self.domain
            )));
        }
        check_consent_param(&req.param, &self.domain, &requester, "requesterUser")?;
        let action = match &entry.operation {
            ConsentOp::Grant {
                client_key_packages,
            } => RequesterAction::Granted {
                key_packages: granted_key_packages(
                    client_key_packages,
                    &target,
                    self.hub.now_ms(),
                )?
                .into_iter()
                .map(|granted| granted.key_package)
                .collect(),
            },
            ConsentOp::Revoke => RequesterAction::Revoked,
            ConsentOp::Request | ConsentOp::Cancel => {
                return Err(wrong_operation("updateConsent", "grant or revoke"))
            }
        };
        if let Err(e) = self
            .hub
            .consent_as_requester(requester, target, room, action)
            .await?
        {
            count_consent_limit(&self.metrics, &e);
            tracing::debug!(error = %e, "consent update not recorded");
        }
        Ok(created())
    }
}

/// The answer to an identifier query for our users (MIMI.md §5.7), from our replicas: a user
/// `requester` may not find, or whom the operator blocked (MIMI.md §13), is `notFound`, byte
/// for byte like an unknown one.
pub(crate) async fn answer_identifier_query(
    hub: &Hub,
    domain: &str,
    request: &IdentifierRequest,
    requester: Option<&UserId>,
) -> Answer {
    let terms = search_terms(&request.query_elements);
    let response = match hub.identifier_query(&terms, requester, domain).await? {
        QueryOutcome::Found(user) if hub.user_refusal(&user).is_some() => {
            identifier_response(IdentifierQueryCode::NotFound, None)
        }
        QueryOutcome::Found(user) => identifier_response(IdentifierQueryCode::Success, Some(&user)),
        QueryOutcome::NotFound => identifier_response(IdentifierQueryCode::NotFound, None),
        QueryOutcome::Ambiguous => identifier_response(IdentifierQueryCode::Ambiguous, None),
        QueryOutcome::UnsupportedField => {
            identifier_response(IdentifierQueryCode::UnsupportedField, None)
        }
    }?;
    ok_body(StatusCode::OK, &response)
}

/// A grant's KeyPackages (MIMI.md §5.6), fully validated at `now_ms` (signatures included):
/// each names, in its basic credential, a client of `granter`. At most one per client a user
/// may have.
pub(crate) fn granted_key_packages(
    key_packages: &[Mls<KeyPackageIn>],
    granter: &UserId,
    now_ms: u64,
) -> Result<Vec<GrantedKeyPackage>, Refusal> {
    if key_packages.len() > MAX_CLIENTS_PER_USER {
        return Err(Refusal::bad_request(format!(
            "ConsentEntry.clientKeyPackages: {} KeyPackages; a grant carries at most \
             {MAX_CLIENTS_PER_USER}",
            key_packages.len()
        )));
    }
    key_packages
        .iter()
        .enumerate()
        .map(|(index, key_package)| {
            let invalid = |reason: String| {
                Refusal::bad_request(format!("ConsentEntry.clientKeyPackages[{index}]: {reason}"))
            };
            let credential = key_package.value().unverified_credential().credential;
            let client = client_of_credential(&credential).map_err(|e| invalid(e.to_string()))?;
            if client.user() != *granter {
                return Err(invalid(format!(
                    "names {client}, which is not a client of {granter}"
                )));
            }
            let validated = validate_key_package(key_package.bytes(), &client, now_ms)
                .map_err(|e| invalid(e.to_string()))?;
            Ok(GrantedKeyPackage {
                client,
                key_package: validated.into_bytes(),
            })
        })
        .collect()
}

/// Counts a consent step refused at the per-user bound (MIMI.md §5.6;
/// `mimid_limit_hits_total{limit="consent_records"}`).
pub(crate) fn count_consent_limit(metrics: &Metrics, error: &DirectoryError) {
    if *error == DirectoryError::TooManyConsentEntries {
        metrics.count_limit_hit(Limit::ConsentRecords);
    }
}

/// 201 with an empty body: the consent endpoints' "received" (MIMI.md §5.6; MIMI.md §14 item 7
/// notes the draft's "201 Accepted").
pub(crate) fn created() -> Response {
    Response::full(StatusCode::CREATED, Bytes::new())
}

fn wrong_operation(endpoint: &str, expected: &str) -> Refusal {
    Refusal::bad_request(format!(
        "ConsentEntry.consentOperation: {endpoint} carries a {expected} (MIMI.md §5.6)"
    ))
}

/// See the module documentation: `param` is our domain or the user URI the body names.
fn check_consent_param(
    param: &str,
    domain: &str,
    named: &UserId,
    variable: &str,
) -> Result<(), Refusal> {
    if param.eq_ignore_ascii_case(domain) {
        return Ok(());
    }
    match UserId::parse(param) {
        Ok(user) if user == *named => Ok(()),
        Ok(user) => Err(Refusal::bad_request(format!(
            "the path names {user} but the body names {named}"
        ))),
        Err(e) => Err(Refusal::bad_request(format!(
            "{variable} path parameter is neither {domain} nor a user URI: {e}"
        ))),
    }
}
