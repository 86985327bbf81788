//! User profiles and the handle index that `identifierQuery` searches (MIMI.md §5.7, §6.8;
//! protocol-06 §5.8).
//!
//! What it owns: per local user, the profile its own client set (a display name and its
//! handles: at most one nick, a few e-mail addresses and E.164 phone numbers), and the index
//! `handle → user` that makes every handle unique within the provider.
//!
//! Where it lives: the whole index is in one shard, the shard of [`PROFILES_SHARD_KEY`]
//! (`Command::SetProfile`), so that "this handle is free" and "it is now mine" are one apply:
//! two users claiming one handle concurrently are ordered by the log and the second gets
//! [`ProfileError::HandleTaken`]. Profile writes are rare (a user edits its profile, it does
//! not send it per message), so one shard carries them easily. The user's preferences and
//! consent, which `keyMaterial` must decide atomically with the claim, live in the user's own
//! shard instead ([`super::consent`]).
//!
//! Handles are validated strictly when they are built ([`Nick::parse`], [`Email::parse`],
//! [`Phone::parse`]), and again when a command or a snapshot is decoded (serde goes through the
//! same constructors), so the index never holds a malformed handle. Matching is exact on the
//! normalised form (MIMI.md §5.7): a nick as given (lowercase only), an e-mail address with its
//! domain lowercased, a phone number as `+` and digits. The `im:` handle URI of a user is not
//! stored: it is `im:<nick>@<provider domain>` ([IMPL CHOICE]: the handle and the nick are one
//! name, so "nick = user part of the handle" holds by construction).
//!
//! What it deliberately does not do: decide who may find whom. [`Profiles::find`] answers
//! which user a query names; whether the requester may learn it (the discoverability
//! preference) is decided by the caller with the target's consent state, and an undiscoverable
//! user is then answered exactly like an unknown one.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::UserId;

/// The shard key of the handle index and the profiles (see the module documentation). It
/// cannot collide with a user's or a room's key, which are `mimi://` URIs.
pub const PROFILES_SHARD_KEY: &[u8] = b"mimid:profiles";

/// Longest display name, in bytes of UTF-8.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
/// Longest nick, in bytes.
pub const MAX_NICK_LEN: usize = 64;
/// Longest e-mail address (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest local part of an e-mail address (RFC 5321 §4.5.3.1.1).
pub const MAX_EMAIL_LOCAL_LEN: usize = 64;
/// Fewest digits of a phone number after the `+`.
pub const MIN_PHONE_DIGITS: usize = 8;
/// Most digits of a phone number after the `+` (ITU-T E.164 §6).
pub const MAX_PHONE_DIGITS: usize = 15;
/// Most e-mail addresses one profile lists.
pub const MAX_EMAILS_PER_USER: usize = 4;
/// Most phone numbers one profile lists.
pub const MAX_PHONES_PER_USER: usize = 4;

/// Why a handle, a display name or a whole profile was refused. A refused profile changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ProfileError {
    /// A nick outside `[a-z0-9._-]`, too long, empty, or not starting and ending with a
    /// letter or digit.
    #[error("nick {value:?}: {reason}")]
    InvalidNick {
        /// The offered value.
        value: String,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// Not an RFC 5322 `addr-spec` of the accepted form.
    #[error("e-mail address {value:?}: {reason}")]
    InvalidEmail {
        /// The offered value.
        value: String,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// Not `+` followed by 8 to 15 digits.
    #[error("phone number {value:?}: {reason}")]
    InvalidPhone {
        /// The offered value.
        value: String,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// A display name that is too long or holds control characters.
    #[error("display name: {reason}")]
    InvalidDisplayName {
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// More e-mail addresses or phone numbers than a profile may list.
    #[error("a profile lists at most {max} {what}, not {count}")]
    TooManyHandles {
        /// `e-mail addresses` or `phone numbers`.
        what: Cow<'static, str>,
        /// The bound.
        max: usize,
        /// How many were offered.
        count: usize,
    },
    /// The same handle twice in one profile.
    #[error("{handle} is listed twice")]
    DuplicateHandle {
        /// The handle.
        handle: Handle,
    },
    /// Another user of this provider owns the handle (handles are unique per provider).
    #[error("{handle} belongs to another user")]
    HandleTaken {
        /// The handle.
        handle: Handle,
    },
}

/// A nick: the user part of the user's `im:` handle (MIMI.md §5.7 `nick`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nick(String);

/// An e-mail address (RFC 5322 §3.4.1 `addr-spec`, dot-atom form, ASCII), its domain
/// lowercased (MIMI.md §5.7 `email`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

/// An E.164 phone number written `+` and 8 to 15 digits (MIMI.md §5.7 `phone`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Nick {
    /// Validates a nick: 1 to [`MAX_NICK_LEN`] bytes of `a-z`, `0-9`, `.`, `_` and `-`,
    /// starting and ending with a letter or digit. Uppercase is refused rather than folded, so
    /// that exact matching (MIMI.md §5.7) has one answer.
    pub fn parse(value: &str) -> Result<Nick, ProfileError> {
        let invalid = |reason: &'static str| ProfileError::InvalidNick {
            value: truncated(value),
            reason: reason.into(),
        };
        if value.is_empty() {
            return Err(invalid("is empty"));
        }
        if value.len() > MAX_NICK_LEN {
            return Err(invalid("is longer than 64 bytes"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(invalid(
                "may hold only lowercase letters, digits, '.', '_' and '-'",
            ));
        }
        let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
        if !alnum(value.as_bytes().first()) || !alnum(value.as_bytes().last()) {
            return Err(invalid("must start and end with a letter or digit"));
        }
        Ok(Nick(value.to_owned()))
    }

    /// The nick.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user's `im:` handle URI at provider `domain` (MIMI.md §5.7 `handle`).
    pub fn handle_uri(&self, domain: &str) -> String {
        format!("im:{}@{domain}", self.0)
    }
}

impl Email {
    /// Validates an e-mail address: exactly one `@`; a local part of 1 to 64 bytes of
    /// RFC 5322 `atext` and single dots, not starting or ending with a dot; a domain of DNS
    /// labels (letters, digits, hyphens), which is lowercased; at most [`MAX_EMAIL_LEN`] bytes;
    /// no spaces, quotes, comments or address literals.
    pub fn parse(value: &str) -> Result<Email, ProfileError> {
        let invalid = |reason: &'static str| ProfileError::InvalidEmail {
            value: truncated(value),
            reason: reason.into(),
        };
        if value.len() > MAX_EMAIL_LEN {
            return Err(invalid("is longer than 254 bytes"));
        }
        let mut parts = value.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("must contain exactly one '@'"));
        };
        if local.is_empty() {
            return Err(invalid("the local part is empty"));
        }
        if local.len() > MAX_EMAIL_LOCAL_LEN {
            return Err(invalid("the local part is longer than 64 bytes"));
        }
        if !local.bytes().all(is_atext_or_dot) {
            return Err(invalid(
                "the local part holds a character outside RFC 5322 atext (spaces, quotes, \
                 brackets, non-ASCII)",
            ));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(invalid(
                "the local part starts or ends with a dot, or has two in a row",
            ));
        }
        if domain.is_empty() {
            return Err(invalid("the domain is empty"));
        }
        let domain = domain.to_ascii_lowercase();
        if !domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }) {
            return Err(invalid("the domain is not a DNS name"));
        }
        Ok(Email(format!("{local}@{domain}")))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Phone {
    /// Validates an E.164 number: `+`, then 8 to 15 ASCII digits, the first not `0` (country
    /// codes never start with 0). No spaces, dashes or parentheses.
    pub fn parse(value: &str) -> Result<Phone, ProfileError> {
        let invalid = |reason: &'static str| ProfileError::InvalidPhone {
            value: truncated(value),
            reason: reason.into(),
        };
        let Some(digits) = value.strip_prefix('+') else {
            return Err(invalid("must start with '+'"));
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("must hold only digits after the '+'"));
        }
        if !(MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits.len()) {
            return Err(invalid("must have 8 to 15 digits (E.164)"));
        }
        if digits.starts_with('0') {
            return Err(invalid("a country code does not start with 0"));
        }
        Ok(Phone(value.to_owned()))
    }

    /// The number, `+` and digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A searchable handle: the key of the index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Handle {
    /// The nick (and thereby the `im:` handle).
    Nick(Nick),
    /// An e-mail address.
    Email(Email),
    /// A phone number.
    Phone(Phone),
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handle::Nick(nick) => write!(f, "nick {}", nick.as_str()),
            Handle::Email(email) => write!(f, "e-mail address {}", email.as_str()),
            Handle::Phone(phone) => write!(f, "phone number {}", phone.as_str()),
        }
    }
}

/// What a user's client set about it. The default is the empty profile: no handle, so the
/// user cannot be found by any query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Shown to people who found the user; never searched.
    display_name: String,
    nick: Option<Nick>,
    emails: Vec<Email>,
    phones: Vec<Phone>,
}

impl Profile {
    /// A profile from validated parts, checking the display name, the bounds and that no
    /// handle is listed twice.
    ///
    /// ```
    /// use mimid_actors::directory::profile::{Email, Nick, Phone, Profile};
    ///
    /// let profile = Profile::new(
    ///     "Alice Smith".into(),
    ///     Some(Nick::parse("alice.smith").unwrap()),
    ///     vec![Email::parse("Alice@A.Example").unwrap()],
    ///     vec![Phone::parse("+15551234567").unwrap()],
    /// )
    /// .unwrap();
    /// assert_eq!(profile.emails()[0].as_str(), "Alice@a.example");
    /// assert_eq!(profile.handles().count(), 3);
    /// assert!(Phone::parse("+1 555 1234").is_err());
    /// ```
    pub fn new(
        display_name: String,
        nick: Option<Nick>,
        emails: Vec<Email>,
        phones: Vec<Phone>,
    ) -> Result<Profile, ProfileError> {
        let profile = Profile {
            display_name,
            nick,
            emails,
            phones,
        };
        profile.check()?;
        Ok(profile)
    }

    /// The display name.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The nick, if any.
    pub fn nick(&self) -> Option<&Nick> {
        self.nick.as_ref()
    }

    /// The e-mail addresses.
    pub fn emails(&self) -> &[Email] {
        &self.emails
    }

    /// The phone numbers.
    pub fn phones(&self) -> &[Phone] {
        &self.phones
    }

    /// Every handle of the profile, nick first.
    pub fn handles(&self) -> impl Iterator<Item = Handle> + '_ {
        self.nick
            .iter()
            .cloned()
            .map(Handle::Nick)
            .chain(self.emails.iter().cloned().map(Handle::Email))
            .chain(self.phones.iter().cloned().map(Handle::Phone))
    }

    fn is_empty(&self) -> bool {
        self.display_name.is_empty() && self.handles().next().is_none()
    }

    /// The checks of [`Profile::new`], run again in apply (a command's profile was decoded
    /// from the log; its handles are valid by construction, the rest is checked here).
    fn check(&self) -> Result<(), ProfileError> {
        if self.display_name.len() > MAX_DISPLAY_NAME_LEN {
            return Err(ProfileError::InvalidDisplayName {
                reason: "is longer than 128 bytes".into(),
            });
        }
        if self.display_name.chars().any(char::is_control) {
            return Err(ProfileError::InvalidDisplayName {
                reason: "holds control characters".into(),
            });
        }
        for (what, max, count) in [
            ("e-mail addresses", MAX_EMAILS_PER_USER, self.emails.len()),
            ("phone numbers", MAX_PHONES_PER_USER, self.phones.len()),
        ] {
            if count > max {
                return Err(ProfileError::TooManyHandles {
                    what: what.into(),
                    max,
                    count,
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for handle in self.handles() {
            if !seen.insert(handle.clone()) {
                return Err(ProfileError::DuplicateHandle { handle });
            }
        }
        Ok(())
    }
}

/// One element of an identifier query (protocol-06 §5.8 `QueryElement`), as the edge decoded
/// it. Search values are matched after the same normalisation as stored handles; a value that
/// is not a valid handle of its kind matches nobody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchTerm {
    /// `handle`: a whole handle URI, `im:<nick>@<domain>`.
    Handle(String),
    /// `nick`: the user part of a handle.
    Nick(String),
    /// `email`: an addr-spec.
    Email(String),
    /// `phone`: an E.164 number with `+`.
    Phone(String),
    /// A search type this provider does not search (`partialName`, `wholeProfile`,
    /// `oidcStdClaim`, `vcardField`).
    Unsupported,
}

/// What an identifier query names, before discoverability is applied (protocol-06 §5.8
/// `IdentifierQueryCode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryOutcome {
    /// Every element matched this one user.
    Found(UserId),
    /// No user matches every element.
    NotFound,
    /// The query has no element: not specific enough.
    Ambiguous,
    /// An element uses a search type that is not supported.
    UnsupportedField,
}

/// The profiles of the provider's users and the handle index (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profiles {
    by_user: BTreeMap<UserId, Profile>,
    owners: BTreeMap<Handle, UserId>,
}

impl Profiles {
    /// Replaces `user`'s profile (apply side of `Command::SetProfile`). All or nothing: a
    /// handle another user owns refuses the whole profile. The handles the user no longer
    /// lists become free; an empty profile removes the user from the index.
    pub fn set(&mut self, user: &UserId, profile: Profile) -> Result<(), ProfileError> {
        profile.check()?;
        for handle in profile.handles() {
            if self.owners.get(&handle).is_some_and(|owner| owner != user) {
                return Err(ProfileError::HandleTaken { handle });
            }
        }
        if let Some(old) = self.by_user.remove(user) {
            for handle in old.handles() {
                let removed = self.owners.remove(&handle);
                debug_assert_eq!(removed.as_ref(), Some(user), "the index names the owner");
            }
        }
        if profile.is_empty() {
            return Ok(());
        }
        for handle in profile.handles() {
            let previous = self.owners.insert(handle, user.clone());
            assert!(previous.is_none(), "a free handle was checked above");
        }
        self.by_user.insert(user.clone(), profile);
        Ok(())
    }

    /// `user`'s profile, if it set one.
    pub fn profile(&self, user: &UserId) -> Option<&Profile> {
        self.by_user.get(user)
    }

    /// The user that owns `handle`.
    pub fn owner(&self, handle: &Handle) -> Option<&UserId> {
        self.owners.get(handle)
    }

    /// Which user the ANDed `terms` name (MIMI.md §5.7), at provider `own_domain` (the
    /// domain of `im:` handles served here). Discoverability is the caller's business.
    pub fn find(&self, terms: &[SearchTerm], own_domain: &str) -> QueryOutcome {
        if terms.is_empty() {
            return QueryOutcome::Ambiguous;
        }
        if terms.contains(&SearchTerm::Unsupported) {
            return QueryOutcome::UnsupportedField;
        }
        let mut found: Option<&UserId> = None;
        for term in terms {
            let owner = handle_of(term, own_domain).and_then(|handle| self.owners.get(&handle));
            match (owner, found) {
                (None, _) => return QueryOutcome::NotFound,
                (Some(owner), Some(earlier)) if owner != earlier => return QueryOutcome::NotFound,
                (Some(owner), _) => found = Some(owner),
            }
        }
        match found {
            Some(user) => QueryOutcome::Found(user.clone()),
            None => QueryOutcome::NotFound,
        }
    }
}

/// The handle a search term names, if its value is a valid handle of its kind.
fn handle_of(term: &SearchTerm, own_domain: &str) -> Option<Handle> {
    match term {
        SearchTerm::Nick(value) => Nick::parse(value).ok().map(Handle::Nick),
        SearchTerm::Email(value) => Email::parse(value).ok().map(Handle::Email),
        SearchTerm::Phone(value) => Phone::parse(value).ok().map(Handle::Phone),
        SearchTerm::Handle(uri) => {
            let rest = uri
                .get(..3)
                .filter(|scheme| scheme.eq_ignore_ascii_case("im:"))
                .map(|_| &uri[3..])?;
            let (nick, domain) = rest.rsplit_once('@')?;
            if !domain.eq_ignore_ascii_case(own_domain) {
                return None;
            }
            Nick::parse(nick).ok().map(Handle::Nick)
        }
        SearchTerm::Unsupported => None,
    }
}

/// RFC 5322 §3.2.3 `atext`, plus the dot of a `dot-atom`.
fn is_atext_or_dot(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-.".contains(&b)
}

/// An offered value as it may appear in a refusal: at most 80 bytes, cut at a character
/// boundary.
fn truncated(value: &str) -> String {
    let mut end = value.len().min(80);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

impl TryFrom<String> for Nick {
    type Error = ProfileError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Nick::parse(&value)
    }
}

impl TryFrom<String> for Email {
    type Error = ProfileError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let email = Email::parse(&value)?;
        // A stored address is normalised already; anything else in a log is corruption.
        if email.0 != value {
            return Err(ProfileError::InvalidEmail {
                value: truncated(&value),
                reason: "is not normalised (the domain must be lowercase)".into(),
            });
        }
        Ok(email)
    }
}

impl TryFrom<String> for Phone {
    type Error = ProfileError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Phone::parse(&value)
    }
}

impl From<Nick> for String {
    fn from(value: Nick) -> Self {
        value.0
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl From<Phone> for String {
    fn from(value: Phone) -> Self {
        value.0
    }
}

impl fmt::Debug for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nick({:?})", self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({:?})", self.0)
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({:?})", self.0)
    }
}
