//! The shard state machine: what one Raft group replicates (DESIGN.md §3).
//!
//! A shard holds the rooms whose id hashes to it and the users (clients, tokens, KeyPackages)
//! whose id hashes to it; a residency shard holds the rooms pinned to it instead, and a
//! pinned room's home shard holds its pin (`residency` module docs). `ShardMachine::apply` decodes a committed `Stamped` command and
//! decides its verdict deterministically from the ordered log (STYLE.md P5): the same log gives
//! every replica the same rooms, the same verdicts and the same bytes in `snapshot`.
//!
//! Reads (authentication, the room log for delivery, pre-checks) go straight to the shared
//! `ShardData` under a read lock; only apply takes the write lock. After every apply that
//! changed a room's log, the room id is recorded in `AppliedRooms`, a coalescing set that the
//! node drains to wake the room's actor for fan-out: bounded by the number of rooms, lossless.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mimid_cluster::{ShardId, StateMachine};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::cluster_meta::{ClusterMeta, MetaRefusal, METADATA_SHARD};
use crate::command::{Command, ReceivedItem, Stamped, SubmitVerdict, UpdateVerdict};
use crate::directory::{ClaimOutcome, Directory, DirectoryError};
use crate::franking::{frank_aad_of, FrankRecord, FrankRecords, ReceivedFrank};
use crate::ids::{ClientId, RoomId};
use crate::moderation::{AbuseReports, Blocklist, BlocklistFull, ReportsFull};
use crate::provider_keys::ProviderKeys;
use crate::residency::{Layout, PinRefusal, RoomPins};
use crate::room::core::{RoomRef, RoomView};
use crate::room::log::ItemBody;
use crate::room::mirror::MirrorRoom;
use crate::room::state::RoomState;
use crate::room_move::{MoveRefusal, RoomExport, RoomMoves, EXPORT_FORMAT};
use crate::shard_descriptors::{DescriptorRefusal, ShardDescriptors};

/// What applying one command produced; the proposer receives it. Serialisable because a
/// proposal forwarded to its shard's leader gets its output back from that node
/// (`hub::ProposalRouter`).
#[derive(Debug, Serialize, Deserialize)]
pub enum ApplyOutput {
    Registered(Result<(), DirectoryError>),
    Published(Result<usize, DirectoryError>),
    Claimed(ClaimOutcome),
    RoomCreated(Result<(), CreateRoomRejection>),
    Updated(UpdateVerdict),
    Submitted(SubmitVerdict),
    /// A follower's fan-out cursor moved (or the acknowledgement was stale).
    FanoutDelivered,
    /// A notify was recorded; `appended` items were new.
    FanoutReceived {
        appended: usize,
    },
    /// A local client's external join was recorded in a mirror; `opened` is false when it
    /// was receiving the room already.
    MirrorJoined {
        opened: bool,
    },
    Acked,
    Housekept,
    /// A profile was replaced (`Command::SetProfile`), or why not.
    ProfileSet(Result<(), DirectoryError>),
    /// Preferences were set (`Command::SetPreferences`), or why not.
    PreferencesSet(Result<(), DirectoryError>),
    /// A consent step was recorded (`Command::ConsentAsTarget`/`ConsentAsRequester`), or why
    /// not; `TooManyConsentEntries` is the per-user bound.
    ConsentRecorded(Result<(), DirectoryError>),
    /// This shard's copy of the blocklist was set; `Ok(true)` when it changed.
    BlockSet(Result<bool, BlocklistFull>),
    /// An abuse report was stored; `Ok(n)`: the room holds `n` reports now.
    AbuseReported(Result<usize, ReportsFull>),
    /// The entry could not be applied at all (undecodable, or a room command for a room this
    /// shard does not host). Nothing changed.
    Rejected(String),
    /// The node registry changed (`Ok(true)`), already said so (`Ok(false)`), or refused the
    /// change (`Command::ClusterMeta`, shard 0 only; `cluster_meta` module docs).
    ClusterMeta(Result<bool, MetaRefusal>),
    /// The provider keys in place after `Command::InstallProviderKeys`; `installed` when they
    /// are the ones offered, stored by this entry (`provider_keys` module docs).
    ProviderKeys {
        keys: ProviderKeys,
        installed: bool,
    },
    /// A shard descriptor was recorded (`Ok(true)`), was held already (`Ok(false)`), or was
    /// refused (`Command::RecordShardDescriptor`, shard 0 only; `shard_descriptors` module
    /// docs).
    ShardDescriptor(Result<bool, DescriptorRefusal>),
    /// A room was pinned to a residency shard (`Command::PinRoom`), or was refused
    /// `AlreadyExists` (it exists here unpinned or is pinned elsewhere).
    RoomPinned(Result<(), CreateRoomRejection>),
    /// A room was frozen for a move (`Command::FreezeRoom`): its `room_move::RoomExport`
    /// bytes, the same again for a repeated freeze; or why not.
    RoomFrozen(Result<Vec<u8>, MoveRefusal>),
    /// A room was installed from its export (`Command::AdoptRoom`; `Ok` too when hosted here
    /// already), or why not.
    RoomAdopted(Result<(), MoveRefusal>),
    /// The room's home shard pins it to the move's target (`Command::RepinRoom`; `Ok` too when
    /// it did already), or why not.
    RoomRepinned(Result<(), MoveRefusal>),
    /// A frozen room left this shard, which keeps a tombstone (`Command::ReleaseRoom`):
    /// `Ok(true)` when this command released it, `Ok(false)` for a repeated or stale release
    /// (nothing changed), or why not.
    RoomReleased(Result<bool, MoveRefusal>),
    /// The room is frozen for a move to shard `to`: the command was not applied (nothing
    /// changed); retry it where the room is once the move is done.
    RoomMoving {
        to: ShardId,
    },
    /// The room left this shard for shard `to`: the command was not applied; retry it there.
    RoomMoved {
        to: ShardId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateRoomRejection {
    AlreadyExists,
    Invalid(String),
}

/// The replicated data of one shard.
#[derive(Default)]
pub struct ShardData {
    rooms: BTreeMap<RoomId, RoomState>,
    /// Rooms hosted by other providers that local clients are in (follower role).
    mirrors: BTreeMap<RoomId, MirrorRoom>,
    directory: Directory,
    /// Derived index: every room a client has been a member of in this shard. Rebuilt by
    /// apply, so it is identical on every replica and after a restart.
    client_rooms: BTreeMap<ClientId, BTreeSet<RoomId>>,
    /// The node registry: seeded in shard 0 only ([`METADATA_SHARD`], `cluster_meta` module
    /// docs), empty in every other shard.
    cluster_meta: ClusterMeta,
    /// This shard's copy of the operator's blocklist (`moderation` module docs).
    blocklist: Blocklist,
    /// Abuse reports of this shard's hosted rooms.
    abuse_reports: AbuseReports,
    /// What delivery needs to attach Franks to this shard's rooms' messages (`franking`
    /// module docs).
    franks: FrankRecords,
    /// The provider's secret keys: held in the shard of `PROVIDER_KEYS_SHARD_KEY` once
    /// installed, `None` in every other shard (`provider_keys` module docs).
    provider_keys: Option<ProviderKeys>,
    /// Where every shard lives, as their leaders recorded it: in shard 0 only
    /// ([`METADATA_SHARD`], `shard_descriptors` module docs), empty in every other shard.
    descriptors: ShardDescriptors,
    /// Pinned rooms whose home this shard is (`residency` module docs).
    pins: RoomPins,
    /// Rooms frozen for a move out of this shard, and tombstones of rooms that left it
    /// (`room_move` module docs).
    moves: RoomMoves,
}

impl ShardData {
    pub fn room(&self, room: &RoomId) -> Option<&RoomState> {
        self.rooms.get(room)
    }

    pub fn mirror(&self, room: &RoomId) -> Option<&MirrorRoom> {
        self.mirrors.get(room)
    }

    /// A hosted or mirrored room, for delivery.
    pub fn view(&self, room: &RoomId) -> Option<RoomRef<'_>> {
        match self.rooms.get(room) {
            Some(state) => Some(RoomRef::Hosted(state)),
            None => self.mirrors.get(room).map(RoomRef::Mirrored),
        }
    }

    /// Hosted rooms of this shard.
    pub fn hosted(&self) -> impl Iterator<Item = &RoomState> {
        self.rooms.values()
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// This shard's copy of the blocklist.
    pub fn blocklist(&self) -> &Blocklist {
        &self.blocklist
    }

    /// The abuse reports of this shard's hosted rooms.
    pub fn abuse_reports(&self) -> &AbuseReports {
        &self.abuse_reports
    }

    /// The frank records of this shard's hosted and mirrored rooms.
    pub fn franks(&self) -> &FrankRecords {
        &self.franks
    }

    /// The node registry (seeded in shard 0 only).
    pub fn cluster_meta(&self) -> &ClusterMeta {
        &self.cluster_meta
    }

    /// The shard `room` is pinned to, when this is its home shard and it is pinned (to a
    /// residency shard at creation, or to a split shard by a move).
    pub fn pin(&self, room: &RoomId) -> Option<ShardId> {
        self.pins.get(room)
    }

    /// The split shard `room`, hosted here, is frozen for a move to (`room_move` module docs).
    pub fn moving_to(&self, room: &RoomId) -> Option<ShardId> {
        self.moves.moving_to(room)
    }

    /// The shard `room` moved to when it left this shard (its tombstone).
    pub fn moved_to(&self, room: &RoomId) -> Option<ShardId> {
        self.moves.moved_to(room)
    }

    /// Every room of this shard frozen for a move, with the shard it moves to, by room id.
    pub fn frozen_rooms(&self) -> impl Iterator<Item = (&RoomId, ShardId)> {
        self.moves.frozen_rooms()
    }

    /// This shard's frozen rooms and tombstones.
    pub fn room_moves(&self) -> &RoomMoves {
        &self.moves
    }

    /// The shard descriptors (recorded in shard 0 only).
    pub fn shard_descriptors(&self) -> &ShardDescriptors {
        &self.descriptors
    }

    /// The provider's secret keys (in the shard of `PROVIDER_KEYS_SHARD_KEY` only, once
    /// installed).
    pub fn provider_keys(&self) -> Option<&ProviderKeys> {
        self.provider_keys.as_ref()
    }

    /// Rooms of this shard that `client` is or was a member of.
    pub fn rooms_of(&self, client: &ClientId) -> impl Iterator<Item = &RoomId> {
        self.client_rooms.get(client).into_iter().flatten()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    fn index_members(&mut self, room: &RoomId) {
        let Some(members) = self.view(room).map(|view| view.members()) else {
            return;
        };
        for client in members {
            self.client_rooms
                .entry(client)
                .or_default()
                .insert(room.clone());
        }
    }

    /// Applies one command in shard `shard` of `layout`; returns the output and the room
    /// whose log or membership changed (recorded in `AppliedRooms`).
    fn apply(
        &mut self,
        shard: ShardId,
        layout: &Layout,
        stamped: Stamped,
    ) -> (ApplyOutput, Option<RoomId>) {
        let ts_ms = stamped.ts_ms;
        // A room frozen for a move or moved out changes no more here (`room_move` module docs).
        if let Some(room) = stamped.command.room() {
            if !matches!(stamped.command, Command::CreateRoom { .. }) {
                if let Some(answer) = self.move_answer(room) {
                    return (answer, None);
                }
            }
        }
        match stamped.command {
            Command::ClusterMeta(change) => (
                ApplyOutput::ClusterMeta(self.cluster_meta.apply(change)),
                None,
            ),
            Command::RecordShardDescriptor(descriptor) => (
                ApplyOutput::ShardDescriptor(self.descriptors.record(descriptor)),
                None,
            ),
            Command::PinRoom { room, shard } => {
                let created_here = self.rooms.contains_key(&room);
                let verdict = match self.pins.pin(&room, shard, created_here) {
                    Ok(_) => Ok(()),
                    Err(PinRefusal::RoomExists) => Err(CreateRoomRejection::AlreadyExists),
                };
                (ApplyOutput::RoomPinned(verdict), None)
            }
            Command::InstallProviderKeys { keys } => (
                match crate::provider_keys::install(&mut self.provider_keys, keys) {
                    Ok((keys, installed)) => ApplyOutput::ProviderKeys { keys, installed },
                    Err(reason) => ApplyOutput::Rejected(reason),
                },
                None,
            ),
            Command::RegisterClient {
                client,
                token_hash,
                linked_by,
            } => (
                ApplyOutput::Registered(self.directory.register_client(
                    &client,
                    token_hash,
                    linked_by.as_ref(),
                )),
                None,
            ),
            Command::PublishKeyPackages {
                client,
                key_packages,
                last_resort,
            } => (
                ApplyOutput::Published(self.directory.publish(
                    &client,
                    &key_packages,
                    last_resort,
                    ts_ms,
                )),
                None,
            ),
            // Only in logs written before consent existed (see the variant's docs).
            Command::ClaimKeyPackages { requester, target } => (
                ApplyOutput::Claimed(
                    self.directory
                        .claim_with_consent(&requester, &target, None, ts_ms),
                ),
                None,
            ),
            Command::CreateRoom {
                room,
                creator,
                group_info,
                ratchet_tree,
            } => {
                // A room pinned elsewhere exists there (or will, once its create is retried);
                // one that moved out exists where it went.
                if self.rooms.contains_key(&room)
                    || self.pins.get(&room).is_some()
                    || self.moves.moved_to(&room).is_some()
                {
                    return (
                        ApplyOutput::RoomCreated(Err(CreateRoomRejection::AlreadyExists)),
                        None,
                    );
                }
                match RoomState::create(room.clone(), &creator, &group_info, &ratchet_tree, ts_ms) {
                    Ok(state) => {
                        self.rooms.insert(room.clone(), state);
                        self.index_members(&room);
                        (ApplyOutput::RoomCreated(Ok(())), Some(room))
                    }
                    Err(e) => (
                        ApplyOutput::RoomCreated(Err(CreateRoomRejection::Invalid(e.to_string()))),
                        None,
                    ),
                }
            }
            Command::Handshake {
                room,
                sender,
                bundle,
            } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return (ApplyOutput::Rejected(format!("unknown room {room}")), None);
                };
                // MIMI.md §13: a blocked user (or provider) sends nothing in rooms hosted here.
                if let Some(reason) =
                    self.blocklist
                        .refusal_of_handshake(&sender, &bundle, |leaf| state.member_at(leaf))
                {
                    return (
                        ApplyOutput::Updated(UpdateVerdict::NotAllowed { reason }),
                        None,
                    );
                }
                let verdict = state.handle_handshake(&sender, &bundle, ts_ms);
                let changed = matches!(verdict, UpdateVerdict::Success { .. });
                if changed {
                    self.index_members(&room);
                }
                (ApplyOutput::Updated(verdict), changed.then_some(room))
            }
            Command::AppMessage {
                room,
                sender,
                sending_user,
                message,
            } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return (ApplyOutput::Rejected(format!("unknown room {room}")), None);
                };
                if let Some(reason) = self
                    .blocklist
                    .refusal_of_submitter(&sender)
                    .or_else(|| self.blocklist.refusal_of_user(&sending_user))
                {
                    return (
                        ApplyOutput::Submitted(SubmitVerdict::NotAllowed { reason }),
                        None,
                    );
                }
                let last_seq = state.last_seq();
                let verdict = state.handle_app_message(&sender, &sending_user, &message, ts_ms);
                let SubmitVerdict::Accepted { seq, .. } = verdict else {
                    return (ApplyOutput::Submitted(verdict), None);
                };
                // The edge franks the message at delivery from these (MIMI.md §5.3.1). A resend
                // (answered from the retry cache) changes nothing: its record is there, or went
                // with its trimmed log item.
                if seq <= last_seq {
                    return (ApplyOutput::Submitted(verdict), Some(room));
                }
                if let Some(franking_tag) = frank_aad_of(&message) {
                    self.franks.insert(
                        &room,
                        seq,
                        FrankRecord::Hub {
                            sender: sending_user,
                            franking_tag,
                        },
                    );
                }
                (ApplyOutput::Submitted(verdict), Some(room))
            }
            Command::FanoutDelivered {
                room,
                provider,
                seq,
            } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return (ApplyOutput::Rejected(format!("unknown room {room}")), None);
                };
                state.fanout_delivered(&provider, seq);
                (ApplyOutput::FanoutDelivered, None)
            }
            Command::FanoutReceived {
                room,
                items,
                body_hash,
            } => self.receive_fanout(room, items, body_hash, Vec::new()),
            Command::FanoutReceivedFranked {
                room,
                items,
                body_hash,
                franks,
            } => self.receive_fanout(room, items, body_hash, franks),
            Command::MirrorJoin {
                room,
                client,
                commit_sha256,
            } => {
                // Decided here, like every replicated change: a hosted room learns its joiners
                // from the commit itself, so only a mirror records them. The mirror may not
                // exist yet (no local client was in the room before this one).
                if self.rooms.contains_key(&room) {
                    return (
                        ApplyOutput::Rejected(format!("room {room} is hosted here")),
                        None,
                    );
                }
                let opened = self
                    .mirrors
                    .entry(room.clone())
                    .or_insert_with(|| MirrorRoom::new(room.clone()))
                    .join(client, &commit_sha256);
                if opened {
                    self.index_members(&room);
                }
                (ApplyOutput::MirrorJoined { opened }, opened.then_some(room))
            }
            Command::Housekeeping { log_retention_ms } => {
                self.directory.expire(ts_ms);
                for state in self.rooms.values_mut() {
                    // A frozen room's export must stay what its freeze said.
                    if self.moves.moving_to(state.room()).is_some() {
                        continue;
                    }
                    state.trim(ts_ms, log_retention_ms);
                    self.franks.trim(state.room(), state.first_retained_seq());
                }
                for mirror in self.mirrors.values_mut() {
                    mirror.trim(ts_ms, log_retention_ms);
                    let first = mirror
                        .items_after(0)
                        .first()
                        .map_or(mirror.last_seq() + 1, |item| item.seq);
                    self.franks.trim(mirror.room(), first);
                }
                (ApplyOutput::Housekept, None)
            }
            Command::Ack { room, client, seq } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.ack(&client, seq);
                } else if let Some(mirror) = self.mirrors.get_mut(&room) {
                    mirror.ack(&client, seq);
                }
                (ApplyOutput::Acked, None)
            }
            Command::SetProfile { user, profile } => (
                ApplyOutput::ProfileSet(self.directory.set_profile(&user, profile)),
                None,
            ),
            Command::SetPreferences { user, preferences } => (
                ApplyOutput::PreferencesSet(self.directory.set_preferences(&user, preferences)),
                None,
            ),
            Command::ConsentAsTarget {
                target,
                requester,
                room,
                action,
            } => (
                ApplyOutput::ConsentRecorded(self.directory.consent_as_target(
                    &target,
                    &requester,
                    room.as_ref(),
                    &action,
                    ts_ms,
                )),
                None,
            ),
            Command::ConsentAsRequester {
                requester,
                target,
                room,
                action,
            } => (
                ApplyOutput::ConsentRecorded(self.directory.consent_as_requester(
                    &requester,
                    &target,
                    room.as_ref(),
                    action,
                    ts_ms,
                )),
                None,
            ),
            Command::ClaimKeyPackagesInRoom {
                requester,
                target,
                room,
            } => (
                ApplyOutput::Claimed(
                    self.directory
                        .claim_in_room(&requester, &target, &room, ts_ms),
                ),
                None,
            ),
            Command::SetBlock { target, blocked } => (
                ApplyOutput::BlockSet(self.blocklist.set(&target, blocked)),
                None,
            ),
            Command::RecordAbuseReport { room, report } => {
                if !self.rooms.contains_key(&room) {
                    return (ApplyOutput::Rejected(format!("unknown room {room}")), None);
                }
                (
                    ApplyOutput::AbuseReported(self.abuse_reports.record(&room, report, ts_ms)),
                    None,
                )
            }
            Command::FreezeRoom { room, to } => (
                ApplyOutput::RoomFrozen(self.freeze_room(shard, layout, &room, to, ts_ms)),
                None,
            ),
            Command::AdoptRoom { room, from, export } => {
                match self.adopt_room(shard, layout, &room, from, &export) {
                    Ok(changed) => (ApplyOutput::RoomAdopted(Ok(())), changed.then_some(room)),
                    Err(refusal) => (ApplyOutput::RoomAdopted(Err(refusal)), None),
                }
            }
            Command::RepinRoom {
                room,
                from,
                to,
                generation,
            } => match self.repin_room(shard, layout, &room, from, to, generation) {
                Ok(changed) => (ApplyOutput::RoomRepinned(Ok(())), changed.then_some(room)),
                Err(refusal) => (ApplyOutput::RoomRepinned(Err(refusal)), None),
            },
            Command::ReleaseRoom {
                room,
                to,
                generation,
            } => match self.release_room(shard, &room, to, generation) {
                Ok(changed) => (
                    ApplyOutput::RoomReleased(Ok(changed)),
                    changed.then_some(room),
                ),
                Err(refusal) => (ApplyOutput::RoomReleased(Err(refusal)), None),
            },
        }
    }

    /// What a room command for `room` is answered instead of being applied: `RoomMoving` while
    /// the room is frozen for a move, `RoomMoved` once it left (`room_move` module docs).
    fn move_answer(&self, room: &RoomId) -> Option<ApplyOutput> {
        if let Some(to) = self.moves.moving_to(room) {
            return Some(ApplyOutput::RoomMoving { to });
        }
        self.moves
            .moved_to(room)
            .map(|to| ApplyOutput::RoomMoved { to })
    }

    /// Step 1 of a move (`room_move` module docs): freezes `room` for `to` and exports it.
    fn freeze_room(
        &mut self,
        shard: ShardId,
        layout: &Layout,
        room: &RoomId,
        to: ShardId,
        ts_ms: u64,
    ) -> Result<Vec<u8>, MoveRefusal> {
        if let Some(moved) = self.moves.moved_to(room) {
            return Err(MoveRefusal::Moved { to: moved });
        }
        let Some(state) = self.rooms.get(room) else {
            return Err(MoveRefusal::UnknownRoom { shard });
        };
        if layout.set_of_shard(shard).is_some() {
            return Err(MoveRefusal::Residency { shard });
        }
        if to == shard {
            return Err(MoveRefusal::SameShard { shard });
        }
        if !layout.split_shards().contains(&to) {
            return Err(MoveRefusal::NotASplitShard { shard: to });
        }
        match self.moves.moving_to(room) {
            Some(moving) if moving != to => {
                return Err(MoveRefusal::MovingElsewhere { to: moving })
            }
            _ => {}
        }
        let export = RoomExport {
            format: EXPORT_FORMAT,
            room: room.clone(),
            generation: self.moves.generation(room) + 1,
            state: state.to_snapshot(),
            reports: self.abuse_reports.of_room(room).to_vec(),
            franks: self.franks.of_room(room),
        };
        self.moves.freeze(room, to, ts_ms);
        Ok(export.encode())
    }

    /// Step 2 of a move: installs `room` from `export` in this split shard; `Ok(true)` when it
    /// was installed now, `Ok(false)` when this generation of it or a later one was here
    /// already (hosted, or moved on: the export is a repeat or stale, and installs nothing).
    /// An export newer than a copy frozen here replaces it: this shard's own move out of it
    /// was overtaken (`room_move` module docs, "Generations").
    fn adopt_room(
        &mut self,
        shard: ShardId,
        layout: &Layout,
        room: &RoomId,
        from: ShardId,
        export: &[u8],
    ) -> Result<bool, MoveRefusal> {
        if !layout.split_shards().contains(&shard) {
            return Err(MoveRefusal::NotASplitShard { shard });
        }
        if from == shard {
            return Err(MoveRefusal::SameShard { shard });
        }
        let export = RoomExport::decode(export)?;
        if &export.room != room {
            return Err(MoveRefusal::BadExport(format!(
                "it is the export of {}",
                export.room
            )));
        }
        let generation = export.generation;
        if self.rooms.contains_key(room) {
            let here = self.moves.generation(room);
            if here >= generation {
                return Ok(false);
            }
            if self.moves.moving_to(room).is_none() {
                // Never so in a run of the protocol: the copy here would be changeable and
                // stale at once.
                return Err(MoveRefusal::BadExport(format!(
                    "it is of generation {generation}, and this shard may still change the room                      at generation {here}"
                )));
            }
        } else if self
            .moves
            .moved(room)
            .is_some_and(|moved| moved.generation >= generation)
        {
            return Ok(false);
        }
        let state = RoomState::from_snapshot(&export.state)
            .map_err(|e| MoveRefusal::BadExport(format!("room state: {e}")))?;
        if state.room() != room {
            return Err(MoveRefusal::BadExport(format!(
                "its state is of {}",
                state.room()
            )));
        }
        // A stale frozen copy gives way.
        self.remove_room(room);
        self.rooms.insert(room.clone(), state);
        self.abuse_reports.put_room(room, export.reports);
        self.franks.put_room(room, export.franks);
        // A room coming back drops the tombstone of its earlier move out.
        self.moves.adopted(room, generation);
        self.index_members(room);
        Ok(true)
    }

    /// Takes `room` out of this shard's data: its state, its clients' index entries, its
    /// abuse reports and its frank records (not its freeze or tombstone).
    fn remove_room(&mut self, room: &RoomId) {
        let Some(state) = self.rooms.remove(room) else {
            return;
        };
        for client in state.clients_with_history() {
            if let Some(rooms) = self.client_rooms.get_mut(client) {
                rooms.remove(room);
                if rooms.is_empty() {
                    self.client_rooms.remove(client);
                }
            }
        }
        self.abuse_reports.take_room(room);
        self.franks.take_room(room);
    }

    /// Step 3 of a move, in `room`'s home shard: its pin names `to` from now on, where the
    /// move froze the copy of `generation` in `from`; `Ok(true)` when the pin changed now,
    /// `Ok(false)` when it names that copy (in `to`) or a newer one already: a repeat, or a
    /// stale repin of a move the room outran, which must not take the pin back (`room_move`
    /// module docs, "Generations"). A pin older than the move's copy catches up even when it
    /// does not name `from` (repins of overlapping moves landing out of order).
    fn repin_room(
        &mut self,
        shard: ShardId,
        layout: &Layout,
        room: &RoomId,
        from: ShardId,
        to: ShardId,
        generation: u64,
    ) -> Result<bool, MoveRefusal> {
        let home = layout.home(room.as_bytes());
        if home != shard {
            return Err(MoveRefusal::NotHome { shard, home });
        }
        // Where this shard has the room (its pin, else its own copy) and that copy's generation.
        let current = match self.pins.get(room) {
            Some(pinned) => Some((pinned, self.moves.pin_generation(room))),
            None => self
                .rooms
                .contains_key(room)
                .then(|| (shard, self.moves.generation(room))),
        };
        if let Some((pinned, _)) = current.filter(|&(at, _)| layout.set_of_shard(at).is_some()) {
            return Err(MoveRefusal::Residency { shard: pinned });
        }
        if !layout.split_shards().contains(&to) {
            return Err(MoveRefusal::NotASplitShard { shard: to });
        }
        let Some((at, at_generation)) = current else {
            return Err(MoveRefusal::WrongSource {
                expected: from,
                actual: None,
            });
        };
        // The copy the move brought to `to` is of the next generation.
        if at_generation > generation {
            return Ok(false);
        }
        // The copy of the move's generation is where this shard has it: only one copy of a
        // generation ever exists.
        if at_generation == generation && at != from {
            return Err(MoveRefusal::WrongSource {
                expected: from,
                actual: Some(at),
            });
        }
        // The room leaves this very shard's copy: it must be frozen (for `to`, when this copy
        // is the one the move took), or commands applied here after the pin moved would be
        // lost to the move.
        if at == shard {
            match self.moves.moving_to(room) {
                Some(moving) if moving == to || at_generation < generation => {}
                Some(moving) => return Err(MoveRefusal::MovingElsewhere { to: moving }),
                None => return Err(MoveRefusal::NotFrozen),
            }
        }
        self.pins.repin(room, to);
        self.moves.repinned(room, generation + 1);
        Ok(true)
    }

    /// Step 4 of a move: `room`, frozen for `to` at `generation`, leaves this shard for a
    /// tombstone; `Ok(true)` when it left now, `Ok(false)` when it had left for `to` already
    /// or the copy here (hosted or left) is of another generation: a stale release, whose copy
    /// left or was replaced by a newer one already (`room_move` module docs, "Generations"),
    /// changes nothing.
    fn release_room(
        &mut self,
        shard: ShardId,
        room: &RoomId,
        to: ShardId,
        generation: u64,
    ) -> Result<bool, MoveRefusal> {
        if let Some(moved) = self.moves.moved(room) {
            return if moved.generation != generation || moved.to == to {
                Ok(false)
            } else {
                Err(MoveRefusal::Moved { to: moved.to })
            };
        }
        if !self.rooms.contains_key(room) {
            return Err(MoveRefusal::UnknownRoom { shard });
        }
        if self.moves.generation(room) != generation {
            return Ok(false);
        }
        match self.moves.moving_to(room) {
            Some(moving) if moving == to => {}
            Some(moving) => return Err(MoveRefusal::MovingElsewhere { to: moving }),
            None => return Err(MoveRefusal::NotFrozen),
        }
        self.remove_room(room);
        self.moves.release(room, to);
        Ok(true)
    }

    /// Follower side of a notify (MIMI.md §5.4): appends what is new to the room's mirror and
    /// keeps the Franks that came with its application messages, by the local positions the
    /// mirror gave them.
    fn receive_fanout(
        &mut self,
        room: RoomId,
        items: Vec<ReceivedItem>,
        body_hash: [u8; 32],
        franks: Vec<ReceivedFrank>,
    ) -> (ApplyOutput, Option<RoomId>) {
        if self.rooms.contains_key(&room) {
            return (
                ApplyOutput::Rejected(format!("room {room} is hosted here")),
                None,
            );
        }
        // A hub may start a mirror here only by routing a Welcome to a local client: a
        // remote party cannot make this provider keep rooms none of its users is in.
        if !self.mirrors.contains_key(&room) && !welcomes_a_local_client(&items) {
            return (
                ApplyOutput::Rejected(format!("no client of this provider is in {room}")),
                None,
            );
        }
        let mirror = self
            .mirrors
            .entry(room.clone())
            .or_insert_with(|| MirrorRoom::new(room.clone()));
        let before = mirror.last_seq();
        let appended = mirror.receive(items, body_hash);
        if !franks.is_empty() {
            let by_message: BTreeMap<[u8; 32], Vec<u8>> = franks
                .into_iter()
                .map(|received| (received.message_sha256, received.frank))
                .collect();
            for item in mirror.items_after(before) {
                let ItemBody::Application { message } = &item.body else {
                    continue;
                };
                let hash: [u8; 32] = Sha256::digest(message).into();
                if let Some(frank) = by_message.get(&hash) {
                    self.franks.insert(
                        &room,
                        item.seq,
                        FrankRecord::Received {
                            frank: frank.clone(),
                        },
                    );
                }
            }
        }
        if appended > 0 {
            self.index_members(&room);
        }
        (
            ApplyOutput::FanoutReceived { appended },
            (appended > 0).then_some(room),
        )
    }
}

/// Whether `items` carry a Welcome routed to at least one local client.
pub fn welcomes_a_local_client(items: &[ReceivedItem]) -> bool {
    items
        .iter()
        .any(|item| matches!(&item.body, ItemBody::Welcome { to, .. } if !to.is_empty()))
}

/// Snapshot encoding of a shard: rooms as their own snapshots, the rest as serde.
#[derive(Serialize, Deserialize)]
struct ShardSnapshot {
    rooms: Vec<(RoomId, Vec<u8>)>,
    mirrors: BTreeMap<RoomId, MirrorRoom>,
    directory: Directory,
    blocklist: Blocklist,
    abuse_reports: AbuseReports,
    franks: FrankRecords,
}

/// A snapshot written before the blocklist, abuse reports and franks existed (they decode as
/// empty).
#[derive(Deserialize)]
struct ShardSnapshotBeforeModeration {
    rooms: Vec<(RoomId, Vec<u8>)>,
    mirrors: BTreeMap<RoomId, MirrorRoom>,
    directory: Directory,
}

/// Rooms whose log grew since the node last looked: a coalescing, lossless wake-up set.
#[derive(Default)]
pub struct AppliedRooms {
    rooms: Mutex<BTreeSet<RoomId>>,
    notify: Notify,
}

impl AppliedRooms {
    fn record(&self, room: RoomId) {
        self.rooms.lock().insert(room);
        self.notify.notify_one();
    }

    /// Waits until at least one room was recorded, then takes them all.
    pub async fn next_batch(&self) -> BTreeSet<RoomId> {
        loop {
            let batch = std::mem::take(&mut *self.rooms.lock());
            if !batch.is_empty() {
                return batch;
            }
            self.notify.notified().await;
        }
    }
}

/// The `StateMachine` the cluster drives for one shard.
pub struct ShardMachine {
    shard: ShardId,
    layout: Arc<Layout>,
    data: Arc<RwLock<ShardData>>,
    applied: Arc<AppliedRooms>,
    changed: Arc<Notify>,
}

impl StateMachine for ShardMachine {
    type Output = ApplyOutput;

    fn apply(&mut self, index: u64, command: &[u8]) -> ApplyOutput {
        let stamped = match Stamped::decode(command) {
            Ok(stamped) => stamped,
            Err(e) => {
                tracing::warn!(shard = self.shard, index, error = %e, "undecodable entry");
                return ApplyOutput::Rejected(format!("undecodable command: {e}"));
            }
        };
        if self.shard != METADATA_SHARD {
            let what = match stamped.command {
                Command::ClusterMeta(_) => Some("the node registry lives"),
                Command::RecordShardDescriptor(_) => Some("shard descriptors live"),
                _ => None,
            };
            if let Some(what) = what {
                return ApplyOutput::Rejected(format!(
                    "{what} in shard {METADATA_SHARD}, not in shard {}",
                    self.shard
                ));
            }
        }
        let (output, changed_room) = self.data.write().apply(self.shard, &self.layout, stamped);
        if let Some(room) = changed_room {
            self.applied.record(room);
        }
        self.changed.notify_waiters();
        output
    }

    fn snapshot(&self) -> Vec<u8> {
        let data = self.data.read();
        let snapshot = ShardSnapshot {
            rooms: data
                .rooms
                .iter()
                .map(|(id, state)| (id.clone(), state.to_snapshot()))
                .collect(),
            mirrors: data.mirrors.clone(),
            directory: data.directory.clone(),
            blocklist: data.blocklist.clone(),
            abuse_reports: data.abuse_reports.clone(),
            franks: data.franks.clone(),
        };
        // Shard 0's registry goes first, then the provider keys, the descriptors, the room
        // pins and the room moves, each behind a marker no older snapshot starts with.
        let mut bytes = data.cluster_meta.snapshot_prefix();
        bytes.extend(ProviderKeys::snapshot_prefix(data.provider_keys.as_ref()));
        bytes.extend(data.descriptors.snapshot_prefix());
        bytes.extend(data.pins.snapshot_prefix());
        bytes.extend(data.moves.snapshot_prefix());
        bytes.extend(
            postcard::to_stdvec(&snapshot).expect("serialising a snapshot into memory cannot fail"),
        );
        bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (cluster_meta, snapshot) = ClusterMeta::split_snapshot(snapshot)?;
        let (provider_keys, snapshot) = ProviderKeys::split_snapshot(snapshot)?;
        let (descriptors, snapshot) = ShardDescriptors::split_snapshot(snapshot)?;
        let (pins, snapshot) = RoomPins::split_snapshot(snapshot)?;
        let (moves, snapshot) = RoomMoves::split_snapshot(snapshot)?;
        let snapshot: ShardSnapshot = match postcard::from_bytes(snapshot) {
            Ok(snapshot) => snapshot,
            Err(e) => match postcard::from_bytes::<ShardSnapshotBeforeModeration>(snapshot) {
                Ok(old) => ShardSnapshot {
                    rooms: old.rooms,
                    mirrors: old.mirrors,
                    directory: old.directory,
                    blocklist: Blocklist::default(),
                    abuse_reports: AbuseReports::default(),
                    franks: FrankRecords::default(),
                },
                Err(_) => return Err(format!("shard snapshot: {e}")),
            },
        };
        let mut data = ShardData {
            directory: snapshot.directory,
            mirrors: snapshot.mirrors,
            blocklist: snapshot.blocklist,
            abuse_reports: snapshot.abuse_reports,
            franks: snapshot.franks,
            ..ShardData::default()
        };
        data.cluster_meta = cluster_meta;
        data.provider_keys = provider_keys;
        data.descriptors = descriptors;
        data.pins = pins;
        data.moves = moves;
        let mirrored: Vec<RoomId> = data.mirrors.keys().cloned().collect();
        for id in &mirrored {
            data.index_members(id);
        }
        for (id, bytes) in snapshot.rooms {
            let state =
                RoomState::from_snapshot(&bytes).map_err(|e| format!("room {id} snapshot: {e}"))?;
            data.rooms.insert(id.clone(), state);
            data.index_members(&id);
        }
        let rooms: Vec<RoomId> = data.rooms.keys().cloned().chain(mirrored).collect();
        *self.data.write() = data;
        for room in rooms {
            self.applied.record(room);
        }
        self.changed.notify_waiters();
        Ok(())
    }
}

/// Read access to every local shard's data, and the factory the cluster uses to build the
/// state machines that write it.
#[derive(Clone)]
pub struct Shards {
    data: Arc<Vec<Arc<RwLock<ShardData>>>>,
    applied: Arc<AppliedRooms>,
    /// Per shard, woken after every apply and restore (remote pulls wait on it).
    changed: Arc<Vec<Arc<Notify>>>,
    layout: Arc<Layout>,
    /// Pins this node learned from home shards it does not hold (`Hub::room_shard`) or from a
    /// move's answers (`ApplyOutput::RoomMoved`). A residency pin never changes; a moved
    /// room's may, so a cached one can be stale: a tombstone in a local replica corrects it
    /// ([`Shards::room_shard`]), and so does the `RoomMoved` answer of the shard it names. At
    /// most [`MAX_RESOLVED_PINS`].
    resolved: Arc<RwLock<BTreeMap<RoomId, ShardId>>>,
}

/// Most pins [`Shards`] caches; a full cache drops one entry for each new one (an entry
/// dropped is read again from its room's home shard when next needed).
pub const MAX_RESOLVED_PINS: usize = 100_000;

/// Most tombstones [`Shards::room_shard`] follows from one shard to the next (a room moved
/// several times, seen by replicas that lag one another).
pub const MAX_MOVE_HOPS: usize = 4;

impl Shards {
    /// `count` hashed shards, no residency set.
    pub fn new(count: u64) -> Self {
        Shards::with_layout(Layout::hashed(count))
    }

    /// The shards of `layout`: the hashed ones and every residency set's.
    pub fn with_layout(layout: Layout) -> Self {
        let count = layout.total();
        Shards {
            data: Arc::new((0..count).map(|_| Arc::default()).collect()),
            applied: Arc::default(),
            changed: Arc::new((0..count).map(|_| Arc::default()).collect()),
            layout: Arc::new(layout),
            resolved: Arc::default(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The state machine for `shard`, sharing its data with this registry.
    pub fn machine(&self, shard: ShardId) -> ShardMachine {
        ShardMachine {
            shard,
            layout: self.layout.clone(),
            data: self.data[shard as usize].clone(),
            applied: self.applied.clone(),
            changed: self.changed[shard as usize].clone(),
        }
    }

    /// Woken (`notify_waiters`) after each entry `shard` applies and each snapshot it restores.
    pub fn changed(&self, shard: ShardId) -> &Notify {
        &self.changed[shard as usize]
    }

    pub fn count(&self) -> u64 {
        self.data.len() as u64
    }

    /// The hashed shard `key` belongs to (a room's home shard, for a room id).
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        self.layout.home(key)
    }

    /// The shard `room` lives in, as far as this node knows without asking anyone: the shard
    /// its home shard's local replica pins it to, else the pin cache's, else a local
    /// residency or split replica that hosts it (one not frozen for a move first), else its
    /// home shard. When the local replica of that shard has a tombstone for the room (it
    /// moved on: `room_move` module docs), the tombstone is followed, a few hops at most, and
    /// the pin cache corrected. The hub resolves a room it was asked about first
    /// (`Hub::room_shard`), so its routing after that finds the pin here.
    pub fn room_shard(&self, room: &RoomId) -> ShardId {
        let home = self.shard_of(room.as_bytes());
        if !self.layout.has_pins() {
            return home;
        }
        let pinned = self.get(home).read().pin(room);
        let cached = self.resolved.read().get(room).copied();
        let found = pinned
            .or(cached)
            .unwrap_or_else(|| self.local_host(room, home));
        let shard = self.follow_tombstones(room, found);
        if shard != found {
            self.remember_pin(room, shard);
        }
        shard
    }

    /// A local residency or split replica hosting `room`, preferring one where it is not
    /// frozen (a move's target that adopted it already); else `home`. A leader of such a
    /// shard routes its own rooms' commands (fan-out cursors) without having asked for their
    /// pins.
    fn local_host(&self, room: &RoomId, home: ShardId) -> ShardId {
        let mut frozen = None;
        for shard in self.layout.hashed_count()..self.count() {
            let data = self.get(shard).read();
            if data.room(room).is_none() {
                continue;
            }
            if data.moving_to(room).is_none() {
                return shard;
            }
            frozen.get_or_insert(shard);
        }
        frozen.unwrap_or(home)
    }

    /// Where the tombstones of `room` in the local replicas lead from `shard`, at most
    /// [`MAX_MOVE_HOPS`] of them.
    fn follow_tombstones(&self, room: &RoomId, mut shard: ShardId) -> ShardId {
        for _ in 0..MAX_MOVE_HOPS {
            match self.get(shard).read().moved_to(room) {
                Some(next) if next != shard && next < self.count() => shard = next,
                _ => break,
            }
        }
        shard
    }

    /// Caches that `room` lives in `shard` (read from its home shard on another node, or
    /// learned from a move's `RoomMoved` answer), replacing what the cache said.
    pub fn remember_pin(&self, room: &RoomId, shard: ShardId) {
        let mut resolved = self.resolved.write();
        if resolved.len() >= MAX_RESOLVED_PINS && !resolved.contains_key(room) {
            // Any one entry: it is read again from its home shard when next needed.
            resolved.pop_first();
        }
        resolved.insert(room.clone(), shard);
    }

    pub fn get(&self, shard: ShardId) -> &RwLock<ShardData> {
        &self.data[shard as usize]
    }

    /// The data of the shard that hosts `room` ([`Self::room_shard`]).
    pub fn for_room(&self, room: &RoomId) -> &RwLock<ShardData> {
        self.get(self.room_shard(room))
    }

    pub fn applied(&self) -> &Arc<AppliedRooms> {
        &self.applied
    }

    /// Every room (over all shards) that `client` is or was a member of.
    pub fn rooms_of(&self, client: &ClientId) -> Vec<RoomId> {
        self.data
            .iter()
            .flat_map(|shard| shard.read().rooms_of(client).cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn room_count(&self) -> usize {
        self.data
            .iter()
            .map(|shard| shard.read().room_count())
            .sum()
    }
}

#[cfg(test)]
mod move_sim;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Submitter;
    use crate::moderation::{AbuseReport, BlockTarget};

    fn machine() -> (Shards, ShardMachine) {
        let shards = Shards::new(2);
        let machine = shards.machine(1);
        (shards, machine)
    }

    #[test]
    fn undecodable_entries_are_rejected_and_change_nothing() {
        let (_, mut machine) = machine();
        let before = machine.snapshot();
        assert!(matches!(
            machine.apply(1, b"\xff\xff garbage"),
            ApplyOutput::Rejected(_)
        ));
        assert_eq!(machine.snapshot(), before);
    }

    /// Data residency (issue 9): a pin in the home shard refuses a later unpinned create of
    /// the same id, is idempotent for a retried pinned create, and rides in the snapshot;
    /// `Shards::room_shard` routes by it.
    #[test]
    fn a_pin_in_the_home_shard_refuses_an_unpinned_create_and_routes_the_room() {
        let layout = Layout::new(
            2,
            [("eu".to_owned(), BTreeSet::from(["eu".to_owned()]), 1)],
            0,
        )
        .unwrap();
        let shards = Shards::with_layout(layout);
        assert_eq!(shards.count(), 3);
        let room = RoomId::parse("mimi://a.example/r/pinned").unwrap();
        let home = shards.shard_of(room.as_bytes());
        assert!(home < 2);
        assert_eq!(shards.room_shard(&room), home);
        let mut machine = shards.machine(home);
        let pin = |shard| Stamped {
            ts_ms: 1,
            command: Command::PinRoom {
                room: room.clone(),
                shard,
            },
        };
        assert!(matches!(
            machine.apply(1, &pin(2).encode()),
            ApplyOutput::RoomPinned(Ok(()))
        ));
        assert_eq!(shards.room_shard(&room), 2);
        assert!(matches!(
            machine.apply(2, &pin(2).encode()),
            ApplyOutput::RoomPinned(Ok(()))
        ));
        assert!(matches!(
            machine.apply(3, &pin(1).encode()),
            ApplyOutput::RoomPinned(Err(CreateRoomRejection::AlreadyExists))
        ));
        let create = Stamped {
            ts_ms: 2,
            command: Command::CreateRoom {
                room: room.clone(),
                creator: ClientId::parse("mimi://a.example/d/alice/phone").unwrap(),
                group_info: vec![1],
                ratchet_tree: vec![2],
            },
        };
        assert!(matches!(
            machine.apply(4, &create.encode()),
            ApplyOutput::RoomCreated(Err(CreateRoomRejection::AlreadyExists))
        ));
        // The pin survives a snapshot into a fresh node's replica.
        let snapshot = machine.snapshot();
        let fresh = Shards::with_layout(shards.layout().clone());
        fresh.machine(home).restore(&snapshot).unwrap();
        assert_eq!(fresh.room_shard(&room), 2);
        assert_eq!(fresh.machine(home).snapshot(), snapshot);
        // A node without the home shard learns the pin and routes by it.
        let elsewhere = Shards::with_layout(shards.layout().clone());
        assert_eq!(elsewhere.room_shard(&room), home);
        elsewhere.remember_pin(&room, 2);
        assert_eq!(elsewhere.room_shard(&room), 2);
    }

    /// The pin cache holds at most `MAX_RESOLVED_PINS`, dropping one entry per new one.
    #[test]
    fn the_pin_cache_is_bounded_and_keeps_the_newest_pin() {
        let layout = Layout::new(
            2,
            [("eu".to_owned(), BTreeSet::from(["eu".to_owned()]), 1)],
            0,
        )
        .unwrap();
        let shards = Shards::with_layout(layout);
        let room = |n: usize| RoomId::parse(&format!("mimi://a.example/r/r{n}")).unwrap();
        for n in 0..=MAX_RESOLVED_PINS {
            shards.remember_pin(&room(n), 2);
        }
        assert_eq!(shards.resolved.read().len(), MAX_RESOLVED_PINS);
        assert_eq!(shards.room_shard(&room(MAX_RESOLVED_PINS)), 2);
        // Remembering a pin already held drops nothing.
        shards.remember_pin(&room(MAX_RESOLVED_PINS), 2);
        assert_eq!(shards.resolved.read().len(), MAX_RESOLVED_PINS);
    }

    #[test]
    fn room_commands_for_unknown_rooms_are_rejected_not_panicking() {
        let (_, mut machine) = machine();
        let room = RoomId::parse("mimi://a.example/r/nowhere").unwrap();
        let sender = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        let entry = Stamped {
            ts_ms: 1,
            command: Command::AppMessage {
                room,
                sender: Submitter::Client(sender.clone()),
                sending_user: sender.user(),
                message: vec![1, 2, 3],
            },
        };
        assert!(matches!(
            machine.apply(1, &entry.encode()),
            ApplyOutput::Rejected(reason) if reason.contains("unknown room")
        ));
    }

    /// MIMI.md §6.6, follower side: a local client's external join opens its delivery in the
    /// mirror (created if needed) and indexes the room for its push stream, once.
    #[test]
    fn mirror_join_opens_delivery_once_and_indexes_the_room() {
        let (shards, mut machine) = machine();
        let room = RoomId::parse("mimi://a.example/r/clubhouse").unwrap();
        let client = ClientId::parse("mimi://c.example/d/cathy/laptop").unwrap();
        let join = Stamped {
            ts_ms: 1,
            command: Command::MirrorJoin {
                room: room.clone(),
                client: client.clone(),
                commit_sha256: [7; 32],
            },
        };
        assert!(matches!(
            machine.apply(1, &join.encode()),
            ApplyOutput::MirrorJoined { opened: true }
        ));
        assert_eq!(shards.rooms_of(&client), vec![room.clone()]);
        let snapshot = machine.snapshot();
        assert!(matches!(
            machine.apply(2, &join.encode()),
            ApplyOutput::MirrorJoined { opened: false }
        ));
        assert_eq!(
            machine.snapshot(),
            snapshot,
            "a repeated join changes nothing"
        );
        let data = shards.get(1).read();
        assert_eq!(data.mirror(&room).unwrap().members(), vec![client]);
    }

    /// A hub cannot make this provider keep a room none of its clients is in: a notify starts
    /// a mirror only with a Welcome routed to a local client (MIMI.md §5.4).
    #[test]
    fn a_mirror_starts_only_with_a_welcome_to_a_local_client() {
        let (shards, mut machine) = machine();
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let app = ReceivedItem {
            hub_seq: Some(1),
            ts_ms: 5,
            epoch: 1,
            body: ItemBody::Application { message: vec![1] },
        };
        let notify = |items: Vec<ReceivedItem>, hash: u8| Stamped {
            ts_ms: 10,
            command: Command::FanoutReceived {
                room: room.clone(),
                items,
                body_hash: [hash; 32],
            },
        };
        let before = machine.snapshot();
        assert!(matches!(
            machine.apply(1, &notify(vec![app.clone()], 1).encode()),
            ApplyOutput::Rejected(reason) if reason.contains("no client of this provider")
        ));
        let unrouted = ReceivedItem {
            hub_seq: Some(2),
            ts_ms: 5,
            epoch: 1,
            body: ItemBody::Welcome {
                welcome: vec![2],
                ratchet_tree: vec![3],
                to: Vec::new(),
            },
        };
        assert!(matches!(
            machine.apply(2, &notify(vec![unrouted], 2).encode()),
            ApplyOutput::Rejected(_)
        ));
        assert_eq!(
            machine.snapshot(),
            before,
            "refused notifies change nothing"
        );

        let bob = ClientId::parse("mimi://b.example/d/bob/phone").unwrap();
        let welcome = ReceivedItem {
            hub_seq: Some(3),
            ts_ms: 6,
            epoch: 1,
            body: ItemBody::Welcome {
                welcome: vec![2],
                ratchet_tree: vec![3],
                to: vec![bob.clone()],
            },
        };
        assert!(matches!(
            machine.apply(3, &notify(vec![welcome], 3).encode()),
            ApplyOutput::FanoutReceived { appended: 1 }
        ));
        let mut later = app;
        later.hub_seq = Some(4);
        assert!(matches!(
            machine.apply(4, &notify(vec![later], 4).encode()),
            ApplyOutput::FanoutReceived { appended: 1 }
        ));
        assert_eq!(shards.rooms_of(&bob), vec![room]);
    }

    /// MIMI.md §13: each shard applies its own copy of the blocklist (the hub proposes a block
    /// to every shard); snapshots carry it.
    #[test]
    fn blocks_are_kept_per_shard_and_survive_a_snapshot() {
        let (shards, mut machine) = machine();
        let block = |blocked| Stamped {
            ts_ms: 1,
            command: Command::SetBlock {
                target: BlockTarget::Provider("b.example".into()),
                blocked,
            },
        };
        assert!(matches!(
            machine.apply(1, &block(true).encode()),
            ApplyOutput::BlockSet(Ok(true))
        ));
        assert!(matches!(
            machine.apply(2, &block(true).encode()),
            ApplyOutput::BlockSet(Ok(false))
        ));
        assert!(shards
            .get(1)
            .read()
            .blocklist()
            .blocks_provider("b.example"));
        assert!(
            !shards
                .get(0)
                .read()
                .blocklist()
                .blocks_provider("b.example"),
            "every shard applies its own copy"
        );
        let snapshot = machine.snapshot();
        let mut restored = Shards::new(2).machine(1);
        restored.restore(&snapshot).unwrap();
        assert_eq!(restored.snapshot(), snapshot);
        assert!(matches!(
            machine.apply(3, &block(false).encode()),
            ApplyOutput::BlockSet(Ok(true))
        ));
        assert!(shards.get(1).read().blocklist().is_empty());
    }

    /// A snapshot written before the blocklist, reports and franks existed still restores.
    #[test]
    fn snapshots_from_before_moderation_still_restore() {
        #[derive(Serialize)]
        struct Old {
            rooms: Vec<(RoomId, Vec<u8>)>,
            mirrors: BTreeMap<RoomId, MirrorRoom>,
            directory: Directory,
        }
        let old = postcard::to_stdvec(&Old {
            rooms: Vec::new(),
            mirrors: BTreeMap::new(),
            directory: Directory::default(),
        })
        .unwrap();
        let (shards, mut machine) = machine();
        machine.restore(&old).unwrap();
        assert!(shards.get(1).read().blocklist().is_empty());
        assert!(machine.restore(&old[..old.len() - 1]).is_err());
    }

    /// MIMI.md §5.4, §5.3.1: a follower keeps the Franks a notify brought, by the local position
    /// of their messages; a resend appends nothing and records nothing.
    #[test]
    fn franked_notifies_keep_their_franks_by_local_seq() {
        let (shards, mut machine) = machine();
        let room = RoomId::parse("mimi://a.example/r/club").unwrap();
        let bob = ClientId::parse("mimi://b.example/d/bob/phone").unwrap();
        let welcome = ReceivedItem {
            hub_seq: Some(4),
            ts_ms: 5,
            epoch: 1,
            body: ItemBody::Welcome {
                welcome: vec![2],
                ratchet_tree: vec![3],
                to: vec![bob],
            },
        };
        let app = |hub_seq| ReceivedItem {
            hub_seq: Some(hub_seq),
            ts_ms: 6,
            epoch: 1,
            body: ItemBody::Application { message: vec![9] },
        };
        let notify = |items, frank: u8, hash: u8| Stamped {
            ts_ms: 10,
            command: Command::FanoutReceivedFranked {
                room: room.clone(),
                items,
                body_hash: [hash; 32],
                franks: vec![ReceivedFrank {
                    message_sha256: Sha256::digest([9u8]).into(),
                    frank: vec![frank],
                }],
            },
        };
        assert!(matches!(
            machine.apply(1, &notify(vec![welcome, app(5)], 1, 1).encode()),
            ApplyOutput::FanoutReceived { appended: 2 }
        ));
        let received = |seq| shards.get(1).read().franks().get(&room, seq).cloned();
        assert_eq!(received(2), Some(FrankRecord::Received { frank: vec![1] }));
        assert_eq!(received(1), None, "a Welcome has no Frank");
        assert!(matches!(
            machine.apply(2, &notify(vec![app(5)], 7, 2).encode()),
            ApplyOutput::FanoutReceived { appended: 0 }
        ));
        assert_eq!(received(2), Some(FrankRecord::Received { frank: vec![1] }));
        assert_eq!(received(3), None);
    }

    /// MIMI.md §5.8: a report is kept with a room this shard hosts, and only there.
    #[test]
    fn abuse_reports_of_unknown_rooms_are_rejected_and_change_nothing() {
        let (_, mut machine) = machine();
        let before = machine.snapshot();
        let report = Stamped {
            ts_ms: 1,
            command: Command::RecordAbuseReport {
                room: RoomId::parse("mimi://a.example/r/nowhere").unwrap(),
                report: AbuseReport {
                    submitter: Submitter::Provider("b.example".into()),
                    reporting_user: None,
                    alleged_abuser: crate::ids::UserId::parse("mimi://a.example/u/m").unwrap(),
                    reason_code: 0,
                    note: String::new(),
                    messages: Vec::new(),
                },
            },
        };
        assert!(matches!(
            machine.apply(1, &report.encode()),
            ApplyOutput::Rejected(reason) if reason.contains("unknown room")
        ));
        assert_eq!(machine.snapshot(), before);
    }

    #[test]
    fn housekeeping_applies_and_snapshots_round_trip() {
        let (shards, mut machine) = machine();
        let client = ClientId::parse("mimi://a.example/d/alice/phone").unwrap();
        let register = Stamped {
            ts_ms: 1,
            command: Command::RegisterClient {
                client: client.clone(),
                token_hash: [3; 32],
                linked_by: None,
            },
        };
        assert!(matches!(
            machine.apply(1, &register.encode()),
            ApplyOutput::Registered(Ok(()))
        ));
        let housekeeping = Stamped {
            ts_ms: 2,
            command: Command::Housekeeping {
                log_retention_ms: 0,
            },
        };
        assert!(matches!(
            machine.apply(2, &housekeeping.encode()),
            ApplyOutput::Housekept
        ));
        let snapshot = machine.snapshot();
        let mut restored = Shards::new(2).machine(1);
        restored.restore(&snapshot).unwrap();
        assert_eq!(restored.snapshot(), snapshot);
        assert!(shards
            .get(1)
            .read()
            .directory()
            .authenticate(&client, &[3; 32]));
        assert!(restored.restore(b"not a snapshot").is_err());
    }

    /// Room moves (issue 9 build item 3, `room_move` module docs), each step applied to the
    /// real state machines with rooms of real openmls groups.
    /// Found by `move_sim` (seed 370): a resent message (MIMI.md §7.6, answered from the
    /// retry cache) whose log item housekeeping trimmed put its frank record back, outside
    /// the retained log. A resend changes nothing.
    #[test]
    fn a_resend_after_its_item_was_trimmed_adds_no_frank_record() {
        let shards = Shards::new(2);
        let room = RoomId::parse("mimi://a.example/r/resent").unwrap();
        let shard = shards.shard_of(room.as_bytes());
        let mut machine = shards.machine(shard);
        let mut alice = moves::Creator::new("alice");
        let mut index = 0;
        let mut apply = |command: Command| {
            index += 1;
            let entry = Stamped {
                ts_ms: 1_000 + index,
                command,
            };
            machine.apply(index, &entry.encode())
        };
        assert!(matches!(
            apply(alice.create(&room)),
            ApplyOutput::RoomCreated(Ok(()))
        ));
        let first = alice.message(&room, b"one", 1);
        for (command, expected) in [(first.clone(), 1), (alice.message(&room, b"two", 2), 2)] {
            match apply(command) {
                ApplyOutput::Submitted(SubmitVerdict::Accepted { seq, .. }) => {
                    assert_eq!(seq, expected)
                }
                other => panic!("{other:?}"),
            }
        }
        let ack = Command::Ack {
            room: room.clone(),
            client: alice.id.clone(),
            seq: 2,
        };
        apply(ack);
        apply(Command::Housekeeping {
            log_retention_ms: 0,
        });
        assert_eq!(
            shards
                .get(shard)
                .read()
                .room(&room)
                .unwrap()
                .first_retained_seq(),
            2
        );
        assert!(shards.get(shard).read().franks().get(&room, 1).is_none());
        let before = shards.machine(shard).snapshot();
        assert!(matches!(
            apply(first),
            ApplyOutput::Submitted(SubmitVerdict::Accepted { seq: 1, .. })
        ));
        assert!(shards.get(shard).read().franks().get(&room, 1).is_none());
        assert_eq!(shards.machine(shard).snapshot(), before);
    }

    /// Also the openmls helpers of the move simulation (`move_sim`).
    pub(super) mod moves {
        use super::*;
        use crate::command::{HandshakeBundle, SubmitVerdict};
        use crate::policy::component;
        use crate::room::tests::TestClient;
        use crate::room_move::{Frozen, RoomExport, SNAPSHOT_MARKER};
        use openmls::framing::{SafeAad, SafeAadItem};
        use tls_codec::Serialize as _;

        /// Hashed shards 0 and 1, residency set "eu" in shard 2, split shards 3 and 4.
        fn layout() -> Layout {
            Layout::new(
                2,
                [("eu".to_owned(), BTreeSet::from(["eu".to_owned()]), 1)],
                2,
            )
            .unwrap()
        }

        const EU: ShardId = 2;
        const T: ShardId = 3;
        const T2: ShardId = 4;

        /// A room's creator with its own openmls group (`room::tests::TestClient`), alone in it.
        pub(in crate::shard) struct Creator {
            pub(in crate::shard) id: ClientId,
            client: TestClient,
        }

        impl Creator {
            pub(in crate::shard) fn new(name: &str) -> Creator {
                let mut client = TestClient::new(&format!("mimi://a.example/d/{name}/phone"));
                client.create_group();
                Creator {
                    id: client.id.clone(),
                    client,
                }
            }

            /// MIMI.md §6.1: the create of `room` with this creator's GroupInfo and tree.
            pub(in crate::shard) fn create(&self, room: &RoomId) -> Command {
                let (group_info, ratchet_tree) = self.client.upload();
                Command::CreateRoom {
                    room: room.clone(),
                    creator: self.id.clone(),
                    group_info,
                    ratchet_tree,
                }
            }

            /// An application message (protocol-06 §5.3) whose SafeAAD carries a franking tag.
            pub(in crate::shard) fn message(
                &mut self,
                room: &RoomId,
                text: &[u8],
                tag: u8,
            ) -> Command {
                let aad = SafeAad::from_items(vec![SafeAadItem::new(
                    component::FRANK_AAD,
                    vec![tag; 32],
                )])
                .unwrap()
                .tls_serialize_detached()
                .unwrap();
                self.client.group().set_aad(aad);
                let message = self.client.send(text);
                Command::AppMessage {
                    room: room.clone(),
                    sender: Submitter::Client(self.id.clone()),
                    sending_user: self.id.user(),
                    message,
                }
            }
        }

        pub(in crate::shard) fn report(room: &RoomId) -> Command {
            Command::RecordAbuseReport {
                room: room.clone(),
                report: AbuseReport {
                    submitter: Submitter::Provider("b.example".into()),
                    reporting_user: None,
                    alleged_abuser: crate::ids::UserId::parse("mimi://a.example/u/m").unwrap(),
                    reason_code: 1,
                    note: "spam".into(),
                    messages: Vec::new(),
                },
            }
        }

        /// A room whose home is hashed shard `home`.
        fn room_at_home(shards: &Shards, home: ShardId) -> RoomId {
            (0..)
                .map(|n| RoomId::parse(&format!("mimi://a.example/r/club{n}")).unwrap())
                .find(|room| shards.shard_of(room.as_bytes()) == home)
                .unwrap()
        }

        /// A fresh set of shards whose hashed shard `home` hosts a busy room (`Log::busy_room`)
        /// of alice's.
        fn busy_room_at(home: ShardId) -> (Shards, Log, RoomId, Creator) {
            let shards = Shards::with_layout(layout());
            let mut log = Log::new(&shards);
            let room = room_at_home(&shards, home);
            let mut alice = Creator::new("alice");
            log.busy_room(home, &room, &mut alice);
            (shards, log, room, alice)
        }

        /// Applies commands to the shards' machines, numbering the entries.
        struct Log {
            shards: Shards,
            index: u64,
            ts_ms: u64,
        }

        impl Log {
            fn new(shards: &Shards) -> Log {
                Log {
                    shards: shards.clone(),
                    index: 0,
                    ts_ms: 1_000,
                }
            }

            fn apply(&mut self, shard: ShardId, command: Command) -> ApplyOutput {
                self.index += 1;
                self.ts_ms += 10;
                let entry = Stamped {
                    ts_ms: self.ts_ms,
                    command,
                };
                self.shards
                    .machine(shard)
                    .apply(self.index, &entry.encode())
            }

            fn snapshot(&self, shard: ShardId) -> Vec<u8> {
                self.shards.machine(shard).snapshot()
            }

            /// Creates `room` in `shard` with one franked message and one abuse report.
            fn busy_room(&mut self, shard: ShardId, room: &RoomId, alice: &mut Creator) {
                assert!(matches!(
                    self.apply(shard, alice.create(room)),
                    ApplyOutput::RoomCreated(Ok(()))
                ));
                self.accepted(shard, alice.message(room, b"hello", 7), 1);
                assert!(matches!(
                    self.apply(shard, report(room)),
                    ApplyOutput::AbuseReported(Ok(1))
                ));
            }

            fn try_freeze(&mut self, shard: ShardId, room: &RoomId, to: ShardId) -> ApplyOutput {
                let freeze = Command::FreezeRoom {
                    room: room.clone(),
                    to,
                };
                self.apply(shard, freeze)
            }

            fn freeze(&mut self, shard: ShardId, room: &RoomId, to: ShardId) -> Vec<u8> {
                match self.try_freeze(shard, room, to) {
                    ApplyOutput::RoomFrozen(Ok(export)) => export,
                    other => panic!("freeze: {other:?}"),
                }
            }

            /// Applies a submission that the room must accept as its item `seq`.
            fn accepted(&mut self, shard: ShardId, command: Command, seq: u64) {
                match self.apply(shard, command) {
                    ApplyOutput::Submitted(SubmitVerdict::Accepted { seq: taken, .. }) => {
                        assert_eq!(taken, seq, "submit in {shard}")
                    }
                    other => panic!("submit in {shard}: {other:?}"),
                }
            }

            /// All four steps of a move of `room` from `from` to `to`.
            fn move_room(&mut self, room: &RoomId, from: ShardId, to: ShardId) {
                let export = self.freeze(from, room, to);
                let generation = frozen_generation(&export);
                self.adopt(room, from, to, &export);
                self.repin(room, from, to, generation);
                self.released(room, from, to, generation);
            }
        }

        /// The generation of the copy a freeze took: its export's minus one (the generation
        /// a move's repin and release name).
        fn frozen_generation(export: &[u8]) -> u64 {
            RoomExport::decode(export).unwrap().generation - 1
        }

        fn applied(shards: &Shards) -> BTreeSet<RoomId> {
            std::mem::take(&mut *shards.applied().rooms.lock())
        }

        #[test]
        fn a_frozen_room_answers_moving_and_changes_nothing() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            log.accepted(1, alice.message(&room, b"again", 7), 2);
            let ack = Command::Ack {
                room: room.clone(),
                client: alice.id.clone(),
                seq: 2,
            };
            assert!(matches!(log.apply(1, ack.clone()), ApplyOutput::Acked));
            // Another room of the shard, alike but not frozen, shows what housekeeping does.
            let other = RoomId::parse(&format!("{room}-other")).unwrap();
            let mut bob = Creator::new("bob");
            log.busy_room(1, &other, &mut bob);
            log.apply(1, bob.message(&other, b"again", 7));
            let ack_other = Command::Ack {
                room: other.clone(),
                client: bob.id.clone(),
                seq: 2,
            };
            assert!(matches!(log.apply(1, ack_other), ApplyOutput::Acked));
            applied(&shards);

            let export = log.freeze(1, &room, T);
            assert!(applied(&shards).is_empty(), "a freeze changes no room");
            let decoded = RoomExport::decode(&export).unwrap();
            assert_eq!(decoded.room, room);
            assert_eq!(decoded.reports.len(), 1);
            assert_eq!(decoded.franks.len(), 2, "the franked messages' records");
            {
                let data = shards.get(1).read();
                assert_eq!(decoded.state, data.room(&room).unwrap().to_snapshot());
                assert_eq!(data.moving_to(&room), Some(T));
                assert_eq!(data.frozen_rooms().collect::<Vec<_>>(), vec![(&room, T)]);
            }

            let before = shards.get(1).read().room(&room).unwrap().to_snapshot();
            let moving = |output: ApplyOutput| matches!(output, ApplyOutput::RoomMoving { to: T });
            let message = alice.message(&room, b"while frozen", 8);
            assert!(moving(log.apply(1, message)));
            let handshake = Command::Handshake {
                room: room.clone(),
                sender: Submitter::Client(alice.id.clone()),
                bundle: HandshakeBundle::Proposals {
                    proposals: vec![vec![1]],
                },
            };
            assert!(moving(log.apply(1, handshake)));
            let delivered = Command::FanoutDelivered {
                room: room.clone(),
                provider: "b.example".into(),
                seq: 1,
            };
            assert!(moving(log.apply(1, delivered)));
            assert!(moving(log.apply(1, ack)));
            assert!(moving(log.apply(1, report(&room))));
            // Housekeeping would trim the acknowledged item of an unfrozen room: it skips
            // this one.
            let housekeeping = Command::Housekeeping {
                log_retention_ms: 0,
            };
            assert!(matches!(log.apply(1, housekeeping), ApplyOutput::Housekept));
            assert!(matches!(
                log.apply(1, alice.create(&room)),
                ApplyOutput::RoomCreated(Err(CreateRoomRejection::AlreadyExists))
            ));
            {
                let data = shards.get(1).read();
                let frozen = data.room(&room).unwrap();
                assert_eq!(frozen.to_snapshot(), before, "nothing rejected was applied");
                assert_eq!(frozen.first_retained_seq(), 1);
                assert_eq!(data.abuse_reports().of_room(&room).len(), 1);
                assert_eq!(data.room(&other).unwrap().first_retained_seq(), 2);
            }
            assert!(applied(&shards).is_empty());

            // Frozen again for the same shard: the same export; for another: refused.
            assert_eq!(log.freeze(1, &room, T), export);
            assert!(matches!(
                log.try_freeze(1, &room, T2),
                ApplyOutput::RoomFrozen(Err(MoveRefusal::MovingElsewhere { to: T }))
            ));
        }

        #[test]
        fn freeze_refusals_name_their_reason_and_change_nothing() {
            let (shards, mut log, room, _) = busy_room_at(0);
            let pinned = room_at_home(&shards, 1);
            let pin = Command::PinRoom {
                room: pinned.clone(),
                shard: EU,
            };
            assert!(matches!(log.apply(1, pin), ApplyOutput::RoomPinned(Ok(()))));
            let mut bob = Creator::new("bob");
            log.busy_room(EU, &pinned, &mut bob);
            let before: Vec<Vec<u8>> = (0..5).map(|shard| log.snapshot(shard)).collect();

            let mut refused =
                |shard, room: &RoomId, to, expected: MoveRefusal, text: &str| match log
                    .try_freeze(shard, room, to)
                {
                    ApplyOutput::RoomFrozen(Err(refusal)) => {
                        assert_eq!(refusal, expected);
                        assert_eq!(refusal.to_string(), text);
                    }
                    other => panic!("freeze of {room} in {shard}: {other:?}"),
                };
            refused(
                1,
                &room,
                T,
                MoveRefusal::UnknownRoom { shard: 1 },
                "the room is not hosted in shard 1",
            );
            refused(
                0,
                &room,
                0,
                MoveRefusal::SameShard { shard: 0 },
                "the room is in shard 0 already",
            );
            refused(
                0,
                &room,
                1,
                MoveRefusal::NotASplitShard { shard: 1 },
                "shard 1 is not a split shard",
            );
            refused(
                0,
                &room,
                EU,
                MoveRefusal::NotASplitShard { shard: EU },
                "shard 2 is not a split shard",
            );
            refused(
                EU,
                &pinned,
                T,
                MoveRefusal::Residency { shard: EU },
                "the room is pinned to residency shard 2 and never moves",
            );
            let after: Vec<Vec<u8>> = (0..5).map(|shard| log.snapshot(shard)).collect();
            assert_eq!(after, before);
            assert_eq!(shards.get(0).read().frozen_rooms().count(), 0);
        }

        #[test]
        fn adopt_is_idempotent_and_indexes_members() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            let export = log.freeze(1, &room, T);
            let refused_message = alice.message(&room, b"sent during the move", 9);
            assert!(matches!(
                log.apply(1, refused_message.clone()),
                ApplyOutput::RoomMoving { to: T }
            ));
            applied(&shards);

            let adopt = |export: Vec<u8>| Command::AdoptRoom {
                room: room.clone(),
                from: 1,
                export,
            };
            // Unusable exports are refused and change nothing.
            let before = log.snapshot(T);
            let bad = |output| {
                matches!(
                    output,
                    ApplyOutput::RoomAdopted(Err(MoveRefusal::BadExport(_)))
                )
            };
            assert!(bad(log.apply(T, adopt(b"not an export".to_vec()))));
            assert!(bad(log.apply(T, adopt(export[..export.len() - 1].to_vec()))));
            let mut other = RoomExport::decode(&export).unwrap();
            other.room = RoomId::parse("mimi://a.example/r/elsewhere").unwrap();
            assert!(bad(log.apply(T, adopt(other.encode()))));
            let mut broken = RoomExport::decode(&export).unwrap();
            broken.state.truncate(10);
            assert!(bad(log.apply(T, adopt(broken.encode()))));
            let mut future = RoomExport::decode(&export).unwrap();
            future.format += 1;
            assert!(bad(log.apply(T, adopt(future.encode()))));
            assert!(matches!(
                log.apply(0, adopt(export.clone())),
                ApplyOutput::RoomAdopted(Err(MoveRefusal::NotASplitShard { shard: 0 }))
            ));
            assert_eq!(log.snapshot(T), before);
            assert!(applied(&shards).is_empty());

            assert!(matches!(
                log.apply(T, adopt(export.clone())),
                ApplyOutput::RoomAdopted(Ok(()))
            ));
            assert_eq!(applied(&shards), BTreeSet::from([room.clone()]));
            {
                let data = shards.get(T).read();
                assert_eq!(data.rooms_of(&alice.id).collect::<Vec<_>>(), vec![&room]);
                assert_eq!(data.abuse_reports().of_room(&room).len(), 1);
                assert!(data.franks().get(&room, 1).is_some());
                let source = shards.get(1).read();
                assert_eq!(
                    data.room(&room).unwrap().to_snapshot(),
                    source.room(&room).unwrap().to_snapshot()
                );
            }
            let adopted = log.snapshot(T);
            assert!(matches!(
                log.apply(T, adopt(export)),
                ApplyOutput::RoomAdopted(Ok(()))
            ));
            assert_eq!(log.snapshot(T), adopted, "a repeated adopt changes nothing");
            assert!(applied(&shards).is_empty());

            // What the frozen source refused is taken by the target, once, after the rest.
            assert!(matches!(
                log.apply(T, refused_message),
                ApplyOutput::Submitted(SubmitVerdict::Accepted { seq: 2, .. })
            ));
            assert!(shards.get(T).read().franks().get(&room, 2).is_some());
        }

        #[test]
        fn release_leaves_a_tombstone_that_redirects() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            let release_of = |to, generation| Command::ReleaseRoom {
                room: room.clone(),
                to,
                generation,
            };
            let release = |to| release_of(to, 0);
            assert!(matches!(
                log.apply(1, release(T)),
                ApplyOutput::RoomReleased(Err(MoveRefusal::NotFrozen))
            ));
            assert!(matches!(
                log.apply(0, release(T)),
                ApplyOutput::RoomReleased(Err(MoveRefusal::UnknownRoom { shard: 0 }))
            ));
            log.freeze(1, &room, T);
            assert!(matches!(
                log.apply(1, release(T2)),
                ApplyOutput::RoomReleased(Err(MoveRefusal::MovingElsewhere { to: T }))
            ));
            // A release of another generation than the frozen copy's is a stale repeat: Ok,
            // and nothing changes.
            let frozen = log.snapshot(1);
            applied(&shards);
            assert!(matches!(
                log.apply(1, release_of(T, 1)),
                ApplyOutput::RoomReleased(Ok(false))
            ));
            assert_eq!(log.snapshot(1), frozen);
            assert!(applied(&shards).is_empty());
            log.move_room(&room, 1, T);
            assert_eq!(applied(&shards), BTreeSet::from([room.clone()]));
            {
                let data = shards.get(1).read();
                assert!(data.room(&room).is_none());
                assert_eq!(data.moved_to(&room), Some(T));
                assert_eq!(data.moving_to(&room), None);
                assert!(data.abuse_reports().is_empty());
                assert!(data.franks().is_empty());
                assert_eq!(data.rooms_of(&alice.id).count(), 0);
            }
            assert_eq!(shards.rooms_of(&alice.id), vec![room.clone()]);

            let released = log.snapshot(1);
            assert!(matches!(
                log.apply(1, release(T)),
                ApplyOutput::RoomReleased(Ok(false))
            ));
            assert!(applied(&shards).is_empty());
            assert!(matches!(
                log.apply(1, release(T2)),
                ApplyOutput::RoomReleased(Err(MoveRefusal::Moved { to: T }))
            ));
            // Of another copy than the one that left: stale, whatever its target.
            for stale in [release_of(T, 3), release_of(T2, 3)] {
                assert!(matches!(
                    log.apply(1, stale),
                    ApplyOutput::RoomReleased(Ok(false))
                ));
            }
            assert!(matches!(
                log.try_freeze(1, &room, T2),
                ApplyOutput::RoomFrozen(Err(MoveRefusal::Moved { to: T }))
            ));
            let moved = |output| matches!(output, ApplyOutput::RoomMoved { to: T });
            assert!(moved(log.apply(1, alice.message(&room, b"late", 3))));
            assert!(moved(log.apply(1, report(&room))));
            let ack = Command::Ack {
                room: room.clone(),
                client: alice.id.clone(),
                seq: 1,
            };
            assert!(moved(log.apply(1, ack)));
            assert!(matches!(
                log.apply(1, alice.create(&room)),
                ApplyOutput::RoomCreated(Err(CreateRoomRejection::AlreadyExists))
            ));
            assert_eq!(log.snapshot(1), released);
            // The target hosts it and takes its commands.
            log.accepted(T, alice.message(&room, b"after", 4), 2);
            assert_eq!(shards.room_shard(&room), T);
        }

        #[test]
        fn repin_moves_routing_and_refuses_a_wrong_source() {
            // The home shard is the source: the pin in it takes precedence over its data.
            let (shards, mut log, room, _) = busy_room_at(0);
            assert_eq!(shards.room_shard(&room), 0);
            let repin = |from, to| Command::RepinRoom {
                room: room.clone(),
                from,
                to,
                generation: 0,
            };
            let refused = |output: ApplyOutput| match output {
                ApplyOutput::RoomRepinned(Err(refusal)) => refusal,
                other => panic!("{other:?}"),
            };
            assert_eq!(refused(log.apply(0, repin(0, T))), MoveRefusal::NotFrozen);
            log.freeze(0, &room, T);
            let before = log.snapshot(0);
            let wrong = refused(log.apply(0, repin(1, T)));
            assert_eq!(
                wrong,
                MoveRefusal::WrongSource {
                    expected: 1,
                    actual: Some(0)
                }
            );
            assert_eq!(
                wrong.to_string(),
                "the room's home shard has it in shard 0, not in shard 1"
            );
            assert_eq!(
                refused(log.apply(0, repin(0, T2))),
                MoveRefusal::MovingElsewhere { to: T }
            );
            assert_eq!(
                refused(log.apply(0, repin(0, EU))),
                MoveRefusal::NotASplitShard { shard: EU }
            );
            assert_eq!(
                refused(log.apply(1, repin(0, T))),
                MoveRefusal::NotHome { shard: 1, home: 0 }
            );
            let unknown = room_at_home(&shards, 0);
            let unknown = RoomId::parse(&format!("{unknown}-nowhere")).unwrap();
            let nowhere = Command::RepinRoom {
                room: unknown.clone(),
                from: 0,
                to: T,
                generation: 0,
            };
            let home_of_unknown = shards.shard_of(unknown.as_bytes());
            assert_eq!(
                refused(log.apply(home_of_unknown, nowhere)),
                MoveRefusal::WrongSource {
                    expected: 0,
                    actual: None
                }
            );
            assert_eq!(log.snapshot(0), before);
            assert_eq!(shards.room_shard(&room), 0);
            applied(&shards);

            assert!(matches!(
                log.apply(0, repin(0, T)),
                ApplyOutput::RoomRepinned(Ok(()))
            ));
            assert_eq!(applied(&shards), BTreeSet::from([room.clone()]));
            assert_eq!(shards.get(0).read().pin(&room), Some(T));
            assert_eq!(shards.room_shard(&room), T);
            let repinned = log.snapshot(0);
            assert!(matches!(
                log.apply(0, repin(0, T)),
                ApplyOutput::RoomRepinned(Ok(()))
            ));
            assert_eq!(
                log.snapshot(0),
                repinned,
                "a repeated repin changes nothing"
            );
            assert!(applied(&shards).is_empty());

            // A residency pin is never repinned.
            let pinned = room_at_home(&shards, 1);
            let pin = Command::PinRoom {
                room: pinned.clone(),
                shard: EU,
            };
            assert!(matches!(log.apply(1, pin), ApplyOutput::RoomPinned(Ok(()))));
            let repin_pinned = Command::RepinRoom {
                room: pinned.clone(),
                from: EU,
                to: T,
                generation: 0,
            };
            assert_eq!(
                refused(log.apply(1, repin_pinned)),
                MoveRefusal::Residency { shard: EU }
            );
        }

        /// The parts of a move taken one at a time (a coordinator that dies between steps,
        /// the resume task, another node's move of the same room).
        impl Log {
            fn adopt(&mut self, room: &RoomId, from: ShardId, to: ShardId, export: &[u8]) {
                let adopt = Command::AdoptRoom {
                    room: room.clone(),
                    from,
                    export: export.to_vec(),
                };
                match self.apply(to, adopt) {
                    ApplyOutput::RoomAdopted(Ok(())) => {}
                    other => panic!("adopt in {to}: {other:?}"),
                }
            }

            /// The repin of a move that froze the copy of `generation` in `from`.
            fn repin(&mut self, room: &RoomId, from: ShardId, to: ShardId, generation: u64) {
                let home = self.shards.shard_of(room.as_bytes());
                let repin = Command::RepinRoom {
                    room: room.clone(),
                    from,
                    to,
                    generation,
                };
                match self.apply(home, repin) {
                    ApplyOutput::RoomRepinned(Ok(())) => {}
                    other => panic!("repin {from} -> {to}: {other:?}"),
                }
            }

            /// The release of a move that froze the copy of `generation` in `from`.
            fn release(
                &mut self,
                room: &RoomId,
                from: ShardId,
                to: ShardId,
                generation: u64,
            ) -> ApplyOutput {
                let release = Command::ReleaseRoom {
                    room: room.clone(),
                    to,
                    generation,
                };
                self.apply(from, release)
            }

            /// A release that must answer Ok: it drops the frozen copy, or it is a stale or
            /// repeated one and changes nothing.
            fn released(&mut self, room: &RoomId, from: ShardId, to: ShardId, generation: u64) {
                match self.release(room, from, to, generation) {
                    ApplyOutput::RoomReleased(Ok(_)) => {}
                    other => panic!("release {from} -> {to}: {other:?}"),
                }
            }

            /// How every move ends: `room` is hosted in `shard` alone, not frozen, routed
            /// there, and takes alice's next message as its item `seq`.
            fn settled_in(&mut self, room: &RoomId, shard: ShardId, alice: &mut Creator, seq: u64) {
                assert_eq!(self.hosts(room), vec![(shard, false)]);
                assert_eq!(self.shards.room_shard(room), shard);
                let message = alice.message(room, b"after the moves", seq as u8);
                self.accepted(shard, message, seq);
            }

            /// The shards hosting `room`, each with whether it is frozen there.
            fn hosts(&self, room: &RoomId) -> Vec<(ShardId, bool)> {
                (0..self.shards.count())
                    .filter_map(|shard| {
                        let data = self.shards.get(shard).read();
                        data.room(room)
                            .map(|_| (shard, data.moving_to(room).is_some()))
                    })
                    .collect()
            }
        }

        /// Found by `move_sim` (seed 12 of its first version): a move's coordinator died
        /// after the repin, the room moved on from the target, and then the resume task
        /// finished the first move from its freeze. The target's tombstone is of that
        /// export's generation: the adopt installs nothing (it used to bring the stale copy
        /// back, changeable beside the real one), the repin finds the room pinned further on
        /// and the release drops the source's stale copy.
        #[test]
        fn a_resumed_move_that_the_room_outran_brings_nothing_back() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            let stale = log.freeze(1, &room, T);
            log.adopt(&room, 1, T, &stale);
            log.repin(&room, 1, T, 0);
            // The coordinator is gone; the room takes a message in T and moves on to T2.
            log.accepted(T, alice.message(&room, b"in T", 2), 2);
            log.move_room(&room, T, T2);
            let before_t = log.snapshot(T);
            let before_t2 = log.snapshot(T2);

            // The resume task: freeze again (the same export), adopt, repin, release.
            assert_eq!(log.freeze(1, &room, T), stale);
            log.adopt(&room, 1, T, &stale);
            assert_eq!(
                log.snapshot(T),
                before_t,
                "the stale export installed nothing"
            );
            log.repin(&room, 1, T, 0);
            assert_eq!(shards.get(1).read().pin(&room), Some(T2));
            log.released(&room, 1, T, 0);
            assert_eq!(log.snapshot(T2), before_t2);
            log.settled_in(&room, T2, &mut alice, 3);
        }

        /// Found by `move_sim` (seed 11 of its first version): the room left T for T2 (pinned
        /// there, T's release still to come) and came back before T released its copy. T's
        /// frozen copy is older than the export coming back: the adopt replaces it (it used to
        /// keep it and answer Ok, and T's release then dropped the room everywhere), and the
        /// late release of T's own move names a generation T no longer holds: Ok, nothing
        /// changes. A repeat of an older adopt changes nothing.
        #[test]
        fn a_room_coming_back_replaces_the_stale_copy_it_left_frozen() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            let first = log.freeze(1, &room, T);
            log.adopt(&room, 1, T, &first);
            log.repin(&room, 1, T, 0);
            log.released(&room, 1, T, 0);
            // T -> T2 up to the repin; its coordinator stalls before the release.
            let out = log.freeze(T, &room, T2);
            log.adopt(&room, T, T2, &out);
            log.repin(&room, T, T2, 1);
            log.accepted(T2, alice.message(&room, b"in T2", 2), 2);
            log.apply(T2, report(&room));
            // Another node moves the room back: T2 -> T.
            let back = log.freeze(T2, &room, T);
            assert_eq!(RoomExport::decode(&back).unwrap().generation, 3);
            log.adopt(&room, T2, T, &back);
            assert_eq!(log.hosts(&room), vec![(T, false), (T2, true)]);
            {
                let data = shards.get(T).read();
                assert_eq!(data.room(&room).unwrap().last_seq(), 2);
                assert_eq!(data.abuse_reports().of_room(&room).len(), 2);
                assert!(data.franks().get(&room, 2).is_some());
                assert_eq!(data.room_moves().generation(&room), 3);
            }
            log.repin(&room, T2, T, 2);
            log.released(&room, T2, T, 2);
            let settled = log.snapshot(T);
            // The stalled coordinator's release, and repeats of both adopts into T.
            log.released(&room, T, T2, 1);
            log.adopt(&room, 1, T, &first);
            log.adopt(&room, T2, T, &back);
            assert_eq!(log.snapshot(T), settled);
            log.settled_in(&room, T, &mut alice, 3);
        }

        /// Found by `move_sim` (seeds 842 and 950 of 1000 without its coordinators' skip): the
        /// late release of a move that the room outran (T -> T2, stalled before its release
        /// while the room came back to T) lands after a newer move T -> T2 froze T's newer
        /// copy, before T2 adopted it. A release names the generation its move froze, and T's
        /// copy is of another one: the release is a stale repeat, Ok, and changes nothing (it
        /// used to take the newer copy, leaving the room hosted nowhere but in the newer
        /// move's export). The newer copy stays frozen and its own move finishes.
        #[test]
        fn a_stale_release_leaves_a_newer_copy_frozen_for_its_own_move() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            log.move_room(&room, 1, T);
            // T -> T2 stalls before its release; the room comes back to T meanwhile.
            let out = log.freeze(T, &room, T2);
            let stalled = frozen_generation(&out);
            assert_eq!(stalled, 1);
            log.adopt(&room, T, T2, &out);
            log.repin(&room, T, T2, stalled);
            log.move_room(&room, T2, T);
            log.accepted(T, alice.message(&room, b"back in T", 2), 2);
            // A new move T -> T2 freezes T's (newer) copy; then the stalled release lands,
            // twice (Raft applied it again).
            let newer = log.freeze(T, &room, T2);
            assert_eq!(frozen_generation(&newer), 3);
            let frozen = log.snapshot(T);
            applied(&shards);
            for _ in 0..2 {
                log.released(&room, T, T2, stalled);
            }
            assert_eq!(log.snapshot(T), frozen, "the stale release changed nothing");
            assert!(applied(&shards).is_empty());
            assert_eq!(log.hosts(&room), vec![(T, true)]);
            assert_eq!(shards.get(T).read().moving_to(&room), Some(T2));
            assert_eq!(
                RoomExport::decode(&log.freeze(T, &room, T2)).unwrap(),
                RoomExport::decode(&newer).unwrap(),
                "the frozen copy still exports what its freeze did"
            );
            // The newer move finishes: T2 adopts the newer copy over its tombstone.
            log.adopt(&room, T, T2, &newer);
            assert_eq!(log.hosts(&room), vec![(T, true), (T2, false)]);
            log.repin(&room, T, T2, 3);
            log.released(&room, T, T2, 3);
            log.settled_in(&room, T2, &mut alice, 3);
        }

        /// A repin names the generation its move froze, and the home shard keeps the
        /// generation its pin names: a stale repin (a duplicate, or a slow coordinator's,
        /// landing after the room moved on and back) never takes the pin back to a shard the
        /// room left. Without generations the repin T -> T2 of the room's second move, applied
        /// again once the room was back in T, found the pin naming its source T and moved it
        /// to T2, where only a tombstone is left; and a pin behind the room stayed behind for
        /// good (every later repin's source was not the pin's shard).
        #[test]
        fn a_stale_repin_never_takes_the_pin_back() {
            let (shards, mut log, room, _) = busy_room_at(1);
            log.move_room(&room, 1, T);
            log.move_room(&room, T, T2);
            log.move_room(&room, T2, T);
            {
                let home = shards.get(1).read();
                assert_eq!(home.pin(&room), Some(T));
                assert_eq!(home.room_moves().pin_generation(&room), 3);
            }
            let settled = log.snapshot(1);
            applied(&shards);
            // The second move's repin again, and the first's.
            log.repin(&room, T, T2, 1);
            log.repin(&room, 1, T, 0);
            assert_eq!(shards.get(1).read().pin(&room), Some(T));
            assert_eq!(log.snapshot(1), settled, "stale repins changed nothing");
            assert!(applied(&shards).is_empty());
            assert_eq!(shards.room_shard(&room), T);
        }

        /// Repins of overlapping moves may land out of order: the first move's coordinator
        /// stalls before its repin while the room, adopted in T, moves on to T2. The second
        /// move's repin (the newer copy) moves the pin at once, though the home shard still
        /// has the room in its own frozen copy (it used to be refused WrongSource until the
        /// first move's repin landed); the first move's repin then finds a newer pin and
        /// changes nothing, and its release drops the home shard's copy.
        #[test]
        fn repins_landing_out_of_order_leave_the_pin_on_the_newest_copy() {
            let (shards, mut log, room, mut alice) = busy_room_at(1);
            let first = log.freeze(1, &room, T);
            log.adopt(&room, 1, T, &first);
            // The first coordinator stalls; another node moves the room on from T.
            let second = log.freeze(T, &room, T2);
            log.adopt(&room, T, T2, &second);
            // Its repin naming a source that is not the copy of its generation is refused.
            let wrong = Command::RepinRoom {
                room: room.clone(),
                from: 0,
                to: T2,
                generation: 0,
            };
            assert!(matches!(
                log.apply(1, wrong),
                ApplyOutput::RoomRepinned(Err(MoveRefusal::WrongSource {
                    expected: 0,
                    actual: Some(1)
                }))
            ));
            log.repin(&room, T, T2, 1);
            assert_eq!(shards.get(1).read().pin(&room), Some(T2));
            assert_eq!(shards.room_shard(&room), T2);
            log.released(&room, T, T2, 1);
            // The first move resumes: the same export, an adopt that installs nothing, a repin
            // that keeps the newer pin, a release of the home shard's copy.
            assert_eq!(log.freeze(1, &room, T), first);
            log.adopt(&room, 1, T, &first);
            log.repin(&room, 1, T, 0);
            assert_eq!(shards.get(1).read().pin(&room), Some(T2));
            log.released(&room, 1, T, 0);
            log.settled_in(&room, T2, &mut alice, 2);
        }

        #[test]
        fn a_room_moves_on_and_back_and_its_tombstone_goes() {
            let (shards, mut log, room, alice) = busy_room_at(1);
            log.move_room(&room, 1, T);
            log.move_room(&room, T, T2);
            assert_eq!(shards.room_shard(&room), T2);
            assert_eq!(shards.get(T).read().moved_to(&room), Some(T2));
            log.move_room(&room, T2, T);
            assert_eq!(shards.room_shard(&room), T);
            let data = shards.get(T).read();
            assert!(data.room(&room).is_some());
            assert_eq!(data.moved_to(&room), None, "the tombstone went");
            assert_eq!(data.abuse_reports().of_room(&room).len(), 1);
            assert_eq!(shards.get(T2).read().moved_to(&room), Some(T));
            assert_eq!(shards.get(1).read().moved_to(&room), Some(T));
            assert_eq!(shards.rooms_of(&alice.id), vec![room.clone()]);
        }

        #[test]
        fn frozen_rooms_and_tombstones_survive_a_snapshot() {
            let shards = Shards::with_layout(layout());
            let mut log = Log::new(&shards);
            let gone = room_at_home(&shards, 1);
            let mut alice = Creator::new("alice");
            log.busy_room(1, &gone, &mut alice);
            log.move_room(&gone, 1, T);
            let frozen = RoomId::parse(&format!("{gone}-frozen")).unwrap();
            let mut bob = Creator::new("bob");
            log.busy_room(1, &frozen, &mut bob);
            let export = log.freeze(1, &frozen, T2);
            let since_ms = log.ts_ms;

            let snapshot = log.snapshot(1);
            // The home shard's pin of the moved room, then the moves.
            let (pins, rest) = RoomPins::split_snapshot(&snapshot).unwrap();
            assert_eq!(pins.get(&gone), Some(T));
            assert!(rest.starts_with(&SNAPSHOT_MARKER));
            let fresh = Shards::with_layout(layout());
            fresh.machine(1).restore(&snapshot).unwrap();
            assert_eq!(fresh.machine(1).snapshot(), snapshot);
            let data = fresh.get(1).read();
            assert_eq!(data.moved_to(&gone), Some(T));
            assert_eq!(data.pin(&gone), Some(T));
            assert_eq!(data.room_moves().pin_generation(&gone), 1);
            assert_eq!(data.moving_to(&frozen), Some(T2));
            assert_eq!(
                data.room_moves().frozen(&frozen),
                Some(&Frozen { to: T2, since_ms })
            );
            assert_eq!(data.frozen_rooms().collect::<Vec<_>>(), vec![(&frozen, T2)]);
            drop(data);
            // The restored replica answers as the original does, and exports the same.
            let mut restored = Log::new(&fresh);
            assert_eq!(restored.freeze(1, &frozen, T2), export);
            assert!(matches!(
                restored.apply(1, bob.message(&frozen, b"x", 1)),
                ApplyOutput::RoomMoving { to: T2 }
            ));
            assert!(matches!(
                restored.apply(1, alice.message(&gone, b"x", 1)),
                ApplyOutput::RoomMoved { to: T }
            ));
            // A section of an earlier version (never released) is refused, not misread.
            let at = snapshot.len() - rest.len();
            let mut older = snapshot.clone();
            older[at + 15] = 2;
            assert!(Shards::with_layout(layout())
                .machine(1)
                .restore(&older)
                .is_err());
        }

        #[test]
        fn a_shard_without_moves_keeps_its_snapshot_bytes() {
            let (shards, mut log, room, _) = busy_room_at(1);
            let snapshot = log.snapshot(1);
            // The bytes a shard wrote before moves existed: no section, the shard's own.
            let data = shards.get(1).read();
            let old = ShardSnapshot {
                rooms: vec![(room.clone(), data.room(&room).unwrap().to_snapshot())],
                mirrors: BTreeMap::new(),
                directory: data.directory().clone(),
                blocklist: Blocklist::default(),
                abuse_reports: data.abuse_reports().clone(),
                franks: data.franks().clone(),
            };
            assert_eq!(snapshot, postcard::to_stdvec(&old).unwrap());
            drop(data);
            let fresh = Shards::with_layout(layout());
            fresh.machine(1).restore(&snapshot).unwrap();
            assert!(fresh.get(1).read().room_moves().is_empty());
            // A move out and its tombstone add the section, and so does an adopt (the
            // generation of the copy that came: `room_move` module docs, "Generations").
            log.move_room(&room, 1, T);
            let moved = log.snapshot(1);
            assert!(moved.windows(16).any(|window| window == SNAPSHOT_MARKER));
            let adopted = log.snapshot(T);
            assert!(adopted.starts_with(&SNAPSHOT_MARKER));
            let fresh = Shards::with_layout(layout());
            fresh.machine(T).restore(&adopted).unwrap();
            assert_eq!(fresh.get(T).read().room_moves().generation(&room), 1);
        }

        #[test]
        fn routing_follows_a_repin_a_tombstone_and_a_stale_cache() {
            let all = Shards::with_layout(layout());
            let mut log = Log::new(&all);
            let room = room_at_home(&all, 1);
            let mut alice = Creator::new("alice");
            // A node holding only the source and the target (not the home shard): with no pin
            // known, the host that is not frozen is where the room is.
            let partial = Shards::with_layout(layout());
            let mut partial_log = Log::new(&partial);
            for command in [
                alice.create(&room),
                alice.message(&room, b"hello", 1),
                report(&room),
            ] {
                log.apply(1, command.clone());
                partial_log.apply(1, command);
            }
            assert_eq!(partial.room_shard(&room), 1);
            let export = log.freeze(1, &room, T);
            assert_eq!(partial_log.freeze(1, &room, T), export);
            let adopt = Command::AdoptRoom {
                room: room.clone(),
                from: 1,
                export,
            };
            assert!(matches!(
                partial_log.apply(T, adopt.clone()),
                ApplyOutput::RoomAdopted(Ok(()))
            ));
            assert_eq!(partial.room_shard(&room), T);
            // A cache naming the source is followed through the source's tombstone and
            // corrected.
            assert!(matches!(
                log.apply(T, adopt),
                ApplyOutput::RoomAdopted(Ok(()))
            ));
            let repin = Command::RepinRoom {
                room: room.clone(),
                from: 1,
                to: T,
                generation: 0,
            };
            assert!(matches!(
                log.apply(1, repin),
                ApplyOutput::RoomRepinned(Ok(()))
            ));
            let release = Command::ReleaseRoom {
                room: room.clone(),
                to: T,
                generation: 0,
            };
            assert!(matches!(
                partial_log.apply(1, release),
                ApplyOutput::RoomReleased(Ok(true))
            ));
            partial.remember_pin(&room, 1);
            assert_eq!(partial.room_shard(&room), T);
            assert_eq!(partial.resolved.read().get(&room), Some(&T));
            // The home shard's pin routes a node holding it.
            assert_eq!(all.room_shard(&room), T);
            // A node holding nothing routes by its cache, which a move's answer overwrites.
            let bare = Shards::with_layout(layout());
            assert_eq!(bare.room_shard(&room), 1);
            bare.remember_pin(&room, 1);
            bare.remember_pin(&room, T);
            assert_eq!(bare.room_shard(&room), T);
            // Without residency or split shards, the hash alone.
            let hashed = Shards::new(2);
            hashed.remember_pin(&room, 0);
            assert_eq!(hashed.room_shard(&room), 1);
        }
    }
}
