//! Preferences and consent of one local user (MIMI.md §4 "consent records", §5.1, §5.6, §5.7;
//! protocol-06 §5.7, §5.8; DESIGN.md §5).
//!
//! What it owns, per user, in the shard of the user (next to its clients and KeyPackages, so
//! that a `keyMaterial` claim decides consent and takes KeyPackages in one apply):
//! - the two preferences: [`Discoverability`] (who may find the user with `identifierQuery`)
//!   and [`Reachability`] (who may fetch its KeyPackages, i.e. add it to rooms);
//! - as a **target**: the consent requests waiting for the user's decision, and its decisions
//!   (grant or revoke, global or for one room);
//! - as a **requester**: what the user asked of others and what they answered, so the
//!   requester's provider knows a grant arrived (MIMI.md §5.6: providers keep both sides).
//!
//! Decisions. A scope is (requester, optional room). The latest decision wins: a global
//! decision drops this requester's older room-scoped ones, and a room-scoped decision is then
//! newer than the global one, so for a fetch in room R the room's decision, if any, counts,
//! else the global one. A revoke is also a pre-emptive deny (MIMI.md §5.6): it refuses a
//! requester even when the reachability preference alone would let it in. A user always
//! reaches itself (its own new devices).
//!
//! Defaults ([IMPL CHOICE], a provider could choose otherwise): discoverable by everyone and
//! reachable by anyone, as users of today's messaging services expect; a user opts into
//! stricter settings.
//!
//! Bounds: at most [`MAX_CONSENT_ENTRIES`] pending requests, decisions and outgoing records
//! per user. A request or decision beyond the bound is refused (`TooManyConsentEntries`) and
//! changes nothing; the edges count it in `mimid_limit_hits_total{limit="consent_records"}`
//! and still answer a refused request's sender 201, so a full inbox does not reveal anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{RoomId, UserId};

/// Most pending requests, decisions and outgoing records one user keeps (each).
pub const MAX_CONSENT_ENTRIES: usize = 1024;

/// Who may find the user with `identifierQuery` (MIMI.md §5.7). An undiscoverable user is
/// answered exactly like an unknown one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Discoverability {
    /// Anyone who knows one of its handles.
    #[default]
    Everyone,
    /// Only users it granted consent to (globally or for some room).
    Consented,
    /// Nobody.
    Nobody,
}

/// Who may fetch the user's KeyPackages, i.e. add it to rooms (MIMI.md §5.1, §5.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reachability {
    /// Anyone it has not revoked.
    #[default]
    Anyone,
    /// Only users it granted consent to (globally, or for the room of the fetch).
    ConsentRequired,
    /// Only users of its own provider (a grant does not open it to others).
    OwnProvider,
}

/// A user's two preferences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// Who may find the user.
    pub discoverability: Discoverability,
    /// Who may add the user.
    pub reachability: Reachability,
}

/// Why a KeyPackage fetch was refused (protocol-06 §5.1 user codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentRefusal {
    /// `noConsent(5)`: the requester may not add the user to any room.
    NoConsent,
    /// `noConsentForThisRoom(6)`: the requester may add the user to some other room, not this
    /// one.
    NoConsentForThisRoom,
}

/// What the target of a consent scope does or receives (apply side of
/// `Command::ConsentAsTarget`). KeyPackages of a grant are handled by the directory around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetStep {
    /// A request arrived.
    Request,
    /// The requester withdrew its request.
    Cancel,
    /// The user granted.
    Grant,
    /// The user revoked (or denied in advance).
    Revoke,
}

/// What the requester's side learns (apply side of `Command::ConsentAsRequester`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequesterAction {
    /// The user asked the target.
    Requested,
    /// The user withdrew its request.
    Cancelled,
    /// The target granted, possibly with KeyPackages (bare TLS `KeyPackage`s of its clients)
    /// to add it at once.
    Granted {
        /// The KeyPackages, validated at the edge.
        key_packages: Vec<Vec<u8>>,
    },
    /// The target revoked.
    Revoked,
}

/// The state of one consent scope, as listed to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentState {
    /// Asked, not answered.
    Requested,
    /// Granted.
    Granted,
    /// Revoked or denied.
    Revoked,
}

/// One consent scope as listed to a user (`incoming`: the user is the target; `outgoing`: the
/// user is the requester).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// Who asks (or may fetch).
    pub requester: UserId,
    /// Whose consent it is.
    pub target: UserId,
    /// The room, for a room-scoped consent.
    pub room: Option<RoomId>,
    /// Where it stands.
    pub state: ConsentState,
    /// Hub time of the last change.
    pub at_ms: u64,
    /// KeyPackages that came with a grant (outgoing records only).
    pub key_packages: Vec<Vec<u8>>,
}

/// Everything a user sees of its consent: requests to it and its decisions (`incoming`), and
/// its own requests with their answers (`outgoing`), each in scope order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentListing {
    /// The user is the target.
    pub incoming: Vec<ConsentRecord>,
    /// The user is the requester.
    pub outgoing: Vec<ConsentRecord>,
}

/// The other party of a scope, and the room of a room-scoped consent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct ScopeKey {
    other: UserId,
    room: Option<RoomId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Decision {
    granted: bool,
    at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Outgoing {
    state: ConsentState,
    at_ms: u64,
    key_packages: Vec<Vec<u8>>,
}

/// A consent command that cannot be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// Preferences and consent of one user (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConsent {
    preferences: Preferences,
    /// As target: requests waiting for a decision, with their arrival time.
    pending: BTreeMap<ScopeKey, u64>,
    /// As target: the user's decisions.
    decisions: BTreeMap<ScopeKey, Decision>,
    /// As requester: the user's requests and the answers.
    outgoing: BTreeMap<ScopeKey, Outgoing>,
}

impl UserConsent {
    /// The user's preferences.
    pub fn preferences(&self) -> Preferences {
        self.preferences
    }

    pub(crate) fn set_preferences(&mut self, preferences: Preferences) {
        self.preferences = preferences;
    }

    /// Whether `requester` may fetch KeyPackages of `target` (this user) to add it to `room`
    /// (MIMI.md §5.1 consent, §5.6); without a room only global decisions count. See the
    /// module documentation for the rules.
    pub fn check_reach(
        &self,
        target: &UserId,
        requester: &UserId,
        room: Option<&RoomId>,
    ) -> Result<(), ConsentRefusal> {
        if requester == target {
            return Ok(());
        }
        let same_provider = requester.domain() == target.domain();
        if self.preferences.reachability == Reachability::OwnProvider && !same_provider {
            return Err(ConsentRefusal::NoConsent);
        }
        let in_room = room.and_then(|room| {
            self.decisions.get(&ScopeKey {
                other: requester.clone(),
                room: Some(room.clone()),
            })
        });
        let global = self.decisions.get(&ScopeKey {
            other: requester.clone(),
            room: None,
        });
        let allowed = match in_room.or(global) {
            Some(decision) => decision.granted,
            None => self.reachable_by_default(same_provider),
        };
        if allowed {
            return Ok(());
        }
        let elsewhere = global.map_or(self.reachable_by_default(same_provider), |d| d.granted)
            || self.decisions.iter().any(|(key, decision)| {
                key.other == *requester
                    && key.room.as_ref().is_some_and(|other| Some(other) != room)
                    && decision.granted
            });
        Err(if elsewhere {
            ConsentRefusal::NoConsentForThisRoom
        } else {
            ConsentRefusal::NoConsent
        })
    }

    /// Whether `requester` (`None`: a query that names no requester) may find this user
    /// (MIMI.md §5.7).
    pub fn discoverable_by(&self, requester: Option<&UserId>) -> bool {
        match self.preferences.discoverability {
            Discoverability::Everyone => true,
            Discoverability::Nobody => false,
            Discoverability::Consented => requester.is_some_and(|requester| {
                self.decisions
                    .iter()
                    .any(|(key, decision)| key.other == *requester && decision.granted)
            }),
        }
    }

    /// Records what happens to the scope (`requester`, `room`) of which this user is the
    /// target. `Err(Full)`, with nothing recorded, when a new request or decision would exceed
    /// [`MAX_CONSENT_ENTRIES`] (see the module documentation).
    pub(crate) fn apply_as_target(
        &mut self,
        requester: &UserId,
        room: Option<&RoomId>,
        step: TargetStep,
        at_ms: u64,
    ) -> Result<(), Full> {
        let key = ScopeKey {
            other: requester.clone(),
            room: room.cloned(),
        };
        match step {
            TargetStep::Request => {
                let decided = self
                    .decisions
                    .get(&key)
                    .or_else(|| {
                        self.decisions.get(&ScopeKey {
                            other: requester.clone(),
                            room: None,
                        })
                    })
                    .is_some();
                // Granted already: nothing to ask. Revoked: a pre-emptive deny drops it.
                if decided {
                    return Ok(());
                }
                // A full inbox drops the request; `Full` lets the edge count the limit hit
                // (its sender is answered 201 all the same).
                if self.pending.len() >= MAX_CONSENT_ENTRIES && !self.pending.contains_key(&key) {
                    return Err(Full);
                }
                self.pending.entry(key).or_insert(at_ms);
                Ok(())
            }
            TargetStep::Cancel => {
                self.pending.remove(&key);
                Ok(())
            }
            TargetStep::Grant | TargetStep::Revoke => {
                let global = key.room.is_none();
                if global {
                    // The latest decision wins: older room-scoped ones no longer count.
                    self.decisions
                        .retain(|other, _| other.other != *requester || other.room.is_none());
                }
                if self.decisions.len() >= MAX_CONSENT_ENTRIES && !self.decisions.contains_key(&key)
                {
                    return Err(Full);
                }
                self.pending
                    .retain(|other, _| other.other != *requester || (!global && *other != key));
                self.decisions.insert(
                    key,
                    Decision {
                        granted: step == TargetStep::Grant,
                        at_ms,
                    },
                );
                Ok(())
            }
        }
    }

    /// Records what happened to the scope (`target`, `room`) of which this user is the
    /// requester. `Err(Full)` when a new record would exceed [`MAX_CONSENT_ENTRIES`].
    pub(crate) fn apply_as_requester(
        &mut self,
        target: &UserId,
        room: Option<&RoomId>,
        action: RequesterAction,
        at_ms: u64,
    ) -> Result<(), Full> {
        let key = ScopeKey {
            other: target.clone(),
            room: room.cloned(),
        };
        if self.outgoing.len() >= MAX_CONSENT_ENTRIES && !self.outgoing.contains_key(&key) {
            return Err(Full);
        }
        let (state, key_packages) = match action {
            RequesterAction::Cancelled => {
                if self
                    .outgoing
                    .get(&key)
                    .is_some_and(|record| record.state == ConsentState::Requested)
                {
                    self.outgoing.remove(&key);
                }
                return Ok(());
            }
            RequesterAction::Requested => {
                if self
                    .outgoing
                    .get(&key)
                    .is_some_and(|record| record.state == ConsentState::Granted)
                {
                    return Ok(()); // asking again changes nothing once granted
                }
                (ConsentState::Requested, Vec::new())
            }
            RequesterAction::Granted { key_packages } => (ConsentState::Granted, key_packages),
            RequesterAction::Revoked => (ConsentState::Revoked, Vec::new()),
        };
        self.outgoing.insert(
            key,
            Outgoing {
                state,
                at_ms,
                key_packages,
            },
        );
        Ok(())
    }

    /// What `user` (the owner of this state) sees of its consent.
    pub fn listing(&self, user: &UserId) -> ConsentListing {
        let incoming_pending = self.pending.iter().map(|(key, at_ms)| ConsentRecord {
            requester: key.other.clone(),
            target: user.clone(),
            room: key.room.clone(),
            state: ConsentState::Requested,
            at_ms: *at_ms,
            key_packages: Vec::new(),
        });
        let incoming_decided = self.decisions.iter().map(|(key, decision)| ConsentRecord {
            requester: key.other.clone(),
            target: user.clone(),
            room: key.room.clone(),
            state: if decision.granted {
                ConsentState::Granted
            } else {
                ConsentState::Revoked
            },
            at_ms: decision.at_ms,
            key_packages: Vec::new(),
        });
        let outgoing = self.outgoing.iter().map(|(key, record)| ConsentRecord {
            requester: user.clone(),
            target: key.other.clone(),
            room: key.room.clone(),
            state: record.state,
            at_ms: record.at_ms,
            key_packages: record.key_packages.clone(),
        });
        ConsentListing {
            incoming: incoming_pending.chain(incoming_decided).collect(),
            outgoing: outgoing.collect(),
        }
    }

    fn reachable_by_default(&self, same_provider: bool) -> bool {
        match self.preferences.reachability {
            Reachability::Anyone => true,
            Reachability::ConsentRequired => false,
            Reachability::OwnProvider => same_provider,
        }
    }
}
