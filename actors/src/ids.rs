//! `mimi:` identifiers as validated newtypes (MIMI.md §2; protocol-06 Table 1, identity-05).
//!
//! Parse, don't validate: every `MimiUri` that exists has a lowercase DNS authority, no
//! userinfo, port, query or fragment, and a known first path segment. Comparison is byte-exact
//! on the normalised string.
//!
//! [IMPL CHOICE] (MIMI.md §2): the host is lowercased on ingestion; client URIs always use the
//! `/d/<user>/<client>` form so that the user of a client is derivable from its URI.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest URI we accept, in bytes.
pub const MAX_URI_LEN: usize = 1024;
/// Longest single path segment we accept, in bytes.
pub const MAX_SEGMENT_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    #[error("URI is longer than {MAX_URI_LEN} bytes")]
    TooLong,
    #[error("URI is not valid UTF-8")]
    NotUtf8,
    #[error("URI scheme is not mimi://")]
    Scheme,
    #[error("URI authority is not a plain DNS name")]
    Authority,
    #[error("URI carries a query or fragment")]
    QueryOrFragment,
    #[error("URI path is not of a known MIMI form")]
    Path,
    #[error("URI is a {found} URI, expected a {expected} URI")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
}

/// The type named by the first path segment (MIMI.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UriKind {
    Provider,
    User,
    Pseudonym,
    Device,
    Room,
    Group,
    Team,
}

impl UriKind {
    fn name(self) -> &'static str {
        match self {
            UriKind::Provider => "provider",
            UriKind::User => "user",
            UriKind::Pseudonym => "pseudonym",
            UriKind::Device => "device",
            UriKind::Room => "room",
            UriKind::Group => "group",
            UriKind::Team => "team",
        }
    }
}

/// A validated `mimi://` URI.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MimiUri {
    text: String,
    kind: UriKind,
    /// Byte length of `mimi://<domain>`.
    authority_end: usize,
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT_LEN
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%+=@".contains(&b))
}

impl MimiUri {
    /// Parses and normalises a URI given as bytes (the wire form `IdentifierUri.uri`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, UriError> {
        if bytes.len() > MAX_URI_LEN {
            return Err(UriError::TooLong);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| UriError::NotUtf8)?;
        Self::parse(text)
    }

    pub fn parse(text: &str) -> Result<Self, UriError> {
        if text.len() > MAX_URI_LEN {
            return Err(UriError::TooLong);
        }
        let rest = text
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("mimi://"))
            .map(|_| &text[7..])
            .ok_or(UriError::Scheme)?;
        if rest.contains(['?', '#']) {
            return Err(UriError::QueryOrFragment);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let domain = authority.to_ascii_lowercase();
        if !valid_domain(&domain) {
            return Err(UriError::Authority);
        }
        let segments: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let kind = match segments.as_slice() {
            [] => UriKind::Provider,
            ["u", _] => UriKind::User,
            ["p", _] => UriKind::Pseudonym,
            ["d", _] | ["d", _, _] => UriKind::Device,
            ["r", _] => UriKind::Room,
            ["g", _] => UriKind::Group,
            ["t", _] => UriKind::Team,
            _ => return Err(UriError::Path),
        };
        if !segments.iter().skip(1).all(|s| valid_segment(s)) {
            return Err(UriError::Path);
        }
        let mut normalised = format!("mimi://{domain}");
        let authority_end = normalised.len();
        for segment in &segments {
            normalised.push('/');
            normalised.push_str(segment);
        }
        Ok(MimiUri {
            text: normalised,
            kind,
            authority_end,
        })
    }

    pub fn kind(&self) -> UriKind {
        self.kind
    }

    /// The provider domain (the authority).
    pub fn domain(&self) -> &str {
        &self.text[7..self.authority_end]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    fn segments(&self) -> impl Iterator<Item = &str> {
        self.text[self.authority_end..]
            .split('/')
            .filter(|s| !s.is_empty())
    }

    fn expect(self, kind: UriKind) -> Result<Self, UriError> {
        if self.kind == kind {
            Ok(self)
        } else {
            Err(UriError::WrongKind {
                expected: kind.name(),
                found: self.kind.name(),
            })
        }
    }
}

impl TryFrom<String> for MimiUri {
    type Error = UriError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        MimiUri::parse(&value)
    }
}

impl From<MimiUri> for String {
    fn from(value: MimiUri) -> Self {
        value.text
    }
}

impl fmt::Display for MimiUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for MimiUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// A newtype over `MimiUri` whose values passed `$validate` (a `fn(MimiUri) -> Result<MimiUri,
/// UriError>`). Every typed URI shares these accessors and conversions; only the validation
/// differs.
macro_rules! typed_uri {
    ($(#[$doc:meta])* $name:ident, $validate:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(MimiUri);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, UriError> {
                Self::try_from(MimiUri::parse(text)?)
            }
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, UriError> {
                Self::try_from(MimiUri::from_bytes(bytes)?)
            }
            pub fn uri(&self) -> &MimiUri {
                &self.0
            }
            pub fn domain(&self) -> &str {
                self.0.domain()
            }
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl TryFrom<MimiUri> for $name {
            type Error = UriError;
            fn try_from(uri: MimiUri) -> Result<Self, UriError> {
                let validate: fn(MimiUri) -> Result<MimiUri, UriError> = $validate;
                validate(uri).map($name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = UriError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                $name::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

typed_uri!(
    /// `mimi://<domain>/u/<user>`
    UserId,
    |uri| uri.expect(UriKind::User)
);
typed_uri!(
    /// `mimi://<domain>/r/<room>`
    RoomId,
    |uri| uri.expect(UriKind::Room)
);
typed_uri!(
    /// `mimi://<domain>/d/<user>/<client>`: a client (device) of a user. The two-segment form
    /// is required so that `user()` is derivable (see the module's IMPL CHOICE).
    ClientId,
    |uri| {
        let uri = uri.expect(UriKind::Device)?;
        if uri.segments().count() == 3 {
            Ok(uri)
        } else {
            Err(UriError::Path)
        }
    }
);

impl ClientId {
    /// Builds `mimi://<user domain>/d/<user name>/<client name>`.
    pub fn new(user: &UserId, client_name: &str) -> Result<Self, UriError> {
        let name = user.0.segments().nth(1).ok_or(UriError::Path)?;
        Self::parse(&format!("mimi://{}/d/{name}/{client_name}", user.domain()))
    }

    pub fn user(&self) -> UserId {
        let name = self
            .0
            .segments()
            .nth(1)
            .expect("validated two-segment device URI");
        UserId::parse(&format!("mimi://{}/u/{name}", self.domain()))
            .expect("a valid device URI yields a valid user URI")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol06_table1_forms_parse() {
        for (text, kind) in [
            ("mimi://a.example", UriKind::Provider),
            ("mimi://a.example/u/alice", UriKind::User),
            ("mimi://a.example/p/crazykoala75", UriKind::Pseudonym),
            ("mimi://a.example/d/ClientA1", UriKind::Device),
            ("mimi://a.example/d/alice/ClientA1", UriKind::Device),
            ("mimi://a.example/r/clubhouse", UriKind::Room),
            ("mimi://a.example/g/clubhouse", UriKind::Group),
            ("mimi://a.example/t/engineering", UriKind::Team),
        ] {
            assert_eq!(MimiUri::parse(text).unwrap().kind(), kind, "{text}");
        }
    }

    #[test]
    fn host_is_lowercased_and_compared_exactly() {
        let a = UserId::parse("MIMI://A.Example/u/alice").unwrap();
        assert_eq!(a.as_str(), "mimi://a.example/u/alice");
        assert_ne!(a, UserId::parse("mimi://a.example/u/Alice").unwrap());
    }

    #[test]
    fn rejects_userinfo_port_query_fragment_and_bad_utf8() {
        for bad in [
            "mimi://bob@a.example/u/alice",
            "mimi://a.example:443/u/alice",
            "mimi://a.example/u/alice?x=1",
            "mimi://a.example/u/alice#f",
            "https://a.example/u/alice",
            "mimi:///u/alice",
            "mimi://a.example/u/",
            "mimi://a.example/x/alice",
            "mimi://a.example/u/al ice",
        ] {
            assert!(MimiUri::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            MimiUri::from_bytes(b"mimi://a.example/u/\xff"),
            Err(UriError::NotUtf8)
        );
        assert_eq!(
            MimiUri::from_bytes(&vec![b'a'; MAX_URI_LEN + 1]),
            Err(UriError::TooLong)
        );
    }

    #[test]
    fn typed_uris_check_their_kind() {
        assert!(RoomId::parse("mimi://a.example/u/alice").is_err());
        assert!(ClientId::parse("mimi://a.example/d/ClientA1").is_err());
        let client = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        assert_eq!(client.user().as_str(), "mimi://a.example/u/alice");
        let again = ClientId::new(&client.user(), "phone").unwrap();
        assert_eq!(again, client);
    }
}
