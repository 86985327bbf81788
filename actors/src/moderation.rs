//! What the operator decides about abuse, replicated like everything else (MIMI.md §5.8, §13;
//! protocol-06 §5.9): the provider's blocklist and the abuse reports its hosted rooms received.
//!
//! **Blocklist.** Users (`mimi://b.example/u/bob`) and whole provider domains the operator
//! blocked. Every shard keeps a copy ([`Blocklist`] in `ShardData`), changed by
//! `Command::SetBlock`, which the hub proposes to each shard in turn, the shard of
//! [`BLOCKLIST_SHARD_KEY`] first (`Hub::set_block`). Two readers, two copies:
//! - a room's apply decides with the copy of the room's own shard, so "a blocked user may not
//!   send here" is decided in apply like every other verdict, identically on every replica
//!   (a room shard cannot read another shard's state deterministically);
//! - the edges (which refuse a blocked provider's or user's requests before anything is
//!   proposed) and the operator's listing read the copy of the shard of
//!   [`BLOCKLIST_SHARD_KEY`], the authoritative one.
//!
//! The copies agree once `Hub::set_block` returns; an operation that failed half-way (a shard
//! without a leader) is reported to the operator, and repeating it is harmless (setting a block
//! twice changes nothing).
//!
//! A blocked user is refused as the sender or submitter of anything in rooms hosted here
//! ([`Blocklist::refusal_of_submitter`], [`handshake_senders`]); a blocked provider's users
//! are all blocked users.
//!
//! **Abuse reports.** A report whose franks the hub validated (the edge's job: the franking
//! keys are not replicated state) is kept in the shard of its room ([`AbuseReports`]), at most
//! [`MAX_ABUSE_REPORTS_PER_ROOM`] per room: the next one is refused, and the operator is
//! expected to act on (and clear, outside this module's scope) what is there.
//!
//! Not here: deciding what a report means. The store keeps evidence for a person to read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openmls::prelude::{Credential, MlsMessageBodyIn, MlsMessageIn, Sender};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tls_codec::{DeserializeBytes, VLBytes};

use crate::command::{HandshakeBundle, Submitter};
use crate::ids::{MimiUri, RoomId, UriKind, UserId};
use crate::room::identity::client_of_credential;

/// The key whose shard holds the authoritative blocklist (what the edges and the operator
/// read). Every other shard holds a copy for its rooms' applies.
pub const BLOCKLIST_SHARD_KEY: &[u8] = b"mimid:blocklist";

/// Most users plus domains one blocklist holds; a block beyond it is refused.
pub const MAX_BLOCKLIST_ENTRIES: usize = 100_000;

/// Most abuse reports kept per room; a report beyond it is refused.
pub const MAX_ABUSE_REPORTS_PER_ROOM: usize = 256;

/// What the operator blocks: one user, or every user of a provider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BlockTarget {
    User(UserId),
    /// A provider domain (lower case).
    Provider(String),
}

impl BlockTarget {
    /// Parses `mimi://d/u/x` (a user), `mimi://d` or a bare domain `d` (a provider).
    ///
    /// ```
    /// use mimid_actors::moderation::BlockTarget;
    /// assert!(matches!(BlockTarget::parse("mimi://b.example/u/bob"), Ok(BlockTarget::User(_))));
    /// assert_eq!(
    ///     BlockTarget::parse("B.example").unwrap(),
    ///     BlockTarget::Provider("b.example".into())
    /// );
    /// assert!(BlockTarget::parse("mimi://b.example/r/room").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<BlockTarget, String> {
        let text = text.trim();
        let uri_text = if text.contains("://") {
            text.to_owned()
        } else {
            format!("mimi://{text}")
        };
        let uri = MimiUri::parse(&uri_text).map_err(|e| format!("{text:?}: {e}"))?;
        match uri.kind() {
            UriKind::Provider => Ok(BlockTarget::Provider(uri.domain().to_owned())),
            UriKind::User => UserId::parse(uri.as_str())
                .map(BlockTarget::User)
                .map_err(|e| format!("{text:?}: {e}")),
            other => Err(format!(
                "{text:?} is a {} URI; a block names a user (mimi://domain/u/name) or a \
                 provider (domain)",
                format!("{other:?}").to_lowercase()
            )),
        }
    }
}

impl fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockTarget::User(user) => write!(f, "{user}"),
            BlockTarget::Provider(domain) => f.write_str(domain),
        }
    }
}

/// The blocklist is at [`MAX_BLOCKLIST_ENTRIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("the blocklist holds the maximum of {MAX_BLOCKLIST_ENTRIES} entries")]
pub struct BlocklistFull;

/// Users and provider domains blocked by the operator. Sorted sets, so that replicas and
/// snapshots are byte-identical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocklist {
    users: BTreeSet<UserId>,
    providers: BTreeSet<String>,
}

impl Blocklist {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.providers.is_empty()
    }

    pub fn users(&self) -> impl Iterator<Item = &UserId> {
        self.users.iter()
    }

    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(String::as_str)
    }

    /// Whether every request of provider `domain` is refused.
    pub fn blocks_provider(&self, domain: &str) -> bool {
        self.providers.contains(domain)
    }

    /// Whether `user` is blocked, itself or through its provider.
    pub fn blocks_user(&self, user: &UserId) -> bool {
        self.users.contains(user) || self.blocks_provider(user.domain())
    }

    /// Why `user` may not act here, if it is blocked: `user blocked: …` or, when its whole
    /// provider is, `provider blocked: …`.
    pub fn refusal_of_user(&self, user: &UserId) -> Option<String> {
        if self.blocks_provider(user.domain()) {
            Some(format!("provider blocked: {}", user.domain()))
        } else if self.users.contains(user) {
            Some(format!("user blocked: {user}"))
        } else {
            None
        }
    }

    /// Why a request of `submitter` (a local client, or a peer provider) may not act in a
    /// room hosted here, if it is blocked.
    pub fn refusal_of_submitter(&self, submitter: &Submitter) -> Option<String> {
        match submitter {
            Submitter::Client(client) => self.refusal_of_user(&client.user()),
            Submitter::Provider(domain) => self
                .blocks_provider(domain)
                .then(|| format!("provider blocked: {domain}")),
        }
    }

    /// Blocks (`blocked`) or unblocks `target`. Returns whether the list changed.
    pub(crate) fn set(
        &mut self,
        target: &BlockTarget,
        blocked: bool,
    ) -> Result<bool, BlocklistFull> {
        let full = self.users.len() + self.providers.len() >= MAX_BLOCKLIST_ENTRIES;
        Ok(match (target, blocked) {
            (BlockTarget::User(user), true) => {
                if self.users.contains(user) {
                    false
                } else if full {
                    return Err(BlocklistFull);
                } else {
                    self.users.insert(user.clone())
                }
            }
            (BlockTarget::Provider(domain), true) => {
                if self.providers.contains(domain) {
                    false
                } else if full {
                    return Err(BlocklistFull);
                } else {
                    self.providers.insert(domain.clone())
                }
            }
            (BlockTarget::User(user), false) => self.users.remove(user),
            (BlockTarget::Provider(domain), false) => self.providers.remove(domain),
        })
    }

    /// Why `bundle`, submitted by `submitter` to a room whose leaf `i` holds the client
    /// `member_at(i)`, may not be accepted because a blocked user sends it, if one does.
    /// Cheap when nothing is blocked (the common case): the bundle is not parsed then.
    pub fn refusal_of_handshake(
        &self,
        submitter: &Submitter,
        bundle: &HandshakeBundle,
        member_at: impl Fn(u32) -> Option<crate::ids::ClientId>,
    ) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        if let Some(reason) = self.refusal_of_submitter(submitter) {
            return Some(reason);
        }
        handshake_senders(bundle)
            .into_iter()
            .filter_map(|sender| match sender {
                HandshakeSender::Member(leaf) => member_at(leaf).map(|client| client.user()),
                HandshakeSender::Joiner(client) => Some(client.user()),
            })
            .find_map(|user| self.refusal_of_user(&user))
    }
}

/// Who sent a message of a handshake bundle, as far as it can be told before MLS validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeSender {
    /// A member, by leaf index (RFC 9420 §6 `sender_type` member).
    Member(u32),
    /// The committer of an external commit (`new_member_commit`), by the credential in its
    /// path's leaf node (RFC 9420 §12.4.3.2).
    Joiner(crate::ids::ClientId),
}

/// The MLS senders of `bundle`'s PublicMessages that can be read without validating them
/// (the signature is checked later, by the room's apply; a forged sender only gets its
/// message refused earlier). Messages that do not parse, and other sender types, are left to
/// the room's checks.
pub fn handshake_senders(bundle: &HandshakeBundle) -> Vec<HandshakeSender> {
    let messages: Vec<&[u8]> = match bundle {
        HandshakeBundle::Commit { commit, .. } => vec![commit.as_slice()],
        HandshakeBundle::Proposals { proposals } => proposals.iter().map(Vec::as_slice).collect(),
    };
    messages
        .into_iter()
        .filter_map(|bytes| {
            let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes).ok()?;
            let MlsMessageBodyIn::PublicMessage(public) = message.extract() else {
                return None;
            };
            match public.sender() {
                Sender::Member(leaf) => Some(HandshakeSender::Member(leaf.u32())),
                Sender::NewMemberCommit => external_committer(bytes).map(HandshakeSender::Joiner),
                Sender::External(_) | Sender::NewMemberProposal => None,
            }
        })
        .collect()
}

/// The client an external commit joins, from the credential of its path's leaf node (RFC 9420
/// §6 `MLSMessage`/`FramedContent`, §12.4 `Commit`, §7.6 `UpdatePath`, §7.2 `LeafNode`).
fn external_committer(bytes: &[u8]) -> Option<crate::ids::ClientId> {
    const PUBLIC_MESSAGE: u16 = 1;
    const NEW_MEMBER_COMMIT: u8 = 4;
    const COMMIT: u8 = 3;
    let (_version, rest) = u16::tls_deserialize_bytes(bytes).ok()?;
    let (wire_format, rest) = u16::tls_deserialize_bytes(rest).ok()?;
    if wire_format != PUBLIC_MESSAGE {
        return None;
    }
    let (_group_id, rest) = VLBytes::tls_deserialize_bytes(rest).ok()?;
    let (_epoch, rest) = u64::tls_deserialize_bytes(rest).ok()?;
    let (sender_type, rest) = u8::tls_deserialize_bytes(rest).ok()?;
    if sender_type != NEW_MEMBER_COMMIT {
        return None;
    }
    let (_authenticated_data, rest) = VLBytes::tls_deserialize_bytes(rest).ok()?;
    let (content_type, rest) = u8::tls_deserialize_bytes(rest).ok()?;
    if content_type != COMMIT {
        return None;
    }
    let (_proposals, rest) = VLBytes::tls_deserialize_bytes(rest).ok()?;
    let (has_path, rest) = u8::tls_deserialize_bytes(rest).ok()?;
    if has_path != 1 {
        return None;
    }
    let (_encryption_key, rest) = VLBytes::tls_deserialize_bytes(rest).ok()?;
    let (_signature_key, rest) = VLBytes::tls_deserialize_bytes(rest).ok()?;
    let (credential, _) = Credential::tls_deserialize_bytes(rest).ok()?;
    client_of_credential(&credential).ok()
}

/// One message of an abuse report, as the hub validated it (protocol-06 §5.9
/// `AbusiveMessage`): its frank matched its content, sender, room and accepted time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedMessage {
    /// The sender named in the content (extension 1) and bound by the frank.
    pub sender: UserId,
    /// The hub's accepted time of the message (ms since the UNIX epoch).
    pub accepted_ts_ms: u64,
    /// The message content (MIMI content bytes) the reporter revealed.
    pub content: Vec<u8>,
}

/// An abuse report whose every message's frank the hub validated (protocol-06 §5.9
/// `AbuseReport`, MIMI.md §5.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbuseReport {
    /// Who handed it in: a local client, or the reporter's provider.
    pub submitter: Submitter,
    /// The reporting user, when the report names one (protocol-06: "optionally").
    pub reporting_user: Option<UserId>,
    pub alleged_abuser: UserId,
    /// `AbuseType` (the draft's taxonomy is still to be defined; carried as is).
    pub reason_code: u8,
    /// The reporter's note (UTF-8, may be empty).
    pub note: String,
    pub messages: Vec<ReportedMessage>,
}

/// A report as stored: with the hub time it was recorded at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    /// Hub time of the record (ms since the UNIX epoch).
    pub received_ts_ms: u64,
    pub report: AbuseReport,
}

/// The room already holds [`MAX_ABUSE_REPORTS_PER_ROOM`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("the room holds the maximum of {MAX_ABUSE_REPORTS_PER_ROOM} abuse reports")]
pub struct ReportsFull;

/// The abuse reports of the rooms of one shard, oldest first per room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbuseReports {
    rooms: BTreeMap<RoomId, Vec<StoredReport>>,
}

impl AbuseReports {
    /// Records `report` for `room` at `ts_ms`; returns how many reports the room holds now.
    pub(crate) fn record(
        &mut self,
        room: &RoomId,
        report: AbuseReport,
        ts_ms: u64,
    ) -> Result<usize, ReportsFull> {
        let reports = self.rooms.entry(room.clone()).or_default();
        if reports.len() >= MAX_ABUSE_REPORTS_PER_ROOM {
            return Err(ReportsFull);
        }
        reports.push(StoredReport {
            received_ts_ms: ts_ms,
            report,
        });
        Ok(reports.len())
    }

    /// The reports of `room`, oldest first.
    pub fn of_room(&self, room: &RoomId) -> &[StoredReport] {
        self.rooms.get(room).map_or(&[], Vec::as_slice)
    }

    /// Takes out every report of `room` (the room leaves the shard, `room_move` module docs).
    pub(crate) fn take_room(&mut self, room: &RoomId) -> Vec<StoredReport> {
        self.rooms.remove(room).unwrap_or_default()
    }

    /// Puts in `reports` as the reports of `room` (the room came to the shard), replacing any;
    /// none leaves no entry, so the shard's snapshot is as if the room never had one.
    pub(crate) fn put_room(&mut self, room: &RoomId, reports: Vec<StoredReport>) {
        if reports.is_empty() {
            self.rooms.remove(room);
        } else {
            self.rooms.insert(room.clone(), reports);
        }
    }

    /// Every report, by room, oldest first within a room.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomId, &StoredReport)> {
        self.rooms
            .iter()
            .flat_map(|(room, reports)| reports.iter().map(move |report| (room, report)))
    }

    pub fn len(&self) -> usize {
        self.rooms.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ClientId;

    fn user(text: &str) -> UserId {
        UserId::parse(text).unwrap()
    }

    /// MIMI.md §13: a provider's block covers all its users; a user's block only that user.
    #[test]
    fn blocks_cover_users_and_whole_providers_and_undo() {
        let mut list = Blocklist::default();
        let bob = user("mimi://b.example/u/bob");
        let carol = user("mimi://b.example/u/carol");
        assert!(list.set(&BlockTarget::User(bob.clone()), true).unwrap());
        assert!(!list.set(&BlockTarget::User(bob.clone()), true).unwrap());
        assert!(list.blocks_user(&bob));
        assert!(!list.blocks_user(&carol));
        assert_eq!(
            list.refusal_of_user(&bob).as_deref(),
            Some("user blocked: mimi://b.example/u/bob")
        );
        assert!(list
            .set(&BlockTarget::Provider("b.example".into()), true)
            .unwrap());
        assert!(list.blocks_user(&carol));
        assert!(list.blocks_provider("b.example"));
        assert_eq!(
            list.refusal_of_submitter(&Submitter::Provider("b.example".into()))
                .as_deref(),
            Some("provider blocked: b.example")
        );
        let client = ClientId::parse("mimi://b.example/d/carol/phone").unwrap();
        assert!(list
            .refusal_of_submitter(&Submitter::Client(client))
            .unwrap()
            .starts_with("provider blocked"));
        assert!(list
            .set(&BlockTarget::Provider("b.example".into()), false)
            .unwrap());
        assert!(list.set(&BlockTarget::User(bob.clone()), false).unwrap());
        assert!(list.is_empty());
        assert!(!list.set(&BlockTarget::User(bob), false).unwrap());
    }

    #[test]
    fn block_targets_parse_users_and_domains_only() {
        assert_eq!(
            BlockTarget::parse("mimi://b.example").unwrap(),
            BlockTarget::Provider("b.example".into())
        );
        assert_eq!(
            BlockTarget::parse(" b.example ").unwrap().to_string(),
            "b.example"
        );
        for bad in ["mimi://b.example/d/bob/phone", "", "mimi://", "b.example/x"] {
            assert!(BlockTarget::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// P9: every store has a bound, and what is over it is refused, not dropped silently.
    #[test]
    fn reports_are_bounded_per_room() {
        let mut reports = AbuseReports::default();
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let report = AbuseReport {
            submitter: Submitter::Provider("b.example".into()),
            reporting_user: None,
            alleged_abuser: user("mimi://a.example/u/mallory"),
            reason_code: 0,
            note: String::new(),
            messages: Vec::new(),
        };
        for n in 1..=MAX_ABUSE_REPORTS_PER_ROOM {
            assert_eq!(reports.record(&room, report.clone(), 5), Ok(n));
        }
        assert_eq!(reports.record(&room, report, 6), Err(ReportsFull));
        assert_eq!(reports.of_room(&room).len(), MAX_ABUSE_REPORTS_PER_ROOM);
        assert_eq!(reports.len(), MAX_ABUSE_REPORTS_PER_ROOM);
    }

    #[test]
    fn unparsable_handshakes_name_no_sender() {
        let bundle = HandshakeBundle::Proposals {
            proposals: vec![vec![0, 1, 2]],
        };
        assert!(handshake_senders(&bundle).is_empty());
        let list = Blocklist::default();
        assert_eq!(
            list.refusal_of_handshake(&Submitter::Provider("b.example".into()), &bundle, |_| None),
            None
        );
    }
}
