//! The commit-churn scenario: membership Commits at a given group size. Each room's creator
//! commits, one Commit at a time, a mix of adds (claim one KeyPackage of a user outside the
//! room, protocol-06 §5.1, and commit the Add with the participant-list update, MIMI.md
//! §6.2), removes (commit the Remove of a member's client with the participant-list update,
//! MIMI.md §6.5) and updates (an empty Commit with a path, RFC 9420 §12.4); rooms run in
//! parallel. Latency is reported per kind (`add`, `remove`, `update`); an add's includes its
//! KeyPackage claim, as a client's would.
//!
//! Set-up of a room: the creator (a full client) creates it; the other users are light
//! members ([`crate::light`]: registered over one shared connection per room, never online,
//! never processing a Welcome) that publish enough KeyPackages for every add of the phase
//! ("pregenerated"); the creator adds `group size - 1` of them, [`ADD_BATCH`] per Commit. The
//! others ([`SPARE_USERS`]) wait outside. An add takes the user who has been outside longest,
//! a remove the member who has been inside longest, so users rotate through the room.
//!
//! The kinds follow the `--mix` weights in a fixed interleaving (smooth weighted round
//! robin); an add with nobody outside becomes a remove and a remove of the last member an add,
//! so the group stays within one or two of its size when adds and removes are balanced.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context;
use mimid_actors::ids::UserId;
use mimid_node::client::{Endpoint, MimiClient, UpdateResult};
use serde::Serialize;

use crate::light::{Connection, LightMember};
use crate::load::{Availability, Sender};
use crate::scenario::{
    add_users, error_kind, set_up_each_room, Naming, Operation, PhaseSender, RoomSender,
};
use crate::stats::ErrorKind;

/// Users outside each room at the start, to be added.
pub const SPARE_USERS: u32 = 4;
/// Members added per Commit at set-up.
pub const ADD_BATCH: usize = 128;
/// Time allowed to set up one room.
const ROOM_SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// What a Commit of the churn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChurnKind {
    Add,
    Remove,
    Update,
}

impl ChurnKind {
    pub fn label(self) -> &'static str {
        match self {
            ChurnKind::Add => "add",
            ChurnKind::Remove => "remove",
            ChurnKind::Update => "update",
        }
    }
}

/// Relative weights of the kinds (`--mix add=1,remove=1,update=2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub add: u32,
    pub remove: u32,
    pub update: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            add: 1,
            remove: 1,
            update: 1,
        }
    }
}

impl Mix {
    fn total(&self) -> u32 {
        self.add + self.remove + self.update
    }

    fn weights(&self) -> [(ChurnKind, u32); 3] {
        [
            (ChurnKind::Add, self.add),
            (ChurnKind::Remove, self.remove),
            (ChurnKind::Update, self.update),
        ]
    }

    /// Adds among `ops` operations, rounded up.
    pub fn adds_in(&self, ops: u64) -> u64 {
        (ops * u64::from(self.add)).div_ceil(u64::from(self.total().max(1)))
    }
}

/// `add=1,remove=1,update=2` (any order, missing kinds weigh 0, at least one above 0).
pub fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        add: 0,
        remove: 0,
        update: 0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not kind=weight"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w| *w <= 1000)
            .ok_or_else(|| format!("the weight of `{name}` must be a number from 0 to 1000"))?;
        match name.trim() {
            "add" => mix.add = weight,
            "remove" => mix.remove = weight,
            "update" => mix.update = weight,
            other => return Err(format!("unknown kind `{other}`: add, remove or update")),
        }
    }
    if mix.total() == 0 {
        return Err("at least one kind needs a weight above 0".into());
    }
    Ok(mix)
}

/// Smooth weighted round robin: each kind comes up in proportion to its weight, evenly spread.
#[derive(Debug, Clone)]
struct Interleave {
    mix: Mix,
    current: [i64; 3],
}

impl Interleave {
    fn new(mix: Mix) -> Interleave {
        Interleave {
            mix,
            current: [0; 3],
        }
    }

    fn next(&mut self) -> ChurnKind {
        let weights = self.mix.weights();
        let total = i64::from(self.mix.total());
        for (current, (_, weight)) in self.current.iter_mut().zip(weights) {
            *current += i64::from(weight);
        }
        let (best, _) = self
            .current
            .iter()
            .enumerate()
            .max_by_key(|(index, current)| (**current, -(*index as i64)))
            .expect("three kinds");
        self.current[best] -= total;
        weights[best].0
    }
}

/// The creator of one room, churning its membership.
pub struct ChurnSender {
    sender: RoomSender,
    kinds: Interleave,
    /// Members other than the creator, longest inside first.
    inside: VecDeque<UserId>,
    /// Users outside the room with KeyPackages left (and how many), longest outside first.
    outside: VecDeque<(UserId, u64)>,
    /// KeyPackages left of each member, for when it is outside again.
    kps_inside: VecDeque<u64>,
    last: ChurnKind,
}

impl ChurnSender {
    /// The kind of the next Commit, after the fallbacks for an empty side.
    fn next_kind(&mut self) -> Option<ChurnKind> {
        let wanted = self.kinds.next();
        let can_add = !self.outside.is_empty();
        let can_remove = !self.inside.is_empty();
        match wanted {
            ChurnKind::Add if can_add => Some(ChurnKind::Add),
            ChurnKind::Add if can_remove => Some(ChurnKind::Remove),
            ChurnKind::Remove if can_remove => Some(ChurnKind::Remove),
            ChurnKind::Remove if can_add => Some(ChurnKind::Add),
            ChurnKind::Update => Some(ChurnKind::Update),
            _ => None,
        }
    }

    /// Members of the room now, the creator included.
    pub fn group_size(&self) -> usize {
        self.inside.len() + 1
    }
}

impl Sender for ChurnSender {
    fn availability(&self) -> Availability {
        match self.sender.availability() {
            Availability::Ready if self.inside.is_empty() && self.outside.is_empty() => {
                // Nobody to add or remove: only updates are possible.
                if self.kinds.mix.update > 0 {
                    Availability::Ready
                } else {
                    Availability::Exhausted
                }
            }
            other => other,
        }
    }

    async fn run(&mut self) -> Result<(), ErrorKind> {
        let kind = self.next_kind().ok_or(ErrorKind::Client)?;
        self.last = kind;
        let room = self.sender.room().clone();
        match kind {
            ChurnKind::Update => {
                let result = self.sender.client_mut().self_update(&room).await;
                committed(result)
            }
            ChurnKind::Add => {
                let (user, kps) = self.outside.pop_front().ok_or(ErrorKind::Client)?;
                // The claim consumes one KeyPackage whatever the Commit's fate.
                let result = self
                    .sender
                    .client_mut()
                    .add_users(&room, std::slice::from_ref(&user))
                    .await;
                let left = kps.saturating_sub(1);
                match committed(result) {
                    Ok(()) => {
                        self.inside.push_back(user);
                        self.kps_inside.push_back(left);
                        Ok(())
                    }
                    Err(error) => {
                        if left > 0 {
                            self.outside.push_front((user, left));
                        }
                        Err(error)
                    }
                }
            }
            ChurnKind::Remove => {
                let user = self.inside.pop_front().ok_or(ErrorKind::Client)?;
                let kps = self.kps_inside.pop_front().unwrap_or(0);
                let result = self.sender.client_mut().remove_user(&room, &user).await;
                match committed(result) {
                    Ok(()) => {
                        if kps > 0 {
                            self.outside.push_back((user, kps));
                        }
                        Ok(())
                    }
                    Err(error) => {
                        self.inside.push_front(user);
                        self.kps_inside.push_front(kps);
                        Err(error)
                    }
                }
            }
        }
    }

    fn on_abandoned(&mut self) {
        // A dropped Commit may still win its epoch (see `RoomSender::on_abandoned`).
        self.sender.set_broken();
    }

    fn operation(&self, _offered_at: Duration) -> &'static str {
        self.last.label()
    }
}

fn committed(
    result: Result<UpdateResult, mimid_node::client::ClientError>,
) -> Result<(), ErrorKind> {
    match result.map_err(|e| error_kind(&e))? {
        UpdateResult::Accepted { .. } => Ok(()),
        UpdateResult::WrongEpoch { .. } => Err(ErrorKind::WrongEpoch),
        UpdateResult::NotAllowed { .. } => Err(ErrorKind::NotAllowed),
        UpdateResult::InvalidProposal { .. } => Err(ErrorKind::InvalidProposal),
    }
}

impl PhaseSender for ChurnSender {
    fn pregenerated(&self) -> usize {
        0
    }

    async fn pregenerate_all(
        senders: Vec<Self>,
        _counts: &[u64],
        _text_bytes: usize,
        _threads: usize,
    ) -> anyhow::Result<Vec<Self>> {
        Ok(senders)
    }

    fn group_size(&self) -> Option<usize> {
        Some(self.group_size())
    }

    async fn close_all(senders: Vec<Self>) {
        crate::scenario::close_all(senders.into_iter().map(|s| s.sender).collect()).await;
    }
}

/// Sets up `rooms` rooms of `group_size` members (`setup_concurrency` at a time) whose users
/// have KeyPackages for `adds_per_room` adds, and returns their creators in room order.
///
/// Cancel safety: not safe; clients set up so far are dropped without a clean close.
pub async fn set_up_churn(
    endpoint: &Endpoint,
    naming: &Naming,
    rooms: u32,
    group_size: u32,
    mix: Mix,
    adds_per_room: u64,
    setup_concurrency: usize,
) -> anyhow::Result<Vec<ChurnSender>> {
    set_up_each_room(rooms, setup_concurrency, ROOM_SETUP_TIMEOUT, |room_idx| {
        set_up_room(endpoint, naming, room_idx, group_size, mix, adds_per_room)
    })
    .await
}

/// KeyPackages each user of a room publishes: one for every time it may be added. Users
/// rotate, so `adds` adds spread over `users` users, plus the initial add of the members.
pub fn key_packages_per_user(adds: u64, users: u64) -> u64 {
    adds.div_ceil(users.max(1)) + 2
}

async fn set_up_room(
    endpoint: &Endpoint,
    naming: &Naming,
    room_idx: u64,
    group_size: u32,
    mix: Mix,
    adds_per_room: u64,
) -> anyhow::Result<ChurnSender> {
    let room = naming.room(room_idx)?;
    let mut creator = MimiClient::register(endpoint.clone(), naming.client(room_idx, 0)?)
        .await
        .context("registering the creator")?;
    creator
        .create_room(&room)
        .await
        .context("creating the room")?;
    let members = group_size.saturating_sub(1);
    let users = members + SPARE_USERS;
    let kps = key_packages_per_user(adds_per_room, u64::from(users));
    let connection = Connection::open(endpoint).await?;
    let mut registered = Vec::with_capacity(users as usize);
    for j in 1..=users {
        let member = LightMember::register(&connection, naming.client(room_idx, j)?).await?;
        member.publish_key_packages(kps as usize).await?;
        registered.push(member.id().user());
    }
    connection.close().await;
    let (inside, outside) = registered.split_at(members as usize);
    for batch in inside.chunks(ADD_BATCH) {
        add_users(&mut creator, &room, batch, "the members").await?;
    }
    Ok(ChurnSender {
        sender: RoomSender::new(room_idx, creator, room, Operation::SelfUpdate),
        kinds: Interleave::new(mix),
        inside: inside.iter().cloned().collect(),
        kps_inside: inside.iter().map(|_| kps - 1).collect(),
        outside: outside.iter().map(|user| (user.clone(), kps)).collect(),
        last: ChurnKind::Update,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_with_defaults_of_zero() {
        assert_eq!(
            parse_mix("add=1,remove=1,update=2"),
            Ok(Mix {
                add: 1,
                remove: 1,
                update: 2
            })
        );
        assert_eq!(
            parse_mix("update=3"),
            Ok(Mix {
                add: 0,
                remove: 0,
                update: 3
            })
        );
        assert!(parse_mix("add=0").is_err());
        assert!(parse_mix("join=1").is_err());
        assert!(parse_mix("add").is_err());
        assert!(parse_mix("add=-1").is_err());
    }

    #[test]
    fn the_interleaving_follows_the_weights_evenly() {
        let mut kinds = Interleave::new(Mix {
            add: 1,
            remove: 1,
            update: 2,
        });
        let sequence: Vec<ChurnKind> = (0..8).map(|_| kinds.next()).collect();
        use ChurnKind::*;
        assert_eq!(
            sequence,
            vec![Update, Add, Remove, Update, Update, Add, Remove, Update]
        );
        let mut only_updates = Interleave::new(parse_mix("update=1").expect("valid"));
        assert!((0..5).all(|_| only_updates.next() == Update));
    }

    #[test]
    fn key_packages_cover_every_add() {
        assert_eq!(key_packages_per_user(0, 5), 2);
        assert_eq!(key_packages_per_user(100, 5), 22);
        assert_eq!(Mix::default().adds_in(10), 4);
    }
}
