//! Discovery and consent (MIMI.md §5.6, §5.7): our client API bodies for profiles,
//! preferences and consent listings, the conversions of the protocol-06 bodies
//! ([`super::identifier`], [`super::consent`]) into the domain's terms, and the requesting user
//! of an identifier query.
//!
//! [IMPL CHOICE] The requesting user of an `identifierQuery`. protocol-06 §5.8's
//! `IdentifierRequest` has no requester field, yet a discoverability preference "only users I
//! consented to" needs one. The requester's provider names it in `id_request_extensions`, the
//! request's extension point, as component [`REQUESTER_COMPONENT_ID`] (in the private-use range
//! 0x8000-0xFFFF of draft-ietf-mls-extensions, MIMI.md §8.1) whose data is the requesting user's
//! URI. The target's provider accepts it only for a user of the provider that sends the request
//! (`From`, authenticated by mutual TLS); a query without it has no requester and finds only
//! users discoverable by everyone. Our client API always sets it to the authenticated client's
//! user, replacing whatever the client put there.
//!
//! ```text
//! enum { everyone(1), consented(2), nobody(3), (255) } Discoverability;
//! enum { anyone(1), consentRequired(2), ownProvider(3), (255) } Reachability;
//! struct { Discoverability discoverability; Reachability reachability; } Preferences;
//! struct {
//!   string display_name; optional<string> nick; string emails<V>; string phones<V>;
//! } ProfileBody;
//! struct { ProfileBody profile; Preferences preferences; } ProfileResponse;
//! enum { requested(1), granted(2), revoked(3), (255) } ConsentStateCode;
//! struct {
//!   ConsentScope scope; ConsentStateCode state; uint64 timestamp; KeyPackage key_packages<V>;
//! } ConsentRecordBody;
//! struct { ConsentRecordBody incoming<V>; ConsentRecordBody outgoing<V>; } ConsentList;
//! ```

use mimid_actors::directory::consent::{
    ConsentRecord, ConsentState, Discoverability as DomainDiscoverability, Preferences,
    Reachability as DomainReachability,
};
use mimid_actors::directory::profile::{Email, Nick, Phone, Profile, ProfileError, SearchTerm};
use mimid_actors::ids::{RoomId, UserId};
use openmls::extensions::AppDataDictionary;
use openmls::prelude::KeyPackageIn;

use super::codec::{wire_enum, Decode, Encode, Mls, Reader, WireError, Writer};
use super::consent::ConsentScope;
use super::identifier::{
    IdentifierQueryCode, IdentifierRequest, IdentifierResponse, QueryElement, SearchField,
};
use super::types::IdentifierUri;

/// The `id_request_extensions` component naming the requesting user (see the module
/// documentation).
pub const REQUESTER_COMPONENT_ID: u16 = 0xF1D0;

/// The requesting user an `IdentifierRequest` names in [`REQUESTER_COMPONENT_ID`], if any.
pub fn requester_of(request: &IdentifierRequest) -> Result<Option<UserId>, WireError> {
    let Some(data) = request
        .id_request_extensions
        .value()
        .get(&REQUESTER_COMPONENT_ID)
    else {
        return Ok(None);
    };
    UserId::from_bytes(data).map(Some).map_err(WireError::uri(
        "IdentifierRequest.id_request_extensions[requester]",
    ))
}

/// `request` naming `requester` in [`REQUESTER_COMPONENT_ID`] (replacing any earlier value).
pub fn with_requester(
    request: &IdentifierRequest,
    requester: &UserId,
) -> Result<IdentifierRequest, WireError> {
    let mut extensions: AppDataDictionary = request.id_request_extensions.value().clone();
    extensions.insert(REQUESTER_COMPONENT_ID, requester.as_bytes().to_vec());
    Ok(IdentifierRequest {
        query_elements: request.query_elements.clone(),
        id_request_extensions: Mls::from_value(extensions)?,
    })
}

/// An empty `AppDataDictionary`, for the extensions of the bodies we build.
pub fn no_extensions() -> Result<Mls<AppDataDictionary>, WireError> {
    Mls::from_value(AppDataDictionary::new())
}

/// The domain's search terms for the query elements (protocol-06 §5.8). The UTF-8 values are
/// passed as they are; the domain normalises them like stored handles.
pub fn search_terms(elements: &[QueryElement]) -> Vec<SearchTerm> {
    elements
        .iter()
        .map(|element| match &element.field {
            SearchField::Handle => SearchTerm::Handle(element.search_value.clone()),
            SearchField::Nick => SearchTerm::Nick(element.search_value.clone()),
            SearchField::Email => SearchTerm::Email(element.search_value.clone()),
            SearchField::Phone => SearchTerm::Phone(element.search_value.clone()),
            SearchField::PartialName
            | SearchField::WholeProfile
            | SearchField::OidcStdClaim { .. }
            | SearchField::VcardField { .. } => SearchTerm::Unsupported,
        })
        .collect()
}

/// The `IdentifierResponse` with `code` and, on success, `found`. No profile fields are
/// returned (MIMI.md §5.7: only fields the user made searchable may match; none is shown), so
/// every `notFound` is byte-identical, whoever was (not) found.
pub fn identifier_response(
    code: IdentifierQueryCode,
    found: Option<&UserId>,
) -> Result<IdentifierResponse, WireError> {
    Ok(IdentifierResponse {
        response_code: code,
        uri: found.map(IdentifierUri::from).into_iter().collect(),
        found_profiles: Vec::new(),
        id_response_extensions: no_extensions()?,
    })
}

/// The requester, target and room of a `ConsentScope`, as domain ids.
pub fn scope_ids(scope: &ConsentScope) -> Result<(UserId, UserId, Option<RoomId>), WireError> {
    let requester = scope.requester_uri.user("ConsentEntry.requesterUri")?;
    let target = scope.target_uri.user("ConsentEntry.targetUri")?;
    let room = scope
        .room_id
        .as_ref()
        .map(|room| room.room("ConsentEntry.roomId"))
        .transpose()?;
    if requester == target {
        return Err(WireError::Invalid {
            field: "ConsentEntry.targetUri",
            reason: "the target is the requester",
        });
    }
    Ok((requester, target, room))
}

wire_enum! {
    /// `enum { everyone(1), consented(2), nobody(3), (255) } Discoverability;`
    Discoverability, "Preferences.discoverability" {
        Everyone = 1,
        Consented = 2,
        Nobody = 3,
    }
}

wire_enum! {
    /// `enum { anyone(1), consentRequired(2), ownProvider(3), (255) } Reachability;`
    Reachability, "Preferences.reachability" {
        Anyone = 1,
        ConsentRequired = 2,
        OwnProvider = 3,
    }
}

/// A user's two preferences (`POST /client/v1/preferences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferencesBody {
    pub discoverability: Discoverability,
    pub reachability: Reachability,
}

impl From<PreferencesBody> for Preferences {
    fn from(body: PreferencesBody) -> Self {
        Preferences {
            discoverability: match body.discoverability {
                Discoverability::Everyone => DomainDiscoverability::Everyone,
                Discoverability::Consented => DomainDiscoverability::Consented,
                Discoverability::Nobody => DomainDiscoverability::Nobody,
            },
            reachability: match body.reachability {
                Reachability::Anyone => DomainReachability::Anyone,
                Reachability::ConsentRequired => DomainReachability::ConsentRequired,
                Reachability::OwnProvider => DomainReachability::OwnProvider,
            },
        }
    }
}

impl From<Preferences> for PreferencesBody {
    fn from(preferences: Preferences) -> Self {
        PreferencesBody {
            discoverability: match preferences.discoverability {
                DomainDiscoverability::Everyone => Discoverability::Everyone,
                DomainDiscoverability::Consented => Discoverability::Consented,
                DomainDiscoverability::Nobody => Discoverability::Nobody,
            },
            reachability: match preferences.reachability {
                DomainReachability::Anyone => Reachability::Anyone,
                DomainReachability::ConsentRequired => Reachability::ConsentRequired,
                DomainReachability::OwnProvider => Reachability::OwnProvider,
            },
        }
    }
}

impl Encode for PreferencesBody {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.discoverability.encode(w)?;
        self.reachability.encode(w)
    }
}

impl Decode for PreferencesBody {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(PreferencesBody {
            discoverability: Discoverability::decode(r)?,
            reachability: Reachability::decode(r)?,
        })
    }
}

/// A user's profile as its client sets it (`POST /client/v1/profile`). Decoding checks the
/// TLS-PL form only; [`ProfileBody::to_profile`] validates the handles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileBody {
    pub display_name: String,
    pub nick: Option<String>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
}

impl ProfileBody {
    /// The validated profile (MIMI.md §5.7 handle forms), or the first defect.
    pub fn to_profile(&self) -> Result<Profile, ProfileError> {
        Profile::new(
            self.display_name.clone(),
            self.nick.as_deref().map(Nick::parse).transpose()?,
            self.emails
                .iter()
                .map(|email| Email::parse(email))
                .collect::<Result<_, _>>()?,
            self.phones
                .iter()
                .map(|phone| Phone::parse(phone))
                .collect::<Result<_, _>>()?,
        )
    }
}

impl From<&Profile> for ProfileBody {
    fn from(profile: &Profile) -> Self {
        ProfileBody {
            display_name: profile.display_name().to_owned(),
            nick: profile.nick().map(|nick| nick.as_str().to_owned()),
            emails: profile
                .emails()
                .iter()
                .map(|email| email.as_str().to_owned())
                .collect(),
            phones: profile
                .phones()
                .iter()
                .map(|phone| phone.as_str().to_owned())
                .collect(),
        }
    }
}

impl Encode for ProfileBody {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.string("ProfileBody.display_name", &self.display_name)?;
        w.optional(self.nick.as_ref(), |w, nick| {
            w.string("ProfileBody.nick", nick)
        })?;
        w.vector("ProfileBody.emails", |w| {
            self.emails
                .iter()
                .try_for_each(|email| w.string("ProfileBody.emails", email))
        })?;
        w.vector("ProfileBody.phones", |w| {
            self.phones
                .iter()
                .try_for_each(|phone| w.string("ProfileBody.phones", phone))
        })
    }
}

impl Decode for ProfileBody {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ProfileBody {
            display_name: r.string("ProfileBody.display_name")?,
            nick: r.optional("ProfileBody.nick", |r| r.string("ProfileBody.nick"))?,
            emails: r.vector("ProfileBody.emails", |r| r.string("ProfileBody.emails"))?,
            phones: r.vector("ProfileBody.phones", |r| r.string("ProfileBody.phones"))?,
        })
    }
}

/// `GET /client/v1/profile`: the user's profile and preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileResponse {
    pub profile: ProfileBody,
    pub preferences: PreferencesBody,
}

impl Encode for ProfileResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.profile.encode(w)?;
        self.preferences.encode(w)
    }
}

impl Decode for ProfileResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ProfileResponse {
            profile: ProfileBody::decode(r)?,
            preferences: PreferencesBody::decode(r)?,
        })
    }
}

wire_enum! {
    /// `enum { requested(1), granted(2), revoked(3), (255) } ConsentStateCode;`
    ConsentStateCode, "ConsentRecordBody.state" {
        Requested = 1,
        Granted = 2,
        Revoked = 3,
    }
}

/// One consent scope as listed to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecordBody {
    pub scope: ConsentScope,
    pub state: ConsentStateCode,
    /// Hub time of the last change, milliseconds since the UNIX epoch.
    pub timestamp: u64,
    /// KeyPackages that came with a grant (outgoing records).
    pub key_packages: Vec<Mls<KeyPackageIn>>,
}

impl ConsentRecordBody {
    /// The listed form of a domain record; its KeyPackages were validated when they arrived.
    pub fn from_record(record: &ConsentRecord) -> Result<Self, WireError> {
        Ok(ConsentRecordBody {
            scope: ConsentScope {
                requester_uri: IdentifierUri::from(&record.requester),
                target_uri: IdentifierUri::from(&record.target),
                room_id: record.room.as_ref().map(IdentifierUri::from),
            },
            state: match record.state {
                ConsentState::Requested => ConsentStateCode::Requested,
                ConsentState::Granted => ConsentStateCode::Granted,
                ConsentState::Revoked => ConsentStateCode::Revoked,
            },
            timestamp: record.at_ms,
            key_packages: record
                .key_packages
                .iter()
                .map(|bytes| Mls::from_bytes(bytes))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Encode for ConsentRecordBody {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.scope.encode(w)?;
        self.state.encode(w)?;
        w.u64(self.timestamp);
        w.vector_of("ConsentRecordBody.key_packages", &self.key_packages)
    }
}

impl Decode for ConsentRecordBody {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsentRecordBody {
            scope: ConsentScope::decode(r)?,
            state: ConsentStateCode::decode(r)?,
            timestamp: r.u64("ConsentRecordBody.timestamp")?,
            key_packages: r.vector("ConsentRecordBody.key_packages", |r| {
                r.mls("ConsentRecordBody.key_packages")
            })?,
        })
    }
}

/// `GET /client/v1/consents`: the requests to the user and its decisions (`incoming`), its own
/// requests and their answers (`outgoing`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentList {
    pub incoming: Vec<ConsentRecordBody>,
    pub outgoing: Vec<ConsentRecordBody>,
}

impl Encode for ConsentList {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.vector_of("ConsentList.incoming", &self.incoming)?;
        w.vector_of("ConsentList.outgoing", &self.outgoing)
    }
}

impl Decode for ConsentList {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ConsentList {
            incoming: r.vector_of("ConsentList.incoming")?,
            outgoing: r.vector_of("ConsentList.outgoing")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Limits;

    fn round_trip<T: Encode + Decode + PartialEq + std::fmt::Debug>(value: &T) -> Vec<u8> {
        let bytes = value.to_bytes().unwrap();
        assert_eq!(&T::from_bytes(&bytes, &Limits::default()).unwrap(), value);
        bytes
    }

    #[test]
    fn client_discovery_bodies_round_trip_and_refuse_unknown_enum_values() {
        let profile = ProfileBody {
            display_name: "Alice ✉".into(),
            nick: Some("alice".into()),
            emails: vec!["alice@a.example".into(), "a@b.example".into()],
            phones: vec!["+15551234567".into()],
        };
        round_trip(&profile);
        round_trip(&ProfileBody::default());
        let preferences = PreferencesBody {
            discoverability: Discoverability::Consented,
            reachability: Reachability::OwnProvider,
        };
        assert_eq!(round_trip(&preferences), vec![2, 3]);
        assert_eq!(
            PreferencesBody::from(Preferences::from(preferences)),
            preferences
        );
        assert_eq!(
            PreferencesBody::from_bytes(&[0, 1], &Limits::default()),
            Err(WireError::BadEnum {
                field: "Preferences.discoverability",
                value: 0
            })
        );
        assert_eq!(
            PreferencesBody::from_bytes(&[1, 4], &Limits::default()),
            Err(WireError::BadEnum {
                field: "Preferences.reachability",
                value: 4
            })
        );
        round_trip(&ConsentList {
            incoming: vec![ConsentRecordBody {
                scope: ConsentScope {
                    requester_uri: IdentifierUri::new("mimi://b.example/u/bob"),
                    target_uri: IdentifierUri::new("mimi://a.example/u/alice"),
                    room_id: None,
                },
                state: ConsentStateCode::Requested,
                timestamp: 7,
                key_packages: vec![],
            }],
            outgoing: vec![],
        });
        // A profile whose handles are malformed decodes, and is refused by validation.
        let bad = ProfileBody {
            phones: vec!["555".into()],
            ..ProfileBody::default()
        };
        let decoded = ProfileBody::from_bytes(&bad.to_bytes().unwrap(), &Limits::default());
        assert!(decoded.unwrap().to_profile().is_err());
    }

    /// [IMPL CHOICE] the requester travels in `id_request_extensions`; setting it replaces an
    /// earlier value and keeps every other component.
    #[test]
    fn protocol06_5_8_requester_component_is_set_and_read_back() {
        let mut extensions = AppDataDictionary::new();
        extensions.insert(0x8001, vec![1]);
        extensions.insert(
            REQUESTER_COMPONENT_ID,
            b"mimi://c.example/u/mallory".to_vec(),
        );
        let request = IdentifierRequest {
            query_elements: vec![QueryElement {
                field: SearchField::Nick,
                search_value: "bob".into(),
            }],
            id_request_extensions: Mls::from_value(extensions).unwrap(),
        };
        let alice = UserId::parse("mimi://a.example/u/alice").unwrap();
        let set = with_requester(&request, &alice).unwrap();
        let decoded =
            IdentifierRequest::from_bytes(&set.to_bytes().unwrap(), &Limits::default()).unwrap();
        assert_eq!(requester_of(&decoded).unwrap(), Some(alice));
        assert_eq!(
            decoded.id_request_extensions.value().get(&0x8001),
            Some(&[1u8][..])
        );
        let mut bad = AppDataDictionary::new();
        bad.insert(
            REQUESTER_COMPONENT_ID,
            b"mimi://a.example/d/alice/phone".to_vec(),
        );
        let bad = IdentifierRequest {
            id_request_extensions: Mls::from_value(bad).unwrap(),
            ..request
        };
        assert_eq!(requester_of(&bad).unwrap_err().code(), "bad_uri");
        let none = IdentifierRequest {
            id_request_extensions: no_extensions().unwrap(),
            ..bad
        };
        assert_eq!(requester_of(&none).unwrap(), None);
    }
}
