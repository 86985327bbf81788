//! The KeyPackage directory and client registry of the local users (MIMI.md §4, §5.1;
//! DESIGN.md §5).
//!
//! What it owns: per local user, the registered clients; per client, the SHA-256 of its bearer
//! token, its pool of single-use KeyPackages and at most one last-resort KeyPackage; and the
//! claimed-KeyPackage map `KeyPackageRef → (client, requester, claimed at, not_after)` that
//! routes an incoming Welcome to the client whose KeyPackage it uses.
//!
//! Where it runs: inside the Raft apply of the shard that owns the user (`Command::
//! RegisterClient`, `PublishKeyPackages`, `ClaimKeyPackagesInRoom`). Apply is deterministic: time
//! arrives as `now_ms` (the hub time the leader stamped), nothing reads a clock or an RNG, and
//! every map is a `BTreeMap`, so replicas and snapshots are byte-identical. Signature
//! verification is done once, at the edge, by [`validate_key_package`] before proposing;
//! [`Directory::publish`] re-decodes the KeyPackages cheaply and re-checks everything except
//! signatures.
//!
//! Invariants: a KeyPackage is served at most once (a claim removes it from the pool, and its
//! ref stays in the claimed map until it expires, so it cannot be re-published); an expired
//! KeyPackage is never served (RFC 9420 §10, protocol-06 §5.1 hard rules); the last-resort
//! KeyPackage is served only when the client's pool has nothing servable left, and is not
//! consumed. Each user has at most [`MAX_CLIENTS_PER_USER`] clients and each client at most
//! [`MAX_KEY_PACKAGES_PER_CLIENT`] unexpired single-use KeyPackages.
//!
//! Next to each user's clients live its preferences and consent ([`consent`]), so that a claim
//! for a room (`Command::ClaimKeyPackagesInRoom`) decides consent and takes the KeyPackages in
//! one apply: a refused claim consumes nothing. The provider's profiles and handle index
//! ([`profile`]) are a part of the directory too, but only the directory of the shard of
//! [`profile::PROFILES_SHARD_KEY`] holds any.
//!
//! What it deliberately does not do: rate limiting of claims and capability or cipher-suite
//! filtering of claims (protocol-06 §5.1 `requiredCapabilities`); those belong to the
//! key-material endpoint in front of it.

pub mod consent;
#[cfg(test)]
mod consent_tests;
mod key_package;
pub mod profile;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::{ClientId, RoomId, UserId};
use consent::{
    ConsentListing, ConsentRefusal, Full, Preferences, RequesterAction, TargetStep, UserConsent,
};
use profile::{Profile, ProfileError, Profiles, QueryOutcome, SearchTerm};

pub use key_package::{
    validate_key_package, KeyPackageError, KeyPackageLifetime, KeyPackageRef, ValidatedKeyPackage,
    MAX_KEY_PACKAGE_LEN, MAX_KEY_PACKAGE_LIFETIME, SUPPORTED_CIPHERSUITES,
};

/// Most unexpired single-use KeyPackages one client may have stored. A client refills its pool
/// as it drains; this bounds the memory and snapshot size one client can claim.
pub const MAX_KEY_PACKAGES_PER_CLIENT: usize = 1000;

/// Most clients one user may register. A claim returns one KeyPackage per client, so this also
/// bounds a key-material response.
pub const MAX_CLIENTS_PER_USER: usize = 64;

/// The KeyPackage directory of the users of one shard. See the module documentation.
///
/// ```
/// use mimid_actors::directory::{ClaimOutcome, ClientClaimResult, Directory, KeyMaterialUserCode};
/// use mimid_actors::ids::{ClientId, UserId};
///
/// let mut directory = Directory::default();
/// let phone = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
/// directory.register_client(&phone, [7; 32], None).unwrap();
/// assert!(directory.authenticate(&phone, &[7; 32]));
/// assert!(!directory.authenticate(&phone, &[8; 32]));
///
/// // Nothing published yet: the user is known, the client has no key material.
/// let bob = UserId::parse("mimi://b.example/u/bob").unwrap();
/// let outcome = directory.claim(&bob, &phone.user(), 1_700_000_000_000);
/// let ClaimOutcome::Claimed(claims) = &outcome else { panic!("alice is registered") };
/// assert_eq!(claims[0].result, ClientClaimResult::Exhausted);
/// assert_eq!(outcome.user_code(), KeyMaterialUserCode::NoCompatibleMaterial);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    users: BTreeMap<UserId, UserEntry>,
    claimed: BTreeMap<KeyPackageRef, ClaimRecord>,
    /// Non-empty only in the shard of [`profile::PROFILES_SHARD_KEY`].
    profiles: Profiles,
}

/// Who claimed a KeyPackage, kept for Welcome routing (MIMI.md §4) until the KeyPackage
/// expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The local client the KeyPackage belongs to.
    pub client: ClientId,
    /// The user whose provider asked for it (protocol-06 §5.1 `requestingUser`). For a
    /// last-resort KeyPackage, the most recent requester.
    pub requester: UserId,
    /// Hub time of the claim.
    pub claimed_at_ms: u64,
    /// The KeyPackage's `not_after`; the record is dropped once it has passed.
    pub not_after_s: u64,
}

/// Result of [`Directory::claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimOutcome {
    /// No client of the target user is registered here.
    UserUnknown,
    /// The target's reachability preference or consent refuses the requester (MIMI.md §5.1,
    /// §5.6); nothing was claimed.
    Refused(ConsentRefusal),
    /// One entry per registered client of the target user, in client URI order.
    Claimed(Vec<ClientClaim>),
}

/// One client's share of a claim (protocol-06 §5.1 `ClientKeyMaterial`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientClaim {
    /// The client (`clientUri`).
    pub client: ClientId,
    /// What it yielded.
    pub result: ClientClaimResult,
}

/// What one client yielded in a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientClaimResult {
    /// A bare TLS-encoded `KeyPackage`, now reserved for the requester.
    KeyPackage(Vec<u8>),
    /// Nothing servable: no unexpired KeyPackage and no last-resort one.
    Exhausted,
}

/// The protocol-06 §5.1 `KeyMaterialUserCode` values a claim can produce. The wire layer maps
/// them to their code points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMaterialUserCode {
    /// `success(0)`: a KeyPackage for every client.
    Success,
    /// `partialSuccess(1)`: a KeyPackage for at least one client, not all.
    PartialSuccess,
    /// `noCompatibleMaterial(3)`: the user has clients but none yielded a KeyPackage.
    /// [IMPL CHOICE] protocol-06 has no "all clients exhausted" code; this is the only failure
    /// code after which the clients list (here: all `keyMaterialExhausted`) may be sent.
    NoCompatibleMaterial,
    /// `userUnknown(4)`.
    UserUnknown,
    /// `noConsent(5)`.
    NoConsent,
    /// `noConsentForThisRoom(6)`.
    NoConsentForThisRoom,
}

/// The protocol-06 §5.1 `KeyMaterialClientCode` values a claim can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMaterialClientCode {
    /// `success(0)`.
    Success,
    /// `keyMaterialExhausted(1)`.
    KeyMaterialExhausted,
}

/// Why a directory command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum DirectoryError {
    /// The client is registered already; its token is never replaced silently.
    #[error("client is already registered")]
    AlreadyRegistered,
    /// The user has [`MAX_CLIENTS_PER_USER`] clients.
    #[error("user already has the maximum of {MAX_CLIENTS_PER_USER} clients")]
    TooManyClients,
    /// The user has clients already: a new one must be linked by one of them.
    #[error("the user has clients already: a new client must be linked by one of them (authenticate the registration with an existing client's token)")]
    LinkRequired,
    /// The publishing client is not registered.
    #[error("client is not registered")]
    UnknownClient,
    /// The batch holds no KeyPackage.
    #[error("no KeyPackage to publish")]
    EmptyBatch,
    /// A last-resort publication must carry exactly one KeyPackage.
    #[error("a last-resort publication carries exactly one KeyPackage, not {count}")]
    LastResortBatch {
        /// KeyPackages offered.
        count: usize,
    },
    /// The KeyPackage at `index` failed validation.
    #[error("KeyPackage {index}: {reason}")]
    InvalidKeyPackage {
        /// Position in the batch.
        index: usize,
        /// The defect.
        reason: KeyPackageError,
    },
    /// The `last_resort` extension of the KeyPackage at `index` does not match the request:
    /// the owning client keeps a last-resort KeyPackage's private key after use, and deletes
    /// a single-use one's, so serving one as the other breaks joins.
    #[error(
        "KeyPackage {index}: last_resort extension present = {marked}, request says otherwise"
    )]
    LastResortMismatch {
        /// Position in the batch.
        index: usize,
        /// Whether the KeyPackage carries the extension.
        marked: bool,
    },
    /// The KeyPackage at `index` is already stored, or appears earlier in the batch.
    #[error("KeyPackage {index} is a duplicate")]
    DuplicateKeyPackage {
        /// Position in the batch.
        index: usize,
    },
    /// The KeyPackage at `index` was handed out before; it must never be served again
    /// (protocol-06 §5.1).
    #[error("KeyPackage {index} was already claimed")]
    AlreadyClaimed {
        /// Position in the batch.
        index: usize,
    },
    /// The user has no registered client here. Consent commands for such a user change
    /// nothing; the edge answers as it would for a known user where existence must not leak.
    #[error("no such user")]
    UnknownUser,
    /// A profile was refused.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A user does not ask itself for consent, nor grant it to itself.
    #[error("requester and target are the same user")]
    SelfConsent,
    /// The user keeps [`consent::MAX_CONSENT_ENTRIES`] decisions or outgoing records already.
    #[error(
        "the user keeps the maximum of {} consent records of this kind",
        consent::MAX_CONSENT_ENTRIES
    )]
    TooManyConsentEntries,
    /// A grant carries more KeyPackages than a user has clients.
    #[error("a grant carries at most {MAX_CLIENTS_PER_USER} KeyPackages, not {count}")]
    TooManyGrantKeyPackages {
        /// KeyPackages offered.
        count: usize,
    },
    /// The KeyPackage at `index` of a grant is not one of a registered client of the granting
    /// user.
    #[error("grant KeyPackage {index}: {client} is not a registered client of the granting user")]
    GrantKeyPackageClient {
        /// Position in the grant.
        index: usize,
        /// The client its credential names.
        client: ClientId,
    },
    /// Storing the batch would exceed [`MAX_KEY_PACKAGES_PER_CLIENT`].
    #[error(
        "{stored} KeyPackages stored plus {offered} offered exceed the limit of \
         {MAX_KEY_PACKAGES_PER_CLIENT}"
    )]
    TooManyKeyPackages {
        /// Unexpired single-use KeyPackages already stored.
        stored: usize,
        /// Size of the batch.
        offered: usize,
    },
}

impl Directory {
    /// Registers `client` under its user with the SHA-256 of its bearer token.
    ///
    /// The first client of a user is registered as asked (creating the user's account is the
    /// provider's own business, outside MIMI). Every further client must be linked by an
    /// existing client of the same user (`linked_by`, authenticated by the caller), so nobody
    /// can add a device to someone else's account and receive the Welcomes meant for them.
    pub fn register_client(
        &mut self,
        client: &ClientId,
        token_hash: [u8; 32],
        linked_by: Option<&ClientId>,
    ) -> Result<(), DirectoryError> {
        let user = client.user();
        if let Some(entry) = self.users.get(&user) {
            if entry.clients.contains_key(client) {
                return Err(DirectoryError::AlreadyRegistered);
            }
            if entry.clients.len() >= MAX_CLIENTS_PER_USER {
                return Err(DirectoryError::TooManyClients);
            }
            if !entry.clients.is_empty()
                && !linked_by.is_some_and(|linker| entry.clients.contains_key(linker))
            {
                return Err(DirectoryError::LinkRequired);
            }
        }
        self.users
            .entry(user)
            .or_default()
            .clients
            .insert(client.clone(), ClientEntry::new(token_hash));
        Ok(())
    }

    /// True when `client` is registered with `token_hash`. The comparison takes the same time
    /// wherever the hashes differ.
    pub fn authenticate(&self, client: &ClientId, token_hash: &[u8; 32]) -> bool {
        self.client(client)
            .is_some_and(|entry| constant_time_eq(&entry.token_hash, token_hash))
    }

    /// True when `client` is registered.
    pub fn is_registered(&self, client: &ClientId) -> bool {
        self.client(client).is_some()
    }

    /// Stores KeyPackages of `client` (apply side of `Command::PublishKeyPackages`).
    ///
    /// Each KeyPackage is re-decoded (bare or `MLSMessage`-wrapped) and checked for suite,
    /// basic credential naming `client`, and lifetime at `now_ms`; signatures were verified by
    /// [`validate_key_package`] at the edge. KeyPackages are deduplicated by `KeyPackageRef`
    /// against the batch, the store and the claimed map. All or nothing: the first defect
    /// rejects the whole batch, naming its index, and nothing is stored.
    ///
    /// With `last_resort`, the batch is exactly one KeyPackage carrying the `last_resort`
    /// extension, and it replaces the client's last-resort KeyPackage; otherwise no KeyPackage
    /// may carry the extension. Returns how many KeyPackages were stored. A successful
    /// single-use publication also drops the client's expired KeyPackages.
    pub fn publish(
        &mut self,
        client: &ClientId,
        key_packages: &[Vec<u8>],
        last_resort: bool,
        now_ms: u64,
    ) -> Result<usize, DirectoryError> {
        let entry = self.client(client).ok_or(DirectoryError::UnknownClient)?;
        if key_packages.is_empty() {
            return Err(DirectoryError::EmptyBatch);
        }
        if last_resort && key_packages.len() != 1 {
            return Err(DirectoryError::LastResortBatch {
                count: key_packages.len(),
            });
        }
        if !last_resort {
            // Checked before decoding, so an oversized batch costs nothing.
            let stored = entry.live_count(now_ms);
            if stored + key_packages.len() > MAX_KEY_PACKAGES_PER_CLIENT {
                return Err(DirectoryError::TooManyKeyPackages {
                    stored,
                    offered: key_packages.len(),
                });
            }
        }
        let accepted = self.check_batch(entry, client, key_packages, last_resort, now_ms)?;
        let entry = self
            .client_mut(client)
            .expect("the client was found above and nothing removed it");
        if last_resort {
            entry.last_resort = accepted.into_iter().next();
            assert!(
                entry.last_resort.is_some(),
                "a last-resort batch has one entry"
            );
        } else {
            entry
                .pool
                .retain(|_, stored| !stored.lifetime.is_expired_at(now_ms));
            for stored in accepted {
                entry.pool.insert(entry.next_seq, stored);
                entry.next_seq += 1;
            }
            debug_assert!(entry.pool.len() <= MAX_KEY_PACKAGES_PER_CLIENT);
        }
        Ok(key_packages.len())
    }

    /// Claims one KeyPackage for every client of `target` on behalf of `requester`, checking
    /// no consent (the claim step of [`Directory::claim_with_consent`]; protocol-06 §5.1).
    ///
    /// Per client, in client URI order: expired KeyPackages are dropped and never served; the
    /// oldest published KeyPackage that is valid at `now_ms` is removed and returned; if there
    /// is none, the last-resort KeyPackage is returned and kept; otherwise the client is
    /// `Exhausted`. Every KeyPackage handed out is recorded for Welcome routing.
    pub fn claim(&mut self, requester: &UserId, target: &UserId, now_ms: u64) -> ClaimOutcome {
        let Directory { users, claimed, .. } = self;
        let Some(user) = users.get_mut(target) else {
            return ClaimOutcome::UserUnknown;
        };
        let claims = user
            .clients
            .iter_mut()
            .map(|(client, entry)| {
                let result = match entry.take_servable(now_ms) {
                    Some(served) => {
                        claimed.insert(
                            served.key_package_ref,
                            ClaimRecord {
                                client: client.clone(),
                                requester: requester.clone(),
                                claimed_at_ms: now_ms,
                                not_after_s: served.lifetime.not_after_s,
                            },
                        );
                        ClientClaimResult::KeyPackage(served.bytes)
                    }
                    None => ClientClaimResult::Exhausted,
                };
                ClientClaim {
                    client: client.clone(),
                    result,
                }
            })
            .collect();
        ClaimOutcome::Claimed(claims)
    }

    /// The registered clients of `user`, in URI order.
    pub fn clients_of(&self, user: &UserId) -> Vec<ClientId> {
        self.users
            .get(user)
            .map(|entry| entry.clients.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many single-use KeyPackages of `client` could be served at `now_ms` (the
    /// last-resort one is not counted). Zero for an unknown client.
    pub fn available_key_packages(&self, client: &ClientId, now_ms: u64) -> usize {
        self.client(client).map_or(0, |entry| {
            entry
                .pool
                .values()
                .filter(|stored| stored.lifetime.is_valid_at(now_ms))
                .count()
        })
    }

    /// Welcome routing (MIMI.md §4): the local client a claimed `KeyPackageRef` belongs to.
    pub fn client_for_ref(&self, key_package_ref: &[u8]) -> Option<&ClientId> {
        self.claim_record(key_package_ref)
            .map(|record| &record.client)
    }

    /// The full claim record of a claimed `KeyPackageRef`.
    pub fn claim_record(&self, key_package_ref: &[u8]) -> Option<&ClaimRecord> {
        self.claimed
            .get(&KeyPackageRef::from_slice(key_package_ref)?)
    }

    /// Drops what has expired at `now_ms`: claimed-ref records whose KeyPackage lifetime has
    /// ended (a Welcome for them could not be used any more), and expired stored KeyPackages,
    /// including last-resort ones.
    pub fn expire(&mut self, now_ms: u64) {
        self.claimed
            .retain(|_, record| record.not_after_s.saturating_mul(1000) > now_ms);
        for client in self
            .users
            .values_mut()
            .flat_map(|user| user.clients.values_mut())
        {
            client.drop_expired(now_ms);
        }
    }

    /// Replaces `user`'s profile in the provider's handle index (apply side of
    /// `Command::SetProfile`, in the shard of [`profile::PROFILES_SHARD_KEY`]).
    pub fn set_profile(&mut self, user: &UserId, profile: Profile) -> Result<(), DirectoryError> {
        Ok(self.profiles.set(user, profile)?)
    }

    /// The profiles and handle index this directory holds.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Which user the ANDed `terms` name, served at `own_domain` (MIMI.md §5.7), before
    /// discoverability (see [`Directory::discoverable_by`]).
    pub fn find(&self, terms: &[SearchTerm], own_domain: &str) -> QueryOutcome {
        self.profiles.find(terms, own_domain)
    }

    /// Sets `user`'s preferences (apply side of `Command::SetPreferences`).
    pub fn set_preferences(
        &mut self,
        user: &UserId,
        preferences: Preferences,
    ) -> Result<(), DirectoryError> {
        let entry = self
            .users
            .get_mut(user)
            .ok_or(DirectoryError::UnknownUser)?;
        entry.consent.set_preferences(preferences);
        Ok(())
    }

    /// `user`'s preferences; `None` for an unknown user.
    pub fn preferences(&self, user: &UserId) -> Option<Preferences> {
        self.users
            .get(user)
            .map(|entry| entry.consent.preferences())
    }

    /// Whether `requester` may find `target` with an identifier query (MIMI.md §5.7). An
    /// unknown target is never discoverable.
    pub fn discoverable_by(&self, target: &UserId, requester: Option<&UserId>) -> bool {
        self.users
            .get(target)
            .is_some_and(|entry| entry.consent.discoverable_by(requester))
    }

    /// What `user` sees of its consent; empty for an unknown user.
    pub fn consents(&self, user: &UserId) -> ConsentListing {
        self.users
            .get(user)
            .map(|entry| entry.consent.listing(user))
            .unwrap_or_default()
    }

    /// Records a consent step of the scope (`requester`, `room`) whose target is the local
    /// user `target` (apply side of `Command::ConsentAsTarget`; MIMI.md §5.6). A grant's
    /// KeyPackages are checked (a registered client of `target`, decodable, valid at `now_ms`,
    /// never stored nor claimed before) and recorded as claimed by `requester`, all or nothing
    /// together with the decision.
    pub fn consent_as_target(
        &mut self,
        target: &UserId,
        requester: &UserId,
        room: Option<&RoomId>,
        action: &TargetAction,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        if target == requester {
            return Err(DirectoryError::SelfConsent);
        }
        let entry = self.users.get(target).ok_or(DirectoryError::UnknownUser)?;
        let (step, granted) = match action {
            TargetAction::Request => (TargetStep::Request, Vec::new()),
            TargetAction::Cancel => (TargetStep::Cancel, Vec::new()),
            TargetAction::Revoke => (TargetStep::Revoke, Vec::new()),
            TargetAction::Grant { key_packages } => (
                TargetStep::Grant,
                self.check_granted(entry, target, key_packages, now_ms)?,
            ),
        };
        let Directory { users, claimed, .. } = self;
        let entry = users
            .get_mut(target)
            .expect("the user was found above and nothing removed it");
        entry
            .consent
            .apply_as_target(requester, room, step, now_ms)
            .map_err(|Full| DirectoryError::TooManyConsentEntries)?;
        for (client, key_package_ref, not_after_s) in granted {
            claimed.insert(
                key_package_ref,
                ClaimRecord {
                    client,
                    requester: requester.clone(),
                    claimed_at_ms: now_ms,
                    not_after_s,
                },
            );
        }
        Ok(())
    }

    /// Records what happened to the scope (`target`, `room`) whose requester is the local user
    /// `requester` (apply side of `Command::ConsentAsRequester`; MIMI.md §5.6: the requester's
    /// provider learns of grants and revocations).
    pub fn consent_as_requester(
        &mut self,
        requester: &UserId,
        target: &UserId,
        room: Option<&RoomId>,
        action: RequesterAction,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        if target == requester {
            return Err(DirectoryError::SelfConsent);
        }
        if let RequesterAction::Granted { key_packages } = &action {
            if key_packages.len() > MAX_CLIENTS_PER_USER {
                return Err(DirectoryError::TooManyGrantKeyPackages {
                    count: key_packages.len(),
                });
            }
            if let Some((index, bytes)) = key_packages
                .iter()
                .enumerate()
                .find(|(_, bytes)| bytes.len() > MAX_KEY_PACKAGE_LEN)
            {
                return Err(DirectoryError::InvalidKeyPackage {
                    index,
                    reason: KeyPackageError::TooLarge { len: bytes.len() },
                });
            }
        }
        let entry = self
            .users
            .get_mut(requester)
            .ok_or(DirectoryError::UnknownUser)?;
        entry
            .consent
            .apply_as_requester(target, room, action, now_ms)
            .map_err(|Full| DirectoryError::TooManyConsentEntries)
    }

    /// Claims for `requester` one KeyPackage of every client of `target` to add it to `room`,
    /// if `target`'s reachability and consent let `requester` in (apply side of
    /// `Command::ClaimKeyPackagesInRoom`; MIMI.md §5.1). A refusal claims nothing.
    pub fn claim_in_room(
        &mut self,
        requester: &UserId,
        target: &UserId,
        room: &RoomId,
        now_ms: u64,
    ) -> ClaimOutcome {
        self.claim_with_consent(requester, target, Some(room), now_ms)
    }

    /// [`Directory::claim_in_room`], for `room` or (`None`, the old `Command::ClaimKeyPackages`
    /// of logs written before consent existed) without a room scope: only `target`'s
    /// reachability and global decisions count then.
    pub fn claim_with_consent(
        &mut self,
        requester: &UserId,
        target: &UserId,
        room: Option<&RoomId>,
        now_ms: u64,
    ) -> ClaimOutcome {
        let Some(entry) = self.users.get(target) else {
            return ClaimOutcome::UserUnknown;
        };
        if let Err(refusal) = entry.consent.check_reach(target, requester, room) {
            return ClaimOutcome::Refused(refusal);
        }
        self.claim(requester, target, now_ms)
    }

    /// The checks of a grant's KeyPackages; returns what to record as claimed.
    fn check_granted(
        &self,
        entry: &UserEntry,
        target: &UserId,
        key_packages: &[GrantedKeyPackage],
        now_ms: u64,
    ) -> Result<Vec<(ClientId, KeyPackageRef, u64)>, DirectoryError> {
        if key_packages.len() > MAX_CLIENTS_PER_USER {
            return Err(DirectoryError::TooManyGrantKeyPackages {
                count: key_packages.len(),
            });
        }
        let mut seen = BTreeSet::new();
        let mut granted = Vec::with_capacity(key_packages.len());
        for (index, offered) in key_packages.iter().enumerate() {
            let Some(client_entry) = entry.clients.get(&offered.client) else {
                return Err(DirectoryError::GrantKeyPackageClient {
                    index,
                    client: offered.client.clone(),
                });
            };
            debug_assert_eq!(&offered.client.user(), target);
            let inspected = key_package::inspect(&offered.key_package, &offered.client, now_ms)
                .map_err(|reason| DirectoryError::InvalidKeyPackage { index, reason })?;
            if inspected.last_resort {
                return Err(DirectoryError::LastResortMismatch {
                    index,
                    marked: true,
                });
            }
            let key_package_ref = inspected.key_package_ref();
            let stored = client_entry
                .pool
                .values()
                .chain(client_entry.last_resort.as_ref())
                .any(|stored| stored.key_package_ref == key_package_ref);
            if stored || !seen.insert(key_package_ref) {
                return Err(DirectoryError::DuplicateKeyPackage { index });
            }
            if self.claimed.contains_key(&key_package_ref) {
                return Err(DirectoryError::AlreadyClaimed { index });
            }
            granted.push((
                offered.client.clone(),
                key_package_ref,
                inspected.lifetime.not_after_s,
            ));
        }
        Ok(granted)
    }

    /// Re-decodes and checks a batch against the client's state without changing anything.
    fn check_batch(
        &self,
        entry: &ClientEntry,
        client: &ClientId,
        key_packages: &[Vec<u8>],
        last_resort: bool,
        now_ms: u64,
    ) -> Result<Vec<StoredKeyPackage>, DirectoryError> {
        let mut known: BTreeSet<KeyPackageRef> = entry
            .pool
            .values()
            .chain(entry.last_resort.as_ref())
            .map(|stored| stored.key_package_ref)
            .collect();
        let mut accepted = Vec::with_capacity(key_packages.len());
        for (index, bytes) in key_packages.iter().enumerate() {
            let inspected = key_package::inspect(bytes, client, now_ms)
                .map_err(|reason| DirectoryError::InvalidKeyPackage { index, reason })?;
            if inspected.last_resort != last_resort {
                return Err(DirectoryError::LastResortMismatch {
                    index,
                    marked: inspected.last_resort,
                });
            }
            let key_package_ref = inspected.key_package_ref();
            if !known.insert(key_package_ref) {
                return Err(DirectoryError::DuplicateKeyPackage { index });
            }
            if self.claimed.contains_key(&key_package_ref) {
                return Err(DirectoryError::AlreadyClaimed { index });
            }
            accepted.push(StoredKeyPackage {
                key_package_ref,
                lifetime: inspected.lifetime,
                bytes: inspected.bytes.to_vec(),
            });
        }
        Ok(accepted)
    }

    fn client(&self, client: &ClientId) -> Option<&ClientEntry> {
        self.users.get(&client.user())?.clients.get(client)
    }

    fn client_mut(&mut self, client: &ClientId) -> Option<&mut ClientEntry> {
        self.users.get_mut(&client.user())?.clients.get_mut(client)
    }
}

impl ClaimOutcome {
    /// The protocol-06 §5.1 `userStatus` for this outcome.
    pub fn user_code(&self) -> KeyMaterialUserCode {
        let claims = match self {
            ClaimOutcome::UserUnknown => return KeyMaterialUserCode::UserUnknown,
            ClaimOutcome::Refused(ConsentRefusal::NoConsent) => {
                return KeyMaterialUserCode::NoConsent
            }
            ClaimOutcome::Refused(ConsentRefusal::NoConsentForThisRoom) => {
                return KeyMaterialUserCode::NoConsentForThisRoom
            }
            ClaimOutcome::Claimed(claims) => claims,
        };
        let served = claims
            .iter()
            .filter(|claim| claim.result.client_code() == KeyMaterialClientCode::Success)
            .count();
        if served == 0 {
            KeyMaterialUserCode::NoCompatibleMaterial
        } else if served == claims.len() {
            KeyMaterialUserCode::Success
        } else {
            KeyMaterialUserCode::PartialSuccess
        }
    }
}

impl ClientClaimResult {
    /// The protocol-06 §5.1 `clientStatus` for this result.
    pub fn client_code(&self) -> KeyMaterialClientCode {
        match self {
            ClientClaimResult::KeyPackage(_) => KeyMaterialClientCode::Success,
            ClientClaimResult::Exhausted => KeyMaterialClientCode::KeyMaterialExhausted,
        }
    }
}

/// What the target of a consent scope does or receives (`Command::ConsentAsTarget`,
/// MIMI.md §5.6 `ConsentOperation` seen from the target's provider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetAction {
    /// A requester asks (`requestConsent` with `request`).
    Request,
    /// The requester withdraws its request (`requestConsent` with `cancel`).
    Cancel,
    /// The target grants, optionally handing out KeyPackages of its clients so the requester
    /// can add it at once (`updateConsent` with `grant`).
    Grant {
        /// KeyPackages, each of a registered client of the target; recorded as claimed by the
        /// requester, so the Welcome that uses one is routed to its client (MIMI.md §4).
        key_packages: Vec<GrantedKeyPackage>,
    },
    /// The target revokes or denies in advance (`updateConsent` with `revoke`).
    Revoke,
}

/// A KeyPackage handed out with a grant, and the client its credential names (checked at the
/// edge with its signatures, and again in apply without them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedKeyPackage {
    /// The client of the granting user.
    pub client: ClientId,
    /// The bare TLS `KeyPackage`.
    pub key_package: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UserEntry {
    clients: BTreeMap<ClientId, ClientEntry>,
    /// Preferences and consent (MIMI.md §5.6).
    consent: UserConsent,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientEntry {
    token_hash: [u8; 32],
    /// Single-use KeyPackages by publication sequence, so "oldest first" is the map order.
    pool: BTreeMap<u64, StoredKeyPackage>,
    /// Sequence number of the next published KeyPackage; never reused.
    next_seq: u64,
    last_resort: Option<StoredKeyPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredKeyPackage {
    key_package_ref: KeyPackageRef,
    lifetime: KeyPackageLifetime,
    /// Bare TLS `KeyPackage`, as served.
    bytes: Vec<u8>,
}

impl ClientEntry {
    fn new(token_hash: [u8; 32]) -> Self {
        ClientEntry {
            token_hash,
            pool: BTreeMap::new(),
            next_seq: 0,
            last_resort: None,
        }
    }

    fn live_count(&self, now_ms: u64) -> usize {
        self.pool
            .values()
            .filter(|stored| !stored.lifetime.is_expired_at(now_ms))
            .count()
    }

    fn drop_expired(&mut self, now_ms: u64) {
        self.pool
            .retain(|_, stored| !stored.lifetime.is_expired_at(now_ms));
        if self
            .last_resort
            .as_ref()
            .is_some_and(|stored| stored.lifetime.is_expired_at(now_ms))
        {
            self.last_resort = None;
        }
    }

    /// Removes and returns the oldest KeyPackage valid at `now_ms`, else a copy of the
    /// last-resort one if it is valid. KeyPackages whose `not_before` is still ahead (possible
    /// when hub time steps back across a leader change) stay stored for later.
    fn take_servable(&mut self, now_ms: u64) -> Option<StoredKeyPackage> {
        self.drop_expired(now_ms);
        let oldest = self
            .pool
            .iter()
            .find(|(_, stored)| stored.lifetime.has_started_at(now_ms))
            .map(|(seq, _)| *seq);
        if let Some(seq) = oldest {
            return self.pool.remove(&seq);
        }
        self.last_resort
            .as_ref()
            .filter(|stored| stored.lifetime.has_started_at(now_ms))
            .cloned()
    }
}

/// Leaves the token hash out of logs.
impl fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("token_hash", &"<redacted>")
            .field("pool", &self.pool)
            .field("next_seq", &self.next_seq)
            .field("last_resort", &self.last_resort)
            .finish()
    }
}

/// Compares without an early exit, so timing does not reveal how many leading bytes match.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
