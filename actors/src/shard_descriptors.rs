//! Shard descriptors: where each shard lives, recorded in the metadata shard (issue 4 build
//! item 1, "each shard is a raft-rs group replicated on R nodes"; CockroachDB's meta ranges;
//! DESIGN.md §3 "sharding").
//!
//! A [`ShardDescriptor`] says which nodes are a shard's voters and learners and which one
//! leads it. Shard 0, the metadata shard (`cluster_meta::METADATA_SHARD`), holds one per
//! shard ([`ShardDescriptors`], part of shard 0's replicated state) so that a node can find a
//! shard it holds no replica of: its proposals go to the recorded leader (the hub's
//! `Proposer`), and `mimid node status` shows every shard's members as recorded.
//!
//! **Who writes them.** Only a shard's leader, about its own shard, through
//! `Command::RecordShardDescriptor` proposed to shard 0 (forwarded to shard 0's leader like any
//! proposal). The hub checks its leaderships every [`REPORT_POLL`] and records a shard whose
//! members or leader differ from what its local replica of shard 0 holds ([`Reporter`], a
//! sans-IO core that takes `now`): at most one record per shard per [`RESEND_AFTER`] when the
//! same descriptor did not show up yet, and the records of one round are proposed one after
//! the other.
//!
//! **The guard.** A descriptor carries the leader's `term` and `as_of`, the index its
//! replica had applied when it described the shard: the members are those of the applied
//! configuration at that index. Apply takes a record only when it is not older in either
//! respect than the one held: `term >= held.term && as_of >= held.as_of`, and newer in one
//! ([`DescriptorRefusal::Stale`] otherwise; the same version again is `Ok(false)`, so a
//! resend after a lost answer is idempotent). So:
//! - a deposed leader (a lower term) never overwrites its successor's record;
//! - a new leader that has not applied as far as its predecessor had when it recorded is
//!   refused until it has (it will: the predecessor applied only committed entries, which the
//!   new leader holds and applies once its own first entry commits), so the recorded members
//!   never go back to an older configuration.
//!
//! The descriptors ride in shard 0's snapshot behind [`SNAPSHOT_MARKER`], after the node
//! registry's and the provider keys' prefixes; a shard with none has the bytes it had before.
//! Bounds (STYLE.md P9): shard ids below [`MAX_SHARDS`], at most `cluster_meta::MAX_NODES`
//! members per descriptor.

use std::collections::BTreeMap;
use std::time::Duration;

use mimid_cluster::{NodeId, ShardId, ShardStatus};
use serde::{Deserialize, Serialize};

use crate::cluster_meta::MAX_NODES;

/// Shard ids a descriptor may name are below this (`cluster.shards` is far smaller).
pub const MAX_SHARDS: ShardId = 1 << 16;

/// How often the hub looks for shards it leads whose descriptor is not current.
pub const REPORT_POLL: Duration = Duration::from_millis(250);

/// A record that did not show up in the local replica of shard 0 is proposed again after
/// this long at the earliest.
pub const RESEND_AFTER: Duration = Duration::from_secs(1);

/// Where one shard lives (module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescriptor {
    pub shard: ShardId,
    /// The recording leader's term.
    pub term: u64,
    /// The index the leader's replica had applied when it described the shard.
    pub as_of: u64,
    /// The node that recorded it: the shard's leader in `term`.
    pub leader: NodeId,
    /// The voters of the configuration applied at `as_of`, ascending.
    pub voters: Vec<NodeId>,
    /// The learners of that configuration, ascending.
    pub learners: Vec<NodeId>,
}

impl ShardDescriptor {
    /// The descriptor a leader's replica status gives (`None` unless `status` is the status
    /// of a replica on node `me` that leads its shard and has a configuration).
    pub fn of_status(status: &ShardStatus, me: NodeId) -> Option<Self> {
        if status.failed || status.leader != Some(me) || status.voters.is_empty() {
            return None;
        }
        Some(ShardDescriptor {
            shard: status.shard,
            term: status.term,
            as_of: status.applied,
            leader: me,
            voters: status.voters.clone(),
            learners: status.learners.clone(),
        })
    }

    /// Whether `node` is a voter or learner.
    pub fn has_member(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// The members, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }

    /// Whether `other` says the same about where the shard lives (leader and members),
    /// whatever its version.
    pub fn same_placement(&self, other: &ShardDescriptor) -> bool {
        self.shard == other.shard
            && self.leader == other.leader
            && self.voters == other.voters
            && self.learners == other.learners
    }

    /// Whether it keeps the rules of a record (module docs): a shard id in range, 1 to
    /// `MAX_NODES` voters, ascending and distinct, learners likewise and none a voter, no
    /// node 0, and the leader a voter.
    pub fn check(&self) -> Result<(), String> {
        if self.shard >= MAX_SHARDS {
            return Err(format!("shard {} is out of range", self.shard));
        }
        let ascending = |ids: &[NodeId]| ids.windows(2).all(|pair| pair[0] < pair[1]);
        if self.voters.is_empty() || self.voters.len() + self.learners.len() > MAX_NODES {
            return Err(format!(
                "a shard has 1 to {MAX_NODES} members, at least one of them a voter"
            ));
        }
        if !ascending(&self.voters) || !ascending(&self.learners) {
            return Err("voters and learners are listed ascending, each once".into());
        }
        if self.members().any(|id| id == 0) {
            return Err("node id 0 is reserved by Raft".into());
        }
        if self.learners.iter().any(|id| self.voters.contains(id)) {
            return Err("a node is both a voter and a learner".into());
        }
        if !self.voters.contains(&self.leader) {
            return Err(format!("the leader {} is not a voter", self.leader));
        }
        Ok(())
    }
}

/// Why a record was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DescriptorRefusal {
    /// The held record is newer in term or in applied index (module docs, "The guard").
    #[error(
        "shard {shard}: the record of term {offered_term} as of index {offered_as_of} is older \
         than the one held (term {held_term}, as of index {held_as_of})"
    )]
    Stale {
        shard: ShardId,
        held_term: u64,
        held_as_of: u64,
        offered_term: u64,
        offered_as_of: u64,
    },
    /// The record breaks [`ShardDescriptor::check`].
    #[error("invalid shard descriptor: {0}")]
    Invalid(String),
}

/// Every shard's latest descriptor, as shard 0 holds them (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescriptors {
    by_shard: BTreeMap<ShardId, ShardDescriptor>,
}

impl ShardDescriptors {
    /// The descriptor of `shard`, if any was recorded.
    pub fn get(&self, shard: ShardId) -> Option<&ShardDescriptor> {
        self.by_shard.get(&shard)
    }

    /// Every recorded descriptor, by shard.
    pub fn iter(&self) -> impl Iterator<Item = &ShardDescriptor> {
        self.by_shard.values()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.by_shard.is_empty()
    }

    /// Applies a record (module docs, "The guard"): `Ok(true)` when it replaced the held one
    /// (or was the first), `Ok(false)` when the held one has its version, or why it was
    /// refused (nothing changed).
    pub fn record(&mut self, offered: ShardDescriptor) -> Result<bool, DescriptorRefusal> {
        offered.check().map_err(DescriptorRefusal::Invalid)?;
        if let Some(held) = self.by_shard.get(&offered.shard) {
            let same_version = offered.term == held.term && offered.as_of == held.as_of;
            if same_version {
                return Ok(false);
            }
            if offered.term < held.term || offered.as_of < held.as_of {
                return Err(DescriptorRefusal::Stale {
                    shard: offered.shard,
                    held_term: held.term,
                    held_as_of: held.as_of,
                    offered_term: offered.term,
                    offered_as_of: offered.as_of,
                });
            }
        }
        self.by_shard.insert(offered.shard, offered);
        Ok(true)
    }

    /// [`SNAPSHOT_MARKER`] and the descriptors, ahead of a shard's own snapshot bytes (after
    /// the registry's and the provider keys' prefixes); nothing when there are none.
    pub fn snapshot_prefix(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        crate::snapshot_section::encode(&SNAPSHOT_MARKER, self)
    }

    /// Splits the rest of a shard snapshot (after the registry's and the provider keys'
    /// prefixes) into the descriptors ([`Self::snapshot_prefix`]; empty when there are none)
    /// and the shard's own bytes.
    pub fn split_snapshot(snapshot: &[u8]) -> Result<(ShardDescriptors, &[u8]), String> {
        let (descriptors, rest) = crate::snapshot_section::split::<ShardDescriptors>(
            &SNAPSHOT_MARKER,
            snapshot,
            "shard descriptors",
        )?;
        let Some(descriptors) = descriptors else {
            return Ok((ShardDescriptors::default(), rest));
        };
        for (shard, descriptor) in &descriptors.by_shard {
            if descriptor.shard != *shard {
                return Err(format!(
                    "shard descriptors in the shard snapshot: shard {shard} holds the record of \
                     shard {}",
                    descriptor.shard
                ));
            }
            descriptor
                .check()
                .map_err(|e| format!("shard descriptors in the shard snapshot: {e}"))?;
        }
        Ok((descriptors, rest))
    }
}

/// Marks a shard snapshot that carries shard descriptors. Ten `0xff` bytes are not a postcard
/// varint, so no shard snapshot without them starts with it; it differs from the registry's
/// and the provider keys' markers after the tenth byte.
pub const SNAPSHOT_MARKER: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'd', b'e', b's', b'c', b'/', 1,
];

/// Which of the shards a node leads need a record now (module docs, "Who writes them"):
/// sans-IO, the caller passes `now` in milliseconds of any monotonic clock.
#[derive(Debug, Default)]
pub struct Reporter {
    /// What was last proposed per shard, and when.
    sent: BTreeMap<ShardId, (ShardDescriptor, u64)>,
}

impl Reporter {
    /// The descriptor to record for the replica `status` on node `me`, given what shard 0's
    /// local replica holds (`held`); `None` when this node does not lead the shard, the held
    /// record says the same, or the same was proposed less than [`RESEND_AFTER`] ago.
    pub fn due(
        &mut self,
        now_ms: u64,
        me: NodeId,
        status: &ShardStatus,
        held: Option<&ShardDescriptor>,
    ) -> Option<ShardDescriptor> {
        let fresh = ShardDescriptor::of_status(status, me)?;
        if held.is_some_and(|held| held.same_placement(&fresh) && held.term == fresh.term) {
            self.sent.remove(&status.shard);
            return None;
        }
        let resend_ms = u64::try_from(RESEND_AFTER.as_millis()).unwrap_or(u64::MAX);
        if let Some((sent, at)) = self.sent.get(&status.shard) {
            if sent.same_placement(&fresh)
                && sent.term == fresh.term
                && now_ms.saturating_sub(*at) < resend_ms
            {
                return None;
            }
        }
        self.sent.insert(status.shard, (fresh.clone(), now_ms));
        Some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(shard: ShardId, term: u64, as_of: u64, leader: NodeId) -> ShardDescriptor {
        ShardDescriptor {
            shard,
            term,
            as_of,
            leader,
            voters: vec![1, 2, 3],
            learners: vec![4],
        }
    }

    /// Applies `offered` to a copy and checks that a refusal or a repeat leaves no trace.
    fn check(
        held: &ShardDescriptors,
        offered: ShardDescriptor,
    ) -> (Result<bool, DescriptorRefusal>, ShardDescriptors) {
        let mut after = held.clone();
        let outcome = after.record(offered.clone());
        match &outcome {
            Ok(false) | Err(_) => assert_eq!(&after, held, "{offered:?} left a trace"),
            Ok(true) => assert_eq!(after.get(offered.shard), Some(&offered)),
        }
        (outcome, after)
    }

    #[test]
    fn a_newer_record_replaces_the_held_one_and_a_repeat_changes_nothing() {
        let empty = ShardDescriptors::default();
        let (outcome, one) = check(&empty, descriptor(3, 5, 100, 1));
        assert_eq!(outcome, Ok(true));
        assert_eq!(check(&one, descriptor(3, 5, 100, 1)).0, Ok(false));
        // Same leader, a later applied index (a conf change).
        let mut grown = descriptor(3, 5, 120, 1);
        grown.learners = vec![4, 5];
        assert_eq!(check(&one, grown).0, Ok(true));
        // A new leader in a later term that applied further.
        assert_eq!(check(&one, descriptor(3, 6, 101, 2)).0, Ok(true));
        // Another shard is independent.
        assert_eq!(check(&one, descriptor(4, 1, 1, 3)).0, Ok(true));
    }

    /// The guard (module docs): a deposed leader's record never overwrites its successor's,
    /// and a successor that has not applied as far is refused until it has.
    #[test]
    fn a_stale_record_is_refused() {
        let mut held = ShardDescriptors::default();
        assert_eq!(held.record(descriptor(3, 6, 200, 2)), Ok(true));
        // The deposed leader of term 5, even one that applied further.
        let deposed = check(&held, descriptor(3, 5, 250, 1)).0;
        assert_eq!(
            deposed,
            Err(DescriptorRefusal::Stale {
                shard: 3,
                held_term: 6,
                held_as_of: 200,
                offered_term: 5,
                offered_as_of: 250,
            })
        );
        assert!(deposed.unwrap_err().to_string().contains("older"));
        // A leader of term 7 that has applied less than the held record.
        assert!(matches!(
            check(&held, descriptor(3, 7, 150, 3)).0,
            Err(DescriptorRefusal::Stale { .. })
        ));
        // Once it has applied as far, it is taken.
        assert_eq!(check(&held, descriptor(3, 7, 200, 3)).0, Ok(true));
    }

    #[test]
    fn malformed_records_are_refused() {
        let held = ShardDescriptors::default();
        let mut cases = Vec::new();
        let mut no_voters = descriptor(1, 1, 1, 1);
        no_voters.voters.clear();
        cases.push((no_voters, "members"));
        let mut unsorted = descriptor(1, 1, 1, 1);
        unsorted.voters = vec![2, 1];
        cases.push((unsorted, "ascending"));
        let mut twice = descriptor(1, 1, 1, 1);
        twice.learners = vec![3];
        cases.push((twice, "both"));
        let mut zero = descriptor(1, 1, 1, 1);
        zero.learners = vec![0];
        cases.push((zero, "reserved"));
        cases.push((descriptor(1, 1, 1, 4), "not a voter"));
        cases.push((descriptor(MAX_SHARDS, 1, 1, 1), "out of range"));
        for (offered, reason) in cases {
            let refusal = check(&held, offered).0.expect_err("refused");
            assert!(
                matches!(refusal, DescriptorRefusal::Invalid(_))
                    && refusal.to_string().contains(reason),
                "{refusal}"
            );
        }
    }

    #[test]
    fn the_snapshot_prefix_round_trips_and_is_empty_without_records() {
        let mut held = ShardDescriptors::default();
        assert!(held.snapshot_prefix().is_empty());
        let rest = b"shard bytes";
        let (none, same) = ShardDescriptors::split_snapshot(rest).unwrap();
        assert!(none.is_empty());
        assert_eq!(same, rest);
        held.record(descriptor(0, 2, 9, 3)).unwrap();
        held.record(descriptor(7, 1, 4, 1)).unwrap();
        let mut bytes = held.snapshot_prefix();
        bytes.extend_from_slice(rest);
        let (back, after) = ShardDescriptors::split_snapshot(&bytes).unwrap();
        assert_eq!(back, held);
        assert_eq!(after, rest);
        // A truncated prefix is an error, not an empty set.
        let truncated = &bytes[..SNAPSHOT_MARKER.len() + 2];
        assert!(ShardDescriptors::split_snapshot(truncated).is_err());
    }

    fn status(shard: ShardId, leader: Option<NodeId>, term: u64, applied: u64) -> ShardStatus {
        ShardStatus {
            shard,
            leader,
            term,
            applied,
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ShardStatus::default()
        }
    }

    #[test]
    fn the_reporter_records_changes_of_led_shards_at_a_bounded_rate() {
        let mut reporter = Reporter::default();
        let resend = RESEND_AFTER.as_millis() as u64;
        // Not the leader, or no configuration: nothing.
        assert_eq!(reporter.due(0, 1, &status(3, Some(2), 5, 10), None), None);
        let mut empty = status(3, Some(1), 5, 10);
        empty.voters.clear();
        assert_eq!(reporter.due(0, 1, &empty, None), None);
        // Leading with nothing held: record, then not again before RESEND_AFTER.
        let first = reporter
            .due(0, 1, &status(3, Some(1), 5, 10), None)
            .unwrap();
        assert_eq!((first.term, first.as_of, first.leader), (5, 10, 1));
        assert_eq!(reporter.due(1, 1, &status(3, Some(1), 5, 11), None), None);
        assert!(reporter
            .due(resend, 1, &status(3, Some(1), 5, 12), None)
            .is_some());
        // Once shard 0 holds it, nothing more while the placement is unchanged.
        let held = descriptor(3, 5, 12, 1);
        assert_eq!(
            reporter.due(resend + 1, 1, &status(3, Some(1), 5, 40), Some(&held)),
            None
        );
        // A membership change is recorded at once.
        let mut grown = status(3, Some(1), 5, 41);
        grown.learners = vec![4, 5];
        let record = reporter.due(resend + 2, 1, &grown, Some(&held)).unwrap();
        assert_eq!(record.learners, [4, 5]);
        // A new term of the same leader (re-elected) is recorded too.
        assert!(reporter
            .due(resend + 3, 1, &status(3, Some(1), 6, 50), Some(&held))
            .is_some());
    }
}
