//! protocol-06 §5.8 (MIMI.md §5.7): `POST /identifierQuery/{domain}` bodies.

use openmls::extensions::AppDataDictionary;

use super::codec::{wire_enum, Decode, Encode, Mls, Reader, WireError, Writer};
use super::types::IdentifierUri;

wire_enum! {
    /// `SearchIdentifierType`.
    SearchIdentifierType, "QueryElement.searchType" {
        Handle = 1,
        Nick = 2,
        Email = 3,
        Phone = 4,
        PartialName = 5,
        WholeProfile = 6,
        OidcStdClaim = 7,
        VcardField = 8,
    }
}

/// The search type of a `QueryElement` with its `select` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchField {
    Handle,
    Nick,
    Email,
    Phone,
    PartialName,
    WholeProfile,
    OidcStdClaim { claim_name: Vec<u8> },
    VcardField { property_name: Vec<u8> },
}

impl SearchField {
    pub fn search_type(&self) -> SearchIdentifierType {
        match self {
            SearchField::Handle => SearchIdentifierType::Handle,
            SearchField::Nick => SearchIdentifierType::Nick,
            SearchField::Email => SearchIdentifierType::Email,
            SearchField::Phone => SearchIdentifierType::Phone,
            SearchField::PartialName => SearchIdentifierType::PartialName,
            SearchField::WholeProfile => SearchIdentifierType::WholeProfile,
            SearchField::OidcStdClaim { .. } => SearchIdentifierType::OidcStdClaim,
            SearchField::VcardField { .. } => SearchIdentifierType::VcardField,
        }
    }
}

/// `QueryElement`. `searchValue` is "a UTF8 string" in the draft, so it is decoded as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryElement {
    pub field: SearchField,
    pub search_value: String,
}

impl Encode for QueryElement {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.field.search_type().encode(w)?;
        match &self.field {
            SearchField::OidcStdClaim { claim_name } => {
                w.opaque("QueryElement.claimName", claim_name)?
            }
            SearchField::VcardField { property_name } => {
                w.opaque("QueryElement.propertyName", property_name)?
            }
            _ => {}
        }
        w.string("QueryElement.searchValue", &self.search_value)
    }
}

impl Decode for QueryElement {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let field = match SearchIdentifierType::decode(r)? {
            SearchIdentifierType::Handle => SearchField::Handle,
            SearchIdentifierType::Nick => SearchField::Nick,
            SearchIdentifierType::Email => SearchField::Email,
            SearchIdentifierType::Phone => SearchField::Phone,
            SearchIdentifierType::PartialName => SearchField::PartialName,
            SearchIdentifierType::WholeProfile => SearchField::WholeProfile,
            SearchIdentifierType::OidcStdClaim => SearchField::OidcStdClaim {
                claim_name: r.opaque_vec("QueryElement.claimName")?,
            },
            SearchIdentifierType::VcardField => SearchField::VcardField {
                property_name: r.opaque_vec("QueryElement.propertyName")?,
            },
        };
        Ok(QueryElement {
            field,
            search_value: r.string("QueryElement.searchValue")?,
        })
    }
}

/// `IdentifierRequest`: the elements are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierRequest {
    pub query_elements: Vec<QueryElement>,
    pub id_request_extensions: Mls<AppDataDictionary>,
}

impl Encode for IdentifierRequest {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.vector_of("IdentifierRequest.query_elements", &self.query_elements)?;
        self.id_request_extensions.encode(w)
    }
}

impl Decode for IdentifierRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(IdentifierRequest {
            query_elements: r.vector_of("IdentifierRequest.query_elements")?,
            id_request_extensions: r.mls("IdentifierRequest.id_request_extensions")?,
        })
    }
}

wire_enum! {
    /// `IdentifierQueryCode`.
    IdentifierQueryCode, "IdentifierResponse.responseCode" {
        Success = 0,
        NotFound = 1,
        Ambiguous = 2,
        Forbidden = 3,
        UnsupportedField = 4,
    }
}

wire_enum! {
    /// `enum { reserved(0), oidcStdClaim(7), vcardField(8), (255) } FieldSource;`
    FieldSource, "ProfileField.fieldSource" {
        OidcStdClaim = 7,
        VcardField = 8,
    }
}

/// `ProfileField`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileField {
    pub field_source: FieldSource,
    pub field_name: String,
    pub field_value: Vec<u8>,
}

impl Encode for ProfileField {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.field_source.encode(w)?;
        w.string("ProfileField.fieldName", &self.field_name)?;
        w.opaque("ProfileField.fieldValue", &self.field_value)
    }
}

impl Decode for ProfileField {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ProfileField {
            field_source: FieldSource::decode(r)?,
            field_name: r.string("ProfileField.fieldName")?,
            field_value: r.opaque_vec("ProfileField.fieldValue")?,
        })
    }
}

/// `UserProfile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub stable_uri: IdentifierUri,
    pub fields: Vec<ProfileField>,
}

impl Encode for UserProfile {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.stable_uri.encode(w)?;
        w.vector_of("UserProfile.fields", &self.fields)
    }
}

impl Decode for UserProfile {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(UserProfile {
            stable_uri: IdentifierUri::decode(r)?,
            fields: r.vector_of("UserProfile.fields")?,
        })
    }
}

/// `IdentifierResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierResponse {
    pub response_code: IdentifierQueryCode,
    pub uri: Vec<IdentifierUri>,
    pub found_profiles: Vec<UserProfile>,
    pub id_response_extensions: Mls<AppDataDictionary>,
}

impl Encode for IdentifierResponse {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.response_code.encode(w)?;
        w.vector_of("IdentifierResponse.uri", &self.uri)?;
        w.vector_of("IdentifierResponse.foundProfiles", &self.found_profiles)?;
        self.id_response_extensions.encode(w)
    }
}

impl Decode for IdentifierResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(IdentifierResponse {
            response_code: IdentifierQueryCode::decode(r)?,
            uri: r.vector_of("IdentifierResponse.uri")?,
            found_profiles: r.vector_of("IdentifierResponse.foundProfiles")?,
            id_response_extensions: r.mls("IdentifierResponse.id_response_extensions")?,
        })
    }
}
